/*
 * test_tx.c - the transaction engine: decisions and their idempotence, the
 * check scheduler on a fake clock (no test sleeps), parking and resume,
 * recovery from crash images of the data directory, retention, the audit
 * chain, the metrics and the producer-group limit.
 *
 * Each test has its own data directory, store and engine, and closes its
 * loop cleanly. Check targets are in-process: they record what they were
 * offered and answer as the test tells them.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>
#include <msgpack.h>

#include "testutil.h"
#include "txmq/error.h"
#include "txmq/log.h"
#include "txmq/msg.h"
#include "txmq/store.h"
#include "txmq/tx.h"

/* ---- fixture ---- */

enum { T_TAKE = 0, T_EAGAIN = 1, T_UNKNOWN_NOW = 2 };

#define MAX_OFFERS 64

typedef struct {
  uint8_t id[TXMQ_TX_ID_LEN];
  uint64_t seq;
  uint32_t count;
  size_t nmsgs;
  char topic[TXMQ_NAME_MAX + 1];
  char producer[64];
} offer_t;

typedef struct {
  int mode;
  size_t n; /* offers taken or refused */
  offer_t o[MAX_OFFERS];
} target_t;

typedef struct {
  uv_loop_t loop;
  char* dir;
  txmq_store_t* st;
  txmq_tx_t* tx;
  uint64_t mono;
  int64_t wall;
  target_t tg[2];
  txmq_tx_target_t tdef[2];
  /* options for the next open */
  int sync;
  int64_t segment_size;
  int64_t retain_bytes;
  int64_t snap_interval_ms; /* TXMQ_STORE_OPT_SNAPSHOT_INTERVAL_MS, 0 default */
  int64_t max_checks;
  int64_t max_groups;
  int ntargets;
} env_t;

static uint64_t f_mono(void* a) {
  return ((env_t*)a)->mono;
}
static int64_t f_wall(void* a) {
  return ((env_t*)a)->wall;
}

static void advance(env_t* env, int64_t ms) {
  env->mono += (uint64_t)ms;
  env->wall += ms;
}

static int target_check(void* arg, txmq_tx_t* tx, const txmq_tx_check_t* c) {
  (void)tx;
  target_t* t = arg;
  if (t->n < MAX_OFFERS) {
    offer_t* o = &t->o[t->n];
    memcpy(o->id, c->tx_id, TXMQ_TX_ID_LEN);
    o->seq = c->seq;
    o->count = c->check_count;
    o->nmsgs = c->nmsgs;
    snprintf(o->topic, sizeof o->topic, "%s",
             c->nmsgs ? txmq_msg_topic(c->msgs[0]) : "");
    snprintf(o->producer, sizeof o->producer, "%s",
             c->producer ? c->producer : "");
  }
  t->n++;
  if (t->mode == T_EAGAIN) return TXMQ_EAGAIN;
  if (t->mode == T_UNKNOWN_NOW)
    assert_int_equal(txmq_tx_check_answer(tx, c->tx_id, c->seq, TXMQ_TX_UNKNOWN,
                                          TXMQ_TX_SRC_SCRIPT, "v1", NULL),
                     0);
  return 0;
}

static offer_t* last_offer(env_t* env, int t) {
  assert_true(env->tg[t].n > 0);
  return &env->tg[t].o[(env->tg[t].n - 1) % MAX_OFFERS];
}

static void env_open_dir(env_t* env) {
  assert_int_equal(txmq_store_new(&env->st, &env->loop, env->dir), 0);
  assert_int_equal(txmq_store_set(env->st, TXMQ_STORE_OPT_SYNC, env->sync), 0);
  assert_int_equal(txmq_store_set(env->st, TXMQ_STORE_OPT_DEFAULT_QUEUES, 1), 0);
  assert_int_equal(
      txmq_store_set(env->st, TXMQ_STORE_OPT_CHECKPOINT_INTERVAL_MS, 0), 0);
  /* A snapshot with every checkpoint unless a test says otherwise. */
  assert_int_equal(txmq_store_set(env->st, TXMQ_STORE_OPT_SNAPSHOT_INTERVAL_MS,
                                  env->snap_interval_ms), 0);
  if (env->segment_size)
    assert_int_equal(
        txmq_store_set(env->st, TXMQ_STORE_OPT_SEGMENT_SIZE, env->segment_size), 0);
  if (env->retain_bytes)
    assert_int_equal(
        txmq_store_set(env->st, TXMQ_STORE_OPT_RETAIN_BYTES, env->retain_bytes), 0);
  assert_int_equal(txmq_tx_new(&env->tx, &env->loop, env->st), 0);
  assert_int_equal(txmq_tx_set(env->tx, TXMQ_TX_OPT_MANUAL_CLOCK, 1), 0);
  if (env->max_checks)
    assert_int_equal(txmq_tx_set(env->tx, TXMQ_TX_OPT_MAX_CHECKS, env->max_checks), 0);
  if (env->max_groups)
    assert_int_equal(txmq_tx_set(env->tx, TXMQ_TX_OPT_MAX_GROUPS, env->max_groups), 0);
  txmq_tx_clock_t clk = {f_mono, f_wall, env};
  txmq_tx_set_clock(env->tx, &clk);
  for (int k = 0; k < env->ntargets; k++) {
    env->tdef[k].name = k == 0 ? "first" : "second";
    env->tdef[k].check = target_check;
    assert_int_equal(txmq_tx_add_target(env->tx, &env->tdef[k], &env->tg[k]), 0);
  }
  int rc = txmq_store_open(env->st);
  if (rc != 0) fprintf(stderr, "store open: %s: %s\n", txmq_err_name(rc),
                       txmq_store_diag(env->st));
  assert_int_equal(rc, 0);
  assert_int_equal(txmq_tx_start(env->tx), 0);
}

static env_t* env_new(const char* tag) {
  env_t* env = calloc(1, sizeof *env);
  assert_non_null(env);
  assert_int_equal(uv_loop_init(&env->loop), 0);
  env->dir = tu_tmpdir(tag);
  env->mono = 1000;
  env->wall = 1700000000000;
  env->sync = TXMQ_SYNC_ALWAYS;
  env->ntargets = 1;
  return env;
}

static void on_tx_closed(txmq_tx_t* tx, void* arg) {
  (void)tx;
  *(int*)arg = 1;
}
static void on_store_closed(txmq_store_t* st, int status, void* arg) {
  (void)st;
  (void)status;
  *(int*)arg = 1;
}

/* The documented order: engine first (it drains what it accepted), then
 * the store (its final checkpoint still asks the engine for the replay
 * floor), then free both. */
static void env_close_engine(env_t* env) {
  int done = 0;
  assert_int_equal(txmq_tx_close(env->tx, on_tx_closed, &done), 0);
  assert_true(tu_run_until(&env->loop, &done, 10000));
  done = 0;
  assert_int_equal(txmq_store_close(env->st, on_store_closed, &done), 0);
  assert_true(tu_run_until(&env->loop, &done, 10000));
  txmq_tx_free(env->tx);
  txmq_store_free(env->st);
  env->tx = NULL;
  env->st = NULL;
}

static void env_free(env_t* env) {
  if (env->tx) env_close_engine(env);
  tu_loop_close_clean(&env->loop);
  tu_rmrf(env->dir);
  free(env->dir);
  free(env);
}

/* Reopens the same directory (or another one) with fresh targets. */
static void env_reopen(env_t* env, const char* dir) {
  if (env->tx) env_close_engine(env);
  if (dir != NULL && strcmp(dir, env->dir) != 0) {
    tu_rmrf(env->dir);
    free(env->dir);
    env->dir = strdup(dir);
  }
  memset(env->tg, 0, sizeof env->tg);
  env_open_dir(env);
}

/* The path of snapshot slot k (0 or 1) in data directory dir (free it). */
static char* snap_path(const char* dir, int k) {
  char name[32];
  snprintf(name, sizeof name, "snapshot.%d", k);
  return tu_path(dir, name);
}

/* Removes the engine's snapshots beside the checkpoint (store closed): the
 * next open replays from the oldest undecided half record. */
static void env_drop_snapshots(env_t* env) {
  for (int k = 0; k < 2; k++) {
    char* p = snap_path(env->dir, k);
    remove(p);
    free(p);
  }
}

static void on_flushed(txmq_log_t* log, int status, uint64_t pos, void* arg) {
  (void)log;
  (void)pos;
  assert_int_equal(status, 0);
  *(int*)arg = 1;
}

/* Waits until everything appended so far is durable. */
static void env_sync(env_t* env) {
  int done = 0;
  assert_int_equal(txmq_log_flush(txmq_store_log(env->st), on_flushed, &done), 0);
  assert_true(tu_run_until(&env->loop, &done, 10000));
}

/* A copy of the data directory as it is on disk now: with sync ALWAYS and
 * after the callbacks fired, this is what a kill -9 would leave. */
static char* env_crash_image(env_t* env, const char* tag) {
  char* img = tu_tmpdir(tag);
  assert_int_equal(tu_copy_tree(env->dir, img), 0);
  return img;
}

/* ---- helpers for requests ---- */

typedef struct {
  int done, status;
  uint8_t id[TXMQ_TX_ID_LEN];
  int32_t qid[TXMQ_TX_MAX_MSGS];
  const txmq_msg_t* first; /* the callback's first message (valid in it) */
  size_t n;
} begin_res_t;

static void on_begin(txmq_tx_t* tx, int status, const uint8_t* id,
                     const txmq_msg_t* const* msgs, size_t n, void* arg) {
  (void)tx;
  begin_res_t* r = arg;
  r->status = status;
  memcpy(r->id, id, TXMQ_TX_ID_LEN);
  r->n = n;
  r->first = n > 0 ? msgs[0] : NULL;
  for (size_t k = 0; k < n; k++) {
    r->qid[k] = txmq_msg_queue_id(msgs[k]);
    assert_true(txmq_msg_id(msgs[k])[0] != 0 || txmq_msg_id(msgs[k])[5] != 0);
  }
  r->done = 1;
}

static txmq_msg_t* mk_msg(const char* topic, const char* body) {
  txmq_msg_t* m = txmq_msg_new();
  assert_non_null(m);
  assert_int_equal(txmq_msg_set_topic(m, topic), 0);
  assert_int_equal(txmq_msg_set_body(m, body, strlen(body)), 0);
  return m;
}

/* Begins a transaction of n messages (topics[k], body "<topic>-<k>") and
 * waits for the half record to be durable. */
static void begin_n(env_t* env, const char* group, const char* producer,
                    const char* const* topics, size_t n, int64_t immunity,
                    uint8_t id[TXMQ_TX_ID_LEN]) {
  txmq_msg_t* msgs[TXMQ_TX_MAX_MSGS];
  char body[64];
  for (size_t k = 0; k < n; k++) {
    snprintf(body, sizeof body, "%s-%zu", topics[k], k);
    msgs[k] = mk_msg(topics[k], body);
  }
  begin_res_t r = {0};
  assert_int_equal(
      txmq_tx_begin(env->tx, group, producer, msgs, n, immunity, on_begin, &r), 0);
  for (size_t k = 0; k < n; k++) txmq_msg_free(msgs[k]);
  assert_true(tu_run_until(&env->loop, &r.done, 10000));
  assert_int_equal(r.status, 0);
  assert_int_equal(r.n, n);
  memcpy(id, r.id, TXMQ_TX_ID_LEN);
}

static void begin1(env_t* env, const char* topic, int64_t immunity,
                   uint8_t id[TXMQ_TX_ID_LEN]) {
  const char* t[1] = {topic};
  begin_n(env, "g", "p1", t, 1, immunity, id);
}

typedef struct {
  int done, status;
  txmq_tx_state_t state;
} end_res_t;

static void on_end(txmq_tx_t* tx, int status, txmq_tx_state_t state, void* arg) {
  (void)tx;
  end_res_t* r = arg;
  r->status = status;
  r->state = state;
  r->done++;
}

/* Ends and waits; returns the call's code, or the callback's status. */
static int end_wait(env_t* env, const uint8_t* id, txmq_tx_decision_t d,
                    txmq_tx_source_t src, txmq_tx_state_t* state) {
  end_res_t r = {0};
  int rc = txmq_tx_end(env->tx, id, d, src, NULL, "tester", on_end, &r);
  if (rc != 0) return rc;
  assert_true(tu_run_until(&env->loop, &r.done, 10000));
  if (state) *state = r.state;
  return r.status;
}

/* Messages visible on queue 0 of topic (the tests use one queue a topic). */
static int64_t visible(env_t* env, const char* topic) {
  int64_t b = 0, e = 0;
  int rc = txmq_store_queue_range(env->st, topic, 0, &b, &e);
  if (rc == TXMQ_ENOTFOUND) return 0;
  assert_int_equal(rc, 0);
  return e - b;
}

static void assert_body(env_t* env, const char* topic, int64_t off,
                        const char* body) {
  txmq_msg_t* m = NULL;
  assert_int_equal(txmq_store_get(env->st, topic, 0, off, &m), 0);
  size_t len = 0;
  const void* b = txmq_msg_body(m, &len);
  assert_int_equal(len, strlen(body));
  assert_memory_equal(b, body, len);
  assert_int_equal(txmq_msg_queue_offset(m), off);
  txmq_msg_free(m);
}

typedef struct {
  size_t n;
  txmq_tx_info_t last;
  char group[64];
} list_res_t;

static int list_fn(void* arg, const txmq_tx_info_t* info) {
  list_res_t* r = arg;
  r->n++;
  r->last = *info;
  snprintf(r->group, sizeof r->group, "%s", info->group);
  r->last.group = r->last.producer = NULL;
  return 0;
}

static list_res_t list_all(env_t* env, const char* group) {
  list_res_t r;
  memset(&r, 0, sizeof r);
  txmq_tx_list(env->tx, group, list_fn, &r);
  return r;
}

static txmq_tx_metrics_t metrics(env_t* env) {
  txmq_tx_metrics_t m;
  txmq_tx_metrics(env->tx, &m);
  return m;
}

/* ---- tests ---- */

static void unknown_check_commit(void** state) {
  (void)state;
  env_t* env = env_new("tx-ucc");
  env_open_dir(env);
  uint8_t id[TXMQ_TX_ID_LEN];
  begin1(env, "orders", 0, id);
  txmq_tx_state_t st;
  assert_int_equal(end_wait(env, id, TXMQ_TX_UNKNOWN, TXMQ_TX_SRC_PRODUCER, &st), 0);
  assert_int_equal(st, TXMQ_TX_PENDING);
  assert_int_equal(visible(env, "orders"), 0);
  assert_int_equal(txmq_tx_pending_on_topic(env->tx, "orders"), 1);

  advance(env, 5999);
  assert_int_equal(txmq_tx_tick(env->tx), 0);
  advance(env, 1);
  assert_int_equal(txmq_tx_tick(env->tx), 1);
  offer_t* o = last_offer(env, 0);
  assert_memory_equal(o->id, id, TXMQ_TX_ID_LEN);
  assert_int_equal(o->count, 0);
  assert_int_equal(o->nmsgs, 1);
  assert_string_equal(o->topic, "orders");
  assert_string_equal(o->producer, "p1");
  assert_int_equal(visible(env, "orders"), 0);

  assert_int_equal(txmq_tx_check_answer(env->tx, id, o->seq, TXMQ_TX_COMMIT,
                                        TXMQ_TX_SRC_CHECK, NULL, "p1"),
                   0);
  /* Accepted, not yet durable: still invisible. */
  assert_int_equal(visible(env, "orders"), 0);
  /* A repeat waits for the first one's durability: use it as a barrier. */
  assert_int_equal(end_wait(env, id, TXMQ_TX_COMMIT, TXMQ_TX_SRC_PRODUCER, &st), 0);
  assert_int_equal(st, TXMQ_TX_COMMITTED);
  assert_int_equal(visible(env, "orders"), 1);
  assert_body(env, "orders", 0, "orders-0");
  assert_int_equal(txmq_tx_pending_on_topic(env->tx, "orders"), 0);
  assert_int_equal(metrics(env).pending, 0);
  env_free(env);
}

static void unknown_check_rollback(void** state) {
  (void)state;
  env_t* env = env_new("tx-ucr");
  env_open_dir(env);
  uint8_t id[TXMQ_TX_ID_LEN];
  begin1(env, "orders", 0, id);
  advance(env, 6000);
  assert_int_equal(txmq_tx_tick(env->tx), 1);
  offer_t* o = last_offer(env, 0);
  assert_int_equal(txmq_tx_check_answer(env->tx, id, o->seq, TXMQ_TX_ROLLBACK,
                                        TXMQ_TX_SRC_CHECK, NULL, NULL),
                   0);
  txmq_tx_state_t st;
  assert_int_equal(end_wait(env, id, TXMQ_TX_ROLLBACK, TXMQ_TX_SRC_PRODUCER, &st), 0);
  assert_int_equal(st, TXMQ_TX_ROLLED_BACK);
  assert_int_equal(visible(env, "orders"), 0);
  advance(env, 600000);
  assert_int_equal(txmq_tx_tick(env->tx), 0);
  assert_int_equal(env->tg[0].n, 1);
  assert_int_equal(visible(env, "orders"), 0);
  assert_int_equal(list_all(env, NULL).n, 0);
  env_free(env);
}

static void park_after_max_then_resume(void** state) {
  (void)state;
  env_t* env = env_new("tx-park");
  env_open_dir(env);
  uint8_t id[TXMQ_TX_ID_LEN];
  begin1(env, "orders", 0, id);
  advance(env, 6000);
  for (uint32_t k = 0; k < 15; k++) {
    assert_int_equal(txmq_tx_tick(env->tx), 1);
    offer_t* o = last_offer(env, 0);
    assert_int_equal(o->count, k);
    assert_int_equal(txmq_tx_check_answer(env->tx, id, o->seq, TXMQ_TX_UNKNOWN,
                                          TXMQ_TX_SRC_CHECK, NULL, NULL),
                     0);
    advance(env, 30000);
  }
  env_sync(env);
  list_res_t l = list_all(env, "g");
  assert_int_equal(l.n, 1);
  assert_int_equal(l.last.state, TXMQ_TX_PARKED);
  assert_int_equal(l.last.check_count, 15);
  assert_string_equal(l.group, "g");
  assert_int_equal(metrics(env).parked, 1);
  assert_int_equal(metrics(env).parks, 1);
  advance(env, 3600000);
  assert_int_equal(txmq_tx_tick(env->tx), 0);
  assert_int_equal(env->tg[0].n, 15);
  /* Parked: never delivered, decisions refused, until an operator acts. */
  assert_int_equal(txmq_tx_end(env->tx, id, TXMQ_TX_COMMIT, TXMQ_TX_SRC_PRODUCER,
                               NULL, NULL, NULL, NULL),
                   TXMQ_EPARKED);
  assert_int_equal(visible(env, "orders"), 0);

  end_res_t r = {0};
  assert_int_equal(txmq_tx_resume(env->tx, id, "ops", on_end, &r), 0);
  assert_true(tu_run_until(&env->loop, &r.done, 10000));
  assert_int_equal(r.status, 0);
  assert_int_equal(r.state, TXMQ_TX_PENDING);
  assert_int_equal(txmq_tx_resume(env->tx, id, "ops", NULL, NULL), TXMQ_EINVAL);
  /* Due now, with a fresh budget. */
  assert_int_equal(txmq_tx_tick(env->tx), 1);
  offer_t* o = last_offer(env, 0);
  assert_int_equal(o->count, 0);
  assert_int_equal(txmq_tx_check_answer(env->tx, id, o->seq, TXMQ_TX_COMMIT,
                                        TXMQ_TX_SRC_CHECK, NULL, NULL),
                   0);
  assert_int_equal(end_wait(env, id, TXMQ_TX_COMMIT, TXMQ_TX_SRC_PRODUCER, NULL), 0);
  assert_int_equal(visible(env, "orders"), 1);
  assert_int_equal(metrics(env).resumes, 1);
  assert_int_equal(metrics(env).parked, 0);
  env_free(env);
}

static void repeated_commit_visible_once(void** state) {
  (void)state;
  env_t* env = env_new("tx-rep");
  env_open_dir(env);
  uint8_t id[TXMQ_TX_ID_LEN];
  begin1(env, "orders", 0, id);
  end_res_t a = {0}, b = {0}, c = {0};
  assert_int_equal(txmq_tx_end(env->tx, id, TXMQ_TX_COMMIT, TXMQ_TX_SRC_PRODUCER,
                               NULL, NULL, on_end, &a), 0);
  /* While the first is in flight: joins it. */
  assert_int_equal(txmq_tx_end(env->tx, id, TXMQ_TX_COMMIT, TXMQ_TX_SRC_PRODUCER,
                               NULL, NULL, on_end, &b), 0);
  assert_int_equal(b.done, 0);
  assert_true(tu_run_until(&env->loop, &b.done, 10000));
  assert_int_equal(a.done, 1);
  assert_int_equal(a.status, 0);
  assert_int_equal(b.status, 0);
  assert_int_equal(b.state, TXMQ_TX_COMMITTED);
  assert_int_equal(visible(env, "orders"), 1);
  /* After durability: answered from the decided table, never inline. */
  assert_int_equal(txmq_tx_end(env->tx, id, TXMQ_TX_COMMIT, TXMQ_TX_SRC_CHECK,
                               NULL, NULL, on_end, &c), 0);
  assert_int_equal(c.done, 0);
  assert_true(tu_run_until(&env->loop, &c.done, 10000));
  assert_int_equal(c.status, 0);
  assert_int_equal(c.state, TXMQ_TX_COMMITTED);
  assert_int_equal(visible(env, "orders"), 1);
  assert_int_equal(metrics(env).commits, 1);
  env_free(env);
}

static void conflicting_decisions_refused(void** state) {
  (void)state;
  env_t* env = env_new("tx-conf");
  env_open_dir(env);
  uint8_t id[TXMQ_TX_ID_LEN], id2[TXMQ_TX_ID_LEN];
  begin1(env, "orders", 0, id);
  begin1(env, "orders", 0, id2);
  end_res_t a = {0};
  assert_int_equal(txmq_tx_end(env->tx, id, TXMQ_TX_ROLLBACK, TXMQ_TX_SRC_PRODUCER,
                               NULL, NULL, on_end, &a), 0);
  /* Racing: refused at once, before the first is durable. */
  assert_int_equal(txmq_tx_end(env->tx, id, TXMQ_TX_COMMIT, TXMQ_TX_SRC_PRODUCER,
                               NULL, NULL, on_end, &a), TXMQ_ECONFLICT);
  assert_true(tu_run_until(&env->loop, &a.done, 10000));
  assert_int_equal(a.done, 1);
  assert_int_equal(txmq_tx_end(env->tx, id, TXMQ_TX_COMMIT, TXMQ_TX_SRC_PRODUCER,
                               NULL, NULL, NULL, NULL), TXMQ_ECONFLICT);
  txmq_tx_state_t st;
  /* UNKNOWN on a decided transaction reports its state. */
  assert_int_equal(end_wait(env, id, TXMQ_TX_UNKNOWN, TXMQ_TX_SRC_PRODUCER, &st), 0);
  assert_int_equal(st, TXMQ_TX_ROLLED_BACK);
  assert_int_equal(end_wait(env, id2, TXMQ_TX_COMMIT, TXMQ_TX_SRC_PRODUCER, &st), 0);
  assert_int_equal(txmq_tx_end(env->tx, id2, TXMQ_TX_ROLLBACK, TXMQ_TX_SRC_PRODUCER,
                               NULL, NULL, NULL, NULL), TXMQ_ECONFLICT);
  assert_int_equal(visible(env, "orders"), 1);
  uint8_t unknown[TXMQ_TX_ID_LEN] = {1, 2, 3};
  assert_int_equal(txmq_tx_end(env->tx, unknown, TXMQ_TX_COMMIT, TXMQ_TX_SRC_PRODUCER,
                               NULL, NULL, NULL, NULL), TXMQ_ENOTFOUND);
  env_free(env);
}

static void late_commit_after_park(void** state) {
  (void)state;
  env_t* env = env_new("tx-late");
  env->max_checks = 2;
  env_open_dir(env);
  uint8_t id[TXMQ_TX_ID_LEN];
  begin1(env, "orders", 0, id);
  advance(env, 6000);
  assert_int_equal(txmq_tx_tick(env->tx), 1);
  /* Nobody answers: both checks time out and count. */
  advance(env, 5000);
  assert_int_equal(txmq_tx_tick(env->tx), 0);
  assert_int_equal(metrics(env).checks_timed_out, 1);
  advance(env, 30000);
  assert_int_equal(txmq_tx_tick(env->tx), 1);
  advance(env, 5000);
  txmq_tx_tick(env->tx);
  assert_int_equal(metrics(env).parked, 1);
  assert_int_equal(txmq_tx_end(env->tx, id, TXMQ_TX_COMMIT, TXMQ_TX_SRC_PRODUCER,
                               NULL, NULL, NULL, NULL), TXMQ_EPARKED);
  assert_int_equal(txmq_tx_end(env->tx, id, TXMQ_TX_UNKNOWN, TXMQ_TX_SRC_PRODUCER,
                               NULL, NULL, NULL, NULL), TXMQ_EPARKED);
  assert_int_equal(visible(env, "orders"), 0);
  env_free(env);
}

static void no_check_after_decision(void** state) {
  (void)state;
  env_t* env = env_new("tx-nocheck");
  env_open_dir(env);
  uint8_t a[TXMQ_TX_ID_LEN], b[TXMQ_TX_ID_LEN];
  begin1(env, "orders", 0, a);
  begin1(env, "orders", 0, b);
  /* Both due; a is decided before the tick runs, b while its check is out. */
  advance(env, 7000);
  end_res_t r = {0};
  assert_int_equal(txmq_tx_end(env->tx, a, TXMQ_TX_COMMIT, TXMQ_TX_SRC_PRODUCER,
                               NULL, NULL, on_end, &r), 0);
  assert_int_equal(txmq_tx_tick(env->tx), 1);
  offer_t* o = last_offer(env, 0);
  assert_memory_equal(o->id, b, TXMQ_TX_ID_LEN);
  uint64_t seq = o->seq;
  assert_true(tu_run_until(&env->loop, &r.done, 10000));
  assert_int_equal(end_wait(env, b, TXMQ_TX_ROLLBACK, TXMQ_TX_SRC_PRODUCER, NULL), 0);
  /* The late answer to b's check is stale. */
  assert_int_equal(txmq_tx_check_answer(env->tx, b, seq, TXMQ_TX_COMMIT,
                                        TXMQ_TX_SRC_CHECK, NULL, NULL),
                   TXMQ_ENOTFOUND);
  advance(env, 3600000);
  assert_int_equal(txmq_tx_tick(env->tx), 0);
  assert_int_equal(env->tg[0].n, 1);
  assert_int_equal(metrics(env).checks_timed_out, 0);
  assert_int_equal(visible(env, "orders"), 1);
  env_free(env);
}

static void immunity_does_not_spend_budget(void** state) {
  (void)state;
  env_t* env = env_new("tx-imm");
  env_open_dir(env);
  uint8_t id[TXMQ_TX_ID_LEN];
  begin1(env, "orders", 20000, id);
  advance(env, 6000);
  assert_int_equal(txmq_tx_tick(env->tx), 0);
  list_res_t l = list_all(env, NULL);
  assert_int_equal(l.n, 1);
  assert_int_equal(l.last.check_count, 0);
  assert_int_equal(l.last.due_in_ms, 14000);
  advance(env, 13999);
  assert_int_equal(txmq_tx_tick(env->tx), 0);
  advance(env, 1);
  assert_int_equal(txmq_tx_tick(env->tx), 1);
  assert_int_equal(last_offer(env, 0)->count, 0);
  assert_int_equal(metrics(env).checks_timed_out, 0);
  env_free(env);
}

static void undeliverable_not_counted(void** state) {
  (void)state;
  env_t* env = env_new("tx-undeliv");
  env_open_dir(env);
  env->tg[0].mode = T_EAGAIN;
  uint8_t id[TXMQ_TX_ID_LEN];
  begin1(env, "orders", 0, id);
  advance(env, 6000);
  assert_int_equal(txmq_tx_tick(env->tx), 0);
  assert_int_equal(env->tg[0].n, 1);
  assert_int_equal(metrics(env).checks_undeliverable, 1);
  assert_int_equal(list_all(env, NULL).last.check_count, 0);
  /* Retried after the retry delay, not before. */
  advance(env, 999);
  assert_int_equal(txmq_tx_tick(env->tx), 0);
  assert_int_equal(env->tg[0].n, 1);
  advance(env, 1);
  assert_int_equal(txmq_tx_tick(env->tx), 0);
  assert_int_equal(env->tg[0].n, 2);
  env->tg[0].mode = T_TAKE;
  advance(env, 1000);
  assert_int_equal(txmq_tx_tick(env->tx), 1);
  assert_int_equal(last_offer(env, 0)->count, 0);
  assert_int_equal(metrics(env).checks_undeliverable, 2);
  assert_int_equal(metrics(env).checks_sent, 1);
  env_free(env);
}

static void failed_check_reoffered_uncounted(void** state) {
  (void)state;
  env_t* env = env_new("tx-failed");
  env->ntargets = 2;
  env_open_dir(env);
  uint8_t id[TXMQ_TX_ID_LEN];
  begin1(env, "orders", 0, id);
  advance(env, 6000);
  assert_int_equal(txmq_tx_tick(env->tx), 1);
  assert_int_equal(env->tg[0].n, 1);
  assert_int_equal(env->tg[1].n, 0);
  uint64_t seq = last_offer(env, 0)->seq;
  assert_int_equal(txmq_tx_check_failed(env->tx, id, seq), 0);
  assert_int_equal(txmq_tx_check_failed(env->tx, id, seq), TXMQ_ENOTFOUND);
  /* At once, without the clock moving; the next target first. */
  assert_int_equal(txmq_tx_tick(env->tx), 1);
  assert_int_equal(env->tg[1].n, 1);
  offer_t* o = last_offer(env, 1);
  assert_int_equal(o->count, 0);
  assert_true(o->seq != seq);
  assert_int_equal(txmq_tx_check_answer(env->tx, id, seq, TXMQ_TX_UNKNOWN,
                                        TXMQ_TX_SRC_CHECK, NULL, NULL),
                   TXMQ_ENOTFOUND);
  assert_int_equal(txmq_tx_check_answer(env->tx, id, o->seq, TXMQ_TX_UNKNOWN,
                                        TXMQ_TX_SRC_CHECK, NULL, NULL),
                   0);
  assert_int_equal(list_all(env, NULL).last.check_count, 1);
  /* The next regular check goes to the first target again. */
  advance(env, 30000);
  assert_int_equal(txmq_tx_tick(env->tx), 1);
  assert_int_equal(env->tg[0].n, 2);
  assert_int_equal(last_offer(env, 0)->count, 1);
  env_free(env);
}

static void check_timeout_counts(void** state) {
  (void)state;
  env_t* env = env_new("tx-timeout");
  env_open_dir(env);
  uint8_t id[TXMQ_TX_ID_LEN];
  begin1(env, "orders", 0, id);
  advance(env, 6000);
  assert_int_equal(txmq_tx_tick(env->tx), 1);
  uint64_t seq = last_offer(env, 0)->seq;
  advance(env, 4999);
  assert_int_equal(txmq_tx_tick(env->tx), 0);
  assert_int_equal(metrics(env).checks_timed_out, 0);
  advance(env, 1);
  assert_int_equal(txmq_tx_tick(env->tx), 0);
  assert_int_equal(metrics(env).checks_timed_out, 1);
  assert_int_equal(list_all(env, NULL).last.check_count, 1);
  assert_int_equal(txmq_tx_check_answer(env->tx, id, seq, TXMQ_TX_COMMIT,
                                        TXMQ_TX_SRC_CHECK, NULL, NULL),
                   TXMQ_ENOTFOUND);
  advance(env, 30000);
  assert_int_equal(txmq_tx_tick(env->tx), 1);
  assert_int_equal(last_offer(env, 0)->count, 1);
  env_free(env);
}

static void backoff_grows_interval(void** state) {
  (void)state;
  env_t* env = env_new("tx-backoff");
  env_open_dir(env);
  env->tg[0].mode = T_UNKNOWN_NOW;
  assert_int_equal(txmq_tx_set(env->tx, TXMQ_TX_OPT_CHECK_BACKOFF_PCT, 200), 0);
  assert_int_equal(txmq_tx_set(env->tx, TXMQ_TX_OPT_CHECK_INTERVAL_MS, 1000), 0);
  assert_int_equal(txmq_tx_set(env->tx, TXMQ_TX_OPT_CHECK_INTERVAL_MAX_MS, 5000), 0);
  uint8_t id[TXMQ_TX_ID_LEN];
  begin1(env, "orders", 0, id);
  advance(env, 6000);
  assert_int_equal(txmq_tx_tick(env->tx), 1); /* count 1: next in 1000 */
  const int64_t gaps[] = {1000, 2000, 4000, 5000, 5000};
  for (size_t k = 0; k < 5; k++) {
    advance(env, gaps[k] - 1);
    assert_int_equal(txmq_tx_tick(env->tx), 0);
    advance(env, 1);
    assert_int_equal(txmq_tx_tick(env->tx), 1);
  }
  assert_int_equal(list_all(env, NULL).last.check_count, 6);
  env_free(env);
}

static void kick_group_reoffers(void** state) {
  (void)state;
  env_t* env = env_new("tx-kick");
  env_open_dir(env);
  env->tg[0].mode = T_EAGAIN;
  uint8_t a[TXMQ_TX_ID_LEN], b[TXMQ_TX_ID_LEN];
  begin1(env, "orders", 0, a);
  const char* t[1] = {"orders"};
  begin_n(env, "other", NULL, t, 1, 0, b);
  advance(env, 6000);
  assert_int_equal(txmq_tx_tick(env->tx), 0);
  assert_int_equal(env->tg[0].n, 2);
  env->tg[0].mode = T_TAKE;
  txmq_tx_kick_group(env->tx, "nobody");
  assert_int_equal(txmq_tx_tick(env->tx), 0);
  txmq_tx_kick_group(env->tx, "g");
  assert_int_equal(txmq_tx_tick(env->tx), 1);
  assert_memory_equal(last_offer(env, 0)->id, a, TXMQ_TX_ID_LEN);
  /* The other group waits for its retry time. */
  advance(env, 1000);
  assert_int_equal(txmq_tx_tick(env->tx), 1);
  assert_memory_equal(last_offer(env, 0)->id, b, TXMQ_TX_ID_LEN);
  env_free(env);
}

typedef struct {
  env_t* env;
  int64_t a, b;
  int done;
} multi_seen_t;

static void on_multi_commit(txmq_tx_t* tx, int status, txmq_tx_state_t st,
                            void* arg) {
  (void)tx;
  multi_seen_t* s = arg;
  assert_int_equal(status, 0);
  assert_int_equal(st, TXMQ_TX_COMMITTED);
  s->a = visible(s->env, "topic-a");
  s->b = visible(s->env, "topic-b");
  s->done = 1;
}

static void multi_message_all_at_once(void** state) {
  (void)state;
  env_t* env = env_new("tx-multi");
  env_open_dir(env);
  const char* topics[3] = {"topic-a", "topic-b", "topic-b"};
  uint8_t id[TXMQ_TX_ID_LEN];
  begin_n(env, "g", "p1", topics, 3, 0, id);
  assert_int_equal(txmq_tx_pending_on_topic(env->tx, "topic-a"), 1);
  assert_int_equal(txmq_tx_pending_on_topic(env->tx, "topic-b"), 1);
  assert_int_equal(txmq_tx_pending_on_topic(env->tx, "topic-c"), 0);
  advance(env, 6000);
  assert_int_equal(txmq_tx_tick(env->tx), 1);
  assert_int_equal(last_offer(env, 0)->nmsgs, 3);
  multi_seen_t s = {env, -1, -1, 0};
  assert_int_equal(txmq_tx_end(env->tx, id, TXMQ_TX_COMMIT, TXMQ_TX_SRC_PRODUCER,
                               NULL, NULL, on_multi_commit, &s), 0);
  assert_int_equal(visible(env, "topic-a"), 0);
  assert_int_equal(visible(env, "topic-b"), 0);
  assert_true(tu_run_until(&env->loop, &s.done, 10000));
  assert_int_equal(s.a, 1);
  assert_int_equal(s.b, 2);
  assert_body(env, "topic-a", 0, "topic-a-0");
  assert_body(env, "topic-b", 0, "topic-b-1");
  assert_body(env, "topic-b", 1, "topic-b-2");
  assert_int_equal(txmq_tx_pending_on_topic(env->tx, "topic-a"), 0);
  assert_int_equal(txmq_tx_pending_on_topic(env->tx, "topic-b"), 0);
  env_free(env);
}

static void crash_between_half_and_decision(void** state) {
  (void)state;
  env_t* env = env_new("tx-crash1");
  env_open_dir(env);
  uint8_t a[TXMQ_TX_ID_LEN], b[TXMQ_TX_ID_LEN];
  begin1(env, "orders", 0, a);
  begin1(env, "orders", 0, b);
  advance(env, 6000);
  assert_int_equal(txmq_tx_tick(env->tx), 2);
  assert_int_equal(txmq_tx_check_answer(env->tx, a, env->tg[0].o[0].seq,
                                        TXMQ_TX_UNKNOWN, TXMQ_TX_SRC_CHECK, NULL,
                                        NULL),
                   0);
  env_sync(env);
  /* kill -9 image: both pending, a with one counted check. */
  char* img = env_crash_image(env, "tx-crash1-img");
  env_close_engine(env);
  advance(env, 1000);
  env_reopen(env, img);
  free(img);
  assert_int_equal(metrics(env).pending, 2);
  list_res_t l = list_all(env, NULL);
  assert_int_equal(l.n, 2);
  /* b's last check was out when we crashed: it is due again at once (its
   * first check was due 1 s ago); a is due 30 s after its UNKNOWN. */
  assert_int_equal(txmq_tx_tick(env->tx), 1);
  assert_memory_equal(last_offer(env, 0)->id, b, TXMQ_TX_ID_LEN);
  assert_int_equal(last_offer(env, 0)->count, 0);
  advance(env, 29000);
  assert_int_equal(txmq_tx_tick(env->tx), 1);
  assert_memory_equal(last_offer(env, 0)->id, a, TXMQ_TX_ID_LEN);
  assert_int_equal(last_offer(env, 0)->count, 1);
  assert_int_equal(txmq_tx_check_answer(env->tx, a, last_offer(env, 0)->seq,
                                        TXMQ_TX_COMMIT, TXMQ_TX_SRC_CHECK, NULL,
                                        NULL),
                   0);
  assert_int_equal(end_wait(env, a, TXMQ_TX_COMMIT, TXMQ_TX_SRC_PRODUCER, NULL), 0);
  assert_int_equal(visible(env, "orders"), 1);
  /* And a clean close without a decision keeps b pending too. */
  env_reopen(env, NULL);
  assert_int_equal(metrics(env).pending, 1);
  assert_int_equal(visible(env, "orders"), 1);
  env_free(env);
}

/* An UNKNOWN through txmq_tx_end (here the runtime's script answering
 * execute) is recorded but is not a check: after a restart the first check
 * is still due at half + timeout, not an interval after the UNKNOWN. */
static void execute_unknown_keeps_schedule_after_restart(void** state) {
  (void)state;
  env_t* env = env_new("tx-execunk");
  env_open_dir(env);
  uint8_t id[TXMQ_TX_ID_LEN];
  begin1(env, "orders", 0, id);
  advance(env, 1000);
  end_res_t r = {0};
  assert_int_equal(txmq_tx_end(env->tx, id, TXMQ_TX_UNKNOWN, TXMQ_TX_SRC_SCRIPT, "v1",
                               NULL, on_end, &r), 0);
  assert_true(tu_run_until(&env->loop, &r.done, 10000));
  env_reopen(env, NULL);
  assert_int_equal(list_all(env, NULL).last.check_count, 0);
  advance(env, 4999);
  assert_int_equal(txmq_tx_tick(env->tx), 0);
  advance(env, 1);
  assert_int_equal(txmq_tx_tick(env->tx), 1);
  assert_int_equal(last_offer(env, 0)->count, 0);
  env_free(env);
}

static void on_commit_copy(txmq_tx_t* tx, int status, txmq_tx_state_t st,
                           void* arg) {
  (void)tx;
  (void)st;
  assert_int_equal(status, 0);
  void** p = arg;
  env_t* env = p[0];
  /* Right after the commit is durable, before any checkpoint. */
  p[1] = env_crash_image(env, "tx-crash2-img");
}

static void crash_during_multi_commit(void** state) {
  (void)state;
  env_t* env = env_new("tx-crash2");
  env_open_dir(env);
  const char* topics[3] = {"topic-a", "topic-b", "topic-b"};
  uint8_t id[TXMQ_TX_ID_LEN];
  begin_n(env, "g", "p1", topics, 3, 0, id);
  uint64_t commit_pos = txmq_log_next_pos(txmq_store_log(env->st));
  void* p[2] = {env, NULL};
  assert_int_equal(txmq_tx_end(env->tx, id, TXMQ_TX_COMMIT, TXMQ_TX_SRC_PRODUCER,
                               NULL, NULL, on_commit_copy, p), 0);
  while (p[1] == NULL) uv_run(&env->loop, UV_RUN_ONCE);
  char* img = p[1];
  char* img2 = tu_tmpdir("tx-crash2-cut");
  assert_int_equal(tu_copy_tree(img, img2), 0);

  /* Image with the commit record: every message is published at reopen. */
  env_reopen(env, img);
  assert_int_equal(visible(env, "topic-a"), 1);
  assert_int_equal(visible(env, "topic-b"), 2);
  assert_body(env, "topic-b", 1, "topic-b-2");
  assert_int_equal(metrics(env).pending, 0);
  txmq_tx_state_t st;
  assert_int_equal(end_wait(env, id, TXMQ_TX_COMMIT, TXMQ_TX_SRC_PRODUCER, &st), 0);
  assert_int_equal(st, TXMQ_TX_COMMITTED);
  advance(env, 600000);
  assert_int_equal(txmq_tx_tick(env->tx), 0);
  /* Once more: the publish is checkpointed now and not repeated. */
  env_reopen(env, NULL);
  assert_int_equal(visible(env, "topic-a"), 1);
  assert_int_equal(visible(env, "topic-b"), 2);

  /* Image with the commit record torn: nothing published, tx pending. */
  char* seg = tu_path(img2, "log/00000000000000000000.log");
  assert_int_equal(
      tu_truncate(seg, (long long)(TXMQ_LOG_SEGMENT_HEADER_SIZE + commit_pos + 7)), 0);
  free(seg);
  env_reopen(env, img2);
  free(img2);
  assert_int_equal(visible(env, "topic-a"), 0);
  assert_int_equal(visible(env, "topic-b"), 0);
  assert_int_equal(metrics(env).pending, 1);
  advance(env, 600000);
  assert_int_equal(txmq_tx_tick(env->tx), 1);
  assert_int_equal(last_offer(env, 0)->nmsgs, 3);
  assert_int_equal(txmq_tx_check_answer(env->tx, id, last_offer(env, 0)->seq,
                                        TXMQ_TX_COMMIT, TXMQ_TX_SRC_CHECK, NULL,
                                        NULL),
                   0);
  assert_int_equal(end_wait(env, id, TXMQ_TX_COMMIT, TXMQ_TX_SRC_PRODUCER, NULL), 0);
  assert_int_equal(visible(env, "topic-a"), 1);
  assert_int_equal(visible(env, "topic-b"), 2);
  free(img);
  env_free(env);
}

static void decided_not_checked_after_restart(void** state) {
  (void)state;
  env_t* env = env_new("tx-restart");
  env_open_dir(env);
  uint8_t p[TXMQ_TX_ID_LEN], c[TXMQ_TX_ID_LEN], r[TXMQ_TX_ID_LEN];
  begin1(env, "orders", 0, p);
  begin1(env, "orders", 0, c);
  begin1(env, "orders", 0, r);
  assert_int_equal(end_wait(env, c, TXMQ_TX_COMMIT, TXMQ_TX_SRC_PRODUCER, NULL), 0);
  assert_int_equal(end_wait(env, r, TXMQ_TX_ROLLBACK, TXMQ_TX_SRC_PRODUCER, NULL), 0);
  env_reopen(env, NULL);
  advance(env, 3600000);
  assert_int_equal(txmq_tx_tick(env->tx), 1);
  assert_memory_equal(last_offer(env, 0)->id, p, TXMQ_TX_ID_LEN);
  /* Decided ones stay decided: repeats succeed, conflicts are refused,
   * nothing becomes visible twice. */
  txmq_tx_state_t st;
  assert_int_equal(end_wait(env, c, TXMQ_TX_COMMIT, TXMQ_TX_SRC_PRODUCER, &st), 0);
  assert_int_equal(st, TXMQ_TX_COMMITTED);
  assert_int_equal(txmq_tx_end(env->tx, r, TXMQ_TX_COMMIT, TXMQ_TX_SRC_PRODUCER,
                               NULL, NULL, NULL, NULL), TXMQ_ECONFLICT);
  assert_int_equal(visible(env, "orders"), 1);
  assert_int_equal(metrics(env).pending, 1);
  env_free(env);
}

static void on_put(txmq_store_t* st, int status, const txmq_msg_t* m, void* arg) {
  (void)st;
  (void)m;
  assert_int_equal(status, 0);
  (*(int*)arg)++;
}

static void on_ckpt(txmq_store_t* st, int status, void* arg) {
  (void)st;
  assert_int_equal(status, 0);
  *(int*)arg = 1;
}

/* Takes a checkpoint and waits; the store applies retention after it. */
static void env_checkpoint(env_t* env) {
  int done = 0;
  assert_int_equal(txmq_store_checkpoint(env->st, on_ckpt, &done), 0);
  assert_true(tu_run_until(&env->loop, &done, 10000));
}

static void retention_keeps_undecided_half(void** state) {
  (void)state;
  env_t* env = env_new("tx-retain");
  env->segment_size = 4096;
  env->retain_bytes = 4096;
  env_open_dir(env);
  uint8_t id[TXMQ_TX_ID_LEN];
  begin1(env, "orders", 0, id);
  txmq_tx_info_t info;
  assert_int_equal(txmq_tx_show(env->tx, id, &info, NULL, NULL), 0);
  uint64_t half_pos = info.half_pos;
  /* Fill several segments with plain messages. */
  char body[1000];
  memset(body, 'x', sizeof body - 1);
  body[sizeof body - 1] = '\0';
  int put = 0;
  for (int k = 0; k < 20; k++) {
    txmq_msg_t* m = mk_msg("plain", body);
    assert_int_equal(txmq_store_put(env->st, m, on_put, &put), 0);
    txmq_msg_free(m);
  }
  while (put < 20) uv_run(&env->loop, UV_RUN_ONCE);
  txmq_log_t* log = txmq_store_log(env->st);
  size_t nseg = txmq_log_segment_count(log);
  assert_true(nseg >= 4);
  /* A checkpoint applies retention: every segment but the undecided
   * transaction's could go, and that one stops it. */
  env_checkpoint(env);
  assert_true(txmq_log_begin(log) <= half_pos);
  assert_int_equal(txmq_log_segment_count(log), nseg);
  /* Decided: its segment may go. */
  assert_int_equal(end_wait(env, id, TXMQ_TX_ROLLBACK, TXMQ_TX_SRC_PRODUCER, NULL), 0);
  env_checkpoint(env);
  assert_true(txmq_log_begin(log) > half_pos);
  assert_true(txmq_log_segment_count(log) < nseg);
  env_free(env);
}

typedef struct {
  size_t n;
  char ev[16][16];
  txmq_tx_source_t src[16];
  char ver[16][16];
  char who[16][16];
  uint32_t count[16];
  uint64_t pos[16];
} hist_t;

static void hist_fn(void* arg, const txmq_tx_event_t* ev) {
  hist_t* h = arg;
  assert_true(h->n < 16);
  snprintf(h->ev[h->n], 16, "%s", ev->event);
  h->src[h->n] = ev->source;
  snprintf(h->ver[h->n], 16, "%s", ev->version ? ev->version : "-");
  snprintf(h->who[h->n], 16, "%s", ev->who ? ev->who : "-");
  h->count[h->n] = ev->check_count;
  h->pos[h->n] = ev->pos;
  h->n++;
}

static void check_history(const hist_t* h) {
  assert_int_equal(h->n, 5);
  assert_string_equal(h->ev[0], "half");
  assert_string_equal(h->ev[1], "unknown");
  assert_int_equal(h->src[1], TXMQ_TX_SRC_PRODUCER);
  assert_string_equal(h->who[1], "tester");
  assert_string_equal(h->ev[2], "unknown");
  assert_int_equal(h->src[2], TXMQ_TX_SRC_SCRIPT);
  assert_string_equal(h->ver[2], "v1");
  assert_int_equal(h->count[2], 1);
  assert_string_equal(h->ev[3], "check");
  assert_int_equal(h->src[3], TXMQ_TX_SRC_TIMEOUT);
  assert_string_equal(h->who[3], "first");
  assert_int_equal(h->count[3], 2);
  assert_string_equal(h->ev[4], "commit");
  assert_int_equal(h->src[4], TXMQ_TX_SRC_SCRIPT);
  assert_string_equal(h->ver[4], "v7");
  assert_string_equal(h->who[4], "runtime");
  assert_int_equal(h->count[4], 2);
  for (size_t k = 1; k < h->n; k++) assert_true(h->pos[k] > h->pos[k - 1]);
}

/* An operator decides a parked transaction (or a pending one): recorded
 * with source "operator" and who, applied once, kept across a restart; a
 * producer's decision and an operator's UNKNOWN still get EPARKED. */
static void operator_decides_parked(void** state) {
  (void)state;
  env_t* env = env_new("tx-opdecide");
  env->max_checks = 2;
  env_open_dir(env);
  uint8_t a[TXMQ_TX_ID_LEN], b[TXMQ_TX_ID_LEN], c[TXMQ_TX_ID_LEN];
  begin1(env, "orders", 0, a);
  begin1(env, "orders", 0, b);
  begin1(env, "orders", 0, c);
  env->tg[0].mode = T_UNKNOWN_NOW;
  for (int k = 0; k < 4; k++) {
    advance(env, 60000);
    (void)txmq_tx_tick(env->tx);
  }
  env->tg[0].mode = T_TAKE;
  env_sync(env);
  assert_int_equal(metrics(env).parked, 3);

  assert_int_equal(txmq_tx_end(env->tx, a, TXMQ_TX_COMMIT, TXMQ_TX_SRC_PRODUCER,
                               NULL, NULL, NULL, NULL),
                   TXMQ_EPARKED);
  assert_int_equal(txmq_tx_end(env->tx, a, TXMQ_TX_COMMIT, TXMQ_TX_SRC_CHECK,
                               NULL, NULL, NULL, NULL),
                   TXMQ_EPARKED);
  assert_int_equal(txmq_tx_end(env->tx, a, TXMQ_TX_UNKNOWN, TXMQ_TX_SRC_OPERATOR,
                               NULL, "ops", NULL, NULL),
                   TXMQ_EPARKED);
  assert_int_equal(visible(env, "orders"), 0);

  txmq_tx_state_t st;
  end_res_t r = {0};
  assert_int_equal(txmq_tx_end(env->tx, a, TXMQ_TX_COMMIT, TXMQ_TX_SRC_OPERATOR,
                               NULL, "ops", on_end, &r), 0);
  assert_true(tu_run_until(&env->loop, &r.done, 10000));
  assert_int_equal(r.status, 0);
  assert_int_equal(r.state, TXMQ_TX_COMMITTED);
  assert_int_equal(visible(env, "orders"), 1);
  assert_int_equal(end_wait(env, b, TXMQ_TX_ROLLBACK, TXMQ_TX_SRC_OPERATOR, &st), 0);
  assert_int_equal(st, TXMQ_TX_ROLLED_BACK);
  assert_int_equal(metrics(env).parked, 1);
  /* The first decision wins, an operator's too. */
  assert_int_equal(txmq_tx_end(env->tx, a, TXMQ_TX_ROLLBACK, TXMQ_TX_SRC_OPERATOR,
                               NULL, "ops", NULL, NULL),
                   TXMQ_ECONFLICT);
  assert_int_equal(end_wait(env, a, TXMQ_TX_COMMIT, TXMQ_TX_SRC_PRODUCER, &st), 0);
  assert_int_equal(st, TXMQ_TX_COMMITTED);
  assert_int_equal(visible(env, "orders"), 1);

  hist_t h;
  memset(&h, 0, sizeof h);
  txmq_tx_info_t info;
  assert_int_equal(txmq_tx_show(env->tx, a, &info, hist_fn, &h), 0);
  assert_int_equal(info.state, TXMQ_TX_COMMITTED);
  assert_string_equal(h.ev[h.n - 2], "park");
  assert_string_equal(h.ev[h.n - 1], "commit");
  assert_int_equal(h.src[h.n - 1], TXMQ_TX_SRC_OPERATOR);
  assert_string_equal(h.who[h.n - 1], "ops");

  /* After a restart: a committed once, b rolled back, c still parked. */
  env_reopen(env, NULL);
  assert_int_equal(visible(env, "orders"), 1);
  assert_int_equal(metrics(env).parked, 1);
  list_res_t l = list_all(env, NULL);
  assert_int_equal(l.n, 1);
  assert_int_equal(l.last.state, TXMQ_TX_PARKED);
  assert_memory_equal(l.last.tx_id, c, TXMQ_TX_ID_LEN);
  assert_int_equal(end_wait(env, b, TXMQ_TX_ROLLBACK, TXMQ_TX_SRC_PRODUCER, &st), 0);
  assert_int_equal(st, TXMQ_TX_ROLLED_BACK);
  assert_int_equal(txmq_tx_end(env->tx, a, TXMQ_TX_ROLLBACK, TXMQ_TX_SRC_PRODUCER,
                               NULL, NULL, NULL, NULL),
                   TXMQ_ECONFLICT);
  memset(&h, 0, sizeof h);
  assert_int_equal(txmq_tx_show(env->tx, a, NULL, hist_fn, &h), 0);
  assert_int_equal(h.src[h.n - 1], TXMQ_TX_SRC_OPERATOR);
  assert_string_equal(h.who[h.n - 1], "ops");

  /* An operator may decide a pending transaction too; no check follows. */
  uint8_t d[TXMQ_TX_ID_LEN];
  begin1(env, "orders", 0, d);
  assert_int_equal(end_wait(env, d, TXMQ_TX_COMMIT, TXMQ_TX_SRC_OPERATOR, &st), 0);
  assert_int_equal(st, TXMQ_TX_COMMITTED);
  assert_int_equal(visible(env, "orders"), 2);
  size_t offered = env->tg[0].n;
  advance(env, 3600000);
  (void)txmq_tx_tick(env->tx);
  assert_int_equal(env->tg[0].n, offered);
  env_free(env);
}

static void show_full_history(void** state) {
  (void)state;
  env_t* env = env_new("tx-show");
  env_open_dir(env);
  /* An older undecided transaction keeps the replay floor before the one
   * we look at, so that the restart below replays its history too. */
  uint8_t keeper[TXMQ_TX_ID_LEN], id[TXMQ_TX_ID_LEN];
  begin1(env, "orders", 3600000, keeper);
  begin1(env, "orders", 0, id);
  assert_int_equal(end_wait(env, id, TXMQ_TX_UNKNOWN, TXMQ_TX_SRC_PRODUCER, NULL), 0);
  advance(env, 6000);
  env->tg[0].mode = T_UNKNOWN_NOW; /* the script says UNKNOWN, version v1 */
  assert_int_equal(txmq_tx_tick(env->tx), 1);
  env->tg[0].mode = T_TAKE;
  advance(env, 30000);
  assert_int_equal(txmq_tx_tick(env->tx), 1);
  advance(env, 5000); /* that one times out */
  assert_int_equal(txmq_tx_tick(env->tx), 0);
  end_res_t r = {0};
  assert_int_equal(txmq_tx_end(env->tx, id, TXMQ_TX_COMMIT, TXMQ_TX_SRC_SCRIPT, "v7",
                               "runtime", on_end, &r), 0);
  assert_true(tu_run_until(&env->loop, &r.done, 10000));

  hist_t h;
  memset(&h, 0, sizeof h);
  txmq_tx_info_t info;
  assert_int_equal(txmq_tx_show(env->tx, id, &info, hist_fn, &h), 0);
  check_history(&h);
  assert_int_equal(info.state, TXMQ_TX_COMMITTED);
  assert_string_equal(info.group, "g");
  assert_string_equal(info.producer, "p1");
  assert_int_equal(info.nmsgs, 1);
  assert_int_equal(info.check_count, 2);
  assert_int_equal(info.born_wall_ms, 1700000000000);

  /* The same after a restart, read back from the log. */
  env_reopen(env, NULL);
  memset(&h, 0, sizeof h);
  assert_int_equal(txmq_tx_show(env->tx, id, &info, hist_fn, &h), 0);
  check_history(&h);
  uint8_t nope[TXMQ_TX_ID_LEN] = {9};
  assert_int_equal(txmq_tx_show(env->tx, nope, NULL, hist_fn, &h), TXMQ_ENOTFOUND);
  env_free(env);
}

static void metrics_count(void** state) {
  (void)state;
  env_t* env = env_new("tx-metrics");
  env->max_checks = 1;
  env_open_dir(env);
  uint8_t a[TXMQ_TX_ID_LEN], b[TXMQ_TX_ID_LEN], c[TXMQ_TX_ID_LEN];
  begin1(env, "orders", 0, a);
  begin1(env, "orders", 0, b);
  begin1(env, "orders", 0, c);
  txmq_tx_metrics_t m = metrics(env);
  assert_int_equal(m.begun, 3);
  assert_int_equal(m.pending, 3);
  advance(env, 3);
  assert_int_equal(end_wait(env, a, TXMQ_TX_COMMIT, TXMQ_TX_SRC_PRODUCER, NULL), 0);
  assert_int_equal(end_wait(env, b, TXMQ_TX_ROLLBACK, TXMQ_TX_SRC_PRODUCER, NULL), 0);
  advance(env, 6000);
  assert_int_equal(txmq_tx_tick(env->tx), 1);
  assert_int_equal(txmq_tx_check_answer(env->tx, c, last_offer(env, 0)->seq,
                                        TXMQ_TX_UNKNOWN, TXMQ_TX_SRC_CHECK, NULL,
                                        NULL),
                   0);
  m = metrics(env);
  assert_int_equal(m.pending, 0);
  assert_int_equal(m.parked, 1);
  assert_int_equal(m.parks, 1);
  assert_int_equal(m.commits, 1);
  assert_int_equal(m.rollbacks, 1);
  assert_int_equal(m.checks_sent, 1);
  assert_int_equal(m.checks_answered, 1);
  assert_int_equal(m.checks_timed_out, 0);
  assert_int_equal(m.checks_undeliverable, 0);
  /* Both decisions 3 ms after their half: bucket [2, 4). */
  assert_int_equal(m.decision_latency_ms[2], 2);
  uint64_t sum = 0;
  for (int k = 0; k < TXMQ_TX_LATENCY_BUCKETS; k++) sum += m.decision_latency_ms[k];
  assert_int_equal(sum, 2);
  env_free(env);
}

typedef struct {
  size_t done, n;
} bulk_t;

static void on_bulk(txmq_tx_t* tx, int status, const uint8_t* id,
                    const txmq_msg_t* const* msgs, size_t n, void* arg) {
  (void)tx;
  (void)id;
  (void)msgs;
  (void)n;
  assert_int_equal(status, 0);
  ((bulk_t*)arg)->done++;
}

static void tick_cost_follows_due_checks(void** state) {
  (void)state;
  env_t* env = env_new("tx-bign");
  env->sync = TXMQ_SYNC_NEVER;
  env_open_dir(env);
  const size_t N = 100000;
  bulk_t b = {0, N};
  txmq_msg_t* m = mk_msg("bulk", "x");
  for (size_t k = 0; k < N; k++) {
    /* Distinct due times, tx k due at 10 s + k ms. */
    int rc;
    while ((rc = txmq_tx_begin(env->tx, "g", "p1", &m, 1, 10000 + (int64_t)k,
                               on_bulk, &b)) == TXMQ_EAGAIN)
      uv_run(&env->loop, UV_RUN_ONCE);
    assert_int_equal(rc, 0);
  }
  txmq_msg_free(m);
  while (b.done < N) uv_run(&env->loop, UV_RUN_ONCE);
  assert_int_equal(metrics(env).pending, N);
  advance(env, 9999);
  assert_int_equal(txmq_tx_tick(env->tx), 0);
  advance(env, 10);
  assert_int_equal(txmq_tx_tick(env->tx), 10);
  assert_int_equal(txmq_tx_tick(env->tx), 0);
  assert_int_equal(env->tg[0].n, 10);
  env_free(env);
}

static void names_and_ids(void** state) {
  (void)state;
  uint8_t id[TXMQ_TX_ID_LEN], back[TXMQ_TX_ID_LEN];
  for (int k = 0; k < TXMQ_TX_ID_LEN; k++) id[k] = (uint8_t)(k * 17 + 3);
  char buf[TXMQ_TX_ID_STRLEN + 1];
  txmq_tx_id_str(id, buf);
  assert_int_equal(strlen(buf), 32);
  assert_int_equal(txmq_tx_id_parse(buf, back), 0);
  assert_memory_equal(id, back, TXMQ_TX_ID_LEN);
  assert_int_equal(txmq_tx_id_parse("xyz", back), TXMQ_EINVAL);
  assert_int_equal(txmq_tx_id_parse("0123456789abcdef0123456789abcdeg", back),
                   TXMQ_EINVAL);
  assert_string_equal(txmq_tx_state_name(TXMQ_TX_PARKED), "parked");
  assert_string_equal(txmq_tx_state_name(TXMQ_TX_ROLLED_BACK), "rolled_back");
  assert_string_equal(txmq_tx_source_name(TXMQ_TX_SRC_MAX_CHECKS), "max_checks");
  assert_string_equal(txmq_tx_source_name(TXMQ_TX_SRC_TIMEOUT), "timeout");
  assert_string_equal(txmq_tx_source_name(TXMQ_TX_SRC_UNREADABLE), "unreadable");
}

static void bad_arguments(void** state) {
  (void)state;
  env_t* env = env_new("tx-args");
  env_open_dir(env);
  txmq_msg_t* m = mk_msg("orders", "x");
  assert_int_equal(txmq_tx_begin(env->tx, "bad name", NULL, &m, 1, 0, NULL, NULL),
                   TXMQ_EBADNAME);
  assert_int_equal(txmq_tx_begin(env->tx, "g", NULL, &m, 0, 0, NULL, NULL),
                   TXMQ_EINVAL);
  assert_int_equal(txmq_tx_begin(env->tx, "g", NULL, &m, 1, -1, NULL, NULL),
                   TXMQ_EINVAL);
  txmq_msg_free(m);
  assert_int_equal(txmq_tx_set(env->tx, TXMQ_TX_OPT_MAX_CHECKS, 0), TXMQ_EINVAL);
  assert_int_equal(txmq_tx_set(env->tx, TXMQ_TX_OPT_MANUAL_CLOCK, 0), TXMQ_EBUSY);
  uint8_t id[TXMQ_TX_ID_LEN];
  begin1(env, "orders", 0, id);
  assert_int_equal(txmq_tx_check_answer(env->tx, id, 1, TXMQ_TX_COMMIT,
                                        TXMQ_TX_SRC_PRODUCER, NULL, NULL),
                   TXMQ_EINVAL);
  assert_int_equal(txmq_tx_check_answer(env->tx, id, 1, TXMQ_TX_COMMIT,
                                        TXMQ_TX_SRC_CHECK, NULL, NULL),
                   TXMQ_ENOTFOUND);
  assert_int_equal(txmq_tx_resume(env->tx, id, "ops", NULL, NULL), TXMQ_EINVAL);
  assert_int_equal(txmq_tx_end(env->tx, id, (txmq_tx_decision_t)9,
                               TXMQ_TX_SRC_PRODUCER, NULL, NULL, NULL, NULL),
                   TXMQ_EINVAL);
  env_free(env);
}

/* txmq_tx_begin_take: the engine keeps the messages it is handed on
 * success (the callback sees those very messages, stored) and leaves them
 * to the caller on every failure, before or after preparing them. The
 * sanitizer and valgrind runs catch a message freed twice or never. */
static void begin_take_hands_messages_over(void** state) {
  (void)state;
  env_t* env = env_new("tx-take");
  env_open_dir(env);
  txmq_msg_t* m = mk_msg("orders", "taken");
  assert_int_equal(
      txmq_tx_begin_take(env->tx, "bad name", NULL, &m, 1, 0, on_begin, NULL),
      TXMQ_EBADNAME);
  assert_string_equal(txmq_msg_topic(m), "orders"); /* still ours */

  /* Refused after preparing: five bodies of 4 MiB are over a record. */
  txmq_msg_t* big[5];
  char* body = malloc(TXMQ_MSG_MAX_BODY);
  assert_non_null(body);
  memset(body, 'b', TXMQ_MSG_MAX_BODY);
  for (size_t k = 0; k < 5; k++) {
    big[k] = txmq_msg_new();
    assert_int_equal(txmq_msg_set_topic(big[k], "orders"), 0);
    assert_int_equal(txmq_msg_set_body(big[k], body, TXMQ_MSG_MAX_BODY), 0);
  }
  free(body);
  begin_res_t r = {0};
  assert_int_equal(
      txmq_tx_begin_take(env->tx, "g", "p1", big, 5, 0, on_begin, &r),
      TXMQ_ETOOBIG);
  for (size_t k = 0; k < 5; k++) txmq_msg_free(big[k]);
  assert_int_equal(r.done, 0);

  assert_int_equal(txmq_tx_begin_take(env->tx, "g", "p1", &m, 1, 0, on_begin, &r),
                   0);
  assert_true(tu_run_until(&env->loop, &r.done, 10000));
  assert_int_equal(r.status, 0);
  assert_ptr_equal(r.first, m); /* the very message (freed by the engine) */
  assert_int_equal(list_all(env, NULL).n, 1);
  env_free(env);
}

static int diag_has(env_t* env, const char* s) {
  return strstr(txmq_store_diag(env->st), s) != NULL;
}

/* ---- review: hostile records, lost park records, failed resumes ---- */

static void on_raw_appended(txmq_log_t* log, int status, uint64_t pos, void* arg) {
  (void)log;
  (void)pos;
  assert_int_equal(status, 0);
  (*(int*)arg)++;
}

/* Appends one raw record of ours (as a foreign writer could) and waits. */
static uint64_t append_raw(env_t* env, uint8_t type, const void* data, size_t len) {
  txmq_log_rec_t r = {type, data, (uint32_t)len};
  uint64_t pos = 0;
  int done = 0;
  assert_int_equal(txmq_store_append(env->st, &r, 1, &pos, on_raw_appended, &done), 0);
  assert_true(tu_run_until(&env->loop, &done, 10000));
  return pos;
}

static void pk_key(msgpack_packer* pk, const char* k) {
  msgpack_pack_str_with_body(pk, k, strlen(k));
}

static void pk_id(msgpack_packer* pk, const uint8_t* id) {
  msgpack_pack_bin_with_body(pk, id, TXMQ_TX_ID_LEN);
}

/* A half record's map up to the head of its array of nmsgs messages, the
 * fields as txmq__half_encode writes them. */
static void pk_half_head(msgpack_packer* pk, const uint8_t* id,
                         const char* group, size_t glen, int64_t immunity,
                         int64_t at, uint32_t nmsgs) {
  msgpack_pack_map(pk, 5);
  pk_key(pk, "tx");
  pk_id(pk, id);
  pk_key(pk, "group");
  msgpack_pack_str_with_body(pk, group, glen);
  pk_key(pk, "immunity_ms");
  msgpack_pack_int64(pk, immunity);
  pk_key(pk, "at");
  msgpack_pack_int64(pk, at);
  pk_key(pk, "msgs");
  msgpack_pack_array(pk, nmsgs);
}

/* A half record as txmq__half_encode writes it, with the fields given;
 * spoil: its message's topic "orders" becomes "\xefrders", not a name. */
static uint64_t append_half_spoilt(env_t* env, const uint8_t* id,
                                   const char* group, size_t glen,
                                   int64_t immunity, int64_t at, int spoil) {
  txmq_msg_t* m = mk_msg("orders", "hostile");
  assert_int_equal(txmq_store_prepare(env->st, m), 0);
  void* mb = NULL;
  size_t ml = 0;
  assert_int_equal(txmq_msg_encode(m, &mb, &ml), 0);
  txmq_msg_free(m);
  if (spoil) {
    uint8_t* t = memmem(mb, ml, "orders", 6);
    assert_non_null(t);
    t[0] = 0xef;
  }
  msgpack_sbuffer sb;
  msgpack_sbuffer_init(&sb);
  msgpack_packer pk;
  msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
  pk_half_head(&pk, id, group, glen, immunity, at, 1);
  msgpack_sbuffer_write(&sb, mb, ml);
  free(mb);
  uint64_t pos = append_raw(env, TXMQ_REC_TX_HALF, sb.data, sb.size);
  msgpack_sbuffer_destroy(&sb);
  return pos;
}

static uint64_t append_half(env_t* env, const uint8_t* id, const char* group,
                            size_t glen, int64_t immunity, int64_t at) {
  return append_half_spoilt(env, id, group, glen, immunity, at, 0);
}

/* An event record; the optional fields are left out when has_* is 0. */
static void append_event_rec(env_t* env, const uint8_t* id, const char* ev,
                             int has_src, uint32_t src, int has_count,
                             uint32_t count, int has_at, int64_t at,
                             uint64_t prev) {
  msgpack_sbuffer sb;
  msgpack_sbuffer_init(&sb);
  msgpack_packer pk;
  msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
  msgpack_pack_map(&pk, 3 + (uint32_t)has_src + (uint32_t)has_count + (uint32_t)has_at);
  pk_key(&pk, "tx");
  pk_id(&pk, id);
  pk_key(&pk, "ev");
  pk_key(&pk, ev);
  if (has_src) {
    pk_key(&pk, "src");
    msgpack_pack_uint32(&pk, src);
  }
  if (has_count) {
    pk_key(&pk, "count");
    msgpack_pack_uint32(&pk, count);
  }
  if (has_at) {
    pk_key(&pk, "at");
    msgpack_pack_int64(&pk, at);
  }
  pk_key(&pk, "prev");
  msgpack_pack_uint64(&pk, prev);
  append_raw(env, TXMQ_REC_TX_EVENT, sb.data, sb.size);
  msgpack_sbuffer_destroy(&sb);
}

/* A half record of group "g" whose last message cannot be decoded (topic
 * and queue as a real message has them, "born" not a number), after one
 * good encoded message (good, good_len) if good is not NULL. */
static uint64_t append_bad_half(env_t* env, const uint8_t* id, const void* good,
                                size_t good_len) {
  msgpack_sbuffer sb;
  msgpack_sbuffer_init(&sb);
  msgpack_packer pk;
  msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
  pk_half_head(&pk, id, "g", 1, 0, env->wall, good != NULL ? 2 : 1);
  if (good != NULL) msgpack_sbuffer_write(&sb, good, good_len);
  msgpack_pack_map(&pk, 4);
  pk_key(&pk, "topic");
  pk_key(&pk, "orders");
  pk_key(&pk, "qid");
  msgpack_pack_int32(&pk, 0);
  pk_key(&pk, "body");
  msgpack_pack_bin_with_body(&pk, "bad", 3);
  pk_key(&pk, "born");
  pk_key(&pk, "yesterday");
  uint64_t pos = append_raw(env, TXMQ_REC_TX_HALF, sb.data, sb.size);
  msgpack_sbuffer_destroy(&sb);
  return pos;
}

/* Records of our types that no engine wrote (a foreign or broken writer,
 * with a valid checksum) are replayed without crashing (the sanitizer build
 * aborts on signed overflow), without wrapping due times into the past, and
 * without deciding anything. */
static void hostile_records_at_replay(void** state) {
  (void)state;
  env_t* env = env_new("tx-hostile");
  env_open_dir(env);
  uint8_t real[TXMQ_TX_ID_LEN];
  begin1(env, "orders", 0, real);
  txmq_tx_info_t info;
  assert_int_equal(txmq_tx_show(env->tx, real, &info, NULL, NULL), 0);
  uint64_t real_half = info.half_pos;

  uint8_t h1[TXMQ_TX_ID_LEN] = {1}, h2[TXMQ_TX_ID_LEN] = {2},
          h3[TXMQ_TX_ID_LEN] = {3}, h4[TXMQ_TX_ID_LEN] = {4},
          h5[TXMQ_TX_ID_LEN] = {5};
  /* An immunity no begin accepts: would wrap at + immunity negative. */
  uint64_t p1 = append_half(env, h1, "g", 1, INT64_MAX, env->wall);
  /* Wall times at the ends of the range. */
  append_half(env, h2, "g", 1, 0, INT64_MAX);
  append_half(env, h3, "g", 1, 0, INT64_MIN);
  /* Groups no begin accepts: the name would reach check targets (and the
   * script host) as a truncated or path-like string. */
  append_half(env, h4, "bad/../name", 11, 0, env->wall);
  append_half(env, h5, "g\0x", 3, 0, env->wall);
  /* A counted check recorded at the end of time. */
  append_event_rec(env, h1, "check", 1, TXMQ_TX_SRC_TIMEOUT, 1, 1, 1, INT64_MAX, p1);
  /* Commits of the real transaction that our encoder never writes: no
   * source, count or time; source 0. */
  append_event_rec(env, real, "commit", 0, 0, 0, 0, 0, 0, real_half);
  append_event_rec(env, real, "commit", 1, 0, 1, 0, 1, env->wall, real_half);
  /* Not msgpack at all, and a truncated map. */
  static const uint8_t junk[] = {0xc1, 0x00, 0xff};
  static const uint8_t cut[] = {0x85, 0xa2, 't', 'x'};
  append_raw(env, TXMQ_REC_TX_HALF, junk, sizeof junk);
  append_raw(env, TXMQ_REC_TX_EVENT, junk, sizeof junk);
  append_raw(env, TXMQ_REC_TX_HALF, cut, sizeof cut);
  append_raw(env, TXMQ_REC_TX_EVENT, cut, sizeof cut);

  /* These records went around the engine, so its snapshot does not hold
   * them: without the snapshot the open replays them, which is what is
   * under test. */
  env_close_engine(env);
  env_drop_snapshots(env);
  env_reopen(env, NULL);
  /* Nothing was decided by the malformed commits. */
  assert_int_equal(visible(env, "orders"), 0);
  assert_int_equal(txmq_tx_show(env->tx, real, &info, NULL, NULL), 0);
  assert_int_equal(info.state, TXMQ_TX_PENDING);
  /* The real one and h1..h3 are pending; h4 and h5 were skipped. */
  assert_int_equal(metrics(env).pending, 4);
  assert_int_equal(txmq_tx_show(env->tx, h4, NULL, NULL, NULL), TXMQ_ENOTFOUND);
  assert_int_equal(txmq_tx_show(env->tx, h5, NULL, NULL, NULL), TXMQ_ENOTFOUND);
  /* Only h3 (born at the start of time) is due; h1 and h2 saturate far in
   * the future instead of wrapping into the past. */
  assert_int_equal(txmq_tx_tick(env->tx), 1);
  assert_memory_equal(last_offer(env, 0)->id, h3, TXMQ_TX_ID_LEN);
  assert_int_equal(txmq_tx_show(env->tx, h1, &info, NULL, NULL), 0);
  assert_int_equal(info.check_count, 1);
  assert_true(info.due_in_ms > INT64_C(1) << 39);
  advance(env, 6000);
  assert_int_equal(txmq_tx_tick(env->tx), 1);
  assert_memory_equal(last_offer(env, 0)->id, real, TXMQ_TX_ID_LEN);
  env_free(env);
}

/* Topic "orders", then a half record of group "g" whose message does not
 * decode (append_bad_half), taken by the replay of a crash image. */
static void replay_bad_half(env_t* env, const uint8_t* id, const char* img_tag) {
  txmq_msg_t* good = mk_msg("orders", "fine");
  assert_int_equal(txmq_store_prepare(env->st, good), 0); /* the topic */
  txmq_msg_free(good);
  append_bad_half(env, id, NULL, 0);
  env_sync(env);
  char* img = env_crash_image(env, img_tag);
  env_reopen(env, img);
  free(img);
}

/* A half record (valid checksum, no engine wrote it) whose message has a
 * topic but does not decode as a message, committed after the last
 * checkpoint: the replayed COMMIT must publish nothing, neither for a
 * one-message transaction (which otherwise publishes without reading its
 * record back) nor for a two-message one (all or none); an indexed message
 * that cannot be read back would break every reader of its queue. */
static void undecodable_message_never_published(void** state) {
  (void)state;
  env_t* env = env_new("tx-undecodable");
  env_open_dir(env);
  txmq_msg_t* good = mk_msg("orders", "fine");
  assert_int_equal(txmq_store_prepare(env->st, good), 0); /* the topic */
  void* gb = NULL;
  size_t gl = 0;
  assert_int_equal(txmq_msg_encode(good, &gb, &gl), 0);
  txmq_msg_free(good);
  for (int two = 0; two <= 1; two++) {
    uint8_t id[TXMQ_TX_ID_LEN] = {0x7e, (uint8_t)two};
    uint64_t half = append_bad_half(env, id, two ? gb : NULL, gl);
    append_event_rec(env, id, "commit", 1, TXMQ_TX_SRC_PRODUCER, 1, 0, 1,
                     env->wall, half);
  }
  free(gb);
  /* A crash image: the commits are past the last checkpoint, so the
   * replay publishes them (a clean close would checkpoint them as done). */
  env_sync(env);
  char* img = env_crash_image(env, "tx-undecodable-img");
  env_reopen(env, img);
  free(img);
  assert_int_equal(visible(env, "orders"), 0);
  env_free(env);
}

/* An event whose chain points at another transaction's half record (a
 * damaged or foreign chain): show stops there with ECORRUPT, after the
 * events it read, and frees what it decoded (valgrind and ASan check). */
static void show_chain_into_another_half(void** state) {
  (void)state;
  env_t* env = env_new("tx-showchain");
  env_open_dir(env);
  uint8_t a[TXMQ_TX_ID_LEN] = {0x5a, 1}, b[TXMQ_TX_ID_LEN] = {0x5b, 1};
  uint64_t ha = append_half(env, a, "g", 1, 3600000, env->wall);
  append_half(env, b, "g", 1, 3600000, env->wall);
  append_event_rec(env, b, "unknown", 1, TXMQ_TX_SRC_PRODUCER, 1, 0, 1,
                   env->wall, ha);
  env_sync(env);
  char* img = env_crash_image(env, "tx-showchain-img");
  env_reopen(env, img);
  free(img);
  hist_t h;
  memset(&h, 0, sizeof h);
  txmq_tx_info_t info;
  assert_int_equal(txmq_tx_show(env->tx, b, &info, hist_fn, &h), TXMQ_ECORRUPT);
  assert_int_equal(h.n, 1);
  assert_string_equal(h.ev[0], "unknown");
  env_free(env);
}

/* A half record txmq_tx_begin could not have written (its topic is not a
 * valid name) is skipped by the replay, as one that does not decode: so
 * the engine never holds what its own snapshot loader refuses, and the
 * snapshot of a clean close is used by the next open. */
static void replay_skips_half_with_invalid_topic(void** state) {
  (void)state;
  env_t* env = env_new("tx-badtopic");
  env_open_dir(env);
  uint8_t bad[TXMQ_TX_ID_LEN] = {0x6b, 1}, good[TXMQ_TX_ID_LEN];
  append_half_spoilt(env, bad, "g", 1, 3600000, env->wall, 1);
  begin1(env, "orders", 3600000, good);
  env_sync(env);
  char* img = env_crash_image(env, "tx-badtopic-img");
  env_reopen(env, img);
  free(img);
  list_res_t l = list_all(env, NULL);
  assert_int_equal(l.n, 1);
  assert_memory_equal(l.last.tx_id, good, TXMQ_TX_ID_LEN);
  /* A clean close writes a snapshot; the next open takes it. */
  env_reopen(env, NULL);
  if (diag_has(env, "snapshot not used") || diag_has(env, "no snapshot"))
    fail_msg("diag is \"%s\"", txmq_store_diag(env->st));
  l = list_all(env, NULL);
  assert_int_equal(l.n, 1);
  env_free(env);
}

/* A snapshot that says a one-message transaction's message decoded (queue
 * id set) when its half record does not decode: the COMMIT reads the half
 * back and publishes nothing, as after a replay. */
static void snapshot_entry_commit_reads_the_half(void** state) {
  (void)state;
  env_t* env = env_new("tx-snapqid");
  env_open_dir(env);
  uint8_t id[TXMQ_TX_ID_LEN] = {0x7d, 1};
  replay_bad_half(env, id, "tx-snapqid-img");
  assert_int_equal(list_all(env, NULL).n, 1);
  env_close_engine(env); /* a clean close: a snapshot with it */
  /* The entry's queue id in the snapshot (-1: its message did not decode)
   * becomes 0, the checksum made right again. */
  int patched = 0;
  for (int slot = 0; slot < 2; slot++) {
    char name[16];
    snprintf(name, sizeof name, "snapshot.%d", slot);
    char* path = tu_path(env->dir, name);
    size_t len;
    uint8_t* f = tu_read_file(path, &len);
    uint8_t* e = f != NULL ? memmem(f + 40, len - 40, id, TXMQ_TX_ID_LEN) : NULL;
    if (e != NULL && e + 80 <= f + len && e[68] == 0xff && e[69] == 0xff) {
      e[68] = e[69] = 0;
      uint32_t crc = txmq_crc32c(0, f + 12, len - 12);
      memcpy(f + 8, &crc, 4);
      assert_int_equal(tu_write_file(path, f, len), 0);
      patched++;
    }
    free(f);
    free(path);
  }
  assert_true(patched >= 1);
  memset(env->tg, 0, sizeof env->tg);
  env_open_dir(env);
  if (diag_has(env, "snapshot not used") || diag_has(env, "no snapshot"))
    fail_msg("diag is \"%s\"", txmq_store_diag(env->st));
  /* Decided, but its message cannot be published: the caller hears it. */
  assert_int_equal(end_wait(env, id, TXMQ_TX_COMMIT, TXMQ_TX_SRC_PRODUCER, NULL),
                   TXMQ_EPROTO);
  assert_int_equal(visible(env, "orders"), 0);
  env_free(env);
}

typedef struct {
  size_t n, unreadable;
  char who[64];
  char last[16];
} unreadable_hist_t;

static void unreadable_hist_fn(void* arg, const txmq_tx_event_t* ev) {
  unreadable_hist_t* h = arg;
  h->n++;
  snprintf(h->last, sizeof h->last, "%s", ev->event);
  if (strcmp(txmq_tx_source_name(ev->source), "unreadable") == 0) {
    h->unreadable++;
    snprintf(h->who, sizeof h->who, "%s", ev->who ? ev->who : "");
  }
}

/* A half record whose message cannot be decoded (a foreign or broken
 * writer, with a valid checksum) cannot be offered as a check. Each attempt
 * counts, recorded as source "unreadable" with the error, so that it ends
 * parked, where an operator sees it, instead of being retried forever. */
static void unreadable_half_parks(void** state) {
  (void)state;
  env_t* env = env_new("tx-unreadable");
  env_open_dir(env);
  uint8_t id[TXMQ_TX_ID_LEN] = {0x7f, 1};
  replay_bad_half(env, id, "tx-unreadable-img");
  list_res_t l = list_all(env, "g");
  assert_int_equal(l.n, 1);
  assert_int_equal(l.last.state, TXMQ_TX_PENDING);

  advance(env, 6000);
  for (int k = 0; k < 40 && list_all(env, "g").last.state == TXMQ_TX_PENDING; k++) {
    assert_int_equal(txmq_tx_tick(env->tx), 0); /* nothing to offer */
    env_sync(env);
    advance(env, 30000);
  }
  env_sync(env);
  l = list_all(env, "g");
  assert_int_equal(l.last.state, TXMQ_TX_PARKED);
  assert_int_equal(l.last.check_count, 15);
  assert_int_equal(env->tg[0].n, 0);
  assert_int_equal(metrics(env).parks, 1);
  /* Its history says why: 15 counted attempts, then the park. */
  unreadable_hist_t h = {0};
  assert_int_equal(txmq_tx_show(env->tx, id, NULL, unreadable_hist_fn, &h), 0);
  assert_int_equal(h.n, 17);
  assert_int_equal(h.unreadable, 15);
  assert_non_null(strstr(h.who, "half record"));
  assert_string_equal(h.last, "park");
  assert_int_equal(visible(env, "orders"), 0);
  env_free(env);
}

/* The park record is written after the check that reached the maximum, as
 * a record of its own. A crash between the two leaves max_checks counted
 * checks and no park: the engine must park it again, not check it once
 * more. */
static void park_redone_after_lost_park_record(void** state) {
  (void)state;
  env_t* env = env_new("tx-lostpark");
  env->max_checks = 2;
  env_open_dir(env);
  uint8_t id[TXMQ_TX_ID_LEN];
  begin1(env, "orders", 0, id);
  advance(env, 6000);
  for (int k = 0; k < 2; k++) {
    assert_int_equal(txmq_tx_tick(env->tx), 1);
    assert_int_equal(txmq_tx_check_answer(env->tx, id, last_offer(env, 0)->seq,
                                          TXMQ_TX_UNKNOWN, TXMQ_TX_SRC_CHECK, NULL,
                                          NULL),
                     0);
    advance(env, 30000);
  }
  assert_int_equal(metrics(env).parked, 1);
  env_sync(env);
  hist_t h;
  memset(&h, 0, sizeof h);
  assert_int_equal(txmq_tx_show(env->tx, id, NULL, hist_fn, &h), 0);
  assert_string_equal(h.ev[h.n - 1], "park");
  uint64_t park_pos = h.pos[h.n - 1];
  char* img = env_crash_image(env, "tx-lostpark-img");
  char* seg = tu_path(img, "log/00000000000000000000.log");
  assert_int_equal(
      tu_truncate(seg, (long long)(TXMQ_LOG_SEGMENT_HEADER_SIZE + park_pos + 5)), 0);
  free(seg);
  env_reopen(env, img);
  free(img);
  list_res_t l = list_all(env, NULL);
  assert_int_equal(l.n, 1);
  assert_int_equal(l.last.check_count, 2);
  assert_int_equal(l.last.state, TXMQ_TX_PARKED);
  advance(env, 3600000);
  assert_int_equal(txmq_tx_tick(env->tx), 0);
  assert_int_equal(env->tg[0].n, 0);
  /* And the park is on record again. */
  env_reopen(env, NULL);
  assert_int_equal(list_all(env, NULL).last.state, TXMQ_TX_PARKED);
  assert_int_equal(metrics(env).parked, 1);
  env_free(env);
}

/* Lowering the maximum below a transaction's counted checks parks it at its
 * next due time instead of checking it again. */
static void lowered_max_checks_parks(void** state) {
  (void)state;
  env_t* env = env_new("tx-lowermax");
  env_open_dir(env);
  uint8_t id[TXMQ_TX_ID_LEN];
  begin1(env, "orders", 0, id);
  advance(env, 6000);
  for (int k = 0; k < 3; k++) {
    assert_int_equal(txmq_tx_tick(env->tx), 1);
    assert_int_equal(txmq_tx_check_answer(env->tx, id, last_offer(env, 0)->seq,
                                          TXMQ_TX_UNKNOWN, TXMQ_TX_SRC_CHECK, NULL,
                                          NULL),
                     0);
    advance(env, 30000);
  }
  assert_int_equal(txmq_tx_set(env->tx, TXMQ_TX_OPT_MAX_CHECKS, 2), 0);
  assert_int_equal(txmq_tx_tick(env->tx), 0);
  assert_int_equal(env->tg[0].n, 3);
  assert_int_equal(list_all(env, NULL).last.state, TXMQ_TX_PARKED);
  assert_int_equal(metrics(env).parks, 1);
  env_free(env);
}

void txmq__log_inject_fault(txmq_log_t* log, int what, int err);

/* Begins a transaction in an engine of max_checks 1 and parks it: its one
 * check answered UNKNOWN, the records durable. */
static void park_one(env_t* env, uint8_t id[TXMQ_TX_ID_LEN]) {
  begin1(env, "orders", 0, id);
  advance(env, 6000);
  assert_int_equal(txmq_tx_tick(env->tx), 1);
  assert_int_equal(txmq_tx_check_answer(env->tx, id, last_offer(env, 0)->seq,
                                        TXMQ_TX_UNKNOWN, TXMQ_TX_SRC_CHECK, NULL,
                                        NULL),
                   0);
  env_sync(env);
}

/* A resume whose record fails puts the transaction back as it was: parked,
 * with the checks it had. */
static void failed_resume_keeps_count(void** state) {
  (void)state;
  env_t* env = env_new("tx-resumefail");
  env->max_checks = 1;
  env_open_dir(env);
  uint8_t id[TXMQ_TX_ID_LEN];
  park_one(env, id);
  assert_int_equal(list_all(env, NULL).last.check_count, 1);
  txmq__log_inject_fault(txmq_store_log(env->st), 0, 5 /* EIO */);
  end_res_t r = {0};
  assert_int_equal(txmq_tx_resume(env->tx, id, "ops", on_end, &r), 0);
  assert_true(tu_run_until(&env->loop, &r.done, 10000));
  assert_true(r.status < 0);
  assert_int_equal(r.state, TXMQ_TX_PARKED);
  list_res_t l = list_all(env, NULL);
  assert_int_equal(l.last.state, TXMQ_TX_PARKED);
  assert_int_equal(l.last.check_count, 1);
  assert_int_equal(metrics(env).parked, 1);
  assert_int_equal(metrics(env).resumes, 0);
  env_free(env);
}

/* An operator's decision whose record fails leaves a parked transaction
 * parked (off the schedule, producers still refused), not pending. */
static void failed_operator_decision_stays_parked(void** state) {
  (void)state;
  env_t* env = env_new("tx-decidefail");
  env->max_checks = 1;
  env_open_dir(env);
  uint8_t id[TXMQ_TX_ID_LEN];
  park_one(env, id);
  txmq__log_inject_fault(txmq_store_log(env->st), 0, 5 /* EIO */);
  end_res_t r = {0};
  assert_int_equal(txmq_tx_end(env->tx, id, TXMQ_TX_COMMIT, TXMQ_TX_SRC_OPERATOR,
                               NULL, "ops", on_end, &r), 0);
  assert_true(tu_run_until(&env->loop, &r.done, 10000));
  assert_true(r.status < 0);
  assert_int_equal(r.state, TXMQ_TX_PARKED);
  list_res_t l = list_all(env, NULL);
  assert_int_equal(l.last.state, TXMQ_TX_PARKED);
  assert_int_equal(metrics(env).parked, 1);
  assert_int_equal(metrics(env).pending, 0);
  assert_int_equal(txmq_tx_end(env->tx, id, TXMQ_TX_COMMIT, TXMQ_TX_SRC_PRODUCER,
                               NULL, NULL, NULL, NULL),
                   TXMQ_EPARKED);
  advance(env, 3600000);
  assert_int_equal(txmq_tx_tick(env->tx), 0);
  assert_int_equal(metrics(env).parks, 1);
  assert_int_equal(visible(env, "orders"), 0);
  env_free(env);
}

/* A transaction parked because its half record does not decode (its checks
 * were unreadable): an operator's COMMIT is refused before anything is
 * recorded, since nothing could be published; a ROLLBACK decides it. */
static void operator_commit_of_unreadable_half_refused(void** state) {
  (void)state;
  env_t* env = env_new("tx-opunread");
  env->max_checks = 1;
  env_open_dir(env);
  uint8_t id[TXMQ_TX_ID_LEN] = {0x7c, 1};
  replay_bad_half(env, id, "tx-opunread-img");
  advance(env, 600000);
  for (int k = 0; k < 4 && metrics(env).parked == 0; k++) {
    (void)txmq_tx_tick(env->tx);
    advance(env, 60000);
  }
  env_sync(env);
  assert_int_equal(metrics(env).parked, 1);
  assert_int_equal(txmq_tx_end(env->tx, id, TXMQ_TX_COMMIT, TXMQ_TX_SRC_OPERATOR,
                               NULL, "ops", NULL, NULL),
                   TXMQ_ECORRUPT);
  assert_int_equal(metrics(env).parked, 1);
  txmq_tx_state_t st;
  assert_int_equal(end_wait(env, id, TXMQ_TX_ROLLBACK, TXMQ_TX_SRC_OPERATOR, &st), 0);
  assert_int_equal(st, TXMQ_TX_ROLLED_BACK);
  assert_int_equal(visible(env, "orders"), 0);
  env_free(env);
}

typedef struct {
  env_t* env;
  size_t offers;
  int closed;
} closer_t;

/* At most MAX_GROUPS producer groups have undecided transactions: a new
 * group beyond it is refused before anything is stored (not even its
 * topic), a group already in is not, a group whose transactions are all
 * decided frees its place, and recovery counts what it brings back. */
static void producer_group_limit(void** state) {
  (void)state;
  env_t* env = env_new("tx-groups");
  env->max_groups = 2;
  env_open_dir(env);
  assert_int_equal(txmq_tx_set(env->tx, TXMQ_TX_OPT_MAX_GROUPS, 0), TXMQ_EINVAL);
  uint8_t a1[TXMQ_TX_ID_LEN], a2[TXMQ_TX_ID_LEN], b1[TXMQ_TX_ID_LEN],
      c1[TXMQ_TX_ID_LEN];
  const char* t[1] = {"orders"};
  begin_n(env, "ga", "p1", t, 1, 0, a1);
  begin_n(env, "gb", "p1", t, 1, 0, b1);
  assert_string_equal(txmq_tx_diag(env->tx), "");

  txmq_msg_t* m = mk_msg("fresh-topic", "x");
  begin_res_t r = {0};
  assert_int_equal(txmq_tx_begin(env->tx, "gc", "p1", &m, 1, 0, on_begin, &r),
                   TXMQ_ERANGE);
  assert_string_equal(txmq_tx_diag(env->tx),
                      "producer group limit reached (max_producer_groups = 2 "
                      "groups with undecided transactions): group 'gc' "
                      "refused");
  assert_int_equal(txmq_store_topic_queues(env->st, "fresh-topic"),
                   TXMQ_ENOTFOUND);
  assert_int_equal(r.done, 0);

  /* A group that is in takes more transactions. */
  begin_n(env, "ga", "p2", t, 1, 0, a2);
  assert_string_equal(txmq_tx_diag(env->tx), "");
  /* gb decided: its place is free. */
  assert_int_equal(end_wait(env, b1, TXMQ_TX_COMMIT, TXMQ_TX_SRC_PRODUCER, NULL), 0);
  assert_int_equal(txmq_tx_begin(env->tx, "gc", "p1", &m, 1, 0, on_begin, &r), 0);
  assert_true(tu_run_until(&env->loop, &r.done, 10000));
  assert_int_equal(r.status, 0);
  memcpy(c1, r.id, TXMQ_TX_ID_LEN);
  memset(&r, 0, sizeof r);
  assert_int_equal(txmq_tx_begin(env->tx, "gd", "p1", &m, 1, 0, on_begin, &r),
                   TXMQ_ERANGE);

  /* After a restart, ga and gc are back with their transactions and
   * their places. */
  env_reopen(env, NULL);
  assert_int_equal(list_all(env, NULL).n, 3);
  assert_int_equal(txmq_tx_begin(env->tx, "gd", "p1", &m, 1, 0, on_begin, &r),
                   TXMQ_ERANGE);
  assert_non_null(strstr(txmq_tx_diag(env->tx), "'gd'"));
  assert_int_equal(end_wait(env, a1, TXMQ_TX_ROLLBACK, TXMQ_TX_SRC_PRODUCER, NULL), 0);
  assert_int_equal(txmq_tx_begin(env->tx, "gd", "p1", &m, 1, 0, on_begin, &r),
                   TXMQ_ERANGE);
  assert_int_equal(end_wait(env, a2, TXMQ_TX_COMMIT, TXMQ_TX_SRC_PRODUCER, NULL), 0);
  assert_int_equal(txmq_tx_begin(env->tx, "gd", "p1", &m, 1, 0, on_begin, &r), 0);
  assert_true(tu_run_until(&env->loop, &r.done, 10000));
  assert_int_equal(r.status, 0);
  txmq_msg_free(m);
  assert_int_equal(end_wait(env, c1, TXMQ_TX_COMMIT, TXMQ_TX_SRC_PRODUCER, NULL), 0);
  env_free(env);
}

static int closing_check(void* arg, txmq_tx_t* tx, const txmq_tx_check_t* c) {
  (void)c;
  closer_t* k = arg;
  k->offers++;
  if (k->offers == 1)
    assert_int_equal(txmq_tx_close(tx, on_tx_closed, &k->closed), 0);
  return 0;
}

/* A target that closes the engine from inside check() (a daemon shutting
 * down): the tick stops there, no check is offered after the close. */
static void no_check_offered_after_close(void** state) {
  (void)state;
  env_t* env = env_new("tx-closeincheck");
  env->ntargets = 0;
  env_open_dir(env);
  closer_t k = {env, 0, 0};
  txmq_tx_target_t t = {"closer", closing_check};
  assert_int_equal(txmq_tx_add_target(env->tx, &t, &k), 0);
  uint8_t a[TXMQ_TX_ID_LEN], b[TXMQ_TX_ID_LEN], c[TXMQ_TX_ID_LEN];
  begin1(env, "orders", 0, a);
  begin1(env, "orders", 0, b);
  begin1(env, "orders", 0, c);
  advance(env, 6000);
  assert_int_equal(txmq_tx_tick(env->tx), 1);
  assert_int_equal(k.offers, 1);
  assert_true(tu_run_until(&env->loop, &k.closed, 10000));
  int done = 0;
  assert_int_equal(txmq_store_close(env->st, on_store_closed, &done), 0);
  assert_true(tu_run_until(&env->loop, &done, 10000));
  txmq_tx_free(env->tx);
  txmq_store_free(env->st);
  env->tx = NULL;
  env->st = NULL;
  env_free(env);
}

/* ---- the engine's snapshot beside the checkpoint ---- */

#define ST_MAX 32

/* What the engine shows of its live transactions, its gauges and what is
 * visible, to compare two opens. */
typedef struct {
  size_t n;
  struct {
    uint8_t id[TXMQ_TX_ID_LEN];
    txmq_tx_state_t state;
    uint32_t count;
    int64_t due_in_ms;
    uint64_t half_pos;
    int64_t born;
    size_t nmsgs;
    char group[TXMQ_NAME_MAX + 1];
    char producer[64];
  } t[ST_MAX];
  uint64_t pending, parked, on_a, on_b, on_orders;
  int64_t vis_a, vis_b, vis_orders;
} txstate_t;

static int state_fn(void* arg, const txmq_tx_info_t* info) {
  txstate_t* s = arg;
  assert_true(s->n < ST_MAX);
  memcpy(s->t[s->n].id, info->tx_id, TXMQ_TX_ID_LEN);
  s->t[s->n].state = info->state;
  s->t[s->n].count = info->check_count;
  s->t[s->n].due_in_ms = info->due_in_ms;
  s->t[s->n].half_pos = info->half_pos;
  s->t[s->n].born = info->born_wall_ms;
  s->t[s->n].nmsgs = info->nmsgs;
  snprintf(s->t[s->n].group, sizeof s->t[s->n].group, "%s", info->group);
  snprintf(s->t[s->n].producer, sizeof s->t[s->n].producer, "%s",
           info->producer ? info->producer : "(none)");
  s->n++;
  return 0;
}

static txstate_t state_of(env_t* env) {
  txstate_t s;
  memset(&s, 0, sizeof s);
  txmq_tx_list(env->tx, NULL, state_fn, &s);
  txmq_tx_metrics_t m = metrics(env);
  s.pending = m.pending;
  s.parked = m.parked;
  s.on_a = txmq_tx_pending_on_topic(env->tx, "topic-a");
  s.on_b = txmq_tx_pending_on_topic(env->tx, "topic-b");
  s.on_orders = txmq_tx_pending_on_topic(env->tx, "orders");
  s.vis_a = visible(env, "topic-a");
  s.vis_b = visible(env, "topic-b");
  s.vis_orders = visible(env, "orders");
  return s;
}

static void state_equal(const txstate_t* a, const txstate_t* b) {
  assert_int_equal(a->n, b->n);
  for (size_t k = 0; k < a->n; k++) {
    assert_memory_equal(a->t[k].id, b->t[k].id, TXMQ_TX_ID_LEN);
    assert_int_equal(a->t[k].state, b->t[k].state);
    assert_int_equal(a->t[k].count, b->t[k].count);
    assert_int_equal(a->t[k].due_in_ms, b->t[k].due_in_ms);
    assert_int_equal(a->t[k].half_pos, b->t[k].half_pos);
    assert_int_equal(a->t[k].born, b->t[k].born);
    assert_int_equal(a->t[k].nmsgs, b->t[k].nmsgs);
    assert_string_equal(a->t[k].group, b->t[k].group);
    assert_string_equal(a->t[k].producer, b->t[k].producer);
  }
  assert_int_equal(a->pending, b->pending);
  assert_int_equal(a->parked, b->parked);
  assert_int_equal(a->on_a, b->on_a);
  assert_int_equal(a->on_b, b->on_b);
  assert_int_equal(a->on_orders, b->on_orders);
  assert_int_equal(a->vis_a, b->vis_a);
  assert_int_equal(a->vis_b, b->vis_b);
  assert_int_equal(a->vis_orders, b->vis_orders);
}

/* The ids of mixed_state, in the order they were begun. */
typedef struct {
  uint8_t old[TXMQ_TX_ID_LEN];  /* committed before every live one */
  uint8_t a[TXMQ_TX_ID_LEN];    /* one counted check, then a check out */
  uint8_t m[TXMQ_TX_ID_LEN];    /* two messages, two topics, no producer */
  uint8_t imm[TXMQ_TX_ID_LEN];  /* a long immunity: not checked yet */
  uint8_t p[TXMQ_TX_ID_LEN];    /* parked after max_checks */
  uint8_t c[TXMQ_TX_ID_LEN];    /* committed */
  uint8_t r[TXMQ_TX_ID_LEN];    /* rolled back */
} mixed_t;

/* Every kind of state the engine keeps across a restart. max_checks 2. */
static void mixed_state(env_t* env, mixed_t* x) {
  const char* two[2] = {"topic-b", "topic-a"};
  const char* one[1] = {"orders"};
  begin1(env, "orders", 0, x->old);
  assert_int_equal(end_wait(env, x->old, TXMQ_TX_COMMIT, TXMQ_TX_SRC_PRODUCER, NULL), 0);
  advance(env, 10);
  begin1(env, "orders", 0, x->a);
  begin_n(env, "g2", NULL, two, 2, 0, x->m);
  begin_n(env, "g", "p-imm", one, 1, 3600000, x->imm);
  begin1(env, "orders", 0, x->p);
  begin1(env, "orders", 0, x->c);
  begin1(env, "orders", 0, x->r);
  assert_int_equal(end_wait(env, x->c, TXMQ_TX_COMMIT, TXMQ_TX_SRC_PRODUCER, NULL), 0);
  assert_int_equal(end_wait(env, x->r, TXMQ_TX_ROLLBACK, TXMQ_TX_SRC_PRODUCER, NULL), 0);
  advance(env, 6000);
  assert_int_equal(txmq_tx_tick(env->tx), 3); /* a, m, p */
  for (size_t k = 0; k < env->tg[0].n; k++) {
    offer_t* o = &env->tg[0].o[k];
    if (memcmp(o->id, x->m, TXMQ_TX_ID_LEN) == 0) continue; /* stays out */
    assert_int_equal(txmq_tx_check_answer(env->tx, o->id, o->seq, TXMQ_TX_UNKNOWN,
                                          TXMQ_TX_SRC_CHECK, "v1", NULL), 0);
  }
  advance(env, 30000);
  /* m's check timed out (counted), a and p are due again. */
  size_t before = env->tg[0].n;
  assert_int_equal(txmq_tx_tick(env->tx), 2);
  for (size_t k = before; k < env->tg[0].n; k++) {
    offer_t* o = &env->tg[0].o[k];
    if (memcmp(o->id, x->p, TXMQ_TX_ID_LEN) == 0)
      assert_int_equal(txmq_tx_check_answer(env->tx, o->id, o->seq, TXMQ_TX_UNKNOWN,
                                            TXMQ_TX_SRC_CHECK, NULL, NULL), 0);
  }
  advance(env, 1234);
  env_sync(env);
  txstate_t s = state_of(env);
  assert_int_equal(s.pending, 3);
  assert_int_equal(s.parked, 1);
}

static int snapshot_exists(env_t* env) {
  int n = 0;
  for (int k = 0; k < 2; k++) {
    char* p = snap_path(env->dir, k);
    n += tu_file_size(p) > 0;
    free(p);
  }
  return n;
}

/* After a clean restart the engine is as it was: pending set, counts, due
 * times, parked ones, gauges; and it got there without replaying the log
 * below the checkpoint. Decided transactions are still known, including
 * one decided before the oldest pending half (which a replay from the
 * replay floor never sees). The same directory opened without the
 * snapshot gives the same state (what the snapshot promises). */
static void snapshot_restores_state(void** state) {
  (void)state;
  env_t* env = env_new("tx-snap");
  env->max_checks = 2;
  env_open_dir(env);
  mixed_t x;
  mixed_state(env, &x);
  txmq_tx_state_t st;
  txstate_t before = state_of(env);
  env_close_engine(env);
  assert_true(snapshot_exists(env) >= 1);

  env_reopen(env, NULL);
  assert_false(diag_has(env, "snapshot"));
  assert_int_equal(txmq_store_replayed(env->st), 0);
  txstate_t after = state_of(env);
  state_equal(&before, &after);
  /* Repeats are recognised, conflicts refused, nothing published twice. */
  assert_int_equal(end_wait(env, x.c, TXMQ_TX_COMMIT, TXMQ_TX_SRC_PRODUCER, &st), 0);
  assert_int_equal(st, TXMQ_TX_COMMITTED);
  assert_int_equal(end_wait(env, x.old, TXMQ_TX_COMMIT, TXMQ_TX_SRC_PRODUCER, &st), 0);
  assert_int_equal(st, TXMQ_TX_COMMITTED);
  assert_int_equal(end_wait(env, x.r, TXMQ_TX_ROLLBACK, TXMQ_TX_SRC_PRODUCER, &st), 0);
  assert_int_equal(st, TXMQ_TX_ROLLED_BACK);
  assert_int_equal(txmq_tx_end(env->tx, x.c, TXMQ_TX_ROLLBACK, TXMQ_TX_SRC_PRODUCER,
                               NULL, NULL, NULL, NULL), TXMQ_ECONFLICT);
  assert_int_equal(txmq_tx_end(env->tx, x.r, TXMQ_TX_COMMIT, TXMQ_TX_SRC_PRODUCER,
                               NULL, NULL, NULL, NULL), TXMQ_ECONFLICT);
  assert_int_equal(visible(env, "orders"), 2);
  /* The schedule goes on as before: the immune one is not due, the parked
   * one is not checked, a's check is out again at once. */
  assert_int_equal(txmq_tx_tick(env->tx), 1);
  assert_memory_equal(last_offer(env, 0)->id, x.a, TXMQ_TX_ID_LEN);
  assert_int_equal(last_offer(env, 0)->count, 1);
  txmq_tx_info_t info;
  assert_int_equal(txmq_tx_show(env->tx, x.p, &info, NULL, NULL), 0);
  assert_int_equal(info.state, TXMQ_TX_PARKED);

  /* A second restart in a row still uses a snapshot (the other slot). */
  env_reopen(env, NULL);
  assert_false(diag_has(env, "snapshot"));
  assert_int_equal(txmq_store_replayed(env->st), 0);
  before = state_of(env);

  /* Without the snapshot: the replay from the floor rebuilds the same. */
  env_close_engine(env);
  env_drop_snapshots(env);
  env_reopen(env, NULL);
  assert_true(diag_has(env, "no snapshot"));
  assert_true(txmq_store_replayed(env->st) > 0);
  after = state_of(env);
  state_equal(&before, &after);
  /* ... except for what lies below the floor: the replay never saw the
   * commit of the transaction begun before every pending one. */
  assert_int_equal(txmq_tx_end(env->tx, x.old, TXMQ_TX_COMMIT, TXMQ_TX_SRC_PRODUCER,
                               NULL, NULL, NULL, NULL), TXMQ_ENOTFOUND);
  env_free(env);
}

static void on_end_quiet(txmq_tx_t* tx, int status, txmq_tx_state_t state,
                         void* arg) {
  (void)tx;
  (void)state;
  assert_int_equal(status, 0);
  (*(int*)arg)++;
}

/* With snapshots rarer than checkpoints, the open after a crash takes the
 * snapshot of an earlier checkpoint and replays the log from there: the
 * engine ends where it was, decisions made after the snapshot included,
 * and the replay is shorter than the one from the replay floor. */
static void snapshot_older_than_checkpoint(void** state) {
  (void)state;
  env_t* env = env_new("tx-snap-older");
  env->max_checks = 2;
  env->snap_interval_ms = 3600000; /* after the first, only at close */
  env_open_dir(env);
  mixed_t x;
  mixed_state(env, &x);
  env_checkpoint(env); /* the first: with a snapshot */
  assert_int_equal(snapshot_exists(env), 1);
  uint8_t d1[TXMQ_TX_ID_LEN], d2[TXMQ_TX_ID_LEN], p2[TXMQ_TX_ID_LEN];
  begin1(env, "orders", 0, d1);
  begin1(env, "orders", 0, p2);
  assert_int_equal(end_wait(env, d1, TXMQ_TX_COMMIT, TXMQ_TX_SRC_PRODUCER, NULL), 0);
  assert_int_equal(end_wait(env, x.a, TXMQ_TX_ROLLBACK, TXMQ_TX_SRC_PRODUCER, NULL), 0);
  env_checkpoint(env); /* within the interval: no snapshot */
  assert_int_equal(snapshot_exists(env), 1);
  begin1(env, "orders", 0, d2);
  assert_int_equal(end_wait(env, d2, TXMQ_TX_ROLLBACK, TXMQ_TX_SRC_PRODUCER, NULL), 0);
  env_sync(env);
  txstate_t before = state_of(env);
  char* img = env_crash_image(env, "tx-snap-older-img");
  char* img2 = env_crash_image(env, "tx-snap-older-img2");
  env_reopen(env, img);
  assert_false(diag_has(env, "replaying the log from the replay floor"));
  uint64_t from_snapshot = txmq_store_replayed(env->st);
  assert_true(from_snapshot > 0);
  txstate_t after = state_of(env);
  state_equal(&before, &after);
  /* Decisions on both sides of the snapshot are still known. */
  assert_int_equal(end_wait(env, d1, TXMQ_TX_COMMIT, TXMQ_TX_SRC_PRODUCER, NULL), 0);
  assert_int_equal(end_wait(env, d2, TXMQ_TX_ROLLBACK, TXMQ_TX_SRC_PRODUCER, NULL), 0);
  assert_int_equal(end_wait(env, x.c, TXMQ_TX_COMMIT, TXMQ_TX_SRC_PRODUCER, NULL), 0);
  /* The same image without snapshots replays more to get there. */
  env_reopen(env, img2);
  env_close_engine(env);
  env_drop_snapshots(env);
  env_reopen(env, NULL);
  assert_true(diag_has(env, "no snapshot"));
  assert_true(txmq_store_replayed(env->st) > from_snapshot);
  after = state_of(env);
  state_equal(&before, &after);
  free(img);
  free(img2);
  env_free(env);
}

/* A checkpoint captured while records of the engine are appended but not
 * applied (a counted check and the park it causes, a commit, a rollback,
 * a resume, a new half): the snapshot holds the state as of the
 * checkpoint's position. With those records on disk the open replays
 * them after the snapshot and ends where the engine was; with them lost
 * (the log cut at the checkpoint) it ends where a replay of the log up to
 * the checkpoint would. Both equal what the open without the snapshot
 * gives. */
static void snapshot_of_unapplied_records(void** state) {
  (void)state;
  env_t* env = env_new("tx-snap-inflight");
  env->max_checks = 2;
  env_open_dir(env);
  uint8_t a[TXMQ_TX_ID_LEN], b[TXMQ_TX_ID_LEN], c[TXMQ_TX_ID_LEN],
      e[TXMQ_TX_ID_LEN];
  begin1(env, "orders", 0, a);
  begin1(env, "orders", 0, b);
  begin1(env, "orders", 0, c);
  begin1(env, "orders", 0, e);
  advance(env, 6000);
  assert_int_equal(txmq_tx_tick(env->tx), 4);
  for (size_t k = 0; k < 4; k++)
    assert_int_equal(txmq_tx_check_answer(env->tx, env->tg[0].o[k].id,
                                          env->tg[0].o[k].seq, TXMQ_TX_UNKNOWN,
                                          TXMQ_TX_SRC_CHECK, NULL, NULL), 0);
  advance(env, 30000);
  assert_int_equal(txmq_tx_tick(env->tx), 4);
  offer_t* oa = NULL;
  for (size_t k = 4; k < 8; k++) {
    offer_t* o = &env->tg[0].o[k];
    if (memcmp(o->id, c, TXMQ_TX_ID_LEN) == 0)
      assert_int_equal(txmq_tx_check_answer(env->tx, o->id, o->seq, TXMQ_TX_UNKNOWN,
                                            TXMQ_TX_SRC_CHECK, NULL, NULL), 0);
    if (memcmp(o->id, a, TXMQ_TX_ID_LEN) == 0) oa = o;
  }
  assert_non_null(oa);
  env_sync(env);
  txstate_t at_ckpt = state_of(env);
  assert_int_equal(at_ckpt.parked, 1); /* c */
  txmq_log_t* log = txmq_store_log(env->st);
  uint64_t applied = txmq_log_next_pos(log);

  int ckpt_done = 0, ends = 0;
  assert_int_equal(txmq_store_checkpoint(env->st, on_ckpt, &ckpt_done), 0);
  /* Before the loop runs again: all of these come after the checkpoint's
   * flush, so none is applied when it captures. */
  assert_int_equal(txmq_tx_check_answer(env->tx, a, oa->seq, TXMQ_TX_UNKNOWN,
                                        TXMQ_TX_SRC_CHECK, NULL, NULL), 0);
  assert_int_equal(txmq_tx_end(env->tx, b, TXMQ_TX_COMMIT, TXMQ_TX_SRC_PRODUCER,
                               NULL, NULL, on_end_quiet, &ends), 0);
  assert_int_equal(txmq_tx_end(env->tx, e, TXMQ_TX_ROLLBACK, TXMQ_TX_SRC_PRODUCER,
                               NULL, NULL, on_end_quiet, &ends), 0);
  assert_int_equal(txmq_tx_resume(env->tx, c, "op", on_end_quiet, &ends), 0);
  txmq_msg_t* m = mk_msg("orders", "late");
  begin_res_t br = {0};
  assert_int_equal(txmq_tx_begin(env->tx, "g", "p1", &m, 1, 0, on_begin, &br), 0);
  txmq_msg_free(m);
  assert_true(tu_run_until(&env->loop, &ckpt_done, 10000));
  while (ends < 3 || !br.done) uv_run(&env->loop, UV_RUN_ONCE);
  env_sync(env);
  assert_true(txmq_log_next_pos(log) > applied);
  txstate_t live = state_of(env);
  assert_int_equal(live.parked, 1);  /* a, parked by its second check */
  assert_int_equal(live.pending, 2); /* c resumed, the new one */
  char* full = env_crash_image(env, "tx-snap-inflight-full");
  char* cut = env_crash_image(env, "tx-snap-inflight-cut");
  char* seg = tu_path(cut, "log/00000000000000000000.log");
  assert_int_equal(
      tu_truncate(seg, (long long)(TXMQ_LOG_SEGMENT_HEADER_SIZE + applied)), 0);
  free(seg);
  char* full2 = tu_tmpdir("tx-snap-inflight-full2");
  char* cut2 = tu_tmpdir("tx-snap-inflight-cut2");
  assert_int_equal(tu_copy_tree(full, full2), 0);
  assert_int_equal(tu_copy_tree(cut, cut2), 0);
  env_close_engine(env);

  /* The records after the checkpoint survived. */
  env_reopen(env, full);
  assert_false(diag_has(env, "snapshot"));
  assert_true(txmq_store_replayed(env->st) > 0);
  txstate_t s = state_of(env);
  state_equal(&live, &s);
  env_close_engine(env);
  env_reopen(env, full2);
  env_close_engine(env);
  env_drop_snapshots(env);
  env_reopen(env, NULL);
  assert_true(diag_has(env, "no snapshot"));
  s = state_of(env);
  state_equal(&live, &s);

  /* They were lost: the engine is as at the checkpoint. */
  env_reopen(env, cut);
  assert_false(diag_has(env, "snapshot"));
  assert_int_equal(txmq_store_replayed(env->st), 0);
  s = state_of(env);
  state_equal(&at_ckpt, &s);
  env_reopen(env, cut2);
  env_close_engine(env);
  env_drop_snapshots(env);
  env_reopen(env, NULL);
  s = state_of(env);
  state_equal(&at_ckpt, &s);
  free(full);
  free(full2);
  free(cut);
  free(cut2);
  env_free(env);
}

/* The current snapshot slot of a closed directory (the higher seq). */
static char* current_snapshot(const char* dir) {
  char* best = NULL;
  uint64_t best_seq = 0;
  for (int k = 0; k < 2; k++) {
    char* p = snap_path(dir, k);
    size_t len = 0;
    uint8_t* b = tu_read_file(p, &len);
    uint64_t seq = 0;
    if (b != NULL && len >= 40)
      for (int j = 7; j >= 0; j--) seq = seq << 8 | b[32 + j];
    free(b);
    if (seq > best_seq) {
      free(best);
      best = p;
      best_seq = seq;
    } else {
      free(p);
    }
  }
  assert_non_null(best);
  return best;
}

static void put_le(uint8_t* p, uint64_t v, int n) {
  for (int j = 0; j < n; j++) p[j] = (uint8_t)(v >> (8 * j));
}

/* The store's envelope: crc32c of bytes 12..end at 8. */
static void fix_crc(uint8_t* b, size_t len) {
  put_le(b + 8, txmq_crc32c(0, b + 12, len - 12), 4);
}

/* A snapshot that is corrupt, cut short, of another checkpoint, of an
 * unknown version or missing is not used: the open says why and replays
 * from the replay floor, and nothing is lost. */
static void snapshot_bad_falls_back(void** state) {
  (void)state;
  env_t* env = env_new("tx-snap-bad");
  env->max_checks = 2;
  env_open_dir(env);
  mixed_t x;
  mixed_state(env, &x);
  env_close_engine(env);
  env_reopen(env, NULL); /* both slots in use now */
  txstate_t want = state_of(env);
  env_close_engine(env);
  char* pristine = tu_tmpdir("tx-snap-bad-pristine");
  assert_int_equal(tu_copy_tree(env->dir, pristine), 0);
  static const struct {
    const char* why;
  } cases[] = {{"crc mismatch"},
               {"does not match the file size"},
               {"as the checkpoint says"},
               {"version"},
               {"bad magic"},
               {"no snapshot"},
               {"refused"}};
  for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
    char* dir = tu_tmpdir("tx-snap-bad-case");
    assert_int_equal(tu_copy_tree(pristine, dir), 0);
    for (int slot = 0; slot < 2; slot++) {
      char* p = snap_path(dir, slot);
      size_t len = 0;
      uint8_t* b = tu_read_file(p, &len);
      assert_non_null(b);
      assert_true(len > 64);
      switch (k) {
        case 0: b[len / 2] ^= 0x10; break;
        case 1: len -= 7; break;
        case 2: put_le(b + 24, UINT64_C(1) << 60, 8); fix_crc(b, len); break;
        case 3: put_le(b + 12, 2, 4); fix_crc(b, len); break;
        case 4: b[0] = 'X'; break;
        case 5: break;
        case 6: put_le(b + 40, 99, 4); fix_crc(b, len); break; /* payload version */
      }
      if (k == 5) assert_int_equal(remove(p), 0);
      else assert_int_equal(tu_write_file(p, b, len), 0);
      free(b);
      free(p);
    }
    env_reopen(env, dir);
    if (!diag_has(env, cases[k].why))
      fprintf(stderr, "case %zu: diag \"%s\"\n", k, txmq_store_diag(env->st));
    assert_true(diag_has(env, cases[k].why));
    assert_true(diag_has(env, "replaying the log from the replay floor"));
    assert_true(txmq_store_replayed(env->st) > 0);
    txstate_t s = state_of(env);
    state_equal(&want, &s);
    assert_int_equal(end_wait(env, x.c, TXMQ_TX_COMMIT, TXMQ_TX_SRC_PRODUCER, NULL), 0);
    env_close_engine(env);
    free(dir);
  }
  tu_rmrf(pristine);
  free(pristine);
  env_free(env);
}

/* Hostile snapshots: random damage to a real one with its crc made right
 * again (so that the engine's own checks are what stands in the way), to
 * its counts, its strings and its envelope. Every open must succeed, with
 * the snapshot or without it, and what it loads must hold together. Run
 * under ASan and UBSan by the sanitizer pass; TXMQ_SNAP_FUZZ_ROUNDS sets
 * the rounds. */
static void snapshot_loader_mutations(void** state) {
  (void)state;
  env_t* env = env_new("tx-snap-fuzz");
  env->max_checks = 2;
  env_open_dir(env);
  mixed_t x;
  mixed_state(env, &x);
  env_close_engine(env);
  char* pristine = tu_tmpdir("tx-snap-fuzz-pristine");
  assert_int_equal(tu_copy_tree(env->dir, pristine), 0);
  char* cur = current_snapshot(pristine);
  size_t good_len = 0;
  uint8_t* good = tu_read_file(cur, &good_len);
  assert_non_null(good);
  free(cur);
  const char* env_rounds = getenv("TXMQ_SNAP_FUZZ_ROUNDS");
  int rounds = env_rounds ? atoi(env_rounds) : 120;
  unsigned seed = (unsigned)time(NULL);
  if (getenv("TXMQ_SNAP_FUZZ_SEED")) seed = (unsigned)atoi(getenv("TXMQ_SNAP_FUZZ_SEED"));
  fprintf(stderr, "snapshot_loader_mutations: seed %u, %d rounds\n", seed, rounds);
  srand(seed);
  int used = 0;
  for (int r = 0; r < rounds; r++) {
    size_t len = good_len;
    uint8_t* b = malloc(good_len);
    assert_non_null(b);
    memcpy(b, good, good_len);
    int kind = rand() % 6;
    size_t pay = 40; /* payload start */
    switch (kind) {
      case 0: /* a few random bytes anywhere in the payload */
        for (int j = 1 + rand() % 4; j > 0; j--)
          b[pay + (size_t)rand() % (len - pay)] ^= (uint8_t)(1 + rand() % 255);
        break;
      case 1: /* a count or size of the payload's head */
        put_le(b + pay + 4 * (size_t)(1 + rand() % 5),
               rand() % 2 ? (uint64_t)rand() : UINT32_MAX - (uint64_t)(rand() % 4), 4);
        break;
      case 2: { /* cut short, the lengths told */
        len = pay + (size_t)rand() % (len - pay);
        put_le(b + 16, len - 40, 8);
        break;
      }
      case 3: /* a field of an entry or a decided one, near the end */
        b[len - 1 - (size_t)rand() % (len / 2)] = (uint8_t)rand();
        break;
      case 4: /* a byte of the envelope's head */
        b[8 + (size_t)rand() % 32] ^= (uint8_t)(1 + rand() % 255);
        break;
      case 5: /* a string's length */
        put_le(b + pay + 24, (uint64_t)rand() % 300, 4);
        break;
    }
    if (rand() % 8 != 0) fix_crc(b, len);
    tu_rmrf(env->dir);
    assert_int_equal(tu_copy_tree(pristine, env->dir), 0);
    for (int slot = 0; slot < 2; slot++) {
      char* p = snap_path(env->dir, slot);
      remove(p);
      if (slot == 0) assert_int_equal(tu_write_file(p, b, len), 0);
      free(p);
    }
    free(b);
    memset(env->tg, 0, sizeof env->tg);
    env_open_dir(env);
    if (!diag_has(env, "snapshot")) used++;
    txstate_t s = state_of(env);
    assert_int_equal(s.n, s.pending + s.parked);
    advance(env, 3600000);
    txmq_tx_tick(env->tx);
    txmq_tx_end(env->tx, x.c, TXMQ_TX_COMMIT, TXMQ_TX_SRC_PRODUCER, NULL, NULL,
                NULL, NULL);
    env_close_engine(env);
  }
  fprintf(stderr, "snapshot_loader_mutations: %d of %d opens used the damaged "
          "snapshot\n", used, rounds);
  free(good);
  tu_rmrf(pristine);
  free(pristine);
  env_free(env);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(unknown_check_commit),
      cmocka_unit_test(producer_group_limit),
      cmocka_unit_test(unknown_check_rollback),
      cmocka_unit_test(park_after_max_then_resume),
      cmocka_unit_test(operator_decides_parked),
      cmocka_unit_test(show_chain_into_another_half),
      cmocka_unit_test(replay_skips_half_with_invalid_topic),
      cmocka_unit_test(snapshot_entry_commit_reads_the_half),
      cmocka_unit_test(failed_operator_decision_stays_parked),
      cmocka_unit_test(operator_commit_of_unreadable_half_refused),
      cmocka_unit_test(repeated_commit_visible_once),
      cmocka_unit_test(conflicting_decisions_refused),
      cmocka_unit_test(late_commit_after_park),
      cmocka_unit_test(no_check_after_decision),
      cmocka_unit_test(immunity_does_not_spend_budget),
      cmocka_unit_test(undeliverable_not_counted),
      cmocka_unit_test(failed_check_reoffered_uncounted),
      cmocka_unit_test(check_timeout_counts),
      cmocka_unit_test(backoff_grows_interval),
      cmocka_unit_test(kick_group_reoffers),
      cmocka_unit_test(multi_message_all_at_once),
      cmocka_unit_test(crash_between_half_and_decision),
      cmocka_unit_test(crash_during_multi_commit),
      cmocka_unit_test(execute_unknown_keeps_schedule_after_restart),
      cmocka_unit_test(decided_not_checked_after_restart),
      cmocka_unit_test(retention_keeps_undecided_half),
      cmocka_unit_test(show_full_history),
      cmocka_unit_test(metrics_count),
      cmocka_unit_test(tick_cost_follows_due_checks),
      cmocka_unit_test(names_and_ids),
      cmocka_unit_test(bad_arguments),
      cmocka_unit_test(begin_take_hands_messages_over),
      cmocka_unit_test(hostile_records_at_replay),
      cmocka_unit_test(undecodable_message_never_published),
      cmocka_unit_test(unreadable_half_parks),
      cmocka_unit_test(park_redone_after_lost_park_record),
      cmocka_unit_test(lowered_max_checks_parks),
      cmocka_unit_test(failed_resume_keeps_count),
      cmocka_unit_test(no_check_offered_after_close),
      cmocka_unit_test(snapshot_restores_state),
      cmocka_unit_test(snapshot_of_unapplied_records),
      cmocka_unit_test(snapshot_bad_falls_back),
      cmocka_unit_test(snapshot_older_than_checkpoint),
      cmocka_unit_test(snapshot_loader_mutations),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
