/*
 * script_int.h - internals of the Lua handler host (core/script), shared by
 * codec.c (msgpack <-> Lua, messages -> tables), state.c (one sandboxed,
 * limited lua_State) and host.c (groups, versions, workers, reload, watch).
 * Nothing here is public API; the contract is txmq/script.h.
 */
#ifndef TXMQ_SCRIPT_INT_H
#define TXMQ_SCRIPT_INT_H

#include <stddef.h>
#include <stdint.h>

#include <lua.h>
#include <msgpack.h>

#include "txmq/msg.h"
#include "txmq/script.h"

/* ---- codec (codec.c) -------------------------------------------------- */

/* Registry keys. The null sentinel is a light userdata pointing at a static
 * byte, so it is the same value in every state and cannot be modified. The
 * array marker is a metatable kept at registry[TXMQ__ARRAY_MT]; a table is
 * an array if its (raw) metatable is that table. */
#define TXMQ__ARRAY_MT "txmq.array_mt"
extern const char txmq__null_tag;
#define TXMQ__NULL ((void*)&txmq__null_tag)

/* Size of the error buffers the codec fills. */
#define TXMQ__CODEC_ERRLEN 256

/* Installs the array marker metatable in the registry if it is not there
 * yet (the handler module normally provides it, see state.c). May raise a
 * memory error: call in protected mode. */
void txmq__codec_init(lua_State* L);
/* Pushes txmq.null. */
void txmq__codec_push_null(lua_State* L);
/* Non-zero if the value at idx is txmq.null. */
int txmq__codec_is_null(lua_State* L, int idx);
/* Non-zero if the table at idx carries the array marker. */
int txmq__codec_is_array(lua_State* L, int idx);
/* lua_CFunction: txmq.array([t]) marks t (or a new table) as an array and
 * returns it; raises if t has a metatable of its own. */
int txmq__codec_array(lua_State* L);

/* Checks that buf[0..len) holds exactly one well-formed msgpack value with
 * containers nested at most TXMQ_SCRIPT_MAX_DEPTH deep, and that every
 * container's declared element count is backed by bytes actually present.
 * Hostile input is expected: after a successful scan, msgpack-c's unpacker
 * allocates at most a small multiple of len. Returns 0 or TXMQ_EPROTO with
 * err set. Pure C, no Lua, any thread. */
int txmq__msgpack_scan(const void* buf, size_t len, char* err, size_t errlen);

/* Scans, unpacks and pushes one msgpack value from buf as one Lua value:
 * nil -> nil at the top level, txmq.null inside arrays, an absent key as a
 * map value; bool; int -> integer (a positive int above INT64_MAX becomes a
 * float); float32/64 -> float; str and bin -> string; array -> table marked
 * with txmq.array; map -> table (keys must be str, bin or int). Returns 0
 * (one value pushed), or TXMQ_EPROTO (ext types, bad keys, too deep) or
 * TXMQ_ENOMEM with err set (nothing pushed). May raise a memory error: call
 * in protected mode. */
int txmq__codec_decode(lua_State* L, const void* buf, size_t len, char* err,
                       size_t errlen);

/* Packs the Lua value at idx with pk, following the rules of txmq/script.h.
 * Never raises: returns 0, TXMQ_EINVAL (a function, userdata, thread,
 * cyclic table, bad key or too deep, with the path of the offending value in
 * err) or TXMQ_ENOMEM. The stack is left as it was. On failure pk may hold a
 * partial value: discard the buffer. */
int txmq__codec_pack(lua_State* L, int idx, msgpack_packer* pk, char* err,
                     size_t errlen);
/* Packs the value at idx into a new buffer (*buf, *len) freed with free(). */
int txmq__codec_encode(lua_State* L, int idx, void** buf, size_t* len,
                       char* err, size_t errlen);

/* Indexes of the key table txmq__codec_push_keys pushes. */
enum {
  TXMQ__MK_TOPIC = 1,
  TXMQ__MK_TAGS,
  TXMQ__MK_KEYS,
  TXMQ__MK_BODY,
  TXMQ__MK_PROPERTIES,
  TXMQ__MK_MSG_ID,
  TXMQ__MK_TX_ID,
  TXMQ__MK_QUEUE_ID,
  TXMQ__MK_BORN_AT,
  TXMQ__MK_STORED_AT,
  TXMQ__MK_CHECK_COUNT,
  TXMQ__MK_EXECUTE, /* "executeLocalTransaction" */
  TXMQ__MK_CHECK,   /* "checkLocalTransaction" */
  TXMQ__MK_COUNT = TXMQ__MK_CHECK
};
/* Pushes a new array of the message keys and handler names above, to be
 * kept for the state's life. May raise a memory error. */
void txmq__codec_push_keys(lua_State* L);
/* Pushes m as the msg table of txmq/script.h: topic, tags, keys, body,
 * properties, msg_id, queue_id, born_at, stored_at; tx_id (32 hex digits)
 * when tx_id is not NULL; check_count when check_count >= 0. keys: the
 * stack index of a txmq__codec_push_keys table. May raise a memory error:
 * call in protected mode. */
void txmq__codec_push_msg(lua_State* L, int keys, const txmq_msg_t* m,
                          const uint8_t* tx_id, int64_t check_count);
/* Builds a new message from the table at idx (topic required; tags, keys,
 * body, properties, born_at optional), with raw access only (no
 * metamethods run). May raise a memory error: call in protected mode.
 * Returns 0, TXMQ_EINVAL with err set, or a setter's error. */
int txmq__codec_to_msg(lua_State* L, int idx, txmq_msg_t** out, char* err,
                       size_t errlen);

/* ---- the log (state.c) ------------------------------------------------ */

/* Where the host's log lines go: cb, or standard error when cb is NULL.
 * Set before the workers start and never changed after, so any thread may
 * read it without a lock. */
typedef struct {
  txmq_script_log_cb cb;
  void* arg;
} txmq__script_logger_t;

/* Writes one log line through lg (NULL: standard error). On standard error
 * it is "txmq script group=G version=V level=L msg=M", with control
 * characters in M escaped so the line stays one line, in one write. Any
 * thread. */
void txmq__script_log(const txmq__script_logger_t* lg, const char* group,
                      const char* version, txmq_script_log_level_t level,
                      const char* msg);

/* ---- one Lua state (state.c) ------------------------------------------ */

typedef struct txmq__lstate_s txmq__lstate_t;

typedef struct {
  const char* name;
  lua_CFunction fn;
  void* arg;
} txmq__hostfn_t;

/* What a state is built from. Everything is borrowed for the call. */
typedef struct {
  const char* group;
  const char* path;        /* the script file, also its chunk name */
  const char* version;     /* 16 hex digits */
  const char* src;         /* the file's bytes */
  size_t src_len;
  size_t mem_limit;
  int64_t load_budget_ms;
  const char* const* allow; /* module path patterns */
  size_t n_allow;
  const txmq__hostfn_t* fns;
  size_t n_fns;
  txmq__script_logger_t log; /* copied into the state */
} txmq__lstate_conf_t;

/* Builds a state: capped allocator, libraries (in a protected call), the
 * sandbox, the script run under the load budget, and a check that at least
 * one handler is defined. Returns 0 and *out, or a TXMQ_E* code (ESCRIPT,
 * ETIMEDOUT, ENOMEM) with diag filled. Any thread. */
int txmq__lstate_new(const txmq__lstate_conf_t* conf, txmq__lstate_t** out,
                     char* diag, size_t diaglen);
void txmq__lstate_free(txmq__lstate_t* S);

typedef struct {
  int check;                 /* 0: executeLocalTransaction, 1: check */
  const uint8_t* tx_id;      /* may be NULL */
  const txmq_msg_t* const* msgs;
  size_t n;
  const void* arg;           /* msgpack, may be NULL */
  size_t arg_len;
  uint32_t check_count;
  int64_t budget_ms;
} txmq__lcall_t;

/* Runs one handler call on S (the caller owns S for the call). Returns the
 * status of txmq_script_call_cb and sets *result; diag is filled on
 * failure. */
int txmq__lstate_call(txmq__lstate_t* S, const txmq__lcall_t* c,
                      txmq_script_result_t* result, char* diag,
                      size_t diaglen);

/* The handler module (lua/txmq/handler.lua) embedded at build time. */
extern const unsigned char txmq__handler_lua[];
extern const size_t txmq__handler_lua_len;

#endif /* TXMQ_SCRIPT_INT_H */
