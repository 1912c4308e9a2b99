//! Ethernet ports: what they are, starting them, RX and TX bursts, statistics, and the
//! rte_flow rules that steer ESP by SPI.

use crate::DpdkError;
use crate::mbuf::{Burst, Mempool};
use std::ffi::CStr;

/// What a port is and can do.
#[derive(Clone, Debug)]
pub struct PortInfo {
    pub id: u16,
    pub name: String,
    pub driver: String,
    pub max_rx_queues: u16,
    pub max_tx_queues: u16,
    pub rx_offloads: u64,
    pub tx_offloads: u64,
    pub rss_offloads: u64,
    pub mac: [u8; 6],
    pub socket: i32,
}

/// The checksum offloads the dataplane uses (`rx_offloads` / `tx_offloads` bits).
pub const RX_OFFLOAD_IPV4_CKSUM: u64 = dpdk_sys::natt_offload_bits_NATT_RX_OFFLOAD_IPV4_CKSUM as u64;
pub const TX_OFFLOAD_IPV4_CKSUM: u64 = dpdk_sys::natt_offload_bits_NATT_TX_OFFLOAD_IPV4_CKSUM as u64;
pub const TX_OFFLOAD_UDP_CKSUM: u64 = dpdk_sys::natt_offload_bits_NATT_TX_OFFLOAD_UDP_CKSUM as u64;

/// Ports DPDK found (PCI devices bound to a DPDK driver, and --vdev devices).
pub fn count() -> u16 {
    // SAFETY: plain query after init.
    unsafe { dpdk_sys::rte_eth_dev_count_avail() }
}

pub fn info(port: u16) -> Result<PortInfo, DpdkError> {
    let mut i = dpdk_sys::natt_port_info::default();
    // SAFETY: fills `i`.
    let rc = unsafe { dpdk_sys::natt_port_info(port, &mut i) };
    if rc != 0 {
        return Err(DpdkError::errno(format!("port {port}"), rc));
    }
    let s = |b: &[std::ffi::c_char]| {
        // SAFETY: the shim NUL-terminates both strings within their arrays.
        unsafe { CStr::from_ptr(b.as_ptr()) }.to_string_lossy().into_owned()
    };
    Ok(PortInfo {
        id: port,
        name: s(&i.name),
        driver: s(&i.driver),
        max_rx_queues: i.max_rx_queues,
        max_tx_queues: i.max_tx_queues,
        rx_offloads: i.rx_offload_capa,
        tx_offloads: i.tx_offload_capa,
        rss_offloads: i.flow_type_rss_offloads,
        mac: i.mac,
        socket: i.socket,
    })
}

/// How to start a port.
#[derive(Clone, Copy, Debug)]
pub struct PortConf {
    pub rx_queues: u16,
    pub tx_queues: u16,
    pub rx_desc: u16,
    pub tx_desc: u16,
    pub rss: bool,
    pub rx_offloads: u64,
    pub tx_offloads: u64,
    /// The RSS key, where the port takes one of its length.
    pub rss_key: Option<&'static [u8]>,
}

/// Configure, set up queues and start a port.
pub fn start(port: u16, c: &PortConf, pool: &Mempool) -> Result<(), DpdkError> {
    let conf = dpdk_sys::natt_port_conf {
        nb_rxq: c.rx_queues,
        nb_txq: c.tx_queues,
        nb_rxd: c.rx_desc,
        nb_txd: c.tx_desc,
        pool: pool.raw(),
        rss: i32::from(c.rss),
        rx_offloads: c.rx_offloads,
        tx_offloads: c.tx_offloads,
        rss_key: c.rss_key.map_or(std::ptr::null(), <[u8]>::as_ptr),
        rss_key_len: c.rss_key.map_or(0, |k| k.len().min(255) as u8),
    };
    let mut err = [0 as std::ffi::c_char; 256];
    // SAFETY: valid conf and pool; the shim writes a NUL-terminated message into err.
    let rc = unsafe { dpdk_sys::natt_port_start(port, &conf, err.as_mut_ptr(), err.len()) };
    if rc != 0 {
        // SAFETY: NUL-terminated by snprintf.
        let msg = unsafe { CStr::from_ptr(err.as_ptr()) }.to_string_lossy().into_owned();
        return Err(DpdkError::new(format!("port {port}"), msg));
    }
    Ok(())
}

pub fn stop(port: u16) {
    // SAFETY: stopping a started port; errors are irrelevant at shutdown.
    unsafe {
        dpdk_sys::rte_eth_dev_stop(port);
    }
}

/// Stop and close a port (after every worker has stopped using it). A net_pcap port
/// flushes and closes its capture files.
pub fn close(port: u16) {
    // SAFETY: no lcore polls the port any more; closing twice is harmless.
    unsafe { dpdk_sys::natt_port_close(port) }
}

/// Give the port a MAC address.
pub fn set_mac(port: u16, mac: &[u8; 6]) -> Result<(), DpdkError> {
    // SAFETY: mac points to 6 bytes.
    let rc = unsafe { dpdk_sys::natt_port_set_mac(port, mac.as_ptr()) };
    if rc != 0 {
        return Err(DpdkError::errno(format!("port {port}: setting MAC {}", mac_string(mac)), rc));
    }
    Ok(())
}

/// The size of the port's RSS redirection table (0: none).
pub fn reta_size(port: u16) -> u16 {
    // SAFETY: plain query.
    unsafe { dpdk_sys::natt_port_reta_size(port) }
}

/// Receive into the free space of `burst`; returns how many arrived.
#[inline]
pub fn rx_burst(port: u16, queue: u16, burst: &mut Burst) -> usize {
    let (p, room) = burst.raw_tail();
    // SAFETY: `p` has room for `room` pointers; the PMD writes owned mbufs there.
    let n = unsafe { dpdk_sys::natt_rx_burst(port, queue, p, room as u16) } as usize;
    // SAFETY: the n entries were just filled.
    unsafe { burst.grow(n) };
    n
}

/// Receive at most `max` packets into the free space of `burst`.
#[inline]
pub fn rx_burst_max(port: u16, queue: u16, burst: &mut Burst, max: usize) -> usize {
    let (p, room) = burst.raw_tail();
    let want = room.min(max) as u16;
    // SAFETY: `p` has room for `room` >= `want` pointers; the PMD writes owned mbufs there.
    let n = unsafe { dpdk_sys::natt_rx_burst(port, queue, p, want) } as usize;
    // SAFETY: the n entries were just filled.
    unsafe { burst.grow(n) };
    n
}

/// Send what `burst` holds; the sent packets leave the burst (the PMD owns them now), the
/// rest stay, in order. Returns how many were sent.
#[inline]
pub fn tx_burst(port: u16, queue: u16, burst: &mut Burst) -> usize {
    if burst.is_empty() {
        return 0;
    }
    let (p, n) = burst.raw_head();
    // SAFETY: `p` points to n owned mbufs; the PMD takes ownership of the first `sent`.
    let sent = unsafe { dpdk_sys::natt_tx_burst(port, queue, p, n as u16) } as usize;
    burst.consume_front(sent);
    sent
}

/// Port counters, as the PMD keeps them.
#[derive(Clone, Copy, Debug, Default)]
pub struct EthStats {
    pub ipackets: u64,
    pub opackets: u64,
    pub ibytes: u64,
    pub obytes: u64,
    pub imissed: u64,
    pub ierrors: u64,
    pub oerrors: u64,
    pub rx_nombuf: u64,
}

pub fn stats(port: u16) -> EthStats {
    let mut s = dpdk_sys::rte_eth_stats::default();
    // SAFETY: fills `s`.
    let rc = unsafe { dpdk_sys::rte_eth_stats_get(port, &mut s) };
    if rc != 0 {
        return EthStats::default();
    }
    EthStats {
        ipackets: s.ipackets,
        opackets: s.opackets,
        ibytes: s.ibytes,
        obytes: s.obytes,
        imissed: s.imissed,
        ierrors: s.ierrors,
        oerrors: s.oerrors,
        rx_nombuf: s.rx_nombuf,
    }
}

/// Ask the port to spread ESP and ESP-in-UDP/4500 over queues `0..queues` by RSS on the
/// SPI with `key`. Fails (changing nothing) if the port cannot.
pub fn flow_esp_rss(port: u16, queues: u16, key: &[u8]) -> Result<(), DpdkError> {
    let mut err = [0 as std::ffi::c_char; 256];
    // SAFETY: key is valid for key.len() bytes; err receives a NUL-terminated message.
    let rc = unsafe {
        dpdk_sys::natt_flow_esp_rss(port, queues, key.as_ptr(), key.len() as u32, err.as_mut_ptr(), err.len())
    };
    if rc != 0 {
        // SAFETY: NUL-terminated by snprintf.
        let msg = unsafe { CStr::from_ptr(err.as_ptr()) }.to_string_lossy().into_owned();
        return Err(DpdkError::new(format!("port {port}: ESP steering by SPI"), msg));
    }
    Ok(())
}

pub fn mac_string(mac: &[u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}
