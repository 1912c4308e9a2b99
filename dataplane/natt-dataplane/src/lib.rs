//! natt-dataplane: the DPDK poll-mode dataplane of the natt headend, as a library so
//! that its DPDK-free parts (dispatch, the shared-table store, the clock) are tested on
//! their own; `main.rs` is the process.
//!
//! - `args`: the command line (EAL arguments, then ours).
//! - `crypto`: the crypto library (`--crypto`).
//! - `setup`: ports, mempool, rings, SA table and dataplane segment: `Shared`.
//! - `dispatch`: which worker owns which SA; a first look at frames.
//! - `prepare`: the SA builder, which makes SAs' runtime state off the workers' cores.
//! - `store`: the engine's `SaStore` over the shared SA table.
//! - `host`: the engine's `Host` (events, reservations) and the TSC clock.
//! - `worker`: the poll loop and its stages.
//! - `report`: statistics as text and JSON.

pub mod args;
pub mod crypto;
pub mod dispatch;
pub mod host;
pub mod prepare;
pub mod report;
pub mod setup;
pub mod store;
pub mod worker;
