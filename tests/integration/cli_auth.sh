#!/usr/bin/env bash
# cli_auth.sh - black-box test of the `txmq` tool against a txmqd with
# authentication on: with the admin secret in TXMQ_SECRET every command
# works (send, tx send, consume, tx list, tx show, status, reload); with
# the producer secret the producer's commands work and the admin ones are
# refused; without a secret, or with a wrong one, a command fails with
# exit 1 and one line giving the server's reason; no secret reaches the
# daemon's log.
#
#   bash tests/integration/cli_auth.sh BUILD/bin
set -euo pipefail
# shellcheck source=tests/integration/cli_lib.bash
source "$(dirname "${BASH_SOURCE[0]}")/cli_lib.bash"
cli_init "${1:-}" cli-auth

ADMIN="op3rator-admin-secret"
PRODUCER="producer-app-secret"
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
  },
}
LUA
TXMQ_TEST_ADMIN="$ADMIN" TXMQ_TEST_PRODUCER="$PRODUCER" \
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
run "$txmq" "${S[@]}" reload pay
expect "reload with the producer secret (the tool asks as admin)" 1 \
  "txmq: cannot connect to $server: the server refused the connection: authentication failed: wrong secret for role \"admin\""
run "$txmq" "${S[@]}" consume orders --group ship -n 1 --timeout 1
expect_err_prefix "consume with the producer secret (consumers have no secret)" 1 \
  "txmq: cannot connect to $server: the server refused the connection: authentication failed: role \"consumer\" has no secret"

echo "# no secret, a wrong secret"
unset TXMQ_SECRET
run "$txmq" "${S[@]}" send orders "nope"
expect "send without a secret" 1 \
  "txmq: cannot connect to $server: the server refused the connection: authentication failed: role \"producer\" needs its secret (a string in field 'secret')"
export TXMQ_SECRET="not-the-secret"
run "$txmq" "${S[@]}" status
expect "status with a wrong secret" 1 \
  "txmq: cannot connect to $server: the server refused the connection: authentication failed: wrong secret for role \"admin\""
export TXMQ_SECRET="$ADMIN"
run "$txmq" "${S[@]}" consume orders --group ship -n 2 --timeout 5
expect "consume with the admin secret again" 0
printf '%s\n' "paid 3" "paid 4" >"$work/want"
check "nothing refused was stored" cmp -s "$out" "$work/want"
run "$txmq" "${S[@]}" status --json
same "status counts the refusals" "$(jl "$out" 'print(lines[1].auth_failures)')" "4"
unset TXMQ_SECRET

stop_txmqd
for s in "$ADMIN" "$PRODUCER" "not-the-secret"; do
  if grep -qF -- "$s" "$work/txmqd.log"; then
    not_ok "the daemon's log holds the secret '$s'"
  else
    ok "the daemon's log holds no '$s'"
  fi
done
check "the refusals are in the log" grep -q 'msg="authentication failed".*role=admin reason="wrong secret"' "$work/txmqd.log"
cli_finish cli-auth
