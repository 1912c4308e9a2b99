//! The AEAD interface between packet logic and a crypto library.
//!
//! Packet logic builds nonce and AAD and hands a byte range to `seal` or `open`; it
//! never names a library. A backend supplies key construction and the two operations.
//! `ring` is this crate's backend; `natt-ipsec-mb` adds intel-ipsec-mb.

pub mod ring_backend;

use crate::sa::params::Algorithm;

pub use ring_backend::{Ring, RingKey};

/// Nonce: 4-byte salt from the key material, then the 8-byte explicit IV (RFC 4106 §4).
pub type Nonce = [u8; 12];
/// Integrity check value.
pub type Icv = [u8; 16];

/// The ICV did not verify. Nothing else is said, by design.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuthFailed;

/// A key could not be made.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("{0} is not supported by the {1} crypto backend")]
    Unsupported(&'static str, &'static str),
    #[error("{alg} needs a {want}-byte key, got {got}")]
    Length { alg: &'static str, want: usize, got: usize },
}

/// One expanded key of an AEAD algorithm.
pub trait AeadKey: Send + Sync + 'static {
    /// Encrypt `data` in place and return the ICV. For GMAC transforms `data` is empty
    /// and everything authenticated is in `aad`.
    fn seal(&self, nonce: &Nonce, aad: &[u8], data: &mut [u8]) -> Icv;

    /// Verify `icv` over `aad` and `data`, decrypting `data` in place. On failure the
    /// contents of `data` are unspecified.
    fn open(&self, nonce: &Nonce, aad: &[u8], data: &mut [u8], icv: &Icv) -> Result<(), AuthFailed>;

    /// The parts of this key that sealing or opening `data_len` bytes reads, as (start,
    /// length) byte spans, for a store that loads SAs' state ahead of their packets
    /// (the pointers are never dereferenced; a span too many or too few costs time, not
    /// correctness). The default: the whole key.
    #[inline]
    fn hot_spans(&self, data_len: usize, f: &mut impl FnMut(*const u8, usize)) {
        let _ = data_len;
        f(core::ptr::from_ref(self).cast(), core::mem::size_of_val(self));
    }

    /// The byte `hot_spans` reads to decide (if it reads any): a store that looks ahead
    /// loads its line a step before it asks for the spans. The default: the first byte.
    #[inline]
    fn lead(&self) -> *const u8 {
        core::ptr::from_ref(self).cast()
    }
}

/// A crypto library.
pub trait Backend: 'static {
    type Key: AeadKey;
    const NAME: &'static str;
    fn key(alg: Algorithm, key: &[u8]) -> Result<Self::Key, KeyError>;
}

/// A 64-bit fingerprint of key material (SHA-256 of key and salt, truncated): tells
/// keys apart in sequence-number reservations without storing the key.
pub fn key_fingerprint(key: &[u8], salt: &[u8; 4]) -> u64 {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"natt seq reservation v1");
    ctx.update(key);
    ctx.update(salt);
    let d = ctx.finish();
    u64::from_be_bytes(d.as_ref()[..8].try_into().expect("32-byte digest"))
}

#[inline]
pub fn nonce(salt: &[u8; 4], iv: &[u8; 8]) -> Nonce {
    let mut n = [0u8; 12];
    n[..4].copy_from_slice(salt);
    n[4..].copy_from_slice(iv);
    n
}

/// The nonce and AAD of one ESP packet's AEAD call: salt ‖ IV (RFC 4106 §4), and SPI ‖
/// sequence number, or SPI ‖ high half ‖ low half with ESN (§5). The engine lays them
/// out a stage before the crypto: the libraries read them with wide loads
/// (intel-ipsec-mb's are masked) that cannot take their data from stores still on their
/// way to L1, and wait for them; laid out a stage before, they are there (measured:
/// intel-ipsec-mb opened a 64-byte packet in 48 ns with its nonce and AAD written just
/// before the call, in 33 with them written earlier).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct AeadInputs {
    pub nonce: Nonce,
    aad: [u8; 12],
    aad_len: u8,
}

impl AeadInputs {
    pub const EMPTY: AeadInputs = AeadInputs { nonce: [0; 12], aad: [0; 12], aad_len: 0 };

    #[inline(always)]
    pub fn new(salt: &[u8; 4], iv: &[u8; 8], spi: u32, seq: u64, esn: bool) -> Self {
        // Without ESN the AAD is SPI ‖ low half: the first 8 of the same 12 bytes, with
        // the low half where the high half would be.
        let lo = seq as u32;
        let mid = if esn { (seq >> 32) as u32 } else { lo };
        let mut aad = [0u8; 12];
        aad[..8].copy_from_slice(&(u64::from(spi) << 32 | u64::from(mid)).to_be_bytes());
        aad[8..].copy_from_slice(&lo.to_be_bytes());
        AeadInputs { nonce: nonce(salt, iv), aad, aad_len: 8 + 4 * u8::from(esn) }
    }

    #[inline]
    pub fn aad(&self) -> &[u8] {
        &self.aad[..usize::from(self.aad_len).min(12)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aead_inputs_are_rfc_4106s() {
        let (salt, iv) = ([0xca, 0xfe, 0xba, 0xbe], [1, 2, 3, 4, 5, 6, 7, 8]);
        let seq = 0x0000_0001_8000_0002u64;
        let x = AeadInputs::new(&salt, &iv, 0x4321, seq, false);
        assert_eq!(x.nonce, [0xca, 0xfe, 0xba, 0xbe, 1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(x.aad(), [0, 0, 0x43, 0x21, 0x80, 0, 0, 2]);
        let x = AeadInputs::new(&salt, &iv, 0x4321, seq, true);
        assert_eq!(x.aad(), [0, 0, 0x43, 0x21, 0, 0, 0, 1, 0x80, 0, 0, 2]);
        assert_eq!(AeadInputs::EMPTY.aad(), [0u8; 0]);
    }
}
