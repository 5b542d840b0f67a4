/*
 * restart_bench.c - how long a restart takes with a big data directory: N
 * stored plain messages and P pending (undecided) transactions. Prints
 * figures and asserts nothing about speed; it fails when the data directory
 * cannot be built, does not open, or does not hold after the restart what
 * was stored before it.
 *
 *   bench=restart_build  layout=L msgs=N pending=P records_per_s=R secs=S
 *   bench=restart        msgs=N pending=P layout=L cache=warm|cold
 *                        open_ms=..  store_open_ms=.. tx_start_ms=..
 *                        replayed=.. txmqd_ready_ms=.. txmqd_first_reply_ms=..
 *                        data_mb=.. (allocated on the disk, as du counts)
 *
 * The data directory is built in-process through the store and the
 * transaction engine (sync never, for speed): 256-byte bodies over four
 * topics, the pending transactions' halves over four producer groups, each
 * with a one-hour check immunity (so that no check is due while the figures
 * are taken: they are about recovery, not about a storm of overdue checks).
 * Two layouts:
 *   spread  the pending halves evenly among the messages, the first one
 *           near the start of the log (an undecided transaction from long
 *           ago that was never resolved);
 *   oldest  every pending half before every message: the worst case for a
 *           replay that starts from the oldest undecided half.
 * The directory is closed cleanly (final checkpoint), then timed:
 *   open_ms               in-process, the calls txmqd makes at start
 *                         (txmq_runtime_new + txmq_consumers_new,
 *                         txmq_runtime_open, txmq_consumers_start) with an
 *                         empty scripts folder;
 *   store_open_ms,        the same directory opened again part by part:
 *   tx_start_ms           txmq_store_open (log recovery, checkpoint,
 *                         replay) and txmq_tx_start (scheduling);
 *   txmqd_ready_ms        txmqd itself, from fork+exec to its "listening"
 *                         log line (what a user waits for);
 *   txmqd_first_reply_ms  from fork+exec to the answer of a ping on a new
 *                         connection (connect + hello + ping).
 * After each open the store must hold exactly N messages and the engine P
 * pending transactions. cache=warm (default): the log is in the page cache,
 * as after a quick restart; --cold first drops this directory's pages from
 * the page cache (posix_fadvise DONTNEED after fdatasync, nothing else's) so
 * that every open reads the disk.
 *
 *   restart_bench [--smoke] [--msgs N] [--pending P] [--layout spread|oldest|both]
 *                 [--dir BASE] [--keep] [--cold] [--txmqd PATH]
 *   restart_bench --reopen DIR [--cold] [--txmqd PATH]
 *
 * Defaults: N = 10,000,000, P = 1,000,000, both layouts (about 3.5 GB of
 * data each, built one after the other and removed unless --keep); BASE is
 * $TMPDIR, else /tmp. --smoke: N = 20,000, P = 2,000 (ctest, a few
 * seconds). --reopen times an existing directory (for profiling), counting
 * what it holds. txmqd is taken from the bin folder of this binary unless
 * --txmqd says otherwise.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <uv.h>

#include "txmq/client.h"
#include "txmq/consumer.h"
#include "txmq/error.h"
#include "txmq/msg.h"
#include "txmq/runtime.h"
#include "txmq/store.h"
#include "txmq/tx.h"

#define BODY 256
#define NTOPICS 4
#define NPGROUPS 4
#define WINDOW 4096               /* appends in flight while building */
#define IMMUNITY_MS 3600000       /* no check due while measuring */
#define BYTES_PER_RECORD_EST 400  /* on disk, for the free-space check */
#define TXMQD_START_TIMEOUT_MS 300000

enum { LAYOUT_SPREAD = 1, LAYOUT_OLDEST = 2 };

typedef struct {
  uint64_t msgs, pending;
  int layouts;            /* LAYOUT_* bits */
  const char* base;       /* where the data directories go */
  const char* reopen;     /* --reopen DIR */
  char txmqd[PATH_MAX];
  int keep, cold, smoke;
} opts_t;

/* What one timed restart found. */
typedef struct {
  double open_ms, store_open_ms, tx_start_ms, ready_ms, reply_ms, data_mb;
  uint64_t msgs, pending, replayed;
} result_t;

static void fail(const char* what, int rc) {
  fprintf(stderr, "restart_bench: %s: %s (%s)\n", what, txmq_strerror(rc),
          txmq_err_name(rc));
  exit(1);
}

static void fail_errno(const char* what, const char* path) {
  fprintf(stderr, "restart_bench: %s %s: %s\n", what, path, strerror(errno));
  exit(1);
}

static double now_ms(void) {
  return (double)uv_hrtime() / 1e6;
}

static const char* layout_name(int layout) {
  return layout == LAYOUT_OLDEST ? "oldest" : "spread";
}

/* ---- files ---- */

/* Calls fn for every entry under path, children before their directory. */
static int tree_walk(const char* path, int (*fn)(const char* p, const struct stat* sb,
                                                 void* arg),
                     void* arg) {
  struct stat sb;
  if (lstat(path, &sb) != 0) return -1;
  if (S_ISDIR(sb.st_mode)) {
    DIR* d = opendir(path);
    if (d == NULL) return -1;
    struct dirent* e;
    int rc = 0;
    while (rc == 0 && (e = readdir(d)) != NULL) {
      if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
      char child[PATH_MAX];
      if ((size_t)snprintf(child, sizeof child, "%s/%s", path, e->d_name) >=
          sizeof child) {
        rc = -1;
        break;
      }
      rc = tree_walk(child, fn, arg);
    }
    closedir(d);
    if (rc != 0) return rc;
  }
  return fn(path, &sb, arg);
}

static int remove_one(const char* p, const struct stat* sb, void* arg) {
  (void)sb;
  (void)arg;
  return remove(p);
}

static void rm_rf(const char* path) {
  if (tree_walk(path, remove_one, NULL) != 0 && errno != ENOENT)
    fprintf(stderr, "restart_bench: could not remove all of %s: %s\n", path,
            strerror(errno));
}

/* Bytes allocated on the disk (as du counts them: index files are sparse). */
static int add_size(const char* p, const struct stat* sb, void* arg) {
  (void)p;
  if (S_ISREG(sb->st_mode)) *(uint64_t*)arg += (uint64_t)sb->st_blocks * 512u;
  return 0;
}

static double dir_mb(const char* path) {
  uint64_t bytes = 0;
  if (tree_walk(path, add_size, &bytes) != 0) fail_errno("cannot read", path);
  return (double)bytes / (1024.0 * 1024.0);
}

/* Writes the file's dirty pages back, then drops its pages from the page
 * cache: the next read comes from the disk. Only this directory's files. */
static int evict_one(const char* p, const struct stat* sb, void* arg) {
  (void)arg;
  if (!S_ISREG(sb->st_mode)) return 0;
  int fd = open(p, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  int rc = fdatasync(fd);
  if (rc == 0) rc = posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED) == 0 ? 0 : -1;
  close(fd);
  return rc;
}

static void evict(const char* dir) {
  if (tree_walk(dir, evict_one, NULL) != 0)
    fail_errno("cannot drop the page cache of", dir);
}

static char* make_dir(const char* base, const char* tag) {
  char* p = malloc(PATH_MAX);
  if (p == NULL) fail("malloc", TXMQ_ENOMEM);
  snprintf(p, PATH_MAX, "%s/txmq-restart-%s-XXXXXX", base, tag);
  if (mkdtemp(p) == NULL) fail_errno("cannot create", p);
  return p;
}

/* ---- building the data directory ---- */

typedef struct {
  uv_loop_t* loop;
  txmq_store_t* st;
  txmq_tx_t* tx;
  char body[BODY];
  uint64_t issued, total, npending, done;
  int inflight;
} build_t;

static const char* const topics[NTOPICS] = {"orders", "payments", "shipments",
                                            "points"};
static const char* const groups[NPGROUPS] = {"order-svc", "pay-svc", "ship-svc",
                                            "points-svc"};

/* Record k of the build is a pending half (else a plain message). spread:
 * every (N+P)/P-th record, the first one at record 0; oldest: the first P. */
static int is_pending(const build_t* b, int layout, uint64_t k) {
  if (b->npending == 0) return 0;
  if (layout == LAYOUT_OLDEST) return k < b->npending;
  /* k is pending when floor(k*P/T) steps up between k-1 and k, or k = 0 */
  if (k == 0) return 1;
  return (k * b->npending) / b->total != ((k - 1) * b->npending) / b->total;
}

static void on_put(txmq_store_t* st, int status, const txmq_msg_t* m, void* arg) {
  (void)st;
  (void)m;
  build_t* b = arg;
  if (status != 0) fail("storing a message", status);
  b->inflight--;
  b->done++;
}

static void on_half(txmq_tx_t* tx, int status, const uint8_t* id,
                    const txmq_msg_t* const* msgs, size_t n, void* arg) {
  (void)tx;
  (void)id;
  (void)msgs;
  (void)n;
  build_t* b = arg;
  if (status != 0) fail("storing a half message", status);
  b->inflight--;
  b->done++;
}

/* Issues record k; TXMQ_EAGAIN when the log is full of unwritten data. */
static int issue(build_t* b, int layout, uint64_t k) {
  txmq_msg_t* m = txmq_msg_new();
  if (m == NULL) fail("txmq_msg_new", TXMQ_ENOMEM);
  int rc = txmq_msg_set_topic(m, topics[k % NTOPICS]);
  if (rc == 0) rc = txmq_msg_set_body(m, b->body, sizeof b->body);
  if (rc != 0) fail("building a message", rc);
  if (is_pending(b, layout, k)) {
    rc = txmq_tx_begin(b->tx, groups[k % NPGROUPS], "restart-bench", &m, 1,
                       IMMUNITY_MS, on_half, b);
  } else {
    rc = txmq_store_put(b->st, m, on_put, b);
  }
  txmq_msg_free(m);
  if (rc == 0) b->inflight++;
  return rc;
}

static void on_tx_closed(txmq_tx_t* tx, void* arg) {
  (void)tx;
  *(int*)arg = 1;
}

static void on_store_closed(txmq_store_t* st, int status, void* arg) {
  (void)st;
  if (status != 0) fail("closing the store", status);
  *(int*)arg = 1;
}

/* Opens a store and its engine on dir (NULL dir: already created). */
static void parts_open(uv_loop_t* loop, const char* dir, int sync,
                       txmq_store_t** st, txmq_tx_t** tx, double* store_ms,
                       double* tx_ms) {
  int rc = txmq_store_new(st, loop, dir);
  if (rc == 0) rc = txmq_store_set(*st, TXMQ_STORE_OPT_SYNC, sync);
  if (rc != 0) fail("txmq_store_new", rc);
  rc = txmq_tx_new(tx, loop, *st);
  if (rc != 0) fail("txmq_tx_new", rc);
  double t0 = now_ms();
  rc = txmq_store_open(*st);
  double t1 = now_ms();
  if (rc != 0) {
    fprintf(stderr, "restart_bench: opening %s: %s\n", dir, txmq_store_diag(*st));
    fail("txmq_store_open", rc);
  }
  rc = txmq_tx_start(*tx);
  double t2 = now_ms();
  if (rc != 0) fail("txmq_tx_start", rc);
  if (store_ms != NULL) *store_ms = t1 - t0;
  if (tx_ms != NULL) *tx_ms = t2 - t1;
}

static void parts_close(uv_loop_t* loop, txmq_store_t* st, txmq_tx_t* tx) {
  int done = 0;
  int rc = txmq_tx_close(tx, on_tx_closed, &done);
  if (rc != 0) fail("txmq_tx_close", rc);
  while (!done) uv_run(loop, UV_RUN_ONCE);
  done = 0;
  rc = txmq_store_close(st, on_store_closed, &done);
  if (rc != 0) fail("txmq_store_close", rc);
  while (!done) uv_run(loop, UV_RUN_ONCE);
  txmq_tx_free(tx);
  txmq_store_free(st);
}

static void build(const opts_t* o, const char* dir, int layout) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  build_t* b = calloc(1, sizeof *b);
  if (b == NULL) fail("calloc", TXMQ_ENOMEM);
  b->loop = &loop;
  b->npending = o->pending;
  b->total = o->msgs + o->pending;
  for (size_t i = 0; i < sizeof b->body; i++) b->body[i] = (char)('a' + i % 26);
  parts_open(&loop, dir, TXMQ_SYNC_NEVER, &b->st, &b->tx, NULL, NULL);

  double t0 = now_ms();
  while (b->issued < b->total) {
    int rc = issue(b, layout, b->issued);
    if (rc == TXMQ_EAGAIN) {
      if (b->inflight == 0) fail("the log refuses appends with none in flight", rc);
      uv_run(&loop, UV_RUN_ONCE);
      continue;
    }
    if (rc != 0) fail(is_pending(b, layout, b->issued) ? "txmq_tx_begin"
                                                       : "txmq_store_put", rc);
    b->issued++;
    if (b->inflight >= WINDOW) uv_run(&loop, UV_RUN_ONCE);
  }
  while (b->inflight > 0) uv_run(&loop, UV_RUN_ONCE);
  txmq_tx_metrics_t m;
  txmq_tx_metrics(b->tx, &m);
  if (m.pending != o->pending) {
    fprintf(stderr, "restart_bench: built %" PRIu64 " pending transactions, expected %"
            PRIu64 "\n", m.pending, o->pending);
    exit(1);
  }
  parts_close(&loop, b->st, b->tx);
  double secs = (now_ms() - t0) / 1000.0;
  /* The build leaves gigabytes of dirty pages: written back now, they do
   * not compete with the opens being timed. */
  int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0 || syncfs(dfd) != 0) fail_errno("syncfs", dir);
  close(dfd);
  if (uv_loop_close(&loop) != 0) fail("closing the loop: handles left open", TXMQ_EBUSY);
  printf("bench=restart_build layout=%s msgs=%" PRIu64 " pending=%" PRIu64
         " records_per_s=%.0f secs=%.1f\n",
         layout_name(layout), o->msgs, o->pending, (double)b->total / secs, secs);
  fflush(stdout);
  free(b);
}

/* ---- timing the open ---- */

static uint64_t count_msgs(txmq_store_t* st) {
  uint64_t n = 0;
  for (size_t i = 0; i < txmq_store_topic_count(st); i++) {
    const char* t = txmq_store_topic_name(st, i);
    int nq = txmq_store_topic_queues(st, t);
    for (int q = 0; q < nq; q++) {
      int64_t lo, hi;
      if (txmq_store_queue_range(st, t, q, &lo, &hi) == 0) n += (uint64_t)(hi - lo);
    }
  }
  return n;
}

typedef struct {
  int consumers_closed, runtime_closed;
} close_wait_t;

static void on_consumers_closed(txmq_consumers_t* cs, void* arg) {
  (void)cs;
  ((close_wait_t*)arg)->consumers_closed = 1;
}

static void on_runtime_closed(txmq_runtime_t* rt, void* arg) {
  (void)rt;
  ((close_wait_t*)arg)->runtime_closed = 1;
}

/* The start of txmqd without its server: runtime and consumer engine. */
static void time_runtime_open(const char* dir, const char* scripts, result_t* r) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  txmq_runtime_t* rt = NULL;
  txmq_consumers_t* cs = NULL;
  double t0 = now_ms();
  int rc = txmq_runtime_new(&rt, &loop, dir, scripts);
  if (rc == 0) rc = txmq_consumers_new(&cs, &loop, txmq_runtime_store(rt));
  if (rc != 0) fail("creating the runtime", rc);
  rc = txmq_runtime_open(rt);
  if (rc != 0) {
    fprintf(stderr, "restart_bench: opening %s: %s\n", dir, txmq_runtime_diag(rt));
    fail("txmq_runtime_open", rc);
  }
  rc = txmq_consumers_start(cs);
  r->open_ms = now_ms() - t0;
  if (rc != 0) fail("txmq_consumers_start", rc);
  txmq_tx_metrics_t m;
  txmq_tx_metrics(txmq_runtime_tx(rt), &m);
  r->pending = m.pending;
  r->msgs = count_msgs(txmq_runtime_store(rt));
  r->replayed = txmq_store_replayed(txmq_runtime_store(rt));

  close_wait_t w = {0, 0};
  rc = txmq_consumers_close(cs, on_consumers_closed, &w);
  if (rc != 0) fail("txmq_consumers_close", rc);
  while (!w.consumers_closed) uv_run(&loop, UV_RUN_ONCE);
  rc = txmq_runtime_close(rt, on_runtime_closed, &w);
  if (rc != 0) fail("txmq_runtime_close", rc);
  while (!w.runtime_closed) uv_run(&loop, UV_RUN_ONCE);
  if (txmq_runtime_diag(rt)[0] != '\0') {
    fprintf(stderr, "restart_bench: closing %s: %s\n", dir, txmq_runtime_diag(rt));
    exit(1);
  }
  txmq_runtime_free(rt);
  txmq_consumers_free(cs);
  uv_run(&loop, UV_RUN_DEFAULT);
  if (uv_loop_close(&loop) != 0) fail("closing the loop: handles left open", TXMQ_EBUSY);
}

static void time_parts_open(const char* dir, result_t* r) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  txmq_store_t* st;
  txmq_tx_t* tx;
  parts_open(&loop, dir, TXMQ_SYNC_ALWAYS, &st, &tx, &r->store_open_ms, &r->tx_start_ms);
  parts_close(&loop, st, tx);
  if (uv_loop_close(&loop) != 0) fail("closing the loop: handles left open", TXMQ_EBUSY);
}

/* ---- timing txmqd ---- */

typedef struct {
  char buf[65536]; /* its log, kept to show on failure */
  size_t len;
  int fd;          /* read end of its stderr, -1 at EOF */
} child_log_t;

/* Reads what is there (waiting at most wait_ms); 0 at EOF. */
static int child_log_read(child_log_t* l, int wait_ms) {
  if (l->fd < 0) return 0;
  struct pollfd p = {l->fd, POLLIN, 0};
  int n = poll(&p, 1, wait_ms);
  if (n <= 0) return 1;
  char tmp[4096];
  ssize_t got = read(l->fd, tmp, sizeof tmp);
  if (got <= 0) {
    close(l->fd);
    l->fd = -1;
    return 0;
  }
  size_t room = sizeof l->buf - 1 - l->len;
  size_t k = (size_t)got < room ? (size_t)got : room;
  memcpy(l->buf + l->len, tmp, k);
  l->len += k;
  l->buf[l->len] = '\0';
  return 1;
}

static void show_log(const child_log_t* l) {
  fprintf(stderr, "restart_bench: txmqd's log:\n%s\n", l->buf);
}

/* Starts txmqd on dir and times it to its "listening" line and to the
 * answer of a ping; stops it with SIGTERM (exit status 0 expected). */
static void time_txmqd(const opts_t* o, const char* dir, const char* scripts,
                       result_t* r) {
  child_log_t* l = calloc(1, sizeof *l);
  if (l == NULL) fail("calloc", TXMQ_ENOMEM);
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) fail_errno("pipe", "");
  double t0 = now_ms();
  pid_t pid = fork();
  if (pid < 0) fail_errno("fork", "");
  if (pid == 0) {
    dup2(fds[1], 2);
    execl(o->txmqd, o->txmqd, "--listen", "127.0.0.1:0", "--data", dir,
          "--scripts", scripts, "--log-level", "info", (char*)NULL);
    fprintf(stderr, "exec %s: %s\n", o->txmqd, strerror(errno));
    _exit(127);
  }
  close(fds[1]);
  l->fd = fds[0];
  const char* key = "msg=\"listening\" addr=127.0.0.1:";
  char port[16] = "";
  while (port[0] == '\0') {
    if (now_ms() - t0 > TXMQD_START_TIMEOUT_MS) {
      kill(pid, SIGKILL);
      waitpid(pid, NULL, 0);
      show_log(l);
      fprintf(stderr, "restart_bench: txmqd did not listen within %d s\n",
              TXMQD_START_TIMEOUT_MS / 1000);
      exit(1);
    }
    if (!child_log_read(l, 100)) {
      waitpid(pid, NULL, 0);
      show_log(l);
      fprintf(stderr, "restart_bench: txmqd exited before it listened\n");
      exit(1);
    }
    const char* a = strstr(l->buf, key);
    if (a != NULL) {
      a += strlen(key);
      size_t n = strspn(a, "0123456789");
      if (n > 0 && n < sizeof port && a[n] != '\0') {
        memcpy(port, a, n);
        port[n] = '\0';
      }
    }
  }
  r->ready_ms = now_ms() - t0;

  txmq_client_options_t co;
  memset(&co, 0, sizeof co);
  co.client_id = "restart-bench";
  co.role = TXMQ_ROLE_ADMIN;
  co.request_timeout_ms = 120000;
  txmq_sync_client_t* s = NULL;
  char addr[64];
  snprintf(addr, sizeof addr, "127.0.0.1:%s", port);
  int rc = txmq_sync_new(&s, &co);
  if (rc == 0) rc = txmq_sync_connect(s, addr);
  txmq_reply_t* rep = NULL;
  if (rc == 0) rc = txmq_sync_call(s, "ping", NULL, 0, &rep);
  r->reply_ms = now_ms() - t0;
  if (rc != 0) {
    fprintf(stderr, "restart_bench: ping of txmqd: %s (%s)\n", txmq_err_name(rc),
            s != NULL ? txmq_sync_diag(s) : "");
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    show_log(l);
    exit(1);
  }
  txmq_reply_free(rep);
  txmq_sync_free(s);

  kill(pid, SIGTERM);
  int st = 0;
  double t1 = now_ms();
  for (;;) {
    pid_t w = waitpid(pid, &st, WNOHANG);
    if (w == pid) break;
    if (now_ms() - t1 > TXMQD_START_TIMEOUT_MS) {
      kill(pid, SIGKILL);
      waitpid(pid, NULL, 0);
      show_log(l);
      fprintf(stderr, "restart_bench: txmqd did not stop after SIGTERM\n");
      exit(1);
    }
    if (!child_log_read(l, 50)) { /* EOF: it is about to exit */
      struct timespec ts = {0, 5000000};
      nanosleep(&ts, NULL);
    }
  }
  while (child_log_read(l, 0)) {
  }
  if (l->fd >= 0) close(l->fd);
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
    show_log(l);
    fprintf(stderr, "restart_bench: txmqd did not exit cleanly (status %d)\n", st);
    exit(1);
  }
  free(l);
}

/* ---- one restart ---- */

static void check_counts(const char* what, const result_t* r, uint64_t msgs,
                         uint64_t pending) {
  if (r->msgs == msgs && r->pending == pending) return;
  fprintf(stderr, "restart_bench: after the %s restart the store holds %" PRIu64
          " messages and %" PRIu64 " pending transactions, expected %" PRIu64
          " and %" PRIu64 "\n", what, r->msgs, r->pending, msgs, pending);
  exit(1);
}

static void measure(const opts_t* o, const char* dir, const char* layout,
                    int known, uint64_t msgs, uint64_t pending) {
  char scripts[PATH_MAX];
  snprintf(scripts, sizeof scripts, "%s/txmq-restart-scripts-XXXXXX", o->base);
  if (mkdtemp(scripts) == NULL) fail_errno("cannot create", scripts);
  result_t r;
  memset(&r, 0, sizeof r);
  r.data_mb = dir_mb(dir);

  if (o->cold) evict(dir);
  time_runtime_open(dir, scripts, &r);
  if (known) check_counts("in-process", &r, msgs, pending);
  msgs = r.msgs;
  pending = r.pending;
  result_t p;
  memset(&p, 0, sizeof p);
  if (o->cold) evict(dir);
  time_parts_open(dir, &p);
  r.store_open_ms = p.store_open_ms;
  r.tx_start_ms = p.tx_start_ms;
  if (o->cold) evict(dir);
  time_txmqd(o, dir, scripts, &r);
  rm_rf(scripts);

  printf("bench=restart msgs=%" PRIu64 " pending=%" PRIu64 " layout=%s cache=%s"
         " open_ms=%.0f store_open_ms=%.0f tx_start_ms=%.0f replayed=%" PRIu64
         " txmqd_ready_ms=%.0f txmqd_first_reply_ms=%.0f data_mb=%.0f\n",
         msgs, pending, layout, o->cold ? "cold" : "warm", r.open_ms,
         r.store_open_ms, r.tx_start_ms, r.replayed, r.ready_ms, r.reply_ms,
         r.data_mb);
  fflush(stdout);
}

static void check_room(const opts_t* o) {
  struct statvfs vs;
  if (statvfs(o->base, &vs) != 0) fail_errno("statvfs", o->base);
  double have = (double)vs.f_bavail * (double)vs.f_frsize;
  double need = (double)(o->msgs + o->pending) * BYTES_PER_RECORD_EST * 1.2;
  if (o->keep && o->layouts == (LAYOUT_SPREAD | LAYOUT_OLDEST)) need *= 2;
  if (have < need) {
    fprintf(stderr, "restart_bench: %s has %.0f MB free, the data directory needs"
            " about %.0f MB (choose another disk with --dir, or fewer --msgs)\n",
            o->base, have / 1048576.0, need / 1048576.0);
    exit(1);
  }
}

static void usage(void) {
  fprintf(stderr,
          "usage: restart_bench [--smoke] [--msgs N] [--pending P]\n"
          "                     [--layout spread|oldest|both] [--dir BASE] [--keep]\n"
          "                     [--cold] [--txmqd PATH]\n"
          "       restart_bench --reopen DIR [--cold] [--txmqd PATH]\n");
  exit(2);
}

static uint64_t parse_count(const char* s) {
  char* end;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 10);
  if (errno != 0 || end == s || *end != '\0') usage();
  return (uint64_t)v;
}

int main(int argc, char** argv) {
  signal(SIGPIPE, SIG_IGN);
  opts_t o;
  memset(&o, 0, sizeof o);
  o.msgs = 10000000;
  o.pending = 1000000;
  o.layouts = LAYOUT_SPREAD | LAYOUT_OLDEST;
  int set_msgs = 0, set_pending = 0;
  for (int k = 1; k < argc; k++) {
    const char* a = argv[k];
    int more = k + 1 < argc;
    if (strcmp(a, "--smoke") == 0) o.smoke = 1;
    else if (strcmp(a, "--keep") == 0) o.keep = 1;
    else if (strcmp(a, "--cold") == 0) o.cold = 1;
    else if (strcmp(a, "--msgs") == 0 && more) {
      o.msgs = parse_count(argv[++k]);
      set_msgs = 1;
    } else if (strcmp(a, "--pending") == 0 && more) {
      o.pending = parse_count(argv[++k]);
      set_pending = 1;
    } else if (strcmp(a, "--layout") == 0 && more) {
      const char* v = argv[++k];
      if (strcmp(v, "spread") == 0) o.layouts = LAYOUT_SPREAD;
      else if (strcmp(v, "oldest") == 0) o.layouts = LAYOUT_OLDEST;
      else if (strcmp(v, "both") == 0) o.layouts = LAYOUT_SPREAD | LAYOUT_OLDEST;
      else usage();
    } else if (strcmp(a, "--dir") == 0 && more) o.base = argv[++k];
    else if (strcmp(a, "--reopen") == 0 && more) o.reopen = argv[++k];
    else if (strcmp(a, "--txmqd") == 0 && more) {
      snprintf(o.txmqd, sizeof o.txmqd, "%s", argv[++k]);
    } else usage();
  }
  if (o.smoke) {
    if (!set_msgs) o.msgs = 20000;
    if (!set_pending) o.pending = 2000;
  }
  if (o.base == NULL) o.base = getenv("TMPDIR");
  if (o.base == NULL || *o.base == '\0') o.base = "/tmp";
  if (o.txmqd[0] == '\0') {
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0) fail_errno("readlink", "/proc/self/exe");
    self[n] = '\0';
    snprintf(o.txmqd, sizeof o.txmqd, "%s/txmqd", dirname(self));
  }
  if (access(o.txmqd, X_OK) != 0) {
    fprintf(stderr, "restart_bench: %s is not built (or pass --txmqd PATH)\n", o.txmqd);
    return 1;
  }

  if (o.reopen != NULL) {
    measure(&o, o.reopen, "unknown", 0, 0, 0);
    return 0;
  }
  if (o.pending > o.msgs + o.pending || o.msgs + o.pending == 0) usage();
  check_room(&o);
  printf("# restart_bench %s: %" PRIu64 " messages, %" PRIu64
         " pending transactions, %d-byte bodies, data under %s\n",
         o.smoke ? "smoke" : "full", o.msgs, o.pending, BODY, o.base);
  fflush(stdout);
  const int layouts[] = {LAYOUT_SPREAD, LAYOUT_OLDEST};
  for (size_t i = 0; i < 2; i++) {
    if (!(o.layouts & layouts[i])) continue;
    char* dir = make_dir(o.base, layout_name(layouts[i]));
    build(&o, dir, layouts[i]);
    measure(&o, dir, layout_name(layouts[i]), 1, o.msgs, o.pending);
    if (o.keep) {
      printf("# kept %s\n", dir);
    } else {
      rm_rf(dir);
    }
    free(dir);
  }
  return 0;
}
