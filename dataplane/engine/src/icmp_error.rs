//! The ICMP errors a router sends in place of a packet it cannot forward, as the engine
//! sends them about packets from the protected side (RFC 1812, RFC 4443, and RFC 4301
//! §8.2 for a tunnel's entry); the frame becomes the error in place, quoting the packet
//! as it arrived, as much of it as fits in 576 bytes (IPv4, RFC 1812 §4.3.2.3) or 1280
//! (IPv6), and goes back the way the packet came, untagged:
//!
//! - **too big for the tunnel**: a tunnel-mode packet whose ESP packet would exceed the
//!   public side's MTU, where its sender can be told (an IPv4 packet with DF set, or any
//!   IPv6 packet: routers never fragment IPv6): Fragmentation Needed (RFC 1191) or Packet
//!   Too Big (RFC 4443 §3.2) with the largest inner packet that fits, so that path MTU
//!   discovery works through the tunnel instead of losing every full-size packet;
//! - **TTL exceeded**: a tunnel-mode packet whose TTL or hop limit would reach zero here:
//!   Time Exceeded in transit (RFC 792, RFC 4443 §3.3), so that traceroute shows the
//!   headend.
//!
//! No error is sent about an ICMP error, a fragment other than the first, or a packet
//! whose source is not a host's (unspecified, loopback, multicast, broadcast), nor to a
//! multicast or broadcast IPv4 destination (RFC 1812 §4.3.2.7, RFC 4443 §2.4(e)); errors
//! are rate-limited (RFC 4443 §2.4(f)) by one token bucket per engine. Those packets are
//! dropped under their reason (`mtu_exceeded`, `ttl_exceeded`), as are IPv4 packets too
//! big without DF (which would want fragmenting).

use crate::buf::Frame;
use crate::wire::ethernet::{self, ethertype};
use crate::wire::{icmp, ipv4, ipv6, proto};
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Which error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum IcmpError {
    /// Too big for the tunnel; the largest inner packet that fits.
    TooBig(usize),
    TtlExceeded,
}

/// How the engine sends ICMP errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IcmpConfig {
    /// The source of errors about IPv4 and IPv6 packets: an address of the headend on the
    /// protected side. Where unset, the SA's own (outer) address if it is of the inner
    /// packet's family; else no error is sent.
    pub source_v4: Option<Ipv4Addr>,
    pub source_v6: Option<Ipv6Addr>,
    /// Errors per second per engine, at most, in bursts of up to `rate / 20 + 1`; 0
    /// sends none.
    pub rate: u32,
}

impl Default for IcmpConfig {
    fn default() -> Self {
        IcmpConfig { source_v4: None, source_v6: None, rate: 1000 }
    }
}

impl IcmpConfig {
    /// From the command line's sources (at most one per family) and rate; the error
    /// names `option`.
    pub fn from_options(option: &str, sources: &[IpAddr], rate: u32) -> Result<Self, String> {
        let mut c = IcmpConfig { rate, ..IcmpConfig::default() };
        for a in sources {
            let taken = match a {
                IpAddr::V4(v) => c.source_v4.replace(*v).is_some(),
                IpAddr::V6(v) => c.source_v6.replace(*v).is_some(),
            };
            if taken {
                return Err(format!("{option} {a}: one address per family (an IPv4 and an IPv6 at most)"));
            }
            if a.is_unspecified() || a.is_multicast() || a.is_loopback() {
                return Err(format!("{option} {a}: not a unicast address of the headend"));
            }
        }
        Ok(c)
    }

    /// The source of an error about a packet of the family `v6` through an SA whose own
    /// address is `local`: the address given for the family, else `local` if it is of
    /// the family; `None`: no error can be sent.
    pub(crate) fn source(&self, v6: bool, local: IpAddr) -> Option<IpAddr> {
        let given = if v6 { self.source_v6.map(IpAddr::V6) } else { self.source_v4.map(IpAddr::V4) };
        given.or((local.is_ipv6() == v6).then_some(local))
    }
}

/// Largest ICMP error, quoted packet included: IPv4 (RFC 1812 §4.3.2.3), IPv6 (RFC 4443
/// §2.4(c)).
const MAX_V4: usize = 576;
const MAX_V6: usize = 1280;

/// The rate limit: time credit in nanoseconds, each error costing `1e9 / rate`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Bucket {
    credit: u64,
    at: u64,
    cost: u64,
    cap: u64,
}

impl Bucket {
    pub(crate) fn new(rate: u32) -> Self {
        if rate == 0 {
            return Bucket { credit: 0, at: 0, cost: u64::MAX, cap: 0 };
        }
        let cost = 1_000_000_000 / u64::from(rate);
        let cap = cost * (u64::from(rate) / 20 + 1);
        Bucket { credit: cap, at: 0, cost, cap }
    }

    /// Whether an error may be sent at `now` (ns, any monotonic clock); takes its cost.
    pub(crate) fn take(&mut self, now: u64) -> bool {
        self.credit = self.credit.saturating_add(now.saturating_sub(self.at)).min(self.cap);
        self.at = self.at.max(now);
        if self.credit >= self.cost {
            self.credit -= self.cost;
            true
        } else {
            false
        }
    }
}

/// The largest inner packet that fits the MTU: the ESP payload, padded to `unit` with
/// its 2-byte trailer, after `overhead` bytes of outer headers, ESP header and IV, and
/// before the ICV.
pub(crate) fn largest_inner(mtu: usize, overhead: usize, unit: usize, icv: usize) -> usize {
    let room = mtu.saturating_sub(overhead + icv);
    (room / unit * unit).saturating_sub(crate::wire::esp::TRAILER_LEN)
}

/// Whether an error may be sent about the inner packet `ip` (IPv4 or IPv6 per `v6`,
/// its header `hl` bytes), and to whom: its source.
pub(crate) fn may_answer(ip: &[u8], v6: bool, hl: usize) -> Option<IpAddr> {
    if v6 {
        let p = ipv6::Packet::new_checked(ip).ok()?;
        let src = p.src();
        if src.is_unspecified() || src.is_multicast() || src.is_loopback() {
            return None;
        }
        if p.next_header() == proto::ICMPV6 && ip.get(ipv6::HEADER_LEN).is_none_or(|t| icmp::is_error_v6(*t)) {
            return None;
        }
        Some(IpAddr::V6(src))
    } else {
        let p = ipv4::Packet::new_checked(ip).ok()?;
        let (src, dst) = (p.src(), p.dst());
        let unusable = |a: Ipv4Addr| a.is_unspecified() || a.is_loopback() || a.is_multicast() || a.is_broadcast();
        if unusable(src) || src.octets()[0] >= 240 || dst.is_multicast() || dst.is_broadcast() || p.frag_offset() != 0 {
            return None;
        }
        if p.protocol() == proto::ICMP && ip.get(hl).is_none_or(|t| icmp::is_error_v4(*t)) {
            return None;
        }
        Some(IpAddr::V4(src))
    }
}

/// Whether a frame whose inner packet starts `at` bytes into its buffer has the room in
/// front for the error's headers.
pub(crate) fn has_room(at: usize, v6: bool) -> bool {
    at >= ethernet::HEADER_LEN + icmp::HEADER_LEN + if v6 { ipv6::HEADER_LEN } else { ipv4::HEADER_LEN }
}

/// Turn `pkt`, whose inner packet of `ip_len` bytes is at `l3`, into the error `what`
/// about it from `from` to `to`. False, the frame unchanged, if the buffer lacks the
/// headroom (the error's headers go in front of the quoted packet).
pub(crate) fn write<F: Frame>(
    pkt: &mut F,
    l3: usize,
    ip_len: usize,
    from: IpAddr,
    to: IpAddr,
    what: IcmpError,
    ident: u16,
) -> bool {
    let v6 = to.is_ipv6();
    let (hl, max) = if v6 { (ipv6::HEADER_LEN, MAX_V6) } else { (ipv4::HEADER_LEN, MAX_V4) };
    let quote = ip_len.min(max - hl - icmp::HEADER_LEN);
    let h = pkt.head();
    let Some(l2) = (h + l3).checked_sub(ethernet::HEADER_LEN + hl + icmp::HEADER_LEN) else { return false };
    let end = h + l3 + quote;
    let raw = pkt.raw_mut();
    if end > raw.len() {
        return false;
    }
    // Back where it came from: the frame's source becomes its destination.
    let mut macs = [0u8; 12];
    macs[..6].copy_from_slice(&raw[h + 6..h + 12]);
    macs[6..].copy_from_slice(&raw[h..h + 6]);
    let f = &mut raw[l2..end];
    f[..12].copy_from_slice(&macs);
    let ip = ethernet::HEADER_LEN;
    let msg = ip + hl;
    let total = hl + icmp::HEADER_LEN + quote;
    match (from, to) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            f[12..ip].copy_from_slice(&ethertype::IPV4.to_be_bytes());
            // Precedence "internetwork control", as routers mark their ICMP.
            let repr = ipv4::Repr {
                src,
                dst,
                protocol: proto::ICMP,
                tos: 0xc0,
                ttl: 64,
                ident,
                dont_frag: false,
                total_len: total as u16,
            };
            ipv4::Packet::new_unchecked(&mut f[ip..]).emit_basic(&repr);
            let (t, code, rest) = match what {
                IcmpError::TooBig(mtu) => (icmp::DEST_UNREACHABLE, icmp::CODE_FRAG_NEEDED, mtu.min(0xffff) as u32),
                IcmpError::TtlExceeded => (icmp::TIME_EXCEEDED, 0, 0),
            };
            icmp::Packet::new_unchecked(&mut f[msg..]).emit_error_v4(t, code, rest);
        }
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            f[12..ip].copy_from_slice(&ethertype::IPV6.to_be_bytes());
            let payload_len = (icmp::HEADER_LEN + quote) as u16;
            let repr = ipv6::Repr {
                src,
                dst,
                next_header: proto::ICMPV6,
                traffic_class: 0,
                flow_label: 0,
                hop_limit: 64,
                payload_len,
            };
            ipv6::Packet::new_unchecked(&mut f[ip..]).emit(&repr);
            let (t, rest) = match what {
                IcmpError::TooBig(mtu) => (icmp::PACKET_TOO_BIG, mtu.min(u32::MAX as usize) as u32),
                IcmpError::TtlExceeded => (icmp::TIME_EXCEEDED_V6, 0),
            };
            icmp::Packet::new_unchecked(&mut f[msg..]).emit_error_v6(t, 0, rest, &src, &dst);
        }
        _ => return false,
    }
    pkt.set_range(l2, end - l2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_allows_its_burst_then_its_rate() {
        let mut b = Bucket::new(1000);
        let burst = (0..100).filter(|_| b.take(0)).count();
        assert_eq!(burst, 51);
        // A millisecond buys one more; half of one buys nothing.
        assert!(!b.take(500_000));
        assert!(b.take(1_000_000));
        assert!(!b.take(1_000_000));
        // A clock that goes back takes nothing and gives nothing.
        assert!(!b.take(10));
        // A long quiet period refills the burst, no more.
        assert_eq!((0..100).filter(|_| b.take(10_000_000_000)).count(), 51);
        let mut off = Bucket::new(0);
        assert!(!off.take(0) && !off.take(u64::MAX));
    }

    #[test]
    fn sources_come_one_per_family() {
        let a: Vec<IpAddr> = vec!["192.0.2.1".parse().unwrap(), "2001:db8::1".parse().unwrap()];
        let c = IcmpConfig::from_options("--icmp-source", &a, 10).unwrap();
        assert_eq!(
            (c.source_v4, c.source_v6, c.rate),
            (Some("192.0.2.1".parse().unwrap()), Some("2001:db8::1".parse().unwrap()), 10)
        );
        let e = IcmpConfig::from_options("--icmp-source", &[a[0], "192.0.2.2".parse().unwrap()], 10).unwrap_err();
        assert_eq!(e, "--icmp-source 192.0.2.2: one address per family (an IPv4 and an IPv6 at most)");
        let e = IcmpConfig::from_options("--icmp-source", &["224.0.0.1".parse().unwrap()], 10).unwrap_err();
        assert!(e.contains("not a unicast address"), "{e}");
    }

    #[test]
    fn the_largest_inner_packet_fills_the_mtu_exactly() {
        // IPv4 outer, UDP, ESP header and IV: 44 bytes; ICV 16; padded to 4.
        assert_eq!(largest_inner(1500, 44, 4, 16), 1438);
        assert_eq!(largest_inner(1500, 44, 16, 16), 1438);
        // IPv6 outer: 64 bytes before the payload.
        assert_eq!(largest_inner(1500, 64, 4, 16), 1418);
        assert_eq!(largest_inner(1500, 64, 16, 16), 1406);
        assert_eq!(largest_inner(40, 44, 4, 16), 0);
    }
}
