//! Rings of mbufs between lcores (single producer, single consumer), for handing a
//! packet to the worker that owns its SA.

use crate::DpdkError;
use crate::mbuf::Burst;
use std::ffi::CString;
use std::ptr::NonNull;

pub struct Ring {
    r: NonNull<dpdk_sys::rte_ring>,
}

// SAFETY: an SP/SC rte_ring is used by exactly one producer and one consumer lcore, which
// the dataplane guarantees; the ring itself is shared memory meant for this.
unsafe impl Send for Ring {}
// SAFETY: as above.
unsafe impl Sync for Ring {}

impl Ring {
    /// A ring of `size` (a power of two) entries.
    pub fn create(name: &str, size: u32, socket: i32) -> Result<Ring, DpdkError> {
        let cname = CString::new(name).map_err(|_| DpdkError::new("ring", "name contains a NUL byte"))?;
        let flags = dpdk_sys::RING_F_SP_ENQ | dpdk_sys::RING_F_SC_DEQ;
        // SAFETY: valid name; the ring lives until the process ends.
        let r = unsafe { dpdk_sys::rte_ring_create(cname.as_ptr(), size, socket, flags) };
        NonNull::new(r).map(|r| Ring { r }).ok_or_else(|| {
            // SAFETY: reads rte_errno.
            DpdkError::new(format!("ring {name}"), crate::strerror(unsafe { dpdk_sys::natt_errno() }))
        })
    }

    /// Move as much of `burst` into the ring as fits; what does not fit stays in the
    /// burst. Only the ring's one producer calls this.
    #[inline]
    pub fn enqueue(&self, burst: &mut Burst) -> usize {
        if burst.is_empty() {
            return 0;
        }
        let (p, n) = burst.raw_head();
        // SAFETY: p points to n owned mbufs; the ring takes ownership of the first k.
        let k = unsafe { dpdk_sys::natt_ring_enqueue_burst(self.r.as_ptr(), p.cast(), n as u32) } as usize;
        burst.consume_front(k);
        k
    }

    /// Move packets from the ring into the free space of `burst`. Only the ring's one
    /// consumer calls this.
    #[inline]
    pub fn dequeue(&self, burst: &mut Burst) -> usize {
        let (p, room) = burst.raw_tail();
        // SAFETY: p has room for `room` pointers; the ring hands over owned mbufs.
        let k = unsafe { dpdk_sys::natt_ring_dequeue_burst(self.r.as_ptr(), p.cast(), room as u32) } as usize;
        // SAFETY: k entries were just written.
        unsafe { burst.grow(k) };
        k
    }
}
