#!/usr/bin/env bash
# node-tests.sh: the tests that need the nodes users run (systemd as PID 1, cgroup v2 alone,
# the systemd cgroup driver), run in the node VM (scripts/node-vm.sh) against each containerd
# of the matrix: 1.7 (the guest's package) and 2.1.9. Run by scripts/test.sh; root.
#
# Which tests: every test of tests/cgroups.rs (cgroupfs and systemd paths, limits, stats,
# OOM, scopes gone after delete) and of tests/devices.rs (the device filter as a v2 program,
# born in a cgroupfs cgroup or put on a scope), CRI pods whose containers get scopes and are resized in
# place, and the lifecycle tests that prove a Wasm container starts, fails, is OOM-killed and
# leaves nothing on cgroup v2, and containerd 2 reading the runtime's info; OCI hooks (the
# container process's pause between its mounts and its pivot), a pod's container's namespace
# joins, the compile worker's confinement (mount_setattr, namespaces, seccomp) and each
# container's seccomp program against runc's on the guest's kernel. In the guest WASMEDGE_SHIM_NODE_TESTS=1 turns every "needs
# systemd" skip into a failure.
#
# Usage: node-tests.sh [CONTAINERD...]   guest paths of the containerds to test against
#        (default: containerd, /opt/containerd-2.1.9/usr/bin/containerd)
set -euo pipefail
cd "$(dirname "$0")/.."

# test binary name, then the tests of it to run (all of them when none is named)
SUITE=(
  "cgroups"
  "cri a_pod_s_containers_get_their_cgroups a_wasm_pod_runs_through_cri a_pod_of_only_linux_containers a_runtimes_systemd_cgroup_must_agree"
  "lifecycle hello_prints exit_codes a_module_that_traps delete_leaves containerd_2_reads"
  "devices"
  "isolation a_shared_root_propagation seccomp"
  "hooks hooks_run a_failing"
  "tenants a_pods_container"
  "compiles llvm_runs_unprivileged"
)
containerds=("$@")
[ "${#containerds[@]}" != 0 ] || containerds=(containerd /opt/containerd-2.1.9/usr/bin/containerd)

# The binaries, built here (the guest has no toolchain) and run from the shared repository.
targets=()
for entry in "${SUITE[@]}"; do targets+=(--test "${entry%% *}"); done
cargo build --workspace --bins
declare -A exe=()
while read -r name path; do
  exe[$name]=$path
done < <(cargo test --no-run -p wasmedge-aot-shim "${targets[@]}" --message-format=json 2>/dev/null |
  python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(m["target"]["name"], m["executable"])')
# The fixtures too (the guest has no clang): build.sh then finds them up to date.
tests/fixtures/build.sh target/fixtures

# The guest's part: each binary with its filters, one test at a time (2 emulated CPUs);
# every binary runs even when one fails, and the status is the first failure's.
# The guest's /tmp is a nodev tmpfs: the device tests' images live on its disk instead.
guest='status=0
export TMPDIR=/var/tmp
for entry in "$@"; do
  read -ra f <<<"$entry"
  echo "== ${f[0]##*/} ${f[*]:1}"
  "${f[@]}" --test-threads=1 || { [ "$status" != 0 ] || status=$?; }
done
exit $status'
runs=()
for entry in "${SUITE[@]}"; do
  name=${entry%% *}
  [ -n "${exe[$name]:-}" ] || { echo "node-tests.sh: no test binary for $name" >&2; exit 1; }
  filters=${entry#"$name"}
  runs+=("${exe[$name]}$filters")
done

status=0
for ctd in "${containerds[@]}"; do
  echo "== node VM: tests against $ctd"
  started=$SECONDS
  WASMEDGE_SHIM_NODE_TESTS=1 ./scripts/node-vm.sh run --containerd "$ctd" -e WASMEDGE_SHIM_NODE_TESTS \
    -e WASMEDGE_SHIM_REQUIRE_ROOT_TESTS=1 -- bash -c "$guest" node-tests "${runs[@]}" || { [ "$status" != 0 ] || status=$?; }
  echo "node VM tests against $ctd: $((SECONDS - started)) s"
done
exit "$status"
