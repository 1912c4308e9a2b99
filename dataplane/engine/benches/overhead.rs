//! What the engine adds beyond the crypto, measured in pairs: for each inner size
//! (64, 512, 1420 bytes) and each library (`ring`, intel-ipsec-mb), the AEAD alone over
//! exactly what ESP encrypts and the engine around the same AEAD, one sample of each in
//! turn (alternating which goes first), many times. A sample is `BURSTS` bursts of 32
//! packets, each burst refilled (untimed) from the same pool of distinct packets on both
//! sides (decapsulation needs rising sequence numbers). The median of the per-pair
//! differences is the engine's cost beyond the crypto; pairing cancels the drift of a
//! shared machine, which separate runs (criterion's, one benchmark after another) do
//! not. Also the engine with a do-nothing AEAD, its own work alone.
//!
//! ```sh
//! cargo bench -p natt-engine --bench overhead                      # prints the table
//! cargo bench -p natt-engine --bench overhead -- --out $PWD/FILE.json   # and keeps the samples
//! ```

mod common;

use common::*;
use natt_engine::crypto::{AeadKey, Backend, Ring, nonce};
use natt_engine::event::Discard;
use natt_engine::sa::{Algorithm, Direction};
use natt_engine::{Engine, EngineConfig, Frame, InResult, InVerdict, OutResult, OutVerdict, PktBuf};
use natt_ipsec_mb::IpsecMb;
use std::hint::black_box;
use std::time::{Duration, Instant};

/// Pairs of samples per case, and samples discarded first (warm-up); with `--test` (the
/// test command: does every case run and pass?) 3 and none.
const SAMPLES: usize = 301;
const WARMUP: usize = 10;
/// Bursts per sample (32 packets each).
const BURSTS: usize = 32;

/// The packet buffers of a burst: one set for everything measured, so that the AEAD
/// alone and the engine work on memory laid out the same way (from one allocation to
/// the next, raw `ring` opening a 64-byte packet took 106 or 132 ns).
type Bufs = [PktBuf<Vec<u8>>];

/// Something timed per burst: one sample is `BURSTS` bursts, in ns per packet.
trait Timed {
    /// Refill the buffers for the next burst (untimed), then time the operation.
    fn burst(&mut self, bufs: &mut Bufs) -> Duration;

    fn sample(&mut self, bufs: &mut Bufs) -> f64 {
        let t: Duration = (0..BURSTS).map(|_| self.burst(bufs)).sum();
        t.as_nanos() as f64 / (BURSTS * BURST) as f64
    }
}

/// The AEAD alone opening the pool's packets in place.
struct RawOpen<'a, K> {
    key: &'a K,
    params: &'a [OpenParams],
    pool: &'a [Vec<u8>],
    ct: core::ops::Range<usize>,
    k: usize,
}

impl<K: AeadKey> Timed for RawOpen<'_, K> {
    fn burst(&mut self, bufs: &mut Bufs) -> Duration {
        let first = self.k * BURST;
        refill(bufs, &self.pool[first..first + BURST]);
        self.k = (self.k + 1) % POOL;
        let ct = self.ct.clone();
        let start = Instant::now();
        for (i, b) in bufs.iter_mut().enumerate() {
            let raw = b.raw_mut();
            let (n, aad) = &self.params[first + i];
            let icv: [u8; 16] = raw[ct.end..ct.end + 16].try_into().unwrap();
            self.key.open(n, aad, &mut raw[ct.clone()], &icv).unwrap();
        }
        start.elapsed()
    }
}

/// The AEAD alone sealing packets in place, with rising sequence numbers.
struct RawSeal<'a, K> {
    key: &'a K,
    frames: &'a [Vec<u8>],
    ct: core::ops::Range<usize>,
    seq: u64,
}

impl<K: AeadKey> Timed for RawSeal<'_, K> {
    fn burst(&mut self, bufs: &mut Bufs) -> Duration {
        refill(bufs, self.frames);
        let ct = self.ct.clone();
        let start = Instant::now();
        for b in bufs.iter_mut() {
            self.seq += 1;
            let aad = [0, 0, 0x20, 0x01, 0, 0, 0, self.seq as u8];
            black_box(self.key.seal(&nonce(&SALT, &self.seq.to_be_bytes()), &aad, &mut b.raw_mut()[ct.clone()]));
        }
        start.elapsed()
    }
}

/// The engine decapsulating the pool, anti-replay on.
struct Decap<'a, B: Backend> {
    engine: Engine<B>,
    pool: &'a [Vec<u8>],
    res: Vec<InResult>,
    k: usize,
}

impl<B: Backend> Timed for Decap<'_, B> {
    fn burst(&mut self, bufs: &mut Bufs) -> Duration {
        if self.k == 0 {
            // Start the pool over on a fresh inbound SA, so that every packet passes.
            let p = self.engine.remove_sa(Direction::Inbound, 0x1001).unwrap();
            self.engine.add_sa(p).unwrap();
        }
        refill(bufs, &self.pool[self.k * BURST..(self.k + 1) * BURST]);
        self.k = (self.k + 1) % POOL;
        let start = Instant::now();
        self.engine.decap_burst(bufs, 0, &mut self.res, &mut Discard);
        let t = start.elapsed();
        assert!(self.res.iter().all(|r| r.verdict == InVerdict::Tunnel), "{:?}", self.res[0]);
        t
    }
}

/// The engine encapsulating one frame over and over.
struct Encap<'a, B: Backend> {
    engine: Engine<B>,
    frame: &'a [Vec<u8>],
    res: Vec<OutResult>,
}

impl<B: Backend> Timed for Encap<'_, B> {
    fn burst(&mut self, bufs: &mut Bufs) -> Duration {
        refill(bufs, self.frame);
        let start = Instant::now();
        self.engine.encap_burst(bufs, &mut self.res, &mut Discard);
        let t = start.elapsed();
        assert!(self.res.iter().all(|r| r.verdict == OutVerdict::Encapsulated));
        t
    }
}

fn raw_open<'a, K>(
    key: &'a K,
    params: &'a [OpenParams],
    pool: &'a [Vec<u8>],
    ct: &core::ops::Range<usize>,
) -> RawOpen<'a, K> {
    RawOpen { key, params, pool, ct: ct.clone(), k: 0 }
}

fn raw_seal<'a, K>(key: &'a K, frames: &'a [Vec<u8>], ct: &core::ops::Range<usize>) -> RawSeal<'a, K> {
    RawSeal { key, frames, ct: ct.clone(), seq: 0 }
}

fn headend<B: Backend>() -> Engine<B> {
    Engine::with_sas(EngineConfig::default(), headend_sas(4)).unwrap()
}

fn decap<B: Backend>(pool: &[Vec<u8>]) -> Decap<'_, B> {
    Decap { engine: headend(), pool, res: vec![InResult::default(); BURST], k: 0 }
}

fn encap<B: Backend>(frame: &[Vec<u8>]) -> Encap<'_, B> {
    Encap { engine: headend(), frame, res: vec![OutResult::default(); BURST] }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn quartiles(v: &mut [f64]) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 4], v[3 * v.len() / 4])
}

/// One case's samples: the AEAD alone, the engine around it, the engine with no AEAD.
struct Case {
    size: usize,
    direction: &'static str,
    library: &'static str,
    raw: Vec<f64>,
    engine: Vec<f64>,
    bare: Vec<f64>,
}

/// `SAMPLES` pairs of `raw` and `engine` samples, alternating which goes first, with a
/// sample of `bare` (the engine with no AEAD) after each pair; all in the same buffers.
fn measure(
    (warmup, samples): (usize, usize),
    raw: &mut dyn Timed,
    engine: &mut dyn Timed,
    bare: &mut dyn Timed,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let mut bufs = buffers();
    let (mut r, mut e, mut b) = (Vec::new(), Vec::new(), Vec::new());
    for s in 0..warmup + samples {
        let (x, y) = if s % 2 == 0 {
            let x = raw.sample(&mut bufs);
            (x, engine.sample(&mut bufs))
        } else {
            let y = engine.sample(&mut bufs);
            (raw.sample(&mut bufs), y)
        };
        let z = bare.sample(&mut bufs);
        if s >= warmup {
            r.push(x);
            e.push(y);
            b.push(z);
        }
    }
    (r, e, b)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let out = args.iter().position(|a| a == "--out").and_then(|i| args.get(i + 1)).cloned();
    let test = args.iter().any(|a| a == "--test");
    let runs = if test { (0, 3) } else { (WARMUP, SAMPLES) };
    let key_bytes = hex::decode(&KEY[..32]).unwrap();
    let ring_key = Ring::key(Algorithm::Aes128Gcm, &key_bytes).unwrap();
    let mb_key = IpsecMb::key(Algorithm::Aes128Gcm, &key_bytes).unwrap();
    // A second of work first: the first case's samples are not to pay for a core that
    // was idle (clock, caches, branch predictors).
    let warm_frame = vec![frame([10, 0, 1, 5], [10, 8, 0, 2], 64)];
    let (mut warm, mut bufs) = (encap::<Ring>(&warm_frame), buffers());
    let t = Instant::now();
    while !test && t.elapsed() < Duration::from_secs(1) {
        warm.sample(&mut bufs);
    }
    let mut cases = Vec::new();
    for size in SIZES {
        let ct = ct_range(size);
        let request = frame([10, 8, 0, 2], [10, 0, 1, 5], size);
        let reply = vec![frame([10, 0, 1, 5], [10, 8, 0, 2], size)];
        let pool = esp_pool::<Ring>(&request);
        let clear = esp_pool::<NoCrypto>(&request);
        let params = open_params(&pool);
        let esp_frames = &pool[..BURST];

        let (raw, engine, bare) = measure(
            runs,
            &mut raw_open(&ring_key, &params, &pool, &ct),
            &mut decap::<Ring>(&pool),
            &mut decap::<NoCrypto>(&clear),
        );
        cases.push(Case { size, direction: "decap", library: "ring", raw, engine, bare });
        let (raw, engine, bare) = measure(
            runs,
            &mut raw_open(&mb_key, &params, &pool, &ct),
            &mut decap::<IpsecMb>(&pool),
            &mut decap::<NoCrypto>(&clear),
        );
        cases.push(Case { size, direction: "decap", library: "intel-ipsec-mb", raw, engine, bare });
        let (raw, engine, bare) = measure(
            runs,
            &mut raw_seal(&ring_key, esp_frames, &ct),
            &mut encap::<Ring>(&reply),
            &mut encap::<NoCrypto>(&reply),
        );
        cases.push(Case { size, direction: "encap", library: "ring", raw, engine, bare });
        let (raw, engine, bare) = measure(
            runs,
            &mut raw_seal(&mb_key, esp_frames, &ct),
            &mut encap::<IpsecMb>(&reply),
            &mut encap::<NoCrypto>(&reply),
        );
        cases.push(Case { size, direction: "encap", library: "intel-ipsec-mb", raw, engine, bare });
    }

    println!(
        "| inner bytes | direction | library | AEAD alone | engine | engine − AEAD (median of pairs) | quartiles of the differences | engine, no AEAD |"
    );
    println!("|---:|---|---|---:|---:|---:|---|---:|");
    let mut json = Vec::new();
    for c in &mut cases {
        let mut diffs: Vec<f64> = c.engine.iter().zip(&c.raw).map(|(e, r)| e - r).collect();
        let (raw, engine, bare) =
            (median(&mut c.raw.clone()), median(&mut c.engine.clone()), median(&mut c.bare.clone()));
        let d = median(&mut diffs);
        let (q1, q3) = quartiles(&mut diffs);
        println!(
            "| {} | {} | {} | {raw:.1} ns | {engine:.1} ns | {d:+.1} ns | {q1:+.1} to {q3:+.1} | {bare:.1} ns |",
            c.size, c.direction, c.library
        );
        json.push(serde_json::json!({
            "inner_size": c.size, "direction": c.direction, "library": c.library,
            "median_ns": {"aead": raw, "engine": engine, "engine_no_aead": bare, "difference": d},
            "samples_ns": {"aead": c.raw, "engine": c.engine, "engine_no_aead": c.bare},
        }));
    }
    if let Some(path) = out {
        let doc = serde_json::json!({
            "samples": runs.1, "packets_per_sample": BURSTS * BURST, "algorithm": "aes128-gcm", "cases": json,
        });
        std::fs::write(&path, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
        println!("\nsamples written to {path}");
    }
}
