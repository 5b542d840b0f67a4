#!/usr/bin/env bash
# daemon_auth.sh - black-box tests of txmqd's authentication: the auth key
# (secrets by role, one from the environment through os.getenv), each role
# with its own secret, the admin secret for any role, a wrong or missing
# secret and a role without a secret refused with EAUTH and closed,
# operations outside the role refused on a connection that stays open,
# status (auth, auth_failures), no secret in the log, the daemon serving
# others throughout; bad auth configurations refused with exit 2 and one
# line that names the problem and never the secret; and auth off as
# before (a secret is ignored, roles are declarations).
#
#   bash tests/integration/daemon_auth.sh BUILD/bin
set -euo pipefail
source "$(dirname "$0")/daemon_lib.bash"
d_init "${1:-}" daemon-auth

P_SECRET="prod-s3cret-from-file"
A_SECRET="adm1n-s3cret-from-env"
cat >"$work/conf.lua" <<EOF
return {
  auth = {
    producer = "$P_SECRET",
    admin = os.getenv("TXMQ_TEST_ADMIN_SECRET"),  -- consumers: none of their own
  },
}
EOF
TXMQ_TEST_ADMIN_SECRET="$A_SECRET" d_start -c "$work/conf.lua"
log_has "the starting line names the roles with a secret" 'msg="starting".* auth=producer,admin'

drive "each role with its secret, or the admin secret; operations by role" <<EOF
conn watcher
secret $A_SECRET
hello watch-1 admin
secret $P_SECRET
conn p
hello prod-1 producer g1
req {"op":"send","msg":{"topic":"AT","body":"one"}}
expect ok = true
req {"op":"tx.half","group":"g1","msgs":[{"topic":"AT","body":"two"}]}
expect ok = true
save TX tx_id
req {"op":"tx.end","tx_id":\$TX,"decision":"commit"}
expect state = "committed"
req {"op":"tx.list"}
expect ok = true
req {"op":"status"}
expect auth = true
# outside the role: EPROTO naming the roles, the connection stays open
req {"op":"receive","group":"cg","topic":"AT"}
expect ok = false
expect err = "EPROTO"
expect msg = "op 'receive' needs role \"consumer\" or \"admin\"; this connection's role is \"producer\""
req {"op":"offset.set","group":"cg","topic":"AT","qid":0,"offset":0}
expect err = "EPROTO"
req {"op":"reload","group":"g1"}
expect err = "EPROTO"
expect msg ~ "needs role \"admin\""
req {"op":"tx.resume","tx_id":\$TX}
expect err = "EPROTO"
req {"op":"ping"}
expect ok = true
# a consumer with the admin secret (consumers have none of their own)
secret $A_SECRET
conn c
hello cons-1 consumer
req {"op":"receive","group":"cg","topic":"AT","max":10}
expect msgs.# = 2
req {"op":"ack","group":"cg","handles":[]}
expect ok = true
req {"op":"offset.get","group":"cg","topic":"AT","qid":0}
expect ok = true
req {"op":"send","msg":{"topic":"AT","body":"no"}}
expect err = "EPROTO"
expect msg = "op 'send' needs role \"producer\" or \"admin\"; this connection's role is \"consumer\""
req {"op":"tx.list"}
expect err = "EPROTO"
req {"op":"status"}
expect ok = true
# a producer with the admin secret
conn p2
hello prod-2 producer
req {"op":"send","msg":{"topic":"AT","body":"three"}}
expect ok = true
# an admin does everything
conn a
hello adm-1 admin
req {"op":"receive","group":"cg2","topic":"AT","max":10}
expect msgs.# = 3
req {"op":"reload","group":"nothing-here"}
expect err = "ENOTFOUND"
EOF

drive "wrong, missing, non-string secrets and a role without a secret: EAUTH, closed" <<EOF
conn keep
secret $P_SECRET
hello keep-1 producer
conn a
req {"op":"hello","version":1,"client":"bad-1","role":"producer","secret":"prod-s3cret-from-fil"}
expect ok = false
expect err = "EAUTH"
expect code = -22
expect msg = "authentication failed: wrong secret for role \"producer\""
closed
conn b
req {"op":"hello","version":1,"client":"bad-2","role":"admin"}
expect err = "EAUTH"
expect msg = "authentication failed: role \"admin\" needs its secret (a string in field 'secret')"
closed
conn c
req {"op":"hello","version":1,"client":"bad-3","role":"admin","secret":{"\$bin":"00"}}
expect err = "EAUTH"
closed
conn d
req {"op":"hello","version":1,"client":"bad-4","role":"consumer","secret":"$P_SECRET"}
expect err = "EAUTH"
expect msg ~ "role \"consumer\" has no secret on this server"
closed
conn e
req {"op":"hello","version":1,"client":"bad-5","role":"admin","secret":"$P_SECRET"}
expect err = "EAUTH"
expect msg ~ "wrong secret"
closed
# a consumer announcing producer groups would answer checks: refused
conn f
req {"op":"hello","version":1,"client":"bad-6","role":"consumer","producer_groups":["g1"],"secret":"$A_SECRET"}
expect err = "EPROTO"
expect msg ~ "producer_groups"
closed
# a request before hello is still refused as before
conn g
req {"op":"ping"}
expect err = "EPROTO"
closed
use keep
req {"op":"status"}
expect auth = true
expect auth_failures = 5
expect connections = 1
EOF
log_has "a refusal is logged with client, role and reason" \
  'level=warn msg="authentication failed" conn=[0-9]+ peer=127\.0\.0\.1:[0-9]+ client=bad-1 role=producer reason="wrong secret"'
log_has "a role without a secret is logged as such" \
  'msg="authentication failed".*client=bad-4 role=consumer reason="role has no secret"'
# Neither the secrets nor the wrong one a client tried appear anywhere in
# the log.
for s in "$P_SECRET" "$A_SECRET" "prod-s3cret-from-fil" "s3cret"; do
  if grep -qF -- "$s" "$d_log"; then
    not_ok "the log holds a secret: $(grep -F -- "$s" "$d_log" | head -n 1)"
  else
    ok "the log holds no '$s'"
  fi
done

drive "1,000 connections with the admin secret" 120 <<EOF
secret $A_SECRET
many 1000 crowd
conn admin
hello ops-1 admin
req {"op":"status"}
expect connections >= 1001
closemany
EOF
d_stop
same "SIGTERM with auth on: exit 0" "$d_rc" 0

# ---- bad auth configurations: exit 2, one line, never the secret ----
out="$work/out"
err="$work/err"
usage_err() {
  local name=$1 pat=$2
  shift 2
  set +e
  (cd "$work" && timeout 20 "$txmqd" --listen 127.0.0.1:0 --data "$work/data2" "$@" >"$out" 2>"$err")
  local rc=$?
  set -e
  local lines
  lines=$(wc -l <"$err" | tr -d ' ')
  if [ "$rc" != 2 ]; then
    not_ok "$name: exit $rc, want 2 (stderr: $(head -c 300 "$err"))"
  elif [ "$lines" != 1 ] || ! grep -Eq "^txmqd: .*$pat" "$err"; then
    not_ok "$name: stderr '$(head -c 300 "$err")' is not one line 'txmqd: ...$pat...'"
  elif grep -qF "hunter2" "$err"; then
    not_ok "$name: the error shows the secret: $(cat "$err")"
  else
    ok "$name"
  fi
}
conf() { cat >"$work/$1"; }
conf a1.lua <<'EOF'
return { auth = { producer = "hunter2-hunter2", operator = "hunter2-x", king = 1 } }
EOF
usage_err "auth: unknown roles are named" \
  "key 'auth' has unknown role\(s\) ('operator', 'king'|'king', 'operator') \(the roles are producer, consumer and admin\)" -c a1.lua
conf a2.lua <<'EOF'
return { auth = { admin = "hunter2" } }
EOF
usage_err "auth: a secret under 8 bytes" "auth.admin must be a string of 8 to 256 bytes" -c a2.lua
conf a3.lua <<'EOF'
return { auth = { admin = string.rep("hunter2", 40) } }
EOF
usage_err "auth: a secret over 256 bytes" "auth.admin must be a string of 8 to 256 bytes" -c a3.lua
conf a4.lua <<'EOF'
return { auth = { consumer = 12345678 } }
EOF
usage_err "auth: a secret that is not a string" "auth.consumer must be a string" -c a4.lua
conf a5.lua <<'EOF'
return { auth = { admin = os.getenv("TXMQ_TEST_UNSET_VARIABLE") } }
EOF
usage_err "auth: an unset environment variable leaves no secret" \
  "key 'auth' sets no secret \(is the environment variable it reads unset\?\)" -c a5.lua
conf a6.lua <<'EOF'
return { auth = "hunter2-hunter2" }
EOF
usage_err "auth: not a table" "key 'auth' must be a table of secrets by role" -c a6.lua
conf a7.lua <<'EOF'
return { auth = { producer = "hunter2-same", admin = "hunter2-same" } }
EOF
usage_err "auth: a role sharing the admin secret" "auth.producer is the same as auth.admin" -c a7.lua
conf a8.lua <<'EOF'
return { auth = { "hunter2-hunter2" } }
EOF
usage_err "auth: a list instead of roles" "key 'auth' takes roles as names" -c a8.lua

# ---- auth off: as before ----
d_start
log_has "auth off is said at start" 'msg="starting".* auth=off'
drive "auth off: a secret is ignored, roles are declarations, admin ops still need admin" <<'EOF'
conn p
req {"op":"hello","version":1,"client":"p-1","role":"producer","secret":"anything at all"}
expect ok = true
req {"op":"send","msg":{"topic":"OFF","body":"x"}}
expect ok = true
req {"op":"receive","group":"g","topic":"OFF"}
expect msgs.# = 1
req {"op":"tx.resume","tx_id":"00000000000000000000000000000000"}
expect err = "EPROTO"
expect msg = "op 'tx.resume' needs role \"admin\""
req {"op":"status"}
expect auth = false
expect auth_failures = 0
conn c
hello c-1 consumer g1
req {"op":"send","msg":{"topic":"OFF","body":"y"}}
expect ok = true
EOF
d_stop
same "SIGTERM with auth off: exit 0" "$d_rc" 0
d_finish
