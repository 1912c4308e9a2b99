//! Internet checksum (RFC 1071), pseudo-headers and incremental update (RFC 1624).
//!
//! Sums are accumulated as 32-bit big-endian words in a `u64` and folded at the end;
//! the ones'-complement sum is the same whichever word size is used.

use core::net::{Ipv4Addr, Ipv6Addr};

/// Ones'-complement partial sum of `data` (not folded, not inverted). `data` must start
/// at an even offset of the region being checksummed.
#[inline]
pub fn sum(data: &[u8]) -> u64 {
    let mut acc: u64 = 0;
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        acc += w >> 32;
        acc += w & 0xffff_ffff;
    }
    let rest = chunks.remainder();
    let mut i = 0;
    while i + 2 <= rest.len() {
        acc += u64::from(u16::from_be_bytes([rest[i], rest[i + 1]]));
        i += 2;
    }
    if i < rest.len() {
        acc += u64::from(rest[i]) << 8;
    }
    acc
}

/// Fold a partial sum to 16 bits (not inverted). Branch-free: four end-around-carry
/// steps take any `u64` to 16 bits.
#[inline]
pub fn fold(acc: u64) -> u16 {
    let s = (acc & 0xffff_ffff) + (acc >> 32);
    let s = (s & 0xffff) + (s >> 16);
    let s = (s & 0xffff) + (s >> 16);
    let s = (s & 0xffff) + (s >> 16);
    s as u16
}

/// Partial sum of a 20-byte header (an IPv4 header without options).
#[inline]
pub fn sum20(h: &[u8; 20]) -> u64 {
    let w = |i: usize| u64::from(u32::from_be_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]));
    w(0) + w(4) + w(8) + w(12) + w(16)
}

/// Whether a 20-byte header's checksum verifies, i.e. its ones'-complement sum folds to
/// 0xffff. Without folding: 2^16 ≡ 1 (mod 0xffff), so any sum of the header's 16-bit
/// or 32-bit words is congruent to the folded sum, which is 0xffff exactly when the
/// plain sum is a nonzero multiple of 0xffff (a multiply and a shift, not four folds).
/// The words are summed as they lie in memory, without byte swaps: swapping a value's
/// bytes multiplies it by 2^8 modulo 0xffff (RFC 1071 §2(B)), which keeps it a multiple.
#[inline]
pub fn verify20(h: &[u8; 20]) -> bool {
    let w = |i: usize| u64::from(u32::from_ne_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]));
    let s = w(0) + w(4) + w(8) + w(12) + w(16);
    s != 0 && s % 0xffff == 0
}

/// The checksum field value for `data`: the inverted folded sum.
#[inline]
pub fn checksum(data: &[u8]) -> u16 {
    !fold(sum(data))
}

/// Partial sum of the IPv4 pseudo-header (RFC 768/793).
#[inline]
pub fn pseudo_v4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: u16) -> u64 {
    u64::from(src.to_bits()) + u64::from(dst.to_bits()) + u64::from(proto) + u64::from(len)
}

/// Partial sum of the IPv6 pseudo-header (RFC 8200 §8.1).
#[inline]
pub fn pseudo_v6(src: &Ipv6Addr, dst: &Ipv6Addr, proto: u8, len: u32) -> u64 {
    sum(&src.octets()) + sum(&dst.octets()) + u64::from(proto) + u64::from(len)
}

/// Incrementally update checksum field `hc` when a 16-bit word changes from `old` to `new`
/// (RFC 1624, eqn. 3: HC' = ~(~HC + ~m + m')).
#[inline]
pub fn update16(hc: u16, old: u16, new: u16) -> u16 {
    !fold(u64::from(!hc) + u64::from(!old) + u64::from(new))
}

/// Checksum field for a UDP or TCP segment: pseudo-header partial sum plus the segment
/// (whose checksum field must be zero). UDP callers map a result of 0 to 0xffff.
#[inline]
pub fn l4_checksum(pseudo: u64, segment: &[u8]) -> u16 {
    !fold(pseudo + sum(segment))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fold_handles_every_carry() {
        for acc in
            [0u64, 0xffff, 0x1_0000, 0x1_fffe, 0xffff_ffff, u64::MAX, 0x0001_ffff_ffff_ffff, 0xffff_0000_ffff_0000]
        {
            let mut r = acc;
            while r >> 16 != 0 {
                r = (r & 0xffff) + (r >> 16);
            }
            assert_eq!(fold(acc), r as u16, "{acc:x}");
        }
        let h: [u8; 20] = hex::decode("450000730000400040110000c0a80001c0a800c7").unwrap().try_into().unwrap();
        assert_eq!(!fold(sum20(&h)), 0xb861);
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3: 00 01 f2 03 f4 f5 f6 f7 sums to ddf2.
        let d = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum(&d)), 0xddf2);
        assert_eq!(checksum(&d), !0xddf2);
    }

    #[test]
    fn ipv4_header_known_answer() {
        // A header from Wikipedia's IPv4 checksum example: checksum b861.
        let mut h = hex::decode("450000730000400040110000c0a80001c0a800c7").unwrap();
        assert_eq!(checksum(&h), 0xb861);
        h[10] = 0xb8;
        h[11] = 0x61;
        assert_eq!(checksum(&h), 0);
    }

    #[test]
    fn verify20_agrees_with_the_checksum_in_network_order() {
        let mut h: [u8; 20] = hex::decode("45000073000040004011b861c0a80001c0a800c7").unwrap().try_into().unwrap();
        assert!(verify20(&h));
        // Every single-bit error is caught.
        for bit in 0..160 {
            h[bit / 8] ^= 1 << (bit % 8);
            assert!(!verify20(&h), "bit {bit}");
            h[bit / 8] ^= 1 << (bit % 8);
        }
        // Pseudo-random headers, with their checksum filled in or off by one: the same
        // answer as `checksum` over the bytes in network order.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for i in 0..2000 {
            for b in h.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            h[10] = 0;
            h[11] = 0;
            let c = checksum(&h).wrapping_add(u16::from(i % 3 == 0));
            h[10..12].copy_from_slice(&c.to_be_bytes());
            assert_eq!(verify20(&h), checksum(&h) == 0, "{}", hex::encode(h));
        }
        // The ends of the range: a sum of zero is not 0xffff folded; all ones is.
        for (h, ok) in [([0u8; 20], false), ([0xff; 20], true)] {
            assert_eq!((verify20(&h), checksum(&h) == 0), (ok, ok));
        }
    }

    #[test]
    fn odd_lengths_match_bytewise_reference() {
        fn reference(d: &[u8]) -> u16 {
            let mut acc: u32 = 0;
            for ch in d.chunks(2) {
                let w = if ch.len() == 2 { u16::from_be_bytes([ch[0], ch[1]]) } else { u16::from(ch[0]) << 8 };
                acc += u32::from(w);
            }
            while acc >> 16 != 0 {
                acc = (acc & 0xffff) + (acc >> 16);
            }
            !(acc as u16)
        }
        let data: Vec<u8> = (0..300u32).map(|i| (i.wrapping_mul(151) ^ 0x5a) as u8).collect();
        for n in 0..data.len() {
            assert_eq!(checksum(&data[..n]), reference(&data[..n]), "len {n}");
        }
    }

    #[test]
    fn incremental_update_matches_recompute() {
        let mut h = hex::decode("450000730000400040110000c0a80001c0a800c7").unwrap();
        let c = checksum(&h);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        // Decrement TTL (byte 8, high half of word 4).
        let old = u16::from_be_bytes([h[8], h[9]]);
        h[8] -= 1;
        let new = u16::from_be_bytes([h[8], h[9]]);
        let upd = update16(c, old, new);
        h[10] = 0;
        h[11] = 0;
        assert_eq!(upd, checksum(&h));
    }
}
