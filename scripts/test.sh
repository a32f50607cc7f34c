#!/usr/bin/env bash
# The test command: set up the machine (idempotent), build, lint, and run every test,
# the integration tests against a real, private containerd included. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup.sh test
export CARGO_TERM_COLOR=never
# Integration tests start containerd and need root; they fail loudly rather than skip in CI.
export WASMEDGE_SHIM_REQUIRE_ROOT_TESTS=${CI:+1}

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# Dependency policy (deny.toml), with the cargo-deny setup.sh installs: licences, bans and
# sources in every run. The advisory database comes from GitHub: where it cannot be fetched
# (this project's machines reach only the package registries), advisories are skipped with a
# message.
cargo deny check licenses bans sources
if cargo deny fetch >/dev/null 2>&1; then
  cargo deny check advisories
else
  echo "cargo deny: advisory database unreachable, advisories not checked"
fi
# No binary links a crate it does not use.
./scripts/check-deps.sh
# The integration tests drive the binaries of every package (the runner and the admin tool are
# packages of their own): build them all first.
cargo build --workspace --bins
# No package the build or the tests use is missing from setup.sh (a fresh machine has only the
# base image and what setup.sh installs); and the check itself still catches one.
./scripts/check-packages.sh
./scripts/check-packages.sh --self-test
# Two test threads: the machine has two cores and each containerd test runs several processes.
# Unit and integration tests (doc tests have nothing to run); the summed result closes the log.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
started=$SECONDS
# A failing pass must not end the script (set -e): the other containerd's pass still runs,
# and the summed result is printed.
set +e
cargo test --no-fail-fast --workspace --lib --bins --tests -- --test-threads=2 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
echo "tests against $(containerd --version | awk '{print "containerd " $3}'): $((SECONDS - started)) s"
# The second containerd of the matrix (setup.sh puts it beside the first): the shim's
# integration tests, which are the tests that talk to containerd, run again against it, with a
# config of its version (the harness reads WASMEDGE_SHIM_CONTAINERD). Unit tests and the admin
# tool's tests do not depend on the containerd that runs, and are not run twice.
CONTAINERD2=${WASMEDGE_SHIM_CONTAINERD2:-/opt/containerd-2.1.9/usr/bin/containerd}
if [ -x "$CONTAINERD2" ]; then
  started=$SECONDS
  set +e
  WASMEDGE_SHIM_CONTAINERD=$CONTAINERD2 cargo test --no-fail-fast -p wasmedge-aot-shim --test '*' -- --test-threads=2 2>&1 | tee -a "$log"
  status2=${PIPESTATUS[0]}
  set -e
  [ "$status" != 0 ] || status=$status2
  echo "tests against containerd $("$CONTAINERD2" --version | awk '{print $3}'): $((SECONDS - started)) s"
elif [ -n "${CI:-}" ]; then
  echo "test.sh: $CONTAINERD2 is missing (scripts/setup.sh installs it)" >&2
  status=1
fi
# The tests of the nodes users run (systemd as PID 1, cgroup v2, the systemd cgroup driver),
# in the node VM, against both containerds; their results join the sum below.
started=$SECONDS
set +e
./scripts/node-tests.sh 2>&1 | tee -a "$log"
status3=${PIPESTATUS[0]}
set -e
[ "$status" != 0 ] || status=$status3
echo "node VM tests: $((SECONDS - started)) s"
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed;?$/) p += $i; if ($(i+1) ~ /^failed;?$/) f += $i; if ($(i+1) ~ /^ignored;?$/) s += $i } }
     END { printf "total: %d passed, %d failed, %d skipped\n", p, f, s }' "$log"
[ "$status" = 0 ] || exit "$status"
