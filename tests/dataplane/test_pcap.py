"""The dataplane on net_pcap ports, against scapy and tshark.

- Clients' ESP in UDP, encrypted by scapy, enters the public port; the plaintext that
  leaves the protected port is byte for byte what scapy encrypted; transport-mode
  packets and IKE reach the kernel interface (here a net_pcap port standing in for it).
- Plaintext entering the protected port leaves the public port encrypted; scapy decrypts
  it (ICV verified) to exactly the packet a router would forward, its ESP bytes equal
  scapy's own encryption, and Wireshark's ESP dissector reports a good ICV.
- All of the above with each crypto library for AES (`--crypto ipsec-mb`, `--crypto ring`).
- Two workers with software dispatch: each SA is processed by the one worker the
  Toeplitz hash of its SPI names, nothing is lost or reordered within an SA, and every
  packet of an SA the receiving worker does not own is handed over exactly once."""

import re
import os
import shutil
import struct
import subprocess
import tempfile

import pytest
from scapy.all import ARP, IP, TCP, UDP, Ether, IPv6, Raw, raw, rdpcap
from scapy.layers.ipsec import ESP

from dp import (HEADEND4, PEER_PROTECTED, PEER_PUBLIC, Client, Control, Dataplane, drops, key_salt, owner,
                pcap_port, routed, write_pcap)

MAC_PUBLIC, MAC_PROTECTED = "02:70:63:61:70:00", "02:70:63:61:70:01"  # net_pcap's MACs for ports 0 and 1
N = 5
ESN_START = (1 << 32) - 3

CLIENTS = [
    Client(0, "aes128-gcm"),
    Client(1, "aes256-gcm", esn=True, inner=6, outer=4),
    Client(2, "chacha20-poly1305", inner=6, outer=6),
    Client(3, "aes128-gcm", mode="transport"),
    Client(4, "aes256-gcm", inner=4, outer=6, nat_port=40001),
    Client(5, "aes128-gcm", esn=True, mode="transport", outer=6),
    Client(6, "aes256-gcm", inner=6, outer=4),
    Client(7, "aes128-gcm", esn=True, inner=4, outer=4, nat_port=61000),
]


def first_seq(c):
    return ESN_START if c.esn else 1


@pytest.fixture(scope="module", params=["ipsec-mb", "ring"])
def both_ways(request, tmp_path_factory):
    crypto = request.param
    tmp = tmp_path_factory.mktemp(f"both-{crypto}")
    ctl = Control(tmp)
    sas = []
    for c in CLIENTS:
        sas += [c.sa("inbound", last_seq=first_seq(c) - 1), c.sa("outbound", last_seq=first_seq(c) - 1)]
    ctl.apply(sas)

    # Inbound: every client's requests, interleaved, plus IKE and a keepalive.
    esp_frames, sent = [], {}
    ike = [
        Ether(src="02:00:00:00:00:fe") / IP(src="198.51.100.1", dst=HEADEND4) / UDP(sport=500, dport=500) / Raw(bytes(28)),
        Ether(src="02:00:00:00:00:fe") / IP(src="198.51.100.1", dst=HEADEND4) / UDP(sport=4500, dport=4500) / Raw(bytes(32)),
    ]
    esp_frames += ike
    esp_frames.append(Ether() / IP(src="198.51.100.1", dst=HEADEND4) / UDP(sport=4500, dport=4500) / Raw(b"\xff"))
    for k in range(N):
        for c in CLIENTS:
            p = c.request(k, size=17 * k)
            sent.setdefault(c.idx, []).append(p)
            esp_frames.append(c.encrypt(p, first_seq(c) + k))
    # Outbound: replies to the tunnel-mode clients, one with no SA, and an ARP.
    plain, replies = [], {}
    for k in range(N):
        for c in CLIENTS:
            if c.mode == "tunnel":
                r = c.reply(k, size=23 * k)
                replies.setdefault(c.idx, []).append(r)
                plain.append(Ether(src="02:00:00:00:00:fe", dst=MAC_PROTECTED) / r)
    plain.append(Ether(dst=MAC_PROTECTED) / IP(src="10.0.1.5", dst="10.9.9.9") / UDP() / Raw(b"no SA"))
    arp = Ether(src="02:00:00:00:00:fe", dst="ff:ff:ff:ff:ff:ff") / ARP(psrc="10.0.1.5", pdst="10.0.0.1")
    plain.append(arp)

    write_pcap(tmp / "esp.pcap", esp_frames)
    write_pcap(tmp / "plain.pcap", plain)
    write_pcap(tmp / "empty.pcap", [])
    dp = Dataplane(ctl, [
        pcap_port("net_pcap0", tmp / "esp.pcap", tmp / "pub.pcap"),
        pcap_port("net_pcap1", tmp / "plain.pcap", tmp / "prot.pcap"),
        pcap_port("net_pcap2", tmp / "empty.pcap", tmp / "punt.pcap"),
        pcap_port("net_pcap3", tmp / "empty.pcap", tmp / "ppunt.pcap"),
    ], opts=["--punt", "2", "--protected-punt", "3", "--crypto", crypto])
    out, stats = dp.run()
    line = "intel-ipsec-mb" if crypto == "ipsec-mb" else "ring for every algorithm"
    assert re.search(rf"^  crypto: {line}", out, re.M), out
    assert stats["dataplane"]["crypto"] == ("intel-ipsec-mb" if crypto == "ipsec-mb" else "ring")
    return dict(tmp=tmp, sent=sent, replies=replies, ike=ike, arp=arp, stats=stats, stdout=out)


def test_plaintext_leaving_is_what_scapy_encrypted(both_ways):
    got = rdpcap(str(both_ways["tmp"] / "prot.pcap"))
    want = [p for k in range(N) for c in CLIENTS if c.mode == "tunnel" for p in [both_ways["sent"][c.idx][k]]]
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert raw(g)[14:] == raw(w), "the inner packet differs from scapy's plaintext"
        assert (g.dst, g.src) == (PEER_PROTECTED, MAC_PROTECTED)
        assert g.type == (0x0800 if w.version == 4 else 0x86DD)


def test_transport_mode_and_ike_reach_the_kernel_interface(both_ways):
    got = rdpcap(str(both_ways["tmp"] / "punt.pcap"))
    ike = [raw(f)[14:] for f in both_ways["ike"]]
    transport = [p for k in range(N) for c in CLIENTS if c.mode == "transport" for p in [both_ways["sent"][c.idx][k]]]
    assert [raw(g)[14:] for g in got] == ike + [raw(p) for p in transport]


def test_counters_tell_every_packet(both_ways):
    s = both_ways["stats"]
    t = s["totals"]
    tunnel = sum(1 for c in CLIENTS if c.mode == "tunnel")
    assert t["decap_packets"] == N * len(CLIENTS)
    assert t["encap_packets"] == N * tunnel
    assert (t["keepalives"], t["punt_ike"], t["punt_host"]) == (1, 2, 1)
    assert drops(s) == {"no_outbound_sa": 1}
    assert t["rx_public"] == 3 + N * len(CLIENTS) and t["rx_protected"] == N * tunnel + 2
    assert t["tx_protected"] == N * tunnel and t["tx_public"] == N * tunnel and t["tx_punt"] == 2 + N * 2 + 1
    sas = {(x["direction"], int(x["spi"], 16)): x for x in s["workers"][0]["sas"]}
    for c in CLIENTS:
        assert sas[("inbound", c.spi_in)]["packets"] == N
        if c.mode == "tunnel":
            assert sas[("outbound", c.spi_out)]["packets"] == N
            assert sas[("outbound", c.spi_out)]["seq"] == first_seq(c) - 1 + N
    ports = {p["role"]: p for p in s["ports"]}
    assert ports["public"]["ipackets"] == t["rx_public"] and ports["public"]["opackets"] == t["tx_public"]
    # The SA builder made every SA's state before the first packet: the worker built
    # and freed nothing itself.
    assert t["sa_loads"] == len(CLIENTS) + tunnel
    assert (t["sa_built_here"], t["sa_freed_here"]) == (0, 0)
    built = re.search(r"SA builder: (\d+) SA states built off the workers", both_ways["stdout"])
    assert built and int(built.group(1)) >= t["sa_loads"], both_ways["stdout"][-2000:]


def test_arp_from_the_protected_side_reaches_its_kernel_interface(both_ways):
    got = rdpcap(str(both_ways["tmp"] / "ppunt.pcap"))
    assert [raw(g) for g in got] == [raw(both_ways["arp"])]


def test_scapy_decrypts_what_leaves_and_esp_bytes_match(both_ways):
    got = rdpcap(str(both_ways["tmp"] / "pub.pcap"))
    tunnel = [c for c in CLIENTS if c.mode == "tunnel"]
    assert len(got) == N * len(tunnel)
    it = iter(got)
    for k in range(N):
        for c in tunnel:
            f = next(it)
            seq = first_seq(c) + k
            outer = f[IP] if c.outer == 4 else f[IPv6]
            assert (outer.src, outer.dst) == (c.headend, c.outer_addr)
            assert (f[UDP].sport, f[UDP].dport) == (4500, c.nat_port)
            assert (f.dst, f.src) == (PEER_PUBLIC, MAC_PUBLIC)
            expected = routed(both_ways["replies"][c.idx][k])
            assert raw(c.decrypt(f, seq)) == raw(expected), f"client {c.idx} packet {k}"
            # The ESP bytes are scapy's, given the same plaintext, sequence number and IV.
            theirs = c.scapy_sa(c.spi_out)
            theirs.seq_num, theirs.esn = seq & 0xFFFFFFFF, seq >> 32
            t = theirs.encrypt(expected, seq_num=seq & 0xFFFFFFFF, iv=struct.pack(">Q", seq), esn_en=c.esn, esn=seq >> 32)
            assert raw(f[UDP].payload) == raw(t[UDP].payload)


def test_wireshark_verifies_the_icv(both_ways):
    assert shutil.which("tshark"), "tshark is not installed (scripts/test.sh installs it)"
    pcap = str(both_ways["tmp"] / "pub.pcap")
    # tshark has no ESN: only the AES-GCM SAs without it.
    checked = [c for c in CLIENTS if c.mode == "tunnel" and not c.esn and c.alg.startswith("aes")]
    with tempfile.TemporaryDirectory() as prof:
        # All SAs in one UAT file (tshark takes one -o uat per table).
        with open(os.path.join(prof, "esp_sa"), "w") as f:
            for c in checked:
                k, s = key_salt(c.spi_out, 16 if c.alg == "aes128-gcm" else 32)
                f.write(f'"IPv{c.outer}","*","*","0x{c.spi_out:08x}","AES-GCM with 16 octet ICV [RFC4106]","0x{(k + s).hex()}","NULL",""\n')
        env = dict(os.environ, WIRESHARK_CONFIG_DIR=prof, HOME=prof)
        p = subprocess.run(["tshark", "-n", "-r", pcap, "-o", "esp.enable_encryption_decode:TRUE",
                            "-o", "esp.enable_authentication_check:TRUE", "-d", "udp.port==53,data",
                            "-T", "fields", "-e", "esp.spi", "-e", "esp.icv_good", "-e", "esp.icv_bad"],
                           capture_output=True, text=True, env=env)
        assert p.returncode == 0, p.stderr
    rows = [l.split("\t") for l in p.stdout.splitlines()]
    spis = {f"0x{c.spi_out:08x}" for c in checked}
    mine = [r for r in rows if r[0] in spis]
    assert len(mine) == N * len(checked), rows
    assert all(r[1] in ("1", "True") for r in mine), mine


# ---- two workers ----

MANY = [Client(i, ["aes128-gcm", "aes256-gcm", "chacha20-poly1305"][i % 3], inner=4 + 2 * (i % 2)) for i in range(24)]
M = 12


def test_two_workers_each_sa_has_one_owner_and_keeps_order(tmp_path):
    ctl = Control(tmp_path)
    ctl.apply([sa for c in MANY for sa in (c.sa("inbound"), c.sa("outbound"))])
    esp, plain = [], []
    for k in range(M):
        for c in MANY:
            esp.append(c.encrypt(c.request(k), 1 + k))
            plain.append(Ether(dst=MAC_PROTECTED) / c.reply(k))
    write_pcap(tmp_path / "esp.pcap", esp)
    write_pcap(tmp_path / "plain.pcap", plain)
    dp = Dataplane(ctl, [
        pcap_port("net_pcap0", tmp_path / "esp.pcap", [tmp_path / "pub0.pcap", tmp_path / "pub1.pcap"]),
        pcap_port("net_pcap1", tmp_path / "plain.pcap", [tmp_path / "prot0.pcap", tmp_path / "prot1.pcap"]),
    ], lcores=None, eal=["--lcores", "0@0,1@0,2@1"])
    _, stats = dp.run()
    assert stats["dataplane"]["dispatch"] == "software"
    assert drops(stats) == {}

    # Decapsulated requests leave by the TX queue of the worker that owns the inbound SA.
    for w in (0, 1):
        got = rdpcap(str(tmp_path / f"prot{w}.pcap"))
        per = {}
        for g in got:
            idx, n = struct.unpack(">II", raw(g[TCP].payload)[:8])
            per.setdefault(idx, []).append(n)
        for c in MANY:
            if owner(c.spi_in, 2) == w:
                assert per.get(c.idx) == list(range(M)), f"client {c.idx}: lost or reordered on worker {w}"
            else:
                assert c.idx not in per, f"client {c.idx} decapsulated by worker {w}, which does not own it"
    # Encapsulated replies: by the owner of the outbound SA, sequence numbers 1..M in order.
    for w in (0, 1):
        got = rdpcap(str(tmp_path / f"pub{w}.pcap"))
        per = {}
        for g in got:
            per.setdefault(g[ESP].spi if ESP in g else int.from_bytes(raw(g[UDP].payload)[:4], "big"), []).append(
                int.from_bytes(raw(g[UDP].payload)[4:8], "big"))
        for c in MANY:
            if owner(c.spi_out, 2) == w:
                assert per.get(c.spi_out) == list(range(1, M + 1)), f"SA 0x{c.spi_out:x} on worker {w}"
            else:
                assert c.spi_out not in per
    # The workers' own account: which SAs each loaded, and how many packets it handed over.
    for w, ws in enumerate(stats["workers"]):
        loaded = {(s["direction"], int(s["spi"], 16)) for s in ws["sas"]}
        want = {("inbound", c.spi_in) for c in MANY if owner(c.spi_in, 2) == w}
        want |= {("outbound", c.spi_out) for c in MANY if owner(c.spi_out, 2) == w}
        assert loaded == want, f"worker {w}"
        assert all(s["packets"] == M for s in ws["sas"])
    # Everything arrives on worker 0 (one RX queue): exactly the packets of worker 1's SAs
    # are handed over.
    to_1 = M * (sum(owner(c.spi_in, 2) == 1 for c in MANY) + sum(owner(c.spi_out, 2) == 1 for c in MANY))
    assert 0 < to_1 < 2 * M * len(MANY)
    assert stats["workers"][0]["handoff_out"] == to_1 and stats["workers"][1]["rx_handoff"] == to_1
    assert stats["workers"][1]["handoff_out"] == 0

