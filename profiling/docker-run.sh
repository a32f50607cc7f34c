#!/usr/bin/env bash
# Median of N interleaved `docker run --rm` of a Wasm hello through this shim (warm cache) and
# of a static native hello through runc, through one dockerd of this script's own (on a
# private containerd, the containerd image store, no iptables, no default bridge), with
# `--network none` (Docker's setkey prestart hook in each spec) and `--network host` (no hook).
# Usage: profiling/docker-run.sh   (as root, after cargo build --release --workspace --bins)
#   N=15          runs of each, per network
#   KEEP_LOG=FILE  keep containerd's log (the shim's phase lines: grep 'µs') in FILE
set -euo pipefail
cd "$(dirname "$0")/.."
n=${N:-15}
bin=$PWD/target/release
B=$bin/wasmedge-shimctl
F=target/fixtures
DOCKERD=/usr/sbin/dockerd DOCKER=/usr/bin/docker
. scripts/lib/private-containerd.sh
# A short path: dockerd puts sockets under its exec root (108-byte limit).
work=$(mktemp -d /tmp/wdb.XXXXXX)
pcd_init "$work" bench "$bin"
dpid=
cleanup() {
  set +e
  [ -z "${KEEP_LOG:-}" ] || cp "$pcd_work/containerd.log" "$KEEP_LOG"
  if [ -n "$dpid" ]; then
    "${D[@]}" ps -aq | xargs -r "${D[@]}" rm -f >/dev/null 2>&1
    kill "$dpid" 2>/dev/null && wait "$dpid" 2>/dev/null
  fi
  pcd_cleanup
}
trap cleanup EXIT
pcd_start "cache_dir = \"$work/cache\""
echo '{"features": {"containerd-snapshotter": true}}' >"$work/daemon.json"
"$DOCKERD" --data-root "$work/data" --exec-root "$work/exec" --pidfile "$work/dockerd.pid" \
  -H "unix://$work/docker.sock" --containerd "$pcd_sock" --iptables=false --ip6tables=false \
  --bridge=none --config-file "$work/daemon.json" >"$work/dockerd.log" 2>&1 &
dpid=$!
D=("$DOCKER" -H "unix://$work/docker.sock")
export DOCKER_CONFIG=$work/cli
for _ in $(seq 100); do "${D[@]}" version >/dev/null 2>&1 && break; sleep 0.2; done
tests/fixtures/build.sh "$F"
$B image build --module $F/probe.wasm --ref localhost/bench/hello:wasm --out "$work/w.tar" >/dev/null
$B image build --platform linux/amd64 --file $F/native-hello:/hello --entrypoint /hello \
  --ref localhost/bench/hello:native --out "$work/n.tar" >/dev/null
"${D[@]}" load -q -i "$work/w.tar" >/dev/null
"${D[@]}" load -q -i "$work/n.tar" >/dev/null
wasm=(run --rm --runtime io.containerd.wasmedge.v1 --platform wasip1/wasm)
native=(run --rm)
median() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; printf "%.1f", m / 1000 }'; }
for net in none host; do
  # Warm: the module's compile, the images' snapshots.
  "${D[@]}" "${wasm[@]}" --network $net localhost/bench/hello:wasm >/dev/null
  "${D[@]}" "${native[@]}" --network $net localhost/bench/hello:native >/dev/null
  w=() r=()
  for _ in $(seq "$n"); do
    t0=$(date +%s%N); "${D[@]}" "${wasm[@]}" --network $net localhost/bench/hello:wasm >/dev/null
    t1=$(date +%s%N); "${D[@]}" "${native[@]}" --network $net localhost/bench/hello:native >/dev/null
    t2=$(date +%s%N)
    w+=($(((t1 - t0) / 1000))) r+=($(((t2 - t1) / 1000)))
  done
  mw=$(median "${w[@]}") mr=$(median "${r[@]}")
  echo "docker run --rm hello, --network $net, median of $n interleaved: wasmedge shim $mw ms, runc $mr ms, ratio $(awk -v a="$mw" -v b="$mr" 'BEGIN { printf "%.2f", a / b }')"
done
