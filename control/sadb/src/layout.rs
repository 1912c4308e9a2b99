//! The layout of both segments, defined once. Every shared field is an atomic, so
//! concurrent access from the two processes is well defined; records and tables are
//! `#[repr(C)]` with sizes checked at compile time. Offsets are a pure function of the
//! capacities in the header, so a reader recomputes them rather than trusting them.

use core::sync::atomic::{AtomicU32, AtomicU64};

pub const SADB_MAGIC: u64 = u64::from_be_bytes(*b"NATTSADB");
pub const DP_MAGIC: u64 = u64::from_be_bytes(*b"NATTDPSG");
/// Bumped on any change to either layout.
pub const ABI_VERSION: u32 = 5;

/// Offset of `SaRecord::key_len` (tests corrupt it on purpose).
pub const KEY_LEN_OFFSET: usize = 64 + 44;

pub const CACHE_LINE: usize = 64;
/// Longest probe sequence a reader follows in any table (a bound on untrusted input).
pub const MAX_PROBE: usize = 4096;
/// Traffic selectors stored per SA (local and peer together).
pub const MAX_SELECTORS: usize = 8;
/// Bytes of an SA's name kept in its record.
pub const NAME_LEN: usize = 32;

/// Entries in the journal of changed records: a ring of words, each naming a record that
/// was added (`journal_word`: its uid and slot, written once it is live and linked, so
/// that the dataplane can build the runtime state of new SAs ahead of their first
/// packet without scanning the table) or given an end (`journal_end_word`: its slot,
/// written once `until_gen` is set, so that a worker stops trusting what it knows of
/// the slot without reading the record; see `Reader::trustable`). A reader that falls
/// more than this far behind scans, or distrusts everything, instead.
pub const JOURNAL_LEN: usize = 1 << 16;
/// Bits of a journal entry that hold the slot (`MAX_CAPACITY` is `1 << 24`).
pub const JOURNAL_SLOT_BITS: u32 = 24;
/// The bit of a journal entry that says the record was given an end, not added.
pub const JOURNAL_ENDED: u64 = 1 << 63;

/// A journal entry naming the record added with `uid` in `slot`.
pub fn journal_word(slot: u32, uid: u64) -> u64 {
    journal_uid(uid) << JOURNAL_SLOT_BITS | u64::from(slot)
}

/// A journal entry naming the record in `slot`, given an end.
pub fn journal_end_word(slot: u32) -> u64 {
    JOURNAL_ENDED | u64::from(slot)
}

/// What a journal entry says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Journaled {
    /// A record was added in `slot`, with a uid whose `journal_uid` is `uid`.
    Added { slot: u32, uid: u64 },
    /// The record in `slot` was given an end (it may be reclaimed later).
    Ended { slot: u32 },
}

impl Journaled {
    pub fn of(w: u64) -> Journaled {
        let slot = (w & ((1 << JOURNAL_SLOT_BITS) - 1)) as u32;
        if w & JOURNAL_ENDED != 0 {
            Journaled::Ended { slot }
        } else {
            Journaled::Added { slot, uid: w >> JOURNAL_SLOT_BITS }
        }
    }

    pub fn slot(self) -> u32 {
        match self {
            Journaled::Added { slot, .. } | Journaled::Ended { slot } => slot,
        }
    }
}

/// A record's uid as a journal entry holds it: its low 39 bits.
pub fn journal_uid(uid: u64) -> u64 {
    uid & (!JOURNAL_ENDED >> JOURNAL_SLOT_BITS)
}

/// A table or record slot is empty.
pub const EMPTY: u64 = 0;
/// Low half of a removed index entry.
pub const TOMB: u32 = u32::MAX;
/// `until_gen` of a record not scheduled for removal.
pub const FOREVER: u64 = u64::MAX;

/// Record states.
pub mod state {
    pub const FREE: u32 = 0;
    pub const LIVE: u32 = 1;
    pub const RETIRED: u32 = 2;
}

/// Bits of `SaRecord::flags`.
pub mod flag {
    pub const OUTBOUND: u32 = 1 << 0;
    pub const TRANSPORT: u32 = 1 << 1;
    pub const ESN: u32 = 1 << 2;
    pub const ENCAP: u32 = 1 << 3;
    pub const NAT_UPDATE: u32 = 1 << 4;
    pub const V6: u32 = 1 << 5;
    pub const HAS_PAIR: u32 = 1 << 6;
    pub const ALG_SHIFT: u32 = 8;
    pub const ALG_MASK: u32 = 0x7 << ALG_SHIFT;
    pub const DF_SHIFT: u32 = 12;
    pub const DF_MASK: u32 = 0x3 << DF_SHIFT;
    pub const KNOWN: u32 = OUTBOUND | TRANSPORT | ESN | ENCAP | NAT_UPDATE | V6 | HAS_PAIR | ALG_MASK | DF_MASK;
}

/// Bits of a selector's meta half-word: prefix length, family, side.
pub mod sel {
    pub const LEN_MASK: u16 = 0xff;
    pub const V6: u16 = 1 << 8;
    pub const PEER: u16 = 1 << 9;
    pub const USED: u16 = 1 << 15;
}

/// The SA segment's header. The first line is fixed at creation; `generation` has a
/// cache line of its own because every worker reads it every burst.
#[repr(C, align(64))]
pub struct SadbHeader {
    pub magic: AtomicU64,
    pub abi: AtomicU32,
    pub header_size: AtomicU32,
    pub record_size: AtomicU32,
    pub _pad0: AtomicU32,
    pub capacity: AtomicU64,
    pub spi_buckets: AtomicU64,
    pub lpm_buckets: AtomicU64,
    pub total_size: AtomicU64,
    pub hash_seed: AtomicU64,
    pub created_ns: AtomicU64,
    /// Published generation: readers see records with `from_gen <= g < until_gen`.
    pub generation: CacheLine<AtomicU64>,
    /// Bit 0: active inbound SPI table, bit 1: outbound SPI table, bit 2: LPM table.
    pub active: AtomicU32,
    pub writer_pid: AtomicU32,
    pub next_uid: AtomicU64,
    /// Prefix lengths present in the LPM table: IPv4 bits 0..=32, IPv6 bits 0..=128.
    pub lpm_len_v4: AtomicU64,
    pub lpm_len_v6: [AtomicU64; 3],
    /// How many records have been added to the journal (see `JOURNAL_LEN`).
    pub journal_head: AtomicU64,
    pub _pad1: AtomicU64,
}

/// Pads `T` to a cache line.
#[repr(C, align(64))]
pub struct CacheLine<T>(pub T);

/// One SA. Written only while FREE (unreachable), then published; afterwards only
/// `state`, `until_gen`, `retire_gen` and `remove_at_ns` change. The first cache line
/// holds everything a lookup checks, including a copy of the first peer selector, so a
/// lookup that hits touches one line of the record.
#[repr(C, align(64))]
#[derive(Default)]
pub struct SaRecord {
    // line 0: what a lookup checks
    pub state: AtomicU32,
    pub flags: AtomicU32,
    pub spi: AtomicU32,
    pub paired_spi: AtomicU32,
    pub uid: AtomicU64,
    pub from_gen: AtomicU64,
    pub until_gen: AtomicU64,
    /// Local selectors in the low byte, peer selectors in the next.
    pub sel_counts: AtomicU32,
    /// The first peer selector's meta (see `sel`), 0 if none; its address follows.
    pub peer0_meta: AtomicU32,
    pub peer0_addr: [AtomicU64; 2],
    // line 1
    pub key: [AtomicU64; 4],
    pub salt: AtomicU32,
    pub replay_window: AtomicU32,
    /// TTL in bits 0..8, `pad_to` in bits 8..16.
    pub ttl_pad: AtomicU32,
    pub key_len: AtomicU32,
    pub local: [AtomicU64; 2],
    // line 2
    pub peer: [AtomicU64; 2],
    /// soft bytes, hard bytes, soft packets, hard packets; 0: no limit.
    pub lifetime: [AtomicU64; 4],
    pub last_seq: AtomicU64,
    /// Local UDP port in the high half, peer port in the low half.
    pub ports: AtomicU32,
    pub _pad2: AtomicU32,
    // line 3: the writer's bookkeeping, the name, selector metas
    pub retire_gen: AtomicU64,
    /// Wall-clock time (ns since the epoch) at which a draining SA is removed; 0: none.
    pub remove_at_ns: AtomicU64,
    pub name: [AtomicU64; NAME_LEN / 8],
    /// Eight 16-bit selector metas (see `sel`).
    pub sel_meta: [AtomicU64; 2],
    // lines 4 and 5
    pub sel_addr: [[AtomicU64; 2]; MAX_SELECTORS],
}

pub const RECORD_SIZE: usize = 384;

/// The dataplane segment's header (written by the dataplane, read by the control).
#[repr(C, align(64))]
pub struct DpHeader {
    pub magic: AtomicU64,
    pub abi: AtomicU32,
    pub header_size: AtomicU32,
    pub total_size: AtomicU64,
    pub max_workers: AtomicU32,
    pub ring_entries: AtomicU32,
    pub resv_buckets: AtomicU64,
    /// The dataplane process using the segment, and when it started (ns since epoch).
    pub pid: AtomicU32,
    pub workers: AtomicU32,
    pub start_ns: AtomicU64,
    /// `created_ns` of the SA segment the dataplane attached.
    pub sadb_created_ns: AtomicU64,
    /// TSC ticks per second (latency and cycle counters are in TSC cycles).
    pub tsc_hz: AtomicU64,
    /// Bit 0: per-packet latency and per-stage cycles are measured (`--stats-detail on`).
    pub flags: AtomicU64,
    /// How packets reach their SA's worker (NUL-padded text).
    pub dispatch: [AtomicU64; 4],
    /// The crypto library of AES-GCM and GMAC keys (NUL-padded text; empty from a
    /// dataplane that predates the field, which was padding).
    pub crypto: [AtomicU64; 2],
}

/// `DpHeader::flags`: latency and stage cycles are measured.
pub const DP_FLAG_DETAIL: u64 = 1;

/// One worker's quiescence report and liveness, on its own line.
#[repr(C, align(64))]
pub struct WorkerSlot {
    /// The SA generation the worker read at its last quiescent point (between bursts).
    pub seen_gen: AtomicU64,
    pub heartbeat_ns: AtomicU64,
    /// 1 while the worker runs.
    pub active: AtomicU32,
    pub lcore: AtomicU32,
    pub _pad: [AtomicU64; 5],
}

/// Producer and consumer positions of one worker's event ring, each on its own line.
#[repr(C, align(64))]
pub struct RingHeader {
    pub head: CacheLine<AtomicU64>,
    pub tail: CacheLine<AtomicU64>,
    /// Events lost because the ring was full.
    pub dropped: CacheLine<AtomicU64>,
}

/// One event in a ring.
#[repr(C, align(64))]
pub struct EventSlot {
    pub w: [AtomicU64; 8],
}

/// A sequence-number reservation of one key: `key` is 0 (empty), 2 (forgotten) or the
/// key's fingerprint (0 and 2 stand in as 1 and 3), `key_fp` the whole fingerprint; numbers up
/// to `reserved` may have been used, last by SA `spi`.
#[repr(C, align(32))]
pub struct ResvEntry {
    pub key: AtomicU64,
    pub key_fp: AtomicU64,
    pub reserved: AtomicU64,
    pub spi: AtomicU64,
}

/// Ports the dataplane describes in its segment.
pub const MAX_PORTS: usize = 16;

/// One port as the dataplane last read it (every 100 ms): identity and the PMD's
/// counters, which only the DPDK process can read.
#[repr(C, align(64))]
pub struct PortSlot {
    /// `1 << 63 | role << 16 | port id` once described; 0 for an unused slot.
    pub id_role: AtomicU64,
    /// NUL-padded names.
    pub name: [AtomicU64; 4],
    pub driver: [AtomicU64; 4],
    /// The MAC address in the low 48 bits.
    pub mac: AtomicU64,
    /// ipackets, opackets, ibytes, obytes, imissed, ierrors, oerrors, rx_nombuf.
    pub stats: [AtomicU64; 8],
    pub rx_queues: AtomicU32,
    pub tx_queues: AtomicU32,
    pub _pad: [AtomicU64; 13],
}

/// Latency samples a worker exports: distinct histogram buckets at most.
pub const LATENCY_PAIRS: usize = 1024;

/// One worker's RX-to-TX latency histogram (TSC cycles), as (bucket value, count)
/// pairs, under a sequence lock: `version` is odd while the worker rewrites it.
#[repr(C, align(64))]
pub struct LatencyBlock {
    pub version: AtomicU64,
    pub pairs: AtomicU64,
    pub _pad: [AtomicU64; 6],
    /// value, count, value, count, ...
    pub data: [AtomicU64; 2 * LATENCY_PAIRS],
}

/// Fields of an SA's statistics in an `SaQuery` answer.
pub const SA_FIELDS: usize = 56;

/// A question to a worker about one SA (the control asks, the owning worker answers
/// between bursts; workers that do not own it answer "not here").
#[repr(C, align(64))]
pub struct SaQuery {
    /// The control increments `asked` after writing `spi` and `direction`.
    pub asked: AtomicU64,
    pub spi: AtomicU32,
    /// 0 inbound, 1 outbound.
    pub direction: AtomicU32,
    pub _pad0: [AtomicU64; 6],
    /// The worker stores `asked`'s value here after writing the answer.
    pub answered: AtomicU64,
    /// 1 if this worker holds the SA's state, 0 if not.
    pub found: AtomicU64,
    pub _pad1: [AtomicU64; 6],
    pub fields: [AtomicU64; SA_FIELDS],
}

const _: () = {
    assert!(core::mem::size_of::<PortSlot>() == 4 * CACHE_LINE);
    assert!(core::mem::size_of::<LatencyBlock>() == CACHE_LINE + 16 * LATENCY_PAIRS);
    assert!(core::mem::size_of::<SaQuery>() == 2 * CACHE_LINE + 8 * SA_FIELDS);
    assert!(core::mem::size_of::<SadbHeader>() == 4 * CACHE_LINE);
    assert!(core::mem::size_of::<SaRecord>() == RECORD_SIZE);
    assert!(core::mem::size_of::<DpHeader>() == 2 * CACHE_LINE);
    assert!(core::mem::size_of::<WorkerSlot>() == CACHE_LINE);
    assert!(core::mem::size_of::<RingHeader>() == 3 * CACHE_LINE);
    assert!(core::mem::size_of::<EventSlot>() == CACHE_LINE);
    assert!(core::mem::size_of::<ResvEntry>() == 32);
    assert!(core::mem::align_of::<SaRecord>() == CACHE_LINE);
};

fn align_up(x: usize, a: usize) -> usize {
    x.div_ceil(a) * a
}

/// Where everything is in the SA segment, computed from the capacities.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SadbLayout {
    pub capacity: usize,
    pub spi_buckets: usize,
    pub lpm_buckets: usize,
    pub records: usize,
    /// [inbound A, inbound B]
    pub spi_in: [usize; 2],
    pub spi_out: [usize; 2],
    pub lpm: [usize; 2],
    pub journal: usize,
    pub total: usize,
}

impl SadbLayout {
    /// Largest number of SAs a segment holds.
    pub const MAX_CAPACITY: usize = 1 << 24;

    pub fn new(capacity: usize, spi_buckets: usize, lpm_buckets: usize) -> Option<Self> {
        if capacity == 0
            || capacity > Self::MAX_CAPACITY
            || !spi_buckets.is_power_of_two()
            || !lpm_buckets.is_power_of_two()
            || spi_buckets > 4 * Self::MAX_CAPACITY
            || lpm_buckets > 4 * Self::MAX_CAPACITY
        {
            return None;
        }
        let records = align_up(core::mem::size_of::<SadbHeader>(), 4096);
        let mut at = align_up(records + capacity * RECORD_SIZE, 4096);
        let mut table = |n: usize| {
            let t = at;
            at = align_up(at + n * 8, 4096);
            t
        };
        let spi_in = [table(spi_buckets), table(spi_buckets)];
        let spi_out = [table(spi_buckets), table(spi_buckets)];
        let lpm = [table(lpm_buckets), table(lpm_buckets)];
        let journal = table(JOURNAL_LEN);
        // Whole 2 MiB pages, so the segment can live on hugetlbfs.
        let total = align_up(at, 2 << 20);
        Some(SadbLayout { capacity, spi_buckets, lpm_buckets, records, spi_in, spi_out, lpm, journal, total })
    }

    /// The default tables for a capacity: SPI tables twice, the LPM table four times
    /// the number of SAs, so that probes stay short and tombstones are compacted rarely.
    pub fn for_capacity(capacity: usize) -> Option<Self> {
        let spi = (2 * capacity).next_power_of_two().max(1024);
        let lpm = (4 * capacity).next_power_of_two().max(1024);
        Self::new(capacity, spi, lpm)
    }
}

/// Where everything is in the dataplane segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DpLayout {
    pub max_workers: usize,
    pub ring_entries: usize,
    pub resv_buckets: usize,
    pub workers: usize,
    pub counters: usize,
    pub rings: usize,
    pub ports: usize,
    pub latency: usize,
    pub queries: usize,
    pub resv: usize,
    pub total: usize,
}

impl DpLayout {
    pub const MAX_WORKERS: usize = 128;

    /// The layout the dataplane uses: 64 workers, 1024 events per worker ring, and
    /// reservations for about a million outbound SAs (sparse in the file until used). A
    /// segment of another layout is refused, not resized: it holds reservations.
    pub fn standard() -> Self {
        Self::new(64, 1024, 1 << 21).expect("valid")
    }

    pub fn new(max_workers: usize, ring_entries: usize, resv_buckets: usize) -> Option<Self> {
        if max_workers == 0
            || max_workers > Self::MAX_WORKERS
            || !ring_entries.is_power_of_two()
            || ring_entries > 1 << 20
            || !resv_buckets.is_power_of_two()
            || resv_buckets > 1 << 26
        {
            return None;
        }
        let workers = align_up(core::mem::size_of::<DpHeader>(), 4096);
        let counters = align_up(workers + max_workers * core::mem::size_of::<WorkerSlot>(), 4096);
        let rings = align_up(counters + max_workers * crate::stats::SLOTS * 8, 4096);
        let ring_bytes = core::mem::size_of::<RingHeader>() + ring_entries * core::mem::size_of::<EventSlot>();
        let ports = align_up(rings + max_workers * ring_bytes, 4096);
        let latency = align_up(ports + MAX_PORTS * core::mem::size_of::<PortSlot>(), 4096);
        let queries = align_up(latency + max_workers * core::mem::size_of::<LatencyBlock>(), 4096);
        let resv = align_up(queries + max_workers * core::mem::size_of::<SaQuery>(), 4096);
        let total = align_up(resv + resv_buckets * core::mem::size_of::<ResvEntry>(), 2 << 20);
        Some(DpLayout {
            max_workers,
            ring_entries,
            resv_buckets,
            workers,
            counters,
            rings,
            ports,
            latency,
            queries,
            resv,
            total,
        })
    }

    pub fn ring(&self, worker: usize) -> usize {
        self.rings
            + worker * (core::mem::size_of::<RingHeader>() + self.ring_entries * core::mem::size_of::<EventSlot>())
    }
}

/// The hash both processes use: a folded 64×64 multiply, seeded per segment.
#[inline]
pub fn mix(seed: u64, x: u64) -> u64 {
    let m = u128::from(x ^ seed) * u128::from(0x9e37_79b9_7f4a_7c15u64 ^ (seed.rotate_left(29) | 1));
    (m as u64) ^ ((m >> 64) as u64)
}

#[inline]
pub fn spi_hash(seed: u64, spi: u32) -> u64 {
    mix(seed, u64::from(spi))
}

/// Hash of an LPM key: family, prefix length and masked address.
#[inline]
pub fn lpm_hash(seed: u64, v6: bool, len: u8, addr: u128) -> u64 {
    let h = mix(seed, (addr >> 64) as u64 ^ (u64::from(len) << 56) ^ (u64::from(v6) << 63));
    mix(h, addr as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_are_aligned_and_in_bounds() {
        let l = SadbLayout::for_capacity(1000).unwrap();
        assert_eq!((l.spi_buckets, l.lpm_buckets), (2048, 4096));
        for off in [l.records, l.spi_in[0], l.spi_in[1], l.spi_out[0], l.spi_out[1], l.lpm[0], l.lpm[1]] {
            assert_eq!(off % 4096, 0);
            assert!(off < l.total);
        }
        assert!(l.lpm[1] + l.lpm_buckets * 8 <= l.total);
        assert!(SadbLayout::new(0, 1024, 1024).is_none());
        assert!(SadbLayout::new(10, 1000, 1024).is_none());
        let big = SadbLayout::for_capacity(2_100_000).unwrap();
        assert!(big.total < 2 << 30, "two million SAs fit in under 2 GiB: {}", big.total);
        let d = DpLayout::new(4, 1024, 4096).unwrap();
        assert!(d.ring(3) + 3 * 64 + 1024 * 64 <= d.resv);
        assert!(d.resv + 4096 * 32 <= d.total);
        assert!(DpLayout::new(200, 1024, 4096).is_none());
    }

    #[test]
    fn hashes_depend_on_seed_and_key() {
        assert_ne!(spi_hash(1, 0x1001), spi_hash(2, 0x1001));
        assert_ne!(lpm_hash(1, false, 32, 1), lpm_hash(1, false, 31, 1));
        assert_ne!(lpm_hash(1, false, 32, 1), lpm_hash(1, true, 32, 1));
        // Consecutive host addresses spread over buckets.
        let mut hit = std::collections::HashSet::new();
        for a in 0..4096u128 {
            hit.insert(lpm_hash(7, false, 32, 0x0a00_0000 + a) & 4095);
        }
        assert!(hit.len() > 2400, "{}", hit.len());
    }
}
