//! TCP MSS clamping. A TCP SYN (or SYN-ACK) crossing the tunnel in either direction has
//! its MSS option lowered to what fits the tunnel, so that neither end sends segments the
//! tunnel cannot carry whole, whether or not ICMP reaches it (`icmp_error` is the other
//! half). `auto` takes the largest inner packet that fits the public MTU after ESP (see
//! `icmp_error::largest_inner`) less the inner IP and TCP headers; an MSS already below is
//! left alone, as is a SYN without the option. The TCP checksum is patched
//! incrementally (RFC 1624). Only unfragmented packets whose TCP header follows the IP
//! header directly (IPv4 options allowed, no IPv6 extension headers) are looked at.

use crate::wire::{checksum, proto};

/// How SYNs' MSS options are clamped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MssClamp {
    Off,
    /// To what fits the tunnel: per SA, from the MTU and the SA's outer headers.
    #[default]
    Auto,
    /// To at most this many bytes.
    Fixed(u16),
}

impl core::str::FromStr for MssClamp {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(MssClamp::Auto),
            "off" => Ok(MssClamp::Off),
            n => match n.parse::<u16>() {
                Ok(v) if v >= 536 => Ok(MssClamp::Fixed(v)),
                _ => Err(format!("{s:?}: use auto, off, or an MSS in bytes of at least 536")),
            },
        }
    }
}

impl MssClamp {
    /// The MSS limit for inner packets of this family when `fits` bytes of inner packet
    /// fit the tunnel; `None`: no clamping.
    #[inline]
    pub(crate) fn limit(self, fits: usize, v6: bool) -> Option<u16> {
        match self {
            MssClamp::Off => None,
            MssClamp::Fixed(n) => Some(n),
            MssClamp::Auto => {
                let headers = if v6 { 40 + 20 } else { 20 + 20 };
                Some(fits.saturating_sub(headers).clamp(1, usize::from(u16::MAX)) as u16)
            }
        }
    }
}

const TCP_SYN: u8 = 0x02;
const OPT_END: u8 = 0;
const OPT_NOP: u8 = 1;
const OPT_MSS: u8 = 2;

/// Whether the TCP segment after the `hl`-byte IP header of `ip` is a SYN (or SYN-ACK):
/// the cheap look both directions take at every TCP packet before `clamp`.
#[inline]
pub(crate) fn is_syn(ip: &[u8], hl: usize) -> bool {
    ip.get(hl + 13).is_some_and(|flags| flags & TCP_SYN != 0)
}

/// Lower the MSS option of the TCP SYN in `ip` (an IPv4 or IPv6 packet: `v6`, header of
/// `hl` bytes) to `limit`. Returns whether it changed anything.
pub(crate) fn clamp(ip: &mut [u8], v6: bool, hl: usize, limit: u16) -> bool {
    let (protocol, whole) = if v6 {
        (ip.get(6).copied(), true)
    } else {
        // Fragment offset zero and MF clear.
        (ip.get(9).copied(), ip.get(6..8).is_some_and(|f| f[0] & 0x3f == 0 && f[1] == 0))
    };
    if protocol != Some(proto::TCP) || !whole {
        return false;
    }
    if !is_syn(ip, hl) {
        return false;
    }
    let Some(tcp) = ip.get_mut(hl..) else { return false };
    if tcp.len() < 20 {
        return false;
    }
    let doff = usize::from(tcp[12] >> 4) * 4;
    if doff < 20 || doff > tcp.len() {
        return false;
    }
    let mut i = 20;
    while i < doff {
        match tcp[i] {
            OPT_END => return false,
            OPT_NOP => i += 1,
            kind => {
                let len = usize::from(*tcp.get(i + 1).unwrap_or(&0));
                if len < 2 || i + len > doff {
                    return false;
                }
                if kind == OPT_MSS && len == 4 {
                    let mss = u16::from_be_bytes([tcp[i + 2], tcp[i + 3]]);
                    if mss <= limit {
                        return false;
                    }
                    set_bytes(tcp, i + 2, limit.to_be_bytes());
                    return true;
                }
                i += len;
            }
        }
    }
    false
}

/// Write two bytes at `at` in a TCP segment and patch its checksum (at 16) for the one
/// or two 16-bit words they touch (an option may start at an odd offset).
fn set_bytes(tcp: &mut [u8], at: usize, v: [u8; 2]) {
    let word = |t: &[u8], w: usize| u16::from_be_bytes([t[w], t.get(w + 1).copied().unwrap_or(0)]);
    let first = at & !1;
    let last = (at + 1) & !1;
    let old = (word(tcp, first), word(tcp, last));
    tcp[at] = v[0];
    tcp[at + 1] = v[1];
    let mut c = u16::from_be_bytes([tcp[16], tcp[17]]);
    c = checksum::update16(c, old.0, word(tcp, first));
    if last != first {
        c = checksum::update16(c, old.1, word(tcp, last));
    }
    tcp[16..18].copy_from_slice(&c.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::net::Ipv4Addr;

    /// An IPv4 TCP SYN with these options and a correct checksum.
    fn syn(options: &[u8], flags: u8) -> Vec<u8> {
        let (s, d) = (Ipv4Addr::new(10, 0, 1, 5), Ipv4Addr::new(10, 8, 0, 2));
        let mut tcp = vec![0u8; 20];
        tcp[0..2].copy_from_slice(&443u16.to_be_bytes());
        tcp[2..4].copy_from_slice(&5000u16.to_be_bytes());
        tcp[12] = (((20 + options.len()) / 4) as u8) << 4;
        tcp[13] = flags;
        tcp.extend_from_slice(options);
        tcp.extend_from_slice(b"data");
        let c = checksum::l4_checksum(checksum::pseudo_v4(s, d, 6, tcp.len() as u16), &tcp);
        tcp[16..18].copy_from_slice(&c.to_be_bytes());
        let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 6, 0, 0];
        ip.extend_from_slice(&s.octets());
        ip.extend_from_slice(&d.octets());
        ip.extend_from_slice(&tcp);
        let total = ip.len() as u16;
        ip[2..4].copy_from_slice(&total.to_be_bytes());
        ip
    }

    fn tcp_ok(ip: &[u8]) -> bool {
        let (s, d) = (Ipv4Addr::new(10, 0, 1, 5), Ipv4Addr::new(10, 8, 0, 2));
        let tcp = &ip[20..];
        checksum::fold(checksum::pseudo_v4(s, d, 6, tcp.len() as u16) + checksum::sum(tcp)) == 0xffff
    }

    #[test]
    fn the_mss_is_lowered_wherever_the_option_sits() {
        // MSS first (even offset), after one NOP (odd), after SACK-permitted and a NOP.
        for (opts, at) in [
            (vec![2, 4, 0x05, 0xb4, 1, 1, 4, 2], 22),
            (vec![1, 2, 4, 0x05, 0xb4, 1, 1, 1], 23),
            (vec![4, 2, 1, 2, 4, 0x05, 0xb4, 0], 25),
        ] {
            for flags in [0x02, 0x12] {
                let mut p = syn(&opts, flags);
                assert!(clamp(&mut p, false, 20, 1398), "{opts:?}");
                assert_eq!(u16::from_be_bytes([p[20 + at], p[21 + at]]), 1398);
                assert!(tcp_ok(&p), "checksum after clamping {opts:?}");
            }
        }
    }

    #[test]
    fn what_is_not_a_syn_with_a_larger_mss_is_left_alone() {
        let opts = [2, 4, 0x05, 0xb4];
        for (mut p, why) in [
            (syn(&opts, 0x10), "an ACK"),
            (syn(&[2, 4, 0x05, 0x00, 1, 1, 1, 1], 0x02), "MSS 1280 below the limit"),
            (syn(&[1, 1, 1, 1], 0x02), "no MSS option"),
            (syn(&[0, 0, 2, 4, 0x05, 0xb4, 0, 0], 0x02), "after the end of options"),
            (syn(&[2, 1, 0x05, 0xb4], 0x02), "an option length below 2"),
            (syn(&[3, 9, 2, 4, 0x05, 0xb4, 0, 0], 0x02), "an option running past the header"),
        ] {
            let before = p.clone();
            assert!(!clamp(&mut p, false, 20, 1398), "{why}");
            assert_eq!(p, before, "{why}");
        }
        let mut frag = syn(&opts, 0x02);
        frag[6] = 0x20; // MF
        assert!(!clamp(&mut frag, false, 20, 1398));
        let mut udp = syn(&opts, 0x02);
        udp[9] = 17;
        assert!(!clamp(&mut udp, false, 20, 1398));
        let mut short = syn(&opts, 0x02);
        short.truncate(30);
        assert!(!clamp(&mut short, false, 20, 1398));
    }

    #[test]
    fn limits_and_options() {
        assert_eq!(MssClamp::Auto.limit(1438, false), Some(1398));
        assert_eq!(MssClamp::Auto.limit(1418, true), Some(1358));
        assert_eq!(MssClamp::Fixed(1300).limit(1438, false), Some(1300));
        assert_eq!(MssClamp::Off.limit(1438, false), None);
        assert_eq!("auto".parse(), Ok(MssClamp::Auto));
        assert_eq!("off".parse(), Ok(MssClamp::Off));
        assert_eq!("1360".parse(), Ok(MssClamp::Fixed(1360)));
        assert!("100".parse::<MssClamp>().unwrap_err().contains("at least 536"));
        assert!("big".parse::<MssClamp>().is_err());
    }
}
