#!/usr/bin/env bash
# cli_auth.sh - black-box test of the `txmq` tool against a txmqd with
# authentication on: with the admin secret in TXMQ_SECRET every command
# works (send, tx send, consume, offset, tx list, tx show, status,
# reload); the tool connects with the least role a command needs, so the
# producer secret runs the producer's commands and status, tx list and
# tx show, and the admin ones are refused; the consumer secret runs
# consume and offset, and status with --role consumer or TXMQ_ROLE; a bad
# role is a usage error; without a secret, or with a wrong one, a command
# fails with exit 1 and one line giving the server's reason; no secret
# reaches the daemon's log.
#
#   bash tests/integration/cli_auth.sh BUILD/bin
set -euo pipefail
# shellcheck source=tests/integration/cli_lib.bash
source "$(dirname "${BASH_SOURCE[0]}")/cli_lib.bash"
cli_init "${1:-}" cli-auth

ADMIN="op3rator-admin-secret"
PRODUCER="producer-app-secret"
CONSUMER="consumer-app-secret"
cat >"$work/scripts/pay.lua" <<'LUA'
function executeLocalTransaction(msg, arg)
  if arg == "unknown" then return txmq.UNKNOWN end
  return txmq.COMMIT
end
function checkLocalTransaction(msg) return txmq.UNKNOWN end
LUA
cat >"$work/txmqd.conf.lua" <<'LUA'
return {
  default_queues = 1,
  auth = {
    admin = os.getenv("TXMQ_TEST_ADMIN"),
    producer = os.getenv("TXMQ_TEST_PRODUCER"),
    consumer = os.getenv("TXMQ_TEST_CONSUMER"),
  },
}
LUA
TXMQ_TEST_ADMIN="$ADMIN" TXMQ_TEST_PRODUCER="$PRODUCER" TXMQ_TEST_CONSUMER="$CONSUMER" \
  start_txmqd -c "$work/txmqd.conf.lua"
S=(--server "$server")

echo "# the admin secret: every command"
export TXMQ_SECRET="$ADMIN"
run "$txmq" "${S[@]}" send orders "paid 1"
expect "send" 0
run "$txmq" "${S[@]}" tx send --group pay orders "paid 2"
expect "tx send" 0
check "tx send committed" grep -q 'state=committed' "$out"
run "$txmq" "${S[@]}" tx send --group pay orders "later" --arg unknown --json
expect "tx send, left pending" 0
pending=$(jl "$out" 'print(lines[1].tx_id)')
run "$txmq" "${S[@]}" consume orders --group ship -n 2 --timeout 5
expect "consume" 0
printf '%s\n' "paid 1" "paid 2" >"$work/want"
check "consume gets the committed messages" cmp -s "$out" "$work/want"
run "$txmq" "${S[@]}" tx list --json
expect "tx list" 0
same "tx list shows the pending transaction" "$(jl "$out" 'print(lines[1].tx_id)')" "$pending"
run "$txmq" "${S[@]}" tx show "$pending"
expect "tx show" 0
run "$txmq" "${S[@]}" offset get orders --group ship
expect "offset get" 0
same "offset get: past the two consumed" "$(cat "$out")" "topic=orders group=ship qid=0 offset=2"
run "$txmq" "${S[@]}" status --json
expect "status" 0
same "status: auth on, nothing refused yet" \
  "$(jl "$out" 'print(lines[1].auth, lines[1].auth_failures)')" "true	0"
run "$txmq" "${S[@]}" reload pay
expect "reload" 0
check "reload prints the version" grep -qE '^group=pay version=[0-9a-f]+$' "$out"

echo "# the producer secret: the producer's commands"
export TXMQ_SECRET="$PRODUCER"
run "$txmq" "${S[@]}" send orders "paid 3"
expect "send with the producer secret" 0
run "$txmq" "${S[@]}" tx send --group pay orders "paid 4"
expect "tx send with the producer secret" 0
run "$txmq" "${S[@]}" status --json
expect "status with the producer secret (the tool asks as producer)" 0
same "... shows the server's state" "$(jl "$out" 'print(lines[1].auth)')" "true"
run "$txmq" "${S[@]}" tx list --json
expect "tx list with the producer secret" 0
same "... lists the pending transaction" "$(jl "$out" 'print(lines[1].tx_id)')" "$pending"
run "$txmq" "${S[@]}" tx show "$pending" --json
expect "tx show with the producer secret" 0
same "... shows it" "$(jl "$out" 'print(lines[1].tx.tx_id, lines[1].tx.state)')" "$pending	pending"
run "$txmq" "${S[@]}" reload pay
expect "reload with the producer secret (the tool asks as admin)" 1 \
  "txmq: cannot connect to $server: the server refused the connection: authentication failed: wrong secret for role \"admin\""
run "$txmq" "${S[@]}" consume orders --group ship -n 1 --timeout 1
expect "consume with the producer secret (the tool asks as consumer)" 1 \
  "txmq: cannot connect to $server: the server refused the connection: authentication failed: wrong secret for role \"consumer\""
run "$txmq" "${S[@]}" --role consumer consume orders --group ship -n 1 --timeout 1
expect "... and with --role consumer" 1 \
  "txmq: cannot connect to $server: the server refused the connection: authentication failed: wrong secret for role \"consumer\""

echo "# the consumer secret: consume and offset; status with --role consumer"
export TXMQ_SECRET="$CONSUMER"
run "$txmq" "${S[@]}" consume orders --group ship -n 2 --timeout 5
expect "consume with the consumer secret" 0
printf '%s\n' "paid 3" "paid 4" >"$work/want"
check "... gets what the producer sent" cmp -s "$out" "$work/want"
run "$txmq" "${S[@]}" offset get orders --group ship --json
expect "offset get with the consumer secret" 0
same "... past the four consumed" "$(jl "$out" 'print(#lines, lines[1].qid, lines[1].offset)')" "1	0	4"
run "$txmq" "${S[@]}" offset set orders --group ship --queue 0 3
expect "offset set with the consumer secret" 0
run "$txmq" "${S[@]}" consume orders --group ship -n 1 --timeout 5
expect "consume after offset set" 0
same "... reads the fourth message again" "$(cat "$out")" "paid 4"
run "$txmq" "${S[@]}" --role consumer status --json
expect "status --role consumer with the consumer secret" 0
same "... shows the server's state" "$(jl "$out" 'print(lines[1].auth)')" "true"
run env TXMQ_ROLE=consumer "$txmq" "${S[@]}" status
expect "status with TXMQ_ROLE=consumer" 0
check "... prints the status" grep -q '^auth: yes$' "$out"
run env TXMQ_ROLE=admin "$txmq" "${S[@]}" --role consumer status
expect "--role wins over TXMQ_ROLE" 0
run "$txmq" "${S[@]}" status
expect "status with the consumer secret, no role named (the tool asks as producer)" 1 \
  "txmq: cannot connect to $server: the server refused the connection: authentication failed: wrong secret for role \"producer\""
run "$txmq" "${S[@]}" --role consumer tx list
expect "tx list --role consumer: the server names the roles it needs" 1 \
  "txmq: tx list: op 'tx.list' needs role \"producer\" or \"admin\"; this connection's role is \"consumer\""

echo "# a bad role is a usage error, before any connection"
run "$txmq" --server 127.0.0.1:1 --role operator status
expect "--role operator" 2 "txmq: --role 'operator': expected producer, consumer or admin"
run env TXMQ_ROLE=root "$txmq" --server 127.0.0.1:1 status
expect "TXMQ_ROLE=root" 2 "txmq: TXMQ_ROLE 'root': expected producer, consumer or admin"
run "$txmq" --server 127.0.0.1:1 send orders x --role
expect "--role without its value" 2 "txmq: option '--role' needs a value"

echo "# no secret, a wrong secret"
unset TXMQ_SECRET
run "$txmq" "${S[@]}" send orders "nope"
expect "send without a secret" 1 \
  "txmq: cannot connect to $server: the server refused the connection: authentication failed: role \"producer\" needs its secret (a string in field 'secret')"
export TXMQ_SECRET="not-the-secret"
run "$txmq" "${S[@]}" status
expect "status with a wrong secret" 1 \
  "txmq: cannot connect to $server: the server refused the connection: authentication failed: wrong secret for role \"producer\""
export TXMQ_SECRET="$ADMIN"
run "$txmq" "${S[@]}" consume orders --group audit -n 4 --timeout 5
expect "consume with the admin secret again" 0
printf '%s\n' "paid 1" "paid 2" "paid 3" "paid 4" >"$work/want"
check "nothing refused was stored" cmp -s "$out" "$work/want"
for r in producer consumer admin; do
  run "$txmq" "${S[@]}" --role "$r" status
  expect "the admin secret serves --role $r" 0
done
run "$txmq" "${S[@]}" status --json
same "status counts the refusals" "$(jl "$out" 'print(lines[1].auth_failures)')" "6"
unset TXMQ_SECRET

stop_txmqd
for s in "$ADMIN" "$PRODUCER" "$CONSUMER" "not-the-secret"; do
  if grep -qF -- "$s" "$work/txmqd.log"; then
    not_ok "the daemon's log holds the secret '$s'"
  else
    ok "the daemon's log holds no '$s'"
  fi
done
check "the refusals are in the log" grep -q 'msg="authentication failed".*role=admin reason="wrong secret"' "$work/txmqd.log"
cli_finish cli-auth
