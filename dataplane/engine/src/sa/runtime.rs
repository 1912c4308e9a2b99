//! What the engine keeps per SA while packets flow: the expanded key, the replay window
//! or sequence counter, the peer's current NAT endpoint, lifetime counters and stats.
//! Owned by exactly one worker; no field is shared.

use super::params::{DfPolicy, Direction, Encap, Lifetime, Mode, SaParams};
use super::prefix::SelectorSet;
use crate::crypto::{AeadKey, Backend, KeyError};
use crate::reason::DropReason;
use crate::replay::ReplayWindow;
use core::fmt;
use core::net::IpAddr;

/// An outer address and UDP port (0 for plain ESP).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub addr: IpAddr,
    pub port: u16,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.addr {
            IpAddr::V4(a) => write!(f, "{a}:{}", self.port),
            IpAddr::V6(a) => write!(f, "[{a}]:{}", self.port),
        }
    }
}

/// Monotonic per-SA counters. `repr(C)`: the two every packet updates come first.
#[derive(Clone, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct SaStats {
    /// Packets and inner bytes that passed (decapsulated or encapsulated).
    pub packets: u64,
    pub bytes: u64,
    /// Drops after this SA was identified, indexed by `DropReason::sa_index`.
    pub drops: [u64; DropReason::SA_COUNT],
    pub nat_changes: u64,
}

impl Default for SaStats {
    fn default() -> Self {
        SaStats { packets: 0, bytes: 0, drops: [0; DropReason::SA_COUNT], nat_changes: 0 }
    }
}

impl SaStats {
    pub fn drop_count(&self, r: DropReason) -> u64 {
        r.sa_index().map_or(0, |i| self.drops[i])
    }
}

/// Hot per-SA state. `repr(C)`, in the order packets need it: what every packet reads
/// (flags, addresses, counters, replay window, selectors, key schedule, the packet and
/// byte counts), then what is rarely read (per-reason drop counts, configured
/// lifetimes), so that looking ahead loads a prefix of it.
#[repr(C, align(64))]
pub struct SaRuntime<K> {
    pub spi: u32,
    pub salt: [u8; 4],
    pub direction: Direction,
    pub mode: Mode,
    pub gmac: bool,
    pub esn: bool,
    pub expired: bool,
    pub soft_fired: bool,
    pub nat_update: bool,
    pub ttl: u8,
    pub pad_to: u8,
    pub df: DfPolicy,
    pub encap: Option<Encap>,
    pub local: IpAddr,
    /// Where the peer is now: configured, then moved by authenticated NAT changes.
    pub endpoint: Endpoint,
    /// Outbound: last sequence number used.
    pub seq: u64,
    pub seq_max: u64,
    /// Outbound: numbers up to this one are durably reserved by the host.
    pub seq_reserved: u64,
    /// Identifies the key for reservations.
    pub key_fp: u64,
    /// Inbound: anti-replay window and ESN state.
    pub replay: ReplayWindow,
    /// Lifetime accounting need not look closer until `stats.packets` or `stats.bytes`
    /// reaches these (the nearest soft or hard limit not yet acted on; `u64::MAX`: none).
    pub(crate) next_limit_packets: u64,
    pub(crate) next_limit_bytes: u64,
    pub paired_spi: Option<u32>,
    /// Tunnel-mode traffic selectors, ready for per-packet checks.
    pub sel_local: SelectorSet,
    pub sel_peer: SelectorSet,
    pub key: K,
    pub stats: SaStats,
    /// Fixed at construction: `next_limit_*` are derived from it.
    pub(crate) lifetime: Lifetime,
}

impl<K: AeadKey> SaRuntime<K> {
    /// Start sending above `floor` (a reservation found after a restart): every number up
    /// to it may have been used before.
    pub fn resume_above(&mut self, floor: u64) {
        if floor > self.seq {
            self.seq = floor.min(self.seq_max);
            self.seq_reserved = self.seq;
        }
    }

    pub fn new<B: Backend<Key = K>>(p: &SaParams) -> Result<Self, KeyError> {
        let key = B::key(p.algorithm, p.key.expose())?;
        let mut rt = SaRuntime {
            spi: p.spi,
            salt: p.salt,
            direction: p.direction,
            mode: p.mode,
            gmac: p.algorithm.is_gmac(),
            esn: p.esn,
            expired: false,
            soft_fired: false,
            nat_update: p.nat_update,
            ttl: p.ttl,
            pad_to: p.pad_to,
            df: p.df,
            encap: p.encap,
            local: p.local,
            endpoint: Endpoint { addr: p.peer, port: p.encap.map_or(0, |e| e.peer_port) },
            seq: p.last_seq,
            seq_max: p.seq_max(),
            seq_reserved: p.last_seq,
            key_fp: crate::crypto::key_fingerprint(p.key.expose(), &p.salt),
            replay: ReplayWindow::new(p.replay_window, p.esn, p.last_seq),
            lifetime: p.lifetime,
            next_limit_packets: 0,
            next_limit_bytes: 0,
            paired_spi: p.paired_spi,
            sel_local: SelectorSet::new(&p.selectors.local),
            sel_peer: SelectorSet::new(&p.selectors.peer),
            stats: SaStats::default(),
            key,
        };
        rt.update_next_limits();
        Ok(rt)
    }

    /// Send to the peer's new NAT endpoint (outbound SAs). Returns false, changing
    /// nothing, if it is of another address family.
    pub fn follow_nat(&mut self, to: Endpoint) -> bool {
        if self.endpoint.addr.is_ipv4() != to.addr.is_ipv4() {
            return false;
        }
        self.endpoint = Endpoint { addr: to.addr, port: if self.encap.is_some() { to.port } else { 0 } };
        true
    }

    /// Carry the running state of `old` (the same SA before a replace with the same key:
    /// anti-replay window, sequence numbers, NAT endpoint, lifetime counters) into this
    /// one, so that replacing settings never reopens a window or reuses an IV. The
    /// windows are swapped, so that neither side allocates or frees here.
    pub fn carry_over(&mut self, old: &mut SaRuntime<K>) {
        core::mem::swap(&mut self.replay, &mut old.replay);
        self.seq = self.seq.max(old.seq);
        self.seq_reserved = self.seq_reserved.max(old.seq_reserved);
        self.endpoint = old.endpoint;
        self.expired = old.expired;
        self.soft_fired = old.soft_fired;
        self.stats = old.stats.clone();
        self.update_next_limits();
    }

    /// Count a drop attributed to this SA.
    #[inline]
    pub fn count_drop(&mut self, r: DropReason) {
        if let Some(i) = r.sa_index() {
            self.stats.drops[i] += 1;
        }
    }
}

impl<K> SaRuntime<K> {
    /// Bytes from the start that packets read: up to and including the packet and byte
    /// counts (see the field order).
    pub const HOT_LEN: usize = core::mem::offset_of!(Self, stats) + 16;

    /// Recompute where lifetime accounting must next look: the soft limits until they
    /// fired, the hard limits until the SA expired.
    pub(crate) fn update_next_limits(&mut self) {
        let lt = &self.lifetime;
        let pick = |soft: Option<u64>, hard: Option<u64>| {
            let soft = if self.soft_fired { None } else { soft };
            let hard = if self.expired { None } else { hard };
            soft.into_iter().chain(hard).min().unwrap_or(u64::MAX)
        };
        self.next_limit_packets = pick(lt.soft_packets, lt.hard_packets);
        self.next_limit_bytes = pick(lt.soft_bytes, lt.hard_bytes);
    }
}

impl<K> fmt::Debug for SaRuntime<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SaRuntime")
            .field("spi", &format_args!("0x{:08x}", self.spi))
            .field("direction", &self.direction)
            .field("endpoint", &self.endpoint)
            .field("seq", &self.seq)
            .field("expired", &self.expired)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::ring_backend::RingKey;
    use core::mem::{offset_of, size_of};

    #[test]
    fn what_packets_read_is_a_prefix() {
        type Rt = SaRuntime<RingKey>;
        let hot = Rt::HOT_LEN;
        for (what, end) in [
            ("key schedule", offset_of!(Rt, key) + size_of::<RingKey>()),
            ("replay window", offset_of!(Rt, replay) + size_of::<ReplayWindow>()),
            ("selectors", offset_of!(Rt, sel_peer) + size_of::<SelectorSet>()),
            ("endpoint", offset_of!(Rt, endpoint) + size_of::<Endpoint>()),
            ("lifetime thresholds", offset_of!(Rt, next_limit_bytes) + 8),
        ] {
            assert!(end <= hot, "{what} ends at {end}, past the hot prefix ({hot})");
        }
        assert!(offset_of!(Rt, lifetime) >= hot, "configured lifetimes are cold");
        assert!(hot <= size_of::<Rt>());
    }
}
