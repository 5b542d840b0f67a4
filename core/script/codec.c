/*
 * codec.c - the one msgpack <-> Lua codec of txmq, and messages as Lua
 * tables.
 *
 * Provides: a scanner that proves a msgpack buffer is one well-formed,
 * bounded value before msgpack-c allocates anything for it; msgpack_object
 * -> Lua value; Lua value -> msgpack_packer; txmq_msg_t -> msg table and
 * table -> txmq_msg_t. The rules are the ones written in txmq/script.h:
 *
 *   msgpack            Lua
 *   nil                nil at the top level; txmq.null inside an array; the
 *                      key is absent when nil is a map value
 *   bool               boolean
 *   int                integer (a uint above INT64_MAX becomes a float)
 *   float32/64         float
 *   str, bin           string (a Lua string always packs as str)
 *   array              table marked with txmq.array, so [] stays []
 *   map                table; keys str, bin or int only
 *   ext                refused
 *
 * Going back, a marked table or one whose keys are exactly 1..n is an array
 * (holes of a marked array pack as nil), an empty unmarked table is a map,
 * txmq.null packs as nil, and functions, userdata, threads, cyclic tables,
 * keys other than strings and integers and nesting deeper than
 * TXMQ_SCRIPT_MAX_DEPTH are errors that name the path of the offending value
 * - never a silent skip.
 *
 * It does not: own any Lua state, know about groups or workers, or apply a
 * time budget (callers run it on core paths).
 */
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>
#include <msgpack.h>

#include "script_int.h"
#include "txmq/error.h"

const char txmq__null_tag = 0;

static void set_err(char* err, size_t errlen, const char* fmt, ...) {
  if (err == NULL || errlen == 0) return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err, errlen, fmt, ap);
  va_end(ap);
}

/* ---- markers ------------------------------------------------------------ */

void txmq__codec_init(lua_State* L) {
  if (lua_getfield(L, LUA_REGISTRYINDEX, TXMQ__ARRAY_MT) != LUA_TTABLE) {
    lua_pop(L, 1);
    lua_createtable(L, 0, 2);
    lua_pushliteral(L, "txmq.array");
    lua_setfield(L, -2, "__name");
    /* getmetatable() on an array gives this string, and setmetatable()
     * refuses to replace the marker. */
    lua_pushliteral(L, "txmq.array");
    lua_setfield(L, -2, "__metatable");
    lua_setfield(L, LUA_REGISTRYINDEX, TXMQ__ARRAY_MT);
  } else {
    lua_pop(L, 1);
  }
}

void txmq__codec_push_null(lua_State* L) {
  lua_pushlightuserdata(L, TXMQ__NULL);
}

int txmq__codec_is_null(lua_State* L, int idx) {
  return lua_type(L, idx) == LUA_TLIGHTUSERDATA &&
         lua_touserdata(L, idx) == TXMQ__NULL;
}

int txmq__codec_is_array(lua_State* L, int idx) {
  idx = lua_absindex(L, idx);
  if (!lua_getmetatable(L, idx)) return 0;
  lua_getfield(L, LUA_REGISTRYINDEX, TXMQ__ARRAY_MT);
  int yes = lua_rawequal(L, -1, -2);
  lua_pop(L, 2);
  return yes;
}

int txmq__codec_array(lua_State* L) {
  if (lua_isnoneornil(L, 1)) {
    lua_settop(L, 0);
    lua_newtable(L);
  } else {
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);
  }
  if (txmq__codec_is_array(L, 1)) return 1;
  if (lua_getmetatable(L, 1)) {
    return luaL_error(L, "txmq.array: the table already has a metatable");
  }
  lua_getfield(L, LUA_REGISTRYINDEX, TXMQ__ARRAY_MT);
  if (!lua_istable(L, -1)) return luaL_error(L, "txmq.array: codec not set up");
  lua_setmetatable(L, 1);
  return 1;
}

/* ---- scanning hostile msgpack ------------------------------------------- */

typedef struct {
  const uint8_t* p;
  const uint8_t* end;
  char* err;
  size_t errlen;
} scan_t;

static uint64_t be(const uint8_t* p, int n) {
  uint64_t v = 0;
  for (int i = 0; i < n; i++) v = (v << 8) | p[i];
  return v;
}

static int scan_need(scan_t* s, uint64_t n) {
  if ((uint64_t)(s->end - s->p) < n) {
    set_err(s->err, s->errlen, "msgpack: truncated input");
    return TXMQ_EPROTO;
  }
  return 0;
}

static int scan_value(scan_t* s, int depth);

static int scan_items(scan_t* s, uint64_t items, int depth) {
  /* Every element takes at least one byte: a count that the remaining
   * bytes cannot back is refused before anything is allocated for it. */
  if (scan_need(s, items) != 0) return TXMQ_EPROTO;
  /* An empty container is a level too: msgpack-c refuses a 33rd level
   * whatever it holds, and the encoder refuses a 33rd table. */
  if (depth >= TXMQ_SCRIPT_MAX_DEPTH) {
    set_err(s->err, s->errlen, "msgpack: nested deeper than %d",
            TXMQ_SCRIPT_MAX_DEPTH);
    return TXMQ_EPROTO;
  }
  for (uint64_t i = 0; i < items; i++) {
    int rc = scan_value(s, depth + 1);
    if (rc != 0) return rc;
  }
  return 0;
}

static int scan_skip(scan_t* s, int hdr, uint64_t body) {
  if (scan_need(s, (uint64_t)hdr) != 0) return TXMQ_EPROTO;
  s->p += hdr;
  if (scan_need(s, body) != 0) return TXMQ_EPROTO;
  s->p += body;
  return 0;
}

static int scan_value(scan_t* s, int depth) {
  if (scan_need(s, 1) != 0) return TXMQ_EPROTO;
  uint8_t b = *s->p++;
  if (b <= 0x7f || b >= 0xe0) return 0;                   /* fixint */
  if (b >= 0x80 && b <= 0x8f) return scan_items(s, 2u * (b & 0x0f), depth);
  if (b >= 0x90 && b <= 0x9f) return scan_items(s, b & 0x0f, depth);
  if (b >= 0xa0 && b <= 0xbf) return scan_skip(s, 0, b & 0x1f);
  switch (b) {
    case 0xc0: case 0xc2: case 0xc3: return 0;
    case 0xc4: case 0xd9:                                   /* bin8, str8 */
      if (scan_need(s, 1) != 0) return TXMQ_EPROTO;
      return scan_skip(s, 1, be(s->p, 1));
    case 0xc5: case 0xda:
      if (scan_need(s, 2) != 0) return TXMQ_EPROTO;
      return scan_skip(s, 2, be(s->p, 2));
    case 0xc6: case 0xdb:
      if (scan_need(s, 4) != 0) return TXMQ_EPROTO;
      return scan_skip(s, 4, be(s->p, 4));
    case 0xc7:                                              /* ext8/16/32 */
      if (scan_need(s, 1) != 0) return TXMQ_EPROTO;
      return scan_skip(s, 2, be(s->p, 1));
    case 0xc8:
      if (scan_need(s, 2) != 0) return TXMQ_EPROTO;
      return scan_skip(s, 3, be(s->p, 2));
    case 0xc9:
      if (scan_need(s, 4) != 0) return TXMQ_EPROTO;
      return scan_skip(s, 5, be(s->p, 4));
    case 0xca: return scan_skip(s, 4, 0);
    case 0xcb: return scan_skip(s, 8, 0);
    case 0xcc: case 0xd0: return scan_skip(s, 1, 0);
    case 0xcd: case 0xd1: return scan_skip(s, 2, 0);
    case 0xce: case 0xd2: return scan_skip(s, 4, 0);
    case 0xcf: case 0xd3: return scan_skip(s, 8, 0);
    case 0xd4: return scan_skip(s, 2, 0);                   /* fixext */
    case 0xd5: return scan_skip(s, 3, 0);
    case 0xd6: return scan_skip(s, 5, 0);
    case 0xd7: return scan_skip(s, 9, 0);
    case 0xd8: return scan_skip(s, 17, 0);
    case 0xdc: case 0xde: {
      if (scan_need(s, 2) != 0) return TXMQ_EPROTO;
      uint64_t n = be(s->p, 2);
      s->p += 2;
      return scan_items(s, b == 0xde ? 2 * n : n, depth);
    }
    case 0xdd: case 0xdf: {
      if (scan_need(s, 4) != 0) return TXMQ_EPROTO;
      uint64_t n = be(s->p, 4);
      s->p += 4;
      return scan_items(s, b == 0xdf ? 2 * n : n, depth);
    }
    default:
      set_err(s->err, s->errlen, "msgpack: invalid type byte 0x%02x", b);
      return TXMQ_EPROTO;
  }
}

int txmq__msgpack_scan(const void* buf, size_t len, char* err, size_t errlen) {
  if (buf == NULL || len == 0) {
    set_err(err, errlen, "msgpack: empty input");
    return TXMQ_EPROTO;
  }
  scan_t s = {(const uint8_t*)buf, (const uint8_t*)buf + len, err, errlen};
  int rc = scan_value(&s, 0);
  if (rc != 0) return rc;
  if (s.p != s.end) {
    set_err(err, errlen, "msgpack: %zu trailing bytes after the value",
            (size_t)(s.end - s.p));
    return TXMQ_EPROTO;
  }
  return 0;
}

/* ---- msgpack -> Lua ----------------------------------------------------- */

static int push_rec(lua_State* L, const msgpack_object* o, int depth,
                    int in_array, char* err, size_t errlen);

static int push_key(lua_State* L, const msgpack_object* k, char* err,
                    size_t errlen) {
  switch (k->type) {
    case MSGPACK_OBJECT_STR:
      lua_pushlstring(L, k->via.str.ptr, k->via.str.size);
      return 0;
    case MSGPACK_OBJECT_BIN:
      lua_pushlstring(L, k->via.bin.ptr, k->via.bin.size);
      return 0;
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
      if (k->via.u64 > (uint64_t)INT64_MAX) {
        set_err(err, errlen, "msgpack: map key %" PRIu64 " out of range",
                k->via.u64);
        return TXMQ_EPROTO;
      }
      lua_pushinteger(L, (lua_Integer)k->via.u64);
      return 0;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
      lua_pushinteger(L, (lua_Integer)k->via.i64);
      return 0;
    default:
      set_err(err, errlen, "msgpack: map key must be a string or an integer");
      return TXMQ_EPROTO;
  }
}

static int push_rec(lua_State* L, const msgpack_object* o, int depth,
                    int in_array, char* err, size_t errlen) {
  if (!lua_checkstack(L, 4)) {
    set_err(err, errlen, "msgpack: out of Lua stack");
    return TXMQ_ENOMEM;
  }
  switch (o->type) {
    case MSGPACK_OBJECT_NIL:
      if (in_array) txmq__codec_push_null(L);
      else lua_pushnil(L);
      return 0;
    case MSGPACK_OBJECT_BOOLEAN:
      lua_pushboolean(L, o->via.boolean);
      return 0;
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
      if (o->via.u64 > (uint64_t)INT64_MAX) {
        lua_pushnumber(L, (lua_Number)o->via.u64);
      } else {
        lua_pushinteger(L, (lua_Integer)o->via.u64);
      }
      return 0;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
      lua_pushinteger(L, (lua_Integer)o->via.i64);
      return 0;
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
      lua_pushnumber(L, (lua_Number)o->via.f64);
      return 0;
    case MSGPACK_OBJECT_STR:
      lua_pushlstring(L, o->via.str.ptr, o->via.str.size);
      return 0;
    case MSGPACK_OBJECT_BIN:
      lua_pushlstring(L, o->via.bin.ptr, o->via.bin.size);
      return 0;
    case MSGPACK_OBJECT_ARRAY: {
      uint32_t n = o->via.array.size;
      if (depth >= TXMQ_SCRIPT_MAX_DEPTH) {
        set_err(err, errlen, "msgpack: nested deeper than %d",
                TXMQ_SCRIPT_MAX_DEPTH);
        return TXMQ_EPROTO;
      }
      lua_createtable(L, (int)(n > INT_MAX ? INT_MAX : n), 0);
      lua_getfield(L, LUA_REGISTRYINDEX, TXMQ__ARRAY_MT);
      if (lua_istable(L, -1)) lua_setmetatable(L, -2);
      else lua_pop(L, 1);
      for (uint32_t i = 0; i < n; i++) {
        int rc = push_rec(L, &o->via.array.ptr[i], depth + 1, 1, err, errlen);
        if (rc != 0) {
          lua_pop(L, 1);
          return rc;
        }
        lua_rawseti(L, -2, (lua_Integer)i + 1);
      }
      return 0;
    }
    case MSGPACK_OBJECT_MAP: {
      uint32_t n = o->via.map.size;
      if (depth >= TXMQ_SCRIPT_MAX_DEPTH) {
        set_err(err, errlen, "msgpack: nested deeper than %d",
                TXMQ_SCRIPT_MAX_DEPTH);
        return TXMQ_EPROTO;
      }
      lua_createtable(L, 0, (int)(n > INT_MAX ? INT_MAX : n));
      for (uint32_t i = 0; i < n; i++) {
        const msgpack_object_kv* kv = &o->via.map.ptr[i];
        int rc = push_key(L, &kv->key, err, errlen);
        if (rc != 0) {
          lua_pop(L, 1);
          return rc;
        }
        if (kv->val.type == MSGPACK_OBJECT_NIL) {
          /* A nil map value is an absent key: Lua tables cannot hold nil. */
          lua_pop(L, 1);
          continue;
        }
        rc = push_rec(L, &kv->val, depth + 1, 0, err, errlen);
        if (rc != 0) {
          lua_pop(L, 2);
          return rc;
        }
        lua_rawset(L, -3);
      }
      return 0;
    }
    default:
      set_err(err, errlen, "msgpack: ext types are not supported");
      return TXMQ_EPROTO;
  }
}

typedef struct {
  const msgpack_object* o;
  char* err;
  size_t errlen;
  int rc;
} push_args_t;

static int push_protected(lua_State* L) {
  push_args_t* a = lua_touserdata(L, 1);
  lua_settop(L, 0);
  a->rc = push_rec(L, a->o, 0, 0, a->err, a->errlen);
  return a->rc == 0 ? 1 : 0;
}

int txmq__codec_decode(lua_State* L, const void* buf, size_t len, char* err,
                       size_t errlen) {
  int rc = txmq__msgpack_scan(buf, len, err, errlen);
  if (rc != 0) return rc;
  msgpack_unpacked u;
  msgpack_unpacked_init(&u);
  size_t off = 0;
  msgpack_unpack_return ur = msgpack_unpack_next(&u, buf, len, &off);
  if (ur != MSGPACK_UNPACK_SUCCESS || off != len) {
    msgpack_unpacked_destroy(&u);
    set_err(err, errlen, "msgpack: %s",
            ur == MSGPACK_UNPACK_NOMEM_ERROR ? "out of memory" : "invalid input");
    return ur == MSGPACK_UNPACK_NOMEM_ERROR ? TXMQ_ENOMEM : TXMQ_EPROTO;
  }
  /* The tree is malloc'ed by msgpack-c: push it in a protected call so a
   * Lua memory error cannot skip msgpack_unpacked_destroy. */
  if (!lua_checkstack(L, 3)) {
    msgpack_unpacked_destroy(&u);
    set_err(err, errlen, "msgpack: out of Lua stack");
    return TXMQ_ENOMEM;
  }
  push_args_t a = {&u.data, err, errlen, 0};
  lua_pushcfunction(L, push_protected);
  lua_pushlightuserdata(L, &a);
  int st = lua_pcall(L, 1, 1, 0);
  msgpack_unpacked_destroy(&u);
  if (st != LUA_OK) {
    lua_pop(L, 1);
    set_err(err, errlen, "msgpack: out of memory decoding into Lua");
    return TXMQ_ENOMEM;
  }
  if (a.rc != 0) {
    lua_pop(L, 1);
    return a.rc;
  }
  return 0;
}

/* ---- Lua -> msgpack ----------------------------------------------------- */

typedef struct {
  lua_State* L;
  msgpack_packer* pk;
  const void* seen[TXMQ_SCRIPT_MAX_DEPTH + 1];
  int depth;
  char path[160];
  size_t plen;
  char* err;
  size_t errlen;
} pack_t;

static const char* where(pack_t* c) {
  return c->plen == 0 ? "(top)" : c->path;
}

static int pk_rc(pack_t* c, int rc) {
  if (rc == 0) return 0;
  set_err(c->err, c->errlen, "out of memory packing %s", where(c));
  return TXMQ_ENOMEM;
}

/* Appends ".key" or "[i]" to the error path; returns the old length. */
static size_t path_push(pack_t* c, int key_idx) {
  size_t old = c->plen;
  size_t room = sizeof c->path - c->plen;
  int n;
  if (lua_type(c->L, key_idx) == LUA_TSTRING) {
    n = snprintf(c->path + c->plen, room, ".%.40s", lua_tostring(c->L, key_idx));
  } else if (lua_isinteger(c->L, key_idx)) {
    n = snprintf(c->path + c->plen, room, "[%lld]",
                 (long long)lua_tointeger(c->L, key_idx));
  } else {
    n = snprintf(c->path + c->plen, room, "[?]");
  }
  if (n > 0) c->plen += (size_t)n < room ? (size_t)n : room - 1;
  return old;
}

static void path_pop(pack_t* c, size_t old) {
  c->plen = old;
  c->path[old] = '\0';
}

static int pack_value(pack_t* c, int idx);

static int pack_seq(pack_t* c, int idx, lua_Integer n) {
  lua_State* L = c->L;
  int rc = pk_rc(c, msgpack_pack_array(c->pk, (size_t)n));
  for (lua_Integer i = 1; rc == 0 && i <= n; i++) {
    lua_pushinteger(L, i);
    size_t old = path_push(c, -1);
    lua_pop(L, 1);
    lua_rawgeti(L, idx, i);
    rc = pack_value(c, lua_gettop(L));
    lua_pop(L, 1);
    if (rc == 0) path_pop(c, old);
  }
  return rc;
}

static int pack_map(pack_t* c, int idx, size_t count) {
  lua_State* L = c->L;
  int rc = pk_rc(c, msgpack_pack_map(c->pk, count));
  lua_pushnil(L);
  while (rc == 0 && lua_next(L, idx) != 0) {
    int top = lua_gettop(L);
    int kt = lua_type(L, top - 1);
    size_t old = path_push(c, top - 1);
    if (kt == LUA_TSTRING) {
      size_t len;
      const char* s = lua_tolstring(L, top - 1, &len);
      rc = pk_rc(c, msgpack_pack_str(c->pk, len));
      if (rc == 0) rc = pk_rc(c, msgpack_pack_str_body(c->pk, s, len));
    } else if (kt == LUA_TNUMBER && lua_isinteger(L, top - 1)) {
      rc = pk_rc(c, msgpack_pack_int64(c->pk, lua_tointeger(L, top - 1)));
    } else {
      set_err(c->err, c->errlen,
              "cannot encode %s: map keys must be strings or integers, not %s",
              where(c), kt == LUA_TNUMBER ? "a float" : luaL_typename(L, top - 1));
      rc = TXMQ_EINVAL;
    }
    if (rc == 0) rc = pack_value(c, top);
    lua_pop(L, 1);
    if (rc == 0) path_pop(c, old);
  }
  if (rc != 0) lua_pop(L, 1); /* the key left by the interrupted walk */
  return rc;
}

static int pack_table(pack_t* c, int idx) {
  lua_State* L = c->L;
  const void* self = lua_topointer(L, idx);
  for (int i = 0; i < c->depth; i++) {
    if (c->seen[i] == self) {
      set_err(c->err, c->errlen, "cannot encode %s: cyclic table", where(c));
      return TXMQ_EINVAL;
    }
  }
  if (c->depth >= TXMQ_SCRIPT_MAX_DEPTH) {
    set_err(c->err, c->errlen, "cannot encode %s: nested deeper than %d",
            where(c), TXMQ_SCRIPT_MAX_DEPTH);
    return TXMQ_EINVAL;
  }
  if (!lua_checkstack(L, 6)) {
    set_err(c->err, c->errlen, "out of Lua stack packing %s", where(c));
    return TXMQ_ENOMEM;
  }
  c->seen[c->depth++] = self;

  int marked = txmq__codec_is_array(L, idx);
  lua_Integer max = 0;
  size_t count = 0;
  int seq = 1;
  lua_pushnil(L);
  while (lua_next(L, idx) != 0) {
    lua_pop(L, 1);
    count++;
    if (lua_type(L, -1) == LUA_TNUMBER && lua_isinteger(L, -1) &&
        lua_tointeger(L, -1) >= 1) {
      lua_Integer k = lua_tointeger(L, -1);
      if (k > max) max = k;
    } else {
      seq = 0;
    }
  }
  int rc;
  if (marked) {
    if (!seq) {
      set_err(c->err, c->errlen,
              "cannot encode %s: array has a key that is not a positive "
              "integer", where(c));
      rc = TXMQ_EINVAL;
    } else if (max > (lua_Integer)(2 * count + 16) || max > UINT32_MAX) {
      /* Holes pack as nil; a few are fine, a sparse giant is a mistake. */
      set_err(c->err, c->errlen,
              "cannot encode %s: array too sparse (%zu values, length %lld)",
              where(c), count, (long long)max);
      rc = TXMQ_EINVAL;
    } else {
      rc = pack_seq(c, idx, max);
    }
  } else if (seq && count > 0 && (lua_Integer)count == max) {
    rc = pack_seq(c, idx, max);
  } else {
    rc = pack_map(c, idx, count);
  }
  c->depth--;
  return rc;
}

static int pack_value(pack_t* c, int idx) {
  lua_State* L = c->L;
  switch (lua_type(L, idx)) {
    case LUA_TNIL:
      return pk_rc(c, msgpack_pack_nil(c->pk));
    case LUA_TBOOLEAN:
      return pk_rc(c, lua_toboolean(L, idx) ? msgpack_pack_true(c->pk)
                                            : msgpack_pack_false(c->pk));
    case LUA_TNUMBER:
      if (lua_isinteger(L, idx)) {
        return pk_rc(c, msgpack_pack_int64(c->pk, lua_tointeger(L, idx)));
      }
      return pk_rc(c, msgpack_pack_double(c->pk, lua_tonumber(L, idx)));
    case LUA_TSTRING: {
      size_t len;
      const char* s = lua_tolstring(L, idx, &len);
      int rc = pk_rc(c, msgpack_pack_str(c->pk, len));
      return rc != 0 ? rc : pk_rc(c, msgpack_pack_str_body(c->pk, s, len));
    }
    case LUA_TTABLE:
      return pack_table(c, idx);
    case LUA_TLIGHTUSERDATA:
      if (lua_touserdata(L, idx) == TXMQ__NULL) {
        return pk_rc(c, msgpack_pack_nil(c->pk));
      }
      /* fall through */
    default:
      set_err(c->err, c->errlen, "cannot encode %s: a %s has no msgpack form",
              where(c), luaL_typename(L, idx));
      return TXMQ_EINVAL;
  }
}

int txmq__codec_pack(lua_State* L, int idx, msgpack_packer* pk, char* err,
                     size_t errlen) {
  pack_t* c = malloc(sizeof *c);
  if (c == NULL) {
    set_err(err, errlen, "out of memory");
    return TXMQ_ENOMEM;
  }
  int top = lua_gettop(L);
  c->L = L;
  c->pk = pk;
  c->depth = 0;
  c->path[0] = '\0';
  c->plen = 0;
  c->err = err;
  c->errlen = errlen;
  int rc = pack_value(c, lua_absindex(L, idx));
  lua_settop(L, top);
  free(c);
  return rc;
}

int txmq__codec_encode(lua_State* L, int idx, void** buf, size_t* len,
                       char* err, size_t errlen) {
  msgpack_sbuffer sb;
  msgpack_sbuffer_init(&sb);
  msgpack_packer pk;
  msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
  int rc = txmq__codec_pack(L, idx, &pk, err, errlen);
  if (rc != 0) {
    msgpack_sbuffer_destroy(&sb);
    return rc;
  }
  *len = sb.size;
  *buf = msgpack_sbuffer_release(&sb);
  if (*buf == NULL) {
    /* An empty buffer cannot happen (every value packs to >= 1 byte). */
    set_err(err, errlen, "out of memory");
    return TXMQ_ENOMEM;
  }
  return 0;
}

/* ---- messages ----------------------------------------------------------- */

static void hex(const uint8_t* in, size_t n, char* out) {
  static const char digits[] = "0123456789abcdef";
  for (size_t i = 0; i < n; i++) {
    out[2 * i] = digits[in[i] >> 4];
    out[2 * i + 1] = digits[in[i] & 15];
  }
  out[2 * n] = '\0';
}

/* The keys of a message table, and the handlers' names, created once per
 * state and kept in a table: building a message then takes each key with a
 * raw array read, where lua_setfield would look every name up in Lua's
 * string cache (a strcmp each) on every call. */
static const char* const MSG_KEYS[TXMQ__MK_COUNT] = {
    [TXMQ__MK_TOPIC - 1] = "topic",
    [TXMQ__MK_TAGS - 1] = "tags",
    [TXMQ__MK_KEYS - 1] = "keys",
    [TXMQ__MK_BODY - 1] = "body",
    [TXMQ__MK_PROPERTIES - 1] = "properties",
    [TXMQ__MK_MSG_ID - 1] = "msg_id",
    [TXMQ__MK_TX_ID - 1] = "tx_id",
    [TXMQ__MK_QUEUE_ID - 1] = "queue_id",
    [TXMQ__MK_BORN_AT - 1] = "born_at",
    [TXMQ__MK_STORED_AT - 1] = "stored_at",
    [TXMQ__MK_CHECK_COUNT - 1] = "check_count",
    [TXMQ__MK_EXECUTE - 1] = "executeLocalTransaction",
    [TXMQ__MK_CHECK - 1] = "checkLocalTransaction",
};

void txmq__codec_push_keys(lua_State* L) {
  lua_createtable(L, TXMQ__MK_COUNT, 0);
  for (int k = 1; k <= TXMQ__MK_COUNT; k++) {
    lua_pushstring(L, MSG_KEYS[k - 1]);
    lua_rawseti(L, -2, k);
  }
}

/* Sets t[key k] = the value on top (popped); t is just below the value. */
static void set_field(lua_State* L, int keys, int k) {
  lua_rawgeti(L, keys, k);
  lua_insert(L, -2);
  lua_rawset(L, -3);
}

static void set_str(lua_State* L, int keys, int k, const char* v) {
  if (v == NULL) return;
  lua_pushlstring(L, v, strlen(v));
  set_field(L, keys, k);
}

static void set_int(lua_State* L, int keys, int k, int64_t v) {
  lua_pushinteger(L, (lua_Integer)v);
  set_field(L, keys, k);
}

void txmq__codec_push_msg(lua_State* L, int keys, const txmq_msg_t* m,
                          const uint8_t* tx_id, int64_t check_count) {
  luaL_checkstack(L, 6, "pushing a message");
  keys = lua_absindex(L, keys);
  const char* tags = txmq_msg_tags(m);
  const char* mkeys = txmq_msg_keys(m);
  /* Sized exactly: topic, body, properties, msg_id, queue_id, born_at,
   * stored_at and the optional ones. */
  int n = 7 + (tags != NULL) + (mkeys != NULL) + (tx_id != NULL) +
          (check_count >= 0);
  lua_createtable(L, 0, n);
  set_str(L, keys, TXMQ__MK_TOPIC, txmq_msg_topic(m));
  set_str(L, keys, TXMQ__MK_TAGS, tags);
  set_str(L, keys, TXMQ__MK_KEYS, mkeys);
  size_t blen = 0;
  const void* body = txmq_msg_body(m, &blen);
  lua_pushlstring(L, body != NULL ? body : "", body != NULL ? blen : 0);
  set_field(L, keys, TXMQ__MK_BODY);
  size_t np = txmq_msg_prop_count(m);
  lua_createtable(L, 0, (int)np);
  for (size_t i = 0; i < np; i++) {
    const char *k, *v;
    if (txmq_msg_prop_at(m, i, &k, &v) != 0) break;
    lua_pushstring(L, v);
    lua_setfield(L, -2, k);
  }
  set_field(L, keys, TXMQ__MK_PROPERTIES);
  char buf[2 * 16 + 1];
  hex(txmq_msg_id(m), TXMQ_MSG_ID_LEN, buf);
  lua_pushlstring(L, buf, 2 * TXMQ_MSG_ID_LEN);
  set_field(L, keys, TXMQ__MK_MSG_ID);
  if (tx_id != NULL) {
    hex(tx_id, 16, buf);
    lua_pushlstring(L, buf, 32);
    set_field(L, keys, TXMQ__MK_TX_ID);
  }
  set_int(L, keys, TXMQ__MK_QUEUE_ID, txmq_msg_queue_id(m));
  set_int(L, keys, TXMQ__MK_BORN_AT, txmq_msg_born_ms(m));
  set_int(L, keys, TXMQ__MK_STORED_AT, txmq_msg_store_ms(m));
  if (check_count >= 0) set_int(L, keys, TXMQ__MK_CHECK_COUNT, check_count);
}

/* Raw field of the table at idx as an optional string; 1 if present. */
static int raw_str(lua_State* L, int idx, const char* k, const char** out,
                   size_t* len, char* err, size_t errlen, int* bad) {
  lua_pushstring(L, k);
  int t = lua_rawget(L, idx);
  if (t == LUA_TNIL || txmq__codec_is_null(L, -1)) {
    lua_pop(L, 1);
    return 0;
  }
  if (t != LUA_TSTRING) {
    set_err(err, errlen, "msg.%s must be a string, not %s", k,
            lua_typename(L, t));
    lua_pop(L, 1);
    *bad = 1;
    return 0;
  }
  *out = lua_tolstring(L, -1, len);
  return 1; /* the string stays on the stack while it is used */
}

int txmq__codec_to_msg(lua_State* L, int idx, txmq_msg_t** out, char* err,
                       size_t errlen) {
  int top = lua_gettop(L);
  idx = lua_absindex(L, idx);
  if (!lua_istable(L, idx)) {
    set_err(err, errlen, "a message must be a table, not %s",
            luaL_typename(L, idx));
    return TXMQ_EINVAL;
  }
  txmq_msg_t* m = txmq_msg_new();
  if (m == NULL) {
    set_err(err, errlen, "out of memory");
    return TXMQ_ENOMEM;
  }
  int rc = 0, bad = 0;
  const char* s;
  size_t len;
  if (raw_str(L, idx, "topic", &s, &len, err, errlen, &bad)) {
    rc = txmq_msg_set_topic(m, s);
    if (rc != 0) set_err(err, errlen, "msg.topic: %s", txmq_strerror(rc));
  } else if (!bad) {
    set_err(err, errlen, "msg.topic is required");
    bad = 1;
  }
  static const char* const opt[] = {"tags", "keys"};
  for (size_t i = 0; rc == 0 && !bad && i < 2; i++) {
    if (raw_str(L, idx, opt[i], &s, &len, err, errlen, &bad)) {
      rc = i == 0 ? txmq_msg_set_tags(m, s) : txmq_msg_set_keys(m, s);
      if (rc != 0) set_err(err, errlen, "msg.%s: %s", opt[i], txmq_strerror(rc));
    }
  }
  if (rc == 0 && !bad && raw_str(L, idx, "body", &s, &len, err, errlen, &bad)) {
    rc = txmq_msg_set_body(m, s, len);
    if (rc != 0) set_err(err, errlen, "msg.body: %s", txmq_strerror(rc));
  }
  if (rc == 0 && !bad) {
    lua_pushliteral(L, "born_at");
    int t = lua_rawget(L, idx);
    if (t == LUA_TNUMBER && lua_isinteger(L, -1)) {
      txmq_msg_set_born_ms(m, lua_tointeger(L, -1));
    } else if (t != LUA_TNIL) {
      set_err(err, errlen, "msg.born_at must be an integer (ms)");
      bad = 1;
    }
    lua_pop(L, 1);
  }
  if (rc == 0 && !bad) {
    lua_pushliteral(L, "properties");
    int t = lua_rawget(L, idx);
    if (t == LUA_TTABLE) {
      int pt = lua_gettop(L);
      lua_pushnil(L);
      while (rc == 0 && !bad && lua_next(L, pt) != 0) {
        if (lua_type(L, -2) != LUA_TSTRING || lua_type(L, -1) != LUA_TSTRING) {
          set_err(err, errlen, "msg.properties must map strings to strings");
          bad = 1;
        } else {
          rc = txmq_msg_prop_set(m, lua_tostring(L, -2), lua_tostring(L, -1));
          if (rc != 0) {
            set_err(err, errlen, "msg.properties: %s", txmq_strerror(rc));
          }
        }
        lua_pop(L, 1);
      }
    } else if (t != LUA_TNIL) {
      set_err(err, errlen, "msg.properties must be a table");
      bad = 1;
    }
  }
  lua_settop(L, top);
  if (rc == 0 && bad) rc = TXMQ_EINVAL;
  if (rc != 0) {
    txmq_msg_free(m);
    return rc;
  }
  *out = m;
  return 0;
}
