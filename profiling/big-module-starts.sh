#!/usr/bin/env bash
# A 20+ MB real program through the shim, as a node sees it: Yosys (25 MB of code) synthesising
# profiling/levels/design.v, run with `ctr run --rm` against a private containerd with an empty
# cache. Prints the wall time of:
#   1. the first start (tiered: the interpreter runs it while the quick tier compiles),
#   2. the second start (the quick tier's code, while the full tier compiles),
#   3. the start after the full tier is in the cache,
#   4. the first start with compile_policy = "sync" on another empty cache (waits for the quick tier),
#   5. the WasmEdge CLI on `wasmedge compile` output (O2) and in the interpreter, for reference,
# and which tier each start ran (from the shim's phase log). It takes about an hour on 2 cores
# (the interpreter run ~8 minutes, the full tier's compile ~25).
# Needs: cargo build --release --workspace --bins; profiling/real-programs.sh DIR (yosys).
# Usage: profiling/big-module-starts.sh [DIR]   (DIR defaults to target/real-programs)
set -euo pipefail
cd "$(dirname "$0")/.."
programs=$(realpath "${1:-target/real-programs}")
bin=$PWD/target/release
for f in "$programs/yosys.wasm" "$programs/design.v" "$bin/containerd-shim-wasmedge-v1"; do
  [ -e "$f" ] || { echo "missing $f (see the usage above)" >&2; exit 1; }
done

. scripts/lib/private-containerd.sh
pcd_init "$(mktemp -d /tmp/wasmedge-bigstart.XXXXXX)" bigstart "$bin"
work=$pcd_work
trap pcd_cleanup EXIT

# The container's root: the module, its workload and a scratch /tmp; the share directory is
# a read-only bind mount, as a pod's volume would be.
rootfs=$work/rootfs
mkdir -p "$rootfs/tmp" "$rootfs/share"
cp "$programs/yosys.wasm" "$rootfs/app.wasm"
cp "$programs/design.v" "$rootfs/design.v"
n=0
run() { # $1: the container id; prints "<seconds> <tier>"
  local id=$1 t0 t1 tier
  t0=$(date +%s%N)
  pcd_ctr run --rm --runtime io.containerd.wasmedge.v1 --cwd / \
    --mount "type=bind,src=$programs/yosys-share,dst=/share,options=rbind:ro" \
    --rootfs "$rootfs" "$id" /app.wasm -q -p 'synth_ice40 -top top -json /tmp/design.json' design.v \
    >"$work/$id.out" 2>&1 || { echo "start $id failed:" >&2; cat "$work/$id.out" >&2; exit 1; }
  t1=$(date +%s%N)
  tier=$(grep -o "container $id: [^\"]*" "$work/containerd.log" | grep -o 'tier [^"]*$' | head -1)
  printf '%.2f %s\n' "$(echo "($t1 - $t0) / 1000000000" | bc -l)" "${tier:-?}"
}
show() { # $1: the label; runs one start and prints the label and its result
  local r
  n=$((n + 1))
  r=$(run "big-$n") || exit 1
  printf '%-28s %s\n' "$1" "$r"
}
wait_for_tier() { # $1: level; waits until the cache lists it
  while ! "$bin/wasmedge-shimctl" ls --cache-dir "$2" 2>/dev/null | grep -q "O$1"; do sleep 10; done
}

echo "== tiered (the default for a module over 1 MiB), empty cache"
pcd_start "cache_dir = \"$work/cache\""
show "first start:"
wait_for_tier 0 "$work/cache"
show "second start (quick tier):"
t0=$(date +%s)
wait_for_tier 2 "$work/cache"
echo "   (waited $(($(date +%s) - t0)) s more for the full tier)"
show "start after the full tier:"
show "again:"
"$bin/wasmedge-shimctl" ls --cache-dir "$work/cache"

echo "== sync, empty cache"
pcd_start "cache_dir = \"$work/cache-sync\"
compile_policy = \"sync\""
show "first start (sync):"

echo "== the WasmEdge CLI, same workload"
cli() {
  local t0 t1
  t0=$(date +%s%N)
  (cd "$rootfs" && wasmedge --dir /share:"$programs/yosys-share" --dir /tmp:"$rootfs/tmp" --dir .:. "$@" \
    -q -p 'synth_ice40 -top top -json /tmp/design.json' design.v >/dev/null)
  t1=$(date +%s%N)
  printf '%.2f\n' "$(echo "($t1 - $t0) / 1000000000" | bc -l)"
}
[ -e "$programs/yosys.O2.so" ] && echo "wasmedge yosys.O2.so:        $(cli "$programs/yosys.O2.so")"
echo "wasmedge (interpreter):      $(cli --force-interpreter "$rootfs/app.wasm")"
