/*
 * txmq/tx.h - transactions: half messages, decisions, the check scheduler,
 * parked transactions, audit and recovery.
 *
 * A transaction carries one or more messages (to one or more topics). They
 * are stored durably in one TXMQ_REC_TX_HALF log record and stay invisible
 * until a COMMIT decision is durable; then all of them are published to the
 * store's queues in one step (all or none, also across a crash: the decision
 * is one checksummed log record, and recovery publishes from it).
 *
 * STATES
 *   PENDING     undecided (new, or answered UNKNOWN); has a due time
 *   COMMITTED   visible; a repeated COMMIT succeeds and changes nothing
 *   ROLLED_BACK discarded; a repeated ROLLBACK succeeds and changes nothing
 *   PARKED      the check budget ran out; never delivered; only an operator
 *               changes it: a resume (back to PENDING with a fresh budget)
 *               or a COMMIT or ROLLBACK of its own
 * The first decision wins. COMMIT after ROLLBACK (or the reverse) fails with
 * TXMQ_ECONFLICT; a decision on a PARKED transaction fails with TXMQ_EPARKED
 * unless it is an operator's COMMIT or ROLLBACK; UNKNOWN on a decided transaction is a no-op that reports the
 * decided state. A transaction the engine does not know (never existed, or
 * decided longer ago than the idempotence window, see
 * TXMQ_TX_OPT_DECIDED_WINDOW) gives TXMQ_ENOTFOUND: nothing becomes visible.
 *
 * CHECKS
 * Every PENDING transaction has a due time on the engine's monotonic clock.
 * The first check is due after the transaction timeout (default 6 s) or the
 * transaction's own check-immunity delay if it has one; the delay does not
 * spend the check budget. Later checks are due every check interval (default
 * 30 s), multiplied by the backoff factor after each check up to the maximum
 * interval. The scheduler is a binary min-heap of due times, driven by one
 * timer armed for the earliest due time: the work per tick is proportional
 * to the checks that are due (times log n), never to all pending
 * transactions. A decided transaction leaves the heap at once, so no check is
 * ever sent for it.
 *
 * A due check is offered to the check targets in the order they were added
 * (the runtime adds: the group's script if loaded; the producer connection
 * that sent the half message; any other live member of the group). A target
 * returns 0 if it took the check (and will answer with txmq_tx_check_answer
 * or txmq_tx_check_failed), TXMQ_EAGAIN if it cannot serve it now. If no
 * target takes it, the check is retried after the retry delay (or at once on
 * txmq_tx_kick_group) and is NOT counted. A check that was taken counts
 * when it completes: answered UNKNOWN, or no answer within the check
 * timeout. A check whose target failed before answering (for example the
 * connection closed) is offered again at once and does not count. After
 * max_checks counted checks the transaction is PARKED.
 *
 * AUDIT
 * Every event is a TXMQ_REC_TX_EVENT log record that names the previous
 * event of the same transaction, so txmq_tx_show() reads a transaction's
 * whole history without scanning the log. Each records its source (the
 * producer's answer, a check answer, the runtime's script and its version,
 * an operator, the maximum reached), the wall-clock time, the check count.
 *
 * RECOVERY
 * The engine is the store's record handler: at open, TX_HALF and TX_EVENT
 * records are replayed from the oldest still-undecided half record (the
 * engine tells the store through the replay floor). Undecided transactions
 * come back with their check count and a due time computed from the wall
 * clock recorded with their last event; decided ones stay decided and are
 * never checked; a COMMIT whose publish was not yet checkpointed is
 * published again, exactly once. A crash between "half stored" and
 * "decision stored" leaves the transaction PENDING: a check decides it.
 *
 * RETENTION: no segment that holds a PENDING or PARKED transaction's half
 * record is deleted: the store's keep hook on the log keeps every segment
 * from the replay floor on, and the engine's floor is its oldest undecided
 * half record. (The store owns the log's keep hook; the engine does not
 * replace it.)
 *
 * IDEMPOTENCE ACROSS RESTARTS: decided transactions are remembered in memory
 * (DECIDED_WINDOW). After a restart only those that replay covers are known
 * (their half record lies after the replay floor of the last checkpoint);
 * a repeat for an older one gives TXMQ_ENOTFOUND, and nothing is made
 * visible twice.
 *
 * THREADING: loop thread only, like the store.
 */
#ifndef TXMQ_TX_H
#define TXMQ_TX_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "txmq/msg.h"
#include "txmq/store.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct txmq_tx_s txmq_tx_t;

#define TXMQ_TX_ID_LEN 16
#define TXMQ_TX_ID_STRLEN 32
#define TXMQ_TX_MAX_MSGS 64

/* Log record types owned by the engine. */
enum {
  TXMQ_REC_TX_HALF = 16,   /* msgpack map: tx, group, producer, immunity_ms,
                              at (wall ms), msgs (array of encoded msgs) */
  TXMQ_REC_TX_EVENT = 17   /* msgpack map: tx, ev, src, ver, who, count, at,
                              prev (position of the previous record of the
                              same transaction) */
};

typedef enum {
  TXMQ_TX_PENDING = 0,
  TXMQ_TX_COMMITTED = 1,
  TXMQ_TX_ROLLED_BACK = 2,
  TXMQ_TX_PARKED = 3
} txmq_tx_state_t;

/* What a producer, check or script answers. */
typedef enum {
  TXMQ_TX_COMMIT = 1,
  TXMQ_TX_ROLLBACK = 2,
  TXMQ_TX_UNKNOWN = 3
} txmq_tx_decision_t;

/* Who made a decision or caused an event. */
typedef enum {
  TXMQ_TX_SRC_PRODUCER = 1,   /* the producer's end-transaction */
  TXMQ_TX_SRC_CHECK = 2,      /* a producer's answer to a check */
  TXMQ_TX_SRC_SCRIPT = 3,     /* the runtime's script (execute or check) */
  TXMQ_TX_SRC_OPERATOR = 4,   /* an admin's resume or decision */
  TXMQ_TX_SRC_MAX_CHECKS = 5, /* parked after the maximum */
  TXMQ_TX_SRC_TIMEOUT = 6,    /* a check that got no answer in time */
  TXMQ_TX_SRC_UNREADABLE = 7  /* a check that could not be offered: the
                                 half record could not be read back (who
                                 names the error); counted, so that it
                                 ends parked */
} txmq_tx_source_t;

typedef enum {
  TXMQ_TX_OPT_TIMEOUT_MS = 1,        /* first check after, default 6000 */
  TXMQ_TX_OPT_CHECK_INTERVAL_MS,     /* default 30000 */
  TXMQ_TX_OPT_CHECK_BACKOFF_PCT,     /* interval growth per check in %,
                                        default 100 (no growth) */
  TXMQ_TX_OPT_CHECK_INTERVAL_MAX_MS, /* cap of a backed-off interval,
                                        default 300000 */
  TXMQ_TX_OPT_MAX_CHECKS,            /* default 15 */
  TXMQ_TX_OPT_CHECK_TIMEOUT_MS,      /* answer expected within, default 5000 */
  TXMQ_TX_OPT_RETRY_MS,              /* undeliverable check retried after,
                                        default 1000 */
  TXMQ_TX_OPT_DECIDED_WINDOW,        /* decided transactions remembered for
                                        idempotent repeats, default 1000000 */
  TXMQ_TX_OPT_MANUAL_CLOCK,          /* 1: no timer; time comes from the
                                        clock callback and the caller runs
                                        txmq_tx_tick (tests) */
  TXMQ_TX_OPT_MAX_GROUPS             /* producer groups with undecided
                                        (pending, parked) transactions at
                                        once, default 1024; begin for
                                        another group is TXMQ_ERANGE */
} txmq_tx_opt_t;

/* A check offered to a target. Everything is valid only during the call; a
 * target that answers later copies what it needs (tx id, seq). */
typedef struct {
  const uint8_t* tx_id;          /* TXMQ_TX_ID_LEN bytes */
  uint64_t seq;                  /* pass back to answer/failed */
  const char* group;
  const char* producer;          /* client id that sent the half message */
  uint32_t check_count;          /* checks counted so far (this one not) */
  uint64_t half_pos;
  int64_t born_wall_ms;          /* when the half message was stored */
  const txmq_msg_t* const* msgs; /* the transaction's messages */
  size_t nmsgs;
} txmq_tx_check_t;

typedef struct {
  const char* name; /* for logs and the audit trail */
  /* 0: taken (answer later, possibly from within this call); TXMQ_EAGAIN:
   * cannot serve now, try the next target. */
  int (*check)(void* arg, txmq_tx_t* tx, const txmq_tx_check_t* check);
} txmq_tx_target_t;

/* Results. status 0 or a TXMQ_E* code. tx_id (16 bytes) valid during the
 * call. For begin, msgs are the stored messages (ids, queue ids). */
typedef void (*txmq_tx_begin_cb)(txmq_tx_t* tx, int status,
                                 const uint8_t* tx_id,
                                 const txmq_msg_t* const* msgs, size_t nmsgs,
                                 void* arg);
/* state: the transaction's state after the call (for UNKNOWN on a decided
 * transaction, its decided state). */
typedef void (*txmq_tx_end_cb)(txmq_tx_t* tx, int status,
                               txmq_tx_state_t state, void* arg);
/* Monotonic milliseconds and wall-clock milliseconds, for tests. */
typedef struct {
  uint64_t (*mono_ms)(void* arg);
  int64_t (*wall_ms)(void* arg);
  void* arg;
} txmq_tx_clock_t;

/* Creates the engine over an unopened store and makes itself the store's
 * record handler and replay floor, and the decoder of the messages inside
 * TXMQ_REC_TX_HALF records (for txmq_store_get). Call before
 * txmq_store_open; then txmq_tx_start after the store opened. */
int txmq_tx_new(txmq_tx_t** out, uv_loop_t* loop, txmq_store_t* st);
int txmq_tx_set(txmq_tx_t* tx, txmq_tx_opt_t opt, int64_t value);
/* clock is copied; NULL restores the real clocks (the loop's monotonic clock
 * read fresh with uv_hrtime, since uv_now goes stale while the loop thread
 * works, and the system wall clock). */
void txmq_tx_set_clock(txmq_tx_t* tx, const txmq_tx_clock_t* clock);
/* Adds a check target (the struct and arg must outlive the engine). */
int txmq_tx_add_target(txmq_tx_t* tx, const txmq_tx_target_t* target,
                       void* arg);
/* After the store opened: schedules the recovered transactions and arms the
 * timer. */
int txmq_tx_start(txmq_tx_t* tx);

/* Stores a half transaction of n messages (1..TXMQ_TX_MAX_MSGS) for producer
 * group `group` sent by client `producer` (may be NULL). immunity_ms > 0
 * delays the first check instead of the timeout. The messages are only read
 * during the call. cb runs when the half record is durable. If the call
 * fails, cb is never called. TXMQ_ERANGE for a group beyond MAX_GROUPS or a
 * topic beyond the store's MAX_TOPICS, with txmq_tx_diag() naming the
 * limit. Recovery after a restart is never refused. */
int txmq_tx_begin(txmq_tx_t* tx, const char* group, const char* producer,
                  txmq_msg_t* const* msgs, size_t n, int64_t immunity_ms,
                  txmq_tx_begin_cb cb, void* arg);
/* txmq_tx_begin, handing the messages over instead of having them copied:
 * on success they are the engine's (the caller frees only its array and
 * must not touch them again); on failure they stay the caller's, possibly
 * with a queue id set. Each message may appear in msgs only once. */
int txmq_tx_begin_take(txmq_tx_t* tx, const char* group, const char* producer,
                       txmq_msg_t* const* msgs, size_t n, int64_t immunity_ms,
                       txmq_tx_begin_cb cb, void* arg);

/* Why the last txmq_tx_begin failed when its code alone does not say (a
 * limit and its value), "" otherwise. Valid until the next begin. */
const char* txmq_tx_diag(const txmq_tx_t* tx);

/* Ends (or answers for) a transaction. version is the script version for
 * TXMQ_TX_SRC_SCRIPT (may be NULL), who names the client or operator (may be
 * NULL). cb runs when the decision is durable (and, for COMMIT, the messages
 * are visible); a repeat of the same decision waits for the first one's
 * durability. If the call fails, cb is never called. A PARKED transaction
 * takes only an operator's COMMIT or ROLLBACK (source TXMQ_TX_SRC_OPERATOR);
 * anything else gets TXMQ_EPARKED. An operator's COMMIT reads the half
 * record back first and fails with TXMQ_ECORRUPT, recording nothing, if its
 * messages do not decode (only a ROLLBACK can decide it then). If an
 * operator's decision does not become durable, a parked transaction stays
 * parked. */
int txmq_tx_end(txmq_tx_t* tx, const uint8_t* tx_id,
                txmq_tx_decision_t decision, txmq_tx_source_t source,
                const char* version, const char* who, txmq_tx_end_cb cb,
                void* arg);

/* A target's answer to check `seq`. COMMIT/ROLLBACK decide (source is
 * TXMQ_TX_SRC_CHECK or TXMQ_TX_SRC_SCRIPT); UNKNOWN counts the check. A stale
 * seq (the transaction was decided, or the check timed out) is ignored and
 * returns TXMQ_ENOTFOUND. */
int txmq_tx_check_answer(txmq_tx_t* tx, const uint8_t* tx_id, uint64_t seq,
                         txmq_tx_decision_t decision, txmq_tx_source_t source,
                         const char* version, const char* who);
/* The target that took check `seq` could not deliver it: it is offered again
 * at once (to the next targets too) and not counted. */
int txmq_tx_check_failed(txmq_tx_t* tx, const uint8_t* tx_id, uint64_t seq);
/* A member of `group` became available: checks of the group that found no
 * target are offered again now. */
void txmq_tx_kick_group(txmq_tx_t* tx, const char* group);

/* Operator: puts a PARKED transaction back to PENDING with a fresh budget,
 * due now. TXMQ_EINVAL if it is not parked. cb as for txmq_tx_end. */
int txmq_tx_resume(txmq_tx_t* tx, const uint8_t* tx_id, const char* who,
                   txmq_tx_end_cb cb, void* arg);

/* Runs every check that is due now (the timer does this by itself unless
 * MANUAL_CLOCK). Returns how many checks were offered. */
size_t txmq_tx_tick(txmq_tx_t* tx);

/* One transaction's summary. */
typedef struct {
  uint8_t tx_id[TXMQ_TX_ID_LEN];
  txmq_tx_state_t state;
  const char* group;      /* valid until the engine changes the tx */
  const char* producer;
  uint32_t check_count;
  uint32_t nmsgs;
  uint64_t half_pos;
  int64_t born_wall_ms;
  int64_t due_in_ms;      /* PENDING only: ms until the next check (<= 0:
                             due), else 0 */
} txmq_tx_info_t;

/* Lists PENDING and PARKED transactions (group NULL: all groups), oldest
 * first, calling fn for each; fn returns non-zero to stop. */
void txmq_tx_list(txmq_tx_t* tx, const char* group,
                  int (*fn)(void* arg, const txmq_tx_info_t* info),
                  void* arg);

/* One event of a transaction's history. */
typedef struct {
  uint64_t pos;            /* its log record */
  const char* event;       /* "half", "commit", "rollback", "unknown",
                              "check", "park", "resume" */
  txmq_tx_source_t source; /* 0 for "half" */
  const char* version;     /* script version, or NULL */
  const char* who;         /* client id or operator, or NULL */
  uint32_t check_count;
  int64_t wall_ms;
} txmq_tx_event_t;

/* Looks a transaction up (any state within the window) and calls fn for each
 * event of its history, oldest first, reading the chained log records.
 * TXMQ_ENOTFOUND (nothing filled) if unknown; any other error comes after
 * info was filled, with the history incomplete. info may be NULL.
 * TXMQ_EAGAIN if its newest event is accepted but not yet written (ask
 * again after its callback). If
 * the chain cannot be followed to the half record (retention deleted it, or
 * it is damaged), fn still gets the events that were read and the read's
 * code is returned. */
int txmq_tx_show(txmq_tx_t* tx, const uint8_t* tx_id, txmq_tx_info_t* info,
                 void (*fn)(void* arg, const txmq_tx_event_t* ev), void* arg);

/* Metrics kept in the engine. Latency is from the half record being durable
 * to the decision being durable, in milliseconds, in power-of-two buckets:
 * bucket i counts latencies in [2^(i-1), 2^i) ms (bucket 0: < 1 ms). */
#define TXMQ_TX_LATENCY_BUCKETS 24
typedef struct {
  uint64_t pending;
  uint64_t parked;
  uint64_t begun;
  uint64_t commits;
  uint64_t rollbacks;
  uint64_t parks;
  uint64_t resumes;
  uint64_t checks_sent;
  uint64_t checks_answered;
  uint64_t checks_timed_out;
  uint64_t checks_undeliverable;
  uint64_t decision_latency_ms[TXMQ_TX_LATENCY_BUCKETS];
} txmq_tx_metrics_t;
void txmq_tx_metrics(const txmq_tx_t* tx, txmq_tx_metrics_t* out);
/* Pending transactions whose messages include topic (each counted once per
 * topic it touches). */
uint64_t txmq_tx_pending_on_topic(const txmq_tx_t* tx, const char* topic);

/* Parses/prints a transaction id as 32 hex digits. */
int txmq_tx_id_parse(const char* str, uint8_t id[TXMQ_TX_ID_LEN]);
char* txmq_tx_id_str(const uint8_t* id, char buf[TXMQ_TX_ID_STRLEN + 1]);
const char* txmq_tx_state_name(txmq_tx_state_t s);     /* "pending", ... */
const char* txmq_tx_source_name(txmq_tx_source_t s);   /* "producer", ... */

/* Stops the timer and refuses new requests (TXMQ_ECLOSED); fails nothing
 * already accepted: cb runs once every accepted request's callback has run
 * and the engine's handles are closed. Then close the store, and after its
 * close callback call txmq_tx_free, then txmq_store_free: the store's final
 * checkpoint still asks the engine for the replay floor, and without it the
 * undecided transactions would not be replayed at the next open. */
int txmq_tx_close(txmq_tx_t* tx, void (*cb)(txmq_tx_t* tx, void* arg),
                  void* arg);
void txmq_tx_free(txmq_tx_t* tx);

#ifdef __cplusplus
}
#endif
#endif /* TXMQ_TX_H */
