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
    // Aligning to 4 bytes needs at most 3 pad bytes: check those without a loop.
    let ok = match *pad {
        [] => true,
        [a] => a == 1,
        [a, b] => a == 1 && b == 2,
        [a, b, c] => a == 1 && b == 2 && c == 3,
        _ => pad.iter().zip(1u8..).all(|(&b, want)| b == want),
    };
    if !ok {
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
    // A power of two: a mask, not a division (this runs per packet).
    let mask = align.next_power_of_two() - 1;
    (mask + 1 - ((payload_len + TRAILER_LEN) & mask)) & mask
}

/// Write padding 1, 2, … `pad_len`, the pad length and the next header into `dst`,
/// which must be `pad_len + 2` bytes long.
pub fn write_trailer(dst: &mut [u8], pad_len: usize, next_header: u8) {
    for (b, v) in dst[..pad_len].iter_mut().zip(1u8..) {
        *b = v;
    }
    dst[pad_len] = pad_len as u8;
    dst[pad_len + 1] = next_header;
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
