//! The one list of drop and punt reasons. It makes the `DropReason` enum, the counter
//! names that stats and logs use, and their descriptions; nothing else names a reason.
//!
//! `sa`-scoped reasons happen after the SA is known and are also counted per SA.

/// Where a reason can be attributed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Before any SA is known: counted per worker only.
    Global,
    /// After the SA lookup: counted per worker and per SA.
    Sa,
    /// Raised by the DPDK dataplane around the engine (buffers, rings, ports).
    Dataplane,
}

macro_rules! drop_reasons {
    ($( $variant:ident = $name:literal, $scope:ident, $desc:literal; )*) => {
        /// Why a packet was dropped. Cheap to copy; `name()` is its counter name.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u8)]
        pub enum DropReason { $( $variant, )* }

        impl DropReason {
            pub const ALL: &'static [DropReason] = &[ $( DropReason::$variant, )* ];
            pub const COUNT: usize = Self::ALL.len();
            const NAMES: &'static [&'static str] = &[ $( $name, )* ];
            const DESCRIPTIONS: &'static [&'static str] = &[ $( $desc, )* ];
            const SCOPES: &'static [Scope] = &[ $( Scope::$scope, )* ];
        }
    };
}

drop_reasons! {
    FrameTruncated = "frame_truncated", Global, "frame shorter than its Ethernet header or 802.1Q tag";
    StackedVlan = "stacked_vlan", Global, "more than one VLAN tag; one 802.1Q tag is supported";
    IpHeaderInvalid = "ip_header_invalid", Global, "IP version, header length, total length or extension-header chain inconsistent with the frame";
    IpChecksumBad = "ip_checksum_bad", Global, "IPv4 header checksum does not verify";
    UdpHeaderInvalid = "udp_header_invalid", Global, "UDP length field inconsistent with the IP payload";
    NattMalformed = "natt_malformed", Global, "UDP-encapsulated payload too short for an ESP header, or SPI in the reserved range 1-255 (RFC 3948 §2.2)";
    EspSpiReserved = "esp_spi_reserved", Global, "plain ESP too short for its header, or with an SPI in the reserved range 0-255";
    AhUnsupported = "ah_unsupported", Global, "AH (IP protocol 51) cannot cross a NAT and is refused";
    FragInvalid = "frag_invalid", Global, "fragment with a bad offset or length (non-final not a multiple of 8, past 64 KiB, or disagreeing with the final fragment)";
    FragOverlap = "frag_overlap", Global, "fragment overlaps another of its datagram; the whole datagram is dropped";
    FragTooBig = "frag_too_big", Global, "reassembled datagram would exceed the reassembly limit or the packet buffer";
    FragTableFull = "frag_table_full", Global, "no reassembly slot free, or the source already holds its share of slots";
    FragTimeout = "frag_timeout", Global, "fragment discarded because its datagram was not complete in time";
    NoSa = "no_sa", Global, "no inbound SA has this SPI";
    NoOutboundSa = "no_outbound_sa", Global, "no outbound SA's traffic selectors cover the destination";
    WrongDestination = "wrong_destination", Sa, "outer destination address or UDP port is not the SA's local endpoint";
    EncapMismatch = "encap_mismatch", Sa, "UDP-encapsulated ESP for an SA without encapsulation, or plain ESP for one with";
    SaExpired = "sa_expired", Sa, "the SA reached its hard lifetime or ran out of sequence numbers";
    EspTooShort = "esp_too_short", Sa, "ESP packet shorter than header, IV, trailer and ICV";
    EspMisaligned = "esp_misaligned", Sa, "ciphertext length not a multiple of 4 (RFC 4303 §2.4)";
    ReplayDuplicate = "replay_duplicate", Sa, "sequence number already received (anti-replay)";
    ReplayStale = "replay_stale", Sa, "sequence number left of the anti-replay window, or zero";
    AuthFailed = "auth_failed", Sa, "ICV does not verify: wrong key, corrupted or forged packet";
    BadPadding = "bad_padding", Sa, "pad length longer than the payload, or pad bytes not 1, 2, 3, ...";
    DummyPacket = "dummy_packet", Sa, "dummy packet (next header 59), discarded as RFC 4303 §2.6 requires";
    NextHeaderUnsupported = "next_header_unsupported", Sa, "next header is not IPv4 or IPv6 on a tunnel-mode SA";
    InnerMalformed = "inner_malformed", Sa, "inner packet has an invalid header or is longer than its ESP payload";
    SelectorMismatch = "selector_mismatch", Sa, "inner addresses outside the SA's traffic selectors (anti-spoofing)";
    EcnCeNotEct = "ecn_ce_not_ect", Sa, "outer header marked CE over a Not-ECT inner packet (RFC 6040 §4.2)";
    TtlExceeded = "ttl_exceeded", Sa, "TTL or hop limit would reach zero when forwarded, and no ICMP Time Exceeded could be sent instead (about an ICMP error, no source of the family, rate limit)";
    SeqExhausted = "seq_exhausted", Sa, "the next sequence number would wrap; the SA is expired, never reused";
    SeqUnreserved = "seq_unreserved", Sa, "the host could not durably reserve more sequence numbers, so none are used";
    NoHeadroom = "no_headroom", Sa, "buffer headroom too small for the outer headers";
    NoTailroom = "no_tailroom", Sa, "buffer tailroom too small for the ESP trailer and ICV";
    MtuExceeded = "mtu_exceeded", Sa, "encapsulated packet would exceed the public MTU, and no ICMP error could be sent instead (IPv4 without DF, an ICMP error, no source of the family, rate limit)";
    TransportExtHeaders = "transport_ext_headers", Sa, "IPv6 packet with extension headers on a transport-mode SA";
    MultiSegment = "multi_segment", Dataplane, "multi-segment packet too big for one mbuf, or no mbuf free to linearise it into";
    SaInvalid = "sa_invalid", Dataplane, "the shared SA table holds a record that fails validation (corrupt, or from another build)";
    HandoffFull = "handoff_full", Dataplane, "the ring to the worker that owns the SA was full";
    TxFull = "tx_full", Dataplane, "the port's TX queue stayed full; the packet could not be sent";
    NoPuntPort = "no_punt_port", Dataplane, "IKE or host traffic, but no kernel interface is configured to take it (--punt)";
    NotOwner = "not_owner", Dataplane, "the SA belongs to another worker (the table changed while the packet was on its way)";
}

const fn sa_slots() -> ([u8; DropReason::COUNT], usize) {
    let mut t = [u8::MAX; DropReason::COUNT];
    let mut i = 0;
    let mut n = 0;
    while i < DropReason::COUNT {
        if matches!(DropReason::SCOPES[i], Scope::Sa) {
            t[i] = n as u8;
            n += 1;
        }
        i += 1;
    }
    (t, n)
}

const SA_SLOTS: ([u8; DropReason::COUNT], usize) = sa_slots();

impl DropReason {
    /// Number of `Sa`-scoped reasons (the length of a per-SA drop array).
    pub const SA_COUNT: usize = SA_SLOTS.1;

    /// The counter name, e.g. `auth_failed`.
    pub const fn name(self) -> &'static str {
        Self::NAMES[self as usize]
    }

    pub const fn description(self) -> &'static str {
        Self::DESCRIPTIONS[self as usize]
    }

    pub const fn scope(self) -> Scope {
        Self::SCOPES[self as usize]
    }

    /// Index into a per-SA drop array, for `Sa`-scoped reasons.
    pub const fn sa_index(self) -> Option<usize> {
        match SA_SLOTS.0[self as usize] {
            u8::MAX => None,
            i => Some(i as usize),
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|r| r.name() == name)
    }

    /// The `Sa`-scoped reasons in per-SA array order.
    pub fn sa_scoped() -> impl Iterator<Item = DropReason> {
        Self::ALL.iter().copied().filter(|r| r.sa_index().is_some())
    }
}

/// An outer IPv4 header that `ipv4::check` refused.
impl From<crate::wire::ipv4::CheckError> for DropReason {
    fn from(e: crate::wire::ipv4::CheckError) -> Self {
        match e {
            crate::wire::ipv4::CheckError::Header => DropReason::IpHeaderInvalid,
            crate::wire::ipv4::CheckError::Checksum => DropReason::IpChecksumBad,
        }
    }
}

impl core::fmt::Display for DropReason {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a packet was handed to the host stack instead of being processed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PuntReason {
    /// IKE: behind the non-ESP marker on the NAT-T port, or on UDP 500.
    Ike,
    /// Not IPsec: ARP, ICMP, other UDP or TCP, other fragments. For the host stack.
    Host,
}

impl PuntReason {
    pub const ALL: &'static [PuntReason] = &[PuntReason::Ike, PuntReason::Host];
    pub const COUNT: usize = Self::ALL.len();

    pub const fn name(self) -> &'static str {
        match self {
            PuntReason::Ike => "ike",
            PuntReason::Host => "host",
        }
    }

    pub const fn description(self) -> &'static str {
        match self {
            PuntReason::Ike => "IKE behind the non-ESP marker on the NAT-T port, or on UDP 500",
            PuntReason::Host => "traffic for the host stack that is not IPsec (ARP, ICMP, other ports)",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn names_are_unique_snake_case_and_round_trip() {
        let mut seen = HashSet::new();
        for &r in DropReason::ALL {
            assert!(seen.insert(r.name()), "duplicate name {}", r.name());
            assert!(r.name().bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'));
            assert_eq!(DropReason::from_name(r.name()), Some(r));
            assert!(!r.description().is_empty());
        }
        assert_eq!(DropReason::from_name("nonsense"), None);
    }

    #[test]
    fn sa_indices_are_dense() {
        let idx: Vec<usize> = DropReason::sa_scoped().map(|r| r.sa_index().unwrap()).collect();
        assert_eq!(idx, (0..DropReason::SA_COUNT).collect::<Vec<_>>());
        assert_eq!(DropReason::NoSa.sa_index(), None);
        assert_eq!(DropReason::AuthFailed.scope(), Scope::Sa);
    }
}

#[cfg(test)]
mod readme {
    use super::*;

    #[test]
    fn every_reason_is_documented_in_the_readme() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
        for r in DropReason::ALL {
            let row = format!("| `{}` |", r.name());
            assert!(readme.contains(&row), "README.md lacks a row for drop reason {}", r.name());
        }
        for p in PuntReason::ALL {
            assert!(readme.contains(&format!("`{}`", p.name())), "README.md lacks punt reason {}", p.name());
        }
    }
}
