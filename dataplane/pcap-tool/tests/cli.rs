//! natt-pcap as operators run it: the shipped samples give the documented verdicts,
//! configuration errors name file, SA and field and process nothing, bad captures are
//! refused clearly, and a capture cut short is processed up to the cut.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_natt-pcap"))
}

fn samples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../samples")
}

fn lines(out: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(out).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn field<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("")
}

#[test]
fn samples_decap_to_the_documented_verdicts() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("dec.pcap");
    let o = bin()
        .args(["decap", "-c"])
        .arg(samples().join("headend.json"))
        .arg("-r")
        .arg(samples().join("natt.pcap"))
        .arg("-w")
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let l = lines(&o.stdout);
    let got: Vec<String> = l
        .iter()
        .map(|v| match field(v, "verdict") {
            "accepted" => format!("accepted:{}", field(v, "sa")),
            "dropped" => format!("dropped:{}", field(v, "reason")),
            "punted" => format!("punted:{}", field(v, "punt")),
            other => other.to_owned(),
        })
        .collect();
    let want = [
        "punted:ike",
        "punted:ike",
        "keepalive",
        "accepted:alice-in",
        "accepted:alice-in",
        "accepted:bob-in",
        "accepted:bob-in",
        "accepted:carol-in",
        "accepted:dave-in",
        "held",
        "accepted:alice-in",
        "accepted:alice-in",
        "dropped:replay_duplicate",
        "dropped:auth_failed",
        "dropped:selector_mismatch",
        "dropped:no_sa",
        "dropped:ah_unsupported",
        "dropped:natt_malformed",
    ];
    assert_eq!(got, want);
    // The NAT rebinding of packet 12 is reported and moves alice's outbound SA.
    let ev = &l[11]["events"][0];
    assert_eq!(field(ev, "event"), "nat_mapping_changed");
    assert_eq!(ev["new"]["port"], 41234);
    assert_eq!(field(ev, "updated_spi"), "0x00002001");
    assert_eq!(l[8]["mode"], "transport");
    // Eight decapsulated packets in the output capture (24-byte header, then records).
    let data = std::fs::read(&out).unwrap();
    let mut n = 0;
    let mut at = 24;
    while at + 16 <= data.len() {
        let caplen = u32::from_le_bytes(data[at + 8..at + 12].try_into().unwrap()) as usize;
        at += 16 + caplen;
        n += 1;
    }
    assert_eq!(n, 8);
    let summary: Value = serde_json::from_str(String::from_utf8_lossy(&o.stderr).lines().last().unwrap()).unwrap();
    assert_eq!(summary["summary"]["decapsulated"], 8);
    assert_eq!(summary["summary"]["reassembled"], 1);
}

#[test]
fn samples_encap() {
    let o = bin()
        .args(["encap", "-c"])
        .arg(samples().join("headend.json"))
        .arg("-r")
        .arg(samples().join("plain.pcap"))
        .output()
        .unwrap();
    assert!(o.status.success());
    let l = lines(&o.stdout);
    let v: Vec<&str> = l.iter().map(|v| field(v, "verdict")).collect();
    assert_eq!(v, ["accepted", "accepted", "accepted", "dropped", "accepted", "punted"]);
    assert_eq!(field(&l[3], "reason"), "no_outbound_sa");
    assert_eq!(l[1]["nat"]["port"], 40001);
    assert_eq!(l[0]["seq"], 1);
}

#[test]
fn configuration_errors_stop_before_any_packet() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.json");
    let text = std::fs::read_to_string(samples().join("headend.json")).unwrap().replacen(
        "\"aes256-gcm\"",
        "\"aes256-gcmm\"",
        1,
    );
    std::fs::write(&cfg, text).unwrap();
    let out = dir.path().join("out.pcap");
    let o = bin()
        .args(["decap", "-c"])
        .arg(&cfg)
        .arg("-r")
        .arg(samples().join("natt.pcap"))
        .arg("-w")
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(
            "bad.json: SA #2 \"bob-in\" (spi 0x00001002), field \"algorithm\": \"aes256-gcmm\" is not supported"
        ),
        "{err}"
    );
    assert!(o.stdout.is_empty(), "no packet was processed");
    assert!(!out.exists(), "no output was written");

    std::fs::write(&cfg, "{\"sas\": [").unwrap();
    let o = bin().args(["check", "-c"]).arg(&cfg).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("bad.json: invalid JSON at line 1"));

    let o = bin().args(["check", "-c"]).arg(dir.path().join("missing.json")).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("missing.json: No such file"));

    // Two ICMP sources of one family: refused before any packet too.
    let o = bin()
        .args(["encap", "-c"])
        .arg(samples().join("headend.json"))
        .arg("-r")
        .arg(samples().join("natt.pcap"))
        .arg("-w")
        .arg(&out)
        .args(["--icmp-source", "10.0.0.1", "--icmp-source", "10.0.0.2"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("--icmp-source 10.0.0.2: one address per family"), "{err}");
    assert!(o.stdout.is_empty() && !out.exists());
}

#[test]
fn bad_captures_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.pcap");
    std::fs::write(&junk, b"this is not a capture at all").unwrap();
    let o = bin().args(["decap", "-c"]).arg(samples().join("headend.json")).arg("-r").arg(&junk).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("junk.pcap: not a pcap or pcapng file"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // A pcap of an unsupported link type (IEEE 802.11 = 105).
    let mut hdr = vec![0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0];
    hdr.extend_from_slice(&105u32.to_le_bytes());
    let wifi = dir.path().join("wifi.pcap");
    std::fs::write(&wifi, hdr).unwrap();
    let o = bin().args(["decap", "-c"]).arg(samples().join("headend.json")).arg("-r").arg(&wifi).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("is not supported; capture with Ethernet framing"));
}

#[test]
fn a_capture_cut_short_is_processed_up_to_the_cut() {
    // tcpdump killed while writing leaves half a record at the end: the packets before
    // it are processed, written and summarised as usual, then the cut is named (status 1).
    let dir = tempfile::tempdir().unwrap();
    let full = std::fs::read(samples().join("natt.pcap")).unwrap();
    // Where each record starts (24-byte file header, 16-byte record headers).
    let mut starts = Vec::new();
    let mut at = 24;
    while at + 16 <= full.len() {
        starts.push(at);
        at += 16 + u32::from_le_bytes(full[at + 8..at + 12].try_into().unwrap()) as usize;
    }
    assert!(starts.len() > 6, "{} records", starts.len());
    let cut = dir.path().join("cut.pcap");
    std::fs::write(&cut, &full[..starts[5] + 30]).unwrap();
    let out = dir.path().join("out.pcap");
    let run = |input: &Path| {
        bin()
            .args(["decap", "-c"])
            .arg(samples().join("headend.json"))
            .arg("-r")
            .arg(input)
            .arg("-w")
            .arg(&out)
            .output()
            .unwrap()
    };
    let whole = run(&samples().join("natt.pcap"));
    assert!(whole.status.success());
    let o = run(&cut);
    assert_eq!(o.status.code(), Some(1));
    let got = lines(&o.stdout);
    assert_eq!(got, lines(&whole.stdout)[..5].to_vec(), "the five whole packets, as in the full run");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("\"summary\""), "{err}");
    assert!(err.contains("cut.pcap: the capture ends inside packet 6 (cut short"), "{err}");
    // What they produced is in the output file.
    let accepted = got.iter().filter(|l| field(l, "verdict") == "accepted").count();
    assert!(accepted > 0);
    let written = std::fs::read(&out).unwrap();
    let mut n = 0;
    let mut at = 24;
    while at + 16 <= written.len() {
        n += 1;
        at += 16 + u32::from_le_bytes(written[at + 8..at + 12].try_into().unwrap()) as usize;
    }
    assert_eq!((n, at), (accepted, written.len()));
}

#[test]
fn check_never_prints_keys() {
    let o = bin().args(["check", "-c"]).arg(samples().join("headend.json")).output().unwrap();
    assert!(o.status.success());
    let text = String::from_utf8_lossy(&o.stdout);
    let cfg: Value = serde_json::from_str(&std::fs::read_to_string(samples().join("headend.json")).unwrap()).unwrap();
    for sa in cfg["sas"].as_array().unwrap() {
        assert!(!text.contains(sa["key"].as_str().unwrap()));
    }
    assert_eq!(lines(&o.stdout).len(), 8);
}
