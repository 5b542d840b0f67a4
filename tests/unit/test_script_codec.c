/*
 * test_script_codec.c - the msgpack <-> Lua codec of core/script on its own:
 * round trips of every type, array vs map (empty arrays included), txmq.null,
 * integers vs floats, the depth limit, cycles, values without a msgpack form,
 * hostile msgpack input, and messages as tables.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <msgpack.h>

#include "script/script_int.h"
#include "testutil.h"
#include "txmq/error.h"

static lua_State* new_state(void) {
  lua_State* L = luaL_newstate();
  assert_non_null(L);
  luaL_openlibs(L);
  txmq__codec_init(L);
  txmq__codec_push_null(L);
  lua_setglobal(L, "null");
  lua_pushcfunction(L, txmq__codec_array);
  lua_setglobal(L, "array");
  return L;
}

/* Runs code; it must succeed. Returns the number of results pushed. */
static int run(lua_State* L, const char* code) {
  int top = lua_gettop(L);
  if (luaL_dostring(L, code) != LUA_OK) {
    fail_msg("lua: %s", lua_tostring(L, -1));
  }
  return lua_gettop(L) - top;
}

/* Calls the global function `check` with the value on the top (popped); it
 * must return true. */
static void check_value(lua_State* L, const char* check_src) {
  char buf[4096];
  snprintf(buf, sizeof buf, "check = function(v) %s end", check_src);
  run(L, buf);
  lua_getglobal(L, "check");
  lua_insert(L, -2);
  if (lua_pcall(L, 1, 1, 0) != LUA_OK) fail_msg("check: %s", lua_tostring(L, -1));
  if (!lua_toboolean(L, -1)) fail_msg("check failed: %s", check_src);
  lua_pop(L, 1);
}

typedef struct {
  msgpack_sbuffer sb;
  msgpack_packer pk;
} mp_t;

static void mp_init(mp_t* m) {
  msgpack_sbuffer_init(&m->sb);
  msgpack_packer_init(&m->pk, &m->sb, msgpack_sbuffer_write);
}

static void mp_str(mp_t* m, const char* s) {
  msgpack_pack_str(&m->pk, strlen(s));
  msgpack_pack_str_body(&m->pk, s, strlen(s));
}

/* Order-insensitive equality of two msgpack objects; str and bin with the
 * same bytes are equal (a Lua string always packs back as str) and so are
 * float32 and float64 of the same value. */
static int obj_eq(const msgpack_object* a, const msgpack_object* b) {
  int as = a->type == MSGPACK_OBJECT_STR || a->type == MSGPACK_OBJECT_BIN;
  int bs = b->type == MSGPACK_OBJECT_STR || b->type == MSGPACK_OBJECT_BIN;
  if (as && bs) {
    uint32_t al = a->type == MSGPACK_OBJECT_STR ? a->via.str.size : a->via.bin.size;
    uint32_t bl = b->type == MSGPACK_OBJECT_STR ? b->via.str.size : b->via.bin.size;
    const char* ap = a->type == MSGPACK_OBJECT_STR ? a->via.str.ptr : a->via.bin.ptr;
    const char* bp = b->type == MSGPACK_OBJECT_STR ? b->via.str.ptr : b->via.bin.ptr;
    return al == bl && (al == 0 || memcmp(ap, bp, al) == 0);
  }
  int af = a->type == MSGPACK_OBJECT_FLOAT32 || a->type == MSGPACK_OBJECT_FLOAT64;
  int bf = b->type == MSGPACK_OBJECT_FLOAT32 || b->type == MSGPACK_OBJECT_FLOAT64;
  if (af && bf) return a->via.f64 == b->via.f64;
  if (a->type != b->type) return 0;
  switch (a->type) {
    case MSGPACK_OBJECT_ARRAY:
      if (a->via.array.size != b->via.array.size) return 0;
      for (uint32_t i = 0; i < a->via.array.size; i++) {
        if (!obj_eq(&a->via.array.ptr[i], &b->via.array.ptr[i])) return 0;
      }
      return 1;
    case MSGPACK_OBJECT_MAP:
      if (a->via.map.size != b->via.map.size) return 0;
      for (uint32_t i = 0; i < a->via.map.size; i++) {
        int found = 0;
        for (uint32_t k = 0; k < b->via.map.size && !found; k++) {
          found = obj_eq(&a->via.map.ptr[i].key, &b->via.map.ptr[k].key) &&
                  obj_eq(&a->via.map.ptr[i].val, &b->via.map.ptr[k].val);
        }
        if (!found) return 0;
      }
      return 1;
    default:
      return msgpack_object_equal(*a, *b);
  }
}

/* Decodes buf into L, runs the Lua check on the value, encodes it back and
 * compares with `expect` (buf itself when NULL). */
static void round_trip(lua_State* L, const void* buf, size_t len,
                       const char* lua_check, const void* expect,
                       size_t expect_len) {
  char err[TXMQ__CODEC_ERRLEN];
  int top = lua_gettop(L);
  int rc = txmq__codec_decode(L, buf, len, err, sizeof err);
  if (rc != 0) fail_msg("decode: %s (%s)", txmq_err_name(rc), err);
  assert_int_equal(lua_gettop(L), top + 1);
  lua_pushvalue(L, -1);
  check_value(L, lua_check);
  void* out = NULL;
  size_t out_len = 0;
  rc = txmq__codec_encode(L, -1, &out, &out_len, err, sizeof err);
  if (rc != 0) fail_msg("encode: %s (%s)", txmq_err_name(rc), err);
  lua_pop(L, 1);
  assert_int_equal(lua_gettop(L), top);
  if (expect == NULL) {
    expect = buf;
    expect_len = len;
  }
  msgpack_unpacked a, b;
  msgpack_unpacked_init(&a);
  msgpack_unpacked_init(&b);
  assert_int_equal(msgpack_unpack_next(&a, expect, expect_len, NULL),
                   MSGPACK_UNPACK_SUCCESS);
  assert_int_equal(msgpack_unpack_next(&b, out, out_len, NULL),
                   MSGPACK_UNPACK_SUCCESS);
  if (!obj_eq(&a.data, &b.data)) {
    fprintf(stderr, "expected: ");
    msgpack_object_print(stderr, a.data);
    fprintf(stderr, "\nactual:   ");
    msgpack_object_print(stderr, b.data);
    fprintf(stderr, "\n");
    fail_msg("round trip differs");
  }
  msgpack_unpacked_destroy(&a);
  msgpack_unpacked_destroy(&b);
  free(out);
}

/* Encodes the value the Lua expression gives; returns the unpacked object
 * (caller destroys) or fails. */
static void encode_expr(lua_State* L, const char* expr, msgpack_unpacked* u) {
  char code[2048];
  snprintf(code, sizeof code, "return %s", expr);
  assert_int_equal(run(L, code), 1);
  void* out = NULL;
  size_t len = 0;
  char err[TXMQ__CODEC_ERRLEN];
  int rc = txmq__codec_encode(L, -1, &out, &len, err, sizeof err);
  if (rc != 0) fail_msg("encode %s: %s (%s)", expr, txmq_err_name(rc), err);
  lua_pop(L, 1);
  msgpack_unpacked_init(u);
  size_t off = 0;
  assert_int_equal(msgpack_unpack_next(u, out, len, &off), MSGPACK_UNPACK_SUCCESS);
  assert_int_equal(off, len);
  free(out);
}

/* The expression must fail to encode with code, err containing needle. */
static void encode_fails(lua_State* L, const char* expr, int code,
                         const char* needle) {
  char src[2048];
  snprintf(src, sizeof src, "return %s", expr);
  assert_int_equal(run(L, src), 1);
  int top = lua_gettop(L);
  void* out = NULL;
  size_t len = 0;
  char err[TXMQ__CODEC_ERRLEN] = "";
  int rc = txmq__codec_encode(L, -1, &out, &len, err, sizeof err);
  assert_int_equal(lua_gettop(L), top);
  lua_pop(L, 1);
  if (rc != code) fail_msg("encode %s: got %s (%s)", expr, txmq_err_name(rc), err);
  if (strstr(err, needle) == NULL) {
    fail_msg("encode %s: error '%s' does not mention '%s'", expr, err, needle);
  }
}

/* ---- tests -------------------------------------------------------------- */

static void scalars_round_trip(void** state) {
  (void)state;
  lua_State* L = new_state();
  mp_t m;
#define CASE(stmt, check)                                                     \
  do {                                                                        \
    mp_init(&m);                                                              \
    stmt;                                                                     \
    round_trip(L, m.sb.data, m.sb.size, check, NULL, 0);                      \
    msgpack_sbuffer_destroy(&m.sb);                                           \
  } while (0)
  CASE(msgpack_pack_true(&m.pk), "return v == true");
  CASE(msgpack_pack_false(&m.pk), "return v == false");
  CASE(msgpack_pack_nil(&m.pk), "return v == nil");
  CASE(msgpack_pack_int64(&m.pk, 0), "return math.type(v) == 'integer' and v == 0");
  CASE(msgpack_pack_int64(&m.pk, 42), "return math.type(v) == 'integer' and v == 42");
  CASE(msgpack_pack_int64(&m.pk, -7), "return math.type(v) == 'integer' and v == -7");
  CASE(msgpack_pack_int64(&m.pk, INT64_MAX), "return v == math.maxinteger");
  CASE(msgpack_pack_int64(&m.pk, INT64_MIN), "return v == math.mininteger");
  CASE(msgpack_pack_uint64(&m.pk, 300), "return math.type(v) == 'integer' and v == 300");
  CASE(msgpack_pack_double(&m.pk, 1.5), "return math.type(v) == 'float' and v == 1.5");
  CASE(msgpack_pack_double(&m.pk, 2.0), "return math.type(v) == 'float' and v == 2.0");
  CASE(msgpack_pack_double(&m.pk, -0.25), "return v == -0.25");
  CASE(msgpack_pack_float(&m.pk, 0.5f), "return math.type(v) == 'float' and v == 0.5");
  CASE(mp_str(&m, "hello"), "return v == 'hello'");
  CASE(mp_str(&m, ""), "return v == ''");
  CASE((msgpack_pack_str(&m.pk, 3), msgpack_pack_str_body(&m.pk, "a\0b", 3)),
       "return v == 'a\\0b'");
  CASE((msgpack_pack_bin(&m.pk, 4), msgpack_pack_bin_body(&m.pk, "\x00\xff\x01\x02", 4)),
       "return v == '\\0\\255\\1\\2'");
#undef CASE
  /* A uint above INT64_MAX has no Lua integer: it becomes a float. */
  mp_init(&m);
  msgpack_pack_uint64(&m.pk, UINT64_MAX);
  char err[TXMQ__CODEC_ERRLEN];
  assert_int_equal(txmq__codec_decode(L, m.sb.data, m.sb.size, err, sizeof err), 0);
  check_value(L, "return math.type(v) == 'float' and v > 1.8e19");
  msgpack_sbuffer_destroy(&m.sb);
  lua_close(L);
}

static void containers_round_trip(void** state) {
  (void)state;
  lua_State* L = new_state();
  mp_t m;
  /* [] stays an array, {} stays a map. */
  mp_init(&m);
  msgpack_pack_array(&m.pk, 0);
  round_trip(L, m.sb.data, m.sb.size,
             "return type(v) == 'table' and next(v) == nil and "
             "getmetatable(v) == 'txmq.array'", NULL, 0);
  msgpack_sbuffer_destroy(&m.sb);
  mp_init(&m);
  msgpack_pack_map(&m.pk, 0);
  round_trip(L, m.sb.data, m.sb.size,
             "return type(v) == 'table' and next(v) == nil and "
             "getmetatable(v) == nil", NULL, 0);
  msgpack_sbuffer_destroy(&m.sb);

  /* Everything nested: {"a": [1, nil, "x", [], {}], "b": {"c": 2.5},
   *                    7: true, -1: "neg", "e": [[[]]]} */
  mp_init(&m);
  msgpack_pack_map(&m.pk, 5);
  mp_str(&m, "a");
  msgpack_pack_array(&m.pk, 5);
  msgpack_pack_int64(&m.pk, 1);
  msgpack_pack_nil(&m.pk);
  mp_str(&m, "x");
  msgpack_pack_array(&m.pk, 0);
  msgpack_pack_map(&m.pk, 0);
  mp_str(&m, "b");
  msgpack_pack_map(&m.pk, 1);
  mp_str(&m, "c");
  msgpack_pack_double(&m.pk, 2.5);
  msgpack_pack_int64(&m.pk, 7);
  msgpack_pack_true(&m.pk);
  msgpack_pack_int64(&m.pk, -1);
  mp_str(&m, "neg");
  mp_str(&m, "e");
  msgpack_pack_array(&m.pk, 1);
  msgpack_pack_array(&m.pk, 1);
  msgpack_pack_array(&m.pk, 0);
  round_trip(L, m.sb.data, m.sb.size,
             "return v.a[1] == 1 and v.a[2] == null and v.a[3] == 'x' and "
             "#v.a == 5 and next(v.a[4]) == nil and v.b.c == 2.5 and "
             "v[7] == true and v[-1] == 'neg' and #v.e[1] == 1",
             NULL, 0);
  msgpack_sbuffer_destroy(&m.sb);

  /* A nil map value is an absent key: {"a": nil, "b": 1} -> {"b": 1}. */
  mp_init(&m);
  msgpack_pack_map(&m.pk, 2);
  mp_str(&m, "a");
  msgpack_pack_nil(&m.pk);
  mp_str(&m, "b");
  msgpack_pack_int64(&m.pk, 1);
  mp_t e;
  mp_init(&e);
  msgpack_pack_map(&e.pk, 1);
  mp_str(&e, "b");
  msgpack_pack_int64(&e.pk, 1);
  round_trip(L, m.sb.data, m.sb.size, "return v.a == nil and v.b == 1",
             e.sb.data, e.sb.size);
  msgpack_sbuffer_destroy(&m.sb);
  msgpack_sbuffer_destroy(&e.sb);
  lua_close(L);
}

static void lua_tables_encode(void** state) {
  (void)state;
  lua_State* L = new_state();
  msgpack_unpacked u;

  encode_expr(L, "{}", &u);
  assert_int_equal(u.data.type, MSGPACK_OBJECT_MAP);
  assert_int_equal(u.data.via.map.size, 0);
  msgpack_unpacked_destroy(&u);

  encode_expr(L, "array({})", &u);
  assert_int_equal(u.data.type, MSGPACK_OBJECT_ARRAY);
  assert_int_equal(u.data.via.array.size, 0);
  msgpack_unpacked_destroy(&u);

  encode_expr(L, "array()", &u);
  assert_int_equal(u.data.type, MSGPACK_OBJECT_ARRAY);
  msgpack_unpacked_destroy(&u);

  encode_expr(L, "{10, 20, 30}", &u);
  assert_int_equal(u.data.type, MSGPACK_OBJECT_ARRAY);
  assert_int_equal(u.data.via.array.size, 3);
  assert_int_equal(u.data.via.array.ptr[2].via.i64, 30);
  msgpack_unpacked_destroy(&u);

  /* A hole makes an unmarked table a map; a marked one packs it as nil. */
  encode_expr(L, "{[1] = 'a', [3] = 'c'}", &u);
  assert_int_equal(u.data.type, MSGPACK_OBJECT_MAP);
  assert_int_equal(u.data.via.map.size, 2);
  msgpack_unpacked_destroy(&u);
  encode_expr(L, "array({[1] = 'a', [3] = 'c'})", &u);
  assert_int_equal(u.data.type, MSGPACK_OBJECT_ARRAY);
  assert_int_equal(u.data.via.array.size, 3);
  assert_int_equal(u.data.via.array.ptr[1].type, MSGPACK_OBJECT_NIL);
  msgpack_unpacked_destroy(&u);

  /* txmq.null inside arrays and maps, and at the top. */
  encode_expr(L, "{1, null, 3}", &u);
  assert_int_equal(u.data.type, MSGPACK_OBJECT_ARRAY);
  assert_int_equal(u.data.via.array.ptr[1].type, MSGPACK_OBJECT_NIL);
  msgpack_unpacked_destroy(&u);
  encode_expr(L, "{a = null}", &u);
  assert_int_equal(u.data.type, MSGPACK_OBJECT_MAP);
  assert_int_equal(u.data.via.map.size, 1);
  assert_int_equal(u.data.via.map.ptr[0].val.type, MSGPACK_OBJECT_NIL);
  msgpack_unpacked_destroy(&u);
  encode_expr(L, "null", &u);
  assert_int_equal(u.data.type, MSGPACK_OBJECT_NIL);
  msgpack_unpacked_destroy(&u);

  /* Integers stay integers, floats stay floats, even integral ones. */
  encode_expr(L, "{1, -1, 1.0, 2^53, math.maxinteger, math.mininteger}", &u);
  msgpack_object* a = u.data.via.array.ptr;
  assert_int_equal(a[0].type, MSGPACK_OBJECT_POSITIVE_INTEGER);
  assert_int_equal(a[1].type, MSGPACK_OBJECT_NEGATIVE_INTEGER);
  assert_int_equal(a[2].type, MSGPACK_OBJECT_FLOAT64);
  assert_int_equal(a[3].type, MSGPACK_OBJECT_FLOAT64);
  assert_int_equal(a[4].type, MSGPACK_OBJECT_POSITIVE_INTEGER);
  assert_true(a[4].via.u64 == (uint64_t)INT64_MAX);
  assert_int_equal(a[5].type, MSGPACK_OBJECT_NEGATIVE_INTEGER);
  assert_true(a[5].via.i64 == INT64_MIN);
  msgpack_unpacked_destroy(&u);

  /* Integer keys stay integers in maps; strings with NULs survive. */
  encode_expr(L, "{[-5] = 'x', k = 'a\\0b'}", &u);
  assert_int_equal(u.data.type, MSGPACK_OBJECT_MAP);
  for (uint32_t i = 0; i < u.data.via.map.size; i++) {
    msgpack_object_kv* kv = &u.data.via.map.ptr[i];
    if (kv->key.type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
      assert_true(kv->key.via.i64 == -5);
    } else {
      assert_int_equal(kv->key.type, MSGPACK_OBJECT_STR);
      assert_int_equal(kv->val.via.str.size, 3);
    }
  }
  msgpack_unpacked_destroy(&u);

  /* A table shared twice (not a cycle) is fine. */
  encode_expr(L, "(function() local s = {1} return {a = s, b = s, c = {s}} end)()", &u);
  assert_int_equal(u.data.via.map.size, 3);
  msgpack_unpacked_destroy(&u);
  lua_close(L);
}

static void depth_limit(void** state) {
  (void)state;
  lua_State* L = new_state();
  char code[256];
  msgpack_unpacked u;
  /* TXMQ_SCRIPT_MAX_DEPTH nested tables encode; one more does not. */
  snprintf(code, sizeof code,
           "(function() local t = {} for i = 2, %d do t = {t} end return t end)()",
           TXMQ_SCRIPT_MAX_DEPTH);
  encode_expr(L, code, &u);
  msgpack_object* o = &u.data;
  int depth = 0;
  while (o->type == MSGPACK_OBJECT_ARRAY || o->type == MSGPACK_OBJECT_MAP) {
    depth++;
    if (o->type == MSGPACK_OBJECT_MAP) break;
    o = &o->via.array.ptr[0];
  }
  assert_int_equal(depth, TXMQ_SCRIPT_MAX_DEPTH);
  msgpack_unpacked_destroy(&u);
  snprintf(code, sizeof code,
           "(function() local t = {} for i = 2, %d do t = {t} end return t end)()",
           TXMQ_SCRIPT_MAX_DEPTH + 1);
  encode_fails(L, code, TXMQ_EINVAL, "nested deeper than");

  /* Decoding: 32 nested arrays are fine, 33 and 100000 are refused. */
  for (int n = TXMQ_SCRIPT_MAX_DEPTH; n <= TXMQ_SCRIPT_MAX_DEPTH + 1; n++) {
    uint8_t buf[64];
    for (int i = 0; i < n; i++) buf[i] = 0x91;
    buf[n] = 0x01;
    char err[TXMQ__CODEC_ERRLEN] = "";
    int rc = txmq__codec_decode(L, buf, (size_t)n + 1, err, sizeof err);
    if (n == TXMQ_SCRIPT_MAX_DEPTH) {
      assert_int_equal(rc, 0);
      lua_pop(L, 1);
    } else {
      assert_int_equal(rc, TXMQ_EPROTO);
      assert_non_null(strstr(err, "nested deeper"));
    }
  }
  /* An empty container counts as a level too: 32 arrays around an empty
   * one (or an empty map) are 33 levels, refused as too deep like the
   * encoder refuses 33 nested tables, not passed by the scan to msgpack-c,
   * whose own limit then failed as "out of memory" (found by fuzzing). */
  static const uint8_t empty[2] = {0x90, 0x80};
  for (int k = 0; k < 2; k++) {
    uint8_t buf[64];
    for (int i = 0; i < TXMQ_SCRIPT_MAX_DEPTH; i++) buf[i] = 0x91;
    buf[TXMQ_SCRIPT_MAX_DEPTH] = empty[k];
    size_t n = TXMQ_SCRIPT_MAX_DEPTH + 1;
    char e[TXMQ__CODEC_ERRLEN] = "";
    assert_int_equal(txmq__msgpack_scan(buf, n, e, sizeof e), TXMQ_EPROTO);
    assert_non_null(strstr(e, "nested deeper"));
    assert_int_equal(txmq__codec_decode(L, buf, n, e, sizeof e), TXMQ_EPROTO);
    assert_non_null(strstr(e, "nested deeper"));
    assert_int_equal(lua_gettop(L), 0);
  }
  size_t big = 100000;
  uint8_t* deep = malloc(big + 1);
  memset(deep, 0x91, big);
  deep[big] = 0xc0;
  char err[TXMQ__CODEC_ERRLEN];
  assert_int_equal(txmq__codec_decode(L, deep, big + 1, err, sizeof err), TXMQ_EPROTO);
  free(deep);
  assert_int_equal(lua_gettop(L), 0);
  lua_close(L);
}

static void cycles_and_unencodable(void** state) {
  (void)state;
  lua_State* L = new_state();
  encode_fails(L, "(function() local t = {} t.self = t return t end)()",
               TXMQ_EINVAL, "cyclic table");
  encode_fails(L, "(function() local a, b = {}, {} a.b = b b.list = {1, a} return a end)()",
               TXMQ_EINVAL, ".b.list[2]: cyclic");
  encode_fails(L, "{f = print}", TXMQ_EINVAL, ".f: a function");
  encode_fails(L, "{1, 2, function() end}", TXMQ_EINVAL, "[3]: a function");
  encode_fails(L, "{x = io.stdout}", TXMQ_EINVAL, ".x: a userdata");
  encode_fails(L, "{co = coroutine.create(print)}", TXMQ_EINVAL, "a thread");
  encode_fails(L, "print", TXMQ_EINVAL, "(top): a function");
  encode_fails(L, "{[true] = 1}", TXMQ_EINVAL, "map keys must be strings or integers");
  encode_fails(L, "{[1.5] = 1}", TXMQ_EINVAL, "not a float");
  encode_fails(L, "{[{}] = 1}", TXMQ_EINVAL, "not table");
  encode_fails(L, "array({1, 2, x = 3})", TXMQ_EINVAL, "not a positive integer");
  encode_fails(L, "array({[1000000] = 1})", TXMQ_EINVAL, "too sparse");
  /* A light userdata other than txmq.null is refused too. */
  lua_pushlightuserdata(L, &L);
  char err[TXMQ__CODEC_ERRLEN];
  void* out;
  size_t len;
  assert_int_equal(txmq__codec_encode(L, -1, &out, &len, err, sizeof err), TXMQ_EINVAL);
  lua_pop(L, 1);
  /* txmq.array refuses a table with its own metatable. */
  assert_int_not_equal(luaL_dostring(L, "array(setmetatable({}, {}))"), LUA_OK);
  lua_pop(L, 1);
  lua_close(L);
}

static void hostile_input(void** state) {
  (void)state;
  lua_State* L = new_state();
  char err[TXMQ__CODEC_ERRLEN];
  struct {
    const char* bytes;
    size_t len;
    const char* why;
  } bad[] = {
      {"\xdd\xff\xff\xff\xff", 5, "array32 of 4G elements, no data"},
      {"\xdf\xff\xff\xff\xff", 5, "map32 of 4G pairs, no data"},
      {"\xdc\xff\xff\x01", 4, "array16 with one element of 65535"},
      {"\xdb\xff\xff\xff\xff" "abc", 8, "str32 longer than the buffer"},
      {"\xc6\x00\x00\x10\x00", 5, "bin32 longer than the buffer"},
      {"\xc1", 1, "reserved byte"},
      {"\x01\x02", 2, "trailing bytes"},
      {"", 0, "empty"},
      {"\xcb\x00\x00", 3, "truncated float64"},
      {"\xd4\x01\x02", 3, "fixext1 (ext is not supported)"},
      {"\xc7\x01\x05\x00", 4, "ext8"},
      {"\x81\x90\x01", 3, "map with an array key"},
      {"\x81\xc0\x01", 3, "map with a nil key"},
      {"\x81\xcb\x3f\xf0\x00\x00\x00\x00\x00\x00\x01", 11, "map with a float key"},
      {"\x81\xcf\xff\xff\xff\xff\xff\xff\xff\xff\x01", 11, "map key above INT64_MAX"},
      {"\x92\x01", 2, "array missing an element"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    int top = lua_gettop(L);
    int rc = txmq__codec_decode(L, bad[i].bytes, bad[i].len, err, sizeof err);
    if (rc != TXMQ_EPROTO) fail_msg("%s: got %s", bad[i].why, txmq_err_name(rc));
    assert_int_equal(lua_gettop(L), top);
  }

  /* Every prefix of a valid value is refused; the whole is accepted. */
  mp_t m;
  mp_init(&m);
  msgpack_pack_map(&m.pk, 3);
  mp_str(&m, "list");
  msgpack_pack_array(&m.pk, 4);
  msgpack_pack_int64(&m.pk, 1);
  msgpack_pack_double(&m.pk, 2.5);
  mp_str(&m, "three");
  msgpack_pack_bin(&m.pk, 2);
  msgpack_pack_bin_body(&m.pk, "\x01\x02", 2);
  mp_str(&m, "n");
  msgpack_pack_int64(&m.pk, -100000);
  mp_str(&m, "m");
  msgpack_pack_map(&m.pk, 1);
  msgpack_pack_int64(&m.pk, 5);
  msgpack_pack_nil(&m.pk);
  for (size_t n = 0; n < m.sb.size; n++) {
    assert_int_equal(txmq__codec_decode(L, m.sb.data, n, err, sizeof err), TXMQ_EPROTO);
  }
  assert_int_equal(txmq__codec_decode(L, m.sb.data, m.sb.size, err, sizeof err), 0);
  lua_pop(L, 1);

  /* Random bytes and mutations of a valid value: never a crash, and a
   * success always pushes exactly one value. */
  uint32_t x = 2463534242u;
  uint8_t buf[64];
  for (int iter = 0; iter < 20000; iter++) {
    size_t len;
    if (iter % 2 == 0) {
      len = 1 + (x % sizeof buf);
      for (size_t i = 0; i < len; i++) {
        x ^= x << 13, x ^= x >> 17, x ^= x << 5;
        buf[i] = (uint8_t)x;
      }
    } else {
      len = m.sb.size < sizeof buf ? m.sb.size : sizeof buf;
      memcpy(buf, m.sb.data, len);
      for (int k = 0; k < 3; k++) {
        x ^= x << 13, x ^= x >> 17, x ^= x << 5;
        buf[x % len] = (uint8_t)(x >> 8);
      }
    }
    x ^= x << 13, x ^= x >> 17, x ^= x << 5;
    int top = lua_gettop(L);
    int rc = txmq__codec_decode(L, buf, len, err, sizeof err);
    if (rc == 0) {
      assert_int_equal(lua_gettop(L), top + 1);
      lua_pop(L, 1);
    } else {
      assert_int_equal(rc, TXMQ_EPROTO);
      assert_int_equal(lua_gettop(L), top);
    }
  }
  msgpack_sbuffer_destroy(&m.sb);
  lua_close(L);
}

static void messages_as_tables(void** state) {
  (void)state;
  lua_State* L = new_state();
  txmq_msg_t* m = txmq_msg_new();
  assert_non_null(m);
  assert_int_equal(txmq_msg_set_topic(m, "orders"), 0);
  assert_int_equal(txmq_msg_set_tags(m, "paid"), 0);
  assert_int_equal(txmq_msg_set_body(m, "b\0dy", 4), 0);
  assert_int_equal(txmq_msg_prop_set(m, "region", "eu"), 0);
  assert_int_equal(txmq_msg_prop_set(m, "k2", "v2"), 0);
  txmq_msg_set_born_ms(m, 1700000000123);
  uint8_t tx[16];
  for (int i = 0; i < 16; i++) tx[i] = (uint8_t)(0xa0 + i);
  txmq__codec_push_keys(L);
  int keys = lua_gettop(L);
  txmq__codec_push_msg(L, keys, m, tx, 3);
  check_value(L,
              "return v.topic == 'orders' and v.tags == 'paid' and v.keys == nil "
              "and v.body == 'b\\0dy' and v.properties.region == 'eu' and "
              "v.properties.k2 == 'v2' and v.born_at == 1700000000123 and "
              "v.tx_id == 'a0a1a2a3a4a5a6a7a8a9aaabacadaeaf' and "
              "v.check_count == 3 and #v.msg_id == 32 and "
              "math.type(v.queue_id) == 'integer' and v.stored_at == 0");
  txmq__codec_push_msg(L, keys, m, NULL, -1);
  check_value(L, "return v.tx_id == nil and v.check_count == nil");
  lua_pop(L, 1);

  /* And back: a table becomes a message. */
  run(L, "t = {topic = 'pay', keys = 'o-1', body = 'hi', born_at = 5, "
         "properties = {a = '1'}}");
  lua_getglobal(L, "t");
  txmq_msg_t* back = NULL;
  char err[TXMQ__CODEC_ERRLEN];
  assert_int_equal(txmq__codec_to_msg(L, -1, &back, err, sizeof err), 0);
  lua_pop(L, 1);
  assert_string_equal(txmq_msg_topic(back), "pay");
  assert_string_equal(txmq_msg_keys(back), "o-1");
  assert_null(txmq_msg_tags(back));
  size_t blen;
  const void* body = txmq_msg_body(back, &blen);
  assert_int_equal(blen, 2);
  assert_memory_equal(body, "hi", 2);
  assert_string_equal(txmq_msg_prop_get(back, "a"), "1");
  assert_true(txmq_msg_born_ms(back) == 5);
  txmq_msg_free(back);

  const char* bad[] = {"{}", "{topic = 5}", "{topic = 'x', properties = {a = 1}}",
                       "{topic = 'x', born_at = 1.5}", "'not a table'"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    char code[128];
    snprintf(code, sizeof code, "return %s", bad[i]);
    run(L, code);
    back = NULL;
    int rc = txmq__codec_to_msg(L, -1, &back, err, sizeof err);
    if (rc == 0) fail_msg("%s: accepted", bad[i]);
    assert_null(back);
    lua_pop(L, 1);
  }
  assert_int_equal(lua_gettop(L), 0);
  txmq_msg_free(m);
  lua_close(L);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(scalars_round_trip),
      cmocka_unit_test(containers_round_trip),
      cmocka_unit_test(lua_tables_encode),
      cmocka_unit_test(depth_limit),
      cmocka_unit_test(cycles_and_unencodable),
      cmocka_unit_test(hostile_input),
      cmocka_unit_test(messages_as_tables),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
