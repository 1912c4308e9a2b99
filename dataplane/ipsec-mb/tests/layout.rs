//! The SA runtime state built on this backend's keys keeps what packets read (the key
//! among it) in the prefix the dataplane's store prefetches (`SaRuntime::HOT_LEN`).

use core::mem::{offset_of, size_of};
use natt_engine::sa::SaRuntime;
use natt_ipsec_mb::AutoKey;

#[test]
fn the_key_is_in_the_prefetched_prefix() {
    type Rt = SaRuntime<AutoKey>;
    let key_end = offset_of!(Rt, key) + size_of::<AutoKey>();
    assert!(key_end <= Rt::HOT_LEN, "key ends at {key_end}, past the hot prefix ({})", Rt::HOT_LEN);
    assert!(offset_of!(Rt, replay) < Rt::HOT_LEN);
    assert!(Rt::HOT_LEN <= size_of::<Rt>());
}
