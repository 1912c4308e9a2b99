//! The command line: DPDK's EAL arguments first, then `--`, then ours, in testpmd's
//! spirit. Ours are parsed (and refused with a clear message) before the EAL starts.

use clap::Parser;
use std::path::PathBuf;

pub const ABOUT: &str = "natt-dataplane: the DPDK poll-mode dataplane of the natt NAT-T IPsec headend.

EAL options are DPDK's own, for example:
  -l 0-2                 lcores: the first is the main lcore, the others run workers
                         (with one lcore, it runs the only worker itself)
  --lcores '0@0,1@0,2@1' lcores mapped onto CPUs
  -a 0000:3b:00.0        use this PCI device (repeat for more)
  --vdev net_pcap0,rx_pcap=in.pcap,tx_pcap=out.pcap   a virtual port
  --in-memory / --file-prefix NAME   run beside other DPDK processes
  --no-huge -m 512       run without hugepages
See `dpdk-testpmd --help` or the DPDK documentation for all of them.";

/// Our options (after `--`).
#[derive(Parser, Debug, Clone)]
#[command(
    name = "natt-dataplane",
    version,
    about = ABOUT,
    override_usage = "natt-dataplane [EAL options] -- [options]",
    disable_help_flag = true
)]
pub struct Args {
    /// Print this help.
    #[arg(short = 'h', long, action = clap::ArgAction::Help)]
    pub help: Option<bool>,

    /// Port that faces the NAT-T side (remote users, ESP in UDP/4500).
    #[arg(long, default_value_t = 0, value_name = "PORT")]
    pub public: u16,
    /// Port that faces the protected network.
    #[arg(long, default_value_t = 1, value_name = "PORT")]
    pub protected: u16,
    /// Kernel interface (net_tap or virtio-user port) for IKE and other traffic addressed to
    /// the headend on the public side; what the kernel sends into it leaves by the public
    /// port. It is given the public port's MAC address. Without it such traffic is dropped
    /// under no_punt_port.
    #[arg(long, value_name = "PORT")]
    pub punt: Option<u16>,
    /// Kernel interface for non-IP and host traffic on the protected side (ARP for the
    /// headend's inside address, management); what the kernel sends into it is encrypted
    /// if an SA covers its destination, else leaves by the protected port.
    #[arg(long, value_name = "PORT")]
    pub protected_punt: Option<u16>,

    /// RX queues per port (default: one per worker, as many as the port has). Queue q is
    /// polled by worker q % workers.
    #[arg(long, value_name = "N")]
    pub rxq: Option<u16>,
    /// RX descriptors per queue.
    #[arg(long, default_value_t = 1024, value_name = "N")]
    pub rxd: u16,
    /// TX descriptors per queue (every worker has its own TX queue on every port).
    #[arg(long, default_value_t = 1024, value_name = "N")]
    pub txd: u16,
    /// Packets per RX burst (1 to 64).
    #[arg(long, default_value_t = 32, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=64))]
    pub burst: u16,
    /// Mbufs in the pool (default: enough for every descriptor, ring and burst).
    #[arg(long, alias = "total-num-mbufs", value_name = "N")]
    pub mbufs: Option<u32>,
    /// Bytes of data room per mbuf, headroom included.
    #[arg(long, default_value_t = 2176, value_name = "BYTES")]
    pub mbuf_size: u16,
    /// Entries of each ring between two workers (a power of two).
    #[arg(long, default_value_t = 1024, value_name = "N")]
    pub ring_size: u32,

    /// How packets reach the worker that owns their SA: `flow` asks the public port for
    /// rte_flow RSS on the ESP SPI (and fails if it cannot), `software` hashes the SPI on
    /// whichever worker receives the packet and hands it over, `auto` tries flow first.
    /// Software dispatch always checks, so a NIC that spreads differently costs handoffs,
    /// never correctness.
    #[arg(long, default_value = "auto", value_parser = ["auto", "flow", "software"])]
    pub dispatch: String,

    /// Name of the shared-memory segments written by natt-control (SHM_DIR/NAME.sadb) and
    /// by us (NAME.dp).
    #[arg(long, default_value = "natt")]
    pub name: String,
    /// Where the segments live.
    #[arg(long, default_value = natt_sadb::map::SHM_DIR, value_name = "DIR")]
    pub shm_dir: PathBuf,

    /// Destination MAC for frames sent on PORT: the next hop (default
    /// 02:00:00:00:00:PORT, as testpmd). Repeat for each port.
    #[arg(long = "eth-peer", value_name = "PORT,MAC", value_parser = parse_eth_peer)]
    pub eth_peer: Vec<(u16, [u8; 6])>,
    /// Another UDP port that carries ESP in UDP besides 4500 (an SA's local_port).
    #[arg(long = "natt-port", value_name = "PORT")]
    pub natt_ports: Vec<u16>,
    /// Crypto library for AES-GCM and AES-GMAC SAs: `ipsec-mb` is intel-ipsec-mb (the
    /// library of DPDK's aesni_gcm and aesni_mb drivers, called directly on the worker),
    /// `ring` is ring; `auto` takes intel-ipsec-mb where it starts (a CPU with AES-NI),
    /// else ring. ChaCha20-Poly1305 SAs always use ring.
    #[arg(long, default_value = "auto", value_parser = natt_ipsec_mb::CRYPTO_VALUES)]
    pub crypto: String,
    /// Checksum offloads: `auto` uses what each port has (RX: the IPv4 header checksum
    /// verified by the public and protected ports; TX: the outer IPv4 header checksum and,
    /// over IPv6, the UDP checksum of encapsulated packets filled by the public port);
    /// `off` computes every checksum in software.
    #[arg(long, default_value = "auto", value_parser = ["auto", "off"])]
    pub checksum_offload: String,
    /// Largest outer IP packet sent on the public port.
    #[arg(long, default_value_t = 1500, value_name = "BYTES")]
    pub mtu: usize,
    /// Source of the ICMP errors sent to the protected side about packets too big for the
    /// tunnel (Fragmentation Needed, Packet Too Big) or out of TTL (Time Exceeded): an
    /// address of the headend there; repeat for an IPv4 and an IPv6 one. Default: the
    /// SA's own address where it is of the packet's family.
    #[arg(long = "icmp-source", value_name = "ADDR")]
    pub icmp_source: Vec<std::net::IpAddr>,
    /// ICMP errors per second per worker at most (0: none, the packets are dropped as
    /// mtu_exceeded or ttl_exceeded).
    #[arg(long, default_value_t = 1000, value_name = "N")]
    pub icmp_rate: u32,
    /// TCP MSS clamping of SYNs crossing the tunnel: `auto` lowers an MSS option to what
    /// fits the tunnel (from --mtu and the SA's outer headers), a number to at most that
    /// many bytes, `off` leaves SYNs alone.
    #[arg(long = "tcp-mss", default_value = "auto", value_name = "auto|off|BYTES")]
    pub tcp_mss: natt_engine::MssClamp,
    /// Datagrams in reassembly at once per worker (0: drop fragments).
    #[arg(long, default_value_t = 256, value_name = "N")]
    pub reassembly_slots: usize,
    /// Seconds an incomplete datagram is kept.
    #[arg(long, default_value_t = 3.0, value_name = "SECONDS")]
    pub reassembly_timeout: f64,

    /// Flush partly filled TX bursts after this many microseconds.
    #[arg(long, default_value_t = 100, value_name = "US")]
    pub drain_us: u64,
    /// Print statistics every SECONDS (0: only at exit).
    #[arg(long, default_value_t = 0.0, value_name = "SECONDS")]
    pub stats_period: f64,
    /// Measure each packet's RX-to-TX latency (per-worker histograms) and the cycles of
    /// each processing stage. Counters are always kept.
    #[arg(long, default_value = "on", value_parser = ["on", "off"])]
    pub stats_detail: String,
    /// Also write the final statistics as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub stats_json: Option<PathBuf>,
    /// Stop after SECONDS.
    #[arg(long, value_name = "SECONDS")]
    pub duration: Option<f64>,
    /// Stop once no port has received anything for MS milliseconds after the first packet
    /// (for replaying captures).
    #[arg(long, value_name = "MS")]
    pub idle_exit: Option<u64>,
}

fn parse_eth_peer(s: &str) -> Result<(u16, [u8; 6]), String> {
    let (p, m) = s.split_once(',').ok_or_else(|| format!("\"{s}\": expected PORT,MAC such as 1,02:00:00:00:00:01"))?;
    let port = p.trim().parse::<u16>().map_err(|_| format!("\"{p}\" is not a port number"))?;
    Ok((port, parse_mac(m)?))
}

pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let parts: Vec<&str> = s.trim().split(':').collect();
    if parts.len() != 6 {
        return Err(format!("\"{s}\" is not a MAC address (six hex bytes separated by colons)"));
    }
    let mut mac = [0u8; 6];
    for (o, p) in mac.iter_mut().zip(&parts) {
        *o = u8::from_str_radix(p, 16).map_err(|_| format!("\"{s}\" is not a MAC address"))?;
    }
    Ok(mac)
}

/// Split the command line at the first `--`: EAL arguments (with the program name
/// first), and ours.
pub fn split(argv: &[String]) -> (Vec<String>, Vec<String>) {
    match argv.iter().position(|a| a == "--") {
        Some(i) => (argv[..i].to_vec(), argv[i + 1..].to_vec()),
        None => (argv.to_vec(), Vec::new()),
    }
}

/// Did the user ask for help anywhere? (EAL's own --help would print only EAL's.)
pub fn wants_help(argv: &[String]) -> bool {
    argv.iter().skip(1).any(|a| a == "--help" || a == "-h")
}

impl Args {
    pub fn parse_ours(prog: &str, ours: &[String]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once(prog.to_owned()).chain(ours.iter().cloned()))
    }

    /// Checks clap cannot express.
    pub fn check(&self) -> Result<(), String> {
        if !self.ring_size.is_power_of_two() || self.ring_size < 64 {
            return Err(format!("--ring-size {}: use a power of two of at least 64", self.ring_size));
        }
        if self.public == self.protected {
            return Err(format!("--public and --protected are both port {}: give two ports", self.public));
        }
        for (name, p) in [("--punt", self.punt), ("--protected-punt", self.protected_punt)] {
            if let Some(p) = p {
                if p == self.public || p == self.protected {
                    return Err(format!("{name} {p} is also the public or protected port: give a port of its own"));
                }
            }
        }
        if self.punt.is_some() && self.punt == self.protected_punt {
            return Err("--punt and --protected-punt are the same port: give each its own kernel interface".into());
        }
        if !(576..=9000).contains(&self.mtu) {
            return Err(format!("--mtu {}: use 576 to 9000", self.mtu));
        }
        natt_engine::IcmpConfig::from_options("--icmp-source", &self.icmp_source, self.icmp_rate)?;
        if !(self.reassembly_timeout > 0.0 && self.reassembly_timeout <= 60.0) {
            return Err(format!(
                "--reassembly-timeout {}: use more than 0 and at most 60 seconds",
                self.reassembly_timeout
            ));
        }
        if self.stats_period < 0.0 || !self.stats_period.is_finite() {
            return Err("--stats-period: use 0 or a number of seconds".into());
        }
        if usize::from(self.mbuf_size) < 1024 + 128 {
            return Err(format!(
                "--mbuf-size {}: use at least 1152 (128 bytes of headroom and a frame)",
                self.mbuf_size
            ));
        }
        if self.natt_ports.contains(&0) || self.natt_ports.contains(&500) {
            return Err("--natt-port: 0 and 500 (IKE) cannot carry ESP in UDP".into());
        }
        Ok(())
    }

    /// The destination MAC for frames sent on `port`.
    pub fn peer_mac(&self, port: u16) -> [u8; 6] {
        self.eth_peer.iter().rev().find(|(p, _)| *p == port).map_or([0x02, 0, 0, 0, 0, port as u8], |(_, m)| *m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn splits_at_the_first_double_dash() {
        let (eal, ours) = split(&v(&["prog", "-l", "0-1", "--", "--public", "1", "--", "x"]));
        assert_eq!(eal, v(&["prog", "-l", "0-1"]));
        assert_eq!(ours, v(&["--public", "1", "--", "x"]));
        let (eal, ours) = split(&v(&["prog", "--no-huge"]));
        assert_eq!(eal, v(&["prog", "--no-huge"]));
        assert!(ours.is_empty());
    }

    #[test]
    fn parses_and_checks() {
        let a = Args::parse_ours("p", &v(&["--eth-peer", "1,aa:bb:cc:dd:ee:ff", "--burst", "64"])).unwrap();
        assert_eq!(a.peer_mac(1), [0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff]);
        assert_eq!(a.peer_mac(0), [2, 0, 0, 0, 0, 0]);
        assert_eq!(a.burst, 64);
        a.check().unwrap();
        assert!(Args::parse_ours("p", &v(&["--burst", "65"])).is_err());
        let e = Args::parse_ours("p", &v(&["--eth-peer", "1,zz"])).unwrap_err().to_string();
        assert!(e.contains("not a MAC address"), "{e}");
        let a = Args::parse_ours("p", &v(&["--public", "1"])).unwrap();
        assert!(a.check().unwrap_err().contains("both port 1"));
        let a = Args::parse_ours("p", &v(&["--punt", "0"])).unwrap();
        assert!(a.check().unwrap_err().contains("--punt 0 is also"));
        let a = Args::parse_ours("p", &v(&["--ring-size", "100"])).unwrap();
        assert!(a.check().unwrap_err().contains("power of two"));
        let e = Args::parse_ours("p", &v(&["--dispatch", "magic"])).unwrap_err().to_string();
        assert!(e.contains("possible values"), "{e}");
        let a = Args::parse_ours("p", &v(&["--icmp-source", "192.0.2.1", "--icmp-source", "fd00::1"])).unwrap();
        a.check().unwrap();
        let a = Args::parse_ours("p", &v(&["--icmp-source", "192.0.2.1", "--icmp-source", "192.0.2.2"])).unwrap();
        assert!(a.check().unwrap_err().contains("--icmp-source 192.0.2.2: one address per family"));
        let e = Args::parse_ours("p", &v(&["--icmp-source", "inside"])).unwrap_err().to_string();
        assert!(e.contains("invalid IP address syntax"), "{e}");
        let a = Args::parse_ours("p", &v(&["--tcp-mss", "1360"])).unwrap();
        assert_eq!(a.tcp_mss, natt_engine::MssClamp::Fixed(1360));
        let e = Args::parse_ours("p", &v(&["--tcp-mss", "40"])).unwrap_err().to_string();
        assert!(e.contains("use auto, off, or an MSS in bytes of at least 536"), "{e}");
    }
}
