/*
 * ops.c - the request operations of PROTOCOL.md section 5 (except those of
 * consumers, in consume.c): hello, ping, send, tx.half, tx.end, tx.send,
 * status, tx.list, tx.show, tx.resume, tx.decide, reload, topic.create; the
 * hello's authentication and the roles allowed each operation (txmq/net.h,
 * AUTHENTICATION).
 *
 * Each operation reads its fields with the checked getters of wire.c, calls
 * the runtime and answers exactly once: at once, or from the runtime's
 * callback. An operation returns 0 when it has answered or will answer (and
 * then calls net__done), or a TXMQ_E* code with a sentence in err, which the
 * dispatcher sends as the error response. It does not read sockets or
 * decode frames (server.c).
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "net/net_int.h"
#include "store/store_int.h"
#include "txmq/error.h"

typedef net_req_t req_t;

/* From the server's pool: hundreds are outstanding at once under load. */
static req_t* req_new(net_conn_t* c, uint64_t id) {
  req_t* r = txmq__pool_get(&c->srv->req_pool);
  if (r != NULL) {
    r->c = c;
    r->id = id;
  }
  return r;
}

/* Takes the server first: the connection may be gone after net__done. The
 * server outlives every callback (the runtime closes before
 * txmq_server_free, net.h). */
static void req_free(txmq_server_t* srv, req_t* r) {
  txmq__pool_put(&srv->req_pool, r);
}

static void req_fail(req_t* r, int code, const char* msg) {
  txmq_server_t* srv = r->c->srv;
  net__send_error(r->c, r->id, code, msg);
  net__done(r->c);
  req_free(srv, r);
}

/* req_fail with the message formatted into a local buffer. */
static void req_failf(req_t* r, int code, const char* fmt, ...) {
  char msg[NET_ERR_MAX];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  req_fail(r, code, msg);
}

static void req_send(req_t* r, net_wbuf_t* w) {
  txmq_server_t* srv = r->c->srv;
  net__send(r->c, w);
  net__done(r->c);
  req_free(srv, r);
}

/* Sends an operation's response at once: the operation has answered. */
static int answer(net_conn_t* c, net_wbuf_t* w) {
  net__send(c, w);
  net__done(c);
  return 0;
}

/* Copies up to 64 bytes of a client's string for an error message, with
 * anything unprintable (or a quote) as '?'. */
static void printable(char* out, size_t outlen, const char* p, size_t n) {
  size_t k = 0;
  for (size_t i = 0; i < n && k + 4 < outlen && i < 64; i++) {
    unsigned char ch = (unsigned char)p[i];
    out[k++] = ch >= 0x20 && ch < 0x7f && ch != '"' && ch != '\\' ? (char)ch
                                                                    : '?';
  }
  if (n > 64 && k + 4 < outlen) {
    memcpy(out + k, "...", 3);
    k += 3;
  }
  out[k] = '\0';
}

static int no_memory(char* err) {
  return net__errf(err, TXMQ_ENOMEM, "out of memory");
}

/* ---- hello ---- */

static const char* const ROLE_NAMES[NET_NROLES] = {"-", "producer", "consumer",
                                                   "admin"};

/* Whether got[0..glen) equals the configured secret want[0..wlen). The
 * time it takes depends on wlen only, never on the bytes or on where they
 * differ, so that a client cannot find a secret byte by byte by timing its
 * refusals. */
static int secret_equal(const char* want, size_t wlen, const char* got,
                        size_t glen) {
  volatile unsigned char diff = wlen != glen;
  for (size_t i = 0; i < wlen; i++) {
    unsigned char g = i < glen ? (unsigned char)got[i] : 0;
    diff |= (unsigned char)((unsigned char)want[i] ^ g);
  }
  return diff == 0;
}

/* With auth on: 0 when the hello carries the secret of the role it claims
 * or the admin secret; else TXMQ_EAUTH with a sentence in err and a short
 * reason for the log in *why. Neither ever holds a secret. */
static int authenticate(const txmq_server_t* srv, const msgpack_object* m,
                        int role, char* err, const char** why) {
  const msgpack_object* v = net__field(m, "secret");
  const char* p = NULL;
  size_t n = 0;
  if (v != NULL && v->type == MSGPACK_OBJECT_STR) {
    p = v->via.str.ptr;
    n = v->via.str.size;
  }
  /* Both comparisons always run: the time does not tell which matched. */
  int own = 0, adm = 0;
  if (p != NULL && srv->secrets[role] != NULL)
    own = secret_equal(srv->secrets[role], srv->secret_len[role], p, n);
  if (p != NULL && srv->secrets[ROLE_ADMIN] != NULL)
    adm = secret_equal(srv->secrets[ROLE_ADMIN], srv->secret_len[ROLE_ADMIN],
                       p, n);
  if (own || adm) return 0;
  const char* name = ROLE_NAMES[role];
  if (srv->secrets[role] == NULL) {
    *why = "role has no secret";
    return net__errf(err, TXMQ_EAUTH,
                     "authentication failed: role \"%s\" has no secret on "
                     "this server; only the admin secret is accepted for it",
                     name);
  }
  if (p == NULL) {
    *why = v == NULL ? "missing secret" : "secret not a string";
    return net__errf(err, TXMQ_EAUTH,
                     "authentication failed: role \"%s\" needs its secret "
                     "(a string in field 'secret')", name);
  }
  *why = "wrong secret";
  return net__errf(err, TXMQ_EAUTH,
                   "authentication failed: wrong secret for role \"%s\"",
                   name);
}

static int client_id_valid(const char* p, size_t n) {
  if (n == 0 || n > NET_CLIENT_MAX) return 0;
  for (size_t i = 0; i < n; i++) {
    char ch = p[i];
    if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
          (ch >= '0' && ch <= '9') || ch == '.' || ch == '_' || ch == ':' ||
          ch == '-'))
      return 0;
  }
  return 1;
}

static void groups_free(char** g, size_t n) {
  for (size_t i = 0; i < n; i++) free(g[i]);
  free(g);
}

static int get_groups(const msgpack_object* m, const char* key, char*** out,
                      size_t* n, char* err) {
  *out = NULL;
  *n = 0;
  const msgpack_object* v = net__field(m, key);
  if (v == NULL) return 0;
  if (v->type != MSGPACK_OBJECT_ARRAY)
    return net__errf(err, TXMQ_EPROTO, "field '%s' must be an array of strings",
                     key);
  if (v->via.array.size > NET_MAX_HELLO_GROUPS)
    return net__errf(err, TXMQ_ERANGE, "field '%s' has more than %d groups", key,
                     NET_MAX_HELLO_GROUPS);
  char** g = calloc(v->via.array.size + 1, sizeof *g);
  if (g == NULL) return no_memory(err);
  size_t k = 0;
  for (uint32_t i = 0; i < v->via.array.size; i++) {
    const msgpack_object* e = &v->via.array.ptr[i];
    char name[TXMQ_NAME_MAX + 1];
    if (e->type != MSGPACK_OBJECT_STR ||
        !net__name_copy(e->via.str.ptr, e->via.str.size, name)) {
      groups_free(g, k);
      return net__errf(err, TXMQ_EBADNAME,
                       "field '%s' entry %u is not a valid group name", key,
                       (unsigned)i + 1);
    }
    if (net__has_group(g, k, name)) continue;
    if ((g[k] = strdup(name)) == NULL) {
      groups_free(g, k);
      return no_memory(err);
    }
    k++;
  }
  *out = g;
  *n = k;
  return 0;
}

static int op_hello(net_conn_t* c, uint64_t id, const msgpack_object* m,
                    char* err) {
  txmq_server_t* srv = c->srv;
  if (c->state != C_HELLO)
    return net__errf(err, TXMQ_EPROTO, "'hello' was already accepted on this "
                                       "connection");
  int64_t version;
  const char* cl;
  size_t cllen;
  const char* role;
  size_t rolelen;
  char** pg = NULL;
  char** cg = NULL;
  size_t npg = 0, ncg = 0;
  int r = 0;
  int rc = net__get_int(m, "version", 1, INT64_MIN, INT64_MAX, &version, err);
  if (rc == 0 && version != TXMQ_PROTOCOL_VERSION) {
    rc = net__errf(err, TXMQ_EPROTO,
                   "protocol version %lld is not supported; this server "
                   "speaks version %d", (long long)version,
                   TXMQ_PROTOCOL_VERSION);
  }
  if (rc == 0) rc = net__get_str(m, "client", 1, 1024, &cl, &cllen, err);
  if (rc == 0 && !client_id_valid(cl, cllen)) {
    rc = net__errf(err, TXMQ_EBADNAME,
                   "field 'client' must be 1-127 bytes of [A-Za-z0-9._:-]");
  }
  if (rc == 0) rc = net__get_str(m, "role", 1, 64, &role, &rolelen, err);
  if (rc == 0) {
    if (rolelen == 8 && memcmp(role, "producer", 8) == 0) r = ROLE_PRODUCER;
    else if (rolelen == 8 && memcmp(role, "consumer", 8) == 0) r = ROLE_CONSUMER;
    else if (rolelen == 5 && memcmp(role, "admin", 5) == 0) r = ROLE_ADMIN;
    else
      rc = net__errf(err, TXMQ_EPROTO,
                     "field 'role' must be \"producer\", \"consumer\" or "
                     "\"admin\"");
  }
  const char* why = NULL;
  if (rc == 0 && srv->auth) rc = authenticate(srv, m, r, err, &why);
  if (rc == 0) rc = get_groups(m, "producer_groups", &pg, &npg, err);
  if (rc == 0 && srv->auth && r == ROLE_CONSUMER && npg > 0) {
    /* Answering checks decides transactions: a producer's job. */
    rc = net__errf(err, TXMQ_EPROTO,
                   "field 'producer_groups' needs role \"producer\" or "
                   "\"admin\" (only they answer checks)");
  }
  if (rc == 0) rc = get_groups(m, "consumer_groups", &cg, &ncg, err);
  if (rc != 0) {
    groups_free(pg, npg);
    /* A failed handshake ends the connection: nothing else may follow. */
    if (rc == TXMQ_EAUTH) {
      srv->auth_failures++;
      /* The client id and role were checked before the secret. */
      net__log(srv, TXMQ_SERVER_LOG_WARN, "authentication failed",
               "conn=%llu peer=%s client=%.*s role=%s reason=\"%s\"",
               (unsigned long long)c->cid, c->peer, (int)cllen, cl,
               ROLE_NAMES[r], why);
    } else {
      srv->protocol_errors++;
    }
    net__send_error(c, id, rc, err);
    net__close(c, 1, "handshake failed");
    net__done(c);
    return 0;
  }
  memcpy(c->client, cl, cllen);
  c->client[cllen] = '\0';
  c->role = r;
  c->pgroups = pg;
  c->npgroups = npg;
  c->cgroups = cg;
  c->ncgroups = ncg;
  c->state = C_READY;

  net_wbuf_t w;
  net__wb_init(&w);
  net__resp_begin(&w, id, 5);
  net__pk_str(&w.pk, "version");
  msgpack_pack_int(&w.pk, TXMQ_PROTOCOL_VERSION);
  net__pk_str(&w.pk, "server");
  net__pk_str(&w.pk, srv->name);
  net__pk_str(&w.pk, "max_frame");
  msgpack_pack_uint32(&w.pk, srv->max_frame);
  net__pk_str(&w.pk, "max_inflight");
  msgpack_pack_uint64(&w.pk, srv->max_inflight);
  net__pk_str(&w.pk, "heartbeat_ms");
  msgpack_pack_uint64(&w.pk, srv->heartbeat_ms);
  net__send(c, &w);

  char groups[256];
  size_t k = 0;
  groups[0] = '\0';
  for (size_t i = 0; i < npg && k + 2 < sizeof groups; i++)
    k += (size_t)snprintf(groups + k, sizeof groups - k, "%s%s", i ? "," : "",
                          pg[i]);
  net__log(srv, TXMQ_SERVER_LOG_INFO, "hello",
           "conn=%llu peer=%s client=%s role=%s producer_groups=%s",
           (unsigned long long)c->cid, c->peer, c->client, ROLE_NAMES[r],
           groups[0] ? groups : "-");
  /* Checks of these groups that found nobody may go out now. */
  for (size_t i = 0; i < npg; i++) txmq_tx_kick_group(srv->tx, pg[i]);
  net__done(c);
  return 0;
}

/* ---- ping ---- */

static int op_ping(net_conn_t* c, uint64_t id, const msgpack_object* m,
                   char* err) {
  (void)m;
  (void)err;
  net_wbuf_t w;
  net__wb_init(&w);
  net__resp_begin(&w, id, 1);
  net__pk_str(&w.pk, "time");
  msgpack_pack_int64(&w.pk, txmq__now_ms());
  return answer(c, &w);
}

/* ---- send ---- */

static void on_put(txmq_store_t* st, int status, const txmq_msg_t* msg,
                   void* arg) {
  (void)st;
  req_t* r = arg;
  if (status != 0) {
    req_failf(r, status, "message not stored: %s", txmq_strerror(status));
    return;
  }
  net_wbuf_t w;
  net__wb_init(&w);
  net__resp_begin(&w, r->id, 3);
  net__pk_str(&w.pk, "msg_id");
  net__pk_bin(&w.pk, txmq_msg_id(msg), TXMQ_MSG_ID_LEN);
  net__pk_str(&w.pk, "qid");
  msgpack_pack_int32(&w.pk, txmq_msg_queue_id(msg));
  net__pk_str(&w.pk, "qoff");
  msgpack_pack_int64(&w.pk, txmq_msg_queue_offset(msg));
  req_send(r, &w);
}

static int op_send(net_conn_t* c, uint64_t id, const msgpack_object* m,
                   char* err) {
  txmq_msg_t* msg;
  int rc = net__get_msg(m, "msg", &msg, err);
  if (rc != 0) return rc;
  req_t* r = req_new(c, id);
  if (r == NULL) {
    txmq_msg_free(msg);
    return no_memory(err);
  }
  rc = txmq_store_put(c->srv->st, msg, on_put, r);
  txmq_msg_free(msg);
  if (rc != 0) {
    req_free(c->srv, r);
    /* ERANGE is the topic limit: the store's diagnostic names it. */
    return net__errf(err, rc, "message not stored: %s",
                     rc == TXMQ_ERANGE ? txmq_store_diag(c->srv->st)
                                       : txmq_strerror(rc));
  }
  return 0;
}

/* ---- transactions ---- */

#define MAX_IMMUNITY_MS (INT64_C(1) << 40)

static void pk_msg_ids(msgpack_packer* pk, const uint8_t* ids, size_t n) {
  msgpack_pack_array(pk, n);
  for (size_t i = 0; i < n; i++)
    net__pk_bin(pk, ids + i * TXMQ_MSG_ID_LEN, TXMQ_MSG_ID_LEN);
}

static void on_begin(txmq_tx_t* tx, int status, const uint8_t* tx_id,
                     const txmq_msg_t* const* msgs, size_t nmsgs, void* arg) {
  (void)tx;
  req_t* r = arg;
  if (status != 0) {
    req_failf(r, status, "half messages not stored: %s", txmq_strerror(status));
    return;
  }
  net_wbuf_t w;
  net__wb_init(&w);
  net__resp_begin(&w, r->id, 2);
  net__pk_str(&w.pk, "tx_id");
  net__pk_bin(&w.pk, tx_id, TXMQ_TX_ID_LEN);
  net__pk_str(&w.pk, "msg_ids");
  msgpack_pack_array(&w.pk, nmsgs);
  for (size_t i = 0; i < nmsgs; i++)
    net__pk_bin(&w.pk, txmq_msg_id(msgs[i]), TXMQ_MSG_ID_LEN);
  req_send(r, &w);
}

/* Why txmq_tx_begin (directly or through the runtime) refused: a limit
 * named by the engine's diagnostic, or the code's sentence. */
static const char* tx_refusal(txmq_server_t* srv, int rc) {
  const char* d = txmq_tx_diag(srv->tx);
  return rc == TXMQ_ERANGE && d[0] != '\0' ? d : txmq_strerror(rc);
}

/* The fields tx.half and tx.send share: the producer group, the optional
 * check-immunity delay and 1..TXMQ_TX_MAX_MSGS messages (in msgs, the
 * caller's on success). */
static int get_tx_request(const msgpack_object* m, char* group,
                          int64_t* immunity, txmq_msg_t** msgs, size_t* n,
                          char* err) {
  int rc = net__get_name(m, "group", 1, group, err);
  if (rc == 0) {
    rc = net__get_int(m, "immunity_ms", 0, 0, MAX_IMMUNITY_MS, immunity, err);
    if (rc == 1) rc = 0;
  }
  if (rc != 0) return rc;
  return net__get_msgs(m, "msgs", TXMQ_TX_MAX_MSGS, msgs, n, err);
}

static int op_tx_half(net_conn_t* c, uint64_t id, const msgpack_object* m,
                      char* err) {
  char group[TXMQ_NAME_MAX + 1];
  int64_t immunity = 0;
  txmq_msg_t* msgs[TXMQ_TX_MAX_MSGS];
  size_t n;
  int rc = get_tx_request(m, group, &immunity, msgs, &n, err);
  if (rc != 0) return rc;
  req_t* r = req_new(c, id);
  if (r == NULL) {
    net__msgs_free(msgs, n);
    return no_memory(err);
  }
  /* Handed over: the engine keeps the decoded messages, no copies. */
  rc = txmq_tx_begin_take(c->srv->tx, group, c->client, msgs, n, immunity,
                          on_begin, r);
  if (rc != 0) {
    net__msgs_free(msgs, n);
    req_free(c->srv, r);
    return net__errf(err, rc, "half messages not stored: %s",
                     tx_refusal(c->srv, rc));
  }
  return 0;
}

static int parse_decision(const msgpack_object* m, txmq_tx_decision_t* d,
                          char* err) {
  const msgpack_object* v = net__field(m, "decision");
  if (v == NULL) return net__errf(err, TXMQ_EPROTO, "field 'decision' is missing");
  if (v->type == MSGPACK_OBJECT_STR) {
    const char* p = v->via.str.ptr;
    size_t n = v->via.str.size;
    if (n == 6 && memcmp(p, "commit", 6) == 0) *d = TXMQ_TX_COMMIT;
    else if (n == 8 && memcmp(p, "rollback", 8) == 0) *d = TXMQ_TX_ROLLBACK;
    else if (n == 7 && memcmp(p, "unknown", 7) == 0) *d = TXMQ_TX_UNKNOWN;
    else n = 0;
    if (n != 0) return 0;
  }
  return net__errf(err, TXMQ_EPROTO,
                   "field 'decision' must be \"commit\", \"rollback\" or "
                   "\"unknown\"");
}

static void on_end(txmq_tx_t* tx, int status, txmq_tx_state_t state,
                   void* arg) {
  (void)tx;
  req_t* r = arg;
  if (status != 0 && state == TXMQ_TX_COMMITTED) {
    /* The COMMIT is durable, but its messages could not be published (a
     * half record that does not decode): the caller must not read this as
     * "not recorded" and try again. */
    req_failf(r, status, "committed, but its messages could not be "
              "published: %s", txmq_strerror(status));
    return;
  }
  if (status != 0) {
    req_failf(r, status, "decision not recorded: %s", txmq_strerror(status));
    return;
  }
  net_wbuf_t w;
  net__wb_init(&w);
  net__resp_begin(&w, r->id, 1);
  net__pk_str(&w.pk, "state");
  net__pk_str(&w.pk, txmq_tx_state_name(state));
  req_send(r, &w);
}

/* The sentence for a refused decision or resume, naming the state. */
static int tx_refused(txmq_tx_t* tx, const uint8_t* id, int rc, char* err) {
  char hex[TXMQ_TX_ID_STRLEN + 1];
  txmq_tx_id_str(id, hex);
  txmq_tx_info_t info;
  memset(&info, 0, sizeof info);
  txmq_tx_show(tx, id, &info, NULL, NULL);
  int known = memcmp(info.tx_id, id, TXMQ_TX_ID_LEN) == 0;
  switch (rc) {
    case TXMQ_ENOTFOUND:
      return net__errf(err, rc,
                       "transaction %s is unknown (never begun, or decided "
                       "longer ago than the idempotence window)", hex);
    case TXMQ_ECONFLICT:
      return net__errf(err, rc,
                       "transaction %s was already decided the other way: it "
                       "is %s", hex,
                       known ? txmq_tx_state_name(info.state) : "decided");
    case TXMQ_ECORRUPT:
      return net__errf(err, rc,
                       "transaction %s: its half record cannot be read back, "
                       "so its messages cannot be published; only a rollback "
                       "decides it", hex);
    case TXMQ_EPARKED:
      return net__errf(err, rc,
                       "transaction %s is parked: only an operator's "
                       "tx.resume or tx.decide changes it", hex);
    case TXMQ_EINVAL:
      if (known) {
        return net__errf(err, rc, "transaction %s is %s, not parked", hex,
                         txmq_tx_state_name(info.state));
      }
      break;
  }
  return net__errf(err, rc, "transaction %s: %s", hex, txmq_strerror(rc));
}

/* tx.end (a producer's decision) and tx.decide (an operator's, which may
 * not be UNKNOWN): the transaction id and the decision of the request. */
static int decision_op(net_conn_t* c, uint64_t id, const msgpack_object* m,
                       txmq_tx_source_t source, char* err) {
  uint8_t tx_id[TXMQ_TX_ID_LEN];
  txmq_tx_decision_t d = TXMQ_TX_UNKNOWN;
  int rc = net__get_txid(m, "tx_id", tx_id, err);
  if (rc == 0) rc = parse_decision(m, &d, err);
  if (rc != 0) return rc;
  if (source == TXMQ_TX_SRC_OPERATOR && d == TXMQ_TX_UNKNOWN)
    return net__errf(err, TXMQ_EPROTO,
                     "tx.decide takes decision \"commit\" or \"rollback\" "
                     "(tx.resume checks a parked transaction again)");
  req_t* r = req_new(c, id);
  if (r == NULL) return no_memory(err);
  rc = txmq_tx_end(c->srv->tx, tx_id, d, source, NULL, c->client, on_end, r);
  if (rc != 0) {
    req_free(c->srv, r);
    return tx_refused(c->srv->tx, tx_id, rc, err);
  }
  return 0;
}

static int op_tx_end(net_conn_t* c, uint64_t id, const msgpack_object* m,
                     char* err) {
  return decision_op(c, id, m, TXMQ_TX_SRC_PRODUCER, err);
}

static void on_hosted(txmq_runtime_t* rt, int status, const uint8_t* tx_id,
                      const uint8_t* msg_ids, size_t nmsgs,
                      txmq_tx_state_t state, const char* version,
                      const char* diag, void* arg) {
  (void)rt;
  req_t* r = arg;
  if (tx_id == NULL) {
    req_fail(r, status != 0 ? status : TXMQ_EIO,
             diag != NULL && diag[0] ? diag : txmq_strerror(status));
    return;
  }
  /* The half messages are stored: whatever the handler did, the answer is
   * the transaction's state (pending when it failed; diag says why). */
  int has_diag = diag != NULL && diag[0] != '\0';
  net_wbuf_t w;
  net__wb_init(&w);
  net__resp_begin(&w, r->id, 4 + (has_diag ? 1 : 0));
  net__pk_str(&w.pk, "tx_id");
  net__pk_bin(&w.pk, tx_id, TXMQ_TX_ID_LEN);
  net__pk_str(&w.pk, "msg_ids");
  pk_msg_ids(&w.pk, msg_ids, msg_ids != NULL ? nmsgs : 0);
  net__pk_str(&w.pk, "state");
  net__pk_str(&w.pk, txmq_tx_state_name(state));
  net__pk_str(&w.pk, "version");
  net__pk_str(&w.pk, version != NULL ? version : "");
  if (has_diag) {
    net__pk_str(&w.pk, "diag");
    net__pk_str(&w.pk, diag);
  }
  req_send(r, &w);
}

static int op_tx_send(net_conn_t* c, uint64_t id, const msgpack_object* m,
                      char* err) {
  char group[TXMQ_NAME_MAX + 1];
  int64_t immunity = 0;
  txmq_msg_t* msgs[TXMQ_TX_MAX_MSGS];
  size_t n;
  int rc = get_tx_request(m, group, &immunity, msgs, &n, err);
  if (rc != 0) return rc;
  /* arg travels to executeLocalTransaction as one msgpack value. */
  net_wbuf_t arg;
  memset(&arg, 0, sizeof arg);
  const msgpack_object* a = net__field(m, "arg");
  if (a != NULL) {
    net__wb_init(&arg);
    msgpack_pack_object(&arg.pk, *a);
    if (arg.failed) {
      net__wb_free(&arg);
      net__msgs_free(msgs, n);
      return no_memory(err);
    }
  }
  req_t* r = req_new(c, id);
  if (r == NULL) {
    net__wb_free(&arg);
    net__msgs_free(msgs, n);
    return no_memory(err);
  }
  rc = txmq_runtime_tx_send_take(c->srv->rt, group, c->client, msgs, n,
                                 a != NULL ? arg.p + 4 : NULL,
                                 a != NULL ? arg.len - 4 : 0, immunity,
                                 on_hosted, r);
  net__wb_free(&arg);
  if (rc != 0) {
    net__msgs_free(msgs, n);
    req_free(c->srv, r);
    if (rc == TXMQ_ENOTFOUND)
      return net__errf(err, rc, "group '%s' has no script (%s.lua) in the "
                                "scripts directory", group, group);
    return net__errf(err, rc, "transaction not started: %s",
                     tx_refusal(c->srv, rc));
  }
  return 0;
}

/* ---- status ---- */

static const char* sync_name(int s) {
  switch (s) {
    case TXMQ_SYNC_ALWAYS: return "always";
    case TXMQ_SYNC_INTERVAL: return "interval";
    default: return "never";
  }
}

#define STATUS_MAX_GROUPS 1024

typedef struct {
  const char* name;
  uint32_t producers;
  uint32_t consumers;
} group_count_t;

static size_t group_slot(group_count_t* g, size_t* n, const char* name) {
  for (size_t i = 0; i < *n; i++)
    if (strcmp(g[i].name, name) == 0) return i;
  if (*n == STATUS_MAX_GROUPS) return SIZE_MAX;
  g[*n].name = name;
  g[*n].producers = g[*n].consumers = 0;
  return (*n)++;
}

/* A consumer group's progress on a topic, over the queues it has offsets
 * for: what is retained past its committed offsets, and what it holds
 * received but not acknowledged. */
typedef struct {
  const char* group;
  const char* topic;
  uint32_t queues;
  int64_t lag;
  uint64_t inflight;
} progress_t;

#define STATUS_MAX_PROGRESS 1024
#define PROGRESS_SLOTS 4096 /* a power of two, 4 x STATUS_MAX_PROGRESS */

static uint32_t progress_hash(const char* group, const char* topic) {
  uint32_t h = 2166136261u;
  for (const char* s = group; *s != '\0'; s++) h = (h ^ (uint8_t)*s) * 16777619u;
  h = (h ^ 1u) * 16777619u; /* names cannot contain \1 */
  for (const char* s = topic; *s != '\0'; s++) h = (h ^ (uint8_t)*s) * 16777619u;
  return h;
}

/* Fills p (STATUS_MAX_PROGRESS entries, the first (group, topic) pairs met)
 * from the store's offsets, through slots (PROGRESS_SLOTS zeroed entries:
 * 0 free, else index + 1), so that the cost follows the offsets; returns
 * how many. */
static size_t consumer_progress(txmq_server_t* srv, progress_t* p,
                                uint16_t* slots) {
  size_t n = 0;
  size_t no = txmq_store_offset_count(srv->st);
  for (size_t i = 0; i < no; i++) {
    const char *group, *topic;
    int qid;
    int64_t committed;
    if (txmq_store_offset_at(srv->st, i, &group, &topic, &qid, &committed) != 0)
      break;
    uint32_t h = progress_hash(group, topic) & (PROGRESS_SLOTS - 1);
    while (slots[h] != 0 && (strcmp(p[slots[h] - 1].group, group) != 0 ||
                             strcmp(p[slots[h] - 1].topic, topic) != 0))
      h = (h + 1) & (PROGRESS_SLOTS - 1);
    if (slots[h] == 0) {
      if (n == STATUS_MAX_PROGRESS) continue;
      p[n] = (progress_t){group, topic, 0, 0, 0};
      slots[h] = (uint16_t)++n;
    }
    size_t k = slots[h] - 1u;
    p[k].queues++;
    /* The engine saves every move of a committed offset in the store; what
     * a group reading now holds in flight only the engine knows. */
    size_t inflight = 0;
    if (srv->cs != NULL)
      (void)txmq_consumers_progress(srv->cs, group, topic, qid, NULL, NULL,
                                    &inflight);
    int64_t b, e;
    if (txmq_store_queue_range(srv->st, topic, qid, &b, &e) == 0) {
      int64_t from = committed > b ? committed : b;
      if (e > from) p[k].lag += e - from;
    }
    p[k].inflight += inflight;
  }
  return n;
}

static int op_status(net_conn_t* c, uint64_t id, const msgpack_object* m,
                     char* err) {
  (void)m;
  txmq_server_t* srv = c->srv;
  group_count_t* groups = calloc(STATUS_MAX_GROUPS, sizeof *groups);
  if (groups == NULL) return no_memory(err);
  size_t ng = 0;
  for (net_conn_t* x = srv->live; x != NULL; x = x->next) {
    if (x->state != C_READY) continue;
    for (size_t i = 0; i < x->npgroups; i++) {
      size_t k = group_slot(groups, &ng, x->pgroups[i]);
      if (k != SIZE_MAX) groups[k].producers++;
    }
    for (size_t i = 0; i < x->ncgroups; i++) {
      size_t k = group_slot(groups, &ng, x->cgroups[i]);
      if (k != SIZE_MAX) groups[k].consumers++;
    }
  }
  progress_t* prog = calloc(STATUS_MAX_PROGRESS, sizeof *prog);
  uint16_t* slots = calloc(PROGRESS_SLOTS, sizeof *slots);
  if (prog == NULL || slots == NULL) {
    free(prog);
    free(slots);
    free(groups);
    return no_memory(err);
  }
  size_t nprog = consumer_progress(srv, prog, slots);
  free(slots);
  txmq_tx_metrics_t tm;
  txmq_tx_metrics(srv->tx, &tm);

  net_wbuf_t w;
  net__wb_init(&w);
  net__resp_begin(&w, id, 13);
  net__pk_str(&w.pk, "version");
  net__pk_str(&w.pk, srv->name);
  net__pk_str(&w.pk, "protocol");
  msgpack_pack_int(&w.pk, TXMQ_PROTOCOL_VERSION);
  net__pk_str(&w.pk, "uptime_ms");
  msgpack_pack_uint64(&w.pk, net__now(srv) - srv->started_ms);
  net__pk_str(&w.pk, "sync");
  net__pk_str(&w.pk, sync_name(srv->sync));

  size_t nt = txmq_store_topic_count(srv->st);
  net__pk_str(&w.pk, "topics");
  msgpack_pack_array(&w.pk, nt);
  for (size_t i = 0; i < nt; i++) {
    const char* name = txmq_store_topic_name(srv->st, i);
    int nq = txmq_store_topic_queues(srv->st, name);
    int64_t msgs = 0;
    for (int q = 0; q < nq; q++) {
      int64_t b, e;
      if (txmq_store_queue_range(srv->st, name, q, &b, &e) == 0) msgs += e - b;
    }
    msgpack_pack_map(&w.pk, 4);
    net__pk_str(&w.pk, "name");
    net__pk_str(&w.pk, name);
    net__pk_str(&w.pk, "queues");
    msgpack_pack_int(&w.pk, nq > 0 ? nq : 0);
    net__pk_str(&w.pk, "messages");
    msgpack_pack_int64(&w.pk, msgs);
    net__pk_str(&w.pk, "pending_tx");
    msgpack_pack_uint64(&w.pk, txmq_tx_pending_on_topic(srv->tx, name));
  }

  net__pk_str(&w.pk, "groups");
  msgpack_pack_array(&w.pk, ng);
  for (size_t i = 0; i < ng; i++) {
    msgpack_pack_map(&w.pk, 4);
    net__pk_str(&w.pk, "name");
    net__pk_str(&w.pk, groups[i].name);
    net__pk_str(&w.pk, "producers");
    msgpack_pack_uint32(&w.pk, groups[i].producers);
    net__pk_str(&w.pk, "consumers");
    msgpack_pack_uint32(&w.pk, groups[i].consumers);
    net__pk_str(&w.pk, "script");
    net__pk_str(&w.pk, txmq_script_version(srv->scripts, groups[i].name));
  }
  free(groups);

  net__pk_str(&w.pk, "consumer_progress");
  msgpack_pack_array(&w.pk, nprog);
  for (size_t i = 0; i < nprog; i++) {
    msgpack_pack_map(&w.pk, 5);
    net__pk_str(&w.pk, "group");
    net__pk_str(&w.pk, prog[i].group);
    net__pk_str(&w.pk, "topic");
    net__pk_str(&w.pk, prog[i].topic);
    net__pk_str(&w.pk, "queues");
    msgpack_pack_uint32(&w.pk, prog[i].queues);
    net__pk_str(&w.pk, "lag");
    msgpack_pack_int64(&w.pk, prog[i].lag);
    net__pk_str(&w.pk, "inflight");
    msgpack_pack_uint64(&w.pk, prog[i].inflight);
  }
  free(prog);

  net__pk_str(&w.pk, "tx");
  msgpack_pack_map(&w.pk, 11);
  net__pk_str(&w.pk, "pending");
  msgpack_pack_uint64(&w.pk, tm.pending);
  net__pk_str(&w.pk, "parked");
  msgpack_pack_uint64(&w.pk, tm.parked);
  net__pk_str(&w.pk, "begun");
  msgpack_pack_uint64(&w.pk, tm.begun);
  net__pk_str(&w.pk, "commits");
  msgpack_pack_uint64(&w.pk, tm.commits);
  net__pk_str(&w.pk, "rollbacks");
  msgpack_pack_uint64(&w.pk, tm.rollbacks);
  net__pk_str(&w.pk, "parks");
  msgpack_pack_uint64(&w.pk, tm.parks);
  net__pk_str(&w.pk, "resumes");
  msgpack_pack_uint64(&w.pk, tm.resumes);
  net__pk_str(&w.pk, "checks_sent");
  msgpack_pack_uint64(&w.pk, tm.checks_sent);
  net__pk_str(&w.pk, "checks_answered");
  msgpack_pack_uint64(&w.pk, tm.checks_answered);
  net__pk_str(&w.pk, "checks_timed_out");
  msgpack_pack_uint64(&w.pk, tm.checks_timed_out);
  net__pk_str(&w.pk, "checks_undeliverable");
  msgpack_pack_uint64(&w.pk, tm.checks_undeliverable);

  net__pk_str(&w.pk, "connections");
  msgpack_pack_uint64(&w.pk, srv->nconns);
  net__pk_str(&w.pk, "requests");
  msgpack_pack_uint64(&w.pk, srv->requests);
  net__pk_str(&w.pk, "protocol_errors");
  msgpack_pack_uint64(&w.pk, srv->protocol_errors);
  /* Whether auth is on and how many hellos it refused; never a secret. */
  net__pk_str(&w.pk, "auth");
  if (srv->auth) msgpack_pack_true(&w.pk);
  else msgpack_pack_false(&w.pk);
  net__pk_str(&w.pk, "auth_failures");
  msgpack_pack_uint64(&w.pk, srv->auth_failures);
  return answer(c, &w);
}

/* ---- tx.list / tx.show / tx.resume ---- */

static void pk_info(msgpack_packer* pk, const txmq_tx_info_t* info) {
  msgpack_pack_map(pk, 8);
  net__pk_str(pk, "tx_id");
  net__pk_bin(pk, info->tx_id, TXMQ_TX_ID_LEN);
  net__pk_str(pk, "state");
  net__pk_str(pk, txmq_tx_state_name(info->state));
  net__pk_str(pk, "group");
  net__pk_str(pk, info->group);
  net__pk_str(pk, "producer");
  net__pk_str(pk, info->producer);
  net__pk_str(pk, "check_count");
  msgpack_pack_uint32(pk, info->check_count);
  net__pk_str(pk, "nmsgs");
  msgpack_pack_uint32(pk, info->nmsgs);
  net__pk_str(pk, "born");
  msgpack_pack_int64(pk, info->born_wall_ms);
  net__pk_str(pk, "due_in_ms");
  msgpack_pack_int64(pk, info->due_in_ms);
}

typedef struct {
  net_wbuf_t w;
  size_t n;
  size_t limit;
} collect_t;

static int list_one(void* arg, const txmq_tx_info_t* info) {
  collect_t* k = arg;
  pk_info(&k->w.pk, info);
  return ++k->n >= k->limit;
}

static int op_tx_list(net_conn_t* c, uint64_t id, const msgpack_object* m,
                      char* err) {
  char group[TXMQ_NAME_MAX + 1];
  int64_t limit = 100;
  int rc = net__get_name(m, "group", 0, group, err);
  int has_group = rc == 0;
  if (rc == 1) rc = 0;
  if (rc == 0) {
    rc = net__get_int(m, "limit", 0, 1, 10000, &limit, err);
    if (rc == 1) rc = 0;
  }
  if (rc != 0) return rc;
  collect_t k;
  memset(&k, 0, sizeof k);
  net__wb_init(&k.w); /* its 4 reserved bytes are skipped below */
  k.limit = (size_t)limit;
  txmq_tx_list(c->srv->tx, has_group ? group : NULL, list_one, &k);
  if (k.w.failed) {
    net__wb_free(&k.w);
    return no_memory(err);
  }
  net_wbuf_t w;
  net__wb_init(&w);
  net__resp_begin(&w, id, 1);
  net__pk_str(&w.pk, "txs");
  msgpack_pack_array(&w.pk, k.n);
  net__wb_put(&w, k.w.p + 4, k.w.len - 4);
  net__wb_free(&k.w);
  return answer(c, &w);
}

static void show_one(void* arg, const txmq_tx_event_t* ev) {
  collect_t* k = arg;
  msgpack_packer* pk = &k->w.pk;
  msgpack_pack_map(pk, 6);
  net__pk_str(pk, "event");
  net__pk_str(pk, ev->event);
  net__pk_str(pk, "source");
  net__pk_str(pk, ev->source != 0 ? txmq_tx_source_name(ev->source) : NULL);
  net__pk_str(pk, "version");
  net__pk_str(pk, ev->version);
  net__pk_str(pk, "who");
  net__pk_str(pk, ev->who);
  net__pk_str(pk, "check_count");
  msgpack_pack_uint32(pk, ev->check_count);
  net__pk_str(pk, "at");
  msgpack_pack_int64(pk, ev->wall_ms);
  k->n++;
}

static int op_tx_show(net_conn_t* c, uint64_t id, const msgpack_object* m,
                      char* err) {
  uint8_t tx_id[TXMQ_TX_ID_LEN];
  int rc = net__get_txid(m, "tx_id", tx_id, err);
  if (rc != 0) return rc;
  collect_t k;
  memset(&k, 0, sizeof k);
  net__wb_init(&k.w);
  txmq_tx_info_t info;
  memset(&info, 0, sizeof info);
  rc = txmq_tx_show(c->srv->tx, tx_id, &info, show_one, &k);
  if (rc == TXMQ_ENOTFOUND) {
    /* Not even the summary: the transaction is unknown. Any other error
     * comes after the summary was filled, with the history incomplete. */
    net__wb_free(&k.w);
    return tx_refused(c->srv->tx, tx_id, rc, err);
  }
  if (k.w.failed) {
    net__wb_free(&k.w);
    return no_memory(err);
  }
  net_wbuf_t w;
  net__wb_init(&w);
  net__resp_begin(&w, id, rc != 0 ? 4 : 3);
  net__pk_str(&w.pk, "tx");
  pk_info(&w.pk, &info);
  net__pk_str(&w.pk, "history");
  msgpack_pack_array(&w.pk, k.n);
  net__wb_put(&w, k.w.p + 4, k.w.len - 4);
  net__wb_free(&k.w);
  /* complete=false: the chain could not be read back to the half record
   * (retention, damage, or an event still being written). */
  net__pk_str(&w.pk, "complete");
  if (rc == 0) {
    msgpack_pack_true(&w.pk);
  } else {
    msgpack_pack_false(&w.pk);
    net__pk_str(&w.pk, "diag");
    net__pk_str(&w.pk, txmq_strerror(rc));
  }
  return answer(c, &w);
}

static int op_tx_resume(net_conn_t* c, uint64_t id, const msgpack_object* m,
                        char* err) {
  uint8_t tx_id[TXMQ_TX_ID_LEN];
  int rc = net__get_txid(m, "tx_id", tx_id, err);
  if (rc != 0) return rc;
  req_t* r = req_new(c, id);
  if (r == NULL) return no_memory(err);
  rc = txmq_tx_resume(c->srv->tx, tx_id, c->client, on_end, r);
  if (rc != 0) {
    req_free(c->srv, r);
    return tx_refused(c->srv->tx, tx_id, rc, err);
  }
  return 0;
}

/* An operator's COMMIT or ROLLBACK: for a transaction whose producer will
 * never answer (gone for good), parked or still pending. Recorded with
 * source "operator" and the admin's client id. */
static int op_tx_decide(net_conn_t* c, uint64_t id, const msgpack_object* m,
                        char* err) {
  return decision_op(c, id, m, TXMQ_TX_SRC_OPERATOR, err);
}

/* ---- reload ---- */

static void on_reload(txmq_script_host_t* host, int status, const char* group,
                      const char* version, const char* diag, void* arg) {
  (void)host;
  req_t* r = arg;
  if (status != 0) {
    req_failf(r, status, "reload of '%s' failed: %s", group,
              diag != NULL && diag[0] ? diag : txmq_strerror(status));
    return;
  }
  net__log(r->c->srv, TXMQ_SERVER_LOG_INFO, "script reloaded",
           "group=%s version=%s client=%s", group, version, r->c->client);
  net_wbuf_t w;
  net__wb_init(&w);
  net__resp_begin(&w, r->id, 1);
  net__pk_str(&w.pk, "version");
  net__pk_str(&w.pk, version);
  req_send(r, &w);
}

static int op_reload(net_conn_t* c, uint64_t id, const msgpack_object* m,
                     char* err) {
  char group[TXMQ_NAME_MAX + 1];
  int rc = net__get_name(m, "group", 1, group, err);
  if (rc != 0) return rc;
  req_t* r = req_new(c, id);
  if (r == NULL) return no_memory(err);
  rc = txmq_script_reload(c->srv->scripts, group, on_reload, r);
  if (rc != 0) {
    req_free(c->srv, r);
    if (rc == TXMQ_EBUSY)
      return net__errf(err, rc, "a reload of '%s' is already running", group);
    return net__errf(err, rc, "reload of '%s' failed: %s", group,
                     txmq_strerror(rc));
  }
  return 0;
}

/* ---- topics ---- */

/* A topic.create waiting for its record to be durable. */
typedef struct {
  net_conn_t* c;
  uint64_t id;
  int queues;
  char topic[TXMQ_NAME_MAX + 1];
} topic_req_t;

static void on_topic_durable(txmq_log_t* log, int status, uint64_t pos,
                             void* arg) {
  (void)log;
  (void)pos;
  topic_req_t* t = arg;
  net_conn_t* c = t->c;
  if (status != 0) {
    char msg[NET_ERR_MAX];
    snprintf(msg, sizeof msg, "topic '%s' created but not made durable: %s",
             t->topic, txmq_strerror(status));
    net__send_error(c, t->id, status, msg);
  } else {
    net__log(c->srv, TXMQ_SERVER_LOG_INFO, "topic created",
             "topic=%s queues=%d client=%s", t->topic, t->queues, c->client);
    net_wbuf_t w;
    net__wb_init(&w);
    net__resp_begin(&w, t->id, 2);
    net__pk_str(&w.pk, "topic");
    net__pk_str(&w.pk, t->topic);
    net__pk_str(&w.pk, "queues");
    msgpack_pack_int(&w.pk, t->queues);
    net__send(c, &w);
  }
  free(t);
  net__done(c);
}

/* topic.create: a topic with the queues asked for (a topic a message
 * creates gets default_queues), answered once its record is durable. */
static int op_topic_create(net_conn_t* c, uint64_t id, const msgpack_object* m,
                           char* err) {
  txmq_server_t* srv = c->srv;
  char topic[TXMQ_NAME_MAX + 1];
  int64_t nq = 0;
  int rc = net__get_name(m, "topic", 1, topic, err);
  if (rc == 0)
    rc = net__get_int(m, "queues", 1, 1, TXMQ_STORE_MAX_QUEUES, &nq, err);
  if (rc != 0) return rc;
  topic_req_t* t = calloc(1, sizeof *t);
  if (t == NULL) return no_memory(err);
  rc = txmq_store_create_topic(srv->st, topic, (int)nq);
  if (rc == 0) {
    t->c = c;
    t->id = id;
    t->queues = (int)nq;
    memcpy(t->topic, topic, strlen(topic) + 1);
    rc = txmq_log_flush(txmq_store_log(srv->st), on_topic_durable, t);
    if (rc == 0) return 0;
    free(t);
    return net__errf(err, rc, "topic '%s' created but not made durable: %s",
                     topic, txmq_strerror(rc));
  }
  free(t);
  switch (rc) {
    case TXMQ_EEXIST:
      return net__errf(err, rc, "topic '%s' already exists, with %d queues",
                       topic, txmq_store_topic_queues(srv->st, topic));
    case TXMQ_ERANGE:
      return net__errf(err, rc, "%s", txmq_store_diag(srv->st));
    default:
      return net__errf(err, rc, "topic '%s' not created: %s", topic,
                       txmq_strerror(rc));
  }
}

/* ---- dispatch ---- */

typedef int (*op_fn)(net_conn_t* c, uint64_t id, const msgpack_object* m,
                     char* err);

/* The roles allowed each operation. With auth off only the admin
 * operations are checked; with auth on, every one (net.h). */
enum {
  R_P = 1 << ROLE_PRODUCER,
  R_C = 1 << ROLE_CONSUMER,
  R_A = 1 << ROLE_ADMIN,
  R_ALL = R_P | R_C | R_A
};

static const struct {
  const char* name;
  op_fn fn;
  unsigned roles;
} OPS[] = {
    {"hello", op_hello, R_ALL},
    {"ping", op_ping, R_ALL},
    {"send", op_send, R_P | R_A},
    {"tx.half", op_tx_half, R_P | R_A},
    {"tx.end", op_tx_end, R_P | R_A},
    {"tx.send", op_tx_send, R_P | R_A},
    {"receive", net__op_receive, R_C | R_A},
    {"ack", net__op_ack, R_C | R_A},
    {"offset.get", net__op_offset_get, R_C | R_A},
    {"offset.set", net__op_offset_set, R_C | R_A},
    {"peek", net__op_peek, R_C | R_A},
    {"topic.create", op_topic_create, R_A},
    {"status", op_status, R_ALL},
    {"tx.list", op_tx_list, R_P | R_A},
    {"tx.show", op_tx_show, R_P | R_A},
    {"tx.resume", op_tx_resume, R_A},
    {"tx.decide", op_tx_decide, R_A},
    {"reload", op_reload, R_A},
};

/* Whether c's role may run an operation allowed to roles. */
static int role_allows(const net_conn_t* c, unsigned roles) {
  if (c->srv->auth) return (roles & (1u << c->role)) != 0;
  return roles != R_A || c->role == ROLE_ADMIN;
}

/* The refusal of an operation outside c's role, naming the roles it
 * needs. Without auth the sentence is the one admin operations always
 * had. */
static int role_refused(const net_conn_t* c, const char* op, unsigned roles,
                        char* err) {
  if (!c->srv->auth)
    return net__errf(err, TXMQ_EPROTO, "op '%s' needs role \"admin\"", op);
  char need[64];
  size_t k = 0;
  need[0] = '\0';
  for (int r = 1; r < NET_NROLES; r++) {
    if (!(roles & (1u << r))) continue;
    k += (size_t)snprintf(need + k, sizeof need - k, "%s\"%s\"",
                          k > 0 ? " or " : "", ROLE_NAMES[r]);
  }
  return net__errf(err, TXMQ_EPROTO,
                   "op '%s' needs role %s; this connection's role is \"%s\"",
                   op, need, ROLE_NAMES[c->role]);
}

void net__dispatch(net_conn_t* c, const msgpack_object* req, uint64_t id,
                   const char* op, size_t oplen) {
  char err[NET_ERR_MAX];
  err[0] = '\0';
  int rc = TXMQ_EPROTO;
  size_t i;
  for (i = 0; i < sizeof OPS / sizeof OPS[0]; i++) {
    if (strlen(OPS[i].name) == oplen && memcmp(OPS[i].name, op, oplen) == 0)
      break;
  }
  if (i == sizeof OPS / sizeof OPS[0]) {
    char name[80];
    printable(name, sizeof name, op, oplen);
    net__errf(err, TXMQ_EPROTO, "unknown op '%s'", name);
    c->srv->protocol_errors++;
  } else if (c->state == C_READY && !role_allows(c, OPS[i].roles)) {
    rc = role_refused(c, OPS[i].name, OPS[i].roles, err);
  } else {
    rc = OPS[i].fn(c, id, req, err);
    if (rc == 0) return;
  }
  net__send_error(c, id, rc, err);
  net__done(c);
}
