/*
 * test_store.c - the store over a real commit log: puts and reads across
 * topics and queues, round robin, publishes of foreign records, consumer
 * offsets, checkpoints and restarts (tail replay, full rebuild after a
 * crash or a bad checkpoint, stale index entries), index files growing,
 * name checks and read-only opens. Each test has its own directory and
 * closes its loop cleanly.
 */
#include <dirent.h>
#include <fcntl.h>
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
#include <msgpack.h>

#include "txmq/error.h"
#include "txmq/log.h"
#include "txmq/msg.h"
#include "txmq/store.h"
#include "store/store_int.h"
#include "testutil.h"

#define SMALL_FILES 64 /* entries per index file in most tests */
#define REC_FOREIGN 20
#define REC_FOREIGN_NODEC 21

/* ---- fixture ---- */

/* root is the test's own directory; the store lives in root/data and
 * copies of it (simulated crashes) beside it. */
typedef struct {
  uv_loop_t loop;
  char* root;
  char* dir;
} fx_t;

static int fx_setup(void** state) {
  fx_t* fx = calloc(1, sizeof *fx);
  assert_int_equal(uv_loop_init(&fx->loop), 0);
  fx->root = tu_tmpdir("store");
  fx->dir = tu_path(fx->root, "data");
  *state = fx;
  return 0;
}

static int fx_teardown(void** state) {
  fx_t* fx = *state;
  tu_loop_close_clean(&fx->loop);
  tu_rmrf(fx->root);
  free(fx->root);
  free(fx->dir);
  free(fx);
  return 0;
}

typedef struct {
  int sync;            /* txmq_sync_t */
  int64_t ckpt_ms;     /* checkpoint interval */
  uint32_t entries;    /* index file entries */
  int read_only;
  txmq_store_record_cb rec_cb;
  txmq_store_replay_floor_cb floor_cb;
  void* hook_arg;
  int decoder;
  int64_t segment_size; /* 0: the log's default */
  int64_t retain_bytes;
} opts_t;

static const opts_t DEF = {TXMQ_SYNC_NEVER, 0, SMALL_FILES, 0, NULL, NULL, NULL, 1, 0, 0};

static int decode_foreign(void* arg, const txmq_log_entry_t* e, uint32_t sub,
                          txmq_msg_t** out) {
  (void)arg;
  if (sub != 0) return TXMQ_EPROTO;
  return txmq_msg_decode(e->data, e->len, out);
}

static int try_open(uv_loop_t* loop, const char* dir, const opts_t* o,
                    txmq_store_t** out) {
  txmq_store_t* st;
  assert_int_equal(txmq_store_new(&st, loop, dir), 0);
  assert_int_equal(txmq_store_set(st, TXMQ_STORE_OPT_SYNC, o->sync), 0);
  assert_int_equal(txmq_store_set(st, TXMQ_STORE_OPT_CHECKPOINT_INTERVAL_MS, o->ckpt_ms), 0);
  if (o->read_only) assert_int_equal(txmq_store_set(st, TXMQ_STORE_OPT_READ_ONLY, 1), 0);
  if (o->segment_size)
    assert_int_equal(txmq_store_set(st, TXMQ_STORE_OPT_SEGMENT_SIZE, o->segment_size), 0);
  if (o->retain_bytes)
    assert_int_equal(txmq_store_set(st, TXMQ_STORE_OPT_RETAIN_BYTES, o->retain_bytes), 0);
  assert_int_equal(txmq__store_set_index_file_entries(st, o->entries), 0);
  if (o->rec_cb) txmq_store_set_record_handler(st, o->rec_cb, o->hook_arg);
  if (o->floor_cb) txmq_store_set_replay_floor_cb(st, o->floor_cb, o->hook_arg);
  if (o->decoder)
    assert_int_equal(txmq__store_set_decoder(st, REC_FOREIGN, decode_foreign, NULL), 0);
  int rc = txmq_store_open(st);
  if (getenv("TXMQ_TEST_VERBOSE") && st)
    fprintf(stderr, "open %s: %s, replayed %llu, diag \"%s\"\n", dir,
            txmq_err_name(rc), (unsigned long long)txmq_store_replayed(st),
            txmq_store_diag(st));
  if (rc != 0) {
    fprintf(stderr, "open failed: %s: %s\n", txmq_err_name(rc), txmq_store_diag(st));
    txmq_store_free(st);
    st = NULL;
  }
  *out = st;
  return rc;
}

static txmq_store_t* open_store(uv_loop_t* loop, const char* dir, const opts_t* o) {
  txmq_store_t* st;
  assert_int_equal(try_open(loop, dir, o, &st), 0);
  return st;
}

static void on_done(txmq_store_t* st, int status, void* arg) {
  (void)st;
  int* r = arg;
  r[0] = 1;
  r[1] = status;
}

static void close_store(uv_loop_t* loop, txmq_store_t* st) {
  int r[2] = {0, -999};
  assert_int_equal(txmq_store_close(st, on_done, r), 0);
  assert_true(tu_run_until(loop, &r[0], 10000));
  assert_int_equal(r[1], 0);
  txmq_store_free(st);
}

static void checkpoint_now(uv_loop_t* loop, txmq_store_t* st) {
  int r[2] = {0, -999};
  assert_int_equal(txmq_store_checkpoint(st, on_done, r), 0);
  assert_true(tu_run_until(loop, &r[0], 10000));
  assert_int_equal(r[1], 0);
}

/* What a test put, to compare with what it reads. */
typedef struct {
  char topic[32];
  char body[64];
  int qid;
  int64_t off;
  uint8_t id[16];
  int done;
  int status;
} exp_t;

typedef struct {
  int n;
  int failed;
} counter_t;

typedef struct {
  exp_t* e;
  counter_t* c;
} put_arg_t;

static void on_put(txmq_store_t* st, int status, const txmq_msg_t* msg, void* arg) {
  (void)st;
  put_arg_t* pa = arg;
  pa->e->done = 1;
  pa->e->status = status;
  if (status == 0) {
    pa->e->qid = txmq_msg_queue_id(msg);
    pa->e->off = txmq_msg_queue_offset(msg);
    memcpy(pa->e->id, txmq_msg_id(msg), 16);
  } else {
    pa->c->failed++;
  }
  pa->c->n++;
  free(pa);
}

/* Puts e (topic, body, qid -1 for round robin) without waiting. */
static void put_async(txmq_store_t* st, exp_t* e, counter_t* c) {
  txmq_msg_t* m = txmq_msg_new();
  assert_int_equal(txmq_msg_set_topic(m, e->topic), 0);
  assert_int_equal(txmq_msg_set_body(m, e->body, strlen(e->body)), 0);
  char tags[16];
  snprintf(tags, sizeof tags, "tag%d", (int)(strlen(e->body) % 3));
  assert_int_equal(txmq_msg_set_tags(m, tags), 0);
  assert_int_equal(txmq_msg_prop_set(m, "body", e->body), 0);
  txmq_msg_set_queue_id(m, e->qid);
  put_arg_t* pa = malloc(sizeof *pa);
  pa->e = e;
  pa->c = c;
  e->done = 0;
  int rc = txmq_store_put(st, m, on_put, pa);
  if (rc != 0) fail_msg("put: %s", txmq_err_name(rc));
  txmq_msg_free(m);
}

static void wait_count(uv_loop_t* loop, counter_t* c, int n) {
  volatile int done = 0;
  for (int i = 0; i < 20000 && c->n < n; i++) uv_run(loop, UV_RUN_ONCE);
  done = c->n >= n;
  assert_true(done);
  assert_int_equal(c->failed, 0);
}

/* n messages over the given topics; qid -1 (round robin) unless fixed. */
static exp_t* put_many(uv_loop_t* loop, txmq_store_t* st, int n,
                       const char* const* topics, int ntopics, int fixed_qid,
                       const char* prefix) {
  exp_t* e = calloc((size_t)n, sizeof *e);
  counter_t c = {0, 0};
  for (int i = 0; i < n; i++) {
    snprintf(e[i].topic, sizeof e[i].topic, "%s", topics[i % ntopics]);
    snprintf(e[i].body, sizeof e[i].body, "%s-%d-%s", prefix, i, e[i].topic);
    e[i].qid = fixed_qid;
    put_async(st, &e[i], &c);
  }
  wait_count(loop, &c, n);
  return e;
}

static void check_msg(txmq_store_t* st, const exp_t* e) {
  txmq_msg_t* m = NULL;
  int rc = txmq_store_get(st, e->topic, e->qid, e->off, &m);
  if (rc != 0)
    fail_msg("get %s/%d@%lld: %s (%s)", e->topic, e->qid, (long long)e->off,
             txmq_err_name(rc), txmq_store_diag(st));
  size_t len;
  const void* b = txmq_msg_body(m, &len);
  assert_int_equal(len, strlen(e->body));
  assert_memory_equal(b, e->body, len);
  assert_string_equal(txmq_msg_prop_get(m, "body"), e->body);
  assert_string_equal(txmq_msg_topic(m), e->topic);
  assert_int_equal(txmq_msg_queue_id(m), e->qid);
  assert_int_equal(txmq_msg_queue_offset(m), e->off);
  assert_memory_equal(txmq_msg_id(m), e->id, 16);
  assert_true(txmq_msg_store_ms(m) > 0);
  /* The index entry carries the tags hash. */
  uint64_t pos;
  uint32_t h;
  assert_int_equal(txmq_store_entry(st, e->topic, e->qid, e->off, &pos, &h), 0);
  assert_int_equal(h, txmq_store_tags_hash(txmq_msg_tags(m)));
  txmq_msg_free(m);
}

static void check_all(txmq_store_t* st, const exp_t* e, int n) {
  for (int i = 0; i < n; i++) check_msg(st, &e[i]);
}

/* Offsets of each queue are dense: every (topic, qid) has 0..count-1. */
static void check_dense(txmq_store_t* st, const exp_t* e, int n) {
  for (size_t t = 0; t < txmq_store_topic_count(st); t++) {
    const char* name = txmq_store_topic_name(st, t);
    for (int q = 0; q < txmq_store_topic_queues(st, name); q++) {
      int64_t begin, end;
      assert_int_equal(txmq_store_queue_range(st, name, q, &begin, &end), 0);
      assert_int_equal(begin, 0);
      char* seen = calloc((size_t)end + 1, 1);
      int cnt = 0;
      for (int i = 0; i < n; i++) {
        if (strcmp(e[i].topic, name) != 0 || e[i].qid != q) continue;
        assert_true(e[i].off >= 0 && e[i].off < end);
        assert_false(seen[e[i].off]);
        seen[e[i].off] = 1;
        cnt++;
      }
      assert_int_equal(cnt, end);
      free(seen);
    }
  }
}

static int file_exists(const char* dir, const char* rel) {
  char* p = tu_path(dir, rel);
  struct stat sb;
  int r = stat(p, &sb) == 0;
  free(p);
  return r;
}

/* ---- tests ---- */

static void put_get_across_topics_and_queues(void** state) {
  fx_t* fx = *state;
  opts_t o = DEF;
  o.sync = TXMQ_SYNC_ALWAYS; /* the default policy, once */
  txmq_store_t* st = open_store(&fx->loop, fx->dir, &o);
  assert_string_equal(txmq_store_diag(st), "");
  const char* topics[] = {"orders", "points", "cart.v2"};
  exp_t* e = put_many(&fx->loop, st, 90, topics, 3, -1, "m");
  assert_int_equal(txmq_store_topic_count(st), 3);
  assert_string_equal(txmq_store_topic_name(st, 0), "orders");
  assert_null(txmq_store_topic_name(st, 3));
  assert_int_equal(txmq_store_topic_queues(st, "points"), 4); /* default */
  assert_int_equal(txmq_store_topic_queues(st, "nope"), TXMQ_ENOTFOUND);
  check_all(st, e, 90);
  check_dense(st, e, 90);

  /* Out of range and unknown queues. */
  txmq_msg_t* m;
  assert_int_equal(txmq_store_get(st, "orders", 0, 1000, &m), TXMQ_ERANGE);
  assert_int_equal(txmq_store_get(st, "orders", 0, -1, &m), TXMQ_ERANGE);
  assert_int_equal(txmq_store_get(st, "orders", 4, 0, &m), TXMQ_ENOTFOUND);
  assert_int_equal(txmq_store_get(st, "orders", -1, 0, &m), TXMQ_ENOTFOUND);
  assert_int_equal(txmq_store_get(st, "nope", 0, 0, &m), TXMQ_ENOTFOUND);
  int64_t b, en;
  assert_int_equal(txmq_store_queue_range(st, "nope", 0, &b, &en), TXMQ_ENOTFOUND);

  /* A message without a topic, a queue the topic does not have. */
  txmq_msg_t* bad = txmq_msg_new();
  assert_int_equal(txmq_store_put(st, bad, NULL, NULL), TXMQ_EINVAL);
  assert_int_equal(txmq_msg_set_topic(bad, "orders"), 0);
  txmq_msg_set_queue_id(bad, 4);
  assert_int_equal(txmq_store_put(st, bad, NULL, NULL), TXMQ_ENOTFOUND);
  txmq_msg_free(bad);
  close_store(&fx->loop, st);
  free(e);
}

static void queue_selection_explicit_and_round_robin(void** state) {
  fx_t* fx = *state;
  txmq_store_t* st = open_store(&fx->loop, fx->dir, &DEF);
  assert_int_equal(txmq_store_create_topic(st, "rr", 3), 0);
  const char* topics[] = {"rr"};
  exp_t* e = put_many(&fx->loop, st, 12, topics, 1, -1, "rr");
  for (int i = 0; i < 12; i++) {
    assert_int_equal(e[i].qid, i % 3);
    assert_int_equal(e[i].off, i / 3);
  }
  exp_t* f = put_many(&fx->loop, st, 5, topics, 1, 2, "fixed");
  for (int i = 0; i < 5; i++) {
    assert_int_equal(f[i].qid, 2);
    assert_int_equal(f[i].off, 4 + i);
  }
  check_all(st, e, 12);
  check_all(st, f, 5);
  /* prepare alone assigns id, time and queue, and writes nothing. */
  txmq_msg_t* m = txmq_msg_new();
  assert_int_equal(txmq_msg_set_topic(m, "rr"), 0);
  uint64_t next = txmq_log_next_pos(txmq_store_log(st));
  assert_int_equal(txmq_store_prepare(st, m), 0);
  assert_int_equal(txmq_log_next_pos(txmq_store_log(st)), next);
  assert_int_equal(txmq_msg_queue_id(m), 0);
  assert_true(txmq_msg_store_ms(m) > 0);
  char ids[33];
  assert_string_not_equal(txmq_msg_id_str(m, ids), "00000000000000000000000000000000");
  /* Ids of one store increase. */
  assert_true(memcmp(e[11].id, txmq_msg_id(m), 16) < 0);
  for (int i = 1; i < 12; i++) assert_true(memcmp(e[i - 1].id, e[i].id, 16) < 0);
  txmq_msg_free(m);
  close_store(&fx->loop, st);
  free(e);
  free(f);
}

static void topics_names_and_limits(void** state) {
  fx_t* fx = *state;
  txmq_store_t* st;
  assert_int_equal(txmq_store_new(&st, &fx->loop, fx->dir), 0);
  assert_int_equal(txmq_store_set(st, TXMQ_STORE_OPT_SYNC, TXMQ_SYNC_NEVER), 0);
  assert_int_equal(txmq_store_set(st, TXMQ_STORE_OPT_MAX_TOPICS, 3), 0);
  assert_int_equal(txmq_store_set(st, TXMQ_STORE_OPT_DEFAULT_QUEUES, 2), 0);
  assert_int_equal(txmq_store_set(st, TXMQ_STORE_OPT_DEFAULT_QUEUES, 0), TXMQ_EINVAL);
  assert_int_equal(txmq_store_set(st, TXMQ_STORE_OPT_DEFAULT_QUEUES, 257), TXMQ_EINVAL);
  assert_int_equal(txmq_store_set(st, (txmq_store_opt_t)999, 1), TXMQ_EINVAL);
  assert_int_equal(txmq__store_set_index_file_entries(st, SMALL_FILES), 0);
  /* Nothing works before open. */
  assert_int_equal(txmq_store_create_topic(st, "early", 1), TXMQ_ECLOSED);
  assert_int_equal(txmq_store_open(st), 0);
  assert_int_equal(txmq_store_set(st, TXMQ_STORE_OPT_MAX_TOPICS, 5), TXMQ_EBUSY);

  const char* bad[] = {"", ".x", "a/b", "a b", "..", "caf\xc3\xa9", "x:y"};
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
    assert_int_equal(txmq_store_create_topic(st, bad[i], 1), TXMQ_EBADNAME);
  assert_int_equal(txmq_store_create_topic(st, NULL, 1), TXMQ_EBADNAME);
  char longname[TXMQ_NAME_MAX + 2];
  memset(longname, 'l', sizeof longname);
  longname[TXMQ_NAME_MAX + 1] = '\0';
  assert_int_equal(txmq_store_create_topic(st, longname, 1), TXMQ_EBADNAME);
  assert_int_equal(txmq_store_create_topic(st, "t1", 0), TXMQ_EINVAL);
  assert_int_equal(txmq_store_create_topic(st, "t1", TXMQ_STORE_MAX_QUEUES + 1), TXMQ_EINVAL);
  assert_int_equal(txmq_store_create_topic(st, "t1", TXMQ_STORE_MAX_QUEUES), 0);
  assert_int_equal(txmq_store_create_topic(st, "t1", 1), TXMQ_EEXIST);
  assert_int_equal(txmq_store_create_topic(st, "t2", 7), 0);
  /* The third topic comes from a put, with the default queue count. */
  const char* topics[] = {"t3"};
  exp_t* e = put_many(&fx->loop, st, 2, topics, 1, -1, "x");
  assert_int_equal(txmq_store_topic_queues(st, "t3"), 2);
  assert_int_equal(txmq_store_create_topic(st, "t4", 1), TXMQ_ERANGE);
  assert_string_equal(txmq_store_diag(st),
                      "topic limit reached (max_topics = 3): topic 't4' not "
                      "created");
  txmq_msg_t* m = txmq_msg_new();
  assert_int_equal(txmq_msg_set_topic(m, "t5"), 0);
  assert_int_equal(txmq_store_put(st, m, NULL, NULL), TXMQ_ERANGE);
  assert_non_null(strstr(txmq_store_diag(st), "max_topics = 3"));
  txmq_msg_free(m);
  /* Bad names for offsets, too. */
  assert_int_equal(txmq_store_offset_set(st, "bad group", "t1", 0, 1), TXMQ_EBADNAME);
  assert_int_equal(txmq_store_offset_set(st, "g", "bad/topic", 0, 1), TXMQ_EBADNAME);
  close_store(&fx->loop, st);

  /* Topics and queue counts survive a restart (from the checkpoint), and
   * from the log alone. */
  st = open_store(&fx->loop, fx->dir, &DEF);
  assert_int_equal(txmq_store_topic_count(st), 3);
  assert_int_equal(txmq_store_topic_queues(st, "t1"), TXMQ_STORE_MAX_QUEUES);
  assert_int_equal(txmq_store_topic_queues(st, "t2"), 7);
  assert_int_equal(txmq_store_topic_queues(st, "t3"), 2);
  check_all(st, e, 2);
  close_store(&fx->loop, st);
  char* ck = tu_path(fx->dir, "checkpoint");
  assert_int_equal(unlink(ck), 0);
  free(ck);
  st = open_store(&fx->loop, fx->dir, &DEF);
  assert_int_equal(txmq_store_topic_count(st), 3);
  assert_string_equal(txmq_store_topic_name(st, 1), "t2");
  assert_int_equal(txmq_store_topic_queues(st, "t2"), 7);
  check_all(st, e, 2);
  close_store(&fx->loop, st);
  free(e);
}

/* ---- foreign records ---- */

typedef struct {
  uint64_t pos[2];
  uint32_t len[2];
  int64_t off[2];
  int qid[2];
  int appended;
  /* record handler */
  int seen;
  int seen_applied;
  int64_t replay_offsets[2];
  uint64_t floor;
} foreign_t;

static void on_foreign(txmq_log_t* log, int status, uint64_t first, void* arg) {
  (void)log;
  foreign_t* f = arg;
  assert_int_equal(status, 0);
  assert_int_equal(first, f->pos[0]);
  f->appended = 1;
}

static int rec_handler(txmq_store_t* st, const txmq_log_entry_t* e,
                       int already_applied, void* arg) {
  foreign_t* f = arg;
  assert_true(e->type == REC_FOREIGN || e->type == REC_FOREIGN_NODEC);
  int i = e->type == REC_FOREIGN ? 0 : 1;
  f->seen++;
  f->seen_applied += already_applied != 0;
  txmq_msg_t* m;
  assert_int_equal(txmq_msg_decode(e->data, e->len, &m), 0);
  assert_int_equal(txmq_store_publish(st, e->pos, e->len, 0, m, &f->replay_offsets[i]), 0);
  txmq_msg_free(m);
  return 0;
}

static uint64_t floor_cb(txmq_store_t* st, void* arg) {
  (void)st;
  foreign_t* f = arg;
  return f->floor;
}

static void publish_foreign(fx_t* fx, txmq_store_t* st, foreign_t* f) {
  txmq_log_rec_t recs[2];
  void* bufs[2];
  for (int i = 0; i < 2; i++) {
    txmq_msg_t* m = txmq_msg_new();
    assert_int_equal(txmq_msg_set_topic(m, "tx"), 0);
    assert_int_equal(txmq_msg_set_body(m, i ? "nodec" : "foreign", i ? 5 : 7), 0);
    assert_int_equal(txmq_store_prepare(st, m), 0);
    f->qid[i] = txmq_msg_queue_id(m);
    size_t len;
    assert_int_equal(txmq_msg_encode(m, &bufs[i], &len), 0);
    recs[i].type = i ? REC_FOREIGN_NODEC : REC_FOREIGN;
    recs[i].data = bufs[i];
    recs[i].len = (uint32_t)len;
    f->len[i] = (uint32_t)len;
    txmq_msg_free(m);
  }
  /* Store records can't come through txmq_store_append. */
  txmq_log_rec_t mine = {TXMQ_REC_MSG, bufs[0], recs[0].len};
  assert_int_equal(txmq_store_append(st, &mine, 1, NULL, NULL, NULL), TXMQ_EINVAL);
  assert_int_equal(txmq_store_append(st, recs, 2, f->pos, on_foreign, f), 0);
  f->floor = f->pos[0];
  assert_true(tu_run_until(&fx->loop, &f->appended, 10000));
  /* As the owner of a record would in its append callback. */
  for (int i = 0; i < 2; i++) {
    txmq_msg_t* m;
    assert_int_equal(txmq_msg_decode(bufs[i], recs[i].len, &m), 0);
    assert_int_equal(txmq_store_publish(st, f->pos[i], f->len[i], 0, m, &f->off[i]), 0);
    txmq_msg_free(m);
    free(bufs[i]);
  }
}

static void check_foreign(txmq_store_t* st, foreign_t* f) {
  txmq_msg_t* m;
  int rc = txmq_store_get(st, "tx", f->qid[0], f->off[0], &m);
  if (rc != 0) fail_msg("get: %s (%s)", txmq_err_name(rc), txmq_store_diag(st));
  size_t len;
  assert_memory_equal(txmq_msg_body(m, &len), "foreign", 7);
  assert_int_equal(txmq_msg_queue_offset(m), f->off[0]);
  txmq_msg_free(m);
  /* A record type nobody taught the store to read. */
  assert_int_equal(txmq_store_get(st, "tx", f->qid[1], f->off[1], &m), TXMQ_EPROTO);
  assert_non_null(strstr(txmq_store_diag(st), "no decoder"));
}

static void publish_foreign_record_messages(void** state) {
  fx_t* fx = *state;
  foreign_t f;
  memset(&f, 0, sizeof f);
  opts_t o = DEF;
  o.rec_cb = rec_handler;
  o.floor_cb = floor_cb;
  o.hook_arg = &f;
  txmq_store_t* st = open_store(&fx->loop, fx->dir, &o);
  const char* topics[] = {"tx"};
  exp_t* e = put_many(&fx->loop, st, 6, topics, 1, -1, "plain");
  publish_foreign(fx, st, &f);
  assert_int_equal(f.off[0], 6 / 4 + (f.qid[0] < 6 % 4 ? 1 : 0));
  check_foreign(st, &f);
  check_all(st, e, 6);

  /* A crash before any checkpoint: the handler gets the records as not
   * applied, publishes them again, and they land at the same offsets. */
  char* crash = tu_path(fx->root, "crash");
  assert_int_equal(tu_copy_tree(fx->dir, crash), 0);
  close_store(&fx->loop, st);

  /* Clean restart: the floor makes the records replay to the handler as
   * already applied; their publishes are ignored. */
  foreign_t g = f;
  g.seen = g.seen_applied = 0;
  o.hook_arg = &g;
  st = open_store(&fx->loop, fx->dir, &o);
  assert_int_equal(g.seen, 2);
  assert_int_equal(g.seen_applied, 2);
  assert_int_equal(g.replay_offsets[0], -1);
  assert_int_equal(txmq_store_replayed(st), 2);
  int64_t b, en;
  assert_int_equal(txmq_store_queue_range(st, "tx", f.qid[0], &b, &en), 0);
  assert_int_equal(en, f.off[0] + 1);
  check_foreign(st, &g);
  check_all(st, e, 6);
  close_store(&fx->loop, st);

  foreign_t h = f;
  h.seen = h.seen_applied = 0;
  o.hook_arg = &h;
  st = open_store(&fx->loop, crash, &o);
  assert_int_equal(h.seen, 2);
  assert_int_equal(h.seen_applied, 0);
  assert_int_equal(h.replay_offsets[0], f.off[0]);
  assert_int_equal(h.replay_offsets[1], f.off[1]);
  check_foreign(st, &h);
  check_all(st, e, 6);
  close_store(&fx->loop, st);
  free(crash);
  free(e);
}

static int failing_handler(txmq_store_t* st, const txmq_log_entry_t* e,
                           int already_applied, void* arg) {
  (void)st;
  (void)e;
  (void)already_applied;
  (void)arg;
  return TXMQ_ECONFLICT;
}

static void record_handler_failure_aborts_open(void** state) {
  fx_t* fx = *state;
  foreign_t f;
  memset(&f, 0, sizeof f);
  txmq_store_t* st = open_store(&fx->loop, fx->dir, &DEF);
  publish_foreign(fx, st, &f);
  close_store(&fx->loop, st);
  char* ck = tu_path(fx->dir, "checkpoint");
  unlink(ck);
  free(ck);
  txmq_store_t* st2;
  assert_int_equal(txmq_store_new(&st2, &fx->loop, fx->dir), 0);
  txmq_store_set_record_handler(st2, failing_handler, NULL);
  assert_int_equal(txmq_store_open(st2), TXMQ_ECONFLICT);
  assert_non_null(strstr(txmq_store_diag(st2), "refused"));
  txmq_store_free(st2);
  /* The log closes itself; the loop must still end cleanly (teardown). */
  uv_run(&fx->loop, UV_RUN_DEFAULT);
  /* And the directory opens again without the handler. */
  st = open_store(&fx->loop, fx->dir, &DEF);
  close_store(&fx->loop, st);
}

/* ---- offsets ---- */

static void consumer_offsets_survive_restart(void** state) {
  fx_t* fx = *state;
  txmq_store_t* st = open_store(&fx->loop, fx->dir, &DEF);
  assert_int_equal(txmq_store_create_topic(st, "orders", 2), 0);
  int64_t off = -7;
  assert_int_equal(txmq_store_offset_get(st, "g1", "orders", 0, &off), TXMQ_ENOTFOUND);
  /* Ten messages on each queue: an offset may be at most the end. */
  const char* topics[] = {"orders"};
  free(put_many(&fx->loop, st, 20, topics, 1, -1, "o"));
  int64_t end = 0;
  assert_int_equal(txmq_store_queue_range(st, "orders", 1, NULL, &end), 0);
  assert_int_equal(end, 10);
  assert_int_equal(txmq_store_offset_set(st, "g1", "orders", 0, 5), 0);
  assert_int_equal(txmq_store_offset_set(st, "g1", "orders", 1, 9), 0);
  assert_int_equal(txmq_store_offset_set(st, "g2", "orders", 0, 1), 0);
  assert_int_equal(txmq_store_offset_set(st, "g1", "orders", 0, 6), 0);
  assert_int_equal(txmq_store_offset_set(st, "g1", "orders", 2, 1), TXMQ_ENOTFOUND);
  assert_int_equal(txmq_store_offset_set(st, "g1", "nope", 0, 1), TXMQ_ENOTFOUND);
  assert_int_equal(txmq_store_offset_set(st, "g1", "orders", 0, -1), TXMQ_EINVAL);
  /* Past the end is refused and changes nothing; the end itself is taken. */
  assert_int_equal(txmq_store_offset_set(st, "g1", "orders", 1, 11), TXMQ_ERANGE);
  assert_string_equal(txmq_store_diag(st),
                      "offset 11 is past the end of orders/1 (10): the group "
                      "would skip messages not yet written");
  assert_int_equal(txmq_store_offset_set(st, "g3", "orders", 0, 11), TXMQ_ERANGE);
  assert_int_equal(txmq_store_offset_set(st, "g1", "orders", 1, 10), 0);
  assert_int_equal(txmq_store_offset_set(st, "g1", "orders", 1, 9), 0);
  assert_int_equal(txmq_store_offset_get(st, "g1", "orders", 0, &off), 0);
  assert_int_equal(off, 6);
  assert_int_equal(txmq_store_offset_get(st, "g3", "orders", 0, &off), TXMQ_ENOTFOUND);
  assert_int_equal(txmq_store_offset_get(st, "g1", "orders", -1, &off), TXMQ_ENOTFOUND);
  /* One by one, in the order first set, with their latest values. */
  assert_int_equal(txmq_store_offset_count(st), 3);
  const char *g, *t;
  int q;
  assert_int_equal(txmq_store_offset_at(st, 0, &g, &t, &q, &off), 0);
  assert_string_equal(g, "g1");
  assert_string_equal(t, "orders");
  assert_int_equal(q, 0);
  assert_int_equal(off, 6);
  assert_int_equal(txmq_store_offset_at(st, 1, NULL, NULL, &q, &off), 0);
  assert_int_equal(q, 1);
  assert_int_equal(off, 9);
  assert_int_equal(txmq_store_offset_at(st, 2, &g, NULL, NULL, &off), 0);
  assert_string_equal(g, "g2");
  assert_int_equal(off, 1);
  assert_int_equal(txmq_store_offset_at(st, 3, &g, &t, &q, &off), TXMQ_ENOTFOUND);
  close_store(&fx->loop, st);

  st = open_store(&fx->loop, fx->dir, &DEF);
  assert_int_equal(txmq_store_offset_get(st, "g1", "orders", 0, &off), 0);
  assert_int_equal(off, 6);
  assert_int_equal(txmq_store_offset_get(st, "g1", "orders", 1, &off), 0);
  assert_int_equal(off, 9);
  assert_int_equal(txmq_store_offset_get(st, "g2", "orders", 0, &off), 0);
  assert_int_equal(off, 1);
  assert_int_equal(txmq_store_offset_get(st, "g2", "orders", 1, &off), TXMQ_ENOTFOUND);
  close_store(&fx->loop, st);
}

/* ---- restarts ---- */

static void restart_replays_only_the_tail(void** state) {
  fx_t* fx = *state;
  txmq_store_t* st = open_store(&fx->loop, fx->dir, &DEF);
  const char* topics[] = {"a", "b"};
  exp_t* e = put_many(&fx->loop, st, 200, topics, 2, -1, "first");
  close_store(&fx->loop, st);

  /* A clean close leaves nothing to replay. */
  st = open_store(&fx->loop, fx->dir, &DEF);
  assert_int_equal(txmq_store_replayed(st), 0);
  assert_string_equal(txmq_store_diag(st), "");
  check_all(st, e, 200);
  check_dense(st, e, 200);
  /* A checkpoint, five more, then a "crash" (a copy of the directory). */
  checkpoint_now(&fx->loop, st);
  exp_t* f = put_many(&fx->loop, st, 5, topics, 2, -1, "tail");
  char* crash = tu_path(fx->root, "crash");
  assert_int_equal(tu_copy_tree(fx->dir, crash), 0);
  close_store(&fx->loop, st);

  st = open_store(&fx->loop, crash, &DEF);
  assert_int_equal(txmq_store_replayed(st), 5);
  check_all(st, e, 200);
  check_all(st, f, 5);
  exp_t all[205];
  memcpy(all, e, sizeof(exp_t) * 200);
  memcpy(all + 200, f, sizeof(exp_t) * 5);
  check_dense(st, all, 205);
  close_store(&fx->loop, st);
  free(crash);
  free(e);
  free(f);
}

static void rebuild_after_crash_without_checkpoint(void** state) {
  fx_t* fx = *state;
  txmq_store_t* st = open_store(&fx->loop, fx->dir, &DEF);
  const char* topics[] = {"x", "y", "z"};
  /* More than SMALL_FILES per queue: several index files each. */
  exp_t* e = put_many(&fx->loop, st, 900, topics, 3, -1, "c");
  assert_false(file_exists(fx->dir, "checkpoint"));
  char* crash = tu_path(fx->root, "crash");
  assert_int_equal(tu_copy_tree(fx->dir, crash), 0);
  close_store(&fx->loop, st);

  st = open_store(&fx->loop, crash, &DEF);
  assert_non_null(strstr(txmq_store_diag(st), "no checkpoint"));
  assert_int_equal(txmq_store_replayed(st), 900 + 3); /* + topic records */
  check_all(st, e, 900);
  check_dense(st, e, 900);
  close_store(&fx->loop, st);

  /* Checkpoint and index files deleted: the same from a full replay. */
  char* ck = tu_path(fx->dir, "checkpoint");
  char* idx = tu_path(fx->dir, "index");
  assert_int_equal(unlink(ck), 0);
  tu_rmrf(idx);
  st = open_store(&fx->loop, fx->dir, &DEF);
  assert_int_equal(txmq_store_replayed(st), 903);
  check_all(st, e, 900);
  check_dense(st, e, 900);
  close_store(&fx->loop, st);
  /* The rebuilt state was checkpointed: nothing to replay now. */
  st = open_store(&fx->loop, fx->dir, &DEF);
  assert_int_equal(txmq_store_replayed(st), 0);
  check_all(st, e, 900);
  close_store(&fx->loop, st);

  /* Index files deleted behind a sound checkpoint: detected, rebuilt;
   * whether all of them are gone or those of one queue that is not the
   * first to be loaded. */
  tu_rmrf(idx);
  st = open_store(&fx->loop, fx->dir, &DEF);
  assert_non_null(strstr(txmq_store_diag(st), "does not cover"));
  check_all(st, e, 900);
  close_store(&fx->loop, st);
  char* q2 = tu_path(fx->dir, "index/y/2");
  tu_rmrf(q2);
  free(q2);
  st = open_store(&fx->loop, fx->dir, &DEF);
  assert_non_null(strstr(txmq_store_diag(st), "index of y/2 does not cover"));
  assert_int_equal(txmq_store_replayed(st), 903);
  check_all(st, e, 900);
  check_dense(st, e, 900);
  close_store(&fx->loop, st);
  /* A file of a queue with the wrong size. */
  char* f1 = tu_path(fx->dir, "index/z/3/00000000000000000064.idx");
  assert_int_equal(tu_truncate(f1, 21), 0);
  free(f1);
  st = open_store(&fx->loop, fx->dir, &DEF);
  assert_non_null(strstr(txmq_store_diag(st), "bad size"));
  check_all(st, e, 900);
  close_store(&fx->loop, st);
  free(ck);
  free(idx);
  free(crash);
  free(e);
}

static void index_grows_by_files(void** state) {
  fx_t* fx = *state;
  opts_t o = DEF;
  o.entries = 100;
  txmq_store_t* st = open_store(&fx->loop, fx->dir, &o);
  assert_int_equal(txmq_store_create_topic(st, "one", 1), 0);
  const char* topics[] = {"one"};
  exp_t* e = put_many(&fx->loop, st, 350, topics, 1, -1, "g");
  for (int i = 0; i < 350; i++) assert_int_equal(e[i].off, i);
  const char* names[] = {"00000000000000000000.idx", "00000000000000000100.idx",
                         "00000000000000000200.idx", "00000000000000000300.idx"};
  for (int i = 0; i < 4; i++) {
    char rel[128];
    snprintf(rel, sizeof rel, "index/one/0/%s", names[i]);
    assert_true(file_exists(fx->dir, rel));
    char* p = tu_path(fx->dir, rel);
    assert_int_equal(tu_file_size(p), 100 * TXMQ_STORE_INDEX_ENTRY_SIZE);
    free(p);
  }
  assert_false(file_exists(fx->dir, "index/one/0/00000000000000000400.idx"));
  close_store(&fx->loop, st);
  /* Existing files keep their size even when new ones would be bigger. */
  o.entries = 1000;
  st = open_store(&fx->loop, fx->dir, &o);
  check_all(st, e, 350);
  exp_t* f = put_many(&fx->loop, st, 60, topics, 1, -1, "h");
  assert_int_equal(f[59].off, 409);
  check_all(st, f, 60);
  assert_true(file_exists(fx->dir, "index/one/0/00000000000000000400.idx"));
  char* p = tu_path(fx->dir, "index/one/0/00000000000000000400.idx");
  assert_int_equal(tu_file_size(p), 1000 * TXMQ_STORE_INDEX_ENTRY_SIZE);
  free(p);
  close_store(&fx->loop, st);
  st = open_store(&fx->loop, fx->dir, &o);
  check_all(st, e, 350);
  check_all(st, f, 60);
  close_store(&fx->loop, st);
  free(e);
  free(f);
}

static void default_index_file_size(void** state) {
  fx_t* fx = *state;
  opts_t o = DEF;
  o.entries = TXMQ_STORE_INDEX_FILE_ENTRIES;
  txmq_store_t* st = open_store(&fx->loop, fx->dir, &o);
  const char* topics[] = {"big"};
  exp_t* e = put_many(&fx->loop, st, 3, topics, 1, 0, "d");
  char* p = tu_path(fx->dir, "index/big/0/00000000000000000000.idx");
  assert_int_equal(tu_file_size(p),
                   (long long)TXMQ_STORE_INDEX_FILE_ENTRIES * TXMQ_STORE_INDEX_ENTRY_SIZE);
  /* Sparse: only the blocks written (and reserved ahead) take space. */
  struct stat sb;
  assert_int_equal(stat(p, &sb), 0);
  assert_true((long long)sb.st_blocks * 512 < 4LL * 1024 * 1024);
  free(p);
  close_store(&fx->loop, st);
  st = open_store(&fx->loop, fx->dir, &o);
  check_all(st, e, 3);
  close_store(&fx->loop, st);
  free(e);
}

static void write_entry(const char* path, int64_t idx, uint64_t pos, uint32_t len) {
  uint8_t ent[20];
  for (int i = 0; i < 8; i++) ent[i] = (uint8_t)(pos >> (8 * i));
  for (int i = 0; i < 4; i++) ent[8 + i] = (uint8_t)(len >> (8 * i));
  memset(ent + 12, 0xEE, 8);
  int fd = open(path, O_WRONLY);
  assert_true(fd >= 0);
  assert_int_equal(pwrite(fd, ent, 20, (off_t)idx * 20), 20);
  close(fd);
}

static void stale_index_entries_are_overwritten(void** state) {
  fx_t* fx = *state;
  txmq_store_t* st = open_store(&fx->loop, fx->dir, &DEF);
  assert_int_equal(txmq_store_create_topic(st, "s", 1), 0);
  const char* topics[] = {"s"};
  exp_t* e = put_many(&fx->loop, st, 10, topics, 1, -1, "before");
  checkpoint_now(&fx->loop, st);
  exp_t* f = put_many(&fx->loop, st, 5, topics, 1, -1, "after");
  uint64_t cut;
  assert_int_equal(txmq_store_entry(st, "s", 0, 10, &cut, NULL), 0);
  char* crash1 = tu_path(fx->root, "crash1");
  char* crash2 = tu_path(fx->root, "crash2");
  assert_int_equal(tu_copy_tree(fx->dir, crash1), 0);
  assert_int_equal(tu_copy_tree(fx->dir, crash2), 0);
  close_store(&fx->loop, st);

  /* (1) Garbage in the entries past the checkpointed count: the replayed
   * tail writes over it. */
  char* idx1 = tu_path(crash1, "index/s/0/00000000000000000000.idx");
  for (int64_t i = 10; i < 20; i++) write_entry(idx1, i, 12345 + (uint64_t)i, 77);
  st = open_store(&fx->loop, crash1, &DEF);
  assert_int_equal(txmq_store_replayed(st), 5);
  check_all(st, e, 10);
  check_all(st, f, 5);
  int64_t b, en;
  assert_int_equal(txmq_store_queue_range(st, "s", 0, &b, &en), 0);
  assert_int_equal(en, 15);
  close_store(&fx->loop, st);

  /* (2) The log lost its tail after the checkpoint, but the index file
   * still holds entries for it: they are stale, and new messages take
   * their offsets. */
  char* seg = tu_path(crash2, "log/00000000000000000000.log");
  assert_int_equal(tu_truncate(seg, (long long)(cut + TXMQ_LOG_SEGMENT_HEADER_SIZE)), 0);
  st = open_store(&fx->loop, crash2, &DEF);
  assert_int_equal(txmq_store_replayed(st), 0);
  assert_int_equal(txmq_store_queue_range(st, "s", 0, &b, &en), 0);
  assert_int_equal(en, 10);
  txmq_msg_t* m;
  assert_int_equal(txmq_store_get(st, "s", 0, 10, &m), TXMQ_ERANGE);
  exp_t* g = put_many(&fx->loop, st, 3, topics, 1, -1, "new");
  for (int i = 0; i < 3; i++) assert_int_equal(g[i].off, 10 + i);
  check_all(st, e, 10);
  check_all(st, g, 3);
  close_store(&fx->loop, st);
  st = open_store(&fx->loop, crash2, &DEF);
  check_all(st, g, 3);
  close_store(&fx->loop, st);
  free(seg);
  free(idx1);
  free(crash1);
  free(crash2);
  free(e);
  free(f);
  free(g);
}

static void corrupt_checkpoint_falls_back_to_full_replay(void** state) {
  fx_t* fx = *state;
  txmq_store_t* st = open_store(&fx->loop, fx->dir, &DEF);
  const char* topics[] = {"k1", "k2"};
  exp_t* e = put_many(&fx->loop, st, 120, topics, 2, -1, "ck");
  assert_int_equal(txmq_store_offset_set(st, "grp", "k1", 0, 3), 0);
  close_store(&fx->loop, st);
  char* ck = tu_path(fx->dir, "checkpoint");
  char* bad = tu_path(fx->dir, "checkpoint.bad");
  size_t len;
  uint8_t* good = tu_read_file(ck, &len);
  assert_non_null(good);
  assert_memory_equal(good, "TXMQCKP1", 8);

  /* A flipped bit in the map, a bad magic, a truncated file, a bad length:
   * each is reported, nothing of it is used, the indexes are rebuilt. */
  for (int variant = 0; variant < 4; variant++) {
    assert_int_equal(tu_write_file(ck, good, len), 0);
    if (variant == 0) assert_int_equal(tu_flip(ck, (long long)len - 3, 0x10), 0);
    if (variant == 1) assert_int_equal(tu_flip(ck, 0, 0x01), 0);
    if (variant == 2) assert_int_equal(tu_truncate(ck, (long long)len / 2), 0);
    if (variant == 3) assert_int_equal(tu_flip(ck, 12, 0x01), 0);
    st = open_store(&fx->loop, fx->dir, &DEF);
    const char* d = txmq_store_diag(st);
    if (strstr(d, "checkpoint is corrupt") == NULL)
      fail_msg("variant %d: diag is \"%s\"", variant, d);
    assert_true(file_exists(fx->dir, "checkpoint.bad"));
    assert_int_equal(txmq_store_replayed(st), 122);
    check_all(st, e, 120);
    check_dense(st, e, 120);
    int64_t off;
    assert_int_equal(txmq_store_offset_get(st, "grp", "k1", 0, &off), TXMQ_ENOTFOUND);
    close_store(&fx->loop, st);
    unlink(bad);
  }
  free(good);
  free(ck);
  free(bad);
  free(e);
}

static void checkpoint_ahead_of_log_rebuilds(void** state) {
  fx_t* fx = *state;
  txmq_store_t* st = open_store(&fx->loop, fx->dir, &DEF);
  const char* topics[] = {"w"};
  exp_t* e = put_many(&fx->loop, st, 20, topics, 1, 0, "w");
  assert_int_equal(txmq_store_offset_set(st, "grp", "w", 0, 4), 0);
  uint64_t cut;
  assert_int_equal(txmq_store_entry(st, "w", 0, 15, &cut, NULL), 0);
  close_store(&fx->loop, st);
  /* The disk lost the log's tail but kept the checkpoint. */
  char* seg = tu_path(fx->dir, "log/00000000000000000000.log");
  assert_int_equal(tu_truncate(seg, (long long)(cut + TXMQ_LOG_SEGMENT_HEADER_SIZE)), 0);
  st = open_store(&fx->loop, fx->dir, &DEF);
  assert_non_null(strstr(txmq_store_diag(st), "ahead of the log"));
  int64_t b, en, off;
  assert_int_equal(txmq_store_queue_range(st, "w", 0, &b, &en), 0);
  assert_int_equal(en, 15);
  check_all(st, e, 15);
  /* A sound checkpoint's offsets are kept. */
  assert_int_equal(txmq_store_offset_get(st, "grp", "w", 0, &off), 0);
  assert_int_equal(off, 4);
  close_store(&fx->loop, st);
  free(seg);
  free(e);
}

/* Rewrites the checkpoint file at path with "applied" and "replay_from"
 * set as given (and "snapshot" dropped), its checksum right: a checkpoint
 * as a damaged or foreign writer could leave it. */
static void ckpt_rewrite(const char* path, uint64_t applied, uint64_t from) {
  size_t len;
  uint8_t* f = tu_read_file(path, &len);
  assert_non_null(f);
  assert_true(len > 16);
  msgpack_unpacked u;
  msgpack_unpacked_init(&u);
  assert_int_equal(msgpack_unpack_next(&u, (const char*)f + 16, len - 16, NULL),
                   MSGPACK_UNPACK_SUCCESS);
  const msgpack_object_map* m = &u.data.via.map;
  msgpack_sbuffer sb;
  msgpack_sbuffer_init(&sb);
  msgpack_packer pk;
  msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
  uint32_t n = 0;
  for (uint32_t i = 0; i < m->size; i++)
    n += !(m->ptr[i].key.via.str.size == 8 &&
           memcmp(m->ptr[i].key.via.str.ptr, "snapshot", 8) == 0);
  msgpack_pack_map(&pk, n);
  for (uint32_t i = 0; i < m->size; i++) {
    const msgpack_object_str* k = &m->ptr[i].key.via.str;
    if (k->size == 8 && memcmp(k->ptr, "snapshot", 8) == 0) continue;
    msgpack_pack_object(&pk, m->ptr[i].key);
    if (k->size == 7 && memcmp(k->ptr, "applied", 7) == 0)
      msgpack_pack_uint64(&pk, applied);
    else if (k->size == 11 && memcmp(k->ptr, "replay_from", 11) == 0)
      msgpack_pack_uint64(&pk, from);
    else
      msgpack_pack_object(&pk, m->ptr[i].val);
  }
  msgpack_unpacked_destroy(&u);
  uint8_t* out = malloc(16 + sb.size);
  memcpy(out, "TXMQCKP1", 8);
  uint32_t ml = (uint32_t)sb.size;
  memcpy(out + 12, &ml, 4); /* little-endian, as the machines we run on */
  memcpy(out + 16, sb.data, sb.size);
  uint32_t crc = txmq_crc32c(0, out + 12, 4 + sb.size);
  memcpy(out + 8, &crc, 4);
  assert_int_equal(tu_write_file(path, out, 16 + sb.size), 0);
  free(out);
  free(f);
  msgpack_sbuffer_destroy(&sb);
}

/* A checkpoint whose checksum holds but whose position falls inside a
 * record: the open rebuilds the indexes instead of replaying from there,
 * and what it then writes opens again. */
static void checkpoint_inside_a_record_rebuilds(void** state) {
  fx_t* fx = *state;
  txmq_store_t* st = open_store(&fx->loop, fx->dir, &DEF);
  const char* topics[] = {"w"};
  exp_t* e = put_many(&fx->loop, st, 20, topics, 1, 0, "w");
  uint64_t last;
  assert_int_equal(txmq_store_entry(st, "w", 0, 19, &last, NULL), 0);
  close_store(&fx->loop, st);
  char* ck = tu_path(fx->dir, "checkpoint");
  ckpt_rewrite(ck, last + 3, 0);
  st = open_store(&fx->loop, fx->dir, &DEF);
  if (strstr(txmq_store_diag(st), "are not where records start") == NULL)
    fail_msg("diag is \"%s\"", txmq_store_diag(st));
  check_all(st, e, 20);
  close_store(&fx->loop, st);
  st = open_store(&fx->loop, fx->dir, &DEF);
  assert_null(strstr(txmq_store_diag(st), "rebuilding"));
  check_all(st, e, 20);
  close_store(&fx->loop, st);
  free(ck);
  free(e);
}

/* A listing of every file under dir: path, size, mtime and crc. */
static void snapshot(const char* dir, const char* rel, char** out, size_t* len) {
  char* full = rel[0] ? tu_path(dir, rel) : strdup(dir);
  DIR* d = opendir(full);
  assert_non_null(d);
  struct dirent* de;
  char** names = NULL;
  size_t n = 0;
  while ((de = readdir(d)) != NULL) {
    if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0) continue;
    names = realloc(names, (n + 1) * sizeof *names);
    names[n++] = strdup(de->d_name);
  }
  closedir(d);
  for (size_t i = 0; i < n; i++)
    for (size_t j = i + 1; j < n; j++)
      if (strcmp(names[i], names[j]) > 0) {
        char* t = names[i];
        names[i] = names[j];
        names[j] = t;
      }
  for (size_t i = 0; i < n; i++) {
    char r[1024];
    snprintf(r, sizeof r, "%s%s%s", rel, rel[0] ? "/" : "", names[i]);
    char* p = tu_path(dir, r);
    struct stat sb;
    assert_int_equal(stat(p, &sb), 0);
    char line[1400];
    if (S_ISDIR(sb.st_mode)) {
      snprintf(line, sizeof line, "D %s %lld\n", r, (long long)sb.st_mtim.tv_nsec);
    } else {
      size_t flen;
      uint8_t* data = tu_read_file(p, &flen);
      snprintf(line, sizeof line, "F %s %zu %lld.%09ld %08x\n", r, flen,
               (long long)sb.st_mtim.tv_sec, sb.st_mtim.tv_nsec,
               txmq_crc32c(0, data, flen));
      free(data);
    }
    *out = realloc(*out, *len + strlen(line) + 1);
    memcpy(*out + *len, line, strlen(line) + 1);
    *len += strlen(line);
    if (S_ISDIR(sb.st_mode)) snapshot(dir, r, out, len);
    free(p);
    free(names[i]);
  }
  free(names);
  free(full);
}

static char* snap(const char* dir) {
  char* s = calloc(1, 1);
  size_t n = 0;
  snapshot(dir, "", &s, &n);
  return s;
}

static void read_only_open_changes_nothing(void** state) {
  fx_t* fx = *state;
  txmq_store_t* st = open_store(&fx->loop, fx->dir, &DEF);
  const char* topics[] = {"ro1", "ro2"};
  exp_t* e = put_many(&fx->loop, st, 150, topics, 2, -1, "ro");
  checkpoint_now(&fx->loop, st);
  exp_t* f = put_many(&fx->loop, st, 150, topics, 2, -1, "tail");
  /* A directory with a checkpoint and a tail to replay. */
  char* crash = tu_path(fx->root, "crash");
  assert_int_equal(tu_copy_tree(fx->dir, crash), 0);
  close_store(&fx->loop, st);
  /* And one without a checkpoint at all. */
  char* nock = tu_path(fx->root, "nock");
  assert_int_equal(tu_copy_tree(crash, nock), 0);
  char* p = tu_path(nock, "checkpoint");
  assert_int_equal(unlink(p), 0);
  free(p);

  const char* dirs[] = {crash, nock};
  for (int i = 0; i < 2; i++) {
    char* before = snap(dirs[i]);
    opts_t o = DEF;
    o.read_only = 1;
    st = open_store(&fx->loop, dirs[i], &o);
    assert_true(txmq_store_replayed(st) >= 150);
    check_all(st, e, 150);
    check_all(st, f, 150);
    txmq_msg_t* m = txmq_msg_new();
    assert_int_equal(txmq_msg_set_topic(m, "ro1"), 0);
    assert_int_equal(txmq_store_put(st, m, NULL, NULL), TXMQ_EROFS);
    txmq_msg_free(m);
    assert_int_equal(txmq_store_create_topic(st, "new", 1), TXMQ_EROFS);
    assert_int_equal(txmq_store_offset_set(st, "g", "ro1", 0, 1), TXMQ_EROFS);
    assert_int_equal(txmq_store_checkpoint(st, NULL, NULL), TXMQ_EROFS);
    close_store(&fx->loop, st);
    char* after = snap(dirs[i]);
    assert_string_equal(before, after);
    free(before);
    free(after);
  }
  /* Without a loop, too. */
  char* before = snap(crash);
  txmq_store_t* ro;
  assert_int_equal(txmq_store_new(&ro, NULL, crash), 0);
  assert_int_equal(txmq_store_set(ro, TXMQ_STORE_OPT_READ_ONLY, 1), 0);
  assert_int_equal(txmq_store_open(ro), 0);
  check_all(ro, f, 150);
  int r[2] = {0, -1};
  assert_int_equal(txmq_store_close(ro, on_done, r), 0);
  assert_int_equal(r[0], 1); /* no loop: at once */
  assert_int_equal(r[1], 0);
  txmq_store_free(ro);
  char* after = snap(crash);
  assert_string_equal(before, after);
  free(before);
  free(after);
  /* A read-only open of a directory that does not exist fails cleanly. */
  char* none = tu_path(fx->root, "none");
  assert_int_equal(txmq_store_new(&ro, NULL, none), 0);
  assert_int_equal(txmq_store_set(ro, TXMQ_STORE_OPT_READ_ONLY, 1), 0);
  assert_int_not_equal(txmq_store_open(ro), 0);
  txmq_store_free(ro);
  struct stat sb;
  assert_int_not_equal(stat(none, &sb), 0);
  free(none);
  free(crash);
  free(nock);
  free(e);
  free(f);
}

static void close_with_puts_in_flight_and_checkpoint_busy(void** state) {
  fx_t* fx = *state;
  opts_t o = DEF;
  o.sync = TXMQ_SYNC_ALWAYS;
  txmq_store_t* st = open_store(&fx->loop, fx->dir, &o);
  enum { N = 50 };
  exp_t* e = calloc(N, sizeof *e);
  counter_t c = {0, 0};
  for (int i = 0; i < N; i++) {
    snprintf(e[i].topic, sizeof e[i].topic, "fl");
    snprintf(e[i].body, sizeof e[i].body, "inflight-%d", i);
    e[i].qid = -1;
    put_async(st, &e[i], &c);
  }
  /* One checkpoint at a time. */
  int r1[2] = {0, -1};
  assert_int_equal(txmq_store_checkpoint(st, on_done, r1), 0);
  assert_int_equal(txmq_store_checkpoint(st, NULL, NULL), TXMQ_EBUSY);
  int r[2] = {0, -999};
  assert_int_equal(txmq_store_close(st, on_done, r), 0);
  assert_int_equal(txmq_store_close(st, NULL, NULL), TXMQ_ECLOSED);
  txmq_msg_t* m = txmq_msg_new();
  assert_int_equal(txmq_msg_set_topic(m, "fl"), 0);
  assert_int_equal(txmq_store_put(st, m, NULL, NULL), TXMQ_ECLOSED);
  txmq_msg_free(m);
  assert_true(tu_run_until(&fx->loop, &r[0], 10000));
  assert_int_equal(r[1], 0);
  assert_int_equal(r1[0], 1);
  assert_int_equal(r1[1], 0);
  assert_int_equal(c.n, N);
  assert_int_equal(c.failed, 0);
  txmq_store_free(st);
  st = open_store(&fx->loop, fx->dir, &DEF);
  assert_int_equal(txmq_store_replayed(st), 0);
  check_all(st, e, N);
  check_dense(st, e, N);
  close_store(&fx->loop, st);
  free(e);
}

static void periodic_checkpoint(void** state) {
  fx_t* fx = *state;
  opts_t o = DEF;
  o.ckpt_ms = 20;
  txmq_store_t* st = open_store(&fx->loop, fx->dir, &o);
  const char* topics[] = {"p"};
  exp_t* e = put_many(&fx->loop, st, 10, topics, 1, -1, "p");
  char* ck = tu_path(fx->dir, "checkpoint");
  for (int i = 0; i < 500 && tu_file_size(ck) < 0; i++) {
    volatile int never = 0;
    tu_run_until(&fx->loop, &never, 10);
  }
  assert_true(tu_file_size(ck) > 0);
  /* Crash now: the periodic checkpoint covers everything. */
  volatile int never = 0;
  tu_run_until(&fx->loop, &never, 100);
  char* crash = tu_path(fx->root, "crash");
  assert_int_equal(tu_copy_tree(fx->dir, crash), 0);
  close_store(&fx->loop, st);
  st = open_store(&fx->loop, crash, &DEF);
  assert_int_equal(txmq_store_replayed(st), 0);
  check_all(st, e, 10);
  close_store(&fx->loop, st);
  free(crash);
  free(ck);
  free(e);
}

static uint64_t floor_var(txmq_store_t* st, void* arg) {
  (void)st;
  return *(uint64_t*)arg;
}

/* Small index files and segments, retention past 8 KiB, and a replay
 * floor the test moves through *floor. */
static opts_t retention_opts(uint64_t* floor) {
  opts_t o = DEF;
  o.entries = 16;
  o.segment_size = 4096;
  o.retain_bytes = 8192;
  o.floor_cb = floor_var;
  o.hook_arg = floor;
  return o;
}

static void retention_moves_queue_begin(void** state) {
  fx_t* fx = *state;
  uint64_t floor = 0;
  opts_t o = retention_opts(&floor);
  txmq_store_t* st = open_store(&fx->loop, fx->dir, &o);
  assert_int_equal(txmq_store_create_topic(st, "r", 1), 0);
  const char* topics[] = {"r"};
  exp_t* e = put_many(&fx->loop, st, 300, topics, 1, 0, "retained");
  txmq_log_t* log = txmq_store_log(st);
  assert_true(txmq_log_segment_count(log) > 4);
  /* The replay floor holds every segment. */
  checkpoint_now(&fx->loop, st);
  assert_int_equal(txmq_log_begin(log), 0);
  int64_t b, en;
  assert_int_equal(txmq_store_queue_range(st, "r", 0, &b, &en), 0);
  assert_int_equal(b, 0);
  /* Released, the next checkpoint lets retention go. */
  floor = UINT64_MAX;
  checkpoint_now(&fx->loop, st);
  uint64_t lb = txmq_log_begin(log);
  assert_true(lb > 0);
  assert_int_equal(txmq_store_queue_range(st, "r", 0, &b, &en), 0);
  assert_true(b > 16);
  assert_int_equal(en, 300);
  uint64_t pos;
  assert_int_equal(txmq_store_entry(st, "r", 0, b, &pos, NULL), 0);
  assert_true(pos >= lb);
  txmq_msg_t* m;
  assert_int_equal(txmq_store_get(st, "r", 0, b - 1, &m), TXMQ_ERANGE);
  check_all(st, e + b, 300 - (int)b);
  /* Index files wholly below begin are gone; the one holding begin is
   * not. */
  assert_false(file_exists(fx->dir, "index/r/0/00000000000000000000.idx"));
  char rel[64];
  snprintf(rel, sizeof rel, "index/r/0/%020lld.idx", (long long)(b / 16 * 16));
  assert_true(file_exists(fx->dir, rel));
  close_store(&fx->loop, st);

  st = open_store(&fx->loop, fx->dir, &o);
  int64_t b2;
  assert_int_equal(txmq_store_queue_range(st, "r", 0, &b2, &en), 0);
  assert_int_equal(b2, b);
  assert_int_equal(en, 300);
  assert_int_equal(txmq_store_replayed(st), 0);
  check_all(st, e + b, 300 - (int)b);
  close_store(&fx->loop, st);
  free(e);
}

/* The last n messages of topic/qid have e's bodies, in order. */
static void queue_ends_with(txmq_store_t* st, const char* topic, int qid,
                            const exp_t* e, int n) {
  int64_t b, en;
  assert_int_equal(txmq_store_queue_range(st, topic, qid, &b, &en), 0);
  assert_true(en - b >= n);
  for (int i = 0; i < n; i++) {
    txmq_msg_t* m = NULL;
    assert_int_equal(txmq_store_get(st, topic, qid, en - n + i, &m), 0);
    size_t len;
    const void* body = txmq_msg_body(m, &len);
    assert_int_equal(len, strlen(e[i].body));
    assert_memory_equal(body, e[i].body, len);
    assert_memory_equal(txmq_msg_id(m), e[i].id, 16);
    txmq_msg_free(m);
  }
}

/* Retention took the topic's record, then the checkpoint was lost: the
 * rebuild recreates the topic from its messages. Its first message is on
 * queue 1, a later one on queue 6 (beyond the default queue count): the
 * topic must take queue 6 too, not skip its messages. */
static void rebuild_recreated_topic_takes_every_queue(void** state) {
  fx_t* fx = *state;
  uint64_t floor = UINT64_MAX;
  opts_t o = retention_opts(&floor);
  txmq_store_t* st = open_store(&fx->loop, fx->dir, &o);
  assert_int_equal(txmq_store_create_topic(st, "w", 8), 0);
  const char* topics[] = {"w"};
  exp_t* old = put_many(&fx->loop, st, 200, topics, 1, 1, "old");
  exp_t* e1 = put_many(&fx->loop, st, 10, topics, 1, 1, "one");
  exp_t* e6 = put_many(&fx->loop, st, 10, topics, 1, 6, "six");
  checkpoint_now(&fx->loop, st);
  txmq_log_t* log = txmq_store_log(st);
  uint64_t lb = txmq_log_begin(log);
  assert_true(lb > 0); /* the topic's record is gone */
  close_store(&fx->loop, st);

  char* ck = tu_path(fx->dir, "checkpoint");
  char* idx = tu_path(fx->dir, "index");
  assert_int_equal(unlink(ck), 0);
  tu_rmrf(idx);
  int rc = try_open(&fx->loop, fx->dir, &o, &st);
  if (rc != 0) fail_msg("open: %s: %s", txmq_err_name(rc), txmq_store_diag(st));
  assert_non_null(strstr(txmq_store_diag(st), "topic w recreated"));
  assert_true(txmq_store_topic_queues(st, "w") >= 7);
  /* Records do not carry their queue offsets: a rebuild from a log whose
   * front is gone numbers each queue from 0 again. Every retained message
   * is there, in order. */
  queue_ends_with(st, "w", 1, e1, 10);
  queue_ends_with(st, "w", 6, e6, 10);
  close_store(&fx->loop, st);
  /* And the same after that rebuild's checkpoint. */
  st = open_store(&fx->loop, fx->dir, &o);
  assert_int_equal(txmq_store_replayed(st), 0);
  queue_ends_with(st, "w", 1, e1, 10);
  queue_ends_with(st, "w", 6, e6, 10);
  close_store(&fx->loop, st);
  free(ck);
  free(idx);
  free(old);
  free(e1);
  free(e6);
}

void txmq__log_inject_fault(txmq_log_t* log, int what, int err);

static void put_status(txmq_store_t* st, int status, const txmq_msg_t* msg,
                       void* arg) {
  (void)st;
  (void)msg;
  int* r = arg;
  r[0] = 1;
  r[1] = status;
}

static void log_failure_is_reported(void** state) {
  fx_t* fx = *state;
  opts_t o = DEF;
  o.sync = TXMQ_SYNC_ALWAYS;
  txmq_store_t* st = open_store(&fx->loop, fx->dir, &o);
  const char* topics[] = {"f"};
  exp_t* e = put_many(&fx->loop, st, 5, topics, 1, 0, "ok");
  checkpoint_now(&fx->loop, st);
  txmq__log_inject_fault(txmq_store_log(st), 0, 5 /* EIO */);
  txmq_msg_t* m = txmq_msg_new();
  assert_int_equal(txmq_msg_set_topic(m, "f"), 0);
  int r[2] = {0, 0};
  assert_int_equal(txmq_store_put(st, m, put_status, r), 0);
  assert_true(tu_run_until(&fx->loop, &r[0], 10000));
  assert_true(r[1] < 0);
  assert_int_equal(txmq_store_put(st, m, put_status, r), TXMQ_EFAILED);
  assert_int_equal(txmq_store_checkpoint(st, NULL, NULL), TXMQ_EFAILED);
  txmq_msg_free(m);
  /* Close still closes, and says the final checkpoint failed. */
  int c[2] = {0, 0};
  assert_int_equal(txmq_store_close(st, on_done, c), 0);
  assert_true(tu_run_until(&fx->loop, &c[0], 10000));
  assert_true(c[1] < 0);
  txmq_store_free(st);
  st = open_store(&fx->loop, fx->dir, &DEF);
  int64_t b, en;
  assert_int_equal(txmq_store_queue_range(st, "f", 0, &b, &en), 0);
  assert_int_equal(en, 5);
  check_all(st, e, 5);
  close_store(&fx->loop, st);
  free(e);
}

static void index_failure_stops_writes_until_reopen(void** state) {
  fx_t* fx = *state;
  txmq_store_t* st = open_store(&fx->loop, fx->dir, &DEF);
  const char* ok[] = {"ok"};
  exp_t* e = put_many(&fx->loop, st, 3, ok, 1, 0, "ok");
  checkpoint_now(&fx->loop, st);
  /* A file where the topic's index directory should go: the message is
   * durable in the log but cannot be indexed. */
  char* blocker = tu_path(fx->dir, "index/blocked");
  assert_int_equal(tu_write_file(blocker, "x", 1), 0);
  txmq_msg_t* m = txmq_msg_new();
  assert_int_equal(txmq_msg_set_topic(m, "blocked"), 0);
  assert_int_equal(txmq_msg_set_body(m, "late", 4), 0);
  txmq_msg_set_queue_id(m, 0);
  int r[2] = {0, 0};
  assert_int_equal(txmq_store_put(st, m, put_status, r), 0);
  assert_true(tu_run_until(&fx->loop, &r[0], 10000));
  assert_int_equal(r[1], TXMQ_EIO);
  assert_non_null(strstr(txmq_store_diag(st), "index/blocked/0"));
  /* Writes are refused from now on; reads still work. */
  assert_int_equal(txmq_store_put(st, m, NULL, NULL), TXMQ_EFAILED);
  assert_int_equal(txmq_store_offset_set(st, "g", "ok", 0, 1), TXMQ_EFAILED);
  assert_int_equal(txmq_store_checkpoint(st, NULL, NULL), TXMQ_EFAILED);
  check_all(st, e, 3);
  txmq_msg_t* got;
  assert_int_equal(txmq_store_get(st, "blocked", 0, 0, &got), TXMQ_ERANGE);
  txmq_msg_free(m);
  int c[2] = {0, 0};
  assert_int_equal(txmq_store_close(st, on_done, c), 0);
  assert_true(tu_run_until(&fx->loop, &c[0], 10000));
  assert_int_equal(c[1], TXMQ_EIO);
  txmq_store_free(st);
  /* Once the obstacle is gone, the next open indexes the message from the
   * log: the checkpoint on disk stops before it. */
  assert_int_equal(unlink(blocker), 0);
  st = open_store(&fx->loop, fx->dir, &DEF);
  assert_int_equal(txmq_store_replayed(st), 2); /* topic + message */
  assert_int_equal(txmq_store_get(st, "blocked", 0, 0, &got), 0);
  size_t len;
  assert_memory_equal(txmq_msg_body(got, &len), "late", 4);
  txmq_msg_free(got);
  check_all(st, e, 3);
  close_store(&fx->loop, st);
  free(blocker);
  free(e);
}

static void open_errors(void** state) {
  fx_t* fx = *state;
  txmq_store_t* st;
  assert_int_equal(txmq_store_new(&st, &fx->loop, ""), TXMQ_EINVAL);
  assert_int_equal(txmq_store_new(NULL, &fx->loop, fx->dir), TXMQ_EINVAL);
  /* A writable store needs a loop. */
  assert_int_equal(txmq_store_new(&st, NULL, fx->dir), 0);
  assert_int_equal(txmq_store_open(st), TXMQ_EINVAL);
  txmq_store_free(st);
  /* Two stores on one directory: the log's lock refuses the second. */
  txmq_store_t* a = open_store(&fx->loop, fx->dir, &DEF);
  txmq_store_t* b;
  assert_int_equal(txmq_store_new(&b, &fx->loop, fx->dir), 0);
  assert_int_equal(txmq_store_open(b), TXMQ_ELOCKED);
  txmq_store_free(b);
  close_store(&fx->loop, a);
  /* Free of a store never opened. */
  assert_int_equal(txmq_store_new(&st, &fx->loop, fx->dir), 0);
  txmq_store_free(st);
  txmq_store_free(NULL);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(put_get_across_topics_and_queues, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(queue_selection_explicit_and_round_robin, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(topics_names_and_limits, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(publish_foreign_record_messages, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(record_handler_failure_aborts_open, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(consumer_offsets_survive_restart, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(restart_replays_only_the_tail, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(rebuild_after_crash_without_checkpoint, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(index_grows_by_files, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(default_index_file_size, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(stale_index_entries_are_overwritten, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(corrupt_checkpoint_falls_back_to_full_replay, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(checkpoint_ahead_of_log_rebuilds, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(checkpoint_inside_a_record_rebuilds, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(read_only_open_changes_nothing, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(close_with_puts_in_flight_and_checkpoint_busy, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(periodic_checkpoint, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(retention_moves_queue_begin, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(rebuild_recreated_topic_takes_every_queue, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(log_failure_is_reported, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(index_failure_stops_writes_until_reopen, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(open_errors, fx_setup, fx_teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
