/*
 * store_impl.h - the layout of the store handle and the helpers shared by
 * the sources of core/store (store.c, index.c, checkpoint.c, smap.c).
 * Nothing outside core/store includes it; other parts use store_int.h.
 *
 * THREADS. Everything here belongs to the loop thread, except what a
 * checkpoint hands to the threadpool: that is captured into the checkpoint's
 * own job (ckpt_job_t in checkpoint.c) and never shared while the job runs.
 * The index mappings themselves stay mapped while a job syncs them: a
 * mapping is only unmapped when no checkpoint is running.
 */
#ifndef TXMQ_STORE_IMPL_H
#define TXMQ_STORE_IMPL_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "common/pool.h"
#include "txmq/error.h"
#include "txmq/log.h"
#include "txmq/msg.h"
#include "txmq/store.h"
#include "store/store_int.h"

#define TXMQ__STORE_DIAG_MAX 2048
#define TXMQ__CKPT_MAGIC "TXMQCKP1"
#define TXMQ__CKPT_HEADER 16 /* magic 8, crc 4, length 4 */
#define TXMQ__CKPT_VERSION 1
#define TXMQ__SNAP_MAGIC "TXMQSNP1"
#define TXMQ__SNAP_HEADER 40 /* magic 8, crc 4, version 4, length 8,
                                applied 8, seq 8 */
#define TXMQ__SNAP_VERSION 1

/* A string-keyed hash map (open addressing, no deletion: topics and offset
 * entries are never removed). Keys are not copied: they must live as long as
 * the map. */
typedef struct {
  const char** keys;
  void** vals;
  size_t cap; /* 0 or a power of two */
  size_t n;
} txmq__smap_t;

int txmq__smap_put(txmq__smap_t* m, const char* key, void* val);
void* txmq__smap_get(const txmq__smap_t* m, const char* key);
void txmq__smap_free(txmq__smap_t* m);

/* A growable list of strings (paths waiting for an fsync). */
typedef struct {
  char** v;
  size_t n;
  size_t cap;
} txmq__strv_t;

int txmq__strv_push(txmq__strv_t* s, char* str); /* takes ownership */
void txmq__strv_free(txmq__strv_t* s);

/* One index file: entries [first, first + entries) of its queue. */
typedef struct {
  uint64_t first;
  uint32_t entries;
  uint8_t* map; /* entries * TXMQ_STORE_INDEX_ENTRY_SIZE bytes */
  size_t reserved; /* bytes known to have disk blocks (see index.c) */
  int private_map; /* read-only store: copy-on-write or anonymous, never
                      synced, never written back */
  char* path;
} txmq__idx_file_t;

typedef struct {
  int64_t begin;  /* first readable offset */
  int64_t count;  /* next offset (entries < count are valid) */
  int64_t synced; /* entries < synced were synced by a checkpoint */
  int64_t ckpt_count; /* count captured by the running checkpoint */
  uint64_t begin_for; /* log begin that begin was last advanced against */
  txmq__idx_file_t* files; /* by first offset, contiguous */
  size_t nfiles;
  size_t files_cap;
  int dir_made; /* the queue's directory exists */
} txmq__queue_t;

typedef struct {
  char* name;
  int nqueues;
  uint32_t rr; /* round-robin cursor */
  int dir_made;
  /* Recreated from its messages during a replay (its TXMQ_REC_TOPIC record
   * was gone): it grows to every queue they name. */
  int from_msgs;
  txmq__queue_t* queues;
} txmq__topic_t;

typedef struct {
  char* key; /* "group\1topic\1qid": names cannot contain \1 */
  char* group;
  char* topic;
  int qid;
  int64_t offset;
} txmq__offset_t;

typedef enum {
  TXMQ__ST_NEW = 0,
  TXMQ__ST_OPENING,
  TXMQ__ST_OPEN,
  TXMQ__ST_CLOSING,
  TXMQ__ST_CLOSED,
  TXMQ__ST_FAILED /* open failed; free is all that is left */
} txmq__store_state_t;

typedef struct txmq__ckpt_s txmq__ckpt_t;

struct txmq_store_s {
  uv_loop_t* loop;
  txmq__pool_t app_pool; /* appends' completion contexts (store.c) */
  char* dir;
  char* index_dir;
  char* ckpt_path;
  char* ckpt_tmp;
  char* snap_path[2]; /* the two snapshot slots (checkpoint.c) */
  char* snap_tmp;
  txmq_log_t* log;
  int state;

  /* Options. */
  int read_only;
  int default_queues;
  uint64_t ckpt_interval_ms;
  size_t max_topics;
  uint32_t file_entries;

  /* Hooks. */
  txmq_store_record_cb rec_cb;
  void* rec_arg;
  txmq_store_replay_floor_cb floor_cb;
  void* floor_arg;
  struct {
    txmq__rec_decode_cb fn;
    void* arg;
  } decoders[256];
  /* A part's snapshot written with each checkpoint (store_int.h). */
  const txmq__store_snap_ops_t* snap_ops;
  void* snap_arg;
  /* Told of every message made visible outside replay (store_int.h). */
  txmq__store_publish_cb pub_cb;
  void* pub_arg;

  /* Topics in creation order, and by name. */
  txmq__topic_t** topics;
  size_t ntopics;
  size_t topics_cap;
  txmq__smap_t topic_map;

  /* Consumer offsets in first-commit order, and by key. */
  txmq__offset_t** offsets;
  size_t noffsets;
  size_t offsets_cap;
  txmq__smap_t offset_map;

  txmq__idgen_t idgen;

  /* Every log record before applied has been applied to the indexes. */
  uint64_t applied;
  /* Set when indexing a durable record failed (disk full under the index):
   * applied stops moving so the record is replayed at the next open, and
   * writes are refused. */
  int index_failed;
  /* Bumped by every change a checkpoint records. */
  uint64_t mutations;

  /* Replay. */
  int replaying;
  int replay_cur_applied; /* the record being replayed is before applied */
  uint64_t replayed;

  /* Checkpoints. */
  txmq__ckpt_t* ckpt;          /* the running one, or NULL */
  uv_timer_t* timer;           /* NULL without a loop */
  uint64_t durable_floor;      /* where replay would start from the
                                  checkpoint on disk (retention keeps it) */
  uint64_t ckpt_applied;       /* applied of the last durable checkpoint */
  uint64_t ckpt_mutations;     /* mutations of the last durable checkpoint */
  int ckpt_ever;               /* a checkpoint is on disk */
  int snap_slot;               /* slot of the newest snapshot an open can
                                  use with the checkpoint on disk, or -1 */
  uint64_t snap_applied;       /* its position: the replay starts there */
  uint64_t snap_interval_ms;   /* TXMQ_STORE_OPT_SNAPSHOT_INTERVAL_MS */
  uint64_t snap_last_ms;       /* uv_hrtime of the last capture, in ms */
  uint64_t snap_seq;           /* seq of the newest snapshot seen or written */
  txmq__strv_t sync_files;     /* index files created since the last one */
  txmq__strv_t sync_dirs;      /* directories that gained entries */

  /* Close. */
  txmq_store_done_cb close_cb;
  void* close_arg;
  int close_status;
  int close_waiting; /* close waits for the running checkpoint */
  int close_log_started; /* reads stop here: the log is going away */

  char diag[TXMQ__STORE_DIAG_MAX];
};

/* Diagnostics: set replaces, add appends ("; " separated). */
void txmq__store_diag_set(txmq_store_t* st, const char* fmt, ...)
    __attribute__((format(printf, 2, 3)));
void txmq__store_diag_add(txmq_store_t* st, const char* fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* store.c: topics and queues. */
txmq__topic_t* txmq__store_topic(const txmq_store_t* st, const char* name);
/* Creates a topic in memory only (the caller logs it if needed). */
int txmq__store_topic_add(txmq_store_t* st, const char* name, int nqueues,
                          txmq__topic_t** out);
int txmq__store_offset_put(txmq_store_t* st, const char* group,
                           const char* topic, int qid, int64_t offset);

/* index.c: the index files of one queue. */
/* Maps the files found in the queue's directory (when it exists) and checks
 * that they are contiguous and cover [begin, count); TXMQ_ECORRUPT with a
 * diagnostic if not. */
int txmq__index_load(txmq_store_t* st, txmq__topic_t* t, int qid);
/* Writes the entry at q->count (adding a file when needed) and advances
 * count. */
int txmq__index_append(txmq_store_t* st, txmq__topic_t* t, int qid,
                       uint64_t pos, uint32_t len, uint32_t tags_hash,
                       uint32_t sub);
/* Reads the entry at offset (which must be in [begin, count)). */
void txmq__index_read(const txmq__queue_t* q, int64_t offset, uint64_t* pos,
                      uint32_t* len, uint32_t* tags_hash, uint32_t* sub);
/* Moves begin past entries whose records retention removed. */
void txmq__index_update_begin(txmq_store_t* st, txmq__queue_t* q);
/* Unmaps every file of the queue (and forgets them). */
void txmq__index_unmap(txmq__queue_t* q);
/* Deletes leading files wholly below begin (never the last one). Only when
 * no checkpoint is running. */
void txmq__index_trim(txmq_store_t* st, txmq__topic_t* t, int qid);
/* Directory of a queue (new string). */
char* txmq__index_queue_dir(const txmq_store_t* st, const char* topic, int qid);
/* Removes the whole index directory (rebuild from scratch). */
int txmq__index_remove_all(txmq_store_t* st);

/* checkpoint.c. */
/* Loads <data>/checkpoint into the store: topics, queue counts, offsets,
 * applied and replay_from. 0, TXMQ_ENOTFOUND (no file), TXMQ_ECORRUPT (bad
 * magic, crc, length or content; nothing is taken from it, diag says why)
 * or TXMQ_EIO/ENOMEM. */
int txmq__ckpt_load(txmq_store_t* st, uint64_t* applied, uint64_t* replay_from,
                    uint64_t* snap_at);
/* Starts a checkpoint (flush the log, capture, write on the threadpool). */
int txmq__ckpt_start(txmq_store_t* st, txmq_store_done_cb cb, void* arg);
/* Encodes the current state as the checkpoint's msgpack map. */
int txmq__ckpt_encode(txmq_store_t* st, uint64_t applied, uint64_t replay_from,
                      uint64_t snap_at, void** buf, size_t* len);

/* Loads the snapshot the checkpoint names (taken at snap_at: at the
 * checkpoint or an earlier one, and not before the log's begin lb) into the
 * registered part: 0 (taken; the replay starts at snap_at), TXMQ_ENOTFOUND
 * (no slot holds it; why says what was found) or another code with why
 * saying what was wrong with it. Sets snap_slot, snap_applied and snap_seq
 * either way. */
int txmq__snap_load(txmq_store_t* st, uint64_t snap_at, uint64_t lb,
                    char* why, size_t why_len);

/* store.c: called by checkpoint.c when a checkpoint has finished (on the
 * loop): ckpt_done before the checkpoint's callback (retention, index
 * trimming), ckpt_finished after it (a close that waited goes on). */
void txmq__store_ckpt_done(txmq_store_t* st, int status);
void txmq__store_ckpt_finished(txmq_store_t* st);
/* store.c: frees every topic, queue mapping and offset entry. */
void txmq__store_forget_all(txmq_store_t* st);

/* Little-endian helpers. */
static inline void txmq__st_le32(uint8_t* p, uint32_t v) {
  p[0] = (uint8_t)v;
  p[1] = (uint8_t)(v >> 8);
  p[2] = (uint8_t)(v >> 16);
  p[3] = (uint8_t)(v >> 24);
}
static inline void txmq__st_le64(uint8_t* p, uint64_t v) {
  txmq__st_le32(p, (uint32_t)v);
  txmq__st_le32(p + 4, (uint32_t)(v >> 32));
}
static inline uint32_t txmq__ld_le32(const uint8_t* p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
         (uint32_t)p[3] << 24;
}
static inline uint64_t txmq__ld_le64(const uint8_t* p) {
  return (uint64_t)txmq__ld_le32(p) | (uint64_t)txmq__ld_le32(p + 4) << 32;
}

#endif /* TXMQ_STORE_IMPL_H */
