#!/usr/bin/env bash
# The test command: installs what is missing (Debian packages), configures,
# builds and runs every ctest label (unit, valgrind, lua, integration, fault, bench in
# smoke mode), then does it again with AddressSanitizer + UBSan.
#
#   tests/run.sh                 everything
#   TXMQ_SANITIZE_PASS=0 tests/run.sh   skip the sanitizer pass
#   BUILD_DIR=... tests/run.sh   build somewhere else (default: build/)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"

# shellcheck source=tests/deps.sh
source "$here/tests/deps.sh"
txmq_install_deps

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
echo "== all tests passed"
