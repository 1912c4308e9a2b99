//! No IV twice across dataplane restarts: a stand-in dataplane process encrypts with an
//! outbound SA from the shared table, recording sequence-number reservations in the
//! dataplane segment through the engine's `Host`. It is killed with SIGKILL at random
//! moments; every restart must begin above every number the previous run could have
//! used.

mod common;

use common::*;
use natt_engine::event::SeqReservation;
use natt_engine::sa::Direction;
use natt_engine::{Engine, EngineConfig, Event, Host, OutResult, PktBuf};
use natt_sadb::dp::{DpSegment, Reservations};
use natt_sadb::layout::DpLayout;
use natt_sadb::{Reader, Writer};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

struct ShmHost<'a> {
    resv: Reservations<'a>,
}

impl Host for ShmHost<'_> {
    fn event(&mut self, _: Event) {}
    fn reserve_seq(&mut self, r: SeqReservation) -> bool {
        self.resv.reserve(r.spi, r.key_fp, r.up_to)
    }
}

fn frame() -> Vec<u8> {
    let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 8, 0];
    let mut ip = vec![0x45, 0, 0, 28, 0, 1, 0, 0, 64, 17, 0, 0, 10, 0, 0, 5];
    ip.extend_from_slice(&client_addr(1).octets());
    let c = natt_engine::wire::checksum::checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    ip.extend_from_slice(&[0, 53, 0, 53, 0, 8, 0, 0]);
    f.extend_from_slice(&ip);
    f
}

/// The stand-in dataplane.
#[test]
#[ignore]
fn child_dataplane() {
    let Some(dir) = std::env::var_os("NATT_TEST_DIR") else { return };
    let dir = std::path::PathBuf::from(dir);
    let r = Reader::attach(&dir, "t").unwrap();
    let dp = DpSegment::open_or_create(&dir, "t", DpLayout::new(1, 64, 1024).unwrap(), r.db().created_ns()).unwrap();
    let s = r.snapshot();
    let f = r.outbound(&s, &std::net::IpAddr::V4(client_addr(1))).unwrap();
    let p = r.decode(f.slot).unwrap();
    let spi = p.spi;
    let mut e: Engine = Engine::with_sas(EngineConfig::default(), [p]).unwrap();
    let fp = e.sa(Direction::Outbound, spi).unwrap().rt.key_fp;
    if let Some(floor) = dp.reservations().get(fp) {
        e.resume_above(Direction::Outbound, spi, floor);
    }
    let mut host = ShmHost { resv: dp.reservations() };
    let f = frame();
    let mut first = true;
    // Never outlive a parent that failed before killing us.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        let mut pkts: Vec<_> = (0..32).map(|_| PktBuf::from_frame(&f, 128, 64)).collect();
        let mut res = vec![OutResult::default(); 32];
        e.encap_burst(&mut pkts, &mut res, &mut host);
        if first {
            println!("NATT-FIRST {}", res[0].seq);
            first = false;
        }
    }
}

#[test]
fn restarts_resume_above_every_number_possibly_used() {
    let d = TmpDir::new("nonce");
    let mut w = Writer::create(&d.0, "t", 16).unwrap();
    let mut b = w.batch();
    b.add(&outbound(1, 0)).unwrap();
    b.commit().unwrap();
    let fp = {
        let p = outbound(1, 0);
        natt_engine::crypto::key_fingerprint(p.key.expose(), &p.salt)
    };
    let mut previous: Option<u64> = None;
    let mut seed = rand_u32();
    for round in 0..6 {
        let mut c = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "child_dataplane", "--ignored", "--nocapture", "--test-threads=1"])
            .env("NATT_TEST_DIR", &d.0)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        let mut out = BufReader::new(c.stdout.take().unwrap());
        loop {
            line.clear();
            assert!(out.read_line(&mut line).unwrap() > 0, "round {round}: the stand-in died");
            if line.contains("NATT-FIRST ") {
                break;
            }
        }
        let first: u64 = line.split("NATT-FIRST ").nth(1).unwrap().trim().parse().unwrap();
        match previous {
            None => assert_eq!(first, 1),
            Some(reserved) => {
                assert!(first > reserved, "round {round}: started at {first}, but up to {reserved} may have been used")
            }
        }
        seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
        std::thread::sleep(Duration::from_millis(30 + u64::from(seed >> 16) % 200));
        rustix::process::kill_process(rustix::process::Pid::from_child(&c), rustix::process::Signal::KILL).unwrap();
        c.wait().unwrap();
        let dp = DpSegment::attach(&d.0, "t").unwrap();
        let reserved = dp.reservations().get(fp).expect("a reservation was recorded");
        assert!(reserved >= first, "round {round}");
        previous = Some(reserved);
    }
    // Each restart begins a fresh block above everything reserved before.
    assert!(previous.unwrap() >= 6 * natt_engine::outbound::SEQ_BLOCK, "every restart used a new block");
}
