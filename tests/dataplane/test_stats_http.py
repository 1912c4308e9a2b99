"""The statistics server under hostile requests, and `natt-control stats --watch`, while
the dataplane forwards a steady stream (a looped capture of plaintext to encrypt).

- Malformed, oversized, slow or unwanted requests get an HTTP error status with a JSON
  body saying what was wrong; too many connections at once get 503; meanwhile the
  dataplane keeps encrypting, drops nothing, and the server still answers afterwards.
- `--watch` prints testpmd-like blocks with per-second rates that are not zero."""

import json
import signal
import socket
import subprocess
import time
import urllib.request

import pytest
from scapy.all import Ether

from dp import MAC_GW, Client, Control, Dataplane, binary, write_pcap

CLIENT = Client(30, "aes128-gcm")


def stats(url):
    with urllib.request.urlopen(f"{url}/stats", timeout=10) as r:
        return json.loads(r.read())


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("load")
    ctl = Control(tmp, name="ld")
    ctl.apply([CLIENT.sa("inbound"), CLIENT.sa("outbound")])
    ctl.start_daemon(http=True)
    write_pcap(tmp / "load.pcap", [Ether(src=MAC_GW, dst="02:00:00:00:00:01") / CLIENT.reply(k, size=200)
                                   for k in range(64)])
    dp = Dataplane(ctl, ["net_null0,no-rx=1", f"net_pcap1,rx_pcap={tmp / 'load.pcap'},tx_pcap=/dev/null,infinite_rx=1"])
    dp.start()
    deadline = time.monotonic() + 30
    while stats(ctl.url)["totals"]["encap_packets"] < 1000:
        assert time.monotonic() < deadline, "no traffic"
        time.sleep(0.1)
    yield dict(ctl=ctl, url=ctl.url, dp=dp)
    dp.stop()
    ctl.stop_daemon()


def exchange(url, data, timeout=15):
    """Send raw bytes, return (status, headers, JSON body or None) of the reply."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before reading all of it
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except ConnectionResetError:
            pass
    head, _, body = out.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    headers = dict(x.split(": ", 1) for x in lines[1:])
    return status, headers, json.loads(body) if body else None


HOSTILE = [
    ("garbage", b"\x00\xff\x13garbage\r\n\r\n", 400),
    ("no HTTP version", b"GET /stats\r\n\r\n", 400),
    ("long target", b"GET /stats/" + b"a" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    ("target past the head limit", b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\n\r\n", 414),
    ("huge header", b"GET /stats HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * (1 << 20) + b"\r\n\r\n", 431),
    ("many headers", b"GET /stats HTTP/1.1\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(500)) + b"\r\n", 431),
    ("POST", b"POST /stats HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello", 405),
    ("DELETE", b"DELETE /stats/sa/0x1001e HTTP/1.1\r\nHost: x\r\n\r\n", 405),
    ("GET with a body", b"GET /stats HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nbody", 413),
    ("chunked GET", b"GET /stats HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 413),
    ("path traversal", b"GET /../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n", 404),
    ("bad SPI", b"GET /stats/sa/0x10000000000 HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ("reserved SPI", b"GET /stats/sa/255 HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ("unknown SPI", b"GET /stats/sa/4096 HTTP/1.1\r\nHost: x\r\n\r\n", 404),
    ("head left unfinished", b"GET /stats HTTP/1.1\r\nHost: x\r\n", 408),
]


def test_hostile_requests_get_errors_and_forwarding_goes_on(loaded):
    url = loaded["url"]
    before = stats(url)
    for what, data, want in HOSTILE:
        status, headers, body = exchange(url, data)
        assert status == want, what
        assert headers["Content-Type"] == "application/json" and body["status"] == want and body["error"], what
        assert headers["Connection"] == "close"
    # A pile of idle connections: the ones past the limit are refused, the rest time out.
    idle = [socket.create_connection(url.removeprefix("http://").split(":"), timeout=15) for _ in range(40)]
    time.sleep(0.3)
    refused = 0
    for s in idle:
        s.settimeout(0.2)
        try:
            if s.recv(4096).startswith(b"HTTP/1.1 503"):
                refused += 1
        except OSError:
            pass
    assert refused >= 40 - 32, "connections beyond the limit are answered 503"
    for s in idle:
        s.close()
    time.sleep(0.3)
    # HEAD has the headers of GET and no body.
    status, headers, body = exchange(url, b"HEAD /stats HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 200 and body is None and int(headers["Content-Length"]) > 100

    after = stats(url)
    assert after["dataplane"]["running"] and after["dataplane"]["pid"] == before["dataplane"]["pid"]
    assert after["totals"]["encap_packets"] > before["totals"]["encap_packets"], "the dataplane kept forwarding"
    assert after["totals"]["drops_total"] == 0, {k: v for k, v in after["totals"]["drops"].items() if v}
    assert loaded["dp"].proc.poll() is None and loaded["ctl"].daemon.poll() is None


def test_watch_prints_per_second_rates(loaded):
    ctl = loaded["ctl"]
    c = [binary("natt-control"), "--name", ctl.name, "--shm-dir", ctl.dir, "stats", "--watch", "--interval", "0.5"]
    p = subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(2.2)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=10)
    assert p.returncode == 0, err
    blocks = out.split("dataplane running")[1:]
    assert len(blocks) >= 3, out
    # The first block has no rates (nothing to compare with); the next ones do.
    assert "Tx-pps" not in blocks[0]
    for b in blocks[1:]:
        rates = {}
        for line in b.splitlines():
            f = line.split()
            if f[:1] in (["Rx-pps:"], ["Tx-pps:"]):
                rates.setdefault(f[0], []).append(float(f[1]))
            if f[:1] == ["encapsulated"]:
                assert f[2].endswith("/s") and float(f[2][:-2]) > 0, line
        assert max(rates["Rx-pps:"]) > 0 and max(rates["Tx-pps:"]) > 0, b
