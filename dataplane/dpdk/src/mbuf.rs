//! Mempools and mbufs. An `Mbuf` owns one packet (freeing it when dropped); a `Burst`
//! holds up to 64 and frees what is left in one call. A `PlainMbuf` is an mbuf checked
//! once to be a single unshared segment: the engine works on it in place, as a `Frame`
//! over its data room.

use crate::DpdkError;
use dpdk_sys::rte_mbuf;
use natt_engine::{Frame, RxChecksum, TxChecksum};
use std::ffi::CString;
use std::ptr::NonNull;

/// The most packets a burst holds (the engine's burst size).
pub const BURST_MAX: usize = 64;

/// A pool of packet buffers.
pub struct Mempool {
    p: NonNull<dpdk_sys::rte_mempool>,
}

// SAFETY: DPDK mempools are designed for use from any lcore concurrently (per-lcore caches
// plus a lock-free ring).
unsafe impl Send for Mempool {}
// SAFETY: as above.
unsafe impl Sync for Mempool {}

impl Mempool {
    /// `n` mbufs of `data_room` bytes (headroom included) on `socket`.
    pub fn create(name: &str, n: u32, cache: u32, data_room: u16, socket: i32) -> Result<Mempool, DpdkError> {
        let cname = CString::new(name).map_err(|_| DpdkError::new("mempool", "name contains a NUL byte"))?;
        // SAFETY: valid name; the pool lives until the process ends.
        let p = unsafe { dpdk_sys::rte_pktmbuf_pool_create(cname.as_ptr(), n, cache, 0, data_room, socket) };
        NonNull::new(p).map(|p| Mempool { p }).ok_or_else(|| {
            // SAFETY: reads rte_errno.
            let e = unsafe { dpdk_sys::natt_errno() };
            DpdkError::new(
                format!("creating {n} mbufs of {data_room} bytes"),
                format!(
                    "{} (not enough hugepage memory? lower --mbufs, or run with more hugepages or --no-huge)",
                    crate::strerror(e)
                ),
            )
        })
    }

    pub(crate) fn raw(&self) -> *mut dpdk_sys::rte_mempool {
        self.p.as_ptr()
    }

    /// Bytes of each mbuf's data room, headroom included.
    pub fn data_room(&self) -> u16 {
        // SAFETY: valid pool.
        unsafe { dpdk_sys::natt_pktmbuf_data_room(self.raw()) }
    }

    pub fn available(&self) -> u32 {
        // SAFETY: valid pool.
        unsafe { dpdk_sys::rte_mempool_avail_count(self.raw()) }
    }

    pub fn in_use(&self) -> u32 {
        // SAFETY: valid pool.
        unsafe { dpdk_sys::rte_mempool_in_use_count(self.raw()) }
    }

    /// One fresh mbuf, if any is free.
    pub fn alloc(&self) -> Option<Mbuf> {
        let mut p: *mut rte_mbuf = std::ptr::null_mut();
        // SAFETY: writes one pointer into `p` on success.
        let rc = unsafe { dpdk_sys::natt_pktmbuf_alloc_bulk(self.raw(), &mut p, 1) };
        if rc == 0 { NonNull::new(p).map(Mbuf) } else { None }
    }
}

const IND_OR_EXT: u64 = dpdk_sys::RTE_MBUF_F_INDIRECT | dpdk_sys::RTE_MBUF_F_EXTERNAL;

/// One packet, owned.
#[repr(transparent)]
pub struct Mbuf(NonNull<rte_mbuf>);

// SAFETY: an mbuf may be handed to another lcore (rings do exactly that); ownership moves
// with the value.
unsafe impl Send for Mbuf {}

impl Mbuf {
    #[inline]
    fn m(&self) -> &rte_mbuf {
        // SAFETY: we own a valid mbuf.
        unsafe { self.0.as_ref() }
    }

    #[inline]
    fn m_mut(&mut self) -> &mut rte_mbuf {
        // SAFETY: we own a valid mbuf exclusively.
        unsafe { self.0.as_mut() }
    }

    pub(crate) fn into_raw(self) -> *mut rte_mbuf {
        let p = self.0.as_ptr();
        std::mem::forget(self);
        p
    }

    /// # Safety
    /// `p` is a valid mbuf the caller owns and gives up.
    pub(crate) unsafe fn from_raw(p: *mut rte_mbuf) -> Option<Mbuf> {
        NonNull::new(p).map(Mbuf)
    }

    #[inline]
    pub fn segments(&self) -> u16 {
        self.m().nb_segs
    }

    #[inline]
    pub fn pkt_len(&self) -> u32 {
        self.m().pkt_len
    }

    #[inline]
    pub fn data_len(&self) -> u16 {
        self.m().data_len
    }

    #[inline]
    pub fn ol_flags(&self) -> u64 {
        self.m().ol_flags
    }

    /// What the receiving port found of the IPv4 header checksum (`Unknown` unless the
    /// port verifies it: RX offload `IPV4_CKSUM`).
    #[inline]
    pub fn rx_ip_checksum(&self) -> RxChecksum {
        match self.m().ol_flags & RX_IP_CKSUM_MASK {
            RX_IP_CKSUM_GOOD => RxChecksum::Good,
            RX_IP_CKSUM_BAD => RxChecksum::Bad,
            _ => RxChecksum::Unknown,
        }
    }

    /// Ask the transmitting port for the checksums the engine left to it: the flags and
    /// header lengths DPDK's TX checksum offloads read. The port must have been started
    /// with those offloads.
    #[inline]
    pub fn set_tx_checksum(&mut self, c: &TxChecksum) {
        if !c.any() {
            return;
        }
        let mut f = if c.ipv6 { dpdk_sys::RTE_MBUF_F_TX_IPV6 } else { dpdk_sys::RTE_MBUF_F_TX_IPV4 };
        if c.ipv4_header {
            f |= dpdk_sys::RTE_MBUF_F_TX_IP_CKSUM;
        }
        if c.udp {
            f |= dpdk_sys::RTE_MBUF_F_TX_UDP_CKSUM;
        }
        let m = self.m_mut();
        m.ol_flags |= f;
        // tx_offload: l2_len in bits 0..7, l3_len in 7..16, l4_len in 16..24 (rte_mbuf_core.h).
        m.__bindgen_anon_3.tx_offload = u64::from(c.l2_len) | u64::from(c.l3_len) << 7 | 8 << 16;
    }

    #[inline]
    pub fn port(&self) -> u16 {
        self.m().port
    }

    /// A plain buffer: one segment, not attached to another mbuf or an external buffer,
    /// not shared. Only such an mbuf is changed in place.
    #[inline]
    pub fn is_plain(&self) -> bool {
        let m = self.m();
        // One test of four fields instead of four branches: this runs on every packet.
        (u64::from(m.nb_segs ^ 1) | (m.next as usize as u64) | (m.ol_flags & IND_OR_EXT) | u64::from(m.refcnt ^ 1)) == 0
    }

    /// A word the application may use: the mbuf's hash union in its first cache line
    /// (RSS / flow-director results), which nothing reads after RX. The dataplane keeps
    /// the packet's RX timestamp there, so it survives handoffs between workers.
    #[inline]
    pub fn set_stamp(&mut self, v: u64) {
        let m = self.m_mut();
        let p = core::ptr::addr_of_mut!(m.__bindgen_anon_2).cast::<u64>();
        // SAFETY: the union is 8 bytes of plain integers inside the mbuf we own mutably;
        // any bit pattern is valid; it may be unaligned, hence write_unaligned.
        unsafe { p.write_unaligned(v) }
    }

    #[inline]
    pub fn stamp(&self) -> u64 {
        let m = self.m();
        let p = core::ptr::addr_of!(m.__bindgen_anon_2).cast::<u64>();
        // SAFETY: as in `set_stamp`; reading 8 bytes of integers.
        unsafe { p.read_unaligned() }
    }

    /// The frame (first segment).
    #[inline]
    pub fn data(&self) -> &[u8] {
        let m = self.m();
        // SAFETY: [buf_addr + data_off, + data_len) is the first segment's data, inside
        // the buffer, valid while we own the mbuf.
        unsafe {
            std::slice::from_raw_parts(m.buf_addr.cast::<u8>().add(usize::from(m.data_off)), usize::from(m.data_len))
        }
    }

    /// This mbuf as a `PlainMbuf`, if it is plain (see `is_plain`); else itself.
    #[inline]
    pub fn into_plain(self) -> Result<PlainMbuf, Mbuf> {
        if self.is_plain() { Ok(PlainMbuf(self)) } else { Err(self) }
    }

    /// Make the frame (one segment) `len` bytes at `head` in the buffer. Returns false,
    /// changing nothing, if that is outside the buffer.
    #[inline]
    pub fn set_frame(&mut self, head: usize, len: usize) -> bool {
        let m = self.m_mut();
        if head.checked_add(len).is_none_or(|end| end > usize::from(m.buf_len)) {
            return false;
        }
        // buf_len is a u16, so both fit.
        m.data_off = head as u16;
        m.data_len = len as u16;
        m.pkt_len = len as u32;
        true
    }

    /// Copy a multi-segment (or shared) packet into one fresh mbuf from `pool`, freeing
    /// this one. Returns the packet unchanged if it does not fit one mbuf or no mbuf is
    /// free.
    pub fn linearize(self, pool: &Mempool) -> Result<PlainMbuf, Mbuf> {
        let total = self.pkt_len() as usize;
        let Some(out) = pool.alloc() else { return Err(self) };
        let Ok(mut out) = out.into_plain() else { return Err(self) };
        let head = out.head();
        if total > out.raw().len() - head {
            return Err(self);
        }
        let mut at = head;
        let raw = out.raw_mut();
        let mut seg = self.0.as_ptr();
        while !seg.is_null() {
            // SAFETY: walking our own chain; each segment's data lies in its buffer.
            let s = unsafe { &*seg };
            // SAFETY: [buf_addr + data_off, + data_len) is this segment's data.
            let data = unsafe {
                std::slice::from_raw_parts(
                    s.buf_addr.cast::<u8>().add(usize::from(s.data_off)),
                    usize::from(s.data_len),
                )
            };
            let Some(dst) = raw.get_mut(at..at + data.len()) else { return Err(self) };
            dst.copy_from_slice(data);
            at += data.len();
            seg = s.next;
        }
        let port = self.port();
        if !out.0.set_frame(head, at - head) {
            return Err(self);
        }
        out.0.m_mut().port = port;
        Ok(out)
    }
}

impl Drop for Mbuf {
    fn drop(&mut self) {
        // SAFETY: we own the mbuf (and its chain); it is freed once.
        unsafe { dpdk_sys::natt_pktmbuf_free(self.0.as_ptr()) }
    }
}

/// An mbuf that was plain when it became this (one segment, not indirect or external,
/// reference count 1: `Mbuf::into_plain`). It stays plain: we own it, and nothing here
/// chains, attaches or shares it. So its data room is ours to read and write without
/// asking again, and the engine works on it in place.
#[repr(transparent)]
pub struct PlainMbuf(Mbuf);

/// No `DerefMut` to `Mbuf`: through a `&mut Mbuf` the inner mbuf could be swapped for one
/// that is not plain. What may change through `&mut` is forwarded here, one by one.
impl PlainMbuf {
    #[inline]
    pub fn into_mbuf(self) -> Mbuf {
        self.0
    }

    /// See `Mbuf::set_tx_checksum`.
    #[inline]
    pub fn set_tx_checksum(&mut self, c: &TxChecksum) {
        self.0.set_tx_checksum(c);
    }
}

impl std::ops::Deref for PlainMbuf {
    type Target = Mbuf;
    #[inline]
    fn deref(&self) -> &Mbuf {
        &self.0
    }
}

const RX_IP_CKSUM_MASK: u64 = dpdk_sys::RTE_MBUF_F_RX_IP_CKSUM_MASK as u64;
const RX_IP_CKSUM_GOOD: u64 = dpdk_sys::RTE_MBUF_F_RX_IP_CKSUM_GOOD as u64;
const RX_IP_CKSUM_BAD: u64 = dpdk_sys::RTE_MBUF_F_RX_IP_CKSUM_BAD as u64;

impl Frame for PlainMbuf {
    #[inline]
    fn raw(&self) -> &[u8] {
        let m = self.m();
        // SAFETY: [buf_addr, buf_addr + buf_len) is this mbuf's buffer; a plain mbuf's
        // buffer belongs to it alone, valid while we own it; the slice borrows self.
        unsafe { std::slice::from_raw_parts(m.buf_addr.cast::<u8>(), usize::from(m.buf_len)) }
    }

    #[inline]
    fn raw_mut(&mut self) -> &mut [u8] {
        let m = self.0.m_mut();
        // SAFETY: as in `raw`; nothing else references the buffer (refcnt 1, not indirect
        // or external) and the slice borrows self mutably.
        unsafe { std::slice::from_raw_parts_mut(m.buf_addr.cast::<u8>(), usize::from(m.buf_len)) }
    }

    #[inline]
    fn head(&self) -> usize {
        usize::from(self.m().data_off)
    }

    #[inline]
    fn len(&self) -> usize {
        usize::from(self.m().data_len)
    }

    #[inline]
    fn set_range(&mut self, head: usize, len: usize) -> bool {
        self.0.set_frame(head, len)
    }

    #[inline]
    fn ip_checksum(&self) -> RxChecksum {
        self.rx_ip_checksum()
    }

    #[inline]
    fn set_ip_checksum(&mut self, c: RxChecksum) {
        let bits = match c {
            RxChecksum::Good => RX_IP_CKSUM_GOOD,
            RxChecksum::Bad => RX_IP_CKSUM_BAD,
            RxChecksum::Unknown => 0,
        };
        let m = self.0.m_mut();
        m.ol_flags = (m.ol_flags & !RX_IP_CKSUM_MASK) | bits;
    }
}

/// What a `Burst` holds: owned mbufs, plain or not; both are one pointer, so a burst
/// stores raw pointers and hands them out as either.
///
/// # Safety
/// Implementors are `repr(transparent)` over a non-null pointer to an mbuf they own, and
/// `from_raw` of a pointer `into_raw` gave is that value again.
pub unsafe trait Owned: Sized {
    fn into_raw(self) -> *mut rte_mbuf;
    /// # Safety
    /// `p` came from `into_raw` of this type (so it is owned, and plain if the type says so).
    unsafe fn from_raw(p: *mut rte_mbuf) -> Option<Self>;
}

// SAFETY: repr(transparent) over NonNull<rte_mbuf>; owns it.
unsafe impl Owned for Mbuf {
    #[inline]
    fn into_raw(self) -> *mut rte_mbuf {
        Mbuf::into_raw(self)
    }
    #[inline]
    unsafe fn from_raw(p: *mut rte_mbuf) -> Option<Self> {
        // SAFETY: the caller passes an owned mbuf.
        unsafe { Mbuf::from_raw(p) }
    }
}

// SAFETY: repr(transparent) over Mbuf; the pointers it gives out were plain mbufs.
unsafe impl Owned for PlainMbuf {
    #[inline]
    fn into_raw(self) -> *mut rte_mbuf {
        self.0.into_raw()
    }
    #[inline]
    unsafe fn from_raw(p: *mut rte_mbuf) -> Option<Self> {
        // SAFETY: the caller passes an owned mbuf that was plain, and still is.
        unsafe { Mbuf::from_raw(p) }.map(PlainMbuf)
    }
}

/// Up to `BURST_MAX` mbufs (plain ones if `T` is `PlainMbuf`). What it still holds when
/// dropped or cleared is freed in one call.
pub struct Burst<T: Owned = Mbuf> {
    m: [*mut rte_mbuf; BURST_MAX],
    n: usize,
    _owns: std::marker::PhantomData<T>,
}

// SAFETY: the burst owns the mbufs it points to; moving it moves that ownership.
unsafe impl<T: Owned> Send for Burst<T> {}

impl<T: Owned> Default for Burst<T> {
    fn default() -> Self {
        Burst { m: [std::ptr::null_mut(); BURST_MAX], n: 0, _owns: std::marker::PhantomData }
    }
}

impl<T: Owned> Burst<T> {
    pub fn new() -> Self {
        Self::default()
    }

    #[inline]
    pub fn len(&self) -> usize {
        self.n
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    #[inline]
    pub fn is_full(&self) -> bool {
        self.n == BURST_MAX
    }

    #[inline]
    pub fn room(&self) -> usize {
        BURST_MAX - self.n
    }

    /// Add a packet; gives it back if the burst is full.
    #[inline]
    pub fn push(&mut self, m: T) -> Result<(), T> {
        if self.n == BURST_MAX {
            return Err(m);
        }
        self.m[self.n] = m.into_raw();
        self.n += 1;
        Ok(())
    }

    /// Take out every packet, in order.
    #[inline]
    pub fn drain(&mut self) -> impl Iterator<Item = T> + '_ {
        let n = std::mem::take(&mut self.n);
        // SAFETY: the first n entries came from `T::into_raw`; each is taken out once.
        self.m[..n].iter().filter_map(|&p| unsafe { T::from_raw(p) })
    }

    /// Free everything held, in one call.
    pub fn clear(&mut self) {
        if self.n > 0 {
            // SAFETY: the first n entries are owned mbufs, freed once; then forgotten.
            unsafe { dpdk_sys::natt_pktmbuf_free_burst(self.m.as_mut_ptr(), self.n as u32) };
            self.n = 0;
        }
    }

    /// The held mbufs, mutably, in order.
    #[inline]
    pub fn as_mut_slice(&mut self) -> &mut [T] {
        // SAFETY: `T` is repr(transparent) over a non-null mbuf pointer (`Owned`); the
        // first n entries came from `T::into_raw`, so they can be viewed as `T`s in place.
        // The slice borrows the burst, so none can be taken out or freed meanwhile.
        unsafe { std::slice::from_raw_parts_mut(self.m.as_mut_ptr().cast::<T>(), self.n) }
    }

    /// Each held mbuf, mutably.
    #[inline]
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut T> + '_ {
        self.as_mut_slice().iter_mut()
    }
}

impl Burst<Mbuf> {
    pub(crate) fn raw_tail(&mut self) -> (*mut *mut rte_mbuf, usize) {
        // SAFETY: pointer to the first free entry; `room` entries may be written.
        (unsafe { self.m.as_mut_ptr().add(self.n) }, BURST_MAX - self.n)
    }

    /// # Safety
    /// The `k` entries after the current end were just filled with owned mbufs.
    pub(crate) unsafe fn grow(&mut self, k: usize) {
        self.n += k;
    }

    pub(crate) fn raw_head(&mut self) -> (*mut *mut rte_mbuf, usize) {
        (self.m.as_mut_ptr(), self.n)
    }

    /// Drop the first `k` entries from the burst (their ownership went elsewhere).
    pub(crate) fn consume_front(&mut self, k: usize) {
        let k = k.min(self.n);
        self.m.copy_within(k..self.n, 0);
        self.n -= k;
    }
}

impl<T: Owned> Drop for Burst<T> {
    fn drop(&mut self) {
        self.clear();
    }
}

const _: () = assert!(std::mem::size_of::<Mbuf>() == std::mem::size_of::<*mut rte_mbuf>());
const _: () = assert!(std::mem::size_of::<PlainMbuf>() == std::mem::size_of::<*mut rte_mbuf>());
const _: () = assert!(std::mem::size_of::<dpdk_sys::rte_mbuf__bindgen_ty_2>() == 8);
