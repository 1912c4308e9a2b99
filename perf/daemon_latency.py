"""Request latency of the natt-control daemon over its Unix socket: what an IKE daemon's
helper waits for each change. One connection, one request at a time (newline-delimited
JSON), medians and 99th percentiles of --count requests of each kind: `show` (look one SA
up), a request the daemon refuses (the round trip alone), and `rekey` (make before
break: a new inbound SA beside the old, the outbound SA switched, the old inbound SA
drained), on a table of --sas clients.

    sudo .venv/bin/python perf/daemon_latency.py            # 1,000 clients, 2,000 of each
    sudo .venv/bin/python perf/daemon_latency.py --sas 100000
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as R  # noqa: E402


def timed(f, count):
    lat = []
    for _ in range(count):
        t = time.perf_counter()
        f()
        lat.append((time.perf_counter() - t) * 1e3)
    lat.sort()
    return {"median_ms": round(lat[len(lat) // 2], 3), "p99_ms": round(lat[int(len(lat) * 0.99)], 3)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sas", type=int, default=1000, help="clients in the table (and as many rekeyed in turn)")
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--work", default="/tmp/natt-daemon-latency")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root (the table goes on hugetlbfs where there are hugepages)")
    R.sh(["cargo", "build", "--release", "-q", "-p", "natt-control"], cwd=R.ROOT)
    lab = R.Lab(argparse.Namespace(work=args.work, seconds=0))
    rk = R.Rekeyer(lab, "t", args.sas, min(args.sas, 0x10000), 2.0)
    dut_off, _, _ = R.configs(args.sas)
    lab.control("t", dut_off + rk.table(), R.capacity(2 * args.sas))
    rk.start_daemon()

    def rekey():
        err = rk.rekey()
        if err:
            sys.exit(f"rekey refused: {err}")

    try:
        out = {"sas": args.sas, "count": args.count,
               "show": timed(lambda: rk.ask({"op": "show", "spi": 0x100000, "direction": "in"}), args.count),
               "refused": timed(lambda: rk.ask({"op": "no-such-request"}), args.count),
               "rekey": timed(rekey, args.count)}
    finally:
        rk.stop()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
