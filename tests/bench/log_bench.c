/*
 * log_bench.c - figures for the commit log and the store's restart. It
 * prints numbers and asserts nothing about speed (it fails only when the
 * storage itself fails or loses messages).
 *
 *   bench=raw_fdatasync   the disk's floor: 4 KiB O_APPEND write + fdatasync
 *                         in a loop, measured before and after the log runs
 *                         (the samples are pooled: the machine drifts)
 *   bench=log             256-byte txmq_log_append under each sync policy at
 *                         1, 32 and 256 appenders; an appender is a chain
 *                         that issues its next append from the callback of
 *                         the previous one; latency is append -> callback
 *   bench=group_commit    sync=always at 256 appenders over the raw rate:
 *                         what group commit buys
 *   bench=restart         txmq_store_open of a store holding 1,000,000
 *                         messages: after a clean close (checkpoint), and
 *                         after the checkpoint is removed (full replay); the
 *                         log is in the page cache (warm restart)
 *
 *   log_bench [--smoke]   --smoke: tiny durations and counts (ctest)
 *   BENCH_DIR=/mnt/disk   where the data goes (default $TMPDIR, then /tmp);
 *                         a fresh directory is created there and removed
 */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <uv.h>

#include "txmq/error.h"
#include "txmq/log.h"
#include "txmq/msg.h"
#include "txmq/store.h"

#define PAYLOAD 256
#define MAX_APPENDERS 256

static const char* sync_names[] = {"always", "interval", "never"};

static void fail(const char* what, int err) {
  fprintf(stderr, "log_bench: %s: %s (%s)\n", what, txmq_strerror(err), txmq_err_name(err));
  exit(1);
}

static void* xmalloc(size_t n) {
  void* p = malloc(n);
  if (!p) fail("malloc", TXMQ_ENOMEM);
  return p;
}

/* ---- latency samples ---- */

typedef struct {
  uint64_t* v;
  size_t n, cap;
} samples_t;

static void samples_add(samples_t* s, uint64_t ns) {
  if (s->n == s->cap) {
    s->cap = s->cap ? s->cap * 2 : 4096;
    uint64_t* nv = realloc(s->v, s->cap * sizeof *nv);
    if (!nv) fail("realloc", TXMQ_ENOMEM);
    s->v = nv;
  }
  s->v[s->n++] = ns;
}

static int cmp_u64(const void* a, const void* b) {
  uint64_t x = *(const uint64_t*)a, y = *(const uint64_t*)b;
  return x < y ? -1 : x > y;
}

/* Percentile p (0..100) in microseconds; sorts the samples. */
static double pct_us(samples_t* s, int p) {
  if (!s->n) return 0;
  qsort(s->v, s->n, sizeof *s->v, cmp_u64);
  size_t i = s->n * (size_t)p / 100;
  if (i >= s->n) i = s->n - 1;
  return (double)s->v[i] / 1e3;
}

/* ---- files ---- */

static int rm_one(const char* path, const struct stat* sb, int flag, struct FTW* ftw) {
  (void)sb;
  (void)flag;
  (void)ftw;
  remove(path);
  return 0;
}

static void rm_rf(const char* path) {
  nftw(path, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

static char* path_join(const char* a, const char* b) {
  size_t n = strlen(a) + strlen(b) + 2;
  char* p = xmalloc(n);
  snprintf(p, n, "%s/%s", a, b);
  return p;
}

/* ---- raw fdatasync ---- */

typedef struct {
  samples_t lat;
  double secs;
} raw_t;

static void raw_fdatasync(const char* dir, double secs, raw_t* acc) {
  char* path = path_join(dir, "raw.dat");
  int fd = open(path, O_CREAT | O_TRUNC | O_WRONLY | O_APPEND, 0644);
  if (fd < 0) fail(path, txmq_err_from_errno(errno));
  static char buf[4096];
  memset(buf, 'x', sizeof buf);
  uint64_t t0 = uv_hrtime(), lim = (uint64_t)(secs * 1e9), t = t0;
  while (t - t0 < lim) {
    uint64_t a = uv_hrtime();
    if (write(fd, buf, sizeof buf) != (ssize_t)sizeof buf) fail("raw write", TXMQ_EIO);
    if (fdatasync(fd) != 0) fail("raw fdatasync", txmq_err_from_errno(errno));
    t = uv_hrtime();
    samples_add(&acc->lat, t - a);
  }
  acc->secs += (double)(t - t0) / 1e9;
  close(fd);
  unlink(path);
  free(path);
}

/* ---- log appends ---- */

typedef struct run_s run_t;
typedef struct {
  run_t* run;
  uint64_t t0;
} chain_t;

struct run_s {
  uv_loop_t loop;
  uv_timer_t watchdog;
  txmq_log_t* log;
  chain_t chains[MAX_APPENDERS];
  int active;
  int failed;
  uint64_t start, deadline, stop_at;
  uint64_t done;
  uint64_t fsync0, fsync1;
  samples_t lat;
  uint8_t payload[PAYLOAD];
};

static void log_closed(txmq_log_t* log, void* arg) {
  (void)log;
  run_t* r = arg;
  uv_close((uv_handle_t*)&r->watchdog, NULL);
}

static void chain_stop(run_t* r) {
  if (--r->active > 0) return;
  r->stop_at = uv_hrtime();
  r->fsync1 = txmq_log_fsync_count(r->log);
  int e = txmq_log_close(r->log, log_closed, r);
  if (e) fail("txmq_log_close", e);
}

static void issue(chain_t* c);

static void appended(txmq_log_t* log, int status, uint64_t first, void* arg) {
  (void)log;
  (void)first;
  chain_t* c = arg;
  run_t* r = c->run;
  uint64_t now = uv_hrtime();
  if (status) {
    fprintf(stderr, "log_bench: append failed: %s\n", txmq_strerror(status));
    r->failed = 1;
  } else {
    r->done++;
    samples_add(&r->lat, now - c->t0);
  }
  if (r->failed || now >= r->deadline)
    chain_stop(r);
  else
    issue(c);
}

static void issue(chain_t* c) {
  run_t* r = c->run;
  txmq_log_rec_t rec = {.type = TXMQ_REC_FIRST_FOREIGN, .data = r->payload, .len = PAYLOAD};
  c->t0 = uv_hrtime();
  int e = txmq_log_append(r->log, &rec, 1, NULL, appended, c);
  if (e) {
    fprintf(stderr, "log_bench: txmq_log_append: %s\n", txmq_strerror(e));
    r->failed = 1;
    chain_stop(r);
  }
}

static void watchdog_cb(uv_timer_t* t) {
  run_t* r = t->data;
  fprintf(stderr, "log_bench: stalled: %d appenders still waiting for a callback\n",
          r->active);
  exit(1);
}

static double log_run(const char* base, int policy, int appenders, double secs) {
  char name[64];
  snprintf(name, sizeof name, "log-%s-%d", sync_names[policy], appenders);
  char* dir = path_join(base, name);
  run_t* r = calloc(1, sizeof *r);
  if (!r) fail("calloc", TXMQ_ENOMEM);
  for (int i = 0; i < PAYLOAD; i++) r->payload[i] = (uint8_t)(i * 7);
  uv_loop_init(&r->loop);
  int e = txmq_log_new(&r->log, &r->loop, dir);
  if (!e) e = txmq_log_set(r->log, TXMQ_LOG_OPT_SYNC, policy);
  if (!e) e = txmq_log_set(r->log, TXMQ_LOG_OPT_SYNC_INTERVAL_MS, 1000);
  if (!e) e = txmq_log_open(r->log);
  if (e) {
    fprintf(stderr, "log_bench: open %s: %s\n", dir, r->log ? txmq_log_diag(r->log) : "");
    fail("txmq_log_open", e);
  }
  uv_timer_init(&r->loop, &r->watchdog);
  r->watchdog.data = r;
  uv_timer_start(&r->watchdog, watchdog_cb, (uint64_t)(secs * 1000) + 60000, 0);

  r->fsync0 = txmq_log_fsync_count(r->log);
  r->start = uv_hrtime();
  r->deadline = r->start + (uint64_t)(secs * 1e9);
  r->active = appenders;
  for (int i = 0; i < appenders; i++) {
    r->chains[i].run = r;
    if (r->failed) {
      r->active--;
      continue;
    }
    issue(&r->chains[i]);
  }
  uv_run(&r->loop, UV_RUN_DEFAULT);
  if (r->failed) exit(1);
  txmq_log_free(r->log);
  if (uv_loop_close(&r->loop) != 0) fail("uv_loop_close: handles left open", TXMQ_EBUSY);

  double el = (double)(r->stop_at - r->start) / 1e9;
  double rate = (double)r->done / el;
  printf("bench=log sync=%s appenders=%d records_per_s=%.0f fsyncs_per_s=%.1f "
         "p50_us=%.1f p99_us=%.1f\n",
         sync_names[policy], appenders, rate, (double)(r->fsync1 - r->fsync0) / el,
         pct_us(&r->lat, 50), pct_us(&r->lat, 99));
  fflush(stdout);
  free(r->lat.v);
  free(r);
  rm_rf(dir);
  free(dir);
  /* Nothing of this run may still be in flight during the next one. */
  sync();
  return rate;
}

/* ---- store restart ---- */

typedef struct {
  uv_loop_t* loop;
  txmq_store_t* st;
  uint64_t issued, acked, total;
  int inflight, failed;
  char body[PAYLOAD];
} fill_t;

static void fill_issue(fill_t* f);

static void fill_cb(txmq_store_t* st, int status, const txmq_msg_t* m, void* arg) {
  (void)st;
  (void)m;
  fill_t* f = arg;
  f->inflight--;
  if (status) {
    fprintf(stderr, "log_bench: put failed: %s\n", txmq_strerror(status));
    f->failed = 1;
    return;
  }
  f->acked++;
  fill_issue(f);
}

static void fill_issue(fill_t* f) {
  while (!f->failed && f->issued < f->total && f->inflight < 1024) {
    txmq_msg_t* m = txmq_msg_new();
    if (!m) fail("txmq_msg_new", TXMQ_ENOMEM);
    int e = txmq_msg_set_topic(m, "bench");
    if (!e) e = txmq_msg_set_body(m, f->body, sizeof f->body);
    if (e) fail("building a message", e);
    e = txmq_store_put(f->st, m, fill_cb, f);
    txmq_msg_free(m);
    if (e == TXMQ_EAGAIN && f->inflight > 0) return; /* a callback resumes */
    if (e) fail("txmq_store_put", e);
    f->issued++;
    f->inflight++;
  }
}

static void store_done(txmq_store_t* st, int status, void* arg) {
  (void)st;
  if (status) fail("txmq_store_close", status);
  *(int*)arg = 1;
}

static txmq_store_t* store_open_timed(uv_loop_t* loop, const char* dir, double* ms) {
  txmq_store_t* st = NULL;
  int e = txmq_store_new(&st, loop, dir);
  if (!e) e = txmq_store_set(st, TXMQ_STORE_OPT_SYNC, TXMQ_SYNC_NEVER);
  if (e) fail("txmq_store_new", e);
  uint64_t t0 = uv_hrtime();
  e = txmq_store_open(st);
  uint64_t t1 = uv_hrtime();
  if (e) {
    fprintf(stderr, "log_bench: open %s: %s\n", dir, txmq_store_diag(st));
    fail("txmq_store_open", e);
  }
  if (ms) *ms = (double)(t1 - t0) / 1e6;
  return st;
}

static void store_close_wait(uv_loop_t* loop, txmq_store_t* st) {
  int done = 0;
  int e = txmq_store_close(st, store_done, &done);
  if (e) fail("txmq_store_close", e);
  while (!done) uv_run(loop, UV_RUN_ONCE);
  txmq_store_free(st);
}

static uint64_t store_count(txmq_store_t* st, const char* topic) {
  uint64_t n = 0;
  int nq = txmq_store_topic_queues(st, topic);
  for (int q = 0; q < nq; q++) {
    int64_t b, e;
    if (txmq_store_queue_range(st, topic, q, &b, &e) == 0) n += (uint64_t)(e - b);
  }
  return n;
}

static void restart_bench(const char* base, uint64_t msgs) {
  char* dir = path_join(base, "store");
  uv_loop_t loop;
  uv_loop_init(&loop);

  fill_t f = {.loop = &loop, .total = msgs};
  memset(f.body, 'm', sizeof f.body);
  f.st = store_open_timed(&loop, dir, NULL);
  uint64_t t0 = uv_hrtime();
  fill_issue(&f);
  while (f.inflight > 0) uv_run(&loop, UV_RUN_ONCE);
  double fill_s = (double)(uv_hrtime() - t0) / 1e9;
  if (f.failed || f.acked != msgs) {
    fprintf(stderr, "log_bench: stored %" PRIu64 " of %" PRIu64 " messages\n", f.acked, msgs);
    exit(1);
  }
  store_close_wait(&loop, f.st);
  printf("bench=store_fill msgs=%" PRIu64 " sync=never body=%d rate_per_s=%.0f\n", msgs,
         PAYLOAD, (double)msgs / fill_s);
  fflush(stdout);
  sync();

  for (int mode = 0; mode < 2; mode++) {
    if (mode == 1) {
      char* ckp = path_join(dir, "checkpoint");
      if (unlink(ckp) != 0 && errno != ENOENT) fail("removing the checkpoint", TXMQ_EIO);
      free(ckp);
    }
    double ms;
    txmq_store_t* st = store_open_timed(&loop, dir, &ms);
    uint64_t seen = store_count(st, "bench");
    uint64_t replayed = txmq_store_replayed(st);
    printf("bench=restart msgs=%" PRIu64 " mode=%s open_ms=%.1f replayed=%" PRIu64 "\n",
           msgs, mode ? "replay" : "checkpoint", ms, replayed);
    fflush(stdout);
    if (seen != msgs) {
      fprintf(stderr, "log_bench: after the %s restart the store holds %" PRIu64
              " messages, expected %" PRIu64 "\n", mode ? "replay" : "checkpoint", seen, msgs);
      exit(1);
    }
    store_close_wait(&loop, st);
  }
  uv_run(&loop, UV_RUN_DEFAULT);
  if (uv_loop_close(&loop) != 0) fail("uv_loop_close: handles left open", TXMQ_EBUSY);
  rm_rf(dir);
  free(dir);
}

int main(int argc, char** argv) {
  int smoke = 0;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--smoke") == 0) {
      smoke = 1;
    } else {
      fprintf(stderr, "usage: log_bench [--smoke]   (BENCH_DIR=dir to choose the disk)\n");
      return strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0 ? 0 : 2;
    }
  }
  double run_s = smoke ? 0.1 : 2.0;
  double raw_s = smoke ? 0.1 : 1.0; /* twice: before and after */
  uint64_t restart_msgs = smoke ? 2000 : 1000000;

  const char* base = getenv("BENCH_DIR");
  if (!base || !*base) base = getenv("TMPDIR");
  if (!base || !*base) base = "/tmp";
  char* tmpl = path_join(base, "txmq-log-bench-XXXXXX");
  if (!mkdtemp(tmpl)) {
    perror(tmpl);
    return 1;
  }
  printf("# log_bench %s: data in %s, %d-byte records, %.1f s per log run\n",
         smoke ? "smoke" : "full", tmpl, PAYLOAD, run_s);
  fflush(stdout);

  raw_t raw = {0};
  raw_fdatasync(tmpl, raw_s, &raw);

  static const int counts[] = {1, 32, 256};
  double always256 = 0;
  for (int s = TXMQ_SYNC_ALWAYS; s <= TXMQ_SYNC_NEVER; s++) {
    for (size_t k = 0; k < sizeof counts / sizeof counts[0]; k++) {
      double rate = log_run(tmpl, s, counts[k], run_s);
      if (s == TXMQ_SYNC_ALWAYS && counts[k] == 256) always256 = rate;
    }
  }

  raw_fdatasync(tmpl, raw_s, &raw);
  double raw_rate = (double)raw.lat.n / raw.secs;
  printf("bench=raw_fdatasync bytes=4096 rate_per_s=%.0f p50_us=%.1f p99_us=%.1f\n",
         raw_rate, pct_us(&raw.lat, 50), pct_us(&raw.lat, 99));
  printf("bench=group_commit sync=always appenders=256 ratio_vs_raw_fdatasync=%.2f\n",
         raw_rate > 0 ? always256 / raw_rate : 0.0);
  fflush(stdout);
  free(raw.lat.v);

  restart_bench(tmpl, restart_msgs);

  rm_rf(tmpl);
  free(tmpl);
  return 0;
}
