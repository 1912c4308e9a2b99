//! Requests to the SA table, as JSON: the CLI builds one, and either sends it to a
//! running daemon over its Unix socket or, with no daemon, runs it itself. Both paths end
//! in `handle`, so a command does the same thing either way.

use crate::ops::{self, OpError};
use natt_engine::sa::Direction;
use natt_engine::sa::config::{parse_config, parse_u32_str};
use natt_sadb::Writer;
use serde_json::{Value, json};

fn direction(v: &Value) -> Result<Option<Direction>, OpError> {
    match v.as_str() {
        None => Ok(None),
        Some("in" | "inbound") => Ok(Some(Direction::Inbound)),
        Some("out" | "outbound") => Ok(Some(Direction::Outbound)),
        Some(other) => Err(OpError::Usage(format!("\"{other}\" is not a direction; use in or out"))),
    }
}

fn spi(v: &Value, what: &str) -> Result<u32, OpError> {
    v.as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .or_else(|| v.as_str().and_then(parse_u32_str))
        .ok_or_else(|| OpError::Usage(format!("{what} must be an SPI such as 0x00001001")))
}

fn config(req: &Value) -> Result<(Vec<natt_engine::SaParams>, String), OpError> {
    let file = req["file"].as_str().unwrap_or("-").to_owned();
    let text = req["text"].as_str().unwrap_or_default();
    let sas = parse_config(text, Some(&file))?;
    ops::check_fits(&sas, Some(&file))?;
    Ok((sas, file))
}

/// Run one request against the table. Returns the JSON result.
pub fn handle(w: &mut Writer, req: &Value) -> Result<Value, OpError> {
    let grace = req["grace_ns"].as_u64().unwrap_or(0);
    match req["op"].as_str().unwrap_or_default() {
        "apply" => {
            let (sas, file) = config(req)?;
            Ok(ops::apply(w, &sas, grace, req["dry_run"].as_bool().unwrap_or(false), &file)?.to_json())
        }
        "add" => {
            let (sas, file) = config(req)?;
            Ok(ops::add(w, &sas, &file)?.to_json())
        }
        "del" => Ok(ops::del(w, spi(&req["spi"], "the SPI")?, direction(&req["direction"])?, grace)?.to_json()),
        "rekey" => {
            let (sas, file) = config(req)?;
            let old_in = spi(&req["old_in"], "--in")?;
            let old_out = spi(&req["old_out"], "--out")?;
            Ok(ops::rekey(w, old_in, old_out, &sas, grace, &file)?.to_json())
        }
        "list" => Ok(json!({
            "generation": w.generation(),
            "capacity": w.db().capacity(),
            "free": w.free(),
            "waiting_for_dataplane": w.retired(),
            "sas": w.installed().iter().map(ops::sa_json).collect::<Vec<_>>(),
        })),
        "show" => {
            let i = ops::find(w, spi(&req["spi"], "the SPI")?, direction(&req["direction"])?)?;
            Ok(ops::sa_json(&i))
        }
        other => Err(OpError::Usage(format!("unknown request \"{other}\""))),
    }
}
