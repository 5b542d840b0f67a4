#!/usr/bin/env bash
# run.sh - the order-payment scenario: an order service marks orders paid
# and must tell logistics, points and the shopping cart, all of them or
# none. Every service keeps its own SQLite database; txmq's transactional
# messages are the only link between them.
#
#   1. a paid order reaches all three services;
#   2. a failed order update (unknown order, order already paid) reaches none;
#   3. the order service is killed (kill -9) between its half message and its
#      answer, after its SQLite commit: txmq checks with another member of the
#      producer group, which reads SQLite and commits, and all three hear of it;
#   4. the handler script is edited while the order service runs and the next
#      payment uses the new version, without a restart (a broken edit keeps
#      the version that works);
#   5. the points service dies after crediting points but before its ack:
#      txmq delivers again, and the points are not credited twice.
#
# It starts txmqd on an ephemeral loopback port (data under DEMO_DATA),
# three consumers and the order services, checks every outcome in the
# SQLite tables and txmq's own records, prints a summary, and stops
# everything it started. Exits 0 only if every check held.
#
#   examples/order-payment/run.sh          (examples/demo.sh builds first)
#   BUILD_DIR=build     where bin/txmqd, bin/txmq and lua/txmq/core.so are
#   DEMO_DATA=./demo-data   removed at start and, unless KEEP=1, at the end
#                       (refused if it holds files of anything else)
set -euo pipefail
ex="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$ex/../.." && pwd)"
build="${BUILD_DIR:-$repo/build}"
data="${DEMO_DATA:-$PWD/demo-data}"

fail_early() { echo "run.sh: $*" >&2; exit 1; }
[ -d "$build" ] || fail_early "no build in $build (set BUILD_DIR, or run examples/demo.sh)"
build="$(cd "$build" && pwd)"
bin="$build/bin"
for f in "$bin/txmqd" "$bin/txmq" "$build/lua/txmq/core.so"; do
  [ -e "$f" ] || fail_early "$f is not built (run examples/demo.sh, or build txmqd txmq_cli txmq_lua)"
done
command -v lua5.4 >/dev/null || fail_early "lua5.4 is not installed"
export LUA_CPATH="$build/lua/?.so;;" LUA_PATH="$repo/lua/?.lua;;"
lua5.4 -e 'require "luasql.sqlite3"' 2>/dev/null ||
  fail_early "LuaSQL's sqlite3 driver is missing (Debian: lua-sql-sqlite3)"

# The data folder is removed at start and end: never one this scenario did
# not make (it leaves a mark in its own).
if [ -d "$data" ] && [ -n "$(ls -A "$data")" ] && [ ! -e "$data/.order-payment-demo" ]; then
  fail_early "$data exists and is not an earlier run's data folder; choose another DEMO_DATA"
fi
rm -rf "$data"
mkdir -p "$data/txmqd/scripts"
touch "$data/.order-payment-demo"
data="$(cd "$data" && pwd)"
export ORDER_DB="$data/orders.db"
script="$data/order-payment.lua" # the order service's copy, edited in step 4
cp "$ex/order-payment.lua" "$script"

declare -A pid=() fd=()
txmqd_pid=""
passed=0
failed=0

cleanup() {
  local status=$?
  local name
  for name in "${!fd[@]}"; do close_input "$name"; done
  touch "$data/stop-logistics" "$data/stop-points" "$data/stop-cart" 2>/dev/null || true
  for name in "${!pid[@]}"; do
    kill -TERM "${pid[$name]}" 2>/dev/null || true
  done
  for name in "${!pid[@]}"; do wait "${pid[$name]}" 2>/dev/null || true; done
  if [ -n "$txmqd_pid" ]; then
    kill -TERM "$txmqd_pid" 2>/dev/null || true
    wait "$txmqd_pid" 2>/dev/null || true
  fi
  if [ "$status" != 0 ] || [ "$failed" != 0 ]; then
    for f in "$data"/*.log; do
      [ -f "$f" ] || continue
      echo "# last lines of ${f#"$data"/}:"
      tail -n 8 "$f" | sed 's/^/#   /'
    done
  fi
  if [ "${KEEP:-0}" = 1 ]; then
    echo "(data kept in $data)"
  else
    rm -rf "$data"
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

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
same() { # same DESCRIPTION GOT WANT
  if [ "$2" = "$3" ]; then
    echo "   ok: $1"
    passed=$((passed + 1))
  else
    echo "   FAILED: $1: got '$2', want '$3'"
    failed=$((failed + 1))
  fi
}
wait_until() { # wait_until SECONDS COMMAND...: polls every 0.1 s
  local i
  for i in $(seq $(($1 * 10))); do
    "${@:2}" && return 0
    sleep 0.1
  done
  return 1
}
above() { [ "$("${@:2}")" -gt "$1" ]; } # above N COMMAND...: its output > N
gone() { ! kill -0 "$1" 2>/dev/null; }    # gone PID
q() { lua5.4 "$ex/query.lua" "$data/$1.db" "$2"; } # q DB SQL
seen() { # seen GROUP ORDER: deliveries of ORDER to the consumer GROUP
  q "$1" "SELECT count(*) FROM deliveries WHERE order_id = '$2'"
}
lines() { wc -l <"$data/$1.log" | tr -d ' '; }
show() { # show NAME FROM_LINE: the lines NAME logged since, indented, paths short
  tail -n +"$(($2 + 1))" "$data/$1.log" |
    sed -e "s|$data/|${data##*/}/|g" -e "s|$repo/||g" -e "s/^/   | /"
}

start_txmqd() {
  # Checks come fast so that the scenario takes seconds: the first check of
  # an undecided transaction 3 s after its half message (time enough to look
  # at it before), then every second.
  cat >"$data/txmqd.conf.lua" <<'LUA'
return {
  tx_timeout_ms = 3000, check_interval_ms = 1000, check_retry_ms = 500,
  check_timeout_ms = 2000, visibility_ms = 1500,
}
LUA
  "$bin/txmqd" -c "$data/txmqd.conf.lua" --listen 127.0.0.1:0 \
    --data "$data/txmqd/data" --scripts "$data/txmqd/scripts" 2>"$data/txmqd.log" &
  txmqd_pid=$!
  local port="" i
  for i in $(seq 150); do
    port=$(sed -n 's/.*msg="listening" addr=[^ ]*:\([0-9][0-9]*\).*/\1/p' "$data/txmqd.log" | tail -n 1)
    [ -n "$port" ] && break
    kill -0 "$txmqd_pid" 2>/dev/null || fail_early "txmqd exited during start-up"
    sleep 0.1
  done
  [ -n "$port" ] || fail_early "txmqd did not log a listening address within 15 s"
  server="127.0.0.1:$port"
}

readies() { # readies GROUP: how many times a consumer of GROUP said ready
  local n
  n=$(grep -c ": *ready$" "$data/$1.log" 2>/dev/null) || true
  echo "${n:-0}"
}
start_consumer() { # start_consumer GROUP [FLAGS...]: its log goes on
  local g=$1 n
  shift
  n=$(readies "$g")
  rm -f "$data/stop-$g"
  lua5.4 "$ex/consumer.lua" --server "$server" --group "$g" --db "$data/$g.db" \
    --stop-file "$data/stop-$g" "$@" >>"$data/$g.log" 2>&1 &
  pid[$g]=$!
  wait_until 10 above "$n" readies "$g" || fail_early "the $g consumer did not start"
}

stop_consumer() { # stop_consumer GROUP: at its next poll
  touch "$data/stop-$1"
  wait "${pid[$1]}" 2>/dev/null || true
  unset "pid[$1]"
}

start_service() { # start_service NAME [FLAGS...]: commands go to its fifo
  local name=$1 f
  shift
  mkfifo "$data/$name.in"
  lua5.4 "$ex/order_service.lua" --server "$server" --id "$name" --script "$script" "$@" \
    <"$data/$name.in" >"$data/$name.log" 2>&1 &
  pid[$name]=$!
  exec {f}>"$data/$name.in"
  fd[$name]=$f
  wait_until 10 grep -q "^ready" "$data/$name.log" || fail_early "$name did not start"
}

close_input() { # close_input NAME: the end of the service's input
  local f=${fd[$1]:-}
  [ -n "$f" ] && exec {f}>&-
  unset "fd[$1]"
}

answers() { # answers SERVICE ORDER: how many answers about ORDER it gave
  local n
  n=$(grep -c "^$2 " "$data/$1.log") || true
  echo "${n:-0}"
}
answer="" # the answer line of the last pay
pay() { # pay SERVICE ORDER [PAYMENT_REF]: waits for the answer line
  local name=$1 order=$2 ref=${3:-} n
  n=$(answers "$name" "$order")
  echo "pay $order $ref" >&"${fd[$name]}"
  wait_until 10 above "$n" answers "$name" "$order" ||
    fail_early "$name did not answer pay $order"
  answer=$(grep "^$order " "$data/$name.log" | tail -n 1)
}
field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$answer"; } # field NAME of $answer

delivered() { # delivered ORDER: how many of the three services have seen it
  local n=0 g
  for g in logistics points cart; do
    [ "$(seen "$g" "$1")" -gt 0 ] && n=$((n + 1))
  done
  echo "$n"
}
reached_all() { [ "$(delivered "$1")" = 3 ]; }
consumer_marks() { # consumer_marks: the log line counts, to show what follows
  marks=()
  local g
  for g in logistics points cart; do marks+=("$(lines "$g")"); done
}
show_consumers() {
  local i=0 g
  for g in logistics points cart; do
    show "$g" "${marks[$i]}"
    i=$((i + 1))
  done
}
effects() { # effects ORDER: shipments|points credited|carts cleared
  echo "$(q logistics "SELECT count(*) FROM shipments WHERE order_id = '$1'")|$(
    q points "SELECT coalesce(sum(points), 0) FROM ledger WHERE order_id = '$1'")|$(
    q cart "SELECT count(*) FROM cleared WHERE order_id = '$1'")"
}
order_state() { q orders "SELECT state FROM orders WHERE order_id = '$1'"; }
tx_state() { "$bin/txmq" --server "$server" tx show "$1" | sed -n 's/^state: //p'; }

t0=$SECONDS
echo "== setting up"
start_txmqd
lua5.4 "$ex/setup.lua" "$data"
echo "   txmqd on $server (data in ${data##*/}/txmqd); first check 3 s after an"
echo "   undecided half message, then every second; consumers see a message again"
echo "   1.5 s after a delivery that was not acknowledged"
echo "   four SQLite databases (schema.sql, sample-data.sql): orders.db, logistics.db,"
echo "   points.db, cart.db; the orders, all unpaid:"
q orders "SELECT order_id, customer, amount_cents FROM orders" |
  awk -F'|' '{ printf "     %s  %-6s %9.2f\n", $1, $2, $3 / 100 }'
for g in logistics points cart; do start_consumer "$g"; done
start_service order-service-1
echo "   started: consumers logistics (pid ${pid[logistics]}), points (${pid[points]}),"
echo "   cart (${pid[cart]}); order-service-1 (pid ${pid[order-service-1]}), producer group"
echo "   order-payment, its handlers in ${script##*/}"

echo
echo "== 1. A1001 is paid: the order update commits, all three services hear of it"
consumer_marks
m=$(lines order-service-1)
pay order-service-1 A1001 PAY-7731
tx_a1001=$(field tx)
show order-service-1 "$m"
wait_until 10 reached_all A1001 || true
show_consumers
same "the local transaction answered COMMIT" "$(awk '{ print $2 }' <<<"$answer")" COMMIT_MESSAGE
same "orders.db: A1001 is paid, by transaction ${tx_a1001:0:8}..." \
  "$(q orders "SELECT state, paid_tx FROM orders WHERE order_id = 'A1001'")" "paid|$tx_a1001"
same "a shipment, 42 points and an empty cart for alice" "$(effects A1001)" "1|42|1"

echo
echo "== 2. a failed order update reaches nobody: an unknown order, an order already paid"
consumer_marks
m=$(lines order-service-1)
pay order-service-1 A9999 PAY-0000
tx_a9999=$(field tx)
pay order-service-1 A1001 PAY-7731-again
tx_a1001_again=$(field tx)
show order-service-1 "$m"
sleep 1 # time enough for a consumer to hear of it, if it ever could
show_consumers
same "both transactions were rolled back" "$(tx_state "$tx_a9999") $(tx_state "$tx_a1001_again")" \
  "rolled_back rolled_back"
same "nobody heard of A9999" "$(delivered A9999)" 0
same "A1001 still has one shipment, 42 points, one emptied cart" "$(effects A1001)" "1|42|1"
same "and was delivered once to each" \
  "$(seen logistics A1001) $(seen points A1001) $(seen cart A1001)" "1 1 1"

echo
echo "== 3. order-service-2 commits A1002 in SQLite and is killed (kill -9) before txmq hears"
start_service order-service-2 --crash-after-commit
echo "   order-service-2 (pid ${pid[order-service-2]}) joins the producer group; told to pay A1002,"
echo "   it stands still right after its SQLite commit, and is killed there"
consumer_marks
m1=$(lines order-service-1)
m2=$(lines order-service-2)
echo "pay A1002 PAY-7732" >&"${fd[order-service-2]}"
wait_until 10 grep -q "^crashing tx=" "$data/order-service-2.log" || fail_early "order-service-2 did not reach its crash"
tx_a1002=$(sed -n 's/^crashing tx=\([^ ]*\).*/\1/p' "$data/order-service-2.log")
{ # (quietly: no "Killed" notice from bash)
  kill -KILL "${pid[order-service-2]}"
  wait "${pid[order-service-2]}" || true
} 2>/dev/null
close_input order-service-2
unset "pid[order-service-2]"
show order-service-2 "$m2"
echo "   | (killed with SIGKILL)"
same "orders.db: A1002 is paid (the local transaction committed)" "$(order_state A1002)" paid
same "txmq: the transaction is still pending" "$(tx_state "$tx_a1002")" pending
same "nobody has heard of A1002 yet" "$(delivered A1002)" 0
echo "   ... txmq checks the producer group order-payment; order-service-1 is its live member"
wait_until 15 reached_all A1002 || true
show order-service-1 "$m1"
show_consumers
"$bin/txmq" --server "$server" tx show "$tx_a1002" >"$data/tx-a1002.txt" || true
sed 's/^/   | /' "$data/tx-a1002.txt"
same "the check committed the transaction" "$(tx_state "$tx_a1002")" committed
check "order-service-1 answered the check" \
  grep -Eq "commit +source=check.*who=order-service-1" "$data/tx-a1002.txt"
same "a shipment, 19 points and an empty cart for bob" "$(effects A1002)" "1|19|1"

echo
echo "== 4. the handler script is edited while order-service-1 runs (no restart)"
consumer_marks
m=$(lines order-service-1)
pay order-service-1 A1003 PAY-7733
tx_a1003=$(field tx)
show order-service-1 "$m"
wait_until 10 reached_all A1003 || true
same "A1003 (1,500.00) is paid under the first version" "$(order_state A1003)" paid
echo "   edit: payments above 1,000.00 now wait for a person"
sed -i 's/^local REVIEW_ABOVE_CENTS = nil$/local REVIEW_ABOVE_CENTS = 100000/' "$script"
grep -n "^local REVIEW_ABOVE_CENTS" "$script" | sed "s/^/   | ${script##*/}:/"
m=$(lines order-service-1)
pay order-service-1 A1004 PAY-7734
tx_a1004=$(field tx)
show order-service-1 "$m"
same "A1004 (2,000.00) is refused by the new version" "$(awk '{ print $2 }' <<<"$answer")" ROLLBACK_MESSAGE
echo "   a broken edit: the service keeps the version that works"
cp "$script" "$data/order-payment.lua.good"
echo "function executeLocalTransaction(msg, arg" >>"$script" # a syntax error
m=$(lines order-service-1)
pay order-service-1 A1004 PAY-7735
tx_a1004_broken=$(field tx)
show order-service-1 "$m"
same "A1004 is still refused (the second version still serves)" \
  "$(awk '{ print $2 }' <<<"$answer")" ROLLBACK_MESSAGE
cp "$data/order-payment.lua.good" "$script"
same "order-service-1 was never restarted" "$(grep -c '^ready' "$data/order-service-1.log")" 1
sleep 1
show_consumers
same "the transactions: A1003 committed, A1004 rolled back twice" \
  "$(tx_state "$tx_a1003") $(tx_state "$tx_a1004") $(tx_state "$tx_a1004_broken")" \
  "committed rolled_back rolled_back"
same "A1003 reached all three, A1004 none" "$(effects A1003) $(effects A1004)" "1|1500|1 0|0|0"
same "orders.db: A1004 is still unpaid" "$(order_state A1004)" unpaid

echo
echo "== 5. the points service dies after crediting A1005, before its ack"
stop_consumer points
start_consumer points --crash-before-ack
consumer_marks
m=$(lines order-service-1)
pay order-service-1 A1005 PAY-7736
show order-service-1 "$m"
wait_until 10 gone "${pid[points]}" || true
wait "${pid[points]}" 2>/dev/null || true
unset "pid[points]"
echo "   (restarting the points service)"
start_consumer points
wait_until 10 above 1 seen points A1005 || true
wait_until 5 reached_all A1005 || true
show_consumers
same "points saw A1005 twice: applied, then a duplicate" \
  "$(q points "SELECT outcome FROM deliveries WHERE order_id = 'A1005' ORDER BY rowid" | tr '\n' ' ')" \
  "applied duplicate "
same "erin was credited 25 points once" "$(q points "SELECT points FROM balances WHERE customer = 'erin'")" 25
same "a shipment and an empty cart for erin" "$(effects A1005)" "1|25|1"

echo
echo "== summary"
stop_consumer logistics
stop_consumer points
stop_consumer cart
close_input order-service-1
wait "${pid[order-service-1]}" 2>/dev/null || true
unset "pid[order-service-1]"
tail -n 1 "$data/order-service-1.log" | sed 's/^/   /'
# order|expected orders.db state|shipments|points|carts cleared, what happened
expect=(
  "A1001|paid|1|42|1|paid (1); paid again: refused (2)"
  "A9999||0|0|0|unknown order: refused (2)"
  "A1002|paid|1|19|1|service killed, a check committed (3)"
  "A1003|paid|1|1500|1|paid under version 1 (4)"
  "A1004|unpaid|0|0|0|refused twice by version 2 (4)"
  "A1005|paid|1|25|1|points died before its ack (5)"
)
printf '   %-6s %9s  %-9s %-9s %-6s %-5s %-10s %s\n' order amount orders.db shipments points carts deliveries "what happened"
for row in "${expect[@]}"; do
  IFS='|' read -r order want_state want_ship want_points want_cart story <<<"$row"
  amount=$(q orders "SELECT printf('%.2f', amount_cents / 100.0) FROM orders WHERE order_id = '$order'")
  state=$(order_state "$order")
  got="$(effects "$order")"
  IFS='|' read -r ship points cart <<<"$got"
  deliveries="$(seen logistics "$order")/$(seen points "$order")/$(seen cart "$order")"
  printf '   %-6s %9s  %-9s %-9s %-6s %-5s %-10s %s\n' "$order" "${amount:--}" "${state:--}" \
    "$ship" "$points" "$cart" "$deliveries" "$story"
  if [ "$state|$got" != "$want_state|$want_ship|$want_points|$want_cart" ]; then
    echo "   FAILED: $order: got '$state|$got', want '$want_state|$want_ship|$want_points|$want_cart'"
    failed=$((failed + 1))
  fi
done
same "grace ordered nothing and kept her cart" "$(q cart "SELECT count(*) FROM cart_items WHERE customer = 'grace'")" 1
same "no transaction is left pending or parked" "$("$bin/txmq" --server "$server" tx list | tail -n +2 | wc -l | tr -d ' ')" 0
echo "   (shipments, points credited and carts emptied per order in the services' tables;"
echo "   deliveries seen by logistics/points/cart; the scenario took $((SECONDS - t0)) s)"
if [ "$failed" = 0 ]; then
  echo "== order-payment: all $passed checks held"
else
  echo "== order-payment: $failed checks FAILED ($passed held)"
  exit 1
fi
