//! natt-dpdk: safe wrappers over the raw DPDK bindings. Each unsafe block says why it is
//! sound. The dataplane crate itself has no unsafe code.
//!
//! - `eal`: initialisation from command-line arguments, lcores, launching workers, TSC.
//! - `port`: port information, configuration and start, RX/TX bursts, statistics, flows.
//! - `mbuf`: mempools, and `Burst`, a fixed array of owned mbufs that frees what it holds.
//! - `ring`: single-producer single-consumer rings of mbufs between workers.
//! - `prefetch`: cache prefetch hints, for stages that look ahead across a burst.
//! - `telemetry`: commands for DPDK's telemetry socket.

pub mod eal;
pub mod mbuf;
pub mod port;
pub mod prefetch;
pub mod ring;
pub mod telemetry;

/// A DPDK call failed.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {detail}")]
pub struct DpdkError {
    pub what: String,
    pub detail: String,
}

impl DpdkError {
    pub(crate) fn new(what: impl Into<String>, detail: impl Into<String>) -> Self {
        DpdkError { what: what.into(), detail: detail.into() }
    }

    /// From a negative errno.
    pub(crate) fn errno(what: impl Into<String>, rc: i32) -> Self {
        Self::new(what, strerror(-rc))
    }
}

/// DPDK's description of an errno.
pub fn strerror(e: i32) -> String {
    // SAFETY: rte_strerror returns a pointer to a static or thread-local NUL-terminated
    // string, valid until the next call on this thread; we copy it at once.
    unsafe { std::ffi::CStr::from_ptr(dpdk_sys::rte_strerror(e)).to_string_lossy().into_owned() }
}
