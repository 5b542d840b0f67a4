#!/usr/bin/env bash
# lua_order_payment.sh - runs examples/demo.sh (the order-payment scenario)
# on the build under test, without installing or building anything: a real
# txmqd, the Lua module, LuaSQL's sqlite3 driver. The scenario checks its
# own outcomes in the services' SQLite tables and exits non-zero if one did
# not hold; this test also wants its summary and a run under a minute.
# Not registered in the sanitizer build (an ASan module cannot be loaded
# into Debian's lua5.4).
set -euo pipefail
bin="$(cd "${1:?usage: $0 BIN_DIR}" && pwd)"
repo="$(cd "$(dirname "$0")/../.." && pwd)"
work="$(mktemp -d "${TMPDIR:-/tmp}/txmq-order-payment.XXXXXX")"
trap 'rm -rf "$work"' EXIT

start=$SECONDS
rc=0
BUILD_DIR="$bin/.." SKIP_BUILD=1 DEMO_DATA="$work/demo-data" \
  timeout 120 "$repo/examples/demo.sh" >"$work/out" 2>&1 || rc=$?
took=$((SECONDS - start))
cat "$work/out"

fails=0
expect() { # expect DESCRIPTION COMMAND...
  if "${@:2}"; then echo "ok     $1"; else echo "FAIL   $1"; fails=$((fails + 1)); fi
}
expect "demo.sh exits 0 (got $rc)" test "$rc" = 0
expect "every check held" grep -q "^== order-payment: all [0-9]* checks held" "$work/out"
no_failed() { ! grep -q FAILED "$work/out"; }
expect "no check failed" no_failed
expect "the summary lists the six payments" test "$(grep -cE '^   A[0-9]{4} ' "$work/out")" = 6
expect "it took under a minute ($took s)" test "$took" -lt 60
expect "it left no data behind" test ! -e "$work/demo-data"
[ "$fails" = 0 ] || { echo "FAIL: lua_order_payment: $fails checks failed"; exit 1; }
echo "PASS: lua_order_payment"
