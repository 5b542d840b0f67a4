#!/usr/bin/env bash
# embedded_gateway.sh - runs examples/embedded-gateway, the host program
# that embeds libtxmq, and checks its exit status and what it says: v1 of
# its handler commits and rolls back through the C ledger, the edited
# script is hot-reloaded and v2 decides the next orders, the held order is
# committed by a check after the operator's approval, and the consumer
# group gets exactly the committed orders. Then a second run on the same
# folder (the group resumes after the first run's orders), and bad
# command lines.
#
#   bash tests/integration/embedded_gateway.sh BUILD/bin
set -euo pipefail

bin="${1:?usage: embedded_gateway.sh BIN_DIR, the bin directory of a build}"
gw="$(cd "$bin" && pwd)/embedded-gateway"
[ -x "$gw" ] || { echo "FAIL: $gw is not built"; exit 1; }
scripts="$(cd "$(dirname "$0")/../../examples/embedded-gateway/scripts" && pwd)"

work="$(mktemp -d "${TMPDIR:-/tmp}/txmq-gateway.XXXXXX")"
trap 'rm -rf "$work"' EXIT

passed=0
failures=()
ok() { passed=$((passed + 1)); echo "ok     $1"; }
not_ok() { failures+=("$1"); echo "FAIL   $1"; }

out="$work/out"
err="$work/err"
rc=0
run() { # run CMD...: stdout to $out, stderr to $err, status to $rc
  set +e
  timeout 120 "$@" >"$out" 2>"$err"
  rc=$?
  set -e
}
show() { # the last run's output, for a failure
  echo "--- stdout"; cat "$out"; echo "--- stderr"; tail -n 40 "$err"; echo "---"
}
same() { # NAME GOT WANT
  if [ "$2" = "$3" ]; then ok "$1"; else not_ok "$1: got '$2', want '$3'"; show; fi
}
has() { # NAME REGEX: a line of stdout matches
  if grep -Eq -- "$2" "$out"; then ok "$1"; else not_ok "$1: no line matches '$2'"; show; fi
}
lacks() { # NAME REGEX: no line of stdout matches
  if grep -Eq -- "$2" "$out"; then not_ok "$1: a line matches '$2'"; show; else ok "$1"; fi
}
received() { # the orders the uplink group received, in order, one line
  sed -n 's/^uplink: received \(order-[0-9]*\):.*/\1/p' "$out" | tr '\n' ' '
}

# 1. A first run with the defaults: ./gateway-data, and the scripts of the
# source tree the binary was built from.
mkdir "$work/cwd"
set +e
(cd "$work/cwd" && exec timeout 120 "$gw") >"$out" 2>"$err"
rc=$?
set -e
same "first run exits 0" "$rc" 0
has "v1 is loaded" '^gateway: handler v1 is live, version [0-9a-f]{16}:'
has "v1 commits a small order through the ledger" \
  '^order-1: 40 from kiosk-1 -> committed by v1 \(ledger: applied, 960 credit left\)$'
has "v1 rolls back an order over its limit" \
  '^order-2: 250 from kiosk-2 -> rolled back by v1 \(ledger: refused, over the v1 limit of 100\)$'
has "the edit is hot-reloaded" \
  '^gateway: (the runtime.s file watch noticed the edit|the file watch did not report)'
has "v2 is live with another version" \
  '^gateway: handler v2 is live, version [0-9a-f]{16} \(v1 was [0-9a-f]{16}\)'
has "v2 commits the amount v1 refused" \
  '^order-4: 250 from kiosk-2 -> committed by v2 '
has "v2 answers UNKNOWN for a large order" \
  '^order-5: 600 from kiosk-3 -> v2 answered UNKNOWN, the order is pending \(ledger: held'
has "the C ledger refuses an order it has no credit for" \
  '^order-6: 100 from kiosk-1 -> rolled back by v2 \(ledger: refused, not enough credit'
has "a check found the order still held" \
  '^check: checkLocalTransaction asked the ledger about order-5: still held'
has "the pending order is invisible" '^uplink: nothing to receive; order-5 is still a half message'
has "the operator approves" '^operator: approves order-5'
has "v2's check commits it" '^  commit +source=script version=v2 who=script check_count=[1-9]'
same "the uplink got exactly the committed orders, in order" "$(received)" \
  "order-1 order-3 order-4 order-5 "
lacks "no expectation failed" '^FAILED'
has "the summary" '^summary: 6 orders: 4 committed, 2 rolled back, 0 pending; the uplink received 4; ledger credit left 20 of 1000$'
has "the last line" '^gateway: every expected outcome held$'
if cmp -s "$work/cwd/gateway-data/scripts/gateway.lua" "$scripts/v2/gateway.lua"; then
  ok "the live script in the data folder is v2"
else
  not_ok "the live script in the data folder is not v2"
fi
[ -d "$work/cwd/gateway-data/store" ] && ok "the store is in the data folder" ||
  not_ok "no store in $work/cwd/gateway-data"

# 2. Again on the same folder, scripts given: v1 is put back, and the group
# resumes after the first run's four orders.
run "$gw" --scripts "$scripts" "$work/cwd/gateway-data"
same "second run exits 0" "$rc" 0
same "the second run's uplink got only its own orders" "$(received)" \
  "order-1 order-3 order-4 order-5 "
has "it resumed after the first run's messages" \
  '^uplink: received order-1: 40 from kiosk-1 \(offset 4, delivery 1\)$'
lacks "nothing from the first run came back" '^uplink: skipped'
has "the second run's last line" '^gateway: every expected outcome held$'

# 3. Bad command lines.
run "$gw" a b
same "two folders: exit 2" "$rc" 2
grep -q '^usage: embedded-gateway' "$err" && ok "two folders: usage on stderr" ||
  not_ok "two folders: no usage on stderr"
run "$gw" --scripts "$work/nowhere" "$work/d3"
same "missing scripts: exit 2" "$rc" 2
grep -q "^embedded-gateway: $work/nowhere/v1/gateway.lua: No such file" "$err" &&
  ok "missing scripts: says which file" || not_ok "missing scripts: $(head -c 300 "$err")"
run "$gw" --help
same "--help exits 0" "$rc" 0

echo "embedded_gateway: $passed passed, ${#failures[@]} failed"
[ ${#failures[@]} -eq 0 ]
