//! natt-pcap: run the headend's ESP engine over a capture.
//!
//! `decap` decrypts ESP-in-UDP (and plain ESP) from the public side, `encap` encrypts
//! plaintext from the protected side. Every input packet gives one JSON line on stdout
//! (its verdict, SA, NAT endpoint, events); processed packets go to the output pcap; a
//! summary of counters goes to stderr at the end. A configuration error stops the tool
//! before it reads a packet.

mod capture;
mod report;

use capture::{CaptureReader, CaptureWriter};
use clap::{Args, Parser, Subcommand};
use natt_engine::reassembly::ReassemblyConfig;
use natt_engine::sa::config::parse_config;
use natt_engine::{Engine, EngineConfig, Frame, InResult, OutResult, PktBuf};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "natt-pcap",
    version,
    about = "Decrypt or encrypt a capture with the NAT-T ESP engine, one JSON line per packet"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Decrypt ESP-in-UDP (RFC 3948) and plain ESP arriving at the headend.
    Decap(Run),
    /// Encrypt plaintext leaving the protected network.
    Encap(Run),
    /// Validate an SA configuration file and list its SAs (keys are never shown).
    Check {
        /// SA configuration (JSON; see the README).
        #[arg(short, long = "config", value_name = "FILE")]
        config: PathBuf,
    },
}

#[derive(Args)]
struct Run {
    /// SA configuration (JSON; see the README).
    #[arg(short, long = "config", value_name = "FILE")]
    config: PathBuf,
    /// Capture to read (pcap or pcapng; Ethernet, raw IP or Linux cooked).
    #[arg(short = 'r', long = "read", value_name = "PCAP")]
    input: PathBuf,
    /// Where to write the processed packets (pcap, Ethernet).
    #[arg(short = 'w', long = "write", value_name = "PCAP")]
    output: Option<PathBuf>,
    /// Largest outer IP packet to send, in bytes.
    #[arg(long, default_value_t = 1500, value_parser = clap::value_parser!(u16).range(576..))]
    mtu: u16,
    /// Source of the ICMP errors about packets too big for the tunnel or out of TTL (an
    /// address of the headend on the protected side; give an IPv4 and an IPv6 one for both
    /// families).
    /// Default: the SA's own address, where it is of the packet's family.
    #[arg(long = "icmp-source", value_name = "ADDR")]
    icmp_source: Vec<std::net::IpAddr>,
    /// ICMP errors per second at most, in capture time (0: none; the packets are dropped).
    #[arg(long, default_value_t = 1000)]
    icmp_rate: u32,
    /// TCP MSS clamping of SYNs crossing the tunnel, as natt-dataplane's option: `auto`,
    /// `off`, or at most this many bytes.
    #[arg(long = "tcp-mss", default_value = "auto", value_name = "auto|off|BYTES")]
    tcp_mss: natt_engine::MssClamp,
    /// Datagrams that may be in reassembly at once (0 drops all fragments).
    #[arg(long, default_value_t = 256)]
    reassembly_slots: usize,
    /// Largest reassembled datagram, in bytes.
    #[arg(long, default_value_t = 9216, value_parser = clap::value_parser!(u32).range(576..=65535))]
    reassembly_max: u32,
    /// Datagrams in reassembly per source address.
    #[arg(long, default_value_t = 16)]
    reassembly_per_source: usize,
    /// Time allowed for a datagram's fragments to arrive, in milliseconds (capture time).
    #[arg(long, default_value_t = 3000)]
    reassembly_timeout_ms: u64,
    /// Do not print the per-packet JSON lines.
    #[arg(short, long)]
    quiet: bool,
    /// Crypto library for AES-GCM and GMAC SAs, as natt-dataplane's option: `ipsec-mb`
    /// (intel-ipsec-mb), `ring`, or `auto` (intel-ipsec-mb where it starts).
    #[arg(long, default_value = "auto", value_parser = natt_ipsec_mb::CRYPTO_VALUES)]
    crypto: String,
}

/// The engine over the crypto library chosen with `--crypto`.
pub type Eng = Engine<natt_ipsec_mb::Auto>;

const HEADROOM: usize = 128;
const TAILROOM: usize = 128;

/// How a run ended besides success: an error before any packet (configuration, files:
/// status 2, nothing written), or a capture that went bad part way (status 1, after the
/// packets before the bad record were processed, written and summarised).
enum Failure {
    Usage(String),
    Capture(String),
}

impl From<String> for Failure {
    fn from(e: String) -> Self {
        Failure::Usage(e)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(e)) => {
            eprintln!("natt-pcap: {e}");
            ExitCode::from(2)
        }
        Err(Failure::Capture(e)) => {
            eprintln!("natt-pcap: {e}");
            ExitCode::from(1)
        }
    }
}

fn load_engine(path: &std::path::Path, cfg: EngineConfig) -> Result<Eng, String> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| format!("{name}: {e}"))?;
    let sas = parse_config(&text, Some(&name)).map_err(|e| e.to_string())?;
    Engine::with_sas(cfg, sas).map_err(|e| format!("{name}: {e}"))
}

fn run(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Check { config } => {
            let engine = load_engine(&config, EngineConfig::default())?;
            let out = std::io::stdout();
            let mut out = out.lock();
            for e in engine.sas().iter() {
                writeln!(out, "{}", natt_engine::sa::config::public_json(&e.params)).map_err(|e| e.to_string())?;
            }
            Ok(())
        }
        Command::Decap(r) => process(r, true),
        Command::Encap(r) => process(r, false),
    }
}

fn process(r: Run, decap: bool) -> Result<(), Failure> {
    let cfg = EngineConfig {
        reassembly: ReassemblyConfig {
            slots: r.reassembly_slots,
            max_datagram: r.reassembly_max as usize,
            per_source: r.reassembly_per_source,
            timeout_ns: r.reassembly_timeout_ms.saturating_mul(1_000_000),
        },
        mtu: usize::from(r.mtu),
        icmp: natt_engine::IcmpConfig::from_options("--icmp-source", &r.icmp_source, r.icmp_rate)
            .map_err(Failure::Usage)?,
        mss_clamp: r.tcp_mss,
        ..EngineConfig::default()
    };
    // Before any key is made.
    natt_ipsec_mb::select_named(&r.crypto)?;
    // Everything that can be wrong with the configuration is found before any packet.
    let mut engine = load_engine(&r.config, cfg)?;
    let mut reader = CaptureReader::open(&r.input).map_err(|e| e.to_string())?;
    let mut writer = match &r.output {
        Some(p) => Some(CaptureWriter::create(p).map_err(|e| e.to_string())?),
        None => None,
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut index = 0u64;
    let mut start = None;
    let mut events = Vec::new();
    // One buffer, big enough for a reassembled datagram behind any frame.
    let mut storage = vec![0u8; HEADROOM + r.reassembly_max as usize + 64 + TAILROOM];
    let mut bad_record = None;
    while let Some(frame) = reader.next_frame() {
        let frame = match frame {
            Ok(f) => f,
            Err(e) => {
                // What came before is good: finish it (output, summary), then say.
                bad_record = Some(e.to_string());
                break;
            }
        };
        index += 1;
        let t0 = *start.get_or_insert(frame.timestamp);
        let now = frame.timestamp.saturating_sub(t0).as_nanos() as u64;
        let need = HEADROOM + frame.data.len() + TAILROOM.max(r.reassembly_max as usize + 64);
        if storage.len() < need {
            storage.resize(need, 0);
        }
        storage[HEADROOM..HEADROOM + frame.data.len()].copy_from_slice(&frame.data);
        let mut pkts = [PktBuf::new(&mut storage[..], HEADROOM, frame.data.len()).expect("sized above")];
        events.clear();
        let (line, produced) = if decap {
            let mut res = [InResult::default()];
            engine.decap_burst(&mut pkts, now, &mut res, &mut events);
            let ok = matches!(res[0].verdict, natt_engine::InVerdict::Tunnel | natt_engine::InVerdict::Transport);
            (report::decap_line(index, frame.timestamp, frame.data.len(), &res[0], &pkts[0], &engine, &events), ok)
        } else {
            let mut res = [OutResult::default()];
            engine.tick(now);
            engine.encap_burst(&mut pkts, &mut res, &mut events);
            use natt_engine::OutVerdict::{Encapsulated, IcmpTooBig, IcmpTtlExceeded};
            let ok = matches!(res[0].verdict, Encapsulated | IcmpTooBig | IcmpTtlExceeded);
            (report::encap_line(index, frame.timestamp, frame.data.len(), &res[0], &pkts[0], &engine, &events), ok)
        };
        if produced {
            if let Some(w) = writer.as_mut() {
                w.write(frame.timestamp, pkts[0].data()).map_err(|e| format!("writing output: {e}"))?;
            }
        }
        if !r.quiet {
            writeln!(out, "{line}").map_err(|e| e.to_string())?;
        }
    }
    out.flush().map_err(|e| e.to_string())?;
    if let Some(w) = writer {
        w.finish().map_err(|e| format!("writing output: {e}"))?;
    }
    eprintln!("{}", report::summary(&engine, index));
    bad_record.map_or(Ok(()), |e| Err(Failure::Capture(e)))
}
