//! The SA database in one process: writer batches against reader snapshots.

mod common;

use common::*;
use natt_engine::sa::Direction;
use natt_engine::sa::config::parse_sa;
use natt_sadb::layout::SadbLayout;
use natt_sadb::{Reader, Readers, WriteError, Writer};
use serde_json::json;

fn ip(s: &str) -> std::net::IpAddr {
    s.parse().unwrap()
}

#[test]
fn lookups_by_spi_and_longest_prefix() {
    let d = TmpDir::new("lookup");
    let mut w = Writer::create(&d.0, "t", 64).unwrap();
    let r = Reader::attach(&d.0, "t").unwrap();
    let wide = parse_sa(&json!({"name": "wide", "spi": 0x7000, "direction": "outbound", "algorithm": "aes256-gcm",
        "key": "00".repeat(36), "local": "203.0.113.1", "peer": "198.51.100.9", "encap": null,
        "selectors": {"local": ["0.0.0.0/0"], "peer": ["11.0.0.0/8", "fd00::/8"]}}))
    .unwrap();
    let mut b = w.batch();
    for n in 1..=3 {
        b.add(&inbound(n, 0)).unwrap();
        b.add(&outbound(n, 0)).unwrap();
    }
    b.add(&wide).unwrap();
    let c = b.commit().unwrap();
    assert_eq!(c.added, 7);
    let s = r.snapshot();
    assert_eq!(s.generation, c.generation);
    let f = r.inbound(&s, 0x0010_0002).unwrap();
    assert!(is_version(&r.decode(f.slot).unwrap(), 2, 0));
    assert!(r.inbound(&s, 0x0010_0009).is_none());
    assert!(r.inbound(&s, outbound(1, 0).spi).is_none(), "outbound SPIs are not inbound");
    let o = r.outbound(&s, &std::net::IpAddr::V4(client_addr(3))).unwrap();
    assert!(is_version(&r.decode(o.slot).unwrap(), 3, 0));
    assert_eq!(r.decode(r.outbound(&s, &ip("11.200.0.1")).unwrap().slot).unwrap().name, "wide");
    assert_eq!(r.decode(r.outbound(&s, &ip("fd00:1::1")).unwrap().slot).unwrap().name, "wide");
    assert!(r.outbound(&s, &ip("12.0.0.1")).is_none());
    assert!(r.outbound(&s, &ip("fe80::1")).is_none());
    assert_eq!(r.decode(r.outbound_by_spi(&s, 0x7000).unwrap().slot).unwrap(), wide);
    assert_eq!(w.installed().len(), 7);
    assert!(w.get(Direction::Inbound, 0x0010_0001).is_some());
}

#[test]
fn a_batch_is_invisible_until_commit_and_snapshots_keep_their_view() {
    let d = TmpDir::new("atomic");
    let mut w = Writer::create(&d.0, "t", 64).unwrap();
    let r = Reader::attach(&d.0, "t").unwrap();
    let mut b = w.batch();
    b.add(&inbound(1, 0)).unwrap();
    b.add(&outbound(1, 0)).unwrap();
    b.commit().unwrap();
    let before = r.snapshot();
    let dst = std::net::IpAddr::V4(client_addr(1));

    // A rekey in one batch: new inbound beside the old, outbound switched.
    let mut b = w.batch();
    b.add(&inbound(2, 0)).unwrap();
    b.replace(&inbound(1, 1)).unwrap();
    b.remove(Direction::Outbound, outbound(1, 0).spi).unwrap();
    b.add(&outbound(1, 1)).unwrap();
    // Not committed: a fresh snapshot sees the old state only.
    let mid = r.snapshot();
    assert_eq!(mid, before);
    assert!(r.inbound(&mid, 0x0010_0002).is_none());
    assert!(is_version(&r.decode(r.inbound(&mid, 0x0010_0001).unwrap().slot).unwrap(), 1, 0));
    assert!(is_version(&r.decode(r.outbound(&mid, &dst).unwrap().slot).unwrap(), 1, 0));
    b.commit().unwrap();
    let after = r.snapshot();
    assert!(after.generation > before.generation);
    assert!(is_version(&r.decode(r.inbound(&after, 0x0010_0001).unwrap().slot).unwrap(), 1, 1));
    assert!(r.inbound(&after, 0x0010_0002).is_some());
    assert!(is_version(&r.decode(r.outbound(&after, &dst).unwrap().slot).unwrap(), 1, 1));
    assert!(r.outbound_by_spi(&after, outbound(1, 0).spi).is_none());
    // A worker still in a burst on the old generation still finds the old SAs, so no
    // packet of a surviving SA is lost across the change; they stay until every worker
    // reports having moved on.
    w.housekeeping(0, Readers::MinSeen(before.generation));
    assert!(is_version(&r.decode(r.inbound(&before, 0x0010_0001).unwrap().slot).unwrap(), 1, 0));
    assert!(is_version(&r.decode(r.outbound(&before, &dst).unwrap().slot).unwrap(), 1, 0));
    assert_eq!(w.retired(), 2);
    w.housekeeping(0, Readers::MinSeen(after.generation));
    assert!(r.inbound(&before, 0x0010_0001).is_none_or(|f| is_version(&r.decode(f.slot).unwrap(), 1, 0)));
    let now = w.generation();
    assert_eq!(w.housekeeping(0, Readers::MinSeen(now)).reclaimed, 2);
}

#[test]
fn an_uncommitted_batch_is_rolled_back() {
    let d = TmpDir::new("rollback");
    let mut w = Writer::create(&d.0, "t", 8).unwrap();
    let r = Reader::attach(&d.0, "t").unwrap();
    let mut b = w.batch();
    b.add(&inbound(1, 0)).unwrap();
    b.commit().unwrap();
    let free = w.free();
    {
        let mut b = w.batch();
        b.add(&inbound(2, 0)).unwrap();
        b.remove(Direction::Inbound, 0x0010_0001).unwrap();
        b.drain(Direction::Inbound, 0x0010_0002, 5).unwrap();
        // Dropped without commit.
    }
    assert_eq!(w.free(), free);
    let s = r.snapshot();
    assert!(r.inbound(&s, 0x0010_0001).is_some());
    assert!(r.inbound(&s, 0x0010_0002).is_none());
    assert_eq!(w.installed().len(), 1);
    // The rolled-back SPI can be added again.
    let mut b = w.batch();
    b.add(&inbound(2, 0)).unwrap();
    b.commit().unwrap();
    assert!(r.inbound(&r.snapshot(), 0x0010_0002).is_some());
}

#[test]
fn conflicts_are_refused_with_names() {
    let d = TmpDir::new("conflict");
    let mut w = Writer::create(&d.0, "t", 4).unwrap();
    let mut b = w.batch();
    b.add(&inbound(1, 0)).unwrap();
    b.add(&outbound(1, 0)).unwrap();
    b.commit().unwrap();
    let mut b = w.batch();
    let e = b.add(&inbound(1, 5)).unwrap_err();
    assert_eq!(e.to_string(), "inbound SPI 0x00100001 is already installed (SA \"in-1-v0\")");
    let e = b.add(&outbound(1, 1)).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "selector {}/32 already selects outbound SA \"out-1-v0\" (SPI 0x{:08x})",
            client_addr(1),
            outbound(1, 0).spi
        )
    );
    let e = b.remove(Direction::Outbound, 0x42).unwrap_err();
    assert_eq!(e.to_string(), "no outbound SA with SPI 0x00000042 is installed");
    b.add(&inbound(2, 0)).unwrap();
    b.add(&inbound(3, 0)).unwrap();
    assert!(matches!(b.add(&inbound(4, 0)).unwrap_err(), WriteError::Full { capacity: 4 }));
    let mut many = inbound(9, 0);
    many.selectors.local = (0..8).map(|i| format!("10.{i}.0.0/16").parse().unwrap()).collect();
    let e = b.add(&many).unwrap_err().to_string();
    assert!(e.contains("9 traffic selectors; the shared SA table holds at most 8"), "{e}");
}

#[test]
fn no_two_installed_sas_share_a_key() {
    let d = TmpDir::new("keys");
    let mut w = Writer::create(&d.0, "t", 16).unwrap();
    let mut b = w.batch();
    b.add(&inbound(1, 0)).unwrap();
    b.commit().unwrap();
    // Another SA with the same key and salt (here: a rekey that forgot to change it).
    let mut twin = inbound(2, 0);
    twin.key = inbound(1, 0).key;
    twin.salt = inbound(1, 0).salt;
    let mut b = w.batch();
    let e = b.add(&twin).unwrap_err().to_string();
    assert_eq!(
        e,
        "SA \"in-2-v0\" (SPI 0x00100002) has the same key and salt as installed SA \"in-1-v0\" (SPI 0x00100001): \
         AES-GCM nonces would repeat between them; give every SA its own key"
    );
    // Replacing an SA by itself with its own key is fine; so is taking a key whose SA the
    // same batch removes.
    b.replace(&inbound(1, 0)).unwrap();
    b.remove(Direction::Inbound, 0x0010_0001).unwrap();
    b.add(&twin).unwrap();
    b.commit().unwrap();
    // And the writer that re-attaches knows the installed keys.
    drop(w);
    let mut w = Writer::open(&d.0, "t").unwrap();
    let mut b = w.batch();
    let mut again = inbound(3, 0);
    again.key = twin.key.clone();
    again.salt = twin.salt;
    assert!(matches!(b.add(&again).unwrap_err(), WriteError::KeyReused { .. }));
    drop(b);
    // What the daemon's reservation sweep keeps: keys an installed SA holds.
    let fp = |p: &natt_engine::sa::SaParams| natt_engine::crypto::key_fingerprint(p.key.expose(), &p.salt);
    assert!(w.holds_key(fp(&twin)));
    assert!(!w.holds_key(fp(&inbound(1, 1))), "never installed");
    let mut b = w.batch();
    b.remove(Direction::Inbound, twin.spi).unwrap();
    b.commit().unwrap();
    assert!(!w.holds_key(fp(&twin)), "removed");
}

#[test]
fn records_are_reused_only_after_every_reader_passed() {
    let d = TmpDir::new("reclaim");
    let mut w = Writer::create(&d.0, "t", 2).unwrap();
    let mut b = w.batch();
    b.add(&inbound(1, 0)).unwrap();
    b.add(&inbound(2, 0)).unwrap();
    b.commit().unwrap();
    let g_before = w.generation();
    let mut b = w.batch();
    b.remove(Direction::Inbound, 0x0010_0001).unwrap();
    b.commit().unwrap();
    assert_eq!((w.free(), w.retired()), (0, 1));
    // A worker still at an old generation blocks reuse.
    assert_eq!(w.housekeeping(0, Readers::MinSeen(g_before)).reclaimed, 0);
    let mut b = w.batch();
    assert!(matches!(b.add(&inbound(3, 0)), Err(WriteError::Full { .. })));
    drop(b);
    // Readers past the removal: unlinked; past the unlink: reusable.
    w.housekeeping(0, Readers::MinSeen(w.generation()));
    let now = w.generation();
    assert_eq!(w.housekeeping(0, Readers::MinSeen(now)).reclaimed, 1);
    let mut b = w.batch();
    b.add(&inbound(3, 0)).unwrap();
    b.commit().unwrap();
}

#[test]
fn grace_periods_end_in_removal() {
    let d = TmpDir::new("grace");
    let mut w = Writer::create(&d.0, "t", 8).unwrap();
    let r = Reader::attach(&d.0, "t").unwrap();
    let mut b = w.batch();
    b.add(&inbound(1, 0)).unwrap();
    b.commit().unwrap();
    let mut b = w.batch();
    b.drain(Direction::Inbound, 0x0010_0001, 1_000).unwrap();
    b.commit().unwrap();
    assert_eq!(w.get(Direction::Inbound, 0x0010_0001).unwrap().remove_at_ns, Some(1_000));
    assert!(w.housekeeping(999, Readers::None).drained.is_empty());
    assert!(r.inbound(&r.snapshot(), 0x0010_0001).is_some());
    assert_eq!(w.housekeeping(1_000, Readers::None).drained, vec![(Direction::Inbound, 0x0010_0001)]);
    assert!(r.inbound(&r.snapshot(), 0x0010_0001).is_none());
}

#[test]
fn churn_compacts_tables_while_lookups_stay_right() {
    let d = TmpDir::new("churn");
    // Small tables so tombstones force several migrations.
    let layout = SadbLayout::new(64, 64, 128).unwrap();
    let mut w = Writer::create_with(&d.0, "t", layout).unwrap();
    let r = Reader::attach(&d.0, "t").unwrap();
    let clients = 20u32;
    let mut b = w.batch();
    for n in 0..clients {
        b.add(&inbound(n, 0)).unwrap();
        b.add(&outbound(n, 0)).unwrap();
    }
    b.commit().unwrap();
    let mut version = vec![0u32; clients as usize];
    let mut flips = 0;
    let mut last_active = None;
    for round in 0..2000u32 {
        let n = (round * 7) % clients;
        let v = version[n as usize] + 1;
        let mut b = w.batch();
        b.replace(&inbound(n, v)).unwrap();
        b.remove(Direction::Outbound, outbound(n, v - 1).spi).unwrap();
        b.add(&outbound(n, v)).unwrap();
        b.commit().unwrap();
        version[n as usize] = v;
        w.housekeeping(0, Readers::None);
        let s = r.snapshot();
        let active = format!("{s:?}");
        if last_active.as_ref().is_some_and(|a: &String| a.contains("active") && *a != active) {
            flips += 1;
        }
        last_active = Some(active);
        for m in 0..clients {
            let want = version[m as usize];
            let f = r.inbound(&s, 0x0010_0000 + m).unwrap_or_else(|| panic!("round {round}: inbound {m} missing"));
            assert!(is_version(&r.decode(f.slot).unwrap(), m, want), "round {round}");
            let o = r.outbound(&s, &std::net::IpAddr::V4(client_addr(m))).unwrap();
            assert!(is_version(&r.decode(o.slot).unwrap(), m, want), "round {round}");
        }
    }
    assert_eq!(w.installed().len(), 2 * clients as usize);
    assert!(flips > 3, "tables were compacted {flips} times");
}

#[test]
fn mismatched_and_corrupt_segments_are_refused_clearly() {
    use std::io::{Seek, SeekFrom, Write};
    let d = TmpDir::new("corrupt");
    drop(Writer::create(&d.0, "t", 8).unwrap());
    let path = d.0.join("t.sadb");
    let err = |s: &str| Reader::attach(&d.0, s).err().unwrap().to_string();
    assert!(err("nope").contains("nope.sadb: no such segment"), "{}", err("nope"));
    assert!(matches!(Writer::create(&d.0, "t", 8), Err(natt_sadb::AttachError::Exists { .. })));
    let patch = |at: u64, bytes: &[u8]| {
        let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.seek(SeekFrom::Start(at)).unwrap();
        f.write_all(bytes).unwrap();
    };
    let orig = std::fs::read(&path).unwrap();
    patch(0, b"GARBAGE!");
    assert!(err("t").contains("not a natt segment"), "{}", err("t"));
    std::fs::write(&path, &orig).unwrap();
    patch(8, &99u32.to_le_bytes());
    assert!(
        err("t").contains(&format!("ABI version 99, this build uses {}", natt_sadb::layout::ABI_VERSION)),
        "{}",
        err("t")
    );
    std::fs::write(&path, &orig).unwrap();
    patch(16, &999u32.to_le_bytes());
    assert!(err("t").contains("record size is 999, expected 384"), "{}", err("t"));
    std::fs::write(&path, &orig).unwrap();
    patch(32, &1000u64.to_le_bytes());
    assert!(err("t").contains("is not a valid layout"), "{}", err("t"));
    std::fs::write(&path, &orig).unwrap();
    std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(orig.len() as u64 - 4096).unwrap();
    assert!(err("t").contains("file size is"), "{}", err("t"));
    std::fs::write(&path, &orig).unwrap();
    assert!(Reader::attach(&d.0, "t").is_ok());
    let _held = Writer::open(&d.0, "t").unwrap();
    assert!(matches!(Writer::open(&d.0, "t"), Err(natt_sadb::AttachError::Locked { .. })));
}

#[test]
fn corrupt_records_and_indexes_are_not_followed() {
    use natt_sadb::layout::RECORD_SIZE;
    use std::io::{Seek, SeekFrom, Write};
    let d = TmpDir::new("badrec");
    let mut w = Writer::create(&d.0, "t", 8).unwrap();
    let mut b = w.batch();
    b.add(&inbound(1, 0)).unwrap();
    b.commit().unwrap();
    let r = Reader::attach(&d.0, "t").unwrap();
    let s = r.snapshot();
    let f = r.inbound(&s, 0x0010_0001).unwrap();
    let path = d.0.join("t.sadb");
    let rec_off = r.db().layout().records as u64 + u64::from(f.slot) * RECORD_SIZE as u64;
    // Scribble the key length: the record is found but refuses to decode.
    let mut file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.seek(SeekFrom::Start(rec_off + natt_sadb::layout::KEY_LEN_OFFSET as u64)).unwrap();
    file.write_all(&200u32.to_le_bytes()).unwrap();
    assert!(r.decode(f.slot).unwrap_err().to_string().contains("key length 200"));
    // An index entry pointing past the records is skipped.
    let spi_off = r.db().layout().spi_in[0] as u64;
    for b in 0..r.db().layout().spi_buckets as u64 {
        file.seek(SeekFrom::Start(spi_off + b * 8)).unwrap();
        file.write_all(&((0x0010_0001u64 << 32) | 0xfff0).to_le_bytes()).unwrap();
    }
    assert!(r.inbound(&r.snapshot(), 0x0010_0001).is_none());
    assert!(r.decode(1 << 30).is_err());
}

#[test]
fn the_journal_names_every_added_record_until_it_is_overwritten() {
    use natt_sadb::layout::{JOURNAL_LEN, Journaled};
    let d = TmpDir::new("journal");
    let mut w = Writer::create(&d.0, "t", 16).unwrap();
    let r = Reader::attach(&d.0, "t").unwrap();
    assert_eq!((r.journal_head(), r.journal_entry(0)), (0, None));
    let mut b = w.batch();
    b.add(&inbound(1, 0)).unwrap();
    b.add(&outbound(1, 0)).unwrap();
    // Named before the batch is published: the builder may prepare it early.
    assert_eq!(r.journal_head(), 2);
    b.commit().unwrap();
    let mut b = w.batch();
    b.replace(&inbound(1, 0)).unwrap();
    b.remove(Direction::Outbound, outbound(1, 0).spi).unwrap();
    b.commit().unwrap();
    assert_eq!(r.journal_head(), 5, "a replace ends a record and adds one, a removal ends one");
    let s = r.snapshot();
    let now_in = r.inbound(&s, inbound(1, 0).spi).unwrap();
    let Some(Journaled::Added { slot: old_slot, uid: old_uid }) = r.journal_entry(0) else { panic!() };
    let Some(Journaled::Added { slot: out_slot, .. }) = r.journal_entry(1) else { panic!() };
    assert_eq!(r.journal_entry(2), Some(Journaled::Ended { slot: old_slot }), "the replaced record's end first");
    let Some(Journaled::Added { slot, uid }) = r.journal_entry(3) else { panic!() };
    assert_eq!((slot, uid), (now_in.slot, now_in.uid));
    assert_eq!(r.journal_entry(4), Some(Journaled::Ended { slot: out_slot }));
    assert!(r.is_live(slot, uid));
    assert!(old_uid < uid);
    assert!(!r.is_live(old_slot, old_uid + 100), "another uid");
    assert_eq!(r.journal_entry(5), None, "not written yet");
    // Only the record with no end, and with its own uid, may be trusted.
    assert!(r.trustable(slot, uid));
    assert!(!r.trustable(slot, uid + 1));
    assert!(!r.trustable(old_slot, old_uid), "ended (and drained away later)");
    assert!(!r.trustable(u32::MAX, uid));
    // Past JOURNAL_LEN additions the oldest entries are gone, and say so.
    for i in 0..JOURNAL_LEN as u32 / 2 {
        let mut b = w.batch();
        b.replace(&inbound(1, i % 2)).unwrap();
        b.replace(&inbound(2, i % 2)).unwrap_or_else(|_| b.add(&inbound(2, i % 2)).unwrap());
        b.commit().unwrap();
        w.housekeeping(0, Readers::None);
    }
    let head = r.journal_head();
    assert_eq!(head, 5 + 2 * JOURNAL_LEN as u64 - 1, "the first round added SA 2, the others replaced it");
    assert_eq!(r.journal_entry(head - JOURNAL_LEN as u64 - 1), None, "overwritten");
    assert!(r.journal_entry(head - JOURNAL_LEN as u64).is_some());
    let Some(Journaled::Added { slot, uid }) = r.journal_entry(head - 1) else { panic!() };
    assert!(r.is_live(slot, uid));
    assert!(r.trustable(slot, uid));
}
