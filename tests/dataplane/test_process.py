"""The dataplane as a process: --help without starting DPDK, clear errors at start (no SA
table, a corrupt one, a missing port, too few TX queues or mbufs, bad options), and
SIGINT/SIGTERM while traffic flows: stop, flush, print final statistics, exit 0. A
restarted dataplane resumes above every sequence number it may have used."""

import glob
import json
import os
import shutil
import signal
import subprocess
import time

import pytest
from scapy.all import Ether, rdpcap
from scapy.layers.ipsec import ESP  # noqa: F401

from dp import Client, Control, Dataplane, binary, eal_memory, pcap_port, write_pcap

C = Client(0)


def run(args, timeout=60):
    return subprocess.run([binary("natt-dataplane"), *args], capture_output=True, text=True, timeout=timeout)


def test_help_explains_the_options_without_starting_dpdk():
    for args in (["--help"], ["-l", "0", "--", "-h"]):
        p = run(args)
        assert p.returncode == 0
        assert "EAL:" not in p.stdout + p.stderr
        for opt in ("--public", "--protected", "--punt", "--rxq", "--rxd", "--txd", "--burst", "--name", "--stats-period",
                    "--eth-peer", "--dispatch", "--crypto", "-- [options]"):
            assert opt in p.stdout, opt


def test_bad_options_are_refused_before_dpdk_starts():
    p = run(["-l", "0", "--", "--burst", "100"])
    assert p.returncode == 2 and "100 is not in 1..=64" in p.stderr and "EAL:" not in p.stderr
    p = run(["-l", "0", "--", "--public", "1"])
    assert p.returncode == 2 and "--public and --protected are both port 1" in p.stderr
    p = run(["-l", "0", "--", "--eth-peer", "1,02:00"])
    assert p.returncode == 2 and "not a MAC address" in p.stderr
    p = run(["-l", "0", "--", "--crypto", "openssl"])
    assert p.returncode == 2 and "invalid value 'openssl' for '--crypto" in p.stderr, p.stderr
    assert "[possible values: auto, ipsec-mb, ring]" in p.stderr and "EAL:" not in p.stderr


def start_error(ctl, tmp, vdevs, opts=(), eal=(), lcores="0-1"):
    dp = Dataplane(ctl, vdevs, opts=opts, eal=eal, lcores=lcores)
    p = subprocess.run(dp.cmd + ["--duration", "5"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 1, p.stdout + p.stderr
    return p.stderr


@pytest.fixture
def ports(tmp_path):
    write_pcap(tmp_path / "empty.pcap", [])
    return [pcap_port("net_pcap0", tmp_path / "empty.pcap", tmp_path / "a.pcap"),
            pcap_port("net_pcap1", tmp_path / "empty.pcap", tmp_path / "b.pcap")]


def test_no_sa_table_says_to_start_the_control_process(tmp_path, ports):
    ctl = Control(tmp_path)
    err = start_error(ctl, tmp_path, ports)
    assert f"{ctl.dir}/t.sadb" in err and "start the control process first" in err


def test_corrupt_sa_table_is_refused(tmp_path, ports):
    ctl = Control(tmp_path)
    ctl.apply([C.sa("inbound"), C.sa("outbound")])
    path = tmp_path / "shm" / "t.sadb"
    data = bytearray(path.read_bytes())
    data[0:8] = b"GARBAGE!"
    path.write_bytes(bytes(data))
    err = start_error(ctl, tmp_path, ports)
    assert "not a natt segment" in err, err


def test_missing_port_lists_the_ports_there_are(tmp_path, ports):
    ctl = Control(tmp_path)
    ctl.apply([C.sa("inbound"), C.sa("outbound")])
    err = start_error(ctl, tmp_path, ports, opts=["--punt", "5"])
    assert "--punt 5: no such port" in err and "0: net_pcap0 (net_pcap), 1: net_pcap1 (net_pcap)" in err, err


def test_too_few_tx_queues_for_the_workers(tmp_path, ports):
    ctl = Control(tmp_path)
    ctl.apply([C.sa("inbound"), C.sa("outbound")])
    err = start_error(ctl, tmp_path, ports, eal=["--lcores", "0@0,1@0,2@1"], lcores=None)
    assert "has 1 TX queue(s), and each of the 2 workers needs its own" in err and "one tx_pcap= per worker" in err, err


def test_too_few_mbufs(tmp_path, ports):
    ctl = Control(tmp_path)
    ctl.apply([C.sa("inbound"), C.sa("outbound")])
    err = start_error(ctl, tmp_path, ports, opts=["--mbufs", "512"])
    assert "--mbufs 512 is too few" in err and "use at least" in err, err


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_stops_flushes_and_prints_final_stats(tmp_path, sig):
    """Plaintext loops forever (infinite_rx) into the protected port; the encrypted copies
    go to net_null. On the signal the process exits 0 with its final statistics, and a
    restarted dataplane sends above every sequence number the first one reserved."""
    ctl = Control(tmp_path)
    ctl.apply([C.sa("inbound"), C.sa("outbound")])
    write_pcap(tmp_path / "plain.pcap", [Ether() / C.reply(k) for k in range(8)])
    write_pcap(tmp_path / "empty.pcap", [])
    vdevs = ["net_null0,no-rx=1", f"net_pcap1,rx_pcap={tmp_path / 'plain.pcap'},tx_pcap={tmp_path / 'x.pcap'},infinite_rx=1"]
    dp = Dataplane(ctl, vdevs).start()
    time.sleep(2)
    out, stats = dp.stop(sig)
    assert "natt totals" in out and "signal received, stopping" in out
    encap = stats["totals"]["encap_packets"]
    assert encap > 1000, stats["totals"]
    seq = {int(s["spi"], 16): s["seq"] for s in stats["workers"][0]["sas"]}[C.spi_out]
    assert seq == encap
    # Restart, once, with a finite capture to the public side in a file.
    dp2 = Dataplane(ctl, [pcap_port("net_pcap0", tmp_path / "empty.pcap", tmp_path / "pub.pcap"),
                          pcap_port("net_pcap1", tmp_path / "plain.pcap", tmp_path / "x2.pcap")])
    dp2.run()
    first = int.from_bytes(bytes(rdpcap(str(tmp_path / "pub.pcap"))[0]["UDP"].payload)[4:8], "big")
    assert first > seq, f"restart sent sequence number {first}, at or below {seq} used before"


def test_segments_truncated_under_it_do_not_crash_the_dataplane(tmp_path):
    """Shared memory is untrusted input, its size too: with traffic flowing, the SA table
    and the dataplane's own segment are cut to one page by someone else. The dataplane
    does not fault (the lost pages read as zeros; the SA it holds keeps working, and its
    counters stay in the process), says what happened, keeps every packet accounted for,
    and stops cleanly on SIGTERM."""
    ctl = Control(tmp_path)
    ctl.apply([C.sa("inbound"), C.sa("outbound")])
    write_pcap(tmp_path / "plain.pcap", [Ether() / C.reply(k) for k in range(8)])
    vdevs = ["net_null0,no-rx=1", f"net_pcap1,rx_pcap={tmp_path / 'plain.pcap'},tx_pcap=/dev/null,infinite_rx=1"]
    dp = Dataplane(ctl, vdevs).start()
    time.sleep(1.5)
    for ext in ("sadb", "dp"):
        os.truncate(os.path.join(ctl.dir, f"{ctl.name}.{ext}"), 4096)
    time.sleep(1.5)
    assert dp.proc.poll() is None, dp.proc.communicate()
    dp.proc.send_signal(signal.SIGTERM)
    out, err = dp.proc.communicate(timeout=60)
    assert dp.proc.returncode == 0, f"exit {dp.proc.returncode}\n{out}\n{err}"
    assert "the SA table" in err and "shrank from" in err and "natt-control init" in err, err
    assert f"our segment {ctl.dir}/{ctl.name}.dp shrank from" in err, err
    stats = json.loads(dp.stats_path.read_text())
    t = stats["totals"]
    assert t["encap_packets"] > 1000 and t["rx_protected"] == t["encap_packets"] + t["drops_total"], t


def test_with_its_output_gone_it_still_stops_on_sigterm_and_at_its_duration(tmp_path):
    """Whoever read stdout and stderr went away (a pipe's reader exited, a terminal
    closed): the statistics it prints every period fail to write. Forwarding goes on,
    SIGTERM still stops it cleanly (a panicked print in the thread that watches for
    signals left the workers running, deaf to it), and so does --duration."""
    ctl = Control(tmp_path)
    ctl.apply([C.sa("inbound"), C.sa("outbound")])
    write_pcap(tmp_path / "plain.pcap", [Ether() / C.reply(k) for k in range(8)])
    vdevs = ["net_null0,no-rx=1", f"net_pcap1,rx_pcap={tmp_path / 'plain.pcap'},tx_pcap=/dev/null,infinite_rx=1"]
    for how in ("sigterm", "duration"):
        dp = Dataplane(ctl, vdevs, opts=["--stats-period", "0.1"] + (["--duration", "3"] if how == "duration" else []))
        dp.start()
        dp.proc.stdout.close()
        dp.proc.stderr.close()
        time.sleep(1.5)
        assert dp.proc.poll() is None, "it stopped by itself"
        if how == "sigterm":
            dp.proc.send_signal(signal.SIGTERM)
        try:
            code = dp.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            dp.proc.kill()
            dp.proc.wait()
            raise AssertionError(f"{how}: still running 30 s on") from None
        assert code == 0, f"{how}: exit {code}"
        t = json.loads(dp.stats_path.read_text())["totals"]
        assert t["encap_packets"] > 1000 and t["rx_protected"] == t["encap_packets"] + t["drops_total"], t


def test_eal_memory_fallback_without_hugepages(tmp_path, monkeypatch):
    """The fallback the scripts use where hugepages cannot be had."""
    monkeypatch.setenv("NATT_NO_HUGE", "1")
    assert eal_memory() == ["--no-huge", "--no-shconf", "-m", "512"]
    ctl = Control(tmp_path)
    ctl.apply([C.sa("inbound"), C.sa("outbound")])
    write_pcap(tmp_path / "esp.pcap", [C.encrypt(C.request(1), 1)])
    write_pcap(tmp_path / "empty.pcap", [])
    dp = Dataplane(ctl, [pcap_port("net_pcap0", tmp_path / "esp.pcap", tmp_path / "pub.pcap"),
                         pcap_port("net_pcap1", tmp_path / "empty.pcap", tmp_path / "prot.pcap")])
    assert "--no-huge" in dp.cmd
    _, stats = dp.run()
    assert stats["totals"]["decap_packets"] == 1


def test_dpdk_dumpcap_captures_on_our_ports(tmp_path):
    """rte_pdump_init: DPDK's own dpdk-dumpcap attaches as a secondary process and
    captures what we send. Needs hugepages (a secondary process shares the primary's
    memory)."""
    if "--no-huge" in eal_memory():
        pytest.skip("no hugepages on this machine: dpdk-dumpcap cannot attach")
    ctl = Control(tmp_path)
    ctl.apply([C.sa("inbound"), C.sa("outbound")])
    write_pcap(tmp_path / "plain.pcap", [Ether() / C.reply(k) for k in range(8)])
    prefix = f"natt-dumpcap-{os.getpid()}"
    cmd = [binary("natt-dataplane"), "-l", "0-1", "--no-pci", "--file-prefix", prefix, "--vdev", "net_null0,no-rx=1",
           "--vdev", f"net_pcap1,rx_pcap={tmp_path / 'plain.pcap'},tx_pcap={tmp_path / 'x.pcap'},infinite_rx=1", "--",
           "--name", ctl.name, "--shm-dir", ctl.dir]
    dp = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert "natt-dataplane:" in dp.stdout.readline()
        out = tmp_path / "cap.pcapng"
        p = subprocess.run(["dpdk-dumpcap", "--file-prefix", prefix, "-i", "0", "-c", "20", "-w", str(out)],
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        got = rdpcap(str(out))
        assert len(got) >= 20
        assert all(bytes(g["UDP"].payload)[:4] == C.spi_out.to_bytes(4, "big") for g in got)
    finally:
        dp.send_signal(signal.SIGTERM)
        dp.communicate(timeout=60)
        # A primary with a file prefix leaves its hugepage files for secondaries: remove
        # them, or the next run finds fewer free hugepages.
        for f in glob.glob(f"/dev/hugepages/{prefix}*"):
            os.unlink(f)
        shutil.rmtree(f"/var/run/dpdk/{prefix}", ignore_errors=True)
    assert dp.returncode == 0
