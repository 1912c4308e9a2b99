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
use std::sync::atomic::{AtomicU8, Ordering};

/// What intel-ipsec-mb said when it started: the code path it uses, its version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Library {
    pub arch: &'static str,
    pub version: String,
}

static LIBRARY: OnceLock<Result<Library, String>> = OnceLock::new();

/// Start the library (once; later calls return the first answer).
pub fn library() -> Result<&'static Library, &'static str> {
    LIBRARY
        .get_or_init(|| {
            ffi::init().map(|(arch, version)| Library {
                arch: match arch {
                    1 => "no-aesni",
                    2 => "sse",
                    3 => "avx",
                    4 => "avx2",
                    5 => "avx512",
                    _ => "other",
                },
                version,
            })
        })
        .as_ref()
        .map_err(String::as_str)
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

/// An expanded AES-GCM key, for intel-ipsec-mb.
pub struct MbKey {
    kd: ffi::KeyData,
    /// 16 or 32 (AES-128, AES-256).
    key_len: usize,
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
        let mut k = MbKey { kd: ffi::KeyData([0; ffi::KEY_DATA_LEN]), key_len: key.len() };
        if !ffi::gcm_pre(key, &mut k.kd) {
            return Err(KeyError::Unsupported(alg.name(), Self::NAME));
        }
        Ok(k)
    }
}

impl AeadKey for MbKey {
    #[inline]
    fn seal(&self, nonce: &Nonce, aad: &[u8], data: &mut [u8]) -> Icv {
        let mut icv = [0u8; 16];
        ffi::gcm_seal(self.key_len, &self.kd, nonce, aad, data, &mut icv);
        icv
    }

    #[inline]
    fn open(&self, nonce: &Nonce, aad: &[u8], data: &mut [u8], icv: &Icv) -> Result<(), AuthFailed> {
        if ffi::gcm_open(self.key_len, &self.kd, nonce, aad, data, icv) { Ok(()) } else { Err(AuthFailed) }
    }
}

impl Drop for MbKey {
    fn drop(&mut self) {
        // Round keys and hash-key powers do not outlive the SA.
        self.kd.0.fill(0);
        std::hint::black_box(&self.kd.0);
    }
}

impl core::fmt::Debug for MbKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "MbKey(AES-{}, <redacted>)", self.key_len * 8)
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
}
