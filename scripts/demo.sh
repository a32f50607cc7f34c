#!/usr/bin/env bash
# The demo: set the machine up, build, start a private containerd (its own config, root,
# state and socket under a temporary directory; no system configuration is touched), run a
# Wasm app through the shim twice (the first run AOT-compiles it into the node cache, the
# second starts from native code), show what the cache did, and stop everything.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup.sh demo
# Every package's binaries: the shim, its runner and the admin tool are three packages.
cargo build --release --workspace --bins
bin=$PWD/target/release
fixtures=$PWD/target/fixtures
tests/fixtures/build.sh "$fixtures"

. scripts/lib/private-containerd.sh
pcd_init "$(mktemp -d /tmp/wasmedge-demo.XXXXXX)" demo "$bin"
work=$pcd_work sock=$pcd_sock ns=$pcd_ns
cleanup() {
  ctr -a "$sock" -n "$ns" task kill -s SIGKILL demo-hello >/dev/null 2>&1 || true
  pcd_cleanup
}
trap cleanup EXIT

echo "== starting a private containerd in $work"
pcd_start "cache_dir = \"$work/cache\""

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
