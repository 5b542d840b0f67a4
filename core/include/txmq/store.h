/*
 * txmq/store.h - topics, queues, indexes and consumer offsets over the log.
 *
 * The store owns a commit log (txmq/log.h) in <data>/log and keeps, per topic
 * queue, an index of fixed-size entries so that a consumer reads the message
 * at any queue offset without scanning the log.
 *
 * DATA DIRECTORY
 *   <data>/log/                 the commit log segments
 *   <data>/index/<topic>/<qid>/<first offset, 20 digits>.idx
 *                               index files, TXMQ_STORE_INDEX_FILE_ENTRIES
 *                               entries each, written through mmap
 *   <data>/checkpoint           the last checkpoint (written to a temporary
 *                               file, fsynced, renamed, directory fsynced)
 *
 *   index entry (20 bytes, little-endian)
 *   +-------------------+----------+------------+------------+
 *   | 0..7 record pos   | 8..11    | 12..15     | 16..19     |
 *   | u64               | rec len  | tags hash  | sub index  |
 *   +-------------------+----------+------------+------------+
 *   rec len is the record's payload length (a cross-check on read), tags hash
 *   is txmq_store_tags_hash() of the message's tags (0 when it has none) so
 *   that tag filters skip messages without reading them, sub index is the
 *   message's index inside the record (records of a transaction carry
 *   several messages).
 *
 *   checkpoint: "TXMQCKP1" magic, u32 crc32c of the rest, u32 length, then a
 *   msgpack map: the log position up to which every record has been applied
 *   to the indexes ("applied"), the position from which replay must start
 *   ("replay_from" <= applied, see txmq_store_replay_floor_cb), the topics
 *   with their queue counts and per-queue entry counts, and the consumer
 *   offsets.
 *
 * RESTART does not replay the whole log: the index files are trusted up to
 * the checkpointed entry counts and only the log tail after the checkpoint is
 * replayed (records before "applied" are passed to the record handler with
 * already_applied set). A checkpoint is taken every CHECKPOINT_INTERVAL_MS
 * and at close; its fsyncs run on the libuv threadpool, never on the loop.
 *
 * VISIBILITY: a message put with txmq_store_put becomes readable by consumers
 * when its log append completes (durable under sync ALWAYS). Messages of
 * other records (transactions) become readable through txmq_store_publish.
 * Queue offsets are dense and given in the order messages become visible.
 *
 * THREADING: every function runs on the loop thread that opened the store.
 */
#ifndef TXMQ_STORE_H
#define TXMQ_STORE_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "txmq/log.h"
#include "txmq/msg.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct txmq_store_s txmq_store_t;

/* Log record types. 1..15 belong to the store, 16.. to other parts, which
 * receive them through the record handler. */
enum {
  TXMQ_REC_MSG = 1,          /* payload: one txmq_msg_encode() message */
  TXMQ_REC_TOPIC = 2,        /* payload: msgpack [name, queue count] */
  TXMQ_REC_FIRST_FOREIGN = 16
};

#define TXMQ_STORE_INDEX_ENTRY_SIZE 20
#define TXMQ_STORE_INDEX_FILE_ENTRIES (1u << 20)
#define TXMQ_STORE_MAX_QUEUES 256

typedef enum {
  /* Log options, passed through: see txmq/log.h. */
  TXMQ_STORE_OPT_SYNC = 1,
  TXMQ_STORE_OPT_SYNC_INTERVAL_MS,
  TXMQ_STORE_OPT_SEGMENT_SIZE,
  TXMQ_STORE_OPT_RECOVER,
  TXMQ_STORE_OPT_READ_ONLY,
  TXMQ_STORE_OPT_RETAIN_BYTES,
  TXMQ_STORE_OPT_RETAIN_SECONDS,
  /* Store options. */
  TXMQ_STORE_OPT_DEFAULT_QUEUES,         /* queues of a new topic, default 4 */
  TXMQ_STORE_OPT_CHECKPOINT_INTERVAL_MS, /* default 5000; 0 = only at close */
  TXMQ_STORE_OPT_MAX_TOPICS,             /* default 4096 */
  /* How often a checkpoint also saves the transaction engine's snapshot
   * (the first checkpoint and the one at close always do): default 60000;
   * 0 = every checkpoint. */
  TXMQ_STORE_OPT_SNAPSHOT_INTERVAL_MS
} txmq_store_opt_t;

/* Called for each log record of type >= TXMQ_REC_FIRST_FOREIGN during replay
 * at open, in log order. already_applied is non-zero for records before the
 * checkpoint's "applied" position: their publishes are already in the index
 * and txmq_store_publish ignores them. A non-zero return aborts the open with
 * that code. */
typedef int (*txmq_store_record_cb)(txmq_store_t* st, const txmq_log_entry_t* e,
                                    int already_applied, void* arg);

/* Returns the lowest log position that must be replayed to the record
 * handler at the next open (for example the oldest undecided transaction's
 * half record), or UINT64_MAX if none. Asked at each checkpoint. */
typedef uint64_t (*txmq_store_replay_floor_cb)(txmq_store_t* st, void* arg);

/* status 0 on success; msg is the message as stored (id, queue id, queue
 * offset set), valid only during the call. */
typedef void (*txmq_store_put_cb)(txmq_store_t* st, int status,
                                  const txmq_msg_t* msg, void* arg);
typedef void (*txmq_store_done_cb)(txmq_store_t* st, int status, void* arg);

int txmq_store_new(txmq_store_t** out, uv_loop_t* loop, const char* data_dir);
int txmq_store_set(txmq_store_t* st, txmq_store_opt_t opt, int64_t value);
/* Both hooks must be set before open to take part in replay. */
void txmq_store_set_record_handler(txmq_store_t* st, txmq_store_record_cb cb,
                                   void* arg);
void txmq_store_set_replay_floor_cb(txmq_store_t* st,
                                    txmq_store_replay_floor_cb cb, void* arg);
/* Opens the log, loads the checkpoint and index files, replays the tail.
 * On failure read txmq_store_diag() and free the store. */
int txmq_store_open(txmq_store_t* st);

/* The store's log, for other parts that append their own records with
 * txmq_store_append. Owned by the store. */
txmq_log_t* txmq_store_log(txmq_store_t* st);

/* Creates a topic with nqueues queues (1..TXMQ_STORE_MAX_QUEUES); EEXIST if
 * it exists (with any queue count), EBADNAME for an invalid name, ERANGE
 * over MAX_TOPICS (txmq_store_diag() then names the limit and its value;
 * the same for a put or prepare that would create one topic too many).
 * Durable through a TXMQ_REC_TOPIC log record. */
int txmq_store_create_topic(txmq_store_t* st, const char* topic, int nqueues);
/* Queue count of topic, or TXMQ_ENOTFOUND. */
int txmq_store_topic_queues(const txmq_store_t* st, const char* topic);
size_t txmq_store_topic_count(const txmq_store_t* st);
/* Name of the i-th topic (creation order), NULL past the end. */
const char* txmq_store_topic_name(const txmq_store_t* st, size_t i);

/* Gives msg its id, store time and queue id (creating the topic with the
 * default queue count on first use) without writing anything. Used by parts
 * that store messages inside their own records. */
int txmq_store_prepare(txmq_store_t* st, txmq_msg_t* msg);

/* Stores a plain message: prepares it, appends a TXMQ_REC_MSG record and,
 * when the append completes, indexes it (visible) and calls cb. Like
 * txmq_store_prepare, it writes the id, store time and queue id into msg;
 * msg is not used after the call returns (cb gets its own view of the
 * stored message). If the call fails, cb is never called. */
int txmq_store_put(txmq_store_t* st, txmq_msg_t* msg, txmq_store_put_cb cb,
                   void* arg);

/* Appends records of other parts (types >= TXMQ_REC_FIRST_FOREIGN) through
 * the store, so that its checkpoint knows what has been applied. Same
 * contract as txmq_log_append. */
int txmq_store_append(txmq_store_t* st, const txmq_log_rec_t* recs, size_t n,
                      uint64_t* positions, txmq_log_append_cb cb, void* arg);

/* Makes msg, stored as message sub of the record at rec_pos (of payload
 * length rec_len), visible at the next offset of its queue. Called from an
 * append callback or from the record handler during replay (ignored when
 * already_applied). On success *offset (if not NULL) gets the queue offset. */
int txmq_store_publish(txmq_store_t* st, uint64_t rec_pos, uint32_t rec_len,
                       uint32_t sub, const txmq_msg_t* msg, int64_t* offset);

/* Reads the message at offset of (topic, qid) into a new message (caller
 * frees). TXMQ_ENOTFOUND for an unknown topic or queue, TXMQ_ERANGE outside
 * [begin, end), TXMQ_ECORRUPT if the log or index is damaged there. */
int txmq_store_get(txmq_store_t* st, const char* topic, int qid,
                   int64_t offset, txmq_msg_t** out);
/* First readable and next offset of a queue (begin moves up when retention
 * deletes the log segments under it). TXMQ_ENOTFOUND for unknown queues. */
int txmq_store_queue_range(txmq_store_t* st, const char* topic, int qid,
                           int64_t* begin, int64_t* end);
/* The tags hash stored in index entries (0 for NULL or ""). */
uint32_t txmq_store_tags_hash(const char* tags);
/* Reads just the index entry at offset: record position and tags hash. */
int txmq_store_entry(txmq_store_t* st, const char* topic, int qid,
                     int64_t offset, uint64_t* rec_pos, uint32_t* tags_hash);

/* Consumer group offsets (the next offset the group will read). Kept in
 * memory and made durable by the next checkpoint. TXMQ_ERANGE for an offset
 * past the queue's end (txmq_store_diag() gives the end). */
int txmq_store_offset_set(txmq_store_t* st, const char* group,
                          const char* topic, int qid, int64_t offset);
/* TXMQ_ENOTFOUND if the group never committed an offset for that queue. */
int txmq_store_offset_get(const txmq_store_t* st, const char* group,
                          const char* topic, int qid, int64_t* offset);
/* The stored offsets one by one, in the order they were first set: i from
 * 0 to txmq_store_offset_count() - 1 (TXMQ_ENOTFOUND past it). The strings
 * are valid until the store changes. */
size_t txmq_store_offset_count(const txmq_store_t* st);
int txmq_store_offset_at(const txmq_store_t* st, size_t i, const char** group,
                         const char** topic, int* qid, int64_t* offset);

/* Takes a checkpoint now; cb (may be NULL) runs when it is on disk. EBUSY if
 * one is already being written. */
int txmq_store_checkpoint(txmq_store_t* st, txmq_store_done_cb cb, void* arg);

/* What open found and did, or the details of a later failure whose code
 * alone does not say enough (a damaged record, the topic limit); "" if
 * nothing. Valid until the next call. */
const char* txmq_store_diag(const txmq_store_t* st);
/* Records replayed at the last open (for tests and figures). */
uint64_t txmq_store_replayed(const txmq_store_t* st);

/* Flushes the log, takes a final checkpoint, closes the log; cb runs when all
 * of it is done. Then txmq_store_free. */
int txmq_store_close(txmq_store_t* st, txmq_store_done_cb cb, void* arg);
void txmq_store_free(txmq_store_t* st);

#ifdef __cplusplus
}
#endif
#endif /* TXMQ_STORE_H */
