//! natt-ringbench: how many AES-128-GCM seals and opens per second one core does with raw
//! `ring` and with raw intel-ipsec-mb (`ipsec_mb_*`, through `natt-ipsec-mb`), for the ESP payload lengths the dataplane handles at each inner packet size:
//! the inner packet plus the ESP trailer padded to 4 bytes (what peers send) or to
//! `--pad-to` (what our encapsulation sends), with an 8-byte AAD (SPI, sequence number)
//! and the 16-byte tag. One JSON object per size on stdout; medians of `--runs` runs.
//!
//!     natt-ringbench [--sizes 64,512,1420] [--pad-to 16] [--seconds 0.5] [--runs 5]

use natt_engine::crypto::{AeadKey, Backend};
use natt_engine::sa::Algorithm;
use natt_ipsec_mb::IpsecMb;
use ring::aead::{AES_128_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use std::time::{Duration, Instant};

fn padded(inner: usize, align: usize) -> usize {
    let with_trailer = inner + 2;
    with_trailer.div_ceil(align) * align
}

fn rate(seconds: f64, mut f: impl FnMut(u64)) -> f64 {
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let mut n = 0u64;
    while Instant::now() < end {
        for _ in 0..256 {
            f(n);
            n += 1;
        }
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let mut sizes = vec![64usize, 512, 1420];
    let mut pad_to = 16usize;
    let mut seconds = 0.5f64;
    let mut runs = 5usize;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let v = args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--sizes" => sizes = v.split(',').filter_map(|s| s.trim().parse().ok()).collect(),
            "--pad-to" => pad_to = v.parse().unwrap_or(16),
            "--seconds" => seconds = v.parse().unwrap_or(0.5),
            "--runs" => runs = v.parse().unwrap_or(5),
            other => {
                eprintln!(
                    "natt-ringbench: unknown option {other}; see the comment at the top of perf/ringbench/src/main.rs"
                );
                std::process::exit(2);
            }
        }
        i += 2;
    }
    let key = LessSafeKey::new(UnboundKey::new(&AES_128_GCM, &[0x42; 16]).expect("key"));
    for size in sizes {
        let seal_len = padded(size, pad_to);
        let open_len = padded(size, 4);
        let mut buf = vec![0x5au8; seal_len.max(open_len) + 16];
        let nonce = |n: u64| {
            let mut b = [0u8; 12];
            b[4..].copy_from_slice(&n.to_be_bytes());
            Nonce::assume_unique_for_key(b)
        };
        let seal: Vec<f64> = (0..runs)
            .map(|_| {
                rate(seconds, |n| {
                    let aad = [0u8, 0, 0x10, 1, (n >> 24) as u8, (n >> 16) as u8, (n >> 8) as u8, n as u8];
                    let tag =
                        key.seal_in_place_separate_tag(nonce(n), Aad::from(aad), &mut buf[..seal_len]).expect("seal");
                    let _ = std::hint::black_box(tag);
                })
            })
            .collect();
        // Something that opens: one sealed message, opened again and again.
        let aad = [0u8, 0, 0x10, 1, 0, 0, 0, 1];
        let mut msg = vec![0x5au8; open_len];
        let tag = key.seal_in_place_separate_tag(nonce(1), Aad::from(aad), &mut msg).expect("seal");
        msg.extend_from_slice(tag.as_ref());
        let mut work = msg.clone();
        let open: Vec<f64> = (0..runs)
            .map(|_| {
                rate(seconds, |_| {
                    work.copy_from_slice(&msg);
                    let p = key.open_in_place(nonce(1), Aad::from(aad), &mut work).expect("open");
                    std::hint::black_box(p);
                })
            })
            .collect();
        // The same with intel-ipsec-mb, on the same buffers.
        let mb = IpsecMb::key(Algorithm::Aes128Gcm, &[0x42; 16]).expect("intel-ipsec-mb key");
        let raw_nonce = |n: u64| {
            let mut b = [0u8; 12];
            b[4..].copy_from_slice(&n.to_be_bytes());
            b
        };
        let mb_seal: Vec<f64> = (0..runs)
            .map(|_| {
                rate(seconds, |n| {
                    let aad = [0u8, 0, 0x10, 1, (n >> 24) as u8, (n >> 16) as u8, (n >> 8) as u8, n as u8];
                    std::hint::black_box(mb.seal(&raw_nonce(n), &aad, &mut buf[..seal_len]));
                })
            })
            .collect();
        let icv: [u8; 16] = msg[open_len..].try_into().expect("tag");
        let mb_open: Vec<f64> = (0..runs)
            .map(|_| {
                rate(seconds, |_| {
                    work.copy_from_slice(&msg);
                    mb.open(&raw_nonce(1), &aad, &mut work[..open_len], &icv).expect("open");
                })
            })
            .collect();
        let v = serde_json::json!({
            "inner_size": size,
            "seal_bytes": seal_len, "pad_to": pad_to, "seal_mpps": median(seal) / 1e6,
            "open_bytes": open_len, "open_mpps": median(open) / 1e6,
            "ipsec_mb_seal_mpps": median(mb_seal) / 1e6, "ipsec_mb_open_mpps": median(mb_open) / 1e6,
        });
        println!("{v}");
    }
}
