//! The ICMP errors the engine sends back in place of packets it cannot forward: for
//! packets too big for the tunnel (Fragmentation Needed, Packet Too Big) and for packets
//! whose TTL or hop limit runs out here (Time Exceeded), checked field by field and byte
//! for byte against the packet that caused them; the largest packet reported is the
//! largest that leaves; what may not be answered is dropped; the rate limit holds.

mod common;

use common::*;
use natt_engine::icmp_error::IcmpConfig;
use natt_engine::wire::checksum;
use natt_engine::{DropReason, Engine, EngineConfig, Frame, OutResult, OutVerdict, PktBuf};
use serde_json::json;

const INSIDE4: &str = "10.0.0.1";
const INSIDE6: &str = "fd00:10::1";

fn headend_with(icmp: IcmpConfig, setup: &Setup) -> Engine {
    engine(setup.headend_json(), EngineConfig { icmp, ..EngineConfig::default() })
}

/// A UDP packet from the server to the client whose inner IP packet is `len` bytes.
fn reply(src: &str, dst: &str, len: usize) -> Vec<u8> {
    let hl = if src.contains(':') { 40 } else { 20 };
    let payload: Vec<u8> = (0..len - hl - 8).map(|i| (i * 7) as u8).collect();
    ip_udp_frame(src, dst, 53, 5000, &payload, 64)
}

/// The same frame with DF cleared in its IPv4 header (checksum fixed).
fn without_df(frame: &[u8]) -> Vec<u8> {
    let mut f = frame.to_vec();
    f[20] &= !0x40;
    f[24..26].copy_from_slice(&[0, 0]);
    let c = checksum::checksum(&f[14..34]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
    f
}

fn addr4(b: &[u8]) -> String {
    core::net::Ipv4Addr::from(<[u8; 4]>::try_from(b).unwrap()).to_string()
}

fn addr6(b: &[u8]) -> String {
    core::net::Ipv6Addr::from(<[u8; 16]>::try_from(b).unwrap()).to_string()
}

/// Check an ICMP Fragmentation Needed frame about `original` from `from`: every field.
fn check_frag_needed(out: &[u8], original: &[u8], from: &str, mtu: u16) {
    let inner = &original[14..];
    // Back to the sender: the addresses of the frame swapped.
    assert_eq!((&out[..6], &out[6..12], &out[12..14]), (&original[6..12], &original[..6], &[0x08u8, 0x00][..]));
    let ip = &out[14..34];
    let quoted = inner.len().min(576 - 28);
    assert_eq!(out.len(), 14 + 28 + quoted);
    assert_eq!((ip[0], ip[1], u16::from_be_bytes([ip[2], ip[3]])), (0x45, 0xc0, (28 + quoted) as u16));
    assert_eq!((ip[6] & 0x40, ip[8], ip[9]), (0, 64, 1), "no DF, TTL 64, ICMP");
    assert_eq!(checksum::fold(checksum::sum(ip)), 0xffff, "IPv4 header checksum");
    assert_eq!((addr4(&ip[12..16]), addr4(&ip[16..20])), (from.to_string(), addr4(&inner[12..16])));
    let icmp = &out[34..];
    assert_eq!((icmp[0], icmp[1], &icmp[4..6], u16::from_be_bytes([icmp[6], icmp[7]])), (3, 4, &[0u8, 0][..], mtu));
    assert_eq!(checksum::fold(checksum::sum(icmp)), 0xffff, "ICMP checksum");
    // The packet as it arrived: its TTL not yet decremented.
    assert_eq!(&icmp[8..], &inner[..quoted]);
}

fn check_packet_too_big(out: &[u8], original: &[u8], from: &str, mtu: u32) {
    let inner = &original[14..];
    assert_eq!((&out[..6], &out[6..12], &out[12..14]), (&original[6..12], &original[..6], &[0x86u8, 0xdd][..]));
    let ip = &out[14..54];
    let quoted = inner.len().min(1280 - 48);
    assert_eq!(out.len(), 14 + 48 + quoted);
    assert_eq!((ip[0] >> 4, u16::from_be_bytes([ip[4], ip[5]]), ip[6], ip[7]), (6, (8 + quoted) as u16, 58, 64));
    let (src, dst) = (addr6(&ip[8..24]), addr6(&ip[24..40]));
    assert_eq!((src.as_str(), dst.as_str()), (from, addr6(&inner[8..24]).as_str()));
    let icmp = &out[54..];
    assert_eq!((icmp[0], icmp[1], u32::from_be_bytes(icmp[4..8].try_into().unwrap())), (2, 0, mtu));
    let pseudo = checksum::pseudo_v6(&src.parse().unwrap(), &dst.parse().unwrap(), 58, icmp.len() as u32);
    assert_eq!(checksum::fold(pseudo + checksum::sum(icmp)), 0xffff, "ICMPv6 checksum");
    assert_eq!(&icmp[8..], &inner[..quoted]);
}

#[test]
fn a_df_packet_too_big_becomes_fragmentation_needed_with_the_largest_size_that_fits() {
    let s = Setup::default();
    let mut e = headend_with(IcmpConfig::default(), &s);
    // IPv4 outside, UDP, 16 bytes of ESP header and IV, 16 of ICV, padding to 4: 1438.
    let fits = reply(SERVER4, CLIENT_IN4, 1438);
    let (r, out, _) = encap(&mut e, &fits);
    assert_eq!((r.verdict, out.len()), (OutVerdict::Encapsulated, 14 + 1500), "1438 inner bytes fill 1500 exactly");
    let big = reply(SERVER4, CLIENT_IN4, 1439);
    let (r, out, _) = encap(&mut e, &big);
    assert_eq!((r.verdict, r.spi), (OutVerdict::IcmpTooBig, Some(SPI_OUT)));
    // No source given: the SA's own address.
    check_frag_needed(&out, &big, OUTER4.headend, 1438);
    let full = reply(SERVER4, CLIENT_IN4, 1500);
    let (r, out, _) = encap(&mut e, &full);
    assert_eq!(r.verdict, OutVerdict::IcmpTooBig);
    check_frag_needed(&out, &full, OUTER4.headend, 1438);
    let c = e.counters();
    assert_eq!((c.icmp_too_big, c.encap_packets, c.total_drops()), (2, 1, 0));
    // The sequence number was not taken: the next packet that fits gets 2.
    let (r, _, _) = encap(&mut e, &fits);
    assert_eq!(r.seq, 2);
}

#[test]
fn the_size_reported_follows_the_sa_padding_and_outer_family_and_the_source_given() {
    let icmp = IcmpConfig { source_v4: Some(INSIDE4.parse().unwrap()), ..IcmpConfig::default() };
    let padded = Setup { extra_out: json!({"pad_to": 16}), ..Setup::default() };
    let mut e = headend_with(icmp, &padded);
    let big = reply(SERVER4, CLIENT_IN4, 1480);
    let (r, out, _) = encap(&mut e, &big);
    assert_eq!(r.verdict, OutVerdict::IcmpTooBig);
    check_frag_needed(&out, &big, INSIDE4, 1438);
    let (r, out, _) = encap(&mut e, &reply(SERVER4, CLIENT_IN4, 1438));
    assert_eq!((r.verdict, out.len()), (OutVerdict::Encapsulated, 14 + 1500));

    // IPv6 outside: 40 + 8 + 16 before the payload; 1418 fits, as sent.
    let v6 = Setup { v6_outer: true, ..Setup::default() };
    let mut e = headend_with(IcmpConfig::default(), &v6);
    let (r, out, _) = encap(&mut e, &reply(SERVER6, CLIENT_IN6, 1418));
    assert_eq!((r.verdict, out.len()), (OutVerdict::Encapsulated, 14 + 1500));
    let big = reply(SERVER6, CLIENT_IN6, 1419);
    let (r, out, _) = encap(&mut e, &big);
    assert_eq!(r.verdict, OutVerdict::IcmpTooBig);
    check_packet_too_big(&out, &big, OUTER6.headend, 1418);
}

#[test]
fn ipv6_inside_an_ipv4_tunnel_needs_an_ipv6_source() {
    let s = Setup::default();
    let big = reply(SERVER6, CLIENT_IN6, 1500);
    let mut e = headend_with(IcmpConfig::default(), &s);
    let (r, out, _) = encap(&mut e, &big);
    assert_eq!(r.verdict, OutVerdict::Drop(DropReason::MtuExceeded));
    assert_eq!(out, big, "a dropped packet is left as it was");
    let icmp = IcmpConfig { source_v6: Some(INSIDE6.parse().unwrap()), ..IcmpConfig::default() };
    let mut e = headend_with(icmp, &s);
    let (r, out, _) = encap(&mut e, &big);
    assert_eq!(r.verdict, OutVerdict::IcmpTooBig);
    check_packet_too_big(&out, &big, INSIDE6, 1438);
}

#[test]
fn what_may_not_be_answered_is_dropped() {
    let s = Setup::default();
    let mut e = headend_with(IcmpConfig::default(), &s);
    // DF clear: it would want fragmenting, not an error.
    let no_df = without_df(&reply(SERVER4, CLIENT_IN4, 1500));
    let (r, out, _) = encap(&mut e, &no_df);
    assert_eq!((r.verdict, out), (OutVerdict::Drop(DropReason::MtuExceeded), no_df));
    // An ICMP error is never answered with one; an echo request is.
    let icmp_frame = |t: u8| {
        let mut body = vec![0u8; 1472];
        body[0] = t;
        let c = checksum::checksum(&body);
        body[2..4].copy_from_slice(&c.to_be_bytes());
        let mut ip = ipv4_header(SERVER4, CLIENT_IN4, 1, body.len(), 64, 0, 7);
        ip.extend_from_slice(&body);
        eth(0x0800, &ip)
    };
    let (r, _, _) = encap(&mut e, &icmp_frame(3));
    assert_eq!(r.verdict, OutVerdict::Drop(DropReason::MtuExceeded));
    let (r, _, _) = encap(&mut e, &icmp_frame(11));
    assert_eq!(r.verdict, OutVerdict::Drop(DropReason::MtuExceeded));
    let echo = icmp_frame(8);
    let (r, out, _) = encap(&mut e, &echo);
    assert_eq!(r.verdict, OutVerdict::IcmpTooBig);
    check_frag_needed(&out, &echo, OUTER4.headend, 1438);
    // ICMPv6 errors neither.
    let icmp = IcmpConfig { source_v6: Some(INSIDE6.parse().unwrap()), ..IcmpConfig::default() };
    let mut e = headend_with(icmp, &s);
    let mut ip = ipv6_header(SERVER6, CLIENT_IN6, 58, 1460, 64, 0);
    ip.extend_from_slice(&[1u8; 1460]);
    let (r, _, _) = encap(&mut e, &eth(0x86dd, &ip));
    assert_eq!(r.verdict, OutVerdict::Drop(DropReason::MtuExceeded));
    assert_eq!((e.counters().icmp_too_big, e.counters().drops_of(DropReason::MtuExceeded)), (0, 1));
    // Transport mode carries the host's own packets: no error.
    let t = Setup { transport: true, ..Setup::default() };
    let mut e = headend_with(IcmpConfig::default(), &t);
    let (r, _, _) = encap(&mut e, &reply(OUTER4.headend, OUTER4.nat, 1500));
    assert_eq!(r.verdict, OutVerdict::Drop(DropReason::MtuExceeded));
}

#[test]
fn errors_are_rate_limited() {
    let s = Setup::default();
    // 20 a second: bursts of 2, then one each 50 ms.
    let mut e = headend_with(IcmpConfig { rate: 20, ..IcmpConfig::default() }, &s);
    let big = reply(SERVER4, CLIENT_IN4, 1500);
    let verdicts = |e: &mut Engine, n: usize| -> Vec<OutVerdict> { (0..n).map(|_| encap(e, &big).0.verdict).collect() };
    let (sent, dropped) = (OutVerdict::IcmpTooBig, OutVerdict::Drop(DropReason::MtuExceeded));
    assert_eq!(verdicts(&mut e, 3), [sent, sent, dropped]);
    e.tick(49_000_000);
    assert_eq!(verdicts(&mut e, 1), [dropped]);
    e.tick(50_000_000);
    assert_eq!(verdicts(&mut e, 2), [sent, dropped]);
    // A whole burst of them in one call: the budget holds within a burst too.
    e.tick(10_000_000_000);
    let mut pkts: Vec<_> = (0..5).map(|_| PktBuf::from_frame(&big, HEADROOM, TAILROOM)).collect();
    let mut res = vec![OutResult::default(); 5];
    e.encap_burst(&mut pkts, &mut res, &mut Vec::new());
    assert_eq!(res.iter().map(|r| r.verdict).collect::<Vec<_>>(), [sent, sent, dropped, dropped, dropped]);
    assert_eq!(pkts[4].data(), &big[..]);
    let mut off = headend_with(IcmpConfig { rate: 0, ..IcmpConfig::default() }, &s);
    assert_eq!(verdicts(&mut off, 1), [dropped]);
}

#[test]
fn without_headroom_for_its_headers_the_packet_is_dropped() {
    let s = Setup::default();
    let mut e = headend_with(IcmpConfig::default(), &s);
    let big = reply(SERVER4, CLIENT_IN4, 1500);
    let mut pkts = [PktBuf::from_frame(&big, 20, TAILROOM)];
    let mut res = [OutResult::default()];
    e.encap_burst(&mut pkts, &mut res, &mut Vec::new());
    assert_eq!(res[0].verdict, OutVerdict::Drop(DropReason::NoHeadroom));
    // IPv6 inside IPv4: 44 bytes in front of the frame for ESP in UDP, 48 for the error.
    let icmp = IcmpConfig { source_v6: Some(INSIDE6.parse().unwrap()), ..IcmpConfig::default() };
    let mut e = headend_with(icmp, &s);
    let big = reply(SERVER6, CLIENT_IN6, 1500);
    let mut pkts = [PktBuf::from_frame(&big, 46, TAILROOM)];
    e.encap_burst(&mut pkts, &mut res, &mut Vec::new());
    assert_eq!(res[0].verdict, OutVerdict::Drop(DropReason::MtuExceeded));
    assert_eq!(pkts[0].data(), &big[..]);
    let mut pkts = [PktBuf::from_frame(&big, 48, TAILROOM)];
    e.encap_burst(&mut pkts, &mut res, &mut Vec::new());
    assert_eq!(res[0].verdict, OutVerdict::IcmpTooBig);
    check_packet_too_big(pkts[0].data(), &big, INSIDE6, 1438);
}

/// Check an ICMP or ICMPv6 Time Exceeded frame about `original` from `from`.
fn check_time_exceeded(out: &[u8], original: &[u8], from: &str) {
    let inner = &original[14..];
    assert_eq!((&out[..6], &out[6..12]), (&original[6..12], &original[..6]));
    if inner[0] >> 4 == 4 {
        let quoted = inner.len().min(576 - 28);
        assert_eq!((out.len(), &out[12..14]), (14 + 28 + quoted, &[0x08u8, 0x00][..]));
        let ip = &out[14..34];
        assert_eq!((ip[9], checksum::fold(checksum::sum(ip))), (1, 0xffff));
        assert_eq!((addr4(&ip[12..16]), addr4(&ip[16..20])), (from.to_string(), addr4(&inner[12..16])));
        let icmp = &out[34..];
        assert_eq!(&icmp[..2], &[11, 0], "Time Exceeded, in transit");
        assert_eq!(&icmp[4..8], &[0u8; 4]);
        assert_eq!(checksum::fold(checksum::sum(icmp)), 0xffff, "ICMP checksum");
        assert_eq!(&icmp[8..], &inner[..quoted]);
    } else {
        let quoted = inner.len().min(1280 - 48);
        assert_eq!((out.len(), &out[12..14]), (14 + 48 + quoted, &[0x86u8, 0xdd][..]));
        let ip = &out[14..54];
        let (src, dst) = (addr6(&ip[8..24]), addr6(&ip[24..40]));
        assert_eq!((ip[6], src.as_str(), dst.as_str()), (58, from, addr6(&inner[8..24]).as_str()));
        let icmp = &out[54..];
        assert_eq!(&icmp[..2], &[3, 0], "ICMPv6 Time Exceeded, hop limit in transit");
        assert_eq!(&icmp[4..8], &[0u8; 4]);
        let pseudo = checksum::pseudo_v6(&src.parse().unwrap(), &dst.parse().unwrap(), 58, icmp.len() as u32);
        assert_eq!(checksum::fold(pseudo + checksum::sum(icmp)), 0xffff, "ICMPv6 checksum");
        assert_eq!(&icmp[8..], &inner[..quoted]);
    }
}

#[test]
fn a_packet_whose_ttl_runs_out_here_becomes_time_exceeded() {
    let icmp = IcmpConfig { source_v6: Some(INSIDE6.parse().unwrap()), ..IcmpConfig::default() };
    let mut e = headend_with(icmp, &Setup::default());
    for ttl in [1u8, 0] {
        let f = ip_udp_frame(SERVER4, CLIENT_IN4, 33434, 33435, b"traceroute probe", ttl);
        let (r, out, _) = encap(&mut e, &f);
        assert_eq!((r.verdict, r.spi), (OutVerdict::IcmpTtlExceeded, Some(SPI_OUT)));
        check_time_exceeded(&out, &f, OUTER4.headend);
        let f = ip_udp_frame(SERVER6, CLIENT_IN6, 33434, 33435, b"traceroute probe", ttl);
        let (r, out, _) = encap(&mut e, &f);
        assert_eq!(r.verdict, OutVerdict::IcmpTtlExceeded);
        check_time_exceeded(&out, &f, INSIDE6);
    }
    // A big one is quoted only as far as fits.
    let f = reply(SERVER4, CLIENT_IN4, 1400);
    let mut f1 = f.clone();
    f1[22] = 1;
    f1[24..26].copy_from_slice(&[0, 0]);
    let c = checksum::checksum(&f1[14..34]);
    f1[24..26].copy_from_slice(&c.to_be_bytes());
    let (r, out, _) = encap(&mut e, &f1);
    assert_eq!(r.verdict, OutVerdict::IcmpTtlExceeded);
    check_time_exceeded(&out, &f1, OUTER4.headend);
    let c = e.counters();
    assert_eq!((c.icmp_ttl_exceeded, c.icmp_too_big, c.encap_packets, c.total_drops()), (5, 0, 0, 0));
    // The one bucket serves both kinds: with a burst of 2, the third error is refused.
    let mut e = headend_with(IcmpConfig { rate: 20, ..IcmpConfig::default() }, &Setup::default());
    let probe = ip_udp_frame(SERVER4, CLIENT_IN4, 33434, 33435, b"p", 1);
    assert_eq!(encap(&mut e, &probe).0.verdict, OutVerdict::IcmpTtlExceeded);
    assert_eq!(encap(&mut e, &reply(SERVER4, CLIENT_IN4, 1500)).0.verdict, OutVerdict::IcmpTooBig);
    assert_eq!(encap(&mut e, &probe).0.verdict, OutVerdict::Drop(DropReason::TtlExceeded));
}
