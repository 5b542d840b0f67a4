#!/usr/bin/env bash
# daemon_consume.sh - black-box tests of consumers over the wire: send then
# receive + ack, redelivery after the visibility timeout, long polls woken
# by a send, tag filters, clustering (one message to one member), the
# dead-letter topic, offsets, and responses kept within max_frame.
#
#   bash tests/integration/daemon_consume.sh BUILD/bin
set -euo pipefail
source "$(dirname "$0")/daemon_lib.bash"
d_init "${1:-}" daemon-consume

cat >"$work/conf.lua" <<'EOF'
default_queues = 2
max_deliveries = 2
EOF
d_start -c "$work/conf.lua"

drive "send, then receive and ack; an acked message is not delivered again" <<'EOF'
conn p
hello prod-1 producer
req {"op":"send","msg":{"topic":"C1","body":"m1","tags":"A","keys":"k1 k2","props":{"p":"v"},"born":1700000000000}}
expect ok = true
expect msg_id exists
expect qoff = 0
req {"op":"receive","group":"g","topic":"C1","max":5}
expect msgs.# = 1
expect msgs.0.body.$text = "m1"
expect msgs.0.tags = "A"
expect msgs.0.keys = "k1 k2"
expect msgs.0.props.p = "v"
expect msgs.0.born = 1700000000000
expect msgs.0.deliveries = 1
expect msgs.0.stored > 0
save H msgs.0.handle
req {"op":"ack","group":"g","handles":[$H]}
expect acked = 1
expect missed = 0
req {"op":"ack","group":"g","handles":[$H,"garbage",7]}
expect acked = 0
expect missed = 3
req {"op":"receive","group":"g","topic":"C1","max":5,"visibility_ms":200}
expect msgs.# = 0
sleep 400
req {"op":"receive","group":"g","topic":"C1","max":5}
expect msgs.# = 0
EOF

drive "peek reads a queue without a group: nothing delivered, nothing moved" <<'EOF'
conn p
hello peek-1 consumer
req {"op":"send","msg":{"topic":"PK","body":"p1","qid":0,"tags":"T"}}
req {"op":"send","msg":{"topic":"PK","body":"p2","qid":0}}
req {"op":"send","msg":{"topic":"PK","body":"p3","qid":0}}
req {"op":"peek","topic":"PK","qid":0,"max":2}
expect msgs.# = 2
expect msgs.0.body.$text = "p1"
expect msgs.0.tags = "T"
expect msgs.0.qid = 0
expect msgs.0.qoff = 0
expect msgs.1.qoff = 1
expect msgs.0.handle absent
expect next = 2
expect begin = 0
expect end = 3
req {"op":"peek","topic":"PK","qid":0,"offset":2}
expect msgs.# = 1
expect msgs.0.body.$text = "p3"
expect next = 3
req {"op":"peek","topic":"PK","qid":0,"offset":3}
expect msgs.# = 0
expect next = 3
req {"op":"receive","group":"pg","topic":"PK","max":5}
expect msgs.# = 3
req {"op":"peek","topic":"PK","qid":0}
expect msgs.# = 3
req {"op":"receive","group":"pg2","topic":"PK","max":5}
expect msgs.# = 3
req {"op":"peek","topic":"PK","qid":1}
expect msgs.# = 0
expect end = 0
req {"op":"peek","topic":"PK","qid":2}
expect err = "ERANGE"
expect msg = "topic 'PK' has 2 queues (qid 0-1)"
req {"op":"peek","topic":"PK","qid":0,"max":0}
expect err = "ERANGE"
expect msg ~ "max"
req {"op":"peek","topic":"NOPE","qid":0}
expect err = "ENOTFOUND"
req {"op":"peek","topic":"PK"}
expect err = "EPROTO"
expect msg = "field 'qid' is missing"
EOF

drive "topic.create: admin only, a queue count, answered when durable" <<'EOF'
conn p
hello topic-1 producer
req {"op":"topic.create","topic":"TC","queues":3}
expect err = "EPROTO"
expect msg ~ "needs role"
conn a
hello topic-2 admin
req {"op":"topic.create","topic":"TC","queues":3}
expect topic = "TC"
expect queues = 3
req {"op":"topic.create","topic":"TC","queues":3}
expect err = "EEXIST"
req {"op":"topic.create","topic":"TD","queues":0}
expect err = "ERANGE"
req {"op":"topic.create","topic":".hidden","queues":1}
expect err = "EBADNAME"
req {"op":"peek","topic":"TC","qid":2}
expect msgs.# = 0
req {"op":"peek","topic":"TC","qid":3}
expect err = "ERANGE"
EOF

drive "an unacknowledged message comes back after its visibility timeout" <<'EOF'
conn p
hello prod-1 producer
req {"op":"send","msg":{"topic":"C2","body":"again"}}
req {"op":"receive","group":"g","topic":"C2","visibility_ms":300}
expect msgs.# = 1
expect msgs.0.deliveries = 1
req {"op":"receive","group":"g","topic":"C2"}
expect msgs.# = 0
req {"op":"receive","group":"g","topic":"C2","wait_ms":3000}
expect msgs.# = 1
expect msgs.0.deliveries = 2
expect msgs.0.body.$text = "again"
EOF

drive "after max_deliveries the message moves to DLQ.<group>" <<'EOF'
conn p
hello prod-1 producer
req {"op":"send","msg":{"topic":"C3","body":"poison"}}
req {"op":"receive","group":"dg","topic":"C3","visibility_ms":200}
expect msgs.# = 1
req {"op":"receive","group":"dg","topic":"C3","visibility_ms":200,"wait_ms":3000}
expect msgs.0.deliveries = 2
sleep 600
req {"op":"receive","group":"dg","topic":"C3","wait_ms":300}
expect msgs.# = 0
req {"op":"receive","group":"ops","topic":"DLQ.dg","wait_ms":3000}
expect msgs.# = 1
expect msgs.0.body.$text = "poison"
expect msgs.0.props.DLQ_ORIGIN_TOPIC = "C3"
EOF

drive "a long poll is answered as soon as a message is sent" <<'EOF'
conn p
hello prod-1 producer
req {"op":"send","msg":{"topic":"C4","body":"first"}}
conn c
hello cons-1 consumer
req {"op":"receive","group":"g","topic":"C4"}
expect msgs.# = 1
send {"op":"receive","group":"g","topic":"C4","wait_ms":20000}
norecv 300
use p
req {"op":"send","msg":{"topic":"C4","body":"wakes"}}
use c
wait 3000
expect msgs.# = 1
expect msgs.0.body.$text = "wakes"
EOF

drive "a long poll on a topic that does not exist yet gets its first message (even from latest)" <<'EOF'
conn c
hello cons-1 consumer
send {"op":"receive","group":"g","topic":"NEWTOPIC","wait_ms":20000,"from":"latest"}
norecv 400
conn p
hello prod-1 producer
req {"op":"send","msg":{"topic":"NEWTOPIC","body":"born"}}
use c
wait 3000
expect msgs.# = 1
expect msgs.0.body.$text = "born"
req {"op":"receive","group":"g","topic":"NEVER","wait_ms":300}
expect ok = true
expect msgs.# = 0
req {"op":"receive","group":"g","topic":"NEVER"}
expect err = "ENOTFOUND"
EOF

drive "tag filters" <<'EOF'
conn p
hello prod-1 producer
req {"op":"send","msg":{"topic":"C5","body":"a","tags":"A"}}
req {"op":"send","msg":{"topic":"C5","body":"b","tags":"B"}}
req {"op":"send","msg":{"topic":"C5","body":"c","tags":"C"}}
req {"op":"send","msg":{"topic":"C5","body":"none"}}
req {"op":"receive","group":"tg","topic":"C5","tags":"A || C","max":10}
expect msgs.# = 2
req {"op":"receive","group":"all","topic":"C5","tags":"*","max":10}
expect msgs.# = 4
req {"op":"receive","group":"tg2","topic":"C5","tags":"A ||","max":10}
expect err = "EINVAL"
expect msg ~ "tags"
EOF

drive "clustering: members of one group get different messages; groups are independent" <<'EOF'
conn p
hello prod-1 producer
req {"op":"send","msg":{"topic":"C6","body":"x1"}}
req {"op":"send","msg":{"topic":"C6","body":"x2"}}
conn m1
hello mem-1 consumer
req {"op":"receive","group":"cl","topic":"C6","max":1}
expect msgs.# = 1
save B1 msgs.0.body
conn m2
hello mem-2 consumer
req {"op":"receive","group":"cl","topic":"C6","max":5}
expect msgs.# = 1
expect msgs.0.body != $B1
req {"op":"receive","group":"cl","topic":"C6","max":5}
expect msgs.# = 0
req {"op":"receive","group":"other","topic":"C6","max":5}
expect msgs.# = 2
EOF

drive "offsets: get after acks, set before a group reads and while it reads (its handles go stale: ack counts them missed), errors" <<'EOF'
conn p
hello prod-1 producer
req {"op":"send","msg":{"topic":"C7","body":"o0","qid":0}}
req {"op":"send","msg":{"topic":"C7","body":"o1","qid":0}}
req {"op":"send","msg":{"topic":"C7","body":"o2","qid":0}}
expect qid = 0
expect qoff = 2
req {"op":"receive","group":"og","topic":"C7","max":1}
save H msgs.0.handle
req {"op":"ack","group":"og","handles":[$H]}
req {"op":"offset.get","group":"og","topic":"C7","qid":0}
expect offset = 1
req {"op":"offset.set","group":"fresh","topic":"C7","qid":0,"offset":4}
expect err = "ERANGE"
expect msg = "offset not set: offset 4 is past the end of C7/0 (3): the group would skip messages not yet written"
req {"op":"offset.set","group":"fresh","topic":"C7","qid":0,"offset":2}
expect ok = true
req {"op":"offset.get","group":"fresh","topic":"C7","qid":0}
expect offset = 2
req {"op":"receive","group":"fresh","topic":"C7","max":10}
expect msgs.# = 1
expect msgs.0.body.$text = "o2"
req {"op":"offset.set","group":"og","topic":"C7","qid":0,"offset":0}
expect ok = true
req {"op":"receive","group":"og","topic":"C7","max":10}
expect msgs.# = 3
expect msgs.0.body.$text = "o0"
save S msgs.0.handle
req {"op":"offset.get","group":"og","topic":"C7","qid":0}
expect offset = 0
req {"op":"offset.set","group":"og","topic":"C7","qid":0,"offset":0}
expect ok = true
req {"op":"ack","group":"og","handles":[$S]}
expect ok = true
expect acked = 0
expect missed = 1
req {"op":"offset.get","group":"never","topic":"C7","qid":0}
expect err = "ENOTFOUND"
req {"op":"offset.get","group":"og","topic":"C7","qid":7}
expect err = "ERANGE"
req {"op":"offset.get","group":"og","topic":"NOPE","qid":0}
expect err = "ENOTFOUND"
req {"op":"receive","group":"og","topic":"NOPE"}
expect err = "ENOTFOUND"
req {"op":"receive","group":"og","topic":"C7","from":"sideways"}
expect err = "EPROTO"
EOF

drive "from latest skips what was there" <<'EOF'
conn p
hello prod-1 producer
req {"op":"send","msg":{"topic":"C8","body":"old"}}
req {"op":"receive","group":"late","topic":"C8","from":"latest"}
expect msgs.# = 0
req {"op":"send","msg":{"topic":"C8","body":"new"}}
req {"op":"receive","group":"late","topic":"C8","wait_ms":2000}
expect msgs.# = 1
expect msgs.0.body.$text = "new"
EOF

# Three 3 MiB messages cannot travel in one 8 MiB frame: a receive of 10
# returns what fits, the rest comes next, none is lost or made invisible.
drive "big messages: each response stays within max_frame" 120 <<'EOF'
conn p
hello prod-1 producer
req {"op":"send","msg":{"topic":"C9","body":{"$bytes":3145728}}}
req {"op":"send","msg":{"topic":"C9","body":{"$bytes":3145728}}}
req {"op":"send","msg":{"topic":"C9","body":{"$bytes":3145728}}}
req {"op":"receive","group":"big","topic":"C9","max":10}
expect msgs.# >= 1
expect msgs.# <= 2
print msgs.#
req {"op":"receive","group":"big","topic":"C9","max":10}
expect msgs.# >= 1
print msgs.#
req {"op":"receive","group":"big","topic":"C9","max":10}
print msgs.#
req {"op":"receive","group":"big","topic":"C9","max":10}
expect msgs.# = 0
EOF
total=0
for n in $(sed -n 's/^value msgs.# //p' "$work/drive.out"); do total=$((total + n)); done
same "all three big messages were received, none twice" "$total" 3

d_stop
same "SIGTERM: exit 0" "$d_rc" 0
d_finish
