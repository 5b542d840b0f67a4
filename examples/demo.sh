#!/usr/bin/env bash
# demo.sh - the order-payment scenario, from a fresh Debian machine: an
# order service marks orders paid in SQLite and tells logistics, points and
# the shopping cart through txmq's transactional messages, all of them or
# none, through a crash, a hot edit of its handlers and a redelivery
# (examples/order-payment/README.md tells the story).
#
#   examples/demo.sh                 install what is missing, build, run
#   BUILD_DIR=... examples/demo.sh   build somewhere else (default: build/)
#   SKIP_BUILD=1 examples/demo.sh    use BUILD_DIR as it is: no packages
#                                    installed, nothing built
#   KEEP=1 examples/demo.sh          keep ./demo-data afterwards for a look
#   DEMO_DATA=DIR examples/demo.sh   put the data somewhere else
#
# It starts txmqd on an ephemeral loopback port with its data in
# ./demo-data, stops everything it started, and exits 0 only if every
# expected outcome held (read back from the services' SQLite tables and
# from txmq). The storage demo of earlier versions is examples/log-demo/run.sh.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"

build="${BUILD_DIR:-$here/build}"
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  # shellcheck source=tests/deps.sh
  source "$here/tests/deps.sh"
  txmq_install_deps
  echo "== build (${build#"$here"/}: txmqd, the txmq tool, the Lua module)"
  cmake -S "$here" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
  cmake --build "$build" -j "$(nproc 2>/dev/null || echo 2)" \
    --target txmqd txmq_cli txmq_lua >/dev/null
fi

BUILD_DIR="$build" DEMO_DATA="${DEMO_DATA:-$here/demo-data}" \
  exec "$here/examples/order-payment/run.sh"
