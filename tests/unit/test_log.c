/*
 * test_log.c - the commit log (txmq/log.h): appends and reads, batches,
 * iterators, the three sync policies and group commit, reopen, torn tails
 * cut at every byte, corruption in the middle and the recovery modes,
 * segment rolling, damaged and missing segments, retention, back-pressure,
 * read-only opens, storage failures, close with pending appends, and the
 * fixtures under tests/fixtures/log/.
 *
 * Every test has its own temporary directory and loop and checks that the
 * loop closes cleanly. Fixtures are copied before they are opened.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "log/log_int.h" /* txmq__log_inject_fault */
#include "testutil.h"
#include "txmq/error.h"
#include "txmq/log.h"

#define HDR TXMQ_LOG_SEGMENT_HEADER_SIZE
#define RHDR TXMQ_LOG_RECORD_HEADER_SIZE
#define END_OPTS (-1)

/* Error codes compared with their names, so a failure reads as
 * "ECORRUPT != OK" rather than two numbers. */
#define assert_rc(expected, actual) \
  assert_string_equal(txmq_err_name(expected), txmq_err_name(actual))

/* Helpers. */

static void fill(uint8_t* buf, size_t len, uint32_t seed) {
  uint32_t x = seed * 2654435761u + 1;
  for (size_t i = 0; i < len; i++) {
    x = x * 1103515245u + 12345u;
    buf[i] = (uint8_t)(x >> 16);
  }
}

/* Opens a log on dir with option pairs ending in END_OPTS; returns the
 * open's code, *out is allocated either way. */
static int open_log(txmq_log_t** out, uv_loop_t* loop, const char* dir, ...) {
  assert_rc(0, txmq_log_new(out, loop, dir));
  /* Off unless a test asks: many look at file sizes, which the writer's
   * zero-filling changes whenever it is idle (zero_fill_ahead tests it). */
  assert_rc(0, txmq_log_set(*out, TXMQ_LOG_OPT_ZERO_AHEAD, 0));
  va_list ap;
  va_start(ap, dir);
  for (;;) {
    int opt = va_arg(ap, int);
    if (opt == END_OPTS) break;
    int64_t v = va_arg(ap, int64_t);
    assert_rc(0, txmq_log_set(*out, (txmq_log_opt_t)opt, v));
  }
  va_end(ap);
  return txmq_log_open(*out);
}

static void on_closed(txmq_log_t* log, void* arg) {
  (void)log;
  *(int*)arg = 1;
}

static void close_log(uv_loop_t* loop, txmq_log_t* log) {
  int done = 0;
  assert_rc(0, txmq_log_close(log, on_closed, &done));
  if (!done) tu_run_until(loop, &done, 20000);
  assert_int_equal(done, 1);
  txmq_log_free(log);
}

/* One append's completion, as seen by its callback. */
typedef struct {
  int fired;
  int status;
  uint64_t first;
  uint64_t end;         /* end of the batch */
  int check_durable;    /* ALWAYS: durable end must cover the batch */
  int check_readable;   /* the batch must be readable in the callback */
  int* counter;         /* shared count of fired callbacks, may be NULL */
  uint64_t* last_first; /* order check across callbacks, may be NULL */
} app_t;

static void on_append(txmq_log_t* log, int status, uint64_t first, void* arg) {
  app_t* a = arg;
  a->fired++;
  a->status = status;
  a->first = first;
  if (status == 0 && a->check_durable)
    assert_true(txmq_log_durable_end(log) >= a->end);
  if (status == 0 && a->check_readable)
    assert_true(txmq_log_end(log) >= a->end);
  if (a->last_first != NULL) {
    assert_true(*a->last_first <= first);
    *a->last_first = first;
  }
  if (a->counter != NULL) (*a->counter)++;
}

/* Appends one record of len pseudo-random bytes (seeded by seed). */
static int append1(txmq_log_t* log, uint32_t len, uint32_t seed, uint64_t* pos,
                   app_t* a) {
  uint8_t* buf = malloc(len ? len : 1);
  assert_non_null(buf);
  fill(buf, len, seed);
  txmq_log_rec_t r = {(uint8_t)(1 + seed % 200), buf, len};
  int rc = txmq_log_append(log, &r, 1, pos, a ? on_append : NULL, a);
  if (rc == 0 && a != NULL) a->end = *pos + RHDR + len;
  free(buf);
  return rc;
}

/* Checks the record at pos is the one append1(len, seed) wrote. */
static void check_rec(txmq_log_t* log, uint64_t pos, uint32_t len,
                      uint32_t seed) {
  txmq_log_entry_t e;
  int rc = txmq_log_read(log, pos, &e);
  if (rc != 0)
    fprintf(stderr, "read at %" PRIu64 ": %s\n", pos, txmq_log_diag(log));
  assert_rc(0, rc);
  assert_int_equal(e.pos, pos);
  assert_int_equal(e.len, len);
  assert_int_equal(e.next, pos + RHDR + len);
  assert_int_equal(e.type, 1 + seed % 200);
  uint8_t* buf = malloc(len ? len : 1);
  assert_non_null(buf);
  fill(buf, len, seed);
  assert_memory_equal(e.data, buf, len);
  free(buf);
}

static void check_str(txmq_log_t* log, uint64_t pos, const char* s) {
  txmq_log_entry_t e;
  assert_rc(0, txmq_log_read(log, pos, &e));
  assert_int_equal(e.len, strlen(s));
  assert_memory_equal(e.data, s, e.len);
}

static int append_str(txmq_log_t* log, const char* s, uint64_t* pos) {
  txmq_log_rec_t r = {1, s, (uint32_t)strlen(s)};
  return txmq_log_append(log, &r, 1, pos, NULL, NULL);
}

/* Runs the loop until every app_t of a has fired. */
static void wait_all(uv_loop_t* loop, app_t* a, size_t n) {
  for (size_t i = 0; i < n; i++) {
    volatile int* f = &a[i].fired;
    if (!*f) tu_run_until(loop, f, 20000);
    assert_int_equal(a[i].fired, 1);
  }
}

typedef struct {
  txmq_log_t* log;
  uint64_t target;
  int done;
} durable_wait_t;

static void poll_durable(uv_timer_t* t) {
  durable_wait_t* w = t->data;
  if (txmq_log_durable_end(w->log) >= w->target) w->done = 1;
}

/* Runs the loop until the durable end reaches target (or timeout_ms). */
static int run_until_durable(uv_loop_t* loop, txmq_log_t* log, uint64_t target,
                             int timeout_ms) {
  durable_wait_t w = {log, target, 0};
  uv_timer_t t;
  uv_timer_init(loop, &t);
  t.data = &w;
  uv_timer_start(&t, poll_durable, 2, 2);
  tu_run_until(loop, &w.done, timeout_ms);
  uv_timer_stop(&t);
  uv_close((uv_handle_t*)&t, NULL);
  uv_run(loop, UV_RUN_NOWAIT);
  return w.done;
}

static char* seg_file(const char* dir, uint64_t base) {
  char name[32];
  snprintf(name, sizeof name, "%020" PRIu64 ".log", base);
  return tu_path(dir, name);
}

static long long seg_size(const char* dir, uint64_t base) {
  char* p = seg_file(dir, base);
  long long n = tu_file_size(p);
  free(p);
  return n;
}

/* A fixture copied into a fresh temporary directory. */
static char* fixture(const char* name) {
  char* dir = tu_tmpdir("logfix");
  char* src = tu_path(TXMQ_TEST_FIXTURES "/log", name);
  assert_int_equal(tu_copy_tree(src, dir), 0);
  free(src);
  return dir;
}

static int diag_has(txmq_log_t* log, const char* needle) {
  const char* d = txmq_log_diag(log);
  if (strstr(d, needle) != NULL) return 1;
  fprintf(stderr, "diag \"%s\" lacks \"%s\"\n", d, needle);
  return 0;
}

/* Options and opening. */

static void options_and_open_errors(void** state) {
  (void)state;
  uv_loop_t loop;
  uv_loop_init(&loop);
  char* dir = tu_tmpdir("log");
  txmq_log_t* log;
  assert_rc(TXMQ_EINVAL, txmq_log_new(NULL, &loop, dir));
  assert_rc(TXMQ_EINVAL, txmq_log_new(&log, &loop, ""));

  assert_rc(0, txmq_log_new(&log, &loop, dir));
  assert_rc(TXMQ_EINVAL, txmq_log_set(log, TXMQ_LOG_OPT_SYNC, 3));
  assert_rc(TXMQ_EINVAL, txmq_log_set(log, TXMQ_LOG_OPT_SEGMENT_SIZE, 4095));
  assert_rc(TXMQ_EINVAL, txmq_log_set(log, TXMQ_LOG_OPT_SYNC_INTERVAL_MS, 0));
  assert_rc(TXMQ_EINVAL, txmq_log_set(log, TXMQ_LOG_OPT_RECOVER, 7));
  assert_rc(TXMQ_EINVAL, txmq_log_set(log, TXMQ_LOG_OPT_READ_ONLY, 2));
  assert_rc(TXMQ_EINVAL, txmq_log_set(log, TXMQ_LOG_OPT_MAX_BUFFERED, 0));
  assert_rc(TXMQ_EINVAL, txmq_log_set(log, TXMQ_LOG_OPT_RETAIN_BYTES, -1));
  assert_rc(TXMQ_EINVAL, txmq_log_set(log, TXMQ_LOG_OPT_ZERO_AHEAD, -1));
  assert_rc(TXMQ_EINVAL, txmq_log_set(log, (txmq_log_opt_t)99, 1));
  assert_rc(0, txmq_log_set(log, TXMQ_LOG_OPT_SEGMENT_SIZE, 4096));
  /* no zero-fill: the size of the new segment's file is checked below */
  assert_rc(0, txmq_log_set(log, TXMQ_LOG_OPT_ZERO_AHEAD, 0));
  assert_rc(0, txmq_log_open(log));
  assert_rc(TXMQ_EBUSY, txmq_log_set(log, TXMQ_LOG_OPT_SYNC, 1));
  assert_rc(TXMQ_EBUSY, txmq_log_open(log));
  /* An empty directory gets segment 0, header only. */
  assert_int_equal(seg_size(dir, 0), HDR);
  assert_int_equal(txmq_log_segment_count(log), 1);
  assert_int_equal(txmq_log_segment_base(log, 0), 0);
  assert_int_equal(txmq_log_segment_base(log, 1), UINT64_MAX);
  assert_int_equal(txmq_log_begin(log), 0);
  assert_int_equal(txmq_log_end(log), 0);
  assert_int_equal(txmq_log_next_pos(log), 0);
  assert_int_equal(txmq_log_is_read_only(log), 0);
  assert_string_equal(txmq_log_diag(log), "");
  assert_rc(TXMQ_ENOTFOUND, txmq_log_corruption(log, NULL, NULL));

  /* A second writer on the same directory is refused. */
  txmq_log_t* other;
  assert_rc(TXMQ_ELOCKED, open_log(&other, &loop, dir, END_OPTS));
  assert_true(diag_has(other, "elsewhere"));
  int closed = 0;
  assert_rc(0, txmq_log_close(other, on_closed, &closed)); /* never opened */
  assert_int_equal(closed, 1);
  txmq_log_free(other);
  /* A reader is fine beside the writer. */
  assert_rc(0, open_log(&other, NULL, dir, TXMQ_LOG_OPT_READ_ONLY, (int64_t)1,
                        END_OPTS));
  close_log(&loop, other);
  close_log(&loop, log);

  /* Read-write needs a loop; a missing directory is created, nested. */
  assert_rc(TXMQ_EINVAL, open_log(&log, NULL, dir, END_OPTS));
  txmq_log_free(log);
  char* nested = tu_path(dir, "a/b/c");
  assert_rc(0, open_log(&log, &loop, nested, END_OPTS));
  assert_int_equal(seg_size(nested, 0), HDR);
  close_log(&loop, log);

  /* Read-only: a missing directory is an error, an empty one a log with no
   * segments. */
  char* missing = tu_path(dir, "missing");
  assert_rc(TXMQ_ENOTFOUND,
            open_log(&log, NULL, missing, TXMQ_LOG_OPT_READ_ONLY, (int64_t)1,
                     END_OPTS));
  txmq_log_free(log);
  char* empty = tu_path(dir, "empty");
  assert_int_equal(mkdir(empty, 0755), 0);
  assert_rc(0, open_log(&log, NULL, empty, TXMQ_LOG_OPT_READ_ONLY, (int64_t)1,
                        END_OPTS));
  assert_int_equal(txmq_log_segment_count(log), 0);
  assert_int_equal(txmq_log_begin(log), 0);
  assert_int_equal(txmq_log_end(log), 0);
  txmq_log_entry_t e;
  assert_rc(TXMQ_ERANGE, txmq_log_read(log, 0, &e));
  assert_rc(TXMQ_EROFS, append_str(log, "x", NULL));
  close_log(&loop, log);
  assert_int_equal(tu_file_size(empty) >= 0, 1);
  char* seg0 = seg_file(empty, 0);
  assert_int_equal(tu_file_size(seg0), -1); /* read-only created nothing */
  free(seg0);

  free(empty);
  free(missing);
  free(nested);
  tu_rmrf(dir);
  free(dir);
  tu_loop_close_clean(&loop);
}

/* Appends and reads. */

static void roundtrip_sizes(void** state) {
  (void)state;
  static const uint32_t sizes[] = {
      0,     1,      11,      12,   13,
      100,   4083,   4084,    4085, 4096,
      65536, 200000, 1048579, 0,    TXMQ_LOG_MAX_RECORD};
  const size_t n = sizeof sizes / sizeof sizes[0];
  uv_loop_t loop;
  uv_loop_init(&loop);
  char* dir = tu_tmpdir("log");
  txmq_log_t* log;
  assert_rc(0, open_log(&log, &loop, dir, END_OPTS));
  uint64_t pos[16];
  app_t a[16];
  memset(a, 0, sizeof a);
  for (size_t i = 0; i < n; i++) {
    a[i].check_durable = a[i].check_readable = 1;
    assert_rc(0, append1(log, sizes[i], (uint32_t)i, &pos[i], &a[i]));
    if (i > 0) assert_int_equal(pos[i], pos[i - 1] + RHDR + sizes[i - 1]);
  }
  assert_int_equal(pos[0], 0);
  assert_int_equal(txmq_log_next_pos(log), pos[n - 1] + RHDR + sizes[n - 1]);
  wait_all(&loop, a, n);
  for (size_t i = 0; i < n; i++) {
    assert_rc(0, a[i].status);
    assert_int_equal(a[i].first, pos[i]);
    check_rec(log, pos[i], sizes[i], (uint32_t)i);
  }
  /* Read in reverse order too: reads do not depend on each other. */
  for (size_t i = n; i-- > 0;) check_rec(log, pos[i], sizes[i], (uint32_t)i);
  txmq_log_entry_t e;
  assert_rc(TXMQ_ERANGE, txmq_log_read(log, txmq_log_end(log), &e));
  assert_rc(TXMQ_ERANGE, txmq_log_read(log, UINT64_MAX - 5, &e));
  /* The middle of a record is not a record. */
  assert_rc(TXMQ_ECORRUPT, txmq_log_read(log, pos[5] + 3, &e));
  assert_true(diag_has(log, "position"));
  close_log(&loop, log);
  tu_rmrf(dir);
  free(dir);
  tu_loop_close_clean(&loop);
}

/* Reads of the newest 8 MiB come from the tail cache, older ones from the
 * files, and both give the same records; the cache wraps, a record larger
 * than it is read from the file, a position inside a record is refused
 * either way, and a reopened log starts with an empty cache. */
static void tail_cache_reads(void** state) {
  (void)state;
  uv_loop_t loop;
  uv_loop_init(&loop);
  char* dir = tu_tmpdir("log");
  txmq_log_t* log;
  assert_rc(0, open_log(&log, &loop, dir, TXMQ_LOG_OPT_SEGMENT_SIZE,
                        (int64_t)(4 << 20), END_OPTS));
  enum { N = 700 };
  uint64_t* pos = calloc(N, sizeof *pos);
  uint32_t* len = calloc(N, sizeof *len);
  assert_non_null(pos);
  assert_non_null(len);
  uint64_t total = 0;
  for (uint32_t i = 0; i < N; i++) {
    /* about 28 KiB on average: 20 MiB in all, 2.4 times the cache */
    len[i] = i == 350 ? 9u << 20 : (i * 7919u) % 56000u;
    app_t a = {0};
    a.check_durable = 1;
    assert_rc(0, append1(log, len[i], i, &pos[i], &a));
    wait_all(&loop, &a, 1);
    assert_rc(0, a.status);
    total += RHDR + len[i];
  }
  assert_int_equal(txmq_log_next_pos(log), total);
  const uint64_t cache = 8u << 20;
  uint64_t hits = txmq_log_cache_hits(log);
  size_t cached = 0;
  for (uint32_t i = 0; i < N; i++) {
    check_rec(log, pos[i], len[i], i);
    int in_cache = total - pos[i] <= cache && len[i] < cache;
    uint64_t h = txmq_log_cache_hits(log);
    assert_int_equal(h - hits, in_cache ? 1 : 0);
    hits = h;
    cached += (size_t)in_cache;
  }
  assert_true(cached > 100); /* the newest records were cached */
  txmq_log_entry_t e;
  assert_rc(TXMQ_ECORRUPT, txmq_log_read(log, pos[N - 2] + 3, &e));
  assert_rc(TXMQ_ECORRUPT, txmq_log_read(log, pos[10] + 5, &e));
  close_log(&loop, log);

  assert_rc(0, open_log(&log, &loop, dir, TXMQ_LOG_OPT_SEGMENT_SIZE,
                        (int64_t)(4 << 20), END_OPTS));
  for (uint32_t i = N - 20; i < N; i++) check_rec(log, pos[i], len[i], i);
  assert_int_equal(txmq_log_cache_hits(log), 0);
  uint64_t p;
  app_t a = {0};
  assert_rc(0, append1(log, 1000, 4242, &p, &a));
  wait_all(&loop, &a, 1);
  check_rec(log, p, 1000, 4242);
  assert_int_equal(txmq_log_cache_hits(log), 1);
  close_log(&loop, log);
  free(pos);
  free(len);
  tu_rmrf(dir);
  free(dir);
  tu_loop_close_clean(&loop);
}

/* Sync always: the idle writer fills the segment file with zeros ahead of
 * the data; records are written over them; a crash image taken while it is
 * open recovers every record and takes the zeros for room, not a torn
 * tail; a clean close cuts them; a rolled segment ends at its last record. */
static void zero_fill_ahead(void** state) {
  (void)state;
  uv_loop_t loop;
  uv_loop_init(&loop);
  char* dir = tu_tmpdir("log");
  char* copy = tu_tmpdir("logcopy");
  txmq_log_t* log;
  assert_rc(0, open_log(&log, &loop, dir, TXMQ_LOG_OPT_ZERO_AHEAD,
                        (int64_t)(512 * 1024), TXMQ_LOG_OPT_SEGMENT_SIZE,
                        (int64_t)(2 << 20), END_OPTS));
  uint64_t pos[40];
  for (uint32_t i = 0; i < 40; i++) {
    app_t a = {0};
    a.check_durable = 1;
    assert_rc(0, append1(log, 1000 + i * 97, i, &pos[i], &a));
    wait_all(&loop, &a, 1);
    assert_rc(0, a.status);
  }
  uint64_t end = txmq_log_next_pos(log);
  /* the idle writer keeps at least half of the 512 KiB filled */
  int filled = 0;
  for (int t = 0; t < 400 && !filled; t++) {
    filled = seg_size(dir, 0) >= (long long)(HDR + end + 256 * 1024);
    if (!filled) uv_sleep(5);
  }
  assert_true(filled);
  /* the crash image: every record, no torn tail */
  char cmd[512];
  snprintf(cmd, sizeof cmd, "cp %s/*.log %s/", dir, copy);
  assert_int_equal(system(cmd), 0);
  txmq_log_t* img;
  assert_rc(0, open_log(&img, &loop, copy, END_OPTS));
  assert_string_equal(txmq_log_diag(img), "");
  assert_int_equal(txmq_log_torn_bytes(img), 0);
  assert_int_equal(txmq_log_end(img), end);
  for (uint32_t i = 0; i < 40; i++) check_rec(img, pos[i], 1000 + i * 97, i);
  close_log(&loop, img);
  assert_int_equal(seg_size(copy, 0), (long long)(HDR + end));
  /* records past the 2 MiB segment: the finished one ends at its last */
  uint64_t big[3];
  for (uint32_t i = 0; i < 3; i++) {
    app_t a = {0};
    assert_rc(0, append1(log, 900000, 100 + i, &big[i], &a));
    wait_all(&loop, &a, 1);
    assert_rc(0, a.status);
  }
  assert_true(txmq_log_segment_count(log) >= 2);
  uint64_t b1 = txmq_log_segment_base(log, 1);
  assert_int_equal(seg_size(dir, 0), (long long)(HDR + b1));
  for (uint32_t i = 0; i < 3; i++) check_rec(log, big[i], 900000, 100 + i);
  uint64_t end2 = txmq_log_next_pos(log);
  close_log(&loop, log);
  size_t n = 0;
  uint64_t last = 0;
  assert_rc(0, open_log(&log, &loop, dir, END_OPTS));
  n = txmq_log_segment_count(log);
  last = txmq_log_segment_base(log, n - 1);
  assert_int_equal(txmq_log_end(log), end2);
  close_log(&loop, log);
  assert_int_equal(seg_size(dir, last), (long long)(HDR + end2 - last));
  tu_rmrf(dir);
  tu_rmrf(copy);
  free(dir);
  free(copy);
  tu_loop_close_clean(&loop);
}

static void batches_contiguous(void** state) {
  (void)state;
  uv_loop_t loop;
  uv_loop_init(&loop);
  char* dir = tu_tmpdir("log");
  txmq_log_t* log;
  assert_rc(0, open_log(&log, &loop, dir, END_OPTS));
  enum { NB = 40 };
  app_t a[NB];
  memset(a, 0, sizeof a);
  uint64_t order = 0;
  uint64_t expect = 0;
  uint32_t seed = 0;
  uint64_t first_pos[NB];
  for (int b = 0; b < NB; b++) {
    size_t n = 1 + (size_t)(b * 7) % 50;
    txmq_log_rec_t recs[50];
    uint8_t* bufs[50];
    uint64_t positions[50];
    for (size_t i = 0; i < n; i++) {
      uint32_t len = (seed * 37) % 300;
      bufs[i] = malloc(len + 1);
      fill(bufs[i], len, seed);
      recs[i] = (txmq_log_rec_t){(uint8_t)(1 + seed % 200), bufs[i], len};
      seed++;
    }
    a[b].counter = NULL;
    a[b].last_first = &order;
    a[b].check_durable = 1;
    assert_rc(0, txmq_log_append(log, recs, n, positions, on_append, &a[b]));
    for (size_t i = 0; i < n; i++) {
      assert_int_equal(positions[i], expect);
      expect += RHDR + recs[i].len;
      free(bufs[i]);
    }
    a[b].end = expect;
    first_pos[b] = positions[0];
  }
  wait_all(&loop, a, NB);
  for (int b = 0; b < NB; b++) {
    assert_rc(0, a[b].status);
    assert_int_equal(a[b].first, first_pos[b]);
  }
  /* Walk everything back with the iterator. */
  txmq_log_iter_t* it;
  assert_rc(0, txmq_log_iter_new(log, 0, UINT64_MAX, &it));
  txmq_log_entry_t e;
  uint32_t s = 0;
  uint64_t p = 0;
  while (txmq_log_iter_next(it, &e) == 0) {
    uint32_t len = (s * 37) % 300;
    assert_int_equal(e.pos, p);
    assert_int_equal(e.len, len);
    uint8_t buf[300];
    fill(buf, len, s);
    assert_memory_equal(e.data, buf, len);
    p = e.next;
    s++;
  }
  assert_int_equal(s, seed);
  assert_int_equal(p, expect);
  txmq_log_iter_free(it);
  close_log(&loop, log);
  tu_rmrf(dir);
  free(dir);
  tu_loop_close_clean(&loop);
}

/* txmq_log_iter_skip: below the bound, records of the listed types are
 * stepped over (across windows and segments), the others come; from the
 * bound on, every record comes. */
static void iterator_skip(void** state) {
  (void)state;
  uv_loop_t loop;
  uv_loop_init(&loop);
  char* dir = tu_tmpdir("log");
  txmq_log_t* log;
  assert_rc(0, open_log(&log, &loop, dir, TXMQ_LOG_OPT_SEGMENT_SIZE,
                        (int64_t)(256 * 1024), END_OPTS));
  enum { N = 180 };
  uint64_t pos[N];
  app_t a[N];
  memset(a, 0, sizeof a);
  /* types 1 + i % 200; lengths up to ~20 KiB: several windows, segments */
  for (int i = 0; i < N; i++)
    assert_rc(0, append1(log, (uint32_t)((i * 7919) % 20000), (uint32_t)i,
                         &pos[i], &a[i]));
  wait_all(&loop, a, N);
  assert_true(txmq_log_segment_count(log) > 3);
  uint8_t types[N / 2];
  size_t nt = 0;
  for (int i = 0; i < N; i += 2) types[nt++] = (uint8_t)(1 + i);
  txmq_log_iter_t* it;
  txmq_log_entry_t e;
  assert_rc(0, txmq_log_iter_new(log, pos[0], UINT64_MAX, &it));
  assert_rc(0, txmq_log_iter_skip(it, pos[150], types, nt));
  for (int i = 0; i < N; i++) {
    if (i < 150 && i % 2 == 0) continue;
    assert_rc(0, txmq_log_iter_next(it, &e));
    assert_int_equal(e.pos, pos[i]);
    assert_int_equal(e.type, 1 + i);
    uint8_t* buf = malloc(e.len + 1);
    fill(buf, e.len, (uint32_t)i);
    assert_memory_equal(e.data, buf, e.len);
    free(buf);
  }
  assert_rc(TXMQ_ENOTFOUND, txmq_log_iter_next(it, &e));
  assert_rc(TXMQ_EINVAL, txmq_log_iter_skip(it, 0, NULL, 1));
  txmq_log_iter_free(it);
  close_log(&loop, log);
  tu_rmrf(dir);
  free(dir);
  tu_loop_close_clean(&loop);
}

static void iterator_ranges(void** state) {
  (void)state;
  uv_loop_t loop;
  uv_loop_init(&loop);
  char* dir = tu_tmpdir("log");
  txmq_log_t* log;
  assert_rc(0, open_log(&log, &loop, dir, TXMQ_LOG_OPT_SEGMENT_SIZE,
                        (int64_t)4096, END_OPTS));
  enum { N = 60 };
  uint64_t pos[N + 10];
  app_t a[N + 10];
  memset(a, 0, sizeof a);
  for (int i = 0; i < N; i++)
    assert_rc(0, append1(log, 100 + (uint32_t)i, (uint32_t)i, &pos[i], &a[i]));
  wait_all(&loop, a, N);
  assert_true(txmq_log_segment_count(log) > 1);

  txmq_log_iter_t* it;
  txmq_log_entry_t e;
  /* [pos 5, pos 10) */
  assert_rc(0, txmq_log_iter_new(log, pos[5], pos[10], &it));
  for (int i = 5; i < 10; i++) {
    assert_rc(0, txmq_log_iter_next(it, &e));
    assert_int_equal(e.pos, pos[i]);
    assert_int_equal(e.len, 100 + i);
  }
  assert_rc(TXMQ_ENOTFOUND, txmq_log_iter_next(it, &e));
  txmq_log_iter_free(it);
  /* A range across segment boundaries, with a reader beside it. */
  assert_rc(0, txmq_log_iter_new(log, pos[20], UINT64_MAX, &it));
  for (int i = 20; i < N; i++) {
    assert_rc(0, txmq_log_iter_next(it, &e));
    assert_int_equal(e.pos, pos[i]);
    check_rec(log, pos[N - 1 - (i - 20)], 100 + (uint32_t)(N - 1 - (i - 20)),
              (uint32_t)(N - 1 - (i - 20)));
    assert_int_equal(e.len, 100 + i); /* its own buffer is untouched */
    uint8_t buf[200];
    fill(buf, e.len, (uint32_t)i);
    assert_memory_equal(e.data, buf, e.len);
  }
  assert_rc(TXMQ_ENOTFOUND, txmq_log_iter_next(it, &e));
  /* to = UINT64_MAX follows the readable end as it grows. */
  for (int i = N; i < N + 10; i++)
    assert_rc(0, append1(log, 7, (uint32_t)i, &pos[i], &a[i]));
  assert_rc(TXMQ_ENOTFOUND, txmq_log_iter_next(it, &e)); /* not written yet */
  wait_all(&loop, a + N, 10);
  for (int i = N; i < N + 10; i++) {
    assert_rc(0, txmq_log_iter_next(it, &e));
    assert_int_equal(e.pos, pos[i]);
  }
  assert_rc(TXMQ_ENOTFOUND, txmq_log_iter_next(it, &e));
  txmq_log_iter_free(it);
  /* Empty and invalid ranges. */
  assert_rc(0, txmq_log_iter_new(log, pos[3], pos[3], &it));
  assert_rc(TXMQ_ENOTFOUND, txmq_log_iter_next(it, &e));
  txmq_log_iter_free(it);
  assert_rc(TXMQ_EINVAL, txmq_log_iter_new(log, pos[4], pos[3], &it));
  assert_rc(TXMQ_ERANGE, txmq_log_iter_new(log, txmq_log_next_pos(log) + 1,
                                           UINT64_MAX, &it));
  close_log(&loop, log);
  tu_rmrf(dir);
  free(dir);
  tu_loop_close_clean(&loop);
}

/* Sync policies. */

static void sync_always_group_commit(void** state) {
  (void)state;
  uv_loop_t loop;
  uv_loop_init(&loop);
  char* dir = tu_tmpdir("log");
  txmq_log_t* log;
  assert_rc(0, open_log(&log, &loop, dir, END_OPTS));
  enum { N = 2000 };
  app_t* a = calloc(N, sizeof *a);
  assert_non_null(a);
  uint64_t order = 0;
  int fired = 0;
  for (int i = 0; i < N; i++) {
    uint64_t p;
    a[i].check_durable = 1; /* ALWAYS: durable before the callback */
    a[i].check_readable = 1;
    a[i].last_first = &order;
    a[i].counter = &fired;
    assert_rc(0, append1(log, 64, (uint32_t)i, &p, &a[i]));
  }
  wait_all(&loop, a, N);
  assert_int_equal(fired, N);
  for (int i = 0; i < N; i++) assert_rc(0, a[i].status);
  uint64_t fsyncs = txmq_log_fsync_count(log);
  uint64_t writes = txmq_log_write_count(log);
  fprintf(stderr,
          "group commit: %d appends, %" PRIu64 " fsyncs, %" PRIu64 " writes\n",
          N, fsyncs, writes);
  /* Many appends share one fsync and one write. */
  assert_true(fsyncs >= 1);
  assert_true(fsyncs <= N / 10);
  assert_true(writes <= N / 10);
  assert_int_equal(txmq_log_durable_end(log), txmq_log_end(log));
  close_log(&loop, log);
  free(a);
  tu_rmrf(dir);
  free(dir);
  tu_loop_close_clean(&loop);
}

static void sync_interval(void** state) {
  (void)state;
  uv_loop_t loop;
  uv_loop_init(&loop);
  char* dir = tu_tmpdir("log");
  txmq_log_t* log;
  assert_rc(0, open_log(&log, &loop, dir, TXMQ_LOG_OPT_SYNC,
                        (int64_t)TXMQ_SYNC_INTERVAL,
                        TXMQ_LOG_OPT_SYNC_INTERVAL_MS, (int64_t)30, END_OPTS));
  enum { N = 50 };
  app_t a[N];
  memset(a, 0, sizeof a);
  uint64_t p;
  for (int i = 0; i < N; i++) {
    a[i].check_readable = 1;
    assert_rc(0, append1(log, 200, (uint32_t)i, &p, &a[i]));
  }
  wait_all(&loop, a, N);
  for (int i = 0; i < N; i++) assert_rc(0, a[i].status);
  /* The timed sync comes on its own, within a few intervals. */
  assert_true(run_until_durable(&loop, log, txmq_log_end(log), 5000));
  assert_true(txmq_log_fsync_count(log) >= 1);
  /* A second burst after the interval is synced again. */
  uint64_t before = txmq_log_fsync_count(log);
  memset(a, 0, sizeof a);
  for (int i = 0; i < 5; i++)
    assert_rc(0, append1(log, 10, (uint32_t)i, &p, &a[i]));
  wait_all(&loop, a, 5);
  assert_true(run_until_durable(&loop, log, txmq_log_end(log), 5000));
  assert_true(txmq_log_fsync_count(log) > before);
  close_log(&loop, log);
  tu_rmrf(dir);
  free(dir);
  tu_loop_close_clean(&loop);
}

static void sync_never_and_flush(void** state) {
  (void)state;
  uv_loop_t loop;
  uv_loop_init(&loop);
  char* dir = tu_tmpdir("log");
  txmq_log_t* log;
  assert_rc(0, open_log(&log, &loop, dir, TXMQ_LOG_OPT_SYNC,
                        (int64_t)TXMQ_SYNC_NEVER, END_OPTS));
  enum { N = 100 };
  app_t a[N];
  memset(a, 0, sizeof a);
  uint64_t p;
  for (int i = 0; i < N; i++) {
    a[i].check_readable = 1;
    assert_rc(0, append1(log, 50, (uint32_t)i, &p, &a[i]));
  }
  wait_all(&loop, a, N);
  for (int i = 0; i < N; i++) assert_rc(0, a[i].status);
  assert_int_equal(txmq_log_fsync_count(log), 0);
  assert_int_equal(txmq_log_durable_end(log), 0);
  assert_int_equal(txmq_log_end(log), N * (RHDR + 50));
  check_rec(log, p, 50, N - 1);
  /* flush: everything appended so far becomes durable. */
  app_t f;
  memset(&f, 0, sizeof f);
  assert_rc(0, txmq_log_flush(log, on_append, &f));
  wait_all(&loop, &f, 1);
  assert_rc(0, f.status);
  assert_int_equal(f.first, txmq_log_end(log));
  assert_int_equal(txmq_log_durable_end(log), txmq_log_end(log));
  assert_int_equal(txmq_log_fsync_count(log), 1);
  /* A flush with nothing new still calls back. */
  memset(&f, 0, sizeof f);
  assert_rc(0, txmq_log_flush(log, on_append, &f));
  wait_all(&loop, &f, 1);
  assert_rc(0, f.status);
  assert_int_equal(txmq_log_fsync_count(log), 1);
  close_log(&loop, log);
  tu_rmrf(dir);
  free(dir);
  tu_loop_close_clean(&loop);
}

/* Reopen. */

static void reopen_after_clean_close(void** state) {
  (void)state;
  uv_loop_t loop;
  uv_loop_init(&loop);
  char* dir = tu_tmpdir("log");
  txmq_log_t* log;
  enum { N = 200 };
  uint64_t pos[N + 1];
  for (int round = 0; round < 2; round++) {
    assert_rc(0, open_log(&log, &loop, dir, TXMQ_LOG_OPT_SYNC,
                          (int64_t)TXMQ_SYNC_NEVER, END_OPTS));
    assert_string_equal(txmq_log_diag(log), "");
    assert_int_equal(txmq_log_torn_bytes(log), 0);
    if (round == 0) {
      for (int i = 0; i < N; i++)
        assert_rc(0, append1(log, (uint32_t)(i * 13) % 700, (uint32_t)i,
                             &pos[i], NULL));
      /* Close without waiting: close writes and syncs all of it. */
      uint64_t end = txmq_log_next_pos(log);
      close_log(&loop, log);
      pos[N] = end;
      continue;
    }
    assert_int_equal(txmq_log_end(log), pos[N]);
    assert_int_equal(txmq_log_durable_end(log), pos[N]);
    assert_int_equal(txmq_log_next_pos(log), pos[N]);
    for (int i = 0; i < N; i++)
      check_rec(log, pos[i], (uint32_t)(i * 13) % 700, (uint32_t)i);
    uint64_t p;
    app_t a;
    memset(&a, 0, sizeof a);
    assert_rc(0, append1(log, 5, 999, &p, &a));
    assert_int_equal(p, pos[N]);
    wait_all(&loop, &a, 1);
    check_rec(log, p, 5, 999);
    close_log(&loop, log);
  }
  tu_rmrf(dir);
  free(dir);
  tu_loop_close_clean(&loop);
}

/* Torn tails. */

/* Writes four records (the last of 37 bytes) with the log itself and
 * returns the segment file's bytes; pos gets the four positions. */
static uint8_t* make_four(uv_loop_t* loop, const char* dir, uint64_t pos[4],
                          size_t* len) {
  txmq_log_t* log;
  assert_rc(0, open_log(&log, loop, dir, END_OPTS));
  static const uint32_t sizes[4] = {10, 0, 300, 37};
  for (int i = 0; i < 4; i++)
    assert_rc(0, append1(log, sizes[i], (uint32_t)i, &pos[i], NULL));
  close_log(loop, log);
  char* path = seg_file(dir, 0);
  uint8_t* bytes = tu_read_file(path, len);
  assert_non_null(bytes);
  free(path);
  assert_int_equal(*len, HDR + pos[3] + RHDR + 37);
  return bytes;
}

static void torn_tail_every_byte(void** state) {
  (void)state;
  uv_loop_t loop;
  uv_loop_init(&loop);
  char* dir = tu_tmpdir("log");
  uint64_t pos[4];
  size_t len;
  uint8_t* bytes = make_four(&loop, dir, pos, &len);
  char* path = seg_file(dir, 0);
  const size_t start = HDR + pos[3];
  for (size_t cut = start; cut <= len; cut++) {
    assert_int_equal(tu_write_file(path, bytes, cut), 0);
    txmq_log_t* log;
    /* no zero-fill: the file's size is what this test looks at */
    int rc = open_log(&log, &loop, dir, TXMQ_LOG_OPT_ZERO_AHEAD, (int64_t)0,
                      END_OPTS);
    if (rc != 0) fprintf(stderr, "cut %zu: %s\n", cut, txmq_log_diag(log));
    assert_rc(0, rc);
    uint64_t torn = cut == len ? 0 : cut - start;
    assert_int_equal(txmq_log_torn_bytes(log), torn);
    if (torn > 0) {
      assert_true(diag_has(log, "torn tail"));
      assert_int_equal(tu_file_size(path), (long long)start); /* cut */
      assert_int_equal(txmq_log_end(log), pos[3]);
    } else {
      assert_string_equal(txmq_log_diag(log), "");
    }
    assert_rc(TXMQ_ENOTFOUND, txmq_log_corruption(log, NULL, NULL));
    check_rec(log, pos[0], 10, 0);
    check_rec(log, pos[1], 0, 1);
    check_rec(log, pos[2], 300, 2);
    uint64_t p;
    app_t a;
    memset(&a, 0, sizeof a);
    assert_rc(0, append1(log, 21, 77, &p, &a));
    assert_int_equal(p, cut == len ? pos[3] + RHDR + 37 : pos[3]);
    wait_all(&loop, &a, 1);
    assert_rc(0, a.status);
    check_rec(log, p, 21, 77);
    close_log(&loop, log);
    /* And the repaired log opens clean. */
    assert_rc(0, open_log(&log, &loop, dir, END_OPTS));
    assert_string_equal(txmq_log_diag(log), "");
    check_rec(log, p, 21, 77);
    close_log(&loop, log);
  }
  free(path);
  free(bytes);
  tu_rmrf(dir);
  free(dir);
  tu_loop_close_clean(&loop);
}

static void bad_crc_in_last_record_is_cut(void** state) {
  (void)state;
  uv_loop_t loop;
  uv_loop_init(&loop);
  char* dir = tu_tmpdir("log");
  uint64_t pos[4];
  size_t len;
  free(make_four(&loop, dir, pos, &len));
  char* path = seg_file(dir, 0);
  assert_int_equal(tu_flip(path, (long long)(HDR + pos[3] + RHDR + 20), 0x04),
                   0);
  txmq_log_t* log;
  assert_rc(0, open_log(&log, &loop, dir, END_OPTS));
  assert_int_equal(txmq_log_torn_bytes(log), RHDR + 37);
  assert_true(diag_has(log, "crc"));
  assert_int_equal(txmq_log_end(log), pos[3]);
  assert_int_equal(tu_file_size(path), (long long)(HDR + pos[3]));
  check_rec(log, pos[2], 300, 2);
  close_log(&loop, log);
  free(path);
  tu_rmrf(dir);
  free(dir);
  tu_loop_close_clean(&loop);
}

/* Corruption in the middle and the recovery modes. */

static void bitflip_middle_record(void** state) {
  (void)state;
  uv_loop_t loop;
  uv_loop_init(&loop);
  char* dir = tu_tmpdir("log");
  txmq_log_t* log;
  enum { N = 10 };
  uint64_t pos[N];
  assert_rc(0, open_log(&log, &loop, dir, END_OPTS));
  for (int i = 0; i < N; i++)
    assert_rc(0, append1(log, 40, (uint32_t)i, &pos[i], NULL));
  close_log(&loop, log);
  char* path = seg_file(dir, 0);
  const long long full = tu_file_size(path);
  assert_int_equal(tu_flip(path, (long long)(HDR + pos[4] + RHDR + 9), 0x20),
                   0);

  /* Strict (the default): refuses, and says where. */
  assert_rc(TXMQ_ECORRUPT, open_log(&log, &loop, dir, END_OPTS));
  uint64_t sb = 99, cp = 99;
  assert_rc(0, txmq_log_corruption(log, &sb, &cp));
  assert_int_equal(sb, 0);
  assert_int_equal(cp, pos[4]);
  assert_true(diag_has(log, "corruption"));
  assert_true(diag_has(log, "00000000000000000000.log"));
  assert_rc(TXMQ_ECLOSED, append_str(log, "x", NULL));
  txmq_log_free(log);
  assert_int_equal(tu_file_size(path), full);

  /* RECOVER_READONLY: readable up to it, no appends, nothing changed. */
  assert_rc(0, open_log(&log, &loop, dir, TXMQ_LOG_OPT_RECOVER,
                        (int64_t)TXMQ_LOG_RECOVER_READONLY, END_OPTS));
  assert_int_equal(txmq_log_is_read_only(log), 1);
  assert_rc(0, txmq_log_corruption(log, &sb, &cp));
  assert_int_equal(sb, 0);
  assert_int_equal(cp, pos[4]);
  assert_int_equal(txmq_log_end(log), pos[4]);
  for (int i = 0; i < 4; i++) check_rec(log, pos[i], 40, (uint32_t)i);
  txmq_log_entry_t e;
  assert_rc(TXMQ_ERANGE, txmq_log_read(log, pos[4], &e));
  assert_rc(TXMQ_ERANGE, txmq_log_read(log, pos[5], &e));
  assert_rc(TXMQ_EROFS, append_str(log, "x", NULL));
  assert_rc(TXMQ_EROFS, txmq_log_flush(log, NULL, NULL));
  assert_rc(TXMQ_EROFS, txmq_log_apply_retention(log, NULL));
  close_log(&loop, log);
  assert_int_equal(tu_file_size(path), full);

  /* RECOVER_TRUNCATE: cut there, appends go on from it. */
  assert_rc(0, open_log(&log, &loop, dir, TXMQ_LOG_OPT_RECOVER,
                        (int64_t)TXMQ_LOG_RECOVER_TRUNCATE, END_OPTS));
  assert_int_equal(txmq_log_is_read_only(log), 0);
  assert_rc(0, txmq_log_corruption(log, &sb, &cp));
  assert_int_equal(cp, pos[4]);
  assert_true(diag_has(log, "cut the log"));
  assert_int_equal(txmq_log_end(log), pos[4]);
  assert_int_equal(tu_file_size(path), (long long)(HDR + pos[4]));
  uint64_t p;
  app_t a;
  memset(&a, 0, sizeof a);
  assert_rc(0, append1(log, 3, 1234, &p, &a));
  assert_int_equal(p, pos[4]);
  wait_all(&loop, &a, 1);
  close_log(&loop, log);
  assert_rc(0, open_log(&log, &loop, dir, END_OPTS));
  assert_string_equal(txmq_log_diag(log), "");
  check_rec(log, pos[3], 40, 3);
  check_rec(log, p, 3, 1234);
  close_log(&loop, log);
  free(path);
  tu_rmrf(dir);
  free(dir);
  tu_loop_close_clean(&loop);
}

static void damaged_length_in_middle_is_corruption(void** state) {
  /* A flipped bit in a middle record's length makes it run past the end of
   * the file; the valid records after it show it is not a torn tail. */
  (void)state;
  uv_loop_t loop;
  uv_loop_init(&loop);
  char* dir = tu_tmpdir("log");
  txmq_log_t* log;
  uint64_t pos[6];
  assert_rc(0, open_log(&log, &loop, dir, END_OPTS));
  for (int i = 0; i < 6; i++)
    assert_rc(0, append1(log, 30, (uint32_t)i, &pos[i], NULL));
  close_log(&loop, log);
  char* path = seg_file(dir, 0);
  assert_int_equal(tu_flip(path, (long long)(HDR + pos[2] + 6), 0x01), 0);
  assert_rc(TXMQ_ECORRUPT, open_log(&log, &loop, dir, END_OPTS));
  uint64_t sb, cp;
  assert_rc(0, txmq_log_corruption(log, &sb, &cp));
  assert_int_equal(cp, pos[2]);
  assert_int_equal(txmq_log_torn_bytes(log), 0);
  txmq_log_free(log);
  free(path);
  tu_rmrf(dir);
  free(dir);
  tu_loop_close_clean(&loop);
}

static void bitflip_in_later_segment(void** state) {
  /* Corruption in the newest segment is found at open and reported with
   * that segment's base; damage in an older segment (whose records open
   * does not scan) is found by the read that meets it. */
  (void)state;
  uv_loop_t loop;
  uv_loop_init(&loop);
  char* dir = tu_tmpdir("log");
  txmq_log_t* log;
  enum { N = 20 }; /* 7 records of 512 bytes per 4 KiB segment */
  uint64_t pos[N];
  assert_rc(0, open_log(&log, &loop, dir, TXMQ_LOG_OPT_SEGMENT_SIZE,
                        (int64_t)4096, END_OPTS));
  for (int i = 0; i < N; i++)
    assert_rc(0, append1(log, 500, (uint32_t)i, &pos[i], NULL));
  close_log(&loop, log);
  assert_int_equal(pos[7], 7 * 512);
  assert_int_equal(pos[14], 14 * 512);
  char* last = seg_file(dir, pos[14]);
  assert_int_equal(
      tu_flip(last, (long long)(HDR + pos[16] - pos[14] + 100), 0x80), 0);
  assert_rc(TXMQ_ECORRUPT, open_log(&log, &loop, dir, END_OPTS));
  uint64_t sb, cp;
  assert_rc(0, txmq_log_corruption(log, &sb, &cp));
  assert_int_equal(sb, pos[14]);
  assert_int_equal(cp, pos[16]);
  txmq_log_free(log);
  assert_rc(0, open_log(&log, &loop, dir, TXMQ_LOG_OPT_SEGMENT_SIZE,
                        (int64_t)4096, TXMQ_LOG_OPT_RECOVER,
                        (int64_t)TXMQ_LOG_RECOVER_TRUNCATE, END_OPTS));
  assert_int_equal(txmq_log_end(log), pos[16]);
  assert_int_equal(tu_file_size(last), (long long)(HDR + pos[16] - pos[14]));
  close_log(&loop, log);

  char* first = seg_file(dir, 0);
  assert_int_equal(tu_flip(first, (long long)(HDR + pos[3] + 50), 0x01), 0);
  assert_rc(0, open_log(&log, &loop, dir, END_OPTS));
  assert_string_equal(txmq_log_diag(log), "");
  txmq_log_entry_t e;
  assert_rc(TXMQ_ECORRUPT, txmq_log_read(log, pos[3], &e));
  assert_true(diag_has(log, "crc"));
  check_rec(log, pos[4], 500, 4);
  txmq_log_iter_t* it;
  assert_rc(0, txmq_log_iter_new(log, 0, UINT64_MAX, &it));
  for (int i = 0; i < 3; i++) assert_rc(0, txmq_log_iter_next(it, &e));
  assert_rc(TXMQ_ECORRUPT, txmq_log_iter_next(it, &e));
  assert_rc(TXMQ_ECORRUPT, txmq_log_iter_next(it, &e)); /* it stays stopped */
  txmq_log_iter_free(it);
  close_log(&loop, log);
  free(first);
  free(last);
  tu_rmrf(dir);
  free(dir);
  tu_loop_close_clean(&loop);
}

static void idle_log_does_not_keep_loop_alive(void** state) {
  /* Like a libuv request, the log keeps its loop running only while a
   * callback is pending: uv_run returns once the appends are done. */
  (void)state;
  uv_loop_t loop;
  uv_loop_init(&loop);
  char* dir = tu_tmpdir("log");
  txmq_log_t* log;
  assert_rc(0, open_log(&log, &loop, dir, END_OPTS));
  assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
  app_t a[10];
  memset(a, 0, sizeof a);
  uint64_t p;
  for (int i = 0; i < 10; i++)
    assert_rc(0, append1(log, 30, (uint32_t)i, &p, &a[i]));
  assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
  for (int i = 0; i < 10; i++) assert_int_equal(a[i].fired, 1);
  int closed = 0;
  assert_rc(0, txmq_log_close(log, on_closed, &closed));
  assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
  assert_int_equal(closed, 1);
  txmq_log_free(log);
  tu_rmrf(dir);
  free(dir);
  tu_loop_close_clean(&loop);
}

/* Segments. */

static void segment_rolling(void** state) {
  (void)state;
  uv_loop_t loop;
  uv_loop_init(&loop);
  char* dir = tu_tmpdir("log");
  txmq_log_t* log;
  assert_rc(0,
            open_log(&log, &loop, dir, TXMQ_LOG_OPT_SEGMENT_SIZE, (int64_t)4096,
                     TXMQ_LOG_OPT_SYNC, (int64_t)TXMQ_SYNC_NEVER, END_OPTS));
  enum { N = 300 };
  uint64_t pos[N + 60];
  uint32_t lens[N + 60];
  app_t* a = calloc(N + 60, sizeof *a);
  for (int i = 0; i < N; i++) {
    lens[i] = 50 + (uint32_t)(i * 41) % 400;
    assert_rc(0, append1(log, lens[i], (uint32_t)i, &pos[i], &a[i]));
  }
  wait_all(&loop, a, N);
  size_t nseg = txmq_log_segment_count(log);
  assert_true(nseg > 10);
  /* Every segment starts with a record, is named by its base, holds the
   * data up to the next base and stays within the target size. */
  for (size_t s = 0; s < nseg; s++) {
    uint64_t base = txmq_log_segment_base(log, s);
    uint64_t end =
        s + 1 < nseg ? txmq_log_segment_base(log, s + 1) : txmq_log_end(log);
    int starts_record = 0;
    for (int i = 0; i < N; i++) starts_record |= pos[i] == base;
    assert_true(starts_record);
    assert_int_equal(seg_size(dir, base), (long long)(HDR + end - base));
    assert_true(HDR + end - base <= 4096);
  }
  /* A record larger than a segment gets one of its own. */
  uint64_t big;
  assert_rc(0, append1(log, 10000, N, &big, &a[N]));
  lens[N] = 10000;
  pos[N] = big;
  uint64_t after;
  assert_rc(0, append1(log, 10, N + 1, &after, &a[N + 1]));
  lens[N + 1] = 10;
  pos[N + 1] = after;
  /* A batch spanning several segments. */
  txmq_log_rec_t recs[50];
  uint8_t bufs[50][200];
  for (int i = 0; i < 50; i++) {
    fill(bufs[i], 200, (uint32_t)(N + 2 + i));
    recs[i] = (txmq_log_rec_t){(uint8_t)(1 + (N + 2 + i) % 200), bufs[i], 200};
    lens[N + 2 + i] = 200;
  }
  assert_rc(0,
            txmq_log_append(log, recs, 50, pos + N + 2, on_append, &a[N + 2]));
  for (int i = 1; i < 50; i++)
    assert_int_equal(pos[N + 2 + i], pos[N + 1 + i] + RHDR + 200);
  wait_all(&loop, a + N, 3);
  assert_int_equal(seg_size(dir, big), HDR + RHDR + 10000);
  assert_int_equal(after, big + RHDR + 10000);
  assert_int_equal(txmq_log_segment_base(log, nseg), big);
  assert_int_equal(txmq_log_segment_base(log, nseg + 1), after);
  assert_true(txmq_log_segment_count(log) >= nseg + 4);
  const int total = N + 52;
  for (int i = 0; i < total; i++) check_rec(log, pos[i], lens[i], (uint32_t)i);
  close_log(&loop, log);

  /* Reopen: same segments, all readable, by iterator too. */
  assert_rc(0, open_log(&log, &loop, dir, TXMQ_LOG_OPT_SEGMENT_SIZE,
                        (int64_t)4096, END_OPTS));
  assert_string_equal(txmq_log_diag(log), "");
  txmq_log_iter_t* it;
  assert_rc(0, txmq_log_iter_new(log, 0, UINT64_MAX, &it));
  txmq_log_entry_t e;
  for (int i = 0; i < total; i++) {
    assert_rc(0, txmq_log_iter_next(it, &e));
    assert_int_equal(e.pos, pos[i]);
    assert_int_equal(e.len, lens[i]);
  }
  assert_rc(TXMQ_ENOTFOUND, txmq_log_iter_next(it, &e));
  txmq_log_iter_free(it);
  for (int i = 0; i < total; i += 7)
    check_rec(log, pos[i], lens[i], (uint32_t)i);
  close_log(&loop, log);
  free(a);
  tu_rmrf(dir);
  free(dir);
  tu_loop_close_clean(&loop);
}

/* The file limit is put back after the test, even when it fails. */
static int save_nofile(void** state) {
  struct rlimit* r = malloc(sizeof *r);
  if (r == NULL || getrlimit(RLIMIT_NOFILE, r) != 0) return -1;
  *state = r;
  return 0;
}

static int restore_nofile(void** state) {
  int rc = setrlimit(RLIMIT_NOFILE, *state);
  free(*state);
  return rc;
}

/* File descriptors the process has open now. */
static int open_fds(void) {
  DIR* d = opendir("/proc/self/fd");
  assert_non_null(d);
  int n = 0;
  for (struct dirent* e = readdir(d); e != NULL; e = readdir(d))
    n += e->d_name[0] != '.';
  closedir(d);
  return n - 1; /* the directory's own */
}

/* Found by the crash harness (tests/fault): every segment kept a read fd
 * open for as long as the log was, so a log of more segments than the
 * process may open files (RLIMIT_NOFILE) stopped taking writes - the
 * writer could not open the next segment, EFAILED from then on - and was
 * refused at every later open. Here the limit allows 64 more files than
 * are open, the log grows to some 250 segments, is read in an order that
 * jumps between them, opened again, read, and written again. */
static void more_segments_than_files(void** state) {
  const struct rlimit* old = *state;
  uv_loop_t loop;
  uv_loop_init(&loop);
  char* dir = tu_tmpdir("log");
  struct rlimit low = *old;
  low.rlim_cur = (rlim_t)open_fds() + 64;
  assert_true(low.rlim_cur <= old->rlim_max);
  assert_int_equal(setrlimit(RLIMIT_NOFILE, &low), 0);

  txmq_log_t* log;
  assert_rc(0,
            open_log(&log, &loop, dir, TXMQ_LOG_OPT_SEGMENT_SIZE, (int64_t)4096,
                     TXMQ_LOG_OPT_SYNC, (int64_t)TXMQ_SYNC_NEVER, END_OPTS));
  enum { N = 1000, LEN = 900 };
  uint64_t* pos = calloc(N + 1, sizeof *pos);
  app_t* a = calloc(N + 1, sizeof *a);
  assert_non_null(pos);
  assert_non_null(a);
  for (int i = 0; i < N; i++) {
    assert_rc(0, append1(log, LEN, (uint32_t)i, &pos[i], &a[i]));
    if (i % 50 == 49) wait_all(&loop, a + i - 49, 50);
  }
  for (int i = 0; i < N; i++) assert_rc(0, a[i].status);
  assert_true(txmq_log_segment_count(log) > 200);
  /* 97 is prime to N: every record once, segments far apart in turn. */
  for (int k = 0, i = 0; k < N; k++, i = (i + 97) % N)
    check_rec(log, pos[i], LEN, (uint32_t)i);
  close_log(&loop, log);

  assert_rc(0, open_log(&log, &loop, dir, TXMQ_LOG_OPT_SEGMENT_SIZE,
                        (int64_t)4096, END_OPTS));
  txmq_log_iter_t* it;
  assert_rc(0, txmq_log_iter_new(log, 0, UINT64_MAX, &it));
  txmq_log_entry_t e;
  for (int i = 0; i < N; i++) {
    assert_rc(0, txmq_log_iter_next(it, &e));
    assert_int_equal(e.pos, pos[i]);
  }
  txmq_log_iter_free(it);
  for (int k = 0, i = 0; k < N; k++, i = (i + 389) % N)
    check_rec(log, pos[i], LEN, (uint32_t)i);
  assert_rc(0, append1(log, 5000, N, &pos[N], &a[N])); /* a new segment */
  wait_all(&loop, a + N, 1);
  assert_rc(0, a[N].status);
  check_rec(log, pos[N], 5000, N);
  close_log(&loop, log);

  free(pos);
  free(a);
  tu_rmrf(dir);
  free(dir);
  tu_loop_close_clean(&loop);
}

/* Four segments of about 4 KiB; bases gets their bases. */
static void make_segments(uv_loop_t* loop, const char* dir, uint64_t* bases,
                          size_t nb, uint64_t* end) {
  txmq_log_t* log;
  assert_rc(0,
            open_log(&log, loop, dir, TXMQ_LOG_OPT_SEGMENT_SIZE, (int64_t)4096,
                     TXMQ_LOG_OPT_SYNC, (int64_t)TXMQ_SYNC_NEVER, END_OPTS));
  uint64_t p;
  uint32_t i = 0;
  while (txmq_log_segment_count(log) < nb || txmq_log_next_pos(log) == 0) {
    assert_rc(0, append1(log, 500, i++, &p, NULL));
    app_t f;
    memset(&f, 0, sizeof f);
    assert_rc(0, txmq_log_flush(log, on_append, &f));
    wait_all(loop, &f, 1);
  }
  for (size_t s = 0; s < nb; s++) bases[s] = txmq_log_segment_base(log, s);
  *end = txmq_log_end(log);
  close_log(loop, log);
}

static void damaged_or_missing_segments(void** state) {
  (void)state;
  uv_loop_t loop;
  uv_loop_init(&loop);
  char* src = tu_tmpdir("log");
  uint64_t b[4], end;
  make_segments(&loop, src, b, 4, &end);
  txmq_log_t* log;
  uint64_t sb, cp;

  /* A damaged header in the middle. */
  char* dir = tu_tmpdir("log");
  assert_int_equal(tu_copy_tree(src, dir), 0);
  char* p1 = seg_file(dir, b[1]);
  assert_int_equal(tu_flip(p1, 20, 0x01), 0); /* inside the base field */
  assert_rc(TXMQ_ECORRUPT, open_log(&log, &loop, dir, END_OPTS));
  assert_rc(0, txmq_log_corruption(log, &sb, &cp));
  assert_int_equal(sb, b[1]);
  assert_int_equal(cp, b[1]);
  assert_true(diag_has(log, "header"));
  txmq_log_free(log);
  /* ... read-only recovery reads the segment before it. */
  assert_rc(0, open_log(&log, &loop, dir, TXMQ_LOG_OPT_RECOVER,
                        (int64_t)TXMQ_LOG_RECOVER_READONLY, END_OPTS));
  assert_int_equal(txmq_log_end(log), b[1]);
  assert_int_equal(txmq_log_segment_count(log), 1);
  check_rec(log, 0, 500, 0);
  close_log(&loop, log);
  free(p1);
  tu_rmrf(dir);
  free(dir);

  /* A missing segment in the middle. */
  dir = tu_tmpdir("log");
  assert_int_equal(tu_copy_tree(src, dir), 0);
  char* p2 = seg_file(dir, b[2]);
  assert_int_equal(unlink(p2), 0);
  assert_rc(TXMQ_ECORRUPT, open_log(&log, &loop, dir, END_OPTS));
  assert_rc(0, txmq_log_corruption(log, &sb, &cp));
  assert_int_equal(sb, b[2]);
  assert_int_equal(cp, b[2]);
  assert_true(diag_has(log, "missing"));
  txmq_log_free(log);
  /* ... truncate recovery drops what follows the hole and goes on. */
  assert_rc(0, open_log(&log, &loop, dir, TXMQ_LOG_OPT_SEGMENT_SIZE,
                        (int64_t)4096, TXMQ_LOG_OPT_RECOVER,
                        (int64_t)TXMQ_LOG_RECOVER_TRUNCATE, END_OPTS));
  assert_int_equal(txmq_log_end(log), b[2]);
  assert_int_equal(txmq_log_segment_count(log), 2);
  assert_int_equal(seg_size(dir, b[3]), -1);
  uint64_t p;
  app_t a;
  memset(&a, 0, sizeof a);
  assert_rc(0, append1(log, 3000, 4242, &p, &a)); /* does not fit: rolls */
  assert_int_equal(p, b[2]);
  wait_all(&loop, &a, 1);
  assert_int_equal(txmq_log_segment_count(log), 3);
  close_log(&loop, log);
  assert_rc(0, open_log(&log, &loop, dir, END_OPTS)); /* seg ids consecutive */
  assert_string_equal(txmq_log_diag(log), "");
  check_rec(log, p, 3000, 4242);
  close_log(&loop, log);
  free(p2);
  tu_rmrf(dir);
  free(dir);

  /* A middle segment that lost its last bytes. */
  dir = tu_tmpdir("log");
  assert_int_equal(tu_copy_tree(src, dir), 0);
  p1 = seg_file(dir, b[1]);
  assert_int_equal(tu_truncate(p1, (long long)(HDR + b[2] - b[1] - 10)), 0);
  assert_rc(TXMQ_ECORRUPT, open_log(&log, &loop, dir, END_OPTS));
  assert_rc(0, txmq_log_corruption(log, &sb, &cp));
  assert_int_equal(sb, b[1]);
  /* The last record of that segment is the one that is cut short. */
  assert_int_equal(cp, b[2] - (RHDR + 500));
  txmq_log_free(log);
  free(p1);
  tu_rmrf(dir);
  free(dir);

  tu_rmrf(src);
  free(src);
  tu_loop_close_clean(&loop);
}

static void torn_segment_creation(void** state) {
  (void)state;
  uv_loop_t loop;
  uv_loop_init(&loop);
  char* dir = tu_tmpdir("log");
  uint64_t b[2], end;
  make_segments(&loop, dir, b, 2, &end);
  /* Drop the data of segment 1 and half its header. */
  char* p1 = seg_file(dir, b[1]);
  assert_int_equal(tu_truncate(p1, 13), 0);
  /* A read-only open leaves it alone and ends at its base. */
  txmq_log_t* log;
  assert_rc(0, open_log(&log, NULL, dir, TXMQ_LOG_OPT_READ_ONLY, (int64_t)1,
                        END_OPTS));
  assert_int_equal(txmq_log_end(log), b[1]);
  assert_int_equal(txmq_log_segment_count(log), 1);
  assert_true(diag_has(log, "torn"));
  close_log(&loop, log);
  assert_int_equal(tu_file_size(p1), 13);
  /* A read-write open rewrites its header. */
  assert_rc(0, open_log(&log, &loop, dir, END_OPTS));
  assert_true(diag_has(log, "header rewritten"));
  assert_int_equal(tu_file_size(p1), HDR);
  assert_int_equal(txmq_log_segment_count(log), 2);
  assert_int_equal(txmq_log_end(log), b[1]);
  uint64_t p;
  app_t a;
  memset(&a, 0, sizeof a);
  assert_rc(0, append1(log, 8, 88, &p, &a));
  assert_int_equal(p, b[1]);
  wait_all(&loop, &a, 1);
  close_log(&loop, log);
  assert_rc(0, open_log(&log, &loop, dir, END_OPTS));
  assert_string_equal(txmq_log_diag(log), "");
  check_rec(log, p, 8, 88);
  close_log(&loop, log);
  free(p1);
  tu_rmrf(dir);
  free(dir);
  tu_loop_close_clean(&loop);
}

/* A segment file named after a base near 2^64 is not one of ours: taking
 * it made the positions of the next appends wrap around past 2^64 (found
 * by fuzzing). Names beyond TXMQ_LOG_MAX_POS are ignored like any other
 * file, and left alone. */
static void segment_name_beyond_positions(void** state) {
  (void)state;
  uv_loop_t loop;
  uv_loop_init(&loop);
  char* dir = tu_tmpdir("log");
  uint64_t base = UINT64_MAX - 15;
  uint8_t seg[HDR + RHDR + 4];
  txmq__log_seg_header(seg, base, 0);
  txmq_log_rec_t r = {1, "abcd", 4};
  txmq__log_rec_encode(seg + HDR, base, &r);
  char* path = seg_file(dir, base);
  assert_int_equal(tu_write_file(path, seg, sizeof seg), 0);
  txmq_log_t* log;
  assert_rc(0, open_log(&log, &loop, dir, TXMQ_LOG_OPT_SYNC,
                        (int64_t)TXMQ_SYNC_NEVER, END_OPTS));
  assert_int_equal(txmq_log_begin(log), 0);
  uint64_t p;
  app_t a;
  memset(&a, 0, sizeof a);
  assert_rc(0, append1(log, 8, 7, &p, &a));
  wait_all(&loop, &a, 1);
  assert_int_equal(p, 0);
  assert_int_equal(txmq_log_next_pos(log), RHDR + 8);
  check_rec(log, p, 8, 7);
  close_log(&loop, log);
  assert_int_equal(tu_file_size(path), sizeof seg);
  /* Just below the bound the name is taken as before. */
  tu_rmrf(dir);
  assert_int_equal(mkdir(dir, 0755), 0);
  base = TXMQ_LOG_MAX_POS - 64;
  free(path);
  path = seg_file(dir, base);
  txmq__log_seg_header(seg, base, 0);
  txmq__log_rec_encode(seg + HDR, base, &r);
  assert_int_equal(tu_write_file(path, seg, sizeof seg), 0);
  assert_rc(0, open_log(&log, &loop, dir, TXMQ_LOG_OPT_SYNC,
                        (int64_t)TXMQ_SYNC_NEVER, END_OPTS));
  assert_int_equal(txmq_log_begin(log), base);
  assert_int_equal(txmq_log_end(log), base + RHDR + 4);
  close_log(&loop, log);
  free(path);
  tu_rmrf(dir);
  free(dir);
  tu_loop_close_clean(&loop);
}

/* Retention. */

typedef struct {
  int calls;
  uint64_t bases[64];
  uint64_t ends[64];
  uint64_t keep_from; /* keep segments whose base >= keep_from */
} keep_t;

static int keep_hook(void* arg, uint64_t base, uint64_t end) {
  keep_t* k = arg;
  if (k->calls < 64) {
    k->bases[k->calls] = base;
    k->ends[k->calls] = end;
  }
  k->calls++;
  return base >= k->keep_from;
}

static void retention_by_size(void** state) {
  (void)state;
  uv_loop_t loop;
  uv_loop_init(&loop);
  char* dir = tu_tmpdir("log");
  uint64_t b[12], end;
  make_segments(&loop, dir, b, 12, &end);
  txmq_log_t* log;
  /* Keep about three segments' worth. */
  assert_rc(0,
            open_log(&log, &loop, dir, TXMQ_LOG_OPT_SEGMENT_SIZE, (int64_t)4096,
                     TXMQ_LOG_OPT_RETAIN_BYTES, (int64_t)(3 * 4096),
                     TXMQ_LOG_OPT_ZERO_AHEAD, (int64_t)0, END_OPTS));
  size_t nseg = txmq_log_segment_count(log);
  assert_true(nseg >= 12);
  /* The keep hook stops deletion at the first segment it keeps. */
  keep_t k;
  memset(&k, 0, sizeof k);
  k.keep_from = b[3];
  txmq_log_set_keep_cb(log, keep_hook, &k);
  size_t deleted = 99;
  assert_rc(0, txmq_log_apply_retention(log, &deleted));
  assert_int_equal(deleted, 3);
  assert_int_equal(k.calls, 4); /* oldest first, stopping at the kept one */
  for (int i = 0; i < 4; i++) {
    assert_int_equal(k.bases[i], b[i]);
    assert_int_equal(k.ends[i], b[i + 1]);
  }
  assert_int_equal(txmq_log_begin(log), b[3]);
  assert_int_equal(txmq_log_segment_count(log), nseg - 3);
  txmq_log_entry_t e;
  assert_rc(TXMQ_ERANGE, txmq_log_read(log, 0, &e));
  txmq_log_iter_t* it;
  assert_rc(TXMQ_ERANGE, txmq_log_iter_new(log, 0, UINT64_MAX, &it));
  assert_rc(0, txmq_log_read(log, b[3], &e));

  /* Without the hook, deletion goes on until the size fits. */
  txmq_log_set_keep_cb(log, NULL, NULL);
  assert_rc(0, txmq_log_apply_retention(log, &deleted));
  uint64_t total = 0;
  for (size_t s = 0; s < txmq_log_segment_count(log); s++)
    total += (uint64_t)seg_size(dir, txmq_log_segment_base(log, s));
  assert_true(total <= 3 * 4096);
  assert_true(total + 4096 > 3 * 4096); /* it deleted no more than needed */
  size_t left = txmq_log_segment_count(log);
  assert_int_equal(left, nseg - 3 - deleted);
  uint64_t first = txmq_log_begin(log);
  assert_int_equal(txmq_log_segment_base(log, 0), first);
  /* Appends and reads go on; closing lets the writer finish the unlinks. */
  uint64_t p;
  app_t a;
  memset(&a, 0, sizeof a);
  assert_rc(0, append1(log, 10, 1, &p, &a));
  wait_all(&loop, &a, 1);
  close_log(&loop, log);
  for (size_t s = 0; s < 12; s++) {
    long long size = seg_size(dir, b[s]);
    if (b[s] < first)
      assert_int_equal(size, -1);
    else
      assert_true(size > 0);
  }
  assert_rc(0, open_log(&log, &loop, dir, END_OPTS));
  assert_string_equal(txmq_log_diag(log), "");
  assert_int_equal(txmq_log_begin(log), first);
  check_rec(log, p, 10, 1);
  close_log(&loop, log);
  tu_rmrf(dir);
  free(dir);
  tu_loop_close_clean(&loop);
}

static void set_mtime(const char* dir, uint64_t base, time_t t) {
  char* p = seg_file(dir, base);
  struct timespec ts[2] = {{t, 0}, {t, 0}};
  assert_int_equal(utimensat(AT_FDCWD, p, ts, 0), 0);
  free(p);
}

static void retention_by_age(void** state) {
  (void)state;
  uv_loop_t loop;
  uv_loop_init(&loop);
  char* dir = tu_tmpdir("log");
  uint64_t b[6], end;
  make_segments(&loop, dir, b, 6, &end);
  time_t old = time(NULL) - 7200;
  for (int i = 0; i < 3; i++) set_mtime(dir, b[i], old);
  txmq_log_t* log;
  assert_rc(0, open_log(&log, &loop, dir, TXMQ_LOG_OPT_RETAIN_SECONDS,
                        (int64_t)3600, END_OPTS));
  keep_t k;
  memset(&k, 0, sizeof k);
  k.keep_from = b[1];
  txmq_log_set_keep_cb(log, keep_hook, &k);
  size_t deleted;
  assert_rc(0, txmq_log_apply_retention(log, &deleted));
  assert_int_equal(deleted, 1);
  assert_int_equal(k.calls, 2);
  assert_int_equal(txmq_log_begin(log), b[1]);
  /* Without the hook the other old ones go, and the young ones stay. */
  k.keep_from = UINT64_MAX;
  memset(k.bases, 0, sizeof k.bases);
  k.calls = 0;
  assert_rc(0, txmq_log_apply_retention(log, &deleted));
  assert_int_equal(deleted, 2);
  assert_int_equal(k.calls, 2);
  assert_int_equal(txmq_log_begin(log), b[3]);
  assert_rc(0, txmq_log_apply_retention(log, &deleted));
  assert_int_equal(deleted, 0);
  /* Even an old newest segment is never deleted. */
  for (size_t s = 0; s < txmq_log_segment_count(log); s++)
    set_mtime(dir, txmq_log_segment_base(log, s), old);
  assert_rc(0, txmq_log_apply_retention(log, &deleted));
  assert_int_equal(txmq_log_segment_count(log), 1);
  assert_int_equal(txmq_log_begin(log), b[5]);
  close_log(&loop, log);
  tu_rmrf(dir);
  free(dir);
  tu_loop_close_clean(&loop);
}

/* Back-pressure and limits. */

static void eagain_when_buffer_full(void** state) {
  (void)state;
  uv_loop_t loop;
  uv_loop_init(&loop);
  char* dir = tu_tmpdir("log");
  txmq_log_t* log;
  assert_rc(0, open_log(&log, &loop, dir, TXMQ_LOG_OPT_MAX_BUFFERED,
                        (int64_t)4096, END_OPTS));
  app_t a[8];
  memset(a, 0, sizeof a);
  uint64_t p;
  /* Buffered bytes only drop when the loop hears from the writer, so
   * without running the loop the fifth 1012-byte record is refused. */
  for (int i = 0; i < 4; i++)
    assert_rc(0, append1(log, 1000, (uint32_t)i, &p, &a[i]));
  assert_rc(TXMQ_EAGAIN, append1(log, 1000, 4, &p, &a[4]));
  assert_int_equal(txmq_log_next_pos(log), 4 * (RHDR + 1000));
  wait_all(&loop, a, 4);
  assert_int_equal(a[4].fired, 0); /* a refused append never calls back */
  assert_rc(0, append1(log, 1000, 4, &p, &a[4]));
  assert_int_equal(p, 4 * (RHDR + 1000));
  /* One batch bigger than the limit is accepted when nothing waits. */
  wait_all(&loop, a + 4, 1);
  assert_rc(0, append1(log, 10000, 5, &p, &a[5]));
  wait_all(&loop, a + 5, 1);
  check_rec(log, p, 10000, 5);
  assert_int_equal(a[4].fired, 1);
  close_log(&loop, log);
  tu_rmrf(dir);
  free(dir);
  tu_loop_close_clean(&loop);
}

static void too_big_and_invalid_records(void** state) {
  (void)state;
  uv_loop_t loop;
  uv_loop_init(&loop);
  char* dir = tu_tmpdir("log");
  txmq_log_t* log;
  assert_rc(0, open_log(&log, &loop, dir, END_OPTS));
  app_t a;
  memset(&a, 0, sizeof a);
  uint8_t byte = 1;
  txmq_log_rec_t big = {1, &byte, TXMQ_LOG_MAX_RECORD + 1};
  uint64_t p = 77;
  assert_rc(TXMQ_ETOOBIG, txmq_log_append(log, &big, 1, &p, on_append, &a));
  txmq_log_rec_t two[2] = {{1, &byte, 1}, big};
  assert_rc(TXMQ_ETOOBIG, txmq_log_append(log, two, 2, NULL, on_append, &a));
  txmq_log_rec_t zero_type = {0, &byte, 1};
  assert_rc(TXMQ_EINVAL,
            txmq_log_append(log, &zero_type, 1, NULL, on_append, &a));
  txmq_log_rec_t no_data = {1, NULL, 5};
  assert_rc(TXMQ_EINVAL,
            txmq_log_append(log, &no_data, 1, NULL, on_append, &a));
  assert_rc(TXMQ_EINVAL, txmq_log_append(log, two, 0, NULL, on_append, &a));
  assert_int_equal(txmq_log_next_pos(log), 0); /* nothing half-appended */
  txmq_log_rec_t empty = {9, NULL, 0};
  assert_rc(0, txmq_log_append(log, &empty, 1, &p, on_append, &a));
  assert_int_equal(p, 0);
  wait_all(&loop, &a, 1);
  assert_int_equal(a.fired, 1); /* only the accepted one called back */
  close_log(&loop, log);
  tu_rmrf(dir);
  free(dir);
  tu_loop_close_clean(&loop);
}

/* Read-only opens. */

static void read_only_leaves_torn_tail(void** state) {
  (void)state;
  uv_loop_t loop;
  uv_loop_init(&loop);
  char* dir = tu_tmpdir("log");
  uint64_t pos[4];
  size_t len;
  free(make_four(&loop, dir, pos, &len));
  char* path = seg_file(dir, 0);
  assert_int_equal(tu_truncate(path, (long long)(len - 5)), 0);
  size_t before_len;
  uint8_t* before = tu_read_file(path, &before_len);
  struct stat st_before;
  assert_int_equal(stat(path, &st_before), 0);

  txmq_log_t* log;
  assert_rc(0, open_log(&log, NULL, dir, TXMQ_LOG_OPT_READ_ONLY, (int64_t)1,
                        END_OPTS));
  assert_int_equal(txmq_log_is_read_only(log), 1);
  assert_int_equal(txmq_log_torn_bytes(log), RHDR + 37 - 5);
  assert_true(diag_has(log, "not cut"));
  assert_int_equal(txmq_log_end(log), pos[3]);
  assert_int_equal(txmq_log_durable_end(log), pos[3]);
  assert_int_equal(txmq_log_next_pos(log), pos[3]);
  check_rec(log, pos[2], 300, 2);
  txmq_log_entry_t e;
  assert_rc(TXMQ_ERANGE, txmq_log_read(log, pos[3], &e));
  assert_rc(TXMQ_EROFS, append_str(log, "x", NULL));
  txmq_log_iter_t* it;
  assert_rc(0, txmq_log_iter_new(log, 0, UINT64_MAX, &it));
  int n = 0;
  while (txmq_log_iter_next(it, &e) == 0) n++;
  assert_int_equal(n, 3);
  txmq_log_iter_free(it);
  int closed = 0;
  assert_rc(0, txmq_log_close(log, on_closed, &closed));
  assert_int_equal(closed, 1); /* synchronous */
  txmq_log_free(log);

  size_t after_len;
  uint8_t* after = tu_read_file(path, &after_len);
  assert_int_equal(after_len, before_len);
  assert_memory_equal(after, before, before_len);
  struct stat st_after;
  assert_int_equal(stat(path, &st_after), 0);
  assert_int_equal(st_after.st_mtim.tv_sec, st_before.st_mtim.tv_sec);
  assert_int_equal(st_after.st_mtim.tv_nsec, st_before.st_mtim.tv_nsec);
  free(before);
  free(after);
  free(path);
  tu_rmrf(dir);
  free(dir);
  tu_loop_close_clean(&loop);
}

/* Close and failures. */

typedef struct {
  int* fired;
  int expect;
  int done;
} close_check_t;

static void on_closed_check(txmq_log_t* log, void* arg) {
  (void)log;
  close_check_t* c = arg;
  assert_int_equal(*c->fired, c->expect); /* every callback ran first */
  c->done = 1;
}

static void close_with_pending_appends(void** state) {
  (void)state;
  uv_loop_t loop;
  uv_loop_init(&loop);
  char* dir = tu_tmpdir("log");
  txmq_log_t* log;
  enum { N = 300 };
  for (int policy = TXMQ_SYNC_ALWAYS; policy <= TXMQ_SYNC_NEVER; policy++) {
    tu_rmrf(dir);
    assert_rc(
        0, open_log(&log, &loop, dir, TXMQ_LOG_OPT_SYNC, (int64_t)policy,
                    TXMQ_LOG_OPT_SYNC_INTERVAL_MS, (int64_t)100000, END_OPTS));
    app_t* a = calloc(N, sizeof *a);
    int fired = 0;
    uint64_t order = 0;
    uint64_t p;
    for (int i = 0; i < N; i++) {
      a[i].counter = &fired;
      a[i].last_first = &order;
      a[i].check_readable = 1;
      assert_rc(0, append1(log, 100, (uint32_t)i, &p, &a[i]));
    }
    close_check_t cc = {&fired, N, 0};
    assert_rc(0, txmq_log_close(log, on_closed_check, &cc));
    assert_rc(TXMQ_ECLOSED, append_str(log, "late", NULL));
    assert_rc(TXMQ_ECLOSED, txmq_log_flush(log, NULL, NULL));
    assert_rc(TXMQ_ECLOSED, txmq_log_close(log, NULL, NULL));
    tu_run_until(&loop, &cc.done, 20000);
    assert_int_equal(cc.done, 1);
    for (int i = 0; i < N; i++) {
      assert_int_equal(a[i].fired, 1);
      assert_rc(0, a[i].status);
    }
    txmq_log_free(log);
    free(a);
    /* Close made it durable whatever the policy. */
    assert_rc(0, open_log(&log, NULL, dir, TXMQ_LOG_OPT_READ_ONLY, (int64_t)1,
                          END_OPTS));
    assert_int_equal(txmq_log_end(log), N * (RHDR + 100));
    check_rec(log, p, 100, N - 1);
    close_log(&loop, log);
  }
  tu_rmrf(dir);
  free(dir);
  tu_loop_close_clean(&loop);
}

static void storage_failure(void** state) {
  (void)state;
  uv_loop_t loop;
  uv_loop_init(&loop);
  char* dir = tu_tmpdir("log");
  for (int what = 0; what < 2; what++) {
    tu_rmrf(dir);
    txmq_log_t* log;
    assert_rc(0, open_log(&log, &loop, dir, END_OPTS));
    app_t ok;
    memset(&ok, 0, sizeof ok);
    uint64_t p;
    assert_rc(0, append1(log, 10, 1, &p, &ok));
    wait_all(&loop, &ok, 1);
    assert_rc(0, ok.status);
    /* The disk fails the next write (ENOSPC) or fdatasync (EIO). One
     * batch, so that no append can race with the writer's failure. */
    txmq__log_inject_fault(log, what, what == 0 ? ENOSPC : EIO);
    uint8_t bytes[3][10];
    txmq_log_rec_t recs[3];
    for (int i = 0; i < 3; i++)
      recs[i] = (txmq_log_rec_t){1, bytes[i], sizeof bytes[i]};
    memset(bytes, 7, sizeof bytes);
    app_t a;
    memset(&a, 0, sizeof a);
    assert_rc(0, txmq_log_append(log, recs, 3, NULL, on_append, &a));
    wait_all(&loop, &a, 1);
    assert_rc(what == 0 ? TXMQ_ENOSPC : TXMQ_EIO, a.status);
    assert_true(diag_has(log, what == 0 ? "write" : "fdatasync"));
    assert_rc(TXMQ_EFAILED, append1(log, 10, 3, &p, NULL));
    assert_rc(TXMQ_EFAILED, txmq_log_flush(log, NULL, NULL));
    /* What was durable before stays readable. */
    check_rec(log, 0, 10, 1);
    close_log(&loop, log);
  }
  tu_rmrf(dir);
  free(dir);
  tu_loop_close_clean(&loop);
}

/* Fixtures (tests/fixtures/log, made by gen.py). */

static void fixture_good(void** state) {
  (void)state;
  uv_loop_t loop;
  uv_loop_init(&loop);
  char* dir = fixture("good");
  txmq_log_t* log;
  assert_rc(0, open_log(&log, &loop, dir, END_OPTS));
  assert_string_equal(txmq_log_diag(log), "");
  assert_int_equal(txmq_log_segment_count(log), 2);
  assert_int_equal(txmq_log_segment_base(log, 1), 42);
  assert_int_equal(txmq_log_end(log), 120);
  check_str(log, 0, "one");
  check_str(log, 15, "two");
  check_str(log, 30, "");
  check_str(log, 42, "threethreethreethreethreethreethreethreethreethree");
  check_str(log, 104, "four");
  uint64_t p;
  assert_rc(0, append_str(log, "five", &p));
  assert_int_equal(p, 120);
  close_log(&loop, log);
  assert_int_equal(seg_size(dir, 42), HDR + 120 - 42 + RHDR + 4);
  tu_rmrf(dir);
  free(dir);
  tu_loop_close_clean(&loop);
}

static void fixture_torn_tails(void** state) {
  (void)state;
  static const struct {
    const char* name;
    uint64_t torn;
    const char* why;
  } cases[] = {{"torn_tail", 23, "past the end"},
               {"bad_crc_tail", 19, "crc"}};
  uv_loop_t loop;
  uv_loop_init(&loop);
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char* dir = fixture(cases[i].name);
    txmq_log_t* log;
    assert_rc(0, open_log(&log, &loop, dir, TXMQ_LOG_OPT_ZERO_AHEAD,
                          (int64_t)0, END_OPTS));
    assert_int_equal(txmq_log_torn_bytes(log), cases[i].torn);
    assert_true(diag_has(log, "torn tail"));
    assert_true(diag_has(log, cases[i].why));
    assert_rc(TXMQ_ENOTFOUND, txmq_log_corruption(log, NULL, NULL));
    assert_int_equal(txmq_log_end(log), 34);
    assert_int_equal(seg_size(dir, 0), HDR + 34);
    check_str(log, 0, "alpha");
    check_str(log, 17, "bravo");
    uint64_t p;
    assert_rc(0, append_str(log, "again", &p));
    assert_int_equal(p, 34);
    close_log(&loop, log);
    tu_rmrf(dir);
    free(dir);
  }
  tu_loop_close_clean(&loop);
}

/* Zeros after the newest segment's last record are room the writer
 * filled ahead (sync always), not a torn write: nothing is cut, appends
 * go over them, and they survive a reopen. */
static void fixture_zero_tail_is_room(void** state) {
  (void)state;
  uv_loop_t loop;
  uv_loop_init(&loop);
  char* dir = fixture("zero_tail");
  assert_int_equal(seg_size(dir, 0), HDR + 34 + 512);
  txmq_log_t* log;
  assert_rc(0, open_log(&log, &loop, dir, END_OPTS));
  assert_int_equal(txmq_log_torn_bytes(log), 0);
  assert_string_equal(txmq_log_diag(log), "");
  assert_int_equal(txmq_log_end(log), 34);
  check_str(log, 0, "alpha");
  check_str(log, 17, "bravo");
  uint64_t p;
  assert_rc(0, append_str(log, "again", &p));
  assert_int_equal(p, 34);
  close_log(&loop, log);
  /* a clean close cuts the zeros after the last record */
  assert_int_equal(seg_size(dir, 0), HDR + 34 + RHDR + 5);
  assert_rc(0, open_log(&log, &loop, dir, END_OPTS));
  assert_string_equal(txmq_log_diag(log), "");
  assert_int_equal(txmq_log_end(log), 34 + RHDR + 5);
  check_str(log, 34, "again");
  close_log(&loop, log);
  tu_rmrf(dir);
  free(dir);
  tu_loop_close_clean(&loop);
}

static void fixture_corruption(void** state) {
  (void)state;
  static const struct {
    const char* name;
    uint64_t seg;
    uint64_t pos;
    const char* why;
    size_t segs_after_cut;
  } cases[] = {{"bitflip_mid", 0, 17, "crc", 1},
               {"bad_segment_header", 104, 104, "header crc", 1},
               {"missing_segment", 104, 104, "missing", 1}};
  uv_loop_t loop;
  uv_loop_init(&loop);
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char* dir = fixture(cases[i].name);
    txmq_log_t* log;
    assert_rc(TXMQ_ECORRUPT, open_log(&log, &loop, dir, END_OPTS));
    uint64_t sb, cp;
    assert_rc(0, txmq_log_corruption(log, &sb, &cp));
    assert_int_equal(sb, cases[i].seg);
    assert_int_equal(cp, cases[i].pos);
    assert_true(diag_has(log, cases[i].why));
    txmq_log_free(log);
    /* Read-only recovery reads everything before it. */
    assert_rc(0, open_log(&log, &loop, dir, TXMQ_LOG_OPT_RECOVER,
                          (int64_t)TXMQ_LOG_RECOVER_READONLY, END_OPTS));
    assert_int_equal(txmq_log_end(log), cases[i].pos);
    txmq_log_iter_t* it;
    txmq_log_entry_t e;
    assert_rc(0, txmq_log_iter_new(log, 0, UINT64_MAX, &it));
    uint64_t at = 0;
    while (txmq_log_iter_next(it, &e) == 0) at = e.next;
    assert_int_equal(at, cases[i].pos);
    txmq_log_iter_free(it);
    close_log(&loop, log);
    /* Truncate recovery cuts there and the log goes on from it. */
    assert_rc(0, open_log(&log, &loop, dir, TXMQ_LOG_OPT_RECOVER,
                          (int64_t)TXMQ_LOG_RECOVER_TRUNCATE, END_OPTS));
    assert_int_equal(txmq_log_end(log), cases[i].pos);
    assert_int_equal(txmq_log_segment_count(log), cases[i].segs_after_cut);
    uint64_t p;
    assert_rc(0, append_str(log, "after the cut", &p));
    assert_int_equal(p, cases[i].pos);
    close_log(&loop, log);
    assert_rc(0, open_log(&log, &loop, dir, END_OPTS));
    assert_string_equal(txmq_log_diag(log), "");
    check_str(log, cases[i].pos, "after the cut");
    close_log(&loop, log);
    tu_rmrf(dir);
    free(dir);
  }
  tu_loop_close_clean(&loop);
}

static void fixture_torn_creation(void** state) {
  (void)state;
  uv_loop_t loop;
  uv_loop_init(&loop);
  char* dir = fixture("torn_creation");
  txmq_log_t* log;
  assert_rc(0, open_log(&log, &loop, dir, END_OPTS));
  assert_true(diag_has(log, "00000000000000000034.log"));
  assert_true(diag_has(log, "header rewritten"));
  assert_int_equal(txmq_log_torn_bytes(log), 0);
  assert_int_equal(txmq_log_segment_count(log), 2);
  assert_int_equal(txmq_log_end(log), 34);
  assert_int_equal(seg_size(dir, 34), HDR);
  check_str(log, 17, "bravo");
  uint64_t p;
  assert_rc(0, append_str(log, "charlie", &p));
  assert_int_equal(p, 34);
  close_log(&loop, log);
  assert_int_equal(seg_size(dir, 34), HDR + RHDR + 7);
  tu_rmrf(dir);
  free(dir);
  tu_loop_close_clean(&loop);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(options_and_open_errors),
      cmocka_unit_test(roundtrip_sizes),
      cmocka_unit_test(tail_cache_reads),
      cmocka_unit_test(zero_fill_ahead),
      cmocka_unit_test(batches_contiguous),
      cmocka_unit_test(iterator_ranges),
      cmocka_unit_test(iterator_skip),
      cmocka_unit_test(sync_always_group_commit),
      cmocka_unit_test(sync_interval),
      cmocka_unit_test(sync_never_and_flush),
      cmocka_unit_test(reopen_after_clean_close),
      cmocka_unit_test(torn_tail_every_byte),
      cmocka_unit_test(bad_crc_in_last_record_is_cut),
      cmocka_unit_test(bitflip_middle_record),
      cmocka_unit_test(damaged_length_in_middle_is_corruption),
      cmocka_unit_test(bitflip_in_later_segment),
      cmocka_unit_test(idle_log_does_not_keep_loop_alive),
      cmocka_unit_test(segment_rolling),
      cmocka_unit_test_setup_teardown(more_segments_than_files, save_nofile,
                                      restore_nofile),
      cmocka_unit_test(damaged_or_missing_segments),
      cmocka_unit_test(torn_segment_creation),
      cmocka_unit_test(segment_name_beyond_positions),
      cmocka_unit_test(retention_by_size),
      cmocka_unit_test(retention_by_age),
      cmocka_unit_test(eagain_when_buffer_full),
      cmocka_unit_test(too_big_and_invalid_records),
      cmocka_unit_test(read_only_leaves_torn_tail),
      cmocka_unit_test(close_with_pending_appends),
      cmocka_unit_test(storage_failure),
      cmocka_unit_test(fixture_good),
      cmocka_unit_test(fixture_torn_tails),
      cmocka_unit_test(fixture_zero_tail_is_room),
      cmocka_unit_test(fixture_corruption),
      cmocka_unit_test(fixture_torn_creation),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
