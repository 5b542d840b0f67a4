/*
 * checkpoint.c - the store's checkpoint: what it records, how it is written
 * without stalling the loop, and how it is read back and verified.
 *
 * FILE (<data>/checkpoint, all integers little-endian)
 *   0..7    "TXMQCKP1"
 *   8..11   crc32c of bytes 12..end (the length and the map)
 *   12..15  length of the map
 *   16..    msgpack map:
 *             "v"           1
 *             "applied"     every log record before it is in the indexes
 *             "replay_from" replay at open starts here (<= applied)
 *             "snapshot"    (optional) the position of the part's snapshot
 *                           an open may use with this checkpoint (<=
 *                           applied); absent: the one taken at applied
 *             "topics"      [[name, nqueues, [[begin, count], ...]], ...]
 *             "offsets"     [[group, topic, qid, offset], ...]
 *
 * A checkpoint runs in three steps. (1) txmq_log_flush: the log's callbacks
 * run in order, so when the flush completes every earlier append has been
 * applied and is durable. (2) On the loop, the state is captured: applied,
 * the replay floor, the counts, the offsets, the page ranges of index
 * entries written since the last checkpoint and the files and directories
 * created since then. (3) On the libuv threadpool: msync those ranges,
 * fdatasync the new files, fsync the directories, then write the checkpoint
 * to a temporary file, fdatasync it, rename it over the old one and fsync
 * the data directory. The order matters: the checkpoint promises that the
 * index entries below its counts are on disk, so they must be before it.
 *
 * SNAPSHOT (<data>/snapshot.0 and <data>/snapshot.1, little-endian)
 *   0..7    "TXMQSNP1"
 *   8..11   crc32c of bytes 12..end
 *   12..15  version (1)
 *   16..23  length of the payload
 *   24..31  applied: the checkpoint this snapshot belongs to
 *   32..39  seq: one more than the last snapshot seen or written
 *   40..    the payload of the part that registered it (store_int.h; the
 *           transaction engine's format is described in core/tx/tx.c)
 * When a part registers a snapshot, step (2) of the first checkpoint, of
 * one every snapshot interval and of the one at close also asks it for its
 * state as of the same applied position (the capture holds the loop, so
 * not every checkpoint does), and step (3) writes it, before the
 * checkpoint, the same way: temporary file (snapshot.tmp), fdatasync,
 * rename, fsync of the directory. Every checkpoint names the snapshot an
 * open may use with it ("snapshot": the one it wrote, else the one in use).
 * There are two slots and a snapshot goes to the one the snapshot in use
 * does not occupy, so a crash between the snapshot's rename and the
 * checkpoint's leaves the old checkpoint with the snapshot it names still
 * in the other slot. At open only the slot taken at the named position is
 * used (the higher seq when both are); the replay starts there. A snapshot
 * that fails to write does not fail the checkpoint (the next open replays
 * from the replay floor instead).
 *
 * This unit does not decide when checkpoints run (store.c's timer and
 * close) and does not apply what it loads beyond filling the store.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "store/store_impl.h"

typedef struct {
  void* addr;
  size_t len;
} range_t;

struct txmq__ckpt_s {
  txmq_store_t* st;
  uv_work_t req;
  txmq_store_done_cb cb;
  void* arg;
  /* Captured on the loop, used by the worker. */
  uint8_t* file;
  size_t file_len;
  range_t* ranges;
  size_t nranges;
  size_t ranges_cap;
  txmq__strv_t files;
  txmq__strv_t dirs;
  uint64_t applied;
  uint64_t replay_from;
  uint64_t mutations;
  /* The part's snapshot, when one was captured (snap_buf not NULL). */
  void* snap_buf;
  size_t snap_len;
  uint8_t snap_hdr[TXMQ__SNAP_HEADER];
  int snap_slot;
  uint64_t snap_seq;
  /* Set by the worker. */
  int status;
  int snap_status;
  char why[512];
  char snap_why[512];
};

/* ---- encoding ---- */

static int pk_str(msgpack_packer* pk, const char* s) {
  size_t n = strlen(s);
  return msgpack_pack_str(pk, n) || msgpack_pack_str_body(pk, s, n);
}

int txmq__ckpt_encode(txmq_store_t* st, uint64_t applied, uint64_t replay_from,
                      uint64_t snap_at, void** buf, size_t* len) {
  msgpack_sbuffer sb;
  msgpack_packer pk;
  msgpack_sbuffer_init(&sb);
  msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
  int e = msgpack_pack_map(&pk, snap_at == UINT64_MAX ? 5 : 6);
  e = e || pk_str(&pk, "v") || msgpack_pack_uint32(&pk, TXMQ__CKPT_VERSION);
  e = e || pk_str(&pk, "applied") || msgpack_pack_uint64(&pk, applied);
  e = e || pk_str(&pk, "replay_from") || msgpack_pack_uint64(&pk, replay_from);
  if (snap_at != UINT64_MAX)
    e = e || pk_str(&pk, "snapshot") || msgpack_pack_uint64(&pk, snap_at);
  e = e || pk_str(&pk, "topics") || msgpack_pack_array(&pk, st->ntopics);
  for (size_t i = 0; i < st->ntopics && !e; i++) {
    const txmq__topic_t* t = st->topics[i];
    e = msgpack_pack_array(&pk, 3) || pk_str(&pk, t->name) ||
        msgpack_pack_int(&pk, t->nqueues) ||
        msgpack_pack_array(&pk, (size_t)t->nqueues);
    for (int q = 0; q < t->nqueues && !e; q++) {
      e = msgpack_pack_array(&pk, 2) ||
          msgpack_pack_int64(&pk, t->queues[q].begin) ||
          msgpack_pack_int64(&pk, t->queues[q].count);
    }
  }
  e = e || pk_str(&pk, "offsets") || msgpack_pack_array(&pk, st->noffsets);
  for (size_t i = 0; i < st->noffsets && !e; i++) {
    const txmq__offset_t* o = st->offsets[i];
    e = msgpack_pack_array(&pk, 4) || pk_str(&pk, o->group) ||
        pk_str(&pk, o->topic) || msgpack_pack_int(&pk, o->qid) ||
        msgpack_pack_int64(&pk, o->offset);
  }
  if (e) {
    msgpack_sbuffer_destroy(&sb);
    return TXMQ_ENOMEM;
  }
  *len = sb.size;
  *buf = msgpack_sbuffer_release(&sb);
  return 0;
}

/* ---- loading ---- */

static int obj_str(const msgpack_object* o, char* out, size_t cap) {
  if (o->type != MSGPACK_OBJECT_STR || o->via.str.size >= cap) return -1;
  memcpy(out, o->via.str.ptr, o->via.str.size);
  out[o->via.str.size] = '\0';
  if (strlen(out) != o->via.str.size) return -1;
  return txmq_name_valid(out) ? 0 : -1;
}

static int obj_u64(const msgpack_object* o, uint64_t* v) {
  if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER) return -1;
  *v = o->via.u64;
  return 0;
}

static int obj_i64(const msgpack_object* o, int64_t min, int64_t max,
                   int64_t* v) {
  if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER || o->via.u64 > (uint64_t)max)
    return -1;
  *v = (int64_t)o->via.u64;
  return *v < min ? -1 : 0;
}

static int key_is(const msgpack_object* k, const char* s) {
  size_t n = strlen(s);
  return k->type == MSGPACK_OBJECT_STR && k->via.str.size == n &&
         memcmp(k->via.str.ptr, s, n) == 0;
}

/* Fills the store from the map; on failure *why says what was wrong. */
static int load_map(txmq_store_t* st, const msgpack_object* root,
                    uint64_t* applied, uint64_t* replay_from,
                    uint64_t* snap_at, const char** why) {
  const msgpack_object *v = NULL, *ap = NULL, *rf = NULL, *topics = NULL,
                       *offsets = NULL, *sn = NULL;
  *why = "not a map";
  if (root->type != MSGPACK_OBJECT_MAP) return -1;
  for (uint32_t i = 0; i < root->via.map.size; i++) {
    const msgpack_object* k = &root->via.map.ptr[i].key;
    const msgpack_object* val = &root->via.map.ptr[i].val;
    const msgpack_object** slot = key_is(k, "v")             ? &v
                                  : key_is(k, "applied")     ? &ap
                                  : key_is(k, "replay_from") ? &rf
                                  : key_is(k, "topics")      ? &topics
                                  : key_is(k, "offsets")     ? &offsets
                                  : key_is(k, "snapshot")    ? &sn
                                                             : NULL;
    if (slot == NULL) continue;
    *why = "duplicate key";
    if (*slot != NULL) return -1;
    *slot = val;
  }
  uint64_t ver;
  *why = "missing or bad version";
  if (v == NULL || obj_u64(v, &ver) != 0 || ver != TXMQ__CKPT_VERSION) return -1;
  *why = "missing or bad applied/replay_from";
  if (ap == NULL || rf == NULL || obj_u64(ap, applied) != 0 ||
      obj_u64(rf, replay_from) != 0 || *replay_from > *applied)
    return -1;
  *why = "bad snapshot position";
  *snap_at = *applied;
  if (sn != NULL && (obj_u64(sn, snap_at) != 0 || *snap_at > *applied))
    return -1;
  *why = "missing or bad topics";
  if (topics == NULL || topics->type != MSGPACK_OBJECT_ARRAY) return -1;
  for (uint32_t i = 0; i < topics->via.array.size; i++) {
    const msgpack_object* t = &topics->via.array.ptr[i];
    char name[TXMQ_NAME_MAX + 1];
    int64_t nq;
    *why = "bad topic entry";
    if (t->type != MSGPACK_OBJECT_ARRAY || t->via.array.size != 3 ||
        obj_str(&t->via.array.ptr[0], name, sizeof name) != 0 ||
        obj_i64(&t->via.array.ptr[1], 1, TXMQ_STORE_MAX_QUEUES, &nq) != 0)
      return -1;
    const msgpack_object* qs = &t->via.array.ptr[2];
    if (qs->type != MSGPACK_OBJECT_ARRAY || qs->via.array.size != nq) return -1;
    *why = "duplicate topic";
    if (txmq__store_topic(st, name) != NULL) return -1;
    txmq__topic_t* tp;
    *why = "out of memory";
    if (txmq__store_topic_add(st, name, (int)nq, &tp) != 0) return -1;
    for (int q = 0; q < nq; q++) {
      const msgpack_object* e = &qs->via.array.ptr[q];
      int64_t b, c;
      *why = "bad queue entry";
      if (e->type != MSGPACK_OBJECT_ARRAY || e->via.array.size != 2 ||
          obj_i64(&e->via.array.ptr[0], 0, INT64_MAX, &b) != 0 ||
          obj_i64(&e->via.array.ptr[1], 0, INT64_MAX, &c) != 0 || b > c)
        return -1;
      tp->queues[q].begin = b;
      tp->queues[q].count = c;
      tp->queues[q].synced = c;
    }
  }
  *why = "missing or bad offsets";
  if (offsets == NULL || offsets->type != MSGPACK_OBJECT_ARRAY) return -1;
  for (uint32_t i = 0; i < offsets->via.array.size; i++) {
    const msgpack_object* o = &offsets->via.array.ptr[i];
    char group[TXMQ_NAME_MAX + 1], topic[TXMQ_NAME_MAX + 1];
    int64_t qid, off;
    *why = "bad offset entry";
    if (o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size != 4 ||
        obj_str(&o->via.array.ptr[0], group, sizeof group) != 0 ||
        obj_str(&o->via.array.ptr[1], topic, sizeof topic) != 0 ||
        obj_i64(&o->via.array.ptr[2], 0, TXMQ_STORE_MAX_QUEUES - 1, &qid) != 0 ||
        obj_i64(&o->via.array.ptr[3], 0, INT64_MAX, &off) != 0)
      return -1;
    *why = "out of memory";
    if (txmq__store_offset_put(st, group, topic, (int)qid, off) != 0) return -1;
  }
  return 0;
}

int txmq__ckpt_load(txmq_store_t* st, uint64_t* applied,
                    uint64_t* replay_from, uint64_t* snap_at) {
  int fd = open(st->ckpt_path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return TXMQ_ENOTFOUND;
    txmq__store_diag_add(st, "cannot open checkpoint: %s", strerror(errno));
    return TXMQ_ECORRUPT;
  }
  struct stat sb;
  uint8_t* buf = NULL;
  const char* why = NULL;
  int rc = 0;
  if (fstat(fd, &sb) != 0) {
    why = "cannot stat";
  } else if (sb.st_size < TXMQ__CKPT_HEADER) {
    why = "shorter than its header";
  } else if (sb.st_size > (off_t)1 << 34) {
    why = "larger than any checkpoint can be";
  } else if ((buf = malloc((size_t)sb.st_size)) == NULL) {
    rc = TXMQ_ENOMEM;
  } else {
    size_t got = 0, n = (size_t)sb.st_size;
    while (got < n) {
      ssize_t r = read(fd, buf + got, n - got);
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) break;
      got += (size_t)r;
    }
    if (got != n) {
      why = "short read";
    } else if (memcmp(buf, TXMQ__CKPT_MAGIC, 8) != 0) {
      why = "bad magic";
    } else if ((uint64_t)txmq__ld_le32(buf + 12) + TXMQ__CKPT_HEADER != n) {
      why = "length does not match the file size";
    } else if (txmq_crc32c(0, buf + 12, n - 12) != txmq__ld_le32(buf + 8)) {
      why = "crc mismatch";
    } else {
      msgpack_unpacked u;
      msgpack_unpacked_init(&u);
      int r = txmq__mp_unpack(buf + TXMQ__CKPT_HEADER, n - TXMQ__CKPT_HEADER,
                              6, SIZE_MAX, &u);
      if (r != 0) why = "not valid msgpack";
      else if (load_map(st, &u.data, applied, replay_from, snap_at, &why) ==
               0)
        why = NULL;
      msgpack_unpacked_destroy(&u);
    }
  }
  close(fd);
  free(buf);
  if (why != NULL) {
    txmq__store_diag_add(st, "checkpoint is corrupt (%s)", why);
    rc = TXMQ_ECORRUPT;
  }
  /* Nothing of a bad checkpoint is kept: not its topics, not its offsets. */
  if (rc != 0) txmq__store_forget_all(st);
  return rc;
}

/* ---- the part's snapshot at open ---- */

typedef struct {
  int ok;          /* magic, version and size check out */
  int present;     /* the file exists */
  uint64_t len, applied, seq;
  char why[160];
} snap_head_t;

static int read_full(int fd, void* buf, size_t len, off_t at) {
  size_t got = 0;
  while (got < len) {
    ssize_t r = pread(fd, (uint8_t*)buf + got, len - got, at + (off_t)got);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return -1;
    got += (size_t)r;
  }
  return 0;
}

/* Reads and checks a slot's header; the file is left open in *fd when it
 * is ok. */
static void snap_head(const char* path, snap_head_t* h, int* fd) {
  memset(h, 0, sizeof *h);
  *fd = open(path, O_RDONLY | O_CLOEXEC);
  if (*fd < 0) {
    h->present = errno != ENOENT;
    snprintf(h->why, sizeof h->why, "%s", errno == ENOENT ? "missing"
                                                          : strerror(errno));
    return;
  }
  h->present = 1;
  struct stat sb;
  uint8_t b[TXMQ__SNAP_HEADER];
  if (fstat(*fd, &sb) != 0) {
    snprintf(h->why, sizeof h->why, "cannot stat: %s", strerror(errno));
  } else if (sb.st_size < TXMQ__SNAP_HEADER ||
             read_full(*fd, b, sizeof b, 0) != 0) {
    snprintf(h->why, sizeof h->why, "shorter than its header");
  } else if (memcmp(b, TXMQ__SNAP_MAGIC, 8) != 0) {
    snprintf(h->why, sizeof h->why, "bad magic");
  } else if (txmq__ld_le32(b + 12) != TXMQ__SNAP_VERSION) {
    snprintf(h->why, sizeof h->why, "version %" PRIu32 ", not %d",
             txmq__ld_le32(b + 12), TXMQ__SNAP_VERSION);
  } else if ((h->len = txmq__ld_le64(b + 16)) >
                 (uint64_t)INT64_MAX - TXMQ__SNAP_HEADER ||
             h->len + TXMQ__SNAP_HEADER != (uint64_t)sb.st_size) {
    snprintf(h->why, sizeof h->why,
             "length %" PRIu64 " does not match the file size", h->len);
  } else {
    h->applied = txmq__ld_le64(b + 24);
    h->seq = txmq__ld_le64(b + 32);
    h->ok = 1;
    return;
  }
  close(*fd);
  *fd = -1;
}

/* Reads the whole slot, checks its crc and hands the payload to the part. */
static int snap_take(txmq_store_t* st, int fd, const snap_head_t* h,
                     uint64_t applied, char* why, size_t why_len) {
  if (h->len + TXMQ__SNAP_HEADER > SIZE_MAX) {
    snprintf(why, why_len, "too large for this machine");
    return TXMQ_ENOMEM;
  }
  size_t n = (size_t)(h->len + TXMQ__SNAP_HEADER);
  uint8_t* buf = malloc(n);
  if (buf == NULL) {
    snprintf(why, why_len, "out of memory for %zu bytes", n);
    return TXMQ_ENOMEM;
  }
  int rc = TXMQ_ECORRUPT;
  if (read_full(fd, buf, n, 0) != 0) {
    snprintf(why, why_len, "short read");
  } else if (txmq_crc32c(0, buf + 12, n - 12) != txmq__ld_le32(buf + 8)) {
    snprintf(why, why_len, "crc mismatch");
  } else if (txmq__ld_le64(buf + 24) != applied) {
    /* Read again with the crc: the header read earlier may have raced a
     * writer that is not us (two openers are refused by the log's lock). */
    snprintf(why, why_len, "changed while read");
  } else {
    char w[256] = "";
    rc = st->snap_ops->load(st->snap_arg, applied, buf + TXMQ__SNAP_HEADER,
                            (size_t)h->len, w, sizeof w);
    if (rc != 0)
      snprintf(why, why_len, "refused: %s", w[0] ? w : txmq_strerror(rc));
  }
  free(buf);
  return rc;
}

int txmq__snap_load(txmq_store_t* st, uint64_t snap_at, uint64_t lb,
                    char* why, size_t why_len) {
  snap_head_t h[2];
  int fd[2];
  st->snap_slot = -1;
  for (int k = 0; k < 2; k++) {
    snap_head(st->snap_path[k], &h[k], &fd[k]);
    if (h[k].ok && h[k].seq > st->snap_seq) st->snap_seq = h[k].seq;
    /* Only the one the checkpoint names: another was taken at a checkpoint
     * that did not complete, or was replaced since. */
    if (h[k].ok && h[k].applied != snap_at) {
      snprintf(h[k].why, sizeof h[k].why,
               "taken at %" PRIu64 ", not at %" PRIu64
               " as the checkpoint says", h[k].applied, snap_at);
      h[k].ok = 0;
    } else if (h[k].ok && snap_at < lb) {
      snprintf(h[k].why, sizeof h[k].why,
               "taken at %" PRIu64 ", before the log's begin at %" PRIu64,
               snap_at, lb);
      h[k].ok = 0;
    }
  }
  /* The newer first (the other is the fallback). */
  int order[2] = {0, 1};
  if (h[0].ok && h[1].ok && h[1].seq > h[0].seq) {
    order[0] = 1;
    order[1] = 0;
  }
  int rc = TXMQ_ENOTFOUND;
  for (int j = 0; j < 2; j++) {
    int k = order[j];
    if (!h[k].ok) continue;
    rc = snap_take(st, fd[k], &h[k], h[k].applied, h[k].why,
                   sizeof h[k].why);
    if (rc == 0) {
      st->snap_slot = k;
      st->snap_applied = snap_at;
      break;
    }
  }
  for (int k = 0; k < 2; k++)
    if (fd[k] >= 0) close(fd[k]);
  if (rc == 0) return 0;
  if (h[0].present || h[1].present) rc = TXMQ_ECORRUPT;
  snprintf(why, why_len, "snapshot.0 %s, snapshot.1 %s", h[0].why, h[1].why);
  return rc;
}

/* ---- writing ---- */

static int add_range(txmq__ckpt_t* c, void* addr, size_t len) {
  if (c->nranges == c->ranges_cap) {
    size_t cap = c->ranges_cap ? c->ranges_cap * 2 : 16;
    range_t* v = realloc(c->ranges, cap * sizeof *v);
    if (v == NULL) return TXMQ_ENOMEM;
    c->ranges = v;
    c->ranges_cap = cap;
  }
  c->ranges[c->nranges].addr = addr;
  c->ranges[c->nranges].len = len;
  c->nranges++;
  return 0;
}

/* Page ranges of the entries [q->synced, q->count) of q. */
static int capture_queue(txmq__ckpt_t* c, txmq__queue_t* q, size_t page) {
  q->ckpt_count = q->count;
  for (size_t i = 0; i < q->nfiles; i++) {
    txmq__idx_file_t* f = &q->files[i];
    uint64_t lo = (uint64_t)q->synced, hi = (uint64_t)q->count;
    uint64_t fe = f->first + f->entries;
    if (f->private_map || hi <= f->first || lo >= fe) continue;
    if (lo < f->first) lo = f->first;
    if (hi > fe) hi = fe;
    size_t b = (size_t)(lo - f->first) * TXMQ_STORE_INDEX_ENTRY_SIZE;
    size_t e = (size_t)(hi - f->first) * TXMQ_STORE_INDEX_ENTRY_SIZE;
    b -= b % page;
    int rc = add_range(c, f->map + b, e - b);
    if (rc != 0) return rc;
  }
  return 0;
}

static void ckpt_free(txmq__ckpt_t* c) {
  free(c->file);
  free(c->snap_buf);
  free(c->ranges);
  txmq__strv_free(&c->files);
  txmq__strv_free(&c->dirs);
  free(c);
}

static void why_errno(txmq__ckpt_t* c, const char* what, const char* path,
                      int err) {
  if (c->status != 0) return;
  c->status = txmq_err_from_errno(err);
  if (c->status == TXMQ_ENOTFOUND) c->status = TXMQ_EIO;
  snprintf(c->why, sizeof c->why, "checkpoint: %s %s: %s", what, path,
           strerror(err));
}

static int sync_path(const char* path, int dir) {
  int fd = open(path, (dir ? O_RDONLY | O_DIRECTORY : O_RDWR) | O_CLOEXEC);
  if (fd < 0) return errno == ENOENT ? 0 : errno;
  int r = dir ? fsync(fd) : fdatasync(fd);
  int err = r != 0 ? errno : 0;
  close(fd);
  /* Some file systems refuse fsync on a directory; their entries are then
   * as durable as they will get. */
  if (dir && (err == EINVAL || err == EBADF)) err = 0;
  return err;
}

static int write_all(int fd, const void* buf, size_t len) {
  const uint8_t* p = buf;
  size_t off = 0;
  while (off < len) {
    ssize_t w = write(fd, p + off, len - off);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return w < 0 ? errno : EIO;
    off += (size_t)w;
  }
  return 0;
}

/* Writes a then b to tmp, fdatasyncs it, renames it over path and fsyncs
 * dir. 0, or the errno of the step that failed, named by *what and *which
 * (the temporary file is then removed). */
static int replace_file(const char* tmp, const char* path, const char* dir,
                        const void* a, size_t alen, const void* b,
                        size_t blen, const char** what, const char** which) {
  *which = tmp;
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    *what = "cannot create";
    return errno;
  }
  int err = write_all(fd, a, alen);
  if (err == 0 && blen > 0) err = write_all(fd, b, blen);
  if (err != 0) *what = "cannot write";
  if (err == 0 && fdatasync(fd) != 0) {
    err = errno;
    *what = "fdatasync of";
  }
  if (close(fd) != 0 && err == 0) {
    err = errno;
    *what = "close of";
  }
  if (err == 0 && rename(tmp, path) != 0) {
    err = errno;
    *what = "rename to";
    *which = path;
  }
  if (err == 0) {
    err = sync_path(dir, 1);
    if (err != 0) {
      *what = "fsync of";
      *which = dir;
    }
    return err;
  }
  unlink(tmp);
  return err;
}

/* Runs on the threadpool. Touches only what was captured into c. */
static void ckpt_work(uv_work_t* req) {
  txmq__ckpt_t* c = req->data;
  txmq_store_t* st = c->st; /* only its immutable paths are read here */
  for (size_t i = 0; i < c->nranges && c->status == 0; i++) {
    if (msync(c->ranges[i].addr, c->ranges[i].len, MS_SYNC) != 0)
      why_errno(c, "msync of", "an index file", errno);
  }
  for (size_t i = 0; i < c->files.n && c->status == 0; i++) {
    int err = sync_path(c->files.v[i], 0);
    if (err) why_errno(c, "fdatasync of", c->files.v[i], err);
  }
  for (size_t i = 0; i < c->dirs.n && c->status == 0; i++) {
    int err = sync_path(c->dirs.v[i], 1);
    if (err) why_errno(c, "fsync of", c->dirs.v[i], err);
  }
  if (c->status != 0) return;

  /* The snapshot first: it goes to the slot the checkpoint on disk does
   * not use, so until the checkpoint below is renamed into place it is
   * not looked at, and after that it is the one that matches. */
  if (c->snap_buf != NULL) {
    uint32_t crc = txmq_crc32c(0, c->snap_hdr + 12, TXMQ__SNAP_HEADER - 12);
    txmq__st_le32(c->snap_hdr + 8, txmq_crc32c(crc, c->snap_buf, c->snap_len));
    const char *what = NULL, *which = NULL;
    int err = replace_file(st->snap_tmp, st->snap_path[c->snap_slot], st->dir,
                           c->snap_hdr, sizeof c->snap_hdr, c->snap_buf,
                           c->snap_len, &what, &which);
    if (err != 0) {
      c->snap_status = txmq_err_from_errno(err);
      if (c->snap_status == 0 || c->snap_status == TXMQ_ENOTFOUND)
        c->snap_status = TXMQ_EIO;
      snprintf(c->snap_why, sizeof c->snap_why, "snapshot: %s %s: %s", what,
               which, strerror(err));
    }
  }

  /* Write-to-temp, fdatasync, rename, fsync the directory: a crash at any
   * point leaves either the old checkpoint or the new one, never a torn
   * mix; without the directory fsync the rename itself could be lost and
   * the old checkpoint would come back after the index entries it counts
   * were trimmed. */
  const char *what = NULL, *which = NULL;
  int err = replace_file(st->ckpt_tmp, st->ckpt_path, st->dir, c->file,
                         c->file_len, NULL, 0, &what, &which);
  if (err != 0) why_errno(c, what, which, err);
}

static void strv_move(txmq__strv_t* to, txmq__strv_t* from) {
  for (size_t i = 0; i < from->n; i++) {
    if (txmq__strv_push(to, from->v[i]) != 0) {
      /* Out of memory: the path is freed by push; the next checkpoint
       * misses one fsync, which a later one's msync largely covers. */
    }
    from->v[i] = NULL;
  }
  from->n = 0;
}

static void ckpt_finish(txmq__ckpt_t* c) {
  txmq_store_t* st = c->st;
  st->ckpt = NULL;
  if (c->snap_buf != NULL && c->snap_seq > st->snap_seq)
    st->snap_seq = c->snap_seq;
  if (c->status == 0) {
    for (size_t i = 0; i < st->ntopics; i++) {
      txmq__topic_t* t = st->topics[i];
      for (int q = 0; q < t->nqueues; q++) {
        /* Entries below the captured count are on disk now. */
        if (t->queues[q].ckpt_count > t->queues[q].synced)
          t->queues[q].synced = t->queues[q].ckpt_count;
      }
    }
    st->durable_floor = c->replay_from;
    if (c->snap_buf != NULL && c->snap_status == 0) {
      st->snap_slot = c->snap_slot;
      st->snap_applied = c->applied;
      st->snap_seq = c->snap_seq;
    } else if (c->snap_why[0]) {
      /* Not captured or not written: the snapshot an open would use is
       * still the one before (its slot was not touched), if any. */
      txmq__store_diag_set(st, "%s", c->snap_why);
    }
    st->ckpt_applied = c->applied;
    st->ckpt_mutations = c->mutations;
    st->ckpt_ever = 1;
  } else {
    /* Give the paths back so the next checkpoint syncs them. */
    strv_move(&st->sync_files, &c->files);
    strv_move(&st->sync_dirs, &c->dirs);
    if (c->why[0]) txmq__store_diag_set(st, "%s", c->why);
  }
  txmq__store_ckpt_done(st, c->status);
  if (c->cb != NULL) c->cb(st, c->status, c->arg);
  ckpt_free(c);
  txmq__store_ckpt_finished(st);
}

static void ckpt_after(uv_work_t* req, int status) {
  txmq__ckpt_t* c = req->data;
  if (status != 0 && c->status == 0) c->status = TXMQ_ECLOSED; /* cancelled */
  ckpt_finish(c);
}

/* Whether this checkpoint also takes the part's snapshot: when there is
 * none an open could use, at close, and when the interval has passed. */
static int snap_due(const txmq_store_t* st) {
  if (st->snap_slot < 0 || st->snap_interval_ms == 0 ||
      st->state == TXMQ__ST_CLOSING)
    return 1;
  return uv_hrtime() / 1000000u - st->snap_last_ms >= st->snap_interval_ms;
}

/* Asks the registered part for its state as of c->applied (on the loop,
 * in the same turn as the store's own capture, so both describe the same
 * instant). Without it the checkpoint still goes on. */
static void snap_capture(txmq__ckpt_t* c) {
  txmq_store_t* st = c->st;
  void* buf = NULL;
  size_t len = 0;
  int rc = st->snap_ops->capture(st->snap_arg, c->applied, &buf, &len);
  if (rc != 0) {
    free(buf);
    snprintf(c->snap_why, sizeof c->snap_why,
             "snapshot: not captured (%s): the next open replays from the "
             "replay floor", txmq_strerror(rc));
    return;
  }
  c->snap_buf = buf;
  c->snap_len = len;
  st->snap_last_ms = uv_hrtime() / 1000000u;
  c->snap_slot = st->snap_slot == 0 ? 1 : 0;
  c->snap_seq = st->snap_seq + 1;
  uint8_t* h = c->snap_hdr;
  memcpy(h, TXMQ__SNAP_MAGIC, 8);
  txmq__st_le32(h + 12, TXMQ__SNAP_VERSION);
  txmq__st_le64(h + 16, (uint64_t)len);
  txmq__st_le64(h + 24, c->applied);
  txmq__st_le64(h + 32, c->snap_seq);
  /* The crc is computed by the worker: the payload can be large. */
}

static void ckpt_flushed(txmq_log_t* log, int status, uint64_t first_pos,
                         void* arg) {
  (void)log;
  (void)first_pos;
  txmq__ckpt_t* c = arg;
  txmq_store_t* st = c->st;
  c->status = status;
  if (status != 0) {
    snprintf(c->why, sizeof c->why, "checkpoint: log flush failed: %s",
             txmq_strerror(status));
    ckpt_finish(c);
    return;
  }
  size_t page = (size_t)sysconf(_SC_PAGESIZE);
  int rc = 0;
  for (size_t i = 0; i < st->ntopics && rc == 0; i++) {
    txmq__topic_t* t = st->topics[i];
    for (int q = 0; q < t->nqueues && rc == 0; q++) {
      txmq__index_update_begin(st, &t->queues[q]);
      rc = capture_queue(c, &t->queues[q], page);
    }
  }
  c->applied = st->applied;
  uint64_t floor = st->floor_cb ? st->floor_cb(st, st->floor_arg) : UINT64_MAX;
  c->replay_from = floor < c->applied ? floor : c->applied;
  c->mutations = st->mutations;
  if (rc == 0 && st->snap_ops != NULL && snap_due(st)) snap_capture(c);
  void* map = NULL;
  size_t len = 0;
  /* The snapshot this checkpoint names: the one just captured (if its
   * write fails, the open finds none of that position and replays from
   * the floor), else the one in use. */
  uint64_t snap_at = c->snap_buf != NULL   ? c->applied
                     : st->snap_slot >= 0 ? st->snap_applied
                                          : UINT64_MAX;
  if (rc == 0)
    rc = txmq__ckpt_encode(st, c->applied, c->replay_from, snap_at, &map,
                           &len);
  if (rc == 0 && len > UINT32_MAX) rc = TXMQ_ETOOBIG;
  if (rc == 0 && (c->file = malloc(TXMQ__CKPT_HEADER + len)) == NULL)
    rc = TXMQ_ENOMEM;
  if (rc == 0) {
    memcpy(c->file, TXMQ__CKPT_MAGIC, 8);
    txmq__st_le32(c->file + 12, (uint32_t)len);
    memcpy(c->file + TXMQ__CKPT_HEADER, map, len);
    c->file_len = TXMQ__CKPT_HEADER + len;
    txmq__st_le32(c->file + 8, txmq_crc32c(0, c->file + 12, c->file_len - 12));
    /* The new files and directories travel with this checkpoint. */
    c->files = st->sync_files;
    c->dirs = st->sync_dirs;
    memset(&st->sync_files, 0, sizeof st->sync_files);
    memset(&st->sync_dirs, 0, sizeof st->sync_dirs);
    c->req.data = c;
    rc = uv_queue_work(st->loop, &c->req, ckpt_work, ckpt_after);
    if (rc != 0) {
      strv_move(&st->sync_files, &c->files);
      strv_move(&st->sync_dirs, &c->dirs);
      rc = TXMQ_EIO;
    }
  }
  free(map);
  if (rc != 0) {
    c->status = rc;
    snprintf(c->why, sizeof c->why, "checkpoint: cannot capture: %s",
             txmq_strerror(rc));
    ckpt_finish(c);
  }
}

int txmq__ckpt_start(txmq_store_t* st, txmq_store_done_cb cb, void* arg) {
  if (st->ckpt != NULL) return TXMQ_EBUSY;
  txmq__ckpt_t* c = calloc(1, sizeof *c);
  if (c == NULL) return TXMQ_ENOMEM;
  c->st = st;
  c->cb = cb;
  c->arg = arg;
  /* Set before the flush in case its callback were to run at once. */
  st->ckpt = c;
  int rc = txmq_log_flush(st->log, ckpt_flushed, c);
  if (rc != 0) {
    st->ckpt = NULL;
    free(c);
  }
  return rc;
}
