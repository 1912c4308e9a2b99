//! Security associations: configuration (`params`, `config`), selectors (`prefix`),
//! per-SA runtime state (`runtime`) and the table that finds them (`table`).

pub mod config;
pub mod params;
pub mod prefix;
pub mod runtime;
pub mod store;
pub mod table;

pub use params::{Algorithm, DfPolicy, Direction, Encap, Key, Lifetime, Mode, SaParams, Selectors};
pub use prefix::IpPrefix;
pub(crate) use runtime::OUTER4_LEN;
pub use runtime::{Endpoint, SaRuntime, SaStats};
pub use store::{CRYPTO_AHEAD, InboundAhead, OutboundAhead, SaStore};
pub use table::{SaEntry, SaTable, TableError};
