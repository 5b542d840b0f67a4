/*
 * net_int.h - internals of the server (txmq/net.h) shared by its files:
 *   server.c   listener, connections, frame reader, output, back-pressure,
 *              timers, close
 *   ops.c      the request operations of PROTOCOL.md section 5
 *   check.c    the check target: server -> producer "check" requests
 *   wire.c     response packing and typed field access on hostile maps
 * Not installed, not part of the ABI.
 */
#ifndef TXMQ_NET_INT_H
#define TXMQ_NET_INT_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <msgpack.h>
#include <uv.h>

#include "common/pool.h"
#include "txmq/consumer.h"
#include "txmq/net.h"
#include "txmq/runtime.h"

/* Limits of one frame's msgpack decoding: nesting depth and objects in all.
 * msgpack-c spends about 24 bytes per object, so the object cap keeps a
 * frame's decoded form within ~1.5 MiB whatever its byte length. */
#define NET_MAX_DEPTH 16
#define NET_MAX_ITEMS 65536
/* Client ids, like names, are at most 127 bytes. */
#define NET_CLIENT_MAX 127
/* Groups one hello may announce (each list). */
#define NET_MAX_HELLO_GROUPS 256
/* Correlation ids are positive integers below 2^53 (exact in a double). */
#define NET_MAX_ID ((UINT64_C(1) << 53) - 1)
/* The shared read buffer: libuv reads at most this much per callback. */
#define NET_READ_CHUNK 65536
/* A connection being closed politely (error frame sent) gets this long to
 * read it before the socket is closed under it. */
#define NET_LINGER_MS 2000
/* After an error answer to a check, that connection is not asked again for
 * the same transaction for this long if another member can be asked. */
#define NET_AVOID_MS 1000
#define NET_AVOID_SLOTS 64
/* Checks a connection may owe answers for; past it the oldest record is
 * forgotten (the engine has long timed it out). */
#define NET_MAX_PENDING_CHECKS 4096

enum { ROLE_PRODUCER = 1, ROLE_CONSUMER = 2, ROLE_ADMIN = 3 };
#define NET_NROLES 4 /* role values index arrays; 0 is unused */
/* A secret's bounds (txmq_server_set_secret). */
#define NET_SECRET_MIN 8
#define NET_SECRET_MAX 256
enum { C_HELLO = 0, C_READY = 1, C_CLOSING = 2 };

typedef struct net_conn_s net_conn_t;
typedef struct net_recv_s net_recv_t;

/* A request waiting for a runtime callback (ops.c). */
typedef struct {
  net_conn_t* c;
  uint64_t id;
} net_req_t;

/* A check sent to a connection, waiting for its answer. */
typedef struct net_pcheck_s {
  struct net_pcheck_s* prev;
  struct net_pcheck_s* next;
  uint64_t sid;                 /* our request id on this connection */
  uint8_t tx_id[16];
  uint64_t seq;                 /* the engine's check sequence */
} net_pcheck_t;

struct net_conn_s {
  uv_tcp_t tcp;
  uv_shutdown_t shut;
  txmq_server_t* srv;
  net_conn_t* prev;   /* in srv->live or srv->dying */
  net_conn_t* next;
  uint64_t cid;       /* unique per server, for round robin and logs */
  int state;          /* C_HELLO, C_READY, C_CLOSING */
  int counted;        /* counts in srv->nconns */
  int reading;
  int eof;            /* the peer closed its side */
  int handle_closing; /* uv_close called */
  int shutdown_done;
  int pumping;
  int pump_again;
  size_t refs;        /* the handle + requests + writes in progress */
  char peer[64];
  char client[NET_CLIENT_MAX + 1];
  int role;
  char** pgroups;     /* producer groups announced in hello */
  size_t npgroups;
  char** cgroups;     /* consumer groups announced in hello */
  size_t ncgroups;
  /* Input: bytes [rpos, rlen) of rbuf are not yet consumed. */
  uint8_t* rbuf;
  size_t rpos;
  size_t rlen;
  size_t rcap;
  int rdirect;   /* the read in progress fills rbuf itself (on_alloc) */
  int rborrowed; /* rbuf is the shared read buffer (pump_in_place) */
  size_t inflight;    /* requests accepted and not yet answered */
  size_t out_bytes;   /* response bytes queued or handed to libuv, not yet
                         written */
  /* Output: responses of this loop turn, written with one write when the
   * turn's callbacks are done (net__flush). */
  char* obuf;
  size_t olen;
  size_t ocap;
  int oqueued;        /* on srv->flushq (holds a ref) */
  net_conn_t* onext;
  uint64_t last_rx;   /* loop ms of the last byte read */
  uint64_t out_full_since;
  uint64_t closing_since;
  uint64_t next_sid;  /* ids of our requests on this connection */
  net_pcheck_t* checks;
  size_t nchecks;
  net_recv_t* waits;  /* long polls of this connection */
};

/* A long-polling receive. */
struct net_recv_s {
  txmq_server_t* srv;
  net_conn_t* c;
  uint64_t id;
  net_recv_t* sprev;  /* in srv->waiters */
  net_recv_t* snext;
  net_recv_t* cnext;  /* in c->waits */
  net_recv_t* wnext;  /* in a wake's work list */
  uv_timer_t timer;
  int waiting;        /* on the lists, timer running */
  char group[128];
  char topic[128];
  char* filter;
  size_t max;
  int64_t visibility_ms;
  int64_t wait_ms;
  uint64_t deadline;  /* loop ms when the wait is over */
  int missing;        /* the topic did not exist at the last look */
  int from;
  int64_t from_offset;
};

typedef struct {
  uint8_t tx_id[16];
  uint64_t cid;
  uint64_t until;
} net_avoid_t;

struct txmq_server_s {
  uv_loop_t* loop;
  txmq_runtime_t* rt;
  txmq_store_t* st;
  txmq_tx_t* tx;
  txmq_script_host_t* scripts;
  txmq_consumers_t* cs;
  uv_tcp_t listener;
  uv_timer_t sweep;
  int listener_open;
  int sweep_open;
  size_t handles;     /* handles initialised and not yet closed */
  /* options */
  uint32_t max_frame;
  size_t max_connections;
  size_t max_inflight;
  uint64_t heartbeat_ms;
  size_t max_output;
  uint64_t drain_ms;
  int sync;
  char name[64];
  /* authentication: secrets by role (NULL: none); auth is on when any is */
  char* secrets[NET_NROLES];
  size_t secret_len[NET_NROLES];
  int auth;
  /* connections */
  net_conn_t* live;
  net_conn_t* dying;
  size_t nconns;
  size_t ndying;
  uint64_t next_cid;
  uint64_t rr_cid;
  net_recv_t* waiters;
  net_avoid_t avoid[NET_AVOID_SLOTS];
  size_t avoid_next;
  txmq_tx_target_t target;
  /* connections with queued output, flushed after the poll phase (check)
   * or before the loop blocks (prepare) */
  net_conn_t* flushq;
  uv_check_t flush_check;
  uv_prepare_t flush_prep;
  int flush_armed;
  int flush_open;
  /* the objects of the frame being handled (cleared after each) */
  msgpack_zone zone;
  int zone_ok;
  int zone_busy;
  /* the read buffer shared by all connections (libuv reads one at a time) */
  int readbuf_busy;
  /* free requests waiting for a runtime callback (ops.c, net_req_t) */
  txmq__pool_t req_pool;
  /* life cycle */
  int started;
  int closing;
  int conns_closed;   /* drain over: every connection was told to close */
  uint64_t drain_deadline;
  uint64_t started_ms;
  void (*close_cb)(txmq_server_t* srv, void* arg);
  void* close_arg;
  txmq_server_log_cb log_cb;
  void* log_arg;
  /* counters for status */
  uint64_t accepted;
  uint64_t refused;
  uint64_t requests;
  uint64_t protocol_errors;
  uint64_t auth_failures;
  char addr[80];
  int port;
  char diag[256];
  uint8_t readbuf[NET_READ_CHUNK];
};

/* ---- wire.c: output buffers ---- */

/* A growing buffer that starts with 4 bytes reserved for the frame length,
 * with a msgpack packer writing into it. A failed allocation sets failed
 * and drops the rest. */
typedef struct {
  char* p;
  size_t len;
  size_t cap;
  int failed;
  msgpack_packer pk;
} net_wbuf_t;

void net__wb_init(net_wbuf_t* w);
void net__wb_free(net_wbuf_t* w);
/* Appends raw bytes. */
void net__wb_put(net_wbuf_t* w, const void* p, size_t n);
void net__pk_str(msgpack_packer* pk, const char* s); /* NULL packs nil */
void net__pk_strn(msgpack_packer* pk, const char* s, size_t n);
void net__pk_bin(msgpack_packer* pk, const void* p, size_t n);
/* Starts a success response: a map of 2 + nfields entries, re and ok. */
void net__resp_begin(net_wbuf_t* w, uint64_t re, uint32_t nfields);
/* A whole error response {re, ok=false, err, code, msg}. */
void net__resp_error(net_wbuf_t* w, uint64_t re, int code, const char* msg);
/* Packs m as a message map with two extra keys (for received messages:
 * handle and deliveries); extra may be NULL for none. */
int net__pk_msg_extra(net_wbuf_t* w, const txmq_msg_t* m, const char* handle,
                      int64_t deliveries);

/* ---- wire.c: typed fields of a request map ----
 *
 * Each getter returns 0 when the field is present and valid, 1 when it is
 * absent and optional, or a negative TXMQ_E* code with a sentence naming
 * the field in err (NET_ERR_MAX bytes). */
#define NET_ERR_MAX 512
const msgpack_object* net__field_n(const msgpack_object* map, const char* key,
                                   size_t klen);
/* Inline so that the length of a literal key is known when compiling. */
static inline const msgpack_object* net__field(const msgpack_object* map,
                                               const char* key) {
  return net__field_n(map, key, strlen(key));
}
int net__errf(char* err, int code, const char* fmt, ...)
    __attribute__((format(printf, 3, 4)));
int net__get_str(const msgpack_object* map, const char* key, int required,
                 size_t maxlen, const char** p, size_t* len, char* err);
/* Copies p[0..n) NUL-terminated into out[TXMQ_NAME_MAX + 1]; 1 when it is
 * a valid topic or group name (no embedded NUL), else 0. */
int net__name_copy(const char* p, size_t n, char* out);
/* A valid topic or group name, copied NUL-terminated into out[128]. */
int net__get_name(const msgpack_object* map, const char* key, int required,
                  char* out, char* err);
int net__get_int(const msgpack_object* map, const char* key, int required,
                 int64_t min, int64_t max, int64_t* out, char* err);
/* A transaction id: bin 16 (or 32 hex digits as a string). */
int net__get_txid(const msgpack_object* map, const char* key, uint8_t out[16],
                  char* err);
/* An array of 1..max message maps, decoded into *n new messages in out
 * (room for max), which the caller frees with net__msgs_free or hands
 * over. Server-assigned fields are cleared; qid stays (the client may
 * choose its queue). */
int net__get_msgs(const msgpack_object* map, const char* key, size_t max,
                  txmq_msg_t** out, size_t* n, char* err);
int net__get_msg(const msgpack_object* map, const char* key, txmq_msg_t** out,
                 char* err);
/* Frees the n messages (not the array). */
void net__msgs_free(txmq_msg_t** msgs, size_t n);

/* ---- server.c: for ops.c and check.c ---- */

uint64_t net__now(const txmq_server_t* srv);
void net__log(txmq_server_t* srv, txmq_server_log_level_t level,
              const char* msg, const char* fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Hands w's frame to the connection (takes w's buffer in every case).
 * Returns 0, or TXMQ_ECLOSED if the connection is closing (nothing sent). */
int net__send(net_conn_t* c, net_wbuf_t* w);
void net__send_error(net_conn_t* c, uint64_t re, int code, const char* msg);
/* A handle the server counts (a waiter's timer) finished closing. */
void net__handle_closed(txmq_server_t* srv);
/* A request of c is finished (its response sent or dropped). */
void net__done(net_conn_t* c);
/* Closes c: politely (pending output flushed, then close) or at once. */
void net__close(net_conn_t* c, int polite, const char* why);
/* c accepts no more work (closing, or its output is over the cap). */
int net__conn_usable(const net_conn_t* c);
int net__has_group(char* const* groups, size_t n, const char* g);

/* ---- consume.c: receive, ack, offsets; long polls ---- */

/* Answers every long poll at once (server close). */
void net__waiters_flush(txmq_server_t* srv);
/* Ends the long polls of a closing connection without an answer. */
void net__waiters_drop(net_conn_t* c);

/* Installs the wake callback on the consumer engine (if any). */
void net__consumers_attach(txmq_server_t* srv);
int net__op_receive(net_conn_t* c, uint64_t id, const msgpack_object* m,
                    char* err);
int net__op_ack(net_conn_t* c, uint64_t id, const msgpack_object* m,
                char* err);
int net__op_offset_get(net_conn_t* c, uint64_t id, const msgpack_object* m,
                       char* err);
int net__op_offset_set(net_conn_t* c, uint64_t id, const msgpack_object* m,
                       char* err);
int net__op_peek(net_conn_t* c, uint64_t id, const msgpack_object* m,
                 char* err);

/* ---- ops.c ---- */

/* Handles one complete, well-formed request map of c (op and id checked by
 * the caller); sends exactly one response, now or later. */
void net__dispatch(net_conn_t* c, const msgpack_object* req, uint64_t id,
                   const char* op, size_t oplen);

/* ---- check.c ---- */

int net__check_target(void* arg, txmq_tx_t* tx, const txmq_tx_check_t* chk);
/* A response frame from c (it has "re"). */
void net__check_response(net_conn_t* c, const msgpack_object* resp);
/* c is closing: every check it owes goes elsewhere. */
void net__checks_fail_all(net_conn_t* c);

#endif /* TXMQ_NET_INT_H */
