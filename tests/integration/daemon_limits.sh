#!/usr/bin/env bash
# daemon_limits.sh - txmqd's configurable limits, each hit over the wire
# with its clear error while the daemon keeps serving everyone else:
# max_frame (a configured value: announced in hello, ETOOBIG and close),
# max_topics (send and tx.half to one topic too many: ERANGE naming the
# limit, nothing stored), max_producer_groups (a transaction of one more
# group: ERANGE; a decided group frees its place), max_consumer_groups (a
# receive or offset.set of one more group: ERANGE; groups with stored
# offsets keep reading after a restart). Out-of-range values are refused
# at start. max_connections and max_inflight are hit in daemon_connect.sh
# and daemon_backpressure.sh.
#
#   bash tests/integration/daemon_limits.sh BUILD/bin
set -euo pipefail
source "$(dirname "$0")/daemon_lib.bash"
d_init "${1:-}" daemon-limits

cat >"$work/conf.lua" <<'EOF'
return {
  max_frame = 65536,
  max_topics = 3,
  max_producer_groups = 2,
  max_consumer_groups = 2,
  default_queues = 1,
}
EOF
d_start -c "$work/conf.lua"

drive "max_frame: announced, and a longer frame gets ETOOBIG, then close" <<'EOF'
conn keep
hello keep-1 admin
conn a
hello big-1 producer
expect max_frame = 65536
len 65537
recv
expect re = 0
expect err = "ETOOBIG"
expect msg = "frame length 65537 is over max_frame 65536: closing the connection"
closed
use keep
req {"op":"ping"}
expect ok = true
EOF

drive "max_topics: the fourth topic is refused, naming the limit; the others serve" <<'EOF'
conn p
hello prod-1 producer
req {"op":"send","msg":{"topic":"T1","body":"1"}}
expect ok = true
req {"op":"send","msg":{"topic":"T2","body":"2"}}
expect ok = true
req {"op":"tx.half","group":"pg1","msgs":[{"topic":"T3","body":"3"}]}
expect ok = true
save H tx_id
req {"op":"send","msg":{"topic":"T4","body":"4"}}
expect ok = false
expect err = "ERANGE"
expect code = -13
expect msg = "message not stored: topic limit reached (max_topics = 3): topic 'T4' not created"
req {"op":"tx.half","group":"pg1","msgs":[{"topic":"T1","body":"x"},{"topic":"T5","body":"y"}]}
expect err = "ERANGE"
expect msg = "half messages not stored: topic limit reached (max_topics = 3): topic 'T5' not created"
req {"op":"send","msg":{"topic":"T1","body":"1b"}}
expect ok = true
req {"op":"tx.end","tx_id":$H,"decision":"commit"}
expect state = "committed"
req {"op":"status"}
expect topics.# = 3
EOF

drive "max_producer_groups: a third group with undecided transactions is refused" <<'EOF'
conn p
hello prod-2 producer pg1,pg2
req {"op":"tx.half","group":"pg1","msgs":[{"topic":"T1","body":"a"}]}
expect ok = true
save A tx_id
req {"op":"tx.half","group":"pg2","msgs":[{"topic":"T1","body":"b"}]}
expect ok = true
save B tx_id
req {"op":"tx.half","group":"pg3","msgs":[{"topic":"T1","body":"c"}]}
expect ok = false
expect err = "ERANGE"
expect msg = "half messages not stored: producer group limit reached (max_producer_groups = 2 groups with undecided transactions): group 'pg3' refused"
req {"op":"tx.send","group":"pg3","msgs":[{"topic":"T1","body":"c"}]}
expect err = "ENOTFOUND"
# a group that is in takes more
req {"op":"tx.half","group":"pg1","msgs":[{"topic":"T1","body":"a2"}]}
expect ok = true
save A2 tx_id
# pg2 decided: its place is free
req {"op":"tx.end","tx_id":$B,"decision":"rollback"}
expect state = "rolled_back"
req {"op":"tx.half","group":"pg3","msgs":[{"topic":"T1","body":"c"}]}
expect ok = true
save C tx_id
req {"op":"tx.end","tx_id":$A,"decision":"commit"}
req {"op":"tx.end","tx_id":$A2,"decision":"commit"}
req {"op":"tx.end","tx_id":$C,"decision":"commit"}
expect state = "committed"
EOF

drive "max_consumer_groups: a third group is refused for receive and offset.set" <<'EOF'
conn c
hello cons-1 consumer
req {"op":"receive","group":"cg1","topic":"T1","max":100}
expect ok = true
save N msgs.#
req {"op":"offset.set","group":"cg2","topic":"T1","qid":0,"offset":1}
expect ok = true
req {"op":"receive","group":"cg3","topic":"T1"}
expect ok = false
expect err = "ERANGE"
expect msg = "receive refused: consumer group limit reached (max_consumer_groups = 2): group 'cg3' refused"
req {"op":"receive","group":"cg3","topic":"T1","wait_ms":200}
expect err = "ERANGE"
req {"op":"offset.set","group":"cg4","topic":"T1","qid":0,"offset":0}
expect err = "ERANGE"
expect msg ~ "max_consumer_groups = 2"
# a missing topic takes no place
req {"op":"offset.set","group":"cg5","topic":"NOPE","qid":0,"offset":0}
expect err = "ENOTFOUND"
req {"op":"receive","group":"cg2","topic":"T1","max":100}
expect ok = true
expect msgs.# >= 1
conn p
hello prod-3 producer
req {"op":"send","msg":{"topic":"T2","body":"still served"}}
expect ok = true
EOF
d_stop
same "SIGTERM: exit 0" "$d_rc" 0

# After a restart the groups with stored offsets keep their places, even
# with a lower limit than their number.
sed -i 's/max_consumer_groups = 2/max_consumer_groups = 1/' "$work/conf.lua"
d_start -c "$work/conf.lua"
drive "after a restart with max_consumer_groups = 1: both stored groups read, a new one is refused" <<'EOF'
conn c
hello cons-2 consumer
req {"op":"receive","group":"cg1","topic":"T2"}
expect ok = true
req {"op":"receive","group":"cg2","topic":"T2"}
expect ok = true
req {"op":"receive","group":"cg3","topic":"T2"}
expect err = "ERANGE"
expect msg ~ "max_consumer_groups = 1"
EOF
d_stop
same "SIGTERM after the restart: exit 0" "$d_rc" 0

# Out of range: exit 2, one line naming the key.
for kv in "max_consumer_groups = 0" "max_producer_groups = -1" "max_topics = 0"; do
  key=${kv%% =*}
  printf 'return { %s }\n' "$kv" >"$work/bad.lua"
  set +e
  "$txmqd" -c "$work/bad.lua" --listen 127.0.0.1:0 --data "$work/data3" 2>"$work/err" >/dev/null
  rc=$?
  set -e
  if [ "$rc" = 2 ] && [ "$(wc -l <"$work/err")" = 1 ] &&
     grep -q "^txmqd: config: key '$key' = .* is out of range" "$work/err"; then
    ok "config: $kv is refused"
  else
    not_ok "config: $kv: exit $rc, stderr $(head -c 300 "$work/err")"
  fi
done
d_finish
