//! Packet buffers with headroom and tailroom, the unit the engine works on.
//!
//! A [`Frame`] is a frame inside a larger buffer: `raw()[head..head + len]`. The engine
//! moves `head` back to prepend headers and grows `len` into the tailroom to append
//! trailers, never copying the payload. What the NIC already checked travels with the
//! frame (`RxChecksum`). [`PktBuf`] is the frame over any byte buffer (the offline tool
//! and tests use `Vec<u8>`); the DPDK dataplane implements `Frame` for its mbufs, so
//! the engine works on them in place, `head` and `len` being `data_off` and `data_len`.

/// What the receiving NIC found of the frame's IPv4 header checksum (DPDK's
/// `RTE_MBUF_F_RX_IP_CKSUM_*`). The engine trusts `Good` and `Bad` and verifies
/// `Unknown` itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RxChecksum {
    #[default]
    Unknown,
    Good,
    Bad,
}

impl RxChecksum {
    /// Whether the checksum is good: the NIC's word where it has one, else `verify()`.
    #[inline]
    pub fn is_good(self, verify: impl FnOnce() -> bool) -> bool {
        match self {
            RxChecksum::Good => true,
            RxChecksum::Bad => false,
            RxChecksum::Unknown => verify(),
        }
    }
}

/// A frame inside a larger buffer: what the engine reads and rewrites in place.
///
/// Implementations keep `head + len <= raw().len()` (`set_range` refuses anything else).
pub trait Frame {
    /// The whole buffer, head- and tailroom included.
    fn raw(&self) -> &[u8];
    fn raw_mut(&mut self) -> &mut [u8];
    /// Where the frame starts in the buffer.
    fn head(&self) -> usize;
    /// The frame's length.
    fn len(&self) -> usize;
    /// Move the frame to `raw()[head..head + len]`. Returns false, changing nothing, if
    /// that is outside the buffer.
    fn set_range(&mut self, head: usize, len: usize) -> bool;
    /// What the NIC found of the (outer) IPv4 header checksum.
    fn ip_checksum(&self) -> RxChecksum;
    /// Record what is known of the IPv4 header checksum of the frame as it is now.
    fn set_ip_checksum(&mut self, c: RxChecksum);

    #[inline]
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    #[inline]
    fn headroom(&self) -> usize {
        self.head()
    }

    #[inline]
    fn tailroom(&self) -> usize {
        self.raw().len() - self.head() - self.len()
    }

    #[inline]
    fn data(&self) -> &[u8] {
        let (h, l) = (self.head(), self.len());
        &self.raw()[h..h + l]
    }

    #[inline]
    fn data_mut(&mut self) -> &mut [u8] {
        let (h, l) = (self.head(), self.len());
        &mut self.raw_mut()[h..h + l]
    }
}

/// A frame inside a byte buffer.
#[derive(Debug)]
pub struct PktBuf<B> {
    buf: B,
    head: usize,
    len: usize,
    ip_checksum: RxChecksum,
}

impl<B: AsRef<[u8]> + AsMut<[u8]>> PktBuf<B> {
    /// A frame at `buf[head..head + len]`; `None` if that range is outside `buf`.
    pub fn new(buf: B, head: usize, len: usize) -> Option<Self> {
        if head.checked_add(len)? > buf.as_ref().len() {
            return None;
        }
        Some(PktBuf { buf, head, len, ip_checksum: RxChecksum::Unknown })
    }

    pub fn into_inner(self) -> B {
        self.buf
    }
}

impl<B: AsRef<[u8]> + AsMut<[u8]>> Frame for PktBuf<B> {
    #[inline]
    fn raw(&self) -> &[u8] {
        self.buf.as_ref()
    }

    #[inline]
    fn raw_mut(&mut self) -> &mut [u8] {
        self.buf.as_mut()
    }

    #[inline]
    fn head(&self) -> usize {
        self.head
    }

    #[inline]
    fn len(&self) -> usize {
        self.len
    }

    #[inline]
    fn set_range(&mut self, head: usize, len: usize) -> bool {
        match head.checked_add(len) {
            Some(end) if end <= self.buf.as_ref().len() => {
                self.head = head;
                self.len = len;
                true
            }
            _ => false,
        }
    }

    #[inline]
    fn ip_checksum(&self) -> RxChecksum {
        self.ip_checksum
    }

    #[inline]
    fn set_ip_checksum(&mut self, c: RxChecksum) {
        self.ip_checksum = c;
    }
}

impl PktBuf<Vec<u8>> {
    /// Copy `frame` into a new buffer with the given head- and tailroom.
    pub fn from_frame(frame: &[u8], headroom: usize, tailroom: usize) -> Self {
        let mut v = vec![0u8; headroom + frame.len() + tailroom];
        v[headroom..headroom + frame.len()].copy_from_slice(frame);
        PktBuf { buf: v, head: headroom, len: frame.len(), ip_checksum: RxChecksum::Unknown }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let mut p = PktBuf::from_frame(&[1, 2, 3], 4, 5);
        assert_eq!((p.headroom(), p.len(), p.tailroom()), (4, 3, 5));
        assert_eq!(p.data(), &[1, 2, 3]);
        assert!(p.set_range(2, 10));
        assert_eq!((p.headroom(), p.tailroom()), (2, 0));
        assert!(!p.set_range(3, 10));
        assert!(!p.set_range(usize::MAX, 2));
        assert_eq!(p.head(), 2);
        assert!(PktBuf::new(vec![0u8; 4], 3, 2).is_none());
    }
}
