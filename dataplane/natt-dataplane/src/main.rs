//! natt-dataplane: the DPDK primary process. Parses our options, starts the EAL, sets up
//! ports, the SA table and the rings (setup.rs), launches a worker on each worker lcore
//! (worker.rs), and watches for SIGINT/SIGTERM, --duration and --idle-exit while printing
//! statistics (report.rs). On stop: workers flush and return, ports close, final
//! statistics are printed, exit 0.

use natt_dataplane::args::{self, Args};
use natt_dataplane::{report, setup, worker};
use natt_dpdk::eal;
use natt_sadb::stats::Counter;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// mimalloc backs its heap with transparent huge pages where the kernel allows them (the
/// default "madvise" mode is enough): with many SAs, the per-SA state of a worker spans
/// hundreds of megabytes, and on 4 KiB pages nearly every packet missed the TLB as well
/// as the cache (about a quarter of the cycles per packet at 100,000 SAs). The packet
/// path itself never allocates.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `print!` and `println!` that ignore a failed write. With stdout gone (the reader of a
/// pipe exited, a terminal closed) `print!` panics; in the monitor thread that would end
/// the only watcher of signals and --duration while the workers forward on, deaf to
/// SIGTERM. Forwarding, statistics in the segment and --stats-json do not need stdout.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout().lock(), $($arg)*);
    }};
}
macro_rules! sayln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}
/// `eprintln!` that ignores a failed write, for the same reason.
macro_rules! note {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    if args::wants_help(&argv) {
        let mut cmd = <Args as clap::CommandFactory>::command();
        let _ = cmd.print_help();
        sayln!();
        return ExitCode::SUCCESS;
    }
    let (eal_args, ours) = args::split(&argv);
    let args = match Args::parse_ours(&argv[0], &ours) {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(2);
        }
    };
    if let Err(e) = args.check() {
        note!("natt-dataplane: error: {e}");
        return ExitCode::from(2);
    }
    match run(&args, &eal_args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            note!("natt-dataplane: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args, eal_args: &[String]) -> Result<(), String> {
    // Signals first, so an early Ctrl-C is not lost.
    let signalled = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, signalled.clone()).map_err(|e| format!("installing a signal handler: {e}"))?;
    }
    let crypto = natt_dataplane::crypto::select(&args.crypto)?;
    eal::init(eal_args).map_err(|e| e.to_string())?;
    let result = run_eal(args, &crypto, &signalled);
    eal::cleanup();
    result
}

fn run_eal(args: &Args, crypto: &str, signalled: &Arc<AtomicBool>) -> Result<(), String> {
    let worker_lcores = eal::worker_lcores();
    let inline = worker_lcores.is_empty();
    let lcores = if inline { vec![eal::main_lcore()] } else { worker_lcores };
    let sh = Arc::new(setup::build(args, &lcores).map_err(|e| e.0)?);
    sh.dp.describe(eal::tsc_hz(), sh.cfg.detail, sh.dispatch, natt_dataplane::crypto::name());
    report::publish_ports(&sh);
    register_telemetry(&sh);
    if let Err(e) = eal::pdump_init() {
        note!("natt-dataplane: note: dpdk-dumpcap cannot attach ({e}); it needs hugepages and no --in-memory");
    }
    sayln!(
        "natt-dataplane: {}, {} worker(s) on lcore(s) {:?}, dispatch: {}, SA table {}/{}.sadb",
        eal::version(),
        sh.workers(),
        lcores,
        sh.dispatch,
        args.shm_dir.display(),
        args.name
    );
    for p in sh.ports.iter().flatten() {
        sayln!(
            "  port {} {:<15} {} ({}) mac {} next hop {} rxq {} txq {} checksum offload {}",
            p.info.id,
            p.role.name(),
            p.info.name,
            p.info.driver,
            natt_dpdk::port::mac_string(&p.mac),
            natt_dpdk::port::mac_string(&p.peer),
            p.rxq,
            p.txq,
            p.checksum_offloads()
        );
    }
    sayln!("  crypto: {crypto}");

    // The SA builder: SAs' runtime state made off the workers' cores (see `prepare`).
    let builder = {
        let sh = sh.clone();
        std::thread::Builder::new()
            .name("natt-builder".into())
            .spawn(move || build_sas(&sh))
            .map_err(|e| format!("starting the SA builder thread: {e}"))?
    };
    // Let it prepare the SAs installed now before the first packet (about a second per
    // 200,000 SAs on the test VM; past 30 s, or a million SAs per worker, the rest follows
    // while the workers run). --duration counts from the end of this wait.
    let until = Instant::now() + Duration::from_secs(30);
    while !sh.builder_ready.load(Ordering::SeqCst) && !signalled.load(Ordering::SeqCst) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(1));
    }

    let started = Instant::now();
    // The monitor: signals, --duration, --idle-exit, --stats-period. A plain thread, not an
    // lcore: it only reads the counters the workers publish.
    let monitor = {
        let sh = sh.clone();
        let signalled = signalled.clone();
        let args = args.clone();
        std::thread::Builder::new()
            .name("natt-monitor".into())
            .spawn(move || monitor(&sh, &args, &signalled, started))
            .map_err(|e| format!("starting the monitor thread: {e}"))?
    };

    let mut failed = Vec::new();
    if inline {
        worker::run(&sh, 0);
    } else {
        let mut launched = Vec::new();
        for (i, &l) in lcores.iter().enumerate() {
            let shc = sh.clone();
            match eal::launch(l, move || {
                let _done = Finished(&shc.finished);
                worker::run(&shc, i)
            }) {
                Ok(()) => launched.push(l),
                Err(e) => {
                    sh.stop.store(true, Ordering::SeqCst);
                    failed.push(e.to_string());
                }
            }
        }
        // Sleep, not spin (rte_eal_wait_lcore spins): the main lcore's CPU stays free.
        while sh.finished.load(Ordering::SeqCst) < launched.len() {
            std::thread::sleep(Duration::from_millis(2));
        }
        for &l in &launched {
            if eal::wait(l) != 0 {
                failed.push(format!("the worker on lcore {l} failed (it panicked: a bug; please report it)"));
            }
        }
    }
    sh.stop.store(true, Ordering::SeqCst);
    let _ = monitor.join();
    if let Ok(c) = builder.join() {
        sayln!(
            "natt-dataplane: SA builder: {} SA states built off the workers, {} freed, {} skipped, {} table scan(s)",
            c.built,
            c.freed,
            c.skipped,
            c.scans
        );
    }
    let elapsed = started.elapsed().as_secs_f64();
    say!("{}", report::to_text(&sh, elapsed, true));
    let json = args.stats_json.as_ref().map(|_| report::to_json(&sh, elapsed));
    setup::close_ports(&sh);
    if let (Some(path), Some(v)) = (&args.stats_json, json) {
        std::fs::write(path, serde_json::to_string_pretty(&v).unwrap_or_default() + "\n")
            .map_err(|e| format!("writing --stats-json {}: {e}", path.display()))?;
    }
    if !failed.is_empty() {
        return Err(failed.join("; "));
    }
    Ok(())
}

/// DPDK telemetry commands, for `dpdk-telemetry.py`: `/natt/stats` (the counters summed
/// over workers, every drop reason as `drop_<reason>`, the accounting and the latency
/// quantiles in ns) and `/natt/worker,<n>` (worker n's counters).
fn register_telemetry(sh: &Arc<setup::Shared>) {
    let s = sh.clone();
    let stats = move |_: &str| {
        let v = natt_sadb::view::collect(&s.dp);
        let mut out = flat(&v.totals);
        let a = v.accounting();
        out.extend([
            ("in".to_owned(), a.packets_in),
            ("out".to_owned(), a.packets_out),
            ("dropped".to_owned(), a.dropped),
            ("consumed".to_owned(), a.consumed),
            ("pending".to_owned(), a.pending),
            ("balanced".to_owned(), u64::from(a.balanced())),
            ("workers".to_owned(), v.workers.len() as u64),
        ]);
        if let Some(h) = v.merged_latency() {
            let l = v.latency_of(&h);
            out.extend([
                ("latency_count".to_owned(), l.count),
                ("latency_p50_ns".to_owned(), l.p50_ns as u64),
                ("latency_p90_ns".to_owned(), l.p90_ns as u64),
                ("latency_p99_ns".to_owned(), l.p99_ns as u64),
                ("latency_p999_ns".to_owned(), l.p999_ns as u64),
                ("latency_max_ns".to_owned(), l.max_ns as u64),
            ]);
        }
        out
    };
    let s = sh.clone();
    let worker = move |params: &str| {
        let v = natt_sadb::view::collect(&s.dp);
        params
            .trim()
            .parse::<usize>()
            .ok()
            .and_then(|w| v.workers.get(w))
            .map(|w| flat(&w.counters))
            .unwrap_or_default()
    };
    for r in [
        natt_dpdk::telemetry::register("/natt/stats", "natt counters summed over workers. Takes no parameters.", stats),
        natt_dpdk::telemetry::register(
            "/natt/worker",
            "One natt worker's counters. Parameter: the worker index.",
            worker,
        ),
    ] {
        if let Err(e) = r {
            note!("natt-dataplane: note: {e}; dpdk-telemetry.py will not see natt's counters");
        }
    }
}

fn flat(t: &natt_sadb::stats::Totals) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = Counter::ALL.iter().map(|c| (c.name().to_owned(), t.get(*c))).collect();
    out.extend(natt_engine::DropReason::ALL.iter().map(|r| (format!("drop_{}", r.name()), t.drop(*r))));
    out
}

/// Counts a worker as finished when it returns or unwinds.
struct Finished<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for Finished<'_> {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// Pin the monitor thread (which EAL does not launch) to a CPU no worker polls on, if
/// there is one, so it never takes time from a worker.
fn pin_monitor(sh: &setup::Shared) {
    let busy: Vec<usize> = sh.plans.iter().filter_map(|p| eal::lcore_cpu(p.lcore)).collect();
    if let Some(core) = core_affinity::get_core_ids().unwrap_or_default().into_iter().find(|c| !busy.contains(&c.id)) {
        core_affinity::set_for_current(core);
    }
}

/// Say once if a shared segment was truncated under us. Nothing crashes (natt_sadb's
/// map guard gives the lost pages back as zeros), but the operator has to know.
fn check_segments(sh: &setup::Shared, args: &Args, seen: &mut [bool; 2]) {
    if let (false, Some((now, was))) = (seen[0], sh.reader.db().shrunk()) {
        seen[0] = true;
        note!(
            "natt-dataplane: error: the SA table {} shrank from {was} to {now} bytes under us; what lay past its \
             end reads as zeros here: the SAs workers hold keep working, the others are gone (their packets are \
             dropped as no_sa / no_outbound_sa). Whatever truncated it is not natt-control: recreate the table \
             (natt-control init, apply) and restart natt-dataplane",
            sh.reader.db().path().display()
        );
    }
    if let (false, Some((now, was))) = (seen[1], sh.dp.shrunk()) {
        seen[1] = true;
        note!(
            "natt-dataplane: error: our segment {}/{}.dp shrank from {was} to {now} bytes under us; counters, events \
             and sequence reservations past its end now stay in this process, and a restart will refuse the segment \
             (keep the file until its SAs are rekeyed, or remove it to start over)",
            args.shm_dir.display(),
            args.name
        );
    }
}

/// The SA builder's thread: build what the table's journal names and free what workers
/// hand back, sleep when there is nothing to do (or a worker's lane is full), until
/// stopped.
fn build_sas(sh: &setup::Shared) -> natt_dataplane::prepare::BuilderCounters {
    pin_monitor(sh);
    let mut b =
        natt_dataplane::prepare::Builder::<natt_dataplane::crypto::Crypto>::new(&sh.reader, &sh.owners, &sh.lanes);
    let started = Instant::now();
    while !sh.stop.load(Ordering::SeqCst) {
        if b.step(256) == 0 && !b.can_proceed() && !b.has_spent() {
            if !sh.builder_ready.swap(true, Ordering::SeqCst) {
                sayln!(
                    "natt-dataplane: SA builder: {} SA states prepared in {} ms{}",
                    b.counters.built,
                    started.elapsed().as_millis(),
                    if b.idle() { "" } else { " (a worker's lane is full: the rest follows)" }
                );
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    b.counters
}

fn monitor(sh: &setup::Shared, args: &Args, signalled: &AtomicBool, started: Instant) {
    pin_monitor(sh);
    let tick = Duration::from_millis(10);
    let mut last_print = Instant::now();
    let mut last_totals = sh.dp.totals().0;
    let mut last_ports = Instant::now();
    let mut last_rx = 0u64;
    let mut last_change = Instant::now();
    let mut shrunk_seen = [false; 2];
    let received = |sh: &setup::Shared| {
        let (t, _) = sh.dp.totals();
        t.sum(&[Counter::rx_public, Counter::rx_protected, Counter::rx_punt])
    };
    while !sh.stop.load(Ordering::SeqCst) {
        std::thread::sleep(tick);
        if signalled.load(Ordering::SeqCst) {
            sayln!("natt-dataplane: signal received, stopping");
            break;
        }
        if args.duration.is_some_and(|d| started.elapsed().as_secs_f64() >= d) {
            break;
        }
        if let Some(ms) = args.idle_exit {
            let rx = received(sh);
            if rx != last_rx {
                last_rx = rx;
                last_change = Instant::now();
            } else if rx > 0 && last_change.elapsed() >= Duration::from_millis(ms) {
                break;
            }
        }
        if last_ports.elapsed() >= Duration::from_millis(100) {
            last_ports = Instant::now();
            report::publish_ports(sh);
            check_segments(sh, args, &mut shrunk_seen);
        }
        if args.stats_period > 0.0 && last_print.elapsed().as_secs_f64() >= args.stats_period {
            let totals = sh.dp.totals().0;
            say!("{}", report::to_text(sh, started.elapsed().as_secs_f64(), false));
            say!("{}", report::rates_text(&last_totals, &totals, last_print.elapsed().as_secs_f64()));
            last_print = Instant::now();
            last_totals = totals;
        }
    }
    sh.stop.store(true, Ordering::SeqCst);
}
