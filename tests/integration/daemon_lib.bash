# daemon_lib.bash - shared by the black-box tests of txmqd
# (tests/integration/daemon_*.sh); sourced, never run by ctest on its own
# (the glob runs *.sh only).
#
# Provides: a work directory under $TMPDIR removed on exit; txmqd started on
# an ephemeral loopback port (--listen 127.0.0.1:0, the port read from its
# "listening" log line) with a data directory in the work directory, and
# every daemon it started killed on exit; `drive`, which runs the raw wire
# driver (wire_driver) with a script on stdin against the current daemon;
# expectations that count passes and failures.
#
#   source "$(dirname "$0")/daemon_lib.bash"; d_init "$1" NAME
#   d_start [FLAGS...]; drive NAME <<'EOF' ... EOF; d_stop; d_finish

d_init() {
  local bin=${1:?usage: $0 BIN_DIR, the bin directory of a build}
  bin="$(cd "$bin" && pwd)"
  txmqd="$bin/txmqd"
  driver="$bin/wire_driver"
  for b in "$txmqd" "$driver"; do
    [ -x "$b" ] || { echo "FAIL: $b is not built"; exit 1; }
  done
  work="$(mktemp -d "${TMPDIR:-/tmp}/txmq-$2.XXXXXX")"
  passed=0
  failures=()
  d_pid=""
  d_port=""
  d_log=""
  d_pids=()
  d_logn=0
  mkdir -p "$work/scripts"
  # ASan (in the sanitizer build) keeps freed memory in a quarantine; keep
  # it small so memory figures mean something there too. Harmless
  # elsewhere.
  export ASAN_OPTIONS="${ASAN_OPTIONS:-}${ASAN_OPTIONS:+:}quarantine_size_mb=4:detect_leaks=1"
  trap d_cleanup EXIT
}

d_cleanup() {
  local status=$?
  for p in "${d_pids[@]}"; do
    if kill -0 "$p" 2>/dev/null; then
      kill -KILL "$p" 2>/dev/null || true
      wait "$p" 2>/dev/null || true
    fi
  done
  if [ "$status" != 0 ] && [ -n "$d_log" ] && [ -f "$d_log" ]; then
    echo "# last lines of the txmqd log ($d_log):"
    tail -n 30 "$d_log" | sed 's/^/#   /'
  fi
  rm -rf "$work"
  exit "$status"
}

ok() { passed=$((passed + 1)); echo "ok     $1"; }
not_ok() { failures+=("$1"); echo "FAIL   $1"; }

# d_start [FLAGS...]: starts txmqd (data $work/data and scripts
# $work/scripts unless FLAGS say otherwise) and waits (at most 20 s) for its
# "listening" line. Sets d_pid, d_port, d_log.
d_start() {
  d_logn=$((d_logn + 1))
  d_log="$work/txmqd.$d_logn.log"
  local args=(--listen 127.0.0.1:0)
  local have_data=0 have_scripts=0 a
  for a in "$@"; do
    case "$a" in
      --data) have_data=1 ;;
      --scripts) have_scripts=1 ;;
    esac
  done
  [ $have_data = 1 ] || args+=(--data "$work/data")
  [ $have_scripts = 1 ] || args+=(--scripts "$work/scripts")
  "$txmqd" "${args[@]}" "$@" 2>"$d_log" &
  d_pid=$!
  d_pids+=("$d_pid")
  local i
  for i in $(seq 1 200); do
    d_port=$(sed -n 's/.*msg="listening" addr=127\.0\.0\.1:\([0-9]*\).*/\1/p' "$d_log" | head -n 1)
    [ -n "$d_port" ] && return 0
    if ! kill -0 "$d_pid" 2>/dev/null; then
      echo "FAIL: txmqd exited at start:"; sed 's/^/#   /' "$d_log"; exit 1
    fi
    sleep 0.1
  done
  echo "FAIL: txmqd did not say 'listening' within 20 s"; exit 1
}

# d_stop: SIGTERM, then its exit status (at most 30 s) into d_rc.
d_stop() {
  kill -TERM "$d_pid"
  local i
  for i in $(seq 1 300); do
    kill -0 "$d_pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$d_pid" 2>/dev/null; then
    not_ok "txmqd did not stop within 30 s of SIGTERM"
    kill -KILL "$d_pid"
  fi
  set +e
  wait "$d_pid"
  d_rc=$?
  set -e
}

# d_kill9: kill -9 and reap.
d_kill9() {
  kill -KILL "$d_pid"
  wait "$d_pid" 2>/dev/null || true
}

# drive NAME [TIMEOUT_S]: runs the wire driver with the script on stdin
# against the current daemon; a pass if it exits 0. Its output is kept in
# $work/drive.out (and shown on failure).
drive() {
  local name=$1 t=${2:-60}
  set +e
  timeout "$t" "$driver" "127.0.0.1:$d_port" >"$work/drive.out" 2>&1
  local rc=$?
  set -e
  if [ $rc = 0 ]; then
    ok "$name"
  else
    not_ok "$name (wire_driver exit $rc)"
    { grep -E '^FAIL' "$work/drive.out" || true; } | head -n 3 | sed 's/^/#   /'
    tail -n 8 "$work/drive.out" | sed 's/^/#   /'
  fi
  return 0
}

# drive_value PATH: after a drive, the value printed by "print PATH".
drive_value() {
  sed -n "s/^value $1 //p" "$work/drive.out" | tail -n 1
}

# log_has NAME PATTERN: the current daemon's log has a line matching the
# extended regular expression.
log_has() {
  if grep -Eq "$2" "$d_log"; then ok "$1"; else not_ok "$1: no log line matching '$2'"; fi
}

# same NAME GOT WANT
same() {
  if [ "$2" = "$3" ]; then ok "$1"; else not_ok "$1: got '$2', want '$3'"; fi
}

# rss_kb PID: resident set size in KiB.
rss_kb() {
  awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"
}

d_finish() {
  echo "passed: $passed, failed: ${#failures[@]}"
  if [ ${#failures[@]} -gt 0 ]; then
    printf 'FAIL   %s\n' "${failures[@]}"
    exit 1
  fi
  exit 0
}
