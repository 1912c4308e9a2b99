#!/usr/bin/env bash
# Run every test of the project, from nothing: installs what is missing (scripts/setup.sh),
# then unit, property, known-answer and hostile-input tests (cargo), the interop suites
# against scapy and tshark (pytest), the DPDK dataplane on virtual ports (pytest), a
# bounded fuzzing run, and checks that benchmarks build and the engine benchmark runs. Exits non-zero on the first failure.
#
#   NATT_FUZZ_SECONDS=N   fuzzing time (default 120)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
export PATH="$HOME/.cargo/bin:$PATH"

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

step "setup"
scripts/setup.sh

step "cargo fmt and clippy"
if cargo fmt --version >/dev/null 2>&1; then cargo fmt --all -- --check; fi
if cargo clippy --version >/dev/null 2>&1; then cargo clippy --workspace --all-targets -q -- -D warnings; fi

step "cargo test (unit, known-answer, property, hostile input)"
cargo test --workspace -q

step "benchmarks build, and the engine benchmark runs each case once"
cargo bench --workspace --no-run -q
cargo bench -q -p natt-engine --bench engine -- --test
cargo bench -q -p natt-engine --bench overhead -- --test

step "interop: scapy and tshark"
cargo build --release -q -p natt-pcap
NATT_PCAP="$ROOT/target/release/natt-pcap" "$ROOT/.venv/bin/python" -m pytest -q tests/interop

step "dataplane: DPDK on virtual ports (net_pcap, net_af_packet, net_af_xdp, net_tap)"
cargo build --release -q -p natt-dataplane -p natt-control
scripts/hugepages.sh >/dev/null
NATT_BIN_DIR="$ROOT/target/release" "$ROOT/.venv/bin/python" -m pytest -q tests/dataplane

step "fuzz: inbound path for ${NATT_FUZZ_SECONDS:-120}s"
(
    cd dataplane/engine
    mkdir -p fuzz/corpus/inbound
    "$ROOT/.venv/bin/python" fuzz/make_seeds.py fuzz/seeds/inbound
    log=$(mktemp)
    status=0
    RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer address inbound fuzz/corpus/inbound fuzz/seeds/inbound -- \
        -max_total_time="${NATT_FUZZ_SECONDS:-120}" -max_len=4096 -print_final_stats=1 >"$log" 2>&1 || status=$?
    # Which backend the second engine ran on, then how the run ended (the whole log on failure).
    grep -m1 '^differential:' "$log" || true
    if [ "$status" -ne 0 ]; then cat "$log"; rm -f "$log"; exit "$status"; fi
    tail -n 3 "$log"
    rm -f "$log"
)

step "all tests passed"
