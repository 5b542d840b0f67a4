#!/usr/bin/env bash
# daemon_diskfault.sh - txmqd when the disk fails under it (sync always),
# with tests/integration/diskfault/diskfault.c preloaded: ENOSPC after a
# short write, EIO on write, EIO on fdatasync. Each time: the request in
# progress gets a clear error, txmqd logs why and stops with exit status 1
# (fail-stop: it never retries an fsync), and once the disk is back a
# restart recovers every acknowledged message, cuts what was half-written
# (`txmq log verify` finds nothing wrong) and takes writes again.
set -euo pipefail
source "$(dirname "$0")/cli_lib.bash"
cli_init "$1" diskfault
preload="$(cd "$1" && pwd)/libtxmq_diskfault.so"
[ -f "$preload" ] || { echo "FAIL: $preload is not built"; exit 1; }
fault="$work/fault"
export TXMQ_DISKFAULT="$fault"
# An instrumented txmqd: our preload comes before the sanitizer runtime.
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}verify_asan_link_order=0"

start() { LD_PRELOAD="$preload" start_txmqd --sync always; }

# wait_exit: txmqd stops by itself within 10 s; sets $st to its status.
wait_exit() {
  local i
  for i in $(seq 100); do
    kill -0 "$txmqd_pid" 2>/dev/null || break
    sleep 0.1
  done
  st=0
  if kill -0 "$txmqd_pid" 2>/dev/null; then
    st=timeout
    kill -KILL "$txmqd_pid" 2>/dev/null || true
  fi
  wait "$txmqd_pid" 2>/dev/null || st=$?
  txmqd_pid=""
}

acked=0
send_ok() { # send_ok N: N more messages, each acknowledged
  local i
  for i in $(seq "$1"); do
    acked=$((acked + 1))
    "$txmq" --server "$server" send orders "order-$acked" >/dev/null ||
      { not_ok "send order-$acked"; return 1; }
  done
}

round() { # round MODE ERR_NAME ERR_WORDS
  local mode=$1 want=$2
  start
  send_ok 20
  echo "$mode" >"$fault"
  run "$txmq" --server "$server" send orders "lost-$mode"
  same "$mode: the send fails" "$rc" 1
  check "$mode: the error says '$3'" grep -q "message not stored: $3" "$err"
  wait_exit
  same "$mode: txmqd stops with status 1" "$st" 1
  check "$mode: txmqd logs why" grep -q 'msg="the commit log failed; stopping' "$work/txmqd.log"
  check "$mode: ... naming the failure" grep -q "err=$want" "$work/txmqd.log"
  rm -f "$fault"
  run "$txmq" log verify "$work/data/log"
  same "$mode: after the fault, log verify finds nothing wrong" "$rc" 0
  if [ "$mode" = enospc ]; then
    check "$mode: the half-written record is a torn tail, cut at the next open" \
      grep -q "torn tail.* are cut at the next open" "$out"
  fi
  start
  check "$mode: restarts on the recovered disk" kill -0 "$txmqd_pid"
  send_ok 5
  run "$txmq" --server "$server" consume orders --group "g-$mode" --timeout 1
  local want_lines
  want_lines=$(seq "$acked" | sed 's/^/order-/')
  # (In order per queue; the topic has several, so compare sorted.)
  same "$mode: every acknowledged message is there, once" \
    "$(grep -v '^lost-' "$out" | sort -V)" "$want_lines"
  # The failed message was never acknowledged. A half-written one is cut;
  # one written in full whose fsync failed may survive whole (the kernel
  # may still have written it): never torn.
  local lost
  lost=$(grep -c "^lost-" "$out" || true)
  if [ "$mode" = fsync ]; then
    check "$mode: the unacknowledged message is there whole or not at all" \
      test "$lost" -le 1
  else
    same "$mode: the unacknowledged message is not there" "$lost" 0
  fi
  stop_txmqd
}

round enospc ENOSPC "no space left on device"
round eio EIO "input/output error"
round fsync EIO "input/output error"
cli_finish daemon_diskfault
