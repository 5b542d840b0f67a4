/*
 * log_recover.c - opening a log directory: listing and validating segment
 * files, scanning the newest segment, cutting a torn tail, and reporting or
 * cutting corruption according to the recovery mode.
 *
 * It runs once, in txmq_log_open(), on the calling thread and before the
 * writer thread exists, so it owns every field it touches. It reads the
 * records of the newest segment only: older segments were fdatasynced when
 * the writer rolled past them, so their headers and lengths are checked but
 * their records are left to the crc checks of later reads (and to
 * `txmq log verify`).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log_int.h"

#define HDR TXMQ_LOG_SEGMENT_HEADER_SIZE
#define RHDR TXMQ_LOG_RECORD_HEADER_SIZE

/* A segment file found in the directory. It is opened only for as long
 * as one step needs it (rfd -1 otherwise): a log may have more segments
 * than the process may open files. */
typedef struct {
  uint64_t base;
  uint32_t id;
  int rfd;
  uint64_t size; /* file size, header included */
  int hdr_ok;
  char why[128]; /* what is wrong with the header */
} rseg_t;

typedef struct {
  rseg_t* v;
  size_t n;
} rlist_t;

enum { FOUND_NOTHING = 0, FOUND_CORRUPT, FOUND_TORN_CREATION };

/* The first problem found while walking the segments. */
typedef struct {
  int kind;
  size_t idx;        /* segment to cut in (TRUNCATE keeps 0..idx) */
  uint64_t seg_base; /* segment reported by txmq_log_corruption() */
  uint64_t pos;      /* first invalid position */
  char why[256];
} finding_t;

static void seg_name(char* out, size_t len, uint64_t base) {
  snprintf(out, len, "%020" PRIu64 ".log", base);
}

static char* seg_path(const txmq_log_t* log, uint64_t base) {
  size_t n = strlen(log->dir) + TXMQ__LOG_NAME_LEN + 2;
  char* p = malloc(n);
  if (p != NULL) txmq__log_seg_path(p, n, log->dir, base);
  return p;
}

static int errno_fail(txmq_log_t* log, int err, const char* what,
                      const char* path) {
  txmq__log_diagf(log, "%s %s: %s", what, path, strerror(err));
  return txmq_err_from_errno(err);
}

static int mkdir_p(const char* dir) {
  char* p = strdup(dir);
  if (p == NULL) return ENOMEM;
  int err = 0;
  for (char* s = p + 1;; s++) {
    if (*s != '/' && *s != '\0') continue;
    char c = *s;
    *s = '\0';
    if (mkdir(p, 0755) != 0 && errno != EEXIST) {
      err = errno;
      break;
    }
    *s = c;
    if (c == '\0') break;
  }
  free(p);
  return err;
}

static int open_dir(txmq_log_t* log) {
  if (!log->read_only_opt) {
    int err = mkdir_p(log->dir);
    if (err != 0)
      return errno_fail(log, err, "cannot create log directory", log->dir);
  }
  log->dirfd = open(log->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (log->dirfd < 0) {
    int err = errno;
    if (err == ENOENT) {
      txmq__log_diagf(log, "log directory %s does not exist", log->dir);
      return TXMQ_ENOTFOUND;
    }
    return errno_fail(log, err, "cannot open log directory", log->dir);
  }
  if (!log->read_only_opt && flock(log->dirfd, LOCK_EX | LOCK_NB) != 0) {
    int err = errno;
    if (err == EWOULDBLOCK) {
      txmq__log_diagf(log, "log directory %s is open for writing elsewhere",
                      log->dir);
      return TXMQ_ELOCKED;
    }
    return errno_fail(log, err, "cannot lock log directory", log->dir);
  }
  return 0;
}

static int cmp_base(const void* a, const void* b) {
  uint64_t x = ((const rseg_t*)a)->base, y = ((const rseg_t*)b)->base;
  return x < y ? -1 : x > y;
}

static void rlist_free(rlist_t* l) {
  for (size_t i = 0; i < l->n; i++)
    if (l->v[i].rfd >= 0) close(l->v[i].rfd);
  free(l->v);
  l->v = NULL;
  l->n = 0;
}

/* Opens segment s for reading into s->rfd. */
static int open_seg(txmq_log_t* log, rseg_t* s) {
  char name[32];
  seg_name(name, sizeof name, s->base);
  s->rfd = openat(log->dirfd, name, O_RDONLY | O_CLOEXEC);
  if (s->rfd < 0) return errno_fail(log, errno, "cannot open segment", name);
  return 0;
}

static void close_seg(rseg_t* s) {
  if (s->rfd >= 0) close(s->rfd);
  s->rfd = -1;
}

/* Re-reads size and header of a segment file. */
static int load_seg(txmq_log_t* log, rseg_t* s) {
  int rc = open_seg(log, s);
  if (rc != 0) return rc;
  struct stat st;
  char name[32];
  seg_name(name, sizeof name, s->base);
  if (fstat(s->rfd, &st) != 0) {
    rc = errno_fail(log, errno, "cannot stat segment", name);
    close_seg(s);
    return rc;
  }
  s->size = (uint64_t)st.st_size;
  uint8_t h[HDR];
  size_t n = s->size < HDR ? (size_t)s->size : HDR;
  int err = n > 0 ? txmq__pread_full(s->rfd, h, n, 0) : 0;
  close_seg(s);
  if (err != 0)
    return errno_fail(log, err, "cannot read the header of segment", name);
  s->hdr_ok = txmq__log_seg_header_check(h, n, s->base, &s->id, s->why,
                                         sizeof s->why) == 0;
  return 0;
}

static int list_segments(txmq_log_t* log, rlist_t* l) {
  DIR* d = opendir(log->dir);
  if (d == NULL) return errno_fail(log, errno, "cannot list", log->dir);
  size_t cap = 0;
  int rc = 0;
  struct dirent* e;
  while ((e = readdir(d)) != NULL) {
    uint64_t base;
    if (txmq__log_parse_name(e->d_name, &base) != 0) continue; /* not ours */
    if (l->n == cap) {
      size_t ncap = cap ? cap * 2 : 16;
      rseg_t* v = realloc(l->v, ncap * sizeof *v);
      if (v == NULL) {
        rc = TXMQ_ENOMEM;
        break;
      }
      l->v = v;
      cap = ncap;
    }
    rseg_t* s = &l->v[l->n];
    memset(s, 0, sizeof *s);
    s->base = base;
    s->rfd = -1;
    l->n++;
  }
  closedir(d);
  if (rc != 0) return rc;
  if (l->n > 1) qsort(l->v, l->n, sizeof *l->v, cmp_base);
  for (size_t i = 0; i < l->n && rc == 0; i++) rc = load_seg(log, &l->v[i]);
  return rc;
}

/* Maps a segment's whole file for scanning; *data points at its data. The
 * mapping outlives the fd it was made from. */
static int map_seg(txmq_log_t* log, rseg_t* s, void** map,
                   const uint8_t** data) {
  *map = NULL;
  *data = NULL;
  if (s->size <= HDR) return 0;
  int rc = open_seg(log, s);
  if (rc != 0) return rc;
  void* m = mmap(NULL, (size_t)s->size, PROT_READ, MAP_PRIVATE, s->rfd, 0);
  int err = m == MAP_FAILED ? errno : 0;
  close_seg(s);
  if (m == MAP_FAILED) {
    char name[32];
    seg_name(name, sizeof name, s->base);
    return errno_fail(log, err, "cannot map segment", name);
  }
  *map = m;
  *data = (const uint8_t*)m + HDR;
  return 0;
}

/* Follows the records of data[0, limit); returns the offset of the first
 * one that is invalid or crosses limit, or limit. *problem gets why. */
static uint64_t follow_records(const uint8_t* data, uint64_t limit,
                               uint64_t base, int* problem) {
  uint64_t q = 0;
  *problem = TXMQ__REC_OK;
  while (q < limit) {
    uint32_t len;
    int rc = txmq__log_rec_check(data + q, limit - q, base + q, &len);
    if (rc != TXMQ__REC_OK) {
      *problem = rc;
      break;
    }
    q += RHDR + (uint64_t)len;
  }
  return q;
}

/* Checks headers, seg ids and, for every segment but the newest, the data
 * length the next segment's base implies. Stops at the first problem. */
static int walk(txmq_log_t* log, rlist_t* l, finding_t* f) {
  memset(f, 0, sizeof *f);
  char name[32];
  for (size_t i = 0; i < l->n; i++) {
    rseg_t* s = &l->v[i];
    seg_name(name, sizeof name, s->base);
    int last = i + 1 == l->n;
    if (!s->hdr_ok) {
      if (last && s->size <= HDR) {
        /* Only the writer's crash between creating the file and its
         * header reaching the disk leaves this: no record was ever in it. */
        f->kind = FOUND_TORN_CREATION;
        f->idx = i;
        snprintf(f->why, sizeof f->why, "%s: %s", name, s->why);
        return 0;
      }
      f->kind = FOUND_CORRUPT;
      f->idx = i;
      f->seg_base = f->pos = s->base;
      snprintf(f->why, sizeof f->why, "segment %s: %s", name, s->why);
      return 0;
    }
    if (i > 0 && s->id != l->v[i - 1].id + 1) {
      f->kind = FOUND_CORRUPT;
      f->idx = i;
      f->seg_base = f->pos = s->base;
      snprintf(f->why, sizeof f->why,
               "segment %s: seg id %" PRIu32 ", expected %" PRIu32, name, s->id,
               l->v[i - 1].id + 1);
      return 0;
    }
    if (last) break;
    const rseg_t* nx = &l->v[i + 1];
    uint64_t have = s->size - HDR, expect = nx->base - s->base;
    if (have == expect) continue;
    f->kind = FOUND_CORRUPT;
    f->idx = i;
    if (have < expect && nx->hdr_ok && nx->id != s->id + 1) {
      /* The gap is a whole segment file. */
      f->seg_base = f->pos = s->base + have;
      char missing[32];
      seg_name(missing, sizeof missing, f->pos);
      snprintf(f->why, sizeof f->why,
               "segment %s is missing (the segment after %s has seg id %" PRIu32
               ", expected %" PRIu32 ")",
               missing, name, nx->id, s->id + 1);
      return 0;
    }
    /* Report the first record the short (or long) file breaks. */
    void* map;
    const uint8_t* data;
    int rc = map_seg(log, s, &map, &data);
    if (rc != 0) return rc;
    int problem;
    uint64_t limit = have < expect ? have : expect;
    uint64_t q = follow_records(data, limit, s->base, &problem);
    if (map != NULL) munmap(map, (size_t)s->size);
    f->seg_base = s->base;
    f->pos = s->base + q;
    snprintf(f->why, sizeof f->why,
             "segment %s holds %" PRIu64
             " data bytes but the next segment "
             "starts %" PRIu64
             " bytes after it; first invalid position %" PRIu64 "%s%s",
             name, have, expect, f->pos, problem ? ": " : "",
             problem ? txmq__log_rec_problem(problem) : "");
    return 0;
  }
  return 0;
}

/* Scans every record of the newest segment. On return *end is the end of
 * its valid records; a torn tail or corruption is put in f. */
static int scan_last(txmq_log_t* log, rlist_t* l, finding_t* f,
                     uint64_t* end, uint64_t* torn) {
  rseg_t* s = &l->v[l->n - 1];
  memset(f, 0, sizeof *f);
  f->idx = l->n - 1;
  *torn = 0;
  uint64_t have = s->size - HDR;
  void* map;
  const uint8_t* data;
  int rc = map_seg(log, s, &map, &data);
  if (rc != 0) return rc;
  int problem;
  uint64_t q = follow_records(data, have, s->base, &problem);
  *end = s->base + q;
  /* Zeros after the last record are room the writer filled ahead of its
   * data (sync always), not a torn write: no record starts with zeros. */
  uint64_t z = q;
  while (z < have && data[z] == 0) z++;
  if (q < have && z < have) {
    /* A crash tears only the end of what was being written, so a valid
     * record after the bad one means the damage is something else. */
    int64_t next = txmq__log_find_valid(data, have, q + 1, s->base);
    char name[32];
    seg_name(name, sizeof name, s->base);
    if (next < 0) {
      *torn = have - q;
      snprintf(f->why, sizeof f->why,
               "segment %s: torn tail of %" PRIu64 " bytes at position %" PRIu64
               " (%s)",
               name, have - q, s->base + q, txmq__log_rec_problem(problem));
    } else {
      f->kind = FOUND_CORRUPT;
      f->seg_base = s->base;
      f->pos = s->base + q;
      snprintf(f->why, sizeof f->why,
               "segment %s: %s at position %" PRIu64
               ", valid record follows at %" PRIu64,
               name, txmq__log_rec_problem(problem), s->base + q,
               s->base + (uint64_t)next);
    }
  }
  if (map != NULL) munmap(map, (size_t)s->size);
  return 0;
}

/* Writes a fresh header over a segment file and cuts it to no data. */
static int rewrite_header(txmq_log_t* log, rseg_t* s, uint32_t id) {
  char* path = seg_path(log, s->base);
  if (path == NULL) return TXMQ_ENOMEM;
  int fd = open(path, O_WRONLY | O_TRUNC | O_CLOEXEC);
  int err = fd < 0 ? errno : 0;
  uint8_t h[HDR];
  txmq__log_seg_header(h, s->base, id);
  if (err == 0) err = txmq__pwrite_full(fd, h, HDR, 0);
  if (err == 0) err = txmq__fdatasync(fd);
  if (err == 0) err = txmq__fsync(log->dirfd);
  if (fd >= 0) close(fd);
  int rc = err ? errno_fail(log, err, "cannot rewrite the header of", path) : 0;
  free(path);
  return rc != 0 ? rc : load_seg(log, s);
}

static int unlink_seg(txmq_log_t* log, rseg_t* s) {
  char* path = seg_path(log, s->base);
  if (path == NULL) return TXMQ_ENOMEM;
  int rc = 0;
  if (unlink(path) != 0 && errno != ENOENT)
    rc = errno_fail(log, errno, "cannot delete", path);
  free(path);
  close_seg(s);
  return rc;
}

static int truncate_seg(txmq_log_t* log, rseg_t* s, uint64_t len) {
  char* path = seg_path(log, s->base);
  if (path == NULL) return TXMQ_ENOMEM;
  int fd = open(path, O_WRONLY | O_CLOEXEC);
  int err = fd < 0 ? errno : 0;
  if (err == 0 && ftruncate(fd, (off_t)len) != 0) err = errno;
  if (err == 0) err = txmq__fdatasync(fd);
  if (fd >= 0) close(fd);
  int rc = err ? errno_fail(log, err, "cannot truncate", path) : 0;
  free(path);
  return rc != 0 ? rc : load_seg(log, s);
}

/* RECOVER_TRUNCATE: keeps positions below pos only. Later segment files go
 * newest first, so that a crash in the middle leaves a shorter but
 * contiguous log. */
static int cut_at(txmq_log_t* log, rlist_t* l, size_t idx, uint64_t pos) {
  uint64_t old_end =
      l->v[l->n - 1].base +
      (l->v[l->n - 1].size > HDR ? l->v[l->n - 1].size - HDR : 0);
  rseg_t* s = &l->v[idx];
  if (pos < s->base ||
      pos - s->base > s->size - (s->size < HDR ? s->size : HDR)) {
    /* A cut never lengthens a file; anything else is a bug here. */
    txmq__log_diagf(log,
                    "internal: cut at %" PRIu64 " outside segment %" PRIu64,
                    pos, s->base);
    return TXMQ_EIO;
  }
  size_t dropped = 0;
  int rc = 0;
  while (l->n > idx + 1 && rc == 0) {
    rc = unlink_seg(log, &l->v[l->n - 1]);
    l->n--;
    dropped++;
  }
  if (rc == 0 && pos == s->base && idx > 0) {
    rc = unlink_seg(log, s);
    l->n--;
    dropped++;
  } else if (rc == 0 && pos == s->base) {
    rc = rewrite_header(log, s, s->hdr_ok ? s->id : 0);
  } else if (rc == 0) {
    rc = truncate_seg(log, s, HDR + (pos - s->base));
  }
  if (rc == 0 && txmq__fsync(log->dirfd) != 0)
    rc = errno_fail(log, errno, "cannot fsync", log->dir);
  if (rc == 0)
    txmq__log_diagf(log,
                    "cut the log at position %" PRIu64
                    " (recover=truncate): "
                    "%" PRIu64 " bytes and %zu segment file(s) dropped",
                    pos, old_end > pos ? old_end - pos : 0, dropped);
  return rc;
}

static void note_corruption(txmq_log_t* log, const finding_t* f) {
  if (!log->corrupt) {
    log->corrupt = 1;
    log->corrupt_seg = f->seg_base;
    log->corrupt_pos = f->pos;
  }
  txmq__log_diagf(log, "corruption: %s", f->why);
}

/* Creates segment 0 of an empty log (on the opening thread: nothing else
 * runs yet, so there is no loop to keep responsive). */
static int create_first(txmq_log_t* log, rlist_t* l) {
  char* path = seg_path(log, 0);
  if (path == NULL) return TXMQ_ENOMEM;
  l->v = calloc(1, sizeof *l->v);
  if (l->v == NULL) {
    free(path);
    return TXMQ_ENOMEM;
  }
  rseg_t* s = &l->v[0];
  s->rfd = -1;
  int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  int err = fd < 0 ? errno : 0;
  uint8_t h[HDR];
  txmq__log_seg_header(h, 0, 0);
  if (err == 0) err = txmq__pwrite_full(fd, h, HDR, 0);
  if (err == 0) err = txmq__fdatasync(fd);
  if (err == 0) err = txmq__fsync(log->dirfd);
  if (fd >= 0) close(fd);
  int rc = err ? errno_fail(log, err, "cannot create segment", path) : 0;
  free(path);
  if (rc == 0) {
    l->n = 1;
    rc = load_seg(log, s);
  }
  return rc;
}

/* Moves the first n segments of l into the log's table. */
static int adopt(txmq_log_t* log, rlist_t* l, size_t n) {
  for (size_t i = 0; i < n; i++) {
    txmq__seg_t seg = {l->v[i].base, l->v[i].id, -1, 0};
    if (txmq__log_segs_push(log, seg) != 0) return TXMQ_ENOMEM;
  }
  return 0;
}

/* READONLY recovery and read-only opens: keep what lies below end. */
static int open_readable_to(txmq_log_t* log, rlist_t* l, uint64_t end) {
  size_t n = 0;
  while (n < l->n && l->v[n].base < end) n++;
  int rc = adopt(log, l, n);
  log->end_seen = log->durable_seen = log->next_pos = end;
  return rc;
}

static int recover(txmq_log_t* log, rlist_t* l) {
  int rc = list_segments(log, l);
  if (rc != 0) return rc;
  if (l->n == 0) {
    if (log->read_only_opt) return open_readable_to(log, l, 0);
    rc = create_first(log, l);
    if (rc != 0) return rc;
  }
  for (;;) {
    finding_t f;
    uint64_t end = 0, torn = 0;
    rc = walk(log, l, &f);
    if (rc != 0) return rc;
    if (f.kind == FOUND_NOTHING) {
      rc = scan_last(log, l, &f, &end, &torn);
      if (rc != 0) return rc;
    }
    if (f.kind == FOUND_CORRUPT) {
      note_corruption(log, &f);
      if (log->recover == TXMQ_LOG_RECOVER_STRICT) return TXMQ_ECORRUPT;
      if (log->recover == TXMQ_LOG_RECOVER_READONLY || log->read_only_opt) {
        log->read_only = 1;
        txmq__log_diagf(
            log, "opened read-only, readable up to position %" PRIu64, f.pos);
        return open_readable_to(log, l, f.pos);
      }
      rc = cut_at(log, l, f.idx, f.pos);
      if (rc != 0) return rc;
      continue; /* the cut segment is now the newest: scan it */
    }
    rseg_t* last = &l->v[l->n - 1];
    if (f.kind == FOUND_TORN_CREATION) {
      end = last->base;
      if (log->read_only_opt) {
        txmq__log_diagf(
            log, "%s (segment creation torn; left as is: read-only)", f.why);
        return open_readable_to(log, l, end);
      }
      uint32_t id = l->n > 1 ? l->v[l->n - 2].id + 1 : 0;
      rc = rewrite_header(log, last, id);
      if (rc != 0) return rc;
      txmq__log_diagf(log, "%s (segment creation torn; header rewritten)",
                      f.why);
    } else if (torn > 0) {
      log->torn_bytes = torn;
      if (log->read_only_opt) {
        txmq__log_diagf(log, "%s, not cut (read-only)", f.why);
      } else {
        rc = truncate_seg(log, last, HDR + (end - last->base));
        if (rc != 0) return rc;
        txmq__log_diagf(log, "%s, cut", f.why);
      }
    }
    if (log->read_only_opt) return open_readable_to(log, l, end);
    rc = adopt(log, l, l->n);
    if (rc != 0) return rc;
    log->end_seen = log->durable_seen = log->next_pos = end;
    log->tail_base = last->base;
    log->tail_id = last->id;
    return 0;
  }
}

int txmq__log_recover(txmq_log_t* log) {
  int rc = open_dir(log);
  rlist_t l = {NULL, 0};
  if (rc == 0) rc = recover(log, &l);
  rlist_free(&l);
  if (rc != 0 || log->read_only) return rc;

  /* The writer appends to the newest segment. Its bytes may date from a
   * process that died before fdatasync: syncing them once here makes the
   * durable end we start from true. */
  const txmq__seg_t* last = &log->segs[log->nsegs - 1];
  char* path = seg_path(log, last->base);
  if (path == NULL) return TXMQ_ENOMEM;
  log->wfd = open(path, O_WRONLY | O_CLOEXEC);
  int err = log->wfd < 0 ? errno : txmq__fdatasync(log->wfd);
  if (err != 0) rc = errno_fail(log, err, "cannot open for writing", path);
  free(path);
  if (rc != 0) return rc;
  log->wbase = last->base;
  log->wid = last->id;
  log->w_end = log->w_durable = log->pub_end = log->pub_durable = log->end_seen;
  return 0;
}
