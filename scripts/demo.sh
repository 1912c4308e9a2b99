#!/usr/bin/env bash
# The main job: the headend on virtual ports, no NIC needed.
#
#  1. natt-control starts as a daemon with the sample SA set (samples/headend.json: four
#     remote clients), writes the shared SA table and serves statistics over HTTP on
#     NATT_DEMO_HTTP (default 127.0.0.1:9180; GET /stats, /stats/sa/<spi>, /metrics).
#  2. natt-dataplane replays samples/natt.pcap into its public port (ESP in UDP made by
#     scapy, IKE, a keepalive, a fragmented packet, a NAT rebinding, hostile packets) and
#     samples/plain.pcap into its protected port (replies), through net_pcap. What it
#     sends goes to out/demo/{public,protected,kernel}.pcap; `natt-control stats` prints
#     what it counted, per port and per drop reason.
#  3. It runs again for NATT_DEMO_SECONDS (default 5) on a looped capture of replies
#     (net_pcap infinite_rx into the protected port, the public port to net_null), while
#     `natt-control stats --watch` shows rates as testpmd does, one SA's counters are
#     asked of the worker that owns it, GET /metrics is scraped, and alice is rekeyed
#     make-before-break while her replies flow (new SPIs and keys through the daemon's
#     socket; her new outbound SA carries them from then on, no restart); then it stops
#     as on Ctrl-C.
#  4. The events the dataplane reported (the NAT rebinding) are shown, and tshark
#     summarises what left.
#
# Hugepages are set up where the machine allows it, else DPDK runs with --no-huge.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
export PATH="$HOME/.cargo/bin:$PATH"

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

step "setup (idempotent)"
scripts/setup.sh >/tmp/natt-setup.log 2>&1 || { cat /tmp/natt-setup.log; exit 1; }
cargo build --release -q -p natt-control -p natt-dataplane
CTL="$ROOT/target/release/natt-control"
DP="$ROOT/target/release/natt-dataplane"
read -ra MEM <<< "$(scripts/hugepages.sh)"
if [ "$(nproc)" -ge 2 ]; then LCORES="0-1"; else LCORES="0"; fi
echo "EAL memory: ${MEM[*]}; lcores $LCORES"

OUT="$ROOT/out/demo"
rm -rf "$OUT"
mkdir -p "$OUT/shm" "$OUT/state"
C=("$CTL" --name demo --shm-dir "$OUT/shm" --state-dir "$OUT/state")

step "natt-control run --config samples/headend.json"
HTTP="${NATT_DEMO_HTTP:-127.0.0.1:9180}"
"${C[@]}" run --config samples/headend.json --quiet --http "$HTTP" &
CTL_PID=$!
trap 'kill $CTL_PID 2>/dev/null || true' EXIT
for _ in $(seq 100); do [ -S "$OUT/state/demo.sock" ] && break; sleep 0.05; done
"${C[@]}" list

EAL=(-l "$LCORES" --no-pci "${MEM[@]}")
APP=(--name demo --shm-dir "$OUT/shm" --eth-peer "0,02:00:00:00:00:fe" --eth-peer "1,02:00:00:00:00:fd")

step "natt-dataplane: replay the sample captures through net_pcap"
"$DP" "${EAL[@]}" \
    --vdev "net_pcap0,rx_pcap=samples/natt.pcap,tx_pcap=$OUT/public.pcap" \
    --vdev "net_pcap1,rx_pcap=samples/plain.pcap,tx_pcap=$OUT/protected.pcap" \
    --vdev "net_pcap2,rx_pcap=samples/empty.pcap,tx_pcap=$OUT/kernel.pcap" \
    -- "${APP[@]}" --punt 2 --idle-exit 500 --duration 30 --stats-json "$OUT/stats.json" >"$OUT/dataplane.log"

step "natt-control stats (what the dataplane counted)"
"${C[@]}" stats

SECS="${NATT_DEMO_SECONDS:-5}"
step "natt-dataplane: $SECS s of looped replies; natt-control stats --watch"
"$DP" "${EAL[@]}" \
    --vdev "net_null0,no-rx=1" \
    --vdev "net_pcap1,rx_pcap=samples/load.pcap,tx_pcap=/dev/null,infinite_rx=1" \
    -- "${APP[@]}" --duration "$(( SECS + 2 ))" >"$OUT/dataplane-load.log" &
DP_PID=$!
sleep 1
"${C[@]}" stats --watch --interval 1 &
WATCH_PID=$!
sleep "$(( SECS > 3 ? SECS - 2 : 1 ))"
kill -INT $WATCH_PID 2>/dev/null || true
wait $WATCH_PID || true

step "natt-control stats --sa 0x2001 (asked of the worker that owns it; also GET /stats/sa/0x2001)"
"${C[@]}" stats --sa 0x2001 --direction out

step "GET http://$HTTP/metrics (excerpt)"
python3 - "$HTTP" <<'PY'
import sys, urllib.request
text = urllib.request.urlopen(f"http://{sys.argv[1]}/metrics", timeout=10).read().decode()
for line in text.splitlines():
    if line.startswith(("natt_up", "natt_encap_packets_total", "natt_latency_seconds{", 'natt_drops_total{worker="0",reason="no_outbound_sa"}')):
        print(line)
PY

step "natt-control rekey --in 0x00001001 --out 0x00002001 (alice, while her replies flow)"
python3 - "$OUT/alice-rekey.json" <<'PY'
import json, os, sys
sas = {s["name"]: s for s in json.load(open("samples/headend.json"))["sas"]}
new_in = dict(sas["alice-in"], name="alice-in-2", spi="0x00001101", paired_spi="0x00002101",
              key=os.urandom(16).hex(), salt=os.urandom(4).hex())
new_out = dict(sas["alice-out"], name="alice-out-2", spi="0x00002101", key=os.urandom(16).hex(),
               salt=os.urandom(4).hex())
json.dump({"version": 1, "sas": [new_in, new_out]}, open(sys.argv[1], "w"), indent=1)
PY
"${C[@]}" rekey --in 0x00001001 --out 0x00002001 "$OUT/alice-rekey.json" --grace 10
sleep 1
step "natt-control stats --sa 0x2101 (alice's new outbound SA, a second after the rekey)"
"${C[@]}" stats --sa 0x2101 --direction out
wait $DP_PID

step "natt-control events"
sleep 0.2
"${C[@]}" events

if command -v tshark >/dev/null; then
    step "what left the protected port (decrypted)"
    tshark -n -r "$OUT/protected.pcap" 2>/dev/null
    step "what left the public port (encrypted)"
    tshark -n -r "$OUT/public.pcap" 2>/dev/null
    step "what went to the kernel interface (IKE, transport mode)"
    tshark -n -r "$OUT/kernel.pcap" 2>/dev/null
fi
echo
echo "captures, logs and stats.json are in $OUT"
