//! natt-control: owns the headend's SA configuration. It validates configuration, writes
//! the shared SA table the dataplane reads, logs and streams the dataplane's events, and
//! answers for what is installed. `run` is the daemon; the other commands talk to it, or
//! act on the table themselves when no daemon runs.

mod daemon;
mod events;
mod http;
mod ops;
mod request;
mod stats;

use clap::{Parser, Subcommand};
use natt_sadb::{Reader, Writer};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "natt-control", version, about = "Control process of the natt NAT-T IPsec headend")]
struct Cli {
    /// Name of the shared-memory segments: SHM_DIR/NAME.sadb (SA table) and NAME.dp.
    #[arg(long, global = true, default_value = "natt")]
    name: String,
    /// Where the shared-memory segments live.
    #[arg(long, global = true, default_value = natt_sadb::map::SHM_DIR)]
    shm_dir: PathBuf,
    /// Where the daemon's socket and the event log live.
    #[arg(long, global = true, default_value = "/run/natt")]
    state_dir: PathBuf,
    /// Print results as JSON, for scripts.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the SA table.
    Init {
        /// Most SAs the table holds (inbound and outbound together).
        #[arg(long, default_value_t = 65536)]
        capacity: usize,
    },
    /// Run as the daemon: serve the other commands, end grace periods, release records
    /// the dataplane is done with, compact tables, log dataplane events.
    Run {
        /// Apply this configuration at start.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Table size if the table has to be created.
        #[arg(long, default_value_t = 65536)]
        capacity: usize,
        /// Grace period for inbound SAs the start-up configuration removes, in seconds.
        #[arg(long, default_value = "10", value_parser = seconds)]
        grace: Duration,
        /// How often to keep house, in milliseconds.
        #[arg(long, default_value_t = 10)]
        tick_ms: u64,
        /// Log events to the file only, not to stdout.
        #[arg(long)]
        quiet: bool,
        /// Serve statistics over HTTP on this address (GET /stats, /stats/sa/<spi>,
        /// /metrics); "off" to not serve them.
        #[arg(long, default_value = "127.0.0.1:9180", value_name = "ADDR")]
        http: String,
    },
    /// Make the installed SAs exactly those of FILE: add, replace, remove (inbound SAs
    /// after the grace period). All at once, or nothing.
    Apply {
        file: PathBuf,
        /// Keep removed inbound SAs this many seconds for packets in flight.
        #[arg(long, default_value = "10", value_parser = seconds)]
        grace: Duration,
        /// Show what would change, change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Table size if the table has to be created.
        #[arg(long, default_value_t = 65536)]
        capacity: usize,
    },
    /// Add the SAs of FILE (none may be installed already).
    Add { file: PathBuf },
    /// Remove an SA.
    Del {
        /// The SA's SPI (0x… or decimal).
        spi: String,
        /// in or out, if the SPI is installed in both directions.
        #[arg(long)]
        direction: Option<String>,
        /// Keep it this many seconds before removing it.
        #[arg(long, default_value = "0", value_parser = seconds)]
        grace: Duration,
    },
    /// Make before break: add the new inbound SA of FILE beside the old one, switch
    /// outbound traffic to FILE's outbound SA atomically, remove the old inbound SA
    /// after the grace period.
    Rekey {
        /// SPI of the inbound SA being replaced.
        #[arg(long = "in", value_name = "SPI")]
        old_in: String,
        /// SPI of the outbound SA being replaced.
        #[arg(long = "out", value_name = "SPI")]
        old_out: String,
        /// The new inbound and outbound SA.
        file: PathBuf,
        #[arg(long, default_value = "10", value_parser = seconds)]
        grace: Duration,
    },
    /// List the installed SAs (keys are never shown).
    List,
    /// Show one SA.
    Show {
        spi: String,
        #[arg(long)]
        direction: Option<String>,
    },
    /// Print the dataplane's statistics (the same as GET /stats): ports, counters, drops by
    /// reason, latency; with --watch, every second with rates as testpmd shows them.
    Stats {
        /// Keep printing, every --interval seconds, with per-second rates.
        #[arg(short, long)]
        watch: bool,
        #[arg(long, default_value = "1", value_parser = seconds)]
        interval: Duration,
        /// One SA instead (0x… or decimal): its configuration and the counters of the
        /// worker that owns it (the same as GET /stats/sa/SPI).
        #[arg(long, value_name = "SPI")]
        sa: Option<String>,
        #[arg(long)]
        direction: Option<String>,
        /// Prometheus text instead (the same as GET /metrics).
        #[arg(long)]
        prometheus: bool,
    },
    /// Print dataplane events from the log (NAT mapping changes, lifetimes, expiry).
    Events {
        /// Keep printing new events as they come.
        #[arg(short, long)]
        follow: bool,
    },
}

fn seconds(s: &str) -> Result<Duration, String> {
    let v: f64 = s.parse().map_err(|_| format!("\"{s}\" is not a number of seconds"))?;
    if !(0.0..=86_400.0 * 365.0).contains(&v) {
        return Err(format!("{s} seconds is out of range"));
    }
    Ok(Duration::from_secs_f64(v))
}

/// An error and whether it is the operator's (exit 2) or the system's (exit 1).
struct Failure {
    message: String,
    usage: bool,
}

impl Failure {
    fn usage(m: impl Into<String>) -> Self {
        Failure { message: m.into(), usage: true }
    }
    fn system(m: impl Into<String>) -> Self {
        Failure { message: m.into(), usage: false }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("natt-control: {}", f.message);
            ExitCode::from(if f.usage { 2 } else { 1 })
        }
    }
}

fn state_dir(cli: &Cli) -> Result<&Path, Failure> {
    std::fs::create_dir_all(&cli.state_dir)
        .map_err(|e| Failure::system(format!("{}: {e}", cli.state_dir.display())))?;
    Ok(&cli.state_dir)
}

fn socket_of(cli: &Cli) -> PathBuf {
    cli.state_dir.join(format!("{}.sock", cli.name))
}

fn event_log_of(cli: &Cli) -> PathBuf {
    cli.state_dir.join(format!("{}.events.jsonl", cli.name))
}

fn read_file(path: &Path) -> Result<(String, String), Failure> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| Failure::usage(format!("{name}: {e}")))?;
    // Validate here too, so errors never depend on where the request runs.
    let sas = natt_engine::sa::config::parse_config(&text, Some(&name)).map_err(|e| Failure::usage(e.to_string()))?;
    ops::check_fits(&sas, Some(&name)).map_err(|e| Failure::usage(e.to_string()))?;
    Ok((name, text))
}

fn open_writer(cli: &Cli, capacity: usize) -> Result<Writer, Failure> {
    Writer::open_or_create(&cli.shm_dir, &cli.name, capacity).map_err(|e| Failure::system(e.to_string()))
}

/// Run a request on the daemon if one runs, else here.
fn request(cli: &Cli, req: Value, capacity: usize) -> Result<Value, Failure> {
    if let Some(r) = daemon::ask(&socket_of(cli), &req) {
        return r.map_err(|(message, usage)| Failure { message, usage });
    }
    let mut w = open_writer(cli, capacity)?;
    let out = request::handle(&mut w, &req).map_err(|e| {
        let usage = matches!(e, ops::OpError::Usage(_) | ops::OpError::Config(_));
        Failure { message: e.to_string(), usage }
    })?;
    // Keep house on the way out: end grace periods, release records.
    let readers = match natt_sadb::dp::DpSegment::attach(&cli.shm_dir, &cli.name).ok().and_then(|d| d.min_seen()) {
        Some(g) => natt_sadb::Readers::MinSeen(g),
        None => natt_sadb::Readers::None,
    };
    w.housekeeping(now_ns(), readers);
    Ok(out)
}

fn now_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

fn run(cli: Cli) -> Result<(), Failure> {
    let ns = |d: &Duration| d.as_nanos() as u64;
    match &cli.command {
        Command::Init { capacity } => {
            let w = Writer::create(&cli.shm_dir, &cli.name, *capacity).map_err(|e| Failure::system(e.to_string()))?;
            let l = w.db().layout();
            print_result(
                &cli,
                &json!({"path": w.db().path().display().to_string(), "capacity": l.capacity, "bytes": l.total}),
                |v| {
                    format!(
                        "created {} for {} SAs ({} MiB)",
                        v["path"].as_str().unwrap_or(""),
                        v["capacity"],
                        v["bytes"].as_u64().unwrap_or(0) >> 20
                    )
                },
            );
            Ok(())
        }
        Command::Run { config, capacity, grace, tick_ms, quiet, http } => {
            state_dir(&cli)?;
            if http != "off" {
                let h = http::serve(http, cli.shm_dir.clone(), cli.name.clone()).map_err(Failure::usage)?;
                eprintln!("natt-control: statistics on http://{}/stats", h.addr);
            }
            let mut w = open_writer(&cli, *capacity)?;
            if let Some(path) = config {
                let (file, text) = read_file(path)?;
                let req = json!({"op": "apply", "file": file, "text": text, "grace_ns": ns(grace)});
                let r = request::handle(&mut w, &req).map_err(|e| Failure::usage(e.to_string()))?;
                eprintln!("natt-control: applied {file}: {}", summarize(&r));
            }
            daemon::run(
                w,
                daemon::Options {
                    shm_dir: cli.shm_dir.clone(),
                    name: cli.name.clone(),
                    socket: socket_of(&cli),
                    event_log: event_log_of(&cli),
                    tick: Duration::from_millis((*tick_ms).max(1)),
                    quiet_events: *quiet,
                },
            )
            .map_err(Failure::system)
        }
        Command::Apply { file, grace, dry_run, capacity } => {
            let (file, text) = read_file(file)?;
            let r = request(
                &cli,
                json!({"op": "apply", "file": file, "text": text, "grace_ns": ns(grace), "dry_run": dry_run}),
                *capacity,
            )?;
            print_result(&cli, &r, report_text);
            Ok(())
        }
        Command::Add { file } => {
            let (file, text) = read_file(file)?;
            let r = request(&cli, json!({"op": "add", "file": file, "text": text}), 65536)?;
            print_result(&cli, &r, report_text);
            Ok(())
        }
        Command::Del { spi, direction, grace } => {
            let r =
                request(&cli, json!({"op": "del", "spi": spi, "direction": direction, "grace_ns": ns(grace)}), 65536)?;
            print_result(&cli, &r, report_text);
            Ok(())
        }
        Command::Rekey { old_in, old_out, file, grace } => {
            let (file, text) = read_file(file)?;
            let req = json!({"op": "rekey", "old_in": old_in, "old_out": old_out, "file": file, "text": text, "grace_ns": ns(grace)});
            let r = request(&cli, req, 65536)?;
            print_result(&cli, &r, report_text);
            Ok(())
        }
        Command::List => {
            let r = request(&cli, json!({"op": "list"}), 65536)?;
            print_result(&cli, &r, list_text);
            Ok(())
        }
        Command::Show { spi, direction } => {
            let r = request(&cli, json!({"op": "show", "spi": spi, "direction": direction}), 65536)?;
            print_result(&cli, &r, |v| serde_json::to_string_pretty(v).unwrap_or_default());
            Ok(())
        }
        Command::Events { follow } => events(&cli, *follow),
        Command::Stats { watch, interval, sa, direction, prometheus } => {
            show_stats(&cli, *watch, *interval, sa.as_deref(), direction.as_deref(), *prometheus)
        }
    }
}

fn stats_failure(e: stats::StatsError) -> Failure {
    match e {
        stats::StatsError::BadRequest(m) => Failure::usage(m),
        other => Failure::system(other.to_string()),
    }
}

fn show_stats(
    cli: &Cli,
    watch: bool,
    interval: Duration,
    sa: Option<&str>,
    direction: Option<&str>,
    prometheus: bool,
) -> Result<(), Failure> {
    if let Some(spi) = sa {
        let spi = stats::parse_spi(spi).map_err(stats_failure)?;
        let dir = match direction {
            None => None,
            Some("in" | "inbound") => Some(natt_engine::sa::Direction::Inbound),
            Some("out" | "outbound") => Some(natt_engine::sa::Direction::Outbound),
            Some(d) => return Err(Failure::usage(format!("--direction {d}: use in or out"))),
        };
        let v = stats::sa(&cli.shm_dir, &cli.name, spi, dir).map_err(stats_failure)?;
        out(&format!("{}\n", serde_json::to_string_pretty(&v).unwrap_or_default()));
        return Ok(());
    }
    if prometheus {
        out(&stats::prometheus(&cli.shm_dir, &cli.name).map_err(stats_failure)?);
        return Ok(());
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let _ = signal_hook::flag::register(sig, std::sync::Arc::clone(&stop));
    }
    let mut prev: Option<(natt_sadb::view::StatsView, std::time::Instant)> = None;
    loop {
        let (view, doc) = stats::document(&cli.shm_dir, &cli.name).map_err(stats_failure)?;
        if cli.json {
            out(&format!("{doc}\n"));
        } else {
            let p = prev.as_ref().map(|(v, t)| (v, t.elapsed().as_secs_f64()));
            out(&stats::text(&view, p));
        }
        if !watch {
            return Ok(());
        }
        prev = Some((view, std::time::Instant::now()));
        let end = std::time::Instant::now() + interval;
        while std::time::Instant::now() < end {
            if stop.load(std::sync::atomic::Ordering::Relaxed) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn events(cli: &Cli, follow: bool) -> Result<(), Failure> {
    let log_path = event_log_of(cli);
    state_dir(cli)?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let _ = signal_hook::flag::register(sig, std::sync::Arc::clone(&stop));
    }
    // With no daemon taking events, take them ourselves into the log first.
    let mut mine =
        events::EventLog::take(&log_path).map_err(|e| Failure::system(format!("{}: {e}", log_path.display())))?;
    let names = Reader::attach(&cli.shm_dir, &cli.name).ok();
    let pump = |log: &mut Option<events::EventLog>| {
        if let Some(l) = log.as_mut() {
            if let Ok(dp) = natt_sadb::dp::DpSegment::attach(&cli.shm_dir, &cli.name) {
                let _ = l.drain(&dp, names.as_ref(), |_| {});
            }
        }
    };
    pump(&mut mine);
    let json = cli.json;
    events::tail(
        &log_path,
        follow,
        |line| {
            if json {
                out(&format!("{line}\n"));
            } else if let Ok(v) = serde_json::from_str::<Value>(line) {
                out(&format!("{}\n", event_text(&v)));
            }
        },
        || {
            pump(&mut mine);
            !stop.load(std::sync::atomic::Ordering::Relaxed)
        },
    )
    .map_err(|e| Failure::system(format!("{}: {e}", log_path.display())))
}

/// Write to stdout. With stdout gone (the reader of a pipe exited, as in
/// `natt-control stats --watch | head`), stop quietly as a filter does rather than panic.
fn out(s: &str) {
    use std::io::Write as _;
    let mut o = std::io::stdout().lock();
    if o.write_all(s.as_bytes()).and_then(|()| o.flush()).is_err() {
        std::process::exit(0);
    }
}

fn print_result(cli: &Cli, v: &Value, text: impl Fn(&Value) -> String) {
    if cli.json {
        out(&format!("{v}\n"));
    } else {
        out(&format!("{}\n", text(v)));
    }
}

fn summarize(r: &Value) -> String {
    let n = |k: &str| r[k].as_array().map_or(0, Vec::len);
    format!(
        "{} added, {} replaced, {} removed, {} draining, {} unchanged (generation {})",
        n("added"),
        n("replaced"),
        n("removed"),
        n("draining"),
        r["unchanged"],
        r["generation"]
    )
}

fn report_text(r: &Value) -> String {
    let mut out = Vec::new();
    let dry = r["dry_run"].as_bool() == Some(true);
    for (k, word) in [("added", "add"), ("replaced", "replace"), ("removed", "remove"), ("draining", "drain")] {
        for sa in r[k].as_array().into_iter().flatten() {
            let verb = if dry { format!("would {word}") } else { k.to_owned() };
            let mut line = format!(
                "{verb:<14} {:<9} {} {}",
                sa["direction"].as_str().unwrap_or(""),
                sa["spi"].as_str().unwrap_or(""),
                sa["name"].as_str().unwrap_or("")
            );
            if let Some(at) = sa["remove_at_ns"].as_u64() {
                let left = at.saturating_sub(now_ns()) as f64 / 1e9;
                line += &format!(" (removed in {left:.0} s)");
            }
            out.push(line);
        }
    }
    out.push(summarize(r));
    out.join("\n")
}

fn list_text(v: &Value) -> String {
    let mut out = vec![format!(
        "{:<10} {:<9} {:<9} {:<17} {:<24} {:<28} {}",
        "SPI", "DIRECTION", "MODE", "ALGORITHM", "NAME", "PEER", "STATE"
    )];
    for sa in v["sas"].as_array().into_iter().flatten() {
        let addr = sa["peer"].as_str().unwrap_or("");
        let peer = match sa["encap"]["peer_port"].as_u64() {
            Some(p) if addr.contains(':') => format!("[{addr}]:{p}"),
            Some(p) => format!("{addr}:{p}"),
            None => format!("{addr} (ESP)"),
        };
        out.push(format!(
            "{:<10} {:<9} {:<9} {:<17} {:<24} {:<28} {}",
            sa["spi"].as_str().unwrap_or(""),
            sa["direction"].as_str().unwrap_or(""),
            sa["mode"].as_str().unwrap_or(""),
            sa["algorithm"].as_str().unwrap_or(""),
            sa["name"].as_str().unwrap_or(""),
            peer,
            sa["state"].as_str().unwrap_or("")
        ));
    }
    out.push(format!(
        "{} SAs, generation {}, {} of {} records free, {} waiting for the dataplane",
        v["sas"].as_array().map_or(0, Vec::len),
        v["generation"],
        v["free"],
        v["capacity"],
        v["waiting_for_dataplane"]
    ));
    out.join("\n")
}

fn event_text(v: &Value) -> String {
    let ep = |e: &Value| format!("{}:{}", e["addr"].as_str().unwrap_or(""), e["port"]);
    let who = format!(
        "{} SA {}{}",
        v["direction"].as_str().unwrap_or(""),
        v["spi"].as_str().unwrap_or(""),
        v["sa"].as_str().map(|n| format!(" ({n})")).unwrap_or_default()
    );
    let what = match v["event"].as_str().unwrap_or("") {
        "nat_mapping_changed" => format!(
            "NAT mapping changed {} -> {}{}",
            ep(&v["old"]),
            ep(&v["new"]),
            v["updated_spi"].as_str().map(|s| format!(", outbound {s} follows")).unwrap_or_default()
        ),
        "soft_lifetime" => format!("soft lifetime ({}) reached: rekey due", v["limit"].as_str().unwrap_or("")),
        "hard_lifetime" => format!("hard lifetime ({}) reached", v["limit"].as_str().unwrap_or("")),
        "seq_exhausted" => "sequence numbers exhausted".to_owned(),
        "sa_expired" => format!("expired ({})", v["cause"].as_str().unwrap_or("")),
        other => other.to_owned(),
    };
    format!("{:.3} {who}: {what}", v["time"].as_f64().unwrap_or(0.0))
}
