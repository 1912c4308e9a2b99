//! The SA builder: what flows through it is every record added to the shared SA table.
//! Off the workers' cores, it decodes each one, expands its key and allocates its
//! runtime state, and hands the result to the worker that owns the SA through a
//! lock-free lane; workers hand back what they no longer need, and it is freed here. So
//! a worker neither allocates nor frees when an SA appears, is replaced or goes away.
//!
//! New records are found through the table's journal (see `natt_sadb::layout::
//! JOURNAL_LEN`); at start, and whenever the journal has moved on by more than it
//! holds, the builder scans the whole table instead. A worker that meets an SA before
//! its state arrives builds it itself, and counts it (`sa_built_here`).

use crossbeam_queue::ArrayQueue;
use natt_engine::crypto::{AeadKey, Backend};
use natt_engine::sa::{Direction, SaEntry, SaParams, SaRuntime};
use natt_sadb::Reader;
use natt_sadb::layout::{Journaled, journal_uid};

use crate::dispatch::Owners;

/// An SA's runtime state, built for the record with this uid in this slot.
pub struct Built<K> {
    pub(crate) slot: u32,
    pub(crate) uid: u64,
    pub(crate) entry: SaEntry<K>,
}

impl<K: AeadKey> Built<K> {
    /// The runtime state of SA `p`, read from the record with `uid` in `slot`; `None`
    /// if its key cannot be expanded.
    pub fn new<B: Backend<Key = K>>(slot: u32, uid: u64, p: SaParams) -> Option<Box<Self>> {
        let rt = SaRuntime::new::<B>(&p).ok()?;
        Some(Box::new(Built { slot, uid, entry: SaEntry { rt, params: Box::new(p) } }))
    }
}

impl<K> Built<K> {
    pub fn slot(&self) -> u32 {
        self.slot
    }

    pub fn uid(&self) -> u64 {
        self.uid
    }

    pub fn entry(&self) -> &SaEntry<K> {
        &self.entry
    }
}

/// The lanes between the builder and the workers: per worker, one of built states and
/// one of states to free.
pub struct Lanes<K> {
    pub(crate) ready: Vec<ArrayQueue<Box<Built<K>>>>,
    pub(crate) spent: Vec<ArrayQueue<Box<Built<K>>>>,
}

impl<K> Lanes<K> {
    /// Lanes for `workers` workers, each holding up to `depth` states either way.
    pub fn new(workers: usize, depth: usize) -> Self {
        Self::with_depths(workers, depth, depth)
    }

    /// Lanes `ready` deep towards the workers, `spent` deep back.
    pub fn with_depths(workers: usize, ready: usize, spent: usize) -> Self {
        Lanes {
            ready: (0..workers).map(|_| ArrayQueue::new(ready.max(1))).collect(),
            spent: (0..workers).map(|_| ArrayQueue::new(spent.max(1))).collect(),
        }
    }

    /// The next state built for worker `w`, taken off its lane (what the worker's store
    /// does; for inspection).
    pub fn take(&self, w: usize) -> Option<Box<Built<K>>> {
        self.ready.get(w)?.pop()
    }

    /// States built and not yet taken by worker `w`.
    pub fn waiting(&self, w: usize) -> usize {
        self.ready.get(w).map_or(0, ArrayQueue::len)
    }
}

/// What the builder counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BuilderCounters {
    /// SA states built and handed to a worker.
    pub built: u64,
    /// Records that could not be built (invalid, or changed while read).
    pub skipped: u64,
    /// Whole-table scans (the first, and one per journal overrun).
    pub scans: u64,
    /// States workers handed back, freed here.
    pub freed: u64,
}

pub struct Builder<'a, B: Backend> {
    reader: &'a Reader,
    owners: &'a Owners,
    lanes: &'a Lanes<B::Key>,
    /// The next journal entry to read.
    pos: u64,
    /// A whole-table scan under way: the next position, `capacity` per direction
    /// (inbound SAs, then outbound: each direction's states are allocated together and
    /// in table order, which is also the order traffic tends to name them in).
    scan_at: Option<u64>,
    /// A state whose worker's lane was full: sent first at the next step.
    stalled: Option<(usize, Box<Built<B::Key>>)>,
    pub counters: BuilderCounters,
}

/// Slots looked at per built state, at most, in one step of a scan.
const SCAN_RATIO: usize = 16;

impl<'a, B: Backend> Builder<'a, B> {
    /// A builder that starts with a whole-table scan.
    pub fn new(reader: &'a Reader, owners: &'a Owners, lanes: &'a Lanes<B::Key>) -> Self {
        Builder {
            reader,
            owners,
            lanes,
            pos: reader.journal_head(),
            scan_at: Some(0),
            stalled: None,
            counters: BuilderCounters { scans: 1, ..Default::default() },
        }
    }

    /// Free what workers handed back, then build up to `budget` states (looking at up to
    /// `SCAN_RATIO` times as many slots of a scan). Returns how many were built; when
    /// that is 0 and `can_proceed` is false, there is nothing to do until the table
    /// changes or a worker takes from its full lane.
    pub fn step(&mut self, budget: usize) -> usize {
        for lane in &self.lanes.spent {
            while let Some(b) = lane.pop() {
                drop(b);
                self.counters.freed += 1;
            }
        }
        if let Some((w, b)) = self.stalled.take() {
            if let Err(b) = self.lanes.ready[w].push(b) {
                self.stalled = Some((w, b));
                return 0;
            }
        }
        let mut built = 0;
        let mut looked = 0;
        while built < budget && looked < budget.saturating_mul(SCAN_RATIO) && self.stalled.is_none() {
            looked += 1;
            let Some(next) = self.next_record() else { break };
            if let Some((slot, uid)) = next {
                if self.build(slot, uid) {
                    built += 1;
                }
            }
        }
        built
    }

    /// Whether a worker has handed back states not yet freed. The builder's thread does
    /// not sleep while one has: a worker that meets a burst of stale states (a table
    /// changing fast while a large one was scanned) hands them back faster than a
    /// sleeping builder frees them, and frees them itself when the lane is full.
    pub fn has_spent(&self) -> bool {
        self.lanes.spent.iter().any(|q| !q.is_empty())
    }

    /// Whether every record seen so far has been handed on.
    pub fn idle(&self) -> bool {
        self.stalled.is_none() && !self.records_ahead()
    }

    /// Whether a step now could get on: records to look at, and no worker's full lane in
    /// the way.
    pub fn can_proceed(&self) -> bool {
        self.stalled.is_none() && self.records_ahead()
    }

    /// Whether a scan is under way or the journal has entries not yet read.
    fn records_ahead(&self) -> bool {
        self.scan_at.is_some() || self.pos < self.reader.journal_head()
    }

    /// The next record to consider: `None` when there is nothing more now, `Some(None)`
    /// for a slot or journal entry with nothing to build.
    fn next_record(&mut self) -> Option<Option<(u32, u64)>> {
        if let Some(at) = self.scan_at {
            let capacity = u64::from(self.reader.db().capacity());
            if at >= 2 * capacity {
                self.scan_at = None;
                return Some(None);
            }
            self.scan_at = Some(at + 1);
            let (want, slot) =
                if at < capacity { (Direction::Inbound, at) } else { (Direction::Outbound, at - capacity) };
            let slot = slot as u32;
            if self.reader.direction(slot) != Some(want) {
                return Some(None);
            }
            let uid = self.reader.uid(slot)?;
            return Some(self.reader.is_live(slot, uid).then_some((slot, uid)));
        }
        let head = self.reader.journal_head();
        if self.pos >= head {
            return None;
        }
        match self.reader.journal_entry(self.pos) {
            Some(Journaled::Added { slot, uid: uid39 }) => {
                self.pos += 1;
                let uid = self.reader.uid(slot).filter(|&u| journal_uid(u) == uid39 && self.reader.is_live(slot, u));
                Some(uid.map(|u| (slot, u)))
            }
            Some(Journaled::Ended { .. }) => {
                // Nothing to build (the worker that holds it finds out by itself).
                self.pos += 1;
                Some(None)
            }
            None => {
                // Overwritten before we read it: whatever was added since may be
                // anywhere, so look everywhere.
                self.pos = head;
                self.scan_at = Some(0);
                self.counters.scans += 1;
                Some(None)
            }
        }
    }

    /// Build the state of the record in `slot` and send it to its worker.
    fn build(&mut self, slot: u32, uid: u64) -> bool {
        let built = self
            .reader
            .decode(slot)
            .ok()
            .and_then(|p| Built::new::<B>(slot, uid, p))
            // Read again: a record rewritten under us has another uid.
            .filter(|_| self.reader.is_live(slot, uid));
        let Some(b) = built else {
            self.counters.skipped += 1;
            return false;
        };
        let w = self.owners.of_spi(b.entry.rt.spi);
        self.counters.built += 1;
        if let Err(b) = self.lanes.ready[w].push(b) {
            self.stalled = Some((w, b));
        }
        true
    }
}
