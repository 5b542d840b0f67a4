/*
 * fuzz_codec.c - libFuzzer target for the msgpack <-> Lua codec of
 * core/script (script_int.h): the bytes a handler's `arg` and a check's
 * messages arrive as.
 *
 * Input: one flags byte, then the msgpack bytes.
 *   bit 0  a tight memory cap on the Lua state (64 KiB above what it
 *          holds), so that decoding runs into Lua memory errors
 *
 * Properties checked (beyond "no crash, no leak, no UB"):
 *   - decode succeeds only on bytes txmq__msgpack_scan accepts, and leaves
 *     exactly one value on the stack on success, none on failure;
 *   - without the tight cap nothing runs out of memory (inputs are small):
 *     TXMQ_ENOMEM there is a limit reported as the wrong error;
 *   - what decode accepted, encode packs (unless memory ran out): the two
 *     directions agree on the limits;
 *   - encode(decode(encode(decode(x)))) equals encode(decode(x)) (maps in
 *     any order): one round trip reaches a fixed point;
 *   - a decoded table that txmq__codec_to_msg accepts survives
 *     txmq__codec_push_msg and a second to_msg unchanged.
 * It does not: run handlers or the sandbox (that is core/script's
 * state.c, not the codec).
 */
#include <lauxlib.h>
#include <lua.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_util.h"
#include "script/script_int.h"
#include "txmq/error.h"

typedef struct {
  size_t used;
  size_t cap;
} mem_t;

/* A lua_Alloc with a byte cap that never fails a free or a shrink (Lua
 * relies on both). */
static void* cap_alloc(void* ud, void* ptr, size_t osize, size_t nsize) {
  mem_t* m = ud;
  size_t old = ptr != NULL ? osize : 0;
  if (nsize == 0) {
    free(ptr);
    m->used -= old;
    return NULL;
  }
  if (nsize > old && m->used - old + nsize > m->cap) return NULL;
  void* p = realloc(ptr, nsize);
  if (p == NULL) return nsize <= old ? ptr : NULL;
  m->used = m->used - old + nsize;
  return p;
}

static mem_t g_mem;
static lua_State* g_L;
static int g_tight; /* this input runs under the tight cap */

static int init_codec(lua_State* L) {
  txmq__codec_init(L);
  return 0;
}

int LLVMFuzzerInitialize(int* argc, char*** argv) {
  (void)argc;
  (void)argv;
  g_mem.cap = SIZE_MAX;
  g_L = lua_newstate(cap_alloc, &g_mem);
  FZ_CHECK(g_L != NULL);
  lua_pushcfunction(g_L, init_codec);
  FZ_CHECK(lua_pcall(g_L, 0, 0, 0) == LUA_OK);
  return 0;
}

/* Unpacks a buffer the codec produced; it must be valid msgpack. */
static void unpack_own(const void* buf, size_t len, msgpack_unpacked* u) {
  size_t off = 0;
  msgpack_unpacked_init(u);
  FZ_CHECK(msgpack_unpack_next(u, buf, len, &off) == MSGPACK_UNPACK_SUCCESS);
  FZ_CHECK(off == len);
}

typedef struct {
  txmq_msg_t* m;
  txmq_msg_t* back;
  int rc;
  int rc2;
  char err[TXMQ__CODEC_ERRLEN];
} msg_args_t;

/* In a protected call: the table at 1 as a message, and back again. */
static int msg_round(lua_State* L) {
  msg_args_t* a = lua_touserdata(L, 2);
  lua_settop(L, 1);
  a->rc = txmq__codec_to_msg(L, 1, &a->m, a->err, sizeof a->err);
  if (a->rc != 0) return 0;
  static const uint8_t tx[16] = {1, 2, 3, 4, 5, 6, 7, 8,
                                 9, 10, 11, 12, 13, 14, 15, 16};
  txmq__codec_push_keys(L); /* 2 */
  txmq__codec_push_msg(L, 2, a->m, tx, 3);
  a->rc2 = txmq__codec_to_msg(L, -1, &a->back, a->err, sizeof a->err);
  return 0;
}

static void check_msg(lua_State* L) {
  msg_args_t a;
  memset(&a, 0, sizeof a);
  lua_pushcfunction(L, msg_round);
  lua_pushvalue(L, -2);
  lua_pushlightuserdata(L, &a);
  int st = lua_pcall(L, 2, 0, 0);
  if (st != LUA_OK) {
    /* Only a memory error may escape the codec. */
    FZ_CHECK(st == LUA_ERRMEM && g_tight);
    lua_pop(L, 1);
  } else if (a.rc == 0 && a.rc2 == 0) {
    /* push_msg writes what to_msg reads back; the store fields and the id
     * are not read back, so compare what a producer sets. */
    FZ_CHECK(a.back != NULL);
    FZ_CHECK(fz_msg_eq(a.m, a.back));
  } else if (a.rc == 0) {
    FZ_CHECK(a.rc2 == TXMQ_ENOMEM && g_tight);
  }
  txmq_msg_free(a.m);
  txmq_msg_free(a.back);
}

int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  lua_State* L = g_L;
  int tight = g_tight = data[0] & 1;
  const uint8_t* buf = data + 1;
  size_t len = size - 1;
  char err[TXMQ__CODEC_ERRLEN];
  g_mem.cap = tight ? g_mem.used + 64 * 1024 : SIZE_MAX;

  int scanned = txmq__msgpack_scan(buf, len, err, sizeof err);
  int rc = txmq__codec_decode(L, buf, len, err, sizeof err);
  if (rc != 0) {
    FZ_CHECK(lua_gettop(L) == 0);
    FZ_CHECK(rc == TXMQ_EPROTO || (tight && rc == TXMQ_ENOMEM));
    goto out;
  }
  FZ_CHECK(scanned == 0);
  FZ_CHECK(lua_gettop(L) == 1);

  void* e1 = NULL;
  size_t e1len = 0;
  rc = txmq__codec_encode(L, 1, &e1, &e1len, err, sizeof err);
  FZ_CHECK(lua_gettop(L) == 1);
  if (rc != 0) {
    if (rc != TXMQ_ENOMEM || !tight) {
      fprintf(stderr, "decoded, then refused to encode: %s\n", err);
      FZ_CHECK(!"what decode accepts, encode packs");
    }
    goto out;
  }
  if (lua_istable(L, 1)) check_msg(L);
  FZ_CHECK(lua_gettop(L) == 1);

  rc = txmq__codec_decode(L, e1, e1len, err, sizeof err);
  if (rc == 0) {
    void* e2 = NULL;
    size_t e2len = 0;
    rc = txmq__codec_encode(L, 2, &e2, &e2len, err, sizeof err);
    FZ_CHECK(rc == 0 || (tight && rc == TXMQ_ENOMEM));
    if (rc == 0) {
      msgpack_unpacked u1, u2;
      unpack_own(e1, e1len, &u1);
      unpack_own(e2, e2len, &u2);
      FZ_CHECK(fz_obj_eq(&u1.data, &u2.data));
      msgpack_unpacked_destroy(&u1);
      msgpack_unpacked_destroy(&u2);
      free(e2);
    }
  } else {
    FZ_CHECK(tight && rc == TXMQ_ENOMEM);
  }
  free(e1);
out:
  lua_settop(L, 0);
  g_mem.cap = SIZE_MAX;
  return 0;
}
