#!/usr/bin/env bash
# The benchmarks: set up (with cargo-criterion), then `cargo criterion` over every bench:
# cache (hashing, warm lookup, locks), engine (start latency native vs interpreter, CPU-bound
# run), e2e (ctr run --rm through this shim vs runc, density with 1/10/50 idle containers;
# needs root). Figures and commands are kept in BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh bench
# The e2e and large benches drive the runner and the shim from target/release: every
# package's binaries first (cargo bench builds only the root package's).
cargo build --release --workspace --bins
# The CPU-bound bench's programs (a sieve, and Boolector from PyPI).
./profiling/real-programs.sh --cpu
if command -v cargo-criterion >/dev/null 2>&1; then
  cargo criterion "$@"
else
  cargo bench "$@"
fi
