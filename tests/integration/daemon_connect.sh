#!/usr/bin/env bash
# daemon_connect.sh - black-box tests of txmqd's connections: the handshake
# (accepted, wrong version, a request before hello, a bad client id, a
# second hello), ping, an unknown op on an open connection, the idle
# timeout, max_connections, 1,000 concurrent connections, and a clean
# SIGTERM with clients connected.
#
#   bash tests/integration/daemon_connect.sh BUILD/bin
set -euo pipefail
source "$(dirname "$0")/daemon_lib.bash"
d_init "${1:-}" daemon-connect

# Enough descriptors for 1,000 clients plus the daemon's own.
ulimit -n 4096 2>/dev/null || ulimit -n "$(ulimit -Hn)"
if [ "$(ulimit -n)" -lt 2100 ]; then
  echo "FAIL: the fd limit ($(ulimit -n)) is too low for 1,000 connections"; exit 1
fi

cat >"$work/conf.lua" <<'EOF'
max_connections = 1100    -- set as a global: the file may also return a table
EOF
d_start -c "$work/conf.lua"

drive "hello accepted: version, server, limits; ping answers the time" <<'EOF'
conn a
req {"op":"hello","version":1,"client":"c-1","role":"producer","producer_groups":["g1"],"consumer_groups":[]}
expect ok = true
expect re = 1
expect version = 1
expect server ~ "txmqd"
expect max_frame = 8388608
expect heartbeat_ms = 10000
expect max_inflight = 1024
req {"op":"ping"}
expect ok = true
expect time > 1700000000000
EOF

drive "wrong protocol version: EPROTO naming the supported version, then close" <<'EOF'
conn a
req {"op":"hello","version":2,"client":"c-1","role":"producer"}
expect ok = false
expect err = "EPROTO"
expect code = -18
expect msg ~ "speaks version 1"
closed
EOF

drive "a request before hello: EPROTO, then close" <<'EOF'
conn a
req {"op":"ping"}
expect ok = false
expect err = "EPROTO"
expect msg ~ "hello"
closed
EOF

drive "a response before hello: EPROTO (re 0), then close" <<'EOF'
conn a
send {"re":5,"ok":true}
recv
expect re = 0
expect err = "EPROTO"
closed
EOF

drive "bad hello fields: client id, role, groups, missing version" <<'EOF'
conn a
req {"op":"hello","version":1,"client":"bad id!","role":"producer"}
expect err = "EBADNAME"
expect msg ~ "client"
closed
conn b
req {"op":"hello","version":1,"client":"c","role":"king"}
expect err = "EPROTO"
expect msg ~ "role"
closed
conn c
req {"op":"hello","version":1,"client":"c","role":"producer","producer_groups":[".hidden"]}
expect err = "EBADNAME"
expect msg ~ "producer_groups"
closed
conn d
req {"op":"hello","client":"c","role":"producer"}
expect err = "EPROTO"
expect msg = "field 'version' is missing"
closed
conn e
req {"op":"hello","version":"1","client":"c","role":"producer"}
expect err = "EPROTO"
expect msg = "field 'version' must be an integer"
closed
EOF

drive "a second hello is refused and the connection stays usable" <<'EOF'
conn a
hello c-1 consumer
req {"op":"hello","version":1,"client":"c-2","role":"admin"}
expect err = "EPROTO"
expect msg ~ "already"
req {"op":"ping"}
expect ok = true
req {"op":"tx.resume","tx_id":"00000000000000000000000000000000"}
expect err = "EPROTO"
expect msg ~ "admin"
EOF

drive "an unknown op gets EPROTO and the connection stays open" <<'EOF'
conn a
hello c-1 producer
req {"op":"frobnicate"}
expect ok = false
expect err = "EPROTO"
expect msg = "unknown op 'frobnicate'"
req {"op":"ping"}
expect ok = true
EOF

# 1,000 clients at once: every one gets its hello and ping answered, and
# the daemon counts them.
drive "1,000 concurrent connections answered" 120 <<'EOF'
many 1000 crowd
conn admin
hello ops-1 admin
req {"op":"status"}
expect connections >= 1001
closemany
EOF

drive "status counts connections and requests" <<'EOF'
conn a
hello c-1 admin
req {"op":"status"}
expect ok = true
expect protocol = 1
expect version ~ "txmqd"
expect sync = "always"
expect connections >= 1
expect requests >= 2
expect protocol_errors >= 1
expect tx.pending = 0
EOF
d_stop
same "SIGTERM: exit 0" "$d_rc" 0
log_has "shutdown is logged" 'msg="stopped"'

# max_connections: the one too many gets EAGAIN (re 0) and is closed; the
# others keep working.
cat >"$work/conf2.lua" <<'EOF'
return { max_connections = 3, heartbeat_ms = 300 }  -- idle timeout 900 ms
EOF
d_start -c "$work/conf2.lua"
drive "an idle connection is closed after 3 x heartbeat_ms; a pinging one is not" <<'EOF'
conn idle
hello idle-1 consumer
conn busy
hello busy-1 consumer
req {"op":"ping"}
sleep 400
req {"op":"ping"}
sleep 400
req {"op":"ping"}
sleep 400
req {"op":"ping"}
use idle
closed 3000
use busy
req {"op":"ping"}
expect ok = true
EOF
log_has "the idle close is logged" 'msg="connection closed".*client=idle-1 reason="idle timeout"'

drive "max_connections: refused with EAGAIN, then closed; others unaffected" <<'EOF'
conn a
hello a producer
conn b
hello b producer
conn c
hello c producer
conn d
recv
expect re = 0
expect err = "EAGAIN"
expect code = -7
expect msg ~ "max_connections 3"
closed
use a
req {"op":"ping"}
expect ok = true
close
conn e
hello e producer
close
EOF
log_has "the refusal is logged" 'msg="connection refused".*too many connections'

# SIGTERM while clients are connected and one long poll waits: the poll is
# answered (empty), the daemon exits 0.
drive "setup: a topic to poll" <<'EOF'
conn a
hello a producer
req {"op":"send","msg":{"topic":"T"}}
req {"op":"receive","group":"g","topic":"T"}
req {"op":"ack","group":"g","handles":[]}
EOF
"$driver" "127.0.0.1:$d_port" >"$work/poll.out" 2>&1 <<'EOF' &
conn p
hello p consumer
req {"op":"receive","group":"g","topic":"T","wait_ms":30000}
EOF
poller=$!
sleep 0.5
d_stop
same "SIGTERM with a long poll waiting: exit 0" "$d_rc" 0
set +e
wait "$poller"
prc=$?
set -e
same "the long poll was answered before the close" "$prc" 0
if grep -q '"re":2' "$work/poll.out"; then ok "the poll got its (empty) answer"; else not_ok "the poll got no answer: $(tail -n 3 "$work/poll.out")"; fi

d_finish
