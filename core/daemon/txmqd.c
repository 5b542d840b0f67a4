/*
 * txmqd.c - the txmq daemon: command line and configuration file, logging,
 * start-up (runtime, consumer engine, server), signals and clean shutdown.
 *
 *   txmqd [-c txmqd.conf.lua] [--listen 127.0.0.1:8967] [--data ./data]
 *         [--scripts ./scripts] [--sync always|interval|never]
 *         [--sync-interval-ms N] [--log-level debug|info|warn|error]
 *
 * CONFIGURATION FILE: Lua, run once at start in a bare state (no io, os,
 * require, load or dofile; string, table and math, the safe base
 * functions and os.getenv), with a 16 MiB memory cap and a 1 s time
 * limit. The file either returns a table of keys or sets them as globals;
 * an unknown key, a key of the wrong type or a value out of range is an
 * error that names the key. Flags override the file. The keys (see
 * core/daemon/txmqd.conf.lua for an annotated example):
 *   listen, data, scripts                  strings, as the flags
 *   sync ("always"|"interval"|"never"), sync_interval_ms, segment_size,
 *   retain_bytes, retain_seconds, default_queues, checkpoint_interval_ms,
 *   snapshot_interval_ms, max_topics       the store and its log
 *   tx_timeout_ms, check_interval_ms, check_backoff_pct,
 *   check_interval_max_ms, max_checks, check_timeout_ms, check_retry_ms,
 *   max_producer_groups                    transactions and checks
 *   workers, states_per_group, script_memory_limit, call_budget_ms,
 *   load_budget_ms, watch_scripts (boolean), allow_modules (array of
 *   module path patterns)                  the Lua handler host
 *   max_frame, max_connections, max_inflight, heartbeat_ms, max_output,
 *   drain_ms                               the server
 *   visibility_ms, max_deliveries, consumer_max_inflight,
 *   max_consumer_groups                    consumers
 *   auth                                   { producer = S, consumer = S,
 *                                          admin = S }: secrets of 8..256
 *                                          bytes by role; absent (the
 *                                          default): no authentication
 *   log_level                              "debug"|"info"|"warn"|"error"
 * Relative paths are relative to the working directory. A secret need not
 * be in the file: auth = { admin = os.getenv("TXMQ_ADMIN_SECRET") } reads
 * it from the environment (an auth table that ends up with no secret at
 * all is an error, so an unset variable cannot turn authentication off
 * unnoticed). No error message or log line shows a secret.
 *
 * LOGGING: one line per event on stderr, greppable:
 *   2026-11-23T10:00:00.123Z txmqd level=info msg="listening" addr=...
 * The "listening" line carries the port actually bound (--listen HOST:0
 * picks a free one). The handler host's lines (a script loaded, replaced
 * or refused, a handler's error, the scripts' own txmq.log) are lines of
 * the same kind, msg="script" group=G version=V text="...", the text
 * naming the script's path and line; log_level applies to them too.
 *
 * EXIT STATUS: 0 after a clean shutdown (SIGINT or SIGTERM: stop accepting,
 * answer or refuse requests in progress, close the runtime - log flushed,
 * checkpoint taken); 2 for a bad command line or configuration (one line
 * "txmqd: ..." on stderr); 1 when start-up fails (data directory unusable
 * or locked by another process, address in use), logged as one
 * level=error line; 1 too when a write or fsync of the commit log fails
 * (ENOSPC, EIO): txmqd stops rather than run with a log that refuses
 * every append (fail-stop; started again, it recovers).
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <uv.h>

#include "txmq/consumer.h"
#include "txmq/error.h"
#include "txmq/log.h"
#include "txmq/net.h"
#include "txmq/runtime.h"
#include "txmq/store.h"

#ifndef TXMQ_VERSION
#define TXMQ_VERSION "unknown"
#endif

#define EXIT_USAGE 2
#define CONFIG_MEMORY (16u * 1024u * 1024u)
#define CONFIG_TIME_MS 1000
#define MAX_MODULE_PATHS 64

/* ---- logging ---- */

enum { LV_DEBUG = 0, LV_INFO, LV_WARN, LV_ERROR };
static const char* const LEVELS[] = {"debug", "info", "warn", "error"};

typedef struct {
  int level; /* lowest level written */
} logger_t;

static void log_line(logger_t* lg, int level, const char* msg,
                     const char* fields) {
  if (level < lg->level) return;
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  struct tm tm;
  gmtime_r(&ts.tv_sec, &tm);
  char line[4096];
  int n = snprintf(line, sizeof line,
                   "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ txmqd level=%s "
                   "msg=\"%s\"%s%s",
                   tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
                   tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000L, LEVELS[level],
                   msg, fields != NULL && fields[0] ? " " : "",
                   fields != NULL ? fields : "");
  if (n < 0) return;
  size_t len = (size_t)n < sizeof line - 1 ? (size_t)n : sizeof line - 2;
  /* One line, whatever the fields hold. */
  for (size_t i = 0; i < len; i++)
    if (line[i] == '\n' || line[i] == '\r') line[i] = ' ';
  line[len++] = '\n';
  /* One write per line, so lines of concurrent writers do not mix. */
  ssize_t w = write(STDERR_FILENO, line, len);
  (void)w;
}

static void logf_(logger_t* lg, int level, const char* msg, const char* fmt,
                  ...) __attribute__((format(printf, 4, 5)));
static void logf_(logger_t* lg, int level, const char* msg, const char* fmt,
                  ...) {
  char fields[1536];
  fields[0] = '\0';
  if (fmt != NULL) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(fields, sizeof fields, fmt, ap);
    va_end(ap);
  }
  log_line(lg, level, msg, fields);
}

/* Quotes a value for a log field: as is when it is a plain word, else in
 * double quotes with " and \ escaped and line breaks and tabs as spaces. */
static const char* q(const char* s, char* buf, size_t len) {
  int plain = s[0] != '\0';
  for (const char* p = s; *p && plain; p++)
    plain = *p > ' ' && *p != '"' && *p != '\\' && *p != '=' && *p < 0x7f;
  if (plain) return s;
  size_t k = 0;
  buf[k++] = '"';
  for (const char* p = s; *p && k + 3 < len; p++) {
    if (*p == '"' || *p == '\\') buf[k++] = '\\';
    buf[k++] = (*p == '\n' || *p == '\r' || *p == '\t') ? ' ' : *p;
  }
  buf[k++] = '"';
  buf[k] = '\0';
  return buf;
}

static void on_server_log(void* arg, txmq_server_log_level_t level,
                          const char* msg, const char* fields) {
  log_line(arg, (int)level, msg, fields);
}

/* The handler host's lines. They come from the loop and from the handler
 * workers at once: log_line only reads the level, fixed before start, and
 * writes each line with one write. */
static void on_script_log(void* arg, txmq_script_log_level_t level,
                          const char* group, const char* version,
                          const char* text) {
  logger_t* lg = arg;
  int lv = level <= TXMQ_SCRIPT_LOG_ERROR ? (int)level : LV_ERROR;
  if (lv < lg->level) return;
  char qg[160], qt[2600], fields[3000];
  snprintf(fields, sizeof fields, "group=%s version=%s text=%s",
           q(group, qg, sizeof qg), version[0] != '\0' ? version : "-",
           q(text, qt, sizeof qt));
  log_line(lg, lv, "script", fields);
}

/* ---- configuration ---- */

typedef enum {
  K_STR,
  K_INT,
  K_BOOL,
  K_SYNC,
  K_LEVEL,
  K_LIST,
  K_AUTH
} ktype_t;

/* Integer keys, in the order of KEYS below. */
enum {
  I_SYNC_INTERVAL_MS,
  I_SEGMENT_SIZE,
  I_RETAIN_BYTES,
  I_RETAIN_SECONDS,
  I_DEFAULT_QUEUES,
  I_CHECKPOINT_INTERVAL_MS,
  I_SNAPSHOT_INTERVAL_MS,
  I_MAX_TOPICS,
  I_TX_TIMEOUT_MS,
  I_CHECK_INTERVAL_MS,
  I_CHECK_BACKOFF_PCT,
  I_CHECK_INTERVAL_MAX_MS,
  I_MAX_CHECKS,
  I_CHECK_TIMEOUT_MS,
  I_CHECK_RETRY_MS,
  I_MAX_PRODUCER_GROUPS,
  I_WORKERS,
  I_STATES_PER_GROUP,
  I_SCRIPT_MEMORY_LIMIT,
  I_CALL_BUDGET_MS,
  I_LOAD_BUDGET_MS,
  I_MAX_FRAME,
  I_MAX_CONNECTIONS,
  I_MAX_INFLIGHT,
  I_HEARTBEAT_MS,
  I_MAX_OUTPUT,
  I_DRAIN_MS,
  I_VISIBILITY_MS,
  I_MAX_DELIVERIES,
  I_CONSUMER_MAX_INFLIGHT,
  I_MAX_CONSUMER_GROUPS,
  I_COUNT
};

typedef struct {
  char* listen;
  char* data;
  char* scripts;
  int sync;         /* -1 unset */
  int log_level;    /* -1 unset */
  int watch;        /* -1 unset */
  int64_t ints[I_COUNT];
  unsigned char has[I_COUNT];
  char* modules[MAX_MODULE_PATHS];
  size_t nmodules;
  /* auth: secrets by role, in the order of ROLES; NULL: none */
  char* secrets[3];
  unsigned auth_roles; /* bit r: ROLES[r] has a secret (kept after the
                          secrets went to the server) */
  int has_auth;
} config_t;

/* The roles of the auth key, as txmq_server_set_secret names them. */
static const char* const ROLES[3] = {"producer", "consumer", "admin"};
#define SECRET_MIN 8
#define SECRET_MAX 256

static const struct {
  const char* name;
  ktype_t type;
  int idx; /* for K_INT */
} KEYS[] = {
    {"listen", K_STR, 0},
    {"data", K_STR, 1},
    {"scripts", K_STR, 2},
    {"sync", K_SYNC, 0},
    {"log_level", K_LEVEL, 0},
    {"watch_scripts", K_BOOL, 0},
    {"allow_modules", K_LIST, 0},
    {"auth", K_AUTH, 0},
    {"sync_interval_ms", K_INT, I_SYNC_INTERVAL_MS},
    {"segment_size", K_INT, I_SEGMENT_SIZE},
    {"retain_bytes", K_INT, I_RETAIN_BYTES},
    {"retain_seconds", K_INT, I_RETAIN_SECONDS},
    {"default_queues", K_INT, I_DEFAULT_QUEUES},
    {"checkpoint_interval_ms", K_INT, I_CHECKPOINT_INTERVAL_MS},
    {"snapshot_interval_ms", K_INT, I_SNAPSHOT_INTERVAL_MS},
    {"max_topics", K_INT, I_MAX_TOPICS},
    {"tx_timeout_ms", K_INT, I_TX_TIMEOUT_MS},
    {"check_interval_ms", K_INT, I_CHECK_INTERVAL_MS},
    {"check_backoff_pct", K_INT, I_CHECK_BACKOFF_PCT},
    {"check_interval_max_ms", K_INT, I_CHECK_INTERVAL_MAX_MS},
    {"max_checks", K_INT, I_MAX_CHECKS},
    {"check_timeout_ms", K_INT, I_CHECK_TIMEOUT_MS},
    {"check_retry_ms", K_INT, I_CHECK_RETRY_MS},
    {"max_producer_groups", K_INT, I_MAX_PRODUCER_GROUPS},
    {"workers", K_INT, I_WORKERS},
    {"states_per_group", K_INT, I_STATES_PER_GROUP},
    {"script_memory_limit", K_INT, I_SCRIPT_MEMORY_LIMIT},
    {"call_budget_ms", K_INT, I_CALL_BUDGET_MS},
    {"load_budget_ms", K_INT, I_LOAD_BUDGET_MS},
    {"max_frame", K_INT, I_MAX_FRAME},
    {"max_connections", K_INT, I_MAX_CONNECTIONS},
    {"max_inflight", K_INT, I_MAX_INFLIGHT},
    {"heartbeat_ms", K_INT, I_HEARTBEAT_MS},
    {"max_output", K_INT, I_MAX_OUTPUT},
    {"drain_ms", K_INT, I_DRAIN_MS},
    {"visibility_ms", K_INT, I_VISIBILITY_MS},
    {"max_deliveries", K_INT, I_MAX_DELIVERIES},
    {"consumer_max_inflight", K_INT, I_CONSUMER_MAX_INFLIGHT},
    {"max_consumer_groups", K_INT, I_MAX_CONSUMER_GROUPS},
};
#define NKEYS (sizeof KEYS / sizeof KEYS[0])

static void config_init(config_t* c) {
  memset(c, 0, sizeof *c);
  c->sync = -1;
  c->log_level = -1;
  c->watch = -1;
}

/* Forgets a secret so that it does not linger in freed memory. */
static void secret_free(char** s) {
  if (*s != NULL) {
    explicit_bzero(*s, strlen(*s));
    free(*s);
    *s = NULL;
  }
}

static void config_free(config_t* c) {
  free(c->listen);
  free(c->data);
  free(c->scripts);
  for (size_t i = 0; i < c->nmodules; i++) free(c->modules[i]);
  for (size_t i = 0; i < 3; i++) secret_free(&c->secrets[i]);
}

static int parse_sync(const char* s) {
  if (strcmp(s, "always") == 0) return TXMQ_SYNC_ALWAYS;
  if (strcmp(s, "interval") == 0) return TXMQ_SYNC_INTERVAL;
  if (strcmp(s, "never") == 0) return TXMQ_SYNC_NEVER;
  return -1;
}

static int parse_level(const char* s) {
  for (int i = 0; i < 4; i++)
    if (strcmp(s, LEVELS[i]) == 0) return i;
  return -1;
}

static void usage_error(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
static void usage_error(const char* fmt, ...) {
  char buf[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  for (char* p = buf; *p; p++)
    if (*p == '\n' || *p == '\r') *p = ' ';
  fprintf(stderr, "txmqd: %s\n", buf);
}

/* The Lua side of the configuration file. */
typedef struct {
  size_t used;
  size_t limit;
  uint64_t deadline_ms;
} cfg_lua_t;

static void* cfg_alloc(void* ud, void* ptr, size_t osize, size_t nsize) {
  cfg_lua_t* s = ud;
  size_t old = ptr != NULL ? osize : 0;
  if (nsize == 0) {
    free(ptr);
    s->used -= old;
    return NULL;
  }
  /* Shrinks never fail; growth stops at the cap. */
  if (nsize > old && s->used + (nsize - old) > s->limit) return NULL;
  void* p = realloc(ptr, nsize);
  if (p != NULL) s->used = s->used - old + nsize;
  else if (nsize <= old) return ptr;
  return p;
}

static void cfg_hook(lua_State* L, lua_Debug* ar) {
  (void)ar;
  cfg_lua_t* s;
  lua_getallocf(L, (void**)&s);
  if (uv_hrtime() / 1000000u > s->deadline_ms) {
    /* Re-arm on every instruction so a pcall in the file cannot swallow
     * the stop. */
    lua_sethook(L, cfg_hook, LUA_MASKCOUNT, 1);
    luaL_error(L, "the configuration file ran longer than %d ms",
               CONFIG_TIME_MS);
  }
}

/* Builds the sandbox: a table of the allowed functions and libraries. */
static int cfg_sandbox(lua_State* L) {
  luaL_requiref(L, LUA_GNAME, luaopen_base, 1);
  luaL_requiref(L, LUA_STRLIBNAME, luaopen_string, 1);
  luaL_requiref(L, LUA_TABLIBNAME, luaopen_table, 1);
  luaL_requiref(L, LUA_MATHLIBNAME, luaopen_math, 1);
  luaL_requiref(L, LUA_OSLIBNAME, luaopen_os, 1);
  lua_settop(L, 0);
  static const char* const base[] = {
      "assert", "error", "ipairs", "next", "pairs", "pcall", "select",
      "tonumber", "tostring", "type", "xpcall", "rawequal", "rawget",
      "rawlen", "rawset", "setmetatable", "getmetatable", NULL};
  lua_newtable(L); /* the library table, __index of the file's _ENV */
  lua_pushglobaltable(L);
  for (int i = 0; base[i] != NULL; i++) {
    lua_getfield(L, 2, base[i]);
    lua_setfield(L, 1, base[i]);
  }
  static const char* const libs[] = {"string", "table", "math", NULL};
  for (int i = 0; libs[i] != NULL; i++) {
    lua_getfield(L, 2, libs[i]);
    lua_setfield(L, 1, libs[i]);
  }
  lua_newtable(L);
  lua_getfield(L, 2, "os");
  lua_getfield(L, -1, "getenv");
  lua_setfield(L, -3, "getenv");
  lua_pop(L, 1);
  lua_setfield(L, 1, "os");
  lua_pop(L, 1);
  return 1;
}

static int lua_int_of(lua_State* L, int idx, int64_t* out) {
  if (lua_isinteger(L, idx)) {
    *out = (int64_t)lua_tointeger(L, idx);
    return 0;
  }
  if (lua_type(L, idx) == LUA_TNUMBER) {
    lua_Integer n;
    if (lua_numbertointeger(lua_tonumber(L, idx), &n)) {
      *out = (int64_t)n;
      return 0;
    }
  }
  return -1;
}

/* Reads the auth table at the top of the stack into cfg: secrets by role,
 * 8..256 bytes each. Errors never show a secret. */
static int cfg_read_auth(lua_State* L, const char* path, config_t* cfg) {
  int t = lua_gettop(L);
  char unknown[256];
  size_t nu = 0;
  unknown[0] = '\0';
  cfg->has_auth = 1;
  lua_pushnil(L);
  while (lua_next(L, t) != 0) {
    if (lua_type(L, -2) != LUA_TSTRING) {
      usage_error("config %s: key 'auth' takes roles as names (producer, "
                  "consumer, admin), not a %s", path, luaL_typename(L, -2));
      return -1;
    }
    const char* role = lua_tostring(L, -2);
    int r;
    for (r = 0; r < 3; r++)
      if (strcmp(role, ROLES[r]) == 0) break;
    if (r == 3) {
      if (nu < sizeof unknown)
        nu += (size_t)snprintf(unknown + nu, sizeof unknown - nu, "%s'%s'",
                               nu ? ", " : "", role);
      lua_pop(L, 1);
      continue;
    }
    size_t n = 0;
    const char* v = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &n)
                                                   : NULL;
    if (v == NULL || n < SECRET_MIN || n > SECRET_MAX || strlen(v) != n) {
      usage_error("config %s: auth.%s must be a string of %d to %d bytes "
                  "(without NUL bytes)", path, role, SECRET_MIN, SECRET_MAX);
      return -1;
    }
    secret_free(&cfg->secrets[r]);
    if ((cfg->secrets[r] = strdup(v)) == NULL) return -1;
    cfg->auth_roles |= 1u << r;
    lua_pop(L, 1);
  }
  if (nu > 0) {
    usage_error("config %s: key 'auth' has unknown role(s) %s (the roles are "
                "producer, consumer and admin)", path, unknown);
    return -1;
  }
  int any = 0;
  for (int r = 0; r < 3; r++) any |= cfg->secrets[r] != NULL;
  if (!any) {
    usage_error("config %s: key 'auth' sets no secret (is the environment "
                "variable it reads unset?); remove the key to run without "
                "authentication", path);
    return -1;
  }
  for (int r = 0; r < 2; r++) {
    if (cfg->secrets[r] != NULL && cfg->secrets[2] != NULL &&
        strcmp(cfg->secrets[r], cfg->secrets[2]) == 0) {
      usage_error("config %s: auth.%s is the same as auth.admin: whoever has "
                  "it would be an admin", path, ROLES[r]);
      return -1;
    }
  }
  return 0;
}

/* Reads the table at the top of the stack into cfg. */
static int cfg_read_table(lua_State* L, const char* path, config_t* cfg) {
  int t = lua_gettop(L);
  lua_pushnil(L);
  while (lua_next(L, t) != 0) {
    if (lua_type(L, -2) != LUA_TSTRING) {
      usage_error("config %s: keys must be names, not %s", path,
                  luaL_typename(L, -2));
      return -1;
    }
    const char* key = lua_tostring(L, -2);
    size_t k;
    for (k = 0; k < NKEYS; k++)
      if (strcmp(KEYS[k].name, key) == 0) break;
    if (k == NKEYS) {
      usage_error("config %s: unknown key '%s'", path, key);
      return -1;
    }
    int vt = lua_type(L, -1);
    switch (KEYS[k].type) {
      case K_STR: {
        if (vt != LUA_TSTRING) {
          usage_error("config %s: key '%s' must be a string", path, key);
          return -1;
        }
        char** dst = KEYS[k].idx == 0   ? &cfg->listen
                     : KEYS[k].idx == 1 ? &cfg->data
                                        : &cfg->scripts;
        free(*dst);
        *dst = strdup(lua_tostring(L, -1));
        if (*dst == NULL) return -1;
        break;
      }
      case K_SYNC:
        if (vt != LUA_TSTRING || parse_sync(lua_tostring(L, -1)) < 0) {
          usage_error("config %s: key 'sync' must be \"always\", \"interval\" "
                      "or \"never\"", path);
          return -1;
        }
        cfg->sync = parse_sync(lua_tostring(L, -1));
        break;
      case K_LEVEL:
        if (vt != LUA_TSTRING || parse_level(lua_tostring(L, -1)) < 0) {
          usage_error("config %s: key 'log_level' must be \"debug\", \"info\", "
                      "\"warn\" or \"error\"", path);
          return -1;
        }
        cfg->log_level = parse_level(lua_tostring(L, -1));
        break;
      case K_BOOL:
        if (vt != LUA_TBOOLEAN) {
          usage_error("config %s: key '%s' must be a boolean", path, key);
          return -1;
        }
        cfg->watch = lua_toboolean(L, -1);
        break;
      case K_INT: {
        int64_t v;
        if (lua_int_of(L, -1, &v) != 0) {
          usage_error("config %s: key '%s' must be an integer", path, key);
          return -1;
        }
        cfg->ints[KEYS[k].idx] = v;
        cfg->has[KEYS[k].idx] = 1;
        break;
      }
      case K_LIST: {
        if (vt != LUA_TTABLE) {
          usage_error("config %s: key '%s' must be an array of strings", path,
                      key);
          return -1;
        }
        lua_Integer n = (lua_Integer)lua_rawlen(L, -1);
        if (n > MAX_MODULE_PATHS) {
          usage_error("config %s: key '%s' has more than %d entries", path,
                      key, MAX_MODULE_PATHS);
          return -1;
        }
        for (lua_Integer i = 1; i <= n; i++) {
          lua_rawgeti(L, -1, i);
          if (lua_type(L, -1) != LUA_TSTRING) {
            usage_error("config %s: key '%s' must be an array of strings",
                        path, key);
            return -1;
          }
          char* s = strdup(lua_tostring(L, -1));
          if (s == NULL) return -1;
          cfg->modules[cfg->nmodules++] = s;
          lua_pop(L, 1);
        }
        break;
      }
      case K_AUTH:
        if (vt != LUA_TTABLE) {
          usage_error("config %s: key 'auth' must be a table of secrets by "
                      "role: { producer = ..., consumer = ..., admin = ... }",
                      path);
          return -1;
        }
        if (cfg_read_auth(L, path, cfg) != 0) return -1;
        break;
    }
    lua_pop(L, 1);
  }
  return 0;
}

static int config_load(const char* path, config_t* cfg) {
  cfg_lua_t s = {0, CONFIG_MEMORY, 0};
  lua_State* L = lua_newstate(cfg_alloc, &s);
  if (L == NULL) {
    usage_error("config %s: out of memory", path);
    return -1;
  }
  int rc = -1;
  lua_pushcfunction(L, cfg_sandbox);
  if (lua_pcall(L, 0, 1, 0) != LUA_OK) {
    usage_error("config %s: %s", path, lua_tostring(L, -1));
    goto out;
  }
  /* stack: lib. The file's _ENV is a fresh table reading through to lib, so
   * afterwards it holds exactly the globals the file set. */
  lua_newtable(L);            /* env */
  lua_newtable(L);            /* its metatable */
  lua_pushvalue(L, 1);
  lua_setfield(L, -2, "__index");
  lua_setmetatable(L, -2);
  int status = luaL_loadfilex(L, path, "t");
  if (status != LUA_OK) {
    const char* e = lua_tostring(L, -1);
    if (status == LUA_ERRFILE) {
      usage_error("cannot read config %s: %s", path, strerror(errno));
    } else {
      usage_error("config %s: %s", path, e != NULL ? e : "cannot load");
    }
    goto out;
  }
  lua_pushvalue(L, 2);
  lua_setupvalue(L, -2, 1);   /* _ENV */
  s.deadline_ms = uv_hrtime() / 1000000u + CONFIG_TIME_MS;
  lua_sethook(L, cfg_hook, LUA_MASKCOUNT, 1000);
  if (lua_pcall(L, 0, 1, 0) != LUA_OK) {
    const char* e = lua_tostring(L, -1);
    usage_error("config %s: %s", path, e != NULL ? e : "error");
    goto out;
  }
  lua_sethook(L, NULL, 0, 0);
  if (lua_type(L, -1) == LUA_TTABLE) {
    rc = cfg_read_table(L, path, cfg);
  } else if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    rc = cfg_read_table(L, path, cfg); /* the env table */
  } else {
    usage_error("config %s: the file must return a table (or nothing and set "
                "globals), not a %s", path, luaL_typename(L, -1));
  }
out:
  lua_close(L);
  return rc;
}

/* ---- the address ---- */

static int parse_listen(const char* s, char* host, size_t hostlen, int* port) {
  const char* colon = strrchr(s, ':');
  if (colon == NULL || colon == s || colon[1] == '\0') return -1;
  const char* h = s;
  size_t hl = (size_t)(colon - s);
  if (h[0] == '[') {
    if (hl < 3 || h[hl - 1] != ']') return -1;
    h++;
    hl -= 2;
  } else if (memchr(h, ':', hl) != NULL) {
    return -1; /* IPv6 needs brackets */
  }
  if (hl == 0 || hl >= hostlen) return -1;
  memcpy(host, h, hl);
  host[hl] = '\0';
  if (strcmp(host, "localhost") == 0) snprintf(host, hostlen, "127.0.0.1");
  char* end;
  errno = 0;
  long p = strtol(colon + 1, &end, 10);
  if (errno != 0 || *end != '\0' || p < 0 || p > 65535 ||
      !(colon[1] >= '0' && colon[1] <= '9'))
    return -1;
  *port = (int)p;
  return 0;
}

/* ---- the daemon ---- */

typedef struct {
  uv_loop_t loop;
  logger_t log;
  config_t cfg;
  char host[128];
  int port;
  txmq_runtime_t* rt;
  txmq_consumers_t* cs;
  txmq_server_t* srv;
  uv_signal_t sigint;
  uv_signal_t sigterm;
  uv_timer_t health;  /* watches the commit log for a failed write/fsync */
  int signals_open;
  int stopping;
  int opened;    /* the runtime opened */
  int announced; /* the "starting" line was logged */
  int exit_code;
  uint64_t stop_started;
} daemon_t;

static void on_signal_closed(uv_handle_t* h) { (void)h; }

static void finish_stop(daemon_t* d) {
  /* A configuration refused before start-up was announced stays one
   * line. */
  if (d->announced)
    logf_(&d->log, LV_INFO, "stopped", "shutdown_ms=%" PRIu64 " exit=%d",
          (uv_hrtime() / 1000000u) - d->stop_started, d->exit_code);
  if (d->signals_open) {
    d->signals_open = 0;
    uv_close((uv_handle_t*)&d->sigint, on_signal_closed);
    uv_close((uv_handle_t*)&d->sigterm, on_signal_closed);
    uv_close((uv_handle_t*)&d->health, on_signal_closed);
  }
}

static void on_scripts_closed(txmq_script_host_t* host, void* arg) {
  (void)host;
  finish_stop(arg);
}

static void on_runtime_closed(txmq_runtime_t* rt, void* arg) {
  daemon_t* d = arg;
  const char* diag = txmq_runtime_diag(rt);
  if (d->opened && diag[0] != '\0') {
    char qb[600];
    logf_(&d->log, LV_ERROR, "runtime closed with an error", "reason=%s",
          q(diag, qb, sizeof qb));
    if (d->exit_code == 0) d->exit_code = 1;
  }
  /* After a failed open the runtime leaves its handler host (never
   * started, but holding handles on the loop) alone; close it here so the
   * loop can end. ECLOSED: the runtime did close it. */
  if (!d->opened &&
      txmq_script_host_close(txmq_runtime_scripts(rt), on_scripts_closed, d) == 0)
    return;
  finish_stop(d);
}

static void close_runtime(daemon_t* d) {
  if (txmq_runtime_close(d->rt, on_runtime_closed, d) != 0)
    on_runtime_closed(d->rt, d);
}

static void on_consumers_closed(txmq_consumers_t* cs, void* arg) {
  (void)cs;
  close_runtime(arg);
}

static void on_server_closed(txmq_server_t* srv, void* arg) {
  (void)srv;
  daemon_t* d = arg;
  if (d->cs != NULL && txmq_consumers_close(d->cs, on_consumers_closed, d) == 0)
    return;
  close_runtime(d);
}

/* Stops everything in order: the server (no new requests, answers the
 * ones in progress), the consumer engine, the runtime (scripts, engine,
 * store: the log is flushed and a checkpoint written). */
static void stop(daemon_t* d, int code) {
  if (d->stopping) return;
  d->stopping = 1;
  if (d->signals_open) uv_timer_stop(&d->health);
  d->exit_code = code;
  d->stop_started = uv_hrtime() / 1000000u;
  if (d->srv != NULL && txmq_server_close(d->srv, on_server_closed, d) == 0)
    return;
  on_server_closed(d->srv, d);
}

/* Fail-stop: once a write or fdatasync of the commit log failed, the log
 * refuses every append for good (an fsync is never retried: the kernel may
 * have dropped the dirty pages), so txmqd stops with exit status 1 instead
 * of answering every write with an error. Started again once the disk is
 * fixed, it recovers every acknowledged record and cuts what was
 * half-written. */
static void on_health(uv_timer_t* t) {
  daemon_t* d = t->data;
  txmq_log_t* log = txmq_store_log(txmq_runtime_store(d->rt));
  int err = txmq_log_failed(log);
  if (err == 0 || d->stopping) return;
  char qb[600];
  logf_(&d->log, LV_ERROR,
        "the commit log failed; stopping (start txmqd again once the disk "
        "is fixed: it recovers everything acknowledged)",
        "err=%s reason=%s", txmq_err_name(err),
        q(txmq_log_diag(log), qb, sizeof qb));
  stop(d, 1);
}

static void on_signal(uv_signal_t* h, int signum) {
  daemon_t* d = h->data;
  if (d->stopping) {
    logf_(&d->log, LV_WARN, "already shutting down", "signal=%s",
          signum == SIGINT ? "SIGINT" : "SIGTERM");
    return;
  }
  logf_(&d->log, LV_INFO, "shutting down", "signal=%s",
        signum == SIGINT ? "SIGINT" : "SIGTERM");
  stop(d, 0);
}

/* Applies the configuration to the parts. Returns 0 or prints one error
 * line naming the key. */
static int apply_config(daemon_t* d) {
  config_t* c = &d->cfg;
  txmq_store_t* st = txmq_runtime_store(d->rt);
  txmq_tx_t* tx = txmq_runtime_tx(d->rt);
  txmq_script_host_t* sh = txmq_runtime_scripts(d->rt);
  static const struct {
    int idx;
    int part; /* 0 store, 1 tx, 2 scripts, 3 server, 4 consumers */
    int opt;
  } MAP[] = {
      {I_SYNC_INTERVAL_MS, 0, TXMQ_STORE_OPT_SYNC_INTERVAL_MS},
      {I_SEGMENT_SIZE, 0, TXMQ_STORE_OPT_SEGMENT_SIZE},
      {I_RETAIN_BYTES, 0, TXMQ_STORE_OPT_RETAIN_BYTES},
      {I_RETAIN_SECONDS, 0, TXMQ_STORE_OPT_RETAIN_SECONDS},
      {I_DEFAULT_QUEUES, 0, TXMQ_STORE_OPT_DEFAULT_QUEUES},
      {I_CHECKPOINT_INTERVAL_MS, 0, TXMQ_STORE_OPT_CHECKPOINT_INTERVAL_MS},
      {I_SNAPSHOT_INTERVAL_MS, 0, TXMQ_STORE_OPT_SNAPSHOT_INTERVAL_MS},
      {I_MAX_TOPICS, 0, TXMQ_STORE_OPT_MAX_TOPICS},
      {I_TX_TIMEOUT_MS, 1, TXMQ_TX_OPT_TIMEOUT_MS},
      {I_CHECK_INTERVAL_MS, 1, TXMQ_TX_OPT_CHECK_INTERVAL_MS},
      {I_CHECK_BACKOFF_PCT, 1, TXMQ_TX_OPT_CHECK_BACKOFF_PCT},
      {I_CHECK_INTERVAL_MAX_MS, 1, TXMQ_TX_OPT_CHECK_INTERVAL_MAX_MS},
      {I_MAX_CHECKS, 1, TXMQ_TX_OPT_MAX_CHECKS},
      {I_CHECK_TIMEOUT_MS, 1, TXMQ_TX_OPT_CHECK_TIMEOUT_MS},
      {I_CHECK_RETRY_MS, 1, TXMQ_TX_OPT_RETRY_MS},
      {I_MAX_PRODUCER_GROUPS, 1, TXMQ_TX_OPT_MAX_GROUPS},
      {I_WORKERS, 2, TXMQ_SCRIPT_OPT_WORKERS},
      {I_STATES_PER_GROUP, 2, TXMQ_SCRIPT_OPT_STATES_PER_GROUP},
      {I_SCRIPT_MEMORY_LIMIT, 2, TXMQ_SCRIPT_OPT_MEMORY_LIMIT},
      {I_CALL_BUDGET_MS, 2, TXMQ_SCRIPT_OPT_CALL_BUDGET_MS},
      {I_LOAD_BUDGET_MS, 2, TXMQ_SCRIPT_OPT_LOAD_BUDGET_MS},
      {I_MAX_FRAME, 3, TXMQ_SERVER_OPT_MAX_FRAME},
      {I_MAX_CONNECTIONS, 3, TXMQ_SERVER_OPT_MAX_CONNECTIONS},
      {I_MAX_INFLIGHT, 3, TXMQ_SERVER_OPT_MAX_INFLIGHT},
      {I_HEARTBEAT_MS, 3, TXMQ_SERVER_OPT_HEARTBEAT_MS},
      {I_MAX_OUTPUT, 3, TXMQ_SERVER_OPT_MAX_OUTPUT},
      {I_DRAIN_MS, 3, TXMQ_SERVER_OPT_DRAIN_MS},
      {I_VISIBILITY_MS, 4, TXMQ_CONSUMERS_OPT_VISIBILITY_MS},
      {I_MAX_DELIVERIES, 4, TXMQ_CONSUMERS_OPT_MAX_DELIVERIES},
      {I_CONSUMER_MAX_INFLIGHT, 4, TXMQ_CONSUMERS_OPT_MAX_INFLIGHT},
      {I_MAX_CONSUMER_GROUPS, 4, TXMQ_CONSUMERS_OPT_MAX_GROUPS},
  };
  int rc = txmq_store_set(st, TXMQ_STORE_OPT_SYNC,
                          c->sync >= 0 ? c->sync : TXMQ_SYNC_ALWAYS);
  if (rc != 0) return rc;
  if (c->watch >= 0) {
    rc = txmq_script_host_set(sh, TXMQ_SCRIPT_OPT_WATCH, c->watch);
    if (rc != 0) return rc;
  }
  for (size_t i = 0; i < c->nmodules; i++) {
    rc = txmq_script_allow_path(sh, c->modules[i]);
    if (rc != 0) {
      usage_error("config: allow_modules entry '%s' refused: %s",
                  c->modules[i], txmq_strerror(rc));
      return rc;
    }
  }
  for (size_t i = 0; i < sizeof MAP / sizeof MAP[0]; i++) {
    int k = MAP[i].idx;
    if (!c->has[k]) continue;
    int64_t v = c->ints[k];
    switch (MAP[i].part) {
      case 0: rc = txmq_store_set(st, MAP[i].opt, v); break;
      case 1: rc = txmq_tx_set(tx, MAP[i].opt, v); break;
      case 2: rc = txmq_script_host_set(sh, MAP[i].opt, v); break;
      case 3: rc = txmq_server_set(d->srv, MAP[i].opt, v); break;
      default: rc = txmq_consumers_set(d->cs, MAP[i].opt, v); break;
    }
    if (rc != 0) {
      const char* name = "?";
      for (size_t j = 0; j < NKEYS; j++)
        if (KEYS[j].type == K_INT && KEYS[j].idx == k) name = KEYS[j].name;
      usage_error("config: key '%s' = %" PRId64 " is out of range (%s)", name,
                  v, txmq_strerror(rc));
      return rc;
    }
  }
  for (int r = 0; r < 3; r++) {
    if (c->secrets[r] == NULL) continue;
    rc = txmq_server_set_secret(d->srv, ROLES[r], c->secrets[r]);
    if (rc != 0) {
      usage_error("config: auth.%s refused: %s", ROLES[r], txmq_strerror(rc));
      return rc;
    }
    /* The server keeps its own copy. */
    secret_free(&c->secrets[r]);
  }
  return 0;
}

/* "off", or the roles that have a secret: "producer,admin". */
static const char* auth_summary(const config_t* c, char* buf, size_t len) {
  size_t k = 0;
  buf[0] = '\0';
  for (int r = 0; r < 3 && c->has_auth; r++) {
    if (c->auth_roles & (1u << r))
      k += (size_t)snprintf(buf + k, len - k, "%s%s", k ? "," : "", ROLES[r]);
  }
  return k > 0 ? buf : "off";
}

/* Whether host is a loopback address (127.0.0.0/8 or ::1). */
static int is_loopback(const char* host) {
  return strncmp(host, "127.", 4) == 0 || strcmp(host, "::1") == 0;
}

static void usage(FILE* f) {
  fprintf(f,
          "usage: txmqd [-c FILE] [--listen HOST:PORT] [--data DIR]\n"
          "             [--scripts DIR] [--sync always|interval|never]\n"
          "             [--sync-interval-ms N] [--log-level LEVEL]\n"
          "\n"
          "The txmq daemon: transactional messages over the txmq wire\n"
          "protocol, with Lua handler scripts per producer group.\n"
          "\n"
          "  -c, --config FILE        configuration file (Lua; returns a table\n"
          "                           or sets globals; flags override it)\n"
          "  --listen HOST:PORT       address to listen on (default "
          "127.0.0.1:8967;\n"
          "                           port 0 picks a free port, logged)\n"
          "  --data DIR               data directory (default ./data)\n"
          "  --scripts DIR            handler scripts, DIR/<group>.lua\n"
          "                           (default ./scripts)\n"
          "  --sync POLICY            always (default), interval or never\n"
          "  --sync-interval-ms N     fsync period for --sync interval\n"
          "  --log-level LEVEL        debug, info (default), warn or error\n"
          "  -h, --help               this help\n"
          "  --version                print the version\n"
          "\n"
          "Stops cleanly on SIGINT or SIGTERM. Exit status: 0 after a clean\n"
          "shutdown, 1 when start-up fails, 2 for a bad command line or\n"
          "configuration.\n");
}

enum {
  OPT_LISTEN = 256,
  OPT_DATA,
  OPT_SCRIPTS,
  OPT_SYNC,
  OPT_SYNC_INTERVAL,
  OPT_LOG_LEVEL,
  OPT_VERSION
};

/* Parses argv: flags into *flags, the config path into *conf. Returns -1
 * to exit 0 (help, version), 0 to go on, or EXIT_USAGE. */
static int parse_args(int argc, char** argv, config_t* flags,
                      const char** conf) {
  static const struct option longopts[] = {
      {"config", required_argument, NULL, 'c'},
      {"listen", required_argument, NULL, OPT_LISTEN},
      {"data", required_argument, NULL, OPT_DATA},
      {"scripts", required_argument, NULL, OPT_SCRIPTS},
      {"sync", required_argument, NULL, OPT_SYNC},
      {"sync-interval-ms", required_argument, NULL, OPT_SYNC_INTERVAL},
      {"log-level", required_argument, NULL, OPT_LOG_LEVEL},
      {"help", no_argument, NULL, 'h'},
      {"version", no_argument, NULL, OPT_VERSION},
      {NULL, 0, NULL, 0}};
  opterr = 0;
  int ch;
  while ((ch = getopt_long(argc, argv, ":c:h", longopts, NULL)) != -1) {
    switch (ch) {
      case 'c': *conf = optarg; break;
      case OPT_LISTEN:
        free(flags->listen);
        flags->listen = strdup(optarg);
        break;
      case OPT_DATA:
        free(flags->data);
        flags->data = strdup(optarg);
        break;
      case OPT_SCRIPTS:
        free(flags->scripts);
        flags->scripts = strdup(optarg);
        break;
      case OPT_SYNC:
        flags->sync = parse_sync(optarg);
        if (flags->sync < 0) {
          usage_error("--sync must be always, interval or never, not '%s'",
                      optarg);
          return EXIT_USAGE;
        }
        break;
      case OPT_SYNC_INTERVAL: {
        char* end;
        errno = 0;
        long long v = strtoll(optarg, &end, 10);
        if (errno != 0 || *end != '\0' || end == optarg || v < 1) {
          usage_error("--sync-interval-ms must be a positive integer, not "
                      "'%s'", optarg);
          return EXIT_USAGE;
        }
        flags->ints[I_SYNC_INTERVAL_MS] = v;
        flags->has[I_SYNC_INTERVAL_MS] = 1;
        break;
      }
      case OPT_LOG_LEVEL:
        flags->log_level = parse_level(optarg);
        if (flags->log_level < 0) {
          usage_error("--log-level must be debug, info, warn or error, not "
                      "'%s'", optarg);
          return EXIT_USAGE;
        }
        break;
      case 'h': usage(stdout); return -1;
      case OPT_VERSION: printf("txmqd %s\n", TXMQ_VERSION); return -1;
      case ':':
        usage_error("option '%s' needs a value (see txmqd --help)",
                    argv[optind - 1]);
        return EXIT_USAGE;
      default:
        usage_error("unknown option '%s' (see txmqd --help)",
                    argv[optind - 1]);
        return EXIT_USAGE;
    }
  }
  if (optind < argc) {
    usage_error("unexpected argument '%s' (see txmqd --help)", argv[optind]);
    return EXIT_USAGE;
  }
  return 0;
}

/* Flags win over the file. */
static void merge(config_t* into, config_t* flags) {
  if (flags->listen) {
    free(into->listen);
    into->listen = flags->listen;
    flags->listen = NULL;
  }
  if (flags->data) {
    free(into->data);
    into->data = flags->data;
    flags->data = NULL;
  }
  if (flags->scripts) {
    free(into->scripts);
    into->scripts = flags->scripts;
    flags->scripts = NULL;
  }
  if (flags->sync >= 0) into->sync = flags->sync;
  if (flags->log_level >= 0) into->log_level = flags->log_level;
  for (int i = 0; i < I_COUNT; i++) {
    if (flags->has[i]) {
      into->ints[i] = flags->ints[i];
      into->has[i] = 1;
    }
  }
}

static int set_default(char** s, const char* v) {
  if (*s == NULL) *s = strdup(v);
  return *s != NULL ? 0 : -1;
}

/* mkdir -p: creates dir and its missing parents. 0 or -1 with errno. */
static int mkdirs(const char* dir) {
  char path[4096];
  size_t n = strlen(dir);
  if (n == 0 || n >= sizeof path) {
    errno = ENAMETOOLONG;
    return -1;
  }
  memcpy(path, dir, n + 1);
  for (size_t i = 1; i <= n; i++) {
    if (path[i] != '/' && path[i] != '\0') continue;
    char c = path[i];
    path[i] = '\0';
    if (mkdir(path, 0755) != 0 && errno != EEXIST) return -1;
    path[i] = c;
  }
  struct stat sb;
  if (stat(dir, &sb) != 0) return -1;
  if (!S_ISDIR(sb.st_mode)) {
    errno = ENOTDIR;
    return -1;
  }
  return 0;
}

/* The data or scripts directory: created (with its parents) if missing;
 * anything else that keeps the parts from using it is reported by their
 * open. */
static int prepare_dir(daemon_t* d, const char* dir, const char* what) {
  struct stat sb;
  char qb[600], msg[80];
  if (stat(dir, &sb) == 0) {
    if (S_ISDIR(sb.st_mode)) return 0;
    snprintf(msg, sizeof msg, "%s directory is not a directory", what);
    logf_(&d->log, LV_ERROR, msg, "dir=%s", q(dir, qb, sizeof qb));
    return -1;
  }
  if (errno == ENOENT && mkdirs(dir) == 0) {
    snprintf(msg, sizeof msg, "created the %s directory", what);
    logf_(&d->log, LV_INFO, msg, "dir=%s", q(dir, qb, sizeof qb));
    return 0;
  }
  snprintf(msg, sizeof msg, "cannot create the %s directory", what);
  logf_(&d->log, LV_ERROR, msg, "dir=%s reason=\"%s\"", q(dir, qb, sizeof qb),
        strerror(errno));
  return -1;
}

int main(int argc, char** argv) {
  daemon_t* d = calloc(1, sizeof *d);
  if (d == NULL) return 1;
  config_t flags;
  config_init(&flags);
  config_init(&d->cfg);
  const char* conf = NULL;
  int rc = parse_args(argc, argv, &flags, &conf);
  if (rc == 0 && conf != NULL && config_load(conf, &d->cfg) != 0)
    rc = EXIT_USAGE;
  if (rc != 0) {
    config_free(&flags);
    config_free(&d->cfg);
    free(d);
    return rc < 0 ? 0 : rc;
  }
  merge(&d->cfg, &flags);
  config_free(&flags);
  config_t* c = &d->cfg;
  if (set_default(&c->listen, "127.0.0.1:8967") != 0 ||
      set_default(&c->data, "./data") != 0 ||
      set_default(&c->scripts, "./scripts") != 0) {
    usage_error("out of memory");
    return 1;
  }
  if (parse_listen(c->listen, d->host, sizeof d->host, &d->port) != 0) {
    usage_error("listen address '%s' is not HOST:PORT (an IPv4 address, "
                "[IPv6] or localhost, and a port 0-65535)", c->listen);
    config_free(c);
    free(d);
    return EXIT_USAGE;
  }
  d->log.level = c->log_level >= 0 ? c->log_level : LV_INFO;
  /* A peer that goes away while we write must be an error on that socket,
   * not the end of the process. */
  signal(SIGPIPE, SIG_IGN);

  int code = 1;
  char qa[600], qb[600];
  if (uv_loop_init(&d->loop) != 0) {
    usage_error("cannot create the event loop");
    return 1;
  }
  rc = txmq_runtime_new(&d->rt, &d->loop, c->data, c->scripts);
  if (rc == 0) rc = txmq_consumers_new(&d->cs, &d->loop, txmq_runtime_store(d->rt));
  if (rc == 0) rc = txmq_server_new(&d->srv, &d->loop, d->rt, d->cs);
  if (rc != 0) {
    logf_(&d->log, LV_ERROR, "cannot create the runtime", "err=%s reason=\"%s\"",
          txmq_err_name(rc), txmq_strerror(rc));
    goto fail;
  }
  txmq_server_set_name(d->srv, "txmqd " TXMQ_VERSION);
  txmq_server_set_log_cb(d->srv, on_server_log, &d->log);
  txmq_script_set_log_cb(txmq_runtime_scripts(d->rt), on_script_log, &d->log);
  txmq_server_set(d->srv, TXMQ_SERVER_OPT_SYNC,
                  c->sync >= 0 ? c->sync : TXMQ_SYNC_ALWAYS);
  if (apply_config(d) != 0) {
    code = EXIT_USAGE;
    goto fail;
  }
  char auth[64];
  logf_(&d->log, LV_INFO, "starting",
        "version=%s pid=%d data=%s scripts=%s sync=%s auth=%s", TXMQ_VERSION,
        (int)getpid(), q(c->data, qa, sizeof qa), q(c->scripts, qb, sizeof qb),
        c->sync == TXMQ_SYNC_INTERVAL ? "interval"
        : c->sync == TXMQ_SYNC_NEVER  ? "never"
                                      : "always",
        auth_summary(c, auth, sizeof auth));
  d->announced = 1;
  if (!c->has_auth && !is_loopback(d->host)) {
    logf_(&d->log, LV_WARN,
          "listening beyond loopback without authentication: anyone who can "
          "reach the port may send, consume and administer (set 'auth' in "
          "the configuration)", "host=%s", d->host);
  }
  if (prepare_dir(d, c->data, "data") != 0) goto fail;
  if (prepare_dir(d, c->scripts, "scripts") != 0) goto fail;
  rc = txmq_runtime_open(d->rt);
  if (rc != 0) {
    if (rc == TXMQ_ELOCKED) {
      logf_(&d->log, LV_ERROR,
            "data directory is locked by another process (is another txmqd "
            "running on it?)", "dir=%s err=ELOCKED", q(c->data, qa, sizeof qa));
    } else {
      logf_(&d->log, LV_ERROR, "cannot open the data directory",
            "dir=%s err=%s reason=%s", q(c->data, qa, sizeof qa),
            txmq_err_name(rc), q(txmq_runtime_diag(d->rt), qb, sizeof qb));
    }
    goto fail;
  }
  d->opened = 1;
  /* What the open found and worked around (a checkpoint or snapshot that
   * could not be used, a torn log tail cut): the data is whole, but an
   * operator should know why this start was slower or what was repaired. */
  const char* odiag = txmq_store_diag(txmq_runtime_store(d->rt));
  if (odiag[0] != '\0')
    logf_(&d->log, LV_WARN, "data directory opened with warnings", "reason=%s",
          q(odiag, qb, sizeof qb));
  rc = txmq_consumers_start(d->cs);
  if (rc != 0) {
    logf_(&d->log, LV_ERROR, "cannot start the consumer engine", "err=%s",
          txmq_err_name(rc));
    goto fail;
  }
  rc = txmq_server_start(d->srv, d->host, d->port);
  if (rc != 0) {
    logf_(&d->log, LV_ERROR, "cannot listen", "addr=%s reason=%s",
          q(c->listen, qa, sizeof qa),
          q(txmq_server_diag(d->srv), qb, sizeof qb));
    goto fail;
  }
  uv_signal_init(&d->loop, &d->sigint);
  uv_signal_init(&d->loop, &d->sigterm);
  d->sigint.data = d->sigterm.data = d;
  d->signals_open = 1;
  uv_signal_start(&d->sigint, on_signal, SIGINT);
  uv_signal_start(&d->sigterm, on_signal, SIGTERM);
  uv_timer_init(&d->loop, &d->health);
  d->health.data = d;
  uv_timer_start(&d->health, on_health, 100, 100);
  logf_(&d->log, LV_INFO, "listening", "addr=%s",
        txmq_server_address(d->srv));
  uv_run(&d->loop, UV_RUN_DEFAULT);
  code = d->exit_code;
  goto done;

fail:
  /* Close what was created, in the order of a shutdown (the parts hold
   * handles on the loop from their creation on, opened or not). */
  if (d->rt != NULL) {
    stop(d, code);
    uv_run(&d->loop, UV_RUN_DEFAULT);
    code = d->exit_code;
  }
done:
  if (d->rt != NULL) txmq_runtime_free(d->rt);
  txmq_server_free(d->srv);
  txmq_consumers_free(d->cs);
  if (uv_loop_close(&d->loop) != 0) {
    logf_(&d->log, LV_WARN, "event loop closed with handles open", NULL);
  }
  config_free(c);
  free(d);
  return code;
}
