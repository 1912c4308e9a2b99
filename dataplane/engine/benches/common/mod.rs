//! What both engine benchmarks build: the SAs of a headend and its client, frames, ESP
//! pools with rising sequence numbers, packet buffers, and a do-nothing AEAD backend.
#![allow(dead_code)]

use natt_engine::crypto::{AeadKey, AuthFailed, Backend, Icv, KeyError, Nonce, nonce};
use natt_engine::event::Discard;
use natt_engine::sa::Algorithm;
use natt_engine::sa::config::parse_config;
use natt_engine::{Engine, EngineConfig, Frame, OutResult, PktBuf};
use std::hint::black_box;

pub const BURST: usize = 32;
pub const SIZES: [usize; 3] = [64, 512, 1420];
/// Inbound (client to headend) and outbound keys: every SA needs its own.
pub const KEY: &str = "000102030405060708090a0b0c0d0e0f10111213";
pub const OUT_KEY: &str = "f0e0d0c0b0a090807060504030201000a0b0c0d0";
pub const HEADROOM: usize = 128;
pub const BUF: usize = 2048 + HEADROOM;
/// Bursts of distinct ESP packets prepared for `decap`.
pub const POOL: usize = 512;
/// The salt of `KEY` (its last 4 bytes).
pub const SALT: [u8; 4] = [0x10, 0x11, 0x12, 0x13];

/// A backend whose AEAD does nothing: what remains is the engine's own cost.
pub struct NoCrypto;
pub struct NoKey;

impl AeadKey for NoKey {
    fn seal(&self, _: &Nonce, _: &[u8], data: &mut [u8]) -> Icv {
        black_box(data);
        [0; 16]
    }
    fn open(&self, _: &Nonce, _: &[u8], data: &mut [u8], _: &Icv) -> Result<(), AuthFailed> {
        black_box(data);
        Ok(())
    }
}

impl Backend for NoCrypto {
    type Key = NoKey;
    const NAME: &'static str = "none";
    fn key(_: Algorithm, _: &[u8]) -> Result<NoKey, KeyError> {
        Ok(NoKey)
    }
}

/// Outer addresses and selectors of one end of the tunnel.
pub struct End {
    pub local: &'static str,
    pub peer: &'static str,
    pub local_sel: &'static str,
    pub peer_sel: &'static str,
}

pub const HEADEND: End =
    End { local: "203.0.113.1", peer: "198.51.100.7", local_sel: "10.0.0.0/16", peer_sel: "10.8.0.2/32" };
pub const CLIENT: End =
    End { local: "198.51.100.7", peer: "203.0.113.1", local_sel: "10.8.0.2/32", peer_sel: "10.0.0.0/16" };

pub fn sa(end: &End, spi: u32, dir: &str, pad_to: u8) -> String {
    let extra =
        if dir == "inbound" { r#", "replay_window": 1024"#.to_owned() } else { format!(r#", "pad_to": {pad_to}"#) };
    // The client's outbound SA is the headend's inbound one: same key.
    let key = if spi == 0x1001 { KEY } else { OUT_KEY };
    format!(
        r#"{{"spi": {spi}, "direction": "{dir}", "algorithm": "aes128-gcm", "key": "{key}",
            "local": "{}", "peer": "{}", "encap": {{"local_port": 4500, "peer_port": 4500}},
            "selectors": {{"local": ["{}"], "peer": ["{}"]}} {extra}}}"#,
        end.local, end.peer, end.local_sel, end.peer_sel
    )
}

pub fn headend_sas(pad_to: u8) -> Vec<natt_engine::SaParams> {
    let cfg =
        format!(r#"{{"sas": [{}, {}]}}"#, sa(&HEADEND, 0x1001, "inbound", 4), sa(&HEADEND, 0x2001, "outbound", pad_to));
    parse_config(&cfg, None).unwrap()
}

pub fn client<B: Backend>() -> Engine<B> {
    let cfg = format!(r#"{{"sas": [{}]}}"#, sa(&CLIENT, 0x1001, "outbound", 4));
    Engine::with_sas(EngineConfig::default(), parse_config(&cfg, None).unwrap()).unwrap()
}

/// `POOL` bursts of distinct ESP packets with rising sequence numbers from a client.
pub fn esp_pool<B: Backend>(request: &[u8]) -> Vec<Vec<u8>> {
    let mut cl: Engine<B> = client();
    let mut pool = Vec::with_capacity(POOL * BURST);
    let mut bufs = buffers();
    let mut out = vec![OutResult::default(); BURST];
    for _ in 0..POOL {
        refill(&mut bufs, std::slice::from_ref(&request.to_vec()));
        cl.encap_burst(&mut bufs, &mut out, &mut Discard);
        pool.extend(bufs.iter().map(|b| b.data().to_vec()));
    }
    pool
}

/// An Ethernet + IPv4 + UDP frame whose IP packet is `inner` bytes long.
pub fn frame(src: [u8; 4], dst: [u8; 4], inner: usize) -> Vec<u8> {
    let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 8, 0];
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&(inner as u16).to_be_bytes());
    ip.extend_from_slice(&[0, 1, 0x40, 0, 64, 17, 0, 0]);
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&dst);
    let c = natt_engine::wire::checksum::checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    ip.extend_from_slice(&[0x13, 0x88, 0x00, 0x35]);
    ip.extend_from_slice(&((inner - 20) as u16).to_be_bytes());
    ip.extend_from_slice(&[0, 0]);
    ip.resize(inner, 0x5a);
    f.extend_from_slice(&ip);
    f
}

/// 32 packet buffers, reused for every burst.
pub fn buffers() -> Vec<PktBuf<Vec<u8>>> {
    (0..BURST).map(|_| PktBuf::new(vec![0u8; BUF], HEADROOM, 0).unwrap()).collect()
}

pub fn refill(bufs: &mut [PktBuf<Vec<u8>>], frames: &[Vec<u8>]) {
    for (b, f) in bufs.iter_mut().zip(frames.iter().cycle()) {
        b.raw_mut()[HEADROOM..HEADROOM + f.len()].copy_from_slice(f);
        b.set_range(HEADROOM, f.len());
    }
}

/// Where ESP's encrypted part sits in an encapsulated frame of `size` inner bytes (from
/// the buffer's start): after the headroom, Ethernet, IPv4, UDP, ESP header and IV.
pub fn ct_range(size: usize) -> core::ops::Range<usize> {
    let ct_off = HEADROOM + 14 + 20 + 8 + 16;
    ct_off..ct_off + size + natt_engine::wire::esp::pad_len_for(size) + 2
}

/// A nonce and the 8-byte AAD (SPI, sequence number) of one packet.
pub type OpenParams = (Nonce, [u8; 8]);

/// The nonce and AAD of each packet of `pool` (ESP from `client`, SPI 0x1001), worked out
/// beforehand: what a raw open of the pool needs, which the engine reads from the packet.
pub fn open_params(pool: &[Vec<u8>]) -> Vec<OpenParams> {
    let esp_at = 14 + 20 + 8;
    pool.iter()
        .map(|f| {
            let (seq, iv) = (&f[esp_at + 4..esp_at + 8], &f[esp_at + 8..esp_at + 16]);
            let mut aad = [0, 0, 0x10, 0x01, 0, 0, 0, 0];
            aad[4..].copy_from_slice(seq);
            (nonce(&SALT, iv.try_into().unwrap()), aad)
        })
        .collect()
}
