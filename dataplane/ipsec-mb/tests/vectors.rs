//! intel-ipsec-mb against published vectors and against `ring`, byte for byte.
//!
//! - The McGrew ESP vectors (draft-mcgrew-gcm-test-01; the engine's copy of the shared
//!   file): every AES-GCM and GMAC vector seals to the published ciphertext and tag and
//!   opens back; a changed tag, ciphertext or AAD does not open.
//! - Each vector's ESP packet decapsulates to the published plaintext through the
//!   engine on this backend (nonce, AAD with ESN, trailer: the engine's own code).
//! - Random keys, nonces, AADs and lengths: both libraries produce the same bytes and
//!   open each other's output.
//! - Whole packets: the engine on intel-ipsec-mb and on `ring` encapsulates the same
//!   packet to the same bytes, and each decapsulates the other's.

use natt_engine::crypto::{AeadKey, Backend, Ring, nonce};
use natt_engine::sa::Algorithm;
use natt_engine::sa::config::parse_config;
use natt_engine::{Engine, EngineConfig, Frame, InResult, InVerdict, OutResult, OutVerdict, PktBuf};
use natt_ipsec_mb::{Auto, AutoKey, Choice, IpsecMb};
use proptest::prelude::*;
use serde_json::json;

#[path = "../../engine/tests/mcgrew/mod.rs"]
mod mcgrew;

use mcgrew::{Vector, algorithm, frame, inbound_sa, vectors};

fn is_gmac(a: Algorithm) -> bool {
    matches!(a, Algorithm::Aes128Gmac | Algorithm::Aes256Gmac)
}

#[test]
fn the_library_starts_on_a_vector_code_path() {
    let lib = natt_ipsec_mb::library().unwrap();
    assert!(["sse", "avx", "avx2", "avx512"].contains(&lib.arch), "{lib:?}");
    assert!(lib.version.starts_with(char::is_numeric), "{lib:?}");
}

#[test]
fn every_aes_vector_seals_to_the_published_bytes_and_opens() {
    let mut n = 0;
    for v in vectors() {
        let Some(alg) = algorithm(&v) else { continue };
        let key = IpsecMb::key(alg, &v.key).unwrap();
        let nc = nonce(&v.salt, &v.iv);
        let mut data = if is_gmac(alg) { Vec::new() } else { v.plaintext.clone() };
        let icv = key.seal(&nc, &v.aad, &mut data);
        let mut got = data.clone();
        got.extend_from_slice(&icv);
        assert_eq!(hex::encode(&got), hex::encode(&v.ciphertext_tag), "{}: seal", v.id);
        let mut opened = data.clone();
        key.open(&nc, &v.aad, &mut opened, &icv).unwrap();
        if !is_gmac(alg) {
            assert_eq!(opened, v.plaintext, "{}: open", v.id);
        }
        let mut bad_tag = icv;
        bad_tag[0] ^= 0x80;
        assert!(key.open(&nc, &v.aad, &mut data.clone(), &bad_tag).is_err(), "{}: tag", v.id);
        let mut bad_aad = v.aad.clone();
        *bad_aad.last_mut().unwrap() ^= 1;
        assert!(key.open(&nc, &bad_aad, &mut data.clone(), &icv).is_err(), "{}: aad", v.id);
        if !data.is_empty() {
            let mut bad_ct = data.clone();
            bad_ct[0] ^= 1;
            assert!(key.open(&nc, &v.aad, &mut bad_ct, &icv).is_err(), "{}: ciphertext", v.id);
        }
        n += 1;
    }
    assert_eq!(n, 16, "every AES vector (gcm-07 is AES-192, which the configuration refuses)");
}

#[test]
fn chacha_and_wrong_lengths_are_refused() {
    let e = IpsecMb::key(Algorithm::ChaCha20Poly1305, &[0; 32]).unwrap_err();
    assert_eq!(e.to_string(), "chacha20-poly1305 is not supported by the intel-ipsec-mb crypto backend");
    let e = IpsecMb::key(Algorithm::Aes128Gcm, &[0; 32]).unwrap_err();
    assert_eq!(e.to_string(), "aes128-gcm needs a 16-byte key, got 32");
}

/// The engine on `B` over the vector's transport-mode SA, its ESP packet in UDP.
fn decap_vector<B: Backend>(v: &Vector, alg: Algorithm) -> Vec<u8> {
    let mut eng: Engine<B> = Engine::with_sas(EngineConfig::default(), inbound_sa(v, alg, true)).unwrap();
    let mut pkts = [PktBuf::from_frame(&frame(&v.esp_packet, true), 128, 64)];
    let mut res = [InResult::default()];
    eng.decap_burst(&mut pkts, 0, &mut res, &mut Vec::new());
    assert_eq!(res[0].verdict, InVerdict::Transport, "{}", v.id);
    pkts[0].data()[34..].to_vec()
}

#[test]
fn the_engine_on_this_backend_decapsulates_every_vector() {
    let mut n = 0;
    for v in vectors() {
        let Some(alg) = algorithm(&v) else { continue };
        if v.spi < 256 {
            continue; // gcm-04's SPI 0 is reserved: refused before any crypto.
        }
        let pad = usize::from(v.plaintext[v.plaintext.len() - 2]);
        let payload = &v.plaintext[..v.plaintext.len() - 2 - pad];
        assert_eq!(decap_vector::<IpsecMb>(&v, alg), payload, "{}", v.id);
        n += 1;
    }
    assert_eq!(n, 15);
}

#[test]
fn auto_uses_the_chosen_library_and_ring_for_chacha() {
    natt_ipsec_mb::select(Choice::IpsecMb).unwrap();
    assert!(matches!(Auto::key(Algorithm::Aes128Gcm, &[1; 16]).unwrap(), AutoKey::Mb(_)));
    assert!(matches!(Auto::key(Algorithm::Aes256Gmac, &[1; 32]).unwrap(), AutoKey::Mb(_)));
    let k = Auto::key(Algorithm::ChaCha20Poly1305, &[1; 32]).unwrap();
    assert_eq!(k.library(), "ring");
}

fn aes() -> impl Strategy<Value = (Algorithm, Vec<u8>)> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 16).prop_map(|k| (Algorithm::Aes128Gcm, k)),
        prop::collection::vec(any::<u8>(), 32).prop_map(|k| (Algorithm::Aes256Gcm, k)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn both_libraries_make_the_same_bytes_and_open_each_other(
        (alg, key) in aes(),
        n in any::<[u8; 12]>(),
        // ESP's AAD (8 or 12 bytes) and, for GMAC, whole packets as AAD.
        aad in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..80),
            prop::collection::vec(any::<u8>(), 1000..2000),
        ],
        data in prop::collection::vec(any::<u8>(), 0..2100),
        // Where the data starts in its buffer: mbuf data is not aligned.
        at in 0usize..16,
        flip in any::<prop::sample::Index>(),
    ) {
        let mb = IpsecMb::key(alg, &key).unwrap();
        let rg = Ring::key(alg, &key).unwrap();
        let mut buf = vec![0u8; at + data.len()];
        buf[at..].copy_from_slice(&data);
        let ta = mb.seal(&n, &aad, &mut buf[at..]);
        let a = buf[at..].to_vec();
        let mut b = data.clone();
        let tb = rg.seal(&n, &aad, &mut b);
        prop_assert_eq!(&a, &b);
        prop_assert_eq!(ta, tb);
        let mut x = a.clone();
        prop_assert!(rg.open(&n, &aad, &mut x, &ta).is_ok());
        prop_assert_eq!(&x, &data);
        let mut y = b.clone();
        prop_assert!(mb.open(&n, &aad, &mut y, &tb).is_ok());
        prop_assert_eq!(&y, &data);
        // One bit changed anywhere in ciphertext or tag: neither opens it.
        let mut ct = a.clone();
        let mut tag = ta;
        let i = flip.index(ct.len() + 16);
        if i < ct.len() { ct[i] ^= 0x01 } else { tag[i - ct.len()] ^= 0x01 }
        prop_assert!(mb.open(&n, &aad, &mut ct.clone(), &tag).is_err());
        prop_assert!(rg.open(&n, &aad, &mut ct, &tag).is_err());
    }
}

/// With ESN, just below 2^32, so that a burst crosses into the high half.
fn last_seq(esn: bool) -> u64 {
    if esn { 0xffff_fff0 } else { 1000 }
}

fn tunnel_sas(alg: &str, key: &str, esn: bool) -> Vec<natt_engine::SaParams> {
    let cfg = json!({"sas": [
        {"spi": 0x2001, "direction": "outbound", "mode": "tunnel", "algorithm": alg, "key": key,
         "local": "203.0.113.1", "peer": "198.51.100.7", "encap": {"local_port": 4500, "peer_port": 4500},
         "esn": esn, "last_seq": last_seq(esn),
         "selectors": {"local": ["10.0.0.0/16"], "peer": ["10.8.0.2/32"]}},
    ]});
    parse_config(&cfg.to_string(), None).unwrap()
}

fn mirror_sas(alg: &str, key: &str, esn: bool) -> Vec<natt_engine::SaParams> {
    let cfg = json!({"sas": [
        {"spi": 0x2001, "direction": "inbound", "mode": "tunnel", "algorithm": alg, "key": key,
         "local": "198.51.100.7", "peer": "203.0.113.1", "encap": {"local_port": 4500, "peer_port": 4500},
         "esn": esn, "replay_window": 1024, "last_seq": last_seq(esn),
         "selectors": {"local": ["10.8.0.2/32"], "peer": ["10.0.0.0/16"]}},
    ]});
    parse_config(&cfg.to_string(), None).unwrap()
}

/// A plaintext frame from 10.0.1.5 to the client, `len` bytes of IPv4/UDP.
fn plain(len: usize, fill: u8) -> Vec<u8> {
    let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 8, 0];
    let mut ip = vec![0x45, 0, (len >> 8) as u8, len as u8, 0, 7, 0x40, 0, 64, 17, 0, 0, 10, 0, 1, 5, 10, 8, 0, 2];
    let c = natt_engine::wire::checksum::checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    ip.extend_from_slice(&[0x13, 0x88, 0x0f, 0xa0]);
    ip.extend_from_slice(&((len - 20) as u16).to_be_bytes());
    ip.extend_from_slice(&[0, 0]);
    ip.resize(len, fill);
    f.extend_from_slice(&ip);
    f
}

fn encap<B: Backend>(eng: &mut Engine<B>, frames: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut pkts: Vec<_> = frames.iter().map(|f| PktBuf::from_frame(f, 128, 64)).collect();
    let mut res = vec![OutResult::default(); pkts.len()];
    eng.encap_burst(&mut pkts, &mut res, &mut Vec::new());
    assert!(
        res.iter().all(|r| r.verdict == OutVerdict::Encapsulated),
        "{:?}",
        res.iter().map(|r| r.verdict).collect::<Vec<_>>()
    );
    pkts.iter().map(|p| p.data().to_vec()).collect()
}

fn decap<B: Backend>(eng: &mut Engine<B>, frames: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut pkts: Vec<_> = frames.iter().map(|f| PktBuf::from_frame(f, 128, 64)).collect();
    let mut res = vec![InResult::default(); pkts.len()];
    eng.decap_burst(&mut pkts, 0, &mut res, &mut Vec::new());
    assert!(
        res.iter().all(|r| r.verdict == InVerdict::Tunnel),
        "{:?}",
        res.iter().map(|r| r.verdict).collect::<Vec<_>>()
    );
    pkts.iter().map(|p| p.data()[14..].to_vec()).collect()
}

#[test]
fn whole_packets_are_the_same_bytes_on_both_libraries() {
    for (alg, key) in [
        ("aes128-gcm", "000102030405060708090a0b0c0d0e0f10111213"),
        ("aes256-gcm", "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20212223"),
    ] {
        // With ESN the burst crosses 2^32 (the high half enters the AAD).
        for esn in [false, true] {
            let frames: Vec<Vec<u8>> = (0..40).map(|i| plain(28 + i * 35, i as u8)).collect();
            let mut mb: Engine<IpsecMb> = Engine::with_sas(EngineConfig::default(), tunnel_sas(alg, key, esn)).unwrap();
            let mut rg: Engine<Ring> = Engine::with_sas(EngineConfig::default(), tunnel_sas(alg, key, esn)).unwrap();
            let (a, b) = (encap(&mut mb, &frames), encap(&mut rg, &frames));
            assert_eq!(a, b, "{alg} esn={esn}: the same ESP bytes");
            let mut mb_in: Engine<IpsecMb> =
                Engine::with_sas(EngineConfig::default(), mirror_sas(alg, key, esn)).unwrap();
            let mut rg_in: Engine<Ring> = Engine::with_sas(EngineConfig::default(), mirror_sas(alg, key, esn)).unwrap();
            let inner: Vec<Vec<u8>> = frames.iter().map(|f| f[14..].to_vec()).collect();
            // TTL goes down by one on the way in; compare all but TTL and checksum.
            let strip = |v: Vec<Vec<u8>>| -> Vec<Vec<u8>> {
                v.into_iter()
                    .map(|mut p| {
                        p[8] = 0;
                        p[10] = 0;
                        p[11] = 0;
                        p
                    })
                    .collect()
            };
            assert_eq!(strip(decap(&mut mb_in, &b)), strip(inner.clone()), "{alg} esn={esn}: ring's ESP opened here");
            assert_eq!(strip(decap(&mut rg_in, &a)), strip(inner), "{alg} esn={esn}: ours opened by ring");
        }
    }
}
