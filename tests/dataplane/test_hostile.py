"""A capture of malformed and hostile packets, interleaved with good traffic, through the
dataplane: it neither stops nor misses a good packet, and every bad one is counted under
the reason it deserves, exactly."""

import struct

from scapy.all import AH, IP, UDP, Dot1Q, Ether, IPv6, IPv6ExtHdrDestOpt, Raw, raw, rdpcap
from scapy.layers.ipsec import ESP

from dp import HEADEND4, Client, Control, Dataplane, drops, pcap_port, write_pcap

GOOD = Client(0, "aes128-gcm")
OTHER = Client(1, "aes256-gcm")
GW = "02:00:00:00:00:fe"


def hostile():
    """(frame, expected drop reason) pairs."""
    c = GOOD
    src, dst = c.outer_addr, HEADEND4

    def esp_udp(payload, **ip):
        return Ether(src=GW) / IP(src=src, dst=dst, **ip) / UDP(sport=4500, dport=4500) / Raw(payload)

    valid = raw(c.encrypt(c.request(900), 900)[IP])
    elsewhere = IP(valid)
    elsewhere.dst = "203.0.113.99"
    del elsewhere.chksum
    bad_checksum = bytearray(raw(IP(src=src, dst=dst) / UDP(dport=4500) / Raw(bytes(40))))
    bad_checksum[10:12] = b"\x00\x01"
    bad_checksum = bytes(bad_checksum)
    out = [
        (Raw(bytes(range(10))), "frame_truncated"),
        (Ether(src=GW) / Dot1Q(vlan=1) / Dot1Q(vlan=2) / IP(src=src, dst=dst) / UDP(dport=4500) / Raw(bytes(40)),
         "stacked_vlan"),
        (Ether(src=GW, type=0x0800) / Raw(b"\x45\x00\x00\x10" + bytes(16)), "ip_header_invalid"),  # total length < header
        (Ether(src=GW, type=0x0800) / Raw(b"\x4f" + bytes(19)), "ip_header_invalid"),  # IHL past the packet
        (Ether(src=GW, type=0x0800) / Raw(bad_checksum), "ip_checksum_bad"),
        (Ether(src=GW) / IP(src=src, dst=dst) / UDP(sport=4500, dport=4500, len=200) / Raw(bytes(40)), "udp_header_invalid"),
        (esp_udp(b"\x01\x02\x03"), "natt_malformed"),
        (esp_udp(struct.pack(">II", 5, 1) + bytes(40)), "natt_malformed"),
        (Ether(src=GW) / IP(src=src, dst=dst, proto=50) / Raw(struct.pack(">II", 7, 1) + bytes(40)), "esp_spi_reserved"),
        (Ether(src=GW) / IP(src=src, dst=dst) / AH(spi=0x1234, seq=1, icv=bytes(12)) / Raw(bytes(20)), "ah_unsupported"),
        (esp_udp(struct.pack(">II", 0xDEAD0000, 1) + bytes(40)), "no_sa"),
        # Addressed to another headend address.
        (Ether(src=GW) / IP(raw(elsewhere)), "wrong_destination"),
        (esp_udp(struct.pack(">II", c.spi_in, 901) + bytes(8)), "esp_too_short"),
        (esp_udp(raw(IP(valid)[UDP].payload) + b"\x00"), "esp_misaligned"),
        (esp_udp(struct.pack(">II", c.spi_in, 0) + raw(IP(valid)[UDP].payload)[8:]), "replay_stale"),
        (Ether(src=GW) / IP(valid[:-1] + bytes([valid[-1] ^ 1])), "auth_failed"),
        # Spoofing another client's inner address.
        (c.encrypt(OTHER.request(1).__class__(raw(OTHER.request(1))), 902), "selector_mismatch"),
        # IPv6 whose extension-header chain runs past the packet.
        (Ether(src=GW) / IPv6(raw(IPv6(src="2001:db8:2::9", dst="2001:db8:1::1", nh=60, plen=8) / Raw(b"\x11\x05" + bytes(6)))),
         "ip_header_invalid"),
    ]
    # A fragment whose non-final length is not a multiple of 8.
    big = raw(c.encrypt(c.request(903, size=600), 903)[IP])
    ihl = 20
    bad = IP(big[:ihl] + big[ihl:ihl + 101])
    bad.flags, bad.frag, bad.len = "MF", 0, ihl + 101
    del bad.chksum
    out.append((Ether(src=GW) / IP(raw(bad)), "frag_invalid"))
    # Two overlapping fragments of one datagram: the second one drops the datagram, the
    # fragment held before it included.
    f1 = IP(big[:ihl] + big[ihl:ihl + 400])
    f1.id, f1.flags, f1.frag, f1.len = 0x7777, "MF", 0, ihl + 400
    del f1.chksum
    f2 = IP(big[:ihl] + big[ihl + 200:ihl + 600])
    f2.id, f2.flags, f2.frag, f2.len = 0x7777, "MF", 25, ihl + 400
    del f2.chksum
    out.append((Ether(src=GW) / IP(raw(f1)), "frag_overlap"))
    out.append((Ether(src=GW) / IP(raw(f2)), "frag_overlap"))
    # A replay of a good packet (sequence number 1 is sent first below).
    out.append((c.encrypt(c.request(1), 1), "replay_duplicate"))
    # IKE with no kernel interface configured.
    out.append((Ether(src=GW) / IP(src=src, dst=dst) / UDP(sport=500, dport=500) / Raw(bytes(28)), "no_punt_port"))
    return out


def test_hostile_capture_is_counted_per_reason_and_good_traffic_flows(tmp_path):
    ctl = Control(tmp_path)
    ctl.apply([GOOD.sa("inbound"), GOOD.sa("outbound"), OTHER.sa("inbound"), OTHER.sa("outbound")])
    bad = hostile()
    frames, good = [], []
    # Good packets 1..N, with a bad one after each (the replay comes after 1 was accepted).
    n = len(bad) + 5
    for k in range(1, n + 1):
        p = GOOD.request(k)
        good.append(p)
        frames.append(GOOD.encrypt(p, k))
        if k <= len(bad):
            frames.append(bad[k - 1][0])
    write_pcap(tmp_path / "in.pcap", frames)
    write_pcap(tmp_path / "empty.pcap", [])
    dp = Dataplane(ctl, [
        pcap_port("net_pcap0", tmp_path / "in.pcap", tmp_path / "pub.pcap"),
        pcap_port("net_pcap1", tmp_path / "empty.pcap", tmp_path / "prot.pcap"),
    ])
    _, stats = dp.run()
    want = {}
    for _, reason in bad:
        want[reason] = want.get(reason, 0) + 1
    assert drops(stats) == want
    t = stats["totals"]
    assert t["decap_packets"] == n
    assert t["frag_held"] == 1
    assert t["punt_ike"] == 1
    out = rdpcap(str(tmp_path / "prot.pcap"))
    assert [raw(o)[14:] for o in out] == [raw(p) for p in good], "every good packet, unchanged, in order"
    sa = {int(s["spi"], 16): s for s in stats["workers"][0]["sas"]}[GOOD.spi_in]
    per_sa = {k: v for k, v in want.items() if k in ("wrong_destination", "esp_too_short", "esp_misaligned",
                                                     "replay_stale", "replay_duplicate", "auth_failed",
                                                     "selector_mismatch")}
    assert sa["drops"] == per_sa
    assert sa["packets"] == n
