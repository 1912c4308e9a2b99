#!/usr/bin/env bash
# The engine's own cost, two builds side by side: runs the engine-only cases of two
# engine benchmark binaries in turn, ROUNDS times each, and prints the medians (ns per
# packet) and the change. Build the "before" binary in another checkout, e.g.
#
#   git worktree add /tmp/before <rev>
#   (cd /tmp/before && CARGO_TARGET_DIR=/tmp/before-target cargo bench -p natt-engine --bench engine --no-run)
#   cargo bench -p natt-engine --bench engine --no-run
#   perf/engine_compare.sh /tmp/before-target/release/deps/engine-<hash> target/release/deps/engine-<hash> 3
set -euo pipefail
before=$(realpath "$1")
after=$(realpath "$2")
rounds=${3:-3}
out=$(mktemp)
for r in $(seq "$rounds"); do
    for which in before after; do
        bin=${!which}
        # criterion prints the name, then "time: [low median high]" (on the same line
        # when the name is short).
        (cd "$(mktemp -d)" && "$bin" --bench --noplot '(decap|encap)_engine_only' 2>&1) |
            awk -v w="$which" '/^aes128gcm/ {name = $1}
                /^aes128gcm.*time:/ {print w, $1, $5, $6; name = ""; next}
                /^ +time: +\[/ {if (name != "") {print w, name, $4, $5; name = ""}}' >>"$out"
    done
done
python3 - "$out" <<'PY'
import collections, statistics, sys
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    which, name, value, unit = line.split()
    ns = float(value) * {"ns": 1, "µs": 1000, "ms": 1e6}[unit] / 32  # bursts of 32
    runs[(name, which)].append(ns)
names = sorted({n for n, _ in runs}, key=lambda n: (n.split("/")[2], int(n.split("/")[1])))
print("| case | before ns/packet | after ns/packet | change | before runs | after runs |")
print("|---|---:|---:|---:|---|---|")
for n in names:
    b, a = statistics.median(runs[(n, "before")]), statistics.median(runs[(n, "after")])
    each = lambda w: " ".join(f"{x:.1f}" for x in runs[(n, w)])
    print(f"| {n} | {b:.1f} | {a:.1f} | {100 * (a - b) / b:+.1f}% | {each('before')} | {each('after')} |")
PY
rm -f "$out"
