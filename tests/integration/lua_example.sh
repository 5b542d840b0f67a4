#!/usr/bin/env bash
# lua_example.sh - runs examples/transaction_producer.lua (the seed's
# example in Lua) against a real txmqd: execute answers UNKNOW, the server
# checks after tx_timeout_ms, the producer's background check answers
# COMMIT, and the example's consumer receives "hello world".
# Not registered in the sanitizer build (an ASan module cannot be loaded
# into Debian's lua5.4).
set -euo pipefail
source "$(dirname "$0")/cli_lib.bash"
cli_init "$1" lua-example
repo="$(cd "$(dirname "$0")/../.." && pwd)"
build="$(cd "$1/.." && pwd)"
[ -f "$build/lua/txmq/core.so" ] || { echo "FAIL: $build/lua/txmq/core.so is not built"; exit 1; }
export LUA_CPATH="$build/lua/?.so;;" LUA_PATH="$repo/lua/?.lua;;"

cat >"$work/conf.lua" <<'LUA'
return { tx_timeout_ms = 500, check_interval_ms = 500 }
LUA
start_txmqd -c "$work/conf.lua"

run lua5.4 "$repo/examples/transaction_producer.lua" "$server"
same "the example exits 0" "$rc" 0
check "it prints SEND_OK and UNKNOW" grep -q "^SEND_OK	UNKNOW	" "$out"
check "its consumer received hello world" grep -qx "received	hello world" "$out"
check "the background check answered COMMIT" grep -q "COMMIT" "$err"
cli_finish lua_example
