/*
 * script_bench.c - what a handler decision costs through the script host's
 * worker pool, and the pause a hot reload causes under load.
 *
 *   bench=script op=execute|check workers=W calls=N us_per_call=X calls_per_s=Y
 *   bench=script_reload reloads=R calls=N max_pause_ms=P baseline_max_gap_ms=B
 *       failed_calls=F reload_failures=L max_file_write_ms=W
 *
 * Many calls are kept in flight from the loop (like a busy runtime), so the
 * figures are throughput of the pool, not the latency of one call.
 * max_pause_ms is the longest gap between two consecutive completions while
 * reloads run back to back; baseline_max_gap_ms is the same without reloads.
 * Each reload follows a rewrite of the script by this program, on the loop
 * thread: that write is an operator's doing, not the reload's, so its time
 * is left out of the gaps and printed on its own (max_file_write_ms; on a
 * disk busy with the benchmarks before, closing a rewritten file can wait
 * for the file system's journal for tens of milliseconds).
 * Prints figures, asserts nothing about speed. --smoke runs in a few seconds.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <uv.h>

#include "txmq/error.h"
#include "txmq/msg.h"
#include "txmq/script.h"

static const char* V1 =
    "function executeLocalTransaction(msg, arg)\n"
    "  if msg.topic ~= 'orders' then return txmq.UNKNOWN end\n"
    "  return txmq.COMMIT\n"
    "end\n"
    "function checkLocalTransaction(msg)\n"
    "  if msg.check_count > 100 then return txmq.ROLLBACK end\n"
    "  return 'COMMIT_MESSAGE'\n"
    "end\n";
static const char* V2 =
    "function executeLocalTransaction(msg, arg) return txmq.ROLLBACK end\n"
    "function checkLocalTransaction(msg) return txmq.ROLLBACK end\n";

static void die(const char* what, int rc) {
  fprintf(stderr, "script_bench: %s: %s\n", what, txmq_strerror(rc));
  exit(1);
}

static void write_file(const char* dir, const char* name, const char* s) {
  char path[512];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  FILE* f = fopen(path, "wb");
  if (f == NULL || fwrite(s, 1, strlen(s), f) != strlen(s) || fclose(f) != 0) {
    fprintf(stderr, "script_bench: cannot write %s\n", path);
    exit(1);
  }
}

typedef struct {
  uv_loop_t* loop;
  txmq_script_host_t* host;
  txmq_msg_t* msg;
  int check;
  long target_calls;   /* stop submitting after this many (0: until stop) */
  int in_flight_max;
  long submitted;
  long completed;
  long failed;
  int in_flight;
  int stop;
  uint64_t last_done_ns;
  uint64_t max_gap_ns;
  uint64_t max_write_ns; /* the longest rewrite of the script */
  int measure_gaps;
  /* reloads */
  int reloads_left;
  int reloads_done;
  int reload_failed;
  int next_v2;
  const char* dir;
} run_t;

static void submit(run_t* r);

static void on_call(txmq_script_host_t* host, int status,
                    txmq_script_result_t result, const char* version,
                    const char* diag, void* arg) {
  (void)host;
  (void)result;
  (void)version;
  run_t* r = arg;
  r->in_flight--;
  r->completed++;
  if (status != 0) {
    r->failed++;
    if (r->failed < 5) fprintf(stderr, "call failed: %s %s\n", txmq_err_name(status), diag);
  }
  uint64_t now = uv_hrtime();
  if (r->measure_gaps && r->last_done_ns != 0 && now - r->last_done_ns > r->max_gap_ns) {
    r->max_gap_ns = now - r->last_done_ns;
  }
  r->last_done_ns = now;
  submit(r);
}

static void submit(run_t* r) {
  const txmq_msg_t* msgs[1] = {r->msg};
  while (!r->stop && r->in_flight < r->in_flight_max &&
         (r->target_calls == 0 || r->submitted < r->target_calls)) {
    int rc = r->check
                 ? txmq_script_check(r->host, "bench", NULL, msgs, 1, 3, on_call, r)
                 : txmq_script_execute(r->host, "bench", NULL, msgs, 1, NULL, 0, on_call, r);
    if (rc != 0) die("submit", rc);
    r->in_flight++;
    r->submitted++;
  }
}

static void on_reload(txmq_script_host_t* host, int status, const char* group,
                      const char* version, const char* diag, void* arg) {
  (void)group;
  (void)version;
  run_t* r = arg;
  if (status != 0) {
    r->reload_failed++;
    fprintf(stderr, "reload failed: %s %s\n", txmq_err_name(status), diag);
  }
  r->reloads_done++;
  if (--r->reloads_left <= 0) {
    r->stop = 1;
    return;
  }
  r->next_v2 = !r->next_v2;
  uint64_t t0 = uv_hrtime();
  write_file(r->dir, "bench.lua", r->next_v2 ? V2 : V1);
  uint64_t took = uv_hrtime() - t0;
  if (took > r->max_write_ns) r->max_write_ns = took;
  /* Completions the write held back are not the reload's pause. */
  if (r->last_done_ns != 0) r->last_done_ns += took;
  int rc = txmq_script_reload(host, "bench", on_reload, r);
  if (rc != 0) die("reload", rc);
}

static void on_closed(txmq_script_host_t* host, void* arg) {
  (void)host;
  *(int*)arg = 1;
}

static txmq_script_host_t* open_host(uv_loop_t* loop, const char* dir, int workers) {
  txmq_script_host_t* h;
  int rc = txmq_script_host_new(&h, loop, dir);
  if (rc != 0) die("host_new", rc);
  txmq_script_host_set(h, TXMQ_SCRIPT_OPT_WORKERS, workers);
  txmq_script_host_set(h, TXMQ_SCRIPT_OPT_STATES_PER_GROUP, workers);
  txmq_script_host_set(h, TXMQ_SCRIPT_OPT_WATCH, 0);
  if ((rc = txmq_script_host_start(h)) != 0) die("host_start", rc);
  return h;
}

static void close_host(uv_loop_t* loop, txmq_script_host_t* h) {
  int closed = 0;
  txmq_script_host_close(h, on_closed, &closed);
  while (!closed) uv_run(loop, UV_RUN_ONCE);
  txmq_script_host_free(h);
}

static void run_until_done(uv_loop_t* loop, run_t* r) {
  while (r->in_flight > 0 || (!r->stop && (r->target_calls == 0 ||
                                           r->completed < r->target_calls))) {
    uv_run(loop, UV_RUN_ONCE);
  }
}

static void bench_calls(uv_loop_t* loop, const char* dir, txmq_msg_t* msg,
                        int workers, int check, long calls) {
  write_file(dir, "bench.lua", V1);
  txmq_script_host_t* h = open_host(loop, dir, workers);
  run_t r;
  memset(&r, 0, sizeof r);
  r.loop = loop;
  r.host = h;
  r.msg = msg;
  r.check = check;
  r.in_flight_max = 256;
  /* Warm up: load the group and fill the caches. */
  r.target_calls = 1000;
  submit(&r);
  run_until_done(loop, &r);
  r.submitted = r.completed = r.failed = 0;
  r.target_calls = calls;
  uint64_t t0 = uv_hrtime();
  submit(&r);
  run_until_done(loop, &r);
  double secs = (double)(uv_hrtime() - t0) / 1e9;
  printf("bench=script op=%s workers=%d calls=%ld us_per_call=%.2f calls_per_s=%.0f"
         " failed=%ld\n",
         check ? "check" : "execute", workers, r.completed,
         secs * 1e6 / (double)r.completed, (double)r.completed / secs, r.failed);
  fflush(stdout);
  close_host(loop, h);
}

static void bench_reload(uv_loop_t* loop, const char* dir, txmq_msg_t* msg,
                         int reloads, long baseline_calls) {
  write_file(dir, "bench.lua", V1);
  txmq_script_host_t* h = open_host(loop, dir, 2);
  run_t r;
  memset(&r, 0, sizeof r);
  r.loop = loop;
  r.host = h;
  r.msg = msg;
  r.in_flight_max = 256;
  r.dir = dir;
  r.target_calls = baseline_calls;
  r.measure_gaps = 1;
  submit(&r);
  run_until_done(loop, &r);
  uint64_t baseline = r.max_gap_ns;

  r.submitted = r.completed = r.failed = 0;
  r.target_calls = 0;
  r.max_gap_ns = 0;
  r.last_done_ns = 0;
  r.reloads_left = reloads;
  r.next_v2 = 1;
  submit(&r);
  write_file(dir, "bench.lua", V2);
  int rc = txmq_script_reload(h, "bench", on_reload, &r);
  if (rc != 0) die("reload", rc);
  run_until_done(loop, &r);
  printf("bench=script_reload reloads=%d calls=%ld max_pause_ms=%.2f "
         "baseline_max_gap_ms=%.2f failed_calls=%ld reload_failures=%d "
         "max_file_write_ms=%.2f\n",
         r.reloads_done, r.completed, (double)r.max_gap_ns / 1e6,
         (double)baseline / 1e6, r.failed, r.reload_failed,
         (double)r.max_write_ns / 1e6);
  fflush(stdout);
  close_host(loop, h);
}

int main(int argc, char** argv) {
  int smoke = argc > 1 && strcmp(argv[1], "--smoke") == 0;
  long calls = smoke ? 20000 : 400000;
  int reloads = smoke ? 10 : 100;
  char dir[] = "/tmp/txmq-script-bench-XXXXXX";
  if (mkdtemp(dir) == NULL) {
    perror("mkdtemp");
    return 1;
  }
  uv_loop_t loop;
  uv_loop_init(&loop);
  txmq_msg_t* msg = txmq_msg_new();
  txmq_msg_set_topic(msg, "orders");
  txmq_msg_set_body(msg, "{\"order\":42,\"amount\":1999}", 26);
  txmq_msg_prop_set(msg, "region", "eu-west");
  for (int workers = 1; workers <= 2; workers++) {
    bench_calls(&loop, dir, msg, workers, 0, calls);
    bench_calls(&loop, dir, msg, workers, 1, calls);
  }
  bench_reload(&loop, dir, msg, reloads, calls / 4);
  txmq_msg_free(msg);
  uv_run(&loop, UV_RUN_DEFAULT);
  uv_loop_close(&loop);
  char path[600];
  snprintf(path, sizeof path, "%s/bench.lua", dir);
  unlink(path);
  rmdir(dir);
  return 0;
}
