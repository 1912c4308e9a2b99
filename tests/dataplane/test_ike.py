"""Unmodified IKE daemons on both sides: strongSwan's charon on the headend's host,
behind the dataplane's TAP interface, and another on a client behind a Linux NAT
(nftables, which maps ports 500 and 4500 to others), as a remote user would be; a
server behind the protected port.

    client (charon, 10.0.0.2) -- NAT (10.0.0.1 | 198.51.100.1) -- public port (AF_XDP)
        natt-dataplane -- TAP (203.0.113.1, charon: the host's IKE daemon)
                       -- protected port (AF_XDP) -- server (192.0.2.10)

- The exception path: the client's IKE SA comes up through the NAT (IKE_SA_INIT on 500,
  then NAT-T on 4500 behind the non-ESP marker), the host's daemon sees the client at the
  NAT's address and port, the host rekeys the IKE SA itself (its packets leave by the
  public port for the NAT's mapping), the client's NAT keepalives are consumed and
  counted. ARP both ways goes through the dataplane too: no neighbour is set by hand.
  Childless IKE SAs (RFC 6023): this kernel has no ESP for a CHILD_SA.
- ESP with another implementation: with strongSwan's own ESP (kernel-libipsec, in
  charon) on both daemons, the CHILD_SA's keys as the host's charon derived them go into
  the dataplane as an IKE daemon's helper would put them; UDP echoes between the client
  and the server then cross our ESP and strongSwan's both ways, through a CHILD_SA rekey
  (make-before-break through natt-control) and a NAT that forgets the client and maps it
  to new ports."""

import contextlib
import json
import os
import re
import signal
import socket
import struct
import subprocess
import threading
import time
import types

import pytest

from dp import Control, Dataplane, drops
from netns import Netns, mac_of, veth

HEADEND, NAT_OUT, NAT_IN, CLIENT = "203.0.113.1", "198.51.100.1", "10.0.0.1", "10.0.0.2"
INSIDE, SERVER = "192.0.2.1", "192.0.2.10"  # the headend's inside address, a server behind it
NAT_PORTS, NEW_NAT_PORTS = range(40000, 40100), range(40100, 40200)
CHARON = "/usr/lib/ipsec/charon"
SECRET = "a test secret, not a real one"

STRONGSWAN_CONF = """charon {{
  load_modular = no
  load = random nonce aes sha1 sha2 hmac gmp kdf gcm {ipsec} socket-default vici
  keep_alive = 1s
  retransmit_tries = 3
  retransmit_timeout = 2.0
  install_routes = {routes}
  install_virtual_ip = no
  filelog {{
    log {{
      path = {dir}/charon.log
      flush_line = yes
      default = 1
      net = 2
      chd = {chd}
    }}
  }}
  plugins {{
    vici {{
      socket = unix://{dir}/charon.vici
    }}
  }}
}}
"""

CONNECTION = """connections {{
  {name} {{
    version = 2
    {addrs}
    proposals = aes128-sha256-modp2048
    local {{
      auth = psk
      id = {me}
    }}
    remote {{
      auth = psk
      id = {peer}
    }}
    {children}
  }}
}}
secrets {{
  ike-{name} {{
    id-1 = headend.example
    id-2 = client.example
    secret = "{secret}"
  }}
}}
"""


class Charon:
    """strongSwan's charon in a network namespace, with its own configuration, vici socket
    and log in `dir`, and its own /run (the pid file's place is built in)."""

    def __init__(self, ns, dir, name, addrs, me, peer, children="", libipsec=False, routes=False, chd=1):
        """`libipsec`: ESP in charon itself (strongSwan's kernel-libipsec: a TUN device,
        ESP in UDP from charon's own socket), as this kernel has none; `routes`: route
        the remote selectors into it; `chd` 4 logs the CHILD_SAs' keys."""
        self.dir, self.name = dir, name
        dir.mkdir()
        ipsec = "kernel-libipsec kernel-netlink" if libipsec else "kernel-netlink"
        conf = STRONGSWAN_CONF.format(dir=dir, ipsec=ipsec, routes="yes" if routes else "no", chd=chd)
        (dir / "strongswan.conf").write_text(conf)
        (dir / "swanctl.conf").write_text(CONNECTION.format(name=name, addrs=addrs, me=me, peer=peer,
                                                           children=children, secret=SECRET))
        assert len(f"{dir}/charon.vici") < 100, "a Unix socket path must be short"
        self.env = dict(os.environ, STRONGSWAN_CONF=str(dir / "strongswan.conf"))
        self.proc = subprocess.Popen(
            [*ns.prefix(), "unshare", "--mount", "sh", "-c", f"mount -t tmpfs tmpfs /run && exec {CHARON}"],
            env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        end = time.monotonic() + 20
        while not (dir / "charon.vici").exists():
            assert self.proc.poll() is None and time.monotonic() < end, f"charon did not start\n{self.log()}"
            time.sleep(0.05)
        self.swanctl("--load-all", "--file", str(dir / "swanctl.conf"))

    def swanctl(self, *args, timeout=30):
        p = subprocess.run(["swanctl", *args, "--uri", f"unix://{self.dir}/charon.vici"], env=self.env,
                           capture_output=True, text=True, timeout=timeout)
        assert p.returncode == 0, f"swanctl {' '.join(args)}: {p.returncode}\n{p.stdout}\n{self.log()}"
        return p.stdout

    def ike_sas(self):
        """[(state, local addr, local port, remote addr, remote port)] of its IKE SAs."""
        out = self.swanctl("--list-sas")
        sas = re.findall(r"^\S+: #\d+, (\w+), IKEv2.*\n\s+local\s+'[^']*' @ ([\d.]+)\[(\d+)\]\n"
                         r"\s+remote\s+'[^']*' @ ([\d.]+)\[(\d+)\]", out, re.M)
        return [(s, la, int(lp), ra, int(rp)) for s, la, lp, ra, rp in sas]

    def child_sas(self):
        """[(state, SPI in, SPI out)] of its CHILD_SAs, with packet counts:
        (state, spi_in, packets_in, spi_out, packets_out)."""
        out = self.swanctl("--list-sas")
        sas = re.findall(r"^\s+\S+: #\d+, reqid \d+, (\w+), .*\n(?:.*\n)*?\s+in\s+([0-9a-f]{8}).*?(\d+) packets.*\n"
                         r"\s+out\s+([0-9a-f]{8}).*?(\d+) packets", out, re.M)
        return [(st, int(i, 16), int(pi), int(o, 16), int(po)) for st, i, pi, o, po in sas]

    def child_keys(self):
        """The last CHILD_SA's keys (key and salt) from its log at chd level 4:
        {"initiator": bytes, "responder": bytes}."""
        keys, lines = {}, self.log().splitlines()
        for n, line in enumerate(lines):
            m = re.search(r"encryption (initiator|responder) key => (\d+) bytes", line)
            if not m:
                continue
            data = b""
            for more in lines[n + 1:]:
                d = re.search(r"\]\s+\d+: ((?:[0-9A-F]{2} ?)+)", more) or re.match(r"\s+\d+: ((?:[0-9A-F]{2} ?)+)", more)
                if not d:
                    break
                data += bytes.fromhex(d.group(1))
            assert len(data) == int(m.group(2)), (line, data.hex())
            keys[m.group(1)] = data
        return keys

    def log(self):
        p = self.dir / "charon.log"
        return p.read_text() if p.exists() else "(no log)"

    def received(self, frm):
        """How many IKE messages it received from `frm` (its log: one line with the size
        per message, besides the socket's own line without)."""
        return len(re.findall(rf"received packet: from {re.escape(frm)}\[\d+\] .* bytes\)", self.log()))

    def sent(self, to):
        return len(re.findall(rf"sending packet: from \S+ to {re.escape(to)}\[\d+\] .* bytes\)", self.log()))

    def kill(self):
        """SIGKILL: a daemon that stops cleanly says goodbye to its peer, one more message
        for the counts."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture
def net():
    tag = f"{os.getpid() % 10000}"
    spaces = [Netns(f"natt-dp-{tag}"), Netns(f"natt-nat-{tag}"), Netns(f"natt-cli-{tag}"), Netns(f"natt-srv-{tag}")]
    dpns, nat, client, server = spaces
    try:
        veth(dpns, "natt-pub0", nat, "natt-pub1")
        veth(nat, "natt-cli0", client, "natt-cli1")
        veth(dpns, "natt-prt0", server, "natt-prt1")
        server.ip("addr", "add", f"{SERVER}/24", "dev", "natt-prt1")
        server.ip("route", "add", "10.0.0.0/24", "via", INSIDE)
        server.ip("neigh", "add", INSIDE, "lladdr", mac_of(dpns, "natt-prt0"), "dev", "natt-prt1")
        nat.ip("addr", "add", f"{NAT_OUT}/24", "dev", "natt-pub1")
        nat.ip("addr", "add", f"{NAT_IN}/24", "dev", "natt-cli0")
        nat.ip("route", "add", "203.0.113.0/24", "dev", "natt-pub1")
        nat.exec("sysctl", "-qw", "net.ipv4.ip_forward=1")
        rules = ("table ip nat {\n chain post {\n  type nat hook postrouting priority srcnat;\n"
                 f'  oifname "natt-pub1" udp sport {{ 500, 4500 }} snat to {NAT_OUT}:{NAT_PORTS[0]}-{NAT_PORTS[-1]}\n'
                 " }\n}\n")
        p = subprocess.run([*nat.prefix(), "nft", "-f", "-"], input=rules, text=True, capture_output=True)
        assert p.returncode == 0, f"nft: {p.stderr}"
        client.ip("addr", "add", f"{CLIENT}/24", "dev", "natt-cli1")
        client.ip("route", "add", "default", "via", NAT_IN)
        yield dpns, nat, client, server
    finally:
        for ns in spaces:
            ns.delete()


def test_an_ike_sa_comes_up_through_a_nat_with_the_hosts_ike_daemon_behind_the_tap(net, tmp_path):
    dpns, nat, client, _ = net
    ctl = Control(tmp_path)
    ctl.apply([])
    # AF_XDP takes every frame of the public port from the kernel, as a NIC bound to DPDK
    # would: the host sees only what comes through the TAP.
    dp = Dataplane(ctl, ["net_af_xdp0,iface=natt-pub0", "net_null0,no-rx=1", "net_tap0,iface=natt-tap0"], netns=dpns,
                   opts=["--punt", "2"]).start()
    daemons = []
    try:
        dpns.ip("addr", "add", f"{HEADEND}/24", "dev", "natt-tap0")
        dpns.ip("link", "set", "natt-tap0", "up")
        dpns.ip("route", "add", "198.51.100.0/24", "dev", "natt-tap0")
        host = Charon(dpns, tmp_path / "host", "rw", f"local_addrs = {HEADEND}", "headend.example", "client.example")
        daemons.append(host)
        user = Charon(client, tmp_path / "user", "hq", f"remote_addrs = {HEADEND}", "client.example", "headend.example")
        daemons.append(user)

        out = user.swanctl("--initiate", "--ike", "hq")
        assert "initiate completed successfully" in out, out
        assert "local host is behind NAT" in user.log(), "the client did not find its NAT"
        # The host's daemon has the client at the NAT's address and port, on NAT-T's port:
        # what reached it through the dataplane is what the NAT sent, headers and all.
        (sa,) = host.ike_sas()
        state, local, local_port, remote, remote_port = sa
        assert (state, local, local_port, remote) == ("ESTABLISHED", HEADEND, 4500, NAT_OUT), sa
        assert remote_port in NAT_PORTS, sa
        assert user.ike_sas() == [("ESTABLISHED", CLIENT, 4500, HEADEND, 4500)]

        # The host starts an exchange of its own: a rekey of the IKE SA, whose packets
        # leave by the public port for the NAT's mapping, and whose answers come back.
        out = host.swanctl("--rekey", "--ike", "rw")
        end = time.monotonic() + 20
        while time.monotonic() < end and "IKE_SA hq[2] rekeyed" not in user.log():
            time.sleep(0.1)
        assert "IKE_SA hq[2] rekeyed" in user.log(), f"the client never saw the host's rekey\n{out}\n{host.log()}"
        end = time.monotonic() + 20
        while time.monotonic() < end and [s[0] for s in host.ike_sas()] != ["ESTABLISHED"]:
            time.sleep(0.1)
        assert [s[:4] for s in host.ike_sas()] == [("ESTABLISHED", HEADEND, 4500, NAT_OUT)], host.ike_sas()

        # NAT keepalives: the client, behind the NAT, sends one after each second without
        # other traffic.
        time.sleep(3.5)
    finally:
        for d in daemons:
            d.kill()
        out, stats = dp.stop()
    t = stats["totals"]
    # Every IKE message the host's daemon received came through the dataplane's punt,
    # and every one it sent reached the client.
    assert t["punt_ike"] == host.received(NAT_OUT) >= 4, (t["punt_ike"], host.received(NAT_OUT))
    assert user.received(HEADEND) == host.sent(NAT_OUT) >= 4, (user.received(HEADEND), host.sent(NAT_OUT))
    assert t["keepalives"] == user.log().count("sending keep alive to") >= 2, t["keepalives"]
    assert drops(stats) == {}, drops(stats)


def child(local_ts, remote_ts):
    """A CHILD_SA `net` of AES-128-GCM ESP between these selectors."""
    return ("children {\n      net {\n"
            f"        local_ts = {local_ts}\n        remote_ts = {remote_ts}\n        esp_proposals = aes128gcm16\n"
            "      }\n    }")


HOST_CHILD = child("192.0.2.0/24", "10.0.0.0/24")
USER_CHILD = child(f"{CLIENT}/32", "192.0.2.0/24")
ECHOES = 50


def echo_server(ns, port):
    """A UDP echo server on SERVER in `ns`: returns (socket, thread, the sources seen)."""
    with ns.entered():
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((SERVER, port))
    s.settimeout(0.2)
    seen = []

    def serve():
        while True:
            try:
                data, addr = s.recvfrom(2048)
            except socket.timeout:
                continue
            except OSError:
                return
            seen.append(addr)
            s.sendto(data, addr)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return s, t, seen


@contextlib.contextmanager
def tunnel(net, tmp_path, opts=()):
    """Both charons with strongSwan's own ESP, the client's CHILD_SA up, and its keys
    and SPIs, as the host's charon derived them, installed in the dataplane as an IKE
    daemon's helper would; yields what the test needs. At the end the daemons are
    killed and the dataplane stopped: its statistics are in `t.stats`."""
    dpns, nat, client, server = net
    t = types.SimpleNamespace(ctl=Control(tmp_path), stats=None)
    t.ctl.apply([])
    t.ctl.start_daemon()
    # Frames we build go to the NAT's and the server's MACs.
    dp = Dataplane(t.ctl, ["net_af_xdp0,iface=natt-pub0", "net_af_xdp1,iface=natt-prt0", "net_tap0,iface=natt-tap0"],
                   netns=dpns, opts=["--punt", "2", *opts],
                   eth_peers=(mac_of(nat, "natt-pub1"), mac_of(server, "natt-prt1")))
    dp.start()
    daemons = []
    try:
        dpns.ip("addr", "add", f"{HEADEND}/24", "dev", "natt-tap0")
        dpns.ip("link", "set", "natt-tap0", "up")
        dpns.ip("route", "add", "198.51.100.0/24", "dev", "natt-tap0")
        # The host's charon installs its CHILD_SAs in its own libipsec, which never sees
        # a packet (the dataplane carries the ESP); that wants an address of the host in
        # the local selector to route from.
        dpns.ip("addr", "add", f"{INSIDE}/32", "dev", "lo")
        t.host = Charon(dpns, tmp_path / "host", "rw", f"local_addrs = {HEADEND}", "headend.example",
                        "client.example", children=HOST_CHILD, libipsec=True, chd=4)
        daemons.append(t.host)
        t.user = Charon(client, tmp_path / "user", "hq", f"remote_addrs = {HEADEND}", "client.example",
                        "headend.example", children=USER_CHILD, libipsec=True, routes=True)
        daemons.append(t.user)
        out = t.user.swanctl("--initiate", "--child", "net")
        assert "initiate completed successfully" in out, out

        (ike,) = t.host.ike_sas()
        t.nat_port = ike[4]
        ((state, t.spi_in, _, t.spi_out, _),) = t.host.child_sas()
        keys = t.host.child_keys()
        assert state == "INSTALLED" and len(keys["initiator"]) == len(keys["responder"]) == 20, (state, keys)
        t.common = {"mode": "tunnel", "algorithm": "aes128gcm16", "local": HEADEND, "peer": NAT_OUT,
                    "encap": {"local_port": 4500, "peer_port": t.nat_port},
                    "selectors": {"local": ["192.0.2.0/24"], "peer": [f"{CLIENT}/32"]}}
        # The client initiated the CHILD_SA: what it sends is under the initiator's key.
        t.ctl.apply([
            dict(t.common, name="user-in", spi=f"0x{t.spi_in:08x}", direction="inbound",
                 key=keys["initiator"].hex(), paired_spi=f"0x{t.spi_out:08x}", replay_window=128),
            dict(t.common, name="user-out", spi=f"0x{t.spi_out:08x}", direction="outbound",
                 key=keys["responder"].hex()),
        ])
        yield t
    finally:
        for d in daemons:
            d.kill()
        _, t.stats = dp.stop()
        t.ctl.stop_daemon()


def test_a_strongswan_client_behind_a_nat_talks_through_the_dataplane_with_the_keys_ike_made(net, tmp_path):
    """The client's ESP is strongSwan's own (libipsec), through the Linux NAT; UDP echoes
    to a server behind the headend go both ways, across a CHILD_SA rekey and a NAT that
    maps the client anew."""
    _, nat, client, server = net
    with tunnel(net, tmp_path) as t:
        host, user, ctl, common = t.host, t.user, t.ctl, t.common
        spi_in, spi_out, nat_port = t.spi_in, t.spi_out, t.nat_port
        sock, _, seen = echo_server(server, 7000)
        with client.entered():
            c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            c.bind((CLIENT, 0))
        c.settimeout(3)

        def echoes(first):
            got = []
            for n in range(first, first + ECHOES):
                msg = f"echo {n} ".encode() * (1 + n % 20)
                c.sendto(msg, (SERVER, 7000))
                data, addr = c.recvfrom(2048)
                got.append((data == msg, addr))
            return got

        assert echoes(0) == [(True, (SERVER, 7000))] * ECHOES
        # The server saw the client's own address: the inner packet as the client sent it.
        assert {a[0] for a in seen} == {CLIENT} and len(seen) == ECHOES
        # strongSwan's ESP accepted every packet we encrypted (ICV, replay, padding).
        assert user.child_sas()[0][2::2] == (ECHOES, ECHOES)

        # The client rekeys the CHILD_SA; the new SAs go into the dataplane
        # make-before-break, and the echoes go on under them.
        user.swanctl("--rekey", "--child", "net")
        end = time.monotonic() + 20
        installed = []
        while time.monotonic() < end and not installed:
            time.sleep(0.1)
            # The old one may stay a while as DELETED (strongSwan's grace for packets
            # in flight).
            installed = [x for x in host.child_sas() if x[0] == "INSTALLED" and x[1] != spi_in]
        assert len(installed) == 1, host.child_sas()
        ((_, new_in, _, new_out, _),) = installed
        keys = host.child_keys()
        path = tmp_path / "rekey.json"
        path.write_text(json.dumps({"version": 1, "sas": [
            dict(common, name="user-in-2", spi=f"0x{new_in:08x}", direction="inbound", key=keys["initiator"].hex(),
                 paired_spi=f"0x{new_out:08x}", replay_window=128),
            dict(common, name="user-out-2", spi=f"0x{new_out:08x}", direction="outbound", key=keys["responder"].hex()),
        ]}))
        ctl.cmd("rekey", "--in", f"0x{spi_in:08x}", "--out", f"0x{spi_out:08x}", str(path), "--grace", "1")
        assert echoes(ECHOES) == [(True, (SERVER, 7000))] * ECHOES, "the rekeyed SAs do not carry"
        now = [x for x in user.child_sas() if x[0] == "INSTALLED"]
        assert [(x[1], x[2], x[4]) for x in now] == [(new_out, ECHOES, ECHOES)], user.child_sas()

        # The NAT forgets the client and maps it anew to other ports, as a home router
        # does after a reboot: the client's next ESP comes from a new port, and the
        # dataplane, once it has verified a packet from there, sends the replies there.
        nat.exec("nft", "flush", "chain", "ip", "nat", "post")
        nat.exec("nft", "add", "rule", "ip", "nat", "post", "oifname", "natt-pub1", "udp", "sport", "{ 500, 4500 }",
                 "snat", "to", f"{NAT_OUT}:{NEW_NAT_PORTS[0]}-{NEW_NAT_PORTS[-1]}")
        nat.exec("conntrack", "-F")
        assert echoes(2 * ECHOES) == [(True, (SERVER, 7000))] * ECHOES, "the replies did not follow the NAT"
        now = [x for x in user.child_sas() if x[0] == "INSTALLED"]
        assert [(x[1], x[2], x[4]) for x in now] == [(new_out, 2 * ECHOES, 2 * ECHOES)], user.child_sas()
        c.close()
        sock.close()
    stats = t.stats
    t = stats["totals"]
    assert (t["decap_packets"], t["encap_packets"]) == (3 * ECHOES, 3 * ECHOES), (t["decap_packets"], t["encap_packets"])
    assert t["nat_changes"] == 1 and drops(stats) == {}, (t["nat_changes"], drops(stats))
    # natt-control logged the change: from the first mapping to the new one, and the
    # outbound SA it updated.
    events = [json.loads(line) for line in open(os.path.join(ctl.state, f"{ctl.name}.events.jsonl"))]
    (e,) = [e for e in events if e["event"] == "nat_mapping_changed"]
    assert (e["spi"], e["updated_spi"], e["old"]) == (f"0x{new_in:08x}", f"0x{new_out:08x}", {"addr": NAT_OUT, "port": nat_port})
    assert e["new"]["addr"] == NAT_OUT and e["new"]["port"] in NEW_NAT_PORTS, e


def traceroute_first_hop(server):
    """Send a UDP probe with TTL 1 from the server to the client, as traceroute's first
    does; return (the address that answered, ICMP type, code), from the socket's error
    queue (IP_RECVERR)."""
    with server.entered():
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, 1)
    s.setsockopt(socket.IPPROTO_IP, 11, 1)  # IP_RECVERR
    s.sendto(b"probe", (CLIENT, 33434))
    end = time.monotonic() + 5
    while time.monotonic() < end:
        try:
            _, anc, _, _ = s.recvmsg(512, 512, 0x2000)  # MSG_ERRQUEUE
        except BlockingIOError:
            time.sleep(0.02)
            continue
        for level, kind, data in anc:
            if level == socket.IPPROTO_IP and kind == 11:
                # struct sock_extended_err, then the offender's sockaddr_in.
                _, origin, icmp_type, code = struct.unpack_from("=IBBB", data)
                offender = socket.inet_ntoa(data[16 + 4:16 + 8])
                s.close()
                return offender, icmp_type, code
    s.close()
    return None


@pytest.mark.parametrize("way", ["icmp", "mss"])
def test_full_size_tcp_crosses_the_tunnel(net, tmp_path, way):
    """TCP from a server behind the headend to the client, whose tunnel interface takes
    full-size packets (MTU 1500, as a client with kernel IPsec has it), so that both ends
    would send full-size segments, which do not fit the tunnel. Either way every byte
    arrives: `icmp` (MSS clamping off): the dataplane answers the server's full-size
    segments with Fragmentation Needed from `--icmp-source`, and the server's kernel
    takes the size it reports as the path MTU; `mss` (ICMP errors off, clamping as by
    default): the SYNs cross the tunnel announcing what fits, and no segment is too big.
    With neither the transfer hangs, each segment dropped as `mtu_exceeded` and sent
    again at the same size. (Downloads only: strongSwan's libipsec reads at most 1400
    bytes from its TUN device, so the client's own full-size packets would leave it
    cut short.)"""
    _, _, client, server = net
    down = bytes((i * 7 + i // 251) & 0xff for i in range(400_000))
    opts = ["--icmp-source", INSIDE, "--tcp-mss", "off"] if way == "icmp" else ["--icmp-rate", "0"]
    with tunnel(net, tmp_path, opts=opts) as t:
        client.ip("link", "set", "ipsec0", "mtu", "1500")
        with server.entered():
            ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            ls.bind((SERVER, 7001))
            ls.listen(1)
        ls.settimeout(10)

        def serve():
            conn, _ = ls.accept()
            conn.settimeout(30)
            conn.sendall(down)
            conn.close()

        th = threading.Thread(target=serve, daemon=True)
        th.start()
        with client.entered():
            c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            c.bind((CLIENT, 0))
        c.settimeout(15)
        c.connect((SERVER, 7001))
        chunks = []
        while sum(map(len, chunks)) < len(down):
            b = c.recv(65536)
            if not b:
                break
            chunks.append(b)
        th.join(30)
        c.close()
        ls.close()
        route = server.exec("ip", "route", "get", CLIENT)
        if way == "icmp":
            hop = traceroute_first_hop(server)
    assert b"".join(chunks) == down, "the download did not arrive whole"
    tot = t.stats["totals"]
    assert drops(t.stats) == {}, drops(t.stats)
    if way == "icmp":
        # The server took the size the dataplane reported: 1500 less ESP in UDP over
        # IPv4 (20 + 8 + 8 + 8 + 16) and the trailer's 2, rounded down to 4.
        assert re.search(r"\bmtu 1438\b", route), route
        assert tot["icmp_too_big"] >= 1 and tot["mss_clamped"] == 0, tot
        # And traceroute's first probe towards the client comes back from the headend.
        assert hop == (INSIDE, 11, 0), hop
        assert tot["icmp_ttl_exceeded"] == 1, tot
    else:
        # The client's SYN (1460) and the server's SYN-ACK, both clamped to 1398.
        assert "mtu" not in route, route
        assert (tot["icmp_too_big"], tot["mss_clamped"]) == (0, 2), tot
