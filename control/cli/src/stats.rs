//! Statistics for `natt-control stats` and the HTTP endpoints: the dataplane's counters
//! from its segment (`natt_sadb::view`: JSON, Prometheus text), one SA's counters asked
//! of the worker that owns it, and a testpmd-like text block with per-second rates.

use crate::ops;
use natt_engine::sa::Direction;
use natt_sadb::Reader;
use natt_sadb::dp::DpSegment;
use natt_sadb::stats::Counter;
use natt_sadb::view::{self, StatsView};
use serde_json::{Value, json};
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

/// Why statistics could not be had.
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    #[error("{0}")]
    NoDataplane(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
}

pub fn attach(shm_dir: &Path, name: &str) -> Result<DpSegment, StatsError> {
    DpSegment::attach(shm_dir, name).map_err(|e| {
        StatsError::NoDataplane(format!(
            "no dataplane statistics: {e} (the dataplane creates its segment when it starts: natt-dataplane ... -- --name {name})"
        ))
    })
}

/// The statistics document (schema `natt-stats/1`) with the SA table's state.
pub fn document(shm_dir: &Path, name: &str) -> Result<(StatsView, Value), StatsError> {
    let dp = attach(shm_dir, name)?;
    let v = view::collect(&dp);
    let mut j = v.to_json();
    if let Ok(r) = Reader::attach(shm_dir, name) {
        j["sa_table"] = json!({"generation": r.snapshot().generation, "capacity": r.db().capacity()});
    }
    Ok((v, j))
}

pub fn prometheus(shm_dir: &Path, name: &str) -> Result<String, StatsError> {
    let dp = attach(shm_dir, name)?;
    Ok(view::collect(&dp).to_prometheus())
}

/// Parse an SPI as the other commands do (0x… or decimal).
pub fn parse_spi(s: &str) -> Result<u32, StatsError> {
    natt_engine::sa::config::parse_u32_str(s).filter(|v| *v >= 256).ok_or_else(|| {
        StatsError::BadRequest(format!("\"{s}\" is not an SPI (0x100 to 0xffffffff, hex with 0x or decimal)"))
    })
}

/// One SA (each installed direction with this SPI): its configuration without the key,
/// and the counters of the worker that owns it.
pub fn sa(shm_dir: &Path, name: &str, spi: u32, direction: Option<Direction>) -> Result<Value, StatsError> {
    let reader = Reader::attach(shm_dir, name).map_err(|e| StatsError::NoDataplane(e.to_string()))?;
    let dirs = match direction {
        Some(d) => vec![d],
        None => vec![Direction::Inbound, Direction::Outbound],
    };
    let found: Vec<_> = dirs.into_iter().filter_map(|d| reader.installed(d, spi)).collect();
    if found.is_empty() {
        return Err(StatsError::NotFound(format!("no SA with SPI 0x{spi:08x} is installed")));
    }
    let dp = DpSegment::attach(shm_dir, name).ok();
    let mut out = Vec::new();
    for i in &found {
        let mut v = ops::sa_json(i);
        let d = i.params.direction;
        v["dataplane"] = match dp.as_ref().map(|dp| natt_sadb::query::ask(dp, d, spi, Duration::from_millis(500))) {
            None => json!({"error": "no dataplane segment"}),
            Some(Err(e)) => json!({"error": e}),
            Some(Ok(answers)) if answers.is_empty() => {
                json!({"loaded": false, "note": "no packet of this SA has reached the dataplane since it was installed or the dataplane started"})
            }
            Some(Ok(answers)) => {
                let a = &answers[0];
                let drops: serde_json::Map<String, Value> =
                    a.drops.iter().map(|(r, n)| (r.name().into(), (*n).into())).collect();
                let mut x = json!({
                    "loaded": true, "worker": a.worker, "packets": a.packets, "bytes": a.bytes, "drops": drops,
                    "nat_changes": a.nat_changes, "endpoint": a.endpoint.to_string(),
                    "expired": a.expired, "soft_lifetime_reached": a.soft_fired,
                });
                match d {
                    Direction::Outbound => x["seq"] = a.seq.into(),
                    Direction::Inbound => x["replay_top"] = a.replay_top.into(),
                }
                x
            }
        };
        out.push(v);
    }
    Ok(json!({"schema": "natt-sa-stats/1", "spi": format!("0x{spi:08x}"), "sas": out}))
}

/// The statistics as text; with `prev` (an earlier reading and the seconds since), the
/// per-second rates as testpmd shows them.
pub fn text(v: &StatsView, prev: Option<(&StatsView, f64)>) -> String {
    let mut o = String::new();
    let rate = |now: u64, before: u64, dt: f64| (now.saturating_sub(before)) as f64 / dt.max(1e-9);
    let state = if v.running { format!("running (pid {})", v.pid) } else { "not running".to_owned() };
    let _ = writeln!(
        o,
        "  dataplane {state}, {} worker(s), dispatch: {}, crypto: {}",
        v.workers.len(),
        v.dispatch,
        v.crypto
    );
    for p in &v.ports {
        let title = format!(" port {} ({}, {}) ", p.id, p.role, p.name);
        let _ = writeln!(o, "  {:-^76}", title);
        let (rx, tx, rxb, txb) = (p.stats[0], p.stats[1], p.stats[2], p.stats[3]);
        let _ = writeln!(o, "  RX-packets: {:<14} RX-missed: {:<14} RX-bytes:  {}", rx, p.stats[4], rxb);
        let _ = writeln!(o, "  TX-packets: {:<14} TX-errors: {:<14} TX-bytes:  {}", tx, p.stats[6], txb);
        if let Some((b, dt)) = prev {
            if let Some(q) = b.ports.iter().find(|q| q.id == p.id) {
                let _ = writeln!(
                    o,
                    "  Rx-pps: {:>12.0}          Rx-bps: {:>14.0}\n  Tx-pps: {:>12.0}          Tx-bps: {:>14.0}",
                    rate(rx, q.stats[0], dt),
                    rate(rxb, q.stats[2], dt) * 8.0,
                    rate(tx, q.stats[1], dt),
                    rate(txb, q.stats[3], dt) * 8.0
                );
            }
        }
    }
    let t = &v.totals;
    let _ = writeln!(o, "  {:+^76}", " natt ");
    let rows = [
        ("decapsulated", Counter::decap_packets),
        ("encapsulated", Counter::encap_packets),
        ("keepalives", Counter::keepalives),
        ("punted IKE", Counter::punt_ike),
        ("punted host", Counter::punt_host),
        ("handed over", Counter::handoff_out),
        ("NAT changes", Counter::nat_changes),
        ("reassembled", Counter::reassembled),
        ("ICMP too big", Counter::icmp_too_big),
        ("ICMP TTL", Counter::icmp_ttl_exceeded),
        ("MSS clamped", Counter::mss_clamped),
    ];
    for (label, c) in rows {
        match prev {
            Some((b, dt)) => {
                let _ = writeln!(o, "  {label:<14} {:<14} {:>12.0}/s", t.get(c), rate(t.get(c), b.totals.get(c), dt));
            }
            None => {
                let _ = writeln!(o, "  {label:<14} {}", t.get(c));
            }
        }
    }
    let _ = writeln!(o, "  dropped        {}", t.total_drops());
    o.push_str(&view::drops_text(t));
    if let Some(h) = v.merged_latency() {
        let _ = writeln!(o, "  {}", v.latency_of(&h).line());
    }
    let a = v.accounting();
    let _ = writeln!(
        o,
        "  packets in {} = out {} + dropped {} + consumed {} + pending {}{}",
        a.packets_in,
        a.packets_out,
        a.dropped,
        a.consumed,
        a.pending,
        if a.balanced() { "" } else { " (counters are read while they move)" }
    );
    let _ = writeln!(o, "  {}", "+".repeat(76));
    o
}
