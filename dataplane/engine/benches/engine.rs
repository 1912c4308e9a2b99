//! Engine cost per packet next to raw `ring` on the same payload, in one run.
//!
//! For each inner packet size (64, 512, 1420 bytes), AES-128-GCM, bursts of 32:
//! - `ring_seal` / `ring_open`: `ring` alone over exactly the bytes ESP encrypts
//!   (inner packet, padding, trailer) with the 8-byte AAD, in the same buffers;
//!   `ipsec_mb_seal` / `ipsec_mb_open`: the same with intel-ipsec-mb (`natt-ipsec-mb`);
//! - `encap` / `decap`: the engine over Ethernet frames, everything included (parse,
//!   SA lookup, anti-replay on with rising sequence numbers, crypto, trailer, headers,
//!   counters);
//! - `encap_ipsec_mb` / `decap_ipsec_mb`: the engine on intel-ipsec-mb;
//! - `encap_pad16`: encapsulation with `"pad_to": 16`, so ring never sees a partial block;
//! - `decap_engine_only` / `encap_engine_only`: the engine with a backend whose AEAD does
//!   nothing, i.e. the engine's own work alone.
//!
//! Each burst's buffers are refilled outside the timed section (`iter_custom`), the
//! same way for both sides, so the difference of medians is the engine's own cost.

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main};
use natt_engine::crypto::{AeadKey, AuthFailed, Backend, Icv, KeyError, Nonce, Ring, nonce};
use natt_engine::event::Discard;
use natt_engine::sa::config::parse_config;
use natt_engine::sa::{Algorithm, Direction};
use natt_engine::{Engine, EngineConfig, Frame, InResult, InVerdict, OutResult, OutVerdict, PktBuf};
use natt_ipsec_mb::IpsecMb;
use std::hint::black_box;
use std::time::{Duration, Instant};

const BURST: usize = 32;
const SIZES: [usize; 3] = [64, 512, 1420];
/// Inbound (client to headend) and outbound keys: every SA needs its own.
const KEY: &str = "000102030405060708090a0b0c0d0e0f10111213";
const OUT_KEY: &str = "f0e0d0c0b0a090807060504030201000a0b0c0d0";
const HEADROOM: usize = 128;
const BUF: usize = 2048 + HEADROOM;
/// Bursts of distinct ESP packets prepared for `decap`.
const POOL: usize = 512;

/// A backend whose AEAD does nothing: what remains is the engine's own cost.
struct NoCrypto;
struct NoKey;

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
struct End {
    local: &'static str,
    peer: &'static str,
    local_sel: &'static str,
    peer_sel: &'static str,
}

const HEADEND: End =
    End { local: "203.0.113.1", peer: "198.51.100.7", local_sel: "10.0.0.0/16", peer_sel: "10.8.0.2/32" };
const CLIENT: End =
    End { local: "198.51.100.7", peer: "203.0.113.1", local_sel: "10.8.0.2/32", peer_sel: "10.0.0.0/16" };

fn sa(end: &End, spi: u32, dir: &str, pad_to: u8) -> String {
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

fn headend_sas(pad_to: u8) -> Vec<natt_engine::SaParams> {
    let cfg =
        format!(r#"{{"sas": [{}, {}]}}"#, sa(&HEADEND, 0x1001, "inbound", 4), sa(&HEADEND, 0x2001, "outbound", pad_to));
    parse_config(&cfg, None).unwrap()
}

fn client<B: Backend>() -> Engine<B> {
    let cfg = format!(r#"{{"sas": [{}]}}"#, sa(&CLIENT, 0x1001, "outbound", 4));
    Engine::with_sas(EngineConfig::default(), parse_config(&cfg, None).unwrap()).unwrap()
}

/// `POOL` bursts of distinct ESP packets with rising sequence numbers from a client.
fn esp_pool<B: Backend>(request: &[u8]) -> Vec<Vec<u8>> {
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
fn frame(src: [u8; 4], dst: [u8; 4], inner: usize) -> Vec<u8> {
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
fn buffers() -> Vec<PktBuf<Vec<u8>>> {
    (0..BURST).map(|_| PktBuf::new(vec![0u8; BUF], HEADROOM, 0).unwrap()).collect()
}

fn refill(bufs: &mut [PktBuf<Vec<u8>>], frames: &[Vec<u8>]) {
    for (b, f) in bufs.iter_mut().zip(frames.iter().cycle()) {
        b.raw_mut()[HEADROOM..HEADROOM + f.len()].copy_from_slice(f);
        b.set_range(HEADROOM, f.len());
    }
}

fn bench(c: &mut Criterion) {
    let key = Ring::key(Algorithm::Aes128Gcm, &hex::decode(&KEY[..32]).unwrap()).unwrap();
    let mb_key = IpsecMb::key(Algorithm::Aes128Gcm, &hex::decode(&KEY[..32]).unwrap()).unwrap();
    let salt = [0x10, 0x11, 0x12, 0x13];
    for size in SIZES {
        // Where ESP's encrypted part sits in an encapsulated frame: after Ethernet,
        // IPv4, UDP, ESP header and IV.
        let ct_off = HEADROOM + 14 + 20 + 8 + 16;
        let ct_len = size + natt_engine::wire::esp::pad_len_for(size) + 2;
        let request = frame([10, 8, 0, 2], [10, 0, 1, 5], size);
        let reply = frame([10, 0, 1, 5], [10, 8, 0, 2], size);
        let pool = esp_pool::<Ring>(&request);
        let clear_pool = esp_pool::<NoCrypto>(&request);
        let esp_frames = &pool[..BURST];

        let mut g = c.benchmark_group(format!("aes128gcm/{size}"));
        g.throughput(Throughput::Elements(BURST as u64));

        bench_raw_seal(&mut g, "ring_seal", &key, &salt, esp_frames, ct_off..ct_off + ct_len);
        bench_raw_seal(&mut g, "ipsec_mb_seal", &mb_key, &salt, esp_frames, ct_off..ct_off + ct_len);

        // Packets sealed by ring itself, to be opened by ring.
        let ring_sealed: Vec<Vec<u8>> = esp_frames
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let mut f = f.clone();
                let o = ct_off - HEADROOM;
                let aad = [0, 0, 0x20, 0x01, 0, 0, 0, i as u8];
                let icv = key.seal(&nonce(&salt, &(i as u64).to_be_bytes()), &aad, &mut f[o..o + ct_len]);
                f[o + ct_len..o + ct_len + 16].copy_from_slice(&icv);
                f
            })
            .collect();
        bench_raw_open(&mut g, "ring_open", &key, &salt, &ring_sealed, ct_off..ct_off + ct_len);
        bench_raw_open(&mut g, "ipsec_mb_open", &mb_key, &salt, &ring_sealed, ct_off..ct_off + ct_len);

        let mut headend: Engine = Engine::with_sas(EngineConfig::default(), headend_sas(4)).unwrap();
        bench_encap(&mut g, "encap", &mut headend, &reply);
        bench_decap(&mut g, "decap", &mut headend, &pool);
        let mut mb: Engine<IpsecMb> = Engine::with_sas(EngineConfig::default(), headend_sas(4)).unwrap();
        bench_encap(&mut g, "encap_ipsec_mb", &mut mb, &reply);
        bench_decap(&mut g, "decap_ipsec_mb", &mut mb, &pool);
        let mut padded: Engine = Engine::with_sas(EngineConfig::default(), headend_sas(16)).unwrap();
        bench_encap(&mut g, "encap_pad16", &mut padded, &reply);
        let mut bare: Engine<NoCrypto> = Engine::with_sas(EngineConfig::default(), headend_sas(4)).unwrap();
        bench_encap(&mut g, "encap_engine_only", &mut bare, &reply);
        bench_decap(&mut g, "decap_engine_only", &mut bare, &clear_pool);
        g.finish();
    }
}

/// Time `op` over each buffer of a burst refilled from `frames` (untimed); `op` gets the
/// buffer, the iteration and the index in the burst.
fn bench_raw(
    g: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    frames: &[Vec<u8>],
    mut op: impl FnMut(&mut [u8], u64, usize),
) {
    g.bench_function(name, |b| {
        let mut bufs = buffers();
        b.iter_custom(|iters| {
            let mut t = Duration::ZERO;
            for it in 0..iters {
                refill(&mut bufs, frames);
                let start = Instant::now();
                for (i, buf) in bufs.iter_mut().enumerate() {
                    op(buf.raw_mut(), it, i);
                }
                t += start.elapsed();
            }
            t
        })
    });
}

/// A raw AEAD seal of exactly what ESP encrypts, in the same buffers as the engine.
fn bench_raw_seal<K: AeadKey>(
    g: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    key: &K,
    salt: &[u8; 4],
    frames: &[Vec<u8>],
    ct: core::ops::Range<usize>,
) {
    bench_raw(g, name, frames, |raw, it, i| {
        let seq = it * BURST as u64 + i as u64;
        let aad = [0, 0, 0x20, 0x01, 0, 0, 0, seq as u8];
        black_box(key.seal(&nonce(salt, &seq.to_be_bytes()), &aad, &mut raw[ct.clone()]));
    });
}

/// A raw AEAD open of `sealed` (made by ring with the same key), tag after `ct`.
fn bench_raw_open<K: AeadKey>(
    g: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    key: &K,
    salt: &[u8; 4],
    sealed: &[Vec<u8>],
    ct: core::ops::Range<usize>,
) {
    bench_raw(g, name, sealed, |raw, _, i| {
        let aad = [0, 0, 0x20, 0x01, 0, 0, 0, i as u8];
        let icv: [u8; 16] = raw[ct.end..ct.end + 16].try_into().unwrap();
        key.open(&nonce(salt, &(i as u64).to_be_bytes()), &aad, &mut raw[ct.clone()], &icv).unwrap();
    });
}

/// Time `encap_burst` over bursts of `frame`.
fn bench_encap<B: Backend>(g: &mut BenchmarkGroup<'_, WallTime>, name: &str, engine: &mut Engine<B>, frame: &[u8]) {
    let frame = frame.to_vec();
    g.bench_function(name, |b| {
        let mut bufs = buffers();
        let mut res = vec![OutResult::default(); BURST];
        b.iter_custom(|iters| {
            let mut t = Duration::ZERO;
            for _ in 0..iters {
                refill(&mut bufs, std::slice::from_ref(&frame));
                let start = Instant::now();
                timed_encap(engine, &mut bufs, &mut res);
                t += start.elapsed();
            }
            assert!(res.iter().all(|r| r.verdict == OutVerdict::Encapsulated));
            t
        })
    });
}

/// Time `decap_burst` over the bursts of `pool` (rising sequence numbers), anti-replay on.
fn bench_decap<B: Backend>(g: &mut BenchmarkGroup<'_, WallTime>, name: &str, engine: &mut Engine<B>, pool: &[Vec<u8>]) {
    g.bench_function(name, |b| {
        let mut bufs = buffers();
        let mut res = vec![InResult::default(); BURST];
        b.iter_custom(|iters| {
            let mut t = Duration::ZERO;
            for it in 0..iters as usize {
                let k = it % POOL;
                if k == 0 {
                    // Start the pool over on a fresh inbound SA (untimed), so anti-replay
                    // stays on and every packet passes.
                    let p = engine.remove_sa(Direction::Inbound, 0x1001).unwrap();
                    engine.add_sa(p).unwrap();
                }
                refill(&mut bufs, &pool[k * BURST..(k + 1) * BURST]);
                let start = Instant::now();
                timed_decap(engine, &mut bufs, &mut res);
                t += start.elapsed();
            }
            assert!(res.iter().all(|r| r.verdict == InVerdict::Tunnel), "{:?}", res[0]);
            t
        })
    });
}

/// The timed calls, kept out of line so that an instruction profiler can single them out
/// (`valgrind --tool=callgrind --toggle-collect='engine::timed_*'`).
#[inline(never)]
fn timed_encap<B: Backend>(engine: &mut Engine<B>, bufs: &mut [PktBuf<Vec<u8>>], res: &mut [OutResult]) {
    engine.encap_burst(bufs, res, &mut Discard);
}

#[inline(never)]
fn timed_decap<B: Backend>(engine: &mut Engine<B>, bufs: &mut [PktBuf<Vec<u8>>], res: &mut [InResult]) {
    engine.decap_burst(bufs, 0, res, &mut Discard);
}

criterion_group!(benches, bench);
criterion_main!(benches);
