"""The exception path with an unmodified IKE daemon on each side: strongSwan's charon on
the headend's host, behind the dataplane's TAP interface, and another on a client behind
a Linux NAT (nftables, which maps ports 500 and 4500 to others), as a remote user would be.

    client (charon, 10.0.0.2) -- NAT (10.0.0.1 | 198.51.100.1) -- public port (AF_XDP)
        natt-dataplane -- TAP (203.0.113.1, charon: the host's IKE daemon)

The client initiates; the IKE SA comes up through the NAT (IKE_SA_INIT on 500, then
NAT-T on 4500 behind the non-ESP marker), the host's daemon sees the client at the
NAT's address and port, the host then rekeys the IKE SA itself (its packets leave by the
public port to the NAT's mapping), and the client's NAT keepalives are consumed and
counted. ARP both ways goes through the dataplane too: no neighbour is set by hand.

Childless IKE SAs (RFC 6023): this kernel has no ESP, so neither charon could install a
CHILD_SA, and the dataplane is what carries ESP anyway."""

import os
import re
import signal
import subprocess
import time

import pytest

from dp import Control, Dataplane, drops
from netns import Netns, veth

HEADEND, NAT_OUT, NAT_IN, CLIENT = "203.0.113.1", "198.51.100.1", "10.0.0.1", "10.0.0.2"
NAT_PORTS = range(40000, 40100)
CHARON = "/usr/lib/ipsec/charon"
SECRET = "a test secret, not a real one"

STRONGSWAN_CONF = """charon {{
  load_modular = no
  load = random nonce aes sha1 sha2 hmac gmp kdf kernel-netlink socket-default vici
  keep_alive = 1s
  retransmit_tries = 3
  retransmit_timeout = 2.0
  install_routes = no
  install_virtual_ip = no
  filelog {{
    log {{
      path = {dir}/charon.log
      flush_line = yes
      default = 1
      net = 2
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

    def __init__(self, ns, dir, name, addrs, me, peer):
        self.dir, self.name = dir, name
        dir.mkdir()
        (dir / "strongswan.conf").write_text(STRONGSWAN_CONF.format(dir=dir))
        (dir / "swanctl.conf").write_text(CONNECTION.format(name=name, addrs=addrs, me=me, peer=peer, secret=SECRET))
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
    spaces = [Netns(f"natt-dp-{tag}"), Netns(f"natt-nat-{tag}"), Netns(f"natt-cli-{tag}")]
    dpns, nat, client = spaces
    try:
        veth(dpns, "natt-pub0", nat, "natt-pub1")
        veth(nat, "natt-cli0", client, "natt-cli1")
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
        yield dpns, nat, client
    finally:
        for ns in spaces:
            ns.delete()


def test_an_ike_sa_comes_up_through_a_nat_with_the_hosts_ike_daemon_behind_the_tap(net, tmp_path):
    dpns, nat, client = net
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
