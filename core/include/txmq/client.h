/*
 * txmq/client.h - the C client of txmqd: an asynchronous client on the
 * caller's libuv loop, and a small blocking layer on a private loop for
 * simple programs and the `txmq` tool.
 *
 * It speaks the wire protocol of core/net/PROTOCOL.md (version 1): one TCP
 * connection, length-prefixed msgpack frames, a `hello` handshake, requests
 * with correlation ids answered in any order (requests are pipelined: any
 * number may be outstanding, each gets exactly one callback), and `check`
 * requests from the server, delivered to the check callback registered for
 * the transaction's producer group and answered later with
 * txmq_client_check_reply().
 *
 * WRITES
 * Requests are not written one by one: those made during one turn of the
 * loop are queued and written together, with one write, when the turn's
 * callbacks are done (a check handle) or before the loop next waits (a
 * prepare handle). A request made while the loop is not running goes out
 * when it runs; txmq_client_close() writes what was queued first.
 *
 * ERRORS
 * One error model (txmq/error.h). A call that fails returns a negative
 * TXMQ_E* code and never calls its callback. A call that returns 0 calls its
 * callback exactly once, never from within the call itself: with status 0
 * and the decoded response, or with a TXMQ_E* code and no result. An error
 * response from the server gives its code (TXMQ_ECONFLICT, TXMQ_ENOTFOUND,
 * ...). The details (the server's sentence, "connection refused", which
 * field of a response was malformed) are in txmq_client_diag() during the
 * failing callback, or after a failing call.
 * A response that cannot be decoded (a hostile or broken server), or a
 * receive or peek answered with more messages than it asked for, fails its
 * request with TXMQ_EPROTO; a frame that cannot be trusted (bad length,
 * invalid msgpack, a response to an id never used) closes the connection:
 * every outstanding request fails with TXMQ_EPROTO and the disconnect
 * callback runs. A late response to a request that already ended (timed
 * out, say) is dropped. Nothing a server sends can crash the client; what
 * it allocates for one frame is bounded by the frame limit (the decoded
 * tree of a frame takes up to about 24 bytes per msgpack object in it).
 *
 * LIFETIME
 *   txmq_client_new(&c, loop, &opts);
 *   txmq_client_connect(c, "127.0.0.1:8967", on_connected, ctx);
 *   ... requests ...
 *   txmq_client_close(c, on_closed, ctx);   // then, in or after on_closed:
 *   txmq_client_free(c);
 * Close fails every outstanding request (and a connect in progress) with
 * TXMQ_ECLOSED, from the loop, before close_cb; the client's handles are
 * closed and freed before close_cb runs. Close before closing the loop.
 * When an established connection is lost (the server closed it, a read
 * error, a protocol violation, the server went silent past its heartbeat),
 * outstanding requests fail with the reason, the disconnect callback runs
 * and the client may be connected again.
 *
 * THREADING: the loop thread only, like libuv.
 */
#ifndef TXMQ_CLIENT_H
#define TXMQ_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#include <msgpack.h>
#include <uv.h>

#include "txmq/consumer.h"
#include "txmq/msg.h"
#include "txmq/tx.h"

#ifdef __cplusplus
extern "C" {
#endif

#define TXMQ_PROTOCOL_VERSION 1
#define TXMQ_DEFAULT_PORT 8967
#define TXMQ_DEFAULT_SERVER "127.0.0.1:8967"
/* Longest script version a result carries (longer ones are cut). */
#define TXMQ_CLIENT_VERSION_MAX 64

typedef struct txmq_client_s txmq_client_t;

typedef enum {
  TXMQ_ROLE_PRODUCER = 0,
  TXMQ_ROLE_CONSUMER = 1,
  TXMQ_ROLE_ADMIN = 2 /* may do everything */
} txmq_role_t;

/* Read by txmq_client_new, which copies everything it needs. */
typedef struct {
  const char* client_id;      /* required: 1..127 bytes of [A-Za-z0-9._:-] */
  txmq_role_t role;
  const char* const* producer_groups; /* groups whose checks we answer */
  size_t n_producer_groups;
  const char* const* consumer_groups; /* informational */
  size_t n_consumer_groups;
  const char* secret;         /* the role's secret when auth is on; NULL */
  uint32_t connect_timeout_ms; /* resolve + connect + handshake; 0: 10000 */
  uint32_t request_timeout_ms; /* per request, beyond a receive's wait;
                                  0: 30000 */
  uint32_t max_frame;         /* largest frame accepted from the server;
                                 0: what the server announces, at least
                                 8 MiB and at most 256 MiB */
  uint32_t max_pending;       /* outstanding requests; more give
                                 TXMQ_EAGAIN; 0: 65536 */
} txmq_client_options_t;

/* ---- results (all valid during the callback only) ---- */

typedef struct {
  uint8_t msg_id[TXMQ_MSG_ID_LEN];
  int32_t qid;
  int64_t qoff;
} txmq_send_result_t;

typedef struct {
  uint8_t tx_id[TXMQ_TX_ID_LEN];
  size_t nmsgs;
  uint8_t msg_ids[TXMQ_TX_MAX_MSGS][TXMQ_MSG_ID_LEN];
} txmq_half_result_t;

typedef struct {
  uint8_t tx_id[TXMQ_TX_ID_LEN];
  size_t nmsgs;
  uint8_t msg_ids[TXMQ_TX_MAX_MSGS][TXMQ_MSG_ID_LEN];
  txmq_tx_state_t state;   /* PENDING when the script answered UNKNOWN or
                              failed: checks decide */
  char version[TXMQ_CLIENT_VERSION_MAX]; /* script version, "" if none */
  char diag[256];          /* why the script did not decide (an error, a
                              time limit), "" when it did; cut if longer */
} txmq_tx_send_result_t;

/* What txmq_client_send_in_transaction did, like RocketMQ's
 * TransactionSendResult. */
typedef struct {
  uint8_t msg_id[TXMQ_MSG_ID_LEN];
  uint8_t tx_id[TXMQ_TX_ID_LEN];
  txmq_tx_decision_t local_state; /* what the execute callback answered */
  txmq_tx_state_t tx_state;  /* after the end: COMMITTED, ROLLED_BACK, or
                                PENDING (UNKNOWN, or the end failed) */
  int end_status;            /* 0, or why tx.end failed (the transaction
                                then stays pending: checks decide) */
} txmq_tx_result_t;

/* A check request from the server. Valid during the callback; copy what an
 * answer given later needs (check_id is enough). */
typedef struct {
  uint64_t check_id;         /* pass to txmq_client_check_reply */
  const uint8_t* tx_id;      /* TXMQ_TX_ID_LEN bytes */
  const char* group;
  uint32_t check_count;
  const txmq_msg_t* const* msgs;
  size_t nmsgs;
} txmq_client_check_t;

/* Options of a receive (long poll). */
typedef struct {
  const char* group;     /* required */
  const char* topic;     /* required */
  const char* tags;      /* "A || B" or "*"; NULL: "*" */
  uint32_t max;          /* 1..256; 0: 32 */
  uint32_t wait_ms;      /* 0..30000: how long the server may hold it */
  uint32_t visibility_ms; /* 0: the server's default */
  txmq_from_t from;      /* where a group that never read the topic starts */
  int64_t from_offset;   /* for TXMQ_FROM_OFFSET */
} txmq_receive_opts_t;

/* ---- callbacks ---- */

typedef void (*txmq_client_connect_cb)(txmq_client_t* c, int status,
                                       void* arg);
typedef void (*txmq_client_close_cb)(txmq_client_t* c, void* arg);
/* An established connection was lost (not after txmq_client_close). */
typedef void (*txmq_client_disconnect_cb)(txmq_client_t* c, int status,
                                          void* arg);
typedef void (*txmq_client_done_cb)(txmq_client_t* c, int status, void* arg);
/* status 0: value holds the result (ping: server time; ack: acked count;
 * offset_get: the offset). */
typedef void (*txmq_client_int_cb)(txmq_client_t* c, int status,
                                   int64_t value, void* arg);
typedef void (*txmq_client_send_cb)(txmq_client_t* c, int status,
                                    const txmq_send_result_t* r, void* arg);
typedef void (*txmq_client_half_cb)(txmq_client_t* c, int status,
                                    const txmq_half_result_t* r, void* arg);
typedef void (*txmq_client_end_cb)(txmq_client_t* c, int status,
                                   txmq_tx_state_t state, void* arg);
typedef void (*txmq_client_tx_send_cb)(txmq_client_t* c, int status,
                                       const txmq_tx_send_result_t* r,
                                       void* arg);
typedef void (*txmq_client_tx_done_cb)(txmq_client_t* c, int status,
                                       const txmq_tx_result_t* r, void* arg);
/* d is an array of n deliveries owned by the client and freed after the
 * callback returns; the callback may take a message by setting d[i].msg to
 * NULL (it then frees it with txmq_msg_free). */
typedef void (*txmq_client_receive_cb)(txmq_client_t* c, int status,
                                       txmq_delivery_t* d, size_t n,
                                       void* arg);
/* reply is the whole response map (with "re" and "ok"), NULL on failure;
 * valid during the callback (strings and bins in it too). */
typedef void (*txmq_client_reply_cb)(txmq_client_t* c, int status,
                                     const msgpack_object* reply, void* arg);
typedef void (*txmq_client_check_cb)(txmq_client_t* c,
                                     const txmq_client_check_t* check,
                                     void* arg);
/* The local transaction of send_in_transaction, run once the half message
 * is stored. msg is the stored message (id set), valid during the call. */
typedef txmq_tx_decision_t (*txmq_client_execute_cb)(txmq_client_t* c,
                                                     const txmq_msg_t* msg,
                                                     const uint8_t* tx_id,
                                                     void* arg);

/* ---- lifetime ---- */

/* Creates an unconnected client on loop. opts is copied. TXMQ_EINVAL for a
 * missing or invalid client id, a bad role or group name. */
int txmq_client_new(txmq_client_t** out, uv_loop_t* loop,
                    const txmq_client_options_t* opts);

/* Connects to "host:port" ("[v6]:port"; a missing port is 8967), trying
 * each resolved address in turn, and performs the handshake. cb gets 0 once
 * the server accepted the hello; TXMQ_EIO with a diagnostic such as
 * "connection refused", TXMQ_ETIMEDOUT, TXMQ_EPROTO, or the server's
 * refusal otherwise (the client is then unconnected again and may retry,
 * also from within cb). TXMQ_EBUSY if connected or connecting, TXMQ_EINVAL
 * for a malformed address, TXMQ_ECLOSED after close. */
int txmq_client_connect(txmq_client_t* c, const char* hostport,
                        txmq_client_connect_cb cb, void* arg);

/* Called when an established connection is lost; NULL to remove. */
void txmq_client_on_disconnect(txmq_client_t* c, txmq_client_disconnect_cb cb,
                               void* arg);

/* Non-zero once connected (handshake done) and until the connection is
 * lost or closed. */
int txmq_client_is_connected(const txmq_client_t* c);

/* The server's name and version from the handshake ("" before), valid until
 * the next connect or free. */
const char* txmq_client_server(const txmq_client_t* c);

/* The details of the failure last returned by a call or passed to a
 * callback (the server's message, the system's reason), "" if none. Valid
 * until the next call into the client. */
const char* txmq_client_diag(const txmq_client_t* c);

/* Closes the connection; every outstanding request fails with TXMQ_ECLOSED
 * (from the loop, not from within this call), then cb runs (may be NULL).
 * Later calls fail with TXMQ_ECLOSED. TXMQ_ECLOSED if already closing. */
int txmq_client_close(txmq_client_t* c, txmq_client_close_cb cb, void* arg);
/* Frees a client whose close callback ran (it may be called from within
 * the close callback). Every client is closed first, connected or not: its
 * timers are handles on the loop. */
void txmq_client_free(txmq_client_t* c);

/* ---- requests (connected clients; TXMQ_ECLOSED otherwise) ----
 * Every request copies or encodes its arguments during the call: messages,
 * strings and buffers may be freed as soon as it returns. TXMQ_EINVAL for a
 * bad argument, TXMQ_ETOOBIG for a frame over the server's max_frame,
 * TXMQ_EAGAIN past max_pending. */

/* ping: the server's wall clock in ms. */
int txmq_client_ping(txmq_client_t* c, txmq_client_int_cb cb, void* arg);

/* send: a plain message; the callback runs once it is durable and visible. */
int txmq_client_send(txmq_client_t* c, const txmq_msg_t* msg,
                     txmq_client_send_cb cb, void* arg);

/* tx.half: stores n (1..64) half messages of producer group `group` (one of
 * the client's producer groups if it wants to answer the checks).
 * immunity_ms > 0 delays the first check. */
int txmq_client_tx_half(txmq_client_t* c, const char* group,
                        const txmq_msg_t* const* msgs, size_t n,
                        int64_t immunity_ms, txmq_client_half_cb cb,
                        void* arg);

/* tx.end: COMMIT, ROLLBACK or UNKNOWN for transaction tx_id. */
int txmq_client_tx_end(txmq_client_t* c, const uint8_t* tx_id,
                       txmq_tx_decision_t decision, txmq_client_end_cb cb,
                       void* arg);

/* tx.send: a runtime-hosted transaction: the server runs the group's
 * executeLocalTransaction. arg (may be NULL) is one packed msgpack value
 * passed to it as its second argument. */
int txmq_client_tx_send(txmq_client_t* c, const char* group,
                        const txmq_msg_t* const* msgs, size_t n,
                        const void* arg, size_t arg_len, int64_t immunity_ms,
                        txmq_client_tx_send_cb cb, void* cbarg);

/* Half message, then execute (on the loop, in the half's callback), then
 * tx.end with its answer, like RocketMQ's sendMessageInTransaction. UNKNOWN
 * (or an invalid answer) sends no end: the checks decide. done gets status 0
 * once the half message was stored (r says what became of it, including an
 * end that failed) or the half's failure (execute is then never called). */
int txmq_client_send_in_transaction(txmq_client_t* c, const char* group,
                                    const txmq_msg_t* msg,
                                    txmq_client_execute_cb execute,
                                    void* execute_arg,
                                    txmq_client_tx_done_cb done, void* arg);

/* Registers the check callback of producer group `group` (cb NULL removes
 * it). Checks for a group without a callback are refused (ENOTFOUND), so
 * the server asks another member. The group should be among the options'
 * producer_groups, or the server will not route checks here. */
int txmq_client_on_check(txmq_client_t* c, const char* group,
                         txmq_client_check_cb cb, void* arg);

/* Answers check check_id (from the check callback, now or later).
 * TXMQ_ENOTFOUND if no such check is waiting (already answered, or its
 * connection was lost), TXMQ_EINVAL for a bad decision. */
int txmq_client_check_reply(txmq_client_t* c, uint64_t check_id,
                            txmq_tx_decision_t decision);

/* receive: long poll; an empty result after wait_ms is normal. */
int txmq_client_receive(txmq_client_t* c, const txmq_receive_opts_t* opts,
                        txmq_client_receive_cb cb, void* arg);

/* ack: handles of received messages; value = how many were acknowledged. */
int txmq_client_ack(txmq_client_t* c, const char* group,
                    const char* const* handles, size_t n,
                    txmq_client_int_cb cb, void* arg);

/* offset_get: the group's committed offset on queue qid of topic (value);
 * TXMQ_ENOTFOUND if the group never read that queue. offset_set: moves it
 * (0 up to the queue's end; past the end: TXMQ_ERANGE). Role consumer. */
int txmq_client_offset_get(txmq_client_t* c, const char* group,
                           const char* topic, int32_t qid,
                           txmq_client_int_cb cb, void* arg);
int txmq_client_offset_set(txmq_client_t* c, const char* group,
                           const char* topic, int32_t qid, int64_t offset,
                           txmq_client_done_cb cb, void* arg);

/* peek: up to max (0: 32; at most 256) stored messages of queue qid of
 * topic from offset on (offset < 0: the first retained), read without a
 * group: nothing is delivered, made invisible or moved. d is as for
 * receive, each with an empty handle and 0 deliveries; next is the offset
 * after the last message (where the next peek goes on; n == 0 at the end
 * of the queue). Role consumer. */
typedef void (*txmq_client_peek_cb)(txmq_client_t* c, int status,
                                    txmq_delivery_t* d, size_t n,
                                    int64_t next, void* arg);
int txmq_client_peek(txmq_client_t* c, const char* topic, int32_t qid,
                     int64_t offset, uint32_t max, txmq_client_peek_cb cb,
                     void* arg);

/* Admin requests; the callback gets the whole response map. */
int txmq_client_status(txmq_client_t* c, txmq_client_reply_cb cb, void* arg);
/* group NULL: every group; limit 0: the server's default. */
int txmq_client_tx_list(txmq_client_t* c, const char* group, uint32_t limit,
                        txmq_client_reply_cb cb, void* arg);
int txmq_client_tx_show(txmq_client_t* c, const uint8_t* tx_id,
                        txmq_client_reply_cb cb, void* arg);
int txmq_client_tx_resume(txmq_client_t* c, const uint8_t* tx_id,
                          txmq_client_reply_cb cb, void* arg);
/* tx.decide (admin): an operator's COMMIT or ROLLBACK of a parked or pending
 * transaction, recorded with source "operator"; cb as for tx_end. */
int txmq_client_tx_decide(txmq_client_t* c, const uint8_t* tx_id,
                          txmq_tx_decision_t decision, txmq_client_end_cb cb,
                          void* arg);
int txmq_client_reload(txmq_client_t* c, const char* group,
                       txmq_client_reply_cb cb, void* arg);

/* Any request: op and the fields of one packed msgpack map (fields NULL:
 * none). TXMQ_EINVAL if fields is not a map or holds "op" or "id". */
int txmq_client_call(txmq_client_t* c, const char* op, const void* fields,
                     size_t fields_len, txmq_client_reply_cb cb, void* arg);

/* The value of key in a msgpack map, NULL if absent or map is not a map. */
const msgpack_object* txmq_client_map_get(const msgpack_object* map,
                                          const char* key);

/* ---- blocking layer ----
 * A client on a private loop: each call runs the loop until its response
 * arrived (bounded by the request timeout). For programs without a loop of
 * their own and for the `txmq` tool. Check requests are answered only while
 * a call runs; a transactional producer that must answer checks belongs on
 * the asynchronous client. Not thread-safe; one call at a time. */

typedef struct txmq_sync_client_s txmq_sync_client_t;

/* A parsed response kept beyond its callback. */
typedef struct txmq_reply_s txmq_reply_t;

/* Creates an unconnected blocking client (opts as for txmq_client_new). */
int txmq_sync_new(txmq_sync_client_t** out, const txmq_client_options_t* opts);
/* Connects and performs the handshake (see txmq_client_connect). */
int txmq_sync_connect(txmq_sync_client_t* s, const char* hostport);
/* As txmq_client_diag, for the last failed call. */
const char* txmq_sync_diag(const txmq_sync_client_t* s);
/* The underlying client (for check callbacks, the server name, ...). */
txmq_client_t* txmq_sync_client(txmq_sync_client_t* s);
/* Closes the connection and the private loop and frees s. */
void txmq_sync_free(txmq_sync_client_t* s);

int txmq_sync_send(txmq_sync_client_t* s, const txmq_msg_t* msg,
                   txmq_send_result_t* out);
int txmq_sync_tx_send(txmq_sync_client_t* s, const char* group,
                      const txmq_msg_t* const* msgs, size_t n,
                      const void* arg, size_t arg_len,
                      txmq_tx_send_result_t* out);
/* On success *out is an array of *n deliveries (NULL when 0) that the
 * caller frees with txmq_client_free_deliveries. */
int txmq_sync_receive(txmq_sync_client_t* s, const txmq_receive_opts_t* opts,
                      txmq_delivery_t** out, size_t* n);
int txmq_sync_ack(txmq_sync_client_t* s, const char* group,
                  const char* const* handles, size_t n, int64_t* acked);
/* txmq_client_peek; on success *out (free with
 * txmq_client_free_deliveries), *n and *next. */
int txmq_sync_peek(txmq_sync_client_t* s, const char* topic, int32_t qid,
                   int64_t offset, uint32_t max, txmq_delivery_t** out,
                   size_t* n, int64_t* next);
/* Any request, as txmq_client_call; on success *out is the response, which
 * the caller frees with txmq_reply_free. */
int txmq_sync_call(txmq_sync_client_t* s, const char* op, const void* fields,
                   size_t fields_len, txmq_reply_t** out);

/* The response map of a reply, valid until txmq_reply_free. */
const msgpack_object* txmq_reply_object(const txmq_reply_t* r);
void txmq_reply_free(txmq_reply_t* r);
/* Frees an array of deliveries from txmq_sync_receive. */
void txmq_client_free_deliveries(txmq_delivery_t* d, size_t n);

#ifdef __cplusplus
}
#endif
#endif /* TXMQ_CLIENT_H */
