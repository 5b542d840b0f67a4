/*
 * testutil.c - see testutil.h.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "testutil.h"

char* tu_tmpdir(const char* tag) {
  const char* base = getenv("TMPDIR");
  if (base == NULL || *base == '\0') base = "/tmp";
  size_t n = strlen(base) + strlen(tag) + 32;
  char* p = malloc(n);
  assert_non_null(p);
  snprintf(p, n, "%s/txmq-%s-XXXXXX", base, tag);
  assert_non_null(mkdtemp(p));
  return p;
}

static int rmrf_at(const char* path) {
  struct stat st;
  if (lstat(path, &st) != 0) return errno == ENOENT ? 0 : -1;
  if (S_ISDIR(st.st_mode)) {
    DIR* d = opendir(path);
    if (d == NULL) return -1;
    struct dirent* e;
    while ((e = readdir(d)) != NULL) {
      if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
      char* child = tu_path(path, e->d_name);
      rmrf_at(child);
      free(child);
    }
    closedir(d);
    return rmdir(path);
  }
  return unlink(path);
}

void tu_rmrf(const char* path) {
  if (path != NULL) rmrf_at(path);
}

char* tu_path(const char* dir, const char* name) {
  size_t n = strlen(dir) + strlen(name) + 2;
  char* p = malloc(n);
  assert_non_null(p);
  snprintf(p, n, "%s/%s", dir, name);
  return p;
}

uint8_t* tu_read_file(const char* path, size_t* len) {
  FILE* f = fopen(path, "rb");
  if (f == NULL) return NULL;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  uint8_t* buf = malloc(n > 0 ? (size_t)n : 1);
  if (buf == NULL || (n > 0 && fread(buf, 1, (size_t)n, f) != (size_t)n)) {
    free(buf);
    fclose(f);
    return NULL;
  }
  fclose(f);
  *len = (size_t)n;
  return buf;
}

int tu_write_file(const char* path, const void* data, size_t len) {
  FILE* f = fopen(path, "wb");
  if (f == NULL) return -1;
  int rc = (len == 0 || fwrite(data, 1, len, f) == len) ? 0 : -1;
  if (fclose(f) != 0) rc = -1;
  return rc;
}

long long tu_file_size(const char* path) {
  struct stat st;
  return stat(path, &st) == 0 ? (long long)st.st_size : -1;
}

int tu_truncate(const char* path, long long len) {
  return truncate(path, (off_t)len);
}

int tu_flip(const char* path, long long offset, uint8_t mask) {
  int fd = open(path, O_RDWR);
  if (fd < 0) return -1;
  uint8_t b;
  int rc = -1;
  if (pread(fd, &b, 1, (off_t)offset) == 1) {
    b ^= mask;
    if (pwrite(fd, &b, 1, (off_t)offset) == 1) rc = 0;
  }
  close(fd);
  return rc;
}

int tu_copy_tree(const char* src, const char* dst) {
  if (mkdir(dst, 0755) != 0 && errno != EEXIST) return -1;
  DIR* d = opendir(src);
  if (d == NULL) return -1;
  struct dirent* e;
  int rc = 0;
  while (rc == 0 && (e = readdir(d)) != NULL) {
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
    char* s = tu_path(src, e->d_name);
    char* t = tu_path(dst, e->d_name);
    struct stat st;
    if (stat(s, &st) != 0) rc = -1;
    else if (S_ISDIR(st.st_mode)) rc = tu_copy_tree(s, t);
    else {
      size_t len;
      uint8_t* buf = tu_read_file(s, &len);
      rc = buf != NULL ? tu_write_file(t, buf, len) : -1;
      free(buf);
    }
    free(s);
    free(t);
  }
  closedir(d);
  return rc;
}

static void on_deadline(uv_timer_t* t) {
  *(int*)t->data = 1;
}

int tu_run_until(uv_loop_t* loop, volatile int* flag, int timeout_ms) {
  uv_timer_t timer;
  int expired = 0;
  uv_timer_init(loop, &timer);
  timer.data = &expired;
  uv_timer_start(&timer, on_deadline, (uint64_t)timeout_ms, 0);
  while (!*flag && !expired) uv_run(loop, UV_RUN_ONCE);
  uv_timer_stop(&timer);
  uv_close((uv_handle_t*)&timer, NULL);
  uv_run(loop, UV_RUN_NOWAIT);
  return *flag;
}

static void walk_cb(uv_handle_t* h, void* arg) {
  (void)arg;
  fprintf(stderr, "leaked handle: type %s, active %d\n",
          uv_handle_type_name(uv_handle_get_type(h)), uv_is_active(h));
}

void tu_loop_close_clean(uv_loop_t* loop) {
  uv_run(loop, UV_RUN_DEFAULT);
  int rc = uv_loop_close(loop);
  if (rc != 0) uv_walk(loop, walk_cb, NULL);
  assert_int_equal(rc, 0);
}
