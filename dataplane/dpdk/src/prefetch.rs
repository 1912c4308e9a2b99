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

/// Start loading every cache line that bytes `start .. start + len` touch (up to
/// `MAX_SPAN` bytes). The pointer need not be valid (nothing is read).
#[inline(always)]
pub fn span(start: *const u8, len: usize) {
    for offset in span_offsets(start.addr(), len) {
        at(start.wrapping_byte_offset(offset));
    }
}

/// At most this many bytes of a span are loaded (a hint past that would only evict).
pub const MAX_SPAN: usize = 4096;

/// The offsets from `start` of the cache lines that bytes `start .. start + len` touch
/// (the first may be negative: the line that holds `start`), `MAX_SPAN` bytes at most.
#[inline(always)]
fn span_offsets(start: usize, len: usize) -> impl Iterator<Item = isize> {
    let first = -((start % LINE) as isize);
    let end = start % LINE + len.min(MAX_SPAN);
    (0..end.div_ceil(LINE)).map(move |i| first + (i * LINE) as isize)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_span_names_each_line_it_touches_once() {
        let lines = |start: usize, len: usize| span_offsets(start, len).collect::<Vec<_>>();
        assert_eq!(lines(4096, 0), Vec::<isize>::new());
        assert_eq!(lines(4096, 1), [0]);
        assert_eq!(lines(4096, 64), [0]);
        assert_eq!(lines(4096, 65), [0, 64]);
        assert_eq!(lines(4100, 60), [-4]);
        assert_eq!(lines(4100, 61), [-4, 60]);
        assert_eq!(lines(4159, 2), [-63, 1]);
        assert_eq!(lines(4096 + 240, 80), [-48, 16]);
        assert_eq!(lines(4096, usize::MAX).len(), MAX_SPAN / LINE);
        assert_eq!(lines(usize::MAX - 10, usize::MAX).len(), MAX_SPAN / LINE + 1);
        span(core::ptr::null(), 300);
        span(core::ptr::dangling::<u8>(), usize::MAX);
    }
}
