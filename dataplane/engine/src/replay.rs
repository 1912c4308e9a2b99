//! Anti-replay (RFC 4303 §3.4.3) with ESN inference (RFC 4303 Appendix A2).
//!
//! The caller checks a sequence number before decrypting (`check`) and records it only
//! after the ICV verifies (`accept`), so a forged packet can never move the window.
//! The bitmap is RFC 6479's: ring of 64-bit words indexed by sequence number, with at
//! least one spare word so that advancing clears whole words; the word count is a power
//! of two so indexing is a mask, not a division.

/// Why a sequence number was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplayError {
    /// Already received.
    Duplicate,
    /// Left of the window, or zero.
    Stale,
}

/// An anti-replay window of `size` packets (0: anti-replay off, only ESN tracking).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplayWindow {
    /// Highest authenticated sequence number (64-bit with ESN).
    top: u64,
    size: u32,
    esn: bool,
    bits: Box<[u64]>,
}

/// Window width used for ESN inference when anti-replay is off.
const ESN_INFERENCE_WINDOW: u32 = 64;

impl ReplayWindow {
    /// A window whose highest seen sequence number is `top` (0: nothing seen yet).
    pub fn new(size: u32, esn: bool, top: u64) -> Self {
        let words = if size == 0 { 0 } else { ((size as usize).div_ceil(64) + 1).next_power_of_two() };
        ReplayWindow { top, size, esn, bits: vec![0u64; words].into_boxed_slice() }
    }

    pub fn top(&self) -> u64 {
        self.top
    }

    pub fn size(&self) -> u32 {
        self.size
    }

    /// The full sequence number of a packet carrying `seq_lo`: itself without ESN, or with
    /// the high half inferred from the window (RFC 4303 A2.2). `None` when the inferred
    /// high half would be negative (a number before the SA's first packet).
    #[inline]
    pub fn full_seq(&self, seq_lo: u32) -> Option<u64> {
        if !self.esn {
            return Some(u64::from(seq_lo));
        }
        let w = u64::from(if self.size == 0 { ESN_INFERENCE_WINDOW } else { self.size });
        let th = self.top >> 32;
        let tl = self.top & 0xffff_ffff;
        let sl = u64::from(seq_lo);
        let sh = if tl >= w - 1 {
            // Case A: the window lies within one 2^32 subspace.
            if sl >= tl + 1 - w { th } else { th + 1 }
        } else {
            // Case B: the window spans the boundary into the previous subspace.
            let wrapped_start = (tl + (1 << 32) + 1 - w) & 0xffff_ffff;
            if sl >= wrapped_start { th.checked_sub(1)? } else { th }
        };
        if sh > 0xffff_ffff {
            return None;
        }
        Some((sh << 32) | sl)
    }

    /// Would `seq` be accepted? Does not change the window.
    #[inline]
    pub fn check(&self, seq: u64) -> Result<(), ReplayError> {
        if seq == 0 {
            return Err(ReplayError::Stale);
        }
        if self.size == 0 || seq > self.top {
            return Ok(());
        }
        self.check_inside(seq)
    }

    /// `seq` is not above the top: is it inside the window and not yet seen?
    #[inline]
    fn check_inside(&self, seq: u64) -> Result<(), ReplayError> {
        if self.top - seq >= u64::from(self.size) {
            return Err(ReplayError::Stale);
        }
        let (w, b) = self.slot(seq);
        if self.bits[w] & (1 << b) != 0 {
            return Err(ReplayError::Duplicate);
        }
        Ok(())
    }

    /// Record an authenticated `seq`, which `check` accepted. Returns whether it moved
    /// the top of the window.
    #[inline]
    pub fn accept(&mut self, seq: u64) -> bool {
        let advanced = seq > self.top;
        if self.size == 0 {
            if advanced {
                self.top = seq;
            }
            return advanced;
        }
        if advanced {
            self.advance(seq);
        }
        let (w, b) = self.slot(seq);
        self.bits[w] |= 1 << b;
        advanced
    }

    /// `check` then `accept`, in one pass: for a packet whose ICV just verified, checked
    /// again because an earlier packet of its burst may have carried the same number
    /// (the check before decryption saw the window as it was before the burst).
    #[inline(always)]
    pub fn check_and_accept(&mut self, seq: u64) -> Result<bool, ReplayError> {
        if seq == 0 {
            return Err(ReplayError::Stale);
        }
        let advanced = seq > self.top;
        if self.size == 0 {
            if advanced {
                self.top = seq;
            }
            return Ok(advanced);
        }
        if advanced {
            self.advance(seq);
        } else {
            self.check_inside(seq)?;
        }
        let (w, b) = self.slot(seq);
        self.bits[w] |= 1 << b;
        Ok(advanced)
    }

    /// Move the top to `seq` (above it), clearing the words that fall out of the window.
    #[inline]
    fn advance(&mut self, seq: u64) {
        let n = self.bits.len() as u64;
        let old_word = self.top >> 6;
        let new_word = seq >> 6;
        let clear = (new_word - old_word).min(n);
        for i in 1..=clear {
            let idx = ((old_word + i) & (n - 1)) as usize;
            self.bits[idx] = 0;
        }
        self.top = seq;
    }

    /// The bitmap word that checking `seq` reads (for looking ahead: prefetching it);
    /// `None` with anti-replay off.
    #[inline]
    pub fn word(&self, seq: u64) -> Option<&u64> {
        if self.bits.is_empty() {
            return None;
        }
        Some(&self.bits[self.slot(seq).0])
    }

    #[inline]
    fn slot(&self, seq: u64) -> (usize, u32) {
        (((seq >> 6) & (self.bits.len() as u64 - 1)) as usize, (seq & 63) as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recv(w: &mut ReplayWindow, seq: u64) -> Result<(), ReplayError> {
        w.check(seq)?;
        w.accept(seq);
        Ok(())
    }

    #[test]
    fn window_edges() {
        for size in [64u32, 100, 1024, 4096] {
            let mut w = ReplayWindow::new(size, false, 0);
            assert_eq!(recv(&mut w, 0), Err(ReplayError::Stale));
            assert_eq!(recv(&mut w, 1), Ok(()));
            assert_eq!(recv(&mut w, 1), Err(ReplayError::Duplicate));
            let top = 10_000u64;
            assert_eq!(recv(&mut w, top), Ok(()));
            let s = u64::from(size);
            // The oldest number still inside the window is top - size + 1.
            assert_eq!(w.check(top - s + 1), Ok(()), "size {size}");
            assert_eq!(w.check(top - s), Err(ReplayError::Stale), "size {size}");
            assert_eq!(recv(&mut w, top - s + 1), Ok(()));
            assert_eq!(recv(&mut w, top - s + 1), Err(ReplayError::Duplicate));
            // Advancing by exactly the window leaves the old top inside-left edge out.
            assert_eq!(recv(&mut w, top + s), Ok(()));
            assert_eq!(w.check(top), Err(ReplayError::Stale));
            assert_eq!(w.check(top + 1), Ok(()), "fresh slot after a big jump must be clear");
        }
    }

    #[test]
    fn big_jump_clears_all_stale_bits() {
        let mut w = ReplayWindow::new(128, false, 0);
        for s in 1..=128 {
            recv(&mut w, s).unwrap();
        }
        recv(&mut w, 1_000_000).unwrap();
        for s in 1_000_000 - 127..1_000_000 {
            assert_eq!(w.check(s), Ok(()), "{s}");
        }
    }

    #[test]
    fn matches_reference_model() {
        // A set-based model of the window over a pseudo-random stream.
        let mut w = ReplayWindow::new(192, false, 0);
        let mut seen = std::collections::BTreeSet::new();
        let mut top = 0u64;
        let mut x = 12345u64;
        for _ in 0..20_000 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let seq = (top + 50).saturating_sub((x >> 33) % 300);
            let want = if seq == 0 || (top >= 192 && seq <= top - 192) {
                Err(ReplayError::Stale)
            } else if seen.contains(&seq) {
                Err(ReplayError::Duplicate)
            } else {
                Ok(())
            };
            assert_eq!(w.check(seq), want, "seq {seq} top {top}");
            if want.is_ok() && x & 1 == 0 {
                w.accept(seq);
                seen.insert(seq);
                top = top.max(seq);
            }
        }
    }

    #[test]
    fn check_and_accept_is_check_then_accept() {
        for size in [0u32, 64, 192, 1024] {
            let (mut a, mut b) = (ReplayWindow::new(size, false, 0), ReplayWindow::new(size, false, 0));
            let mut x = 99u64;
            let mut top = 0u64;
            for _ in 0..20_000 {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let seq = (top + 40).saturating_sub((x >> 33) % (u64::from(size) + 200));
                let want = a.check(seq).map(|()| a.accept(seq));
                assert_eq!(b.check_and_accept(seq), want, "size {size} seq {seq}");
                assert_eq!(a, b);
                top = top.max(seq);
            }
        }
    }

    #[test]
    fn disabled_window_accepts_replays_but_tracks_top() {
        let mut w = ReplayWindow::new(0, true, 0);
        assert_eq!(recv(&mut w, 5), Ok(()));
        assert_eq!(recv(&mut w, 5), Ok(()));
        assert_eq!(recv(&mut w, 1), Ok(()));
        assert_eq!(w.top(), 5);
        assert_eq!(w.check(0), Err(ReplayError::Stale));
    }

    #[test]
    fn esn_inference_case_a_and_b() {
        let w = |top: u64| ReplayWindow::new(64, true, top);
        // Case A: window inside one subspace.
        let a = w((3 << 32) | 1000);
        assert_eq!(a.full_seq(1000), Some((3 << 32) | 1000));
        assert_eq!(a.full_seq(937), Some((3 << 32) | 937)); // Tl - W + 1
        assert_eq!(a.full_seq(936), Some((4 << 32) | 936)); // below window: next subspace
        assert_eq!(a.full_seq(5000), Some((3 << 32) | 5000));
        // Case B: Tl < W - 1, the window reaches back into subspace Th - 1.
        let b = w((3 << 32) | 10);
        assert_eq!(b.full_seq(0xffff_ffff), Some((2 << 32) | 0xffff_ffff));
        assert_eq!(b.full_seq(0xffff_ffff - 52), Some((2 << 32) | (0xffff_ffff - 52))); // Tl - W + 1 mod 2^32
        assert_eq!(b.full_seq(0xffff_ffff - 53), Some((3 << 32) | (0xffff_ffff - 53)));
        assert_eq!(b.full_seq(11), Some((3 << 32) | 11));
        // At the very start (Th = 0) a number "before" the SA cannot be inferred.
        let c = w(10);
        assert_eq!(c.full_seq(0xffff_fff0), None);
        assert_eq!(c.full_seq(20), Some(20));
    }

    #[test]
    fn esn_wrap_through_the_window() {
        let mut w = ReplayWindow::new(64, true, 0xffff_fff0);
        for lo in [0xffff_fff5u32, 0xffff_ffff, 0, 1, 2] {
            let s = w.full_seq(lo).unwrap();
            recv(&mut w, s).unwrap();
        }
        assert_eq!(w.top(), (1 << 32) | 2);
        // The pre-wrap numbers are now in Case B's previous subspace, and duplicates.
        let s = w.full_seq(0xffff_ffff).unwrap();
        assert_eq!(s, 0xffff_ffff);
        assert_eq!(w.check(s), Err(ReplayError::Duplicate));
        let s = w.full_seq(0xffff_fff6).unwrap();
        assert_eq!(w.check(s), Ok(()));
        // Zero low half after the wrap is a valid number (2^32), already seen.
        assert_eq!(w.check(w.full_seq(0).unwrap()), Err(ReplayError::Duplicate));
    }

    #[test]
    fn the_word_of_a_number_is_the_one_checking_it_reads() {
        let mut w = ReplayWindow::new(128, false, 0);
        assert!(ReplayWindow::new(0, false, 0).word(5).is_none());
        recv(&mut w, 70).unwrap();
        assert_eq!(w.word(70).copied(), Some(1 << 6), "bit 6 of the word holding 64..127");
        assert_eq!(w.word(64 + 128 * 4 + 6).copied(), Some(1 << 6), "words repeat every 4 words");
        assert_eq!(w.word(5).copied(), Some(0));
    }

    #[test]
    fn no_esn_never_wraps() {
        let w = ReplayWindow::new(64, false, 0xffff_ffff);
        assert_eq!(w.full_seq(1), Some(1));
        assert_eq!(w.check(1), Err(ReplayError::Stale));
    }
}
