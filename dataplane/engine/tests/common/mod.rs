//! Helpers shared by the engine's integration tests: frame builders, a headend and a
//! client with mirrored SAs, and a way to craft authenticated ESP with any content.
#![allow(dead_code)]

use core::net::IpAddr;
use natt_engine::crypto::{AeadKey, Backend, Ring, nonce};
use natt_engine::sa::config::parse_config;
use natt_engine::wire::checksum;
use natt_engine::{Engine, EngineConfig, Event, Frame, InResult, OutResult, PktBuf, SaParams};
use serde_json::{Value, json};

pub const HEADROOM: usize = 128;
pub const TAILROOM: usize = 128;

pub const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0xaa];
pub const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0xbb];

pub fn eth(ethertype: u16, l3: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + l3.len());
    f.extend_from_slice(&MAC_B);
    f.extend_from_slice(&MAC_A);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(l3);
    f
}

pub fn ipv4_header(src: &str, dst: &str, proto: u8, payload_len: usize, ttl: u8, tos: u8, ident: u16) -> Vec<u8> {
    let s: core::net::Ipv4Addr = src.parse().unwrap();
    let d: core::net::Ipv4Addr = dst.parse().unwrap();
    let total = (20 + payload_len) as u16;
    let mut h = vec![0x45, tos];
    h.extend_from_slice(&total.to_be_bytes());
    h.extend_from_slice(&ident.to_be_bytes());
    h.extend_from_slice(&[0x40, 0, ttl, proto, 0, 0]);
    h.extend_from_slice(&s.octets());
    h.extend_from_slice(&d.octets());
    let c = checksum::checksum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h
}

pub fn ipv6_header(src: &str, dst: &str, next: u8, payload_len: usize, hop: u8, tc: u8) -> Vec<u8> {
    let s: core::net::Ipv6Addr = src.parse().unwrap();
    let d: core::net::Ipv6Addr = dst.parse().unwrap();
    let w0: u32 = (6 << 28) | (u32::from(tc) << 20) | 0x12345;
    let mut h = w0.to_be_bytes().to_vec();
    h.extend_from_slice(&(payload_len as u16).to_be_bytes());
    h.extend_from_slice(&[next, hop]);
    h.extend_from_slice(&s.octets());
    h.extend_from_slice(&d.octets());
    h
}

/// A UDP datagram with a correct checksum.
pub fn udp(src: &str, dst: &str, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let len = 8 + payload.len();
    let mut u = Vec::with_capacity(len);
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&(len as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    let (s, d): (IpAddr, IpAddr) = (src.parse().unwrap(), dst.parse().unwrap());
    let ph = match (s, d) {
        (IpAddr::V4(s), IpAddr::V4(d)) => checksum::pseudo_v4(s, d, 17, len as u16),
        (IpAddr::V6(s), IpAddr::V6(d)) => checksum::pseudo_v6(&s, &d, 17, len as u32),
        _ => unreachable!(),
    };
    let mut c = checksum::l4_checksum(ph, &u);
    if c == 0 {
        c = 0xffff;
    }
    u[6..8].copy_from_slice(&c.to_be_bytes());
    u
}

/// An Ethernet frame with an IPv4 or IPv6 UDP packet, by the source address's family.
pub fn ip_udp_frame(src: &str, dst: &str, sport: u16, dport: u16, payload: &[u8], ttl: u8) -> Vec<u8> {
    let u = udp(src, dst, sport, dport, payload);
    if src.contains(':') {
        let mut p = ipv6_header(src, dst, 17, u.len(), ttl, 0);
        p.extend_from_slice(&u);
        eth(0x86dd, &p)
    } else {
        let mut p = ipv4_header(src, dst, 17, u.len(), ttl, 0, 0x1234);
        p.extend_from_slice(&u);
        eth(0x0800, &p)
    }
}

/// Outer addresses of the test topology.
pub struct Outer {
    pub headend: &'static str,
    pub client: &'static str,
    /// The client's NAT's public address, as the headend sees it.
    pub nat: &'static str,
}

pub const OUTER4: Outer = Outer { headend: "203.0.113.1", client: "192.168.1.10", nat: "198.51.100.7" };
pub const OUTER6: Outer = Outer { headend: "2001:db8:1::1", client: "2001:db8:2::10", nat: "2001:db8:2::10" };

pub const PROTECTED4: &str = "10.0.0.0/16";
pub const PROTECTED6: &str = "fd00:10::/64";
pub const CLIENT_IN4: &str = "10.8.0.2";
pub const CLIENT_IN6: &str = "fd00:8::2";
pub const SERVER4: &str = "10.0.1.5";
pub const SERVER6: &str = "fd00:10::5";

/// How the test SAs are made.
#[derive(Clone, Debug)]
pub struct Setup {
    pub alg: &'static str,
    pub esn: bool,
    pub v6_outer: bool,
    pub encap: bool,
    pub transport: bool,
    pub replay_window: u32,
    /// Extra fields merged into every SA.
    pub extra_in: Value,
    pub extra_out: Value,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            alg: "aes128-gcm",
            esn: false,
            v6_outer: false,
            encap: true,
            transport: false,
            replay_window: 64,
            extra_in: json!({}),
            extra_out: json!({}),
        }
    }
}

pub const SPI_IN: u32 = 0x0000_1001;
pub const SPI_OUT: u32 = 0x0000_2001;

fn key_hex(alg: &str, spi: u32) -> String {
    let n = if alg.starts_with("aes128") { 16 } else { 32 };
    // Every byte of the SPI matters: no two SAs share a key (the configuration refuses it).
    (0..n + 4).map(|i| format!("{:02x}", (i as u32 * 7 + spi + (spi >> 8) * 31 + (spi >> 16) * 101) as u8)).collect()
}

fn merge(mut a: Value, b: &Value) -> Value {
    for (k, v) in b.as_object().unwrap() {
        a[k] = v.clone();
    }
    a
}

impl Setup {
    pub fn outer(&self) -> &'static Outer {
        if self.v6_outer { &OUTER6 } else { &OUTER4 }
    }

    /// The headend's inbound and outbound SA of one CHILD_SA, as JSON.
    pub fn headend_json(&self) -> Vec<Value> {
        let o = self.outer();
        let mode = if self.transport { "transport" } else { "tunnel" };
        let encap = if self.encap { json!({"local_port": 4500, "peer_port": 4500}) } else { Value::Null };
        let sel = if self.transport {
            json!({})
        } else {
            json!({"local": [PROTECTED4, PROTECTED6], "peer": [format!("{CLIENT_IN4}/32"), format!("{CLIENT_IN6}/128")]})
        };
        let base = |spi: u32, dir: &str| {
            json!({"name": format!("{dir}-{spi:x}"), "spi": spi, "direction": dir, "mode": mode, "algorithm": self.alg,
                   "key": key_hex(self.alg, spi), "local": o.headend, "peer": o.nat, "encap": encap, "esn": self.esn,
                   "selectors": sel})
        };
        let mut i = merge(base(SPI_IN, "inbound"), &self.extra_in);
        i["replay_window"] = self.replay_window.into();
        i["paired_spi"] = SPI_OUT.into();
        let out = merge(base(SPI_OUT, "outbound"), &self.extra_out);
        vec![i, out]
    }

    /// The client's mirror image: its outbound SA is the headend's inbound one.
    pub fn client_json(&self) -> Vec<Value> {
        let o = self.outer();
        self.headend_json()
            .into_iter()
            .map(|mut v| {
                let inbound = v["direction"] == "inbound";
                v["direction"] = if inbound { "outbound" } else { "inbound" }.into();
                v["local"] = o.client.into();
                v["peer"] = o.headend.into();
                let m = v.as_object_mut().unwrap();
                for k in ["paired_spi", "replay_window", "ttl", "df", "nat_update", "last_seq", "lifetime", "pad_to"] {
                    m.remove(k);
                }
                if let Some(sel) = m.get_mut("selectors") {
                    if let Some(s) = sel.as_object_mut() {
                        if let (Some(l), Some(p)) = (s.remove("local"), s.remove("peer")) {
                            s.insert("local".into(), p);
                            s.insert("peer".into(), l);
                        }
                    }
                }
                v
            })
            .collect()
    }

    pub fn headend(&self) -> Engine {
        engine(self.headend_json(), EngineConfig::default())
    }

    pub fn client(&self) -> Engine {
        engine(self.client_json(), EngineConfig::default())
    }
}

pub fn parse(sas: Vec<Value>) -> Vec<SaParams> {
    parse_config(&json!({ "sas": sas }).to_string(), Some("test")).unwrap()
}

pub fn engine(sas: Vec<Value>, cfg: EngineConfig) -> Engine {
    Engine::with_sas(cfg, parse(sas)).unwrap()
}

pub fn encap(e: &mut Engine, frame: &[u8]) -> (OutResult, Vec<u8>, Vec<Event>) {
    let mut pkts = [PktBuf::from_frame(frame, HEADROOM, TAILROOM)];
    let mut res = [OutResult::default()];
    let mut ev = Vec::new();
    e.encap_burst(&mut pkts, &mut res, &mut ev);
    (res[0], pkts[0].data().to_vec(), ev)
}

pub fn decap(e: &mut Engine, frame: &[u8], now: u64) -> (InResult, Vec<u8>, Vec<Event>) {
    let mut pkts = [PktBuf::from_frame(frame, HEADROOM, TAILROOM)];
    let mut res = [InResult::default()];
    let mut ev = Vec::new();
    e.decap_burst(&mut pkts, now, &mut res, &mut ev);
    (res[0], pkts[0].data().to_vec(), ev)
}

/// Rewrite the outer source address and UDP port of an ESP-in-UDP/IPv4 frame, as a
/// NAT does (the UDP checksum is zero over IPv4).
pub fn nat4(frame: &[u8], src: &str, port: u16) -> Vec<u8> {
    let mut f = frame.to_vec();
    let s: core::net::Ipv4Addr = src.parse().unwrap();
    f[26..30].copy_from_slice(&s.octets());
    f[24] = 0;
    f[25] = 0;
    let c = checksum::checksum(&f[14..34]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
    if f[23] == 17 {
        f[34..36].copy_from_slice(&port.to_be_bytes());
    }
    f
}

/// Set the outer IPv4 header's TOS byte (and fix its checksum).
pub fn set_outer_tos4(frame: &[u8], tos: u8) -> Vec<u8> {
    let mut f = frame.to_vec();
    f[15] = tos;
    f[24] = 0;
    f[25] = 0;
    let c = checksum::checksum(&f[14..34]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
    f
}

/// The same frame with the inner IPv4 TTL one lower, as a router forwards it.
pub fn ttl_minus_one(frame: &[u8]) -> Vec<u8> {
    let mut f = frame.to_vec();
    if f[12..14] == [0x08, 0x00] {
        f[22] -= 1;
        f[24] = 0;
        f[25] = 0;
        let hl = usize::from(f[14] & 15) * 4;
        let c = checksum::checksum(&f[14..14 + hl]);
        f[24..26].copy_from_slice(&c.to_be_bytes());
    } else {
        f[21] -= 1;
    }
    f
}

/// ESP authenticated under an SA's key with any plaintext (payload, padding, trailer
/// as given): what a misbehaving but authenticated peer can send.
pub fn craft_esp(p: &SaParams, seq: u64, body: &[u8]) -> Vec<u8> {
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
    let icv = key.seal(&nonce(&p.salt, &iv), &aad, &mut data);
    esp.extend_from_slice(&data);
    esp.extend_from_slice(&icv);
    esp
}

/// An outer frame from the client's NAT to the headend carrying `esp` in UDP/4500
/// (IPv4 outer).
pub fn outer4_frame(esp: &[u8], src: &str, dst: &str, sport: u16, dport: u16, tos: u8) -> Vec<u8> {
    let mut u = Vec::new();
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&((8 + esp.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(esp);
    let mut ip = ipv4_header(src, dst, 17, u.len(), 64, tos, 7);
    ip.extend_from_slice(&u);
    eth(0x0800, &ip)
}

/// ESP body: payload, RFC 4303 padding to 4 bytes, pad length, next header.
pub fn body(payload: &[u8], next_header: u8) -> Vec<u8> {
    let pad = (4 - (payload.len() + 2) % 4) % 4;
    let mut b = payload.to_vec();
    b.extend((1..=pad as u8).collect::<Vec<_>>());
    b.push(pad as u8);
    b.push(next_header);
    b
}
