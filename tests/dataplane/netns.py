"""Network namespaces, veth pairs and raw packet sockets for the live dataplane tests.

The dataplane runs in one namespace with its ends of the veth pairs; the test's ends
sit in another, where raw AF_PACKET sockets send what remote users and the protected
network would send and capture what the dataplane sends back. Neither namespace
forwards, so nothing leaks to the machine's real network."""

import contextlib
import ctypes
import os
import socket
import subprocess
import threading
import time

CLONE_NEWNET = 0x40000000
ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
_libc = ctypes.CDLL("libc.so.6", use_errno=True)


def sh(*cmd):
    p = subprocess.run(cmd, capture_output=True, text=True)
    assert p.returncode == 0, f"{' '.join(cmd)}: {p.stderr}"
    return p.stdout


class Netns:
    def __init__(self, name):
        self.name = name
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
        sh("ip", "netns", "add", name)
        self.ip("link", "set", "lo", "up")

    def ip(self, *args):
        return sh("ip", "-n", self.name, *args)

    def exec(self, *cmd):
        return sh("ip", "netns", "exec", self.name, *cmd)

    def prefix(self):
        return ["ip", "netns", "exec", self.name]

    @contextlib.contextmanager
    def entered(self):
        """Run the block in this namespace (this thread only)."""
        back = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        fd = os.open(f"/var/run/netns/{self.name}", os.O_RDONLY)
        try:
            if _libc.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns")
            yield
        finally:
            _libc.setns(back, CLONE_NEWNET)
            os.close(fd)
            os.close(back)

    def delete(self):
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)


def veth(a_ns, a, b_ns, b):
    """A veth pair a (in a_ns) <-> b (in b_ns), up, IPv6 off (no router solicitations),
    offloads off (the kernel would leave checksums for hardware that is not there)."""
    subprocess.run(["ip", "link", "del", a], capture_output=True)
    sh("ip", "link", "add", a, "type", "veth", "peer", "name", b)
    sh("ip", "link", "set", a, "netns", a_ns.name)
    sh("ip", "link", "set", b, "netns", b_ns.name)
    for ns, i in ((a_ns, a), (b_ns, b)):
        ns.exec("sysctl", "-qw", f"net.ipv6.conf.{i}.disable_ipv6=1")
        subprocess.run(ns.prefix() + ["ethtool", "-K", i, "tx", "off", "rx", "off"], capture_output=True)
        ns.ip("link", "set", i, "up")


def mac_of(ns, iface):
    out = ns.ip("-br", "link", "show", iface).split()
    return out[2]


class Port:
    """A raw socket on an interface of a namespace: send frames, capture what arrives."""

    def __init__(self, ns, iface):
        with ns.entered():
            self.s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
            self.s.bind((iface, 0))
        self.s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 << 20)
        self.s.settimeout(0.05)
        self.frames = []
        self.lock = threading.Lock()
        self.running = True
        self.t = threading.Thread(target=self._rx, daemon=True)
        self.t.start()

    def _rx(self):
        while self.running:
            try:
                data, addr = self.s.recvfrom(65535)
            except socket.timeout:
                continue
            except OSError:
                return
            if addr[2] == PACKET_OUTGOING:
                continue
            with self.lock:
                self.frames.append(data)

    def send(self, frame):
        self.s.send(frame)

    def received(self):
        with self.lock:
            return list(self.frames)

    def wait_for(self, pred, timeout=10):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            got = [f for f in self.received() if pred(f)]
            if got:
                return got
            time.sleep(0.02)
        return []

    def close(self):
        self.running = False
        self.t.join()
        self.s.close()
