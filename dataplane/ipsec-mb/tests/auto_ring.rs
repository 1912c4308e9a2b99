//! `Auto` with `ring` chosen (its own process: the choice is process-wide) makes every
//! key with `ring`, and keys made before a change keep their library.

use natt_engine::crypto::Backend;
use natt_engine::sa::Algorithm;
use natt_ipsec_mb::{Auto, Choice};

#[test]
fn ring_chosen_makes_ring_keys_and_existing_keys_keep_their_library() {
    assert_eq!(natt_ipsec_mb::selected(), Choice::Ring, "ring until something else is chosen");
    let before = Auto::key(Algorithm::Aes128Gcm, &[7; 16]).unwrap();
    assert_eq!(before.library(), "ring");
    natt_ipsec_mb::select(Choice::IpsecMb).unwrap();
    let after = Auto::key(Algorithm::Aes128Gcm, &[7; 16]).unwrap();
    assert_eq!(after.library(), "intel-ipsec-mb");
    assert_eq!(before.library(), "ring");
    natt_ipsec_mb::select(Choice::Ring).unwrap();
    assert_eq!(Auto::key(Algorithm::Aes256Gcm, &[7; 32]).unwrap().library(), "ring");
}
