//! The SA runtime state built on this backend's keys: what every packet reads fits the
//! head the dataplane's store loads first (`SaRuntime::HEAD_LEN`, three cache lines),
//! and what else a packet reads (`SaRuntime::hot_spans`: selectors and key) lies within
//! the state, past the head.

use core::mem::size_of;
use natt_engine::sa::SaRuntime;
use natt_engine::sa::config::parse_sa;
use natt_ipsec_mb::{Auto, AutoKey, Choice};

#[test]
fn the_head_is_three_lines_and_the_hot_spans_lie_past_it() {
    type Rt = SaRuntime<AutoKey>;
    const { assert!(Rt::HEAD_LEN <= 3 * 64, "the head is more than three cache lines") };
    const { assert!(Rt::KEY_OFFSET >= Rt::HEAD_LEN, "the key starts inside the head") };
    natt_ipsec_mb::select(Choice::IpsecMb).expect("intel-ipsec-mb starts");
    let sa = serde_json::json!({
        "name": "a", "spi": 4096, "direction": "inbound", "mode": "tunnel", "algorithm": "aes128-gcm",
        "key": "00112233445566778899aabbccddeeff", "salt": "01020304",
        "local": "203.0.113.1", "peer": "198.51.100.7",
        "selectors": {"local": ["10.0.0.0/8"], "peer": ["192.168.1.2/32"]},
    });
    let rt = SaRuntime::new::<Auto>(&parse_sa(&sa).expect("valid SA")).expect("key");
    assert_eq!(rt.key.library(), "intel-ipsec-mb");
    let base = core::ptr::from_ref(&rt) as usize;
    for len in [0, 64, 1420] {
        let mut spans = Vec::new();
        rt.hot_spans(len, &mut |at, n| spans.push((at as usize - base, n)));
        // Two selector sets, then the key's round keys and hash-key powers.
        assert!(spans.len() >= 3, "{spans:?}");
        for &(at, n) in &spans {
            assert!(at >= Rt::HEAD_LEN && at + n <= size_of::<Rt>(), "span {at}+{n} of {len} bytes");
        }
        assert!(spans.iter().any(|&(at, _)| at >= Rt::KEY_OFFSET), "no key span for {len} bytes: {spans:?}");
    }
}
