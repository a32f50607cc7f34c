#!/usr/bin/env bash
# Median of 20 interleaved `ctr run --rm` of a hello through this shim (warm cache) and of a
# static native hello through runc, in the same containerd, and their ratio.
# Usage: SOCK=/path/containerd.sock profiling/ctr-run-median.sh   (after cargo build --release --workspace --bins)
#   N=20                   runs of each
#   CGROUP_DRIVER=systemd  each container in a transient scope (`--cgroup system.slice:ctr-bench:ID`,
#                          runc with its systemd driver), as on a node with the kubelet's systemd
#                          driver; default: ctr's cgroupfs path /NS/ID
set -euo pipefail
sock=${SOCK:?set SOCK to a containerd socket that has the wasmedge runtime (see scripts/demo.sh)}
n=${N:-20}
C=(ctr -a "$sock" -n bench)
B=target/release/wasmedge-shimctl
F=target/fixtures
tests/fixtures/build.sh "$F"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
$B image build --module $F/probe.wasm --ref localhost/bench/hello:wasm --out "$tmp/w.tar" >/dev/null
$B image build --platform linux/amd64 --file $F/native-hello:/hello --entrypoint /hello \
  --ref localhost/bench/hello:native --out "$tmp/n.tar" >/dev/null
"${C[@]}" images import --all-platforms "$tmp/w.tar" >/dev/null
"${C[@]}" images import "$tmp/n.tar" >/dev/null
"${C[@]}" run --rm --runtime io.containerd.wasmedge.v1 localhost/bench/hello:wasm warm-w >/dev/null
"${C[@]}" run --rm --runtime io.containerd.runc.v2 localhost/bench/hello:native warm-r >/dev/null
# cgroup flags for container ID, for the wasmedge shim and for runc
wflags() { [ "${CGROUP_DRIVER:-}" != systemd ] || echo "--cgroup system.slice:ctr-bench:$1"; }
rflags() { [ "${CGROUP_DRIVER:-}" != systemd ] || echo "--runc-systemd-cgroup --cgroup system.slice:ctr-bench:$1"; }
w=() r=()
for i in $(seq "$n"); do
  # shellcheck disable=SC2046 # the flags are words
  t0=$(date +%s%N); "${C[@]}" run --rm --runtime io.containerd.wasmedge.v1 $(wflags "w$i") localhost/bench/hello:wasm "w$i" >/dev/null
  # shellcheck disable=SC2046
  t1=$(date +%s%N); "${C[@]}" run --rm --runtime io.containerd.runc.v2 $(rflags "r$i") localhost/bench/hello:native "r$i" >/dev/null
  t2=$(date +%s%N)
  w+=($(((t1 - t0) / 1000))) r+=($(((t2 - t1) / 1000)))
done
# Medians in awk: the node VM has no Python.
median() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; printf "%.1f", m / 1000 }'; }
mw=$(median "${w[@]}") mr=$(median "${r[@]}")
echo "ctr run --rm hello (${CGROUP_DRIVER:-cgroupfs} cgroups), median of $n interleaved: wasmedge shim $mw ms, runc $mr ms, ratio $(awk -v a="$mw" -v b="$mr" 'BEGIN { printf "%.2f", a / b }')"
