"""Checksum offloads, on net_tap ports (whose driver offers IPv4 and UDP checksum
offloads and carries them out in software, as a NIC would in hardware).

With `--checksum-offload auto` the dataplane starts the taps with them: the IPv4 header
checksums it receives are verified by the port, and the outer IPv4 header checksum and
the IPv6 UDP checksum of what it encapsulates are filled by the port. The kernel's side
of each tap is where the test sends and captures: what leaves must carry correct
checksums (checked by scapy) and decrypt (ICV verified); a frame with a broken IPv4
header checksum on either side is dropped under ip_checksum_bad. With `off` the same
holds, computed in software."""

import os

import pytest
from scapy.all import IP, UDP, Ether, IPv6, raw

from dp import Client, Control, Dataplane, routed
from netns import Netns, Port

A = Client(0, "aes128-gcm")
B = Client(1, "aes256-gcm", outer=6)
C = Client(2, "aes128-gcm", outer=6, inner=6)
CLIENTS = (A, B, C)
N = 20


@pytest.fixture
def dpns():
    ns = Netns(f"natt-ck-{os.getpid() % 10000}")
    # No router solicitations or MLD from the kernel's side of the taps.
    ns.exec("sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1")
    ns.exec("sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
    yield ns
    ns.delete()


def banner_ports(dp):
    """The port lines of the dataplane's banner."""
    lines = []
    while len(lines) < 2:
        line = dp.proc.stdout.readline()
        assert line, dp.proc.stderr.read()
        if line.strip().startswith("port "):
            lines.append(line)
    return lines


def checksums_ok(frame):
    """The outer IPv4 header checksum, or the IPv6 UDP checksum, as scapy computes it."""
    e = Ether(frame)
    if IP in e:
        got = e[IP].chksum
        ip = e[IP].copy()
        del ip.chksum
        assert e[UDP].chksum == 0, "ESP in UDP over IPv4 carries a zero UDP checksum"
        return got == IP(raw(ip)).chksum
    got = e[UDP].chksum
    u = e[IPv6].copy()
    del u[UDP].chksum
    return got != 0 and got == IPv6(raw(u))[UDP].chksum


@pytest.mark.parametrize("mode", ["auto", "off"])
def test_checksum_offloads_on_tap(dpns, tmp_path, mode):
    ctl = Control(tmp_path)
    ctl.apply([sa for c in CLIENTS for sa in (c.sa("inbound"), c.sa("outbound"))])
    dp = Dataplane(ctl, ["net_tap0,iface=natt-ckpub", "net_tap1,iface=natt-ckprt"], lcores="0", netns=dpns,
                   opts=["--checksum-offload", mode, "--drain-us", "50"]).start()
    pub = prt = None
    try:
        public, protected = banner_ports(dp)
        if mode == "auto":
            assert "checksum offload rx ipv4, tx ipv4 udp" in public, public
            assert "checksum offload rx ipv4\n" in protected, protected
        else:
            assert public.rstrip().endswith("checksum offload none"), public
            assert protected.rstrip().endswith("checksum offload none"), protected
        pub, prt = Port(dpns, "natt-ckpub"), Port(dpns, "natt-ckprt")

        # Inbound: requests from every client, and one whose outer header checksum broke.
        for n in range(1, N + 1):
            for c in CLIENTS:
                pub.send(raw(c.encrypt(c.request(n), n)))
        bad = bytearray(raw(A.encrypt(A.request(N + 1), N + 1)))
        bad[24] ^= 0x40  # the IPv4 header checksum
        pub.send(bytes(bad))
        # Outbound: replies to every client, and one whose inner header checksum broke.
        for n in range(N):
            for c in CLIENTS:
                prt.send(raw(Ether(src="02:00:00:00:00:fe", dst="02:00:00:00:00:01") / c.reply(n)))
        bad = bytearray(raw(Ether(src="02:00:00:00:00:fe", dst="02:00:00:00:00:01") / A.reply(N)))
        bad[24] ^= 0x40
        prt.send(bytes(bad))

        def esp_out(f):
            e = Ether(f)
            return UDP in e and e[UDP].sport == 4500

        def plain_in(f):
            e = Ether(f)
            return (IP in e or IPv6 in e) and UDP not in e

        assert len(pub.wait_for(lambda f: False, timeout=0.5)) == 0
        for _ in range(100):
            if len([f for f in pub.received() if esp_out(f)]) >= N * 3 and \
                    len([f for f in prt.received() if plain_in(f)]) >= N * 3:
                break
            pub.wait_for(lambda f: False, timeout=0.1)
        sent = [f for f in pub.received() if esp_out(f)]
        got = [f for f in prt.received() if plain_in(f)]
    finally:
        for p in (pub, prt):
            if p:
                p.close()
        _, stats = dp.stop()

    # Every reply left encrypted with correct outer checksums and decrypts (ICV verified).
    assert len(sent) == N * 3, f"{len(sent)} ESP frames left by the public port"
    by_client = {c.idx: [] for c in CLIENTS}
    for f in sent:
        assert checksums_ok(f), Ether(f).show(dump=True)
        e = Ether(f)
        spi = int.from_bytes(raw(e[UDP].payload)[:4], "big")
        c = next(c for c in CLIENTS if c.spi_out == spi)
        seq = int.from_bytes(raw(e[UDP].payload)[4:8], "big")
        inner = c.decrypt(e, seq)
        by_client[c.idx].append(raw(inner))
    for c in CLIENTS:
        assert by_client[c.idx] == [raw(routed(c.reply(n))) for n in range(N)], f"client {c.idx}"

    # Every good request came out decrypted, byte for byte; the broken ones were dropped.
    want = sorted(raw(c.request(n)) for c in CLIENTS for n in range(1, N + 1))
    assert sorted(f[14:] for f in got) == want
    assert stats["totals"]["drops"]["ip_checksum_bad"] == 2, stats["totals"]["drops"]
