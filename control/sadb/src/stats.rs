//! Worker counters as the dataplane publishes them in its segment: one block of
//! `SLOTS` 64-bit counters per worker. One list below names the counters and says where
//! each sits; the engine's drop reasons follow at `DROP_BASE`, in their list's order.
//! A worker writes its own block (plain stores, no contention); readers add blocks up.

use core::sync::atomic::AtomicU64;
use core::sync::atomic::Ordering::Relaxed;
use natt_engine::reason::DropReason;

/// Counters per worker block.
pub const SLOTS: usize = 128;
/// Where drop reason `r` sits: `DROP_BASE + r as usize`.
pub const DROP_BASE: usize = 64;

const _: () = assert!(DROP_BASE + DropReason::COUNT <= SLOTS);

macro_rules! counters {
    ($( $name:ident = $slot:literal : $desc:literal, )*) => {
        /// A named counter and its slot.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[allow(non_camel_case_types)]
        #[repr(usize)]
        pub enum Counter { $( $name = $slot, )* }

        impl Counter {
            pub const ALL: &'static [Counter] = &[ $( Counter::$name, )* ];

            pub const fn name(self) -> &'static str {
                match self { $( Counter::$name => stringify!($name), )* }
            }

            pub const fn description(self) -> &'static str {
                match self { $( Counter::$name => $desc, )* }
            }
        }

        const _: () = { $( assert!($slot < DROP_BASE); )* };
    };
}

counters! {
    in_packets = 0: "frames received from the public side (and fragments held or dropped before dispatch)",
    in_bytes = 1: "bytes of those frames",
    decap_packets = 2: "inner packets delivered by decapsulation",
    decap_bytes = 3: "bytes of those inner packets",
    out_packets = 4: "frames received from the protected side",
    out_bytes = 5: "bytes of those frames",
    encap_packets = 6: "ESP packets produced by encapsulation",
    encap_bytes = 7: "inner bytes encapsulated",
    keepalives = 8: "NAT-T keepalives consumed",
    punt_ike = 9: "IKE packets handed to the kernel interface",
    punt_host = 10: "other packets for the host handed to the kernel interface",
    frag_held = 11: "fragments stored for reassembly",
    frag_absorbed = 12: "fragments merged into a completed datagram",
    reassembled = 13: "datagrams reassembled",
    nat_changes = 14: "NAT mapping changes seen",
    rx_public = 15: "packets read from the public port",
    rx_protected = 16: "packets read from the protected port",
    rx_punt = 17: "packets read from the kernel interfaces",
    rx_handoff = 18: "packets received from other workers",
    handoff_out = 19: "packets handed to the worker owning their SA",
    tx_public = 20: "packets sent on the public port",
    tx_protected = 21: "packets sent on the protected port",
    tx_punt = 22: "packets sent to the kernel interfaces",
    tx_bytes = 23: "bytes sent on all ports",
    sa_loads = 24: "SAs loaded from the shared table into a worker (first packet after install or change)",
    events_dropped = 25: "events lost because the event ring was full",
    bursts = 26: "non-empty bursts processed",
    polls = 27: "poll loop iterations",
    linearized = 28: "multi-segment packets copied into one mbuf",
    busy_cycles = 29: "TSC cycles spent in loop iterations that had packets to process (cycles per packet = busy_cycles / packets)",
    rx_cycles = 30: "TSC cycles in RX bursts that returned packets (ports and rings)",
    dispatch_cycles = 31: "TSC cycles classifying packets and handing them to their SA's worker",
    decap_cycles = 32: "TSC cycles in the engine's decapsulation",
    encap_cycles = 33: "TSC cycles in the engine's encapsulation",
    tx_cycles = 34: "TSC cycles routing verdicts and sending",
    frag_pending = 35: "fragments held for reassembly now (a gauge)",
    tx_pending = 36: "packets waiting in TX buffers now (a gauge)",
    sa_built_here = 37: "of sa_loads, SAs the worker built itself (allocating on its core) because their first packet came before the SA builder's state did",
    sa_freed_here = 38: "SA states the worker freed itself (on its core) because the SA builder's return lane was full",
    sa_distrusts = 39: "times the worker stopped trusting every SA state it held and went back to each SA's record (the table changed by more than it walks between two snapshots)",
    sa_record_lookups = 40: "SA lookups that read the SA's record in the shared table (its state was not loaded or not trusted; see \"Trusted states\")",
    icmp_too_big = 41: "ICMP errors sent back to the protected side about packets too big for the tunnel (Fragmentation Needed, Packet Too Big)",
    mss_clamped = 42: "TCP SYNs whose MSS option was lowered to what fits the tunnel (--tcp-mss)",
    icmp_ttl_exceeded = 43: "ICMP Time Exceeded sent back to the protected side about packets whose TTL or hop limit would reach zero here",
}

/// One worker's block.
pub struct Block<'a> {
    pub(crate) c: &'a [AtomicU64],
}

impl Block<'_> {
    /// Publish a counter value (only the owning worker does).
    #[inline]
    pub fn set(&self, c: Counter, v: u64) {
        self.c[c as usize].store(v, Relaxed);
    }

    #[inline]
    pub fn set_drop(&self, r: DropReason, v: u64) {
        self.c[DROP_BASE + r as usize].store(v, Relaxed);
    }

    pub fn get(&self, c: Counter) -> u64 {
        self.c[c as usize].load(Relaxed)
    }

    pub fn get_drop(&self, r: DropReason) -> u64 {
        self.c[DROP_BASE + r as usize].load(Relaxed)
    }

    /// A copy of the whole block.
    pub fn snapshot(&self) -> [u64; SLOTS] {
        let mut v = [0u64; SLOTS];
        for (o, c) in v.iter_mut().zip(self.c) {
            *o = c.load(Relaxed);
        }
        v
    }

    pub fn reset(&self) {
        for c in self.c {
            c.store(0, Relaxed);
        }
    }
}

/// Counter values added up over workers (or one worker's), by name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Totals(pub [u64; SLOTS]);

impl Default for Totals {
    fn default() -> Self {
        Totals([0; SLOTS])
    }
}

impl Totals {
    /// Add a worker's counters. Wrapping: the values come from shared memory, which a
    /// broken or hostile process could fill with anything, and the sum must not panic.
    pub fn add(&mut self, block: &[u64; SLOTS]) {
        for (a, b) in self.0.iter_mut().zip(block) {
            *a = a.wrapping_add(*b);
        }
    }

    pub fn get(&self, c: Counter) -> u64 {
        self.0[c as usize]
    }

    pub fn drop(&self, r: DropReason) -> u64 {
        self.0[DROP_BASE + r as usize]
    }

    pub fn total_drops(&self) -> u64 {
        DropReason::ALL.iter().fold(0u64, |a, r| a.wrapping_add(self.drop(*r)))
    }

    /// The sum of some counters, wrapping (see `add`).
    pub fn sum(&self, cs: &[Counter]) -> u64 {
        cs.iter().fold(0u64, |a, c| a.wrapping_add(self.get(*c)))
    }
}

#[cfg(test)]
mod readme {
    use super::Counter;

    #[test]
    fn every_counter_is_documented_in_the_readme() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
        for c in Counter::ALL {
            let row = format!("| `{}` | {} |", c.name(), c.description());
            assert!(readme.contains(&row), "README.md lacks the row {row}");
        }
    }
}
