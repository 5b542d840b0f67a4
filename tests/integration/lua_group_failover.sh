#!/usr/bin/env bash
# lua_group_failover.sh - a producer group of separate processes (the Lua
# module): a member is killed with kill -9 right after its half message is
# stored, inside its local transaction, before it answers; the server's
# check goes to another member process of the group, which answers from
# the group's database; consumers see the message exactly when that
# decision is COMMIT, and never when it is ROLLBACK.
# Not registered in the sanitizer build (an ASan module cannot be loaded
# into Debian's lua5.4).
set -euo pipefail
source "$(dirname "$0")/cli_lib.bash"
cli_init "$1" lua-group
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
build="$(cd "$1/.." && pwd)"
[ -f "$build/lua/txmq/core.so" ] || { echo "FAIL: $build/lua/txmq/core.so is not built"; exit 1; }
export LUA_CPATH="$build/lua/?.so;;" LUA_PATH="$repo/lua/?.lua;;"
export GROUP_DB="$work/db"
mkdir -p "$GROUP_DB"
member="$here/lua_group/member.lua"
pids=()
cleanup_members() {
  local p
  for p in "${pids[@]}"; do kill -KILL -- "-$p" 2>/dev/null || true; done
}
trap 'cleanup_members; cli_cleanup' EXIT

# The first check 3 s after the half message: time to look before it.
cat >"$work/conf.lua" <<'LUA'
return { tx_timeout_ms = 3000, check_interval_ms = 500, check_retry_ms = 200 }
LUA
start_txmqd -c "$work/conf.lua"

# The standby member, in its own process group.
setsid lua5.4 "$member" "$server" standby-member standby "$work/stop" \
  >"$work/standby.out" 2>"$work/standby.err" &
pids+=($!)
wait_until 10 grep -qx ready "$work/standby.out" || { echo "FAIL: the standby member did not start"; cat "$work/standby.err"; exit 1; }

# crash KEY STATE: a member sends KEY in a transaction, records STATE in
# the group's database and is killed (its whole process group) before it
# answers. Prints the transaction id.
crash() {
  local o="$work/crash-$1.out"
  CRASH_AFTER_LOCAL=1 setsid lua5.4 "$member" "$server" "crasher-$1" send "$1" "$2" \
    >"$o" 2>"$work/crash-$1.err" &
  local pid=$!
  pids+=("$pid")
  if ! wait_until 10 grep -q "^stored .* $1\$" "$o"; then
    echo "FAIL: the member sending $1 did not reach its local transaction" >&2
    cat "$work/crash-$1.err" >&2
    return 1
  fi
  kill -KILL -- "-$pid"
  wait "$pid" 2>/dev/null || true
  awk '{print $2}' "$o"
}

tx_paid=$(crash k-paid paid)
tx_failed=$(crash k-failed failed)
check "the killed members answered nothing" test ! -s "$work/crash-k-paid.err"

# Before any check: neither order is visible, both are pending.
run "$txmq" --server "$server" consume GroupOrders --group shipping --timeout 0.5
same "nothing is visible before the check" "$(out_lines)" 0
run "$txmq" --server "$server" --json tx show "$tx_paid"
check "the paid order is pending" grep -q '"state":"pending"' "$out"
run "$txmq" --server "$server" --json tx show "$tx_failed"
check "the failed order is pending" grep -q '"state":"pending"' "$out"

tx_state() { "$txmq" --server "$server" --json tx show "$1" | grep -o '"state":"[a-z_]*"' | head -n 1; }
tx_is() { test "$(tx_state "$1")" = "\"state\":\"$2\""; }
wait_until 20 tx_is "$tx_paid" committed || true
wait_until 20 tx_is "$tx_failed" rolled_back || true
same "the paid order is committed by a check" "$(tx_state "$tx_paid")" '"state":"committed"'
same "the failed order is rolled back by a check" "$(tx_state "$tx_failed")" '"state":"rolled_back"'

run "$txmq" --server "$server" tx show "$tx_paid"
check "the standby member decided the paid order" \
  grep -qE '^  [0-9-]+T[0-9:.]+Z  commit .*who=standby-member' "$out"
run "$txmq" --server "$server" tx show "$tx_failed"
check "the standby member decided the failed order" \
  grep -qE '^  [0-9-]+T[0-9:.]+Z  rollback .*who=standby-member' "$out"

run "$txmq" --server "$server" consume GroupOrders --group shipping --timeout 1
same "exactly the committed order is delivered" "$(cat "$out")" "order k-paid"

touch "$work/stop"
wait_until 10 grep -q '^checks' "$work/standby.out" || true
same "the standby member answered both checks" "$(sed -n 's/^checks\t//p' "$work/standby.out")" 2
cli_finish lua_group_failover
