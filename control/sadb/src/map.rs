//! Shared-memory files in /dev/shm, mapped, and typed views into them. This module holds
//! all of the crate's unsafe code: every access goes through `get`/`slice`, which check
//! bounds and alignment, and only to types made solely of atomics (`Shared`), for which
//! any bit pattern is valid and concurrent access from another process is well defined.
//!
//! A file the other process truncates under us would make every access past its new end
//! fault with SIGBUS. `guard` catches those faults inside our mappings and puts a private
//! zero page in place of the lost one, so the access reads zeros — a valid value of every
//! `Shared` type, and an empty or invalid record to every check — and the process lives;
//! `Mapping::shrunk` tells that it happened.

use crate::layout::*;
use core::sync::atomic::{AtomicU32, AtomicU64};
use memmap2::{MmapOptions, MmapRaw};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Types that may be viewed in shared memory.
///
/// # Safety
/// Implementors consist only of atomics (and arrays or `#[repr(C)]` structs of them):
/// every bit pattern is a valid value, and all access is through atomic operations.
pub unsafe trait Shared {}

// SAFETY: each of these is an atomic, or a #[repr(C)] struct / array of atomics only.
unsafe impl Shared for AtomicU64 {}
// SAFETY: as above.
unsafe impl Shared for AtomicU32 {}
// SAFETY: as above.
unsafe impl Shared for SadbHeader {}
// SAFETY: as above.
unsafe impl Shared for SaRecord {}
// SAFETY: as above.
unsafe impl Shared for DpHeader {}
// SAFETY: as above.
unsafe impl Shared for WorkerSlot {}
// SAFETY: as above.
unsafe impl Shared for RingHeader {}
// SAFETY: as above.
unsafe impl Shared for EventSlot {}
// SAFETY: as above.
unsafe impl Shared for ResvEntry {}
// SAFETY: as above.
unsafe impl Shared for PortSlot {}
// SAFETY: as above.
unsafe impl Shared for LatencyBlock {}
// SAFETY: as above.
unsafe impl Shared for SaQuery {}

/// A mapped shared-memory file.
pub struct Mapping {
    map: MmapRaw,
    len: usize,
    file: File,
    writable: bool,
    guard: Option<usize>,
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // Before `map` unmaps the range.
        if let Some(slot) = self.guard {
            guard::unregister(slot);
        }
    }
}

impl Mapping {
    /// Create a new file of `len` bytes (zeroed, sparse) readable and writable by its
    /// owner only, and map it. Fails if the file exists.
    pub fn create(path: &Path, len: usize) -> io::Result<Mapping> {
        let file = OpenOptions::new().read(true).write(true).create_new(true).mode(0o600).open(path)?;
        file.set_len(len as u64)?;
        Self::map(file, true)
    }

    /// Map an existing file for reading and writing.
    pub fn open_rw(path: &Path) -> io::Result<Mapping> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        Self::map(file, true)
    }

    /// Map an existing file read-only (the dataplane's view of the SA segment).
    pub fn open_ro(path: &Path) -> io::Result<Mapping> {
        let file = OpenOptions::new().read(true).open(path)?;
        Self::map(file, false)
    }

    fn map(file: File, writable: bool) -> io::Result<Mapping> {
        let len = usize::try_from(file.metadata()?.len()).map_err(|_| io::Error::other("file too large"))?;
        if len < 4096 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("only {len} bytes long")));
        }
        let map =
            if writable { MmapOptions::new().map_raw(&file)? } else { MmapOptions::new().map_raw_read_only(&file)? };
        let guard = guard::register(map.as_ptr() as usize, len);
        Ok(Mapping { map, len, file, writable, guard })
    }

    /// (the file's size now, the size mapped), if the file is now smaller than what we
    /// mapped: another process truncated it, and what lay past its end reads as zeros here.
    pub fn shrunk(&self) -> Option<(u64, u64)> {
        match self.file.metadata() {
            Ok(m) if m.len() < self.len as u64 => Some((m.len(), self.len as u64)),
            _ => None,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    pub fn writable(&self) -> bool {
        self.writable
    }

    /// The `T` at byte `offset`, if it lies within the mapping and is aligned.
    #[inline]
    pub fn get<T: Shared>(&self, offset: usize) -> Option<&T> {
        self.slice(offset, 1).map(|s| &s[0])
    }

    /// `n` consecutive `T`s at byte `offset`, if they lie within the mapping and are
    /// aligned.
    #[inline]
    pub fn slice<T: Shared>(&self, offset: usize, n: usize) -> Option<&[T]> {
        let size = core::mem::size_of::<T>().checked_mul(n)?;
        let end = offset.checked_add(size)?;
        if end > self.len || offset % core::mem::align_of::<T>() != 0 {
            return None;
        }
        // SAFETY: [offset, end) lies within the mapping, which stays mapped as long as
        // `self` lives; the pointer is aligned for T (the mapping starts page-aligned);
        // T is `Shared` (atomics only), so any contents are a valid T and shared access
        // through `&T` is sound even while another process modifies the memory. A
        // read-only mapping is only ever loaded from: atomic loads of at most 64 bits
        // are plain loads on the targets we build for.
        unsafe {
            let p = self.map.as_ptr().add(offset).cast::<T>();
            Some(core::slice::from_raw_parts(p, n))
        }
    }
}

/// Faults on truncated shared files turned into zero pages since the process started.
pub fn truncation_faults() -> u64 {
    guard::FAULTS.load(core::sync::atomic::Ordering::Relaxed)
}

/// The SIGBUS handler for our mappings (see the module comment).
mod guard {
    use core::sync::atomic::AtomicU64;
    use core::sync::atomic::AtomicUsize;
    use core::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release};
    use std::sync::{Mutex, OnceLock};

    const SLOTS: usize = 64;
    /// Mapped ranges: start and length (0: free slot). Read by the handler.
    static START: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(0) }; SLOTS];
    static LEN: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(0) }; SLOTS];
    static PAGE: AtomicUsize = AtomicUsize::new(4096);
    pub(super) static FAULTS: AtomicU64 = AtomicU64::new(0);
    /// The action that was installed before ours, for faults that are not ours.
    static PREVIOUS: OnceLock<libc::sigaction> = OnceLock::new();
    static SLOT_LOCK: Mutex<()> = Mutex::new(());

    /// Watch [start, start + len); `None` if every slot is taken (the mapping then works
    /// unguarded).
    pub(super) fn register(start: usize, len: usize) -> Option<usize> {
        install();
        let _g = SLOT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let slot = (0..SLOTS).find(|&i| LEN[i].load(Acquire) == 0)?;
        START[slot].store(start, Release);
        LEN[slot].store(len, Release);
        Some(slot)
    }

    pub(super) fn unregister(slot: usize) {
        let _g = SLOT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        LEN[slot].store(0, Release);
        START[slot].store(0, Release);
    }

    fn install() {
        PREVIOUS.get_or_init(|| {
            // SAFETY: sysconf has no preconditions.
            let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
            if page > 0 {
                PAGE.store(page as usize, Relaxed);
            }
            // SAFETY: a zeroed sigaction is a valid value to fill in; `on_sigbus` has the
            // SA_SIGINFO signature and does only async-signal-safe work (atomics, mmap,
            // sigaction); `old` receives the previous action.
            unsafe {
                let mut act: libc::sigaction = core::mem::zeroed();
                act.sa_sigaction = on_sigbus as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void)
                    as libc::sighandler_t;
                act.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_RESTART;
                libc::sigemptyset(&mut act.sa_mask);
                let mut old: libc::sigaction = core::mem::zeroed();
                old.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(libc::SIGBUS, &act, &mut old);
                old
            }
        });
    }

    extern "C" fn on_sigbus(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
        // SAFETY: the kernel passes a valid siginfo_t to an SA_SIGINFO handler.
        let addr = unsafe { (*info).si_addr() } as usize;
        let page = PAGE.load(Relaxed);
        for i in 0..SLOTS {
            let (start, len) = (START[i].load(Acquire), LEN[i].load(Acquire));
            if len != 0 && addr >= start && addr - start < len {
                let at = addr & !(page - 1);
                // SAFETY: `at` is a page of our own mapping (registered until it is
                // unmapped); replacing it with a private zero page changes no memory that
                // Rust code holds other than through `Shared` views, for which zeros are
                // a valid value.
                let p = unsafe {
                    libc::mmap(
                        at as *mut libc::c_void,
                        page,
                        libc::PROT_READ | libc::PROT_WRITE,
                        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                        -1,
                        0,
                    )
                };
                if p != libc::MAP_FAILED {
                    FAULTS.fetch_add(1, AcqRel);
                    return;
                }
            }
        }
        // Not ours: put back the previous action; the access faults again and gets it.
        if let Some(prev) = PREVIOUS.get() {
            // SAFETY: restoring an action the kernel gave us.
            unsafe { libc::sigaction(libc::SIGBUS, prev, core::ptr::null_mut()) };
        }
    }
}

/// `/dev/shm/<name>.<ext>`, the place of a segment.
pub fn segment_path(dir: &Path, name: &str, ext: &str) -> std::path::PathBuf {
    dir.join(format!("{name}.{ext}"))
}

/// Where segments live unless told otherwise.
pub const SHM_DIR: &str = "/dev/shm";

#[cfg(test)]
mod tests {
    use super::*;
    use core::sync::atomic::Ordering;

    #[test]
    fn bounds_and_alignment_are_checked() {
        let dir = std::env::temp_dir().join(format!("natt-map-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("t.seg");
        let _ = std::fs::remove_file(&p);
        let m = Mapping::create(&p, 8192).unwrap();
        assert!(Mapping::create(&p, 8192).is_err(), "create never reuses a file");
        assert!(m.get::<AtomicU64>(8184).is_some());
        assert!(m.get::<AtomicU64>(8185).is_none(), "misaligned");
        assert!(m.get::<AtomicU64>(8192).is_none(), "past the end");
        assert!(m.slice::<AtomicU64>(0, 1025).is_none());
        assert!(m.slice::<AtomicU64>(usize::MAX - 7, 1).is_none(), "overflow");
        m.get::<AtomicU64>(64).unwrap().store(42, Ordering::Relaxed);
        let r = Mapping::open_ro(&p).unwrap();
        assert_eq!(r.get::<AtomicU64>(64).unwrap().load(Ordering::Relaxed), 42);
        assert!(!r.writable());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_file_truncated_under_us_reads_as_zeros() {
        let dir = std::env::temp_dir().join(format!("natt-trunc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("t.seg");
        let _ = std::fs::remove_file(&p);
        let w = Mapping::create(&p, 4 * 4096).unwrap();
        for page in 0..4 {
            w.get::<AtomicU64>(page * 4096 + 8).unwrap().store(7 + page as u64, Ordering::Relaxed);
        }
        let r = Mapping::open_ro(&p).unwrap();
        assert_eq!(r.shrunk(), None);
        let before = truncation_faults();
        // Another process (here: the file) cuts the segment to one page.
        std::fs::OpenOptions::new().write(true).open(&p).unwrap().set_len(4096).unwrap();
        assert_eq!(r.shrunk(), Some((4096, 4 * 4096)));
        assert_eq!(r.get::<AtomicU64>(8).unwrap().load(Ordering::Relaxed), 7, "the page that is left");
        for page in 1..4 {
            assert_eq!(r.get::<AtomicU64>(page * 4096 + 8).unwrap().load(Ordering::Relaxed), 0, "page {page}");
            assert_eq!(w.get::<AtomicU64>(page * 4096 + 8).unwrap().load(Ordering::Relaxed), 0, "page {page}");
        }
        // Writes to a lost page go to the private page, and stay there.
        w.get::<AtomicU64>(3 * 4096).unwrap().store(5, Ordering::Relaxed);
        assert_eq!(w.get::<AtomicU64>(3 * 4096).unwrap().load(Ordering::Relaxed), 5);
        assert_eq!(truncation_faults() - before, 6, "one fault per lost page and mapping");
        drop((r, w));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
