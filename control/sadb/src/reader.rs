//! The dataplane's side of the SA segment: attach read-only, take a snapshot once per
//! burst (the published generation and the active tables), and look SAs up without a
//! lock or a syscall. Everything read is bounds-checked; a record is used only if it is
//! live and visible at the snapshot's generation, and decoded only after validation.

use crate::db::{AttachError, Sadb, TableId, active_bit};
use crate::index::Chain;
use crate::layout::*;
use crate::map::Mapping;
use crate::record::{LpmKey, RecordError, decode, has_peer_selector};
use core::net::IpAddr;
use core::sync::atomic::Ordering::{Acquire, Relaxed};
use natt_engine::sa::{Direction, SaParams};
use std::path::Path;

/// A read-only attachment to an SA segment.
pub struct Reader {
    db: Sadb,
}

/// What a burst works with: one generation and one set of tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub generation: u64,
    active: u32,
    lpm_v4: u64,
    lpm_v6: [u64; 3],
}

/// A visible SA: its slot, and the uid that tells its runtime state apart from the
/// previous occupant of the slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Found {
    pub slot: u32,
    pub uid: u64,
}

impl Reader {
    /// Attach to `dir/<name>.sadb` read-only, refusing a segment that does not match
    /// this build.
    pub fn attach(dir: &Path, name: &str) -> Result<Reader, AttachError> {
        let path = crate::map::segment_path(dir, name, "sadb");
        let map = Mapping::open_ro(&path).map_err(|e| AttachError::io(&path, e))?;
        Ok(Reader { db: Sadb::check(map, &path)? })
    }

    pub fn db(&self) -> &Sadb {
        &self.db
    }

    /// Read the published generation, the active tables and the LPM lengths.
    #[inline]
    pub fn snapshot(&self) -> Snapshot {
        let h = self.db.header();
        let generation = h.generation.0.load(Acquire);
        Snapshot {
            generation,
            active: h.active.load(Acquire),
            lpm_v4: h.lpm_len_v4.load(Acquire),
            lpm_v6: [h.lpm_len_v6[0].load(Acquire), h.lpm_len_v6[1].load(Acquire), h.lpm_len_v6[2].load(Acquire)],
        }
    }

    #[inline]
    fn which(s: &Snapshot, t: TableId) -> usize {
        usize::from(s.active & active_bit(t) != 0)
    }

    /// Is the record in `slot` a live SA of `dir` visible at `g`? Returns its uid.
    #[inline]
    fn visible(&self, slot: u32, dir: Direction, g: u64) -> Option<(&SaRecord, u64)> {
        let r = self.db.record(slot)?;
        if r.state.load(Acquire) != state::LIVE {
            return None;
        }
        let from = r.from_gen.load(Acquire);
        let until = r.until_gen.load(Acquire);
        if !(from <= g && g < until) {
            return None;
        }
        let outbound = r.flags.load(Relaxed) & flag::OUTBOUND != 0;
        if outbound != (dir == Direction::Outbound) {
            return None;
        }
        Some((r, r.uid.load(Relaxed)))
    }

    #[inline]
    fn by_spi(&self, s: &Snapshot, dir: Direction, spi: u32) -> Option<Found> {
        let t = self.db.spi_table(dir, Self::which(s, TableId::spi(dir)));
        let h = spi_hash(self.db.seed, spi);
        t.find(h, spi, |slot| {
            let (r, uid) = self.visible(slot, dir, s.generation)?;
            (r.spi.load(Relaxed) == spi).then_some(Found { slot, uid })
        })
    }

    /// Where a lookup of `spi` goes: its probe chain, whose entries for it carry the SPI
    /// as their tag. For looking ahead across a burst (prefetch `Chain::first`) and for a
    /// worker that trusts the state of the slot `Chain::named` names.
    #[inline]
    pub fn spi_chain(&self, s: &Snapshot, dir: Direction, spi: u32) -> Chain<'_> {
        Chain {
            table: self.db.spi_table(dir, Self::which(s, TableId::spi(dir))),
            h: spi_hash(self.db.seed, spi),
            tag: spi,
        }
    }

    /// The same for an outbound lookup of `dst`, at the longest prefix length present
    /// (most SAs select single client addresses), and that length; `None` if no length
    /// is.
    #[inline]
    pub fn lpm_chain(&self, s: &Snapshot, dst: &IpAddr) -> Option<(Chain<'_>, u32)> {
        let len = match dst {
            IpAddr::V4(_) => (s.lpm_v4 & ((1u64 << 33) - 1)).checked_ilog2()?,
            IpAddr::V6(_) => {
                if s.lpm_v6[2] & 1 != 0 {
                    128
                } else if s.lpm_v6[1] != 0 {
                    64 + s.lpm_v6[1].ilog2()
                } else {
                    s.lpm_v6[0].checked_ilog2()?
                }
            }
        };
        let h = LpmKey::masked(dst, len as u8).hash(self.db.seed);
        Some((Chain { table: self.db.lpm_table(Self::which(s, TableId::Lpm)), h, tag: (h >> 32) as u32 }, len))
    }

    /// The inbound SA with this SPI.
    #[inline]
    pub fn inbound(&self, s: &Snapshot, spi: u32) -> Option<Found> {
        self.by_spi(s, Direction::Inbound, spi)
    }

    /// The outbound SA with this SPI (for NAT updates of a pair).
    pub fn outbound_by_spi(&self, s: &Snapshot, spi: u32) -> Option<Found> {
        self.by_spi(s, Direction::Outbound, spi)
    }

    /// The outbound SA whose peer selectors cover `dst` most specifically.
    #[inline]
    pub fn outbound(&self, s: &Snapshot, dst: &IpAddr) -> Option<Found> {
        let t = self.db.lpm_table(Self::which(s, TableId::Lpm));
        let try_len = |len: u8| {
            let key = LpmKey::masked(dst, len);
            let h = key.hash(self.db.seed);
            t.find(h, (h >> 32) as u32, |slot| {
                let (r, uid) = self.visible(slot, Direction::Outbound, s.generation)?;
                has_peer_selector(r, &key).then_some(Found { slot, uid })
            })
        };
        match dst {
            IpAddr::V4(_) => {
                let mut bits = s.lpm_v4 & ((1u64 << 33) - 1);
                while bits != 0 {
                    let len = 63 - bits.leading_zeros();
                    bits &= !(1u64 << len);
                    if let Some(f) = try_len(len as u8) {
                        return Some(f);
                    }
                }
                None
            }
            IpAddr::V6(_) => {
                for w in (0..3).rev() {
                    let mut bits = s.lpm_v6[w];
                    if w == 2 {
                        bits &= 1; // length 128 only
                    }
                    while bits != 0 {
                        let b = 63 - bits.leading_zeros();
                        bits &= !(1u64 << b);
                        if let Some(f) = try_len((w as u32 * 64 + b) as u8) {
                            return Some(f);
                        }
                    }
                }
                None
            }
        }
    }

    /// The SA installed now with this direction and SPI, decoded (keys included: the
    /// caller must not print them).
    pub fn installed(&self, dir: Direction, spi: u32) -> Option<crate::writer::Installed> {
        let s = self.snapshot();
        let f = match dir {
            Direction::Inbound => self.inbound(&s, spi),
            Direction::Outbound => self.outbound_by_spi(&s, spi),
        }?;
        let r = self.db.record(f.slot)?;
        let params = decode(r).ok()?;
        let at = r.remove_at_ns.load(Relaxed);
        Some(crate::writer::Installed {
            params,
            slot: f.slot,
            uid: f.uid,
            generation: r.from_gen.load(Relaxed),
            remove_at_ns: (at != 0).then_some(at),
        })
    }

    /// The SPI of the SA in `slot` (to find the worker that owns it).
    #[inline]
    pub fn spi(&self, slot: u32) -> Option<u32> {
        self.db.record(slot).map(|r| r.spi.load(Relaxed))
    }

    /// The direction of the record in `slot`, from its flags (no decoding; untrusted).
    #[inline]
    pub fn direction(&self, slot: u32) -> Option<Direction> {
        self.db
            .record(slot)
            .map(|r| if r.flags.load(Relaxed) & flag::OUTBOUND != 0 { Direction::Outbound } else { Direction::Inbound })
    }

    /// The uid now in `slot` (to check a cached runtime against).
    #[inline]
    pub fn uid(&self, slot: u32) -> Option<u64> {
        self.db.record(slot).map(|r| r.uid.load(Relaxed))
    }

    /// How many records the writer has ever added to the journal.
    #[inline]
    pub fn journal_head(&self) -> u64 {
        self.db.header().journal_head.load(Acquire)
    }

    /// The `n`th journal entry, if the journal still holds it (the writer overwrites
    /// entries `JOURNAL_LEN` behind its head). Untrusted like everything here: the caller
    /// checks an added record's uid before use.
    pub fn journal_entry(&self, n: u64) -> Option<Journaled> {
        let head = self.journal_head();
        if n >= head || head - n > JOURNAL_LEN as u64 {
            return None;
        }
        let e = self.db.journal()[n as usize % JOURNAL_LEN].load(Acquire);
        // Still there after the read: not overwritten while we looked.
        if self.journal_head() - n > JOURNAL_LEN as u64 {
            return None;
        }
        Some(Journaled::of(e))
    }

    /// Whether what a worker found in `slot` (the record with `uid`, visible at the
    /// snapshot it looked up in) may be trusted until the journal names the slot:
    /// the record is live, still has that uid, and has no end, not even in a batch not
    /// yet published. Any later change to its visibility starts with an end, which the
    /// writer journals after setting it; so a worker that read the journal's head before
    /// this check (at its snapshot) and walks the journal at each new snapshot learns of
    /// the change before any snapshot in which it is visible.
    #[inline]
    pub fn trustable(&self, slot: u32, uid: u64) -> bool {
        self.db.record(slot).is_some_and(|r| {
            r.until_gen.load(Acquire) == FOREVER && r.state.load(Acquire) == state::LIVE && r.uid.load(Acquire) == uid
        })
    }

    /// Whether `slot` holds a live record (visible now, or in a batch about to be
    /// published) with this uid.
    pub fn is_live(&self, slot: u32, uid: u64) -> bool {
        self.db.record(slot).is_some_and(|r| r.state.load(Acquire) == state::LIVE && r.uid.load(Acquire) == uid)
    }

    /// Decode and validate the SA in `slot`. The record is untrusted: any inconsistency
    /// is an error, never a panic.
    pub fn decode(&self, slot: u32) -> Result<SaParams, RecordError> {
        let r = self.db.record(slot).ok_or_else(|| RecordError::Invalid(format!("slot {slot} out of range")))?;
        decode(r)
    }
}
