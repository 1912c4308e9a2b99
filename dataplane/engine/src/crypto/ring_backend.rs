//! The `ring` backend: AES-GCM and ChaCha20-Poly1305 through `LessSafeKey`, GMAC as
//! AES-GCM over an empty plaintext.

use super::{AeadKey, AuthFailed, Backend, Icv, KeyError, Nonce};
use crate::sa::params::Algorithm;
use ring::aead::{self, Aad, LessSafeKey, Tag, UnboundKey};

/// The `ring` crypto backend.
#[derive(Debug)]
pub struct Ring;

/// A `ring` key.
pub struct RingKey(LessSafeKey);

impl Backend for Ring {
    type Key = RingKey;
    const NAME: &'static str = "ring";

    fn key(alg: Algorithm, key: &[u8]) -> Result<RingKey, KeyError> {
        let ralg = match alg {
            Algorithm::Aes128Gcm | Algorithm::Aes128Gmac => &aead::AES_128_GCM,
            Algorithm::Aes256Gcm | Algorithm::Aes256Gmac => &aead::AES_256_GCM,
            Algorithm::ChaCha20Poly1305 => &aead::CHACHA20_POLY1305,
        };
        if key.len() != alg.key_len() {
            return Err(KeyError::Length { alg: alg.name(), want: alg.key_len(), got: key.len() });
        }
        let k = UnboundKey::new(ralg, key).map_err(|_| KeyError::Unsupported(alg.name(), Self::NAME))?;
        Ok(RingKey(LessSafeKey::new(k)))
    }
}

impl AeadKey for RingKey {
    #[inline]
    fn seal(&self, nonce: &Nonce, aad: &[u8], data: &mut [u8]) -> Icv {
        let tag = self.0.seal_in_place_separate_tag(aead::Nonce::assume_unique_for_key(*nonce), Aad::from(aad), data);
        // ring refuses only inputs longer than 2^36 bytes, which no packet reaches.
        let mut icv = [0u8; 16];
        if let Ok(t) = tag {
            icv.copy_from_slice(t.as_ref());
        }
        icv
    }

    #[inline]
    fn open(&self, nonce: &Nonce, aad: &[u8], data: &mut [u8], icv: &Icv) -> Result<(), AuthFailed> {
        self.0
            .open_in_place_separate_tag(
                aead::Nonce::assume_unique_for_key(*nonce),
                Aad::from(aad),
                Tag::from(*icv),
                data,
                0..,
            )
            .map(|_| ())
            .map_err(|_| AuthFailed)
    }
}

impl core::fmt::Debug for RingKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "RingKey({:?}, <redacted>)", self.0.algorithm())
    }
}
