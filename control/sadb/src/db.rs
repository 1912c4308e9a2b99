//! An attached SA segment: its header checked against the layout this build expects,
//! and typed access to records and tables. Shared by the writer and the readers.

use crate::index::Table;
use crate::layout::*;
use crate::map::Mapping;
use core::sync::atomic::AtomicU64;
use core::sync::atomic::Ordering::{Acquire, Relaxed};
use natt_engine::sa::Direction;
use std::path::{Path, PathBuf};

/// Why a segment could not be attached. Each says what was found and what was expected.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("{path}: no such segment; start natt-control (it creates the SA table) or check the name")]
    NotFound { path: PathBuf },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a natt segment (magic {found:#018x}, expected {expected:#018x})")]
    Magic { path: PathBuf, found: u64, expected: u64 },
    #[error(
        "{path}: ABI version {found}, this build uses {expected}; run natt-control and the dataplane from the same release"
    )]
    Abi { path: PathBuf, found: u32, expected: u32 },
    #[error("{path}: {what} is {found}, expected {expected}; the segment is corrupt or from another build")]
    Mismatch { path: PathBuf, what: &'static str, found: u64, expected: u64 },
    #[error("{path}: {what}; the segment is corrupt")]
    Corrupt { path: PathBuf, what: String },
    #[error("{path}: another natt-control process holds the write lock")]
    Locked { path: PathBuf },
    #[error("{path} exists already; remove it or attach to it instead")]
    Exists { path: PathBuf },
}

impl AttachError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        if source.kind() == std::io::ErrorKind::NotFound {
            AttachError::NotFound { path: path.to_owned() }
        } else {
            AttachError::Io { path: path.to_owned(), source }
        }
    }
}

/// An attached SA segment.
pub struct Sadb {
    pub(crate) map: Mapping,
    pub(crate) layout: SadbLayout,
    pub(crate) seed: u64,
    pub(crate) path: PathBuf,
}

impl Sadb {
    /// Check a mapped segment's header against the layout this build computes.
    pub(crate) fn check(map: Mapping, path: &Path) -> Result<Sadb, AttachError> {
        let p = || path.to_owned();
        let h: &SadbHeader =
            map.get(0).ok_or_else(|| AttachError::Corrupt { path: p(), what: "too small for a header".into() })?;
        let magic = h.magic.load(Acquire);
        if magic != SADB_MAGIC {
            return Err(AttachError::Magic { path: p(), found: magic, expected: SADB_MAGIC });
        }
        let abi = h.abi.load(Relaxed);
        if abi != ABI_VERSION {
            return Err(AttachError::Abi { path: p(), found: abi, expected: ABI_VERSION });
        }
        let mismatch = |what, found: u64, expected: u64| AttachError::Mismatch { path: p(), what, found, expected };
        let hs = u64::from(h.header_size.load(Relaxed));
        if hs != core::mem::size_of::<SadbHeader>() as u64 {
            return Err(mismatch("header size", hs, core::mem::size_of::<SadbHeader>() as u64));
        }
        let rs = u64::from(h.record_size.load(Relaxed));
        if rs != RECORD_SIZE as u64 {
            return Err(mismatch("record size", rs, RECORD_SIZE as u64));
        }
        let cap = h.capacity.load(Relaxed);
        let spi = h.spi_buckets.load(Relaxed);
        let lpm = h.lpm_buckets.load(Relaxed);
        let layout = SadbLayout::new(cap as usize, spi as usize, lpm as usize).ok_or_else(|| AttachError::Corrupt {
            path: p(),
            what: format!("capacity {cap}, {spi} SPI buckets, {lpm} LPM buckets is not a valid layout"),
        })?;
        let total = h.total_size.load(Relaxed);
        if total != layout.total as u64 {
            return Err(mismatch("declared size", total, layout.total as u64));
        }
        if map.len() != layout.total {
            return Err(mismatch("file size", map.len() as u64, layout.total as u64));
        }
        let seed = h.hash_seed.load(Relaxed);
        Ok(Sadb { map, layout, seed, path: path.to_owned() })
    }

    #[inline]
    pub fn header(&self) -> &SadbHeader {
        self.map.get(0).expect("checked at attach")
    }

    pub fn layout(&self) -> &SadbLayout {
        &self.layout
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// (size now, size mapped) if another process truncated the file under us: what lay
    /// past its end reads as zeros here (no SA there is visible any more).
    pub fn shrunk(&self) -> Option<(u64, u64)> {
        self.map.shrunk()
    }

    pub fn capacity(&self) -> u32 {
        self.layout.capacity as u32
    }

    /// The record in `slot`, if the slot exists.
    #[inline]
    pub fn record(&self, slot: u32) -> Option<&SaRecord> {
        if slot as usize >= self.layout.capacity {
            return None;
        }
        self.map.get(self.layout.records + slot as usize * RECORD_SIZE)
    }

    #[inline]
    pub(crate) fn spi_table(&self, dir: Direction, which: usize) -> Table<'_> {
        let off = match dir {
            Direction::Inbound => self.layout.spi_in[which & 1],
            Direction::Outbound => self.layout.spi_out[which & 1],
        };
        Table::new(self.map.slice(off, self.layout.spi_buckets).expect("in layout")).expect("power of two")
    }

    #[inline]
    pub(crate) fn lpm_table(&self, which: usize) -> Table<'_> {
        Table::new(self.map.slice(self.layout.lpm[which & 1], self.layout.lpm_buckets).expect("in layout"))
            .expect("power of two")
    }

    /// The journal of added records (see `JOURNAL_LEN`).
    #[inline]
    pub(crate) fn journal(&self) -> &[AtomicU64] {
        self.map.slice(self.layout.journal, JOURNAL_LEN).expect("in layout")
    }

    pub fn created_ns(&self) -> u64 {
        self.header().created_ns.load(Relaxed)
    }
}

/// Bit of `SadbHeader::active` for each table.
pub(crate) fn active_bit(t: TableId) -> u32 {
    match t {
        TableId::SpiIn => 1,
        TableId::SpiOut => 2,
        TableId::Lpm => 4,
    }
}

/// The three kinds of index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TableId {
    SpiIn,
    SpiOut,
    Lpm,
}

impl TableId {
    pub const ALL: [TableId; 3] = [TableId::SpiIn, TableId::SpiOut, TableId::Lpm];

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn spi(dir: Direction) -> TableId {
        match dir {
            Direction::Inbound => TableId::SpiIn,
            Direction::Outbound => TableId::SpiOut,
        }
    }
}
