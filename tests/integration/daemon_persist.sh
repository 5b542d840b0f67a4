#!/usr/bin/env bash
# daemon_persist.sh - black-box tests of what survives a restart of txmqd:
# after SIGTERM (clean shutdown) messages, consumer progress, decided and
# pending transactions; after kill -9, everything the daemon acknowledged
# (sync always).
#
#   bash tests/integration/daemon_persist.sh BUILD/bin
set -euo pipefail
source "$(dirname "$0")/daemon_lib.bash"
d_init "${1:-}" daemon-persist

cat >"$work/conf.lua" <<'EOF'
default_queues = 1
tx_timeout_ms = 600000   -- no checks during the test
EOF

d_start -c "$work/conf.lua"
drive "before the restart: messages, an ack, a committed and a pending transaction" <<'EOF'
conn p
hello prod-1 producer
req {"op":"send","msg":{"topic":"P1","body":"one"}}
req {"op":"send","msg":{"topic":"P1","body":"two"}}
req {"op":"send","msg":{"topic":"P1","body":"three"}}
req {"op":"receive","group":"g","topic":"P1","max":1}
expect msgs.0.body.$text = "one"
save H msgs.0.handle
req {"op":"ack","group":"g","handles":[$H]}
expect acked = 1
req {"op":"tx.half","group":"grp","msgs":[{"topic":"P2","body":"decided"}]}
save T1 tx_id
req {"op":"tx.end","tx_id":$T1,"decision":"commit"}
req {"op":"tx.half","group":"grp","msgs":[{"topic":"P2","body":"pending"}]}
save T2 tx_id
print tx_id.$bin
EOF
t2=$(drive_value 'tx_id.$bin')
d_stop
same "SIGTERM: exit 0" "$d_rc" 0
log_has "the shutdown is logged" 'msg="stopped"'

d_start -c "$work/conf.lua"
drive "after SIGTERM and a restart: the data is there" <<EOF
conn p
hello prod-1 producer
req {"op":"status"}
expect topics.# = 2
expect tx.pending = 1
req {"op":"receive","group":"g","topic":"P1","max":10}
expect msgs.# = 2
expect msgs.0.body.\$text = "two"
expect msgs.1.body.\$text = "three"
req {"op":"receive","group":"fresh","topic":"P2","max":10}
expect msgs.# = 1
expect msgs.0.body.\$text = "decided"
req {"op":"tx.list"}
expect txs.# = 1
expect txs.0.tx_id.\$bin = "$t2"
expect txs.0.state = "pending"
expect txs.0.producer = "prod-1"
req {"op":"tx.end","tx_id":"$t2","decision":"commit"}
expect state = "committed"
req {"op":"receive","group":"fresh","topic":"P2","max":10}
expect msgs.# = 1
expect msgs.0.body.\$text = "pending"
EOF

# kill -9: every send the daemon answered is on disk (sync always).
drive "before kill -9: 10 acknowledged sends and a commit" <<'EOF'
conn p
hello prod-1 producer
req {"op":"send","msg":{"topic":"K","body":"k01"}}
req {"op":"send","msg":{"topic":"K","body":"k02"}}
req {"op":"send","msg":{"topic":"K","body":"k03"}}
req {"op":"send","msg":{"topic":"K","body":"k04"}}
req {"op":"send","msg":{"topic":"K","body":"k05"}}
req {"op":"send","msg":{"topic":"K","body":"k06"}}
req {"op":"send","msg":{"topic":"K","body":"k07"}}
req {"op":"send","msg":{"topic":"K","body":"k08"}}
req {"op":"send","msg":{"topic":"K","body":"k09"}}
req {"op":"send","msg":{"topic":"K","body":"k10"}}
req {"op":"tx.half","group":"grp","msgs":[{"topic":"K2","body":"txk"}]}
save T tx_id
req {"op":"tx.end","tx_id":$T,"decision":"commit"}
expect state = "committed"
EOF
# More acknowledged sends, pipelined: the driver waits for every answer.
{
  echo "conn p"
  echo "hello prod-2 producer"
  for i in $(seq 11 50); do echo "send {\"op\":\"send\",\"msg\":{\"topic\":\"K\",\"body\":\"k$i\"}}"; done
  for i in $(seq 11 50); do echo "recv"; echo "expect ok = true"; done
} >"$work/pipe.script"
drive "40 pipelined sends acknowledged" <"$work/pipe.script"
d_kill9
log_has "(the daemon was running before the kill)" 'msg="listening"'

d_start -c "$work/conf.lua"
drive "after kill -9 and a restart: every acknowledged send and the commit" <<'EOF'
conn c
hello cons-1 consumer
req {"op":"receive","group":"after","topic":"K","max":100}
expect msgs.# = 50
expect msgs.0.body.$text = "k01"
expect msgs.49.body.$text = "k50"
req {"op":"receive","group":"after","topic":"K2","max":10}
expect msgs.# = 1
expect msgs.0.body.$text = "txk"
EOF
d_stop
same "SIGTERM after recovery: exit 0" "$d_rc" 0
d_finish
