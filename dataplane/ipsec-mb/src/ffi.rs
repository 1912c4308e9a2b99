//! The only unsafe code of this crate: calls into the C shim (`shim/mb.c`), which calls
//! intel-ipsec-mb. Every pointer passed is derived from a live Rust reference of the
//! length the callee reads or writes.
#![allow(unsafe_code)]

use std::ffi::CStr;
use std::os::raw::{c_char, c_int, c_void};

unsafe extern "C" {
    fn natt_mb_init(arch: *mut c_int) -> c_int;
    fn natt_mb_key_data_size() -> usize;
    fn natt_mb_key_data_used() -> usize;
    fn natt_mb_version() -> *const c_char;
    fn natt_mb_gcm_pre(key: *const u8, key_len: usize, kd: *mut c_void) -> c_int;
    fn natt_mb_gcm_seal(
        key_len: usize,
        kd: *const c_void,
        iv: *const u8,
        aad: *const u8,
        aad_len: u64,
        data: *mut u8,
        len: u64,
        tag: *mut u8,
    );
    fn natt_mb_gcm_open(
        key_len: usize,
        kd: *const c_void,
        iv: *const u8,
        aad: *const u8,
        aad_len: u64,
        data: *mut u8,
        len: u64,
        tag: *const u8,
    ) -> c_int;
}

/// Room for the library's expanded GCM key (`struct gcm_key_data`, 1008 bytes in 1.3),
/// aligned as its vector code prefers. `init` refuses a library whose struct is larger.
pub(crate) const KEY_DATA_LEN: usize = 1024;

/// Where in `KeyData` the AES key length (16 or 32) is kept: the last byte, past every
/// field of the library's struct (`init` checks), in the cache line that the hash key H
/// itself is in, so that a packet reads no line for it alone.
pub(crate) const KEY_LEN_AT: usize = KEY_DATA_LEN - 1;

/// The AES key length, as a type with two values: the byte's other 254 are a niche, in
/// which `AutoKey` keeps which library a key belongs to, so that telling them apart reads
/// the line of H rather than a line of its own.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KeyLen {
    Aes128 = 16,
    Aes256 = 32,
}

impl KeyLen {
    /// Bytes of expanded round keys at the start of the key data: 11 (AES-128) or 15
    /// (AES-256) of 16 bytes.
    #[inline]
    pub(crate) fn round_keys_len(self) -> usize {
        match self {
            KeyLen::Aes128 => 11 * 16,
            KeyLen::Aes256 => 15 * 16,
        }
    }
}

/// The library's `struct gcm_key_data` in `bytes`, our key length in the last byte.
#[repr(C, align(64))]
pub(crate) struct KeyData {
    pub(crate) bytes: [u8; KEY_LEN_AT],
    pub(crate) key_len: KeyLen,
}

const _: () = assert!(core::mem::size_of::<KeyData>() == KEY_DATA_LEN);
const _: () = assert!(core::mem::offset_of!(KeyData, key_len) == KEY_LEN_AT);

/// Make the library's manager (once per process; later calls return the same answer).
/// Returns the architecture its code paths use (`IMB_ARCH`: 1 no AES-NI, 2 SSE, 3 AVX,
/// 4 AVX2, 5 AVX-512) and its version.
pub(crate) fn init() -> Result<(i32, String), String> {
    // SAFETY: natt_mb_key_data_size takes nothing and returns a constant.
    let need = unsafe { natt_mb_key_data_size() };
    // SAFETY: as above.
    let used = unsafe { natt_mb_key_data_used() };
    check_layout(need, used)?;
    let mut arch: c_int = 0;
    // SAFETY: `arch` is a live c_int the shim writes once; the shim's own global is
    // written only here, and callers serialise this (a OnceLock in lib.rs).
    let err = unsafe { natt_mb_init(&mut arch) };
    if err != 0 {
        return Err(format!("the library could not start (error {err}): no AES-NI on this CPU?"));
    }
    // SAFETY: the library returns a pointer to a static NUL-terminated string.
    let v = unsafe { CStr::from_ptr(natt_mb_version()) }.to_string_lossy().into_owned();
    Ok((arch, v))
}

/// Whether the library's `struct gcm_key_data` (`need` bytes with its padding, `used` up
/// to the end of its last field) fits `KeyData` and leaves `KEY_LEN_AT` to us.
fn check_layout(need: usize, used: usize) -> Result<(), String> {
    if need > KEY_DATA_LEN || used > KEY_LEN_AT {
        return Err(format!(
            "its GCM key data is {need} bytes ({used} in fields), more than this build reserves \
             ({KEY_DATA_LEN}, of which {KEY_LEN_AT} for the library)"
        ));
    }
    Ok(())
}

/// Expand a 16- or 32-byte AES key (`None` for other lengths, or if the library
/// refuses). Only after `init` succeeded.
pub(crate) fn gcm_pre(key: &[u8]) -> Option<KeyData> {
    let key_len = match key.len() {
        16 => KeyLen::Aes128,
        32 => KeyLen::Aes256,
        _ => return None,
    };
    let mut kd = KeyData { bytes: [0; KEY_LEN_AT], key_len };
    // SAFETY: `key` is readable for key.len() bytes (16 or 32); `kd.bytes` is writable for
    // KEY_LEN_AT >= the library's fields (checked in `init`, which the caller ran), so
    // the library never writes the key length.
    let ok = unsafe { natt_mb_gcm_pre(key.as_ptr(), key.len(), kd.bytes.as_mut_ptr().cast()) == 0 };
    ok.then_some(kd)
}

impl KeyData {
    /// The AES key length this key was made with (`gcm_pre`).
    #[inline]
    pub(crate) fn key_len(&self) -> usize {
        usize::from(self.key_len as u8)
    }
}

/// Encrypt `data` in place; the tag goes to `tag`.
pub(crate) fn gcm_seal(kd: &KeyData, iv: &[u8; 12], aad: &[u8], data: &mut [u8], tag: &mut [u8; 16]) {
    // SAFETY: every pointer comes from a live reference of the length passed with it
    // (iv 12, tag 16, kd holds an expanded key of the length `key_len` reads back, and
    // the shim reads no more of it than either AES key size needs); `data` is read and written
    // in place over data.len() bytes, which the library supports (src == dst).
    unsafe {
        natt_mb_gcm_seal(
            kd.key_len(),
            kd.bytes.as_ptr().cast(),
            iv.as_ptr(),
            aad.as_ptr(),
            aad.len() as u64,
            data.as_mut_ptr(),
            data.len() as u64,
            tag.as_mut_ptr(),
        )
    }
}

/// Decrypt `data` in place; true if `tag` verifies.
pub(crate) fn gcm_open(kd: &KeyData, iv: &[u8; 12], aad: &[u8], data: &mut [u8], tag: &[u8; 16]) -> bool {
    // SAFETY: as in `gcm_seal`; the tag is only read.
    unsafe {
        natt_mb_gcm_open(
            kd.key_len(),
            kd.bytes.as_ptr().cast(),
            iv.as_ptr(),
            aad.as_ptr(),
            aad.len() as u64,
            data.as_mut_ptr(),
            data.len() as u64,
            tag.as_ptr(),
        ) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_data_struct_that_would_reach_our_key_length_byte_is_refused() {
        // This library: 1008 bytes, all of them fields.
        // SAFETY: both shim functions take nothing and return constants.
        let (need, used) = unsafe { (natt_mb_key_data_size(), natt_mb_key_data_used()) };
        assert_eq!(check_layout(need, used), Ok(()));
        assert!(used <= KEY_LEN_AT && need <= KEY_DATA_LEN);
        // Fields up to the byte before ours: fine, even with padding to the whole buffer.
        assert_eq!(check_layout(KEY_DATA_LEN, KEY_LEN_AT), Ok(()));
        // A field on our byte, or a struct larger than the buffer: refused, saying so.
        let e = check_layout(KEY_DATA_LEN, KEY_LEN_AT + 1).unwrap_err();
        assert!(e.contains("1024 bytes (1024 in fields)") && e.contains("of which 1023"), "{e}");
        assert!(check_layout(KEY_DATA_LEN + 16, 1008).unwrap_err().contains("1040 bytes"));
    }
}
