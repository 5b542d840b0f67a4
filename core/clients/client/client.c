/*
 * client.c - the connection side of the C client: address resolution and
 * connect (each resolved address in turn), the hello handshake, the frame
 * reader (length prefix, bounded msgpack), correlation of responses with
 * outstanding requests, request timeouts, the heartbeat, losing a
 * connection, and close.
 *
 * It does not know the operations: ops.c encodes the requests and decodes
 * their responses, and answers the server's requests (checks).
 *
 * Every user callback runs from the loop, never from within the public call
 * that caused it; each outstanding request is detached from the pending
 * table before its callback runs, so it completes exactly once whatever the
 * callback does (close the client, send more, reconnect).
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clients/client/client_int.h"
#include "store/store_int.h"
#include "txmq/error.h"

#define DEFAULT_CONNECT_TIMEOUT_MS 10000u
#define DEFAULT_REQUEST_TIMEOUT_MS 30000u
#define DEFAULT_MAX_PENDING 65536u
#define MIN_IN_FRAME (8u * 1024u * 1024u)
#define MAX_IN_FRAME (256u * 1024u * 1024u)
#define DEFAULT_HEARTBEAT_MS 10000u
/* Buffers of frames up to this size are kept for the next frame. */
#define KEEP_FBUF (64u * 1024u)

static void tcp_close(txmq_client_t* c);
static void finish_close(txmq_client_t* c);

/* ---- diagnostics ---- */

/* Copies s into dst without control characters: a diagnostic is printed on
 * one line, and a server's text is not trusted. */
static void clean_copy(char* dst, size_t cap, const char* s, size_t len) {
  size_t o = 0;
  for (size_t i = 0; i < len && o + 1 < cap; i++) {
    unsigned char ch = (unsigned char)s[i];
    dst[o++] = (ch < 0x20 || ch == 0x7f) ? ' ' : (char)ch;
  }
  dst[o] = '\0';
}

void txmq__client_set_diag(txmq_client_t* c, const char* fmt, ...) {
  char buf[TXMQ__CLIENT_DIAG_MAX];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  clean_copy(c->diag, sizeof c->diag, buf, strlen(buf));
}

const char* txmq_client_diag(const txmq_client_t* c) {
  return c ? c->diag : "";
}

const char* txmq_client_server(const txmq_client_t* c) {
  return c ? c->server : "";
}

int txmq_client_is_connected(const txmq_client_t* c) {
  return c != NULL && c->state == ST_CONNECTED;
}

static int uv_to_txmq(int uverr) {
  switch (uverr) {
    case UV_ETIMEDOUT: return TXMQ_ETIMEDOUT;
    case UV_ENOMEM: return TXMQ_ENOMEM;
    case UV_EINVAL: return TXMQ_EINVAL;
    default: return TXMQ_EIO;
  }
}

/* ---- lifetime ---- */

static int client_id_valid(const char* s) {
  size_t n = s ? strlen(s) : 0;
  if (n < 1 || n > 127) return 0;
  for (size_t i = 0; i < n; i++) {
    char ch = s[i];
    if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
          (ch >= '0' && ch <= '9') || ch == '.' || ch == '_' || ch == ':' ||
          ch == '-'))
      return 0;
  }
  return 1;
}

static void free_strv(char** v, size_t n) {
  if (!v) return;
  for (size_t i = 0; i < n; i++) free(v[i]);
  free(v);
}

static int copy_groups(const char* const* in, size_t n, char*** out) {
  *out = NULL;
  if (n == 0) return 0;
  if (!in) return TXMQ_EINVAL;
  char** v = calloc(n, sizeof *v);
  if (!v) return TXMQ_ENOMEM;
  for (size_t i = 0; i < n; i++) {
    if (!txmq_name_valid(in[i])) {
      free_strv(v, n);
      return TXMQ_EINVAL;
    }
    v[i] = strdup(in[i]);
    if (!v[i]) {
      free_strv(v, n);
      return TXMQ_ENOMEM;
    }
  }
  *out = v;
  return 0;
}

static void client_free_mem(txmq_client_t* c) {
  free(c->client_id);
  free_strv(c->pgroups, c->npgroups);
  free_strv(c->cgroups, c->ncgroups);
  free(c->secret);
  free(c->address);
  free(c->buckets);
  free(c->fbuf);
  free(c->obuf);
  if (c->zone_ok) msgpack_zone_destroy(&c->zone);
  txmq__pool_drain(&c->req_pool);
  for (check_handler_t* h = c->handlers; h;) {
    check_handler_t* next = h->next;
    free(h->group);
    free(h);
    h = next;
  }
  txmq__client_drop_checks(c);
  if (c->addrs) uv_freeaddrinfo(c->addrs);
  free(c);
}

int txmq_client_new(txmq_client_t** out, uv_loop_t* loop,
                    const txmq_client_options_t* opts) {
  if (!out || !loop || !opts) return TXMQ_EINVAL;
  *out = NULL;
  if (!client_id_valid(opts->client_id)) return TXMQ_EINVAL;
  if (opts->role != TXMQ_ROLE_PRODUCER && opts->role != TXMQ_ROLE_CONSUMER &&
      opts->role != TXMQ_ROLE_ADMIN)
    return TXMQ_EINVAL;
  txmq_client_t* c = calloc(1, sizeof *c);
  if (!c) return TXMQ_ENOMEM;
  txmq__pool_init(&c->req_pool, sizeof(req_t), 1024);
  c->loop = loop;
  c->role = opts->role;
  c->connect_timeout_ms = opts->connect_timeout_ms ? opts->connect_timeout_ms
                                                   : DEFAULT_CONNECT_TIMEOUT_MS;
  c->request_timeout_ms = opts->request_timeout_ms ? opts->request_timeout_ms
                                                   : DEFAULT_REQUEST_TIMEOUT_MS;
  c->opt_max_frame = opts->max_frame;
  c->max_pending = opts->max_pending ? opts->max_pending : DEFAULT_MAX_PENDING;
  c->next_id = 1;
  c->nbuckets = 64;
  c->buckets = calloc(c->nbuckets, sizeof *c->buckets);
  c->client_id = strdup(opts->client_id);
  int rc = (!c->buckets || !c->client_id) ? TXMQ_ENOMEM : 0;
  if (rc == 0) rc = copy_groups(opts->producer_groups, opts->n_producer_groups,
                                &c->pgroups);
  if (rc == 0) {
    c->npgroups = opts->n_producer_groups;
    rc = copy_groups(opts->consumer_groups, opts->n_consumer_groups,
                     &c->cgroups);
  }
  if (rc == 0) {
    c->ncgroups = opts->n_consumer_groups;
    if (opts->secret && !(c->secret = strdup(opts->secret))) rc = TXMQ_ENOMEM;
  }
  if (rc == 0) {
    c->zone_ok = msgpack_zone_init(&c->zone, 4096);
    if (!c->zone_ok) rc = TXMQ_ENOMEM;
  }
  if (rc != 0) {
    client_free_mem(c);
    return rc;
  }
  uv_timer_init(loop, &c->conn_timer);
  uv_timer_init(loop, &c->req_timer);
  uv_timer_init(loop, &c->hb_timer);
  uv_check_init(loop, &c->flush_check);
  uv_prepare_init(loop, &c->flush_prep);
  c->conn_timer.data = c->req_timer.data = c->hb_timer.data = c;
  c->flush_check.data = c->flush_prep.data = c;
  c->handles_open = 5;
  *out = c;
  return 0;
}

void txmq_client_free(txmq_client_t* c) {
  if (!c) return;
  /* Handles must be closed first (txmq_client_close); freeing a client with
   * live handles would leave the loop pointing into freed memory. */
  if (c->handles_open != 0 || c->gai_active) abort();
  client_free_mem(c);
}

void txmq_client_on_disconnect(txmq_client_t* c, txmq_client_disconnect_cb cb,
                               void* arg) {
  if (!c) return;
  c->disc_cb = cb;
  c->disc_arg = arg;
}

/* ---- pending requests: a hash table on the id ---- */

static size_t bucket_of(const txmq_client_t* c, uint64_t id) {
  return (size_t)((id * 0x9e3779b97f4a7c15ull) >> 20) & (c->nbuckets - 1);
}

static void pending_grow(txmq_client_t* c) {
  size_t n = c->nbuckets * 2;
  req_t** b = calloc(n, sizeof *b);
  if (!b) return; /* keep the smaller table: only slower */
  req_t** old = c->buckets;
  size_t oldn = c->nbuckets;
  c->buckets = b;
  c->nbuckets = n;
  for (size_t i = 0; i < oldn; i++) {
    for (req_t* r = old[i]; r;) {
      req_t* next = r->hnext;
      size_t k = bucket_of(c, r->id);
      r->hnext = c->buckets[k];
      c->buckets[k] = r;
      r = next;
    }
  }
  free(old);
}

static void pending_add(txmq_client_t* c, req_t* r) {
  if (c->npending >= c->nbuckets * 2) pending_grow(c);
  size_t k = bucket_of(c, r->id);
  r->hnext = c->buckets[k];
  c->buckets[k] = r;
  c->npending++;
}

static req_t* pending_take(txmq_client_t* c, uint64_t id) {
  req_t** pp = &c->buckets[bucket_of(c, id)];
  for (; *pp; pp = &(*pp)->hnext) {
    if ((*pp)->id == id) {
      req_t* r = *pp;
      *pp = r->hnext;
      r->hnext = NULL;
      c->npending--;
      return r;
    }
  }
  return NULL;
}

static int cmp_req_id(const void* a, const void* b) {
  uint64_t x = (*(req_t* const*)a)->id, y = (*(req_t* const*)b)->id;
  return x < y ? -1 : x > y;
}

/* Detaches every pending request (or only those whose deadline passed, when
 * now != 0), in id order. *n gets the count; NULL when none. */
static req_t** pending_detach(txmq_client_t* c, uint64_t now, size_t* n) {
  *n = 0;
  if (c->npending == 0) return NULL;
  req_t** v = malloc(c->npending * sizeof *v);
  size_t k = 0;
  for (size_t i = 0; i < c->nbuckets; i++) {
    req_t** pp = &c->buckets[i];
    while (*pp) {
      req_t* r = *pp;
      if (now == 0 || r->deadline <= now) {
        if (!v) {
          /* Out of memory: fail them one at a time below instead. */
          pp = &r->hnext;
          continue;
        }
        *pp = r->hnext;
        r->hnext = NULL;
        c->npending--;
        v[k++] = r;
      } else {
        pp = &r->hnext;
      }
    }
  }
  if (k > 1) qsort(v, k, sizeof *v, cmp_req_id);
  *n = k;
  return v;
}

static void req_complete(txmq_client_t* c, req_t* r, int status,
                         const msgpack_object* resp) {
  r->done(c, r, status, resp);
  txmq__pool_put(&c->req_pool, r);
}

/* Fails every pending request with status and diag. */
static void fail_all(txmq_client_t* c, int status, const char* diag) {
  for (;;) {
    size_t n;
    req_t** v = pending_detach(c, 0, &n);
    if (v) {
      for (size_t i = 0; i < n; i++) {
        txmq__client_set_diag(c, "%s", diag);
        req_complete(c, v[i], status, NULL);
      }
      free(v);
      /* A callback cannot add requests (the client is not connected), but
       * be safe and loop until the table is empty. */
      if (c->npending == 0) return;
    } else {
      /* No memory for the array: take them one by one. */
      req_t* r = NULL;
      for (size_t i = 0; i < c->nbuckets && !r; i++) r = c->buckets[i];
      if (!r) return;
      pending_take(c, r->id);
      txmq__client_set_diag(c, "%s", diag);
      req_complete(c, r, status, NULL);
    }
  }
}

/* ---- request timeouts ---- */

static void arm_req_timer(txmq_client_t* c);

static void on_req_timer(uv_timer_t* t) {
  txmq_client_t* c = t->data;
  c->armed_deadline = 0;
  uint64_t now = uv_now(c->loop);
  size_t n;
  req_t** v = pending_detach(c, now, &n);
  for (size_t i = 0; i < n; i++) {
    req_t* r = v[i];
    txmq__client_set_diag(c, "no response to '%s' in time", r->op);
    req_complete(c, r, TXMQ_ETIMEDOUT, NULL);
  }
  free(v);
  if (c->state == ST_CONNECTED) arm_req_timer(c);
}

static void arm_req_timer(txmq_client_t* c) {
  uint64_t min = 0;
  for (size_t i = 0; i < c->nbuckets; i++)
    for (req_t* r = c->buckets[i]; r; r = r->hnext)
      if (min == 0 || r->deadline < min) min = r->deadline;
  if (min == 0) {
    uv_timer_stop(&c->req_timer);
    c->armed_deadline = 0;
    return;
  }
  uint64_t now = uv_now(c->loop);
  c->armed_deadline = min;
  uv_timer_start(&c->req_timer, on_req_timer, min > now ? min - now : 0, 0);
}

/* ---- writing ---- */

typedef struct {
  uv_write_t req;
  char* data;
} wreq_t;

static void lose(txmq_client_t* c, int status, const char* fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void on_write(uv_write_t* req, int status) {
  wreq_t* w = (wreq_t*)req;
  txmq_client_t* c = req->handle->data;
  free(w->data);
  free(w);
  if (status < 0 && status != UV_ECANCELED && c->state == ST_CONNECTED)
    lose(c, TXMQ_EIO, "writing to the server failed: %s", uv_strerror(status));
}

/* Writes the requests queued in this loop turn with one write. */
static void flush_out(txmq_client_t* c) {
  if (c->flush_armed) {
    c->flush_armed = 0;
    uv_check_stop(&c->flush_check);
    uv_prepare_stop(&c->flush_prep);
  }
  if (c->olen == 0) return;
  if (!c->tcp_open || uv_is_closing((uv_handle_t*)&c->tcp) ||
      (c->state != ST_CONNECTED && c->state != ST_HANDSHAKE &&
       c->state != ST_CLOSING)) {
    c->olen = 0; /* the connection they were for is gone */
    return;
  }
  wreq_t* w = malloc(sizeof *w);
  if (!w) {
    c->olen = 0;
    lose(c, TXMQ_ENOMEM, "out of memory writing to the server");
    return;
  }
  w->data = c->obuf;
  uv_buf_t buf = uv_buf_init(c->obuf, (unsigned)c->olen);
  c->obuf = NULL;
  c->olen = c->ocap = 0;
  int rc = uv_write(&w->req, (uv_stream_t*)&c->tcp, &buf, 1, on_write);
  if (rc < 0) {
    free(w->data);
    free(w);
    lose(c, TXMQ_EIO, "writing to the server failed: %s", uv_strerror(rc));
  }
}

static void on_flush_check(uv_check_t* h) {
  flush_out(h->data);
}

static void on_flush_prep(uv_prepare_t* h) {
  flush_out(h->data);
}

/* Patches the length, checks the limit and queues the frame for the end of
 * the loop turn; frees f in every case. */
static int frame_write(txmq_client_t* c, frame_t* f) {
  if (f->err) {
    txmq__frame_destroy(f);
    txmq__client_set_diag(c, "out of memory building a request");
    return TXMQ_ENOMEM;
  }
  size_t len = f->sb.size - 4;
  uint32_t limit = c->server_max_frame ? c->server_max_frame : MIN_IN_FRAME;
  if (len > limit) {
    txmq__frame_destroy(f);
    txmq__client_set_diag(c, "request of %zu bytes is over the server's frame "
                          "limit of %u bytes", len, limit);
    return TXMQ_ETOOBIG;
  }
  uint8_t* p = (uint8_t*)f->sb.data;
  p[0] = (uint8_t)(len >> 24);
  p[1] = (uint8_t)(len >> 16);
  p[2] = (uint8_t)(len >> 8);
  p[3] = (uint8_t)len;
  size_t total = f->sb.size;
  if (c->olen + total > c->ocap) {
    size_t cap = c->ocap ? c->ocap : 4096;
    while (cap < c->olen + total) cap *= 2;
    char* nb = realloc(c->obuf, cap);
    if (!nb) {
      txmq__frame_destroy(f);
      txmq__client_set_diag(c, "out of memory");
      return TXMQ_ENOMEM;
    }
    c->obuf = nb;
    c->ocap = cap;
  }
  memcpy(c->obuf + c->olen, f->sb.data, total);
  c->olen += total;
  txmq__frame_destroy(f);
  if (!c->flush_armed) {
    c->flush_armed = 1;
    uv_check_start(&c->flush_check, on_flush_check);
    uv_prepare_start(&c->flush_prep, on_flush_prep);
  }
  c->last_send = uv_now(c->loop);
  return 0;
}

int txmq__frame_send(txmq_client_t* c, frame_t* f) {
  if (c->state != ST_CONNECTED && c->state != ST_HANDSHAKE) {
    txmq__frame_destroy(f);
    return TXMQ_ECLOSED;
  }
  return frame_write(c, f);
}

int txmq__client_ready(txmq_client_t* c) {
  if (c->state == ST_CONNECTED) return 0;
  if (c->state == ST_CLOSING || c->state == ST_CLOSED)
    txmq__client_set_diag(c, "the client is closed");
  else
    txmq__client_set_diag(c, "not connected");
  return TXMQ_ECLOSED;
}

req_t* txmq__req_new(txmq_client_t* c, const char* op, req_done_fn done,
                     void (*cb)(void), void* arg) {
  req_t* r = txmq__pool_get(&c->req_pool);
  if (!r) return NULL;
  r->id = c->next_id++;
  r->op = op;
  r->done = done;
  r->cb = cb;
  r->arg = arg;
  return r;
}

int txmq__req_submit(txmq_client_t* c, frame_t* f, req_t* r, int rc,
                     uint64_t extra_ms) {
  if (rc == 0 && !r) rc = TXMQ_ENOMEM;
  if (rc == 0 && c->npending >= c->max_pending) {
    txmq__client_set_diag(c, "%zu requests outstanding (max_pending)",
                          c->npending);
    rc = TXMQ_EAGAIN;
  }
  if (rc == 0) rc = txmq__client_ready(c);
  if (rc != 0) {
    txmq__frame_destroy(f);
    txmq__pool_put(&c->req_pool, r);
    return rc;
  }
  rc = frame_write(c, f);
  if (rc != 0) {
    txmq__pool_put(&c->req_pool, r);
    return rc;
  }
  /* The loop's clock is as old as its last turn: a blocking client's loop
   * runs only during calls, so without this a request after an idle
   * spell would time out at once (and be sent anyway). */
  uv_update_time(c->loop);
  r->deadline = uv_now(c->loop) + c->request_timeout_ms + extra_ms;
  if (r->deadline == 0) r->deadline = 1;
  pending_add(c, r);
  if (c->armed_deadline == 0 || r->deadline < c->armed_deadline) {
    uint64_t now = uv_now(c->loop);
    c->armed_deadline = r->deadline;
    uv_timer_start(&c->req_timer, on_req_timer,
                   r->deadline > now ? r->deadline - now : 0, 0);
  }
  return 0;
}

/* ---- handshake ---- */

static void conn_fail(txmq_client_t* c, int status, const char* fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void report_connect(txmq_client_t* c) {
  txmq_client_connect_cb cb = c->connect_cb;
  void* arg = c->connect_arg;
  int status = c->conn_status;
  c->connect_cb = NULL;
  c->connect_arg = NULL;
  c->state = ST_IDLE;
  if (c->addrs) {
    uv_freeaddrinfo(c->addrs);
    c->addrs = c->next_addr = NULL;
  }
  clean_copy(c->diag, sizeof c->diag, c->conn_diag, strlen(c->conn_diag));
  if (cb) cb(c, status, arg);
}

static void conn_fail(txmq_client_t* c, int status, const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(c->conn_diag, sizeof c->conn_diag, fmt, ap);
  va_end(ap);
  c->conn_status = status;
  c->state = ST_CONN_FAILING;
  uv_timer_stop(&c->conn_timer);
  uv_timer_stop(&c->hb_timer);
  if (c->tcp_open) {
    tcp_close(c);
  } else if (c->gai_active) {
    uv_cancel((uv_req_t*)&c->gai);
  } else {
    report_connect(c);
  }
}

static void on_hb_timer(uv_timer_t* t);

static void hello_response(txmq_client_t* c, const msgpack_object* o) {
  const msgpack_object* ok = txmq_client_map_get(o, "ok");
  if (!ok || ok->type != MSGPACK_OBJECT_BOOLEAN) {
    conn_fail(c, TXMQ_EPROTO, "malformed handshake response: no 'ok'");
    return;
  }
  if (!ok->via.boolean) {
    int code = txmq__resp_error(c, "hello", o);
    conn_fail(c, code, "the server refused the connection: %s", c->diag);
    return;
  }
  int64_t version, max_frame = MIN_IN_FRAME, hb = DEFAULT_HEARTBEAT_MS;
  const char* server = NULL;
  size_t server_len = 0;
  if (txmq__rd_int(c, "hello", o, "version", 0, INT32_MAX, &version) != 0) {
    conn_fail(c, TXMQ_EPROTO, "%s", c->diag);
    return;
  }
  if (version != TXMQ_PROTOCOL_VERSION) {
    conn_fail(c, TXMQ_EPROTO, "the server speaks protocol version %lld, "
              "this client %d", (long long)version, TXMQ_PROTOCOL_VERSION);
    return;
  }
  if ((txmq_client_map_get(o, "max_frame") &&
       txmq__rd_int(c, "hello", o, "max_frame", 1, UINT32_MAX, &max_frame)) ||
      (txmq_client_map_get(o, "heartbeat_ms") &&
       txmq__rd_int(c, "hello", o, "heartbeat_ms", 0, 86400000, &hb)) ||
      txmq__rd_str(c, "hello", o, "server", 1, &server, &server_len)) {
    conn_fail(c, TXMQ_EPROTO, "%s", c->diag);
    return;
  }
  clean_copy(c->server, sizeof c->server, server ? server : "", server_len);
  c->server_max_frame = (uint32_t)max_frame;
  if (c->opt_max_frame) {
    c->in_max_frame = c->opt_max_frame;
  } else {
    uint32_t m = (uint32_t)max_frame;
    c->in_max_frame = m < MIN_IN_FRAME ? MIN_IN_FRAME
                                       : m > MAX_IN_FRAME ? MAX_IN_FRAME : m;
  }
  c->heartbeat_ms = hb > 0 ? (uint32_t)hb : 0;
  c->state = ST_CONNECTED;
  uv_timer_stop(&c->conn_timer);
  c->last_recv = c->last_send = uv_now(c->loop);
  if (c->heartbeat_ms) {
    uint64_t tick = c->heartbeat_ms / 2 ? c->heartbeat_ms / 2 : 1;
    uv_timer_start(&c->hb_timer, on_hb_timer, tick, tick);
  }
  txmq_client_connect_cb cb = c->connect_cb;
  void* arg = c->connect_arg;
  c->connect_cb = NULL;
  c->connect_arg = NULL;
  if (c->addrs) {
    uv_freeaddrinfo(c->addrs);
    c->addrs = c->next_addr = NULL;
  }
  c->diag[0] = '\0';
  if (cb) cb(c, 0, arg);
}

static void send_hello(txmq_client_t* c) {
  static const char* const roles[] = {"producer", "consumer", "admin"};
  frame_t f;
  txmq__frame_init(&f, 7 + (c->secret != NULL));
  c->hello_id = c->next_id++;
  txmq__fp_str(&f, "op", "hello");
  txmq__fp_int(&f, "id", (int64_t)c->hello_id);
  txmq__fp_int(&f, "version", TXMQ_PROTOCOL_VERSION);
  txmq__fp_str(&f, "client", c->client_id);
  txmq__fp_str(&f, "role", roles[c->role]);
  char** lists[2] = {c->pgroups, c->cgroups};
  size_t counts[2] = {c->npgroups, c->ncgroups};
  const char* keys[2] = {"producer_groups", "consumer_groups"};
  for (int k = 0; k < 2; k++) {
    txmq__fp_key(&f, keys[k]);
    f.err |= msgpack_pack_array(&f.pk, counts[k]);
    for (size_t i = 0; i < counts[k]; i++) {
      size_t n = strlen(lists[k][i]);
      f.err |= msgpack_pack_str(&f.pk, n);
      f.err |= msgpack_pack_str_body(&f.pk, lists[k][i], n);
    }
  }
  if (c->secret) txmq__fp_str(&f, "secret", c->secret);
  int rc = frame_write(c, &f);
  if (rc != 0) conn_fail(c, rc, "sending the handshake failed: %s", c->diag);
}

/* ---- frames from the server ---- */

/* The stream can no longer be trusted (or the server is gone). */
static void lose(txmq_client_t* c, int status, const char* fmt, ...) {
  char buf[TXMQ__CLIENT_DIAG_MAX];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  if (c->state == ST_RESOLVING || c->state == ST_CONNECTING ||
      c->state == ST_HANDSHAKE) {
    conn_fail(c, status, "%s", buf);
    return;
  }
  if (c->state != ST_CONNECTED) return;
  c->state = ST_DISCONNECTING;
  c->lost_status = status;
  snprintf(c->lost_diag, sizeof c->lost_diag, "%s", buf);
  uv_timer_stop(&c->hb_timer);
  uv_timer_stop(&c->req_timer);
  c->armed_deadline = 0;
  tcp_close(c);
}

static void handle_response(txmq_client_t* c, uint64_t re,
                            const msgpack_object* o) {
  if (c->state == ST_HANDSHAKE) {
    if (re != c->hello_id) {
      conn_fail(c, TXMQ_EPROTO, "the server sent something other than the "
                "handshake response");
      return;
    }
    hello_response(c, o);
    return;
  }
  req_t* r = pending_take(c, re);
  if (!r) {
    if (re == 0 || re >= c->next_id) {
      /* An answer to nothing we sent: re=0 is the server complaining about
       * a frame it could not read (it closes next); keep its words for the
       * disconnect diagnostic. */
      const msgpack_object* m = txmq_client_map_get(o, "msg");
      if (re == 0 && m && m->type == MSGPACK_OBJECT_STR)
        clean_copy(c->server_err, sizeof c->server_err, m->via.str.ptr,
                   m->via.str.size);
      if (re != 0)
        lose(c, TXMQ_EPROTO, "the server answered request %llu, which was "
             "never sent", (unsigned long long)re);
    }
    /* Otherwise a late answer to a request that timed out: dropped. */
    return;
  }
  const msgpack_object* ok = txmq_client_map_get(o, "ok");
  if (!ok || ok->type != MSGPACK_OBJECT_BOOLEAN) {
    txmq__client_set_diag(c, "malformed response to '%s': no boolean 'ok'",
                          r->op);
    req_complete(c, r, TXMQ_EPROTO, NULL);
  } else if (!ok->via.boolean) {
    int code = txmq__resp_error(c, r->op, o);
    req_complete(c, r, code, NULL);
  } else {
    c->diag[0] = '\0';
    req_complete(c, r, 0, o);
  }
  if (c->state == ST_CONNECTED && c->npending == 0) {
    uv_timer_stop(&c->req_timer);
    c->armed_deadline = 0;
  }
}

static void handle_frame(txmq_client_t* c, const uint8_t* buf, size_t len) {
  msgpack_unpacked u;
  msgpack_unpacked_init(&u);
  msgpack_object obj;
  int zoned = c->zone_ok && !c->zone_busy;
  int rc;
  if (zoned) {
    c->zone_busy = 1;
    rc = txmq__mp_unpack_zone(buf, len, TXMQ__MP_MAX_DEPTH,
                              TXMQ__CLIENT_MAX_ITEMS, &c->zone, &obj);
  } else {
    rc = txmq__mp_unpack(buf, len, TXMQ__MP_MAX_DEPTH,
                         TXMQ__CLIENT_MAX_ITEMS, &u);
    obj = u.data;
  }
  if (rc != 0) {
    if (zoned) {
      msgpack_zone_clear(&c->zone);
      c->zone_busy = 0;
    }
    msgpack_unpacked_destroy(&u);
    lose(c, TXMQ_EPROTO, "the server sent a frame that is not one valid "
         "msgpack value");
    return;
  }
  const msgpack_object* o = &obj;
  const msgpack_object* re = txmq_client_map_get(o, "re");
  /* A response is all a frame with 're' can be. */
  const msgpack_object* op = re ? NULL : txmq_client_map_get(o, "op");
  if (o->type != MSGPACK_OBJECT_MAP) {
    lose(c, TXMQ_EPROTO, "the server sent a frame that is not a map");
  } else if (re) {
    if (re->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
      lose(c, TXMQ_EPROTO, "the server sent a response whose 're' is not a "
           "non-negative integer");
    else
      handle_response(c, re->via.u64, o);
  } else if (op && c->state == ST_CONNECTED) {
    const msgpack_object* id = txmq_client_map_get(o, "id");
    if (op->type != MSGPACK_OBJECT_STR)
      txmq__client_reply_error(c, 0, TXMQ_EPROTO, "'op' is not a string");
    else if (!id || id->type != MSGPACK_OBJECT_POSITIVE_INTEGER ||
             id->via.u64 == 0 || id->via.u64 >= (1ull << 53))
      txmq__client_reply_error(c, 0, TXMQ_EPROTO,
                               "request without a valid 'id'");
    else
      txmq__client_server_request(c, op->via.str.ptr, op->via.str.size,
                                  id->via.u64, o);
  } else if (c->state == ST_HANDSHAKE) {
    conn_fail(c, TXMQ_EPROTO, "the server sent a request before the "
              "handshake response");
  } else {
    txmq__client_reply_error(c, 0, TXMQ_EPROTO,
                             "frame with neither 'op' nor 're'");
  }
  if (zoned) {
    msgpack_zone_clear(&c->zone);
    c->zone_busy = 0;
  }
  msgpack_unpacked_destroy(&u);
}

static int reading(const txmq_client_t* c) {
  return c->state == ST_HANDSHAKE || c->state == ST_CONNECTED;
}

static void feed(txmq_client_t* c, const uint8_t* p, size_t n) {
  while (n > 0 && reading(c)) {
    if (c->hdr_got < 4) {
      size_t k = 4 - c->hdr_got < n ? 4 - c->hdr_got : n;
      memcpy(c->hdr + c->hdr_got, p, k);
      c->hdr_got += k;
      p += k;
      n -= k;
      if (c->hdr_got < 4) return;
      uint32_t len = (uint32_t)c->hdr[0] << 24 | (uint32_t)c->hdr[1] << 16 |
                     (uint32_t)c->hdr[2] << 8 | c->hdr[3];
      uint32_t limit = c->in_max_frame ? c->in_max_frame : MIN_IN_FRAME;
      if (len == 0 || len > limit) {
        lose(c, TXMQ_EPROTO, "the server sent a frame of %u bytes (limit %u)",
             len, limit);
        return;
      }
      c->flen = len;
      c->fgot = 0;
      /* The payload comes with a later read (and the frame buffer may not
       * exist yet: nothing to copy into it now). */
      if (n == 0) return;
      if (n >= len) {
        /* All of it is here: handled where it is, without a copy (the
         * read buffer is not reused before the next read). */
        c->hdr_got = 0;
        p += len;
        n -= len;
        handle_frame(c, p - len, len);
        continue;
      }
    }
    size_t k = c->flen - c->fgot < n ? c->flen - c->fgot : n;
    if (c->fgot + k > c->fcap) {
      /* Grow with the bytes that really arrived, not with the declared
       * length: a lying length prefix costs nothing. */
      size_t cap = c->fcap ? c->fcap * 2 : 4096;
      if (cap < c->fgot + k) cap = c->fgot + k;
      if (cap > c->flen) cap = c->flen;
      uint8_t* nb = realloc(c->fbuf, cap);
      if (!nb) {
        lose(c, TXMQ_ENOMEM, "out of memory reading a frame of %zu bytes",
             c->flen);
        return;
      }
      c->fbuf = nb;
      c->fcap = cap;
    }
    memcpy(c->fbuf + c->fgot, p, k);
    c->fgot += k;
    p += k;
    n -= k;
    if (c->fgot == c->flen) {
      c->hdr_got = 0;
      handle_frame(c, c->fbuf, c->flen);
      if (c->fcap > KEEP_FBUF) {
        free(c->fbuf);
        c->fbuf = NULL;
        c->fcap = 0;
      }
    }
  }
}

static void on_alloc(uv_handle_t* h, size_t suggested, uv_buf_t* buf) {
  (void)suggested;
  txmq_client_t* c = h->data;
  buf->base = c->rbuf;
  buf->len = sizeof c->rbuf;
}

static void on_read(uv_stream_t* s, ssize_t nread, const uv_buf_t* buf) {
  txmq_client_t* c = s->data;
  if (nread == 0) return;
  if (nread < 0) {
    if (nread == UV_EOF) {
      if (c->server_err[0])
        lose(c, TXMQ_ECLOSED, "the server closed the connection: %s",
             c->server_err);
      else
        lose(c, TXMQ_ECLOSED, "the server closed the connection");
    } else {
      lose(c, TXMQ_EIO, "reading from the server failed: %s",
           uv_strerror((int)nread));
    }
    return;
  }
  c->last_recv = uv_now(c->loop);
  feed(c, (const uint8_t*)buf->base, (size_t)nread);
}

/* ---- heartbeat ---- */

static void ping_done(txmq_client_t* c, req_t* r, int status,
                      const msgpack_object* resp) {
  (void)r;
  (void)status;
  (void)resp;
  c->ping_outstanding = 0;
}

static void on_hb_timer(uv_timer_t* t) {
  txmq_client_t* c = t->data;
  if (c->state != ST_CONNECTED) return;
  uint64_t now = uv_now(c->loop);
  uint64_t hb = c->heartbeat_ms;
  if (now - c->last_recv > 3 * hb + 1000) {
    lose(c, TXMQ_ETIMEDOUT, "nothing from the server for %llu ms",
         (unsigned long long)(now - c->last_recv));
    return;
  }
  /* A ping when we have sent nothing (the server's idle limit) and when
   * we have heard nothing (requests held on the server, such as long
   * polls, keep us sending without answers: the ping's answer shows the
   * server is alive). */
  if ((now - c->last_send >= hb || now - c->last_recv >= hb) &&
      !c->ping_outstanding) {
    req_t* r = txmq__req_new(c, "ping", ping_done, NULL, NULL);
    frame_t f;
    txmq__frame_init(&f, 2);
    if (r) {
      txmq__fp_str(&f, "op", "ping");
      txmq__fp_int(&f, "id", (int64_t)r->id);
    }
    if (txmq__req_submit(c, &f, r, 0, 0) == 0) c->ping_outstanding = 1;
  }
}

/* ---- connect ---- */

static void on_conn_timer(uv_timer_t* t) {
  txmq_client_t* c = t->data;
  if (c->state == ST_RESOLVING || c->state == ST_CONNECTING ||
      c->state == ST_HANDSHAKE)
    conn_fail(c, TXMQ_ETIMEDOUT, "timed out after %u ms",
              c->connect_timeout_ms);
}

static void try_next(txmq_client_t* c);

static void on_connect(uv_connect_t* req, int status) {
  txmq_client_t* c = req->handle->data;
  if (c->state != ST_CONNECTING) return; /* closing or failed meanwhile */
  if (status < 0) {
    c->last_uv_err = status;
    if (c->next_addr) {
      tcp_close(c); /* on_tcp_close tries the next address */
    } else {
      conn_fail(c, uv_to_txmq(status), "%s", uv_strerror(status));
    }
    return;
  }
  int rc = uv_read_start((uv_stream_t*)&c->tcp, on_alloc, on_read);
  if (rc < 0) {
    conn_fail(c, TXMQ_EIO, "%s", uv_strerror(rc));
    return;
  }
  c->state = ST_HANDSHAKE;
  c->hdr_got = 0;
  c->server_err[0] = '\0';
  c->in_max_frame = c->opt_max_frame ? c->opt_max_frame : MIN_IN_FRAME;
  c->server_max_frame = 0;
  send_hello(c);
}

static void try_next(txmq_client_t* c) {
  struct addrinfo* ai = c->next_addr;
  c->next_addr = ai->ai_next;
  int rc = uv_tcp_init(c->loop, &c->tcp);
  if (rc < 0) {
    conn_fail(c, uv_to_txmq(rc), "%s", uv_strerror(rc));
    return;
  }
  c->tcp.data = c;
  c->tcp_open = 1;
  c->handles_open++;
  uv_tcp_nodelay(&c->tcp, 1);
  rc = uv_tcp_connect(&c->conn_req, &c->tcp, ai->ai_addr, on_connect);
  if (rc < 0) {
    c->last_uv_err = rc;
    if (c->next_addr)
      tcp_close(c);
    else
      conn_fail(c, uv_to_txmq(rc), "%s", uv_strerror(rc));
  }
}

static void on_resolved(uv_getaddrinfo_t* req, int status,
                        struct addrinfo* res) {
  txmq_client_t* c = req->data;
  c->gai_active = 0;
  if (c->state == ST_CLOSING) {
    if (res) uv_freeaddrinfo(res);
    finish_close(c);
    return;
  }
  if (c->state == ST_CONN_FAILING) {
    if (res) uv_freeaddrinfo(res);
    report_connect(c);
    return;
  }
  if (status < 0 || !res) {
    if (res) uv_freeaddrinfo(res);
    conn_fail(c, TXMQ_EIO, "cannot resolve the host: %s",
              uv_strerror(status < 0 ? status : UV_EAI_NONAME));
    return;
  }
  c->addrs = c->next_addr = res;
  c->state = ST_CONNECTING;
  try_next(c);
}

/* Splits "host:port", "[v6]:port", "host" into host and port. */
static int parse_address(const char* s, char* host, size_t hostcap,
                         char port[8]) {
  const char* h = s;
  size_t hl;
  const char* p = NULL;
  if (!s || !*s) return TXMQ_EINVAL;
  if (s[0] == '[') {
    const char* e = strchr(s, ']');
    if (!e) return TXMQ_EINVAL;
    h = s + 1;
    hl = (size_t)(e - h);
    if (e[1] == ':')
      p = e + 2;
    else if (e[1] != '\0')
      return TXMQ_EINVAL;
  } else {
    const char* colon = strrchr(s, ':');
    if (colon && strchr(s, ':') != colon) return TXMQ_EINVAL; /* bare v6 */
    hl = colon ? (size_t)(colon - s) : strlen(s);
    if (colon) p = colon + 1;
  }
  if (hl == 0 || hl >= hostcap) return TXMQ_EINVAL;
  memcpy(host, h, hl);
  host[hl] = '\0';
  if (!p) {
    snprintf(port, 8, "%d", TXMQ_DEFAULT_PORT);
    return 0;
  }
  size_t pl = strlen(p);
  if (pl == 0 || pl > 5) return TXMQ_EINVAL;
  unsigned v = 0;
  for (size_t i = 0; i < pl; i++) {
    if (p[i] < '0' || p[i] > '9') return TXMQ_EINVAL;
    v = v * 10 + (unsigned)(p[i] - '0');
  }
  if (v == 0 || v > 65535) return TXMQ_EINVAL;
  snprintf(port, 8, "%u", v);
  return 0;
}

int txmq_client_connect(txmq_client_t* c, const char* hostport,
                        txmq_client_connect_cb cb, void* arg) {
  if (!c) return TXMQ_EINVAL;
  if (c->state == ST_CLOSING || c->state == ST_CLOSED) {
    txmq__client_set_diag(c, "the client is closed");
    return TXMQ_ECLOSED;
  }
  if (c->state != ST_IDLE) {
    txmq__client_set_diag(c, "already connected or connecting");
    return TXMQ_EBUSY;
  }
  char host[256], port[8];
  if (parse_address(hostport, host, sizeof host, port) != 0) {
    txmq__client_set_diag(c, "invalid address '%s': expected HOST:PORT",
                          hostport ? hostport : "");
    return TXMQ_EINVAL;
  }
  char* addr = strdup(hostport);
  if (!addr) return TXMQ_ENOMEM;
  struct addrinfo hints;
  memset(&hints, 0, sizeof hints);
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_protocol = IPPROTO_TCP;
  hints.ai_flags = AI_NUMERICSERV;
  c->gai.data = c;
  int rc = uv_getaddrinfo(c->loop, &c->gai, on_resolved, host, port, &hints);
  if (rc < 0) {
    free(addr);
    txmq__client_set_diag(c, "cannot resolve the host: %s", uv_strerror(rc));
    return TXMQ_EIO;
  }
  free(c->address);
  c->address = addr;
  c->gai_active = 1;
  c->state = ST_RESOLVING;
  c->connect_cb = cb;
  c->connect_arg = arg;
  c->conn_status = 0;
  c->conn_diag[0] = '\0';
  c->lost_status = 0;
  c->server[0] = '\0';
  c->last_uv_err = 0;
  uv_update_time(c->loop); /* the timeout counts from now (see submit) */
  uv_timer_start(&c->conn_timer, on_conn_timer, c->connect_timeout_ms, 0);
  return 0;
}

/* ---- closing the socket, losing the connection, closing the client ---- */

static void finish_lost(txmq_client_t* c) {
  int status = c->lost_status;
  char diag[TXMQ__CLIENT_DIAG_MAX];
  snprintf(diag, sizeof diag, "%s", c->lost_diag);
  txmq__client_drop_checks(c);
  c->ping_outstanding = 0;
  c->state = ST_IDLE;
  fail_all(c, status, diag);
  /* The callbacks may have reconnected or closed the client; a closed one
   * does not hear about the loss. */
  if (c->disc_cb && c->state != ST_CLOSING && c->state != ST_CLOSED) {
    txmq__client_set_diag(c, "%s", diag);
    c->disc_cb(c, status, c->disc_arg);
  }
}

static void on_tcp_close(uv_handle_t* h) {
  txmq_client_t* c = h->data;
  c->tcp_open = 0;
  c->handles_open--;
  c->olen = 0; /* requests for the connection that is gone */
  c->hdr_got = 0;
  c->fgot = c->flen = 0;
  if (c->fcap > KEEP_FBUF) {
    free(c->fbuf);
    c->fbuf = NULL;
    c->fcap = 0;
  }
  switch (c->state) {
    case ST_CLOSING:
      finish_close(c);
      break;
    case ST_CONNECTING:
      try_next(c); /* the previous address failed */
      break;
    case ST_CONN_FAILING:
      if (!c->gai_active) report_connect(c);
      break;
    case ST_DISCONNECTING:
      finish_lost(c);
      break;
    default:
      break;
  }
}

static void tcp_close(txmq_client_t* c) {
  if (c->tcp_open && !uv_is_closing((uv_handle_t*)&c->tcp))
    uv_close((uv_handle_t*)&c->tcp, on_tcp_close);
}

static void on_timer_close(uv_handle_t* h) {
  txmq_client_t* c = h->data;
  c->handles_open--;
  finish_close(c);
}

static void finish_close(txmq_client_t* c) {
  if (c->state != ST_CLOSING || c->handles_open > 0 || c->gai_active) return;
  c->state = ST_CLOSED;
  txmq__client_drop_checks(c);
  if (c->addrs) {
    uv_freeaddrinfo(c->addrs);
    c->addrs = c->next_addr = NULL;
  }
  fail_all(c, TXMQ_ECLOSED, "the client was closed");
  if (c->connect_cb) {
    txmq_client_connect_cb cb = c->connect_cb;
    c->connect_cb = NULL;
    txmq__client_set_diag(c, "the client was closed");
    cb(c, TXMQ_ECLOSED, c->connect_arg);
  }
  txmq_client_close_cb cb = c->close_cb;
  void* arg = c->close_arg;
  c->diag[0] = '\0';
  if (cb) cb(c, arg); /* may free c */
}

int txmq_client_close(txmq_client_t* c, txmq_client_close_cb cb, void* arg) {
  if (!c) return TXMQ_EINVAL;
  if (c->state == ST_CLOSING || c->state == ST_CLOSED) return TXMQ_ECLOSED;
  int prev = c->state;
  c->state = ST_CLOSING;
  c->close_cb = cb;
  c->close_arg = arg;
  /* A connect that already failed and waits to be reported is reported as
   * closed instead; one in progress the same. */
  if (prev == ST_CONN_FAILING) c->conn_status = TXMQ_ECLOSED;
  flush_out(c); /* what was sent before the close is written, as it was */
  uv_close((uv_handle_t*)&c->flush_check, on_timer_close);
  uv_close((uv_handle_t*)&c->flush_prep, on_timer_close);
  uv_close((uv_handle_t*)&c->conn_timer, on_timer_close);
  uv_close((uv_handle_t*)&c->req_timer, on_timer_close);
  uv_close((uv_handle_t*)&c->hb_timer, on_timer_close);
  c->armed_deadline = 0;
  tcp_close(c);
  if (c->gai_active) uv_cancel((uv_req_t*)&c->gai);
  return 0;
}

/* ---- response helpers ---- */

const msgpack_object* txmq_client_map_get(const msgpack_object* map,
                                          const char* key) {
  if (!map || map->type != MSGPACK_OBJECT_MAP || !key) return NULL;
  size_t kl = strlen(key);
  for (uint32_t i = 0; i < map->via.map.size; i++) {
    const msgpack_object* k = &map->via.map.ptr[i].key;
    /* The first byte before memcmp: most keys differ there or in length. */
    if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == kl &&
        (kl == 0 || k->via.str.ptr[0] == key[0]) &&
        memcmp(k->via.str.ptr, key, kl) == 0)
      return &map->via.map.ptr[i].val;
  }
  return NULL;
}

int txmq__resp_error(txmq_client_t* c, const char* op,
                     const msgpack_object* resp) {
  const msgpack_object* code = txmq_client_map_get(resp, "code");
  const msgpack_object* err = txmq_client_map_get(resp, "err");
  const msgpack_object* msg = txmq_client_map_get(resp, "msg");
  int status = 0;
  if (code && code->type == MSGPACK_OBJECT_NEGATIVE_INTEGER &&
      code->via.i64 >= INT32_MIN)
    status = (int)code->via.i64;
  if (status == 0 && err && err->type == MSGPACK_OBJECT_STR) {
    for (int v = -1; v >= TXMQ_ERRNO_MIN; v--) {
      const char* name = txmq_err_name(v);
      if (strlen(name) == err->via.str.size &&
          memcmp(name, err->via.str.ptr, err->via.str.size) == 0)
        status = v;
    }
  }
  if (status == 0) status = TXMQ_EPROTO;
  if (msg && msg->type == MSGPACK_OBJECT_STR && msg->via.str.size > 0) {
    clean_copy(c->diag, sizeof c->diag, msg->via.str.ptr, msg->via.str.size);
  } else {
    txmq__client_set_diag(c, "'%s' failed: %s", op, txmq_strerror(status));
  }
  return status;
}

int txmq__rd_int(txmq_client_t* c, const char* op, const msgpack_object* m,
                 const char* key, int64_t min, int64_t max, int64_t* out) {
  const msgpack_object* v = txmq_client_map_get(m, key);
  int64_t x;
  if (v && v->type == MSGPACK_OBJECT_POSITIVE_INTEGER &&
      v->via.u64 <= (uint64_t)INT64_MAX) {
    x = (int64_t)v->via.u64;
  } else if (v && v->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
    x = v->via.i64;
  } else {
    txmq__client_set_diag(c, "malformed '%s' frame from the server: '%s' is missing or "
                          "not an integer", op, key);
    return TXMQ_EPROTO;
  }
  if (x < min || x > max) {
    txmq__client_set_diag(c, "malformed '%s' frame from the server: '%s' is out of "
                          "range", op, key);
    return TXMQ_EPROTO;
  }
  *out = x;
  return 0;
}

int txmq__rd_id(txmq_client_t* c, const char* op, const msgpack_object* m,
                const char* key, uint8_t out[16]) {
  const msgpack_object* v = txmq_client_map_get(m, key);
  if (!v || v->type != MSGPACK_OBJECT_BIN || v->via.bin.size != 16) {
    txmq__client_set_diag(c, "malformed '%s' frame from the server: '%s' is missing or "
                          "not a 16-byte bin", op, key);
    return TXMQ_EPROTO;
  }
  memcpy(out, v->via.bin.ptr, 16);
  return 0;
}

int txmq__rd_str(txmq_client_t* c, const char* op, const msgpack_object* m,
                 const char* key, int optional, const char** p, size_t* len) {
  const msgpack_object* v = txmq_client_map_get(m, key);
  *p = NULL;
  *len = 0;
  if ((!v || v->type == MSGPACK_OBJECT_NIL) && optional) return 0;
  if (!v || v->type != MSGPACK_OBJECT_STR) {
    txmq__client_set_diag(c, "malformed '%s' frame from the server: '%s' is missing or "
                          "not a string", op, key);
    return TXMQ_EPROTO;
  }
  *p = v->via.str.ptr;
  *len = v->via.str.size;
  return 0;
}
