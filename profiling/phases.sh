#!/usr/bin/env bash
# Runs N hello containers (default 20) through the shim, warm, and prints the median of each
# create phase (the isolation steps included) from the shim's debug lines in containerd's log.
# Each container gets what a restricted Kubernetes pod gets: a user (1000:1000), containerd's
# default seccomp profile, and ctr's namespaces (pid, ipc, uts, mount, network).
#
# Usage: profiling/phases.sh [N]
#   alone: starts a private containerd (scripts/lib/private-containerd.sh) with the shim of
#   target/release (BIN=DIR for another), and removes it afterwards;
#   SOCK=/path/containerd.sock LOG=/path/containerd.log: uses that containerd (debug level).
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-20}
ns=${NS:-default}
rootfs=$(mktemp -d)
cp target/fixtures/probe.wasm "$rootfs/app.wasm"
if [ -z "${SOCK:-}" ]; then
  . scripts/lib/private-containerd.sh
  work=$(mktemp -d /tmp/phases.XXXXXX)
  pcd_init "$work" "$ns" "$(realpath "${BIN:-target/release}")"
  trap 'pcd_cleanup; rm -rf "$rootfs"' EXIT
  pcd_start "cache_dir = \"$work/cache\""
  sock=$pcd_sock log=$work/containerd.log
else
  sock=$SOCK log=${LOG:?set LOG to containerd\'s log file (debug level)}
  trap 'rm -rf "$rootfs"' EXIT
fi
run() {
  ctr -a "$sock" -n "$ns" run --rm --runtime io.containerd.wasmedge.v1 --user 1000:1000 \
    --seccomp --rootfs "$rootfs" "$1" /app.wasm >/dev/null
}
run "phase-warm-$$" # compiles the module and starts the node shim and its runner
for i in $(seq "$n"); do run "phase-$$-$i"; done
grep -o "container phase-$$-[0-9]*: cgroup [^\"]*" "$log" | tail -n "$n" | tee "${PHASES_LINES:-/dev/null}" | python3 -c '
import re, statistics, sys
rows = [dict((k, int(v)) for k, v in re.findall(r"([a-z][a-z ]*?) (\d+) µs", l.split(": ", 1)[1]))
        for l in sys.stdin]
for k in rows[0]:
    print(f"{k:>15}: median {statistics.median(r[k] for r in rows):>7.0f} µs over {len(rows)} starts")
'
