//! Start-up, after the EAL: check the ports the command line names, make the mbuf pool,
//! start the ports with a TX queue per worker, choose the dispatch (rte_flow or
//! software), attach the SA table and the dataplane segment, and make the rings between
//! workers. Everything the workers share ends up in `Shared`. Every failure is an
//! operator-facing message saying what is wrong and what to do.

use crate::args::Args;
use crate::dispatch::{DEFAULT_RETA, Owners, RSS_KEY};
use crate::host::Clock;
use crate::prepare::Lanes;
use crate::store::NatUpdate;
use crossbeam_queue::ArrayQueue;
use natt_dpdk::mbuf::Mempool;
use natt_dpdk::port::{self, PortConf, PortInfo};
use natt_dpdk::ring::Ring;
use natt_dpdk::{eal, mbuf};
use natt_sadb::Reader;
use natt_sadb::dp::DpSegment;
use natt_sadb::layout::DpLayout;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize};

/// What a port is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Public = 0,
    Protected = 1,
    Punt = 2,
    ProtectedPunt = 3,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Public, Role::Protected, Role::Punt, Role::ProtectedPunt];

    pub const fn name(self) -> &'static str {
        match self {
            Role::Public => "public",
            Role::Protected => "protected",
            Role::Punt => "punt",
            Role::ProtectedPunt => "protected_punt",
        }
    }
}

/// A started port.
#[derive(Clone, Debug)]
pub struct PortSide {
    pub role: Role,
    pub info: PortInfo,
    /// Our MAC on the port (the source of frames we build).
    pub mac: [u8; 6],
    /// The next hop's MAC (the destination of frames we build).
    pub peer: [u8; 6],
    pub rxq: u16,
    pub txq: u16,
    /// The offloads the port was started with.
    pub rx_offloads: u64,
    pub tx_offloads: u64,
}

impl PortSide {
    /// The checksum offloads in use, for people: "rx ipv4, tx ipv4 udp" or "none".
    pub fn checksum_offloads(&self) -> String {
        let mut rx = Vec::new();
        let mut tx = Vec::new();
        if self.rx_offloads & port::RX_OFFLOAD_IPV4_CKSUM != 0 {
            rx.push("ipv4");
        }
        if self.tx_offloads & port::TX_OFFLOAD_IPV4_CKSUM != 0 {
            tx.push("ipv4");
        }
        if self.tx_offloads & port::TX_OFFLOAD_UDP_CKSUM != 0 {
            tx.push("udp");
        }
        match (rx.is_empty(), tx.is_empty()) {
            (true, true) => "none".into(),
            (false, true) => format!("rx {}", rx.join(" ")),
            (true, false) => format!("tx {}", tx.join(" ")),
            (false, false) => format!("rx {}, tx {}", rx.join(" "), tx.join(" ")),
        }
    }
}

/// Which queues a worker polls.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    pub lcore: u32,
    /// RX queues per role.
    pub rx: [Vec<u16>; 4],
}

/// Settings the workers need, taken from the command line.
#[derive(Clone, Debug)]
pub struct Config {
    pub burst: usize,
    /// Measure per-packet latency and per-stage cycles.
    pub detail: bool,
    pub drain_us: u64,
    pub natt_ports: Vec<u16>,
    pub engine: natt_engine::EngineConfig,
}

/// Ring kinds between workers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lane {
    /// From the public side, to be decapsulated.
    Inbound = 0,
    /// From the protected side or the host, to be encapsulated.
    Outbound = 1,
}

/// What every worker shares.
pub struct Shared {
    pub cfg: Config,
    pub ports: [Option<PortSide>; 4],
    pub plans: Vec<Plan>,
    pub owners: Owners,
    pub dispatch: &'static str,
    pub reader: Reader,
    pub dp: DpSegment,
    pub pool: Mempool,
    rings: Vec<Option<Ring>>,
    pub inboxes: Vec<ArrayQueue<NatUpdate>>,
    /// Between the SA builder and the workers.
    pub lanes: Lanes<<crate::crypto::Crypto as natt_engine::crypto::Backend>::Key>,
    /// Set by the SA builder once it has handed on all it can (its first scan, unless a
    /// lane is full): workers start polling then, with the SAs installed at start ready.
    pub builder_ready: AtomicBool,
    /// Set to stop: workers stop reading ports, drain what other workers hand them, and
    /// return.
    pub stop: AtomicBool,
    /// Per worker: it has stopped reading ports.
    pub rx_stopped: Vec<AtomicBool>,
    /// Workers that have returned.
    pub finished: AtomicUsize,
    pub clock: Clock,
    /// Per worker, written once at exit: the SAs it owned and their counters.
    pub reports: Mutex<Vec<Option<crate::report::WorkerReport>>>,
}

impl Shared {
    pub fn workers(&self) -> usize {
        self.plans.len()
    }

    pub fn port(&self, r: Role) -> Option<&PortSide> {
        self.ports[r as usize].as_ref()
    }

    /// The ring from worker `src` to worker `dst`.
    #[inline]
    pub fn ring(&self, lane: Lane, src: usize, dst: usize) -> Option<&Ring> {
        let w = self.workers();
        self.rings.get((lane as usize * w + src) * w + dst)?.as_ref()
    }
}

/// Start-up failed: the message says what to do.
#[derive(Debug)]
pub struct SetupError(pub String);

impl std::fmt::Display for SetupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn err<T>(msg: impl Into<String>) -> Result<T, SetupError> {
    Err(SetupError(msg.into()))
}

fn describe_ports() -> String {
    let n = port::count();
    if n == 0 {
        return "DPDK found no ports: bind a NIC to a DPDK driver (scripts/bind-nic.sh) and pass -a, or give --vdev"
            .into();
    }
    let list: Vec<String> = (0..n)
        .map(|p| port::info(p).map_or(format!("{p}: ?"), |i| format!("{p}: {} ({})", i.name, i.driver)))
        .collect();
    format!("DPDK found {n} port(s): {}", list.join(", "))
}

/// Build everything the workers share. `lcores` are the lcores that will run workers.
pub fn build(args: &Args, lcores: &[u32]) -> Result<Shared, SetupError> {
    let workers = lcores.len();
    if workers > DpLayout::standard().max_workers {
        return err(format!(
            "{workers} worker lcores: at most {} are supported; give fewer lcores with -l",
            DpLayout::standard().max_workers
        ));
    }

    // The SA table first: without it there is nothing to do.
    let reader = Reader::attach(&args.shm_dir, &args.name).map_err(|e| {
        SetupError(format!(
            "{e}\n  (start the control process first: natt-control --name {} --shm-dir {} run --config FILE)",
            args.name,
            args.shm_dir.display()
        ))
    })?;

    // Ports.
    let roles = [
        (Role::Public, Some(args.public)),
        (Role::Protected, Some(args.protected)),
        (Role::Punt, args.punt),
        (Role::ProtectedPunt, args.protected_punt),
    ];
    let mut infos: [Option<PortInfo>; 4] = Default::default();
    for (role, id) in roles {
        let Some(id) = id else { continue };
        match port::info(id) {
            Ok(i) => infos[role as usize] = Some(i),
            Err(_) => {
                return err(format!("--{} {id}: no such port. {}", role.name().replace('_', "-"), describe_ports()));
            }
        }
    }
    let public = infos[0].clone().expect("public");
    let socket = if public.socket >= 0 { public.socket } else { eal::lcore_socket(lcores[0]) as i32 };

    // Queues.
    let mut rxq = [0u16; 4];
    let mut txq = [0u16; 4];
    for (role, info) in Role::ALL.iter().zip(&infos) {
        let Some(info) = info else { continue };
        let r = *role as usize;
        let want_rx = match role {
            Role::Public | Role::Protected => args.rxq.unwrap_or(workers as u16),
            _ => workers as u16,
        };
        rxq[r] = want_rx.min(info.max_rx_queues).max(1);
        if args.rxq.is_some() && want_rx > info.max_rx_queues && matches!(role, Role::Public | Role::Protected) {
            return err(format!(
                "--rxq {want_rx}: port {} ({}) has at most {} RX queues",
                info.id, info.name, info.max_rx_queues
            ));
        }
        if info.max_tx_queues < workers as u16 {
            return err(format!(
                "port {} ({}, the {} port) has {} TX queue(s), and each of the {workers} workers needs its own: \
                 give the port more TX queues (net_pcap: one tx_pcap= per worker) or use fewer worker lcores",
                info.id,
                info.name,
                role.name(),
                info.max_tx_queues
            ));
        }
        txq[r] = workers as u16;
    }

    // Mbufs: every descriptor, every burst a worker holds, every ring entry, the caches.
    let descriptors: u32 =
        (0..4).map(|r| u32::from(rxq[r]) * u32::from(args.rxd) + u32::from(txq[r]) * u32::from(args.txd)).sum();
    let per_worker = (8 + 2 * workers as u32) * mbuf::BURST_MAX as u32;
    let rings = 2 * (workers * workers.saturating_sub(1)) as u32 * args.ring_size;
    let cache = 256u32;
    let need = descriptors + workers as u32 * per_worker + rings + (workers as u32 + 1) * cache + 1024;
    let n_mbufs = match args.mbufs {
        Some(n) if n < descriptors + workers as u32 * per_worker => {
            return err(format!(
                "--mbufs {n} is too few: RX and TX descriptors and bursts alone hold {}; use at least {need}, or lower --rxd/--txd",
                descriptors + workers as u32 * per_worker
            ));
        }
        Some(n) => n,
        None => need.max(8191),
    };
    let pool =
        Mempool::create("natt_mbufs", n_mbufs, cache, args.mbuf_size, socket).map_err(|e| SetupError(e.to_string()))?;

    let mut ports: [Option<PortSide>; 4] = Default::default();
    for role in Role::ALL {
        let Some(info) = infos[role as usize].clone() else { continue };
        let r = role as usize;
        // Checksum offloads where the port has them: the engine verifies IPv4 headers
        // received on both sides, and fills the outer headers sent by the public port.
        let (rx_offloads, tx_offloads) = match role {
            _ if args.checksum_offload == "off" => (0, 0),
            Role::Public => (
                info.rx_offloads & port::RX_OFFLOAD_IPV4_CKSUM,
                info.tx_offloads & (port::TX_OFFLOAD_IPV4_CKSUM | port::TX_OFFLOAD_UDP_CKSUM),
            ),
            Role::Protected => (info.rx_offloads & port::RX_OFFLOAD_IPV4_CKSUM, 0),
            Role::Punt | Role::ProtectedPunt => (0, 0),
        };
        let conf = PortConf {
            rx_queues: rxq[r],
            tx_queues: txq[r],
            rx_desc: args.rxd,
            tx_desc: args.txd,
            rss: role == Role::Public || role == Role::Protected,
            rx_offloads,
            tx_offloads,
            rss_key: Some(&RSS_KEY),
        };
        port::start(info.id, &conf, &pool).map_err(|e| {
            SetupError(format!(
                "{e} ({} port {}, driver {}): the port would not start",
                role.name(),
                info.name,
                info.driver
            ))
        })?;
        ports[r] = Some(PortSide {
            role,
            mac: info.mac,
            peer: args.peer_mac(info.id),
            info,
            rxq: rxq[r],
            txq: txq[r],
            rx_offloads,
            tx_offloads,
        });
    }
    // Kernel interfaces take the MAC of the port they stand beside, so the host sees the
    // frames we punt as addressed to itself and answers from the right address.
    for (punt, beside) in [(Role::Punt, Role::Public), (Role::ProtectedPunt, Role::Protected)] {
        let mac = ports[beside as usize].as_ref().map(|p| p.mac).expect("started");
        if let Some(p) = ports[punt as usize].as_mut() {
            match port::set_mac(p.info.id, &mac) {
                Ok(()) => p.mac = mac,
                Err(e) => {
                    use std::io::Write as _;
                    let _ = writeln!(
                        std::io::stderr(),
                        "natt-dataplane: warning: {e}; the kernel interface keeps its own MAC"
                    );
                }
            }
            p.peer = p.mac;
        }
    }

    // Dispatch.
    let public_rxq = rxq[Role::Public as usize];
    let dispatch = match args.dispatch.as_str() {
        _ if workers == 1 => "single worker",
        "software" => "software",
        mode => match port::flow_esp_rss(public.id, public_rxq, &RSS_KEY) {
            Ok(()) if public_rxq as usize == workers => "rte_flow RSS on the ESP SPI",
            Ok(()) => "rte_flow RSS on the ESP SPI, with software handoff",
            Err(e) if mode == "flow" => {
                return err(format!("--dispatch flow: {e}; use --dispatch software (or auto) on this port"));
            }
            Err(_) => "software",
        },
    };
    let reta = match port::reta_size(public.id) {
        0 => DEFAULT_RETA,
        n => u32::from(n),
    };
    let owners = Owners::with_reta(workers, reta);

    // Queue plan: queue q of a port is polled by worker q % workers; every worker has TX
    // queue = its index on every port, and its own queue on the kernel interfaces.
    let mut plans: Vec<Plan> = lcores.iter().map(|&l| Plan { lcore: l, ..Default::default() }).collect();
    for role in Role::ALL {
        let r = role as usize;
        for q in 0..rxq[r] {
            plans[usize::from(q) % workers].rx[r].push(q);
        }
    }

    // The dataplane segment: events, reservations, counters.
    let dp = DpSegment::open_or_create(&args.shm_dir, &args.name, DpLayout::standard(), reader.db().created_ns())
        .map_err(|e| SetupError(e.to_string()))?;

    let mut ring_list = Vec::with_capacity(2 * workers * workers);
    for lane in ["in", "out"] {
        for s in 0..workers {
            for d in 0..workers {
                ring_list.push(if s == d {
                    None
                } else {
                    Some(
                        Ring::create(&format!("natt_{lane}_{s}_{d}"), args.ring_size, socket)
                            .map_err(|e| SetupError(e.to_string()))?,
                    )
                });
            }
        }
    }

    let public_tx = ports[Role::Public as usize].as_ref().map_or(0, |p| p.tx_offloads);
    let mut engine = natt_engine::EngineConfig {
        mtu: args.mtu,
        tx_checksum: natt_engine::TxChecksumOffload {
            ipv4_header: public_tx & port::TX_OFFLOAD_IPV4_CKSUM != 0,
            udp: public_tx & port::TX_OFFLOAD_UDP_CKSUM != 0,
        },
        // Checked with the arguments.
        icmp: natt_engine::IcmpConfig::from_options("--icmp-source", &args.icmp_source, args.icmp_rate)
            .map_err(SetupError)?,
        mss_clamp: args.tcp_mss,
        ..Default::default()
    };
    engine.reassembly.slots = args.reassembly_slots;
    engine.reassembly.timeout_ns = (args.reassembly_timeout * 1e9) as u64;
    // Deep enough towards the workers that the builder can prepare a whole table of up to
    // a million SAs before they start (16 bytes a place), the rest as they run.
    let ready_depth = (reader.db().capacity() as usize).clamp(LANE_DEPTH, 1 << 20);
    Ok(Shared {
        cfg: Config {
            burst: usize::from(args.burst),
            detail: args.stats_detail == "on",
            drain_us: args.drain_us,
            natt_ports: args.natt_ports.clone(),
            engine,
        },
        ports,
        owners,
        dispatch,
        reader,
        dp,
        pool,
        rings: ring_list,
        inboxes: (0..workers).map(|_| ArrayQueue::new(1024)).collect(),
        lanes: Lanes::with_depths(workers, ready_depth, LANE_DEPTH),
        builder_ready: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        rx_stopped: (0..workers).map(|_| AtomicBool::new(false)).collect(),
        finished: AtomicUsize::new(0),
        clock: Clock::new(eal::rdtsc(), eal::tsc_hz()),
        reports: Mutex::new((0..workers).map(|_| None).collect()),
        plans,
    })
}

/// SA states in flight between the builder and one worker: at least this many towards
/// it, this many back.
const LANE_DEPTH: usize = 4096;

/// Stop and close every port (net_pcap flushes its files).
pub fn close_ports(sh: &Shared) {
    for p in sh.ports.iter().flatten() {
        port::close(p.info.id);
    }
}
