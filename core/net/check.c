/*
 * check.c - the server as a check target of the transaction engine: due
 * checks go to producer connections as "check" requests, and their answers
 * come back as the engine's check answers.
 *
 * Routing (PROTOCOL.md "check"): the live connection whose client id sent
 * the half message, if it announced the transaction's group in its hello;
 * else the other live connections that announced it, round robin; else
 * TXMQ_EAGAIN (the engine retries later and counts nothing). A connection
 * whose output is over its cap is not asked. After an error answer, the
 * same connection is not asked again about that transaction for a moment
 * if another member can be asked, so one broken member cannot keep a check
 * from the others.
 *
 * It does not time checks out: the engine does, and a late answer then
 * finds a stale sequence number (a definite late answer is still recorded
 * as a decision, as the runtime does for scripts).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "net/net_int.h"
#include "store/store_int.h"
#include "txmq/error.h"

static int avoided(const txmq_server_t* srv, const uint8_t* tx_id,
                   uint64_t cid, uint64_t now) {
  for (size_t i = 0; i < NET_AVOID_SLOTS; i++) {
    const net_avoid_t* a = &srv->avoid[i];
    if (a->cid == cid && a->until > now &&
        memcmp(a->tx_id, tx_id, TXMQ_TX_ID_LEN) == 0)
      return 1;
  }
  return 0;
}

static void avoid_add(txmq_server_t* srv, const uint8_t* tx_id, uint64_t cid) {
  net_avoid_t* a = &srv->avoid[srv->avoid_next];
  srv->avoid_next = (srv->avoid_next + 1) % NET_AVOID_SLOTS;
  memcpy(a->tx_id, tx_id, TXMQ_TX_ID_LEN);
  a->cid = cid;
  a->until = net__now(srv) + NET_AVOID_MS;
}

static net_conn_t* pick(txmq_server_t* srv, const txmq_tx_check_t* chk) {
  uint64_t now = net__now(srv);
  net_conn_t* origin = NULL;
  net_conn_t* after = NULL; /* lowest cid after the last one asked */
  net_conn_t* first = NULL; /* lowest cid */
  for (net_conn_t* c = srv->live; c != NULL; c = c->next) {
    if (!net__conn_usable(c) ||
        !net__has_group(c->pgroups, c->npgroups, chk->group) ||
        avoided(srv, chk->tx_id, c->cid, now))
      continue;
    if (origin == NULL && chk->producer != NULL &&
        strcmp(c->client, chk->producer) == 0)
      origin = c;
    if (c->cid > srv->rr_cid && (after == NULL || c->cid < after->cid))
      after = c;
    if (first == NULL || c->cid < first->cid) first = c;
  }
  if (origin != NULL) return origin;
  net_conn_t* c = after != NULL ? after : first;
  if (c != NULL) srv->rr_cid = c->cid;
  return c;
}

static void pcheck_unlink(net_conn_t* c, net_pcheck_t* p) {
  if (p->prev != NULL) p->prev->next = p->next;
  else c->checks = p->next;
  if (p->next != NULL) p->next->prev = p->prev;
  c->nchecks--;
}

int net__check_target(void* arg, txmq_tx_t* tx, const txmq_tx_check_t* chk) {
  (void)tx;
  txmq_server_t* srv = arg;
  if (!srv->started || srv->closing) return TXMQ_EAGAIN;
  net_conn_t* c = pick(srv, chk);
  if (c == NULL) return TXMQ_EAGAIN;

  net_pcheck_t* p = calloc(1, sizeof *p);
  if (p == NULL) return TXMQ_EAGAIN;
  p->sid = ++c->next_sid;
  memcpy(p->tx_id, chk->tx_id, TXMQ_TX_ID_LEN);
  p->seq = chk->seq;

  net_wbuf_t w;
  net__wb_init(&w);
  msgpack_pack_map(&w.pk, 8);
  net__pk_str(&w.pk, "op");
  net__pk_str(&w.pk, "check");
  net__pk_str(&w.pk, "id");
  msgpack_pack_uint64(&w.pk, p->sid);
  net__pk_str(&w.pk, "tx_id");
  net__pk_bin(&w.pk, chk->tx_id, TXMQ_TX_ID_LEN);
  net__pk_str(&w.pk, "group");
  net__pk_str(&w.pk, chk->group);
  net__pk_str(&w.pk, "producer");
  net__pk_str(&w.pk, chk->producer);
  net__pk_str(&w.pk, "check_count");
  msgpack_pack_uint32(&w.pk, chk->check_count);
  net__pk_str(&w.pk, "born");
  msgpack_pack_int64(&w.pk, chk->born_wall_ms);
  net__pk_str(&w.pk, "msgs");
  msgpack_pack_array(&w.pk, chk->nmsgs);
  for (size_t i = 0; i < chk->nmsgs; i++) {
    if (net__pk_msg_extra(&w, chk->msgs[i], NULL, 0) != 0) w.failed = 1;
  }
  if (w.failed) {
    net__wb_free(&w);
    free(p);
    return TXMQ_EAGAIN;
  }
  if (net__send(c, &w) != 0) {
    /* The connection is closing (its close failed the checks it owed);
     * this one never left. */
    free(p);
    return TXMQ_EAGAIN;
  }
  /* Linked only once sent: a failed send may close the connection, which
   * fails (and frees) every check on its list. */
  if (c->nchecks >= NET_MAX_PENDING_CHECKS) {
    /* Forget the oldest: the engine timed it out long ago. */
    net_pcheck_t* old = c->checks;
    while (old->next != NULL) old = old->next;
    pcheck_unlink(c, old);
    free(old);
  }
  p->next = c->checks;
  if (c->checks != NULL) c->checks->prev = p;
  c->checks = p;
  c->nchecks++;
  char hex[TXMQ_TX_ID_STRLEN + 1];
  net__log(srv, TXMQ_SERVER_LOG_DEBUG, "check sent",
           "tx=%s group=%s conn=%llu client=%s check_count=%u",
           txmq_tx_id_str(chk->tx_id, hex), chk->group,
           (unsigned long long)c->cid, c->client, chk->check_count);
  return 0;
}

void net__check_response(net_conn_t* c, const msgpack_object* resp) {
  txmq_server_t* srv = c->srv;
  const msgpack_object* re = net__field(resp, "re");
  net_pcheck_t* p = NULL;
  if (re->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
    for (p = c->checks; p != NULL && p->sid != re->via.u64; p = p->next) {
    }
  }
  if (p == NULL) {
    net__log(srv, TXMQ_SERVER_LOG_DEBUG, "response to no request",
             "conn=%llu client=%s", (unsigned long long)c->cid, c->client);
    return;
  }
  pcheck_unlink(c, p);
  char hex[TXMQ_TX_ID_STRLEN + 1];
  txmq_tx_id_str(p->tx_id, hex);

  const msgpack_object* ok = net__field(resp, "ok");
  const msgpack_object* dec = net__field(resp, "decision");
  txmq_tx_decision_t d = 0;
  if (ok != NULL && ok->type == MSGPACK_OBJECT_BOOLEAN && ok->via.boolean &&
      dec != NULL && dec->type == MSGPACK_OBJECT_STR) {
    const char* s = dec->via.str.ptr;
    size_t n = dec->via.str.size;
    if (n == 6 && memcmp(s, "commit", 6) == 0) d = TXMQ_TX_COMMIT;
    else if (n == 8 && memcmp(s, "rollback", 8) == 0) d = TXMQ_TX_ROLLBACK;
    else if (n == 7 && memcmp(s, "unknown", 7) == 0) d = TXMQ_TX_UNKNOWN;
  }
  if (d == 0) {
    /* An error answer, or one we cannot read: not a check; someone else
     * (or this one, later) is asked. */
    int is_err = ok != NULL && ok->type == MSGPACK_OBJECT_BOOLEAN &&
                 !ok->via.boolean;
    net__log(srv, TXMQ_SERVER_LOG_INFO,
             is_err ? "check answered with an error"
                    : "check answer without a valid decision",
             "tx=%s conn=%llu client=%s", hex, (unsigned long long)c->cid,
             c->client);
    avoid_add(srv, p->tx_id, c->cid);
    txmq_tx_check_failed(srv->tx, p->tx_id, p->seq);
    free(p);
    return;
  }
  int rc = txmq_tx_check_answer(srv->tx, p->tx_id, p->seq, d,
                                TXMQ_TX_SRC_CHECK, NULL, c->client);
  if (rc == TXMQ_ENOTFOUND && d != TXMQ_TX_UNKNOWN) {
    /* The check timed out before this answer came, or the transaction was
     * decided meanwhile. A definite answer is still the truth about the
     * producer's local transaction: record it, unless another decision
     * won, which the engine refuses. */
    rc = txmq_tx_end(srv->tx, p->tx_id, d, TXMQ_TX_SRC_CHECK, NULL, c->client,
                     NULL, NULL);
  }
  net__log(srv, TXMQ_SERVER_LOG_DEBUG, "check answered",
           "tx=%s conn=%llu client=%s decision=%s result=%s", hex,
           (unsigned long long)c->cid, c->client,
           d == TXMQ_TX_COMMIT ? "commit"
                               : d == TXMQ_TX_ROLLBACK ? "rollback" : "unknown",
           rc == 0 ? "ok" : txmq_err_name(rc));
  free(p);
}

void net__checks_fail_all(net_conn_t* c) {
  txmq_server_t* srv = c->srv;
  net_pcheck_t* p = c->checks;
  c->checks = NULL;
  c->nchecks = 0;
  while (p != NULL) {
    net_pcheck_t* next = p->next;
    txmq_tx_check_failed(srv->tx, p->tx_id, p->seq);
    free(p);
    p = next;
  }
}
