/*
 * test_runtime.c - the handler host wired into the transaction engine:
 * runtime-hosted transactions decided by the group's script, checks answered
 * by the script, failing handlers leaving the decision to checks, the arg
 * reaching executeLocalTransaction, and a reload changing which version
 * decides (each decision records the version that made it).
 *
 * The engine runs on a fake clock (MANUAL_CLOCK) so checks are driven by
 * txmq_tx_tick, never by sleeping; the handlers themselves run on the real
 * worker threads.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cmocka.h>
#include <msgpack.h>

#include "testutil.h"
#include "txmq/error.h"
#include "txmq/runtime.h"

typedef struct {
  uv_loop_t loop;
  char* dir;
  char* data;
  char* scripts;
  txmq_runtime_t* rt;
  uint64_t mono;
  int64_t wall;
  /* last hosted result */
  int done;
  int status;
  uint8_t tx_id[TXMQ_TX_ID_LEN];
  uint8_t msg_id[TXMQ_MSG_ID_LEN];
  txmq_tx_state_t state;
  char version[32];
  char diag[512];
  int closed;
  int states; /* Lua states per group for env_open_gated, 0: default */
} env_t;

static uint64_t f_mono(void* a) { return ((env_t*)a)->mono; }
static int64_t f_wall(void* a) { return ((env_t*)a)->wall; }

static void write_script(env_t* env, const char* group, const char* text) {
  char name[256];
  snprintf(name, sizeof name, "%s.lua", group);
  char* p = tu_path(env->scripts, name);
  assert_int_equal(tu_write_file(p, text, strlen(text)), 0);
  free(p);
}

static void env_open(env_t* env) {
  assert_int_equal(txmq_runtime_new(&env->rt, &env->loop, env->data, env->scripts), 0);
  txmq_store_t* st = txmq_runtime_store(env->rt);
  assert_int_equal(txmq_store_set(st, TXMQ_STORE_OPT_SYNC, TXMQ_SYNC_NEVER), 0);
  assert_int_equal(txmq_store_set(st, TXMQ_STORE_OPT_DEFAULT_QUEUES, 1), 0);
  txmq_tx_t* tx = txmq_runtime_tx(env->rt);
  assert_int_equal(txmq_tx_set(tx, TXMQ_TX_OPT_MANUAL_CLOCK, 1), 0);
  txmq_tx_clock_t clk = {f_mono, f_wall, env};
  txmq_tx_set_clock(tx, &clk);
  txmq_script_host_t* sh = txmq_runtime_scripts(env->rt);
  assert_int_equal(txmq_script_host_set(sh, TXMQ_SCRIPT_OPT_WATCH, 0), 0);
  assert_int_equal(txmq_script_host_set(sh, TXMQ_SCRIPT_OPT_CALL_BUDGET_MS, 500), 0);
  int rc = txmq_runtime_open(env->rt);
  if (rc != 0) fprintf(stderr, "open: %s\n", txmq_runtime_diag(env->rt));
  assert_int_equal(rc, 0);
}

static env_t* env_new(void) {
  env_t* env = calloc(1, sizeof *env);
  assert_non_null(env);
  assert_int_equal(uv_loop_init(&env->loop), 0);
  env->dir = tu_tmpdir("runtime");
  env->data = tu_path(env->dir, "data");
  env->scripts = tu_path(env->dir, "scripts");
  assert_int_equal(mkdir(env->scripts, 0755), 0);
  env->mono = 1000000;
  env->wall = 1700000000000;
  return env;
}

static void on_closed(txmq_runtime_t* rt, void* arg) {
  (void)rt;
  ((env_t*)arg)->closed = 1;
}

static void on_closed_flag(txmq_runtime_t* rt, void* arg) {
  (void)rt;
  *(int*)arg = 1;
}

static void env_free(env_t* env) {
  env->closed = 0;
  assert_int_equal(txmq_runtime_close(env->rt, on_closed, env), 0);
  assert_true(tu_run_until(&env->loop, &env->closed, 10000));
  txmq_runtime_free(env->rt);
  tu_loop_close_clean(&env->loop);
  tu_rmrf(env->dir);
  free(env->data);
  free(env->scripts);
  free(env->dir);
  free(env);
}

static void on_hosted(txmq_runtime_t* rt, int status, const uint8_t* tx_id,
                      const uint8_t* msg_ids, size_t nmsgs,
                      txmq_tx_state_t state, const char* version,
                      const char* diag, void* arg) {
  (void)rt;
  env_t* env = arg;
  env->status = status;
  if (tx_id != NULL) memcpy(env->tx_id, tx_id, TXMQ_TX_ID_LEN);
  if (nmsgs > 0) memcpy(env->msg_id, msg_ids, TXMQ_MSG_ID_LEN);
  env->state = state;
  snprintf(env->version, sizeof env->version, "%s", version);
  snprintf(env->diag, sizeof env->diag, "%s", diag);
  env->done = 1;
}

/* Sends one message in a runtime-hosted transaction and waits for its
 * outcome. arg, if not NULL, is packed as a msgpack string. */
static void hosted(env_t* env, const char* group, const char* body,
                   const char* arg) {
  txmq_msg_t* m = txmq_msg_new();
  assert_non_null(m);
  assert_int_equal(txmq_msg_set_topic(m, "orders"), 0);
  assert_int_equal(txmq_msg_set_body(m, body, strlen(body)), 0);
  msgpack_sbuffer sb;
  msgpack_sbuffer_init(&sb);
  if (arg != NULL) {
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_str_with_body(&pk, arg, strlen(arg));
  }
  env->done = 0;
  int rc = txmq_runtime_tx_send(env->rt, group, "producer-1", &m, 1,
                                arg ? sb.data : NULL, arg ? sb.size : 0, 0,
                                on_hosted, env);
  assert_int_equal(rc, 0);
  assert_true(tu_run_until(&env->loop, &env->done, 10000));
  msgpack_sbuffer_destroy(&sb);
  txmq_msg_free(m);
}

static int64_t queue_end(env_t* env) {
  int64_t b = 0, e = 0;
  int rc = txmq_store_queue_range(txmq_runtime_store(env->rt), "orders", 0, &b, &e);
  return rc == 0 ? e : 0;
}

static const char* body_at(env_t* env, int64_t off, char* buf, size_t cap) {
  txmq_msg_t* m = NULL;
  assert_int_equal(txmq_store_get(txmq_runtime_store(env->rt), "orders", 0, off, &m), 0);
  size_t len = 0;
  const void* b = txmq_msg_body(m, &len);
  snprintf(buf, cap, "%.*s", (int)len, (const char*)b);
  txmq_msg_free(m);
  return buf;
}

typedef struct {
  int n;
  char events[16][16];
  txmq_tx_source_t src[16];
  char version[16][32];
} history_t;

static void on_event(void* arg, const txmq_tx_event_t* ev) {
  history_t* h = arg;
  if (h->n >= 16) return;
  snprintf(h->events[h->n], sizeof h->events[0], "%s", ev->event);
  h->src[h->n] = ev->source;
  snprintf(h->version[h->n], sizeof h->version[0], "%s",
           ev->version ? ev->version : "");
  h->n++;
}

static history_t show(env_t* env, const uint8_t* id, txmq_tx_info_t* info) {
  history_t h;
  memset(&h, 0, sizeof h);
  int rc;
  /* show may say EAGAIN while the newest event is still being written. */
  for (int i = 0; i < 1000; i++) {
    rc = txmq_tx_show(txmq_runtime_tx(env->rt), id, info, on_event, &h);
    if (rc != TXMQ_EAGAIN) break;
    memset(&h, 0, sizeof h);
    uv_run(&env->loop, UV_RUN_NOWAIT);
  }
  assert_int_equal(rc, 0);
  return h;
}

/* Runs the loop until the transaction reaches state want (a check's answer
 * comes back from a worker thread). */
static void wait_state(env_t* env, const uint8_t* id, txmq_tx_state_t want) {
  for (int i = 0; i < 2000; i++) {
    txmq_tx_info_t info;
    if (txmq_tx_show(txmq_runtime_tx(env->rt), id, &info, NULL, NULL) == 0 &&
        info.state == want)
      return;
    uv_run(&env->loop, UV_RUN_ONCE);
  }
  fail_msg("transaction never reached state %s", txmq_tx_state_name(want));
}

static const char* DECIDE_BY_BODY =
    "function executeLocalTransaction(msg, arg)\n"
    "  if msg.body == 'pay' then return txmq.COMMIT end\n"
    "  if msg.body == 'fail' then return 'ROLLBACK_MESSAGE' end\n"
    "  return txmq.UNKNOWN\n"
    "end\n"
    "function checkLocalTransaction(msg)\n"
    "  assert(msg.check_count == 0, 'first check')\n"
    "  return txmq.COMMIT\n"
    "end\n";

static void script_commit_is_visible(void** state) {
  (void)state;
  env_t* env = env_new();
  write_script(env, "orders-svc", DECIDE_BY_BODY);
  env_open(env);
  hosted(env, "orders-svc", "pay", NULL);
  assert_int_equal(env->status, 0);
  assert_int_equal(env->state, TXMQ_TX_COMMITTED);
  const char* ver = txmq_script_version(txmq_runtime_scripts(env->rt), "orders-svc");
  assert_non_null(ver);
  assert_string_equal(env->version, ver);
  assert_int_equal(queue_end(env), 1);
  char buf[64];
  assert_string_equal(body_at(env, 0, buf, sizeof buf), "pay");
  /* The audit trail names the script and its version. */
  txmq_tx_info_t info;
  history_t h = show(env, env->tx_id, &info);
  assert_int_equal(info.state, TXMQ_TX_COMMITTED);
  assert_int_equal(h.n, 2);
  assert_string_equal(h.events[0], "half");
  assert_string_equal(h.events[1], "commit");
  assert_int_equal(h.src[1], TXMQ_TX_SRC_SCRIPT);
  assert_string_equal(h.version[1], ver);
  env_free(env);
}

/* txmq_runtime_tx_send_take: refused, the message stays the caller's;
 * taken, the runtime frees it (valgrind and the sanitizers watch both). */
static void take_hands_messages_over(void** state) {
  (void)state;
  env_t* env = env_new();
  write_script(env, "orders-svc", DECIDE_BY_BODY);
  env_open(env);
  txmq_msg_t* m = txmq_msg_new();
  assert_int_equal(txmq_msg_set_topic(m, "orders"), 0);
  assert_int_equal(txmq_msg_set_body(m, "pay", 3), 0);
  assert_int_equal(txmq_runtime_tx_send_take(env->rt, "nobody", NULL, &m, 1,
                                             NULL, 0, 0, on_hosted, env),
                   TXMQ_ENOTFOUND);
  assert_string_equal(txmq_msg_topic(m), "orders");
  env->done = 0;
  assert_int_equal(txmq_runtime_tx_send_take(env->rt, "orders-svc", "p", &m, 1,
                                             NULL, 0, 0, on_hosted, env),
                   0);
  assert_true(tu_run_until(&env->loop, &env->done, 10000));
  assert_int_equal(env->status, 0);
  assert_int_equal(env->state, TXMQ_TX_COMMITTED);
  char buf[64];
  assert_string_equal(body_at(env, 0, buf, sizeof buf), "pay");
  env_free(env);
}

static void script_rollback_is_never_visible(void** state) {
  (void)state;
  env_t* env = env_new();
  write_script(env, "orders-svc", DECIDE_BY_BODY);
  env_open(env);
  hosted(env, "orders-svc", "fail", NULL);
  assert_int_equal(env->status, 0);
  assert_int_equal(env->state, TXMQ_TX_ROLLED_BACK);
  assert_int_equal(queue_end(env), 0);
  /* Nothing is ever checked for it. */
  env->mono += 3600 * 1000;
  env->wall += 3600 * 1000;
  assert_int_equal(txmq_tx_tick(txmq_runtime_tx(env->rt)), 0);
  assert_int_equal(queue_end(env), 0);
  env_free(env);
}

static void unknown_then_script_check_commits(void** state) {
  (void)state;
  env_t* env = env_new();
  write_script(env, "orders-svc", DECIDE_BY_BODY);
  env_open(env);
  hosted(env, "orders-svc", "later", NULL);
  assert_int_equal(env->status, 0);
  assert_int_equal(env->state, TXMQ_TX_PENDING);
  assert_int_equal(queue_end(env), 0);
  /* Not due before the transaction timeout (6 s by default). */
  env->mono += 5000;
  env->wall += 5000;
  assert_int_equal(txmq_tx_tick(txmq_runtime_tx(env->rt)), 0);
  env->mono += 1001;
  env->wall += 1001;
  assert_int_equal(txmq_tx_tick(txmq_runtime_tx(env->rt)), 1);
  wait_state(env, env->tx_id, TXMQ_TX_COMMITTED);
  assert_int_equal(queue_end(env), 1);
  txmq_tx_info_t info;
  history_t h = show(env, env->tx_id, &info);
  assert_string_equal(h.events[h.n - 1], "commit");
  assert_int_equal(h.src[h.n - 1], TXMQ_TX_SRC_SCRIPT);
  env_free(env);
}

static void failing_handler_leaves_it_to_checks(void** state) {
  (void)state;
  env_t* env = env_new();
  write_script(env, "orders-svc",
               "function executeLocalTransaction(msg, arg)\n"
               "  error('database is down')\n"
               "end\n"
               "function checkLocalTransaction(msg)\n"
               "  return txmq.ROLLBACK\n"
               "end\n");
  env_open(env);
  hosted(env, "orders-svc", "x", NULL);
  assert_int_equal(env->status, 0);
  assert_int_equal(env->state, TXMQ_TX_PENDING);
  assert_non_null(strstr(env->diag, "database is down"));
  assert_non_null(strstr(env->diag, "line 2"));
  env->mono += 6001;
  env->wall += 6001;
  assert_int_equal(txmq_tx_tick(txmq_runtime_tx(env->rt)), 1);
  wait_state(env, env->tx_id, TXMQ_TX_ROLLED_BACK);
  assert_int_equal(queue_end(env), 0);
  env_free(env);
}

static void no_script_stores_nothing(void** state) {
  (void)state;
  env_t* env = env_new();
  env_open(env);
  txmq_msg_t* m = txmq_msg_new();
  assert_int_equal(txmq_msg_set_topic(m, "orders"), 0);
  assert_int_equal(txmq_runtime_tx_send(env->rt, "nobody", NULL, &m, 1, NULL, 0,
                                        0, on_hosted, env),
                   TXMQ_ENOTFOUND);
  assert_int_equal(txmq_runtime_tx_send(env->rt, "../etc", NULL, &m, 1, NULL, 0,
                                        0, on_hosted, env),
                   TXMQ_EBADNAME);
  txmq_msg_free(m);
  assert_int_equal(txmq_store_topic_queues(txmq_runtime_store(env->rt), "orders"),
                   TXMQ_ENOTFOUND);
  env_free(env);
}

static void arg_reaches_execute(void** state) {
  (void)state;
  env_t* env = env_new();
  write_script(env, "orders-svc",
               "function executeLocalTransaction(msg, arg)\n"
               "  if arg == 'paid' then return txmq.COMMIT end\n"
               "  return txmq.ROLLBACK\n"
               "end\n");
  env_open(env);
  hosted(env, "orders-svc", "a", "paid");
  assert_int_equal(env->state, TXMQ_TX_COMMITTED);
  hosted(env, "orders-svc", "b", "unpaid");
  assert_int_equal(env->state, TXMQ_TX_ROLLED_BACK);
  hosted(env, "orders-svc", "c", NULL);
  assert_int_equal(env->state, TXMQ_TX_ROLLED_BACK);
  assert_int_equal(queue_end(env), 1);
  env_free(env);
}

typedef struct {
  int done;
  int status;
  char version[32];
} reload_t;

static void on_reload(txmq_script_host_t* host, int status, const char* group,
                      const char* version, const char* diag, void* arg) {
  (void)host;
  (void)group;
  (void)diag;
  reload_t* r = arg;
  r->status = status;
  snprintf(r->version, sizeof r->version, "%s", version ? version : "");
  r->done = 1;
}

static void reload_changes_the_deciding_version(void** state) {
  (void)state;
  env_t* env = env_new();
  write_script(env, "orders-svc",
               "function executeLocalTransaction(msg, arg) return txmq.COMMIT end\n");
  env_open(env);
  hosted(env, "orders-svc", "v1", NULL);
  assert_int_equal(env->state, TXMQ_TX_COMMITTED);
  char v1[32];
  snprintf(v1, sizeof v1, "%s", env->version);
  uint8_t id1[TXMQ_TX_ID_LEN];
  memcpy(id1, env->tx_id, sizeof id1);

  write_script(env, "orders-svc",
               "function executeLocalTransaction(msg, arg) return txmq.ROLLBACK end\n");
  reload_t r = {0};
  assert_int_equal(txmq_script_reload(txmq_runtime_scripts(env->rt), "orders-svc",
                                      on_reload, &r),
                   0);
  assert_true(tu_run_until(&env->loop, &r.done, 10000));
  assert_int_equal(r.status, 0);
  assert_string_not_equal(r.version, v1);

  hosted(env, "orders-svc", "v2", NULL);
  assert_int_equal(env->state, TXMQ_TX_ROLLED_BACK);
  assert_string_equal(env->version, r.version);
  /* Each decision carries the version that made it. */
  txmq_tx_info_t info;
  history_t h1 = show(env, id1, &info);
  assert_string_equal(h1.version[1], v1);
  history_t h2 = show(env, env->tx_id, &info);
  assert_string_equal(h2.version[1], r.version);
  env_free(env);
}

/* ---- review: checks the handler never ran ---- */

/* txmq.host.block(): tells the test it runs, then waits for its go. */
typedef struct {
  uv_sem_t entered;
  uv_sem_t go;
  uv_sem_t go2;
} gate_t;

static int host_block(lua_State* L) {
  gate_t* g = txmq_script_fn_arg(L);
  uv_sem_post(&g->entered);
  uv_sem_wait(&g->go);
  return 0;
}

static int host_mark(lua_State* L);

static const char* BLOCKING_CHECK =
    "function executeLocalTransaction(msg, arg)\n"
    "  return txmq.UNKNOWN\n"
    "end\n"
    "function checkLocalTransaction(msg)\n"
    "  txmq.host.block()\n"
    "  return txmq.UNKNOWN\n"
    "end\n";

static void env_open_gated(env_t* env, gate_t* g) {
  assert_int_equal(txmq_runtime_new(&env->rt, &env->loop, env->data, env->scripts), 0);
  txmq_store_t* st = txmq_runtime_store(env->rt);
  assert_int_equal(txmq_store_set(st, TXMQ_STORE_OPT_SYNC, TXMQ_SYNC_NEVER), 0);
  assert_int_equal(txmq_store_set(st, TXMQ_STORE_OPT_DEFAULT_QUEUES, 1), 0);
  txmq_tx_t* tx = txmq_runtime_tx(env->rt);
  assert_int_equal(txmq_tx_set(tx, TXMQ_TX_OPT_MANUAL_CLOCK, 1), 0);
  txmq_tx_clock_t clk = {f_mono, f_wall, env};
  txmq_tx_set_clock(tx, &clk);
  txmq_script_host_t* sh = txmq_runtime_scripts(env->rt);
  assert_int_equal(txmq_script_host_set(sh, TXMQ_SCRIPT_OPT_WATCH, 0), 0);
  assert_int_equal(txmq_script_host_set(sh, TXMQ_SCRIPT_OPT_CALL_BUDGET_MS, 10000), 0);
  assert_int_equal(txmq_script_register(sh, "block", host_block, g), 0);
  assert_int_equal(txmq_script_register(sh, "mark", host_mark, g), 0);
  if (env->states > 0)
    assert_int_equal(
        txmq_script_host_set(sh, TXMQ_SCRIPT_OPT_STATES_PER_GROUP, env->states), 0);
  assert_int_equal(txmq_runtime_open(env->rt), 0);
}

/* A check still queued for the handler when the runtime closes ends with
 * TXMQ_ECLOSED without checkLocalTransaction ever running: nobody
 * answered, so it must not count as a check (nor be recorded as the
 * script's UNKNOWN). The one that ran counts. */
static void unrun_check_at_close_not_counted(void** state) {
  (void)state;
  env_t* env = env_new();
  write_script(env, "orders-svc", BLOCKING_CHECK);
  gate_t g;
  assert_int_equal(uv_sem_init(&g.entered, 0), 0);
  assert_int_equal(uv_sem_init(&g.go, 0), 0);
  env_open_gated(env, &g);
  hosted(env, "orders-svc", "first", NULL);
  uint8_t first[TXMQ_TX_ID_LEN], second[TXMQ_TX_ID_LEN];
  memcpy(first, env->tx_id, sizeof first);
  env->mono += 1;
  env->wall += 1;
  hosted(env, "orders-svc", "second", NULL);
  memcpy(second, env->tx_id, sizeof second);
  assert_int_equal(env->state, TXMQ_TX_PENDING);
  env->mono += 6000;
  env->wall += 6000;
  /* Both offered to the script: the first runs (and blocks), the second
   * waits behind it for the group's one Lua state. */
  assert_int_equal(txmq_tx_tick(txmq_runtime_tx(env->rt)), 2);
  uv_sem_wait(&g.entered);
  env->closed = 0;
  assert_int_equal(txmq_runtime_close(env->rt, on_closed, env), 0);
  uv_sem_post(&g.go);
  assert_true(tu_run_until(&env->loop, &env->closed, 10000));
  txmq_runtime_free(env->rt);
  env->rt = NULL;

  env_open_gated(env, &g);
  txmq_tx_info_t info;
  history_t h = show(env, first, &info);
  assert_int_equal(info.check_count, 1);
  assert_string_equal(h.events[h.n - 1], "unknown");
  h = show(env, second, &info);
  assert_int_equal(info.state, TXMQ_TX_PENDING);
  assert_int_equal(info.check_count, 0);
  /* "half" and execute's "unknown", and no answer to a check. */
  assert_int_equal(h.n, 2);
  env_free(env);
  uv_sem_destroy(&g.entered);
  uv_sem_destroy(&g.go);
}

/* txmq.host.mark(): tells the test the check ran. */
static int host_mark(lua_State* L) {
  gate_t* g = txmq_script_fn_arg(L);
  uv_sem_post(&g->go2);
  return 0;
}

static const char* RACING =
    "function executeLocalTransaction(msg, arg)\n"
    "  txmq.host.block()\n"
    "  return txmq.COMMIT\n"
    "end\n"
    "function checkLocalTransaction(msg)\n"
    "  txmq.host.mark()\n"
    "  return txmq.ROLLBACK\n"
    "end\n";

/* The check decides ROLLBACK while executeLocalTransaction (which will say
 * COMMIT) still runs; both answers reach the loop in one batch, so the
 * rollback is accepted but not yet written when execute's COMMIT is
 * refused. The caller must hear the transaction's real state (rolled
 * back), not "pending, checks will decide it". */
static void refused_execute_reports_the_winning_decision(void** state) {
  (void)state;
  env_t* env = env_new();
  write_script(env, "orders-svc", RACING);
  gate_t g;
  assert_int_equal(uv_sem_init(&g.entered, 0), 0);
  assert_int_equal(uv_sem_init(&g.go, 0), 0);
  assert_int_equal(uv_sem_init(&g.go2, 0), 0);
  env->states = 2;
  env_open_gated(env, &g);
  txmq_msg_t* m = txmq_msg_new();
  assert_int_equal(txmq_msg_set_topic(m, "orders"), 0);
  assert_int_equal(txmq_msg_set_body(m, "x", 1), 0);
  env->done = 0;
  assert_int_equal(txmq_runtime_tx_send(env->rt, "orders-svc", "producer-1", &m, 1,
                                        NULL, 0, 0, on_hosted, env),
                   0);
  txmq_msg_free(m);
  /* executeLocalTransaction is running (and held). */
  while (uv_sem_trywait(&g.entered) != 0) {
    uv_run(&env->loop, UV_RUN_NOWAIT);
    uv_sleep(1);
  }
  env->mono += 6000;
  env->wall += 6000;
  assert_int_equal(txmq_tx_tick(txmq_runtime_tx(env->rt)), 1);
  uv_sem_wait(&g.go2); /* the check ran on the group's other state */
  uv_sleep(100);
  uv_sem_post(&g.go);  /* execute returns COMMIT */
  uv_sleep(100);
  assert_true(tu_run_until(&env->loop, &env->done, 10000));
  assert_int_equal(env->status, TXMQ_ECONFLICT);
  assert_int_equal(env->state, TXMQ_TX_ROLLED_BACK);
  wait_state(env, env->tx_id, TXMQ_TX_ROLLED_BACK);
  assert_int_equal(queue_end(env), 0);
  env_free(env);
  uv_sem_destroy(&g.entered);
  uv_sem_destroy(&g.go);
  uv_sem_destroy(&g.go2);
}


/* A second runtime on the same data directory cannot open (the log is
 * locked); close and free still undo what it did, and the first keeps
 * working. */
static void failed_open_closes_cleanly(void** state) {
  (void)state;
  env_t* env = env_new();
  write_script(env, "orders-svc", DECIDE_BY_BODY);
  env_open(env);
  txmq_runtime_t* second = NULL;
  assert_int_equal(txmq_runtime_new(&second, &env->loop, env->data, env->scripts), 0);
  int rc = txmq_runtime_open(second);
  assert_int_equal(rc, TXMQ_ELOCKED);
  assert_non_null(strstr(txmq_runtime_diag(second), "store"));
  int closed = 0;
  assert_int_equal(txmq_runtime_close(second, on_closed_flag, &closed), 0);
  assert_true(tu_run_until(&env->loop, &closed, 10000));
  txmq_runtime_free(second);
  hosted(env, "orders-svc", "pay", NULL);
  assert_int_equal(env->state, TXMQ_TX_COMMITTED);
  env_free(env);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(script_commit_is_visible),
      cmocka_unit_test(take_hands_messages_over),
      cmocka_unit_test(script_rollback_is_never_visible),
      cmocka_unit_test(unknown_then_script_check_commits),
      cmocka_unit_test(failing_handler_leaves_it_to_checks),
      cmocka_unit_test(no_script_stores_nothing),
      cmocka_unit_test(arg_reaches_execute),
      cmocka_unit_test(reload_changes_the_deciding_version),
      cmocka_unit_test(failed_open_closes_cleanly),
      cmocka_unit_test(unrun_check_at_close_not_counted),
      cmocka_unit_test(refused_execute_reports_the_winning_decision),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
