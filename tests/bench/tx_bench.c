/*
 * tx_bench.c - figures for the transaction engine. Prints one line per
 * figure and asserts nothing about speed.
 *
 *   bench=tx        in-process transactions (half, then COMMIT) per second
 *                   at sync always and never, 1/32/256 in flight, 256-byte
 *                   bodies, with p50/p99 of half+commit latency;
 *   bench=tx_sched  memory per pending transaction with N pending (RSS
 *                   delta from /proc/self/statm, and the engine's own
 *                   accounting), and lateness of checks against their due
 *                   time on the real clock;
 *   bench=tx_snapshot  how long a checkpoint's capture of the engine holds
 *                   the loop thread with N pending (txmq__tx_snapshot), and
 *                   the snapshot's size;
 *   bench=tx_restart  open time of a store with N pending transactions.
 *
 *   tx_bench [--smoke] [--pending N] [--dir DIR] [--keep] | --reopen DIR
 * --smoke runs everything small (for ctest, well under 10 s). --keep leaves
 * the scheduler bench's data directory; --reopen DIR only times opening it
 * (to profile recovery).
 */
#include <errno.h>
#include <ftw.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <uv.h>

#include "store/store_int.h"
#include "tx/tx_int.h"
#include "txmq/error.h"
#include "txmq/store.h"
#include "txmq/tx.h"

static const char* base_dir = NULL;
static int keep_dir = 0; /* --keep: leave the sched bench's data for --reopen */

static void die(const char* what, int rc) {
  fprintf(stderr, "tx_bench: %s: %s\n", what, txmq_strerror(rc));
  exit(1);
}

static int rm_one(const char* p, const struct stat* s, int flag, struct FTW* f) {
  (void)s;
  (void)flag;
  (void)f;
  return remove(p);
}

static void rmrf(const char* dir) {
  nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

static char* mkdir_tmp(const char* tag) {
  const char* b = base_dir ? base_dir : getenv("TMPDIR");
  if (b == NULL || *b == '\0') b = "/tmp";
  char* p = malloc(strlen(b) + strlen(tag) + 32);
  sprintf(p, "%s/txmq-bench-%s-XXXXXX", b, tag);
  if (mkdtemp(p) == NULL) {
    fprintf(stderr, "tx_bench: mkdtemp %s: %s\n", p, strerror(errno));
    exit(1);
  }
  return p;
}

static double now_ms(void) {
  return (double)uv_hrtime() / 1e6;
}

static long rss_bytes(void) {
  long size = 0, rss = 0;
  FILE* f = fopen("/proc/self/statm", "r");
  if (f == NULL) return 0;
  if (fscanf(f, "%ld %ld", &size, &rss) != 2) rss = 0;
  fclose(f);
  return rss * sysconf(_SC_PAGESIZE);
}

static int cmp_double(const void* a, const void* b) {
  double x = *(const double*)a, y = *(const double*)b;
  return x < y ? -1 : x > y;
}

static double pct(double* v, size_t n, double p) {
  if (n == 0) return 0;
  size_t k = (size_t)(p * (double)(n - 1));
  return v[k];
}

/* ---- a store + engine ---- */

typedef struct {
  uv_loop_t* loop;
  char* dir;
  txmq_store_t* st;
  txmq_tx_t* tx;
} rt_t;

static void rt_open(rt_t* rt, uv_loop_t* loop, const char* dir, int sync,
                    const txmq_tx_target_t* target, void* targ) {
  rt->loop = loop;
  rt->dir = strdup(dir);
  int rc = txmq_store_new(&rt->st, loop, dir);
  if (rc) die("store_new", rc);
  txmq_store_set(rt->st, TXMQ_STORE_OPT_SYNC, sync);
  txmq_store_set(rt->st, TXMQ_STORE_OPT_DEFAULT_QUEUES, 1);
  txmq_store_set(rt->st, TXMQ_STORE_OPT_CHECKPOINT_INTERVAL_MS, 0);
  rc = txmq_tx_new(&rt->tx, loop, rt->st);
  if (rc) die("tx_new", rc);
  if (target) txmq_tx_add_target(rt->tx, target, targ);
  rc = txmq_store_open(rt->st);
  if (rc) {
    fprintf(stderr, "tx_bench: store open: %s\n", txmq_store_diag(rt->st));
    die("store_open", rc);
  }
  rc = txmq_tx_start(rt->tx);
  if (rc) die("tx_start", rc);
}

static void on_closed_tx(txmq_tx_t* tx, void* arg) {
  (void)tx;
  *(int*)arg = 1;
}
static void on_closed_st(txmq_store_t* st, int status, void* arg) {
  (void)st;
  (void)status;
  *(int*)arg = 1;
}

static void rt_close(rt_t* rt) {
  int done = 0;
  txmq_tx_close(rt->tx, on_closed_tx, &done);
  while (!done) uv_run(rt->loop, UV_RUN_ONCE);
  done = 0;
  txmq_store_close(rt->st, on_closed_st, &done);
  while (!done) uv_run(rt->loop, UV_RUN_ONCE);
  txmq_tx_free(rt->tx);
  txmq_store_free(rt->st);
  free(rt->dir);
}

/* ---- bench=tx: throughput ---- */

typedef struct tp_s tp_t;
typedef struct {
  tp_t* tp;
  double t0;
} chain_t;

struct tp_s {
  rt_t rt;
  txmq_msg_t* msg;
  double deadline;
  size_t done, cap, running;
  double* lat;
  int stop;
};

static void start_one(chain_t* c);

static void on_committed(txmq_tx_t* tx, int status, txmq_tx_state_t st,
                         void* arg) {
  (void)tx;
  (void)st;
  chain_t* c = arg;
  tp_t* tp = c->tp;
  if (status != 0) die("commit", status);
  if (tp->done < tp->cap) tp->lat[tp->done] = (now_ms() - c->t0) * 1000.0;
  tp->done++;
  start_one(c);
}

static void on_begun(txmq_tx_t* tx, int status, const uint8_t* id,
                     const txmq_msg_t* const* msgs, size_t n, void* arg) {
  (void)msgs;
  (void)n;
  if (status != 0) die("begin", status);
  int rc = txmq_tx_end(tx, id, TXMQ_TX_COMMIT, TXMQ_TX_SRC_PRODUCER, NULL, NULL,
                       on_committed, arg);
  if (rc != 0) die("end", rc);
}

static void start_one(chain_t* c) {
  tp_t* tp = c->tp;
  if (now_ms() >= tp->deadline) {
    tp->running--;
    return;
  }
  c->t0 = now_ms();
  int rc = txmq_tx_begin(tp->rt.tx, "bench", "p1", &tp->msg, 1, 0, on_begun, c);
  if (rc != 0) die("begin", rc);
}

static void bench_throughput(int sync, size_t inflight, double seconds) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  char* dir = mkdir_tmp("tp");
  tp_t tp;
  memset(&tp, 0, sizeof tp);
  rt_open(&tp.rt, &loop, dir, sync, NULL, NULL);
  char body[256];
  memset(body, 'b', sizeof body);
  tp.msg = txmq_msg_new();
  txmq_msg_set_topic(tp.msg, "bench");
  txmq_msg_set_body(tp.msg, body, sizeof body);
  tp.cap = 4u << 20;
  tp.lat = malloc(tp.cap * sizeof *tp.lat);
  chain_t* chains = calloc(inflight, sizeof *chains);
  double t0 = now_ms();
  tp.deadline = t0 + seconds * 1000.0;
  tp.running = inflight;
  for (size_t k = 0; k < inflight; k++) {
    chains[k].tp = &tp;
    start_one(&chains[k]);
  }
  while (tp.running > 0) uv_run(&loop, UV_RUN_ONCE);
  double el = (now_ms() - t0) / 1000.0;
  size_t n = tp.done < tp.cap ? tp.done : tp.cap;
  qsort(tp.lat, n, sizeof *tp.lat, cmp_double);
  printf("bench=tx sync=%s inflight=%zu body=256 txs=%zu tx_per_s=%.0f "
         "p50_us=%.0f p99_us=%.0f\n",
         sync == TXMQ_SYNC_ALWAYS ? "always" : "never", inflight, tp.done,
         (double)tp.done / el, pct(tp.lat, n, 0.50), pct(tp.lat, n, 0.99));
  fflush(stdout);
  rt_close(&tp.rt);
  txmq_msg_free(tp.msg);
  free(tp.lat);
  free(chains);
  uv_loop_close(&loop);
  rmrf(dir);
  free(dir);
}

/* ---- bench=tx_sched and tx_restart ---- */

typedef struct {
  uint8_t id[TXMQ_TX_ID_LEN];
  double due; /* monotonic ms */
} due_t;

typedef struct {
  size_t begun, want;
  double* late;
  size_t nlate, cap, missed;
  due_t* dues; /* lateness phase: sorted by id once filled */
  size_t ndues;
  int sorted;
  double begin_to_durable_max;
} sched_t;

/* Per-transaction argument of the lateness phase. */
typedef struct {
  sched_t* s;
  int64_t imm;
  double t_begin;
} late_arg_t;

static int cmp_due(const void* a, const void* b) {
  return memcmp(((const due_t*)a)->id, ((const due_t*)b)->id, TXMQ_TX_ID_LEN);
}

static void on_filled(txmq_tx_t* tx, int status, const uint8_t* id,
                      const txmq_msg_t* const* msgs, size_t n, void* arg) {
  (void)tx;
  (void)id;
  (void)msgs;
  (void)n;
  if (status != 0) die("begin", status);
  ((sched_t*)arg)->begun++;
}

/* The engine schedules the first check at "half durable + immunity": this
 * callback runs right then, so it records the due time the engine uses. */
static void on_filled_late(txmq_tx_t* tx, int status, const uint8_t* id,
                           const txmq_msg_t* const* msgs, size_t n, void* arg) {
  (void)tx;
  (void)msgs;
  (void)n;
  late_arg_t* a = arg;
  sched_t* s = a->s;
  if (status != 0) die("begin", status);
  double now = now_ms();
  if (now - a->t_begin > s->begin_to_durable_max)
    s->begin_to_durable_max = now - a->t_begin;
  memcpy(s->dues[s->ndues].id, id, TXMQ_TX_ID_LEN);
  s->dues[s->ndues].due = now + (double)a->imm;
  s->ndues++;
  s->begun++;
}

/* The check target of the lateness phase: lateness is now minus the due
 * time recorded above. It answers COMMIT at once. */
static int late_check(void* arg, txmq_tx_t* tx, const txmq_tx_check_t* c) {
  sched_t* s = arg;
  due_t key, *d = NULL;
  memcpy(key.id, c->tx_id, TXMQ_TX_ID_LEN);
  if (s->sorted) d = bsearch(&key, s->dues, s->ndues, sizeof key, cmp_due);
  if (d == NULL) s->missed++;
  else if (s->nlate < s->cap) s->late[s->nlate++] = now_ms() - d->due;
  txmq_tx_check_answer(tx, c->tx_id, c->seq, TXMQ_TX_COMMIT, TXMQ_TX_SRC_CHECK,
                       NULL, "bench");
  return 0;
}

/* Begins n transactions; pauses on back-pressure (EAGAIN) to let the
 * writer catch up. With late args, immunity is spread and due times are
 * recorded. */
static void fill(rt_t* rt, sched_t* s, size_t n, int64_t immunity_lo,
                 int64_t spread, late_arg_t* late) {
  txmq_msg_t* m = txmq_msg_new();
  txmq_msg_set_topic(m, "sched");
  txmq_msg_set_body(m, "0123456789abcdef0123456789abcdef", 32);
  s->want += n;
  for (size_t k = 0; k < n; k++) {
    int64_t imm = immunity_lo + (spread ? (int64_t)(k * 7919 % (size_t)spread) : 0);
    int rc;
    void* arg = s;
    txmq_tx_begin_cb cb = on_filled;
    if (late) {
      late[k] = (late_arg_t){s, imm, now_ms()};
      arg = &late[k];
      cb = on_filled_late;
    }
    while ((rc = txmq_tx_begin(rt->tx, "sched", "p1", &m, 1, imm, cb, arg)) ==
           TXMQ_EAGAIN)
      uv_run(rt->loop, UV_RUN_ONCE);
    if (rc != 0) die("begin", rc);
  }
  while (s->begun < s->want) uv_run(rt->loop, UV_RUN_ONCE);
  txmq_msg_free(m);
}

static void on_flushed(txmq_log_t* log, int status, uint64_t pos, void* arg) {
  (void)log;
  (void)status;
  (void)pos;
  *(int*)arg = 1;
}

static void bench_sched(size_t pending, size_t nlate, int64_t spread_ms) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  char* dir = mkdir_tmp("sched");
  sched_t s;
  memset(&s, 0, sizeof s);
  s.cap = nlate;
  s.late = malloc(nlate * sizeof *s.late);
  txmq_tx_target_t target = {"bench", late_check};
  rt_t rt;
  rt_open(&rt, &loop, dir, TXMQ_SYNC_NEVER, &target, &s);

  /* Memory: pending transactions whose first check is an hour away. */
  malloc_trim(0);
  long rss0 = rss_bytes();
  size_t mem0 = txmq__tx_mem_bytes(rt.tx);
  double t0 = now_ms();
  fill(&rt, &s, pending, 3600000, 0, NULL);
  double fill_ms = now_ms() - t0;
  malloc_trim(0);
  long rss1 = rss_bytes();
  size_t mem1 = txmq__tx_mem_bytes(rt.tx);
  txmq_tx_metrics_t m;
  txmq_tx_metrics(rt.tx, &m);
  printf("bench=tx_sched pending=%llu bytes_per_pending=%.1f "
         "engine_bytes_per_pending=%.1f fill_tx_per_s=%.0f\n",
         (unsigned long long)m.pending, (double)(rss1 - rss0) / (double)pending,
         (double)(mem1 - mem0) / (double)pending,
         (double)pending / (fill_ms / 1000.0));
  fflush(stdout);

  /* Lateness: more transactions, due over spread_ms on the real timer,
   * beside the big heap. Let the writer drain the fill first, so that the
   * figure is the scheduler's and not the disk's. */
  int flushed = 0;
  txmq_log_flush(txmq_store_log(rt.st), on_flushed, &flushed);
  while (!flushed) uv_run(&loop, UV_RUN_ONCE);

  /* What a checkpoint's capture of the engine costs the loop thread with
   * all of them pending (serialising into the snapshot's payload; the crc
   * and the writing run on the threadpool). Three captures, the slowest
   * and the fastest. */
  double cap_max = 0, cap_min = 1e18;
  size_t cap_len = 0;
  for (int k = 0; k < 3; k++) {
    void* buf = NULL;
    double c0 = now_ms();
    int rc = txmq__tx_snapshot(rt.tx, txmq__store_applied(rt.st), &buf, &cap_len);
    double c1 = now_ms() - c0;
    if (rc != 0) die("txmq__tx_snapshot", rc);
    free(buf);
    if (c1 > cap_max) cap_max = c1;
    if (c1 < cap_min) cap_min = c1;
  }
  printf("bench=tx_snapshot pending=%llu capture_ms_max=%.1f capture_ms_min=%.1f "
         "snapshot_mb=%.1f\n",
         (unsigned long long)m.pending, cap_max, cap_min,
         (double)cap_len / 1048576.0);
  fflush(stdout);
  late_arg_t* la = malloc(nlate * sizeof *la);
  s.dues = malloc(nlate * sizeof *s.dues);
  fill(&rt, &s, nlate, 500, spread_ms, la);
  qsort(s.dues, s.ndues, sizeof *s.dues, cmp_due);
  s.sorted = 1;
  double deadline = now_ms() + (double)spread_ms + 30000.0;
  while (s.nlate + s.missed < nlate && now_ms() < deadline)
    uv_run(&loop, UV_RUN_ONCE);
  qsort(s.late, s.nlate, sizeof *s.late, cmp_double);
  printf("bench=tx_sched pending=%llu checks=%zu spread_ms=%lld "
         "lateness_p50_ms=%.2f lateness_p99_ms=%.2f lateness_max_ms=%.2f "
         "begin_to_durable_max_ms=%.1f\n",
         (unsigned long long)m.pending, s.nlate, (long long)spread_ms,
         pct(s.late, s.nlate, 0.50), pct(s.late, s.nlate, 0.99),
         s.nlate ? s.late[s.nlate - 1] : 0.0, s.begin_to_durable_max);
  fflush(stdout);
  free(la);
  free(s.dues);
  /* Let the commits of the checked ones finish. */
  for (int k = 0; k < 100; k++) uv_run(&loop, UV_RUN_NOWAIT);
  rt_close(&rt);

  /* Restart with all of them pending. */
  free(s.late);
  memset(&s, 0, sizeof s);
  t0 = now_ms();
  rt_open(&rt, &loop, dir, TXMQ_SYNC_NEVER, NULL, NULL);
  double open_ms = now_ms() - t0;
  txmq_tx_metrics(rt.tx, &m);
  printf("bench=tx_restart pending=%llu open_ms=%.0f replayed=%llu\n",
         (unsigned long long)m.pending, open_ms,
         (unsigned long long)txmq_store_replayed(rt.st));
  fflush(stdout);
  rt_close(&rt);
  uv_loop_close(&loop);
  if (keep_dir) printf("kept %s\n", dir);
  else rmrf(dir);
  free(dir);
}

/* Times only the open of an existing data directory (for profiling). */
static void bench_reopen(const char* dir) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  rt_t rt;
  double t0 = now_ms();
  rt_open(&rt, &loop, dir, TXMQ_SYNC_NEVER, NULL, NULL);
  double open_ms = now_ms() - t0;
  txmq_tx_metrics_t m;
  txmq_tx_metrics(rt.tx, &m);
  printf("bench=tx_restart pending=%llu open_ms=%.0f replayed=%llu\n",
         (unsigned long long)m.pending, open_ms,
         (unsigned long long)txmq_store_replayed(rt.st));
  rt_close(&rt);
  uv_loop_close(&loop);
}

int main(int argc, char** argv) {
  int smoke = 0;
  size_t pending = 1000000;
  for (int k = 1; k < argc; k++) {
    if (strcmp(argv[k], "--smoke") == 0) smoke = 1;
    else if (strcmp(argv[k], "--pending") == 0 && k + 1 < argc)
      pending = (size_t)strtoull(argv[++k], NULL, 10);
    else if (strcmp(argv[k], "--dir") == 0 && k + 1 < argc)
      base_dir = argv[++k];
    else if (strcmp(argv[k], "--keep") == 0)
      keep_dir = 1;
    else if (strcmp(argv[k], "--reopen") == 0 && k + 1 < argc) {
      bench_reopen(argv[++k]);
      return 0;
    }
    else {
      fprintf(stderr, "usage: tx_bench [--smoke] [--pending N] [--dir DIR] "
                      "[--keep] | --reopen DIR\n");
      return 2;
    }
  }
  if (smoke) pending = 20000;
  double secs = smoke ? 0.25 : 2.0;
  const size_t inflights[] = {1, 32, 256};
  const int syncs[] = {TXMQ_SYNC_ALWAYS, TXMQ_SYNC_NEVER};
  for (size_t a = 0; a < 2; a++)
    for (size_t b = 0; b < 3; b++) bench_throughput(syncs[a], inflights[b], secs);
  bench_sched(pending, smoke ? 500 : 20000, smoke ? 500 : 3000);
  return 0;
}
