#!/usr/bin/env bash
# readme_tour.sh - the README's five-minute tour, run as the README shows
# it: from a folder with build/bin and scripts/order-payment.lua, against a
# real txmqd with the default settings (on an ephemeral port, named by
# TXMQ_SERVER), every console command's output compared with the README's
# (tests/integration/readme_doctest.lua), then stopped with SIGTERM, exit 0;
# then the commands of "Inspecting a log offline" on the data it left.
set -euo pipefail
source "$(dirname "$0")/cli_lib.bash"
cli_init "$1" readme-tour
repo="$(cd "$(dirname "$0")/../.." && pwd)"
mkdir -p "$work/build"
ln -s "$(cd "$1" && pwd)" "$work/build/bin"
cp "$repo/scripts/order-payment.lua" "$work/scripts/"
start_txmqd
export TXMQ_SERVER="$server"
if lua5.4 "$(dirname "$0")/readme_doctest.lua" "$repo/README.md" "A five-minute tour" "$work"; then
  ok "every command of the tour prints what the README shows"
else
  not_ok "the tour differs from the README"
fi
stop_txmqd
# The offline tools of "Inspecting a log offline", on the tour's data
# (./data, as in the README).
if lua5.4 "$(dirname "$0")/readme_doctest.lua" "$repo/README.md" "Inspecting a log offline" "$work" sh; then
  ok "the offline commands of the README run on the tour's data"
else
  not_ok "an offline command of the README failed"
fi
cli_finish readme_tour
