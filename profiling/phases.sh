#!/usr/bin/env bash
# Runs N hello containers (default 20) through the shim and prints the median of each create
# phase, from the shim's debug log lines in containerd's log.
# Usage: SOCK=/path/containerd.sock LOG=/path/containerd.log profiling/phases.sh [N]
set -euo pipefail
n=${1:-20}
sock=${SOCK:?set SOCK to the containerd socket}
log=${LOG:?set LOG to containerd's log file (debug level)}
ns=${NS:-default}
rootfs=$(mktemp -d)
trap 'rm -rf "$rootfs"' EXIT
cp target/fixtures/probe.wasm "$rootfs/app.wasm"
for i in $(seq "$n"); do
  ctr -a "$sock" -n "$ns" run --rm --runtime io.containerd.wasmedge.v1 --rootfs "$rootfs" "phase-$i" /app.wasm >/dev/null
done
grep -o 'container phase-[0-9]*: [^"]*' "$log" | tail -n "$n" | python3 -c '
import re, statistics, sys
rows = [dict((k, int(v)) for k, v in re.findall(r"([a-z+]+) (\d+) µs", l)) for l in sys.stdin]
for k in rows[0]:
    print(f"{k:>12}: median {statistics.median(r[k] for r in rows):>9.0f} µs over {len(rows)} starts")
'
