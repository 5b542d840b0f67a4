#!/usr/bin/env bash
# daemon_flags.sh - txmqd's command line and configuration file: --help and
# --version; bad flags and bad configuration files (unknown key, wrong
# type, out of range, syntax error, runtime error, endless loop, memory
# hog, no sandbox escape, not a table) are refused with exit 2 and exactly
# one line "txmqd: ..." naming the problem; a config in either style
# (returned table or globals) works and flags override it; start-up
# failures (a data dir that is a file, a data dir locked by another txmqd,
# a port in use) exit 1 with one level=error line.
#
#   bash tests/integration/daemon_flags.sh BUILD/bin
set -euo pipefail
source "$(dirname "$0")/daemon_lib.bash"
d_init "${1:-}" daemon-flags

out="$work/out"
err="$work/err"
rc=0
# run ARGS...: txmqd with ARGS (at most 20 s) in $work, stdout/stderr/status.
run() {
  set +e
  (cd "$work" && timeout 20 "$txmqd" "$@" >"$out" 2>"$err")
  rc=$?
  set -e
}
# usage_err NAME PATTERN ARGS...: exit 2 and one stderr line, starting with
# "txmqd: " and matching PATTERN (extended regex).
usage_err() {
  local name=$1 pat=$2
  shift 2
  run "$@"
  local lines
  lines=$(wc -l <"$err" | tr -d ' ')
  if [ "$rc" != 2 ]; then
    not_ok "$name: exit $rc, want 2 (stderr: $(head -c 300 "$err"))"
  elif [ "$lines" != 1 ] || ! grep -Eq "^txmqd: .*$pat" "$err"; then
    not_ok "$name: stderr '$(head -c 300 "$err")' is not one line 'txmqd: ...$pat...'"
  else
    ok "$name"
  fi
}
# start_err NAME PATTERN ARGS...: exit 1 with exactly one level=error line
# matching PATTERN.
start_err() {
  local name=$1 pat=$2
  shift 2
  run "$@"
  local n
  n=$(grep -c 'level=error' "$err" || true)
  if [ "$rc" != 1 ]; then
    not_ok "$name: exit $rc, want 1 (stderr: $(head -c 400 "$err"))"
  elif [ "$n" != 1 ] || ! grep 'level=error' "$err" | grep -Eq "$pat"; then
    not_ok "$name: want one level=error line matching '$pat', got: $(grep level=error "$err" | head -c 400)"
  else
    ok "$name"
  fi
}
conf() { cat >"$work/$1"; }

run --help
if [ "$rc" = 0 ] && grep -q '^usage: txmqd' "$out" && grep -q -- '--listen HOST:PORT' "$out" && [ ! -s "$err" ]; then
  ok "--help: usage on stdout, exit 0"
else
  not_ok "--help: exit $rc, stdout $(head -c 200 "$out")"
fi
run -h
same "-h: exit 0" "$rc" 0
run --version
if [ "$rc" = 0 ] && grep -Eq '^txmqd [0-9]+\.[0-9]+\.[0-9]+$' "$out"; then ok "--version"; else not_ok "--version: exit $rc, '$(cat "$out")'"; fi

usage_err "unknown flag" "unknown option '--frobnicate'" --frobnicate
usage_err "a flag without its value" "option '--data' needs a value" --data
usage_err "bad --sync" "--sync must be always, interval or never, not 'sometimes'" --sync sometimes
usage_err "bad --sync-interval-ms" "--sync-interval-ms must be a positive integer" --sync-interval-ms 0
usage_err "bad --listen" "listen address 'nowhere' is not HOST:PORT" --listen nowhere
usage_err "bad --listen port" "listen address '127.0.0.1:99999'" --listen 127.0.0.1:99999
usage_err "a stray argument" "unexpected argument 'extra'" extra
usage_err "bad --log-level" "--log-level must be" --log-level loud
usage_err "a missing config file" "cannot read config .*nope.lua" -c nope.lua

conf unknown.lua <<'EOF'
return { listen = "127.0.0.1:0", frobnicate = 1 }
EOF
usage_err "config: an unknown key is named" "config unknown.lua: unknown key 'frobnicate'" -c unknown.lua
conf unknown2.lua <<'EOF'
max_frane = 1000000   -- a typo, as a global
EOF
usage_err "config: an unknown global is named" "unknown key 'max_frane'" -c unknown2.lua
conf type.lua <<'EOF'
return { max_frame = "big" }
EOF
usage_err "config: wrong type" "key 'max_frame' must be an integer" -c type.lua
conf type2.lua <<'EOF'
return { sync = "sometimes" }
EOF
usage_err "config: bad sync" "key 'sync' must be" -c type2.lua
conf type3.lua <<'EOF'
return { allow_modules = { 5 } }
EOF
usage_err "config: bad list" "key 'allow_modules' must be an array of strings" -c type3.lua
conf range.lua <<'EOF'
return { max_frame = 10 }
EOF
usage_err "config: out of range" "key 'max_frame' = 10 is out of range" -c range.lua
conf range2.lua <<'EOF'
return { max_checks = -3 }
EOF
usage_err "config: out of range (tx)" "key 'max_checks' = -3 is out of range" -c range2.lua
conf syntax.lua <<'EOF'
return { listen = "127.0.0.1:0",
EOF
usage_err "config: syntax error with file and line" "config syntax.lua: syntax.lua:2:" -c syntax.lua
conf error.lua <<'EOF'
error("not today")
EOF
usage_err "config: a runtime error" "not today" -c error.lua
conf loop.lua <<'EOF'
while true do end
EOF
start=$(date +%s)
usage_err "config: an endless loop is stopped" "ran longer than 1000 ms" -c loop.lua
same "config: the loop was stopped within seconds" "$(( $(date +%s) - start < 10 ))" 1
conf loop2.lua <<'EOF'
while true do pcall(function() while true do end end) end
EOF
usage_err "config: pcall cannot swallow the time limit" "ran longer than 1000 ms" -c loop2.lua
# 1 MiB strings: the cap (16 MiB) is reached in a few steps, well inside
# the time limit even in the sanitizer build on a busy machine (with
# 64-byte strings the time limit was hit first there, twice).
conf hog.lua <<'EOF'
local t = {}
for i = 1, 1e9 do t[i] = string.rep("x", 1024 * 1024) .. i end
EOF
usage_err "config: memory is capped" "memory" -c hog.lua
conf escape.lua <<'EOF'
io.open("/tmp/x", "w")
EOF
usage_err "config: no io" "global 'io'" -c escape.lua
conf escape2.lua <<'EOF'
os.execute("true")
EOF
usage_err "config: no os.execute" "execute" -c escape2.lua
conf escape3.lua <<'EOF'
require("os")
EOF
usage_err "config: no require" "global 'require'" -c escape3.lua
conf escape4.lua <<'EOF'
load("\27Lua")()
EOF
usage_err "config: no load" "global 'load'" -c escape4.lua
conf number.lua <<'EOF'
return 42
EOF
usage_err "config: must return a table" "must return a table" -c number.lua
conf badkey.lua <<'EOF'
return { [1] = "x" }
EOF
usage_err "config: keys are names" "keys must be names" -c badkey.lua

# A config that works: globals style, os.getenv, and flags that override
# it (the file's port 1 would need privileges; --listen wins).
mkdir -p "$work/alt"
conf good.lua <<EOF
local base = os.getenv("TXMQ_TEST_BASE")
listen = "127.0.0.1:1"
data = base .. "/alt/data"
scripts = base .. "/alt/scripts"
sync = "interval"
sync_interval_ms = 50
log_level = "debug"
heartbeat_ms = 2500
max_inflight = 7
allow_modules = { "/usr/share/lua/5.4/?.lua" }
EOF
export TXMQ_TEST_BASE="$work"
d_start -c "$work/good.lua" --data "$work/alt/data" --scripts "$work/alt/scripts"
drive "a config in globals style takes effect; flags override it" <<'EOF'
conn a
hello ops-1 admin
expect heartbeat_ms = 2500
expect max_inflight = 7
req {"op":"status"}
expect sync = "interval"
EOF
log_has "log_level debug from the config" 'level=debug'
log_has "--listen overrode the config's port" 'msg="listening" addr=127\.0\.0\.1:[0-9]+'
[ -d "$work/alt/data/log" ] && ok "the data directory was created and used" || not_ok "no $work/alt/data/log"
[ -d "$work/alt/scripts" ] && ok "the scripts directory was created" || not_ok "no $work/alt/scripts"

# The data directory is locked by the running daemon.
start_err "a second txmqd on the same data dir is refused" "locked by another process" \
  --listen 127.0.0.1:0 --data "$work/alt/data" --scripts "$work/alt/scripts"
# Its port is taken.
start_err "a port in use is refused" "cannot listen.*address already in use" \
  --listen "127.0.0.1:$d_port" --data "$work/other" --scripts "$work/alt/scripts"
d_stop
same "SIGTERM: exit 0" "$d_rc" 0

# The annotated example sets every key to its default: it must load.
example="$(cd "$(dirname "$0")/../../core/daemon" && pwd)/txmqd.conf.lua"
d_start -c "$example" --data "$work/ex/data" --scripts "$work/ex/scripts"
drive "the annotated example configuration loads" <<'EOF'
conn a
hello ops-1 admin
expect heartbeat_ms = 10000
expect max_frame = 8388608
EOF
d_stop
same "SIGTERM: exit 0" "$d_rc" 0

touch "$work/afile"
start_err "a data dir that is a file is refused" "not a directory" \
  --listen 127.0.0.1:0 --data "$work/afile" --scripts "$work/alt/scripts"
start_err "a data dir that cannot be created is refused" "cannot create the data directory" \
  --listen 127.0.0.1:0 --data "$work/afile/sub" --scripts "$work/alt/scripts"

# Defaults: ./data and ./scripts, relative to the working directory.
mkdir -p "$work/cwd"
(cd "$work/cwd" && exec "$txmqd" --listen 127.0.0.1:0 2>"$work/cwd.log") &
cwd_pid=$!
d_pids+=("$cwd_pid")
for i in $(seq 1 100); do grep -q 'msg="listening"' "$work/cwd.log" && break; sleep 0.1; done
grep -q 'data=./data scripts=./scripts sync=always' "$work/cwd.log" && ok "defaults: ./data, ./scripts, sync always" || not_ok "defaults: $(head -n 1 "$work/cwd.log")"
[ -d "$work/cwd/data/log" ] && ok "default data dir used" || not_ok "no ./data/log"
kill -INT "$cwd_pid"
set +e
wait "$cwd_pid"
crc=$?
set -e
same "SIGINT: exit 0" "$crc" 0
d_finish
