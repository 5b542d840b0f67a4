/* host.c - a program that embeds an installed libtxmq: appends a record to
 * a commit log in the directory given as argv[1], reads it back, and prints
 * "ok" (used by tests/integration/install.sh). */
#include <stdio.h>
#include <string.h>

#include <txmq/error.h>
#include <txmq/log.h>

static int done;

static void on_append(txmq_log_t* log, int status, uint64_t pos, void* arg) {
  (void)log;
  (void)pos;
  (void)arg;
  done = status == 0 ? 1 : -1;
}

static void on_close(txmq_log_t* log, void* arg) {
  (void)log;
  (void)arg;
}

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  uv_loop_t loop;
  uv_loop_init(&loop);
  txmq_log_t* log;
  int rc = txmq_log_new(&log, &loop, argv[1]);
  if (rc == 0) rc = txmq_log_open(log);
  if (rc != 0) {
    fprintf(stderr, "open: %s\n", txmq_strerror(rc));
    return 1;
  }
  txmq_log_rec_t rec = {1, "hello", 5};
  uint64_t pos;
  rc = txmq_log_append(log, &rec, 1, &pos, on_append, NULL);
  while (rc == 0 && done == 0) uv_run(&loop, UV_RUN_ONCE);
  txmq_log_entry_t e;
  if (rc == 0 && done == 1) rc = txmq_log_read(log, pos, &e);
  int ok = rc == 0 && done == 1 && e.len == 5 && memcmp(e.data, "hello", 5) == 0;
  txmq_log_close(log, on_close, NULL);
  uv_run(&loop, UV_RUN_DEFAULT);
  txmq_log_free(log);
  uv_loop_close(&loop);
  puts(ok ? "ok" : "FAILED");
  return ok ? 0 : 1;
}
