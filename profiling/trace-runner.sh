#!/usr/bin/env bash
# Traces the runner and the container processes it forks, for SECONDS, while something else
# starts containers (the e2e or large benchmark, ctr run, a test), and prints the median of
# each step of a container process's life, from the syscalls' timestamps:
#   fork      the runner's clone call to the child's first syscall (page-table copy)
#   prepare   first syscall to the Ready report (stdio, cgroup, netns, WASI environment)
#   wait      Ready to the shim's `start`
#   run       `start` to exit_group (the module's own work)
#   teardown  exit_group to the process's end (the kernel unmapping its address space)
# strace slows every syscall: read the steps against each other, not as absolute figures.
# Usage: profiling/trace-runner.sh [SECONDS] [RUNNER_PID]   (root; default: newest runner)
set -euo pipefail
secs=${1:-5}
pid=${2:-$(pgrep -n -f wasmedge-shim-runner || true)}
[ -n "$pid" ] || { echo "no wasmedge-shim-runner process; start containers first" >&2; exit 1; }
out=$(mktemp)
trap 'rm -f "$out"' EXIT
timeout "$secs" strace -f -ttt -T -q -p "$pid" -o "$out" || true
awk -v runner="$pid" '
  function median(a, n,   i, j, t) {
    for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
    return n == 0 ? "-" : sprintf("%.0f", a[int((n + 1) / 2)] * 1e6)
  }
  $1 == runner && /clone\(/ { clone_at = $2 }
  $1 == runner && /clone/ && match($0, /= [0-9]+/) { born[substr($0, RSTART + 2, RLENGTH - 2)] = clone_at }
  $1 != runner && !($1 in first) { first[$1] = $2 }
  $1 != runner && /sendto\(.*Ready/ { ready[$1] = $2 }
  $1 != runner && /recvfrom\(.*"start/ { start[$1] = $2 }
  $1 != runner && /exit_group\(/ { exiting[$1] = $2 }
  $1 != runner && /\+\+\+ exited/ { gone[$1] = $2 }
  END {
    for (p in gone) {
      if (!(p in born) || !(p in ready) || !(p in start) || !(p in exiting)) continue
      n++
      fork[n] = first[p] - born[p]; prep[n] = ready[p] - first[p]; wait[n] = start[p] - ready[p]
      run[n] = exiting[p] - start[p]; down[n] = gone[p] - exiting[p]
    }
    printf "%d container processes traced; median µs per step\n", n
    printf "fork %s  prepare %s  wait %s  run %s  teardown %s\n", median(fork, n), median(prep, n), median(wait, n), median(run, n), median(down, n)
  }' "$out"
