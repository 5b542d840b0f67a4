/*
 * txmq/runtime.h - the parts put together for a host that embeds libtxmq:
 * a store, the transaction engine over it and the Lua handler host, on the
 * host's libuv loop.
 *
 * The runtime wires the handler host into the transaction engine:
 *   - as the runner of executeLocalTransaction: txmq_runtime_tx_send stores
 *     the half messages, runs the group's executeLocalTransaction on a
 *     worker, and records its answer as the decision (source "script", with
 *     the script's version);
 *   - as the first check target: a due check of a group that has a script
 *     runs its checkLocalTransaction. Groups without a script fall through
 *     to the targets the host adds after open (for txmqd: the producer
 *     connections).
 * A handler that fails (an error, a wrong result, its time or memory limit)
 * counts as UNKNOWN: the transaction stays pending and checks decide it.
 *
 * USE
 *   txmq_runtime_new(&rt, loop, "data", "scripts");
 *   txmq_store_set(txmq_runtime_store(rt), TXMQ_STORE_OPT_SYNC, ...);  // any
 *   txmq_tx_set(txmq_runtime_tx(rt), ...);                              // part
 *   txmq_script_register(txmq_runtime_scripts(rt), "name", fn, arg);    // option
 *   txmq_script_set_log_cb(txmq_runtime_scripts(rt), log_fn, ctx);      // its log
 *   txmq_script_set_loaded_cb(txmq_runtime_scripts(rt), on_loaded, ctx);
 *   txmq_runtime_open(rt);
 *   txmq_runtime_tx_send(rt, "order-payment", NULL, msgs, 1, arg, len, 0,
 *                        on_done, ctx);
 *   ...
 *   txmq_runtime_close(rt, on_closed, ctx);   // then txmq_runtime_free(rt)
 *
 * THREADING: loop thread only.
 */
#ifndef TXMQ_RUNTIME_H
#define TXMQ_RUNTIME_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "txmq/msg.h"
#include "txmq/script.h"
#include "txmq/store.h"
#include "txmq/tx.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct txmq_runtime_s txmq_runtime_t;

/* The outcome of a runtime-hosted transaction, on the loop thread.
 * status 0: the half messages were stored and state says what the handler
 * decided (TXMQ_TX_PENDING when it answered UNKNOWN or failed; diag says
 * why). A non-zero status means nothing was stored (tx_id NULL) or the
 * decision could not be recorded (tx_id set, the transaction is pending and
 * checks will decide it). tx_id, msg_ids (nmsgs ids of TXMQ_MSG_ID_LEN
 * bytes), version and diag are valid during the call only; version and diag
 * are "" when there is none. */
typedef void (*txmq_runtime_tx_cb)(txmq_runtime_t* rt, int status,
                                   const uint8_t* tx_id,
                                   const uint8_t* msg_ids, size_t nmsgs,
                                   txmq_tx_state_t state, const char* version,
                                   const char* diag, void* arg);

/* Creates the parts, unopened: configure them through the accessors below,
 * then txmq_runtime_open. data_dir and scripts_dir are copied. */
int txmq_runtime_new(txmq_runtime_t** out, uv_loop_t* loop,
                     const char* data_dir, const char* scripts_dir);

/* The parts, owned by the runtime, valid until txmq_runtime_free. */
txmq_store_t* txmq_runtime_store(txmq_runtime_t* rt);
txmq_tx_t* txmq_runtime_tx(txmq_runtime_t* rt);
txmq_script_host_t* txmq_runtime_scripts(txmq_runtime_t* rt);

/* Opens the store (recovering transactions), starts the engine and the
 * handler host, and adds the script check target. On failure
 * txmq_runtime_diag says why; then txmq_runtime_close (which closes only
 * what was opened) and txmq_runtime_free. */
int txmq_runtime_open(txmq_runtime_t* rt);

/* A runtime-hosted transaction of n messages (1..TXMQ_TX_MAX_MSGS) for
 * group, whose script decides. producer (may be NULL) names the client for
 * the audit trail. arg (may be NULL) is one msgpack value passed to
 * executeLocalTransaction as its second argument. TXMQ_ENOTFOUND if the
 * group has no script (nothing is stored). The messages are only read
 * during the call; their ids are reported to cb. If the call fails, cb is
 * never called. */
int txmq_runtime_tx_send(txmq_runtime_t* rt, const char* group,
                         const char* producer, txmq_msg_t* const* msgs,
                         size_t n, const void* arg, size_t arg_len,
                         int64_t immunity_ms, txmq_runtime_tx_cb cb,
                         void* cbarg);
/* txmq_runtime_tx_send, handing the messages over as txmq_tx_begin_take
 * does: the runtime's on success, still the caller's on failure; each
 * message only once in msgs. */
int txmq_runtime_tx_send_take(txmq_runtime_t* rt, const char* group,
                              const char* producer, txmq_msg_t* const* msgs,
                              size_t n, const void* arg, size_t arg_len,
                              int64_t immunity_ms, txmq_runtime_tx_cb cb,
                              void* cbarg);

/* What failed last (open), "" if nothing. */
const char* txmq_runtime_diag(const txmq_runtime_t* rt);

/* Closes the handler host (running handlers finish and their decisions are
 * recorded), then the engine, then the store (flushing the log and taking a
 * checkpoint); cb runs on the loop when everything is closed (at once, if
 * nothing was ever opened). Also the way out of a failed open. */
int txmq_runtime_close(txmq_runtime_t* rt,
                       void (*cb)(txmq_runtime_t* rt, void* arg), void* arg);
void txmq_runtime_free(txmq_runtime_t* rt);

#ifdef __cplusplus
}
#endif
#endif /* TXMQ_RUNTIME_H */
