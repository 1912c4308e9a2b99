//! Fuzz the engine's packet paths. The input is a list of records
//! `[op][len_hi][len_lo][len bytes]`:
//! - op % 4 == 0: a raw frame, decapsulated;
//! - op % 4 == 1: `[sa][seq: 4][udp?][body…]`: the harness seals `body` (payload,
//!   padding, trailer, all fuzzed) under a real SA key, so everything after the ICV
//!   check is reached;
//! - op % 4 == 2: a raw frame, encapsulated;
//! - op % 4 == 3: `[flags+offset: 2][ident: 2][data…]`: an IPv4 fragment for reassembly.
//! Time advances by `op >> 2` milliseconds per record. After each record the packet
//! accounting must balance.
//!
//! Every record goes through two engines with the same SAs: one on `ring`, one on
//! intel-ipsec-mb (`natt_ipsec_mb::Auto` with the library selected: AES-GCM and GMAC
//! through its C code, ChaCha20-Poly1305 through `ring`), so that hostile lengths reach
//! the library through our shim too. Their verdicts, events, counters and every packet
//! they deliver must be the same, byte for byte. (On a machine where the library cannot
//! start, both engines are `ring`.)
#![no_main]

use libfuzzer_sys::fuzz_target;
use natt_engine::crypto::{AeadKey, Backend, Ring, nonce};
use natt_engine::reassembly::ReassemblyConfig;
use natt_engine::sa::config::parse_config;
use natt_engine::wire::checksum::checksum;
use natt_engine::{
    Engine, EngineConfig, Frame, InResult, InVerdict, OutResult, OutVerdict, PktBuf, RxChecksum, SaParams,
};
use natt_ipsec_mb::{Auto, Choice};

// Every SA has its own key: the configuration refuses two SAs with one key and salt.
const CONFIG: &str = r#"{"sas": [
 {"name": "t-in", "spi": "0x1001", "direction": "inbound", "algorithm": "aes128-gcm", "key": "a00102030405060708090a0b0c0d0e0f10111213",
  "local": "203.0.113.1", "peer": "198.51.100.7", "encap": {"local_port": 4500, "peer_port": 4500}, "replay_window": 64,
  "selectors": {"local": ["10.0.0.0/16", "fd00:10::/64"], "peer": ["10.8.0.2/32", "fd00:8::2/128"]}, "paired_spi": "0x2001",
  "lifetime": {"soft_packets": 3, "hard_packets": 1000}},
 {"name": "x-in", "spi": "0x1002", "direction": "inbound", "mode": "transport", "algorithm": "chacha20-poly1305",
  "key": "b00102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20212223", "esn": true, "replay_window": 0,
  "local": "203.0.113.1", "peer": "198.51.100.8", "encap": null},
 {"name": "g-in", "spi": "0x1003", "direction": "inbound", "algorithm": "aes256-gmac", "esn": true, "replay_window": 4096,
  "key": "c00102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20212223", "last_seq": 4294967000,
  "local": "203.0.113.1", "peer": "198.51.100.9", "encap": {"local_port": 4500, "peer_port": 4500},
  "selectors": {"local": ["0.0.0.0/0"], "peer": ["0.0.0.0/0", "::/0"]}},
 {"name": "t-out", "spi": "0x2001", "direction": "outbound", "algorithm": "aes128-gcm", "key": "d00102030405060708090a0b0c0d0e0f10111213",
  "local": "203.0.113.1", "peer": "198.51.100.7", "encap": {"local_port": 4500, "peer_port": 4500},
  "selectors": {"local": ["10.0.0.0/16", "fd00:10::/64"], "peer": ["10.8.0.2/32", "fd00:8::2/128"]}},
 {"name": "v6-out", "spi": "0x2002", "direction": "outbound", "algorithm": "aes256-gcm", "esn": true, "last_seq": 4294967290,
  "key": "e00102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20212223",
  "local": "2001:db8::1", "peer": "2001:db8::2", "encap": {"local_port": 4500, "peer_port": 4500},
  "selectors": {"local": ["::/0", "0.0.0.0/0"], "peer": ["10.9.0.0/16", "fd00:9::/32"]}},
 {"name": "tr-out", "spi": "0x2003", "direction": "outbound", "mode": "transport", "algorithm": "aes128-gcm",
  "key": "f00102030405060708090a0b0c0d0e0f10111213", "local": "203.0.113.1", "peer": "198.51.100.8", "encap": null}
]}"#;

fn seal(p: &SaParams, seq: u64, body: &[u8]) -> Vec<u8> {
    let key = Ring::key(p.algorithm, p.key.expose()).unwrap();
    let iv = seq.to_be_bytes();
    let mut esp = p.spi.to_be_bytes().to_vec();
    esp.extend_from_slice(&(seq as u32).to_be_bytes());
    esp.extend_from_slice(&iv);
    let mut aad = p.spi.to_be_bytes().to_vec();
    if p.esn {
        aad.extend_from_slice(&((seq >> 32) as u32).to_be_bytes());
    }
    aad.extend_from_slice(&(seq as u32).to_be_bytes());
    let mut data = body.to_vec();
    let icv = if p.algorithm.is_gmac() {
        let mut a = aad.clone();
        a.extend_from_slice(&iv);
        a.extend_from_slice(body);
        key.seal(&nonce(&p.salt, &iv), &a, &mut [])
    } else {
        key.seal(&nonce(&p.salt, &iv), &aad, &mut data)
    };
    esp.extend_from_slice(&data);
    esp.extend_from_slice(&icv);
    esp
}

fn ipv4_frame(src: [u8; 4], proto: u8, flags_off: u16, ident: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 8, 0];
    let total = (20 + payload.len()).min(65535) as u16;
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&ident.to_be_bytes());
    ip.extend_from_slice(&flags_off.to_be_bytes());
    ip.extend_from_slice(&[64, proto, 0, 0]);
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&[203, 0, 113, 1]);
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(payload);
    f
}

fn in_udp(esp: &[u8]) -> Vec<u8> {
    let mut u = vec![0x11, 0x94, 0x11, 0x94];
    u.extend_from_slice(&((8 + esp.len()).min(65535) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(esp);
    u
}

fuzz_target!(|data: &[u8]| {
    let sas = parse_config(CONFIG, None).unwrap();
    let cfg = EngineConfig {
        reassembly: ReassemblyConfig { slots: 8, max_datagram: 4096, per_source: 4, timeout_ns: 50_000_000 },
        mtu: 1500,
        ..EngineConfig::default()
    };
    // Once per process: intel-ipsec-mb for the second engine's AES keys, if it starts here.
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let why = natt_ipsec_mb::select(Choice::IpsecMb).err().unwrap_or("");
        eprintln!("differential: ring against {} {why}", natt_ipsec_mb::selected().library());
    });
    let mut eng: Engine = Engine::with_sas(cfg, sas.clone()).unwrap();
    let mut mb: Engine<Auto> = Engine::with_sas(cfg, sas.clone()).unwrap();
    let inbound: Vec<&SaParams> = sas.iter().filter(|s| s.direction == natt_engine::Direction::Inbound).collect();
    let mut now = 0u64;
    let mut rest = data;
    let mut events = Vec::new();
    let mut mb_events = Vec::new();
    while rest.len() >= 3 {
        let op = rest[0];
        let len = (usize::from(rest[1]) << 8 | usize::from(rest[2])).min(rest.len() - 3);
        let rec = &rest[3..3 + len];
        rest = &rest[3 + len..];
        now += u64::from(op >> 2) * 1_000_000;
        let frame = match op % 4 {
            0 | 2 => rec.to_vec(),
            1 if rec.len() >= 6 => {
                let p = inbound[usize::from(rec[0]) % inbound.len()];
                let seq =
                    u64::from(u32::from_be_bytes([rec[1], rec[2], rec[3], rec[4]])) | if p.esn { 1 << 32 } else { 0 };
                let esp = seal(p, seq, &rec[6..]);
                let src = match p.peer {
                    core::net::IpAddr::V4(a) => a.octets(),
                    _ => [0; 4],
                };
                if rec[5] & 1 == 1 {
                    ipv4_frame(src, 17, 0x4000, 1, &in_udp(&esp))
                } else {
                    ipv4_frame(src, 50, 0, 1, &esp)
                }
            }
            3 if rec.len() >= 4 => {
                let fo = u16::from_be_bytes([rec[0], rec[1]]);
                let id = u16::from_be_bytes([rec[2], rec[3]]);
                ipv4_frame([198, 51, 100, 7], if id & 1 == 0 { 17 } else { 50 }, fo, id, &rec[4..])
            }
            _ => continue,
        };
        let headroom = usize::from(op & 0x70);
        let buf = || {
            let mut b = PktBuf::from_frame(&frame, headroom, 64);
            // Whatever a NIC may claim of the IPv4 header checksum (RX offload), right or wrong.
            b.set_ip_checksum(match op >> 7 | (op & 0x08) >> 2 {
                0 | 1 => RxChecksum::Unknown,
                2 => RxChecksum::Good,
                _ => RxChecksum::Bad,
            });
            b
        };
        let (mut pkts, mut mb_pkts) = ([buf()], [buf()]);
        if op % 4 == 2 {
            let (mut res, mut mb_res) = ([OutResult::default()], [OutResult::default()]);
            eng.encap_burst(&mut pkts, &mut res, &mut events);
            mb.encap_burst(&mut mb_pkts, &mut mb_res, &mut mb_events);
            assert_eq!(res, mb_res, "encap verdicts, ring and intel-ipsec-mb");
            if matches!(res[0].verdict, OutVerdict::Encapsulated | OutVerdict::IcmpTooBig | OutVerdict::IcmpTtlExceeded) {
                assert_eq!(pkts[0].data(), mb_pkts[0].data(), "encapsulated bytes, or the ICMP error");
            }
        } else {
            let (mut res, mut mb_res) = ([InResult::default()], [InResult::default()]);
            eng.decap_burst(&mut pkts, now, &mut res, &mut events);
            mb.decap_burst(&mut mb_pkts, now, &mut mb_res, &mut mb_events);
            assert!(pkts[0].head() + pkts[0].len() <= pkts[0].raw().len());
            assert_eq!(res, mb_res, "decap verdicts, ring and intel-ipsec-mb");
            // What is delivered must agree; a dropped packet's bytes are nobody's.
            if matches!(res[0].verdict, InVerdict::Tunnel | InVerdict::Transport) {
                assert_eq!(pkts[0].data(), mb_pkts[0].data(), "decapsulated bytes");
            }
        }
        assert_eq!(events, mb_events, "events, ring and intel-ipsec-mb");
        events.clear();
        mb_events.clear();
        let c = eng.counters();
        assert_eq!(c, mb.counters(), "counters, ring and intel-ipsec-mb");
        let handled = c.decap_packets
            + c.encap_packets
            + c.keepalives
            + c.punts.iter().sum::<u64>()
            + c.total_drops()
            + c.icmp_too_big
            + c.icmp_ttl_exceeded
            + c.frag_absorbed
            + u64::from(eng.reassembler().held());
        assert_eq!(c.in_packets + c.out_packets, handled, "accounting: {c:?}");
    }
});
