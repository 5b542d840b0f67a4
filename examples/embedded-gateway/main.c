/*
 * embedded-gateway - an edge gateway that embeds libtxmq, using only its
 * public headers. It shows the runtime-hosted transaction from a host
 * program's side:
 *
 *   - the runtime (store, transaction engine, Lua handler host) runs on the
 *     program's own libuv loop;
 *   - the local transaction is C-side state, the gateway's ledger of orders
 *     and credit; the group's Lua handlers reach it only through C
 *     functions the program registers under txmq.host (apply, hold,
 *     refuse, state), which run on the handler worker threads;
 *   - executeLocalTransaction decides COMMIT, ROLLBACK or UNKNOWN; an
 *     UNKNOWN order is settled later by checkLocalTransaction, which asks
 *     the ledger again after an operator (here: the program) decided it;
 *   - the program rewrites its handler script while it runs, the runtime's
 *     file watch hot-reloads it and says so (txmq_script_set_loaded_cb),
 *     and the next orders are decided by the new version (every decision
 *     names the version that made it);
 *   - a consumer group reads the topic and gets exactly the committed
 *     orders, each once.
 *
 *   embedded-gateway [--scripts SRC] [DATA]
 *
 * DATA (default ./gateway-data) holds the store (DATA/store) and the
 * handler script the runtime loads (DATA/scripts/gateway.lua), copied from
 * SRC/v1/gateway.lua at start and overwritten with SRC/v2/gateway.lua for
 * the hot reload. The program prints what happens in plain words and exits
 * 0 only if every expected outcome held (1 if one did not, 2 if it could
 * not run). A DATA folder from an earlier run can be reused: the consumer
 * group resumes where it stopped, and messages are tagged with the run
 * that sent them.
 *
 * It is an example, not a tool: the ledger lives in memory (a real gateway
 * keeps it durable, since checkLocalTransaction must still answer after a
 * restart), and the orders are a fixed list.
 */
/* getopt_long, clock_gettime and fsync also when it is built outside the
 * tree with -std=c11 (the tree's build defines it for every file). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <lauxlib.h>
#include <msgpack.h>
#include <uv.h>

#include <txmq/consumer.h>
#include <txmq/error.h>
#include <txmq/msg.h>
#include <txmq/runtime.h>

#ifndef GATEWAY_SCRIPTS_DIR
#define GATEWAY_SCRIPTS_DIR "examples/embedded-gateway/scripts"
#endif

#define GROUP "gateway"      /* producer group: DATA/scripts/gateway.lua */
#define PRODUCER "gateway-1" /* this program, in the audit trail */
#define TOPIC "orders"
#define UPLINK "uplink"      /* the consumer group */
#define CREDIT 1000
#define MAX_ORDERS 32
#define ORDER_ID_MAX 32      /* bytes, with the NUL */
#define MAX_PATH 4096
#define TICK_MS 20
#define WAIT_MS 15000        /* for anything the program waits for */
#define WATCH_WAIT_MS 5000   /* for the file watch, before reloading by hand */

/* ---- the ledger: the gateway's local transactions, on the C side ---- */

typedef enum {
  ORDER_NONE = 0,
  ORDER_APPLIED,
  ORDER_HELD,
  ORDER_REFUSED
} order_state_t;

static const char* const STATE_NAMES[] = {"none", "applied", "held", "refused"};

typedef struct {
  char id[ORDER_ID_MAX];
  int64_t amount;
  order_state_t state;
  unsigned queries; /* how often state() asked about it */
  char note[128];   /* the last change, in words */
} entry_t;

/* The handlers call into it from worker threads, possibly at once from
 * several Lua states, so every access takes the mutex. */
typedef struct {
  uv_mutex_t mu;
  int64_t credit;
  entry_t entries[MAX_ORDERS];
  size_t n;
} ledger_t;

/* The entry of order id, created if new; NULL if the ledger is full.
 * Under lg->mu. */
static entry_t* ledger_entry(ledger_t* lg, const char* id, int create) {
  for (size_t i = 0; i < lg->n; i++) {
    if (strcmp(lg->entries[i].id, id) == 0) return &lg->entries[i];
  }
  if (!create || lg->n == MAX_ORDERS) return NULL;
  entry_t* e = &lg->entries[lg->n++];
  memset(e, 0, sizeof *e);
  snprintf(e->id, sizeof e->id, "%s", id);
  return e;
}

/* An order id argument. Arguments are checked before the mutex is taken:
 * a Lua error unwinds with a longjmp and would leave it locked. */
static const char* order_arg(lua_State* L, int i) {
  size_t len;
  const char* id = luaL_checklstring(L, i, &len);
  luaL_argcheck(L, len > 0 && len < ORDER_ID_MAX, i,
                "an order id of 1 to 31 bytes");
  return id;
}

static lua_Integer amount_arg(lua_State* L, int i) {
  lua_Integer amount = luaL_checkinteger(L, i);
  luaL_argcheck(L, amount > 0, i, "a positive amount");
  return amount;
}

/* Pushes the order's state after a change, or raises "ledger full". */
static int push_state(lua_State* L, int full, order_state_t s) {
  if (full) return luaL_error(L, "the ledger is full");
  lua_pushstring(L, STATE_NAMES[s]);
  return 1;
}

/* txmq.host.apply(order, amount): debits the credit and marks the order
 * applied, or refuses it when the credit is short. A decided order is left
 * as it is (the first decision wins). Returns the order's state. */
static int host_apply(lua_State* L) {
  ledger_t* lg = txmq_script_fn_arg(L);
  const char* id = order_arg(L, 1);
  lua_Integer amount = amount_arg(L, 2);
  uv_mutex_lock(&lg->mu);
  entry_t* e = ledger_entry(lg, id, 1);
  order_state_t s = ORDER_NONE;
  if (e != NULL) {
    if (e->state == ORDER_NONE) {
      e->amount = amount;
      if (amount <= lg->credit) {
        lg->credit -= amount;
        e->state = ORDER_APPLIED;
        snprintf(e->note, sizeof e->note, "applied, %" PRId64 " credit left",
                 lg->credit);
      } else {
        e->state = ORDER_REFUSED;
        snprintf(e->note, sizeof e->note,
                 "refused, not enough credit: %" PRId64 " asked, %" PRId64 " left",
                 (int64_t)amount, lg->credit);
      }
    }
    s = e->state;
  }
  uv_mutex_unlock(&lg->mu);
  return push_state(L, e == NULL, s);
}

/* txmq.host.hold(order, amount): reserves the credit for an operator to
 * decide on; refuses the order when the credit is short. */
static int host_hold(lua_State* L) {
  ledger_t* lg = txmq_script_fn_arg(L);
  const char* id = order_arg(L, 1);
  lua_Integer amount = amount_arg(L, 2);
  uv_mutex_lock(&lg->mu);
  entry_t* e = ledger_entry(lg, id, 1);
  order_state_t s = ORDER_NONE;
  if (e != NULL) {
    if (e->state == ORDER_NONE) {
      e->amount = amount;
      if (amount <= lg->credit) {
        lg->credit -= amount;
        e->state = ORDER_HELD;
        snprintf(e->note, sizeof e->note,
                 "held for an operator, %" PRId64 " reserved, %" PRId64
                 " credit left", (int64_t)amount, lg->credit);
      } else {
        e->state = ORDER_REFUSED;
        snprintf(e->note, sizeof e->note,
                 "refused, not enough credit to hold %" PRId64, (int64_t)amount);
      }
    }
    s = e->state;
  }
  uv_mutex_unlock(&lg->mu);
  return push_state(L, e == NULL, s);
}

/* txmq.host.refuse(order, reason): records that the order was refused. */
static int host_refuse(lua_State* L) {
  ledger_t* lg = txmq_script_fn_arg(L);
  const char* id = order_arg(L, 1);
  const char* reason = luaL_optstring(L, 2, "no reason given");
  uv_mutex_lock(&lg->mu);
  entry_t* e = ledger_entry(lg, id, 1);
  order_state_t s = ORDER_NONE;
  if (e != NULL) {
    if (e->state == ORDER_NONE) {
      e->state = ORDER_REFUSED;
      snprintf(e->note, sizeof e->note, "refused, %s", reason);
    }
    s = e->state;
  }
  uv_mutex_unlock(&lg->mu);
  return push_state(L, e == NULL, s);
}

/* txmq.host.state(order): what became of the order ("none" if the ledger
 * never saw it). */
static int host_state(lua_State* L) {
  ledger_t* lg = txmq_script_fn_arg(L);
  const char* id = order_arg(L, 1);
  uv_mutex_lock(&lg->mu);
  entry_t* e = ledger_entry(lg, id, 0);
  order_state_t s = ORDER_NONE;
  if (e != NULL) {
    e->queries++;
    s = e->state;
  }
  uv_mutex_unlock(&lg->mu);
  lua_pushstring(L, STATE_NAMES[s]);
  return 1;
}

/* The operator's approval of a held order, from the loop thread. */
static int ledger_approve(ledger_t* lg, const char* id) {
  int rc = -1;
  uv_mutex_lock(&lg->mu);
  entry_t* e = ledger_entry(lg, id, 0);
  if (e != NULL && e->state == ORDER_HELD) {
    e->state = ORDER_APPLIED;
    snprintf(e->note, sizeof e->note,
             "approved by the operator, %" PRId64 " credit left", lg->credit);
    rc = 0;
  }
  uv_mutex_unlock(&lg->mu);
  return rc;
}

/* A copy of an order's entry (zeroed if the ledger never saw it), and the
 * credit, read from the loop thread. */
static int64_t ledger_read(ledger_t* lg, const char* id, entry_t* out) {
  uv_mutex_lock(&lg->mu);
  entry_t* e = ledger_entry(lg, id, 0);
  if (e != NULL) *out = *e;
  else memset(out, 0, sizeof *out);
  int64_t credit = lg->credit;
  uv_mutex_unlock(&lg->mu);
  return credit;
}

/* ---- the orders and what must become of them ---- */

typedef struct {
  const char* id;
  const char* device;
  int64_t amount;
  int version;           /* the handler version that decides it: 1 or 2 */
  txmq_tx_state_t want;  /* its final state */
  int by_check;          /* executeLocalTransaction answers UNKNOWN and a
                            check decides, after the operator approved */
} order_t;

static const order_t ORDERS[] = {
    {"order-1", "kiosk-1", 40, 1, TXMQ_TX_COMMITTED, 0},
    {"order-2", "kiosk-2", 250, 1, TXMQ_TX_ROLLED_BACK, 0}, /* over v1's limit */
    {"order-3", "kiosk-1", 90, 1, TXMQ_TX_COMMITTED, 0},
    {"order-4", "kiosk-2", 250, 2, TXMQ_TX_COMMITTED, 0},   /* v2: within */
    {"order-5", "kiosk-3", 600, 2, TXMQ_TX_COMMITTED, 1},   /* v2: held */
    {"order-6", "kiosk-1", 100, 2, TXMQ_TX_ROLLED_BACK, 0}, /* credit short */
};
#define NORDERS (sizeof ORDERS / sizeof ORDERS[0])

/* What became of one order, as the runtime reported it. */
typedef struct {
  int done;
  int status;
  txmq_tx_state_t state;
  uint8_t tx_id[TXMQ_TX_ID_LEN];
  char version[TXMQ_SCRIPT_VERSION_LEN + 1];
  char diag[256];
  unsigned delivered;
} outcome_t;

typedef struct {
  uv_loop_t loop;
  uv_timer_t tick;
  txmq_runtime_t* rt;
  txmq_consumers_t* cs;
  ledger_t ledger;
  const char* src;          /* the scripts shipped with the example */
  char data[MAX_PATH];
  char store[MAX_PATH];
  char scripts[MAX_PATH];   /* the runtime's scripts dir */
  char run[32];             /* this run's id: property "run" of its orders */
  char ver[3][TXMQ_SCRIPT_VERSION_LEN + 1]; /* [1], [2]: versions' hashes */
  outcome_t out[NORDERS];
  int reload_done;
  int reload_status;
  size_t loads;             /* of the group's script, as the runtime told */
  int load_status;          /* the last load's */
  char load_diag[256];
  int closed;
  int failures;
} gateway_t;

/* ---- small helpers ---- */

static void fail(gateway_t* gw, const char* fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void fail(gateway_t* gw, const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  printf("FAILED: ");
  vprintf(fmt, ap);
  printf("\n");
  va_end(ap);
  gw->failures++;
}

static uint64_t mono_ms(void) { return uv_hrtime() / 1000000u; }

static void on_tick(uv_timer_t* t) { (void)t; }

/* Runs the loop until cond holds or ms pass; returns whether it held. The
 * tick timer wakes the loop at least every TICK_MS, so a deadline is seen
 * even when nothing else happens. */
static int wait_until(gateway_t* gw, int (*cond)(gateway_t* gw, size_t i),
                      size_t i, uint64_t ms) {
  uint64_t deadline = mono_ms() + ms;
  while (!cond(gw, i)) {
    if (mono_ms() >= deadline) return 0;
    uv_run(&gw->loop, UV_RUN_ONCE);
  }
  return 1;
}

/* "v1", "v2", or the hash of a version the program did not write. */
static const char* label(const gateway_t* gw, const char* version) {
  if (version == NULL || version[0] == '\0') return "no version";
  if (strcmp(version, gw->ver[1]) == 0) return "v1";
  if (strcmp(version, gw->ver[2]) == 0) return "v2";
  return version;
}

static int mkdir_p(const char* path) {
  char p[MAX_PATH];
  if (snprintf(p, sizeof p, "%s", path) >= (int)sizeof p) return -1;
  for (char* s = p + 1; *s != '\0'; s++) {
    if (*s != '/') continue;
    *s = '\0';
    if (mkdir(p, 0755) != 0 && errno != EEXIST) return -1;
    *s = '/';
  }
  return mkdir(p, 0755) != 0 && errno != EEXIST ? -1 : 0;
}

/* Puts SRC/<version>/gateway.lua in place as the runtime's
 * scripts/gateway.lua. It is written to a temporary name and renamed, so
 * that the file watch never loads a half-written script (the watch only
 * looks at *.lua names). */
static int install_script(gateway_t* gw, const char* version) {
  char from[MAX_PATH], to[MAX_PATH], tmp[MAX_PATH];
  int n1 = snprintf(from, sizeof from, "%s/%s/" GROUP ".lua", gw->src, version);
  int n2 = snprintf(to, sizeof to, "%s/" GROUP ".lua", gw->scripts);
  int n3 = snprintf(tmp, sizeof tmp, "%s/." GROUP ".lua.tmp", gw->scripts);
  if (n1 >= MAX_PATH || n2 >= MAX_PATH || n3 >= MAX_PATH) {
    fprintf(stderr, "embedded-gateway: %s: path too long\n", gw->scripts);
    return -1;
  }
  FILE* in = fopen(from, "rb");
  if (in == NULL) {
    fprintf(stderr, "embedded-gateway: %s: %s (see --scripts)\n", from,
            strerror(errno));
    return -1;
  }
  char buf[16384];
  size_t n = fread(buf, 1, sizeof buf, in);
  int bad = ferror(in) || !feof(in); /* a handler script is small */
  fclose(in);
  if (bad) {
    fprintf(stderr, "embedded-gateway: %s: unreadable or too big\n", from);
    return -1;
  }
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  int ok = fd >= 0 && write(fd, buf, n) == (ssize_t)n && fsync(fd) == 0;
  if (fd >= 0 && close(fd) != 0) ok = 0;
  if (!ok || rename(tmp, to) != 0) {
    fprintf(stderr, "embedded-gateway: writing %s: %s\n", to, strerror(errno));
    return -1;
  }
  return 0;
}

/* ---- sending orders ---- */

static void on_decided(txmq_runtime_t* rt, int status, const uint8_t* tx_id,
                       const uint8_t* msg_ids, size_t nmsgs,
                       txmq_tx_state_t state, const char* version,
                       const char* diag, void* arg) {
  (void)rt;
  (void)msg_ids;
  (void)nmsgs;
  outcome_t* o = arg;
  o->status = status;
  o->state = state;
  if (tx_id != NULL) memcpy(o->tx_id, tx_id, TXMQ_TX_ID_LEN);
  snprintf(o->version, sizeof o->version, "%s", version);
  snprintf(o->diag, sizeof o->diag, "%s", diag);
  o->done = 1;
}

static int cond_decided(gateway_t* gw, size_t i) { return gw->out[i].done; }

static txmq_msg_t* order_msg(const gateway_t* gw, const order_t* o) {
  char body[128], amount[24];
  int blen = snprintf(body, sizeof body, "%s: %" PRId64 " from %s", o->id,
                      o->amount, o->device);
  snprintf(amount, sizeof amount, "%" PRId64, o->amount);
  txmq_msg_t* m = txmq_msg_new();
  if (m == NULL) return NULL;
  int rc = txmq_msg_set_topic(m, TOPIC);
  if (rc == 0) rc = txmq_msg_set_tags(m, "order");
  if (rc == 0) rc = txmq_msg_set_keys(m, o->id);
  if (rc == 0) rc = txmq_msg_prop_set(m, "device", o->device);
  if (rc == 0) rc = txmq_msg_prop_set(m, "amount", amount);
  if (rc == 0) rc = txmq_msg_prop_set(m, "run", gw->run);
  if (rc == 0) rc = txmq_msg_set_body(m, body, (size_t)blen);
  if (rc != 0) {
    txmq_msg_free(m);
    return NULL;
  }
  return m;
}

/* executeLocalTransaction's arg: {order = ..., device = ..., amount = ...}
 * as one msgpack map. */
static int order_arg_pack(const order_t* o, msgpack_sbuffer* sb) {
  msgpack_packer pk;
  msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
  int rc = msgpack_pack_map(&pk, 3);
  rc |= msgpack_pack_str_with_body(&pk, "order", 5);
  rc |= msgpack_pack_str_with_body(&pk, o->id, strlen(o->id));
  rc |= msgpack_pack_str_with_body(&pk, "device", 6);
  rc |= msgpack_pack_str_with_body(&pk, o->device, strlen(o->device));
  rc |= msgpack_pack_str_with_body(&pk, "amount", 6);
  rc |= msgpack_pack_int64(&pk, o->amount);
  return rc;
}

/* Sends order i in a runtime-hosted transaction, waits until the handler
 * decided, prints the outcome and checks it against the expectation. */
static void send_order(gateway_t* gw, size_t i) {
  const order_t* o = &ORDERS[i];
  outcome_t* out = &gw->out[i];
  txmq_msg_t* m = order_msg(gw, o);
  msgpack_sbuffer sb;
  msgpack_sbuffer_init(&sb);
  int rc = m == NULL || order_arg_pack(o, &sb) != 0 ? TXMQ_ENOMEM : 0;
  if (rc == 0) {
    rc = txmq_runtime_tx_send(gw->rt, GROUP, PRODUCER, &m, 1, sb.data, sb.size,
                              0, on_decided, out);
  }
  msgpack_sbuffer_destroy(&sb);
  txmq_msg_free(m); /* only read during the call */
  if (rc != 0) {
    fail(gw, "%s: txmq_runtime_tx_send: %s", o->id, txmq_strerror(rc));
    return;
  }
  if (!wait_until(gw, cond_decided, i, WAIT_MS)) {
    fail(gw, "%s: no outcome within %d s", o->id, WAIT_MS / 1000);
    return;
  }
  entry_t e;
  ledger_read(&gw->ledger, o->id, &e);
  const char* v = label(gw, out->version);
  if (out->status != 0) {
    fail(gw, "%s: the transaction failed: %s (%s)", o->id,
         txmq_strerror(out->status), out->diag);
    return;
  }
  switch (out->state) {
    case TXMQ_TX_COMMITTED:
      printf("%s: %" PRId64 " from %s -> committed by %s (ledger: %s)\n", o->id,
             o->amount, o->device, v, e.note);
      break;
    case TXMQ_TX_ROLLED_BACK:
      printf("%s: %" PRId64 " from %s -> rolled back by %s (ledger: %s)\n",
             o->id, o->amount, o->device, v, e.note);
      break;
    default:
      printf("%s: %" PRId64 " from %s -> %s answered UNKNOWN, the order is "
             "pending (ledger: %s)\n", o->id, o->amount, o->device, v,
             e.note[0] != '\0' ? e.note : "never reached");
      if (out->diag[0] != '\0') printf("  the runtime says: %s\n", out->diag);
      break;
  }
  txmq_tx_state_t want = o->by_check ? TXMQ_TX_PENDING : o->want;
  if (out->state != want) {
    fail(gw, "%s: expected %s, got %s", o->id, txmq_tx_state_name(want),
         txmq_tx_state_name(out->state));
  }
  if (strcmp(out->version, gw->ver[o->version]) != 0) {
    fail(gw, "%s: expected v%d to decide, but %s did", o->id, o->version, v);
  }
}

/* ---- the consumer ---- */

static int order_index(const char* id) {
  for (size_t i = 0; i < NORDERS; i++) {
    if (id != NULL && strcmp(ORDERS[i].id, id) == 0) return (int)i;
  }
  return -1;
}

/* Receives and acknowledges everything the uplink group can get now;
 * returns how many of this run's orders arrived. */
static int consume(gateway_t* gw) {
  int got = 0;
  for (;;) {
    txmq_delivery_t* d = NULL;
    size_t n = 0;
    int rc = txmq_consumers_receive(gw->cs, UPLINK, TOPIC, NULL, 16, 0,
                                    TXMQ_FROM_EARLIEST, 0, &d, &n);
    if (rc != 0) {
      fail(gw, "receive: %s", txmq_strerror(rc));
      return got;
    }
    if (n == 0) break;
    for (size_t k = 0; k < n; k++) {
      const txmq_msg_t* m = d[k].msg;
      const char* run = txmq_msg_prop_get(m, "run");
      int i = order_index(txmq_msg_keys(m));
      size_t blen;
      const char* body = txmq_msg_body(m, &blen);
      if (run == NULL || strcmp(run, gw->run) != 0 || i < 0) {
        printf("uplink: skipped a message from an earlier run: %.*s\n",
               (int)blen, body);
      } else {
        outcome_t* o = &gw->out[i];
        o->delivered++;
        got++;
        printf("uplink: received %.*s (offset %" PRId64 ", delivery %u)\n",
               (int)blen, body, txmq_msg_queue_offset(m), d[k].deliveries);
        if (o->state != TXMQ_TX_COMMITTED) {
          fail(gw, "%s was delivered while it is %s", ORDERS[i].id,
               txmq_tx_state_name(o->state));
        } else if (o->delivered > 1) {
          fail(gw, "%s was delivered %u times", ORDERS[i].id, o->delivered);
        }
      }
      rc = txmq_consumers_ack(gw->cs, UPLINK, d[k].handle);
      if (rc != 0) fail(gw, "ack: %s", txmq_strerror(rc));
    }
    txmq_consumers_free_deliveries(d, n);
  }
  return got;
}

static int cond_delivered(gateway_t* gw, size_t i) {
  consume(gw);
  return gw->out[i].delivered > 0;
}

/* ---- the hot reload ---- */

static void on_reload(txmq_script_host_t* host, int status, const char* group,
                      const char* version, const char* diag, void* arg) {
  (void)host;
  (void)group;
  gateway_t* gw = arg;
  gw->reload_status = status;
  if (status != 0) {
    fprintf(stderr, "embedded-gateway: loading " GROUP ".lua: %s: %s\n",
            txmq_strerror(status), diag);
  }
  (void)version; /* read back with txmq_script_version */
  gw->reload_done = 1;
}

static int cond_reloaded(gateway_t* gw, size_t i) {
  (void)i;
  return gw->reload_done;
}

/* Loads the group's script now and waits for the outcome. */
static int reload_now(gateway_t* gw) {
  gw->reload_done = 0;
  int rc = txmq_script_reload(txmq_runtime_scripts(gw->rt), GROUP, on_reload, gw);
  if (rc == 0 && !wait_until(gw, cond_reloaded, 0, WAIT_MS)) rc = TXMQ_ETIMEDOUT;
  if (rc == 0) rc = gw->reload_status;
  return rc;
}

/* The runtime tells of every load of a script, whatever asked for it: the
 * program's own reload at start, the file watch after an edit. A failed
 * load (the old version keeps serving) is told too. On the loop thread. */
static void on_loaded(txmq_script_host_t* host, int status, const char* group,
                      const char* version, const char* prev_version,
                      const char* diag, void* arg) {
  (void)host;
  (void)version;      /* read back with txmq_script_version */
  (void)prev_version;
  gateway_t* gw = arg;
  if (strcmp(group, GROUP) != 0) return;
  gw->load_status = status;
  snprintf(gw->load_diag, sizeof gw->load_diag, "%s", diag);
  gw->loads++;
}

/* i: the number of loads before. */
static int cond_loaded(gateway_t* gw, size_t i) { return gw->loads > i; }

/* Writes v2 over the running script and waits until the runtime says it
 * loaded it: the file watch notices the change and reloads; if the watch
 * stays silent (a file system without change events), the program asks
 * for the reload itself, as an operator's `txmq reload` would. */
static int hot_reload(gateway_t* gw) {
  txmq_script_host_t* sh = txmq_runtime_scripts(gw->rt);
  printf("gateway: writing handler v2 over %s/" GROUP ".lua while the "
         "runtime runs\n", gw->scripts);
  size_t before = gw->loads;
  if (install_script(gw, "v2") != 0) return -1;
  if (wait_until(gw, cond_loaded, before, WATCH_WAIT_MS)) {
    if (gw->load_status != 0) {
      fail(gw, "the file watch reloaded v2, but it did not load: %s: %s",
           txmq_strerror(gw->load_status), gw->load_diag);
      return -1;
    }
    printf("gateway: the runtime's file watch noticed the edit and "
           "hot-reloaded the script\n");
  } else {
    printf("gateway: the file watch did not report the edit within %d s; "
           "reloading explicitly\n", WATCH_WAIT_MS / 1000);
    int rc = reload_now(gw);
    if (rc != 0) {
      fail(gw, "reloading v2: %s", txmq_strerror(rc));
      return -1;
    }
  }
  const char* v = txmq_script_version(sh, GROUP);
  snprintf(gw->ver[2], sizeof gw->ver[2], "%s", v != NULL ? v : "");
  if (strcmp(gw->ver[2], gw->ver[1]) == 0 || gw->ver[2][0] == '\0') {
    fail(gw, "the runtime still runs v1");
    return -1;
  }
  printf("gateway: handler v2 is live, version %s (v1 was %s): limit 500, "
         "larger orders held for an operator\n", gw->ver[2], gw->ver[1]);
  return 0;
}

/* ---- the order the operator decides ---- */

static int cond_asked(gateway_t* gw, size_t i) {
  entry_t e;
  ledger_read(&gw->ledger, ORDERS[i].id, &e);
  return e.queries > 0;
}

static int cond_committed(gateway_t* gw, size_t i) {
  txmq_tx_info_t info;
  int rc = txmq_tx_show(txmq_runtime_tx(gw->rt), gw->out[i].tx_id, &info, NULL,
                        NULL);
  return rc == 0 && info.state != TXMQ_TX_PENDING;
}

typedef struct {
  const gateway_t* gw;
  int unknowns; /* UNKNOWN answers before the decision */
  int checks;
  char decision[16];
  char decision_version[TXMQ_SCRIPT_VERSION_LEN + 1];
} history_t;

/* One line per event, as `txmq tx show` prints them, with the version
 * named v1 or v2. */
static void on_event(void* arg, const txmq_tx_event_t* ev) {
  history_t* h = arg;
  printf("  %-8s", ev->event);
  if (ev->source != 0) printf(" source=%s", txmq_tx_source_name(ev->source));
  if (ev->version != NULL) printf(" version=%s", label(h->gw, ev->version));
  if (ev->who != NULL) printf(" who=%s", ev->who);
  printf(" check_count=%u\n", ev->check_count);
  if (strcmp(ev->event, "unknown") == 0) h->unknowns++;
  if (strcmp(ev->event, "check") == 0) h->checks++;
  if (strcmp(ev->event, "commit") == 0 || strcmp(ev->event, "rollback") == 0) {
    snprintf(h->decision, sizeof h->decision, "%s", ev->event);
    snprintf(h->decision_version, sizeof h->decision_version, "%s",
             ev->version != NULL ? ev->version : "");
  }
}

/* The held order: it must stay invisible while the ledger says "held",
 * then a check must commit it once the operator approved it. */
static void settle_held_order(gateway_t* gw, size_t i) {
  const order_t* o = &ORDERS[i];
  if (!gw->out[i].done || gw->out[i].state != TXMQ_TX_PENDING) return;
  if (!wait_until(gw, cond_asked, i, WAIT_MS)) {
    fail(gw, "%s: no checkLocalTransaction asked the ledger within %d s", o->id,
         WAIT_MS / 1000);
    return;
  }
  printf("check: checkLocalTransaction asked the ledger about %s: still held, "
         "so the order stays pending\n", o->id);
  if (consume(gw) == 0) {
    printf("uplink: nothing to receive; %s is still a half message, invisible "
           "to consumers\n", o->id);
  }
  if (ledger_approve(&gw->ledger, o->id) != 0) {
    fail(gw, "%s: the operator found nothing to approve", o->id);
    return;
  }
  printf("operator: approves %s in the ledger\n", o->id);
  if (!wait_until(gw, cond_committed, i, WAIT_MS)) {
    fail(gw, "%s: no check decided it within %d s", o->id, WAIT_MS / 1000);
    return;
  }
  history_t h = {gw, 0, 0, "", ""};
  printf("%s: decided by a check; its history (txmq_tx_show):\n", o->id);
  txmq_tx_info_t info;
  int rc = txmq_tx_show(txmq_runtime_tx(gw->rt), gw->out[i].tx_id, &info,
                        on_event, &h);
  if (rc != 0) {
    fail(gw, "%s: txmq_tx_show: %s", o->id, txmq_strerror(rc));
    return;
  }
  gw->out[i].state = info.state;
  if (info.state != TXMQ_TX_COMMITTED || strcmp(h.decision, "commit") != 0) {
    fail(gw, "%s: expected a commit, the transaction is %s", o->id,
         txmq_tx_state_name(info.state));
  }
  if (strcmp(h.decision_version, gw->ver[o->version]) != 0) {
    fail(gw, "%s: expected v%d's check to commit it, but %s did", o->id,
         o->version, label(gw, h.decision_version));
  }
  if (h.unknowns + h.checks < 2) {
    fail(gw, "%s: expected UNKNOWN from executeLocalTransaction and from at "
         "least one check before the commit", o->id);
  }
  if (!wait_until(gw, cond_delivered, i, WAIT_MS)) {
    fail(gw, "%s: committed but not delivered within %d s", o->id,
         WAIT_MS / 1000);
  }
}

/* ---- start and stop ---- */

static int open_runtime(gateway_t* gw) {
  int rc = txmq_runtime_new(&gw->rt, &gw->loop, gw->store, gw->scripts);
  if (rc != 0) {
    fprintf(stderr, "embedded-gateway: txmq_runtime_new: %s\n", txmq_strerror(rc));
    return rc;
  }
  txmq_tx_t* tx = txmq_runtime_tx(gw->rt);
  txmq_script_host_t* sh = txmq_runtime_scripts(gw->rt);
  /* Short check timings so the demo settles in seconds, not minutes: the
   * first check 1 s after the half message, then every 0.5 s. */
  rc = txmq_tx_set(tx, TXMQ_TX_OPT_TIMEOUT_MS, 1000);
  if (rc == 0) rc = txmq_tx_set(tx, TXMQ_TX_OPT_CHECK_INTERVAL_MS, 500);
  if (rc == 0) rc = txmq_script_register(sh, "apply", host_apply, &gw->ledger);
  if (rc == 0) rc = txmq_script_register(sh, "hold", host_hold, &gw->ledger);
  if (rc == 0) rc = txmq_script_register(sh, "refuse", host_refuse, &gw->ledger);
  if (rc == 0) rc = txmq_script_register(sh, "state", host_state, &gw->ledger);
  if (rc == 0) rc = txmq_script_set_loaded_cb(sh, on_loaded, gw);
  if (rc == 0) {
    rc = txmq_consumers_new(&gw->cs, &gw->loop, txmq_runtime_store(gw->rt));
  }
  if (rc != 0) {
    fprintf(stderr, "embedded-gateway: setting up: %s\n", txmq_strerror(rc));
    return rc;
  }
  rc = txmq_runtime_open(gw->rt);
  if (rc != 0) {
    fprintf(stderr, "embedded-gateway: opening the runtime in %s: %s: %s\n",
            gw->data, txmq_strerror(rc), txmq_runtime_diag(gw->rt));
    return rc;
  }
  rc = txmq_consumers_start(gw->cs);
  if (rc == 0) {
    rc = txmq_store_create_topic(txmq_runtime_store(gw->rt), TOPIC, 1);
    if (rc == TXMQ_EEXIST) rc = 0;
  }
  if (rc != 0) {
    fprintf(stderr, "embedded-gateway: starting: %s\n", txmq_strerror(rc));
    return rc;
  }
  rc = reload_now(gw);
  const char* v = txmq_script_version(sh, GROUP);
  if (rc != 0 || v == NULL) {
    fprintf(stderr, "embedded-gateway: loading %s/" GROUP ".lua: %s\n",
            gw->scripts, txmq_strerror(rc != 0 ? rc : TXMQ_ENOTFOUND));
    return rc != 0 ? rc : TXMQ_ENOTFOUND;
  }
  snprintf(gw->ver[1], sizeof gw->ver[1], "%s", v);
  return 0;
}

static void on_consumers_closed(txmq_consumers_t* cs, void* arg) {
  (void)cs;
  ((gateway_t*)arg)->closed = 1;
}

static void on_runtime_closed(txmq_runtime_t* rt, void* arg) {
  (void)rt;
  ((gateway_t*)arg)->closed = 1;
}

static int cond_closed(gateway_t* gw, size_t i) {
  (void)i;
  return gw->closed;
}

/* The consumers first, then the runtime (handlers, engine, store: the log
 * is flushed and a checkpoint keeps the uplink group's progress), then the
 * program's own timer. Returns 0 if the loop closed cleanly. */
static int close_all(gateway_t* gw) {
  int ok = 1;
  gw->closed = 0;
  if (gw->cs != NULL &&
      txmq_consumers_close(gw->cs, on_consumers_closed, gw) == 0) {
    ok &= wait_until(gw, cond_closed, 0, WAIT_MS);
  }
  gw->closed = 0;
  if (gw->rt != NULL && txmq_runtime_close(gw->rt, on_runtime_closed, gw) == 0) {
    ok &= wait_until(gw, cond_closed, 0, WAIT_MS);
    const char* d = txmq_runtime_diag(gw->rt);
    if (d[0] != '\0') fprintf(stderr, "embedded-gateway: closing: %s\n", d);
  }
  uv_close((uv_handle_t*)&gw->tick, NULL);
  uv_run(&gw->loop, UV_RUN_DEFAULT);
  txmq_consumers_free(gw->cs);
  txmq_runtime_free(gw->rt);
  gw->cs = NULL;
  gw->rt = NULL;
  return ok && uv_loop_close(&gw->loop) == 0 ? 0 : -1;
}

/* ---- the run ---- */

static void summary(gateway_t* gw) {
  int committed = 0, rolled_back = 0, pending = 0;
  unsigned delivered = 0;
  for (size_t i = 0; i < NORDERS; i++) {
    const order_t* o = &ORDERS[i];
    const outcome_t* out = &gw->out[i];
    entry_t e;
    ledger_read(&gw->ledger, o->id, &e);
    if (out->state == TXMQ_TX_COMMITTED) committed++;
    else if (out->state == TXMQ_TX_ROLLED_BACK) rolled_back++;
    else pending++;
    delivered += out->delivered;
    if (out->state != o->want) {
      fail(gw, "%s: ended %s, expected %s", o->id, txmq_tx_state_name(out->state),
           txmq_tx_state_name(o->want));
    }
    /* The message and the local transaction must agree. */
    if ((out->state == TXMQ_TX_COMMITTED) != (e.state == ORDER_APPLIED)) {
      fail(gw, "%s: the transaction is %s but the ledger says %s", o->id,
           txmq_tx_state_name(out->state), STATE_NAMES[e.state]);
    }
    unsigned want_deliveries = o->want == TXMQ_TX_COMMITTED ? 1 : 0;
    if (out->delivered != want_deliveries) {
      fail(gw, "%s: delivered %u times, expected %u", o->id, out->delivered,
           want_deliveries);
    }
  }
  entry_t none;
  int64_t credit = ledger_read(&gw->ledger, "", &none);
  printf("summary: %zu orders: %d committed, %d rolled back, %d pending; the "
         "uplink received %u; ledger credit left %" PRId64 " of %d\n",
         NORDERS, committed, rolled_back, pending, delivered, credit, CREDIT);
}

static void usage(FILE* f) {
  fprintf(f, "usage: embedded-gateway [--scripts SRC] [DATA]\n"
             "  DATA  folder for the store and the live script "
             "(default ./gateway-data)\n"
             "  SRC   the example's scripts, holding v1/ and v2/ "
             "(default " GATEWAY_SCRIPTS_DIR ")\n");
}

/* 0: run; 1: --help was printed; -1: bad arguments (usage printed). */
static int parse_args(gateway_t* gw, int argc, char** argv) {
  static const struct option longopts[] = {
      {"scripts", required_argument, NULL, 's'},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0}};
  const char* data = "./gateway-data";
  gw->src = GATEWAY_SCRIPTS_DIR;
  int c;
  while ((c = getopt_long(argc, argv, "s:h", longopts, NULL)) != -1) {
    switch (c) {
      case 's': gw->src = optarg; break;
      case 'h': usage(stdout); return 1;
      default: usage(stderr); return -1;
    }
  }
  if (optind < argc) data = argv[optind++];
  if (optind < argc) {
    usage(stderr);
    return -1;
  }
  int n1 = snprintf(gw->data, sizeof gw->data, "%s", data);
  int n2 = snprintf(gw->store, sizeof gw->store, "%s/store", data);
  int n3 = snprintf(gw->scripts, sizeof gw->scripts, "%s/scripts", data);
  if (n1 >= MAX_PATH || n2 >= MAX_PATH || n3 >= MAX_PATH) {
    fprintf(stderr, "embedded-gateway: %s: path too long\n", data);
    return -1;
  }
  return 0;
}

int main(int argc, char** argv) {
  /* Line by line, so that the runtime's log lines on stderr interleave in
   * order when both go to one pipe. */
  setvbuf(stdout, NULL, _IOLBF, 0);
  gateway_t* gw = calloc(1, sizeof *gw);
  if (gw == NULL) return 2;
  int rc = parse_args(gw, argc, argv);
  if (rc != 0) {
    free(gw);
    return rc > 0 ? 0 : 2;
  }
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  snprintf(gw->run, sizeof gw->run, "%lld%03ld", (long long)ts.tv_sec,
           ts.tv_nsec / 1000000);
  gw->ledger.credit = CREDIT;
  if (uv_mutex_init(&gw->ledger.mu) != 0) {
    free(gw);
    return 2;
  }
  if (uv_loop_init(&gw->loop) != 0) {
    uv_mutex_destroy(&gw->ledger.mu);
    free(gw);
    return 2;
  }
  uv_timer_init(&gw->loop, &gw->tick);
  uv_timer_start(&gw->tick, on_tick, TICK_MS, TICK_MS);

  int setup = -1;
  if (mkdir_p(gw->scripts) != 0) {
    fprintf(stderr, "embedded-gateway: creating %s: %s\n", gw->scripts,
            strerror(errno));
  } else if (install_script(gw, "v1") == 0 && open_runtime(gw) == 0) {
    setup = 0;
  }
  if (setup == 0) {
    printf("gateway: runtime open in %s, run %s, ledger credit %d\n", gw->data,
           gw->run, CREDIT);
    printf("gateway: handler v1 is live, version %s: orders up to 100 are "
           "applied, larger ones refused\n", gw->ver[1]);
    if (consume(gw) > 0) fail(gw, "orders of this run before any was sent");
    for (size_t i = 0; i < NORDERS && ORDERS[i].version == 1; i++) {
      send_order(gw, i);
    }
    consume(gw);
    if (hot_reload(gw) == 0) {
      for (size_t i = 0; i < NORDERS; i++) {
        if (ORDERS[i].version == 2) send_order(gw, i);
      }
      consume(gw);
      for (size_t i = 0; i < NORDERS; i++) {
        if (ORDERS[i].by_check) settle_held_order(gw, i);
      }
    }
    summary(gw);
  }
  if (close_all(gw) != 0) fail(gw, "the loop did not close cleanly");
  uv_mutex_destroy(&gw->ledger.mu);
  int code = setup != 0 ? 2 : gw->failures != 0 ? 1 : 0;
  if (code == 0) printf("gateway: every expected outcome held\n");
  if (code == 1) {
    printf("gateway: %d expected outcome(s) did not hold\n", gw->failures);
  }
  free(gw);
  return code;
}
