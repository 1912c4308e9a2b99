//! Statistics for people and scripts: the per-port block testpmd users know, the
//! headend's counters summed over workers (every nonzero drop reason with its
//! description), and the same as JSON. Counter values come from the blocks the workers
//! publish in the dataplane segment, the same ones natt-control reads.

use crate::setup::Shared;
use natt_dpdk::port;
use natt_engine::reason::DropReason;
use natt_engine::sa::{Direction, Endpoint};
use natt_sadb::dp::put_text;
use natt_sadb::stats::{Counter, Totals};
use serde_json::{Map, Value, json};
use std::fmt::Write as _;
use std::sync::atomic::Ordering::{Relaxed, Release};

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

/// Write each port's identity and PMD counters into the dataplane segment, where
/// natt-control reads them (only this process can ask DPDK).
pub fn publish_ports(sh: &Shared) {
    for (i, p) in sh.ports.iter().flatten().enumerate() {
        let slot = sh.dp.port(i);
        let st = port::stats(p.info.id);
        for (o, v) in slot.stats.iter().zip([
            st.ipackets,
            st.opackets,
            st.ibytes,
            st.obytes,
            st.imissed,
            st.ierrors,
            st.oerrors,
            st.rx_nombuf,
        ]) {
            o.store(v, Relaxed);
        }
        if slot.id_role.load(Relaxed) >> 63 == 0 {
            put_text(&slot.name, &p.info.name);
            put_text(&slot.driver, &p.info.driver);
            let mut mac = [0u8; 8];
            mac[2..].copy_from_slice(&p.mac);
            slot.mac.store(u64::from_be_bytes(mac), Relaxed);
            slot.rx_queues.store(u32::from(p.rxq), Relaxed);
            slot.tx_queues.store(u32::from(p.txq), Relaxed);
            slot.id_role.store(1 << 63 | (p.role as u64) << 16 | u64::from(p.info.id), Release);
        }
    }
}

fn sa_json(s: &SaReport) -> Value {
    let drops: Map<String, Value> = s.drops.iter().map(|(r, n)| (r.name().to_owned(), (*n).into())).collect();
    json!({
        "spi": format!("0x{:08x}", s.spi), "direction": s.direction.name(),
        "packets": s.packets, "bytes": s.bytes, "drops": drops,
        "seq": s.seq, "endpoint": s.endpoint.to_string(),
    })
}

/// Everything, as JSON: the schema natt-control serves (`natt_sadb::view`), with the
/// run's length and, per worker, the SAs it owned at exit.
pub fn to_json(sh: &Shared, elapsed_s: f64) -> Value {
    publish_ports(sh);
    let mut v = natt_sadb::view::collect(&sh.dp).to_json();
    v["elapsed_s"] = elapsed_s.into();
    let reports = sh.reports.lock().map(|r| r.clone()).unwrap_or_default();
    if let Some(ws) = v["workers"].as_array_mut() {
        for (w, wv) in ws.iter_mut().enumerate() {
            let sas: Vec<Value> = reports
                .get(w)
                .and_then(|r| r.as_ref())
                .map(|r| r.sas.iter().map(sa_json).collect())
                .unwrap_or_default();
            wv["sas"] = Value::Array(sas);
        }
    }
    v
}

/// The text block printed at exit (and every --stats-period).
pub fn to_text(sh: &Shared, elapsed_s: f64, final_stats: bool) -> String {
    let mut o = String::new();
    let view = natt_sadb::view::collect(&sh.dp);
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
    o.push_str(&totals_text(&view.totals));
    if view.workers.len() > 1 {
        for (w, c) in view.workers.iter().map(|w| (w.index, &w.counters)) {
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
    if let Some(h) = view.merged_latency() {
        let _ = writeln!(o, "  {}", view.latency_of(&h).line());
    }
    let c = natt_sadb::view::cycles_per_packet(&view.totals);
    let f = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.0}"));
    let _ = writeln!(
        o,
        "  cycles/packet: rx {}  dispatch {}  decap {}  encap {}  tx {}  busy {}",
        f(c.rx),
        f(c.dispatch),
        f(c.decap),
        f(c.encap),
        f(c.tx),
        f(c.busy)
    );
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
    let _ = writeln!(
        o,
        "  ICMP too big: {:<12} ICMP TTL:     {:<12} MSS clamped: {}",
        g(Counter::icmp_too_big),
        g(Counter::icmp_ttl_exceeded),
        g(Counter::mss_clamped)
    );
    let _ = writeln!(o, "  drops:        {}", t.total_drops());
    o.push_str(&natt_sadb::view::drops_text(t));
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
