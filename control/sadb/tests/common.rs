//! Shared by the SA database tests: SA parameters and temporary segment directories.
#![allow(dead_code)]

use natt_engine::sa::SaParams;
use natt_engine::sa::config::parse_sa;
use serde_json::json;
use std::path::PathBuf;

pub struct TmpDir(pub PathBuf);

impl TmpDir {
    pub fn new(tag: &str) -> TmpDir {
        let d = std::env::temp_dir().join(format!("natt-sadb-{}-{tag}-{}", std::process::id(), rand_u32()));
        std::fs::create_dir_all(&d).unwrap();
        TmpDir(d)
    }
}

impl Drop for TmpDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::Instant::now()) as u32
}

/// The key of SA `spi` at version `v`: tests can tell versions apart by the key.
pub fn key_of(spi: u32, v: u32) -> String {
    let b = spi.to_be_bytes();
    (0..20u32)
        .map(|i| format!("{:02x}", b[(i % 4) as usize] ^ (v.wrapping_mul(7) ^ i.wrapping_mul(53)) as u8))
        .collect()
}

/// An inbound SA for client `n` (inner 10.x.y.z/32), version `v`.
pub fn inbound(n: u32, v: u32) -> SaParams {
    let spi = 0x0010_0000 + n;
    parse_sa(&json!({
        "name": format!("in-{n}-v{v}"), "spi": spi, "direction": "inbound", "algorithm": "aes128-gcm",
        "key": key_of(spi, v), "local": "203.0.113.1", "peer": "198.51.100.7",
        "encap": {"local_port": 4500, "peer_port": 4500}, "replay_window": 128,
        "selectors": {"local": ["10.0.0.0/8"], "peer": [format!("{}/32", client_addr(n))]}
    }))
    .unwrap()
}

/// The outbound SA of client `n`, version `v` (SPI changes with the version, as a rekey).
pub fn outbound(n: u32, v: u32) -> SaParams {
    let spi = 0x0100_0000 + n * 16 + (v % 16);
    parse_sa(&json!({
        "name": format!("out-{n}-v{v}"), "spi": spi, "direction": "outbound", "algorithm": "aes128-gcm",
        "key": key_of(spi, v), "local": "203.0.113.1", "peer": "198.51.100.7",
        "encap": {"local_port": 4500, "peer_port": 4500},
        "selectors": {"local": ["10.0.0.0/8"], "peer": [format!("{}/32", client_addr(n))]}
    }))
    .unwrap()
}

pub fn client_addr(n: u32) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::from(0x0b00_0000 + n)
}

/// Does the name of `p` say it is version `v` of client `n`?
pub fn is_version(p: &SaParams, n: u32, v: u32) -> bool {
    let mut keymat = p.key.expose().to_vec();
    keymat.extend_from_slice(&p.salt);
    p.name.ends_with(&format!("-{n}-v{v}")) && keymat == hex::decode(key_of(p.spi, v)).unwrap()
}
