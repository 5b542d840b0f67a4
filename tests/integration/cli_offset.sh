#!/usr/bin/env bash
# cli_offset.sh - black-box test of `txmq offset get|set` and of `consume
# --from OFFSET` on a topic of several queues, against a real txmqd on an
# ephemeral loopback port: a group's committed offset per queue (none
# before it reads), moved back to read the same messages again and forward
# for a group that never read, kept across a restart; --from OFFSET applied
# to every queue, for the group's first read only; a consumer whose reader
# stops reading (`| head`) ends quietly and acknowledges nothing it could
# not print; `peek`, which reads without a group; `topic create` with a
# queue count and `topic list`, kept across the restart; usage errors (exit
# 2, before any connection) and the server's refusals (exit 1).
#
# txmqd runs with two queues per topic; where each message went is read
# from the --json answer of its send (qid, qoff), so that the checks do not
# depend on how the server spreads messages over the queues.
#
#   bash tests/integration/cli_offset.sh BUILD/bin
set -euo pipefail
# shellcheck source=tests/integration/cli_lib.bash
source "$(dirname "${BASH_SOURCE[0]}")/cli_lib.bash"
cli_init "${1:-}" cli-offset

cat >"$work/txmqd.conf.lua" <<'LUA'
return { default_queues = 2 }
LUA
start_txmqd -c "$work/txmqd.conf.lua"
S=(--server "$server")

# bodies FILE FILTER: the bodies of the --json messages in FILE for which
# the Lua expression FILTER (over o, a message) holds, sorted, one line.
bodies() {
  jl "$1" "local t = {}
for _, o in ipairs(lines) do if $2 then t[#t + 1] = o.body end end
table.sort(t) print(table.concat(t, ' '))"
}

echo "# six messages over two queues"
: >"$work/sent"
for i in 1 2 3 4 5 6; do
  run "$txmq" "${S[@]}" send orders "m$i" --json
  expect "send m$i" 0
  jl "$out" "local o = lines[1]
print(string.format('{\"qid\":%d,\"qoff\":%d,\"body\":\"m$i\"}', o.qid, o.qoff))" >>"$work/sent"
done
same "both queues hold messages" "$(jl "$work/sent" 'local n = {[0] = 0, [1] = 0}
for _, o in ipairs(lines) do n[o.qid] = n[o.qid] + 1 end
print(n[0] > 0 and n[1] > 0)')" "true"
# How many messages each queue holds: where a group that read all stops.
read -r n0 n1 <<<"$(jl "$work/sent" 'local n = {[0] = 0, [1] = 0}
for _, o in ipairs(lines) do n[o.qid] = n[o.qid] + 1 end
print(n[0], n[1])')"

echo "# offset get before the group reads"
run "$txmq" "${S[@]}" offset get orders --group g
expect "offset get of a group that never read" 0
printf '%s\n' "topic=orders group=g qid=0 offset=-" "topic=orders group=g qid=1 offset=-" >"$work/want"
check "one line per queue, '-' for no offset" cmp -s "$out" "$work/want"
run "$txmq" "${S[@]}" offset get orders --group g --json
expect "offset get --json" 0
same "--json: one object per queue, offset null" "$(jl "$out" '
for _, o in ipairs(lines) do io.write(o.topic, " ", o.group, " ", o.qid, " ", tostring(o.offset), "|") end
print()')" "orders g 0 nil|orders g 1 nil|"

echo "# consume four, offsets past them"
run "$txmq" "${S[@]}" consume orders --group g -n 4 --json
expect "consume -n 4" 0
cp "$out" "$work/first.json"
read -r c0 c1 <<<"$(jl "$work/first.json" 'local n = {[0] = 0, [1] = 0}
for _, o in ipairs(lines) do n[o.qid] = n[o.qid] + 1 end
print(n[0], n[1])')"
same "four consumed" "$((c0 + c1))" 4
run "$txmq" "${S[@]}" offset get orders --group g
expect "offset get after consuming" 0
printf '%s\n' "topic=orders group=g qid=0 offset=$c0" "topic=orders group=g qid=1 offset=$c1" >"$work/want"
check "each queue's offset is past what was consumed from it ($c0, $c1)" cmp -s "$out" "$work/want"
run "$txmq" "${S[@]}" offset get orders --group g --queue 1 --json
expect "offset get --queue 1 --json" 0
same "--queue: that queue only" "$(jl "$out" 'print(#lines, lines[1].qid, lines[1].offset)')" "1	1	$c1"

echo "# offset set back: the same messages again"
q=$(jl "$work/first.json" 'print(lines[1].qid)')
other=$((1 - q))
if [ "$q" = 0 ]; then cq=$c0; co=$c1; else cq=$c1; co=$c0; fi
run "$txmq" "${S[@]}" offset set orders --group g --queue "$q" 0
expect "offset set --queue $q 0" 0
same "offset set prints the new offset" "$(cat "$out")" "topic=orders group=g qid=$q offset=0"
run "$txmq" "${S[@]}" offset get orders --group g --queue "$q"
same "offset get shows it" "$(cat "$out")" "topic=orders group=g qid=$q offset=0"
run "$txmq" "${S[@]}" consume orders --group g --timeout 1 --json
expect "consume after offset set" 0
cp "$out" "$work/again.json"
same "the $cq consumed from queue $q come again" \
  "$(bodies "$work/again.json" "o.qid == $q and o.qoff < $cq")" \
  "$(bodies "$work/first.json" "o.qid == $q")"
same "... with the rest of queue $q, and of queue $other only what was not consumed" \
  "$(bodies "$work/again.json" "true")" \
  "$(bodies "$work/sent" "o.qid == $q or o.qoff >= $co")"
same "queue $q in order from offset 0" "$(jl "$work/again.json" "local t = {}
for _, o in ipairs(lines) do if o.qid == $q then t[#t + 1] = o.qoff end end
print(table.concat(t, ' '))")" "$(seq -s ' ' 0 $(( (q == 0 ? n0 : n1) - 1 )))"
run "$txmq" "${S[@]}" offset get orders --group g
printf '%s\n' "topic=orders group=g qid=0 offset=$n0" "topic=orders group=g qid=1 offset=$n1" >"$work/want"
check "offsets at the end of both queues" cmp -s "$out" "$work/want"

echo "# offset set forward, for a group that never read: skip a backlog"
run "$txmq" "${S[@]}" offset set orders --group skip --queue 0 "$n0" --json
expect "offset set of a new group" 0
same "--json" "$(jl "$out" 'local o = lines[1] print(o.topic, o.group, o.qid, o.offset)')" "orders	skip	0	$n0"
run "$txmq" "${S[@]}" offset get orders --group skip
printf '%s\n' "topic=orders group=skip qid=0 offset=$n0" "topic=orders group=skip qid=1 offset=-" >"$work/want"
check "only that queue has an offset" cmp -s "$out" "$work/want"
run "$txmq" "${S[@]}" consume orders --group skip --timeout 1 --json
expect "consume of the group" 0
same "queue 0 skipped, queue 1 from its start" "$(bodies "$out" "true")" "$(bodies "$work/sent" "o.qid == 1")"

echo "# consume --from OFFSET: every queue, the first read only"
run "$txmq" "${S[@]}" consume orders --group from1 --from 1 --timeout 1 --json
expect "consume --from 1" 0
same "from offset 1 of each queue" "$(bodies "$out" "true")" "$(bodies "$work/sent" "o.qoff >= 1")"
run "$txmq" "${S[@]}" offset set orders --group from1 --queue 0 0
expect "offset set back" 0
run "$txmq" "${S[@]}" consume orders --group from1 --from 1 --timeout 1 --json
expect "consume --from 1 again" 0
same "--from is ignored once the group has read: the offsets count" \
  "$(bodies "$out" "true")" "$(bodies "$work/sent" "o.qid == 0")"

echo "# a reader that stops reading"
# The reader closes its end of the pipe before the consumer starts: every
# write meets a closed pipe.
set +e
{ wait_until 10 test -e "$work/reader-gone"; exec "$txmq" "${S[@]}" consume orders --group gone --timeout 2; } 2>"$err" |
  { exec 0<&-; touch "$work/reader-gone"; }
st=${PIPESTATUS[0]}
set -e
same "consume into a closed pipe: exit 0, nothing on stderr" "$st/$(head -c 200 "$err")" "0/"
run "$txmq" "${S[@]}" offset get orders --group gone
printf '%s\n' "topic=orders group=gone qid=0 offset=0" "topic=orders group=gone qid=1 offset=0" >"$work/want"
check "... and acknowledged nothing" cmp -s "$out" "$work/want"
set +e
"$txmq" "${S[@]}" consume orders --group head --timeout 1 2>"$err" | head -n 1 >"$out"
st=${PIPESTATUS[0]}
set -e
same "consume | head -1: exit 0, nothing on stderr" "$st/$(head -c 200 "$err")" "0/"
same "... one message" "$(out_lines)" 1

echo "# the server's refusals"
run "$txmq" "${S[@]}" offset get nope --group g
expect "offset get of a topic that does not exist" 1 "txmq: offset get: topic 'nope' does not exist"
run "$txmq" "${S[@]}" offset get orders --group g --queue 2
expect "offset get of a queue the topic does not have" 1 \
  "txmq: offset get: topic 'orders' has 2 queues (qid 0-1)"
run "$txmq" "${S[@]}" offset set orders --group g --queue 5 1
expect "offset set of a queue the topic does not have" 1 \
  "txmq: offset set: topic 'orders' has 2 queues (qid 0-1)"
run "$txmq" "${S[@]}" offset set nope --group g --queue 0 1
expect "offset set on a topic that does not exist" 1 "txmq: offset set: topic 'nope' does not exist"
run "$txmq" "${S[@]}" offset set orders --group g --queue 0 $((n0 + 1))
expect "offset set past the end of the queue" 1 \
  "txmq: offset set: offset not set: offset $((n0 + 1)) is past the end of orders/0 ($n0): the group would skip messages not yet written"

echo "# usage errors, before any connection"
N=(--server 127.0.0.1:1)
run "$txmq" "${N[@]}" offset
expect "offset without a subcommand" 2 "txmq: offset needs a subcommand: get or set"
run "$txmq" "${N[@]}" offset list orders
expect "an unknown subcommand" 2 "txmq: unknown command 'offset list' (offset get or set)"
run "$txmq" "${N[@]}" offset get --group g
expect "offset get without a topic" 2 \
  "txmq: offset get needs one TOPIC: txmq offset get TOPIC --group G [--queue Q]"
run "$txmq" "${N[@]}" offset get orders
expect "offset get without --group" 2 "txmq: offset get needs --group G (the consumer group)"
run "$txmq" "${N[@]}" offset get .hidden --group g
expect_err_prefix "an invalid topic" 2 "txmq: invalid topic name '.hidden'"
run "$txmq" "${N[@]}" offset get orders --group 'a/b'
expect_err_prefix "an invalid group" 2 "txmq: --group 'a/b': invalid group name"
run "$txmq" "${N[@]}" offset get orders --group g --queue x
expect "--queue x" 2 "txmq: --queue 'x': expected a non-negative integer"
run "$txmq" "${N[@]}" offset get orders --group g --queue 256
expect "--queue 256" 2 "txmq: --queue 256: a topic has at most 256 queues (0-255)"
run "$txmq" "${N[@]}" offset get orders --group g --tags a
expect "offset get refuses --tags" 2 "txmq: option '--tags' does not apply to 'offset get' (see 'txmq --help')"
run "$txmq" "${N[@]}" offset set orders --group g 3
expect "offset set without --queue" 2 \
  "txmq: offset set needs --queue Q (offsets are per queue; 'txmq offset get' lists them)"
run "$txmq" "${N[@]}" offset set orders --group g --queue 0
expect "offset set without OFFSET" 2 \
  "txmq: offset set needs a TOPIC and an OFFSET: txmq offset set TOPIC --group G --queue Q OFFSET"
run "$txmq" "${N[@]}" offset set orders --group g --queue 0 soon
expect "OFFSET soon" 2 "txmq: OFFSET 'soon': expected a non-negative integer"
run "$txmq" "${N[@]}" offset set orders --group g --queue 0 9223372036854775808
expect "OFFSET past int64" 2 "txmq: OFFSET '9223372036854775808': over the largest offset, 9223372036854775807"
run "$txmq" "${N[@]}" consume orders --group g --queue 0
expect "consume refuses --queue" 2 "txmq: option '--queue' does not apply to 'consume' (see 'txmq --help')"
run "$txmq" --help
check "--help shows offset get and set" \
  grep -qE '^  txmq offset (get TOPIC --group G \[--queue Q\]|set TOPIC --group G --queue Q OFFSET)$' "$out"

echo "# peek: every stored message, nothing consumed or moved"
run "$txmq" "${S[@]}" offset get orders --group g
cp "$out" "$work/offsets-before-peek"
run "$txmq" "${S[@]}" peek orders --json
expect "peek --json" 0
same "peek shows all six, with their queues and offsets" \
  "$(jl "$out" 'local t = {} for _, o in ipairs(lines) do t[#t + 1] = o.qid .. ":" .. o.qoff .. ":" .. o.body end table.sort(t) print(table.concat(t, " "))')" \
  "$(jl "$work/sent" 'local t = {} for _, o in ipairs(lines) do t[#t + 1] = o.qid .. ":" .. o.qoff .. ":" .. o.body end table.sort(t) print(table.concat(t, " "))')"
run "$txmq" "${S[@]}" peek orders --queue 1 --from 1 -n 1
expect "peek --queue 1 --from 1 -n 1" 0
same "one line: qid, qoff, body" "$(cat "$out")" \
  "qid=1 qoff=1 $(bodies "$work/sent" "o.qid == 1 and o.qoff == 1")"
run "$txmq" "${S[@]}" offset get orders --group g
check "peek moved no group's offset" cmp -s "$out" "$work/offsets-before-peek"
run "$txmq" "${S[@]}" peek orders --queue 0 --from 999
expect "peek past the end" 0
same "past the end: nothing" "$(out_lines)" "0"
run "$txmq" "${S[@]}" peek nope
expect "peek of a topic that does not exist" 1 "txmq: peek: topic 'nope' does not exist"
run "$txmq" "${S[@]}" peek orders --queue 5
expect "peek of a queue the topic does not have" 1 "txmq: peek: topic 'orders' has 2 queues (qid 0-1)"
run "$txmq" "${N[@]}" peek orders -n 0
expect "peek -n 0" 2 "txmq: -n 0: nothing to show"
run "$txmq" "${N[@]}" peek orders --group g
expect "peek refuses --group" 2 "txmq: option '--group' does not apply to 'peek' (see 'txmq --help')"

echo "# topic create and list"
run "$txmq" "${S[@]}" topic create payments 3
expect "topic create payments 3" 0
same "topic create answers" "$(cat "$out")" "topic=payments queues=3"
run "$txmq" "${S[@]}" topic create payments 5
expect "topic create of an existing topic" 1 "txmq: topic create: topic 'payments' already exists, with 3 queues"
run "$txmq" "${N[@]}" topic create payments 0
expect "topic create with 0 queues" 2 "txmq: QUEUES 0: a topic has 1 to 256 queues"
run "$txmq" "${S[@]}" send payments p1 --json
expect "send to the created topic" 0
same "its queue is one of three" "$(jl "$out" 'print(lines[1].qid >= 0 and lines[1].qid < 3)')" "true"
run "$txmq" "${S[@]}" topic list --json
expect "topic list --json" 0
same "topic list: queues and messages" \
  "$(jl "$out" 'local t = {} for _, o in ipairs(lines) do t[#t + 1] = o.name .. ":" .. o.queues .. ":" .. o.messages end table.sort(t) print(table.concat(t, " "))')" \
  "orders:2:6 payments:3:1"

echo "# offsets survive a restart"
run "$txmq" "${S[@]}" offset set orders --group g --queue 1 1
expect "offset set before the restart" 0
stop_txmqd
start_txmqd -c "$work/txmqd.conf.lua"
S=(--server "$server")
run "$txmq" "${S[@]}" offset get orders --group g
printf '%s\n' "topic=orders group=g qid=0 offset=$n0" "topic=orders group=g qid=1 offset=1" >"$work/want"
check "offset get after the restart" cmp -s "$out" "$work/want"
run "$txmq" "${S[@]}" topic list
expect "topic list after the restart" 0
check "the created topic kept its three queues" grep -qE '^payments +3 +1 +0$' "$out"
run "$txmq" "${S[@]}" consume orders --group g --timeout 1 --json
expect "consume after the restart" 0
same "goes on from the offset set" "$(bodies "$out" "true")" "$(bodies "$work/sent" "o.qid == 1 and o.qoff >= 1")"
stop_txmqd
cli_finish cli_offset
