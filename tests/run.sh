#!/usr/bin/env bash
# The test command: installs what is missing (Debian packages), configures,
# builds and runs every ctest label (unit, valgrind, lua, integration, fault, bench in
# smoke mode), then does it again with AddressSanitizer + UBSan, then runs
# each fuzz target for a short while (tests/fuzz/run.sh, clang).
#
#   tests/run.sh                 everything
#   TXMQ_SANITIZE_PASS=0 tests/run.sh   skip the sanitizer pass
#   TXMQ_FUZZ_PASS=0 tests/run.sh       skip the fuzz pass
#   FUZZ_SECONDS=600 tests/run.sh       fuzz each target longer (default 20,
#                                       about two minutes for all of them)
#   BUILD_DIR=... tests/run.sh   build somewhere else (default: build/)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"

# shellcheck source=tests/deps.sh
source "$here/tests/deps.sh"
if [ "${TXMQ_FUZZ_PASS:-1}" != 0 ]; then
  txmq_install_deps "${TXMQ_FUZZ_DEB_PACKAGES[@]}"
else
  txmq_install_deps
fi

jobs="$(nproc 2>/dev/null || echo 2)"
build="${BUILD_DIR:-$here/build}"

run_pass() {
  local dir=$1; shift
  echo "== configure $dir ($*)"
  cmake -S "$here" -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo "$@" >/dev/null
  echo "== build $dir"
  cmake --build "$dir" -j "$jobs"
  echo "== ctest $dir"
  (cd "$dir" && ctest --output-on-failure --timeout 900 -j "$jobs")
}

run_pass "$build"
if [ "${TXMQ_SANITIZE_PASS:-1}" != 0 ]; then
  # Leak checks on; abort on the first UBSan report.
  export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}"
  export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
  run_pass "${build}-asan" -DTXMQ_SANITIZE=ON
fi
if [ "${TXMQ_FUZZ_PASS:-1}" != 0 ]; then
  # Its own build directory, built with clang.
  FUZZ_SECONDS="${FUZZ_SECONDS:-20}" FUZZ_BUILD="${build}-fuzz" \
    "$here/tests/fuzz/run.sh"
fi
echo "== all tests passed"
