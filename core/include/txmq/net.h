/*
 * txmq/net.h - the txmq server: the wire protocol of core/net/PROTOCOL.md
 * over libuv TCP, on top of a runtime (store, transactions, scripts) and a
 * consumer engine.
 *
 * A frame is a u32 big-endian payload length and one msgpack map. Every
 * connection starts with "hello"; then requests with correlation ids, each
 * answered exactly once. The server itself sends "check" requests to
 * producer connections: it is a check target of the transaction engine
 * (added by txmq_server_start, after the runtime opened), which offers a
 * due check first to the connection whose client id sent the half message,
 * if it announced the group in its hello, else round robin to another live
 * connection that announced it.
 *
 * LIMITS AND BACK-PRESSURE
 *   - a frame longer than MAX_FRAME (or of length 0), or invalid msgpack,
 *     is answered with an error frame (re = 0) and the connection closed;
 *   - at most MAX_INFLIGHT requests of a connection are processed at once;
 *     at the cap the server stops reading that socket (TCP back-pressure)
 *     and resumes below it;
 *   - response bytes queued for a connection are bounded by MAX_OUTPUT: past
 *     it the connection's requests are not processed (and its socket not
 *     read) until the client reads; a connection that stays over it for the
 *     idle timeout (3 x HEARTBEAT_MS) is closed;
 *   - a connection that sends nothing for the idle timeout while it has no
 *     request in progress is closed;
 *   - past MAX_CONNECTIONS a new connection gets an EAGAIN error frame and
 *     is closed.
 *
 * AUTHENTICATION is off until a role is given a secret
 * (txmq_server_set_secret). Off, the hello's role is a declaration and its
 * secret is ignored; only the admin operations (tx.resume, tx.decide,
 * reload, topic.create) check the role. On:
 *   - a hello must carry the secret of the role it claims, or the admin
 *     secret, which is accepted for every role; a role without a secret of
 *     its own can be claimed with the admin secret only;
 *   - a missing or wrong secret is answered with TXMQ_EAUTH and the
 *     connection is closed; the refusal is logged (never the secret) and
 *     counted in status (auth_failures);
 *   - the role limits the operations: producer: ping, send, tx.half,
 *     tx.end, tx.send, status, tx.list, tx.show, and answering checks;
 *     consumer: ping, receive, ack, offset.get, offset.set, peek, status; admin:
 *     everything. Another operation gets EPROTO naming the roles it needs,
 *     and the connection stays open.
 * Secrets are compared in constant time (for a given configured length)
 * and appear in no log line, status field or error message.
 *
 * LIFE CYCLE
 *   txmq_runtime_open(rt); txmq_consumers_start(cs);
 *   txmq_server_new(&srv, loop, rt, cs); txmq_server_set(srv, ...);
 *   txmq_server_start(srv, "127.0.0.1", 8967);
 *   ...
 *   txmq_server_close(srv, cb, arg);   // stops accepting, drains, closes
 *   // in cb: close the consumers and the runtime; after the runtime's close
 *   // callback: txmq_runtime_free(rt), then txmq_server_free(srv).
 * The server must outlive the runtime's engine (it is one of its check
 * targets) and every request callback the runtime still owes it, hence the
 * order above.
 *
 * THREADING: loop thread only, like the runtime.
 */
#ifndef TXMQ_NET_H
#define TXMQ_NET_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "txmq/consumer.h"
#include "txmq/runtime.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct txmq_server_s txmq_server_t;

/* The protocol version this server speaks. */
#define TXMQ_PROTOCOL_VERSION 1

typedef enum {
  TXMQ_SERVER_OPT_MAX_FRAME = 1,   /* payload bytes, default 8 MiB,
                                      64 KiB .. 64 MiB */
  TXMQ_SERVER_OPT_MAX_CONNECTIONS, /* default 10000 */
  TXMQ_SERVER_OPT_MAX_INFLIGHT,    /* per connection, default 1024 */
  TXMQ_SERVER_OPT_HEARTBEAT_MS,    /* default 10000; idle timeout is 3x */
  TXMQ_SERVER_OPT_MAX_OUTPUT,      /* queued response bytes per connection
                                      before its requests wait, default
                                      1 MiB */
  TXMQ_SERVER_OPT_DRAIN_MS,        /* how long close waits for requests in
                                      progress, default 10000 */
  TXMQ_SERVER_OPT_SYNC             /* txmq_sync_t of the store, reported by
                                      "status" only */
} txmq_server_opt_t;

typedef enum {
  TXMQ_SERVER_LOG_DEBUG = 0,
  TXMQ_SERVER_LOG_INFO = 1,
  TXMQ_SERVER_LOG_WARN = 2,
  TXMQ_SERVER_LOG_ERROR = 3
} txmq_server_log_level_t;

/* A log event: msg is a short constant sentence, fields is "" or
 * space-separated key=value pairs (values quoted when they need it), both
 * valid during the call. */
typedef void (*txmq_server_log_cb)(void* arg, txmq_server_log_level_t level,
                                   const char* msg, const char* fields);

/* Creates a server for an opened runtime and a started consumer engine
 * (neither is owned; both must stay open until the server's close callback
 * ran). It installs itself as cs's wake callback. */
int txmq_server_new(txmq_server_t** out, uv_loop_t* loop, txmq_runtime_t* rt,
                    txmq_consumers_t* cs);
/* Before start. TXMQ_EINVAL for an unknown option or a value out of range. */
int txmq_server_set(txmq_server_t* srv, txmq_server_opt_t opt, int64_t value);
/* The name and version announced in hello and status (copied, < 64 bytes),
 * e.g. "txmqd 0.1.0"; default "libtxmq". Before start. */
int txmq_server_set_name(txmq_server_t* srv, const char* name);
/* Sets the secret of role "producer", "consumer" or "admin" (copied:
 * 8..256 bytes, no NUL byte), or removes it (secret NULL). Auth is on once
 * any role has a secret; see AUTHENTICATION above. Before start.
 * TXMQ_EINVAL for an unknown role or a secret of another length,
 * TXMQ_EBUSY after start, TXMQ_ENOMEM. */
int txmq_server_set_secret(txmq_server_t* srv, const char* role,
                           const char* secret);
/* Events worth logging (connections, protocol violations, refusals). */
void txmq_server_set_log_cb(txmq_server_t* srv, txmq_server_log_cb cb,
                            void* arg);

/* Adds the server's check target to the runtime's engine, binds host:port
 * (an IPv4 or IPv6 literal; port 0 picks a free port) and starts accepting.
 * A libuv error (address in use, no permission) is returned as a TXMQ_E*
 * code; txmq_server_diag() says which and what. */
int txmq_server_start(txmq_server_t* srv, const char* host, int port);
/* The bound address as "HOST:PORT" ("[HOST]:PORT" for IPv6) and the port,
 * after a successful start. */
const char* txmq_server_address(const txmq_server_t* srv);
int txmq_server_port(const txmq_server_t* srv);
/* What failed last, "" if nothing. */
const char* txmq_server_diag(const txmq_server_t* srv);

/* Live connections (after their hello or not). */
size_t txmq_server_connections(const txmq_server_t* srv);

/* Stops accepting and stops reading requests; long polls are answered at
 * once (with what they have: nothing), other requests in progress are
 * answered when they complete (for at most DRAIN_MS), responses are
 * flushed, then every connection and handle is closed and cb runs on the
 * loop. Requests the runtime still owes after that are answered to nobody.
 * TXMQ_ECLOSED if already closing. */
int txmq_server_close(txmq_server_t* srv,
                      void (*cb)(txmq_server_t* srv, void* arg), void* arg);
/* After the close callback and after the runtime was closed and freed. */
void txmq_server_free(txmq_server_t* srv);

#ifdef __cplusplus
}
#endif
#endif /* TXMQ_NET_H */
