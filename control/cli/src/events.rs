//! Dataplane events: taken from the dataplane segment's rings, written as JSON lines to
//! the event log (and stdout), and streamed from the log by `natt-control events`.
//! Exactly one process takes events from the rings at a time: the one holding the lock on
//! the log file (the daemon while it runs).

use natt_sadb::Reader;
use natt_sadb::dp::DpSegment;
use serde_json::Value;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The event log, opened for appending by the process that takes events from the rings.
pub struct EventLog {
    file: File,
    pub path: PathBuf,
    /// Events that did not decode (a dataplane of another build, or corruption).
    pub undecodable: u64,
}

impl EventLog {
    /// Open the log and become the one consumer of the rings; `None` if another process
    /// (the daemon) already is.
    pub fn take(path: &Path) -> std::io::Result<Option<EventLog>> {
        let file = OpenOptions::new().create(true).append(true).read(true).open(path)?;
        if rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
            return Ok(None);
        }
        Ok(Some(EventLog { file, path: path.to_owned(), undecodable: 0 }))
    }

    /// Move every waiting event from the rings to the log; call `f` with each line.
    pub fn drain(
        &mut self,
        dp: &DpSegment,
        names: Option<&Reader>,
        mut f: impl FnMut(&Value),
    ) -> std::io::Result<usize> {
        let mut lines = Vec::new();
        let snap = names.map(|r| r.snapshot());
        let mut bad = 0;
        dp.drain_events(|worker, ev| match ev {
            Ok((ev, ts)) => {
                let mut v = ev.to_json();
                v["time"] = serde_json::json!(ts as f64 / 1e9);
                v["worker"] = worker.into();
                if let (Some(r), Some(s)) = (names, snap.as_ref()) {
                    let found = match ev.direction {
                        natt_engine::sa::Direction::Inbound => r.inbound(s, ev.spi),
                        natt_engine::sa::Direction::Outbound => r.outbound_by_spi(s, ev.spi),
                    };
                    if let Some(name) = found.and_then(|f| r.decode(f.slot).ok()).map(|p| p.name) {
                        v["sa"] = name.into();
                    }
                }
                lines.push(v);
            }
            Err(_) => bad += 1,
        });
        self.undecodable += bad;
        // One write for all of them: `writeln!` on the file wrote each JSON token on its
        // own, a syscall each.
        let mut out = Vec::new();
        for v in &lines {
            serde_json::to_writer(&mut out, v).map_err(std::io::Error::other)?;
            out.push(b'\n');
            f(v);
        }
        if !out.is_empty() {
            self.file.write_all(&out)?;
            self.file.flush()?;
        }
        Ok(lines.len())
    }
}

/// Print the log's lines, then (with `follow`) keep printing what is appended.
pub fn tail(path: &Path, follow: bool, mut f: impl FnMut(&str), mut tick: impl FnMut() -> bool) -> std::io::Result<()> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && follow => {
            while !path.exists() {
                if !tick() {
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            File::open(path)?
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let mut r = BufReader::new(file);
    let mut line = String::new();
    loop {
        line.clear();
        let n = r.read_line(&mut line)?;
        if n > 0 && line.ends_with('\n') {
            f(line.trim_end());
            continue;
        }
        if n > 0 {
            // A partial line: wait for the rest.
            let back = r.stream_position()? - n as u64;
            r.seek(SeekFrom::Start(back))?;
        }
        if !follow || !tick() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
