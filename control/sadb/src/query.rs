//! Asking the dataplane about one SA. An SA's counters live in the one worker that owns
//! it; the control process writes the question (direction, SPI) into every running
//! worker's question box, each worker answers between two bursts (the owner with the
//! SA's counters, the others with "not here"), and the control reads the answers. No
//! per-packet cost, no lock in the dataplane; control processes take a file lock so
//! that their questions do not cross.

use crate::dp::DpSegment;
use crate::layout::{SA_FIELDS, SaQuery};
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use core::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use natt_engine::reason::DropReason;
use natt_engine::sa::{Direction, Endpoint, SaRuntime};
use std::time::{Duration, Instant};

/// Where each value sits in `SaQuery::fields`.
mod field {
    pub const PACKETS: usize = 0;
    pub const BYTES: usize = 1;
    pub const NAT_CHANGES: usize = 2;
    pub const SEQ: usize = 3;
    pub const REPLAY_TOP: usize = 4;
    pub const FLAGS: usize = 5;
    pub const PORT: usize = 6;
    pub const ADDR_HI: usize = 7;
    pub const ADDR_LO: usize = 8;
    pub const DROPS: usize = 16;
}
const FLAG_EXPIRED: u64 = 1;
const FLAG_SOFT: u64 = 2;
const FLAG_V6: u64 = 4;

const _: () = assert!(field::DROPS + DropReason::SA_COUNT <= SA_FIELDS);

/// What the owning worker says about an SA.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SaAnswer {
    pub worker: usize,
    pub packets: u64,
    pub bytes: u64,
    pub nat_changes: u64,
    /// Outbound: the last sequence number used.
    pub seq: u64,
    /// Inbound: the highest sequence number authenticated.
    pub replay_top: u64,
    pub expired: bool,
    pub soft_fired: bool,
    pub endpoint: Endpoint,
    /// Drops after the SA was identified, by reason (SA-scope reasons only).
    pub drops: Vec<(DropReason, u64)>,
}

/// Worker: is there a question it has not answered? Returns its ticket, direction and SPI.
#[inline]
pub fn pending(q: &SaQuery) -> Option<(u64, Direction, u32)> {
    let asked = q.asked.load(Acquire);
    if asked == q.answered.load(Relaxed) {
        return None;
    }
    let dir = if q.direction.load(Relaxed) == 1 { Direction::Outbound } else { Direction::Inbound };
    Some((asked, dir, q.spi.load(Relaxed)))
}

/// Worker: answer question `ticket` with the SA's runtime state, or "not here".
pub fn answer<K>(q: &SaQuery, ticket: u64, sa: Option<&SaRuntime<K>>) {
    let f = &q.fields;
    match sa {
        None => q.found.store(0, Relaxed),
        Some(rt) => {
            f[field::PACKETS].store(rt.stats.packets, Relaxed);
            f[field::BYTES].store(rt.stats.bytes, Relaxed);
            f[field::NAT_CHANGES].store(rt.stats.nat_changes, Relaxed);
            f[field::SEQ].store(rt.seq, Relaxed);
            f[field::REPLAY_TOP].store(rt.peer.replay.top(), Relaxed);
            let (v6, hi, lo) = match rt.peer.endpoint.addr {
                IpAddr::V4(a) => (false, 0, u64::from(a.to_bits())),
                IpAddr::V6(a) => (true, (a.to_bits() >> 64) as u64, a.to_bits() as u64),
            };
            let flags =
                u64::from(rt.expired) * FLAG_EXPIRED + u64::from(rt.soft_fired) * FLAG_SOFT + u64::from(v6) * FLAG_V6;
            f[field::FLAGS].store(flags, Relaxed);
            f[field::PORT].store(u64::from(rt.peer.endpoint.port), Relaxed);
            f[field::ADDR_HI].store(hi, Relaxed);
            f[field::ADDR_LO].store(lo, Relaxed);
            for (i, d) in rt.stats.drops.iter().enumerate() {
                f[field::DROPS + i].store(*d, Relaxed);
            }
            q.found.store(1, Relaxed);
        }
    }
    q.answered.store(ticket, Release);
}

fn read(q: &SaQuery, worker: usize) -> SaAnswer {
    let f = |i: usize| q.fields[i].load(Relaxed);
    let flags = f(field::FLAGS);
    let addr = if flags & FLAG_V6 != 0 {
        IpAddr::V6(Ipv6Addr::from_bits((u128::from(f(field::ADDR_HI)) << 64) | u128::from(f(field::ADDR_LO))))
    } else {
        IpAddr::V4(Ipv4Addr::from_bits(f(field::ADDR_LO) as u32))
    };
    let drops = DropReason::ALL
        .iter()
        .filter_map(|r| r.sa_index().map(|i| (*r, f(field::DROPS + i))))
        .filter(|(_, n)| *n > 0)
        .collect();
    SaAnswer {
        worker,
        packets: f(field::PACKETS),
        bytes: f(field::BYTES),
        nat_changes: f(field::NAT_CHANGES),
        seq: f(field::SEQ),
        replay_top: f(field::REPLAY_TOP),
        expired: flags & FLAG_EXPIRED != 0,
        soft_fired: flags & FLAG_SOFT != 0,
        endpoint: Endpoint { addr, port: f(field::PORT) as u16 },
        drops,
    }
}

/// Control: ask every running worker about an SA; the answers of the workers holding
/// its state (normally one). Errors if no dataplane runs or a worker does not answer
/// within `timeout`.
pub fn ask(dp: &DpSegment, dir: Direction, spi: u32, timeout: Duration) -> Result<Vec<SaAnswer>, String> {
    if !dp.dataplane_alive() {
        return Err("no dataplane is running".into());
    }
    let _lock = dp.lock_queries().ok_or("another control process keeps asking the dataplane; try again")?;
    let workers = (dp.header().workers.load(Relaxed) as usize).min(dp.layout().max_workers);
    let active: Vec<usize> = (0..workers).filter(|&w| dp.worker(w).active.load(Acquire) == 1).collect();
    let mut tickets = Vec::with_capacity(active.len());
    for &w in &active {
        let q = dp.query(w);
        q.spi.store(spi, Relaxed);
        q.direction.store(u32::from(dir == Direction::Outbound), Relaxed);
        let t = q.asked.load(Relaxed).wrapping_add(1);
        q.asked.store(t, Release);
        tickets.push((w, t));
    }
    let end = Instant::now() + timeout;
    let mut out = Vec::new();
    for (w, t) in tickets {
        let q = dp.query(w);
        while q.answered.load(Acquire) != t {
            if Instant::now() > end {
                return Err(format!("worker {w} did not answer within {timeout:?}"));
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        if q.found.load(Relaxed) == 1 {
            out.push(read(q, w));
        }
    }
    Ok(out)
}
