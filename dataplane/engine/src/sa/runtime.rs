//! What the engine keeps per SA while packets flow: the expanded key, the replay window
//! or sequence counter, the peer's current NAT endpoint, lifetime counters and stats.
//! Owned by exactly one worker; no field is shared.

use super::params::{DfPolicy, Direction, Encap, Lifetime, Mode, SaParams};
use super::prefix::SelectorSet;
use crate::crypto::{AeadKey, Backend, KeyError};
use crate::reason::DropReason;
use crate::replay::ReplayWindow;
use crate::wire::{checksum, ipv4, proto, udp};
use core::fmt;
use core::net::IpAddr;

/// Length of the outer IPv4 and UDP headers of a tunnel-mode packet.
pub(crate) const OUTER4_LEN: usize = ipv4::HEADER_LEN + udp::HEADER_LEN;

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

/// What the inbound path reads of an SA besides the head (`SaRuntime::HEAD_LEN`): where
/// the peer is now, which every authenticated packet compares its outer source with, and
/// the anti-replay window. One cache line of its own, after the head, so that an outbound
/// packet, which reads neither on its common path (see `SaRuntime::outer4`), is not made
/// to load it.
#[derive(Debug)]
#[repr(C, align(64))]
pub struct PeerLine {
    /// Where the peer is now: configured, then moved by authenticated NAT changes.
    pub endpoint: Endpoint,
    /// Inbound: anti-replay window and ESN state.
    pub replay: ReplayWindow,
}

/// Hot per-SA state. `repr(C)`, in the order packets need it: a head that every packet
/// reads (`HEAD_LEN` bytes, two cache lines: flags, our IPv4 address, sequence numbers
/// and lifetime thresholds; the outer header template, the IPv4 selectors of the common
/// case and the packet and byte counts), then the per-reason drop counts, the line that
/// inbound packets read besides (`peer`: NAT endpoint and replay window), the selector
/// sets and the key, of which a packet reads what `hot_spans` names, and last what no
/// packet reads. A store that looks ahead loads the head, the peer line for inbound SAs
/// and the hot spans, not the whole (1.2 to 1.8 KiB by crypto library).
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
    /// `sel4` decides IPv4 selector checks (tunnel mode; see `sel4`).
    pub(crate) sel4_exact: bool,
    /// The checks of some packets read the selector sets (`check_spans`): tunnel mode,
    /// and `sel4` does not decide, or the sets have IPv6 prefixes.
    pub(crate) sel_sets_hot: bool,
    pub ttl: u8,
    /// `pad_to` less one (`pad_to` is a power of two): padding is a mask, per packet.
    pub pad_mask: u8,
    pub df: DfPolicy,
    pub encap: Option<Encap>,
    /// `local` is an IPv6 address; if not, `local4` is its IPv4 address
    /// (`Ipv4Addr::to_bits`), so that an inbound packet's destination check reads the head.
    pub(crate) local_v6: bool,
    /// The store's own byte, in the head that every lookup reads: the engine never
    /// reads or writes it after construction (0), and `carry_over` leaves it alone.
    /// The dataplane's store keeps there whether it trusts what it knows of the SA
    /// without reading its record. (It fills what was padding.)
    pub store_mark: u8,
    pub(crate) local4: u32,
    /// Outbound: last sequence number used.
    pub seq: u64,
    /// Outbound: numbers up to this one are durably reserved by the host.
    pub seq_reserved: u64,
    /// Lifetime accounting need not look closer until `stats.packets` or `stats.bytes`
    /// reaches these (the nearest soft or hard limit not yet acted on; `u64::MAX`: none).
    pub(crate) next_limit_packets: u64,
    pub(crate) next_limit_bytes: u64,
    /// Outbound, tunnel mode over IPv4: the outer IPv4 header, and the UDP header if the
    /// SA encapsulates, as far as every packet shares them (version and header length,
    /// DF if the policy sets it, TTL, protocol, addresses, ports), and the ones'-complement
    /// sum of the IPv4 words; the rest is filled in per packet. All zero for any other
    /// kind of SA, whose outer headers are written from `local` and `peer`. Rebuilt
    /// whenever the endpoint moves (`outer4_build`).
    pub(crate) outer4: [u8; OUTER4_LEN],
    pub(crate) outer4_sum: u32,
    /// With `sel4_exact`, each side's IPv4 selectors as one (address, mask), local then
    /// peer: a side with one IPv4 prefix has it here, a side with none has (1, 0), which
    /// no address matches. Most remote-access SAs have one prefix per side, and then an
    /// IPv4 packet's selector check reads nothing past the head.
    pub(crate) sel4: [(u32, u32); 2],
    /// Packet and byte counts first (the head ends with them), then drop counts.
    pub stats: SaStats,
    /// The NAT endpoint and the replay window: read by inbound packets (see `PeerLine`).
    pub peer: PeerLine,
    pub local: IpAddr,
    /// Identifies the key for reservations.
    pub key_fp: u64,
    pub paired_spi: Option<u32>,
    /// Tunnel-mode traffic selectors, ready for per-packet checks.
    pub sel_local: SelectorSet,
    pub sel_peer: SelectorSet,
    pub key: K,
    /// Fixed at construction: `next_limit_*` are derived from it.
    pub(crate) lifetime: Lifetime,
}

impl<K: AeadKey> SaRuntime<K> {
    /// Start sending above `floor` (a reservation found after a restart): every number up
    /// to it may have been used before.
    pub fn resume_above(&mut self, floor: u64) {
        if floor > self.seq {
            self.seq = floor.min(self.seq_max());
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
            sel4_exact: false,
            sel_sets_hot: false,
            ttl: p.ttl,
            pad_mask: (usize::from(p.pad_to).next_power_of_two() - 1) as u8,
            df: p.df,
            encap: p.encap,
            local: p.local,
            local_v6: p.local.is_ipv6(),
            store_mark: 0,
            local4: match p.local {
                IpAddr::V4(a) => a.to_bits(),
                IpAddr::V6(_) => 0,
            },
            peer: PeerLine {
                endpoint: Endpoint { addr: p.peer, port: p.encap.map_or(0, |e| e.peer_port) },
                replay: ReplayWindow::new(p.replay_window, p.esn, p.last_seq),
            },
            seq: p.last_seq,
            seq_reserved: p.last_seq,
            key_fp: crate::crypto::key_fingerprint(p.key.expose(), &p.salt),
            lifetime: p.lifetime,
            next_limit_packets: 0,
            next_limit_bytes: 0,
            paired_spi: p.paired_spi,
            sel_local: SelectorSet::new(&p.selectors.local),
            sel_peer: SelectorSet::new(&p.selectors.peer),
            stats: SaStats::default(),
            outer4: [0; OUTER4_LEN],
            outer4_sum: 0,
            sel4: [(1, 0); 2],
            key,
        };
        if let (Mode::Tunnel, Some(local), Some(peer)) = (rt.mode, rt.sel_local.exact_v4(), rt.sel_peer.exact_v4()) {
            rt.sel4 = [local, peer];
            rt.sel4_exact = true;
        }
        rt.sel_sets_hot = rt.mode == Mode::Tunnel && (!rt.sel4_exact || rt.sel_local.has_v6() || rt.sel_peer.has_v6());
        rt.update_next_limits();
        rt.outer4_build();
        Ok(rt)
    }

    /// Send to the peer's new NAT endpoint (outbound SAs). Returns false, changing
    /// nothing, if it is of another address family.
    pub fn follow_nat(&mut self, to: Endpoint) -> bool {
        if self.peer.endpoint.addr.is_ipv4() != to.addr.is_ipv4() {
            return false;
        }
        self.peer.endpoint = Endpoint { addr: to.addr, port: if self.encap.is_some() { to.port } else { 0 } };
        self.outer4_build();
        true
    }

    /// Lay out `outer4` for the current endpoint (see the field).
    fn outer4_build(&mut self) {
        self.outer4 = [0; OUTER4_LEN];
        self.outer4_sum = 0;
        let (Direction::Outbound, Mode::Tunnel, IpAddr::V4(src), IpAddr::V4(dst)) =
            (self.direction, self.mode, self.local, self.peer.endpoint.addr)
        else {
            return;
        };
        let h = &mut self.outer4;
        h[0] = 0x45;
        if self.df == DfPolicy::Set {
            h[6] = (ipv4::FLAG_DF >> 8) as u8;
        }
        h[8] = self.ttl;
        h[9] = if self.encap.is_some() { proto::UDP } else { proto::ESP };
        h[12..16].copy_from_slice(&src.octets());
        h[16..20].copy_from_slice(&dst.octets());
        if let Some(enc) = self.encap {
            h[20..22].copy_from_slice(&enc.local_port.to_be_bytes());
            h[22..24].copy_from_slice(&self.peer.endpoint.port.to_be_bytes());
        }
        self.outer4_sum = checksum::fold(checksum::sum(&h[..ipv4::HEADER_LEN])).into();
    }

    /// Carry the running state of `old` (the same SA before a replace with the same key:
    /// anti-replay window, sequence numbers, NAT endpoint, lifetime counters) into this
    /// one, so that replacing settings never reopens a window or reuses an IV. The
    /// windows are swapped, so that neither side allocates or frees here.
    pub fn carry_over(&mut self, old: &mut SaRuntime<K>) {
        core::mem::swap(&mut self.peer.replay, &mut old.peer.replay);
        self.seq = self.seq.max(old.seq);
        self.seq_reserved = self.seq_reserved.max(old.seq_reserved);
        self.peer.endpoint = old.peer.endpoint;
        self.outer4_build();
        self.expired = old.expired;
        self.soft_fired = old.soft_fired;
        self.stats = old.stats.clone();
        self.update_next_limits();
    }

    /// Whether this outbound SA covers IPv4 destination `dst` (`Ipv4Addr::to_bits`) with
    /// a peer selector of exactly `len` bits, as the head's selectors tell (tunnel mode
    /// with one IPv4 prefix a side, the common case: `false` for any other SA, whatever
    /// its selectors). A store that found the SA without reading its record checks the
    /// longest-prefix match with this.
    #[inline]
    pub fn selected_by_v4(&self, dst: u32, len: u32) -> bool {
        let (addr, mask) = self.sel4[1];
        // The mask of `len` bits, compared whole (`count_ones` is a dozen instructions
        // without POPCNT, which the baseline x86-64 target lacks).
        let want = u32::MAX.checked_shl(32u32.saturating_sub(len)).unwrap_or(0);
        self.sel4_exact && self.direction == Direction::Outbound && len <= 32 && mask == want && dst & mask == addr
    }

    /// Besides the head (`HEAD_LEN`), the parts of this state that a packet with
    /// `data_len` bytes to seal or open reads: `check_spans` and `key_spans`, as
    /// (start, length). For a store that looks ahead.
    #[inline]
    pub fn hot_spans(&self, data_len: usize, f: &mut impl FnMut(*const u8, usize)) {
        self.check_spans(f);
        self.key_spans(data_len, f);
    }

    /// What the checks after the crypto read besides the head: the selector sets (tunnel
    /// mode), unless the head's `sel4` decides and there are no IPv6 prefixes; and for an
    /// outbound SA without an outer header template (`outer4`: IPv6, transport mode),
    /// the addresses its outer header is written from; our address where it is IPv6. (The
    /// inbound path's peer line is the store's to ask for with the head: `peer_line`.)
    #[inline]
    pub fn check_spans(&self, f: &mut impl FnMut(*const u8, usize)) {
        if self.sel_sets_hot {
            for s in [&self.sel_local, &self.sel_peer] {
                f(core::ptr::from_ref(s).cast(), core::mem::size_of::<SelectorSet>());
            }
        }
        let untemplated = self.direction == Direction::Outbound && !self.templated();
        if untemplated {
            f(self.peer_line(), core::mem::size_of::<PeerLine>());
        }
        if untemplated || self.local_v6 {
            // (An inbound packet's destination check reads it where it is IPv6.)
            f(core::ptr::from_ref(&self.local).cast(), core::mem::size_of::<IpAddr>());
        }
    }

    /// The start of the line that inbound packets read besides the head (`PeerLine`).
    #[inline]
    pub fn peer_line(&self) -> *const u8 {
        core::ptr::from_ref(&self.peer).cast()
    }

    /// What sealing or opening `data_len` bytes reads of the key (`AeadKey::hot_spans`;
    /// reads the key's first line).
    #[inline]
    pub fn key_spans(&self, data_len: usize, f: &mut impl FnMut(*const u8, usize)) {
        self.key.hot_spans(data_len, f);
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
    /// Bytes from the start that every packet reads: up to and including the packet and
    /// byte counts (see the field order).
    pub const HEAD_LEN: usize = core::mem::offset_of!(Self, stats) + 16;

    /// Where the key starts.
    pub const KEY_OFFSET: usize = core::mem::offset_of!(Self, key);

    /// The highest sequence number this SA may send (RFC 4303 §3.3.3: 64 bits with ESN,
    /// else 32).
    #[inline]
    pub fn seq_max(&self) -> u64 {
        if self.esn { u64::MAX } else { u64::from(u32::MAX) }
    }

    /// Whether our traffic selectors cover IPv4 address `a` (`Ipv4Addr::to_bits`).
    #[inline(always)]
    pub fn local_has_v4(&self, a: u32) -> bool {
        if self.sel4_exact { a & self.sel4[0].1 == self.sel4[0].0 } else { self.sel_local.contains_v4(a) }
    }

    /// Whether the peer's traffic selectors cover IPv4 address `a`.
    #[inline(always)]
    pub fn peer_has_v4(&self, a: u32) -> bool {
        if self.sel4_exact { a & self.sel4[1].1 == self.sel4[1].0 } else { self.sel_peer.contains_v4(a) }
    }

    /// Whether `a` is our address on this SA (`local`), reading the head for IPv4.
    #[inline]
    pub fn is_local(&self, a: &IpAddr) -> bool {
        match a {
            IpAddr::V4(a) => !self.local_v6 && a.to_bits() == self.local4,
            IpAddr::V6(_) => *a == self.local,
        }
    }

    /// Whether the outer headers come from the template (`outer4`; `outer4_build` leaves
    /// it all zero where they do not).
    #[inline]
    pub(crate) fn templated(&self) -> bool {
        self.outer4[0] == 0x45
    }

    /// Where an outbound packet goes now: from the outer header template where there is
    /// one (the head), else the peer line.
    #[inline]
    pub fn destination(&self) -> Endpoint {
        if !self.templated() {
            return self.peer.endpoint;
        }
        let h = &self.outer4;
        let addr = IpAddr::from([h[16], h[17], h[18], h[19]]);
        let port = if self.encap.is_some() { u16::from_be_bytes([h[22], h[23]]) } else { 0 };
        Endpoint { addr, port }
    }

    /// Whether our traffic selectors cover `a`.
    #[inline]
    pub fn local_has(&self, a: &IpAddr) -> bool {
        match a {
            IpAddr::V4(a) => self.local_has_v4(a.to_bits()),
            IpAddr::V6(a) => self.sel_local.contains_v6(a.to_bits()),
        }
    }

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
            .field("endpoint", &self.peer.endpoint)
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
    fn what_every_packet_reads_is_the_head_and_inbound_ones_the_peer_line() {
        type Rt = SaRuntime<RingKey>;
        let head = Rt::HEAD_LEN;
        // All that an outbound packet of the common case reads (tunnel mode over IPv4,
        // the outer headers from the template), and what inbound ones read besides the
        // peer line.
        for (what, end) in [
            ("flags", offset_of!(Rt, expired) + 1),
            ("encapsulation", offset_of!(Rt, encap) + size_of::<Option<Encap>>()),
            ("our IPv4 address", offset_of!(Rt, local4) + 4),
            ("sequence numbers", offset_of!(Rt, seq_reserved) + 8),
            ("IPv4 selectors", offset_of!(Rt, sel4) + 16),
            ("lifetime thresholds", offset_of!(Rt, next_limit_bytes) + 8),
            ("outer header template", offset_of!(Rt, outer4_sum) + 4),
            ("packet and byte counts", offset_of!(Rt, stats) + 16),
            ("the store's mark", offset_of!(Rt, store_mark) + 1),
        ] {
            assert!(end <= head, "{what} ends at {end}, past the head ({head})");
        }
        assert_eq!(offset_of!(SaStats, packets), 0);
        assert_eq!(offset_of!(SaStats, bytes), 8);
        assert!(head <= 2 * 64, "the head is {head} bytes, more than two cache lines");
        // The peer line: one line of its own, past the head.
        let peer = offset_of!(Rt, peer);
        assert!(peer >= head && peer % 64 == 0, "the peer line at {peer}");
        assert_eq!(size_of::<PeerLine>(), 64);
        for (what, at) in [
            ("our address", offset_of!(Rt, local)),
            ("key fingerprint", offset_of!(Rt, key_fp)),
            ("selectors", offset_of!(Rt, sel_local)),
            ("key", offset_of!(Rt, key)),
            ("lifetimes", offset_of!(Rt, lifetime)),
        ] {
            assert!(at >= head, "{what} at {at}, inside the head");
        }
    }

    /// The destination read from the template is the endpoint, for every kind of SA, and
    /// follows NAT changes; the destination check of `is_local` is `local`'s.
    #[test]
    fn the_template_tells_the_destination_and_the_head_our_address() {
        use crate::crypto::Ring;
        for (local, peer, encap) in [
            ("203.0.113.1", "198.51.100.7", true),
            ("203.0.113.1", "198.51.100.7", false),
            ("2001:db8::1", "2001:db8::2", true),
        ] {
            let mut sa = serde_json::json!({
                "name": "a", "spi": 4096, "direction": "outbound", "mode": "tunnel", "algorithm": "aes128-gcm",
                "key": "00112233445566778899aabbccddeeff", "salt": "01020304", "local": local, "peer": peer,
                "selectors": {"local": ["0.0.0.0/0"], "peer": ["10.0.0.2/32"]},
            });
            sa["encap"] = if encap {
                serde_json::json!({"local_port": 4500, "peer_port": 4500})
            } else {
                serde_json::Value::Null
            };
            let p = crate::sa::config::parse_sa(&sa).expect("valid SA");
            let mut rt = SaRuntime::new::<Ring>(&p).expect("key");
            assert_eq!(rt.outer4[0] == 0x45, !local.contains(':'), "{local} {encap}");
            assert_eq!(rt.destination(), rt.peer.endpoint, "{local} {encap}");
            let moved = Endpoint {
                addr: if local.contains(':') { "2001:db8::9".parse().unwrap() } else { "192.0.2.9".parse().unwrap() },
                port: 31000,
            };
            assert!(rt.follow_nat(moved));
            let want = Endpoint { addr: moved.addr, port: if encap { 31000 } else { 0 } };
            assert_eq!((rt.destination(), rt.peer.endpoint), (want, want), "{local} {encap}");
            let ours: IpAddr = local.parse().unwrap();
            assert!(rt.is_local(&ours));
            for other in ["203.0.113.2", "0.0.0.0", "2001:db8::1", "::ffff:203.0.113.1", "198.51.100.7"] {
                let a: IpAddr = other.parse().unwrap();
                assert_eq!(rt.is_local(&a), a == ours, "{local} against {other}");
            }
        }
    }

    #[test]
    fn hot_spans_name_the_selector_sets_only_where_the_head_cannot_decide() {
        use crate::crypto::Ring;
        type Rt = SaRuntime<RingKey>;
        let key = (offset_of!(Rt, key), size_of::<RingKey>());
        let sets = [
            (offset_of!(Rt, sel_local), size_of::<SelectorSet>()),
            (offset_of!(Rt, sel_peer), size_of::<SelectorSet>()),
        ];
        // (mode, local selectors, peer selectors, whether the head decides IPv4 checks,
        // whether the sets are named)
        type Case<'a> = (&'a str, &'a [&'a str], &'a [&'a str], bool, bool);
        let cases: [Case; 5] = [
            ("transport", &[], &[], false, false),
            ("tunnel", &["10.0.0.0/8"], &["192.168.1.2/32"], true, false),
            ("tunnel", &["10.0.0.0/8", "2001:db8::/32"], &["192.168.1.2/32"], true, true),
            ("tunnel", &["2001:db8::/32"], &["2001:db8:1::2/128"], true, true),
            ("tunnel", &["10.0.0.0/8", "172.16.0.0/12"], &["192.168.1.2/32"], false, true),
        ];
        for (mode, local, peer, exact, named) in cases {
            let mut sa = serde_json::json!({
                "name": "a", "spi": 4096, "direction": "inbound", "mode": mode, "algorithm": "aes128-gcm",
                "key": "00112233445566778899aabbccddeeff", "salt": "01020304",
                "local": "203.0.113.1", "peer": "198.51.100.7",
            });
            if mode == "tunnel" {
                sa["selectors"] = serde_json::json!({"local": local, "peer": peer});
            }
            let p = crate::sa::config::parse_sa(&sa).expect("valid SA");
            let rt = SaRuntime::new::<Ring>(&p).expect("key");
            assert_eq!(rt.sel4_exact, exact, "{mode} {local:?} {peer:?}");
            let base = core::ptr::from_ref(&rt) as usize;
            let mut spans = Vec::new();
            rt.hot_spans(64, &mut |at, len| spans.push((at as usize - base, len)));
            let want: Vec<_> = if named { sets.into_iter().chain([key]).collect() } else { vec![key] };
            assert_eq!(spans, want, "{mode} {local:?} {peer:?}");
        }
        // Outbound SAs without a template write their outer headers from `local` and the
        // peer line; with one (tunnel mode over IPv4), neither.
        let peer_line = (offset_of!(Rt, peer), size_of::<PeerLine>());
        let ours = (offset_of!(Rt, local), size_of::<IpAddr>());
        for (mode, local, peer, want) in [
            ("tunnel", "203.0.113.1", "198.51.100.7", vec![key]),
            ("tunnel", "2001:db8::1", "2001:db8::2", vec![peer_line, ours, key]),
            ("transport", "203.0.113.1", "198.51.100.7", vec![peer_line, ours, key]),
        ] {
            let mut sa = serde_json::json!({
                "name": "a", "spi": 4096, "direction": "outbound", "mode": mode, "algorithm": "aes128-gcm",
                "key": "00112233445566778899aabbccddeeff", "salt": "01020304", "local": local, "peer": peer,
            });
            if mode == "tunnel" {
                sa["selectors"] = serde_json::json!({"local": ["10.0.0.0/8"], "peer": ["192.168.1.2/32"]});
            }
            let rt = SaRuntime::new::<Ring>(&crate::sa::config::parse_sa(&sa).expect("valid SA")).expect("key");
            let base = core::ptr::from_ref(&rt) as usize;
            let mut spans = Vec::new();
            rt.hot_spans(64, &mut |at, len| spans.push((at as usize - base, len)));
            assert_eq!(spans, want, "outbound {mode} {local}");
        }
    }

    /// The head's IPv4 selectors decide exactly as the sets do, whichever decides.
    #[test]
    fn head_selectors_agree_with_the_sets() {
        use crate::crypto::Ring;
        let sides: [&[&str]; 5] = [
            &["10.0.0.0/8"],
            &["192.168.1.2/32"],
            &["0.0.0.0/0"],
            &["2001:db8::/32"],
            &["10.0.0.0/8", "172.16.0.0/12", "2001:db8::/32"],
        ];
        let addrs = [0x0a01_0203u32, 0xc0a8_0102, 0xc0a8_0103, 0xac10_0001, 0x0808_0808, 0, u32::MAX, 1];
        for local in sides {
            for peer in sides {
                let sa = serde_json::json!({
                    "name": "a", "spi": 4096, "direction": "inbound", "mode": "tunnel", "algorithm": "aes128-gcm",
                    "key": "00112233445566778899aabbccddeeff", "salt": "01020304",
                    "local": "203.0.113.1", "peer": "198.51.100.7",
                    "selectors": {"local": local, "peer": peer},
                });
                let rt = SaRuntime::new::<Ring>(&crate::sa::config::parse_sa(&sa).expect("valid SA")).expect("key");
                for a in addrs {
                    assert_eq!(rt.local_has_v4(a), rt.sel_local.contains_v4(a), "{local:?} {a:08x}");
                    assert_eq!(rt.peer_has_v4(a), rt.sel_peer.contains_v4(a), "{peer:?} {a:08x}");
                }
            }
        }
        // Which answers they give is not vacuous: some in, some out.
        let sa = serde_json::json!({
            "name": "a", "spi": 4096, "direction": "inbound", "mode": "tunnel", "algorithm": "aes128-gcm",
            "key": "00112233445566778899aabbccddeeff", "salt": "01020304",
            "local": "203.0.113.1", "peer": "198.51.100.7",
            "selectors": {"local": ["10.0.0.0/8"], "peer": ["192.168.1.2/32"]},
        });
        let rt = SaRuntime::new::<Ring>(&crate::sa::config::parse_sa(&sa).expect("valid SA")).expect("key");
        assert!(rt.sel4_exact);
        assert!(rt.local_has_v4(0x0a01_0203) && !rt.local_has_v4(0x0b01_0203));
        assert!(rt.peer_has_v4(0xc0a8_0102) && !rt.peer_has_v4(0xc0a8_0103));
    }

    #[test]
    fn an_outbound_sa_is_selected_through_the_head_only_by_its_one_ipv4_prefix_at_its_length() {
        use crate::crypto::Ring;
        let make = |direction: &str, mode: &str, peer: &[&str]| {
            let sa = serde_json::json!({
                "name": "a", "spi": 4096, "direction": direction, "mode": mode, "algorithm": "aes128-gcm",
                "key": "00112233445566778899aabbccddeeff", "salt": "01020304",
                "local": "203.0.113.1", "peer": "198.51.100.7",
                "selectors": {"local": ["10.0.0.0/8"], "peer": peer},
            });
            SaRuntime::new::<Ring>(&crate::sa::config::parse_sa(&sa).expect("valid SA")).expect("key")
        };
        let (host, net) = (0xc0a8_0102u32, 0xc0a8_0100u32);
        let rt = make("outbound", "tunnel", &["192.168.1.2/32"]);
        assert!(rt.selected_by_v4(host, 32));
        assert!(!rt.selected_by_v4(host, 24) && !rt.selected_by_v4(host + 1, 32));
        let rt = make("outbound", "tunnel", &["192.168.1.0/24", "2001:db8::/32"]);
        assert!(rt.selected_by_v4(host, 24) && rt.selected_by_v4(net + 255, 24));
        assert!(!rt.selected_by_v4(host, 32) && !rt.selected_by_v4(0xc0a8_0202, 24));
        let rt = make("outbound", "tunnel", &["0.0.0.0/0"]);
        assert!(rt.selected_by_v4(host, 0) && rt.selected_by_v4(0, 0));
        assert!(!rt.selected_by_v4(host, 1) && !rt.selected_by_v4(host, 33) && !rt.selected_by_v4(host, u32::MAX));
        let rt = make("outbound", "tunnel", &["128.0.0.0/1"]);
        assert!(rt.selected_by_v4(host, 1) && !rt.selected_by_v4(host, 0) && !rt.selected_by_v4(0x7fff_ffff, 1));
        // What the head cannot decide, never: two IPv4 prefixes, none, transport mode,
        // and an inbound SA.
        for rt in [
            make("outbound", "tunnel", &["192.168.1.2/32", "192.168.1.3/32"]),
            make("outbound", "tunnel", &["2001:db8::/32"]),
            make("outbound", "transport", &["192.168.1.2/32"]),
            make("inbound", "tunnel", &["192.168.1.2/32"]),
        ] {
            for len in [0, 24, 32] {
                assert!(!rt.selected_by_v4(host, len) && !rt.selected_by_v4(0, len) && !rt.selected_by_v4(1, len));
            }
        }
    }
}
