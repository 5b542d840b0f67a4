/*
 * txmq/script.h - the Lua handler host: one script per producer group,
 * sandboxed, limited, run on worker threads, hot-reloaded.
 *
 * SCRIPTS
 * <scripts dir>/<group>.lua defines executeLocalTransaction(msg, arg) and/or
 * checkLocalTransaction(msg); a call to a handler the script does not define
 * fails with TXMQ_ESCRIPT and a diagnostic naming the missing function.
 * Results: txmq.COMMIT, txmq.ROLLBACK, txmq.UNKNOWN, or the RocketMQ strings
 * "COMMIT_MESSAGE", "ROLLBACK_MESSAGE", "UNKNOW" (also "UNKNOWN"). Anything
 * else, an error, a memory-cap hit or a timeout counts as UNKNOWN and is
 * logged with the script's path, version and line.
 *
 * msg is a table: topic, tags, keys, body (string), properties (table),
 * msg_id, tx_id, queue_id, born_at, stored_at (ms), and for checks
 * check_count. A transaction of several messages passes its first message
 * as msg, with msg.messages the array of all of them.
 *
 * CODEC (msgpack <-> Lua, one implementation for messages, args and host
 * function values):
 *   nil <-> nil (as a map value: the key is absent); txmq.null <-> msgpack nil
 *   inside arrays and where nil must be explicit; booleans; integers stay
 *   integers (msgpack int <-> Lua integer), floats stay floats; str and bin
 *   -> Lua string, Lua string -> str; a table with the txmq.array marker or
 *   whose keys are exactly 1..n -> array; an empty table -> map unless marked
 *   with txmq.array(t); other tables -> map (keys: strings or integers);
 *   depth limited to TXMQ_SCRIPT_MAX_DEPTH; functions, userdata, threads and
 *   cyclic tables -> a clear error, never a silent skip.
 *
 * SANDBOX: each state's handlers run with an allow-list _ENV: assert, error,
 * ipairs, next, pairs, pcall, select, tonumber, tostring, type, xpcall,
 * rawequal/rawget/rawlen/rawset, setmetatable/getmetatable, string, table,
 * math, utf8, os.time/os.clock/os.date/os.difftime, and the txmq table (log,
 * the result constants, null, array, what the host registers under
 * txmq.host). No io, os.execute, debug, load of bytecode (load/loadstring
 * accept text chunks only and run in the sandbox), dofile, loadfile, or
 * require - except require of modules found on the module paths the
 * operator allowed (txmq_script_allow_path).
 *
 * LIMITS: a memory cap per group (own lua_Alloc; frees and shrinks never
 * fail); a time budget per call enforced by a count hook checking a
 * monotonic deadline, which once past re-arms on every instruction so that
 * a pcall inside the script cannot swallow it; a shorter budget for loading.
 *
 * THREADS: handlers run on the host's worker threads, never on the loop; a
 * group has STATES_PER_GROUP Lua states, each used by one thread at a time;
 * results are posted back to the loop thread.
 *
 * HOT RELOAD: txmq_script_reload (or a change of the file, when WATCH is on)
 * builds the new version in fresh states under the load budget; only if it
 * loads and defines at least one handler does it replace the old one. Calls
 * already running finish on the old version; new calls use the new one; the
 * old states are closed when no call uses them. A reload while another
 * reload of the same group runs fails with TXMQ_EBUSY. The version is a
 * 64-bit FNV-1a hash of the file's bytes, printed as 16 hex digits: the same
 * file always has the same version, and every decision records it.
 * txmq_script_set_loaded_cb tells the host of every load, whatever asked
 * for it (the watch, txmq_script_reload, a group's first call).
 *
 * LOG: the host's log lines (a script loaded, replaced or refused, a
 * handler's failure, the scripts' own txmq.log) go to standard error as
 *   txmq script group=G version=V level=L msg=M
 * unless the host installs its own logger (txmq_script_set_log_cb).
 */
#ifndef TXMQ_SCRIPT_H
#define TXMQ_SCRIPT_H

#include <stddef.h>
#include <stdint.h>
#include <lua.h>
#include <uv.h>

#include "txmq/msg.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct txmq_script_host_s txmq_script_host_t;

#define TXMQ_SCRIPT_MAX_DEPTH 32
#define TXMQ_SCRIPT_VERSION_LEN 16

typedef enum {
  TXMQ_SCRIPT_OPT_WORKERS = 1,       /* worker threads, default 2 */
  TXMQ_SCRIPT_OPT_STATES_PER_GROUP,  /* default 1 */
  TXMQ_SCRIPT_OPT_MEMORY_LIMIT,      /* bytes per state, default 64 MiB */
  TXMQ_SCRIPT_OPT_CALL_BUDGET_MS,    /* default 1000 */
  TXMQ_SCRIPT_OPT_LOAD_BUDGET_MS,    /* default 200 */
  TXMQ_SCRIPT_OPT_WATCH              /* 1: reload on file change (default 1) */
} txmq_script_opt_t;

typedef enum {
  TXMQ_SCRIPT_COMMIT = 1,
  TXMQ_SCRIPT_ROLLBACK = 2,
  TXMQ_SCRIPT_UNKNOWN = 3
} txmq_script_result_t;

typedef enum {
  TXMQ_SCRIPT_LOG_DEBUG = 0,
  TXMQ_SCRIPT_LOG_INFO = 1,
  TXMQ_SCRIPT_LOG_WARN = 2,
  TXMQ_SCRIPT_LOG_ERROR = 3
} txmq_script_log_level_t;

/* The outcome of one handler call, on the loop thread. status is 0 when the
 * handler returned a valid result, else a TXMQ_E* code (ESCRIPT for an
 * error, a wrong result or a missing handler; ETIMEDOUT; ENOMEM for the
 * cap; ENOTFOUND for a group without a script) and result is UNKNOWN.
 * version and diag are valid during the call; diag says what failed, with
 * the script's path, version and line. */
typedef void (*txmq_script_call_cb)(txmq_script_host_t* host, int status,
                                    txmq_script_result_t result,
                                    const char* version, const char* diag,
                                    void* arg);
typedef void (*txmq_script_reload_cb)(txmq_script_host_t* host, int status,
                                      const char* group, const char* version,
                                      const char* diag, void* arg);

/* One log line of the host. group is the producer group; version is the
 * script version it concerns, "" when there is none (a file that could not
 * be read). msg is the line's text as written: it names the script's path
 * (and its line, for a handler's error) and may span lines (a Lua
 * traceback), so escape it as the host's log format needs. All three are
 * valid during the call only. Runs on the loop thread (a load's outcome)
 * and on the worker threads, where scripts are built and handlers run (a
 * script's error, the scripts' txmq.log), possibly on several threads at
 * once: it must be thread-safe, and it must not call txmq_script_*
 * functions. */
typedef void (*txmq_script_log_cb)(void* arg, txmq_script_log_level_t level,
                                   const char* group, const char* version,
                                   const char* msg);

/* The outcome of one load of group's script, on the loop thread. status 0:
 * version is now serving and prev_version is the version it replaced (NULL
 * on the group's first load; equal to version when the same file was
 * loaded again), diag is "". Non-zero status (TXMQ_ESCRIPT, ETIMEDOUT,
 * ENOMEM, ENOTFOUND, EIO, ...): the load failed, version is the version of
 * the file that failed (NULL if it could not be read), prev_version the
 * version that keeps serving (NULL if none) and diag says why, with the
 * script's path and line. The strings are valid during the call only. */
typedef void (*txmq_script_loaded_cb)(txmq_script_host_t* host, int status,
                                      const char* group, const char* version,
                                      const char* prev_version,
                                      const char* diag, void* arg);

int txmq_script_host_new(txmq_script_host_t** out, uv_loop_t* loop,
                         const char* scripts_dir);
int txmq_script_host_set(txmq_script_host_t* host, txmq_script_opt_t opt,
                         int64_t value);
/* Allows require() from a Lua module path pattern, e.g.
 * "/usr/lib/x86_64-linux-gnu/lua/5.4/?.so" (C modules) or
 * "/usr/share/lua/5.4/?.lua" (Lua modules). Before start. */
int txmq_script_allow_path(txmq_script_host_t* host, const char* pattern);
/* Registers fn as txmq.host.<name> in every state created from now on. fn
 * runs on worker threads, possibly concurrently for different states; arg
 * is available to it through txmq_script_fn_arg(L). Before start. */
int txmq_script_register(txmq_script_host_t* host, const char* name,
                         lua_CFunction fn, void* arg);
void* txmq_script_fn_arg(lua_State* L);
/* Sends the host's log lines to cb instead of standard error (cb NULL:
 * back to standard error). arg is passed to cb and must stay valid until
 * the close callback ran. Before start (the workers read it without a
 * lock): TXMQ_EINVAL after txmq_script_host_start. */
int txmq_script_set_log_cb(txmq_script_host_t* host, txmq_script_log_cb cb,
                           void* arg);
/* "debug", "info", "warn" or "error" ("info" for any other value). */
const char* txmq_script_log_level_name(txmq_script_log_level_t level);
/* Calls cb (NULL: no one) after every load of any group's script: a first
 * load, a txmq_script_reload, a reload by the file watch, failed or not,
 * once per load, before the reload's own callback. Not called when the
 * watch finds the file's bytes unchanged (nothing is loaded) nor for a
 * load cut short by txmq_script_host_close. arg must stay valid until the
 * close callback ran. Any time, on the loop thread. */
int txmq_script_set_loaded_cb(txmq_script_host_t* host,
                              txmq_script_loaded_cb cb, void* arg);
/* Starts the worker threads and the file watch. */
int txmq_script_host_start(txmq_script_host_t* host);

/* Loads <dir>/<group>.lua synchronously-in-effect: cb reports the result.
 * A group is loaded on first use too. */
int txmq_script_reload(txmq_script_host_t* host, const char* group,
                       txmq_script_reload_cb cb, void* arg);
/* Non-zero if a script is loaded for group (or a file for it exists). */
int txmq_script_has_group(txmq_script_host_t* host, const char* group);
/* The loaded version of group, or NULL. */
const char* txmq_script_version(txmq_script_host_t* host, const char* group);

/* Runs executeLocalTransaction(msg, arg) of group on a worker. msgs are
 * copied; arg (may be NULL) is a msgpack value decoded with the codec. If the
 * call fails, cb is never called. */
int txmq_script_execute(txmq_script_host_t* host, const char* group,
                        const uint8_t* tx_id, const txmq_msg_t* const* msgs,
                        size_t n, const void* arg, size_t arg_len,
                        txmq_script_call_cb cb, void* cbarg);
/* Runs checkLocalTransaction(msg) of group on a worker. */
int txmq_script_check(txmq_script_host_t* host, const char* group,
                      const uint8_t* tx_id, const txmq_msg_t* const* msgs,
                      size_t n, uint32_t check_count, txmq_script_call_cb cb,
                      void* cbarg);

/* Counters per group for status and tests. */
typedef struct {
  uint64_t calls;
  uint64_t failures;   /* errors, bad results, missing handlers */
  uint64_t timeouts;
  uint64_t oom;
  uint64_t reloads;
  uint64_t reload_failures;
} txmq_script_stats_t;
int txmq_script_stats(txmq_script_host_t* host, const char* group,
                      txmq_script_stats_t* out);

/* Stops accepting calls, lets running ones finish (their callbacks run),
 * joins the workers, closes handles; cb on the loop when done; then free. */
int txmq_script_host_close(txmq_script_host_t* host,
                           void (*cb)(txmq_script_host_t* host, void* arg),
                           void* arg);
void txmq_script_host_free(txmq_script_host_t* host);

#ifdef __cplusplus
}
#endif
#endif /* TXMQ_SCRIPT_H */
