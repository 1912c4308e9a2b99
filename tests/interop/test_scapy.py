"""natt-pcap against scapy's SecurityAssociation, both directions, byte for byte:

- scapy encrypts, our engine decrypts: the plaintext that leaves is exactly what scapy
  was given;
- our engine encrypts, scapy decrypts (with ICV verification): the plaintext is exactly
  ours, and scapy, encrypting the same plaintext with the same sequence number and IV,
  produces the very same ESP bytes (SPI, sequence, IV, ciphertext, padding, ICV).

Across tunnel and transport mode, IPv4 and IPv6 inner and outer, UDP encapsulation and
plain ESP, AES-128/256-GCM, ChaCha20-Poly1305 and GMAC, with and without ESN."""

import itertools
import os

import pytest
from scapy.all import IP, UDP, Ether, IPv6, Raw, raw, rdpcap, wrpcap
from scapy.layers.ipsec import ESP

from natt import (ALGORITHMS, MAC_PEER, MAC_US, PAYLOAD_SIZES, SPI_IN, SPI_OUT, Case, esp_seq,
                  run_natt_pcap, write_config)


def cases():
    for alg, esn, outer, encap in itertools.product(ALGORITHMS, [False, True], [4, 6], [True, False]):
        for inner in (4, 6):
            yield Case(alg=alg, esn=esn, mode="tunnel", inner=inner, outer=outer, encap=encap)
        yield Case(alg=alg, esn=esn, mode="transport", inner=outer, outer=outer, encap=encap)


CASES = list(cases())
# ESN cases start just below a 2^32 boundary so the high half changes mid-run.
ESN_START = (1 << 32) - 3


def payload(n, salt):
    return bytes((i * 7 + salt) & 0xFF for i in range(n))


def inner_packets(c, direction):
    """Plaintext for the case: client to server (inbound) or back (outbound)."""
    out = []
    for idx, n in enumerate(PAYLOAD_SIZES):
        data = Raw(payload(n, idx))
        if c.mode == "tunnel":
            ipc = IP if c.inner == 4 else IPv6
            src, dst = (c.i["client"], c.i["server"]) if direction == "in" else (c.i["server"], c.i["client"])
            out.append(ipc(src=src, dst=dst) / UDP(sport=5000 + idx, dport=53) / data)
        else:
            src, dst = (c.o["client"], c.o["headend"]) if direction == "in" else (c.o["headend"], c.o["client"])
            out.append(c.ip(src=src, dst=dst) / UDP(sport=1701, dport=1701) / data)
    # Rebuild so every checksum and length is final.
    return [p.__class__(raw(p)) for p in out]


@pytest.mark.parametrize("c", CASES, ids=str)
def test_scapy_encrypts_we_decrypt(c, tmp_path):
    first = ESN_START if c.esn else 1
    cfg = tmp_path / "sas.json"
    write_config(cfg, [c.sa_json("inbound", SPI_IN, last_seq=first - 1)])
    sa = c.scapy_sa(SPI_IN)
    plain = inner_packets(c, "in")
    frames = []
    for k, p in enumerate(plain):
        seq = first + k
        sa.seq_num = seq & 0xFFFFFFFF
        sa.esn = seq >> 32
        e = sa.encrypt(p, seq_num=seq & 0xFFFFFFFF, esn_en=c.esn, esn=seq >> 32)
        frames.append(Ether(src=MAC_PEER, dst=MAC_US) / e)
    wrpcap(str(tmp_path / "esp.pcap"), frames)
    lines, summary = run_natt_pcap("decap", str(cfg), str(tmp_path / "esp.pcap"), str(tmp_path / "out.pcap"))
    assert [l["verdict"] for l in lines] == ["accepted"] * len(plain), lines
    for l in lines:
        assert l["mode"] == c.mode and l["spi"] == f"0x{SPI_IN:08x}" and l["sa"] == f"inbound-{SPI_IN:x}"
        assert l["nat"]["addr"] == c.o["client"] and l["nat"]["port"] == (4500 if c.encap else 0)
    out = rdpcap(str(tmp_path / "out.pcap"))
    assert len(out) == len(plain)
    for got, want in zip(out, plain):
        assert raw(got)[14:] == raw(want), f"{c}: plaintext differs"
        assert raw(got)[:12] == raw(frames[0])[:12], "MAC addresses are kept"
    assert summary["summary"]["decapsulated"] == len(plain)


@pytest.mark.parametrize("c", CASES, ids=str)
def test_we_encrypt_scapy_decrypts(c, tmp_path):
    first = ESN_START if c.esn else 1
    cfg = tmp_path / "sas.json"
    write_config(cfg, [c.sa_json("outbound", SPI_OUT, last_seq=first - 1)])
    plain = inner_packets(c, "out")
    wrpcap(str(tmp_path / "plain.pcap"), [Ether(src=MAC_PEER, dst=MAC_US) / p for p in plain])
    lines, _ = run_natt_pcap("encap", str(cfg), str(tmp_path / "plain.pcap"), str(tmp_path / "esp.pcap"))
    assert [l["verdict"] for l in lines] == ["accepted"] * len(plain), lines
    assert [l["seq"] for l in lines] == [first + k for k in range(len(plain))]
    out = rdpcap(str(tmp_path / "esp.pcap"))
    sa = c.scapy_sa(SPI_OUT)
    ref = c.scapy_sa(SPI_OUT)
    for k, (frame, p) in enumerate(zip(out, plain)):
        seq = first + k
        outer = frame[IP] if c.outer == 4 else frame[IPv6]
        assert (outer.src, outer.dst) == (c.o["headend"], c.o["client"])
        if c.outer == 4:
            # The outer IPv4 header (written from the SA's template in tunnel mode, with
            # or without UDP): its checksum is the one scapy computes, its protocol ours.
            assert outer.proto == (17 if c.encap else 50)
            again = outer.copy()
            del again.chksum
            assert IP(raw(again)).chksum == outer.chksum, f"{c}: outer IPv4 header checksum"
        if c.encap:
            assert (frame[UDP].sport, frame[UDP].dport) == (4500, 4500)
            if c.outer == 4:
                assert frame[UDP].chksum == 0, "RFC 3948: zero UDP checksum over IPv4"
            else:
                # IPv6 forbids a zero UDP checksum; ours must be the one scapy computes.
                assert frame[UDP].chksum != 0
                again = outer.copy()
                del again[UDP].chksum
                assert IPv6(raw(again))[UDP].chksum == frame[UDP].chksum
        # What a router forwards: tunnel mode decrements the inner TTL / hop limit.
        expected = p.copy()
        if c.mode == "tunnel":
            if c.inner == 4:
                expected.ttl -= 1
                del expected.chksum
            else:
                expected.hlim -= 1
            expected = expected.__class__(raw(expected))
        dec = sa.decrypt(outer.copy(), verify=True, esn_en=c.esn, esn=seq >> 32)
        assert raw(dec) == raw(expected), f"{c}: scapy's plaintext differs"
        # Byte-for-byte ESP: scapy, given the same plaintext, sequence number and IV.
        mine = bytes(frame[ESP]) if not c.encap else raw(frame[UDP].payload)
        theirs_pkt = esp_seq(ref, expected, seq)
        theirs = raw(theirs_pkt[UDP].payload) if c.encap else bytes(theirs_pkt[ESP])
        assert mine == theirs, f"{c}: ESP bytes differ from scapy's"


@pytest.mark.parametrize("alg", ["aes128-gcm", "chacha20-poly1305"])
def test_block_padding_decrypts_in_scapy(alg, tmp_path):
    """With "pad_to": 16 the encrypted part is a whole number of 16-byte blocks, and scapy
    still decrypts to exactly our plaintext (its own padding is minimal, so the ESP bytes
    are not compared)."""
    c = Case(alg=alg)
    cfg = tmp_path / "sas.json"
    sa_cfg = c.sa_json("outbound", SPI_OUT)
    sa_cfg["pad_to"] = 16
    write_config(cfg, [sa_cfg])
    plain = inner_packets(c, "out")
    wrpcap(str(tmp_path / "plain.pcap"), [Ether(src=MAC_PEER, dst=MAC_US) / p for p in plain])
    run_natt_pcap("encap", str(cfg), str(tmp_path / "plain.pcap"), str(tmp_path / "esp.pcap"))
    sa = c.scapy_sa(SPI_OUT)
    for frame, p in zip(rdpcap(str(tmp_path / "esp.pcap")), plain):
        esp = raw(frame[UDP].payload)
        assert (len(esp) - 8 - 8 - 16) % 16 == 0
        expected = p.copy()
        expected.ttl -= 1
        del expected.chksum
        dec = sa.decrypt(frame[IP].copy(), verify=True)
        assert raw(dec) == raw(expected.__class__(raw(expected)))
