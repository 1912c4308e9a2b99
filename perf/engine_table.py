#!/usr/bin/env python3
"""Print the engine benchmark as two tables: per-packet medians of ring and the engine,
and the engine's own cost (engine minus ring), from criterion's estimates; then the same
with intel-ipsec-mb (raw, and the engine on it).

Usage: python3 perf/engine_table.py [target/criterion]
"""
import json
import os
import sys

BURST = 32
root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "target", "criterion")


def median_ns(group, bench):
    path = os.path.join(root, group, bench, "new", "estimates.json")
    with open(path) as f:
        return json.load(f)["median"]["point_estimate"] / BURST


rows = []
for size in (64, 512, 1420):
    g = f"aes128gcm_{size}"
    if not os.path.isdir(os.path.join(root, g)):
        g = f"aes128gcm/{size}"
    seal, enc = median_ns(g, "ring_seal"), median_ns(g, "encap")
    opn, dec = median_ns(g, "ring_open"), median_ns(g, "decap")
    dec0, enc0 = median_ns(g, "decap_engine_only"), median_ns(g, "encap_engine_only")
    enc16 = median_ns(g, "encap_pad16")
    rows.append((size, opn, dec, dec - opn, dec0, seal, enc, enc - seal, enc0, enc16))

print("| inner bytes | ring open | engine decap | decap − ring | decap, no crypto | ring seal | engine encap | encap − ring | encap, no crypto | encap, `pad_to` 16 |")
print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for size, opn, dec, do, dec0, seal, enc, eo, enc0, enc16 in rows:
    print(f"| {size} | {opn:.1f} ns | {dec:.1f} ns | {do:+.1f} ns | {dec0:.1f} ns | {seal:.1f} ns | {enc:.1f} ns | {eo:+.1f} ns | {enc0:.1f} ns | {enc16:.1f} ns |")

print()
print("| inner bytes | ipsec-mb open | engine decap on it | decap − ipsec-mb | ipsec-mb seal | engine encap on it | encap − ipsec-mb |")
print("|---:|---:|---:|---:|---:|---:|---:|")
for size in (64, 512, 1420):
    g = f"aes128gcm_{size}"
    if not os.path.isdir(os.path.join(root, g)):
        g = f"aes128gcm/{size}"
    opn, dec = median_ns(g, "ipsec_mb_open"), median_ns(g, "decap_ipsec_mb")
    seal, enc = median_ns(g, "ipsec_mb_seal"), median_ns(g, "encap_ipsec_mb")
    print(f"| {size} | {opn:.1f} ns | {dec:.1f} ns | {dec - opn:+.1f} ns | {seal:.1f} ns | {enc:.1f} ns | {enc - seal:+.1f} ns |")
