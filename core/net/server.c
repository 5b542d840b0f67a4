/*
 * server.c - the txmq server's connections (txmq/net.h): the listener, the
 * per-connection frame reader, output, back-pressure, the sweep timer and
 * the server's close.
 *
 * What it provides: every byte from a socket goes through one incremental
 * frame reader per connection whose buffer holds at most one frame plus one
 * read chunk; a frame is checked (length 1..max_frame, exactly one bounded
 * msgpack map) before any operation sees it. Requests of a connection are
 * processed while it has fewer than max_inflight in progress and fewer than
 * max_output response bytes queued; otherwise its socket is not read (TCP
 * back-pressure), so a client that pipelines without reading cannot grow
 * the server's memory. One repeating timer closes idle connections,
 * connections whose output stays full, and polite closes that linger.
 *
 * What it does not do: operations (ops.c) and checks (check.c).
 *
 * Memory: a connection is freed when its handle's close callback ran and
 * no request or write holds it any more (refs), so a request the runtime
 * answers after the connection closed still finds it (and drops the
 * answer).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "net/net_int.h"
#include "store/store_int.h"
#include "txmq/error.h"

#define DEFAULT_MAX_FRAME (8u * 1024u * 1024u)
#define DEFAULT_MAX_CONNECTIONS 10000
#define DEFAULT_MAX_INFLIGHT 1024
#define DEFAULT_HEARTBEAT_MS 10000
#define DEFAULT_MAX_OUTPUT (1u * 1024u * 1024u)
#define DEFAULT_DRAIN_MS 10000
/* A read buffer that is empty and larger than this is given back (any
 * size when no request is in progress). */
#define KEEP_RBUF 16384
/* A written output buffer up to this size is kept for the next turn's
 * responses (as much as an idle connection may hold). */
#define NET_KEEP_OBUF 16384

typedef struct {
  uv_write_t req;
  net_conn_t* c;
  char* buf;
  size_t len;
  size_t cap;         /* of buf, when it can serve again as c->obuf */
} wreq_t;

static void conn_pump(net_conn_t* c);
static void conn_flush(net_conn_t* c);
static void server_close_step(txmq_server_t* srv);

uint64_t net__now(const txmq_server_t* srv) {
  (void)srv;
  /* uv_now() goes stale while the loop works; timeouts here are coarse but
   * must not be computed from a stale clock. */
  return uv_hrtime() / 1000000u;
}

void net__log(txmq_server_t* srv, txmq_server_log_level_t level,
              const char* msg, const char* fmt, ...) {
  if (srv->log_cb == NULL) return;
  char fields[1024];
  fields[0] = '\0';
  if (fmt != NULL) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(fields, sizeof fields, fmt, ap);
    va_end(ap);
  }
  srv->log_cb(srv->log_arg, level, msg, fields);
}

int net__has_group(char* const* groups, size_t n, const char* g) {
  for (size_t i = 0; i < n; i++)
    if (strcmp(groups[i], g) == 0) return 1;
  return 0;
}

/* ---- lists ---- */

static void list_add(net_conn_t** head, net_conn_t* c) {
  c->prev = NULL;
  c->next = *head;
  if (*head != NULL) (*head)->prev = c;
  *head = c;
}

static void list_del(net_conn_t** head, net_conn_t* c) {
  if (c->prev != NULL) c->prev->next = c->next;
  else *head = c->next;
  if (c->next != NULL) c->next->prev = c->prev;
  c->prev = c->next = NULL;
}

/* ---- life of a connection ---- */

static void conn_maybe_free(net_conn_t* c) {
  if (c->refs > 0) return;
  for (size_t i = 0; i < c->npgroups; i++) free(c->pgroups[i]);
  for (size_t i = 0; i < c->ncgroups; i++) free(c->cgroups[i]);
  free(c->pgroups);
  free(c->cgroups);
  free(c->rbuf);
  free(c->obuf);
  free(c);
}

static void maybe_finish(txmq_server_t* srv) {
  if (!srv->closing || srv->handles > 0 || srv->close_cb == NULL) return;
  void (*cb)(txmq_server_t*, void*) = srv->close_cb;
  srv->close_cb = NULL;
  cb(srv, srv->close_arg);
}

static void on_conn_closed(uv_handle_t* h) {
  net_conn_t* c = h->data;
  txmq_server_t* srv = c->srv;
  list_del(&srv->dying, c);
  srv->ndying--;
  srv->handles--;
  c->refs--;
  conn_maybe_free(c);
  if (srv->closing) server_close_step(srv);
  maybe_finish(srv);
}

static void hard_close(net_conn_t* c) {
  if (c->handle_closing) return;
  c->handle_closing = 1;
  if (c->reading) {
    uv_read_stop((uv_stream_t*)&c->tcp);
    c->reading = 0;
  }
  uv_close((uv_handle_t*)&c->tcp, on_conn_closed);
}

static int blocked(const net_conn_t* c) {
  const txmq_server_t* srv = c->srv;
  return srv->closing || c->inflight >= srv->max_inflight ||
         c->out_bytes > srv->max_output;
}

int net__conn_usable(const net_conn_t* c) {
  return c->state == C_READY && !c->handle_closing &&
         c->out_bytes <= c->srv->max_output;
}

/* Input is read without copying. A read into the shared buffer while a
 * connection has no bytes pending is handled where it landed, and only an
 * incomplete frame at its end is copied to the connection's own buffer
 * (on_read). While one is pending on a connection with requests in
 * progress (a client keeping a window full), the next read goes straight
 * behind it into the connection's buffer, made NET_READ_CHUNK long for
 * that; an idle connection's incomplete frame keeps a small buffer, and
 * its next read is copied. */
static void on_alloc(uv_handle_t* h, size_t suggested, uv_buf_t* buf) {
  (void)suggested;
  net_conn_t* c = h->data;
  txmq_server_t* srv = c->srv;
  if (c->rlen > c->rpos && c->inflight > 0 && c->state != C_CLOSING) {
    /* No frame of c is being handled (libuv asks between callbacks), so
     * the pending bytes may move to the front. */
    if (c->rpos > 0) {
      memmove(c->rbuf, c->rbuf + c->rpos, c->rlen - c->rpos);
      c->rlen -= c->rpos;
      c->rpos = 0;
    }
    if (c->rcap < NET_READ_CHUNK) {
      uint8_t* p = realloc(c->rbuf, NET_READ_CHUNK);
      if (p != NULL) {
        c->rbuf = p;
        c->rcap = NET_READ_CHUNK;
      }
    }
    if (c->rcap - c->rlen >= NET_READ_CHUNK / 4) {
      c->rdirect = 1;
      *buf = uv_buf_init((char*)c->rbuf + c->rlen,
                         (unsigned)(c->rcap - c->rlen));
      return;
    }
  }
  /* libuv calls alloc, read() and the read callback in a row for one
   * stream at a time, so one buffer serves every connection; a nested use
   * (not expected) gets its own. */
  if (!srv->readbuf_busy) {
    srv->readbuf_busy = 1;
    *buf = uv_buf_init((char*)srv->readbuf, sizeof srv->readbuf);
  } else {
    char* p = malloc(NET_READ_CHUNK);
    *buf = uv_buf_init(p, p != NULL ? NET_READ_CHUNK : 0);
  }
}

static void release_buf(txmq_server_t* srv, const uv_buf_t* buf) {
  if (buf->base == (char*)srv->readbuf) srv->readbuf_busy = 0;
  else free(buf->base);
}

static void on_read(uv_stream_t* s, ssize_t nread, const uv_buf_t* buf);

static void update_reading(net_conn_t* c) {
  int want;
  if (c->handle_closing || c->eof) {
    want = 0;
  } else if (c->state == C_CLOSING) {
    /* Read and discard until the peer closes: closing a socket with unread
     * input makes the kernel send a reset, which can destroy the error
     * frame we just sent before the peer reads it. */
    want = 1;
  } else {
    want = !blocked(c);
  }
  if (want && !c->reading) {
    if (uv_read_start((uv_stream_t*)&c->tcp, on_alloc, on_read) == 0)
      c->reading = 1;
  } else if (!want && c->reading) {
    uv_read_stop((uv_stream_t*)&c->tcp);
    c->reading = 0;
  }
}

static void on_shutdown(uv_shutdown_t* req, int status) {
  net_conn_t* c = req->data;
  c->shutdown_done = 1;
  if (status < 0 || c->eof) hard_close(c);
}

void net__close(net_conn_t* c, int polite, const char* why) {
  txmq_server_t* srv = c->srv;
  if (c->state == C_CLOSING) {
    if (!polite) hard_close(c);
    return;
  }
  int was = c->state;
  c->state = C_CLOSING;
  c->closing_since = net__now(srv);
  list_del(&srv->live, c);
  list_add(&srv->dying, c);
  srv->ndying++;
  if (c->counted) {
    c->counted = 0;
    srv->nconns--;
  }
  /* A client that said goodbye is routine; the server closing one (idle,
   * stuck output, a violation) is worth a line at info. */
  int routine = was != C_READY || strcmp(why, "peer closed") == 0;
  net__log(srv, routine ? TXMQ_SERVER_LOG_DEBUG : TXMQ_SERVER_LOG_INFO,
           "connection closed", "conn=%llu peer=%s client=%s reason=\"%s\"",
           (unsigned long long)c->cid, c->peer,
           c->client[0] ? c->client : "-", why);
  net__checks_fail_all(c);
  net__waiters_drop(c);
  if (polite && !c->handle_closing) {
    conn_flush(c); /* what was answered goes before the end of stream */
    c->shut.data = c;
    if (!c->handle_closing &&
        uv_shutdown(&c->shut, (uv_stream_t*)&c->tcp, on_shutdown) == 0) {
      update_reading(c);
      return;
    }
  }
  hard_close(c);
}

/* ---- output ---- */

static void on_write(uv_write_t* req, int status) {
  wreq_t* r = (wreq_t*)req;
  net_conn_t* c = r->c;
  txmq_server_t* srv = c->srv;
  c->out_bytes -= r->len;
  /* Kept while the connection has requests in progress (more responses
   * are coming); an idle connection holds no output buffer. */
  if (c->obuf == NULL && r->cap > 0 && r->cap <= NET_KEEP_OBUF &&
      c->inflight > 0 && c->state != C_CLOSING) {
    c->obuf = r->buf; /* the next turn's responses go into it */
    c->ocap = r->cap;
  } else {
    free(r->buf);
  }
  free(r);
  if (c->out_bytes <= srv->max_output) c->out_full_since = 0;
  if (status < 0 && c->state != C_CLOSING) net__close(c, 0, uv_strerror(status));
  c->refs--;
  if (c->state != C_CLOSING) conn_pump(c);
  conn_maybe_free(c);
}

/* Hands bytes to libuv; takes buf (freed when written, or kept as the
 * connection's output buffer if cap is not 0). */
static int conn_write(net_conn_t* c, char* buf, size_t len, size_t cap) {
  wreq_t* r = malloc(sizeof *r);
  if (r == NULL) {
    free(buf);
    c->out_bytes -= len;
    net__close(c, 0, "out of memory");
    return TXMQ_ENOMEM;
  }
  r->c = c;
  r->buf = buf;
  r->len = len;
  r->cap = cap;
  uv_buf_t b = uv_buf_init(buf, (unsigned)len);
  int rc = uv_write(&r->req, (uv_stream_t*)&c->tcp, &b, 1, on_write);
  if (rc != 0) {
    free(buf);
    free(r);
    c->out_bytes -= len;
    net__close(c, 0, uv_strerror(rc));
    return TXMQ_ECLOSED;
  }
  c->refs++;
  return 0;
}

/* Writes what this connection queued in the current loop turn. */
static void conn_flush(net_conn_t* c) {
  if (c->olen == 0 || c->handle_closing) return;
  char* buf = c->obuf;
  size_t len = c->olen, cap = c->ocap;
  c->obuf = NULL;
  c->olen = c->ocap = 0;
  conn_write(c, buf, len, cap);
}

static void flush_all(txmq_server_t* srv) {
  while (srv->flushq != NULL) {
    net_conn_t* c = srv->flushq;
    srv->flushq = c->onext;
    c->onext = NULL;
    c->oqueued = 0;
    conn_flush(c);
    c->refs--;
    conn_maybe_free(c);
  }
  if (srv->flush_armed) {
    srv->flush_armed = 0;
    uv_check_stop(&srv->flush_check);
    uv_prepare_stop(&srv->flush_prep);
  }
}

static void on_flush_check(uv_check_t* h) {
  flush_all(h->data);
}

static void on_flush_prep(uv_prepare_t* h) {
  flush_all(h->data);
}

/* Responses are not written one by one: they are queued on the connection
 * and written together once the loop turn's callbacks are done, one write
 * per connection per turn instead of one per response. A large response
 * is handed over as it is, after what was queued before it. */
#define NET_OWN_WRITE 65536

int net__send(net_conn_t* c, net_wbuf_t* w) {
  txmq_server_t* srv = c->srv;
  if (c->state == C_CLOSING || c->handle_closing) {
    net__wb_free(w);
    return TXMQ_ECLOSED;
  }
  if (w->failed || w->len - 4 > UINT32_MAX) {
    net__wb_free(w);
    net__log(srv, TXMQ_SERVER_LOG_ERROR, "response lost",
             "conn=%llu reason=\"out of memory\"", (unsigned long long)c->cid);
    net__close(c, 0, "out of memory");
    return TXMQ_ENOMEM;
  }
  size_t plen = w->len - 4;
  uint8_t* p = (uint8_t*)w->p;
  p[0] = (uint8_t)(plen >> 24);
  p[1] = (uint8_t)(plen >> 16);
  p[2] = (uint8_t)(plen >> 8);
  p[3] = (uint8_t)plen;
  size_t len = w->len;
  if (len >= NET_OWN_WRITE) {
    conn_flush(c);
    if (c->handle_closing || c->state == C_CLOSING) {
      net__wb_free(w);
      return TXMQ_ECLOSED;
    }
    char* buf = w->p;
    w->p = NULL;
    w->len = w->cap = 0;
    c->out_bytes += len;
    int rc = conn_write(c, buf, len, 0);
    if (rc != 0) return rc;
  } else {
    if (c->olen + len > c->ocap) {
      size_t cap = c->ocap ? c->ocap : 4096;
      while (cap < c->olen + len) cap *= 2;
      char* nb = realloc(c->obuf, cap);
      if (nb == NULL) {
        net__wb_free(w);
        net__close(c, 0, "out of memory");
        return TXMQ_ENOMEM;
      }
      c->obuf = nb;
      c->ocap = cap;
    }
    memcpy(c->obuf + c->olen, w->p, len);
    c->olen += len;
    c->out_bytes += len;
    net__wb_free(w);
    if (!c->oqueued) {
      c->oqueued = 1;
      c->refs++;
      c->onext = srv->flushq;
      srv->flushq = c;
      if (!srv->flush_armed && srv->flush_open) {
        srv->flush_armed = 1;
        uv_check_start(&srv->flush_check, on_flush_check);
        uv_prepare_start(&srv->flush_prep, on_flush_prep);
      }
    }
  }
  if (c->out_bytes > srv->max_output && c->out_full_since == 0)
    c->out_full_since = net__now(srv);
  return 0;
}

void net__send_error(net_conn_t* c, uint64_t re, int code, const char* msg) {
  net_wbuf_t w;
  net__wb_init(&w);
  net__resp_error(&w, re, code, msg);
  net__send(c, &w);
}

void net__done(net_conn_t* c) {
  c->inflight--;
  c->refs--;
  if (c->state != C_CLOSING) conn_pump(c);
  conn_maybe_free(c);
}

/* ---- input ---- */

/* A stream that can no longer be trusted: say why, then close. */
static void violation(net_conn_t* c, int code, const char* msg) {
  txmq_server_t* srv = c->srv;
  srv->protocol_errors++;
  net__log(srv, TXMQ_SERVER_LOG_WARN, "protocol violation",
           "conn=%llu peer=%s client=%s reason=\"%s\"",
           (unsigned long long)c->cid, c->peer,
           c->client[0] ? c->client : "-", msg);
  net__send_error(c, 0, code, msg);
  net__close(c, 1, msg);
}

/* A well-formed frame that is not a well-formed message: an error
 * response; before the handshake, also the end of the connection. */
static void bad_message(net_conn_t* c, uint64_t re, const char* msg) {
  c->srv->protocol_errors++;
  net__send_error(c, re, TXMQ_EPROTO, msg);
  if (c->state == C_HELLO) net__close(c, 1, msg);
}

static int str_is(const msgpack_object* o, const char* s) {
  size_t n = strlen(s);
  return o->type == MSGPACK_OBJECT_STR && o->via.str.size == n &&
         memcmp(o->via.str.ptr, s, n) == 0;
}

/* The fields op, id and re of a frame's map in one pass, as net__field
 * finds them (the first of a key; nil is absent). */
static void head_fields(const msgpack_object* map, const msgpack_object** op,
                        const msgpack_object** id, const msgpack_object** re) {
  const msgpack_object* f[3] = {NULL, NULL, NULL};
  unsigned seen = 0;
  for (uint32_t i = 0; i < map->via.map.size && seen != 7; i++) {
    const msgpack_object* k = &map->via.map.ptr[i].key;
    if (k->type != MSGPACK_OBJECT_STR || k->via.str.size != 2) continue;
    const char* s = k->via.str.ptr;
    int j = s[0] == 'o' && s[1] == 'p'   ? 0
            : s[0] == 'i' && s[1] == 'd' ? 1
            : s[0] == 'r' && s[1] == 'e' ? 2
                                         : -1;
    if (j < 0 || (seen & (1u << j))) continue;
    seen |= 1u << j;
    const msgpack_object* v = &map->via.map.ptr[i].val;
    f[j] = v->type == MSGPACK_OBJECT_NIL ? NULL : v;
  }
  *op = f[0];
  *id = f[1];
  *re = f[2];
}

static void handle_frame(net_conn_t* c, const uint8_t* p, size_t len,
                         int refuse) {
  txmq_server_t* srv = c->srv;
  msgpack_unpacked u;
  msgpack_unpacked_init(&u);
  /* The server's zone holds the objects unless a frame of another
   * connection is being handled further up the stack (a request finishing
   * inside another's handling pumps its own connection). */
  int zoned = srv->zone_ok && !srv->zone_busy;
  msgpack_object obj;
  int rc;
  if (zoned) {
    srv->zone_busy = 1;
    rc = txmq__mp_unpack_zone(p, len, NET_MAX_DEPTH, NET_MAX_ITEMS,
                              &srv->zone, &obj);
  } else {
    rc = txmq__mp_unpack(p, len, NET_MAX_DEPTH, NET_MAX_ITEMS, &u);
    obj = u.data;
  }
  if (rc != 0) {
    violation(c, TXMQ_EPROTO,
              "invalid msgpack (or nested deeper than 16, or more than 65536 "
              "objects, or bytes after the value): closing the connection");
    goto out;
  }
  const msgpack_object* o = &obj;
  if (o->type != MSGPACK_OBJECT_MAP) {
    bad_message(c, 0, "a frame must hold a msgpack map");
    goto out;
  }
  const msgpack_object *op, *id, *re;
  head_fields(o, &op, &id, &re);
  if (op == NULL && re != NULL) {
    if (c->state == C_HELLO) {
      bad_message(c, 0, "the first frame must be a 'hello' request");
    } else {
      net__check_response(c, o);
    }
    goto out;
  }
  uint64_t rid = 0;
  int id_ok = id != NULL && id->type == MSGPACK_OBJECT_POSITIVE_INTEGER &&
              id->via.u64 >= 1 && id->via.u64 <= NET_MAX_ID;
  if (id_ok) rid = id->via.u64;
  if (op == NULL) {
    bad_message(c, rid,
                "a frame must have 'op' (a request) or 're' (a response)");
    goto out;
  }
  if (!id_ok) {
    bad_message(c, 0, id == NULL ? "field 'id' is missing"
                                 : "field 'id' must be an integer from 1 to "
                                   "2^53-1");
    goto out;
  }
  if (op->type != MSGPACK_OBJECT_STR) {
    bad_message(c, rid, "field 'op' must be a string");
    goto out;
  }
  if (refuse) {
    net__send_error(c, rid, TXMQ_ECLOSED, "the server is shutting down");
    goto out;
  }
  if (c->state == C_HELLO && !str_is(op, "hello")) {
    bad_message(c, rid, "the first request must be 'hello'");
    goto out;
  }
  srv->requests++;
  c->inflight++;
  c->refs++;
  net__dispatch(c, o, rid, op->via.str.ptr, op->via.str.size);
out:
  if (zoned) {
    msgpack_zone_clear(&srv->zone);
    srv->zone_busy = 0;
  }
  msgpack_unpacked_destroy(&u);
}

static uint32_t be32(const uint8_t* p) {
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 |
         p[3];
}

static int rbuf_reserve(net_conn_t* c, size_t need) {
  if (c->rpos > 0) {
    memmove(c->rbuf, c->rbuf + c->rpos, c->rlen - c->rpos);
    c->rlen -= c->rpos;
    c->rpos = 0;
  }
  if (c->rlen + need <= c->rcap) return 0;
  size_t cap = c->rcap ? c->rcap : 4096;
  while (cap < c->rlen + need) cap *= 2;
  uint8_t* p = realloc(c->rbuf, cap);
  if (p == NULL) return TXMQ_ENOMEM;
  c->rbuf = p;
  c->rcap = cap;
  return 0;
}

/* Processes the complete frames in the read buffer while the connection
 * may take work, then decides whether to read its socket. */
static void conn_pump(net_conn_t* c) {
  txmq_server_t* srv = c->srv;
  if (c->pumping) {
    c->pump_again = 1;
    return;
  }
  c->pumping = 1;
  do {
    c->pump_again = 0;
    while (c->state != C_CLOSING) {
      int refuse = srv->closing;
      if (!refuse && blocked(c)) break;
      size_t avail = c->rlen - c->rpos;
      if (avail < 4) break;
      uint32_t n = be32(c->rbuf + c->rpos);
      if (n == 0) {
        violation(c, TXMQ_EPROTO, "frame length 0: closing the connection");
        break;
      }
      if (n > srv->max_frame) {
        char msg[160];
        snprintf(msg, sizeof msg,
                 "frame length %u is over max_frame %u: closing the "
                 "connection", n, srv->max_frame);
        violation(c, TXMQ_ETOOBIG, msg);
        break;
      }
      if (avail - 4 < n) break;
      size_t at = c->rpos + 4;
      c->rpos += 4 + (size_t)n;
      /* The bytes stay where they are during the call: the buffer is only
       * compacted when more input arrives. */
      handle_frame(c, c->rbuf + at, n, refuse);
    }
  } while (c->pump_again);
  c->pumping = 0;
  if (c->rpos == c->rlen && !c->rborrowed) {
    c->rpos = c->rlen = 0;
    /* A connection with nothing in progress holds no input buffer. */
    if (c->rcap > KEEP_RBUF || c->inflight == 0) {
      free(c->rbuf);
      c->rbuf = NULL;
      c->rcap = 0;
    }
  }
  update_reading(c);
  if (c->eof && c->state != C_CLOSING && c->inflight == 0 && !blocked(c)) {
    /* The peer finished sending and everything it asked is answered. */
    net__close(c, 1, c->rlen > c->rpos ? "end of stream inside a frame"
                                       : "peer closed");
  }
}

/* Handles the frames of a read where it landed (c has nothing pending),
 * then keeps what is left (an incomplete frame, or frames a busy
 * connection may not take yet) in c's own buffer. */
static void pump_in_place(net_conn_t* c, uint8_t* p, size_t n) {
  uint8_t* own = c->rbuf;
  size_t own_cap = c->rcap;
  c->rbuf = p;
  c->rcap = c->rlen = n;
  c->rpos = 0;
  c->rborrowed = 1;
  conn_pump(c);
  c->rborrowed = 0;
  size_t left = c->rlen - c->rpos;
  const uint8_t* rest = c->rbuf + c->rpos;
  c->rbuf = own;
  c->rcap = own_cap;
  c->rpos = c->rlen = 0;
  if (left == 0 && c->inflight == 0 && own != NULL) {
    /* Nothing pending, nothing in progress: no input buffer kept. */
    free(own);
    c->rbuf = NULL;
    c->rcap = 0;
  }
  if (left == 0 || c->state == C_CLOSING) return;
  if (rbuf_reserve(c, left) != 0) {
    net__close(c, 0, "out of memory");
    return;
  }
  memcpy(c->rbuf, rest, left);
  c->rlen = left;
}

static void on_read(uv_stream_t* s, ssize_t nread, const uv_buf_t* buf) {
  net_conn_t* c = s->data;
  txmq_server_t* srv = c->srv;
  int err = 0;
  int direct = c->rdirect;
  c->rdirect = 0;
  if (nread > 0 && !direct && c->state != C_CLOSING && c->rpos == c->rlen &&
      !c->pumping) {
    c->last_rx = net__now(srv);
    pump_in_place(c, (uint8_t*)buf->base, (size_t)nread);
    release_buf(srv, buf);
    return;
  }
  if (nread > 0) {
    c->last_rx = net__now(srv);
    if (direct) {
      c->rlen += (size_t)nread; /* already in place */
    } else if (c->state != C_CLOSING) {
      if (rbuf_reserve(c, (size_t)nread) == 0) {
        memcpy(c->rbuf + c->rlen, buf->base, (size_t)nread);
        c->rlen += (size_t)nread;
      } else {
        err = TXMQ_ENOMEM;
      }
    }
  } else if (nread < 0) {
    c->eof = 1;
    if (nread != UV_EOF) err = (int)nread;
  }
  if (!direct && buf != NULL && buf->base != NULL) release_buf(srv, buf);
  if (nread == 0) return;
  if (err != 0) {
    net__close(c, 0, err == TXMQ_ENOMEM ? "out of memory"
                                        : uv_strerror(err));
    return;
  }
  if (c->state == C_CLOSING) {
    if (c->eof) {
      update_reading(c);
      if (c->shutdown_done) hard_close(c);
    }
    return;
  }
  conn_pump(c);
}

/* ---- accepting ---- */

static void peer_name(uv_tcp_t* t, char* out, size_t len) {
  struct sockaddr_storage ss;
  int n = sizeof ss;
  snprintf(out, len, "?");
  if (uv_tcp_getpeername(t, (struct sockaddr*)&ss, &n) != 0) return;
  char ip[64];
  int w = 0;
  if (ss.ss_family == AF_INET) {
    struct sockaddr_in* a = (struct sockaddr_in*)&ss;
    uv_ip4_name(a, ip, sizeof ip);
    w = snprintf(out, len, "%s:%u", ip, ntohs(a->sin_port));
  } else if (ss.ss_family == AF_INET6) {
    struct sockaddr_in6* a = (struct sockaddr_in6*)&ss;
    uv_ip6_name(a, ip, sizeof ip);
    w = snprintf(out, len, "[%s]:%u", ip, ntohs(a->sin6_port));
  }
  /* A name cut short is still good enough for a log line. */
  if (w < 0 || (size_t)w >= len) out[len - 1] = '\0';
}

static void on_connection(uv_stream_t* server, int status) {
  txmq_server_t* srv = server->data;
  if (status < 0) {
    net__log(srv, TXMQ_SERVER_LOG_WARN, "accept failed", "err=\"%s\"",
             uv_strerror(status));
    return;
  }
  net_conn_t* c = calloc(1, sizeof *c);
  if (c == NULL) {
    net__log(srv, TXMQ_SERVER_LOG_ERROR, "accept failed",
             "err=\"out of memory\"");
    return;
  }
  c->srv = srv;
  c->refs = 1; /* the handle's */
  c->state = C_HELLO;
  if (uv_tcp_init(srv->loop, &c->tcp) != 0) {
    free(c);
    return;
  }
  c->tcp.data = c;
  srv->handles++;
  list_add(&srv->live, c);
  c->cid = ++srv->next_cid;
  c->last_rx = net__now(srv);
  int rc = uv_accept(server, (uv_stream_t*)&c->tcp);
  if (rc != 0) {
    net__log(srv, TXMQ_SERVER_LOG_WARN, "accept failed", "err=\"%s\"",
             uv_strerror(rc));
    c->state = C_CLOSING;
    list_del(&srv->live, c);
    list_add(&srv->dying, c);
    srv->ndying++;
    hard_close(c);
    return;
  }
  uv_tcp_nodelay(&c->tcp, 1);
  peer_name(&c->tcp, c->peer, sizeof c->peer);
  if (srv->closing || srv->nconns >= srv->max_connections) {
    char msg[128];
    int code = srv->closing ? TXMQ_ECLOSED : TXMQ_EAGAIN;
    if (srv->closing) {
      snprintf(msg, sizeof msg, "the server is shutting down");
    } else {
      snprintf(msg, sizeof msg, "too many connections (max_connections %zu)",
               srv->max_connections);
    }
    srv->refused++;
    net__log(srv, TXMQ_SERVER_LOG_WARN, "connection refused",
             "peer=%s reason=\"%s\"", c->peer, msg);
    net__send_error(c, 0, code, msg);
    net__close(c, 1, msg);
    return;
  }
  c->counted = 1;
  srv->nconns++;
  srv->accepted++;
  net__log(srv, TXMQ_SERVER_LOG_DEBUG, "connection opened",
           "conn=%llu peer=%s", (unsigned long long)c->cid, c->peer);
  update_reading(c);
}

/* ---- the sweep timer ---- */

void net__handle_closed(txmq_server_t* srv) {
  srv->handles--;
  maybe_finish(srv);
}

static void on_handle_closed(uv_handle_t* h) {
  net__handle_closed(h->data);
}

static void on_sweep(uv_timer_t* t) {
  txmq_server_t* srv = t->data;
  uint64_t now = net__now(srv);
  uint64_t idle = 3 * srv->heartbeat_ms;
  net_conn_t* next;
  for (net_conn_t* c = srv->live; c != NULL; c = next) {
    next = c->next;
    if (c->out_full_since != 0 && c->out_bytes > srv->max_output &&
        now - c->out_full_since >= idle) {
      net__close(c, 0, "output stayed full past the idle timeout");
    } else if (c->inflight == 0 && now - c->last_rx >= idle) {
      net__close(c, 1, "idle timeout");
    }
  }
  for (net_conn_t* c = srv->dying; c != NULL; c = c->next) {
    if (!c->handle_closing && now - c->closing_since >= NET_LINGER_MS)
      hard_close(c);
  }
  if (srv->closing) server_close_step(srv);
}

/* ---- public ---- */

int txmq_server_new(txmq_server_t** out, uv_loop_t* loop, txmq_runtime_t* rt,
                    txmq_consumers_t* cs) {
  if (out == NULL || loop == NULL || rt == NULL) return TXMQ_EINVAL;
  *out = NULL;
  txmq_server_t* srv = calloc(1, sizeof *srv);
  if (srv == NULL) return TXMQ_ENOMEM;
  srv->loop = loop;
  srv->rt = rt;
  srv->st = txmq_runtime_store(rt);
  srv->tx = txmq_runtime_tx(rt);
  srv->scripts = txmq_runtime_scripts(rt);
  srv->cs = cs;
  srv->max_frame = DEFAULT_MAX_FRAME;
  srv->max_connections = DEFAULT_MAX_CONNECTIONS;
  srv->max_inflight = DEFAULT_MAX_INFLIGHT;
  srv->heartbeat_ms = DEFAULT_HEARTBEAT_MS;
  srv->max_output = DEFAULT_MAX_OUTPUT;
  srv->drain_ms = DEFAULT_DRAIN_MS;
  srv->sync = TXMQ_SYNC_ALWAYS;
  snprintf(srv->name, sizeof srv->name, "libtxmq");
  srv->target.name = "connection";
  srv->target.check = net__check_target;
  if (uv_timer_init(loop, &srv->sweep) != 0) {
    free(srv);
    return TXMQ_EIO;
  }
  srv->sweep.data = srv;
  srv->sweep_open = 1;
  srv->handles = 1;
  uv_check_init(loop, &srv->flush_check);
  uv_prepare_init(loop, &srv->flush_prep);
  srv->flush_check.data = srv;
  srv->flush_prep.data = srv;
  srv->flush_open = 1;
  srv->handles += 2;
  srv->zone_ok = msgpack_zone_init(&srv->zone, 8192); /* else unpack alone */
  txmq__pool_init(&srv->req_pool, sizeof(net_req_t), 1024);
  net__consumers_attach(srv);
  *out = srv;
  return 0;
}

int txmq_server_set(txmq_server_t* srv, txmq_server_opt_t opt, int64_t v) {
  if (srv == NULL) return TXMQ_EINVAL;
  if (srv->started || srv->closing) return TXMQ_EBUSY;
  switch (opt) {
    case TXMQ_SERVER_OPT_MAX_FRAME:
      if (v < 65536 || v > 64 * 1024 * 1024) return TXMQ_EINVAL;
      srv->max_frame = (uint32_t)v;
      return 0;
    case TXMQ_SERVER_OPT_MAX_CONNECTIONS:
      if (v < 1 || v > 10000000) return TXMQ_EINVAL;
      srv->max_connections = (size_t)v;
      return 0;
    case TXMQ_SERVER_OPT_MAX_INFLIGHT:
      if (v < 1 || v > 1000000) return TXMQ_EINVAL;
      srv->max_inflight = (size_t)v;
      return 0;
    case TXMQ_SERVER_OPT_HEARTBEAT_MS:
      if (v < 10 || v > 3600000) return TXMQ_EINVAL;
      srv->heartbeat_ms = (uint64_t)v;
      return 0;
    case TXMQ_SERVER_OPT_MAX_OUTPUT:
      if (v < 4096 || v > (int64_t)1 << 32) return TXMQ_EINVAL;
      srv->max_output = (size_t)v;
      return 0;
    case TXMQ_SERVER_OPT_DRAIN_MS:
      if (v < 0 || v > 3600000) return TXMQ_EINVAL;
      srv->drain_ms = (uint64_t)v;
      return 0;
    case TXMQ_SERVER_OPT_SYNC:
      if (v < TXMQ_SYNC_ALWAYS || v > TXMQ_SYNC_NEVER) return TXMQ_EINVAL;
      srv->sync = (int)v;
      return 0;
  }
  return TXMQ_EINVAL;
}

int txmq_server_set_name(txmq_server_t* srv, const char* name) {
  if (srv == NULL || name == NULL || strlen(name) >= sizeof srv->name)
    return TXMQ_EINVAL;
  snprintf(srv->name, sizeof srv->name, "%s", name);
  return 0;
}

/* Forgets a secret so that it does not linger in freed memory. */
static void secret_clear(txmq_server_t* srv, int role) {
  if (srv->secrets[role] != NULL) {
    explicit_bzero(srv->secrets[role], srv->secret_len[role]);
    free(srv->secrets[role]);
  }
  srv->secrets[role] = NULL;
  srv->secret_len[role] = 0;
}

int txmq_server_set_secret(txmq_server_t* srv, const char* role,
                           const char* secret) {
  if (srv == NULL || role == NULL) return TXMQ_EINVAL;
  if (srv->started || srv->closing) return TXMQ_EBUSY;
  int r;
  if (strcmp(role, "producer") == 0) r = ROLE_PRODUCER;
  else if (strcmp(role, "consumer") == 0) r = ROLE_CONSUMER;
  else if (strcmp(role, "admin") == 0) r = ROLE_ADMIN;
  else return TXMQ_EINVAL;
  char* copy = NULL;
  size_t n = 0;
  if (secret != NULL) {
    n = strnlen(secret, NET_SECRET_MAX + 1);
    if (n < NET_SECRET_MIN || n > NET_SECRET_MAX) return TXMQ_EINVAL;
    if ((copy = malloc(n + 1)) == NULL) return TXMQ_ENOMEM;
    memcpy(copy, secret, n + 1);
  }
  secret_clear(srv, r);
  srv->secrets[r] = copy;
  srv->secret_len[r] = n;
  srv->auth = 0;
  for (int i = 1; i < NET_NROLES; i++) srv->auth |= srv->secrets[i] != NULL;
  return 0;
}

void txmq_server_set_log_cb(txmq_server_t* srv, txmq_server_log_cb cb,
                            void* arg) {
  srv->log_cb = cb;
  srv->log_arg = arg;
}

const char* txmq_server_address(const txmq_server_t* srv) { return srv->addr; }
int txmq_server_port(const txmq_server_t* srv) { return srv->port; }
const char* txmq_server_diag(const txmq_server_t* srv) { return srv->diag; }
size_t txmq_server_connections(const txmq_server_t* srv) { return srv->nconns; }

static int uv_to_txmq(int uverr) {
  return uverr < 0 ? txmq_err_from_errno(-uverr) : TXMQ_EIO;
}

int txmq_server_start(txmq_server_t* srv, const char* host, int port) {
  if (srv == NULL || host == NULL || port < 0 || port > 65535)
    return TXMQ_EINVAL;
  if (srv->closing) return TXMQ_ECLOSED;
  if (srv->started || srv->listener_open) return TXMQ_EBUSY;
  srv->diag[0] = '\0';
  struct sockaddr_storage ss;
  int v6 = strchr(host, ':') != NULL;
  int rc = v6 ? uv_ip6_addr(host, port, (struct sockaddr_in6*)&ss)
              : uv_ip4_addr(host, port, (struct sockaddr_in*)&ss);
  if (rc != 0) {
    snprintf(srv->diag, sizeof srv->diag, "'%s' is not an IP address", host);
    return TXMQ_EINVAL;
  }
  rc = uv_tcp_init(srv->loop, &srv->listener);
  if (rc != 0) {
    snprintf(srv->diag, sizeof srv->diag, "%s", uv_strerror(rc));
    return uv_to_txmq(rc);
  }
  srv->listener.data = srv;
  srv->handles++;
  srv->listener_open = 1;
  const char* what = "bind";
  rc = uv_tcp_bind(&srv->listener, (const struct sockaddr*)&ss, 0);
  if (rc == 0) {
    what = "listen";
    rc = uv_listen((uv_stream_t*)&srv->listener, 511, on_connection);
  }
  if (rc == 0) {
    int n = sizeof ss;
    what = "getsockname";
    rc = uv_tcp_getsockname(&srv->listener, (struct sockaddr*)&ss, &n);
  }
  if (rc == 0) {
    char ip[64];
    if (ss.ss_family == AF_INET6) {
      uv_ip6_name((struct sockaddr_in6*)&ss, ip, sizeof ip);
      srv->port = ntohs(((struct sockaddr_in6*)&ss)->sin6_port);
      snprintf(srv->addr, sizeof srv->addr, "[%s]:%d", ip, srv->port);
    } else {
      uv_ip4_name((struct sockaddr_in*)&ss, ip, sizeof ip);
      srv->port = ntohs(((struct sockaddr_in*)&ss)->sin_port);
      snprintf(srv->addr, sizeof srv->addr, "%s:%d", ip, srv->port);
    }
    what = "check target";
    int trc = txmq_tx_add_target(srv->tx, &srv->target, srv);
    if (trc != 0) {
      snprintf(srv->diag, sizeof srv->diag, "adding the check target: %s",
               txmq_strerror(trc));
      uv_close((uv_handle_t*)&srv->listener, on_handle_closed);
      srv->listener_open = 0;
      return trc;
    }
  }
  if (rc != 0) {
    snprintf(srv->diag, sizeof srv->diag, "%s %s%s%s:%d: %s", what,
             v6 ? "[" : "", host, v6 ? "]" : "", port, uv_strerror(rc));
    uv_close((uv_handle_t*)&srv->listener, on_handle_closed);
    srv->listener_open = 0;
    return uv_to_txmq(rc);
  }
  uint64_t tick = srv->heartbeat_ms / 4;
  if (tick > 1000) tick = 1000;
  if (tick < 10) tick = 10;
  uv_timer_start(&srv->sweep, on_sweep, tick, tick);
  srv->started = 1;
  srv->started_ms = net__now(srv);
  return 0;
}

/* Close, step by step: wait for requests in progress (up to drain_ms),
 * then close every connection politely, then, when none is left, the
 * sweep timer; the last handle's close callback runs the user's cb. */
static void server_close_step(txmq_server_t* srv) {
  if (!srv->conns_closed) {
    int busy = 0;
    for (net_conn_t* c = srv->live; c != NULL && !busy; c = c->next)
      busy = c->inflight > 0;
    if (busy && net__now(srv) < srv->drain_deadline) return;
    srv->conns_closed = 1;
    net_conn_t* next;
    for (net_conn_t* c = srv->live; c != NULL; c = next) {
      next = c->next;
      net__close(c, 1, busy ? "server shutting down (drain timed out)"
                            : "server shutting down");
    }
  }
  if (srv->live == NULL && srv->dying == NULL && srv->sweep_open) {
    srv->sweep_open = 0;
    uv_close((uv_handle_t*)&srv->sweep, on_handle_closed);
    flush_all(srv);
    srv->flush_open = 0;
    uv_close((uv_handle_t*)&srv->flush_check, on_handle_closed);
    uv_close((uv_handle_t*)&srv->flush_prep, on_handle_closed);
  }
}

int txmq_server_close(txmq_server_t* srv,
                      void (*cb)(txmq_server_t* srv, void* arg), void* arg) {
  if (srv == NULL) return TXMQ_EINVAL;
  if (srv->closing) return TXMQ_ECLOSED;
  srv->closing = 1;
  srv->close_cb = cb;
  srv->close_arg = arg;
  srv->drain_deadline = net__now(srv) + srv->drain_ms;
  if (srv->listener_open) {
    srv->listener_open = 0;
    uv_close((uv_handle_t*)&srv->listener, on_handle_closed);
  }
  net__waiters_flush(srv);
  net_conn_t* next;
  for (net_conn_t* c = srv->live; c != NULL; c = next) {
    next = c->next;
    /* Stops reading; frames already buffered are refused (ECLOSED). */
    conn_pump(c);
  }
  if (srv->sweep_open) uv_timer_start(&srv->sweep, on_sweep, 20, 20);
  server_close_step(srv);
  maybe_finish(srv);
  return 0;
}

void txmq_server_free(txmq_server_t* srv) {
  if (srv == NULL) return;
  for (int i = 1; i < NET_NROLES; i++) secret_clear(srv, i);
  if (srv->zone_ok) msgpack_zone_destroy(&srv->zone);
  txmq__pool_drain(&srv->req_pool);
  free(srv);
}
