//! ICMP (RFC 792) and ICMPv6 (RFC 4443) messages: the 8-byte header of the errors the
//! engine sends (Fragmentation Needed, RFC 1191; Packet Too Big, RFC 4443 §3.2; Time
//! Exceeded), and which messages are errors, to which no error may be sent.

use super::{be16, be32, checksum, put16, put32};
use core::net::Ipv6Addr;

pub const HEADER_LEN: usize = 8;

/// ICMP Destination Unreachable, and its code Fragmentation Needed and DF Set.
pub const DEST_UNREACHABLE: u8 = 3;
pub const CODE_FRAG_NEEDED: u8 = 4;
/// ICMP Time Exceeded (code 0: TTL exceeded in transit).
pub const TIME_EXCEEDED: u8 = 11;
/// ICMPv6 Packet Too Big, and Time Exceeded (code 0: hop limit exceeded in transit).
pub const PACKET_TOO_BIG: u8 = 2;
pub const TIME_EXCEEDED_V6: u8 = 3;

mod field {
    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: usize = 2;
    /// The 4 bytes after the checksum: Fragmentation Needed has 2 unused, then the
    /// next-hop MTU; Packet Too Big the MTU; Time Exceeded 4 unused.
    pub const REST: usize = 4;
    pub const NEXT_HOP_MTU: usize = 6;
    pub const MTU: usize = 4;
}

/// An ICMP or ICMPv6 message view: the header and whatever follows it.
#[derive(Debug)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    pub const fn new_unchecked(buffer: T) -> Self {
        Packet { buffer }
    }

    /// At least a header's worth of bytes.
    pub fn new_checked(buffer: T) -> Result<Self, super::WireError> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(super::WireError::Truncated);
        }
        Ok(Packet { buffer })
    }

    pub fn msg_type(&self) -> u8 {
        self.buffer.as_ref()[field::TYPE]
    }

    pub fn code(&self) -> u8 {
        self.buffer.as_ref()[field::CODE]
    }

    pub fn checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), field::CHECKSUM)
    }

    /// The next-hop MTU of an ICMP Fragmentation Needed.
    pub fn next_hop_mtu(&self) -> u16 {
        be16(self.buffer.as_ref(), field::NEXT_HOP_MTU)
    }

    /// The MTU of an ICMPv6 Packet Too Big.
    pub fn mtu(&self) -> u32 {
        be32(self.buffer.as_ref(), field::MTU)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Make the message an ICMP error of this type and code, `rest` in the 4 bytes after
    /// the checksum, the quoted datagram being what follows the header; checksum over the
    /// whole message.
    pub fn emit_error_v4(&mut self, msg_type: u8, code: u8, rest: u32) {
        let b = self.buffer.as_mut();
        b[field::TYPE] = msg_type;
        b[field::CODE] = code;
        put16(b, field::CHECKSUM, 0);
        put32(b, field::REST, rest);
        let c = checksum::checksum(b);
        put16(b, field::CHECKSUM, c);
    }

    /// The same for ICMPv6, from `src` to `dst` (the checksum covers the pseudo-header,
    /// RFC 4443 §2.3).
    pub fn emit_error_v6(&mut self, msg_type: u8, code: u8, rest: u32, src: &Ipv6Addr, dst: &Ipv6Addr) {
        let b = self.buffer.as_mut();
        b[field::TYPE] = msg_type;
        b[field::CODE] = code;
        put16(b, field::CHECKSUM, 0);
        put32(b, field::REST, rest);
        let pseudo = checksum::pseudo_v6(src, dst, super::proto::ICMPV6, b.len() as u32);
        let c = checksum::l4_checksum(pseudo, b);
        put16(b, field::CHECKSUM, c);
    }
}

/// Whether ICMP type `t` is an error message (RFC 1812 §4.3.2.7: no ICMP error is sent
/// about one): Destination Unreachable, Source Quench, Redirect, Time Exceeded,
/// Parameter Problem.
pub fn is_error_v4(t: u8) -> bool {
    matches!(t, 3 | 4 | 5 | 11 | 12)
}

/// Whether ICMPv6 type `t` is an error message (RFC 4443 §2.1: types below 128).
pub fn is_error_v6(t: u8) -> bool {
    t < 128
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frag_needed_sums_to_zero_over_the_message() {
        let mut m = [0u8; HEADER_LEN + 28];
        m[HEADER_LEN] = 0x45;
        Packet::new_unchecked(&mut m[..]).emit_error_v4(DEST_UNREACHABLE, CODE_FRAG_NEEDED, 1438);
        let p = Packet::new_checked(&m[..]).unwrap();
        assert_eq!((p.msg_type(), p.code(), p.next_hop_mtu()), (3, 4, 1438));
        assert_eq!(checksum::fold(checksum::sum(&m)), 0xffff);
    }

    #[test]
    fn packet_too_big_sums_with_its_pseudo_header() {
        let (s, d): (Ipv6Addr, Ipv6Addr) = ("2001:db8::1".parse().unwrap(), "2001:db8::2".parse().unwrap());
        let mut m = [0u8; HEADER_LEN + 40];
        Packet::new_unchecked(&mut m[..]).emit_error_v6(PACKET_TOO_BIG, 0, 1280, &s, &d);
        let p = Packet::new_checked(&m[..]).unwrap();
        assert_eq!((p.msg_type(), p.code(), p.mtu()), (2, 0, 1280));
        let pseudo = checksum::pseudo_v6(&s, &d, 58, m.len() as u32);
        assert_eq!(checksum::fold(pseudo + checksum::sum(&m)), 0xffff);
        assert!(Packet::new_checked(&m[..7]).is_err());
    }

    #[test]
    fn errors_are_told_from_queries() {
        assert!(is_error_v4(3) && is_error_v4(11) && !is_error_v4(0) && !is_error_v4(8));
        assert!(is_error_v6(1) && is_error_v6(2) && !is_error_v6(128) && !is_error_v6(135));
    }
}
