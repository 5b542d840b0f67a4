/*
 * txmq/consumer.h - consumer groups over committed messages.
 *
 * A consumer group reads a topic's queues; each message goes to one member
 * of the group (clustering): members call txmq_consumers_receive with the
 * same group name and get different messages. A received message is
 * invisible to the group for its visibility timeout; acknowledged, it is
 * done; not acknowledged in time, it becomes deliverable again with its
 * delivery count raised; after max_deliveries deliveries it is moved to the
 * group's dead-letter topic "DLQ.<group>" (stored as a new plain message
 * with the properties DLQ_ORIGIN_TOPIC, DLQ_ORIGIN_QID, DLQ_ORIGIN_OFFSET,
 * DLQ_ORIGIN_MSG_ID) and counts as consumed.
 *
 * PROGRESS: per (group, topic, queue) the committed offset is the lowest
 * offset not yet acknowledged; it is saved with txmq_store_offset_set and so
 * survives restarts through the store's checkpoints. Messages that were
 * received but not acknowledged before a restart are delivered again after
 * it (at-least-once).
 *
 * START: the first time a group reads a topic it starts from the earliest
 * retained message unless told otherwise (latest, or an explicit offset for
 * every queue): nothing sent before a group first connects is skipped.
 *
 * FILTERS: a tag expression "*" (everything, also messages without tags) or
 * "A || B || C" (messages whose tags equal one of them). Messages that do
 * not match are skipped for that group (acknowledged implicitly), as in
 * RocketMQ. Different members of one group must use the same expression.
 *
 * LIMITS: at most MAX_INFLIGHT received-but-unacknowledged messages per
 * group and topic; receive returns fewer (or none) when the cap is reached,
 * so a consumer that never acknowledges cannot grow memory without bound.
 * At most MAX_GROUPS consumer groups: those with offsets in the store when
 * the engine starts (all of them, even past the limit) and those that
 * received or set an offset since; a receive or offset_set for another
 * group is TXMQ_ERANGE, with txmq_consumers_diag() naming the limit.
 *
 * THREADING: loop thread only.
 */
#ifndef TXMQ_CONSUMER_H
#define TXMQ_CONSUMER_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "txmq/msg.h"
#include "txmq/store.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct txmq_consumers_s txmq_consumers_t;

#define TXMQ_CONSUMER_HANDLE_MAX 64

typedef enum {
  TXMQ_CONSUMERS_OPT_VISIBILITY_MS = 1, /* default 30000 */
  TXMQ_CONSUMERS_OPT_MAX_DELIVERIES,    /* default 16 */
  TXMQ_CONSUMERS_OPT_MAX_INFLIGHT,      /* per group and topic, default 10000 */
  TXMQ_CONSUMERS_OPT_MANUAL_CLOCK,      /* 1: time from the clock callback,
                                           redelivery only on tick (tests) */
  TXMQ_CONSUMERS_OPT_MAX_GROUPS         /* consumer groups, default 1024 */
} txmq_consumers_opt_t;

typedef enum {
  TXMQ_FROM_EARLIEST = 0,
  TXMQ_FROM_LATEST = 1,
  TXMQ_FROM_OFFSET = 2
} txmq_from_t;

/* One received message. */
typedef struct {
  txmq_msg_t* msg;       /* owned by the array; queue id and offset set */
  char handle[TXMQ_CONSUMER_HANDLE_MAX]; /* pass to txmq_consumers_ack */
  uint32_t deliveries;   /* 1 on the first delivery */
} txmq_delivery_t;

/* Called when a topic that a waiter watches may have new deliverable
 * messages (a publish, a redelivery coming due). */
typedef void (*txmq_consumers_wake_cb)(void* arg, const char* group,
                                       const char* topic);

int txmq_consumers_new(txmq_consumers_t** out, uv_loop_t* loop,
                       txmq_store_t* st);
int txmq_consumers_set(txmq_consumers_t* cs, txmq_consumers_opt_t opt,
                       int64_t value);
/* For MANUAL_CLOCK: monotonic milliseconds. */
void txmq_consumers_set_clock(txmq_consumers_t* cs, uint64_t (*mono_ms)(void*),
                              void* arg);
/* Installs the wake callback (one per engine; the server multiplexes). */
void txmq_consumers_set_wake_cb(txmq_consumers_t* cs, txmq_consumers_wake_cb cb,
                                void* arg);
/* After the store opened. */
int txmq_consumers_start(txmq_consumers_t* cs);

/* Parses a tag expression; TXMQ_EINVAL with a reason in diag (if not NULL,
 * at least 128 bytes) for anything else than "*" or "A || B". */
int txmq_consumers_check_filter(const char* expr, char* diag, size_t diag_len);

/* Receives up to max (1..256) deliverable messages of topic for group that
 * match filter (NULL = "*"), making them invisible for visibility_ms (0 =
 * the default). from/offset apply only when the group has no progress on
 * the topic yet. On success *out is an array of *n deliveries (possibly 0)
 * to free with txmq_consumers_free_deliveries. TXMQ_ENOTFOUND if the topic
 * does not exist, TXMQ_EBADNAME, TXMQ_EINVAL for a bad filter, TXMQ_ERANGE
 * for a group beyond MAX_GROUPS (see txmq_consumers_diag). */
int txmq_consumers_receive(txmq_consumers_t* cs, const char* group,
                           const char* topic, const char* filter, size_t max,
                           int64_t visibility_ms, txmq_from_t from,
                           int64_t offset, txmq_delivery_t** out, size_t* n);
void txmq_consumers_free_deliveries(txmq_delivery_t* d, size_t n);

/* Acknowledges a delivery. 0 if it was in flight; TXMQ_ENOTFOUND if the
 * handle is unknown or its visibility timeout passed (it may have been
 * delivered again), TXMQ_EINVAL if malformed. */
int txmq_consumers_ack(txmq_consumers_t* cs, const char* group,
                       const char* handle);

/* Makes expired deliveries deliverable again (or moves them to the DLQ);
 * runs on its own timer unless MANUAL_CLOCK. Returns how many expired. */
size_t txmq_consumers_tick(txmq_consumers_t* cs);

/* Moves group's committed offset on a queue (saved as with
 * txmq_store_offset_set). For a group reading the topic it takes effect at
 * once: the next receive starts at offset, and the deliveries outstanding
 * on that queue are forgotten (their handles no longer match; one already
 * on its way to the DLQ still lands there). A group the engine does not
 * know counts against MAX_GROUPS (TXMQ_ERANGE past it). TXMQ_ERANGE too
 * for an offset past the queue's end (the group would skip messages not yet
 * written; an offset below its begin starts at the begin). TXMQ_ENOTFOUND
 * for a queue that does not exist. */
int txmq_consumers_offset_set(txmq_consumers_t* cs, const char* group,
                              const char* topic, int qid, int64_t offset);

/* Why the last receive or offset_set was refused when its code alone does
 * not say (TXMQ_ERANGE: the group limit and its value). Valid until the
 * next refusal. */
const char* txmq_consumers_diag(const txmq_consumers_t* cs);

/* Progress of a group on a queue: committed offset (lowest unacknowledged),
 * next offset never delivered, in-flight count. TXMQ_ENOTFOUND if the group
 * never read it. */
int txmq_consumers_progress(txmq_consumers_t* cs, const char* group,
                            const char* topic, int qid, int64_t* committed,
                            int64_t* next, size_t* inflight);

/* Closes the timer; cb on the loop when done; then free. */
int txmq_consumers_close(txmq_consumers_t* cs,
                         void (*cb)(txmq_consumers_t* cs, void* arg),
                         void* arg);
void txmq_consumers_free(txmq_consumers_t* cs);

#ifdef __cplusplus
}
#endif
#endif /* TXMQ_CONSUMER_H */
