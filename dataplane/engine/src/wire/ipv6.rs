//! IPv6 headers (RFC 8200) and the walk over extension headers up to the upper layer.

use super::{WireError, be16, be32, proto, put16};
use core::net::Ipv6Addr;

pub const HEADER_LEN: usize = 40;
pub const FRAG_HEADER_LEN: usize = 8;
/// Extension headers followed before giving up (a bound against header chains).
pub const MAX_EXT_HEADERS: usize = 8;

mod field {
    use core::ops::Range;
    pub const VER_TC_FL: usize = 0;
    pub const PAYLOAD_LEN: usize = 4;
    pub const NEXT_HEADER: usize = 6;
    pub const HOP_LIMIT: usize = 7;
    pub const SRC: Range<usize> = 8..24;
    pub const DST: Range<usize> = 24..40;
}

/// An IPv6 fixed-header view. `new_checked` guarantees version 6 and that the payload
/// length fits the buffer.
#[derive(Debug)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    pub const fn new_unchecked(buffer: T) -> Self {
        Packet { buffer }
    }

    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let b = buffer.as_ref();
        if b.len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        if b[0] >> 4 != 6 {
            return Err(WireError::Malformed);
        }
        if HEADER_LEN + usize::from(be16(b, field::PAYLOAD_LEN)) > b.len() {
            return Err(WireError::Truncated);
        }
        Ok(Packet { buffer })
    }

    pub fn traffic_class(&self) -> u8 {
        (be16(self.buffer.as_ref(), field::VER_TC_FL) >> 4) as u8
    }

    pub fn flow_label(&self) -> u32 {
        be32(self.buffer.as_ref(), field::VER_TC_FL) & 0x000f_ffff
    }

    pub fn payload_len(&self) -> usize {
        usize::from(be16(self.buffer.as_ref(), field::PAYLOAD_LEN))
    }

    /// Header plus payload.
    pub fn total_len(&self) -> usize {
        HEADER_LEN + self.payload_len()
    }

    pub fn next_header(&self) -> u8 {
        self.buffer.as_ref()[field::NEXT_HEADER]
    }

    pub fn hop_limit(&self) -> u8 {
        self.buffer.as_ref()[field::HOP_LIMIT]
    }

    pub fn src(&self) -> Ipv6Addr {
        addr(&self.buffer.as_ref()[field::SRC])
    }

    pub fn dst(&self) -> Ipv6Addr {
        addr(&self.buffer.as_ref()[field::DST])
    }
}

fn addr(b: &[u8]) -> Ipv6Addr {
    let mut a = [0u8; 16];
    a.copy_from_slice(b);
    Ipv6Addr::from(a)
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    pub fn emit(&mut self, repr: &Repr) {
        let b = self.buffer.as_mut();
        let w0 = (6u32 << 28) | (u32::from(repr.traffic_class) << 20) | (repr.flow_label & 0x000f_ffff);
        b[0..4].copy_from_slice(&w0.to_be_bytes());
        put16(b, field::PAYLOAD_LEN, repr.payload_len);
        b[field::NEXT_HEADER] = repr.next_header;
        b[field::HOP_LIMIT] = repr.hop_limit;
        b[field::SRC].copy_from_slice(&repr.src.octets());
        b[field::DST].copy_from_slice(&repr.dst.octets());
    }

    pub fn set_payload_len(&mut self, len: u16) {
        put16(self.buffer.as_mut(), field::PAYLOAD_LEN, len);
    }

    pub fn set_next_header(&mut self, nh: u8) {
        self.buffer.as_mut()[field::NEXT_HEADER] = nh;
    }

    pub fn set_hop_limit(&mut self, h: u8) {
        self.buffer.as_mut()[field::HOP_LIMIT] = h;
    }

    /// Set the ECN field (low two bits of the traffic class).
    pub fn set_ecn(&mut self, ecn: u8) {
        let b = self.buffer.as_mut();
        b[1] = (b[1] & !0x30) | ((ecn & 0x03) << 4);
    }

    pub fn set_src(&mut self, a: &Ipv6Addr) {
        self.buffer.as_mut()[field::SRC].copy_from_slice(&a.octets());
    }

    pub fn set_dst(&mut self, a: &Ipv6Addr) {
        self.buffer.as_mut()[field::DST].copy_from_slice(&a.octets());
    }

    pub fn set_traffic_class(&mut self, tc: u8) {
        let b = self.buffer.as_mut();
        b[0] = 0x60 | (tc >> 4);
        b[1] = (b[1] & 0x0f) | (tc << 4);
    }
}

/// The fields of a fixed IPv6 header that the engine emits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Repr {
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    pub next_header: u8,
    pub traffic_class: u8,
    pub flow_label: u32,
    pub hop_limit: u8,
    pub payload_len: u16,
}

/// A fragment header found while walking the extension headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FragInfo {
    /// Offset of the fragment header from the start of the IPv6 header.
    pub header_offset: usize,
    /// Offset of the next-header byte that names the fragment header.
    pub prev_next_header_offset: usize,
    /// The protocol of the fragmentable part.
    pub next_header: u8,
    /// Fragment offset in bytes.
    pub offset: usize,
    pub more: bool,
    pub ident: u32,
}

/// Where the upper-layer header starts, after the extension headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chain {
    pub upper_protocol: u8,
    /// Offset of the upper-layer header from the start of the IPv6 header.
    pub upper_offset: usize,
    pub frag: Option<FragInfo>,
    /// Offset of the next-header byte that names the upper layer.
    pub last_next_header_offset: usize,
}

/// Walk hop-by-hop, routing, destination-options and fragment headers of the packet
/// `b` (fixed header included, truncated to its total length). Stops at the first
/// other header (the upper layer), or at a fragment with a non-zero offset, whose
/// remaining bytes are not headers.
pub fn walk(b: &[u8]) -> Result<Chain, WireError> {
    if b.len() < HEADER_LEN {
        return Err(WireError::Truncated);
    }
    let mut nh = b[field::NEXT_HEADER];
    let mut nh_at = field::NEXT_HEADER;
    let mut off = HEADER_LEN;
    let mut frag = None;
    for _ in 0..MAX_EXT_HEADERS {
        match nh {
            proto::HOPOPT | proto::IPV6_ROUTE | proto::IPV6_OPTS => {
                if nh == proto::HOPOPT && off != HEADER_LEN {
                    return Err(WireError::Malformed);
                }
                if off + 2 > b.len() {
                    return Err(WireError::Truncated);
                }
                let len = (usize::from(b[off + 1]) + 1) * 8;
                if off + len > b.len() {
                    return Err(WireError::Truncated);
                }
                nh_at = off;
                nh = b[off];
                off += len;
            }
            proto::IPV6_FRAG => {
                if frag.is_some() {
                    return Err(WireError::Malformed);
                }
                if off + FRAG_HEADER_LEN > b.len() {
                    return Err(WireError::Truncated);
                }
                let offm = be16(b, off + 2);
                let info = FragInfo {
                    header_offset: off,
                    prev_next_header_offset: nh_at,
                    next_header: b[off],
                    offset: usize::from(offm & 0xfff8),
                    more: offm & 1 != 0,
                    ident: be32(b, off + 4),
                };
                frag = Some(info);
                nh_at = off;
                nh = b[off];
                off += FRAG_HEADER_LEN;
                if info.offset != 0 {
                    break;
                }
            }
            _ => {
                return Ok(Chain { upper_protocol: nh, upper_offset: off, frag, last_next_header_offset: nh_at });
            }
        }
    }
    match frag {
        Some(f) if f.offset != 0 => {
            Ok(Chain { upper_protocol: nh, upper_offset: off, frag, last_next_header_offset: nh_at })
        }
        _ => Err(WireError::Malformed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base(nh: u8, payload: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; HEADER_LEN];
        let mut p = Packet::new_unchecked(&mut b[..]);
        p.emit(&Repr {
            src: "2001:db8::1".parse().unwrap(),
            dst: "2001:db8::2".parse().unwrap(),
            next_header: nh,
            traffic_class: 0xb8,
            flow_label: 0x12345,
            hop_limit: 64,
            payload_len: payload.len() as u16,
        });
        b.extend_from_slice(payload);
        b
    }

    #[test]
    fn fields_roundtrip() {
        let b = base(proto::UDP, &[0; 8]);
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!(p.traffic_class(), 0xb8);
        assert_eq!(p.flow_label(), 0x12345);
        assert_eq!(p.payload_len(), 8);
        assert_eq!(p.hop_limit(), 64);
        assert_eq!(p.src(), "2001:db8::1".parse::<Ipv6Addr>().unwrap());
        assert_eq!(Packet::new_checked(&b[..47]).err(), Some(WireError::Truncated));
    }

    #[test]
    fn walk_chain_with_fragment() {
        // hop-by-hop (8 bytes) -> fragment (offset 0, M=1) -> UDP
        let mut ext = vec![proto::IPV6_FRAG, 0, 1, 4, 0, 0, 0, 0];
        ext.extend_from_slice(&[proto::UDP, 0, 0x00, 0x01, 0xde, 0xad, 0xbe, 0xef]);
        ext.extend_from_slice(&[0; 8]);
        let b = base(proto::HOPOPT, &ext);
        let c = walk(&b).unwrap();
        assert_eq!(c.upper_protocol, proto::UDP);
        assert_eq!(c.upper_offset, 56);
        let f = c.frag.unwrap();
        assert_eq!(
            (f.header_offset, f.prev_next_header_offset, f.offset, f.more, f.ident),
            (48, 40, 0, true, 0xdeadbeef)
        );
    }

    #[test]
    fn walk_rejects_misplaced_hop_by_hop_and_truncation() {
        let b = base(proto::IPV6_OPTS, &[proto::HOPOPT, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(walk(&b), Err(WireError::Malformed));
        let b = base(proto::IPV6_OPTS, &[proto::UDP, 3, 0, 0]);
        assert_eq!(walk(&b), Err(WireError::Truncated));
        // A chain longer than the bound.
        let mut ext = Vec::new();
        for _ in 0..MAX_EXT_HEADERS + 1 {
            ext.extend_from_slice(&[proto::IPV6_OPTS, 0, 0, 0, 0, 0, 0, 0]);
        }
        let b = base(proto::IPV6_OPTS, &ext);
        assert_eq!(walk(&b), Err(WireError::Malformed));
    }
}
