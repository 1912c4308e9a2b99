"""The dataplane live, on veth pairs (net_af_packet) in a network namespace of its own,
while a traffic source in another namespace keeps sending both ways.

- SAs added, rekeyed (make before break), removed and replaced through natt-control
  while traffic flows take effect without a restart, and the surviving SAs lose nothing
  and reorder nothing; a replace with the same key keeps the sequence counter and the
  replay window.
- The exception path: IKE (UDP 500, and 4500 behind the non-ESP marker) and other
  traffic for the headend reach a kernel TAP interface exactly as they arrived, so an
  unmodified IKE daemon could read them from an ordinary UDP socket; what the kernel
  sends back leaves by the public port."""

import json
import os
import socket
import struct
import threading
import time

import pytest
from scapy.all import ICMP, IP, TCP, UDP, Ether, Raw, raw
from scapy.layers.ipsec import ESP  # noqa: F401

from dp import Client, Control, Dataplane, drops
from netns import Netns, Port, mac_of, veth

GW = "02:00:00:00:00:fe"


@pytest.fixture
def net(request):
    tag = f"{os.getpid() % 10000}"
    dpns, peer = Netns(f"natt-dp-{tag}"), Netns(f"natt-peer-{tag}")
    veth(dpns, "natt-pub0", peer, "natt-pub1")
    veth(dpns, "natt-prt0", peer, "natt-prt1")
    yield dpns, peer
    dpns.delete()
    peer.delete()


def af_packet(i, iface):
    return f"net_af_packet{i},iface={iface},qpairs=1"


A = Client(0, "aes128-gcm")
B = Client(1, "aes256-gcm", inner=6)
C = Client(2, "chacha20-poly1305")
D = Client(3, "aes128-gcm")
E = Client(4, "aes256-gcm", esn=True)
B2_IN, B2_OUT = 0x31001, 0x32001  # B's SAs after the rekey
ROUNDS = 700
ADD_C, REKEY_B, DEL_D, REPLACE_E = 120, 260, 400, 540
PACE = 0.003


def seqs_and_rounds(frames, client, spi):
    """Decrypt (ICV verified) the frames of outbound SA `spi`; return [(esp seq, round)]."""
    out = []
    for f in frames:
        e = Ether(f)
        if UDP not in e or e[UDP].sport != 4500:
            continue
        payload = raw(e[UDP].payload)
        if int.from_bytes(payload[:4], "big") != spi:
            continue
        seq = int.from_bytes(payload[4:8], "big")
        inner = client.decrypt(e, seq, spi=spi)
        idx, n = struct.unpack(">II", raw(inner[UDP].payload)[:8])
        assert idx == client.idx
        out.append((seq, n))
    return out


def test_sa_changes_while_traffic_flows(net, tmp_path):
    dpns, peer = net
    ctl = Control(tmp_path)
    b2 = dict(B.sa("inbound", spi=B2_IN), paired_spi=f"0x{B2_OUT:08x}")
    b2_out = B.sa("outbound", spi=B2_OUT)
    e_new = dict(E.sa("outbound"), ttl=33)
    ctl.apply([sa for c in (A, B, D, E) for sa in (c.sa("inbound"), c.sa("outbound"))])
    ctl.start_daemon()
    pub, prt = Port(peer, "natt-pub1"), Port(peer, "natt-prt1")
    dp = Dataplane(ctl, [af_packet(0, "natt-pub0"), af_packet(1, "natt-prt0")], netns=dpns,
                   opts=["--drain-us", "50"]).start()
    try:
        prt_mac, pub_mac = mac_of(dpns, "natt-prt0"), mac_of(dpns, "natt-pub0")
        # Precompute what the clients send (scapy is slow): requests under every SA a
        # client may use, replies from the protected network.
        req = {}
        for c, spi in ((A, A.spi_in), (B, B.spi_in), (B, B2_IN), (C, C.spi_in), (D, D.spi_in), (E, E.spi_in)):
            req[spi] = [raw(c.encrypt(c.request(r), r + 1, spi=spi)) for r in range(ROUNDS)]
        rep = {c.idx: [raw(Ether(src=GW, dst=prt_mac) / c.reply(r)) for r in range(ROUNDS)] for c in (A, B, C, D, E)}

        state = {"round": 0, "b_new": None, "c_from": None, "d_until": None}
        sent_in = {k: [] for k in req}
        stragglers = []

        def source():
            for r in range(ROUNDS):
                state["round"] = r
                for c in (A, B, C, D, E):
                    prt.send(rep[c.idx][r])
                for c in (A, B, C, D, E):
                    spi = c.spi_in
                    if c is B and state["b_new"] is not None and r >= state["b_new"]:
                        spi = B2_IN
                    if c is C and (state["c_from"] is None or r < state["c_from"]):
                        continue
                    if c is D and state["d_until"] is not None and r >= state["d_until"]:
                        continue
                    pub.send(req[spi][r])
                    sent_in[spi].append(r)
                # In flight when B rekeyed: old-SA packets still arrive during the grace.
                if state["b_new"] is not None and r == state["b_new"] + 3:
                    for k in (1, 2):
                        pub.send(req[B.spi_in][r - k])
                        stragglers.append(r - k)
                time.sleep(PACE)

        t = threading.Thread(target=source)
        t.start()

        def at(r):
            while state["round"] < r:
                time.sleep(0.001)

        at(ADD_C)
        path = tmp_path / "c.json"
        path.write_text(json.dumps({"sas": [C.sa("inbound"), C.sa("outbound")]}))
        ctl.cmd("add", str(path))
        state["c_from"] = state["round"] + 1
        at(REKEY_B)
        path = tmp_path / "b2.json"
        path.write_text(json.dumps({"sas": [b2, b2_out]}))
        ctl.cmd("rekey", "--in", f"0x{B.spi_in:x}", "--out", f"0x{B.spi_out:x}", str(path), "--grace", "60")
        state["b_new"] = state["round"] + 1
        at(DEL_D)
        state["d_until"] = state["round"] + 1
        d_del_from = state["round"]
        ctl.cmd("del", f"0x{D.spi_out:x}")
        ctl.cmd("del", f"0x{D.spi_in:x}")
        d_del_to = state["round"]
        at(REPLACE_E)
        cfg = [A.sa("inbound"), A.sa("outbound"), b2, b2_out, C.sa("inbound"), C.sa("outbound"), E.sa("inbound"), e_new]
        ctl.apply(cfg, grace=60)
        e_replaced = state["round"]
        t.join()
        # After the replace, a packet E sent long ago: the carried-over window knows it.
        pub.send(req[E.spi_in][5])
        time.sleep(0.5)
    finally:
        out, stats = dp.stop()
        pub.close()
        prt.close()
        ctl.stop_daemon()

    protected = prt.received()
    public = pub.received()

    # Inbound: every request sent under an installed SA was decapsulated once, in order.
    got = {}
    for f in protected:
        e = Ether(f)
        if TCP in e or (UDP in e and e[UDP].dport != 53):
            p = raw(e[TCP].payload if TCP in e else e[UDP].payload)
            idx, n = struct.unpack(">II", p[:8])
            got.setdefault(idx, []).append(n)
    assert got[A.idx] == list(range(ROUNDS)), "A lost or reordered packets"
    b_sent = sorted(sent_in[B.spi_in] + sent_in[B2_IN])
    assert sorted(got[B.idx]) == sorted(b_sent + stragglers), "B lost packets across its rekey"
    assert got[C.idx] == sent_in[C.spi_in] and len(got[C.idx]) > 100
    assert got[D.idx] == sent_in[D.spi_in]
    assert got[E.idx] == list(range(ROUNDS)), "E lost or reordered packets across its replace"

    # Outbound: A lost nothing; its sequence numbers run 1..ROUNDS.
    a = seqs_and_rounds(public, A, A.spi_out)
    assert a == [(r + 1, r) for r in range(ROUNDS)]
    # B: under the old SA up to the switch, then the new one from 1; nothing lost.
    old, new = seqs_and_rounds(public, B, B.spi_out), seqs_and_rounds(public, B, B2_OUT)
    assert [n for _, n in old] + [n for _, n in new] == list(range(ROUNDS)), "B lost packets across the switch"
    assert [s for s, _ in old] == list(range(1, len(old) + 1)) and [s for s, _ in new] == list(range(1, len(new) + 1))
    assert REKEY_B - 5 <= len(old) <= state["b_new"] + 5
    # C: from its installation on, everything; D: up to its removal, everything.
    c = [n for _, n in seqs_and_rounds(public, C, C.spi_out)]
    assert c == list(range(c[0], ROUNDS)) and c[0] <= state["c_from"] + 2
    d = [n for _, n in seqs_and_rounds(public, D, D.spi_out)]
    assert d == list(range(0, len(d))) and d_del_from - 2 <= len(d) <= d_del_to + 2
    # E: one sequence of numbers across the replace (same key: the counter carries on),
    # and the new TTL on the outer header after it.
    e = seqs_and_rounds(public, E, E.spi_out)
    assert e == [(r + 1, r) for r in range(ROUNDS)]
    ttls = [Ether(f)[IP].ttl for f in public if UDP in Ether(f) and raw(Ether(f)[UDP].payload)[:4] == E.spi_out.to_bytes(4, "big")]
    assert ttls[0] == 64 and ttls[-1] == 33 and ttls == sorted(ttls, reverse=True)

    # Only what had no SA was dropped, and the replayed packet.
    d_ = drops(stats)
    assert set(d_) <= {"no_outbound_sa", "replay_duplicate"}, d_
    assert d_.get("replay_duplicate") == 1
    no_out = d_.get("no_outbound_sa", 0)
    assert no_out == (ROUNDS - len(c)) + (ROUNDS - len(d)), (no_out, len(c), len(d))
    assert e_replaced >= REPLACE_E


def test_ike_and_host_traffic_reach_the_kernel_and_its_replies_leave(net, tmp_path):
    dpns, peer = net
    ctl = Control(tmp_path)
    ctl.apply([A.sa("inbound"), A.sa("outbound")])
    pub = Port(peer, "natt-pub1")
    # AF_XDP takes the public port's packets from the kernel, as a NIC bound to DPDK
    # would: the host sees only what comes through the TAP.
    dp = Dataplane(ctl, ["net_af_xdp0,iface=natt-pub0", "net_null0,no-rx=1", "net_tap0,iface=natt-tap0"], netns=dpns,
                   opts=["--punt", "2"]).start()
    try:
        pub_mac = mac_of(dpns, "natt-pub0")
        assert mac_of(dpns, "natt-tap0") == pub_mac, "the TAP takes the public port's MAC"
        # The host behind the TAP: the headend's public address, a route to the client.
        dpns.ip("addr", "add", "203.0.113.1/24", "dev", "natt-tap0")
        dpns.ip("link", "set", "natt-tap0", "up")
        dpns.ip("route", "add", "198.51.100.0/24", "dev", "natt-tap0")
        dpns.ip("neigh", "add", "198.51.100.1", "lladdr", GW, "dev", "natt-tap0")
        # An IKE daemon's sockets.
        with dpns.entered():
            s500 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s500.bind(("203.0.113.1", 500))
            s4500 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s4500.bind(("203.0.113.1", 4500))
        for s in (s500, s4500):
            s.settimeout(5)
        ike = bytes(range(40))
        client = "198.51.100.1"
        pub.send(raw(Ether(src=GW, dst=pub_mac) / IP(src=client, dst="203.0.113.1") / UDP(sport=500, dport=500) / Raw(ike)))
        data, addr = s500.recvfrom(2048)
        assert (data, addr) == (ike, (client, 500))
        marked = bytes(4) + ike
        pub.send(raw(Ether(src=GW, dst=pub_mac) / IP(src=client, dst="203.0.113.1") / UDP(sport=4500, dport=4500) / Raw(marked)))
        data, addr = s4500.recvfrom(2048)
        assert (data, addr) == (marked, (client, 4500)), "delivered exactly as it arrived, marker included"
        # The daemon answers: the reply leaves by the public port, unencrypted.
        s500.sendto(b"ike reply", (client, 500))
        got = pub.wait_for(lambda f: UDP in Ether(f) and Ether(f)[UDP].dport == 500)
        assert got, "the kernel's reply did not leave by the public port"
        r = Ether(got[0])
        assert (r.src, r.dst, r[IP].src, r[IP].dst, raw(r[UDP].payload)) == (pub_mac, GW, "203.0.113.1", client, b"ike reply")
        # Other traffic for the headend: a ping is answered by the kernel.
        pub.send(raw(Ether(src=GW, dst=pub_mac) / IP(src=client, dst="203.0.113.1") / ICMP(id=7, seq=1) / Raw(b"ping")))
        got = pub.wait_for(lambda f: ICMP in Ether(f) and Ether(f)[ICMP].type == 0)
        assert got and Ether(got[0])[ICMP].id == 7
    finally:
        out, stats = dp.stop()
        pub.close()
    t = stats["totals"]
    assert t["punt_ike"] == 2 and t["punt_host"] >= 1
    assert t["tx_punt"] >= 3 and t["rx_punt"] >= 2
    assert "no_punt_port" not in drops(stats)
