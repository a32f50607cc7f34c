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
# Two test threads: the machine has two cores and each containerd test runs several processes.
cargo test --workspace -- --test-threads=2
if command -v cargo-deny >/dev/null 2>&1; then
  cargo deny check
fi
