#!/usr/bin/env bash
# Builds the libFuzzer targets (TXMQ_BUILD_FUZZ=ON, clang) in their own
# build directory and runs each one for a bounded time on a copy of its
# seed corpus, then prints per target: executions, executions per second,
# inputs that added coverage, and findings. Exits non-zero if any target
# found a crash, a leak, a timeout or an out-of-memory; the input that did
# it is kept in the findings directory (its path is printed).
#
#   tests/fuzz/run.sh                      every target, 20 s each
#   FUZZ_SECONDS=600 tests/fuzz/run.sh     a longer run
#   tests/fuzz/run.sh codec log            some targets only
#
# Environment:
#   FUZZ_SECONDS   time per target (default 20)
#   FUZZ_BUILD     build directory (default build-fuzz)
#   FUZZ_FINDINGS  where crashing inputs are kept (default
#                  $FUZZ_BUILD/findings, ignored by git)
#   FUZZ_JOBS      build jobs (default: the number of CPUs)
#   CC             the compiler; must be clang (default clang)
#
# The committed corpus (tests/fuzz/corpus) is never written to: each run
# works on a copy in a temporary directory, which is removed afterwards.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$here"

seconds="${FUZZ_SECONDS:-20}"
build="${FUZZ_BUILD:-$here/build-fuzz}"
findings="${FUZZ_FINDINGS:-$build/findings}"
jobs="${FUZZ_JOBS:-$(nproc 2>/dev/null || echo 2)}"
targets=("$@")
if ((${#targets[@]} == 0)); then
  targets=(client codec frame log record)
fi

# shellcheck source=tests/deps.sh
source "$here/tests/deps.sh"
txmq_install_deps "${TXMQ_FUZZ_DEB_PACKAGES[@]}"

echo "== configure $build (clang, TXMQ_BUILD_FUZZ=ON)"
CC="${CC:-clang}" cmake -S "$here" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DTXMQ_BUILD_FUZZ=ON -DTXMQ_BUILD_TESTS=OFF -DTXMQ_BUILD_BENCH=OFF >/dev/null
echo "== build $build"
cmake --build "$build" -j "$jobs" --target txmq_fuzz >/dev/null

work="$(mktemp -d "${TMPDIR:-/tmp}/txmq-fuzz-run.XXXXXX")"
trap 'rm -rf "$work"' EXIT
# The targets make scratch directories under TMPDIR; a tmpfs spares the
# disk when there is one.
if [ -d /dev/shm ] && [ -w /dev/shm ]; then
  export TMPDIR=/dev/shm
fi
mkdir -p "$findings"
# Leaks are findings; any UBSan report aborts the target.
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"

failed=0
summary=()
for t in "${targets[@]}"; do
  bin="$build/fuzz/fuzz_$t"
  [ -x "$bin" ] || { echo "no such target: $t" >&2; exit 2; }
  corpus="$work/corpus-$t"
  mkdir -p "$corpus"
  cp "$here/tests/fuzz/corpus/$t/"* "$corpus/"
  dict=()
  [ -f "$here/tests/fuzz/$t.dict" ] && dict=(-dict="$here/tests/fuzz/$t.dict")
  log="$work/$t.log"
  echo "== fuzz_$t for ${seconds}s"
  set +e
  "$bin" "${dict[@]}" -max_total_time="$seconds" -timeout=60 -rss_limit_mb=4096 \
    -print_final_stats=1 -artifact_prefix="$findings/$t-" "$corpus" >"$log" 2>&1
  rc=$?
  set -e
  execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")"
  rate="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")"
  added="$(sed -n 's/^stat::new_units_added: *//p' "$log")"
  cov="$(grep -oE 'cov: [0-9]+' "$log" | tail -1 | cut -d' ' -f2)"
  found="$(sed -n 's/.*Test unit written to //p' "$log")"
  if [ "$rc" -ne 0 ] || [ -n "$found" ]; then
    failed=1
    echo "   FINDING (exit $rc):"
    grep -E 'ERROR: |SUMMARY: |runtime error|fuzz harness:|^[a-z].* check failed' \
      "$log" | head -5 | sed 's/^/   /'
    [ -n "$found" ] && echo "   input kept: $found"
    cp "$log" "$findings/$t.log"
    echo "   full log: $findings/$t.log"
    result="FINDING"
  else
    result="ok"
  fi
  line="$(printf '%-8s %10s execs %8s/s  cov %5s  new %6s  %s' "$t" \
    "${execs:-?}" "${rate:-?}" "${cov:-?}" "${added:-?}" "$result")"
  echo "   $line"
  summary+=("$line")
done

echo "== fuzz summary (${seconds}s per target)"
printf '   %s\n' "${summary[@]}"
if [ "$failed" -ne 0 ]; then
  echo "== fuzzing found problems; inputs in $findings" >&2
  exit 1
fi
echo "== no findings"
