//! IP prefixes (traffic selectors) and a longest-prefix-match map over them.
//!
//! The map keeps one hash table per prefix length that is present and probes them from
//! the longest length down, so a table of a million /32 clients plus a few subnets costs
//! one or two hash probes per lookup.

use core::fmt;
use core::hash::{BuildHasher, Hasher};
use core::net::IpAddr;
use std::collections::HashMap;
use std::str::FromStr;

/// An address prefix such as `10.0.0.0/16` or `2001:db8::/64`, host bits zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IpPrefix {
    addr: IpAddr,
    len: u8,
}

/// Why a prefix string was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PrefixError {
    BadAddress,
    BadLength { max: u8 },
    HostBits { suggestion: IpPrefix },
}

impl fmt::Display for PrefixError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PrefixError::BadAddress => f.write_str("not an IPv4 or IPv6 address"),
            PrefixError::BadLength { max } => write!(f, "prefix length must be 0 to {max}"),
            PrefixError::HostBits { suggestion } => write!(f, "host bits are set; did you mean {suggestion}?"),
        }
    }
}

impl IpPrefix {
    /// A prefix; host bits must be zero.
    pub fn new(addr: IpAddr, len: u8) -> Result<Self, PrefixError> {
        let max = max_len(&addr);
        if len > max {
            return Err(PrefixError::BadLength { max });
        }
        let p = IpPrefix { addr: mask(addr, len), len };
        if p.addr != addr {
            return Err(PrefixError::HostBits { suggestion: p });
        }
        Ok(p)
    }

    /// The single-address prefix (/32 or /128).
    pub fn host(addr: IpAddr) -> Self {
        IpPrefix { addr, len: max_len(&addr) }
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// Prefix length in bits.
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> u8 {
        self.len
    }

    pub fn contains(&self, a: &IpAddr) -> bool {
        match (self.addr, a) {
            (IpAddr::V4(p), IpAddr::V4(a)) => v4_mask(a.to_bits(), self.len) == p.to_bits(),
            (IpAddr::V6(p), IpAddr::V6(a)) => v6_mask(a.to_bits(), self.len) == p.to_bits(),
            _ => false,
        }
    }
}

impl FromStr for IpPrefix {
    type Err = PrefixError;

    /// `a.b.c.d/len`, `x::y/len`, or a bare address meaning a host prefix.
    fn from_str(s: &str) -> Result<Self, PrefixError> {
        let (a, l) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = a.trim().parse().map_err(|_| PrefixError::BadAddress)?;
        let len = match l {
            None => max_len(&addr),
            Some(l) => l.trim().parse::<u8>().map_err(|_| PrefixError::BadLength { max: max_len(&addr) })?,
        };
        IpPrefix::new(addr, len)
    }
}

impl fmt::Display for IpPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

fn max_len(a: &IpAddr) -> u8 {
    if a.is_ipv4() { 32 } else { 128 }
}

fn v4_mask(a: u32, len: u8) -> u32 {
    if len == 0 { 0 } else { a & (u32::MAX << (32 - u32::from(len))) }
}

fn v6_mask(a: u128, len: u8) -> u128 {
    if len == 0 { 0 } else { a & (u128::MAX << (128 - u32::from(len))) }
}

fn mask(a: IpAddr, len: u8) -> IpAddr {
    match a {
        IpAddr::V4(v) => IpAddr::V4(v4_mask(v.to_bits(), len).into()),
        IpAddr::V6(v) => IpAddr::V6(v6_mask(v.to_bits(), len).into()),
    }
}

/// Selectors as packets are checked against them: address and mask pairs, computed
/// once when the SA is installed. The first two IPv4 and the first IPv6 selector are
/// kept inline, in the SA's runtime state (most SAs have one per side): checking a
/// packet then touches no other memory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SelectorSet {
    v4: [(u32, u32); 2],
    v6: [(u128, u128); 1],
    n4: u8,
    n6: u8,
    more4: Vec<(u32, u32)>,
    more6: Vec<(u128, u128)>,
}

impl SelectorSet {
    pub fn new(prefixes: &[IpPrefix]) -> Self {
        let mut s = SelectorSet::default();
        for p in prefixes {
            match p.addr {
                IpAddr::V4(a) => {
                    let e = (a.to_bits(), v4_mask(u32::MAX, p.len));
                    if usize::from(s.n4) < s.v4.len() {
                        s.v4[usize::from(s.n4)] = e;
                        s.n4 += 1;
                    } else {
                        s.more4.push(e);
                    }
                }
                IpAddr::V6(a) => {
                    let e = (a.to_bits(), v6_mask(u128::MAX, p.len));
                    if usize::from(s.n6) < s.v6.len() {
                        s.v6[usize::from(s.n6)] = e;
                        s.n6 += 1;
                    } else {
                        s.more6.push(e);
                    }
                }
            }
        }
        s
    }

    #[inline]
    pub fn contains(&self, a: &IpAddr) -> bool {
        match a {
            IpAddr::V4(a) => self.contains_v4(a.to_bits()),
            IpAddr::V6(a) => self.contains_v6(a.to_bits()),
        }
    }

    /// The whole of this set's IPv4 part as one (address, mask) that `contains_v4`
    /// agrees with, if it can be: its one IPv4 prefix, or (1, 0), which matches nothing,
    /// if it has none. `None` with two or more.
    pub fn exact_v4(&self) -> Option<(u32, u32)> {
        match (self.n4, self.more4.is_empty()) {
            (0, true) => Some((1, 0)),
            (1, true) => Some(self.v4[0]),
            _ => None,
        }
    }

    /// Whether the set has IPv6 prefixes.
    pub fn has_v6(&self) -> bool {
        self.n6 > 0
    }

    /// `contains` for an IPv4 address as a number (`Ipv4Addr::to_bits`).
    #[inline(always)]
    pub fn contains_v4(&self, a: u32) -> bool {
        // The inline entries first, without chaining iterators: most sets end there.
        let hit = |&(p, m): &(u32, u32)| a & m == p;
        self.v4[..usize::from(self.n4).min(2)].iter().any(hit) || self.more4.iter().any(hit)
    }

    /// `contains` for an IPv6 address as a number (`Ipv6Addr::to_bits`).
    #[inline(always)]
    pub fn contains_v6(&self, a: u128) -> bool {
        let hit = |&(p, m): &(u128, u128)| a & m == p;
        self.v6[..usize::from(self.n6).min(1)].iter().any(hit) || self.more6.iter().any(hit)
    }
}

/// A hasher for keys we choose (SPIs, prefixes): a folded 64×64→128 multiply with a
/// per-table random seed. Fast, and good in both the low bits (bucket) and the high
/// bits (control byte) even for keys whose low bits are all zero.
#[derive(Clone, Copy, Debug)]
pub struct KeyHasher {
    seed: u64,
    state: u64,
}

impl Hasher for KeyHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for c in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..c.len()].copy_from_slice(c);
            self.write_u64(u64::from_le_bytes(w));
        }
    }

    #[inline]
    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    #[inline]
    fn write_u64(&mut self, n: u64) {
        let m = u128::from(self.state ^ n) * u128::from(self.seed | 1);
        self.state = (m as u64) ^ ((m >> 64) as u64);
    }

    #[inline]
    fn write_u128(&mut self, n: u128) {
        self.write_u64(n as u64);
        self.write_u64((n >> 64) as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.state
    }
}

/// Builds [`KeyHasher`]s with one random seed per table.
#[derive(Clone, Copy, Debug)]
pub struct KeyHash {
    seed: u64,
}

impl Default for KeyHash {
    fn default() -> Self {
        // RandomState is seeded from the OS once per process and varied per instance.
        let seed = std::collections::hash_map::RandomState::new().hash_one(0x6e61_7474_u64);
        KeyHash { seed: seed | (1 << 63) }
    }
}

impl BuildHasher for KeyHash {
    type Hasher = KeyHasher;
    #[inline]
    fn build_hasher(&self) -> KeyHasher {
        KeyHasher { seed: 0x9e37_79b9_7f4a_7c15 ^ self.seed, state: self.seed }
    }
}

/// A hash map keyed by values we choose, with [`KeyHash`].
pub type KeyMap<K, V> = HashMap<K, V, KeyHash>;

/// Longest-prefix match from addresses to values.
#[derive(Clone, Debug)]
pub struct PrefixMap<V> {
    /// (length, table) for lengths present, longest first.
    v4: Vec<(u8, KeyMap<u32, V>)>,
    v6: Vec<(u8, KeyMap<u128, V>)>,
    len: usize,
}

impl<V> Default for PrefixMap<V> {
    fn default() -> Self {
        PrefixMap { v4: Vec::new(), v6: Vec::new(), len: 0 }
    }
}

impl<V: Copy> PrefixMap<V> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Insert or replace; returns the value it replaced.
    pub fn insert(&mut self, p: IpPrefix, v: V) -> Option<V> {
        let old = match p.addr {
            IpAddr::V4(a) => table(&mut self.v4, p.len).insert(a.to_bits(), v),
            IpAddr::V6(a) => table(&mut self.v6, p.len).insert(a.to_bits(), v),
        };
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    pub fn remove(&mut self, p: &IpPrefix) -> Option<V> {
        let old = match p.addr {
            IpAddr::V4(a) => remove_from(&mut self.v4, p.len, &a.to_bits()),
            IpAddr::V6(a) => remove_from(&mut self.v6, p.len, &a.to_bits()),
        };
        if old.is_some() {
            self.len -= 1;
        }
        old
    }

    /// The value of the exact prefix.
    pub fn get_exact(&self, p: &IpPrefix) -> Option<V> {
        match p.addr {
            IpAddr::V4(a) => self.v4.iter().find(|(l, _)| *l == p.len)?.1.get(&a.to_bits()).copied(),
            IpAddr::V6(a) => self.v6.iter().find(|(l, _)| *l == p.len)?.1.get(&a.to_bits()).copied(),
        }
    }

    /// The value of the longest prefix containing `a`.
    #[inline]
    pub fn lookup(&self, a: &IpAddr) -> Option<V> {
        match a {
            IpAddr::V4(a) => {
                let a = a.to_bits();
                self.v4.iter().find_map(|(l, t)| t.get(&v4_mask(a, *l)).copied())
            }
            IpAddr::V6(a) => {
                let a = a.to_bits();
                self.v6.iter().find_map(|(l, t)| t.get(&v6_mask(a, *l)).copied())
            }
        }
    }
}

fn table<K: core::hash::Hash + Eq, V>(v: &mut Vec<(u8, KeyMap<K, V>)>, len: u8) -> &mut KeyMap<K, V> {
    let pos = match v.iter().position(|(l, _)| *l <= len) {
        Some(i) if v[i].0 == len => i,
        Some(i) => {
            v.insert(i, (len, KeyMap::default()));
            i
        }
        None => {
            v.push((len, KeyMap::default()));
            v.len() - 1
        }
    };
    &mut v[pos].1
}

fn remove_from<K: core::hash::Hash + Eq, V>(v: &mut Vec<(u8, KeyMap<K, V>)>, len: u8, k: &K) -> Option<V> {
    let i = v.iter().position(|(l, _)| *l == len)?;
    let old = v[i].1.remove(k);
    if v[i].1.is_empty() {
        v.remove(i);
    }
    old
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> IpPrefix {
        s.parse().unwrap()
    }

    fn a(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parse_and_display() {
        assert_eq!(p("10.0.0.0/8").to_string(), "10.0.0.0/8");
        assert_eq!(p("10.1.2.3").to_string(), "10.1.2.3/32");
        assert_eq!(p("2001:db8::/32").to_string(), "2001:db8::/32");
        assert_eq!("10.0.0.1/8".parse::<IpPrefix>(), Err(PrefixError::HostBits { suggestion: p("10.0.0.0/8") }));
        assert_eq!("10.0.0.0/33".parse::<IpPrefix>(), Err(PrefixError::BadLength { max: 32 }));
        assert_eq!("10.0.0/8".parse::<IpPrefix>(), Err(PrefixError::BadAddress));
        assert!(p("0.0.0.0/0").contains(&a("1.2.3.4")));
        assert!(!p("0.0.0.0/0").contains(&a("::1")));
        assert!(p("::/0").contains(&a("::1")));
    }

    #[test]
    fn longest_prefix_wins() {
        let mut m = PrefixMap::new();
        m.insert(p("10.0.0.0/8"), 1);
        m.insert(p("10.1.0.0/16"), 2);
        m.insert(p("10.1.2.3/32"), 3);
        m.insert(p("0.0.0.0/0"), 4);
        m.insert(p("2001:db8::/32"), 5);
        m.insert(p("2001:db8::7/128"), 6);
        assert_eq!(m.lookup(&a("10.1.2.3")), Some(3));
        assert_eq!(m.lookup(&a("10.1.2.4")), Some(2));
        assert_eq!(m.lookup(&a("10.2.0.1")), Some(1));
        assert_eq!(m.lookup(&a("192.0.2.1")), Some(4));
        assert_eq!(m.lookup(&a("2001:db8::7")), Some(6));
        assert_eq!(m.lookup(&a("2001:db8::8")), Some(5));
        assert_eq!(m.lookup(&a("2001:db9::8")), None);
        assert_eq!(m.len(), 6);
        assert_eq!(m.remove(&p("10.1.2.3/32")), Some(3));
        assert_eq!(m.lookup(&a("10.1.2.3")), Some(2));
        assert_eq!(m.insert(p("10.1.0.0/16"), 7), Some(2));
        assert_eq!(m.lookup(&a("10.1.2.3")), Some(7));
        assert_eq!(m.len(), 5);
        assert_eq!(m.get_exact(&p("10.0.0.0/8")), Some(1));
        assert_eq!(m.get_exact(&p("10.0.0.0/9")), None);
    }

    #[test]
    fn selector_sets_match_prefixes() {
        let ps = [p("10.0.0.0/16"), p("192.0.2.7/32"), p("2001:db8::/32"), p("0.0.0.0/0")];
        for n in 0..ps.len() {
            let set = SelectorSet::new(&ps[..n]);
            for addr in ["10.0.5.5", "10.1.0.0", "192.0.2.7", "192.0.2.8", "2001:db8::1", "2001:db9::1", "1.2.3.4"] {
                let addr = a(addr);
                assert_eq!(set.contains(&addr), ps[..n].iter().any(|p| p.contains(&addr)), "{addr} in {:?}", &ps[..n]);
            }
        }
    }

    #[test]
    fn million_hosts() {
        let mut m = PrefixMap::new();
        for i in 0..1_000_000u32 {
            m.insert(IpPrefix::host(IpAddr::V4((0x0a00_0000 + i).into())), i);
        }
        m.insert(p("10.0.0.0/8"), u32::MAX);
        assert_eq!(m.lookup(&a("10.0.0.5")), Some(5));
        assert_eq!(m.lookup(&a("10.15.66.63")), Some(0x0f_423f));
        assert_eq!(m.lookup(&a("10.200.0.0")), Some(u32::MAX));
    }
}
