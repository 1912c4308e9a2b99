#!/usr/bin/env python3
"""Print the SA table benchmark (control/cli/benches/scale.rs --json FILE) as Markdown.

Usage: python3 perf/sadb_table.py [perf/results/sadb-scale.json]
"""
import json
import os
import sys

path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "results", "sadb-scale.json")
d = json.load(open(path))
lk = {r["sas_per_direction"]: r for r in d["lookup"]}
print("| SAs per direction | inbound lookup (by SPI) | outbound lookup (longest prefix) |")
print("|---:|---:|---:|")
for n in sorted(lk):
    print(f"| {n:,} | {lk[n]['inbound_ns']:.1f} ns | {lk[n]['outbound_ns']:.1f} ns |")
big = max(lk)
ch, cv, av = d["churn"], d["commit_to_visible_us"], d["apply_to_visible_ms"]
print()
print(f"- Loading {big:,} inbound and {big:,} outbound SAs: {lk[big]['load_sas_per_s']:,.0f} SAs/s.")
print(f"- Sustained changes with {big:,} SAs per direction installed (each change replaces an")
print(f"  inbound SA with a new key, or rekeys an outbound SA to a new SPI; batches of 96):")
print(f"  **{ch['changes_per_s']:,.0f} SA changes/s** for {ch['seconds']:.0f} s, while another thread,")
print(f"  registered as a dataplane worker, looked SAs up continuously at {ch['reader_lookup_ns']:.0f} ns")
print(f"  per lookup and never missed one.")
print(f"- Commit to visibility (a reader spinning on lookups): median {cv['median']:.2f} µs,")
print(f"  p99 {cv['p99']:.2f} µs, max {cv['max']:.0f} µs.")
print(f"- `natt-control apply FILE` (a new process, parsing and validating the file, through")
print(f"  the daemon) to visibility: median {av['median']:.2f} ms, max {av['max']:.2f} ms.")
