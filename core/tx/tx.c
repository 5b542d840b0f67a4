/*
 * tx.c - the transaction engine: half messages, decisions, the check
 * scheduler, parking, audit chains and recovery (see txmq/tx.h).
 *
 * What it provides: the state machine of txmq/tx.h on top of the store's
 * log. Every state change is first appended as a log record (so a refused
 * append changes nothing), then applied in memory at once (so a racing,
 * conflicting request is refused immediately), and reported to the caller
 * when the record is durable. A COMMIT publishes all the transaction's
 * messages inside the one append callback of its record, so consumers on
 * the loop see all of them or none.
 *
 * What it does not do: talk to producers or run scripts. Those are check
 * targets added by the runtime; the engine only offers checks to them in
 * order and takes their answers.
 *
 * Event names in the audit chain: "half" (the half record), "commit",
 * "rollback", "unknown" (an UNKNOWN answer; from a check or script it counts
 * a check), "check" (a check that counted without an answer: it timed out),
 * "park" (the budget ran out), "resume" (an operator gave a fresh budget).
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/pool.h"
#include "store/store_int.h"
#include "txmq/error.h"
#include "txmq/log.h"
#include "tx/tx_int.h"

#define MAX_TARGETS 64
#define MAX_LABEL TXMQ__MAX_LABEL
/* Options that are durations: an upper bound that keeps due-time arithmetic
 * far from overflow (about 35 years). */
#define MAX_DURATION_MS (INT64_C(1) << 40)

typedef struct waiter_s {
  txmq_tx_end_cb cb;
  void* arg;
  struct waiter_s* next;
} waiter_t;

/* A COMMIT or ROLLBACK waiting for its record to be durable. Repeats of the
 * same decision (and UNKNOWNs) meanwhile join as waiters. */
typedef struct {
  txmq_tx_t* tx;
  uint32_t idx;
  uint8_t state;
  uint8_t before; /* PENDING, or PARKED for an operator's decision */
  waiter_t* head;
  waiter_t* tail;
} decide_op_t;

/* A half record waiting for durability. */
typedef struct {
  txmq_tx_t* tx;
  uint8_t id[TXMQ_TX_ID_LEN];
  int64_t immunity_ms;
  txmq_tx_begin_cb cb;
  void* arg;
  size_t n;   /* messages prepared */
  size_t cap; /* messages asked for */
  txmq_msg_t* msgs[];
} begin_op_t;

/* A producer's UNKNOWN or an operator's resume waiting for durability. */
enum { EVOP_UNKNOWN, EVOP_RESUME };
typedef struct {
  txmq_tx_t* tx;
  uint8_t id[TXMQ_TX_ID_LEN];
  int kind;
  uint16_t prev_count;
  txmq_tx_end_cb cb;
  void* arg;
} event_op_t;

/* The size of op_pool's blocks: the largest of the ops kept there. */
#define MAX2(a, b) ((a) > (b) ? (a) : (b))
#define OP_BLOCK                                                            \
  MAX2(MAX2(sizeof(decide_op_t), sizeof(event_op_t)),                       \
       MAX2(sizeof(waiter_t), sizeof(begin_op_t) + sizeof(txmq_msg_t*)))

/* What an entry was just before one of its event records, kept while the
 * record is not applied yet (see "snapshot" below): a snapshot describes
 * the engine as of the store's applied position, and the engine changes an
 * entry as soon as it appends the record. */
enum { DUE_AT, DUE_NOW, DUE_NONE };
typedef struct {
  uint64_t pos;      /* the record */
  uint64_t half_pos; /* names the entry: pool indexes are reused */
  uint64_t last_pos;
  uint64_t due;      /* with DUE_AT: the heap's (monotonic) due time */
  uint32_t idx;
  uint16_t count;
  uint8_t state;
  uint8_t due_kind;
} undo_t;

/* A callback to run from the loop, for requests answered without a write
 * (a repeat of a decision that is already durable). libuv never calls a
 * callback from inside the call that was given it, and neither do we. */
typedef struct defer_s {
  txmq_tx_end_cb cb;
  void* arg;
  txmq_tx_state_t state;
  struct defer_s* next;
} defer_t;

struct txmq_tx_s {
  uv_loop_t* loop;
  txmq_store_t* st;

  int64_t timeout_ms, interval_ms, backoff_pct, interval_max_ms;
  int64_t check_timeout_ms, retry_ms;
  uint32_t max_checks;
  uint32_t max_groups; /* producer groups with live entries, at most */
  uint32_t ngroups;    /* producer groups with live entries */
  int manual;
  txmq_tx_clock_t clock;
  int has_clock;

  struct {
    const txmq_tx_target_t* t;
    void* arg;
  } targets[MAX_TARGETS];
  size_t ntargets;

  txmq__itab_t strs;
  txmq__txtab_t txs;
  txmq__heap_t heap;
  txmq__dtab_t dec;
  uint32_t age_head, age_tail; /* live entries in half_pos order */
  txmq__idgen_t idgen;
  txmq_tx_metrics_t m;
  msgpack_sbuffer sb; /* reused for every record we encode */
  msgpack_zone zone;  /* reused for every half record we decode */
  int64_t replay_skew; /* monotonic minus wall clock, read once at replay */
  int replay_skew_set;

  /* Undo records of the event records not yet applied, in log order (a
   * FIFO: applied only grows). undo_lost: one could not be kept (out of
   * memory), so no snapshot is taken until applied passes undo_lost_pos. */
  undo_t* uq;
  uint32_t uq_cap, uq_head, uq_n; /* uq_cap: 0 or a power of two */
  int undo_lost;
  uint64_t undo_lost_pos;

  uv_timer_t timer;
  uv_idle_t idle;
  int handles;        /* timer and idle initialised */
  int handles_closed; /* how many close callbacks ran */
  int armed;
  uint64_t armed_due;
  int dispatching;    /* inside a target's check() */

  defer_t* dq_head;
  defer_t* dq_tail;
  txmq__pool_t op_pool; /* decide, event and one-message begin ops, waiters */
  int idle_on;

  int started, closing, close_started;
  uint64_t inflight; /* appends whose callback has not run yet */
  void (*close_cb)(txmq_tx_t* tx, void* arg);
  void* close_arg;

  /* Why the last txmq_tx_begin failed, when its code does not say. */
  char diag[256];
  /* txmq_tx_show() hands out strings of decided transactions from here. */
  char* show_group;
  char* show_producer;
};

/* ---- clocks ---- */

static uint64_t mono_now(txmq_tx_t* tx) {
  if (tx->has_clock) return tx->clock.mono_ms(tx->clock.arg);
  /* uv_hrtime rather than uv_now: the loop's cached time goes stale while
   * the loop thread works, and due times computed from a stale clock would
   * fire checks early. Both are the same monotonic clock. */
  return uv_hrtime() / 1000000u;
}

static int64_t wall_now(txmq_tx_t* tx) {
  if (tx->has_clock) return tx->clock.wall_ms(tx->clock.arg);
  return txmq__now_ms();
}

/* ---- small helpers ---- */

static txmq__txe_t* E(txmq_tx_t* tx, uint32_t i) {
  return txmq__txe(&tx->txs, i);
}

static int label_ok(const char* s) {
  return s == NULL || strlen(s) <= MAX_LABEL;
}

/* Interval before the check after `count` counted checks. */
static int64_t interval_for(const txmq_tx_t* tx, uint32_t count) {
  int64_t iv = tx->interval_ms;
  for (uint32_t k = 1; k < count && iv < tx->interval_max_ms; k++) {
    if (tx->backoff_pct <= 100) break;
    iv = iv * tx->backoff_pct / 100;
  }
  return iv < tx->interval_max_ms ? iv : tx->interval_max_ms;
}

/* Time arithmetic on values read back from records: those may be anything
 * a foreign writer put there, so sums saturate instead of overflowing. */
static int64_t sat_add(int64_t a, int64_t b) {
  int64_t r;
  if (__builtin_add_overflow(a, b, &r)) return b > 0 ? INT64_MAX : INT64_MIN;
  return r;
}

static int64_t sat_sub(int64_t a, int64_t b) {
  int64_t r;
  if (__builtin_sub_overflow(a, b, &r)) return b < 0 ? INT64_MAX : INT64_MIN;
  return r;
}

/* Pending-per-topic counts: every topic of the entry's set, +1 or -1. */
static void topics_adjust(txmq_tx_t* tx, txmq__txe_t* e, int delta) {
  /* A set of one topic is that topic's own interned string. */
  if (memchr(e->topics->s, '\n', e->topics->len) == NULL) {
    e->topics->pending += (uint64_t)(int64_t)delta;
    return;
  }
  const char* s = e->topics->s;
  const char* end = s + e->topics->len;
  while (s < end) {
    const char* nl = memchr(s, '\n', (size_t)(end - s));
    size_t len = nl ? (size_t)(nl - s) : (size_t)(end - s);
    txmq__istr_t* t = txmq__istr_find(&tx->strs, s, len);
    if (t != NULL) t->pending += (uint64_t)(int64_t)delta;
    s += len + 1;
  }
}

/* Counts a state in the gauges (delta +1 entering, -1 leaving). */
static void gauge(txmq_tx_t* tx, txmq__txe_t* e, int delta) {
  if (e->state == TXMQ_TX_PENDING) {
    tx->m.pending += (uint64_t)(int64_t)delta;
    topics_adjust(tx, e, delta);
  } else if (e->state == TXMQ_TX_PARKED) {
    tx->m.parked += (uint64_t)(int64_t)delta;
  }
}

static void set_state(txmq_tx_t* tx, txmq__txe_t* e, txmq_tx_state_t s) {
  if (e->state == s) return;
  gauge(tx, e, -1);
  e->state = (uint8_t)s;
  gauge(tx, e, +1);
}

static void undeliv_remove(txmq_tx_t* tx, uint32_t i) {
  txmq__txe_t* e = E(tx, i);
  if (!(e->flags & TXE_UNDELIV)) return;
  e->flags &= (uint8_t)~TXE_UNDELIV;
  if (e->u.ul.prev != TXMQ__NIL) E(tx, e->u.ul.prev)->u.ul.next = e->u.ul.next;
  else e->group->undeliv_head = e->u.ul.next;
  if (e->u.ul.next != TXMQ__NIL) E(tx, e->u.ul.next)->u.ul.prev = e->u.ul.prev;
  e->u.ul.prev = e->u.ul.next = TXMQ__NIL;
}

static void undeliv_add(txmq_tx_t* tx, uint32_t i) {
  txmq__txe_t* e = E(tx, i);
  if (e->flags & TXE_UNDELIV) return;
  e->flags |= TXE_UNDELIV;
  e->u.ul.prev = TXMQ__NIL;
  e->u.ul.next = e->group->undeliv_head;
  if (e->u.ul.next != TXMQ__NIL) E(tx, e->u.ul.next)->u.ul.prev = i;
  e->group->undeliv_head = i;
}

static void age_append(txmq_tx_t* tx, uint32_t i) {
  txmq__txe_t* e = E(tx, i);
  e->age_prev = tx->age_tail;
  e->age_next = TXMQ__NIL;
  if (tx->age_tail != TXMQ__NIL) E(tx, tx->age_tail)->age_next = i;
  else tx->age_head = i;
  tx->age_tail = i;
}

static void age_unlink(txmq_tx_t* tx, uint32_t i) {
  txmq__txe_t* e = E(tx, i);
  if (e->age_prev != TXMQ__NIL) E(tx, e->age_prev)->age_next = e->age_next;
  else tx->age_head = e->age_next;
  if (e->age_next != TXMQ__NIL) E(tx, e->age_next)->age_prev = e->age_prev;
  else tx->age_tail = e->age_prev;
}

/* Releases the per-topic references an entry holds (see attach_strings). */
static void topics_unref(txmq_tx_t* tx, txmq__istr_t* set) {
  if (set == NULL) return;
  if (memchr(set->s, '\n', set->len) != NULL) {
    const char* s = set->s;
    const char* end = s + set->len;
    while (s < end) {
      const char* nl = memchr(s, '\n', (size_t)(end - s));
      size_t len = nl ? (size_t)(nl - s) : (size_t)(end - s);
      txmq__istr_unref(&tx->strs, txmq__istr_find(&tx->strs, s, len));
      s += len + 1;
    }
  }
  txmq__istr_unref(&tx->strs, set);
}

/* Takes one reference on each topic of a set of several (a set of one is
 * that topic's own string): 0, or TXMQ_ENOMEM with none taken. */
static int topics_ref(txmq_tx_t* tx, const char* topics, size_t tlen) {
  if (memchr(topics, '\n', tlen) == NULL) return 0;
  const char* end = topics + tlen;
  for (const char* s = topics; s < end;) {
    const char* nl = memchr(s, '\n', (size_t)(end - s));
    size_t len = nl ? (size_t)(nl - s) : (size_t)(end - s);
    if (txmq__intern(&tx->strs, s, len) == NULL) {
      /* Undo the ones taken so far. */
      for (const char* u = topics; u < s;) {
        const char* unl = memchr(u, '\n', (size_t)(end - u));
        size_t ul = (size_t)(unl - u);
        txmq__istr_unref(&tx->strs, txmq__istr_find(&tx->strs, u, ul));
        u += ul + 1;
      }
      return TXMQ_ENOMEM;
    }
    s += len + 1;
  }
  return 0;
}

/* Interns the entry's group, producer and topic set. A set of several
 * topics also holds one reference on each topic, so that counting pending
 * transactions per topic later never allocates. */
static int attach_strings(txmq_tx_t* tx, txmq__txe_t* e, const char* group,
                          size_t glen, const char* prod, size_t plen,
                          const char* topics, size_t tlen) {
  e->group = txmq__intern(&tx->strs, group, glen);
  e->producer = prod ? txmq__intern(&tx->strs, prod, plen) : NULL;
  e->topics = txmq__intern(&tx->strs, topics, tlen);
  int ok = e->group && (prod == NULL || e->producer) && e->topics;
  if (ok && topics_ref(tx, topics, tlen) != 0) {
    txmq__istr_unref(&tx->strs, e->topics);
    e->topics = NULL;
    ok = 0;
  }
  if (!ok) {
    txmq__istr_unref(&tx->strs, e->group);
    txmq__istr_unref(&tx->strs, e->producer);
    txmq__istr_unref(&tx->strs, e->topics);
    e->group = e->producer = e->topics = NULL;
    return TXMQ_ENOMEM;
  }
  if (e->group->group_refs++ == 0) tx->ngroups++;
  return 0;
}

/* Drops an entry's reference on its group (taken by attach_strings). */
static void group_unref(txmq_tx_t* tx, txmq__istr_t* g) {
  if (--g->group_refs == 0) tx->ngroups--;
  txmq__istr_unref(&tx->strs, g);
}

/* Forgets a live entry entirely (after its decision, or a failed half). */
static void remove_entry(txmq_tx_t* tx, uint32_t i) {
  txmq__txe_t* e = E(tx, i);
  txmq__heap_del(&tx->heap, &tx->txs, i);
  undeliv_remove(tx, i);
  age_unlink(tx, i);
  if (!(e->flags & TXE_DECIDING)) gauge(tx, e, -1);
  topics_unref(tx, e->topics);
  group_unref(tx, e->group);
  txmq__istr_unref(&tx->strs, e->producer);
  txmq__txtab_del(&tx->txs, i);
}

/* Builds the distinct topics of msgs, sorted and joined with '\n' (names
 * cannot contain it), so that equal sets intern to one string: in small
 * when it fits in small_cap bytes, else in memory the caller frees. */
static char* topic_set(txmq_msg_t* const* msgs, size_t n, size_t* len,
                       char* small, size_t small_cap) {
  const char* t[TXMQ_TX_MAX_MSGS];
  size_t k = 0, total = 0;
  for (size_t i = 0; i < n; i++) {
    const char* s = txmq_msg_topic(msgs[i]);
    size_t j = 0;
    while (j < k && strcmp(t[j], s) < 0) j++;
    if (j < k && strcmp(t[j], s) == 0) continue;
    memmove(&t[j + 1], &t[j], (k - j) * sizeof *t);
    t[j] = s;
    k++;
    total += strlen(s) + 1;
  }
  char* out = total <= small_cap ? small : malloc(total);
  if (out == NULL) return NULL;
  char* p = out;
  for (size_t j = 0; j < k; j++) {
    size_t l = strlen(t[j]);
    memcpy(p, t[j], l);
    p += l;
    *p++ = '\n';
  }
  *len = total - 1;
  return out;
}

/* ---- the timer and deferred callbacks ---- */

static void on_timer(uv_timer_t* h);

static void arm(txmq_tx_t* tx) {
  if (tx->manual || !tx->started || tx->closing || !tx->handles) return;
  if (tx->heap.n == 0) {
    if (tx->armed) uv_timer_stop(&tx->timer);
    tx->armed = 0;
    return;
  }
  uint64_t due = tx->heap.a[0].due;
  if (tx->armed && tx->armed_due == due) return;
  uint64_t now = mono_now(tx);
  uv_timer_start(&tx->timer, on_timer, due > now ? due - now : 0, 0);
  tx->armed = 1;
  tx->armed_due = due;
}

static void maybe_finish_close(txmq_tx_t* tx);

static void on_idle(uv_idle_t* h) {
  txmq_tx_t* tx = h->data;
  defer_t* d = tx->dq_head;
  tx->dq_head = tx->dq_tail = NULL;
  uv_idle_stop(&tx->idle);
  tx->idle_on = 0;
  while (d != NULL) {
    defer_t* next = d->next;
    d->cb(tx, 0, d->state, d->arg);
    free(d);
    d = next;
  }
  maybe_finish_close(tx);
}

static int defer_cb(txmq_tx_t* tx, txmq_tx_end_cb cb, void* arg,
                    txmq_tx_state_t state) {
  if (cb == NULL) return 0;
  defer_t* d = malloc(sizeof *d);
  if (d == NULL) return TXMQ_ENOMEM;
  *d = (defer_t){cb, arg, state, NULL};
  if (tx->dq_tail) tx->dq_tail->next = d;
  else tx->dq_head = d;
  tx->dq_tail = d;
  if (!tx->idle_on) {
    uv_idle_start(&tx->idle, on_idle);
    tx->idle_on = 1;
  }
  return 0;
}

static void on_handle_closed(uv_handle_t* h) {
  txmq_tx_t* tx = h->data;
  if (++tx->handles_closed == 2 && tx->close_cb) tx->close_cb(tx, tx->close_arg);
}

static void maybe_finish_close(txmq_tx_t* tx) {
  if (!tx->closing || tx->close_started || tx->inflight > 0 ||
      tx->dq_head != NULL)
    return;
  tx->close_started = 1;
  if (!tx->handles) {
    if (tx->close_cb) tx->close_cb(tx, tx->close_arg);
    return;
  }
  uv_timer_stop(&tx->timer);
  uv_idle_stop(&tx->idle);
  uv_close((uv_handle_t*)&tx->timer, on_handle_closed);
  uv_close((uv_handle_t*)&tx->idle, on_handle_closed);
}

/* ---- appending records ---- */

static void on_plain_done(txmq_log_t* log, int status, uint64_t pos,
                          void* arg) {
  (void)log;
  (void)status;
  (void)pos;
  txmq_tx_t* tx = arg;
  tx->inflight--;
  maybe_finish_close(tx);
}

/* ---- undo records ---- */

/* How the entry is scheduled now, as a snapshot records it: a check that
 * is out or found no target was due when it was offered, which is what a
 * replay would say (the records do not know of the offer). */
static uint8_t due_of(const txmq_tx_t* tx, const txmq__txe_t* e,
                      uint64_t* due) {
  if (e->state != TXMQ_TX_PENDING) return DUE_NONE;
  if ((e->flags & (TXE_IN_FLIGHT | TXE_UNDELIV)) || e->heap_idx == TXMQ__NIL)
    return DUE_NOW;
  *due = tx->heap.a[e->heap_idx].due;
  return DUE_AT;
}

static void undo_take(const txmq_tx_t* tx, uint32_t i, undo_t* u) {
  const txmq__txe_t* e = E((txmq_tx_t*)tx, i);
  u->pos = 0;
  u->half_pos = e->half_pos;
  u->last_pos = e->last_pos;
  u->due = 0;
  u->idx = i;
  u->count = e->count;
  u->state = e->state;
  u->due_kind = due_of(tx, e, &u->due);
}

/* Drops the undo records of applied records. */
static void undo_prune(txmq_tx_t* tx, uint64_t applied) {
  while (tx->uq_n > 0 && tx->uq[tx->uq_head].pos < applied) {
    tx->uq_head = (tx->uq_head + 1) & (tx->uq_cap - 1);
    tx->uq_n--;
  }
  if (tx->uq_n == 0) {
    tx->uq_head = 0;
    if (tx->uq_cap > 4096) { /* a burst is over: give its memory back */
      free(tx->uq);
      tx->uq = NULL;
      tx->uq_cap = 0;
    }
  }
}

static void undo_push(txmq_tx_t* tx, const undo_t* u) {
  undo_prune(tx, txmq__store_applied(tx->st));
  if (tx->uq_n == tx->uq_cap) {
    uint32_t nc = tx->uq_cap ? tx->uq_cap * 2 : 64;
    undo_t* q = nc > tx->uq_cap ? malloc((size_t)nc * sizeof *q) : NULL;
    if (q == NULL) {
      tx->undo_lost = 1;
      tx->undo_lost_pos = u->pos;
      return;
    }
    for (uint32_t k = 0; k < tx->uq_n; k++)
      q[k] = tx->uq[(tx->uq_head + k) & (tx->uq_cap - 1)];
    free(tx->uq);
    tx->uq = q;
    tx->uq_cap = nc;
    tx->uq_head = 0;
  }
  tx->uq[(tx->uq_head + tx->uq_n) & (tx->uq_cap - 1)] = *u;
  tx->uq_n++;
}

/* Appends an event of entry i chained to its previous record, with the
 * entry's current count; on success the entry's chain head moves to it. cb
 * NULL: nobody waits for it. pre: the entry as it was before the caller
 * changed it for this record (NULL: it is unchanged so far). */
static int append_event(txmq_tx_t* tx, uint32_t i, txmq__ev_t ev,
                        txmq_tx_source_t src, const char* ver,
                        const char* who, const undo_t* pre,
                        txmq_log_append_cb cb, void* arg) {
  txmq__txe_t* e = E(tx, i);
  txmq__event_t rec = {
      .ev = ev,
      .src = src,
      .ver = ver,
      .ver_len = ver ? (uint32_t)strlen(ver) : 0,
      .who = who,
      .who_len = who ? (uint32_t)strlen(who) : 0,
      .count = e->count,
      .at = wall_now(tx),
      .prev = e->last_pos,
  };
  memcpy(rec.id, e->id, TXMQ_TX_ID_LEN);
  tx->sb.size = 0;
  int rc = txmq__event_encode(&tx->sb, &rec);
  if (rc != 0) return rc;
  txmq_log_rec_t r = {TXMQ_REC_TX_EVENT, tx->sb.data, (uint32_t)tx->sb.size};
  uint64_t pos = 0;
  rc = txmq_store_append(tx->st, &r, 1, &pos, cb ? cb : on_plain_done,
                         cb ? arg : tx);
  if (rc != 0) return rc;
  tx->inflight++;
  undo_t u;
  if (pre != NULL) u = *pre;
  else undo_take(tx, i, &u);
  u.pos = pos;
  undo_push(tx, &u);
  e->last_pos = pos;
  return 0;
}

/* ---- publishing ---- */

/* Makes every message of the half record at half_pos visible, in one go:
 * they are all decoded first so that nothing is published if any fails (a
 * message that does not decode would be indexed and never read back).
 * publish 0: only reads and decodes them, to say whether it could. */
static int publish_all(txmq_tx_t* tx, uint64_t half_pos, int publish) {
  txmq_log_entry_t le;
  int rc = txmq_log_read(txmq_store_log(tx->st), half_pos, &le);
  if (rc != 0) return rc;
  if (le.type != TXMQ_REC_TX_HALF) return TXMQ_ECORRUPT;
  uint32_t len = le.len;
  txmq__half_t h;
  rc = txmq__half_decode_in(le.data, le.len, &tx->zone, &h);
  if (rc != 0) return rc;
  txmq_msg_t* msgs[TXMQ_TX_MAX_MSGS];
  uint32_t n = h.msgs->size, k;
  for (k = 0; k < n && rc == 0; k++) rc = txmq__half_msg(&h, k, &msgs[k]);
  txmq__half_done(&h);
  if (rc != 0) k--;
  for (uint32_t j = 0; j < k; j++) {
    if (rc == 0 && publish)
      rc = txmq_store_publish(tx->st, half_pos, len, j, msgs[j], NULL);
    txmq_msg_free(msgs[j]);
  }
  return rc;
}

/* Publishes entry e's messages: a one-message transaction from what the
 * entry holds (its topic is the entry's topic set), others from the half
 * record. */
static int publish_entry(txmq_tx_t* tx, const txmq__txe_t* e) {
  if (e->nmsgs == 1 && e->pub_qid >= 0)
    return txmq__store_publish_hashed(tx->st, e->half_pos, e->half_len, 0,
                                      e->topics->s, e->pub_qid,
                                      e->pub_tags_hash, NULL);
  return publish_all(tx, e->half_pos, 1);
}

/* ---- decisions ---- */

static void add_waiter(decide_op_t* op, waiter_t* w) {
  if (op->tail) op->tail->next = w;
  else op->head = w;
  op->tail = w;
}

static int latency_bucket(int64_t ms) {
  if (ms < 1) return 0;
  int b = 0;
  while (ms > 0 && b < TXMQ_TX_LATENCY_BUCKETS - 1) {
    ms >>= 1;
    b++;
  }
  return b;
}

static void on_decided(txmq_log_t* log, int status, uint64_t pos, void* arg) {
  (void)log;
  (void)pos;
  decide_op_t* op = arg;
  txmq_tx_t* tx = op->tx;
  uint32_t i = op->idx;
  txmq__txe_t* e = E(tx, i);
  txmq_tx_state_t st = (txmq_tx_state_t)op->state;
  tx->inflight--;
  e->u.op = NULL;
  int rc = status;
  if (status == 0) {
    if (st == TXMQ_TX_COMMITTED) {
      rc = publish_entry(tx, e);
      tx->m.commits++;
    } else {
      tx->m.rollbacks++;
    }
    if (!(e->flags & TXE_HALF_PENDING)) {
      int64_t lat = (int64_t)mono_now(tx) - e->half_mono;
      tx->m.decision_latency_ms[latency_bucket(lat)]++;
    }
    txmq__dtab_add(&tx->dec, e->id, st, e->last_pos);
    remove_entry(tx, i);
  } else if (e->flags & TXE_HALF_FAILED) {
    st = TXMQ_TX_PENDING;
    remove_entry(tx, i);
  } else {
    /* The decision never became durable: as if it was never made (a
     * parked transaction stays parked, off the schedule). */
    e->flags &= (uint8_t)~TXE_DECIDING;
    e->state = op->before;
    gauge(tx, e, +1);
    st = (txmq_tx_state_t)op->before;
    if (st == TXMQ_TX_PENDING && !(e->flags & TXE_HALF_PENDING))
      txmq__heap_set(&tx->heap, &tx->txs, i, mono_now(tx) + (uint64_t)tx->retry_ms);
    arm(tx);
  }
  waiter_t* w = op->head;
  txmq__pool_put(&tx->op_pool, op);
  while (w != NULL) {
    waiter_t done = *w;
    txmq__pool_put(&tx->op_pool, w);
    done.cb(tx, rc, st, done.arg);
    w = done.next;
  }
  maybe_finish_close(tx);
}

/* Decides pending entry i. The record goes first: if it cannot be appended
 * nothing changes. */
static int decide(txmq_tx_t* tx, uint32_t i, txmq_tx_decision_t d,
                  txmq_tx_source_t src, const char* ver, const char* who,
                  txmq_tx_end_cb cb, void* arg) {
  decide_op_t* op = txmq__pool_get(&tx->op_pool);
  waiter_t* w = cb ? txmq__pool_get(&tx->op_pool) : NULL;
  if (op == NULL || (cb && w == NULL)) {
    txmq__pool_put(&tx->op_pool, op);
    txmq__pool_put(&tx->op_pool, w);
    return TXMQ_ENOMEM;
  }
  op->tx = tx;
  op->idx = i;
  op->state = d == TXMQ_TX_COMMIT ? TXMQ_TX_COMMITTED : TXMQ_TX_ROLLED_BACK;
  op->before = E(tx, i)->state;
  int rc = append_event(tx, i,
                        d == TXMQ_TX_COMMIT ? TXMQ__EV_COMMIT : TXMQ__EV_ROLLBACK,
                        src, ver, who, NULL, on_decided, op);
  if (rc != 0) {
    txmq__pool_put(&tx->op_pool, op);
    txmq__pool_put(&tx->op_pool, w);
    return rc;
  }
  if (w) {
    w->cb = cb;
    w->arg = arg;
    add_waiter(op, w);
  }
  txmq__txe_t* e = E(tx, i);
  /* From here no check is offered or answered for it. */
  e->flags &= (uint8_t)~TXE_IN_FLIGHT;
  undeliv_remove(tx, i);
  txmq__heap_del(&tx->heap, &tx->txs, i);
  gauge(tx, e, -1);
  e->state = op->state;
  e->flags |= TXE_DECIDING;
  e->u.op = op;
  arm(tx);
  return 0;
}

static void park(txmq_tx_t* tx, uint32_t i) {
  txmq__txe_t* e = E(tx, i);
  undo_t pre;
  undo_take(tx, i, &pre);
  txmq__heap_del(&tx->heap, &tx->txs, i);
  undeliv_remove(tx, i);
  e->flags &= (uint8_t)~TXE_IN_FLIGHT;
  set_state(tx, e, TXMQ_TX_PARKED);
  tx->m.parks++;
  /* Best effort: if the log refuses, the park is redone after a restart
   * from the counted checks that were recorded. */
  (void)append_event(tx, i, TXMQ__EV_PARK, TXMQ_TX_SRC_MAX_CHECKS, NULL, NULL,
                     &pre, NULL, NULL);
}

/* A check completed and counts: answered UNKNOWN (ev "unknown") or timed
 * out (ev "check"). force: count it even if the record cannot be written
 * (a timeout has nobody to report to). */
static int counted_check(txmq_tx_t* tx, uint32_t i, txmq__ev_t ev,
                         txmq_tx_source_t src, const char* ver,
                         const char* who, int force) {
  txmq__txe_t* e = E(tx, i);
  undo_t pre;
  undo_take(tx, i, &pre);
  uint16_t prev = e->count;
  if (e->count < UINT16_MAX) e->count++;
  int rc = append_event(tx, i, ev, src, ver, who, &pre, NULL, NULL);
  if (rc != 0 && !force) {
    e->count = prev;
    return rc;
  }
  e->flags &= (uint8_t)~TXE_IN_FLIGHT;
  e->target = 0;
  if (e->count >= tx->max_checks) {
    park(tx, i);
  } else {
    txmq__heap_set(&tx->heap, &tx->txs, i,
                   mono_now(tx) + (uint64_t)interval_for(tx, e->count));
  }
  arm(tx);
  return 0;
}

/* ---- checks ---- */

/* Offers a due check of entry i to the targets. Returns 1 if one took it. */
static int dispatch(txmq_tx_t* tx, uint32_t i, uint64_t now) {
  txmq__txe_t* e = E(tx, i);
  undeliv_remove(tx, i);
  txmq_log_entry_t le;
  txmq__half_t h;
  txmq_msg_t* msgs[TXMQ_TX_MAX_MSGS];
  uint32_t n = 0;
  int rc = txmq_log_read(txmq_store_log(tx->st), e->half_pos, &le);
  if (rc == 0 && le.type != TXMQ_REC_TX_HALF) rc = TXMQ_ECORRUPT;
  if (rc == 0) rc = txmq__half_decode_in(le.data, le.len, &tx->zone, &h);
  if (rc == 0) {
    for (; n < h.msgs->size && rc == 0; n++) rc = txmq__half_msg(&h, n, &msgs[n]);
    if (rc != 0) n--;
    txmq__half_done(&h);
  }
  if (rc != 0) {
    /* The half record cannot be read back: no check is offered without its
     * messages. The attempt counts as a check, recorded with the error, so
     * that a record that stays unreadable (a broken or foreign writer) ends
     * parked where an operator sees it, not retried forever; one that
     * reads again later is checked as usual. */
    for (uint32_t k = 0; k < n; k++) txmq_msg_free(msgs[k]);
    char why[96];
    snprintf(why, sizeof why, "half record at %" PRIu64 ": %s", e->half_pos,
             txmq_err_name(rc));
    tx->m.checks_undeliverable++;
    counted_check(tx, i, TXMQ__EV_CHECK, TXMQ_TX_SRC_UNREADABLE, NULL, why, 1);
    return 0;
  }

  uint8_t id[TXMQ_TX_ID_LEN];
  memcpy(id, e->id, sizeof id);
  txmq_tx_check_t chk = {
      .tx_id = id,
      .group = e->group->s,
      .producer = e->producer ? e->producer->s : NULL,
      .check_count = e->count,
      .half_pos = e->half_pos,
      .born_wall_ms = e->born_wall,
      .msgs = (const txmq_msg_t* const*)msgs,
      .nmsgs = n,
  };
  int taken = 0;
  size_t nt = tx->ntargets;
  size_t start = nt ? e->target % nt : 0;
  for (size_t k = 0; k < nt && !taken; k++) {
    size_t t = (start + k) % nt;
    /* Pool entries never move, but re-read the state: an earlier target
     * may have answered from inside its call. */
    if (e->state != TXMQ_TX_PENDING || (e->flags & TXE_DECIDING) || tx->closing)
      break;
    uint32_t seq = ++e->seq;
    e->flags |= TXE_IN_FLIGHT;
    e->target = (uint8_t)t;
    txmq__heap_set(&tx->heap, &tx->txs, i, now + (uint64_t)tx->check_timeout_ms);
    chk.seq = seq;
    tx->dispatching++;
    rc = tx->targets[t].t->check(tx->targets[t].arg, tx, &chk);
    tx->dispatching--;
    if (rc == 0 || !(e->flags & TXE_IN_FLIGHT) || e->seq != seq) {
      taken = 1;
    } else {
      e->flags &= (uint8_t)~TXE_IN_FLIGHT;
    }
  }
  for (uint32_t k = 0; k < n; k++) txmq_msg_free(msgs[k]);
  if (taken) {
    tx->m.checks_sent++;
    return 1;
  }
  if (e->state == TXMQ_TX_PENDING && !(e->flags & TXE_DECIDING)) {
    /* Nobody could take it: not a check, so not counted. */
    e->target = 0;
    tx->m.checks_undeliverable++;
    txmq__heap_set(&tx->heap, &tx->txs, i, now + (uint64_t)tx->retry_ms);
    undeliv_add(tx, i);
  }
  return 0;
}

static size_t run_due(txmq_tx_t* tx) {
  if (!tx->started || tx->closing) return 0;
  uint64_t now = mono_now(tx);
  size_t offered = 0;
  /* Each pass takes the earliest entry and either removes it from the heap
   * or moves its due time past now, so the loop only visits due entries. */
  /* A target may close the engine from inside its check(): stop there. */
  while (!tx->closing && tx->heap.n > 0 && tx->heap.a[0].due <= now) {
    uint32_t i = tx->heap.a[0].tx;
    txmq__txe_t* e = E(tx, i);
    if (e->state != TXMQ_TX_PENDING || (e->flags & (TXE_DECIDING | TXE_HALF_PENDING))) {
      /* Never offer a check for a decided transaction. */
      txmq__heap_del(&tx->heap, &tx->txs, i);
      continue;
    }
    if (e->flags & TXE_IN_FLIGHT) {
      tx->m.checks_timed_out++;
      const txmq_tx_target_t* t =
          e->target < tx->ntargets ? tx->targets[e->target].t : NULL;
      counted_check(tx, i, TXMQ__EV_CHECK, TXMQ_TX_SRC_TIMEOUT, NULL,
                    t ? t->name : NULL, 1);
      continue;
    }
    if (e->count >= tx->max_checks) {
      /* The maximum was lowered below its count: parked, not checked. */
      park(tx, i);
      continue;
    }
    offered += (size_t)dispatch(tx, i, now);
  }
  arm(tx);
  return offered;
}

static void on_timer(uv_timer_t* h) {
  txmq_tx_t* tx = h->data;
  tx->armed = 0;
  run_due(tx);
}

size_t txmq_tx_tick(txmq_tx_t* tx) {
  return run_due(tx);
}

/* ---- recovery ---- */

static int on_record(txmq_store_t* st, const txmq_log_entry_t* le,
                     int already_applied, void* arg);
static uint64_t replay_floor(txmq_store_t* st, void* arg);

static int decode_foreign(void* arg, const txmq_log_entry_t* le, uint32_t sub,
                          txmq_msg_t** out) {
  (void)arg;
  txmq__half_t h;
  int rc = txmq__half_decode(le->data, le->len, &h);
  if (rc != 0) return TXMQ_EPROTO;
  rc = txmq__half_msg(&h, sub, out);
  txmq__half_done(&h);
  return rc;
}

/* While replaying, heap keys are wall-clock due times: the mapping to the
 * monotonic clock happens once in txmq_tx_start, and since it never
 * reorders two times, the heap stays valid through it. */
static void replay_due(txmq_tx_t* tx, uint32_t i, int64_t due_wall) {
  txmq__heap_set(&tx->heap, &tx->txs, i, due_wall > 0 ? (uint64_t)due_wall : 0);
}

static void replay_half(txmq_tx_t* tx, const txmq_log_entry_t* le) {
  txmq__half_t h;
  if (txmq__half_decode_in(le->data, le->len, &tx->zone, &h) != 0) return;
  if (txmq__txtab_find(&tx->txs, h.id) != TXMQ__NIL ||
      txmq__dtab_find(&tx->dec, h.id, NULL, NULL) == 0) {
    txmq__half_done(&h);
    return;
  }
  /* The topic set, as topic_set() builds it for a new transaction. */
  const char* t[TXMQ_TX_MAX_MSGS];
  uint32_t tl[TXMQ_TX_MAX_MSGS];
  size_t k = 0, total = 0;
  for (uint32_t m = 0; m < h.msgs->size; m++) {
    const char* s;
    uint32_t len;
    if (txmq__half_topic(&h, m, &s, &len) != 0) {
      txmq__half_done(&h);
      return;
    }
    size_t j = 0;
    int c = 1;
    while (j < k) {
      size_t ml = len < tl[j] ? len : tl[j];
      c = memcmp(t[j], s, ml);
      if (c == 0) c = (tl[j] > len) - (tl[j] < len);
      if (c >= 0) break;
      j++;
    }
    if (j < k && c == 0) continue;
    memmove(&t[j + 1], &t[j], (k - j) * sizeof *t);
    memmove(&tl[j + 1], &tl[j], (k - j) * sizeof *tl);
    t[j] = s;
    tl[j] = len;
    k++;
    total += len + 1;
  }
  char buf[TXMQ_TX_MAX_MSGS * (TXMQ_NAME_MAX + 1)];
  char* p = buf;
  for (size_t j = 0; j < k; j++) {
    if (!txmq_name_valid_n(t[j], tl[j])) {
      txmq__half_done(&h);
      return;
    }
    memcpy(p, t[j], tl[j]);
    p += tl[j];
    *p++ = '\n';
  }
  /* What txmq_tx_begin would have taken, and what a snapshot of it takes
   * back: a half record that says otherwise was not written by txmq. */
  if (!txmq_name_valid_n(h.group, h.group_len) ||
      (h.producer != NULL &&
       (h.producer_len == 0 || h.producer_len > MAX_LABEL ||
        memchr(h.producer, '\0', h.producer_len) != NULL))) {
    txmq__half_done(&h);
    return;
  }
  uint32_t i = txmq__txtab_add(&tx->txs, h.id);
  if (i == TXMQ__NIL) {
    txmq__half_done(&h);
    return;
  }
  txmq__txe_t* e = E(tx, i);
  if (attach_strings(tx, e, h.group, h.group_len, h.producer, h.producer_len,
                     buf, total - 1) != 0) {
    txmq__txtab_del(&tx->txs, i);
    txmq__half_done(&h);
    return;
  }
  e->half_pos = e->last_pos = le->pos;
  e->half_len = le->len;
  e->pub_qid = -1;
  /* Only a message that decodes may take the short way at COMMIT: one that
   * does not is never published (see publish_all). */
  /* It is checked without being built: a million recovered transactions
   * would otherwise each allocate and free a message and its body. */
  int32_t q;
  const char* tags;
  size_t tags_len;
  if (h.msgs->size == 1 &&
      txmq__half_msg_peek(&h, 0, &q, &tags, &tags_len) == 0 && q >= 0 &&
      q < TXMQ_STORE_MAX_QUEUES) {
    e->pub_qid = (int16_t)q;
    e->pub_tags_hash = tags ? txmq__tags_hash(tags, tags_len) : 0;
  }
  e->born_wall = h.at;
  if (!tx->replay_skew_set) {
    tx->replay_skew = sat_sub((int64_t)mono_now(tx), wall_now(tx));
    tx->replay_skew_set = 1;
  }
  e->half_mono = sat_add(tx->replay_skew, h.at);
  e->nmsgs = (uint8_t)h.msgs->size;
  e->flags = 0;
  e->state = TXMQ_TX_PENDING;
  gauge(tx, e, +1);
  age_append(tx, i);
  /* txmq_tx_begin never writes an immunity over MAX_DURATION_MS. */
  int64_t delay = h.immunity_ms > 0 ? h.immunity_ms : tx->timeout_ms;
  if (delay > MAX_DURATION_MS) delay = MAX_DURATION_MS;
  replay_due(tx, i, sat_add(h.at, delay));
  txmq__half_done(&h);
}

static void replay_event(txmq_tx_t* tx, const txmq_log_entry_t* le,
                         int already_applied) {
  txmq__event_t ev;
  if (txmq__event_decode(le->data, le->len, &ev) != 0) return;
  uint32_t i = txmq__txtab_find(&tx->txs, ev.id);
  /* Its half record lies before the replay floor: it was decided before
   * the last checkpoint, nothing to rebuild. */
  if (i == TXMQ__NIL) return;
  txmq__txe_t* e = E(tx, i);
  e->last_pos = le->pos;
  uint16_t count = ev.count > UINT16_MAX ? UINT16_MAX : (uint16_t)ev.count;
  switch (ev.ev) {
    case TXMQ__EV_UNKNOWN:
      /* An UNKNOWN that answered a check counted it (its record carries
       * the raised count) and moved the schedule; one given through
       * txmq_tx_end (producer, or the script's execute) did neither. */
      if (count <= e->count) break;
      /* fall through */
    case TXMQ__EV_CHECK:
      e->count = count;
      if (e->state == TXMQ_TX_PENDING)
        replay_due(tx, i, sat_add(ev.at, interval_for(tx, e->count)));
      break;
    case TXMQ__EV_PARK:
      e->count = count;
      txmq__heap_del(&tx->heap, &tx->txs, i);
      set_state(tx, e, TXMQ_TX_PARKED);
      break;
    case TXMQ__EV_RESUME:
      e->count = 0;
      set_state(tx, e, TXMQ_TX_PENDING);
      replay_due(tx, i, ev.at);
      break;
    case TXMQ__EV_COMMIT:
    case TXMQ__EV_ROLLBACK:
      /* A commit durable but not yet applied to the indexes at the last
       * checkpoint is published now, exactly once: later checkpoints cover
       * it and replay then passes it with already_applied set. */
      if (ev.ev == TXMQ__EV_COMMIT && !already_applied)
        (void)publish_entry(tx, e);
      txmq__dtab_add(&tx->dec, ev.id,
                     ev.ev == TXMQ__EV_COMMIT ? TXMQ_TX_COMMITTED
                                              : TXMQ_TX_ROLLED_BACK,
                     le->pos);
      remove_entry(tx, i);
      break;
    default:
      break;
  }
}

static int on_record(txmq_store_t* st, const txmq_log_entry_t* le,
                     int already_applied, void* arg) {
  (void)st;
  txmq_tx_t* tx = arg;
  /* A record of ours that does not decode is skipped rather than failing
   * the open: the log's checksum vouched for the bytes, so it was written
   * by a different version, and refusing to start would stop every other
   * transaction too. */
  if (le->type == TXMQ_REC_TX_HALF) replay_half(tx, le);
  else if (le->type == TXMQ_REC_TX_EVENT) replay_event(tx, le, already_applied);
  return 0;
}

/* The floor is also what keeps half records from retention: the store's
 * keep hook on the log keeps every segment at or after the lowest of its
 * own checkpoint floor and ours, so a segment holding a live half record
 * is never deleted. (The store owns the log's one keep hook; installing a
 * second one here would replace its own rules.) */
static uint64_t replay_floor(txmq_store_t* st, void* arg) {
  (void)st;
  txmq_tx_t* tx = arg;
  /* Live entries (pending, parked, or with a decision not yet durable) are
   * kept in half_pos order, so the oldest is the head: O(1). */
  return tx->age_head != TXMQ__NIL ? E(tx, tx->age_head)->half_pos : UINT64_MAX;
}

/* ---- snapshot ----
 *
 * At each checkpoint the store asks for the engine's state as of its
 * applied position (txmq__tx_snapshot, on the loop) and writes it beside
 * the checkpoint; the next open hands it back (snap_load) and replays only
 * the log after applied. Without a usable snapshot the open replays from
 * the replay floor as before, so everything here may fail safely.
 *
 * "As of applied" is what a replay of every record before applied would
 * rebuild, and nothing of a record after it: an entry whose half record is
 * not applied yet is left out (the replay of the tail brings it), and an
 * entry with event records not applied yet is written as its undo record
 * says it was before the first of them (the tail replays them, or they
 * were lost with a crash, and then the entry is as a replay would leave
 * it). A check that is out or found no target is written as due at once,
 * as a replay would make it. The table of decided transactions is written
 * whole, oldest first, so that a repeated COMMIT or ROLLBACK after the
 * restart is still answered from it.
 *
 * PAYLOAD (little-endian; the store's envelope around it is described in
 * core/store/checkpoint.c)
 *   0..3    version (1)
 *   4..7    number of strings S
 *   8..11   number of entries N
 *   12..15  number of decided transactions D
 *   16..23  bytes of the strings that follow
 *   24..    S strings: length (4), bytes (no NUL); groups, producers and
 *           topic sets (sorted topics joined with '\n'), referred to by
 *           their number
 *   then    N entries of 80 bytes, in half record order:
 *             0  id (16)
 *            16  half record position (8)
 *            24  newest record of the chain (8)
 *            32  born, wall ms (8, signed)
 *            40  next check due, wall ms (8, signed; 0 when parked)
 *            48  half record length (4)
 *            52  tags hash of a one-message transaction (4)
 *            56  group (4, string number)
 *            60  producer (4, string number; 0xffffffff: none)
 *            64  topic set (4, string number)
 *            68  queue id of a one-message transaction (2, signed; -1)
 *            70  counted checks (2)
 *            72  state (1: 0 pending, 3 parked)
 *            73  messages (1)
 *            74  zero (6)
 *   then    D decided transactions of 24 bytes, oldest first: id (16),
 *           state (top 2 bits: 1 committed, 2 rolled back) and the
 *           position of its last record (low 62 bits) (8)
 * Everything is range-checked at load: positions against applied and the
 * log's begin, half records in increasing order, names, labels and topic
 * sets as the engine would accept them, strings and sizes against the
 * payload's length. The tags hash and the queue id are written but not
 * used at load: a loaded entry's COMMIT reads its half record back. */

#define SNAP_VERSION 1
#define SNAP_HEAD 24
#define SNAP_ENTRY 80
#define SNAP_DEC 24
#define SNAP_NONE UINT32_MAX
#define DEC_POS_BITS ((UINT64_C(1) << 62) - 1)

static void put32(uint8_t* p, uint32_t v) {
  p[0] = (uint8_t)v;
  p[1] = (uint8_t)(v >> 8);
  p[2] = (uint8_t)(v >> 16);
  p[3] = (uint8_t)(v >> 24);
}
static void put64(uint8_t* p, uint64_t v) {
  put32(p, (uint32_t)v);
  put32(p + 4, (uint32_t)(v >> 32));
}
static uint32_t get32(const uint8_t* p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
         (uint32_t)p[3] << 24;
}
static uint64_t get64(const uint8_t* p) {
  return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32;
}

static int undo_cmp(const void* a, const void* b) {
  const undo_t* x = a;
  const undo_t* y = b;
  if (x->idx != y->idx) return x->idx < y->idx ? -1 : 1;
  return x->pos < y->pos ? -1 : x->pos > y->pos;
}

/* The earliest undo record of entry i (sorted by entry, then position). */
static const undo_t* undo_find(const undo_t* u, uint32_t n, uint32_t i,
                               uint64_t half_pos) {
  uint32_t lo = 0, hi = n;
  while (lo < hi) {
    uint32_t mid = lo + (hi - lo) / 2;
    if (u[mid].idx < i) lo = mid + 1;
    else hi = mid;
  }
  for (; lo < n && u[lo].idx == i; lo++)
    if (u[lo].half_pos == half_pos) return &u[lo];
  return NULL;
}

int txmq__tx_snapshot(txmq_tx_t* tx, uint64_t applied, void** buf,
                      size_t* len) {
  undo_prune(tx, applied);
  if (tx->undo_lost) {
    if (tx->undo_lost_pos >= applied) return TXMQ_ENOMEM;
    tx->undo_lost = 0;
  }
  /* Dues are kept on the monotonic clock once started, on the wall clock
   * before (as a replay leaves them). */
  int64_t wall = wall_now(tx);
  int64_t mono = tx->started ? (int64_t)mono_now(tx) : 0;
  undo_t* undo = NULL;
  uint32_t nundo = tx->uq_n;
  if (nundo > 0) {
    undo = malloc((size_t)nundo * sizeof *undo);
    if (undo == NULL) return TXMQ_ENOMEM;
    for (uint32_t k = 0; k < nundo; k++)
      undo[k] = tx->uq[(tx->uq_head + k) & (tx->uq_cap - 1)];
    qsort(undo, nundo, sizeof *undo, undo_cmp);
  }
  /* Strings: every interned one, numbered in table order. */
  uint32_t nstr = 0;
  size_t str_bytes = 0;
  for (uint32_t k = 0; k < tx->strs.cap; k++) {
    txmq__istr_t* s = tx->strs.slots[k];
    if (s == NULL) continue;
    s->snap_idx = nstr++;
    str_bytes += 4 + (size_t)s->len;
  }
  size_t cap = SNAP_HEAD + str_bytes + (size_t)tx->txs.used * SNAP_ENTRY +
               (size_t)tx->dec.n * SNAP_DEC;
  uint8_t* out = malloc(cap);
  if (out == NULL) {
    free(undo);
    return TXMQ_ENOMEM;
  }
  uint8_t* p = out + SNAP_HEAD;
  for (uint32_t k = 0; k < tx->strs.cap; k++) {
    txmq__istr_t* s = tx->strs.slots[k];
    if (s == NULL) continue;
    put32(p, s->len);
    memcpy(p + 4, s->s, s->len);
    p += 4 + s->len;
  }
  uint32_t n = 0;
  int rc = 0;
  for (uint32_t i = tx->age_head; i != TXMQ__NIL && rc == 0;
       i = E(tx, i)->age_next) {
    const txmq__txe_t* e = E(tx, i);
    /* Its half record is not applied: the tail's replay brings it. */
    if ((e->flags & (TXE_HALF_PENDING | TXE_HALF_FAILED)) ||
        e->half_pos >= applied)
      continue;
    const undo_t* u = nundo ? undo_find(undo, nundo, i, e->half_pos) : NULL;
    uint64_t last_pos = e->last_pos, due = 0;
    uint16_t count = e->count;
    uint8_t state = e->state, kind;
    if (u != NULL) {
      last_pos = u->last_pos;
      count = u->count;
      state = u->state;
      kind = u->due_kind;
      due = u->due;
    } else if (e->flags & TXE_DECIDING) {
      /* A decision not yet applied always has its undo record. */
      rc = TXMQ_ECORRUPT;
      break;
    } else {
      kind = due_of(tx, e, &due);
    }
    int64_t due_wall = 0;
    if (kind == DUE_NOW) due_wall = wall;
    else if (kind == DUE_AT && !tx->started) due_wall = (int64_t)due;
    else if (kind == DUE_AT)
      due_wall = sat_add(wall, due > (uint64_t)INT64_MAX
                                   ? INT64_MAX
                                   : sat_sub((int64_t)due, mono));
    memcpy(p, e->id, TXMQ_TX_ID_LEN);
    put64(p + 16, e->half_pos);
    put64(p + 24, last_pos);
    put64(p + 32, (uint64_t)e->born_wall);
    put64(p + 40, (uint64_t)due_wall);
    put32(p + 48, e->half_len);
    put32(p + 52, e->pub_tags_hash);
    put32(p + 56, e->group->snap_idx);
    put32(p + 60, e->producer ? e->producer->snap_idx : SNAP_NONE);
    put32(p + 64, e->topics->snap_idx);
    p[68] = (uint8_t)(uint16_t)e->pub_qid;
    p[69] = (uint8_t)((uint16_t)e->pub_qid >> 8);
    p[70] = (uint8_t)count;
    p[71] = (uint8_t)(count >> 8);
    p[72] = state;
    p[73] = e->nmsgs;
    memset(p + 74, 0, 6);
    p += SNAP_ENTRY;
    n++;
  }
  free(undo);
  if (rc != 0) {
    free(out);
    return rc;
  }
  const txmq__dtab_t* d = &tx->dec;
  for (uint32_t k = 0; k < d->n; k++) {
    const txmq__dent_t* de = &d->ring[(d->head + k) % d->cap];
    memcpy(p, de->id, TXMQ_TX_ID_LEN);
    put64(p + 16, de->word);
    p += SNAP_DEC;
  }
  put32(out, SNAP_VERSION);
  put32(out + 4, nstr);
  put32(out + 8, n);
  put32(out + 12, d->n);
  put64(out + 16, str_bytes);
  *buf = out;
  *len = (size_t)(p - out);
  return 0;
}

static int snap_capture(void* arg, uint64_t applied, void** buf, size_t* len) {
  return txmq__tx_snapshot(arg, applied, buf, len);
}

/* Back to the state of a new engine (a snapshot refused half way). */
static void tables_reset(txmq_tx_t* tx) {
  txmq__itab_free(&tx->strs);
  txmq__txtab_free(&tx->txs);
  txmq__heap_free(&tx->heap);
  txmq__dtab_free(&tx->dec);
  tx->age_head = tx->age_tail = TXMQ__NIL;
  tx->ngroups = 0;
  tx->m.pending = tx->m.parked = 0;
  tx->replay_skew_set = 0;
}

enum { S_GROUP = 1, S_PRODUCER = 2, S_TOPICS = 4 };

/* What a snapshot string may stand for, checked as the engine checks what
 * it is given. */
static unsigned str_uses(const txmq__istr_t* s) {
  unsigned u = 0;
  if (strlen(s->s) != s->len || s->len == 0) return 0;
  if (s->len <= TXMQ__MAX_LABEL) u |= S_PRODUCER;
  if (s->len <= TXMQ_NAME_MAX && txmq_name_valid(s->s)) u |= S_GROUP;
  /* Distinct valid names, sorted, joined with '\n' (topic_set). */
  const char* p = s->s;
  const char* end = p + s->len;
  char prev[TXMQ_NAME_MAX + 1] = "", cur[TXMQ_NAME_MAX + 1];
  unsigned k = 0;
  for (;;) {
    const char* nl = memchr(p, '\n', (size_t)(end - p));
    size_t l = nl ? (size_t)(nl - p) : (size_t)(end - p);
    if (l == 0 || l > TXMQ_NAME_MAX || ++k > TXMQ_TX_MAX_MSGS) return u;
    memcpy(cur, p, l);
    cur[l] = '\0';
    if (!txmq_name_valid(cur) || (k > 1 && strcmp(prev, cur) >= 0)) return u;
    memcpy(prev, cur, l + 1);
    if (nl == NULL) break;
    p = nl + 1;
  }
  return u | S_TOPICS;
}

#define SNAP_BAD(msg)                                   \
  do {                                                  \
    snprintf(why, why_len, "%s", msg);                  \
    rc = TXMQ_ECORRUPT;                                 \
    goto done;                                          \
  } while (0)

static int snap_load(void* arg, uint64_t applied, const void* buf, size_t len,
                     char* why, size_t why_len) {
  txmq_tx_t* tx = arg;
  const uint8_t* b = buf;
  txmq__istr_t** strs = NULL;
  unsigned* uses = NULL;
  uint32_t nstr = 0;
  int rc = 0;
  if (tx->txs.used != 0 || tx->dec.n != 0 || tx->strs.n != 0 || tx->started) {
    snprintf(why, why_len, "the engine is not empty");
    return TXMQ_EBUSY;
  }
  if (len < SNAP_HEAD) SNAP_BAD("shorter than its header");
  if (get32(b) != SNAP_VERSION) SNAP_BAD("unknown payload version");
  nstr = get32(b + 4);
  uint64_t n = get32(b + 8), nd = get32(b + 12), sbytes = get64(b + 16);
  /* Every count against the bytes there are, before anything is sized
   * from it. */
  if (sbytes > len - SNAP_HEAD || nstr > sbytes / 4)
    SNAP_BAD("string section larger than the payload");
  if ((len - SNAP_HEAD - sbytes) != n * SNAP_ENTRY + nd * SNAP_DEC)
    SNAP_BAD("sizes do not add up to the payload's length");
  strs = calloc(nstr ? nstr : 1, sizeof *strs);
  uses = calloc(nstr ? nstr : 1, sizeof *uses);
  if (strs == NULL || uses == NULL) {
    snprintf(why, why_len, "out of memory");
    rc = TXMQ_ENOMEM;
    goto done;
  }
  const uint8_t* p = b + SNAP_HEAD;
  const uint8_t* send = p + sbytes;
  for (uint32_t k = 0; k < nstr; k++) {
    if ((size_t)(send - p) < 4) SNAP_BAD("string runs past its section");
    uint32_t l = get32(p);
    if (l > (size_t)(send - p) - 4) SNAP_BAD("string runs past its section");
    if (l > TXMQ_TX_MAX_MSGS * (TXMQ_NAME_MAX + 1)) SNAP_BAD("string too long");
    strs[k] = txmq__intern(&tx->strs, (const char*)p + 4, l);
    if (strs[k] == NULL) {
      snprintf(why, why_len, "out of memory");
      rc = TXMQ_ENOMEM;
      goto done;
    }
    uses[k] = str_uses(strs[k]);
    p += 4 + l;
  }
  if (p != send) SNAP_BAD("string section has bytes to spare");

  uint64_t lb = txmq_log_begin(txmq_store_log(tx->st));
  if (!tx->replay_skew_set) {
    tx->replay_skew = sat_sub((int64_t)mono_now(tx), wall_now(tx));
    tx->replay_skew_set = 1;
  }
  uint64_t prev_half = 0;
  for (uint64_t k = 0; k < n; k++, p += SNAP_ENTRY) {
    uint64_t half_pos = get64(p + 16), last_pos = get64(p + 24);
    uint32_t half_len = get32(p + 48);
    uint32_t g = get32(p + 56), pr = get32(p + 60), t = get32(p + 64);
    int16_t qid = (int16_t)(uint16_t)(p[68] | p[69] << 8);
    uint16_t count = (uint16_t)(p[70] | p[71] << 8);
    uint8_t state = p[72], nmsgs = p[73];
    static const uint8_t zero[6];
    if (half_pos < lb || half_pos >= applied || last_pos < half_pos ||
        last_pos >= applied || (k > 0 && half_pos <= prev_half))
      SNAP_BAD("entry with a position out of range or order");
    prev_half = half_pos;
    if (half_len == 0 || half_len > TXMQ_LOG_MAX_RECORD)
      SNAP_BAD("entry with a bad half record length");
    if (g >= nstr || !(uses[g] & S_GROUP) ||
        (pr != SNAP_NONE && (pr >= nstr || !(uses[pr] & S_PRODUCER))) ||
        t >= nstr || !(uses[t] & S_TOPICS))
      SNAP_BAD("entry with a bad group, producer or topic set");
    if (nmsgs == 0 || nmsgs > TXMQ_TX_MAX_MSGS ||
        (qid != -1 && (nmsgs != 1 || qid < 0 || qid >= TXMQ_STORE_MAX_QUEUES)))
      SNAP_BAD("entry with a bad message count or queue");
    if ((state != TXMQ_TX_PENDING && state != TXMQ_TX_PARKED) ||
        memcmp(p + 74, zero, sizeof zero) != 0)
      SNAP_BAD("entry with a bad state");
    if (txmq__txtab_find(&tx->txs, p) != TXMQ__NIL)
      SNAP_BAD("the same transaction twice");
    uint32_t i = txmq__txtab_add(&tx->txs, p);
    if (i == TXMQ__NIL) {
      snprintf(why, why_len, "out of memory");
      rc = TXMQ_ENOMEM;
      goto done;
    }
    txmq__txe_t* e = E(tx, i);
    /* The strings are interned already: references only, except for the
     * topics of a set of several (attach_strings). */
    e->group = strs[g];
    e->group->refs++;
    if (e->group->group_refs++ == 0) tx->ngroups++;
    e->producer = pr != SNAP_NONE ? strs[pr] : NULL;
    if (e->producer) e->producer->refs++;
    e->topics = strs[t];
    e->topics->refs++;
    e->half_pos = half_pos;
    e->last_pos = last_pos;
    e->born_wall = (int64_t)get64(p + 32);
    e->half_mono = sat_add(tx->replay_skew, e->born_wall);
    e->half_len = half_len;
    /* The short way at COMMIT skips decoding the half record, which only
     * a replay or a begin has checked; an entry from a snapshot takes the
     * long way (read back and decoded), so that a snapshot can never make
     * a message that does not decode visible. */
    e->pub_tags_hash = 0;
    e->pub_qid = -1;
    e->count = count;
    e->nmsgs = nmsgs;
    e->state = state;
    age_append(tx, i);
    if (topics_ref(tx, e->topics->s, e->topics->len) != 0) {
      snprintf(why, why_len, "out of memory");
      rc = TXMQ_ENOMEM;
      goto done;
    }
    gauge(tx, e, +1);
    if (state == TXMQ_TX_PENDING) {
      int64_t due = (int64_t)get64(p + 40);
      if (txmq__heap_set(&tx->heap, &tx->txs, i, due > 0 ? (uint64_t)due : 0) != 0) {
        snprintf(why, why_len, "out of memory");
        rc = TXMQ_ENOMEM;
        goto done;
      }
    }
  }
  for (uint64_t k = 0; k < nd; k++, p += SNAP_DEC) {
    uint64_t word = get64(p + 16);
    txmq_tx_state_t st = (txmq_tx_state_t)(word >> 62);
    if ((st != TXMQ_TX_COMMITTED && st != TXMQ_TX_ROLLED_BACK) ||
        (word & DEC_POS_BITS) >= applied)
      SNAP_BAD("decided transaction with a bad state or position");
    txmq__dtab_add(&tx->dec, p, st, word & DEC_POS_BITS);
  }

done:
  /* The references the string table itself took. */
  for (uint32_t k = 0; strs != NULL && k < nstr && strs[k] != NULL; k++)
    txmq__istr_unref(&tx->strs, strs[k]);
  free(strs);
  free(uses);
  if (rc != 0) tables_reset(tx);
  return rc;
}

static const txmq__store_snap_ops_t snap_ops = {snap_capture, snap_load};

/* ---- lifecycle ---- */

int txmq_tx_new(txmq_tx_t** out, uv_loop_t* loop, txmq_store_t* st) {
  if (out == NULL || loop == NULL || st == NULL) return TXMQ_EINVAL;
  txmq_tx_t* tx = calloc(1, sizeof *tx);
  if (tx == NULL) return TXMQ_ENOMEM;
  tx->loop = loop;
  tx->st = st;
  txmq__pool_init(&tx->op_pool, OP_BLOCK, 1024);
  tx->timeout_ms = 6000;
  tx->interval_ms = 30000;
  tx->backoff_pct = 100;
  tx->interval_max_ms = 300000;
  tx->max_checks = 15;
  tx->check_timeout_ms = 5000;
  tx->retry_ms = 1000;
  tx->dec.window = 1000000;
  tx->max_groups = 1024;
  tx->txs.free_head = TXMQ__NIL;
  tx->age_head = tx->age_tail = TXMQ__NIL;
  msgpack_sbuffer_init(&tx->sb);
  if (!msgpack_zone_init(&tx->zone, 8192)) {
    free(tx);
    return TXMQ_ENOMEM;
  }
  txmq__idgen_init(&tx->idgen);
  int rc = txmq__store_set_decoder(st, TXMQ_REC_TX_HALF, decode_foreign, NULL);
  if (rc != 0) {
    msgpack_zone_destroy(&tx->zone);
    free(tx);
    return rc;
  }
  txmq_store_set_record_handler(st, on_record, tx);
  txmq_store_set_replay_floor_cb(st, replay_floor, tx);
  txmq__store_set_snapshot(st, &snap_ops, tx);
  *out = tx;
  return 0;
}

int txmq_tx_set(txmq_tx_t* tx, txmq_tx_opt_t opt, int64_t v) {
  if (tx == NULL) return TXMQ_EINVAL;
  switch (opt) {
    case TXMQ_TX_OPT_TIMEOUT_MS:
      if (v < 0 || v > MAX_DURATION_MS) return TXMQ_EINVAL;
      tx->timeout_ms = v;
      return 0;
    case TXMQ_TX_OPT_CHECK_INTERVAL_MS:
      if (v < 1 || v > MAX_DURATION_MS) return TXMQ_EINVAL;
      tx->interval_ms = v;
      return 0;
    case TXMQ_TX_OPT_CHECK_BACKOFF_PCT:
      if (v < 100 || v > 10000) return TXMQ_EINVAL;
      tx->backoff_pct = v;
      return 0;
    case TXMQ_TX_OPT_CHECK_INTERVAL_MAX_MS:
      if (v < 1 || v > MAX_DURATION_MS) return TXMQ_EINVAL;
      tx->interval_max_ms = v;
      return 0;
    case TXMQ_TX_OPT_MAX_CHECKS:
      if (v < 1 || v > UINT16_MAX) return TXMQ_EINVAL;
      tx->max_checks = (uint32_t)v;
      return 0;
    case TXMQ_TX_OPT_CHECK_TIMEOUT_MS:
      if (v < 1 || v > MAX_DURATION_MS) return TXMQ_EINVAL;
      tx->check_timeout_ms = v;
      return 0;
    case TXMQ_TX_OPT_RETRY_MS:
      if (v < 1 || v > MAX_DURATION_MS) return TXMQ_EINVAL;
      tx->retry_ms = v;
      return 0;
    case TXMQ_TX_OPT_DECIDED_WINDOW:
      if (v < 0 || v > (INT64_C(1) << 30)) return TXMQ_EINVAL;
      txmq__dtab_set_window(&tx->dec, (uint32_t)v);
      return 0;
    case TXMQ_TX_OPT_MAX_GROUPS:
      if (v < 1 || v > 10000000) return TXMQ_EINVAL;
      tx->max_groups = (uint32_t)v;
      return 0;
    case TXMQ_TX_OPT_MANUAL_CLOCK:
      if (v != 0 && v != 1) return TXMQ_EINVAL;
      if (tx->started) return TXMQ_EBUSY;
      tx->manual = (int)v;
      return 0;
  }
  return TXMQ_EINVAL;
}

void txmq_tx_set_clock(txmq_tx_t* tx, const txmq_tx_clock_t* clock) {
  if (clock == NULL || clock->mono_ms == NULL || clock->wall_ms == NULL) {
    tx->has_clock = 0;
    return;
  }
  tx->clock = *clock;
  tx->has_clock = 1;
}

int txmq_tx_add_target(txmq_tx_t* tx, const txmq_tx_target_t* target,
                       void* arg) {
  if (tx == NULL || target == NULL || target->check == NULL) return TXMQ_EINVAL;
  if (tx->ntargets == MAX_TARGETS) return TXMQ_ERANGE;
  tx->targets[tx->ntargets].t = target;
  tx->targets[tx->ntargets].arg = arg;
  tx->ntargets++;
  return 0;
}

int txmq_tx_start(txmq_tx_t* tx) {
  if (tx == NULL) return TXMQ_EINVAL;
  if (tx->closing) return TXMQ_ECLOSED;
  if (tx->started) return TXMQ_EBUSY;
  if (txmq_store_log(tx->st) == NULL) return TXMQ_EINVAL;
  uv_timer_init(tx->loop, &tx->timer);
  uv_idle_init(tx->loop, &tx->idle);
  tx->timer.data = tx;
  tx->idle.data = tx;
  tx->handles = 1;
  /* Recovered due times are wall-clock times from the records; map them
   * onto the monotonic clock, clamping the past to now. */
  uint64_t now = mono_now(tx);
  int64_t wall = wall_now(tx);
  for (uint32_t k = 0; k < tx->heap.n; k++) {
    int64_t d = sat_sub((int64_t)tx->heap.a[k].due, wall);
    uint64_t u = d > 0 ? (uint64_t)d : 0;
    tx->heap.a[k].due = u > UINT64_MAX - now ? UINT64_MAX : now + u;
  }
  tx->started = 1;
  /* A transaction that used up its checks without a park on record (the
   * park record is written after the last check's, and a crash can come
   * between them; or the maximum was lowered) is parked now, not checked
   * once more. */
  for (uint32_t i = tx->age_head; i != TXMQ__NIL;) {
    uint32_t next = E(tx, i)->age_next;
    txmq__txe_t* e = E(tx, i);
    if (e->state == TXMQ_TX_PENDING && !(e->flags & TXE_DECIDING) &&
        e->count >= tx->max_checks)
      park(tx, i);
    i = next;
  }
  arm(tx);
  return 0;
}

int txmq_tx_close(txmq_tx_t* tx, void (*cb)(txmq_tx_t* tx, void* arg),
                  void* arg) {
  if (tx == NULL) return TXMQ_EINVAL;
  if (tx->closing) return TXMQ_ECLOSED;
  tx->closing = 1;
  tx->close_cb = cb;
  tx->close_arg = arg;
  if (tx->handles) uv_timer_stop(&tx->timer);
  tx->armed = 0;
  maybe_finish_close(tx);
  return 0;
}

void txmq_tx_free(txmq_tx_t* tx) {
  if (tx == NULL) return;
  /* Leave nothing in the store that points at us. */
  txmq__store_set_decoder(tx->st, TXMQ_REC_TX_HALF, NULL, NULL);
  txmq_store_set_record_handler(tx->st, NULL, NULL);
  txmq_store_set_replay_floor_cb(tx->st, NULL, NULL);
  txmq__store_set_snapshot(tx->st, NULL, NULL);
  free(tx->uq);
  while (tx->dq_head) {
    defer_t* d = tx->dq_head;
    tx->dq_head = d->next;
    free(d);
  }
  txmq__itab_free(&tx->strs);
  txmq__txtab_free(&tx->txs);
  txmq__heap_free(&tx->heap);
  txmq__dtab_free(&tx->dec);
  msgpack_sbuffer_destroy(&tx->sb);
  msgpack_zone_destroy(&tx->zone);
  txmq__pool_drain(&tx->op_pool);
  free(tx->show_group);
  free(tx->show_producer);
  free(tx);
}

/* ---- begin ---- */

/* Ops of one-message transactions come from the pool, others from malloc. */
static begin_op_t* begin_op_new(txmq_tx_t* tx, size_t n) {
  begin_op_t* op = n == 1 ? txmq__pool_get(&tx->op_pool)
                          : calloc(1, sizeof *op + n * sizeof(txmq_msg_t*));
  if (op != NULL) op->cap = n;
  return op;
}

static void begin_op_free(txmq_tx_t* tx, begin_op_t* op) {
  for (size_t k = 0; k < op->n; k++) txmq_msg_free(op->msgs[k]);
  if (op->cap == 1) txmq__pool_put(&tx->op_pool, op);
  else free(op);
}

static void on_half(txmq_log_t* log, int status, uint64_t pos, void* arg) {
  (void)log;
  (void)pos;
  begin_op_t* op = arg;
  txmq_tx_t* tx = op->tx;
  tx->inflight--;
  uint32_t i = txmq__txtab_find(&tx->txs, op->id);
  if (i != TXMQ__NIL) {
    txmq__txe_t* e = E(tx, i);
    e->flags &= (uint8_t)~TXE_HALF_PENDING;
    if (status == 0) {
      uint64_t now = mono_now(tx);
      e->half_mono = (int64_t)now;
      if (e->state == TXMQ_TX_PENDING && !(e->flags & TXE_DECIDING)) {
        int64_t delay = op->immunity_ms > 0 ? op->immunity_ms : tx->timeout_ms;
        txmq__heap_set(&tx->heap, &tx->txs, i, now + (uint64_t)delay);
        arm(tx);
      }
    } else if (e->flags & TXE_DECIDING) {
      e->flags |= TXE_HALF_FAILED; /* its decision's callback drops it */
    } else {
      remove_entry(tx, i);
    }
  }
  if (status == 0) tx->m.begun++;
  if (op->cb)
    op->cb(tx, status, op->id, status == 0 ? (const txmq_msg_t* const*)op->msgs : NULL,
           status == 0 ? op->n : 0, op->arg);
  begin_op_free(tx, op);
  maybe_finish_close(tx);
}

/* take: the messages become the engine's on success (else copies are
 * made); on failure they stay the caller's. */
static int begin(txmq_tx_t* tx, const char* group, const char* producer,
                 txmq_msg_t* const* msgs, size_t n, int64_t immunity_ms,
                 txmq_tx_begin_cb cb, void* arg, int take) {
  if (tx == NULL || msgs == NULL || n == 0 || n > TXMQ_TX_MAX_MSGS ||
      immunity_ms < 0 || immunity_ms > MAX_DURATION_MS)
    return TXMQ_EINVAL;
  if (tx->closing) return TXMQ_ECLOSED;
  if (!tx->started) return TXMQ_EINVAL;
  if (group == NULL || !txmq_name_valid(group)) return TXMQ_EBADNAME;
  if (producer != NULL && (*producer == '\0' || !label_ok(producer)))
    return TXMQ_EINVAL;
  for (size_t k = 0; k < n; k++)
    if (msgs[k] == NULL || txmq_msg_topic(msgs[k]) == NULL) return TXMQ_EINVAL;
  tx->diag[0] = '\0';
  if (tx->ngroups >= tx->max_groups) {
    /* Before anything is prepared: preparing may create topics. */
    const txmq__istr_t* g = txmq__istr_find(&tx->strs, group, strlen(group));
    if (g == NULL || g->group_refs == 0) {
      snprintf(tx->diag, sizeof tx->diag,
               "producer group limit reached (max_producer_groups = %u "
               "groups with undecided transactions): group '%s' refused",
               tx->max_groups, group);
      return TXMQ_ERANGE;
    }
  }

  begin_op_t* op = begin_op_new(tx, n);
  if (op == NULL) return TXMQ_ENOMEM;
  op->tx = tx;
  op->immunity_ms = immunity_ms;
  op->cb = cb;
  op->arg = arg;
  int rc = 0;
  /* Unless they are handed over, the caller's messages are only read: we
   * prepare copies. Those prepared are what the callback reports as
   * stored. */
  for (; op->n < n; op->n++) {
    op->msgs[op->n] = take ? msgs[op->n] : txmq_msg_clone(msgs[op->n]);
    if (op->msgs[op->n] == NULL) {
      rc = TXMQ_ENOMEM;
      break;
    }
    rc = txmq_store_prepare(tx->st, op->msgs[op->n]);
    if (rc != 0) {
      /* ERANGE: the topic limit, which the store's diagnostic names. */
      if (rc == TXMQ_ERANGE)
        snprintf(tx->diag, sizeof tx->diag, "%s", txmq_store_diag(tx->st));
      op->n++;
      break;
    }
  }
  size_t tlen = 0;
  char tbuf[256]; /* the set of most transactions: no allocation */
  char* topics =
      rc == 0 ? topic_set(op->msgs, n, &tlen, tbuf, sizeof tbuf) : NULL;
  if (rc == 0 && topics == NULL) rc = TXMQ_ENOMEM;
  int64_t at = wall_now(tx);
  txmq__idgen_next(&tx->idgen, at, op->id);
  if (rc == 0) {
    tx->sb.size = 0;
    rc = txmq__half_encode(&tx->sb, op->id, group, producer, immunity_ms, at,
                           op->msgs, n);
  }
  if (rc == 0 && tx->sb.size > TXMQ_LOG_MAX_RECORD) rc = TXMQ_ETOOBIG;
  uint32_t i = TXMQ__NIL;
  if (rc == 0) {
    i = txmq__txtab_add(&tx->txs, op->id);
    if (i == TXMQ__NIL) rc = TXMQ_ENOMEM;
  }
  if (rc == 0) {
    rc = attach_strings(tx, E(tx, i), group, strlen(group), producer,
                        producer ? strlen(producer) : 0, topics, tlen);
    if (rc != 0) {
      txmq__txtab_del(&tx->txs, i);
      i = TXMQ__NIL;
    }
  }
  if (topics != tbuf) free(topics);
  uint64_t pos = 0;
  if (rc == 0) {
    txmq_log_rec_t r = {TXMQ_REC_TX_HALF, tx->sb.data, (uint32_t)tx->sb.size};
    rc = txmq_store_append(tx->st, &r, 1, &pos, on_half, op);
    if (rc != 0) {
      txmq__txe_t* e = E(tx, i);
      topics_unref(tx, e->topics);
      group_unref(tx, e->group);
      txmq__istr_unref(&tx->strs, e->producer);
      txmq__txtab_del(&tx->txs, i);
    }
  }
  if (rc != 0) {
    if (take) op->n = 0; /* the caller's still */
    begin_op_free(tx, op);
    return rc;
  }
  txmq__txe_t* e = E(tx, i);
  e->half_pos = e->last_pos = pos;
  e->half_len = (uint32_t)tx->sb.size;
  e->pub_qid = -1;
  if (n == 1) {
    const char* tags = txmq_msg_tags(op->msgs[0]);
    e->pub_qid = (int16_t)txmq_msg_queue_id(op->msgs[0]);
    e->pub_tags_hash = tags ? txmq__tags_hash(tags, strlen(tags)) : 0;
  }
  e->born_wall = at;
  e->nmsgs = (uint8_t)n;
  e->flags = TXE_HALF_PENDING;
  e->state = TXMQ_TX_PENDING;
  gauge(tx, e, +1);
  age_append(tx, i);
  tx->inflight++;
  return 0;
}

int txmq_tx_begin(txmq_tx_t* tx, const char* group, const char* producer,
                  txmq_msg_t* const* msgs, size_t n, int64_t immunity_ms,
                  txmq_tx_begin_cb cb, void* arg) {
  return begin(tx, group, producer, msgs, n, immunity_ms, cb, arg, 0);
}

int txmq_tx_begin_take(txmq_tx_t* tx, const char* group, const char* producer,
                       txmq_msg_t* const* msgs, size_t n, int64_t immunity_ms,
                       txmq_tx_begin_cb cb, void* arg) {
  return begin(tx, group, producer, msgs, n, immunity_ms, cb, arg, 1);
}

/* ---- end, answers, resume ---- */

static void on_event_op(txmq_log_t* log, int status, uint64_t pos, void* arg) {
  (void)log;
  (void)pos;
  event_op_t* op = arg;
  txmq_tx_t* tx = op->tx;
  tx->inflight--;
  uint32_t i = txmq__txtab_find(&tx->txs, op->id);
  txmq_tx_state_t st = TXMQ_TX_PENDING;
  if (i != TXMQ__NIL) {
    txmq__txe_t* e = E(tx, i);
    if (status != 0 && op->kind == EVOP_RESUME && e->state == TXMQ_TX_PENDING &&
        !(e->flags & TXE_DECIDING)) {
      /* The resume never became durable: parked again, as before. */
      txmq__heap_del(&tx->heap, &tx->txs, i);
      undeliv_remove(tx, i);
      e->flags &= (uint8_t)~TXE_IN_FLIGHT;
      e->count = op->prev_count;
      set_state(tx, e, TXMQ_TX_PARKED);
      tx->m.resumes--;
      arm(tx);
    }
    st = (txmq_tx_state_t)e->state;
  } else {
    txmq__dtab_find(&tx->dec, op->id, &st, NULL);
  }
  txmq_tx_end_cb cb = op->cb;
  void* cbarg = op->arg;
  txmq__pool_put(&tx->op_pool, op);
  if (cb) cb(tx, status, st, cbarg);
  maybe_finish_close(tx);
}

/* prev_count: the count to restore if a resume's record fails (the caller
 * has already set the fresh one that the record carries). */
static int event_op(txmq_tx_t* tx, uint32_t i, int kind, txmq__ev_t ev,
                    txmq_tx_source_t src, const char* ver, const char* who,
                    uint16_t prev_count, const undo_t* pre, txmq_tx_end_cb cb,
                    void* arg) {
  event_op_t* op = txmq__pool_get(&tx->op_pool);
  if (op == NULL) return TXMQ_ENOMEM;
  op->tx = tx;
  memcpy(op->id, E(tx, i)->id, TXMQ_TX_ID_LEN);
  op->kind = kind;
  op->prev_count = prev_count;
  op->cb = cb;
  op->arg = arg;
  int rc = append_event(tx, i, ev, src, ver, who, pre, on_event_op, op);
  if (rc != 0) txmq__pool_put(&tx->op_pool, op);
  return rc;
}

static int valid_src(txmq_tx_source_t s) {
  return s >= TXMQ_TX_SRC_PRODUCER && s <= TXMQ_TX_SRC_TIMEOUT;
}

int txmq_tx_end(txmq_tx_t* tx, const uint8_t* tx_id,
                txmq_tx_decision_t decision, txmq_tx_source_t source,
                const char* version, const char* who, txmq_tx_end_cb cb,
                void* arg) {
  if (tx == NULL || tx_id == NULL || decision < TXMQ_TX_COMMIT ||
      decision > TXMQ_TX_UNKNOWN || !valid_src(source) || !label_ok(version) ||
      !label_ok(who))
    return TXMQ_EINVAL;
  if (tx->closing) return TXMQ_ECLOSED;
  if (!tx->started) return TXMQ_EINVAL;
  txmq_tx_state_t want = decision == TXMQ_TX_COMMIT     ? TXMQ_TX_COMMITTED
                         : decision == TXMQ_TX_ROLLBACK ? TXMQ_TX_ROLLED_BACK
                                                        : TXMQ_TX_PENDING;
  uint32_t i = txmq__txtab_find(&tx->txs, tx_id);
  if (i == TXMQ__NIL) {
    txmq_tx_state_t st;
    if (txmq__dtab_find(&tx->dec, tx_id, &st, NULL) != 0) return TXMQ_ENOTFOUND;
    if (decision != TXMQ_TX_UNKNOWN && st != want) return TXMQ_ECONFLICT;
    return defer_cb(tx, cb, arg, st);
  }
  txmq__txe_t* e = E(tx, i);
  if (e->flags & TXE_DECIDING) {
    decide_op_t* op = e->u.op;
    if (decision != TXMQ_TX_UNKNOWN && op->state != want) return TXMQ_ECONFLICT;
    if (cb == NULL) return 0;
    waiter_t* w = txmq__pool_get(&tx->op_pool);
    if (w == NULL) return TXMQ_ENOMEM;
    w->cb = cb;
    w->arg = arg;
    add_waiter(op, w);
    return 0;
  }
  /* A parked transaction waits for an operator: a resume, or a decision. */
  if (e->state == TXMQ_TX_PARKED &&
      (source != TXMQ_TX_SRC_OPERATOR || decision == TXMQ_TX_UNKNOWN))
    return TXMQ_EPARKED;
  /* An operator's COMMIT must be able to publish: a half record that does
   * not read back (parked by its unreadable checks) can only be rolled
   * back. Read and decoded here, before anything is recorded. */
  if (source == TXMQ_TX_SRC_OPERATOR && decision == TXMQ_TX_COMMIT &&
      !(e->flags & TXE_HALF_PENDING) && publish_all(tx, e->half_pos, 0) != 0)
    return TXMQ_ECORRUPT;
  if (decision == TXMQ_TX_UNKNOWN)
    return event_op(tx, i, EVOP_UNKNOWN, TXMQ__EV_UNKNOWN, source, version, who,
                    E(tx, i)->count, NULL, cb, arg);
  return decide(tx, i, decision, source, version, who, cb, arg);
}

int txmq_tx_check_answer(txmq_tx_t* tx, const uint8_t* tx_id, uint64_t seq,
                         txmq_tx_decision_t decision, txmq_tx_source_t source,
                         const char* version, const char* who) {
  if (tx == NULL || tx_id == NULL || decision < TXMQ_TX_COMMIT ||
      decision > TXMQ_TX_UNKNOWN ||
      (source != TXMQ_TX_SRC_CHECK && source != TXMQ_TX_SRC_SCRIPT) ||
      !label_ok(version) || !label_ok(who))
    return TXMQ_EINVAL;
  if (tx->closing) return TXMQ_ECLOSED;
  uint32_t i = txmq__txtab_find(&tx->txs, tx_id);
  if (i == TXMQ__NIL) return TXMQ_ENOTFOUND;
  txmq__txe_t* e = E(tx, i);
  if (!(e->flags & TXE_IN_FLIGHT) || e->seq != seq) return TXMQ_ENOTFOUND;
  int rc;
  if (decision == TXMQ_TX_UNKNOWN)
    rc = counted_check(tx, i, TXMQ__EV_UNKNOWN, source, version, who, 0);
  else
    rc = decide(tx, i, decision, source, version, who, NULL, NULL);
  if (rc == 0) tx->m.checks_answered++;
  return rc;
}

int txmq_tx_check_failed(txmq_tx_t* tx, const uint8_t* tx_id, uint64_t seq) {
  if (tx == NULL || tx_id == NULL) return TXMQ_EINVAL;
  if (tx->closing) return TXMQ_ECLOSED;
  uint32_t i = txmq__txtab_find(&tx->txs, tx_id);
  if (i == TXMQ__NIL) return TXMQ_ENOTFOUND;
  txmq__txe_t* e = E(tx, i);
  if (!(e->flags & TXE_IN_FLIGHT) || e->seq != seq) return TXMQ_ENOTFOUND;
  e->flags &= (uint8_t)~TXE_IN_FLIGHT;
  /* Start the next offer after the target that failed, so a target that
   * keeps failing does not keep the check from the others. Inside a
   * target's call, wait one millisecond: a target that fails from within
   * check() every time must not spin the tick forever. */
  e->target = tx->ntargets ? (uint8_t)((e->target + 1) % tx->ntargets) : 0;
  txmq__heap_set(&tx->heap, &tx->txs, i, mono_now(tx) + (tx->dispatching ? 1u : 0u));
  arm(tx);
  return 0;
}

void txmq_tx_kick_group(txmq_tx_t* tx, const char* group) {
  if (tx == NULL || group == NULL || tx->closing) return;
  txmq__istr_t* g = txmq__istr_find(&tx->strs, group, strlen(group));
  if (g == NULL) return;
  uint64_t now = mono_now(tx);
  while (g->undeliv_head != TXMQ__NIL) {
    uint32_t i = g->undeliv_head;
    undeliv_remove(tx, i);
    txmq__heap_set(&tx->heap, &tx->txs, i, now);
  }
  arm(tx);
}

int txmq_tx_resume(txmq_tx_t* tx, const uint8_t* tx_id, const char* who,
                   txmq_tx_end_cb cb, void* arg) {
  if (tx == NULL || tx_id == NULL || !label_ok(who)) return TXMQ_EINVAL;
  if (tx->closing) return TXMQ_ECLOSED;
  if (!tx->started) return TXMQ_EINVAL;
  uint32_t i = txmq__txtab_find(&tx->txs, tx_id);
  if (i == TXMQ__NIL)
    return txmq__dtab_find(&tx->dec, tx_id, NULL, NULL) == 0 ? TXMQ_EINVAL
                                                             : TXMQ_ENOTFOUND;
  txmq__txe_t* e = E(tx, i);
  if (e->state != TXMQ_TX_PARKED || (e->flags & TXE_DECIDING)) return TXMQ_EINVAL;
  undo_t pre;
  undo_take(tx, i, &pre);
  uint16_t prev = e->count;
  e->count = 0; /* the record carries the fresh budget */
  int rc = event_op(tx, i, EVOP_RESUME, TXMQ__EV_RESUME, TXMQ_TX_SRC_OPERATOR,
                    NULL, who, prev, &pre, cb, arg);
  if (rc != 0) {
    e->count = prev;
    return rc;
  }
  set_state(tx, e, TXMQ_TX_PENDING);
  e->target = 0;
  tx->m.resumes++;
  txmq__heap_set(&tx->heap, &tx->txs, i, mono_now(tx));
  arm(tx);
  return 0;
}

/* ---- inspection ---- */

static void fill_info(txmq_tx_t* tx, uint32_t i, txmq_tx_info_t* info) {
  txmq__txe_t* e = E(tx, i);
  memset(info, 0, sizeof *info);
  memcpy(info->tx_id, e->id, TXMQ_TX_ID_LEN);
  info->state = (txmq_tx_state_t)e->state;
  info->group = e->group->s;
  info->producer = e->producer ? e->producer->s : NULL;
  info->check_count = e->count;
  info->nmsgs = e->nmsgs;
  info->half_pos = e->half_pos;
  info->born_wall_ms = e->born_wall;
  if (e->state == TXMQ_TX_PENDING && !(e->flags & (TXE_DECIDING | TXE_IN_FLIGHT)) &&
      e->heap_idx != TXMQ__NIL) {
    uint64_t due = tx->heap.a[e->heap_idx].due;
    info->due_in_ms = tx->started ? (int64_t)(due - mono_now(tx))
                                  : (int64_t)due - wall_now(tx);
  }
}

void txmq_tx_list(txmq_tx_t* tx, const char* group,
                  int (*fn)(void* arg, const txmq_tx_info_t* info), void* arg) {
  if (tx == NULL || fn == NULL) return;
  txmq__istr_t* g = NULL;
  if (group != NULL) {
    g = txmq__istr_find(&tx->strs, group, strlen(group));
    if (g == NULL) return;
  }
  for (uint32_t i = tx->age_head; i != TXMQ__NIL;) {
    txmq__txe_t* e = E(tx, i);
    uint32_t next = e->age_next;
    if ((g == NULL || e->group == g) && !(e->flags & TXE_DECIDING) &&
        (e->state == TXMQ_TX_PENDING || e->state == TXMQ_TX_PARKED)) {
      txmq_tx_info_t info;
      fill_info(tx, i, &info);
      if (fn(arg, &info)) break;
    }
    i = next;
  }
}

typedef struct {
  txmq_tx_event_t ev;
  size_t ver_off, who_off; /* into the string arena, or SIZE_MAX */
} show_ev_t;

static char* dup_n(const char* s, size_t n) {
  char* p = malloc(n + 1);
  if (p) {
    memcpy(p, s, n);
    p[n] = '\0';
  }
  return p;
}

int txmq_tx_show(txmq_tx_t* tx, const uint8_t* tx_id, txmq_tx_info_t* info,
                 void (*fn)(void* arg, const txmq_tx_event_t* ev), void* arg) {
  if (tx == NULL || tx_id == NULL) return TXMQ_EINVAL;
  txmq_tx_info_t local;
  if (info == NULL) info = &local;
  uint64_t pos;
  uint32_t i = txmq__txtab_find(&tx->txs, tx_id);
  if (i != TXMQ__NIL) {
    fill_info(tx, i, info);
    pos = E(tx, i)->last_pos;
  } else {
    txmq_tx_state_t st;
    if (txmq__dtab_find(&tx->dec, tx_id, &st, &pos) != 0) return TXMQ_ENOTFOUND;
    memset(info, 0, sizeof *info);
    memcpy(info->tx_id, tx_id, TXMQ_TX_ID_LEN);
    info->state = st;
    free(tx->show_group);
    free(tx->show_producer);
    tx->show_group = tx->show_producer = NULL;
  }

  txmq_log_t* log = txmq_store_log(tx->st);
  show_ev_t* evs = NULL;
  size_t nev = 0, cap = 0;
  char* arena = NULL;
  size_t alen = 0, acap = 0;
  int rc = 0, have_count = 0;
  /* Walk the chain from the newest record back to the half record. Each
   * step must go backwards, so a damaged chain cannot loop. */
  for (;;) {
    txmq_log_entry_t le;
    rc = txmq_log_read(log, pos, &le);
    if (rc != 0) {
      if (pos >= txmq_log_end(log)) rc = TXMQ_EAGAIN; /* not written yet */
      break;
    }
    if (nev == cap) {
      size_t nc = cap ? cap * 2 : 16;
      show_ev_t* ne = realloc(evs, nc * sizeof *ne);
      if (ne == NULL) {
        rc = TXMQ_ENOMEM;
        break;
      }
      evs = ne;
      cap = nc;
    }
    show_ev_t* s = &evs[nev];
    memset(s, 0, sizeof *s);
    s->ver_off = s->who_off = SIZE_MAX;
    s->ev.pos = pos;
    if (le.type == TXMQ_REC_TX_HALF) {
      txmq__half_t h;
      int drc = txmq__half_decode(le.data, le.len, &h);
      rc = drc;
      /* Another transaction's half (a damaged chain): decoded, so freed. */
      if (rc == 0 && memcmp(h.id, tx_id, TXMQ_TX_ID_LEN) != 0) rc = TXMQ_ECORRUPT;
      if (rc == 0) {
        s->ev.event = txmq__ev_name(TXMQ__EV_HALF);
        s->ev.wall_ms = h.at;
        nev++;
        if (i == TXMQ__NIL) {
          tx->show_group = dup_n(h.group, h.group_len);
          tx->show_producer = h.producer ? dup_n(h.producer, h.producer_len) : NULL;
          info->group = tx->show_group;
          info->producer = tx->show_producer;
          info->nmsgs = h.msgs->size;
          info->half_pos = pos;
          info->born_wall_ms = h.at;
        }
      }
      if (drc == 0) txmq__half_done(&h);
      break;
    }
    txmq__event_t ev;
    rc = le.type == TXMQ_REC_TX_EVENT ? txmq__event_decode(le.data, le.len, &ev)
                                      : TXMQ_ECORRUPT;
    if (rc == 0 && (memcmp(ev.id, tx_id, TXMQ_TX_ID_LEN) != 0 || ev.prev >= pos))
      rc = TXMQ_ECORRUPT;
    if (rc != 0) break;
    size_t need = (ev.ver ? ev.ver_len + 1 : 0) + (ev.who ? ev.who_len + 1 : 0);
    if (alen + need > acap) {
      size_t nc = acap ? acap * 2 : 256;
      while (nc < alen + need) nc *= 2;
      char* na = realloc(arena, nc);
      if (na == NULL) {
        rc = TXMQ_ENOMEM;
        break;
      }
      arena = na;
      acap = nc;
    }
    if (ev.ver) {
      s->ver_off = alen;
      memcpy(arena + alen, ev.ver, ev.ver_len);
      alen += ev.ver_len;
      arena[alen++] = '\0';
    }
    if (ev.who) {
      s->who_off = alen;
      memcpy(arena + alen, ev.who, ev.who_len);
      alen += ev.who_len;
      arena[alen++] = '\0';
    }
    s->ev.event = txmq__ev_name(ev.ev);
    s->ev.source = ev.src;
    s->ev.check_count = ev.count;
    s->ev.wall_ms = ev.at;
    if (!have_count && i == TXMQ__NIL) info->check_count = ev.count;
    have_count = 1;
    nev++;
    pos = ev.prev;
  }
  if (fn != NULL) {
    for (size_t k = nev; k-- > 0;) {
      show_ev_t* s = &evs[k];
      s->ev.version = s->ver_off != SIZE_MAX ? arena + s->ver_off : NULL;
      s->ev.who = s->who_off != SIZE_MAX ? arena + s->who_off : NULL;
      fn(arg, &s->ev);
    }
  }
  free(evs);
  free(arena);
  return rc;
}

const char* txmq_tx_diag(const txmq_tx_t* tx) { return tx->diag; }

void txmq_tx_metrics(const txmq_tx_t* tx, txmq_tx_metrics_t* out) {
  if (tx == NULL || out == NULL) return;
  *out = tx->m;
}

uint64_t txmq_tx_pending_on_topic(const txmq_tx_t* tx, const char* topic) {
  if (tx == NULL || topic == NULL) return 0;
  txmq__istr_t* t = txmq__istr_find(&tx->strs, topic, strlen(topic));
  return t ? t->pending : 0;
}

size_t txmq__tx_mem_bytes(const txmq_tx_t* tx) {
  size_t b = sizeof *tx + txmq__txtab_bytes(&tx->txs);
  b += (size_t)tx->heap.cap * sizeof(txmq__hent_t);
  b += (size_t)tx->dec.cap * sizeof(txmq__dent_t) + (size_t)tx->dec.scap * 4;
  b += (size_t)tx->strs.cap * sizeof(void*);
  for (uint32_t k = 0; k < tx->strs.cap; k++)
    if (tx->strs.slots[k]) b += sizeof(txmq__istr_t) + tx->strs.slots[k]->len + 1;
  return b;
}

/* ---- names ---- */

int txmq_tx_id_parse(const char* str, uint8_t id[TXMQ_TX_ID_LEN]) {
  if (str == NULL || strlen(str) != TXMQ_TX_ID_STRLEN) return TXMQ_EINVAL;
  for (int k = 0; k < TXMQ_TX_ID_LEN; k++) {
    int v = 0;
    for (int j = 0; j < 2; j++) {
      char c = str[2 * k + j];
      int d = c >= '0' && c <= '9'   ? c - '0'
              : c >= 'a' && c <= 'f' ? c - 'a' + 10
              : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                     : -1;
      if (d < 0) return TXMQ_EINVAL;
      v = v * 16 + d;
    }
    id[k] = (uint8_t)v;
  }
  return 0;
}

char* txmq_tx_id_str(const uint8_t* id, char buf[TXMQ_TX_ID_STRLEN + 1]) {
  static const char hex[] = "0123456789abcdef";
  for (int k = 0; k < TXMQ_TX_ID_LEN; k++) {
    buf[2 * k] = hex[id[k] >> 4];
    buf[2 * k + 1] = hex[id[k] & 15];
  }
  buf[TXMQ_TX_ID_STRLEN] = '\0';
  return buf;
}

const char* txmq_tx_state_name(txmq_tx_state_t s) {
  switch (s) {
    case TXMQ_TX_PENDING: return "pending";
    case TXMQ_TX_COMMITTED: return "committed";
    case TXMQ_TX_ROLLED_BACK: return "rolled_back";
    case TXMQ_TX_PARKED: return "parked";
  }
  return "unknown";
}

const char* txmq_tx_source_name(txmq_tx_source_t s) {
  switch (s) {
    case TXMQ_TX_SRC_PRODUCER: return "producer";
    case TXMQ_TX_SRC_CHECK: return "check";
    case TXMQ_TX_SRC_SCRIPT: return "script";
    case TXMQ_TX_SRC_OPERATOR: return "operator";
    case TXMQ_TX_SRC_MAX_CHECKS: return "max_checks";
    case TXMQ_TX_SRC_TIMEOUT: return "timeout";
    case TXMQ_TX_SRC_UNREADABLE: return "unreadable";
  }
  return "none";
}
