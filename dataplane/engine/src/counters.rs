//! Per-engine (per-worker) counters: plain integers written by the one owning thread.
//! Readers aggregate copies; nothing here is shared or atomic.

use crate::reason::{DropReason, PuntReason};

#[derive(Clone, Debug, PartialEq, Eq)]
#[repr(align(64))]
pub struct Counters {
    /// Frames handed to `decap_burst`.
    pub in_packets: u64,
    pub in_bytes: u64,
    /// Inner packets that decapsulation delivered, and their bytes.
    pub decap_packets: u64,
    pub decap_bytes: u64,
    /// Frames handed to `encap_burst`.
    pub out_packets: u64,
    pub out_bytes: u64,
    /// ESP packets that encapsulation produced, and their inner bytes.
    pub encap_packets: u64,
    pub encap_bytes: u64,
    pub keepalives: u64,
    pub punts: [u64; PuntReason::COUNT],
    pub drops: [u64; DropReason::COUNT],
    /// Fragments stored for reassembly, fragments merged into a completed datagram
    /// (the completing one excluded), and datagrams completed.
    pub frag_held: u64,
    pub frag_absorbed: u64,
    pub reassembled: u64,
    pub nat_changes: u64,
    /// ICMP errors sent back about packets too big for the tunnel.
    pub icmp_too_big: u64,
    /// ICMP Time Exceeded sent back about packets whose TTL would reach zero here.
    pub icmp_ttl_exceeded: u64,
    /// TCP SYNs whose MSS option was lowered to what fits the tunnel.
    pub mss_clamped: u64,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            in_packets: 0,
            in_bytes: 0,
            decap_packets: 0,
            decap_bytes: 0,
            out_packets: 0,
            out_bytes: 0,
            encap_packets: 0,
            encap_bytes: 0,
            keepalives: 0,
            punts: [0; PuntReason::COUNT],
            drops: [0; DropReason::COUNT],
            frag_held: 0,
            frag_absorbed: 0,
            reassembled: 0,
            nat_changes: 0,
            icmp_too_big: 0,
            icmp_ttl_exceeded: 0,
            mss_clamped: 0,
        }
    }
}

impl Counters {
    #[inline]
    pub fn drop(&mut self, r: DropReason) {
        self.drops[r as usize] += 1;
    }

    pub fn drops_of(&self, r: DropReason) -> u64 {
        self.drops[r as usize]
    }

    pub fn punts_of(&self, r: PuntReason) -> u64 {
        self.punts[r as usize]
    }

    pub fn total_drops(&self) -> u64 {
        self.drops.iter().sum()
    }

    /// Add another worker's counters into these.
    pub fn merge(&mut self, o: &Counters) {
        self.in_packets += o.in_packets;
        self.in_bytes += o.in_bytes;
        self.decap_packets += o.decap_packets;
        self.decap_bytes += o.decap_bytes;
        self.out_packets += o.out_packets;
        self.out_bytes += o.out_bytes;
        self.encap_packets += o.encap_packets;
        self.encap_bytes += o.encap_bytes;
        self.keepalives += o.keepalives;
        for (a, b) in self.punts.iter_mut().zip(o.punts.iter()) {
            *a += b;
        }
        for (a, b) in self.drops.iter_mut().zip(o.drops.iter()) {
            *a += b;
        }
        self.frag_held += o.frag_held;
        self.frag_absorbed += o.frag_absorbed;
        self.reassembled += o.reassembled;
        self.nat_changes += o.nat_changes;
        self.icmp_too_big += o.icmp_too_big;
        self.icmp_ttl_exceeded += o.icmp_ttl_exceeded;
        self.mss_clamped += o.mss_clamped;
    }
}
