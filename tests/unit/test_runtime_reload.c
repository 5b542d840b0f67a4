/*
 * test_runtime_reload.c - hot reload under concurrent runtime-hosted
 * transactions: while hundreds of transactions are in flight, the group's
 * script is swapped back and forth between a version that commits and one
 * that rolls back. Afterwards every transaction is decided exactly once, no
 * call failed, each decision carries the version that made it and matches
 * what that version answers, and exactly the committed messages are
 * visible.
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

#include "testutil.h"
#include "txmq/error.h"
#include "txmq/runtime.h"

#define TOTAL 600
#define WINDOW 64
#define RELOAD_EVERY 40

static const char* V_COMMIT =
    "-- version that commits\n"
    "function executeLocalTransaction(msg, arg) return txmq.COMMIT end\n";
static const char* V_ROLLBACK =
    "-- version that rolls back\n"
    "function executeLocalTransaction(msg, arg) return txmq.ROLLBACK end\n";

typedef struct {
  uint8_t id[TXMQ_TX_ID_LEN];
  int status;
  txmq_tx_state_t state;
  char version[TXMQ_SCRIPT_VERSION_LEN + 1];
  int done;
} result_t;

typedef struct {
  uv_loop_t loop;
  txmq_runtime_t* rt;
  char* dir;
  char* script;
  result_t res[TOTAL];
  int sent;
  int completed;
  int reloading;
  int reload_ok;
  int reload_busy;
  char v_commit[TXMQ_SCRIPT_VERSION_LEN + 1];
  char v_rollback[TXMQ_SCRIPT_VERSION_LEN + 1];
  int next_is_rollback; /* which text the next swap writes */
  int loading_rollback; /* which text the reload in progress loads */
  int closed;
} env_t;

static void on_done(txmq_runtime_t* rt, int status, const uint8_t* tx_id,
                    const uint8_t* msg_ids, size_t nmsgs,
                    txmq_tx_state_t state, const char* version,
                    const char* diag, void* arg) {
  (void)rt;
  (void)msg_ids;
  (void)nmsgs;
  (void)diag;
  result_t* r = arg;
  r->status = status;
  if (tx_id != NULL) memcpy(r->id, tx_id, TXMQ_TX_ID_LEN);
  r->state = state;
  snprintf(r->version, sizeof r->version, "%s", version);
  r->done = 1;
}

static void on_reload(txmq_script_host_t* h, int status, const char* group,
                      const char* version, const char* diag, void* arg) {
  (void)h;
  (void)group;
  (void)diag;
  env_t* env = arg;
  env->reloading = 0;
  assert_int_equal(status, 0);
  env->reload_ok++;
  /* Remember which hash belongs to which text. */
  if (env->loading_rollback)
    snprintf(env->v_rollback, sizeof env->v_rollback, "%s", version);
  else
    snprintf(env->v_commit, sizeof env->v_commit, "%s", version);
}

static void swap_script(env_t* env) {
  if (env->reloading) return;
  const char* text = env->next_is_rollback ? V_ROLLBACK : V_COMMIT;
  assert_int_equal(tu_write_file(env->script, text, strlen(text)), 0);
  env->loading_rollback = env->next_is_rollback;
  env->next_is_rollback = !env->next_is_rollback;
  env->reloading = 1;
  int rc = txmq_script_reload(txmq_runtime_scripts(env->rt), "orders", on_reload,
                              env);
  if (rc == TXMQ_EBUSY) {
    env->reloading = 0;
    env->reload_busy++;
    return;
  }
  assert_int_equal(rc, 0);
}

static void send_one(env_t* env) {
  txmq_msg_t* m = txmq_msg_new();
  assert_int_equal(txmq_msg_set_topic(m, "orders"), 0);
  char body[32];
  int n = snprintf(body, sizeof body, "tx-%d", env->sent);
  assert_int_equal(txmq_msg_set_body(m, body, (size_t)n), 0);
  assert_int_equal(txmq_runtime_tx_send(env->rt, "orders", "p", &m, 1, NULL, 0, 0,
                                        on_done, &env->res[env->sent]),
                   0);
  txmq_msg_free(m);
  env->sent++;
}

typedef struct {
  int decisions;
  char version[TXMQ_SCRIPT_VERSION_LEN + 1];
  char event[16];
} hist_t;

static void on_event(void* arg, const txmq_tx_event_t* ev) {
  hist_t* h = arg;
  if (strcmp(ev->event, "commit") == 0 || strcmp(ev->event, "rollback") == 0) {
    h->decisions++;
    snprintf(h->event, sizeof h->event, "%s", ev->event);
    snprintf(h->version, sizeof h->version, "%s", ev->version ? ev->version : "");
  }
}

static void on_closed(txmq_runtime_t* rt, void* arg) {
  (void)rt;
  ((env_t*)arg)->closed = 1;
}

static void reload_under_concurrent_transactions(void** state) {
  (void)state;
  env_t* env = calloc(1, sizeof *env);
  assert_non_null(env);
  assert_int_equal(uv_loop_init(&env->loop), 0);
  env->dir = tu_tmpdir("rt-reload");
  char* data = tu_path(env->dir, "data");
  char* scripts = tu_path(env->dir, "scripts");
  assert_int_equal(mkdir(scripts, 0755), 0);
  env->script = tu_path(scripts, "orders.lua");
  assert_int_equal(tu_write_file(env->script, V_COMMIT, strlen(V_COMMIT)), 0);
  env->next_is_rollback = 1;

  assert_int_equal(txmq_runtime_new(&env->rt, &env->loop, data, scripts), 0);
  assert_int_equal(txmq_store_set(txmq_runtime_store(env->rt), TXMQ_STORE_OPT_SYNC,
                                  TXMQ_SYNC_NEVER),
                   0);
  assert_int_equal(txmq_store_set(txmq_runtime_store(env->rt),
                                  TXMQ_STORE_OPT_DEFAULT_QUEUES, 1),
                   0);
  txmq_script_host_t* sh = txmq_runtime_scripts(env->rt);
  assert_int_equal(txmq_script_host_set(sh, TXMQ_SCRIPT_OPT_WATCH, 0), 0);
  assert_int_equal(txmq_script_host_set(sh, TXMQ_SCRIPT_OPT_STATES_PER_GROUP, 2), 0);
  assert_int_equal(txmq_runtime_open(env->rt), 0);

  /* Load the committing version first and learn its hash. */
  env->loading_rollback = 0;
  env->reloading = 1;
  assert_int_equal(txmq_script_reload(sh, "orders", on_reload, env), 0);
  while (env->reloading) uv_run(&env->loop, UV_RUN_ONCE);

  int last_reload_at = 0;
  while (env->completed < TOTAL) {
    while (env->sent < TOTAL && env->sent - env->completed < WINDOW) {
      send_one(env);
      if (env->sent - last_reload_at >= RELOAD_EVERY) {
        /* The previous reload finishes first (transactions stay in flight
         * meanwhile), so that every RELOAD_EVERY sends do reload: on a
         * fast machine the transactions could otherwise all be done
         * before a handful of reloads had come round. */
        while (env->reloading) uv_run(&env->loop, UV_RUN_ONCE);
        swap_script(env);
        last_reload_at = env->sent;
      }
    }
    uv_run(&env->loop, UV_RUN_ONCE);
    int c = 0;
    for (int i = 0; i < env->sent; i++) c += env->res[i].done;
    env->completed = c;
  }
  while (env->reloading) uv_run(&env->loop, UV_RUN_ONCE);
  assert_true(env->reload_ok >= 5);
  assert_true(env->v_rollback[0] != '\0');

  int commits = 0, rollbacks = 0;
  for (int i = 0; i < TOTAL; i++) {
    result_t* r = &env->res[i];
    assert_int_equal(r->status, 0); /* no failed call */
    hist_t h;
    memset(&h, 0, sizeof h);
    txmq_tx_info_t info;
    int rc;
    do {
      rc = txmq_tx_show(txmq_runtime_tx(env->rt), r->id, &info, on_event, &h);
      if (rc == TXMQ_EAGAIN) {
        memset(&h, 0, sizeof h);
        uv_run(&env->loop, UV_RUN_NOWAIT);
      }
    } while (rc == TXMQ_EAGAIN);
    assert_int_equal(rc, 0);
    assert_int_equal(h.decisions, 1); /* decided exactly once */
    assert_string_equal(h.version, r->version);
    if (r->state == TXMQ_TX_COMMITTED) {
      commits++;
      assert_string_equal(h.event, "commit");
      assert_string_equal(r->version, env->v_commit);
    } else {
      assert_int_equal(r->state, TXMQ_TX_ROLLED_BACK);
      rollbacks++;
      assert_string_equal(h.event, "rollback");
      assert_string_equal(r->version, env->v_rollback);
    }
  }
  assert_int_equal(commits + rollbacks, TOTAL);
  assert_true(commits > 0 && rollbacks > 0);
  int64_t b = 0, e = 0;
  assert_int_equal(txmq_store_queue_range(txmq_runtime_store(env->rt), "orders", 0,
                                          &b, &e),
                   0);
  assert_int_equal(e, commits); /* exactly the committed ones are visible */
  txmq_tx_metrics_t mt;
  txmq_tx_metrics(txmq_runtime_tx(env->rt), &mt);
  assert_int_equal(mt.pending, 0);
  print_message("%d transactions, %d commits, %d rollbacks, %d reloads (%d busy)\n",
                TOTAL, commits, rollbacks, env->reload_ok, env->reload_busy);

  assert_int_equal(txmq_runtime_close(env->rt, on_closed, env), 0);
  assert_true(tu_run_until(&env->loop, &env->closed, 10000));
  txmq_runtime_free(env->rt);
  tu_loop_close_clean(&env->loop);
  tu_rmrf(env->dir);
  free(env->dir);
  free(env->script);
  free(data);
  free(scripts);
  free(env);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(reload_under_concurrent_transactions),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
