/*
 * log_writer.c - the commit log's writer thread.
 *
 * One thread per read-write log. Each round it takes every chunk the loop
 * has queued, writes them with one pwritev() per run of chunks in the same
 * segment, creates new segment files when the chunks say so, fdatasyncs
 * according to the sync policy, unlinks segments retired by retention, and
 * then publishes the new written and durable ends under the mutex and wakes
 * the loop with uv_async_send(). Completion callbacks are not run here: the
 * loop runs them (log.c).
 *
 * It does not decide positions or segment boundaries (the loop does, at
 * append time) and never retries a failed write or fdatasync: after the
 * first failure it discards whatever comes and only reports the error.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log_int.h"

#ifndef IOV_MAX
#define IOV_MAX 1024
#endif

static void writer_fail(txmq_log_t* log, int err, const char* fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void writer_fail(txmq_log_t* log, int err, const char* fmt, ...) {
  if (log->w_err != 0) return; /* the first failure is the one to report */
  log->w_err = txmq_err_from_errno(err);
  if (log->w_err == 0) log->w_err = TXMQ_EIO;
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(log->w_msg, sizeof log->w_msg, fmt, ap);
  va_end(ap);
  if (n >= 0 && (size_t)n < sizeof log->w_msg) {
    char ebuf[64]; /* strerror is not thread-safe; GNU strerror_r is */
    snprintf(log->w_msg + n, sizeof log->w_msg - (size_t)n, ": %s",
             strerror_r(err, ebuf, sizeof ebuf));
  }
  log->w_msg_new = 1;
}

/* The file offset where the segment being written's data ends. */
static uint64_t file_end(const txmq_log_t* log) {
  return TXMQ_LOG_SEGMENT_HEADER_SIZE + (log->w_end - log->wbase);
}

/* fdatasync of the segment being written, counted; a test may inject the
 * failure a real disk would give. */
static int sync_data(txmq_log_t* log) {
  int err = atomic_exchange(&log->fault_sync, 0);
  if (err == 0) err = txmq__fdatasync(log->wfd);
  atomic_fetch_add(&log->nfsync, 1);
  if (err != 0) {
    writer_fail(log, err, "fdatasync of segment %020" PRIu64 ".log failed",
                log->wbase);
    return -1;
  }
  log->w_durable = log->w_end;
  log->w_last_sync_ns = uv_hrtime();
  return 0;
}

/* Creates the segment file for base: header, fdatasync, directory fsync (so
 * the file's name survives a crash), then a read fd for the loop. */
static int create_segment(txmq_log_t* log, uint64_t base, uint32_t id) {
  size_t plen = strlen(log->dir) + TXMQ__LOG_NAME_LEN + 2;
  char* path = malloc(plen);
  txmq__newseg_t* node = malloc(sizeof *node);
  if (path == NULL || node == NULL) {
    free(path);
    free(node);
    writer_fail(log, ENOMEM, "creating segment %020" PRIu64 ".log", base);
    return -1;
  }
  txmq__log_seg_path(path, plen, log->dir, base);
  int fd = -1, err = 0;
  const char* step = "create";
  fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) err = errno;
  if (err == 0) {
    uint8_t hdr[TXMQ_LOG_SEGMENT_HEADER_SIZE];
    txmq__log_seg_header(hdr, base, id);
    step = "write the header of";
    err = txmq__pwrite_full(fd, hdr, sizeof hdr, 0);
    atomic_fetch_add(&log->nwrite, 1);
  }
  if (err == 0) {
    step = "fdatasync";
    err = txmq__fdatasync(fd);
    atomic_fetch_add(&log->nfsync, 1);
  }
  if (err == 0) {
    step = "fsync the directory after creating";
    err = txmq__fsync(log->dirfd);
    atomic_fetch_add(&log->nfsync, 1);
  }
  free(path);
  if (err != 0) {
    if (fd >= 0) close(fd);
    free(node);
    writer_fail(log, err, "cannot %s segment %020" PRIu64 ".log", step, base);
    return -1;
  }
  node->next = NULL;
  node->seg.base = base;
  node->seg.id = id;
  node->seg.rfd = -1; /* the loop opens it when it reads */
  node->seg.used = 0;
  txmq__newseg_t** tail = &log->w_new;
  while (*tail != NULL) tail = &(*tail)->next;
  *tail = node;
  log->wfd = fd;
  log->wbase = base;
  log->wid = id;
  log->w_zeroed = TXMQ_LOG_SEGMENT_HEADER_SIZE;
  return 0;
}

/* Moves to the segment that chunk c starts: the finished segment is
 * fdatasynced first under every policy, so that only the newest segment can
 * ever hold unsynced data (recovery scans only that one). */
static int roll(txmq_log_t* log, const txmq__chunk_t* c) {
  if (!c->new_seg || c->seg_base != log->w_end) {
    writer_fail(log, EINVAL,
                "internal: chunk for segment %" PRIu64 " at %" PRIu64
                " does not follow the written end %" PRIu64,
                c->seg_base, c->start, log->w_end);
    return -1;
  }
  /* A finished segment ends at its last record: the zeros written ahead
   * of it are cut (recovery takes only the newest segment's zeros for
   * unused room). */
  uint64_t data_end = file_end(log);
  int cut = log->w_zeroed > data_end;
  if (cut && ftruncate(log->wfd, (off_t)data_end) != 0) {
    writer_fail(log, errno, "cannot cut segment %020" PRIu64 ".log to its end",
                log->wbase);
    return -1;
  }
  if ((cut || log->w_end > log->w_durable) && sync_data(log) != 0) return -1;
  close(log->wfd);
  log->wfd = -1;
  return create_segment(log, c->seg_base, c->seg_id);
}

static void write_chunks(txmq_log_t* log, txmq__chunk_t* c) {
  struct iovec iov[64 < IOV_MAX ? 64 : IOV_MAX];
  while (c != NULL && log->w_err == 0) {
    if (c->seg_base != log->wbase && roll(log, c) != 0) return;
    /* One pwritev for a run of chunks of this segment. */
    int n = 0;
    uint64_t start = c->start;
    uint64_t end = start;
    while (c != NULL && c->seg_base == log->wbase &&
           n < (int)(sizeof iov / sizeof iov[0])) {
      iov[n].iov_base = c->data;
      iov[n].iov_len = c->len;
      end = c->start + c->len;
      n++;
      c = c->next;
    }
    uint64_t off = TXMQ_LOG_SEGMENT_HEADER_SIZE + (start - log->wbase);
    int err = atomic_exchange(&log->fault_write, 0);
    if (err != 0)
      atomic_fetch_add(&log->nwrite, 1);
    else
      err = txmq__pwritev_full(log->wfd, iov, n, off, &log->nwrite);
    if (err != 0) {
      writer_fail(log, err,
                  "write of %" PRIu64 " bytes at position %" PRIu64
                  " (segment %020" PRIu64 ".log) failed",
                  end - start, start, log->wbase);
      return;
    }
    log->w_end = end;
  }
}

static void unlink_retired(txmq_log_t* log, txmq__unlink_t* u) {
  while (u != NULL) {
    txmq__unlink_t* next = u->next;
    if (unlink(u->path) != 0 && errno != ENOENT && !log->w_msg_new) {
      char ebuf[64];
      snprintf(log->w_msg, sizeof log->w_msg, "retention: cannot unlink %s: %s",
               u->path, strerror_r(errno, ebuf, sizeof ebuf));
      log->w_msg_new = 1;
    } else {
      /* One directory fsync per unlink keeps deletions in oldest-first
       * order on disk: a crash can shorten the log only at its front, never
       * leave a hole that recovery would take for a lost segment. */
      txmq__fsync(log->dirfd);
      atomic_fetch_add(&log->nfsync, 1);
    }
    free(u);
    u = next;
  }
}

/* The zero-fill the writer would do now, as [*from, *to); 0 if none. */
static int zero_wanted(const txmq_log_t* log, uint64_t* from, uint64_t* to) {
  if (log->w_zeros == NULL || log->w_err != 0 || log->wfd < 0) return 0;
  uint64_t data_end = file_end(log);
  /* Nothing while at least half the room is left: each fill is a sync. */
  if (log->w_zeroed > data_end && log->w_zeroed - data_end >= log->zero_ahead / 2)
    return 0;
  uint64_t limit = data_end + log->zero_ahead;
  if (limit > log->segment_size) limit = log->segment_size;
  uint64_t start = log->w_zeroed > data_end ? log->w_zeroed : data_end;
  if (start >= limit) return 0;
  *from = start;
  *to = limit - start > TXMQ__LOG_ZERO_CHUNK ? start + TXMQ__LOG_ZERO_CHUNK
                                             : limit;
  return 1;
}

/* Writes zeros over [from, to) of the segment file and syncs them. Only the
 * writer writes the file, and only beyond the data: nothing is overwritten.
 * A failure only stops the zero-filling (writes then grow the file). */
static void zero_fill(txmq_log_t* log, uint64_t from, uint64_t to) {
  int err = txmq__pwrite_full(log->wfd, log->w_zeros, (size_t)(to - from),
                              from);
  if (err == 0) err = txmq__fdatasync(log->wfd);
  atomic_fetch_add(&log->nzero, 1);
  if (err != 0) {
    free(log->w_zeros);
    log->w_zeros = NULL;
    return;
  }
  log->w_zeroed = to;
}

static void free_chunks(txmq__chunk_t* c) {
  while (c != NULL) {
    txmq__chunk_t* next = c->next;
    free(c);
    c = next;
  }
}

void txmq__log_writer_main(void* arg) {
  txmq_log_t* log = arg;
  const uint64_t interval_ns = log->sync_interval_ms * 1000000u;
  uv_mutex_lock(&log->mu);
  for (;;) {
    while (log->pend_head == NULL && !log->sync_req &&
           log->unlink_head == NULL && !log->stop) {
      uint64_t zfrom, zto;
      if (zero_wanted(log, &zfrom, &zto)) {
        /* Idle: prepare the room the next records will be written to. */
        uv_mutex_unlock(&log->mu);
        zero_fill(log, zfrom, zto);
        uv_mutex_lock(&log->mu);
        continue;
      }
      if (log->sync == TXMQ_SYNC_INTERVAL && log->w_err == 0 &&
          log->w_end > log->w_durable) {
        uint64_t now = uv_hrtime();
        uint64_t due = log->w_last_sync_ns + interval_ns;
        if (now >= due) break;
        uv_cond_timedwait(&log->cond, &log->mu, due - now);
      } else {
        uv_cond_wait(&log->cond, &log->mu);
      }
    }
    txmq__chunk_t* work = log->pend_head;
    log->pend_head = log->pend_tail = NULL;
    txmq__unlink_t* retired = log->unlink_head;
    log->unlink_head = log->unlink_tail = NULL;
    int sync_req = log->sync_req;
    log->sync_req = 0;
    int stop = log->stop;
    uv_mutex_unlock(&log->mu);

    write_chunks(log, work);
    free_chunks(work);
    if (log->w_err == 0 && log->w_end > log->w_durable) {
      int due = log->sync == TXMQ_SYNC_ALWAYS || sync_req || stop;
      if (log->sync == TXMQ_SYNC_INTERVAL &&
          uv_hrtime() >= log->w_last_sync_ns + interval_ns)
        due = 1;
      if (due) sync_data(log);
    }
    unlink_retired(log, retired);

    uv_mutex_lock(&log->mu);
    log->pub_end = log->w_end;
    log->pub_durable = log->w_durable;
    log->pub_err = log->w_err;
    if (log->w_msg_new) {
      memcpy(log->pub_msg, log->w_msg, sizeof log->pub_msg);
      log->pub_msg_new = 1;
      log->w_msg_new = 0;
    }
    if (log->w_new != NULL) {
      txmq__newseg_t** tail = &log->created;
      while (*tail != NULL) tail = &(*tail)->next;
      *tail = log->w_new;
      log->w_new = NULL;
    }
    /* Close stops appends first, so once stop is seen and nothing is
     * queued, nothing more can come. */
    int done = stop && log->pend_head == NULL && log->unlink_head == NULL &&
               !log->sync_req;
    if (done) log->exited = 1;
    int quiet = log->quiet;
    uv_mutex_unlock(&log->mu);
    if (!quiet) uv_async_send(&log->async);
    if (done) break;
    uv_mutex_lock(&log->mu);
  }
  if (log->wfd >= 0) {
    /* A clean close leaves the file ending at its last record. */
    uint64_t data_end = file_end(log);
    if (log->w_err == 0 && log->w_zeroed > data_end &&
        ftruncate(log->wfd, (off_t)data_end) == 0)
      txmq__fdatasync(log->wfd);
    close(log->wfd);
    log->wfd = -1;
  }
  free(log->w_zeros);
  log->w_zeros = NULL;
}
