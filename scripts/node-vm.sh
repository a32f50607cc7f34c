#!/usr/bin/env bash
# node-vm.sh: the project's own test node, a QEMU guest that looks like a modern Kubernetes
# node: Debian 13 (trixie), systemd as PID 1 with its D-Bus API, pure cgroup v2, containerd
# 1.7 configured with `SystemdCgroup = true`, runc, libwasmedge0, and the test matrix's
# containerd 2.1.9 under /opt/containerd-2.1.9 as on the host.
#
# Why a VM: the project's machines are Debian 12 with cgroup v1 and no systemd, so the shim's
# cgroup v2 and systemd paths can only be exercised in a guest. Their /dev/kvm (PVM) cannot
# boot a stock kernel, so the guest runs under software emulation (TCG): slow (boot 1-2 min,
# a `ctr run --rm` 6-20 s), and only ratios measured within one boot mean anything.
#
# Usage (root; the packages come from `scripts/setup.sh test`):
#   node-vm.sh build                      build the guest image, unless it is up to date
#   node-vm.sh run [OPTIONS] -- CMD ARGS  boot a throw-away copy of the image, run CMD in the
#                                         repository (shared at its own path), print its
#                                         output, exit with its exit code
#       --containerd PATH   set WASMEDGE_SHIM_CONTAINERD=PATH for CMD (a guest path, e.g.
#                           /opt/containerd-2.1.9/usr/bin/containerd)
#       -e KEY=VALUE        set KEY for CMD (-e KEY takes the host's value); repeatable.
#                           The host's WASMEDGE_SHIM_*, RUST_BACKTRACE, RUST_LOG and CI are
#                           passed on without asking.
#       --share DIR         also share host directory DIR at its own path; repeatable
#   node-vm.sh smoke                      prove the node: systemd, cgroup v2, both containerds,
#                                         libwasmedge, systemd's D-Bus API
#   node-vm.sh shell                      boot the image with a root shell on this terminal
#                                         (serial console, no password; `poweroff` to leave)
#
# Environment: NODE_VM_DIR (image, default /var/tmp/wasmedge-aot-shim/node-vm),
#   NODE_VM_MEM (3G), NODE_VM_SMP (2), NODE_VM_TIMEOUT (seconds for a whole run, 1800),
#   NODE_VM_MIRROR (http://deb.debian.org/debian).
#
# How a run works: the host writes the command (argv, environment, working directory) into a
# new directory under target/node-vm/runs/ (git-ignored) and boots the image with -snapshot
# (its writes are thrown away) and the repository shared over 9p. The kernel command line
# names the run directory; in the guest, once systemd has reached multi-user.target, the unit
# node-vm-run.service mounts the shares, runs the command as root and appends its stdout and
# stderr to files in the run directory, which the host streams, writes its exit code, and
# powers the guest off.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
NODE_VM_DIR=${NODE_VM_DIR:-/var/tmp/wasmedge-aot-shim/node-vm}
NODE_VM_MEM=${NODE_VM_MEM:-3G}
NODE_VM_SMP=${NODE_VM_SMP:-2}
NODE_VM_TIMEOUT=${NODE_VM_TIMEOUT:-1800}
NODE_VM_MIRROR=${NODE_VM_MIRROR:-http://deb.debian.org/debian}
# setup.sh extracts the test matrix's second containerd here; the image carries a copy.
CONTAINERD2_DIR=/opt/containerd-2.1.9
RUNS_DIR=$REPO/target/node-vm/runs

# The guest's packages (Debian 13), on top of debootstrap's minbase.
GUEST_PACKAGES=(
  systemd-sysv        # systemd as PID 1: the shim creates transient scopes through it
  udev                # device nodes and module autoloading (virtio, overlay)
  dbus                # the system bus: systemd's D-Bus API (busctl, the shim's scopes)
  containerd          # containerd 1.7.24, Debian 13's: the matrix's first containerd
  runc                # Linux containers, and the runc shim's runtime
  containernetworking-plugins  # CNI loopback: the CRI tests' pods with a network of their own
  libwasmedge0        # libwasmedge.so.0, which the runner and the admin tool link
  wasmedge            # the WasmEdge CLI that some tests compare against
  libseccomp2         # libseccomp.so.2, which the shim links
  kmod                # modprobe, for the kernel's module requests (overlay, 9p)
  iproute2            # ip: the tests' network namespaces
  util-linux          # nsenter, setpriv, mount, unshare
  procps              # ps, pkill, free
  binutils            # readelf: the engine's fingerprint test reads the library's build id
  linux-image-amd64   # the guest's kernel (and its modules), booted with -kernel
)

log() { echo "node-vm: $*" >&2; }
die() { log "$*"; exit 1; }

need_root() { [ "$(id -u)" = 0 ] || die "must run as root (debootstrap, chroot, mounts)"; }

need_tools() {
  local t
  for t in qemu-system-x86_64 debootstrap mkfs.ext4; do
    command -v "$t" >/dev/null 2>&1 || die "$t is missing: run ./scripts/setup.sh test"
  done
}

# ---------------------------------------------------------------------------------------
# build

# The image is rebuilt when its recipe changes: the functions that make it, the package
# list, the mirror, and the version of the containerd 2.x tree it copies.
recipe_hash() {
  {
    declare -f bootstrap_rootfs install_guest_packages configure_guest write_guest_units \
      write_guest_harness make_disk
    printf '%s\n' "${GUEST_PACKAGES[@]}" "$NODE_VM_MIRROR" "$CONTAINERD2_DIR"
    cat "$CONTAINERD2_DIR/.deb-version"
  } | sha256sum | cut -d' ' -f1
}

image_is_current() {
  local d=$NODE_VM_DIR
  [ -f "$d/vmlinuz" ] && [ -f "$d/initrd.img" ] && [ -f "$d/rootfs.img" ] &&
    [ "$(cat "$d/recipe.sha256" 2>/dev/null)" = "$(recipe_hash)" ]
}

# minbase Debian 13; the downloaded .debs are kept for the next build.
bootstrap_rootfs() {
  local root=$1 cache=$2
  mkdir -p "$cache/debootstrap"
  if ! nice -n 10 debootstrap --variant=minbase --cache-dir="$cache/debootstrap" \
    trixie "$root" "$NODE_VM_MIRROR" >"$NODE_VM_DIR/build.log" 2>&1; then
    tail -20 "$NODE_VM_DIR/build.log" >&2
    die "debootstrap failed (log: $NODE_VM_DIR/build.log)"
  fi
}

# With apt inside the new root, which resolves dependencies properly (debootstrap's
# --include does not handle alternatives). Before the kernel is installed, initramfs-tools
# is told to build a small initramfs: only the modules that find and mount the root disk
# (the default, MODULES=most, makes a 30+ MB image that is slow to unpack under TCG).
install_guest_packages() {
  local root=$1 cache=$2
  mkdir -p "$root/etc/initramfs-tools/conf.d" "$root/usr/share/initramfs-tools/modules.d"
  echo MODULES=list >"$root/etc/initramfs-tools/conf.d/node-vm.conf"
  printf '%s\n' virtio_pci virtio_blk ext4 >"$root/usr/share/initramfs-tools/modules.d/node-vm"
  # Services are never started in the build chroot.
  printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
  chmod 0755 "$root/usr/sbin/policy-rc.d"
  # apt in the chroot resolves the mirror's name with the host's resolver.
  cp /etc/resolv.conf "$root/etc/resolv.conf"
  mkdir -p "$cache/apt/partial"
  mount --bind "$cache/apt" "$root/var/cache/apt/archives"
  mount -t proc proc "$root/proc"
  local rc=0
  {
    # The bind-mounted cache belongs to the host's root, not to the guest's _apt user.
    chroot "$root" apt-get -q -o APT::Sandbox::User=root update &&
      DEBIAN_FRONTEND=noninteractive nice -n 10 chroot "$root" apt-get -q \
        -o APT::Sandbox::User=root install -y --no-install-recommends "${GUEST_PACKAGES[@]}"
  } >>"$NODE_VM_DIR/build.log" 2>&1 || rc=$?
  release_mounts "$root"
  rm -f "$root/usr/sbin/policy-rc.d" "$root/etc/resolv.conf"
  if [ "$rc" != 0 ]; then
    tail -20 "$NODE_VM_DIR/build.log" >&2
    die "apt-get install in the guest root failed (log: $NODE_VM_DIR/build.log)"
  fi
}

# The node's configuration: what makes it a node (containerd's config, cgroup v2), and what
# keeps it quiet and fast under emulation.
configure_guest() {
  local root=$1
  echo node-vm >"$root/etc/hostname"
  printf '127.0.0.1 localhost\n127.0.1.1 node-vm\n' >"$root/etc/hosts"
  # A resolver configuration, as every node has one (CRI copies it into each pod's sandbox);
  # the guest has no network, so what it names is never asked.
  echo 'nameserver 127.0.0.53' >"$root/etc/resolv.conf"
  # No fsck (every boot starts from the same clean image).
  echo '/dev/vda / ext4 rw,noatime 0 0' >"$root/etc/fstab"
  # /tmp on the root disk, not Debian 13's default tmpfs: the tests put containerd's root
  # (content, snapshots, overlay mounts) under /tmp, which would eat the guest's memory.
  ln -sf /dev/null "$root/etc/systemd/system/tmp.mount"
  # The journal in memory: nothing of a run is kept anyway (-snapshot).
  mkdir -p "$root/etc/systemd/journald.conf.d"
  printf '[Journal]\nStorage=volatile\n' >"$root/etc/systemd/journald.conf.d/node-vm.conf"
  # No periodic jobs (apt, dpkg backups, fstrim, e2scrub) in the middle of a measurement.
  rm -f "$root"/etc/systemd/system/timers.target.wants/*
  # The node's containerd config, as a kubeadm node has it: runc through systemd's cgroup
  # driver (config version 2, containerd 1.7). The system containerd service is masked: the
  # tests start containerds of their own, each with a private config, root and socket.
  mkdir -p "$root/etc/containerd"
  cat >"$root/etc/containerd/config.toml" <<'EOF'
version = 2
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
    SystemdCgroup = true
EOF
  ln -sf /dev/null "$root/etc/systemd/system/containerd.service"
  # The test matrix's containerd 2.x, at the path the tests and test.sh use on the host.
  mkdir -p "$root/opt"
  cp -a "$CONTAINERD2_DIR" "$root$CONTAINERD2_DIR"
  # `node-vm.sh shell`: root logs in on the serial console without a password (the guest
  # has no network).
  chroot "$root" passwd -d root >/dev/null
}

# Boots to node-vm.target: multi-user.target, then node-vm-run.service. The service is
# ordered after multi-user.target (systemd, D-Bus and local file systems up), which it could
# not be if multi-user.target pulled it in itself (an ordering cycle).
write_guest_units() {
  local root=$1
  cat >"$root/etc/systemd/system/node-vm.target" <<'EOF'
[Unit]
Description=node-vm: the node is up, and the host's command started
Requires=multi-user.target
After=multi-user.target
Wants=node-vm-run.service
AllowIsolate=yes
EOF
  # Type=exec: the boot is finished (`systemctl is-system-running` settles) once the
  # command has started, so the command can itself wait for a settled system.
  # Delegate=yes: the command plays containerd.service's part on a real node, which is
  # delegated its cgroup subtree (and so makes systemd enable every controller it manages
  # down to it). OOMPolicy=continue: a test's deliberate OOM kill must not stop the run.
  cat >"$root/etc/systemd/system/node-vm-run.service" <<'EOF'
[Unit]
Description=node-vm: run the host's command (node_vm.run= on the kernel command line)
ConditionKernelCommandLine=node_vm.run
After=multi-user.target dbus.service local-fs.target
Wants=dbus.service

[Service]
Type=exec
ExecStart=/usr/local/sbin/node-vm-run
Environment=HOME=/root LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
StandardOutput=journal+console
StandardError=journal+console
Delegate=yes
OOMPolicy=continue
EOF
  ln -sf /etc/systemd/system/node-vm.target "$root/etc/systemd/system/default.target"
}

# The guest's side of a run. Its parameters are on the kernel command line:
#   node_vm.mount=TAG:PATH   a 9p share to mount at PATH (several)
#   node_vm.run=DIR          the run directory (in a share): argv (NUL-separated), env
#                            (KEY=VALUE lines), cwd; written back: stdout, stderr, rc, and
#                            the guest's uptime when the command started and ended
write_guest_harness() {
  local root=$1
  cat >"$root/usr/local/sbin/node-vm-run" <<'EOF'
#!/bin/bash
set -uo pipefail
# Whatever happens, the guest powers off, so that the host does not wait for its timeout.
trap 'sync; systemctl poweroff --no-block' EXIT
uptime_s() { cut -d' ' -f1 /proc/uptime; }
echo "node-vm: unit started at uptime $(uptime_s) s"
run=
read -ra params </proc/cmdline
for p in "${params[@]}"; do
  case $p in
    node_vm.mount=*)
      tag=${p#node_vm.mount=}; path=${tag#*:}; tag=${tag%%:*}
      mkdir -p "$path"
      # cache=mmap: reads and writes go straight to the host (the host streams the output
      # files while the command runs), and mmap works (executables, shared libraries).
      mount -t 9p -o trans=virtio,version=9p2000.L,msize=1048576,cache=mmap "$tag" "$path" ||
        { echo "node-vm: cannot mount 9p share $tag at $path"; exit 1; } ;;
    node_vm.run=*) run=${p#node_vm.run=} ;;
  esac
done
[ -f "$run/argv" ] || { echo "node-vm: no command in '$run'"; exit 1; }
uptime_s >"$run/started"
while IFS= read -r kv; do
  [ -n "$kv" ] && export "$kv"
done <"$run/env"
mapfile -d '' -t argv <"$run/argv"
cd "$(cat "$run/cwd")" || exit 1
"${argv[@]}" </dev/null >>"$run/stdout" 2>>"$run/stderr"
rc=$?
uptime_s >"$run/ended"
echo "$rc" >"$run/rc.tmp" && mv "$run/rc.tmp" "$run/rc"
echo "node-vm: command exited $rc at uptime $(uptime_s) s"
EOF
  chmod 0755 "$root/usr/local/sbin/node-vm-run"
}

# A sparse ext4 image of the root, with room for the tests' containerd content and
# snapshots; the kernel and initramfs beside it, booted with -kernel.
make_disk() {
  local root=$1 out=$2
  cp "$root"/boot/vmlinuz-* "$out/vmlinuz"
  cp "$root"/boot/initrd.img-* "$out/initrd.img"
  nice -n 10 mkfs.ext4 -q -F -L node-root -d "$root" "$out/rootfs.img" 6G
}

# Unmounts whatever is mounted under DIR (a build that was interrupted may have left the
# chroot's /proc and the bind-mounted .deb cache behind).
release_mounts() {
  local dir=$1 m
  while read -r m; do
    umount -l "$m"
  done < <(awk -v d="$dir/" 'index($2 "/", d) == 1 { print $2 }' /proc/mounts | sort -r)
}

cmd_build() {
  need_root
  need_tools
  [ -x "$CONTAINERD2_DIR/usr/bin/containerd" ] || die "$CONTAINERD2_DIR is missing: run ./scripts/setup.sh test"
  mkdir -p "$NODE_VM_DIR"
  if image_is_current; then
    log "image up to date ($NODE_VM_DIR)"
    return
  fi
  local t0=$SECONDS work=$NODE_VM_DIR/work
  log "building the guest image in $NODE_VM_DIR (a few minutes; log: $NODE_VM_DIR/build.log)"
  release_mounts "$work"
  rm -rf --one-file-system "$work"
  mkdir -p "$work/out"
  : >"$NODE_VM_DIR/build.log"
  trap "release_mounts '$work'" EXIT
  bootstrap_rootfs "$work/root" "$NODE_VM_DIR/cache"
  install_guest_packages "$work/root" "$NODE_VM_DIR/cache"
  configure_guest "$work/root"
  write_guest_units "$work/root"
  write_guest_harness "$work/root"
  make_disk "$work/root" "$work/out"
  mv -f "$work"/out/* "$NODE_VM_DIR/"
  recipe_hash >"$NODE_VM_DIR/recipe.sha256"
  rm -rf --one-file-system "$work"
  trap - EXIT
  log "image built in $((SECONDS - t0)) s: $(du -sh --apparent-size "$NODE_VM_DIR/rootfs.img" | cut -f1) disk ($(du -sh "$NODE_VM_DIR/rootfs.img" | cut -f1) used)"
}

# ---------------------------------------------------------------------------------------
# run

QEMU_PID=
TAIL_PIDS=()
cleanup() {
  [ -z "$QEMU_PID" ] || kill "$QEMU_PID" 2>/dev/null || true
  [ "${#TAIL_PIDS[@]}" = 0 ] || kill "${TAIL_PIDS[@]}" 2>/dev/null || true
}

# qemu_args SHARES... : the guest machine, with each of SHARES shared over 9p at its path.
# passthrough: the guest's root creates files as root on the host (qemu runs as root), which
# the host reads and deletes like its own.
qemu_args() {
  local i=0 dir
  QEMU_ARGS=(
    -accel tcg,thread=multi -cpu max,-la57 -m "$NODE_VM_MEM" -smp "$NODE_VM_SMP"
    -nodefaults -nographic -no-reboot -serial stdio -nic none
    -device virtio-rng-pci
    -kernel "$NODE_VM_DIR/vmlinuz" -initrd "$NODE_VM_DIR/initrd.img"
    -drive "file=$NODE_VM_DIR/rootfs.img,format=raw,if=virtio" -snapshot
  )
  MOUNT_PARAMS=
  for dir in "$@"; do
    QEMU_ARGS+=(-virtfs "local,path=$dir,mount_tag=share$i,security_model=passthrough,multidevs=remap,id=share$i")
    MOUNT_PARAMS+=" node_vm.mount=share$i:$dir"
    i=$((i + 1))
  done
}

# The kernel's command line: cgroup v2 only (trixie's default; said explicitly), a panic
# ends the VM (-no-reboot), quiet so that the emulated serial line does not slow the boot.
kernel_cmdline() {
  echo "console=ttyS0 root=/dev/vda rw quiet panic=1 systemd.unified_cgroup_hierarchy=1$MOUNT_PARAMS $*"
}

# Keeps the last runs' directories for inspection, not all of them.
prune_runs() {
  local old
  mapfile -t old < <(ls -1dt "$RUNS_DIR"/*/ 2>/dev/null | tail -n +11)
  [ "${#old[@]}" = 0 ] || rm -rf "${old[@]}"
}

# A path on the kernel command line cannot hold blanks.
check_path() {
  [[ $1 != *[[:space:]]* ]] || die "path with blanks cannot be shared: '$1'"
}

cmd_run() {
  need_root
  local containerd= shares=("$REPO") envs=() kv
  while [ $# -gt 0 ]; do
    case $1 in
      --containerd) containerd=$2; shift 2 ;;
      -e | --env) envs+=("$2"); shift 2 ;;
      --share) shares+=("$(cd "$2" && pwd -P)"); shift 2 ;;
      --) shift; break ;;
      *) die "run: unknown option '$1' (the command comes after --)" ;;
    esac
  done
  [ $# -gt 0 ] || die "run: no command (node-vm.sh run [OPTIONS] -- CMD ARGS...)"
  cmd_build
  for kv in "${shares[@]}"; do check_path "$kv"; done

  local t0=$SECONDS run
  mkdir -p "$RUNS_DIR"
  prune_runs
  run=$(mktemp -d "$RUNS_DIR/$(date +%Y%m%d-%H%M%S)-XXXX")
  check_path "$run"
  # The command and its environment, for the guest's harness.
  printf '%s\0' "$@" >"$run/argv"
  {
    env | grep -E '^(WASMEDGE_SHIM_[A-Z0-9_]*|RUST_BACKTRACE|RUST_LOG|CI)=' || true
    for kv in "${envs[@]}"; do
      if [[ $kv == *=* ]]; then echo "$kv"; else echo "$kv=${!kv-}"; fi
    done
    [ -z "$containerd" ] || echo "WASMEDGE_SHIM_CONTAINERD=$containerd"
  } >"$run/env"
  # The caller's directory when it is in the repository, else the repository.
  case $(pwd -P)/ in
    "$REPO"/*) pwd -P >"$run/cwd" ;;
    *) echo "$REPO" >"$run/cwd" ;;
  esac
  : >"$run/stdout"
  : >"$run/stderr"

  qemu_args "${shares[@]}"
  trap cleanup EXIT
  trap 'exit 130' INT TERM
  timeout --kill-after=10 "$NODE_VM_TIMEOUT" nice -n 10 qemu-system-x86_64 "${QEMU_ARGS[@]}" \
    -append "$(kernel_cmdline "node_vm.run=$run")" </dev/null >"$run/console.log" 2>&1 &
  QEMU_PID=$!
  # The command's output, as the guest writes it (cache=mmap in the guest: no delay).
  tail -n +1 -f --pid="$QEMU_PID" "$run/stdout" &
  TAIL_PIDS+=($!)
  tail -n +1 -f --pid="$QEMU_PID" "$run/stderr" >&2 &
  TAIL_PIDS+=($!)
  local qemu_rc=0
  wait "$QEMU_PID" || qemu_rc=$?
  QEMU_PID=
  wait "${TAIL_PIDS[@]}" 2>/dev/null || true
  TAIL_PIDS=()

  if [ ! -f "$run/rc" ]; then
    if [ "$qemu_rc" = 124 ]; then
      log "no result: the guest timed out after $NODE_VM_TIMEOUT s (NODE_VM_TIMEOUT)"
    else
      log "no result: the guest stopped (qemu exit $qemu_rc) without one"
    fi
    log "last console lines ($run/console.log):"
    tail -n 40 "$run/console.log" >&2
    exit 125
  fi
  local started ended
  started=$(cat "$run/started")
  ended=$(cat "$run/ended")
  log "booted in ${started%.*} s (guest uptime at the unit's start), command ran $(awk -v a="$started" -v b="$ended" 'BEGIN { printf "%.0f", b - a }') s, whole run $((SECONDS - t0)) s (output: $run)"
  exit "$(cat "$run/rc")"
}

# ---------------------------------------------------------------------------------------
# smoke: what the project's tests take for granted on a node, each printed, then checked.

SMOKE_SCRIPT=$(
  cat <<'EOF'
set -u
fail=0
check() { if eval "$2"; then echo "ok: $1"; else echo "FAIL: $1"; fail=1; fi; }
echo "uptime at start: $(cut -d' ' -f1 /proc/uptime) s"
echo "kernel: $(uname -r), cmdline: $(cat /proc/cmdline)"
echo "pid 1: $(cat /proc/1/comm)"
echo "/sys/fs/cgroup: $(stat -fc %T /sys/fs/cgroup)"
echo "cgroup.controllers: $(cat /sys/fs/cgroup/cgroup.controllers)"
echo "cgroup.subtree_control: $(cat /sys/fs/cgroup/cgroup.subtree_control)"
echo "this command's cgroup: $(cat /proc/self/cgroup)"
state=$(timeout 120 systemctl is-system-running --wait 2>&1)
echo "systemctl is-system-running: $state (at uptime $(cut -d' ' -f1 /proc/uptime) s)"
[ "$state" = running ] || systemctl --failed --no-legend --plain | sed 's/^/  failed unit: /'
echo "cgroup.subtree_control after boot: $(cat /sys/fs/cgroup/cgroup.subtree_control)"
echo "containerd: $(containerd --version)"
echo "containerd 2: $(/opt/containerd-2.1.9/usr/bin/containerd --version)"
echo "containerd.service: $(systemctl is-enabled containerd.service 2>&1), $(systemctl is-active containerd.service 2>&1)"
echo "runc: $(runc --version | head -1)"
echo "/etc/containerd/config.toml: $(containerd config dump 2>/dev/null | grep -m1 -o 'SystemdCgroup = [a-z]*')"
echo "/tmp: $(findmnt -no FSTYPE,SOURCE --target /tmp), $(df -h --output=avail /tmp | tail -1 | tr -d ' ') free"
echo "memory: $(free -m | awk '/^Mem:/ { print $2 " MB, " $7 " MB available" }')"
runner=
for r in target/debug/wasmedge-shim-runner target/release/wasmedge-shim-runner; do
  if [ -x "$r" ]; then
    runner=$r
    echo "ldd $r:"
    ldd "$r" | sed 's/^/  /'
  else
    echo "$r: not built"
  fi
done
echo "busctl GetUnit dbus.service:"
busctl call org.freedesktop.systemd1 /org/freedesktop/systemd1 \
  org.freedesktop.systemd1.Manager GetUnit s dbus.service 2>&1 | sed 's/^/  /'
check "pid 1 is systemd" '[ "$(cat /proc/1/comm)" = systemd ]'
check "cgroup v2 only" '[ "$(stat -fc %T /sys/fs/cgroup)" = cgroup2fs ]'
# systemd manages these (hugetlb it does not: runc enables that in a container's parent).
for c in cpu memory pids io cpuset; do
  if grep -qw "$c" /sys/fs/cgroup/cgroup.controllers; then
    check "controller $c enabled at the root" 'grep -qw "$c" /sys/fs/cgroup/cgroup.subtree_control'
  else
    echo "skip: controller $c not available"
  fi
done
check "system running" '[ "$state" = running ]'
check "containerd 1.7" 'containerd --version | grep -q " v\?1\.7\."'
check "containerd 2.1" '/opt/containerd-2.1.9/usr/bin/containerd --version | grep -q " v\?2\.1\."'
check "SystemdCgroup = true" 'containerd config dump 2>/dev/null | grep -q "SystemdCgroup = true"'
check "containerd.service masked" '[ "$(systemctl is-enabled containerd.service 2>&1)" = masked ]'
check "/tmp not on 9p nor tmpfs" '[ "$(findmnt -no FSTYPE --target /tmp)" = ext4 ]'
check "systemd's D-Bus API" 'busctl call org.freedesktop.systemd1 /org/freedesktop/systemd1 org.freedesktop.systemd1.Manager GetUnit s dbus.service >/dev/null'
check "libwasmedge0 installed" '[ -e /usr/lib/x86_64-linux-gnu/libwasmedge.so.0 ]'
[ -z "$runner" ] || check "the runner's libraries resolve" '! ldd "$runner" | grep -q "not found"'
exit $fail
EOF
)

cmd_smoke() {
  cmd_run -- bash -c "$SMOKE_SCRIPT" node-vm-smoke
}

# An interactive boot, for looking around: no command, the serial console on this terminal.
cmd_shell() {
  need_root
  cmd_build
  qemu_args "$REPO"
  log "booting; log in as root (no password), 'poweroff' to leave; the repository is not mounted:"
  log "  mount -t 9p -o trans=virtio,version=9p2000.L,cache=mmap share0 $REPO"
  exec nice -n 10 qemu-system-x86_64 "${QEMU_ARGS[@]}" -append "$(kernel_cmdline)"
}

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2; exit 2; }

case ${1:-} in
  build) cmd_build ;;
  run) shift; cmd_run "$@" ;;
  smoke) cmd_smoke ;;
  shell) cmd_shell ;;
  *) usage ;;
esac
