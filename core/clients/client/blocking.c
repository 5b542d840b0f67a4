/*
 * blocking.c - the blocking layer of the C client: an asynchronous client
 * on a private libuv loop, and calls that start a request and run that loop
 * until its callback fired. Every call is bounded by the client's request
 * timeout (a receive by its wait on top), so none can hang.
 *
 * Results that must outlive the callback are copied or taken: deliveries
 * are taken from the callback's array, a generic response is packed again
 * into a buffer the reply owns.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clients/client/client_int.h"
#include "store/store_int.h"
#include "txmq/error.h"

struct txmq_sync_client_s {
  uv_loop_t loop;
  txmq_client_t* c;
  char diag[TXMQ__CLIENT_DIAG_MAX];
};

struct txmq_reply_s {
  char* buf;
  msgpack_unpacked u;
};

/* One call in flight: its completion flag, status and result slots. */
typedef struct {
  int done;
  int status;
  int64_t value;
  void* out;
  txmq_delivery_t* d;
  size_t n;
  txmq_reply_t* reply;
} wait_t;

static void keep_diag(txmq_sync_client_t* s, int rc) {
  if (rc == 0) {
    s->diag[0] = '\0';
    return;
  }
  const char* d = txmq_client_diag(s->c);
  snprintf(s->diag, sizeof s->diag, "%s", d && *d ? d : txmq_strerror(rc));
}

/* Runs the loop until w->done. The client keeps a timer armed for every
 * outstanding request, so the loop cannot run dry before the callback. */
static int wait_for(txmq_sync_client_t* s, wait_t* w, int rc) {
  if (rc != 0) {
    keep_diag(s, rc);
    return rc;
  }
  while (!w->done) {
    if (uv_run(&s->loop, UV_RUN_ONCE) == 0 && !w->done) {
      snprintf(s->diag, sizeof s->diag, "internal error: the loop ran dry");
      return TXMQ_EIO;
    }
  }
  keep_diag(s, w->status);
  return w->status;
}

int txmq_sync_new(txmq_sync_client_t** out, const txmq_client_options_t* opts) {
  if (!out) return TXMQ_EINVAL;
  *out = NULL;
  txmq_sync_client_t* s = calloc(1, sizeof *s);
  if (!s) return TXMQ_ENOMEM;
  int rc = uv_loop_init(&s->loop);
  if (rc < 0) {
    free(s);
    return TXMQ_EIO;
  }
  rc = txmq_client_new(&s->c, &s->loop, opts);
  if (rc != 0) {
    uv_loop_close(&s->loop);
    free(s);
    return rc;
  }
  *out = s;
  return 0;
}

txmq_client_t* txmq_sync_client(txmq_sync_client_t* s) {
  return s ? s->c : NULL;
}

const char* txmq_sync_diag(const txmq_sync_client_t* s) {
  return s ? s->diag : "";
}

static void on_closed(txmq_client_t* c, void* arg) {
  (void)c;
  *(int*)arg = 1;
}

void txmq_sync_free(txmq_sync_client_t* s) {
  if (!s) return;
  int closed = 0;
  if (txmq_client_close(s->c, on_closed, &closed) == 0)
    while (!closed && uv_run(&s->loop, UV_RUN_ONCE) != 0) {
    }
  /* Write requests cancelled by the close finish here. */
  uv_run(&s->loop, UV_RUN_DEFAULT);
  txmq_client_free(s->c);
  uv_loop_close(&s->loop);
  free(s);
}

static void on_connected(txmq_client_t* c, int status, void* arg) {
  (void)c;
  wait_t* w = arg;
  w->status = status;
  w->done = 1;
}

int txmq_sync_connect(txmq_sync_client_t* s, const char* hostport) {
  if (!s) return TXMQ_EINVAL;
  wait_t w = {0};
  return wait_for(s, &w, txmq_client_connect(s->c, hostport, on_connected, &w));
}

static void on_send(txmq_client_t* c, int status, const txmq_send_result_t* r,
                    void* arg) {
  (void)c;
  wait_t* w = arg;
  w->status = status;
  if (status == 0 && w->out) memcpy(w->out, r, sizeof *r);
  w->done = 1;
}

int txmq_sync_send(txmq_sync_client_t* s, const txmq_msg_t* msg,
                   txmq_send_result_t* out) {
  if (!s) return TXMQ_EINVAL;
  wait_t w = {0};
  w.out = out;
  return wait_for(s, &w, txmq_client_send(s->c, msg, on_send, &w));
}

static void on_tx_send(txmq_client_t* c, int status,
                       const txmq_tx_send_result_t* r, void* arg) {
  (void)c;
  wait_t* w = arg;
  w->status = status;
  if (status == 0 && w->out) memcpy(w->out, r, sizeof *r);
  w->done = 1;
}

int txmq_sync_tx_send(txmq_sync_client_t* s, const char* group,
                      const txmq_msg_t* const* msgs, size_t n,
                      const void* arg, size_t arg_len,
                      txmq_tx_send_result_t* out) {
  if (!s) return TXMQ_EINVAL;
  wait_t w = {0};
  w.out = out;
  return wait_for(s, &w, txmq_client_tx_send(s->c, group, msgs, n, arg,
                                             arg_len, 0, on_tx_send, &w));
}

static void on_receive(txmq_client_t* c, int status, txmq_delivery_t* d,
                       size_t n, void* arg) {
  (void)c;
  wait_t* w = arg;
  w->status = status;
  w->done = 1;
  if (status != 0 || n == 0) return;
  w->d = malloc(n * sizeof *d);
  if (!w->d) {
    w->status = TXMQ_ENOMEM;
    return;
  }
  /* Take the messages: the client frees only what is left in d. */
  memcpy(w->d, d, n * sizeof *d);
  for (size_t i = 0; i < n; i++) d[i].msg = NULL;
  w->n = n;
}

int txmq_sync_receive(txmq_sync_client_t* s, const txmq_receive_opts_t* opts,
                      txmq_delivery_t** out, size_t* n) {
  if (!s || !out || !n) return TXMQ_EINVAL;
  *out = NULL;
  *n = 0;
  wait_t w = {0};
  int rc = wait_for(s, &w, txmq_client_receive(s->c, opts, on_receive, &w));
  if (rc == 0) {
    *out = w.d;
    *n = w.n;
  } else {
    txmq_client_free_deliveries(w.d, w.n);
  }
  return rc;
}

static void on_peek(txmq_client_t* c, int status, txmq_delivery_t* d,
                    size_t n, int64_t next, void* arg) {
  wait_t* w = arg;
  w->value = next;
  on_receive(c, status, d, n, arg);
}

int txmq_sync_peek(txmq_sync_client_t* s, const char* topic, int32_t qid,
                   int64_t offset, uint32_t max, txmq_delivery_t** out,
                   size_t* n, int64_t* next) {
  if (!s || !out || !n) return TXMQ_EINVAL;
  *out = NULL;
  *n = 0;
  wait_t w = {0};
  int rc = wait_for(s, &w, txmq_client_peek(s->c, topic, qid, offset, max,
                                            on_peek, &w));
  if (rc == 0) {
    *out = w.d;
    *n = w.n;
    if (next) *next = w.value;
  } else {
    txmq_client_free_deliveries(w.d, w.n);
  }
  return rc;
}

static void on_int(txmq_client_t* c, int status, int64_t value, void* arg) {
  (void)c;
  wait_t* w = arg;
  w->status = status;
  w->value = value;
  w->done = 1;
}

int txmq_sync_ack(txmq_sync_client_t* s, const char* group,
                  const char* const* handles, size_t n, int64_t* acked) {
  if (!s) return TXMQ_EINVAL;
  wait_t w = {0};
  int rc = wait_for(s, &w,
                    txmq_client_ack(s->c, group, handles, n, on_int, &w));
  if (rc == 0 && acked) *acked = w.value;
  return rc;
}

/* Packs the response again into a buffer of the reply's own and unpacks it
 * from there: the callback's object points into the client's frame buffer,
 * which is reused for the next frame. */
static int reply_copy(const msgpack_object* o, txmq_reply_t** out) {
  msgpack_sbuffer sb;
  msgpack_packer pk;
  msgpack_sbuffer_init(&sb);
  msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
  if (msgpack_pack_object(&pk, *o) != 0) {
    msgpack_sbuffer_destroy(&sb);
    return TXMQ_ENOMEM;
  }
  txmq_reply_t* r = calloc(1, sizeof *r);
  if (!r) {
    msgpack_sbuffer_destroy(&sb);
    return TXMQ_ENOMEM;
  }
  size_t len = sb.size;
  r->buf = msgpack_sbuffer_release(&sb);
  msgpack_unpacked_init(&r->u);
  int rc = txmq__mp_unpack(r->buf, len, TXMQ__MP_MAX_DEPTH,
                           TXMQ__CLIENT_MAX_ITEMS, &r->u);
  if (rc != 0) {
    txmq_reply_free(r);
    return rc;
  }
  *out = r;
  return 0;
}

static void on_reply(txmq_client_t* c, int status, const msgpack_object* o,
                     void* arg) {
  (void)c;
  wait_t* w = arg;
  w->status = status;
  w->done = 1;
  if (status == 0) w->status = reply_copy(o, &w->reply);
}

int txmq_sync_call(txmq_sync_client_t* s, const char* op, const void* fields,
                   size_t fields_len, txmq_reply_t** out) {
  if (!s || !out) return TXMQ_EINVAL;
  *out = NULL;
  wait_t w = {0};
  int rc = wait_for(s, &w, txmq_client_call(s->c, op, fields, fields_len,
                                            on_reply, &w));
  if (rc == 0) *out = w.reply;
  return rc;
}

const msgpack_object* txmq_reply_object(const txmq_reply_t* r) {
  return r ? &r->u.data : NULL;
}

void txmq_reply_free(txmq_reply_t* r) {
  if (!r) return;
  msgpack_unpacked_destroy(&r->u);
  free(r->buf);
  free(r);
}
