#!/usr/bin/env python3
"""Write seed inputs for the `inbound` fuzz target (see fuzz_targets/inbound.rs for the
record format) into the directory given, one file per seed."""
import os
import struct
import sys


# op: bits 0-1 the record kind, bits 4-6 the headroom before the frame (0x70: 112 bytes,
# room for the outer headers encapsulation prepends), bits 2-7 the time step.
def rec(op, body):
    return bytes([op]) + struct.pack(">H", len(body)) + body


def csum(b):
    s = sum(struct.unpack(">%dH" % (len(b) // 2), b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF


def ipv4(src, dst, proto, payload, ttl=64):
    h = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, 0x4000, ttl, proto, 0, bytes(src), bytes(dst))
    h = h[:10] + struct.pack(">H", csum(h)) + h[12:]
    return h + payload


def udp(sport, dport, payload):
    return struct.pack(">HHHH", sport, dport, 8 + len(payload), 0) + payload


def eth(l3, et=0x0800):
    return b"\x02\x00\x00\x00\x00\x01\x02\x00\x00\x00\x00\x02" + struct.pack(">H", et) + l3


def trailer(payload, nh):
    pad = (4 - (len(payload) + 2) % 4) % 4
    return payload + bytes(range(1, pad + 1)) + bytes([pad, nh])


inner = ipv4([10, 8, 0, 2], [10, 0, 1, 5], 17, udp(5000, 53, b"hello"))
seeds = {
    "authentic_tunnel": rec(1 | 4, bytes([0]) + struct.pack(">I", 1) + b"\x01" + trailer(inner, 4)),
    "authentic_transport": rec(1, bytes([1]) + struct.pack(">I", 7) + b"\x00" + trailer(udp(1701, 1701, b"l2tp"), 17)),
    "authentic_gmac": rec(1, bytes([2]) + struct.pack(">I", 300) + b"\x01" + trailer(inner, 4)),
    "keepalive": rec(0, eth(ipv4([198, 51, 100, 7], [203, 0, 113, 1], 17, udp(4500, 4500, b"\xff")))),
    "ike": rec(0, eth(ipv4([198, 51, 100, 7], [203, 0, 113, 1], 17, udp(4500, 4500, b"\x00" * 4 + b"ikev2")))),
    "outbound": rec(2 | 0x70, eth(ipv4([10, 0, 1, 5], [10, 8, 0, 2], 17, udp(53, 5000, b"reply")))),
    "fragments": rec(3, struct.pack(">HH", 0x2000, 10) + b"A" * 16) + rec(3 | 8, struct.pack(">HH", 2, 10) + b"B" * 9),
}
# A TCP SYN with MSS 1460 after a NOP (MSS clamping, both ways), and a packet too big
# for the tunnel with DF set (the ICMP error built in its place).
tcp_syn = struct.pack(">HHIIBBHHH", 40000, 443, 1, 0, 7 << 4, 0x02, 64240, 0, 0) + bytes([1, 2, 4, 5, 0xB4, 4, 2, 0])
seeds["syn_in"] = rec(1 | 4, bytes([0]) + struct.pack(">I", 2) + b"\x01" + trailer(ipv4([10, 8, 0, 2], [10, 0, 1, 5], 6, tcp_syn), 4))
seeds["syn_out"] = rec(2 | 0x70, eth(ipv4([10, 0, 1, 5], [10, 8, 0, 2], 6, tcp_syn)))
seeds["ttl_1"] = rec(2 | 0x70, eth(ipv4([10, 0, 1, 5], [10, 8, 0, 2], 17, udp(33434, 33435, b"probe"), ttl=1)))
seeds["too_big"] = rec(2 | 0x70, eth(ipv4([10, 0, 1, 5], [10, 8, 0, 2], 17, udp(53, 5000, bytes(1480)))))
# Sizes that cross the crypto libraries' block loops (16, 64, 128, 256 bytes at a time),
# delivered, so their bytes are compared between the two backends. Grouped so that no
# seed is longer than the run's -max_len (4096), which would cut it short.
sizes = [0, 15, 16, 17, 47, 63, 64, 65, 127, 255, 256, 257, 511, 700, 1024, 1400]
payload = bytes(range(256)) * 6
tunnel = [
    rec(1 | 4, bytes([0]) + struct.pack(">I", 10 + i) + b"\x01" + trailer(ipv4([10, 8, 0, 2], [10, 0, 1, 5], 17, udp(5000, 53, payload[:n])), 4))
    for i, n in enumerate(sizes)
]
outbound = [rec(2 | 0x70, eth(ipv4([10, 0, 1, 5], [10, 8, 0, 2], 17, udp(53, 5000, payload[:n])))) for n in sizes]
for name, recs in (("authentic_tunnel_sizes", tunnel), ("outbound_sizes", outbound)):
    group, part = b"", 0
    for r in recs:
        if len(group) + len(r) > 4096:
            seeds["%s_%d" % (name, part)], group, part = group, b"", part + 1
        group += r
    seeds["%s_%d" % (name, part)] = group
out = sys.argv[1]
os.makedirs(out, exist_ok=True)
for name, data in seeds.items():
    with open(os.path.join(out, name), "wb") as f:
        f.write(data)
