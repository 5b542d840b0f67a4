/*
 * test_script_events.c - what the Lua handler host (txmq/script.h) tells its
 * host program: its log lines, through the host's own logger
 * (txmq_script_set_log_cb) or on standard error in the default format, and
 * every load of a script (txmq_script_set_loaded_cb) - first loads,
 * explicit reloads, reloads by the file watch, failed ones - once each, on
 * the loop thread. Standard error is captured (fd 2 onto a file) to prove
 * what reaches it.
 */
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <uv.h>

#include "testutil.h"
#include "txmq/error.h"
#include "txmq/msg.h"
#include "txmq/script.h"

/* ---- fixture ------------------------------------------------------------ */

typedef struct {
  uv_loop_t loop;
  txmq_script_host_t* host;
  char* dir;
  volatile int closed;
} fx_t;

static void fx_new(fx_t* f, int watch) {
  memset(f, 0, sizeof *f);
  assert_int_equal(uv_loop_init(&f->loop), 0);
  f->dir = tu_tmpdir("script-events");
  assert_int_equal(txmq_script_host_new(&f->host, &f->loop, f->dir), 0);
  assert_int_equal(txmq_script_host_set(f->host, TXMQ_SCRIPT_OPT_WATCH, watch), 0);
  assert_int_equal(txmq_script_host_set(f->host, TXMQ_SCRIPT_OPT_WORKERS, 2), 0);
}

static void on_host_closed(txmq_script_host_t* host, void* arg) {
  (void)host;
  *(volatile int*)arg = 1;
}

static void fx_free(fx_t* f) {
  assert_int_equal(txmq_script_host_close(f->host, on_host_closed, (void*)&f->closed), 0);
  assert_true(tu_run_until(&f->loop, &f->closed, 20000));
  txmq_script_host_free(f->host);
  tu_loop_close_clean(&f->loop);
  tu_rmrf(f->dir);
  free(f->dir);
}

/* Runs the loop for about ms milliseconds. */
static void run_for(fx_t* f, int ms) {
  volatile int never = 0;
  tu_run_until(&f->loop, &never, ms);
}

static char* script_file(fx_t* f, const char* group) {
  char name[160];
  snprintf(name, sizeof name, "%s.lua", group);
  return tu_path(f->dir, name);
}

/* Writes the script in place. */
static void write_script(fx_t* f, const char* group, const char* src) {
  char* p = script_file(f, group);
  assert_int_equal(tu_write_file(p, src, strlen(src)), 0);
  free(p);
}

/* Writes the script as an editor saves it: a temporary file renamed over
 * it, so that the watch never sees it half-written. */
static void save_script(fx_t* f, const char* group, const char* src) {
  char* tmp = tu_path(f->dir, "save.tmp");
  char* dst = script_file(f, group);
  assert_int_equal(tu_write_file(tmp, src, strlen(src)), 0);
  assert_int_equal(rename(tmp, dst), 0);
  free(tmp);
  free(dst);
}

static void version_of(const char* src, char out[17]) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (const char* p = src; *p != '\0'; p++) {
    h ^= (uint8_t)*p;
    h *= 0x100000001b3ull;
  }
  snprintf(out, 17, "%016llx", (unsigned long long)h);
}

typedef struct {
  volatile int done;
  int status;
  int result;
  char version[32];
} res_t;

static void on_call(txmq_script_host_t* host, int status,
                    txmq_script_result_t result, const char* version,
                    const char* diag, void* arg) {
  (void)host;
  (void)diag;
  res_t* r = arg;
  r->status = status;
  r->result = (int)result;
  snprintf(r->version, sizeof r->version, "%s", version);
  r->done = 1;
}

static res_t exec_sync(fx_t* f, const char* group) {
  res_t r;
  memset(&r, 0, sizeof r);
  txmq_msg_t* m = txmq_msg_new();
  assert_non_null(m);
  assert_int_equal(txmq_msg_set_topic(m, "orders"), 0);
  const txmq_msg_t* msgs[1] = {m};
  assert_int_equal(txmq_script_execute(f->host, group, NULL, msgs, 1, NULL, 0,
                                       on_call, &r), 0);
  txmq_msg_free(m);
  assert_true(tu_run_until(&f->loop, &r.done, 20000));
  return r;
}

/* ---- the loaded callback ------------------------------------------------ */

#define MAX_EVENTS 16

typedef struct {
  int status;
  char group[64];
  char version[32];  /* "(null)" for NULL */
  char prev[32];
  char diag[600];
} event_t;

typedef struct {
  uv_thread_t loop_thread;
  event_t ev[MAX_EVENTS];
  volatile int n;
  int off_loop;      /* a call that was not on the loop thread */
} events_t;

static void on_loaded(txmq_script_host_t* host, int status, const char* group,
                      const char* version, const char* prev_version,
                      const char* diag, void* arg) {
  (void)host;
  events_t* e = arg;
  uv_thread_t self = uv_thread_self();
  if (!uv_thread_equal(&self, &e->loop_thread)) e->off_loop++;
  if (e->n == MAX_EVENTS) return;
  event_t* v = &e->ev[e->n];
  v->status = status;
  snprintf(v->group, sizeof v->group, "%s", group);
  snprintf(v->version, sizeof v->version, "%s", version != NULL ? version : "(null)");
  snprintf(v->prev, sizeof v->prev, "%s", prev_version != NULL ? prev_version : "(null)");
  snprintf(v->diag, sizeof v->diag, "%s", diag);
  e->n++;
}

static void events_init(events_t* e) {
  memset(e, 0, sizeof *e);
  e->loop_thread = uv_thread_self();
}

/* Runs the loop until there are n events (or 20 s pass). */
static void wait_events(fx_t* f, events_t* e, int n) {
  for (int i = 0; i < 2000 && e->n < n; i++) run_for(f, 10);
  if (e->n < n) fail_msg("%d loaded event(s), want %d", e->n, n);
}

static void expect_event(const events_t* e, int i, int status,
                         const char* group, const char* version,
                         const char* prev) {
  if (i >= e->n) fail_msg("event %d missing: only %d", i, e->n);
  const event_t* v = &e->ev[i];
  if (v->status != status || strcmp(v->group, group) != 0 ||
      strcmp(v->version, version) != 0 || strcmp(v->prev, prev) != 0) {
    fail_msg("event %d: status %s group %s version %s prev %s (diag %s); "
             "want %s %s %s %s", i, txmq_err_name(v->status), v->group,
             v->version, v->prev, v->diag, txmq_err_name(status), group,
             version, prev);
  }
  if (status == 0) assert_string_equal(v->diag, "");
}

typedef struct {
  volatile int done;
  int status;
  events_t* events;  /* if set: how many loaded events had come before */
  int events_before;
} reload_res_t;

static void on_reload(txmq_script_host_t* host, int status, const char* group,
                      const char* version, const char* diag, void* arg) {
  (void)host;
  (void)group;
  (void)version;
  (void)diag;
  reload_res_t* r = arg;
  r->status = status;
  if (r->events != NULL) r->events_before = r->events->n;
  r->done = 1;
}

static reload_res_t reload_sync_ev(fx_t* f, const char* group, events_t* e) {
  reload_res_t r;
  memset(&r, 0, sizeof r);
  r.events = e;
  assert_int_equal(txmq_script_reload(f->host, group, on_reload, &r), 0);
  assert_true(tu_run_until(&f->loop, &r.done, 20000));
  return r;
}

static int reload_sync(fx_t* f, const char* group) {
  return reload_sync_ev(f, group, NULL).status;
}

/* ---- standard error, captured ------------------------------------------- */

typedef struct {
  int saved;
  char* dir;
  char* path;
} capture_t;

static void capture_start(capture_t* c) {
  c->dir = tu_tmpdir("script-events-stderr");
  c->path = tu_path(c->dir, "stderr");
  fflush(stderr);
  int fd = open(c->path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
  assert_true(fd >= 0);
  c->saved = dup(2);
  assert_true(c->saved >= 0);
  assert_true(dup2(fd, 2) == 2);
  close(fd);
}

/* Puts fd 2 back; returns what was written to it (caller frees). */
static char* capture_stop(capture_t* c) {
  fflush(stderr);
  assert_true(dup2(c->saved, 2) == 2);
  close(c->saved);
  size_t len = 0;
  uint8_t* buf = tu_read_file(c->path, &len);
  assert_non_null(buf);
  char* s = malloc(len + 1);
  assert_non_null(s);
  memcpy(s, buf, len);
  s[len] = '\0';
  free(buf);
  tu_rmrf(c->dir);
  free(c->dir);
  free(c->path);
  return s;
}

/* ---- the host's logger -------------------------------------------------- */

#define MAX_LINES 64

typedef struct {
  txmq_script_log_level_t level;
  char group[64];
  char version[32];
  char msg[1024];
} line_t;

/* Lines come from the loop and from the workers: under a mutex. */
typedef struct {
  uv_mutex_t mu;
  line_t lines[MAX_LINES];
  int n;
} log_t;

static void on_log(void* arg, txmq_script_log_level_t level, const char* group,
                   const char* version, const char* msg) {
  log_t* lg = arg;
  uv_mutex_lock(&lg->mu);
  if (lg->n < MAX_LINES) {
    line_t* l = &lg->lines[lg->n++];
    l->level = level;
    snprintf(l->group, sizeof l->group, "%s", group);
    snprintf(l->version, sizeof l->version, "%s", version);
    snprintf(l->msg, sizeof l->msg, "%s", msg);
  }
  uv_mutex_unlock(&lg->mu);
}

/* The first line from index *from on at level whose version is version
 * and whose msg contains needle; *from moves past it. Fails the test if
 * there is none. */
static const line_t* expect_line(log_t* lg, int* from,
                                 txmq_script_log_level_t level,
                                 const char* version, const char* needle) {
  uv_mutex_lock(&lg->mu);
  const line_t* hit = NULL;
  for (int i = *from; i < lg->n && hit == NULL; i++) {
    const line_t* l = &lg->lines[i];
    if (l->level == level && strcmp(l->version, version) == 0 &&
        strstr(l->msg, needle) != NULL) {
      hit = l;
      *from = i + 1;
    }
  }
  if (hit == NULL) {
    for (int i = 0; i < lg->n; i++) {
      printf("  line %d: %s group=%s version=%s msg=%s\n", i,
              txmq_script_log_level_name(lg->lines[i].level),
              lg->lines[i].group, lg->lines[i].version, lg->lines[i].msg);
    }
  }
  uv_mutex_unlock(&lg->mu);
  if (hit == NULL) {
    fail_msg("no %s line of version %s with '%s'",
             txmq_script_log_level_name(level), version, needle);
  }
  assert_string_equal(hit->group, "pay");
  return hit;
}

static const char* LOG_V1 =
    "txmq.log('v1 loading', 1)\n"
    "function executeLocalTransaction(msg, arg)\n"
    "  txmq.log_at('warn', 'careful with', msg.topic)\n"
    "  return txmq.COMMIT\n"
    "end\n";
static const char* LOG_V2 =
    "function executeLocalTransaction(msg, arg)\n"
    "  txmq.log_at('debug', 'v2 runs')\n"
    "  error('the ledger is down')\n"
    "end\n";
static const char* LOG_BROKEN =
    "function executeLocalTransaction(msg, arg)\n"
    "  return txmq.COMMIT\n"
    "-- no end\n";

static void log_cb_gets_every_line(void** state) {
  (void)state;
  log_t lg;
  memset(&lg, 0, sizeof lg);
  assert_int_equal(uv_mutex_init(&lg.mu), 0);
  char v1[17], v2[17], vb[17];
  version_of(LOG_V1, v1);
  version_of(LOG_V2, v2);
  version_of(LOG_BROKEN, vb);
  /* While standard error is captured, only act and keep the outcomes: a
   * failed assertion would say why on the captured fd. */
  capture_t cap;
  capture_start(&cap);
  fx_t f;
  fx_new(&f, 0);
  int set_before = txmq_script_set_log_cb(f.host, on_log, &lg);
  assert_int_equal(txmq_script_host_start(f.host), 0);
  int set_after = txmq_script_set_log_cb(f.host, NULL, NULL);
  char* path = script_file(&f, "pay");
  write_script(&f, "pay", LOG_V1);
  int rc_v1 = reload_sync(&f, "pay");
  res_t r1 = exec_sync(&f, "pay");
  write_script(&f, "pay", LOG_V2);
  int rc_v2 = reload_sync(&f, "pay");
  res_t r2 = exec_sync(&f, "pay");
  write_script(&f, "pay", LOG_BROKEN);
  int rc_broken = reload_sync(&f, "pay");
  char serving[32];
  snprintf(serving, sizeof serving, "%s", txmq_script_version(f.host, "pay"));
  fx_free(&f);
  char* err = capture_stop(&cap);

  assert_int_equal(set_before, 0);
  /* The workers read it: no change once they run. */
  assert_int_equal(set_after, TXMQ_EINVAL);
  assert_int_equal(rc_v1, 0);
  assert_int_equal(r1.status, 0);
  assert_int_equal(rc_v2, 0);
  assert_int_equal(r2.status, TXMQ_ESCRIPT);
  assert_int_not_equal(rc_broken, 0);
  assert_string_equal(serving, v2);
  /* The host's logger had them all: nothing went to standard error. */
  assert_string_equal(err, "");
  free(err);

  /* Loaded: the script's own top-level txmq.log (on a worker), then the
   * load (on the loop). */
  int at = 0;
  expect_line(&lg, &at, TXMQ_SCRIPT_LOG_INFO, v1, "v1 loading 1");
  const line_t* l = expect_line(&lg, &at, TXMQ_SCRIPT_LOG_INFO, v1, "loaded ");
  assert_non_null(strstr(l->msg, path));
  assert_null(strstr(l->msg, "replacing"));
  expect_line(&lg, &at, TXMQ_SCRIPT_LOG_WARN, v1, "careful with orders");
  /* Replaced. */
  l = expect_line(&lg, &at, TXMQ_SCRIPT_LOG_INFO, v2, "replacing ");
  assert_non_null(strstr(l->msg, path));
  assert_non_null(strstr(l->msg, v1));
  /* A handler's error names the script, its version and the line. */
  expect_line(&lg, &at, TXMQ_SCRIPT_LOG_DEBUG, v2, "v2 runs");
  l = expect_line(&lg, &at, TXMQ_SCRIPT_LOG_ERROR, v2, "the ledger is down");
  assert_non_null(strstr(l->msg, path));
  char where[64];
  snprintf(where, sizeof where, "version %s line 3:", v2);
  assert_non_null(strstr(l->msg, where));
  /* A broken edit: the compile error, then the refusal that keeps v2. */
  l = expect_line(&lg, &at, TXMQ_SCRIPT_LOG_ERROR, vb, "'end' expected");
  assert_non_null(strstr(l->msg, path));
  char keeping[64];
  snprintf(keeping, sizeof keeping, "load failed, keeping version %s", v2);
  expect_line(&lg, &at, TXMQ_SCRIPT_LOG_ERROR, vb, keeping);
  assert_int_equal(at, lg.n);
  free(path);
  uv_mutex_destroy(&lg.mu);
}

/* Without a logger (or after setting it back to NULL), the lines go to
 * standard error in the format txmqd and the tests have always read. */
static void default_log_is_stderr(void** state) {
  (void)state;
  log_t lg;
  memset(&lg, 0, sizeof lg);
  assert_int_equal(uv_mutex_init(&lg.mu), 0);
  capture_t cap;
  capture_start(&cap);
  fx_t f;
  fx_new(&f, 0);
  assert_int_equal(txmq_script_set_log_cb(f.host, on_log, &lg), 0);
  assert_int_equal(txmq_script_set_log_cb(f.host, NULL, NULL), 0);
  assert_int_equal(txmq_script_host_start(f.host), 0);
  char v1[17];
  version_of(LOG_V1, v1);
  char* path = script_file(&f, "pay");
  write_script(&f, "pay", LOG_V1);
  assert_int_equal(reload_sync(&f, "pay"), 0);
  fx_free(&f);
  char* err = capture_stop(&cap);
  assert_int_equal(lg.n, 0);
  char want[1024];
  snprintf(want, sizeof want,
           "txmq script group=pay version=%s level=info msg=v1 loading 1\n"
           "txmq script group=pay version=%s level=info msg=loaded %s\n",
           v1, v1, path);
  assert_string_equal(err, want);
  free(err);
  free(path);
  uv_mutex_destroy(&lg.mu);
}

static const char* V1 = "function executeLocalTransaction() return txmq.COMMIT end\n";
static const char* V2 = "function executeLocalTransaction() return txmq.ROLLBACK end\n";
static const char* BROKEN = "function executeLocalTransaction() return txmq.COMMIT\n";

static void loaded_on_first_load_and_reload(void** state) {
  (void)state;
  events_t e;
  events_init(&e);
  fx_t f;
  fx_new(&f, 0);
  assert_int_equal(txmq_script_set_loaded_cb(f.host, on_loaded, &e), 0);
  assert_int_equal(txmq_script_host_start(f.host), 0);
  char v1[17], v2[17], vb[17];
  version_of(V1, v1);
  version_of(V2, v2);
  version_of(BROKEN, vb);

  /* A first call loads the group: a first load, nothing before it. */
  write_script(&f, "pay", V1);
  res_t r = exec_sync(&f, "pay");
  assert_int_equal(r.status, 0);
  assert_int_equal(r.result, TXMQ_SCRIPT_COMMIT);
  assert_int_equal(e.n, 1);
  expect_event(&e, 0, 0, "pay", v1, "(null)");

  /* An explicit reload: the host is told before the caller. */
  write_script(&f, "pay", V2);
  reload_res_t rr = reload_sync_ev(&f, "pay", &e);
  assert_int_equal(rr.status, 0);
  assert_int_equal(rr.events_before, 2);
  expect_event(&e, 1, 0, "pay", v2, v1);

  /* The same bytes again: loaded again, the same version. */
  rr = reload_sync_ev(&f, "pay", &e);
  assert_int_equal(rr.status, 0);
  expect_event(&e, 2, 0, "pay", v2, v2);

  /* A broken version: its failure, and the version that keeps serving. */
  write_script(&f, "pay", BROKEN);
  rr = reload_sync_ev(&f, "pay", &e);
  assert_int_equal(rr.status, TXMQ_ESCRIPT);
  assert_int_equal(rr.events_before, 4);
  expect_event(&e, 3, TXMQ_ESCRIPT, "pay", vb, v2);
  assert_non_null(strstr(e.ev[3].diag, "pay.lua version"));
  assert_non_null(strstr(e.ev[3].diag, "line 2"));
  r = exec_sync(&f, "pay");
  assert_int_equal(r.status, 0);
  assert_int_equal(r.result, TXMQ_SCRIPT_ROLLBACK);
  assert_string_equal(r.version, v2);

  /* A group without a file: nothing was read, nothing serves. */
  assert_int_equal(reload_sync(&f, "nosuch"), TXMQ_ENOTFOUND);
  expect_event(&e, 4, TXMQ_ENOTFOUND, "nosuch", "(null)", "(null)");

  /* Off again. */
  assert_int_equal(txmq_script_set_loaded_cb(f.host, NULL, NULL), 0);
  write_script(&f, "pay", V1);
  assert_int_equal(reload_sync(&f, "pay"), 0);
  assert_int_equal(e.n, 5);
  assert_int_equal(e.off_loop, 0);
  fx_free(&f);
}

static void loaded_on_watch(void** state) {
  (void)state;
  events_t e;
  events_init(&e);
  fx_t f;
  fx_new(&f, 1);
  assert_int_equal(txmq_script_set_loaded_cb(f.host, on_loaded, &e), 0);
  assert_int_equal(txmq_script_host_start(f.host), 0);
  char v1[17], v2[17], vb[17];
  version_of(V1, v1);
  version_of(V2, v2);
  version_of(BROKEN, vb);
  write_script(&f, "pay", V1);
  assert_int_equal(reload_sync(&f, "pay"), 0);
  expect_event(&e, 0, 0, "pay", v1, "(null)");

  /* An edit: one event, however many file events the save made. */
  save_script(&f, "pay", V2);
  wait_events(&f, &e, 2);
  expect_event(&e, 1, 0, "pay", v2, v1);
  run_for(&f, 300);
  assert_int_equal(e.n, 2);
  res_t r = exec_sync(&f, "pay");
  assert_int_equal(r.result, TXMQ_SCRIPT_ROLLBACK);
  assert_string_equal(r.version, v2);

  /* A broken edit: reported as failed, and v2 keeps serving. */
  save_script(&f, "pay", BROKEN);
  wait_events(&f, &e, 3);
  expect_event(&e, 2, TXMQ_ESCRIPT, "pay", vb, v2);
  assert_non_null(strstr(e.ev[2].diag, "line 2"));
  assert_string_equal(txmq_script_version(f.host, "pay"), v2);
  r = exec_sync(&f, "pay");
  assert_int_equal(r.status, 0);
  assert_int_equal(r.result, TXMQ_SCRIPT_ROLLBACK);
  assert_string_equal(r.version, v2);

  /* Fixed. */
  save_script(&f, "pay", V1);
  wait_events(&f, &e, 4);
  expect_event(&e, 3, 0, "pay", v1, v2);

  /* Saved with the same bytes: nothing is loaded, nothing is said. */
  save_script(&f, "pay", V1);
  run_for(&f, 500);
  assert_int_equal(e.n, 4);
  assert_int_equal(e.off_loop, 0);
  fx_free(&f);
}

static void log_level_names(void** state) {
  (void)state;
  assert_string_equal(txmq_script_log_level_name(TXMQ_SCRIPT_LOG_DEBUG), "debug");
  assert_string_equal(txmq_script_log_level_name(TXMQ_SCRIPT_LOG_INFO), "info");
  assert_string_equal(txmq_script_log_level_name(TXMQ_SCRIPT_LOG_WARN), "warn");
  assert_string_equal(txmq_script_log_level_name(TXMQ_SCRIPT_LOG_ERROR), "error");
  assert_string_equal(txmq_script_log_level_name((txmq_script_log_level_t)42), "info");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(log_cb_gets_every_line),
      cmocka_unit_test(default_log_is_stderr),
      cmocka_unit_test(log_level_names),
      cmocka_unit_test(loaded_on_first_load_and_reload),
      cmocka_unit_test(loaded_on_watch),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
