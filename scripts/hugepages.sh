#!/usr/bin/env bash
# Reserve hugepages where this machine allows it and print the EAL memory options a
# standalone DPDK process (natt-dataplane, testpmd) should use here:
#   hugepages available:  --in-memory
#   otherwise:            --no-huge --no-shconf -m 512
# Usage: read -ra MEM <<< "$(scripts/hugepages.sh)"; natt-dataplane "${MEM[@]}" ...
# NATT_HUGEPAGES=N asks for N 2 MiB pages (default 512); NATT_NO_HUGE=1 forces the
# fallback. Idempotent; never fails (the fallback always works).
set -u
want=${NATT_HUGEPAGES:-512}
fallback="--no-huge --no-shconf -m 512"
if [ "${NATT_NO_HUGE:-0}" = 1 ]; then
    echo "$fallback"
    exit 0
fi
{
    mkdir -p /dev/hugepages
    mountpoint -q /dev/hugepages || mount -t hugetlbfs nodev /dev/hugepages
    cur=$(cat /proc/sys/vm/nr_hugepages)
    if [ "$cur" -lt "$want" ]; then
        echo "$want" > /proc/sys/vm/nr_hugepages
    fi
} >/dev/null 2>&1
free=$(awk '/^HugePages_Free/ {print $2}' /proc/meminfo 2>/dev/null)
size=$(awk '/^Hugepagesize/ {print $2}' /proc/meminfo 2>/dev/null)
# 256 MiB of free hugepages is enough for a dataplane with default settings.
if mountpoint -q /dev/hugepages 2>/dev/null && [ -n "$free" ] && [ -n "$size" ] && [ $((free * size)) -ge $((256 * 1024)) ]; then
    echo "--in-memory"
else
    echo "$fallback"
fi
