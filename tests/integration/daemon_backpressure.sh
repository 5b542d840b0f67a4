#!/usr/bin/env bash
# daemon_backpressure.sh - txmqd under clients that do not play along: the
# per-connection in-flight cap (requests past it wait in the socket), a
# client that pipelines requests and never reads its responses (the
# daemon's memory stays bounded, the client is closed once its output
# stays full past the idle timeout, everyone else is served meanwhile),
# and a consumer that receives and never acknowledges.
#
#   bash tests/integration/daemon_backpressure.sh BUILD/bin
set -euo pipefail
source "$(dirname "$0")/daemon_lib.bash"
d_init "${1:-}" daemon-backpressure

cat >"$work/conf.lua" <<'EOF'
return {
  max_inflight = 2,
  max_output = 65536,
  heartbeat_ms = 1000,          -- idle timeout 3 s
  consumer_max_inflight = 100,
}
EOF
d_start -c "$work/conf.lua"

drive "in-flight cap: a third request waits until one of two long polls ends" <<'EOF'
conn p
hello prod-1 producer
req {"op":"send","msg":{"topic":"BP","body":"x"}}
req {"op":"receive","group":"g","topic":"BP"}
expect msgs.# = 1
send {"op":"receive","group":"g","topic":"BP","wait_ms":1500}
send {"op":"receive","group":"g","topic":"BP","wait_ms":1500}
send {"op":"ping","id":99}
norecv 1000
wait 3000
expect re = 99
expect ok = true
EOF

rss0=$(rss_kb "$d_pid")
# 200,000 pipelined status requests (~200 MB, asking for ~120 MB of
# responses) without ever reading: far more than the kernel's socket
# buffers can absorb.
pad=$(head -c 1000 /dev/zero | tr '\0' 'p')
"$driver" "127.0.0.1:$d_port" >"$work/flood.out" 2>&1 <<EOF &
conn f
hello flood-1 consumer
flood 200000 {"op":"status","pad":"$pad"}
sleep 8000
EOF
flooder=$!
# Meanwhile others are served.
sleep 1
drive "others are served while a client floods without reading" <<'EOF'
conn other
hello other-1 admin
req {"op":"ping"}
expect ok = true
req {"op":"status"}
expect connections = 2
EOF
for i in $(seq 1 100); do grep -q '^flood:' "$work/flood.out" && break; sleep 0.1; done
rss1=$(rss_kb "$d_pid")
grow=$((rss1 - rss0))
echo "# VmRSS before ${rss0} KiB, during the flood ${rss1} KiB (+${grow} KiB); $(grep '^flood:' "$work/flood.out" || echo 'flood: no report')"
if grep -q 'stayed blocked' "$work/flood.out"; then
  ok "the flooding client was blocked by TCP back-pressure"
else
  not_ok "the flood was never blocked: $(tail -n 2 "$work/flood.out")"
fi
if [ "$grow" -lt 32768 ]; then
  ok "daemon RSS grew by less than 32 MiB (${grow} KiB)"
else
  not_ok "daemon RSS grew by ${grow} KiB"
fi
# Its output stays full: closed after the idle timeout (3 s).
for i in $(seq 1 100); do
  grep -q 'client=flood-1 reason="output stayed full' "$d_log" && break
  sleep 0.1
done
log_has "the non-reading client is closed once its output stayed full" \
  'msg="connection closed".*client=flood-1 reason="output stayed full past the idle timeout"'
kill "$flooder" 2>/dev/null || true
wait "$flooder" 2>/dev/null || true
rss2=$(rss_kb "$d_pid")
echo "# VmRSS after the close: ${rss2} KiB"

{
  echo "conn p"
  echo "hello prod-2 producer"
  for i in $(seq 1 150); do echo "req {\"op\":\"send\",\"msg\":{\"topic\":\"NA\",\"body\":\"n$i\"}}"; done
  echo "req {\"op\":\"receive\",\"group\":\"lazy\",\"topic\":\"NA\",\"max\":256}"
  echo "expect msgs.# = 100"
  echo "req {\"op\":\"receive\",\"group\":\"lazy\",\"topic\":\"NA\",\"max\":256}"
  echo "expect msgs.# = 0"
  echo "req {\"op\":\"receive\",\"group\":\"busy\",\"topic\":\"NA\",\"max\":256}"
  echo "expect msgs.# = 100"
} >"$work/lazy.script"
drive "receive stops at the in-flight cap of the group" <"$work/lazy.script"

d_stop
same "SIGTERM: exit 0" "$d_rc" 0
d_finish
