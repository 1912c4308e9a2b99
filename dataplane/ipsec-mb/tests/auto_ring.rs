//! `Auto` with `ring` chosen (its own process: the choice is process-wide, so this file
//! holds one test) makes every key with `ring`, keys made before a change keep their
//! library, and the `--crypto` values choose as documented.

use natt_engine::crypto::Backend;
use natt_engine::sa::Algorithm;
use natt_ipsec_mb::{Auto, Choice};

#[test]
fn choices_and_the_keys_they_make() {
    assert_eq!(natt_ipsec_mb::selected(), Choice::Ring, "ring until something else is chosen");
    let before = Auto::key(Algorithm::Aes128Gcm, &[7; 16]).unwrap();
    assert_eq!(before.library(), "ring");
    natt_ipsec_mb::select(Choice::IpsecMb).unwrap();
    let after = Auto::key(Algorithm::Aes128Gcm, &[7; 16]).unwrap();
    assert_eq!(after.library(), "intel-ipsec-mb");
    assert_eq!(before.library(), "ring");
    natt_ipsec_mb::select(Choice::Ring).unwrap();
    assert_eq!(Auto::key(Algorithm::Aes256Gcm, &[7; 32]).unwrap().library(), "ring");

    // The option values.
    assert_eq!(natt_ipsec_mb::select_named("ipsec-mb").unwrap(), Choice::IpsecMb);
    assert_eq!(natt_ipsec_mb::selected(), Choice::IpsecMb);
    assert_eq!(natt_ipsec_mb::select_named("ring").unwrap(), Choice::Ring);
    assert_eq!(natt_ipsec_mb::selected(), Choice::Ring);
    let auto = natt_ipsec_mb::select_named("auto").unwrap();
    let lib = natt_ipsec_mb::library().unwrap();
    assert_eq!(auto == Choice::IpsecMb, lib.arch != "no-aesni", "{lib:?}");
    assert_eq!(
        natt_ipsec_mb::select_named("openssl").unwrap_err(),
        "--crypto openssl: use one of auto, ipsec-mb, ring"
    );
}
