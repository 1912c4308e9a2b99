//! Reassembly of outer IPv4 and IPv6 fragments, bounded in memory and time.
//!
//! Fragments are copied into one of a fixed number of preallocated slots. A source may
//! hold only `per_source` slots at once, a datagram may not exceed `max_datagram`
//! bytes, and an incomplete datagram is discarded `timeout_ns` after its first
//! fragment arrived. Overlapping fragments discard the whole datagram (RFC 5722).
//! Nothing here allocates after construction.

use crate::reason::DropReason;
use crate::sa::prefix::KeyMap;
use crate::wire::{ipv4, ipv6};

/// Limits of the reassembly table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReassemblyConfig {
    /// Datagrams in reassembly at once (0 turns reassembly off: fragments are dropped).
    pub slots: usize,
    /// Largest reassembled datagram in bytes, IP header included.
    pub max_datagram: usize,
    /// Slots one source address may hold at once.
    pub per_source: usize,
    /// Time from a datagram's first fragment to its discard if still incomplete.
    pub timeout_ns: u64,
}

impl Default for ReassemblyConfig {
    fn default() -> Self {
        ReassemblyConfig { slots: 256, max_datagram: 9216, per_source: 16, timeout_ns: 3_000_000_000 }
    }
}

/// Room kept for the unfragmentable headers (IPv4 header with options, or the IPv6
/// header and the extension headers before the fragment header).
const MAX_HEADER: usize = 128;
const NIL: u32 = u32::MAX;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct FragKey {
    src: [u8; 16],
    dst: [u8; 16],
    ident: u32,
    proto: u8,
    v6: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct SourceKey {
    src: [u8; 16],
    v6: bool,
}

#[derive(Clone)]
struct Slot {
    key: FragKey,
    deadline: u64,
    /// Payload length, once the final fragment has been seen.
    total: Option<usize>,
    received: usize,
    frags: u32,
    hdr: [u8; MAX_HEADER],
    /// 0 until the first fragment (offset 0) has arrived.
    hdr_len: usize,
    /// IPv6: offset in `hdr` of the next-header byte that named the fragment header,
    /// and the protocol to write there.
    v6_patch: Option<(usize, u8)>,
}

/// One fragment, already located in its packet by the parser.
#[derive(Clone, Copy, Debug)]
pub struct Fragment<'a> {
    /// The whole IP packet, truncated to its total length.
    pub ip: &'a [u8],
    pub v6: bool,
    /// Offset in `ip` of the fragmentable data.
    pub data_offset: usize,
    /// IPv4: header length. IPv6: offset of the fragment header.
    pub unfrag_len: usize,
    pub offset: usize,
    pub more: bool,
    pub ident: u32,
    /// IPv4 protocol; IPv6 next header of the fragmentable part.
    pub proto: u8,
    /// IPv6: offset in `ip` of the next-header byte that names the fragment header.
    pub v6_prev_nh: usize,
}

/// What became of a fragment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FragOutcome {
    /// Stored; the datagram is not complete yet.
    Held,
    /// This fragment completed the datagram in slot `n`: call [`Reassembler::emit`].
    Complete(u32),
    /// This fragment is dropped, and with it `also` fragments held for its datagram.
    Drop { reason: DropReason, also: u32 },
}

/// The reassembly table.
pub struct Reassembler {
    cfg: ReassemblyConfig,
    slots: Vec<Slot>,
    data: Vec<u8>,
    blocks: Vec<u64>,
    words: usize,
    index: KeyMap<FragKey, u32>,
    per_src: KeyMap<SourceKey, u32>,
    free: Vec<u32>,
    /// Live slots in order of creation (which is deadline order).
    first: u32,
    last: u32,
    prev: Vec<u32>,
    next: Vec<u32>,
    held: u32,
}

impl Reassembler {
    pub fn new(cfg: ReassemblyConfig) -> Self {
        let n = cfg.slots;
        let words = cfg.max_datagram.div_ceil(8).div_ceil(64);
        let empty = Slot {
            key: FragKey { src: [0; 16], dst: [0; 16], ident: 0, proto: 0, v6: false },
            deadline: 0,
            total: None,
            received: 0,
            frags: 0,
            hdr: [0; MAX_HEADER],
            hdr_len: 0,
            v6_patch: None,
        };
        let mut index = KeyMap::default();
        index.reserve(2 * n);
        let mut per_src = KeyMap::default();
        per_src.reserve(2 * n);
        Reassembler {
            cfg,
            slots: vec![empty; n],
            data: vec![0; n * cfg.max_datagram],
            blocks: vec![0; n * words],
            words,
            index,
            per_src,
            free: (0..n as u32).rev().collect(),
            first: NIL,
            last: NIL,
            prev: vec![NIL; n],
            next: vec![NIL; n],
            held: 0,
        }
    }

    pub fn config(&self) -> &ReassemblyConfig {
        &self.cfg
    }

    /// Fragments held in incomplete datagrams.
    pub fn held(&self) -> u32 {
        self.held
    }

    /// Datagrams in reassembly.
    pub fn in_progress(&self) -> usize {
        self.cfg.slots - self.free.len()
    }

    /// Discard datagrams whose time is up. Returns the fragments discarded.
    pub fn expire(&mut self, now: u64) -> u32 {
        let mut dropped = 0;
        while self.first != NIL && self.slots[self.first as usize].deadline <= now {
            dropped += self.release(self.first);
        }
        dropped
    }

    /// Add a fragment.
    pub fn add(&mut self, now: u64, f: &Fragment<'_>) -> FragOutcome {
        let len = f.ip.len().saturating_sub(f.data_offset);
        // Non-final fragments carry a multiple of 8 bytes; nothing may end past 64 KiB.
        if (f.more && (len == 0 || len % 8 != 0)) || f.offset + len > 65535 || f.data_offset > f.ip.len() {
            return FragOutcome::Drop { reason: DropReason::FragInvalid, also: 0 };
        }
        if f.unfrag_len > MAX_HEADER {
            return FragOutcome::Drop { reason: DropReason::FragTooBig, also: 0 };
        }
        if self.cfg.slots == 0 {
            return FragOutcome::Drop { reason: DropReason::FragTableFull, also: 0 };
        }
        let key = make_key(f);
        let id = match self.index.get(&key) {
            Some(&id) => id,
            None => match self.alloc(now, key) {
                Some(id) => id,
                None => return FragOutcome::Drop { reason: DropReason::FragTableFull, also: 0 },
            },
        };
        let i = id as usize;
        let end = f.offset + len;
        let max_payload = self.cfg.max_datagram.saturating_sub(f.unfrag_len.max(self.slots[i].hdr_len));
        if end > max_payload {
            let also = self.release(id);
            return FragOutcome::Drop { reason: DropReason::FragTooBig, also };
        }
        let s = &self.slots[i];
        let bad_final = match s.total {
            Some(t) => end > t || (!f.more && end != t),
            None => !f.more && s.received > 0 && self.highest_end(i) > end,
        };
        if bad_final {
            let also = self.release(id);
            return FragOutcome::Drop { reason: DropReason::FragInvalid, also };
        }
        // Overlap: any 8-byte block of this fragment already present. A final fragment
        // may end inside a block; blocks are marked by their first byte.
        let (b0, b1) = (f.offset / 8, end.div_ceil(8));
        let words = &mut self.blocks[i * self.words..(i + 1) * self.words];
        if (b0..b1).any(|b| words[b / 64] & (1 << (b % 64)) != 0) {
            let also = self.release(id);
            return FragOutcome::Drop { reason: DropReason::FragOverlap, also };
        }
        for b in b0..b1 {
            words[b / 64] |= 1 << (b % 64);
        }
        let base = i * self.cfg.max_datagram;
        self.data[base + f.offset..base + end].copy_from_slice(&f.ip[f.data_offset..]);
        let s = &mut self.slots[i];
        if f.offset == 0 {
            s.hdr[..f.unfrag_len].copy_from_slice(&f.ip[..f.unfrag_len]);
            s.hdr_len = f.unfrag_len;
            s.v6_patch = f.v6.then_some((f.v6_prev_nh, f.proto));
        }
        if !f.more {
            s.total = Some(end);
        }
        s.received += len;
        s.frags += 1;
        self.held += 1;
        match s.total {
            Some(t) if s.received == t && s.hdr_len != 0 => FragOutcome::Complete(id),
            _ => FragOutcome::Held,
        }
    }

    /// Write the completed datagram of slot `id` into `out` (from its IP header on) and
    /// free the slot. Returns the datagram length and the number of fragments it was
    /// made of, or the drop reason (datagram larger than `out`) and the number of
    /// fragments dropped with it.
    pub fn emit(&mut self, id: u32, out: &mut [u8]) -> Result<(usize, u32), (DropReason, u32)> {
        let i = id as usize;
        let s = &self.slots[i];
        let frags = s.frags;
        let Some(total) = s.total else {
            let also = self.release(id);
            return Err((DropReason::FragInvalid, also));
        };
        let hl = s.hdr_len;
        let n = hl + total;
        if n > out.len() || (s.key.v6 && total > 65535) || (!s.key.v6 && n > 65535) {
            let also = self.release(id);
            return Err((DropReason::FragTooBig, also));
        }
        out[..hl].copy_from_slice(&s.hdr[..hl]);
        let base = i * self.cfg.max_datagram;
        out[hl..n].copy_from_slice(&self.data[base..base + total]);
        if s.key.v6 {
            if let Some((at, nh)) = s.v6_patch {
                out[at] = nh;
            }
            let mut p = ipv6::Packet::new_unchecked(&mut out[..n]);
            p.set_payload_len((n - ipv6::HEADER_LEN) as u16);
        } else {
            let mut p = ipv4::Packet::new_unchecked(&mut out[..n]);
            p.set_total_len(n as u16);
            p.clear_frag();
            p.fill_checksum();
        }
        self.release(id);
        Ok((n, frags))
    }

    fn highest_end(&self, i: usize) -> usize {
        let words = &self.blocks[i * self.words..(i + 1) * self.words];
        for (w, &bits) in words.iter().enumerate().rev() {
            if bits != 0 {
                return (w * 64 + 63 - bits.leading_zeros() as usize + 1) * 8;
            }
        }
        0
    }

    fn alloc(&mut self, now: u64, key: FragKey) -> Option<u32> {
        self.expire(now);
        let src = SourceKey { src: key.src, v6: key.v6 };
        let count = self.per_src.get(&src).copied().unwrap_or(0);
        if count as usize >= self.cfg.per_source {
            return None;
        }
        let id = self.free.pop()?;
        *self.per_src.entry(src).or_insert(0) += 1;
        self.index.insert(key, id);
        let i = id as usize;
        let s = &mut self.slots[i];
        s.key = key;
        s.deadline = now.saturating_add(self.cfg.timeout_ns);
        s.total = None;
        s.received = 0;
        s.frags = 0;
        s.hdr_len = 0;
        s.v6_patch = None;
        self.blocks[i * self.words..(i + 1) * self.words].fill(0);
        // Append to the creation-ordered list.
        self.prev[i] = self.last;
        self.next[i] = NIL;
        if self.last != NIL {
            self.next[self.last as usize] = id;
        } else {
            self.first = id;
        }
        self.last = id;
        Some(id)
    }

    /// Free slot `id`; returns the fragments it held.
    fn release(&mut self, id: u32) -> u32 {
        let i = id as usize;
        let key = self.slots[i].key;
        let frags = self.slots[i].frags;
        self.index.remove(&key);
        let src = SourceKey { src: key.src, v6: key.v6 };
        if let Some(c) = self.per_src.get_mut(&src) {
            *c -= 1;
            if *c == 0 {
                self.per_src.remove(&src);
            }
        }
        let (p, n) = (self.prev[i], self.next[i]);
        if p != NIL {
            self.next[p as usize] = n
        } else {
            self.first = n
        }
        if n != NIL {
            self.prev[n as usize] = p
        } else {
            self.last = p
        }
        self.slots[i].frags = 0;
        self.held -= frags;
        self.free.push(id);
        frags
    }
}

fn make_key(f: &Fragment<'_>) -> FragKey {
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    if f.v6 {
        src.copy_from_slice(&f.ip[8..24]);
        dst.copy_from_slice(&f.ip[24..40]);
    } else {
        src[..4].copy_from_slice(&f.ip[12..16]);
        dst[..4].copy_from_slice(&f.ip[16..20]);
    }
    // RFC 8200 keys IPv6 fragments by addresses and identification only.
    FragKey { src, dst, ident: f.ident, proto: if f.v6 { 0 } else { f.proto }, v6: f.v6 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ipv4::Repr;
    use core::net::Ipv4Addr;

    fn v4_frag(src: u8, ident: u16, offset: usize, more: bool, data: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; 20 + data.len()];
        let mut p = ipv4::Packet::new_unchecked(&mut b[..]);
        p.emit_basic(&Repr {
            src: Ipv4Addr::new(198, 51, 100, src),
            dst: Ipv4Addr::new(203, 0, 113, 1),
            protocol: 17,
            tos: 0,
            ttl: 64,
            ident,
            dont_frag: false,
            total_len: (20 + data.len()) as u16,
        });
        let fo = ((offset / 8) as u16) | if more { 0x2000 } else { 0 };
        b[6..8].copy_from_slice(&fo.to_be_bytes());
        ipv4::Packet::new_unchecked(&mut b[..]).fill_checksum();
        b[20..].copy_from_slice(data);
        b
    }

    fn frag(ip: &[u8]) -> Fragment<'_> {
        let p = ipv4::Packet::new_checked(ip).unwrap();
        Fragment {
            ip,
            v6: false,
            data_offset: 20,
            unfrag_len: 20,
            offset: p.frag_offset(),
            more: p.more_frags(),
            ident: u32::from(p.ident()),
            proto: p.protocol(),
            v6_prev_nh: 0,
        }
    }

    fn cfg() -> ReassemblyConfig {
        ReassemblyConfig { slots: 4, max_datagram: 2048, per_source: 2, timeout_ns: 1000 }
    }

    #[test]
    fn out_of_order_reassembly() {
        let mut r = Reassembler::new(cfg());
        let data: Vec<u8> = (0..100u8).collect();
        let f2 = v4_frag(7, 1, 48, false, &data[48..]);
        let f1 = v4_frag(7, 1, 0, true, &data[..24]);
        let fm = v4_frag(7, 1, 24, true, &data[24..48]);
        assert_eq!(r.add(0, &frag(&f2)), FragOutcome::Held);
        assert_eq!(r.add(1, &frag(&f1)), FragOutcome::Held);
        let FragOutcome::Complete(id) = r.add(2, &frag(&fm)) else { panic!() };
        assert_eq!(r.held(), 3);
        let mut out = [0u8; 200];
        assert_eq!(r.emit(id, &mut out), Ok((120, 3)));
        let p = ipv4::Packet::new_checked(&out[..120]).unwrap();
        assert!(!p.is_fragment() && p.verify_checksum());
        assert_eq!(p.payload(), &data[..]);
        assert_eq!((r.held(), r.in_progress()), (0, 0));
    }

    #[test]
    fn overlap_drops_datagram() {
        let mut r = Reassembler::new(cfg());
        let d = [0u8; 32];
        assert_eq!(r.add(0, &frag(&v4_frag(7, 2, 0, true, &d[..16]))), FragOutcome::Held);
        assert_eq!(
            r.add(0, &frag(&v4_frag(7, 2, 8, true, &d[..16]))),
            FragOutcome::Drop { reason: DropReason::FragOverlap, also: 1 }
        );
        assert_eq!(r.in_progress(), 0);
        // Exact duplicates count as overlap too.
        assert_eq!(r.add(0, &frag(&v4_frag(7, 3, 0, true, &d[..16]))), FragOutcome::Held);
        assert_eq!(
            r.add(0, &frag(&v4_frag(7, 3, 0, true, &d[..16]))),
            FragOutcome::Drop { reason: DropReason::FragOverlap, also: 1 }
        );
    }

    #[test]
    fn invalid_fragments() {
        let mut r = Reassembler::new(cfg());
        let d = [0u8; 30];
        assert_eq!(
            r.add(0, &frag(&v4_frag(7, 4, 0, true, &d[..12]))),
            FragOutcome::Drop { reason: DropReason::FragInvalid, also: 0 }
        );
        assert_eq!(
            r.add(0, &frag(&v4_frag(7, 4, 65528, false, &d[..16]))),
            FragOutcome::Drop { reason: DropReason::FragInvalid, also: 0 }
        );
        // Two final fragments that disagree on the end.
        assert_eq!(r.add(0, &frag(&v4_frag(7, 5, 16, false, &d[..8]))), FragOutcome::Held);
        assert_eq!(
            r.add(0, &frag(&v4_frag(7, 5, 40, false, &d[..8]))),
            FragOutcome::Drop { reason: DropReason::FragInvalid, also: 1 }
        );
        // Data past a known end.
        assert_eq!(r.add(0, &frag(&v4_frag(7, 6, 16, false, &d[..8]))), FragOutcome::Held);
        assert_eq!(
            r.add(0, &frag(&v4_frag(7, 6, 24, true, &d[..8]))),
            FragOutcome::Drop { reason: DropReason::FragInvalid, also: 1 }
        );
        // A final fragment ending before data already held.
        assert_eq!(r.add(0, &frag(&v4_frag(7, 7, 32, true, &d[..8]))), FragOutcome::Held);
        assert_eq!(
            r.add(0, &frag(&v4_frag(7, 7, 0, false, &d[..8]))),
            FragOutcome::Drop { reason: DropReason::FragInvalid, also: 1 }
        );
    }

    #[test]
    fn too_big_for_limit_or_buffer() {
        let mut r = Reassembler::new(cfg());
        let d = vec![0u8; 1024];
        assert_eq!(r.add(0, &frag(&v4_frag(7, 8, 0, true, &d))), FragOutcome::Held);
        assert_eq!(
            r.add(0, &frag(&v4_frag(7, 8, 1024, false, &d))),
            FragOutcome::Drop { reason: DropReason::FragTooBig, also: 1 }
        );
        assert_eq!(r.add(0, &frag(&v4_frag(7, 9, 0, true, &d[..16]))), FragOutcome::Held);
        let FragOutcome::Complete(id) = r.add(0, &frag(&v4_frag(7, 9, 16, false, &d[..16]))) else { panic!() };
        let mut small = [0u8; 40];
        assert_eq!(r.emit(id, &mut small), Err((DropReason::FragTooBig, 2)));
        assert_eq!(r.in_progress(), 0);
    }

    #[test]
    fn bounded_per_source_total_and_time() {
        let mut r = Reassembler::new(cfg());
        let d = [0u8; 8];
        assert_eq!(r.add(0, &frag(&v4_frag(1, 1, 0, true, &d))), FragOutcome::Held);
        assert_eq!(r.add(0, &frag(&v4_frag(1, 2, 0, true, &d))), FragOutcome::Held);
        // Third datagram from the same source: refused.
        assert_eq!(
            r.add(0, &frag(&v4_frag(1, 3, 0, true, &d))),
            FragOutcome::Drop { reason: DropReason::FragTableFull, also: 0 }
        );
        assert_eq!(r.add(10, &frag(&v4_frag(2, 1, 0, true, &d))), FragOutcome::Held);
        assert_eq!(r.add(10, &frag(&v4_frag(3, 1, 0, true, &d))), FragOutcome::Held);
        // All four slots in use.
        assert_eq!(
            r.add(10, &frag(&v4_frag(4, 1, 0, true, &d))),
            FragOutcome::Drop { reason: DropReason::FragTableFull, also: 0 }
        );
        assert_eq!(r.held(), 4);
        // Time passes: the two from t=0 expire first, then the rest.
        assert_eq!(r.expire(999), 0);
        assert_eq!(r.expire(1000), 2);
        assert_eq!(r.add(1000, &frag(&v4_frag(4, 1, 0, true, &d))), FragOutcome::Held);
        assert_eq!(r.expire(1010), 2);
        assert_eq!(r.expire(5000), 1);
        assert_eq!((r.held(), r.in_progress()), (0, 0));
    }

    #[test]
    fn disabled_table_drops() {
        let mut r = Reassembler::new(ReassemblyConfig { slots: 0, ..cfg() });
        assert_eq!(
            r.add(0, &frag(&v4_frag(1, 1, 0, true, &[0; 8]))),
            FragOutcome::Drop { reason: DropReason::FragTableFull, also: 0 }
        );
    }
}
