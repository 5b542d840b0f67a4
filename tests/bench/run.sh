#!/usr/bin/env bash
# shellcheck disable=SC2317  # functions called through run_step and traps
# The benchmark suite: every figure behind txmq's performance targets, in
# one run, then a table of the targets with the figure measured, the
# threshold, their ratio and met / NOT met. Figures are printed as they
# come, one line each (bench=... key=value ...; the peers' lines are
# peer=...). It asserts nothing about speed: the exit status is 0 when every
# figure was measured (whether or not its target is met), non-zero when a
# step failed or a figure is missing.
#
#   tests/bench/run.sh            full sizes (about 15 minutes; 2 x ~4 GB of
#                                 restart data, written and removed in turn)
#   tests/bench/run.sh --quick    a smoke run of every figure at small sizes
#                                 (about 3 minutes)
#
# Steps:
#   build     Release build into $TXMQ_BENCH_BUILD (cmake -DCMAKE_BUILD_TYPE=Release)
#   floor     the machine's floor, from ../shared/bench/limits (beside the
#             repository): 4 KiB append+fdatasync and overwrite+fdatasync on
#             the disk of the build folder, and the loopback round trip of
#             256 bytes; their p50s
#   peers     ../shared/bench/peers/run_all.sh: Redis and NATS (its default
#             peers) and txmq through tests/bench/peer_harness.sh, 256-byte
#             messages at 1, 32 and 256 in flight; medians from its peers.txt.
#             The harnesses install what they miss (redis-server,
#             nats-server, hiredis: apt-get, see peers/lib.sh).
#   tx        tx_bench --pending N: memory per pending transaction and check
#             lateness with N pending
#   script    script_bench: the cost of a handler decision, the pause of a
#             hot reload
#   restart   restart_bench: txmqd's restart with RESTART_MSGS stored
#             messages and RESTART_PENDING pending transactions, pending
#             halves spread through the log and all oldest (the worst case)
#   mem       mem_bench: txmqd's RSS with 1,000 idle connections, and its
#             growth under a consumer that never reads while MEM_STALL_MB MiB
#             are sent to its topic
#
# Environment (defaults: full / --quick):
#   TXMQ_BENCH_BUILD   build folder (<repo>/build-bench)
#   BENCH_OUT          where run.txt and the peers' results are kept
#                      ($TMPDIR/txmq-bench, /tmp/txmq-bench without TMPDIR)
#   BENCH_NO_PEERS=1   skip the peers (the table says "skipped"); also lets the
#                      run succeed when ../shared/bench is missing
#   REPEAT             peer passes, medians over them (1 / 1)
#   MSGS, MAXSEC       per peer measurement: upper bounds (400000, 8 / 5000, 2);
#                      a measurement at 256 in flight then lasts a few seconds
#   DURABILITIES       peer durabilities (always); TXMQ_DURABILITIES (the same)
#   TXMQ_MODES         txmq's modes in the peer run (tx-2step tx-hosted)
#   SYNC_CHECK         strace the servers' fsyncs in the first pass (1)
#   TX_PENDING         pending transactions of tx_bench (1000000 / 100000)
#   RESTART_MSGS, RESTART_PENDING   (10000000, 1000000 / 1000000, 100000)
#   MEM_CONNS, MEM_STALL_MB         (1000, 200 / 1000, 20)
#   MEM_CONN_MAX_BYTES     bound of target 8: RSS per idle connection (16384)
#   MEM_STALL_MAX_MB       bound of target 8: RSS growth of txmqd while a
#                          consumer is stalled (64), whatever was sent
# The peers' own knobs (MODES, NATS_PORT, REDIS_PORT, HARNESS_TIMEOUT, ...)
# pass through to them.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"

quick=0
for a in "$@"; do
  case "$a" in
    --quick) quick=1 ;;
    -h|--help) sed -n '3,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "usage: tests/bench/run.sh [--quick]" >&2; exit 2 ;;
  esac
done

if ((quick)); then
  d_msgs=5000 d_maxsec=2 d_pending=100000
  d_rmsgs=1000000 d_rpending=100000 d_mem_mb=20
else
  d_msgs=400000 d_maxsec=8 d_pending=1000000
  d_rmsgs=10000000 d_rpending=1000000 d_mem_mb=200
fi
BUILD="${TXMQ_BENCH_BUILD:-$repo/build-bench}"
OUT="${BENCH_OUT:-${TMPDIR:-/tmp}/txmq-bench}"
SHARED="$repo/../shared/bench"
REPEAT="${REPEAT:-1}"
MSGS="${MSGS:-$d_msgs}"
MAXSEC="${MAXSEC:-$d_maxsec}"
DURABILITIES="${DURABILITIES:-always}"
TXMQ_DURABILITIES="${TXMQ_DURABILITIES:-$DURABILITIES}"
TXMQ_MODES="${TXMQ_MODES:-tx-2step tx-hosted}"
SYNC_CHECK="${SYNC_CHECK:-1}"
TX_PENDING="${TX_PENDING:-$d_pending}"
RESTART_MSGS="${RESTART_MSGS:-$d_rmsgs}"
RESTART_PENDING="${RESTART_PENDING:-$d_rpending}"
MEM_CONNS="${MEM_CONNS:-1000}"
MEM_STALL_MB="${MEM_STALL_MB:-$d_mem_mb}"
MEM_CONN_MAX_BYTES="${MEM_CONN_MAX_BYTES:-16384}"
MEM_STALL_MAX_MB="${MEM_STALL_MAX_MB:-64}"
NO_PEERS="${BENCH_NO_PEERS:-0}"

mkdir -p "$OUT" "$OUT/logs"
: >"$OUT/run.txt"
# Everything from here on also goes to run.txt.
exec > >(tee -a "$OUT/run.txt") 2>&1

work=""
CHILD=""
failed=()

# Every process below the one given, deepest first (by parent PID).
descendants() {
  local c
  for c in $(ps -o pid= --ppid "$1" 2>/dev/null); do
    descendants "$c"
    echo "$c"
  done
}

# Stops a step that is still running, with everything it started: TERM
# (the peer harnesses stop their servers on it), then KILL what is left.
stop_tree() {
  local pids p i
  pids="$(descendants "$1") $1"
  # shellcheck disable=SC2086
  kill -TERM $pids 2>/dev/null || true
  for i in $(seq 1 50); do
    local alive=0
    for p in $pids; do kill -0 "$p" 2>/dev/null && alive=1; done
    ((alive)) || break
    sleep 0.1
  done
  # shellcheck disable=SC2086
  kill -KILL $pids 2>/dev/null || true
}

cleanup() {
  if [ -n "$CHILD" ]; then
    echo "# stopping the step in progress (pid $CHILD)"
    stop_tree "$CHILD"
    wait "$CHILD" 2>/dev/null || true
    CHILD=""
  fi
  if [ -n "$work" ]; then rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# run_step NAME CMD...: runs CMD in the background (so that a signal here
# can stop it), its standard output shown and kept in $work/NAME.txt, its
# standard error kept in $OUT/logs/NAME.log. A failure is recorded, not
# fatal: the other steps still run.
run_step() {
  local name=$1 rc=0
  shift
  local log="$OUT/logs/$name.log"
  echo "== $name"
  ( "$@" 2>"$log" | tee "$work/$name.txt"; exit "${PIPESTATUS[0]}" ) &
  CHILD=$!
  wait "$CHILD" || rc=$?
  CHILD=""
  if ((rc != 0)); then
    failed+=("$name")
    echo "# step $name failed (exit $rc); the end of its log ($log):"
    tail -n 20 "$log" | sed 's/^/#   /'
  fi
  return 0
}

# get FILE KEY [K=V ...]: the value of KEY on the first line of FILE whose
# fields include every K=V, without a trailing /s or %; empty if none.
get() {
  local file=$1 key=$2
  shift 2
  [ -f "$file" ] || return 0
  awk -v key="$key" -v conds="$*" '
    BEGIN { n = split(conds, c, " ") }
    {
      delete m
      for (i = 1; i <= NF; i++) {
        p = index($i, "=")
        if (p > 0) m[substr($i, 1, p - 1)] = substr($i, p + 1)
      }
      ok = 1
      for (j = 1; j <= n; j++) {
        p = index(c[j], "=")
        k = substr(c[j], 1, p - 1)
        if (!(k in m) || m[k] != substr(c[j], p + 1)) { ok = 0; break }
      }
      if (ok && (key in m)) { v = m[key]; sub(/(\/s|%)$/, "", v); print v; exit }
    }' "$file"
}

# calc EXPR VALUE...: EXPR evaluated with a, b, c, d standing for the
# VALUEs in order; empty if any VALUE is not a number (a figure missing).
calc() {
  local e=$1 v i=0 names=(a b c d) args=()
  shift
  for v in "$@"; do
    [[ $v =~ ^-?[0-9]+(\.[0-9]+)?$ ]] || return 0
    args+=(-v "${names[i]}=$v")
    i=$((i + 1))
  done
  awk "${args[@]}" "BEGIN { printf \"%.10g\", ($e) }"
}

# r1 VALUE: one decimal ("?" if there is no value).
r1() {
  if [ -z "$1" ]; then echo "?"; return; fi
  awk -v v="$1" 'BEGIN { printf "%.1f", v }'
}

# ---- build ----

echo "# txmq benchmark suite $( ((quick)) && echo "--quick" || echo "(full)")," \
  "$(date -u +%FT%TZ), $(nproc) cores, kernel $(uname -r)," \
  "txmq $(git -C "$repo" describe --always --dirty 2>/dev/null || echo unknown)"
echo "# build: $BUILD (Release); results: $OUT/run.txt"
echo "== build"
if ! { cmake -S "$repo" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release >"$OUT/logs/build.log" 2>&1 &&
       cmake --build "$BUILD" -j"$(nproc)" --target txmqd e2e_bench tx_bench script_bench \
         restart_bench mem_bench >>"$OUT/logs/build.log" 2>&1; }; then
  echo "# the build failed; the end of its log ($OUT/logs/build.log):"
  tail -n 30 "$OUT/logs/build.log" | sed 's/^/#   /'
  exit 1
fi
BIN="$BUILD/bin"
work="$(mktemp -d "$BUILD/bench-run.XXXXXX")"

# ---- the floor ----

have_shared=1
if [ ! -d "$SHARED/limits" ] || [ ! -d "$SHARED/peers" ]; then
  have_shared=0
  echo "# $SHARED is missing (the shared peer harnesses and limit probes beside the"
  echo "# repository): the floor and the peers are skipped, targets 1-4 get no figure"
fi

# The probes are compiled into the build folder; the disk probe writes in
# the run's scratch folder, on the disk of the build folder.
floor() {
  local limits="$BUILD/bench-limits"
  mkdir -p "$limits" "$work/disk"
  "${CC:-cc}" -O2 -Wall -o "$limits/fsync" "$SHARED/limits/fsync.c" &&
  "${CC:-cc}" -O2 -Wall -o "$limits/tcp" "$SHARED/limits/tcp.c" &&
  "$limits/fsync" "$work/disk" append4k 3000 3 &&
  "$limits/fsync" "$work/disk" overwrite4k 3000 3 &&
  "$limits/tcp" rr 256 1 200000 2
}
if ((have_shared)); then run_step floor floor; fi
f_append=$(get "$work/floor.txt" p50_us probe=fsync kind=append4k)
f_overwrite=$(get "$work/floor.txt" p50_us probe=fsync kind=overwrite4k)
f_rtt=$(get "$work/floor.txt" batch_p50_us probe=tcp kind=rr inflight=1)
f_budget=$(calc "1.2 * (2 * a + 2 * b)" "$f_append" "$f_rtt")
if [ -n "$f_budget" ]; then
  echo "bench=floor append4k_p50_us=$f_append overwrite4k_p50_us=$f_overwrite" \
    "rtt_p50_us=$f_rtt tx1_budget_us=$f_budget"
fi

# ---- peers ----

peers="$work/peers.txt"
peers_run() {
  REPEAT="$REPEAT" MSGS="$MSGS" MAXSEC="$MAXSEC" INFLIGHTS="1 32 256" SIZE=256 \
    BENCH_OUT="$work/peers" DURABILITIES="$DURABILITIES" \
    TXMQ_MODES="$TXMQ_MODES" TXMQ_DURABILITIES="$TXMQ_DURABILITIES" \
    TXMQ_BENCH_BUILD="$BUILD" SYNC_CHECK="$SYNC_CHECK" \
    EXTRA_HARNESS="$repo/tests/bench/peer_harness.sh" SUBJECT=txmq \
    bash "$SHARED/peers/run_all.sh" 2>&1
}
if ((have_shared)) && [ "$NO_PEERS" != 1 ]; then
  run_step peers peers_run
  # run_all.sh writes the medians to peers.txt after the last pass; if it
  # stopped before that (it exits when one of its greps finds nothing), they
  # are taken from its raw lines with its own summarize.py.
  p_med="$work/peers/peers.txt"
  if ! grep -q '^peer=' "$p_med" 2>/dev/null && [ -f "$work/peers/peers_raw.txt" ]; then
    echo "# run_all.sh wrote no medians; taking them from peers_raw.txt"
    python3 "$SHARED/summarize.py" "$work/peers/peers_raw.txt" >"$work/peers/medians.txt" || true
    p_med="$work/peers/medians.txt"
  fi
  cp "$work/peers/"*.txt "$OUT/" 2>/dev/null || true
  if grep -q '^peer=' "$p_med" 2>/dev/null; then
    echo "# medians of $REPEAT pass(es) ($OUT/$(basename "$p_med")):"
    grep '^peer=' "$p_med" | sed 's/^/bench=peer /' | tee "$peers"
  else
    failed+=("peers (no figures)")
  fi
elif [ "$NO_PEERS" = 1 ]; then
  echo "# BENCH_NO_PEERS=1: the peers are skipped"
fi

# ---- in-process figures ----

run_step tx "$BIN/tx_bench" --pending "$TX_PENDING" --dir "$work"
run_step script "$BIN/script_bench"
run_step restart "$BIN/restart_bench" --msgs "$RESTART_MSGS" --pending "$RESTART_PENDING" \
  --dir "$work"
run_step mem "$BIN/mem_bench" --conns "$MEM_CONNS" --stall-mb "$MEM_STALL_MB" --dir "$work"

# ---- the table ----

pf() { get "$peers" "$@"; }
r_256=$(pf rate peer=redis mode=tx-2step durability=always inflight=256)
r_32p99=$(pf p99_us peer=redis mode=tx-2step durability=always inflight=32)
n_256=$(pf rate peer=nats mode=tx-2pub inflight=256)
n_dur=$(pf durability peer=nats mode=tx-2pub inflight=256)
t_256=$(pf rate peer=txmq mode=tx-2step durability=always inflight=256)
t_256v=$(pf verified peer=txmq mode=tx-2step durability=always inflight=256)
h_256=$(pf rate peer=txmq mode=tx-hosted durability=always inflight=256)
h_256v=$(pf verified peer=txmq mode=tx-hosted durability=always inflight=256)
t_1p50=$(pf p50_us peer=txmq mode=tx-2step durability=always inflight=1)
t_1v=$(pf verified peer=txmq mode=tx-2step durability=always inflight=1)
t_32p99=$(pf p99_us peer=txmq mode=tx-2step durability=always inflight=32)
t_32v=$(pf verified peer=txmq mode=tx-2step durability=always inflight=32)

s_bytes=$(get "$work/tx.txt" bytes_per_pending bench=tx_sched)
s_pend=$(get "$work/tx.txt" pending bench=tx_sched)
s_late=$(get "$work/tx.txt" lateness_p99_ms bench=tx_sched)

ex2=$(get "$work/script.txt" us_per_call bench=script op=execute workers=2)
ck2=$(get "$work/script.txt" us_per_call bench=script op=check workers=2)
sc_fail=$(calc "a + b" "$(get "$work/script.txt" failed bench=script op=execute workers=2)" \
  "$(get "$work/script.txt" failed bench=script op=check workers=2)")
decision=$(calc "a > b ? a : b" "$ex2" "$ck2")
pause=$(get "$work/script.txt" max_pause_ms bench=script_reload)
rl_fail=$(get "$work/script.txt" failed_calls bench=script_reload)
rl_rfail=$(get "$work/script.txt" reload_failures bench=script_reload)

rs_spread=$(get "$work/restart.txt" txmqd_ready_ms bench=restart layout=spread)
rs_oldest=$(get "$work/restart.txt" txmqd_ready_ms bench=restart layout=oldest)
restart=$(calc "a > b ? a : b" "$rs_spread" "$rs_oldest")

m_conns=$(get "$work/mem.txt" conns bench=mem case=idle_conns)
m_rss_conns=$(get "$work/mem.txt" rss_kb bench=mem case=idle_conns)
m_per_conn=$(get "$work/mem.txt" per_conn_bytes bench=mem case=idle_conns)
m_sent=$(get "$work/mem.txt" sent_mb bench=mem case=stalled_consumer)
m_before=$(get "$work/mem.txt" rss_before_kb bench=mem case=stalled_consumer)
m_max=$(get "$work/mem.txt" rss_max_kb bench=mem case=stalled_consumer)
m_anon_before=$(get "$work/mem.txt" anon_before_kb bench=mem case=stalled_consumer)
m_anon_max=$(get "$work/mem.txt" anon_max_kb bench=mem case=stalled_consumer)
m_growth=$(calc "(a - b) / 1024" "$m_max" "$m_before")
m_anon_growth=$(calc "(a - b) / 1024" "$m_anon_max" "$m_anon_before")

# k 28300 -> 28.3k
k() {
  [ -n "$1" ] || { echo "?"; return; }
  awk -v v="$1" 'BEGIN { if (v >= 1000) printf "%.1fk", v / 1000; else printf "%.0f", v }'
}

met=0 total=0 missing=0 skipped=0
rows=()
# row ID WHAT MEASURED TARGET VALUE THRESHOLD ge|le [peer] [verified]
row() {
  local id=$1 what=$2 measured=$3 target=$4 v=$5 t=$6 dir=$7 kind=${8:-} ver=${9:-ok}
  local ratio="-" result
  total=$((total + 1))
  if [ "$kind" = peer ] && { ((!have_shared)) || [ "$NO_PEERS" = 1 ]; }; then
    result="skipped (no peers)"
    skipped=$((skipped + 1))
  elif [ -z "$v" ] || [ -z "$t" ]; then
    result="NOT met (no figure)"
    missing=$((missing + 1))
  else
    ratio=$(awk -v v="$v" -v t="$t" 'BEGIN { printf "%.2f", (t != 0 ? v / t : 0) }')
    if [ "$ver" != ok ]; then
      result="NOT met (verified=$ver)"
    elif awk -v v="$v" -v t="$t" -v d="$dir" \
        'BEGIN { exit !(d == "ge" ? v >= t : v <= t) }'; then
      result="met"
      met=$((met + 1))
    else
      result="NOT met"
    fi
  fi
  rows+=("$(printf '%-3s %-42s %-36s %-42s %6s  %s' "$id" "$what" "$measured" "$target" \
    "$ratio" "$result")")
}

row 1a "tx-2step always @256 vs Redis" "$(k "$t_256")/s" \
  ">= 4 x Redis tx-2step $(k "$r_256")/s" "$t_256" "$(calc "4 * a" "$r_256")" ge peer "${t_256v:-ok}"
row 1b "tx-2step always @256 vs NATS" "$(k "$t_256")/s" \
  ">= 1.3 x NATS tx-2pub $(k "$n_256")/s (${n_dur:-?})" "$t_256" "$(calc "1.3 * a" "$n_256")" ge peer \
  "${t_256v:-ok}"
row 2 "tx-hosted always @256 vs Redis" "$(k "$h_256")/s" \
  ">= 6 x Redis tx-2step $(k "$r_256")/s" "$h_256" "$(calc "6 * a" "$r_256")" ge peer "${h_256v:-ok}"
row 3 "tx-2step always @1 p50 vs the floor" "${t_1p50:-?} us" \
  "<= 1.2 x (2 fsync + 2 rtt) = ${f_budget:-?} us" "$t_1p50" "$f_budget" le peer "${t_1v:-ok}"
row 4 "tx-2step always @32 p99 vs Redis" "${t_32p99:-?} us" \
  "<= Redis tx-2step p99 ${r_32p99:-?} us" "$t_32p99" "$r_32p99" le peer "${t_32v:-ok}"
row 5a "scheduler memory, ${s_pend:-?} pending" "${s_bytes:-?} B/pending" "<= 200 B/pending" \
  "$s_bytes" 200 le
row 5b "check lateness p99, ${s_pend:-?} pending" "${s_late:-?} ms" "<= 10 ms" "$s_late" 10 le
row 6 "restart, $RESTART_MSGS msgs + $RESTART_PENDING pending" \
  "${restart:-?} ms (spread ${rs_spread:-?}, oldest ${rs_oldest:-?})" "<= 2000 ms to listening" \
  "$restart" 2000 le
row 7a "handler decision (2 workers, worst op)" "${decision:-?} us (exec ${ex2:-?}, check ${ck2:-?})" \
  "<= 2 us, 0 failed calls" "$decision" 2 le "" "$( [ "${sc_fail:-0}" = 0 ] && echo ok ||
    echo "failed_calls=$sc_fail")"
row 7b "reload pause under load" "${pause:-?} ms, ${rl_fail:-?} failed" \
  "<= 5 ms, 0 failed calls" "$pause" 5 le "" "$( [ "${rl_fail:-0}${rl_rfail:-0}" = 00 ] && echo ok ||
    echo "failed_calls=${rl_fail:-?}")"
row 8a "RSS, ${m_conns:-?} idle connections" \
  "$(r1 "$(calc "a / 1024" "$m_rss_conns")") MB, ${m_per_conn:-?} B/conn" \
  "<= $MEM_CONN_MAX_BYTES B per connection" "$m_per_conn" "$MEM_CONN_MAX_BYTES" le
row 8b "RSS growth, stalled consumer, ${m_sent:-?} MB sent" \
  "+$(r1 "$m_growth") MB (heap +$(r1 "$m_anon_growth") MB)" "<= $MEM_STALL_MAX_MB MB growth" \
  "$m_growth" "$MEM_STALL_MAX_MB" le

echo
echo "== targets ($( ((quick)) && echo "--quick: small sizes, not the targets' sizes" ||
  echo "full sizes"); ratio = measured / threshold:"
echo "   >= 1 meets a '>=' target, <= 1 meets a '<=' target)"
printf '%-3s %-42s %-36s %-42s %6s  %s\n' "#" "what" "measured" "target" "ratio" "result"
printf '%s\n' "${rows[@]}"
echo "# $met of $((total - skipped)) targets met$( ((skipped)) && echo " ($skipped skipped)");" \
  "$OUT/run.txt holds this output"

if ((${#failed[@]})); then
  echo "# failed steps: ${failed[*]} (logs in $OUT/logs)"
  exit 1
fi
if ((!have_shared)) && [ "$NO_PEERS" != 1 ]; then
  echo "# no floor and no peers: $SHARED is missing (BENCH_NO_PEERS=1 accepts that)"
  exit 1
fi
if ((missing)); then
  echo "# $missing figure(s) missing"
  exit 1
fi
exit 0
