#!/usr/bin/env bash
# readme_config.sh - the README's configuration reference lists every key
# of core/daemon/txmqd.conf.lua with its default, and txmqd accepts that
# file as it is (so neither can drift from the daemon).
set -euo pipefail
source "$(dirname "$0")/cli_lib.bash"
cli_init "$1" readme-config
repo="$(cd "$(dirname "$0")/../.." && pwd)"
conf="$repo/core/daemon/txmqd.conf.lua"
run lua5.4 "$(dirname "$0")/readme_config.lua" "$repo/README.md" "$conf"
cat "$out"
same "the README's table matches txmqd.conf.lua" "$rc" 0
start_txmqd -c "$conf"
check "txmqd starts with the annotated file as it is" kill -0 "$txmqd_pid"
stop_txmqd
cli_finish readme_config
