//! SAs in and out of shared-memory records. Encoding is the writer's; decoding is the
//! reader's, and treats the record as untrusted: every field is checked, and the
//! result must pass the same `SaParams::validate` as a configuration file.

use crate::layout::*;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use core::sync::atomic::Ordering::Relaxed;
use natt_engine::sa::{Algorithm, DfPolicy, Direction, Encap, IpPrefix, Key, Lifetime, Mode, SaParams, Selectors};

/// Why a record could not be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("unknown flag bits 0x{0:x}")]
    Flags(u32),
    #[error("unknown algorithm code {0}")]
    Algorithm(u32),
    #[error("unknown DF policy code {0}")]
    Df(u32),
    #[error("key length {0} does not fit the record")]
    KeyLen(u32),
    #[error("{0} selectors do not fit the record (at most {MAX_SELECTORS})")]
    SelectorCount(usize),
    #[error("selector {0} is malformed")]
    Selector(usize),
    #[error("name is not UTF-8")]
    Name,
    #[error("{0}")]
    Invalid(String),
}

fn words_from(bytes: &[u8; 16]) -> [u64; 2] {
    [u64::from_be_bytes(bytes[..8].try_into().unwrap()), u64::from_be_bytes(bytes[8..].try_into().unwrap())]
}

fn addr_bytes(a: &IpAddr) -> [u8; 16] {
    match a {
        IpAddr::V4(v) => {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&v.octets());
            b
        }
        IpAddr::V6(v) => v.octets(),
    }
}

type AtomicU64x2 = [core::sync::atomic::AtomicU64; 2];

fn load_addr(w: &AtomicU64x2, v6: bool) -> IpAddr {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&w[0].load(Relaxed).to_be_bytes());
    b[8..].copy_from_slice(&w[1].load(Relaxed).to_be_bytes());
    if v6 { IpAddr::V6(Ipv6Addr::from(b)) } else { IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3])) }
}

fn store_addr(w: &AtomicU64x2, a: &IpAddr) {
    let [hi, lo] = words_from(&addr_bytes(a));
    w[0].store(hi, Relaxed);
    w[1].store(lo, Relaxed);
}

fn alg_code(a: Algorithm) -> u32 {
    Algorithm::ALL.iter().position(|x| *x == a).expect("listed") as u32
}

fn df_code(d: DfPolicy) -> u32 {
    match d {
        DfPolicy::Copy => 0,
        DfPolicy::Set => 1,
        DfPolicy::Clear => 2,
    }
}

/// Why an SA cannot be stored in a record (the configuration is valid for the engine
/// but exceeds what the shared table holds).
pub fn fits(p: &SaParams) -> Result<(), String> {
    let n = p.selectors.local.len() + p.selectors.peer.len();
    if n > MAX_SELECTORS {
        return Err(format!(
            "{n} traffic selectors; the shared SA table holds at most {MAX_SELECTORS} per SA (local and peer together)"
        ));
    }
    if p.name.len() > NAME_LEN {
        return Err(format!("name is {} bytes; the shared SA table keeps at most {NAME_LEN}", p.name.len()));
    }
    Ok(())
}

/// Write every field of `p` into a FREE record (not yet reachable). The caller
/// publishes it afterwards.
pub fn encode(r: &SaRecord, p: &SaParams, uid: u64) {
    debug_assert!(fits(p).is_ok());
    let mut flags = alg_code(p.algorithm) << flag::ALG_SHIFT | df_code(p.df) << flag::DF_SHIFT;
    for (on, bit) in [
        (p.direction == Direction::Outbound, flag::OUTBOUND),
        (p.mode == Mode::Transport, flag::TRANSPORT),
        (p.esn, flag::ESN),
        (p.encap.is_some(), flag::ENCAP),
        (p.nat_update, flag::NAT_UPDATE),
        (p.local.is_ipv6(), flag::V6),
        (p.paired_spi.is_some(), flag::HAS_PAIR),
    ] {
        if on {
            flags |= bit;
        }
    }
    r.flags.store(flags, Relaxed);
    r.spi.store(p.spi, Relaxed);
    r.paired_spi.store(p.paired_spi.unwrap_or(0), Relaxed);
    r.uid.store(uid, Relaxed);
    r.retire_gen.store(0, Relaxed);
    r.remove_at_ns.store(0, Relaxed);
    let e = p.encap.unwrap_or(Encap { local_port: 0, peer_port: 0 });
    r.ports.store(u32::from(e.local_port) << 16 | u32::from(e.peer_port), Relaxed);
    let mut key = [0u8; 32];
    key[..p.key.expose().len()].copy_from_slice(p.key.expose());
    for (i, w) in r.key.iter().enumerate() {
        w.store(u64::from_be_bytes(key[i * 8..i * 8 + 8].try_into().unwrap()), Relaxed);
    }
    r.key_len.store(p.key.expose().len() as u32, Relaxed);
    r.salt.store(u32::from_be_bytes(p.salt), Relaxed);
    r.replay_window.store(p.replay_window, Relaxed);
    r.ttl_pad.store(u32::from(p.ttl) | u32::from(p.pad_to) << 8, Relaxed);
    store_addr(&r.local, &p.local);
    store_addr(&r.peer, &p.peer);
    let lt = &p.lifetime;
    for (w, v) in r.lifetime.iter().zip([lt.soft_bytes, lt.hard_bytes, lt.soft_packets, lt.hard_packets]) {
        w.store(v.unwrap_or(0), Relaxed);
    }
    r.last_seq.store(p.last_seq, Relaxed);
    let mut name = [0u8; NAME_LEN];
    name[..p.name.len()].copy_from_slice(p.name.as_bytes());
    for (i, w) in r.name.iter().enumerate() {
        w.store(u64::from_be_bytes(name[i * 8..i * 8 + 8].try_into().unwrap()), Relaxed);
    }
    let mut metas = [0u16; MAX_SELECTORS];
    let sels = p.selectors.local.iter().map(|s| (s, false)).chain(p.selectors.peer.iter().map(|s| (s, true)));
    for (i, (s, peer)) in sels.enumerate() {
        metas[i] = sel::USED
            | u16::from(s.len())
            | if s.addr().is_ipv6() { sel::V6 } else { 0 }
            | if peer { sel::PEER } else { 0 };
        store_addr(&r.sel_addr[i], &s.addr());
    }
    for i in (p.selectors.local.len() + p.selectors.peer.len())..MAX_SELECTORS {
        r.sel_addr[i][0].store(0, Relaxed);
        r.sel_addr[i][1].store(0, Relaxed);
    }
    for (k, w) in r.sel_meta.iter().enumerate() {
        let v = (0..4).fold(0u64, |acc, j| acc | u64::from(metas[k * 4 + j]) << (16 * j));
        w.store(v, Relaxed);
    }
    // The first peer selector again, in the line lookups read.
    let nl = p.selectors.local.len();
    match p.selectors.peer.first() {
        Some(s) => {
            r.peer0_meta.store(u32::from(metas[nl]), Relaxed);
            store_addr(&r.peer0_addr, &s.addr());
        }
        None => {
            r.peer0_meta.store(0, Relaxed);
            r.peer0_addr[0].store(0, Relaxed);
            r.peer0_addr[1].store(0, Relaxed);
        }
    }
    r.sel_counts.store(p.selectors.local.len() as u32 | (p.selectors.peer.len() as u32) << 8, Relaxed);
}

/// The selector metas of a record.
pub fn sel_metas(r: &SaRecord) -> [u16; MAX_SELECTORS] {
    let mut m = [0u16; MAX_SELECTORS];
    for (k, w) in r.sel_meta.iter().enumerate() {
        let v = w.load(Relaxed);
        for j in 0..4 {
            m[k * 4 + j] = (v >> (16 * j)) as u16;
        }
    }
    m
}

/// Read and check a record. Never trusts it: any inconsistency is an error.
pub fn decode(r: &SaRecord) -> Result<SaParams, RecordError> {
    let flags = r.flags.load(Relaxed);
    if flags & !flag::KNOWN != 0 {
        return Err(RecordError::Flags(flags & !flag::KNOWN));
    }
    let alg_c = (flags & flag::ALG_MASK) >> flag::ALG_SHIFT;
    let algorithm = *Algorithm::ALL.get(alg_c as usize).ok_or(RecordError::Algorithm(alg_c))?;
    let df = match (flags & flag::DF_MASK) >> flag::DF_SHIFT {
        0 => DfPolicy::Copy,
        1 => DfPolicy::Set,
        2 => DfPolicy::Clear,
        c => return Err(RecordError::Df(c)),
    };
    let v6 = flags & flag::V6 != 0;
    let key_len = r.key_len.load(Relaxed);
    if key_len as usize > 32 {
        return Err(RecordError::KeyLen(key_len));
    }
    let mut key = [0u8; 32];
    for (i, w) in r.key.iter().enumerate() {
        key[i * 8..i * 8 + 8].copy_from_slice(&w.load(Relaxed).to_be_bytes());
    }
    let mut name = [0u8; NAME_LEN];
    for (i, w) in r.name.iter().enumerate() {
        name[i * 8..i * 8 + 8].copy_from_slice(&w.load(Relaxed).to_be_bytes());
    }
    let nlen = name.iter().position(|b| *b == 0).unwrap_or(NAME_LEN);
    let name = core::str::from_utf8(&name[..nlen]).map_err(|_| RecordError::Name)?.to_owned();
    let counts = r.sel_counts.load(Relaxed);
    let (nl, np) = ((counts & 0xff) as usize, ((counts >> 8) & 0xff) as usize);
    if nl + np > MAX_SELECTORS || counts >> 16 != 0 {
        return Err(RecordError::SelectorCount(nl + np));
    }
    let metas = sel_metas(r);
    let mut selectors = Selectors::default();
    for (i, meta) in metas.iter().enumerate().take(nl + np) {
        let peer = i >= nl;
        if meta & sel::USED == 0 || (meta & sel::PEER != 0) != peer {
            return Err(RecordError::Selector(i));
        }
        let addr = load_addr(&r.sel_addr[i], meta & sel::V6 != 0);
        let p = IpPrefix::new(addr, (meta & sel::LEN_MASK) as u8).map_err(|_| RecordError::Selector(i))?;
        if peer { selectors.peer.push(p) } else { selectors.local.push(p) }
    }
    let ports = r.ports.load(Relaxed);
    let lt = |i: usize| match r.lifetime[i].load(Relaxed) {
        0 => None,
        v => Some(v),
    };
    let ttl_pad = r.ttl_pad.load(Relaxed);
    let paired = r.paired_spi.load(Relaxed);
    let p = SaParams {
        name,
        spi: r.spi.load(Relaxed),
        direction: if flags & flag::OUTBOUND != 0 { Direction::Outbound } else { Direction::Inbound },
        mode: if flags & flag::TRANSPORT != 0 { Mode::Transport } else { Mode::Tunnel },
        algorithm,
        key: Key::new(key[..key_len as usize].to_vec()),
        salt: r.salt.load(Relaxed).to_be_bytes(),
        local: load_addr(&r.local, v6),
        peer: load_addr(&r.peer, v6),
        encap: (flags & flag::ENCAP != 0)
            .then_some(Encap { local_port: (ports >> 16) as u16, peer_port: ports as u16 }),
        replay_window: r.replay_window.load(Relaxed),
        esn: flags & flag::ESN != 0,
        selectors,
        lifetime: Lifetime { soft_bytes: lt(0), hard_bytes: lt(1), soft_packets: lt(2), hard_packets: lt(3) },
        nat_update: flags & flag::NAT_UPDATE != 0,
        paired_spi: (flags & flag::HAS_PAIR != 0).then_some(paired),
        ttl: (ttl_pad & 0xff) as u8,
        df,
        last_seq: r.last_seq.load(Relaxed),
        pad_to: ((ttl_pad >> 8) & 0xff) as u8,
    };
    if ttl_pad >> 16 != 0 {
        return Err(RecordError::Invalid("reserved bits of ttl_pad are set".into()));
    }
    p.validate().map_err(|e| RecordError::Invalid(e.to_string()))?;
    Ok(p)
}

/// An LPM key: family, prefix length, masked address as a number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LpmKey {
    pub v6: bool,
    pub len: u8,
    pub addr: u128,
}

impl LpmKey {
    pub fn of(p: &IpPrefix) -> Self {
        match p.addr() {
            IpAddr::V4(a) => LpmKey { v6: false, len: p.len(), addr: u128::from(a.to_bits()) },
            IpAddr::V6(a) => LpmKey { v6: true, len: p.len(), addr: a.to_bits() },
        }
    }

    /// The key of `a` masked to `len` bits.
    #[inline]
    pub fn masked(a: &IpAddr, len: u8) -> Self {
        match a {
            IpAddr::V4(a) => {
                let m = if len == 0 { 0 } else { u32::MAX << (32 - u32::from(len.min(32))) };
                LpmKey { v6: false, len, addr: u128::from(a.to_bits() & m) }
            }
            IpAddr::V6(a) => {
                let m = if len == 0 { 0 } else { u128::MAX << (128 - u32::from(len.min(128))) };
                LpmKey { v6: true, len, addr: a.to_bits() & m }
            }
        }
    }

    pub fn hash(&self, seed: u64) -> u64 {
        lpm_hash(seed, self.v6, self.len, self.addr)
    }
}

/// Does the record list `key` among its peer selectors (what outbound lookups match)?
/// The first peer selector is checked in the record's first line; others further on.
#[inline]
pub fn has_peer_selector(r: &SaRecord, key: &LpmKey) -> bool {
    let want = sel::USED | sel::PEER | u16::from(key.len) | if key.v6 { sel::V6 } else { 0 };
    let a = if key.v6 { key.addr } else { key.addr << 96 };
    let addr_of =
        |w: &[core::sync::atomic::AtomicU64; 2]| u128::from(w[0].load(Relaxed)) << 64 | u128::from(w[1].load(Relaxed));
    if r.peer0_meta.load(Relaxed) == u32::from(want) && addr_of(&r.peer0_addr) == a {
        return true;
    }
    let counts = r.sel_counts.load(Relaxed);
    let (nl, np) = ((counts & 0xff) as usize, ((counts >> 8) & 0xff) as usize);
    if np < 2 {
        return false;
    }
    let metas = sel_metas(r);
    (nl + 1..(nl + np).min(MAX_SELECTORS)).any(|i| metas[i] == want && addr_of(&r.sel_addr[i]) == a)
}

/// The keys an SA is selected by when outbound, without duplicates.
pub fn outbound_keys(p: &SaParams) -> Vec<LpmKey> {
    let mut v: Vec<LpmKey> = p.outbound_keys().iter().map(LpmKey::of).collect();
    v.sort_by_key(|k| (k.v6, k.len, k.addr));
    v.dedup();
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use natt_engine::sa::config::parse_sa;

    fn rec() -> Box<SaRecord> {
        Box::default()
    }

    fn sample(v: serde_json::Value) -> SaParams {
        parse_sa(&v).unwrap()
    }

    #[test]
    fn round_trip_every_field() {
        let sas = [
            sample(
                serde_json::json!({"name": "alice-in", "spi": "0x1001", "direction": "inbound", "algorithm": "aes256-gcm",
                "key": "00".repeat(32), "salt": "0a0b0c0d", "local": "203.0.113.1", "peer": "198.51.100.7",
                "encap": {"local_port": 4500, "peer_port": 40001}, "replay_window": 4096, "esn": true, "nat_update": false,
                "selectors": {"local": ["10.0.0.0/16", "fd00:10::/64", "0.0.0.0/0"], "peer": ["10.8.0.2/32", "fd00:8::2/128"]},
                "lifetime": {"soft_bytes": 1, "hard_bytes": 2, "hard_packets": 9}, "paired_spi": "0x2001", "last_seq": 77}),
            ),
            sample(
                serde_json::json!({"spi": 70000, "direction": "outbound", "mode": "transport", "algorithm": "chacha20-poly1305",
                "key": "11".repeat(36), "local": "2001:db8::1", "peer": "2001:db8::2", "ttl": 9, "df": "clear", "pad_to": 16}),
            ),
        ];
        for p in sas {
            let r = rec();
            encode(&r, &p, 5);
            let back = decode(&r).unwrap();
            assert_eq!(back, p);
            assert_eq!(r.uid.load(Relaxed), 5);
        }
    }

    #[test]
    fn corrupt_records_are_refused() {
        let p = sample(serde_json::json!({"name": "x", "spi": 300, "direction": "in", "algorithm": "aes128-gcm",
            "key": "00".repeat(20), "local": "192.0.2.1", "peer": "192.0.2.2",
            "selectors": {"local": ["10.0.0.0/8"], "peer": ["10.9.0.1/32"]}}));
        let check = |f: &dyn Fn(&SaRecord), want: &str| {
            let r = rec();
            encode(&r, &p, 1);
            f(&r);
            let e = decode(&r).unwrap_err().to_string();
            assert!(e.contains(want), "{e} lacks {want}");
        };
        check(&|r| r.flags.store(r.flags.load(Relaxed) | 1 << 30, Relaxed), "unknown flag");
        check(&|r| r.flags.store(r.flags.load(Relaxed) | 7 << flag::ALG_SHIFT, Relaxed), "unknown algorithm");
        check(&|r| r.flags.store(r.flags.load(Relaxed) | 3 << flag::DF_SHIFT, Relaxed), "DF policy");
        check(&|r| r.key_len.store(99, Relaxed), "key length 99");
        check(&|r| r.key_len.store(17, Relaxed), "needs 16 bytes");
        check(&|r| r.sel_counts.store(9, Relaxed), "selectors do not fit");
        check(&|r| r.sel_counts.store(0x0102, Relaxed), "selector 1");
        check(&|r| r.sel_meta[0].store(0x8000 | 40, Relaxed), "selector 0");
        check(&|r| r.sel_addr[0][0].store(u64::MAX, Relaxed), "selector 0");
        check(&|r| r.name[0].store(0xff00_0000_0000_0000, Relaxed), "UTF-8");
        check(&|r| r.spi.store(7, Relaxed), "reserved");
        check(&|r| r.ttl_pad.store(64 | 3 << 8, Relaxed), "pad_to");
        check(&|r| r.ttl_pad.store(64 | 4 << 8 | 1 << 20, Relaxed), "reserved bits");
        check(&|r| r.replay_window.store(7, Relaxed), "out of range");
    }

    #[test]
    fn peer_selector_matching() {
        let p = sample(serde_json::json!({"spi": 300, "direction": "out", "algorithm": "aes128-gcm",
            "key": "00".repeat(20), "local": "192.0.2.1", "peer": "192.0.2.2",
            "selectors": {"local": ["10.9.0.1/32"], "peer": ["10.0.0.0/8", "fd00::/16"]}}));
        let r = rec();
        encode(&r, &p, 1);
        assert!(has_peer_selector(&r, &LpmKey::masked(&"10.1.2.3".parse().unwrap(), 8)));
        assert!(has_peer_selector(&r, &LpmKey::masked(&"fd00::1".parse().unwrap(), 16)));
        assert!(!has_peer_selector(&r, &LpmKey::masked(&"10.1.2.3".parse().unwrap(), 16)));
        // A local selector never selects outbound.
        assert!(!has_peer_selector(&r, &LpmKey::masked(&"10.9.0.1".parse().unwrap(), 32)));
        assert_eq!(outbound_keys(&p).len(), 2);
    }
}
