#!/usr/bin/env bash
# No binary links a crate it does not use. For each package, its normal dependency graph
# (what its library and binaries link: dev-dependencies, build scripts and proc macros,
# which run only at build time, are left out) must not contain the crates listed for it.
# Why each line holds is in ARCHITECTURE.md, "Crates and seams". Run by scripts/test.sh;
# fails, naming the path to the crate, when a dependency change breaks a rule.
set -euo pipefail
cd "$(dirname "$0")/.."

RULES=(
  # The shim daemon: containerd execs it for every start and delete, so no WasmEdge (10 ms
  # of dynamic linking per exec) and nothing of the admin tool.
  "wasmedge-aot-shim: wasmedge-sys wasmedge-aot-engine wasmedge-shimctl clap toml_edit tar flate2 wait-timeout anyhow"
  # The runner forks every container process: no async runtime, nothing of containerd (its
  # shim framework or its GRPC client) or of the admin tool; the shim compiles seccomp
  # profiles, the runner only installs them. Nor runc's client: the shim drives runc for
  # Linux containers, the runner forks Wasm ones.
  "wasmedge-shim-runner: wasmedge-aot-shim wasmedge-shimctl containerd-shim containerd-client ttrpc tonic prost tokio clap toml_edit tar sha2 anyhow libseccomp oci-spec cgroups-rs runc"
  # The admin tool links nothing of the shim daemon; it reads images through ctr, not
  # containerd's GRPC client; and no WasmEdge: the runner compiles for its precompile, in
  # the sandbox a start's compile has.
  "wasmedge-shimctl: wasmedge-aot-shim wasmedge-sys wasmedge-aot-engine containerd-shim containerd-client ttrpc tonic tokio libseccomp cgroups-rs runc"
  # The pure layers: the cache knows no engine and no protocol; the protocol and the engine
  # know neither each other nor containerd.
  "wasmedge-aot-cache: wasmedge-sys wasmedge-aot-engine wasmedge-aot-protocol tokio containerd-shim containerd-client"
  "wasmedge-aot-protocol: wasmedge-sys wasmedge-aot-engine tokio containerd-shim containerd-client clap toml_edit"
  "wasmedge-aot-engine: wasmedge-aot-protocol tokio containerd-shim containerd-client clap"
)

status=0
for rule in "${RULES[@]}"; do
  pkg=${rule%%:*}
  tree=(cargo tree --quiet -e normal,no-proc-macro -p "$pkg")
  linked=$("${tree[@]}" --prefix none --format '{p}' | awk '{print $1}' | sort -u)
  # A graph without the package itself was not read: fail rather than pass vacuously.
  if ! grep -qx -- "$pkg" <<<"$linked"; then
    echo "check-deps: could not read the dependency graph of $pkg" >&2
    exit 1
  fi
  for crate in ${rule#*:}; do
    if grep -qx -- "$crate" <<<"$linked"; then
      echo "check-deps: $pkg links $crate, which it must not; through:" >&2
      "${tree[@]}" -i "$crate" >&2
      status=1
    fi
  done
done
[ "$status" = 0 ] && echo "check-deps: ${#RULES[@]} packages link none of the crates they must not"
exit "$status"
