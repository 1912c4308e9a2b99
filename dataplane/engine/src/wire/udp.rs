//! UDP headers (RFC 768).

use super::{WireError, be16, put16};

pub const HEADER_LEN: usize = 8;

mod field {
    pub const SRC_PORT: usize = 0;
    pub const DST_PORT: usize = 2;
    pub const LENGTH: usize = 4;
    pub const CHECKSUM: usize = 6;
}

/// A UDP header view. `new_checked` guarantees that the length field is at least 8 and
/// no larger than the buffer.
#[derive(Debug)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    pub const fn new_unchecked(buffer: T) -> Self {
        Packet { buffer }
    }

    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let b = buffer.as_ref();
        if b.len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        let len = usize::from(be16(b, field::LENGTH));
        if len < HEADER_LEN {
            return Err(WireError::Malformed);
        }
        if len > b.len() {
            return Err(WireError::Truncated);
        }
        Ok(Packet { buffer })
    }

    pub fn src_port(&self) -> u16 {
        be16(self.buffer.as_ref(), field::SRC_PORT)
    }

    pub fn dst_port(&self) -> u16 {
        be16(self.buffer.as_ref(), field::DST_PORT)
    }

    /// The length field: header plus payload.
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> usize {
        usize::from(be16(self.buffer.as_ref(), field::LENGTH))
    }

    pub fn checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), field::CHECKSUM)
    }

    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..self.len()]
    }
}

/// Write a UDP header with a zero checksum.
#[inline]
pub fn emit_header(h: &mut [u8; HEADER_LEN], src_port: u16, dst_port: u16, len: u16) {
    let w = (u64::from(src_port) << 48) | (u64::from(dst_port) << 32) | (u64::from(len) << 16);
    *h = w.to_be_bytes();
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    pub fn set_checksum(&mut self, c: u16) {
        put16(self.buffer.as_mut(), field::CHECKSUM, c);
    }
}

/// Offset of the checksum field in a UDP header.
pub const CHECKSUM_OFFSET: usize = field::CHECKSUM;
/// Offset of the checksum field in a TCP header.
pub const TCP_CHECKSUM_OFFSET: usize = 16;
/// Minimum TCP header length.
pub const TCP_HEADER_LEN: usize = 20;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_emit() {
        let mut b = [0u8; 12];
        emit_header(b.first_chunk_mut().unwrap(), 4500, 4501, 12);
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!((p.src_port(), p.dst_port(), p.len(), p.checksum()), (4500, 4501, 12, 0));
        assert_eq!(p.payload().len(), 4);
        assert_eq!(Packet::new_checked(&b[..11]).err(), Some(WireError::Truncated));
        b[5] = 7;
        assert_eq!(Packet::new_checked(&b[..]).err(), Some(WireError::Malformed));
    }
}
