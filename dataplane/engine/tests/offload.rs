//! Checksum offloads: what the receiving NIC found of an IPv4 header checksum is trusted
//! (both ways), and the checksums left for the transmitting NIC, once finished the way a
//! NIC finishes them, give exactly the bytes the engine computes itself.

mod common;

use common::*;
use natt_engine::Frame;
use natt_engine::wire::checksum;
use natt_engine::{
    DropReason, Engine, EngineConfig, InResult, InVerdict, OutResult, OutVerdict, PktBuf, RxChecksum, TxChecksum,
    TxChecksumOffload,
};

fn decap_with(e: &mut Engine, frame: &[u8], nic: RxChecksum) -> (InVerdict, Vec<u8>) {
    let mut pkts = [PktBuf::from_frame(frame, HEADROOM, TAILROOM)];
    pkts[0].set_ip_checksum(nic);
    let mut res = [InResult::default()];
    e.decap_burst(&mut pkts, 0, &mut res, &mut Vec::new());
    (res[0].verdict, pkts[0].data().to_vec())
}

fn encap_with(e: &mut Engine, frame: &[u8], nic: RxChecksum) -> (OutResult, Vec<u8>) {
    let mut pkts = [PktBuf::from_frame(frame, HEADROOM, TAILROOM)];
    pkts[0].set_ip_checksum(nic);
    let mut res = [OutResult::default()];
    e.encap_burst(&mut pkts, &mut res, &mut Vec::new());
    (res[0], pkts[0].data().to_vec())
}

/// Break the IPv4 header checksum of the IP packet at offset 14.
fn corrupt_ip_checksum(f: &[u8]) -> Vec<u8> {
    let mut f = f.to_vec();
    f[24] ^= 0x5a;
    f
}

/// The request a client sends (ESP in UDP over the client's outer family).
fn request(s: &Setup) -> Vec<u8> {
    let mut client = s.client();
    let (r, f, _) = encap(&mut client, &ip_udp_frame(CLIENT_IN4, SERVER4, 1000, 53, b"request", 64));
    assert_eq!(r.verdict, OutVerdict::Encapsulated);
    f
}

#[test]
fn rx_ip_checksum_verdict_of_the_nic_is_trusted() {
    let s = Setup::default();
    let good = request(&s);
    let bad = corrupt_ip_checksum(&good);

    // Not offloaded: the engine verifies.
    let mut e = s.headend();
    assert_eq!(decap_with(&mut e, &bad, RxChecksum::Unknown).0, InVerdict::Drop(DropReason::IpChecksumBad));
    let mut e = s.headend();
    assert_eq!(decap_with(&mut e, &good, RxChecksum::Unknown).0, InVerdict::Tunnel);

    // The NIC's word decides, without a second check.
    let mut e = s.headend();
    assert_eq!(decap_with(&mut e, &good, RxChecksum::Bad).0, InVerdict::Drop(DropReason::IpChecksumBad));
    assert_eq!(e.counters().drops_of(DropReason::IpChecksumBad), 1);
    let mut e = s.headend();
    let (v, out) = decap_with(&mut e, &bad, RxChecksum::Good);
    assert_eq!(v, InVerdict::Tunnel);
    // The inner packet as the client sent it (its TTL decremented by the client's encap).
    assert_eq!(&out[14..], &ttl_minus_one(&ip_udp_frame(CLIENT_IN4, SERVER4, 1000, 53, b"request", 64))[14..]);
}

#[test]
fn rx_inner_checksum_from_the_protected_port_is_trusted() {
    let reply = ip_udp_frame(SERVER4, CLIENT_IN4, 53, 1000, b"reply", 64);
    let bad = corrupt_ip_checksum(&reply);
    let s = Setup::default();
    let mut e = s.headend();
    assert_eq!(encap_with(&mut e, &bad, RxChecksum::Unknown).0.verdict, OutVerdict::Drop(DropReason::IpChecksumBad));
    assert_eq!(encap_with(&mut e, &reply, RxChecksum::Bad).0.verdict, OutVerdict::Drop(DropReason::IpChecksumBad));
    assert_eq!(encap_with(&mut e, &bad, RxChecksum::Good).0.verdict, OutVerdict::Encapsulated);
}

/// What a NIC does with `tx`: the IPv4 header checksum over the zeroed field, the UDP
/// checksum over the segment whose field holds the pseudo-header sum.
fn nic_finish(frame: &mut [u8], tx: &TxChecksum) {
    let l3 = usize::from(tx.l2_len);
    let l4 = l3 + usize::from(tx.l3_len);
    if tx.ipv4_header {
        assert_eq!(&frame[l3 + 10..l3 + 12], &[0, 0], "the header checksum is left zero");
        let c = checksum::checksum(&frame[l3..l4]);
        frame[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
    }
    if tx.udp {
        let c = match !checksum::fold(checksum::sum(&frame[l4..])) {
            0 => 0xffff,
            c => c,
        };
        frame[l4 + 6..l4 + 8].copy_from_slice(&c.to_be_bytes());
    }
}

fn offloaded(s: &Setup) -> Engine {
    let cfg = EngineConfig { tx_checksum: TxChecksumOffload { ipv4_header: true, udp: true }, ..Default::default() };
    engine(s.headend_json(), cfg)
}

#[test]
fn tx_checksums_left_to_the_nic_come_out_identical() {
    for (v6_outer, transport) in [(false, false), (true, false), (false, true), (true, true)] {
        let s = Setup { v6_outer, transport, ..Setup::default() };
        let (inner_src, inner_dst) = if transport { (s.outer().headend, s.outer().nat) } else { (SERVER4, CLIENT_IN4) };
        let reply = ip_udp_frame(inner_src, inner_dst, 53, 1000, b"a reply of some length", 64);
        let mut soft = s.headend();
        let mut hard = offloaded(&s);
        for _ in 0..3 {
            let (rs, want) = encap_with(&mut soft, &reply, RxChecksum::Unknown);
            let (rh, mut got) = encap_with(&mut hard, &reply, RxChecksum::Unknown);
            assert_eq!((rs.verdict, rh.verdict), (OutVerdict::Encapsulated, OutVerdict::Encapsulated));
            assert!(!rs.tx_checksum.any(), "nothing left to the NIC without offloads");
            let tx = rh.tx_checksum;
            let what = format!("v6 outer {v6_outer}, transport {transport}: {tx:?}");
            assert_eq!(tx.ipv4_header, !v6_outer, "{what}");
            assert_eq!(tx.udp, v6_outer, "{what}");
            assert_eq!(tx.ipv6, v6_outer, "{what}");
            assert_eq!(tx.l2_len, 14, "{what}");
            assert_eq!(tx.l3_len, if v6_outer { 40 } else { 20 }, "{what}");
            assert_ne!(got, want, "{what}: the offloaded checksum differs before the NIC");
            nic_finish(&mut got, &tx);
            assert_eq!(hex::encode(&got), hex::encode(&want), "{what}");
        }
    }
}

#[test]
fn tx_ipv4_udp_checksum_stays_zero_and_plain_esp_has_none() {
    // Over IPv4 the UDP checksum is zero (RFC 3948), offload or not; plain ESP has no UDP.
    for encap in [true, false] {
        let s = Setup { encap, ..Setup::default() };
        let mut e = offloaded(&s);
        let (r, f) = encap_with(&mut e, &ip_udp_frame(SERVER4, CLIENT_IN4, 53, 1000, b"x", 64), RxChecksum::Unknown);
        assert_eq!(r.verdict, OutVerdict::Encapsulated);
        assert!(r.tx_checksum.ipv4_header && !r.tx_checksum.udp);
        if encap {
            assert_eq!(&f[34 + 6..34 + 8], &[0, 0]);
        } else {
            assert_eq!(f[23], 50);
        }
    }
}
