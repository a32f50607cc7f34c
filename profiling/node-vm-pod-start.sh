#!/usr/bin/env bash
# Warm CRI pod start in the node VM (scripts/node-vm.sh: systemd, cgroup v2, pods in slices):
# a Wasm pod of this runtime against a runc pod, RunPodSandbox to the container's exit,
# interleaved (tests/cri.rs, measure_warm_pod_start_against_runc). The guest is emulated:
# the ratio is the figure, not the times.
# Usage: profiling/node-vm-pod-start.sh [RUNS] [CONTAINERD]   (root)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
ctd=${2:-containerd}
cargo build --workspace --bins
bin=$(cargo test --no-run -p wasmedge-aot-shim --test cri --message-format=json 2>/dev/null |
  python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "cri":
        print(m["executable"])')
tests/fixtures/build.sh target/fixtures
./scripts/node-vm.sh run --containerd "$ctd" -e POD_RUNS="$runs" -- \
  "$bin" --exact measure_warm_pod_start_against_runc --nocapture --test-threads=1
