"""The tunnel's MTU, through natt-pcap, against implementations we did not write:

- packets too big for the tunnel: the ICMP errors written in their place (Fragmentation
  Needed, Packet Too Big) parsed by scapy and dissected by tshark: type, code, the MTU
  reported (the largest inner packet that does leave, which is checked too), the
  checksums, which both recompute and find good, and the quoted packet, byte for byte
  the one that was too big;
- packets whose TTL or hop limit runs out at the headend: the Time Exceeded written in
  their place, parsed by scapy and dissected by tshark the same way;
- TCP MSS clamping: SYNs into the tunnel (scapy decrypts them) and out of it (scapy
  encrypted them) announce what fits, with a TCP checksum scapy recomputes to the same
  value, everything else in them unchanged."""

import json
import os
import subprocess
import tempfile

import pytest
from scapy.all import ICMP, IP, TCP, UDP, Ether, IPerror, IPv6, Raw, raw, rdpcap, wrpcap
from scapy.layers.inet6 import ICMPv6PacketTooBig, ICMPv6TimeExceeded, IPerror6

from natt import MAC_PEER, MAC_US, SPI_IN, SPI_OUT, Case, run_natt_pcap, write_config

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


def syn(c, direction, flags):
    """A SYN (or SYN-ACK) with MSS 1460 after a NOP (an odd offset) and other options."""
    ipc = IP if c.inner == 4 else IPv6
    src, dst = (c.i["client"], c.i["server"]) if direction == "in" else (c.i["server"], c.i["client"])
    opts = [("NOP", None), ("MSS", 1460), ("SAckOK", b""), ("WScale", 7), ("Timestamp", (123, 0))]
    p = ipc(src=src, dst=dst) / TCP(sport=40000, dport=443, flags=flags, seq=1000, options=opts)
    return p.__class__(raw(p))


def check_clamped(got, sent, want_mss, c):
    """`got` is `sent` with MSS `want_mss` and a TCP checksum scapy agrees with."""
    ipc = IP if c.inner == 4 else IPv6
    got = ipc(raw(got))
    assert dict(got[TCP].options)["MSS"] == want_mss, got[TCP].options
    again = got.copy()
    del again[TCP].chksum
    assert ipc(raw(again))[TCP].chksum == got[TCP].chksum, f"{c}: TCP checksum"
    expected = sent.copy()
    expected[TCP].options = [(k, want_mss if k == "MSS" else v) for k, v in sent[TCP].options]
    del expected[TCP].chksum
    expected = ipc(raw(expected))
    return raw(got)[len(raw(got)) - len(raw(got[TCP])):] == raw(expected[TCP])


@pytest.mark.parametrize("c", [Case(inner=i, outer=o) for i in (4, 6) for o in (4, 6)], ids=str)
def test_syns_through_the_tunnel_announce_what_fits(c, tmp_path):
    hl = 20 if c.inner == 4 else 40
    # Into the tunnel (encap): what fits with the SA's padding (4); out of it (decap):
    # what fits padded to 16.
    fits_out, fits_in = FITS[c.outer], {4: 1438, 6: 1406}[c.outer]
    # One file per direction (the test keys of SPI_IN and SPI_OUT are alike).
    cfg, cfg_in = tmp_path / "sas.json", tmp_path / "sas_in.json"
    write_config(cfg, [c.sa_json("outbound", SPI_OUT)])
    write_config(cfg_in, [c.sa_json("inbound", SPI_IN)])
    sent = syn(c, "out", "SA")
    wrpcap(str(tmp_path / "plain.pcap"), [Ether(src=MAC_PEER, dst=MAC_US) / sent])
    lines, summary = run_natt_pcap("encap", str(cfg), str(tmp_path / "plain.pcap"), str(tmp_path / "esp.pcap"))
    assert [l["verdict"] for l in lines] == ["accepted"] and summary["summary"]["mss_clamped"] == 1
    frame = rdpcap(str(tmp_path / "esp.pcap"))[0]
    outer = frame[IP] if c.outer == 4 else frame[IPv6]
    dec = c.scapy_sa(SPI_OUT).decrypt(outer.copy(), verify=True)
    assert check_clamped(dec, sent, fits_out - hl - 20, c), f"{c}: more than the MSS changed"

    sent = syn(c, "in", "S")
    e = c.scapy_sa(SPI_IN).encrypt(sent)
    wrpcap(str(tmp_path / "esp_in.pcap"), [Ether(src=MAC_PEER, dst=MAC_US) / e])
    lines, summary = run_natt_pcap("decap", str(cfg_in), str(tmp_path / "esp_in.pcap"), str(tmp_path / "out.pcap"))
    assert [l["verdict"] for l in lines] == ["accepted"] and summary["summary"]["mss_clamped"] == 1
    got = rdpcap(str(tmp_path / "out.pcap"))[0]
    assert check_clamped(got[IP] if c.inner == 4 else got[IPv6], sent, fits_in - hl - 20, c), f"{c}: more than the MSS changed"

    # --tcp-mss off: the SYN as it was sent.
    run_natt_pcap("decap", str(cfg_in), str(tmp_path / "esp_in.pcap"), str(tmp_path / "off.pcap"), ["--tcp-mss", "off"])
    assert raw(rdpcap(str(tmp_path / "off.pcap"))[0])[14:] == raw(sent)


def tshark_fields(pcap, fields):
    """One dict per frame of the fields' values (lists), from tshark."""
    with tempfile.TemporaryDirectory() as prof:
        env = dict(os.environ, WIRESHARK_CONFIG_DIR=prof, HOME=prof)
        cmd = ["tshark", "-n", "-r", pcap, "-o", "ip.check_checksum:TRUE", "-T", "ek"]
        for f in fields:
            cmd += ["-e", f]
        p = subprocess.run(cmd, capture_output=True, text=True, env=env)
        assert p.returncode == 0, p.stderr
    rows = [json.loads(l)["layers"] for l in p.stdout.splitlines() if '"layers"' in l]
    return [{k.replace("_", "."): v for k, v in r.items()} for r in rows]


@pytest.mark.parametrize("c", [Case(inner=i, outer=4) for i in (4, 6)], ids=str)
def test_time_exceeded_is_what_scapy_and_tshark_expect(c, tmp_path):
    cfg = tmp_path / "sas.json"
    write_config(cfg, [c.sa_json("outbound", SPI_OUT)])
    sent = []
    for ttl in (1, 0):
        p = inner(c, 100)
        if c.inner == 4:
            p.ttl = ttl
            del p.chksum
        else:
            p.hlim = ttl
        sent.append(Ether(src=MAC_PEER, dst=MAC_US) / p.__class__(raw(p)))
    wrpcap(str(tmp_path / "plain.pcap"), sent)
    extra = ["--icmp-source", SOURCES[4], "--icmp-source", SOURCES[6]]
    lines, summary = run_natt_pcap("encap", str(cfg), str(tmp_path / "plain.pcap"), str(tmp_path / "out.pcap"), extra)
    assert [l["verdict"] for l in lines] == ["icmp_ttl_exceeded"] * 2 and summary["summary"]["icmp_ttl_exceeded"] == 2
    for frame, s in zip(rdpcap(str(tmp_path / "out.pcap")), sent):
        original = raw(s)[14:]
        if c.inner == 4:
            ip, icmp = frame[IP], frame[ICMP]
            assert (ip.src, ip.dst, icmp.type, icmp.code) == (SOURCES[4], c.i["server"], 11, 0)
            again = ip.copy()
            del again.chksum
            del again[ICMP].chksum
            again = IP(raw(again))
            assert (again.chksum, again[ICMP].chksum) == (ip.chksum, icmp.chksum), "checksums"
        else:
            ip, icmp = frame[IPv6], frame[ICMPv6TimeExceeded]
            assert (ip.src, ip.dst, icmp.type, icmp.code) == (SOURCES[6], c.i["server"], 3, 0)
            again = ip.copy()
            del again[ICMPv6TimeExceeded].cksum
            assert IPv6(raw(again))[ICMPv6TimeExceeded].cksum == icmp.cksum, "ICMPv6 checksum"
        assert raw(icmp.payload) == original, "the packet quoted whole, as it arrived"
    rows = tshark_fields(str(tmp_path / "out.pcap"), ["icmp.type", "icmp.checksum.status", "icmpv6.type",
                                                     "icmpv6.checksum.status"])
    for row in rows:
        if c.inner == 4:
            assert (row["icmp.type"][0], row["icmp.checksum.status"][0]) == ("11", "1"), row
        else:
            assert (row["icmpv6.type"][0], row["icmpv6.checksum.status"][0]) == ("3", "1"), row
