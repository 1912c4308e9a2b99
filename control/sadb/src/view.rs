//! The statistics as operators and scrapers see them, collected from the dataplane
//! segment: every worker's counters and their sum, the ports (as the dataplane last read
//! them from its PMDs), RX-to-TX latency merged from the workers' histograms, processing
//! cycles per packet per stage, and the accounting identity (packets in = out + dropped +
//! consumed + pending). One schema (`SCHEMA`), rendered as JSON, Prometheus text or a
//! testpmd-like text block; natt-control serves and prints it, natt-dataplane writes it
//! at exit. Counter names are those of `stats::Counter` and of the drop-reason list.

use crate::dp::{DpSegment, get_text};
use crate::layout::*;
use crate::stats::{Counter, SLOTS, Totals};
use core::sync::atomic::Ordering::{Acquire, Relaxed};
use hdrhistogram::Histogram;
use natt_engine::reason::{DropReason, PuntReason};
use serde_json::{Map, Value, json};
use std::fmt::Write as _;

/// The version of the JSON below. A change that removes or renames a field makes a new
/// version; new fields may be added within one.
pub const SCHEMA: &str = "natt-stats/1";

/// Port roles, by the number the dataplane stores.
pub const ROLES: [&str; 4] = ["public", "protected", "punt", "protected_punt"];

/// Port counters in `PortSlot::stats` order.
pub const PORT_COUNTERS: [&str; 8] =
    ["ipackets", "opackets", "ibytes", "obytes", "imissed", "ierrors", "oerrors", "rx_nombuf"];

/// Highest latency tracked, in TSC cycles (beyond it values are clamped).
pub const LATENCY_MAX: u64 = 1 << 40;

#[derive(Clone, Debug)]
pub struct PortView {
    pub id: u16,
    pub role: &'static str,
    pub name: String,
    pub driver: String,
    pub mac: [u8; 6],
    pub rx_queues: u32,
    pub tx_queues: u32,
    pub stats: [u64; 8],
}

#[derive(Clone, Debug)]
pub struct WorkerView {
    pub index: usize,
    pub lcore: u32,
    pub active: bool,
    pub heartbeat_ns: u64,
    pub counters: Totals,
    pub latency: Option<Histogram<u64>>,
}

/// Latency quantiles in nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Latency {
    pub count: u64,
    pub min_ns: f64,
    pub mean_ns: f64,
    pub p50_ns: f64,
    pub p90_ns: f64,
    pub p99_ns: f64,
    pub p999_ns: f64,
    pub max_ns: f64,
}

/// Packets in, out, dropped, consumed (keepalives, fragments merged into a datagram)
/// and pending (held for reassembly, in TX buffers, between workers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Accounting {
    pub packets_in: u64,
    pub packets_out: u64,
    pub dropped: u64,
    pub consumed: u64,
    pub pending: u64,
}

impl Accounting {
    pub fn balanced(&self) -> bool {
        let out = [self.dropped, self.consumed, self.pending].iter().fold(self.packets_out, |a, b| a.wrapping_add(*b));
        self.packets_in == out
    }
}

/// One reading of the dataplane segment.
#[derive(Clone, Debug)]
pub struct StatsView {
    pub time_ns: u64,
    pub running: bool,
    pub pid: u32,
    pub start_ns: u64,
    pub tsc_hz: u64,
    pub detail: bool,
    pub dispatch: String,
    pub crypto: String,
    pub workers: Vec<WorkerView>,
    pub totals: Totals,
    pub ports: Vec<PortView>,
    pub events_dropped: u64,
}

fn now_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// A latency histogram as workers record them (TSC cycles).
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MAX, 2).expect("valid bounds")
}

/// Read a worker's exported histogram under its sequence lock; `None` if it kept
/// changing (the next reading will do) or holds nothing.
fn read_latency(b: &LatencyBlock) -> Option<Histogram<u64>> {
    for _ in 0..16 {
        let v1 = b.version.load(Acquire);
        if v1 & 1 == 1 {
            std::hint::spin_loop();
            continue;
        }
        let n = (b.pairs.load(Relaxed) as usize).min(LATENCY_PAIRS);
        let mut pairs = Vec::with_capacity(n);
        for i in 0..n {
            pairs.push((b.data[2 * i].load(Relaxed), b.data[2 * i + 1].load(Relaxed)));
        }
        if b.version.load(Acquire) != v1 {
            continue;
        }
        if n == 0 {
            return None;
        }
        let mut h = new_histogram();
        for (v, c) in pairs {
            // Untrusted: clamp what cannot be recorded.
            let _ = h.record_n(v.clamp(1, LATENCY_MAX), c);
        }
        return Some(h);
    }
    None
}

/// Write a worker's histogram as (bucket value, count) pairs under the sequence lock.
/// At most `LATENCY_PAIRS` buckets; the rest are folded into the last one kept.
pub fn write_latency(b: &LatencyBlock, h: &Histogram<u64>) {
    let v = b.version.load(Relaxed);
    b.version.store(v | 1, core::sync::atomic::Ordering::Release);
    let mut n = 0;
    for it in h.iter_recorded() {
        let (value, count) = (h.highest_equivalent(it.value_iterated_to()), it.count_at_value());
        if n < LATENCY_PAIRS {
            b.data[2 * n].store(value, Relaxed);
            b.data[2 * n + 1].store(count, Relaxed);
            n += 1;
        } else {
            let last = 2 * (LATENCY_PAIRS - 1);
            b.data[last].store(value, Relaxed);
            b.data[last + 1].store(b.data[last + 1].load(Relaxed).saturating_add(count), Relaxed);
        }
    }
    b.pairs.store(n as u64, Relaxed);
    b.version.store((v | 1) + 1, core::sync::atomic::Ordering::Release);
}

/// Read everything once.
pub fn collect(dp: &DpSegment) -> StatsView {
    let h = dp.header();
    let n = (h.workers.load(Relaxed) as usize).min(dp.layout().max_workers);
    let mut totals = Totals::default();
    let mut workers = Vec::with_capacity(n);
    for w in 0..n {
        let snap = dp.counters(w).snapshot();
        totals.add(&snap);
        let slot = dp.worker(w);
        let mut t = Totals::default();
        t.add(&snap);
        workers.push(WorkerView {
            index: w,
            lcore: slot.lcore.load(Relaxed),
            active: slot.active.load(Relaxed) == 1,
            heartbeat_ns: slot.heartbeat_ns.load(Relaxed),
            counters: t,
            latency: read_latency(dp.latency(w)),
        });
    }
    let mut ports = Vec::new();
    for i in 0..MAX_PORTS {
        let p = dp.port(i);
        let idr = p.id_role.load(Acquire);
        if idr >> 63 == 0 {
            continue;
        }
        let mut stats = [0u64; 8];
        for (o, s) in stats.iter_mut().zip(&p.stats) {
            *o = s.load(Relaxed);
        }
        let mac = p.mac.load(Relaxed).to_be_bytes();
        ports.push(PortView {
            id: idr as u16,
            role: ROLES.get(((idr >> 16) & 0xff) as usize).copied().unwrap_or("unknown"),
            name: get_text(&p.name),
            driver: get_text(&p.driver),
            mac: [mac[2], mac[3], mac[4], mac[5], mac[6], mac[7]],
            rx_queues: p.rx_queues.load(Relaxed),
            tx_queues: p.tx_queues.load(Relaxed),
            stats,
        });
    }
    StatsView {
        time_ns: now_ns(),
        running: dp.dataplane_alive(),
        pid: h.pid.load(Relaxed),
        start_ns: h.start_ns.load(Relaxed),
        tsc_hz: h.tsc_hz.load(Relaxed),
        detail: h.flags.load(Relaxed) & DP_FLAG_DETAIL != 0,
        dispatch: get_text(&h.dispatch),
        crypto: get_text(&h.crypto),
        workers,
        totals,
        ports,
        events_dropped: dp.dropped_events().iter().fold(0u64, |a, d| a.wrapping_add(*d)),
    }
}

fn counters_json(t: &Totals) -> Value {
    let mut m = Map::new();
    for c in Counter::ALL {
        m.insert(c.name().into(), t.get(*c).into());
    }
    let mut d = Map::new();
    for r in DropReason::ALL {
        d.insert(r.name().into(), t.drop(*r).into());
    }
    m.insert("drops".into(), Value::Object(d));
    m.insert("drops_total".into(), t.total_drops().into());
    Value::Object(m)
}

/// Processing cycles per packet, per stage (`None` where no packet passed the stage),
/// rounded to a tenth.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CyclesPerPacket {
    pub rx: Option<f64>,
    pub dispatch: Option<f64>,
    pub decap: Option<f64>,
    pub encap: Option<f64>,
    pub tx: Option<f64>,
    pub busy: Option<f64>,
}

pub fn cycles_per_packet(t: &Totals) -> CyclesPerPacket {
    let ratio = |a: u64, b: u64| (b != 0).then(|| ((a as f64 / b as f64) * 10.0).round() / 10.0);
    let rx = t.sum(&[Counter::rx_public, Counter::rx_protected, Counter::rx_punt, Counter::rx_handoff]);
    let tx = t.sum(&[Counter::tx_public, Counter::tx_protected, Counter::tx_punt]);
    CyclesPerPacket {
        rx: ratio(t.get(Counter::rx_cycles), rx),
        dispatch: ratio(t.get(Counter::dispatch_cycles), rx),
        decap: ratio(t.get(Counter::decap_cycles), t.get(Counter::in_packets)),
        encap: ratio(t.get(Counter::encap_cycles), t.get(Counter::out_packets)),
        tx: ratio(t.get(Counter::tx_cycles), tx),
        busy: ratio(t.get(Counter::busy_cycles), rx),
    }
}

fn cycles_json(t: &Totals) -> Value {
    let c = cycles_per_packet(t);
    json!({"rx": c.rx, "dispatch": c.dispatch, "decap": c.decap, "encap": c.encap, "tx": c.tx, "busy": c.busy})
}

/// Every nonzero drop reason, one line each: name, count, description.
pub fn drops_text(t: &Totals) -> String {
    let mut o = String::new();
    for r in DropReason::ALL {
        let n = t.drop(*r);
        if n > 0 {
            let _ = writeln!(o, "    {:<24} {:<10} {}", r.name(), n, r.description());
        }
    }
    o
}

impl Latency {
    /// One line of text: the quantiles and how many packets they cover.
    pub fn line(&self) -> String {
        format!(
            "latency RX->TX  p50 {:.0} ns  p90 {:.0} ns  p99 {:.0} ns  p99.9 {:.0} ns  max {:.0} ns ({} packets)",
            self.p50_ns, self.p90_ns, self.p99_ns, self.p999_ns, self.max_ns, self.count
        )
    }
}

impl StatsView {
    /// Every worker's histogram merged.
    pub fn merged_latency(&self) -> Option<Histogram<u64>> {
        let mut all: Option<Histogram<u64>> = None;
        for h in self.workers.iter().filter_map(|w| w.latency.as_ref()) {
            match &mut all {
                Some(a) => {
                    let _ = a.add(h);
                }
                None => all = Some(h.clone()),
            }
        }
        all
    }

    /// Quantiles of a histogram of TSC cycles, in nanoseconds.
    pub fn latency_of(&self, h: &Histogram<u64>) -> Latency {
        let ns = |cycles: f64| {
            if self.tsc_hz == 0 { 0.0 } else { (cycles * 1e9 / self.tsc_hz as f64 * 10.0).round() / 10.0 }
        };
        Latency {
            count: h.len(),
            min_ns: ns(h.min() as f64),
            mean_ns: ns(h.mean()),
            p50_ns: ns(h.value_at_quantile(0.5) as f64),
            p90_ns: ns(h.value_at_quantile(0.9) as f64),
            p99_ns: ns(h.value_at_quantile(0.99) as f64),
            p999_ns: ns(h.value_at_quantile(0.999) as f64),
            max_ns: ns(h.max() as f64),
        }
    }

    fn latency_json(&self, h: Option<&Histogram<u64>>) -> Value {
        match h {
            None => Value::Null,
            Some(h) => {
                let l = self.latency_of(h);
                json!({"count": l.count, "min_ns": l.min_ns, "mean_ns": l.mean_ns, "p50_ns": l.p50_ns, "p90_ns": l.p90_ns,
                       "p99_ns": l.p99_ns, "p999_ns": l.p999_ns, "max_ns": l.max_ns})
            }
        }
    }

    pub fn accounting(&self) -> Accounting {
        let t = &self.totals;
        let g = |c| t.get(c);
        Accounting {
            packets_in: t.sum(&[Counter::rx_public, Counter::rx_protected, Counter::rx_punt]),
            packets_out: t.sum(&[Counter::tx_public, Counter::tx_protected, Counter::tx_punt]),
            dropped: t.total_drops(),
            consumed: t.sum(&[Counter::keepalives, Counter::frag_absorbed]),
            pending: t
                .sum(&[Counter::frag_pending, Counter::tx_pending])
                .wrapping_add(g(Counter::handoff_out).saturating_sub(g(Counter::rx_handoff))),
        }
    }

    pub fn to_json(&self) -> Value {
        let a = self.accounting();
        let workers: Vec<Value> = self
            .workers
            .iter()
            .map(|w| {
                let mut v = counters_json(&w.counters);
                v["worker"] = w.index.into();
                v["lcore"] = w.lcore.into();
                v["active"] = w.active.into();
                v["heartbeat_ns"] = w.heartbeat_ns.into();
                v["latency"] = self.latency_json(w.latency.as_ref());
                v["cycles_per_packet"] = cycles_json(&w.counters);
                v
            })
            .collect();
        let ports: Vec<Value> = self
            .ports
            .iter()
            .map(|p| {
                let mut v = json!({
                    "port": p.id, "role": p.role, "name": p.name, "driver": p.driver,
                    "mac": p.mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":"),
                    "rx_queues": p.rx_queues, "tx_queues": p.tx_queues,
                });
                for (k, s) in PORT_COUNTERS.iter().zip(p.stats) {
                    v[*k] = s.into();
                }
                v
            })
            .collect();
        let mut totals = counters_json(&self.totals);
        let mut punts = Map::new();
        punts.insert(PuntReason::Ike.name().into(), self.totals.get(Counter::punt_ike).into());
        punts.insert(PuntReason::Host.name().into(), self.totals.get(Counter::punt_host).into());
        totals["punts"] = Value::Object(punts);
        let merged = self.merged_latency();
        json!({
            "schema": SCHEMA,
            "time": self.time_ns as f64 / 1e9,
            "time_ns": self.time_ns,
            "dataplane": {
                "running": self.running, "pid": self.pid, "start_ns": self.start_ns, "tsc_hz": self.tsc_hz,
                "workers": self.workers.len(), "dispatch": self.dispatch, "crypto": self.crypto,
                "detail": self.detail,
            },
            "totals": totals,
            "accounting": {
                "in": a.packets_in, "out": a.packets_out, "dropped": a.dropped, "consumed": a.consumed,
                "pending": a.pending, "balanced": a.balanced(),
            },
            "latency": self.latency_json(merged.as_ref()),
            "cycles_per_packet": cycles_json(&self.totals),
            "workers": workers,
            "ports": ports,
            "events_dropped": self.events_dropped,
        })
    }

    /// The same counters in Prometheus text exposition format.
    pub fn to_prometheus(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(o, "# HELP natt_up Whether the dataplane process is running.\n# TYPE natt_up gauge");
        let _ = writeln!(o, "natt_up {}", u8::from(self.running));
        for c in Counter::ALL {
            let gauge = matches!(c, Counter::frag_pending | Counter::tx_pending);
            let name = if gauge { format!("natt_{}", c.name()) } else { format!("natt_{}_total", c.name()) };
            let _ = writeln!(o, "# HELP {name} {}", c.description());
            let _ = writeln!(o, "# TYPE {name} {}", if gauge { "gauge" } else { "counter" });
            for w in &self.workers {
                let _ = writeln!(o, "{name}{{worker=\"{}\"}} {}", w.index, w.counters.get(*c));
            }
        }
        let _ = writeln!(o, "# HELP natt_drops_total Packets dropped, by reason (see the README's drop-reason table).");
        let _ = writeln!(o, "# TYPE natt_drops_total counter");
        for w in &self.workers {
            for r in DropReason::ALL {
                let _ = writeln!(
                    o,
                    "natt_drops_total{{worker=\"{}\",reason=\"{}\"}} {}",
                    w.index,
                    r.name(),
                    w.counters.drop(*r)
                );
            }
        }
        for (i, k) in PORT_COUNTERS.iter().enumerate() {
            let _ =
                writeln!(o, "# HELP natt_port_{k}_total The PMD's {k} counter.\n# TYPE natt_port_{k}_total counter");
            for p in &self.ports {
                let _ = writeln!(
                    o,
                    "natt_port_{k}_total{{port=\"{}\",role=\"{}\",name=\"{}\"}} {}",
                    p.id,
                    p.role,
                    label(&p.name),
                    p.stats[i]
                );
            }
        }
        if let Some(h) = self.merged_latency() {
            let l = self.latency_of(&h);
            let _ = writeln!(
                o,
                "# HELP natt_latency_seconds Time from RX to TX per packet.\n# TYPE natt_latency_seconds summary"
            );
            for (q, v) in
                [("0.5", l.p50_ns), ("0.9", l.p90_ns), ("0.99", l.p99_ns), ("0.999", l.p999_ns), ("1", l.max_ns)]
            {
                let _ = writeln!(o, "natt_latency_seconds{{quantile=\"{q}\"}} {:.9}", v / 1e9);
            }
            let _ = writeln!(o, "natt_latency_seconds_sum {:.9}", l.mean_ns * l.count as f64 / 1e9);
            let _ = writeln!(o, "natt_latency_seconds_count {}", l.count);
        }
        let _ = writeln!(
            o,
            "# HELP natt_events_dropped_total Events lost to full event rings.\n# TYPE natt_events_dropped_total counter"
        );
        let _ = writeln!(o, "natt_events_dropped_total {}", self.events_dropped);
        o
    }
}

/// A Prometheus label value: backslash, double quote and newline escaped (port names come
/// from shared memory and are not trusted to be tame).
fn label(v: &str) -> String {
    let mut o = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => o.push_str("\\\\"),
            '"' => o.push_str("\\\""),
            '\n' => o.push_str("\\n"),
            c if c.is_control() => {}
            c => o.push(c),
        }
    }
    o
}

const _: () = assert!(SLOTS >= 64);

#[cfg(test)]
mod tests {
    use super::*;
    use core::sync::atomic::AtomicU64;

    fn block() -> Box<LatencyBlock> {
        Box::new(LatencyBlock {
            version: AtomicU64::new(0),
            pairs: AtomicU64::new(0),
            _pad: Default::default(),
            data: core::array::from_fn(|_| AtomicU64::new(0)),
        })
    }

    #[test]
    fn latency_survives_the_shared_block() {
        let mut h = new_histogram();
        for v in [100u64, 200, 200, 300, 5_000, 1_000_000, 77] {
            h.record(v).unwrap();
        }
        let b = block();
        assert!(read_latency(&b).is_none(), "an empty block is no histogram");
        write_latency(&b, &h);
        assert_eq!(b.version.load(Relaxed) % 2, 0);
        let got = read_latency(&b).unwrap();
        assert_eq!(got.len(), 7);
        for q in [0.0, 0.25, 0.5, 0.9, 0.99, 1.0] {
            assert_eq!(got.value_at_quantile(q), h.highest_equivalent(h.value_at_quantile(q)), "q {q}");
        }
        // Twice: the sequence number moves on, the content is replaced.
        let mut h2 = new_histogram();
        h2.record(42).unwrap();
        write_latency(&b, &h2);
        assert_eq!(b.version.load(Relaxed), 4);
        assert_eq!(read_latency(&b).unwrap().len(), 1);
    }

    #[test]
    fn more_buckets_than_pairs_keep_every_count() {
        let mut h = new_histogram();
        for v in 1..=100_000u64 {
            h.record(v).unwrap();
        }
        let b = block();
        write_latency(&b, &h);
        assert_eq!(b.pairs.load(Relaxed) as usize, LATENCY_PAIRS);
        let got = read_latency(&b).unwrap();
        assert_eq!(got.len(), 100_000);
        assert_eq!(got.max(), h.max());
    }

    #[test]
    fn counters_at_their_limits_are_read_and_rendered_without_a_panic() {
        // The dataplane segment is another process's memory: every counter of every
        // worker at u64::MAX (sums wrap), ports with every value at its limit, garbage
        // text and a latency block of nonsense. Reading and rendering it must not panic.
        use crate::dp::DpSegment;
        use crate::layout::DpLayout;
        let d = std::env::temp_dir().join(format!("natt-view-{}-limits", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let seg = DpSegment::open_or_create(&d, "t", DpLayout::new(2, 4, 64).unwrap(), 1).unwrap();
        seg.header().workers.store(u32::MAX, Relaxed);
        for w in 0..2 {
            let c = seg.counters(w);
            for k in Counter::ALL {
                c.set(*k, u64::MAX);
            }
            for r in DropReason::ALL {
                c.set_drop(*r, u64::MAX);
            }
            let l = seg.latency(w);
            l.pairs.store(u64::MAX, Relaxed);
            for x in &l.data {
                x.store(u64::MAX, Relaxed);
            }
        }
        for i in 0..MAX_PORTS {
            let p = seg.port(i);
            p.id_role.store(u64::MAX, Relaxed);
            for x in p.stats.iter().chain(&p.name).chain(&p.driver) {
                x.store(u64::MAX, Relaxed);
            }
        }
        seg.header().tsc_hz.store(1, Relaxed);
        let v = collect(&seg);
        assert_eq!(v.workers.len(), 2, "no more workers than the layout has");
        assert_eq!(v.totals.get(Counter::decap_packets), u64::MAX - 1, "two workers' u64::MAX, wrapped");
        let a = v.accounting();
        let _ = (a.balanced(), cycles_per_packet(&v.totals), drops_text(&v.totals));
        let j = v.to_json();
        assert!(j.is_object());
        assert!(!v.to_prometheus().is_empty());
        if let Some(h) = v.merged_latency() {
            let _ = v.latency_of(&h).line();
        }
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_hostile_block_is_clamped_not_trusted() {
        let b = block();
        b.pairs.store(u64::MAX, Relaxed);
        for (i, w) in b.data.iter().enumerate() {
            w.store(if i % 2 == 0 { [0, u64::MAX, 3][i % 3] } else { u64::MAX }, Relaxed);
        }
        let h = read_latency(&b).unwrap();
        assert!(h.max() <= h.highest_equivalent(LATENCY_MAX));
        assert!(h.min() >= 1);
        // Always odd: a writer that never finishes; the reader gives up.
        b.version.store(1, Relaxed);
        assert!(read_latency(&b).is_none());
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("net_pcap0"), "net_pcap0");
        assert_eq!(label("a\"b\\c\nd\re"), "a\\\"b\\\\c\\nde");
    }

    #[test]
    fn accounting_identity() {
        let a = Accounting { packets_in: 10, packets_out: 5, dropped: 2, consumed: 1, pending: 2 };
        assert!(a.balanced());
        assert!(!Accounting { pending: 1, ..a }.balanced());
    }
}
