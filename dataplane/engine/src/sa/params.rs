//! The validated configuration of one SA: what the control plane installs and the
//! engine turns into runtime state. Parsing and validation live in `config`.

use super::prefix::IpPrefix;
use core::fmt;
use core::net::IpAddr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    pub const fn name(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    Tunnel,
    Transport,
}

impl Mode {
    pub const fn name(self) -> &'static str {
        match self {
            Mode::Tunnel => "tunnel",
            Mode::Transport => "transport",
        }
    }
}

/// ESP transforms. All have an 8-byte explicit IV, a 4-byte salt and a 16-byte ICV.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// AES-GCM with a 16-octet ICV, 128-bit key (RFC 4106).
    Aes128Gcm,
    /// AES-GCM with a 16-octet ICV, 256-bit key (RFC 4106).
    Aes256Gcm,
    /// ChaCha20-Poly1305 (RFC 7634).
    ChaCha20Poly1305,
    /// ENCR_NULL_AUTH_AES_GMAC, 128-bit key: integrity only (RFC 4543).
    Aes128Gmac,
    /// ENCR_NULL_AUTH_AES_GMAC, 256-bit key: integrity only (RFC 4543).
    Aes256Gmac,
}

impl Algorithm {
    pub const ALL: &'static [Algorithm] = &[
        Algorithm::Aes128Gcm,
        Algorithm::Aes256Gcm,
        Algorithm::ChaCha20Poly1305,
        Algorithm::Aes128Gmac,
        Algorithm::Aes256Gmac,
    ];

    /// The configuration name.
    pub const fn name(self) -> &'static str {
        match self {
            Algorithm::Aes128Gcm => "aes128-gcm",
            Algorithm::Aes256Gcm => "aes256-gcm",
            Algorithm::ChaCha20Poly1305 => "chacha20-poly1305",
            Algorithm::Aes128Gmac => "aes128-gmac",
            Algorithm::Aes256Gmac => "aes256-gmac",
        }
    }

    /// Names accepted in configuration, including strongSwan proposal keywords.
    pub fn from_name(s: &str) -> Option<Self> {
        Some(match s.to_ascii_lowercase().as_str() {
            "aes128-gcm" | "aes128gcm16" | "aes-128-gcm" | "aes128-gcm16" => Algorithm::Aes128Gcm,
            "aes256-gcm" | "aes256gcm16" | "aes-256-gcm" | "aes256-gcm16" => Algorithm::Aes256Gcm,
            "chacha20-poly1305" | "chacha20poly1305" => Algorithm::ChaCha20Poly1305,
            "aes128-gmac" | "aes128gmac" => Algorithm::Aes128Gmac,
            "aes256-gmac" | "aes256gmac" => Algorithm::Aes256Gmac,
            _ => return None,
        })
    }

    /// Key length in bytes, without the salt.
    pub const fn key_len(self) -> usize {
        match self {
            Algorithm::Aes128Gcm | Algorithm::Aes128Gmac => 16,
            Algorithm::Aes256Gcm | Algorithm::Aes256Gmac | Algorithm::ChaCha20Poly1305 => 32,
        }
    }

    /// Integrity only: the payload travels in clear and is covered by the ICV.
    pub const fn is_gmac(self) -> bool {
        matches!(self, Algorithm::Aes128Gmac | Algorithm::Aes256Gmac)
    }
}

/// Key bytes (without the salt). Never printed; zeroed when dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct Key(Vec<u8>);

impl Key {
    pub fn new(bytes: Vec<u8>) -> Self {
        Key(bytes)
    }

    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key(<{} bytes redacted>)", self.0.len())
    }
}

impl Drop for Key {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

/// UDP encapsulation ports (RFC 3948). `peer_port` is where the peer's NAT mapping was
/// last seen; the engine follows it when NAT mappings change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Encap {
    pub local_port: u16,
    pub peer_port: u16,
}

/// How the outer IPv4 DF bit is set on encapsulation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DfPolicy {
    /// From the inner IPv4 header; set for inner IPv6 (which never fragments in transit).
    Copy,
    Set,
    Clear,
}

impl DfPolicy {
    pub const fn name(self) -> &'static str {
        match self {
            DfPolicy::Copy => "copy",
            DfPolicy::Set => "set",
            DfPolicy::Clear => "clear",
        }
    }
}

/// Soft (rekey due) and hard (expire) limits; `None` is unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Lifetime {
    pub soft_bytes: Option<u64>,
    pub hard_bytes: Option<u64>,
    pub soft_packets: Option<u64>,
    pub hard_packets: Option<u64>,
}

/// Traffic selectors of a tunnel-mode SA, as address prefixes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Selectors {
    /// Addresses behind this headend (inner destination inbound, inner source outbound).
    pub local: Vec<IpPrefix>,
    /// Addresses of the remote client (inner source inbound, inner destination outbound).
    pub peer: Vec<IpPrefix>,
}

/// The largest anti-replay window accepted.
pub const MAX_REPLAY_WINDOW: u32 = 65536;
/// The smallest non-zero anti-replay window accepted.
pub const MIN_REPLAY_WINDOW: u32 = 64;
/// RFC 4303 §3.4.3's recommended default.
pub const DEFAULT_REPLAY_WINDOW: u32 = 64;

/// One SA, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SaParams {
    pub name: String,
    pub spi: u32,
    pub direction: Direction,
    pub mode: Mode,
    pub algorithm: Algorithm,
    pub key: Key,
    pub salt: [u8; 4],
    /// Our outer address.
    pub local: IpAddr,
    /// The peer's outer address (its NAT's public address when behind one).
    pub peer: IpAddr,
    /// UDP encapsulation, or `None` for plain ESP (IP protocol 50).
    pub encap: Option<Encap>,
    /// Anti-replay window in packets; 0 disables anti-replay (inbound only).
    pub replay_window: u32,
    pub esn: bool,
    pub selectors: Selectors,
    pub lifetime: Lifetime,
    /// Inbound: follow the peer's NAT mapping in the paired outbound SA.
    pub nat_update: bool,
    /// Inbound: the outbound SA of the same CHILD_SA, whose endpoint follows NAT changes.
    pub paired_spi: Option<u32>,
    /// Outbound: outer TTL / hop limit.
    pub ttl: u8,
    /// Outbound: outer DF bit.
    pub df: DfPolicy,
    /// Highest sequence number already sent (outbound) or received (inbound).
    pub last_seq: u64,
    /// Outbound: pad payload and trailer to a multiple of this many bytes (4, 8 or 16).
    pub pad_to: u8,
}

impl SaParams {
    /// The prefixes an outbound SA is selected by: its peer selectors, or in transport
    /// mode without selectors the peer's address.
    pub fn outbound_keys(&self) -> Vec<IpPrefix> {
        if self.selectors.peer.is_empty() && self.mode == Mode::Transport {
            vec![IpPrefix::host(self.peer)]
        } else {
            self.selectors.peer.clone()
        }
    }

    /// Largest usable sequence number: 2^32-1, or 2^64-1 with ESN.
    pub fn seq_max(&self) -> u64 {
        if self.esn { u64::MAX } else { u64::from(u32::MAX) }
    }
}
