#!/usr/bin/env bash
# cli_log_tx.sh - black-box test of `txmq log dump` and `txmq log verify` on
# a log that a real txmqd wrote with transactions: a plain message, then
# three `txmq tx send` whose script commits one, rolls one back and leaves
# one pending (UNKNOWN). After txmqd stops, the offline tool must show each
# half record with its group, producer and message, and each event with its
# name, source, script version and the position of its half record, in text
# and in --json, and verify must count them.
#
# txmqd runs with a first check far away, so no check adds events while the
# test runs.
#
#   bash tests/integration/cli_log_tx.sh BUILD/bin
set -euo pipefail
# shellcheck source=tests/integration/cli_lib.bash
source "$(dirname "${BASH_SOURCE[0]}")/cli_lib.bash"
cli_init "${1:-}" cli-log-tx

cat >"$work/scripts/shop.lua" <<'LUA'
function executeLocalTransaction(msg, arg)
  if arg == "rollback" then return txmq.ROLLBACK end
  if arg == "unknown" then return txmq.UNKNOWN end
  return txmq.COMMIT
end
function checkLocalTransaction(msg)
  return txmq.UNKNOWN
end
LUA
cat >"$work/txmqd.conf.lua" <<'LUA'
return { tx_timeout_ms = 600000, sync = "never" }
LUA
start_txmqd -c "$work/txmqd.conf.lua"
S=(--server "$server")

run "$txmq" "${S[@]}" send orders "a plain message"
expect "send a plain message" 0
# tx_send NAME BODY [ARG]: sets tx_id, msg_id and version from --json.
tx_send() {
  local name=$1 body=$2
  shift 2
  run "$txmq" "${S[@]}" tx send --group shop orders "$body" --json "$@"
  expect "tx send: $name" 0
  tx_id=$(jl "$out" 'print(lines[1].tx_id)')
  msg_id=$(jl "$out" 'print(lines[1].msg_id)')
  version=$(jl "$out" 'print(lines[1].version)')
}
tx_send commit "order 1 paid" --tags paid --keys order-1
commit_tx=$tx_id commit_msg=$msg_id
tx_send rollback "order 2 cancelled" --arg rollback
rollback_tx=$tx_id rollback_msg=$msg_id
tx_send unknown "order 3" --arg unknown
pending_tx=$tx_id pending_msg=$msg_id
check "the script has a version" test -n "$version"
stop_txmqd

data="$work/data"
ts='[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z'
cli_id='txmq-cli:[^ ]+:[0-9]+'

echo "# log verify"
run "$txmq" log verify "$data"
expect "verify of txmqd's log exits 0" 0
check "verify counts 1 msg, 1 topic, 3 tx_half, 3 tx_event" grep -qE \
  "^$data/log: ok, 1 segment, 8 records \(1 msg, 1 topic, 3 tx_half, 3 tx_event, 0 other\), [0-9]+ bytes, positions 0\.\.[0-9]+\$" "$out"
run "$txmq" log verify --json "$data"
same "verify --json counts" "$(jl "$out" 'local v = lines[1]
print(v.status, v.records, v.msgs, v.topics, v.tx_halfs, v.tx_events, v.other)')" \
  "ok	8	1	1	3	3	0"

echo "# log dump"
run "$txmq" log dump "$data"
expect "dump of txmqd's log exits 0" 0
cp "$out" "$work/dump.txt"
# half_of TX: the position of TX's half record in the plain dump.
half_of() {
  sed -nE "s/^record pos=([0-9]+) type=tx_half .* tx=$1 .*/\\1/p" "$work/dump.txt"
}
for t in commit rollback pending; do
  tx_var=${t}_tx msg_var=${t}_msg
  tx=${!tx_var} msg=${!msg_var}
  check "dump: the $t transaction's half record with its group and producer" grep -qE \
    "^record pos=[0-9]+ type=tx_half len=[0-9]+ next=[0-9]+ tx=$tx group=shop producer=$cli_id at=$ts immunity_ms=0 msgs=1\$" \
    "$work/dump.txt"
  check "dump: its message on the next, indented line" test \
    "$(grep -A1 -E "^record .* type=tx_half .* tx=$tx " "$work/dump.txt" | sed -n 2p | grep -cE "^  msg id=$msg topic=orders qid=[0-9]+ ")" = 1
done
check "dump: the committed message's fields" grep -qE \
  "^  msg id=$commit_msg topic=orders qid=[0-9]+ tags=\"paid\" keys=\"order-1\" born=$ts stored=$ts body_len=12 body=text:\"order 1 paid\"\$" \
  "$work/dump.txt"
for pair in commit:commit rollback:rollback pending:unknown; do
  t=${pair%%:*} ev=${pair#*:}
  tx_var=${t}_tx
  tx=${!tx_var}
  check "dump: the $t transaction's event is ev=$ev src=script with the version, pointing at its half" grep -qE \
    "^record pos=[0-9]+ type=tx_event len=[0-9]+ next=[0-9]+ tx=$tx ev=$ev src=script ver=$version who=$cli_id count=0 at=$ts prev=$(half_of "$tx")\$" \
    "$work/dump.txt"
done
check "dump: the plain message is a msg record" grep -qE \
  '^record pos=[0-9]+ type=msg .* body=text:"a plain message"$' "$work/dump.txt"
check "dump: no record is left as hex" test "$(grep -c 'payload=hex:' "$work/dump.txt" || true)" = 0

echo "# log dump --json"
run "$txmq" log dump --json "$data"
expect "dump --json of txmqd's log exits 0" 0
same "dump --json: the committed transaction's half and event" "$(jl "$out" '
local half, ev
for _, o in ipairs(lines) do
  if o.tx_half and o.tx_half.tx == "'"$commit_tx"'" then half = o end
  if o.tx_event and o.tx_event.tx == "'"$commit_tx"'" then ev = o end
end
local h, m, e = half.tx_half, half.tx_half.msgs[1], ev.tx_event
print(half.type, half.type_id, h.group, h.producer:match("^txmq%-cli:") ~= nil,
  h.at_ms > 0, h.immunity_ms, #h.msgs, m.id, m.topic, m.tags, m.keys, m.body)
print(ev.type, ev.type_id, e.ev, e.src, e.ver, e.who == h.producer, e.count,
  e.at_ms >= h.at_ms, e.prev == half.pos)')" \
  "tx_half	16	shop	true	true	0	1	$commit_msg	orders	paid	order-1	order 1 paid
tx_event	17	commit	script	$version	true	0	true	true"
same "dump --json: the events of the three transactions" "$(jl "$out" '
local t = {}
for _, o in ipairs(lines) do
  if o.tx_event then t[#t + 1] = o.tx_event.tx .. "=" .. o.tx_event.ev .. "/" .. o.tx_event.src end
end
print(table.concat(t, " "))')" \
  "$commit_tx=commit/script $rollback_tx=rollback/script $pending_tx=unknown/script"

cli_finish cli_log_tx
