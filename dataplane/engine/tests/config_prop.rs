//! Property test: the SA configuration parser answers every input with SAs or with an
//! error that says where, never with a panic: valid configurations with one field (or
//! an element of one) replaced by any JSON value, fields added, and arbitrary text.

use natt_engine::sa::config::parse_config;
use proptest::prelude::*;
use serde_json::{Value, json};

fn base() -> Value {
    json!({"version": 1, "sas": [
        {"name": "alice-in", "spi": "0x1001", "direction": "inbound", "mode": "tunnel", "algorithm": "aes128-gcm",
         "key": "00112233445566778899aabbccddeeff", "salt": "01020304", "local": "203.0.113.1",
         "peer": "198.51.100.7", "encap": {"local_port": 4500, "peer_port": 4500}, "replay_window": 1024,
         "esn": true, "selectors": {"local": ["10.0.0.0/16", "fd00::/64"], "peer": ["10.8.0.2/32"]},
         "lifetime": {"soft_bytes": 1000, "hard_bytes": 2000, "soft_packets": 10, "hard_packets": 20},
         "nat_update": true, "paired_spi": "0x2001", "last_seq": 5},
        {"name": "alice-out", "spi": 8193, "direction": "outbound", "algorithm": "aes256-gcm",
         "key": "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff01020304",
         "local": "203.0.113.1", "peer": "198.51.100.7", "encap": {"local_port": 4500, "peer_port": 4500},
         "selectors": {"local": ["10.0.0.0/16"], "peer": ["10.8.0.2/32"]}, "ttl": 64, "df": "set", "pad_to": 16},
        {"name": "bob-tr", "spi": 4099, "direction": "outbound", "mode": "transport", "algorithm": "chacha20-poly1305",
         "key": "ff112233445566778899aabbccddeeff00112233445566778899aabbccddeeff01020304",
         "local": "2001:db8::1", "peer": "2001:db8::2", "encap": null}
    ]})
}

/// Where a value may go: (SA index, path of keys; a number is an array index).
const PLACES: &[(usize, &[&str])] = &[
    (0, &["name"]),
    (0, &["spi"]),
    (0, &["direction"]),
    (0, &["mode"]),
    (0, &["algorithm"]),
    (0, &["key"]),
    (0, &["salt"]),
    (0, &["local"]),
    (0, &["peer"]),
    (0, &["encap"]),
    (0, &["encap", "local_port"]),
    (0, &["encap", "peer_port"]),
    (0, &["replay_window"]),
    (0, &["esn"]),
    (0, &["selectors"]),
    (0, &["selectors", "local"]),
    (0, &["selectors", "local", "0"]),
    (0, &["selectors", "peer", "0"]),
    (0, &["lifetime"]),
    (0, &["lifetime", "soft_bytes"]),
    (0, &["lifetime", "hard_packets"]),
    (0, &["nat_update"]),
    (0, &["paired_spi"]),
    (0, &["last_seq"]),
    (0, &["surprise"]),
    (1, &["ttl"]),
    (1, &["df"]),
    (1, &["pad_to"]),
    (1, &["spi"]),
    (1, &["key"]),
    (1, &["selectors", "peer"]),
    (2, &["local"]),
    (2, &["peer"]),
    (2, &["mode"]),
];

fn any_value() -> impl Strategy<Value = Value> {
    let text = prop_oneof![
        Just(String::new()),
        Just("0x".to_owned()),
        Just("0x1".to_owned()),
        Just("0xffffffffff".to_owned()),
        Just("::".to_owned()),
        Just("10.0.0.0/33".to_owned()),
        Just("10.0.0.1/16".to_owned()),
        Just("fd00::/129".to_owned()),
        Just("1.2.3.4".to_owned()),
        Just("none".to_owned()),
        Just("aes128gcm16".to_owned()),
        Just("zz".repeat(20)),
        Just("ab".repeat(2000)),
        "[0-9a-fx:./ -]{0,40}",
        any::<String>(),
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        prop_oneof![Just(-1.0f64), Just(0.5), Just(1e300), Just(4294967296.0)].prop_map(Value::from),
        text.prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map("[a-z_]{1,12}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn put(v: &mut Value, sa: usize, path: &[&str], x: Value) {
    let mut at = &mut v["sas"][sa];
    for (i, k) in path.iter().enumerate() {
        let last = i + 1 == path.len();
        at = match k.parse::<usize>() {
            Ok(n) => match at.as_array_mut() {
                Some(a) if n < a.len() => &mut a[n],
                _ => return,
            },
            Err(_) => {
                if !at.is_object() {
                    return;
                }
                if last {
                    at[*k] = x;
                    return;
                }
                &mut at[*k]
            }
        };
        if last {
            *at = x;
            return;
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn any_field_of_any_value_is_answered_not_a_panic(
        edits in prop::collection::vec((0..PLACES.len(), any_value()), 1..4),
    ) {
        let mut v = base();
        for (p, x) in edits {
            let (sa, path) = PLACES[p];
            put(&mut v, sa, path, x);
        }
        let text = v.to_string();
        match parse_config(&text, Some("conf/sas.json")) {
            Ok(sas) => prop_assert!(sas.len() <= 3),
            Err(e) => {
                let m = e.to_string();
                prop_assert!(m.starts_with("conf/sas.json"), "{m}");
            }
        }
    }

    #[test]
    fn any_text_is_answered_not_a_panic(text in any::<String>(), cut in any::<prop::sample::Index>()) {
        let _ = parse_config(&text, None);
        let full = base().to_string();
        let at = cut.index(full.len() + 1);
        if let Some(prefix) = full.get(..at) {
            if let Err(e) = parse_config(&format!("{prefix}{text}"), Some("f.json")) {
                prop_assert!(e.to_string().starts_with("f.json"), "{e}");
            }
        }
    }
}

#[test]
fn the_base_configuration_is_valid() {
    // Else the properties above would exercise errors only.
    assert_eq!(parse_config(&base().to_string(), None).unwrap().len(), 3);
}
