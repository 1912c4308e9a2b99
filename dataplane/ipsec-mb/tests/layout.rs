//! The SA runtime state built on this backend's keys keeps what packets read in what
//! the dataplane's store prefetches (`SaRuntime::PREFETCH`): every hot field, and of the
//! key the part a packet of ordinary size reads, not the 1 KiB of an expanded
//! intel-ipsec-mb key.

use core::mem::{offset_of, size_of};
use natt_engine::crypto::{AeadKey, Backend, RingKey};
use natt_engine::sa::{Algorithm, SaRuntime};
use natt_ipsec_mb::{Auto, AutoKey, MbKey};

type Rt = SaRuntime<AutoKey>;

fn covered(at: usize, len: usize) -> bool {
    let ranges = Rt::PREFETCH;
    (at..at + len).all(|b| ranges.iter().any(|&(s, l)| (s..s + l).contains(&b)))
}

/// Where a variant's key sits inside the enum (no unsafe: addresses compared as numbers).
fn payload_at(k: &AutoKey) -> usize {
    let base = k as *const AutoKey as usize;
    match k {
        AutoKey::Mb(m) => m as *const MbKey as usize - base,
        AutoKey::Ring(r) => r as *const RingKey as usize - base,
    }
}

#[test]
fn the_hot_fields_and_the_hot_part_of_the_key_are_prefetched() {
    for (what, at, len) in [
        ("replay window", offset_of!(Rt, replay), 8),
        ("selectors", offset_of!(Rt, sel_peer), 8),
        ("endpoint", offset_of!(Rt, endpoint), 8),
        ("packet and byte counts", offset_of!(Rt, stats), 16),
        ("sequence number", offset_of!(Rt, seq), 8),
    ] {
        assert!(covered(at, len), "{what} at {at} not prefetched: {:?}", Rt::PREFETCH);
    }
    natt_ipsec_mb::select(natt_ipsec_mb::Choice::IpsecMb).unwrap();
    let mb = Auto::key(Algorithm::Aes128Gcm, &[1; 16]).unwrap();
    let rg = Auto::key(Algorithm::ChaCha20Poly1305, &[1; 32]).unwrap();
    let key = offset_of!(Rt, key);
    let (mb_at, rg_at) = (payload_at(&mb), payload_at(&rg));
    assert!(covered(key + mb_at, <MbKey as AeadKey>::HOT_BYTES), "mb key at {mb_at}");
    assert!(covered(key + rg_at, size_of::<RingKey>()), "ring key at {rg_at}");
    // The enum's tag, wherever the compiler put it: before the payload, or after it.
    if mb_at > 0 {
        assert!(covered(key, mb_at));
    } else {
        assert!(covered(key + size_of::<MbKey>(), size_of::<AutoKey>() - size_of::<MbKey>()));
    }
    // And the point of it: far less than the whole state.
    let total: usize = Rt::PREFETCH.iter().map(|&(_, l)| l).sum();
    assert!(total < Rt::HOT_LEN - 512, "prefetching {total} of {}", Rt::HOT_LEN);
}
