//! What each command does to the SA table. A command computes its change, makes it in
//! one batch (all visible at once, or nothing if any part is refused) and reports what
//! changed, by name and SPI: keys never leave this module.

use natt_engine::sa::config::ConfigError;
use natt_engine::sa::{Direction, SaParams};
use natt_sadb::{Installed, WriteError, Writer};
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};

/// One SA named in a report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Named {
    pub name: String,
    pub spi: u32,
    pub direction: Direction,
}

impl Named {
    fn of(p: &SaParams) -> Named {
        Named { name: p.name.clone(), spi: p.spi, direction: p.direction }
    }

    pub fn to_json(&self) -> Value {
        json!({"name": self.name, "spi": format!("0x{:08x}", self.spi), "direction": self.direction.name()})
    }
}

/// What a command changed (or, for a dry run, would change).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub generation: u64,
    pub added: Vec<Named>,
    pub replaced: Vec<Named>,
    pub removed: Vec<Named>,
    /// SAs kept until the given time (ns since the epoch), then removed.
    pub draining: Vec<(Named, u64)>,
    pub unchanged: usize,
    pub dry_run: bool,
}

impl Report {
    pub fn to_json(&self) -> Value {
        json!({
            "generation": self.generation,
            "dry_run": self.dry_run,
            "added": self.added.iter().map(Named::to_json).collect::<Vec<_>>(),
            "replaced": self.replaced.iter().map(Named::to_json).collect::<Vec<_>>(),
            "removed": self.removed.iter().map(Named::to_json).collect::<Vec<_>>(),
            "draining": self.draining.iter().map(|(n, at)| { let mut v = n.to_json(); v["remove_at_ns"] = (*at).into(); v }).collect::<Vec<_>>(),
            "unchanged": self.unchanged,
        })
    }
}

/// Why a command changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("{context}: {source}")]
    Write { context: String, source: WriteError },
    #[error("{0}")]
    Usage(String),
}

fn write_err(context: impl Into<String>) -> impl FnOnce(WriteError) -> OpError {
    let context = context.into();
    move |source| OpError::Write { context, source }
}

/// Check what a configuration file needs beyond the engine's rules: the shared table's
/// limits (selectors and name length per SA). Errors name the file, the SA and the field.
pub fn check_fits(sas: &[SaParams], file: Option<&str>) -> Result<(), ConfigError> {
    for (index, p) in sas.iter().enumerate() {
        if let Err(message) = natt_sadb::record::fits(p) {
            let field = if message.contains("selectors") { "selectors" } else { "name" };
            return Err(ConfigError {
                file: file.map(str::to_owned),
                sa: Some(natt_engine::sa::config::SaLabel { index, name: Some(p.name.clone()), spi: Some(p.spi) }),
                field: Some(field.into()),
                message: format!("{message}; split it into more SAs or shorten it"),
            });
        }
    }
    Ok(())
}

fn now_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// Make the installed SAs equal to `desired`: add what is new, replace what changed,
/// remove what is gone (inbound SAs after `grace_ns`, so packets in flight still pass).
pub fn apply(
    w: &mut Writer,
    desired: &[SaParams],
    grace_ns: u64,
    dry_run: bool,
    file: &str,
) -> Result<Report, OpError> {
    let installed: HashMap<(Direction, u32), Installed> =
        w.installed().into_iter().map(|i| ((i.params.direction, i.params.spi), i)).collect();
    let keep: HashSet<(Direction, u32)> = desired.iter().map(|p| (p.direction, p.spi)).collect();
    let mut report = Report { dry_run, ..Report::default() };
    let mut adds = Vec::new();
    let mut replaces = Vec::new();
    let mut undrain = Vec::new();
    for p in desired {
        match installed.get(&(p.direction, p.spi)) {
            None => adds.push(p),
            Some(i) if i.params == *p => {
                if i.remove_at_ns.is_some() {
                    undrain.push(p);
                }
                report.unchanged += 1;
            }
            Some(_) => replaces.push(p),
        }
    }
    let mut gone: Vec<&Installed> =
        installed.values().filter(|i| !keep.contains(&(i.params.direction, i.params.spi))).collect();
    gone.sort_by_key(|i| (i.params.direction, i.params.spi));
    let at = now_ns().saturating_add(grace_ns);
    let mut b = w.batch();
    // Outbound removals first, so their selectors are free for what replaces them.
    for i in gone.iter().filter(|i| i.params.direction == Direction::Outbound || grace_ns == 0) {
        b.remove(i.params.direction, i.params.spi)
            .map_err(write_err(format!("{file}: removing SA \"{}\"", i.params.name)))?;
        report.removed.push(Named::of(&i.params));
    }
    for i in gone.iter().filter(|i| i.params.direction == Direction::Inbound && grace_ns > 0) {
        if i.remove_at_ns.is_none() {
            b.drain(Direction::Inbound, i.params.spi, at)
                .map_err(write_err(format!("{file}: draining SA \"{}\"", i.params.name)))?;
            report.draining.push((Named::of(&i.params), at));
        }
    }
    for p in replaces {
        b.replace(p).map_err(write_err(format!("{file}: SA \"{}\"", p.name)))?;
        report.replaced.push(Named::of(p));
    }
    for p in adds {
        b.add(p).map_err(write_err(format!("{file}: SA \"{}\"", p.name)))?;
        report.added.push(Named::of(p));
    }
    for p in undrain {
        b.drain(p.direction, p.spi, 0).map_err(write_err(format!("{file}: SA \"{}\"", p.name)))?;
    }
    if dry_run {
        drop(b);
        report.generation = w.generation();
        return Ok(report);
    }
    report.generation = b.commit().map_err(write_err(file.to_owned()))?.generation;
    Ok(report)
}

/// Add SAs that are not installed yet.
pub fn add(w: &mut Writer, sas: &[SaParams], file: &str) -> Result<Report, OpError> {
    let mut report = Report::default();
    let mut b = w.batch();
    for p in sas {
        b.add(p).map_err(write_err(format!("{file}: SA \"{}\"", p.name)))?;
        report.added.push(Named::of(p));
    }
    report.generation = b.commit().map_err(write_err(file.to_owned()))?.generation;
    Ok(report)
}

/// Find the one installed SA with this SPI (in `direction` if given).
pub fn find(w: &Writer, spi: u32, direction: Option<Direction>) -> Result<Installed, OpError> {
    let found: Vec<Installed> = [Direction::Inbound, Direction::Outbound]
        .into_iter()
        .filter(|d| direction.is_none_or(|x| x == *d))
        .filter_map(|d| w.get(d, spi))
        .collect();
    match found.len() {
        0 => Err(OpError::Usage(format!(
            "no {}SA with SPI 0x{spi:08x} is installed; `natt-control list` shows what is",
            direction.map(|d| format!("{} ", d.name())).unwrap_or_default()
        ))),
        1 => Ok(found.into_iter().next().expect("one")),
        _ => Err(OpError::Usage(format!(
            "SPI 0x{spi:08x} is installed in both directions; add --direction in or --direction out"
        ))),
    }
}

/// Remove one SA, after `grace_ns` if not zero.
pub fn del(w: &mut Writer, spi: u32, direction: Option<Direction>, grace_ns: u64) -> Result<Report, OpError> {
    let i = find(w, spi, direction)?;
    let mut report = Report::default();
    let mut b = w.batch();
    let ctx = format!("SA \"{}\"", i.params.name);
    if grace_ns > 0 {
        let at = now_ns().saturating_add(grace_ns);
        b.drain(i.params.direction, spi, at).map_err(write_err(ctx.clone()))?;
        report.draining.push((Named::of(&i.params), at));
    } else {
        b.remove(i.params.direction, spi).map_err(write_err(ctx.clone()))?;
        report.removed.push(Named::of(&i.params));
    }
    report.generation = b.commit().map_err(write_err(ctx))?.generation;
    Ok(report)
}

/// Make before break: the new inbound SA is accepted beside the old one at once, the
/// outbound switches to the new SA atomically, and the old inbound SA is removed after
/// `grace_ns`.
pub fn rekey(
    w: &mut Writer,
    old_in: u32,
    old_out: u32,
    new: &[SaParams],
    grace_ns: u64,
    file: &str,
) -> Result<Report, OpError> {
    let (ins, outs): (Vec<&SaParams>, Vec<&SaParams>) = new.iter().partition(|p| p.direction == Direction::Inbound);
    let (&[new_in], &[new_out]) = (ins.as_slice(), outs.as_slice()) else {
        return Err(OpError::Usage(format!(
            "{file}: a rekey needs exactly one inbound and one outbound SA (the new ones); it has {} inbound and {} outbound",
            ins.len(),
            outs.len()
        )));
    };
    if new_in.paired_spi.is_some_and(|s| s != new_out.spi) {
        return Err(OpError::Usage(format!(
            "{file}: the new inbound SA \"{}\" pairs with SPI 0x{:08x}, not the new outbound SA's 0x{:08x}",
            new_in.name,
            new_in.paired_spi.unwrap_or(0),
            new_out.spi
        )));
    }
    let old_in_sa = find(w, old_in, Some(Direction::Inbound))?;
    let old_out_sa = find(w, old_out, Some(Direction::Outbound))?;
    let at = now_ns().saturating_add(grace_ns);
    let mut report = Report::default();
    let mut b = w.batch();
    b.add(new_in).map_err(write_err(format!("{file}: SA \"{}\"", new_in.name)))?;
    report.added.push(Named::of(new_in));
    b.remove(Direction::Outbound, old_out).map_err(write_err(format!("SA \"{}\"", old_out_sa.params.name)))?;
    report.removed.push(Named::of(&old_out_sa.params));
    b.add(new_out).map_err(write_err(format!("{file}: SA \"{}\"", new_out.name)))?;
    report.added.push(Named::of(new_out));
    if grace_ns > 0 {
        b.drain(Direction::Inbound, old_in, at).map_err(write_err(format!("SA \"{}\"", old_in_sa.params.name)))?;
        report.draining.push((Named::of(&old_in_sa.params), at));
    } else {
        b.remove(Direction::Inbound, old_in).map_err(write_err(format!("SA \"{}\"", old_in_sa.params.name)))?;
        report.removed.push(Named::of(&old_in_sa.params));
    }
    report.generation = b.commit().map_err(write_err(file.to_owned()))?.generation;
    Ok(report)
}

/// An installed SA without its key.
pub fn sa_json(i: &Installed) -> Value {
    let mut v = natt_engine::sa::config::public_json(&i.params);
    v["generation"] = i.generation.into();
    v["state"] = if i.remove_at_ns.is_some() { "draining" } else { "active" }.into();
    if let Some(at) = i.remove_at_ns {
        v["remove_at_ns"] = at.into();
    }
    v
}
