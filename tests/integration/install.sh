#!/usr/bin/env bash
# install.sh - the install rules work for a host program: install the build
# into a temporary prefix, then build a program outside the tree against it
# with find_package(txmq) (shared and static) and with pkg-config, and the
# embedded-gateway example with pkg-config, and run each.
# Usage: install.sh BUILD/bin
set -euo pipefail
bin="$(cd "$1" && pwd)"
build="$(dirname "$bin")"
src="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/install_host"
tmp="$(mktemp -d "${TMPDIR:-/tmp}/txmq-install.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

cmake --install "$build" --prefix "$tmp/prefix" >/dev/null
test -f "$tmp/prefix/include/txmq/log.h"
test -f "$tmp/prefix/bin/txmq"
libdir="$(dirname "$(find "$tmp/prefix" -name txmq.pc | head -n1)")/.."
libdir="$(cd "$libdir" && pwd)"

# A sanitizer build installs an instrumented library: the host must be
# built and linked with the same sanitizers.
san=""
if grep -q '^TXMQ_SANITIZE:BOOL=ON' "$build/CMakeCache.txt"; then
  san="-fsanitize=address,undefined"
fi
quiet() { # run a command, show its output only if it fails
  local out
  if ! out="$("$@" 2>&1)"; then echo "$out" | tail -n 30 >&2; return 1; fi
}

# CMake package.
quiet cmake -S "$src" -B "$tmp/host" -DCMAKE_PREFIX_PATH="$tmp/prefix" \
  -DCMAKE_C_FLAGS="$san" -DCMAKE_EXE_LINKER_FLAGS="$san"
quiet cmake --build "$tmp/host"
LD_LIBRARY_PATH="$libdir" "$tmp/host/host_cmake" "$tmp/d1" | grep -qx ok
"$tmp/host/host_static" "$tmp/d2" | grep -qx ok
echo "ok: find_package(txmq) shared and static"

# pkg-config.
export PKG_CONFIG_PATH="$libdir/pkgconfig"
# shellcheck disable=SC2046
quiet cc $san -o "$tmp/host_pc" "$src/host.c" $(pkg-config --cflags --libs txmq)
LD_LIBRARY_PATH="$libdir" "$tmp/host_pc" "$tmp/d3" | grep -qx ok
echo "ok: pkg-config txmq"

# The embedded-gateway example, built from its source against the installed
# headers and library as its README says, warnings as errors.
gw="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../examples/embedded-gateway" && pwd)"
# shellcheck disable=SC2046
quiet cc $san -std=c11 -Wall -Wextra -Werror -o "$tmp/gateway" "$gw/main.c" \
  $(pkg-config --cflags --libs txmq)
quiet env LD_LIBRARY_PATH="$libdir" "$tmp/gateway" --scripts "$gw/scripts" "$tmp/d4"
echo "ok: examples/embedded-gateway on the installed library"
echo "install: 3 passed, 0 failed"
