/*
 * test_client_server.c - the C client against the real server in the same
 * process: a runtime, a consumer engine and a txmq server on a loopback
 * port, and clients on the same loop. What the fake server of
 * test_client.c cannot prove: that both sides read the protocol the same
 * way.
 *
 * Covered: producer-hosted transactions (send_in_transaction answering
 * UNKNOWN, the server's check reaching the registered callback, the later
 * answer committing), a check going to another member of the group when
 * the producer that sent the half message is gone, multi-message
 * transactions with repeated and conflicting ends, pipelined sends,
 * receive/ack and offsets, the admin replies, a long poll failed by close,
 * and the server closing under a client; authentication: each role with its
 * secret or the admin's, wrong, missing and role-less secrets refused with
 * EAUTH and the connection closed, operations outside the role refused on
 * a connection that stays open, no secret in the server's log lines, and
 * auth off as before. Every test closes its loop cleanly.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cmocka.h>

#include "testutil.h"
#include "txmq/client.h"
#include "txmq/consumer.h"
#include "txmq/error.h"
#include "txmq/msg.h"
#include "txmq/net.h"
#include "txmq/runtime.h"
#include "txmq/store.h"
#include "txmq/tx.h"

/* ---- fixture: the server side ---- */

typedef struct {
  uv_loop_t loop;
  char* root;
  txmq_runtime_t* rt;
  txmq_consumers_t* cs;
  txmq_server_t* srv;
  char addr[64];
  int stopped;
  char log[16384]; /* the server's log lines, as a daemon would write them */
  size_t loglen;
} fx_t;

/* Secrets of the auth fixture; consumers have none of their own. */
#define P_SECRET "producer-secret-1"
#define A_SECRET "admin-secret-42"

static void on_server_log(void* arg, txmq_server_log_level_t level,
                          const char* msg, const char* fields) {
  (void)level;
  fx_t* fx = arg;
  if (fx->loglen + 1 >= sizeof fx->log) return;
  int n = snprintf(fx->log + fx->loglen, sizeof fx->log - fx->loglen,
                   "msg=\"%s\" %s\n", msg, fields);
  if (n > 0) fx->loglen += (size_t)n;
  if (fx->loglen >= sizeof fx->log) fx->loglen = sizeof fx->log - 1;
}

static int fx_setup_with(void** state, int auth) {
  fx_t* fx = calloc(1, sizeof *fx);
  assert_int_equal(uv_loop_init(&fx->loop), 0);
  fx->root = tu_tmpdir("client-server");
  char* data = tu_path(fx->root, "data");
  char* scripts = tu_path(fx->root, "scripts");
  assert_int_equal(mkdir(scripts, 0755), 0); /* no scripts: producers decide */
  assert_int_equal(txmq_runtime_new(&fx->rt, &fx->loop, data, scripts), 0);
  free(data);
  free(scripts);
  txmq_store_t* st = txmq_runtime_store(fx->rt);
  assert_int_equal(txmq_store_set(st, TXMQ_STORE_OPT_SYNC, TXMQ_SYNC_NEVER), 0);
  assert_int_equal(txmq_store_set(st, TXMQ_STORE_OPT_DEFAULT_QUEUES, 1), 0);
  txmq_tx_t* tx = txmq_runtime_tx(fx->rt);
  assert_int_equal(txmq_tx_set(tx, TXMQ_TX_OPT_TIMEOUT_MS, 200), 0);
  assert_int_equal(txmq_tx_set(tx, TXMQ_TX_OPT_CHECK_INTERVAL_MS, 200), 0);
  assert_int_equal(txmq_tx_set(tx, TXMQ_TX_OPT_CHECK_TIMEOUT_MS, 2000), 0);
  assert_int_equal(txmq_consumers_new(&fx->cs, &fx->loop, st), 0);
  assert_int_equal(txmq_server_new(&fx->srv, &fx->loop, fx->rt, fx->cs), 0);
  assert_int_equal(txmq_server_set_name(fx->srv, "in-process 1"), 0);
  txmq_server_set_log_cb(fx->srv, on_server_log, fx);
  if (auth) {
    assert_int_equal(txmq_server_set_secret(fx->srv, "producer", P_SECRET), 0);
    assert_int_equal(txmq_server_set_secret(fx->srv, "admin", A_SECRET), 0);
  }
  assert_int_equal(txmq_runtime_open(fx->rt), 0);
  assert_int_equal(txmq_consumers_start(fx->cs), 0);
  assert_int_equal(txmq_server_start(fx->srv, "127.0.0.1", 0), 0);
  snprintf(fx->addr, sizeof fx->addr, "%s", txmq_server_address(fx->srv));
  *state = fx;
  return 0;
}

static int fx_setup(void** state) { return fx_setup_with(state, 0); }
static int fx_setup_auth(void** state) { return fx_setup_with(state, 1); }

static void on_rt_closed(txmq_runtime_t* rt, void* arg) {
  (void)rt;
  ((fx_t*)arg)->stopped = 1;
}
static void on_cs_closed(txmq_consumers_t* cs, void* arg) {
  (void)cs;
  fx_t* fx = arg;
  assert_int_equal(txmq_runtime_close(fx->rt, on_rt_closed, fx), 0);
}
static void on_srv_closed(txmq_server_t* srv, void* arg) {
  (void)srv;
  fx_t* fx = arg;
  assert_int_equal(txmq_consumers_close(fx->cs, on_cs_closed, fx), 0);
}

/* Stops the server side in the daemon's order. */
static void fx_stop_server(fx_t* fx) {
  if (fx->stopped) return;
  assert_int_equal(txmq_server_close(fx->srv, on_srv_closed, fx), 0);
  assert_true(tu_run_until(&fx->loop, &fx->stopped, 10000));
}

static int fx_teardown(void** state) {
  fx_t* fx = *state;
  fx_stop_server(fx);
  txmq_runtime_free(fx->rt);
  txmq_server_free(fx->srv);
  txmq_consumers_free(fx->cs);
  tu_loop_close_clean(&fx->loop);
  tu_rmrf(fx->root);
  free(fx->root);
  free(fx);
  return 0;
}

/* ---- clients ---- */

typedef struct {
  int connected;
  int status;
  int closed;
  int lost;
  int lost_status;
  char diag[256];
} cli_t;

static void on_connect(txmq_client_t* c, int status, void* arg) {
  cli_t* k = arg;
  k->status = status;
  snprintf(k->diag, sizeof k->diag, "%s", txmq_client_diag(c));
  k->connected = 1;
}
static void on_closed(txmq_client_t* c, void* arg) {
  ((cli_t*)arg)->closed = 1;
  txmq_client_free(c);
}
static void on_lost(txmq_client_t* c, int status, void* arg) {
  (void)c;
  cli_t* k = arg;
  k->lost++;
  k->lost_status = status;
}

static txmq_client_t* client_secret(fx_t* fx, const char* id, txmq_role_t role,
                                    const char* pgroup, const char* secret,
                                    cli_t* k) {
  const char* groups[1] = {pgroup};
  txmq_client_options_t o;
  memset(&o, 0, sizeof o);
  o.client_id = id;
  o.role = role;
  o.secret = secret;
  if (pgroup) {
    o.producer_groups = groups;
    o.n_producer_groups = 1;
  }
  txmq_client_t* c = NULL;
  memset(k, 0, sizeof *k);
  assert_int_equal(txmq_client_new(&c, &fx->loop, &o), 0);
  txmq_client_on_disconnect(c, on_lost, k);
  return c;
}

static txmq_client_t* client(fx_t* fx, const char* id, txmq_role_t role,
                             const char* pgroup, cli_t* k) {
  return client_secret(fx, id, role, pgroup, NULL, k);
}

static void connect_now(fx_t* fx, txmq_client_t* c, cli_t* k) {
  assert_int_equal(txmq_client_connect(c, fx->addr, on_connect, k), 0);
  assert_true(tu_run_until(&fx->loop, &k->connected, 5000));
  assert_int_equal(k->status, 0);
  assert_string_equal(txmq_client_server(c), "in-process 1");
}

/* Connects and returns the outcome (k->diag holds the server's words). */
static int connect_status(fx_t* fx, txmq_client_t* c, cli_t* k) {
  assert_int_equal(txmq_client_connect(c, fx->addr, on_connect, k), 0);
  assert_true(tu_run_until(&fx->loop, &k->connected, 5000));
  return k->status;
}

static void close_now(fx_t* fx, txmq_client_t* c, cli_t* k) {
  assert_int_equal(txmq_client_close(c, on_closed, k), 0);
  assert_true(tu_run_until(&fx->loop, &k->closed, 5000));
}

static txmq_msg_t* mk(const char* topic, const char* body) {
  txmq_msg_t* m = txmq_msg_new();
  assert_int_equal(txmq_msg_set_topic(m, topic), 0);
  assert_int_equal(txmq_msg_set_body(m, body, strlen(body)), 0);
  return m;
}

/* Generic spies. */
typedef struct {
  int calls;
  int status;
  int done;
  int64_t value;
  txmq_tx_state_t state;
  uint8_t id[16];
  char text[256];
} spy_t;

static void on_int(txmq_client_t* c, int status, int64_t v, void* arg) {
  (void)c;
  spy_t* s = arg;
  s->calls++;
  s->status = status;
  s->value = v;
  s->done = 1;
}
static void on_end(txmq_client_t* c, int status, txmq_tx_state_t st, void* arg) {
  spy_t* s = arg;
  s->calls++;
  s->status = status;
  s->state = st;
  snprintf(s->text, sizeof s->text, "%s", txmq_client_diag(c));
  s->done = 1;
}
static void on_done(txmq_client_t* c, int status, void* arg) {
  (void)c;
  spy_t* s = arg;
  s->calls++;
  s->status = status;
  s->done = 1;
}
/* tx.show: the state string of the summary. */
static void on_show(txmq_client_t* c, int status, const msgpack_object* o,
                    void* arg) {
  (void)c;
  spy_t* s = arg;
  s->calls++;
  s->status = status;
  s->text[0] = '\0';
  const msgpack_object* tx = txmq_client_map_get(o, "tx");
  const msgpack_object* st = txmq_client_map_get(tx, "state");
  if (st && st->type == MSGPACK_OBJECT_STR)
    snprintf(s->text, sizeof s->text, "%.*s", (int)st->via.str.size, st->via.str.ptr);
  s->done = 1;
}

/* Receives up to max messages of topic for group; bodies joined with ','
 * into out; acks them all. */
typedef struct {
  int done;
  int status;
  size_t n;
  char bodies[4096];
  char* handles[256];
} recv_t;

static void on_receive(txmq_client_t* c, int status, txmq_delivery_t* d,
                       size_t n, void* arg) {
  (void)c;
  recv_t* r = arg;
  r->status = status;
  r->n = n;
  r->bodies[0] = '\0';
  for (size_t i = 0; i < n && i < 256; i++) {
    size_t bl;
    const char* b = txmq_msg_body(d[i].msg, &bl);
    size_t used = strlen(r->bodies);
    snprintf(r->bodies + used, sizeof r->bodies - used, "%s%.*s", i ? "," : "",
             (int)bl, b ? b : "");
    r->handles[i] = strdup(d[i].handle);
  }
  r->done = 1;
}

static void receive_and_ack(fx_t* fx, txmq_client_t* c, const char* group,
                            const char* topic, uint32_t max, recv_t* r) {
  memset(r, 0, sizeof *r);
  txmq_receive_opts_t o = {.group = group, .topic = topic, .max = max,
                           .wait_ms = 500};
  assert_int_equal(txmq_client_receive(c, &o, on_receive, r), 0);
  assert_true(tu_run_until(&fx->loop, &r->done, 5000));
  assert_int_equal(r->status, 0);
  if (r->n == 0) return;
  spy_t a = {0};
  assert_int_equal(txmq_client_ack(c, group, (const char* const*)r->handles,
                                   r->n, on_int, &a), 0);
  assert_true(tu_run_until(&fx->loop, &a.done, 5000));
  assert_int_equal(a.status, 0);
  assert_int_equal(a.value, (int64_t)r->n);
  for (size_t i = 0; i < r->n; i++) free(r->handles[i]);
}

/* ---- producer-hosted transaction decided by a check ---- */

typedef struct {
  int checks;
  uint64_t last_id;
  char group[32];
  char body[32];
  uint8_t tx_id[16];
  txmq_tx_decision_t answer_now; /* 0: answer later */
  txmq_client_t* c;
} checker_t;

static void on_check(txmq_client_t* c, const txmq_client_check_t* chk,
                     void* arg) {
  checker_t* k = arg;
  k->checks++;
  k->last_id = chk->check_id;
  k->c = c;
  memcpy(k->tx_id, chk->tx_id, 16);
  snprintf(k->group, sizeof k->group, "%s", chk->group);
  size_t bl;
  const char* b = txmq_msg_body(chk->msgs[0], &bl);
  snprintf(k->body, sizeof k->body, "%.*s", (int)bl, b);
  if (k->answer_now)
    assert_int_equal(txmq_client_check_reply(c, chk->check_id, k->answer_now), 0);
}

static txmq_tx_decision_t exec_unknown(txmq_client_t* c, const txmq_msg_t* m,
                                       const uint8_t* tx_id, void* arg) {
  (void)c;
  (void)tx_id;
  (*(int*)arg)++;
  assert_string_equal(txmq_msg_topic(m), "hosted");
  return TXMQ_TX_UNKNOWN;
}

typedef struct {
  int done;
  int status;
  txmq_tx_result_t r;
} txr_t;

static void on_tx_done(txmq_client_t* c, int status, const txmq_tx_result_t* r,
                       void* arg) {
  (void)c;
  txr_t* t = arg;
  t->status = status;
  if (r) t->r = *r;
  t->done = 1;
}

static void hosted_transaction_checked(void** state) {
  fx_t* fx = *state;
  cli_t kp, kc;
  txmq_client_t* p = client(fx, "producer-1", TXMQ_ROLE_PRODUCER, "hosted-g", &kp);
  checker_t chk = {0};
  assert_int_equal(txmq_client_on_check(p, "hosted-g", on_check, &chk), 0);
  connect_now(fx, p, &kp);
  txmq_client_t* cons = client(fx, "consumer-1", TXMQ_ROLE_ADMIN, NULL, &kc);
  connect_now(fx, cons, &kc);

  int executed = 0;
  txr_t t = {0};
  txmq_msg_t* m = mk("hosted", "checked body");
  assert_int_equal(txmq_client_send_in_transaction(p, "hosted-g", m, exec_unknown,
                                                   &executed, on_tx_done, &t), 0);
  txmq_msg_free(m);
  assert_true(tu_run_until(&fx->loop, &t.done, 5000));
  assert_int_equal(t.status, 0);
  assert_int_equal(executed, 1);
  assert_int_equal(t.r.local_state, TXMQ_TX_UNKNOWN);
  assert_int_equal(t.r.tx_state, TXMQ_TX_PENDING);

  /* Invisible while pending. */
  recv_t r;
  receive_and_ack(fx, cons, "cg", "hosted", 10, &r);
  assert_int_equal(r.n, 0);

  /* The check comes after the transaction timeout, to the producer. */
  int got_check = 0;
  for (int i = 0; i < 100 && chk.checks == 0; i++) tu_run_until(&fx->loop, &got_check, 50);
  assert_int_equal(chk.checks, 1);
  assert_string_equal(chk.group, "hosted-g");
  assert_string_equal(chk.body, "checked body");
  assert_memory_equal(chk.tx_id, t.r.tx_id, 16);
  /* Answered later, from outside the callback. */
  assert_int_equal(txmq_client_check_reply(p, chk.last_id, TXMQ_TX_COMMIT), 0);
  assert_int_equal(txmq_client_check_reply(p, chk.last_id, TXMQ_TX_COMMIT), TXMQ_ENOTFOUND);

  spy_t show = {0};
  for (int i = 0; i < 100 && strcmp(show.text, "committed") != 0; i++) {
    memset(&show, 0, sizeof show);
    assert_int_equal(txmq_client_tx_show(cons, t.r.tx_id, on_show, &show), 0);
    assert_true(tu_run_until(&fx->loop, &show.done, 5000));
    assert_int_equal(show.status, 0);
  }
  assert_string_equal(show.text, "committed");
  receive_and_ack(fx, cons, "cg", "hosted", 10, &r);
  assert_int_equal(r.n, 1);
  assert_string_equal(r.bodies, "checked body");
  /* No check after the decision. */
  int idle = 0;
  tu_run_until(&fx->loop, &idle, 600);
  assert_int_equal(chk.checks, 1);

  close_now(fx, p, &kp);
  close_now(fx, cons, &kc);
}

/* The producer that sent the half message is gone: another member of the
 * group is asked. */
static void check_goes_to_another_member(void** state) {
  fx_t* fx = *state;
  cli_t k1, k2;
  txmq_client_t* p1 = client(fx, "member-1", TXMQ_ROLE_PRODUCER, "grp", &k1);
  txmq_client_t* p2 = client(fx, "member-2", TXMQ_ROLE_PRODUCER, "grp", &k2);
  checker_t c1 = {0}, c2 = {.answer_now = TXMQ_TX_ROLLBACK};
  assert_int_equal(txmq_client_on_check(p1, "grp", on_check, &c1), 0);
  assert_int_equal(txmq_client_on_check(p2, "grp", on_check, &c2), 0);
  connect_now(fx, p1, &k1);
  connect_now(fx, p2, &k2);
  int executed = 0;
  txr_t t = {0};
  txmq_msg_t* m = mk("hosted", "orphan");
  assert_int_equal(txmq_client_send_in_transaction(p1, "grp", m, exec_unknown,
                                                   &executed, on_tx_done, &t), 0);
  txmq_msg_free(m);
  assert_true(tu_run_until(&fx->loop, &t.done, 5000));
  assert_int_equal(t.status, 0);
  close_now(fx, p1, &k1);
  int never = 0;
  for (int i = 0; i < 100 && c2.checks == 0; i++) tu_run_until(&fx->loop, &never, 50);
  assert_int_equal(c1.checks, 0);
  assert_int_equal(c2.checks, 1);
  assert_memory_equal(c2.tx_id, t.r.tx_id, 16);
  /* Its rollback decided it: a later commit conflicts. */
  spy_t e = {0};
  for (int i = 0; i < 50; i++) {
    memset(&e, 0, sizeof e);
    assert_int_equal(txmq_client_tx_end(p2, t.r.tx_id, TXMQ_TX_COMMIT, on_end, &e), 0);
    assert_true(tu_run_until(&fx->loop, &e.done, 5000));
    if (e.status != 0) break;
    tu_run_until(&fx->loop, &never, 20);
  }
  assert_int_equal(e.status, TXMQ_ECONFLICT);
  assert_non_null(strstr(e.text, "rolled_back"));
  close_now(fx, p2, &k2);
}

/* ---- multi-message transactions, idempotent ends ---- */

static void on_half(txmq_client_t* c, int status, const txmq_half_result_t* r,
                    void* arg) {
  (void)c;
  spy_t* s = arg;
  s->calls++;
  s->status = status;
  if (r) {
    memcpy(s->id, r->tx_id, 16);
    s->value = (int64_t)r->nmsgs;
  }
  s->done = 1;
}

static void multi_message_transaction(void** state) {
  fx_t* fx = *state;
  cli_t k;
  txmq_client_t* c = client(fx, "multi", TXMQ_ROLE_ADMIN, NULL, &k);
  connect_now(fx, c, &k);
  txmq_msg_t* ms[3] = {mk("orders", "o1"), mk("points", "p1"), mk("orders", "o2")};
  spy_t h = {0};
  assert_int_equal(txmq_client_tx_half(c, "multi-g", (const txmq_msg_t* const*)ms, 3,
                                       60000, on_half, &h), 0);
  for (int i = 0; i < 3; i++) txmq_msg_free(ms[i]);
  assert_true(tu_run_until(&fx->loop, &h.done, 5000));
  assert_int_equal(h.status, 0);
  assert_int_equal(h.value, 3);
  recv_t r;
  receive_and_ack(fx, c, "g", "orders", 10, &r);
  assert_int_equal(r.n, 0);
  txmq_tx_decision_t ds[3] = {TXMQ_TX_COMMIT, TXMQ_TX_COMMIT, TXMQ_TX_ROLLBACK};
  int want[3] = {0, 0, TXMQ_ECONFLICT};
  for (int i = 0; i < 3; i++) {
    spy_t e = {0};
    assert_int_equal(txmq_client_tx_end(c, h.id, ds[i], on_end, &e), 0);
    assert_true(tu_run_until(&fx->loop, &e.done, 5000));
    assert_int_equal(e.calls, 1);
    assert_int_equal(e.status, want[i]);
    if (want[i] == 0) assert_int_equal(e.state, TXMQ_TX_COMMITTED);
  }
  receive_and_ack(fx, c, "g", "orders", 10, &r);
  assert_string_equal(r.bodies, "o1,o2");
  receive_and_ack(fx, c, "g", "points", 10, &r);
  assert_string_equal(r.bodies, "p1");
  /* An unknown transaction. */
  uint8_t nobody[16] = {9};
  spy_t e = {0};
  assert_int_equal(txmq_client_tx_end(c, nobody, TXMQ_TX_COMMIT, on_end, &e), 0);
  assert_true(tu_run_until(&fx->loop, &e.done, 5000));
  assert_int_equal(e.status, TXMQ_ENOTFOUND);
  close_now(fx, c, &k);
}

/* tx.decide: an operator's decision over a pending transaction, the first
 * decision winning, refused to a producer, UNKNOWN refused at the call. */
static void operator_decision(void** state) {
  fx_t* fx = *state;
  cli_t k, kp;
  txmq_client_t* c = client(fx, "ops", TXMQ_ROLE_ADMIN, NULL, &k);
  txmq_client_t* p = client(fx, "prod", TXMQ_ROLE_PRODUCER, NULL, &kp);
  connect_now(fx, c, &k);
  connect_now(fx, p, &kp);
  txmq_msg_t* ms[2] = {mk("orders", "kept"), mk("orders", "dropped")};
  spy_t h[2] = {{0}, {0}};
  for (int i = 0; i < 2; i++) {
    assert_int_equal(txmq_client_tx_half(p, "op-g", (const txmq_msg_t* const*)&ms[i],
                                         1, 60000, on_half, &h[i]), 0);
    txmq_msg_free(ms[i]);
    assert_true(tu_run_until(&fx->loop, &h[i].done, 5000));
    assert_int_equal(h[i].status, 0);
  }
  assert_int_equal(txmq_client_tx_decide(c, h[0].id, TXMQ_TX_UNKNOWN, on_end, NULL),
                   TXMQ_EINVAL);
  assert_non_null(strstr(txmq_client_diag(c), "COMMIT or ROLLBACK"));
  spy_t e = {0};
  assert_int_equal(txmq_client_tx_decide(p, h[0].id, TXMQ_TX_COMMIT, on_end, &e), 0);
  assert_true(tu_run_until(&fx->loop, &e.done, 5000));
  assert_int_equal(e.status, TXMQ_EPROTO);
  txmq_tx_decision_t ds[4] = {TXMQ_TX_COMMIT, TXMQ_TX_ROLLBACK, TXMQ_TX_COMMIT,
                              TXMQ_TX_ROLLBACK};
  int which[4] = {0, 1, 1, 0};
  int want[4] = {0, 0, TXMQ_ECONFLICT, TXMQ_ECONFLICT};
  for (int i = 0; i < 4; i++) {
    memset(&e, 0, sizeof e);
    assert_int_equal(txmq_client_tx_decide(c, h[which[i]].id, ds[i], on_end, &e), 0);
    assert_true(tu_run_until(&fx->loop, &e.done, 5000));
    assert_int_equal(e.status, want[i]);
    if (want[i] == 0)
      assert_int_equal(e.state, ds[i] == TXMQ_TX_COMMIT ? TXMQ_TX_COMMITTED
                                                        : TXMQ_TX_ROLLED_BACK);
  }
  recv_t r;
  receive_and_ack(fx, c, "g", "orders", 10, &r);
  assert_string_equal(r.bodies, "kept");
  close_now(fx, p, &kp);
  close_now(fx, c, &k);
}

/* ---- pipelined sends, receive, ack, offsets ---- */

#define NSEND 200

typedef struct {
  int calls[NSEND];
  int64_t qoff[NSEND];
  int ndone;
} sends_t;

typedef struct {
  sends_t* s;
  int i;
} send_arg_t;

static void on_send(txmq_client_t* c, int status, const txmq_send_result_t* r,
                    void* arg) {
  (void)c;
  send_arg_t* a = arg;
  assert_int_equal(status, 0);
  a->s->calls[a->i]++;
  a->s->qoff[a->i] = r->qoff;
  a->s->ndone++;
}

typedef struct {
  recv_t r;
  int64_t next;
} peek_t;

static void on_peek(txmq_client_t* c, int status, txmq_delivery_t* d,
                    size_t n, int64_t next, void* arg) {
  peek_t* p = arg;
  p->next = next;
  for (size_t i = 0; i < n; i++) assert_string_equal(d[i].handle, "");
  on_receive(c, status, d, n, &p->r);
  for (size_t i = 0; i < n && i < 256; i++) free(p->r.handles[i]);
}

static peek_t peek_now(fx_t* fx, txmq_client_t* c, const char* topic,
                       int64_t offset, uint32_t max) {
  peek_t p;
  memset(&p, 0, sizeof p);
  assert_int_equal(txmq_client_peek(c, topic, 0, offset, max, on_peek, &p), 0);
  assert_true(tu_run_until(&fx->loop, &p.r.done, 5000));
  return p;
}

static void pipelined_sends_and_consume(void** state) {
  fx_t* fx = *state;
  cli_t k;
  txmq_client_t* c = client(fx, "pipe", TXMQ_ROLE_ADMIN, NULL, &k);
  connect_now(fx, c, &k);
  sends_t s;
  memset(&s, 0, sizeof s);
  send_arg_t args[NSEND];
  for (int i = 0; i < NSEND; i++) {
    char body[16];
    snprintf(body, sizeof body, "m%d", i);
    txmq_msg_t* m = mk("pipe", body);
    args[i].s = &s;
    args[i].i = i;
    assert_int_equal(txmq_client_send(c, m, on_send, &args[i]), 0);
    txmq_msg_free(m);
  }
  int never = 0;
  for (int i = 0; i < 200 && s.ndone < NSEND; i++) tu_run_until(&fx->loop, &never, 25);
  assert_int_equal(s.ndone, NSEND);
  /* One queue: offsets follow the order of the sends. */
  for (int i = 0; i < NSEND; i++) {
    assert_int_equal(s.calls[i], 1);
    assert_int_equal(s.qoff[i], i);
  }
  size_t total = 0;
  recv_t r;
  for (int round = 0; round < 10 && total < NSEND; round++) {
    receive_and_ack(fx, c, "pg", "pipe", 64, &r);
    total += r.n;
  }
  assert_int_equal(total, NSEND);
  receive_and_ack(fx, c, "pg", "pipe", 64, &r);
  assert_int_equal(r.n, 0);
  spy_t og = {0};
  assert_int_equal(txmq_client_offset_get(c, "pg", "pipe", 0, on_int, &og), 0);
  assert_true(tu_run_until(&fx->loop, &og.done, 5000));
  assert_int_equal(og.status, 0);
  assert_int_equal(og.value, NSEND);
  /* Rewind another group and read from there. */
  spy_t os = {0};
  assert_int_equal(txmq_client_offset_set(c, "pg2", "pipe", 0, NSEND - 2, on_done, &os), 0);
  assert_true(tu_run_until(&fx->loop, &os.done, 5000));
  assert_int_equal(os.status, 0);
  receive_and_ack(fx, c, "pg2", "pipe", 64, &r);
  assert_string_equal(r.bodies, "m198,m199");
  /* Peek: the stored messages, whatever the groups did, and nothing moves. */
  peek_t p = peek_now(fx, c, "pipe", NSEND - 3, 2);
  assert_int_equal(p.r.status, 0);
  assert_string_equal(p.r.bodies, "m197,m198");
  assert_int_equal(p.next, NSEND - 1);
  p = peek_now(fx, c, "pipe", -1, 0);
  assert_int_equal(p.r.n, 32);
  assert_int_equal(p.next, 32);
  p = peek_now(fx, c, "pipe", NSEND, 5);
  assert_int_equal(p.r.status, 0);
  assert_int_equal(p.r.n, 0);
  assert_int_equal(p.next, NSEND);
  p = peek_now(fx, c, "nope", -1, 1);
  assert_int_equal(p.r.status, TXMQ_ENOTFOUND);
  assert_int_equal(txmq_client_peek(c, "pipe", 0, 0, 257, on_peek, &p),
                   TXMQ_EINVAL);
  spy_t og2 = {0};
  assert_int_equal(txmq_client_offset_get(c, "pg", "pipe", 0, on_int, &og2), 0);
  assert_true(tu_run_until(&fx->loop, &og2.done, 5000));
  assert_int_equal(og2.value, NSEND);
  spy_t ping = {0};
  assert_int_equal(txmq_client_ping(c, on_int, &ping), 0);
  assert_true(tu_run_until(&fx->loop, &ping.done, 5000));
  assert_int_equal(ping.status, 0);
  assert_true(ping.value > 1600000000000LL);
  close_now(fx, c, &k);
}

/* ---- admin replies ---- */

static void on_reply(txmq_client_t* c, int status, const msgpack_object* o,
                     void* arg) {
  spy_t* s = arg;
  s->calls++;
  s->status = status;
  s->text[0] = '\0';
  if (status == 0) {
    const msgpack_object* v = txmq_client_map_get(o, "version");
    if (v && v->type == MSGPACK_OBJECT_STR)
      snprintf(s->text, sizeof s->text, "%.*s", (int)v->via.str.size, v->via.str.ptr);
    const msgpack_object* txs = txmq_client_map_get(o, "txs");
    if (txs) s->value = txs->via.array.size;
  } else {
    snprintf(s->text, sizeof s->text, "%s", txmq_client_diag(c));
  }
  s->done = 1;
}

static void admin_replies(void** state) {
  fx_t* fx = *state;
  cli_t k;
  txmq_client_t* c = client(fx, "admin-1", TXMQ_ROLE_ADMIN, NULL, &k);
  connect_now(fx, c, &k);
  spy_t s = {0};
  assert_int_equal(txmq_client_status(c, on_reply, &s), 0);
  assert_true(tu_run_until(&fx->loop, &s.done, 5000));
  assert_int_equal(s.status, 0);
  assert_string_equal(s.text, "in-process 1");
  spy_t l = {0};
  assert_int_equal(txmq_client_tx_list(c, NULL, 10, on_reply, &l), 0);
  assert_true(tu_run_until(&fx->loop, &l.done, 5000));
  assert_int_equal(l.status, 0);
  assert_int_equal(l.value, 0);
  spy_t rl = {0};
  assert_int_equal(txmq_client_reload(c, "no-script", on_reply, &rl), 0);
  assert_true(tu_run_until(&fx->loop, &rl.done, 5000));
  assert_true(rl.status < 0);
  assert_non_null(strstr(rl.text, "no-script"));
  spy_t g = {0};
  assert_int_equal(txmq_client_call(c, "no.such.op", NULL, 0, on_reply, &g), 0);
  assert_true(tu_run_until(&fx->loop, &g.done, 5000));
  assert_int_equal(g.status, TXMQ_EPROTO);
  /* The connection survives a refused request. */
  assert_true(txmq_client_is_connected(c));
  close_now(fx, c, &k);
}

/* ---- close and loss ---- */

static void close_fails_long_poll(void** state) {
  fx_t* fx = *state;
  cli_t k;
  txmq_client_t* c = client(fx, "poller", TXMQ_ROLE_CONSUMER, NULL, &k);
  connect_now(fx, c, &k);
  recv_t r = {0};
  txmq_receive_opts_t o = {.group = "lp", .topic = "quiet", .wait_ms = 30000};
  /* The topic exists, with a message the group will skip (latest). */
  sends_t sent;
  memset(&sent, 0, sizeof sent);
  send_arg_t sa = {&sent, 0};
  txmq_msg_t* m = mk("quiet", "x");
  assert_int_equal(txmq_client_send(c, m, on_send, &sa), 0);
  txmq_msg_free(m);
  int never0 = 0;
  for (int i = 0; i < 200 && sent.ndone == 0; i++) tu_run_until(&fx->loop, &never0, 10);
  assert_int_equal(sent.ndone, 1);
  o.from = TXMQ_FROM_LATEST;
  assert_int_equal(txmq_client_receive(c, &o, on_receive, &r), 0);
  int never = 0;
  tu_run_until(&fx->loop, &never, 100);
  assert_int_equal(r.done, 0);
  assert_int_equal(txmq_client_close(c, on_closed, &k), 0);
  assert_true(tu_run_until(&fx->loop, &k.closed, 5000));
  assert_int_equal(r.done, 1);
  assert_int_equal(r.status, TXMQ_ECLOSED);
}

static void server_closes_under_client(void** state) {
  fx_t* fx = *state;
  cli_t k;
  txmq_client_t* c = client(fx, "victim", TXMQ_ROLE_CONSUMER, NULL, &k);
  connect_now(fx, c, &k);
  recv_t r = {0};
  txmq_receive_opts_t o = {.group = "lp", .topic = "quiet2", .wait_ms = 30000,
                           .from = TXMQ_FROM_LATEST};
  assert_int_equal(txmq_client_receive(c, &o, on_receive, &r), 0);
  int never = 0;
  tu_run_until(&fx->loop, &never, 100);
  fx_stop_server(fx);
  /* The long poll is answered (or failed) and the loss is reported. */
  for (int i = 0; i < 100 && (!r.done || !k.lost); i++) tu_run_until(&fx->loop, &never, 20);
  assert_int_equal(r.done, 1);
  assert_int_equal(k.lost, 1);
  assert_false(txmq_client_is_connected(c));
  spy_t p = {0};
  assert_int_equal(txmq_client_ping(c, on_int, &p), TXMQ_ECLOSED);
  close_now(fx, c, &k);
  assert_int_equal(p.calls, 0);
}

/* ---- authentication ---- */

static void on_send_status(txmq_client_t* c, int status,
                           const txmq_send_result_t* r, void* arg) {
  (void)r;
  spy_t* s = arg;
  s->calls++;
  s->status = status;
  snprintf(s->text, sizeof s->text, "%s", status ? txmq_client_diag(c) : "");
  s->done = 1;
}

static int send_one(fx_t* fx, txmq_client_t* c, const char* topic, spy_t* s) {
  memset(s, 0, sizeof *s);
  txmq_msg_t* m = mk(topic, "auth body");
  assert_int_equal(txmq_client_send(c, m, on_send_status, s), 0);
  txmq_msg_free(m);
  assert_true(tu_run_until(&fx->loop, &s->done, 5000));
  return s->status;
}

static int receive_status(fx_t* fx, txmq_client_t* c, const char* group,
                          const char* topic, recv_t* r, char* diag) {
  memset(r, 0, sizeof *r);
  txmq_receive_opts_t o = {.group = group, .topic = topic, .max = 8};
  assert_int_equal(txmq_client_receive(c, &o, on_receive, r), 0);
  assert_true(tu_run_until(&fx->loop, &r->done, 5000));
  snprintf(diag, 256, "%s", r->status ? txmq_client_diag(c) : "");
  for (size_t i = 0; i < r->n; i++) free(r->handles[i]);
  return r->status;
}

/* A hello refused with EAUTH: the connect fails with the server's reason,
 * and the client is left unconnected. */
static void refused(fx_t* fx, const char* id, txmq_role_t role,
                    const char* secret, const char* why) {
  cli_t k;
  txmq_client_t* c = client_secret(fx, id, role, NULL, secret, &k);
  assert_int_equal(connect_status(fx, c, &k), TXMQ_EAUTH);
  if (strstr(k.diag, why) == NULL)
    fail_msg("diag '%s' does not say '%s'", k.diag, why);
  assert_false(txmq_client_is_connected(c));
  close_now(fx, c, &k);
}

static void auth_secrets_by_role(void** state) {
  fx_t* fx = *state;
  /* Setting secrets: bounds, roles, and not once started. */
  assert_int_equal(txmq_server_set_secret(fx->srv, "consumer", "short"),
                   TXMQ_EBUSY);
  spy_t s;
  recv_t r;
  char diag[256];

  /* A producer with its own secret: producer operations only. */
  cli_t kp;
  txmq_client_t* p = client_secret(fx, "auth-p", TXMQ_ROLE_PRODUCER, "ag",
                                   P_SECRET, &kp);
  connect_now(fx, p, &kp);
  assert_int_equal(send_one(fx, p, "auth-t", &s), 0);
  assert_int_equal(receive_status(fx, p, "cg", "auth-t", &r, diag),
                   TXMQ_EPROTO);
  assert_string_equal(diag, "op 'receive' needs role \"consumer\" or "
                            "\"admin\"; this connection's role is "
                            "\"producer\"");
  spy_t rl = {0};
  assert_int_equal(txmq_client_reload(p, "ag", on_reply, &rl), 0);
  assert_true(tu_run_until(&fx->loop, &rl.done, 5000));
  assert_int_equal(rl.status, TXMQ_EPROTO);
  assert_non_null(strstr(rl.text, "needs role \"admin\""));
  /* Refused operations leave the connection open. */
  assert_true(txmq_client_is_connected(p));
  spy_t st = {0};
  assert_int_equal(txmq_client_status(p, on_reply, &st), 0);
  assert_true(tu_run_until(&fx->loop, &st.done, 5000));
  assert_int_equal(st.status, 0);
  close_now(fx, p, &kp);

  /* A consumer with the admin secret (consumers have none of their own):
   * consumer operations only. */
  cli_t kc;
  txmq_client_t* c = client_secret(fx, "auth-c", TXMQ_ROLE_CONSUMER, NULL,
                                   A_SECRET, &kc);
  connect_now(fx, c, &kc);
  assert_int_equal(receive_status(fx, c, "cg", "auth-t", &r, diag), 0);
  assert_int_equal(r.n, 1);
  assert_int_equal(send_one(fx, c, "auth-t", &s), TXMQ_EPROTO);
  assert_non_null(strstr(s.text, "needs role \"producer\" or \"admin\""));
  assert_true(txmq_client_is_connected(c));
  close_now(fx, c, &kc);

  /* The admin secret for a producer; an admin may do everything. */
  p = client_secret(fx, "auth-p2", TXMQ_ROLE_PRODUCER, NULL, A_SECRET, &kp);
  connect_now(fx, p, &kp);
  assert_int_equal(send_one(fx, p, "auth-t", &s), 0);
  close_now(fx, p, &kp);
  cli_t ka;
  txmq_client_t* a = client_secret(fx, "auth-a", TXMQ_ROLE_ADMIN, NULL,
                                   A_SECRET, &ka);
  connect_now(fx, a, &ka);
  assert_int_equal(send_one(fx, a, "auth-t", &s), 0);
  assert_int_equal(receive_status(fx, a, "cg2", "auth-t", &r, diag), 0);
  assert_int_equal(r.n, 3);

  /* Refusals: EAUTH, then the server closes the connection. */
  refused(fx, "bad-1", TXMQ_ROLE_PRODUCER, "producer-secret-2", "wrong secret");
  refused(fx, "bad-2", TXMQ_ROLE_PRODUCER, NULL, "needs its secret");
  refused(fx, "bad-3", TXMQ_ROLE_ADMIN, P_SECRET, "wrong secret");
  refused(fx, "bad-4", TXMQ_ROLE_CONSUMER, P_SECRET,
          "role \"consumer\" has no secret");
  refused(fx, "bad-5", TXMQ_ROLE_CONSUMER, NULL, "has no secret");

  /* status: auth on and its refusals counted. */
  spy_t sa = {0};
  assert_int_equal(txmq_client_status(a, on_reply, &sa), 0);
  assert_true(tu_run_until(&fx->loop, &sa.done, 5000));
  assert_int_equal(sa.status, 0);
  close_now(fx, a, &ka);
  /* The refusals are logged, without the secrets (the wrong ones either). */
  fx->log[fx->loglen] = '\0';
  assert_non_null(strstr(fx->log, "msg=\"authentication failed\" conn="));
  assert_non_null(strstr(fx->log, "client=bad-4 role=consumer "
                                  "reason=\"role has no secret\""));
  assert_null(strstr(fx->log, "secret-1"));
  assert_null(strstr(fx->log, "secret-2"));
  assert_null(strstr(fx->log, "secret-42"));
}

/* status says auth is on and counts the refusals. */
static void on_status_auth(txmq_client_t* c, int status, const msgpack_object* o,
                           void* arg) {
  (void)c;
  spy_t* s = arg;
  s->status = status;
  const msgpack_object* a = txmq_client_map_get(o, "auth");
  const msgpack_object* f = txmq_client_map_get(o, "auth_failures");
  s->value = f && f->type == MSGPACK_OBJECT_POSITIVE_INTEGER ? (int64_t)f->via.u64
                                                             : -1;
  snprintf(s->text, sizeof s->text, "%s",
           a && a->type == MSGPACK_OBJECT_BOOLEAN ? (a->via.boolean ? "on" : "off")
                                                  : "?");
  s->done = 1;
}

static void auth_status_counts_refusals(void** state) {
  fx_t* fx = *state;
  refused(fx, "bad-1", TXMQ_ROLE_PRODUCER, "nope-nope-nope", "wrong secret");
  /* A consumer may not answer checks: producer_groups is refused. */
  cli_t k;
  txmq_client_t* c = client_secret(fx, "c-groups", TXMQ_ROLE_CONSUMER, "pg",
                                   A_SECRET, &k);
  assert_int_equal(connect_status(fx, c, &k), TXMQ_EPROTO);
  assert_non_null(strstr(k.diag, "producer_groups"));
  close_now(fx, c, &k);
  c = client_secret(fx, "c-ok", TXMQ_ROLE_CONSUMER, NULL, A_SECRET, &k);
  connect_now(fx, c, &k);
  spy_t s = {0};
  assert_int_equal(txmq_client_status(c, on_status_auth, &s), 0);
  assert_true(tu_run_until(&fx->loop, &s.done, 5000));
  assert_int_equal(s.status, 0);
  assert_string_equal(s.text, "on");
  assert_int_equal(s.value, 1);
  close_now(fx, c, &k);
}

/* Auth off: roles are declarations (a producer may receive), a secret is
 * ignored, and only the admin operations check the role, as before. */
static void auth_off_as_before(void** state) {
  fx_t* fx = *state;
  assert_int_equal(txmq_server_set_secret(fx->srv, "producer", P_SECRET),
                   TXMQ_EBUSY);
  cli_t k;
  txmq_client_t* p = client_secret(fx, "off-p", TXMQ_ROLE_PRODUCER, NULL,
                                   "whatever-it-is", &k);
  connect_now(fx, p, &k);
  spy_t s;
  recv_t r;
  char diag[256];
  assert_int_equal(send_one(fx, p, "off-t", &s), 0);
  assert_int_equal(receive_status(fx, p, "g", "off-t", &r, diag), 0);
  assert_int_equal(r.n, 1);
  spy_t rl = {0};
  assert_int_equal(txmq_client_reload(p, "g", on_reply, &rl), 0);
  assert_true(tu_run_until(&fx->loop, &rl.done, 5000));
  assert_int_equal(rl.status, TXMQ_EPROTO);
  assert_string_equal(rl.text, "op 'reload' needs role \"admin\"");
  spy_t st = {0};
  assert_int_equal(txmq_client_status(p, on_status_auth, &st), 0);
  assert_true(tu_run_until(&fx->loop, &st.done, 5000));
  assert_string_equal(st.text, "off");
  assert_int_equal(st.value, 0);
  close_now(fx, p, &k);
}

/* txmq_server_set_secret's checks, on a second server that is never
 * started (over the fixture's runtime). */
static void on_srv2_closed(txmq_server_t* srv, void* arg) {
  (void)srv;
  *(int*)arg = 1;
}

static void set_secret_arguments(void** state) {
  fx_t* fx = *state;
  txmq_server_t* srv;
  assert_int_equal(txmq_server_new(&srv, &fx->loop, fx->rt, NULL), 0);
  assert_int_equal(txmq_server_set_secret(srv, "producer", "1234567"), TXMQ_EINVAL);
  char big[258];
  memset(big, 's', sizeof big - 1);
  big[257] = '\0';
  assert_int_equal(txmq_server_set_secret(srv, "producer", big), TXMQ_EINVAL);
  big[256] = '\0';
  assert_int_equal(txmq_server_set_secret(srv, "producer", big), 0);
  assert_int_equal(txmq_server_set_secret(srv, "producer", "12345678"), 0);
  assert_int_equal(txmq_server_set_secret(srv, "king", "12345678"), TXMQ_EINVAL);
  assert_int_equal(txmq_server_set_secret(srv, NULL, "12345678"), TXMQ_EINVAL);
  assert_int_equal(txmq_server_set_secret(srv, "producer", NULL), 0);
  assert_int_equal(txmq_server_set_secret(srv, "admin", "12345678"), 0);
  int done = 0;
  assert_int_equal(txmq_server_close(srv, on_srv2_closed, &done), 0);
  assert_int_equal(txmq_server_set_secret(srv, "admin", "12345678"), TXMQ_EBUSY);
  assert_true(tu_run_until(&fx->loop, &done, 5000));
  txmq_server_free(srv);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(hosted_transaction_checked, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(check_goes_to_another_member, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(multi_message_transaction, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(operator_decision, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(pipelined_sends_and_consume, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(admin_replies, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(close_fails_long_poll, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(server_closes_under_client, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(auth_secrets_by_role, fx_setup_auth, fx_teardown),
      cmocka_unit_test_setup_teardown(auth_status_counts_refusals, fx_setup_auth, fx_teardown),
      cmocka_unit_test_setup_teardown(auth_off_as_before, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(set_secret_arguments, fx_setup, fx_teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
