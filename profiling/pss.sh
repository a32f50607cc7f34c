#!/usr/bin/env bash
# PSS of the shim's processes with N idle Wasm containers (default 50), by process kind.
# Uses the e2e benchmark's harness: `cargo bench --bench e2e` prints the same per-container
# figure for N = 1, 10, 50; this script breaks it down per process.
set -euo pipefail
n=${1:-50}
sock=${SOCK:?set SOCK to a containerd socket that has the wasmedge runtime (see scripts/demo.sh)}
ns=${NS:-default}
rootfs=$(mktemp -d)
trap 'rm -rf "$rootfs"' EXIT
cp target/fixtures/probe.wasm "$rootfs/app.wasm"
for i in $(seq "$n"); do
  ctr -a "$sock" -n "$ns" run -d --runtime io.containerd.wasmedge.v1 --rootfs "$rootfs" "pss-$i" /app.wasm sleep 1000 >/dev/null
done
sleep 2
report() {
  local kind=$1; shift
  local total=0 dirty=0 count=0
  for p in "$@"; do
    total=$((total + $(awk '/^Pss:/{print $2}' /proc/"$p"/smaps_rollup)))
    dirty=$((dirty + $(awk '/^Private_Dirty:/{print $2}' /proc/"$p"/smaps_rollup)))
    count=$((count + 1))
  done
  printf '%-10s %4d processes  PSS %8d KiB  private dirty %8d KiB\n' "$kind" "$count" "$total" "$dirty"
  echo "$total"
}
shim=$(pgrep -f containerd-shim-wasmedge-v1 || true)
runner=$(pgrep -f -o wasmedge-shim-runner || true)
containers=$(pgrep -f wasmedge-shim-runner | grep -v "^$runner\$" || true)
a=$(report shim $shim | tee /dev/stderr | tail -1)
b=$(report runner $runner | tee /dev/stderr | tail -1)
c=$(report container $containers | tee /dev/stderr | tail -1)
echo "per container: $(((a + b + c) / n)) KiB PSS with $n idle containers"
for i in $(seq "$n"); do
  ctr -a "$sock" -n "$ns" task kill -s SIGKILL "pss-$i" >/dev/null 2>&1 || true
done
sleep 1
for i in $(seq "$n"); do
  ctr -a "$sock" -n "$ns" task rm "pss-$i" >/dev/null 2>&1 || true
  ctr -a "$sock" -n "$ns" container rm "pss-$i" >/dev/null 2>&1 || true
done
