# The Debian packages the project needs, by what needs them, and why. One list for the one
# script that installs them (scripts/setup.sh) and for the guard that checks the build needs
# nothing else (scripts/check-packages.sh). Sourced, not run.
#
# A package belongs here when a build, a test, the demo or a benchmark uses a file of it: a
# library the binaries link (readelf -d), a library or header the build reads (`-l` flags,
# build scripts' inputs), or a command a script or test runs. What the base image of this
# machine kind already has is in scripts/lib/base-image-packages.txt; those are named here only
# where the project depends on them by name (BASE_USED), so that the guard can say so.

# demo: build the three binaries, run a Wasm app through a private containerd.
# Taken from Debian 13 on Debian 12 (not there, or too old: containerd 1.6).
DEMO_NEWER=(
  libwasmedge-dev wasmedge          # the engine: headers, libwasmedge.so (the runner links it), CLI
  containerd runc                   # the containerd the demo and the tests drive, and runc for Linux containers
)
DEMO_PLAIN=(
  libseccomp-dev                    # libseccomp.so: the shim compiles seccomp profiles (-lseccomp)
  clang-19 lld-19 libclang-19-dev   # bindgen for wasmedge-sys (libclang), wasm32-wasi test programs
  libclang-rt-19-dev-wasm32 wasi-libc wabt   # the fixtures: C and WAT to Wasm (clang-19, wat2wasm)
  protobuf-compiler libprotobuf-dev # ttrpc / CRI code generation (protoc)
)
# test: the demo's, and the second containerd of the matrix (extracted by setup.sh, not a
# dpkg package), cargo-deny (from crates.io), and:
TEST_PLAIN=(
  containernetworking-plugins       # CNI's loopback plugin: CRI tests' pods with a network of their own
)
# test and bench also: Docker Engine, whose dockerd the Docker tests (tests/docker.rs) start
# on a containerd of their own. Debian 13's 26.1 on Debian 12 too (bookworm's 20.10 has no
# containerd image store, which Wasm images need): setup.sh installs them apart, as
# NAME/trixie, and stops if that would upgrade or remove anything. Debian 13 ships the client
# apart from the daemon; apt adds only tini (bookworm's) beside them. No docker service runs:
# the tests start dockerd themselves, and setup.sh keeps the package's from starting.
DOCKER_NEWER=(
  docker.io                         # dockerd (/usr/sbin/dockerd)
  docker-cli                        # the client (/usr/bin/docker)
)
# test and bench also: the node VM (scripts/node-vm.sh), a Debian 13 guest with systemd and
# cgroup v2 in which the tests run on a modern node. On Debian 12 these come from
# bookworm-backports: bookworm's own qemu-system-x86 (7.2) would remove the base image's
# qemu-utils (10.0.2 from backports). setup.sh installs them apart from the other lists.
NODE_VM=(
  qemu-system-x86                   # the guest machine: TCG emulation (this KVM cannot boot it), virtio, 9p shares
  debootstrap                       # builds the guest's Debian 13 root from Debian's mirror
  e2fsprogs                         # mkfs.ext4 -d: the guest's root into a disk image (the base image has it)
)
# bench: the tests', and cargo-criterion (from crates.io).

# From the base image, used by name (the guard checks they are still there): readelf and ldd
# (binutils, libc-bin) read the binaries; gcc -static builds the native fixtures (gcc,
# libc6-dev); nsenter, setpriv, mount (util-linux, mount); ps, pkill (procps); ip (iproute2);
# python3 writes the large fixture; dpkg-query, apt-get (dpkg, apt).
BASE_USED=(
  binutils libc-bin gcc libc6-dev util-linux mount procps iproute2 python3 dpkg apt
)

# The commands the scripts run (scripts/, tests/fixtures/build.sh, the benchmarks' inputs),
# which the guard finds on PATH and traces to their package; the Rust code's are read from
# its Command::new("...") calls.
TOOLS=(
  clang-19 wat2wasm gcc readelf ldd protoc   # the build and the fixtures
  python3 unzip                              # the benchmarks' real programs (pip through python3)
  containerd ctr runc wasmedge               # the demo and the tests
  /usr/bin/docker /usr/sbin/dockerd          # the Docker tests, by path: a docker of another origin may come first on PATH
  nsenter setpriv ip mount umount            # the tests
  apt-get dpkg-query dpkg-deb sha256sum      # setup.sh
  qemu-system-x86_64 debootstrap mkfs.ext4   # the node VM
)
# Commands run by name that no package of the node provides, and why.
NOT_PACKAGED=(
  no-such-program-x   # a test of what the admin tool says when a program is missing
)
# Where the base image and setup.sh put what dpkg does not know: Rust's toolchain and cargo's
# tools (cargo-deny), the base image's Python (pyenv), the matrix's second containerd.
NOT_DPKG=("$HOME/.cargo" "$HOME/.rustup" "$HOME/.pyenv" /opt/containerd-2.1.9)

# What Debian 12's packages of Debian 13's need newer than bookworm has (libc and the C++
# runtime WasmEdge 0.14.1 is built against); nothing else is upgraded.
BOOKWORM_BASE_FROM_TRIXIE=(libc6 libc6-dev libc-bin libc-dev-bin base-files libzstd1 libstdc++6 libgcc-s1)

# packages_for LEVEL: the dpkg packages of a set-up level (demo, test, bench), one per line.
packages_for() {
  printf '%s\n' "${DEMO_NEWER[@]}" "${DEMO_PLAIN[@]}"
  case $1 in
    test | bench) printf '%s\n' "${TEST_PLAIN[@]}" "${DOCKER_NEWER[@]}" "${NODE_VM[@]}" ;;
  esac
}
