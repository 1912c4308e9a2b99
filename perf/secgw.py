#!/usr/bin/env python3
"""DPDK's ipsec-secgw against natt-dataplane: one core each, the same virtual ports, the
same packets, alternating in one run.

    sudo .venv/bin/python perf/secgw.py                      # 64, 512, 1420 bytes; 1 and 1,000 SAs
    options: --sizes 64,1420 --sas 1 --rounds 3 --seconds 6 --out perf/results/secgw.json
    sudo .venv/bin/python perf/secgw.py --sas 100000 --sizes 64,1420 --out perf/results/secgw-100000.json
    .venv/bin/python perf/secgw.py --table                   # the table from the last results

ipsec-secgw is DPDK's example IPsec gateway, built here from the sources Debian's
dpdk-doc package ships (installed if missing) with one change: it asks every port for
RX checksum offload, which virtual ports do not have, so the request is removed. It runs
librte_ipsec (-l), AES-128-GCM in cpu-crypto mode on intel-ipsec-mb's aesni_gcm driver
(the crypto on the polling core, as ours), anti-replay off (its default), one lcore
polling both ports. DPDK 22.11's ipsec-secgw encapsulates in UDP only with inline or
lookaside protocol offload (hardware), so the packets here are plain ESP (IP protocol
50), tunnel mode, which natt-dataplane serves too (SAs without "encap"); our NAT-T
figures are in perf/run.py's table.

natt-dataplane runs on the same single lcore (-l 1: the main lcore is the worker), SAs
with anti-replay off and the same 4-byte padding as ipsec-secgw (the same bytes on the
wire), once with --crypto ipsec-mb and once with --crypto ring. Each run lasts --seconds;
the medians of per-second rates after the first two seconds are compared.
"""

import argparse
import datetime
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402  (the perf lab's helpers: captures, SA addresses, ports)

ROOT = run.ROOT
SRC = "/usr/share/dpdk/examples/ipsec-secgw"
# The one change: no RX checksum offload request (virtual ports have none).
PATCH = (".offloads = RTE_ETH_RX_OFFLOAD_CHECKSUM,", ".offloads = 0,")


def build_secgw(work):
    if not os.path.isdir(SRC):
        print("installing dpdk-doc (the ipsec-secgw sources)", flush=True)
        run.sh(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "dpdk-doc"],
               env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    dst = os.path.join(work, "ipsec-secgw")
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(SRC, dst)
    path = os.path.join(dst, "ipsec-secgw.c")
    with open(path) as f:
        text = f.read()
    if text.count(PATCH[0]) != 1:
        sys.exit(f"{path}: expected one '{PATCH[0]}' to change; this DPDK's ipsec-secgw differs")
    with open(path, "w") as f:
        f.write(text.replace(*PATCH))
    run.sh(["make", "-C", dst, "-j2"])
    return os.path.join(dst, "build", "ipsec-secgw")


def colon(hexkey):
    return ":".join(hexkey[i:i + 2] for i in range(0, len(hexkey), 2))


def sa_sets(n):
    """Our SAs (plain ESP, anti-replay off, 4-byte padding), the mirror that makes the
    clients' ESP, and ipsec-secgw's configuration for the same SAs."""
    ours, mirror, cfg = [], [], []
    for i in range(n):
        inner, outer, server = run.client(i)
        spi_in, spi_out = 0x100000 + i, 0x400000 + i
        k_in, k_out = run.key(spi_in), run.key(spi_out)
        base = {"mode": "tunnel", "algorithm": "aes128-gcm", "local": run.HEADEND, "peer": outer,
                "selectors": {"local": ["172.16.0.0/12"], "peer": [f"{inner}/32"]}}
        ours.append(dict(base, name=f"in{i}", spi=spi_in, direction="inbound", key=k_in[:32], salt=k_in[32:],
                         replay_window=0))
        ours.append(dict(base, name=f"out{i}", spi=spi_out, direction="outbound", key=k_out[:32], salt=k_out[32:]))
        mirror.append({"name": f"m{i}", "spi": spi_in, "direction": "outbound", "mode": "tunnel",
                       "algorithm": "aes128-gcm", "key": k_in[:32], "salt": k_in[32:], "local": outer,
                       "peer": run.HEADEND, "selectors": {"local": [f"{inner}/32"], "peer": [f"{server}/32"]}})
        cfg += [
            f"sa in {spi_in} aead_algo aes-128-gcm aead_key {colon(k_in)} mode ipv4-tunnel "
            f"src {outer} dst {run.HEADEND} type cpu-crypto",
            f"sa out {spi_out} aead_algo aes-128-gcm aead_key {colon(k_out)} mode ipv4-tunnel "
            f"src {run.HEADEND} dst {outer} type cpu-crypto",
            f"sp ipv4 in esp protect {spi_in} pri 1 src {inner}/32 dst {server}/32 sport 0:65535 dport 0:65535",
            f"sp ipv4 out esp protect {spi_out} pri 1 dst {inner}/32 sport 0:65535 dport 0:65535",
        ]
    cfg += ["rt ipv4 dst 172.16.0.0/12 port 1", "rt ipv4 dst 198.18.0.0/15 port 0"]
    return ours, mirror, "\n".join(cfg) + "\n"


SENT = re.compile(r"Total packets sent:\s+(\d+)")


def secgw_rate(lab, binary, cfg, vdevs, mbufs, seconds, startup=900):
    """ipsec-secgw's median per-second rate over `seconds` seconds of statistics after the
    first two. Timed from its first statistics line, not from its start: with 100,000 SAs
    it parses 400,000 configuration lines and builds an ACL of 200,000 rules first
    (`startup` seconds at most)."""
    cmd = [binary, "-l", "1", "--no-pci", *lab.mem]
    if "--in-memory" not in lab.mem:
        cmd += ["--file-prefix", "natt-perf-secgw"]
    for v in vdevs + ["crypto_aesni_gcm0"]:
        cmd += ["--vdev", v]
    cmd += ["--", "-p", "0x3", "-P", "-u", "0x1", "-l", "-t", "1", "-s", str(mbufs), "-f", cfg,
            "--config", "(0,0,1),(1,0,1)", "--rxoffload", "0", "--txoffload", "0"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=run.die_with_us)
    killer = threading.Timer(startup + seconds, p.kill)
    killer.start()
    out, totals = [], []
    try:
        for line in p.stdout:
            out.append(line)
            m = SENT.search(line)
            if m:
                totals.append(int(m.group(1)))
                if len(totals) > seconds + 2:
                    break
    finally:
        killer.cancel()
        p.terminate()
        try:
            p.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate()
    rates = [b - a for a, b in zip(totals, totals[1:])][2:]
    if not rates:
        sys.exit(f"ipsec-secgw reported no rates:\n{' '.join(cmd)}\n{''.join(out)[-3000:]}")
    return statistics.median(rates) / 1e6


def ours_rate(lab, name, vdevs, mbufs, seconds, which, crypto):
    cmd, st = lab.dataplane("1", vdevs, name, mbufs, seconds, ["--stats-detail", "off", "--crypto", crypto])
    got = run.parse_rates(lab.run_dut(cmd, st), which)
    if not got:
        sys.exit(f"natt-dataplane reported no rates: {' '.join(cmd)}")
    return got[0]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="64,512,1420")
    ap.add_argument("--sas", default="1,1000")
    ap.add_argument("--seconds", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--work", default="/tmp/natt-perf-secgw")
    ap.add_argument("--out", default=os.path.join(ROOT, "perf", "results", "secgw.json"))
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root (DPDK needs hugepages; dpdk-doc may need installing)")
    run.sh(["cargo", "build", "--release", "-q", "-p", "natt-dataplane", "-p", "natt-control", "-p", "natt-pcap"],
           cwd=ROOT)
    lab = run.Lab(args)
    binary = build_secgw(lab.work)
    results = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "host": os.uname().nodename, "cpu": run.cpu_model(), "seconds": args.seconds, "rounds": args.rounds,
               "algorithm": "aes128-gcm", "esp": "plain ESP, tunnel mode, anti-replay off", "rows": []}
    variants = ["ipsec-secgw", "natt ipsec-mb", "natt ring"]
    for n in map(int, args.sas.split(",")):
        ours, mirror, cfg = sa_sets(n)
        name = f"secgw{n}"
        lab.control(name, ours, run.capacity(n))
        run.write_mirror(lab.work, n, mirror)
        cfg_path = os.path.join(lab.work, f"secgw-{n}.cfg")
        with open(cfg_path, "w") as f:
            f.write(cfg)
        for size in map(int, args.sizes.split(",")):
            plain_out, _, esp, k = run.captures(lab.work, n, size)
            mbufs = k + 32768
            for which in ("decap", "encap"):
                vdevs = run.looped_ports(which, plain_out, esp)
                runs = {v: [] for v in variants}
                for r in range(args.rounds):
                    order = variants if r % 2 == 0 else variants[::-1]
                    for v in order:
                        if v == "ipsec-secgw":
                            runs[v].append(secgw_rate(lab, binary, cfg_path, vdevs, mbufs, args.seconds))
                        else:
                            runs[v].append(ours_rate(lab, name, vdevs, mbufs, args.seconds, which, v.split()[1]))
                row = {"inner_size": size, "sas": n, "direction": which, "runs": runs,
                       "mpps": {v: statistics.median(x) for v, x in runs.items()}}
                print(json.dumps({k: v for k, v in row.items() if k != "runs"}), flush=True)
                results["rows"].append(row)
                run.save(args.out, results)
    shutil.rmtree(lab.shm, ignore_errors=True)
    print(table(results))


def table(r):
    lines = ["| inner bytes | SAs | direction | ipsec-secgw Mpps | natt, intel-ipsec-mb | natt, ring "
             "| natt (ipsec-mb) / ipsec-secgw |",
             "|---:|---:|---|---:|---:|---:|---:|"]
    for row in r["rows"]:
        m = row["mpps"]
        lines.append(f"| {row['inner_size']} | {row['sas']:,} | {row['direction']} | {m['ipsec-secgw']:.2f} "
                     f"| {m['natt ipsec-mb']:.2f} | {m['natt ring']:.2f} "
                     f"| {m['natt ipsec-mb'] / m['ipsec-secgw']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--table":
        with open(sys.argv[2] if len(sys.argv) > 2 else os.path.join(ROOT, "perf", "results", "secgw.json")) as f:
            print(table(json.load(f)))
    else:
        main()
