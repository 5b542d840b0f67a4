/*
 * store_int.h - internals of the store part shared with the other parts of
 * libtxmq (tx, net, clients). Not installed, not part of the ABI.
 *
 * It provides: the setters of the fields only the store may assign, a
 * bounded msgpack unpacker for hostile input, the message codec at the
 * msgpack_object level (for records and frames that embed messages), the
 * msg id generator, the hook through which other parts teach
 * txmq_store_get() to read messages out of their own records, and the
 * publish notification the consumer engine wakes its waiters with.
 */
#ifndef TXMQ_STORE_INT_H
#define TXMQ_STORE_INT_H

#include <stddef.h>
#include <stdint.h>

#include <msgpack.h>

#include "txmq/msg.h"
#include "txmq/store.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- message fields assigned by the store ---- */

void txmq__msg_set_id(txmq_msg_t* m, const uint8_t id[TXMQ_MSG_ID_LEN]);
void txmq__msg_set_store_ms(txmq_msg_t* m, int64_t ms);
void txmq__msg_set_queue_offset(txmq_msg_t* m, int64_t offset);

/* ---- bounded msgpack unpacking ----
 *
 * msgpack-c allocates a container's element array as soon as it reads the
 * container's header, before it knows whether the elements are there: five
 * hostile bytes (array32 of 2^32-1) ask for ~100 GB. These functions refuse
 * a container that declares more elements than bytes remain (before any
 * room is taken for it), nesting deeper than max_depth, more than max_items
 * objects in all, or an object that runs past the end, so allocations are
 * bounded by the input's size. txmq__mp_check only walks; txmq__mp_unpack
 * checks and builds msgpack-c's objects in the same walk (the same objects
 * msgpack-c's unpacker would build: tests/mpref.h holds it to that). Use
 * them for everything read from a wire or a file. */
#define TXMQ__MP_MAX_DEPTH 24 /* below msgpack-c's own limit of 32 */

/* Checks that buf starts with exactly one well-formed object within the
 * limits; *used (if not NULL) gets its size. 0 or TXMQ_EPROTO. */
int txmq__mp_check(const void* buf, size_t len, unsigned max_depth,
                   size_t max_items, size_t* used);
/* Unpacks exactly one object filling all of buf (trailing bytes are
 * TXMQ_EPROTO) into out, which the caller initialised with
 * msgpack_unpacked_init() and destroys with msgpack_unpacked_destroy() in
 * every case. Strings and bins in out->data point into buf. */
int txmq__mp_unpack(const void* buf, size_t len, unsigned max_depth,
                    size_t max_items, msgpack_unpacked* out);
/* The same into a zone the caller owns (msgpack_zone_init once,
 * msgpack_zone_clear after each use): no allocation per object once the
 * zone's first chunk is big enough. out lives until the zone is cleared. */
int txmq__mp_unpack_zone(const void* buf, size_t len, unsigned max_depth,
                         size_t max_items, msgpack_zone* z,
                         msgpack_object* out);

/* ---- message codec at the object level ---- */

/* Writes m as the map txmq_msg_encode() produces into sb
 * (common/mpwrite.h). TXMQ_EINVAL without a topic, TXMQ_ENOMEM if sb could
 * not grow. */
int txmq__msg_write(msgpack_sbuffer* sb, const txmq_msg_t* m);
/* Builds a new message from a map object, with every check of
 * txmq_msg_decode(). 0, TXMQ_EPROTO or TXMQ_ENOMEM. */
int txmq__msg_from_object(const msgpack_object* o, txmq_msg_t** out);
/* The same checks without building the message: 0 if txmq__msg_from_object
 * would build one from o, and then its queue id (-1 if none) and its tags
 * (pointing into o, not terminated; NULL if none), else TXMQ_EPROTO. Any
 * of the out pointers may be NULL. Allocates nothing. */
int txmq__msg_peek_object(const msgpack_object* o, int32_t* queue_id,
                          const char** tags, size_t* tags_len);

/* ---- msg ids ----
 *
 * 16 bytes, big-endian: 48 bits of unix time in ms, 32 bits of a random
 * number drawn once per generator (getrandom), 48 bits of a counter that
 * starts at a random value below 2^47 and grows by one per id. Ids of one
 * generator therefore strictly increase even within a millisecond or when
 * the wall clock steps back (the time part never decreases); ids of two
 * generators differ in their random part. The generator lives in the store:
 * no global state. */
typedef struct {
  uint64_t last_ms;
  uint64_t seq;
  uint32_t node;
} txmq__idgen_t;

void txmq__idgen_init(txmq__idgen_t* g);
void txmq__idgen_next(txmq__idgen_t* g, int64_t now_ms,
                      uint8_t out[TXMQ_MSG_ID_LEN]);
/* Wall clock in unix milliseconds. */
int64_t txmq__now_ms(void);

/* ---- reading messages out of foreign records ----
 *
 * txmq_store_get() reads the record an index entry points at. For
 * TXMQ_REC_MSG the payload is the message; for the records of other parts
 * (a transaction's records carry several messages) the part that owns the
 * record type registers a decoder that returns message number sub of the
 * record as a new message (0 or a TXMQ_E* code; TXMQ_EPROTO for a record
 * that cannot hold such a message). Without a decoder, get fails with
 * TXMQ_EPROTO and a diagnostic. */
typedef int (*txmq__rec_decode_cb)(void* arg, const txmq_log_entry_t* e,
                                   uint32_t sub, txmq_msg_t** out);
/* type must be >= TXMQ_REC_FIRST_FOREIGN; fn NULL removes the decoder. */
int txmq__store_set_decoder(txmq_store_t* st, uint8_t type,
                            txmq__rec_decode_cb fn, void* arg);

/* ---- publish notification ----
 *
 * The store tells one listener (the consumer engine, core/consumer) that a
 * message became visible, so that consumers waiting on its topic can be
 * woken. cb runs after the message is indexed, for the completion of
 * txmq_store_put and for every txmq_store_publish, on the loop thread and
 * inside the store's append completion (or inside the caller of
 * txmq_store_publish): it must only note the event and defer real work, and
 * must not close the store. It is never called during replay at open (those
 * messages were visible before). One listener per store; cb NULL removes
 * it. The listener must remove itself before it goes away. */
typedef void (*txmq__store_publish_cb)(void* arg, const char* topic, int qid,
                                       int64_t offset);
void txmq__store_set_publish_cb(txmq_store_t* st, txmq__store_publish_cb cb,
                                void* arg);

/* ---- consumer groups with stored offsets ----
 *
 * Calls fn with the group of every stored consumer offset (one call per
 * group, topic and queue, in the order they were first set), so that the
 * consumer engine counts the groups earlier runs left behind. Stops early
 * when fn returns non-zero and returns that value; else 0. */
int txmq__store_offset_groups(const txmq_store_t* st,
                              int (*fn)(void* arg, const char* group),
                              void* arg);

/* Whether a group may be set to offset in topic/qid: 0; TXMQ_ENOTFOUND for
 * no such queue; TXMQ_ERANGE past the queue's end, where the group would
 * skip messages not yet written, and txmq_store_diag() says so with the
 * end. What txmq_store_offset_set checks, for the consumer engine to check
 * before it admits a new group. */
int txmq__store_offset_settable(txmq_store_t* st, const char* topic, int qid,
                                int64_t offset);

/* ---- a part's snapshot beside each checkpoint ----
 *
 * The store's checkpoint lets the next open skip the log below "applied",
 * but a part that rebuilds its state from its own records (the transaction
 * engine) would still need the replay from its replay floor. Such a part
 * registers a snapshot: at a checkpoint (the first, one every
 * TXMQ_STORE_OPT_SNAPSHOT_INTERVAL_MS and the one at close), right where
 * the store captures its own state, capture() returns the part's state as
 * of the same applied position as a payload of the part's own format
 * (every record before applied reflected, none after). The store writes it
 * with the checkpoint (checkpoint.c says how) and, at the next open, hands
 * the one the checkpoint names back to load() with the position it was
 * taken at; the replay then starts there. When there is no such snapshot,
 * or load() refuses it, the open
 * says why in its diagnostic and replays from the checkpoint's replay floor
 * as before, so a snapshot only ever saves time. The store never looks
 * inside the payload.
 *
 * capture runs on the loop thread and should be quick (it stalls the
 * loop); 0 and a malloc'ed *buf of *len bytes that the store frees, or a
 * TXMQ_E* code: that checkpoint is then written without a snapshot.
 * load runs inside txmq_store_open before the replay: 0 when it took the
 * payload; any other code leaves the part as it was before the call, with
 * why (a NUL-terminated string of at most why_len bytes) saying what was
 * wrong. One part per store; ops NULL removes it, and the part must remove
 * itself before it goes away. */
typedef struct {
  int (*capture)(void* arg, uint64_t applied, void** buf, size_t* len);
  int (*load)(void* arg, uint64_t applied, const void* buf, size_t len,
              char* why, size_t why_len);
} txmq__store_snap_ops_t;
void txmq__store_set_snapshot(txmq_store_t* st,
                              const txmq__store_snap_ops_t* ops, void* arg);
/* Every log record before this position has been applied (its append's
 * callback has run). */
uint64_t txmq__store_applied(const txmq_store_t* st);

/* Entries per new index file (default TXMQ_STORE_INDEX_FILE_ENTRIES). Files
 * already on disk keep their size: a file's entry count is read from its
 * length. Only for tests that want to see a queue grow to several files
 * without writing a million messages; call before open. */
int txmq__store_set_index_file_entries(txmq_store_t* st, uint32_t n);

/* The tags hash function (FNV-1a 32), used by txmq_store_tags_hash() and by
 * tag filters on (ptr, len) without a NUL. Never 0 for a non-empty input. */
uint32_t txmq__tags_hash(const char* s, size_t len);
/* txmq_store_publish for a caller that holds a message's topic, queue id
 * and tags hash (0: no tags) rather than the message: a transaction whose
 * message decoded when it was stored. */
int txmq__store_publish_hashed(txmq_store_t* st, uint64_t rec_pos,
                               uint32_t rec_len, uint32_t sub,
                               const char* topic, int32_t qid,
                               uint32_t tags_hash, int64_t* offset);

#ifdef __cplusplus
}
#endif
#endif /* TXMQ_STORE_INT_H */
