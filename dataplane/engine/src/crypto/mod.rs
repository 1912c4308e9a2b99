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
