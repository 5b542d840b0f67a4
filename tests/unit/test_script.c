/*
 * test_script.c - the Lua handler host (txmq/script.h) end to end: scripts
 * written to a temporary directory, calls through the worker pool, results
 * and their RocketMQ spellings, diagnostics, the sandbox, require from
 * allowed paths, time and memory limits (with another group answering
 * during and after every hostile call), host functions, reload (explicit,
 * broken, overlapping, under concurrent calls) and the file watch.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <lauxlib.h>
#include <lua.h>
#include <msgpack.h>
#include <uv.h>

#include "testutil.h"
#include "txmq/error.h"
#include "txmq/msg.h"
#include "txmq/script.h"

/* ---- fixture ------------------------------------------------------------ */

typedef struct {
  uv_loop_t loop;
  txmq_script_host_t* host;
  char* dir;
  volatile int closed;
} fx_t;

static void fx_new(fx_t* f, int watch) {
  memset(f, 0, sizeof *f);
  assert_int_equal(uv_loop_init(&f->loop), 0);
  f->dir = tu_tmpdir("script");
  assert_int_equal(txmq_script_host_new(&f->host, &f->loop, f->dir), 0);
  assert_int_equal(txmq_script_host_set(f->host, TXMQ_SCRIPT_OPT_WATCH, watch), 0);
  assert_int_equal(txmq_script_host_set(f->host, TXMQ_SCRIPT_OPT_WORKERS, 2), 0);
  assert_int_equal(txmq_script_host_set(f->host, TXMQ_SCRIPT_OPT_MEMORY_LIMIT,
                                        32 * 1024 * 1024), 0);
  assert_int_equal(txmq_script_host_set(f->host, TXMQ_SCRIPT_OPT_CALL_BUDGET_MS, 300), 0);
  assert_int_equal(txmq_script_host_set(f->host, TXMQ_SCRIPT_OPT_LOAD_BUDGET_MS, 150), 0);
}

static void on_host_closed(txmq_script_host_t* host, void* arg) {
  (void)host;
  *(volatile int*)arg = 1;
}

static void fx_free(fx_t* f) {
  assert_int_equal(txmq_script_host_close(f->host, on_host_closed, (void*)&f->closed), 0);
  assert_true(tu_run_until(&f->loop, &f->closed, 20000));
  txmq_script_host_free(f->host);
  tu_loop_close_clean(&f->loop);
  tu_rmrf(f->dir);
  free(f->dir);
}

static void write_script(fx_t* f, const char* group, const char* src) {
  char name[160];
  snprintf(name, sizeof name, "%s.lua", group);
  char* p = tu_path(f->dir, name);
  assert_int_equal(tu_write_file(p, src, strlen(src)), 0);
  free(p);
}

static void fnv_hex(const char* s, size_t n, char out[17]) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (size_t i = 0; i < n; i++) {
    h ^= (uint8_t)s[i];
    h *= 0x100000001b3ull;
  }
  snprintf(out, 17, "%016llx", (unsigned long long)h);
}

static txmq_msg_t* make_msg(const char* topic) {
  txmq_msg_t* m = txmq_msg_new();
  assert_non_null(m);
  assert_int_equal(txmq_msg_set_topic(m, topic), 0);
  assert_int_equal(txmq_msg_set_body(m, "hello", 5), 0);
  assert_int_equal(txmq_msg_prop_set(m, "k", "v"), 0);
  return m;
}

static const uint8_t TX_ID[16] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};

/* ---- calls -------------------------------------------------------------- */

typedef struct {
  volatile int done;
  int status;
  int result;
  char version[32];
  char diag[600];
} res_t;

static void on_call(txmq_script_host_t* host, int status,
                    txmq_script_result_t result, const char* version,
                    const char* diag, void* arg) {
  (void)host;
  res_t* r = arg;
  r->status = status;
  r->result = (int)result;
  snprintf(r->version, sizeof r->version, "%s", version != NULL ? version : "(null)");
  snprintf(r->diag, sizeof r->diag, "%s", diag != NULL ? diag : "(null)");
  r->done = 1;
}

/* msgpack of a string, for arg. */
static void* pack_str(const char* s, size_t* len) {
  msgpack_sbuffer sb;
  msgpack_sbuffer_init(&sb);
  msgpack_packer pk;
  msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
  msgpack_pack_str(&pk, strlen(s));
  msgpack_pack_str_body(&pk, s, strlen(s));
  *len = sb.size;
  return msgpack_sbuffer_release(&sb);
}

static void exec_start(fx_t* f, const char* group, const char* arg, res_t* r) {
  memset(r, 0, sizeof *r);
  txmq_msg_t* m = make_msg("orders");
  const txmq_msg_t* msgs[1] = {m};
  size_t len = 0;
  void* a = arg != NULL ? pack_str(arg, &len) : NULL;
  int rc = txmq_script_execute(f->host, group, TX_ID, msgs, 1, a, len, on_call, r);
  if (rc != 0) fail_msg("execute %s: %s", group, txmq_err_name(rc));
  free(a);
  txmq_msg_free(m);
}

static res_t exec_sync(fx_t* f, const char* group, const char* arg) {
  res_t r;
  exec_start(f, group, arg, &r);
  assert_true(tu_run_until(&f->loop, &r.done, 20000));
  return r;
}

static res_t check_sync(fx_t* f, const char* group, uint32_t count) {
  res_t r;
  memset(&r, 0, sizeof r);
  txmq_msg_t* m = make_msg("orders");
  const txmq_msg_t* msgs[1] = {m};
  assert_int_equal(txmq_script_check(f->host, group, TX_ID, msgs, 1, count, on_call, &r), 0);
  txmq_msg_free(m);
  assert_true(tu_run_until(&f->loop, &r.done, 20000));
  return r;
}

#define EXPECT_OK(r, want)                                                    \
  do {                                                                        \
    if ((r).status != 0 || (r).result != (want)) {                            \
      fail_msg("status %s result %d (want %d) diag %s",                       \
               txmq_err_name((r).status), (r).result, (want), (r).diag);      \
    }                                                                         \
  } while (0)

typedef struct {
  volatile int done;
  int status;
  char version[32];
  char diag[600];
} reload_res_t;

static void on_reload(txmq_script_host_t* host, int status, const char* group,
                      const char* version, const char* diag, void* arg) {
  (void)host;
  (void)group;
  reload_res_t* r = arg;
  r->status = status;
  snprintf(r->version, sizeof r->version, "%s", version != NULL ? version : "(null)");
  snprintf(r->diag, sizeof r->diag, "%s", diag != NULL ? diag : "(null)");
  r->done = 1;
}

static reload_res_t reload_sync(fx_t* f, const char* group) {
  reload_res_t r;
  memset(&r, 0, sizeof r);
  assert_int_equal(txmq_script_reload(f->host, group, on_reload, &r), 0);
  assert_true(tu_run_until(&f->loop, &r.done, 20000));
  return r;
}

/* ---- tests: results ----------------------------------------------------- */

static const char* RESULTS_LUA =
    "local names = { C = txmq.COMMIT, R = txmq.ROLLBACK, U = txmq.UNKNOWN }\n"
    "function executeLocalTransaction(msg, arg)\n"
    "  assert(msg.topic == 'orders' and msg.body == 'hello', 'msg')\n"
    "  assert(msg.properties.k == 'v', 'props')\n"
    "  assert(msg.tx_id == '000102030405060708090a0b0c0d0e0f', 'tx_id')\n"
    "  assert(msg.check_count == nil, 'no check_count in execute')\n"
    "  if msg.messages then return #msg.messages == 2 and\n"
    "    msg.messages[2].topic == 'refunds' and txmq.COMMIT or txmq.ROLLBACK end\n"
    "  return names[arg] or arg\n"
    "end\n"
    "function checkLocalTransaction(msg)\n"
    "  local by = { 'COMMIT_MESSAGE', 'ROLLBACK_MESSAGE', 'UNKNOW', 'UNKNOWN' }\n"
    "  return by[msg.check_count]\n"
    "end\n";

static void results_and_spellings(void** state) {
  (void)state;
  fx_t f;
  fx_new(&f, 0);
  assert_int_equal(txmq_script_host_start(f.host), 0);
  write_script(&f, "orders", RESULTS_LUA);
  char want_ver[17];
  fnv_hex(RESULTS_LUA, strlen(RESULTS_LUA), want_ver);
  assert_true(txmq_script_has_group(f.host, "orders"));
  assert_false(txmq_script_has_group(f.host, "nobody"));
  assert_null(txmq_script_version(f.host, "orders"));

  /* First use loads the group. */
  res_t r = exec_sync(&f, "orders", "C");
  EXPECT_OK(r, TXMQ_SCRIPT_COMMIT);
  assert_string_equal(r.version, want_ver);
  assert_string_equal(txmq_script_version(f.host, "orders"), want_ver);
  struct {
    const char* arg;
    int want;
  } cases[] = {
      {"R", TXMQ_SCRIPT_ROLLBACK},         {"U", TXMQ_SCRIPT_UNKNOWN},
      {"COMMIT_MESSAGE", TXMQ_SCRIPT_COMMIT}, {"ROLLBACK_MESSAGE", TXMQ_SCRIPT_ROLLBACK},
      {"UNKNOW", TXMQ_SCRIPT_UNKNOWN},      {"UNKNOWN", TXMQ_SCRIPT_UNKNOWN},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    r = exec_sync(&f, "orders", cases[i].arg);
    EXPECT_OK(r, cases[i].want);
  }
  /* A string that is no result is a failure, not a guess. */
  r = exec_sync(&f, "orders", "COMMIT");
  assert_int_equal(r.status, TXMQ_ESCRIPT);
  assert_int_equal(r.result, TXMQ_SCRIPT_UNKNOWN);

  for (uint32_t c = 1; c <= 4; c++) {
    r = check_sync(&f, "orders", c);
    EXPECT_OK(r, c == 1 ? TXMQ_SCRIPT_COMMIT
                        : c == 2 ? TXMQ_SCRIPT_ROLLBACK : TXMQ_SCRIPT_UNKNOWN);
  }

  /* A transaction of two messages: msg.messages holds both. */
  txmq_msg_t* a = make_msg("orders");
  txmq_msg_t* b = make_msg("refunds");
  const txmq_msg_t* two[2] = {a, b};
  memset(&r, 0, sizeof r);
  assert_int_equal(txmq_script_execute(f.host, "orders", TX_ID, two, 2, NULL, 0, on_call, &r), 0);
  txmq_msg_free(a);
  txmq_msg_free(b);
  assert_true(tu_run_until(&f.loop, &r.done, 20000));
  EXPECT_OK(r, TXMQ_SCRIPT_COMMIT);

  /* Synchronous refusals never call the callback. */
  txmq_msg_t* m = make_msg("orders");
  const txmq_msg_t* one[1] = {m};
  assert_int_equal(txmq_script_execute(f.host, "nobody", NULL, one, 1, NULL, 0, on_call, &r),
                   TXMQ_ENOTFOUND);
  assert_int_equal(txmq_script_execute(f.host, "../etc", NULL, one, 1, NULL, 0, on_call, &r),
                   TXMQ_EBADNAME);
  assert_int_equal(txmq_script_execute(f.host, "orders", NULL, one, 1, "\xc1", 1, on_call, &r),
                   TXMQ_EPROTO);
  assert_int_equal(txmq_script_execute(f.host, "orders", NULL, one, 0, NULL, 0, on_call, &r),
                   TXMQ_EINVAL);
  txmq_msg_free(m);

  txmq_script_stats_t st;
  assert_int_equal(txmq_script_stats(f.host, "orders", &st), 0);
  assert_int_equal(st.calls, 13);
  assert_int_equal(st.failures, 1);
  assert_int_equal(st.reloads, 1);
  assert_int_equal(txmq_script_stats(f.host, "nobody", &st), TXMQ_ENOTFOUND);
  fx_free(&f);
}

static void missing_handler_and_bad_results(void** state) {
  (void)state;
  fx_t f;
  fx_new(&f, 0);
  assert_int_equal(txmq_script_host_start(f.host), 0);
  write_script(&f, "checkonly", "function checkLocalTransaction(msg)\n"
                                "  return txmq.COMMIT\nend\n");
  res_t r = exec_sync(&f, "checkonly", NULL);
  assert_int_equal(r.status, TXMQ_ESCRIPT);
  assert_int_equal(r.result, TXMQ_SCRIPT_UNKNOWN);
  assert_non_null(strstr(r.diag, "does not define executeLocalTransaction"));
  assert_non_null(strstr(r.diag, "checkonly.lua"));
  r = check_sync(&f, "checkonly", 1);
  EXPECT_OK(r, TXMQ_SCRIPT_COMMIT);

  const char* bad =
      "-- returns garbage or fails\n"
      "function executeLocalTransaction(msg, arg)\n"
      "  if arg == 'num' then return 42 end\n"
      "  if arg == 'nothing' then return end\n"
      "  if arg == 'table' then error({code = 1}) end\n"
      "  local t = nil\n"
      "  return t.field\n"
      "end\n";
  write_script(&f, "bad", bad);
  char ver[17];
  fnv_hex(bad, strlen(bad), ver);
  r = exec_sync(&f, "bad", "num");
  assert_int_equal(r.status, TXMQ_ESCRIPT);
  assert_int_equal(r.result, TXMQ_SCRIPT_UNKNOWN);
  char want[256];
  snprintf(want, sizeof want, "bad.lua version %s line 2: executeLocalTransaction returned 42 (number)", ver);
  if (strstr(r.diag, want) == NULL) fail_msg("diag: %s", r.diag);
  r = exec_sync(&f, "bad", "nothing");
  assert_int_equal(r.status, TXMQ_ESCRIPT);
  assert_non_null(strstr(r.diag, "returned nil"));
  r = exec_sync(&f, "bad", "index");
  assert_int_equal(r.status, TXMQ_ESCRIPT);
  snprintf(want, sizeof want, "bad.lua version %s line 7: attempt to index", ver);
  if (strstr(r.diag, want) == NULL) fail_msg("diag: %s", r.diag);
  r = exec_sync(&f, "bad", "table");
  assert_int_equal(r.status, TXMQ_ESCRIPT);
  assert_non_null(strstr(r.diag, "line 5: (error object is a table value)"));

  /* A script with no handler at all never loads. */
  write_script(&f, "empty", "local x = 1\n");
  memset(&r, 0, sizeof r);
  exec_start(&f, "empty", NULL, &r);
  assert_true(tu_run_until(&f.loop, &r.done, 20000));
  assert_int_equal(r.status, TXMQ_ESCRIPT);
  assert_non_null(strstr(r.diag, "defines neither"));
  assert_null(txmq_script_version(f.host, "empty"));

  txmq_script_stats_t st;
  assert_int_equal(txmq_script_stats(f.host, "bad", &st), 0);
  assert_int_equal(st.calls, 4);
  assert_int_equal(st.failures, 4);
  fx_free(&f);
}

/* ---- tests: sandbox and require ----------------------------------------- */

static const char* PROBE_LUA =
    "function executeLocalTransaction(msg, arg)\n"
    "  if type(arg) == 'table' then\n"
    "    local f, e = load(arg.bytecode)\n"
    "    if f == nil and tostring(e):find('binary') then return txmq.COMMIT end\n"
    "    return txmq.ROLLBACK\n"
    "  end\n"
    "  local probe = assert(load(arg))\n"
    "  if probe() == true then return txmq.COMMIT end\n"
    "  return txmq.ROLLBACK\n"
    "end\n";

static int dump_writer(lua_State* L, const void* p, size_t sz, void* ud) {
  (void)L;
  luaL_addlstring((luaL_Buffer*)ud, p, sz);
  return 0;
}

/* Bytecode of "return true", made by an ordinary state. */
static char* make_bytecode(size_t* len) {
  lua_State* L = luaL_newstate();
  assert_int_equal(luaL_loadstring(L, "return true"), LUA_OK);
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  lua_pushvalue(L, -2);
  lua_dump(L, dump_writer, &b, 0);
  lua_pop(L, 1);
  luaL_pushresult(&b);
  size_t n;
  const char* s = lua_tolstring(L, -1, &n);
  char* out = malloc(n);
  memcpy(out, s, n);
  *len = n;
  lua_close(L);
  return out;
}

static void sandbox(void** state) {
  (void)state;
  fx_t f;
  fx_new(&f, 0);
  assert_int_equal(txmq_script_host_start(f.host), 0);
  write_script(&f, "probe", PROBE_LUA);
  const char* probes[] = {
      "return io == nil",
      "return os.execute == nil and os.getenv == nil and os.remove == nil and os.exit == nil",
      "return type(os.time()) == 'number' and type(os.clock()) == 'number'",
      "return debug == nil",
      "return dofile == nil and loadfile == nil",
      "return string.dump == nil and getmetatable('').__index.dump == nil",
      "return package == nil and collectgarbage == nil and coroutine == nil and print == nil",
      "return not pcall(require, 'os') and not pcall(require, 'io')",
      "local ok, e = pcall(require, 'lfs') return not ok and e:find('allowed module paths') ~= nil",
      "return not pcall(require, '../../etc/passwd')",
      "return load('return io')() == nil and load('return _G')() == _G",
      "return not pcall(setmetatable, {}, {__gc = function() end})",
      "return txmq.null ~= nil and type(txmq.array) == 'function' and type(txmq.log) == 'function'",
      "txmq.log('probe', 1, true) return true",
      "return _G.executeLocalTransaction ~= nil",
      "return math.type(1) == 'integer' and utf8.char(72) == 'H' and table.concat({1,2}) == '12'",
  };
  for (size_t i = 0; i < sizeof probes / sizeof probes[0]; i++) {
    res_t r = exec_sync(&f, "probe", probes[i]);
    if (r.status != 0 || r.result != TXMQ_SCRIPT_COMMIT) {
      fail_msg("probe '%s': %s %d %s", probes[i], txmq_err_name(r.status), r.result, r.diag);
    }
  }

  /* Bytecode handed to load is refused. */
  size_t blen;
  char* bc = make_bytecode(&blen);
  msgpack_sbuffer sb;
  msgpack_sbuffer_init(&sb);
  msgpack_packer pk;
  msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
  msgpack_pack_map(&pk, 1);
  msgpack_pack_str(&pk, 8);
  msgpack_pack_str_body(&pk, "bytecode", 8);
  msgpack_pack_bin(&pk, blen);
  msgpack_pack_bin_body(&pk, bc, blen);
  res_t r;
  memset(&r, 0, sizeof r);
  txmq_msg_t* m = make_msg("orders");
  const txmq_msg_t* one[1] = {m};
  assert_int_equal(txmq_script_execute(f.host, "probe", NULL, one, 1, sb.data, sb.size,
                                       on_call, &r), 0);
  txmq_msg_free(m);
  msgpack_sbuffer_destroy(&sb);
  assert_true(tu_run_until(&f.loop, &r.done, 20000));
  EXPECT_OK(r, TXMQ_SCRIPT_COMMIT);

  /* A script file of bytecode never loads. */
  char* p = tu_path(f.dir, "binary.lua");
  assert_int_equal(tu_write_file(p, bc, blen), 0);
  free(p);
  free(bc);
  reload_res_t rr = reload_sync(&f, "binary");
  assert_int_equal(rr.status, TXMQ_ESCRIPT);
  assert_non_null(strstr(rr.diag, "binary"));
  fx_free(&f);
}

static void require_from_allowed_paths(void** state) {
  (void)state;
  fx_t f;
  fx_new(&f, 0);
  char* mods = tu_path(f.dir, "mods");
  assert_int_equal(mkdir(mods, 0755), 0);
  char* sub = tu_path(mods, "util");
  assert_int_equal(mkdir(sub, 0755), 0);
  char* modfile = tu_path(mods, "decide.lua");
  const char* mod =
      "local M = {}\n"
      "-- a module runs in the sandbox too\n"
      "function M.answer() if io == nil then return txmq.ROLLBACK end return 'leak' end\n"
      "return M\n";
  assert_int_equal(tu_write_file(modfile, mod, strlen(mod)), 0);
  char* nested = tu_path(sub, "two.lua");
  assert_int_equal(tu_write_file(nested, "return 2\n", 9), 0);
  char pattern[512];
  snprintf(pattern, sizeof pattern, "%s/?.lua", mods);
  assert_int_equal(txmq_script_allow_path(f.host, pattern), 0);
  const char* lpeg = "/usr/lib/x86_64-linux-gnu/lua/5.4/lpeg.so";
  int have_lpeg = access(lpeg, R_OK) == 0;
  if (have_lpeg) {
    assert_int_equal(txmq_script_allow_path(f.host, "/usr/lib/x86_64-linux-gnu/lua/5.4/?.so"), 0);
  }
  assert_int_equal(txmq_script_allow_path(f.host, "no-placeholder"), TXMQ_EINVAL);
  assert_int_equal(txmq_script_host_start(f.host), 0);
  assert_int_equal(txmq_script_allow_path(f.host, pattern), TXMQ_EINVAL);
  write_script(&f, "req",
               "local d = require('decide')\n"
               "assert(require('decide') == d, 'cached')\n"
               "assert(require('util.two') == 2, 'dotted')\n"
               "function executeLocalTransaction(msg, arg)\n"
               "  if arg == 'lpeg' then\n"
               "    local lpeg = require('lpeg')\n"
               "    if lpeg.match(lpeg.P('ab'), 'abc') == 3 and io == nil then return txmq.COMMIT end\n"
               "    return txmq.UNKNOWN\n"
               "  end\n"
               "  if pcall(require, 'nothere') then return txmq.UNKNOWN end\n"
               "  return d.answer()\n"
               "end\n");
  res_t r = exec_sync(&f, "req", NULL);
  EXPECT_OK(r, TXMQ_SCRIPT_ROLLBACK);
  if (have_lpeg) {
    r = exec_sync(&f, "req", "lpeg");
    EXPECT_OK(r, TXMQ_SCRIPT_COMMIT);
  }
  free(mods);
  free(sub);
  free(modfile);
  free(nested);
  fx_free(&f);
}

/* ---- tests: limits ------------------------------------------------------ */

static const char* GOOD_LUA =
    "function executeLocalTransaction(msg, arg) return txmq.COMMIT end\n"
    "function checkLocalTransaction(msg) return txmq.COMMIT end\n";

/* Keeps one call of the good group in flight until *stop. */
typedef struct {
  fx_t* f;
  volatile int* stop;
  int ok;
  int bad;
  volatile int idle;
  res_t r;
} chain_t;

static void chain_next(chain_t* c);

static void chain_cb(txmq_script_host_t* host, int status,
                     txmq_script_result_t result, const char* version,
                     const char* diag, void* arg) {
  (void)host;
  (void)version;
  chain_t* c = arg;
  if (status == 0 && result == TXMQ_SCRIPT_COMMIT) {
    c->ok++;
  } else {
    c->bad++;
    fprintf(stderr, "good group failed: %s %s\n", txmq_err_name(status), diag);
  }
  if (*c->stop) {
    c->idle = 1;
  } else {
    chain_next(c);
  }
}

static void chain_next(chain_t* c) {
  txmq_msg_t* m = make_msg("orders");
  const txmq_msg_t* msgs[1] = {m};
  assert_int_equal(txmq_script_execute(c->f->host, "good", NULL, msgs, 1, NULL, 0,
                                       chain_cb, c), 0);
  txmq_msg_free(m);
}

/* The state's allocator keeps freed blocks up to 512 bytes by class and
 * moves blocks into and out of the classes on realloc: strings of every
 * size up to past the classes, tables grown and shrunk through them, each
 * checked byte for byte after enough garbage for collector cycles between,
 * over several calls (valgrind and the sanitizers watch the blocks). */
static const char* CHURN_LUA =
    "local function churn()\n"
    "  local keep = {}\n"
    "  for n = 1, 600, 23 do\n"
    "    local s = string.rep(string.char(65 + n % 26), n)\n"
    "    keep[#keep + 1] = s\n"
    "    local t = {}\n"
    "    for i = 1, n // 8 do t[i] = i; t[-i] = s end\n"
    "    for i = n // 8, 1, -1 do t[i] = nil end\n"
    "    keep[#keep + 1] = t\n"
    "  end\n"
    "  for i = 1, 600 do local g = {i, tostring(i)} end -- collector cycles\n"
    "  local k = 0\n"
    "  for n = 1, 600, 23 do\n"
    "    k = k + 1\n"
    "    local s = keep[k]\n"
    "    if #s ~= n or s ~= string.rep(string.char(65 + n % 26), n) then\n"
    "      return false\n"
    "    end\n"
    "    k = k + 1\n"
    "    local t = keep[k]\n"
    "    for i = 1, n // 8 do\n"
    "      if t[i] ~= nil or t[-i] ~= s then return false end\n"
    "    end\n"
    "  end\n"
    "  return true\n"
    "end\n"
    "function executeLocalTransaction(msg, arg)\n"
    "  if churn() then return txmq.COMMIT end\n"
    "  return txmq.ROLLBACK\n"
    "end\n"
    "function checkLocalTransaction(msg) return txmq.UNKNOWN end\n";

static void allocator_churn(void** state) {
  (void)state;
  fx_t f;
  fx_new(&f, 0);
  assert_int_equal(txmq_script_host_start(f.host), 0);
  write_script(&f, "churn", CHURN_LUA);
  for (int i = 0; i < 4; i++) {
    res_t r = exec_sync(&f, "churn", NULL);
    EXPECT_OK(r, TXMQ_SCRIPT_COMMIT);
  }
  fx_free(&f);
}

static void limits(void** state) {
  (void)state;
  fx_t f;
  fx_new(&f, 0);
  assert_int_equal(txmq_script_host_start(f.host), 0);
  write_script(&f, "good", GOOD_LUA);
  struct {
    const char* group;
    const char* body;
    int status;
    int alt_status;
  } cases[] = {
      {"loop", "while true do end", TXMQ_ETIMEDOUT, 0},
      {"pcallloop",
       "while true do pcall(function() while true do end end) end", TXMQ_ETIMEDOUT, 0},
      {"xpcallloop",
       "local function spin() while true do end end\n"
       "  while true do xpcall(spin, function() while true do end end) end",
       TXMQ_ETIMEDOUT, 0},
      {"alloc",
       "local t = {} while true do t[#t + 1] = string.rep('x', 1 << 20) .. #t end",
       TXMQ_ENOMEM, 0},
      {"pcallalloc",
       "local t = {} while true do pcall(function() t[#t + 1] = {} end) end",
       TXMQ_ENOMEM, TXMQ_ETIMEDOUT},
      /* Stack overflow, the memory cap or (slow sanitizer builds) the
       * budget: whichever comes first, it is contained. */
      {"recurse", "local function f(n) return f(n + 1) + 1 end return f(1)",
       TXMQ_ESCRIPT, -1},
      {"bigstring", "return string.rep('x', 1 << 30)", TXMQ_ENOMEM, 0},
      {"bigconcat", "local s = 'x' while true do s = s .. s end", TXMQ_ENOMEM, 0},
  };
  res_t warm = exec_sync(&f, "good", NULL);
  EXPECT_OK(warm, TXMQ_SCRIPT_COMMIT);
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char src[1024];
    snprintf(src, sizeof src,
             "function executeLocalTransaction(msg, arg)\n  %s\nend\n"
             "function checkLocalTransaction(msg) return txmq.ROLLBACK end\n",
             cases[i].body);
    write_script(&f, cases[i].group, src);
    res_t hostile;
    exec_start(&f, cases[i].group, NULL, &hostile);
    /* The good group answers while the hostile call runs ... */
    chain_t c;
    memset(&c, 0, sizeof c);
    c.f = &f;
    c.stop = &hostile.done;
    chain_next(&c);
    assert_true(tu_run_until(&f.loop, &hostile.done, 20000));
    assert_true(tu_run_until(&f.loop, &c.idle, 20000));
    int any = cases[i].alt_status == -1 &&
              (hostile.status == TXMQ_ESCRIPT || hostile.status == TXMQ_ENOMEM ||
               hostile.status == TXMQ_ETIMEDOUT);
    if (!any && hostile.status != cases[i].status &&
        (cases[i].alt_status == 0 || hostile.status != cases[i].alt_status)) {
      fail_msg("%s: got %s (%s)", cases[i].group, txmq_err_name(hostile.status), hostile.diag);
    }
    assert_int_equal(hostile.result, TXMQ_SCRIPT_UNKNOWN);
    assert_non_null(strstr(hostile.diag, cases[i].group));
    assert_int_equal(c.bad, 0);
    assert_true(c.ok > 0);
    /* ... and after: both groups still answer. */
    res_t after = exec_sync(&f, "good", NULL);
    EXPECT_OK(after, TXMQ_SCRIPT_COMMIT);
    after = check_sync(&f, cases[i].group, 1);
    EXPECT_OK(after, TXMQ_SCRIPT_ROLLBACK);
  }
  txmq_script_stats_t st;
  assert_int_equal(txmq_script_stats(f.host, "loop", &st), 0);
  assert_int_equal(st.timeouts, 1);
  assert_int_equal(st.calls, 2);
  assert_int_equal(txmq_script_stats(f.host, "bigstring", &st), 0);
  assert_int_equal(st.oom, 1);
  assert_int_equal(txmq_script_stats(f.host, "good", &st), 0);
  assert_int_equal(st.failures + st.timeouts + st.oom, 0);

  /* A load that never ends is cut by the load budget; the old version (none
   * here) is kept. */
  write_script(&f, "slowload", "while true do end\nfunction executeLocalTransaction() end\n");
  reload_res_t rr = reload_sync(&f, "slowload");
  assert_int_equal(rr.status, TXMQ_ETIMEDOUT);
  assert_non_null(strstr(rr.diag, "line 1"));
  /* A __gc finalizer would escape the budget: refused. */
  write_script(&f, "gc", "setmetatable({}, {__gc = function() while true do end end})\n"
                         "function executeLocalTransaction() return txmq.COMMIT end\n");
  rr = reload_sync(&f, "gc");
  assert_int_equal(rr.status, TXMQ_ESCRIPT);
  assert_non_null(strstr(rr.diag, "__gc"));
  fx_free(&f);
}

/* ---- tests: host functions ---------------------------------------------- */

static int host_add(lua_State* L) {
  int* counter = txmq_script_fn_arg(L);
  __atomic_fetch_add(counter, 1, __ATOMIC_SEQ_CST);
  lua_pushinteger(L, luaL_checkinteger(L, 1) + luaL_checkinteger(L, 2));
  return 1;
}

static void host_functions(void** state) {
  (void)state;
  fx_t f;
  fx_new(&f, 0);
  int counter = 0;
  assert_int_equal(txmq_script_register(f.host, "add", host_add, &counter), 0);
  assert_int_equal(txmq_script_register(f.host, "add", host_add, &counter), TXMQ_EEXIST);
  assert_int_equal(txmq_script_register(f.host, "bad name", host_add, NULL), TXMQ_EINVAL);
  assert_int_equal(txmq_script_host_start(f.host), 0);
  write_script(&f, "calc",
               "function executeLocalTransaction(msg, arg)\n"
               "  if add == nil and txmq.host.add(2, 3) == 5 then return txmq.COMMIT end\n"
               "  return txmq.ROLLBACK\n"
               "end\n");
  for (int i = 0; i < 3; i++) {
    res_t r = exec_sync(&f, "calc", NULL);
    EXPECT_OK(r, TXMQ_SCRIPT_COMMIT);
  }
  assert_int_equal(__atomic_load_n(&counter, __ATOMIC_SEQ_CST), 3);
  fx_free(&f);
}

/* ---- tests: reload ------------------------------------------------------ */

static const char* V1 =
    "function executeLocalTransaction(msg, arg) return txmq.COMMIT end\n";
static const char* V2 =
    "function executeLocalTransaction(msg, arg) return 'ROLLBACK_MESSAGE' end\n";

static void reload_explicit(void** state) {
  (void)state;
  fx_t f;
  fx_new(&f, 0);
  assert_int_equal(txmq_script_host_start(f.host), 0);
  char v1[17], v2[17];
  fnv_hex(V1, strlen(V1), v1);
  fnv_hex(V2, strlen(V2), v2);
  write_script(&f, "pay", V1);
  reload_res_t rr = reload_sync(&f, "pay");
  assert_int_equal(rr.status, 0);
  assert_string_equal(rr.version, v1);
  res_t r = exec_sync(&f, "pay", NULL);
  EXPECT_OK(r, TXMQ_SCRIPT_COMMIT);
  assert_string_equal(r.version, v1);

  write_script(&f, "pay", V2);
  rr = reload_sync(&f, "pay");
  assert_int_equal(rr.status, 0);
  assert_string_equal(rr.version, v2);
  assert_string_equal(txmq_script_version(f.host, "pay"), v2);
  r = exec_sync(&f, "pay", NULL);
  EXPECT_OK(r, TXMQ_SCRIPT_ROLLBACK);
  assert_string_equal(r.version, v2);

  /* Broken versions keep v2 serving and say why. */
  const char* broken[] = {
      "function executeLocalTransaction(msg, arg)\n  return = 1\nend\n",
      "local x = nil\nlocal y = x.boom\nfunction executeLocalTransaction() end\n",
      "local nothing = 1\n",
  };
  const char* needle[] = {"line 2:", "line 2: attempt to index", "defines neither"};
  for (int i = 0; i < 3; i++) {
    write_script(&f, "pay", broken[i]);
    rr = reload_sync(&f, "pay");
    assert_int_equal(rr.status, TXMQ_ESCRIPT);
    char bv[17];
    fnv_hex(broken[i], strlen(broken[i]), bv);
    assert_string_equal(rr.version, bv);
    if (strstr(rr.diag, needle[i]) == NULL || strstr(rr.diag, bv) == NULL) {
      fail_msg("diag: %s", rr.diag);
    }
    assert_string_equal(txmq_script_version(f.host, "pay"), v2);
    r = exec_sync(&f, "pay", NULL);
    EXPECT_OK(r, TXMQ_SCRIPT_ROLLBACK);
    assert_string_equal(r.version, v2);
  }

  /* Overlapping reloads of one group: the second is refused. */
  write_script(&f, "pay", V1);
  reload_res_t a, b;
  memset(&a, 0, sizeof a);
  memset(&b, 0, sizeof b);
  assert_int_equal(txmq_script_reload(f.host, "pay", on_reload, &a), 0);
  assert_int_equal(txmq_script_reload(f.host, "pay", on_reload, &b), TXMQ_EBUSY);
  assert_true(tu_run_until(&f.loop, &a.done, 20000));
  assert_int_equal(a.status, 0);
  assert_false(b.done);
  r = exec_sync(&f, "pay", NULL);
  EXPECT_OK(r, TXMQ_SCRIPT_COMMIT);
  assert_string_equal(r.version, v1);
  /* A reload of a group without a file, which leaves no record behind. */
  rr = reload_sync(&f, "ghost");
  assert_int_equal(rr.status, TXMQ_ENOTFOUND);
  txmq_script_stats_t gst;
  assert_int_equal(txmq_script_stats(f.host, "ghost", &gst), TXMQ_ENOTFOUND);
  assert_false(txmq_script_has_group(f.host, "ghost"));

  txmq_script_stats_t st;
  assert_int_equal(txmq_script_stats(f.host, "pay", &st), 0);
  assert_int_equal(st.reloads, 3);
  assert_int_equal(st.reload_failures, 3);
  fx_free(&f);
}

typedef struct {
  fx_t* f;
  char v1[17], v2[17];
  int in_flight;
  int target;
  int submitted;
  int completed;
  int failed;
  int mismatched;
  int by_v1, by_v2;
  int reloads_left;
  int reloads_done;
  int next_is_v2;
  volatile int stop;
  volatile int drained;
} storm_t;

static void storm_submit(storm_t* s);

static void storm_cb(txmq_script_host_t* host, int status,
                     txmq_script_result_t result, const char* version,
                     const char* diag, void* arg) {
  (void)host;
  storm_t* s = arg;
  s->in_flight--;
  s->completed++;
  if (status != 0) {
    s->failed++;
    fprintf(stderr, "storm call failed: %s %s\n", txmq_err_name(status), diag);
  } else if (strcmp(version, s->v1) == 0) {
    s->by_v1++;
    if (result != TXMQ_SCRIPT_COMMIT) s->mismatched++;
  } else if (strcmp(version, s->v2) == 0) {
    s->by_v2++;
    if (result != TXMQ_SCRIPT_ROLLBACK) s->mismatched++;
  } else {
    s->mismatched++;
  }
  if (!s->stop) storm_submit(s);
  else if (s->in_flight == 0) s->drained = 1;
}

static void storm_submit(storm_t* s) {
  txmq_msg_t* m = make_msg("orders");
  const txmq_msg_t* msgs[1] = {m};
  while (s->in_flight < s->target) {
    assert_int_equal(txmq_script_execute(s->f->host, "pay", NULL, msgs, 1, NULL, 0,
                                         storm_cb, s), 0);
    s->in_flight++;
    s->submitted++;
  }
  txmq_msg_free(m);
}

static void storm_reload_cb(txmq_script_host_t* host, int status,
                            const char* group, const char* version,
                            const char* diag, void* arg) {
  (void)host;
  (void)group;
  (void)version;
  storm_t* s = arg;
  if (status != 0) fail_msg("storm reload: %s %s", txmq_err_name(status), diag);
  s->reloads_done++;
  if (--s->reloads_left == 0) {
    s->stop = 1;
    if (s->in_flight == 0) s->drained = 1;
    return;
  }
  s->next_is_v2 = !s->next_is_v2;
  write_script(s->f, "pay", s->next_is_v2 ? V2 : V1);
  assert_int_equal(txmq_script_reload(s->f->host, "pay", storm_reload_cb, s), 0);
}

static void reload_under_concurrent_calls(void** state) {
  (void)state;
  fx_t f;
  fx_new(&f, 0);
  assert_int_equal(txmq_script_host_set(f.host, TXMQ_SCRIPT_OPT_STATES_PER_GROUP, 2), 0);
  assert_int_equal(txmq_script_host_start(f.host), 0);
  storm_t s;
  memset(&s, 0, sizeof s);
  s.f = &f;
  fnv_hex(V1, strlen(V1), s.v1);
  fnv_hex(V2, strlen(V2), s.v2);
  write_script(&f, "pay", V1);
  reload_res_t rr = reload_sync(&f, "pay");
  assert_int_equal(rr.status, 0);
  s.target = 64;
  s.reloads_left = 12;
  storm_submit(&s);
  s.next_is_v2 = 1;
  write_script(&f, "pay", V2);
  assert_int_equal(txmq_script_reload(f.host, "pay", storm_reload_cb, &s), 0);
  assert_true(tu_run_until(&f.loop, &s.drained, 60000));
  fprintf(stderr, "storm: %d calls (%d by v1, %d by v2), %d reloads\n", s.completed,
          s.by_v1, s.by_v2, s.reloads_done);
  assert_int_equal(s.failed, 0);
  assert_int_equal(s.mismatched, 0);
  assert_int_equal(s.completed, s.submitted);
  assert_int_equal(s.reloads_done, 12);
  assert_true(s.by_v1 > 0 && s.by_v2 > 0);
  fx_free(&f);
}

static void watch_reload(void** state) {
  (void)state;
  fx_t f;
  fx_new(&f, 1);
  assert_int_equal(txmq_script_host_start(f.host), 0);
  char v1[17], v2[17];
  fnv_hex(V1, strlen(V1), v1);
  fnv_hex(V2, strlen(V2), v2);
  write_script(&f, "pay", V1);
  res_t r = exec_sync(&f, "pay", NULL);
  EXPECT_OK(r, TXMQ_SCRIPT_COMMIT);
  /* An editor's save: write a temporary file, rename it over the script. */
  char* tmp = tu_path(f.dir, "pay.lua.tmp");
  char* dst = tu_path(f.dir, "pay.lua");
  assert_int_equal(tu_write_file(tmp, V2, strlen(V2)), 0);
  assert_int_equal(rename(tmp, dst), 0);
  for (int i = 0; i < 300; i++) {
    const char* v = txmq_script_version(f.host, "pay");
    if (v != NULL && strcmp(v, v2) == 0) break;
    volatile int never = 0;
    tu_run_until(&f.loop, &never, 10);
  }
  assert_string_equal(txmq_script_version(f.host, "pay"), v2);
  r = exec_sync(&f, "pay", NULL);
  EXPECT_OK(r, TXMQ_SCRIPT_ROLLBACK);
  assert_string_equal(r.version, v2);
  /* An in-place edit is picked up too. */
  write_script(&f, "pay", V1);
  for (int i = 0; i < 300; i++) {
    const char* v = txmq_script_version(f.host, "pay");
    if (v != NULL && strcmp(v, v1) == 0) break;
    volatile int never = 0;
    tu_run_until(&f.loop, &never, 10);
  }
  assert_string_equal(txmq_script_version(f.host, "pay"), v1);
  free(tmp);
  free(dst);
  fx_free(&f);
}

static void close_with_calls_in_flight(void** state) {
  (void)state;
  fx_t f;
  fx_new(&f, 0);
  assert_int_equal(txmq_script_host_set(f.host, TXMQ_SCRIPT_OPT_WORKERS, 1), 0);
  assert_int_equal(txmq_script_host_start(f.host), 0);
  write_script(&f, "slow",
               "function executeLocalTransaction()\n"
               "  local t = os.clock() while os.clock() - t < 0.05 do end\n"
               "  return txmq.COMMIT\nend\n");
  res_t r[8];
  for (int i = 0; i < 8; i++) exec_start(&f, "slow", NULL, &r[i]);
  assert_true(tu_run_until(&f.loop, &r[0].done, 20000));
  assert_int_equal(txmq_script_host_close(f.host, on_host_closed, (void*)&f.closed), 0);
  res_t late;
  txmq_msg_t* m = make_msg("orders");
  const txmq_msg_t* one[1] = {m};
  assert_int_equal(txmq_script_execute(f.host, "slow", NULL, one, 1, NULL, 0, on_call, &late),
                   TXMQ_ECLOSED);
  txmq_msg_free(m);
  assert_true(tu_run_until(&f.loop, &f.closed, 20000));
  int ok = 0, closed = 0;
  for (int i = 0; i < 8; i++) {
    assert_true(r[i].done);
    if (r[i].status == 0) ok++;
    else if (r[i].status == TXMQ_ECLOSED) closed++;
  }
  assert_int_equal(ok + closed, 8);
  assert_true(ok >= 1);
  txmq_script_host_free(f.host);
  tu_loop_close_clean(&f.loop);
  tu_rmrf(f.dir);
  free(f.dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(results_and_spellings),
      cmocka_unit_test(missing_handler_and_bad_results),
      cmocka_unit_test(sandbox),
      cmocka_unit_test(require_from_allowed_paths),
      cmocka_unit_test(limits),
      cmocka_unit_test(allocator_churn),
      cmocka_unit_test(host_functions),
      cmocka_unit_test(reload_explicit),
      cmocka_unit_test(reload_under_concurrent_calls),
      cmocka_unit_test(watch_reload),
      cmocka_unit_test(close_with_calls_in_flight),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
