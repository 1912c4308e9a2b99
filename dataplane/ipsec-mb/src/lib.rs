//! A second crypto backend for the engine: AES-GCM and AES-GMAC (RFC 4106, RFC 4543)
//! through intel-ipsec-mb, the library behind DPDK's `crypto_aesni_gcm` and
//! `crypto_aesni_mb` drivers, whose fixed cost per packet is a fraction of `ring`'s. Keys
//! and packets flow in as the engine's `Backend` interface has them; nothing else of
//! the engine changes.
//!
//! - [`IpsecMb`]: AES-GCM and GMAC only (ChaCha20-Poly1305 is refused as unsupported).
//! - [`Auto`]: what the dataplane uses. Each key is made by intel-ipsec-mb when it was
//!   chosen ([`select`]) and does the algorithm, else by `ring` (ChaCha20-Poly1305
//!   always). One branch per packet picks the library.
//!
//! The library's manager is made once per process and only read afterwards; its GCM
//! functions keep their state on the caller's stack, so any thread may use any key.
#![deny(unsafe_code)]

mod ffi;

use natt_engine::crypto::{AeadKey, AuthFailed, Backend, Icv, KeyError, Nonce, Ring, RingKey};
use natt_engine::sa::Algorithm;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

/// What intel-ipsec-mb said when it started: the code path it uses, its version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Library {
    pub arch: &'static str,
    pub version: String,
}

static LIBRARY: OnceLock<Result<Library, String>> = OnceLock::new();

/// Where the code path in use keeps the GHASH key powers in `struct gcm_key_data` (read
/// off the 1.3 assembly): the VAES/AVX-512 code (AVX-512 with VAES and VPCLMULQDQ) keeps
/// H^48 down to H^1 in bytes 240..1008 and reads the last n of them for n blocks; the
/// other paths keep 8 powers (and 8 Karatsuba halves) from byte 240, to 496 at most.
/// For `MbKey::hot_spans` only: a wrong answer costs time, never correctness.
static WIDE_GHASH: AtomicBool = AtomicBool::new(false);
/// End of the VAES path's 48 hash-key powers, and of the other paths' 16 entries.
const WIDE_GHASH_END: usize = 1008;
const NARROW_GHASH_END: usize = 496;

/// Start the library (once; later calls return the first answer).
pub fn library() -> Result<&'static Library, &'static str> {
    LIBRARY
        .get_or_init(|| {
            ffi::init().map(|(arch, version)| {
                WIDE_GHASH.store(arch == 5 && has_vaes(), Ordering::Relaxed);
                Library {
                    arch: match arch {
                        1 => "no-aesni",
                        2 => "sse",
                        3 => "avx",
                        4 => "avx2",
                        5 => "avx512",
                        _ => "other",
                    },
                    version,
                }
            })
        })
        .as_ref()
        .map_err(String::as_str)
}

fn has_vaes() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::arch::is_x86_feature_detected!("vaes") && std::arch::is_x86_feature_detected!("vpclmulqdq");
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Which library [`Auto`] makes AES-GCM and GMAC keys with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Choice {
    Ring,
    IpsecMb,
}

impl Choice {
    /// The library's name, as statistics and reports give it.
    pub fn library(self) -> &'static str {
        match self {
            Choice::Ring => Ring::NAME,
            Choice::IpsecMb => IpsecMb::NAME,
        }
    }
}

const RING: u8 = 0;
const IPSEC_MB: u8 = 1;
static CHOICE: AtomicU8 = AtomicU8::new(RING);

/// Choose the library for the keys [`Auto`] makes from now on. Choosing intel-ipsec-mb
/// starts it, and fails (choosing nothing) if it cannot start.
pub fn select(c: Choice) -> Result<(), &'static str> {
    let v = match c {
        Choice::Ring => RING,
        Choice::IpsecMb => {
            library()?;
            IPSEC_MB
        }
    };
    CHOICE.store(v, Ordering::Release);
    Ok(())
}

/// The values of the dataplane's and `natt-pcap`'s `--crypto` option.
pub const CRYPTO_VALUES: [&str; 3] = ["auto", "ipsec-mb", "ring"];

/// Apply a `--crypto` value of the dataplane or `natt-pcap`: `ring`; `ipsec-mb` (an
/// error if the library cannot start); `auto`, intel-ipsec-mb where it starts with AES-NI
/// (its code without AES-NI is slower than `ring`'s), else `ring`.
pub fn select_named(name: &str) -> Result<Choice, String> {
    let choice = match name {
        "ring" => Choice::Ring,
        "ipsec-mb" => {
            library().map_err(|e| format!("--crypto ipsec-mb: intel-ipsec-mb cannot start: {e}; use --crypto ring"))?;
            Choice::IpsecMb
        }
        "auto" => match library() {
            Ok(lib) if lib.arch != "no-aesni" => Choice::IpsecMb,
            _ => Choice::Ring,
        },
        other => return Err(format!("--crypto {other}: use one of {}", CRYPTO_VALUES.join(", "))),
    };
    select(choice).map_err(str::to_owned)?;
    Ok(choice)
}

/// The library [`Auto`] makes AES keys with now.
pub fn selected() -> Choice {
    if CHOICE.load(Ordering::Acquire) == IPSEC_MB { Choice::IpsecMb } else { Choice::Ring }
}

/// The intel-ipsec-mb backend: AES-GCM and AES-GMAC.
#[derive(Debug)]
pub struct IpsecMb;

/// An expanded AES-GCM key, for intel-ipsec-mb: the library's key data, with the AES
/// key length in its last byte (`ffi::KEY_LEN_AT`).
pub struct MbKey {
    kd: ffi::KeyData,
}

impl Backend for IpsecMb {
    type Key = MbKey;
    const NAME: &'static str = "intel-ipsec-mb";

    fn key(alg: Algorithm, key: &[u8]) -> Result<MbKey, KeyError> {
        match alg {
            Algorithm::Aes128Gcm | Algorithm::Aes128Gmac | Algorithm::Aes256Gcm | Algorithm::Aes256Gmac => {}
            Algorithm::ChaCha20Poly1305 => return Err(KeyError::Unsupported(alg.name(), Self::NAME)),
        }
        if key.len() != alg.key_len() {
            return Err(KeyError::Length { alg: alg.name(), want: alg.key_len(), got: key.len() });
        }
        if library().is_err() {
            return Err(KeyError::Unsupported(alg.name(), Self::NAME));
        }
        match ffi::gcm_pre(key) {
            Some(kd) => Ok(MbKey { kd }),
            None => Err(KeyError::Unsupported(alg.name(), Self::NAME)),
        }
    }
}

impl AeadKey for MbKey {
    #[inline]
    fn seal(&self, nonce: &Nonce, aad: &[u8], data: &mut [u8]) -> Icv {
        let mut icv = [0u8; 16];
        ffi::gcm_seal(&self.kd, nonce, aad, data, &mut icv);
        icv
    }

    #[inline]
    fn open(&self, nonce: &Nonce, aad: &[u8], data: &mut [u8], icv: &Icv) -> Result<(), AuthFailed> {
        if ffi::gcm_open(&self.kd, nonce, aad, data, icv) { Ok(()) } else { Err(AuthFailed) }
    }

    /// The round keys and the hash-key powers that `data_len` bytes need, and the key
    /// length (in the line of H itself with the VAES code): with the VAES code a 64-byte
    /// packet reads 5 of the key's 16 cache lines with AES-128 (3 of round keys, 2 of
    /// powers), 6 with AES-256. Reads the key length: `lead` first.
    #[inline]
    fn hot_spans(&self, data_len: usize, f: &mut impl FnMut(*const u8, usize)) {
        let kd = &self.kd.bytes;
        if WIDE_GHASH.load(Ordering::Relaxed) {
            f(kd.as_ptr(), self.kd.key_len.round_keys_len());
            // The data's blocks and one for the AAD (the lengths block takes H^1 too).
            let powers = (data_len.div_ceil(16) + 1).min(48);
            let start = WIDE_GHASH_END - 16 * powers;
            f(kd[start..].as_ptr(), 16 * powers);
        } else {
            f(kd.as_ptr(), NARROW_GHASH_END);
            f(core::ptr::from_ref(&self.kd.key_len).cast(), 1);
        }
    }

    /// The key length's byte, in the line of H.
    #[inline]
    fn lead(&self) -> *const u8 {
        core::ptr::from_ref(&self.kd.key_len).cast()
    }
}

impl Drop for MbKey {
    fn drop(&mut self) {
        // Round keys and hash-key powers do not outlive the SA.
        self.kd.bytes.fill(0);
        std::hint::black_box(&self.kd.bytes);
    }
}

impl core::fmt::Debug for MbKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "MbKey(AES-{}, <redacted>)", self.kd.key_len() * 8)
    }
}

/// The dataplane's backend: intel-ipsec-mb for AES-GCM and GMAC once [`select`]ed,
/// `ring` for the rest and by default.
#[derive(Debug)]
pub struct Auto;

/// A key of either library. Inline, not boxed: the key lives in the SA's runtime state
/// (itself one allocation), in the lines the dataplane's store prefetches ahead of a
/// burst, and a box would add a dependent load per packet.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum AutoKey {
    Mb(MbKey),
    Ring(RingKey),
}

impl AutoKey {
    /// The library this key belongs to.
    pub fn library(&self) -> &'static str {
        match self {
            AutoKey::Mb(_) => IpsecMb::NAME,
            AutoKey::Ring(_) => Ring::NAME,
        }
    }
}

impl Backend for Auto {
    type Key = AutoKey;
    const NAME: &'static str = "auto";

    fn key(alg: Algorithm, key: &[u8]) -> Result<AutoKey, KeyError> {
        if selected() == Choice::IpsecMb && alg != Algorithm::ChaCha20Poly1305 {
            return IpsecMb::key(alg, key).map(AutoKey::Mb);
        }
        Ring::key(alg, key).map(AutoKey::Ring)
    }
}

impl AeadKey for AutoKey {
    #[inline]
    fn seal(&self, nonce: &Nonce, aad: &[u8], data: &mut [u8]) -> Icv {
        match self {
            AutoKey::Mb(k) => k.seal(nonce, aad, data),
            AutoKey::Ring(k) => k.seal(nonce, aad, data),
        }
    }

    #[inline]
    fn open(&self, nonce: &Nonce, aad: &[u8], data: &mut [u8], icv: &Icv) -> Result<(), AuthFailed> {
        match self {
            AutoKey::Mb(k) => k.open(nonce, aad, data, icv),
            AutoKey::Ring(k) => k.open(nonce, aad, data, icv),
        }
    }

    #[inline]
    fn hot_spans(&self, data_len: usize, f: &mut impl FnMut(*const u8, usize)) {
        match self {
            AutoKey::Mb(k) => k.hot_spans(data_len, f),
            AutoKey::Ring(k) => k.hot_spans(data_len, f),
        }
    }

    /// The last byte, where the compiler keeps which library the key belongs to (in
    /// `MbKey`'s key length byte, a niche: the enum is no larger than `MbKey`), in the
    /// line of H that intel-ipsec-mb reads for every packet.
    #[inline]
    fn lead(&self) -> *const u8 {
        core::ptr::from_ref(self).cast::<u8>().wrapping_add(core::mem::size_of::<Self>() - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spans(k: &MbKey, data_len: usize) -> Vec<(usize, usize)> {
        let base = core::ptr::from_ref(&k.kd) as usize;
        let mut v = Vec::new();
        k.hot_spans(data_len, &mut |at, n| v.push((at as usize - base, n)));
        v
    }

    #[test]
    fn hot_spans_name_the_round_keys_and_the_hash_key_powers_the_length_needs() {
        let lib = library().expect("intel-ipsec-mb starts");
        assert_eq!(WIDE_GHASH.load(Ordering::Relaxed), lib.arch == "avx512" && has_vaes());
        for alg in [Algorithm::Aes128Gcm, Algorithm::Aes256Gcm] {
            let k = IpsecMb::key(alg, &vec![7; alg.key_len()]).expect("key");
            for (len, powers) in
                [(0, 1), (1, 2), (64, 5), (68, 6), (512, 33), (736, 47), (752, 48), (1420, 48), (9000, 48)]
            {
                let rounds = if alg == Algorithm::Aes128Gcm { 176 } else { 240 };
                let want = if WIDE_GHASH.load(Ordering::Relaxed) {
                    vec![(0, rounds), (1008 - 16 * powers, 16 * powers)]
                } else {
                    vec![(0, 496), (1023, 1)]
                };
                let got = spans(&k, len);
                assert_eq!(got, want, "{alg:?}, {len} bytes");
                // The key length is read with every packet: its cache line is in a span
                // (the key data is 64-byte aligned).
                let line = ffi::KEY_LEN_AT / 64;
                assert!(got.iter().any(|&(s, n)| s / 64 <= line && line <= (s + n - 1) / 64), "{alg:?}, {len} bytes");
                assert_eq!(k.kd.key_len(), alg.key_len());
                assert_eq!(k.lead() as usize - core::ptr::from_ref(&k.kd) as usize, ffi::KEY_LEN_AT);
                assert!(got.iter().all(|&(at, n)| at + n <= ffi::KEY_DATA_LEN));
            }
        }
    }
}
