//! The draft-mcgrew-gcm-test-01 ESP vectors (`tests/data/mcgrew-gcm-esp.json`, copied
//! from the project's shared vectors), read for the known-answer tests of both crypto
//! backends (`tests/kat.rs` here, `dataplane/ipsec-mb/tests/vectors.rs`).

use natt_engine::sa::Algorithm;
use serde_json::Value;

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
