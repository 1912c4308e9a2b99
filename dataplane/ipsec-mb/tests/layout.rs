//! The SA runtime state built on this backend's keys: what every packet reads fits the
//! head the dataplane's store loads first (`SaRuntime::HEAD_LEN`, two cache lines),
//! and what else a packet reads (`SaRuntime::hot_spans`: selector sets where the head's
//! IPv4 selectors do not decide, and key) lies within the state, past the head. Which
//! library a key belongs to costs no line of its own.

use core::mem::size_of;
use natt_engine::crypto::AeadKey;
use natt_engine::sa::SaRuntime;
use natt_engine::sa::config::parse_sa;
use natt_ipsec_mb::{Auto, AutoKey, Choice, MbKey};

#[test]
fn the_head_is_two_lines_and_the_hot_spans_lie_past_it() {
    type Rt = SaRuntime<AutoKey>;
    const { assert!(Rt::HEAD_LEN <= 2 * 64, "the head is more than two cache lines") };
    const { assert!(Rt::KEY_OFFSET >= Rt::HEAD_LEN, "the key starts inside the head") };
    natt_ipsec_mb::select(Choice::IpsecMb).expect("intel-ipsec-mb starts");
    let sa = serde_json::json!({
        "name": "a", "spi": 4096, "direction": "inbound", "mode": "tunnel", "algorithm": "aes128-gcm",
        "key": "00112233445566778899aabbccddeeff", "salt": "01020304",
        "local": "203.0.113.1", "peer": "198.51.100.7",
        "selectors": {"local": ["10.0.0.0/8"], "peer": ["192.168.1.2/32"]},
    });
    let mut two = sa.clone();
    two["selectors"]["local"] = serde_json::json!(["10.0.0.0/8", "172.16.0.0/12"]);
    // The enum keeps its tag in `MbKey`'s key length byte, a niche: no larger, and no
    // line of its own.
    assert_eq!(size_of::<AutoKey>(), size_of::<MbKey>());
    let rt = SaRuntime::new::<Auto>(&parse_sa(&sa).expect("valid SA")).expect("key");
    let rt2 = SaRuntime::new::<Auto>(&parse_sa(&two).expect("valid SA")).expect("key");
    assert_eq!(rt.key.library(), "intel-ipsec-mb");
    let base = core::ptr::from_ref(&rt) as usize;
    let lead = rt.key.lead() as usize - base;
    assert!(lead >= Rt::KEY_OFFSET && lead < Rt::KEY_OFFSET + size_of::<AutoKey>());
    for len in [0, 64, 1420] {
        let mut spans = Vec::new();
        rt.hot_spans(len, &mut |at, n| spans.push((at as usize - base, n)));
        // The key's round keys and hash-key powers (the head's selectors decide here).
        assert_eq!(spans.len(), 2, "{spans:?}");
        // The lead byte's line is one the crypto reads anyway.
        assert!(spans.iter().any(|&(at, n)| at / 64 <= lead / 64 && lead / 64 <= (at + n - 1) / 64), "{spans:?}");
        let mut spans2 = Vec::new();
        let base2 = core::ptr::from_ref(&rt2) as usize;
        rt2.hot_spans(len, &mut |at, n| spans2.push((at as usize - base2, n)));
        // Two selector sets, then the key.
        assert_eq!(spans2.len(), 4, "{spans2:?}");
        assert_eq!(spans2[2..], spans[..]);
        for &(at, n) in &spans {
            assert!(at >= Rt::HEAD_LEN && at + n <= size_of::<Rt>(), "span {at}+{n} of {len} bytes");
        }
        assert!(spans.iter().any(|&(at, _)| at >= Rt::KEY_OFFSET), "no key span for {len} bytes: {spans:?}");
    }
}
