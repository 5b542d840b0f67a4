# cli_lib.bash - shared by the black-box tests of the `txmq` tool
# (tests/integration/cli_*.sh); sourced, never run by ctest on its own (the
# glob runs *.sh only).
#
# Provides: a work directory removed on exit, txmqd started on an ephemeral
# loopback port (its port read from its "listening" log line) and always
# killed on exit, `run` with a time limit capturing stdout, stderr and the
# exit status, expectations that count passes and failures, and `jl` to
# query --json output with Lua 5.4 and dkjson.
#
#   source "$(dirname "$0")/cli_lib.bash"; cli_init "$1" NAME
#   start_txmqd [FLAGS...]; run "$txmq" ...; expect ...; cli_finish

cli_init() {
  local bin=${1:?usage: $0 BIN_DIR, the bin directory of a build}
  bin="$(cd "$bin" && pwd)"
  txmq="$bin/txmq"
  txmqd="$bin/txmqd"
  for b in "$txmq" "$txmqd"; do
    [ -x "$b" ] || { echo "FAIL: $b is not built"; exit 1; }
  done
  command -v lua5.4 >/dev/null || { echo "FAIL: lua5.4 is not installed"; exit 1; }
  lua5.4 -e 'require "dkjson"' 2>/dev/null ||
    { echo "FAIL: the Lua module dkjson (Debian lua-dkjson) is missing"; exit 1; }
  work="$(mktemp -d "${TMPDIR:-/tmp}/txmq-$2.XXXXXX")"
  out="$work/out"
  err="$work/err"
  rc=0
  passed=0
  failures=()
  txmqd_pid=""
  port=""
  mkdir -p "$work/scripts" "$work/data"
  trap cli_cleanup EXIT
  # The tool must never find a server by accident.
  unset TXMQ_SERVER TXMQ_SECRET TXMQ_ROLE
  cat >"$work/prelude.lua" <<'LUA'
local json = require "dkjson"
lines = {}
for l in io.lines(arg[1]) do
  local o, _, e = json.decode(l)
  if type(o) ~= "table" then
    io.stderr:write("not a JSON object: " .. l .. " (" .. tostring(e) .. ")\n")
    os.exit(3)
  end
  lines[#lines + 1] = o
end
LUA
}

cli_cleanup() {
  local status=$?
  if [ -n "$txmqd_pid" ] && kill -0 "$txmqd_pid" 2>/dev/null; then
    kill -KILL "$txmqd_pid" 2>/dev/null || true
    wait "$txmqd_pid" 2>/dev/null || true
  fi
  if [ "$status" != 0 ] && [ -f "$work/txmqd.log" ]; then
    echo "# last lines of the txmqd log:"
    tail -n 20 "$work/txmqd.log" | sed 's/^/#   /'
  fi
  rm -rf "$work"
  exit "$status"
}

ok() { passed=$((passed + 1)); echo "ok     $1"; }
not_ok() { failures+=("$1"); echo "FAIL   $1"; }

# run CMD...: stdout to $out, stderr to $err, exit status to $rc; at most
# 60 s (a hung command fails its test instead of hanging ctest).
run() {
  set +e
  timeout 60 "$@" >"$out" 2>"$err"
  rc=$?
  set -e
}
first_err() { head -n 1 "$err"; }
err_lines() { wc -l <"$err" | tr -d ' '; }
out_lines() { wc -l <"$out" | tr -d ' '; }

# expect NAME RC [EXACT_STDERR]: the exit status and, when given, the whole
# standard error (exactly one line). Without it, success needs empty stderr.
expect() {
  local name=$1 want=$2
  if [ "$rc" != "$want" ]; then
    not_ok "$name: exit $rc, want $want (stderr: $(head -c 300 "$err"))"
  elif [ $# -ge 3 ] && { [ "$(err_lines)" != 1 ] || [ "$(first_err)" != "$3" ]; }; then
    not_ok "$name: stderr is '$(head -c 300 "$err")', want exactly '$3'"
  elif [ $# -lt 3 ] && [ "$want" = 0 ] && [ -s "$err" ]; then
    not_ok "$name: succeeded but wrote to stderr: $(head -c 300 "$err")"
  else
    ok "$name"
  fi
}
# expect_err_prefix NAME RC PREFIX: exit status and a one-line stderr that
# starts with PREFIX.
expect_err_prefix() {
  local name=$1 want=$2 prefix=$3
  if [ "$rc" != "$want" ]; then
    not_ok "$name: exit $rc, want $want (stderr: $(head -c 300 "$err"))"
  elif [ "$(err_lines)" != 1 ] || [[ "$(first_err)" != "$prefix"* ]]; then
    not_ok "$name: stderr is '$(head -c 400 "$err")', want one line starting '$prefix'"
  else
    ok "$name"
  fi
}
# check NAME COMMAND...: passes if COMMAND succeeds.
check() {
  local name=$1
  shift
  if "$@"; then ok "$name"; else not_ok "$name"; fi
}
# same NAME GOT WANT
same() {
  if [ "$2" = "$3" ]; then ok "$1"; else not_ok "$1: got '$2', want '$3'"; fi
}

# jl FILE CODE: runs Lua CODE with `lines` = the JSON objects of FILE (one
# per line); prints what CODE prints. A line that is not a JSON object fails.
jl() {
  { cat "$work/prelude.lua"; printf '%s\n' "$2"; } >"$work/q.lua"
  lua5.4 "$work/q.lua" "$1"
}

# start_txmqd [FLAGS...]: starts txmqd on 127.0.0.1:0 with the work
# directory's data and scripts, waits (at most 15 s) for its "listening"
# line and sets $port and $server. Fails the whole script if it does not
# come up.
start_txmqd() {
  : >"$work/txmqd.log"
  "$txmqd" --listen 127.0.0.1:0 --data "$work/data" --scripts "$work/scripts" \
    "$@" 2>>"$work/txmqd.log" &
  txmqd_pid=$!
  port=""
  local i
  for i in $(seq 150); do
    port=$(sed -n 's/.*msg="listening" addr=[^ ]*:\([0-9][0-9]*\).*/\1/p' "$work/txmqd.log" | tail -n 1)
    [ -n "$port" ] && break
    if ! kill -0 "$txmqd_pid" 2>/dev/null; then
      echo "FAIL: txmqd exited during start-up"
      exit 1
    fi
    sleep 0.1
  done
  if [ -z "$port" ]; then
    echo "FAIL: txmqd did not log a listening address within 15 s"
    exit 1
  fi
  server="127.0.0.1:$port"
}

# stop_txmqd: SIGTERM, then at most 15 s for a clean exit (status 0).
stop_txmqd() {
  [ -n "$txmqd_pid" ] || return 0
  kill -TERM "$txmqd_pid" 2>/dev/null || true
  local i
  for i in $(seq 150); do
    kill -0 "$txmqd_pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$txmqd_pid" 2>/dev/null; then
    not_ok "txmqd did not stop within 15 s of SIGTERM"
    kill -KILL "$txmqd_pid" 2>/dev/null || true
  fi
  local st=0
  wait "$txmqd_pid" 2>/dev/null || st=$?
  txmqd_pid=""
  same "txmqd exits 0 on SIGTERM" "$st" 0
}

# wait_until SECONDS COMMAND...: polls COMMAND every 0.1 s; non-zero if it
# never succeeded.
wait_until() {
  local limit=$1 i
  shift
  for i in $(seq $((limit * 10))); do
    "$@" && return 0
    sleep 0.1
  done
  return 1
}

cli_finish() {
  local name=$1
  if ((${#failures[@]})); then
    echo "FAIL: $name: ${#failures[@]} of $((passed + ${#failures[@]})) checks failed:"
    printf '  %s\n' "${failures[@]}"
    exit 1
  fi
  echo "PASS: $name: $passed checks"
}
