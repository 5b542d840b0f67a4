# Sourced by tests/run.sh and the examples' run scripts: installs the
# Debian packages txmq needs to build, test and run, if any is missing.
# lua-sql-sqlite3 (LuaSQL) is the local database of the order-payment example.
TXMQ_DEB_PACKAGES=(cmake make gcc pkg-config liblua5.4-dev lua5.4 libuv1-dev
  libmsgpack-dev libcmocka-dev libjansson-dev lua-busted valgrind lua-sql-sqlite3)
# The fuzz targets (tests/fuzz) need clang and its sanitizer and libFuzzer
# runtimes, which Debian ships apart (clang only recommends them):
# libclang-rt-dev is the one for Debian's default clang.
TXMQ_FUZZ_DEB_PACKAGES=(clang libclang-rt-dev)

txmq_install_deps() {
  local need=() p
  for p in "${TXMQ_DEB_PACKAGES[@]}" "$@"; do
    dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
  done
  if ((${#need[@]})); then
    echo "== installing: ${need[*]}"
    local sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
}
