/*
 * fault_harness.c - crash testing of txmqd: concurrent transactional load,
 * kill -9 at random instants, restarts on the same data directory, then a
 * check of everything the daemon acknowledged against what a consumer
 * finally reads.
 *
 *   fault_harness [--rounds N] [--default-rounds N] [--seed S] [--keep]
 *
 * Rounds come from --rounds, else FAULT_ROUNDS, else --default-rounds,
 * else 50; the seed from --seed, else FAULT_SEED, else the clock (it is
 * printed, so a failing run's choices can be replayed; the instants are
 * the machine's). FAULT_WINDOW (requests in flight, 32) and FAULT_LOAD_MS
 * (longest load of a round, 2500) tune the load; FAULT_KEEP=1 or --keep
 * keeps the work directory. txmqd and txmq are taken from the harness's
 * own directory (the build's bin/).
 *
 * ONE ROUND: start txmqd (sync always, short transaction timeout and check
 * interval, small log segments, frequent checkpoints), let the clients
 * connect, load it for a random time, kill -9 it. One start in ten is
 * killed before it listens (in the middle of recovery); one round in ten
 * sends SIGTERM and kill -9 during the shutdown. The clients keep going
 * across the kills: they reconnect, finish late decisions, repeat
 * decisions on purpose, answer checks, resume parked transactions.
 *
 * THE LOAD (every transaction gets a number; its messages carry it in
 * their properties with its intended outcome, which the producers' check
 * callback and the hosted script's handlers read):
 *   plain       acknowledged plain sends;
 *   producer-1  txmq_client_send_in_transaction, the execute callback
 *               answering the intended outcome, or UNKNOWN (checks decide);
 *   producer-n  tx.half of 2..64 messages to several topics, then tx.end
 *               with the outcome at once, after a delay, as UNKNOWN, or
 *               never (a producer that died: checks decide; or checks
 *               answer UNKNOWN until it is parked and an operator resumes
 *               it, or decides it with tx.decide); some with a check
 *               immunity;
 *   hosted-1/-n tx.send to group fault-hosted, whose script decides from
 *               the arg: the outcome, UNKNOWN, or an error (checks decide).
 * Properties: ft (transaction number), fi (index of the message), fw (c
 * or r: the intended outcome), fu (1: answer the first check UNKNOWN), fk
 * (the kind). Some first messages are big; bodies are checked byte for
 * byte. Acknowledged decisions are repeated at once, pipelined, or in a
 * later incarnation of the daemon; the opposite decision is sent as a
 * probe that must be refused; some audit histories are read (tx.show).
 * Meanwhile producers drop their connections now and then, the hosted
 * script is rewritten (hot reload), and a live consumer group reads.
 *
 * AT THE END: a last start without a kill; the producers stay connected
 * until tx.list shows nothing pending or parked; the live group catches
 * up; a fresh consumer group reads every topic from the earliest offset;
 * the status counts must agree; a clean SIGTERM must exit 0; `txmq log
 * verify` must pass. Then the history is checked (see tests/fault/README.md
 * for the invariants), the figures are printed, and the exit status is 1 if
 * anything was violated, with one line per violation naming the
 * transaction.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <libgen.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <msgpack.h>
#include <uv.h>

#include "txmq/client.h"
#include "txmq/error.h"
#include "txmq/msg.h"
#include "txmq/tx.h"

#define PROD_GROUP "fault-prod"
#define HOSTED_GROUP "fault-hosted"
#define VERIFY_GROUP "fault-verify"
#define LIVE_GROUP "fault-live"
#define LIVE_VISIBILITY_MS 2000
#define NTOPICS 3
#define PLAIN_TOPIC "fault-plain"
#define BIG_MIN (16 * 1024) /* a big body: 16 KiB .. 16 + 144 KiB */
#define BIG_SPAN (144 * 1024)
#define TICK_MS 5
#define MAX_SHOWN 40 /* violations printed in full; all are counted */
#define LATE_PER_EPOCH 40
#define MAX_CHECKS 15 /* as the configuration says */
#define NSIGS 3

static const char* const TOPICS[NTOPICS] = {"fault-a", "fault-b", "fault-c"};

/* The handlers of the hosted group. The arg says what
 * executeLocalTransaction does; the first message's properties say what
 * the transaction should become, which is what checks answer. */
static const char HOSTED_SCRIPT[] =
    "-- written by tests/fault/fault_harness.c\n"
    "local function want(msg)\n"
    "  if msg.properties.fw == 'c' then return txmq.COMMIT end\n"
    "  return txmq.ROLLBACK\n"
    "end\n"
    "function executeLocalTransaction(msg, arg)\n"
    "  if arg == 'direct' then return want(msg) end\n"
    "  if arg == 'error' then error('fault: a failing handler') end\n"
    "  return txmq.UNKNOWN\n"
    "end\n"
    "function checkLocalTransaction(msg)\n"
    "  txmq.log('info', 'fault-check ft=' .. msg.properties.ft)\n"
    "  if msg.properties.fu == '1' and msg.check_count == 0 then\n"
    "    return txmq.UNKNOWN\n"
    "  end\n"
    "  return want(msg)\n"
    "end\n";

static const char CONF[] =
    "-- written by tests/fault/fault_harness.c\n"
    "sync = 'always'\n"
    "default_queues = 4\n"
    "segment_size = 256 * 1024\n"
    "checkpoint_interval_ms = 300\n"
    "tx_timeout_ms = 400\n"
    "check_interval_ms = 300\n"
    "check_timeout_ms = 2000\n"
    "check_retry_ms = 100\n"
    "max_checks = 15\n"
    "log_level = 'info'\n";

/* ---- randomness (xorshift64*: reproducible from the seed) ---- */

typedef struct {
  uint64_t s;
} rng_t;

static uint64_t rnd(rng_t* r) {
  r->s ^= r->s >> 12;
  r->s ^= r->s << 25;
  r->s ^= r->s >> 27;
  return r->s * 0x2545F4914F6CDD1DULL;
}

/* 0 .. n-1 */
static uint64_t below(rng_t* r, uint64_t n) { return n ? rnd(r) % n : 0; }
static int chance(rng_t* r, unsigned pct) { return below(r, 100) < pct; }

static uint64_t mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* ---- the history ---- */

enum { K_PLAIN, K_P1, K_PN, K_H1, K_HN, K_COUNT };
static const char* const KIND[K_COUNT] = {"plain", "producer-1", "producer-n",
                                          "hosted-1", "hosted-n"};

enum { PL_DIRECT, PL_UNKNOWN, PL_SILENT, PL_DELAYED, PL_ERROR, PL_PARK };
static const char* const PLAN[] = {"direct", "unknown", "silent", "delayed",
                                   "error", "park"};

/* What became of the half message (for plain: of the send). */
enum {
  HALF_UNSENT, /* the request never left: nothing may appear */
  HALF_SENT,   /* in flight */
  HALF_ACKED,  /* stored, the producer knows its tx id */
  HALF_LOST    /* the request failed: stored or not, nobody told us */
};
static const char* const HALF[] = {"unsent", "in flight", "acknowledged",
                                   "uncertain"};

enum { ACK_NONE, ACK_COMMIT, ACK_ROLLBACK };

typedef struct {
  uint8_t kind, plan, want_commit, first_unknown, nmsgs, half, ack, has_id;
  uint8_t checked;        /* a check reached a producer: it was stored */
  uint8_t big;             /* its first message has a big body */
  uint32_t mbase;          /* its messages' states: h->ms[mbase ...] */
  uint16_t checks;        /* checks the producers answered */
  uint8_t resumed;        /* PL_PARK: a resume took effect: checks decide */
  uint8_t resume_done;    /* PL_PARK: a resume is durable (acknowledged) */
  uint8_t resume_busy;    /* PL_PARK: a tx.resume is in flight */
  uint8_t by_operator;    /* PL_PARK: decided by an operator's tx.decide
                             instead of resumed */
  uint16_t max_count;     /* highest check count a check carried */
  uint32_t imm_until;     /* no check before (ms after the start); 0 */
  uint32_t resume_at;     /* PL_PARK: next tx.resume (ms after the start) */
  uint32_t half_epoch;    /* daemon incarnation that acknowledged the half */
  uint32_t ack_epoch;     /* ... that acknowledged the decision */
  uint32_t ack_gen;       /* connection that received that acknowledgement */
  uint8_t tx_id[TXMQ_TX_ID_LEN];
} tx_t;

/* What consumers saw of one message. */
typedef struct {
  uint8_t delivered; /* first deliveries to the final reading */
  uint8_t live;      /* deliveries to the live consumer group */
} mstate_t;

/* ---- the harness ---- */

/* D_TERM: sent SIGTERM in a round (a kill -9 may follow); D_STOPPING:
 * the clean stop at the end. */
enum { D_DOWN, D_STARTING, D_UP, D_TERM, D_KILLED, D_STOPPING };
enum { PH_LOAD, PH_DRAIN, PH_LIVE, PH_STOP, PH_DONE };
enum { C_IDLE, C_CONNECTING, C_UP, C_CLOSING, C_CLOSED };
enum { C_P1, C_P2, C_H, C_L, NCONN };
/* What a connection does: producer-hosted transactions and their checks,
 * hosted transactions and plain sends, or the live consumer group. */
enum { R_PRODUCER, R_HOSTED, R_CONSUMER };

typedef struct harness_s harness_t;

typedef struct {
  harness_t* h;
  const char* id;
  int role;
  txmq_client_t* c;
  int state;
  uint32_t gen, epoch; /* of the current connection */
  uint64_t retry_at;
  uint64_t away_ms;    /* a dropped producer comes back after */
} conn_t;

/* Something to do later, from the tick. */
enum { L_END, L_CHECK_REPLY };
typedef struct {
  uint64_t due;
  int what;
  size_t seq;
  conn_t* conn;
  uint32_t gen;
  uint64_t check_id;
  txmq_tx_decision_t decision;
} later_t;

struct harness_s {
  uv_loop_t loop;
  uv_timer_t tick;
  rng_t rng;
  uint64_t seed;
  int rounds, window, load_ms, keep;
  char dir[PATH_MAX], bindir[PATH_MAX], logpath[PATH_MAX + 16];
  char conf[PATH_MAX + 16], data[PATH_MAX + 16], scripts[PATH_MAX + 16];

  /* the daemon */
  uv_process_t proc;
  int dstate, we_killed, proc_open;
  uint32_t epoch;
  off_t log_off;       /* where this incarnation's log starts */
  char addr[64];
  uv_timer_t kill_timer; /* armed while a kill is planned */
  uv_signal_t sig[NSIGS]; /* the harness interrupted: the daemon goes too */
  uint64_t started_at, restart_at;
  int bad_starts;       /* exits or starts that went wrong */

  /* the run */
  int phase, round;
  conn_t conns[NCONN];
  uint32_t gens;
  int active;          /* requests of transactions in progress (not
                          repeats, not ends waiting for their time) */
  int active_kind[K_COUNT]; /* transactions of each kind in progress */
  uint64_t start_ms;   /* how long the last start took to listen */
  uint64_t stop_ms;    /* ... and the last clean shutdown to exit */
  uint64_t term_at;
  later_t* later;
  size_t nlater, caplater;
  uint64_t t0;         /* the start, on the monotonic clock */
  size_t* parks;       /* PL_PARK seqs without an acknowledged resume */
  size_t nparks, capparks;
  long parked_resumes, resume_not_parked, operator_decisions;
  size_t* late;        /* seqs whose decision is repeated in a later epoch */
  size_t nlate, caplate;
  int late_sent;       /* in this epoch */
  uint32_t late_epoch;
  uint64_t drain_start, drain_next;
  int drain_listing, drain_ok;
  uint64_t next_drop, next_reload; /* producer drops, script rewrites */
  int live_busy, live_topic;
  uint64_t live_last_msg;

  tx_t* tx;
  size_t ntx, captx;
  mstate_t* ms;
  size_t nms, capms;

  /* figures */
  long kills, recovery_kills, starts, terms, term_kills, clean_stops;
  long started[K_COUNT];
  long repeats, repeats_ok, repeats_forgotten, probes, probes_refused;
  long late_repeats, pipelined;
  long checks_seen, checks_answered[4], script_checks;
  long uncertain_reqs, hosted_direct_pending;
  long consumed, redelivered, live_consumed, live_redelivered;
  long drops, group_gone, reloads, shows, shows_forgotten;
  long violations;
  long end_errors[32]; /* failed requests by -code */
};

static void violation(harness_t* h, const tx_t* t, size_t seq,
                      const char* fmt, ...) __attribute__((format(printf, 4, 5)));

static void tx_id_hex(const uint8_t* id, char out[2 * TXMQ_TX_ID_LEN + 1]) {
  static const char dg[] = "0123456789abcdef";
  for (size_t i = 0; i < TXMQ_TX_ID_LEN; i++) {
    out[2 * i] = dg[id[i] >> 4];
    out[2 * i + 1] = dg[id[i] & 15];
  }
  out[2 * TXMQ_TX_ID_LEN] = '\0';
}

/* One line per violation: what was wrong, then the transaction as the
 * harness knows it. t NULL: not about one transaction. */
static void violation(harness_t* h, const tx_t* t, size_t seq,
                      const char* fmt, ...) {
  h->violations++;
  if (h->violations > MAX_SHOWN) return;
  char what[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(what, sizeof what, fmt, ap);
  va_end(ap);
  if (t == NULL) {
    printf("VIOLATION: %s\n", what);
  } else {
    char id[2 * TXMQ_TX_ID_LEN + 1] = "-";
    if (t->has_id) tx_id_hex(t->tx_id, id);
    printf("VIOLATION: %s\n  transaction #%zu kind=%s msgs=%u want=%s plan=%s"
           " first_check_unknown=%u half=%s (epoch %u) decision_acked=%s"
           " (epoch %u) producer_checks=%u tx_id=%s delivered=",
           what, seq, KIND[t->kind], t->nmsgs,
           t->want_commit ? "commit" : "rollback", PLAN[t->plan],
           t->first_unknown, HALF[t->half], t->half_epoch,
           t->ack == ACK_COMMIT ? "commit"
           : t->ack == ACK_ROLLBACK ? "rollback" : "none",
           t->ack_epoch, t->checks, id);
    for (unsigned i = 0; i < t->nmsgs; i++)
      printf("%s%u", i ? "," : "", h->ms[t->mbase + i].delivered);
    printf("\n");
  }
  fflush(stdout);
}

static tx_t* tx_new(harness_t* h, size_t* seq) {
  if (h->ntx == h->captx) {
    size_t cap = h->captx ? 2 * h->captx : 4096;
    tx_t* n = realloc(h->tx, cap * sizeof *n);
    if (n == NULL) return NULL;
    h->tx = n;
    h->captx = cap;
  }
  *seq = h->ntx++;
  tx_t* t = &h->tx[*seq];
  memset(t, 0, sizeof *t);
  return t;
}

/* Room for the states of t's messages (t->nmsgs set); 0 or -1. */
static int ms_alloc(harness_t* h, tx_t* t) {
  if (h->nms + t->nmsgs > h->capms) {
    size_t cap = h->capms ? 2 * h->capms : 8192;
    mstate_t* n = realloc(h->ms, cap * sizeof *n);
    if (n == NULL) return -1;
    h->ms = n;
    h->capms = cap;
  }
  t->mbase = (uint32_t)h->nms;
  memset(&h->ms[h->nms], 0, t->nmsgs * sizeof *h->ms);
  h->nms += t->nmsgs;
  return 0;
}

static int later_add(harness_t* h, const later_t* l) {
  if (h->nlater == h->caplater) {
    size_t cap = h->caplater ? 2 * h->caplater : 64;
    later_t* n = realloc(h->later, cap * sizeof *n);
    if (n == NULL) return -1;
    h->later = n;
    h->caplater = cap;
  }
  h->later[h->nlater++] = *l;
  return 0;
}

static void park_add(harness_t* h, size_t seq) {
  if (h->nparks == h->capparks) {
    size_t cap = h->capparks ? 2 * h->capparks : 64;
    size_t* n = realloc(h->parks, cap * sizeof *n);
    if (n == NULL) return;
    h->parks = n;
    h->capparks = cap;
  }
  h->parks[h->nparks++] = seq;
}

static void late_add(harness_t* h, size_t seq) {
  if (h->nlate == h->caplate) {
    size_t cap = h->caplate ? 2 * h->caplate : 64;
    size_t* n = realloc(h->late, cap * sizeof *n);
    if (n == NULL) return;
    h->late = n;
    h->caplate = cap;
  }
  h->late[h->nlate++] = seq;
}

static void count_error(harness_t* h, int status) {
  int k = -status;
  if (k > 0 && k < 32) h->end_errors[k]++;
}

/* Errors that say the connection (or the daemon) went away: the request
 * may or may not have been carried out. */
static int lost_error(int status) {
  return status == TXMQ_ECLOSED || status == TXMQ_EIO ||
         status == TXMQ_ETIMEDOUT || status == TXMQ_EPROTO;
}

/* ---- messages ---- */

static void topic_of(const tx_t* t, size_t seq, unsigned i, const char** out) {
  if (t->kind == K_PLAIN) *out = PLAIN_TOPIC;
  else *out = TOPICS[(seq + i) % NTOPICS];
}

/* The body of message i of transaction seq, into a new buffer (free()):
 * a line naming it, and for the first message of a big one a filler that
 * depends on the number, so that a consumer can check every byte. */
static char* body_of(const tx_t* t, size_t seq, unsigned i, size_t* len) {
  char line[96];
  int n = snprintf(line, sizeof line, "fault %s #%zu message %u of %u",
                   KIND[t->kind], seq, i, t->nmsgs);
  size_t pad = t->big && i == 0 ? BIG_MIN + (seq * 7919u) % BIG_SPAN : 0;
  char* b = malloc((size_t)n + pad + 1);
  if (b == NULL) return NULL;
  memcpy(b, line, (size_t)n);
  for (size_t k = 0; k < pad; k++) b[n + k] = (char)('a' + (seq + k) % 26);
  *len = (size_t)n + pad;
  return b;
}

/* Builds the messages of transaction seq into msgs; 0 or -1. */
static int build_msgs(const tx_t* t, size_t seq, txmq_msg_t** msgs) {
  char num[32], idx[8];
  snprintf(num, sizeof num, "%zu", seq);
  for (unsigned i = 0; i < t->nmsgs; i++) {
    const char* topic;
    topic_of(t, seq, i, &topic);
    snprintf(idx, sizeof idx, "%u", i);
    size_t blen = 0;
    char* body = body_of(t, seq, i, &blen);
    txmq_msg_t* m = body != NULL ? txmq_msg_new() : NULL;
    msgs[i] = m;
    int bad = m == NULL || txmq_msg_set_body(m, body, blen) != 0;
    free(body);
    if (bad || txmq_msg_set_topic(m, topic) != 0 ||
        txmq_msg_set_keys(m, num) != 0 ||
        txmq_msg_prop_set(m, "ft", num) != 0 ||
        txmq_msg_prop_set(m, "fi", idx) != 0 ||
        txmq_msg_prop_set(m, "fw", t->want_commit ? "c" : "r") != 0 ||
        txmq_msg_prop_set(m, "fu", t->first_unknown ? "1" : "0") != 0 ||
        txmq_msg_prop_set(m, "fk", KIND[t->kind]) != 0) {
      for (unsigned j = 0; j <= i; j++) txmq_msg_free(msgs[j]);
      return -1;
    }
  }
  return 0;
}

static void free_msgs(txmq_msg_t** msgs, unsigned n) {
  for (unsigned i = 0; i < n; i++) txmq_msg_free(msgs[i]);
}

/* The transaction number of a message, or -1. */
static long msg_seq(const harness_t* h, const txmq_msg_t* m, unsigned* idx) {
  const char* ft = txmq_msg_prop_get(m, "ft");
  const char* fi = txmq_msg_prop_get(m, "fi");
  if (ft == NULL || fi == NULL) return -1;
  char* end;
  errno = 0;
  unsigned long long s = strtoull(ft, &end, 10);
  if (errno || *end || end == ft || s >= h->ntx) return -1;
  unsigned long i = strtoul(fi, &end, 10);
  if (*end || end == fi || i >= TXMQ_TX_MAX_MSGS) return -1;
  *idx = (unsigned)i;
  return (long)s;
}

/* ---- requests in flight ---- */

typedef struct {
  harness_t* h;
  size_t seq;
  conn_t* conn;
  uint32_t gen, epoch;   /* of the connection the request went out on */
  txmq_tx_decision_t decision;
  int probe;             /* a decision against the intended outcome */
  int repeat;            /* not the transaction's own first end */
  int counts;            /* counts in h->active */
  int kind_slot;         /* counts in h->active_kind[kind_slot]; -1 */
} op_t;

static op_t* op_new(harness_t* h, size_t seq, conn_t* conn, int counts) {
  op_t* op = calloc(1, sizeof *op);
  if (op == NULL) return NULL;
  op->h = h;
  op->seq = seq;
  op->conn = conn;
  op->gen = conn->gen;
  op->epoch = conn->epoch;
  op->counts = counts;
  op->kind_slot = -1;
  if (counts) h->active++;
  return op;
}

static void op_done(op_t* op) {
  if (op->counts) op->h->active--;
  if (op->kind_slot >= 0) op->h->active_kind[op->kind_slot]--;
  free(op);
}

static txmq_tx_decision_t want_of(const tx_t* t) {
  return t->want_commit ? TXMQ_TX_COMMIT : TXMQ_TX_ROLLBACK;
}

static txmq_tx_state_t state_of(txmq_tx_decision_t d) {
  return d == TXMQ_TX_COMMIT ? TXMQ_TX_COMMITTED : TXMQ_TX_ROLLED_BACK;
}

static const char* state_name(txmq_tx_state_t s) {
  switch (s) {
    case TXMQ_TX_PENDING: return "pending";
    case TXMQ_TX_COMMITTED: return "committed";
    case TXMQ_TX_ROLLED_BACK: return "rolled_back";
    case TXMQ_TX_PARKED: return "parked";
  }
  return "?";
}

static const char* decision_name(txmq_tx_decision_t d) {
  return d == TXMQ_TX_COMMIT ? "COMMIT" : d == TXMQ_TX_ROLLBACK ? "ROLLBACK"
                                                                : "UNKNOWN";
}

/* A decided state was acknowledged to a producer. */
static void acked(harness_t* h, tx_t* t, size_t seq, txmq_tx_state_t state,
                  uint32_t epoch, uint32_t gen) {
  if (state != TXMQ_TX_COMMITTED && state != TXMQ_TX_ROLLED_BACK) return;
  if (state != state_of(want_of(t)))
    violation(h, t, seq, "the daemon acknowledged state %s, but every handler "
              "and check of this transaction answers %s", state_name(state),
              decision_name(want_of(t)));
  if (t->ack != ACK_NONE) return; /* the first acknowledgement is the bound */
  t->ack = state == TXMQ_TX_COMMITTED ? ACK_COMMIT : ACK_ROLLBACK;
  t->ack_epoch = epoch;
  t->ack_gen = gen;
}

static void send_end(harness_t* h, size_t seq, conn_t* conn,
                     txmq_tx_decision_t d, int probe, int repeat, int counts);

static void send_show(harness_t* h, size_t seq, conn_t* conn);

/* After an acknowledged decision: repeat it, probe the opposite one, read
 * its audit history, or keep it for a later incarnation. */
static void maybe_repeat(harness_t* h, size_t seq, conn_t* conn) {
  tx_t* t = &h->tx[seq];
  if (!t->has_id || t->ack == ACK_NONE) return;
  unsigned r = (unsigned)below(&h->rng, 100);
  if (r < 15) {
    send_end(h, seq, conn, want_of(t), 0, 1, 0);
  } else if (r < 25) {
    send_end(h, seq, conn,
             t->want_commit ? TXMQ_TX_ROLLBACK : TXMQ_TX_COMMIT, 1, 1, 0);
  } else if (r < 35) {
    late_add(h, seq);
  } else if (r < 40) {
    send_show(h, seq, conn);
  }
}

static int str_is(const msgpack_object* o, const char* s) {
  return o != NULL && o->type == MSGPACK_OBJECT_STR &&
         o->via.str.size == strlen(s) && memcmp(o->via.str.ptr, s,
                                                o->via.str.size) == 0;
}

/* tx.show of a transaction whose decision was acknowledged: the decision
 * is durable, so its history is complete, starts with the half record and
 * holds exactly one decision, the acknowledged one, made by a source that
 * can make it for this kind of transaction. */
static void on_show(txmq_client_t* c, int status, const msgpack_object* rep,
                    void* arg) {
  op_t* op = arg;
  harness_t* h = op->h;
  tx_t* t = &h->tx[op->seq];
  if (status == TXMQ_ENOTFOUND && op->epoch != t->ack_epoch) {
    h->shows_forgotten++; /* replay did not reach back to it */
  } else if (lost_error(status)) {
    h->uncertain_reqs++;
    count_error(h, status);
  } else if (status != 0) {
    violation(h, t, op->seq, "tx.show failed with %s (%s) in incarnation %u",
              txmq_err_name(status), txmq_client_diag(c), op->epoch);
  } else {
    h->shows++;
    const msgpack_object* info = txmq_client_map_get(rep, "tx");
    const msgpack_object* hist = txmq_client_map_get(rep, "history");
    const msgpack_object* complete = txmq_client_map_get(rep, "complete");
    const char* want = state_name(state_of(want_of(t)));
    const char* dname = t->want_commit ? "commit" : "rollback";
    int hosted = t->kind == K_H1 || t->kind == K_HN;
    unsigned decisions = 0, wrong = 0;
    char why[200] = "";
    if (!str_is(txmq_client_map_get(info, "state"), want))
      snprintf(why, sizeof why, "its state is not %s", want);
    else if (complete == NULL || complete->type != MSGPACK_OBJECT_BOOLEAN ||
             !complete->via.boolean)
      snprintf(why, sizeof why, "its history is incomplete");
    else if (hist == NULL || hist->type != MSGPACK_OBJECT_ARRAY ||
             hist->via.array.size == 0 ||
             !str_is(txmq_client_map_get(&hist->via.array.ptr[0], "event"),
                     "half"))
      snprintf(why, sizeof why, "its history does not start with the half");
    for (uint32_t i = 0; why[0] == '\0' && i < hist->via.array.size; i++) {
      const msgpack_object* e = &hist->via.array.ptr[i];
      const msgpack_object* ev = txmq_client_map_get(e, "event");
      if (!str_is(ev, "commit") && !str_is(ev, "rollback")) continue;
      decisions++;
      const msgpack_object* src = txmq_client_map_get(e, "source");
      if (!str_is(ev, dname)) wrong++;
      else if (t->by_operator ? !str_is(src, "operator")
               : hosted       ? !str_is(src, "script")
                              : !str_is(src, "producer") && !str_is(src, "check"))
        snprintf(why, sizeof why, "its %s was recorded with source %.*s",
                 dname, src && src->type == MSGPACK_OBJECT_STR
                 ? (int)src->via.str.size : 1,
                 src && src->type == MSGPACK_OBJECT_STR ? src->via.str.ptr
                                                        : "?");
    }
    if (why[0] == '\0' && (decisions != 1 || wrong))
      snprintf(why, sizeof why, "its history holds %u decisions (%u not %s)",
               decisions, wrong, dname);
    if (why[0] != '\0')
      violation(h, t, op->seq, "tx.show in incarnation %u: %s", op->epoch, why);
  }
  op_done(op);
}

static void send_show(harness_t* h, size_t seq, conn_t* conn) {
  if (conn->state != C_UP) return;
  op_t* op = op_new(h, seq, conn, 0);
  if (op == NULL) return;
  if (txmq_client_tx_show(conn->c, h->tx[seq].tx_id, on_show, op) != 0)
    op_done(op);
}

static void on_end(txmq_client_t* c, int status, txmq_tx_state_t state,
                   void* arg) {
  (void)c;
  op_t* op = arg;
  harness_t* h = op->h;
  tx_t* t = &h->tx[op->seq];
  if (status == 0) {
    if (op->probe) {
      violation(h, t, op->seq, "a conflicting %s was accepted (state %s) "
                "after the opposite decision", decision_name(op->decision),
                state_name(state));
    } else if (op->decision == TXMQ_TX_UNKNOWN) {
      if (state != TXMQ_TX_PENDING && state != state_of(want_of(t)))
        violation(h, t, op->seq, "tx.end UNKNOWN answered state %s",
                  state_name(state));
      acked(h, t, op->seq, state, op->epoch, op->gen);
    } else {
      if (state != state_of(op->decision))
        violation(h, t, op->seq, "tx.end %s answered state %s",
                  decision_name(op->decision), state_name(state));
      else if (op->repeat)
        h->repeats_ok++;
      acked(h, t, op->seq, state, op->epoch, op->gen);
      if (!op->repeat) maybe_repeat(h, op->seq, op->conn);
    }
  } else if (status == TXMQ_ECONFLICT && op->probe) {
    h->probes_refused++;
  } else if (status == TXMQ_ENOTFOUND && t->half == HALF_ACKED &&
             op->epoch != t->half_epoch &&
             (t->ack == ACK_NONE || op->epoch != t->ack_epoch)) {
    /* Decided and forgotten across a restart (the documented idempotence
     * window): an error for the caller, never a second visibility. The
     * incarnation that stored or decided it must know it. */
    h->repeats_forgotten++;
  } else if (lost_error(status)) {
    h->uncertain_reqs++;
    count_error(h, status);
  } else {
    count_error(h, status);
    violation(h, t, op->seq, "tx.end %s%s failed with %s (%s) on a connection"
              " of incarnation %u", decision_name(op->decision),
              op->probe ? " (conflict probe)" : op->repeat ? " (repeat)" : "",
              txmq_err_name(status), txmq_client_diag(c), op->epoch);
  }
  op_done(op);
}

static void send_end(harness_t* h, size_t seq, conn_t* conn,
                     txmq_tx_decision_t d, int probe, int repeat, int counts) {
  tx_t* t = &h->tx[seq];
  if (conn->state != C_UP) return;
  op_t* op = op_new(h, seq, conn, counts);
  if (op == NULL) return;
  op->decision = d;
  op->probe = probe;
  op->repeat = repeat;
  if (probe) h->probes++;
  else if (repeat) h->repeats++;
  int rc = txmq_client_tx_end(conn->c, t->tx_id, d, on_end, op);
  if (rc != 0) op_done(op);
}

/* ---- the kinds of load ---- */

static void on_plain(txmq_client_t* c, int status, const txmq_send_result_t* r,
                     void* arg) {
  (void)c;
  (void)r;
  op_t* op = arg;
  harness_t* h = op->h;
  tx_t* t = &h->tx[op->seq];
  if (status == 0) {
    t->half = HALF_ACKED;
    t->ack = ACK_COMMIT;
    t->ack_epoch = op->epoch;
  } else {
    t->half = HALF_LOST;
    h->uncertain_reqs++;
    count_error(h, status);
    if (!lost_error(status))
      violation(h, t, op->seq, "send failed with %s (%s)", txmq_err_name(status),
                txmq_client_diag(c));
  }
  op_done(op);
}

static txmq_tx_decision_t p1_execute(txmq_client_t* c, const txmq_msg_t* msg,
                                     const uint8_t* tx_id, void* arg) {
  (void)c;
  (void)msg;
  op_t* op = arg;
  tx_t* t = &op->h->tx[op->seq];
  memcpy(t->tx_id, tx_id, TXMQ_TX_ID_LEN);
  t->has_id = 1;
  t->half = HALF_ACKED;
  return t->plan == PL_DIRECT ? want_of(t) : TXMQ_TX_UNKNOWN;
}

static void p1_done(txmq_client_t* c, int status, const txmq_tx_result_t* r,
                    void* arg) {
  op_t* op = arg;
  harness_t* h = op->h;
  tx_t* t = &h->tx[op->seq];
  if (status != 0) {
    t->half = HALF_LOST;
    h->uncertain_reqs++;
    count_error(h, status);
    if (!lost_error(status))
      violation(h, t, op->seq, "tx.half failed with %s (%s)",
                txmq_err_name(status), txmq_client_diag(c));
  } else if (r->local_state != TXMQ_TX_UNKNOWN) {
    if (r->end_status == 0) {
      if (r->tx_state != state_of(r->local_state))
        violation(h, t, op->seq, "tx.end %s answered state %s",
                  decision_name(r->local_state), state_name(r->tx_state));
      acked(h, t, op->seq, r->tx_state, op->epoch, op->gen);
      maybe_repeat(h, op->seq, op->conn);
    } else if (lost_error(r->end_status)) {
      h->uncertain_reqs++;
      count_error(h, r->end_status);
    } else {
      count_error(h, r->end_status);
      violation(h, t, op->seq, "tx.end %s after its half failed with %s",
                decision_name(r->local_state), txmq_err_name(r->end_status));
    }
  }
  op_done(op);
}

static void on_half(txmq_client_t* c, int status, const txmq_half_result_t* r,
                    void* arg) {
  op_t* op = arg;
  harness_t* h = op->h;
  tx_t* t = &h->tx[op->seq];
  if (status != 0) {
    t->half = HALF_LOST;
    h->uncertain_reqs++;
    count_error(h, status);
    if (!lost_error(status))
      violation(h, t, op->seq, "tx.half failed with %s (%s)",
                txmq_err_name(status), txmq_client_diag(c));
    op_done(op);
    return;
  }
  memcpy(t->tx_id, r->tx_id, TXMQ_TX_ID_LEN);
  t->has_id = 1;
  t->half = HALF_ACKED;
  if (r->nmsgs != t->nmsgs)
    violation(h, t, op->seq, "tx.half answered %zu message ids for %u messages",
              r->nmsgs, t->nmsgs);
  switch (t->plan) {
    case PL_DIRECT:
      send_end(h, op->seq, op->conn, want_of(t), 0, 0, 1);
      if (t->want_commit && chance(&h->rng, 15)) {
        /* a second COMMIT pipelined behind the first, before any answer */
        h->pipelined++;
        send_end(h, op->seq, op->conn, TXMQ_TX_COMMIT, 0, 1, 0);
      }
      break;
    case PL_UNKNOWN:
      send_end(h, op->seq, op->conn, TXMQ_TX_UNKNOWN, 0, 0, 1);
      break;
    case PL_DELAYED: {
      later_t l = {.due = mono_ms() + 20 + below(&h->rng, 600), .what = L_END,
                   .seq = op->seq, .conn = op->conn, .decision = want_of(t)};
      later_add(h, &l); /* not in the window: it is not a request */
      break;
    }
    default: /* PL_SILENT: the producer "died" before its end */
      break;
  }
  op_done(op);
}

static void on_hosted(txmq_client_t* c, int status,
                      const txmq_tx_send_result_t* r, void* arg) {
  op_t* op = arg;
  harness_t* h = op->h;
  tx_t* t = &h->tx[op->seq];
  if (status != 0) {
    t->half = HALF_LOST;
    h->uncertain_reqs++;
    count_error(h, status);
    if (!lost_error(status))
      violation(h, t, op->seq, "tx.send failed with %s (%s)",
                txmq_err_name(status), txmq_client_diag(c));
    op_done(op);
    return;
  }
  memcpy(t->tx_id, r->tx_id, TXMQ_TX_ID_LEN);
  t->has_id = 1;
  t->half = HALF_ACKED;
  if (r->nmsgs != t->nmsgs)
    violation(h, t, op->seq, "tx.send answered %zu message ids for %u messages",
              r->nmsgs, t->nmsgs);
  if (r->state == TXMQ_TX_PARKED) {
    violation(h, t, op->seq, "tx.send answered parked");
  } else if (r->state == TXMQ_TX_PENDING) {
    /* A handler over its time budget on a busy machine; checks decide. */
    if (t->plan == PL_DIRECT && h->hosted_direct_pending++ < 3)
      printf("note: a hosted transaction the script should have decided stayed"
             " pending (%s)\n", r->diag);
  } else {
    /* Decided by execute, or (plan unknown or error) by a check that came
     * due before a slow execute returned: either way it must be the
     * intended outcome. */
    acked(h, t, op->seq, r->state, op->epoch, op->gen);
    maybe_repeat(h, op->seq, op->conn);
  }
  op_done(op);
}

/* Starts one transaction (or plain send) of a kind if its connection is
 * up. */
static int start_one(harness_t* h, unsigned kind) {
  unsigned r;
  conn_t* conn = kind == K_P1 || kind == K_PN
                     ? &h->conns[below(&h->rng, 2) ? C_P2 : C_P1]
                     : &h->conns[C_H];
  if (conn->state != C_UP) return -1;

  size_t seq;
  tx_t* t = tx_new(h, &seq);
  if (t == NULL) return -1;
  t->kind = (uint8_t)kind;
  t->want_commit = kind == K_PLAIN || chance(&h->rng, 60);
  t->first_unknown = chance(&h->rng, 25);
  t->nmsgs = 1;
  if (kind == K_PN || kind == K_HN) /* now and then the most there may be */
    t->nmsgs = chance(&h->rng, 3) ? (uint8_t)(5 + below(&h->rng, 60))
                                  : (uint8_t)(2 + below(&h->rng, 3));
  t->big = chance(&h->rng, 1);
  if (ms_alloc(h, t) != 0) {
    h->ntx--;
    return -1;
  }
  r = (unsigned)below(&h->rng, 100);
  switch (kind) {
    case K_P1: t->plan = r < 65 ? PL_DIRECT : PL_UNKNOWN; break;
    case K_PN:
      t->plan = r < 50 ? PL_DIRECT : r < 65 ? PL_UNKNOWN
                : r < 77 ? PL_SILENT : r < 97 ? PL_DELAYED : PL_PARK;
      break;
    case K_H1:
    case K_HN:
      t->plan = r < 65 ? PL_DIRECT : r < 90 ? PL_UNKNOWN : PL_ERROR;
      break;
    default: t->plan = PL_DIRECT; break;
  }
  t->half = HALF_SENT;
  t->half_epoch = conn->epoch;
  h->started[kind]++;
  int64_t immunity = 0;
  if (kind == K_PN && chance(&h->rng, 15)) {
    immunity = 300 + (int64_t)below(&h->rng, 1700);
    t->imm_until = (uint32_t)(mono_ms() - h->t0 + (uint64_t)immunity);
  }
  if (t->plan == PL_PARK) {
    t->resume_at = (uint32_t)(mono_ms() - h->t0) + 5000;
    t->by_operator = chance(&h->rng, 50);
    park_add(h, seq);
  }

  txmq_msg_t* msgs[TXMQ_TX_MAX_MSGS];
  if (build_msgs(t, seq, msgs) != 0) {
    t->half = HALF_UNSENT;
    return -1;
  }
  op_t* op = op_new(h, seq, conn, 1);
  int rc = TXMQ_ENOMEM;
  if (op != NULL) {
    op->kind_slot = (int)kind;
    h->active_kind[kind]++;
  }
  if (op != NULL) {
    const txmq_msg_t* const* cm = (const txmq_msg_t* const*)msgs;
    switch (kind) {
      case K_PLAIN: rc = txmq_client_send(conn->c, msgs[0], on_plain, op); break;
      case K_P1:
        rc = txmq_client_send_in_transaction(conn->c, PROD_GROUP, msgs[0],
                                             p1_execute, op, p1_done, op);
        break;
      case K_PN:
        rc = txmq_client_tx_half(conn->c, PROD_GROUP, cm, t->nmsgs, immunity,
                                 on_half, op);
        break;
      default: {
        msgpack_sbuffer sb;
        msgpack_packer pk;
        msgpack_sbuffer_init(&sb);
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        const char* a = PLAN[t->plan];
        msgpack_pack_str(&pk, strlen(a));
        msgpack_pack_str_body(&pk, a, strlen(a));
        rc = txmq_client_tx_send(conn->c, HOSTED_GROUP, cm, t->nmsgs, sb.data,
                                 sb.size, 0, on_hosted, op);
        msgpack_sbuffer_destroy(&sb);
        break;
      }
    }
    if (rc != 0) op_done(op);
  }
  free_msgs(msgs, t->nmsgs);
  if (rc != 0) {
    h->tx[seq].half = HALF_UNSENT; /* never left: nothing may appear */
    return -1;
  }
  return 0;
}

/* ---- checks (producer-hosted transactions) ---- */

static void on_check(txmq_client_t* c, const txmq_client_check_t* chk,
                     void* arg) {
  conn_t* conn = arg;
  harness_t* h = conn->h;
  h->checks_seen++;
  char id[2 * TXMQ_TX_ID_LEN + 1];
  tx_id_hex(chk->tx_id, id);
  unsigned idx = 0;
  long s = chk->nmsgs > 0 ? msg_seq(h, chk->msgs[0], &idx) : -1;
  if (s < 0 || idx != 0) {
    violation(h, NULL, 0, "a check for transaction %s (%zu messages) that the"
              " harness never sent", id, chk->nmsgs);
    txmq_client_check_reply(c, chk->check_id, TXMQ_TX_UNKNOWN);
    return;
  }
  size_t seq = (size_t)s;
  tx_t* t = &h->tx[seq];
  if (t->kind != K_P1 && t->kind != K_PN)
    violation(h, t, seq, "a check for a %s transaction reached a producer of "
              "group %s", KIND[t->kind], chk->group);
  if (chk->nmsgs != t->nmsgs)
    violation(h, t, seq, "a check carries %zu messages", chk->nmsgs);
  for (size_t i = 0; i < chk->nmsgs; i++) {
    unsigned j;
    if (msg_seq(h, chk->msgs[i], &j) != s || j != i)
      violation(h, t, seq, "message %zu of a check belongs elsewhere", i);
  }
  if (t->has_id && memcmp(t->tx_id, chk->tx_id, TXMQ_TX_ID_LEN) != 0)
    violation(h, t, seq, "a check names tx id %s, not the half's", id);
  if (!t->has_id) { /* the half was stored, though its answer was lost */
    memcpy(t->tx_id, chk->tx_id, TXMQ_TX_ID_LEN);
    t->has_id = 1;
  }
  t->checked = 1;
  uint64_t rel = mono_ms() - h->t0;
  if (t->imm_until && rel + 20 < t->imm_until)
    violation(h, t, seq, "a check (count %u) came %" PRIu64 " ms before the "
              "end of its check immunity", chk->check_count,
              t->imm_until - rel);
  if (chk->check_count >= MAX_CHECKS)
    violation(h, t, seq, "a check with count %u: the budget is %d, it should"
              " have been parked", chk->check_count, MAX_CHECKS);
  /* A count lower than one seen before: a fresh budget, a resume took
   * effect (its answer may have been lost). It need not be durable yet (a
   * kill may park the transaction again), so the resumes go on until one
   * is acknowledged. */
  if (t->plan == PL_PARK && chk->check_count < t->max_count) t->resumed = 1;
  if (chk->check_count > t->max_count) t->max_count = (uint16_t)chk->check_count;
  /* No check after a decision: one acknowledged in an earlier incarnation
   * is durable, and on this connection the check came after the answer. */
  if (t->ack != ACK_NONE &&
      (t->ack_epoch < conn->epoch || t->ack_gen == conn->gen))
    violation(h, t, seq, "a check (count %u) reached %s in incarnation %u after"
              " the decision was acknowledged%s", chk->check_count, conn->id,
              conn->epoch, t->ack_gen == conn->gen ? " on this connection" : "");
  txmq_tx_decision_t d =
      (t->first_unknown && t->checks == 0) || (t->plan == PL_PARK && !t->resumed)
          ? TXMQ_TX_UNKNOWN
          : want_of(t);
  t->checks++;
  h->checks_answered[d]++;
  if (chance(&h->rng, 10)) {
    later_t l = {.due = mono_ms() + below(&h->rng, 300), .what = L_CHECK_REPLY,
                 .seq = seq, .conn = conn, .gen = conn->gen,
                 .check_id = chk->check_id, .decision = d};
    if (later_add(h, &l) == 0) return;
  }
  txmq_client_check_reply(c, chk->check_id, d);
}

/* ---- connections ---- */

static void on_connected(txmq_client_t* c, int status, void* arg) {
  (void)c;
  conn_t* conn = arg;
  harness_t* h = conn->h;
  if (conn->state != C_CONNECTING) return;
  if (status != 0) {
    conn->state = C_IDLE;
    conn->retry_at = mono_ms() + 20;
    return;
  }
  conn->state = C_UP;
  conn->gen = ++h->gens;
  conn->epoch = h->epoch;
}

static void on_lost(txmq_client_t* c, int status, void* arg) {
  (void)c;
  (void)status;
  conn_t* conn = arg;
  if (conn->state == C_UP) conn->state = C_IDLE;
  conn->retry_at = mono_ms() + 10;
}

static int conn_init(harness_t* h, conn_t* conn, const char* id, int role) {
  static const char* const pgroups[1] = {PROD_GROUP};
  static const char* const cgroups[1] = {LIVE_GROUP};
  memset(conn, 0, sizeof *conn);
  conn->h = h;
  conn->id = id;
  conn->role = role;
  txmq_client_options_t o;
  memset(&o, 0, sizeof o);
  o.client_id = id;
  /* The hosted producer is an admin too: it resumes parked transactions. */
  o.role = role == R_CONSUMER ? TXMQ_ROLE_CONSUMER
           : role == R_HOSTED ? TXMQ_ROLE_ADMIN : TXMQ_ROLE_PRODUCER;
  if (role == R_PRODUCER) {
    o.producer_groups = pgroups;
    o.n_producer_groups = 1;
  } else if (role == R_CONSUMER) {
    o.consumer_groups = cgroups;
    o.n_consumer_groups = 1;
  }
  o.connect_timeout_ms = 3000;
  o.request_timeout_ms = 20000;
  int rc = txmq_client_new(&conn->c, &h->loop, &o);
  if (rc != 0) return rc;
  txmq_client_on_disconnect(conn->c, on_lost, conn);
  if (role == R_PRODUCER)
    rc = txmq_client_on_check(conn->c, PROD_GROUP, on_check, conn);
  return rc;
}

static void on_conn_closed(txmq_client_t* c, void* arg) {
  conn_t* conn = arg;
  harness_t* h = conn->h;
  txmq_client_free(c);
  conn->c = NULL;
  conn->state = C_CLOSED;
  if (h->phase == PH_STOP || h->phase == PH_DONE) return;
  /* A dropped producer: the same client id comes back a little later,
   * as a restarted producer would; meanwhile its checks go to the other
   * member of the group. */
  uint64_t away = conn->away_ms;
  if (conn_init(h, conn, conn->id, conn->role) == 0) {
    conn->state = C_IDLE;
    conn->retry_at = mono_ms() + away;
  }
}

/* Now and then a producer closes its connection in the middle of its
 * transactions (what it had in flight becomes uncertain). */
static void drop(harness_t* h, conn_t* conn, uint64_t away_ms) {
  if (conn->state != C_UP) return;
  conn->away_ms = away_ms;
  if (txmq_client_close(conn->c, on_conn_closed, conn) == 0) {
    conn->state = C_CLOSING;
    h->drops++;
  }
}

/* One producer for 0.1-0.8 s; one time in ten both for 5-7 s, longer than
 * the whole check budget: checks nobody can take must not count (else the
 * transactions would be parked). */
static void maybe_drop(harness_t* h, uint64_t now) {
  if (now < h->next_drop) return;
  h->next_drop = now + 500 + below(&h->rng, 3000);
  if (chance(&h->rng, 10)) {
    h->group_gone++;
    drop(h, &h->conns[C_P1], 5000 + below(&h->rng, 2000));
    drop(h, &h->conns[C_P2], 5000 + below(&h->rng, 2000));
    return;
  }
  drop(h, &h->conns[below(&h->rng, 2) ? C_P2 : C_P1],
       100 + below(&h->rng, 700));
}

/* Now and then the hosted group's script is rewritten (a new version,
 * the same handlers): the daemon reloads it while transactions run. */
static void maybe_reload(harness_t* h, uint64_t now) {
  if (now < h->next_reload) return;
  h->next_reload = now + 1000 + below(&h->rng, 4000);
  char tmp[PATH_MAX + 48], path[PATH_MAX + 48];
  snprintf(tmp, sizeof tmp, "%s/." HOSTED_GROUP ".tmp", h->scripts);
  snprintf(path, sizeof path, "%s/" HOSTED_GROUP ".lua", h->scripts);
  FILE* f = fopen(tmp, "w");
  if (f == NULL) return;
  fprintf(f, "-- revision %ld\n%s", ++h->reloads, HOSTED_SCRIPT);
  if (fclose(f) == 0) rename(tmp, path);
}

/* ---- the daemon ---- */

static void round_done(harness_t* h);

static void on_proc_closed(uv_handle_t* hd) {
  harness_t* h = hd->data;
  h->proc_open = 0;
  h->dstate = D_DOWN;
  if (h->phase == PH_STOP) {
    h->phase = PH_DONE;
    return;
  }
  if (h->we_killed) round_done(h);
  h->restart_at = mono_ms() + below(&h->rng, 50);
}

static void print_log_tail(harness_t* h, int lines) {
  FILE* f = fopen(h->logpath, "r");
  if (f == NULL) return;
  char** ring = calloc((size_t)lines, sizeof *ring);
  char buf[1024];
  long n = 0;
  if (ring != NULL && fseeko(f, h->log_off, SEEK_SET) == 0) {
    while (fgets(buf, sizeof buf, f) != NULL) {
      free(ring[n % lines]);
      ring[n % lines] = strdup(buf);
      n++;
    }
    printf("  last lines of the txmqd log (%s):\n", h->logpath);
    for (long i = n > lines ? n - lines : 0; i < n; i++)
      if (ring[i % lines]) printf("    %s", ring[i % lines]);
  }
  if (ring != NULL)
    for (int i = 0; i < lines; i++) free(ring[i]);
  free(ring);
  fclose(f);
}

static void on_proc_exit(uv_process_t* p, int64_t status, int sig) {
  harness_t* h = p->data;
  if (h->dstate == D_STOPPING) {
    if (status != 0 || sig != 0) {
      violation(h, NULL, 0, "txmqd did not exit cleanly after SIGTERM "
                "(status %d, signal %d)", (int)status, sig);
      print_log_tail(h, 30);
    }
  } else if (h->we_killed && sig == SIGKILL) {
    if (h->dstate == D_TERM) h->term_kills++; /* during its shutdown */
  } else if (h->we_killed && h->dstate == D_TERM && sig == 0 && status == 0) {
    h->clean_stops++;
    h->stop_ms = mono_ms() - h->term_at;
  } else {
    violation(h, NULL, 0, "txmqd (incarnation %u) exited %s: status %d,"
              " signal %d", h->epoch, h->dstate == D_TERM
              ? "uncleanly after SIGTERM" : "by itself", (int)status, sig);
    print_log_tail(h, 30);
    h->bad_starts++;
  }
  uv_close((uv_handle_t*)p, on_proc_closed);
}

static void on_kill_timer(uv_timer_t* tm);

static int spawn_daemon(harness_t* h) {
  int fd = open(h->logpath, O_WRONLY | O_APPEND | O_CREAT, 0644);
  if (fd < 0) return -1;
  h->epoch++;
  char mark[96];
  int n = snprintf(mark, sizeof mark, "=== fault_harness: incarnation %u ===\n",
                   h->epoch);
  if (write(fd, mark, (size_t)n) != n) {
    close(fd);
    return -1;
  }
  struct stat st;
  fstat(fd, &st);
  h->log_off = st.st_size;
  char exe[PATH_MAX + 16];
  snprintf(exe, sizeof exe, "%s/txmqd", h->bindir);
  char* args[] = {exe, "-c", h->conf, "--listen", "127.0.0.1:0", "--data",
                  h->data, "--scripts", h->scripts, NULL};
  uv_stdio_container_t io[3];
  io[0].flags = UV_IGNORE;
  io[1].flags = UV_INHERIT_FD;
  io[1].data.fd = fd;
  io[2].flags = UV_INHERIT_FD;
  io[2].data.fd = fd;
  uv_process_options_t o;
  memset(&o, 0, sizeof o);
  o.exit_cb = on_proc_exit;
  o.file = exe;
  o.args = args;
  o.stdio = io;
  o.stdio_count = 3;
  h->proc.data = h;
  int rc = uv_spawn(&h->loop, &h->proc, &o);
  close(fd);
  if (rc != 0) {
    fprintf(stderr, "fault_harness: spawn %s: %s\n", exe, uv_strerror(rc));
    uv_close((uv_handle_t*)&h->proc, NULL);
    return -1;
  }
  h->proc_open = 1;
  h->we_killed = 0;
  h->starts++;
  h->dstate = D_STARTING;
  h->started_at = mono_ms();
  h->addr[0] = '\0';
  /* One start in ten is killed before it listens: during recovery. */
  if (h->phase == PH_LOAD && chance(&h->rng, 10))
    uv_timer_start(&h->kill_timer, on_kill_timer,
                   below(&h->rng, h->start_ms + 1), 0);
  return 0;
}

/* Looks for this incarnation's "listening" line; 1 once found. */
static int poll_listening(harness_t* h) {
  FILE* f = fopen(h->logpath, "r");
  if (f == NULL) return 0;
  int found = 0;
  char line[1024];
  if (fseeko(f, h->log_off, SEEK_SET) == 0) {
    while (!found && fgets(line, sizeof line, f) != NULL) {
      const char* a = strstr(line, "msg=\"listening\" addr=");
      if (a == NULL) continue;
      a += strlen("msg=\"listening\" addr=");
      size_t n = strcspn(a, " \n");
      if (n > 0 && n < sizeof h->addr) {
        memcpy(h->addr, a, n);
        h->addr[n] = '\0';
        found = 1;
      }
    }
  }
  fclose(f);
  return found;
}

static void kill_daemon(harness_t* h) {
  uv_timer_stop(&h->kill_timer);
  h->we_killed = 1;
  h->kills++;
  if (h->dstate == D_STARTING) h->recovery_kills++;
  if (h->dstate != D_TERM) h->dstate = D_KILLED;
  uv_process_kill(&h->proc, SIGKILL);
}

/* Mostly kill -9 at once; one round in ten SIGTERM first, then kill -9
 * within the last clean shutdown's duration, if it has not stopped yet:
 * in the middle of its shutdown (answering, flushing, the last
 * checkpoint). */
static void on_kill_timer(uv_timer_t* tm) {
  harness_t* h = tm->data;
  if (h->dstate == D_UP && chance(&h->rng, 10)) {
    h->we_killed = 1;
    h->terms++;
    h->dstate = D_TERM;
    h->term_at = mono_ms();
    uv_process_kill(&h->proc, SIGTERM);
    uv_timer_start(&h->kill_timer, on_kill_timer,
                   below(&h->rng, h->stop_ms + 1), 0);
    return;
  }
  if (h->dstate == D_STARTING || h->dstate == D_UP || h->dstate == D_TERM)
    kill_daemon(h);
}

static void daemon_step(harness_t* h, uint64_t now) {
  switch (h->dstate) {
    case D_DOWN:
      if (h->phase == PH_STOP || h->phase == PH_DONE) break;
      if (now < h->restart_at) break;
      if (h->bad_starts >= 3) {
        violation(h, NULL, 0, "txmqd failed three times; giving up");
        h->phase = PH_DONE;
        break;
      }
      if (spawn_daemon(h) != 0) {
        violation(h, NULL, 0, "cannot start txmqd");
        h->phase = PH_DONE;
      }
      break;
    case D_STARTING:
      if (poll_listening(h)) {
        h->dstate = D_UP;
        h->start_ms = now - h->started_at;
        if (h->phase == PH_LOAD && !uv_is_active((uv_handle_t*)&h->kill_timer))
          uv_timer_start(&h->kill_timer, on_kill_timer,
                         50 + below(&h->rng, (uint64_t)h->load_ms), 0);
      } else if (now - h->started_at > 60000) {
        violation(h, NULL, 0, "txmqd (incarnation %u) did not listen within 60 s",
                  h->epoch);
        print_log_tail(h, 30);
        kill_daemon(h);
        h->bad_starts++;
      }
      break;
    default:
      break;
  }
}

/* ---- consumers ---- */

static const char* const ALL_TOPICS[NTOPICS + 1] = {"fault-a", "fault-b",
                                                    "fault-c", PLAIN_TOPIC};

/* The transaction of a message a consumer got, or -1 after reporting a
 * message the harness never sent or one that changed on the way. */
static long delivered_seq(harness_t* h, const char* topic,
                          const txmq_msg_t* m, unsigned* idx) {
  long s = msg_seq(h, m, idx);
  if (s < 0) {
    size_t bl;
    const void* body = txmq_msg_body(m, &bl);
    violation(h, NULL, 0, "topic %s qid %d offset %" PRId64 " holds a message "
              "the harness never sent: %.*s", topic, txmq_msg_queue_id(m),
              txmq_msg_queue_offset(m), (int)(bl > 80 ? 80 : bl),
              body ? (const char*)body : "");
    return -1;
  }
  tx_t* t = &h->tx[s];
  const char* want_topic;
  topic_of(t, (size_t)s, *idx, &want_topic);
  const char* fw = txmq_msg_prop_get(m, "fw");
  size_t elen = 0, blen = 0;
  char* expect = *idx < t->nmsgs ? body_of(t, (size_t)s, *idx, &elen) : NULL;
  const void* body = txmq_msg_body(m, &blen);
  int same = expect != NULL && blen == elen &&
             (elen == 0 || (body != NULL && memcmp(body, expect, elen) == 0));
  free(expect);
  if (!same || strcmp(topic, want_topic) != 0 || fw == NULL ||
      (fw[0] == 'c') != t->want_commit) {
    violation(h, t, (size_t)s, "message %u arrived altered on topic %s (body "
              "of %zu bytes)", *idx, topic, blen);
    return -1;
  }
  return s;
}

/* The live consumer group reads the topics while the daemon is killed
 * under it: at the end it must have had every message the final reading
 * finds, and none that it does not (nothing visible for a while only). */
typedef struct {
  harness_t* h;
  int topic;
} live_req_t;

static void on_live_ack(txmq_client_t* c, int status, int64_t v, void* arg) {
  (void)c;
  (void)status;
  (void)v;
  (void)arg; /* an ack lost with its connection: delivered again */
}

static void on_live(txmq_client_t* c, int status, txmq_delivery_t* d, size_t n,
                    void* arg) {
  live_req_t* r = arg;
  harness_t* h = r->h;
  const char* topic = ALL_TOPICS[r->topic];
  free(r);
  h->live_busy = 0;
  if (status != 0 || n == 0) return;
  const char* handles[256];
  for (size_t i = 0; i < n && i < 256; i++) {
    h->live_consumed++;
    unsigned idx;
    long s = delivered_seq(h, topic, d[i].msg, &idx);
    if (s >= 0) {
      mstate_t* m = &h->ms[h->tx[s].mbase + idx];
      /* Again: its ack was lost, or the group's progress since the last
       * checkpoint was (at-least-once). */
      if (m->live > 0) h->live_redelivered++;
      if (m->live < 255) m->live++;
    }
    handles[i] = d[i].handle;
  }
  h->live_last_msg = mono_ms();
  txmq_client_ack(c, LIVE_GROUP, handles, n < 256 ? n : 256, on_live_ack, NULL);
}

static void live_step(harness_t* h) {
  conn_t* conn = &h->conns[C_L];
  if (h->live_busy || conn->state != C_UP) return;
  live_req_t* r = malloc(sizeof *r);
  if (r == NULL) return;
  r->h = h;
  r->topic = h->live_topic;
  h->live_topic = (h->live_topic + 1) % (NTOPICS + 1);
  txmq_receive_opts_t ro;
  memset(&ro, 0, sizeof ro);
  ro.group = LIVE_GROUP;
  ro.topic = ALL_TOPICS[r->topic];
  ro.max = 256;
  ro.wait_ms = 20;
  ro.visibility_ms = LIVE_VISIBILITY_MS;
  ro.from = TXMQ_FROM_EARLIEST;
  if (txmq_client_receive(conn->c, &ro, on_live, r) == 0) h->live_busy = 1;
  else free(r);
}

/* ---- the end of the run: drain, then stop ---- */

static void on_list(txmq_client_t* c, int status, const msgpack_object* rep,
                    void* arg) {
  (void)c;
  harness_t* h = arg;
  h->drain_listing = 0;
  if (status != 0 || rep == NULL) return; /* asked again at the next tick */
  const msgpack_object* txs = txmq_client_map_get(rep, "txs");
  if (txs == NULL || txs->type != MSGPACK_OBJECT_ARRAY) return;
  if (txs->via.array.size == 0) {
    h->drain_ok = 1;
    return;
  }
  if (mono_ms() - h->drain_start < 60000) return;
  /* Still undecided a minute after the last start: name them. */
  for (uint32_t i = 0; i < txs->via.array.size; i++) {
    const msgpack_object* e = &txs->via.array.ptr[i];
    const msgpack_object* id = txmq_client_map_get(e, "tx_id");
    const msgpack_object* st = txmq_client_map_get(e, "state");
    const msgpack_object* cc = txmq_client_map_get(e, "check_count");
    char hex[2 * TXMQ_TX_ID_LEN + 1] = "?";
    size_t seq = h->ntx;
    if (id && id->type == MSGPACK_OBJECT_BIN &&
        id->via.bin.size == TXMQ_TX_ID_LEN) {
      tx_id_hex((const uint8_t*)id->via.bin.ptr, hex);
      for (size_t s = 0; s < h->ntx; s++)
        if (h->tx[s].has_id &&
            memcmp(h->tx[s].tx_id, id->via.bin.ptr, TXMQ_TX_ID_LEN) == 0) {
          seq = s;
          break;
        }
    }
    char what[160];
    snprintf(what, sizeof what, "still %.*s with %" PRIu64 " checks after the"
             " checks had a minute", st && st->type == MSGPACK_OBJECT_STR
             ? (int)st->via.str.size : 1,
             st && st->type == MSGPACK_OBJECT_STR ? st->via.str.ptr : "?",
             cc && cc->type == MSGPACK_OBJECT_POSITIVE_INTEGER ? cc->via.u64 : 0);
    if (seq < h->ntx) violation(h, &h->tx[seq], seq, "%s", what);
    else violation(h, NULL, 0, "transaction %s: %s", hex, what);
  }
  h->drain_ok = -1;
}

static void drain_step(harness_t* h, uint64_t now) {
  if (h->drain_ok == 0 && now - h->drain_start > 120000) {
    /* tx.list would name what is left after a minute: here the clients
     * could not even get that far (connections refused, a daemon that
     * does not start). */
    violation(h, NULL, 0, "no drain within 2 minutes of the last start "
              "(daemon %s; connections up: p1 %d p2 %d h %d live %d)",
              h->dstate == D_UP ? "listening" : "not listening",
              h->conns[C_P1].state == C_UP, h->conns[C_P2].state == C_UP,
              h->conns[C_H].state == C_UP, h->conns[C_L].state == C_UP);
    h->drain_ok = -1;
  }
  if (h->dstate != D_UP) return;
  conn_t* hc = &h->conns[C_H];
  if (h->drain_ok == 0) {
    if (h->active > 0 || h->nlater > 0 || h->drain_listing ||
        now < h->drain_next)
      return;
    for (int i = 0; i < NCONN; i++)
      if (h->conns[i].state != C_UP) return;
    h->drain_next = now + 250;
    if (txmq_client_tx_list(hc->c, NULL, 100, on_list, h) == 0)
      h->drain_listing = 1;
    return;
  }
  /* Drained (or given up): the live consumer catches up. */
  h->phase = PH_LIVE;
  h->live_last_msg = now;
}

/* Closes every connection; what follows is synchronous. */
static void stop_clients(harness_t* h) {
  h->phase = PH_STOP;
  for (int i = 0; i < NCONN; i++) {
    conn_t* cn = &h->conns[i];
    if (cn->c != NULL && cn->state != C_CLOSING &&
        txmq_client_close(cn->c, on_conn_closed, cn) == 0)
      cn->state = C_CLOSING;
  }
}

/* ---- the tick: connections, things due, the load ---- */

static void run_later(harness_t* h, uint64_t now) {
  for (size_t i = 0; i < h->nlater;) {
    later_t l = h->later[i];
    if (l.due > now) {
      i++;
      continue;
    }
    h->later[i] = h->later[--h->nlater];
    if (l.what == L_CHECK_REPLY) {
      /* Only on the connection that got it: after a reconnect, the same
       * check id may name another check. */
      if (l.conn->state == C_UP && l.conn->gen == l.gen)
        txmq_client_check_reply(l.conn->c, l.check_id, l.decision);
    } else {
      send_end(h, l.seq, l.conn, l.decision, 0, 0, 0);
    }
  }
}

/* Transactions whose checks always answer UNKNOWN until resumed: they
 * use up their budget and are parked; an operator (the admin connection)
 * resumes them, which gives a fresh budget, and the checks then decide. */
static void on_resume(txmq_client_t* c, int status, const msgpack_object* rep,
                      void* arg) {
  (void)rep;
  op_t* op = arg;
  harness_t* h = op->h;
  tx_t* t = &h->tx[op->seq];
  t->resume_busy = 0;
  t->resume_at = (uint32_t)(mono_ms() - h->t0) + 1000;
  if (status == 0) {
    t->resumed = t->resume_done = 1;
    h->parked_resumes++;
  } else if (status == TXMQ_EINVAL) {
    /* Not parked: not yet, or resumed by a request whose answer was lost
     * (then perhaps decided already); asked again later. */
    h->resume_not_parked++;
  } else if (status == TXMQ_ENOTFOUND && op->epoch != t->half_epoch) {
    t->resumed = t->resume_done = 1; /* decided and forgotten since */
  } else if (!lost_error(status)) {
    violation(h, t, op->seq, "tx.resume failed with %s (%s)",
              txmq_err_name(status), txmq_client_diag(c));
  }
  op_done(op);
}

/* The other half of them: once their last check was offered (or a while
 * after, should its offer have been lost to a kill), an operator decides
 * them as they should end, with tx.decide. */
static void on_decide(txmq_client_t* c, int status, txmq_tx_state_t state,
                      void* arg) {
  op_t* op = arg;
  harness_t* h = op->h;
  tx_t* t = &h->tx[op->seq];
  t->resume_busy = 0;
  t->resume_at = (uint32_t)(mono_ms() - h->t0) + 1000;
  if (status == 0) {
    if (state != state_of(want_of(t)))
      violation(h, t, op->seq, "tx.decide %s answered state %s",
                decision_name(want_of(t)), state_name(state));
    t->resume_done = 1;
    h->operator_decisions++;
    acked(h, t, op->seq, state, op->epoch, op->gen);
    maybe_repeat(h, op->seq, op->conn);
  } else if (status == TXMQ_ENOTFOUND && op->epoch != t->half_epoch) {
    t->resume_done = 1; /* decided and forgotten since */
  } else if (!lost_error(status)) {
    violation(h, t, op->seq, "tx.decide %s failed with %s (%s)",
              decision_name(want_of(t)), txmq_err_name(status),
              txmq_client_diag(c));
  }
  op_done(op);
}

static void run_resumes(harness_t* h) {
  conn_t* conn = &h->conns[C_H];
  if (h->dstate != D_UP || conn->state != C_UP) return;
  uint32_t rel = (uint32_t)(mono_ms() - h->t0);
  for (size_t i = 0; i < h->nparks;) {
    tx_t* t = &h->tx[h->parks[i]];
    if (t->resume_done || t->half == HALF_UNSENT) {
      h->parks[i] = h->parks[--h->nparks]; /* done, or never stored */
      continue;
    }
    /* An uncertain half becomes resumable once a check names its id. */
    if (t->has_id && !t->resume_busy && rel >= t->resume_at &&
        (!t->by_operator || t->max_count >= MAX_CHECKS - 1 ||
         rel >= t->resume_at + 5000)) {
      op_t* op = op_new(h, h->parks[i], conn, 0);
      int rc = op == NULL ? TXMQ_ENOMEM
               : t->by_operator
                   ? txmq_client_tx_decide(conn->c, t->tx_id, want_of(t),
                                           on_decide, op)
                   : txmq_client_tx_resume(conn->c, t->tx_id, on_resume, op);
      if (rc == 0) t->resume_busy = 1;
      else if (op != NULL) op_done(op);
    }
    i++;
  }
}

static void run_late(harness_t* h) {
  conn_t* conn = &h->conns[C_H];
  if (h->dstate != D_UP || conn->state != C_UP) return;
  if (h->late_epoch != h->epoch) {
    h->late_epoch = h->epoch;
    h->late_sent = 0;
  }
  for (size_t i = 0; i < h->nlate && h->late_sent < LATE_PER_EPOCH;) {
    size_t seq = h->late[i];
    tx_t* t = &h->tx[seq];
    if (t->ack_epoch >= h->epoch) {
      i++;
      continue;
    }
    h->late[i] = h->late[--h->nlate];
    h->late_sent++;
    unsigned r = (unsigned)below(&h->rng, 100);
    if (r < 30) {
      send_show(h, seq, conn);
    } else if (r < 50) {
      h->late_repeats++;
      send_end(h, seq, conn, t->want_commit ? TXMQ_TX_ROLLBACK : TXMQ_TX_COMMIT,
               1, 1, 0);
    } else {
      h->late_repeats++;
      send_end(h, seq, conn, want_of(t), 0, 1, 0);
    }
  }
}

/* Each kind keeps its share of the window in flight, so that a kill finds
 * requests of every kind under way whatever their latency (hosted ones
 * wait for the script's worker, and would otherwise fill it). */
static void fill_window(harness_t* h) {
  static const unsigned share[K_COUNT] = {10, 25, 20, 25, 20};
  for (unsigned k = 0; k < K_COUNT; k++) {
    int cap = (int)((unsigned)h->window * share[k] / 100);
    if (cap < 1) cap = 1;
    while (h->active_kind[k] < cap)
      if (start_one(h, k) != 0) break;
  }
}

static void on_tick(uv_timer_t* tm) {
  harness_t* h = tm->data;
  uint64_t now = mono_ms();
  daemon_step(h, now);
  if (h->phase == PH_DONE) {
    uv_timer_stop(tm);
    return;
  }
  for (int i = 0; i < NCONN; i++) {
    conn_t* cn = &h->conns[i];
    if (cn->state != C_IDLE || h->dstate != D_UP || now < cn->retry_at) continue;
    if (txmq_client_connect(cn->c, h->addr, on_connected, cn) == 0)
      cn->state = C_CONNECTING;
    else
      cn->retry_at = now + 20;
  }
  run_later(h, now);
  if (h->phase == PH_LIVE && !h->live_busy &&
      now - h->live_last_msg > LIVE_VISIBILITY_MS + 1500) {
    /* Nothing came for longer than the visibility timeout (an ack lost
     * with a kill brings its message back after it): caught up. */
    stop_clients(h);
  }
  if (h->phase != PH_STOP) live_step(h);
  if (h->phase == PH_LOAD || h->phase == PH_DRAIN) run_resumes(h);
  if (h->phase == PH_LOAD) {
    run_late(h);
    maybe_drop(h, now);
    maybe_reload(h, now);
    if (h->dstate == D_UP) fill_window(h);
  } else if (h->phase == PH_DRAIN) {
    drain_step(h, now);
  } else if (h->phase == PH_STOP && h->dstate == D_UP) {
    int open = 0;
    for (int i = 0; i < NCONN; i++) open += h->conns[i].state != C_CLOSED;
    if (!open) uv_timer_stop(tm); /* back to main: consume synchronously */
  }
}

/* The state letter in a /proc .../stat file (R, S, D, Z, ...), 0 if
 * unknown. */
static char stat_state(const char* path) {
  char buf[512];
  int fd = open(path, O_RDONLY);
  if (fd < 0) return 0;
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return 0;
  buf[n] = '\0';
  const char* p = strrchr(buf, ')'); /* the name may hold anything */
  return p != NULL && p[1] == ' ' ? p[2] : 0;
}

static char proc_state(int pid) {
  char path[64];
  snprintf(path, sizeof path, "/proc/%d/stat", pid);
  return stat_state(path);
}

/* Writes the daemon's threads' stacks into the work directory with gdb,
 * if there is one: what a hung daemon was doing. */
static void dump_stacks(harness_t* h) {
  char path[PATH_MAX + 32], pid[24];
  snprintf(path, sizeof path, "%s/txmqd-stacks.txt", h->dir);
  snprintf(pid, sizeof pid, "%d", h->proc.pid);
  pid_t g = fork();
  if (g < 0) return;
  if (g == 0) {
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) {
      dup2(fd, 1);
      dup2(fd, 2);
    }
    execlp("gdb", "gdb", "-p", pid, "-batch", "-ex", "thread apply all bt",
           (char*)NULL);
    _exit(127);
  }
  int st;
  if (waitpid(g, &st, 0) == g && WIFEXITED(st) && WEXITSTATUS(st) == 0)
    printf("  the daemon's stacks: %s\n", path);
}

/* Prints each thread of process pid: its state letter and, from
 * /proc/PID/task/TID/wchan, where in the kernel it waits. */
static void print_threads(int pid) {
  char path[320];
  snprintf(path, sizeof path, "/proc/%d/task", pid);
  DIR* d = opendir(path);
  if (d == NULL) {
    printf("  threads of %d: %s\n", pid, strerror(errno));
    return;
  }
  struct dirent* de;
  while ((de = readdir(d)) != NULL) {
    if (de->d_name[0] == '.') continue;
    char wchan[128] = "";
    snprintf(path, sizeof path, "/proc/%d/task/%s/stat", pid, de->d_name);
    char st = stat_state(path);
    snprintf(path, sizeof path, "/proc/%d/task/%s/wchan", pid, de->d_name);
    int fd = open(path, O_RDONLY);
    if (fd >= 0) {
      ssize_t n = read(fd, wchan, sizeof wchan - 1);
      wchan[n > 0 ? n : 0] = '\0';
      close(fd);
    }
    printf("  thread %s: state %c, waits in %s\n", de->d_name,
           st ? st : '?', wchan[0] ? wchan : "-");
  }
  closedir(d);
}

static void on_stop_timeout(uv_timer_t* tm) {
  harness_t* h = tm->data;
  print_threads(h->proc.pid);
  int gone = proc_state(h->proc.pid) == 'Z' || kill(h->proc.pid, 0) != 0;
  violation(h, NULL, 0, "txmqd did not exit within 30 s of SIGTERM%s", gone
            ? " (or it did and its exit was not reported)" : "");
  print_log_tail(h, 30);
  if (!gone) dump_stacks(h);
  uv_process_kill(&h->proc, SIGKILL);
}

/* Counts the rounds: called when a killed daemon's handle closed. */
static void round_done(harness_t* h) {
  if (h->phase != PH_LOAD) return;
  h->round++;
  if (h->round % 10 == 0 || h->round == h->rounds) {
    printf("fault: round %d/%d, %zu transactions so far\n", h->round, h->rounds,
           h->ntx);
    fflush(stdout);
  }
  if (h->round >= h->rounds) {
    h->phase = PH_DRAIN;
    h->drain_start = mono_ms();
  }
}

/* ---- after the run: consume, status, stop, verify ---- */

static void record_delivery(harness_t* h, const char* topic,
                            const txmq_delivery_t* d, long* per_topic) {
  h->consumed++;
  if (d->deliveries > 1) { /* the consumer's at-least-once, not a copy */
    h->redelivered++;
    return;
  }
  (*per_topic)++;
  unsigned idx;
  long s = delivered_seq(h, topic, d->msg, &idx);
  if (s < 0) return;
  tx_t* t = &h->tx[s];
  mstate_t* m = &h->ms[t->mbase + idx];
  if (m->delivered < 255) m->delivered++;
  if (m->delivered == 2)
    violation(h, t, (size_t)s, "message %u is visible twice (second copy at "
              "topic %s qid %d offset %" PRId64 ")", idx, topic,
              txmq_msg_queue_id(d->msg), txmq_msg_queue_offset(d->msg));
}

static int64_t obj_int(const msgpack_object* o) {
  if (o == NULL) return -1;
  if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER) return (int64_t)o->via.u64;
  if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) return o->via.i64;
  return -1;
}

/* Reads every topic to its end with a fresh consumer group, then compares
 * with the daemon's own counts. */
static void consume_all(harness_t* h) {
  txmq_client_options_t o;
  memset(&o, 0, sizeof o);
  o.client_id = "fault-verify";
  o.role = TXMQ_ROLE_CONSUMER;
  o.request_timeout_ms = 60000;
  txmq_sync_client_t* s = NULL;
  int rc = txmq_sync_new(&s, &o);
  if (rc == 0) rc = txmq_sync_connect(s, h->addr);
  if (rc != 0) {
    violation(h, NULL, 0, "the verifying consumer cannot connect: %s (%s)",
              txmq_err_name(rc), s ? txmq_sync_diag(s) : "");
    txmq_sync_free(s);
    return;
  }
  const char* const* topics = ALL_TOPICS;
  long got[NTOPICS + 1] = {0};
  for (int k = 0; k < NTOPICS + 1; k++) {
    int empty = 0;
    while (empty < 2) {
      txmq_receive_opts_t ro;
      memset(&ro, 0, sizeof ro);
      ro.group = VERIFY_GROUP;
      ro.topic = topics[k];
      ro.max = 256;
      ro.wait_ms = 300;
      ro.visibility_ms = 600000;
      ro.from = TXMQ_FROM_EARLIEST;
      txmq_delivery_t* d = NULL;
      size_t n = 0;
      rc = txmq_sync_receive(s, &ro, &d, &n);
      if (rc != 0) {
        violation(h, NULL, 0, "receive on %s failed: %s (%s)", topics[k],
                  txmq_err_name(rc), txmq_sync_diag(s));
        break;
      }
      if (n == 0) {
        empty++;
        continue;
      }
      empty = 0;
      const char* handles[256];
      for (size_t i = 0; i < n; i++) {
        record_delivery(h, topics[k], &d[i], &got[k]);
        handles[i] = d[i].handle;
      }
      int64_t nacked = 0;
      rc = txmq_sync_ack(s, VERIFY_GROUP, handles, n, &nacked);
      if (rc != 0 || nacked != (int64_t)n)
        violation(h, NULL, 0, "ack of %zu messages on %s: %s, %" PRId64
                  " acknowledged", n, topics[k], txmq_err_name(rc), nacked);
      txmq_client_free_deliveries(d, n);
    }
  }

  txmq_reply_t* rep = NULL;
  rc = txmq_sync_call(s, "status", NULL, 0, &rep);
  if (rc != 0) {
    violation(h, NULL, 0, "status failed: %s", txmq_err_name(rc));
    txmq_sync_free(s);
    return;
  }
  const msgpack_object* o2 = txmq_reply_object(rep);
  const msgpack_object* tps = txmq_client_map_get(o2, "topics");
  for (int k = 0; k < NTOPICS + 1; k++) {
    int64_t msgs = 0;
    for (uint32_t i = 0; tps && tps->type == MSGPACK_OBJECT_ARRAY &&
                         i < tps->via.array.size; i++) {
      const msgpack_object* nm = txmq_client_map_get(&tps->via.array.ptr[i], "name");
      if (nm && nm->type == MSGPACK_OBJECT_STR &&
          nm->via.str.size == strlen(topics[k]) &&
          memcmp(nm->via.str.ptr, topics[k], nm->via.str.size) == 0)
        msgs = obj_int(txmq_client_map_get(&tps->via.array.ptr[i], "messages"));
    }
    if (msgs != got[k])
      violation(h, NULL, 0, "status counts %" PRId64 " messages on %s, the "
                "consumer read %ld", msgs, topics[k], got[k]);
  }
  const msgpack_object* tx = txmq_client_map_get(o2, "tx");
  int64_t pending = obj_int(txmq_client_map_get(tx, "pending"));
  int64_t parked = obj_int(txmq_client_map_get(tx, "parked"));
  if (pending != 0 || parked != 0)
    violation(h, NULL, 0, "status: %" PRId64 " pending and %" PRId64
              " parked transactions at the end", pending, parked);
  txmq_reply_free(rep);
  txmq_sync_free(s);
}

/* Hosted checks, counted from the script's log lines; one for a
 * transaction whose decision was acknowledged in an earlier incarnation
 * breaks "no check after a decision". */
static void scan_log(harness_t* h) {
  FILE* f = fopen(h->logpath, "r");
  if (f == NULL) return;
  char line[4096];
  uint32_t epoch = 0;
  while (fgets(line, sizeof line, f) != NULL) {
    unsigned e;
    if (sscanf(line, "=== fault_harness: incarnation %u ===", &e) == 1) {
      epoch = e;
      continue;
    }
    const char* p = strstr(line, "fault-check ft=");
    if (p == NULL) continue;
    h->script_checks++;
    unsigned long long s = strtoull(p + strlen("fault-check ft="), NULL, 10);
    if (s >= h->ntx) continue;
    tx_t* t = &h->tx[s];
    if (t->ack != ACK_NONE && t->ack_epoch < epoch)
      violation(h, t, (size_t)s, "the hosted script checked it in incarnation %u"
                " after its decision was acknowledged", epoch);
  }
  fclose(f);
}

static int run_tool(harness_t* h, const char* what) {
  char exe[PATH_MAX + 16];
  snprintf(exe, sizeof exe, "%s/txmq", h->bindir);
  pid_t pid = fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    int fd = open("/dev/null", O_WRONLY);
    if (fd >= 0) dup2(fd, 1);
    execl(exe, exe, "log", what, h->data, (char*)NULL);
    _exit(127);
  }
  int st;
  if (waitpid(pid, &st, 0) != pid) return -1;
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* ---- the verdict ---- */

static void check_history(harness_t* h) {
  long n_out[K_COUNT][6] = {{0}};
  enum { O_COMMITTED, O_ROLLED_BACK, O_UNCERTAIN_IN, O_UNCERTAIN_OUT,
         O_UNSENT, O_BY_CHECK };
  for (size_t seq = 0; seq < h->ntx; seq++) {
    tx_t* t = &h->tx[seq];
    unsigned got = 0, dup = 0;
    for (unsigned i = 0; i < t->nmsgs; i++) {
      got += h->ms[t->mbase + i].delivered > 0;
      dup |= h->ms[t->mbase + i].delivered > 1;
    }
    int stored = t->half == HALF_ACKED || t->checked;
    for (unsigned i = 0; i < t->nmsgs; i++) {
      const mstate_t* m = &h->ms[t->mbase + i];
      if (m->delivered && !m->live)
        violation(h, t, seq, "message %u never reached the live consumer "
                  "group", i);
      else if (!m->delivered && m->live)
        violation(h, t, seq, "the live consumer group got message %u, which "
                  "the final reading does not find", i);
    }
    if (t->half == HALF_UNSENT && got)
      violation(h, t, seq, "a message never sent was delivered");
    if (got > 0 && got < t->nmsgs)
      violation(h, t, seq, "only %u of its %u messages were delivered", got,
                t->nmsgs);
    if (got && !t->want_commit)
      violation(h, t, seq, "%s was delivered", t->ack == ACK_ROLLBACK
                ? "an acknowledged ROLLBACK" : "a transaction every decider "
                "rolls back");
    if (!got && t->want_commit && t->ack == ACK_COMMIT)
      violation(h, t, seq, "%s was lost", t->kind == K_PLAIN
                ? "an acknowledged send" : "an acknowledged COMMIT");
    else if (!got && t->want_commit && stored && t->kind != K_PLAIN)
      violation(h, t, seq, "stored, every decider answers COMMIT, checks had "
                "their time, and nothing was delivered");
    (void)dup; /* reported as it was read */
    if (t->half == HALF_UNSENT) n_out[t->kind][O_UNSENT]++;
    else if (!stored) n_out[t->kind][got ? O_UNCERTAIN_IN : O_UNCERTAIN_OUT]++;
    else if (t->ack == ACK_NONE && t->kind != K_PLAIN)
      n_out[t->kind][O_BY_CHECK]++;
    else n_out[t->kind][got ? O_COMMITTED : O_ROLLED_BACK]++;
  }
  printf("fault: transactions by kind and outcome\n"
         "  %-11s %8s %10s %12s %9s %11s %12s %7s\n", "kind", "started",
         "committed", "rolled_back", "by_check", "uncertain", "(delivered)",
         "unsent");
  long tot[7] = {0};
  for (int k = 0; k < K_COUNT; k++) {
    long* o = n_out[k];
    printf("  %-11s %8ld %10ld %12ld %9ld %11ld %12ld %7ld\n", KIND[k],
           h->started[k], o[O_COMMITTED], o[O_ROLLED_BACK], o[O_BY_CHECK],
           o[O_UNCERTAIN_IN] + o[O_UNCERTAIN_OUT], o[O_UNCERTAIN_IN],
           o[O_UNSENT]);
    tot[0] += h->started[k];
    tot[1] += o[O_COMMITTED];
    tot[2] += o[O_ROLLED_BACK];
    tot[3] += o[O_BY_CHECK];
    tot[4] += o[O_UNCERTAIN_IN] + o[O_UNCERTAIN_OUT];
    tot[5] += o[O_UNCERTAIN_IN];
    tot[6] += o[O_UNSENT];
  }
  printf("  %-11s %8ld %10ld %12ld %9ld %11ld %12ld %7ld\n", "all", tot[0],
         tot[1], tot[2], tot[3], tot[4], tot[5], tot[6]);
  printf("  (committed/rolled_back: the producer was told; by_check: stored, "
         "decided by a check or a late end; uncertain: the request's answer "
         "was lost)\n");
}

/* Interrupted (Ctrl-C, a test timeout): take the daemon along rather than
 * leave it running on its own, and say where its data is. */
static void on_signal(uv_signal_t* sg, int signum) {
  harness_t* h = sg->data;
  if (h->proc_open) uv_process_kill(&h->proc, SIGKILL);
  printf("fault: interrupted by signal %d after %d rounds; txmqd killed; "
         "work directory kept: %s\n", signum, h->round, h->dir);
  fflush(stdout);
  _exit(3);
}

static int rm_one(const char* p, const struct stat* s, int flag,
                  struct FTW* f) {
  (void)s;
  (void)flag;
  (void)f;
  return remove(p);
}

static int write_file(const char* path, const char* text) {
  FILE* f = fopen(path, "w");
  if (f == NULL) return -1;
  fputs(text, f);
  return fclose(f);
}

static long env_long(const char* name, long dflt) {
  const char* v = getenv(name);
  if (v == NULL || *v == '\0') return dflt;
  return strtol(v, NULL, 0);
}

int main(int argc, char** argv) {
  signal(SIGPIPE, SIG_IGN);
  harness_t* h = calloc(1, sizeof *h);
  if (h == NULL) return 1;
  long rounds = -1, dflt_rounds = 50;
  int have_seed = 0;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--rounds") == 0 && i + 1 < argc) {
      rounds = strtol(argv[++i], NULL, 0);
    } else if (strcmp(argv[i], "--default-rounds") == 0 && i + 1 < argc) {
      dflt_rounds = strtol(argv[++i], NULL, 0);
    } else if (strcmp(argv[i], "--seed") == 0 && i + 1 < argc) {
      h->seed = strtoull(argv[++i], NULL, 0);
      have_seed = 1;
    } else if (strcmp(argv[i], "--keep") == 0) {
      h->keep = 1;
    } else {
      fprintf(stderr, "usage: fault_harness [--rounds N] [--default-rounds N]"
              " [--seed S] [--keep]\n");
      return 2;
    }
  }
  if (rounds < 0) rounds = env_long("FAULT_ROUNDS", dflt_rounds);
  if (!have_seed && getenv("FAULT_SEED") != NULL) {
    h->seed = strtoull(getenv("FAULT_SEED"), NULL, 0);
    have_seed = 1;
  }
  if (!have_seed) h->seed = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
  if (h->seed == 0) h->seed = 1;
  h->rng.s = h->seed;
  h->rounds = rounds < 1 ? 1 : (int)rounds;
  h->window = (int)env_long("FAULT_WINDOW", 32);
  h->load_ms = (int)env_long("FAULT_LOAD_MS", 2500);
  if (h->window < 1) h->window = 1;
  if (h->load_ms < 1) h->load_ms = 1;
  if (env_long("FAULT_KEEP", 0)) h->keep = 1;

  char self[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  if (n <= 0) {
    fprintf(stderr, "fault_harness: /proc/self/exe: %s\n", strerror(errno));
    return 1;
  }
  self[n] = '\0';
  snprintf(h->bindir, sizeof h->bindir, "%s", dirname(self));
  const char* tmp = getenv("TMPDIR");
  snprintf(h->dir, sizeof h->dir, "%s/txmq-fault-XXXXXX",
           tmp != NULL && *tmp ? tmp : "/tmp");
  if (mkdtemp(h->dir) == NULL) {
    fprintf(stderr, "fault_harness: mkdtemp: %s\n", strerror(errno));
    return 1;
  }
  snprintf(h->logpath, sizeof h->logpath, "%s/txmqd.log", h->dir);
  snprintf(h->conf, sizeof h->conf, "%s/txmqd.conf.lua", h->dir);
  snprintf(h->data, sizeof h->data, "%s/data", h->dir);
  snprintf(h->scripts, sizeof h->scripts, "%s/scripts", h->dir);
  char path[PATH_MAX + 48];
  snprintf(path, sizeof path, "%s/" HOSTED_GROUP ".lua", h->scripts);
  if (mkdir(h->scripts, 0755) != 0 || write_file(path, HOSTED_SCRIPT) != 0 ||
      write_file(h->conf, CONF) != 0) {
    fprintf(stderr, "fault_harness: cannot write into %s\n", h->dir);
    return 1;
  }
  printf("fault: %d rounds, seed %" PRIu64 ", window %d, load up to %d ms, "
         "work dir %s\n", h->rounds, h->seed, h->window, h->load_ms, h->dir);
  fflush(stdout);

  uint64_t t0 = mono_ms();
  uv_loop_init(&h->loop);
  static const char* const ids[NCONN] = {"fault-p1", "fault-p2", "fault-h",
                                         "fault-l"};
  static const int roles[NCONN] = {R_PRODUCER, R_PRODUCER, R_HOSTED,
                                   R_CONSUMER};
  for (int i = 0; i < NCONN; i++)
    if (conn_init(h, &h->conns[i], ids[i], roles[i]) != 0) {
      fprintf(stderr, "fault_harness: client: cannot create\n");
      return 1;
    }
  uv_timer_init(&h->loop, &h->tick);
  h->tick.data = h;
  uv_timer_init(&h->loop, &h->kill_timer);
  h->kill_timer.data = h;
  static const int sigs[NSIGS] = {SIGINT, SIGTERM, SIGHUP};
  for (int i = 0; i < NSIGS; i++) {
    uv_signal_init(&h->loop, &h->sig[i]);
    h->sig[i].data = h;
    uv_signal_start(&h->sig[i], on_signal, sigs[i]);
    uv_unref((uv_handle_t*)&h->sig[i]);
  }
  h->t0 = t0;
  h->start_ms = 20;
  h->stop_ms = 50;
  h->next_drop = h->next_reload = mono_ms() + 1000;
  uv_timer_start(&h->tick, on_tick, 0, TICK_MS);

  /* The load, the kills, the drain: until the producers are closed. A
   * killed daemon's handle closing ends a round. */
  while (uv_is_active((uv_handle_t*)&h->tick)) uv_run(&h->loop, UV_RUN_ONCE);
  uint64_t t_load = mono_ms();

  if (h->dstate == D_UP && h->phase == PH_STOP) {
    consume_all(h);
    h->dstate = D_STOPPING;
    uv_process_kill(&h->proc, SIGTERM);
    /* consume_all ran without the loop, for minutes after a long run: a
     * timer counts from the loop's cached time, which must be now. */
    uv_update_time(&h->loop);
    uv_timer_start(&h->tick, on_stop_timeout, 30000, 0);
  }
  while (h->proc_open) uv_run(&h->loop, UV_RUN_ONCE);
  uv_timer_stop(&h->tick);
  for (int i = 0; i < NCONN; i++) {
    conn_t* cn = &h->conns[i];
    if (cn->c != NULL && cn->state != C_CLOSING &&
        txmq_client_close(cn->c, on_conn_closed, cn) == 0)
      cn->state = C_CLOSING;
  }
  uv_close((uv_handle_t*)&h->tick, NULL);
  uv_close((uv_handle_t*)&h->kill_timer, NULL);
  for (int i = 0; i < NSIGS; i++) uv_close((uv_handle_t*)&h->sig[i], NULL);
  uv_run(&h->loop, UV_RUN_DEFAULT);
  if (uv_loop_close(&h->loop) != 0)
    fprintf(stderr, "fault_harness: the loop still has handles\n");

  int vrc = run_tool(h, "verify");
  if (vrc != 0)
    violation(h, NULL, 0, "`txmq log verify` of the data directory exit %d",
              vrc);
  scan_log(h);
  check_history(h);

  long msgs = 0;
  for (size_t s = 0; s < h->ntx; s++) msgs += h->tx[s].nmsgs;
  printf("fault: rounds=%d kills=%ld (during recovery %ld, during a clean "
         "shutdown %ld) SIGTERMs=%ld (clean exits %ld) starts=%ld "
         "seconds=%.1f (load %.1f)\n", h->round, h->kills, h->recovery_kills,
         h->term_kills, h->terms, h->clean_stops, h->starts,
         (double)(mono_ms() - t0) / 1e3, (double)(t_load - t0) / 1e3);
  printf("fault: decisions repeated=%ld (same answer %ld, pipelined %ld, in a"
         " later incarnation %ld, forgotten after a restart %ld),"
         " conflicting probes=%ld (refused %ld)\n", h->repeats, h->repeats_ok,
         h->pipelined, h->late_repeats, h->repeats_forgotten, h->probes,
         h->probes_refused);
  printf("fault: parked and resumed=%ld (a resume too early %ld), decided by"
         " an operator=%ld\n", h->parked_resumes, h->resume_not_parked,
         h->operator_decisions);
  printf("fault: audit histories read=%ld (forgotten after a restart %ld)\n",
         h->shows, h->shows_forgotten);
  printf("fault: checks answered by producers=%ld (commit %ld, rollback %ld, "
         "unknown %ld), by the hosted script=%ld\n", h->checks_seen,
         h->checks_answered[TXMQ_TX_COMMIT], h->checks_answered[TXMQ_TX_ROLLBACK],
         h->checks_answered[TXMQ_TX_UNKNOWN], h->script_checks);
  printf("fault: requests whose answer was lost=%ld (", h->uncertain_reqs);
  int first = 1;
  for (int k = 1; k < 32; k++)
    if (h->end_errors[k]) {
      printf("%s%s %ld", first ? "" : ", ", txmq_err_name(-k), h->end_errors[k]);
      first = 0;
    }
  printf(")\n");
  if (h->hosted_direct_pending)
    printf("fault: hosted transactions left pending by a slow script=%ld\n",
           h->hosted_direct_pending);
  printf("fault: messages sent=%ld consumed=%ld (redelivered %ld), by the "
         "live group=%ld (redelivered %ld)\n", msgs, h->consumed,
         h->redelivered, h->live_consumed, h->live_redelivered);
  printf("fault: producer connections dropped=%ld (the whole group gone for "
         "5-7 s %ld times), script rewrites=%ld\n", h->drops, h->group_gone,
         h->reloads);
  printf("fault: violations=%ld\n", h->violations);

  int bad = h->violations != 0 || h->phase != PH_DONE;
  if (!bad && !h->keep) {
    nftw(h->dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
  } else {
    printf("fault: work directory kept: %s (txmqd.log marks each "
           "incarnation)\n", h->dir);
  }
  free(h->tx);
  free(h->ms);
  free(h->later);
  free(h->late);
  free(h->parks);
  free(h);
  return bad ? 1 : 0;
}
