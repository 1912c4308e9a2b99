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

    /// Get ready for the crypto of a packet of SA `slot` with `len` bytes to open or
    /// seal, a few packets (`CRYPTO_AHEAD`) before it comes: a store that looks ahead
    /// starts loading the parts of the key that it will read (`AeadKey::hot_spans`),
    /// so that they arrive while the packets before it are opened or sealed, rather
    /// than all at once before the first. Called only while `looks_ahead`; the default
    /// does nothing.
    #[inline]
    fn prepare_crypto(&self, _slot: u32, _len: usize) {}
}

/// How many packets ahead of the one being opened or sealed the engine calls
/// `SaStore::prepare_crypto`: enough that one packet's crypto (50 ns at 64 bytes) and
/// the next few cover a miss to memory (about 100 ns), few enough that the key lines
/// asked for stay well within what the CPU can have in flight.
pub const CRYPTO_AHEAD: usize = 4;

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
