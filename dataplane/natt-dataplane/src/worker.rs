//! One worker: a pinned lcore busy-polling its RX queues. Every loop it takes a snapshot
//! of the SA table (its quiescent point), reads a burst from each of its queues and from
//! the rings other workers hand it packets through, and moves each burst through the
//! stages: make every mbuf one plain segment, send each packet to the worker that owns
//! its SA (or keep it), run the engine over what it keeps, then route each verdict to a
//! TX buffer. TX buffers are flushed when full, when the loop found nothing to do, and by
//! the drain timer. No lock, allocation or syscall: counters are plain integers published
//! to the dataplane segment every millisecond.

use crate::crypto::Crypto;
use crate::dispatch::{Peek, inner_destination, is_ike_from_host, peek};
use crate::host::ShmHost;
use crate::report::{SaReport, WorkerReport};
use crate::setup::{Lane, Role, Shared};
use crate::store::ShmStore;
use arrayvec::ArrayVec;
use natt_dpdk::mbuf::{BURST_MAX, Burst, Mbuf, PlainMbuf};
use natt_dpdk::{eal, port};
use natt_engine::{DropReason, Engine, Frame, InResult, InVerdict, OutResult, OutVerdict, Reassembly};
use natt_sadb::stats::{Block, Counter};
use std::sync::atomic::Ordering::{Relaxed, SeqCst};

/// Where a frame headed for encapsulation came from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Source {
    Protected,
    /// The host, through the public side's kernel interface.
    HostPublic,
    /// The host, through the protected side's kernel interface.
    HostProtected,
}

/// The dataplane's own per-worker counters (the engine keeps the protocol ones).
#[derive(Clone, Copy, Debug, Default)]
pub struct IoCounters {
    pub rx: [u64; 4],
    pub tx: [u64; 4],
    pub tx_bytes: u64,
    pub rx_handoff: u64,
    pub handoff_out: u64,
    pub bursts: u64,
    pub polls: u64,
    pub linearized: u64,
    /// TSC cycles of loop iterations that found packets.
    pub busy_cycles: u64,
    /// Cycles per stage (with `--stats-detail on`): RX, dispatch, decap, encap, TX.
    pub stage_cycles: [u64; 5],
}

const RX: usize = 0;
const DISPATCH: usize = 1;
const DECAP: usize = 2;
const ENCAP: usize = 3;
const TX: usize = 4;
/// Stage cycles are measured in one loop iteration with packets in this many (a power of
/// two) and counted times this many: an unbiased estimate at an eighth of the TSC reads.
const STAGE_SAMPLE: u64 = 8;
/// ... after the first this many, which are all measured.
const STAGE_ALL: u64 = 64;
/// Latencies beyond the histogram's range are recorded at its top.
const LATENCY_CLAMP: u64 = natt_sadb::view::LATENCY_MAX;

type Eng<'a> = Engine<Crypto, ShmStore<'a, Crypto>>;

struct Worker<'a> {
    sh: &'a Shared,
    me: usize,
    engine: Eng<'a>,
    host: ShmHost<'a>,
    block: Block<'a>,
    io: IoCounters,
    /// Per role: the port id and our TX queue on it.
    tx_port: [Option<(u16, u16)>; 4],
    /// Per role: the MAC addresses of frames we forward there (next hop, then ours).
    macs: [[u8; 12]; 4],
    /// The only worker: every SA is ours, nothing is dispatched.
    alone: bool,
    tx: [Burst; 4],
    /// Per lane and destination worker: packets waiting to be handed over.
    handoff: [Vec<Burst>; 2],
    in_res: [InResult; BURST_MAX],
    out_res: [OutResult; BURST_MAX],
    now_ns: u64,
    drain_ticks: u64,
    last_drain: u64,
    last_publish: u64,
    /// Per-packet latency and per-stage cycles (`--stats-detail`).
    detail: bool,
    /// This loop iteration times its stages, its cycles counting this many times (with
    /// detail on: the first `STAGE_ALL` iterations with packets, then one in
    /// `STAGE_SAMPLE`); 0: not timed.
    timing: u64,
    /// Loop iterations that had packets.
    busy_iterations: u64,
    /// RX-to-TX latency in TSC cycles, exported every 100 ms.
    latency: hdrhistogram::Histogram<u64>,
    last_latency: u64,
}

/// Run worker `me` until `sh.stop`; returns 0.
pub fn run(sh: &Shared, me: usize) -> i32 {
    let lcore = sh.plans[me].lcore;
    sh.dp.register_worker(me, lcore, || sh.reader.snapshot().generation);
    let mut store = ShmStore::new(&sh.reader, &sh.owners, me, sh.dp.reservations(), &sh.inboxes, &sh.lanes);
    // Before the first poll: every state the builder made for us so far.
    store.take_all_prepared(std::time::Duration::from_secs(2));
    let mut w = Worker {
        sh,
        me,
        engine: Engine::with_store(sh.cfg.engine, store, &sh.cfg.natt_ports),
        host: ShmHost::new(sh.dp.producer(me), sh.dp.reservations()),
        block: sh.dp.counters(me),
        io: IoCounters::default(),
        tx_port: Role::ALL.map(|r| sh.port(r).map(|p| (p.info.id, me as u16))),
        macs: Role::ALL.map(|r| {
            let mut h = [0u8; 12];
            if let Some(p) = sh.port(r) {
                h[..6].copy_from_slice(&p.peer);
                h[6..].copy_from_slice(&p.mac);
            }
            h
        }),
        alone: sh.workers() == 1,
        tx: Default::default(),
        handoff: [(0..sh.workers()).map(|_| Burst::new()).collect(), (0..sh.workers()).map(|_| Burst::new()).collect()],
        in_res: [InResult::default(); BURST_MAX],
        out_res: [OutResult::default(); BURST_MAX],
        now_ns: 0,
        drain_ticks: sh.clock.ticks_us(sh.cfg.drain_us).max(1),
        last_drain: 0,
        last_publish: 0,
        detail: sh.cfg.detail,
        timing: 0,
        busy_iterations: 0,
        latency: natt_sadb::view::new_histogram(),
        last_latency: 0,
    };
    w.main_loop();
    w.shut_down();
    0
}

impl<'a> Worker<'a> {
    fn main_loop(&mut self) {
        let (sh, me) = (self.sh, self.me);
        let burst = sh.cfg.burst;
        let mut rx = Burst::new();
        let mut keep = Burst::<PlainMbuf>::new();
        let mut idle_passes = 0u32;
        loop {
            let stopping = sh.stop.load(Relaxed);
            if stopping && !sh.rx_stopped[me].swap(true, SeqCst) {
                idle_passes = 0;
            }
            let tsc = self.begin();
            let mut got = 0;
            if !stopping {
                for &q in &sh.plans[me].rx[Role::Public as usize] {
                    got += self.poll_port(Role::Public, q, burst, &mut rx);
                    self.inbound(&mut rx, &mut keep);
                }
            }
            got += self.poll_rings(Lane::Inbound, &mut rx, &mut keep);
            if !stopping {
                for role in [Role::Protected, Role::Punt, Role::ProtectedPunt] {
                    let source = match role {
                        Role::Protected => Source::Protected,
                        Role::Punt => Source::HostPublic,
                        _ => Source::HostProtected,
                    };
                    for &q in &sh.plans[me].rx[role as usize] {
                        got += self.poll_port(role, q, burst, &mut rx);
                        self.outbound(&mut rx, &mut keep, source);
                    }
                }
            }
            got += self.poll_rings(Lane::Outbound, &mut rx, &mut keep);
            self.flush_handoffs();
            self.drain(tsc, got == 0);
            if got > 0 {
                self.io.busy_cycles += eal::rdtsc().wrapping_sub(tsc);
                self.busy_iterations += 1;
            }
            self.housekeeping(tsc);
            if stopping {
                // Once every worker has stopped reading ports, empty our rings until
                // nothing has come for a while.
                idle_passes =
                    if got == 0 && sh.rx_stopped.iter().all(|s| s.load(SeqCst)) { idle_passes + 1 } else { 0 };
                if idle_passes > 2000 {
                    break;
                }
            }
        }
    }

    /// The TSC if this iteration times its stages.
    #[inline]
    fn stamp(&self) -> u64 {
        if self.timing > 0 { eal::rdtsc() } else { 0 }
    }

    #[inline]
    fn charge(&mut self, stage: usize, since: u64) -> u64 {
        if self.timing == 0 {
            return 0;
        }
        let now = eal::rdtsc();
        self.io.stage_cycles[stage] += now.wrapping_sub(since) * self.timing;
        now
    }

    /// The quiescent point: new SA snapshot, NAT updates from other workers, SA states
    /// from the builder, clock, and questions from the control process about an SA.
    #[inline]
    fn begin(&mut self) -> u64 {
        let tsc = eal::rdtsc();
        self.now_ns = self.sh.clock.mono_ns(tsc);
        self.host.now_wall_ns = self.sh.clock.wall_ns(tsc);
        self.engine.tick(self.now_ns);
        let generation = self.engine.store_mut().refresh();
        self.sh.dp.quiescent(self.me, generation, self.host.now_wall_ns);
        self.engine.store_mut().apply_nat_updates();
        self.engine.store_mut().take_prepared(crate::store::TAKE_PER_LOOP);
        let q = self.sh.dp.query(self.me);
        if let Some((ticket, dir, spi)) = natt_sadb::query::pending(q) {
            natt_sadb::query::answer(q, ticket, self.engine.store().runtime(dir, spi));
        }
        self.io.polls += 1;
        let n = self.busy_iterations;
        self.timing = if !self.detail {
            0
        } else if n < STAGE_ALL {
            1
        } else if n & (STAGE_SAMPLE - 1) == 0 {
            STAGE_SAMPLE
        } else {
            0
        };
        tsc
    }

    #[inline]
    fn poll_port(&mut self, role: Role, q: u16, burst: usize, rx: &mut Burst) -> usize {
        let Some((id, _)) = self.tx_port[role as usize] else { return 0 };
        let t0 = if self.detail { eal::rdtsc() } else { 0 };
        let n = port::rx_burst_max(id, q, rx, burst);
        if n > 0 {
            self.io.rx[role as usize] += n as u64;
            self.io.bursts += 1;
            if self.detail {
                // The RX time travels with the packet (through handoffs too).
                for m in rx.iter_mut() {
                    m.set_stamp(t0);
                }
                self.charge(RX, t0);
            }
        }
        n
    }

    #[inline]
    fn poll_rings(&mut self, lane: Lane, rx: &mut Burst, keep: &mut Burst<PlainMbuf>) -> usize {
        let mut got = 0;
        for src in 0..self.sh.workers() {
            let Some(ring) = self.sh.ring(lane, src, self.me) else { continue };
            let n = ring.dequeue(rx);
            if n == 0 {
                continue;
            }
            got += n;
            self.io.rx_handoff += n as u64;
            match lane {
                Lane::Inbound => self.inbound(rx, keep),
                Lane::Outbound => self.outbound(rx, keep, Source::Protected),
            }
        }
        got
    }

    // ---- inbound: public side to protected side ----

    fn inbound(&mut self, rx: &mut Burst, keep: &mut Burst<PlainMbuf>) {
        if rx.is_empty() {
            return;
        }
        let t = self.stamp();
        for m in rx.drain() {
            if let Some(m) = self.plain(m, true) {
                if self.alone {
                    // Every SA is ours, and the engine reassembles fragments itself.
                    push(keep, m);
                } else {
                    self.dispatch_in(m, keep, true);
                }
            }
        }
        let t = self.charge(DISPATCH, t);
        self.decap(keep, t);
    }

    /// Keep a packet whose SA this worker owns, hand the others over. Fragments go to
    /// the worker that reassembles their datagram first.
    #[inline]
    fn dispatch_in(&mut self, mut m: PlainMbuf, keep: &mut Burst<PlainMbuf>, may_reassemble: bool) {
        let owners = &self.sh.owners;
        match peek(m.data(), &self.sh.cfg.natt_ports) {
            Peek::Esp(spi) => {
                let o = owners.of_spi(spi);
                if o == self.me { push(keep, m) } else { self.hand_over(Lane::Inbound, o, m.into_mbuf()) }
            }
            Peek::Fragment(key) => {
                let o = owners.of_fragment(key);
                if o != self.me {
                    return self.hand_over(Lane::Inbound, o, m.into_mbuf());
                }
                if !may_reassemble {
                    return push(keep, m);
                }
                match self.engine.reassemble(&mut m, self.now_ns) {
                    Reassembly::NotFragment => push(keep, m),
                    // The datagram now fills the mbuf.
                    Reassembly::Complete => self.dispatch_in(m, keep, false),
                    Reassembly::Punt(_) => self.punt(Role::Punt, m),
                    // Held: kept in the reassembly table (copied); Drop: counted.
                    Reassembly::Held | Reassembly::Drop(_) => drop(m),
                }
            }
            Peek::Other => push(keep, m),
        }
    }

    fn decap(&mut self, keep: &mut Burst<PlainMbuf>, t: u64) {
        let n = keep.len();
        if n == 0 {
            return;
        }
        self.engine.decap_burst(keep.as_mut_slice(), self.now_ns, &mut self.in_res[..n], &mut self.host);
        let t = self.charge(DECAP, t);
        for (i, m) in keep.drain().enumerate() {
            match self.in_res[i].verdict {
                InVerdict::Tunnel => self.forward(Role::Protected, m),
                InVerdict::Transport | InVerdict::Punt(_) => self.punt(Role::Punt, m),
                InVerdict::Keepalive | InVerdict::Held | InVerdict::Drop(_) => drop(m),
            }
        }
        self.charge(TX, t);
    }

    // ---- outbound: protected side (and the host) to public side ----

    fn outbound(&mut self, rx: &mut Burst, keep: &mut Burst<PlainMbuf>, source: Source) {
        if rx.is_empty() {
            return;
        }
        let t = self.stamp();
        for m in rx.drain() {
            if let Some(m) = self.plain(m, false) {
                if self.alone && source == Source::Protected {
                    // Every SA is ours; what no SA covers the engine drops and counts.
                    push(keep, m);
                } else {
                    self.dispatch_out(m, keep, source);
                }
            }
        }
        let t = self.charge(DISPATCH, t);
        self.encap(keep, source, t);
    }

    /// Keep a packet whose outbound SA this worker owns, hand the others over. What the
    /// host sends that no SA covers (or IKE) leaves unencrypted.
    #[inline]
    fn dispatch_out(&mut self, m: PlainMbuf, keep: &mut Burst<PlainMbuf>, source: Source) {
        let found = inner_destination(m.data()).and_then(|d| self.engine.store_mut().lookup_outbound(&d));
        match (found, source) {
            (Some(_), Source::HostPublic) if is_ike_from_host(m.data(), &self.sh.cfg.natt_ports) => {
                self.send(Role::Public, m.into_mbuf())
            }
            (Some((_, spi)), _) => {
                let o = self.sh.owners.of_spi(spi);
                if o == self.me { push(keep, m) } else { self.hand_over(Lane::Outbound, o, m.into_mbuf()) }
            }
            (None, Source::Protected) => push(keep, m),
            (None, Source::HostPublic) => self.send(Role::Public, m.into_mbuf()),
            (None, Source::HostProtected) => self.send(Role::Protected, m.into_mbuf()),
        }
    }

    fn encap(&mut self, keep: &mut Burst<PlainMbuf>, source: Source, t: u64) {
        let n = keep.len();
        if n == 0 {
            return;
        }
        self.engine.encap_burst(keep.as_mut_slice(), &mut self.out_res[..n], &mut self.host);
        let t = self.charge(ENCAP, t);
        for (i, mut m) in keep.drain().enumerate() {
            match self.out_res[i].verdict {
                OutVerdict::Encapsulated => {
                    m.set_tx_checksum(&self.out_res[i].tx_checksum);
                    self.forward(Role::Public, m);
                }
                OutVerdict::Punt(_) => self.punt(Role::ProtectedPunt, m),
                // Back the way the packet came (packets handed over by another worker
                // came from the protected port, or rarely the host's).
                OutVerdict::IcmpTooBig | OutVerdict::IcmpTtlExceeded => match source {
                    Source::Protected => self.forward(Role::Protected, m),
                    Source::HostPublic => self.punt(Role::Punt, m),
                    Source::HostProtected => self.punt(Role::ProtectedPunt, m),
                },
                OutVerdict::Drop(_) => drop(m),
            }
        }
        self.charge(TX, t);
    }

    // ---- around the engine ----

    /// A plain one-segment mbuf, linearised if it was not; or dropped and counted.
    #[inline]
    fn plain(&mut self, m: Mbuf, inbound: bool) -> Option<PlainMbuf> {
        let m = match m.into_plain() {
            Ok(p) => return Some(p),
            Err(m) => m,
        };
        let len = u64::from(m.pkt_len());
        match m.linearize(&self.sh.pool) {
            Ok(m) => {
                self.io.linearized += 1;
                Some(m)
            }
            Err(m) => {
                self.count_lost(inbound, len, DropReason::MultiSegment);
                drop(m);
                None
            }
        }
    }

    /// A packet dropped before the engine saw it: counted as received and dropped.
    fn count_lost(&mut self, inbound: bool, bytes: u64, r: DropReason) {
        if inbound {
            self.engine.count_received(1, bytes);
        } else {
            self.engine.count_received_out(1, bytes);
        }
        self.engine.count_drop(r);
    }

    #[inline]
    fn hand_over(&mut self, lane: Lane, to: usize, m: Mbuf) {
        let b = &mut self.handoff[lane as usize][to];
        if let Err(m) = b.push(m) {
            drop(m);
            self.engine.count_drop(DropReason::HandoffFull);
            return;
        }
        if b.is_full() {
            self.flush_handoff(lane, to);
        }
    }

    fn flush_handoff(&mut self, lane: Lane, to: usize) {
        let b = &mut self.handoff[lane as usize][to];
        if b.is_empty() {
            return;
        }
        let Some(ring) = self.sh.ring(lane, self.me, to) else {
            b.clear();
            return;
        };
        let sent = ring.enqueue(b);
        self.io.handoff_out += sent as u64;
        let lost = b.len();
        b.clear();
        for _ in 0..lost {
            self.engine.count_drop(DropReason::HandoffFull);
        }
    }

    fn flush_handoffs(&mut self) {
        for lane in [Lane::Inbound, Lane::Outbound] {
            for to in 0..self.sh.workers() {
                if to != self.me {
                    self.flush_handoff(lane, to);
                }
            }
        }
    }

    /// Forward a frame out of `role`'s port: our MAC as source, the next hop's as
    /// destination.
    #[inline]
    fn forward(&mut self, role: Role, mut m: PlainMbuf) {
        if let Some(d) = m.data_mut().first_chunk_mut::<12>() {
            *d = self.macs[role as usize];
        }
        self.send(role, m.into_mbuf());
    }

    /// Hand a frame to the host through a kernel interface, addressed to it.
    #[inline]
    fn punt(&mut self, role: Role, mut m: PlainMbuf) {
        // Unicast frames are addressed to the interface, so the kernel takes them: the
        // interface's MAC is ours on that port, the second half of `macs`.
        let mac = self.macs[role as usize];
        if let Some(d) = m.data_mut().first_chunk_mut::<6>() {
            if d[0] & 1 == 0 {
                d.copy_from_slice(&mac[6..]);
            }
        }
        self.send(role, m.into_mbuf())
    }

    /// Queue a frame for `role`'s port as it is.
    #[inline]
    fn send(&mut self, role: Role, m: Mbuf) {
        let r = role as usize;
        if self.tx_port[r].is_none() {
            drop(m);
            self.engine.count_drop(DropReason::NoPuntPort);
            return;
        }
        self.io.tx_bytes += u64::from(m.pkt_len());
        if let Err(m) = self.tx[r].push(m) {
            drop(m);
            self.engine.count_drop(DropReason::TxFull);
            return;
        }
        if self.tx[r].len() >= self.sh.cfg.burst {
            self.flush_tx(r);
        }
    }

    fn flush_tx(&mut self, r: usize) {
        let Some((id, q)) = self.tx_port[r] else { return };
        let b = &mut self.tx[r];
        if b.is_empty() {
            return;
        }
        let t0 = if self.detail { eal::rdtsc() } else { 0 };
        let mut stamps = ArrayVec::<u64, BURST_MAX>::new();
        if self.detail {
            stamps.extend(b.iter_mut().map(|m| m.stamp()));
        }
        let mut tries = 0;
        let mut done = 0;
        while !b.is_empty() && tries < 4 {
            let sent = port::tx_burst(id, q, b);
            self.io.tx[r] += sent as u64;
            done += sent;
            tries += 1;
        }
        let lost = b.len();
        if self.detail {
            // RX to TX, for every packet sent. A burst's packets share their RX time, so
            // runs of equal stamps are recorded at once: exact, and one histogram update
            // per RX burst instead of one per packet.
            let mut run = (0u64, 0u64);
            for &s in stamps.iter().take(done) {
                if s == run.0 {
                    run.1 += 1;
                    continue;
                }
                if run.0 != 0 {
                    let _ = self.latency.record_n(t0.wrapping_sub(run.0).clamp(1, LATENCY_CLAMP), run.1);
                }
                run = (s, 1);
            }
            if run.0 != 0 {
                let _ = self.latency.record_n(t0.wrapping_sub(run.0).clamp(1, LATENCY_CLAMP), run.1);
            }
            self.charge(TX, t0);
        }
        if lost > 0 {
            let b = &mut self.tx[r];
            let bytes: u64 = b.iter_mut().map(|m| u64::from(m.pkt_len())).sum();
            self.io.tx_bytes -= bytes.min(self.io.tx_bytes);
            b.clear();
            for _ in 0..lost {
                self.engine.count_drop(DropReason::TxFull);
            }
        }
    }

    /// Flush TX buffers when the loop was idle or the drain timer expired.
    #[inline]
    fn drain(&mut self, tsc: u64, idle: bool) {
        if idle || tsc.wrapping_sub(self.last_drain) >= self.drain_ticks {
            for r in 0..4 {
                if !self.tx[r].is_empty() {
                    self.flush_tx(r);
                }
            }
            self.last_drain = tsc;
        }
    }

    /// Every millisecond: publish counters, time out reassembly.
    #[inline]
    fn housekeeping(&mut self, tsc: u64) {
        if tsc.wrapping_sub(self.last_publish) < self.sh.clock.ticks_us(1000) {
            return;
        }
        self.last_publish = tsc;
        self.engine.expire(self.now_ns);
        self.publish();
        if self.detail && tsc.wrapping_sub(self.last_latency) >= self.sh.clock.ticks_us(100_000) {
            self.last_latency = tsc;
            natt_sadb::view::write_latency(self.sh.dp.latency(self.me), &self.latency);
        }
    }

    fn publish(&self) {
        let c = self.engine.counters();
        let b = &self.block;
        let s = &self.engine.store().counters;
        let io = &self.io;
        b.set(Counter::in_packets, c.in_packets);
        b.set(Counter::in_bytes, c.in_bytes);
        b.set(Counter::decap_packets, c.decap_packets);
        b.set(Counter::decap_bytes, c.decap_bytes);
        b.set(Counter::out_packets, c.out_packets);
        b.set(Counter::out_bytes, c.out_bytes);
        b.set(Counter::encap_packets, c.encap_packets);
        b.set(Counter::encap_bytes, c.encap_bytes);
        b.set(Counter::keepalives, c.keepalives);
        b.set(Counter::punt_ike, c.punts[natt_engine::PuntReason::Ike as usize]);
        b.set(Counter::punt_host, c.punts[natt_engine::PuntReason::Host as usize]);
        b.set(Counter::frag_held, c.frag_held);
        b.set(Counter::frag_absorbed, c.frag_absorbed);
        b.set(Counter::reassembled, c.reassembled);
        b.set(Counter::nat_changes, c.nat_changes);
        b.set(Counter::icmp_too_big, c.icmp_too_big);
        b.set(Counter::icmp_ttl_exceeded, c.icmp_ttl_exceeded);
        b.set(Counter::mss_clamped, c.mss_clamped);
        b.set(Counter::rx_public, io.rx[Role::Public as usize]);
        b.set(Counter::rx_protected, io.rx[Role::Protected as usize]);
        b.set(Counter::rx_punt, io.rx[Role::Punt as usize] + io.rx[Role::ProtectedPunt as usize]);
        b.set(Counter::rx_handoff, io.rx_handoff);
        b.set(Counter::handoff_out, io.handoff_out);
        b.set(Counter::tx_public, io.tx[Role::Public as usize]);
        b.set(Counter::tx_protected, io.tx[Role::Protected as usize]);
        b.set(Counter::tx_punt, io.tx[Role::Punt as usize] + io.tx[Role::ProtectedPunt as usize]);
        b.set(Counter::tx_bytes, io.tx_bytes);
        b.set(Counter::sa_loads, s.loads);
        b.set(Counter::sa_built_here, s.built_here);
        b.set(Counter::sa_freed_here, s.freed_here);
        b.set(Counter::sa_distrusts, s.distrusts);
        b.set(Counter::sa_record_lookups, s.record_lookups);
        b.set(Counter::bursts, io.bursts);
        b.set(Counter::polls, io.polls);
        b.set(Counter::linearized, io.linearized);
        b.set(Counter::busy_cycles, io.busy_cycles);
        b.set(Counter::rx_cycles, io.stage_cycles[RX]);
        b.set(Counter::dispatch_cycles, io.stage_cycles[DISPATCH]);
        b.set(Counter::decap_cycles, io.stage_cycles[DECAP]);
        b.set(Counter::encap_cycles, io.stage_cycles[ENCAP]);
        b.set(Counter::tx_cycles, io.stage_cycles[TX]);
        b.set(Counter::frag_pending, u64::from(self.engine.reassembler().held()));
        b.set(Counter::tx_pending, self.tx.iter().map(|t| t.len() as u64).sum());
        b.set(Counter::events_dropped, self.sh.dp.dropped_event_count(self.me));
        for r in DropReason::ALL {
            b.set_drop(*r, c.drops_of(*r));
        }
    }

    fn shut_down(&mut self) {
        self.flush_handoffs();
        for r in 0..4 {
            self.flush_tx(r);
        }
        self.publish();
        if self.detail {
            natt_sadb::view::write_latency(self.sh.dp.latency(self.me), &self.latency);
        }
        let sas = self
            .engine
            .store()
            .loaded()
            .map(|rt| SaReport {
                spi: rt.spi,
                direction: rt.direction,
                packets: rt.stats.packets,
                bytes: rt.stats.bytes,
                drops: DropReason::ALL
                    .iter()
                    .filter_map(|r| Some((*r, rt.stats.drop_count(*r))).filter(|x| x.1 > 0))
                    .collect(),
                seq: rt.seq,
                endpoint: rt.peer.endpoint,
            })
            .collect();
        let report = WorkerReport { sas };
        if let Ok(mut r) = self.sh.reports.lock() {
            r[self.me] = Some(report);
        }
        self.sh.dp.unregister_worker(self.me);
    }
}

#[inline]
fn push(b: &mut Burst<PlainMbuf>, m: PlainMbuf) {
    // `keep` takes at most one RX burst (64), so it never overflows; drop defensively.
    if let Err(m) = b.push(m) {
        drop(m);
    }
}
