/*
 * test_client.c - the C client against a fake server: a loopback uv_tcp
 * listener on its own thread and loop that answers the client's frames as
 * each test tells it (canned responses, held and reordered responses,
 * malformed and hostile frames, check requests of its own).
 *
 * Covered: the handshake and its failures, request encoding, correlation
 * of pipelined requests answered out of order, decoding of every response,
 * error responses, malformed responses, hostile frames (bad lengths,
 * invalid or bomb msgpack, wrong types, answers to nothing, random bytes),
 * check dispatch and later answers, request timeouts, heartbeat, losing the
 * connection and reconnecting, close failing everything outstanding with
 * TXMQ_ECLOSED, send_in_transaction, and the blocking layer. Callbacks are
 * counted: each must fire exactly once. Every test closes its loop cleanly.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "store/store_int.h"
#include "testutil.h"
#include "txmq/client.h"
#include "txmq/error.h"
#include "txmq/msg.h"

/* ====================================================================
 * The fake server. Everything below runs on the server's thread, except
 * fs_start/fs_stop and reads of the records under the mutex.
 * ==================================================================== */

typedef struct fs_s fs_t;
typedef struct fs_conn_s fs_conn_t;

/* Called for every frame after the hello (o is a map; op NULL for
 * responses, then re is set). */
typedef void (*fs_frame_fn)(fs_t* fs, fs_conn_t* conn, const msgpack_object* o,
                            const char* op, uint64_t id, uint64_t re);

struct fs_conn_s {
  uv_tcp_t tcp;
  fs_t* fs;
  uint8_t* buf;
  size_t len, cap;
  int closing;
  struct fs_conn_s* next;
};

#define FS_MAX_REC 512

struct fs_s {
  uv_loop_t loop;
  uv_tcp_t listener;
  uv_async_t stop;
  uv_thread_t thread;
  uv_mutex_t mu;
  int port;
  fs_frame_fn on_frame;
  void (*on_hello)(fs_t* fs, fs_conn_t* conn, uint64_t id); /* NULL: ok */
  void (*on_ready)(fs_t* fs, fs_conn_t* conn); /* after the hello answer */
  uint32_t hb_ms;        /* announced heartbeat_ms (0: 10000) */
  uint32_t max_frame;    /* announced max_frame (0: 8 MiB) */
  fs_conn_t* conns;
  void* ud;              /* the test's own state */
  /* records (under mu) */
  int nrec;
  char rec_op[FS_MAX_REC][24];
  uint64_t rec_id[FS_MAX_REC];
  int hellos;
  char hello_client[64];
  char hello_role[16];
  char hello_groups[128];
  int64_t hello_version;
  int accepted;
  /* held requests */
  uint64_t held[256];
  int nheld;
};

typedef struct {
  msgpack_sbuffer sb;
  msgpack_packer pk;
} pkb_t;

static void pkb_init(pkb_t* b) {
  msgpack_sbuffer_init(&b->sb);
  msgpack_packer_init(&b->pk, &b->sb, msgpack_sbuffer_write);
}

static void pk_s(msgpack_packer* pk, const char* s) {
  size_t n = strlen(s);
  msgpack_pack_str(pk, n);
  msgpack_pack_str_body(pk, s, n);
}
static void kv_s(msgpack_packer* pk, const char* k, const char* v) {
  pk_s(pk, k);
  pk_s(pk, v);
}
static void kv_i(msgpack_packer* pk, const char* k, int64_t v) {
  pk_s(pk, k);
  msgpack_pack_int64(pk, v);
}
static void kv_bin(msgpack_packer* pk, const char* k, const void* p, size_t n) {
  pk_s(pk, k);
  msgpack_pack_bin(pk, n);
  msgpack_pack_bin_body(pk, p, n);
}
/* A response header: map of 2 + extra keys, re, ok. */
static void resp_begin(pkb_t* b, uint64_t re, int ok, size_t extra) {
  pkb_init(b);
  msgpack_pack_map(&b->pk, 2 + extra);
  kv_i(&b->pk, "re", (int64_t)re);
  pk_s(&b->pk, "ok");
  if (ok)
    msgpack_pack_true(&b->pk);
  else
    msgpack_pack_false(&b->pk);
}

static void on_fs_write(uv_write_t* req, int status) {
  (void)status;
  free(req->data);
  free(req);
}

/* Writes raw bytes. */
static void fs_raw(fs_conn_t* c, const void* p, size_t n) {
  if (c->closing) return;
  uv_write_t* w = malloc(sizeof *w);
  char* copy = malloc(n ? n : 1);
  memcpy(copy, p, n);
  w->data = copy;
  uv_buf_t buf = uv_buf_init(copy, (unsigned)n);
  if (uv_write(w, (uv_stream_t*)&c->tcp, &buf, 1, on_fs_write) != 0) {
    free(copy);
    free(w);
  }
}

/* Writes one frame: length prefix + payload. */
static void fs_frame(fs_conn_t* c, const void* p, size_t n) {
  uint8_t* f = malloc(n + 4);
  f[0] = (uint8_t)(n >> 24);
  f[1] = (uint8_t)(n >> 16);
  f[2] = (uint8_t)(n >> 8);
  f[3] = (uint8_t)n;
  memcpy(f + 4, p, n);
  fs_raw(c, f, n + 4);
  free(f);
}

static void fs_send(fs_conn_t* c, pkb_t* b) {
  fs_frame(c, b->sb.data, b->sb.size);
  msgpack_sbuffer_destroy(&b->sb);
}

static void fs_error(fs_conn_t* c, uint64_t re, const char* err, int code,
                     const char* msg) {
  pkb_t b;
  resp_begin(&b, re, 0, 3);
  kv_s(&b.pk, "err", err);
  kv_i(&b.pk, "code", code);
  kv_s(&b.pk, "msg", msg);
  fs_send(c, &b);
}

static void on_fs_conn_close(uv_handle_t* h) {
  fs_conn_t* c = h->data;
  fs_t* fs = c->fs;
  fs_conn_t** pp = &fs->conns;
  while (*pp && *pp != c) pp = &(*pp)->next;
  if (*pp) *pp = c->next;
  free(c->buf);
  free(c);
}

static void fs_close_conn(fs_conn_t* c) {
  if (c->closing) return;
  c->closing = 1;
  uv_close((uv_handle_t*)&c->tcp, on_fs_conn_close);
}

/* Closes after the queued writes went out. */
static void on_fs_shutdown(uv_shutdown_t* req, int status) {
  (void)status;
  fs_conn_t* c = req->data;
  free(req);
  fs_close_conn(c);
}
static void fs_close_after_writes(fs_conn_t* c) {
  if (c->closing) return;
  uv_shutdown_t* req = malloc(sizeof *req);
  req->data = c;
  if (uv_shutdown(req, (uv_stream_t*)&c->tcp, on_fs_shutdown) != 0) {
    free(req);
    fs_close_conn(c);
  }
}

static void fs_record(fs_t* fs, const char* op, uint64_t id) {
  uv_mutex_lock(&fs->mu);
  if (fs->nrec < FS_MAX_REC) {
    snprintf(fs->rec_op[fs->nrec], sizeof fs->rec_op[0], "%s", op);
    fs->rec_id[fs->nrec] = id;
    fs->nrec++;
  }
  uv_mutex_unlock(&fs->mu);
}

static const msgpack_object* mget(const msgpack_object* m, const char* k) {
  return txmq_client_map_get(m, k);
}

static void copy_str(char* dst, size_t cap, const msgpack_object* v) {
  dst[0] = '\0';
  if (!v || v->type != MSGPACK_OBJECT_STR) return;
  size_t n = v->via.str.size < cap - 1 ? v->via.str.size : cap - 1;
  memcpy(dst, v->via.str.ptr, n);
  dst[n] = '\0';
}

static void fs_hello_ok(fs_t* fs, fs_conn_t* c, uint64_t id) {
  pkb_t b;
  resp_begin(&b, id, 1, 5);
  kv_i(&b.pk, "version", 1);
  kv_s(&b.pk, "server", "fake 0.0");
  kv_i(&b.pk, "max_frame", fs->max_frame ? fs->max_frame : 8388608);
  kv_i(&b.pk, "max_inflight", 1024);
  kv_i(&b.pk, "heartbeat_ms", fs->hb_ms ? fs->hb_ms : 10000);
  fs_send(c, &b);
}

static void fs_handle(fs_conn_t* c, const uint8_t* p, size_t n) {
  fs_t* fs = c->fs;
  msgpack_unpacked u;
  msgpack_unpacked_init(&u);
  int rc = txmq__mp_unpack(p, n, 24, 1u << 20, &u);
  const msgpack_object* o = &u.data;
  /* The client only sends valid maps. (cmocka's asserts cannot fail on
   * this thread, so say it and stop.) */
  if (rc != 0 || o->type != MSGPACK_OBJECT_MAP) {
    fprintf(stderr, "fake server: the client sent an invalid frame (%zu bytes)\n", n);
    abort();
  }
  const msgpack_object* op = mget(o, "op");
  const msgpack_object* id = mget(o, "id");
  const msgpack_object* re = mget(o, "re");
  char opname[24] = "";
  copy_str(opname, sizeof opname, op);
  uint64_t idv = id && id->type == MSGPACK_OBJECT_POSITIVE_INTEGER ? id->via.u64 : 0;
  uint64_t rev = re && re->type == MSGPACK_OBJECT_POSITIVE_INTEGER ? re->via.u64 : 0;
  fs_record(fs, op ? opname : "(response)", op ? idv : rev);
  if (op && strcmp(opname, "hello") == 0) {
    uv_mutex_lock(&fs->mu);
    fs->hellos++;
    copy_str(fs->hello_client, sizeof fs->hello_client, mget(o, "client"));
    copy_str(fs->hello_role, sizeof fs->hello_role, mget(o, "role"));
    const msgpack_object* v = mget(o, "version");
    fs->hello_version = v ? (int64_t)v->via.u64 : -1;
    const msgpack_object* g = mget(o, "producer_groups");
    fs->hello_groups[0] = '\0';
    if (g && g->type == MSGPACK_OBJECT_ARRAY) {
      for (uint32_t i = 0; i < g->via.array.size; i++) {
        char one[64];
        copy_str(one, sizeof one, &g->via.array.ptr[i]);
        strncat(fs->hello_groups, one, sizeof fs->hello_groups - strlen(fs->hello_groups) - 2);
        strcat(fs->hello_groups, ",");
      }
    }
    uv_mutex_unlock(&fs->mu);
    if (fs->on_hello)
      fs->on_hello(fs, c, idv);
    else
      fs_hello_ok(fs, c, idv);
    if (fs->on_ready && !c->closing) fs->on_ready(fs, c);
  } else if (fs->on_frame) {
    fs->on_frame(fs, c, o, op ? opname : NULL, idv, rev);
  }
  msgpack_unpacked_destroy(&u);
}

static void on_fs_alloc(uv_handle_t* h, size_t sz, uv_buf_t* buf) {
  (void)h;
  buf->base = malloc(sz);
  buf->len = sz;
}

static void on_fs_read(uv_stream_t* s, ssize_t nread, const uv_buf_t* buf) {
  fs_conn_t* c = s->data;
  if (nread < 0) {
    free(buf->base);
    fs_close_conn(c);
    return;
  }
  if (c->len + (size_t)nread > c->cap) {
    c->cap = (c->len + (size_t)nread) * 2;
    c->buf = realloc(c->buf, c->cap);
  }
  memcpy(c->buf + c->len, buf->base, (size_t)nread);
  c->len += (size_t)nread;
  free(buf->base);
  size_t off = 0;
  while (!c->closing && c->len - off >= 4) {
    uint32_t n = (uint32_t)c->buf[off] << 24 | (uint32_t)c->buf[off + 1] << 16 |
                 (uint32_t)c->buf[off + 2] << 8 | c->buf[off + 3];
    if (c->len - off - 4 < n) break;
    fs_handle(c, c->buf + off + 4, n);
    off += 4 + n;
  }
  memmove(c->buf, c->buf + off, c->len - off);
  c->len -= off;
}

static void on_fs_connection(uv_stream_t* l, int status) {
  fs_t* fs = l->data;
  if (status < 0) return;
  fs_conn_t* c = calloc(1, sizeof *c);
  c->fs = fs;
  uv_tcp_init(&fs->loop, &c->tcp);
  c->tcp.data = c;
  if (uv_accept(l, (uv_stream_t*)&c->tcp) != 0) {
    uv_close((uv_handle_t*)&c->tcp, on_fs_conn_close);
    return;
  }
  c->next = fs->conns;
  fs->conns = c;
  uv_mutex_lock(&fs->mu);
  fs->accepted++;
  uv_mutex_unlock(&fs->mu);
  uv_read_start((uv_stream_t*)&c->tcp, on_fs_alloc, on_fs_read);
}

static void on_fs_stop(uv_async_t* a) {
  fs_t* fs = a->data;
  for (fs_conn_t* c = fs->conns; c; c = c->next) fs_close_conn(c);
  uv_close((uv_handle_t*)&fs->listener, NULL);
  uv_close((uv_handle_t*)&fs->stop, NULL);
}

static void fs_thread(void* arg) {
  fs_t* fs = arg;
  uv_run(&fs->loop, UV_RUN_DEFAULT);
}

static fs_t* fs_start(fs_frame_fn on_frame, void* ud) {
  fs_t* fs = calloc(1, sizeof *fs);
  fs->on_frame = on_frame;
  fs->ud = ud;
  assert_int_equal(uv_loop_init(&fs->loop), 0);
  uv_mutex_init(&fs->mu);
  uv_tcp_init(&fs->loop, &fs->listener);
  fs->listener.data = fs;
  struct sockaddr_in addr;
  uv_ip4_addr("127.0.0.1", 0, &addr);
  assert_int_equal(uv_tcp_bind(&fs->listener, (struct sockaddr*)&addr, 0), 0);
  assert_int_equal(uv_listen((uv_stream_t*)&fs->listener, 16, on_fs_connection), 0);
  struct sockaddr_storage ss;
  int len = sizeof ss;
  uv_tcp_getsockname(&fs->listener, (struct sockaddr*)&ss, &len);
  fs->port = ntohs(((struct sockaddr_in*)&ss)->sin_port);
  uv_async_init(&fs->loop, &fs->stop, on_fs_stop);
  fs->stop.data = fs;
  return fs;
}

/* Starts the thread once the test set its hooks. */
static void fs_run(fs_t* fs) {
  assert_int_equal(uv_thread_create(&fs->thread, fs_thread, fs), 0);
}

static void fs_stop(fs_t* fs) {
  uv_async_send(&fs->stop);
  uv_thread_join(&fs->thread);
  assert_int_equal(uv_loop_close(&fs->loop), 0);
  uv_mutex_destroy(&fs->mu);
  free(fs);
}

static char* fs_addr(fs_t* fs, char* buf, size_t cap) {
  snprintf(buf, cap, "127.0.0.1:%d", fs->port);
  return buf;
}

static int fs_count(fs_t* fs, const char* op) {
  int n = 0;
  uv_mutex_lock(&fs->mu);
  for (int i = 0; i < fs->nrec; i++)
    if (strcmp(fs->rec_op[i], op) == 0) n++;
  uv_mutex_unlock(&fs->mu);
  return n;
}

/* ====================================================================
 * The client side: fixture, spies.
 * ==================================================================== */

typedef struct {
  uv_loop_t loop;
  txmq_client_t* c;
  fs_t* fs;
  char addr[64];
  int connected;
  int connect_calls;
  int connect_status;
  int closed;
  int disc_calls;
  int disc_status;
} fx_t;

static void on_connect_spy(txmq_client_t* c, int status, void* arg) {
  (void)c;
  fx_t* fx = arg;
  fx->connect_calls++;
  fx->connect_status = status;
  fx->connected = 1;
}

static void on_disc_spy(txmq_client_t* c, int status, void* arg) {
  (void)c;
  fx_t* fx = arg;
  fx->disc_calls++;
  fx->disc_status = status;
}

static void on_close_spy(txmq_client_t* c, void* arg) {
  fx_t* fx = arg;
  fx->closed++;
  txmq_client_free(c);
}

static txmq_client_options_t default_opts(void) {
  static const char* pgroups[] = {"g1", "g2"};
  txmq_client_options_t o;
  memset(&o, 0, sizeof o);
  o.client_id = "test-client:1";
  o.role = TXMQ_ROLE_PRODUCER;
  o.producer_groups = pgroups;
  o.n_producer_groups = 2;
  return o;
}

/* A client with opts (NULL: defaults), connected to the fake server. */
static void fx_connect_opts(fx_t* fx, const txmq_client_options_t* opts) {
  txmq_client_options_t o = opts ? *opts : default_opts();
  assert_int_equal(txmq_client_new(&fx->c, &fx->loop, &o), 0);
  txmq_client_on_disconnect(fx->c, on_disc_spy, fx);
  fs_addr(fx->fs, fx->addr, sizeof fx->addr);
  fx->connected = 0;
  assert_int_equal(txmq_client_connect(fx->c, fx->addr, on_connect_spy, fx), 0);
  assert_true(tu_run_until(&fx->loop, &fx->connected, 5000));
  assert_int_equal(fx->connect_status, 0);
  assert_true(txmq_client_is_connected(fx->c));
}

static void fx_init(fx_t* fx, fs_frame_fn on_frame, void* ud) {
  memset(fx, 0, sizeof *fx);
  assert_int_equal(uv_loop_init(&fx->loop), 0);
  fx->fs = fs_start(on_frame, ud);
}

static void fx_close(fx_t* fx) {
  if (fx->c) {
    assert_int_equal(txmq_client_close(fx->c, on_close_spy, fx), 0);
    assert_true(tu_run_until(&fx->loop, &fx->closed, 5000));
    assert_int_equal(fx->closed, 1);
    fx->c = NULL;
  }
  tu_loop_close_clean(&fx->loop);
  fs_stop(fx->fs);
}

/* A generic spy for callbacks: counts, last status, last value. */
typedef struct {
  int calls;
  int status;
  int64_t value;
  int done;          /* set when calls reaches want */
  int want;
  uint8_t id[16];
  txmq_tx_state_t state;
  char text[256];
  size_t n;
} spy_t;

static void spy_hit(spy_t* s, int status) {
  s->calls++;
  s->status = status;
  if (s->calls >= (s->want ? s->want : 1)) s->done = 1;
}

static void on_int_spy(txmq_client_t* c, int status, int64_t v, void* arg) {
  (void)c;
  spy_t* s = arg;
  s->value = v;
  spy_hit(s, status);
}

static void on_send_spy(txmq_client_t* c, int status, const txmq_send_result_t* r,
                        void* arg) {
  (void)c;
  spy_t* s = arg;
  if (status == 0) {
    memcpy(s->id, r->msg_id, 16);
    s->value = r->qid * 1000 + r->qoff;
  } else {
    assert_null(r);
  }
  spy_hit(s, status);
}

static void on_reply_spy(txmq_client_t* c, int status, const msgpack_object* o,
                         void* arg) {
  spy_t* s = arg;
  if (status == 0) {
    assert_non_null(o);
    assert_int_equal(o->type, MSGPACK_OBJECT_MAP);
    s->n = o->via.map.size;
  } else {
    assert_null(o);
    snprintf(s->text, sizeof s->text, "%s", txmq_client_diag(c));
  }
  spy_hit(s, status);
}

static void on_done_spy(txmq_client_t* c, int status, void* arg) {
  (void)c;
  spy_hit(arg, status);
}

/* ====================================================================
 * Tests
 * ==================================================================== */

static void connect_refused(void** state) {
  (void)state;
  fx_t fx;
  fx_init(&fx, NULL, NULL);
  fs_run(fx.fs);
  /* A port nobody listens on: bind one, close it, use its number. */
  uv_tcp_t t;
  uv_tcp_init(&fx.loop, &t);
  struct sockaddr_in a;
  uv_ip4_addr("127.0.0.1", 0, &a);
  assert_int_equal(uv_tcp_bind(&t, (struct sockaddr*)&a, 0), 0);
  struct sockaddr_storage ss;
  int len = sizeof ss;
  uv_tcp_getsockname(&t, (struct sockaddr*)&ss, &len);
  int port = ntohs(((struct sockaddr_in*)&ss)->sin_port);
  uv_close((uv_handle_t*)&t, NULL);
  uv_run(&fx.loop, UV_RUN_NOWAIT);

  txmq_client_options_t o = default_opts();
  assert_int_equal(txmq_client_new(&fx.c, &fx.loop, &o), 0);
  char addr[64];
  snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
  assert_int_equal(txmq_client_connect(fx.c, addr, on_connect_spy, &fx), 0);
  /* Never from within the call. */
  assert_int_equal(fx.connect_calls, 0);
  assert_true(tu_run_until(&fx.loop, &fx.connected, 5000));
  assert_int_equal(fx.connect_calls, 1);
  assert_int_equal(fx.connect_status, TXMQ_EIO);
  assert_string_equal(txmq_client_diag(fx.c), "connection refused");
  assert_false(txmq_client_is_connected(fx.c));
  /* Requests on an unconnected client fail at once; no callback. */
  spy_t s = {0};
  assert_int_equal(txmq_client_ping(fx.c, on_int_spy, &s), TXMQ_ECLOSED);
  /* It may connect again (to the real server this time). */
  fx.connected = 0;
  assert_int_equal(txmq_client_connect(fx.c, fs_addr(fx.fs, addr, sizeof addr),
                                       on_connect_spy, &fx), 0);
  assert_int_equal(txmq_client_connect(fx.c, addr, on_connect_spy, &fx), TXMQ_EBUSY);
  assert_true(tu_run_until(&fx.loop, &fx.connected, 5000));
  assert_int_equal(fx.connect_status, 0);
  assert_int_equal(fx.connect_calls, 2);
  uv_run(&fx.loop, UV_RUN_NOWAIT);
  assert_int_equal(s.calls, 0);
  fx_close(&fx);
}

static void bad_arguments(void** state) {
  (void)state;
  uv_loop_t loop;
  uv_loop_init(&loop);
  txmq_client_t* c = NULL;
  txmq_client_options_t o = default_opts();
  o.client_id = "bad id with spaces";
  assert_int_equal(txmq_client_new(&c, &loop, &o), TXMQ_EINVAL);
  o.client_id = "";
  assert_int_equal(txmq_client_new(&c, &loop, &o), TXMQ_EINVAL);
  o = default_opts();
  const char* bad_groups[] = {".hidden"};
  o.producer_groups = bad_groups;
  o.n_producer_groups = 1;
  assert_int_equal(txmq_client_new(&c, &loop, &o), TXMQ_EINVAL);
  o = default_opts();
  o.role = (txmq_role_t)7;
  assert_int_equal(txmq_client_new(&c, &loop, &o), TXMQ_EINVAL);
  o = default_opts();
  assert_int_equal(txmq_client_new(&c, &loop, &o), 0);
  int calls = 0;
  assert_int_equal(txmq_client_connect(c, "no-port:", NULL, &calls), TXMQ_EINVAL);
  assert_int_equal(txmq_client_connect(c, "::1:80", NULL, &calls), TXMQ_EINVAL);
  assert_int_equal(txmq_client_connect(c, "h:99999", NULL, &calls), TXMQ_EINVAL);
  assert_int_equal(txmq_client_connect(c, "", NULL, &calls), TXMQ_EINVAL);
  assert_int_equal(txmq_client_on_check(c, "bad name!", NULL, NULL), TXMQ_EINVAL);
  assert_int_equal(txmq_client_check_reply(c, 42, TXMQ_TX_COMMIT), TXMQ_ENOTFOUND);
  assert_int_equal(txmq_client_check_reply(c, 42, (txmq_tx_decision_t)9),
                   TXMQ_EINVAL);
  int closed = 0;
  assert_int_equal(txmq_client_close(c, NULL, NULL), 0);
  assert_int_equal(txmq_client_close(c, NULL, NULL), TXMQ_ECLOSED);
  assert_int_equal(txmq_client_connect(c, "127.0.0.1:1", NULL, NULL), TXMQ_ECLOSED);
  uv_run(&loop, UV_RUN_DEFAULT);
  (void)closed;
  txmq_client_free(c);
  tu_loop_close_clean(&loop);
}

static void handshake(void** state) {
  (void)state;
  fx_t fx;
  fx_init(&fx, NULL, NULL);
  fs_run(fx.fs);
  fx_connect_opts(&fx, NULL);
  assert_string_equal(txmq_client_server(fx.c), "fake 0.0");
  uv_mutex_lock(&fx.fs->mu);
  assert_int_equal(fx.fs->hellos, 1);
  assert_string_equal(fx.fs->hello_client, "test-client:1");
  assert_string_equal(fx.fs->hello_role, "producer");
  assert_string_equal(fx.fs->hello_groups, "g1,g2,");
  assert_int_equal(fx.fs->hello_version, 1);
  assert_int_equal(fx.fs->rec_id[0], 1); /* the hello is request 1 */
  uv_mutex_unlock(&fx.fs->mu);
  assert_int_equal(fx.connect_calls, 1);
  fx_close(&fx);
}

static void hello_refuse(fs_t* fs, fs_conn_t* c, uint64_t id) {
  (void)fs;
  fs_error(c, id, "EPROTO", -18, "protocol version 1 is not supported");
  fs_close_after_writes(c);
}

static void hello_bad_version(fs_t* fs, fs_conn_t* c, uint64_t id) {
  (void)fs;
  pkb_t b;
  resp_begin(&b, id, 1, 1);
  kv_i(&b.pk, "version", 2);
  fs_send(c, &b);
}

static void hello_silent(fs_t* fs, fs_conn_t* c, uint64_t id) {
  (void)fs;
  (void)c;
  (void)id;
}

static void handshake_failures(void** state) {
  (void)state;
  void (*hooks[])(fs_t*, fs_conn_t*, uint64_t) = {hello_refuse,
                                                  hello_bad_version,
                                                  hello_silent};
  int want[] = {TXMQ_EPROTO, TXMQ_EPROTO, TXMQ_ETIMEDOUT};
  const char* diag[] = {"the server refused the connection: protocol version 1 "
                        "is not supported",
                        "the server speaks protocol version 2, this client 1",
                        "timed out after 300 ms"};
  for (int i = 0; i < 3; i++) {
    fx_t fx;
    fx_init(&fx, NULL, NULL);
    fx.fs->on_hello = hooks[i];
    fs_run(fx.fs);
    txmq_client_options_t o = default_opts();
    o.connect_timeout_ms = 300;
    assert_int_equal(txmq_client_new(&fx.c, &fx.loop, &o), 0);
    fs_addr(fx.fs, fx.addr, sizeof fx.addr);
    assert_int_equal(txmq_client_connect(fx.c, fx.addr, on_connect_spy, &fx), 0);
    assert_true(tu_run_until(&fx.loop, &fx.connected, 5000));
    assert_int_equal(fx.connect_status, want[i]);
    assert_string_equal(txmq_client_diag(fx.c), diag[i]);
    assert_int_equal(fx.connect_calls, 1);
    assert_false(txmq_client_is_connected(fx.c));
    fx_close(&fx);
    assert_int_equal(fx.connect_calls, 1);
  }
}

/* The hello answer in two writes: its length prefix alone, then (after a
 * pause, so that the client reads the four bytes by themselves) the
 * payload. A read that ended right after a length prefix copied zero bytes
 * from a NULL frame buffer (memcpy(NULL, p, 0), undefined behaviour that
 * UBSan reports; found by fuzzing). */
static void hello_split(fs_t* fs, fs_conn_t* c, uint64_t id) {
  pkb_t b;
  resp_begin(&b, id, 1, 2);
  kv_i(&b.pk, "version", 1);
  kv_s(&b.pk, "server", "fake split");
  (void)fs;
  uint8_t len[4] = {(uint8_t)(b.sb.size >> 24), (uint8_t)(b.sb.size >> 16),
                    (uint8_t)(b.sb.size >> 8), (uint8_t)b.sb.size};
  fs_raw(c, len, 4);
  uv_sleep(100);
  fs_raw(c, b.sb.data, b.sb.size);
  msgpack_sbuffer_destroy(&b.sb);
}

static void length_prefix_alone_in_a_read(void** state) {
  (void)state;
  fx_t fx;
  fx_init(&fx, NULL, NULL);
  fx.fs->on_hello = hello_split;
  fs_run(fx.fs);
  fx_connect_opts(&fx, NULL);
  assert_string_equal(txmq_client_server(fx.c), "fake split");
  fx_close(&fx);
}

/* ---- requests and their responses ---- */

static const uint8_t ID_A[16] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};
static const uint8_t ID_B[16] = {0xb, 0xb, 0xb, 0xb, 0xb, 0xb, 0xb, 0xb,
                                 0xb, 0xb, 0xb, 0xb, 0xb, 0xb, 0xb, 0xb};

/* What the answering server saw, for assertions. */
typedef struct {
  char topic[64];
  char body[64];
  char group[64];
  char decision[16];
  char tags[64];
  char from[16];
  int64_t from_off;
  int64_t max, wait_ms;
  int nmsgs;
  int nhandles;
  char arg[64];
  char extra[64];
} seen_t;

static void seen_msg(seen_t* sn, const msgpack_object* m) {
  txmq_msg_t* msg = NULL;
  assert_int_equal(txmq__msg_from_object(m, &msg), 0);
  snprintf(sn->topic, sizeof sn->topic, "%s", txmq_msg_topic(msg));
  size_t bl;
  const void* b = txmq_msg_body(msg, &bl);
  snprintf(sn->body, sizeof sn->body, "%.*s", (int)bl, (const char*)b);
  txmq_msg_free(msg);
}

static void pack_msg(msgpack_packer* pk, const char* topic, const char* body,
                     const uint8_t* id, int64_t qoff) {
  txmq_msg_t* m = txmq_msg_new();
  txmq_msg_set_topic(m, topic);
  txmq_msg_set_body(m, body, strlen(body));
  txmq_msg_set_tags(m, "TagA");
  if (id) txmq__msg_set_id(m, id);
  txmq_msg_set_queue_id(m, 0);
  if (qoff >= 0) txmq__msg_set_queue_offset(m, qoff);
  void* buf;
  size_t len;
  assert_int_equal(txmq_msg_encode(m, &buf, &len), 0);
  assert_int_equal(pk->callback(pk->data, buf, len), 0);
  free(buf);
  txmq_msg_free(m);
}

/* A server that answers every op with canned, well-formed responses. */
static void answer_all(fs_t* fs, fs_conn_t* c, const msgpack_object* o,
                       const char* op, uint64_t id, uint64_t re) {
  seen_t* sn = fs->ud;
  (void)re;
  if (!op) return;
  pkb_t b;
  uv_mutex_lock(&fs->mu);
  copy_str(sn->group, sizeof sn->group, mget(o, "group"));
  const msgpack_object* msgs = mget(o, "msgs");
  if (msgs) {
    sn->nmsgs = (int)msgs->via.array.size;
    seen_msg(sn, &msgs->via.array.ptr[0]);
  }
  uv_mutex_unlock(&fs->mu);
  if (strcmp(op, "ping") == 0) {
    resp_begin(&b, id, 1, 1);
    kv_i(&b.pk, "time", (int64_t)id * 7);
  } else if (strcmp(op, "send") == 0) {
    uv_mutex_lock(&fs->mu);
    seen_msg(sn, mget(o, "msg"));
    uv_mutex_unlock(&fs->mu);
    resp_begin(&b, id, 1, 3);
    kv_bin(&b.pk, "msg_id", ID_A, 16);
    kv_i(&b.pk, "qid", 3);
    kv_i(&b.pk, "qoff", 17);
  } else if (strcmp(op, "tx.half") == 0 || strcmp(op, "tx.send") == 0) {
    int send = strcmp(op, "tx.send") == 0;
    if (send) {
      const msgpack_object* a = mget(o, "arg");
      uv_mutex_lock(&fs->mu);
      copy_str(sn->arg, sizeof sn->arg, a);
      uv_mutex_unlock(&fs->mu);
    }
    resp_begin(&b, id, 1, send ? 5 : 2);
    kv_bin(&b.pk, "tx_id", ID_B, 16);
    pk_s(&b.pk, "msg_ids");
    msgpack_pack_array(&b.pk, msgs->via.array.size);
    for (uint32_t i = 0; i < msgs->via.array.size; i++) {
      uint8_t mid[16];
      memcpy(mid, ID_A, 16);
      mid[15] = (uint8_t)i;
      msgpack_pack_bin(&b.pk, 16);
      msgpack_pack_bin_body(&b.pk, mid, 16);
    }
    if (send) {
      kv_s(&b.pk, "state", "committed");
      kv_s(&b.pk, "version", "v-abc123");
      kv_s(&b.pk, "diag", "g1.lua:3: time limit\nexceeded");
    }
  } else if (strcmp(op, "tx.end") == 0) {
    uv_mutex_lock(&fs->mu);
    copy_str(sn->decision, sizeof sn->decision, mget(o, "decision"));
    uv_mutex_unlock(&fs->mu);
    const char* d = sn->decision;
    resp_begin(&b, id, 1, 1);
    kv_s(&b.pk, "state", strcmp(d, "commit") == 0 ? "committed"
                         : strcmp(d, "rollback") == 0 ? "rolled_back" : "pending");
  } else if (strcmp(op, "receive") == 0) {
    uv_mutex_lock(&fs->mu);
    copy_str(sn->tags, sizeof sn->tags, mget(o, "tags"));
    const msgpack_object* f = mget(o, "from");
    if (f && f->type == MSGPACK_OBJECT_STR)
      copy_str(sn->from, sizeof sn->from, f);
    else if (f)
      sn->from_off = (int64_t)f->via.u64;
    sn->max = (int64_t)mget(o, "max")->via.u64;
    sn->wait_ms = (int64_t)mget(o, "wait_ms")->via.u64;
    uv_mutex_unlock(&fs->mu);
    resp_begin(&b, id, 1, 1);
    pk_s(&b.pk, "msgs");
    msgpack_pack_array(&b.pk, 2);
    for (int i = 0; i < 2; i++) {
      /* a message map with two more keys: handle, deliveries */
      msgpack_sbuffer sb;
      msgpack_packer pk;
      msgpack_sbuffer_init(&sb);
      msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
      pack_msg(&pk, "TopicTest", i ? "second" : "first", ID_A, 40 + i);
      msgpack_unpacked u;
      msgpack_unpacked_init(&u);
      size_t off = 0;
      msgpack_unpack_next(&u, sb.data, sb.size, &off);
      msgpack_object_map* m = &u.data.via.map;
      msgpack_pack_map(&b.pk, m->size + 2);
      for (uint32_t k = 0; k < m->size; k++) {
        msgpack_pack_object(&b.pk, m->ptr[k].key);
        msgpack_pack_object(&b.pk, m->ptr[k].val);
      }
      kv_s(&b.pk, "handle", i ? "h-2" : "h-1");
      kv_i(&b.pk, "deliveries", i + 1);
      msgpack_unpacked_destroy(&u);
      msgpack_sbuffer_destroy(&sb);
    }
  } else if (strcmp(op, "ack") == 0) {
    const msgpack_object* h = mget(o, "handles");
    resp_begin(&b, id, 1, 1);
    kv_i(&b.pk, "acked", h->via.array.size);
  } else if (strcmp(op, "offset.get") == 0) {
    resp_begin(&b, id, 1, 1);
    kv_i(&b.pk, "offset", 99);
  } else if (strcmp(op, "status") == 0) {
    resp_begin(&b, id, 1, 3);
    kv_s(&b.pk, "version", "0.1.0");
    kv_i(&b.pk, "uptime_ms", 1234);
    kv_s(&b.pk, "sync", "always");
  } else if (strcmp(op, "tx.list") == 0) {
    resp_begin(&b, id, 1, 1);
    pk_s(&b.pk, "txs");
    msgpack_pack_array(&b.pk, 0);
  } else if (strcmp(op, "custom.op") == 0) {
    uv_mutex_lock(&fs->mu);
    copy_str(sn->extra, sizeof sn->extra, mget(o, "field"));
    uv_mutex_unlock(&fs->mu);
    resp_begin(&b, id, 1, 1);
    kv_s(&b.pk, "echo", "yes");
  } else if (strcmp(op, "tx.show") == 0) {
    fs_error(c, id, "ENOTFOUND", -5, "no transaction 0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b");
    return;
  } else if (strcmp(op, "tx.resume") == 0) {
    /* no code, only the symbolic name */
    resp_begin(&b, id, 0, 2);
    kv_s(&b.pk, "err", "EINVAL");
    kv_s(&b.pk, "msg", "transaction is not parked");
  } else if (strcmp(op, "reload") == 0) {
    fs_error(c, id, "ESCRIPT", -19, "scripts/g1.lua:3: syntax error\nnear 'end'");
    return;
  } else {
    resp_begin(&b, id, 1, 0);
  }
  fs_send(c, &b);
}

static void on_half_spy(txmq_client_t* c, int status, const txmq_half_result_t* r,
                        void* arg) {
  (void)c;
  spy_t* s = arg;
  if (status == 0) {
    memcpy(s->id, r->tx_id, 16);
    s->n = r->nmsgs;
    assert_int_equal(r->msg_ids[1][15], 1);
  }
  spy_hit(s, status);
}

static void on_end_spy(txmq_client_t* c, int status, txmq_tx_state_t st, void* arg) {
  (void)c;
  spy_t* s = arg;
  s->state = st;
  spy_hit(s, status);
}

static void on_tx_send_spy(txmq_client_t* c, int status,
                           const txmq_tx_send_result_t* r, void* arg) {
  (void)c;
  spy_t* s = arg;
  if (status == 0) {
    memcpy(s->id, r->tx_id, 16);
    s->state = r->state;
    s->n = r->nmsgs;
    snprintf(s->text, sizeof s->text, "%s", r->version);
  }
  spy_hit(s, status);
}

static txmq_msg_t* mk_msg(const char* topic, const char* body) {
  txmq_msg_t* m = txmq_msg_new();
  assert_int_equal(txmq_msg_set_topic(m, topic), 0);
  assert_int_equal(txmq_msg_set_body(m, body, strlen(body)), 0);
  return m;
}

static txmq_delivery_t* g_taken;
static void on_receive_spy(txmq_client_t* c, int status, txmq_delivery_t* d,
                           size_t n, void* arg) {
  (void)c;
  spy_t* s = arg;
  s->n = n;
  if (status == 0) {
    assert_int_equal(n, 2);
    assert_string_equal(d[0].handle, "h-1");
    assert_string_equal(d[1].handle, "h-2");
    assert_int_equal(d[1].deliveries, 2);
    assert_int_equal(txmq_msg_queue_offset(d[1].msg), 41);
    size_t bl;
    const char* b = txmq_msg_body(d[0].msg, &bl);
    snprintf(s->text, sizeof s->text, "%.*s", (int)bl, b);
    /* take the second message; the client frees the first */
    g_taken = calloc(1, sizeof *g_taken);
    g_taken->msg = d[1].msg;
    d[1].msg = NULL;
  }
  spy_hit(s, status);
}

static void requests_and_responses(void** state) {
  (void)state;
  seen_t sn;
  memset(&sn, 0, sizeof sn);
  fx_t fx;
  fx_init(&fx, answer_all, &sn);
  fs_run(fx.fs);
  fx_connect_opts(&fx, NULL);
  txmq_client_t* c = fx.c;

  /* send */
  spy_t s1 = {0};
  txmq_msg_t* m = mk_msg("TopicTest", "hello world");
  assert_int_equal(txmq_client_send(c, m, on_send_spy, &s1), 0);
  txmq_msg_free(m); /* encoded during the call */
  assert_int_equal(s1.calls, 0);
  assert_true(tu_run_until(&fx.loop, &s1.done, 5000));
  assert_int_equal(s1.status, 0);
  assert_memory_equal(s1.id, ID_A, 16);
  assert_int_equal(s1.value, 3017);
  assert_string_equal(sn.topic, "TopicTest");
  assert_string_equal(sn.body, "hello world");

  /* tx.half of two messages, tx.end */
  spy_t s2 = {0};
  txmq_msg_t* ms[2] = {mk_msg("T1", "a"), mk_msg("T2", "b")};
  assert_int_equal(txmq_client_tx_half(c, "g1", (const txmq_msg_t* const*)ms, 2, 0,
                                       on_half_spy, &s2), 0);
  assert_true(tu_run_until(&fx.loop, &s2.done, 5000));
  assert_int_equal(s2.status, 0);
  assert_memory_equal(s2.id, ID_B, 16);
  assert_int_equal(s2.n, 2);
  assert_int_equal(sn.nmsgs, 2);
  assert_string_equal(sn.group, "g1");
  spy_t s3 = {0};
  assert_int_equal(txmq_client_tx_end(c, ID_B, TXMQ_TX_ROLLBACK, on_end_spy, &s3), 0);
  assert_true(tu_run_until(&fx.loop, &s3.done, 5000));
  assert_int_equal(s3.status, 0);
  assert_int_equal(s3.state, TXMQ_TX_ROLLED_BACK);
  assert_string_equal(sn.decision, "rollback");

  /* tx.send with an arg */
  spy_t s4 = {0};
  msgpack_sbuffer ab;
  msgpack_packer apk;
  msgpack_sbuffer_init(&ab);
  msgpack_packer_init(&apk, &ab, msgpack_sbuffer_write);
  pk_s(&apk, "order-42");
  assert_int_equal(txmq_client_tx_send(c, "g2", (const txmq_msg_t* const*)ms, 1,
                                       ab.data, ab.size, 0, on_tx_send_spy, &s4), 0);
  assert_true(tu_run_until(&fx.loop, &s4.done, 5000));
  assert_int_equal(s4.status, 0);
  assert_int_equal(s4.state, TXMQ_TX_COMMITTED);
  assert_string_equal(s4.text, "v-abc123");
  assert_string_equal(sn.arg, "order-42");
  assert_int_equal(s4.n, 1);
  /* an arg that is not one msgpack value is refused at once */
  assert_int_equal(txmq_client_tx_send(c, "g2", (const txmq_msg_t* const*)ms, 1,
                                       ab.data, ab.size - 1, 0, on_tx_send_spy, &s4),
                   TXMQ_EINVAL);
  msgpack_sbuffer_destroy(&ab);
  txmq_msg_free(ms[0]);
  txmq_msg_free(ms[1]);

  /* receive */
  spy_t s5 = {0};
  txmq_receive_opts_t ro = {.group = "cg", .topic = "TopicTest",
                            .tags = "TagA || TagB", .max = 5, .wait_ms = 100,
                            .from = TXMQ_FROM_OFFSET, .from_offset = 12};
  assert_int_equal(txmq_client_receive(c, &ro, on_receive_spy, &s5), 0);
  assert_true(tu_run_until(&fx.loop, &s5.done, 5000));
  assert_int_equal(s5.status, 0);
  assert_string_equal(s5.text, "first");
  assert_string_equal(sn.tags, "TagA || TagB");
  assert_int_equal(sn.from_off, 12);
  assert_int_equal(sn.max, 5);
  assert_int_equal(sn.wait_ms, 100);
  assert_non_null(g_taken);
  txmq_client_free_deliveries(g_taken, 1);
  g_taken = NULL;
  ro.from = TXMQ_FROM_LATEST;
  ro.max = 300;
  assert_int_equal(txmq_client_receive(c, &ro, on_receive_spy, &s5), TXMQ_EINVAL);

  /* ack, offsets, ping */
  spy_t s6 = {0};
  const char* hs[] = {"h-1", "h-2"};
  assert_int_equal(txmq_client_ack(c, "cg", hs, 2, on_int_spy, &s6), 0);
  assert_true(tu_run_until(&fx.loop, &s6.done, 5000));
  assert_int_equal(s6.value, 2);
  spy_t s7 = {0};
  assert_int_equal(txmq_client_offset_get(c, "cg", "TopicTest", 0, on_int_spy, &s7), 0);
  assert_true(tu_run_until(&fx.loop, &s7.done, 5000));
  assert_int_equal(s7.value, 99);
  spy_t s8 = {0};
  assert_int_equal(txmq_client_offset_set(c, "cg", "TopicTest", 0, 5, on_done_spy, &s8), 0);
  assert_true(tu_run_until(&fx.loop, &s8.done, 5000));
  assert_int_equal(s8.status, 0);

  /* admin: status, tx.list, errors, generic call */
  spy_t s9 = {0};
  assert_int_equal(txmq_client_status(c, on_reply_spy, &s9), 0);
  assert_true(tu_run_until(&fx.loop, &s9.done, 5000));
  assert_int_equal(s9.status, 0);
  assert_int_equal(s9.n, 5);
  spy_t s10 = {0};
  assert_int_equal(txmq_client_tx_list(c, "g1", 10, on_reply_spy, &s10), 0);
  assert_true(tu_run_until(&fx.loop, &s10.done, 5000));
  assert_int_equal(s10.status, 0);
  spy_t s11 = {0};
  assert_int_equal(txmq_client_tx_show(c, ID_B, on_reply_spy, &s11), 0);
  assert_true(tu_run_until(&fx.loop, &s11.done, 5000));
  assert_int_equal(s11.status, TXMQ_ENOTFOUND);
  assert_string_equal(s11.text, "no transaction 0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b");
  spy_t s12 = {0};
  assert_int_equal(txmq_client_tx_resume(c, ID_B, on_reply_spy, &s12), 0);
  assert_true(tu_run_until(&fx.loop, &s12.done, 5000));
  assert_int_equal(s12.status, TXMQ_EINVAL);
  assert_string_equal(s12.text, "transaction is not parked");
  spy_t s13 = {0};
  assert_int_equal(txmq_client_reload(c, "g1", on_reply_spy, &s13), 0);
  assert_true(tu_run_until(&fx.loop, &s13.done, 5000));
  assert_int_equal(s13.status, TXMQ_ESCRIPT);
  /* a server's newline does not reach the one-line diagnostic */
  assert_string_equal(s13.text, "scripts/g1.lua:3: syntax error near 'end'");
  spy_t s14 = {0};
  msgpack_sbuffer fb;
  msgpack_packer fpk;
  msgpack_sbuffer_init(&fb);
  msgpack_packer_init(&fpk, &fb, msgpack_sbuffer_write);
  msgpack_pack_map(&fpk, 1);
  kv_s(&fpk, "field", "value-1");
  assert_int_equal(txmq_client_call(c, "custom.op", fb.data, fb.size, on_reply_spy, &s14), 0);
  assert_true(tu_run_until(&fx.loop, &s14.done, 5000));
  assert_int_equal(s14.status, 0);
  assert_string_equal(sn.extra, "value-1");
  msgpack_sbuffer_clear(&fb);
  msgpack_pack_map(&fpk, 1);
  kv_s(&fpk, "id", "mine");
  assert_int_equal(txmq_client_call(c, "custom.op", fb.data, fb.size, on_reply_spy, &s14),
                   TXMQ_EINVAL);
  msgpack_sbuffer_clear(&fb);
  pk_s(&fpk, "not a map");
  assert_int_equal(txmq_client_call(c, "custom.op", fb.data, fb.size, on_reply_spy, &s14),
                   TXMQ_EINVAL);
  msgpack_sbuffer_destroy(&fb);
  assert_int_equal(s14.calls, 1);

  /* invalid arguments: no callback */
  spy_t bad = {0};
  txmq_msg_t* notopic = txmq_msg_new();
  assert_int_equal(txmq_client_send(c, notopic, on_send_spy, &bad), TXMQ_EINVAL);
  assert_string_equal(txmq_client_diag(c), "the message has no topic");
  assert_int_equal(txmq_client_tx_half(c, "g1", NULL, 0, 0, on_half_spy, &bad), TXMQ_EINVAL);
  assert_int_equal(txmq_client_tx_half(c, "bad group", (const txmq_msg_t* const*)&notopic,
                                       1, 0, on_half_spy, &bad), TXMQ_EINVAL);
  assert_int_equal(txmq_client_tx_end(c, ID_B, (txmq_tx_decision_t)0, on_end_spy, &bad),
                   TXMQ_EINVAL);
  txmq_msg_free(notopic);
  uv_run(&fx.loop, UV_RUN_NOWAIT);
  assert_int_equal(bad.calls, 0);

  /* every callback fired exactly once */
  spy_t* all[] = {&s1, &s2, &s3, &s4, &s5, &s6, &s7, &s8, &s9, &s10, &s11, &s12, &s13, &s14};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) assert_int_equal(all[i]->calls, 1);
  fx_close(&fx);
}

/* ---- pipelining: 32 requests held, then answered in reverse ---- */

#define PIPE_N 32

static void hold_and_reverse(fs_t* fs, fs_conn_t* c, const msgpack_object* o,
                             const char* op, uint64_t id, uint64_t re) {
  (void)o;
  (void)re;
  if (!op || strcmp(op, "ping") != 0) return;
  fs->held[fs->nheld++] = id;
  if (fs->nheld < PIPE_N) return;
  for (int i = fs->nheld - 1; i >= 0; i--) {
    pkb_t b;
    resp_begin(&b, fs->held[i], 1, 1);
    kv_i(&b.pk, "time", (int64_t)fs->held[i] * 1000);
    fs_send(c, &b);
  }
  fs->nheld = 0;
}

typedef struct {
  int order[PIPE_N];
  int n;
  int64_t values[PIPE_N];
  int calls[PIPE_N];
} pipe_t;

typedef struct {
  pipe_t* p;
  int index;
} pipe_arg_t;

static void on_pipe(txmq_client_t* c, int status, int64_t v, void* arg) {
  (void)c;
  pipe_arg_t* a = arg;
  assert_int_equal(status, 0);
  a->p->calls[a->index]++;
  a->p->values[a->index] = v;
  a->p->order[a->p->n++] = a->index;
}

static void pipelined_out_of_order(void** state) {
  (void)state;
  fx_t fx;
  fx_init(&fx, hold_and_reverse, NULL);
  fs_run(fx.fs);
  fx_connect_opts(&fx, NULL);
  pipe_t p;
  memset(&p, 0, sizeof p);
  pipe_arg_t args[PIPE_N];
  for (int i = 0; i < PIPE_N; i++) {
    args[i].p = &p;
    args[i].index = i;
    assert_int_equal(txmq_client_ping(fx.c, on_pipe, &args[i]), 0);
  }
  int done = 0;
  while (p.n < PIPE_N && tu_run_until(&fx.loop, &done, 100) == 0 && p.n < PIPE_N) {
  }
  assert_int_equal(p.n, PIPE_N);
  /* ids are 2 (after the hello) .. PIPE_N+1, answered last first: each
   * callback got its own request's answer. */
  for (int i = 0; i < PIPE_N; i++) {
    assert_int_equal(p.calls[i], 1);
    assert_int_equal(p.values[i], (int64_t)(i + 2) * 1000);
    assert_int_equal(p.order[i], PIPE_N - 1 - i);
  }
  fx_close(&fx);
}

/* ---- error and malformed responses keep the connection ---- */

static void malformed_answers(fs_t* fs, fs_conn_t* c, const msgpack_object* o,
                              const char* op, uint64_t id, uint64_t re) {
  (void)fs;
  (void)re;
  pkb_t b;
  if (!op) return;
  if (strcmp(op, "send") == 0) {
    resp_begin(&b, id, 1, 2); /* no msg_id */
    kv_i(&b.pk, "qid", 1);
    kv_i(&b.pk, "qoff", 1);
  } else if (strcmp(op, "tx.half") == 0) {
    resp_begin(&b, id, 1, 2); /* one id for two messages */
    kv_bin(&b.pk, "tx_id", ID_B, 16);
    pk_s(&b.pk, "msg_ids");
    msgpack_pack_array(&b.pk, 1);
    msgpack_pack_bin(&b.pk, 16);
    msgpack_pack_bin_body(&b.pk, ID_A, 16);
  } else if (strcmp(op, "tx.end") == 0) {
    resp_begin(&b, id, 1, 1);
    kv_s(&b.pk, "state", "exploded");
  } else if (strcmp(op, "receive") == 0) {
    resp_begin(&b, id, 1, 1); /* a message without a topic */
    pk_s(&b.pk, "msgs");
    msgpack_pack_array(&b.pk, 1);
    msgpack_pack_map(&b.pk, 2);
    kv_s(&b.pk, "body", "x");
    kv_s(&b.pk, "handle", "h");
  } else if (strcmp(op, "ack") == 0) {
    pkb_init(&b); /* no "ok" */
    msgpack_pack_map(&b.pk, 1);
    kv_i(&b.pk, "re", (int64_t)id);
  } else if (strcmp(op, "offset.get") == 0) {
    resp_begin(&b, id, 0, 0); /* an error with nothing in it */
  } else if (strcmp(op, "status") == 0) {
    resp_begin(&b, id, 0, 2); /* an error code from a newer server */
    kv_i(&b.pk, "code", -77);
    kv_s(&b.pk, "err", "EFUTURE");
  } else {
    answer_all(fs, c, o, op, id, re);
    return;
  }
  fs_send(c, &b);
}

static void malformed_responses(void** state) {
  (void)state;
  seen_t sn;
  memset(&sn, 0, sizeof sn);
  fx_t fx;
  fx_init(&fx, malformed_answers, &sn);
  fs_run(fx.fs);
  fx_connect_opts(&fx, NULL);
  txmq_client_t* c = fx.c;
  txmq_msg_t* ms[2] = {mk_msg("T1", "a"), mk_msg("T2", "b")};
  spy_t s[8];
  memset(s, 0, sizeof s);
  assert_int_equal(txmq_client_send(c, ms[0], on_send_spy, &s[0]), 0);
  assert_int_equal(txmq_client_tx_half(c, "g1", (const txmq_msg_t* const*)ms, 2, 0,
                                       on_half_spy, &s[1]), 0);
  assert_int_equal(txmq_client_tx_end(c, ID_B, TXMQ_TX_COMMIT, on_end_spy, &s[2]), 0);
  txmq_receive_opts_t ro = {.group = "cg", .topic = "T1"};
  assert_int_equal(txmq_client_receive(c, &ro, on_receive_spy, &s[3]), 0);
  const char* hs[] = {"h"};
  assert_int_equal(txmq_client_ack(c, "cg", hs, 1, on_int_spy, &s[4]), 0);
  assert_int_equal(txmq_client_offset_get(c, "cg", "T1", 0, on_int_spy, &s[5]), 0);
  assert_int_equal(txmq_client_status(c, on_reply_spy, &s[6]), 0);
  assert_int_equal(txmq_client_ping(c, on_int_spy, &s[7]), 0);
  assert_true(tu_run_until(&fx.loop, &s[7].done, 5000));
  int want[] = {TXMQ_EPROTO, TXMQ_EPROTO, TXMQ_EPROTO, TXMQ_EPROTO,
                TXMQ_EPROTO, TXMQ_EPROTO, -77, 0};
  for (int i = 0; i < 8; i++) {
    assert_int_equal(s[i].calls, 1);
    assert_int_equal(s[i].status, want[i]);
  }
  assert_string_equal(s[6].text, "'status' failed: unknown error");
  /* The connection survived all of it. */
  assert_true(txmq_client_is_connected(c));
  assert_int_equal(fx.disc_calls, 0);
  txmq_msg_free(ms[0]);
  txmq_msg_free(ms[1]);
  fx_close(&fx);
}

/* ---- hostile frames: each closes the connection, never crashes ---- */

typedef struct {
  const uint8_t* bytes;
  size_t len;
  int raw; /* 1: written as is (no length prefix added) */
} hostile_t;

static hostile_t g_hostile;

static void send_hostile(fs_t* fs, fs_conn_t* c, const msgpack_object* o,
                         const char* op, uint64_t id, uint64_t re) {
  (void)fs;
  (void)o;
  (void)id;
  (void)re;
  if (!op || strcmp(op, "ping") != 0) return;
  if (g_hostile.raw)
    fs_raw(c, g_hostile.bytes, g_hostile.len);
  else
    fs_frame(c, g_hostile.bytes, g_hostile.len);
  fs_close_after_writes(c);
}

static void hostile_frames(void** state) {
  (void)state;
  static const uint8_t zero_len[] = {0, 0, 0, 0};
  static const uint8_t huge_len[] = {0xff, 0xff, 0xff, 0xff, 0x80};
  static const uint8_t over_limit[] = {0x00, 0x80, 0x00, 0x01};  /* 8 MiB + 1 */
  static const uint8_t truncated[] = {0x00, 0x00, 0x01, 0x00, 0x81, 0xa2};
  static const uint8_t bad_mp[] = {0xc1};                        /* never used */
  static const uint8_t array_bomb[] = {0xdd, 0xff, 0xff, 0xff, 0xff};
  static const uint8_t map_bomb[] = {0xdf, 0xff, 0xff, 0xff, 0xff, 0xa1, 0x61};
  static const uint8_t str_past_end[] = {0xdb, 0x7f, 0xff, 0xff, 0xff, 'a'};
  static const uint8_t not_map[] = {0x93, 0x01, 0x02, 0x03};
  static const uint8_t trailing[] = {0x80, 0x80};
  static const uint8_t re_wrong_type[] = {0x82, 0xa2, 'r', 'e', 0xa1, 'x', 0xa2, 'o', 'k', 0xc3};
  static const uint8_t re_never_sent[] = {0x82, 0xa2, 'r', 'e', 0xcd, 0x27, 0x10, 0xa2, 'o', 'k', 0xc3};
  static const uint8_t neg_re[] = {0x82, 0xa2, 'r', 'e', 0xff, 0xa2, 'o', 'k', 0xc3};
  uint8_t deep[64];
  for (int i = 0; i < 63; i++) deep[i] = 0x91; /* nested fixarrays */
  deep[63] = 0x01;
  const hostile_t cases[] = {
      {zero_len, sizeof zero_len, 1},     {huge_len, sizeof huge_len, 1},
      {over_limit, sizeof over_limit, 1}, {truncated, sizeof truncated, 1},
      {bad_mp, sizeof bad_mp, 0},         {array_bomb, sizeof array_bomb, 0},
      {map_bomb, sizeof map_bomb, 0},     {str_past_end, sizeof str_past_end, 0},
      {not_map, sizeof not_map, 0},       {trailing, sizeof trailing, 0},
      {re_wrong_type, sizeof re_wrong_type, 0},
      {re_never_sent, sizeof re_never_sent, 0},
      {neg_re, sizeof neg_re, 0},         {deep, sizeof deep, 0},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    g_hostile = cases[i];
    fx_t fx;
    fx_init(&fx, send_hostile, NULL);
    fs_run(fx.fs);
    fx_connect_opts(&fx, NULL);
    spy_t s = {0}, s2 = {0};
    assert_int_equal(txmq_client_ping(fx.c, on_int_spy, &s), 0);
    assert_int_equal(txmq_client_ping(fx.c, on_int_spy, &s2), 0);
    /* Both fail in the same turn, the disconnect callback right after. */
    assert_true(tu_run_until(&fx.loop, &s2.done, 5000));
    assert_true(tu_run_until(&fx.loop, &s.done, 5000));
    /* Both requests failed once, the loss was reported once. */
    assert_int_equal(s.calls, 1);
    assert_int_equal(s2.calls, 1);
    assert_int_equal(fx.disc_calls, 1);
    if (i == 3) /* truncated: the server just went away */
      assert_int_equal(fx.disc_status, TXMQ_ECLOSED);
    else
      assert_int_equal(fx.disc_status, TXMQ_EPROTO);
    assert_int_equal(s.status, fx.disc_status);
    assert_false(txmq_client_is_connected(fx.c));
    fx_close(&fx);
  }
}

/* Random frames, some after a valid prefix: nothing may crash, every
 * request completes exactly once. */
static uint32_t g_seed = 12345;
static uint32_t rnd(void) {
  g_seed ^= g_seed << 13;
  g_seed ^= g_seed >> 17;
  g_seed ^= g_seed << 5;
  return g_seed;
}

static void send_random(fs_t* fs, fs_conn_t* c, const msgpack_object* o,
                        const char* op, uint64_t id, uint64_t re) {
  (void)fs;
  (void)o;
  (void)re;
  if (!op || strcmp(op, "ping") != 0) return;
  uint8_t buf[256];
  size_t n = 1 + rnd() % sizeof buf;
  for (size_t i = 0; i < n; i++) buf[i] = (uint8_t)rnd();
  switch (rnd() % 3) {
    case 0: { /* a valid response start, then garbage inside the map */
      pkb_t b;
      resp_begin(&b, id, rnd() % 2, 1);
      pk_s(&b.pk, "time");
      msgpack_sbuffer_write(&b.sb, (const char*)buf, n);
      fs_frame(c, b.sb.data, b.sb.size);
      msgpack_sbuffer_destroy(&b.sb);
      break;
    }
    case 1: fs_frame(c, buf, n); break;
    default: fs_raw(c, buf, n); break;
  }
  fs_close_after_writes(c);
}

static void random_frames(void** state) {
  (void)state;
  for (int i = 0; i < 150; i++) {
    fx_t fx;
    fx_init(&fx, send_random, NULL);
    fs_run(fx.fs);
    fx_connect_opts(&fx, NULL);
    spy_t s = {0};
    assert_int_equal(txmq_client_ping(fx.c, on_int_spy, &s), 0);
    assert_true(tu_run_until(&fx.loop, &s.done, 5000));
    assert_int_equal(s.calls, 1);
    fx_close(&fx);
    assert_int_equal(s.calls, 1);
  }
}

/* ---- checks from the server ---- */

typedef struct {
  int answers;
  char decision[8][16];
  uint64_t re[8];
  int ok[8];
  char err[8][16];
} check_seen_t;

static void pack_check(pkb_t* b, uint64_t id, const char* group, int good) {
  pkb_init(b);
  msgpack_pack_map(&b->pk, 6);
  kv_s(&b->pk, "op", "check");
  kv_i(&b->pk, "id", (int64_t)id);
  kv_bin(&b->pk, "tx_id", ID_B, good ? 16 : 15);
  kv_s(&b->pk, "group", group);
  kv_i(&b->pk, "check_count", 3);
  pk_s(&b->pk, "msgs");
  msgpack_pack_array(&b->pk, 1);
  pack_msg(&b->pk, "TopicTest", "checked body", ID_A, -1);
}

static void checks_ready(fs_t* fs, fs_conn_t* c) {
  (void)fs;
  pkb_t b;
  pack_check(&b, 100, "g1", 1); /* answered later */
  fs_send(c, &b);
  pack_check(&b, 101, "g2", 1); /* answered from within the callback */
  fs_send(c, &b);
  pack_check(&b, 102, "other", 1); /* no handler */
  fs_send(c, &b);
  pack_check(&b, 103, "g1", 0); /* malformed */
  fs_send(c, &b);
  pkb_init(&b);
  msgpack_pack_map(&b.pk, 2);
  kv_s(&b.pk, "op", "reboot");
  kv_i(&b.pk, "id", 104);
  fs_send(c, &b);
}

static void record_answers(fs_t* fs, fs_conn_t* c, const msgpack_object* o,
                           const char* op, uint64_t id, uint64_t re) {
  check_seen_t* cs = fs->ud;
  (void)id;
  if (op) {
    answer_all(fs, c, o, op, id, re);
    return;
  }
  uv_mutex_lock(&fs->mu);
  int i = cs->answers++;
  cs->re[i] = re;
  cs->ok[i] = mget(o, "ok")->via.boolean;
  copy_str(cs->decision[i], sizeof cs->decision[i], mget(o, "decision"));
  copy_str(cs->err[i], sizeof cs->err[i], mget(o, "err"));
  uv_mutex_unlock(&fs->mu);
}

typedef struct {
  int calls;
  uint64_t later_id;
  char body[32];
  uint32_t count;
  char group[16];
} check_spy_t;

static void on_check_later(txmq_client_t* c, const txmq_client_check_t* chk,
                           void* arg) {
  (void)c;
  check_spy_t* s = arg;
  s->calls++;
  s->later_id = chk->check_id;
  s->count = chk->check_count;
  snprintf(s->group, sizeof s->group, "%s", chk->group);
  assert_memory_equal(chk->tx_id, ID_B, 16);
  assert_int_equal(chk->nmsgs, 1);
  size_t bl;
  const char* b = txmq_msg_body(chk->msgs[0], &bl);
  snprintf(s->body, sizeof s->body, "%.*s", (int)bl, b);
}

static void on_check_now(txmq_client_t* c, const txmq_client_check_t* chk,
                         void* arg) {
  check_spy_t* s = arg;
  s->calls++;
  assert_int_equal(txmq_client_check_reply(c, chk->check_id, TXMQ_TX_ROLLBACK), 0);
  assert_int_equal(txmq_client_check_reply(c, chk->check_id, TXMQ_TX_ROLLBACK),
                   TXMQ_ENOTFOUND);
}

static int check_answers(fs_t* fs) {
  uv_mutex_lock(&fs->mu);
  int n = ((check_seen_t*)fs->ud)->answers;
  uv_mutex_unlock(&fs->mu);
  return n;
}

static void checks(void** state) {
  (void)state;
  check_seen_t cs;
  memset(&cs, 0, sizeof cs);
  fx_t fx;
  fx_init(&fx, record_answers, &cs);
  fx.fs->on_ready = checks_ready;
  fs_run(fx.fs);
  check_spy_t later = {0}, now = {0};
  /* Register before connecting: checks may come right after the hello. */
  txmq_client_options_t o = default_opts();
  assert_int_equal(txmq_client_new(&fx.c, &fx.loop, &o), 0);
  assert_int_equal(txmq_client_on_check(fx.c, "g1", on_check_later, &later), 0);
  assert_int_equal(txmq_client_on_check(fx.c, "g2", on_check_now, &now), 0);
  assert_int_equal(txmq_client_on_check(fx.c, "g3", on_check_now, &now), 0);
  assert_int_equal(txmq_client_on_check(fx.c, "g3", NULL, NULL), 0);
  fs_addr(fx.fs, fx.addr, sizeof fx.addr);
  assert_int_equal(txmq_client_connect(fx.c, fx.addr, on_connect_spy, &fx), 0);
  assert_true(tu_run_until(&fx.loop, &fx.connected, 5000));
  int done = 0;
  for (int k = 0; k < 100 && check_answers(fx.fs) < 4; k++)
    tu_run_until(&fx.loop, &done, 20);
  assert_int_equal(later.calls, 1);
  assert_int_equal(now.calls, 1);
  assert_string_equal(later.body, "checked body");
  assert_string_equal(later.group, "g1");
  assert_int_equal(later.count, 3);
  /* Answered so far: g2 (rollback), other (ENOTFOUND), malformed (EPROTO),
   * the unknown op (EPROTO), in the order the requests came. */
  uv_mutex_lock(&fx.fs->mu);
  assert_int_equal(cs.answers, 4);
  assert_int_equal(cs.re[0], 101);
  assert_string_equal(cs.decision[0], "rollback");
  assert_int_equal(cs.re[1], 102);
  assert_false(cs.ok[1]);
  assert_string_equal(cs.err[1], "ENOTFOUND");
  assert_int_equal(cs.re[2], 103);
  assert_string_equal(cs.err[2], "EPROTO");
  assert_int_equal(cs.re[3], 104);
  assert_string_equal(cs.err[3], "EPROTO");
  uv_mutex_unlock(&fx.fs->mu);
  /* Now the later answer. */
  assert_int_equal(txmq_client_check_reply(fx.c, later.later_id, TXMQ_TX_COMMIT), 0);
  for (int k = 0; k < 100 && check_answers(fx.fs) < 5; k++)
    tu_run_until(&fx.loop, &done, 20);
  uv_mutex_lock(&fx.fs->mu);
  assert_int_equal(cs.answers, 5);
  assert_int_equal(cs.re[4], 100);
  assert_true(cs.ok[4]);
  assert_string_equal(cs.decision[4], "commit");
  uv_mutex_unlock(&fx.fs->mu);
  assert_int_equal(txmq_client_check_reply(fx.c, later.later_id, TXMQ_TX_COMMIT),
                   TXMQ_ENOTFOUND);
  fx_close(&fx);
}

/* ---- close, loss, timeouts, heartbeat ---- */

static void ignore_all(fs_t* fs, fs_conn_t* c, const msgpack_object* o,
                       const char* op, uint64_t id, uint64_t re) {
  (void)fs, (void)c, (void)o, (void)op, (void)id, (void)re;
}

typedef struct {
  int calls;
  int status;
  txmq_client_t* c;
  int later_rc;
} close_spy_t;

static void on_ping_closing(txmq_client_t* c, int status, int64_t v, void* arg) {
  (void)v;
  close_spy_t* s = arg;
  s->calls++;
  s->status = status;
  /* Requests from within a failing callback are refused. */
  s->later_rc = txmq_client_ping(c, on_ping_closing, arg);
}

static void close_fails_pending(void** state) {
  (void)state;
  fx_t fx;
  fx_init(&fx, ignore_all, NULL);
  fs_run(fx.fs);
  fx_connect_opts(&fx, NULL);
  close_spy_t s[5];
  memset(s, 0, sizeof s);
  for (int i = 0; i < 5; i++)
    assert_int_equal(txmq_client_ping(fx.c, on_ping_closing, &s[i]), 0);
  int done = 0;
  tu_run_until(&fx.loop, &done, 50); /* let them reach the server */
  assert_int_equal(txmq_client_close(fx.c, on_close_spy, &fx), 0);
  /* Not from within close. */
  for (int i = 0; i < 5; i++) assert_int_equal(s[i].calls, 0);
  assert_int_equal(txmq_client_ping(fx.c, on_ping_closing, &s[0]), TXMQ_ECLOSED);
  assert_true(tu_run_until(&fx.loop, &fx.closed, 5000));
  for (int i = 0; i < 5; i++) {
    assert_int_equal(s[i].calls, 1);
    assert_int_equal(s[i].status, TXMQ_ECLOSED);
    assert_int_equal(s[i].later_rc, TXMQ_ECLOSED);
  }
  assert_int_equal(fx.closed, 1);
  assert_int_equal(fx.disc_calls, 0);
  fx.c = NULL;
  fx_close(&fx);
}

static void close_while_connecting(void** state) {
  (void)state;
  /* Close at each stage of a connect: resolving, connecting, handshake. */
  for (int stage = 0; stage < 3; stage++) {
    fx_t fx;
    fx_init(&fx, NULL, NULL);
    fx.fs->on_hello = hello_silent;
    fs_run(fx.fs);
    txmq_client_options_t o = default_opts();
    assert_int_equal(txmq_client_new(&fx.c, &fx.loop, &o), 0);
    fs_addr(fx.fs, fx.addr, sizeof fx.addr);
    assert_int_equal(txmq_client_connect(fx.c, fx.addr, on_connect_spy, &fx), 0);
    if (stage == 1) uv_run(&fx.loop, UV_RUN_NOWAIT);
    if (stage == 2)
      for (int k = 0; k < 200 && fs_count(fx.fs, "hello") == 0; k++) {
        int d = 0;
        tu_run_until(&fx.loop, &d, 10);
      }
    assert_int_equal(txmq_client_close(fx.c, on_close_spy, &fx), 0);
    assert_true(tu_run_until(&fx.loop, &fx.closed, 5000));
    assert_int_equal(fx.connect_calls, 1);
    assert_int_equal(fx.connect_status, TXMQ_ECLOSED);
    fx.c = NULL;
    fx_close(&fx);
  }
}

static void close_on_op(fs_t* fs, fs_conn_t* c, const msgpack_object* o,
                        const char* op, uint64_t id, uint64_t re) {
  if (op && strcmp(op, "status") == 0) {
    fs_close_conn(c);
    return;
  }
  answer_all(fs, c, o, op, id, re);
}

static void on_lost_reconnect(txmq_client_t* c, int status, void* arg) {
  fx_t* fx = arg;
  fx->disc_calls++;
  fx->disc_status = status;
  fx->connected = 0;
  assert_int_equal(txmq_client_connect(c, fx->addr, on_connect_spy, fx), 0);
}

static void connection_lost(void** state) {
  (void)state;
  seen_t sn;
  memset(&sn, 0, sizeof sn);
  fx_t fx;
  fx_init(&fx, close_on_op, &sn);
  fs_run(fx.fs);
  fx_connect_opts(&fx, NULL);
  txmq_client_on_disconnect(fx.c, on_lost_reconnect, &fx);
  spy_t s1 = {0}, s2 = {0};
  assert_int_equal(txmq_client_ping(fx.c, on_int_spy, &s1), 0);
  assert_int_equal(txmq_client_status(fx.c, on_reply_spy, &s2), 0);
  assert_true(tu_run_until(&fx.loop, &s2.done, 5000));
  assert_int_equal(s1.calls, 1);
  assert_int_equal(s1.status, 0);
  assert_int_equal(s2.status, TXMQ_ECLOSED);
  assert_string_equal(s2.text, "the server closed the connection");
  /* The disconnect callback reconnected. */
  assert_true(tu_run_until(&fx.loop, &fx.connected, 5000));
  assert_int_equal(fx.disc_calls, 1);
  assert_int_equal(fx.connect_calls, 2);
  assert_true(txmq_client_is_connected(fx.c));
  spy_t s3 = {0};
  assert_int_equal(txmq_client_ping(fx.c, on_int_spy, &s3), 0);
  assert_true(tu_run_until(&fx.loop, &s3.done, 5000));
  assert_int_equal(s3.status, 0);
  fx_close(&fx);
}

/* Holds the first ping; answers it (late) and the next when the next
 * arrives. */
static void late_answers(fs_t* fs, fs_conn_t* c, const msgpack_object* o,
                         const char* op, uint64_t id, uint64_t re) {
  (void)o;
  (void)re;
  if (!op || strcmp(op, "ping") != 0) return;
  if (fs->nheld == 0) {
    fs->held[fs->nheld++] = id;
    return;
  }
  uint64_t ids[2] = {fs->held[0], id};
  for (int i = 0; i < 2; i++) {
    pkb_t b;
    resp_begin(&b, ids[i], 1, 1);
    kv_i(&b.pk, "time", (int64_t)ids[i]);
    fs_send(c, &b);
  }
}

static void request_timeout(void** state) {
  (void)state;
  fx_t fx;
  fx_init(&fx, late_answers, NULL);
  fs_run(fx.fs);
  txmq_client_options_t o = default_opts();
  o.request_timeout_ms = 150;
  fx_connect_opts(&fx, &o);
  spy_t s1 = {0}, s2 = {0};
  assert_int_equal(txmq_client_ping(fx.c, on_int_spy, &s1), 0);
  assert_true(tu_run_until(&fx.loop, &s1.done, 5000));
  assert_int_equal(s1.status, TXMQ_ETIMEDOUT);
  assert_int_equal(txmq_client_ping(fx.c, on_int_spy, &s2), 0);
  assert_true(tu_run_until(&fx.loop, &s2.done, 5000));
  assert_int_equal(s2.status, 0);
  assert_int_equal(s2.value, 3);
  /* The late answer to the first was dropped: still one call, still
   * connected. */
  assert_int_equal(s1.calls, 1);
  assert_true(txmq_client_is_connected(fx.c));
  fx_close(&fx);
}

static void heartbeat(void** state) {
  (void)state;
  /* A server that answers pings: the idle client sends them. */
  seen_t sn;
  memset(&sn, 0, sizeof sn);
  fx_t fx;
  fx_init(&fx, answer_all, &sn);
  fx.fs->hb_ms = 50;
  fs_run(fx.fs);
  fx_connect_opts(&fx, NULL);
  int done = 0;
  tu_run_until(&fx.loop, &done, 400);
  assert_true(fs_count(fx.fs, "ping") >= 3);
  assert_true(txmq_client_is_connected(fx.c));
  assert_int_equal(fx.disc_calls, 0);
  fx_close(&fx);

  /* A server that goes silent is given up on. */
  fx_init(&fx, ignore_all, NULL);
  fx.fs->hb_ms = 50;
  fs_run(fx.fs);
  fx_connect_opts(&fx, NULL);
  for (int k = 0; k < 100 && fx.disc_calls == 0; k++) tu_run_until(&fx.loop, &done, 50);
  assert_int_equal(fx.disc_calls, 1);
  assert_int_equal(fx.disc_status, TXMQ_ETIMEDOUT);
  fx_close(&fx);
}

/* Answers pings only: a server holding every long poll. */
static void answer_pings(fs_t* fs, fs_conn_t* c, const msgpack_object* o,
                         const char* op, uint64_t id, uint64_t re) {
  (void)fs, (void)o, (void)re;
  if (!op || strcmp(op, "ping") != 0) return;
  pkb_t b;
  resp_begin(&b, id, 1, 1);
  kv_i(&b.pk, "time", 1);
  fs_send(c, &b);
}

static void on_receive_count(txmq_client_t* c, int status, txmq_delivery_t* d,
                             size_t n, void* arg) {
  (void)c, (void)status, (void)d, (void)n;
  (*(int*)arg)++;
}

static void heartbeat_with_held_polls(void** state) {
  (void)state;
  /* A consumer that keeps sending long polls the server holds: it never
   * stops sending, and hears nothing but the answers to its pings; those
   * must come, and the connection must stay (3 heartbeats + 1 s = 1.15 s
   * without hearing anything drops it). */
  fx_t fx;
  fx_init(&fx, answer_pings, NULL);
  fx.fs->hb_ms = 50;
  fs_run(fx.fs);
  fx_connect_opts(&fx, NULL);
  txmq_receive_opts_t ro = {.group = "cg", .topic = "T", .wait_ms = 30000};
  int failed = 0, done = 0;
  for (int k = 0; k < 80; k++) {
    assert_int_equal(txmq_client_receive(fx.c, &ro, on_receive_count, &failed), 0);
    tu_run_until(&fx.loop, &done, 20);
  }
  assert_true(fs_count(fx.fs, "ping") >= 3);
  assert_true(txmq_client_is_connected(fx.c));
  assert_int_equal(fx.disc_calls, 0);
  assert_int_equal(failed, 0);
  fx_close(&fx);
  assert_int_equal(failed, 80); /* the held polls fail at close */
}

static void frame_limit(void** state) {
  (void)state;
  fx_t fx;
  fx_init(&fx, answer_all, NULL);
  fx.fs->max_frame = 1024;
  fs_run(fx.fs);
  fx_connect_opts(&fx, NULL);
  char body[2048];
  memset(body, 'x', sizeof body - 1);
  body[sizeof body - 1] = '\0';
  txmq_msg_t* m = mk_msg("T", body);
  spy_t s = {0};
  assert_int_equal(txmq_client_send(fx.c, m, on_send_spy, &s), TXMQ_ETOOBIG);
  txmq_msg_free(m);
  uv_run(&fx.loop, UV_RUN_NOWAIT);
  assert_int_equal(s.calls, 0);
  fx_close(&fx);
}

/* ---- send_in_transaction ---- */

typedef struct {
  int calls;
  txmq_tx_decision_t answer;
  uint8_t msg_id[16];
  char topic[32];
} exec_t;

static txmq_tx_decision_t on_execute(txmq_client_t* c, const txmq_msg_t* msg,
                                     const uint8_t* tx_id, void* arg) {
  (void)c;
  exec_t* e = arg;
  e->calls++;
  assert_memory_equal(tx_id, ID_B, 16);
  memcpy(e->msg_id, txmq_msg_id(msg), 16);
  snprintf(e->topic, sizeof e->topic, "%s", txmq_msg_topic(msg));
  return e->answer;
}

typedef struct {
  int calls;
  int status;
  txmq_tx_result_t r;
} tx_done_t;

static void on_tx_done(txmq_client_t* c, int status, const txmq_tx_result_t* r,
                       void* arg) {
  (void)c;
  tx_done_t* d = arg;
  d->calls++;
  d->status = status;
  if (r) d->r = *r;
}

static void send_in_transaction(void** state) {
  (void)state;
  seen_t sn;
  memset(&sn, 0, sizeof sn);
  fx_t fx;
  fx_init(&fx, answer_all, &sn);
  fs_run(fx.fs);
  fx_connect_opts(&fx, NULL);
  txmq_tx_decision_t answers[] = {TXMQ_TX_COMMIT, TXMQ_TX_ROLLBACK,
                                  TXMQ_TX_UNKNOWN, (txmq_tx_decision_t)42};
  txmq_tx_state_t states[] = {TXMQ_TX_COMMITTED, TXMQ_TX_ROLLED_BACK,
                              TXMQ_TX_PENDING, TXMQ_TX_PENDING};
  for (int i = 0; i < 4; i++) {
    int ends = fs_count(fx.fs, "tx.end");
    exec_t e = {.answer = answers[i]};
    tx_done_t d = {0};
    txmq_msg_t* m = mk_msg("TopicTest", "hello world");
    assert_int_equal(txmq_client_send_in_transaction(fx.c, "g1", m, on_execute, &e,
                                                     on_tx_done, &d), 0);
    txmq_msg_free(m);
    int done = 0;
    for (int k = 0; k < 100 && d.calls == 0; k++) tu_run_until(&fx.loop, &done, 20);
    assert_int_equal(d.calls, 1);
    assert_int_equal(d.status, 0);
    assert_int_equal(e.calls, 1);
    assert_string_equal(e.topic, "TopicTest");
    assert_memory_equal(e.msg_id, ID_A, 15); /* the stored id */
    assert_memory_equal(d.r.tx_id, ID_B, 16);
    assert_memory_equal(d.r.msg_id, e.msg_id, 16);
    assert_int_equal(d.r.local_state, i < 2 ? answers[i] : TXMQ_TX_UNKNOWN);
    assert_int_equal(d.r.tx_state, states[i]);
    assert_int_equal(d.r.end_status, 0);
    /* UNKNOWN (or nonsense) sends no end: the checks decide. */
    assert_int_equal(fs_count(fx.fs, "tx.end"), ends + (i < 2));
  }
  /* A failing half: execute never runs. */
  exec_t e = {.answer = TXMQ_TX_COMMIT};
  tx_done_t d = {0};
  txmq_msg_t* m = mk_msg("TopicTest", "x");
  assert_int_equal(txmq_client_send_in_transaction(fx.c, "bad group", m, on_execute,
                                                   &e, on_tx_done, &d), TXMQ_EINVAL);
  txmq_msg_free(m);
  assert_int_equal(e.calls + d.calls, 0);
  fx_close(&fx);
}

/* ---- the blocking layer ---- */

static void blocking_layer(void** state) {
  (void)state;
  seen_t sn;
  memset(&sn, 0, sizeof sn);
  fs_t* fs = fs_start(answer_all, &sn);
  fs->on_hello = NULL;
  fs_run(fs);
  char addr[64];
  fs_addr(fs, addr, sizeof addr);
  txmq_client_options_t o = default_opts();
  o.role = TXMQ_ROLE_ADMIN;

  /* connect refused: the reason is readable */
  txmq_sync_client_t* s = NULL;
  assert_int_equal(txmq_sync_new(&s, &o), 0);
  assert_int_equal(txmq_sync_connect(s, "127.0.0.1:1"), TXMQ_EIO);
  assert_string_equal(txmq_sync_diag(s), "connection refused");
  assert_int_equal(txmq_sync_connect(s, addr), 0);
  assert_string_equal(txmq_client_server(txmq_sync_client(s)), "fake 0.0");

  txmq_msg_t* m = mk_msg("TopicTest", "sync body");
  txmq_send_result_t sr;
  assert_int_equal(txmq_sync_send(s, m, &sr), 0);
  assert_memory_equal(sr.msg_id, ID_A, 16);
  assert_int_equal(sr.qoff, 17);
  assert_string_equal(sn.body, "sync body");

  txmq_tx_send_result_t tr;
  assert_int_equal(txmq_sync_tx_send(s, "g1", (const txmq_msg_t* const*)&m, 1, NULL, 0,
                                     &tr), 0);
  assert_int_equal(tr.state, TXMQ_TX_COMMITTED);
  assert_string_equal(tr.version, "v-abc123");
  assert_string_equal(tr.diag, "g1.lua:3: time limit exceeded");
  txmq_msg_free(m);

  txmq_receive_opts_t ro = {.group = "cg", .topic = "TopicTest", .wait_ms = 10};
  txmq_delivery_t* d = NULL;
  size_t n = 0;
  assert_int_equal(txmq_sync_receive(s, &ro, &d, &n), 0);
  assert_int_equal(n, 2);
  assert_string_equal(d[1].handle, "h-2");
  assert_string_equal(sn.from, "earliest");
  const char* hs[] = {d[0].handle, d[1].handle};
  int64_t acked = 0;
  assert_int_equal(txmq_sync_ack(s, "cg", hs, 2, &acked), 0);
  assert_int_equal(acked, 2);
  txmq_client_free_deliveries(d, n);
  /* More messages than the request's max is the server's fault: refused,
   * nothing allocated for them. */
  ro.max = 1;
  d = NULL;
  n = 0;
  assert_int_equal(txmq_sync_receive(s, &ro, &d, &n), TXMQ_EPROTO);
  assert_null(d);
  assert_string_equal(txmq_sync_diag(s), "malformed response to 'receive': "
                      "2 messages for a request of at most 1");

  txmq_reply_t* r = NULL;
  assert_int_equal(txmq_sync_call(s, "status", NULL, 0, &r), 0);
  const msgpack_object* v = txmq_client_map_get(txmq_reply_object(r), "sync");
  assert_non_null(v);
  assert_int_equal(v->type, MSGPACK_OBJECT_STR);
  assert_memory_equal(v->via.str.ptr, "always", 6);
  txmq_reply_free(r);
  assert_int_equal(txmq_sync_call(s, "tx.show", NULL, 0, &r), TXMQ_ENOTFOUND);
  assert_null(r);
  assert_string_equal(txmq_sync_diag(s), "no transaction 0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b");
  txmq_sync_free(s);

  uv_mutex_lock(&fs->mu);
  assert_string_equal(fs->hello_role, "admin");
  uv_mutex_unlock(&fs->mu);

  /* Idle longer than the timeouts between calls: the loop runs only
   * during calls, and its clock must not make the next call time out at
   * once (the request would still be sent). */
  o.connect_timeout_ms = 300;
  o.request_timeout_ms = 300;
  assert_int_equal(txmq_sync_new(&s, &o), 0);
  usleep(450 * 1000);
  assert_int_equal(txmq_sync_connect(s, addr), 0);
  usleep(450 * 1000);
  m = mk_msg("TopicTest", "after a pause");
  assert_int_equal(txmq_sync_send(s, m, &sr), 0);
  txmq_msg_free(m);
  txmq_sync_free(s);
  fs_stop(fs);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(connect_refused),
      cmocka_unit_test(bad_arguments),
      cmocka_unit_test(handshake),
      cmocka_unit_test(handshake_failures),
      cmocka_unit_test(length_prefix_alone_in_a_read),
      cmocka_unit_test(requests_and_responses),
      cmocka_unit_test(pipelined_out_of_order),
      cmocka_unit_test(malformed_responses),
      cmocka_unit_test(hostile_frames),
      cmocka_unit_test(random_frames),
      cmocka_unit_test(checks),
      cmocka_unit_test(close_fails_pending),
      cmocka_unit_test(close_while_connecting),
      cmocka_unit_test(connection_lost),
      cmocka_unit_test(request_timeout),
      cmocka_unit_test(heartbeat),
      cmocka_unit_test(heartbeat_with_held_polls),
      cmocka_unit_test(frame_limit),
      cmocka_unit_test(send_in_transaction),
      cmocka_unit_test(blocking_layer),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
