//! The control process's side of the SA segment: the only writer (an exclusive lock on
//! the file makes sure of that).
//!
//! Changes are made in batches. Inside a batch, new records carry the next generation
//! and removed ones are marked to end at it, so readers still see the previous state;
//! `commit` publishes the whole batch with one store of the generation. A removed
//! record stays in the indexes until every running worker has moved past the commit
//! (a worker mid-burst on the old generation must still find it); then it is unlinked,
//! and reused once every worker has passed a quiescent point after that.
//! A writer killed at any instant leaves the published generation intact; the next one
//! to attach rolls the unpublished batch back (`recover`).
//!
//! Tombstones left by removals are compacted by migrating a table into its standby copy
//! a chunk at a time, mirroring changes into both while it copies, then switching
//! readers over with one store.

use crate::db::{AttachError, Sadb, TableId, active_bit};
use crate::index::Table;
use crate::layout::*;
use crate::map::{Mapping, segment_path};
use crate::record::{self, LpmKey, outbound_keys};
use core::sync::atomic::Ordering::{Acquire, Relaxed, Release, SeqCst};
use natt_engine::sa::{Direction, SaParams};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::Path;

/// Why a change was refused. Nothing is changed when one is returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    #[error("{direction} SPI 0x{spi:08x} is already installed (SA \"{name}\")")]
    Duplicate { direction: &'static str, spi: u32, name: String },
    #[error("no {direction} SA with SPI 0x{spi:08x} is installed")]
    NotFound { direction: &'static str, spi: u32 },
    #[error("selector {prefix} already selects outbound SA \"{name}\" (SPI 0x{spi:08x})")]
    SelectorTaken { prefix: String, name: String, spi: u32 },
    #[error(
        "the SA table is full ({capacity} SAs, some may be waiting for the dataplane to release them); create it with a larger capacity"
    )]
    Full { capacity: u32 },
    #[error("an index of the SA table is too full; create it with a larger capacity")]
    IndexFull,
    #[error("SA \"{name}\": {reason}")]
    DoesNotFit { name: String, reason: String },
    #[error(
        "SA \"{name}\" (SPI 0x{spi:08x}) has the same key and salt as installed SA \"{other}\" (SPI 0x{other_spi:08x}): \
         AES-GCM nonces would repeat between them; give every SA its own key"
    )]
    KeyReused { name: String, spi: u32, other: String, other_spi: u32 },
}

/// What identifies a key for uniqueness: its fingerprint with the salt.
fn key_id(p: &SaParams) -> u64 {
    natt_engine::crypto::key_fingerprint(p.key.expose(), &p.salt)
}

/// Who may still be reading retired records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Readers {
    /// No dataplane is running: nothing is in use.
    None,
    /// The lowest generation any running worker reported at its last quiescent point.
    MinSeen(u64),
}

impl Readers {
    fn past(&self, generation: u64) -> bool {
        match self {
            Readers::None => true,
            Readers::MinSeen(g) => *g >= generation,
        }
    }
}

/// An installed SA, as read back.
#[derive(Clone, Debug)]
pub struct Installed {
    pub params: SaParams,
    pub slot: u32,
    pub uid: u64,
    /// Since which generation it is visible.
    pub generation: u64,
    /// When it will be removed (ns since the epoch), for a draining SA.
    pub remove_at_ns: Option<u64>,
}

/// What a commit did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Commit {
    pub generation: u64,
    pub added: usize,
    pub removed: usize,
}

/// What housekeeping did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Housekeeping {
    /// Draining SAs whose grace period ended, now removed.
    pub drained: Vec<(Direction, u32)>,
    pub reclaimed: usize,
    pub migrating: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Counts {
    live: usize,
    tomb: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Migration {
    Idle,
    /// The standby table was switched out at this generation and may still be read.
    Cooling(u64),
    Clearing(usize),
    Copying(usize),
}

/// Buckets moved per migration step.
const MIGRATION_CHUNK: usize = 1 << 15;

/// The writer.
pub struct Writer {
    db: Sadb,
    g: u64,
    free: Vec<u32>,
    /// Visible SAs by (direction, SPI).
    visible: HashMap<(Direction, u32), u32>,
    /// Visible SAs by key fingerprint: no two may share a key and salt.
    keys: HashMap<u64, u32>,
    /// Visible outbound SAs by selector key.
    owners: HashMap<LpmKey, u32>,
    /// LPM entries per (family, length), visible or not yet unlinked.
    lpm_counts: HashMap<(bool, u8), usize>,
    counts: [Counts; 3],
    migration: [Migration; 3],
    /// Removed at a generation, still linked until readers pass it.
    unlinking: Vec<(u32, u64)>,
    /// Unlinked at a generation, reusable when readers pass it.
    retired: Vec<(u32, u64)>,
    /// Draining SAs: (remove at, direction, SPI).
    drains: BTreeSet<(u64, Direction, u32)>,
}

fn now_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

fn dir_name(d: Direction) -> &'static str {
    d.name()
}

fn lock(map: &Mapping, path: &Path) -> Result<(), AttachError> {
    rustix::fs::flock(map.file(), rustix::fs::FlockOperation::NonBlockingLockExclusive)
        .map_err(|_| AttachError::Locked { path: path.to_owned() })
}

impl Writer {
    /// Create a new segment `dir/<name>.sadb` for `capacity` SAs.
    pub fn create(dir: &Path, name: &str, capacity: usize) -> Result<Writer, AttachError> {
        let layout = SadbLayout::for_capacity(capacity).ok_or_else(|| AttachError::Corrupt {
            path: segment_path(dir, name, "sadb"),
            what: format!("capacity {capacity} is out of range 1-{}", SadbLayout::MAX_CAPACITY),
        })?;
        Self::create_with(dir, name, layout)
    }

    /// Create a segment with explicit table sizes (tests use small ones).
    pub fn create_with(dir: &Path, name: &str, layout: SadbLayout) -> Result<Writer, AttachError> {
        let path = segment_path(dir, name, "sadb");
        let map = Mapping::create(&path, layout.total).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                AttachError::Exists { path: path.clone() }
            } else {
                AttachError::io(&path, e)
            }
        })?;
        lock(&map, &path)?;
        let h: &SadbHeader = map.get(0).expect("fits");
        h.abi.store(ABI_VERSION, Relaxed);
        h.header_size.store(core::mem::size_of::<SadbHeader>() as u32, Relaxed);
        h.record_size.store(RECORD_SIZE as u32, Relaxed);
        h.capacity.store(layout.capacity as u64, Relaxed);
        h.spi_buckets.store(layout.spi_buckets as u64, Relaxed);
        h.lpm_buckets.store(layout.lpm_buckets as u64, Relaxed);
        h.total_size.store(layout.total as u64, Relaxed);
        let seed = std::hash::BuildHasher::hash_one(&std::collections::hash_map::RandomState::new(), now_ns());
        h.hash_seed.store(seed, Relaxed);
        h.created_ns.store(now_ns(), Relaxed);
        h.generation.0.store(1, Relaxed);
        h.next_uid.store(1, Relaxed);
        h.magic.store(SADB_MAGIC, Release);
        let db = Sadb::check(map, &path)?;
        let mut w = Writer::empty(db);
        w.free = (0..layout.capacity as u32).rev().collect();
        w.g = 1;
        Ok(w)
    }

    /// Attach to an existing segment as its writer, and recover from a writer that died.
    pub fn open(dir: &Path, name: &str) -> Result<Writer, AttachError> {
        let path = segment_path(dir, name, "sadb");
        let map = Mapping::open_rw(&path).map_err(|e| AttachError::io(&path, e))?;
        lock(&map, &path)?;
        let db = Sadb::check(map, &path)?;
        let mut w = Writer::empty(db);
        w.recover()?;
        Ok(w)
    }

    /// Attach if the segment exists, else create it.
    pub fn open_or_create(dir: &Path, name: &str, capacity: usize) -> Result<Writer, AttachError> {
        match Self::open(dir, name) {
            Err(AttachError::NotFound { .. }) => Self::create(dir, name, capacity),
            other => other,
        }
    }

    fn empty(db: Sadb) -> Writer {
        db.header().writer_pid.store(std::process::id(), Relaxed);
        Writer {
            db,
            g: 0,
            free: Vec::new(),
            visible: HashMap::new(),
            keys: HashMap::new(),
            owners: HashMap::new(),
            lpm_counts: HashMap::new(),
            counts: [Counts::default(); 3],
            migration: [Migration::Idle; 3],
            unlinking: Vec::new(),
            retired: Vec::new(),
            drains: BTreeSet::new(),
        }
    }

    pub fn db(&self) -> &Sadb {
        &self.db
    }

    /// The published generation.
    pub fn generation(&self) -> u64 {
        self.g
    }

    /// SAs visible now.
    pub fn len(&self) -> usize {
        self.visible.len()
    }

    pub fn is_empty(&self) -> bool {
        self.visible.is_empty()
    }

    /// Records free for new SAs (retired ones are not counted until reclaimed).
    pub fn free(&self) -> usize {
        self.free.len()
    }

    /// Records removed but not yet reusable (waiting for readers).
    pub fn retired(&self) -> usize {
        self.unlinking.len() + self.retired.len()
    }

    fn record(&self, slot: u32) -> &SaRecord {
        self.db.record(slot).expect("slot in range")
    }

    fn which(&self, t: TableId) -> usize {
        usize::from(self.db.header().active.load(Relaxed) & active_bit(t) != 0)
    }

    fn table(&self, t: TableId, which: usize) -> Table<'_> {
        match t {
            TableId::SpiIn => self.db.spi_table(Direction::Inbound, which),
            TableId::SpiOut => self.db.spi_table(Direction::Outbound, which),
            TableId::Lpm => self.db.lpm_table(which),
        }
    }

    /// Append `word` to the journal (after the change it names is in the record).
    fn journal(&self, word: u64) {
        let h = self.db.header();
        let n = h.journal_head.load(Relaxed);
        self.db.journal()[n as usize % JOURNAL_LEN].store(word, Release);
        h.journal_head.store(n + 1, Release);
    }

    fn publish(&mut self, g: u64) {
        self.db.header().generation.0.store(g, SeqCst);
        self.g = g;
    }

    /// The index entries of an SA: (table, hash, tag).
    fn entries(&self, p: &SaParams) -> Vec<(TableId, u64, u32)> {
        let seed = self.db.seed;
        let mut v = vec![(TableId::spi(p.direction), spi_hash(seed, p.spi), p.spi)];
        if p.direction == Direction::Outbound {
            for k in outbound_keys(p) {
                let h = k.hash(seed);
                v.push((TableId::Lpm, h, (h >> 32) as u32));
            }
        }
        v
    }

    fn link(&mut self, slot: u32, p: &SaParams) -> Result<(), WriteError> {
        let entries = self.entries(p);
        for (n, &(t, h, tag)) in entries.iter().enumerate() {
            let r = self.table(t, self.which(t)).insert(h, tag, slot);
            let r = r.and_then(|_| match self.migration[t.index()] {
                Migration::Copying(_) => self.table(t, self.which(t) ^ 1).insert(h, tag, slot).map(|_| 0),
                _ => Ok(0),
            });
            if r.is_err() {
                for &(t, h, tag) in &entries[..n] {
                    self.unlink_entry(t, h, tag, slot);
                }
                return Err(WriteError::IndexFull);
            }
            self.counts[t.index()].live += 1;
        }
        if p.direction == Direction::Outbound {
            for k in outbound_keys(p) {
                let c = self.lpm_counts.entry((k.v6, k.len)).or_insert(0);
                *c += 1;
                if *c == 1 {
                    self.set_len_bit(k.v6, k.len, true);
                }
            }
        }
        Ok(())
    }

    fn unlink_entry(&mut self, t: TableId, h: u64, tag: u32, slot: u32) {
        if self.table(t, self.which(t)).remove(h, tag, slot) {
            let c = &mut self.counts[t.index()];
            c.live = c.live.saturating_sub(1);
            c.tomb += 1;
        }
        if let Migration::Copying(_) = self.migration[t.index()] {
            self.table(t, self.which(t) ^ 1).remove(h, tag, slot);
        }
    }

    fn unlink(&mut self, slot: u32, p: &SaParams) {
        for (t, h, tag) in self.entries(p) {
            self.unlink_entry(t, h, tag, slot);
        }
        if p.direction == Direction::Outbound {
            for k in outbound_keys(p) {
                if let Some(c) = self.lpm_counts.get_mut(&(k.v6, k.len)) {
                    *c -= 1;
                    if *c == 0 {
                        self.lpm_counts.remove(&(k.v6, k.len));
                        self.set_len_bit(k.v6, k.len, false);
                    }
                }
            }
        }
    }

    fn set_len_bit(&self, v6: bool, len: u8, on: bool) {
        let h = self.db.header();
        let (word, bit) = if v6 { (&h.lpm_len_v6[usize::from(len) / 64], len % 64) } else { (&h.lpm_len_v4, len) };
        let m = 1u64 << bit;
        let old = word.load(Relaxed);
        word.store(if on { old | m } else { old & !m }, Release);
    }

    /// Start a batch of changes.
    pub fn batch(&mut self) -> Batch<'_> {
        let generation = self.g + 1;
        Batch {
            w: self,
            generation,
            added: Vec::new(),
            removed: Vec::new(),
            drains: Vec::new(),
            overlay: HashMap::new(),
            owners: HashMap::new(),
            keys: HashMap::new(),
            done: false,
        }
    }

    /// Every visible SA, decoded (keys included: the caller must not print them).
    pub fn installed(&self) -> Vec<Installed> {
        let mut v: Vec<Installed> = self
            .visible
            .values()
            .filter_map(|&slot| {
                let r = self.record(slot);
                let params = record::decode(r).ok()?;
                let at = r.remove_at_ns.load(Relaxed);
                Some(Installed {
                    params,
                    slot,
                    uid: r.uid.load(Relaxed),
                    generation: r.from_gen.load(Relaxed),
                    remove_at_ns: (at != 0).then_some(at),
                })
            })
            .collect();
        v.sort_by_key(|i| (i.params.direction == Direction::Outbound, i.params.spi));
        v
    }

    /// Whether an SA with this direction and SPI is installed (visible or draining).
    pub fn is_installed(&self, direction: Direction, spi: u32) -> bool {
        self.visible.contains_key(&(direction, spi))
    }

    /// Whether a visible SA holds the key with this fingerprint
    /// (`natt_engine::crypto::key_fingerprint` of key and salt).
    pub fn holds_key(&self, key_fp: u64) -> bool {
        self.keys.contains_key(&key_fp)
    }

    /// One installed SA.
    pub fn get(&self, direction: Direction, spi: u32) -> Option<Installed> {
        let &slot = self.visible.get(&(direction, spi))?;
        let r = self.record(slot);
        let at = r.remove_at_ns.load(Relaxed);
        Some(Installed {
            params: record::decode(r).ok()?,
            slot,
            uid: r.uid.load(Relaxed),
            generation: r.from_gen.load(Relaxed),
            remove_at_ns: (at != 0).then_some(at),
        })
    }

    /// Remove SAs whose grace period ended, reclaim records no reader can reach, and
    /// advance table migrations. Cheap when there is nothing to do.
    pub fn housekeeping(&mut self, now: u64, readers: Readers) -> Housekeeping {
        let mut out = Housekeeping::default();
        let due: Vec<(u64, Direction, u32)> = self.drains.iter().take_while(|(at, _, _)| *at <= now).copied().collect();
        if !due.is_empty() {
            let mut b = self.batch();
            for &(_, dir, spi) in &due {
                if b.remove(dir, spi).is_ok() {
                    out.drained.push((dir, spi));
                }
            }
            let _ = b.commit();
            for d in &due {
                self.drains.remove(d);
            }
        }
        self.unlink_passed(readers);
        let before = self.free.len();
        let mut keep = Vec::with_capacity(self.retired.len());
        for &(slot, g) in &self.retired {
            if readers.past(g) {
                let r = self.record(slot);
                r.state.store(state::FREE, Release);
                self.free.push(slot);
            } else {
                keep.push((slot, g));
            }
        }
        self.retired = keep;
        out.reclaimed = self.free.len() - before;
        out.migrating = self.migrate(readers);
        out
    }

    /// Unlink removed records that no reader can still need, and retire them.
    fn unlink_passed(&mut self, readers: Readers) {
        let (ready, wait): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.unlinking).into_iter().partition(|(_, g)| readers.past(*g));
        self.unlinking = wait;
        if ready.is_empty() {
            return;
        }
        for &(slot, _) in &ready {
            if let Ok(p) = record::decode(self.record(slot)) {
                self.unlink(slot, &p);
            }
        }
        let g = self.g + 1;
        self.publish(g);
        for &(slot, _) in &ready {
            let r = self.record(slot);
            r.retire_gen.store(g, Relaxed);
            r.state.store(state::RETIRED, Release);
            self.retired.push((slot, g));
        }
    }

    /// Advance table migrations by one chunk each. Returns whether one is under way.
    fn migrate(&mut self, readers: Readers) -> bool {
        let mut busy = false;
        for t in TableId::ALL {
            let i = t.index();
            match self.migration[i] {
                Migration::Idle => {
                    let buckets = self.table(t, 0).buckets();
                    let c = self.counts[i];
                    if c.tomb > buckets / 8 && c.tomb > c.live / 4 {
                        self.migration[i] = Migration::Clearing(0);
                        busy = true;
                    }
                }
                Migration::Cooling(g) => {
                    if readers.past(g) {
                        self.migration[i] = Migration::Idle;
                    }
                }
                Migration::Clearing(next) => {
                    let standby = self.table(t, self.which(t) ^ 1);
                    let end = (next + MIGRATION_CHUNK).min(standby.buckets());
                    standby.clear(next..end);
                    self.migration[i] =
                        if end == standby.buckets() { Migration::Copying(0) } else { Migration::Clearing(end) };
                    busy = true;
                }
                Migration::Copying(next) => {
                    let active = self.table(t, self.which(t));
                    let standby = self.table(t, self.which(t) ^ 1);
                    let end = (next + MIGRATION_CHUNK).min(active.buckets());
                    for b in next..end {
                        if let Some((tag, Some(slot))) = active.bucket(b) {
                            for h in self.hashes_of(t, tag, slot) {
                                if active.contains(h, tag, slot) && !standby.contains(h, tag, slot) {
                                    // The standby has room for everything the active holds.
                                    let _ = standby.insert(h, tag, slot);
                                }
                            }
                        }
                    }
                    if end == active.buckets() {
                        let h = self.db.header();
                        h.active.store(h.active.load(Relaxed) ^ active_bit(t), SeqCst);
                        let g = self.g + 1;
                        self.publish(g);
                        self.counts[i] = Counts { live: self.counts[i].live, tomb: 0 };
                        self.migration[i] = Migration::Cooling(g);
                    } else {
                        self.migration[i] = Migration::Copying(end);
                    }
                    busy = true;
                }
            }
        }
        busy
    }

    /// The hashes under which (tag, slot) can sit in table `t`.
    fn hashes_of(&self, t: TableId, tag: u32, slot: u32) -> Vec<u64> {
        match t {
            TableId::SpiIn | TableId::SpiOut => vec![spi_hash(self.db.seed, tag)],
            TableId::Lpm => match record::decode(self.record(slot)) {
                Ok(p) => {
                    outbound_keys(&p).iter().map(|k| k.hash(self.db.seed)).filter(|h| (h >> 32) as u32 == tag).collect()
                }
                Err(_) => Vec::new(),
            },
        }
    }

    /// Run migrations to completion (tests, and before a benchmark measures).
    pub fn finish_migrations(&mut self, readers: Readers) {
        while self.migrate(readers) {}
    }

    /// Rebuild the writer's state from the segment after a writer died, rolling back an
    /// unpublished batch.
    fn recover(&mut self) -> Result<(), AttachError> {
        let h = self.db.header();
        self.g = h.generation.0.load(Acquire);
        let g = self.g;
        let cap = self.db.capacity();
        let mut undo = Vec::new();
        let mut unlink = Vec::new();
        let mut max_uid = 0;
        let mut live = Vec::new();
        for slot in (0..cap).rev() {
            let r = self.record(slot);
            max_uid = max_uid.max(r.uid.load(Relaxed));
            match r.state.load(Acquire) {
                state::FREE => self.free.push(slot),
                state::RETIRED => self.retired.push((slot, r.retire_gen.load(Relaxed))),
                state::LIVE => {
                    let from = r.from_gen.load(Relaxed);
                    let until = r.until_gen.load(Relaxed);
                    if from > g {
                        undo.push(slot);
                    } else if until <= g {
                        unlink.push(slot);
                    } else {
                        if until != FOREVER {
                            r.until_gen.store(FOREVER, Release);
                        }
                        live.push(slot);
                    }
                }
                other => {
                    return Err(AttachError::Corrupt {
                        path: self.db.path.clone(),
                        what: format!("record {slot} has state {other}"),
                    });
                }
            }
        }
        if h.next_uid.load(Relaxed) <= max_uid {
            h.next_uid.store(max_uid + 1, Relaxed);
        }
        // Recount the indexes as they are.
        for t in TableId::ALL {
            let tab = self.table(t, self.which(t));
            let mut c = Counts::default();
            for b in 0..tab.buckets() {
                match tab.bucket(b) {
                    Some((_, Some(_))) => c.live += 1,
                    Some((_, None)) => c.tomb += 1,
                    None => {}
                }
            }
            self.counts[t.index()] = c;
        }
        for slot in live {
            let p = record::decode(self.record(slot)).map_err(|e| AttachError::Corrupt {
                path: self.db.path.clone(),
                what: format!("record {slot}: {e}"),
            })?;
            if p.direction == Direction::Outbound {
                for k in outbound_keys(&p) {
                    self.owners.insert(k, slot);
                    *self.lpm_counts.entry((k.v6, k.len)).or_insert(0) += 1;
                }
            }
            let at = self.record(slot).remove_at_ns.load(Relaxed);
            if at != 0 {
                self.drains.insert((at, p.direction, p.spi));
            }
            self.visible.insert((p.direction, p.spi), slot);
            self.keys.insert(key_id(&p), slot);
        }
        for &slot in undo.iter().chain(unlink.iter()) {
            if let Ok(p) = record::decode(self.record(slot)) {
                if p.direction == Direction::Outbound {
                    for k in outbound_keys(&p) {
                        *self.lpm_counts.entry((k.v6, k.len)).or_insert(0) += 1;
                    }
                }
            }
        }
        // Removed and published, still linked: unlink when readers pass the removal.
        for slot in unlink {
            let until = self.record(slot).until_gen.load(Relaxed);
            self.unlinking.push((slot, until));
        }
        // Never published: no reader saw them visible; unlink now and reuse them when
        // readers pass a generation after the unlink, like the standby tables.
        for &slot in &undo {
            if let Ok(p) = record::decode(self.record(slot)) {
                self.unlink(slot, &p);
            }
        }
        let g2 = self.g + 1;
        self.publish(g2);
        for slot in undo {
            let r = self.record(slot);
            r.retire_gen.store(g2, Relaxed);
            r.state.store(state::RETIRED, Release);
            self.retired.push((slot, g2));
        }
        self.migration = [Migration::Cooling(g2); 3];
        Ok(())
    }
}

/// A set of changes that becomes visible all at once on `commit`, or not at all.
pub struct Batch<'a> {
    w: &'a mut Writer,
    generation: u64,
    added: Vec<u32>,
    removed: Vec<u32>,
    drains: Vec<(u32, u64)>,
    /// (direction, SPI) -> slot visible after the batch (None: removed).
    overlay: HashMap<(Direction, u32), Option<u32>>,
    owners: HashMap<LpmKey, Option<u32>>,
    /// Key fingerprint -> slot holding it after the batch (None: released).
    keys: HashMap<u64, Option<u32>>,
    done: bool,
}

impl Batch<'_> {
    fn visible_after(&self, dir: Direction, spi: u32) -> Option<u32> {
        match self.overlay.get(&(dir, spi)) {
            Some(s) => *s,
            None => self.w.visible.get(&(dir, spi)).copied(),
        }
    }

    fn key_owner_after(&self, fp: u64) -> Option<u32> {
        match self.keys.get(&fp) {
            Some(s) => *s,
            None => self.w.keys.get(&fp).copied(),
        }
    }

    fn owner_after(&self, k: &LpmKey) -> Option<u32> {
        match self.owners.get(k) {
            Some(s) => *s,
            None => self.w.owners.get(k).copied(),
        }
    }

    fn name_of(&self, slot: u32) -> (String, u32) {
        let r = self.w.record(slot);
        let p = record::decode(r).ok();
        (p.as_ref().map(|p| p.name.clone()).unwrap_or_default(), r.spi.load(Relaxed))
    }

    /// Add an SA. Its SPI must be free (after this batch's removals) and its outbound
    /// selectors unowned.
    pub fn add(&mut self, p: &SaParams) -> Result<(), WriteError> {
        record::fits(p).map_err(|reason| WriteError::DoesNotFit { name: p.name.clone(), reason })?;
        p.validate().map_err(|e| WriteError::DoesNotFit { name: p.name.clone(), reason: e.to_string() })?;
        if let Some(s) = self.visible_after(p.direction, p.spi) {
            return Err(WriteError::Duplicate {
                direction: dir_name(p.direction),
                spi: p.spi,
                name: self.name_of(s).0,
            });
        }
        let fp = key_id(p);
        if let Some(s) = self.key_owner_after(fp) {
            let (other, other_spi) = self.name_of(s);
            return Err(WriteError::KeyReused { name: p.name.clone(), spi: p.spi, other, other_spi });
        }
        let keys = if p.direction == Direction::Outbound { outbound_keys(p) } else { Vec::new() };
        for k in &keys {
            if let Some(s) = self.owner_after(k) {
                let (name, spi) = self.name_of(s);
                let prefix = p
                    .outbound_keys()
                    .into_iter()
                    .find(|x| LpmKey::of(x) == *k)
                    .map(|x| x.to_string())
                    .unwrap_or_default();
                return Err(WriteError::SelectorTaken { prefix, name, spi });
            }
        }
        let slot = self.w.free.pop().ok_or(WriteError::Full { capacity: self.w.db.capacity() })?;
        let h = self.w.db.header();
        let uid = h.next_uid.load(Relaxed);
        h.next_uid.store(uid + 1, Relaxed);
        let r = self.w.record(slot);
        r.from_gen.store(FOREVER, Relaxed);
        r.until_gen.store(FOREVER, Relaxed);
        record::encode(r, p, uid);
        r.from_gen.store(self.generation, Release);
        r.state.store(state::LIVE, Release);
        if let Err(e) = self.w.link(slot, p) {
            self.w.record(slot).state.store(state::FREE, Release);
            self.w.free.push(slot);
            return Err(e);
        }
        // Live and linked: tell the dataplane's builder (a new SA is prepared before its
        // first packet; one rolled back is never found under this uid).
        self.w.journal(journal_word(slot, uid));
        self.added.push(slot);
        self.overlay.insert((p.direction, p.spi), Some(slot));
        self.keys.insert(fp, Some(slot));
        for k in keys {
            self.owners.insert(k, Some(slot));
        }
        Ok(())
    }

    /// Remove an SA.
    pub fn remove(&mut self, dir: Direction, spi: u32) -> Result<(), WriteError> {
        let slot = self.visible_after(dir, spi).ok_or(WriteError::NotFound { direction: dir_name(dir), spi })?;
        let p = record::decode(self.w.record(slot)).ok();
        if let Some(i) = self.added.iter().position(|s| *s == slot) {
            // Added in this batch: take it back now.
            self.added.swap_remove(i);
            if let Some(p) = &p {
                self.w.unlink(slot, p);
            }
            self.w.record(slot).state.store(state::FREE, Release);
            self.w.free.push(slot);
        } else {
            self.w.record(slot).until_gen.store(self.generation, Release);
            // Workers that trust what they know of the slot must stop (see
            // `Reader::trustable`); the end is set first.
            self.w.journal(journal_end_word(slot));
            self.removed.push(slot);
        }
        self.overlay.insert((dir, spi), None);
        if let Some(p) = p {
            let fp = key_id(&p);
            if self.key_owner_after(fp) == Some(slot) {
                self.keys.insert(fp, None);
            }
            if p.direction == Direction::Outbound {
                for k in outbound_keys(&p) {
                    if self.owner_after(&k) == Some(slot) {
                        self.owners.insert(k, None);
                    }
                }
            }
        }
        Ok(())
    }

    /// Replace the SA with the same direction and SPI (new settings, or new selectors).
    pub fn replace(&mut self, p: &SaParams) -> Result<(), WriteError> {
        self.remove(p.direction, p.spi)?;
        self.add(p)
    }

    /// Keep an SA until `at_ns` (ns since the epoch), then remove it.
    pub fn drain(&mut self, dir: Direction, spi: u32, at_ns: u64) -> Result<(), WriteError> {
        let slot = self.visible_after(dir, spi).ok_or(WriteError::NotFound { direction: dir_name(dir), spi })?;
        let r = self.w.record(slot);
        self.drains.push((slot, r.remove_at_ns.load(Relaxed)));
        r.remove_at_ns.store(at_ns, Release);
        Ok(())
    }

    /// Publish the batch: one store makes all of it visible.
    pub fn commit(mut self) -> Result<Commit, WriteError> {
        self.done = true;
        let w = &mut *self.w;
        if self.added.is_empty() && self.removed.is_empty() && self.drains.is_empty() {
            return Ok(Commit { generation: w.g, added: 0, removed: 0 });
        }
        w.publish(self.generation);
        for (&(dir, spi), slot) in &self.overlay {
            match slot {
                Some(s) => {
                    w.visible.insert((dir, spi), *s);
                }
                None => {
                    w.visible.remove(&(dir, spi));
                }
            }
        }
        for (k, slot) in &self.owners {
            match slot {
                Some(s) => {
                    w.owners.insert(*k, *s);
                }
                None => {
                    w.owners.remove(k);
                }
            }
        }
        for (fp, slot) in &self.keys {
            match slot {
                Some(s) => {
                    w.keys.insert(*fp, *s);
                }
                None => {
                    w.keys.remove(fp);
                }
            }
        }
        for &(slot, _) in &self.drains {
            let r = w.record(slot);
            let at = r.remove_at_ns.load(Relaxed);
            if let Ok(p) = record::decode(r) {
                w.drains.retain(|(_, d, s)| !(*d == p.direction && *s == p.spi));
                if at != 0 && w.visible.get(&(p.direction, p.spi)) == Some(&slot) {
                    w.drains.insert((at, p.direction, p.spi));
                }
            }
        }
        let removed = std::mem::take(&mut self.removed);
        if !removed.is_empty() {
            let visible = &w.visible;
            w.drains.retain(|(_, d, s)| visible.contains_key(&(*d, *s)));
            for &slot in &removed {
                w.unlinking.push((slot, self.generation));
            }
        }
        // Housekeeping compacts tables; do a step here only when tombstones pile up
        // without it.
        if TableId::ALL.iter().any(|t| w.counts[t.index()].tomb > w.table(*t, 0).buckets() / 4) {
            w.migrate(Readers::MinSeen(0));
        }
        Ok(Commit { generation: self.generation, added: self.added.len(), removed: removed.len() })
    }
}

impl Drop for Batch<'_> {
    /// An uncommitted batch is rolled back; readers never saw any of it.
    fn drop(&mut self) {
        if self.done {
            return;
        }
        for &slot in &self.added {
            if let Ok(p) = record::decode(self.w.record(slot)) {
                self.w.unlink(slot, &p);
            }
            self.w.record(slot).state.store(state::FREE, Release);
            self.w.free.push(slot);
        }
        for &slot in &self.removed {
            self.w.record(slot).until_gen.store(FOREVER, Release);
        }
        for &(slot, old) in self.drains.iter().rev() {
            self.w.record(slot).remove_at_ns.store(old, Release);
        }
    }
}

/// The SPIs of installed SAs that are not in `keep` (helper for declarative apply).
pub fn missing<'a>(
    installed: impl Iterator<Item = &'a Installed>,
    keep: &HashSet<(Direction, u32)>,
) -> Vec<(Direction, u32)> {
    installed.map(|i| (i.params.direction, i.params.spi)).filter(|k| !keep.contains(k)).collect()
}
