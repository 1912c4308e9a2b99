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
//! same way for both sides, so the difference of medians is the engine's own cost:
//! decapsulation and the raw opens both cycle through the same pool of `POOL` bursts of
//! distinct packets (anti-replay needs rising sequence numbers), so that both pay the
//! same cache misses for refilling from it.

mod common;

use common::*;
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main};
use natt_engine::crypto::{AeadKey, Backend, Ring, nonce};
use natt_engine::event::Discard;
use natt_engine::sa::{Algorithm, Direction};
use natt_engine::{Engine, EngineConfig, Frame, InResult, InVerdict, OutResult, OutVerdict, PktBuf};
use natt_ipsec_mb::IpsecMb;
use std::hint::black_box;
use std::time::{Duration, Instant};

fn bench(c: &mut Criterion) {
    let key = Ring::key(Algorithm::Aes128Gcm, &hex::decode(&KEY[..32]).unwrap()).unwrap();
    let mb_key = IpsecMb::key(Algorithm::Aes128Gcm, &hex::decode(&KEY[..32]).unwrap()).unwrap();
    let salt = SALT;
    for size in SIZES {
        let ct = ct_range(size);
        let request = frame([10, 8, 0, 2], [10, 0, 1, 5], size);
        let reply = frame([10, 0, 1, 5], [10, 8, 0, 2], size);
        let pool = esp_pool::<Ring>(&request);
        let clear_pool = esp_pool::<NoCrypto>(&request);
        let esp_frames = &pool[..BURST];

        let mut g = c.benchmark_group(format!("aes128gcm/{size}"));
        g.throughput(Throughput::Elements(BURST as u64));

        bench_raw_seal(&mut g, "ring_seal", &key, &salt, esp_frames, ct.clone());
        bench_raw_seal(&mut g, "ipsec_mb_seal", &mb_key, &salt, esp_frames, ct.clone());

        // The decapsulation pool itself, opened with each packet's nonce and AAD worked
        // out beforehand (the engine reads them from the packet).
        let params = open_params(&pool);
        bench_raw_open(&mut g, "ring_open", &key, &params, &pool, ct.clone());
        bench_raw_open(&mut g, "ipsec_mb_open", &mb_key, &params, &pool, ct.clone());

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

/// Time `op` over each buffer of a burst refilled (untimed) from `frames`, burst after
/// burst of it (`frames.len() / BURST` bursts); `op` gets the buffer, the iteration and
/// the index of its frame in `frames`.
fn bench_raw(
    g: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    frames: &[Vec<u8>],
    mut op: impl FnMut(&mut [u8], u64, usize),
) {
    let bursts = (frames.len() / BURST).max(1);
    g.bench_function(name, |b| {
        let mut bufs = buffers();
        b.iter_custom(|iters| {
            let mut t = Duration::ZERO;
            for it in 0..iters {
                let k = it as usize % bursts;
                let burst = frames.get(k * BURST..(k + 1) * BURST).unwrap_or(frames);
                refill(&mut bufs, burst);
                let start = Instant::now();
                for (i, buf) in bufs.iter_mut().enumerate() {
                    op(buf.raw_mut(), it, k * BURST + i);
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

/// A raw AEAD open of the packets of `sealed` (ESP made with the same key), each with
/// its `params`, tag after `ct`.
fn bench_raw_open<K: AeadKey>(
    g: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    key: &K,
    params: &[OpenParams],
    sealed: &[Vec<u8>],
    ct: core::ops::Range<usize>,
) {
    bench_raw(g, name, sealed, |raw, _, j| {
        let (n, aad) = &params[j];
        let icv: [u8; 16] = raw[ct.end..ct.end + 16].try_into().unwrap();
        key.open(n, aad, &mut raw[ct.clone()], &icv).unwrap();
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
