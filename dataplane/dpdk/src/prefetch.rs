//! Cache prefetch (DPDK's `rte_prefetch0`): ask for memory that a later stage of the
//! burst will read, so that the misses of a burst overlap instead of stalling one after
//! another. A hint only: it never faults and changes nothing a program can observe.

/// Bytes of a cache line.
pub const LINE: usize = 64;

/// Start loading the cache line holding `p` into every level.
#[inline(always)]
pub fn line<T: ?Sized>(p: &T) {
    at((p as *const T).cast::<u8>());
}

/// Start loading every cache line of `x`, up to `max_lines` of them.
#[inline(always)]
pub fn lines<T: ?Sized>(x: &T, max_lines: usize) {
    let p = (x as *const T).cast::<u8>();
    let n = core::mem::size_of_val(x).div_ceil(LINE).min(max_lines);
    for i in 0..n {
        at(p.wrapping_add(i * LINE));
    }
}

#[inline(always)]
fn at(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHT0 is a hint: it does not fault on any address and has no
    // architectural effect, so no pointer validity is required.
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(p.cast::<i8>())
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}
