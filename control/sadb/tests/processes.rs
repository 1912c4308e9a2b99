//! The SA database across processes: a writer (natt-control's role) and a reader (a
//! dataplane worker's role, registered in the dataplane segment and reporting
//! quiescence) run side by side. The reader checks, in every snapshot, that each
//! client's inbound and outbound SA is there and is one whole version. The writer is
//! killed with SIGKILL at random points; the table stays consistent and the next writer
//! carries on from it. The test binary runs itself as the child processes.

mod common;

use common::*;
use natt_engine::sa::Direction;
use natt_sadb::dp::DpSegment;
use natt_sadb::layout::DpLayout;
use natt_sadb::{Reader, Readers, Writer};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CLIENTS: u32 = 40;

fn child(role: &str, dir: &Path, secs: u64) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", role, "--ignored", "--nocapture", "--test-threads=1"])
        .env("NATT_TEST_DIR", dir)
        .env("NATT_TEST_SECS", secs.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn env_dir() -> Option<(std::path::PathBuf, u64)> {
    let d = std::env::var_os("NATT_TEST_DIR")?;
    let s = std::env::var("NATT_TEST_SECS").ok()?.parse().ok()?;
    Some((d.into(), s))
}

fn version_of(name: &str) -> Option<(u32, u32)> {
    let mut it = name.split('-');
    let _kind = it.next()?;
    let n = it.next()?.parse().ok()?;
    let v = it.next()?.strip_prefix('v')?.parse().ok()?;
    Some((n, v))
}

/// Writer role: stream changes (replace every client's inbound SA with a new key, rekey
/// its outbound SA to a new SPI) until the time is up or it is killed.
#[test]
#[ignore]
fn child_writer() {
    let Some((dir, secs)) = env_dir() else { return };
    let mut w = Writer::open_or_create(&dir, "t", 4 * CLIENTS as usize).unwrap();
    let mut versions = vec![None; CLIENTS as usize];
    for i in w.installed() {
        if let Some((n, v)) = version_of(&i.params.name) {
            versions[n as usize] = Some(v);
        }
    }
    if versions.iter().any(Option::is_none) {
        let mut b = w.batch();
        for n in 0..CLIENTS {
            b.add(&inbound(n, 0)).unwrap();
            b.add(&outbound(n, 0)).unwrap();
        }
        b.commit().unwrap();
        versions = vec![Some(0); CLIENTS as usize];
    }
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut i = 0u32;
    let mut dp = None;
    let mut waits = 0u64;
    while Instant::now() < deadline {
        if dp.is_none() {
            dp = DpSegment::attach(&dir, "t").ok();
        }
        let readers = match dp.as_ref().and_then(|d| d.min_seen()) {
            Some(g) => Readers::MinSeen(g),
            None => Readers::None,
        };
        w.housekeeping(0, readers);
        let n = i % CLIENTS;
        let v = versions[n as usize].unwrap();
        let mut b = w.batch();
        let done = b.replace(&inbound(n, v + 1)).is_ok()
            && b.remove(Direction::Outbound, outbound(n, v).spi).is_ok()
            && b.add(&outbound(n, v + 1)).is_ok();
        if !done {
            // No free record until the reader passes a quiescent point: roll back, wait.
            drop(b);
            waits += 1;
            std::thread::sleep(Duration::from_micros(50));
            continue;
        }
        b.commit().unwrap();
        versions[n as usize] = Some(v + 1);
        i += 1;
    }
    println!("waits {waits}");
    println!("changes {i}");
}

/// Reader role: a dataplane worker checking every snapshot.
#[test]
#[ignore]
fn child_reader() {
    let Some((dir, secs)) = env_dir() else { return };
    let r = loop {
        match Reader::attach(&dir, "t") {
            Ok(r) => break r,
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    };
    let dp = DpSegment::open_or_create(&dir, "t", DpLayout::new(1, 64, 64).unwrap(), r.db().created_ns()).unwrap();
    dp.register_worker(0, 0, || r.snapshot().generation);
    let deadline = Instant::now() + Duration::from_secs(secs);
    let (mut checks, mut snapshots, mut gens) = (0u64, 0u64, std::collections::BTreeSet::new());
    while Instant::now() < deadline {
        let s = r.snapshot();
        dp.quiescent(0, s.generation, 0);
        snapshots += 1;
        gens.insert(s.generation);
        for n in 0..CLIENTS {
            let f = r
                .inbound(&s, 0x0010_0000 + n)
                .unwrap_or_else(|| panic!("gen {}: inbound SA of client {n} missing", s.generation));
            let p = r.decode(f.slot).unwrap_or_else(|e| panic!("gen {}: inbound of {n}: {e}", s.generation));
            let (pn, pv) = version_of(&p.name).unwrap();
            assert!(pn == n && is_version(&p, n, pv), "gen {}: half-written inbound SA: {}", s.generation, p.name);
            assert_eq!(r.uid(f.slot), Some(f.uid), "record reused while in use");
            let o = r
                .outbound(&s, &std::net::IpAddr::V4(client_addr(n)))
                .unwrap_or_else(|| panic!("gen {}: outbound SA of client {n} missing", s.generation));
            let q = r.decode(o.slot).unwrap_or_else(|e| panic!("gen {}: outbound of {n}: {e}", s.generation));
            let (qn, qv) = version_of(&q.name).unwrap();
            assert!(
                qn == n && is_version(&q, n, qv) && q.spi == outbound(n, qv).spi,
                "gen {}: half-written outbound: {}",
                s.generation,
                q.name
            );
            checks += 2;
        }
    }
    dp.unregister_worker(0);
    println!("checks {checks} snapshots {snapshots} generations {}", gens.len());
}

/// A table with version 0 of every client's SAs.
fn populated(dir: &Path) {
    let mut w = Writer::create(dir, "t", 8 * CLIENTS as usize).unwrap();
    let mut b = w.batch();
    for n in 0..CLIENTS {
        b.add(&inbound(n, 0)).unwrap();
        b.add(&outbound(n, 0)).unwrap();
    }
    b.commit().unwrap();
}

fn finish(c: Child, what: &str) -> String {
    let out = c.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{what} failed:\n{text}");
    text
}

fn number_after(text: &str, word: &str) -> u64 {
    text.split_whitespace().skip_while(|w| *w != word).nth(1).and_then(|n| n.parse().ok()).unwrap_or(0)
}

#[test]
fn a_reader_process_never_sees_a_missing_or_half_written_sa() {
    let d = TmpDir::new("two");
    populated(&d.0);
    let reader = child("child_reader", &d.0, 4);
    std::thread::sleep(Duration::from_millis(200));
    let writer = child("child_writer", &d.0, 3);
    let w = finish(writer, "writer");
    let r = finish(reader, "reader");
    let changes = number_after(&w, "changes");
    let gens = number_after(&r, "generations");
    assert!(changes > 1000, "the writer made {changes} changes");
    assert!(gens > 100, "the reader saw {gens} generations: it ran while the writer did");
    assert!(number_after(&r, "checks") > 10_000);
}

#[test]
fn kill_9_at_random_points_leaves_a_consistent_table() {
    let d = TmpDir::new("kill");
    populated(&d.0);
    let reader = child("child_reader", &d.0, 8);
    std::thread::sleep(Duration::from_millis(200));
    let mut seed = rand_u32();
    for round in 0..20 {
        let mut w = child("child_writer", &d.0, 30);
        seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
        std::thread::sleep(Duration::from_millis(20 + u64::from(seed >> 16) % 150));
        rustix::process::kill_process(rustix::process::Pid::from_child(&w), rustix::process::Signal::KILL).unwrap();
        let status = w.wait().unwrap();
        assert!(!status.success(), "round {round}: the writer was killed");
        // A new writer attaches, recovers, and finds exactly one whole version of every
        // client's two SAs.
        let w = Writer::open(&d.0, "t").unwrap_or_else(|e| panic!("round {round}: {e}"));
        let installed = w.installed();
        assert_eq!(installed.len(), 2 * CLIENTS as usize, "round {round}");
        for i in &installed {
            let (n, v) = version_of(&i.params.name).unwrap();
            assert!(is_version(&i.params, n, v), "round {round}: {}", i.params.name);
        }
    }
    let r = finish(reader, "reader");
    assert!(number_after(&r, "generations") > 20, "{r}");
}
