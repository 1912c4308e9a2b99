//! The SA table at scale. Reports, as a table and as JSON (`--json FILE`):
//!
//! - lookup cost (inbound by SPI, outbound by longest prefix) at 1, 1,000 and
//!   1,000,000 SAs per direction, one reader thread, bursts of 32 lookups per snapshot;
//! - how fast a million SAs per direction load;
//! - sustained SA changes per second (replace an inbound SA with a new key, rekey an
//!   outbound SA to a new SPI) while another thread, registered as a dataplane worker,
//!   looks up continuously, and that thread's lookup cost meanwhile;
//! - time from a commit to the first lookup that sees it;
//! - time from running `natt-control apply FILE` to the first lookup that sees it.
//!
//! cargo bench -p natt-control --bench scale -- [--sas N] [--seconds S] [--json /abs/FILE]

use natt_engine::sa::config::parse_sa;
use natt_engine::sa::{Direction, IpPrefix, SaParams};
use natt_sadb::dp::DpSegment;
use natt_sadb::layout::DpLayout;
use natt_sadb::{Reader, Readers, Writer};
use serde_json::json;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

fn template(dir: &str) -> SaParams {
    parse_sa(&json!({"name": "t", "spi": 0x1000, "direction": dir, "algorithm": "aes128-gcm", "key": "00".repeat(20),
        "local": "203.0.113.1", "peer": "198.51.100.7", "encap": {"local_port": 4500, "peer_port": 4500},
        "selectors": {"local": ["10.0.0.0/8"], "peer": ["11.0.0.1/32"]}}))
    .unwrap()
}

fn client(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0b00_0000 + i))
}

fn inbound(t: &SaParams, i: u32, v: u32) -> SaParams {
    let mut p = t.clone();
    p.spi = 0x0010_0000 + i;
    p.name = format!("in-{i}");
    p.key = natt_engine::sa::Key::new((0..16).map(|k| (i ^ v ^ k) as u8).collect());
    p.selectors.peer = vec![IpPrefix::host(client(i))];
    p
}

fn outbound(t: &SaParams, i: u32, v: u32) -> SaParams {
    let mut p = t.clone();
    p.spi = 0x4000_0000 + i * 4 + (v % 4);
    p.name = format!("out-{i}");
    p.key = natt_engine::sa::Key::new((0..16).map(|k| (i ^ v ^ k ^ 0x55) as u8).collect());
    p.selectors.peer = vec![IpPrefix::host(client(i))];
    p
}

struct Tmp(PathBuf);
impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tmp(tag: &str) -> Tmp {
    // NATT_SCALE_DIR puts the segments elsewhere, e.g. on hugetlbfs (/dev/hugepages).
    let base = std::env::var_os("NATT_SCALE_DIR").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let d = base.join(format!("natt-scale-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    Tmp(d)
}

/// A table with `n` inbound and `n` outbound SAs. Returns the writer and the load rate.
fn load(dir: &Path, n: u32) -> (Writer, f64) {
    let mut w = Writer::create(dir, "t", (2 * n as usize + 4096).max(64)).unwrap();
    let (ti, to) = (template("inbound"), template("outbound"));
    let t = Instant::now();
    let mut i = 0;
    while i < n {
        let mut b = w.batch();
        for j in i..(i + 4096).min(n) {
            b.add(&inbound(&ti, j, 0)).unwrap();
            b.add(&outbound(&to, j, 0)).unwrap();
        }
        b.commit().unwrap();
        i = (i + 4096).min(n);
    }
    (w, 2.0 * f64::from(n) / t.elapsed().as_secs_f64())
}

/// Nanoseconds per lookup, bursts of 32 per snapshot, random keys.
fn lookups(r: &Reader, n: u32, rounds: u32, outbound: bool) -> f64 {
    let mut x = 0x9e37_79b9u32;
    let t = Instant::now();
    let mut found = 0u64;
    for _ in 0..rounds {
        let s = r.snapshot();
        for _ in 0..32 {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let i = x % n;
            let f = if outbound { r.outbound(&s, &client(i)) } else { r.inbound(&s, 0x0010_0000 + i) };
            found += u64::from(f.is_some());
        }
    }
    let ns = t.elapsed().as_nanos() as f64 / (f64::from(rounds) * 32.0);
    assert_eq!(found, u64::from(rounds) * 32, "every lookup finds its SA");
    ns
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |k: &str| args.iter().position(|a| a == k).and_then(|i| args.get(i + 1)).cloned();
    let big: u32 = arg("--sas").and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let secs: u64 = arg("--seconds").and_then(|v| v.parse().ok()).unwrap_or(10);
    let mut results = json!({"sas_per_direction": big});

    // Lookup cost by table size.
    let mut rows = Vec::new();
    let mut table_for_churn = None;
    let mut sizes = vec![1u32, 1_000, big];
    sizes.sort_unstable();
    sizes.dedup();
    for n in sizes {
        let d = tmp(&format!("l{n}"));
        let (w, rate) = load(&d.0, n);
        let r = Reader::attach(&d.0, "t").unwrap();
        let rounds = 2_000_000 / 32;
        let inb = lookups(&r, n, rounds, false);
        let outb = lookups(&r, n, rounds, true);
        println!(
            "{n:>9} SAs per direction: inbound lookup {inb:6.1} ns, outbound lookup {outb:6.1} ns (loaded {rate:.0} SAs/s)"
        );
        rows.push(json!({"sas_per_direction": n, "inbound_ns": inb, "outbound_ns": outb, "load_sas_per_s": rate}));
        if n == big {
            table_for_churn = Some((d, w));
        } else {
            drop(w);
        }
    }
    results["lookup"] = json!(rows);

    // Sustained changes with a reader looking up meanwhile.
    let (d, mut w) = table_for_churn.unwrap();
    let reader = Reader::attach(&d.0, "t").unwrap();
    let dp = Arc::new(
        DpSegment::open_or_create(&d.0, "t", DpLayout::new(2, 64, 64).unwrap(), reader.db().created_ns()).unwrap(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let lookups_done = Arc::new(AtomicU64::new(0));
    let (ti, to) = (template("inbound"), template("outbound"));
    let rt = {
        let (stop, done, dp) = (stop.clone(), lookups_done.clone(), dp.clone());
        let dir = d.0.clone();
        std::thread::spawn(move || {
            let r = Reader::attach(&dir, "t").unwrap();
            dp.register_worker(0, 0, || r.snapshot().generation);
            let mut x = 7u32;
            let mut n = 0u64;
            let t = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                let s = r.snapshot();
                dp.quiescent(0, s.generation, 0);
                for _ in 0..32 {
                    x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    let i = x % big;
                    let ok = r.inbound(&s, 0x0010_0000 + i).is_some() && r.outbound(&s, &client(i)).is_some();
                    assert!(ok, "an SA was missing during the churn");
                    n += 2;
                }
            }
            dp.unregister_worker(0);
            done.store(n, Ordering::Relaxed);
            t.elapsed().as_nanos() as f64 / n as f64
        })
    };
    let t = Instant::now();
    let mut changes = 0u64;
    let mut versions = vec![0u32; big as usize];
    let mut k = 0u32;
    let mut waits = 0u64;
    while t.elapsed() < Duration::from_secs(secs) {
        let readers = dp.min_seen().map_or(Readers::None, Readers::MinSeen);
        w.housekeeping(0, readers);
        let mut b = w.batch();
        let mut bumped = Vec::with_capacity(32);
        let mut ok = true;
        let mut next_k = k;
        for _ in 0..32 {
            let i = next_k % big;
            let v = versions[i as usize];
            ok = b.replace(&inbound(&ti, i, v + 1)).is_ok()
                && b.remove(Direction::Outbound, outbound(&to, i, v).spi).is_ok()
                && b.add(&outbound(&to, i, v + 1)).is_ok();
            if !ok {
                break;
            }
            versions[i as usize] = v + 1;
            bumped.push((i, v));
            next_k = next_k.wrapping_add(7919);
        }
        if !ok {
            // Out of free records until the reader passes its next quiescent point: the
            // batch rolls back, so do its versions.
            drop(b);
            for (i, v) in bumped {
                versions[i as usize] = v;
            }
            waits += 1;
            std::thread::yield_now();
            continue;
        }
        b.commit().unwrap();
        k = next_k;
        changes += 3 * bumped.len() as u64;
    }
    let churn_s = t.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let reader_ns = rt.join().unwrap();
    let rate = changes as f64 / churn_s;
    println!(
        "sustained: {rate:.0} SA changes/s over {churn_s:.1} s with {} lookups meanwhile at {reader_ns:.1} ns each ({waits} waits for the reader)",
        lookups_done.load(Ordering::Relaxed)
    );
    results["churn"] =
        json!({"changes_per_s": rate, "seconds": churn_s, "reader_lookup_ns": reader_ns, "waits": waits});

    // Commit to visibility: the reader publishes each new generation with the time it
    // first saw it; the writer commits and waits for its generation to appear.
    let probe = 0x0010_0000u32;
    let seen_gen = Arc::new(AtomicU64::new(0));
    let seen_time = Arc::new(AtomicU64::new(0));
    let stop2 = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let spin = {
        let (seen_gen, seen_time, stop2) = (seen_gen.clone(), seen_time.clone(), stop2.clone());
        let dir = d.0.clone();
        std::thread::spawn(move || {
            let r = Reader::attach(&dir, "t").unwrap();
            let mut last = 0;
            while !stop2.load(Ordering::Relaxed) {
                let s = r.snapshot();
                if s.generation != last && r.inbound(&s, probe).is_some() {
                    seen_time.store(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
                    seen_gen.store(s.generation, Ordering::Release);
                    last = s.generation;
                }
            }
        })
    };
    let mut lat = Vec::new();
    for round in 1..=500u32 {
        let readers = dp.min_seen().map_or(Readers::None, Readers::MinSeen);
        w.housekeeping(0, readers);
        let v = versions[0] + round;
        let mut b = w.batch();
        b.replace(&inbound(&ti, 0, v)).unwrap();
        let t0 = start.elapsed().as_nanos() as u64;
        let g = b.commit().unwrap().generation;
        let deadline = Instant::now() + Duration::from_secs(1);
        while seen_gen.load(Ordering::Acquire) < g && Instant::now() < deadline {
            std::hint::spin_loop();
        }
        assert!(seen_gen.load(Ordering::Acquire) >= g, "a commit was not seen within a second");
        lat.push(seen_time.load(Ordering::Relaxed).saturating_sub(t0));
        std::thread::sleep(Duration::from_micros(200));
    }
    stop2.store(true, Ordering::Relaxed);
    spin.join().unwrap();
    lat.sort_unstable();
    let q = |p: f64| lat[((lat.len() as f64 - 1.0) * p) as usize] as f64 / 1000.0;
    println!("commit to visibility: median {:.2} µs, p99 {:.2} µs, max {:.2} µs", q(0.5), q(0.99), q(1.0));
    results["commit_to_visible_us"] = json!({"median": q(0.5), "p99": q(0.99), "max": q(1.0)});
    drop(w);
    drop(d);

    // natt-control apply FILE, through the daemon, to visibility (a small table in the
    // temporary directory: this measures the command, not the table).
    let d = Tmp(std::env::temp_dir().join(format!("natt-scale-{}-cli", std::process::id())));
    std::fs::create_dir_all(&d.0).unwrap();
    let bin = env!("CARGO_BIN_EXE_natt-control");
    let state = d.0.join("state");
    let common = |c: &mut std::process::Command| {
        c.arg("--name").arg("t").arg("--shm-dir").arg(&d.0).arg("--state-dir").arg(&state);
    };
    let mut daemon = std::process::Command::new(bin);
    common(&mut daemon);
    let mut daemon = daemon
        .args(["run", "--quiet", "--tick-ms", "5", "--http", "off"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let sock = state.join("t.sock");
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        std::thread::sleep(Duration::from_millis(5));
    }
    let r = Reader::attach(&d.0, "t").unwrap();
    let mut cli = Vec::new();
    for v in 0..40u32 {
        let f = d.0.join("sas.json");
        std::fs::write(
            &f,
            json!({"sas": [{"name": "probe", "spi": probe, "direction": "inbound", "algorithm": "aes128-gcm",
            "key": format!("{:040x}", v + 1), "local": "203.0.113.1", "peer": "198.51.100.7",
            "selectors": {"local": ["10.0.0.0/8"], "peer": ["11.0.0.1/32"]}}]})
            .to_string(),
        )
        .unwrap();
        let before = r.inbound(&r.snapshot(), probe).map(|x| x.uid);
        let t0 = Instant::now();
        let mut c = std::process::Command::new(bin);
        common(&mut c);
        let st = c.arg("apply").arg(&f).stdout(std::process::Stdio::null()).status().unwrap();
        assert!(st.success());
        while r.inbound(&r.snapshot(), probe).map(|x| x.uid) == before {
            std::hint::spin_loop();
        }
        cli.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    let _ = daemon.kill();
    let _ = daemon.wait();
    cli.sort_by(f64::total_cmp);
    println!(
        "natt-control apply to visibility (process start included): median {:.2} ms, max {:.2} ms",
        cli[cli.len() / 2],
        cli[cli.len() - 1]
    );
    results["apply_to_visible_ms"] = json!({"median": cli[cli.len() / 2], "max": cli[cli.len() - 1]});

    if let Some(path) = arg("--json") {
        std::fs::write(&path, serde_json::to_string_pretty(&results).unwrap()).unwrap();
        println!("wrote {path}");
    }
}
