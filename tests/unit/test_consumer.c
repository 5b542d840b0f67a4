/*
 * test_consumer.c - consumer groups over a real store: clustering between
 * members and groups, redelivery after the visibility timeout, stale and
 * malformed handles, the dead-letter topic, tag filters (with a tags-hash
 * collision), start positions, committed offsets across a restart, the
 * in-flight cap, the group limit, retention under a group, the wake
 * callback (put, publish, redelivery, room under the cap) and bad input.
 *
 * Every test has its own directory, store and engine on a manual clock (one
 * test uses the real timer with a short timeout), and closes its loop
 * cleanly.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "txmq/consumer.h"
#include "txmq/error.h"
#include "txmq/msg.h"
#include "txmq/store.h"
#include "store/store_int.h"
#include "testutil.h"

#define REC_FOREIGN 20
#define MAXW 64

/* ---- fixture ---- */

typedef struct {
  char group[TXMQ_NAME_MAX + 1];
  char topic[TXMQ_NAME_MAX + 1];
} wake_t;

typedef struct {
  uv_loop_t loop;
  char* root;
  char* dir;
  txmq_store_t* st;
  txmq_consumers_t* cs;
  uint64_t now;
  wake_t wakes[MAXW];
  int nwakes;
  int manual;
  int64_t segment_size, retain_bytes;
  uint64_t floor; /* replay floor, holds retention back until released */
} fx_t;

static uint64_t fx_clock(void* arg) { return ((fx_t*)arg)->now; }

static void on_wake(void* arg, const char* group, const char* topic) {
  fx_t* fx = arg;
  if (fx->nwakes == MAXW) return;
  snprintf(fx->wakes[fx->nwakes].group, sizeof fx->wakes[0].group, "%s", group);
  snprintf(fx->wakes[fx->nwakes].topic, sizeof fx->wakes[0].topic, "%s", topic);
  fx->nwakes++;
}

static int decode_foreign(void* arg, const txmq_log_entry_t* e, uint32_t sub,
                          txmq_msg_t** out) {
  (void)arg;
  if (sub != 0) return TXMQ_EPROTO;
  return txmq_msg_decode(e->data, e->len, out);
}

static uint64_t floor_cb(txmq_store_t* st, void* arg) {
  (void)st;
  return ((fx_t*)arg)->floor;
}

static void store_open(fx_t* fx) {
  assert_int_equal(txmq_store_new(&fx->st, &fx->loop, fx->dir), 0);
  assert_int_equal(txmq_store_set(fx->st, TXMQ_STORE_OPT_SYNC, TXMQ_SYNC_NEVER), 0);
  assert_int_equal(txmq_store_set(fx->st, TXMQ_STORE_OPT_CHECKPOINT_INTERVAL_MS, 0), 0);
  if (fx->segment_size)
    assert_int_equal(txmq_store_set(fx->st, TXMQ_STORE_OPT_SEGMENT_SIZE, fx->segment_size), 0);
  if (fx->retain_bytes)
    assert_int_equal(txmq_store_set(fx->st, TXMQ_STORE_OPT_RETAIN_BYTES, fx->retain_bytes), 0);
  assert_int_equal(txmq__store_set_index_file_entries(fx->st, 64), 0);
  assert_int_equal(txmq__store_set_decoder(fx->st, REC_FOREIGN, decode_foreign, NULL), 0);
  txmq_store_set_replay_floor_cb(fx->st, floor_cb, fx);
  int rc = txmq_store_open(fx->st);
  if (rc != 0) fail_msg("store open: %s: %s", txmq_err_name(rc), txmq_store_diag(fx->st));
}

static void engine_new(fx_t* fx) {
  assert_int_equal(txmq_consumers_new(&fx->cs, &fx->loop, fx->st), 0);
  if (fx->manual) {
    assert_int_equal(txmq_consumers_set(fx->cs, TXMQ_CONSUMERS_OPT_MANUAL_CLOCK, 1), 0);
    txmq_consumers_set_clock(fx->cs, fx_clock, fx);
  }
  assert_int_equal(txmq_consumers_set(fx->cs, TXMQ_CONSUMERS_OPT_VISIBILITY_MS, 1000), 0);
  txmq_consumers_set_wake_cb(fx->cs, on_wake, fx);
}

static void engine_start(fx_t* fx) {
  engine_new(fx);
  assert_int_equal(txmq_consumers_start(fx->cs), 0);
}

static void on_cs_closed(txmq_consumers_t* cs, void* arg) {
  (void)cs;
  *(int*)arg = 1;
}

static void on_st_closed(txmq_store_t* st, int status, void* arg) {
  (void)st;
  int* r = arg;
  r[0] = 1;
  r[1] = status;
}

/* Engine first (its close waits for its DLQ puts), then the store. */
static void close_all(fx_t* fx) {
  if (fx->cs != NULL) {
    int done = 0;
    assert_int_equal(txmq_consumers_close(fx->cs, on_cs_closed, &done), 0);
    assert_true(tu_run_until(&fx->loop, &done, 10000));
    txmq_consumers_free(fx->cs);
    fx->cs = NULL;
  }
  if (fx->st != NULL) {
    int r[2] = {0, -999};
    assert_int_equal(txmq_store_close(fx->st, on_st_closed, r), 0);
    assert_true(tu_run_until(&fx->loop, &r[0], 10000));
    assert_int_equal(r[1], 0);
    txmq_store_free(fx->st);
    fx->st = NULL;
  }
}

static int setup_common(void** state, int manual) {
  fx_t* fx = calloc(1, sizeof *fx);
  assert_int_equal(uv_loop_init(&fx->loop), 0);
  fx->root = tu_tmpdir("consumer");
  fx->dir = tu_path(fx->root, "data");
  fx->manual = manual;
  fx->now = 1000000;
  fx->floor = UINT64_MAX;
  store_open(fx);
  engine_start(fx);
  *state = fx;
  return 0;
}

static int fx_setup(void** state) { return setup_common(state, 1); }
static int fx_setup_real_clock(void** state) { return setup_common(state, 0); }

/* For tests that tune the store: nothing is opened. */
static int fx_setup_bare(void** state) {
  fx_t* fx = calloc(1, sizeof *fx);
  assert_int_equal(uv_loop_init(&fx->loop), 0);
  fx->root = tu_tmpdir("consumer");
  fx->dir = tu_path(fx->root, "data");
  fx->manual = 1;
  fx->now = 1000000;
  fx->floor = UINT64_MAX;
  *state = fx;
  return 0;
}

static int fx_teardown(void** state) {
  fx_t* fx = *state;
  close_all(fx);
  tu_loop_close_clean(&fx->loop);
  tu_rmrf(fx->root);
  free(fx->root);
  free(fx->dir);
  free(fx);
  return 0;
}

/* ---- helpers ---- */

typedef struct {
  int done;
  int status;
  int qid;
  int64_t off;
  char id[TXMQ_MSG_ID_STRLEN + 1];
} put_res_t;

static void on_put(txmq_store_t* st, int status, const txmq_msg_t* msg, void* arg) {
  (void)st;
  put_res_t* r = arg;
  r->done = 1;
  r->status = status;
  if (status == 0) {
    r->qid = txmq_msg_queue_id(msg);
    r->off = txmq_msg_queue_offset(msg);
    txmq_msg_id_str(msg, r->id);
  }
}

/* Puts a message and waits for it to be visible; returns its offset. */
static int64_t put_full(fx_t* fx, const char* topic, int qid, const char* tags,
                        const char* body, put_res_t* out) {
  txmq_msg_t* m = txmq_msg_new();
  assert_int_equal(txmq_msg_set_topic(m, topic), 0);
  assert_int_equal(txmq_msg_set_body(m, body, strlen(body)), 0);
  if (tags) assert_int_equal(txmq_msg_set_tags(m, tags), 0);
  txmq_msg_set_queue_id(m, qid);
  put_res_t r;
  memset(&r, 0, sizeof r);
  assert_int_equal(txmq_store_put(fx->st, m, on_put, &r), 0);
  txmq_msg_free(m);
  assert_true(tu_run_until(&fx->loop, &r.done, 10000));
  assert_int_equal(r.status, 0);
  if (out) *out = r;
  return r.off;
}

static int64_t put(fx_t* fx, const char* topic, int qid, const char* tags,
                   const char* body) {
  return put_full(fx, topic, qid, tags, body, NULL);
}

static void topic(fx_t* fx, const char* name, int nq) {
  assert_int_equal(txmq_store_create_topic(fx->st, name, nq), 0);
}

/* Receives and checks the return code. */
static txmq_delivery_t* recv_from(fx_t* fx, const char* group, const char* t,
                                  const char* filter, size_t max,
                                  txmq_from_t from, int64_t off, size_t* n) {
  txmq_delivery_t* d = NULL;
  int rc = txmq_consumers_receive(fx->cs, group, t, filter, max, 0, from, off,
                                  &d, n);
  if (rc != 0) fail_msg("receive %s/%s: %s", group, t, txmq_err_name(rc));
  if (*n == 0) assert_null(d);
  return d;
}

static txmq_delivery_t* rcv(fx_t* fx, const char* group, const char* t,
                            const char* filter, size_t max, size_t* n) {
  return recv_from(fx, group, t, filter, max, TXMQ_FROM_EARLIEST, 0, n);
}

static const char* body_of(const txmq_delivery_t* d) {
  static char buf[256];
  size_t len;
  const void* b = txmq_msg_body(d->msg, &len);
  if (len >= sizeof buf) len = sizeof buf - 1;
  memcpy(buf, b, len);
  buf[len] = '\0';
  return buf;
}

static void ack_all(fx_t* fx, const char* group, txmq_delivery_t* d, size_t n) {
  for (size_t i = 0; i < n; i++) {
    int rc = txmq_consumers_ack(fx->cs, group, d[i].handle);
    if (rc != 0) fail_msg("ack %s: %s", d[i].handle, txmq_err_name(rc));
  }
}

/* Runs the loop without blocking so that pending wakes are delivered. */
static void spin(fx_t* fx) {
  for (int i = 0; i < 4; i++) uv_run(&fx->loop, UV_RUN_NOWAIT);
}

static int woken(const fx_t* fx, const char* group, const char* t) {
  int n = 0;
  for (int i = 0; i < fx->nwakes; i++)
    if (strcmp(fx->wakes[i].group, group) == 0 && strcmp(fx->wakes[i].topic, t) == 0)
      n++;
  return n;
}

static void progress(fx_t* fx, const char* group, const char* t, int qid,
                     int64_t committed, int64_t next, size_t inflight) {
  int64_t c = -1, nx = -1;
  size_t inf = 999;
  assert_int_equal(txmq_consumers_progress(fx->cs, group, t, qid, &c, &nx, &inf), 0);
  assert_int_equal(c, committed);
  assert_int_equal(nx, next);
  assert_int_equal(inf, inflight);
}

/* ---- tests ---- */

static void clustering_members_and_groups(void** state) {
  fx_t* fx = *state;
  topic(fx, "orders", 4);
  for (int i = 0; i < 40; i++) {
    char b[16];
    snprintf(b, sizeof b, "m%02d", i);
    put(fx, "orders", -1, NULL, b);
  }
  /* Two members of "g" take turns: each message reaches exactly one. */
  int seen[40] = {0};
  int per_member[2] = {0, 0};
  for (int turn = 0;; turn++) {
    size_t n;
    txmq_delivery_t* d = rcv(fx, "g", "orders", "*", 3, &n);
    if (n == 0) {
      /* The other member gets nothing either. */
      d = rcv(fx, "g", "orders", NULL, 3, &n);
      assert_int_equal(n, 0);
      break;
    }
    for (size_t i = 0; i < n; i++) {
      int k = atoi(body_of(&d[i]) + 1);
      assert_int_equal(seen[k], 0);
      seen[k] = 1;
      assert_int_equal(d[i].deliveries, 1);
      assert_int_equal(txmq_msg_queue_offset(d[i].msg) >= 0, 1);
    }
    per_member[turn % 2] += (int)n;
    ack_all(fx, "g", d, n);
    txmq_consumers_free_deliveries(d, n);
  }
  for (int i = 0; i < 40; i++) assert_int_equal(seen[i], 1);
  assert_true(per_member[0] > 0 && per_member[1] > 0);
  for (int q = 0; q < 4; q++) progress(fx, "g", "orders", q, 10, 10, 0);

  /* Another group gets everything again, in round robin over the queues. */
  size_t n;
  txmq_delivery_t* d = rcv(fx, "g2", "orders", "*", 256, &n);
  assert_int_equal(n, 40);
  int perq[4] = {0};
  for (size_t i = 0; i < 4; i++) perq[txmq_msg_queue_id(d[i].msg)]++;
  for (int q = 0; q < 4; q++) assert_int_equal(perq[q], 1);
  for (int i = 0; i < 40; i++) seen[i] = 0;
  for (size_t i = 0; i < n; i++) seen[atoi(body_of(&d[i]) + 1)]++;
  for (int i = 0; i < 40; i++) assert_int_equal(seen[i], 1);
  for (int q = 0; q < 4; q++) progress(fx, "g2", "orders", q, 0, 10, 10);
  ack_all(fx, "g2", d, n);
  txmq_consumers_free_deliveries(d, n);
  for (int q = 0; q < 4; q++) progress(fx, "g2", "orders", q, 10, 10, 0);
  /* Committed offsets went to the store. */
  int64_t off;
  assert_int_equal(txmq_store_offset_get(fx->st, "g2", "orders", 3, &off), 0);
  assert_int_equal(off, 10);
}

static void redelivery_after_visibility_timeout(void** state) {
  fx_t* fx = *state;
  topic(fx, "t", 1);
  put(fx, "t", 0, NULL, "one");
  put(fx, "t", 0, NULL, "two");
  size_t n;
  txmq_delivery_t* d = rcv(fx, "g", "t", NULL, 1, &n);
  assert_int_equal(n, 1);
  assert_string_equal(body_of(&d[0]), "one");
  char first[TXMQ_CONSUMER_HANDLE_MAX];
  strcpy(first, d[0].handle);
  txmq_consumers_free_deliveries(d, n);
  progress(fx, "g", "t", 0, 0, 1, 1);

  /* Not yet due. */
  fx->now += 999;
  assert_int_equal(txmq_consumers_tick(fx->cs), 0);
  spin(fx);
  assert_int_equal(woken(fx, "g", "t"), 0);
  /* Due: the group is woken, and the message comes before newer ones. */
  fx->now += 1;
  assert_int_equal(txmq_consumers_tick(fx->cs), 1);
  spin(fx);
  assert_int_equal(woken(fx, "g", "t"), 1);
  d = rcv(fx, "g", "t", NULL, 2, &n);
  assert_int_equal(n, 2);
  assert_string_equal(body_of(&d[0]), "one");
  assert_int_equal(d[0].deliveries, 2);
  assert_string_not_equal(d[0].handle, first);
  assert_string_equal(body_of(&d[1]), "two");
  assert_int_equal(d[1].deliveries, 1);
  /* The first handle is stale now. */
  assert_int_equal(txmq_consumers_ack(fx->cs, "g", first), TXMQ_ENOTFOUND);
  ack_all(fx, "g", d, n);
  txmq_consumers_free_deliveries(d, n);
  progress(fx, "g", "t", 0, 2, 2, 0);
  fx->now += 5000;
  assert_int_equal(txmq_consumers_tick(fx->cs), 0);
  d = rcv(fx, "g", "t", NULL, 2, &n);
  assert_int_equal(n, 0);

  /* A receive may ask for its own visibility timeout. */
  put(fx, "t", 0, NULL, "three");
  assert_int_equal(txmq_consumers_receive(fx->cs, "g", "t", NULL, 1, 5000,
                                          TXMQ_FROM_EARLIEST, 0, &d, &n), 0);
  assert_int_equal(n, 1);
  txmq_consumers_free_deliveries(d, n);
  fx->now += 4999;
  assert_int_equal(txmq_consumers_tick(fx->cs), 0);
  fx->now += 1;
  assert_int_equal(txmq_consumers_tick(fx->cs), 1);
  d = rcv(fx, "g", "t", NULL, 5, &n);
  assert_int_equal(n, 1);
  assert_int_equal(d[0].deliveries, 2);
  txmq_consumers_free_deliveries(d, n);
}

static void ack_refuses_stale_and_malformed_handles(void** state) {
  fx_t* fx = *state;
  topic(fx, "t", 2);
  put(fx, "t", 0, NULL, "a");
  put(fx, "t", 1, NULL, "b");
  size_t n;
  txmq_delivery_t* d = rcv(fx, "g", "t", NULL, 2, &n);
  assert_int_equal(n, 2);
  /* Another group cannot acknowledge it. */
  assert_int_equal(txmq_consumers_ack(fx->cs, "other", d[0].handle), TXMQ_ENOTFOUND);
  assert_int_equal(txmq_consumers_ack(fx->cs, "g", d[0].handle), 0);
  /* Twice is once too many. */
  assert_int_equal(txmq_consumers_ack(fx->cs, "g", d[0].handle), TXMQ_ENOTFOUND);
  /* Past the deadline it is refused even before a tick expired it. */
  fx->now += 1000;
  assert_int_equal(txmq_consumers_ack(fx->cs, "g", d[1].handle), TXMQ_ENOTFOUND);
  /* A handle with its offset changed does not match its nonce. */
  char forged[TXMQ_CONSUMER_HANDLE_MAX];
  strcpy(forged, d[1].handle);
  forged[2] = forged[2] == '0' ? '1' : '0';
  assert_int_equal(txmq_consumers_ack(fx->cs, "g", forged), TXMQ_ENOTFOUND);
  txmq_consumers_free_deliveries(d, n);

  const char* bad[] = {"", "1", "1.2", "1.2.", ".1.2", "1.2.3.4", "x.1.2",
                       "1.2.g", "1.-2.3", "100.1.1", "1.11111111111111111.1",
                       "1.1.11111111111111111", "1.8000000000000000.1",
                       "1.2.3 ", "A.2.3",
                       "1.2.3333333333333333333333333333333333333333333333333333333333333333333"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    int rc = txmq_consumers_ack(fx->cs, "g", bad[i]);
    if (rc != TXMQ_EINVAL) fail_msg("handle \"%s\": %s", bad[i], txmq_err_name(rc));
  }
  assert_int_equal(txmq_consumers_ack(fx->cs, "g", NULL), TXMQ_EINVAL);
  assert_int_equal(txmq_consumers_ack(fx->cs, "bad/group", "1.2.3"), TXMQ_EBADNAME);
  /* Well formed but unknown. */
  assert_int_equal(txmq_consumers_ack(fx->cs, "g", "0.0.1234"), TXMQ_ENOTFOUND);
}

static void dead_letter_after_max_deliveries(void** state) {
  fx_t* fx = *state;
  assert_int_equal(txmq_consumers_set(fx->cs, TXMQ_CONSUMERS_OPT_MAX_DELIVERIES, 3), 0);
  topic(fx, "pay", 1);
  txmq_msg_t* m = txmq_msg_new();
  assert_int_equal(txmq_msg_set_topic(m, "pay"), 0);
  assert_int_equal(txmq_msg_set_tags(m, "TagA"), 0);
  assert_int_equal(txmq_msg_set_keys(m, "order-17"), 0);
  assert_int_equal(txmq_msg_set_body(m, "poison", 6), 0);
  assert_int_equal(txmq_msg_prop_set(m, "trace", "abc"), 0);
  txmq_msg_set_born_ms(m, 1234567);
  put_res_t orig;
  memset(&orig, 0, sizeof orig);
  assert_int_equal(txmq_store_put(fx->st, m, on_put, &orig), 0);
  txmq_msg_free(m);
  assert_true(tu_run_until(&fx->loop, &orig.done, 10000));
  put(fx, "pay", 0, "TagA", "fine");

  /* A reader of the DLQ, waiting before it exists. */
  assert_int_equal(txmq_store_create_topic(fx->st, "DLQ.g", 1), 0);
  size_t n;
  txmq_delivery_t* d = rcv(fx, "dlqreader", "DLQ.g", NULL, 1, &n);
  assert_int_equal(n, 0);

  for (uint32_t k = 1; k <= 3; k++) {
    d = rcv(fx, "g", "pay", "TagA", 1, &n);
    assert_int_equal(n, 1);
    assert_string_equal(body_of(&d[0]), "poison");
    assert_int_equal(d[0].deliveries, k);
    txmq_consumers_free_deliveries(d, n);
    fx->now += 1000;
    assert_int_equal(txmq_consumers_tick(fx->cs), 1);
  }
  /* The third expiry started the DLQ put; wait for it. */
  for (int i = 0; i < 1000 && woken(fx, "dlqreader", "DLQ.g") == 0; i++)
    uv_run(&fx->loop, UV_RUN_ONCE);
  assert_int_equal(woken(fx, "dlqreader", "DLQ.g"), 1);
  progress(fx, "g", "pay", 0, 1, 1, 0);

  d = rcv(fx, "dlqreader", "DLQ.g", NULL, 5, &n);
  assert_int_equal(n, 1);
  const txmq_msg_t* q = d[0].msg;
  assert_string_equal(txmq_msg_topic(q), "DLQ.g");
  assert_string_equal(body_of(&d[0]), "poison");
  assert_string_equal(txmq_msg_tags(q), "TagA");
  assert_string_equal(txmq_msg_keys(q), "order-17");
  assert_int_equal(txmq_msg_born_ms(q), 1234567);
  assert_string_equal(txmq_msg_prop_get(q, "trace"), "abc");
  assert_string_equal(txmq_msg_prop_get(q, "DLQ_ORIGIN_TOPIC"), "pay");
  assert_string_equal(txmq_msg_prop_get(q, "DLQ_ORIGIN_QID"), "0");
  assert_string_equal(txmq_msg_prop_get(q, "DLQ_ORIGIN_OFFSET"), "0");
  assert_string_equal(txmq_msg_prop_get(q, "DLQ_ORIGIN_MSG_ID"), orig.id);
  char idbuf[TXMQ_MSG_ID_STRLEN + 1];
  assert_string_not_equal(txmq_msg_id_str(q, idbuf), orig.id);
  ack_all(fx, "dlqreader", d, n);
  txmq_consumers_free_deliveries(d, n);

  /* Never again for the group, whatever the clock does. */
  d = rcv(fx, "g", "pay", "TagA", 5, &n);
  assert_int_equal(n, 1);
  assert_string_equal(body_of(&d[0]), "fine");
  ack_all(fx, "g", d, n);
  txmq_consumers_free_deliveries(d, n);
  fx->now += 100000;
  assert_int_equal(txmq_consumers_tick(fx->cs), 0);
  d = rcv(fx, "g", "pay", "TagA", 5, &n);
  assert_int_equal(n, 0);
  progress(fx, "g", "pay", 0, 2, 2, 0);
}

static void tag_filters(void** state) {
  fx_t* fx = *state;
  /* Two tags with the same FNV-1a hash: the index cannot tell them apart,
   * the exact comparison must. */
  assert_int_equal(txmq_store_tags_hash("t439599"), txmq_store_tags_hash("t622382"));
  topic(fx, "f", 1);
  const char* tags[] = {"A", "B", "C", NULL, "A", "t622382", "B", NULL};
  for (int i = 0; i < 8; i++) {
    char b[8];
    snprintf(b, sizeof b, "%d", i);
    put(fx, "f", 0, tags[i], b);
  }
  struct {
    const char* group;
    const char* filter;
    const char* want;
  } cases[] = {
      {"ab", "A || B", "0146"},
      {"all", "*", "01234567"},
      {"allnull", NULL, "01234567"},
      {"c", "C", "2"},
      {"spaces", "  C||A ", "024"},
      {"coll", "t439599", ""},
      {"coll2", "t622382", "5"},
      {"none", "Z", ""},
  };
  for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
    size_t n;
    txmq_delivery_t* d = rcv(fx, cases[c].group, "f", cases[c].filter, 256, &n);
    char got[16] = "";
    for (size_t i = 0; i < n; i++) strcat(got, body_of(&d[i]));
    if (strcmp(got, cases[c].want) != 0)
      fail_msg("filter \"%s\": got \"%s\", want \"%s\"",
               cases[c].filter ? cases[c].filter : "(null)", got, cases[c].want);
    /* Skipped messages count as consumed: once the matching ones are
     * acknowledged the group is past everything. */
    int64_t committed, next;
    size_t inflight;
    assert_int_equal(txmq_consumers_progress(fx->cs, cases[c].group, "f", 0,
                                             &committed, &next, &inflight), 0);
    assert_int_equal(next, 8);
    assert_int_equal(inflight, n);
    if (n > 0) assert_int_equal(committed, txmq_msg_queue_offset(d[0].msg));
    else assert_int_equal(committed, 8);
    ack_all(fx, cases[c].group, d, n);
    txmq_consumers_free_deliveries(d, n);
    progress(fx, cases[c].group, "f", 0, 8, 8, 0);
  }
  /* Acknowledged out of order, committed waits for the lowest. */
  size_t n;
  txmq_delivery_t* d = rcv(fx, "ooo", "f", "A || B", 256, &n);
  assert_int_equal(n, 4); /* offsets 0 1 4 6 */
  assert_int_equal(txmq_consumers_ack(fx->cs, "ooo", d[2].handle), 0);
  assert_int_equal(txmq_consumers_ack(fx->cs, "ooo", d[1].handle), 0);
  progress(fx, "ooo", "f", 0, 0, 8, 2);
  assert_int_equal(txmq_consumers_ack(fx->cs, "ooo", d[0].handle), 0);
  progress(fx, "ooo", "f", 0, 6, 8, 1);
  assert_int_equal(txmq_consumers_ack(fx->cs, "ooo", d[3].handle), 0);
  progress(fx, "ooo", "f", 0, 8, 8, 0);
  txmq_consumers_free_deliveries(d, n);
}

static void start_positions(void** state) {
  fx_t* fx = *state;
  topic(fx, "s", 1);
  for (int i = 0; i < 5; i++) put(fx, "s", 0, NULL, "x");
  size_t n;
  txmq_delivery_t* d = recv_from(fx, "e", "s", NULL, 256, TXMQ_FROM_EARLIEST, 0, &n);
  assert_int_equal(n, 5);
  txmq_consumers_free_deliveries(d, n);
  d = recv_from(fx, "l", "s", NULL, 256, TXMQ_FROM_LATEST, 0, &n);
  assert_int_equal(n, 0);
  progress(fx, "l", "s", 0, 5, 5, 0);
  d = recv_from(fx, "o", "s", NULL, 256, TXMQ_FROM_OFFSET, 3, &n);
  assert_int_equal(n, 2);
  assert_int_equal(txmq_msg_queue_offset(d[0].msg), 3);
  txmq_consumers_free_deliveries(d, n);
  d = recv_from(fx, "big", "s", NULL, 256, TXMQ_FROM_OFFSET, 1000, &n);
  assert_int_equal(n, 0);
  progress(fx, "big", "s", 0, 5, 5, 0);

  put(fx, "s", 0, NULL, "new");
  /* from only counts the first time. */
  d = recv_from(fx, "l", "s", NULL, 256, TXMQ_FROM_EARLIEST, 0, &n);
  assert_int_equal(n, 1);
  assert_int_equal(txmq_msg_queue_offset(d[0].msg), 5);
  ack_all(fx, "l", d, n);
  txmq_consumers_free_deliveries(d, n);

  /* The start of a "latest" group is saved at once: a restart does not
   * move it to the new end. */
  d = recv_from(fx, "l2", "s", NULL, 256, TXMQ_FROM_LATEST, 0, &n);
  assert_int_equal(n, 0);
  close_all(fx);
  store_open(fx);
  put(fx, "s", 0, NULL, "after");
  engine_start(fx);
  d = recv_from(fx, "l2", "s", NULL, 256, TXMQ_FROM_LATEST, 0, &n);
  assert_int_equal(n, 1);
  assert_string_equal(body_of(&d[0]), "after");
  txmq_consumers_free_deliveries(d, n);
}

static void committed_offset_survives_restart(void** state) {
  fx_t* fx = *state;
  topic(fx, "r", 1);
  for (int i = 0; i < 5; i++) {
    char b[8];
    snprintf(b, sizeof b, "%d", i);
    put(fx, "r", 0, NULL, b);
  }
  size_t n;
  txmq_delivery_t* d = rcv(fx, "g", "r", NULL, 256, &n);
  assert_int_equal(n, 5);
  assert_int_equal(txmq_consumers_ack(fx->cs, "g", d[0].handle), 0);
  assert_int_equal(txmq_consumers_ack(fx->cs, "g", d[1].handle), 0);
  assert_int_equal(txmq_consumers_ack(fx->cs, "g", d[3].handle), 0);
  progress(fx, "g", "r", 0, 2, 5, 2);
  txmq_consumers_free_deliveries(d, n);

  close_all(fx);
  store_open(fx);
  engine_start(fx);
  /* Before the group reads again, progress comes from the store. */
  progress(fx, "g", "r", 0, 2, 2, 0);
  assert_int_equal(txmq_consumers_progress(fx->cs, "nobody", "r", 0, NULL, NULL, NULL),
                   TXMQ_ENOTFOUND);
  /* Everything from the lowest unacknowledged on comes again (at least
   * once), as a first delivery of this run. */
  d = rcv(fx, "g", "r", NULL, 256, &n);
  assert_int_equal(n, 3);
  assert_string_equal(body_of(&d[0]), "2");
  assert_string_equal(body_of(&d[1]), "3");
  assert_string_equal(body_of(&d[2]), "4");
  assert_int_equal(d[0].deliveries, 1);
  ack_all(fx, "g", d, n);
  txmq_consumers_free_deliveries(d, n);
  progress(fx, "g", "r", 0, 5, 5, 0);
}

/* At most MAX_GROUPS groups: a receive or an offset_set for one more is
 * ERANGE naming the limit (and takes nothing); known groups go on; after a
 * restart the groups with stored offsets count and keep working even when
 * the limit was lowered below their number. */
static void consumer_group_limit(void** state) {
  fx_t* fx = *state;
  assert_int_equal(txmq_consumers_set(fx->cs, TXMQ_CONSUMERS_OPT_MAX_GROUPS, 0),
                   TXMQ_EINVAL);
  assert_int_equal(txmq_consumers_set(fx->cs, TXMQ_CONSUMERS_OPT_MAX_GROUPS, 2), 0);
  topic(fx, "lim", 1);
  put(fx, "lim", 0, NULL, "m0");
  size_t n;
  txmq_delivery_t* d = rcv(fx, "ga", "lim", NULL, 8, &n);
  assert_int_equal(n, 1);
  ack_all(fx, "ga", d, n);
  txmq_consumers_free_deliveries(d, n);
  /* Setting an offset admits a group too; a missing queue does not. */
  assert_int_equal(txmq_consumers_offset_set(fx->cs, "gb", "nope", 0, 0),
                   TXMQ_ENOTFOUND);
  assert_int_equal(txmq_consumers_offset_set(fx->cs, "gb", "lim", 5, 0),
                   TXMQ_ENOTFOUND);
  assert_int_equal(txmq_consumers_offset_set(fx->cs, "gb", "lim", 0, 0), 0);
  d = NULL;
  assert_int_equal(txmq_consumers_receive(fx->cs, "gc", "lim", NULL, 8, 0,
                                          TXMQ_FROM_EARLIEST, 0, &d, &n),
                   TXMQ_ERANGE);
  assert_null(d);
  assert_string_equal(txmq_consumers_diag(fx->cs),
                      "consumer group limit reached (max_consumer_groups = 2): "
                      "group 'gc' refused");
  assert_int_equal(txmq_consumers_offset_set(fx->cs, "gd", "lim", 0, 0),
                   TXMQ_ERANGE);
  assert_int_equal(txmq_consumers_progress(fx->cs, "gc", "lim", 0, NULL, NULL, NULL),
                   TXMQ_ENOTFOUND);
  /* Known groups are served. */
  d = rcv(fx, "gb", "lim", NULL, 8, &n);
  assert_int_equal(n, 1);
  ack_all(fx, "gb", d, n);
  txmq_consumers_free_deliveries(d, n);
  assert_int_equal(txmq_consumers_offset_set(fx->cs, "ga", "lim", 0, 0), 0);

  /* Restart with a limit of 1: both stored groups still read. */
  close_all(fx);
  store_open(fx);
  engine_new(fx);
  assert_int_equal(txmq_consumers_set(fx->cs, TXMQ_CONSUMERS_OPT_MAX_GROUPS, 1), 0);
  assert_int_equal(txmq_consumers_start(fx->cs), 0);
  d = rcv(fx, "ga", "lim", NULL, 8, &n);
  assert_int_equal(n, 1); /* its offset was set back to 0 */
  ack_all(fx, "ga", d, n);
  txmq_consumers_free_deliveries(d, n);
  d = rcv(fx, "gb", "lim", NULL, 8, &n);
  assert_int_equal(n, 0);
  assert_int_equal(txmq_consumers_receive(fx->cs, "gc", "lim", NULL, 8, 0,
                                          TXMQ_FROM_EARLIEST, 0, &d, &n),
                   TXMQ_ERANGE);
  assert_non_null(strstr(txmq_consumers_diag(fx->cs), "= 1)"));
}

/* offset_set on a group that is reading: the queue moves at once, the
 * deliveries outstanding on it are forgotten (their handles go stale, an
 * expired one is not delivered again), other queues are untouched, and a
 * delivery whose DLQ copy is being written lets the copy land. */
static void offset_set_moves_a_reading_group(void** state) {
  fx_t* fx = *state;
  topic(fx, "t", 2);
  char body[16];
  for (int i = 0; i < 6; i++) {
    snprintf(body, sizeof body, "m%d", i);
    put(fx, "t", 0, NULL, body);
  }
  put(fx, "t", 1, NULL, "other");
  size_t n;
  txmq_delivery_t* d = rcv(fx, "g", "t", NULL, 2, &n);
  assert_int_equal(n, 2);
  char stale[TXMQ_CONSUMER_HANDLE_MAX];
  strcpy(stale, strcmp(body_of(&d[0]), "m0") == 0 ? d[0].handle : d[1].handle);
  txmq_consumers_free_deliveries(d, n);
  /* One of queue 0 in flight, one more expired and waiting to go again. */
  d = rcv(fx, "g", "t", NULL, 1, &n);
  assert_int_equal(n, 1);
  txmq_consumers_free_deliveries(d, n);
  fx->now += 1000;
  assert_true(txmq_consumers_tick(fx->cs) >= 1);

  /* Past the end (6) is refused with the reason and moves nothing. */
  assert_int_equal(txmq_consumers_offset_set(fx->cs, "g", "t", 0, 7), TXMQ_ERANGE);
  assert_non_null(strstr(txmq_consumers_diag(fx->cs), "offset 7 is past the end of t/0 (6)"));
  assert_int_equal(txmq_consumers_offset_set(fx->cs, "g", "t", 0, 4), 0);
  progress(fx, "g", "t", 0, 4, 4, 0);
  assert_int_equal(txmq_consumers_ack(fx->cs, "g", stale), TXMQ_ENOTFOUND);
  d = rcv(fx, "g", "t", NULL, 10, &n);
  /* m4, m5 and queue 1's message (expired, so delivered again). */
  assert_int_equal(n, 3);
  int seen4 = 0, seen5 = 0, other = 0;
  for (size_t i = 0; i < n; i++) {
    seen4 += strcmp(body_of(&d[i]), "m4") == 0;
    seen5 += strcmp(body_of(&d[i]), "m5") == 0;
    other += strcmp(body_of(&d[i]), "other") == 0;
  }
  assert_true(seen4 == 1 && seen5 == 1 && other == 1);
  ack_all(fx, "g", d, n);
  txmq_consumers_free_deliveries(d, n);
  progress(fx, "g", "t", 0, 6, 6, 0);

  /* Back to the start: everything of queue 0 again, once each. */
  assert_int_equal(txmq_consumers_offset_set(fx->cs, "g", "t", 0, 0), 0);
  d = rcv(fx, "g", "t", NULL, 10, &n);
  assert_int_equal(n, 6);
  for (size_t i = 0; i < n; i++) assert_int_equal(d[i].deliveries, 1);
  txmq_consumers_free_deliveries(d, n);

  /* A delivery on its way to the DLQ when the offset moves. */
  assert_int_equal(txmq_consumers_set(fx->cs, TXMQ_CONSUMERS_OPT_MAX_DELIVERIES, 1), 0);
  fx->now += 1000;
  assert_true(txmq_consumers_tick(fx->cs) >= 1); /* the six start their DLQ puts */
  assert_int_equal(txmq_consumers_offset_set(fx->cs, "g", "t", 0, 5), 0);
  progress(fx, "g", "t", 0, 5, 5, 0);
  /* The puts land (up to 10 s: the valgrind run is slow). */
  int64_t copies = 0;
  for (int i = 0; i < 10000 && copies < 6; i++) {
    uv_run(&fx->loop, UV_RUN_NOWAIT);
    usleep(1000);
    copies = 0;
    for (int qid = 0; qid < txmq_store_topic_queues(fx->st, "DLQ.g"); qid++) {
      int64_t b, e;
      if (txmq_store_queue_range(fx->st, "DLQ.g", qid, &b, &e) == 0) copies += e - b;
    }
  }
  assert_int_equal(copies, 6);
  progress(fx, "g", "t", 0, 5, 5, 0);
  d = rcv(fx, "g", "t", NULL, 10, &n);
  assert_int_equal(n, 1);
  assert_string_equal(body_of(&d[0]), "m5");
  txmq_consumers_free_deliveries(d, n);
}

static void inflight_cap_bounds_a_consumer_that_never_acks(void** state) {
  fx_t* fx = *state;
  assert_int_equal(txmq_consumers_set(fx->cs, TXMQ_CONSUMERS_OPT_MAX_INFLIGHT, 5), 0);
  assert_int_equal(txmq_consumers_set(fx->cs, TXMQ_CONSUMERS_OPT_MAX_DELIVERIES, 1000), 0);
  topic(fx, "c", 2);
  for (int i = 0; i < 40; i++) put(fx, "c", -1, NULL, "x");
  size_t n;
  txmq_delivery_t* d = rcv(fx, "g", "c", NULL, 256, &n);
  assert_int_equal(n, 5);
  txmq_consumers_free_deliveries(d, n);
  /* Never acknowledging: expiries only bring the same five back. */
  for (int round = 0; round < 50; round++) {
    d = rcv(fx, "g", "c", NULL, 256, &n);
    assert_int_equal(n, 0);
    fx->now += 1000;
    assert_int_equal(txmq_consumers_tick(fx->cs), 5);
    d = rcv(fx, "g", "c", NULL, 256, &n);
    assert_int_equal(n, 5);
    for (size_t i = 0; i < n; i++) {
      assert_int_equal(d[i].deliveries, (uint32_t)round + 2);
      assert_true(txmq_msg_queue_offset(d[i].msg) < 3);
    }
    if (round < 49) txmq_consumers_free_deliveries(d, n);
  }
  int64_t c0, n0, c1, n1;
  size_t i0, i1;
  assert_int_equal(txmq_consumers_progress(fx->cs, "g", "c", 0, &c0, &n0, &i0), 0);
  assert_int_equal(txmq_consumers_progress(fx->cs, "g", "c", 1, &c1, &n1, &i1), 0);
  assert_int_equal(i0 + i1, 5);
  assert_int_equal(n0 + n1, 5);
  /* Another group has its own cap. */
  txmq_delivery_t* d2 = rcv(fx, "g2", "c", NULL, 256, &n);
  assert_int_equal(n, 5);
  txmq_consumers_free_deliveries(d2, n);
  /* An ack makes room, and the group is woken for it. */
  fx->nwakes = 0;
  assert_int_equal(txmq_consumers_ack(fx->cs, "g", d[0].handle), 0);
  spin(fx);
  assert_int_equal(woken(fx, "g", "c"), 1);
  txmq_consumers_free_deliveries(d, 5);
  d = rcv(fx, "g", "c", NULL, 256, &n);
  assert_int_equal(n, 1);
  txmq_consumers_free_deliveries(d, n);
}

/* ---- wake on publish ---- */

typedef struct {
  txmq_store_t* st;
  txmq_msg_t* msg;
  uint32_t len;
  uint64_t pos;
  int done;
  int rc;
} pub_t;

static void on_foreign_appended(txmq_log_t* log, int status, uint64_t first,
                                void* arg) {
  (void)log;
  pub_t* p = arg;
  p->rc = status;
  /* Two messages made visible in one callback, as a transaction's are
   * (both index entries name the same record here). */
  for (int i = 0; i < 2 && p->rc == 0; i++)
    p->rc = txmq_store_publish(p->st, first, p->len, 0, p->msg, NULL);
  p->done = 1;
}

static void wake_on_put_and_publish(void** state) {
  fx_t* fx = *state;
  topic(fx, "w", 2);
  topic(fx, "quiet", 1);
  size_t n;
  /* Waiters register by receiving once. */
  txmq_delivery_t* d = rcv(fx, "g1", "w", NULL, 1, &n);
  assert_int_equal(n, 0);
  d = rcv(fx, "g2", "w", NULL, 1, &n);
  d = rcv(fx, "g3", "quiet", NULL, 1, &n);
  spin(fx);
  assert_int_equal(fx->nwakes, 0);

  put(fx, "w", -1, NULL, "p");
  spin(fx);
  assert_int_equal(woken(fx, "g1", "w"), 1);
  assert_int_equal(woken(fx, "g2", "w"), 1);
  assert_int_equal(woken(fx, "g3", "quiet"), 0);

  /* A message of a foreign record (a transaction's), made visible by
   * txmq_store_publish from its append callback. */
  pub_t p;
  memset(&p, 0, sizeof p);
  p.st = fx->st;
  p.msg = txmq_msg_new();
  assert_int_equal(txmq_msg_set_topic(p.msg, "w"), 0);
  assert_int_equal(txmq_msg_set_body(p.msg, "tx", 2), 0);
  assert_int_equal(txmq_store_prepare(fx->st, p.msg), 0);
  void* buf;
  size_t len;
  assert_int_equal(txmq_msg_encode(p.msg, &buf, &len), 0);
  p.len = (uint32_t)len;
  txmq_log_rec_t rec = {REC_FOREIGN, buf, (uint32_t)len};
  assert_int_equal(txmq_store_append(fx->st, &rec, 1, NULL, on_foreign_appended, &p), 0);
  free(buf);
  assert_true(tu_run_until(&fx->loop, &p.done, 10000));
  assert_int_equal(p.rc, 0);
  txmq_msg_free(p.msg);
  spin(fx);
  /* Two publishes, one wake per group. */
  assert_int_equal(woken(fx, "g1", "w"), 2);
  assert_int_equal(woken(fx, "g2", "w"), 2);
  assert_int_equal(woken(fx, "g3", "quiet"), 0);

  /* The woken group reads all of it, including the published messages. */
  d = rcv(fx, "g1", "w", NULL, 256, &n);
  assert_int_equal(n, 3);
  int tx = 0;
  for (size_t i = 0; i < n; i++) tx += strcmp(body_of(&d[i]), "tx") == 0;
  assert_int_equal(tx, 2);
  txmq_consumers_free_deliveries(d, n);
}

/* The wake callback may receive at once (it runs outside the store's
 * append completion). */
typedef struct {
  fx_t* fx;
  size_t got;
} eager_t;

static void eager_wake(void* arg, const char* group, const char* t) {
  eager_t* e = arg;
  txmq_delivery_t* d;
  size_t n;
  assert_int_equal(txmq_consumers_receive(e->fx->cs, group, t, NULL, 256, 0,
                                          TXMQ_FROM_EARLIEST, 0, &d, &n), 0);
  e->got += n;
  ack_all(e->fx, group, d, n);
  txmq_consumers_free_deliveries(d, n);
}

static void wake_callback_may_receive(void** state) {
  fx_t* fx = *state;
  eager_t e = {fx, 0};
  txmq_consumers_set_wake_cb(fx->cs, eager_wake, &e);
  topic(fx, "e", 1);
  size_t n;
  rcv(fx, "g", "e", NULL, 1, &n);
  put(fx, "e", 0, NULL, "1");
  put(fx, "e", 0, NULL, "2");
  spin(fx);
  assert_int_equal(e.got, 2);
  progress(fx, "g", "e", 0, 2, 2, 0);
}

static void retention_skips_lost_offsets(void** state) {
  fx_t* fx = *state;
  fx->segment_size = 4096;
  fx->retain_bytes = 8192;
  fx->floor = 0; /* hold every segment until released */
  store_open(fx);
  engine_start(fx);
  topic(fx, "r", 1);
  put(fx, "r", 0, NULL, "first");
  size_t n;
  txmq_delivery_t* d = rcv(fx, "g", "r", NULL, 1, &n);
  assert_int_equal(n, 1);
  txmq_consumers_free_deliveries(d, n);
  for (int i = 0; i < 300; i++) put(fx, "r", 0, NULL, "retained-message-body");
  fx->floor = UINT64_MAX;
  /* Released, checkpoints let retention delete the old segments. */
  for (int i = 0; i < 2; i++) {
    int r[2] = {0, -999};
    assert_int_equal(txmq_store_checkpoint(fx->st, on_st_closed, r), 0);
    assert_true(tu_run_until(&fx->loop, &r[0], 10000));
    assert_int_equal(r[1], 0);
  }
  int64_t b, e;
  assert_int_equal(txmq_store_queue_range(fx->st, "r", 0, &b, &e), 0);
  assert_true(b > 1);
  assert_int_equal(e, 301);
  /* The in-flight message is gone: its redelivery is dropped and new
   * messages start at the queue's begin. */
  fx->now += 1000;
  assert_int_equal(txmq_consumers_tick(fx->cs), 1);
  d = rcv(fx, "g", "r", NULL, 3, &n);
  assert_int_equal(n, 3);
  assert_int_equal(txmq_msg_queue_offset(d[0].msg), b);
  assert_int_equal(d[0].deliveries, 1);
  progress(fx, "g", "r", 0, b, b + 3, 3);
  txmq_consumers_free_deliveries(d, n);
  /* A new group starts at the earliest retained message. */
  d = rcv(fx, "late", "r", NULL, 1, &n);
  assert_int_equal(n, 1);
  assert_int_equal(txmq_msg_queue_offset(d[0].msg), b);
  txmq_consumers_free_deliveries(d, n);
}

static void real_timer_redelivers(void** state) {
  fx_t* fx = *state;
  assert_int_equal(txmq_consumers_set(fx->cs, TXMQ_CONSUMERS_OPT_VISIBILITY_MS, 20), 0);
  topic(fx, "rt", 1);
  put(fx, "rt", 0, NULL, "x");
  size_t n;
  txmq_delivery_t* d = rcv(fx, "g", "rt", NULL, 1, &n);
  assert_int_equal(n, 1);
  txmq_consumers_free_deliveries(d, n);
  spin(fx);
  fx->nwakes = 0;
  /* The redelivery timer fires by itself and wakes the group. */
  for (int i = 0; i < 400 && fx->nwakes == 0; i++) uv_run(&fx->loop, UV_RUN_ONCE);
  assert_int_equal(woken(fx, "g", "rt"), 1);
  d = rcv(fx, "g", "rt", NULL, 1, &n);
  assert_int_equal(n, 1);
  assert_int_equal(d[0].deliveries, 2);
  ack_all(fx, "g", d, n);
  txmq_consumers_free_deliveries(d, n);
}

static void bad_input(void** state) {
  fx_t* fx = *state;
  topic(fx, "t", 1);
  char diag[128];
  const char* bad_filters[] = {"", "   ", "A ||", "|| A", "A | B", "A B", "* || A",
                               "A || *", "A ||| B", "A || || B", "A\x01", "|"};
  for (size_t i = 0; i < sizeof bad_filters / sizeof bad_filters[0]; i++) {
    diag[0] = '\0';
    int rc = txmq_consumers_check_filter(bad_filters[i], diag, sizeof diag);
    if (rc != TXMQ_EINVAL) fail_msg("filter \"%s\" accepted", bad_filters[i]);
    assert_true(diag[0] != '\0');
    txmq_delivery_t* d;
    size_t n;
    assert_int_equal(txmq_consumers_receive(fx->cs, "g", "t", bad_filters[i], 1, 0,
                                            TXMQ_FROM_EARLIEST, 0, &d, &n), TXMQ_EINVAL);
  }
  /* Too many tags, too long. */
  char big[9000];
  big[0] = '\0';
  for (int i = 0; i < 65; i++) strcat(big, i ? " || x" : "x");
  assert_int_equal(txmq_consumers_check_filter(big, NULL, 0), TXMQ_EINVAL);
  memset(big, 'a', sizeof big - 1);
  big[sizeof big - 1] = '\0';
  assert_int_equal(txmq_consumers_check_filter(big, diag, sizeof diag), TXMQ_EINVAL);
  const char* good[] = {"*", " * ", "A", "A||B", " A || B || C ", "TagA||t-2.x"};
  for (size_t i = 0; i < sizeof good / sizeof good[0]; i++)
    assert_int_equal(txmq_consumers_check_filter(good[i], diag, sizeof diag), 0);
  assert_int_equal(txmq_consumers_check_filter(NULL, NULL, 0), 0);

  txmq_delivery_t* d = (txmq_delivery_t*)1;
  size_t n = 99;
#define RECV(g, t, max, vis, from, off) \
  txmq_consumers_receive(fx->cs, g, t, NULL, max, vis, from, off, &d, &n)
  assert_int_equal(RECV("", "t", 1, 0, TXMQ_FROM_EARLIEST, 0), TXMQ_EBADNAME);
  assert_null(d);
  assert_int_equal(n, 0);
  assert_int_equal(RECV(NULL, "t", 1, 0, TXMQ_FROM_EARLIEST, 0), TXMQ_EBADNAME);
  assert_int_equal(RECV("a/b", "t", 1, 0, TXMQ_FROM_EARLIEST, 0), TXMQ_EBADNAME);
  assert_int_equal(RECV(".g", "t", 1, 0, TXMQ_FROM_EARLIEST, 0), TXMQ_EBADNAME);
  assert_int_equal(RECV("g", "t/x", 1, 0, TXMQ_FROM_EARLIEST, 0), TXMQ_EBADNAME);
  assert_int_equal(RECV("g", NULL, 1, 0, TXMQ_FROM_EARLIEST, 0), TXMQ_EBADNAME);
  /* "DLQ." + group must be a valid topic. */
  char name[TXMQ_NAME_MAX + 2];
  memset(name, 'g', sizeof name);
  name[TXMQ_NAME_MAX - 3] = '\0';
  assert_int_equal(RECV(name, "t", 1, 0, TXMQ_FROM_EARLIEST, 0), TXMQ_EBADNAME);
  name[TXMQ_NAME_MAX - 4] = '\0';
  assert_int_equal(RECV(name, "t", 1, 0, TXMQ_FROM_EARLIEST, 0), 0);
  assert_int_equal(RECV("g", "t", 0, 0, TXMQ_FROM_EARLIEST, 0), TXMQ_EINVAL);
  assert_int_equal(RECV("g", "t", 257, 0, TXMQ_FROM_EARLIEST, 0), TXMQ_EINVAL);
  assert_int_equal(RECV("g", "t", 256, 0, TXMQ_FROM_EARLIEST, 0), 0);
  assert_int_equal(RECV("g", "t", 1, -1, TXMQ_FROM_EARLIEST, 0), TXMQ_EINVAL);
  assert_int_equal(RECV("g", "t", 1, 0, (txmq_from_t)7, 0), TXMQ_EINVAL);
  assert_int_equal(RECV("g2", "t", 1, 0, TXMQ_FROM_OFFSET, -1), TXMQ_EINVAL);
  assert_int_equal(RECV("g", "nosuchtopic", 1, 0, TXMQ_FROM_EARLIEST, 0), TXMQ_ENOTFOUND);
  assert_int_equal(txmq_consumers_receive(fx->cs, "g", "t", NULL, 1, 0,
                                          TXMQ_FROM_EARLIEST, 0, NULL, &n), TXMQ_EINVAL);
  /* Nothing was created by the refused calls. */
  assert_int_equal(txmq_consumers_progress(fx->cs, "g2", "t", 0, NULL, NULL, NULL),
                   TXMQ_ENOTFOUND);
  assert_int_equal(txmq_consumers_progress(fx->cs, "g", "t", 1, NULL, NULL, NULL),
                   TXMQ_ENOTFOUND);
  assert_int_equal(txmq_consumers_progress(fx->cs, "g", "bad/t", 0, NULL, NULL, NULL),
                   TXMQ_EBADNAME);

  assert_int_equal(txmq_consumers_set(fx->cs, TXMQ_CONSUMERS_OPT_VISIBILITY_MS, 0), TXMQ_EINVAL);
  assert_int_equal(txmq_consumers_set(fx->cs, TXMQ_CONSUMERS_OPT_MAX_DELIVERIES, 0), TXMQ_EINVAL);
  assert_int_equal(txmq_consumers_set(fx->cs, TXMQ_CONSUMERS_OPT_MAX_INFLIGHT, 0), TXMQ_EINVAL);
  assert_int_equal(txmq_consumers_set(fx->cs, TXMQ_CONSUMERS_OPT_MANUAL_CLOCK, 0), TXMQ_EBUSY);
  assert_int_equal(txmq_consumers_set(fx->cs, (txmq_consumers_opt_t)99, 1), TXMQ_EINVAL);
  assert_int_equal(txmq_consumers_start(fx->cs), TXMQ_EBUSY);
#undef RECV
}

static void lifecycle(void** state) {
  fx_t* fx = *state;
  topic(fx, "t", 1);
  /* A second engine, never started: refuses work, closes on the loop. */
  txmq_consumers_t* cs2;
  assert_int_equal(txmq_consumers_new(&cs2, &fx->loop, fx->st), 0);
  txmq_delivery_t* d;
  size_t n;
  assert_int_equal(txmq_consumers_receive(cs2, "g", "t", NULL, 1, 0,
                                          TXMQ_FROM_EARLIEST, 0, &d, &n), TXMQ_EBUSY);
  assert_int_equal(txmq_consumers_ack(cs2, "g", "0.0.1"), TXMQ_EBUSY);
  assert_int_equal(txmq_consumers_tick(cs2), 0);
  int done = 0;
  assert_int_equal(txmq_consumers_close(cs2, on_cs_closed, &done), 0);
  assert_int_equal(done, 0);
  assert_true(tu_run_until(&fx->loop, &done, 1000));
  txmq_consumers_free(cs2);
  /* Never started and never closed is fine to free too. */
  assert_int_equal(txmq_consumers_new(&cs2, &fx->loop, fx->st), 0);
  txmq_consumers_free(cs2);
  assert_int_equal(txmq_consumers_new(NULL, &fx->loop, fx->st), TXMQ_EINVAL);
  assert_int_equal(txmq_consumers_new(&cs2, &fx->loop, NULL), TXMQ_EINVAL);

  /* The running one: closed with deliveries in flight. */
  put(fx, "t", 0, NULL, "x");
  d = rcv(fx, "g", "t", NULL, 1, &n);
  assert_int_equal(n, 1);
  char h[TXMQ_CONSUMER_HANDLE_MAX];
  strcpy(h, d[0].handle);
  txmq_consumers_free_deliveries(d, n);
  txmq_consumers_free_deliveries(NULL, 0);
  done = 0;
  assert_int_equal(txmq_consumers_close(fx->cs, on_cs_closed, &done), 0);
  assert_int_equal(txmq_consumers_close(fx->cs, NULL, NULL), TXMQ_ECLOSED);
  assert_int_equal(txmq_consumers_receive(fx->cs, "g", "t", NULL, 1, 0,
                                          TXMQ_FROM_EARLIEST, 0, &d, &n), TXMQ_ECLOSED);
  assert_int_equal(txmq_consumers_ack(fx->cs, "g", h), TXMQ_ECLOSED);
  assert_true(tu_run_until(&fx->loop, &done, 1000));
  txmq_consumers_free(fx->cs);
  fx->cs = NULL;
  /* The store no longer calls the closed engine. */
  put(fx, "t", 0, NULL, "y");
  spin(fx);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(clustering_members_and_groups, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(redelivery_after_visibility_timeout, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(ack_refuses_stale_and_malformed_handles, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(dead_letter_after_max_deliveries, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(tag_filters, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(start_positions, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(committed_offset_survives_restart, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(offset_set_moves_a_reading_group, fx_setup,
                                      fx_teardown),
      cmocka_unit_test_setup_teardown(inflight_cap_bounds_a_consumer_that_never_acks, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(consumer_group_limit, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(wake_on_put_and_publish, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(wake_callback_may_receive, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(retention_skips_lost_offsets, fx_setup_bare, fx_teardown),
      cmocka_unit_test_setup_teardown(real_timer_redelivers, fx_setup_real_clock, fx_teardown),
      cmocka_unit_test_setup_teardown(bad_input, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(lifecycle, fx_setup, fx_teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
