//! IPv4 headers (RFC 791).

use super::ethernet::{self, ethertype};
use super::{WireError, be16, checksum, put16};
use crate::buf::RxChecksum;
use core::net::Ipv4Addr;

pub const HEADER_LEN: usize = 20;
pub const FLAG_DF: u16 = 0x4000;
pub const FLAG_MF: u16 = 0x2000;
const OFFSET_MASK: u16 = 0x1fff;

mod field {
    use core::ops::Range;
    pub const VER_IHL: usize = 0;
    pub const TOS: usize = 1;
    pub const LENGTH: usize = 2;
    pub const IDENT: usize = 4;
    pub const FLG_OFF: usize = 6;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: usize = 10;
    pub const SRC: Range<usize> = 12..16;
    pub const DST: Range<usize> = 16..20;
}

/// An IPv4 header view. `new_checked` guarantees version 4, a header length of at least
/// 20 bytes that fits the buffer, and a total length between the header length and the
/// buffer length.
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
        if b[field::VER_IHL] >> 4 != 4 {
            return Err(WireError::Malformed);
        }
        let hl = usize::from(b[field::VER_IHL] & 0x0f) * 4;
        if hl < HEADER_LEN {
            return Err(WireError::Malformed);
        }
        let total = usize::from(be16(b, field::LENGTH));
        if hl > b.len() || total > b.len() {
            return Err(WireError::Truncated);
        }
        if total < hl {
            return Err(WireError::Malformed);
        }
        Ok(Packet { buffer })
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::VER_IHL] & 0x0f) * 4
    }

    pub fn tos(&self) -> u8 {
        self.buffer.as_ref()[field::TOS]
    }

    pub fn total_len(&self) -> usize {
        usize::from(be16(self.buffer.as_ref(), field::LENGTH))
    }

    pub fn ident(&self) -> u16 {
        be16(self.buffer.as_ref(), field::IDENT)
    }

    pub fn dont_frag(&self) -> bool {
        be16(self.buffer.as_ref(), field::FLG_OFF) & FLAG_DF != 0
    }

    pub fn more_frags(&self) -> bool {
        be16(self.buffer.as_ref(), field::FLG_OFF) & FLAG_MF != 0
    }

    /// Fragment offset in bytes.
    pub fn frag_offset(&self) -> usize {
        usize::from(be16(self.buffer.as_ref(), field::FLG_OFF) & OFFSET_MASK) * 8
    }

    pub fn is_fragment(&self) -> bool {
        be16(self.buffer.as_ref(), field::FLG_OFF) & (FLAG_MF | OFFSET_MASK) != 0
    }

    pub fn ttl(&self) -> u8 {
        self.buffer.as_ref()[field::TTL]
    }

    pub fn protocol(&self) -> u8 {
        self.buffer.as_ref()[field::PROTOCOL]
    }

    pub fn checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), field::CHECKSUM)
    }

    pub fn src(&self) -> Ipv4Addr {
        let b = &self.buffer.as_ref()[field::SRC];
        Ipv4Addr::new(b[0], b[1], b[2], b[3])
    }

    pub fn dst(&self) -> Ipv4Addr {
        let b = &self.buffer.as_ref()[field::DST];
        Ipv4Addr::new(b[0], b[1], b[2], b[3])
    }

    #[inline(always)]
    pub fn verify_checksum(&self) -> bool {
        let b = self.buffer.as_ref();
        let h = fixed(b);
        if h[field::VER_IHL] == 0x45 {
            return checksum::verify20(h);
        }
        checksum::checksum(&b[..self.header_len()]) == 0
    }

    /// Every field of the fixed header, read in one pass (one bounds check).
    #[inline(always)]
    pub fn repr(&self) -> HeaderRepr {
        repr_fixed(fixed(self.buffer.as_ref()))
    }

    /// The bytes after the header, up to the total length.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..self.total_len()]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Write a complete 20-byte header (no options), checksum included. The header is
    /// built in registers and stored once; the checksum is computed from the fields,
    /// never read back from memory.
    #[inline]
    pub fn emit_basic(&mut self, repr: &Repr) {
        let flags = if repr.dont_frag { FLAG_DF } else { 0 };
        let w0 = 0x4500_0000 | (u32::from(repr.tos) << 16) | u32::from(repr.total_len);
        let w1 = (u32::from(repr.ident) << 16) | u32::from(flags);
        let w2 = (u32::from(repr.ttl) << 24) | (u32::from(repr.protocol) << 16);
        let (src, dst) = (repr.src.to_bits(), repr.dst.to_bits());
        let sum = u64::from(w0) + u64::from(w1) + u64::from(w2) + u64::from(src) + u64::from(dst);
        let w2 = w2 | u32::from(!checksum::fold(sum));
        let mut h = [0u8; HEADER_LEN];
        h[0..4].copy_from_slice(&w0.to_be_bytes());
        h[4..8].copy_from_slice(&w1.to_be_bytes());
        h[8..12].copy_from_slice(&w2.to_be_bytes());
        h[12..16].copy_from_slice(&src.to_be_bytes());
        h[16..20].copy_from_slice(&dst.to_be_bytes());
        self.buffer.as_mut()[..HEADER_LEN].copy_from_slice(&h);
    }

    pub fn set_total_len(&mut self, len: u16) {
        put16(self.buffer.as_mut(), field::LENGTH, len);
    }

    pub fn set_tos(&mut self, tos: u8) {
        self.buffer.as_mut()[field::TOS] = tos;
    }

    pub fn set_ttl(&mut self, ttl: u8) {
        self.buffer.as_mut()[field::TTL] = ttl;
    }

    pub fn set_protocol(&mut self, p: u8) {
        self.buffer.as_mut()[field::PROTOCOL] = p;
    }

    /// Clear MF and the fragment offset (keeping DF).
    pub fn clear_frag(&mut self) {
        let b = self.buffer.as_mut();
        let v = be16(b, field::FLG_OFF) & FLAG_DF;
        put16(b, field::FLG_OFF, v);
    }

    pub fn set_checksum(&mut self, c: u16) {
        put16(self.buffer.as_mut(), field::CHECKSUM, c);
    }

    /// Compute and store the header checksum. The old value is subtracted from the sum
    /// rather than zeroed in memory first, so the header is read before it is written.
    #[inline]
    pub fn fill_checksum(&mut self) {
        let b = self.buffer.as_ref();
        let hl = usize::from(b[field::VER_IHL] & 0x0f) * 4;
        let sum = if hl == HEADER_LEN { checksum::sum20(fixed(b)) } else { checksum::sum(&b[..hl]) };
        let old = u64::from(be16(b, field::CHECKSUM));
        self.set_checksum(!checksum::fold(sum - old));
    }

    /// Decrement the TTL (which must be at least 1) and patch the checksum
    /// incrementally. The TTL-and-protocol word falls by 0x0100, so the checksum rises
    /// by 0x0100 with an end-around carry (RFC 1624 eqn. 3 for this one change, as
    /// Linux's `ip_decrease_ttl` does it); a result of 0xffff becomes 0x0000, which is
    /// what recomputing gives.
    pub fn decrement_ttl(&mut self) {
        let b = self.buffer.as_mut();
        let c = u32::from(be16(b, field::CHECKSUM)) + 0x0100;
        let c = c + u32::from(c >= 0xffff);
        b[field::TTL] = b[field::TTL].wrapping_sub(1);
        put16(b, field::CHECKSUM, c as u16);
    }

    /// Set the ECN field (low two bits of the TOS byte) and patch the checksum
    /// incrementally.
    pub fn set_ecn(&mut self, ecn: u8) {
        let b = self.buffer.as_mut();
        let old = be16(b, 0);
        b[field::TOS] = (b[field::TOS] & !0x03) | (ecn & 0x03);
        let new = be16(b, 0);
        let c = checksum::update16(be16(b, field::CHECKSUM), old, new);
        put16(b, field::CHECKSUM, c);
    }

    pub fn set_src(&mut self, a: Ipv4Addr) {
        self.buffer.as_mut()[field::SRC].copy_from_slice(&a.octets());
    }

    pub fn set_dst(&mut self, a: Ipv4Addr) {
        self.buffer.as_mut()[field::DST].copy_from_slice(&a.octets());
    }
}

/// The common case of `new_checked`, `verify_checksum` and `repr` in one pass: a header
/// of exactly 20 bytes (first byte 0x45) at the start of `b`, whose total length is at
/// least 20 and fits `b`, and whose checksum is good (by the NIC's word where it has
/// one, else verified here). `None` for anything else, options included: `check` then
/// says what.
#[inline(always)]
pub fn basic(b: &[u8], nic: RxChecksum) -> Option<HeaderRepr> {
    let h: &[u8; HEADER_LEN] = b.first_chunk()?;
    let total = usize::from(u16::from_be_bytes([h[field::LENGTH], h[field::LENGTH + 1]]));
    let ok = h[field::VER_IHL] == 0x45
        && total >= HEADER_LEN
        && total <= b.len()
        && nic != RxChecksum::Bad
        && (nic == RxChecksum::Good || checksum::verify20(h));
    ok.then(|| repr_fixed(h))
}

/// `basic` for the IPv4 header of an untagged Ethernet frame.
#[inline(always)]
pub fn basic_in_frame(frame: &[u8], nic: RxChecksum) -> Option<HeaderRepr> {
    let (eth, ip) = frame.split_first_chunk::<{ ethernet::HEADER_LEN }>()?;
    if u16::from_be_bytes([eth[12], eth[13]]) != ethertype::IPV4 {
        return None;
    }
    basic(ip, nic)
}

/// Why `check` refused a header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckError {
    /// Not a valid header (`Packet::new_checked`).
    Header,
    Checksum,
}

/// Check the IPv4 header at the start of `b` and read its fields: `basic` for the
/// common case, the view's checks for the rest (so that an error says what is wrong).
/// `nic` is what the receiving NIC found of the checksum.
#[inline(always)]
pub fn check(b: &[u8], nic: RxChecksum) -> Result<HeaderRepr, CheckError> {
    if let Some(r) = basic(b, nic) {
        return Ok(r);
    }
    let ip = Packet::new_checked(b).map_err(|_| CheckError::Header)?;
    if !nic.is_good(|| ip.verify_checksum()) {
        return Err(CheckError::Checksum);
    }
    Ok(ip.repr())
}

/// The fields of a fixed header.
#[inline(always)]
fn repr_fixed(h: &[u8; HEADER_LEN]) -> HeaderRepr {
    let flg_off = u16::from_be_bytes([h[field::FLG_OFF], h[field::FLG_OFF + 1]]);
    HeaderRepr {
        header_len: usize::from(h[field::VER_IHL] & 0x0f) * 4,
        tos: h[field::TOS],
        total_len: usize::from(u16::from_be_bytes([h[field::LENGTH], h[field::LENGTH + 1]])),
        ident: u16::from_be_bytes([h[field::IDENT], h[field::IDENT + 1]]),
        dont_frag: flg_off & FLAG_DF != 0,
        more_frags: flg_off & FLAG_MF != 0,
        frag_offset: usize::from(flg_off & OFFSET_MASK) * 8,
        ttl: h[field::TTL],
        protocol: h[field::PROTOCOL],
        src: Ipv4Addr::new(h[12], h[13], h[14], h[15]),
        dst: Ipv4Addr::new(h[16], h[17], h[18], h[19]),
    }
}

/// The first 20 bytes; callers have checked the length.
#[inline]
fn fixed(b: &[u8]) -> &[u8; HEADER_LEN] {
    b[..HEADER_LEN].try_into().expect("checked by new_checked")
}

/// All fields of a parsed header (see [`Packet::repr`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeaderRepr {
    pub header_len: usize,
    pub tos: u8,
    pub total_len: usize,
    pub ident: u16,
    pub dont_frag: bool,
    pub more_frags: bool,
    /// In bytes.
    pub frag_offset: usize,
    pub ttl: u8,
    pub protocol: u8,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
}

impl HeaderRepr {
    pub fn is_fragment(&self) -> bool {
        self.more_frags || self.frag_offset != 0
    }
}

/// The fields of a basic IPv4 header that the engine emits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Repr {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub protocol: u8,
    pub tos: u8,
    pub ttl: u8,
    pub ident: u16,
    pub dont_frag: bool,
    pub total_len: u16,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        hex::decode("45000073000040004011b861c0a80001c0a800c7").unwrap()
    }

    #[test]
    fn parse_fields() {
        let mut b = sample();
        b.resize(0x73, 0);
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!(p.header_len(), 20);
        assert_eq!(p.total_len(), 0x73);
        assert!(p.dont_frag() && !p.more_frags() && !p.is_fragment());
        assert_eq!(p.ttl(), 64);
        assert_eq!(p.protocol(), 17);
        assert_eq!(p.src(), Ipv4Addr::new(192, 168, 0, 1));
        assert_eq!(p.dst(), Ipv4Addr::new(192, 168, 0, 199));
        assert!(p.verify_checksum());
    }

    #[test]
    fn rejects_bad_headers() {
        let mut b = sample();
        b.resize(0x73, 0);
        assert_eq!(Packet::new_checked(&b[..0x72]).err(), Some(WireError::Truncated));
        b[0] = 0x65;
        assert_eq!(Packet::new_checked(&b[..]).err(), Some(WireError::Malformed));
        b[0] = 0x44;
        assert_eq!(Packet::new_checked(&b[..]).err(), Some(WireError::Malformed));
        b[0] = 0x45;
        b[2] = 0;
        b[3] = 19;
        assert_eq!(Packet::new_checked(&b[..]).err(), Some(WireError::Malformed));
        b[0] = 0x4f; // 60-byte header longer than 19-byte buffer
        assert_eq!(Packet::new_checked(&b[..19]).err(), Some(WireError::Truncated));
    }

    #[test]
    fn emit_and_ttl() {
        let mut b = [0u8; 20];
        let mut p = Packet::new_unchecked(&mut b[..]);
        p.emit_basic(&Repr {
            src: Ipv4Addr::new(192, 168, 0, 1),
            dst: Ipv4Addr::new(192, 168, 0, 199),
            protocol: 17,
            tos: 0,
            ttl: 64,
            ident: 0,
            dont_frag: true,
            total_len: 0x73,
        });
        assert_eq!(&b[..], &sample()[..]);
        let mut p = Packet::new_unchecked(&mut b[..]);
        p.fill_checksum();
        assert_eq!(&b[..], &sample()[..], "fill_checksum over a correct header changes nothing");
        let mut p = Packet::new_unchecked(&mut b[..]);
        p.decrement_ttl();
        assert_eq!(b[8], 63);
        assert_eq!(checksum::checksum(&b), 0);
        let mut p = Packet::new_unchecked(&mut b[..]);
        p.set_ecn(3);
        assert_eq!(b[1] & 3, 3);
        assert_eq!(checksum::checksum(&b), 0);
    }

    #[test]
    fn ttl_decrement_gives_the_recomputed_checksum_for_every_header_sum() {
        // Walk the ident field through every value, so the checksum takes every value
        // it can (0x0000 included; a computed checksum is never 0xffff), at TTLs 2 and 255.
        let mut b = sample();
        for ttl in [2u8, 64, 255] {
            for ident in 0..=u16::MAX {
                b[8] = ttl;
                b[4..6].copy_from_slice(&ident.to_be_bytes());
                Packet::new_unchecked(&mut b[..]).fill_checksum();
                Packet::new_unchecked(&mut b[..]).decrement_ttl();
                let got = u16::from_be_bytes([b[10], b[11]]);
                Packet::new_unchecked(&mut b[..]).fill_checksum();
                assert_eq!((b[8], got), (ttl - 1, u16::from_be_bytes([b[10], b[11]])), "ttl {ttl}, ident {ident:04x}");
            }
        }
    }
}
