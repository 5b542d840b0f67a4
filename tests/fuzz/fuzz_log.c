/*
 * fuzz_log.c - libFuzzer target for the commit log's reader: opening a log
 * directory of arbitrary segment files (recovery: header checks, the scan
 * of the newest segment, cutting a torn tail, reporting or cutting
 * corruption), then iterating and reading what it kept.
 *
 * Input: one flags byte, then the segment files back to back. Each file
 * starts at an occurrence of the segment magic "TXMQLOG\0" (the first one
 * at offset 0 whatever it holds) and is named after the base position in
 * its header (bytes 16..23), or, when the file is too short to have one,
 * after the end of the previous file, so that positions stay dense.
 *   bits 0-1  0 strict, 1 RECOVER_READONLY, 2 RECOVER_TRUNCATE,
 *             3 the READ_ONLY option (no writer; a torn tail is reported)
 *   bit 2     fix the checksums (segment headers, and each record's crc
 *             and pos24 while the framing holds), so that mutations reach
 *             the structure behind them instead of dying at a crc
 *   bit 3     after a read-write open: append one record, flush, close,
 *             and open again
 *
 * Properties checked (beyond "no crash, no leak, no UB"):
 *   - the iterator returns records in position order, each one where the
 *     previous one ended, inside [begin, end), and txmq_log_read at each
 *     position returns the same record;
 *   - a failed open says why (txmq_log_diag), and ECORRUPT names where
 *     (txmq_log_corruption);
 *   - recovery is idempotent: a log opened read-write (a torn tail cut,
 *     corruption cut in TRUNCATE mode) opens again read-only in strict mode
 *     with nothing torn and nothing corrupt, and so does it after bit 3's
 *     append, whose record then reads back as the last one.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fuzz_util.h"
#include "txmq/error.h"
#include "txmq/log.h"

#define HDR TXMQ_LOG_SEGMENT_HEADER_SIZE
#define RHDR TXMQ_LOG_RECORD_HEADER_SIZE
#define MAX_SEGS 16

static const uint8_t MAGIC[8] = {'T', 'X', 'M', 'Q', 'L', 'O', 'G', 0};

static char* g_root;
static uv_loop_t g_loop;

int LLVMFuzzerInitialize(int* argc, char*** argv) {
  (void)argc;
  (void)argv;
  g_root = fz_tmpdir("log");
  FZ_CHECK(uv_loop_init(&g_loop) == 0);
  return 0;
}

static uint32_t get32(const uint8_t* p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
         (uint32_t)p[3] << 24;
}
static uint64_t get64(const uint8_t* p) {
  return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32;
}
static void put32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}

/* Makes the checksums of one segment file right, from the format drawn in
 * txmq/log.h. */
static void fix_segment(uint8_t* p, size_t n, uint64_t base) {
  if (n < HDR) return;
  put32(p + 28, txmq_crc32c(0, p, 28));
  size_t off = HDR;
  while (n - off >= RHDR) {
    uint32_t len = get32(p + off + 4);
    if (len > n - off - RHDR) break;
    uint32_t pos = (uint32_t)((base + (off - HDR)) & 0xffffffu);
    p[off + 9] = (uint8_t)pos;
    p[off + 10] = (uint8_t)(pos >> 8);
    p[off + 11] = (uint8_t)(pos >> 16);
    put32(p + off, txmq_crc32c(0, p + off + 4, 8u + len));
    off += RHDR + (size_t)len;
  }
}

/* Writes the segment files of the input into dir. */
static void write_segments(const char* dir, uint8_t* p, size_t n, int fix) {
  size_t starts[MAX_SEGS + 1];
  size_t ns = 0;
  starts[ns++] = 0;
  for (size_t i = 1; i + sizeof MAGIC <= n && ns < MAX_SEGS; i++) {
    if (memcmp(p + i, MAGIC, sizeof MAGIC) == 0) starts[ns++] = i;
  }
  starts[ns] = n;
  uint64_t next_base = 0;
  for (size_t s = 0; s < ns; s++) {
    uint8_t* f = p + starts[s];
    size_t len = starts[s + 1] - starts[s];
    uint64_t base = len >= 24 ? get64(f + 16) : next_base;
    if (fix) fix_segment(f, len, base);
    char name[40];
    snprintf(name, sizeof name, "%020llu.log", (unsigned long long)base);
    char* path = fz_path(dir, name);
    struct stat st;
    if (stat(path, &st) != 0) fz_write_file(path, f, len);
    free(path);
    next_base = base + (len > HDR ? len - HDR : 0);
  }
}

static void on_closed(txmq_log_t* log, void* arg) {
  (void)log;
  *(int*)arg = 1;
}

static void close_log(txmq_log_t* log) {
  int done = 0;
  FZ_CHECK(txmq_log_close(log, on_closed, &done) == 0);
  FZ_CHECK(fz_run_until(&g_loop, &done, 60000));
  txmq_log_free(log);
}

/* Walks the log from begin: order, contiguity, bounds, and read == iter. */
static void walk(txmq_log_t* log) {
  uint64_t begin = txmq_log_begin(log), end = txmq_log_end(log);
  FZ_CHECK(begin <= end);
  txmq_log_iter_t* it = NULL;
  FZ_CHECK(txmq_log_iter_new(log, begin, UINT64_MAX, &it) == 0);
  uint64_t expect = begin;
  size_t count = 0;
  for (;;) {
    txmq_log_entry_t e;
    int rc = txmq_log_iter_next(it, &e);
    if (rc == TXMQ_ENOTFOUND) break;
    if (rc != 0) {
      /* Older segments are only header-checked at open: their records may
       * be bad, and the iterator stops there. */
      FZ_CHECK(rc == TXMQ_ECORRUPT);
      break;
    }
    FZ_CHECK(e.pos >= expect && e.pos < end);
    /* A record never spans segments: the next one may start a segment
     * later only if this one ended its segment, which the dense positions
     * make the same number. */
    FZ_CHECK(e.pos == expect);
    FZ_CHECK(e.next == e.pos + RHDR + e.len && e.next <= end);
    FZ_CHECK(e.type != 0);
    txmq_log_entry_t r;
    FZ_CHECK(txmq_log_read(log, e.pos, &r) == 0);
    FZ_CHECK(r.pos == e.pos && r.next == e.next && r.type == e.type &&
             r.len == e.len && (e.len == 0 || memcmp(r.data, e.data, e.len) == 0));
    expect = e.next;
    if (++count > 100000) break;
  }
  txmq_log_iter_free(it);
  /* Reads anywhere else fail cleanly. */
  txmq_log_entry_t r;
  int rc = txmq_log_read(log, end, &r);
  FZ_CHECK(rc == TXMQ_ERANGE);
  if (begin > 0) FZ_CHECK(txmq_log_read(log, begin - 1, &r) != 0);
}

/* Opens dir read-only in strict mode: it must open, with nothing torn. */
static void reopen_clean(const char* dir, uint64_t mine) {
  txmq_log_t* log = NULL;
  FZ_CHECK(txmq_log_new(&log, NULL, dir) == 0);
  FZ_CHECK(txmq_log_set(log, TXMQ_LOG_OPT_READ_ONLY, 1) == 0);
  int rc = txmq_log_open(log);
  if (rc != 0 || txmq_log_torn_bytes(log) != 0) {
    fprintf(stderr, "reopen after recovery: %s (torn %llu): %s\n",
            txmq_err_name(rc), (unsigned long long)txmq_log_torn_bytes(log),
            txmq_log_diag(log));
    FZ_CHECK(!"a recovered log opens again cleanly");
  }
  uint64_t seg, pos;
  FZ_CHECK(txmq_log_corruption(log, &seg, &pos) == TXMQ_ENOTFOUND);
  walk(log);
  if (mine != UINT64_MAX) {
    txmq_log_entry_t e;
    FZ_CHECK(txmq_log_read(log, mine, &e) == 0);
    FZ_CHECK(e.type == 0xfe && e.len == 4 && memcmp(e.data, "fuzz", 4) == 0);
    FZ_CHECK(e.next == txmq_log_end(log));
  }
  txmq_log_close(log, NULL, NULL);
  txmq_log_free(log);
}

static void on_flushed(txmq_log_t* log, int status, uint64_t first,
                       void* arg) {
  (void)log;
  (void)first;
  *(int*)arg = status == 0 ? 1 : -1;
}

int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  int mode = data[0] & 3;
  int fix = data[0] & 4;
  int append = data[0] & 8;
  char* dir = fz_path(g_root, "log");
  fz_rmrf(dir);
  FZ_CHECK(mkdir(dir, 0755) == 0);
  uint8_t* copy = malloc(size);
  FZ_CHECK(copy != NULL);
  memcpy(copy, data + 1, size - 1);
  write_segments(dir, copy, size - 1, fix);
  free(copy);

  txmq_log_t* log = NULL;
  FZ_CHECK(txmq_log_new(&log, mode == 3 ? NULL : &g_loop, dir) == 0);
  FZ_CHECK(txmq_log_set(log, TXMQ_LOG_OPT_SYNC, TXMQ_SYNC_NEVER) == 0);
  FZ_CHECK(txmq_log_set(log, TXMQ_LOG_OPT_SEGMENT_SIZE, 4096) == 0);
  if (mode == 3) {
    FZ_CHECK(txmq_log_set(log, TXMQ_LOG_OPT_READ_ONLY, 1) == 0);
  } else {
    FZ_CHECK(txmq_log_set(log, TXMQ_LOG_OPT_RECOVER, mode) == 0);
  }
  int rc = txmq_log_open(log);
  if (rc != 0) {
    FZ_CHECK(txmq_log_diag(log)[0] != '\0');
    uint64_t seg, pos;
    if (rc == TXMQ_ECORRUPT)
      FZ_CHECK(txmq_log_corruption(log, &seg, &pos) == 0);
    txmq_log_free(log);
    goto out;
  }
  walk(log);
  int writable = !txmq_log_is_read_only(log);
  if (!writable) {
    txmq_log_close(log, NULL, NULL);
    txmq_log_free(log);
    goto out;
  }
  uint64_t mine = UINT64_MAX;
  if (append) {
    static const char payload[] = "fuzz";
    txmq_log_rec_t r = {0xfe, payload, sizeof payload - 1};
    rc = txmq_log_append(log, &r, 1, &mine, NULL, NULL);
    FZ_CHECK(rc == 0);
    int flushed = 0;
    FZ_CHECK(txmq_log_flush(log, on_flushed, &flushed) == 0);
    FZ_CHECK(fz_run_until(&g_loop, &flushed, 60000) && flushed == 1);
    walk(log);
  }
  close_log(log);
  reopen_clean(dir, mine);
out:
  fz_rmrf(dir);
  free(dir);
  return 0;
}
