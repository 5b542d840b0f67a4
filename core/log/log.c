/*
 * log.c - the commit log's public API (<txmq/log.h>): options, appends and
 * their completion callbacks, flush, reads and iterators, retention, close.
 *
 * Appends run on the loop thread: records are encoded into chunks, given
 * their positions and segment at once, and handed to the writer thread
 * (log_writer.c), which wakes the loop through a uv_async_t when bytes are
 * written or durable; the async callback then runs completion callbacks in
 * position order. Reads use pread() on per-segment read fds below the end
 * the loop has heard of. Opening and recovery live in log_recover.c, the
 * format in log_format.c.
 *
 * It does not know what records mean; that belongs to the store and above.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "log_int.h"

#define HDR TXMQ_LOG_SEGMENT_HEADER_SIZE
#define RHDR TXMQ_LOG_RECORD_HEADER_SIZE
/* First read of a record: its header and, for small records, its payload
 * in one pread(). */
#define READ_AHEAD 4096u

/* Diagnostics. */

void txmq__log_diag_reset(txmq_log_t* log) {
  log->diag[0] = '\0';
}

void txmq__log_diagf(txmq_log_t* log, const char* fmt, ...) {
  size_t n = strlen(log->diag);
  if (n > 0 && n + 2 < sizeof log->diag) {
    memcpy(log->diag + n, "; ", 3);
    n += 2;
  }
  if (n + 1 >= sizeof log->diag) return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(log->diag + n, sizeof log->diag - n, fmt, ap);
  va_end(ap);
}

int txmq__log_segs_push(txmq_log_t* log, txmq__seg_t seg) {
  if (log->nsegs == log->segs_cap) {
    size_t cap = log->segs_cap ? log->segs_cap * 2 : 8;
    txmq__seg_t* v = realloc(log->segs, cap * sizeof *v);
    if (v == NULL) return TXMQ_ENOMEM;
    log->segs = v;
    log->segs_cap = cap;
  }
  log->segs[log->nsegs++] = seg;
  return 0;
}

static int segs_reserve(txmq_log_t* log, size_t need) {
  if (need <= log->segs_cap) return 0;
  txmq__seg_t* v = realloc(log->segs, need * sizeof *v);
  if (v == NULL) return TXMQ_ENOMEM;
  log->segs = v;
  log->segs_cap = need;
  return 0;
}

/* Closes every file of the log (read fds, the write fd, the directory and
 * with it the directory lock). */
static void release_files(txmq_log_t* log) {
  for (size_t i = 0; i < log->nsegs; i++)
    if (log->segs[i].rfd >= 0) close(log->segs[i].rfd);
  log->nsegs = 0;
  log->nrfds = 0;
  txmq__newseg_t* ns = log->created;
  log->created = NULL;
  while (ns != NULL) {
    txmq__newseg_t* next = ns->next;
    free(ns);
    ns = next;
  }
  if (log->wfd >= 0) close(log->wfd);
  log->wfd = -1;
  if (log->dirfd >= 0) close(log->dirfd);
  log->dirfd = -1;
}

/* Creation and options. */

int txmq_log_new(txmq_log_t** out, uv_loop_t* loop, const char* dir) {
  if (out == NULL || dir == NULL || *dir == '\0') return TXMQ_EINVAL;
  *out = NULL;
  txmq_log_t* log = calloc(1, sizeof *log);
  if (log == NULL) return TXMQ_ENOMEM;
  txmq__pool_init(&log->batch_pool, sizeof(txmq__batch_t), 1024);
  log->dir = strdup(dir);
  if (log->dir == NULL) {
    free(log);
    return TXMQ_ENOMEM;
  }
  /* Trailing slashes would end up doubled in segment paths. */
  for (size_t n = strlen(log->dir); n > 1 && log->dir[n - 1] == '/'; n--)
    log->dir[n - 1] = '\0';
  if (uv_mutex_init(&log->mu) != 0) {
    free(log->dir);
    free(log);
    return TXMQ_ENOMEM;
  }
  if (uv_cond_init(&log->cond) != 0) {
    uv_mutex_destroy(&log->mu);
    free(log->dir);
    free(log);
    return TXMQ_ENOMEM;
  }
  log->sync_init = 1;
  log->loop = loop;
  log->sync = TXMQ_SYNC_ALWAYS;
  log->sync_interval_ms = 1000;
  log->zero_ahead = TXMQ__LOG_ZERO_AHEAD;
  log->segment_size = 64u * 1024u * 1024u;
  log->recover = TXMQ_LOG_RECOVER_STRICT;
  log->max_buffered = 64u * 1024u * 1024u;
  log->dirfd = -1;
  log->wfd = -1;
  log->state = TXMQ__LOG_NEW;
  atomic_init(&log->nfsync, 0);
  atomic_init(&log->nwrite, 0);
  atomic_init(&log->fault_write, 0);
  atomic_init(&log->fault_sync, 0);
  *out = log;
  return 0;
}

int txmq_log_set(txmq_log_t* log, txmq_log_opt_t opt, int64_t v) {
  if (log == NULL) return TXMQ_EINVAL;
  if (log->state != TXMQ__LOG_NEW) return TXMQ_EBUSY;
  switch (opt) {
    case TXMQ_LOG_OPT_SYNC:
      if (v < TXMQ_SYNC_ALWAYS || v > TXMQ_SYNC_NEVER) return TXMQ_EINVAL;
      log->sync = (int)v;
      return 0;
    case TXMQ_LOG_OPT_SYNC_INTERVAL_MS:
      if (v < 1 || v > 24 * 3600 * 1000) return TXMQ_EINVAL;
      log->sync_interval_ms = (uint64_t)v;
      return 0;
    case TXMQ_LOG_OPT_SEGMENT_SIZE:
      if (v < TXMQ__LOG_MIN_SEGMENT || v > (INT64_C(1) << 40))
        return TXMQ_EINVAL;
      log->segment_size = (uint64_t)v;
      return 0;
    case TXMQ_LOG_OPT_RECOVER:
      if (v < TXMQ_LOG_RECOVER_STRICT || v > TXMQ_LOG_RECOVER_TRUNCATE)
        return TXMQ_EINVAL;
      log->recover = (int)v;
      return 0;
    case TXMQ_LOG_OPT_READ_ONLY:
      if (v != 0 && v != 1) return TXMQ_EINVAL;
      log->read_only_opt = (int)v;
      return 0;
    case TXMQ_LOG_OPT_MAX_BUFFERED:
      if (v < 1) return TXMQ_EINVAL;
      log->max_buffered = (uint64_t)v;
      return 0;
    case TXMQ_LOG_OPT_RETAIN_BYTES:
      if (v < 0) return TXMQ_EINVAL;
      log->retain_bytes = (uint64_t)v;
      return 0;
    case TXMQ_LOG_OPT_RETAIN_SECONDS:
      if (v < 0) return TXMQ_EINVAL;
      log->retain_seconds = (uint64_t)v;
      return 0;
    case TXMQ_LOG_OPT_ZERO_AHEAD:
      if (v < 0 || v > (int64_t)1 << 30) return TXMQ_EINVAL;
      log->zero_ahead = (uint64_t)v;
      return 0;
  }
  return TXMQ_EINVAL;
}

/* Completion callbacks. */

/* Queues a callback. The async handle keeps the loop alive only while a
 * callback is pending (or the log is closing), like a libuv request: a
 * program may run its loop to completion with an idle log open. */
static void batch_push(txmq_log_t* log, txmq__batch_t* b) {
  if (log->batch_tail != NULL)
    log->batch_tail->next = b;
  else
    log->batch_head = b;
  log->batch_tail = b;
  uv_ref((uv_handle_t*)&log->async);
}

/* Runs, in position order, the callbacks whose batch is done. final: the
 * writer has stopped, so nothing pending will ever complete. */
static void fire_callbacks(txmq_log_t* log, int final) {
  while (log->batch_head != NULL) {
    txmq__batch_t* b = log->batch_head;
    uint64_t done = (b->need_durable || log->sync == TXMQ_SYNC_ALWAYS)
                        ? log->durable_seen
                        : log->end_seen;
    int status;
    if (b->end <= done)
      status = 0;
    else if (log->failed_seen != 0)
      status = log->failed_seen;
    else if (final)
      status = TXMQ_ECLOSED;
    else
      break;
    /* Unlinked before the call: the callback may append or close. */
    log->batch_head = b->next;
    if (log->batch_head == NULL) log->batch_tail = NULL;
    b->cb(log, status, b->first, b->arg);
    txmq__pool_put(&log->batch_pool, b);
  }
}

static void on_async_closed(uv_handle_t* h) {
  txmq_log_t* log = h->data;
  log->async_live = 0;
  log->state = TXMQ__LOG_CLOSED;
  release_files(log);
  txmq_log_close_cb cb = log->close_cb;
  if (cb != NULL) cb(log, log->close_arg); /* may free log: nothing after */
}

static void on_async(uv_async_t* h) {
  txmq_log_t* log = h->data;
  char msg[sizeof log->pub_msg];
  int have_msg = 0;
  uv_mutex_lock(&log->mu);
  uint64_t end = log->pub_end, durable = log->pub_durable;
  int err = log->pub_err;
  if (log->pub_msg_new) {
    memcpy(msg, log->pub_msg, sizeof msg);
    log->pub_msg_new = 0;
    have_msg = 1;
  }
  txmq__newseg_t* created = log->created;
  log->created = NULL;
  int exited = log->exited;
  uv_mutex_unlock(&log->mu);

  /* The new segments' read fds arrive with the end that first covers them,
   * so a read below end_seen always finds its segment. Room was reserved
   * at append time. */
  while (created != NULL) {
    txmq__newseg_t* next = created->next;
    if (txmq__log_segs_push(log, created->seg) != 0 && log->failed_seen == 0)
      log->failed_seen = TXMQ_ENOMEM;
    free(created);
    created = next;
  }
  if (end > log->end_seen) log->end_seen = end;
  if (durable > log->durable_seen) log->durable_seen = durable;
  if (err != 0 && log->failed_seen == 0) log->failed_seen = err;
  if (have_msg) txmq__log_diagf(log, "%s", msg);

  fire_callbacks(log, 0);
  if (log->batch_head == NULL && log->state == TXMQ__LOG_OPEN)
    uv_unref((uv_handle_t*)&log->async);
  if (exited && log->thread_live) {
    uv_thread_join(&log->thread);
    log->thread_live = 0;
    fire_callbacks(log, 1);
    uv_close((uv_handle_t*)&log->async, on_async_closed);
  }
}

/* Open. */

int txmq_log_open(txmq_log_t* log) {
  if (log == NULL) return TXMQ_EINVAL;
  if (log->state != TXMQ__LOG_NEW) return TXMQ_EBUSY;
  txmq__log_diag_reset(log);
  log->corrupt = 0;
  log->corrupt_seg = log->corrupt_pos = 0;
  log->torn_bytes = 0;
  log->failed_seen = 0;
  log->end_seen = log->durable_seen = log->next_pos = 0;
  log->read_only = log->read_only_opt;
  if (!log->read_only && log->loop == NULL) {
    txmq__log_diagf(log, "a read-write log needs a loop");
    return TXMQ_EINVAL;
  }
  int rc = txmq__log_recover(log);
  if (rc != 0) {
    release_files(log);
    return rc;
  }
  /* Statistics count what this open does from now on, not recovery. */
  atomic_store(&log->nfsync, 0);
  atomic_store(&log->nwrite, 0);
  if (log->read_only) {
    log->state = TXMQ__LOG_OPEN;
    return 0;
  }
  log->tc = malloc(TXMQ__LOG_TAIL_CACHE); /* without it, reads pread */
  /* The newest segment's file is zeros beyond its records, if anything
   * (recovery cut any other tail). Without the buffer, no zero-fill. */
  struct stat st;
  log->w_zeroed = fstat(log->wfd, &st) == 0 ? (uint64_t)st.st_size : 0;
  log->w_zeros = log->sync == TXMQ_SYNC_ALWAYS && log->zero_ahead > 0
                     ? calloc(1, TXMQ__LOG_ZERO_CHUNK) : NULL;
  log->tc_from = log->next_pos;
  log->stop = log->quiet = log->exited = 0;
  log->pub_err = 0;
  log->w_err = 0;
  log->w_last_sync_ns = uv_hrtime();
  rc = uv_thread_create(&log->thread, txmq__log_writer_main, log);
  if (rc != 0) {
    free(log->w_zeros);
    log->w_zeros = NULL;
    txmq__log_diagf(log, "cannot start the writer thread: %s", uv_strerror(rc));
    release_files(log);
    return txmq_err_from_errno(-rc);
  }
  rc = uv_async_init(log->loop, &log->async, on_async);
  if (rc != 0) {
    /* The writer has had nothing to do yet; stop it without the handle. */
    uv_mutex_lock(&log->mu);
    log->quiet = log->stop = 1;
    uv_cond_signal(&log->cond);
    uv_mutex_unlock(&log->mu);
    uv_thread_join(&log->thread);
    log->stop = log->quiet = log->exited = 0;
    txmq__log_diagf(log, "cannot create the async handle: %s", uv_strerror(rc));
    release_files(log);
    return txmq_err_from_errno(-rc);
  }
  log->async.data = log;
  uv_unref((uv_handle_t*)&log->async); /* see batch_push */
  log->thread_live = 1;
  log->async_live = 1;
  log->state = TXMQ__LOG_OPEN;
  return 0;
}

/* Appends. */

static int must_roll(const txmq_log_t* log, uint64_t pos, uint64_t tail_base,
                     uint64_t rec_size) {
  /* The segment size is a target: a record larger than a whole segment
   * still goes into a segment of its own. */
  return pos > tail_base &&
         HDR + (pos - tail_base) + rec_size > log->segment_size;
}

static int append_check(txmq_log_t* log, const txmq_log_rec_t* recs, size_t n,
                        uint64_t* total) {
  if (log == NULL || recs == NULL || n == 0) return TXMQ_EINVAL;
  uint64_t sum = 0;
  for (size_t i = 0; i < n; i++) {
    if (recs[i].type == 0) return TXMQ_EINVAL;
    if (recs[i].len > TXMQ_LOG_MAX_RECORD) return TXMQ_ETOOBIG;
    if (recs[i].len > 0 && recs[i].data == NULL) return TXMQ_EINVAL;
    sum += RHDR + (uint64_t)recs[i].len;
  }
  if (log->state != TXMQ__LOG_OPEN) return TXMQ_ECLOSED;
  if (log->read_only) return TXMQ_EROFS;
  if (log->failed_seen != 0) return TXMQ_EFAILED;
  /* What the loop has not yet heard to be written is what is buffered. A
   * batch over the limit is taken when nothing waits: it could never be
   * otherwise. */
  uint64_t buffered = log->next_pos - log->end_seen;
  if (buffered > 0 && buffered + sum > log->max_buffered) return TXMQ_EAGAIN;
  *total = sum;
  return 0;
}

static void free_chunk_list(txmq__chunk_t* c) {
  while (c != NULL) {
    txmq__chunk_t* next = c->next;
    free(c);
    c = next;
  }
}

/* Encodes recs[i..] that stay in the segment at tail_base into c, from
 * position *pos; returns the index of the first record left over. */
/* Copies n bytes appended at position pos into the tail cache. */
static void tc_put(txmq_log_t* log, uint64_t pos, const uint8_t* p, size_t n) {
  if (log->tc == NULL) return;
  const size_t cap = TXMQ__LOG_TAIL_CACHE;
  if (n > cap) { /* only the newest bytes stay */
    pos += n - cap;
    p += n - cap;
    n = cap;
  }
  size_t at = (size_t)(pos % cap);
  size_t first = cap - at < n ? cap - at : n;
  memcpy(log->tc + at, p, first);
  memcpy(log->tc, p + first, n - first);
}

/* Copies n bytes at position pos out of the tail cache if it holds them. */
static int tc_get(const txmq_log_t* log, uint64_t pos, uint8_t* out,
                  size_t n) {
  const size_t cap = TXMQ__LOG_TAIL_CACHE;
  if (log->tc == NULL || n > cap || pos < log->tc_from ||
      pos + n > log->next_pos || log->next_pos - pos > cap)
    return 0;
  size_t at = (size_t)(pos % cap);
  size_t first = cap - at < n ? cap - at : n;
  memcpy(out, log->tc + at, first);
  memcpy(out + first, log->tc, n - first);
  return 1;
}

static size_t fill_chunk(const txmq_log_t* log, txmq__chunk_t* c,
                         const txmq_log_rec_t* recs, size_t n, size_t i,
                         uint64_t* pos, uint64_t tail_base,
                         uint64_t* positions) {
  while (i < n) {
    uint64_t rs = RHDR + (uint64_t)recs[i].len;
    if (c->len > 0 && must_roll(log, *pos, tail_base, rs)) break;
    if (c->cap - c->len < rs) break;
    txmq__log_rec_encode(c->data + c->len, *pos, &recs[i]);
    if (positions != NULL) positions[i] = *pos;
    c->len += rs;
    *pos += rs;
    i++;
  }
  return i;
}

int txmq_log_append(txmq_log_t* log, const txmq_log_rec_t* recs, size_t n,
                    uint64_t* positions, txmq_log_append_cb cb, void* arg) {
  uint64_t total = 0;
  int rc = append_check(log, recs, n, &total);
  if (rc != 0) return rc;

  /* Plan segment rolls first, so that every allocation happens before
   * anything is committed. */
  uint64_t pos = log->next_pos, tbase = log->tail_base;
  uint32_t tid = log->tail_id;
  for (size_t i = 0; i < n; i++) {
    uint64_t rs = RHDR + (uint64_t)recs[i].len;
    if (must_roll(log, pos, tbase, rs)) {
      tbase = pos;
      tid++;
    }
    pos += rs;
  }
  const uint64_t end = pos;
  const int rolls = tid != log->tail_id;
  if (rolls) {
    /* The async callback adds created segments to the table and must not
     * fail then: reserve their room now. */
    size_t unseen = tid - log->segs[log->nsegs - 1].id;
    if (segs_reserve(log, log->nsegs + unseen) != 0) return TXMQ_ENOMEM;
  }
  txmq__batch_t* b = NULL;
  if (cb != NULL) {
    b = txmq__pool_get(&log->batch_pool);
    if (b == NULL) return TXMQ_ENOMEM;
    b->next = NULL;
    b->first = log->next_pos;
    b->end = end;
    b->need_durable = 0;
    b->cb = cb;
    b->arg = arg;
  }

  int done = 0;
  uv_mutex_lock(&log->mu);
  if (log->pub_err != 0) {
    uv_mutex_unlock(&log->mu);
    txmq__pool_put(&log->batch_pool, b);
    return TXMQ_EFAILED;
  }
  /* Small appends go into the chunk the writer has not taken yet. */
  txmq__chunk_t* t = log->pend_tail;
  if (!rolls && t != NULL && t->seg_base == log->tail_base &&
      t->cap - t->len >= total) {
    pos = log->next_pos;
    size_t at = t->len;
    fill_chunk(log, t, recs, n, 0, &pos, log->tail_base, positions);
    tc_put(log, log->next_pos, t->data + at, t->len - at);
    uv_cond_signal(&log->cond);
    done = 1;
  }
  uv_mutex_unlock(&log->mu);

  if (!done) {
    /* Encode outside the lock into new chunks, one or more per segment. */
    txmq__chunk_t *head = NULL, **link = &head, *last = NULL;
    pos = log->next_pos;
    tbase = log->tail_base;
    tid = log->tail_id;
    size_t i = 0;
    while (i < n) {
      int new_seg = 0;
      uint64_t rs = RHDR + (uint64_t)recs[i].len;
      if (must_roll(log, pos, tbase, rs)) {
        tbase = pos;
        tid++;
        new_seg = 1;
      }
      /* Size the chunk for the rest of this segment's part of the batch. */
      uint64_t span = 0, p = pos;
      for (size_t j = i; j < n; j++) {
        uint64_t s = RHDR + (uint64_t)recs[j].len;
        if (j > i && must_roll(log, p, tbase, s)) break;
        span += s;
        p += s;
      }
      size_t cap =
          span > TXMQ__LOG_CHUNK_CAP ? (size_t)span : TXMQ__LOG_CHUNK_CAP;
      txmq__chunk_t* c = malloc(sizeof *c + cap);
      if (c == NULL) {
        free_chunk_list(head);
        txmq__pool_put(&log->batch_pool, b);
        return TXMQ_ENOMEM;
      }
      c->next = NULL;
      c->seg_base = tbase;
      c->seg_id = tid;
      c->new_seg = new_seg;
      c->start = pos;
      c->len = 0;
      c->cap = cap;
      i = fill_chunk(log, c, recs, n, i, &pos, tbase, positions);
      *link = c;
      link = &c->next;
      last = c;
    }
    uv_mutex_lock(&log->mu);
    if (log->pub_err != 0) {
      uv_mutex_unlock(&log->mu);
      free_chunk_list(head);
      txmq__pool_put(&log->batch_pool, b);
      return TXMQ_EFAILED;
    }
    for (txmq__chunk_t* c = head; c != NULL; c = c->next)
      tc_put(log, c->start, c->data, c->len);
    if (log->pend_tail != NULL)
      log->pend_tail->next = head;
    else
      log->pend_head = head;
    log->pend_tail = last;
    uv_cond_signal(&log->cond);
    uv_mutex_unlock(&log->mu);
    log->tail_base = tbase;
    log->tail_id = tid;
  }
  log->next_pos = end;
  if (b != NULL) batch_push(log, b);
  return 0;
}

int txmq_log_flush(txmq_log_t* log, txmq_log_append_cb cb, void* arg) {
  if (log == NULL) return TXMQ_EINVAL;
  if (log->state != TXMQ__LOG_OPEN) return TXMQ_ECLOSED;
  if (log->read_only) return TXMQ_EROFS;
  if (log->failed_seen != 0) return TXMQ_EFAILED;
  txmq__batch_t* b = NULL;
  if (cb != NULL) {
    b = txmq__pool_get(&log->batch_pool);
    if (b == NULL) return TXMQ_ENOMEM;
    b->next = NULL;
    b->first = b->end = log->next_pos;
    b->need_durable = 1;
    b->cb = cb;
    b->arg = arg;
  }
  uv_mutex_lock(&log->mu);
  int failed = log->pub_err != 0;
  if (!failed) {
    log->sync_req = 1;
    uv_cond_signal(&log->cond);
  }
  uv_mutex_unlock(&log->mu);
  if (failed) {
    txmq__pool_put(&log->batch_pool, b);
    return TXMQ_EFAILED;
  }
  if (b != NULL) batch_push(log, b);
  return 0;
}

/* Reads. */

static int read_corrupt(txmq_log_t* log, uint64_t pos, uint64_t seg_base,
                        const char* why) {
  txmq__log_diag_reset(log);
  txmq__log_diagf(
      log, "record at position %" PRIu64 " (segment %020" PRIu64 ".log): %s",
      pos, seg_base, why);
  return TXMQ_ECORRUPT;
}

static int grow(uint8_t** buf, size_t* cap, size_t need) {
  if (*cap >= need) return 0;
  size_t ncap = *cap ? *cap : READ_AHEAD;
  while (ncap < need) ncap *= 2;
  uint8_t* p = realloc(*buf, ncap);
  if (p == NULL) return TXMQ_ENOMEM;
  *buf = p;
  *cap = ncap;
  return 0;
}

static size_t find_seg(const txmq_log_t* log, uint64_t pos) {
  size_t lo = 0, hi = log->nsegs; /* last segment with base <= pos */
  while (hi - lo > 1) {
    size_t mid = lo + (hi - lo) / 2;
    if (log->segs[mid].base <= pos)
      lo = mid;
    else
      hi = mid;
  }
  return lo;
}

/* Closes the read fd of segment i if it is open (before the segment
 * leaves the table). */
static void seg_close(txmq_log_t* log, size_t i) {
  txmq__seg_t* s = &log->segs[i];
  if (s->rfd < 0) return;
  close(s->rfd);
  s->rfd = -1;
  for (size_t k = 0; k < log->nrfds; k++)
    if (log->rfd_bases[k] == s->base) {
      log->rfd_bases[k] = log->rfd_bases[--log->nrfds];
      break;
    }
}

/* The read fd of segment s, opened if it is not. At most
 * TXMQ__LOG_MAX_RFDS are open; to open one more, the least recently used
 * is closed. A miss costs an open() and a look over the open ones, never
 * over every segment. Returns the fd, or -1 with errno set. */
static int seg_fd(txmq_log_t* log, txmq__seg_t* s) {
  if (s->rfd < 0) {
    if (log->nrfds >= TXMQ__LOG_MAX_RFDS) {
      size_t lru = 0;
      for (size_t k = 1; k < log->nrfds; k++)
        if (log->segs[find_seg(log, log->rfd_bases[k])].used <
            log->segs[find_seg(log, log->rfd_bases[lru])].used)
          lru = k;
      seg_close(log, find_seg(log, log->rfd_bases[lru]));
    }
    char name[TXMQ__LOG_NAME_LEN + 1];
    snprintf(name, sizeof name, "%020" PRIu64 ".log", s->base);
    s->rfd = openat(log->dirfd, name, O_RDONLY | O_CLOEXEC);
    if (s->rfd < 0) return -1;
    log->rfd_bases[log->nrfds++] = s->base;
  }
  s->used = ++log->rfd_clock;
  return s->rfd;
}

static int read_at(txmq_log_t* log, uint64_t pos, uint8_t** buf, size_t* cap,
                   txmq_log_entry_t* out) {
  if (log->state != TXMQ__LOG_OPEN && log->state != TXMQ__LOG_CLOSING)
    return TXMQ_ECLOSED;
  if (pos < txmq_log_begin(log) || pos >= log->end_seen) return TXMQ_ERANGE;
  uint8_t rh[RHDR];
  if (tc_get(log, pos, rh, RHDR)) {
    /* Bytes this process appended: no pread. The record is checked as one
     * read from a file would be (a position inside a record is not one). */
    uint32_t len = txmq__get_le32(rh + 4), checked;
    if (len <= TXMQ_LOG_MAX_RECORD &&
        grow(buf, cap, RHDR + (size_t)len) == 0 &&
        tc_get(log, pos, *buf, RHDR + (size_t)len) &&
        txmq__log_rec_check(*buf, RHDR + (size_t)len, pos, &checked) ==
            TXMQ__REC_OK) {
      log->tc_hits++;
      out->pos = pos;
      out->next = pos + RHDR + len;
      out->type = (*buf)[8];
      out->data = *buf + RHDR;
      out->len = len;
      return 0;
    }
  }
  txmq__seg_t* s = &log->segs[find_seg(log, pos)];
  size_t idx = (size_t)(s - log->segs);
  uint64_t seg_end =
      idx + 1 < log->nsegs ? log->segs[idx + 1].base : log->end_seen;
  uint64_t avail = seg_end - pos;
  if (avail < RHDR)
    return read_corrupt(log, pos, s->base,
                        txmq__log_rec_problem(TXMQ__REC_SHORT_HEADER));
  size_t first = avail < READ_AHEAD ? (size_t)avail : READ_AHEAD;
  if (grow(buf, cap, first) != 0) return TXMQ_ENOMEM;
  uint64_t off = HDR + (pos - s->base);
  int fd = seg_fd(log, s);
  int err = fd < 0 ? errno : txmq__pread_full(fd, *buf, first, off);
  if (err == 0) {
    uint32_t len = txmq__get_le32(*buf + 4);
    if (len > TXMQ_LOG_MAX_RECORD)
      return read_corrupt(log, pos, s->base,
                          txmq__log_rec_problem(TXMQ__REC_TOO_BIG));
    if (RHDR + (uint64_t)len > avail)
      return read_corrupt(log, pos, s->base,
                          txmq__log_rec_problem(TXMQ__REC_PAST_END));
    size_t whole = RHDR + (size_t)len;
    if (whole > first) {
      if (grow(buf, cap, whole) != 0) return TXMQ_ENOMEM;
      err = txmq__pread_full(fd, *buf + first, whole - first, off + first);
    }
  }
  if (err == ENODATA)
    return read_corrupt(log, pos, s->base, "segment file shorter than the log");
  if (err != 0) {
    txmq__log_diag_reset(log);
    txmq__log_diagf(log, "read at position %" PRIu64 ": %s", pos,
                    strerror(err));
    return txmq_err_from_errno(err);
  }
  uint32_t len;
  int problem = txmq__log_rec_check(*buf, avail, pos, &len);
  if (problem != TXMQ__REC_OK)
    return read_corrupt(log, pos, s->base, txmq__log_rec_problem(problem));
  out->pos = pos;
  out->next = pos + RHDR + len;
  out->type = (*buf)[8];
  out->data = *buf + RHDR;
  out->len = len;
  return 0;
}

int txmq_log_read(txmq_log_t* log, uint64_t pos, txmq_log_entry_t* out) {
  if (log == NULL || out == NULL) return TXMQ_EINVAL;
  return read_at(log, pos, &log->rbuf, &log->rcap, out);
}

uint64_t txmq_log_begin(const txmq_log_t* log) {
  return log->nsegs > 0 ? log->segs[0].base : log->end_seen;
}
uint64_t txmq_log_end(const txmq_log_t* log) {
  return log->end_seen;
}
uint64_t txmq_log_durable_end(const txmq_log_t* log) {
  return log->durable_seen;
}
uint64_t txmq_log_next_pos(const txmq_log_t* log) {
  return log->next_pos;
}
int txmq_log_is_read_only(const txmq_log_t* log) {
  return log->read_only;
}
size_t txmq_log_segment_count(const txmq_log_t* log) {
  return log->nsegs;
}
uint64_t txmq_log_segment_base(const txmq_log_t* log, size_t i) {
  return i < log->nsegs ? log->segs[i].base : UINT64_MAX;
}
uint64_t txmq_log_fsync_count(const txmq_log_t* log) {
  return atomic_load(&((txmq_log_t*)log)->nfsync);
}
uint64_t txmq_log_write_count(const txmq_log_t* log) {
  return atomic_load(&((txmq_log_t*)log)->nwrite);
}
uint64_t txmq_log_cache_hits(const txmq_log_t* log) {
  return log->tc_hits;
}
const char* txmq_log_diag(const txmq_log_t* log) {
  return log->diag;
}
uint64_t txmq_log_torn_bytes(const txmq_log_t* log) {
  return log->torn_bytes;
}

int txmq_log_corruption(const txmq_log_t* log, uint64_t* segment_base,
                        uint64_t* pos) {
  if (!log->corrupt) return TXMQ_ENOTFOUND;
  if (segment_base != NULL) *segment_base = log->corrupt_seg;
  if (pos != NULL) *pos = log->corrupt_pos;
  return 0;
}

/* Retention. */

void txmq_log_set_keep_cb(txmq_log_t* log, txmq_log_keep_cb cb, void* arg) {
  log->keep_cb = cb;
  log->keep_arg = arg;
}

int txmq_log_apply_retention(txmq_log_t* log, size_t* deleted) {
  if (deleted != NULL) *deleted = 0;
  if (log == NULL) return TXMQ_EINVAL;
  if (log->state != TXMQ__LOG_OPEN) return TXMQ_ECLOSED;
  if (log->read_only) return TXMQ_EROFS;
  if (log->retain_bytes == 0 && log->retain_seconds == 0) return 0;
  if (log->nsegs == 0) return 0;
  uint64_t total = (log->end_seen - log->segs[0].base) + HDR * log->nsegs;
  time_t now = time(NULL);
  txmq__unlink_t *head = NULL, **link = &head, *last = NULL;
  size_t n = 0;
  /* The newest segment in the table is never deleted: it is the one being
   * written, or the writer has only just left it. Every older one is
   * complete and fdatasynced (the writer syncs a segment before rolling). */
  while (n + 1 < log->nsegs) {
    const txmq__seg_t* s = &log->segs[n];
    uint64_t end = log->segs[n + 1].base;
    int by_size = log->retain_bytes != 0 && total > log->retain_bytes;
    int by_age = 0;
    if (!by_size && log->retain_seconds != 0) {
      struct stat st;
      char name[TXMQ__LOG_NAME_LEN + 1];
      snprintf(name, sizeof name, "%020" PRIu64 ".log", s->base);
      by_age = fstatat(log->dirfd, name, &st, 0) == 0 && now > st.st_mtime &&
               (uint64_t)(now - st.st_mtime) > log->retain_seconds;
    }
    if (!by_size && !by_age) break;
    if (log->keep_cb != NULL && log->keep_cb(log->keep_arg, s->base, end))
      break;
    size_t plen = strlen(log->dir) + TXMQ__LOG_NAME_LEN + 2;
    txmq__unlink_t* u = malloc(sizeof *u + plen);
    if (u == NULL) break; /* retention is retried later; nothing is lost */
    u->next = NULL;
    txmq__log_seg_path(u->path, plen, log->dir, s->base);
    *link = u;
    link = &u->next;
    last = u;
    total -= HDR + (end - s->base);
    n++;
  }
  if (n == 0) return 0;
  for (size_t i = 0; i < n; i++) seg_close(log, i);
  memmove(log->segs, log->segs + n, (log->nsegs - n) * sizeof *log->segs);
  log->nsegs -= n;
  /* The writer unlinks, each followed by a directory fsync: the loop thread
   * never waits for the disk (see unlink_retired in log_writer.c). */
  uv_mutex_lock(&log->mu);
  if (log->unlink_tail != NULL)
    log->unlink_tail->next = head;
  else
    log->unlink_head = head;
  log->unlink_tail = last;
  uv_cond_signal(&log->cond);
  uv_mutex_unlock(&log->mu);
  if (deleted != NULL) *deleted = n;
  return 0;
}

/* Close and free. */

int txmq_log_close(txmq_log_t* log, txmq_log_close_cb cb, void* arg) {
  if (log == NULL) return TXMQ_EINVAL;
  if (log->state == TXMQ__LOG_CLOSING || log->state == TXMQ__LOG_CLOSED)
    return TXMQ_ECLOSED;
  if (log->state == TXMQ__LOG_NEW || log->read_only) {
    release_files(log);
    log->state = TXMQ__LOG_CLOSED;
    if (cb != NULL) cb(log, arg);
    return 0;
  }
  log->state = TXMQ__LOG_CLOSING;
  log->close_cb = cb;
  log->close_arg = arg;
  uv_ref((uv_handle_t*)&log->async); /* until close_cb has run */
  uv_mutex_lock(&log->mu);
  log->stop = 1;
  uv_cond_signal(&log->cond);
  uv_mutex_unlock(&log->mu);
  return 0;
}

void txmq_log_free(txmq_log_t* log) {
  if (log == NULL) return;
  /* A read-write log still open owns a thread and a handle: freeing it
   * would leave both pointing at freed memory, so it is refused (leaked). */
  if (log->thread_live || log->async_live) return;
  release_files(log);
  free(log->segs);
  while (log->batch_head != NULL) {
    txmq__batch_t* b = log->batch_head;
    log->batch_head = b->next;
    free(b);
  }
  txmq__pool_drain(&log->batch_pool);
  free_chunk_list(log->pend_head);
  while (log->unlink_head != NULL) {
    txmq__unlink_t* u = log->unlink_head;
    log->unlink_head = u->next;
    free(u);
  }
  free(log->rbuf);
  free(log->tc);
  log->tc = NULL;
  if (log->sync_init) {
    uv_cond_destroy(&log->cond);
    uv_mutex_destroy(&log->mu);
  }
  free(log->dir);
  free(log);
}

/* Iterators. */

/* Iterators read a window of up to ITER_WINDOW bytes of one segment with
 * one pread and parse the records inside it: replaying a log at open would
 * otherwise cost a system call per record. Bytes below the readable end
 * never change, so a window stays valid while the iterator walks through
 * it. Anything unusual - a record larger than the window, a read error, a
 * bad record - goes through read_at, so diagnostics are those of
 * txmq_log_read. */
#define ITER_WINDOW (1u << 20)

struct txmq_log_iter_s {
  txmq_log_t* log;
  uint64_t cur;
  uint64_t to;
  int stopped; /* the error that stopped it, or 0 */
  uint8_t* buf;
  size_t cap;
  uint8_t* win;  /* ITER_WINDOW bytes, allocated on first use */
  uint64_t wpos; /* position of win[0] */
  size_t wlen;   /* valid bytes in win */
  uint64_t skip_until;  /* txmq_log_iter_skip */
  uint8_t skip[256];
};

int txmq_log_iter_skip(txmq_log_iter_t* it, uint64_t until,
                       const uint8_t* types, size_t n) {
  if (it == NULL || (types == NULL && n > 0)) return TXMQ_EINVAL;
  memset(it->skip, 0, sizeof it->skip);
  for (size_t i = 0; i < n; i++) it->skip[types[i]] = 1;
  it->skip_until = until;
  return 0;
}

/* The record at it->cur is one to step over if its header says so: the
 * window holds it whole, its length, type and position are right. */
static int iter_skippable(const txmq_log_iter_t* it, uint64_t* next) {
  if (it->cur >= it->skip_until || it->cur < it->wpos ||
      it->cur - it->wpos + RHDR > it->wlen)
    return 0;
  const uint8_t* p = it->win + (it->cur - it->wpos);
  size_t have = it->wlen - (size_t)(it->cur - it->wpos);
  uint32_t len;
  if (!it->skip[p[8]] ||
      txmq__log_rec_check_header(p, have, it->cur, &len) != TXMQ__REC_OK)
    return 0;
  *next = it->cur + RHDR + len;
  return 1;
}

int txmq_log_iter_new(txmq_log_t* log, uint64_t from, uint64_t to,
                      txmq_log_iter_t** out) {
  if (log == NULL || out == NULL || to < from) return TXMQ_EINVAL;
  *out = NULL;
  if (log->state != TXMQ__LOG_OPEN && log->state != TXMQ__LOG_CLOSING)
    return TXMQ_ECLOSED;
  if (from < txmq_log_begin(log) || from > log->next_pos) return TXMQ_ERANGE;
  txmq_log_iter_t* it = calloc(1, sizeof *it);
  if (it == NULL) return TXMQ_ENOMEM;
  it->log = log;
  it->cur = from;
  it->to = to;
  *out = it;
  return 0;
}

/* The record at it->cur if it lies whole and valid inside the window. */
static int iter_parse(txmq_log_iter_t* it, txmq_log_entry_t* out) {
  if (it->cur < it->wpos || it->cur - it->wpos + RHDR > it->wlen) return 0;
  const uint8_t* p = it->win + (it->cur - it->wpos);
  size_t have = it->wlen - (size_t)(it->cur - it->wpos);
  uint32_t len = txmq__get_le32(p + 4);
  if (len > TXMQ_LOG_MAX_RECORD || RHDR + (size_t)len > have) return 0;
  uint32_t checked;
  if (txmq__log_rec_check(p, have, it->cur, &checked) != TXMQ__REC_OK) return 0;
  out->pos = it->cur;
  out->next = it->cur + RHDR + checked;
  out->type = p[8];
  out->data = p + RHDR;
  out->len = checked;
  return 1;
}

/* Refills the window from it->cur to the end of its segment (at most
 * ITER_WINDOW bytes) when the record is not already in it. */
static int iter_window(txmq_log_iter_t* it, txmq_log_entry_t* out) {
  if (iter_parse(it, out)) return 1;
  txmq_log_t* log = it->log;
  if (log->state != TXMQ__LOG_OPEN && log->state != TXMQ__LOG_CLOSING) return 0;
  if (it->win == NULL && (it->win = malloc(ITER_WINDOW)) == NULL) return 0;
  size_t idx = find_seg(log, it->cur);
  txmq__seg_t* s = &log->segs[idx];
  uint64_t seg_end =
      idx + 1 < log->nsegs ? log->segs[idx + 1].base : log->end_seen;
  if (it->cur >= seg_end) return 0;
  uint64_t n = seg_end - it->cur;
  if (n > ITER_WINDOW) n = ITER_WINDOW;
  it->wlen = 0;
  int fd = seg_fd(log, s);
  if (fd < 0 || txmq__pread_full(fd, it->win, (size_t)n,
                                 HDR + (it->cur - s->base)) != 0)
    return 0;
  it->wpos = it->cur;
  it->wlen = (size_t)n;
  return iter_parse(it, out);
}

int txmq_log_iter_next(txmq_log_iter_t* it, txmq_log_entry_t* out) {
  if (it == NULL || out == NULL) return TXMQ_EINVAL;
  if (it->stopped != 0) return it->stopped;
  uint64_t limit = it->log->end_seen < it->to ? it->log->end_seen : it->to;
  for (;;) {
    if (it->cur >= limit) return TXMQ_ENOTFOUND;
    uint64_t next;
    if (it->cur < it->skip_until && iter_skippable(it, &next)) {
      it->cur = next;
      continue;
    }
    if (it->cur >= txmq_log_begin(it->log) && iter_window(it, out)) {
      it->cur = out->next;
    } else {
      int rc = read_at(it->log, it->cur, &it->buf, &it->cap, out);
      if (rc == TXMQ_ECORRUPT) it->stopped = rc;
      if (rc != 0) return rc;
      it->cur = out->next;
    }
    if (out->pos < it->skip_until && it->skip[out->type]) continue;
    return 0;
  }
}

void txmq_log_iter_free(txmq_log_iter_t* it) {
  if (it == NULL) return;
  free(it->win);
  free(it->buf);
  free(it);
}

int txmq_log_failed(const txmq_log_t* log) { return log->failed_seen; }

void txmq__log_inject_fault(txmq_log_t* log, int what, int err) {
  atomic_store(what == 0 ? &log->fault_write : &log->fault_sync, err);
}
