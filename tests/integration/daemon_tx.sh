#!/usr/bin/env bash
# daemon_tx.sh - black-box tests of transactions over the wire: tx.half and
# tx.end (commit visible, rollback never, repeats, conflicts, several
# messages to several topics), tx.send with a handler script in the scripts
# dir (commit, rollback, unknown, a failing handler, the arg, no script),
# checks sent to producer connections (the origin first, another member
# when the origin is gone, after an error answer, after a connection loss,
# held back uncounted while no member is connected), parking after the
# maximum and an operator's resume, tx.list/tx.show, and reload.
#
#   bash tests/integration/daemon_tx.sh BUILD/bin
set -euo pipefail
source "$(dirname "$0")/daemon_lib.bash"
d_init "${1:-}" daemon-tx

cat >"$work/scripts/order.lua" <<'EOF'
function executeLocalTransaction(msg, arg)
  if type(arg) == "table" and arg.decide == "rollback" then
    return txmq.ROLLBACK
  end
  if msg.body == "rollback" then return txmq.ROLLBACK end
  if msg.body == "unknown" then return txmq.UNKNOWN end
  if msg.body == "boom" then error("boom in the handler") end
  return txmq.COMMIT
end
function checkLocalTransaction(msg) return txmq.COMMIT end
EOF

cat >"$work/conf.lua" <<'EOF'
return {
  tx_timeout_ms = 300,      -- first check 300 ms after the half
  check_interval_ms = 300,
  check_timeout_ms = 1500,
  check_retry_ms = 200,
  max_checks = 2,
  default_queues = 1,
}
EOF
d_start -c "$work/conf.lua"

drive "tx.half + commit: visible; repeat is harmless; rollback after it conflicts" <<'EOF'
conn p
hello basic-1 producer
req {"op":"tx.half","group":"basic","msgs":[{"topic":"TXA","body":"a1","tags":"t"}]}
expect ok = true
expect msg_ids.# = 1
save TX tx_id
req {"op":"receive","group":"cg","topic":"TXA","wait_ms":0}
expect msgs.# = 0
req {"op":"tx.end","tx_id":$TX,"decision":"commit"}
expect state = "committed"
req {"op":"receive","group":"cg","topic":"TXA","max":10}
expect msgs.# = 1
expect msgs.0.body.$text = "a1"
expect msgs.0.tags = "t"
req {"op":"tx.end","tx_id":$TX,"decision":"commit"}
expect ok = true
expect state = "committed"
req {"op":"tx.end","tx_id":$TX,"decision":"rollback"}
expect ok = false
expect err = "ECONFLICT"
expect code = -14
expect msg ~ "committed"
req {"op":"tx.end","tx_id":$TX,"decision":"unknown"}
expect state = "committed"
req {"op":"receive","group":"cg2","topic":"TXA","max":10}
expect msgs.# = 1
req {"op":"receive","group":"cg-tag","topic":"TXA","tags":"t || u","max":10}
expect msgs.# = 1
expect msgs.0.tags = "t"
req {"op":"receive","group":"cg-other","topic":"TXA","tags":"x","max":10,"wait_ms":0}
expect msgs.# = 0
EOF

drive "tx.half + rollback: never visible; commit after it conflicts" <<'EOF'
conn p
hello basic-1 producer
req {"op":"tx.half","group":"basic","msgs":[{"topic":"TXB","body":"b1"}]}
save TX tx_id
req {"op":"tx.end","tx_id":$TX,"decision":"rollback"}
expect state = "rolled_back"
req {"op":"tx.end","tx_id":$TX,"decision":"rollback"}
expect state = "rolled_back"
req {"op":"tx.end","tx_id":$TX,"decision":"commit"}
expect err = "ECONFLICT"
req {"op":"receive","group":"cg","topic":"TXB","max":10,"wait_ms":300}
expect msgs.# = 0
req {"op":"status"}
EOF

drive "several messages to several topics become visible together" <<'EOF'
conn p
hello basic-1 producer
req {"op":"tx.half","group":"basic","msgs":[{"topic":"TXC","body":"c1"},{"topic":"TXD","body":"d1"},{"topic":"TXC","body":"c2"}]}
expect msg_ids.# = 3
save TX tx_id
print tx_id.$bin
req {"op":"tx.end","tx_id":$TX,"decision":"commit"}
req {"op":"receive","group":"cg","topic":"TXC","max":10}
expect msgs.# = 2
req {"op":"receive","group":"cg","topic":"TXD","max":10}
expect msgs.# = 1
EOF
hex=$(drive_value 'tx_id.$bin')

drive "tx_id as hex text, unknown ids, bad decisions, missing fields" <<EOF
conn p
hello basic-1 producer
req {"op":"tx.end","tx_id":"$hex","decision":"commit"}
expect state = "committed"
req {"op":"tx.end","tx_id":"0123456789abcdef0123456789abcdef","decision":"commit"}
expect err = "ENOTFOUND"
req {"op":"tx.end","tx_id":"$hex","decision":"maybe"}
expect err = "EPROTO"
expect msg ~ "decision"
req {"op":"tx.end","tx_id":"xyz","decision":"commit"}
expect err = "EPROTO"
expect msg ~ "tx_id"
req {"op":"tx.half","msgs":[{"topic":"T"}]}
expect err = "EPROTO"
expect msg = "field 'group' is missing"
req {"op":"tx.half","group":"basic","msgs":[]}
expect err = "ERANGE"
req {"op":"tx.half","group":"basic","msgs":[{"body":"no topic"}]}
expect err = "EPROTO"
expect msg ~ "msgs[0].topic is missing"
req {"op":"tx.half","group":"basic","msgs":[{"topic":"T"},{"topic":"T"},{"topic":"bad name"}]}
expect err = "EBADNAME"
expect msg ~ "msgs[2].topic is not a valid topic name"
req {"op":"tx.half","group":"basic","msgs":[{"topic":"T"},{"topic":"T","tags":5}]}
expect err = "EPROTO"
expect msg ~ "msgs[1] is not a valid message"
req {"op":"tx.send","group":"order","msgs":[{"topic":"T","body":7}]}
expect err = "EPROTO"
expect msg = "msgs[0].body must be bin or str"
EOF

drive "tx.send runs executeLocalTransaction from the scripts dir" <<'EOF'
conn p
hello app-1 producer
req {"op":"tx.send","group":"order","msgs":[{"topic":"ORD","body":"paid"}]}
expect ok = true
expect state = "committed"
expect msg_ids.# = 1
print version
req {"op":"tx.send","group":"order","msgs":[{"topic":"ORD","body":"rollback"}]}
expect state = "rolled_back"
req {"op":"tx.send","group":"order","msgs":[{"topic":"ORD","body":"x"}],"arg":{"decide":"rollback"}}
expect state = "rolled_back"
req {"op":"tx.send","group":"order","msgs":[{"topic":"ORD","body":"unknown"}]}
expect state = "pending"
req {"op":"tx.send","group":"order","msgs":[{"topic":"ORD","body":"boom"}]}
expect ok = true
expect state = "pending"
expect diag ~ "boom in the handler"
req {"op":"tx.send","group":"noscript","msgs":[{"topic":"ORD","body":"x"}]}
expect err = "ENOTFOUND"
expect msg ~ "noscript.lua"
req {"op":"receive","group":"cg","topic":"ORD","max":10}
expect msgs.# = 1
expect msgs.0.body.$text = "paid"
EOF
v1=$(drive_value version)
if [[ "$v1" =~ ^[0-9a-f]{16}$ ]]; then ok "tx.send reports the script version ($v1)"; else not_ok "script version '$v1'"; fi

# The pending ones of "order" are decided by its checkLocalTransaction
# (the script check target) within a few checks.
sleep 1
drive "pending script transactions are decided by checkLocalTransaction" <<'EOF'
conn a
hello ops-1 admin
req {"op":"tx.list","group":"order"}
expect txs.# = 0
req {"op":"receive","group":"cg","topic":"ORD","max":10}
expect msgs.# = 2
EOF

drive "a check goes to the producer connection that sent the half message" <<'EOF'
conn p1
hello p1 producer remote
req {"op":"tx.half","group":"remote","msgs":[{"topic":"REM","body":"r1"}]}
save TX tx_id
check commit 5000
expect op = "check"
expect tx_id = $TX
expect group = "remote"
expect producer = "p1"
expect check_count = 0
expect msgs.0.topic = "REM"
expect msgs.0.body.$text = "r1"
sleep 200
req {"op":"tx.show","tx_id":$TX}
expect tx.state = "committed"
expect history.# = 2
expect history.0.event = "half"
expect history.1.event = "commit"
expect history.1.source = "check"
expect history.1.who = "p1"
expect complete = true
EOF

drive "with the origin gone, another member of the group is asked" <<'EOF'
conn other
hello p3 producer remote2
conn origin
hello p2 producer remote2
req {"op":"tx.half","group":"remote2","msgs":[{"topic":"REM","body":"r2"}]}
save TX tx_id
close
use other
check rollback 5000
expect tx_id = $TX
expect producer = "p2"
sleep 200
req {"op":"tx.show","tx_id":$TX}
expect tx.state = "rolled_back"
expect history.1.who = "p3"
EOF

drive "an error answer sends the check to another member, uncounted" <<'EOF'
conn b
hello p5 producer remote3
conn a
hello p4 producer remote3
req {"op":"tx.half","group":"remote3","msgs":[{"topic":"REM","body":"r3"}]}
save TX tx_id
check error 5000
expect tx_id = $TX
use b
check commit 5000
expect tx_id = $TX
expect check_count = 0
sleep 200
req {"op":"tx.show","tx_id":$TX}
expect tx.state = "committed"
expect tx.check_count = 0
expect history.1.who = "p5"
EOF

drive "a connection lost with a check outstanding: the check goes elsewhere, uncounted" <<'EOF'
conn b
hello p10 producer remote6
conn a
hello p9 producer remote6
req {"op":"tx.half","group":"remote6","msgs":[{"topic":"REM","body":"r6"}]}
save TX tx_id
check none 5000
expect tx_id = $TX
close
use b
check commit 5000
expect tx_id = $TX
expect check_count = 0
sleep 200
req {"op":"tx.show","tx_id":$TX}
expect tx.state = "committed"
EOF

drive "no member connected: the check waits uncounted; a member's hello brings it at once" <<'EOF'
conn a
hello p7 producer
req {"op":"tx.half","group":"remote5","msgs":[{"topic":"REM","body":"r5"}]}
save TX tx_id
sleep 1200
req {"op":"tx.show","tx_id":$TX}
expect tx.state = "pending"
expect tx.check_count = 0
conn b
hello p8 producer remote5
check commit 1000
expect tx_id = $TX
EOF

drive "UNKNOWN answers up to max_checks park it; tx.list shows it; only an admin resumes" <<'EOF'
conn p
hello p6 producer remote4
req {"op":"tx.half","group":"remote4","msgs":[{"topic":"REM","body":"r4"}]}
save TX tx_id
check unknown 5000
expect check_count = 0
check unknown 5000
expect check_count = 1
sleep 300
req {"op":"tx.list","group":"remote4"}
expect txs.# = 1
expect txs.0.tx_id = $TX
expect txs.0.state = "parked"
expect txs.0.check_count = 2
expect txs.0.producer = "p6"
expect txs.0.nmsgs = 1
req {"op":"tx.end","tx_id":$TX,"decision":"commit"}
expect err = "EPARKED"
req {"op":"tx.resume","tx_id":$TX}
expect err = "EPROTO"
expect msg ~ "admin"
conn ops
hello ops-1 admin
req {"op":"tx.resume","tx_id":$TX}
expect ok = true
expect state = "pending"
req {"op":"tx.resume","tx_id":$TX}
expect err = "EINVAL"
expect msg ~ "not parked"
use p
check commit 5000
expect tx_id = $TX
sleep 200
use ops
req {"op":"tx.show","tx_id":$TX}
expect tx.state = "committed"
req {"op":"tx.list"}
expect txs.# = 0
EOF

drive "reload: admin only; a new version decides; a broken script keeps the old one" <<'EOF'
conn p
hello app-1 producer
req {"op":"reload","group":"order"}
expect err = "EPROTO"
conn a
hello ops-1 admin
req {"op":"reload","group":"order"}
expect ok = true
print version
req {"op":"reload","group":"nosuchgroup"}
expect ok = false
req {"op":"reload","group":"../etc"}
expect err = "EBADNAME"
EOF
same "reload reports the loaded version" "$(drive_value version)" "$v1"

printf '\n-- v2\n' >>"$work/scripts/order.lua"
drive "reload after an edit: a new version, used by tx.send" <<'EOF'
conn a
hello ops-1 admin
req {"op":"reload","group":"order"}
expect ok = true
print version
req {"op":"tx.send","group":"order","msgs":[{"topic":"ORD","body":"v2"}]}
expect state = "committed"
print version
EOF
v2=$(drive_value version)
if [ -n "$v2" ] && [ "$v2" != "$v1" ]; then ok "the edited script has a new version"; else not_ok "version after the edit: '$v2' (before: '$v1')"; fi

cp "$work/scripts/order.lua" "$work/order.good"
printf 'function executeLocalTransaction(\n' >"$work/scripts/order.lua"
drive "a broken script: ESCRIPT with the diagnostic; the old version still decides" <<'EOF'
conn a
hello ops-1 admin
req {"op":"reload","group":"order"}
expect ok = false
expect err = "ESCRIPT"
expect msg ~ "order"
req {"op":"tx.send","group":"order","msgs":[{"topic":"ORD","body":"still"}]}
expect state = "committed"
print version
EOF
same "the old version decided" "$(drive_value version)" "$v2"
# The handler host's lines are txmqd's own: group, version, path and line.
log_has "a load is logged with its version" \
  "txmqd level=info msg=\"script\" group=order version=$v2 text=\"loaded [^\"]*/scripts/order.lua, replacing $v1\""
log_has "a handler's error is logged with the script's path and line" \
  'txmqd level=error msg="script" group=order version=[0-9a-f]{16} text="[^"]*/scripts/order.lua version [0-9a-f]{16} line 7: boom in the handler'
log_has "a broken script's refusal is logged" \
  "txmqd level=error msg=\"script\" group=order version=[0-9a-f]{16} text=\"load failed, keeping version $v2: [^\"]*/scripts/order.lua version [0-9a-f]{16} line 2:"
if grep -q '^txmq script ' "$d_log"; then not_ok "a script line outside txmqd's format"; else ok "every script line is in txmqd's format"; fi

drive "status reports transactions and topics" <<'EOF'
conn a
hello ops-1 admin
req {"op":"status"}
expect tx.commits >= 8
expect tx.rollbacks >= 3
expect tx.parks = 1
expect tx.resumes = 1
expect tx.checks_sent >= 6
expect topics.# >= 5
EOF

d_stop
same "SIGTERM: exit 0" "$d_rc" 0
d_finish
