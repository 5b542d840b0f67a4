/*
 * state.c - one sandboxed, limited Lua state running one group's script.
 *
 * Provides: the capped lua_Alloc (per-state accounting; a free or a shrink
 * never fails), the libraries opened in a protected call, the embedded
 * handler module and the allow-list _ENV it builds, the text-only `load`,
 * the path-checked `require`, the count hook with its monotonic deadline
 * (re-armed on every instruction once past, so a pcall in the script cannot
 * swallow the kill), the one pcall wrapper with a traceback handler that
 * turns Lua errors into a TXMQ_E* code and a diagnostic naming the script's
 * path, version and line, the script's load and handler calls, and the
 * host's log line (to the host's logger, or standard error).
 *
 * It does not: know about threads (the caller guarantees one thread at a
 * time per state), groups, versions or reloads (host.c).
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "script_int.h"
#include "common/pool.h"
#include "txmq/error.h"

/* Room the traceback handler may use above the cap, so that a script that
 * hit the cap still gets a diagnostic. */
#define OVERDRAFT (256u * 1024u)
#define ERRMSG_MAX 384

/* Small blocks a state freed, kept for its next allocations of the same
 * class (16-byte steps up to SMALL_MAX): every handler call allocates a
 * message table and its strings, and the collector frees them in bursts
 * that glibc's per-thread cache (seven blocks per size) cannot hold. At
 * most CACHE_MAX bytes are kept per state; none under AddressSanitizer
 * (common/pool.h), so that a use after free is still caught. */
#define SMALL_MAX 512u
#define SMALL_STEP 16u
#define NCLASSES (SMALL_MAX / SMALL_STEP)
#define CACHE_MAX (256u * 1024u)

typedef struct {
  void* head[NCLASSES + 1]; /* by class; linked through their first word */
  size_t bytes;             /* kept in all classes */
} blockcache_t;

struct txmq__lstate_s {
  lua_State* L;
  blockcache_t cache;
  size_t used;
  size_t limit;
  int in_error;   /* the message handler runs: allow the overdraft */
  int oom_hit;    /* the allocator refused a request since the last reset */
  int timed_out;  /* the hook fired since the last reset */
  int64_t deadline_ns;
  int64_t budget_ms;
  int err_line;   /* line in the script where the last error happened */
  char err_msg[ERRMSG_MAX];
  int env_ref;
  int normalize_ref;
  int keys_ref;   /* txmq__codec_push_keys */
  int loadlib_ref;
  int loaded_ref;
  char* group;
  char* path;
  char* chunk;    /* "@" path */
  char version[TXMQ_SCRIPT_VERSION_LEN + 1];
  char** allow;
  size_t n_allow;
  txmq__script_logger_t log;
};

static txmq__lstate_t* S_of(lua_State* L) {
  return *(txmq__lstate_t**)lua_getextraspace(L);
}

/* ---- allocator ---------------------------------------------------------- */

static unsigned size_class(size_t n) {
  return (unsigned)((n + SMALL_STEP - 1) / SMALL_STEP);
}

/* A block of class k (room for k * SMALL_STEP bytes): a kept one, or a new
 * one of exactly that room, so that any block of the class can serve any
 * request of it. */
static void* cache_get(blockcache_t* c, unsigned k) {
  void* b = c->head[k];
  if (b == NULL) return malloc((size_t)k * SMALL_STEP);
  memcpy(&c->head[k], b, sizeof(void*));
  c->bytes -= (size_t)k * SMALL_STEP;
  return b;
}

static void cache_put(blockcache_t* c, void* b, unsigned k) {
  size_t room = (size_t)k * SMALL_STEP;
  if (!TXMQ__POOL_KEEPS || c->bytes + room > CACHE_MAX) {
    free(b);
    return;
  }
  memcpy(b, &c->head[k], sizeof(void*));
  c->head[k] = b;
  c->bytes += room;
}

static void cache_drain(blockcache_t* c) {
  for (unsigned k = 1; k <= NCLASSES; k++) {
    while (c->head[k] != NULL) {
      void* b = c->head[k];
      memcpy(&c->head[k], b, sizeof(void*));
      free(b);
    }
  }
  c->bytes = 0;
}

/* Gives back a block Lua knew as old bytes. */
static void release(txmq__lstate_t* S, void* ptr, size_t old) {
  if (old <= SMALL_MAX) cache_put(&S->cache, ptr, size_class(old));
  else free(ptr);
}

/* Lua's allocator: the memory limit, and blocks up to SMALL_MAX from the
 * state's cache. A block Lua sized at most SMALL_MAX always has its class's
 * whole room (it came from cache_get); larger ones are plain malloc
 * blocks. */
static void* l_alloc(void* ud, void* ptr, size_t osize, size_t nsize) {
  txmq__lstate_t* S = ud;
  size_t old = ptr != NULL ? osize : 0;
  if (nsize == 0) {
    if (ptr != NULL) release(S, ptr, old);
    S->used -= old;
    return NULL;
  }
  if (nsize > old) {
    size_t limit = S->limit + (S->in_error ? OVERDRAFT : 0);
    if (nsize > limit || S->used - old > limit - nsize) {
      S->oom_hit = 1;
      return NULL;
    }
  }
  void* np;
  if (ptr != NULL && old <= SMALL_MAX && nsize <= SMALL_MAX &&
      size_class(old) == size_class(nsize)) {
    np = ptr; /* the room is there already */
  } else if (nsize <= SMALL_MAX || (ptr != NULL && old <= SMALL_MAX)) {
    /* Into or out of the cached classes: a new block and a copy. */
    np = nsize <= SMALL_MAX ? cache_get(&S->cache, size_class(nsize))
                            : malloc(nsize);
    if (np != NULL && ptr != NULL) {
      memcpy(np, ptr, old < nsize ? old : nsize);
      release(S, ptr, old);
    }
  } else {
    np = realloc(ptr, nsize);
  }
  if (np == NULL) {
    if (ptr != NULL && nsize <= old) {
      /* A shrink must not fail: keep the block, account Lua's view. (A
       * small block then stays in its old, larger class: Lua's next osize
       * for it is nsize, whose class may be smaller; the block has room
       * for either.) */
      S->used = S->used - old + nsize;
      return ptr;
    }
    S->oom_hit = 1;
    return NULL;
  }
  S->used = S->used - old + nsize;
  return np;
}

/* ---- time budget -------------------------------------------------------- */

static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void hook(lua_State* L, lua_Debug* ar) {
  (void)ar;
  txmq__lstate_t* S = S_of(L);
  if (now_ns() < S->deadline_ns) return;
  S->timed_out = 1;
  /* From now on every instruction raises: a pcall in the script may catch
   * one of these errors, but the next instruction raises again. */
  lua_sethook(L, hook, LUA_MASKCOUNT, 1);
  luaL_error(L, "time budget of %d ms exceeded", (int)S->budget_ms);
}

static void arm(txmq__lstate_t* S, int64_t budget_ms) {
  S->budget_ms = budget_ms;
  S->deadline_ns = now_ns() + budget_ms * 1000000;
  lua_sethook(S->L, hook, LUA_MASKCOUNT, 1000);
}

static void disarm(txmq__lstate_t* S) {
  lua_sethook(S->L, NULL, 0, 0);
}

/* ---- errors and diagnostics --------------------------------------------- */

/* The message handler of every protected call: remembers the plain message
 * and the script line where the error happened, returns a traceback. */
static int msgh(lua_State* L) {
  txmq__lstate_t* S = S_of(L);
  S->in_error = 1;
  const char* msg = lua_tostring(L, 1);
  if (msg == NULL) {
    /* No __tostring: this may run with hooks off (an error raised by the
     * budget hook), where script code could never be stopped. */
    msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
  }
  snprintf(S->err_msg, sizeof S->err_msg, "%s", msg);
  S->err_line = 0;
  lua_Debug ar;
  for (int level = 1; lua_getstack(L, level, &ar); level++) {
    if (lua_getinfo(L, "Sl", &ar) && ar.currentline > 0 &&
        strcmp(ar.source, S->chunk) == 0) {
      S->err_line = ar.currentline;
      break;
    }
  }
  luaL_traceback(L, L, msg, 1);
  S->in_error = 0;
  return 1;
}

/* If msg starts with "<this script>:<line>: ", strips it and returns the
 * line (Lua abbreviates long chunk names as "...<tail>"). */
static const char* strip_pos(const txmq__lstate_t* S, const char* msg,
                             int* line) {
  for (const char* c = strchr(msg, ':'); c != NULL; c = strchr(c + 1, ':')) {
    const char* d = c + 1;
    int n = 0, digits = 0;
    while (*d >= '0' && *d <= '9' && digits < 9) n = n * 10 + (*d++ - '0'), digits++;
    if (digits == 0 || d[0] != ':' || d[1] != ' ') continue;
    size_t plen = (size_t)(c - msg), len = strlen(S->path);
    int ok;
    if (plen > 3 && strncmp(msg, "...", 3) == 0) {
      ok = plen - 3 <= len && strncmp(S->path + len - (plen - 3), msg + 3, plen - 3) == 0;
    } else {
      ok = plen == len && strncmp(msg, S->path, len) == 0;
    }
    if (!ok) return msg;
    *line = n;
    return d + 2;
  }
  return msg;
}

static void diag_set(const txmq__lstate_t* S, char* diag, size_t n, int line,
                     const char* fmt, ...) {
  if (diag == NULL || n == 0) return;
  char msg[ERRMSG_MAX + 64];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  int l = 0;
  const char* m = strip_pos(S, msg, &l);
  if (l > 0) line = l;
  char* out = diag;
  if (line > 0) {
    snprintf(out, n, "%s version %s line %d: %s", S->path, S->version, line, m);
  } else {
    snprintf(out, n, "%s version %s: %s", S->path, S->version, m);
  }
  /* One line: the traceback goes to the log, never into a diagnostic. */
  for (char* p = out; *p != '\0'; p++) {
    if (*p == '\n' || *p == '\r' || *p == '\t') *p = ' ';
  }
}

/* Turns the outcome of a protected call into a TXMQ_E* code and diag. The
 * error object (a traceback, or a memory error message) is on the top. */
static int classify(txmq__lstate_t* S, int st, char* diag, size_t n) {
  if (st == LUA_ERRMEM ||
      (S->oom_hit && !S->timed_out && strstr(S->err_msg, "not enough memory"))) {
    diag_set(S, diag, n, 0, "memory limit of %zu bytes exceeded", S->limit);
    return TXMQ_ENOMEM;
  }
  if (S->timed_out) {
    diag_set(S, diag, n, S->err_line, "time budget of %d ms exceeded",
             (int)S->budget_ms);
    return TXMQ_ETIMEDOUT;
  }
  diag_set(S, diag, n, S->err_line, "%s", S->err_msg);
  return TXMQ_ESCRIPT;
}

static void log_failure(txmq__lstate_t* S, const char* diag) {
  /* The traceback (on the stack when there is one) joins the diagnostic. */
  const char* tb = lua_type(S->L, -1) == LUA_TSTRING ? lua_tostring(S->L, -1) : NULL;
  char line[2048];
  if (tb != NULL && strchr(tb, '\n') != NULL) {
    snprintf(line, sizeof line, "%s | %s", diag, strchr(tb, '\n') + 1);
  } else {
    snprintf(line, sizeof line, "%s", diag);
  }
  txmq__script_log(&S->log, S->group, S->version, TXMQ_SCRIPT_LOG_ERROR, line);
}

static void reset_flags(txmq__lstate_t* S) {
  S->oom_hit = 0;
  S->timed_out = 0;
  S->in_error = 0;
  S->err_line = 0;
  S->err_msg[0] = '\0';
}

/* ---- the log line ------------------------------------------------------- */

const char* txmq_script_log_level_name(txmq_script_log_level_t level) {
  switch (level) {
    case TXMQ_SCRIPT_LOG_DEBUG: return "debug";
    case TXMQ_SCRIPT_LOG_WARN: return "warn";
    case TXMQ_SCRIPT_LOG_ERROR: return "error";
    case TXMQ_SCRIPT_LOG_INFO: break;
  }
  return "info";
}

void txmq__script_log(const txmq__script_logger_t* lg, const char* group,
                      const char* version, txmq_script_log_level_t level,
                      const char* msg) {
  if (group == NULL) group = "";
  if (version == NULL) version = "";
  if (msg == NULL) msg = "";
  if (lg != NULL && lg->cb != NULL) {
    lg->cb(lg->arg, level, group, version, msg);
    return;
  }
  char buf[2048 + 256];
  int n = snprintf(buf, sizeof buf, "txmq script group=%s version=%s level=%s msg=",
                   *group ? group : "-", *version ? version : "-",
                   txmq_script_log_level_name(level));
  if (n < 0) return;
  size_t pos = (size_t)n;
  for (const unsigned char* p = (const unsigned char*)msg;
       *p != '\0' && pos + 6 < sizeof buf; p++) {
    if (*p == '\n') {
      buf[pos++] = '\\';
      buf[pos++] = 'n';
    } else if (*p < 0x20 || *p == 0x7f) {
      pos += (size_t)snprintf(buf + pos, sizeof buf - pos, "\\x%02x", *p);
    } else {
      buf[pos++] = (char)*p;
    }
  }
  buf[pos++] = '\n';
  /* One write per line so that lines from several workers never mix. */
  ssize_t w = write(2, buf, pos);
  (void)w;
}

/* ---- functions the sandbox gets ----------------------------------------- */

/* The handler module passes one of its four level names. */
static int sb_log(lua_State* L) {
  txmq__lstate_t* S = S_of(L);
  const char* name = luaL_checkstring(L, 1);
  const char* msg = luaL_optstring(L, 2, "");
  txmq_script_log_level_t level = TXMQ_SCRIPT_LOG_INFO;
  if (strcmp(name, "debug") == 0) level = TXMQ_SCRIPT_LOG_DEBUG;
  else if (strcmp(name, "warn") == 0) level = TXMQ_SCRIPT_LOG_WARN;
  else if (strcmp(name, "error") == 0) level = TXMQ_SCRIPT_LOG_ERROR;
  txmq__script_log(&S->log, S->group, S->version, level, msg);
  return 0;
}

/* load(chunk [, chunkname [, mode [, env]]]): text chunks only, in the
 * sandbox unless the script passes its own env (built from what it can
 * reach anyway). A reader function is drained into a buffer first. */
static int sb_load(lua_State* L) {
  txmq__lstate_t* S = S_of(L);
  size_t len;
  const char* s;
  int has_env = !lua_isnone(L, 4);
  if (lua_type(L, 1) == LUA_TSTRING) {
    s = lua_tolstring(L, 1, &len);
  } else {
    luaL_checktype(L, 1, LUA_TFUNCTION);
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (;;) {
      lua_pushvalue(L, 1);
      lua_call(L, 0, 1);
      if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        break;
      }
      if (lua_type(L, -1) != LUA_TSTRING) {
        return luaL_error(L, "reader function must return a string");
      }
      size_t pl;
      lua_tolstring(L, -1, &pl);
      if (pl == 0) {
        lua_pop(L, 1);
        break;
      }
      luaL_addvalue(&b);
    }
    luaL_pushresult(&b);
    lua_replace(L, 1);
    s = lua_tolstring(L, 1, &len);
  }
  const char* name = luaL_optstring(L, 2, "=(load)");
  if (luaL_loadbufferx(L, s, len, name, "t") != LUA_OK) {
    lua_pushnil(L);
    lua_insert(L, -2);
    return 2;
  }
  if (has_env) {
    lua_pushvalue(L, 4);
  } else {
    lua_rawgeti(L, LUA_REGISTRYINDEX, S->env_ref);
  }
  if (!lua_setupvalue(L, -2, 1)) lua_pop(L, 1);
  return 1;
}

static int valid_module_name(const char* n) {
  size_t len = strlen(n);
  if (len == 0 || len > 128 || n[0] == '.') return 0;
  for (const char* p = n; *p; p++) {
    char c = *p;
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
          (c >= '0' && c <= '9') || c == '_' || c == '.' || c == '-')) {
      return 0;
    }
  }
  return strstr(n, "..") == NULL;
}

static int ends_with(const char* s, const char* suf) {
  size_t a = strlen(s), b = strlen(suf);
  return a >= b && strcmp(s + a - b, suf) == 0;
}

/* require(name): only modules found on the operator's allowed patterns.
 * Lua modules load as text into the sandbox; C modules load with
 * package.loadlib semantics through the real (hidden) package library. */
static int sb_require(lua_State* L) {
  txmq__lstate_t* S = S_of(L);
  const char* name = luaL_checkstring(L, 1);
  lua_settop(L, 1);
  lua_rawgeti(L, LUA_REGISTRYINDEX, S->loaded_ref); /* 2 */
  if (lua_getfield(L, 2, name) != LUA_TNIL) return 1;
  lua_pop(L, 1);
  if (!valid_module_name(name)) {
    return luaL_error(L, "module '%s': invalid module name", name);
  }
  luaL_Buffer tried;
  luaL_buffinit(L, &tried);
  char file[4096];
  const char* found = NULL;
  /* The dotted name as a path. */
  char rel[160];
  snprintf(rel, sizeof rel, "%s", name);
  for (char* p = rel; *p; p++) {
    if (*p == '.') *p = '/';
  }
  for (size_t i = 0; i < S->n_allow && found == NULL; i++) {
    const char* pat = S->allow[i];
    size_t o = 0;
    for (const char* p = pat; *p && o + 1 < sizeof file; p++) {
      if (*p == '?') {
        o += (size_t)snprintf(file + o, sizeof file - o, "%s", rel);
        if (o >= sizeof file) o = sizeof file - 1;
      } else {
        file[o++] = *p;
      }
    }
    file[o] = '\0';
    if (access(file, R_OK) == 0) {
      found = file;
    } else {
      luaL_addstring(&tried, "\n\tno file '");
      luaL_addstring(&tried, file);
      luaL_addstring(&tried, "'");
    }
  }
  if (found == NULL) {
    luaL_pushresult(&tried);
    return luaL_error(L, "module '%s' not found in the allowed module paths:%s",
                      name, lua_tostring(L, -1));
  }
  luaL_pushresult(&tried);
  lua_pop(L, 1);
  if (ends_with(found, ".so")) {
    char fn[200];
    snprintf(fn, sizeof fn, "luaopen_%s", name);
    char* dash = strchr(fn, '-');
    if (dash != NULL) *dash = '\0';
    for (char* p = fn; *p; p++) {
      if (*p == '.') *p = '_';
    }
    lua_rawgeti(L, LUA_REGISTRYINDEX, S->loadlib_ref);
    lua_pushstring(L, found);
    lua_pushstring(L, fn);
    lua_call(L, 2, 2);
    if (lua_isnil(L, -2)) {
      return luaL_error(L, "error loading module '%s' from file '%s': %s",
                        name, found, lua_tostring(L, -1));
    }
    lua_pop(L, 1);
  } else {
    if (luaL_loadfilex(L, found, "t") != LUA_OK) {
      return luaL_error(L, "error loading module '%s' from file '%s': %s",
                        name, found, lua_tostring(L, -1));
    }
    lua_rawgeti(L, LUA_REGISTRYINDEX, S->env_ref);
    if (!lua_setupvalue(L, -2, 1)) lua_pop(L, 1);
  }
  lua_pushvalue(L, 1);
  lua_pushstring(L, found);
  lua_call(L, 2, 1);
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    lua_pushboolean(L, 1);
  }
  lua_pushvalue(L, -1);
  lua_setfield(L, 2, name);
  lua_pushstring(L, found);
  return 2;
}

/* ---- building a state --------------------------------------------------- */

typedef struct {
  txmq__lstate_t* S;
  const txmq__lstate_conf_t* conf;
} setup_t;

static int setup(lua_State* L) {
  setup_t* a = lua_touserdata(L, 1);
  txmq__lstate_t* S = a->S;
  const txmq__lstate_conf_t* conf = a->conf;
  lua_settop(L, 0);
  luaL_openlibs(L);
  /* No bytecode out of this state, not even through the string metatable. */
  lua_getglobal(L, "string");
  lua_pushnil(L);
  lua_setfield(L, -2, "dump");
  lua_pop(L, 1);

  if (luaL_loadbufferx(L, (const char*)txmq__handler_lua, txmq__handler_lua_len,
                       "=txmq/handler.lua", "t") != LUA_OK) {
    return lua_error(L);
  }
  lua_call(L, 0, 1); /* 1: the handler module */
  lua_getfield(L, 1, "array_mt");
  lua_setfield(L, LUA_REGISTRYINDEX, TXMQ__ARRAY_MT);
  txmq__codec_init(L);
  lua_getfield(L, 1, "normalize");
  S->normalize_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  txmq__codec_push_keys(L);
  S->keys_ref = luaL_ref(L, LUA_REGISTRYINDEX);

  lua_getglobal(L, "package");
  lua_getfield(L, -1, "loadlib");
  S->loadlib_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_pop(L, 1);
  lua_newtable(L);
  S->loaded_ref = luaL_ref(L, LUA_REGISTRYINDEX);

  lua_getfield(L, 1, "sandbox");
  lua_pushglobaltable(L);
  lua_createtable(L, 0, 4);
  txmq__codec_push_null(L);
  lua_setfield(L, -2, "null");
  lua_pushcfunction(L, sb_log);
  lua_setfield(L, -2, "log");
  lua_pushcfunction(L, sb_load);
  lua_setfield(L, -2, "load");
  lua_pushcfunction(L, sb_require);
  lua_setfield(L, -2, "require");
  lua_call(L, 2, 1); /* 2: env */

  lua_getfield(L, 2, "txmq");
  lua_getfield(L, -1, "host");
  for (size_t i = 0; i < conf->n_fns; i++) {
    lua_pushlightuserdata(L, conf->fns[i].arg);
    lua_pushcclosure(L, conf->fns[i].fn, 1);
    lua_setfield(L, -2, conf->fns[i].name);
  }
  lua_pop(L, 2);
  lua_pushvalue(L, 2);
  S->env_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  return 0;
}

static char* dupstr(const char* s) {
  size_t n = strlen(s) + 1;
  char* d = malloc(n);
  if (d != NULL) memcpy(d, s, n);
  return d;
}

void txmq__lstate_free(txmq__lstate_t* S) {
  if (S == NULL) return;
  if (S->L != NULL) lua_close(S->L);
  cache_drain(&S->cache);
  for (size_t i = 0; i < S->n_allow; i++) free(S->allow[i]);
  free(S->allow);
  free(S->group);
  free(S->path);
  free(S->chunk);
  free(S);
}

/* Validates the handlers the script left in its _ENV (on the stack top). */
static int check_handlers(txmq__lstate_t* S, char* diag, size_t n) {
  static const char* const names[] = {"executeLocalTransaction",
                                      "checkLocalTransaction"};
  lua_State* L = S->L;
  int found = 0;
  for (int i = 0; i < 2; i++) {
    lua_pushstring(L, names[i]);
    int t = lua_rawget(L, -2);
    lua_pop(L, 1);
    if (t == LUA_TFUNCTION) {
      found++;
    } else if (t != LUA_TNIL) {
      diag_set(S, diag, n, 0, "%s is a %s, not a function", names[i],
               lua_typename(L, t));
      return TXMQ_ESCRIPT;
    }
  }
  if (found == 0) {
    diag_set(S, diag, n, 0,
             "defines neither executeLocalTransaction nor checkLocalTransaction");
    return TXMQ_ESCRIPT;
  }
  return 0;
}

int txmq__lstate_new(const txmq__lstate_conf_t* conf, txmq__lstate_t** out,
                     char* diag, size_t diaglen) {
  txmq__lstate_t* S = calloc(1, sizeof *S);
  if (S == NULL) return TXMQ_ENOMEM;
  S->limit = conf->mem_limit;
  S->log = conf->log;
  S->group = dupstr(conf->group);
  S->path = dupstr(conf->path);
  S->chunk = malloc(strlen(conf->path) + 2);
  S->allow = calloc(conf->n_allow + 1, sizeof *S->allow);
  snprintf(S->version, sizeof S->version, "%s", conf->version);
  int rc = 0;
  if (S->group == NULL || S->path == NULL || S->chunk == NULL || S->allow == NULL) {
    rc = TXMQ_ENOMEM;
    goto fail;
  }
  S->chunk[0] = '@';
  strcpy(S->chunk + 1, conf->path);
  for (size_t i = 0; i < conf->n_allow; i++) {
    if ((S->allow[i] = dupstr(conf->allow[i])) == NULL) {
      rc = TXMQ_ENOMEM;
      goto fail;
    }
    S->n_allow++;
  }
  S->L = lua_newstate(l_alloc, S);
  if (S->L == NULL) {
    diag_set(S, diag, diaglen, 0, "memory limit of %zu bytes is too small",
             S->limit);
    rc = TXMQ_ENOMEM;
    goto fail;
  }
  lua_State* L = S->L;
  *(txmq__lstate_t**)lua_getextraspace(L) = S;

  /* Libraries, handler module and sandbox, in a protected call. */
  reset_flags(S);
  setup_t a = {S, conf};
  lua_pushcfunction(L, msgh);
  lua_pushcfunction(L, setup);
  lua_pushlightuserdata(L, &a);
  int st = lua_pcall(L, 1, 0, 1);
  if (st != LUA_OK) {
    rc = classify(S, st, diag, diaglen);
    goto fail;
  }
  lua_settop(L, 0);

  /* The script: text only, run in its _ENV under the load budget. */
  const char* src = conf->src;
  size_t len = conf->src_len;
  if (len >= 3 && memcmp(src, "\xEF\xBB\xBF", 3) == 0) src += 3, len -= 3;
  lua_pushcfunction(L, msgh);
  st = luaL_loadbufferx(L, src, len, S->chunk, "t");
  if (st != LUA_OK) {
    snprintf(S->err_msg, sizeof S->err_msg, "%s",
             lua_tostring(L, -1) != NULL ? lua_tostring(L, -1) : "load failed");
    rc = classify(S, st, diag, diaglen);
    log_failure(S, diag);
    goto fail;
  }
  lua_rawgeti(L, LUA_REGISTRYINDEX, S->env_ref);
  lua_setupvalue(L, -2, 1);
  reset_flags(S);
  arm(S, conf->load_budget_ms);
  st = lua_pcall(L, 0, 0, 1);
  disarm(S);
  if (st != LUA_OK) {
    rc = classify(S, st, diag, diaglen);
    log_failure(S, diag);
    goto fail;
  }
  lua_settop(L, 0);
  lua_rawgeti(L, LUA_REGISTRYINDEX, S->env_ref);
  rc = check_handlers(S, diag, diaglen);
  lua_settop(L, 0);
  if (rc != 0) goto fail;
  lua_gc(L, LUA_GCCOLLECT);
  /* Every call leaves a message table and its strings behind; a cycle
   * starts when the heap has grown to 4x what was live after the last one
   * (Lua's default: 2x), which halves the marking work per call. The
   * memory limit still holds: an allocation the allocator refuses makes
   * Lua collect in full and try again before it fails. */
  lua_gc(L, LUA_GCINC, 400, 0, 0);
  *out = S;
  return 0;
fail:
  if (rc == TXMQ_ENOMEM && diag != NULL && diaglen > 0 && diag[0] == '\0') {
    snprintf(diag, diaglen, "%s: out of memory", conf->path);
  }
  txmq__lstate_free(S);
  return rc;
}

/* ---- calling a handler -------------------------------------------------- */

typedef struct {
  txmq__lstate_t* S;
  const txmq__lcall_t* c;
  int status;
  int result;
  char* diag;
  size_t diaglen;
} tramp_t;

/* The result codes of the RocketMQ spellings a handler returns (txmq.COMMIT
 * and the others), without a call into Lua; anything else goes through
 * handler.lua's normalize, which also describes what was wrong. */
static int quick_result(lua_State* L, int idx) {
  if (lua_type(L, idx) != LUA_TSTRING) return 0;
  size_t n;
  const char* s = lua_tolstring(L, idx, &n);
  if (n == 14 && memcmp(s, "COMMIT_MESSAGE", 14) == 0) return TXMQ_SCRIPT_COMMIT;
  if (n == 16 && memcmp(s, "ROLLBACK_MESSAGE", 16) == 0)
    return TXMQ_SCRIPT_ROLLBACK;
  if (n == 6 && memcmp(s, "UNKNOW", 6) == 0) return TXMQ_SCRIPT_UNKNOWN;
  return 0;
}

static int trampoline(lua_State* L) {
  tramp_t* t = lua_touserdata(L, 1);
  txmq__lstate_t* S = t->S;
  const txmq__lcall_t* c = t->c;
  const char* fname = c->check ? "checkLocalTransaction" : "executeLocalTransaction";
  lua_settop(L, 0);
  lua_rawgeti(L, LUA_REGISTRYINDEX, S->keys_ref); /* 1: the key table */
  lua_rawgeti(L, LUA_REGISTRYINDEX, S->env_ref);
  lua_rawgeti(L, 1, c->check ? TXMQ__MK_CHECK : TXMQ__MK_EXECUTE);
  lua_rawget(L, 2); /* 2: env, 3: the handler */
  if (!lua_isfunction(L, 3)) {
    diag_set(S, t->diag, t->diaglen, 0, "the script does not define %s", fname);
    t->status = TXMQ_ESCRIPT;
    return 0;
  }
  lua_pushvalue(L, 3); /* 4: what is called; 3 stays for the diagnostic */

  /* The arguments are core work: built before the budget starts. */
  int64_t count = c->check ? (int64_t)c->check_count : -1;
  txmq__codec_push_msg(L, 1, c->msgs[0], c->tx_id, count);
  if (c->n > 1) {
    lua_createtable(L, (int)c->n, 0);
    for (size_t i = 0; i < c->n; i++) {
      txmq__codec_push_msg(L, 1, c->msgs[i], c->tx_id, count);
      lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    lua_getfield(L, LUA_REGISTRYINDEX, TXMQ__ARRAY_MT);
    lua_setmetatable(L, -2);
    lua_setfield(L, -2, "messages");
  }
  int nargs = 1;
  if (!c->check) {
    if (c->arg != NULL && c->arg_len > 0) {
      char err[TXMQ__CODEC_ERRLEN];
      int rc = txmq__codec_decode(L, c->arg, c->arg_len, err, sizeof err);
      if (rc != 0) {
        if (rc == TXMQ_ENOMEM) return luaL_error(L, "not enough memory");
        diag_set(S, t->diag, t->diaglen, 0, "arg: %s", err);
        t->status = TXMQ_EPROTO;
        return 0;
      }
    } else {
      lua_pushnil(L);
    }
    nargs = 2;
  }
  arm(S, c->budget_ms);
  lua_call(L, nargs, 1);
  disarm(S);
  int code = quick_result(L, -1);
  if (code != 0) {
    t->result = code;
    t->status = 0;
    return 0;
  }
  lua_rawgeti(L, LUA_REGISTRYINDEX, S->normalize_ref);
  lua_insert(L, -2);
  lua_call(L, 1, 2);
  if (lua_isinteger(L, -2)) {
    t->result = (int)lua_tointeger(L, -2);
    t->status = 0;
  } else {
    lua_Debug ar;
    lua_pushvalue(L, 3);
    lua_getinfo(L, ">S", &ar);
    diag_set(S, t->diag, t->diaglen, ar.linedefined, "%s %s", fname,
             lua_tostring(L, -1) != NULL ? lua_tostring(L, -1) : "returned a bad result");
    t->status = TXMQ_ESCRIPT;
  }
  return 0;
}

int txmq__lstate_call(txmq__lstate_t* S, const txmq__lcall_t* c,
                      txmq_script_result_t* result, char* diag,
                      size_t diaglen) {
  lua_State* L = S->L;
  if (diag != NULL && diaglen > 0) diag[0] = '\0';
  lua_settop(L, 0);
  reset_flags(S);
  tramp_t t = {S, c, TXMQ_ESCRIPT, TXMQ_SCRIPT_UNKNOWN, diag, diaglen};
  lua_pushcfunction(L, msgh);
  lua_pushcfunction(L, trampoline);
  lua_pushlightuserdata(L, &t);
  int st = lua_pcall(L, 1, 0, 1);
  disarm(S);
  int status;
  if (st != LUA_OK) {
    status = classify(S, st, diag, diaglen);
    log_failure(S, diag);
  } else {
    status = t.status;
    if (status != 0) {
      txmq__script_log(&S->log, S->group, S->version, TXMQ_SCRIPT_LOG_ERROR,
                       diag);
    }
  }
  lua_settop(L, 0);
  if (status == TXMQ_ENOMEM) lua_gc(L, LUA_GCCOLLECT);
  *result = status == 0 ? (txmq_script_result_t)t.result : TXMQ_SCRIPT_UNKNOWN;
  return status;
}

void* txmq_script_fn_arg(lua_State* L) {
  return lua_touserdata(L, lua_upvalueindex(1));
}
