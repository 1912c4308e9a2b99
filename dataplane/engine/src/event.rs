//! Events the engine reports to the control plane (NAT mapping changes, lifetime
//! milestones) and the `Host` trait through which it reports them and reserves
//! sequence numbers. A host whose event queue is full drops and counts, it never blocks.

use crate::sa::{Direction, Endpoint};

/// Which lifetime limit was reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    Bytes,
    Packets,
}

impl Limit {
    pub const fn name(self) -> &'static str {
        match self {
            Limit::Bytes => "bytes",
            Limit::Packets => "packets",
        }
    }
}

/// Why an SA stopped passing traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpiryCause {
    HardLifetime(Limit),
    SeqExhausted,
}

impl ExpiryCause {
    pub const fn name(self) -> &'static str {
        match self {
            ExpiryCause::HardLifetime(Limit::Bytes) => "hard_bytes",
            ExpiryCause::HardLifetime(Limit::Packets) => "hard_packets",
            ExpiryCause::SeqExhausted => "seq_exhausted",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// An authenticated packet came from another outer address or port than the SA's
    /// peer endpoint. `updated` names the outbound SA that now sends to `new`.
    NatMappingChanged { old: Endpoint, new: Endpoint, updated: Option<u32> },
    /// A soft limit was reached: rekey due.
    SoftLifetime(Limit),
    /// A hard limit was reached.
    HardLifetime(Limit),
    /// The sequence number space is used up.
    SeqExhausted,
    /// The SA passes no more traffic.
    SaExpired(ExpiryCause),
}

impl EventKind {
    pub const fn name(&self) -> &'static str {
        match self {
            EventKind::NatMappingChanged { .. } => "nat_mapping_changed",
            EventKind::SoftLifetime(_) => "soft_lifetime",
            EventKind::HardLifetime(_) => "hard_lifetime",
            EventKind::SeqExhausted => "seq_exhausted",
            EventKind::SaExpired(_) => "sa_expired",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    pub spi: u32,
    pub direction: Direction,
    pub kind: EventKind,
}

impl Event {
    /// One JSON object, as logged and streamed.
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "event": self.kind.name(),
            "spi": format!("0x{:08x}", self.spi),
            "direction": self.direction.name(),
        });
        match self.kind {
            EventKind::NatMappingChanged { old, new, updated } => {
                v["old"] = endpoint_json(&old);
                v["new"] = endpoint_json(&new);
                v["updated_spi"] = updated.map_or(serde_json::Value::Null, |s| format!("0x{s:08x}").into());
            }
            EventKind::SoftLifetime(l) | EventKind::HardLifetime(l) => v["limit"] = l.name().into(),
            EventKind::SeqExhausted => {}
            EventKind::SaExpired(c) => v["cause"] = c.name().into(),
        }
        v
    }
}

pub fn endpoint_json(e: &Endpoint) -> serde_json::Value {
    serde_json::json!({ "addr": e.addr.to_string(), "port": e.port })
}

/// A block of outbound sequence numbers the host must record durably before the engine
/// uses any of them, so that a restarted dataplane resumes above every number it may
/// have used (no IV is ever repeated under a key).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeqReservation {
    pub spi: u32,
    /// Identifies the key (see `crypto::key_fingerprint`): a new key restarts the count.
    pub key_fp: u64,
    /// Every number up to and including this one may be used.
    pub up_to: u64,
}

/// What the engine needs from the process around it: a place for events (which must
/// never block: a full queue drops and counts) and durable sequence-number
/// reservations.
pub trait Host {
    fn event(&mut self, ev: Event);

    /// Record a reservation; return false if it could not be recorded, in which case the
    /// engine sends nothing under the SA. Hosts without restart concerns accept all.
    fn reserve_seq(&mut self, _r: SeqReservation) -> bool {
        true
    }
}

impl Host for Vec<Event> {
    fn event(&mut self, ev: Event) {
        self.push(ev);
    }
}

/// Discards events, accepts every reservation (benchmarks).
#[derive(Debug, Default)]
pub struct Discard;

impl Host for Discard {
    fn event(&mut self, _: Event) {}
}
