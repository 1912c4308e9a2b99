//! Open-addressing hash tables in shared memory. A bucket is one `AtomicU64`:
//! `tag << 32 | (slot + 1)` for an entry, 0 when empty, low half `TOMB` once removed.
//! Every change is one atomic store, so readers always see a consistent table; they
//! follow at most `MAX_PROBE` buckets whatever the memory holds. Several entries may
//! share a tag (an SA and its replacement during a batch); callers decide which one
//! is visible.

use crate::layout::{EMPTY, MAX_PROBE, TOMB};
use core::sync::atomic::AtomicU64;
use core::sync::atomic::Ordering::{Acquire, Release};

#[inline]
fn entry(tag: u32, slot: u32) -> u64 {
    u64::from(tag) << 32 | (u64::from(slot) + 1)
}

/// The slot a bucket's value `e` names if it is an entry tagged `tag` (not empty, not a
/// tombstone). A low half of 0 with a tag (no writer makes one: the memory is not ours to
/// trust) names nothing.
#[inline]
pub fn slot_named(e: u64, tag: u32) -> Option<u32> {
    let low = e as u32;
    if e == EMPTY || (e >> 32) as u32 != tag || low == TOMB {
        return None;
    }
    low.checked_sub(1)
}

/// Where a lookup goes in one table: the probe chain of hash `h`, and the tag its
/// entries carry. For a reader that looks ahead: prefetch `first`, then `named` is most
/// likely the record the lookup reads.
#[derive(Clone, Copy)]
pub struct Chain<'a> {
    pub table: Table<'a>,
    pub h: u64,
    pub tag: u32,
}

impl<'a> Chain<'a> {
    /// The chain's first bucket.
    #[inline]
    pub fn first(&self) -> &'a AtomicU64 {
        self.table.first(self.h)
    }

    /// The slot of the chain's first entry with the tag (most entries sit in their first
    /// bucket, some a few further on, in the same cache line), without reading records.
    #[inline]
    pub fn named(&self) -> Option<u32> {
        self.table.find(self.h, self.tag, Some)
    }
}

/// One table: a power-of-two slice of buckets.
#[derive(Clone, Copy)]
pub struct Table<'a> {
    b: &'a [AtomicU64],
    mask: usize,
}

/// Why an entry could not be inserted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Full;

impl<'a> Table<'a> {
    pub fn new(b: &'a [AtomicU64]) -> Option<Self> {
        b.len().is_power_of_two().then(|| Table { b, mask: b.len() - 1 })
    }

    pub fn buckets(&self) -> usize {
        self.b.len()
    }

    /// The first bucket of hash `h`'s probe chain.
    #[inline]
    pub fn first(&self, h: u64) -> &'a AtomicU64 {
        &self.b[h as usize & self.mask]
    }

    /// Call `f` with the slot of each entry tagged `tag`, in probe order from hash `h`,
    /// until it returns `Some`, an empty bucket ends the chain, or the probe bound.
    #[inline]
    pub fn find<T>(&self, h: u64, tag: u32, mut f: impl FnMut(u32) -> Option<T>) -> Option<T> {
        let mut i = h as usize & self.mask;
        for _ in 0..MAX_PROBE.min(self.b.len()) {
            let e = self.b[i].load(Acquire);
            if e == EMPTY {
                return None;
            }
            if let Some(t) = slot_named(e, tag).and_then(&mut f) {
                return Some(t);
            }
            i = (i + 1) & self.mask;
        }
        None
    }

    /// Writer: put (tag, slot) in the first empty or removed bucket of its chain.
    /// Returns the probe distance.
    pub fn insert(&self, h: u64, tag: u32, slot: u32) -> Result<usize, Full> {
        let mut i = h as usize & self.mask;
        for d in 0..MAX_PROBE.min(self.b.len()) {
            let e = self.b[i].load(Acquire);
            if e == EMPTY || e as u32 == TOMB {
                self.b[i].store(entry(tag, slot), Release);
                return Ok(d);
            }
            i = (i + 1) & self.mask;
        }
        Err(Full)
    }

    /// Writer: is (tag, slot) in the table?
    pub fn contains(&self, h: u64, tag: u32, slot: u32) -> bool {
        self.find(h, tag, |s| (s == slot).then_some(())).is_some()
    }

    /// Writer: replace (tag, slot) with a tombstone. Returns whether it was there.
    pub fn remove(&self, h: u64, tag: u32, slot: u32) -> bool {
        let want = entry(tag, slot);
        let mut i = h as usize & self.mask;
        for _ in 0..MAX_PROBE.min(self.b.len()) {
            let e = self.b[i].load(Acquire);
            if e == EMPTY {
                return false;
            }
            if e == want {
                self.b[i].store(u64::from(TOMB), Release);
                return true;
            }
            i = (i + 1) & self.mask;
        }
        false
    }

    /// Raw bucket `i`: `Some((tag, Some(slot)))` for an entry, `Some((_, None))` for a
    /// tombstone (or a value no writer makes: a tag with a low half of 0), `None` when
    /// empty.
    pub fn bucket(&self, i: usize) -> Option<(u32, Option<u32>)> {
        let e = self.b[i & self.mask].load(Acquire);
        if e == EMPTY {
            return None;
        }
        let low = e as u32;
        Some(((e >> 32) as u32, low.checked_sub(1).filter(|_| low != TOMB)))
    }

    /// Writer: empty buckets `range` (of a table no reader uses).
    pub fn clear(&self, range: core::ops::Range<usize>) {
        for b in &self.b[range] {
            b.store(EMPTY, Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(n: usize) -> Vec<AtomicU64> {
        (0..n).map(|_| AtomicU64::new(0)).collect()
    }

    #[test]
    fn insert_find_remove_and_tombstones() {
        let v = table(16);
        let t = Table::new(&v).unwrap();
        // Three entries colliding at bucket 3.
        assert_eq!(t.insert(3, 7, 0), Ok(0));
        assert_eq!(t.insert(3, 8, 1), Ok(1));
        assert_eq!(t.insert(3, 7, 2), Ok(2));
        let all = |tag| {
            let mut v = Vec::new();
            t.find(3, tag, |s| {
                v.push(s);
                None::<()>
            });
            v
        };
        assert_eq!(all(7), vec![0, 2]);
        assert!(t.remove(3, 8, 1));
        assert!(!t.remove(3, 8, 1));
        // The tombstone keeps the chain: entry 2 is still found.
        assert_eq!(all(7), vec![0, 2]);
        assert_eq!(t.bucket(4), Some((0, None)));
        // Insertion reuses the tombstone.
        assert_eq!(t.insert(3, 9, 5), Ok(1));
        assert!(t.contains(3, 9, 5));
        assert_eq!(t.find(3, 7, |s| (s == 2).then_some(s)), Some(2));
    }

    #[test]
    fn a_bucket_names_a_slot_only_for_its_tag() {
        let v = table(4);
        let t = Table::new(&v).unwrap();
        t.insert(1, 7, 5).unwrap();
        assert_eq!(slot_named(t.first(1).load(Acquire), 7), Some(5));
        assert_eq!(slot_named(t.first(1).load(Acquire), 8), None);
        assert!(t.remove(1, 7, 5));
        assert_eq!(slot_named(t.first(1).load(Acquire), 7), None, "a tombstone names nothing");
        assert_eq!(slot_named(EMPTY, 0), None, "an empty bucket names nothing, even for tag 0");
        // A tag with a low half of 0 (slot "-1"), which only a scribbling writer makes:
        // nothing, in debug builds too (it was an overflow there).
        assert_eq!(slot_named(7 << 32, 7), None);
        v[2].store(7 << 32, Release);
        assert_eq!(t.bucket(2), Some((7, None)));
    }

    #[test]
    fn full_tables_and_probe_bounds() {
        let v = table(4);
        let t = Table::new(&v).unwrap();
        for s in 0..4 {
            t.insert(0, 1, s).unwrap();
        }
        assert_eq!(t.insert(0, 1, 9), Err(Full));
        // A full table of non-matching entries ends the search after one lap.
        assert_eq!(t.find(0, 2, Some), None);
        assert!(Table::new(&v[..3]).is_none());
    }
}
