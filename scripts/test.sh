#!/usr/bin/env bash
# The test command: set up the machine (idempotent), build, lint, and run every test,
# the integration tests against a real, private containerd included. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."

SKIP_CARGO_TOOLS=1 ./scripts/setup.sh
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
# Two test threads: the machine has two cores and each containerd test runs several processes.
# Unit and integration tests (doc tests have nothing to run); the summed result closes the log.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace --lib --bins --tests -- --test-threads=2 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed;?$/) p += $i; if ($(i+1) ~ /^failed;?$/) f += $i; if ($(i+1) ~ /^ignored;?$/) s += $i } }
     END { printf "total: %d passed, %d failed, %d skipped\n", p, f, s }' "$log"
[ "$status" = 0 ] || exit "$status"
