#!/usr/bin/env bash
# check-packages.sh: fails when the build, the tests or the fixtures use a file of a Debian
# package that scripts/setup.sh does not install and a fresh machine of this kind does not
# have, naming the package and the file. Run by scripts/test.sh after the build, so that a
# package installed by hand on the machine that needs it turns that machine's CI red, not
# the next new user's first run (libseccomp-dev, issue 22).
#
# What "used" means, each read from the build itself:
#   - the shared libraries the binaries load (ldd), and the development link each was linked
#     through (libX.so, the -dev package's symlink);
#   - the libraries build scripts ask to link (cargo:rustc-link-lib in target/*/build/*/output)
#     and the system headers they read (their cargo:rerun-if-changed paths: bindgen's);
#   - the commands the tests run (Command::new("...") in the workspace's Rust code) and the
#     ones the scripts run (TOOLS in scripts/lib/packages.sh), where PATH finds them;
#   - the fixtures' Wasm toolchain: wasi-libc's libc.a and clang's wasm32 runtime library.
# What is allowed: scripts/lib/base-image-packages.txt (the base image), setup.sh's lists
# at every level (scripts/lib/packages.sh) and every package those depend on, as installed.
#
# Usage: check-packages.sh [--packages FILE]     (default: scripts/lib/packages.sh)
#        check-packages.sh --self-test           the check fails, naming it, without
#                                                libseccomp-dev in setup's lists
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd -P)

packages_file=scripts/lib/packages.sh
case ${1:-} in
  --packages) packages_file=$2 ;;
  --self-test)
    # The package the build links (-lseccomp) taken out of setup's lists: the check must
    # fail and name it, as it would have on the machine where it was installed by hand.
    tmp=$(mktemp)
    trap 'rm -f "$tmp"' EXIT
    sed -E 's/(^|[[:space:]])libseccomp-dev([[:space:]]|$)/\1\2/' scripts/lib/packages.sh >"$tmp"
    if out=$("$0" --packages "$tmp" 2>&1); then
      echo "check-packages self-test: passed without libseccomp-dev in setup's lists" >&2
      exit 1
    fi
    if ! grep -q '^check-packages: libseccomp-dev ' <<<"$out"; then
      printf 'check-packages self-test: failed, but without naming libseccomp-dev:\n%s\n' "$out" >&2
      exit 1
    fi
    echo "check-packages self-test: without libseccomp-dev in setup's lists the check fails naming it"
    exit 0
    ;;
  "") ;;
  *) echo "usage: $0 [--packages FILE | --self-test]" >&2; exit 2 ;;
esac
# shellcheck source=lib/packages.sh
. "$packages_file"

# --- what is allowed -----------------------------------------------------------------------
declare -A allowed=()
while read -r name _; do
  allowed[$name]=base
done <scripts/lib/base-image-packages.txt
setup_pkgs=("${BASE_USED[@]}" "${BOOKWORM_BASE_FROM_TRIXIE[@]}")
mapfile -t -O "${#setup_pkgs[@]}" setup_pkgs < <(packages_for bench)
for p in "${setup_pkgs[@]}"; do allowed[$p]=setup; done
# What setup's packages pull in, as this machine has them installed: Depends and Pre-Depends,
# each alternative that is installed, a virtual package as the installed packages that
# provide it (libwasmedge0 depends on libspdlog1.15-fmt10, which libspdlog1.15 provides).
while read -r p; do
  allowed[$p]=${allowed[$p]:-dependency}
done < <(
  dpkg-query -W -f='${db:Status-Status}\t${Package}\t${Provides}\t${Depends}, ${Pre-Depends}\n' |
    awk -F'\t' -v roots="${setup_pkgs[*]}" '
      function names(list, out,   n, i, parts, name) {
        n = split(list, parts, /[,|]/)
        for (i = 1; i <= n; i++) {
          name = parts[i]
          sub(/^[ \t]+/, "", name); sub(/[ \t(:].*$/, "", name)
          if (name != "") out[name] = 1
        }
      }
      $1 == "installed" {
        installed[$2] = 1; deps[$2] = $4
        delete prov; names($3, prov)
        for (v in prov) providers[v] = providers[v] " " $2
      }
      END {
        n = split(roots, queue, " "); head = 1
        while (head <= n) {
          p = queue[head++]
          if (p in seen || !(p in installed)) continue
          seen[p] = 1; print p
          delete d; names(deps[p], d)
          for (q in d) {
            if (q in installed) queue[++n] = q
            if (q in providers) { m = split(providers[q], via, " "); for (i = 1; i <= m; i++) queue[++n] = via[i] }
          }
        }
      }'
)

# --- what is used --------------------------------------------------------------------------
declare -A why=() # file -> what uses it
use() { why[$1]=${why[$1]:-$2}; }

bins=()
for profile in debug release; do
  for b in containerd-shim-wasmedge-v1 wasmedge-shim-runner wasmedge-shimctl; do
    [ -x "target/$profile/$b" ] && bins+=("target/$profile/$b")
  done
done
if [ "${#bins[@]}" = 0 ]; then
  echo "check-packages: no binary under target/ (run cargo build --workspace --bins first)" >&2
  exit 1
fi
for b in "${bins[@]}"; do
  while read -r lib path; do
    use "$path" "$b loads $lib"
  done < <(ldd "$b" | awk '$2 == "=>" && $3 ~ /^\// { print $1, $3 }')
  # The development link the build linked each direct dependency through: libX.so for
  # libX.so.N (the -dev package's symlink).
  while read -r lib; do
    dev=$(gcc -print-file-name="${lib%%.so*}.so")
    [ "${dev#/}" = "$dev" ] || use "$(realpath -s "$dev")" "$b links $lib"
  done < <(readelf -d "$b" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')
done

shopt -s nullglob
outputs=(target/*/build/*/output)
shopt -u nullglob
if [ "${#outputs[@]}" != 0 ]; then
  while IFS= read -r line; do
    case $line in
      *rustc-link-lib=static=*) ;; # built by the crate itself, under target/
      *rustc-link-lib=*)
        name=${line##*=}
        file=$(gcc -print-file-name="lib$name.so")
        [ "${file#/}" != "$file" ] || file=$(gcc -print-file-name="lib$name.a")
        if [ "${file#/}" = "$file" ]; then
          echo "check-packages: a build script links -l$name, which the linker does not find" >&2
          exit 1
        fi
        use "$(realpath -s "$file")" "a build script links -l$name" ;;
      *rerun-if-changed=/*)
        file=${line#*rerun-if-changed=}
        case $file in
          "$repo"/* | "$HOME"/.cargo/* | "$HOME"/.rustup/*) ;;
          *) [ -e "$file" ] && use "$file" "a build script reads it" ;;
        esac ;;
    esac
  done < <(cat "${outputs[@]}" | grep -E '^cargo::?(rustc-link-lib|rerun-if-changed)=' | sort -u)
fi

# The commands: those the Rust code runs by name, and the scripts' list.
mapfile -t commands < <(
  git ls-files -z -- '*.rs' | xargs -0 grep -hoE 'Command::new\("[A-Za-z0-9_.+-]+"\)' |
    sed -E 's/.*\("(.*)"\)/\1/' | sort -u
)
for c in "${commands[@]}" "${TOOLS[@]}"; do
  [[ " ${NOT_PACKAGED[*]} " == *" $c "* ]] && continue
  if ! path=$(type -P "$c"); then
    echo "check-packages: $c is run (by a test or a script) and is not on PATH: add its package to scripts/lib/packages.sh, or the command to NOT_PACKAGED with the reason" >&2
    exit 1
  fi
  use "$(readlink -f "$path")" "runs $c"
done

# The fixtures' Wasm toolchain (tests/fixtures/build.sh): wasi-libc and clang's builtins.
for flag in -print-file-name=libc.a -print-libgcc-file-name; do
  file=$(clang-19 --target=wasm32-wasi --sysroot=/usr "$flag")
  [ "${file#/}" = "$file" ] || use "$(realpath -s "$file")" "the fixtures' wasm32 toolchain"
done

# --- the check ------------------------------------------------------------------------------
# dpkg knows files by the path its package ships: on a merged-/usr system a library found at
# /lib/... may be shipped as /usr/lib/..., and the other way round.
owner() {
  local f=$1 alt out
  case $f in
    /usr/*) alt=${f#/usr} ;;
    *) alt=/usr$f ;;
  esac
  for p in "$f" "$(readlink -f "$f")" "$alt"; do
    out=$(dpkg-query -S "$p" 2>/dev/null | grep -v '^diversion' | head -1) || continue
    [ -n "$out" ] && { echo "${out%%: *}" | cut -d, -f1 | sed 's/:.*//'; return; }
  done
  return 1
}

status=0
checked=0
for f in "${!why[@]}"; do
  checked=$((checked + 1))
  for d in "${NOT_DPKG[@]}"; do
    [[ $f != "$d"/* ]] || continue 2
  done
  if ! pkg=$(owner "$f"); then
    echo "check-packages: $f (${why[$f]}) belongs to no Debian package: it was installed by hand" >&2
    status=1
    continue
  fi
  if [ -z "${allowed[$pkg]:-}" ]; then
    echo "check-packages: $pkg is needed ($f: ${why[$f]}) but scripts/setup.sh does not install it and a fresh machine does not have it: add it to scripts/lib/packages.sh" >&2
    status=1
  fi
done
[ "$status" = 0 ] && echo "check-packages: the $checked files the build and the tests use all come from packages setup.sh installs or the base image has"
exit "$status"
