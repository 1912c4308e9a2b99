//! Statistics for people and scripts: the per-port block testpmd users know, the
//! headend's counters summed over workers (every nonzero drop reason with its
//! description), and the same as JSON. Counter values come from the blocks the workers
//! publish in the dataplane segment, the same ones natt-control reads.

use crate::setup::Shared;
use natt_dpdk::port;
use natt_engine::reason::DropReason;
use natt_engine::sa::{Direction, Endpoint};
use natt_sadb::stats::{Counter, DROP_BASE, SLOTS, Totals};
use serde_json::{Map, Value, json};
use std::fmt::Write as _;

/// The version of the JSON written by `--stats-json`.
pub const SCHEMA: &str = "natt-dataplane-stats/1";

/// An SA as its owning worker left it.
#[derive(Clone, Debug)]
pub struct SaReport {
    pub spi: u32,
    pub direction: Direction,
    pub packets: u64,
    pub bytes: u64,
    pub drops: Vec<(DropReason, u64)>,
    pub seq: u64,
    pub endpoint: Endpoint,
}

/// What a worker leaves behind at exit: the SAs it owned.
#[derive(Clone, Debug)]
pub struct WorkerReport {
    pub sas: Vec<SaReport>,
}

fn block_json(b: &[u64; SLOTS]) -> Value {
    let mut m = Map::new();
    for c in Counter::ALL {
        m.insert(c.name().into(), b[*c as usize].into());
    }
    let mut d = Map::new();
    for r in DropReason::ALL {
        d.insert(r.name().into(), b[DROP_BASE + *r as usize].into());
    }
    m.insert("drops".into(), Value::Object(d));
    Value::Object(m)
}

fn port_json(sh: &Shared) -> Vec<Value> {
    sh.ports
        .iter()
        .flatten()
        .map(|p| {
            let s = port::stats(p.info.id);
            json!({
                "port": p.info.id, "role": p.role.name(), "name": p.info.name, "driver": p.info.driver,
                "mac": port::mac_string(&p.mac), "rx_queues": p.rxq, "tx_queues": p.txq,
                "ipackets": s.ipackets, "opackets": s.opackets, "ibytes": s.ibytes, "obytes": s.obytes,
                "imissed": s.imissed, "ierrors": s.ierrors, "oerrors": s.oerrors, "rx_nombuf": s.rx_nombuf,
            })
        })
        .collect()
}

fn sa_json(s: &SaReport) -> Value {
    let drops: Map<String, Value> = s.drops.iter().map(|(r, n)| (r.name().to_owned(), (*n).into())).collect();
    json!({
        "spi": format!("0x{:08x}", s.spi), "direction": s.direction.name(),
        "packets": s.packets, "bytes": s.bytes, "drops": drops,
        "seq": s.seq, "endpoint": s.endpoint.to_string(),
    })
}

/// Everything, as JSON.
pub fn to_json(sh: &Shared, elapsed_s: f64) -> Value {
    let (total, each) = sh.dp.totals();
    let reports = sh.reports.lock().map(|r| r.clone()).unwrap_or_default();
    let workers: Vec<Value> = each
        .iter()
        .map(|(w, t)| {
            let mut v = block_json(&t.0);
            v["worker"] = (*w).into();
            v["lcore"] = sh.plans.get(*w).map_or(Value::Null, |p| p.lcore.into());
            let sas: Vec<Value> = reports
                .get(*w)
                .and_then(|r| r.as_ref())
                .map(|r| r.sas.iter().map(sa_json).collect())
                .unwrap_or_default();
            v["sas"] = Value::Array(sas);
            v
        })
        .collect();
    json!({
        "schema": SCHEMA,
        "elapsed_s": elapsed_s,
        "tsc_hz": natt_dpdk::eal::tsc_hz(),
        "dispatch": sh.dispatch,
        "workers": workers,
        "totals": block_json(&total.0),
        "ports": port_json(sh),
        "events_dropped": sh.dp.dropped_events().iter().sum::<u64>(),
    })
}

/// The text block printed at exit (and every --stats-period).
pub fn to_text(sh: &Shared, elapsed_s: f64, final_stats: bool) -> String {
    let mut o = String::new();
    let (t, each) = sh.dp.totals();
    for p in sh.ports.iter().flatten() {
        let s = port::stats(p.info.id);
        let title = format!(" statistics for port {} ({}, {}) ", p.info.id, p.role.name(), p.info.name);
        let _ = writeln!(o, "  {:-^76}", title);
        let _ = writeln!(o, "  RX-packets: {:<14} RX-missed: {:<14} RX-bytes:  {}", s.ipackets, s.imissed, s.ibytes);
        let _ = writeln!(o, "  RX-errors:  {:<14} RX-nombuf: {}", s.ierrors, s.rx_nombuf);
        let _ = writeln!(o, "  TX-packets: {:<14} TX-errors: {:<14} TX-bytes:  {}", s.opackets, s.oerrors, s.obytes);
    }
    let title = if final_stats { " natt totals " } else { " natt totals so far " };
    let _ = writeln!(o, "  {:+^76}", title);
    o.push_str(&totals_text(&t));
    if each.len() > 1 {
        for (w, c) in &each {
            let _ = writeln!(
                o,
                "  worker {w}: decap {} encap {} handed over {} received from others {} drops {}",
                c.get(Counter::decap_packets),
                c.get(Counter::encap_packets),
                c.get(Counter::handoff_out),
                c.get(Counter::rx_handoff),
                c.total_drops()
            );
        }
    }
    let _ = writeln!(o, "  dispatch: {}; {:.1} s", sh.dispatch, elapsed_s);
    let _ = writeln!(o, "  {}", "+".repeat(76));
    o
}

fn totals_text(t: &Totals) -> String {
    let mut o = String::new();
    let g = |c| t.get(c);
    let _ = writeln!(
        o,
        "  decapsulated: {:<12} encapsulated: {:<12} keepalives: {}",
        g(Counter::decap_packets),
        g(Counter::encap_packets),
        g(Counter::keepalives)
    );
    let _ = writeln!(
        o,
        "  punted IKE:   {:<12} punted host:  {:<12} reassembled: {}",
        g(Counter::punt_ike),
        g(Counter::punt_host),
        g(Counter::reassembled)
    );
    let _ = writeln!(
        o,
        "  handed over:  {:<12} NAT changes:  {:<12} SAs loaded:  {}",
        g(Counter::handoff_out),
        g(Counter::nat_changes),
        g(Counter::sa_loads)
    );
    let _ = writeln!(o, "  drops:        {}", t.total_drops());
    for r in DropReason::ALL {
        let n = t.drop(*r);
        if n > 0 {
            let _ = writeln!(o, "    {:<24} {:<10} {}", r.name(), n, r.description());
        }
    }
    o
}

/// Per-second rates between two readings of the totals, as testpmd's periodic
/// statistics show throughput.
pub fn rates_text(before: &Totals, after: &Totals, seconds: f64) -> String {
    let delta = |c| after.get(c).saturating_sub(before.get(c));
    let packets =
        delta(Counter::rx_public) + delta(Counter::rx_protected) + delta(Counter::rx_punt) + delta(Counter::rx_handoff);
    let cycles = if packets > 0 { delta(Counter::busy_cycles) as f64 / packets as f64 } else { 0.0 };
    let rate = |c| (after.get(c).saturating_sub(before.get(c))) as f64 / seconds.max(1e-9);
    let rx = rate(Counter::rx_public) + rate(Counter::rx_protected) + rate(Counter::rx_punt);
    let tx = rate(Counter::tx_public) + rate(Counter::tx_protected) + rate(Counter::tx_punt);
    let bits =
        (after.get(Counter::tx_bytes).saturating_sub(before.get(Counter::tx_bytes))) as f64 * 8.0 / seconds.max(1e-9);
    let drops = (after.total_drops().saturating_sub(before.total_drops())) as f64 / seconds.max(1e-9);
    format!(
        "  rates: RX {:.3} Mpps  TX {:.3} Mpps ({:.2} Gbit/s)  decap {:.3} Mpps  encap {:.3} Mpps  drops {:.0}/s  cycles/packet {:.0}\n",
        rx / 1e6,
        tx / 1e6,
        bits / 1e9,
        rate(Counter::decap_packets) / 1e6,
        rate(Counter::encap_packets) / 1e6,
        drops,
        cycles
    )
}
