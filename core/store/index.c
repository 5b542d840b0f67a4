/*
 * index.c - the per-queue index files of the store.
 *
 * A queue's index is a run of files <data>/index/<topic>/<qid>/<first>.idx,
 * each an array of 20-byte entries (format in txmq/store.h) for offsets
 * [first, first + entries). Files are created sparse with ftruncate and
 * written through a MAP_SHARED mapping, so an entry costs a memcpy on the
 * loop thread; the checkpoint msyncs them on the threadpool. A read-only
 * store maps them copy-on-write (and uses anonymous memory for files it
 * would have created), so replaying a tail never writes to the directory.
 *
 * This unit does not decide what goes into the index (store.c) nor when it
 * is made durable (checkpoint.c).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "store/store_impl.h"

#define ENTRY TXMQ_STORE_INDEX_ENTRY_SIZE
/* Disk blocks are reserved ahead of the entries in steps of this size. A
 * store to a page of a shared mapping whose block cannot be allocated (disk
 * full) raises SIGBUS and kills the process; fallocate turns that into an
 * ENOSPC the store can report. */
#define RESERVE_STEP (256u * 1024u)

static char* path_fmt(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
static char* path_fmt(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  if (n < 0) return NULL;
  char* p = malloc((size_t)n + 1);
  if (p == NULL) return NULL;
  va_start(ap, fmt);
  vsnprintf(p, (size_t)n + 1, fmt, ap);
  va_end(ap);
  return p;
}

/* An I/O failure under the index is never "not found": callers keep
 * TXMQ_ENOTFOUND for unknown topics and queues. */
static int io_err(int err) {
  int rc = txmq_err_from_errno(err);
  return rc == TXMQ_ENOTFOUND ? TXMQ_EIO : rc;
}

char* txmq__index_queue_dir(const txmq_store_t* st, const char* topic,
                            int qid) {
  return path_fmt("%s/%s/%d", st->index_dir, topic, qid);
}

static char* file_path(const char* qdir, uint64_t first) {
  return path_fmt("%s/%020" PRIu64 ".idx", qdir, first);
}

static int parse_name(const char* name, uint64_t* first) {
  if (strlen(name) != 24 || strcmp(name + 20, ".idx") != 0) return -1;
  uint64_t v = 0;
  for (int i = 0; i < 20; i++) {
    if (name[i] < '0' || name[i] > '9') return -1;
    uint64_t d = (uint64_t)(name[i] - '0');
    if (v > (UINT64_MAX - d) / 10) return -1;
    v = v * 10 + d;
  }
  *first = v;
  return 0;
}

static txmq__idx_file_t* find_file(const txmq__queue_t* q, int64_t offset) {
  size_t lo = 0, hi = q->nfiles;
  uint64_t o = (uint64_t)offset;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    const txmq__idx_file_t* f = &q->files[mid];
    if (o < f->first) hi = mid;
    else if (o >= f->first + f->entries) lo = mid + 1;
    else return (txmq__idx_file_t*)f;
  }
  return NULL;
}

static int push_file(txmq__queue_t* q, const txmq__idx_file_t* f) {
  if (q->nfiles == q->files_cap) {
    size_t cap = q->files_cap ? q->files_cap * 2 : 4;
    txmq__idx_file_t* v = realloc(q->files, cap * sizeof *v);
    if (v == NULL) return TXMQ_ENOMEM;
    q->files = v;
    q->files_cap = cap;
  }
  q->files[q->nfiles++] = *f;
  return 0;
}

static void unmap_file(txmq__idx_file_t* f) {
  if (f->map != NULL) munmap(f->map, (size_t)f->entries * ENTRY);
  free(f->path);
  f->map = NULL;
  f->path = NULL;
}

void txmq__index_unmap(txmq__queue_t* q) {
  for (size_t i = 0; i < q->nfiles; i++) unmap_file(&q->files[i]);
  free(q->files);
  q->files = NULL;
  q->nfiles = q->files_cap = 0;
}

/* mkdir that remembers the parent for the next checkpoint's fsync: a new
 * directory entry is only durable once its parent directory is synced. */
static int make_dir(txmq_store_t* st, const char* path, const char* parent) {
  if (mkdir(path, 0755) == 0) {
    char* p = strdup(parent);
    return txmq__strv_push(&st->sync_dirs, p);
  }
  if (errno == EEXIST) return 0;
  int rc = io_err(errno);
  txmq__store_diag_set(st, "cannot create %s: %s", path, strerror(errno));
  return rc;
}

static int make_queue_dir(txmq_store_t* st, txmq__topic_t* t, int qid,
                          const char* qdir) {
  int rc;
  txmq__queue_t* q = &t->queues[qid];
  if (q->dir_made) return 0;
  if (!t->dir_made) {
    if ((rc = make_dir(st, st->index_dir, st->dir)) != 0) return rc;
    char* tdir = path_fmt("%s/%s", st->index_dir, t->name);
    if (tdir == NULL) return TXMQ_ENOMEM;
    rc = make_dir(st, tdir, st->index_dir);
    free(tdir);
    if (rc != 0) return rc;
    t->dir_made = 1;
  }
  char* tdir = path_fmt("%s/%s", st->index_dir, t->name);
  if (tdir == NULL) return TXMQ_ENOMEM;
  rc = make_dir(st, qdir, tdir);
  free(tdir);
  if (rc == 0) q->dir_made = 1;
  return rc;
}

static int add_file(txmq_store_t* st, txmq__topic_t* t, int qid,
                    uint64_t first) {
  txmq__queue_t* q = &t->queues[qid];
  txmq__idx_file_t f = {.first = first, .entries = st->file_entries};
  size_t size = (size_t)f.entries * ENTRY;
  int rc;

  if (st->read_only) {
    /* Anonymous memory: the read-only store indexes what it replays
     * without creating files. */
    f.map = mmap(NULL, size, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (f.map == MAP_FAILED) return TXMQ_ENOMEM;
    f.private_map = 1;
    if ((rc = push_file(q, &f)) != 0) munmap(f.map, size);
    return rc;
  }

  char* qdir = txmq__index_queue_dir(st, t->name, qid);
  if (qdir == NULL) return TXMQ_ENOMEM;
  if ((rc = make_queue_dir(st, t, qid, qdir)) != 0) {
    free(qdir);
    return rc;
  }
  f.path = file_path(qdir, first);
  if (f.path == NULL) {
    free(qdir);
    return TXMQ_ENOMEM;
  }
  /* O_CREAT without O_EXCL: a file left by a run that crashed before its
   * checkpoint only holds entries past the checkpointed count, and those
   * are overwritten as the tail is replayed. */
  int fd = open(f.path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0 || ftruncate(fd, (off_t)size) != 0) {
    rc = io_err(errno);
    txmq__store_diag_set(st, "cannot create index file %s: %s", f.path,
                         strerror(errno));
    if (fd >= 0) close(fd);
    free(qdir);
    free(f.path);
    return rc;
  }
  f.map = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  int err = errno;
  close(fd);
  if (f.map == MAP_FAILED) {
    txmq__store_diag_set(st, "cannot map index file %s: %s", f.path,
                         strerror(err));
    free(qdir);
    free(f.path);
    return io_err(err);
  }
  rc = txmq__strv_push(&st->sync_files, strdup(f.path));
  if (rc == 0) rc = txmq__strv_push(&st->sync_dirs, qdir);
  else free(qdir);
  if (rc == 0) rc = push_file(q, &f);
  if (rc != 0) unmap_file(&f);
  return rc;
}

/* Makes sure the disk blocks under bytes [0, upto) of f exist. */
static int reserve(txmq_store_t* st, txmq__idx_file_t* f, size_t upto) {
  if (f->private_map || upto <= f->reserved) return 0;
  size_t size = (size_t)f->entries * ENTRY;
  size_t want = f->reserved + RESERVE_STEP;
  if (want < upto) want = upto;
  if (want > size) want = size;
  int fd = open(f->path, O_RDWR | O_CLOEXEC);
  if (fd < 0) {
    int rc = io_err(errno);
    txmq__store_diag_set(st, "cannot open index file %s: %s", f->path,
                         strerror(errno));
    return rc;
  }
  int r = fallocate(fd, 0, (off_t)f->reserved, (off_t)(want - f->reserved));
  int err = errno;
  close(fd);
  if (r != 0 && err != EOPNOTSUPP && err != ENOSYS) {
    txmq__store_diag_set(st, "cannot allocate index file %s: %s", f->path,
                         strerror(err));
    return io_err(err);
  }
  /* Without fallocate support there is nothing better to do than to go on
   * as a plain sparse file. */
  f->reserved = want;
  return 0;
}

int txmq__index_append(txmq_store_t* st, txmq__topic_t* t, int qid,
                       uint64_t pos, uint32_t len, uint32_t tags_hash,
                       uint32_t sub) {
  txmq__queue_t* q = &t->queues[qid];
  int64_t off = q->count;
  txmq__idx_file_t* f = q->nfiles ? &q->files[q->nfiles - 1] : NULL;
  if (f == NULL || (uint64_t)off >= f->first + f->entries) {
    uint64_t first = f ? f->first + f->entries : (uint64_t)off;
    int rc = add_file(st, t, qid, first);
    if (rc != 0) return rc;
    f = &q->files[q->nfiles - 1];
  }
  size_t at = (size_t)((uint64_t)off - f->first) * ENTRY;
  int rc = reserve(st, f, at + ENTRY);
  if (rc != 0) return rc;
  uint8_t e[ENTRY];
  txmq__st_le64(e, pos);
  txmq__st_le32(e + 8, len);
  txmq__st_le32(e + 12, tags_hash);
  txmq__st_le32(e + 16, sub);
  memcpy(f->map + at, e, ENTRY);
  q->count = off + 1;
  st->mutations++;
  return 0;
}

void txmq__index_read(const txmq__queue_t* q, int64_t offset, uint64_t* pos,
                      uint32_t* len, uint32_t* tags_hash, uint32_t* sub) {
  const txmq__idx_file_t* f = find_file(q, offset);
  uint8_t e[ENTRY] = {0};
  if (f != NULL) memcpy(e, f->map + (size_t)((uint64_t)offset - f->first) * ENTRY, ENTRY);
  if (pos) *pos = txmq__ld_le64(e);
  if (len) *len = txmq__ld_le32(e + 8);
  if (tags_hash) *tags_hash = txmq__ld_le32(e + 12);
  if (sub) *sub = txmq__ld_le32(e + 16);
}

void txmq__index_update_begin(txmq_store_t* st, txmq__queue_t* q) {
  uint64_t lb = txmq_log_begin(st->log);
  if (q->begin_for == lb) return;
  /* Entries are scanned in offset order and begin stops at the first one
   * still in the log. Positions grow with offsets except for messages
   * published out of log order (transactions), so an entry behind begin
   * may still point before the log's begin; reading it says ERANGE. */
  while (q->begin < q->count) {
    uint64_t pos;
    txmq__index_read(q, q->begin, &pos, NULL, NULL, NULL);
    if (pos >= lb) break;
    q->begin++;
  }
  q->begin_for = lb;
}

static int cmp_file(const void* a, const void* b) {
  const txmq__idx_file_t* x = a;
  const txmq__idx_file_t* y = b;
  return x->first < y->first ? -1 : x->first > y->first;
}

int txmq__index_load(txmq_store_t* st, txmq__topic_t* t, int qid) {
  txmq__queue_t* q = &t->queues[qid];
  char* qdir = txmq__index_queue_dir(st, t->name, qid);
  if (qdir == NULL) return TXMQ_ENOMEM;
  int rc = 0;
  DIR* d = opendir(qdir);
  if (d == NULL) {
    if (errno != ENOENT) {
      rc = io_err(errno);
      txmq__store_diag_add(st, "cannot read %s: %s", qdir, strerror(errno));
    }
  } else {
    q->dir_made = 1;
    t->dir_made = 1;
    struct dirent* e;
    while (rc == 0 && (e = readdir(d)) != NULL) {
      uint64_t first;
      if (parse_name(e->d_name, &first) != 0) continue;
      txmq__idx_file_t f = {.first = first};
      f.path = path_fmt("%s/%s", qdir, e->d_name);
      if (f.path == NULL) {
        rc = TXMQ_ENOMEM;
        break;
      }
      int fd = open(f.path, (st->read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC);
      struct stat sb;
      if (fd < 0 || fstat(fd, &sb) != 0) {
        rc = TXMQ_ECORRUPT;
        txmq__store_diag_add(st, "cannot open index file %s: %s", f.path,
                             strerror(errno));
      } else if (sb.st_size <= 0 || sb.st_size % ENTRY != 0 ||
                 sb.st_size / ENTRY > UINT32_MAX) {
        rc = TXMQ_ECORRUPT;
        txmq__store_diag_add(st, "index file %s has a bad size %lld", f.path,
                             (long long)sb.st_size);
      } else {
        f.entries = (uint32_t)(sb.st_size / ENTRY);
        f.private_map = st->read_only;
        f.map = mmap(NULL, (size_t)sb.st_size, PROT_READ | PROT_WRITE,
                     st->read_only ? MAP_PRIVATE : MAP_SHARED, fd, 0);
        if (f.map == MAP_FAILED) {
          f.map = NULL;
          rc = io_err(errno);
          txmq__store_diag_add(st, "cannot map index file %s: %s", f.path,
                               strerror(errno));
        }
      }
      if (fd >= 0) close(fd);
      if (rc == 0) rc = push_file(q, &f);
      if (rc != 0) unmap_file(&f);
    }
    closedir(d);
  }
  if (rc == 0 && q->nfiles > 0) {
    qsort(q->files, q->nfiles, sizeof *q->files, cmp_file);
    for (size_t i = 1; i < q->nfiles && rc == 0; i++) {
      if (q->files[i].first != q->files[i - 1].first + q->files[i - 1].entries) {
        rc = TXMQ_ECORRUPT;
        txmq__store_diag_add(st, "index of %s/%d: file %s does not follow "
                             "the one before it", t->name, qid,
                             q->files[i].path);
      }
    }
    if (rc == 0 && (int64_t)q->files[0].first > q->begin) {
      /* Files wholly before begin were deleted after retention. */
      q->begin = (int64_t)q->files[0].first;
    }
  }
  if (rc == 0 && q->count > 0) {
    const txmq__idx_file_t* last = q->nfiles ? &q->files[q->nfiles - 1] : NULL;
    if (last == NULL || q->begin > q->count ||
        last->first + last->entries < (uint64_t)q->count) {
      rc = TXMQ_ECORRUPT;
      txmq__store_diag_add(st, "index of %s/%d does not cover its %" PRId64
                           " checkpointed entries", t->name, qid, q->count);
    }
  }
  if (rc != 0) txmq__index_unmap(q);
  free(qdir);
  return rc;
}

void txmq__index_trim(txmq_store_t* st, txmq__topic_t* t, int qid) {
  txmq__queue_t* q = &t->queues[qid];
  if (st->ckpt != NULL) return; /* a checkpoint may be syncing them */
  size_t n = 0;
  while (n + 1 < q->nfiles &&
         q->files[n].first + q->files[n].entries <= (uint64_t)q->begin) {
    txmq__idx_file_t* f = &q->files[n];
    if (!f->private_map && f->path != NULL) unlink(f->path);
    unmap_file(f);
    n++;
  }
  if (n > 0) {
    memmove(q->files, q->files + n, (q->nfiles - n) * sizeof *q->files);
    q->nfiles -= n;
  }
}

static int rm_entry(const char* path, const struct stat* sb, int flag,
                    struct FTW* ftw) {
  (void)sb;
  (void)flag;
  (void)ftw;
  return remove(path) == 0 || errno == ENOENT ? 0 : -1;
}

int txmq__index_remove_all(txmq_store_t* st) {
  struct stat sb;
  if (stat(st->index_dir, &sb) != 0) return errno == ENOENT ? 0 : TXMQ_EIO;
  if (nftw(st->index_dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS) != 0) {
    txmq__store_diag_add(st, "cannot remove %s: %s", st->index_dir,
                         strerror(errno));
    return io_err(errno);
  }
  return txmq__strv_push(&st->sync_dirs, strdup(st->dir));
}
