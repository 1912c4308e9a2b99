//! natt-control as operators and scripts run it: with and without the daemon, what it
//! installs is what the dataplane's reader sees; errors name file, SA and field and
//! change nothing; keys never appear in output; the daemon restarts onto the table it
//! left; events from the dataplane segment are logged and streamed.

use natt_engine::event::{Event, EventKind, Limit};
use natt_engine::sa::{Direction, Endpoint};
use natt_sadb::Reader;
use natt_sadb::dp::DpSegment;
use natt_sadb::layout::DpLayout;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

struct Env {
    dir: tempfile::TempDir,
    name: String,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        Env { dir, name: "t".into() }
    }

    fn shm(&self) -> PathBuf {
        self.dir.path().join("shm")
    }

    fn cmd(&self) -> Command {
        std::fs::create_dir_all(self.shm()).unwrap();
        let mut c = Command::new(env!("CARGO_BIN_EXE_natt-control"));
        c.arg("--name")
            .arg(&self.name)
            .arg("--shm-dir")
            .arg(self.shm())
            .arg("--state-dir")
            .arg(self.dir.path().join("state"));
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().unwrap()
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        let o = self.run(&a);
        assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).unwrap()
    }

    fn file(&self, name: &str, v: &Value) -> String {
        let p = self.dir.path().join(name);
        std::fs::write(&p, serde_json::to_string_pretty(v).unwrap()).unwrap();
        p.display().to_string()
    }

    fn reader(&self) -> Reader {
        Reader::attach(&self.shm(), &self.name).unwrap()
    }

    fn daemon(&self) -> Daemon {
        self.daemon_with(&["--quiet", "--http", "127.0.0.1:0"], Stdio::null())
    }

    /// `natt-control run` with these options, its stdout as given and stderr piped,
    /// once its socket answers.
    fn daemon_with(&self, opts: &[&str], stdout: Stdio) -> Daemon {
        let child = self
            .cmd()
            .args(["run", "--tick-ms", "2"])
            .args(opts)
            .stdout(stdout)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let sock = self.dir.path().join("state").join("t.sock");
        let t = Instant::now();
        while std::os::unix::net::UnixStream::connect(&sock).is_err() {
            assert!(t.elapsed() < Duration::from_secs(10), "the daemon did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        Daemon(child)
    }
}

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn key(seed: u8) -> String {
    (0..20).map(|i| format!("{:02x}", seed.wrapping_mul(13).wrapping_add(i))).collect()
}

fn sa(name: &str, spi: u32, dir: &str, client: u8, k: u8) -> Value {
    let mut v = json!({"name": name, "spi": spi, "direction": dir, "algorithm": "aes128-gcm", "key": key(k),
        "local": "203.0.113.1", "peer": "198.51.100.7", "encap": {"local_port": 4500, "peer_port": 4500},
        "selectors": {"local": ["10.0.0.0/16"], "peer": [format!("10.8.0.{client}/32")]}});
    if dir == "inbound" {
        v["paired_spi"] = (spi + 0x1000).into();
    }
    v
}

fn config(clients: &[(u8, u8)]) -> Value {
    let mut sas = Vec::new();
    for &(c, k) in clients {
        sas.push(sa(&format!("c{c}-in"), 0x1000 + u32::from(c), "inbound", c, k));
        sas.push(sa(&format!("c{c}-out"), 0x2000 + u32::from(c), "outbound", c, k + 100));
    }
    json!({"sas": sas})
}

fn names(v: &Value) -> Vec<String> {
    v.as_array().unwrap().iter().map(|x| x["name"].as_str().unwrap().to_owned()).collect()
}

fn visible_names(e: &Env) -> Vec<String> {
    let mut n: Vec<String> =
        e.json(&["list"])["sas"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap().to_owned()).collect();
    n.sort();
    n
}

fn check_declarative_apply(e: &Env) {
    let f1 = e.file("a.json", &config(&[(1, 1), (2, 2), (3, 3)]));
    let r = e.json(&["apply", &f1]);
    assert_eq!(names(&r["added"]).len(), 6);
    let rd = e.reader();
    let s = rd.snapshot();
    assert_eq!(rd.decode(rd.inbound(&s, 0x1002).unwrap().slot).unwrap().name, "c2-in");
    assert_eq!(rd.decode(rd.outbound(&s, &"10.8.0.3".parse().unwrap()).unwrap().slot).unwrap().name, "c3-out");
    // Same file again: nothing to do.
    let r = e.json(&["apply", &f1]);
    assert_eq!(r["unchanged"], 6);
    // Client 2 gone, client 3 rekeyed in place (same SPIs, new keys), client 4 new.
    let f2 = e.file("b.json", &config(&[(1, 1), (3, 9), (4, 4)]));
    let dry = e.json(&["apply", &f2, "--dry-run"]);
    assert_eq!(dry["dry_run"], true);
    assert_eq!(visible_names(e).len(), 6, "a dry run changes nothing");
    let r = e.json(&["apply", &f2, "--grace", "0.5"]);
    assert_eq!(names(&r["added"]), ["c4-in", "c4-out"]);
    assert_eq!(names(&r["replaced"]), ["c3-in", "c3-out"]);
    assert_eq!(names(&r["removed"]), ["c2-out"]);
    assert_eq!(names(&r["draining"]), ["c2-in"]);
    let s = rd.snapshot();
    assert!(rd.inbound(&s, 0x1002).is_some(), "draining inbound SAs still accept");
    assert!(rd.outbound(&s, &"10.8.0.2".parse().unwrap()).is_none());
    assert_eq!(rd.decode(rd.inbound(&s, 0x1003).unwrap().slot).unwrap().key.expose(), &hex_decode(&key(9))[..16]);
    std::thread::sleep(Duration::from_millis(600));
    e.json(&["list"]); // keeps house (or the daemon does)
    let t = Instant::now();
    while rd.inbound(&rd.snapshot(), 0x1002).is_some() {
        assert!(t.elapsed() < Duration::from_secs(5), "grace period did not end");
        std::thread::sleep(Duration::from_millis(20));
        e.json(&["list"]);
    }
    assert_eq!(visible_names(e), ["c1-in", "c1-out", "c3-in", "c3-out", "c4-in", "c4-out"]);
}

fn hex_decode(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

#[test]
fn declarative_apply_without_a_daemon() {
    check_declarative_apply(&Env::new());
}

#[test]
fn declarative_apply_through_the_daemon() {
    let e = Env::new();
    let _d = e.daemon();
    check_declarative_apply(&e);
}

#[test]
fn rekey_is_make_before_break() {
    let e = Env::new();
    let _d = e.daemon();
    e.json(&["apply", &e.file("a.json", &config(&[(1, 1)]))]);
    let rd = e.reader();
    let before = rd.snapshot();
    let mut new_in = sa("c1-in-2", 0x1101, "inbound", 1, 7);
    new_in["paired_spi"] = 0x2101.into();
    let new = json!({"sas": [new_in, sa("c1-out-2", 0x2101, "outbound", 1, 8)]});
    let r = e.json(&["rekey", "--in", "0x1001", "--out", "0x2001", &e.file("new.json", &new), "--grace", "30"]);
    assert_eq!(names(&r["added"]), ["c1-in-2", "c1-out-2"]);
    assert_eq!(names(&r["removed"]), ["c1-out"]);
    assert_eq!(names(&r["draining"]), ["c1-in"]);
    let s = rd.snapshot();
    assert!(s.generation > before.generation);
    assert!(rd.inbound(&s, 0x1001).is_some() && rd.inbound(&s, 0x1101).is_some(), "both inbound SAs accept");
    assert_eq!(rd.decode(rd.outbound(&s, &"10.8.0.1".parse().unwrap()).unwrap().slot).unwrap().name, "c1-out-2");
    // A rekey file that is not one inbound and one outbound SA is refused.
    let mut lone = sa("x", 0x3000, "inbound", 9, 1);
    lone.as_object_mut().unwrap().remove("paired_spi");
    let bad = e.file("bad.json", &json!({"sas": [lone]}));
    let o = e.run(&["rekey", "--in", "0x1101", "--out", "0x2101", &bad]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("needs exactly one inbound and one outbound SA"));
}

#[test]
fn the_daemons_socket_answers_each_line_of_json_with_one_line_written_at_once() {
    // The protocol an IKE daemon's helper speaks (README, "The daemon's socket"): one
    // request per line, one answer per line, in order; each answer in one write, so
    // that one read takes all of it (answers written token by token cost a system call
    // and a wake-up of the client per token).
    use std::io::{BufRead, BufReader, Read, Write};
    let e = Env::new();
    let _d = e.daemon();
    let mut c = std::os::unix::net::UnixStream::connect(e.dir.path().join("state").join("t.sock")).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let text = serde_json::to_string(&config(&[(1, 1)])).unwrap();
    writeln!(c, "{}", json!({"op": "apply", "file": "a.json", "text": text, "grace_ns": 0})).unwrap();
    let mut buf = vec![0u8; 1 << 16];
    let n = c.read(&mut buf).unwrap();
    assert!(n > 0 && buf[n - 1] == b'\n', "one read, one whole answer: {:?}", String::from_utf8_lossy(&buf[..n]));
    let v: Value = serde_json::from_slice(&buf[..n]).unwrap();
    assert_eq!(
        (v["ok"].as_bool(), names(&v["result"]["added"])),
        (Some(true), vec!["c1-in".to_owned(), "c1-out".to_owned()])
    );
    for _ in 0..20 {
        writeln!(c, "{}", json!({"op": "show", "spi": 0x1001, "direction": "in"})).unwrap();
        let n = c.read(&mut buf).unwrap();
        assert!(n > 0 && buf[n - 1] == b'\n', "one read, one whole answer: {:?}", String::from_utf8_lossy(&buf[..n]));
        assert_eq!(serde_json::from_slice::<Value>(&buf[..n]).unwrap()["result"]["name"], "c1-in");
    }

    // Several requests in one write: the answers come back in order.
    let mut new_in = sa("c1-in-2", 0x1101, "inbound", 1, 7);
    new_in["paired_spi"] = 0x2101.into();
    let new = json!({"sas": [new_in, sa("c1-out-2", 0x2101, "outbound", 1, 8)]}).to_string();
    let reqs = [
        json!({"op": "rekey", "old_in": 0x1001, "old_out": "0x00002001", "file": "new.json", "text": new, "grace_ns": 0}),
        json!({"op": "show", "spi": "0x00002101", "direction": "out"}),
        json!({"op": "del", "spi": 0x4242}),
        json!({"op": "no-such-request"}),
    ];
    let mut batch = String::new();
    for r in &reqs {
        batch += &format!("{r}\n");
    }
    batch += "not json\n";
    c.write_all(batch.as_bytes()).unwrap();
    let mut lines = BufReader::new(&c).lines();
    let mut next = || serde_json::from_str::<Value>(&lines.next().unwrap().unwrap()).unwrap();
    let rekey = next();
    assert_eq!(rekey["ok"], true, "{rekey}");
    assert_eq!(
        (names(&rekey["result"]["added"]), names(&rekey["result"]["removed"])),
        (vec!["c1-in-2".to_owned(), "c1-out-2".to_owned()], vec!["c1-out".to_owned(), "c1-in".to_owned()])
    );
    let show = next();
    assert_eq!((show["ok"].as_bool(), show["result"]["name"].as_str()), (Some(true), Some("c1-out-2")), "{show}");
    assert!(show.to_string().find(&key(8)[..16]).is_none(), "no key in an answer");
    let del = next();
    assert_eq!((del["ok"].as_bool(), del["usage"].as_bool()), (Some(false), Some(true)), "{del}");
    assert!(del["error"].as_str().unwrap().contains("no SA with SPI 0x00004242 is installed"));
    let bogus = next();
    assert!(bogus["error"].as_str().unwrap().contains("unknown request \"no-such-request\""), "{bogus}");
    let malformed = next();
    assert!(malformed["error"].as_str().unwrap().starts_with("malformed request"), "{malformed}");
    assert_eq!(visible_names(&e), ["c1-in-2", "c1-out-2"]);
}

#[test]
fn errors_name_the_problem_and_change_nothing() {
    let e = Env::new();
    e.json(&["apply", &e.file("a.json", &config(&[(1, 1)]))]);
    let g = e.reader().snapshot().generation;
    let mut bad = config(&[(1, 1), (2, 2)]);
    bad["sas"][3]["selectors"]["peer"] = json!(["10.8.0.1/32"]);
    let f = e.file("bad.json", &bad);
    let o = e.run(&["apply", &f]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("bad.json: SA #3 \"c2-out\" (spi 0x00002002), field \"selectors.peer\": 10.8.0.1/32 is already the selector of outbound SA #1"), "{err}");
    let mut big = config(&[(5, 5)]);
    big["sas"][0]["selectors"]["local"] = json!((0..8).map(|i| format!("10.{i}.0.0/16")).collect::<Vec<_>>());
    let o = e.run(&["apply", &e.file("big.json", &big)]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("big.json: SA #0 \"c5-in\" (spi 0x00001005), field \"selectors\": 9 traffic selectors"),
        "{err}"
    );
    let o = e.run(&["del", "0x4242"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no SA with SPI 0x00004242 is installed"));
    let o = e.run(&["apply", "/nonexistent.json"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("/nonexistent.json: No such file"));
    // Nothing changed: same SAs (the reader sees the same generation's content).
    assert_eq!(visible_names(&e), ["c1-in", "c1-out"]);
    let s = e.reader().snapshot();
    assert!(s.generation >= g);
}

#[test]
fn keys_never_appear_in_output() {
    let e = Env::new();
    let cfg = config(&[(1, 1), (2, 2)]);
    let f = e.file("a.json", &cfg);
    let mut outputs = Vec::new();
    for args in [
        vec!["apply", &f],
        vec!["list"],
        vec!["--json", "list"],
        vec!["show", "0x1001"],
        vec!["--json", "show", "0x2002"],
        vec!["--json", "apply", &f],
    ] {
        let o = e.run(&args);
        assert!(o.status.success());
        outputs.push(String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr));
    }
    for sa in cfg["sas"].as_array().unwrap() {
        let k = sa["key"].as_str().unwrap();
        for out in &outputs {
            assert!(!out.contains(&k[..16]), "a key leaked into: {out}");
        }
    }
}

#[test]
fn a_killed_daemon_restarts_onto_the_table_it_left() {
    let e = Env::new();
    let mut d = e.daemon();
    e.json(&["apply", &e.file("a.json", &config(&[(1, 1), (2, 2)]))]);
    rustix::process::kill_process(rustix::process::Pid::from_child(&d.0), rustix::process::Signal::KILL).unwrap();
    d.0.wait().unwrap();
    assert_eq!(visible_names(&e), ["c1-in", "c1-out", "c2-in", "c2-out"], "read back without a daemon");
    let _d = e.daemon();
    assert_eq!(visible_names(&e), ["c1-in", "c1-out", "c2-in", "c2-out"], "and through a new daemon");
    let rd = e.reader();
    assert!(rd.inbound(&rd.snapshot(), 0x1002).is_some());
}

fn push_events(shm: &Path, name: &str, created: u64) -> DpSegment {
    let dp = DpSegment::open_or_create(shm, name, DpLayout::new(2, 64, 64).unwrap(), created).unwrap();
    let mut p = dp.producer(1);
    p.push(
        &Event {
            spi: 0x1001,
            direction: Direction::Inbound,
            kind: EventKind::NatMappingChanged {
                old: Endpoint { addr: "198.51.100.7".parse().unwrap(), port: 4500 },
                new: Endpoint { addr: "198.51.100.7".parse().unwrap(), port: 41234 },
                updated: Some(0x2001),
            },
        },
        1_700_000_000_000_000_000,
    );
    p.push(
        &Event { spi: 0x2001, direction: Direction::Outbound, kind: EventKind::SoftLifetime(Limit::Bytes) },
        1_700_000_001_000_000_000,
    );
    dp
}

#[test]
fn events_are_logged_and_streamed() {
    let e = Env::new();
    e.json(&["apply", &e.file("a.json", &config(&[(1, 1)]))]);
    let dp = push_events(&e.shm(), "t", e.reader().db().created_ns());
    // No daemon: `events` takes them from the rings itself.
    let o = e.run(&["--json", "events"]);
    assert!(o.status.success());
    let lines: Vec<Value> =
        String::from_utf8_lossy(&o.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["event"], "nat_mapping_changed");
    assert_eq!(lines[0]["sa"], "c1-in");
    assert_eq!(lines[0]["new"]["port"], 41234);
    assert_eq!(lines[0]["worker"], 1);
    assert_eq!(lines[1]["event"], "soft_lifetime");
    assert_eq!(lines[1]["sa"], "c1-out");
    let human = String::from_utf8_lossy(&e.run(&["events"]).stdout).to_string();
    assert!(human.contains("inbound SA 0x00001001 (c1-in): NAT mapping changed 198.51.100.7:4500 -> 198.51.100.7:41234, outbound 0x00002001 follows"), "{human}");
    // With the daemon: it takes new events; `events --follow` streams them.
    let _d = e.daemon();
    let mut follow = e.cmd().args(["--json", "events", "--follow"]).stdout(Stdio::piped()).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    dp.producer(0).push(
        &Event { spi: 0x2001, direction: Direction::Outbound, kind: EventKind::SeqExhausted },
        1_700_000_002_000_000_000,
    );
    let mut out = follow.stdout.take().unwrap();
    let got = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let g2 = got.clone();
    std::thread::spawn(move || {
        use std::io::Read;
        let mut buf = [0u8; 4096];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            g2.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    let t = Instant::now();
    while !got.lock().unwrap().contains("seq_exhausted") {
        assert!(t.elapsed() < Duration::from_secs(5), "followed output: {}", got.lock().unwrap());
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = follow.kill();
    let _ = follow.wait();
    assert_eq!(got.lock().unwrap().lines().count(), 3, "the two earlier events, then the new one");
}

#[test]
fn a_daemon_whose_output_is_gone_keeps_working() {
    // Whoever read its stdout and stderr went away (a pipe's reader exited): the events
    // it mirrors to stdout and the notes it writes to stderr fail to write. It must go
    // on serving, ending grace periods and logging events to its file (a panicked
    // `println!` stopped it, and every rekey with it).
    let e = Env::new();
    e.json(&["apply", &e.file("a.json", &config(&[(1, 1), (2, 2)]))]);
    let dp = push_events(&e.shm(), "t", e.reader().db().created_ns());
    let mut d = e.daemon_with(&["--http", "off"], Stdio::piped());
    drop(d.0.stdout.take());
    drop(d.0.stderr.take());
    // An event to mirror on stdout, and a grace period whose end it notes on stderr.
    dp.producer(0).push(
        &Event { spi: 0x2001, direction: Direction::Outbound, kind: EventKind::SeqExhausted },
        1_700_000_002_000_000_000,
    );
    let o = e.run(&["del", "0x1001", "--direction", "in", "--grace", "0.2"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::thread::sleep(Duration::from_millis(800));
    assert!(d.0.try_wait().unwrap().is_none(), "the daemon stopped: {:?}", d.0.try_wait());
    let left: Vec<String> = visible_names(&e);
    assert_eq!(left, ["c1-out", "c2-in", "c2-out"], "the grace period ended");
    let log = std::fs::read_to_string(e.dir.path().join("state").join("t.events.jsonl")).unwrap();
    assert_eq!(log.lines().filter(|l| l.contains("seq_exhausted")).count(), 1, "{log}");
    assert_eq!(log.lines().count(), 3, "{log}");
    // And a request still gets its answer.
    let o = e.run(&["--json", "show", "0x2002"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}
