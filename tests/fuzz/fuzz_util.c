/*
 * fuzz_util.c - see fuzz_util.h.
 */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fuzz_util.h"
#include "txmq/runtime.h"
#include "txmq/script.h"
#include "txmq/store.h"
#include "txmq/tx.h"

void fz_fail(const char* file, int line, const char* what) {
  fprintf(stderr, "fuzz harness: %s:%d: check failed: %s\n", file, line, what);
  abort();
}

char* fz_tmpdir(const char* tag) {
  const char* base = getenv("TMPDIR");
  if (base == NULL || *base == '\0') base = "/tmp";
  size_t n = strlen(base) + strlen(tag) + 32;
  char* p = malloc(n);
  FZ_CHECK(p != NULL);
  snprintf(p, n, "%s/txmq-fuzz-%s-XXXXXX", base, tag);
  FZ_CHECK(mkdtemp(p) != NULL);
  return p;
}

char* fz_path(const char* dir, const char* name) {
  size_t n = strlen(dir) + strlen(name) + 2;
  char* p = malloc(n);
  FZ_CHECK(p != NULL);
  snprintf(p, n, "%s/%s", dir, name);
  return p;
}

static void rmrf_at(const char* path) {
  struct stat st;
  if (lstat(path, &st) != 0) return;
  if (S_ISDIR(st.st_mode)) {
    DIR* d = opendir(path);
    if (d != NULL) {
      struct dirent* e;
      while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
          continue;
        char* child = fz_path(path, e->d_name);
        rmrf_at(child);
        free(child);
      }
      closedir(d);
    }
    rmdir(path);
  } else {
    unlink(path);
  }
}

void fz_rmrf(const char* path) {
  if (path != NULL) rmrf_at(path);
}

void fz_write_file(const char* path, const void* data, size_t len) {
  FILE* f = fopen(path, "wb");
  FZ_CHECK(f != NULL);
  FZ_CHECK(len == 0 || fwrite(data, 1, len, f) == len);
  FZ_CHECK(fclose(f) == 0);
}

static void on_deadline(uv_timer_t* t) {
  *(int*)t->data = 1;
}

int fz_run_until(uv_loop_t* loop, volatile int* flag, uint64_t timeout_ms) {
  uv_timer_t timer;
  int expired = 0;
  FZ_CHECK(uv_timer_init(loop, &timer) == 0);
  timer.data = &expired;
  uv_timer_start(&timer, on_deadline, timeout_ms, 0);
  while (!*flag && !expired) uv_run(loop, UV_RUN_ONCE);
  uv_timer_stop(&timer);
  uv_close((uv_handle_t*)&timer, NULL);
  uv_run(loop, UV_RUN_NOWAIT);
  return *flag;
}

static void walk_cb(uv_handle_t* h, void* arg) {
  (void)arg;
  fprintf(stderr, "fuzz harness: leaked handle: type %s, active %d\n",
          uv_handle_type_name(uv_handle_get_type(h)), uv_is_active(h));
}

void fz_loop_close(uv_loop_t* loop) {
  uv_run(loop, UV_RUN_DEFAULT);
  int rc = uv_loop_close(loop);
  if (rc != 0) uv_walk(loop, walk_cb, NULL);
  FZ_CHECK(rc == 0);
}

static int is_strish(const msgpack_object* o, const char** p, uint32_t* n) {
  if (o->type == MSGPACK_OBJECT_STR) {
    *p = o->via.str.ptr;
    *n = o->via.str.size;
    return 1;
  }
  if (o->type == MSGPACK_OBJECT_BIN) {
    *p = o->via.bin.ptr;
    *n = o->via.bin.size;
    return 1;
  }
  return 0;
}

int fz_obj_eq(const msgpack_object* a, const msgpack_object* b) {
  const char *ap, *bp;
  uint32_t an, bn;
  int as = is_strish(a, &ap, &an), bs = is_strish(b, &bp, &bn);
  if (as || bs) {
    return as && bs && an == bn && (an == 0 || memcmp(ap, bp, an) == 0);
  }
  int af = a->type == MSGPACK_OBJECT_FLOAT32 || a->type == MSGPACK_OBJECT_FLOAT64;
  int bf = b->type == MSGPACK_OBJECT_FLOAT32 || b->type == MSGPACK_OBJECT_FLOAT64;
  if (af || bf) {
    return af && bf &&
           memcmp(&a->via.f64, &b->via.f64, sizeof a->via.f64) == 0;
  }
  if (a->type != b->type) return 0;
  switch (a->type) {
    case MSGPACK_OBJECT_ARRAY:
      if (a->via.array.size != b->via.array.size) return 0;
      for (uint32_t i = 0; i < a->via.array.size; i++) {
        if (!fz_obj_eq(&a->via.array.ptr[i], &b->via.array.ptr[i])) return 0;
      }
      return 1;
    case MSGPACK_OBJECT_MAP:
      if (a->via.map.size != b->via.map.size) return 0;
      for (uint32_t i = 0; i < a->via.map.size; i++) {
        int found = 0;
        for (uint32_t k = 0; k < b->via.map.size && !found; k++) {
          found = fz_obj_eq(&a->via.map.ptr[i].key, &b->via.map.ptr[k].key) &&
                  fz_obj_eq(&a->via.map.ptr[i].val, &b->via.map.ptr[k].val);
        }
        if (!found) return 0;
      }
      return 1;
    default:
      return msgpack_object_equal(*a, *b);
  }
}

static int str_eq(const char* a, const char* b) {
  if (a == NULL || b == NULL) return a == b;
  return strcmp(a, b) == 0;
}

int fz_msg_eq(const txmq_msg_t* a, const txmq_msg_t* b) {
  size_t al, bl;
  const void* ab = txmq_msg_body(a, &al);
  const void* bb = txmq_msg_body(b, &bl);
  if (!str_eq(txmq_msg_topic(a), txmq_msg_topic(b)) ||
      !str_eq(txmq_msg_tags(a), txmq_msg_tags(b)) ||
      !str_eq(txmq_msg_keys(a), txmq_msg_keys(b)) || al != bl ||
      (al > 0 && memcmp(ab, bb, al) != 0) ||
      txmq_msg_born_ms(a) != txmq_msg_born_ms(b) ||
      txmq_msg_store_ms(a) != txmq_msg_store_ms(b) ||
      txmq_msg_queue_id(a) != txmq_msg_queue_id(b) ||
      txmq_msg_queue_offset(a) != txmq_msg_queue_offset(b) ||
      memcmp(txmq_msg_id(a), txmq_msg_id(b), TXMQ_MSG_ID_LEN) != 0 ||
      txmq_msg_prop_count(a) != txmq_msg_prop_count(b)) {
    return 0;
  }
  for (size_t i = 0; i < txmq_msg_prop_count(a); i++) {
    const char *k, *v;
    if (txmq_msg_prop_at(a, i, &k, &v) != 0) return 0;
    if (!str_eq(txmq_msg_prop_get(b, k), v)) return 0;
  }
  return 1;
}

static uint64_t fixed_mono(void* arg) {
  (void)arg;
  return 1000000;
}

static int64_t fixed_wall(void* arg) {
  (void)arg;
  return 1700000000000;
}

txmq_runtime_t* fz_runtime_fixed(uv_loop_t* loop, const char* data,
                                 const char* scripts) {
  txmq_runtime_t* rt = NULL;
  FZ_CHECK(txmq_runtime_new(&rt, loop, data, scripts) == 0);
  FZ_CHECK(txmq_store_set(txmq_runtime_store(rt), TXMQ_STORE_OPT_SYNC,
                          TXMQ_SYNC_NEVER) == 0);
  txmq_tx_t* tx = txmq_runtime_tx(rt);
  FZ_CHECK(txmq_tx_set(tx, TXMQ_TX_OPT_MANUAL_CLOCK, 1) == 0);
  txmq_tx_clock_t clk = {fixed_mono, fixed_wall, NULL};
  txmq_tx_set_clock(tx, &clk);
  FZ_CHECK(txmq_script_host_set(txmq_runtime_scripts(rt),
                                TXMQ_SCRIPT_OPT_WATCH, 0) == 0);
  return rt;
}
