#!/usr/bin/env bash
# txmq harness for the shared peer benchmarks (../shared/bench/README.md,
# "the harness contract"): a fresh txmqd per measurement on 127.0.0.1
# (ephemeral port read from its "listening" log line, data dir from
# mktemp -d, scripts dir holding bench.lua which commits), loaded by
# e2e_bench (async C client, one connection, fixed in-flight window), stopped
# by PID. One contract line per measurement on stdout.
#   durability: always   = --sync always
#               everysec = --sync interval --sync-interval-ms 1000
#               os-cache = --sync never
#   modes: plain tx-2step tx-oneway tx-hosted
# env: MSGS MAXSEC INFLIGHTS SIZE MODES DURABILITIES (see lib.sh), SYNC_CHECK=1,
#      TXMQ_MODES TXMQ_DURABILITIES (below),
#      TXMQ_BENCH_BUILD (default <repo>/build-bench, Release)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
source "$repo/../shared/bench/peers/lib.sh"

# TXMQ_MODES / TXMQ_DURABILITIES override MODES / DURABILITIES for this
# harness only (run_all.sh passes one environment to every peer, and the
# peers know no tx-hosted)
MODES="${TXMQ_MODES:-${MODES:-plain tx-2step tx-oneway tx-hosted}}"
DURABILITIES="${TXMQ_DURABILITIES:-${DURABILITIES:-always everysec os-cache}}"
BUILD="${TXMQ_BENCH_BUILD:-$repo/build-bench}"
TXMQD="$BUILD/bin/txmqd"
E2E="$BUILD/bin/e2e_bench"

# Release build of the daemon and the load client (incremental).
if [ ! -f "$BUILD/CMakeCache.txt" ]; then
  cmake -S "$repo" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release >&2
fi
cmake --build "$BUILD" -j"$(nproc)" --target txmqd e2e_bench >/dev/null

echo "# versions: txmq $(git -C "$repo" describe --always --dirty 2>/dev/null || echo unknown)" \
  "txmqd=$("$TXMQD" --version 2>&1 | head -n 1 || true)" \
  "libuv=$(dpkg-query -W -f='${Version}' libuv1-dev 2>/dev/null || echo ?)" \
  "msgpack-c=$(pkg-config --modversion msgpack-c 2>/dev/null || pkg-config --modversion msgpack 2>/dev/null || echo ?)" \
  "build=Release"

TPID="" TDIR=""
cleanup() {
  stop_pid "$TPID"; TPID=""
  [ -n "$TDIR" ] && rm -rf "$TDIR"; TDIR=""
}
trap cleanup EXIT

sync_flags() {
  case "$1" in
    always) echo "--sync always" ;;
    everysec) echo "--sync interval --sync-interval-ms 1000" ;;
    os-cache) echo "--sync never" ;;
    *) echo "unknown durability $1" >&2; return 1 ;;
  esac
}

TPORT=""
start_txmqd() {
  local flags i
  flags=$(sync_flags "$1")
  TDIR=$(mktemp -d "${TMPDIR:-/tmp}/bench-txmq.XXXX")
  mkdir -p "$TDIR/scripts"
  cat >"$TDIR/scripts/bench.lua" <<'EOF'
-- group "bench" of the peer benchmark (tx-hosted): always commits
function executeLocalTransaction(msg, arg) return txmq.COMMIT end
function checkLocalTransaction(msg) return txmq.COMMIT end
EOF
  # shellcheck disable=SC2086
  "$TXMQD" --listen 127.0.0.1:0 --data "$TDIR/data" --scripts "$TDIR/scripts" \
    $flags --log-level info 2>"$TDIR/txmqd.log" &
  TPID=$!
  TPORT=""
  for i in $(seq 1 200); do
    TPORT=$(sed -n 's/.*msg="listening" addr=127\.0\.0\.1:\([0-9]*\).*/\1/p' \
      "$TDIR/txmqd.log" | head -n 1)
    [ -n "$TPORT" ] && break
    kill -0 "$TPID" 2>/dev/null || break
    sleep 0.05
  done
  if [ -z "$TPORT" ]; then
    echo "# txmqd did not start:" >&2; sed 's/^/#   /' "$TDIR/txmqd.log" >&2
    return 1
  fi
  wait_port "$TPORT"
}

for dur in $DURABILITIES; do
  for mode in $MODES; do
    for inf in $INFLIGHTS; do
      if start_txmqd "$dur"; then
        "$E2E" 127.0.0.1 "$TPORT" "$mode" "$inf" "$MSGS" "$MAXSEC" "$TPID" "$dur" "$SIZE" \
          || echo "# e2e_bench failed: $mode $dur $inf" >&2
        if [ "${SYNC_CHECK:-0}" = 1 ] && [ "$inf" = 1 ]; then
          cleanup
          if start_txmqd "$dur"; then
            sync_check "$TPID" "txmq $mode $dur inflight=1 msgs=500" \
              "$E2E" 127.0.0.1 "$TPORT" "$mode" 1 500 5 "$TPID" "$dur" "$SIZE"
          fi
        fi
      else
        echo "# txmqd failed to start: $mode $dur $inf" >&2
      fi
      cleanup
    done
  done
done
