/*
 * fuzz_frame.c - libFuzzer target for the server's side of the wire
 * protocol (core/net): the frame reader, the msgpack decoding of a frame,
 * the request checks and every operation's decoding of its fields, down to
 * the runtime they drive.
 *
 * One real server runs in the process, as txmqd runs it: a runtime on a
 * scratch data directory (with a script for group "hosted"), a consumer
 * engine, and the server on a loopback port, all on one loop. Each input
 * is one connection: the bytes are written to the socket, the write side is
 * shut down, and the server's answers are read until it closes the
 * connection (or 300 ms pass; then the connection is closed under it, as a
 * vanished peer would). The fixture is rebuilt every REBUILD inputs, so its
 * state stays small and every rebuild also recovers what the inputs left
 * (pending transactions, queues, offsets).
 *
 * Input: one flags byte, then the byte stream of the connection.
 *   bits 0-1  0: the stream as it is (it must say hello itself);
 *             1, 2, 3: a hello as producer (groups "g" and "hosted"),
 *             consumer (group "cg") or admin is sent first
 *   bit 2     close the connection right after writing, without reading
 *             the answers (the server's writes then fail under it)
 *
 * Properties checked on what the server sends back (beyond "no crash, no
 * leak, no UB"): every frame is 1..max_frame bytes of exactly one msgpack
 * map; a response has a non-negative integer "re" and a boolean "ok"; an
 * error response has "err" (str), "code" (a negative int) and "msg" (str);
 * anything else is a "check" request with a positive "id".
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fuzz_util.h"
#include "../mpref.h"
#include "store/store_int.h"
#include "txmq/consumer.h"
#include "txmq/error.h"
#include "txmq/net.h"
#include "txmq/runtime.h"
#include "txmq/script.h"

#define MAX_FRAME (64 * 1024)
#define REBUILD 2000
#define WAIT_MS 300

static const char HOSTED_LUA[] =
    "function executeLocalTransaction(msg, arg)\n"
    "  if arg == 'commit' then return txmq.COMMIT end\n"
    "  if arg == 'rollback' then return txmq.ROLLBACK end\n"
    "  if arg == 'error' then error('asked to fail') end\n"
    "  if type(arg) == 'table' then return arg.result end\n"
    "  return txmq.UNKNOWN\n"
    "end\n"
    "function checkLocalTransaction(msg)\n"
    "  return msg.check_count > 1 and txmq.COMMIT or txmq.UNKNOWN\n"
    "end\n";

typedef struct {
  uv_loop_t loop;
  char* root;
  char* data;
  char* scripts;
  txmq_runtime_t* rt;
  txmq_consumers_t* cs;
  txmq_server_t* srv;
  int port;
  int stopped;
  unsigned runs;
} fx_t;

static fx_t g_fx;
/* TXMQ_FUZZ_VERBOSE=1 prints what the server answers (to read a finding
 * or a seed). */
static int g_verbose;

static void quiet(void* arg, txmq_server_log_level_t level, const char* msg,
                  const char* fields) {
  (void)arg;
  (void)level;
  (void)msg;
  (void)fields;
}

/* The last check target: a check that no connection of its group can take
 * (none is live, or the one it went to closed) is rolled back here. Without
 * it every transaction an input leaves pending is checked again at every
 * later producer's hello, and the work per input grows with the inputs
 * run so far. */
static int fallback_check(void* arg, txmq_tx_t* tx,
                          const txmq_tx_check_t* chk) {
  (void)arg;
  int rc = txmq_tx_check_answer(tx, chk->tx_id, chk->seq, TXMQ_TX_ROLLBACK,
                                TXMQ_TX_SRC_CHECK, NULL, "fuzz-fallback");
  FZ_CHECK(rc == 0 || rc == TXMQ_ENOTFOUND || rc == TXMQ_ECLOSED);
  return 0;
}
static const txmq_tx_target_t FALLBACK = {"fuzz-fallback", fallback_check};

static void fx_start(fx_t* fx) {
  fx->data = fz_path(fx->root, "data");
  fx->scripts = fz_path(fx->root, "scripts");
  mkdir(fx->scripts, 0755);
  char* script = fz_path(fx->scripts, "hosted.lua");
  fz_write_file(script, HOSTED_LUA, sizeof HOSTED_LUA - 1);
  free(script);
  FZ_CHECK(txmq_runtime_new(&fx->rt, &fx->loop, fx->data, fx->scripts) == 0);
  txmq_store_t* st = txmq_runtime_store(fx->rt);
  FZ_CHECK(txmq_store_set(st, TXMQ_STORE_OPT_SYNC, TXMQ_SYNC_NEVER) == 0);
  FZ_CHECK(txmq_store_set(st, TXMQ_STORE_OPT_DEFAULT_QUEUES, 2) == 0);
  txmq_script_host_t* sh = txmq_runtime_scripts(fx->rt);
  FZ_CHECK(txmq_script_host_set(sh, TXMQ_SCRIPT_OPT_WATCH, 0) == 0);
  FZ_CHECK(txmq_script_host_set(sh, TXMQ_SCRIPT_OPT_CALL_BUDGET_MS, 100) == 0);
  FZ_CHECK(txmq_script_host_set(sh, TXMQ_SCRIPT_OPT_WORKERS, 1) == 0);
  FZ_CHECK(txmq_consumers_new(&fx->cs, &fx->loop, st) == 0);
  FZ_CHECK(txmq_server_new(&fx->srv, &fx->loop, fx->rt, fx->cs) == 0);
  FZ_CHECK(txmq_server_set(fx->srv, TXMQ_SERVER_OPT_MAX_FRAME, MAX_FRAME) == 0);
  FZ_CHECK(txmq_server_set(fx->srv, TXMQ_SERVER_OPT_MAX_INFLIGHT, 8) == 0);
  FZ_CHECK(txmq_server_set(fx->srv, TXMQ_SERVER_OPT_MAX_OUTPUT, 16384) == 0);
  FZ_CHECK(txmq_server_set(fx->srv, TXMQ_SERVER_OPT_DRAIN_MS, 2000) == 0);
  txmq_server_set_log_cb(fx->srv, quiet, NULL);
  int rc = txmq_runtime_open(fx->rt);
  if (rc != 0) fprintf(stderr, "runtime: %s\n", txmq_runtime_diag(fx->rt));
  FZ_CHECK(rc == 0);
  FZ_CHECK(txmq_consumers_start(fx->cs) == 0);
  FZ_CHECK(txmq_server_start(fx->srv, "127.0.0.1", 0) == 0);
  FZ_CHECK(txmq_tx_add_target(txmq_runtime_tx(fx->rt), &FALLBACK, NULL) == 0);
  fx->port = txmq_server_port(fx->srv);
}

static void on_rt_closed(txmq_runtime_t* rt, void* arg) {
  (void)rt;
  ((fx_t*)arg)->stopped = 1;
}
static void on_cs_closed(txmq_consumers_t* cs, void* arg) {
  (void)cs;
  fx_t* fx = arg;
  FZ_CHECK(txmq_runtime_close(fx->rt, on_rt_closed, fx) == 0);
}
static void on_srv_closed(txmq_server_t* srv, void* arg) {
  (void)srv;
  fx_t* fx = arg;
  FZ_CHECK(txmq_consumers_close(fx->cs, on_cs_closed, fx) == 0);
}

/* Stops everything in the daemon's order, then opens it all again on the
 * same data: what the inputs stored is recovered. Every few rebuilds the
 * data starts over, so it stays small. */
static void fx_rebuild(fx_t* fx, int wipe) {
  fx->stopped = 0;
  FZ_CHECK(txmq_server_close(fx->srv, on_srv_closed, fx) == 0);
  FZ_CHECK(fz_run_until(&fx->loop, &fx->stopped, 60000));
  txmq_runtime_free(fx->rt);
  txmq_server_free(fx->srv);
  txmq_consumers_free(fx->cs);
  if (wipe) fz_rmrf(fx->data);
  free(fx->data);
  free(fx->scripts);
  fx_start(fx);
}

int LLVMFuzzerInitialize(int* argc, char*** argv) {
  (void)argc;
  (void)argv;
  /* A peer that closes while we write must not kill the process: libuv
   * leaves SIGPIPE to the host program, as txmqd ignores it. */
  signal(SIGPIPE, SIG_IGN);
  FZ_CHECK(uv_loop_init(&g_fx.loop) == 0);
  g_fx.root = fz_tmpdir("frame");
  const char* v = getenv("TXMQ_FUZZ_VERBOSE");
  g_verbose = v != NULL && *v != '\0' && *v != '0';
  fx_start(&g_fx);
  return 0;
}

/* ---- one connection ---- */

typedef struct {
  uv_tcp_t tcp;
  uv_connect_t conn;
  uv_write_t wr;
  uv_shutdown_t shut;
  uv_buf_t out;
  int no_read;
  int done;        /* the server closed its side, or it failed */
  int closed;
  uint8_t* in;
  size_t inlen, incap;
  char rbuf[65536];
} conn_t;

static void on_close(uv_handle_t* h) {
  ((conn_t*)h->data)->closed = 1;
}

static void on_alloc(uv_handle_t* h, size_t sz, uv_buf_t* buf) {
  (void)sz;
  conn_t* c = h->data;
  buf->base = c->rbuf;
  buf->len = sizeof c->rbuf;
}

static void on_read(uv_stream_t* s, ssize_t n, const uv_buf_t* buf) {
  conn_t* c = s->data;
  if (n < 0) {
    c->done = 1;
    uv_read_stop(s);
    return;
  }
  if (n == 0) return;
  if (c->inlen + (size_t)n > c->incap) {
    size_t cap = c->incap ? c->incap * 2 : 65536;
    while (cap < c->inlen + (size_t)n) cap *= 2;
    c->in = realloc(c->in, cap);
    FZ_CHECK(c->in != NULL);
    c->incap = cap;
  }
  memcpy(c->in + c->inlen, buf->base, (size_t)n);
  c->inlen += (size_t)n;
}

static void on_shutdown(uv_shutdown_t* req, int status) {
  (void)req;
  (void)status;
}

static void on_write(uv_write_t* req, int status) {
  conn_t* c = req->data;
  if (status != 0) {
    c->done = 1;
    return;
  }
  if (c->no_read) {
    c->done = 1;
    return;
  }
  c->shut.data = c;
  if (uv_shutdown(&c->shut, (uv_stream_t*)&c->tcp, on_shutdown) != 0)
    c->done = 1;
}

static void on_connect(uv_connect_t* req, int status) {
  conn_t* c = req->data;
  FZ_CHECK(status == 0);
  if (!c->no_read)
    FZ_CHECK(uv_read_start((uv_stream_t*)&c->tcp, on_alloc, on_read) == 0);
  c->wr.data = c;
  if (c->out.len == 0) {
    on_write(&c->wr, 0);
    return;
  }
  FZ_CHECK(uv_write(&c->wr, (uv_stream_t*)&c->tcp, &c->out, 1, on_write) == 0);
}

/* ---- what the server sends ---- */

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

static void check_output(const uint8_t* p, size_t n) {
  size_t off = 0;
  while (n - off >= 4) {
    uint32_t len = (uint32_t)p[off] << 24 | (uint32_t)p[off + 1] << 16 |
                   (uint32_t)p[off + 2] << 8 | p[off + 3];
    FZ_CHECK(len >= 1 && len <= MAX_FRAME);
    if (n - off - 4 < len) break; /* cut by our close */
    const uint8_t* f = p + off + 4;
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    FZ_CHECK(txmq__mp_unpack(f, len, TXMQ__MP_MAX_DEPTH, len + 1, &u) == 0);
    const msgpack_object* o = &u.data;
    if (g_verbose) {
      msgpack_object_print(stderr, *o);
      fputc('\n', stderr);
    }
    FZ_CHECK(o->type == MSGPACK_OBJECT_MAP);
    const msgpack_object* re = get(o, "re");
    if (re != NULL) {
      FZ_CHECK(re->type == MSGPACK_OBJECT_POSITIVE_INTEGER);
      const msgpack_object* ok = get(o, "ok");
      FZ_CHECK(ok != NULL && ok->type == MSGPACK_OBJECT_BOOLEAN);
      if (!ok->via.boolean) {
        const msgpack_object* err = get(o, "err");
        const msgpack_object* code = get(o, "code");
        const msgpack_object* msg = get(o, "msg");
        FZ_CHECK(err != NULL && err->type == MSGPACK_OBJECT_STR);
        FZ_CHECK(code != NULL && code->type == MSGPACK_OBJECT_NEGATIVE_INTEGER);
        FZ_CHECK(msg != NULL && msg->type == MSGPACK_OBJECT_STR);
      }
    } else {
      const msgpack_object* op = get(o, "op");
      const msgpack_object* id = get(o, "id");
      FZ_CHECK(op != NULL && op->type == MSGPACK_OBJECT_STR &&
               op->via.str.size == 5 && memcmp(op->via.str.ptr, "check", 5) == 0);
      FZ_CHECK(id != NULL && id->type == MSGPACK_OBJECT_POSITIVE_INTEGER &&
               id->via.u64 >= 1);
    }
    msgpack_unpacked_destroy(&u);
    off += 4 + (size_t)len;
  }
}

/* ---- the hello prelude ---- */

static void pk_s(msgpack_packer* pk, const char* s) {
  msgpack_pack_str(pk, strlen(s));
  msgpack_pack_str_body(pk, s, strlen(s));
}

static void hello(msgpack_sbuffer* sb, int role) {
  static const char* const roles[] = {"producer", "consumer", "admin"};
  msgpack_sbuffer body;
  msgpack_sbuffer_init(&body);
  msgpack_packer pk;
  msgpack_packer_init(&pk, &body, msgpack_sbuffer_write);
  msgpack_pack_map(&pk, 6);
  pk_s(&pk, "op");
  pk_s(&pk, "hello");
  pk_s(&pk, "id");
  msgpack_pack_uint32(&pk, 1);
  pk_s(&pk, "version");
  msgpack_pack_uint32(&pk, 1);
  pk_s(&pk, "client");
  pk_s(&pk, "fuzz");
  pk_s(&pk, "role");
  pk_s(&pk, roles[role]);
  if (role == 1) {
    pk_s(&pk, "consumer_groups");
    msgpack_pack_array(&pk, 1);
    pk_s(&pk, "cg");
  } else {
    pk_s(&pk, "producer_groups");
    msgpack_pack_array(&pk, 2);
    pk_s(&pk, "g");
    pk_s(&pk, "hosted");
  }
  uint8_t len[4] = {(uint8_t)(body.size >> 24), (uint8_t)(body.size >> 16),
                    (uint8_t)(body.size >> 8), (uint8_t)body.size};
  msgpack_sbuffer_write(sb, (const char*)len, 4);
  msgpack_sbuffer_write(sb, body.data, body.size);
  msgpack_sbuffer_destroy(&body);
}

/* The one-pass decoder the server reads frames with must agree with
 * msgpack-c behind txmq__mp_check on every input: same verdict, same
 * object. */
static void check_decoder(const uint8_t* p, size_t n) {
  msgpack_unpacked a, b;
  msgpack_unpacked_init(&a);
  msgpack_unpacked_init(&b);
  int ra = txmq__mp_unpack(p, n, TXMQ__MP_MAX_DEPTH, 4096, &a);
  int rb = mpref_unpack(p, n, TXMQ__MP_MAX_DEPTH, 4096, &b);
  FZ_CHECK((ra == 0) == (rb == 0));
  if (ra == 0) FZ_CHECK(mpref_same(&a.data, &b.data));
  msgpack_unpacked_destroy(&a);
  msgpack_unpacked_destroy(&b);
}

int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  check_decoder(data + 1, size - 1);
  for (size_t off = 1; size - off >= 4;) { /* and each frame in it */
    size_t n = (size_t)data[off] << 24 | (size_t)data[off + 1] << 16 |
               (size_t)data[off + 2] << 8 | data[off + 3];
    if (n > size - off - 4) n = size - off - 4;
    check_decoder(data + off + 4, n);
    off += 4 + n;
  }
  fx_t* fx = &g_fx;
  if (++fx->runs % REBUILD == 0) fx_rebuild(fx, fx->runs % (4 * REBUILD) == 0);
  int prelude = data[0] & 3;
  msgpack_sbuffer sb;
  msgpack_sbuffer_init(&sb);
  if (prelude != 0) hello(&sb, prelude - 1);
  if (size > 1) msgpack_sbuffer_write(&sb, (const char*)data + 1, size - 1);

  conn_t* c = calloc(1, sizeof *c);
  FZ_CHECK(c != NULL);
  c->no_read = (data[0] & 4) != 0;
  c->out = uv_buf_init(sb.data, (unsigned)sb.size);
  FZ_CHECK(uv_tcp_init(&fx->loop, &c->tcp) == 0);
  c->tcp.data = c;
  c->conn.data = c;
  struct sockaddr_in addr;
  uv_ip4_addr("127.0.0.1", fx->port, &addr);
  FZ_CHECK(uv_tcp_connect(&c->conn, &c->tcp, (const struct sockaddr*)&addr,
                          on_connect) == 0);
  if (!fz_run_until(&fx->loop, &c->done, WAIT_MS) && g_verbose)
    fprintf(stderr, "the server kept the connection open for %d ms\n", WAIT_MS);
  uv_close((uv_handle_t*)&c->tcp, on_close);
  FZ_CHECK(fz_run_until(&fx->loop, &c->closed, 10000));
  check_output(c->in, c->inlen);
  free(c->in);
  free(c);
  msgpack_sbuffer_destroy(&sb);
  /* Let the server notice the close and finish what it was doing. */
  uv_run(&fx->loop, UV_RUN_NOWAIT);
  return 0;
}
