#!/usr/bin/env bash
# cli_send_consume.sh - black-box test of `txmq send` and `txmq consume`
# against a real txmqd on an ephemeral loopback port: bodies from the
# command line and standard input (text, multi-line, binary), tags, keys,
# properties, --json, TXMQ_SERVER, options anywhere; consume with -n,
# --timeout, --tags filters, --from earliest|latest|OFFSET, acknowledgement
# (a group does not see a message twice; another group sees everything),
# a waiting consumer woken by a send, transactional messages becoming
# visible only once committed, and what survives a restart of txmqd.
#
# txmqd runs with one queue per topic so that a topic's order is the order
# of the sends.
#
#   bash tests/integration/cli_send_consume.sh BUILD/bin
set -euo pipefail
# shellcheck source=tests/integration/cli_lib.bash
source "$(dirname "${BASH_SOURCE[0]}")/cli_lib.bash"
cli_init "${1:-}" cli-consume

cat >"$work/scripts/pay.lua" <<'LUA'
function executeLocalTransaction(msg, arg)
  if arg == "rollback" then return txmq.ROLLBACK end
  return txmq.COMMIT
end
function checkLocalTransaction(msg) return txmq.UNKNOWN end
LUA
cat >"$work/txmqd.conf.lua" <<'LUA'
return { default_queues = 1, sync = "always" }
LUA
start_txmqd -c "$work/txmqd.conf.lua"
S=(--server "$server")

echo "# send"
run "$txmq" "${S[@]}" send orders "hello world"
expect "send" 0
check "send prints msg_id, topic, qid, qoff" \
  grep -qxE 'msg_id=[0-9a-f]{32} topic=orders qid=0 qoff=0' "$out"
run "$txmq" send orders second --tags TagA --keys "k1 k2" --prop a=1 --prop b=x=y --json "${S[@]}"
expect "send --json with options after the arguments" 0
same "send --json" "$(jl "$out" 'local o = lines[1]
print(#o.msg_id, o.topic, o.qid, o.qoff)')" "32	orders	0	1"
printf 'line one\nline two' >"$work/body.txt"
run "$txmq" "${S[@]}" send orders - --tags TagB <"$work/body.txt"
expect "send - reads standard input" 0
printf '\xff\xfe\x00bin' >"$work/body.bin"
run env TXMQ_SERVER="$server" "$txmq" send orders - <"$work/body.bin"
expect "send through TXMQ_SERVER, a binary body" 0
run "$txmq" "${S[@]}" send orders
expect "send without a body" 0
run "$txmq" "${S[@]}" -- send orders --not-an-option
expect "after --, a body that looks like an option" 0

run "$txmq" "${S[@]}" send
expect "send needs a topic" 2 "txmq: send needs a TOPIC: txmq send TOPIC [BODY|-]"
run "$txmq" "${S[@]}" send orders a b
expect "send takes one body" 2 "txmq: send takes a TOPIC and one BODY; quote a body with spaces"
run "$txmq" "${S[@]}" send .hidden x
expect_err_prefix "send to an invalid topic" 2 "txmq: invalid topic name '.hidden'"
run "$txmq" "${S[@]}" send orders x --prop novalue
expect "--prop needs K=V" 2 "txmq: --prop 'novalue': expected KEY=VALUE"
run "$txmq" "${S[@]}" send orders x --group g
expect "send refuses --group" 2 "txmq: option '--group' does not apply to 'send' (see 'txmq --help')"

echo "# consume"
run "$txmq" "${S[@]}" consume orders --group g1 -n 6
expect "consume -n 6" 0
printf '%s\n' 'hello world' second '"line one\nline two"' '"\xff\xfe\u0000bin"' '' \
  '--not-an-option' >"$work/want"
check "one message per line, in order; others quoted" cmp -s "$out" "$work/want"
run "$txmq" "${S[@]}" consume orders --group g1 --timeout 0.5
expect "consume after everything was acknowledged" 0
check "the group gets nothing twice" test ! -s "$out"

run "$txmq" consume --json orders -n 6 --group g2 "${S[@]}"
expect "consume --json, another group" 0
same "--json: one object per message" "$(out_lines)" 6
same "--json: bodies, text when valid UTF-8" "$(jl "$out" '
for _, o in ipairs(lines) do io.write(o.body_encoding, ":", o.body, "|") end
print()')" "text:hello world|text:second|text:line one
line two|base64://4AYmlu|text:|text:--not-an-option|"
same "--json: the message's fields" "$(jl "$out" 'local o = lines[2]
print(o.topic, o.tags, o.keys, o.props.a, o.props.b, o.qid, o.qoff,
  o.deliveries, #o.id, o.born_ms > 0, o.stored_ms > 0)')" \
  "orders	TagA	k1 k2	1	x=y	0	1	1	32	true	true"

run "$txmq" "${S[@]}" consume orders --group g3 --tags 'TagA || TagB' --timeout 1
expect "consume --tags" 0
printf '%s\n' second '"line one\nline two"' >"$work/want"
check "--tags keeps only the matching messages" cmp -s "$out" "$work/want"

run "$txmq" "${S[@]}" consume orders --group g4 --from 4 -n 1
expect "consume --from OFFSET" 0
same "--from 4 starts at the fifth message" "$(cat "$out")" ""
run "$txmq" "${S[@]}" consume orders --group g4 -n 1
expect "the next consume of that group goes on" 0
same "... with the sixth" "$(cat "$out")" "--not-an-option"

run "$txmq" "${S[@]}" consume orders --group g5 --from latest --timeout 0.5
expect "consume --from latest" 0
check "--from latest skips what is there" test ! -s "$out"

run "$txmq" "${S[@]}" consume orders --group g6 -n 2
expect "consume two of the six" 0
run "$txmq" "${S[@]}" status --json
expect "status --json after consuming" 0
same "status: each consumer group's progress (lag: retained past its offsets)" \
  "$(jl "$out" 'local p = {}
for _, e in ipairs(lines[1].consumer_progress) do p[e.group] = e end
print(p.g1.topic, p.g1.lag, p.g6.lag, p.g6.inflight, p.g6.queues >= 1)')" \
  "orders	0	4	0	true"

echo "# a waiting consumer, --timeout"
start=$(date +%s%N)
run "$txmq" "${S[@]}" consume orders --group g5 --timeout 1
elapsed=$((($(date +%s%N) - start) / 1000000))
expect "consume --timeout with nothing to read" 0
check "it waited about a second (${elapsed} ms)" test "$elapsed" -ge 900 -a "$elapsed" -lt 10000
timeout 60 "$txmq" "${S[@]}" consume orders --group g5 -n 1 --timeout 20 >"$work/waiter.out" 2>"$work/waiter.err" &
waiter=$!
sleep 0.5
run "$txmq" "${S[@]}" send orders "wake up"
expect "send while a consumer waits" 0
st=0
wait "$waiter" || st=$?
same "the waiting consumer exits 0" "$st" 0
same "the waiting consumer got the message" "$(cat "$work/waiter.out")" "wake up"

echo "# a topic nothing was sent to yet"
run "$txmq" "${S[@]}" consume fresh-topic --group f1 --timeout 0.5
expect "consume of a topic that does not exist yet" 0
check "... prints nothing" test ! -s "$out"
timeout 60 "$txmq" "${S[@]}" consume fresh-topic --group f2 --from latest -n 1 --timeout 20 \
  >"$work/waiter.out" 2>"$work/waiter.err" &
waiter=$!
sleep 0.5
run "$txmq" "${S[@]}" send fresh-topic "the first one"
expect "the first send to the topic" 0
st=0
wait "$waiter" || st=$?
same "a consumer waiting for the topic exits 0" "$st" 0
same "... with its first message, even --from latest" "$(cat "$work/waiter.out")" "the first one"

echo "# transactions become visible only once committed"
run "$txmq" "${S[@]}" tx send --group pay payments "paid 1"
expect "tx send commit" 0
run "$txmq" "${S[@]}" tx send --group pay payments "never seen" --arg rollback
expect "tx send rollback" 0
run "$txmq" "${S[@]}" tx send --group pay payments "paid 2"
expect "tx send commit again" 0
run "$txmq" "${S[@]}" consume payments --group p1 --timeout 1
expect "consume the transactional topic" 0
printf '%s\n' "paid 1" "paid 2" >"$work/want"
check "committed messages only" cmp -s "$out" "$work/want"

echo "# usage errors"
run "$txmq" "${S[@]}" consume orders
expect "consume needs --group" 2 "txmq: consume needs --group G (the consumer group)"
run "$txmq" "${S[@]}" consume --group g
expect "consume needs a topic" 2 "txmq: consume needs one TOPIC: txmq consume TOPIC --group G"
run "$txmq" "${S[@]}" consume orders --group g -n 0
expect "consume -n 0" 2 "txmq: -n 0: expected at least 1 message"
run "$txmq" "${S[@]}" consume orders --group g -n x
expect "consume -n x" 2 "txmq: -n 'x': expected a non-negative integer"
run "$txmq" "${S[@]}" consume orders --group g --timeout soon
expect "consume --timeout soon" 2 "txmq: --timeout 'soon': expected seconds (e.g. 5 or 0.5)"
run "$txmq" "${S[@]}" consume orders --group g --from yesterday
expect "consume --from yesterday" 2 "txmq: --from 'yesterday': expected earliest, latest or an offset"
run "$txmq" "${S[@]}" consume orders --group g --keys k
expect "consume refuses --keys" 2 "txmq: option '--keys' does not apply to 'consume' (see 'txmq --help')"

echo "# restart: messages and a group's progress survive"
stop_txmqd
start_txmqd -c "$work/txmqd.conf.lua"
S=(--server "$server")
run "$txmq" "${S[@]}" consume orders --group g1 -n 1 --timeout 5
expect "consume after a restart" 0
same "g1 goes on where it stopped" "$(cat "$out")" "wake up"
run "$txmq" "${S[@]}" consume orders --group fresh -n 1
expect "a new group after a restart" 0
same "starts from the earliest message" "$(cat "$out")" "hello world"

echo "# the server goes away while a consumer waits"
timeout 60 "$txmq" "${S[@]}" consume orders --group gone --from latest >"$work/gone.out" 2>"$work/gone.err" &
waiter=$!
sleep 0.5
stop_txmqd
st=0
wait "$waiter" || st=$?
same "the consumer fails" "$st" 1
same "with one line on stderr" "$(wc -l <"$work/gone.err" | tr -d ' ')" 1
check "that says what happened" grep -qE '^txmq: consume: ' "$work/gone.err"
cli_finish cli_send_consume
