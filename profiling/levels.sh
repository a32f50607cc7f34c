#!/usr/bin/env bash
# The optimisation-level study (issue 12): for each module and each level (the interpreter,
# AOT O0..O3), the AOT compile's wall time, CPU time and peak RSS, the artifact's size, and
# the median run time of the module's workload and of a trivial run (start-up). Prints a
# markdown table. Modules come from profiling/real-programs.sh DIR (run it first).
#
# Every measurement is kept under DIR/logs and skipped when it is there (so an interrupted
# study resumes; delete a log to measure again); the artifacts stay as DIR/NAME.ON.so.
# The compiles run under `nice -n 10` (the machine is shared); each log records the load
# average read just before it.
#
# Usage: profiling/levels.sh [DIR]             (default: target/real-programs)
#   MODULES="sieve boolector nextpnr large yosys"  LEVELS="interp 0 1 2 3"
#   COMPILE_RUNS=N   compiles per level (default: 3 for modules under 1 MB, else 1; raising
#                    it later adds runs to those logged)
#   RUNS=N           hyperfine runs of the AOT workloads (default 5; 3 for yosys)
#   INTERP_RUNS=N    runs under the interpreter (default 3; 1 for boolector, nextpnr and yosys:
#                    minutes each)
#   TIMEOUT=S        a run taking longer is stopped and shown as "> timeout" (default 1200)
#   SKIP="yosys:3"   module:level pairs not to measure
#   TABLE_ONLY=1     print the table from the logs, measure nothing
#
# A whole run took about 80 minutes on a loaded 2-core machine with SKIP="yosys:3"; yosys
# alone needs ~5 GB per compile, ~25 minutes at O2 and ~8 minutes in the interpreter.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dir=$(cd "${1:-$here/../target/real-programs}" && pwd)
logs=$dir/logs
mkdir -p "$logs"
modules=${MODULES:-sieve boolector nextpnr large yosys}
levels=${LEVELS:-interp 0 1 2 3}
timeout_s=${TIMEOUT:-1200}
skip=" ${SKIP:-} "
cd "$dir"

# The WASI mounts and the workload of each module: "wasmedge MOUNTS MODULE ARGS".
# Outputs go to a scratch folder mounted as /tmp.
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
mounts() {
  case $1 in
    yosys) echo "--dir /share:$dir/yosys-share --dir /tmp:$scratch --dir .:." ;;
    nextpnr) echo "--dir /share:$dir/share --dir /tmp:$scratch --dir .:." ;;
    boolector) echo "--dir .:." ;;
    *) echo "" ;;
  esac
}
wasm_of() { case $1 in nextpnr) echo nextpnr-ice40.wasm ;; *) echo "$1.wasm" ;; esac; }
workload() {
  case $1 in
    sieve) echo "200" ;;
    boolector) echo "prime28.smt2" ;;
    large) echo "" ;;
    nextpnr) echo "--up5k --package sg48 --json design.json --asc /tmp/design.asc --seed 1 --quiet" ;;
    yosys) echo "-q -p 'synth_ice40 -top top -json /tmp/design.json' design.v" ;;
  esac
}
# The trivial run whose time is the start-up: the same program doing (almost) nothing.
# large has no other workload: its _start calls two of its functions and exits.
trivial() {
  case $1 in
    sieve) echo "0" ;;
    boolector) echo "--version" ;;
    large) echo "" ;;
    nextpnr) echo "--up5k --package sg48 --json blinky.json --asc /tmp/blinky.asc --seed 1 --quiet" ;;
    yosys) echo "-V" ;;
  esac
}
# The exit code of a successful workload run: boolector says unsat with 20.
expect() { [ "$1:$2" = boolector:work ] && echo 20 || echo 0; }
runs_for() {
  if [ "$2" = interp ]; then
    case $1 in boolector | nextpnr | yosys) echo "${INTERP_RUNS:-1}" ;; *) echo "${INTERP_RUNS:-3}" ;; esac
  else echo "${RUNS:-$([ "$1" = yosys ] && echo 3 || echo 5)}"; fi
}
size_of() { stat -c %s "$1"; }
code_size() { wasm-objdump -h "$1" 2>/dev/null | sed -n 's/.* Code .*(size=\(0x[0-9a-f]*\)).*/\1/p' | head -1; }

compile() {  # module level run
  local m=$1 l=$2 r=$3 w so tmp
  w=$(wasm_of "$m"); so=$dir/$m.O$l.so; tmp=$dir/$m.O$l.tmp.so
  local log=$logs/$m.O$l.compile.$r
  [ -e "$log.time" ] && return 0
  cat /proc/loadavg > "$log.load"
  echo "compile $m O$l (run $r), load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
  # A failed compile is logged as such (the table says so) and leaves no artifact.
  if /usr/bin/time -v -o "$log.time.tmp" nice -n 10 wasmedge compile --optimize "$l" "$w" "$tmp" \
    > "$log.out" 2>&1 && [ -s "$tmp" ]; then
    mv "$tmp" "$so"
  else
    echo "compile $m O$l failed: $(head -1 "$log.time.tmp")" >&2
    rm -f "$tmp"
  fi
  mv "$log.time.tmp" "$log.time"
}

run() {  # module level kind(work|trivial)
  local m=$1 l=$2 kind=$3 target args n
  if [ "$l" = interp ]; then target=$(wasm_of "$m"); else target=$m.O$l.so; fi
  [ -e "$target" ] || return 0
  local log=$logs/$m.$l.$kind
  [ -e "$log.json" ] && return 0
  if [ "$kind" = work ]; then args=$(workload "$m"); else args=$(trivial "$m"); fi
  n=$(runs_for "$m" "$l")
  cat /proc/loadavg > "$log.load"
  echo "run $m $l $kind x$n, load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
  local warm=1
  [ "$l" = interp ] && warm=0
  local cmd="timeout $timeout_s wasmedge $(mounts "$m") $target $args" ok
  ok=$(expect "$m" "$kind")
  # A run that ends as expected exits 0; a timeout stays 124.
  [ "$ok" = 0 ] || cmd="$cmd; c=\$?; [ \$c -eq $ok ] && exit 0; exit \$c"
  hyperfine --style basic --ignore-failure --warmup "$warm" --runs "$n" \
    --export-json "$log.json.tmp" \
    --output "$log.stdout" \
    "$cmd" > "$log.hyperfine" 2>&1
  mv "$log.json.tmp" "$log.json"
}

for m in $modules; do
  for l in $levels; do
    case $skip in *" $m:$l "*) continue ;; esac
    if [ "$l" != interp ]; then
      cr=${COMPILE_RUNS:-$([ "$(size_of "$(wasm_of "$m")")" -lt 1000000 ] && echo 3 || echo 1)}
      if [ -z "${TABLE_ONLY:-}" ]; then
        for r in $(seq "$cr"); do compile "$m" "$l" "$r"; done
      fi
    fi
    if [ -z "${TABLE_ONLY:-}" ]; then
      run "$m" "$l" trivial
      [ -n "$(workload "$m")" ] && run "$m" "$l" work
    fi
  done
done

# The table, from the logs.
python3 - "$dir" "$modules" "$levels" <<'EOF'
import glob, json, os, re, statistics, subprocess, sys
d, modules, levels = sys.argv[1], sys.argv[2].split(), sys.argv[3].split()
logs = os.path.join(d, "logs")
def wasm(m): return os.path.join(d, "nextpnr-ice40.wasm" if m == "nextpnr" else m + ".wasm")
def code(m):
    out = subprocess.run(["wasm-objdump", "-h", wasm(m)], capture_output=True, text=True).stdout
    s = re.search(r" Code .*size=(0x[0-9a-f]+)", out)
    return int(s.group(1), 16) if s else 0
def timev(path):
    t = open(path).read()
    e = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", t).group(1)
    secs = 0.0
    for part in e.split(":"): secs = secs * 60 + float(part)
    cpu = float(re.search(r"User time \(seconds\): (\S+)", t).group(1)) + \
          float(re.search(r"System time \(seconds\): (\S+)", t).group(1))
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", t).group(1))
    code = int(re.search(r"Exit status: (\d+)", t).group(1))
    sig = re.search(r"terminated by signal (\d+)", t)
    return secs, cpu, rss, (f"signal {sig.group(1)}" if sig else (f"exit {code}" if code else ""))
def hf(path):
    if not os.path.exists(path): return None
    r = json.load(open(path))["results"][0]
    codes = r.get("exit_codes") or [0]
    timed_out = any(c == 124 for c in codes)
    return (statistics.median(r["times"]), len(r["times"]), timed_out,
            any(c not in (0, 124) for c in codes), r["user"] + r["system"])
def load(path):
    return open(path).read().split()[0] if os.path.exists(path) else "?"
def fmt_s(x): return "-" if x is None else (f"{x:.3f}" if x < 10 else f"{x:.1f}")
rows = []
print("| module | wasm MB (code MB) | level | compile s (wall) | compile CPU s | compile peak RSS MB | .so MB | run s (median, n) | run CPU s (mean) | start-up s | workload s (run - start-up) | workload vs O2 | load1 before |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for m in modules:
    if not os.path.exists(wasm(m)): continue
    size = f"{os.path.getsize(wasm(m))/1e6:.2f} ({code(m)/1e6:.2f})"
    per = {}
    for l in levels:
        c = sorted(glob.glob(os.path.join(logs, f"{m}.O{l}.compile.*.time"))) if l != "interp" else []
        comp = [timev(p) for p in c]
        so = os.path.join(d, f"{m}.O{l}.so")
        work = hf(os.path.join(logs, f"{m}.{l}.work.json"))
        triv = hf(os.path.join(logs, f"{m}.{l}.trivial.json"))
        loads = [load(p[:-5] + ".load") for p in c] + [load(os.path.join(logs, f"{m}.{l}.{k}.load")) for k in ("trivial", "work")]
        per[l] = (comp, so, work, triv, loads)
    def net(l):
        comp, so, work, triv, loads = per[l]
        if work is None and triv is not None and m == "large": return triv[0]
        if work is None or triv is None or work[2]: return None
        return work[0] - triv[0]
    base = net("2") if "2" in per else None
    for l in levels:
        comp, so, work, triv, loads = per[l]
        if l != "interp" and not comp and work is None and triv is None: continue
        if comp:
            cw = statistics.median(x[0] for x in comp); cc = statistics.median(x[1] for x in comp)
            rss = statistics.median(x[2] for x in comp) / 1024
            cs = f"{fmt_s(cw)}" + (f" (n={len(comp)})" if len(comp) > 1 else "")
            ccs, rs = fmt_s(cc), f"{rss:.0f}"
            fails = [x[3] for x in comp if x[3]]
            if fails: cs += f" FAILED {len(fails)}/{len(comp)} ({', '.join(sorted(set(fails)))})"
        else:
            cs = ccs = rs = "-"
        sos = f"{os.path.getsize(so)/1e6:.1f}" if l != "interp" and os.path.exists(so) else "-"
        w = work if work is not None else (triv if m == "large" else None)
        if w is None: rn = "-"
        elif w[2]: rn = f"> timeout"
        else: rn = f"{fmt_s(w[0])} ({w[1]})" + (" ERR" if w[3] else "")
        cpu = "-" if w is None or w[2] else fmt_s(w[4])
        ts = "-" if (triv is None or m == "large") else fmt_s(triv[0])
        n = net(l)
        ns = "-" if n is None else fmt_s(n)
        ratio = "-" if (n is None or not base) else f"{n/base:.2f}"
        lvl = "interpreter" if l == "interp" else f"O{l}"
        ls = sorted(float(x) for x in loads if x != "?")
        lr = "-" if not ls else (f"{ls[0]:.2f}" if ls[0] == ls[-1] else f"{ls[0]:.2f}-{ls[-1]:.2f}")
        print(f"| {m} | {size} | {lvl} | {cs} | {ccs} | {rs} | {sos} | {rn} | {cpu} | {ts} | {ns} | {ratio} | {lr} |")
EOF

# Where each compile's time went, from WasmEdge's own log lines (median over the runs):
# building LLVM IR from the Wasm, verifying it, LLVM's optimisation passes, code generation,
# writing the shared library.
python3 - "$dir" "$modules" "$levels" <<'EOF2'
import datetime, glob, os, re, statistics, sys
d, modules, levels = sys.argv[1], sys.argv[2].split(), sys.argv[3].split()
steps = [("IR build", "compile start", "verify start"), ("verify", "verify start", "optimize start"),
         ("optimize", "optimize start", "codegen start"), ("codegen", "codegen start", "output start"),
         ("write", "output start", "codegen done")]
print()
print("| module | level | " + " | ".join(s[0] + " s" for s in steps) + " |")
print("|---|---|" + "---|" * len(steps))
for m in modules:
    for l in levels:
        if l == "interp": continue
        runs = []
        for f in sorted(glob.glob(os.path.join(d, "logs", f"{m}.O{l}.compile.*.out"))):
            ts = {}
            for line in open(f):
                x = re.match(r"\[(\S+ \S+)\] \[info\] (.*)", line)
                if x: ts[x.group(2).strip()] = datetime.datetime.strptime(x.group(1), "%Y-%m-%d %H:%M:%S.%f")
            runs.append([(ts[b] - ts[a]).total_seconds() if a in ts and b in ts else None for _, a, b in steps])
        if not runs: continue
        cells = []
        for i in range(len(steps)):
            v = [r[i] for r in runs if r[i] is not None]
            x = statistics.median(v) if v else None
            cells.append("-" if x is None else (f"{x:.2f}" if x < 1 else f"{x:.1f}"))
        print(f"| {m} | O{l} | " + " | ".join(cells) + " |")
EOF2
