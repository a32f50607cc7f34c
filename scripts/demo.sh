#!/usr/bin/env bash
# The demo: set the machine up, build, start a private containerd (its own config, root,
# state and socket under a temporary directory; no system configuration is touched), run a
# Wasm app through the shim twice (the first run AOT-compiles it into the node cache, the
# second starts from native code), show what the cache did, and stop everything.
set -euo pipefail
cd "$(dirname "$0")/.."

SKIP_CARGO_TOOLS=1 ./scripts/setup.sh
# Every package's binaries: the shim, its runner and the admin tool are three packages.
cargo build --release --workspace --bins
bin=$PWD/target/release
fixtures=$PWD/target/fixtures
tests/fixtures/build.sh "$fixtures"

work=$(mktemp -d /tmp/wasmedge-demo.XXXXXX)
sock=$work/containerd.sock
ns=demo
cleanup() {
  set +e
  ctr -a "$sock" -n "$ns" task kill -s SIGKILL demo-hello >/dev/null 2>&1
  [ -n "${ctd_pid:-}" ] && kill "$ctd_pid" 2>/dev/null && wait "$ctd_pid" 2>/dev/null
  pkill -f "containerd-shim-wasmedge-v1 -namespace $ns .*-address $sock" 2>/dev/null
  grep -o " $work[^ ]*" /proc/self/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

cat >"$work/config.toml" <<TOML
version = 2
root = "$work/root"
state = "$work/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$sock"
[ttrpc]
  address = "$sock.ttrpc"
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.wasmedge]
  runtime_type = "io.containerd.wasmedge.v1"
[debug]
  level = "debug"
TOML
echo "cache_dir = \"$work/cache\"" >"$work/shim.toml"

echo "== starting a private containerd in $work"
PATH="$bin:$PATH" WASMEDGE_AOT_SHIM_CONFIG="$work/shim.toml" \
  containerd --config "$work/config.toml" >"$work/containerd.log" 2>&1 &
ctd_pid=$!
for _ in $(seq 100); do ctr -a "$sock" version >/dev/null 2>&1 && break; sleep 0.1; done

echo "== packaging probe.wasm as an OCI image and importing it"
"$bin/wasmedge-shimctl" image build --module "$fixtures/probe.wasm" \
  --ref localhost/demo/hello:latest --out "$work/hello.tar" >/dev/null
ctr -a "$sock" -n "$ns" images import --all-platforms "$work/hello.tar" >/dev/null

run() {
  local t0 t1
  t0=$(date +%s%N)
  ctr -a "$sock" -n "$ns" run --rm --runtime io.containerd.wasmedge.v1 \
    --fifo-dir "$work/fifo" localhost/demo/hello:latest demo-hello "$@"
  t1=$(date +%s%N)
  echo "   ($(((t1 - t0) / 1000000)) ms)"
}
echo "== first run (compiles the module into the node cache)"
run
echo "== second run (native code from the cache)"
run /app.wasm args "through the shim"
echo "== what the shim did"
grep -o 'container demo-hello: [^"]*' "$work/containerd.log" | sed 's/^/   /' || true
"$bin/wasmedge-shimctl" stats --cache-dir "$work/cache"
