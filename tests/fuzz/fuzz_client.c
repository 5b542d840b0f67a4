/*
 * fuzz_client.c - libFuzzer target for the C client's side of the wire
 * protocol (core/clients/client): its frame reader, the handshake
 * response, the decoding of every response into results, errors, and the
 * server's check requests.
 *
 * A fake server runs on the same loop: a loopback listener that reads the
 * client's hello, answers it, and once the client has sent its requests,
 * writes the input to the socket and closes it. The client connects, and in its
 * connect callback sends one request of every kind, in the order of
 * REQUESTS below, so their ids are known: the hello is 1, ping 2, and so
 * on (tests/fuzz/gen_seeds.c writes a valid answer to each as a seed).
 *
 * Input: one flags byte, then the bytes the server sends.
 *   bit 0  the input is also the answer to the hello (the fake server
 *          writes it right after the hello instead of a canned "ok")
 *   bit 1  checks are answered later (never, here) instead of at once
 *
 * Properties checked (beyond "no crash, no leak, no UB"): every callback
 * runs exactly once (connect, each accepted request's, close), whatever the
 * server sends; results handed to callbacks are readable in full; every frame the
 * client sends is one msgpack map with "op" and "id" (a request) or "re"
 * and "ok" (an answer to a check).
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_util.h"
#include "store/store_int.h"
#include "txmq/client.h"
#include "txmq/error.h"

/* Requests sent after the handshake, one each, ids 2 .. NREQ + 1. */
#define NREQ 16

typedef struct {
  uv_tcp_t listener;
  uv_tcp_t conn;
  int conn_open;
  int conn_closed;
  uv_write_t wr_hello;
  uv_write_t wr;
  uv_buf_t hello;  /* the canned answer to the hello, unless hello_raw */
  uv_buf_t out;    /* the input */
  int hello_sent;
  int written;
  uint8_t* in;
  size_t inlen, incap;
  size_t frames;  /* complete frames read from the client */
  int hello_raw;  /* bit 0 */
  char rbuf[65536];
} fake_t;

typedef struct {
  uv_loop_t loop;
  fake_t fake;
  int port;
  /* per input */
  int connected;
  int connect_status;
  int closed;
  int late_checks;
  int calls[NREQ + 2];  /* callbacks seen per request slot */
  int sent[NREQ];       /* the request's call succeeded */
  int sit_exec;         /* send_in_transaction's execute calls */
  int checks;
  uint32_t sink;        /* folds what callbacks read */
} fx_t;

static fx_t g_fx;

/* ---- reading results in full ---- */

static void touch(const void* p, size_t n) {
  g_fx.sink = txmq_crc32c(g_fx.sink, p, n);
}

static void touch_str(const char* s) {
  if (s != NULL) touch(s, strlen(s));
}

static void touch_obj(const msgpack_object* o) {
  switch (o->type) {
    case MSGPACK_OBJECT_STR:
      touch(o->via.str.ptr, o->via.str.size);
      break;
    case MSGPACK_OBJECT_BIN:
      touch(o->via.bin.ptr, o->via.bin.size);
      break;
    case MSGPACK_OBJECT_ARRAY:
      for (uint32_t i = 0; i < o->via.array.size; i++)
        touch_obj(&o->via.array.ptr[i]);
      break;
    case MSGPACK_OBJECT_MAP:
      for (uint32_t i = 0; i < o->via.map.size; i++) {
        touch_obj(&o->via.map.ptr[i].key);
        touch_obj(&o->via.map.ptr[i].val);
      }
      break;
    default:
      touch(&o->via, sizeof o->via);
  }
}

static void touch_msg(const txmq_msg_t* m) {
  FZ_CHECK(m != NULL);
  touch_str(txmq_msg_topic(m));
  touch_str(txmq_msg_tags(m));
  touch_str(txmq_msg_keys(m));
  size_t n;
  const void* b = txmq_msg_body(m, &n);
  if (n > 0) touch(b, n);
  for (size_t i = 0; i < txmq_msg_prop_count(m); i++) {
    const char *k, *v;
    FZ_CHECK(txmq_msg_prop_at(m, i, &k, &v) == 0);
    touch_str(k);
    touch_str(v);
  }
  touch(txmq_msg_id(m), TXMQ_MSG_ID_LEN);
}

/* ---- callbacks: each request slot must fire exactly once ---- */

static void hit(int slot, txmq_client_t* c, int status) {
  FZ_CHECK(slot >= 0 && slot < NREQ + 2);
  g_fx.calls[slot]++;
  FZ_CHECK(g_fx.calls[slot] == 1);
  if (status != 0) touch_str(txmq_client_diag(c));
}

static void on_int(txmq_client_t* c, int status, int64_t v, void* arg) {
  hit((int)(intptr_t)arg, c, status);
  touch(&v, sizeof v);
}
static void on_done(txmq_client_t* c, int status, void* arg) {
  hit((int)(intptr_t)arg, c, status);
}
static void on_send(txmq_client_t* c, int status, const txmq_send_result_t* r,
                    void* arg) {
  hit((int)(intptr_t)arg, c, status);
  if (status == 0) touch(r, sizeof *r);
}
static void on_half(txmq_client_t* c, int status, const txmq_half_result_t* r,
                    void* arg) {
  hit((int)(intptr_t)arg, c, status);
  if (status == 0) {
    FZ_CHECK(r->nmsgs <= TXMQ_TX_MAX_MSGS);
    touch(r->tx_id, sizeof r->tx_id);
    touch(r->msg_ids, r->nmsgs * TXMQ_MSG_ID_LEN);
  }
}
static void on_end(txmq_client_t* c, int status, txmq_tx_state_t st,
                   void* arg) {
  hit((int)(intptr_t)arg, c, status);
  touch(&st, sizeof st);
}
static void on_tx_send(txmq_client_t* c, int status,
                       const txmq_tx_send_result_t* r, void* arg) {
  hit((int)(intptr_t)arg, c, status);
  if (status == 0) {
    FZ_CHECK(r->nmsgs <= TXMQ_TX_MAX_MSGS);
    FZ_CHECK(memchr(r->version, '\0', sizeof r->version) != NULL);
    FZ_CHECK(memchr(r->diag, '\0', sizeof r->diag) != NULL);
    touch(r->msg_ids, r->nmsgs * TXMQ_MSG_ID_LEN);
    touch_str(r->version);
    touch_str(r->diag);
  }
}
static void on_receive(txmq_client_t* c, int status, txmq_delivery_t* d,
                       size_t n, void* arg) {
  hit((int)(intptr_t)arg, c, status);
  FZ_CHECK(status == 0 || n == 0);
  for (size_t i = 0; i < n; i++) {
    touch_msg(d[i].msg);
    FZ_CHECK(memchr(d[i].handle, '\0', sizeof d[i].handle) != NULL);
    touch_str(d[i].handle);
  }
  /* Taking a message out of the array is allowed. */
  if (n > 0) {
    txmq_msg_free(d[0].msg);
    d[0].msg = NULL;
  }
}
static void on_reply(txmq_client_t* c, int status, const msgpack_object* o,
                     void* arg) {
  hit((int)(intptr_t)arg, c, status);
  FZ_CHECK((status == 0) == (o != NULL));
  if (o != NULL) touch_obj(o);
}
static txmq_tx_decision_t on_execute(txmq_client_t* c, const txmq_msg_t* m,
                                     const uint8_t* tx_id, void* arg) {
  (void)c;
  (void)arg;
  g_fx.sit_exec++;
  FZ_CHECK(g_fx.sit_exec == 1);
  touch_msg(m);
  touch(tx_id, TXMQ_TX_ID_LEN);
  return TXMQ_TX_COMMIT;
}
static void on_sit(txmq_client_t* c, int status, const txmq_tx_result_t* r,
                   void* arg) {
  hit((int)(intptr_t)arg, c, status);
  if (status == 0) touch(r, sizeof *r);
}
static void on_check(txmq_client_t* c, const txmq_client_check_t* chk,
                     void* arg) {
  (void)arg;
  g_fx.checks++;
  touch(chk->tx_id, TXMQ_TX_ID_LEN);
  touch_str(chk->group);
  for (size_t i = 0; i < chk->nmsgs; i++) touch_msg(chk->msgs[i]);
  if (!g_fx.late_checks) {
    int rc = txmq_client_check_reply(c, chk->check_id, TXMQ_TX_COMMIT);
    FZ_CHECK(rc == 0 || rc == TXMQ_ECLOSED);
  }
}

static const uint8_t TX_ID[16] = {0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6,
                                  0xa7, 0xa8, 0xa9, 0xaa, 0xab, 0xac,
                                  0xad, 0xae, 0xaf, 0xb0};

/* The requests, in id order (2, 3, ...): the seeds depend on it. */
static void send_requests(txmq_client_t* c) {
  txmq_msg_t* m = txmq_msg_new();
  FZ_CHECK(m != NULL);
  FZ_CHECK(txmq_msg_set_topic(m, "t") == 0);
  FZ_CHECK(txmq_msg_set_body(m, "body", 4) == 0);
  const txmq_msg_t* two[2] = {m, m};
  const char* const handles[2] = {"h1", "h2"};
  static const uint8_t arg[] = {0xa6, 'c', 'o', 'm', 'm', 'i', 't'};
  static const uint8_t fields[] = {0x81, 0xa1, 'k', 0x01};
  txmq_receive_opts_t ro;
  memset(&ro, 0, sizeof ro);
  ro.group = "cg";
  ro.topic = "t";
  ro.max = 4;
  int slot = 0;
  /* A request may be refused at the call only for being over the max_frame
   * the server announced; its callback then never runs. */
#define REQ(call)                                    \
  do {                                               \
    int rc_ = (call);                                \
    FZ_CHECK(rc_ == 0 || rc_ == TXMQ_ETOOBIG);       \
    g_fx.sent[slot - 1] = rc_ == 0;                  \
  } while (0)
#define A ((void*)(intptr_t)slot++)
  REQ(txmq_client_ping(c, on_int, A));                               /* 2 */
  REQ(txmq_client_send(c, m, on_send, A));                           /* 3 */
  REQ(txmq_client_tx_half(c, "g", two, 2, 0,
                          on_half, A));                              /* 4 */
  REQ(txmq_client_tx_end(c, TX_ID, TXMQ_TX_COMMIT, on_end, A));      /* 5 */
  REQ(txmq_client_tx_send(c, "hosted", two, 1, arg,
                          sizeof arg, 0, on_tx_send, A));            /* 6 */
  REQ(txmq_client_receive(c, &ro, on_receive, A));                   /* 7 */
  REQ(txmq_client_ack(c, "cg", handles, 2, on_int, A));              /* 8 */
  REQ(txmq_client_offset_get(c, "cg", "t", 0, on_int, A));           /* 9 */
  REQ(txmq_client_offset_set(c, "cg", "t", 0, 5, on_done, A));       /* 10 */
  REQ(txmq_client_status(c, on_reply, A));                           /* 11 */
  REQ(txmq_client_tx_list(c, NULL, 0, on_reply, A));                 /* 12 */
  REQ(txmq_client_tx_show(c, TX_ID, on_reply, A));                   /* 13 */
  REQ(txmq_client_tx_resume(c, TX_ID, on_reply, A));                 /* 14 */
  REQ(txmq_client_reload(c, "hosted", on_reply, A));                 /* 15 */
  REQ(txmq_client_call(c, "custom", fields, sizeof fields, on_reply,
                       A));                                          /* 16 */
  REQ(txmq_client_send_in_transaction(c, "g", m, on_execute, NULL, on_sit,
                                      A));         /* 17, then its tx.end */
#undef A
#undef REQ
  FZ_CHECK(slot == NREQ);
  txmq_msg_free(m);
}

static void on_connect(txmq_client_t* c, int status, void* arg) {
  (void)arg;
  g_fx.connected++;
  FZ_CHECK(g_fx.connected == 1);
  g_fx.connect_status = status;
  if (status != 0) {
    touch_str(txmq_client_diag(c));
    return;
  }
  touch_str(txmq_client_server(c));
  send_requests(c);
}

static void on_lost(txmq_client_t* c, int status, void* arg) {
  (void)arg;
  (void)status;
  touch_str(txmq_client_diag(c));
}

static void on_closed(txmq_client_t* c, void* arg) {
  (void)arg;
  g_fx.closed++;
  txmq_client_free(c);
}

/* ---- the fake server ---- */

static void pk_s(msgpack_packer* pk, const char* s) {
  msgpack_pack_str(pk, strlen(s));
  msgpack_pack_str_body(pk, s, strlen(s));
}

/* The canned answer to the hello (id 1). */
static void hello_ok(msgpack_sbuffer* sb) {
  msgpack_sbuffer body;
  msgpack_sbuffer_init(&body);
  msgpack_packer pk;
  msgpack_packer_init(&pk, &body, msgpack_sbuffer_write);
  msgpack_pack_map(&pk, 6);
  pk_s(&pk, "re");
  msgpack_pack_uint32(&pk, 1);
  pk_s(&pk, "ok");
  msgpack_pack_true(&pk);
  pk_s(&pk, "version");
  msgpack_pack_uint32(&pk, 1);
  pk_s(&pk, "server");
  pk_s(&pk, "fake");
  pk_s(&pk, "max_frame");
  msgpack_pack_uint32(&pk, 65536);
  pk_s(&pk, "heartbeat_ms");
  msgpack_pack_uint32(&pk, 0);
  uint8_t len[4] = {0, 0, (uint8_t)(body.size >> 8), (uint8_t)body.size};
  msgpack_sbuffer_write(sb, (const char*)len, 4);
  msgpack_sbuffer_write(sb, body.data, body.size);
  msgpack_sbuffer_destroy(&body);
}

static const msgpack_object* get(const msgpack_object* m, const char* k) {
  size_t n = strlen(k);
  for (uint32_t i = 0; i < m->via.map.size; i++) {
    const msgpack_object* key = &m->via.map.ptr[i].key;
    if (key->type == MSGPACK_OBJECT_STR && key->via.str.size == n &&
        memcmp(key->via.str.ptr, k, n) == 0)
      return &m->via.map.ptr[i].val;
  }
  return NULL;
}

/* Every frame the client sends is a request or an answer to a check. */
static void check_client_frame(const uint8_t* p, size_t n) {
  msgpack_unpacked u;
  msgpack_unpacked_init(&u);
  FZ_CHECK(txmq__mp_unpack(p, n, TXMQ__MP_MAX_DEPTH, n + 1, &u) == 0);
  const msgpack_object* o = &u.data;
  FZ_CHECK(o->type == MSGPACK_OBJECT_MAP);
  const msgpack_object* op = get(o, "op");
  const msgpack_object* id = get(o, "id");
  const msgpack_object* re = get(o, "re");
  const msgpack_object* ok = get(o, "ok");
  if (op != NULL) {
    FZ_CHECK(op->type == MSGPACK_OBJECT_STR && id != NULL &&
             id->type == MSGPACK_OBJECT_POSITIVE_INTEGER && id->via.u64 >= 1);
  } else {
    FZ_CHECK(re != NULL && re->type == MSGPACK_OBJECT_POSITIVE_INTEGER);
    FZ_CHECK(ok != NULL && ok->type == MSGPACK_OBJECT_BOOLEAN);
  }
  msgpack_unpacked_destroy(&u);
}

static void on_fake_closed(uv_handle_t* h) {
  ((fake_t*)h->data)->conn_closed = 1;
}

static void on_fake_written(uv_write_t* req, int status) {
  (void)status;
  fake_t* f = req->data;
  /* Everything said: close, as a server that is done (or gone) would. */
  uv_close((uv_handle_t*)&f->conn, on_fake_closed);
}

static void fake_write(fake_t* f) {
  f->written = 1;
  uv_read_stop((uv_stream_t*)&f->conn);
  f->wr.data = f;
  if (f->out.len == 0) {
    uv_close((uv_handle_t*)&f->conn, on_fake_closed);
    return;
  }
  FZ_CHECK(uv_write(&f->wr, (uv_stream_t*)&f->conn, &f->out, 1,
                    on_fake_written) == 0);
}

static void on_fake_alloc(uv_handle_t* h, size_t sz, uv_buf_t* buf) {
  (void)sz;
  fake_t* f = h->data;
  buf->base = f->rbuf;
  buf->len = sizeof f->rbuf;
}

static void on_fake_read(uv_stream_t* s, ssize_t n, const uv_buf_t* buf) {
  fake_t* f = s->data;
  if (n < 0) {
    if (!f->written) fake_write(f);
    return;
  }
  if (n == 0) return;
  if (f->inlen + (size_t)n > f->incap) {
    size_t cap = f->incap ? f->incap * 2 : 65536;
    while (cap < f->inlen + (size_t)n) cap *= 2;
    f->in = realloc(f->in, cap);
    FZ_CHECK(f->in != NULL);
    f->incap = cap;
  }
  memcpy(f->in + f->inlen, buf->base, (size_t)n);
  f->inlen += (size_t)n;
  /* Count the complete frames, checking each. */
  size_t off = 0, seen = 0;
  while (f->inlen - off >= 4) {
    uint32_t len = (uint32_t)f->in[off] << 24 | (uint32_t)f->in[off + 1] << 16 |
                   (uint32_t)f->in[off + 2] << 8 | f->in[off + 3];
    FZ_CHECK(len >= 1);
    if (f->inlen - off - 4 < len) break;
    if (seen >= f->frames) check_client_frame(f->in + off + 4, len);
    off += 4 + (size_t)len;
    seen++;
  }
  f->frames = seen;
  if (f->written || seen == 0) return;
  if (f->hello_raw) {
    fake_write(f);
  } else if (!f->hello_sent) {
    f->hello_sent = 1;
    FZ_CHECK(uv_write(&f->wr_hello, (uv_stream_t*)&f->conn, &f->hello, 1,
                      NULL) == 0);
  }
  /* The input goes once the client has sent every request. */
  if (!f->written && seen >= 1 + NREQ) fake_write(f);
}

static void on_fake_connection(uv_stream_t* l, int status) {
  fake_t* f = l->data;
  FZ_CHECK(status == 0 && !f->conn_open);
  FZ_CHECK(uv_tcp_init(l->loop, &f->conn) == 0);
  f->conn.data = f;
  f->conn_open = 1;
  FZ_CHECK(uv_accept(l, (uv_stream_t*)&f->conn) == 0);
  FZ_CHECK(uv_read_start((uv_stream_t*)&f->conn, on_fake_alloc,
                         on_fake_read) == 0);
}

int LLVMFuzzerInitialize(int* argc, char*** argv) {
  (void)argc;
  (void)argv;
  /* A peer that closes while we write must not kill the process: libuv
   * leaves SIGPIPE to the host program, as txmqd ignores it. */
  signal(SIGPIPE, SIG_IGN);
  fx_t* fx = &g_fx;
  FZ_CHECK(uv_loop_init(&fx->loop) == 0);
  FZ_CHECK(uv_tcp_init(&fx->loop, &fx->fake.listener) == 0);
  fx->fake.listener.data = &fx->fake;
  struct sockaddr_in addr;
  uv_ip4_addr("127.0.0.1", 0, &addr);
  FZ_CHECK(uv_tcp_bind(&fx->fake.listener, (const struct sockaddr*)&addr,
                       0) == 0);
  FZ_CHECK(uv_listen((uv_stream_t*)&fx->fake.listener, 16,
                     on_fake_connection) == 0);
  struct sockaddr_storage ss;
  int len = sizeof ss;
  FZ_CHECK(uv_tcp_getsockname(&fx->fake.listener, (struct sockaddr*)&ss,
                              &len) == 0);
  fx->port = ntohs(((struct sockaddr_in*)&ss)->sin_port);
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  fx_t* fx = &g_fx;
  fake_t* f = &fx->fake;
  memset(fx->calls, 0, sizeof fx->calls);
  memset(fx->sent, 0, sizeof fx->sent);
  fx->connected = fx->closed = fx->sit_exec = fx->checks = 0;
  fx->connect_status = 0;
  fx->late_checks = (data[0] & 2) != 0;
  f->hello_raw = data[0] & 1;
  f->conn_open = f->conn_closed = f->written = f->hello_sent = 0;
  f->inlen = 0;
  f->frames = 0;

  msgpack_sbuffer hello;
  msgpack_sbuffer_init(&hello);
  hello_ok(&hello);
  f->hello = uv_buf_init(hello.data, (unsigned)hello.size);
  f->out = uv_buf_init((char*)data + 1, (unsigned)(size - 1));

  static const char* const groups[1] = {"g"};
  txmq_client_options_t o;
  memset(&o, 0, sizeof o);
  o.client_id = "fuzz";
  o.role = TXMQ_ROLE_PRODUCER;
  o.producer_groups = groups;
  o.n_producer_groups = 1;
  o.connect_timeout_ms = 5000;
  o.request_timeout_ms = 5000;
  txmq_client_t* c = NULL;
  FZ_CHECK(txmq_client_new(&c, &fx->loop, &o) == 0);
  txmq_client_on_disconnect(c, on_lost, NULL);
  FZ_CHECK(txmq_client_on_check(c, "g", on_check, NULL) == 0);
  char addr[32];
  snprintf(addr, sizeof addr, "127.0.0.1:%d", fx->port);
  FZ_CHECK(txmq_client_connect(c, addr, on_connect, NULL) == 0);

  /* The fake server closes once it said everything: the client then loses
   * the connection and fails what is left. */
  fz_run_until(&fx->loop, &f->conn_closed, 10000);
  FZ_CHECK(f->conn_closed);
  fz_run_until(&fx->loop, &fx->connected, 10000);
  FZ_CHECK(fx->connected == 1);
  int rc = txmq_client_close(c, on_closed, NULL);
  FZ_CHECK(rc == 0);
  FZ_CHECK(fz_run_until(&fx->loop, &fx->closed, 10000));
  /* Every request that was sent got exactly one callback. */
  if (fx->connect_status == 0) {
    for (int i = 0; i < NREQ; i++) FZ_CHECK(fx->calls[i] == fx->sent[i]);
  }
  msgpack_sbuffer_destroy(&hello);
  return 0;
}
