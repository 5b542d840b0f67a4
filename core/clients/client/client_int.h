/*
 * client_int.h - internals of the C client shared by its units: the client
 * and request structs, frame building, response field readers. Not
 * installed, not part of the ABI.
 *
 *   client.c      connection, handshake, frame reader, dispatch of
 *                 responses and server requests, timeouts, heartbeat, close
 *   ops.c         the requests: encoding, response decoding, checks,
 *                 send_in_transaction
 *   blocking.c    the blocking layer on a private loop
 */
#ifndef TXMQ_CLIENT_INT_H
#define TXMQ_CLIENT_INT_H

#include <netdb.h>
#include <stddef.h>
#include <stdint.h>

#include <msgpack.h>
#include <uv.h>

#include "common/pool.h"
#include "txmq/client.h"

#define TXMQ__CLIENT_DIAG_MAX 512
/* Objects in one frame from the server: bounds msgpack-c's allocations
 * beyond the frame's own size. */
#define TXMQ__CLIENT_MAX_ITEMS (4u * 1024u * 1024u)
/* Checks handed to callbacks and not answered yet; more are refused with
 * EAGAIN so that a server cannot grow the client's memory. */
#define TXMQ__CLIENT_MAX_CHECKS 1024

typedef struct req_s req_t;
typedef void (*req_done_fn)(txmq_client_t* c, req_t* r, int status,
                            const msgpack_object* resp);

/* One outstanding request. cb is the user's callback, cast back to its
 * real type by done. */
struct req_s {
  req_t* hnext;           /* hash bucket chain */
  uint64_t id;
  uint64_t deadline;      /* uv_now() ms */
  const char* op;         /* static, for diagnostics */
  req_done_fn done;
  void (*cb)(void);
  void* arg;
  const char* key;        /* the result field of int requests */
  size_t n;               /* expected msg ids (tx.half, tx.send), most
                           * messages (receive, peek) */
};

/* A frame being built: 4 length bytes, then one msgpack map. */
typedef struct {
  msgpack_sbuffer sb;
  msgpack_packer pk;
  int err;
} frame_t;

typedef struct check_handler_s {
  struct check_handler_s* next;
  char* group;
  txmq_client_check_cb cb;
  void* arg;
} check_handler_t;

typedef struct pending_check_s {
  struct pending_check_s* next;
  uint64_t check_id;      /* ours, given to the user */
  uint64_t server_id;     /* the server's request id */
} pending_check_t;

enum {
  ST_IDLE = 0,       /* not connected; connect allowed */
  ST_RESOLVING,
  ST_CONNECTING,
  ST_HANDSHAKE,
  ST_CONNECTED,
  ST_CONN_FAILING,   /* a connect failed; reporting once handles settle */
  ST_DISCONNECTING,  /* an established connection was lost */
  ST_CLOSING,
  ST_CLOSED
};

struct txmq_client_s {
  uv_loop_t* loop;
  int state;

  /* options */
  char* client_id;
  txmq_role_t role;
  char** pgroups;
  size_t npgroups;
  char** cgroups;
  size_t ncgroups;
  char* secret;
  uint32_t connect_timeout_ms;
  uint32_t request_timeout_ms;
  uint32_t opt_max_frame;
  uint32_t max_pending;

  /* handles: the timers live from new to close, the socket per connection */
  uv_tcp_t tcp;
  int tcp_open;
  uv_timer_t conn_timer;
  uv_timer_t req_timer;
  uv_timer_t hb_timer;
  /* requests of this loop turn, written with one write once the turn's
   * callbacks are done (check) or before the loop blocks (prepare) */
  uv_check_t flush_check;
  uv_prepare_t flush_prep;
  int flush_armed;
  char* obuf;
  size_t olen;
  size_t ocap;
  int handles_open;
  uv_getaddrinfo_t gai;
  int gai_active;
  struct addrinfo* addrs;
  struct addrinfo* next_addr;
  uv_connect_t conn_req;
  int last_uv_err;
  char* address;          /* as given to connect */

  /* connect */
  txmq_client_connect_cb connect_cb;
  void* connect_arg;
  int conn_status;
  char conn_diag[TXMQ__CLIENT_DIAG_MAX];
  uint64_t hello_id;

  /* lost connection */
  txmq_client_disconnect_cb disc_cb;
  void* disc_arg;
  int lost_status;
  char lost_diag[TXMQ__CLIENT_DIAG_MAX];
  char server_err[TXMQ__CLIENT_DIAG_MAX]; /* last re=0 error from server */

  /* close */
  txmq_client_close_cb close_cb;
  void* close_arg;

  /* server */
  char server[128];
  uint32_t server_max_frame;
  uint32_t in_max_frame;
  uint32_t heartbeat_ms;

  /* requests */
  uint64_t next_id;
  req_t** buckets;
  size_t nbuckets;
  size_t npending;
  uint64_t armed_deadline; /* 0: req_timer not armed */

  /* frame reader */
  uint8_t hdr[4];
  size_t hdr_got;
  uint8_t* fbuf;
  size_t flen, fgot, fcap;

  /* heartbeat */
  uint64_t last_send, last_recv;
  int ping_outstanding;

  /* checks */
  check_handler_t* handlers;
  pending_check_t* checks;
  size_t nchecks;
  uint64_t next_check_id;

  char diag[TXMQ__CLIENT_DIAG_MAX];
  char rbuf[64 * 1024];
  /* Frames read are unpacked into this zone, cleared after each, so that
   * reading a response allocates nothing once its first chunk is big
   * enough; a frame handled further up the stack (a callback that makes
   * the client read) has it busy, and the one below gets its own. */
  msgpack_zone zone;
  int zone_ok;
  int zone_busy;
  /* free requests: hundreds are outstanding at once under load */
  txmq__pool_t req_pool;
};

/* ---- client.c ---- */
void txmq__client_set_diag(txmq_client_t* c, const char* fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* 0 if requests may be sent now, else TXMQ_ECLOSED (with a diagnostic). */
int txmq__client_ready(txmq_client_t* c);
/* A new request with the next id (not yet outstanding); NULL: ENOMEM. */
req_t* txmq__req_new(txmq_client_t* c, const char* op, req_done_fn done,
                     void (*cb)(void), void* arg);
/* Finishes f, writes it and makes r outstanding (extra_ms added to the
 * request timeout). On failure frees f and r and returns the code; rc is a
 * failure of the caller's own packing (then nothing is written). */
int txmq__req_submit(txmq_client_t* c, frame_t* f, req_t* r, int rc,
                     uint64_t extra_ms);
/* Writes a frame that is not a request (a response to the server). */
int txmq__frame_send(txmq_client_t* c, frame_t* f);
/* Reads an error response into a TXMQ_E* code and the diagnostic. */
int txmq__resp_error(txmq_client_t* c, const char* op,
                     const msgpack_object* resp);

/* ---- frames (ops.c) ---- */
void txmq__frame_init(frame_t* f, size_t nkeys);
void txmq__frame_destroy(frame_t* f);
void txmq__fp_key(frame_t* f, const char* k);
void txmq__fp_str(frame_t* f, const char* k, const char* v);
void txmq__fp_int(frame_t* f, const char* k, int64_t v);
void txmq__fp_bin(frame_t* f, const char* k, const void* p, size_t n);

/* Handles a server request (op "check", "ping", anything else). */
void txmq__client_server_request(txmq_client_t* c, const char* op,
                                 size_t oplen, uint64_t id,
                                 const msgpack_object* o);
/* Answers a server request with an error. */
void txmq__client_reply_error(txmq_client_t* c, uint64_t re, int code,
                              const char* fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Forgets the checks of a lost connection. */
void txmq__client_drop_checks(txmq_client_t* c);

/* Response field readers: 0, or TXMQ_EPROTO with a diagnostic naming the
 * op and the field. */
int txmq__rd_int(txmq_client_t* c, const char* op, const msgpack_object* m,
                 const char* key, int64_t min, int64_t max, int64_t* out);
int txmq__rd_id(txmq_client_t* c, const char* op, const msgpack_object* m,
                const char* key, uint8_t out[16]);
/* *p not NUL-terminated; optional: absent gives *p = NULL, *len = 0. */
int txmq__rd_str(txmq_client_t* c, const char* op, const msgpack_object* m,
                 const char* key, int optional, const char** p, size_t* len);

#endif /* TXMQ_CLIENT_INT_H */
