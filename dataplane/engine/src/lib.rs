//! natt-engine: the protocol core of the NAT-T IPsec headend.
//!
//! ESP in UDP (RFC 3948), AES-GCM (RFC 4106), ChaCha20-Poly1305 (RFC 7634) and GMAC
//! (RFC 4543) ESP (RFC 4303) with anti-replay and ESN, over bursts of packet buffers,
//! in place. No I/O, no DPDK, no unsafe code: the dataplane and the offline tool drive
//! it, and tests drive it directly.
//!
//! - `wire`: zero-copy header views.
//! - `sa`: SA configuration, validation, runtime state and lookup tables.
//! - `replay`, `reassembly`, `crypto`: the pieces a packet passes through.
//! - `inbound`, `outbound`: the staged burst pipelines on [`Engine`]; `icmp_error`: the
//!   ICMP errors about packets too big for the tunnel or out of TTL; `mss`: TCP MSS
//!   clamping.
//! - `reason`: the one list of drop and punt reasons; `counters`, `event`: what the
//!   engine reports.

#![forbid(unsafe_code)]

pub mod buf;
pub mod counters;
pub mod crypto;
pub mod engine;
pub mod event;
pub mod icmp_error;
pub mod inbound;
pub mod mss;
pub mod outbound;
pub mod reason;
pub mod reassembly;
pub mod replay;
pub mod sa;
pub mod wire;

pub use buf::{Frame, PktBuf, RxChecksum};
pub use counters::Counters;
pub use engine::{Engine, EngineConfig, MAX_BURST, TxChecksumOffload};
pub use event::{Event, EventKind, Host};
pub use icmp_error::IcmpConfig;
pub use inbound::{InResult, InVerdict, Reassembly};
pub use mss::MssClamp;
pub use outbound::{OutResult, OutVerdict, TxChecksum};
pub use reason::{DropReason, PuntReason};
pub use sa::{Direction, SaParams};
