//! Which worker owns which SA, and where a received packet has to go. An SA belongs to
//! exactly one worker: the Toeplitz hash of its SPI (the hash a NIC computes for RSS on
//! the ESP SPI, with our key) modulo the number of workers. A packet that arrives on
//! another worker is handed over through a ring, so every SA's sequence counter and
//! replay window has one owner whatever the NIC did.

use natt_engine::wire::esp::{IKE_PORT, NATT_PORT};
use natt_engine::wire::{ethernet, ipv6, proto};
use std::net::IpAddr;

/// The RSS key given to NICs and used in software: the widely used default Toeplitz key.
pub const RSS_KEY: [u8; 40] = [
    0x6d, 0x5a, 0x56, 0xda, 0x25, 0x5b, 0x0e, 0xc2, 0x41, 0x67, 0x25, 0x3d, 0x43, 0xa3, 0x8f, 0xb0, 0xd0, 0xca, 0x2b,
    0xcb, 0xae, 0x7b, 0x30, 0xb4, 0x77, 0xcb, 0x2d, 0xa3, 0x80, 0x30, 0xf2, 0x0c, 0x6a, 0x42, 0xb7, 0x3b, 0xbe, 0xac,
    0x01, 0xfa,
];

/// Maps SPIs to workers.
pub struct Owners {
    workers: usize,
    reta_mask: u32,
    t: [[u32; 256]; 4],
    /// Redirection table: entry i is worker i % workers (no division per packet).
    reta: Vec<u16>,
}

/// The redirection-table size assumed when the port does not say (and in software).
pub const DEFAULT_RETA: u32 = 128;

impl Owners {
    /// Owners for `workers` workers. A NIC sends hash `h` to queue
    /// `reta[h % reta_size]`; with the table filled round-robin that is
    /// `(h % reta_size) % queues`, and so is our owner function, so that with one queue
    /// per worker the NIC and the software agree and nothing needs handing over.
    pub fn new(workers: usize) -> Owners {
        Self::with_reta(workers, DEFAULT_RETA)
    }

    pub fn with_reta(workers: usize, reta_size: u32) -> Owners {
        // Toeplitz over a 4-byte input: bit i of the input selects the 32-bit window of
        // the key starting at bit i. Tabulated per input byte.
        let window = |i: usize| -> u32 {
            let mut w = 0u32;
            for b in 0..32 {
                let k = i + b;
                let bit = (RSS_KEY[k / 8] >> (7 - k % 8)) & 1;
                w = (w << 1) | u32::from(bit);
            }
            w
        };
        let mut t = [[0u32; 256]; 4];
        for (p, tp) in t.iter_mut().enumerate() {
            for (v, e) in tp.iter_mut().enumerate() {
                let mut h = 0;
                for j in 0..8 {
                    if v & (0x80 >> j) != 0 {
                        h ^= window(p * 8 + j);
                    }
                }
                *e = h;
            }
        }
        let reta_size = if reta_size.is_power_of_two() { reta_size } else { DEFAULT_RETA };
        let workers = workers.max(1);
        let reta = (0..reta_size as usize).map(|i| (i % workers) as u16).collect();
        Owners { workers, reta_mask: reta_size - 1, t, reta }
    }

    /// The Toeplitz hash of an SPI (as it is on the wire, big-endian).
    #[inline]
    pub fn hash(&self, spi: u32) -> u32 {
        let b = spi.to_be_bytes();
        self.t[0][usize::from(b[0])]
            ^ self.t[1][usize::from(b[1])]
            ^ self.t[2][usize::from(b[2])]
            ^ self.t[3][usize::from(b[3])]
    }

    /// The worker that owns the SA with this SPI (either direction).
    #[inline]
    pub fn of_spi(&self, spi: u32) -> usize {
        usize::from(self.reta[(self.hash(spi) & self.reta_mask) as usize])
    }

    /// The worker that reassembles fragments of this datagram.
    #[inline]
    pub fn of_fragment(&self, key: u64) -> usize {
        usize::from(self.reta[((key.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40) as u32 & self.reta_mask) as usize])
    }

    pub fn workers(&self) -> usize {
        self.workers
    }
}

/// What a first look at a frame from the public side finds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peek {
    /// ESP (in UDP on a NAT-T port, or plain) with this SPI.
    Esp(u32),
    /// An outer fragment; the key identifies its datagram.
    Fragment(u64),
    /// Anything else: keepalives, IKE, host traffic, garbage. Whoever received it handles it.
    Other,
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Find the SPI of ESP or ESP-in-UDP without validating anything else (the engine does
/// that on the owning worker). Walks IPv6 extension headers as the engine does, so the
/// two never disagree about which SA a packet is for. Never panics.
#[inline]
pub fn peek(frame: &[u8], natt_ports: &[u16]) -> Peek {
    let Ok(l2) = ethernet::Frame::new_checked(frame).and_then(|f| f.info()) else { return Peek::Other };
    let l3 = usize::from(l2.l3_offset);
    let (protocol, l4) = match l2.ethertype {
        ethernet::ethertype::IPV4 => {
            let Some(&vhl) = frame.get(l3) else { return Peek::Other };
            let hl = usize::from(vhl & 0x0f) * 4;
            let Some(fo) = be16(frame, l3 + 6) else { return Peek::Other };
            if fo & 0x3fff != 0 {
                // Source address, identification and protocol name the datagram.
                let key = u64::from(be32(frame, l3 + 12).unwrap_or(0))
                    ^ (u64::from(be16(frame, l3 + 4).unwrap_or(0)) << 32)
                    ^ (u64::from(frame.get(l3 + 9).copied().unwrap_or(0)) << 48);
                return Peek::Fragment(key);
            }
            (frame.get(l3 + 9).copied().unwrap_or(0), l3 + hl)
        }
        ethernet::ethertype::IPV6 => {
            let Some(ip) = frame.get(l3..) else { return Peek::Other };
            let Ok(c) = ipv6::walk(ip) else { return Peek::Other };
            if let Some(f) = c.frag {
                if f.offset != 0 || f.more {
                    let key = u64::from(be32(frame, l3 + 20).unwrap_or(0)) ^ (u64::from(f.ident) << 32);
                    return Peek::Fragment(key);
                }
            }
            (c.upper_protocol, l3 + c.upper_offset)
        }
        _ => return Peek::Other,
    };
    match protocol {
        proto::ESP => be32(frame, l4).filter(|s| *s >= 256).map_or(Peek::Other, Peek::Esp),
        proto::UDP => {
            let dport = be16(frame, l4 + 2).unwrap_or(0);
            if dport != NATT_PORT && !natt_ports.contains(&dport) {
                return Peek::Other;
            }
            // Keepalives and the non-ESP marker are not ESP.
            be32(frame, l4 + 8).filter(|s| *s >= 256).map_or(Peek::Other, Peek::Esp)
        }
        _ => Peek::Other,
    }
}

/// Is this frame IKE or NAT-T signalling sent by the host (UDP from port 500 or a NAT-T
/// port)? Such frames leave unencrypted whatever SA covers their destination.
#[inline]
pub fn is_ike_from_host(frame: &[u8], natt_ports: &[u16]) -> bool {
    let Ok(l2) = ethernet::Frame::new_checked(frame).and_then(|f| f.info()) else { return false };
    let l3 = usize::from(l2.l3_offset);
    let (protocol, l4) = match l2.ethertype {
        ethernet::ethertype::IPV4 => {
            let Some(&vhl) = frame.get(l3) else { return false };
            (frame.get(l3 + 9).copied().unwrap_or(0), l3 + usize::from(vhl & 0x0f) * 4)
        }
        ethernet::ethertype::IPV6 => match frame.get(l3..).map(ipv6::walk) {
            Some(Ok(c)) => (c.upper_protocol, l3 + c.upper_offset),
            _ => return false,
        },
        _ => return false,
    };
    let sport = be16(frame, l4).unwrap_or(0);
    protocol == proto::UDP && (sport == IKE_PORT || sport == NATT_PORT || natt_ports.contains(&sport))
}

/// The inner destination of a frame from the protected side.
#[inline]
pub fn inner_destination(frame: &[u8]) -> Option<IpAddr> {
    let l2 = ethernet::Frame::new_checked(frame).and_then(|f| f.info()).ok()?;
    let l3 = usize::from(l2.l3_offset);
    match l2.ethertype {
        ethernet::ethertype::IPV4 => {
            let a: [u8; 4] = frame.get(l3 + 16..l3 + 20)?.try_into().ok()?;
            Some(IpAddr::from(a))
        }
        ethernet::ethertype::IPV6 => {
            let a: [u8; 16] = frame.get(l3 + 24..l3 + 40)?.try_into().ok()?;
            Some(IpAddr::from(a))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toeplitz_matches_the_published_verification_suite() {
        // Microsoft's RSS verification suite: IPv4 only, source 66.9.149.187,
        // destination 161.142.100.80 hashes to 0x323e8fc2 over 8 bytes. Our table works on
        // 4-byte inputs: check the first 4 bytes' contribution through the generic form.
        let o = Owners::new(1);
        let generic = |input: &[u8]| -> u32 {
            let mut h = 0u32;
            for (i, byte) in input.iter().enumerate() {
                for j in 0..8 {
                    if byte & (0x80 >> j) != 0 {
                        let k = i * 8 + j;
                        let mut w = 0u32;
                        for b in 0..32 {
                            let kk = k + b;
                            w = (w << 1) | u32::from((RSS_KEY[kk / 8] >> (7 - kk % 8)) & 1);
                        }
                        h ^= w;
                    }
                }
            }
            h
        };
        assert_eq!(generic(&[66, 9, 149, 187, 161, 142, 100, 80]), 0x323e_8fc2);
        for spi in [0u32, 1, 0x1001, 0xdead_beef, u32::MAX] {
            assert_eq!(o.hash(spi), generic(&spi.to_be_bytes()), "{spi:x}");
        }
    }

    #[test]
    fn ownership_spreads_and_is_stable() {
        let o = Owners::new(4);
        let mut per = [0usize; 4];
        for spi in 0x1000..0x1000 + 4000u32 {
            per[o.of_spi(spi)] += 1;
        }
        assert!(per.iter().all(|&n| n > 800), "{per:?}");
        assert_eq!(o.of_spi(0x1234), o.of_spi(0x1234));
        assert_eq!(Owners::new(1).of_spi(0x1234), 0);
    }

    #[test]
    fn peek_finds_spis_and_fragments_and_never_panics() {
        // ESP in UDP to 4500 over IPv4: Ethernet 14, IPv4 20, UDP 8, then the SPI.
        let f = bases().swap_remove(0);
        assert_eq!(peek(&f, &[]), Peek::Esp(0x1001));
        let mut ka = f.clone();
        ka[42..46].copy_from_slice(&[0, 0, 0, 0]);
        assert_eq!(peek(&ka, &[]), Peek::Other, "non-ESP marker");
        let mut fr = f.clone();
        fr[20] = 0x20;
        assert!(matches!(peek(&fr, &[]), Peek::Fragment(_)));
        for n in 0..f.len() {
            let _ = peek(&f[..n], &[]);
        }
        assert_eq!(inner_destination(&f), Some("203.0.113.1".parse().unwrap()));
    }

    /// Frames the engine takes apart all the way to the SA lookup, as bytes: ESP in UDP
    /// (port 4500 or an SA's own 4501) over IPv4 with options or a VLAN tag, plain ESP over
    /// IPv4, and plain ESP over IPv6 behind extension headers.
    fn bases() -> Vec<Vec<u8>> {
        let eth = |et: &[u8]| [&[2u8, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2][..], et].concat();
        let esp = [0x00, 0x00, 0x10, 0x01, 0, 0, 0, 1, 9, 9, 9, 9, 9, 9, 9, 9].repeat(3);
        let v4 = |proto: u8, opts: &[u8], l4: &[u8]| {
            let hl = 20 + opts.len();
            let total = (hl + l4.len()) as u16;
            let mut h =
                vec![0x40 | (hl / 4) as u8, 0, 0, 0, 0, 7, 0, 0, 64, proto, 0, 0, 198, 51, 100, 7, 203, 0, 113, 1];
            h[2..4].copy_from_slice(&total.to_be_bytes());
            h.extend_from_slice(opts);
            [h, l4.to_vec()].concat()
        };
        let udp = |dport: u16| {
            let mut u = vec![0x11, 0x94, 0, 0, 0, 0, 0, 0];
            u[2..4].copy_from_slice(&dport.to_be_bytes());
            u[4..6].copy_from_slice(&((8 + esp.len()) as u16).to_be_bytes());
            [u, esp.clone()].concat()
        };
        let mut v6 = vec![0x60, 0, 0, 0, 0, 0, 0, 64];
        v6.extend_from_slice(&[0x20, 1, 0x0d, 0xb8].repeat(4));
        v6.extend_from_slice(&[0x20, 1, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        // Hop-by-hop options, then destination options, then ESP.
        let ext = [&[60u8, 0, 1, 4, 0, 0, 0, 0][..], &[50, 0, 1, 4, 0, 0, 0, 0]].concat();
        let body = [ext, esp.clone()].concat();
        v6[4..6].copy_from_slice(&(body.len() as u16).to_be_bytes());
        v6[6] = 0;
        let mut all = vec![
            [eth(&[0x08, 0x00]), v4(17, &[], &udp(4500))].concat(),
            [eth(&[0x81, 0x00, 0, 5, 0x08, 0x00]), v4(17, &[1, 1, 1, 1], &udp(4501))].concat(),
            [eth(&[0x08, 0x00]), v4(50, &[], &esp)].concat(),
            [eth(&[0x86, 0xdd]), v6, body].concat(),
        ];
        all.iter_mut().for_each(|f| fix_v4_checksum(f));
        all
    }

    /// Put a right IPv4 header checksum back after edits, where there is an IPv4 header.
    fn fix_v4_checksum(f: &mut [u8]) {
        let Ok(l2) = ethernet::Frame::new_checked(&*f).and_then(|x| x.info()) else { return };
        let l3 = usize::from(l2.l3_offset);
        if l2.ethertype != ethernet::ethertype::IPV4 {
            return;
        }
        let Some(&vhl) = f.get(l3) else { return };
        let end = l3 + usize::from(vhl & 0x0f) * 4;
        if end > f.len() || end < l3 + 20 {
            return;
        }
        f[l3 + 10..l3 + 12].fill(0);
        let c = natt_engine::wire::checksum::checksum(&f[l3..end]);
        f[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
    }

    /// What the engine with no SAs makes of a frame: the SPI it looked up, if it got that far.
    fn engine_spi(frame: &[u8]) -> Option<u32> {
        use natt_engine::event::Discard;
        use natt_engine::{DropReason, Engine, EngineConfig, InResult, InVerdict, PktBuf};
        let mut engine: Engine = Engine::with_store(EngineConfig::default(), natt_engine::sa::SaTable::new(), &[4501]);
        let mut pkts = [PktBuf::from_frame(frame, 128, 64)];
        let mut res = [InResult { verdict: InVerdict::Keepalive, spi: None, source: None }];
        engine.decap_burst(&mut pkts, 0, &mut res, &mut Discard);
        match res[0].verdict {
            InVerdict::Drop(DropReason::NoSa) => res[0].spi,
            _ => None,
        }
    }

    #[test]
    fn the_base_frames_reach_the_lookup() {
        // Else the property below would compare nothing.
        for f in bases() {
            assert_eq!(engine_spi(&f), Some(0x1001), "{f:02x?}");
            assert_eq!(peek(&f, &[4501]), Peek::Esp(0x1001));
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        /// Whatever the bytes, the dispatch stage's parsers return; and wherever the
        /// engine (with no SAs) reads an SPI and looks it up, the dispatch stage found
        /// the same SPI, so a packet always goes to the worker that owns its SA.
        #[test]
        fn peek_never_panics_and_agrees_with_the_engine(
            which in 0usize..4,
            edits in proptest::collection::vec((0usize..200, proptest::prelude::any::<u8>()), 0..6),
            cut in 0usize..220,
            junk in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40),
            raw in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..120),
        ) {
            for frame in [raw, {
                let mut f = bases().swap_remove(which);
                for &(at, b) in &edits {
                    let n = f.len();
                    f[at % n] = b;
                }
                f.truncate(cut.min(f.len()));
                f.extend_from_slice(&junk);
                fix_v4_checksum(&mut f);
                f
            }] {
                let p = peek(&frame, &[4501]);
                let _ = (is_ike_from_host(&frame, &[4501]), inner_destination(&frame));
                if let Some(spi) = engine_spi(&frame) {
                    proptest::prop_assert_eq!(p, Peek::Esp(spi), "{:02x?}", frame);
                }
            }
        }
    }
}
