/*
 * tx_int.h - internals of the transaction engine (core/tx), shared by its
 * files, its benchmark and the offline log tool (core/clients/cli/log_cmd.c,
 * which reads TX_HALF and TX_EVENT records with the codec below so that it
 * never disagrees with a replay). Not installed.
 *
 * Memory layout, chosen so that a pending transaction costs well under 200
 * bytes in all (see txmq/tx.h and the design's scheduler goals):
 *   - entries live in a chunked pool and are named by a 32-bit index, so the
 *     hash table, the heap and the intrusive lists hold 4-byte links instead
 *     of 8-byte pointers and there is no per-entry malloc overhead;
 *   - the hash table is open addressing over those indexes (8 bytes a slot:
 *     the index and a hash tag);
 *   - the heap holds (due, index) pairs (16 bytes a slot);
 *   - messages are never kept in memory: the half record is read back from
 *     the log when a check or a commit needs them;
 *   - group, producer and topic-set strings are interned and refcounted.
 * Decided transactions move to a separate bounded FIFO table of 24-byte
 * entries (id, last event position, state).
 */
#ifndef TXMQ_TX_INT_H
#define TXMQ_TX_INT_H

#include <stddef.h>
#include <stdint.h>

#include <msgpack.h>

#include "txmq/tx.h"

#define TXMQ__NIL UINT32_MAX
/* Bound on the strings a caller passes for the audit trail (who, version)
 * and on producer ids: they are copied into every event record. */
#define TXMQ__MAX_LABEL 1024

/* ---- interned strings ---- */

typedef struct txmq__istr_s {
  uint32_t refs;
  uint32_t hash;
  uint64_t pending;       /* as a topic: PENDING transactions touching it */
  uint32_t undeliv_head;  /* as a group: first entry waiting for a target */
  uint32_t group_refs;    /* as a group: live entries of the group */
  uint32_t len;
  uint32_t snap_idx;      /* its number in the snapshot being captured */
  char s[];
} txmq__istr_t;

typedef struct {
  txmq__istr_t** slots;
  uint32_t cap; /* power of two, or 0 */
  uint32_t n;
} txmq__itab_t;

void txmq__itab_free(txmq__itab_t* t);
/* Returns the interned copy of s[0..len) with one more reference, or NULL on
 * out of memory. */
txmq__istr_t* txmq__intern(txmq__itab_t* t, const char* s, size_t len);
/* Looks s up without taking a reference; NULL if not interned. */
txmq__istr_t* txmq__istr_find(const txmq__itab_t* t, const char* s,
                              size_t len);
/* Drops a reference; frees the string at zero. NULL is ignored. */
void txmq__istr_unref(txmq__itab_t* t, txmq__istr_t* s);

/* ---- pending (and parked, and deciding) transactions ---- */

enum {
  TXE_HALF_PENDING = 1 << 0, /* half record appended, not yet durable */
  TXE_HALF_FAILED = 1 << 1,  /* half append failed: drop when idle */
  TXE_IN_FLIGHT = 1 << 2,    /* a target took check `seq` */
  TXE_UNDELIV = 1 << 3,      /* no target took the last check */
  TXE_DECIDING = 1 << 4      /* COMMIT/ROLLBACK accepted, not yet durable */
};

typedef struct {
  uint8_t id[TXMQ_TX_ID_LEN];
  uint64_t half_pos;
  uint64_t last_pos;   /* the newest record of this tx (audit chain head) */
  int64_t born_wall;   /* wall ms recorded in the half record */
  int64_t half_mono;   /* mono ms when the half became durable (latency) */
  txmq__istr_t* group;
  txmq__istr_t* producer; /* NULL if none */
  txmq__istr_t* topics;   /* distinct topics, joined with '\n' */
  uint32_t heap_idx;      /* TXMQ__NIL when not scheduled */
  uint32_t seq;           /* of the last offered check */
  uint32_t age_prev, age_next; /* list in half_pos order; free-list link */
  union {
    struct {
      uint32_t prev, next;
    } ul;     /* group's undeliverable list (TXE_UNDELIV) */
    void* op; /* the decision in flight (TXE_DECIDING) */
  } u;
  /* A one-message transaction publishes without reading its half record
   * back: its length, the message's queue and tags hash (pub_qid -1: read
   * the record). */
  uint32_t half_len;
  uint32_t pub_tags_hash;
  int16_t pub_qid;
  uint16_t count;  /* counted checks */
  uint8_t state;   /* txmq_tx_state_t; already the decided one if DECIDING */
  uint8_t flags;
  uint8_t nmsgs;
  uint8_t target;  /* where the next offer starts */
} txmq__txe_t;

#define TXMQ__POOL_SHIFT 12
#define TXMQ__POOL_CHUNK (1u << TXMQ__POOL_SHIFT)

typedef struct {
  txmq__txe_t** chunks;
  uint32_t nchunks, chunks_cap;
  uint32_t free_head; /* free entries linked through age_next */
  uint32_t used;      /* live entries */
  uint32_t top;       /* entries ever handed out (high-water mark) */
  /* Hash table, linear probing. A slot holds the entry index + 1 in its
   * low 32 bits (0 = empty) and the high 32 bits of the id's hash above,
   * so probing and growing never touch the entries themselves (each would
   * be a cache miss at a million transactions). */
  uint64_t* slots;
  uint32_t cap;
} txmq__txtab_t;

static inline txmq__txe_t* txmq__txe(const txmq__txtab_t* t, uint32_t i) {
  return &t->chunks[i >> TXMQ__POOL_SHIFT][i & (TXMQ__POOL_CHUNK - 1)];
}

void txmq__txtab_free(txmq__txtab_t* t);
/* A zeroed entry with id set, inserted into the hash; TXMQ__NIL on out of
 * memory. The caller must know the id is not present. */
uint32_t txmq__txtab_add(txmq__txtab_t* t, const uint8_t id[TXMQ_TX_ID_LEN]);
uint32_t txmq__txtab_find(const txmq__txtab_t* t,
                          const uint8_t id[TXMQ_TX_ID_LEN]);
/* Removes from the hash and returns the entry to the pool. */
void txmq__txtab_del(txmq__txtab_t* t, uint32_t i);
size_t txmq__txtab_bytes(const txmq__txtab_t* t);
uint64_t txmq__id_hash(const uint8_t id[TXMQ_TX_ID_LEN]);

/* ---- due-time heap ---- */

typedef struct {
  uint64_t due;
  uint32_t tx;
  uint32_t unused;
} txmq__hent_t;

typedef struct {
  txmq__hent_t* a;
  uint32_t n, cap;
} txmq__heap_t;

void txmq__heap_free(txmq__heap_t* h);
/* Schedules entry i at due (inserting or moving it). 0 or TXMQ_ENOMEM. */
int txmq__heap_set(txmq__heap_t* h, txmq__txtab_t* t, uint32_t i,
                   uint64_t due);
/* Unschedules entry i if scheduled. */
void txmq__heap_del(txmq__heap_t* h, txmq__txtab_t* t, uint32_t i);

/* ---- decided transactions: bounded FIFO ---- */

typedef struct {
  uint8_t id[TXMQ_TX_ID_LEN];
  uint64_t word; /* last event position (low 62 bits) and state (top 2) */
} txmq__dent_t;

typedef struct {
  txmq__dent_t* ring;
  uint32_t cap, head, n; /* cap grows by doubling up to window */
  uint32_t window;
  uint32_t* slots;       /* ring index + 1, linear probing */
  uint32_t scap;
} txmq__dtab_t;

void txmq__dtab_free(txmq__dtab_t* d);
/* Remembers a decided transaction, evicting the oldest at the window.
 * Silently forgets on out of memory (the idempotence window only shrinks). */
void txmq__dtab_add(txmq__dtab_t* d, const uint8_t id[TXMQ_TX_ID_LEN],
                    txmq_tx_state_t state, uint64_t last_pos);
/* 0 and the fields, or TXMQ_ENOTFOUND. */
int txmq__dtab_find(const txmq__dtab_t* d, const uint8_t id[TXMQ_TX_ID_LEN],
                    txmq_tx_state_t* state, uint64_t* last_pos);
/* Shrinks or sets the window, evicting the oldest as needed. */
void txmq__dtab_set_window(txmq__dtab_t* d, uint32_t window);

/* ---- records ---- */

typedef enum {
  TXMQ__EV_HALF = 0,
  TXMQ__EV_COMMIT,
  TXMQ__EV_ROLLBACK,
  TXMQ__EV_UNKNOWN, /* an UNKNOWN answer (producer, check or script) */
  TXMQ__EV_CHECK,   /* a check that counted without an answer (timeout) */
  TXMQ__EV_PARK,
  TXMQ__EV_RESUME,
  TXMQ__EV_COUNT
} txmq__ev_t;

const char* txmq__ev_name(txmq__ev_t ev);

/* A decoded half record. Strings point into the record (not terminated);
 * msgs is the array object, valid while `up` lives. */
typedef struct {
  msgpack_unpacked up;  /* when decoded without a zone */
  msgpack_zone* zone;   /* else the caller's zone, cleared by half_done */
  msgpack_object obj;
  uint8_t id[TXMQ_TX_ID_LEN];
  const char* group;
  uint32_t group_len;
  const char* producer; /* NULL if none */
  uint32_t producer_len;
  int64_t immunity_ms;
  int64_t at;
  const msgpack_object_array* msgs;
} txmq__half_t;

/* Encodes a half record into sbuf (already initialised). */
int txmq__half_encode(msgpack_sbuffer* sb, const uint8_t* id,
                      const char* group, const char* producer,
                      int64_t immunity_ms, int64_t at,
                      txmq_msg_t* const* msgs, size_t n);
/* Decodes; on success the caller calls txmq__half_done(). */
int txmq__half_decode(const void* data, size_t len, txmq__half_t* h);
/* The same with the objects in zone z (not in use by anyone else). */
int txmq__half_decode_in(const void* data, size_t len, msgpack_zone* z,
                         txmq__half_t* h);
void txmq__half_done(txmq__half_t* h);
/* Message i of a decoded half record as a new message. */
int txmq__half_msg(const txmq__half_t* h, uint32_t i, txmq_msg_t** out);
/* Whether message i would decode (txmq__half_msg), and then its queue id
 * and tags (into the record, not terminated; NULL if none), without
 * building it. 0 or TXMQ_EPROTO. */
int txmq__half_msg_peek(const txmq__half_t* h, uint32_t i, int32_t* queue_id,
                        const char** tags, size_t* tags_len);
/* The topic of message i without decoding the rest. 0 or TXMQ_EPROTO. */
int txmq__half_topic(const txmq__half_t* h, uint32_t i, const char** s,
                     uint32_t* len);

typedef struct {
  uint8_t id[TXMQ_TX_ID_LEN];
  txmq__ev_t ev;
  txmq_tx_source_t src;
  const char* ver; /* NULL if none; not terminated */
  uint32_t ver_len;
  const char* who;
  uint32_t who_len;
  uint32_t count;
  int64_t at;
  uint64_t prev;
} txmq__event_t;

int txmq__event_encode(msgpack_sbuffer* sb, const txmq__event_t* ev);
/* Decodes into ev; strings point into `up`'s buffer, which is data. */
int txmq__event_decode(const void* data, size_t len, txmq__event_t* ev);

/* ---- snapshot ---- */

/* The engine's state as of log position applied, in the snapshot format
 * described in tx.c (the store writes it beside its checkpoint): the
 * store's capture callback, exposed for the benchmark that measures how
 * long it holds the loop. 0 and a malloc'ed buffer, or a TXMQ_E* code. */
int txmq__tx_snapshot(txmq_tx_t* tx, uint64_t applied, void** buf,
                      size_t* len);

/* ---- figures ---- */

/* Bytes the engine's tables hold (pool, hashes, heap, interned strings,
 * decided table), by its own accounting: for benchmarks. */
size_t txmq__tx_mem_bytes(const txmq_tx_t* tx);

#endif /* TXMQ_TX_INT_H */
