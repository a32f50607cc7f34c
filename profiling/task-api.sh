#!/usr/bin/env bash
# A container's whole cycle through the shim's task API, N in a row (default 100): a client of
# its own drives the shim over ttrpc (Create, Start, Wait, Delete) as containerd would, and
# prints the median of each RPC, of the whole cycle, and of each phase the shim logged for
# those containers (create and delete), as plain text. `benches/task_api.rs` in its plain
# mode: a private containerd, the shim started as containerd starts it, ctr's spec with
# --seccomp, a cgroup, an overlay rootfs.
#
# Usage: profiling/task-api.sh [N]   (root; builds the bench, uses target/release's runner)
set -euo pipefail
cd "$(dirname "$0")/.."
TASK_API_CYCLES=${1:-100} cargo bench -p wasmedge-aot-shim --bench task_api 2>&1 |
  sed -n '/^task API/,$p'
