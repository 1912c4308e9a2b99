//! The engine end to end: a client engine encapsulates, the headend decapsulates (and
//! back), across every algorithm, ESN, address family, encapsulation and mode; then NAT
//! mapping, anti-replay, ESN wrap, lifetimes, selectors, TTL, ECN and fragments.

mod common;

use common::*;
use natt_engine::event::{EventKind, ExpiryCause, Limit};
use natt_engine::sa::{Direction, Endpoint};
use natt_engine::{DropReason, EngineConfig, Frame, InVerdict, OutVerdict, PktBuf};
use serde_json::json;

fn inner_frames(v6: bool) -> Vec<Vec<u8>> {
    let (c, s) = if v6 { (CLIENT_IN6, SERVER6) } else { (CLIENT_IN4, SERVER4) };
    [0usize, 1, 2, 3, 17, 64, 500, 1300]
        .iter()
        .map(|&n| {
            let payload: Vec<u8> = (0..n).map(|i| (i * 31 + n) as u8).collect();
            ip_udp_frame(c, s, 5000, 53, &payload, 64)
        })
        .collect()
}

fn reply_frames(v6: bool) -> Vec<Vec<u8>> {
    let (c, s) = if v6 { (CLIENT_IN6, SERVER6) } else { (CLIENT_IN4, SERVER4) };
    [0usize, 1, 5, 1000].iter().map(|&n| ip_udp_frame(s, c, 53, 5000, &vec![0xab; n], 60)).collect()
}

#[test]
fn tunnel_round_trips_every_combination() {
    let mut cases = 0;
    for alg in ["aes128-gcm", "aes256-gcm", "chacha20-poly1305", "aes128-gmac", "aes256-gmac"] {
        for esn in [false, true] {
            for v6_outer in [false, true] {
                for udp_encap in [true, false] {
                    let s = Setup { alg, esn, v6_outer, encap: udp_encap, ..Setup::default() };
                    let mut client = s.client();
                    let mut headend = s.headend();
                    for v6_inner in [false, true] {
                        for f in inner_frames(v6_inner) {
                            let (r, esp, _) = encap(&mut client, &f);
                            assert_eq!(r.verdict, OutVerdict::Encapsulated, "{s:?}");
                            assert_eq!(r.spi, Some(SPI_IN));
                            // Outer header family and protocol.
                            let et = u16::from_be_bytes([esp[12], esp[13]]);
                            assert_eq!(et, if v6_outer { 0x86dd } else { 0x0800 });
                            let proto = if v6_outer { esp[20] } else { esp[23] };
                            assert_eq!(proto, if udp_encap { 17 } else { 50 });
                            let (r, out, ev) = decap(&mut headend, &esp, 0);
                            assert_eq!(r.verdict, InVerdict::Tunnel, "{s:?} v6_inner={v6_inner} len={}", f.len());
                            assert_eq!(r.spi, Some(SPI_IN));
                            assert!(
                                ev.iter().all(|e| !matches!(e.kind, EventKind::NatMappingChanged { .. })) || !v6_outer
                            );
                            assert_eq!(out, ttl_minus_one(&f), "{s:?}");
                            cases += 1;
                        }
                        for f in reply_frames(v6_inner) {
                            let (r, esp, _) = encap(&mut headend, &f);
                            assert_eq!(r.verdict, OutVerdict::Encapsulated, "{s:?}");
                            let (r, out, _) = decap(&mut client, &esp, 0);
                            assert_eq!(r.verdict, InVerdict::Tunnel, "{s:?}");
                            assert_eq!(out, ttl_minus_one(&f));
                            cases += 1;
                        }
                    }
                }
            }
        }
    }
    assert_eq!(cases, 5 * 2 * 2 * 2 * 2 * 12);
}

#[test]
fn transport_round_trips() {
    for alg in ["aes128-gcm", "aes256-gcm", "chacha20-poly1305", "aes128-gmac"] {
        for esn in [false, true] {
            for v6 in [false, true] {
                for udp_encap in [true, false] {
                    let s = Setup { alg, esn, v6_outer: v6, encap: udp_encap, transport: true, ..Setup::default() };
                    let o = s.outer();
                    let mut headend = s.headend();
                    // L2TP-like traffic between the hosts; the client is not behind a
                    // NAT here (its address is the one the headend knows).
                    let src = if v6 { o.client } else { o.nat };
                    let mut client = client_with_local(&s, src);
                    for n in [0usize, 9, 700] {
                        let f = ip_udp_frame(src, o.headend, 1701, 1701, &vec![7u8; n], 64);
                        let (r, esp, _) = encap(&mut client, &f);
                        assert_eq!(r.verdict, OutVerdict::Encapsulated);
                        let (r, out, _) = decap(&mut headend, &esp, 0);
                        assert_eq!(r.verdict, InVerdict::Transport, "{s:?}");
                        assert_eq!(out, f, "{s:?} n={n}");
                        // And from the headend host to the client.
                        let f = ip_udp_frame(o.headend, src, 1701, 1701, &vec![9u8; n], 64);
                        let (r, esp, _) = encap(&mut headend, &f);
                        assert_eq!(r.verdict, OutVerdict::Encapsulated, "{s:?}");
                        let (r, out, _) = decap(&mut client, &esp, 0);
                        assert_eq!(r.verdict, InVerdict::Transport);
                        assert_eq!(out, f);
                    }
                }
            }
        }
    }
}

/// The client's SAs with another local address (transport mode without NAT).
fn client_with_local(s: &Setup, local: &str) -> natt_engine::Engine {
    let sas = s.client_json().into_iter().map(|mut v| {
        v["local"] = local.into();
        v
    });
    engine(sas.collect(), EngineConfig::default())
}

#[test]
fn transport_behind_nat_fixes_the_l4_checksum() {
    let s = Setup { transport: true, ..Setup::default() };
    let mut client = s.client();
    let mut headend = s.headend();
    // The client computes its UDP checksum with its private address...
    let f = ip_udp_frame(OUTER4.client, OUTER4.headend, 1701, 1701, b"hello l2tp", 64);
    let (_, esp, _) = encap(&mut client, &f);
    // ...the NAT changes the outer source...
    let esp = nat4(&esp, OUTER4.nat, 4500);
    let (r, out, _) = decap(&mut headend, &esp, 0);
    assert_eq!(r.verdict, InVerdict::Transport);
    // ...and the delivered packet is addressed from the NAT with a checksum that verifies.
    assert_eq!(&out[26..30], &[198, 51, 100, 7]);
    let seg = &out[34..];
    let ph = natt_engine::wire::checksum::pseudo_v4(
        "198.51.100.7".parse().unwrap(),
        "203.0.113.1".parse().unwrap(),
        17,
        seg.len() as u16,
    );
    assert_eq!(natt_engine::wire::checksum::fold(ph + natt_engine::wire::checksum::sum(seg)), 0xffff);
    assert_eq!(&out[42..], b"hello l2tp");
}

#[test]
fn nat_mapping_change_moves_the_paired_outbound_sa() {
    let s = Setup::default();
    let mut client = s.client();
    let mut headend = s.headend();
    let f = &inner_frames(false)[3];
    let (_, esp1, _) = encap(&mut client, f);
    let (_, esp2, _) = encap(&mut client, f);
    let (_, esp3, _) = encap(&mut client, f);
    // First packet from the configured endpoint: no event.
    let (r, _, ev) = decap(&mut headend, &nat4(&esp1, OUTER4.nat, 4500), 0);
    assert_eq!(r.source, Some(Endpoint { addr: "198.51.100.7".parse().unwrap(), port: 4500 }));
    assert!(ev.is_empty());
    // Packet 3 arrives from a new port first: the mapping moves.
    let (r, _, ev) = decap(&mut headend, &nat4(&esp3, OUTER4.nat, 40000), 0);
    assert_eq!(r.verdict, InVerdict::Tunnel);
    let new = Endpoint { addr: "198.51.100.7".parse().unwrap(), port: 40000 };
    let old = Endpoint { addr: "198.51.100.7".parse().unwrap(), port: 4500 };
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].spi, SPI_IN);
    assert_eq!(ev[0].kind, EventKind::NatMappingChanged { old, new, updated: Some(SPI_OUT) });
    assert_eq!(headend.counters().nat_changes, 1);
    // Reordered packet 2 from the old port does not move it back.
    let (r, _, ev) = decap(&mut headend, &nat4(&esp2, OUTER4.nat, 4500), 0);
    assert_eq!(r.verdict, InVerdict::Tunnel);
    assert!(ev.is_empty());
    // Replies now go to the new port.
    let (r, out, _) = encap(&mut headend, &reply_frames(false)[0]);
    assert_eq!(r.dest, Some(new));
    assert_eq!(u16::from_be_bytes([out[36], out[37]]), 40000);
    assert_eq!(headend.sa(Direction::Inbound, SPI_IN).unwrap().rt.stats.nat_changes, 1);
}

#[test]
fn nat_update_off_reports_but_keeps_the_outbound_endpoint() {
    let s = Setup { extra_in: json!({"nat_update": false}), ..Setup::default() };
    let mut client = s.client();
    let mut headend = s.headend();
    let (_, esp, _) = encap(&mut client, &inner_frames(false)[0]);
    let (_, _, ev) = decap(&mut headend, &nat4(&esp, "198.51.100.99", 1234), 0);
    assert!(matches!(ev[0].kind, EventKind::NatMappingChanged { updated: None, .. }));
    let (r, _, _) = encap(&mut headend, &reply_frames(false)[0]);
    assert_eq!(r.dest, Some(Endpoint { addr: "198.51.100.7".parse().unwrap(), port: 4500 }));
}

#[test]
fn forged_packet_does_not_move_the_window() {
    let s = Setup::default();
    let mut headend = s.headend();
    let p = common::parse(s.headend_json()).remove(0);
    let ok = |seq| {
        outer4_frame(
            &craft_esp(&p, seq, &body(&inner_frames(false)[0][14..], 4)),
            OUTER4.nat,
            OUTER4.headend,
            4500,
            4500,
            0,
        )
    };
    assert_eq!(decap(&mut headend, &ok(1), 0).0.verdict, InVerdict::Tunnel);
    // A forgery far ahead: its tag fails, and the window must stay at 1.
    let mut forged = ok(100_000);
    let n = forged.len();
    forged[n - 1] ^= 0x80;
    assert_eq!(decap(&mut headend, &forged, 0).0.verdict, InVerdict::Drop(DropReason::AuthFailed));
    assert_eq!(headend.sa(Direction::Inbound, SPI_IN).unwrap().rt.peer.replay.top(), 1);
    assert_eq!(decap(&mut headend, &ok(2), 0).0.verdict, InVerdict::Tunnel);
    assert_eq!(decap(&mut headend, &ok(2), 0).0.verdict, InVerdict::Drop(DropReason::ReplayDuplicate));
    assert_eq!(decap(&mut headend, &ok(200), 0).0.verdict, InVerdict::Tunnel);
    assert_eq!(decap(&mut headend, &ok(137), 0).0.verdict, InVerdict::Tunnel);
    assert_eq!(decap(&mut headend, &ok(136), 0).0.verdict, InVerdict::Drop(DropReason::ReplayStale));
    let st = &headend.sa(Direction::Inbound, SPI_IN).unwrap().rt.stats;
    assert_eq!(st.drop_count(DropReason::AuthFailed), 1);
    assert_eq!(st.drop_count(DropReason::ReplayDuplicate), 1);
    assert_eq!(st.drop_count(DropReason::ReplayStale), 1);
    assert_eq!(st.packets, 4);
}

#[test]
fn a_duplicate_within_one_burst_is_a_replay() {
    // The pre-crypto check sees the window as it was before the burst; the second copy
    // must still be refused when the first has been accepted.
    let s = Setup::default();
    let mut client = s.client();
    let mut headend = s.headend();
    let (_, esp1, _) = encap(&mut client, &inner_frames(false)[0]);
    let (_, esp2, _) = encap(&mut client, &inner_frames(false)[1]);
    let frames = [&esp1, &esp2, &esp1, &esp2, &esp1];
    let mut pkts: Vec<_> = frames.iter().map(|f| PktBuf::from_frame(f, HEADROOM, TAILROOM)).collect();
    let mut res = vec![natt_engine::InResult::default(); frames.len()];
    headend.decap_burst(&mut pkts, 0, &mut res, &mut Vec::new());
    let v: Vec<_> = res.iter().map(|r| r.verdict).collect();
    let dup = InVerdict::Drop(DropReason::ReplayDuplicate);
    assert_eq!(v, [InVerdict::Tunnel, InVerdict::Tunnel, dup, dup, dup]);
    let st = &headend.sa(Direction::Inbound, SPI_IN).unwrap().rt.stats;
    assert_eq!((st.packets, st.drop_count(DropReason::ReplayDuplicate)), (2, 3));
}

#[test]
fn replay_window_off_accepts_repeats() {
    let s = Setup { replay_window: 0, ..Setup::default() };
    let mut client = s.client();
    let mut headend = s.headend();
    let (_, esp, _) = encap(&mut client, &inner_frames(false)[2]);
    for _ in 0..3 {
        assert_eq!(decap(&mut headend, &esp, 0).0.verdict, InVerdict::Tunnel);
    }
}

#[test]
fn esn_crosses_the_32_bit_boundary() {
    let start = (1u64 << 32) - 3;
    let s = Setup { esn: true, ..Setup::default() };
    let mut headend = engine(
        s.headend_json()
            .into_iter()
            .map(|mut v| {
                v["last_seq"] = (start - 2).into();
                v
            })
            .collect(),
        EngineConfig::default(),
    );
    let mut client = engine(
        s.client_json()
            .into_iter()
            .map(|mut v| {
                if v["direction"] == "outbound" {
                    v["last_seq"] = start.into();
                }
                v
            })
            .collect(),
        EngineConfig::default(),
    );
    let mut seqs = Vec::new();
    for f in inner_frames(false).iter().take(6) {
        let (r, esp, _) = encap(&mut client, f);
        seqs.push(r.seq);
        // The wire carries the low half, the IV the full 64 bits.
        let lo = u32::from_be_bytes(esp[46..50].try_into().unwrap());
        let iv = u64::from_be_bytes(esp[50..58].try_into().unwrap());
        assert_eq!((u64::from(lo), iv), (r.seq & 0xffff_ffff, r.seq));
        let (r, _, _) = decap(&mut headend, &esp, 0);
        assert_eq!(r.verdict, InVerdict::Tunnel);
    }
    assert_eq!(seqs, (start + 1..start + 7).collect::<Vec<_>>());
    assert_eq!(headend.sa(Direction::Inbound, SPI_IN).unwrap().rt.peer.replay.top(), start + 6);
}

#[test]
fn sequence_numbers_never_wrap() {
    let s = Setup { extra_out: json!({"last_seq": 0xffff_fffeu64}), ..Setup::default() };
    let mut headend = s.headend();
    let f = &reply_frames(false)[0];
    let (r, _, ev) = encap(&mut headend, f);
    assert_eq!((r.verdict, r.seq), (OutVerdict::Encapsulated, 0xffff_ffff));
    assert!(ev.is_empty());
    let (r, _, ev) = encap(&mut headend, f);
    assert_eq!(r.verdict, OutVerdict::Drop(DropReason::SeqExhausted));
    assert_eq!(
        ev.iter().map(|e| e.kind).collect::<Vec<_>>(),
        vec![EventKind::SeqExhausted, EventKind::SaExpired(ExpiryCause::SeqExhausted)]
    );
    let (r, _, ev) = encap(&mut headend, f);
    assert_eq!(r.verdict, OutVerdict::Drop(DropReason::SaExpired));
    assert!(ev.is_empty());
    // With ESN the same SA would simply continue into the high half.
    let s = Setup { esn: true, extra_out: json!({"last_seq": 0xffff_fffeu64}), ..Setup::default() };
    let mut headend = s.headend();
    encap(&mut headend, f);
    let (r, _, _) = encap(&mut headend, f);
    assert_eq!((r.verdict, r.seq), (OutVerdict::Encapsulated, 1 << 32));
}

#[test]
fn lifetimes_raise_events_and_expire() {
    let s = Setup {
        extra_out: json!({"lifetime": {"soft_packets": 2, "hard_packets": 3}}),
        extra_in: json!({"lifetime": {"soft_bytes": 100, "hard_bytes": 1000}}),
        ..Setup::default()
    };
    let mut headend = s.headend();
    let f = &reply_frames(false)[0];
    // Lifetime events only (the unNATed client also moves the NAT mapping once).
    let kinds = |ev: Vec<natt_engine::Event>| {
        ev.into_iter().map(|e| e.kind).filter(|k| !matches!(k, EventKind::NatMappingChanged { .. })).collect::<Vec<_>>()
    };
    assert_eq!(kinds(encap(&mut headend, f).2), vec![]);
    assert_eq!(kinds(encap(&mut headend, f).2), vec![EventKind::SoftLifetime(Limit::Packets)]);
    let (r, _, ev) = encap(&mut headend, f);
    assert_eq!(r.verdict, OutVerdict::Encapsulated, "the packet reaching the hard limit is the last one sent");
    assert_eq!(
        kinds(ev),
        vec![EventKind::HardLifetime(Limit::Packets), EventKind::SaExpired(ExpiryCause::HardLifetime(Limit::Packets))]
    );
    assert_eq!(encap(&mut headend, f).0.verdict, OutVerdict::Drop(DropReason::SaExpired));

    // Inbound by bytes: 548-byte inner packets cross 100 at once and 1000 on the second.
    let mut client = s.client();
    let big = &inner_frames(false)[6];
    let (_, e1, _) = encap(&mut client, big);
    let (_, e2, _) = encap(&mut client, big);
    let (_, e3, _) = encap(&mut client, big);
    let (_, _, ev) = decap(&mut headend, &e1, 0);
    let soft: Vec<_> = ev.iter().filter(|e| e.kind == EventKind::SoftLifetime(Limit::Bytes)).collect();
    assert_eq!(soft.len(), 1);
    assert_eq!((soft[0].spi, soft[0].direction), (SPI_IN, Direction::Inbound));
    let (_, _, ev) = decap(&mut headend, &e2, 0);
    assert_eq!(
        kinds(ev),
        vec![EventKind::HardLifetime(Limit::Bytes), EventKind::SaExpired(ExpiryCause::HardLifetime(Limit::Bytes))]
    );
    assert_eq!(decap(&mut headend, &e3, 0).0.verdict, InVerdict::Drop(DropReason::SaExpired));
}

#[test]
fn outbound_selection_is_longest_prefix_and_checks_the_source() {
    let s = Setup::default();
    let mut sas = s.headend_json();
    // A second client SA covering a whole subnet, which the /32 of the first overrides.
    let mut wide = sas[1].clone();
    wide["name"] = "wide".into();
    wide["spi"] = 0x3001.into();
    wide["key"] = "5a".repeat(20).into();
    wide["selectors"] = json!({"local": [PROTECTED4], "peer": ["10.8.0.0/16"]});
    sas.push(wide);
    let mut headend = engine(sas, EngineConfig::default());
    let to = |dst: &str, src: &str| ip_udp_frame(src, dst, 53, 5000, b"x", 64);
    assert_eq!(encap(&mut headend, &to(CLIENT_IN4, SERVER4)).0.spi, Some(SPI_OUT));
    assert_eq!(encap(&mut headend, &to("10.8.9.9", SERVER4)).0.spi, Some(0x3001));
    assert_eq!(encap(&mut headend, &to("10.9.0.1", SERVER4)).0.verdict, OutVerdict::Drop(DropReason::NoOutboundSa));
    let (r, _, _) = encap(&mut headend, &to(CLIENT_IN4, "192.0.2.99"));
    assert_eq!((r.verdict, r.spi), (OutVerdict::Drop(DropReason::SelectorMismatch), Some(SPI_OUT)));
    assert_eq!(headend.sa(Direction::Outbound, SPI_OUT).unwrap().rt.stats.drop_count(DropReason::SelectorMismatch), 1);
}

#[test]
fn outer_headers_are_what_rfc_3948_asks() {
    let s = Setup { extra_out: json!({"ttl": 50, "df": "clear"}), ..Setup::default() };
    let mut headend = s.headend();
    let mut f = reply_frames(false)[1].clone();
    f[15] = 0xb8; // DSCP EF on the inner packet
    f[24] = 0;
    f[25] = 0;
    let c = natt_engine::wire::checksum::checksum(&f[14..34]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
    let (r, out, _) = encap(&mut headend, &f);
    assert_eq!(r.verdict, OutVerdict::Encapsulated);
    let ip = &out[14..34];
    assert_eq!(ip[1], 0xb8, "DSCP copied");
    assert_eq!(ip[6] & 0x40, 0, "DF cleared");
    assert_eq!(ip[8], 50, "TTL from the SA");
    assert_eq!(natt_engine::wire::checksum::checksum(ip), 0);
    assert_eq!(&ip[12..16], &[203, 0, 113, 1]);
    assert_eq!(&ip[16..20], &[198, 51, 100, 7]);
    let udp = &out[34..42];
    assert_eq!(u16::from_be_bytes([udp[0], udp[1]]), 4500);
    assert_eq!(u16::from_be_bytes([udp[2], udp[3]]), 4500);
    assert_eq!(&udp[6..8], &[0, 0], "zero UDP checksum over IPv4");
    assert_eq!(usize::from(u16::from_be_bytes([udp[4], udp[5]])), out.len() - 34);
    // ESP payload is 4-byte aligned and the MACs are kept.
    assert_eq!((out.len() - 42 - 16 - 16) % 4, 0);
    assert_eq!(&out[..12], &f[..12]);

    // Over IPv6 the UDP checksum is computed and verifies.
    let s = Setup { v6_outer: true, ..Setup::default() };
    let mut headend = s.headend();
    let (_, out, _) = encap(&mut headend, &reply_frames(false)[2]);
    let seg = &out[54..];
    assert_ne!(&seg[6..8], &[0, 0]);
    let ph = natt_engine::wire::checksum::pseudo_v6(
        &OUTER6.headend.parse().unwrap(),
        &OUTER6.nat.parse().unwrap(),
        17,
        seg.len() as u32,
    );
    assert_eq!(natt_engine::wire::checksum::fold(ph + natt_engine::wire::checksum::sum(seg)), 0xffff);
    assert_eq!(out[21], 64, "hop limit default");
}

#[test]
fn ttl_expiry_is_answered_where_it_may_be_and_dropped_where_not() {
    let s = Setup::default();
    let mut headend = s.headend();
    // IPv4: Time Exceeded from the SA's address (tests/icmp_errors.rs has the fields).
    let f = ip_udp_frame(SERVER4, CLIENT_IN4, 1, 2, b"abc", 1);
    assert_eq!(encap(&mut headend, &f).0.verdict, OutVerdict::IcmpTtlExceeded);
    // IPv6 in an IPv4 tunnel, no IPv6 source given: dropped.
    let f = ip_udp_frame(SERVER6, CLIENT_IN6, 1, 2, b"abc", 1);
    assert_eq!(encap(&mut headend, &f).0.verdict, OutVerdict::Drop(DropReason::TtlExceeded));
}

#[test]
fn ecn_is_propagated_per_rfc_6040() {
    let s = Setup::default();
    let mut client = s.client();
    let mut headend = s.headend();
    // Inner ECT(0): outer CE marks the inner packet CE.
    let mut f = inner_frames(false)[4].clone();
    f[15] = 0x02;
    f[24] = 0;
    f[25] = 0;
    let c = natt_engine::wire::checksum::checksum(&f[14..34]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
    let (_, esp, _) = encap(&mut client, &f);
    assert_eq!(esp[15] & 3, 2, "ECN copied to the outer header");
    let (r, out, _) = decap(&mut headend, &set_outer_tos4(&esp, 0x03), 0);
    assert_eq!(r.verdict, InVerdict::Tunnel);
    assert_eq!(out[15] & 3, 3);
    assert_eq!(natt_engine::wire::checksum::checksum(&out[14..34]), 0);
    // Inner Not-ECT under an outer CE: dropped.
    let (_, esp, _) = encap(&mut client, &inner_frames(false)[4]);
    assert_eq!(decap(&mut headend, &set_outer_tos4(&esp, 0x03), 0).0.verdict, InVerdict::Drop(DropReason::EcnCeNotEct));
}

/// Split an ESP-in-UDP/IPv4 frame into outer IPv4 fragments of `chunk` payload bytes.
fn fragment4(frame: &[u8], chunk: usize) -> Vec<Vec<u8>> {
    let ip = &frame[14..];
    let payload = &ip[20..];
    let mut out = Vec::new();
    let mut off = 0;
    while off < payload.len() {
        let end = (off + chunk).min(payload.len());
        let more = end < payload.len();
        let mut h = ip[..20].to_vec();
        h[2..4].copy_from_slice(&((20 + end - off) as u16).to_be_bytes());
        let fo = (off / 8) as u16 | if more { 0x2000 } else { 0 };
        h[6..8].copy_from_slice(&fo.to_be_bytes());
        h[10] = 0;
        h[11] = 0;
        let c = natt_engine::wire::checksum::checksum(&h);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        h.extend_from_slice(&payload[off..end]);
        out.push(eth(0x0800, &h));
        off = end;
    }
    out
}

/// Split an IPv6 frame into fragments with a fragment header.
fn fragment6(frame: &[u8], chunk: usize, ident: u32) -> Vec<Vec<u8>> {
    let ip = &frame[14..];
    let next = ip[6];
    let payload = &ip[40..];
    let mut out = Vec::new();
    let mut off = 0;
    while off < payload.len() {
        let end = (off + chunk).min(payload.len());
        let more = end < payload.len();
        let mut h = ip[..40].to_vec();
        h[6] = 44;
        h[4..6].copy_from_slice(&((8 + end - off) as u16).to_be_bytes());
        h.extend_from_slice(&[next, 0]);
        h.extend_from_slice(&((off as u16) | u16::from(more)).to_be_bytes());
        h.extend_from_slice(&ident.to_be_bytes());
        h.extend_from_slice(&payload[off..end]);
        out.push(eth(0x86dd, &h));
        off = end;
    }
    out
}

#[test]
fn outer_fragments_are_reassembled() {
    for v6 in [false, true] {
        let s = Setup { v6_outer: v6, ..Setup::default() };
        let mut client = s.client();
        let mut headend = s.headend();
        let f = &inner_frames(false)[7]; // 1300 bytes of payload
        let (_, esp, _) = encap(&mut client, f);
        let mut frags = if v6 { fragment6(&esp, 600, 77) } else { fragment4(&esp, 600) };
        assert_eq!(frags.len(), 3);
        frags.swap(0, 2);
        let (r, _, _) = decap(&mut headend, &frags[0], 0);
        assert_eq!(r.verdict, InVerdict::Held);
        let (r, _, _) = decap(&mut headend, &frags[1], 1);
        assert_eq!(r.verdict, InVerdict::Held);
        let mut pkts = [PktBuf::from_frame(&frags[2], 128, 2048)];
        let mut res = [natt_engine::InResult::default()];
        headend.decap_burst(&mut pkts, 2, &mut res, &mut Vec::new());
        assert_eq!(res[0].verdict, InVerdict::Tunnel, "v6={v6}");
        assert_eq!(pkts[0].data(), &ttl_minus_one(f)[..]);
        let c = headend.counters();
        assert_eq!((c.frag_held, c.frag_absorbed, c.reassembled), (2, 2, 1));
        assert_eq!(headend.reassembler().held(), 0);
    }
}

#[test]
fn keepalives_and_ike_are_not_dropped() {
    let s = Setup::default();
    let mut headend = s.headend();
    let ka = ip_udp_frame(OUTER4.nat, OUTER4.headend, 4500, 4500, &[0xff], 64);
    let (r, out, _) = decap(&mut headend, &ka, 0);
    assert_eq!(r.verdict, InVerdict::Keepalive);
    assert_eq!(out, ka);
    let ike = ip_udp_frame(OUTER4.nat, OUTER4.headend, 4500, 4500, &[0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8], 64);
    assert_eq!(decap(&mut headend, &ike, 0).0.verdict, InVerdict::Punt(natt_engine::PuntReason::Ike));
    let ike500 = ip_udp_frame(OUTER4.nat, OUTER4.headend, 500, 500, &[1, 2, 3, 4, 5, 6, 7, 8], 64);
    assert_eq!(decap(&mut headend, &ike500, 0).0.verdict, InVerdict::Punt(natt_engine::PuntReason::Ike));
    let dns = ip_udp_frame(OUTER4.nat, OUTER4.headend, 53, 53, &[1, 2, 3], 64);
    assert_eq!(decap(&mut headend, &dns, 0).0.verdict, InVerdict::Punt(natt_engine::PuntReason::Host));
    let arp = eth(0x0806, &[0u8; 28]);
    assert_eq!(decap(&mut headend, &arp, 0).0.verdict, InVerdict::Punt(natt_engine::PuntReason::Host));
    let c = headend.counters();
    assert_eq!((c.keepalives, c.punts[0], c.punts[1], c.total_drops()), (1, 2, 2, 0));
}

#[test]
fn bursts_longer_than_max_are_processed_whole() {
    let s = Setup::default();
    let mut client = s.client();
    let mut headend = s.headend();
    let f = &inner_frames(false)[5];
    let mut pkts: Vec<_> = (0..200).map(|_| PktBuf::from_frame(f, 128, 128)).collect();
    let mut res = vec![natt_engine::OutResult::default(); 200];
    client.encap_burst(&mut pkts, &mut res, &mut Vec::new());
    assert!(res.iter().all(|r| r.verdict == OutVerdict::Encapsulated));
    let mut inb: Vec<_> = pkts.iter().map(|p| PktBuf::from_frame(p.data(), 128, 128)).collect();
    let mut res = vec![natt_engine::InResult::default(); 200];
    headend.decap_burst(&mut inb, 0, &mut res, &mut Vec::new());
    assert!(res.iter().all(|r| r.verdict == InVerdict::Tunnel));
    assert!(inb.iter().all(|p| p.data() == &ttl_minus_one(f)[..]));
    assert_eq!(headend.counters().decap_packets, 200);
}

#[test]
fn padding_to_whole_cipher_blocks() {
    for pad_to in [4usize, 8, 16] {
        let s = Setup { extra_out: json!({"pad_to": pad_to}), ..Setup::default() };
        let mut headend = s.headend();
        // No NAT in this test: the client owns the address the headend sends to.
        let mut client = client_with_local(&s, OUTER4.nat);
        for f in reply_frames(false) {
            let (r, esp, _) = encap(&mut headend, &f);
            assert_eq!(r.verdict, OutVerdict::Encapsulated);
            // Ethernet 14, IPv4 20, UDP 8, ESP header and IV 16, then ciphertext, ICV 16.
            let ct = esp.len() - 14 - 20 - 8 - 16 - 16;
            assert_eq!(ct % pad_to, 0, "pad_to {pad_to}: ciphertext {ct}");
            assert!(ct - (f.len() - 14) - 2 < pad_to, "no more padding than needed");
            let (r, out, _) = decap(&mut client, &esp, 0);
            assert_eq!(r.verdict, InVerdict::Tunnel);
            assert_eq!(out, ttl_minus_one(&f));
        }
    }
}

/// A host that records reservations, and can refuse them.
#[derive(Default)]
struct Reserving {
    reservations: Vec<natt_engine::event::SeqReservation>,
    refuse: bool,
}

impl natt_engine::Host for Reserving {
    fn event(&mut self, _: natt_engine::Event) {}
    fn reserve_seq(&mut self, r: natt_engine::event::SeqReservation) -> bool {
        if self.refuse {
            return false;
        }
        self.reservations.push(r);
        true
    }
}

fn encap_with(e: &mut natt_engine::Engine, f: &[u8], host: &mut Reserving) -> natt_engine::OutResult {
    let mut pkts = [PktBuf::from_frame(f, HEADROOM, TAILROOM)];
    let mut res = [natt_engine::OutResult::default()];
    e.encap_burst(&mut pkts, &mut res, host);
    res[0]
}

#[test]
fn sequence_numbers_are_reserved_in_blocks_before_use() {
    use natt_engine::outbound::SEQ_BLOCK;
    let s = Setup { extra_out: json!({"last_seq": 100}), ..Setup::default() };
    let mut headend = s.headend();
    let f = &reply_frames(false)[0];
    let mut host = Reserving::default();
    let fp = headend.sa(Direction::Outbound, SPI_OUT).unwrap().rt.key_fp;
    assert_eq!(encap_with(&mut headend, f, &mut host).seq, 101);
    assert_eq!(
        host.reservations,
        vec![natt_engine::event::SeqReservation { spi: SPI_OUT, key_fp: fp, up_to: 100 + SEQ_BLOCK }]
    );
    for _ in 0..SEQ_BLOCK - 1 {
        encap_with(&mut headend, f, &mut host);
    }
    assert_eq!(host.reservations.len(), 1, "one block covers {SEQ_BLOCK} packets");
    let r = encap_with(&mut headend, f, &mut host);
    assert_eq!(r.seq, 101 + SEQ_BLOCK);
    assert_eq!(host.reservations.last().unwrap().up_to, 100 + 2 * SEQ_BLOCK);
    // A host that cannot record a reservation stops the SA from sending.
    let mut fresh = s.headend();
    let mut refusing = Reserving { refuse: true, ..Reserving::default() };
    assert_eq!(encap_with(&mut fresh, f, &mut refusing).verdict, OutVerdict::Drop(DropReason::SeqUnreserved));
    // After a restart the SA resumes above everything it may have used.
    let mut restarted = s.headend();
    let mut e = restarted.remove_sa(Direction::Outbound, SPI_OUT).unwrap();
    e.last_seq = 0;
    restarted.add_sa(e).unwrap();
    restarted.resume_above(Direction::Outbound, SPI_OUT, 100 + 2 * SEQ_BLOCK);
    assert_eq!(encap_with(&mut restarted, f, &mut host).seq, 101 + 2 * SEQ_BLOCK);
    // Fingerprints tell keys apart.
    let other = natt_engine::crypto::key_fingerprint(&[1; 16], &[0; 4]);
    assert_ne!(fp, other);
}

#[test]
fn reassembly_on_its_own_then_decapsulation() {
    use natt_engine::Reassembly;
    let s = Setup::default();
    let mut client = s.client();
    let mut headend = s.headend();
    let f = &inner_frames(false)[7];
    let (_, esp, _) = encap(&mut client, f);
    let frags = fragment4(&esp, 600);
    let mut bufs: Vec<_> = frags.iter().map(|x| PktBuf::from_frame(x, 128, 2048)).collect();
    assert_eq!(headend.reassemble(&mut bufs[1], 0), Reassembly::Held);
    assert_eq!(headend.reassemble(&mut bufs[0], 0), Reassembly::Held);
    assert_eq!(headend.reassemble(&mut bufs[2], 0), Reassembly::Complete);
    // The buffer now holds the whole ESP datagram (its IPv4 header is the first
    // fragment's, so DF is clear); it decapsulates like any packet.
    assert_eq!(bufs[2].len(), esp.len());
    assert_eq!(&bufs[2].data()[34..], &esp[34..]);
    assert_eq!(&bufs[2].data()[16..18], &esp[16..18], "total length");
    let mut done = [PktBuf::from_frame(bufs[2].data(), 128, 64)];
    let mut res = [natt_engine::InResult::default()];
    headend.decap_burst(&mut done, 0, &mut res, &mut Vec::new());
    assert_eq!(res[0].verdict, InVerdict::Tunnel);
    assert_eq!(done[0].data(), &ttl_minus_one(f)[..]);
    // Not a fragment: untouched.
    let mut plain = PktBuf::from_frame(&esp, 128, 64);
    assert_eq!(headend.reassemble(&mut plain, 0), Reassembly::NotFragment);
    // Every frame is accounted for: three fragments in, one datagram out, two absorbed.
    let c = headend.counters();
    assert_eq!((c.in_packets, c.decap_packets, c.frag_absorbed, c.frag_held), (3, 1, 2, 2));
}

/// A store that looks ahead, over the engine's own table, noting what it is asked to
/// get ready for.
struct Looking {
    table: natt_engine::sa::SaTable<natt_engine::crypto::RingKey>,
    crypto: std::cell::RefCell<Vec<(u32, usize)>>,
}

impl natt_engine::sa::SaStore<natt_engine::crypto::RingKey> for Looking {
    fn inbound(&mut self, spi: u32) -> Result<u32, DropReason> {
        self.table.inbound(spi)
    }
    fn outbound(&mut self, dst: &core::net::IpAddr) -> Result<u32, DropReason> {
        self.table.outbound(dst)
    }
    fn entry(&self, slot: u32) -> Option<&natt_engine::sa::SaEntry<natt_engine::crypto::RingKey>> {
        self.table.entry(slot)
    }
    fn entry_mut(&mut self, slot: u32) -> Option<&mut natt_engine::sa::SaEntry<natt_engine::crypto::RingKey>> {
        self.table.entry_mut(slot)
    }
    fn follow_nat(&mut self, spi: u32, to: Endpoint) -> bool {
        self.table.follow_nat(spi, to)
    }
    fn looks_ahead(&self) -> bool {
        true
    }
    fn prepare_crypto(&self, slot: u32, len: usize) {
        self.crypto.borrow_mut().push((slot, len));
    }
}

/// An engine (on `ring`) whose store looks ahead, with `params`.
fn looking(params: Vec<natt_engine::SaParams>) -> natt_engine::Engine<natt_engine::crypto::Ring, Looking> {
    let mut table = natt_engine::sa::SaTable::new();
    for p in params {
        table.insert::<natt_engine::crypto::Ring>(p).unwrap();
    }
    natt_engine::Engine::with_store(EngineConfig::default(), Looking { table, crypto: Default::default() }, &[])
}

#[test]
fn the_store_is_asked_for_each_key_a_few_packets_ahead_of_its_crypto() {
    use natt_engine::sa::CRYPTO_AHEAD;
    let s = Setup::default();
    let mut client = looking(parse(s.client_json()));
    let mut headend = looking(parse(s.headend_json()));
    // Inner packets of 40 to 79 bytes; the fifth is not IP and is punted before any SA.
    let n = 40;
    let frames: Vec<Vec<u8>> =
        (0..n)
            .map(|i| {
                if i == 4 {
                    eth(0x0806, &[0; 28])
                } else {
                    ip_udp_frame(CLIENT_IN4, SERVER4, 1, 2, &vec![7; 12 + i], 64)
                }
            })
            .collect();
    let mut pkts: Vec<_> = frames.iter().map(|f| PktBuf::from_frame(f, HEADROOM, TAILROOM)).collect();
    let mut res = vec![natt_engine::OutResult::default(); n];
    client.encap_burst(&mut pkts, &mut res, &mut Vec::new());
    assert_eq!(res.iter().filter(|r| r.verdict == OutVerdict::Encapsulated).count(), n - 1);
    let slot = client.store().table.outbound_slot(SPI_IN).unwrap();
    // What is sealed: the inner packet, its padding to 4 bytes and the 2-byte trailer.
    let sealed = |i: usize| (40 + i + 2).next_multiple_of(4);
    let want: Vec<(u32, usize)> = (CRYPTO_AHEAD..n).filter(|&i| i != 4).map(|i| (slot, sealed(i))).collect();
    assert_eq!(*client.store().crypto.borrow(), want);

    let mut inb: Vec<_> = pkts.iter().map(|p| PktBuf::from_frame(p.data(), HEADROOM, TAILROOM)).collect();
    let mut res = vec![natt_engine::InResult::default(); n];
    headend.decap_burst(&mut inb, 0, &mut res, &mut Vec::new());
    assert_eq!(res.iter().filter(|r| r.verdict == InVerdict::Tunnel).count(), n - 1);
    let slot = headend.store().table.inbound_slot(SPI_IN).unwrap();
    let want: Vec<(u32, usize)> = (CRYPTO_AHEAD..n).filter(|&i| i != 4).map(|i| (slot, sealed(i))).collect();
    assert_eq!(*headend.store().crypto.borrow(), want);
    // Whatever the store does ahead, the packets are what they would be without it.
    let mut plain = s.headend();
    for (p, f) in pkts.iter().zip(&frames).filter(|(_, f)| f[12] == 0x08 && f[13] == 0x00) {
        assert_eq!(decap(&mut plain, p.data(), 0).1, ttl_minus_one(f));
    }
}

/// What a burst of `frames` became through `f` (encap_burst or decap_burst): the frames,
/// the results and the events.
fn run_burst<R: Clone + Default>(
    frames: &[Vec<u8>],
    f: impl FnOnce(&mut [PktBuf<Vec<u8>>], &mut [R], &mut Vec<natt_engine::Event>),
) -> (Vec<Vec<u8>>, Vec<R>, Vec<natt_engine::Event>) {
    let mut pkts: Vec<_> = frames.iter().map(|f| PktBuf::from_frame(f, HEADROOM, TAILROOM)).collect();
    let mut res = vec![R::default(); pkts.len()];
    let mut ev = Vec::new();
    f(&mut pkts, &mut res, &mut ev);
    (pkts.iter().map(|p| p.data().to_vec()).collect(), res, ev)
}

#[test]
fn staged_and_packet_by_packet_crypto_agree() {
    // Without look-ahead the engine opens (seals) and finishes each packet in one go;
    // with it, it opens (seals) the whole burst, then finishes it. Same bursts, mixed
    // with everything that can go wrong, through both: the same bytes, verdicts,
    // events and counters.
    let s = Setup::default();
    // Outbound: sizes across the padding cases, a frame that is not IP, an inner TTL of
    // 1, a destination no SA covers, a source outside the selectors.
    let mut frames: Vec<Vec<u8>> = inner_frames(false).into_iter().chain(inner_frames(true)).collect();
    frames.insert(3, eth(0x0806, &[0; 28]));
    frames.insert(5, ip_udp_frame(CLIENT_IN4, SERVER4, 1, 2, &[9; 30], 1));
    frames.insert(7, ip_udp_frame(CLIENT_IN4, "192.0.2.9", 1, 2, &[9; 30], 64));
    frames.insert(9, ip_udp_frame("10.9.9.9", SERVER4, 1, 2, &[9; 30], 64));
    let (mut plain_client, mut staged_client) = (s.client(), looking(parse(s.client_json())));
    let a = run_burst(&frames, |p, r, ev| plain_client.encap_burst(p, r, ev));
    let b = run_burst(&frames, |p, r, ev| staged_client.encap_burst(p, r, ev));
    assert_eq!(a, b);
    assert_eq!(plain_client.counters(), staged_client.counters());
    let encapsulated = a.1.iter().filter(|r| r.verdict == OutVerdict::Encapsulated).count();
    assert_eq!(encapsulated, frames.len() - 4, "{:?}", a.1);

    // Inbound: the client's packets with a duplicate, a forged tag, a NAT move, an old
    // number replayed after the window moved on, and a frame for the host.
    let esp: Vec<Vec<u8>> =
        a.0.iter().zip(&a.1).filter(|(_, r)| r.verdict == OutVerdict::Encapsulated).map(|(f, _)| f.clone()).collect();
    let mut forged = esp[4].clone();
    let n = forged.len();
    forged[n - 3] ^= 1;
    let burst = vec![
        esp[1].clone(),
        esp[0].clone(),
        esp[1].clone(),
        forged,
        nat4(&esp[2], "198.51.100.99", 3333),
        esp[3].clone(),
        eth(0x0806, &[0; 28]),
        esp[5].clone(),
        esp[4].clone(),
        esp[7].clone(),
        esp[6].clone(),
        esp[2].clone(),
    ];
    let (mut plain, mut staged) = (s.headend(), looking(parse(s.headend_json())));
    let a = run_burst(&burst, |p, r, ev| plain.decap_burst(p, 0, r, ev));
    let b = run_burst(&burst, |p, r, ev| staged.decap_burst(p, 0, r, ev));
    assert_eq!(a, b);
    assert_eq!(plain.counters(), staged.counters());
    let v: Vec<_> = a.1.iter().map(|r| r.verdict).collect();
    let dup = InVerdict::Drop(DropReason::ReplayDuplicate);
    use InVerdict::Tunnel;
    assert_eq!(
        v,
        [
            Tunnel,
            Tunnel,
            dup,
            InVerdict::Drop(DropReason::AuthFailed),
            Tunnel,
            Tunnel,
            InVerdict::Punt(natt_engine::PuntReason::Host),
            Tunnel,
            Tunnel,
            Tunnel,
            Tunnel,
            dup,
        ]
    );
    // The client's packets come from its own address, not the configured NAT's: the
    // first moves the mapping there; then the NAT move and back.
    let moves: Vec<_> =
        a.2.iter()
            .filter_map(|e| match e.kind {
                EventKind::NatMappingChanged { new, .. } => Some(new.addr.to_string()),
                _ => None,
            })
            .collect();
    assert_eq!(moves, [OUTER4.client, "198.51.100.99", OUTER4.client]);
}
