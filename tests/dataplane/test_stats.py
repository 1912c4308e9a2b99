"""Statistics as scrapers and operators read them, after a known capture.

A capture with counted good and hostile packets passes through a live dataplane (two
workers, software dispatch, net_pcap ports); then, while it is still running:

- `GET /stats` (natt-control's HTTP server) has exactly the expected count per counter
  and per drop reason, per worker as the Toeplitz owner of each SA predicts, and
  packets in = out + dropped + consumed, with nothing pending;
- the port counters equal what DPDK's own `/ethdev/stats` telemetry reports;
- a packet whose hop limit ran out came back to the protected side as ICMPv6 Time
  Exceeded from the SA's address, quoting it; one that was itself an ICMPv6 error was
  dropped;
- `GET /stats/sa/<spi>`, asked of the owning worker, has each SA's packets, inner bytes,
  drops, sequence numbers and NAT endpoint;
- `natt-control stats` prints the same, `/metrics` parses as Prometheus text (with the
  Prometheus project's own parser) and carries the same counts;
- RX-to-TX latency was recorded for every packet sent;
- `dpdk-telemetry.py` (DPDK's client) reads `/natt/stats` and `/natt/worker`."""

import dataclasses
import json
import os
import shutil
import struct
import subprocess
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families
from scapy.all import AH, IP, UDP, Ether, IPv6, Raw, raw
from scapy.all import rdpcap
from scapy.layers.inet6 import ICMPv6DestUnreach, ICMPv6TimeExceeded

from dp import HEADEND4, MAC_GW, Client, Control, Dataplane, owner, pcap_port, write_pcap

N = 6
MAC_PUBLIC, MAC_PROTECTED = "02:70:63:61:70:00", "02:70:63:61:70:01"  # net_pcap's MACs for ports 0, 1
CLIENTS = [
    Client(20, "aes128-gcm"),
    Client(21, "aes256-gcm", esn=True, inner=6, outer=4),
    Client(22, "chacha20-poly1305", inner=6, outer=6),
    Client(23, "aes128-gcm", nat_port=40023),
]
IDLE = Client(24, "aes128-gcm")  # installed, never sees a packet
NEW_NAT_PORT = 40999
WORKERS = 2

# What the capture holds beyond the good packets, and the counts it must produce.
EXPECTED_DROPS = {
    "replay_duplicate": 2,  # client 20's packets 1 and 2 again
    "auth_failed": 1,  # client 21, one ICV bit flipped
    "no_sa": 3,  # an SPI nobody installed
    "natt_malformed": 2,  # 3 bytes; SPI 200
    "ah_unsupported": 1,
    "ip_checksum_bad": 1,
    "no_outbound_sa": 2,  # replies to addresses no SA covers
    "ttl_exceeded": 1,  # an ICMPv6 error to client 22 with hop limit 1 (no error about an error)
}
# And a UDP packet to client 22 with hop limit 1: answered with Time Exceeded, not dropped.
ICMP_SENT = 1


def telemetry_client():
    return shutil.which("dpdk-telemetry.py") or "/usr/bin/dpdk-telemetry.py"


def get(url, timeout=10):
    """(status, content type, body) of a GET."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.headers.get("Content-Type"), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type"), e.read().decode()


def get_json(url):
    status, ctype, body = get(url)
    assert status == 200, f"{url}: {status} {body}"
    assert ctype == "application/json"
    return json.loads(body)


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stats")
    ctl = Control(tmp, name="st")
    sas = [IDLE.sa("inbound"), IDLE.sa("outbound")]
    for c in CLIENTS:
        sas += [c.sa("inbound"), c.sa("outbound")]
    ctl.apply(sas)
    ctl.start_daemon(http=True)

    requests = {c.idx: [c.request(k, size=11 * k) for k in range(N)] for c in CLIENTS}
    replies = {c.idx: [c.reply(k, size=13 * k) for k in range(N)] for c in CLIENTS}
    pub = []
    for k in range(N):
        for c in CLIENTS:
            if c.idx == 23 and k == N - 1:
                # The last packet comes from a new NAT port: one mapping change.
                pub.append(dataclasses.replace(c, nat_port=NEW_NAT_PORT).encrypt(requests[c.idx][k], k + 1))
            else:
                pub.append(c.encrypt(requests[c.idx][k], k + 1))
    c20, c21 = CLIENTS[0], CLIENTS[1]
    pub += [c20.encrypt(requests[20][0], 1), c20.encrypt(requests[20][1], 2)]
    bad = bytearray(raw(c21.encrypt(c21.request(99), N + 1)))
    bad[-1] ^= 1
    pub.append(Ether(bytes(bad)))
    pub += [c20.encrypt(c20.request(k), k + 1, spi=0x9999) for k in range(3)]
    outer = Ether(src=MAC_GW, dst=MAC_PUBLIC) / IP(src="198.51.100.99", dst=HEADEND4)
    pub.append(outer / UDP(sport=4500, dport=4500) / Raw(b"\x01\x02\x03"))
    pub.append(outer / UDP(sport=4500, dport=4500) / Raw(struct.pack(">II", 200, 1) + bytes(32)))
    pub.append(outer / AH(spi=0x3000, seq=1, icv=bytes(12)) / Raw(bytes(40)))
    good = raw(outer / UDP(sport=4500, dport=4500) / Raw(b"\xff"))
    pub.append(Ether(good[:24] + bytes([good[24] ^ 0xFF, good[25]]) + good[26:]))  # IPv4 checksum broken
    keepalive = outer / UDP(sport=4500, dport=4500) / Raw(b"\xff")
    ike = outer / UDP(sport=4500, dport=4500) / Raw(bytes(4) + b"IKEv2 message")
    pub += [keepalive, keepalive, ike]

    prot = [Ether(src=MAC_GW, dst=MAC_PROTECTED) / replies[c.idx][k] for k in range(N) for c in CLIENTS]
    prot.append(Ether(src=MAC_GW, dst=MAC_PROTECTED) / IP(src="10.0.1.5", dst="10.9.9.9") / UDP() / Raw(b"no SA"))
    prot.append(Ether(src=MAC_GW, dst=MAC_PROTECTED) / IPv6(src="fd00:10::5", dst="fd00:99::1") / UDP() / Raw(b"no SA"))
    c22 = CLIENTS[2]
    prot.append(Ether(src=MAC_GW, dst=MAC_PROTECTED) / IPv6(src=c22.server, dst=c22.inner_addr, hlim=1) / UDP() / Raw(b"last hop"))
    prot.append(Ether(src=MAC_GW, dst=MAC_PROTECTED) / IPv6(src=c22.server, dst=c22.inner_addr, hlim=1)
                / ICMPv6DestUnreach() / Raw(bytes(48)))

    write_pcap(tmp / "pub.pcap", pub)
    write_pcap(tmp / "prot.pcap", prot)
    write_pcap(tmp / "empty.pcap", [])
    prefix = f"natt-stats-{os.getpid()}"
    dp = Dataplane(ctl, [
        pcap_port(f"net_pcap{i}", tmp / rx, [tmp / f"{rx}-out{w}" for w in range(WORKERS)])
        for i, rx in enumerate(["pub.pcap", "prot.pcap", "empty.pcap"])
    ], opts=["--punt", "2", "--dispatch", "software"], lcores=None,
        eal=["--lcores", "0@0,1@0,2@1", "--file-prefix", prefix]).start()

    # Wait until every packet is accounted for and the ports and histograms have caught up.
    url = ctl.url
    deadline = time.monotonic() + 60
    while True:
        s = get_json(f"{url}/stats")
        a = s["accounting"]
        done = a["in"] == len(pub) + len(prot) and a["pending"] == 0 and a["balanced"]
        # Port counters are read from the PMDs every 100 ms, histograms exported as often.
        ports_done = (sum(p["ipackets"] for p in s["ports"]), sum(p["opackets"] for p in s["ports"])) == (a["in"], a["out"])
        if done and ports_done and (s["latency"] or {}).get("count") == a["out"]:
            break
        assert time.monotonic() < deadline, f"the capture was not processed: {json.dumps(s['accounting'])}"
        time.sleep(0.1)
    yield dict(ctl=ctl, url=url, dp=dp, stats=s, pub=pub, prot=prot, requests=requests, replies=replies,
               prefix=prefix, tmp=tmp)
    dp.stop()
    ctl.stop_daemon()


def nonzero_drops(counters):
    return {k: v for k, v in counters["drops"].items() if v}


def test_counters_per_reason_equal_the_capture(live):
    s = live["stats"]
    assert s["schema"] == "natt-stats/1"
    assert s["dataplane"]["running"] and s["dataplane"]["workers"] == WORKERS
    assert abs(s["time"] - time.time()) < 60 and s["time_ns"] > s["dataplane"]["start_ns"] > 0
    t = s["totals"]
    good = N * len(CLIENTS)
    assert nonzero_drops(t) == EXPECTED_DROPS
    assert t["drops_total"] == sum(EXPECTED_DROPS.values())
    assert (t["decap_packets"], t["encap_packets"]) == (good, good)
    assert t["decap_bytes"] == sum(len(raw(p)) for ps in live["requests"].values() for p in ps)
    assert t["encap_bytes"] == sum(len(raw(p)) for ps in live["replies"].values() for p in ps)
    assert (t["keepalives"], t["punt_ike"], t["punts"]["ike"], t["nat_changes"]) == (2, 1, 1, 1)
    assert (t["rx_public"], t["rx_protected"]) == (len(live["pub"]), len(live["prot"]))
    assert (t["tx_public"], t["tx_protected"], t["tx_punt"]) == (good, good + ICMP_SENT, 1)
    assert (t["icmp_ttl_exceeded"], t["icmp_too_big"], t["mss_clamped"]) == (ICMP_SENT, 0, 0)
    assert t["handoff_out"] == t["rx_handoff"] > 0, "software dispatch over two workers hands SAs over"
    a = s["accounting"]
    assert a == {"in": len(live["pub"]) + len(live["prot"]), "out": 2 * good + 1 + ICMP_SENT,
                 "dropped": sum(EXPECTED_DROPS.values()), "consumed": 2, "pending": 0, "balanced": True}
    assert a["in"] == a["out"] + a["dropped"] + a["consumed"]


def test_workers_count_what_they_own_and_add_up_to_the_totals(live):
    s = live["stats"]
    workers = s["workers"]
    assert [w["worker"] for w in workers] == list(range(WORKERS))
    for w in workers:
        owned = [c for c in CLIENTS if owner(c.spi_in, WORKERS) == w["worker"]]
        assert w["decap_packets"] == N * len(owned)
        owned_out = [c for c in CLIENTS if owner(c.spi_out, WORKERS) == w["worker"]]
        assert w["encap_packets"] == N * len(owned_out)
        assert w["active"] and w["heartbeat_ns"] > 0
    for name, total in s["totals"].items():
        if isinstance(total, int) and name not in ("frag_pending", "tx_pending"):
            assert sum(w[name] for w in workers) == total, name
    for reason, total in s["totals"]["drops"].items():
        assert sum(w["drops"][reason] for w in workers) == total, reason


def test_ports_agree_with_dpdks_own_counters(live):
    s = live["stats"]
    ports = {p["port"]: p for p in s["ports"]}
    assert {p: ports[p]["role"] for p in ports} == {0: "public", 1: "protected", 2: "punt"}
    assert all(p["driver"] == "net_pcap" for p in ports.values())
    good = N * len(CLIENTS)
    assert (ports[0]["ipackets"], ports[0]["opackets"]) == (len(live["pub"]), good)
    assert (ports[1]["ipackets"], ports[1]["opackets"]) == (len(live["prot"]), good + ICMP_SENT)
    assert (ports[2]["ipackets"], ports[2]["opackets"]) == (0, 1)
    for pid, p in ports.items():
        dpdk = telemetry(live["prefix"], f"/ethdev/stats,{pid}")["/ethdev/stats"]
        for k in ("ipackets", "opackets", "ibytes", "obytes", "imissed", "ierrors", "oerrors", "rx_nombuf"):
            assert p[k] == dpdk[k], (pid, k)


def test_the_hop_limit_that_ran_out_came_back_as_time_exceeded(live):
    c22 = CLIENTS[2]
    sent = []
    for w in range(WORKERS):
        sent += rdpcap(str(live["tmp"] / f"prot.pcap-out{w}"))
    errors = [f for f in sent if ICMPv6TimeExceeded in f]
    assert len(errors) == ICMP_SENT
    e = errors[0]
    # From the SA's own address (no --icmp-source), to the server, quoting the packet.
    assert (e[IPv6].src, e[IPv6].dst, e[ICMPv6TimeExceeded].code) == (c22.headend, c22.server, 0)
    assert raw(e[ICMPv6TimeExceeded].payload) == raw(live["prot"][-2][IPv6])


def sa_stats(live, spi):
    return get_json(f"{live['url']}/stats/sa/0x{spi:x}")


def test_each_sa_answers_from_its_owning_worker(live):
    for c in CLIENTS:
        got = sa_stats(live, c.spi_in)
        assert got["schema"] == "natt-sa-stats/1" and got["spi"] == f"0x{c.spi_in:08x}"
        (sa,) = got["sas"]
        assert sa["direction"] == "inbound" and "key" not in sa
        d = sa["dataplane"]
        assert d["loaded"] and d["worker"] == owner(c.spi_in, WORKERS)
        assert d["packets"] == N
        assert d["bytes"] == sum(len(raw(p)) for p in live["requests"][c.idx])
        assert d["replay_top"] == N
        want = {20: {"replay_duplicate": 2}, 21: {"auth_failed": 1}}.get(c.idx, {})
        assert {k: v for k, v in d["drops"].items() if v} == want
        if c.idx == 23:
            assert (d["nat_changes"], d["endpoint"]) == (1, f"{c.outer_addr}:{NEW_NAT_PORT}")
        else:
            port = c.nat_port
            ep = f"{c.outer_addr}:{port}" if c.outer == 4 else f"[{c.outer_addr}]:{port}"
            assert (d["nat_changes"], d["endpoint"]) == (0, ep)

        (out,) = sa_stats(live, c.spi_out)["sas"]
        d = out["dataplane"]
        assert out["direction"] == "outbound" and d["worker"] == owner(c.spi_out, WORKERS)
        assert (d["packets"], d["seq"]) == (N, N)
        assert d["bytes"] == sum(len(raw(p)) for p in live["replies"][c.idx])
        want = {"ttl_exceeded": 1} if c.idx == 22 else {}
        assert {k: v for k, v in d["drops"].items() if v} == want


def test_sa_questions_that_have_no_answer(live):
    (sa,) = sa_stats(live, IDLE.spi_in)["sas"]
    assert sa["dataplane"]["loaded"] is False
    status, ctype, body = get(f"{live['url']}/stats/sa/0x9999")
    assert (status, ctype) == (404, "application/json") and "0x00009999" in json.loads(body)["error"]
    status, _, body = get(f"{live['url']}/stats/sa/banana")
    assert status == 400 and "not an SPI" in json.loads(body)["error"]
    status, _, body = get(f"{live['url']}/stats/nothing")
    assert status == 404


def test_the_cli_prints_the_same(live):
    ctl = live["ctl"]
    doc = json.loads(ctl.cmd("--json", "stats").stdout)
    s = live["stats"]
    assert doc["schema"] == s["schema"]
    # Everything but what moves while the workers poll an empty port.
    def still(t):
        return {k: v for k, v in t.items() if k != "polls" and not k.endswith("cycles")}
    assert still(doc["totals"]) == still(s["totals"]) and doc["accounting"] == s["accounting"]
    sa = json.loads(ctl.cmd("stats", "--sa", f"0x{CLIENTS[1].spi_in:x}", "--direction", "in").stdout)
    assert sa == sa_stats(live, CLIENTS[1].spi_in)
    text = ctl.cmd("stats").stdout
    assert "running (pid" in text and "2 worker(s)" in text
    assert f"decapsulated   {N * len(CLIENTS)}" in text
    for reason, n in EXPECTED_DROPS.items():
        assert any(line.split()[:2] == [reason, str(n)] for line in text.splitlines()), reason
    assert "packets in %d = out %d" % (s["accounting"]["in"], s["accounting"]["out"]) in text
    # A wrong SPI is the operator's error: exit 2, and says what is wrong.
    p = ctl.cmd("stats", "--sa", "0x10", check=False)
    assert p.returncode == 2 and "not an SPI" in p.stderr


def test_prometheus_text_parses_and_counts_the_same(live):
    status, ctype, body = get(f"{live['url']}/metrics")
    assert status == 200 and ctype.startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(body)}
    s = live["stats"]

    def total(family, **labels):
        return sum(x.value for x in families[family].samples
                   if x.name.endswith("_total") and all(x.labels.get(k) == v for k, v in labels.items()))

    assert families["natt_decap_packets"].type == "counter"
    assert total("natt_decap_packets") == s["totals"]["decap_packets"]
    assert total("natt_encap_bytes") == s["totals"]["encap_bytes"]
    for reason in s["totals"]["drops"]:
        assert total("natt_drops", reason=reason) == EXPECTED_DROPS.get(reason, 0), reason
    for w in s["workers"]:
        assert total("natt_decap_packets", worker=str(w["worker"])) == w["decap_packets"]
    assert total("natt_port_ipackets", port="0") == len(live["pub"])
    up = [x.value for x in families["natt_up"].samples]
    assert up == [1]


def test_latency_is_recorded_for_every_packet_sent(live):
    s = live["stats"]
    lat = s["latency"]
    assert lat["count"] == s["accounting"]["out"]
    assert 0 < lat["min_ns"] <= lat["p50_ns"] <= lat["p90_ns"] <= lat["p99_ns"] <= lat["p999_ns"] <= lat["max_ns"]
    assert sum((w["latency"] or {}).get("count", 0) for w in s["workers"]) == lat["count"]
    cyc = s["cycles_per_packet"]
    assert all(cyc[k] > 0 for k in ("rx", "dispatch", "decap", "encap", "tx", "busy")), cyc
    assert s["dataplane"]["tsc_hz"] > 0 and s["dataplane"]["detail"] is True


def telemetry(prefix, command):
    """One command through DPDK's own telemetry client."""
    p = subprocess.run([telemetry_client(), "-f", prefix], input=command + "\n", capture_output=True, text=True,
                       timeout=30)
    assert p.returncode == 0, p.stderr
    lines = [x for x in p.stdout.splitlines() if x.startswith("{")]
    assert lines, f"{command}: no answer from the telemetry socket: {p.stdout} {p.stderr}"
    return json.loads(lines[-1])


def test_dpdk_telemetry_reads_natt_commands(live):
    s = live["stats"]
    got = telemetry(live["prefix"], "/natt/stats")["/natt/stats"]
    t = s["totals"]
    for name in ("decap_packets", "encap_packets", "keepalives", "punt_ike", "rx_public", "tx_protected"):
        assert got[name] == t[name], name
    for reason, n in t["drops"].items():
        assert got[f"drop_{reason}"] == n, reason
    a = s["accounting"]
    assert (got["in"], got["out"], got["dropped"], got["consumed"], got["pending"]) == \
        (a["in"], a["out"], a["dropped"], a["consumed"], a["pending"])
    assert got["balanced"] == 1 and got["workers"] == WORKERS and got["latency_count"] == s["latency"]["count"]
    workers = [telemetry(live["prefix"], f"/natt/worker,{w}")["/natt/worker"] for w in range(WORKERS)]
    assert [w["decap_packets"] for w in workers] == [w["decap_packets"] for w in s["workers"]]
    helps = telemetry(live["prefix"], "/help,/natt/worker")["/help"]
    assert "worker index" in helps["/natt/worker"]
    listing = telemetry(live["prefix"], "/")["/"]
    assert "/natt/stats" in listing and "/natt/worker" in listing
