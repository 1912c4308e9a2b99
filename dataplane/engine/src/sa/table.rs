//! The SA table of one engine: slots of SA state found by inbound SPI, by outbound SPI,
//! and by the outbound traffic selectors (longest prefix match on the destination).

use super::params::{Direction, SaParams};
use super::prefix::{IpPrefix, KeyMap, PrefixMap};
use super::runtime::SaRuntime;
use crate::crypto::{Backend, KeyError};
use core::net::IpAddr;

/// An installed SA: its runtime state and the configuration it came from.
pub struct SaEntry<K> {
    pub rt: SaRuntime<K>,
    pub params: Box<SaParams>,
}

/// Why an SA could not be installed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    #[error("{direction} SPI 0x{spi:08x} is already installed")]
    DuplicateSpi { direction: &'static str, spi: u32 },
    #[error("selector {prefix} already selects outbound SA 0x{owner:08x}")]
    SelectorTaken { prefix: IpPrefix, owner: u32 },
    #[error("{0}")]
    Key(#[from] KeyError),
}

/// SAs by slot number, with the indexes that find them.
pub struct SaTable<K> {
    slots: Vec<Option<SaEntry<K>>>,
    free: Vec<u32>,
    inbound: KeyMap<u32, u32>,
    outbound: KeyMap<u32, u32>,
    selectors: PrefixMap<u32>,
}

impl<K> Default for SaTable<K> {
    fn default() -> Self {
        SaTable {
            slots: Vec::new(),
            free: Vec::new(),
            inbound: KeyMap::default(),
            outbound: KeyMap::default(),
            selectors: PrefixMap::new(),
        }
    }
}

impl<K: crate::crypto::AeadKey> SaTable<K> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.inbound.len() + self.outbound.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Install an SA. Fails, changing nothing, on a duplicate SPI or selector.
    pub fn insert<B: Backend<Key = K>>(&mut self, p: SaParams) -> Result<u32, TableError> {
        let keys = match p.direction {
            Direction::Inbound => {
                if self.inbound.contains_key(&p.spi) {
                    return Err(TableError::DuplicateSpi { direction: "inbound", spi: p.spi });
                }
                Vec::new()
            }
            Direction::Outbound => {
                if self.outbound.contains_key(&p.spi) {
                    return Err(TableError::DuplicateSpi { direction: "outbound", spi: p.spi });
                }
                let keys = p.outbound_keys();
                for k in &keys {
                    if let Some(owner) = self.selectors.get_exact(k) {
                        let owner = self.slots[owner as usize].as_ref().map_or(0, |e| e.rt.spi);
                        return Err(TableError::SelectorTaken { prefix: *k, owner });
                    }
                }
                keys
            }
        };
        let rt = SaRuntime::new::<B>(&p)?;
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.slots.push(None);
                (self.slots.len() - 1) as u32
            }
        };
        match p.direction {
            Direction::Inbound => {
                self.inbound.insert(p.spi, slot);
            }
            Direction::Outbound => {
                self.outbound.insert(p.spi, slot);
                for k in keys {
                    self.selectors.insert(k, slot);
                }
            }
        }
        self.slots[slot as usize] = Some(SaEntry { rt, params: Box::new(p) });
        Ok(slot)
    }

    /// Remove an SA; returns its configuration.
    pub fn remove(&mut self, direction: Direction, spi: u32) -> Option<SaParams> {
        let slot = match direction {
            Direction::Inbound => self.inbound.remove(&spi)?,
            Direction::Outbound => self.outbound.remove(&spi)?,
        };
        let e = self.slots[slot as usize].take()?;
        if direction == Direction::Outbound {
            for k in e.params.outbound_keys() {
                if self.selectors.get_exact(&k) == Some(slot) {
                    self.selectors.remove(&k);
                }
            }
        }
        self.free.push(slot);
        Some(*e.params)
    }

    #[inline]
    pub fn inbound_slot(&self, spi: u32) -> Option<u32> {
        self.inbound.get(&spi).copied()
    }

    #[inline]
    pub fn outbound_slot(&self, spi: u32) -> Option<u32> {
        self.outbound.get(&spi).copied()
    }

    /// The outbound SA whose selectors cover `dst` most specifically.
    #[inline]
    pub fn select_outbound(&self, dst: &IpAddr) -> Option<u32> {
        self.selectors.lookup(dst)
    }

    #[inline]
    pub fn get(&self, slot: u32) -> Option<&SaEntry<K>> {
        self.slots.get(slot as usize)?.as_ref()
    }

    #[inline]
    pub fn get_mut(&mut self, slot: u32) -> Option<&mut SaEntry<K>> {
        self.slots.get_mut(slot as usize)?.as_mut()
    }

    pub fn find(&self, direction: Direction, spi: u32) -> Option<&SaEntry<K>> {
        let slot = match direction {
            Direction::Inbound => self.inbound_slot(spi)?,
            Direction::Outbound => self.outbound_slot(spi)?,
        };
        self.get(slot)
    }

    pub fn iter(&self) -> impl Iterator<Item = &SaEntry<K>> {
        self.slots.iter().flatten()
    }
}
