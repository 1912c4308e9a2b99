"""Helpers for the dataplane tests: remote clients (their SAs as natt-control
configuration and as scapy SecurityAssociations), the control process, the dataplane
process on virtual ports, and an independent Toeplitz hash to say which worker must own
each SA. Every test runs natt-control and natt-dataplane as separate processes, as an
operator would."""

import dataclasses
import hashlib
import json
import os
import signal
import socket
import struct
import subprocess
import time

from scapy.all import IP, TCP, UDP, Ether, IPv6, Raw, raw
from scapy.layers.ipsec import ESP, SecurityAssociation
from scapy.utils import PcapWriter

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
HEADEND4, HEADEND6 = "203.0.113.1", "2001:db8:1::1"
MAC_GW = "02:00:00:00:00:fe"  # the router in front of each port, in our captures
PEER_PUBLIC = "02:00:00:00:00:aa"  # --eth-peer for the public port
PEER_PROTECTED = "02:00:00:00:00:bb"  # --eth-peer for the protected port

SCAPY_ALG = {
    "aes128-gcm": ("AES-GCM", 16),
    "aes256-gcm": ("AES-GCM", 32),
    "chacha20-poly1305": ("CHACHA20-POLY1305", 32),
}


def binary(name):
    d = os.environ.get("NATT_BIN_DIR") or os.path.join(ROOT, "target", "release")
    return os.path.join(d, name)


def eal_memory():
    """EAL memory options for this machine (hugepages, or --no-huge), from the same script
    the demo uses."""
    out = subprocess.run([os.path.join(ROOT, "scripts", "hugepages.sh")], capture_output=True, text=True, check=True)
    return out.stdout.split()


def key_salt(spi, n):
    k = b""
    while len(k) < n + 4:
        k += hashlib.sha256(b"dataplane test %d %d" % (spi, len(k))).digest()
    return k[:n], k[n : n + 4]


@dataclasses.dataclass
class Client:
    """A remote user: one inbound and one outbound SA."""

    idx: int
    alg: str = "aes128-gcm"
    esn: bool = False
    mode: str = "tunnel"
    inner: int = 4
    outer: int = 4
    nat_port: int = 4500
    replay_window: int = 1024

    @property
    def spi_in(self):
        return 0x10000 + self.idx

    @property
    def spi_out(self):
        return 0x20000 + self.idx

    @property
    def outer_addr(self):
        return f"198.51.{100 + self.idx // 250}.{1 + self.idx % 250}" if self.outer == 4 else f"2001:db8:2::{self.idx + 1:x}"

    @property
    def headend(self):
        return HEADEND4 if self.outer == 4 else HEADEND6

    @property
    def inner_addr(self):
        if self.mode == "transport":
            return self.outer_addr
        return f"10.8.{self.idx // 250}.{2 + self.idx % 250}" if self.inner == 4 else f"fd00:8::{self.idx + 2:x}"

    @property
    def server(self):
        if self.mode == "transport":
            return self.headend
        return "10.0.1.5" if self.inner == 4 else "fd00:10::5"

    def sa(self, direction, spi=None, last_seq=0):
        spi = spi or (self.spi_in if direction == "inbound" else self.spi_out)
        k, s = key_salt(spi, SCAPY_ALG[self.alg][1])
        sa = {
            "name": f"c{self.idx}-{direction[:-5] or direction}-{spi:x}",
            "spi": f"0x{spi:08x}",
            "direction": direction,
            "mode": self.mode,
            "algorithm": self.alg,
            "key": k.hex(),
            "salt": s.hex(),
            "local": self.headend,
            "peer": self.outer_addr,
            "encap": {"local_port": 4500, "peer_port": self.nat_port},
            "esn": self.esn,
            "last_seq": last_seq,
        }
        if self.mode == "tunnel":
            sel = f"{self.inner_addr}/{32 if self.inner == 4 else 128}"
            sa["selectors"] = {"local": ["10.0.0.0/16", "fd00:10::/64"], "peer": [sel]}
        if direction == "inbound":
            sa["replay_window"] = self.replay_window
            sa["paired_spi"] = f"0x{self.spi_out:08x}"
        return sa

    def scapy_sa(self, spi):
        name, n = SCAPY_ALG[self.alg]
        k, s = key_salt(spi, n)
        ipc = IP if self.outer == 4 else IPv6
        kw = {"nat_t_header": UDP(sport=self.nat_port, dport=4500)}
        if self.mode == "tunnel":
            kw["tunnel_header"] = ipc(src=self.outer_addr, dst=self.headend)
        sa = SecurityAssociation(ESP, spi=spi, crypt_algo=name, crypt_key=k + s, **kw)
        sa.esn_en = self.esn
        return sa

    def request(self, n, size=40):
        """Client to server, numbered n (in the payload, to check order and loss)."""
        data = Raw(struct.pack(">II", self.idx, n) + bytes((i * 7 + n) & 0xFF for i in range(size)))
        ipc = IP if (self.inner if self.mode == "tunnel" else self.outer) == 4 else IPv6
        if self.mode == "transport":
            pkt = ipc(src=self.outer_addr, dst=self.headend) / UDP(sport=1701, dport=1701) / data
        else:
            pkt = ipc(src=self.inner_addr, dst=self.server) / TCP(sport=40000 + self.idx, dport=443, flags="PA", seq=n) / data
        return pkt.__class__(raw(pkt))

    def reply(self, n, size=40):
        """Server to client, numbered n."""
        data = Raw(struct.pack(">II", self.idx, n) + bytes((i * 5 + n) & 0xFF for i in range(size)))
        ipc = IP if self.inner == 4 else IPv6
        pkt = ipc(src=self.server, dst=self.inner_addr) / UDP(sport=53, dport=40000 + self.idx) / data
        return pkt.__class__(raw(pkt))

    def encrypt(self, pkt, seq, spi=None):
        """What the client sends: ESP in UDP at 64-bit sequence number `seq`."""
        sa = self.scapy_sa(spi or self.spi_in)
        sa.seq_num, sa.esn = seq & 0xFFFFFFFF, seq >> 32
        e = sa.encrypt(pkt, seq_num=seq & 0xFFFFFFFF, iv=struct.pack(">Q", seq), esn_en=self.esn, esn=seq >> 32)
        return Ether(src=MAC_GW, dst="02:70:63:61:70:00") / e

    def decrypt(self, frame, seq, spi=None):
        """scapy's decryption (ICV verified) of what the headend sent this client."""
        sa = self.scapy_sa(spi or self.spi_out)
        outer = frame[IP] if self.outer == 4 else frame[IPv6]
        return sa.decrypt(outer.copy(), verify=True, esn_en=self.esn, esn=seq >> 32)


def routed(pkt):
    """A packet as a router forwards it: TTL or hop limit one less."""
    p = pkt.copy()
    if p.version == 4:
        p.ttl -= 1
        del p.chksum
    else:
        p.hlim -= 1
    return p.__class__(raw(p))


def write_pcap(path, frames):
    """A pcap file, possibly empty (net_pcap needs a file to read)."""
    w = PcapWriter(str(path), linktype=1, sync=True)
    w._write_header(None)
    for f in frames:
        w.write(f)
    w.close()


# ---- which worker owns an SA: Toeplitz, written again from the definition ----

RSS_KEY = bytes.fromhex(
    "6d5a56da255b0ec24167253d43a38fb0d0ca2bcbae7b30b477cb2da38030f20c6a42b73bbeac01fa"
)


def toeplitz(data, key=RSS_KEY):
    k = int.from_bytes(key, "big")
    klen = len(key) * 8
    h = 0
    for i in range(len(data) * 8):
        if data[i // 8] & (0x80 >> (i % 8)):
            h ^= (k >> (klen - 32 - i)) & 0xFFFFFFFF
    return h


def owner(spi, workers, reta=128):
    return (toeplitz(struct.pack(">I", spi)) & (reta - 1)) % workers


assert toeplitz(bytes([66, 9, 149, 187, 161, 142, 100, 80])) == 0x323E8FC2  # Microsoft's verification suite


# ---- processes ----


class Control:
    """natt-control on a private shared-memory directory."""

    def __init__(self, tmp, name="t"):
        self.dir = str(tmp / "shm")
        self.state = str(tmp / "state")
        os.makedirs(self.dir, exist_ok=True)
        os.makedirs(self.state, exist_ok=True)
        self.name = name
        self.tmp = tmp
        self.daemon = None

    def cmd(self, *args, check=True):
        c = [binary("natt-control"), "--name", self.name, "--shm-dir", self.dir, "--state-dir", self.state, *args]
        p = subprocess.run(c, capture_output=True, text=True, timeout=60)
        if check:
            assert p.returncode == 0, f"{' '.join(c)}: {p.stdout}{p.stderr}"
        return p

    def apply(self, sas, grace=0, capacity=4096):
        path = self.tmp / f"sas-{time.monotonic_ns()}.json"
        path.write_text(json.dumps({"version": 1, "sas": sas}, indent=1))
        return self.cmd("apply", str(path), "--grace", str(grace), "--capacity", str(capacity))

    def start_daemon(self, capacity=4096, http=False):
        """Start `natt-control run`; with http=True it serves statistics on a free
        loopback port, whose base URL is then in self.url."""
        self.url = None
        if http:
            port = free_port()
            self.url = f"http://127.0.0.1:{port}"
        c = [binary("natt-control"), "--name", self.name, "--shm-dir", self.dir, "--state-dir", self.state, "run",
             "--capacity", str(capacity), "--quiet", "--http", f"127.0.0.1:{port}" if http else "off"]
        self.daemon = subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        sock = os.path.join(self.state, f"{self.name}.sock")
        for _ in range(200):
            if os.path.exists(sock):
                return
            time.sleep(0.05)
        raise AssertionError("natt-control run did not start")

    def stop_daemon(self):
        if self.daemon:
            self.daemon.send_signal(signal.SIGTERM)
            self.daemon.wait(timeout=30)
            self.daemon = None


def free_port():
    """A TCP port on loopback that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Dataplane:
    """natt-dataplane with the given vdevs and options."""

    def __init__(self, control, vdevs, opts=(), lcores="0-1", eal=(), netns=None,
                 eth_peers=(PEER_PUBLIC, PEER_PROTECTED)):
        self.control = control
        self.stats_path = control.tmp / f"stats-{time.monotonic_ns()}.json"
        self.cmd = [*(netns.prefix() if netns else []), binary("natt-dataplane"), *(["-l", lcores] if lcores else []), "--no-pci", *eal_memory(), *eal]
        for v in vdevs:
            self.cmd += ["--vdev", v]
        self.cmd += ["--", "--name", control.name, "--shm-dir", control.dir, "--stats-json", str(self.stats_path),
                     "--eth-peer", f"0,{eth_peers[0]}", "--eth-peer", f"1,{eth_peers[1]}", *opts]
        self.proc = None

    def run(self, timeout=120, idle_ms=700):
        """Run until the captures are consumed; return (stdout, stats)."""
        p = subprocess.run(self.cmd + ["--idle-exit", str(idle_ms), "--duration", "60"], capture_output=True,
                           text=True, timeout=timeout)
        assert p.returncode == 0, f"natt-dataplane failed ({p.returncode}): {' '.join(self.cmd)}\n{p.stdout}\n{p.stderr}"
        return p.stdout, json.loads(self.stats_path.read_text())

    def start(self):
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # Wait for the banner.
        line = self.proc.stdout.readline()
        assert "natt-dataplane:" in line, line + self.proc.stderr.read()
        return self

    def stop(self, sig=signal.SIGTERM, timeout=60):
        self.proc.send_signal(sig)
        out, err = self.proc.communicate(timeout=timeout)
        assert self.proc.returncode == 0, f"exit {self.proc.returncode}\n{out}\n{err}"
        return out, json.loads(self.stats_path.read_text())


def pcap_port(name, rx, tx):
    """A net_pcap vdev reading `rx` and writing each of `tx` (one TX queue per file)."""
    s = f"{name},rx_pcap={rx}"
    for t in tx if isinstance(tx, (list, tuple)) else [tx]:
        s += f",tx_pcap={t}"
    return s


def drops(stats, scope="totals"):
    return {k: v for k, v in stats[scope]["drops"].items() if v}
