#!/usr/bin/env bash
# Installs everything the build, the demo and the tests need on a fresh Debian 12 or 13
# machine, from the package registries only. Idempotent: a second run changes nothing.
#
# On Debian 12 (bookworm) WasmEdge 0.14.1, containerd 1.7 and clang-19 come from Debian 13
# (trixie), added as an apt source pinned at priority 100 so that nothing is taken from it
# unless named. Each package is installed as NAME/trixie, together with the libc packages it
# needs; `-t trixie` is never used because it would also replace python3 and systemd.
set -euo pipefail

if [ "$(id -u)" != 0 ]; then
  echo "setup.sh: must run as root (it installs packages)" >&2
  exit 1
fi

# Taken from trixie on Debian 12: not in bookworm, or too old there (containerd 1.6).
NEWER=(
  libwasmedge-dev wasmedge          # the engine: headers, libwasmedge.so, CLI (AOT via LLVM 19)
  containerd runc                   # the real containerd the tests and the demo drive
)
# What WasmEdge 0.14.1 needs newer than bookworm has; nothing else is upgraded.
BASE=(libc6 libc6-dev libc-bin libc-dev-bin base-files libzstd1 libstdc++6 libgcc-s1)
# In both releases (bookworm has clang-19 and the same LLVM 19 that libwasmedge uses).
PLAIN=(
  clang-19 lld-19 libclang-19-dev   # bindgen for wasmedge-sys, and wasm32-wasi test programs
  libclang-rt-19-dev-wasm32 wasi-libc wabt
  protobuf-compiler libprotobuf-dev # ttrpc / CRI code generation
  util-linux procps                 # nsenter, ps: used by the tests
  containernetworking-plugins       # CNI's loopback plugin: CRI tests' pods with a network of their own
)
PKGS=("${NEWER[@]}" "${PLAIN[@]}")

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
    apt-get install -y -q --no-install-recommends \
      "${NEWER[@]/%//trixie}" "${BASE[@]/%//trixie}" "${PLAIN[@]}"
  else
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${PKGS[@]}"
  fi
fi

# containerd's own service is never used: the harness starts a private containerd.
if command -v systemctl >/dev/null 2>&1 && systemctl is-enabled containerd >/dev/null 2>&1; then
  systemctl disable --now containerd >/dev/null 2>&1 || true
fi

# cargo-criterion runs the benchmarks (issue 6); install once, from crates.io.
if ! command -v cargo-criterion >/dev/null 2>&1 && [ "${SKIP_CARGO_TOOLS:-0}" != 1 ]; then
  cargo install --locked cargo-criterion >/dev/null 2>&1 || echo "setup.sh: cargo-criterion not installed (benchmarks still run with cargo bench)" >&2
fi

# cargo-deny enforces deny.toml in every test run (licences, bans, sources), so it is not
# optional: pinned, built from crates.io with its own lock file, and skipped when that very
# version is installed.
CARGO_DENY_VERSION=0.20.2
if [ "$(cargo deny --version 2>/dev/null)" != "cargo-deny $CARGO_DENY_VERSION" ]; then
  cargo install --locked --version "$CARGO_DENY_VERSION" cargo-deny
fi

echo "setup.sh: $(wasmedge --version 2>/dev/null | head -1), containerd $(containerd --version | awk '{print $3}'), $(clang-19 --version | head -1)"
