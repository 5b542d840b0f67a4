/*
 * runtime.c - the store, the transaction engine and the Lua handler host
 * put together on one loop (txmq/runtime.h).
 *
 * It provides the two wires between the engine and the handler host: the
 * runtime-hosted transaction (half, then executeLocalTransaction on a
 * worker, then the decision) and the script check target. It does not speak
 * to the network (txmqd adds its producer targets after open) and adds no
 * state of its own beyond the requests in flight.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/pool.h"
#include "txmq/error.h"
#include "txmq/runtime.h"

#define DIAG_MAX 512

struct txmq_runtime_s {
  uv_loop_t* loop;
  txmq_store_t* store;
  txmq_tx_t* tx;
  txmq_script_host_t* scripts;
  txmq_tx_target_t script_target;
  txmq__pool_t hosted_pool; /* hosted_t */
  int opened;          /* open completed */
  int store_open;      /* a failed open may leave the store open */
  int closing;
  void (*close_cb)(txmq_runtime_t* rt, void* arg);
  void* close_arg;
  char diag[DIAG_MAX];
};

/* Producer names up to this long are kept inline in hosted_t. */
#define PRODUCER_INLINE 64

/* One runtime-hosted transaction, from txmq_runtime_tx_send to its cb. Made
 * once per request: short producer names and a one-message transaction's
 * message id are kept inline, and it comes from the runtime's pool. */
typedef struct {
  txmq_runtime_t* rt;
  txmq_runtime_tx_cb cb;
  void* cbarg;
  char group[TXMQ_NAME_MAX + 1];
  char* producer; /* NULL, producer_buf or malloc()ed */
  char producer_buf[PRODUCER_INLINE];
  void* arg;
  size_t arg_len;
  uint8_t tx_id[TXMQ_TX_ID_LEN];
  uint8_t* msg_ids; /* msg_id1 for one message */
  uint8_t msg_id1[TXMQ_MSG_ID_LEN];
  size_t nmsgs;
  char version[TXMQ_SCRIPT_VERSION_LEN + 1];
  char diag[DIAG_MAX];
} hosted_t;

/* One check given to a script. */
typedef struct {
  txmq_runtime_t* rt;
  uint8_t tx_id[TXMQ_TX_ID_LEN];
  uint64_t seq;
} script_check_t;

static txmq_tx_decision_t decision_of(int status, txmq_script_result_t r) {
  if (status != 0) return TXMQ_TX_UNKNOWN;
  switch (r) {
    case TXMQ_SCRIPT_COMMIT: return TXMQ_TX_COMMIT;
    case TXMQ_SCRIPT_ROLLBACK: return TXMQ_TX_ROLLBACK;
    default: return TXMQ_TX_UNKNOWN;
  }
}

static void hosted_free(hosted_t* h) {
  if (h->producer != h->producer_buf) free(h->producer);
  free(h->arg);
  if (h->msg_ids != h->msg_id1) free(h->msg_ids);
  txmq__pool_put(&h->rt->hosted_pool, h);
}

static void hosted_finish(hosted_t* h, int status, txmq_tx_state_t state) {
  h->cb(h->rt, status, h->tx_id, h->msg_ids, h->nmsgs, state, h->version,
        h->diag, h->cbarg);
  hosted_free(h);
}

/* The state of a transaction the engine refused to decide (for example a
 * check decided it first): what the caller should be told. */
static txmq_tx_state_t current_state(txmq_runtime_t* rt, const uint8_t* id) {
  txmq_tx_info_t info;
  /* show fills info as soon as it knows the transaction, before it reads
   * the history: TXMQ_EAGAIN (the decision that won is accepted but not yet
   * written) or a history read error still leave the state right. */
  int rc = txmq_tx_show(rt->tx, id, &info, NULL, NULL);
  if (rc != TXMQ_ENOTFOUND && rc != TXMQ_EINVAL) return info.state;
  return TXMQ_TX_PENDING;
}

static void on_hosted_end(txmq_tx_t* tx, int status, txmq_tx_state_t state,
                          void* arg) {
  (void)tx;
  hosted_finish(arg, status, state);
}

static void record_decision(hosted_t* h, txmq_tx_decision_t d) {
  const char* ver = h->version[0] != '\0' ? h->version : NULL;
  int rc = txmq_tx_end(h->rt->tx, h->tx_id, d, TXMQ_TX_SRC_SCRIPT, ver,
                       h->producer, on_hosted_end, h);
  if (rc != 0) {
    /* Not recorded (e.g. a check decided first, or the engine is closing):
     * report what the transaction is now; checks settle the rest. */
    if (h->diag[0] == '\0') {
      snprintf(h->diag, sizeof h->diag, "decision not recorded: %s",
               txmq_strerror(rc));
    }
    hosted_finish(h, rc, current_state(h->rt, h->tx_id));
  }
}

static void on_execute(txmq_script_host_t* host, int status,
                       txmq_script_result_t result, const char* version,
                       const char* diag, void* arg) {
  (void)host;
  hosted_t* h = arg;
  /* Once per request: a copy, not snprintf (which showed in profiles). */
  size_t vn = version != NULL ? strnlen(version, sizeof h->version - 1) : 0;
  if (vn > 0) memcpy(h->version, version, vn);
  h->version[vn] = '\0';
  if (status != 0) {
    snprintf(h->diag, sizeof h->diag, "%s",
             diag != NULL && diag[0] != '\0' ? diag : txmq_strerror(status));
  }
  if (status == TXMQ_ECLOSED || status == TXMQ_ENOTFOUND) {
    /* executeLocalTransaction never ran (the host closed first, or the
     * script was gone): nobody answered, so nothing goes into the audit
     * trail; the transaction is pending and checks decide it. */
    hosted_finish(h, 0, TXMQ_TX_PENDING);
    return;
  }
  record_decision(h, decision_of(status, result));
}

static void on_half(txmq_tx_t* tx, int status, const uint8_t* tx_id,
                    const txmq_msg_t* const* msgs, size_t nmsgs, void* arg) {
  (void)tx;
  hosted_t* h = arg;
  if (status != 0) {
    h->cb(h->rt, status, NULL, NULL, 0, TXMQ_TX_PENDING, "",
          txmq_strerror(status), h->cbarg);
    hosted_free(h);
    return;
  }
  memcpy(h->tx_id, tx_id, TXMQ_TX_ID_LEN);
  h->msg_ids = nmsgs == 1 ? h->msg_id1 : malloc(nmsgs * TXMQ_MSG_ID_LEN);
  if (h->msg_ids != NULL) {
    for (size_t i = 0; i < nmsgs; i++) {
      memcpy(h->msg_ids + i * TXMQ_MSG_ID_LEN, txmq_msg_id(msgs[i]),
             TXMQ_MSG_ID_LEN);
    }
    h->nmsgs = nmsgs;
  }
  int rc = txmq_script_execute(h->rt->scripts, h->group, tx_id, msgs, nmsgs,
                               h->arg, h->arg_len, on_execute, h);
  if (rc != 0) {
    /* The half is durable but the handler cannot run (closing, or the
     * script vanished): leave the decision to checks, as RocketMQ does for
     * a local transaction that threw. Nothing answered, so nothing is
     * recorded in the audit trail. */
    snprintf(h->diag, sizeof h->diag, "executeLocalTransaction not run: %s",
             txmq_strerror(rc));
    hosted_finish(h, 0, TXMQ_TX_PENDING);
  }
}

static int tx_send(txmq_runtime_t* rt, const char* group,
                   const char* producer, txmq_msg_t* const* msgs, size_t n,
                   const void* arg, size_t arg_len, int64_t immunity_ms,
                   txmq_runtime_tx_cb cb, void* cbarg, int take) {
  if (rt == NULL || group == NULL || cb == NULL) return TXMQ_EINVAL;
  if (!rt->opened || rt->closing) return TXMQ_ECLOSED;
  if (!txmq_name_valid(group)) return TXMQ_EBADNAME;
  if (!txmq_script_has_group(rt->scripts, group)) return TXMQ_ENOTFOUND;
  hosted_t* h = txmq__pool_get(&rt->hosted_pool);
  if (h == NULL) return TXMQ_ENOMEM;
  h->rt = rt;
  h->cb = cb;
  h->cbarg = cbarg;
  memcpy(h->group, group, strlen(group) + 1); /* a valid name fits */
  if (producer != NULL) {
    size_t n = strlen(producer) + 1;
    h->producer = n <= sizeof h->producer_buf ? h->producer_buf : malloc(n);
    if (h->producer != NULL) memcpy(h->producer, producer, n);
  }
  if (arg != NULL && arg_len > 0) {
    h->arg = malloc(arg_len);
    if (h->arg != NULL) memcpy(h->arg, arg, arg_len);
    h->arg_len = arg_len;
  }
  if ((producer != NULL && h->producer == NULL) ||
      (arg_len > 0 && arg != NULL && h->arg == NULL)) {
    hosted_free(h);
    return TXMQ_ENOMEM;
  }
  int rc = take ? txmq_tx_begin_take(rt->tx, group, producer, msgs, n,
                                     immunity_ms, on_half, h)
                : txmq_tx_begin(rt->tx, group, producer, msgs, n, immunity_ms,
                                on_half, h);
  if (rc != 0) hosted_free(h);
  return rc;
}

int txmq_runtime_tx_send(txmq_runtime_t* rt, const char* group,
                         const char* producer, txmq_msg_t* const* msgs,
                         size_t n, const void* arg, size_t arg_len,
                         int64_t immunity_ms, txmq_runtime_tx_cb cb,
                         void* cbarg) {
  return tx_send(rt, group, producer, msgs, n, arg, arg_len, immunity_ms, cb,
                 cbarg, 0);
}

int txmq_runtime_tx_send_take(txmq_runtime_t* rt, const char* group,
                              const char* producer, txmq_msg_t* const* msgs,
                              size_t n, const void* arg, size_t arg_len,
                              int64_t immunity_ms, txmq_runtime_tx_cb cb,
                              void* cbarg) {
  return tx_send(rt, group, producer, msgs, n, arg, arg_len, immunity_ms, cb,
                 cbarg, 1);
}

/* ---- the script check target ---- */

static void on_script_check(txmq_script_host_t* host, int status,
                            txmq_script_result_t result, const char* version,
                            const char* diag, void* arg) {
  (void)host;
  (void)diag; /* the host already logged it with path, version and line */
  script_check_t* c = arg;
  if (status == TXMQ_ECLOSED || status == TXMQ_ENOTFOUND) {
    /* checkLocalTransaction never ran: the host closed before it got to
     * it, or the group's script was gone when it was loaded. Nobody
     * answered, so this is not a check: hand it back to the engine, which
     * offers it again (to the next targets) without counting it. */
    txmq_tx_check_failed(c->rt->tx, c->tx_id, c->seq);
    free(c);
    return;
  }
  txmq_tx_decision_t d = decision_of(status, result);
  const char* ver = version != NULL && version[0] != '\0' ? version : NULL;
  int rc = txmq_tx_check_answer(c->rt->tx, c->tx_id, c->seq, d,
                                TXMQ_TX_SRC_SCRIPT, ver, "script");
  if (rc == TXMQ_ENOTFOUND && d != TXMQ_TX_UNKNOWN) {
    /* The check timed out (or the transaction was decided) before the
     * script answered. A definite answer is still the truth about the local
     * transaction: record it as a decision. If another decision won in the
     * meantime the engine refuses this one, which is what we want. */
    txmq_tx_end(c->rt->tx, c->tx_id, d, TXMQ_TX_SRC_SCRIPT, ver, "script",
                NULL, NULL);
  } else if (rc != 0 && rc != TXMQ_ENOTFOUND) {
    /* The engine could not take the answer now (for example the log is
     * full of unwritten data: EAGAIN). Dropping it would let the check
     * time out and count; hand it back so it is asked again, uncounted. */
    txmq_tx_check_failed(c->rt->tx, c->tx_id, c->seq);
  }
  free(c);
}

static int script_target_check(void* arg, txmq_tx_t* tx,
                               const txmq_tx_check_t* check) {
  (void)tx;
  txmq_runtime_t* rt = arg;
  if (rt->closing || !txmq_script_has_group(rt->scripts, check->group)) {
    return TXMQ_EAGAIN;
  }
  script_check_t* c = malloc(sizeof *c);
  if (c == NULL) return TXMQ_EAGAIN;
  c->rt = rt;
  memcpy(c->tx_id, check->tx_id, TXMQ_TX_ID_LEN);
  c->seq = check->seq;
  int rc = txmq_script_check(rt->scripts, check->group, check->tx_id,
                             check->msgs, check->nmsgs, check->check_count,
                             on_script_check, c);
  if (rc != 0) {
    free(c);
    return TXMQ_EAGAIN;
  }
  return 0;
}

/* ---- life cycle ---- */

int txmq_runtime_new(txmq_runtime_t** out, uv_loop_t* loop,
                     const char* data_dir, const char* scripts_dir) {
  if (out == NULL || loop == NULL || data_dir == NULL || scripts_dir == NULL) {
    return TXMQ_EINVAL;
  }
  *out = NULL;
  txmq_runtime_t* rt = calloc(1, sizeof *rt);
  if (rt == NULL) return TXMQ_ENOMEM;
  rt->loop = loop;
  txmq__pool_init(&rt->hosted_pool, sizeof(hosted_t), 1024);
  int rc = txmq_store_new(&rt->store, loop, data_dir);
  if (rc == 0) rc = txmq_tx_new(&rt->tx, loop, rt->store);
  if (rc == 0) rc = txmq_script_host_new(&rt->scripts, loop, scripts_dir);
  if (rc != 0) {
    txmq_runtime_free(rt);
    return rc;
  }
  rt->script_target.name = "script";
  rt->script_target.check = script_target_check;
  *out = rt;
  return 0;
}

txmq_store_t* txmq_runtime_store(txmq_runtime_t* rt) { return rt->store; }
txmq_tx_t* txmq_runtime_tx(txmq_runtime_t* rt) { return rt->tx; }
txmq_script_host_t* txmq_runtime_scripts(txmq_runtime_t* rt) {
  return rt->scripts;
}
const char* txmq_runtime_diag(const txmq_runtime_t* rt) { return rt->diag; }

int txmq_runtime_open(txmq_runtime_t* rt) {
  if (rt == NULL) return TXMQ_EINVAL;
  if (rt->opened || rt->closing) return TXMQ_EBUSY;
  /* The script target goes first: a group whose script is loaded answers
   * its own checks; the others fall through to later targets. */
  int rc = txmq_tx_add_target(rt->tx, &rt->script_target, rt);
  if (rc != 0) return rc;
  rc = txmq_store_open(rt->store);
  if (rc != 0) {
    snprintf(rt->diag, sizeof rt->diag, "store: %s: %s", txmq_strerror(rc),
             txmq_store_diag(rt->store));
    return rc;
  }
  rt->store_open = 1;
  rc = txmq_tx_start(rt->tx);
  if (rc != 0) {
    snprintf(rt->diag, sizeof rt->diag, "transactions: %s", txmq_strerror(rc));
    return rc;
  }
  rc = txmq_script_host_start(rt->scripts);
  if (rc != 0) {
    snprintf(rt->diag, sizeof rt->diag, "scripts: %s", txmq_strerror(rc));
    return rc;
  }
  rt->opened = 1;
  return 0;
}

static void on_store_closed(txmq_store_t* st, int status, void* arg) {
  (void)st;
  txmq_runtime_t* rt = arg;
  if (status != 0) {
    snprintf(rt->diag, sizeof rt->diag, "store close: %s: %s",
             txmq_strerror(status), txmq_store_diag(rt->store));
  }
  if (rt->close_cb != NULL) rt->close_cb(rt, rt->close_arg);
}

static void on_tx_closed(txmq_tx_t* tx, void* arg) {
  (void)tx;
  txmq_runtime_t* rt = arg;
  if (!rt->store_open ||
      txmq_store_close(rt->store, on_store_closed, rt) != 0) {
    if (rt->close_cb != NULL) rt->close_cb(rt, rt->close_arg);
  }
}

static void on_scripts_closed(txmq_script_host_t* host, void* arg) {
  (void)host;
  txmq_runtime_t* rt = arg;
  if (txmq_tx_close(rt->tx, on_tx_closed, rt) != 0) on_tx_closed(rt->tx, rt);
}

int txmq_runtime_close(txmq_runtime_t* rt,
                       void (*cb)(txmq_runtime_t* rt, void* arg), void* arg) {
  if (rt == NULL) return TXMQ_EINVAL;
  if (rt->closing) return TXMQ_ECLOSED;
  rt->closing = 1;
  rt->close_cb = cb;
  rt->close_arg = arg;
  /* Handlers first: their answers still become decisions in the engine,
   * whose records the store's close then flushes. The host is closed even
   * if it never started: it holds loop handles from txmq_script_host_new.
   * After a failed open the store is closed only if it opened. */
  if (txmq_script_host_close(rt->scripts, on_scripts_closed, rt) != 0) {
    on_scripts_closed(rt->scripts, rt);
  }
  return 0;
}

void txmq_runtime_free(txmq_runtime_t* rt) {
  if (rt == NULL) return;
  txmq_script_host_free(rt->scripts);
  txmq_tx_free(rt->tx);
  txmq_store_free(rt->store);
  txmq__pool_drain(&rt->hosted_pool);
  free(rt);
}
