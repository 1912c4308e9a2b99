#!/usr/bin/env bash
# The main job: the headend on virtual ports, no NIC needed.
#
#  1. natt-control starts as a daemon with the sample SA set (samples/headend.json: four
#     remote clients) and writes the shared SA table.
#  2. natt-dataplane replays samples/natt.pcap into its public port (ESP in UDP made by
#     scapy, IKE, a keepalive, a fragmented packet, a NAT rebinding, hostile packets) and
#     samples/plain.pcap into its protected port (replies), through net_pcap. What it
#     sends goes to out/demo/{public,protected,kernel}.pcap; its statistics are printed.
#  3. It runs again for NATT_DEMO_SECONDS (default 5) on a looped capture of replies
#     (net_pcap infinite_rx into the protected port, the public port to net_null),
#     printing statistics every second, then stops as on Ctrl-C.
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
"${C[@]}" run --config samples/headend.json --quiet &
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
    -- "${APP[@]}" --punt 2 --idle-exit 500 --duration 30 --stats-json "$OUT/stats.json"

step "natt-dataplane: ${NATT_DEMO_SECONDS:-5} s of looped replies, statistics every second"
"$DP" "${EAL[@]}" \
    --vdev "net_null0,no-rx=1" \
    --vdev "net_pcap1,rx_pcap=samples/load.pcap,tx_pcap=/dev/null,infinite_rx=1" \
    -- "${APP[@]}" --stats-period 1 --duration "${NATT_DEMO_SECONDS:-5}"

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
echo "captures and stats.json are in $OUT"
