"""Helpers for the interop tests: one test case's addresses and keys, the matching
natt-pcap SA configuration and scapy SecurityAssociation, and runners for natt-pcap
and tshark. scapy and tshark are implementations we did not write; these tests hold
our packets against them byte for byte."""

import dataclasses
import json
import os
import shutil
import struct
import subprocess
import tempfile

from scapy.all import IP, UDP, Ether, IPv6, Raw, raw, rdpcap, wrpcap
from scapy.layers.ipsec import ESP, SecurityAssociation

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))

# natt-pcap algorithm name -> (scapy name, key bytes)
ALGORITHMS = {
    "aes128-gcm": ("AES-GCM", 16),
    "aes256-gcm": ("AES-GCM", 32),
    "chacha20-poly1305": ("CHACHA20-POLY1305", 32),
    "aes128-gmac": ("AES-NULL-GMAC", 16),
    "aes256-gmac": ("AES-NULL-GMAC", 32),
}

OUTER = {
    4: {"headend": "203.0.113.1", "client": "198.51.100.7"},
    6: {"headend": "2001:db8:1::1", "client": "2001:db8:2::7"},
}
INNER = {
    4: {"client": "10.8.0.2", "server": "10.0.1.5", "client_sel": "10.8.0.2/32", "local_sel": "10.0.0.0/16"},
    6: {"client": "fd00:8::2", "server": "fd00:10::5", "client_sel": "fd00:8::2/128", "local_sel": "fd00:10::/64"},
}
SPI_IN = 0x00001001
SPI_OUT = 0x00002001
MAC_PEER = "02:00:00:00:00:07"
MAC_US = "02:00:00:00:00:01"
PAYLOAD_SIZES = [0, 1, 2, 3, 17, 100, 501, 1200]


def natt_pcap_binary():
    path = os.environ.get("NATT_PCAP")
    if path:
        return path
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "natt-pcap"], cwd=ROOT, check=True)
    return os.path.join(ROOT, "target", "release", "natt-pcap")


def key_bytes(alg, spi):
    n = ALGORITHMS[alg][1] + 4
    return bytes((i * 13 + spi * 7 + 1) & 0xFF for i in range(n))


@dataclasses.dataclass(frozen=True)
class Case:
    alg: str = "aes128-gcm"
    esn: bool = False
    mode: str = "tunnel"
    inner: int = 4
    outer: int = 4
    encap: bool = True

    def __str__(self):
        return f"{self.alg}-{'esn' if self.esn else 'seq32'}-{self.mode}-in{self.inner}-out{self.outer}-{'udp' if self.encap else 'esp'}"

    @property
    def o(self):
        return OUTER[self.outer]

    @property
    def i(self):
        return INNER[self.inner]

    def ip(self, **kw):
        return IP(**kw) if self.outer == 4 else IPv6(**kw)

    def sa_json(self, direction, spi, last_seq=0):
        """The headend's SA as natt-pcap configuration."""
        k = key_bytes(self.alg, spi)
        sa = {
            "name": f"{direction}-{spi:x}",
            "spi": f"0x{spi:08x}",
            "direction": direction,
            "mode": self.mode,
            "algorithm": self.alg,
            "key": k[:-4].hex(),
            "salt": k[-4:].hex(),
            "local": self.o["headend"],
            "peer": self.o["client"],
            "encap": {"local_port": 4500, "peer_port": 4500} if self.encap else None,
            "esn": self.esn,
            "last_seq": last_seq,
        }
        if self.mode == "tunnel":
            sa["selectors"] = {
                "local": [INNER[4]["local_sel"], INNER[6]["local_sel"]],
                "peer": [INNER[4]["client_sel"], INNER[6]["client_sel"]],
            }
        if direction == "inbound":
            sa["replay_window"] = 128
        return sa

    def scapy_sa(self, spi):
        """The client's side of the same SA, in scapy."""
        name, _ = ALGORITHMS[self.alg]
        k = key_bytes(self.alg, spi)
        kw = {}
        if self.mode == "tunnel":
            kw["tunnel_header"] = self.ip(src=self.o["client"], dst=self.o["headend"])
        if self.encap:
            kw["nat_t_header"] = UDP(sport=4500, dport=4500)
        sa = SecurityAssociation(ESP, spi=spi, crypt_algo=name, crypt_key=k, **kw)
        if self.esn:
            sa.esn_en = True
        return sa


def run_natt_pcap(verb, config, pcap_in, pcap_out, extra=()):
    """Run natt-pcap; return its per-packet JSON lines and the summary from stderr."""
    crypto = os.environ.get("NATT_CRYPTO", "auto")
    cmd = [natt_pcap_binary(), verb, "-c", config, "-r", pcap_in, "-w", pcap_out, "--crypto", crypto, *extra]
    p = subprocess.run(cmd, capture_output=True, text=True)
    assert p.returncode == 0, f"{' '.join(cmd)} failed: {p.stderr}"
    lines = [json.loads(l) for l in p.stdout.splitlines()]
    summary = json.loads(p.stderr.strip().splitlines()[-1])
    if crypto != "auto":
        assert summary["summary"]["crypto"] == {"ipsec-mb": "intel-ipsec-mb", "ring": "ring"}[crypto]
    return lines, summary


def write_config(path, sas):
    with open(path, "w") as f:
        json.dump({"sas": sas}, f, indent=1)


def esp_seq(sa, pkt, seq):
    """scapy encryption of `pkt` at 64-bit `seq`, with the IV the engine uses (the
    sequence number), so its ESP bytes can be compared with ours."""
    sa.seq_num = seq & 0xFFFFFFFF
    sa.esn = seq >> 32
    return sa.encrypt(pkt, seq_num=seq & 0xFFFFFFFF, iv=struct.pack(">Q", seq), esn_en=sa.esn_en, esn=seq >> 32)


def tshark_available():
    return shutil.which("tshark") is not None


def tshark_esp(pcap, case, spi, fields):
    """Dissect `pcap` with Wireshark's ESP decryption for one AES-GCM SA; return one
    dict per frame with the requested fields (lists of values)."""
    k = key_bytes(case.alg, spi)
    with tempfile.TemporaryDirectory() as prof:
        env = dict(os.environ, WIRESHARK_CONFIG_DIR=prof, HOME=prof)
        uat = f'uat:esp_sa:"IPv{case.outer}","*","*","0x{spi:08x}","AES-GCM with 16 octet ICV [RFC4106]","0x{k.hex()}","NULL",""'
        cmd = ["tshark", "-n", "-r", pcap,
               "-o", "esp.enable_encryption_decode:TRUE",
               "-o", "esp.enable_authentication_check:TRUE",
               "-o", uat,
               # The inner payloads are test bytes: show them as data, so no dissector
               # (DNS on 53, L2TP on 1701, a heuristic) throws and takes the ICV
               # fields with it (shared/notes/oracles.md).
               "-d", "udp.port==53,data",
               "-d", "udp.port==1701,data",
               "-T", "ek"]
        for f in fields:
            cmd += ["-e", f]
        p = subprocess.run(cmd, capture_output=True, text=True, env=env)
        assert p.returncode == 0, p.stderr
    out = []
    for line in p.stdout.splitlines():
        d = json.loads(line)
        if "layers" in d:
            out.append({k.replace("_", "."): v for k, v in d["layers"].items()})
    return out
