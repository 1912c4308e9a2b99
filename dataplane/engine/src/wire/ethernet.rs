//! Ethernet II frames with at most one 802.1Q tag.

use super::{WireError, be16, put16};

pub const HEADER_LEN: usize = 14;
pub const VLAN_TAG_LEN: usize = 4;

pub mod ethertype {
    pub const IPV4: u16 = 0x0800;
    pub const ARP: u16 = 0x0806;
    pub const VLAN: u16 = 0x8100;
    pub const QINQ: u16 = 0x88a8;
    pub const IPV6: u16 = 0x86dd;
}

mod field {
    use core::ops::Range;
    pub const DST: Range<usize> = 0..6;
    pub const SRC: Range<usize> = 6..12;
    pub const ETHERTYPE: usize = 12;
    pub const VLAN_TCI: usize = 14;
    pub const INNER_ETHERTYPE: usize = 16;
}

/// What the L2 header says: where L3 starts and what it is. Register-sized on
/// purpose: it is returned on every packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct L2Info {
    pub l3_offset: u16,
    pub ethertype: u16,
}

/// An Ethernet header view.
#[derive(Debug)]
pub struct Frame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Frame<T> {
    pub const fn new_unchecked(buffer: T) -> Self {
        Frame { buffer }
    }

    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        Ok(Frame { buffer })
    }

    pub fn dst(&self) -> [u8; 6] {
        let mut m = [0; 6];
        m.copy_from_slice(&self.buffer.as_ref()[field::DST]);
        m
    }

    pub fn src(&self) -> [u8; 6] {
        let mut m = [0; 6];
        m.copy_from_slice(&self.buffer.as_ref()[field::SRC]);
        m
    }

    pub fn ethertype(&self) -> u16 {
        be16(self.buffer.as_ref(), field::ETHERTYPE)
    }

    /// Parse the L2 header: untagged, or one 802.1Q tag. Stacked tags are `Malformed`.
    #[inline]
    pub fn info(&self) -> Result<L2Info, WireError> {
        let b = self.buffer.as_ref();
        let et = self.ethertype();
        if et != ethertype::VLAN {
            if et == ethertype::QINQ {
                return Err(WireError::Malformed);
            }
            return Ok(L2Info { l3_offset: HEADER_LEN as u16, ethertype: et });
        }
        if b.len() < HEADER_LEN + VLAN_TAG_LEN {
            return Err(WireError::Truncated);
        }
        let inner = be16(b, field::INNER_ETHERTYPE);
        if inner == ethertype::VLAN || inner == ethertype::QINQ {
            return Err(WireError::Malformed);
        }
        Ok(L2Info { l3_offset: (HEADER_LEN + VLAN_TAG_LEN) as u16, ethertype: inner })
    }

    /// The VLAN ID of a tagged frame.
    pub fn vlan(&self) -> Option<u16> {
        let b = self.buffer.as_ref();
        (self.ethertype() == ethertype::VLAN && b.len() >= HEADER_LEN + VLAN_TAG_LEN)
            .then(|| be16(b, field::VLAN_TCI) & 0x0fff)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Frame<T> {
    pub fn set_dst(&mut self, mac: [u8; 6]) {
        self.buffer.as_mut()[field::DST].copy_from_slice(&mac);
    }

    pub fn set_src(&mut self, mac: [u8; 6]) {
        self.buffer.as_mut()[field::SRC].copy_from_slice(&mac);
    }

    pub fn set_ethertype(&mut self, et: u16) {
        put16(self.buffer.as_mut(), field::ETHERTYPE, et);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn untagged_and_tagged() {
        let mut f = [0u8; 18];
        f[12] = 0x08;
        let i = Frame::new_checked(&f[..]).unwrap().info().unwrap();
        assert_eq!(i, L2Info { l3_offset: 14, ethertype: ethertype::IPV4 });
        assert_eq!(Frame::new_checked(&f[..]).unwrap().vlan(), None);
        f[12..14].copy_from_slice(&[0x81, 0x00]);
        f[14..16].copy_from_slice(&[0x20, 0x64]);
        f[16..18].copy_from_slice(&[0x86, 0xdd]);
        let i = Frame::new_checked(&f[..]).unwrap().info().unwrap();
        assert_eq!(i, L2Info { l3_offset: 18, ethertype: ethertype::IPV6 });
        assert_eq!(Frame::new_checked(&f[..]).unwrap().vlan(), Some(100));
        f[16..18].copy_from_slice(&[0x81, 0x00]);
        assert_eq!(Frame::new_checked(&f[..]).unwrap().info(), Err(WireError::Malformed));
        assert_eq!(Frame::new_checked(&f[..16]).unwrap().info(), Err(WireError::Truncated));
        assert_eq!(Frame::new_checked(&f[..13]).err(), Some(WireError::Truncated));
    }
}
