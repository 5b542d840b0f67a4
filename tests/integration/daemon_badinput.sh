#!/usr/bin/env bash
# daemon_badinput.sh - hostile and malformed input against txmqd: frames
# that break the stream (over-long, zero length, invalid or truncated
# msgpack, trailing bytes, a container header claiming 4 billion elements,
# nesting past the limit, too many objects, random bytes, a frame cut by
# EOF) get an error frame with re 0 and a close; frames that are valid
# msgpack but not valid messages (not a map, no op, a bad id, an unknown op,
# a missing field, a wrong type, bad names, values over their limits) get an
# error response on a connection that stays open. Throughout, the daemon
# keeps serving other connections, its stored data does not change, and
# it shuts down cleanly.
#
#   bash tests/integration/daemon_badinput.sh BUILD/bin
set -euo pipefail
source "$(dirname "$0")/daemon_lib.bash"
d_init "${1:-}" daemon-badinput

d_start
drive "setup: some stored data" <<'EOF'
conn p
hello prod-1 producer
req {"op":"send","msg":{"topic":"B","body":"keep-1"}}
req {"op":"send","msg":{"topic":"B","body":"keep-2"}}
req {"op":"tx.half","group":"bg","msgs":[{"topic":"B2","body":"half"}]}
EOF
# Bytes of the log other than zeros: the writer fills room ahead of the
# data with zeros when idle, and every record has non-zero bytes.
log_bytes() { cat "$work"/data/log/*.log | tr -d '\000' | wc -c; }
before=$(log_bytes)

# A client that stays connected through all of it, to prove the daemon
# serves others meanwhile.
drive "stream violations: an error frame with re 0, then close" <<'EOF'
conn watcher
hello watch-1 consumer

conn a
hello bad-1 producer
len 9000000
recv
expect re = 0
expect ok = false
expect err = "ETOOBIG"
expect msg ~ "max_frame"
closed

conn a
len 0
recv
expect re = 0
expect err = "EPROTO"
expect msg ~ "length 0"
closed

conn a
frame c1
recv
expect re = 0
expect err = "EPROTO"
expect msg ~ "invalid msgpack"
closed

conn a
hello bad-1 producer
frame 82a16f
recv
expect re = 0
expect err = "EPROTO"
closed

conn a
frame 8000
recv
expect err = "EPROTO"
closed

conn a
hello bad-1 producer
frame ddffffffff
recv
expect re = 0
expect err = "EPROTO"
closed

conn a
frame 9191919191919191919191919191919191919191919191919191919191919191c0
recv
expect err = "EPROTO"
expect msg ~ "nested"
closed

use watcher
req {"op":"ping"}
expect ok = true
EOF

# 70,000 nils: valid msgpack, but more objects than a frame may hold.
{
  echo "conn a"
  printf 'frame dd00011170'; head -c 70000 /dev/zero | tr '\0' '\300' | od -An -v -tx1 | tr -d ' \n'; echo
  echo "recv"
  echo "expect err = \"EPROTO\""
  echo "expect re = 0"
  echo "closed"
} >"$work/items.script"
drive "more than 65,536 objects in a frame: EPROTO, close" <"$work/items.script"

# 64 KiB of random bytes.
{
  echo "conn a"
  printf 'raw '; head -c 65536 /dev/urandom | od -An -v -tx1 | tr -d ' \n'; echo
  echo "closed 5000"
} >"$work/random.script"
drive "random bytes: the connection is closed" <"$work/random.script"

drive "a frame cut short by the end of the stream: closed, nothing stored" <<'EOF'
conn a
hello bad-1 producer
raw 00000100810102
shutdown
closed 3000
EOF

# {"op":"ping","id":7} and {"op":"ping","id":8}, 13 bytes each after the
# length: cut in pieces across reads, and two and a half in one write.
drive "frames in pieces and several in one read are each answered once" <<'EOF'
conn a
hello pieces-1 producer
raw 0000000d82a26f
norecv 200
raw 70a470696e67a2
norecv 200
raw 696407
recv
expect re = 7
expect ok = true
raw 0000000d82a26f70a470696e67a26964070000000d82a26f70a470696e67a26964080000000d82a2
recv
expect re = 7
recv
expect re = 8
norecv 200
raw 6f70a470696e67a2696407
recv
expect re = 7
req {"op":"ping"}
expect ok = true
EOF

drive "not a message: error responses, the connection stays open" <<'EOF'
conn a
hello bad-2 producer
frame 93010203
recv
expect re = 0
expect err = "EPROTO"
expect msg = "a frame must hold a msgpack map"
send {"x":1}
recv
expect re = 0
expect err = "EPROTO"
expect msg ~ "'op'"
send {"op":"ping","id":null}
recv
expect re = 0
expect msg = "field 'id' is missing"
send {"op":"ping","id":"7"}
recv
expect re = 0
expect msg ~ "'id' must be an integer"
send {"op":"ping","id":0}
recv
expect re = 0
send {"op":"ping","id":-5}
recv
expect re = 0
send {"op":"ping","id":9007199254740992}
recv
expect re = 0
send {"op":7,"id":8}
recv
expect re = 8
expect msg = "field 'op' must be a string"
req {"op":"no.such.op"}
expect err = "EPROTO"
expect msg = "unknown op 'no.such.op'"
send {"re":424242,"ok":true,"decision":"commit"}
req {"op":"ping"}
expect ok = true
EOF

drive "bad fields: missing, wrong type, bad names, over the limits" 120 <<'EOF'
conn a
hello bad-3 producer
req {"op":"send"}
expect err = "EPROTO"
expect msg = "field 'msg' is missing"
req {"op":"send","msg":"hello"}
expect err = "EPROTO"
expect msg = "msg must be a map (a message)"
req {"op":"send","msg":{"topic":5}}
expect err = "EPROTO"
expect msg = "msg.topic must be a string"
req {"op":"send","msg":{"topic":"../etc"}}
expect err = "EBADNAME"
req {"op":"send","msg":{"topic":".hidden"}}
expect err = "EBADNAME"
req {"op":"send","msg":{"topic":"B","body":7}}
expect err = "EPROTO"
expect msg ~ "body"
req {"op":"send","msg":{"topic":"B","body":{"$bytes":4194305}}}
expect err = "ETOOBIG"
expect msg ~ "body"
req {"op":"send","msg":{"topic":"B","props":{"k":5}}}
expect err = "EPROTO"
req {"op":"send","msg":{"topic":"B","born":"yesterday"}}
expect err = "EPROTO"
req {"op":"send","msg":{"topic":"B","qid":1000}}
expect ok = false
req {"op":"tx.half","group":"bg","msgs":{"topic":"B"}}
expect err = "EPROTO"
expect msg ~ "array"
req {"op":"tx.half","group":"bad group","msgs":[{"topic":"B"}]}
expect err = "EBADNAME"
req {"op":"tx.half","group":"bg","immunity_ms":-1,"msgs":[{"topic":"B"}]}
expect err = "ERANGE"
req {"op":"tx.end","decision":"commit"}
expect msg = "field 'tx_id' is missing"
req {"op":"tx.end","tx_id":{"$bin":"0102"},"decision":"commit"}
expect err = "EPROTO"
req {"op":"receive","group":"g","topic":"B","max":0}
expect err = "ERANGE"
req {"op":"receive","group":"g","topic":"B","wait_ms":99999999}
expect err = "ERANGE"
req {"op":"receive","group":"g","topic":"B","tags":7}
expect err = "EPROTO"
req {"op":"ack","group":"g","handles":"h"}
expect err = "EPROTO"
req {"op":"tx.list","limit":0}
expect err = "ERANGE"
req {"op":"tx.show"}
expect err = "EPROTO"
req {"op":"reload"}
expect err = "EPROTO"
req {"op":"ping"}
expect ok = true
EOF

# 65 messages in one transaction, 65 properties on one message.
{
  echo "conn a"
  echo "hello bad-4 producer"
  m='{"topic":"B"}'
  msgs=$m; for i in $(seq 2 65); do msgs="$msgs,$m"; done
  echo "req {\"op\":\"tx.half\",\"group\":\"bg\",\"msgs\":[$msgs]}"
  echo "expect err = \"ERANGE\""
  props='"p1":"v"'; for i in $(seq 2 65); do props="$props,\"p$i\":\"v\""; done
  echo "req {\"op\":\"send\",\"msg\":{\"topic\":\"B\",\"props\":{$props}}}"
  echo "expect err = \"ETOOBIG\""
} >"$work/limits.script"
drive "over 64 messages or 64 properties: refused" <"$work/limits.script"

after=$(log_bytes)
same "no bad input reached the log" "$after" "$before"
drive "the daemon still serves, and the data is what it was" <<'EOF'
conn c
hello check-1 admin
req {"op":"status"}
expect topics.0.name = "B"
expect topics.0.messages = 2
expect tx.pending = 1
expect tx.begun = 1
req {"op":"receive","group":"verify","topic":"B","max":10}
expect msgs.# = 2
EOF
kill -0 "$d_pid" && ok "the daemon is alive"
log_has "violations are logged" 'level=warn msg="protocol violation"'
d_stop
same "SIGTERM: exit 0" "$d_rc" 0
d_finish
