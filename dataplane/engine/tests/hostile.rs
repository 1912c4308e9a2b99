//! Every drop reason the engine can give, reached by hostile or broken input, each
//! checked for its exact verdict; the last test fails if a reason is added without a
//! case here.

mod common;

use common::*;
use natt_engine::reason::Scope;
use natt_engine::reassembly::ReassemblyConfig;
use natt_engine::{DropReason, Engine, EngineConfig, Frame, InResult, InVerdict, OutResult, OutVerdict, PktBuf};
use serde_json::json;
use std::collections::BTreeSet;
use std::sync::Mutex;

static SEEN: Mutex<BTreeSet<&'static str>> = Mutex::new(BTreeSet::new());

fn saw(r: DropReason) {
    SEEN.lock().unwrap().insert(r.name());
}

fn expect_in(e: &mut Engine, frame: &[u8], want: DropReason) {
    let (r, _, _) = decap(e, frame, 0);
    assert_eq!(r.verdict, InVerdict::Drop(want), "frame {}", hex::encode(frame));
    assert!(e.counters().drops_of(want) >= 1);
    saw(want);
}

fn expect_out(e: &mut Engine, frame: &[u8], want: DropReason) {
    let (r, _, _) = encap(e, frame);
    assert_eq!(r.verdict, OutVerdict::Drop(want), "frame {}", hex::encode(frame));
    saw(want);
}

fn headend_params() -> (Engine, natt_engine::SaParams) {
    let s = Setup::default();
    let p = parse(s.headend_json()).remove(0);
    (s.headend(), p)
}

/// A UDP/4500 frame from the client's NAT to the headend with this payload.
fn natt(payload: &[u8]) -> Vec<u8> {
    outer4_frame(payload, OUTER4.nat, OUTER4.headend, 4500, 4500, 0)
}

/// An IPv4 frame to the headend with protocol `proto` and this payload.
fn ip4(proto: u8, payload: &[u8]) -> Vec<u8> {
    let mut ip = ipv4_header(OUTER4.nat, OUTER4.headend, proto, payload.len(), 64, 0, 9);
    ip.extend_from_slice(payload);
    eth(0x0800, &ip)
}

fn inner(src: &str, dst: &str) -> Vec<u8> {
    ip_udp_frame(src, dst, 1000, 2000, b"payload", 64)[14..].to_vec()
}

#[test]
fn l2_and_ip_header_errors() {
    let (mut e, _) = headend_params();
    expect_in(&mut e, &[0u8; 10], DropReason::FrameTruncated);
    let mut f = natt(&[0xff]);
    f[12..14].copy_from_slice(&[0x81, 0x00]);
    expect_in(&mut e, &f[..16], DropReason::FrameTruncated);
    let mut q = vec![0u8; 12];
    q.extend_from_slice(&[0x81, 0x00, 0, 1, 0x81, 0x00, 0, 2, 0x08, 0x00]);
    expect_in(&mut e, &q, DropReason::StackedVlan);
    let mut f = natt(&[0xff]);
    f[14] = 0x44; // IHL 4
    expect_in(&mut e, &f, DropReason::IpHeaderInvalid);
    let f = natt(&[0xff]);
    expect_in(&mut e, &f[..f.len() - 1], DropReason::IpHeaderInvalid); // total length past the frame
    let mut f = natt(&[0xff]);
    f[24] ^= 0x55;
    expect_in(&mut e, &f, DropReason::IpChecksumBad);
    // IPv6 with a truncated extension header chain.
    let mut ip = ipv6_header(OUTER6.nat, OUTER6.headend, 60, 4, 64, 0);
    ip.extend_from_slice(&[17, 9, 0, 0]);
    expect_in(&mut e, &eth(0x86dd, &ip), DropReason::IpHeaderInvalid);
    // UDP length below 8 and above the IP payload.
    let mut f = natt(&[1, 2, 3, 4, 5, 6, 7, 8]);
    f[38..40].copy_from_slice(&4u16.to_be_bytes());
    expect_in(&mut e, &f, DropReason::UdpHeaderInvalid);
    let mut f = natt(&[1, 2, 3, 4, 5, 6, 7, 8]);
    f[38..40].copy_from_slice(&100u16.to_be_bytes());
    expect_in(&mut e, &f, DropReason::UdpHeaderInvalid);
}

#[test]
fn rfc3948_and_esp_header_errors() {
    let (mut e, _) = headend_params();
    expect_in(&mut e, &natt(&[]), DropReason::NattMalformed);
    expect_in(&mut e, &natt(&[0xfe]), DropReason::NattMalformed);
    expect_in(&mut e, &natt(&[0x12, 0x34, 0x56, 0x78, 9]), DropReason::NattMalformed);
    expect_in(&mut e, &natt(&[0, 0, 0, 0xff, 0, 0, 0, 1, 0, 0, 0, 0]), DropReason::NattMalformed);
    expect_in(&mut e, &ip4(50, &[0, 0, 0, 100, 0, 0, 0, 1, 0, 0, 0, 0]), DropReason::EspSpiReserved);
    expect_in(&mut e, &ip4(50, &[0, 0, 0x10, 1]), DropReason::EspSpiReserved);
    expect_in(&mut e, &ip4(51, &[0u8; 24]), DropReason::AhUnsupported);
    let mut esp = vec![0, 0, 0x77, 0x77, 0, 0, 0, 1];
    esp.extend_from_slice(&[0u8; 40]);
    expect_in(&mut e, &natt(&esp), DropReason::NoSa);
}

#[test]
fn errors_after_the_sa_is_known() {
    let s = Setup::default();
    let (mut e, p) = headend_params();
    let spi = SPI_IN.to_be_bytes();
    // Too short for IV + trailer + ICV, and misaligned ciphertext.
    let mut short = spi.to_vec();
    short.extend_from_slice(&[0, 0, 0, 1]);
    short.extend_from_slice(&[0u8; 20]);
    expect_in(&mut e, &natt(&short), DropReason::EspTooShort);
    let mut mis = spi.to_vec();
    mis.extend_from_slice(&[0, 0, 0, 1]);
    mis.extend_from_slice(&[0u8; 8 + 5 + 16]);
    expect_in(&mut e, &natt(&mis), DropReason::EspMisaligned);
    let good = |seq: u64, b: &[u8]| craft_esp(&p, seq, b);
    let ok_body = body(&inner(CLIENT_IN4, SERVER4), 4);
    // Sent to another address, or another port, than the SA's local endpoint.
    expect_in(
        &mut e,
        &outer4_frame(&good(1, &ok_body), OUTER4.nat, "203.0.113.2", 4500, 4500, 0),
        DropReason::WrongDestination,
    );
    let mut e2 = engine(
        s.headend_json()
            .into_iter()
            .map(|mut v| {
                v["encap"] = json!({"local_port": 4501, "peer_port": 4500});
                v
            })
            .collect(),
        EngineConfig::default(),
    );
    expect_in(&mut e2, &natt(&good(1, &ok_body)), DropReason::WrongDestination);
    // Plain ESP for an SA that expects UDP encapsulation.
    expect_in(&mut e, &ip4(50, &good(1, &ok_body)), DropReason::EncapMismatch);
    // Corrupted tag.
    let mut bad = good(1, &ok_body);
    let n = bad.len();
    bad[n - 3] ^= 1;
    expect_in(&mut e, &natt(&bad), DropReason::AuthFailed);
    // Authenticated but broken contents.
    expect_in(&mut e, &natt(&good(2, &[0xaa, 0xaa, 0xaa, 1, 9, 3, 3, 4])), DropReason::BadPadding);
    expect_in(&mut e, &natt(&good(3, &[1, 2, 200, 4])), DropReason::BadPadding);
    expect_in(&mut e, &natt(&good(4, &body(b"dummy", 59))), DropReason::DummyPacket);
    expect_in(&mut e, &natt(&good(5, &body(&inner(CLIENT_IN4, SERVER4)[20..], 17))), DropReason::NextHeaderUnsupported);
    expect_in(&mut e, &natt(&good(6, &body(&[0x45, 0, 0, 99, 0, 0], 4))), DropReason::InnerMalformed);
    let mut badsum = inner(CLIENT_IN4, SERVER4);
    badsum[10] ^= 1;
    expect_in(&mut e, &natt(&good(7, &body(&badsum, 4))), DropReason::InnerMalformed);
    expect_in(&mut e, &natt(&good(8, &body(&inner(CLIENT_IN4, SERVER4), 41))), DropReason::InnerMalformed);
    // Spoofing: another client's inner address, or a destination outside our side.
    expect_in(&mut e, &natt(&good(9, &body(&inner("10.8.0.3", SERVER4), 4))), DropReason::SelectorMismatch);
    expect_in(&mut e, &natt(&good(10, &body(&inner(CLIENT_IN4, "192.0.2.1"), 4))), DropReason::SelectorMismatch);
    // CE over Not-ECT.
    expect_in(
        &mut e,
        &outer4_frame(&good(11, &ok_body), OUTER4.nat, OUTER4.headend, 4500, 4500, 3),
        DropReason::EcnCeNotEct,
    );
    // Replays: a duplicate, and one left of the window.
    assert_eq!(decap(&mut e, &natt(&good(500, &ok_body)), 0).0.verdict, InVerdict::Tunnel);
    expect_in(&mut e, &natt(&good(500, &ok_body)), DropReason::ReplayDuplicate);
    expect_in(&mut e, &natt(&good(12, &ok_body)), DropReason::ReplayStale);
    expect_in(&mut e, &natt(&good(0, &ok_body)), DropReason::ReplayStale);
    // Each was counted against the SA too.
    let st = &e.sa(natt_engine::Direction::Inbound, SPI_IN).unwrap().rt.stats;
    for r in [DropReason::AuthFailed, DropReason::BadPadding, DropReason::SelectorMismatch, DropReason::ReplayStale] {
        assert!(st.drop_count(r) >= 1, "{r}");
    }
    // A hard-expired SA accepts nothing.
    let mut e3 = engine(
        Setup { extra_in: json!({"lifetime": {"hard_packets": 1}}), ..Setup::default() }.headend_json(),
        EngineConfig::default(),
    );
    assert_eq!(decap(&mut e3, &natt(&good(1, &ok_body)), 0).0.verdict, InVerdict::Tunnel);
    expect_in(&mut e3, &natt(&good(2, &ok_body)), DropReason::SaExpired);
}

fn frag4(ident: u16, offset: usize, more: bool, data: &[u8]) -> Vec<u8> {
    let mut ip = ipv4_header(OUTER4.nat, OUTER4.headend, 17, data.len(), 64, 0, ident);
    let fo = (offset / 8) as u16 | if more { 0x2000 } else { 0 };
    ip[6..8].copy_from_slice(&fo.to_be_bytes());
    ip[10] = 0;
    ip[11] = 0;
    let c = natt_engine::wire::checksum::checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    ip.extend_from_slice(data);
    eth(0x0800, &ip)
}

#[test]
fn fragment_attacks() {
    let cfg = EngineConfig {
        reassembly: ReassemblyConfig { slots: 4, max_datagram: 1500, per_source: 2, timeout_ns: 1_000_000 },
        ..EngineConfig::default()
    };
    let mut e = engine(Setup::default().headend_json(), cfg);
    let d = [0u8; 1024];
    expect_in(&mut e, &frag4(1, 0, true, &d[..12]), DropReason::FragInvalid);
    assert_eq!(decap(&mut e, &frag4(2, 0, true, &d[..64]), 0).0.verdict, InVerdict::Held);
    expect_in(&mut e, &frag4(2, 32, true, &d[..64]), DropReason::FragOverlap);
    assert_eq!(decap(&mut e, &frag4(3, 0, true, &d[..1024]), 0).0.verdict, InVerdict::Held);
    expect_in(&mut e, &frag4(3, 1024, false, &d[..1024]), DropReason::FragTooBig);
    // A complete datagram that does not fit the packet's buffer.
    assert_eq!(decap(&mut e, &frag4(4, 0, true, &d[..800]), 0).0.verdict, InVerdict::Held);
    let mut pkts = [PktBuf::from_frame(&frag4(4, 800, false, &d[..600]), 0, 0)];
    let mut res = [InResult::default()];
    e.decap_burst(&mut pkts, 0, &mut res, &mut Vec::new());
    assert_eq!(res[0].verdict, InVerdict::Drop(DropReason::FragTooBig));
    saw(DropReason::FragTooBig);
    // Per-source limit, then timeout of what is held.
    assert_eq!(decap(&mut e, &frag4(5, 0, true, &d[..8]), 0).0.verdict, InVerdict::Held);
    assert_eq!(decap(&mut e, &frag4(6, 0, true, &d[..8]), 0).0.verdict, InVerdict::Held);
    expect_in(&mut e, &frag4(7, 0, true, &d[..8]), DropReason::FragTableFull);
    let before = e.counters().drops_of(DropReason::FragTimeout);
    decap(&mut e, &natt(&[0xff]), 2_000_000);
    assert_eq!(e.counters().drops_of(DropReason::FragTimeout) - before, 2);
    assert_eq!(e.reassembler().held(), 0);
    saw(DropReason::FragTimeout);
    // Fragments of protocols other than UDP and ESP go to the host untouched.
    let mut icmp = frag4(8, 0, true, &d[..8]);
    icmp[23] = 1;
    icmp[24] = 0;
    icmp[25] = 0;
    let c = natt_engine::wire::checksum::checksum(&icmp[14..34]);
    icmp[24..26].copy_from_slice(&c.to_be_bytes());
    assert_eq!(decap(&mut e, &icmp, 0).0.verdict, InVerdict::Punt(natt_engine::PuntReason::Host));
}

#[test]
fn outbound_errors() {
    let s = Setup::default();
    let mut e = s.headend();
    let reply = ip_udp_frame(SERVER4, CLIENT_IN4, 53, 5000, b"x", 64);
    expect_out(&mut e, &[0u8; 5], DropReason::FrameTruncated);
    let mut q = vec![0u8; 12];
    q.extend_from_slice(&[0x81, 0x00, 0, 1, 0x88, 0xa8, 0, 2, 0x08, 0x00]);
    expect_out(&mut e, &q, DropReason::StackedVlan);
    expect_out(&mut e, &reply[..30], DropReason::IpHeaderInvalid);
    let mut bad = reply.clone();
    bad[24] ^= 1;
    expect_out(&mut e, &bad, DropReason::IpChecksumBad);
    expect_out(&mut e, &ip_udp_frame(SERVER4, "10.200.0.1", 53, 5000, b"x", 64), DropReason::NoOutboundSa);
    expect_out(&mut e, &ip_udp_frame("192.0.2.50", CLIENT_IN4, 53, 5000, b"x", 64), DropReason::SelectorMismatch);
    // TTL 1 on an ICMP error: no Time Exceeded about it (tests/icmp_errors.rs has those).
    let mut unreachable = vec![3u8, 1, 0, 0, 0, 0, 0, 0];
    let c = natt_engine::wire::checksum::checksum(&unreachable);
    unreachable[2..4].copy_from_slice(&c.to_be_bytes());
    let mut ip = ipv4_header(SERVER4, CLIENT_IN4, 1, unreachable.len(), 1, 0, 3);
    ip.extend_from_slice(&unreachable);
    expect_out(&mut e, &eth(0x0800, &ip), DropReason::TtlExceeded);
    // Too big, and DF clear: no ICMP error to send (tests/too_big.rs has those).
    let mut big = ip_udp_frame(SERVER4, CLIENT_IN4, 53, 5000, &[0u8; 1460], 64);
    big[20] &= !0x40;
    big[24..26].copy_from_slice(&[0, 0]);
    let c = natt_engine::wire::checksum::checksum(&big[14..34]);
    big[24..26].copy_from_slice(&c.to_be_bytes());
    expect_out(&mut e, &big, DropReason::MtuExceeded);
    for (head, tail, want) in [(10usize, 64usize, DropReason::NoHeadroom), (128, 10, DropReason::NoTailroom)] {
        let mut pkts = [PktBuf::from_frame(&reply, head, tail)];
        let mut res = [OutResult::default()];
        e.encap_burst(&mut pkts, &mut res, &mut Vec::new());
        assert_eq!(res[0].verdict, OutVerdict::Drop(want));
        assert_eq!(pkts[0].data(), &reply[..], "a dropped packet is left as it was");
        saw(want);
    }
    // A host that cannot record a sequence-number reservation.
    struct Refusing;
    impl natt_engine::Host for Refusing {
        fn event(&mut self, _: natt_engine::Event) {}
        fn reserve_seq(&mut self, _: natt_engine::event::SeqReservation) -> bool {
            false
        }
    }
    let mut pkts = [PktBuf::from_frame(&reply, 128, 64)];
    let mut res = [OutResult::default()];
    s.headend().encap_burst(&mut pkts, &mut res, &mut Refusing);
    assert_eq!(res[0].verdict, OutVerdict::Drop(DropReason::SeqUnreserved));
    saw(DropReason::SeqUnreserved);
    let mut x = engine(
        Setup { extra_out: json!({"last_seq": 0xffff_ffffu64}), ..Setup::default() }.headend_json(),
        EngineConfig::default(),
    );
    expect_out(&mut x, &reply, DropReason::SeqExhausted);
    expect_out(&mut x, &reply, DropReason::SaExpired);
    // IPv6 transport mode with extension headers.
    let mut t =
        engine(Setup { transport: true, v6_outer: true, ..Setup::default() }.headend_json(), EngineConfig::default());
    let mut ip = ipv6_header(OUTER6.headend, OUTER6.nat, 0, 16, 64, 0);
    ip.extend_from_slice(&[17, 0, 0, 0, 0, 0, 0, 0]);
    ip.extend_from_slice(&[0u8; 8]);
    expect_out(&mut t, &eth(0x86dd, &ip), DropReason::TransportExtHeaders);
}

#[test]
fn zz_every_engine_reason_was_reached() {
    // Run the others first (they are in this binary; the harness may order them).
    l2_and_ip_header_errors();
    rfc3948_and_esp_header_errors();
    errors_after_the_sa_is_known();
    fragment_attacks();
    outbound_errors();
    let seen = SEEN.lock().unwrap().clone();
    let missing: Vec<&str> = DropReason::ALL
        .iter()
        .filter(|r| r.scope() != Scope::Dataplane && !seen.contains(r.name()))
        .map(|r| r.name())
        .collect();
    assert!(missing.is_empty(), "drop reasons no hostile-input test reaches: {missing:?}");
}
