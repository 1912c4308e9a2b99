//! `natt-control run`: the control process as a daemon. It owns the SA table's write lock,
//! serves requests from the CLI on a Unix socket, and every tick ends grace periods,
//! releases records the dataplane no longer uses, compacts tables, and logs dataplane
//! events. SIGINT or SIGTERM stops it cleanly; the table stays as it is.

use crate::events::EventLog;
use crate::request;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, bounded};
use natt_sadb::dp::DpSegment;
use natt_sadb::{Reader, Readers, Writer};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// `println!` and `eprintln!` that ignore a failed write: the daemon's stdout mirrors the
/// event log and its stderr says what it did, and neither may stop it (with `println!`,
/// a closed pipe would panic it, and grace periods, housekeeping and every rekey with it).
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}
macro_rules! note {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}

pub struct Options {
    pub shm_dir: PathBuf,
    pub name: String,
    pub socket: PathBuf,
    pub event_log: PathBuf,
    pub tick: Duration,
    pub quiet_events: bool,
}

type Job = (Value, Sender<Value>);

fn now_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// Write `v` and a newline in one write: `writeln!` on the unbuffered socket wrote each
/// token of the JSON on its own (a syscall and a wake-up of the other side each, 0.3 ms
/// for the reply to a `show`).
fn send_line(s: &mut UnixStream, v: &Value) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(v).map_err(std::io::Error::other)?;
    line.push(b'\n');
    s.write_all(&line)
}

/// Serve one connection: newline-delimited JSON requests, one response each.
fn serve(conn: UnixStream, jobs: &Sender<Job>) {
    let Ok(mut out) = conn.try_clone() else { return };
    let reader = BufReader::new(conn);
    for line in reader.lines() {
        let Ok(line) = line else { return };
        // A request is one line of JSON; anything larger than a configuration is refused.
        if line.len() > 64 << 20 {
            let _ = send_line(&mut out, &json!({"ok": false, "error": "request too large"}));
            return;
        }
        let reply = match serde_json::from_str::<Value>(&line) {
            Ok(req) => {
                let (tx, rx) = bounded(1);
                if jobs.send((req, tx)).is_err() {
                    return;
                }
                rx.recv().unwrap_or_else(|_| json!({"ok": false, "error": "the daemon is stopping"}))
            }
            Err(e) => json!({"ok": false, "error": format!("malformed request: {e}")}),
        };
        if send_line(&mut out, &reply).is_err() {
            return;
        }
    }
}

fn listen(socket: &Path, jobs: Sender<Job>) -> std::io::Result<()> {
    if socket.exists() {
        if UnixStream::connect(socket).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("{}: another natt-control is running", socket.display()),
            ));
        }
        std::fs::remove_file(socket)?;
    }
    let listener = UnixListener::bind(socket)?;
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let jobs = jobs.clone();
            std::thread::spawn(move || serve(conn, &jobs));
        }
    });
    Ok(())
}

/// How often the daemon checks the dataplane's sequence-number reservations; past half
/// full, those of outbound SAs no longer installed are forgotten.
const RESERVATION_SWEEP: Duration = Duration::from_secs(60);

/// Run until signalled. `w` is the attached writer; `startup` already applied.
pub fn run(mut w: Writer, opts: Options) -> Result<(), String> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop)).map_err(|e| format!("signal handler: {e}"))?;
    }
    let (tx, rx): (Sender<Job>, Receiver<Job>) = bounded(64);
    listen(&opts.socket, tx).map_err(|e| format!("{}: {e}", opts.socket.display()))?;
    let mut log = EventLog::take(&opts.event_log)
        .map_err(|e| format!("{}: {e}", opts.event_log.display()))?
        .ok_or_else(|| format!("{}: another process is taking dataplane events", opts.event_log.display()))?;
    let names = Reader::attach(&opts.shm_dir, &opts.name).ok();
    let mut dp: Option<DpSegment> = None;
    let mut last_tick = Instant::now();
    let mut last_sweep = Instant::now();
    note!(
        "natt-control: serving {} ({} SAs installed, generation {}); events to {}",
        opts.socket.display(),
        w.len(),
        w.generation(),
        opts.event_log.display()
    );
    while !stop.load(Ordering::Relaxed) {
        match rx.recv_timeout(opts.tick.saturating_sub(last_tick.elapsed())) {
            Ok((req, reply)) => {
                let r = match request::handle(&mut w, &req) {
                    Ok(v) => json!({"ok": true, "result": v}),
                    Err(e) => {
                        json!({"ok": false, "error": e.to_string(), "usage": matches!(e, crate::ops::OpError::Usage(_) | crate::ops::OpError::Config(_))})
                    }
                };
                let _ = reply.send(r);
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        if last_tick.elapsed() < opts.tick {
            continue;
        }
        last_tick = Instant::now();
        if dp.is_none() {
            dp = DpSegment::attach(&opts.shm_dir, &opts.name).ok();
        }
        let readers = match dp.as_ref().and_then(DpSegment::min_seen) {
            Some(g) => Readers::MinSeen(g),
            None => Readers::None,
        };
        let hk = w.housekeeping(now_ns(), readers);
        for (dir, spi) in &hk.drained {
            note!("natt-control: grace period over, removed {} SA 0x{spi:08x}", dir.name());
        }
        if let Some(d) = dp.as_ref().filter(|_| last_sweep.elapsed() >= RESERVATION_SWEEP) {
            last_sweep = Instant::now();
            let r = d.reservations();
            let (used, room) = r.occupancy();
            if used > room / 2 {
                let n = r.sweep(|key_fp| w.holds_key(key_fp));
                note!(
                    "natt-control: forgot the sequence-number reservations of {n} keys no installed SA holds ({used} of {room} in use)"
                );
            }
        }
        if let Some(d) = dp.as_ref() {
            let quiet = opts.quiet_events;
            log.drain(d, names.as_ref(), |v| {
                if !quiet {
                    say!("{v}");
                }
            })
            .map_err(|e| format!("{}: {e}", log.path.display()))?;
        }
    }
    let _ = std::fs::remove_file(&opts.socket);
    note!("natt-control: stopped; the SA table stays as it is (generation {})", w.generation());
    Ok(())
}

/// Send one request to a running daemon; `None` if none listens on `socket`.
pub fn ask(socket: &Path, req: &Value) -> Option<Result<Value, (String, bool)>> {
    let mut conn = UnixStream::connect(socket).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(60))).ok()?;
    send_line(&mut conn, req).ok()?;
    let mut line = String::new();
    BufReader::new(&conn).read_line(&mut line).ok()?;
    let v: Value = serde_json::from_str(&line).ok()?;
    Some(if v["ok"].as_bool() == Some(true) {
        Ok(v["result"].clone())
    } else {
        Err((v["error"].as_str().unwrap_or("unknown error").to_owned(), v["usage"].as_bool().unwrap_or(false)))
    })
}
