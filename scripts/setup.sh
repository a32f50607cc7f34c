#!/usr/bin/env bash
# Installs everything the build, the demo and the tests need on a fresh Debian 12 or 13
# machine, from the package registries only. Idempotent: a second run changes nothing.
#
# On Debian 12 (bookworm) WasmEdge 0.14.1, containerd 1.7 and clang-19 come from Debian 13
# (trixie), added as an apt source pinned at priority 100 so that nothing is taken from it
# unless named. Each package is installed as NAME/trixie, together with the libc packages it
# needs; `-t trixie` is never used because it would also replace python3 and systemd.
set -euo pipefail
#
# Usage: setup.sh [demo|test|bench]   (default: test)
#   demo   what the demo needs: the packages to build the binaries and run a private containerd
#   test   and the test matrix's second containerd (2.1.9), cargo-deny, the CNI plugins
#   bench  and cargo-criterion
# Which package is needed by what, and why, is scripts/lib/packages.sh.
level=${1:-test}
case $level in
  demo | test | bench) ;;
  *) echo "setup.sh: unknown level '$level' (demo, test or bench)" >&2; exit 2 ;;
esac

if [ "$(id -u)" != 0 ]; then
  echo "setup.sh: must run as root (it installs packages)" >&2
  exit 1
fi
. "$(dirname "$0")/lib/packages.sh"

mapfile -t LEVEL_PKGS < <(packages_for "$level")
# The node VM's and Docker's packages are installed apart, below (they come from other suites).
PKGS=()
for p in "${LEVEL_PKGS[@]}" "${BASE_USED[@]}"; do
  [[ " ${NODE_VM[*]} ${DOCKER_NEWER[*]} " == *" $p "* ]] || PKGS+=("$p")
done

missing() {
  local p
  for p in "$@"; do
    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' || return 0
  done
  return 1
}

export DEBIAN_FRONTEND=noninteractive
codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")

if missing "${PKGS[@]}"; then
  if [ "$codename" = bookworm ]; then
    if [ ! -f /etc/apt/sources.list.d/trixie.sources ]; then
      cat >/etc/apt/sources.list.d/trixie.sources <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    fi
    cat >/etc/apt/preferences.d/trixie-pin <<'PIN'
Package: *
Pin: release n=trixie
Pin-Priority: 100
PIN
    apt-get update -q
    plain=()
    for p in "${PKGS[@]}"; do
      [[ " ${DEMO_NEWER[*]} " == *" $p "* ]] || plain+=("$p")
    done
    want=("${DEMO_NEWER[@]/%//trixie}" "${BOOKWORM_BASE_FROM_TRIXIE[@]/%//trixie}" "${plain[@]}")
    # Debian 13's libc breaks what is tied to Debian 12's exact version (locales, libc6-dbg,
    # and through them dpkg-dev, build-essential, valgrind, postgresql: apt removed those on
    # a fresh machine). An installed package the install would remove is taken from Debian 13
    # too, where its Debian 13 version installs beside the rest; one that does not (Debian
    # 13's postgresql is another major version, whose dependencies Debian 12 lacks) is left
    # to be kept by the others (postgresql-15 stays once locales is Debian 13's). Whatever
    # would still be removed stops the set-up, naming it, instead of going (--no-remove).
    installs() { apt-get -s install --no-install-recommends "$@" >/dev/null 2>&1; }
    for _ in 1 2 3 4 5 6; do
      mapfile -t removed < <(apt-get -s install --no-install-recommends "${want[@]}" 2>/dev/null |
        awk '$1 == "Remv" { print $2 }')
      [ "${#removed[@]}" != 0 ] || break
      added=0
      for p in "${removed[@]}"; do
        [[ $(apt-cache madison "$p" 2>/dev/null) == *" trixie/"* ]] || continue
        if installs "${want[@]}" "$p/trixie"; then
          want+=("$p/trixie")
          added=1
        fi
      done
      [ "$added" = 1 ] || break
    done
    if ! apt-get install -y -q --no-install-recommends --no-remove "${want[@]}"; then
      echo "setup.sh: installing Debian 13's WasmEdge and libc would remove installed packages that have no Debian 13 version (above); nothing was removed" >&2
      exit 1
    fi
  else
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${PKGS[@]}"
  fi
fi

# containerd's own service is never used: the harness starts a private containerd.
if command -v systemctl >/dev/null 2>&1 && systemctl is-enabled containerd >/dev/null 2>&1; then
  systemctl disable --now containerd >/dev/null 2>&1 || true
fi

# Docker Engine for the Docker tests (test and bench levels): Debian 13's docker.io and
# docker-cli as NAME/trixie (Debian 13's own suite on Debian 13; the pinned source above on
# Debian 12), only when missing (naming an installed package would upgrade it). apt adds
# tini; whatever else it would upgrade or remove stops the set-up, naming it. The package
# starts its service on install (invoke-rc.d, or systemd): a policy-rc.d that forbids it is
# put in place for the install where the machine has none, and a systemd machine's units are
# disabled and stopped. The tests start a dockerd of their own (tests/common/docker.rs).
if [ "$level" != demo ] && missing "${DOCKER_NEWER[@]}"; then
  apt-get update -q
  docker_want=("${DOCKER_NEWER[@]/%//trixie}")
  sim=$(apt-get -s install --no-install-recommends "${docker_want[@]}")
  # `Inst NAME [OLD] (NEW ...)`: a bracket is an upgrade of an installed package.
  changed=$(awk '$1 == "Remv" || ($1 == "Inst" && $3 ~ /^\[/) { print $2 }' <<<"$sim" | tr '\n' ' ')
  if [ -n "$changed" ]; then
    echo "setup.sh: installing ${docker_want[*]} would upgrade or remove: $changed; nothing was installed" >&2
    exit 1
  fi
  policy=/usr/sbin/policy-rc.d
  own_policy=
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# setup.sh: no service starts while it installs Docker\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    own_policy=1
  fi
  set +e
  apt-get install -y -q --no-install-recommends --no-remove "${docker_want[@]}"
  rc=$?
  set -e
  [ -z "$own_policy" ] || rm -f "$policy"
  [ "$rc" = 0 ] || exit "$rc"
fi
# Nor at boot: the package enables its units and its init script (systemctl disable works
# without a running systemd too).
if [ "$level" != demo ]; then
  if command -v systemctl >/dev/null 2>&1; then
    now=
    [ ! -d /run/systemd/system ] || now=--now
    systemctl disable $now docker.service docker.socket >/dev/null 2>&1 || true
  fi
  if [ -x /etc/init.d/docker ] && command -v update-rc.d >/dev/null 2>&1; then
    update-rc.d docker disable >/dev/null 2>&1 || true
  fi
fi

# A second containerd, 2.x, for the test matrix (scripts/test.sh runs the tests that talk to
# containerd against both). Debian unstable's package, pinned by version and checksum, and
# only extracted under $CONTAINERD2_DIR: dpkg does not know it, so it replaces no file of the
# 1.7 package, and no service is installed or started. apt fetches it (and checks Debian's
# signatures on the way) through a private sid source list under /var/cache, which leaves
# the machine's own sources alone. The .deb leaves Debian's pool when sid moves on: then
# this fails, and the pin below is moved to the version sid ships.
CONTAINERD2_VERSION=2.1.9+ds1-5
CONTAINERD2_SHA256=2dda86ce7033fd612fc50e136679d8174ccad680eb29cd4611e0d2a1b84cf591
CONTAINERD2_DIR=/opt/containerd-2.1.9
if [ "$level" != demo ] && [ "$(cat "$CONTAINERD2_DIR/.deb-version" 2>/dev/null)" != "$CONTAINERD2_VERSION" ]; then
  apt_dir=/var/cache/wasmedge-aot-shim/apt-sid
  mkdir -p "$apt_dir"/{etc/sources.list.d,etc/preferences.d,lists/partial,cache/archives/partial,debs}
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian sid main" \
    >"$apt_dir/etc/sources.list"
  apt_private=(
    -o "Dir::Etc=$apt_dir/etc" -o "Dir::Etc::sourcelist=$apt_dir/etc/sources.list"
    -o "Dir::Etc::sourceparts=$apt_dir/etc/sources.list.d" -o "Dir::State::Lists=$apt_dir/lists"
    -o "Dir::Cache=$apt_dir/cache" -o "Dir::State::status=/dev/null" -o Debug::NoLocking=1
    -o APT::Sandbox::User=root
  )
  apt-get -q "${apt_private[@]}" update
  (cd "$apt_dir/debs" && rm -f containerd_*.deb &&
    apt-get -q "${apt_private[@]}" download "containerd=$CONTAINERD2_VERSION")
  deb=$(ls "$apt_dir"/debs/containerd_*.deb)
  if ! echo "$CONTAINERD2_SHA256  $deb" | sha256sum --check --status; then
    echo "setup.sh: $deb does not have the pinned sha256 $CONTAINERD2_SHA256" >&2
    exit 1
  fi
  rm -rf "$CONTAINERD2_DIR.tmp"
  dpkg-deb -x "$deb" "$CONTAINERD2_DIR.tmp"
  echo "$CONTAINERD2_VERSION" >"$CONTAINERD2_DIR.tmp/.deb-version"
  rm -rf "$CONTAINERD2_DIR"
  mv "$CONTAINERD2_DIR.tmp" "$CONTAINERD2_DIR"
  rm -rf "$apt_dir"
fi

# The node VM's host side (scripts/node-vm.sh): QEMU and debootstrap, at the test and bench
# levels, only what is missing (naming an installed package would upgrade it). Where apt
# knows bookworm (Debian 12, also with trixie pinned beside it), they come from
# bookworm-backports: bookworm's qemu-system-x86 7.2 would remove the base image's qemu-utils
# 10.0.2 from backports. That source is in a private source list and private package lists
# under /var/cache, as for sid above: the machine's own apt sources and lists are untouched.
if [ "$level" != demo ]; then
  node_vm_missing=()
  for p in "${NODE_VM[@]}"; do
    missing "$p" && node_vm_missing+=("$p")
  done
  if [ "${#node_vm_missing[@]}" != 0 ]; then
    if apt-cache policy | grep -q ',n=bookworm,'; then
      apt_dir=/var/cache/wasmedge-aot-shim/apt-bookworm-backports
      mkdir -p "$apt_dir/lists/partial"
      { cat /etc/apt/sources.list 2>/dev/null || true
        echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm-backports main"
      } >"$apt_dir/sources.list"
      # The machine's lists as a start: update then fetches backports' and what changed.
      cp -p /var/lib/apt/lists/*_Packages* /var/lib/apt/lists/*Release* "$apt_dir/lists/" 2>/dev/null || true
      apt_bpo=(
        -o "Dir::Etc::sourcelist=$apt_dir/sources.list" -o "Dir::State::Lists=$apt_dir/lists"
        -o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache= -o APT::Sandbox::User=root
        -o DPkg::Lock::Timeout=600
      )
      apt-get -q "${apt_bpo[@]}" update
      apt-get install -y -q --no-install-recommends "${apt_bpo[@]}" -t bookworm-backports "${node_vm_missing[@]}"
      rm -rf "$apt_dir"
    else
      apt-get update -q
      apt-get install -y -q --no-install-recommends "${node_vm_missing[@]}"
    fi
  fi
fi

# cargo-criterion runs the benchmarks; install once, from crates.io.
if [ "$level" = bench ] && ! command -v cargo-criterion >/dev/null 2>&1; then
  cargo install --locked cargo-criterion >/dev/null 2>&1 || echo "setup.sh: cargo-criterion not installed (benchmarks still run with cargo bench)" >&2
fi

# cargo-deny enforces deny.toml in every test run (licences, bans, sources), so it is not
# optional: pinned, built from crates.io with its own lock file, and skipped when that very
# version is installed.
CARGO_DENY_VERSION=0.20.2
if [ "$level" != demo ] && [ "$(cargo deny --version 2>/dev/null)" != "cargo-deny $CARGO_DENY_VERSION" ]; then
  cargo install --locked --version "$CARGO_DENY_VERSION" cargo-deny
fi

second=
[ "$level" = demo ] || second=" and $("$CONTAINERD2_DIR/usr/bin/containerd" --version | awk '{print $3}') ($CONTAINERD2_DIR)"
[ "$level" = demo ] || second="$second, Docker $(/usr/sbin/dockerd --version | awk '{print $3}' | tr -d ,)"
echo "setup.sh ($level): $(wasmedge --version 2>/dev/null | head -1), containerd $(containerd --version | awk '{print $3}')$second, $(clang-19 --version | head -1)"
