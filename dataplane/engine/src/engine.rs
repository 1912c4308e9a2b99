//! The engine: one worker's SA table, reassembly table and counters, and the
//! operations that install SAs. Packets go through `decap_burst` (inbound.rs) and
//! `encap_burst` (outbound.rs).

use crate::counters::Counters;
use crate::crypto::{Backend, Ring};
use crate::event::{Event, EventKind, ExpiryCause, Host, Limit};
use crate::icmp_error::{Bucket, IcmpConfig};
use crate::mss::MssClamp;
use crate::reassembly::{Reassembler, ReassemblyConfig};
use crate::sa::{Direction, SaEntry, SaParams, SaRuntime, SaStore, SaTable, TableError};
use crate::wire::esp::NATT_PORT;

/// Packets processed per stage pass; longer slices are processed in chunks of this.
pub const MAX_BURST: usize = 64;

/// Engine settings that are not per SA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EngineConfig {
    pub reassembly: ReassemblyConfig,
    /// Largest outer IP packet the public side sends.
    pub mtu: usize,
    /// Checksums of encapsulated packets that the NIC of the public side computes.
    pub tx_checksum: TxChecksumOffload,
    /// ICMP errors about packets too big for the tunnel or out of TTL (see `icmp_error`).
    pub icmp: IcmpConfig,
    /// TCP MSS clamping of SYNs crossing the tunnel (see `mss`).
    pub mss_clamp: MssClamp,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            reassembly: ReassemblyConfig::default(),
            mtu: 1500,
            tx_checksum: TxChecksumOffload::NONE,
            icmp: IcmpConfig::default(),
            mss_clamp: MssClamp::default(),
        }
    }
}

/// Which outer checksums of encapsulated packets are left to the transmitting NIC
/// (DPDK TX checksum offloads). Where set, the engine prepares the field the way DPDK
/// asks (zero for the IPv4 header checksum, the pseudo-header sum for UDP) and says so in
/// each packet's `OutResult::tx_checksum`; the dataplane sets the mbuf's flags.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TxChecksumOffload {
    /// The outer IPv4 header checksum.
    pub ipv4_header: bool,
    /// The UDP checksum of ESP in UDP over IPv6 (over IPv4 it is zero, RFC 3948 §3.1.1).
    pub udp: bool,
}

impl TxChecksumOffload {
    pub const NONE: TxChecksumOffload = TxChecksumOffload { ipv4_header: false, udp: false };
}

/// One worker's protocol state. Single-owner: every method takes `&mut self` or `&self`,
/// nothing inside is shared or locked. `S` is where SAs come from: the engine's own table
/// by default, the shared table in the dataplane.
pub struct Engine<B: Backend = Ring, S: SaStore<B::Key> = SaTable<<B as Backend>::Key>> {
    pub(crate) cfg: EngineConfig,
    pub(crate) sas: S,
    pub(crate) reasm: Reassembler,
    pub(crate) counters: Counters,
    pub(crate) ip_ident: u16,
    /// The time (ns) last given by `tick` or `decap_burst`, and the ICMP error budget.
    pub(crate) now: u64,
    pub(crate) icmp_bucket: Bucket,
    /// Local UDP ports that carry ESP-in-UDP: 4500 and every SA's own.
    natt_ports: Vec<u16>,
    /// Per-burst scratch of the pipelines, allocated once.
    pub(crate) in_meta: Option<Box<[crate::inbound::Meta; MAX_BURST]>>,
    pub(crate) out_meta: Option<Box<[crate::outbound::Meta; MAX_BURST]>>,
    _backend: core::marker::PhantomData<fn() -> B>,
}

impl<B: Backend, S: SaStore<B::Key>> Engine<B, S> {
    /// An engine over `store`, recognising ESP-in-UDP on port 4500 and `extra_ports`.
    pub fn with_store(cfg: EngineConfig, store: S, extra_ports: &[u16]) -> Self {
        let mut natt_ports = vec![NATT_PORT];
        for p in extra_ports {
            if !natt_ports.contains(p) {
                natt_ports.push(*p);
            }
        }
        Engine {
            cfg,
            sas: store,
            reasm: Reassembler::new(cfg.reassembly),
            counters: Counters::default(),
            ip_ident: 0,
            now: 0,
            icmp_bucket: Bucket::new(cfg.icmp.rate),
            natt_ports,
            in_meta: Some(Box::new([crate::inbound::EMPTY; MAX_BURST])),
            out_meta: Some(Box::new([crate::outbound::EMPTY; MAX_BURST])),
            _backend: core::marker::PhantomData,
        }
    }

    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    pub fn store(&self) -> &S {
        &self.sas
    }

    pub fn store_mut(&mut self) -> &mut S {
        &mut self.sas
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    pub fn reassembler(&self) -> &Reassembler {
        &self.reasm
    }

    /// The time now (ns, any monotonic clock), for what `encap_burst` rate-limits (ICMP
    /// errors); `decap_burst` takes it too. Call once per poll loop.
    #[inline]
    pub fn tick(&mut self, now: u64) {
        self.now = now;
    }

    /// Discard fragments whose datagram timed out; call when idle.
    pub fn expire(&mut self, now: u64) {
        let n = self.reasm.expire(now);
        self.counters.drops[crate::reason::DropReason::FragTimeout as usize] += u64::from(n);
    }

    /// Count a drop that happened around the engine (buffers, rings, ports), so that one
    /// set of counters tells every packet's fate.
    #[inline]
    pub fn count_drop(&mut self, r: crate::reason::DropReason) {
        self.counters.drop(r);
    }

    /// Count packets received but handled around the engine (dropped or handed to
    /// another worker before the engine saw them).
    #[inline]
    pub fn count_received(&mut self, packets: u64, bytes: u64) {
        self.counters.in_packets += packets;
        self.counters.in_bytes += bytes;
    }

    /// The same for packets from the protected side (counted with `encap_burst`'s input).
    #[inline]
    pub fn count_received_out(&mut self, packets: u64, bytes: u64) {
        self.counters.out_packets += packets;
        self.counters.out_bytes += bytes;
    }

    #[inline]
    pub(crate) fn is_natt_port(&self, port: u16) -> bool {
        port == NATT_PORT || self.natt_ports.contains(&port)
    }

    #[inline]
    pub(crate) fn next_ident(&mut self) -> u16 {
        self.ip_ident = self.ip_ident.wrapping_add(1);
        self.ip_ident
    }
}

impl<B: Backend> Engine<B> {
    pub fn new(cfg: EngineConfig) -> Self {
        Engine {
            cfg,
            sas: SaTable::new(),
            reasm: Reassembler::new(cfg.reassembly),
            counters: Counters::default(),
            ip_ident: 0,
            now: 0,
            icmp_bucket: Bucket::new(cfg.icmp.rate),
            natt_ports: vec![NATT_PORT],
            in_meta: Some(Box::new([crate::inbound::EMPTY; MAX_BURST])),
            out_meta: Some(Box::new([crate::outbound::EMPTY; MAX_BURST])),
            _backend: core::marker::PhantomData,
        }
    }

    /// An engine with these SAs installed, or the first error.
    pub fn with_sas(cfg: EngineConfig, sas: impl IntoIterator<Item = SaParams>) -> Result<Self, TableError> {
        let mut e = Self::new(cfg);
        for p in sas {
            e.add_sa(p)?;
        }
        Ok(e)
    }

    pub fn add_sa(&mut self, p: SaParams) -> Result<(), TableError> {
        let port = p.encap.map(|e| e.local_port);
        self.sas.insert::<B>(p)?;
        if let Some(port) = port {
            if !self.natt_ports.contains(&port) {
                self.natt_ports.push(port);
            }
        }
        Ok(())
    }

    pub fn remove_sa(&mut self, direction: Direction, spi: u32) -> Option<SaParams> {
        let p = self.sas.remove(direction, spi)?;
        self.natt_ports = core::iter::once(NATT_PORT)
            .chain(self.sas.iter().filter_map(|e| e.rt.encap.map(|x| x.local_port)))
            .fold(Vec::new(), |mut v, port| {
                if !v.contains(&port) {
                    v.push(port);
                }
                v
            });
        Some(p)
    }

    /// Make an outbound SA send above `floor` (see `SaRuntime::resume_above`). Returns
    /// false if there is no such SA.
    pub fn resume_above(&mut self, direction: Direction, spi: u32, floor: u64) -> bool {
        let Some(slot) = (match direction {
            Direction::Inbound => self.sas.inbound_slot(spi),
            Direction::Outbound => self.sas.outbound_slot(spi),
        }) else {
            return false;
        };
        match self.sas.get_mut(slot) {
            Some(e) => {
                e.rt.resume_above(floor);
                true
            }
            None => false,
        }
    }

    pub fn sa(&self, direction: Direction, spi: u32) -> Option<&SaEntry<B::Key>> {
        self.sas.find(direction, spi)
    }

    pub fn sas(&self) -> &SaTable<B::Key> {
        &self.sas
    }
}

/// Count one packet through an SA against its lifetime; raise soft and hard events.
#[inline]
pub(crate) fn account<K>(sa: &mut SaRuntime<K>, bytes: u64, events: &mut impl Host) {
    sa.stats.packets += 1;
    sa.stats.bytes += bytes;
    if sa.stats.packets >= sa.next_limit_packets || sa.stats.bytes >= sa.next_limit_bytes {
        reached_limit(sa, events);
    }
}

/// A lifetime limit may have been reached: raise what is due, once.
#[cold]
#[inline(never)]
fn reached_limit<K>(sa: &mut SaRuntime<K>, events: &mut impl Host) {
    let lt = sa.lifetime;
    let (p, b) = (sa.stats.packets, sa.stats.bytes);
    if !sa.soft_fired {
        let hit = if lt.soft_packets.is_some_and(|s| p >= s) {
            Some(Limit::Packets)
        } else if lt.soft_bytes.is_some_and(|s| b >= s) {
            Some(Limit::Bytes)
        } else {
            None
        };
        if let Some(l) = hit {
            sa.soft_fired = true;
            events.event(Event { spi: sa.spi, direction: sa.direction, kind: EventKind::SoftLifetime(l) });
        }
    }
    let hard = if lt.hard_packets.is_some_and(|h| p >= h) {
        Some(Limit::Packets)
    } else if lt.hard_bytes.is_some_and(|h| b >= h) {
        Some(Limit::Bytes)
    } else {
        None
    };
    if let Some(l) = hard {
        if !sa.expired {
            events.event(Event { spi: sa.spi, direction: sa.direction, kind: EventKind::HardLifetime(l) });
            expire(sa, ExpiryCause::HardLifetime(l), events);
        }
    }
    sa.update_next_limits();
}

/// Mark an SA expired and say so once.
pub(crate) fn expire<K>(sa: &mut SaRuntime<K>, cause: ExpiryCause, events: &mut impl Host) {
    if !sa.expired {
        sa.expired = true;
        events.event(Event { spi: sa.spi, direction: sa.direction, kind: EventKind::SaExpired(cause) });
    }
}
