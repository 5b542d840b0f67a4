/*
 * consume.c - the consumer operations of the server: receive (with long
 * polls), ack, offset.get and offset.set, over the consumer engine
 * (txmq/consumer.h); and peek, which reads a queue without a group.
 *
 * A receive that finds nothing and may wait becomes a waiter: it is kept
 * on the server's list with its own timer, and the engine's wake callback
 * (one per engine; this file multiplexes it over the waiters of the woken
 * group and topic) makes it try again. A topic that does not exist yet has
 * nothing to wake its waiters: they look again every MISSING_POLL_MS until
 * it exists (then wakes take over) or their wait is over. It is answered exactly once: with
 * messages, with an error, with nothing when its wait is over or the server
 * closes - or not at all when its connection closed first.
 *
 * A response never grows past max_frame: messages are taken one receive at
 * a time while the frame still has room for the largest possible message,
 * so no message is made invisible that the frame could not carry.
 *
 * It does not parse frames or write sockets (server.c).
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "net/net_int.h"
#include "txmq/error.h"

#define RECEIVE_MAX 256
#define RECEIVE_DEFAULT 32
#define MAX_WAIT_MS 30000
#define MAX_ACK_HANDLES 1024
#define MISSING_POLL_MS 100
/* Room kept for one more message: the largest body plus its properties,
 * tags, keys and the map around them. */
#define MSG_ROOM (TXMQ_MSG_MAX_BODY + 1024u * 1024u)

static void on_wake(void* arg, const char* group, const char* topic);

void net__consumers_attach(txmq_server_t* srv) {
  if (srv->cs != NULL) txmq_consumers_set_wake_cb(srv->cs, on_wake, srv);
}

static int no_consumers(char* err) {
  return net__errf(err, TXMQ_ENOTFOUND,
                   "this server has no consumer engine");
}

/* ---- receive ---- */

static void recv_free(net_recv_t* r) {
  free(r->filter);
  free(r);
}

static void on_timer_closed(uv_handle_t* h) {
  net_recv_t* r = h->data;
  txmq_server_t* srv = r->srv;
  recv_free(r);
  net__handle_closed(srv);
}

/* Takes r off the lists and closes its timer (which frees it). */
static void waiter_end(net_recv_t* r) {
  txmq_server_t* srv = r->srv;
  if (r->sprev != NULL) r->sprev->snext = r->snext;
  else srv->waiters = r->snext;
  if (r->snext != NULL) r->snext->sprev = r->sprev;
  net_recv_t** pp = &r->c->waits;
  while (*pp != NULL && *pp != r) pp = &(*pp)->cnext;
  if (*pp == r) *pp = r->cnext;
  r->waiting = 0;
  uv_close((uv_handle_t*)&r->timer, on_timer_closed);
}

/* Receives into w's msgs for r: returns how many, or a TXMQ_E* code (only
 * when none were taken). */
static int take(txmq_server_t* srv, net_recv_t* r, net_wbuf_t* w,
                size_t* count) {
  size_t got = 0;
  int rc = 0;
  while (got < r->max) {
    if (got > 0 && w->len + MSG_ROOM > srv->max_frame) break;
    txmq_delivery_t* d = NULL;
    size_t n = 0;
    rc = txmq_consumers_receive(srv->cs, r->group, r->topic, r->filter, 1,
                                r->visibility_ms, (txmq_from_t)r->from,
                                r->from_offset, &d, &n);
    if (rc != 0 || n == 0) break;
    rc = net__pk_msg_extra(w, d[0].msg, d[0].handle, d[0].deliveries);
    txmq_consumers_free_deliveries(d, n);
    if (rc != 0) break; /* out of memory: it is redelivered later */
    got++;
  }
  *count = got;
  return got > 0 ? 0 : rc;
}

static void receive_answer(net_recv_t* r, net_wbuf_t* msgs, size_t n) {
  net_wbuf_t w;
  net__wb_init(&w);
  net__resp_begin(&w, r->id, 1);
  net__pk_str(&w.pk, "msgs");
  msgpack_pack_array(&w.pk, n);
  if (n > 0) net__wb_put(&w, msgs->p + 4, msgs->len - 4);
  net__send(r->c, &w);
}

static const char* receive_error(int rc, const net_recv_t* r, char* err) {
  switch (rc) {
    case TXMQ_ENOTFOUND:
      net__errf(err, rc, "topic '%s' does not exist (nothing was sent to it)",
                r->topic);
      break;
    case TXMQ_EBADNAME:
      net__errf(err, rc, "group '%s' is too long for its dead-letter topic "
                         "DLQ.%s", r->group, r->group);
      break;
    case TXMQ_ERANGE: /* the consumer group limit, named by the engine */
      net__errf(err, rc, "receive refused: %s",
                txmq_consumers_diag(r->srv->cs));
      break;
    default:
      net__errf(err, rc, "receive failed: %s", txmq_strerror(rc));
  }
  return err;
}

/* Tries r now. Returns 1 if r was answered. */
static int try_answer(net_recv_t* r, int final) {
  txmq_server_t* srv = r->srv;
  net_wbuf_t msgs;
  net__wb_init(&msgs);
  size_t n = 0;
  int rc = take(srv, r, &msgs, &n);
  /* A topic nobody sent to yet: a waiter waits for it too. */
  r->missing = rc == TXMQ_ENOTFOUND && r->wait_ms > 0;
  if (r->missing) {
    rc = 0;
    /* "latest" of a topic that does not exist yet is its beginning: its
     * first message is news to this poll. */
    if (r->from == TXMQ_FROM_LATEST) r->from = TXMQ_FROM_EARLIEST;
  }
  if (rc != 0 && n == 0) {
    char err[NET_ERR_MAX];
    net__send_error(r->c, r->id, rc, receive_error(rc, r, err));
    net__wb_free(&msgs);
    return 1;
  }
  if (n == 0 && !final) {
    net__wb_free(&msgs);
    return 0;
  }
  receive_answer(r, &msgs, n);
  net__wb_free(&msgs);
  return 1;
}

static void on_wait_timer(uv_timer_t* t) {
  net_recv_t* r = t->data;
  net_conn_t* c = r->c;
  try_answer(r, 1);
  waiter_end(r);
  net__done(c);
}

/* A waiter whose topic did not exist: look again, until the wait is over
 * or the topic exists (then the engine's wakes take over). */
static void on_missing_tick(uv_timer_t* t) {
  net_recv_t* r = t->data;
  net_conn_t* c = r->c;
  uint64_t now = uv_now(r->srv->loop);
  int final = now >= r->deadline;
  if (try_answer(r, final)) {
    waiter_end(r);
    net__done(c);
  } else if (!r->missing) {
    uv_timer_stop(&r->timer);
    uv_timer_start(&r->timer, on_wait_timer, r->deadline - now, 0);
  }
}

static void on_wake(void* arg, const char* group, const char* topic) {
  txmq_server_t* srv = arg;
  /* Answering may run other requests of the same connection (the pump),
   * which may add waiters: walk a detached list of the matching ones. */
  net_recv_t* todo = NULL;
  for (net_recv_t* r = srv->waiters; r != NULL; r = r->snext) {
    if (strcmp(r->group, group) == 0 && strcmp(r->topic, topic) == 0) {
      r->wnext = todo;
      todo = r;
    }
  }
  while (todo != NULL) {
    net_recv_t* r = todo;
    todo = r->wnext;
    /* Ended meanwhile (its memory lives until its timer's close
     * callback, a later loop iteration). */
    if (!r->waiting) continue;
    if (try_answer(r, 0)) {
      net_conn_t* c = r->c;
      waiter_end(r);
      net__done(c);
    }
  }
}

int net__op_receive(net_conn_t* c, uint64_t id, const msgpack_object* m,
                    char* err) {
  txmq_server_t* srv = c->srv;
  if (srv->cs == NULL) return no_consumers(err);
  net_recv_t* r = calloc(1, sizeof *r);
  if (r == NULL) return net__errf(err, TXMQ_ENOMEM, "out of memory");
  r->srv = srv;
  r->c = c;
  r->id = id;
  int64_t max = RECEIVE_DEFAULT, wait = 0, vis = 0;
  const char* tags = NULL;
  size_t tagslen = 0;
  int rc = net__get_name(m, "group", 1, r->group, err);
  if (rc == 0) rc = net__get_name(m, "topic", 1, r->topic, err);
  if (rc == 0 && (rc = net__get_str(m, "tags", 0, 4096, &tags, &tagslen, err)) == 1)
    rc = 0;
  if (rc == 0 && (rc = net__get_int(m, "max", 0, 1, RECEIVE_MAX, &max, err)) == 1)
    rc = 0;
  if (rc == 0 &&
      (rc = net__get_int(m, "wait_ms", 0, 0, MAX_WAIT_MS, &wait, err)) == 1)
    rc = 0;
  if (rc == 0 && (rc = net__get_int(m, "visibility_ms", 0, 1,
                                    24 * 3600 * 1000, &vis, err)) == 1)
    rc = 0;
  if (rc == 0) {
    const msgpack_object* f = net__field(m, "from");
    r->from = TXMQ_FROM_EARLIEST;
    if (f == NULL) {
    } else if (f->type == MSGPACK_OBJECT_STR && f->via.str.size == 8 &&
               memcmp(f->via.str.ptr, "earliest", 8) == 0) {
    } else if (f->type == MSGPACK_OBJECT_STR && f->via.str.size == 6 &&
               memcmp(f->via.str.ptr, "latest", 6) == 0) {
      r->from = TXMQ_FROM_LATEST;
    } else if (f->type == MSGPACK_OBJECT_POSITIVE_INTEGER &&
               f->via.u64 <= (uint64_t)INT64_MAX) {
      r->from = TXMQ_FROM_OFFSET;
      r->from_offset = (int64_t)f->via.u64;
    } else {
      rc = net__errf(err, TXMQ_EPROTO,
                     "field 'from' must be \"earliest\", \"latest\" or an "
                     "offset >= 0");
    }
  }
  if (rc == 0) {
    r->filter = malloc(tagslen + 2);
    if (r->filter == NULL) {
      rc = net__errf(err, TXMQ_ENOMEM, "out of memory");
    } else if (tags == NULL) {
      strcpy(r->filter, "*");
    } else {
      memcpy(r->filter, tags, tagslen);
      r->filter[tagslen] = '\0';
      char why[256];
      why[0] = '\0';
      if (strlen(r->filter) != tagslen ||
          txmq_consumers_check_filter(r->filter, why, sizeof why) != 0)
        rc = net__errf(err, TXMQ_EINVAL,
                       "field 'tags' is not a tag expression (\"*\" or "
                       "\"A || B\")%s%s", why[0] ? ": " : "", why);
    }
  }
  if (rc != 0) {
    recv_free(r);
    return rc;
  }
  r->max = (size_t)max;
  r->visibility_ms = vis;
  r->wait_ms = wait;
  if (try_answer(r, wait == 0 || srv->closing)) {
    recv_free(r);
    net__done(c);
    return 0;
  }
  /* Nothing yet: wait for a wake or the end of wait_ms. */
  if (uv_timer_init(srv->loop, &r->timer) != 0) {
    receive_answer(r, NULL, 0);
    recv_free(r);
    net__done(c);
    return 0;
  }
  srv->handles++;
  r->timer.data = r;
  r->waiting = 1;
  r->snext = srv->waiters;
  if (srv->waiters != NULL) srv->waiters->sprev = r;
  srv->waiters = r;
  r->cnext = c->waits;
  c->waits = r;
  uv_update_time(srv->loop);
  r->deadline = uv_now(srv->loop) + (uint64_t)wait;
  if (r->missing)
    uv_timer_start(&r->timer, on_missing_tick, MISSING_POLL_MS, MISSING_POLL_MS);
  else
    uv_timer_start(&r->timer, on_wait_timer, (uint64_t)wait, 0);
  return 0;
}

void net__waiters_flush(txmq_server_t* srv) {
  while (srv->waiters != NULL) {
    net_recv_t* r = srv->waiters;
    net_conn_t* c = r->c;
    try_answer(r, 1);
    waiter_end(r);
    net__done(c);
  }
}

void net__waiters_drop(net_conn_t* c) {
  while (c->waits != NULL) {
    net_recv_t* r = c->waits;
    waiter_end(r);
    net__done(c);
  }
}

/* ---- ack ---- */

int net__op_ack(net_conn_t* c, uint64_t id, const msgpack_object* m,
                char* err) {
  txmq_server_t* srv = c->srv;
  if (srv->cs == NULL) return no_consumers(err);
  char group[TXMQ_NAME_MAX + 1];
  int rc = net__get_name(m, "group", 1, group, err);
  if (rc != 0) return rc;
  const msgpack_object* h = net__field(m, "handles");
  if (h == NULL) return net__errf(err, TXMQ_EPROTO, "field 'handles' is missing");
  if (h->type != MSGPACK_OBJECT_ARRAY)
    return net__errf(err, TXMQ_EPROTO,
                     "field 'handles' must be an array of strings");
  if (h->via.array.size > MAX_ACK_HANDLES)
    return net__errf(err, TXMQ_ERANGE, "field 'handles' has more than %d "
                                       "entries", MAX_ACK_HANDLES);
  uint32_t acked = 0, missed = 0;
  for (uint32_t i = 0; i < h->via.array.size; i++) {
    const msgpack_object* e = &h->via.array.ptr[i];
    char handle[TXMQ_CONSUMER_HANDLE_MAX];
    if (e->type != MSGPACK_OBJECT_STR || e->via.str.size >= sizeof handle) {
      missed++;
      continue;
    }
    memcpy(handle, e->via.str.ptr, e->via.str.size);
    handle[e->via.str.size] = '\0';
    if (txmq_consumers_ack(srv->cs, group, handle) == 0) acked++;
    else missed++;
  }
  net_wbuf_t w;
  net__wb_init(&w);
  net__resp_begin(&w, id, 2);
  net__pk_str(&w.pk, "acked");
  msgpack_pack_uint32(&w.pk, acked);
  /* Handles that were unknown, malformed or past their visibility timeout
   * (the message may have been delivered again). */
  net__pk_str(&w.pk, "missed");
  msgpack_pack_uint32(&w.pk, missed);
  net__send(c, &w);
  net__done(c);
  return 0;
}

/* ---- offsets ---- */

/* The fields topic and qid of a request, naming a queue that exists. */
static int topic_queue_args(txmq_server_t* srv, const msgpack_object* m,
                            char* topic, int* qid, char* err) {
  int64_t q;
  int rc = net__get_name(m, "topic", 1, topic, err);
  if (rc == 0) rc = net__get_int(m, "qid", 1, 0, TXMQ_STORE_MAX_QUEUES - 1, &q,
                                 err);
  if (rc != 0) return rc;
  int nq = txmq_store_topic_queues(srv->st, topic);
  if (nq < 0) return net__errf(err, TXMQ_ENOTFOUND, "topic '%s' does not exist",
                               topic);
  if (q >= nq)
    return net__errf(err, TXMQ_ERANGE, "topic '%s' has %d queues (qid 0-%d)",
                     topic, nq, nq - 1);
  *qid = (int)q;
  return 0;
}

static int queue_args(txmq_server_t* srv, const msgpack_object* m,
                      char* group, char* topic, int* qid, char* err) {
  int rc = net__get_name(m, "group", 1, group, err);
  return rc != 0 ? rc : topic_queue_args(srv, m, topic, qid, err);
}

int net__op_offset_get(net_conn_t* c, uint64_t id, const msgpack_object* m,
                       char* err) {
  txmq_server_t* srv = c->srv;
  char group[TXMQ_NAME_MAX + 1], topic[TXMQ_NAME_MAX + 1];
  int qid = 0;
  int rc = queue_args(srv, m, group, topic, &qid, err);
  if (rc != 0) return rc;
  int64_t off = 0;
  if (srv->cs != NULL)
    rc = txmq_consumers_progress(srv->cs, group, topic, qid, &off, NULL, NULL);
  else
    rc = txmq_store_offset_get(srv->st, group, topic, qid, &off);
  if (rc != 0)
    return net__errf(err, TXMQ_ENOTFOUND, "group '%s' has no offset on %s/%d",
                     group, topic, qid);
  net_wbuf_t w;
  net__wb_init(&w);
  net__resp_begin(&w, id, 1);
  net__pk_str(&w.pk, "offset");
  msgpack_pack_int64(&w.pk, off);
  net__send(c, &w);
  net__done(c);
  return 0;
}

int net__op_offset_set(net_conn_t* c, uint64_t id, const msgpack_object* m,
                       char* err) {
  txmq_server_t* srv = c->srv;
  char group[TXMQ_NAME_MAX + 1], topic[TXMQ_NAME_MAX + 1];
  int qid = 0;
  int64_t off = 0;
  int rc = queue_args(srv, m, group, topic, &qid, err);
  if (rc == 0) rc = net__get_int(m, "offset", 1, 0, INT64_MAX, &off, err);
  if (rc != 0) return rc;
  /* Through the engine when there is one: a new group counts against its
   * group limit. */
  if (srv->cs != NULL)
    rc = txmq_consumers_offset_set(srv->cs, group, topic, qid, off);
  else
    rc = txmq_store_offset_set(srv->st, group, topic, qid, off);
  if (rc != 0)
    return net__errf(err, rc, "offset not set: %s",
                     rc != TXMQ_ERANGE ? txmq_strerror(rc)
                     : srv->cs != NULL ? txmq_consumers_diag(srv->cs)
                                       : txmq_store_diag(srv->st));
  net_wbuf_t w;
  net__wb_init(&w);
  net__resp_begin(&w, id, 0);
  net__send(c, &w);
  net__done(c);
  return 0;
}

/* peek: the messages of one queue from an offset, read as they are stored.
 * No group, no delivery, no offset moves: a look, not a consumption. */
int net__op_peek(net_conn_t* c, uint64_t id, const msgpack_object* m,
                 char* err) {
  txmq_server_t* srv = c->srv;
  char topic[TXMQ_NAME_MAX + 1];
  int q = 0;
  int64_t from = -1, max = 32;
  int rc = topic_queue_args(srv, m, topic, &q, err);
  if (rc == 0) {
    rc = net__get_int(m, "offset", 0, 0, INT64_MAX, &from, err);
    if (rc == 1) rc = 0; /* absent: the first retained message */
  }
  if (rc == 0) {
    rc = net__get_int(m, "max", 0, 1, 256, &max, err);
    if (rc == 1) rc = 0;
  }
  if (rc != 0) return rc;
  int64_t begin = 0, end = 0;
  rc = txmq_store_queue_range(srv->st, topic, q, &begin, &end);
  if (rc != 0)
    return net__errf(err, rc, "queue %s/%d: %s", topic, q, txmq_strerror(rc));
  int64_t at = from < begin ? begin : from;
  net_wbuf_t msgs;
  net__wb_init(&msgs);
  size_t n = 0;
  while ((int64_t)n < max && at < end) {
    if (n > 0 && msgs.len + MSG_ROOM > srv->max_frame) break;
    txmq_msg_t* msg = NULL;
    rc = txmq_store_get(srv->st, topic, q, at, &msg);
    if (rc == TXMQ_ERANGE &&
        txmq_store_queue_range(srv->st, topic, q, &begin, &end) == 0 &&
        at < begin) {
      at = begin; /* retention went past it meanwhile */
      rc = 0;
      continue;
    }
    if (rc == 0) rc = net__pk_msg_extra(&msgs, msg, NULL, 0);
    txmq_msg_free(msg);
    if (rc != 0) break;
    n++;
    at++;
  }
  if (rc != 0 && n == 0) {
    /* Nothing to show before the failure: say where it is. The messages
     * read before a failure are answered; the next peek meets it. */
    net__wb_free(&msgs);
    return net__errf(err, rc, "peek %s/%d at offset %lld: %s", topic, q,
                     (long long)at, txmq_strerror(rc));
  }
  net_wbuf_t w;
  net__wb_init(&w);
  net__resp_begin(&w, id, 4);
  net__pk_str(&w.pk, "msgs");
  msgpack_pack_array(&w.pk, n);
  if (n > 0) net__wb_put(&w, msgs.p + 4, msgs.len - 4);
  net__wb_free(&msgs);
  net__pk_str(&w.pk, "next");
  msgpack_pack_int64(&w.pk, at);
  net__pk_str(&w.pk, "begin");
  msgpack_pack_int64(&w.pk, begin);
  net__pk_str(&w.pk, "end");
  msgpack_pack_int64(&w.pk, end);
  net__send(c, &w);
  net__done(c);
  return 0;
}
