//! One worker's view of the shared SA table, as the engine's `SaStore`. Once per loop the
//! worker takes a snapshot (the published generation) and reports a quiescent point;
//! lookups then go through the shared indexes without a lock or a syscall. The runtime
//! state of an SA (expanded key, replay window, sequence counter, NAT endpoint) lives
//! here, in the one worker that owns the SA: the builder (`prepare`) makes it from the
//! record off the worker's core and the worker takes it up the first time the SA is used
//! (or builds it itself if it has not arrived yet); a new uid in the slot says the record
//! changed. A replaced SA with the same key carries its running state over, and an
//! outbound SA resumes above the sequence numbers reserved in the dataplane segment, so
//! no IV repeats. What the worker no longer needs goes back to the builder to be freed.
//!
//! Only SAs this worker owns are ever loaded: that, not the dispatch stage, is what
//! guarantees one sequence counter and one replay window per SA.
//!
//! A state found through the record once is then trusted (`SaRuntime::store_mark`)
//! until the table's journal names its slot: its record had no end when checked
//! (`Reader::trustable`), and the writer journals every end, so a lookup whose probe
//! chain names a trusted state (the first entry with its tag, read from the buckets
//! alone) needs no record. At each new generation the worker walks the journal entries since the
//! last one and takes the trust of the slots they name; when it has fallen too far
//! behind it takes everyone's at once (`distrust_all`).

use crate::dispatch::Owners;
use crate::prepare::{Built, Lanes};
use crossbeam_queue::ArrayQueue;
use natt_dpdk::prefetch;
use natt_engine::crypto::{AeadKey, Backend};
use natt_engine::reason::DropReason;
use natt_engine::sa::{CRYPTO_AHEAD, Direction, Endpoint, InboundAhead, OutboundAhead, SaEntry, SaRuntime, SaStore};
use natt_sadb::Reader;
use natt_sadb::dp::Reservations;
use natt_sadb::index::Chain;
use natt_sadb::reader::{Found, Snapshot};
use std::collections::HashMap;
use std::net::IpAddr;

/// A NAT endpoint change for an outbound SA another worker owns.
pub type NatUpdate = (u32, Endpoint);

/// Outbound lookups remembered for the current snapshot, by destination: the dispatch
/// stage looks up and the engine asks again for the same destination, and with a few
/// thousand SAs most destinations come back long before the table changes. Direct-mapped,
/// `HINTS` entries (384 KiB) while the worker has loaded no more SAs than that (SAs that
/// carried traffic, as `looks_ahead` counts them); beyond, where a destination rarely
/// comes back before its entry is taken, `HINTS_FEW` others (3 KiB, in L1) beside the
/// store's fields, so that a miss does not cost one more line far away.
const HINTS: usize = 8192;
const HINTS_FEW: usize = 64;

#[derive(Clone, Copy, Debug)]
struct OutHint {
    generation: u64,
    dst: IpAddr,
    found: Found,
    spi: u32,
}

/// A loaded state and the uid of the record it was built from (`Built::uid`, kept here
/// too so that the check does not load the state).
struct Held<K> {
    uid: u64,
    b: Box<Built<K>>,
}

impl<K> Held<K> {
    fn new(b: Box<Built<K>>) -> Self {
        Held { uid: b.uid, b }
    }
}

impl<K> std::ops::Deref for Held<K> {
    type Target = Built<K>;
    fn deref(&self) -> &Built<K> {
        &self.b
    }
}

impl<K> std::ops::DerefMut for Held<K> {
    fn deref_mut(&mut self) -> &mut Built<K> {
        &mut self.b
    }
}

/// What the store counts (published with the worker's counters).
#[derive(Clone, Copy, Debug, Default)]
pub struct StoreCounters {
    /// SAs built from the shared table.
    pub loads: u64,
    /// Records that failed validation.
    pub invalid: u64,
    /// NAT updates for SAs of other workers that their inbox could not take.
    pub nat_lost: u64,
    /// SAs this worker built itself (allocating) because the builder had not yet.
    pub built_here: u64,
    /// SA states this worker freed itself because the builder's lane was full.
    pub freed_here: u64,
    /// Lookups that read the SA's record: the state was not held, or not trusted.
    pub record_lookups: u64,
    /// Times the worker stopped trusting every state it held (the journal had moved on
    /// by more than `WALK_MAX` entries between two generations it saw).
    pub distrusts: u64,
}

/// Built states taken from the builder's lane per loop, at most (`take_prepared`).
pub const TAKE_PER_LOOP: usize = 32;

pub struct ShmStore<'a, B: Backend> {
    reader: &'a Reader,
    owners: &'a Owners,
    me: usize,
    snap: Snapshot,
    /// Loaded states by slot, each with its record's uid beside the pointer: checking
    /// that a slot is current reads one line.
    cache: Vec<Option<Held<B::Key>>>,
    /// States the builder made, by slot, until their SA's first packet.
    prepared: Vec<Option<Box<Built<B::Key>>>>,
    lanes: &'a Lanes<B::Key>,
    /// The slot last loaded for each (direction, SPI): where a replacement finds the
    /// state to carry over.
    by_spi: HashMap<(Direction, u32), u32>,
    resv: Reservations<'a>,
    inboxes: &'a [ArrayQueue<NatUpdate>],
    hints: Box<[Option<OutHint>; HINTS]>,
    /// The hints used with many SAs (`many_sas`), beside the other fields.
    hints_few: [Option<OutHint>; HINTS_FEW],
    /// The mark of a trusted state now (`SaRuntime::store_mark`; never 0, which no
    /// state is trusted with), and the journal entries walked so far.
    mark: u8,
    walked: u64,
    pub counters: StoreCounters,
}

/// Journal entries walked at one new generation, at most; with more, the worker
/// trusts nothing it knows rather than stop polling to read them (a large batch).
const WALK_MAX: u64 = 1024;

impl<'a, B: Backend> ShmStore<'a, B> {
    pub fn new(
        reader: &'a Reader,
        owners: &'a Owners,
        me: usize,
        resv: Reservations<'a>,
        inboxes: &'a [ArrayQueue<NatUpdate>],
        lanes: &'a Lanes<B::Key>,
    ) -> Self {
        let capacity = reader.db().capacity() as usize;
        let mut cache = Vec::new();
        cache.resize_with(capacity, || None);
        let mut prepared = Vec::new();
        prepared.resize_with(capacity, || None);
        // The journal's head before anything is looked up: every end from here on is
        // walked (see `refresh`).
        let walked = reader.journal_head();
        ShmStore {
            reader,
            owners,
            me,
            snap: reader.snapshot(),
            cache,
            prepared,
            lanes,
            // At most one entry per cache slot (see `load`): reserved once, never grown here.
            by_spi: HashMap::with_capacity(capacity),
            resv,
            inboxes,
            hints: vec![None; HINTS].into_boxed_slice().try_into().expect("HINTS entries"),
            hints_few: [None; HINTS_FEW],
            mark: 1,
            walked,
            counters: StoreCounters::default(),
        }
    }

    /// Take a new snapshot; returns its generation (to report as the quiescent point:
    /// nothing read under an older one is referenced any more).
    #[inline]
    pub fn refresh(&mut self) -> u64 {
        let before = self.snap.generation;
        self.snap = self.reader.snapshot();
        if self.snap.generation != before {
            self.walk_journal();
        }
        self.snap.generation
    }

    /// Take the trust of every slot the journal named since the last walk. Its head is
    /// read after the snapshot's generation: every end published at or before it is
    /// walked now, before any lookup under that snapshot.
    #[cold]
    fn walk_journal(&mut self) {
        let head = self.reader.journal_head();
        let mut readable = head >= self.walked && head - self.walked <= WALK_MAX;
        while readable && self.walked < head {
            match self.reader.journal_entry(self.walked) {
                Some(j) => {
                    if let Some(e) = self.entry_mut(j.slot()) {
                        e.rt.store_mark = 0;
                    }
                    self.walked += 1;
                }
                // Overwritten while we read: what it named is lost.
                None => readable = false,
            }
        }
        if !readable {
            self.distrust_all();
            self.walked = head;
        }
    }

    /// Trust no state held now: a new mark; after 255 of them, the old marks wiped.
    #[cold]
    fn distrust_all(&mut self) {
        self.counters.distrusts += 1;
        self.mark = self.mark.wrapping_add(1);
        if self.mark == 0 {
            self.mark = 1;
            for c in self.cache.iter_mut().flatten() {
                c.entry.rt.store_mark = 0;
            }
        }
    }

    /// The state in `slot`, if trusted, of an SA with this direction and SPI.
    #[inline]
    fn trusted(&self, slot: u32, dir: Direction, spi: u32) -> bool {
        self.entry(slot).is_some_and(|e| e.rt.store_mark == self.mark && e.rt.spi == spi && e.rt.direction == dir)
    }

    /// Trust the state loaded for `f` (just looked up through its record under the
    /// current snapshot) if its record allows (`Reader::trustable`).
    #[inline]
    fn trust(&mut self, f: Found) {
        let mark = self.mark;
        if self.reader.trustable(f.slot, f.uid) {
            if let Some(e) = self.entry_mut(f.slot) {
                e.rt.store_mark = mark;
            }
        }
    }

    /// Apply NAT endpoint changes other workers found for SAs this worker owns.
    #[inline]
    pub fn apply_nat_updates(&mut self) {
        // `is_empty` is two loads; `pop` on an empty queue also fences.
        if self.inboxes[self.me].is_empty() {
            return;
        }
        while let Some((spi, to)) = self.inboxes[self.me].pop() {
            self.follow_local(spi, to);
        }
    }

    /// Take up what the builder made for this worker, `at_most` states (the loop takes
    /// `TAKE_PER_LOOP`).
    #[inline]
    pub fn take_prepared(&mut self, at_most: usize) {
        self.take(at_most, None);
    }

    /// Before the first poll: take up every state the builder has made for this worker.
    /// What goes back (states of records replaced while the builder scanned the table:
    /// thousands when a large table changes fast) waits for room in the lane, up to
    /// `patience` in all, rather than being freed here: nothing is polled yet, and the
    /// builder frees the lane as fast as it fills.
    pub fn take_all_prepared(&mut self, patience: std::time::Duration) {
        self.take(usize::MAX, Some(std::time::Instant::now() + patience));
    }

    #[inline]
    fn take(&mut self, at_most: usize, wait_until: Option<std::time::Instant>) {
        let Some(lane) = self.lanes.ready.get(self.me).filter(|l| !l.is_empty()) else { return };
        for _ in 0..at_most {
            let Some(b) = lane.pop() else { return };
            let slot = b.slot as usize;
            let current = self.cache.get(slot).is_some_and(|c| c.as_ref().is_some_and(|c| c.uid == b.uid));
            if current || slot >= self.prepared.len() {
                // Built here already (its first packet came first), or nonsense.
                self.hand_back(b, wait_until);
            } else if let Some(old) = self.prepared[slot].replace(b) {
                // A record that had left the slot before its first packet.
                self.hand_back(old, wait_until);
            }
        }
    }

    /// Hand a state to the builder to free; free it here only if its lane is full.
    #[inline]
    fn give_back(&mut self, b: Box<Built<B::Key>>) {
        self.hand_back(b, None);
    }

    /// `give_back`, waiting for room in the lane until `wait_until` (never on the loop).
    #[inline]
    fn hand_back(&mut self, mut b: Box<Built<B::Key>>, wait_until: Option<std::time::Instant>) {
        let Some(lane) = self.lanes.spent.get(self.me) else { return };
        loop {
            match lane.push(b) {
                Ok(()) => return,
                Err(back) => b = back,
            }
            match wait_until {
                Some(t) if std::time::Instant::now() < t => std::thread::yield_now(),
                _ => break,
            }
        }
        self.counters.freed_here += 1;
        drop(b);
    }

    /// The outbound SA for `dst` under the current snapshot: its slot and SPI (whose
    /// owner must encapsulate). Remembered for the engine's own lookup.
    #[inline]
    pub fn lookup_outbound(&mut self, dst: &IpAddr) -> Option<(Found, u32)> {
        let generation = self.snap.generation;
        let many = self.many_sas();
        let i = if many { hint_index::<HINTS_FEW>(dst) } else { hint_index::<HINTS>(dst) };
        let hint = if many { &self.hints_few[i] } else { &self.hints[i] };
        if let Some(x) = current(hint, generation, dst) {
            return Some((x.found, x.spi));
        }
        let (found, spi) = match self.trusted_outbound(dst) {
            Some(x) => x,
            None => {
                self.counters.record_lookups += 1;
                let found = self.reader.outbound(&self.snap, dst)?;
                (found, self.reader.spi(found.slot)?)
            }
        };
        let hint = if many { &mut self.hints_few[i] } else { &mut self.hints[i] };
        *hint = Some(OutHint { generation, dst: *dst, found, spi });
        Some((found, spi))
    }

    /// The outbound SA for IPv4 `dst` without its record: the chain of the longest
    /// prefix length present names a trusted state whose one peer prefix is of
    /// that length and covers `dst` (`SaRuntime::selected_by_v4`). Trusted means visible
    /// now, and no other visible SA holds its selector: it is the longest match.
    #[inline]
    fn trusted_outbound(&self, dst: &IpAddr) -> Option<(Found, u32)> {
        let IpAddr::V4(a) = dst else { return None };
        let (chain, len) = self.reader.lpm_chain(&self.snap, dst)?;
        let slot = chain.named()?;
        let c = self.cache.get(slot as usize)?.as_ref()?;
        let rt = &c.entry.rt;
        (rt.store_mark == self.mark && rt.selected_by_v4(a.to_bits(), len))
            .then_some((Found { slot, uid: c.uid }, rt.spi))
    }

    /// More SAs than hints: a destination's hint is mostly taken before it comes back.
    #[inline]
    fn many_sas(&self) -> bool {
        self.by_spi.len() > HINTS
    }

    /// The runtime state of the SA with this direction and SPI, if this worker holds it.
    pub fn runtime(&self, dir: Direction, spi: u32) -> Option<&SaRuntime<B::Key>> {
        let slot = *self.by_spi.get(&(dir, spi))?;
        self.cache.get(slot as usize)?.as_ref().map(|c| &c.entry.rt).filter(|rt| rt.spi == spi)
    }

    /// How many (direction, SPI) pairs the store remembers a slot for: at most one per
    /// loaded SA.
    pub fn spis_tracked(&self) -> usize {
        self.by_spi.len()
    }

    /// Every SA loaded in this worker: its runtime state (for reports).
    pub fn loaded(&self) -> impl Iterator<Item = &SaRuntime<B::Key>> {
        self.cache.iter().flatten().map(|c| &c.entry.rt)
    }

    /// Make sure the SA found in `f` is loaded and current; returns its slot.
    #[inline]
    fn ensure(&mut self, f: Found, dir: Direction) -> Result<u32, DropReason> {
        match self.cache.get(f.slot as usize) {
            Some(Some(c)) if c.uid == f.uid => Ok(f.slot),
            Some(_) => self.load(f, dir),
            None => Err(DropReason::SaInvalid),
        }
    }

    #[cold]
    fn load(&mut self, f: Found, dir: Direction) -> Result<u32, DropReason> {
        let mut b = match self.prepared.get_mut(f.slot as usize).and_then(Option::take) {
            Some(b) if b.uid == f.uid && b.entry.rt.direction == dir => {
                if self.owners.of_spi(b.entry.rt.spi) != self.me {
                    self.give_back(b);
                    return Err(DropReason::NotOwner);
                }
                b
            }
            other => {
                if let Some(o) = other {
                    self.give_back(o);
                }
                self.build_here(f, dir)?
            }
        };
        let (spi, fp) = (b.entry.rt.spi, b.entry.rt.key_fp);
        // The same SA before a replace (or still in this slot): keep its running state
        // if the key is the same; a new key starts afresh.
        let key = (dir, spi);
        let previous = self.by_spi.get(&key).copied().filter(|&s| s != f.slot);
        let mut carried = false;
        for s in [Some(f.slot), previous].into_iter().flatten() {
            let same = self.cache[s as usize]
                .as_ref()
                .is_some_and(|c| c.entry.rt.spi == spi && c.entry.rt.direction == dir && c.entry.rt.key_fp == fp);
            if same {
                if let Some(mut old) = self.cache[s as usize].take() {
                    b.entry.rt.carry_over(&mut old.entry.rt);
                    self.give_back(old.b);
                    carried = true;
                }
                break;
            }
        }
        // Without live state to carry (the first load since this process started), the
        // reservations say how far an earlier run may have got.
        if dir == Direction::Outbound && !carried {
            if let Some(floor) = self.resv.get(fp) {
                b.entry.rt.resume_above(floor);
            }
        }
        // Whatever the slot held before (another SA, its record since reclaimed) is gone:
        // so is its SPI's entry, which keeps `by_spi` no larger than the cache however
        // many SPIs rekeys bring.
        if let Some(old) = self.cache[f.slot as usize].take() {
            let gone = (old.entry.rt.direction, old.entry.rt.spi);
            if self.by_spi.get(&gone) == Some(&f.slot) {
                self.by_spi.remove(&gone);
            }
            self.give_back(old.b);
        }
        self.by_spi.insert(key, f.slot);
        self.cache[f.slot as usize] = Some(Held::new(b));
        self.counters.loads += 1;
        Ok(f.slot)
    }

    /// Build an SA's state on the worker: what the builder does, for an SA whose first
    /// packet came before its state did. Allocates.
    #[cold]
    fn build_here(&mut self, f: Found, dir: Direction) -> Result<Box<Built<B::Key>>, DropReason> {
        let p = match self.reader.decode(f.slot) {
            Ok(p) if p.direction == dir => p,
            _ => {
                self.counters.invalid += 1;
                return Err(DropReason::SaInvalid);
            }
        };
        if self.owners.of_spi(p.spi) != self.me {
            return Err(DropReason::NotOwner);
        }
        let Some(b) = Built::new::<B>(f.slot, f.uid, p) else {
            self.counters.invalid += 1;
            return Err(DropReason::SaInvalid);
        };
        self.counters.built_here += 1;
        Ok(b)
    }

    fn follow_local(&mut self, spi: u32, to: Endpoint) -> bool {
        let Some(f) = self.reader.outbound_by_spi(&self.snap, spi) else { return false };
        match self.ensure(f, Direction::Outbound) {
            Ok(slot) => self.cache[slot as usize].as_mut().is_some_and(|c| c.entry.rt.follow_nat(to)),
            Err(_) => false,
        }
    }
}

/// The hint `h` if it answers for `dst` at `generation`.
#[inline]
fn current(h: &Option<OutHint>, generation: u64, dst: &IpAddr) -> Option<OutHint> {
    h.filter(|x| x.generation == generation && x.dst == *dst)
}

/// Where `dst` is remembered among `N` hints (a power of two).
#[inline]
fn hint_index<const N: usize>(dst: &IpAddr) -> usize {
    let x = match dst {
        IpAddr::V4(a) => u64::from(a.to_bits()),
        IpAddr::V6(a) => {
            let b = a.to_bits();
            (b as u64) ^ ((b >> 64) as u64)
        }
    };
    (x.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - N.trailing_zeros())) as usize & (N - 1)
}

impl<'a, B: Backend> ShmStore<'a, B> {
    /// Start loading this worker's cache entry for `slot` (the state's uid and pointer).
    #[inline]
    fn prefetch_cache_entry(&self, slot: u32) {
        if let Some(c) = self.cache.get(slot as usize) {
            prefetch::line(c);
        }
    }

    /// Look ahead for the lookups of a burst, in four passes, each starting the loads
    /// the next needs, so that no pass waits on a miss started just before: the first
    /// bucket of each lookup's chain (`start`), or for a destination remembered in the
    /// hints, the slot they name and its cache entry; then, buckets now near, this
    /// worker's cache entry for the slot the chain names (`Chain::named`: most often in
    /// the first bucket, else a few further on in the same line);
    /// then the head of the runtime state (`SaRuntime::HEAD_LEN`), for inbound lookups its
    /// peer line (NAT endpoint and replay window, `SaRuntime::peer_line`), and
    /// the line of its key that tells the rest (`AeadKey::lead`); then, the head now near,
    /// the record where the state is not trusted (the lookup will read it: see the
    /// module's notes), and what the checks read of the rest (`SaRuntime::check_spans`: the selector sets, where
    /// the head's own IPv4 selectors do not decide; outbound SAs' addresses where they have
    /// no outer header template), the replay word of `seq` and, for the
    /// first `CRYPTO_AHEAD` packets only, what their crypto reads of the key
    /// (`SaRuntime::key_spans`: round keys, the hash-key powers its length needs). The
    /// engine asks for the other packets' key spans later (`prepare_crypto`), a few
    /// packets before each one's crypto: asked for all at once here, up to 16 lines for
    /// each of 32 packets, at 100,000 SAs they came 14-20 % slower (encap 64 bytes, and
    /// both directions at 1,420). Worth it only when SAs are many (`looks_ahead`): a few
    /// stay in the caches.
    fn look_ahead<K: Copy>(
        &self,
        keys: &[K],
        inbound: bool,
        start: impl Fn(K) -> Start<'a>,
        seq: impl Fn(K) -> Option<u64>,
        len: impl Fn(K) -> u32,
    ) {
        let keys = &keys[..keys.len().min(LOOK_AHEAD_MAX)];
        let mut starts = [Start::Nowhere; LOOK_AHEAD_MAX];
        for (b, &k) in starts.iter_mut().zip(keys) {
            *b = start(k);
            match b {
                Start::Chain(c) => prefetch::line(c.first()),
                Start::Slot(x) => self.prefetch_cache_entry(*x),
                Start::Nowhere => {}
            }
        }
        let mut slots = [u32::MAX; LOOK_AHEAD_MAX];
        for (s, b) in slots.iter_mut().zip(&starts[..keys.len()]) {
            match *b {
                Start::Chain(c) => {
                    if let Some(x) = c.named() {
                        *s = x;
                        self.prefetch_cache_entry(x);
                    }
                }
                Start::Slot(x) => *s = x,
                Start::Nowhere => {}
            }
        }
        for &s in &slots[..keys.len()] {
            if let Some(Some(c)) = self.cache.get(s as usize) {
                let rt = &c.entry.rt;
                prefetch::lines(rt, SaRuntime::<B::Key>::HEAD_LEN.div_ceil(prefetch::LINE));
                if inbound {
                    prefetch::span(rt.peer_line(), 1);
                }
                prefetch::span(rt.key.lead(), 1);
            }
        }
        for (i, (&s, &k)) in slots.iter().zip(keys).enumerate() {
            if let Some(Some(c)) = self.cache.get(s as usize) {
                let rt = &c.entry.rt;
                if rt.store_mark != self.mark {
                    // Not trusted: its lookup reads the record.
                    if let Some(r) = self.reader.db().record(s) {
                        prefetch::line(r);
                    }
                }
                rt.check_spans(&mut |at, n| prefetch::span(at, n));
                if i < CRYPTO_AHEAD {
                    rt.key_spans(len(k) as usize, &mut |at, n| prefetch::span(at, n));
                }
                if let Some(w) = seq(k).and_then(|q| rt.peer.replay.word(q)) {
                    prefetch::line(w);
                }
            }
        }
    }
}

/// Where a look-ahead starts for one key: the probe chain of its lookup, or the slot a
/// hint already names.
#[derive(Clone, Copy)]
enum Start<'a> {
    Nowhere,
    Chain(Chain<'a>),
    Slot(u32),
}

/// Keys looked ahead at once (an engine burst).
const LOOK_AHEAD_MAX: usize = 64;
/// Look ahead only with at least this many SAs loaded: fewer stay in the caches (their
/// state is 1.3 to 2 KiB each, by crypto library), where looking ahead would cost more than
/// it saves.
const LOOK_AHEAD_MIN_SAS: usize = 512;

impl<B: Backend> SaStore<B::Key> for ShmStore<'_, B> {
    #[inline]
    fn looks_ahead(&self) -> bool {
        self.by_spi.len() >= LOOK_AHEAD_MIN_SAS
    }

    #[inline]
    fn look_ahead_inbound(&mut self, keys: &[InboundAhead]) {
        let (r, s) = (self.reader, self.snap);
        self.look_ahead(
            keys,
            true,
            |k| Start::Chain(r.spi_chain(&s, Direction::Inbound, k.spi)),
            |k| Some(u64::from(k.seq)),
            |k| k.len,
        );
    }

    #[inline]
    fn look_ahead_outbound(&mut self, keys: &[OutboundAhead]) {
        let (r, s) = (self.reader, self.snap);
        let bucket = |k: OutboundAhead| r.lpm_chain(&s, &k.dst).map_or(Start::Nowhere, |(c, _)| Start::Chain(c));
        if self.many_sas() {
            // Destinations rarely come back before their hint is taken: not worth a look.
            self.look_ahead(keys, false, bucket, |_| None, |k| k.len);
        } else {
            // A destination remembered names its slot: no hash, bucket or record to load.
            let hints = &self.hints;
            let start = |k: OutboundAhead| match current(&hints[hint_index::<HINTS>(&k.dst)], s.generation, &k.dst) {
                Some(x) => Start::Slot(x.found.slot),
                None => bucket(k),
            };
            self.look_ahead(keys, false, start, |_| None, |k| k.len);
        }
    }

    #[inline]
    fn inbound(&mut self, spi: u32) -> Result<u32, DropReason> {
        // A trusted state where the chain names the SPI: no record.
        if let Some(slot) = self.reader.spi_chain(&self.snap, Direction::Inbound, spi).named() {
            if self.trusted(slot, Direction::Inbound, spi) {
                return Ok(slot);
            }
        }
        self.counters.record_lookups += 1;
        let f = self.reader.inbound(&self.snap, spi).ok_or(DropReason::NoSa)?;
        let slot = self.ensure(f, Direction::Inbound)?;
        self.trust(f);
        Ok(slot)
    }

    #[inline]
    fn outbound(&mut self, dst: &IpAddr) -> Result<u32, DropReason> {
        let (found, spi) = self.lookup_outbound(dst).ok_or(DropReason::NoOutboundSa)?;
        // Found under this snapshot, and the state there trusted: it is that SA's.
        if self.trusted(found.slot, Direction::Outbound, spi) {
            return Ok(found.slot);
        }
        let slot = self.ensure(found, Direction::Outbound)?;
        self.trust(found);
        Ok(slot)
    }

    #[inline]
    fn entry(&self, slot: u32) -> Option<&SaEntry<B::Key>> {
        self.cache.get(slot as usize)?.as_ref().map(|c| &c.entry)
    }

    #[inline]
    fn entry_mut(&mut self, slot: u32) -> Option<&mut SaEntry<B::Key>> {
        self.cache.get_mut(slot as usize)?.as_mut().map(|c| &mut c.entry)
    }

    /// Start loading the key spans that the crypto of `len` bytes on `slot` reads.
    #[inline]
    fn prepare_crypto(&self, slot: u32, len: usize) {
        if let Some(e) = self.entry(slot) {
            e.rt.key_spans(len, &mut |at, n| prefetch::span(at, n));
        }
    }

    fn follow_nat(&mut self, spi: u32, to: Endpoint) -> bool {
        let owner = self.owners.of_spi(spi);
        if owner == self.me {
            return self.follow_local(spi, to);
        }
        if self.reader.outbound_by_spi(&self.snap, spi).is_none() {
            return false;
        }
        match self.inboxes.get(owner) {
            Some(q) if q.push((spi, to)).is_ok() => true,
            _ => {
                self.counters.nat_lost += 1;
                true
            }
        }
    }
}
