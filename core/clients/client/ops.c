/*
 * ops.c - the operations of the C client: each request's encoding (one
 * msgpack map after the length prefix, messages packed with the store's own
 * codec), the decoding of its response into a result (every field checked:
 * a malformed response fails the request with TXMQ_EPROTO, it never reaches
 * the user half-read), the server's requests (`check`, `ping`), and
 * send_in_transaction (half, execute, end).
 *
 * The connection, correlation and timeouts are client.c's.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clients/client/client_int.h"
#include "common/mpwrite.h"
#include "store/store_int.h"
#include "txmq/error.h"

/* ---- frames ---- */

/* Most requests fit in this much, and a block this small comes from
 * malloc's per-thread cache (msgpack-c's first growth is 8 KiB). */
#define FRAME_FIRST_ROOM 512

void txmq__frame_init(frame_t* f, size_t nkeys) {
  msgpack_sbuffer_init(&f->sb);
  msgpack_packer_init(&f->pk, &f->sb, msgpack_sbuffer_write);
  f->sb.data = malloc(FRAME_FIRST_ROOM);
  f->sb.alloc = f->sb.data != NULL ? FRAME_FIRST_ROOM : 0;
  f->err = txmq__mpw_raw(&f->sb, "\0\0\0\0", 4) != 0;
  f->err |= nkeys > UINT32_MAX || txmq__mpw_map(&f->sb, (uint32_t)nkeys) != 0;
}

void txmq__frame_destroy(frame_t* f) { msgpack_sbuffer_destroy(&f->sb); }

/* Keys and values are written straight into the buffer
 * (common/mpwrite.h), the packer only for what is rare. */
void txmq__fp_key(frame_t* f, const char* k) {
  f->err |= txmq__mpw_cstr(&f->sb, k) != 0;
}

void txmq__fp_str(frame_t* f, const char* k, const char* v) {
  txmq__fp_key(f, k);
  f->err |= txmq__mpw_cstr(&f->sb, v) != 0;
}

void txmq__fp_int(frame_t* f, const char* k, int64_t v) {
  txmq__fp_key(f, k);
  f->err |= txmq__mpw_int(&f->sb, v) != 0;
}

void txmq__fp_bin(frame_t* f, const char* k, const void* p, size_t n) {
  txmq__fp_key(f, k);
  f->err |= txmq__mpw_bin(&f->sb, p, n) != 0;
}

/* Starts a request frame: op, id, then nfields more keys. */
static void begin(frame_t* f, const char* op, const req_t* r, size_t nfields) {
  txmq__frame_init(f, 2 + nfields);
  txmq__fp_str(f, "op", op);
  txmq__fp_int(f, "id", r ? (int64_t)r->id : 0);
}

static int bad_arg(txmq_client_t* c, const char* fmt, ...)
    __attribute__((format(printf, 2, 3)));
static int bad_arg(txmq_client_t* c, const char* fmt, ...) {
  char buf[TXMQ__CLIENT_DIAG_MAX];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  txmq__client_set_diag(c, "%s", buf);
  return TXMQ_EINVAL;
}

static int check_name(txmq_client_t* c, const char* what, const char* name) {
  if (txmq_name_valid(name)) return 0;
  return bad_arg(c, "invalid %s name '%s'", what, name ? name : "(null)");
}

/* Packs n messages as an array under key "msgs". */
static int pack_msgs(txmq_client_t* c, frame_t* f,
                     const txmq_msg_t* const* msgs, size_t n) {
  txmq__fp_key(f, "msgs");
  f->err |= msgpack_pack_array(&f->pk, n) != 0;
  for (size_t i = 0; i < n; i++) {
    if (!msgs[i]) return bad_arg(c, "message %zu is NULL", i);
    int rc = txmq__msg_write(&f->sb, msgs[i]);
    if (rc == TXMQ_EINVAL) return bad_arg(c, "message %zu has no topic", i);
    if (rc != 0) return rc;
  }
  return 0;
}

static const char* decision_name(txmq_tx_decision_t d) {
  switch (d) {
    case TXMQ_TX_COMMIT: return "commit";
    case TXMQ_TX_ROLLBACK: return "rollback";
    case TXMQ_TX_UNKNOWN: return "unknown";
    default: return NULL;
  }
}

static int rd_state(txmq_client_t* c, const char* op, const msgpack_object* m,
                    txmq_tx_state_t* out) {
  static const struct {
    const char* name;
    txmq_tx_state_t state;
  } states[] = {{"pending", TXMQ_TX_PENDING},
                {"committed", TXMQ_TX_COMMITTED},
                {"rolled_back", TXMQ_TX_ROLLED_BACK},
                {"parked", TXMQ_TX_PARKED}};
  const char* s;
  size_t n;
  int rc = txmq__rd_str(c, op, m, "state", 0, &s, &n);
  if (rc != 0) return rc;
  for (size_t i = 0; i < sizeof states / sizeof states[0]; i++) {
    if (strlen(states[i].name) == n && memcmp(states[i].name, s, n) == 0) {
      *out = states[i].state;
      return 0;
    }
  }
  txmq__client_set_diag(c, "malformed '%s' frame from the server: unknown state", op);
  return TXMQ_EPROTO;
}

/* msg_ids: an array of exactly want 16-byte bins (want 0: 1..64). */
static int rd_ids(txmq_client_t* c, const char* op, const msgpack_object* m,
                  size_t want, uint8_t out[][TXMQ_MSG_ID_LEN], size_t* n) {
  const msgpack_object* v = txmq_client_map_get(m, "msg_ids");
  if (!v || v->type != MSGPACK_OBJECT_ARRAY || v->via.array.size == 0 ||
      v->via.array.size > TXMQ_TX_MAX_MSGS ||
      (want && v->via.array.size != want)) {
    txmq__client_set_diag(c, "malformed '%s' frame from the server: 'msg_ids' is "
                          "missing or has the wrong length", op);
    return TXMQ_EPROTO;
  }
  for (uint32_t i = 0; i < v->via.array.size; i++) {
    const msgpack_object* e = &v->via.array.ptr[i];
    if (e->type != MSGPACK_OBJECT_BIN || e->via.bin.size != TXMQ_MSG_ID_LEN) {
      txmq__client_set_diag(c, "malformed '%s' frame from the server: 'msg_ids' holds "
                            "something other than 16-byte bins", op);
      return TXMQ_EPROTO;
    }
    memcpy(out[i], e->via.bin.ptr, TXMQ_MSG_ID_LEN);
  }
  *n = v->via.array.size;
  return 0;
}

/* ---- done functions: decode, then call the user's callback ---- */

static void done_plain(txmq_client_t* c, req_t* r, int status,
                       const msgpack_object* resp) {
  (void)resp;
  txmq_client_done_cb cb = (txmq_client_done_cb)r->cb;
  if (cb) cb(c, status, r->arg);
}

static void done_int(txmq_client_t* c, req_t* r, int status,
                     const msgpack_object* resp) {
  int64_t v = 0;
  if (status == 0)
    status = txmq__rd_int(c, r->op, resp, r->key, INT64_MIN, INT64_MAX, &v);
  txmq_client_int_cb cb = (txmq_client_int_cb)r->cb;
  if (cb) cb(c, status, status ? 0 : v, r->arg);
}

static void done_reply(txmq_client_t* c, req_t* r, int status,
                       const msgpack_object* resp) {
  txmq_client_reply_cb cb = (txmq_client_reply_cb)r->cb;
  if (cb) cb(c, status, status ? NULL : resp, r->arg);
}

static void done_send(txmq_client_t* c, req_t* r, int status,
                      const msgpack_object* resp) {
  txmq_send_result_t res;
  memset(&res, 0, sizeof res);
  if (status == 0) {
    int64_t qid = 0, qoff = 0;
    status = txmq__rd_id(c, "send", resp, "msg_id", res.msg_id);
    if (!status) status = txmq__rd_int(c, "send", resp, "qid", 0, INT32_MAX, &qid);
    if (!status)
      status = txmq__rd_int(c, "send", resp, "qoff", 0, INT64_MAX, &qoff);
    res.qid = (int32_t)qid;
    res.qoff = qoff;
  }
  txmq_client_send_cb cb = (txmq_client_send_cb)r->cb;
  if (cb) cb(c, status, status ? NULL : &res, r->arg);
}

static void done_half(txmq_client_t* c, req_t* r, int status,
                      const msgpack_object* resp) {
  txmq_half_result_t res;
  memset(&res, 0, sizeof res);
  if (status == 0) status = txmq__rd_id(c, "tx.half", resp, "tx_id", res.tx_id);
  if (status == 0)
    status = rd_ids(c, "tx.half", resp, r->n, res.msg_ids, &res.nmsgs);
  txmq_client_half_cb cb = (txmq_client_half_cb)r->cb;
  if (cb) cb(c, status, status ? NULL : &res, r->arg);
}

static void done_end(txmq_client_t* c, req_t* r, int status,
                     const msgpack_object* resp) {
  txmq_tx_state_t st = TXMQ_TX_PENDING;
  if (status == 0) status = rd_state(c, "tx.end", resp, &st);
  txmq_client_end_cb cb = (txmq_client_end_cb)r->cb;
  if (cb) cb(c, status, st, r->arg);
}

/* A server's string into a fixed buffer, cut, without control characters. */
static void copy_text(char* dst, size_t cap, const char* s, size_t n) {
  if (n >= cap) n = cap - 1;
  for (size_t i = 0; i < n; i++)
    dst[i] = ((unsigned char)s[i] < 0x20 || s[i] == 0x7f) ? ' ' : s[i];
  dst[n] = '\0';
}

static void done_tx_send(txmq_client_t* c, req_t* r, int status,
                         const msgpack_object* resp) {
  txmq_tx_send_result_t res;
  memset(&res, 0, sizeof res);
  if (status == 0) status = txmq__rd_id(c, "tx.send", resp, "tx_id", res.tx_id);
  if (status == 0)
    status = rd_ids(c, "tx.send", resp, r->n, res.msg_ids, &res.nmsgs);
  if (status == 0) status = rd_state(c, "tx.send", resp, &res.state);
  if (status == 0) {
    const char* v;
    size_t n;
    status = txmq__rd_str(c, "tx.send", resp, "version", 1, &v, &n);
    if (status == 0 && v) copy_text(res.version, sizeof res.version, v, n);
    if (status == 0)
      status = txmq__rd_str(c, "tx.send", resp, "diag", 1, &v, &n);
    if (status == 0 && v) copy_text(res.diag, sizeof res.diag, v, n);
  }
  txmq_client_tx_send_cb cb = (txmq_client_tx_send_cb)r->cb;
  if (cb) cb(c, status, status ? NULL : &res, r->arg);
}

static void free_deliveries(txmq_delivery_t* d, size_t n) {
  if (!d) return;
  for (size_t i = 0; i < n; i++) txmq_msg_free(d[i].msg);
  free(d);
}

void txmq_client_free_deliveries(txmq_delivery_t* d, size_t n) {
  free_deliveries(d, n);
}

/* The messages of a receive (with handles) or a peek (without): at most
 * max, the request's own limit (more is a server fault, and would have the
 * client allocate for them). */
static int rd_deliveries(txmq_client_t* c, const char* op,
                         const msgpack_object* resp, int handles, size_t max,
                         txmq_delivery_t** out, size_t* nout) {
  const msgpack_object* v = txmq_client_map_get(resp, "msgs");
  *out = NULL;
  *nout = 0;
  if (!v || v->type != MSGPACK_OBJECT_ARRAY) {
    txmq__client_set_diag(c, "malformed response to '%s': 'msgs' is "
                          "missing or not an array", op);
    return TXMQ_EPROTO;
  }
  size_t n = v->via.array.size;
  if (n == 0) return 0;
  if (n > max) {
    txmq__client_set_diag(c, "malformed response to '%s': %zu messages for "
                          "a request of at most %zu", op, n, max);
    return TXMQ_EPROTO;
  }
  txmq_delivery_t* d = calloc(n, sizeof *d);
  if (!d) {
    txmq__client_set_diag(c, "out of memory");
    return TXMQ_ENOMEM;
  }
  for (size_t i = 0; i < n; i++) {
    const msgpack_object* o = &v->via.array.ptr[i];
    const char* h;
    size_t hl;
    int64_t deliveries = 1;
    int rc = txmq__msg_from_object(o, &d[i].msg);
    if (rc == TXMQ_ENOMEM) {
      txmq__client_set_diag(c, "out of memory");
    } else if (rc != 0) {
      txmq__client_set_diag(c, "malformed response to '%s': message %zu "
                            "is not a valid message", op, i);
    } else if (handles &&
               (rc = txmq__rd_str(c, op, o, "handle", 0, &h, &hl)) == 0) {
      if (hl == 0 || hl >= TXMQ_CONSUMER_HANDLE_MAX) {
        txmq__client_set_diag(c, "malformed response to 'receive': handle of "
                              "message %zu has a bad length", i);
        rc = TXMQ_EPROTO;
      } else {
        memcpy(d[i].handle, h, hl);
        d[i].handle[hl] = '\0';
        if (memchr(h, '\0', hl)) rc = TXMQ_EPROTO;
      }
      if (rc == 0 && txmq_client_map_get(o, "deliveries"))
        rc = txmq__rd_int(c, "receive", o, "deliveries", 0, UINT32_MAX,
                          &deliveries);
      d[i].deliveries = (uint32_t)deliveries;
    }
    if (rc != 0) {
      free_deliveries(d, n);
      return rc;
    }
  }
  *out = d;
  *nout = n;
  return 0;
}

static void done_receive(txmq_client_t* c, req_t* r, int status,
                         const msgpack_object* resp) {
  txmq_delivery_t* d = NULL;
  size_t n = 0;
  if (status == 0) status = rd_deliveries(c, "receive", resp, 1, r->n, &d, &n);
  txmq_client_receive_cb cb = (txmq_client_receive_cb)r->cb;
  if (cb) cb(c, status, d, n, r->arg);
  free_deliveries(d, n);
}

/* A peek's messages: as receive's, without handles, and the next offset. */
static int rd_peeked(txmq_client_t* c, const msgpack_object* resp,
                     size_t max, txmq_delivery_t** out, size_t* nout,
                     int64_t* next) {
  *out = NULL;
  *nout = 0;
  int rc = txmq__rd_int(c, "peek", resp, "next", 0, INT64_MAX, next);
  return rc != 0 ? rc : rd_deliveries(c, "peek", resp, 0, max, out, nout);
}

static void done_peek(txmq_client_t* c, req_t* r, int status,
                      const msgpack_object* resp) {
  txmq_delivery_t* d = NULL;
  size_t n = 0;
  int64_t next = 0;
  if (status == 0) status = rd_peeked(c, resp, r->n, &d, &n, &next);
  txmq_client_peek_cb cb = (txmq_client_peek_cb)r->cb;
  if (cb) cb(c, status, d, n, next, r->arg);
  free_deliveries(d, n);
}

/* ---- requests ---- */

#define NEW_REQ(c, op, done, cb, arg) \
  txmq__req_new((c), (op), (done), (void (*)(void))(cb), (arg))

int txmq_client_ping(txmq_client_t* c, txmq_client_int_cb cb, void* arg) {
  if (!c) return TXMQ_EINVAL;
  int rc = txmq__client_ready(c);
  if (rc) return rc;
  req_t* r = NEW_REQ(c, "ping", done_int, cb, arg);
  if (r) r->key = "time";
  frame_t f;
  begin(&f, "ping", r, 0);
  return txmq__req_submit(c, &f, r, 0, 0);
}

int txmq_client_send(txmq_client_t* c, const txmq_msg_t* msg,
                     txmq_client_send_cb cb, void* arg) {
  if (!c) return TXMQ_EINVAL;
  int rc = txmq__client_ready(c);
  if (rc) return rc;
  if (!msg) return bad_arg(c, "no message");
  req_t* r = NEW_REQ(c, "send", done_send, cb, arg);
  frame_t f;
  begin(&f, "send", r, 1);
  txmq__fp_key(&f, "msg");
  rc = txmq__msg_write(&f.sb, msg);
  if (rc == TXMQ_EINVAL) rc = bad_arg(c, "the message has no topic");
  return txmq__req_submit(c, &f, r, rc, 0);
}

static int check_msgs(txmq_client_t* c, const txmq_msg_t* const* msgs,
                      size_t n) {
  if (!msgs || n < 1 || n > TXMQ_TX_MAX_MSGS)
    return bad_arg(c, "a transaction carries 1..%d messages, not %zu",
                   TXMQ_TX_MAX_MSGS, n);
  return 0;
}

int txmq_client_tx_half(txmq_client_t* c, const char* group,
                        const txmq_msg_t* const* msgs, size_t n,
                        int64_t immunity_ms, txmq_client_half_cb cb,
                        void* arg) {
  if (!c) return TXMQ_EINVAL;
  int rc = txmq__client_ready(c);
  if (!rc) rc = check_name(c, "group", group);
  if (!rc) rc = check_msgs(c, msgs, n);
  if (!rc && immunity_ms < 0) rc = bad_arg(c, "negative immunity_ms");
  if (rc) return rc;
  req_t* r = NEW_REQ(c, "tx.half", done_half, cb, arg);
  if (r) r->n = n;
  frame_t f;
  begin(&f, "tx.half", r, 2 + (immunity_ms > 0));
  txmq__fp_str(&f, "group", group);
  rc = pack_msgs(c, &f, msgs, n);
  if (immunity_ms > 0) txmq__fp_int(&f, "immunity_ms", immunity_ms);
  return txmq__req_submit(c, &f, r, rc, 0);
}

/* tx.end and tx.decide: a transaction id and a decision. */
static int decision_call(txmq_client_t* c, const char* op,
                         const uint8_t* tx_id, txmq_tx_decision_t decision,
                         txmq_client_end_cb cb, void* arg) {
  if (!c) return TXMQ_EINVAL;
  int rc = txmq__client_ready(c);
  if (rc) return rc;
  const char* d = decision_name(decision);
  if (!tx_id) return bad_arg(c, "no transaction id");
  if (!d) return bad_arg(c, "invalid decision %d", (int)decision);
  req_t* r = NEW_REQ(c, op, done_end, cb, arg);
  frame_t f;
  begin(&f, op, r, 2);
  txmq__fp_bin(&f, "tx_id", tx_id, TXMQ_TX_ID_LEN);
  txmq__fp_str(&f, "decision", d);
  return txmq__req_submit(c, &f, r, 0, 0);
}

int txmq_client_tx_end(txmq_client_t* c, const uint8_t* tx_id,
                       txmq_tx_decision_t decision, txmq_client_end_cb cb,
                       void* arg) {
  return decision_call(c, "tx.end", tx_id, decision, cb, arg);
}

int txmq_client_tx_decide(txmq_client_t* c, const uint8_t* tx_id,
                          txmq_tx_decision_t decision, txmq_client_end_cb cb,
                          void* arg) {
  if (c != NULL && decision != TXMQ_TX_COMMIT && decision != TXMQ_TX_ROLLBACK)
    return bad_arg(c, "an operator decides COMMIT or ROLLBACK, not %d",
                   (int)decision);
  return decision_call(c, "tx.decide", tx_id, decision, cb, arg);
}

int txmq_client_tx_send(txmq_client_t* c, const char* group,
                        const txmq_msg_t* const* msgs, size_t n,
                        const void* arg, size_t arg_len, int64_t immunity_ms,
                        txmq_client_tx_send_cb cb, void* cbarg) {
  if (!c) return TXMQ_EINVAL;
  int rc = txmq__client_ready(c);
  if (!rc) rc = check_name(c, "group", group);
  if (!rc) rc = check_msgs(c, msgs, n);
  if (!rc && immunity_ms < 0) rc = bad_arg(c, "negative immunity_ms");
  if (!rc && arg) {
    size_t used = 0;
    if (txmq__mp_check(arg, arg_len, TXMQ__MP_MAX_DEPTH,
                       TXMQ__CLIENT_MAX_ITEMS, &used) != 0 ||
        used != arg_len)
      rc = bad_arg(c, "arg is not exactly one msgpack value");
  }
  if (rc) return rc;
  req_t* r = NEW_REQ(c, "tx.send", done_tx_send, cb, cbarg);
  if (r) r->n = n;
  frame_t f;
  begin(&f, "tx.send", r, 2 + (arg != NULL) + (immunity_ms > 0));
  txmq__fp_str(&f, "group", group);
  rc = pack_msgs(c, &f, msgs, n);
  if (arg) {
    txmq__fp_key(&f, "arg");
    f.err |= msgpack_sbuffer_write(&f.sb, arg, arg_len) != 0;
  }
  if (immunity_ms > 0) txmq__fp_int(&f, "immunity_ms", immunity_ms);
  return txmq__req_submit(c, &f, r, rc, 0);
}

int txmq_client_receive(txmq_client_t* c, const txmq_receive_opts_t* o,
                        txmq_client_receive_cb cb, void* arg) {
  if (!c) return TXMQ_EINVAL;
  int rc = txmq__client_ready(c);
  if (rc) return rc;
  if (!o) return bad_arg(c, "no receive options");
  if ((rc = check_name(c, "group", o->group)) ||
      (rc = check_name(c, "topic", o->topic)))
    return rc;
  uint32_t max = o->max ? o->max : 32;
  if (max > 256) return bad_arg(c, "max %u is over 256", max);
  if (o->wait_ms > 30000) return bad_arg(c, "wait_ms %u is over 30000", o->wait_ms);
  if (o->from != TXMQ_FROM_EARLIEST && o->from != TXMQ_FROM_LATEST &&
      (o->from != TXMQ_FROM_OFFSET || o->from_offset < 0))
    return bad_arg(c, "invalid start position");
  const char* tags = o->tags ? o->tags : "*";
  if (strlen(tags) > TXMQ_MSG_MAX_FIELD) return bad_arg(c, "tag filter too long");
  req_t* r = NEW_REQ(c, "receive", done_receive, cb, arg);
  if (r) r->n = max;
  frame_t f;
  begin(&f, "receive", r, 6 + (o->visibility_ms > 0));
  txmq__fp_str(&f, "group", o->group);
  txmq__fp_str(&f, "topic", o->topic);
  txmq__fp_str(&f, "tags", tags);
  txmq__fp_int(&f, "max", max);
  txmq__fp_int(&f, "wait_ms", o->wait_ms);
  if (o->visibility_ms > 0) txmq__fp_int(&f, "visibility_ms", o->visibility_ms);
  if (o->from == TXMQ_FROM_OFFSET)
    txmq__fp_int(&f, "from", o->from_offset);
  else
    txmq__fp_str(&f, "from", o->from == TXMQ_FROM_LATEST ? "latest" : "earliest");
  return txmq__req_submit(c, &f, r, 0, o->wait_ms);
}

int txmq_client_ack(txmq_client_t* c, const char* group,
                    const char* const* handles, size_t n,
                    txmq_client_int_cb cb, void* arg) {
  if (!c) return TXMQ_EINVAL;
  int rc = txmq__client_ready(c);
  if (!rc) rc = check_name(c, "group", group);
  if (!rc && (!handles || n == 0)) rc = bad_arg(c, "no handles to ack");
  for (size_t i = 0; !rc && i < n; i++)
    if (!handles[i] || !*handles[i]) rc = bad_arg(c, "handle %zu is empty", i);
  if (rc) return rc;
  req_t* r = NEW_REQ(c, "ack", done_int, cb, arg);
  if (r) r->key = "acked";
  frame_t f;
  begin(&f, "ack", r, 2);
  txmq__fp_str(&f, "group", group);
  txmq__fp_key(&f, "handles");
  f.err |= msgpack_pack_array(&f.pk, n) != 0;
  for (size_t i = 0; i < n; i++)
    f.err |= txmq__mpw_cstr(&f.sb, handles[i]) != 0;
  return txmq__req_submit(c, &f, r, 0, 0);
}

static int offset_args(txmq_client_t* c, const char* group, const char* topic,
                       int32_t qid) {
  int rc = txmq__client_ready(c);
  if (!rc) rc = check_name(c, "group", group);
  if (!rc) rc = check_name(c, "topic", topic);
  if (!rc && qid < 0) rc = bad_arg(c, "negative queue id");
  return rc;
}

int txmq_client_offset_get(txmq_client_t* c, const char* group,
                           const char* topic, int32_t qid,
                           txmq_client_int_cb cb, void* arg) {
  if (!c) return TXMQ_EINVAL;
  int rc = offset_args(c, group, topic, qid);
  if (rc) return rc;
  req_t* r = NEW_REQ(c, "offset.get", done_int, cb, arg);
  if (r) r->key = "offset";
  frame_t f;
  begin(&f, "offset.get", r, 3);
  txmq__fp_str(&f, "group", group);
  txmq__fp_str(&f, "topic", topic);
  txmq__fp_int(&f, "qid", qid);
  return txmq__req_submit(c, &f, r, 0, 0);
}

int txmq_client_peek(txmq_client_t* c, const char* topic, int32_t qid,
                     int64_t offset, uint32_t max, txmq_client_peek_cb cb,
                     void* arg) {
  if (!c) return TXMQ_EINVAL;
  int rc = txmq__client_ready(c);
  if (!rc) rc = check_name(c, "topic", topic);
  if (!rc && qid < 0) rc = bad_arg(c, "negative queue id");
  if (!rc && max > 256) rc = bad_arg(c, "max %u is over 256", max);
  if (rc) return rc;
  req_t* r = NEW_REQ(c, "peek", done_peek, cb, arg);
  if (r) r->n = max ? max : 32;
  frame_t f;
  begin(&f, "peek", r, 3 + (offset >= 0));
  txmq__fp_str(&f, "topic", topic);
  txmq__fp_int(&f, "qid", qid);
  txmq__fp_int(&f, "max", max ? max : 32);
  if (offset >= 0) txmq__fp_int(&f, "offset", offset);
  return txmq__req_submit(c, &f, r, 0, 0);
}

int txmq_client_offset_set(txmq_client_t* c, const char* group,
                           const char* topic, int32_t qid, int64_t offset,
                           txmq_client_done_cb cb, void* arg) {
  if (!c) return TXMQ_EINVAL;
  int rc = offset_args(c, group, topic, qid);
  if (!rc && offset < 0) rc = bad_arg(c, "negative offset");
  if (rc) return rc;
  req_t* r = NEW_REQ(c, "offset.set", done_plain, cb, arg);
  frame_t f;
  begin(&f, "offset.set", r, 4);
  txmq__fp_str(&f, "group", group);
  txmq__fp_str(&f, "topic", topic);
  txmq__fp_int(&f, "qid", qid);
  txmq__fp_int(&f, "offset", offset);
  return txmq__req_submit(c, &f, r, 0, 0);
}

int txmq_client_status(txmq_client_t* c, txmq_client_reply_cb cb, void* arg) {
  if (!c) return TXMQ_EINVAL;
  int rc = txmq__client_ready(c);
  if (rc) return rc;
  req_t* r = NEW_REQ(c, "status", done_reply, cb, arg);
  frame_t f;
  begin(&f, "status", r, 0);
  return txmq__req_submit(c, &f, r, 0, 0);
}

int txmq_client_tx_list(txmq_client_t* c, const char* group, uint32_t limit,
                        txmq_client_reply_cb cb, void* arg) {
  if (!c) return TXMQ_EINVAL;
  int rc = txmq__client_ready(c);
  if (!rc && group) rc = check_name(c, "group", group);
  if (rc) return rc;
  req_t* r = NEW_REQ(c, "tx.list", done_reply, cb, arg);
  frame_t f;
  begin(&f, "tx.list", r, (group != NULL) + (limit > 0));
  if (group) txmq__fp_str(&f, "group", group);
  if (limit > 0) txmq__fp_int(&f, "limit", limit);
  return txmq__req_submit(c, &f, r, 0, 0);
}

static int tx_id_call(txmq_client_t* c, const char* op, const uint8_t* tx_id,
                      txmq_client_reply_cb cb, void* arg) {
  if (!c) return TXMQ_EINVAL;
  int rc = txmq__client_ready(c);
  if (rc) return rc;
  if (!tx_id) return bad_arg(c, "no transaction id");
  req_t* r = NEW_REQ(c, op, done_reply, cb, arg);
  frame_t f;
  begin(&f, op, r, 1);
  txmq__fp_bin(&f, "tx_id", tx_id, TXMQ_TX_ID_LEN);
  return txmq__req_submit(c, &f, r, 0, 0);
}

int txmq_client_tx_show(txmq_client_t* c, const uint8_t* tx_id,
                        txmq_client_reply_cb cb, void* arg) {
  return tx_id_call(c, "tx.show", tx_id, cb, arg);
}

int txmq_client_tx_resume(txmq_client_t* c, const uint8_t* tx_id,
                          txmq_client_reply_cb cb, void* arg) {
  return tx_id_call(c, "tx.resume", tx_id, cb, arg);
}

int txmq_client_reload(txmq_client_t* c, const char* group,
                       txmq_client_reply_cb cb, void* arg) {
  if (!c) return TXMQ_EINVAL;
  int rc = txmq__client_ready(c);
  if (!rc) rc = check_name(c, "group", group);
  if (rc) return rc;
  req_t* r = NEW_REQ(c, "reload", done_reply, cb, arg);
  frame_t f;
  begin(&f, "reload", r, 1);
  txmq__fp_str(&f, "group", group);
  return txmq__req_submit(c, &f, r, 0, 0);
}

/* Op names live as long as their request; the generic call has no static
 * name to point at, so it keeps this one for diagnostics. */
static const char CALL_OP[] = "call";

int txmq_client_call(txmq_client_t* c, const char* op, const void* fields,
                     size_t fields_len, txmq_client_reply_cb cb, void* arg) {
  if (!c) return TXMQ_EINVAL;
  int rc = txmq__client_ready(c);
  if (rc) return rc;
  if (!op || !*op || strlen(op) > 64) return bad_arg(c, "invalid op");
  msgpack_unpacked u;
  msgpack_unpacked_init(&u);
  const msgpack_object_map* map = NULL;
  if (fields) {
    if (txmq__mp_unpack(fields, fields_len, TXMQ__MP_MAX_DEPTH,
                        TXMQ__CLIENT_MAX_ITEMS, &u) != 0 ||
        u.data.type != MSGPACK_OBJECT_MAP) {
      msgpack_unpacked_destroy(&u);
      return bad_arg(c, "the fields are not one packed msgpack map");
    }
    map = &u.data.via.map;
    for (uint32_t i = 0; i < map->size; i++) {
      const msgpack_object* k = &map->ptr[i].key;
      if (k->type != MSGPACK_OBJECT_STR ||
          (k->via.str.size == 2 && (memcmp(k->via.str.ptr, "op", 2) == 0 ||
                                    memcmp(k->via.str.ptr, "id", 2) == 0))) {
        msgpack_unpacked_destroy(&u);
        return bad_arg(c, "the fields must have string keys other than "
                       "'op' and 'id'");
      }
    }
  }
  req_t* r = NEW_REQ(c, CALL_OP, done_reply, cb, arg);
  frame_t f;
  begin(&f, op, r, map ? map->size : 0);
  for (uint32_t i = 0; map && i < map->size; i++) {
    f.err |= msgpack_pack_object(&f.pk, map->ptr[i].key) != 0;
    f.err |= msgpack_pack_object(&f.pk, map->ptr[i].val) != 0;
  }
  msgpack_unpacked_destroy(&u);
  /* A receive may be held by the server; give it its longest wait. */
  uint64_t extra = strcmp(op, "receive") == 0 ? 30000 : 0;
  return txmq__req_submit(c, &f, r, 0, extra);
}

/* ---- the server's requests ---- */

void txmq__client_reply_error(txmq_client_t* c, uint64_t re, int code,
                              const char* fmt, ...) {
  char msg[TXMQ__CLIENT_DIAG_MAX];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  frame_t f;
  txmq__frame_init(&f, 5);
  txmq__fp_int(&f, "re", (int64_t)re);
  txmq__fp_key(&f, "ok");
  f.err |= msgpack_pack_false(&f.pk) != 0;
  txmq__fp_str(&f, "err", txmq_err_name(code));
  txmq__fp_int(&f, "code", code);
  txmq__fp_str(&f, "msg", msg);
  (void)txmq__frame_send(c, &f);
}

void txmq__client_drop_checks(txmq_client_t* c) {
  while (c->checks) {
    pending_check_t* p = c->checks;
    c->checks = p->next;
    free(p);
  }
  c->nchecks = 0;
}

int txmq_client_on_check(txmq_client_t* c, const char* group,
                         txmq_client_check_cb cb, void* arg) {
  if (!c) return TXMQ_EINVAL;
  if (c->state == ST_CLOSING || c->state == ST_CLOSED) return TXMQ_ECLOSED;
  int rc = check_name(c, "group", group);
  if (rc) return rc;
  check_handler_t** pp = &c->handlers;
  for (; *pp; pp = &(*pp)->next) {
    if (strcmp((*pp)->group, group) == 0) break;
  }
  if (*pp && !cb) {
    check_handler_t* h = *pp;
    *pp = h->next;
    free(h->group);
    free(h);
    return 0;
  }
  if (!cb) return 0;
  if (*pp) {
    (*pp)->cb = cb;
    (*pp)->arg = arg;
    return 0;
  }
  check_handler_t* h = calloc(1, sizeof *h);
  if (!h || !(h->group = strdup(group))) {
    free(h);
    return TXMQ_ENOMEM;
  }
  h->cb = cb;
  h->arg = arg;
  *pp = h;
  return 0;
}

static void handle_check(txmq_client_t* c, uint64_t id,
                         const msgpack_object* o) {
  uint8_t tx_id[TXMQ_TX_ID_LEN];
  const char* g;
  size_t gl;
  int64_t count = 0;
  char group[TXMQ_NAME_MAX + 1];
  if (txmq__rd_id(c, "check", o, "tx_id", tx_id) ||
      txmq__rd_str(c, "check", o, "group", 0, &g, &gl) ||
      txmq__rd_int(c, "check", o, "check_count", 0, UINT32_MAX, &count)) {
    txmq__client_reply_error(c, id, TXMQ_EPROTO, "%s", c->diag);
    return;
  }
  if (gl == 0 || gl > TXMQ_NAME_MAX) {
    txmq__client_reply_error(c, id, TXMQ_EPROTO, "check: invalid group");
    return;
  }
  memcpy(group, g, gl);
  group[gl] = '\0';
  if (!txmq_name_valid(group)) {
    txmq__client_reply_error(c, id, TXMQ_EPROTO, "check: invalid group");
    return;
  }
  const msgpack_object* mv = txmq_client_map_get(o, "msgs");
  if (!mv || mv->type != MSGPACK_OBJECT_ARRAY || mv->via.array.size == 0 ||
      mv->via.array.size > TXMQ_TX_MAX_MSGS) {
    txmq__client_reply_error(c, id, TXMQ_EPROTO,
                             "check: 'msgs' must be an array of 1..%d "
                             "messages", TXMQ_TX_MAX_MSGS);
    return;
  }
  check_handler_t* h = c->handlers;
  while (h && strcmp(h->group, group) != 0) h = h->next;
  if (!h) {
    txmq__client_reply_error(c, id, TXMQ_ENOTFOUND,
                             "client %s has no check handler for group %s",
                             c->client_id, group);
    return;
  }
  if (c->nchecks >= TXMQ__CLIENT_MAX_CHECKS) {
    txmq__client_reply_error(c, id, TXMQ_EAGAIN,
                             "client %s has %zu checks unanswered",
                             c->client_id, c->nchecks);
    return;
  }
  size_t n = mv->via.array.size;
  txmq_msg_t* msgs[TXMQ_TX_MAX_MSGS] = {0};
  int rc = 0;
  for (size_t i = 0; i < n && rc == 0; i++)
    rc = txmq__msg_from_object(&mv->via.array.ptr[i], &msgs[i]);
  pending_check_t* p = rc ? NULL : calloc(1, sizeof *p);
  if (rc || !p) {
    for (size_t i = 0; i < n; i++) txmq_msg_free(msgs[i]);
    if (rc == TXMQ_EPROTO)
      txmq__client_reply_error(c, id, TXMQ_EPROTO,
                               "check: a message is malformed");
    else
      txmq__client_reply_error(c, id, TXMQ_ENOMEM, "client out of memory");
    return;
  }
  p->check_id = ++c->next_check_id;
  p->server_id = id;
  p->next = c->checks;
  c->checks = p;
  c->nchecks++;
  txmq_client_check_t chk = {
      .check_id = p->check_id,
      .tx_id = tx_id,
      .group = group,
      .check_count = (uint32_t)count,
      .msgs = (const txmq_msg_t* const*)msgs,
      .nmsgs = n,
  };
  c->diag[0] = '\0';
  h->cb(c, &chk, h->arg);
  for (size_t i = 0; i < n; i++) txmq_msg_free(msgs[i]);
}

int txmq_client_check_reply(txmq_client_t* c, uint64_t check_id,
                            txmq_tx_decision_t decision) {
  if (!c) return TXMQ_EINVAL;
  const char* d = decision_name(decision);
  if (!d) return bad_arg(c, "invalid decision %d", (int)decision);
  pending_check_t** pp = &c->checks;
  while (*pp && (*pp)->check_id != check_id) pp = &(*pp)->next;
  if (!*pp) {
    txmq__client_set_diag(c, "no check %llu is waiting for an answer",
                          (unsigned long long)check_id);
    return TXMQ_ENOTFOUND;
  }
  pending_check_t* p = *pp;
  if (c->state != ST_CONNECTED) return txmq__client_ready(c);
  *pp = p->next;
  c->nchecks--;
  frame_t f;
  txmq__frame_init(&f, 3);
  txmq__fp_int(&f, "re", (int64_t)p->server_id);
  txmq__fp_key(&f, "ok");
  f.err |= msgpack_pack_true(&f.pk) != 0;
  txmq__fp_str(&f, "decision", d);
  free(p);
  return txmq__frame_send(c, &f);
}

void txmq__client_server_request(txmq_client_t* c, const char* op,
                                 size_t oplen, uint64_t id,
                                 const msgpack_object* o) {
  if (oplen == 5 && memcmp(op, "check", 5) == 0) {
    handle_check(c, id, o);
  } else if (oplen == 4 && memcmp(op, "ping", 4) == 0) {
    frame_t f;
    txmq__frame_init(&f, 3);
    txmq__fp_int(&f, "re", (int64_t)id);
    txmq__fp_key(&f, "ok");
    f.err |= msgpack_pack_true(&f.pk) != 0;
    txmq__fp_int(&f, "time", txmq__now_ms());
    (void)txmq__frame_send(c, &f);
  } else {
    char name[65];
    size_t n = oplen < 64 ? oplen : 64;
    memcpy(name, op, n);
    name[n] = '\0';
    for (size_t i = 0; i < n; i++)
      if ((unsigned char)name[i] < 0x20 || name[i] == 0x7f) name[i] = '?';
    txmq__client_reply_error(c, id, TXMQ_EPROTO,
                             "unknown op '%s' (a client answers 'check' and "
                             "'ping')", name);
  }
}

/* ---- send_in_transaction ---- */

typedef struct {
  txmq_msg_t* msg;          /* a copy, given its id once stored */
  txmq_client_execute_cb execute;
  void* execute_arg;
  txmq_client_tx_done_cb done;
  void* arg;
  txmq_tx_result_t res;
} sit_t;

static void sit_finish(txmq_client_t* c, sit_t* st, int status) {
  if (st->done) st->done(c, status, status ? NULL : &st->res, st->arg);
  txmq_msg_free(st->msg);
  free(st);
}

static void sit_end_cb(txmq_client_t* c, int status, txmq_tx_state_t state,
                       void* arg) {
  sit_t* st = arg;
  st->res.end_status = status;
  st->res.tx_state = status ? TXMQ_TX_PENDING : state;
  sit_finish(c, st, 0);
}

static void sit_half_cb(txmq_client_t* c, int status,
                        const txmq_half_result_t* r, void* arg) {
  sit_t* st = arg;
  if (status != 0) {
    sit_finish(c, st, status);
    return;
  }
  memcpy(st->res.tx_id, r->tx_id, TXMQ_TX_ID_LEN);
  memcpy(st->res.msg_id, r->msg_ids[0], TXMQ_MSG_ID_LEN);
  txmq__msg_set_id(st->msg, r->msg_ids[0]);
  uint8_t tx_id[TXMQ_TX_ID_LEN];
  memcpy(tx_id, r->tx_id, TXMQ_TX_ID_LEN);
  txmq_tx_decision_t d = st->execute(c, st->msg, tx_id, st->execute_arg);
  if (d != TXMQ_TX_COMMIT && d != TXMQ_TX_ROLLBACK) d = TXMQ_TX_UNKNOWN;
  st->res.local_state = d;
  st->res.tx_state = TXMQ_TX_PENDING;
  if (d == TXMQ_TX_UNKNOWN) {
    /* Left to the checks, as RocketMQ does with UNKNOW. */
    sit_finish(c, st, 0);
    return;
  }
  int rc = txmq_client_tx_end(c, tx_id, d, sit_end_cb, st);
  if (rc != 0) {
    st->res.end_status = rc;
    sit_finish(c, st, 0);
  }
}

int txmq_client_send_in_transaction(txmq_client_t* c, const char* group,
                                    const txmq_msg_t* msg,
                                    txmq_client_execute_cb execute,
                                    void* execute_arg,
                                    txmq_client_tx_done_cb done, void* arg) {
  if (!c) return TXMQ_EINVAL;
  if (!msg) return bad_arg(c, "no message");
  if (!execute) return bad_arg(c, "no execute callback");
  sit_t* st = calloc(1, sizeof *st);
  if (!st || !(st->msg = txmq_msg_clone(msg))) {
    free(st);
    txmq__client_set_diag(c, "out of memory");
    return TXMQ_ENOMEM;
  }
  st->execute = execute;
  st->execute_arg = execute_arg;
  st->done = done;
  st->arg = arg;
  const txmq_msg_t* one[1] = {msg};
  int rc = txmq_client_tx_half(c, group, one, 1, 0, sit_half_cb, st);
  if (rc != 0) {
    txmq_msg_free(st->msg);
    free(st);
  }
  return rc;
}
