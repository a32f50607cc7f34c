# A private containerd for the demo and the profiling scripts: its own config, root, state and
# socket under a work directory, the shim binaries of BIN first on its PATH, debug logging to
# WORK/containerd.log, and the CRI plugin off. It touches no system configuration.
# Source it, then:
#   pcd_init WORK NS BIN          set the variables below and write WORK/config.toml
#   pcd_start "SHIM CONFIG TOML"  (re)start containerd with that shim config (WORK/shim.toml)
#   pcd_cleanup                   stop containerd and the shims, unmount, remove WORK
#   pcd_ctr ARGS...               ctr against it, in NS
# Variables: pcd_work, pcd_sock, pcd_ns, pcd_bin, pcd_pid.

pcd_init() {
  pcd_work=$1 pcd_ns=$2 pcd_bin=$3
  pcd_sock=$pcd_work/containerd.sock
  pcd_pid=
  cat >"$pcd_work/config.toml" <<TOML
version = 2
root = "$pcd_work/root"
state = "$pcd_work/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$pcd_sock"
[ttrpc]
  address = "$pcd_sock.ttrpc"
[debug]
  level = "debug"
TOML
}

pcd_stop() {
  if [ -n "$pcd_pid" ]; then
    # Callers run under `set -e`: neither a gone process nor its signal status is an error.
    kill "$pcd_pid" 2>/dev/null && wait "$pcd_pid" 2>/dev/null || true
    pcd_pid=
  fi
  pkill -f "containerd-shim-wasmedge-v1 -namespace $pcd_ns .*-address $pcd_sock" 2>/dev/null || true
}

pcd_start() {
  pcd_stop
  printf '%s\n' "$1" >"$pcd_work/shim.toml"
  PATH="$pcd_bin:$PATH" WASMEDGE_AOT_SHIM_CONFIG="$pcd_work/shim.toml" \
    containerd --config "$pcd_work/config.toml" >>"$pcd_work/containerd.log" 2>&1 &
  pcd_pid=$!
  for _ in $(seq 100); do ctr -a "$pcd_sock" version >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "containerd did not come up; its log: $pcd_work/containerd.log" >&2
  return 1
}

pcd_ctr() {
  ctr -a "$pcd_sock" -n "$pcd_ns" "$@"
}

pcd_cleanup() {
  set +e
  pcd_stop
  grep -o " $pcd_work[^ ]*" /proc/self/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null
  rm -rf "$pcd_work"
}
