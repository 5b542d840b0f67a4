#!/usr/bin/env bash
# log-demo/run.sh - txmq's storage in under a minute: store orders, read
# them back, crash a writer with kill -9 in the middle of its stream,
# recover, and prove that every message the writer was told is durable is
# there. Then check and dump the commit log with the `txmq` tool.
#
#   examples/log-demo/run.sh          build (in build/) and run
#   BUILD_DIR=... examples/log-demo/run.sh
#   KEEP=1 examples/log-demo/run.sh   keep ./demo-data afterwards for a look
#
# Exits 0 only if every check held.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$here"

# shellcheck source=tests/deps.sh
source "$here/tests/deps.sh"
txmq_install_deps

build="${BUILD_DIR:-$here/build}"
echo "== build ($build)"
cmake -S "$here" -B "$build" >/dev/null
cmake --build "$build" -j "$(nproc 2>/dev/null || echo 2)" --target txmq_cli log_demo >/dev/null
bin="$build/bin"

data="$here/demo-data"
store="$data/store"
acks="$data/acks.txt"
writer_pid=""

cleanup() {
  if [ -n "$writer_pid" ] && kill -0 "$writer_pid" 2>/dev/null; then
    kill -9 "$writer_pid" 2>/dev/null || true
    wait "$writer_pid" 2>/dev/null || true
  fi
  if [ "${KEEP:-0}" = 1 ]; then
    echo "(data kept in $data)"
  else
    rm -rf "$data"
  fi
}
trap cleanup EXIT

rm -rf "$data"
mkdir -p "$data"
passed=0
failed=0
check() { # check DESCRIPTION COMMAND...
  local what=$1
  shift
  if "$@"; then
    echo "   ok: $what"
    passed=$((passed + 1))
  else
    echo "   FAILED: $what"
    failed=$((failed + 1))
  fi
}

echo
echo "== 1. store 10 orders through the store (topic orders, sync=always)"
check "10 orders stored" "$bin/log-demo" put "$store" --count 10

echo
echo "== 2. read them back"
show_out="$data/show.txt"
check "store reopens and lists the topic" \
  bash -c 'set -o pipefail; "$1" show "$2" --topic orders | tee "$3"' _ "$bin/log-demo" "$store" "$show_out"
check "all 10 orders are listed" test "$(grep -c 'keys=order-' "$show_out")" = 10

echo
echo "== 3. a writer appends orders nonstop; kill -9 it mid-stream"
"$bin/log-demo" writer "$store" --acks "$acks" --inflight 32 --seconds 30 \
  >"$data/writer.out" 2>&1 &
writer_pid=$!
# Wait (at most 20 s) for a few hundred acknowledgements, then crash it.
for _ in $(seq 1 200); do
  n=$( [ -f "$acks" ] && wc -l <"$acks" || echo 0 )
  [ "$n" -ge 300 ] && break
  kill -0 "$writer_pid" 2>/dev/null || break
  sleep 0.1
done
still_running=0
kill -0 "$writer_pid" 2>/dev/null && still_running=1
kill -9 "$writer_pid" 2>/dev/null || true
wait "$writer_pid" 2>/dev/null || true
writer_pid=""
acked=$( [ -f "$acks" ] && wc -l <"$acks" || echo 0 )
echo "   writer killed after $acked acknowledged appends"
check "the writer was still writing when killed" test "$still_running" = 1
check "it had acknowledged at least 300 appends" test "$acked" -ge 300

echo
echo "== 4. reopen: recovery, then read back every acknowledged message"
check "every acknowledged message reads back intact" \
  bash -c 'set -o pipefail; "$1" check "$2" --acks "$3" | tee "$4"' _ "$bin/log-demo" "$store" "$acks" "$data/check.txt"

echo
echo "== 5. txmq log verify"
check "the log verifies clean" \
  bash -c 'set -o pipefail; "$1" log verify "$2" | tee "$3"' _ "$bin/txmq" "$store" "$data/verify.txt"

echo
echo "== 6. txmq log dump -n 5"
check "the log dumps" "$bin/txmq" log dump "$store" -n 5

echo
echo "== summary"
echo "   crash: writer killed with SIGKILL after $acked acknowledged appends"
echo "   $(grep -m1 '^recovery: ' "$data/check.txt" || echo 'recovery: (no output)')"
echo "   $(grep -m1 '^check: ' "$data/check.txt" || echo 'check: (no output)')"
echo "   verify: $(sed -n 1p "$data/verify.txt" 2>/dev/null | sed 's/^[^:]*: //')"
if [ "$failed" = 0 ]; then
  echo "== demo: all $passed checks held"
else
  echo "== demo: $failed of $((passed + failed)) checks FAILED"
  exit 1
fi
