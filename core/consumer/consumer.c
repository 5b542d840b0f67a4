/*
 * consumer.c - consumer groups over the store (txmq/consumer.h): clustering
 * delivery, visibility timeouts and redelivery, acknowledgements with
 * per-delivery handles, committed offsets, the dead-letter topic, the
 * in-flight cap and the wake notification for long polls.
 *
 * STATE. One gstate per (group, topic) that was ever received from since the
 * engine started, with per queue:
 *   committed   the lowest offset not yet done (acked, skipped by the
 *               filter, moved to the DLQ or lost to retention); saved with
 *               txmq_store_offset_set whenever it moves, so the store's
 *               checkpoints make it durable;
 *   next        the lowest offset never delivered since the start;
 *   outstanding a list, in offset order, of the deliveries in [committed,
 *               next) that are not done. committed is the head's offset, or
 *               next when the list is empty. Deliveries are created in
 *               increasing offset order, so appending keeps the list sorted
 *               and an ack unlinks in O(1). Messages done out of order need
 *               no memory at all.
 * A delivery (dlv_t: 80 bytes, plus a heap slot and a table bucket) is in
 * one of four states: INFLIGHT (in the due-time heap and in the handle
 * table), READY (expired, waiting in the gstate's FIFO to be delivered
 * again), RETRY (its DLQ put failed; in the heap to try again) or DLQ (its
 * DLQ put is running). At most MAX_INFLIGHT
 * deliveries exist per gstate, whatever their state, so a consumer that
 * never acknowledges cannot grow memory. Besides, a set of the group names
 * the engine knows (groups with stored offsets at start, and every group
 * that received or set an offset since), counted against MAX_GROUPS.
 *
 * TIME. Deadlines are on the engine's monotonic clock (the loop's uv_now, or
 * the clock callback). One uv_timer is armed for the earliest deadline of
 * the heap; a tick pops only what is due, so its cost grows with what
 * expires, never with what is in flight.
 *
 * HANDLES are "<qid>.<offset>.<nonce>" in lowercase hex. The nonce is drawn
 * afresh for every delivery (a bijective mix of a counter and a random
 * seed, so nonces of one engine never repeat and those of two engines
 * almost surely differ): the handle of an earlier delivery of the same
 * message no longer matches once the message expired.
 *
 * WAKE. The store announces every message made visible (the publish hook of
 * store_int.h); the engine marks each gstate of that topic and, from a
 * uv_idle callback (never from inside the store's append completion, so the
 * wake callback may call receive at once), calls the wake callback once per
 * marked gstate. Redeliveries coming due, acks that free room under the
 * in-flight cap, and a receive that stopped on its scan budget mark their
 * gstate too.
 *
 * It does not keep messages in memory (they are read back from the store at
 * each delivery), and it does not know about connections or waiters: the
 * server maps wake calls to its long polls.
 *
 * ORDER OF SHUTDOWN: close the engine, wait for its callback, then close the
 * store; the engine's close waits for the DLQ puts it started.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "txmq/consumer.h"
#include "txmq/error.h"
#include "consumer/consumer_int.h"
#include "store/store_int.h"

#define DEFAULT_VISIBILITY_MS 30000
#define DEFAULT_MAX_DELIVERIES 16
#define DEFAULT_MAX_INFLIGHT 10000
#define DEFAULT_MAX_GROUPS 1024
#define MAX_MAX_GROUPS 10000000
#define MAX_VISIBILITY_MS (24 * 3600 * 1000) /* a day */
#define MAX_MAX_DELIVERIES 10000
#define MAX_MAX_INFLIGHT 1000000
#define RECEIVE_MAX 256
/* Index entries (and reads) one receive may look at: a filter that skips
 * millions of messages must not stall the loop. Past it, the receive
 * returns what it has and wakes its gstate so that a waiter asks again. */
#define SCAN_BUDGET 65536
/* Delay before a failed DLQ put is tried again. */
#define DLQ_RETRY_MS 1000
#define DLQ_PREFIX "DLQ."
#define NOT_IN_HEAP UINT32_MAX

/* D_EXPIRED: just out of the heap, on its way to READY or the DLQ. */
enum { D_INFLIGHT = 1, D_READY, D_RETRY, D_DLQ, D_EXPIRED };
enum { CS_NEW = 0, CS_STARTED, CS_CLOSING, CS_CLOSED };

typedef struct gstate_s gstate_t;
typedef struct dlv_s dlv_t;

struct dlv_s {
  gstate_t* g;
  dlv_t* qprev; /* the queue's outstanding list, by offset */
  dlv_t* qnext;
  dlv_t* rnext; /* the gstate's ready FIFO */
  dlv_t* hnext; /* handle table chain (INFLIGHT only) */
  int64_t offset;
  uint64_t nonce;
  uint64_t deadline;
  uint32_t heap_idx; /* NOT_IN_HEAP unless INFLIGHT or RETRY */
  uint32_t deliveries;
  uint16_t qid;
  uint8_t state;
  uint8_t detached; /* D_DLQ whose queue moved on: freed when its put ends */
};

typedef struct {
  int64_t committed;
  int64_t next;
  dlv_t* head;
  dlv_t* tail;
  size_t outstanding;
} cqueue_t;

struct gstate_s {
  txmq_consumers_t* cs;
  gstate_t* hnext; /* by (group, topic) */
  gstate_t* tnext; /* by topic */
  gstate_t* wnext; /* wake list */
  uint64_t hash;
  uint64_t thash;
  char* group;
  char* topic;
  int nqueues;
  int rr; /* the queue a receive looks at first */
  int wake_pending;
  size_t outstanding; /* deliveries of every state */
  dlv_t* ready_head;
  dlv_t* ready_tail;
  cqueue_t queues[];
};

struct txmq_consumers_s {
  uv_loop_t* loop;
  txmq_store_t* st;
  int state;

  uint64_t visibility_ms;
  uint32_t max_deliveries;
  size_t max_inflight;
  size_t max_groups;
  int manual;
  uint64_t (*clock)(void*);
  void* clock_arg;
  txmq_consumers_wake_cb wake_cb;
  void* wake_arg;

  uv_timer_t timer; /* the heap's earliest deadline */
  uv_idle_t idle;   /* delivers pending wakes */
  int open_handles;
  uint64_t armed_for; /* deadline the timer is armed for; 0: not armed */

  /* gstates, chained twice: by (group, topic) and by topic. */
  gstate_t** gbuckets;
  gstate_t** tbuckets;
  size_t gcap; /* 0 or a power of two */
  size_t ngroups;

  /* The names of the groups the engine knows (those with stored offsets
   * at start, and every group that received or set an offset since): an
   * open-addressing set, never shrinking, counted against max_groups. */
  char** names;
  size_t names_cap; /* 0 or a power of two */
  size_t nnames;
  char diag[256];   /* why the last receive or offset_set was refused */

  /* INFLIGHT deliveries by nonce. */
  dlv_t** dbuckets;
  size_t dcap;
  size_t ndlv;

  /* INFLIGHT and RETRY deliveries by deadline. */
  dlv_t** heap;
  size_t nheap;
  size_t heap_cap;

  gstate_t* wake_head;
  gstate_t* wake_tail;

  uint64_t nonce_ctr;
  uint64_t nonce_seed;
  size_t dlq_pending;

  void (*close_cb)(txmq_consumers_t* cs, void* arg);
  void* close_arg;
};

static void arm(txmq_consumers_t* cs);
static void schedule_wake(gstate_t* g);

/* ---- small helpers ---- */

static uint64_t now_ms(txmq_consumers_t* cs) {
  if (cs->clock != NULL) return cs->clock(cs->clock_arg);
  return uv_now(cs->loop);
}

static uint64_t fnv_str(uint64_t h, const char* s) {
  for (; *s; s++) {
    h ^= (uint8_t)*s;
    h *= 1099511628211u;
  }
  return h;
}

#define FNV_BASIS 1469598103934665603u

/* splitmix64's finalizer: a bijection, so distinct counters give distinct
 * nonces. */
static uint64_t mix64(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9u;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebu;
  x ^= x >> 31;
  return x;
}

static uint64_t next_nonce(txmq_consumers_t* cs) {
  return mix64(cs->nonce_seed + cs->nonce_ctr++);
}

/* ---- the due-time heap ---- */

static void heap_set(txmq_consumers_t* cs, size_t i, dlv_t* d) {
  cs->heap[i] = d;
  d->heap_idx = (uint32_t)i;
}

static void heap_up(txmq_consumers_t* cs, size_t i) {
  dlv_t* d = cs->heap[i];
  while (i > 0) {
    size_t p = (i - 1) / 2;
    if (cs->heap[p]->deadline <= d->deadline) break;
    heap_set(cs, i, cs->heap[p]);
    i = p;
  }
  heap_set(cs, i, d);
}

static void heap_down(txmq_consumers_t* cs, size_t i) {
  dlv_t* d = cs->heap[i];
  for (;;) {
    size_t l = 2 * i + 1;
    if (l >= cs->nheap) break;
    size_t c = l;
    if (l + 1 < cs->nheap && cs->heap[l + 1]->deadline < cs->heap[l]->deadline)
      c = l + 1;
    if (cs->heap[c]->deadline >= d->deadline) break;
    heap_set(cs, i, cs->heap[c]);
    i = c;
  }
  heap_set(cs, i, d);
}

static int heap_push(txmq_consumers_t* cs, dlv_t* d) {
  if (cs->nheap == cs->heap_cap) {
    size_t cap = cs->heap_cap ? cs->heap_cap * 2 : 64;
    dlv_t** v = realloc(cs->heap, cap * sizeof *v);
    if (v == NULL) return TXMQ_ENOMEM;
    cs->heap = v;
    cs->heap_cap = cap;
  }
  cs->heap[cs->nheap++] = d;
  heap_up(cs, cs->nheap - 1);
  return 0;
}

static void heap_remove(txmq_consumers_t* cs, dlv_t* d) {
  size_t i = d->heap_idx;
  if (i == NOT_IN_HEAP) return;
  d->heap_idx = NOT_IN_HEAP;
  dlv_t* last = cs->heap[--cs->nheap];
  if (i == cs->nheap) return;
  heap_set(cs, i, last);
  heap_up(cs, i);
  heap_down(cs, last->heap_idx);
}

/* ---- the handle table (INFLIGHT deliveries by nonce) ---- */

static int dtab_grow(txmq_consumers_t* cs) {
  size_t cap = cs->dcap ? cs->dcap * 2 : 64;
  dlv_t** b = calloc(cap, sizeof *b);
  if (b == NULL) return TXMQ_ENOMEM;
  for (size_t i = 0; i < cs->dcap; i++) {
    dlv_t* d = cs->dbuckets[i];
    while (d != NULL) {
      dlv_t* n = d->hnext;
      size_t j = d->nonce & (cap - 1);
      d->hnext = b[j];
      b[j] = d;
      d = n;
    }
  }
  free(cs->dbuckets);
  cs->dbuckets = b;
  cs->dcap = cap;
  return 0;
}

static int dtab_reserve(txmq_consumers_t* cs) {
  return cs->ndlv + 1 > cs->dcap ? dtab_grow(cs) : 0;
}

/* Cannot fail: dtab_reserve ran first. */
static void dtab_insert(txmq_consumers_t* cs, dlv_t* d) {
  size_t j = d->nonce & (cs->dcap - 1);
  d->hnext = cs->dbuckets[j];
  cs->dbuckets[j] = d;
  cs->ndlv++;
}

static dlv_t* dtab_find(const txmq_consumers_t* cs, uint64_t nonce) {
  if (cs->dcap == 0) return NULL;
  for (dlv_t* d = cs->dbuckets[nonce & (cs->dcap - 1)]; d; d = d->hnext)
    if (d->nonce == nonce) return d;
  return NULL;
}

static void dtab_remove(txmq_consumers_t* cs, dlv_t* d) {
  dlv_t** p = &cs->dbuckets[d->nonce & (cs->dcap - 1)];
  while (*p != NULL && *p != d) p = &(*p)->hnext;
  if (*p == d) {
    *p = d->hnext;
    cs->ndlv--;
  }
  d->hnext = NULL;
}

/* ---- group names ---- */

static size_t names_slot(char* const* names, size_t cap, const char* name) {
  size_t i = (size_t)fnv_str(FNV_BASIS, name) & (cap - 1);
  while (names[i] != NULL && strcmp(names[i], name) != 0) i = (i + 1) & (cap - 1);
  return i;
}

static int names_has(const txmq_consumers_t* cs, const char* name) {
  return cs->names_cap > 0 &&
         cs->names[names_slot(cs->names, cs->names_cap, name)] != NULL;
}

/* Adds name to the set (nothing if it is in). 0 or TXMQ_ENOMEM. */
static int names_add(txmq_consumers_t* cs, const char* name) {
  if ((cs->nnames + 1) * 4 > cs->names_cap * 3) {
    size_t cap = cs->names_cap ? cs->names_cap * 2 : 64;
    char** n = calloc(cap, sizeof *n);
    if (n == NULL) return TXMQ_ENOMEM;
    for (size_t i = 0; i < cs->names_cap; i++)
      if (cs->names[i] != NULL) n[names_slot(n, cap, cs->names[i])] = cs->names[i];
    free(cs->names);
    cs->names = n;
    cs->names_cap = cap;
  }
  size_t i = names_slot(cs->names, cs->names_cap, name);
  if (cs->names[i] != NULL) return 0;
  if ((cs->names[i] = strdup(name)) == NULL) return TXMQ_ENOMEM;
  cs->nnames++;
  return 0;
}

static int seed_name(void* arg, const char* group) {
  return names_add(arg, group);
}

/* A group may read (or set offsets) if the engine knows it or there is
 * room for one more; else TXMQ_ERANGE with the limit in cs->diag. */
static int admit_group(txmq_consumers_t* cs, const char* group) {
  if (names_has(cs, group)) return 0;
  if (cs->nnames >= cs->max_groups) {
    snprintf(cs->diag, sizeof cs->diag,
             "consumer group limit reached (max_consumer_groups = %zu): "
             "group '%s' refused", cs->max_groups, group);
    return TXMQ_ERANGE;
  }
  return names_add(cs, group);
}

/* ---- gstates ---- */

static uint64_t group_hash(const char* group, const char* topic) {
  return fnv_str(fnv_str(FNV_BASIS, group) ^ 1u, topic);
}

static gstate_t* gstate_find(const txmq_consumers_t* cs, const char* group,
                             const char* topic) {
  if (cs->gcap == 0) return NULL;
  uint64_t h = group_hash(group, topic);
  for (gstate_t* g = cs->gbuckets[h & (cs->gcap - 1)]; g; g = g->hnext)
    if (g->hash == h && strcmp(g->group, group) == 0 &&
        strcmp(g->topic, topic) == 0)
      return g;
  return NULL;
}

static int gtab_grow(txmq_consumers_t* cs) {
  size_t cap = cs->gcap ? cs->gcap * 2 : 16;
  gstate_t** gb = calloc(cap, sizeof *gb);
  gstate_t** tb = calloc(cap, sizeof *tb);
  if (gb == NULL || tb == NULL) {
    free(gb);
    free(tb);
    return TXMQ_ENOMEM;
  }
  for (size_t i = 0; i < cs->gcap; i++) {
    gstate_t* g = cs->gbuckets[i];
    while (g != NULL) {
      gstate_t* n = g->hnext;
      g->hnext = gb[g->hash & (cap - 1)];
      gb[g->hash & (cap - 1)] = g;
      g = n;
    }
    g = cs->tbuckets[i];
    while (g != NULL) {
      gstate_t* n = g->tnext;
      g->tnext = tb[g->thash & (cap - 1)];
      tb[g->thash & (cap - 1)] = g;
      g = n;
    }
  }
  free(cs->gbuckets);
  free(cs->tbuckets);
  cs->gbuckets = gb;
  cs->tbuckets = tb;
  cs->gcap = cap;
  return 0;
}

static void gstate_free(gstate_t* g) {
  for (int q = 0; q < g->nqueues; q++) {
    dlv_t* d = g->queues[q].head;
    while (d != NULL) {
      dlv_t* n = d->qnext;
      free(d);
      d = n;
    }
  }
  free(g->group);
  free(g->topic);
  free(g);
}

/* Where a queue starts the first time: from the group's saved progress when
 * it has some, else as the receive asked. */
static int64_t start_offset(int have, int64_t saved, int any_saved,
                            txmq_from_t from, int64_t offset, int64_t begin,
                            int64_t end) {
  int64_t c;
  if (have) c = saved;
  else if (any_saved) c = begin; /* the group knows the topic: skip nothing */
  else if (from == TXMQ_FROM_LATEST) c = end;
  else if (from == TXMQ_FROM_OFFSET) c = offset;
  else c = begin;
  if (c < begin) c = begin; /* retention took what lay below */
  if (c > end) c = end;
  return c;
}

/* Creates the gstate of (group, topic), its queues starting from the saved
 * offsets or from `from`; the start is saved at once, so that a restart
 * before any ack does not move a "latest" start forward. */
static int gstate_new(txmq_consumers_t* cs, const char* group,
                      const char* topic, int nqueues, txmq_from_t from,
                      int64_t offset, gstate_t** out) {
  if (cs->ngroups + 1 > cs->gcap) {
    int rc = gtab_grow(cs);
    if (rc != 0) return rc;
  }
  gstate_t* g = calloc(1, sizeof *g + (size_t)nqueues * sizeof(cqueue_t));
  if (g == NULL) return TXMQ_ENOMEM;
  g->cs = cs;
  g->group = strdup(group);
  g->topic = strdup(topic);
  g->nqueues = nqueues;
  if (g->group == NULL || g->topic == NULL) {
    gstate_free(g);
    return TXMQ_ENOMEM;
  }
  int64_t saved[TXMQ_STORE_MAX_QUEUES];
  uint8_t have[TXMQ_STORE_MAX_QUEUES];
  int any = 0;
  for (int q = 0; q < nqueues; q++) {
    saved[q] = 0;
    have[q] = txmq_store_offset_get(cs->st, group, topic, q, &saved[q]) == 0;
    any |= have[q];
  }
  for (int q = 0; q < nqueues; q++) {
    int64_t begin, end;
    int rc = txmq_store_queue_range(cs->st, topic, q, &begin, &end);
    if (rc == 0) {
      int64_t c = start_offset(have[q], saved[q], any, from, offset, begin, end);
      g->queues[q].committed = g->queues[q].next = c;
      if (!have[q] || c != saved[q])
        rc = txmq_store_offset_set(cs->st, group, topic, q, c);
    }
    if (rc != 0) {
      gstate_free(g);
      return rc;
    }
  }
  g->hash = group_hash(group, topic);
  g->thash = fnv_str(FNV_BASIS, topic);
  size_t j = g->hash & (cs->gcap - 1);
  g->hnext = cs->gbuckets[j];
  cs->gbuckets[j] = g;
  j = g->thash & (cs->gcap - 1);
  g->tnext = cs->tbuckets[j];
  cs->tbuckets[j] = g;
  cs->ngroups++;
  *out = g;
  return 0;
}

/* Moves committed to the lowest outstanding offset (or next) and saves it
 * when it moved. A failure to save (the store is closing) loses nothing
 * that a restart would not redeliver. */
static void update_committed(gstate_t* g, int qid) {
  cqueue_t* q = &g->queues[qid];
  int64_t c = q->head != NULL ? q->head->offset : q->next;
  if (c == q->committed) return;
  q->committed = c;
  (void)txmq_store_offset_set(g->cs->st, g->group, g->topic, qid, c);
}

/* ---- deliveries ---- */

static void ready_push(gstate_t* g, dlv_t* d) {
  d->state = D_READY;
  d->rnext = NULL;
  if (g->ready_tail != NULL) g->ready_tail->rnext = d;
  else g->ready_head = d;
  g->ready_tail = d;
}

static dlv_t* ready_pop(gstate_t* g) {
  dlv_t* d = g->ready_head;
  if (d != NULL) {
    g->ready_head = d->rnext;
    if (g->ready_head == NULL) g->ready_tail = NULL;
    d->rnext = NULL;
  }
  return d;
}

static void ready_unpop(gstate_t* g, dlv_t* d) {
  d->rnext = g->ready_head;
  g->ready_head = d;
  if (g->ready_tail == NULL) g->ready_tail = d;
}

/* The message is done for the group (acked, moved to the DLQ, lost): forget
 * the delivery and let committed move. */
static void dlv_done(txmq_consumers_t* cs, dlv_t* d) {
  gstate_t* g = d->g;
  cqueue_t* q = &g->queues[d->qid];
  if (d->state == D_INFLIGHT) dtab_remove(cs, d);
  heap_remove(cs, d);
  if (d->qprev != NULL) d->qprev->qnext = d->qnext;
  else q->head = d->qnext;
  if (d->qnext != NULL) d->qnext->qprev = d->qprev;
  else q->tail = d->qprev;
  q->outstanding--;
  /* Room under the cap again: a waiter blocked by it may now get more. */
  if (g->outstanding-- >= cs->max_inflight) schedule_wake(g);
  int qid = d->qid;
  free(d);
  update_committed(g, qid);
}

/* Makes d in flight under a fresh nonce until deadline, counting one more
 * delivery. On failure (out of memory) d stays as it was, outside the heap
 * and the handle table. */
static int dlv_issue(txmq_consumers_t* cs, dlv_t* d, uint64_t deadline) {
  int rc = dtab_reserve(cs);
  if (rc != 0) return rc;
  d->deadline = deadline;
  if ((rc = heap_push(cs, d)) != 0) return rc;
  d->nonce = next_nonce(cs);
  d->state = D_INFLIGHT;
  d->deliveries++;
  dtab_insert(cs, d);
  return 0;
}

static void fill(txmq_delivery_t* out, dlv_t* d, txmq_msg_t* m) {
  out->msg = m;
  out->deliveries = d->deliveries;
  snprintf(out->handle, sizeof out->handle, "%x.%" PRIx64 ".%" PRIx64,
           (unsigned)d->qid, (uint64_t)d->offset, d->nonce);
}

/* Parses a handle; 0 or TXMQ_EINVAL. */
static int parse_hex(const char** p, uint64_t* v, int max_digits) {
  const char* s = *p;
  uint64_t x = 0;
  int n = 0;
  for (;; s++, n++) {
    int c = (unsigned char)*s, d;
    if (c >= '0' && c <= '9') d = c - '0';
    else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
    else break;
    if (n == max_digits) return TXMQ_EINVAL;
    x = x << 4 | (uint64_t)d;
  }
  if (n == 0) return TXMQ_EINVAL;
  *v = x;
  *p = s;
  return 0;
}

static int parse_handle(const char* h, int* qid, int64_t* offset,
                        uint64_t* nonce) {
  if (h == NULL || strnlen(h, TXMQ_CONSUMER_HANDLE_MAX) >= TXMQ_CONSUMER_HANDLE_MAX)
    return TXMQ_EINVAL;
  uint64_t q, off, n;
  const char* p = h;
  if (parse_hex(&p, &q, 2) != 0 || *p++ != '.' ||
      parse_hex(&p, &off, 16) != 0 || *p++ != '.' ||
      parse_hex(&p, &n, 16) != 0 || *p != '\0')
    return TXMQ_EINVAL;
  if (q >= TXMQ_STORE_MAX_QUEUES || off > (uint64_t)INT64_MAX)
    return TXMQ_EINVAL;
  *qid = (int)q;
  *offset = (int64_t)off;
  *nonce = n;
  return 0;
}

/* ---- the dead-letter topic ---- */

static void on_dlq_put(txmq_store_t* st, int status, const txmq_msg_t* msg,
                       void* arg);

/* The DLQ copy of m: a new plain message with m's tags, keys, body, born
 * time and properties, plus the DLQ_ORIGIN_* properties (which win over
 * properties of the same name, as when a DLQ message is dead-lettered
 * again). Properties of m past TXMQ_MSG_MAX_PROPS are dropped. */
static int dlq_message(const gstate_t* g, const txmq_msg_t* m, int qid,
                       int64_t offset, txmq_msg_t** out) {
  txmq_msg_t* dm = txmq_msg_new();
  if (dm == NULL) return TXMQ_ENOMEM;
  char topic[TXMQ_NAME_MAX + 1], num[32], id[TXMQ_MSG_ID_STRLEN + 1];
  snprintf(topic, sizeof topic, DLQ_PREFIX "%s", g->group);
  int rc = txmq_msg_set_topic(dm, topic);
  if (rc == 0) rc = txmq_msg_prop_set(dm, "DLQ_ORIGIN_TOPIC", g->topic);
  snprintf(num, sizeof num, "%d", qid);
  if (rc == 0) rc = txmq_msg_prop_set(dm, "DLQ_ORIGIN_QID", num);
  snprintf(num, sizeof num, "%" PRId64, offset);
  if (rc == 0) rc = txmq_msg_prop_set(dm, "DLQ_ORIGIN_OFFSET", num);
  if (rc == 0)
    rc = txmq_msg_prop_set(dm, "DLQ_ORIGIN_MSG_ID", txmq_msg_id_str(m, id));
  size_t body_len;
  const void* body = txmq_msg_body(m, &body_len);
  if (rc == 0) rc = txmq_msg_set_tags(dm, txmq_msg_tags(m));
  if (rc == 0) rc = txmq_msg_set_keys(dm, txmq_msg_keys(m));
  if (rc == 0) rc = txmq_msg_set_body(dm, body, body_len);
  txmq_msg_set_born_ms(dm, txmq_msg_born_ms(m));
  size_t np = txmq_msg_prop_count(m);
  for (size_t i = 0; rc == 0 && i < np; i++) {
    const char *k, *v;
    if (txmq_msg_prop_at(m, i, &k, &v) != 0) break;
    if (txmq_msg_prop_get(dm, k) != NULL) continue;
    if (txmq_msg_prop_set(dm, k, v) == TXMQ_ETOOBIG) break;
  }
  if (rc != 0) {
    txmq_msg_free(dm);
    return rc;
  }
  *out = dm;
  return 0;
}

/* Keeps d for another try at its due time (d is out of the heap). */
static void dlq_retry(txmq_consumers_t* cs, dlv_t* d, uint64_t now) {
  d->state = D_RETRY;
  d->deadline = now + DLQ_RETRY_MS;
  if (heap_push(cs, d) != 0) {
    /* Out of memory for the heap (only after a DLQ put failed: in a tick
     * the slot d just left is free). Park it in the ready FIFO instead: the
     * next receive delivers it once more and its next expiry tries the DLQ
     * again, which is at-least-once too. */
    ready_push(d->g, d);
    d->deliveries--; /* the delivery about to come makes it max again */
  }
}

/* Moves an expired delivery that used up its deliveries to the DLQ. */
static void dlq_start(txmq_consumers_t* cs, dlv_t* d, uint64_t now) {
  gstate_t* g = d->g;
  txmq_msg_t* m = NULL;
  int rc = txmq_store_get(cs->st, g->topic, d->qid, d->offset, &m);
  if (rc == TXMQ_ERANGE || rc == TXMQ_ENOTFOUND) {
    dlv_done(cs, d); /* retention took it: nothing left to dead-letter */
    return;
  }
  if (rc == 0) {
    txmq_msg_t* dm = NULL;
    rc = dlq_message(g, m, d->qid, d->offset, &dm);
    txmq_msg_free(m);
    if (rc == 0) {
      rc = txmq_store_put(cs->st, dm, on_dlq_put, d);
      txmq_msg_free(dm);
    }
  }
  if (rc != 0) {
    dlq_retry(cs, d, now);
    return;
  }
  d->state = D_DLQ;
  cs->dlq_pending++;
}

static void maybe_closed(txmq_consumers_t* cs);

static void on_dlq_put(txmq_store_t* st, int status, const txmq_msg_t* msg,
                       void* arg) {
  (void)st;
  (void)msg;
  dlv_t* d = arg;
  txmq_consumers_t* cs = d->g->cs;
  cs->dlq_pending--;
  if (d->detached) {
    free(d); /* its queue was moved past it (queue_move) */
  } else if (status == 0) {
    dlv_done(cs, d); /* in the DLQ: consumed for the group */
  } else if (cs->state == CS_STARTED) {
    dlq_retry(cs, d, now_ms(cs));
    arm(cs);
  }
  /* While closing, a failed one stays outstanding: committed stays below
   * it, so the next start delivers it again. */
  maybe_closed(cs);
}

/* ---- timer and wakes ---- */

static void on_timer(uv_timer_t* t) {
  txmq_consumers_t* cs = t->data;
  cs->armed_for = 0;
  txmq_consumers_tick(cs);
}

static void arm(txmq_consumers_t* cs) {
  if (cs->manual || cs->state != CS_STARTED) return;
  if (cs->nheap == 0) {
    if (cs->armed_for != 0) uv_timer_stop(&cs->timer);
    cs->armed_for = 0;
    return;
  }
  uint64_t due = cs->heap[0]->deadline;
  if (due == cs->armed_for) return;
  uint64_t now = now_ms(cs);
  uv_timer_start(&cs->timer, on_timer, due > now ? due - now : 0, 0);
  cs->armed_for = due ? due : 1;
}

static void on_idle(uv_idle_t* h) {
  txmq_consumers_t* cs = h->data;
  uv_idle_stop(h);
  gstate_t* g = cs->wake_head;
  cs->wake_head = cs->wake_tail = NULL;
  while (g != NULL && cs->state == CS_STARTED) {
    gstate_t* n = g->wnext;
    g->wnext = NULL;
    g->wake_pending = 0;
    if (cs->wake_cb != NULL) cs->wake_cb(cs->wake_arg, g->group, g->topic);
    g = n;
  }
}

static void schedule_wake(gstate_t* g) {
  txmq_consumers_t* cs = g->cs;
  if (cs->wake_cb == NULL || cs->state != CS_STARTED || g->wake_pending)
    return;
  g->wake_pending = 1;
  g->wnext = NULL;
  if (cs->wake_tail != NULL) cs->wake_tail->wnext = g;
  else cs->wake_head = g;
  cs->wake_tail = g;
  uv_idle_start(&cs->idle, on_idle);
}

/* The store's publish hook: runs inside its append completion, so it only
 * marks the topic's gstates. */
static void on_publish(void* arg, const char* topic, int qid, int64_t offset) {
  (void)qid;
  (void)offset;
  txmq_consumers_t* cs = arg;
  if (cs->gcap == 0 || cs->wake_cb == NULL) return;
  uint64_t h = fnv_str(FNV_BASIS, topic);
  for (gstate_t* g = cs->tbuckets[h & (cs->gcap - 1)]; g; g = g->tnext)
    if (g->thash == h && strcmp(g->topic, topic) == 0) schedule_wake(g);
}

/* ---- public: lifetime and options ---- */

int txmq_consumers_new(txmq_consumers_t** out, uv_loop_t* loop,
                       txmq_store_t* st) {
  if (out == NULL) return TXMQ_EINVAL;
  *out = NULL;
  if (loop == NULL || st == NULL) return TXMQ_EINVAL;
  txmq_consumers_t* cs = calloc(1, sizeof *cs);
  if (cs == NULL) return TXMQ_ENOMEM;
  cs->loop = loop;
  cs->st = st;
  cs->visibility_ms = DEFAULT_VISIBILITY_MS;
  cs->max_deliveries = DEFAULT_MAX_DELIVERIES;
  cs->max_inflight = DEFAULT_MAX_INFLIGHT;
  cs->max_groups = DEFAULT_MAX_GROUPS;
  if (getrandom(&cs->nonce_seed, sizeof cs->nonce_seed, GRND_NONBLOCK) !=
      (ssize_t)sizeof cs->nonce_seed)
    cs->nonce_seed = uv_hrtime() ^ (uint64_t)(uintptr_t)cs;
  *out = cs;
  return 0;
}

int txmq_consumers_set(txmq_consumers_t* cs, txmq_consumers_opt_t opt,
                       int64_t value) {
  if (cs == NULL) return TXMQ_EINVAL;
  switch (opt) {
    case TXMQ_CONSUMERS_OPT_VISIBILITY_MS:
      if (value < 1 || value > MAX_VISIBILITY_MS) return TXMQ_EINVAL;
      cs->visibility_ms = (uint64_t)value;
      return 0;
    case TXMQ_CONSUMERS_OPT_MAX_DELIVERIES:
      if (value < 1 || value > MAX_MAX_DELIVERIES) return TXMQ_EINVAL;
      cs->max_deliveries = (uint32_t)value;
      return 0;
    case TXMQ_CONSUMERS_OPT_MAX_INFLIGHT:
      if (value < 1 || value > MAX_MAX_INFLIGHT) return TXMQ_EINVAL;
      cs->max_inflight = (size_t)value;
      return 0;
    case TXMQ_CONSUMERS_OPT_MAX_GROUPS:
      if (value < 1 || value > MAX_MAX_GROUPS) return TXMQ_EINVAL;
      cs->max_groups = (size_t)value;
      return 0;
    case TXMQ_CONSUMERS_OPT_MANUAL_CLOCK:
      if (cs->state != CS_NEW) return TXMQ_EBUSY;
      if (value != 0 && value != 1) return TXMQ_EINVAL;
      cs->manual = (int)value;
      return 0;
  }
  return TXMQ_EINVAL;
}

void txmq_consumers_set_clock(txmq_consumers_t* cs, uint64_t (*mono_ms)(void*),
                              void* arg) {
  cs->clock = mono_ms;
  cs->clock_arg = arg;
}

void txmq_consumers_set_wake_cb(txmq_consumers_t* cs, txmq_consumers_wake_cb cb,
                                void* arg) {
  cs->wake_cb = cb;
  cs->wake_arg = arg;
}

static void init_handles(txmq_consumers_t* cs) {
  uv_timer_init(cs->loop, &cs->timer);
  uv_idle_init(cs->loop, &cs->idle);
  cs->timer.data = cs;
  cs->idle.data = cs;
  cs->open_handles = 2;
}

int txmq_consumers_start(txmq_consumers_t* cs) {
  if (cs == NULL) return TXMQ_EINVAL;
  if (cs->state != CS_NEW) return TXMQ_EBUSY;
  /* Groups of earlier runs count (and keep reading) whatever the limit. */
  int rc = txmq__store_offset_groups(cs->st, seed_name, cs);
  if (rc != 0) return rc;
  init_handles(cs);
  txmq__store_set_publish_cb(cs->st, on_publish, cs);
  cs->state = CS_STARTED;
  return 0;
}

static void maybe_closed(txmq_consumers_t* cs) {
  if (cs->state != CS_CLOSING || cs->open_handles > 0 || cs->dlq_pending > 0)
    return;
  cs->state = CS_CLOSED;
  void (*cb)(txmq_consumers_t*, void*) = cs->close_cb;
  cs->close_cb = NULL;
  if (cb != NULL) cb(cs, cs->close_arg);
}

static void on_handle_closed(uv_handle_t* h) {
  txmq_consumers_t* cs = h->data;
  cs->open_handles--;
  maybe_closed(cs);
}

int txmq_consumers_close(txmq_consumers_t* cs,
                         void (*cb)(txmq_consumers_t* cs, void* arg),
                         void* arg) {
  if (cs == NULL) return TXMQ_EINVAL;
  if (cs->state == CS_CLOSING || cs->state == CS_CLOSED) return TXMQ_ECLOSED;
  /* A never started engine gets its handles only to close them, so that cb
   * still runs on the loop. */
  if (cs->state == CS_NEW) init_handles(cs);
  else txmq__store_set_publish_cb(cs->st, NULL, NULL);
  cs->state = CS_CLOSING;
  cs->close_cb = cb;
  cs->close_arg = arg;
  cs->armed_for = 0;
  uv_close((uv_handle_t*)&cs->timer, on_handle_closed);
  uv_close((uv_handle_t*)&cs->idle, on_handle_closed);
  return 0;
}

void txmq_consumers_free(txmq_consumers_t* cs) {
  if (cs == NULL) return;
  if (cs->state == CS_STARTED || cs->state == CS_CLOSING) {
    /* Its handles are on the loop: freeing now would leave them dangling,
     * a programming error caught loudly (as txmq_store_free does). */
    fprintf(stderr, "txmq_consumers_free: engine is still open\n");
    abort();
  }
  for (size_t i = 0; i < cs->gcap; i++) {
    gstate_t* g = cs->gbuckets[i];
    while (g != NULL) {
      gstate_t* n = g->hnext;
      gstate_free(g);
      g = n;
    }
  }
  free(cs->gbuckets);
  free(cs->tbuckets);
  free(cs->dbuckets);
  free(cs->heap);
  for (size_t i = 0; i < cs->names_cap; i++) free(cs->names[i]);
  free(cs->names);
  free(cs);
}

const char* txmq_consumers_diag(const txmq_consumers_t* cs) {
  return cs->diag;
}

/* ---- public: receive, ack, tick, progress ---- */

/* Scans queue qid of g from next for the first message the filter takes,
 * skipping (as consumed) those it does not. 1 with the message in *out, 0
 * when the queue has nothing more (or the budget ran out: *budget is then
 * 0), or a TXMQ_E* code for a read that failed (next stays on it). */
static int next_match(txmq_consumers_t* cs, gstate_t* g, int qid,
                      const txmq__filter_t* f, size_t* budget,
                      txmq_msg_t** out) {
  cqueue_t* q = &g->queues[qid];
  int64_t begin, end;
  int rc = txmq_store_queue_range(cs->st, g->topic, qid, &begin, &end);
  if (rc != 0) return rc;
  if (q->next < begin) q->next = begin; /* lost to retention */
  while (q->next < end) {
    if (*budget == 0) return 0;
    (*budget)--;
    int64_t off = q->next;
    if (!f->all) {
      uint32_t h;
      rc = txmq_store_entry(cs->st, g->topic, qid, off, NULL, &h);
      if (rc == TXMQ_ERANGE) { /* retention moved begin meanwhile */
        q->next++;
        continue;
      }
      if (rc != 0) return rc;
      if (!txmq__filter_match_hash(f, h)) {
        q->next++;
        continue;
      }
    }
    txmq_msg_t* m = NULL;
    rc = txmq_store_get(cs->st, g->topic, qid, off, &m);
    if (rc == TXMQ_ERANGE) {
      q->next++;
      continue;
    }
    if (rc != 0) return rc;
    q->next++;
    /* Equal hashes of different tags. */
    if (!txmq__filter_match(f, txmq_msg_tags(m))) {
      txmq_msg_free(m);
      continue;
    }
    *out = m;
    return 1;
  }
  return 0;
}

int txmq_consumers_receive(txmq_consumers_t* cs, const char* group,
                           const char* topic, const char* filter, size_t max,
                           int64_t visibility_ms, txmq_from_t from,
                           int64_t offset, txmq_delivery_t** out, size_t* n) {
  if (cs == NULL || out == NULL || n == NULL) return TXMQ_EINVAL;
  *out = NULL;
  *n = 0;
  if (cs->state == CS_NEW) return TXMQ_EBUSY;
  if (cs->state != CS_STARTED) return TXMQ_ECLOSED;
  /* The group's DLQ topic must be a valid name too. */
  if (group == NULL || !txmq_name_valid(group) ||
      strlen(group) > TXMQ_NAME_MAX - (sizeof DLQ_PREFIX - 1))
    return TXMQ_EBADNAME;
  if (topic == NULL || !txmq_name_valid(topic)) return TXMQ_EBADNAME;
  if (max < 1 || max > RECEIVE_MAX) return TXMQ_EINVAL;
  if (visibility_ms < 0 || visibility_ms > MAX_VISIBILITY_MS)
    return TXMQ_EINVAL;
  if (from != TXMQ_FROM_EARLIEST && from != TXMQ_FROM_LATEST &&
      from != TXMQ_FROM_OFFSET)
    return TXMQ_EINVAL;
  if (from == TXMQ_FROM_OFFSET && offset < 0) return TXMQ_EINVAL;
  txmq__filter_t f;
  if (txmq__filter_parse(filter, &f, NULL, 0) != 0) return TXMQ_EINVAL;
  int nq = txmq_store_topic_queues(cs->st, topic);
  if (nq < 0) return TXMQ_ENOTFOUND;

  int rc;
  gstate_t* g = gstate_find(cs, group, topic);
  if (g == NULL) {
    if ((rc = admit_group(cs, group)) != 0) return rc;
    if ((rc = gstate_new(cs, group, topic, nq, from, offset, &g)) != 0)
      return rc;
  }
  txmq_delivery_t* res = calloc(max, sizeof *res);
  if (res == NULL) return TXMQ_ENOMEM;
  uint64_t now = now_ms(cs);
  uint64_t deadline =
      now + (visibility_ms > 0 ? (uint64_t)visibility_ms : cs->visibility_ms);
  size_t cnt = 0;
  int hard = 0;

  /* Deliveries that expired come first. */
  dlv_t* d;
  while (cnt < max && (d = ready_pop(g)) != NULL) {
    txmq_msg_t* m = NULL;
    rc = txmq_store_get(cs->st, topic, d->qid, d->offset, &m);
    if (rc == TXMQ_ERANGE || rc == TXMQ_ENOTFOUND) {
      dlv_done(cs, d); /* retention took it */
      continue;
    }
    if (rc == 0 && (rc = dlv_issue(cs, d, deadline)) != 0) txmq_msg_free(m);
    if (rc != 0) {
      ready_unpop(g, d);
      hard = rc;
      break;
    }
    fill(&res[cnt++], d, m);
  }

  /* Then new messages, one queue after the other. */
  uint8_t blocked[TXMQ_STORE_MAX_QUEUES];
  memset(blocked, 0, sizeof blocked);
  size_t budget = SCAN_BUDGET;
  int empty_run = 0; /* queues in a row that gave nothing */
  while (!hard && cnt < max && g->outstanding < cs->max_inflight &&
         empty_run < nq && budget > 0) {
    int qid = g->rr;
    g->rr = (g->rr + 1) % nq;
    if (blocked[qid]) {
      empty_run++;
      continue;
    }
    cqueue_t* q = &g->queues[qid];
    txmq_msg_t* m = NULL;
    rc = next_match(cs, g, qid, &f, &budget, &m);
    if (rc <= 0) {
      /* Exhausted, out of budget, or a read failed: other queues go on. */
      blocked[qid] = 1;
      empty_run++;
      if (rc < 0) hard = rc;
      continue;
    }
    empty_run = 0;
    d = calloc(1, sizeof *d);
    if (d != NULL) {
      d->g = g;
      d->qid = (uint16_t)qid;
      d->offset = q->next - 1;
      d->heap_idx = NOT_IN_HEAP;
    }
    if (d == NULL || dlv_issue(cs, d, deadline) != 0) {
      free(d);
      txmq_msg_free(m);
      q->next--; /* not delivered: it stays the next one */
      hard = TXMQ_ENOMEM;
      break;
    }
    d->qprev = q->tail;
    if (q->tail != NULL) q->tail->qnext = d;
    else q->head = d;
    q->tail = d;
    q->outstanding++;
    g->outstanding++;
    fill(&res[cnt++], d, m);
  }
  if (hard && cnt > 0) hard = 0; /* the next receive meets it again */
  /* Skipped messages may have moved committed. */
  for (int q = 0; q < nq; q++) update_committed(g, q);
  if (budget == 0) schedule_wake(g);
  arm(cs);
  if (cnt == 0) {
    free(res);
    return hard;
  }
  *out = res;
  *n = cnt;
  return 0;
}

void txmq_consumers_free_deliveries(txmq_delivery_t* d, size_t n) {
  if (d == NULL) return;
  for (size_t i = 0; i < n; i++) txmq_msg_free(d[i].msg);
  free(d);
}

int txmq_consumers_ack(txmq_consumers_t* cs, const char* group,
                       const char* handle) {
  if (cs == NULL) return TXMQ_EINVAL;
  if (cs->state == CS_NEW) return TXMQ_EBUSY;
  if (cs->state != CS_STARTED) return TXMQ_ECLOSED;
  if (group == NULL || !txmq_name_valid(group)) return TXMQ_EBADNAME;
  int qid;
  int64_t offset;
  uint64_t nonce;
  if (parse_handle(handle, &qid, &offset, &nonce) != 0) return TXMQ_EINVAL;
  dlv_t* d = dtab_find(cs, nonce);
  if (d == NULL || d->qid != qid || d->offset != offset ||
      strcmp(d->g->group, group) != 0)
    return TXMQ_ENOTFOUND;
  /* Past its deadline it may be given to someone else any moment (at the
   * next tick): the contract refuses it as if it had been. */
  if (now_ms(cs) >= d->deadline) return TXMQ_ENOTFOUND;
  dlv_done(cs, d);
  arm(cs);
  return 0;
}

size_t txmq_consumers_tick(txmq_consumers_t* cs) {
  if (cs == NULL || cs->state != CS_STARTED) return 0;
  uint64_t now = now_ms(cs);
  size_t expired = 0;
  while (cs->nheap > 0 && cs->heap[0]->deadline <= now) {
    dlv_t* d = cs->heap[0];
    heap_remove(cs, d);
    if (d->state == D_INFLIGHT) dtab_remove(cs, d);
    d->state = D_EXPIRED;
    expired++;
    if (d->deliveries >= cs->max_deliveries) {
      dlq_start(cs, d, now);
    } else {
      ready_push(d->g, d);
      schedule_wake(d->g);
    }
  }
  arm(cs);
  return expired;
}

/* Moves queue qid of a group that is reading to offset: the deliveries
 * outstanding on it are forgotten (their handles no longer match, an
 * expired one is not delivered again); one whose DLQ copy is being
 * written is detached and freed when the put ends (the copy lands). */
static void queue_move(txmq_consumers_t* cs, gstate_t* g, int qid,
                       int64_t offset) {
  cqueue_t* q = &g->queues[qid];
  /* The ready FIFO holds deliveries of every queue of g: keep the others. */
  dlv_t* keep = NULL;
  dlv_t** tail = &keep;
  g->ready_tail = NULL;
  for (dlv_t* r = g->ready_head; r != NULL;) {
    dlv_t* next = r->rnext;
    if (r->qid != qid) {
      r->rnext = NULL;
      *tail = r;
      tail = &r->rnext;
      g->ready_tail = r;
    }
    r = next;
  }
  g->ready_head = keep;
  size_t dropped = 0;
  for (dlv_t* d = q->head; d != NULL;) {
    dlv_t* next = d->qnext;
    if (d->state == D_INFLIGHT) dtab_remove(cs, d);
    heap_remove(cs, d);
    d->qprev = d->qnext = NULL;
    if (d->state == D_DLQ) d->detached = 1;
    else free(d);
    dropped++;
    d = next;
  }
  q->head = q->tail = NULL;
  q->outstanding = 0;
  g->outstanding -= dropped;
  q->next = offset;
  update_committed(g, qid);
  schedule_wake(g); /* its waiters may have messages, or room, now */
  arm(cs);
}

int txmq_consumers_offset_set(txmq_consumers_t* cs, const char* group,
                              const char* topic, int qid, int64_t offset) {
  if (cs == NULL) return TXMQ_EINVAL;
  if (cs->state == CS_NEW) return TXMQ_EBUSY;
  if (cs->state != CS_STARTED) return TXMQ_ECLOSED;
  if (group == NULL || topic == NULL || !txmq_name_valid(group) ||
      !txmq_name_valid(topic))
    return TXMQ_EBADNAME;
  if (offset < 0) return TXMQ_EINVAL;
  /* A queue that does not exist, or an offset the store would refuse, must
   * not take a place under the group limit. */
  int rc = txmq__store_offset_settable(cs->st, topic, qid, offset);
  if (rc == TXMQ_ERANGE)
    snprintf(cs->diag, sizeof cs->diag, "%s", txmq_store_diag(cs->st));
  if (rc != 0) return rc;
  rc = admit_group(cs, group);
  if (rc != 0) return rc;
  gstate_t* g = gstate_find(cs, group, topic);
  if (g != NULL && qid < g->nqueues) {
    queue_move(cs, g, qid, offset);
    return 0;
  }
  return txmq_store_offset_set(cs->st, group, topic, qid, offset);
}

int txmq_consumers_progress(txmq_consumers_t* cs, const char* group,
                            const char* topic, int qid, int64_t* committed,
                            int64_t* next, size_t* inflight) {
  if (cs == NULL) return TXMQ_EINVAL;
  if (group == NULL || topic == NULL || !txmq_name_valid(group) ||
      !txmq_name_valid(topic))
    return TXMQ_EBADNAME;
  const gstate_t* g = gstate_find(cs, group, topic);
  int64_t c, nx;
  size_t inf = 0;
  if (g != NULL) {
    if (qid < 0 || qid >= g->nqueues) return TXMQ_ENOTFOUND;
    c = g->queues[qid].committed;
    nx = g->queues[qid].next;
    inf = g->queues[qid].outstanding;
  } else {
    /* Not read since this engine started: what the store kept. */
    int rc = txmq_store_offset_get(cs->st, group, topic, qid, &c);
    if (rc != 0) return TXMQ_ENOTFOUND;
    nx = c;
  }
  if (committed != NULL) *committed = c;
  if (next != NULL) *next = nx;
  if (inflight != NULL) *inflight = inf;
  return 0;
}
