#!/usr/bin/env python3
"""Regenerate samples/: an SA configuration for a headend with four remote clients, a
capture of what reaches its public side (natt.pcap) and one of what its protected
network sends back (plain.pcap). The ESP in natt.pcap is made by scapy, not by us.

    .venv/bin/python scripts/make-samples.py

Deterministic: keys, IVs and timestamps are fixed, so the files only change when this
script does."""

import hashlib
import json
import os
import struct

from scapy.utils import PcapWriter
from scapy.all import ARP, ICMP, IP, TCP, UDP, Ether, IPv6, Raw, fragment, raw, wrpcap
from scapy.layers.inet import IP as IPL
from scapy.layers.ipsec import ESP, SecurityAssociation

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "samples")
HEADEND4, HEADEND6 = "203.0.113.1", "2001:db8:1::1"
MAC_GW, MAC_US = "02:00:00:00:00:fe", "02:00:00:00:00:01"


def key(seed, n):
    """Key and salt (the last 4 bytes) for the SA with SPI `seed`: distinct per SA, as they
    must be (two SAs with one key and salt would repeat AES-GCM nonces)."""
    out = b""
    while len(out) < n + 4:
        out += hashlib.sha256(b"natt sample %d %d" % (seed, len(out))).digest()
    return out[: n + 4]


CLIENTS = [
    # name, algorithm (ours, scapy, key bytes), outer peer, NAT port, inner, ESN, mode
    dict(name="alice", alg=("aes128-gcm", "AES-GCM", 16), peer=HEADEND4 and "198.51.100.7", port=4500, inner="10.8.0.2", esn=False, mode="tunnel", spi_in=0x1001, spi_out=0x2001),
    dict(name="bob", alg=("aes256-gcm", "AES-GCM", 32), peer="198.51.100.7", port=40001, inner="10.8.0.3", esn=True, mode="tunnel", spi_in=0x1002, spi_out=0x2002),
    dict(name="carol", alg=("chacha20-poly1305", "CHACHA20-POLY1305", 32), peer="2001:db8:2::7", port=4500, inner="fd00:8::7", esn=False, mode="tunnel", spi_in=0x1003, spi_out=0x2003),
    dict(name="dave", alg=("aes128-gcm", "AES-GCM", 16), peer="198.51.100.20", port=4500, inner=None, esn=False, mode="transport", spi_in=0x1004, spi_out=0x2004),
]


def sa_config(c, direction):
    spi = c["spi_in"] if direction == "inbound" else c["spi_out"]
    k = key(spi, c["alg"][2])
    v6 = ":" in c["peer"]
    sa = {
        "name": f"{c['name']}-{'in' if direction == 'inbound' else 'out'}",
        "spi": f"0x{spi:08x}",
        "direction": direction,
        "mode": c["mode"],
        "algorithm": c["alg"][0],
        "key": k[:-4].hex(),
        "salt": k[-4:].hex(),
        "local": HEADEND6 if v6 else HEADEND4,
        "peer": c["peer"],
        "encap": {"local_port": 4500, "peer_port": c["port"]},
        "esn": c["esn"],
        "lifetime": {"soft_bytes": 400_000_000_000, "hard_bytes": 500_000_000_000},
    }
    if c["mode"] == "tunnel":
        sa["selectors"] = {
            "local": ["fd00:10::/64"] if v6 else ["10.0.0.0/16"],
            "peer": [f"{c['inner']}/{128 if v6 else 32}"],
        }
    if direction == "inbound":
        sa["replay_window"] = 1024
        sa["paired_spi"] = f"0x{c['spi_out']:08x}"
    else:
        sa["ttl"] = 64
    return sa


def client_sa(c):
    """What the client uses to send to us: our inbound SA."""
    v6 = ":" in c["peer"]
    ipc = IPv6 if v6 else IP
    kw = {"nat_t_header": UDP(sport=c["port"], dport=4500)}
    if c["mode"] == "tunnel":
        kw["tunnel_header"] = ipc(src=c["peer"], dst=HEADEND6 if v6 else HEADEND4)
    sa = SecurityAssociation(ESP, spi=c["spi_in"], crypt_algo=c["alg"][1], crypt_key=key(c["spi_in"], c["alg"][2]), **kw)
    sa.esn_en = c["esn"]
    return sa


def encrypt(c, inner, seq):
    sa = client_sa(c)
    sa.seq_num, sa.esn = seq & 0xFFFFFFFF, seq >> 32
    return sa.encrypt(inner, seq_num=seq & 0xFFFFFFFF, iv=struct.pack(">Q", seq), esn_en=c["esn"], esn=seq >> 32)


def request(c, n, text):
    if c["mode"] == "transport":
        return IP(src=c["peer"], dst=HEADEND4) / UDP(sport=1701, dport=1701) / Raw(text)
    if ":" in c["inner"]:
        return IPv6(src=c["inner"], dst="fd00:10::5") / UDP(sport=40000 + n, dport=53) / Raw(text)
    return IP(src=c["inner"], dst="10.0.1.5") / TCP(sport=40000 + n, dport=443, flags="PA", seq=1000 * n) / Raw(text)


def main():
    alice, bob, carol, dave = CLIENTS
    frames = []
    t = [1_700_000_000.0]

    def add(pkt, gap=0.001):
        t[0] += gap
        f = Ether(src=MAC_GW, dst=MAC_US) / pkt
        f.time = t[0]
        frames.append(f)

    # IKE first: on 500, then on 4500 behind the non-ESP marker; a NAT keepalive.
    add(IP(src=alice["peer"], dst=HEADEND4) / UDP(sport=500, dport=500) / Raw(bytes(8) + b"\x21\x20\x22\x08" + bytes(16)))
    add(IP(src=alice["peer"], dst=HEADEND4) / UDP(sport=4500, dport=4500) / Raw(bytes(4) + bytes(8) + b"\x2e\x20\x23\x08" + bytes(16)))
    add(IP(src=alice["peer"], dst=HEADEND4) / UDP(sport=4500, dport=4500) / Raw(b"\xff"))
    # Traffic from every client.
    a1 = encrypt(alice, request(alice, 1, b"GET / HTTP/1.1\r\nHost: intranet\r\n\r\n"), 1)
    add(a1)
    add(encrypt(alice, request(alice, 2, b"x" * 600), 2))
    add(encrypt(bob, request(bob, 1, b"bob's first packet"), (5 << 32) | 0xFFFFFFFE))
    add(encrypt(bob, request(bob, 2, b"bob's packet across the 2^32 boundary"), 6 << 32))
    add(encrypt(carol, request(carol, 1, b"\x12\x34\x01\x00" + bytes(8)), 1))
    add(encrypt(dave, request(dave, 1, b"\xc8\x02\x00\x14" + bytes(16)), 1))
    # A big packet from alice, fragmented on the way (outer IPv4 fragments).
    big = encrypt(alice, request(alice, 3, b"y" * 1400), 3)
    for frag in fragment(big, fragsize=1000):
        add(frag)
    # Alice's NAT rebinds her to another port: the engine follows it.
    a4 = encrypt(alice, request(alice, 4, b"after the rebinding"), 4)
    a4[UDP].sport = 41234
    add(a4)
    # Hostile or broken: a replay, a forgery, a spoofed inner source, an unknown SPI,
    # AH, and a UDP/4500 payload too short for ESP.
    add(a1)
    forged = raw(encrypt(alice, request(alice, 5, b"forged"), 5))
    add(IP(forged[:-1] + bytes([forged[-1] ^ 0x55])))
    spoof = request(alice, 6, b"pretending to be bob")
    spoof[IP].src = bob["inner"]
    spoofed = encrypt(alice, IP(raw(spoof)), 6)
    spoofed[UDP].sport = 41234  # from where alice now is
    add(spoofed)
    add(IP(src="192.0.2.99", dst=HEADEND4) / UDP(sport=4500, dport=4500) / ESP(spi=0xDEAD, seq=1, data=bytes(48)))
    add(IP(src="192.0.2.99", dst=HEADEND4, proto=51) / Raw(bytes(24)))
    add(IP(src="192.0.2.99", dst=HEADEND4) / UDP(sport=4500, dport=4500) / Raw(b"\x01\x02\x03"))

    wrpcap(os.path.join(OUT, "natt.pcap"), frames)

    # What the protected network sends back, plus what has no SA and what is not IP.
    replies = []
    for n, (dst, src) in enumerate([("10.8.0.2", "10.0.1.5"), ("10.8.0.3", "10.0.1.5"), ("fd00:8::7", "fd00:10::5"), ("10.9.9.9", "10.0.1.5")]):
        ipc = IPv6 if ":" in dst else IP
        replies.append(Ether(src=MAC_GW, dst=MAC_US) / ipc(src=src, dst=dst) / UDP(sport=53, dport=40000 + n) / Raw(b"reply %d" % n))
    replies.append(Ether(src=MAC_GW, dst=MAC_US) / IP(src=HEADEND4, dst=dave["peer"]) / UDP(sport=1701, dport=1701) / Raw(b"\xc8\x02" + bytes(18)))
    replies.append(Ether(src=MAC_GW, dst="ff:ff:ff:ff:ff:ff") / ARP(psrc="10.0.1.5", pdst="10.0.0.1"))
    for i, f in enumerate(replies):
        f.time = 1_700_000_100.0 + i * 0.001
    wrpcap(os.path.join(OUT, "plain.pcap"), replies)

    # Sustained load for the demo's second phase: replies to the three tunnel-mode
    # clients, 64 to 1400 bytes, replayed in a loop.
    load = []
    for i in range(96):
        c = CLIENTS[i % 3]
        size = [64, 512, 1400][(i // 3) % 3]
        ipc = IPv6 if ":" in c["inner"] else IP
        hdr = 48 if ipc is IPv6 else 28
        src = "fd00:10::5" if ipc is IPv6 else "10.0.1.5"
        f = Ether(src=MAC_GW, dst=MAC_US) / ipc(src=src, dst=c["inner"]) / UDP(sport=443, dport=40000 + i) / Raw(bytes(size - hdr))
        f.time = 1_700_000_200.0 + i * 0.0001
        load.append(f)
    wrpcap(os.path.join(OUT, "load.pcap"), load)

    # net_pcap needs a file to read even for a port that only sends.
    w = PcapWriter(os.path.join(OUT, "empty.pcap"), linktype=1, sync=True)
    w._write_header(None)
    w.close()

    sas = []
    for c in CLIENTS:
        sas += [sa_config(c, "inbound"), sa_config(c, "outbound")]
    # Bob's inbound SA starts with its window at 5·2^32 + 0xfffffff0 (ESN).
    sas[2]["last_seq"] = (5 << 32) | 0xFFFFFFF0
    with open(os.path.join(OUT, "headend.json"), "w") as f:
        json.dump({"version": 1, "sas": sas}, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
