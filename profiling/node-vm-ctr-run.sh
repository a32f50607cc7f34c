#!/usr/bin/env bash
# profiling/ctr-run-median.sh in the node VM (scripts/node-vm.sh: systemd, cgroup v2): a warm
# `ctr run --rm` hello through this shim and a native hello through runc, with ctr's cgroupfs
# paths and then with systemd scopes, in a private containerd 1.7 of the guest. The guest is
# emulated: its times are good for the ratios only.
# Usage: profiling/node-vm-ctr-run.sh [N]   (root; after cargo build --release --workspace --bins)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-10}
tests/fixtures/build.sh target/fixtures
./scripts/node-vm.sh run -e N="$n" -- bash -c '
set -euo pipefail
. scripts/lib/private-containerd.sh
pcd_init "$(mktemp -d /var/tmp/ctr-bench.XXXXXX)" bench "$PWD/target/release"
trap pcd_cleanup EXIT
pcd_start "cache_dir = \"$pcd_work/cache\""
SOCK=$pcd_sock profiling/ctr-run-median.sh
CGROUP_DRIVER=systemd SOCK=$pcd_sock profiling/ctr-run-median.sh'
