/*
 * log_int.h - internals of the commit log shared by the files of core/log: the
 * log handle's layout, the on-disk encoders and validators, and the I/O
 * helpers.
 *
 * Nothing here is public API. The on-disk format itself is specified in
 * <txmq/log.h>; this header only implements it.
 *
 * THREADS. The log has at most two threads: the loop thread (every public
 * call) and the writer thread (log_writer.c). The fields of txmq_log_s are
 * grouped by who may touch them: loop-owned fields are never read by the
 * writer, writer-owned fields are never read by the loop while the writer
 * runs, and shared fields are only touched under mu.
 */
#ifndef TXMQ_LOG_INT_H
#define TXMQ_LOG_INT_H

#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>
#include <uv.h>

#include "common/pool.h"
#include "txmq/error.h"
#include "txmq/log.h"

#define TXMQ__LOG_MAGIC "TXMQLOG" /* 8 bytes with its NUL */
#define TXMQ__LOG_NAME_DIGITS 20
#define TXMQ__LOG_NAME_LEN (TXMQ__LOG_NAME_DIGITS + 4) /* + ".log" */
/* Capacity of a fresh chunk: small appends are copied into the chunk still
 * waiting for the writer, so one write() carries many of them. */
#define TXMQ__LOG_CHUNK_CAP (64u * 1024u)
#define TXMQ__LOG_TAIL_CACHE (8u * 1024u * 1024u)
/* Zero-fill ahead of the written end: at most this far, this much a time. */
#define TXMQ__LOG_ZERO_AHEAD (1024u * 1024u)
#define TXMQ__LOG_ZERO_CHUNK (256u * 1024u)
#define TXMQ__LOG_DIAG_MAX 1024
#define TXMQ__LOG_MIN_SEGMENT 4096
/* Read fds kept open at most: see txmq__seg_t. */
#define TXMQ__LOG_MAX_RFDS 32

enum { TXMQ__LOG_NEW = 0, TXMQ__LOG_OPEN, TXMQ__LOG_CLOSING, TXMQ__LOG_CLOSED };

/* Why a record is not valid (txmq__log_rec_check). */
enum {
  TXMQ__REC_OK = 0,
  TXMQ__REC_SHORT_HEADER, /* fewer than 12 bytes left */
  TXMQ__REC_TOO_BIG,      /* len over TXMQ_LOG_MAX_RECORD */
  TXMQ__REC_PAST_END,     /* payload runs past the end of the data */
  TXMQ__REC_BAD_TYPE,     /* type 0 */
  TXMQ__REC_BAD_POS,      /* pos24 does not match the position */
  TXMQ__REC_BAD_CRC
};

/* One segment file as the loop sees it. rfd is O_RDONLY, used by reads,
 * and -1 while the file is not open: reads open it on demand and at most
 * TXMQ__LOG_MAX_RFDS stay open (the least recently used is closed), so
 * the files a log holds do not grow with its segments - a long log would
 * otherwise run out of RLIMIT_NOFILE and stop taking writes. */
typedef struct {
  uint64_t base;
  uint32_t id;
  int rfd;
  uint64_t used; /* log->rfd_clock when rfd was last used */
} txmq__seg_t;

/* Encoded records waiting for the writer, all in one segment. The first
 * chunk of a segment that does not exist yet carries new_seg. */
typedef struct txmq__chunk_s {
  struct txmq__chunk_s* next;
  uint64_t seg_base;
  uint32_t seg_id;
  int new_seg;
  uint64_t start; /* position of data[0] */
  size_t len;
  size_t cap;
  uint8_t data[];
} txmq__chunk_t;

/* A pending completion callback (an append batch or a flush). */
typedef struct txmq__batch_s {
  struct txmq__batch_s* next;
  uint64_t first;
  uint64_t end;
  int need_durable; /* flush: wait for the durable end, whatever the policy */
  txmq_log_append_cb cb;
  void* arg;
} txmq__batch_t;

/* A segment the writer created, handed to the loop (not open: rfd -1). */
typedef struct txmq__newseg_s {
  struct txmq__newseg_s* next;
  txmq__seg_t seg;
} txmq__newseg_t;

/* A retired segment file the writer must unlink. */
typedef struct txmq__unlink_s {
  struct txmq__unlink_s* next;
  char path[];
} txmq__unlink_t;

struct txmq_log_s {
  /* Set by new/set/open, then read-only for both threads. */
  uv_loop_t* loop;
  char* dir;
  int sync;
  uint64_t sync_interval_ms;
  uint64_t segment_size;
  int recover;
  int read_only_opt;
  uint64_t max_buffered;
  uint64_t retain_bytes;
  uint64_t retain_seconds;
  uint64_t zero_ahead;
  int read_only; /* effective: the option, or RECOVER_READONLY chose it */
  int dirfd;

  /* Loop-owned. */
  int state;
  txmq__seg_t* segs; /* oldest first; only segments that exist on disk */
  size_t nsegs;
  size_t segs_cap;
  uint64_t end_seen;     /* readable end the loop knows of */
  uint64_t durable_seen; /* durable end the loop knows of */
  uint64_t next_pos;     /* where the next append goes */
  uint64_t tail_base;    /* segment the next append goes to (may not exist) */
  uint32_t tail_id;
  int failed_seen; /* the writer's error, once the loop has heard of it */
  txmq__batch_t* batch_head;
  txmq__batch_t* batch_tail;
  txmq__pool_t batch_pool; /* of txmq__batch_t, loop thread only */
  uint64_t rfd_bases[TXMQ__LOG_MAX_RFDS]; /* segments whose rfd is open */
  size_t nrfds;
  uint64_t rfd_clock;
  uint8_t* rbuf; /* txmq_log_read's buffer */
  size_t rcap;
  /* The tail cache: a copy of the newest appended bytes, so that reads of
   * recent records (a commit reading its half, a consumer at the head of
   * a topic) are a copy instead of a pread. Position p is at
   * tc[p % TXMQ__LOG_TAIL_CACHE]; it holds [max(tc_from, next_pos -
   * TXMQ__LOG_TAIL_CACHE), next_pos). NULL in a read-only log. */
  uint8_t* tc;
  uint64_t tc_from;
  uint64_t tc_hits;
  txmq_log_keep_cb keep_cb;
  void* keep_arg;
  txmq_log_close_cb close_cb;
  void* close_arg;
  int thread_live; /* writer started and not joined */
  int async_live;  /* async handle initialised and not yet closed */
  uv_async_t async;
  char diag[TXMQ__LOG_DIAG_MAX];
  int corrupt;
  uint64_t corrupt_seg;
  uint64_t corrupt_pos;
  uint64_t torn_bytes;

  /* Shared, under mu. */
  uv_mutex_t mu;
  uv_cond_t cond;
  int sync_init; /* mu and cond initialised */
  uv_thread_t thread;
  txmq__chunk_t* pend_head;
  txmq__chunk_t* pend_tail;
  txmq__unlink_t* unlink_head;
  txmq__unlink_t* unlink_tail;
  int sync_req; /* a flush wants an fdatasync */
  int stop;     /* close: write everything, sync, exit */
  int quiet;    /* exit without touching the async handle (failed open) */
  int exited;
  uint64_t pub_end;
  uint64_t pub_durable;
  int pub_err;
  char pub_msg[256];
  int pub_msg_new;
  txmq__newseg_t* created; /* segments the writer created, not yet in segs */

  /* Writer-owned while the writer runs. */
  int wfd; /* the segment being written, O_WRONLY */
  uint64_t wbase;
  uint32_t wid;
  uint64_t w_end;
  uint64_t w_durable;
  uint64_t w_last_sync_ns;
  int w_err;
  char w_msg[256];
  int w_msg_new;
  txmq__newseg_t* w_new; /* created in this round, published at its end */
  /* Sync always: the file of the segment being written is zero-filled
   * ahead of the data while the writer has nothing else to do, so that an
   * fdatasync flushes only data, not a changed size or extent map (on a
   * disk where that is a second write, it saves one per sync). */
  uint64_t w_zeroed;   /* file offset up to which it is written (zeros) */
  uint8_t* w_zeros;    /* TXMQ__LOG_ZERO_CHUNK zero bytes, NULL: off */

  /* Statistics and test faults: atomics, read from any thread. */
  atomic_uint_fast64_t nfsync;
  atomic_uint_fast64_t nwrite;
  atomic_uint_fast64_t nzero;  /* zero-fill writes (each with its sync) */
  atomic_int fault_write; /* errno to fail the next write with (tests) */
  atomic_int fault_sync;  /* errno to fail the next fdatasync with (tests) */
};

/* Little-endian encoding, independent of the host's byte order. */
static inline void txmq__put_le32(uint8_t* p, uint32_t v) {
  p[0] = (uint8_t)v;
  p[1] = (uint8_t)(v >> 8);
  p[2] = (uint8_t)(v >> 16);
  p[3] = (uint8_t)(v >> 24);
}
static inline void txmq__put_le64(uint8_t* p, uint64_t v) {
  txmq__put_le32(p, (uint32_t)v);
  txmq__put_le32(p + 4, (uint32_t)(v >> 32));
}
static inline uint32_t txmq__get_le24(const uint8_t* p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16;
}
static inline uint32_t txmq__get_le32(const uint8_t* p) {
  return txmq__get_le24(p) | (uint32_t)p[3] << 24;
}
static inline uint64_t txmq__get_le64(const uint8_t* p) {
  return (uint64_t)txmq__get_le32(p) | (uint64_t)txmq__get_le32(p + 4) << 32;
}

/* log_format.c: the format. */
void txmq__log_seg_header(uint8_t out[TXMQ_LOG_SEGMENT_HEADER_SIZE],
                          uint64_t base, uint32_t id);
/* 0 if h is a valid header for a file named after base (id gets the seg
 * id), else -1 and why gets the reason. */
int txmq__log_seg_header_check(const uint8_t* h, size_t n, uint64_t base,
                               uint32_t* id, char* why, size_t whylen);
/* Encodes one record for position pos at dst (12 + r->len bytes). */
void txmq__log_rec_encode(uint8_t* dst, uint64_t pos, const txmq_log_rec_t* r);
/* Checks the record at p, which has avail bytes before the end of the
 * segment's data; pos is its position. *len gets the payload length once
 * the header is complete. Returns TXMQ__REC_*. */
int txmq__log_rec_check(const uint8_t* p, uint64_t avail, uint64_t pos,
                        uint32_t* len);
/* The same without the checksum: length, type and position only. */
int txmq__log_rec_check_header(const uint8_t* p, uint64_t avail, uint64_t pos,
                               uint32_t* len);
const char* txmq__log_rec_problem(int code);
/* Offset of the first valid record in data[from, n), data being a segment's
 * data region that starts at position base; -1 if there is none. */
int64_t txmq__log_find_valid(const uint8_t* data, uint64_t n, uint64_t from,
                             uint64_t base);
/* "<dir>/<20 digits>.log" into out (size at least strlen(dir) + 26). */
void txmq__log_seg_path(char* out, size_t outlen, const char* dir,
                        uint64_t base);
/* Parses a segment file name; 0 and *base, or -1 for any other name. */
int txmq__log_parse_name(const char* name, uint64_t* base);

/* log_format.c: I/O that retries EINTR and short transfers. Return 0 or a
 * positive errno (ENODATA for an unexpected end of file on reads). */
int txmq__pread_full(int fd, void* buf, size_t len, uint64_t off);
int txmq__pwrite_full(int fd, const void* buf, size_t len, uint64_t off);
int txmq__pwritev_full(int fd, struct iovec* iov, int iovcnt, uint64_t off,
                       atomic_uint_fast64_t* nwrite);
int txmq__fdatasync(int fd);
int txmq__fsync(int fd);

/* log.c: diagnostics (loop thread, or the opening thread). */
void txmq__log_diag_reset(txmq_log_t* log);
void txmq__log_diagf(txmq_log_t* log, const char* fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Appends a segment that is not open (seg.rfd -1) to the table. */
int txmq__log_segs_push(txmq_log_t* log, txmq__seg_t seg);

/* log_recover.c: runs at open, on the opening thread, before the writer
 * exists. On success fills segs (none of them open), the loop's positions,
 * wfd (read-write) and read_only; on failure leaves no fd open except what
 * free closes. */
int txmq__log_recover(txmq_log_t* log);

/* log_writer.c. */
void txmq__log_writer_main(void* arg);

/* Test hook: the writer's next write (what 0) or fdatasync (what 1) fails
 * with err, as if the disk had. Lets tests reach the failed state. */
void txmq__log_inject_fault(txmq_log_t* log, int what, int err);

#endif /* TXMQ_LOG_INT_H */
