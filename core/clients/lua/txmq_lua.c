/*
 * txmq_lua.c - "txmq.core", the C half of the Lua module (lua/txmq.lua is
 * the API users see). It provides two userdata on top of the C client:
 *
 *   core.connect(server, client_id [, role [, secret]]) -> conn
 *     A client on a private libuv loop that runs only during a call (like
 *     the blocking layer of txmq/client.h, but it also drives
 *     txmq_client_send_in_transaction, whose execute callback calls back
 *     into the calling Lua state; while it runs, the conn refuses to be
 *     used or closed, as its loop is running). It announces no producer
 *     group, so the server never routes checks to it.
 *     conn:send(msg) conn:send_in_transaction(group, msg, execute, arg)
 *     conn:receive(opts) conn:ack(group, handles) conn:close()
 *     conn:offset_get(group, topic, qid) conn:offset_set(group, topic, qid,
 *     offset) conn:peek(opts)
 *
 *   core.checker(server, client_id, group, script_or_function, txmq, secret)
 *     A background thread with its own loop, its own connection (announcing
 *     the group in its hello) and its own lua_State that answers check
 *     requests. Given a path, the state loads that handler script and calls
 *     its checkLocalTransaction, loading it again when the file changes
 *     (checked before each check; a version that fails to load leaves the
 *     previous one in place). Given a Lua function, the function is copied
 *     into the state (lua_dump) with copies of its upvalues: nil, booleans,
 *     numbers, strings and tables of those; the module table `txmq` (the
 *     5th argument) becomes the constants; _ENV becomes the state's globals.
 *     Any other upvalue (a function, userdata, a thread) is refused: the
 *     function could not see what the caller's state sees. The user writes
 *     no event loop. checker:close() stops the loop and joins.
 *
 *   core.mtime(path) -> a string that changes when the file does, or nil.
 *
 * It does not sandbox or time-limit the producer's handlers: they are the
 * producer's own code, as a RocketMQ TransactionListener is. A checker whose
 * connection is lost reconnects every half second until closed. A conn
 * whose connection was lost reports the call in progress as failed (its
 * outcome is unknown to the caller: a half message may have been stored
 * and is then decided by checks) and connects again on the next call.
 */
#include <signal.h>
#include <stdatomic.h>
#include <sys/stat.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <uv.h>

#include "txmq/client.h"
#include "txmq/error.h"

#define CONN_MT "txmq.core.conn"
#define CHECKER_MT "txmq.core.checker"

/* ---- shared helpers ---- */

static const char* state_name(txmq_tx_state_t s) {
  switch (s) {
    case TXMQ_TX_COMMITTED: return "COMMITTED";
    case TXMQ_TX_ROLLED_BACK: return "ROLLED_BACK";
    case TXMQ_TX_PARKED: return "PARKED";
    default: return "PENDING";
  }
}

static const char* decision_name(txmq_tx_decision_t d) {
  switch (d) {
    case TXMQ_TX_COMMIT: return "COMMIT_MESSAGE";
    case TXMQ_TX_ROLLBACK: return "ROLLBACK_MESSAGE";
    default: return "UNKNOW";
  }
}

/* A handler's answer: the RocketMQ strings (also "COMMIT", "ROLLBACK",
 * "UNKNOWN") or the codes 1..3; anything else is UNKNOWN. */
static txmq_tx_decision_t to_decision(lua_State* L, int idx) {
  if (lua_type(L, idx) == LUA_TSTRING) {
    const char* s = lua_tostring(L, idx);
    if (!strcmp(s, "COMMIT_MESSAGE") || !strcmp(s, "COMMIT"))
      return TXMQ_TX_COMMIT;
    if (!strcmp(s, "ROLLBACK_MESSAGE") || !strcmp(s, "ROLLBACK"))
      return TXMQ_TX_ROLLBACK;
    return TXMQ_TX_UNKNOWN;
  }
  if (lua_isinteger(L, idx)) {
    lua_Integer v = lua_tointeger(L, idx);
    if (v == TXMQ_TX_COMMIT || v == TXMQ_TX_ROLLBACK) return (txmq_tx_decision_t)v;
  }
  return TXMQ_TX_UNKNOWN;
}

/* The error object on top of L as text in buf, without converting it (a
 * conversion allocates, and this runs outside any protected call). */
static const char* err_text(lua_State* L, char* buf, size_t cap) {
  int t = lua_type(L, -1);
  if (t == LUA_TSTRING)
    snprintf(buf, cap, "%s", lua_tostring(L, -1));
  else if (t == LUA_TNUMBER && lua_isinteger(L, -1))
    snprintf(buf, cap, "%lld", (long long)lua_tointeger(L, -1));
  else if (t == LUA_TNUMBER)
    snprintf(buf, cap, "%.14g", (double)lua_tonumber(L, -1));
  else
    snprintf(buf, cap, "(a %s as the error)", lua_typename(L, t));
  return buf;
}

static void set_str(lua_State* L, const char* k, const char* v) {
  if (!v) return;
  lua_pushstring(L, v);
  lua_setfield(L, -2, k);
}

static void set_int(lua_State* L, const char* k, lua_Integer v) {
  lua_pushinteger(L, v);
  lua_setfield(L, -2, k);
}

static void set_hex(lua_State* L, const char* k, const uint8_t* id) {
  char buf[TXMQ_TX_ID_STRLEN + 1];
  txmq_tx_id_str(id, buf);
  set_str(L, k, buf);
}

/* Pushes msg as the handler table of txmq/script.h. */
static void push_msg(lua_State* L, const txmq_msg_t* m) {
  lua_createtable(L, 0, 12);
  set_str(L, "topic", txmq_msg_topic(m));
  set_str(L, "tags", txmq_msg_tags(m));
  set_str(L, "keys", txmq_msg_keys(m));
  size_t len = 0;
  const void* body = txmq_msg_body(m, &len);
  lua_pushlstring(L, body ? body : "", body ? len : 0);
  lua_setfield(L, -2, "body");
  lua_createtable(L, 0, (int)txmq_msg_prop_count(m));
  for (size_t i = 0; i < txmq_msg_prop_count(m); i++) {
    const char *k, *v;
    if (txmq_msg_prop_at(m, i, &k, &v) == 0) set_str(L, k, v);
  }
  lua_setfield(L, -2, "properties");
  set_hex(L, "msg_id", txmq_msg_id(m));
  set_int(L, "queue_id", txmq_msg_queue_id(m));
  set_int(L, "queue_offset", txmq_msg_queue_offset(m));
  set_int(L, "born_at", txmq_msg_born_ms(m));
  set_int(L, "stored_at", txmq_msg_store_ms(m));
}

/* Builds the message of the table at 1 into *(txmq_msg_t**) at 2 (light
 * userdata), called protected by check_msg: a Lua error half way (a field's
 * __index raising, out of memory) leaves the message there to be freed. */
static int build_msg(lua_State* L) {
  txmq_msg_t** out = lua_touserdata(L, 2);
  const int idx = 1;
  txmq_msg_t* m = *out = txmq_msg_new();
  if (!m) return luaL_error(L, "txmq: out of memory");
  int rc = 0;
  const char* bad = NULL;
  lua_getfield(L, idx, "topic");
  if (!lua_isstring(L, -1))
    return luaL_error(L, "txmq: the message needs a topic (string)");
  if ((rc = txmq_msg_set_topic(m, lua_tostring(L, -1))) != 0) bad = "topic";
  lua_pop(L, 1);
  lua_getfield(L, idx, "tags");
  if (!rc && lua_isstring(L, -1) && (rc = txmq_msg_set_tags(m, lua_tostring(L, -1))))
    bad = "tags";
  lua_pop(L, 1);
  lua_getfield(L, idx, "keys");
  if (!rc && lua_isstring(L, -1) && (rc = txmq_msg_set_keys(m, lua_tostring(L, -1))))
    bad = "keys";
  lua_pop(L, 1);
  lua_getfield(L, idx, "body");
  if (!rc && lua_isstring(L, -1)) {
    size_t len;
    const char* b = lua_tolstring(L, -1, &len);
    if ((rc = txmq_msg_set_body(m, b, len))) bad = "body";
  }
  lua_pop(L, 1);
  /* props (or properties): string keys and values. */
  lua_getfield(L, idx, "props");
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    lua_getfield(L, idx, "properties");
  }
  if (!rc && lua_istable(L, -1)) {
    lua_pushnil(L);
    while (lua_next(L, -2)) {
      if (!rc) {
        if (lua_type(L, -2) != LUA_TSTRING || !lua_isstring(L, -1)) {
          rc = TXMQ_EINVAL;
          bad = "props (string keys and values)";
        } else if ((rc = txmq_msg_prop_set(m, lua_tostring(L, -2),
                                           lua_tostring(L, -1)))) {
          bad = "props";
        }
      }
      lua_pop(L, 1);
    }
  }
  lua_pop(L, 1);
  if (rc) return luaL_error(L, "txmq: invalid %s: %s", bad, txmq_strerror(rc));
  return 0;
}

/* Builds a message from the table at idx; raises a Lua error if invalid
 * (and frees what was built). */
static txmq_msg_t* check_msg(lua_State* L, int idx) {
  luaL_checktype(L, idx, LUA_TTABLE);
  txmq_msg_t* m = NULL;
  lua_pushcfunction(L, build_msg);
  lua_pushvalue(L, idx);
  lua_pushlightuserdata(L, &m);
  if (lua_pcall(L, 2, 0, 0) != LUA_OK) {
    txmq_msg_free(m);
    lua_error(L);
  }
  return m;
}

/* ---- conn: a client on a private loop, run during calls ---- */

typedef struct {
  uv_loop_t loop;
  txmq_client_t* c;
  int open;
  int busy;          /* its loop is running (a call is in progress) */
  char server[256];  /* to connect again after a lost connection */
} conn_t;

typedef struct {
  int done;
  int status;
  lua_State* L;
  int fn_idx;   /* execute function and its arg on L's stack */
  int arg_idx;
  int executed;
  char err[512];
  txmq_send_result_t send;
  txmq_tx_result_t tx;
  txmq_delivery_t* d;
  size_t n;
  int64_t value;
  int64_t next;  /* peek: where the next peek goes on */
} wait_t;

static int run_until(conn_t* k, wait_t* w, int rc) {
  if (rc != 0) return rc;
  k->busy = 1;
  while (!w->done)
    if (uv_run(&k->loop, UV_RUN_ONCE) == 0 && !w->done) {
      k->busy = 0;
      return TXMQ_EIO;
    }
  k->busy = 0;
  return w->status;
}

/* An execute function runs while its conn's loop does: the conn cannot be
 * used (libuv's loop does not run inside itself) nor closed until the call
 * returns. */
static void check_not_busy(lua_State* L, const conn_t* k) {
  if (k->busy)
    luaL_error(L, "txmq: the connection is in a call (send_in_transaction's "
                  "execute runs inside it): use another connection there");
}

/* nil, message: the Lua convention for an expected failure. */
static int fail(lua_State* L, conn_t* k, int rc) {
  const char* d = k && k->c ? txmq_client_diag(k->c) : "";
  lua_pushnil(L);
  lua_pushfstring(L, "%s: %s", txmq_err_name(rc),
                  d && *d ? d : txmq_strerror(rc));
  return 2;
}

static void on_connected(txmq_client_t* c, int status, void* arg) {
  (void)c;
  wait_t* w = arg;
  w->status = status;
  w->done = 1;
}

/* The conn at index 1, connected: after a lost connection the next call
 * connects again. Raises an error for a closed conn; 0 or the failure. */
static int check_conn(lua_State* L, conn_t** out) {
  conn_t* k = luaL_checkudata(L, 1, CONN_MT);
  if (!k->open) luaL_error(L, "txmq: the connection is closed");
  check_not_busy(L, k);
  *out = k;
  if (txmq_client_is_connected(k->c)) return 0;
  wait_t w = {0};
  return run_until(k, &w, txmq_client_connect(k->c, k->server, on_connected, &w));
}

static void on_closed(txmq_client_t* c, void* arg) {
  (void)c;
  *(int*)arg = 1;
}

static void conn_shutdown(conn_t* k) {
  if (!k->open) return;
  k->open = 0;
  int closed = 0;
  if (txmq_client_close(k->c, on_closed, &closed) == 0)
    while (!closed && uv_run(&k->loop, UV_RUN_ONCE) != 0) {
    }
  uv_run(&k->loop, UV_RUN_DEFAULT);
  txmq_client_free(k->c);
  uv_loop_close(&k->loop);
}

/* core.connect(server, client_id [, role [, secret]]) -> conn | nil, err */
static int l_connect(lua_State* L) {
  const char* server = luaL_optstring(L, 1, TXMQ_DEFAULT_SERVER);
  const char* id = luaL_checkstring(L, 2);
  const char* role = luaL_optstring(L, 3, "producer");
  const char* secret = luaL_optstring(L, 4, NULL);
  txmq_client_options_t o = {0};
  o.client_id = id;
  o.secret = secret;  /* copied by txmq_client_new */
  o.role = !strcmp(role, "consumer") ? TXMQ_ROLE_CONSUMER
           : !strcmp(role, "admin")  ? TXMQ_ROLE_ADMIN
                                     : TXMQ_ROLE_PRODUCER;
  if (strlen(server) >= sizeof ((conn_t*)0)->server)
    return luaL_argerror(L, 1, "server address too long");
  conn_t* k = lua_newuserdatauv(L, sizeof *k, 0);
  memset(k, 0, sizeof *k);
  memcpy(k->server, server, strlen(server) + 1);
  if (uv_loop_init(&k->loop) < 0) return fail(L, NULL, TXMQ_EIO);
  int rc = txmq_client_new(&k->c, &k->loop, &o);
  if (rc) {
    uv_loop_close(&k->loop);
    return fail(L, NULL, rc);
  }
  k->open = 1;
  luaL_setmetatable(L, CONN_MT);
  wait_t w = {0};
  rc = run_until(k, &w, txmq_client_connect(k->c, server, on_connected, &w));
  if (rc) {
    int r = fail(L, k, rc);
    conn_shutdown(k);
    return r;
  }
  return 1;
}

static int l_conn_close(lua_State* L) {
  conn_t* k = luaL_checkudata(L, 1, CONN_MT);
  check_not_busy(L, k);
  conn_shutdown(k);
  return 0;
}

static void on_send(txmq_client_t* c, int status, const txmq_send_result_t* r,
                    void* arg) {
  (void)c;
  wait_t* w = arg;
  w->status = status;
  if (status == 0) w->send = *r;
  w->done = 1;
}

/* conn:send(msg) -> {msg_id, qid, qoff} | nil, err */
static int l_conn_send(lua_State* L) {
  conn_t* k;
  int rc = check_conn(L, &k);
  if (rc) return fail(L, k, rc);
  txmq_msg_t* m = check_msg(L, 2);
  wait_t w = {0};
  rc = txmq_client_send(k->c, m, on_send, &w);
  txmq_msg_free(m);
  rc = run_until(k, &w, rc);
  if (rc) return fail(L, k, rc);
  lua_createtable(L, 0, 3);
  set_hex(L, "msg_id", w.send.msg_id);
  set_int(L, "qid", w.send.qid);
  set_int(L, "qoff", w.send.qoff);
  return 1;
}

/* Calls execute(msg, arg) (arguments: execute, the message and the
 * transaction id as light userdata, arg), called protected by on_execute so
 * that an error while the message table is built (out of memory) is caught
 * too and never unwinds through the client's loop. */
static int call_execute(lua_State* L) {
  push_msg(L, lua_touserdata(L, 2));
  set_hex(L, "tx_id", lua_touserdata(L, 3));
  lua_pushvalue(L, 1);
  lua_insert(L, -2);
  lua_pushvalue(L, 4);
  lua_call(L, 2, 1);
  return 1;
}

/* Runs the Lua execute function (in the calling state, on its thread: the
 * loop runs inside the Lua call). An error counts as UNKNOWN. */
static txmq_tx_decision_t on_execute(txmq_client_t* c, const txmq_msg_t* msg,
                                     const uint8_t* tx_id, void* arg) {
  (void)c;
  wait_t* w = arg;
  lua_State* L = w->L;
  w->executed = 1;
  lua_pushcfunction(L, call_execute);
  lua_pushvalue(L, w->fn_idx);
  lua_pushlightuserdata(L, (void*)msg);
  lua_pushlightuserdata(L, (void*)tx_id);
  lua_pushvalue(L, w->arg_idx);
  if (lua_pcall(L, 4, 1, 0) != LUA_OK) {
    err_text(L, w->err, sizeof w->err);
    lua_pop(L, 1);
    return TXMQ_TX_UNKNOWN;
  }
  txmq_tx_decision_t d = to_decision(L, -1);
  lua_pop(L, 1);
  return d;
}

static void on_tx_done(txmq_client_t* c, int status, const txmq_tx_result_t* r,
                       void* arg) {
  (void)c;
  wait_t* w = arg;
  w->status = status;
  if (status == 0) w->tx = *r;
  w->done = 1;
}

/* conn:send_in_transaction(group, msg, execute, arg) -> result | nil, err */
static int l_conn_send_tx(lua_State* L) {
  conn_t* k;
  const char* group = luaL_checkstring(L, 2);
  luaL_checktype(L, 4, LUA_TFUNCTION);
  lua_settop(L, 5);
  int rc = check_conn(L, &k);
  if (rc) return fail(L, k, rc);
  txmq_msg_t* m = check_msg(L, 3);
  wait_t w = {0};
  w.L = L;
  w.fn_idx = 4;
  w.arg_idx = 5;
  rc = txmq_client_send_in_transaction(k->c, group, m, on_execute, &w,
                                           on_tx_done, &w);
  txmq_msg_free(m);
  rc = run_until(k, &w, rc);
  if (rc) return fail(L, k, rc);
  lua_createtable(L, 0, 8);
  set_str(L, "status", "SEND_OK");
  set_hex(L, "msg_id", w.tx.msg_id);
  set_hex(L, "tx_id", w.tx.tx_id);
  set_str(L, "tx_state", decision_name(w.tx.local_state));
  set_str(L, "state", state_name(w.tx.tx_state));
  if (w.tx.end_status) {
    lua_pushfstring(L, "%s", txmq_err_name(w.tx.end_status));
    lua_setfield(L, -2, "end_error");
  }
  if (w.err[0]) set_str(L, "error", w.err);
  return 1;
}

static void on_receive(txmq_client_t* c, int status, txmq_delivery_t* d,
                       size_t n, void* arg) {
  (void)c;
  wait_t* w = arg;
  w->status = status;
  w->done = 1;
  if (status || n == 0) return;
  w->d = malloc(n * sizeof *d);
  if (!w->d) {
    w->status = TXMQ_ENOMEM;
    return;
  }
  memcpy(w->d, d, n * sizeof *d);
  for (size_t i = 0; i < n; i++) d[i].msg = NULL;
  w->n = n;
}

/* Builds the list of w's deliveries (arguments: w as a light userdata,
 * with_handle), called protected by push_deliveries. Each message also has
 * qid and qoff, the names of send's result and of offset_get/offset_set, so
 * that a message says where to seek; with_handle: received (a handle to ack
 * and the delivery count), not peeked. */
static int build_deliveries(lua_State* L) {
  wait_t* w = lua_touserdata(L, 1);
  int with_handle = lua_toboolean(L, 2);
  lua_createtable(L, (int)w->n, 0);
  for (size_t i = 0; i < w->n; i++) {
    push_msg(L, w->d[i].msg);
    set_int(L, "qid", txmq_msg_queue_id(w->d[i].msg));
    set_int(L, "qoff", txmq_msg_queue_offset(w->d[i].msg));
    if (with_handle) {
      set_str(L, "handle", w->d[i].handle);
      set_int(L, "deliveries", w->d[i].deliveries);
    }
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  return 1;
}

/* Pushes the list of w's deliveries and frees them, also when building the
 * list raises an error (out of memory): the error is raised again after. */
static void push_deliveries(lua_State* L, wait_t* w, int with_handle) {
  lua_pushcfunction(L, build_deliveries);
  lua_pushlightuserdata(L, w);
  lua_pushboolean(L, with_handle);
  int rc = lua_pcall(L, 2, 1, 0);
  txmq_client_free_deliveries(w->d, w->n);
  w->d = NULL;
  w->n = 0;
  if (rc != LUA_OK) lua_error(L);
}

/* conn:receive{group, topic, tags, max, wait_ms} -> list | nil, err */
static int l_conn_receive(lua_State* L) {
  conn_t* k;
  luaL_checktype(L, 2, LUA_TTABLE);
  txmq_receive_opts_t o = {0};
  lua_getfield(L, 2, "group");
  o.group = luaL_checkstring(L, -1);
  lua_getfield(L, 2, "topic");
  o.topic = luaL_checkstring(L, -1);
  lua_getfield(L, 2, "tags");
  o.tags = luaL_optstring(L, -1, NULL);
  lua_getfield(L, 2, "max");
  o.max = (uint32_t)luaL_optinteger(L, -1, 32);
  lua_getfield(L, 2, "wait_ms");
  o.wait_ms = (uint32_t)luaL_optinteger(L, -1, 1000);
  wait_t w = {0};
  int rc = check_conn(L, &k);
  if (!rc) rc = run_until(k, &w, txmq_client_receive(k->c, &o, on_receive, &w));
  if (rc) {
    txmq_client_free_deliveries(w.d, w.n);
    return fail(L, k, rc);
  }
  push_deliveries(L, &w, 1);
  return 1;
}

static void on_int(txmq_client_t* c, int status, int64_t v, void* arg) {
  (void)c;
  wait_t* w = arg;
  w->status = status;
  w->value = v;
  w->done = 1;
}

/* conn:ack(group, {handle...}) -> acked | nil, err. More handles than the
 * server takes in one ack (1024) get its error; ACK_MAX only keeps the
 * size of the array of pointers sane. */
#define ACK_MAX 65536
static int l_conn_ack(lua_State* L) {
  conn_t* k;
  const char* group = luaL_checkstring(L, 2);
  luaL_checktype(L, 3, LUA_TTABLE);
  lua_Integer len = luaL_len(L, 3);
  if (len < 0 || len > ACK_MAX)
    return luaL_argerror(L, 3, "from 0 to 65536 handles");
  size_t n = (size_t)len;
  if (n == 0) {
    lua_pushinteger(L, 0);
    return 1;
  }
  const char** hs = lua_newuserdatauv(L, n * sizeof *hs, 0);
  /* The strings stay referenced by a table of our own until the call
   * returns (a handle from an __index function is referenced by nothing
   * else). */
  lua_createtable(L, (int)n, 0);
  for (size_t i = 0; i < n; i++) {
    if (lua_geti(L, 3, (lua_Integer)i + 1) != LUA_TSTRING)
      return luaL_argerror(L, 3, "handles are strings");
    hs[i] = lua_tostring(L, -1);
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  wait_t w = {0};
  int rc = check_conn(L, &k);
  if (!rc) rc = run_until(k, &w, txmq_client_ack(k->c, group, hs, n, on_int, &w));
  if (rc) return fail(L, k, rc);
  lua_pushinteger(L, w.value);
  return 1;
}

/* An integer from lo to hi for argument arg (a queue id, an offset): a Lua
 * error otherwise, since a fraction or a negative number is the caller's
 * mistake, not the server's answer. */
static lua_Integer check_range(lua_State* L, int arg, lua_Integer lo,
                               lua_Integer hi, const char* what) {
  lua_Integer v = luaL_checkinteger(L, arg);
  if (v < lo || v > hi)
    luaL_argerror(L, arg, lua_pushfstring(L, "%s must be from %I to %I", what,
                                          lo, hi));
  return v;
}

/* conn:offset_get(group, topic, qid) -> offset | nil, err ("ENOTFOUND: ..."
 * when the group never read that queue) */
static int l_conn_offset_get(lua_State* L) {
  conn_t* k;
  const char* group = luaL_checkstring(L, 2);
  const char* topic = luaL_checkstring(L, 3);
  int32_t qid = (int32_t)check_range(L, 4, 0, INT32_MAX, "qid");
  wait_t w = {0};
  int rc = check_conn(L, &k);
  if (!rc)
    rc = run_until(k, &w, txmq_client_offset_get(k->c, group, topic, qid,
                                                 on_int, &w));
  if (rc) return fail(L, k, rc);
  lua_pushinteger(L, w.value);
  return 1;
}

static void on_done(txmq_client_t* c, int status, void* arg) {
  (void)c;
  wait_t* w = arg;
  w->status = status;
  w->done = 1;
}

/* conn:offset_set(group, topic, qid, offset) -> true | nil, err */
static int l_conn_offset_set(lua_State* L) {
  conn_t* k;
  const char* group = luaL_checkstring(L, 2);
  const char* topic = luaL_checkstring(L, 3);
  int32_t qid = (int32_t)check_range(L, 4, 0, INT32_MAX, "qid");
  int64_t offset = check_range(L, 5, 0, INT64_MAX, "offset");
  wait_t w = {0};
  int rc = check_conn(L, &k);
  if (!rc)
    rc = run_until(k, &w, txmq_client_offset_set(k->c, group, topic, qid,
                                                 offset, on_done, &w));
  if (rc) return fail(L, k, rc);
  lua_pushboolean(L, 1);
  return 1;
}

static void on_peek(txmq_client_t* c, int status, txmq_delivery_t* d,
                    size_t n, int64_t next, void* arg) {
  wait_t* w = arg;
  w->next = next;
  on_receive(c, status, d, n, arg);
}

/* The field k of the options table at index 2: an integer from lo to hi,
 * or dflt when absent and not required; a Lua error otherwise (a numeric
 * string too, as txmq.lua's checks refuse it: an offset is a number). */
static lua_Integer field_int(lua_State* L, const char* k, int required,
                             lua_Integer dflt, lua_Integer lo, lua_Integer hi) {
  int isint = 0;
  lua_getfield(L, 2, k);
  lua_Integer v = lua_type(L, -1) == LUA_TNUMBER ? lua_tointegerx(L, -1, &isint)
                                                 : 0;
  if (lua_isnil(L, -1) && !required) v = dflt;
  else if (!isint || v < lo || v > hi)
    luaL_error(L, "txmq: %s must be an integer from %I to %I, not %s", k, lo,
               hi, luaL_tolstring(L, -1, NULL));
  lua_pop(L, 1);
  return v;
}

/* conn:peek{topic, qid, offset, max} -> list, next | nil, err. No offset:
 * from the queue's first retained message. */
static int l_conn_peek(lua_State* L) {
  conn_t* k;
  luaL_checktype(L, 2, LUA_TTABLE);
  lua_getfield(L, 2, "topic");
  if (lua_type(L, -1) != LUA_TSTRING)
    return luaL_error(L, "txmq: peek needs a topic (string)");
  const char* topic = lua_tostring(L, -1); /* kept on the stack */
  int32_t qid = (int32_t)field_int(L, "qid", 1, 0, 0, INT32_MAX);
  int64_t offset = field_int(L, "offset", 0, -1, 0, INT64_MAX);
  uint32_t max = (uint32_t)field_int(L, "max", 0, 32, 1, 256);
  wait_t w = {0};
  int rc = check_conn(L, &k);
  if (!rc)
    rc = run_until(k, &w, txmq_client_peek(k->c, topic, qid, offset, max,
                                           on_peek, &w));
  if (rc) {
    txmq_client_free_deliveries(w.d, w.n);
    return fail(L, k, rc);
  }
  push_deliveries(L, &w, 0);
  lua_pushinteger(L, w.next);
  return 2;
}

/* ---- checker: a background thread answering checks ---- */

typedef struct {
  uv_thread_t thread;
  uv_sem_t ready;
  uv_async_t stop;
  uv_timer_t retry;  /* reconnects after a lost connection */
  int started;       /* the first connect has reported */
  int stopping;
  uv_loop_t loop;
  txmq_client_t* c;
  lua_State* S;    /* the checker's own state, used on its thread only */
  char* server;
  char* id;
  char* group;
  char* script;    /* NULL: an inline check function */
  char stamp[96];  /* of the script's file when it was loaded */
  int start_status;
  int running;
  char err[512];
  atomic_uint_fast64_t checks;  /* written by the thread, read by Lua */
  atomic_uint_fast64_t reloads;
} checker_t;

/* The globals of a handler in the checker's state: txmq.COMMIT, ...,
 * txmq.log, and the standard library behind them. */
static const char* MAKE_ENV =
    "local txmq = { COMMIT = 'COMMIT_MESSAGE', ROLLBACK = 'ROLLBACK_MESSAGE',\n"
    "  UNKNOWN = 'UNKNOW', null = setmetatable({}, {__name = 'txmq.null'}),\n"
    "  array = function(t) return t or {} end }\n"
    "function txmq.log(...) local t = table.pack(...)\n"
    "  for i = 1, t.n do t[i] = tostring(t[i]) end\n"
    "  io.stderr:write('txmq: ', table.concat(t, ' '), '\\n') end\n"
    "return setmetatable({ txmq = txmq }, { __index = _G })\n";

/* Runs the script in env; returns its checkLocalTransaction. */
static const char* LOADER =
    "local path, env = ...\n"
    "local f = assert(loadfile(path, 't', env))\n"
    "f()\n"
    "if type(env.checkLocalTransaction) ~= 'function' then\n"
    "  error(path .. ' defines no checkLocalTransaction', 0) end\n"
    "return env.checkLocalTransaction\n";

/* Pushes a fresh handler environment on S. */
static int push_env(lua_State* S) {
  if (luaL_loadstring(S, MAKE_ENV) != LUA_OK) return -1;
  return lua_pcall(S, 0, 1, 0) == LUA_OK ? 0 : -1;
}

/* Loads path into a fresh environment of S and makes its
 * checkLocalTransaction the check function (registry "txmq.check"). On
 * failure the previous function stays, the message is on top of S (popped
 * by the caller) and the result is -1. */
static int load_check_script(lua_State* S, const char* path) {
  if (luaL_loadstring(S, LOADER) != LUA_OK) return -1;
  lua_pushstring(S, path);
  if (push_env(S) != 0) {
    lua_remove(S, -3);
    lua_remove(S, -2);
    return -1;
  }
  if (lua_pcall(S, 2, 1, 0) != LUA_OK) return -1;
  lua_setfield(S, LUA_REGISTRYINDEX, "txmq.check");
  return 0;
}

/* A string that changes when the file at path does (modification time
 * and size), in buf; 0, or -1 if the file can't be stat'ed. */
static int file_stamp(const char* path, char* buf, size_t cap) {
  struct stat st;
  if (stat(path, &st) != 0) return -1;
  snprintf(buf, cap, "%lld.%09ld:%lld:%llu", (long long)st.st_mtim.tv_sec,
           (long)st.st_mtim.tv_nsec, (long long)st.st_size,
           (unsigned long long)st.st_ino);
  return 0;
}

/* core.mtime(path) -> stamp | nil */
static int l_mtime(lua_State* L) {
  char buf[96];
  if (file_stamp(luaL_checkstring(L, 1), buf, sizeof buf) != 0) return 0;
  lua_pushstring(L, buf);
  return 1;
}

/* Copies the plain value at idx of L onto S: nil, booleans, numbers,
 * strings, tables of those (keys too, depth-limited, no metatables).
 * NULL, or why not (the message names the offending type). */
#define COPY_DEPTH 16
static const char* copy_value(lua_State* L, int idx, lua_State* S, int depth) {
  idx = lua_absindex(L, idx);
  if (!lua_checkstack(S, 4) || !lua_checkstack(L, 4)) return "too deep";
  switch (lua_type(L, idx)) {
    case LUA_TNIL: lua_pushnil(S); return NULL;
    case LUA_TBOOLEAN: lua_pushboolean(S, lua_toboolean(L, idx)); return NULL;
    case LUA_TNUMBER:
      if (lua_isinteger(L, idx))
        lua_pushinteger(S, lua_tointeger(L, idx));
      else
        lua_pushnumber(S, lua_tonumber(L, idx));
      return NULL;
    case LUA_TSTRING: {
      size_t n;
      const char* v = lua_tolstring(L, idx, &n);
      lua_pushlstring(S, v, n);
      return NULL;
    }
    case LUA_TTABLE:
      if (depth >= COPY_DEPTH) return "a table nested too deep (or a cycle)";
      lua_newtable(S);
      lua_pushnil(L);
      while (lua_next(L, idx)) {
        const char* e = copy_value(L, -2, S, depth + 1);
        if (!e) e = copy_value(L, -1, S, depth + 1);
        if (e) {
          lua_pop(L, 2);
          return e;
        }
        lua_rawset(S, -3);
        lua_pop(L, 1);
      }
      return NULL;
    default:
      return lua_typename(L, lua_type(L, idx));
  }
}

typedef struct {
  char* p;
  size_t n, cap;
} dump_buf_t;

static int dump_writer(lua_State* L, const void* p, size_t n, void* ud) {
  (void)L;
  dump_buf_t* b = ud;
  if (b->n + n > b->cap) {
    size_t cap = b->cap ? b->cap * 2 : 1024;
    while (cap < b->n + n) cap *= 2;
    char* q = realloc(b->p, cap);
    if (!q) return 1;
    b->p = q;
    b->cap = cap;
  }
  memcpy(b->p + b->n, p, n);
  b->n += n;
  return 0;
}

/* Copies the Lua function at fidx of L (with module, the txmq table, at
 * midx) into S as its check function; NULL, or the reason in err. */
static const char* copy_check_fn(lua_State* L, int fidx, int midx, lua_State* S,
                                 char* err, size_t cap) {
  if (lua_iscfunction(L, fidx)) return "check must be a Lua function, not a C function";
  dump_buf_t b = {0};
  lua_pushvalue(L, fidx);
  int rc = lua_dump(L, dump_writer, &b, 0);
  lua_pop(L, 1);
  if (rc != 0 || luaL_loadbufferx(S, b.p, b.n, "=check", "b") != LUA_OK) {
    free(b.p);
    snprintf(err, cap, "check could not be copied: %s",
             rc ? "out of memory" : lua_tostring(S, -1));
    return err;
  }
  free(b.p);
  for (int i = 1;; i++) {
    const char* name = lua_getupvalue(L, fidx, i);
    if (!name) break;
    const char* e = NULL;
    if (!strcmp(name, "_ENV")) {
      if (push_env(S) != 0) e = "the globals could not be made";
    } else if (midx && lua_rawequal(L, -1, midx)) {
      if (push_env(S) == 0) {
        lua_getfield(S, -1, "txmq");
        lua_remove(S, -2);
      } else {
        e = "the txmq constants could not be made";
      }
    } else {
      e = copy_value(L, -1, S, 0);
      if (e) {
        snprintf(err, cap,
                 "check uses the local '%s' (%s); checks run in the "
                 "producer's own Lua state, so an inline check may use only "
                 "globals, the txmq module and copies of nil, booleans, "
                 "numbers, strings and tables of those - use script = path "
                 "for anything else",
                 name, e);
        lua_pop(L, 1);
        return err;
      }
    }
    lua_pop(L, 1);
    if (e) {
      snprintf(err, cap, "check: %s", e);
      return err;
    }
    lua_setupvalue(S, -2, i);
  }
  lua_setfield(S, LUA_REGISTRYINDEX, "txmq.check");
  return NULL;
}

/* Loads a newer version of the script, if its file changed. A version that
 * fails to load keeps the previous one. */
static void checker_maybe_reload(checker_t* k) {
  char stamp[96];
  if (!k->script || file_stamp(k->script, stamp, sizeof stamp) != 0 ||
      !strcmp(stamp, k->stamp))
    return;
  memcpy(k->stamp, stamp, sizeof stamp);
  if (load_check_script(k->S, k->script) != 0) {
    char e[512];
    fprintf(stderr, "txmq: %s changed but does not load, the previous version "
            "stays: %s\n", k->script, err_text(k->S, e, sizeof e));
    lua_pop(k->S, 1);
  } else {
    atomic_fetch_add(&k->reloads, 1);
  }
}

/* Calls checkLocalTransaction(msg) (arguments: the function, the check as
 * a light userdata), called protected by on_check so that an error while
 * the message table is built (out of memory) is caught too and never
 * unwinds through the checker's loop. */
static int call_check(lua_State* S) {
  const txmq_client_check_t* chk = lua_touserdata(S, 2);
  if (chk->nmsgs > 0) {
    push_msg(S, chk->msgs[0]);
    lua_createtable(S, (int)chk->nmsgs, 0);
    for (size_t i = 0; i < chk->nmsgs; i++) {
      push_msg(S, chk->msgs[i]);
      lua_rawseti(S, -2, (lua_Integer)i + 1);
    }
    lua_setfield(S, -2, "messages");
  } else {
    lua_newtable(S);
  }
  set_hex(S, "tx_id", chk->tx_id);
  set_int(S, "check_count", chk->check_count);
  set_str(S, "group", chk->group);
  lua_pushvalue(S, 1);
  lua_insert(S, -2);
  lua_call(S, 1, 1);
  return 1;
}

static void on_check(txmq_client_t* c, const txmq_client_check_t* chk,
                     void* arg) {
  checker_t* k = arg;
  lua_State* S = k->S;
  txmq_tx_decision_t d = TXMQ_TX_UNKNOWN;
  checker_maybe_reload(k);
  lua_pushcfunction(S, call_check);
  lua_getfield(S, LUA_REGISTRYINDEX, "txmq.check");
  lua_pushlightuserdata(S, (void*)chk);
  if (lua_pcall(S, 2, 1, 0) != LUA_OK) {
    char e[512];
    fprintf(stderr, "txmq: checkLocalTransaction failed: %s\n",
            err_text(S, e, sizeof e));
  } else {
    d = to_decision(S, -1);
  }
  lua_pop(S, 1);
  /* Counted before the answer leaves, so that whatever the answer causes
   * (a commit, a park) is seen after the count. */
  atomic_fetch_add(&k->checks, 1);
  txmq_client_check_reply(c, chk->check_id, d);
}

static void checker_on_connected(txmq_client_t* c, int status, void* arg);

/* A lost connection is retried every RETRY_MS until close: the checks of
 * the group wait on the server until a member says hello again. */
#define RETRY_MS 500

static void checker_retry(uv_timer_t* t) {
  checker_t* k = t->data;
  if (k->stopping) return;
  int rc = txmq_client_connect(k->c, k->server, checker_on_connected, k);
  if (rc != 0 && rc != TXMQ_EBUSY) uv_timer_start(&k->retry, checker_retry, RETRY_MS, 0);
}

static void checker_on_connected(txmq_client_t* c, int status, void* arg) {
  checker_t* k = arg;
  if (!k->started) {
    k->started = 1;
    k->start_status = status;
    if (status)
      snprintf(k->err, sizeof k->err, "%s", txmq_client_diag(c));
    uv_sem_post(&k->ready);
    return;
  }
  if (status && !k->stopping)
    uv_timer_start(&k->retry, checker_retry, RETRY_MS, 0);
}

static void checker_on_disconnect(txmq_client_t* c, int status, void* arg) {
  (void)c;
  (void)status;
  checker_t* k = arg;
  if (!k->stopping) uv_timer_start(&k->retry, checker_retry, RETRY_MS, 0);
}

static void checker_on_closed(txmq_client_t* c, void* arg) {
  (void)c;
  checker_t* k = arg;
  uv_close((uv_handle_t*)&k->stop, NULL);
}

static void checker_on_stop(uv_async_t* a) {
  checker_t* k = a->data;
  k->stopping = 1;
  uv_timer_stop(&k->retry);
  uv_close((uv_handle_t*)&k->retry, NULL);
  if (txmq_client_close(k->c, checker_on_closed, k) != 0)
    uv_close((uv_handle_t*)&k->stop, NULL);
}

static void checker_main(void* arg) {
  checker_t* k = arg;
  uv_run(&k->loop, UV_RUN_DEFAULT);
}

static void checker_free_fields(checker_t* k) {
  if (k->S) lua_close(k->S);
  k->S = NULL;
  free(k->server);
  free(k->id);
  free(k->group);
  free(k->script);
  k->server = k->id = k->group = k->script = NULL;
}

/* Stops the thread (if started), frees everything. Prompt: closing the
 * client fails what is outstanding at once. */
static void checker_shutdown(checker_t* k) {
  if (!k->running) return;
  k->running = 0;
  uv_async_send(&k->stop);
  uv_thread_join(&k->thread);
  uv_run(&k->loop, UV_RUN_DEFAULT);
  txmq_client_free(k->c);
  uv_loop_close(&k->loop);
  uv_sem_destroy(&k->ready);
  checker_free_fields(k);
}

static char* dupstr(const char* s) {
  size_t n = strlen(s) + 1;
  char* d = malloc(n);
  if (d) memcpy(d, s, n);
  return d;
}

/* core.checker(server, client_id, group, script | function [, txmq])
 *   -> checker | nil, err */
static int l_checker(lua_State* L) {
  const char* server = luaL_checkstring(L, 1);
  const char* id = luaL_checkstring(L, 2);
  const char* group = luaL_checkstring(L, 3);
  int inline_fn = lua_type(L, 4) == LUA_TFUNCTION;
  const char* script = inline_fn ? NULL : luaL_checkstring(L, 4);
  int midx = lua_type(L, 5) == LUA_TTABLE ? 5 : 0;
  const char* secret = luaL_optstring(L, 6, NULL);
  checker_t* k = lua_newuserdatauv(L, sizeof *k, 0);
  memset(k, 0, sizeof *k);
  luaL_setmetatable(L, CHECKER_MT);
  k->server = dupstr(server);
  k->id = dupstr(id);
  k->group = dupstr(group);
  k->script = script ? dupstr(script) : NULL;
  k->S = luaL_newstate();
  if (!k->server || !k->id || !k->group || (script && !k->script) || !k->S) {
    checker_free_fields(k);
    return luaL_error(L, "txmq: out of memory");
  }
  luaL_openlibs(k->S);
  if (inline_fn) {
    char err[600];
    const char* e = copy_check_fn(L, 4, midx, k->S, err, sizeof err);
    if (e) {
      lua_pushstring(L, e);
      checker_free_fields(k);
      return lua_error(L);
    }
  } else {
    if (file_stamp(script, k->stamp, sizeof k->stamp) != 0) k->stamp[0] = 0;
    if (load_check_script(k->S, script) != 0) {
      lua_pushnil(L);
      lua_pushfstring(L, "ESCRIPT: %s", lua_tostring(k->S, -1));
      checker_free_fields(k);
      return 2;
    }
  }

  const char* groups[1] = {k->group};
  txmq_client_options_t o = {0};
  o.client_id = k->id;
  o.role = TXMQ_ROLE_PRODUCER;
  o.secret = secret;  /* copied by txmq_client_new */
  o.producer_groups = groups;
  o.n_producer_groups = 1;
  int rc = uv_loop_init(&k->loop) < 0 ? TXMQ_EIO : 0;
  if (!rc && (rc = txmq_client_new(&k->c, &k->loop, &o))) uv_loop_close(&k->loop);
  if (rc) {
    checker_free_fields(k);
    return fail(L, NULL, rc);
  }
  txmq_client_on_check(k->c, k->group, on_check, k);
  txmq_client_on_disconnect(k->c, checker_on_disconnect, k);
  uv_timer_init(&k->loop, &k->retry);
  k->retry.data = k;
  uv_sem_init(&k->ready, 0);
  uv_async_init(&k->loop, &k->stop, checker_on_stop);
  k->stop.data = k;
  rc = txmq_client_connect(k->c, k->server, checker_on_connected, k);
  if (!rc && uv_thread_create(&k->thread, checker_main, k) != 0) rc = TXMQ_EIO;
  if (rc) {
    /* Nothing runs the loop yet: tear down here. */
    char msg[600];
    const char* d = txmq_client_diag(k->c);
    snprintf(msg, sizeof msg, "%s: %s", txmq_err_name(rc),
             d && *d ? d : txmq_strerror(rc));
    uv_close((uv_handle_t*)&k->stop, NULL);
    uv_close((uv_handle_t*)&k->retry, NULL);
    int closed = 0;
    if (txmq_client_close(k->c, on_closed, &closed) == 0)
      while (!closed && uv_run(&k->loop, UV_RUN_ONCE) != 0) {
      }
    uv_run(&k->loop, UV_RUN_DEFAULT);
    txmq_client_free(k->c);
    uv_loop_close(&k->loop);
    uv_sem_destroy(&k->ready);
    checker_free_fields(k);
    lua_pushnil(L);
    lua_pushstring(L, msg);
    return 2;
  }
  k->running = 1;
  uv_sem_wait(&k->ready);
  if (k->start_status) {
    char msg[600];
    snprintf(msg, sizeof msg, "%s: %s", txmq_err_name(k->start_status),
             k->err[0] ? k->err : txmq_strerror(k->start_status));
    checker_shutdown(k);
    lua_pushnil(L);
    lua_pushstring(L, msg);
    return 2;
  }
  return 1;
}

static int l_checker_close(lua_State* L) {
  checker_t* k = luaL_checkudata(L, 1, CHECKER_MT);
  checker_shutdown(k);
  /* A checker whose creation raised an error half way (out of memory)
   * never ran: its fields are freed here, by its __gc. */
  checker_free_fields(k);
  return 0;
}

/* checker:checks() -> how many check requests were answered (for tests). */
static int l_checker_checks(lua_State* L) {
  checker_t* k = luaL_checkudata(L, 1, CHECKER_MT);
  lua_pushinteger(L, (lua_Integer)atomic_load(&k->checks));
  return 1;
}

/* checker:reloads() -> how many times a changed script was loaded again. */
static int l_checker_reloads(lua_State* L) {
  checker_t* k = luaL_checkudata(L, 1, CHECKER_MT);
  lua_pushinteger(L, (lua_Integer)atomic_load(&k->reloads));
  return 1;
}

int luaopen_txmq_core(lua_State* L) {
  /* A server that closes while a request is being written would otherwise
   * kill the interpreter with SIGPIPE (the call fails with an error
   * instead), as LuaSocket does; a host that installed its own handler
   * keeps it. */
  struct sigaction sa;
  if (sigaction(SIGPIPE, NULL, &sa) == 0 && sa.sa_handler == SIG_DFL) {
    sa.sa_handler = SIG_IGN;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0;
    sigaction(SIGPIPE, &sa, NULL);
  }
  static const luaL_Reg conn_m[] = {
      {"send", l_conn_send},       {"send_in_transaction", l_conn_send_tx},
      {"receive", l_conn_receive}, {"ack", l_conn_ack},
      {"offset_get", l_conn_offset_get},
      {"offset_set", l_conn_offset_set},
      {"peek", l_conn_peek},
      {"close", l_conn_close},     {"__gc", l_conn_close},
      {"__close", l_conn_close},   {NULL, NULL}};
  static const luaL_Reg checker_m[] = {{"close", l_checker_close},
                                       {"checks", l_checker_checks},
                                       {"reloads", l_checker_reloads},
                                       {"__gc", l_checker_close},
                                       {NULL, NULL}};
  static const luaL_Reg fns[] = {
      {"connect", l_connect},
      {"checker", l_checker},
      {"mtime", l_mtime},
      {NULL, NULL}};
  luaL_newmetatable(L, CONN_MT);
  luaL_setfuncs(L, conn_m, 0);
  lua_pushvalue(L, -1);
  lua_setfield(L, -2, "__index");
  luaL_newmetatable(L, CHECKER_MT);
  luaL_setfuncs(L, checker_m, 0);
  lua_pushvalue(L, -1);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 2);
  luaL_newlib(L, fns);
  return 1;
}
