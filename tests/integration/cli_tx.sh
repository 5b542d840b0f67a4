#!/usr/bin/env bash
# cli_tx.sh - black-box test of the transaction and admin commands of the
# `txmq` tool against a real txmqd on an ephemeral loopback port:
#   tx send (commit, rollback, unknown, a failing handler, --arg, --json),
#   tx list (--group, --json, empty), tx show (plain, --json, unknown id),
#   tx resume (parked -> pending, refused when not parked), tx commit and
#   tx rollback (an operator's decision on a pending or parked transaction:
#   recorded as the operator's, delivered or not; refused the other way
#   once decided, and to a producer), reload (a new
#   version that then decides, a broken script refused), status (plain and
#   --json), with exit codes and one-line errors.
#
# txmqd runs with a short transaction timeout and check interval and two
# checks at most, so an UNKNOWN transaction parks within a second.
#
#   bash tests/integration/cli_tx.sh BUILD/bin
set -euo pipefail
# shellcheck source=tests/integration/cli_lib.bash
source "$(dirname "${BASH_SOURCE[0]}")/cli_lib.bash"
cli_init "${1:-}" cli-tx

cat >"$work/scripts/pay.lua" <<'LUA'
-- arg says what to answer; checks cannot decide (until reloaded)
function executeLocalTransaction(msg, arg)
  if arg == "rollback" then return txmq.ROLLBACK end
  if arg == "unknown" then return txmq.UNKNOWN end
  if arg == "boom" then error("the handler failed on purpose") end
  if msg.body ~= "pay order 42" and arg == nil then return txmq.ROLLBACK end
  return txmq.COMMIT
end
function checkLocalTransaction(msg)
  return txmq.UNKNOWN
end
LUA
cat >"$work/txmqd.conf.lua" <<'LUA'
return {
  tx_timeout_ms = 300,
  check_interval_ms = 300,
  max_checks = 2,
  sync = "never",
}
LUA
start_txmqd -c "$work/txmqd.conf.lua"
S=(--server "$server")

echo "# tx send"
run "$txmq" "${S[@]}" tx send --group pay orders "pay order 42"
expect "tx send commit" 0
check "tx send prints msg_id, tx_id, state, version" \
  grep -qE '^msg_id=[0-9a-f]{32} tx_id=[0-9a-f]{32} state=committed version=[0-9a-f]+$' "$out"
committed_tx=$(sed -n 's/.* tx_id=\([0-9a-f]*\) .*/\1/p' "$out")

run "$txmq" tx send orders "pay order 43" --json --arg rollback --group pay "${S[@]}"
expect "tx send rollback, options after the arguments" 0
same "tx send --json: one line" "$(out_lines)" 1
same "tx send --json fields" "$(jl "$out" 'local o = lines[1]
print(o.state, o.group, o.topic, #o.msg_id, #o.tx_id, #o.version > 0)')" \
  "rolled_back	pay	orders	32	32	true"

run "$txmq" "${S[@]}" tx send --group pay orders "order 44" --arg unknown --json
expect "tx send unknown" 0
same "UNKNOWN leaves it pending" "$(jl "$out" 'print(lines[1].state)')" "pending"
parked_tx=$(jl "$out" 'print(lines[1].tx_id)')

run "$txmq" "${S[@]}" tx send --group pay orders "order 45" --arg boom
expect "tx send with a failing handler" 0
check "a failing handler leaves it pending and says why" \
  grep -qE '^msg_id=[0-9a-f]{32} tx_id=[0-9a-f]{32} state=pending version=[0-9a-f]+ diag=".*failed on purpose.*"$' "$out"
boom_tx=$(sed -n 's/.* tx_id=\([0-9a-f]*\) .*/\1/p' "$out")

run "$txmq" "${S[@]}" tx send --group nosuch orders "x"
expect_err_prefix "tx send to a group without a script" 1 "txmq: tx send: "
check "tx send failure prints nothing on stdout" test ! -s "$out"
run "$txmq" "${S[@]}" tx send orders "x"
expect "tx send needs --group" 2 "txmq: tx send needs --group G (the producer group whose script runs)"
run "$txmq" "${S[@]}" tx send --group pay
expect "tx send needs a topic" 2 "txmq: tx send needs a TOPIC: txmq tx send --group G TOPIC [BODY|-]"
run "$txmq" "${S[@]}" tx send --group 'bad group' orders x
expect_err_prefix "tx send with an invalid group" 2 "txmq: --group 'bad group': invalid group name"
run "$txmq" "${S[@]}" tx send --group pay orders x --from 3
expect "tx send refuses --from" 2 "txmq: option '--from' does not apply to 'tx send' (see 'txmq --help')"

echo "# tx list / tx show: the UNKNOWN ones park after two checks"
parked() {
  "$txmq" "${S[@]}" tx list --json >"$work/list.json" 2>/dev/null &&
    [ "$(jl "$work/list.json" 'local n = 0
for _, t in ipairs(lines) do if t.state == "parked" then n = n + 1 end end
print(n)')" = 2 ]
}
check "both pending transactions park within 10 s" wait_until 10 parked
run "$txmq" "${S[@]}" tx list --json
expect "tx list --json" 0
same "tx list --json: one object per transaction" "$(out_lines)" 2
same "tx list --json fields" "$(jl "$out" '
table.sort(lines, function(a, b) return a.tx_id < b.tx_id end)
for _, t in ipairs(lines) do
  io.write(t.state, " ", t.group, " ", t.check_count, " ", t.nmsgs, " ",
    tostring(type(t.born) == "number" and t.born > 0), " ",
    tostring(t.producer:match("^txmq%-cli:") ~= nil), ";")
end
print()')" "parked pay 2 1 true true;parked pay 2 1 true true;"
check "the committed transaction is not listed" \
  test "$(jl "$out" "for _, t in ipairs(lines) do if t.tx_id == '$committed_tx' then print('x') end end")" = ""

run "$txmq" tx list "${S[@]}"
expect "tx list" 0
check "tx list: a header and two rows" test "$(out_lines)" = 3
check "tx list: header" grep -qE '^TX_ID +STATE +GROUP +PRODUCER +CHECKS +MSGS +BORN +NEXT_CHECK$' "$out"
check "tx list: the parked row" grep -qE "^$parked_tx +parked +pay +txmq-cli:[^ ]+ +2 +1 +[0-9-]+T[0-9:.]+Z +-$" "$out"
run "$txmq" "${S[@]}" tx list --group other
expect "tx list --group with nothing" 0
same "tx list --group with nothing says so" "$(cat "$out")" "no pending or parked transactions in group other"
run "$txmq" "${S[@]}" tx list --group other --json
expect "tx list --json with nothing" 0
check "tx list --json with nothing prints nothing" test ! -s "$out"
# -n: the oldest N, and a cut list says so on stderr (the server lists 100
# by default; an operator must not miss the rest).
run "$txmq" "${S[@]}" tx list -n 1
expect "tx list -n 1 of 2" 0 "txmq: tx list: the oldest 1 shown; there are more (-n N, up to 10000)"
check "tx list -n 1: a header and one row" test "$(out_lines)" = 2
run "$txmq" "${S[@]}" tx list -n 1 --json
expect "tx list -n 1 --json of 2" 0 "txmq: tx list: the oldest 1 shown; there are more (-n N, up to 10000)"
same "tx list -n 1 --json: one object" "$(out_lines)" 1
run "$txmq" "${S[@]}" tx list -n 2 --json
expect "tx list -n 2 of 2: nothing cut, nothing said" 0
same "tx list -n 2 --json: two objects" "$(out_lines)" 2
run "$txmq" "${S[@]}" tx list -n 0
expect "tx list -n 0" 2 "txmq: -n 0: expected 1 to 10000 transactions"
run "$txmq" "${S[@]}" tx list -n 10001
expect "tx list -n 10001" 2 "txmq: -n 10001: expected 1 to 10000 transactions"
# An option given twice is refused, not "the last one wins"; an empty
# --server (an unset variable in a script) is not the local default.
run "$txmq" "${S[@]}" tx list --group pay --group other
expect "an option given twice" 2 "txmq: option '--group' given twice"
run "$txmq" "${S[@]}" tx list -n 1 -n 2
expect "-n given twice" 2 "txmq: option '-n' given twice"
run "$txmq" --server "" tx list
expect "an empty --server" 2 "txmq: option '--server' is empty (HOST:PORT)"
run "$txmq" "${S[@]}" tx send --group pay orders "x" --prop k=1 --prop k=2
expect "a property given twice" 2 "txmq: --prop 'k=2': property 'k' given twice"

run "$txmq" "${S[@]}" tx show "$parked_tx"
expect "tx show" 0
check "tx show: state" grep -qx "state: parked" "$out"
check "tx show: group" grep -qx "group: pay" "$out"
check "tx show: history" grep -qx "history:" "$out"
check "tx show: the half event" grep -qE '^  [0-9-]+T[0-9:.]+Z  half ' "$out"
check "tx show: the script's unknown, with its version" \
  grep -qE '^  [0-9-]+T[0-9:.]+Z  unknown +source=script version=[0-9a-f]+ ' "$out"
check "tx show: parked at the maximum" grep -qE '^  [0-9-]+T[0-9:.]+Z  park +source=max_checks' "$out"
run "$txmq" "${S[@]}" tx show "$boom_tx" --json
expect "tx show --json" 0
same "tx show --json: one line" "$(out_lines)" 1
same "tx show --json: summary and history" "$(jl "$out" 'local o = lines[1]
local ev = {}
for _, e in ipairs(o.history) do ev[#ev + 1] = e.event end
print(o.tx.tx_id == "'"$boom_tx"'", o.tx.state, ev[1], ev[#ev], o.re, o.ok)')" \
  "true	parked	half	park	nil	nil"

run "$txmq" "${S[@]}" tx show ffffffffffffffffffffffffffffffff
expect_err_prefix "tx show of an unknown transaction" 1 "txmq: tx show: transaction ffffffffffffffffffffffffffffffff"
# The all-zero id is unknown too, not an empty summary.
run "$txmq" "${S[@]}" tx show 00000000000000000000000000000000
expect_err_prefix "tx show of the all-zero id" 1 "txmq: tx show: transaction 00000000000000000000000000000000"
run "$txmq" "${S[@]}" tx show 1234
expect "tx show with a malformed id" 2 "txmq: tx show: '1234' is not a transaction id (32 hex digits)"
run "$txmq" "${S[@]}" tx show
expect "tx show without an id" 2 "txmq: tx show needs one TXID: txmq tx show TXID"

echo "# tx resume, reload"
run "$txmq" "${S[@]}" tx resume "$committed_tx"
expect "tx resume of a committed transaction" 1 \
  "txmq: tx resume: transaction $committed_tx is committed, not parked"
# While the checks still answer UNKNOWN, a resumed transaction is pending.
run "$txmq" "${S[@]}" tx resume "$boom_tx" --json
expect "tx resume --json" 0
same "tx resume --json" "$(jl "$out" 'print(lines[1].tx_id, lines[1].state)')" "$boom_tx	pending"

echo "# tx commit / tx rollback: an operator's decision"
run "$txmq" "${S[@]}" tx commit "$committed_tx"
expect "tx commit of a committed transaction: the same decision again" 0
same "... prints its state" "$(cat "$out")" "tx_id=$committed_tx state=committed"
run "$txmq" "${S[@]}" tx rollback "$committed_tx"
expect "tx rollback of a committed transaction" 1 \
  "txmq: tx rollback: transaction $committed_tx was already decided the other way: it is committed"
# A pending one (resumed above; its checks still answer UNKNOWN).
run "$txmq" "${S[@]}" tx rollback "$boom_tx" --json
expect "tx rollback of a pending transaction" 0
same "tx rollback --json" "$(jl "$out" 'print(lines[1].tx_id, lines[1].state)')" "$boom_tx	rolled_back"
run "$txmq" "${S[@]}" tx show "$boom_tx" --json
same "the rollback is recorded as the operator's, with its client id" "$(jl "$out" '
local h = lines[1].history
print(lines[1].tx.state, h[#h].event, h[#h].source, h[#h].who:match("^txmq%-cli:") ~= nil)')" \
  "rolled_back	rollback	operator	true"
# A parked one, committed: its message is delivered.
run "$txmq" "${S[@]}" tx send --group pay orders "order 46" --arg unknown --json
expect "tx send unknown, to park" 0
op_tx=$(jl "$out" 'print(lines[1].tx_id)')
op_parked() {
  "$txmq" "${S[@]}" tx show "$op_tx" --json >"$work/show.json" 2>/dev/null &&
    [ "$(jl "$work/show.json" 'print(lines[1].tx.state)')" = parked ]
}
check "it parks within 10 s" wait_until 10 op_parked
run "$txmq" "${S[@]}" tx commit "$op_tx"
expect "tx commit of a parked transaction" 0
same "... prints committed" "$(cat "$out")" "tx_id=$op_tx state=committed"
run "$txmq" "${S[@]}" tx commit "$op_tx"
expect "tx commit again: the same state" 0
run "$txmq" "${S[@]}" consume orders --group opcheck --timeout 1 --json
expect "consume orders" 0
same "the parked one committed by the operator is delivered, the rolled back ones are not" \
  "$(jl "$out" 'local t = {}
for _, o in ipairs(lines) do t[#t + 1] = o.body end
table.sort(t) print(table.concat(t, ","))')" "order 46,pay order 42"
run "$txmq" "${S[@]}" --role producer tx commit "$op_tx"
expect_err_prefix "tx commit needs the admin role" 1 "txmq: tx commit: "
run "$txmq" "${S[@]}" tx commit
expect "tx commit without an id" 2 "txmq: tx commit needs one TXID: txmq tx commit TXID"
run "$txmq" "${S[@]}" tx rollback 12
expect "tx rollback with a malformed id" 2 "txmq: tx rollback: '12' is not a transaction id (32 hex digits)"
run "$txmq" "${S[@]}" tx rollback ffffffffffffffffffffffffffffffff
expect_err_prefix "tx rollback of an unknown transaction" 1 \
  "txmq: tx rollback: transaction ffffffffffffffffffffffffffffffff is unknown"

# A script whose checks commit: the resumed transaction is decided by it.
run "$txmq" "${S[@]}" reload pay --json
expect "reload of an unchanged script" 0
old_version=$(jl "$out" 'print(lines[1].version)')
same "reload --json names the group" "$(jl "$out" 'print(lines[1].group)')" "pay"
sed -i 's/^  return txmq.UNKNOWN$/  return txmq.COMMIT/' "$work/scripts/pay.lua"
run "$txmq" "${S[@]}" reload pay
expect "reload of a changed script" 0
check "reload prints the group and the new version" grep -qE '^group=pay version=[0-9a-f]+$' "$out"
new_version=$(sed -n 's/^group=pay version=//p' "$out")
check "the version changed" test "$new_version" != "$old_version"

run "$txmq" "${S[@]}" tx resume "$parked_tx"
expect "tx resume" 0
# Due at once: the new script's check may have decided it already.
check "tx resume prints the new state" grep -qxE "tx_id=$parked_tx state=(pending|committed)" "$out"
committed_by_check() {
  "$txmq" "${S[@]}" tx show "$parked_tx" --json >"$work/show.json" 2>/dev/null &&
    [ "$(jl "$work/show.json" 'print(lines[1].tx.state)')" = committed ]
}
check "the resumed transaction is committed by the new script's check" wait_until 10 committed_by_check
same "the commit records the script's new version" "$(jl "$work/show.json" '
local h = lines[1].history
print(h[#h].event, h[#h].source, h[#h].version)')" "commit	script	$new_version"

cp "$work/scripts/pay.lua" "$work/pay.lua.good"
echo 'function executeLocalTransaction(msg, arg) return txmq.COMMIT' >"$work/scripts/pay.lua"
run "$txmq" "${S[@]}" reload pay
expect_err_prefix "reload of a broken script" 1 "txmq: reload: reload of 'pay' failed: "
check "the script's diagnostic names the file" grep -q "pay.lua" "$err"
cp "$work/pay.lua.good" "$work/scripts/pay.lua"
run "$txmq" "${S[@]}" tx send --group pay orders "pay order 42" --json
expect "the old version still serves after a failed reload" 0
same "... and commits" "$(jl "$out" 'print(lines[1].state, lines[1].version)')" "committed	$new_version"
run "$txmq" "${S[@]}" reload
expect "reload needs a group" 2 "txmq: reload needs one GROUP: txmq reload GROUP"
run "$txmq" "${S[@]}" reload nosuch
expect_err_prefix "reload of a group without a script" 1 "txmq: reload: "

echo "# status"
run "$txmq" "${S[@]}" status
expect "status" 0
check "status: the server line" grep -qx "server: $server" "$out"
check "status: the version" grep -qE '^version: txmqd [0-9.]+' "$out"
check "status: the topic" grep -qE '^  - name: orders$' "$out"
check "status: transaction counters" grep -qE '^  commits: [0-9]+$' "$out"
run "$txmq" status --json "${S[@]}"
expect "status --json" 0
same "status --json: one line" "$(out_lines)" 1
same "status --json fields" "$(jl "$out" 'local o = lines[1]
print(type(o.uptime_ms), o.sync, o.tx.commits >= 3, o.tx.rollbacks >= 1,
  o.tx.parks >= 2, o.tx.resumes >= 2, o.re, o.ok)')" \
  "number	never	true	true	true	true	nil	nil"
run env TXMQ_SERVER="$server" "$txmq" status --json
expect "status through TXMQ_SERVER" 0
run env TXMQ_SERVER=127.0.0.1:1 "$txmq" status --server "$server"
expect "--server wins over TXMQ_SERVER" 0
run "$txmq" "${S[@]}" status extra
expect "status takes no arguments" 2 "txmq: status takes no arguments"

echo "# usage"
run "$txmq" "${S[@]}" tx
expect "tx needs a subcommand" 2 "txmq: tx needs a subcommand: send, list, show, resume, commit or rollback"
run "$txmq" "${S[@]}" tx frob
expect "unknown tx subcommand" 2 "txmq: unknown command 'tx frob' (tx send, list, show, resume, commit or rollback)"
run "$txmq" --server "no-port-here:" status
expect "a malformed server address" 2 "txmq: invalid server address 'no-port-here:': expected HOST:PORT"
run "$txmq" --server "127.0.0.1:99999" tx list
expect "a port out of range" 2 "txmq: invalid server address '127.0.0.1:99999': expected HOST:PORT"
run "$txmq" "${S[@]}" tx list --tags A
expect "tx list refuses --tags" 2 "txmq: option '--tags' does not apply to 'tx list' (see 'txmq --help')"

stop_txmqd
run "$txmq" "${S[@]}" tx list
expect "tx list with txmqd gone" 1 "txmq: cannot connect to $server: connection refused"
cli_finish cli_tx
