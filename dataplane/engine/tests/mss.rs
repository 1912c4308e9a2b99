//! TCP MSS clamping through the engine: a SYN entering the tunnel (encapsulated by the
//! headend) and one leaving it (decapsulated) come out with the MSS that fits the
//! tunnel, their checksums good; what needs no clamping, or is told not to be, is
//! carried byte for byte.

mod common;

use common::*;
use natt_engine::wire::checksum;
use natt_engine::{EngineConfig, InVerdict, MssClamp, OutVerdict};

/// A TCP segment from `src` to `dst` with these flags and an MSS option, in a frame.
fn tcp_frame(src: &str, dst: &str, flags: u8, mss: u16) -> Vec<u8> {
    let mut tcp = vec![0u8; 20];
    tcp[0..2].copy_from_slice(&443u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&40000u16.to_be_bytes());
    tcp[4..8].copy_from_slice(&0x1234_5678u32.to_be_bytes());
    tcp[12] = 7 << 4;
    tcp[13] = flags;
    tcp[14..16].copy_from_slice(&64240u16.to_be_bytes());
    // NOP, MSS (at an odd offset), SACK permitted.
    tcp.extend_from_slice(&[1, 2, 4]);
    tcp.extend_from_slice(&mss.to_be_bytes());
    tcp.extend_from_slice(&[4, 2, 0]);
    let v6 = src.contains(':');
    let pseudo = pseudo(src, dst, tcp.len());
    let c = checksum::l4_checksum(pseudo, &tcp);
    tcp[16..18].copy_from_slice(&c.to_be_bytes());
    let mut ip =
        if v6 { ipv6_header(src, dst, 6, tcp.len(), 64, 0) } else { ipv4_header(src, dst, 6, tcp.len(), 64, 0, 9) };
    ip.extend_from_slice(&tcp);
    eth(if v6 { 0x86dd } else { 0x0800 }, &ip)
}

fn pseudo(src: &str, dst: &str, len: usize) -> u64 {
    if src.contains(':') {
        checksum::pseudo_v6(&src.parse().unwrap(), &dst.parse().unwrap(), 6, len as u32)
    } else {
        checksum::pseudo_v4(src.parse().unwrap(), dst.parse().unwrap(), 6, len as u16)
    }
}

/// The MSS option of a frame as `tcp_frame` builds it, after checking its TCP checksum.
fn mss_of(frame: &[u8], src: &str, dst: &str) -> u16 {
    let hl = if src.contains(':') { 40 } else { 20 };
    let tcp = &frame[14 + hl..];
    assert_eq!(checksum::fold(pseudo(src, dst, tcp.len()) + checksum::sum(tcp)), 0xffff, "TCP checksum");
    u16::from_be_bytes([tcp[23], tcp[24]])
}

#[test]
fn syns_each_way_announce_what_fits_the_tunnel() {
    for (v6_outer, server, client) in
        [(false, SERVER4, CLIENT_IN4), (false, SERVER6, CLIENT_IN6), (true, SERVER4, CLIENT_IN4)]
    {
        let s = Setup { v6_outer, ..Setup::default() };
        // The client's engine clamps nothing: what it sees is the headend's doing.
        let off = EngineConfig { mss_clamp: MssClamp::Off, ..EngineConfig::default() };
        let (mut headend, mut user) = (s.headend(), engine(s.client_json(), off));
        // Inbound (first: the headend learns the client's address from it): the reverse
        // path's size, padded to 16 at worst (the paired outbound
        // SA's padding is not looked up): the same over IPv4, 1406 over IPv6.
        let back = if v6_outer { 1406 } else { 1438 } - if server.contains(':') { 60 } else { 40 };
        let (r, esp, _) = encap(&mut user, &tcp_frame(client, server, 0x02, 1460));
        assert_eq!(r.verdict, OutVerdict::Encapsulated);
        let (r, plain, _) = decap(&mut headend, &esp, 0);
        assert_eq!(r.verdict, InVerdict::Tunnel);
        assert_eq!(mss_of(&plain, client, server), back, "SYN out of the tunnel, outer v6 {v6_outer}");
        // Outbound: the largest inner packet that fits (1438 over IPv4, 1418 over
        // IPv6), less the inner IP and TCP headers.
        let fits = if v6_outer { 1418 } else { 1438 };
        let want = fits - if server.contains(':') { 60 } else { 40 };
        let (r, esp, _) = encap(&mut headend, &tcp_frame(server, client, 0x12, 1460));
        assert_eq!(r.verdict, OutVerdict::Encapsulated);
        let (r, plain, _) = decap(&mut user, &esp, 0);
        assert_eq!(r.verdict, InVerdict::Tunnel);
        assert_eq!(mss_of(&plain, server, client), want, "SYN-ACK into the tunnel, outer v6 {v6_outer}");
        assert_eq!(headend.counters().mss_clamped, 2);
    }
}

#[test]
fn what_needs_no_clamping_or_is_told_not_to_is_carried_as_it_is() {
    let s = Setup::default();
    for (cfg, flags, mss) in [
        (MssClamp::Auto, 0x10, 1460), // an ACK: no MSS to speak of
        (MssClamp::Auto, 0x02, 1200), // a SYN already below
        (MssClamp::Off, 0x02, 1460),
    ] {
        let e = EngineConfig { mss_clamp: cfg, ..EngineConfig::default() };
        let mut headend = engine(s.headend_json(), e);
        let mut user = engine(s.client_json(), EngineConfig { mss_clamp: MssClamp::Off, ..EngineConfig::default() });
        // The client speaks first: the headend learns its address (the test's NAT).
        let (_, hello, _) = encap(&mut user, &tcp_frame(CLIENT_IN4, SERVER4, 0x10, 0));
        assert_eq!(decap(&mut headend, &hello, 0).0.verdict, InVerdict::Tunnel);
        let f = tcp_frame(SERVER4, CLIENT_IN4, flags, mss);
        let (_, esp, _) = encap(&mut headend, &f);
        let (r, plain, _) = decap(&mut user, &esp, 0);
        assert_eq!(r.verdict, InVerdict::Tunnel);
        assert_eq!(plain, ttl_minus_one(&f), "{cfg:?} {flags:#x} {mss}");
        assert_eq!(headend.counters().mss_clamped, 0);
    }
    // A fixed limit, either way.
    let e = EngineConfig { mss_clamp: MssClamp::Fixed(1300), ..EngineConfig::default() };
    let off = EngineConfig { mss_clamp: MssClamp::Off, ..EngineConfig::default() };
    let (mut headend, mut user) = (engine(s.headend_json(), e), engine(s.client_json(), off));
    let (_, esp, _) = encap(&mut user, &tcp_frame(CLIENT_IN4, SERVER4, 0x02, 1460));
    let (_, plain, _) = decap(&mut headend, &esp, 0);
    assert_eq!(mss_of(&plain, CLIENT_IN4, SERVER4), 1300);
    let (_, esp, _) = encap(&mut headend, &tcp_frame(SERVER4, CLIENT_IN4, 0x02, 1460));
    let (_, plain, _) = decap(&mut user, &esp, 0);
    assert_eq!(mss_of(&plain, SERVER4, CLIENT_IN4), 1300);
}
