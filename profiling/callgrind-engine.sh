#!/usr/bin/env bash
# Instruction counts (stable on a noisy machine) of the engine's start path: load a cached
# native module, instantiate it with WASI, run it. Writes callgrind.out.* here.
set -euo pipefail
cd "$(dirname "$0")/.."
bench=$(cargo bench --bench engine --no-run --message-format=json 2>/dev/null |
  python3 -c 'import json,sys
for l in sys.stdin:
    m=json.loads(l)
    if m.get("reason")=="compiler-artifact" and m["target"]["name"]=="engine" and m.get("executable"): print(m["executable"])' | tail -1)
valgrind --tool=callgrind --callgrind-out-file=profiling/callgrind.out.engine \
  "$bench" --bench --profile-time 2 'start/native: instantiate'
echo "callgrind_annotate --inclusive=yes profiling/callgrind.out.engine | head -40"
