//! The dataplane segment (`/dev/shm/<name>.dp`): written by the dataplane, read by the
//! control process. Per worker: a quiescence report (the SA generation it last saw
//! between bursts) and an event ring (single producer, the worker; single consumer, the
//! control; a full ring drops and counts, it never blocks). Shared: the sequence-number
//! reservations that keep IVs unique across dataplane restarts.
//!
//! The segment outlives the dataplane process, so a restarted dataplane finds its
//! reservations again.

use crate::db::AttachError;
use crate::layout::*;
use crate::map::{Mapping, segment_path};
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use core::sync::atomic::AtomicU64;
use core::sync::atomic::Ordering::{Acquire, Relaxed, Release, SeqCst};
use natt_engine::event::{Event, EventKind, ExpiryCause, Limit};
use natt_engine::sa::{Direction, Endpoint};
use std::path::Path;

/// An attached dataplane segment.
pub struct DpSegment {
    map: Mapping,
    layout: DpLayout,
}

fn now_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

impl DpSegment {
    /// Dataplane: open the segment, or create it; either way reset workers and rings and
    /// record this process, keeping the reservations of an earlier run.
    pub fn open_or_create(
        dir: &Path,
        name: &str,
        layout: DpLayout,
        sadb_created_ns: u64,
    ) -> Result<DpSegment, AttachError> {
        let path = segment_path(dir, name, "dp");
        let seg = match Mapping::open_rw(&path) {
            Ok(map) => match Self::check(map, &path) {
                Ok(seg) if seg.layout == layout => Some(seg),
                Ok(_) | Err(_) => {
                    // A segment of another shape (or another build): its reservations
                    // cannot be read; refuse rather than lose them silently.
                    return Err(AttachError::Corrupt {
                        path,
                        what: "exists with another layout; keep it until its SAs are gone, or remove it to start over (no SA keys are reused)".into(),
                    });
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(AttachError::io(&path, e)),
        };
        let seg = match seg {
            Some(s) => s,
            None => {
                let map = Mapping::create(&path, layout.total).map_err(|e| AttachError::io(&path, e))?;
                let h: &DpHeader = map.get(0).expect("fits");
                h.abi.store(ABI_VERSION, Relaxed);
                h.header_size.store(core::mem::size_of::<DpHeader>() as u32, Relaxed);
                h.total_size.store(layout.total as u64, Relaxed);
                h.max_workers.store(layout.max_workers as u32, Relaxed);
                h.ring_entries.store(layout.ring_entries as u32, Relaxed);
                h.resv_buckets.store(layout.resv_buckets as u64, Relaxed);
                h.magic.store(DP_MAGIC, Release);
                DpSegment { map, layout }
            }
        };
        let h = seg.header();
        for w in 0..layout.max_workers {
            let s = seg.worker(w);
            s.active.store(0, SeqCst);
            s.seen_gen.store(0, Relaxed);
            seg.counters(w).reset();
            let r = seg.ring(w);
            r.head.0.store(0, Relaxed);
            r.tail.0.store(0, Relaxed);
            r.dropped.0.store(0, Relaxed);
        }
        h.sadb_created_ns.store(sadb_created_ns, Relaxed);
        for i in 0..MAX_PORTS {
            seg.port(i).id_role.store(0, Relaxed);
        }
        for w in 0..layout.max_workers {
            let l = seg.latency(w);
            l.version.store(0, Relaxed);
            l.pairs.store(0, Relaxed);
            let q = seg.query(w);
            q.answered.store(q.asked.load(Relaxed), Relaxed);
        }
        h.start_ns.store(now_ns(), Relaxed);
        h.workers.store(0, Relaxed);
        h.pid.store(std::process::id(), SeqCst);
        Ok(seg)
    }

    /// Control: attach to the dataplane's segment.
    pub fn attach(dir: &Path, name: &str) -> Result<DpSegment, AttachError> {
        let path = segment_path(dir, name, "dp");
        let map = Mapping::open_rw(&path).map_err(|e| AttachError::io(&path, e))?;
        Self::check(map, &path)
    }

    fn check(map: Mapping, path: &Path) -> Result<DpSegment, AttachError> {
        let p = || path.to_owned();
        let h: &DpHeader = map.get(0).ok_or_else(|| AttachError::Corrupt { path: p(), what: "too small".into() })?;
        let magic = h.magic.load(Acquire);
        if magic != DP_MAGIC {
            return Err(AttachError::Magic { path: p(), found: magic, expected: DP_MAGIC });
        }
        let abi = h.abi.load(Relaxed);
        if abi != ABI_VERSION {
            return Err(AttachError::Abi { path: p(), found: abi, expected: ABI_VERSION });
        }
        let layout = DpLayout::new(
            h.max_workers.load(Relaxed) as usize,
            h.ring_entries.load(Relaxed) as usize,
            h.resv_buckets.load(Relaxed) as usize,
        )
        .ok_or_else(|| AttachError::Corrupt { path: p(), what: "its sizes are not a valid layout".into() })?;
        if map.len() != layout.total || h.total_size.load(Relaxed) != layout.total as u64 {
            return Err(AttachError::Mismatch {
                path: p(),
                what: "size",
                found: map.len() as u64,
                expected: layout.total as u64,
            });
        }
        Ok(DpSegment { map, layout })
    }

    pub fn layout(&self) -> &DpLayout {
        &self.layout
    }

    /// (size now, size mapped) if another process truncated the file under us: what lay
    /// past its end is private to this process from then on (see `map`).
    pub fn shrunk(&self) -> Option<(u64, u64)> {
        self.map.shrunk()
    }

    pub fn header(&self) -> &DpHeader {
        self.map.get(0).expect("checked")
    }

    pub fn worker(&self, i: usize) -> &WorkerSlot {
        self.map.get(self.layout.workers + (i % self.layout.max_workers) * 64).expect("in layout")
    }

    fn ring(&self, i: usize) -> &RingHeader {
        self.map.get(self.layout.ring(i % self.layout.max_workers)).expect("in layout")
    }

    fn ring_slots(&self, i: usize) -> &[EventSlot] {
        let off = self.layout.ring(i % self.layout.max_workers) + core::mem::size_of::<RingHeader>();
        self.map.slice(off, self.layout.ring_entries).expect("in layout")
    }

    /// Worker `i`'s counter block.
    pub fn counters(&self, i: usize) -> crate::stats::Block<'_> {
        let off = self.layout.counters + (i % self.layout.max_workers) * crate::stats::SLOTS * 8;
        crate::stats::Block { c: self.map.slice(off, crate::stats::SLOTS).expect("in layout") }
    }

    /// Every active worker's counters, added up, and each worker's on its own.
    pub fn totals(&self) -> (crate::stats::Totals, Vec<(usize, crate::stats::Totals)>) {
        let mut all = crate::stats::Totals::default();
        let mut each = Vec::new();
        for w in 0..(self.header().workers.load(Relaxed) as usize).min(self.layout.max_workers) {
            let snap = self.counters(w).snapshot();
            all.add(&snap);
            let mut t = crate::stats::Totals::default();
            t.add(&snap);
            each.push((w, t));
        }
        (all, each)
    }

    /// Dataplane: a worker starts. Marks it active before it reads any generation, so the
    /// writer never reclaims what it might reach.
    pub fn register_worker(&self, i: usize, lcore: u32, generation_now: impl Fn() -> u64) {
        let s = self.worker(i);
        s.seen_gen.store(0, SeqCst);
        s.lcore.store(lcore, Relaxed);
        s.active.store(1, SeqCst);
        s.seen_gen.store(generation_now(), SeqCst);
        let h = self.header();
        h.workers.store(h.workers.load(Relaxed).max(i as u32 + 1), Relaxed);
    }

    /// Dataplane: a worker passed a quiescent point having read `generation`.
    #[inline]
    pub fn quiescent(&self, i: usize, generation: u64, now_ns: u64) {
        let s = self.worker(i);
        s.seen_gen.store(generation, Release);
        s.heartbeat_ns.store(now_ns, Relaxed);
    }

    pub fn unregister_worker(&self, i: usize) {
        self.worker(i).active.store(0, SeqCst);
    }

    /// Is the dataplane process that owns the segment alive?
    pub fn dataplane_alive(&self) -> bool {
        let pid = self.header().pid.load(SeqCst);
        pid != 0
            && rustix::process::Pid::from_raw(pid as i32).is_some_and(|p| rustix::process::test_kill_process(p).is_ok())
    }

    /// Control: the lowest generation reported by the running workers, or `None` when no
    /// dataplane runs (nothing is in use).
    pub fn min_seen(&self) -> Option<u64> {
        if !self.dataplane_alive() {
            return None;
        }
        (0..self.layout.max_workers)
            .filter(|&i| self.worker(i).active.load(SeqCst) == 1)
            .map(|i| self.worker(i).seen_gen.load(SeqCst))
            .min()
            .or(Some(u64::MAX))
    }

    /// Dataplane: the producer end of worker `i`'s event ring.
    pub fn producer(&self, i: usize) -> EventProducer<'_> {
        let ring = self.ring(i);
        let mut p = EventProducer { ring, slots: self.ring_slots(i), head: ring.head.0.load(Relaxed), tail: 0 };
        p.tail = p.consumer_at();
        p
    }

    /// Control: take every event waiting in any ring, in ring order.
    pub fn drain_events(&self, mut f: impl FnMut(usize, Result<(Event, u64), u64>)) {
        let n = self.layout.ring_entries as u64;
        for w in 0..self.layout.max_workers {
            let ring = self.ring(w);
            let slots = self.ring_slots(w);
            let head = ring.head.0.load(Acquire);
            let mut tail = ring.tail.0.load(Relaxed);
            // Never trust the producer's position beyond one ring's worth.
            if head.wrapping_sub(tail) > n {
                tail = head.saturating_sub(n);
            }
            while tail < head {
                let s = &slots[(tail % n) as usize];
                f(w, decode_event(s).ok_or(tail));
                tail += 1;
            }
            ring.tail.0.store(tail, Release);
        }
    }

    /// Events worker `i` lost because its ring was full.
    pub fn dropped_event_count(&self, i: usize) -> u64 {
        self.ring(i).dropped.0.load(Relaxed)
    }

    /// Events lost because rings were full, per worker.
    pub fn dropped_events(&self) -> Vec<u64> {
        (0..self.layout.max_workers).map(|w| self.ring(w).dropped.0.load(Relaxed)).collect()
    }

    /// Port slot `i` (of `MAX_PORTS`).
    pub fn port(&self, i: usize) -> &PortSlot {
        self.map.get(self.layout.ports + (i % MAX_PORTS) * core::mem::size_of::<PortSlot>()).expect("in layout")
    }

    /// Worker `i`'s latency histogram.
    pub fn latency(&self, i: usize) -> &LatencyBlock {
        self.map
            .get(self.layout.latency + (i % self.layout.max_workers) * core::mem::size_of::<LatencyBlock>())
            .expect("in layout")
    }

    /// Worker `i`'s SA question box.
    pub fn query(&self, i: usize) -> &SaQuery {
        self.map
            .get(self.layout.queries + (i % self.layout.max_workers) * core::mem::size_of::<SaQuery>())
            .expect("in layout")
    }

    /// Dataplane: describe the run (TSC rate, whether latency is measured, dispatch, the
    /// crypto library).
    pub fn describe(&self, tsc_hz: u64, detail: bool, dispatch: &str, crypto: &str) {
        let h = self.header();
        h.tsc_hz.store(tsc_hz, Relaxed);
        h.flags.store(if detail { DP_FLAG_DETAIL } else { 0 }, Relaxed);
        put_text(&h.dispatch, dispatch);
        put_text(&h.crypto, crypto);
    }

    /// The file lock that serialises SA questions from control processes.
    pub fn lock_queries(&self) -> Option<QueryLock<'_>> {
        for _ in 0..200 {
            if rustix::fs::flock(self.map.file(), rustix::fs::FlockOperation::NonBlockingLockExclusive).is_ok() {
                return Some(QueryLock(self));
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        None
    }

    pub fn reservations(&self) -> Reservations<'_> {
        Reservations { b: self.map.slice(self.layout.resv, self.layout.resv_buckets).expect("in layout") }
    }
}

/// Held while asking the workers about an SA; released when dropped.
pub struct QueryLock<'a>(&'a DpSegment);

impl Drop for QueryLock<'_> {
    fn drop(&mut self) {
        let _ = rustix::fs::flock(self.0.map.file(), rustix::fs::FlockOperation::Unlock);
    }
}

/// Write `text` NUL-padded into `words` (truncated to fit).
pub fn put_text(words: &[AtomicU64], text: &str) {
    let mut b = vec![0u8; words.len() * 8];
    let n = text.len().min(b.len());
    b[..n].copy_from_slice(&text.as_bytes()[..n]);
    for (w, c) in words.iter().zip(b.chunks(8)) {
        w.store(u64::from_le_bytes(c.try_into().expect("8 bytes")), Relaxed);
    }
}

/// Read NUL-padded text back (invalid UTF-8 is replaced, never trusted).
pub fn get_text(words: &[AtomicU64]) -> String {
    let b: Vec<u8> = words.iter().flat_map(|w| w.load(Relaxed).to_le_bytes()).collect();
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// A worker's end of its event ring. Owned by that worker alone.
pub struct EventProducer<'a> {
    ring: &'a RingHeader,
    slots: &'a [EventSlot],
    head: u64,
    tail: u64,
}

impl EventProducer<'_> {
    /// Queue an event; if the ring is full, count it as dropped and return false.
    #[inline]
    pub fn push(&mut self, ev: &Event, ts_ns: u64) -> bool {
        let n = self.slots.len() as u64;
        if n == 0 || self.head.wrapping_sub(self.tail) >= n {
            self.tail = self.consumer_at();
            if n == 0 || self.head.wrapping_sub(self.tail) >= n {
                let d = &self.ring.dropped.0;
                d.store(d.load(Relaxed).wrapping_add(1), Relaxed);
                return false;
            }
        }
        encode_event(&self.slots[(self.head % n) as usize], ev, ts_ns);
        self.head = self.head.wrapping_add(1);
        self.ring.head.0.store(self.head, Release);
        true
    }

    /// Where the consumer (the control process) says it has read to. It is never past
    /// the producer nor more than a ring behind; a position that is (the control
    /// process's memory is not ours to trust) counts as caught up, so that nonsense
    /// there costs events already queued, never a panic or a ring stuck full.
    #[inline]
    fn consumer_at(&self) -> u64 {
        let t = self.ring.tail.0.load(Acquire);
        if self.head.wrapping_sub(t) > self.slots.len() as u64 { self.head } else { t }
    }
}

fn addr_words(a: &IpAddr) -> (u64, u64, bool) {
    match a {
        IpAddr::V4(v) => (u64::from(v.to_bits()), 0, false),
        IpAddr::V6(v) => {
            let b = v.to_bits();
            ((b >> 64) as u64, b as u64, true)
        }
    }
}

fn words_addr(hi: u64, lo: u64, v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::from_bits(u128::from(hi) << 64 | u128::from(lo)))
    } else {
        IpAddr::V4(Ipv4Addr::from_bits(hi as u32))
    }
}

fn encode_event(s: &EventSlot, ev: &Event, ts_ns: u64) {
    let (kind, aux) = match ev.kind {
        EventKind::NatMappingChanged { .. } => (1u64, 0u64),
        EventKind::SoftLifetime(l) => (2, (l == Limit::Packets) as u64),
        EventKind::HardLifetime(l) => (3, (l == Limit::Packets) as u64),
        EventKind::SeqExhausted => (4, 0),
        EventKind::SaExpired(c) => (
            5,
            match c {
                ExpiryCause::HardLifetime(Limit::Bytes) => 0,
                ExpiryCause::HardLifetime(Limit::Packets) => 1,
                ExpiryCause::SeqExhausted => 2,
            },
        ),
    };
    let dir = (ev.direction == Direction::Outbound) as u64;
    let mut w = [0u64; 8];
    w[1] = u64::from(ev.spi);
    if let EventKind::NatMappingChanged { old, new, updated } = ev.kind {
        let (oh, ol, o6) = addr_words(&old.addr);
        let (nh, nl, n6) = addr_words(&new.addr);
        w[1] |= u64::from(updated.unwrap_or(0)) << 32;
        w[2] = oh;
        w[3] = ol;
        w[4] = nh;
        w[5] = nl;
        w[6] = u64::from(old.port)
            | u64::from(new.port) << 16
            | (o6 as u64) << 32
            | (n6 as u64) << 33
            | (updated.is_some() as u64) << 34;
    }
    w[0] = kind | dir << 8 | aux << 16;
    w[7] = ts_ns;
    for (slot, v) in s.w.iter().zip(w) {
        slot.store(v, Relaxed);
    }
}

fn decode_event(s: &EventSlot) -> Option<(Event, u64)> {
    let w: Vec<u64> = s.w.iter().map(|x| x.load(Relaxed)).collect();
    let (kind, dir, aux) = (w[0] & 0xff, (w[0] >> 8) & 0xff, (w[0] >> 16) & 0xff);
    if w[0] >> 24 != 0 || dir > 1 {
        return None;
    }
    let direction = if dir == 1 { Direction::Outbound } else { Direction::Inbound };
    let limit = |a| match a {
        0 => Some(Limit::Bytes),
        1 => Some(Limit::Packets),
        _ => None,
    };
    let kind = match kind {
        1 => {
            let f = w[6];
            let old = Endpoint { addr: words_addr(w[2], w[3], f >> 32 & 1 == 1), port: f as u16 };
            let new = Endpoint { addr: words_addr(w[4], w[5], f >> 33 & 1 == 1), port: (f >> 16) as u16 };
            let updated = (f >> 34 & 1 == 1).then_some((w[1] >> 32) as u32);
            EventKind::NatMappingChanged { old, new, updated }
        }
        2 => EventKind::SoftLifetime(limit(aux)?),
        3 => EventKind::HardLifetime(limit(aux)?),
        4 => EventKind::SeqExhausted,
        5 => EventKind::SaExpired(match aux {
            0 => ExpiryCause::HardLifetime(Limit::Bytes),
            1 => ExpiryCause::HardLifetime(Limit::Packets),
            2 => ExpiryCause::SeqExhausted,
            _ => return None,
        }),
        _ => return None,
    };
    Some((Event { spi: w[1] as u32, direction, kind }, w[7]))
}

const RESV_EMPTY: u64 = 0;
const RESV_TOMB: u64 = 2;

/// The identity word of a key's entry: its fingerprint, except that the two values
/// meaning empty and forgotten become their neighbours. Keys whose fingerprints collide
/// share an entry, which errs on the safe side: both resume above the higher.
fn resv_id(key_fp: u64) -> u64 {
    match key_fp {
        RESV_EMPTY | RESV_TOMB => key_fp | 1,
        _ => key_fp,
    }
}

fn resv_used(k: u64) -> bool {
    k != RESV_EMPTY && k != RESV_TOMB
}

/// The sequence-number reservations: per key (fingerprint of key and salt, which is what
/// a nonce is unique under), the highest sequence number that may have been used, and
/// the last SPI that used it. Keyed by key rather than SPI, so a key installed again
/// under another SPI resumes above its earlier use.
pub struct Reservations<'a> {
    b: &'a [ResvEntry],
}

impl Reservations<'_> {
    fn start(&self, key_fp: u64) -> usize {
        // The fingerprint is already a hash (truncated SHA-256).
        key_fp as usize & (self.b.len() - 1)
    }

    /// The entries for this key along its probe sequence. Normally one; two workers
    /// claiming at the same instant could make a second, so readers take the highest.
    fn matching(&self, key_fp: u64) -> impl Iterator<Item = &ResvEntry> {
        let want = resv_id(key_fp);
        let mask = self.b.len() - 1;
        let start = self.start(key_fp);
        (0..MAX_PROBE.min(self.b.len()))
            .map(move |n| &self.b[(start + n) & mask])
            .take_while(|e| e.key.load(Acquire) != RESV_EMPTY)
            .filter(move |e| e.key.load(Acquire) == want)
    }

    /// The highest number that may have been used under this key, whatever the SPI.
    pub fn get(&self, key_fp: u64) -> Option<u64> {
        self.matching(key_fp).map(|e| e.reserved.load(Acquire)).max()
    }

    /// Record that numbers up to `up_to` may be used under this key (by SA `spi`). The
    /// entry is claimed before the number is written, so a crash in between errs on the
    /// safe side. Returns false if the table has no room.
    pub fn reserve(&self, spi: u32, key_fp: u64, up_to: u64) -> bool {
        let want = resv_id(key_fp);
        let e = match self.matching(key_fp).next() {
            Some(e) => e,
            None => {
                let mask = self.b.len() - 1;
                let mut i = self.start(key_fp);
                let mut got = None;
                for _ in 0..MAX_PROBE.min(self.b.len()) {
                    let k = self.b[i].key.load(Acquire);
                    let claimed = k == want
                        || (!resv_used(k)
                            && match self.b[i].key.compare_exchange(k, want, SeqCst, Acquire) {
                                Ok(_) => {
                                    self.b[i].key_fp.store(key_fp, SeqCst);
                                    self.b[i].reserved.store(0, SeqCst);
                                    true
                                }
                                // Another worker claimed it first, perhaps for this key.
                                Err(now) => now == want,
                            });
                    if claimed {
                        got = Some(&self.b[i]);
                        break;
                    }
                    i = (i + 1) & mask;
                }
                match got {
                    Some(e) => e,
                    None => return false,
                }
            }
        };
        e.spi.store(u64::from(spi), Release);
        e.reserved.fetch_max(up_to, SeqCst);
        true
    }

    /// Forget a key's reservation (no SA has used it for long).
    pub fn forget(&self, key_fp: u64) -> bool {
        let mut any = false;
        for e in self.matching(key_fp) {
            e.key.store(RESV_TOMB, Release);
            any = true;
        }
        any
    }

    /// How many keys have a reservation, and how many could.
    pub fn occupancy(&self) -> (usize, usize) {
        let used = self.b.iter().filter(|e| resv_used(e.key.load(Relaxed))).count();
        (used, self.b.len())
    }

    /// Forget the reservations of every key `keep` refuses (keys no installed SA holds),
    /// so that a headend rekeying all day never runs out of room. Returns how many were
    /// forgotten. A worker still sending under such a key records it again at its next
    /// block. What is lost: a removed key installed again after this sweep starts from its
    /// configured sequence number (see the README's nonce-safety note).
    pub fn sweep(&self, keep: impl Fn(u64) -> bool) -> usize {
        let mut n = 0;
        for e in self.b {
            let k = e.key.load(Acquire);
            if !resv_used(k) || keep(e.key_fp.load(Acquire)) {
                continue;
            }
            if e.key.compare_exchange(k, RESV_TOMB, SeqCst, Relaxed).is_ok() {
                n += 1;
            }
        }
        n
    }

    /// Every recorded reservation: (last SPI, key fingerprint, highest reserved).
    pub fn entries(&self) -> Vec<(u32, u64, u64)> {
        self.b
            .iter()
            .filter(|e| resv_used(e.key.load(Acquire)))
            .map(|e| (e.spi.load(Acquire) as u32, e.key_fp.load(Acquire), e.reserved.load(Acquire)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("natt-dp-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn events_round_trip_and_full_rings_drop() {
        let d = tmp("ev");
        let seg = DpSegment::open_or_create(&d, "t", DpLayout::new(2, 4, 64).unwrap(), 1).unwrap();
        let ev = [
            Event {
                spi: 0x1001,
                direction: Direction::Inbound,
                kind: EventKind::NatMappingChanged {
                    old: Endpoint { addr: "198.51.100.7".parse().unwrap(), port: 4500 },
                    new: Endpoint { addr: "2001:db8::7".parse().unwrap(), port: 40000 },
                    updated: Some(0x2001),
                },
            },
            Event { spi: 5, direction: Direction::Outbound, kind: EventKind::SoftLifetime(Limit::Packets) },
            Event { spi: 6, direction: Direction::Outbound, kind: EventKind::SaExpired(ExpiryCause::SeqExhausted) },
            Event { spi: 7, direction: Direction::Inbound, kind: EventKind::HardLifetime(Limit::Bytes) },
            Event { spi: 8, direction: Direction::Outbound, kind: EventKind::SeqExhausted },
        ];
        let mut p = seg.producer(1);
        for (i, e) in ev.iter().enumerate() {
            assert_eq!(p.push(e, 100 + i as u64), i < 4, "the fifth does not fit a ring of four");
        }
        assert_eq!(seg.dropped_events(), vec![0, 1]);
        let mut got = Vec::new();
        seg.drain_events(|w, r| got.push((w, r.unwrap())));
        assert_eq!(got.iter().map(|(_, (e, _))| *e).collect::<Vec<_>>(), ev[..4].to_vec());
        assert_eq!(got[2].1.1, 102);
        // Room again.
        assert!(p.push(&ev[4], 9));
        let attached = DpSegment::attach(&d, "t").unwrap();
        let mut n = 0;
        attached.drain_events(|_, r| {
            assert_eq!(r.unwrap().0, ev[4]);
            n += 1;
        });
        assert_eq!(n, 1);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn garbage_in_a_ring_is_reported_not_trusted() {
        let d = tmp("garbage");
        let seg = DpSegment::open_or_create(&d, "t", DpLayout::new(1, 8, 64).unwrap(), 1).unwrap();
        let mut p = seg.producer(0);
        p.push(&Event { spi: 5, direction: Direction::Outbound, kind: EventKind::SeqExhausted }, 1);
        seg.ring_slots(0)[0].w[0].store(0xdead_beef, Relaxed);
        // A producer position far ahead is clamped to one ring.
        seg.ring(0).head.0.store(1 << 40, Relaxed);
        let mut bad = 0;
        let mut total = 0;
        seg.drain_events(|_, r| {
            total += 1;
            if r.is_err() {
                bad += 1;
            }
        });
        assert_eq!(total, 8);
        assert!(bad >= 1);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_consumer_position_that_makes_no_sense_never_stops_the_producer() {
        let d = tmp("tail");
        let seg = DpSegment::open_or_create(&d, "t", DpLayout::new(1, 4, 64).unwrap(), 1).unwrap();
        let ev = Event { spi: 5, direction: Direction::Outbound, kind: EventKind::SeqExhausted };
        let ring = seg.ring(0);
        // (producer position left in the segment, consumer position the control process wrote)
        for (head, tail) in [(0, 5), (3, u64::MAX), (10, 0), (u64::MAX - 1, 2), (u64::MAX, u64::MAX - 2), (7, 7)] {
            ring.head.0.store(head, Relaxed);
            ring.tail.0.store(tail, Relaxed);
            let mut p = seg.producer(0);
            let mut queued = 0;
            for i in 0..6 {
                queued += usize::from(p.push(&ev, i));
            }
            // Nonsense counts as caught up, every time the ring looks full: all six go.
            let ahead = head.wrapping_sub(tail);
            let room = if ahead > 4 { 6 } else { 4 - ahead as usize };
            assert_eq!(queued, room, "head {head}, tail {tail}");
            // Once the consumer catches up, there is room again.
            ring.tail.0.store(ring.head.0.load(Relaxed), Relaxed);
            assert!(p.push(&ev, 9), "head {head}, tail {tail}");
        }
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn sweeping_forgets_only_what_is_not_kept() {
        let d = tmp("sweep");
        let seg = DpSegment::open_or_create(&d, "s", DpLayout::new(1, 8, 64).unwrap(), 1).unwrap();
        let r = seg.reservations();
        let fp = |i: u64| i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        for i in 0..32u64 {
            assert!(r.reserve(0x1000 + i as u32, fp(i), 65536));
        }
        assert_eq!(r.occupancy(), (32, 64));
        assert_eq!(r.sweep(|k| (0..32).any(|i| i % 2 == 0 && fp(i) == k)), 16);
        assert_eq!(r.occupancy(), (16, 64));
        for i in 0..32u64 {
            let want = (i % 2 == 0).then_some(65536);
            assert_eq!(r.get(fp(i)), want, "key {i}");
        }
        // Room again: 48 new keys fit where 32 did before.
        for i in 100..148u64 {
            assert!(r.reserve(7, fp(i), 7), "key {i}");
        }
        assert_eq!(r.occupancy(), (64, 64));
        assert_eq!(r.sweep(|_| true), 0);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn reservations_survive_reattachment_and_follow_the_key_not_the_spi() {
        let d = tmp("resv");
        let layout = DpLayout::new(1, 8, 64).unwrap();
        // Fingerprints that all start probing at the same bucket.
        let fp = |i: u64| i << 40 | 0x10;
        {
            let seg = DpSegment::open_or_create(&d, "t", layout, 1).unwrap();
            let r = seg.reservations();
            assert_eq!(r.get(fp(1)), None);
            assert!(r.reserve(0x2001, fp(1), 65536));
            assert!(r.reserve(0x2001, fp(1), 1000), "never lowers");
            assert_eq!(r.get(fp(1)), Some(65536));
            assert_eq!(r.get(fp(2)), None, "another key starts over");
            // The same key under another SPI (removed, then installed again): one entry,
            // and the count goes on from the highest.
            assert!(r.reserve(0x3001, fp(1), 131072));
            assert_eq!(r.get(fp(1)), Some(131072));
            assert_eq!(r.entries(), vec![(0x3001, fp(1), 131072)]);
            // A new key under the old SPI has its own entry; the old key keeps its own.
            assert!(r.reserve(0x2001, fp(2), 5));
            assert_eq!((r.get(fp(1)), r.get(fp(2))), (Some(131072), Some(5)));
            for i in 3..65 {
                assert!(r.reserve(0x4000, fp(i), 1), "key {i}");
            }
            assert!(!r.reserve(0x9999, fp(99), 1), "full");
            assert!(r.forget(fp(3)));
            assert!(!r.forget(fp(3)), "already forgotten");
            assert_eq!(r.get(fp(3)), None);
            assert!(r.reserve(0x9999, fp(99), 7), "a forgotten entry is reused");
            assert_eq!(r.get(fp(64)), Some(1), "found past the reused entry");
        }
        let seg = DpSegment::open_or_create(&d, "t", layout, 1).unwrap();
        assert_eq!(seg.reservations().get(fp(1)), Some(131072));
        assert_eq!(seg.reservations().get(fp(99)), Some(7));
        assert!(
            DpSegment::open_or_create(&d, "t", DpLayout::new(2, 8, 64).unwrap(), 1).is_err(),
            "another shape is refused"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_key_claimed_twice_reads_as_its_highest() {
        let d = tmp("dup");
        let seg = DpSegment::open_or_create(&d, "t", DpLayout::new(1, 8, 64).unwrap(), 1).unwrap();
        let r = seg.reservations();
        let fp = 0x77u64 << 1;
        assert!(r.reserve(1, fp, 10));
        // Two workers racing to claim the same key could each take an entry: make the
        // second by hand, further along the probe sequence.
        let at = r.start(fp) + 1;
        r.b[at].key.store(resv_id(fp), SeqCst);
        r.b[at].key_fp.store(fp, SeqCst);
        r.b[at].reserved.store(500, SeqCst);
        assert_eq!(r.get(fp), Some(500));
        assert!(r.forget(fp));
        assert_eq!(r.get(fp), None, "both forgotten");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn quiescence_and_liveness() {
        let d = tmp("q");
        let seg = DpSegment::open_or_create(&d, "t", DpLayout::new(4, 8, 64).unwrap(), 1).unwrap();
        assert_eq!(seg.min_seen(), Some(u64::MAX), "alive, no workers yet");
        seg.register_worker(0, 1, || 10);
        seg.register_worker(2, 3, || 12);
        assert_eq!(seg.min_seen(), Some(10));
        seg.quiescent(0, 15, 1);
        assert_eq!(seg.min_seen(), Some(12));
        seg.unregister_worker(2);
        assert_eq!(seg.min_seen(), Some(15));
        seg.header().pid.store(0, SeqCst);
        assert_eq!(seg.min_seen(), None, "no dataplane");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
