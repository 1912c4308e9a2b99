//! Shared-memory files in /dev/shm, mapped, and typed views into them. This module holds
//! all of the crate's unsafe code: every access goes through `get`/`slice`, which check
//! bounds and alignment, and only to types made solely of atomics (`Shared`), for which
//! any bit pattern is valid and concurrent access from another process is well defined.

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
        Ok(Mapping { map, len, file, writable })
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
}
