//! ESP headers and trailers (RFC 4303) and the RFC 3948 classification of UDP/4500
//! payloads.

use super::{WireError, be32, put32};

/// SPI and sequence number.
pub const HEADER_LEN: usize = 8;
/// Explicit IV of the AEAD transforms the engine supports (RFC 4106 §3.1, RFC 7634 §2).
pub const IV_LEN: usize = 8;
/// ICV of the AEAD transforms the engine supports.
pub const ICV_LEN: usize = 16;
/// Pad length and next header.
pub const TRAILER_LEN: usize = 2;
/// Bytes between the start of ESP and the payload.
pub const PREFIX_LEN: usize = HEADER_LEN + IV_LEN;
/// Smallest ESP packet: header, IV, an empty payload with its trailer, ICV.
pub const MIN_LEN: usize = PREFIX_LEN + TRAILER_LEN + ICV_LEN;
/// The UDP encapsulation port (RFC 3948 §2).
pub const NATT_PORT: u16 = 4500;
/// The IKE port; IKE on it is punted like IKE behind the non-ESP marker.
pub const IKE_PORT: u16 = 500;

mod field {
    use core::ops::Range;
    pub const SPI: usize = 0;
    pub const SEQ: usize = 4;
    pub const IV: Range<usize> = 8..16;
}

/// An ESP packet view. `new_checked` guarantees room for the header, IV, a trailer and
/// the ICV.
#[derive(Debug)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    pub const fn new_unchecked(buffer: T) -> Self {
        Packet { buffer }
    }

    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        if buffer.as_ref().len() < MIN_LEN {
            return Err(WireError::Truncated);
        }
        Ok(Packet { buffer })
    }

    pub fn spi(&self) -> u32 {
        be32(self.buffer.as_ref(), field::SPI)
    }

    pub fn seq(&self) -> u32 {
        be32(self.buffer.as_ref(), field::SEQ)
    }

    pub fn iv(&self) -> [u8; IV_LEN] {
        let mut iv = [0; IV_LEN];
        iv.copy_from_slice(&self.buffer.as_ref()[field::IV]);
        iv
    }

    /// Length of the encrypted part (payload, padding, pad length, next header).
    pub fn ciphertext_len(&self) -> usize {
        self.buffer.as_ref().len() - PREFIX_LEN - ICV_LEN
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    pub fn emit_header(&mut self, spi: u32, seq: u32, iv: [u8; IV_LEN]) {
        let b = self.buffer.as_mut();
        put32(b, field::SPI, spi);
        put32(b, field::SEQ, seq);
        b[field::IV].copy_from_slice(&iv);
    }
}

/// What a UDP/4500 payload is, by RFC 3948 §2.2 and §2.3.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NattKind {
    /// Exactly one byte, 0xFF.
    Keepalive,
    /// Starts with the four-byte non-ESP marker: IKE.
    Ike,
    /// An ESP header with this SPI follows.
    Esp(u32),
    /// Too short for an ESP header, or an SPI in the reserved range 1-255.
    Malformed,
}

pub fn classify_natt(payload: &[u8]) -> NattKind {
    if payload == [0xff] {
        return NattKind::Keepalive;
    }
    if payload.len() >= 4 && payload[..4] == [0, 0, 0, 0] {
        return NattKind::Ike;
    }
    if payload.len() < HEADER_LEN {
        return NattKind::Malformed;
    }
    match be32(payload, 0) {
        1..=255 => NattKind::Malformed,
        spi => NattKind::Esp(spi),
    }
}

/// The decrypted trailer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Trailer {
    /// Bytes of payload before the padding.
    pub payload_len: usize,
    pub pad_len: usize,
    pub next_header: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrailerError {
    /// Shorter than pad length and next header.
    Truncated,
    /// The pad length exceeds the plaintext.
    PadLength,
    /// A pad byte is not 1, 2, 3, … (RFC 4303 §2.4).
    PadBytes,
}

/// Read and check the trailer at the end of a decrypted ESP body.
pub fn parse_trailer(plain: &[u8]) -> Result<Trailer, TrailerError> {
    // The common case, padding to 4 bytes (0 to 3 pad bytes), with one load and one
    // compare: the four bytes before the next header (read as one little-endian word:
    // pad length in the top byte) against what they must be for this pad length ("x"
    // any): x x x 00, x x 01 01, x 01 02 02, 01 02 03 03. Five bytes hold the longest
    // of these padding runs and the trailer.
    const MASK: [u32; 4] = [0xff00_0000, 0xffff_0000, 0xffff_ff00, 0xffff_ffff];
    const WANT: [u32; 4] = [0x0000_0000, 0x0101_0000, 0x0202_0100, 0x0303_0201];
    if let Some(t) = plain.last_chunk::<5>() {
        let w = u32::from_le_bytes([t[0], t[1], t[2], t[3]]);
        let pad_len = (w >> 24) as usize;
        if pad_len < 4 {
            if w & MASK[pad_len] != WANT[pad_len] {
                return Err(TrailerError::PadBytes);
            }
            return Ok(Trailer { payload_len: plain.len() - TRAILER_LEN - pad_len, pad_len, next_header: t[4] });
        }
    }
    let n = plain.len();
    if n < TRAILER_LEN {
        return Err(TrailerError::Truncated);
    }
    let pad_len = usize::from(plain[n - 2]);
    let next_header = plain[n - 1];
    let Some(payload_len) = (n - TRAILER_LEN).checked_sub(pad_len) else {
        return Err(TrailerError::PadLength);
    };
    let pad = &plain[payload_len..n - TRAILER_LEN];
    if !pad.iter().zip(1..=u8::MAX).all(|(&b, want)| b == want) {
        return Err(TrailerError::PadBytes);
    }
    Ok(Trailer { payload_len, pad_len, next_header })
}

/// Padding that right-aligns the trailer on a 4-byte boundary (RFC 4303 §2.4).
pub const fn pad_len_for(payload_len: usize) -> usize {
    pad_len_to(payload_len, 4)
}

/// Padding that makes payload and trailer a multiple of `align` bytes (a power of two
/// from 4 to 16; RFC 4303 §2.4 allows more padding than alignment needs).
pub const fn pad_len_to(payload_len: usize, align: usize) -> usize {
    pad_len_masked(payload_len, align.next_power_of_two() - 1)
}

/// `pad_len_to` with the alignment given as its mask (`align - 1`): a negation and an
/// AND, for the per-packet path.
#[inline]
pub const fn pad_len_masked(payload_len: usize, mask: usize) -> usize {
    (payload_len + TRAILER_LEN).wrapping_neg() & mask
}

/// Write padding 1, 2, … `pad_len`, the pad length and the next header into `dst`,
/// which must be `pad_len + 2` bytes long.
#[inline]
pub fn write_trailer(dst: &mut [u8], pad_len: usize, next_header: u8) {
    // Aligning to 4 bytes pads by at most 3: those without a loop.
    match dst {
        [l, n] => (*l, *n) = (0, next_header),
        [a, l, n] => (*a, *l, *n) = (1, 1, next_header),
        [a, b, l, n] => (*a, *b, *l, *n) = (1, 2, 2, next_header),
        [a, b, c, l, n] => (*a, *b, *c, *l, *n) = (1, 2, 3, 3, next_header),
        _ => {
            for (b, v) in dst[..pad_len].iter_mut().zip(1..=u8::MAX) {
                *b = v;
            }
            dst[pad_len] = pad_len as u8;
            dst[pad_len + 1] = next_header;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3948_classification() {
        assert_eq!(classify_natt(&[0xff]), NattKind::Keepalive);
        assert_eq!(classify_natt(&[0xfe]), NattKind::Malformed);
        assert_eq!(classify_natt(&[]), NattKind::Malformed);
        assert_eq!(classify_natt(&[0xff, 0xff]), NattKind::Malformed);
        assert_eq!(classify_natt(&[0, 0, 0, 0]), NattKind::Ike);
        assert_eq!(classify_natt(&[0, 0, 0, 0, 0x21, 0x20]), NattKind::Ike);
        assert_eq!(classify_natt(&[0, 0, 1, 0, 0, 0, 0]), NattKind::Malformed);
        assert_eq!(classify_natt(&[0, 0, 0, 1, 0, 0, 0, 1]), NattKind::Malformed);
        assert_eq!(classify_natt(&[0, 0, 0, 255, 0, 0, 0, 1]), NattKind::Malformed);
        assert_eq!(classify_natt(&[0, 0, 1, 0, 0, 0, 0, 1]), NattKind::Esp(256));
    }

    #[test]
    fn written_trailers_parse_back() {
        for pad in 0..=255usize {
            let mut t = vec![0xee; pad + 2];
            write_trailer(&mut t, pad, 41);
            let want: Vec<u8> = (1..=pad as u8).chain([pad as u8, 41]).collect();
            assert_eq!(t, want, "pad {pad}");
            assert_eq!(parse_trailer(&t), Ok(Trailer { payload_len: 0, pad_len: pad, next_header: 41 }));
        }
    }

    /// The reference: the trailer as RFC 4303 §2.4 describes it, byte by byte.
    fn trailer_reference(plain: &[u8]) -> Result<Trailer, TrailerError> {
        let n = plain.len();
        if n < 2 {
            return Err(TrailerError::Truncated);
        }
        let pad_len = usize::from(plain[n - 2]);
        if pad_len > n - 2 {
            return Err(TrailerError::PadLength);
        }
        let payload_len = n - 2 - pad_len;
        for (i, &b) in plain[payload_len..n - 2].iter().enumerate() {
            if usize::from(b) != i + 1 {
                return Err(TrailerError::PadBytes);
            }
        }
        Ok(Trailer { payload_len, pad_len, next_header: plain[n - 1] })
    }

    #[test]
    fn trailer_parse_agrees_with_the_reference_on_every_short_body() {
        // Every body of up to 6 bytes over a small alphabet (pad bytes, lengths past
        // the body, a next header), and some longer ones with long padding.
        let alphabet = [0u8, 1, 2, 3, 4, 5, 41, 255];
        let mut checked = 0;
        for n in 0..=6u32 {
            for code in 0..alphabet.len().pow(n) {
                let mut c = code;
                let body: Vec<u8> = (0..n)
                    .map(|_| {
                        let b = alphabet[c % alphabet.len()];
                        c /= alphabet.len();
                        b
                    })
                    .collect();
                assert_eq!(parse_trailer(&body), trailer_reference(&body), "{body:?}");
                checked += 1;
            }
        }
        for pad in 0..=255u8 {
            let mut body: Vec<u8> = vec![0xaa; 3];
            body.extend(1..=pad);
            body.extend([pad, 4]);
            assert_eq!(parse_trailer(&body), trailer_reference(&body));
            assert!(parse_trailer(&body).is_ok());
            if pad > 0 {
                body[3] ^= 0x80;
                assert_eq!(parse_trailer(&body), Err(TrailerError::PadBytes), "pad {pad}");
            }
        }
        assert_eq!(checked, 299_593);
    }

    #[test]
    fn trailer_checks() {
        assert_eq!(parse_trailer(&[9, 9, 1, 2, 3, 3, 4]), Ok(Trailer { payload_len: 2, pad_len: 3, next_header: 4 }));
        assert_eq!(parse_trailer(&[0, 41]), Ok(Trailer { payload_len: 0, pad_len: 0, next_header: 41 }));
        assert_eq!(parse_trailer(&[1, 2, 3, 4]), Err(TrailerError::PadLength));
        assert_eq!(parse_trailer(&[9, 1, 3, 2, 4]), Err(TrailerError::PadBytes));
        assert_eq!(parse_trailer(&[4]), Err(TrailerError::Truncated));
    }

    #[test]
    fn padding_to_blocks() {
        for n in 0..64 {
            for align in [4, 8, 16] {
                let p = pad_len_to(n, align);
                assert!(p < align);
                assert_eq!((n + p + TRAILER_LEN) % align, 0);
            }
        }
    }

    #[test]
    fn padding_aligns() {
        for n in 0..64 {
            let p = pad_len_for(n);
            assert!(p < 4);
            assert_eq!((n + p + TRAILER_LEN) % 4, 0);
            let mut t = vec![0u8; p + 2];
            write_trailer(&mut t, p, 4);
            let mut body = vec![0xaa; n];
            body.extend_from_slice(&t);
            assert_eq!(parse_trailer(&body).unwrap().payload_len, n);
        }
    }
}
