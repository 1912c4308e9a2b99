//! The JSON the tool prints: one line per packet, the SA list of `check`, and the
//! closing summary of counters.

use natt_engine::event::endpoint_json;
use natt_engine::reason::{DropReason, PuntReason};
use natt_engine::sa::Direction;
use natt_engine::{Event, Frame, InResult, InVerdict, OutResult, OutVerdict, PktBuf};
use serde_json::{Map, Value, json};
use std::time::Duration;

fn spi_hex(spi: u32) -> String {
    format!("0x{spi:08x}")
}

fn base(index: u64, ts: Duration, len: usize) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("packet".into(), index.into());
    m.insert("time".into(), json!(ts.as_secs_f64()));
    m.insert("len".into(), len.into());
    m
}

fn sa_fields(m: &mut Map<String, Value>, engine: &crate::Eng, dir: Direction, spi: Option<u32>) {
    if let Some(spi) = spi {
        m.insert("spi".into(), spi_hex(spi).into());
        if let Some(e) = engine.sa(dir, spi) {
            m.insert("sa".into(), e.params.name.clone().into());
        }
    }
}

fn events_json(events: &[Event]) -> Value {
    Value::Array(events.iter().map(Event::to_json).collect())
}

pub fn decap_line<B: AsRef<[u8]> + AsMut<[u8]>>(
    index: u64,
    ts: Duration,
    len: usize,
    res: &InResult,
    pkt: &PktBuf<B>,
    engine: &crate::Eng,
    events: &[Event],
) -> Value {
    let mut m = base(index, ts, len);
    let (verdict, extra): (&str, Option<(&str, Value)>) = match res.verdict {
        InVerdict::Tunnel => ("accepted", Some(("mode", "tunnel".into()))),
        InVerdict::Transport => ("accepted", Some(("mode", "transport".into()))),
        InVerdict::Keepalive => ("keepalive", None),
        InVerdict::Punt(p) => ("punted", Some(("punt", p.name().into()))),
        InVerdict::Held => ("held", None),
        InVerdict::Drop(r) => ("dropped", Some(("reason", r.name().into()))),
    };
    m.insert("verdict".into(), verdict.into());
    if let Some((k, v)) = extra {
        m.insert(k.into(), v);
    }
    sa_fields(&mut m, engine, Direction::Inbound, res.spi);
    if let Some(ep) = res.source {
        m.insert("nat".into(), endpoint_json(&ep));
    }
    if matches!(res.verdict, InVerdict::Tunnel | InVerdict::Transport) {
        m.insert("out_len".into(), pkt.len().into());
    }
    if !events.is_empty() {
        m.insert("events".into(), events_json(events));
    }
    Value::Object(m)
}

pub fn encap_line<B: AsRef<[u8]> + AsMut<[u8]>>(
    index: u64,
    ts: Duration,
    len: usize,
    res: &OutResult,
    pkt: &PktBuf<B>,
    engine: &crate::Eng,
    events: &[Event],
) -> Value {
    let mut m = base(index, ts, len);
    match res.verdict {
        OutVerdict::Encapsulated => {
            m.insert("verdict".into(), "accepted".into());
        }
        OutVerdict::Punt(p) => {
            m.insert("verdict".into(), "punted".into());
            m.insert("punt".into(), p.name().into());
        }
        OutVerdict::IcmpTooBig | OutVerdict::IcmpTtlExceeded => {
            // What leaves is the error, not the packet: in the output capture too.
            let v = if res.verdict == OutVerdict::IcmpTooBig { "icmp_too_big" } else { "icmp_ttl_exceeded" };
            m.insert("verdict".into(), v.into());
            m.insert("out_len".into(), pkt.len().into());
        }
        OutVerdict::Drop(r) => {
            m.insert("verdict".into(), "dropped".into());
            m.insert("reason".into(), r.name().into());
        }
    }
    sa_fields(&mut m, engine, Direction::Outbound, res.spi);
    if res.verdict == OutVerdict::Encapsulated {
        m.insert("seq".into(), res.seq.into());
        if let Some(ep) = res.dest {
            m.insert("nat".into(), endpoint_json(&ep));
        }
        m.insert("out_len".into(), pkt.len().into());
    }
    if !events.is_empty() {
        m.insert("events".into(), events_json(events));
    }
    Value::Object(m)
}

/// Counters at the end of a run.
pub fn summary(engine: &crate::Eng, packets: u64) -> Value {
    let c = engine.counters();
    let drops: Map<String, Value> = DropReason::ALL
        .iter()
        .filter(|r| c.drops_of(**r) > 0)
        .map(|r| (r.name().to_owned(), c.drops_of(*r).into()))
        .collect();
    let punts: Map<String, Value> =
        PuntReason::ALL.iter().map(|p| (p.name().to_owned(), c.punts_of(*p).into())).collect();
    json!({
        "summary": {
            "crypto": natt_ipsec_mb::selected().library(),
            "packets": packets,
            "decapsulated": c.decap_packets,
            "encapsulated": c.encap_packets,
            "keepalives": c.keepalives,
            "punted": punts,
            "dropped": drops,
            "fragments_held": c.frag_held,
            "reassembled": c.reassembled,
            "still_held": engine.reassembler().held(),
            "nat_changes": c.nat_changes,
            "icmp_too_big": c.icmp_too_big,
            "icmp_ttl_exceeded": c.icmp_ttl_exceeded,
            "mss_clamped": c.mss_clamped,
        }
    })
}
