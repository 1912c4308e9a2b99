//! The draft-mcgrew-gcm-test-01 ESP vectors (`tests/data/mcgrew-gcm-esp.json`, copied
//! from the project's shared vectors), read for the known-answer tests of both crypto
//! backends (`tests/kat.rs` here, `dataplane/ipsec-mb/tests/vectors.rs`), and the frame and
//! transport-mode SA that put a vector's ESP packet through the engine.

use natt_engine::SaParams;
use natt_engine::sa::Algorithm;
use natt_engine::sa::config::parse_config;
use serde_json::{Value, json};

pub struct Vector {
    pub id: String,
    pub key_bits: u64,
    pub gmac: bool,
    pub key: Vec<u8>,
    pub salt: [u8; 4],
    pub spi: u32,
    pub esn: bool,
    pub seq64: u64,
    pub iv: [u8; 8],
    pub plaintext: Vec<u8>,
    pub aad: Vec<u8>,
    pub ciphertext_tag: Vec<u8>,
    pub esp_packet: Vec<u8>,
}

fn h(v: &Value, k: &str) -> Vec<u8> {
    hex::decode(v[k].as_str().unwrap()).unwrap()
}

pub fn vectors() -> Vec<Vector> {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../engine/tests/data/mcgrew-gcm-esp.json"))
            .unwrap();
    let d: Value = serde_json::from_str(&text).unwrap();
    d["vectors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            let esn = v["esn"].as_bool().unwrap();
            let seq64 = if esn {
                u64::from_str_radix(v["seq64"].as_str().unwrap(), 16).unwrap()
            } else {
                u64::from_str_radix(v["seq"].as_str().unwrap(), 16).unwrap()
            };
            Vector {
                id: v["id"].as_str().unwrap().to_owned(),
                key_bits: v["key_bits"].as_u64().unwrap(),
                gmac: v["algorithm"].as_str().unwrap().contains("GMAC"),
                key: h(v, "key"),
                salt: h(v, "salt").try_into().unwrap(),
                spi: u32::from_str_radix(v["spi"].as_str().unwrap(), 16).unwrap(),
                esn,
                seq64,
                iv: h(v, "iv").try_into().unwrap(),
                plaintext: h(v, "plaintext"),
                aad: h(v, "aad"),
                ciphertext_tag: h(v, "ciphertext_tag"),
                esp_packet: h(v, "esp_packet"),
            }
        })
        .collect()
}

pub fn algorithm(v: &Vector) -> Option<Algorithm> {
    match (v.key_bits, v.gmac) {
        (128, false) => Some(Algorithm::Aes128Gcm),
        (256, false) => Some(Algorithm::Aes256Gcm),
        (128, true) => Some(Algorithm::Aes128Gmac),
        (256, true) => Some(Algorithm::Aes256Gmac),
        _ => None,
    }
}

/// An Ethernet + IPv4 frame carrying `esp` as plain ESP or in UDP/4500.
pub fn frame(esp: &[u8], udp: bool) -> Vec<u8> {
    let l4 = if udp { 8 } else { 0 };
    let total = 20 + l4 + esp.len();
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x08, 0x00];
    let mut ip = vec![0x45, 0, (total >> 8) as u8, total as u8, 0, 1, 0, 0, 64, if udp { 17 } else { 50 }, 0, 0];
    ip.extend_from_slice(&[192, 0, 2, 2, 192, 0, 2, 1]);
    let c = natt_engine::wire::checksum::checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    if udp {
        let ul = (8 + esp.len()) as u16;
        f.extend_from_slice(&[0x11, 0x94, 0x11, 0x94]);
        f.extend_from_slice(&ul.to_be_bytes());
        f.extend_from_slice(&[0, 0]);
    }
    f.extend_from_slice(esp);
    f
}

/// The headend's inbound transport-mode SA for `v`: its key, SPI and ESN, the window just
/// below its sequence number, in UDP/4500 or plain ESP.
pub fn inbound_sa(v: &Vector, alg: Algorithm, udp: bool) -> Vec<SaParams> {
    let cfg = json!({"sas": [{
        "spi": v.spi, "direction": "inbound", "mode": "transport", "algorithm": alg.name(),
        "key": hex::encode(&v.key), "salt": hex::encode(v.salt),
        "local": "192.0.2.1", "peer": "192.0.2.2",
        "encap": if udp { json!({"local_port": 4500, "peer_port": 4500}) } else { Value::Null },
        "esn": v.esn, "replay_window": 64,
        "last_seq": v.seq64 - 1,
    }]});
    parse_config(&cfg.to_string(), None).unwrap()
}
