"""Packets too big for the tunnel, through natt-pcap: the ICMP errors it writes in their
place (Fragmentation Needed, Packet Too Big) parsed by scapy and dissected by tshark,
implementations we did not write: type, code, the MTU reported (the largest inner packet
that does leave, which is checked too), the checksums, which both recompute and find
good, and the quoted packet, byte for byte the one that was too big."""

import json
import os
import subprocess
import tempfile

import pytest
from scapy.all import ICMP, IP, UDP, Ether, IPerror, IPv6, Raw, raw, rdpcap, wrpcap
from scapy.layers.inet6 import ICMPv6PacketTooBig, IPerror6

from natt import MAC_PEER, MAC_US, SPI_OUT, Case, run_natt_pcap, write_config

SOURCES = {4: "10.0.0.1", 6: "fd00:10::1"}
# The largest inner packet that fits 1500 bytes: less the outer IP header, UDP, ESP
# header and IV (16), ICV (16), and the trailer (2) after rounding down to 4.
FITS = {4: 1438, 6: 1418}


def inner(c, size):
    """A UDP packet from the server to the client of exactly `size` bytes."""
    hl = 20 if c.inner == 4 else 40
    payload = bytes((i * 11) & 0xFF for i in range(size - hl - 8))
    if c.inner == 4:
        return IP(src=c.i["server"], dst=c.i["client"], flags="DF", ttl=64) / UDP(sport=53, dport=5000) / Raw(payload)
    return IPv6(src=c.i["server"], dst=c.i["client"], hlim=64) / UDP(sport=53, dport=5000) / Raw(payload)


@pytest.mark.parametrize("c", [Case(inner=i, outer=o) for i in (4, 6) for o in (4, 6)], ids=str)
def test_errors_for_packets_too_big_are_what_scapy_and_tshark_expect(c, tmp_path):
    cfg = tmp_path / "sas.json"
    write_config(cfg, [c.sa_json("outbound", SPI_OUT)])
    fits = FITS[c.outer]
    sizes = [fits, fits + 1, 1500, 9000 if c.inner == 6 else 1480]
    plain = [Ether(src=MAC_PEER, dst=MAC_US) / inner(c, n) for n in sizes]
    wrpcap(str(tmp_path / "plain.pcap"), plain)
    extra = ["--icmp-source", SOURCES[4], "--icmp-source", SOURCES[6]]
    lines, summary = run_natt_pcap("encap", str(cfg), str(tmp_path / "plain.pcap"), str(tmp_path / "out.pcap"), extra)
    assert [l["verdict"] for l in lines] == ["accepted", "icmp_too_big", "icmp_too_big", "icmp_too_big"], lines
    assert summary["summary"]["icmp_too_big"] == 3 and summary["summary"]["dropped"] == {}
    out = rdpcap(str(tmp_path / "out.pcap"))
    assert len(out) == 4 and len(raw(out[0])) == 14 + 1500, "the largest packet reported does leave, at 1500 bytes"
    for frame, sent in zip(out[1:], plain[1:]):
        original = raw(sent[IP] if c.inner == 4 else sent[IPv6])
        assert (frame.src, frame.dst) == (MAC_US, MAC_PEER), "back to where it came from"
        if c.inner == 4:
            ip, icmp = frame[IP], frame[ICMP]
            assert (ip.src, ip.dst, ip.proto, ip.tos, ip.flags.DF) == (SOURCES[4], c.i["server"], 1, 0xC0, False)
            assert (icmp.type, icmp.code, icmp.nexthopmtu) == (3, 4, fits)
            assert len(raw(ip)) == min(576, 28 + len(original))
            again = ip.copy()
            del again.chksum
            del again[ICMP].chksum
            again = IP(raw(again))
            assert (again.chksum, again[ICMP].chksum) == (ip.chksum, icmp.chksum), "checksums"
            quoted = raw(icmp.payload)
            assert icmp.haslayer(IPerror) and icmp[IPerror].dst == c.i["client"]
        else:
            ip, icmp = frame[IPv6], frame[ICMPv6PacketTooBig]
            assert (ip.src, ip.dst, ip.nh, ip.hlim) == (SOURCES[6], c.i["server"], 58, 64)
            assert (icmp.type, icmp.code, icmp.mtu) == (2, 0, fits)
            assert len(raw(ip)) == min(1280, 48 + len(original))
            again = ip.copy()
            del again[ICMPv6PacketTooBig].cksum
            assert IPv6(raw(again))[ICMPv6PacketTooBig].cksum == icmp.cksum, "ICMPv6 checksum"
            quoted = raw(icmp.payload)
            assert icmp.haslayer(IPerror6) and icmp[IPerror6].dst == c.i["client"]
        # The packet as it arrived (TTL not decremented), as much as fits.
        assert quoted == original[:len(quoted)] and len(quoted) >= 28

    # tshark: the same fields, and its own verdict on the checksums.
    with tempfile.TemporaryDirectory() as prof:
        env = dict(os.environ, WIRESHARK_CONFIG_DIR=prof, HOME=prof)
        fields = ["icmp.type", "icmp.code", "icmp.mtu", "icmp.checksum.status", "icmpv6.type", "icmpv6.mtu",
                  "icmpv6.checksum.status", "ip.checksum.status"]
        cmd = ["tshark", "-n", "-r", str(tmp_path / "out.pcap"), "-o", "ip.check_checksum:TRUE", "-T", "ek"]
        for f in fields:
            cmd += ["-e", f]
        p = subprocess.run(cmd, capture_output=True, text=True, env=env)
        assert p.returncode == 0, p.stderr
    rows = [json.loads(l)["layers"] for l in p.stdout.splitlines() if '"layers"' in l]
    assert len(rows) == 4
    for row in rows[1:]:
        row = {k.replace("_", "."): v for k, v in row.items()}
        if c.inner == 4:
            # The outer header of the error and the quoted one each have a type and a
            # checksum status: the first of each list is the error's own.
            assert (row["icmp.type"][0], row["icmp.code"][0], row["icmp.mtu"][0]) == ("3", "4", str(fits)), row
            assert row["icmp.checksum.status"][0] == "1" and row["ip.checksum.status"][0] == "1", row
        else:
            assert (row["icmpv6.type"][0], row["icmpv6.mtu"][0]) == ("2", str(fits)), row
            assert row["icmpv6.checksum.status"][0] == "1", row
