//! Where the engine finds SAs and keeps their runtime state. The engine's own `SaTable`
//! is one store (the offline tool and tests use it); the dataplane's store reads SAs
//! from the shared table written by the control process.

use super::runtime::Endpoint;
use super::table::{SaEntry, SaTable};
use crate::crypto::AeadKey;
use crate::reason::DropReason;
use core::net::IpAddr;

/// An inbound packet as a store looks ahead for it.
#[derive(Clone, Copy, Debug, Default)]
pub struct InboundAhead {
    pub spi: u32,
    /// The low 32 bits of the sequence number, as received.
    pub seq: u32,
    /// Bytes the crypto will open.
    pub len: u32,
}

/// An outbound packet as a store looks ahead for it.
#[derive(Clone, Copy, Debug)]
pub struct OutboundAhead {
    /// The inner destination.
    pub dst: IpAddr,
    /// Bytes the crypto will seal.
    pub len: u32,
}

/// SAs and their runtime state, by slot.
pub trait SaStore<K: AeadKey> {
    /// The inbound SA with this SPI, or why there is none.
    fn inbound(&mut self, spi: u32) -> Result<u32, DropReason>;
    /// The outbound SA whose selectors cover `dst` most specifically, or why there is none.
    fn outbound(&mut self, dst: &IpAddr) -> Result<u32, DropReason>;
    fn entry(&self, slot: u32) -> Option<&SaEntry<K>>;
    fn entry_mut(&mut self, slot: u32) -> Option<&mut SaEntry<K>>;
    /// Point outbound SA `spi` at the peer's new NAT endpoint. Returns whether the SA
    /// exists (it may be updated later, by whoever owns it).
    fn follow_nat(&mut self, spi: u32, to: Endpoint) -> bool;

    /// Whether `look_ahead_inbound` and `look_ahead_outbound` do anything now (if not,
    /// the engine does not gather their arguments). The default: no.
    #[inline]
    fn looks_ahead(&self) -> bool {
        false
    }

    /// Get ready for the lookups of a burst: the SPI, the sequence number as received
    /// and the bytes to open (`AeadKey::hot_spans`) of its inbound ESP packets, in
    /// order. A store whose SAs may be far from the CPU starts loading what `inbound`
    /// and the stages after it will read, so that the burst's cache misses overlap
    /// rather than follow one another. Changes nothing a lookup returns; the default
    /// does nothing.
    #[inline]
    fn look_ahead_inbound(&mut self, _keys: &[InboundAhead]) {}

    /// The same for the outbound lookups of a burst: the inner destinations of its
    /// packets and the bytes each will seal, in order.
    #[inline]
    fn look_ahead_outbound(&mut self, _keys: &[OutboundAhead]) {}
}

impl<K: AeadKey> SaStore<K> for SaTable<K> {
    #[inline]
    fn inbound(&mut self, spi: u32) -> Result<u32, DropReason> {
        self.inbound_slot(spi).ok_or(DropReason::NoSa)
    }

    #[inline]
    fn outbound(&mut self, dst: &IpAddr) -> Result<u32, DropReason> {
        self.select_outbound(dst).ok_or(DropReason::NoOutboundSa)
    }

    #[inline]
    fn entry(&self, slot: u32) -> Option<&SaEntry<K>> {
        self.get(slot)
    }

    #[inline]
    fn entry_mut(&mut self, slot: u32) -> Option<&mut SaEntry<K>> {
        self.get_mut(slot)
    }

    fn follow_nat(&mut self, spi: u32, to: Endpoint) -> bool {
        let Some(out) = self.outbound_slot(spi).and_then(|s| self.get_mut(s)) else { return false };
        out.rt.follow_nat(to)
    }
}
