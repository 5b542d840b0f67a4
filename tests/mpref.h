/*
 * mpref.h - the reference that txmq__mp_unpack is held to: txmq__mp_check
 * on the whole input, then msgpack-c's own unpacker, exactly one object.
 * Used by test_msg and the frame fuzzer to compare the one-pass decoder
 * with it, object by object.
 */
#ifndef TXMQ_TESTS_MPREF_H
#define TXMQ_TESTS_MPREF_H

#include <msgpack.h>
#include <stdint.h>
#include <string.h>

#include "store/store_int.h"
#include "txmq/error.h"

/* 0, or non-zero when the reference refuses buf. out as for
 * txmq__mp_unpack. */
static inline int mpref_unpack(const void* buf, size_t len, unsigned depth,
                               size_t items, msgpack_unpacked* out) {
  size_t used = 0;
  if (txmq__mp_check(buf, len, depth, items, &used) != 0 || used != len)
    return TXMQ_EPROTO;
  size_t off = 0;
  msgpack_unpack_return r = msgpack_unpack_next(out, buf, len, &off);
  return r == MSGPACK_UNPACK_SUCCESS && off == len ? 0 : TXMQ_EPROTO;
}

/* Strictly the same object: types (FLOAT32 is not FLOAT64), values, float
 * bits, and strings, bins and exts at the same address in the input. An
 * empty one's address is not compared: msgpack-c leaves an empty fixstr's
 * pointer at whatever it last read (NULL at the start of its input), where
 * the decoder points into the input. */
static inline int mpref_same(const msgpack_object* a,
                             const msgpack_object* b) {
  if (a->type != b->type) return 0;
  switch (a->type) {
    case MSGPACK_OBJECT_NIL:
      return 1;
    case MSGPACK_OBJECT_BOOLEAN:
      return a->via.boolean == b->via.boolean;
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
      return a->via.u64 == b->via.u64;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
      return a->via.i64 == b->via.i64;
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
      return memcmp(&a->via.f64, &b->via.f64, sizeof a->via.f64) == 0;
    case MSGPACK_OBJECT_STR:
      return a->via.str.size == b->via.str.size &&
             (a->via.str.size == 0 || a->via.str.ptr == b->via.str.ptr);
    case MSGPACK_OBJECT_BIN:
      return a->via.bin.size == b->via.bin.size &&
             (a->via.bin.size == 0 || a->via.bin.ptr == b->via.bin.ptr);
    case MSGPACK_OBJECT_EXT:
      return a->via.ext.type == b->via.ext.type &&
             a->via.ext.size == b->via.ext.size &&
             (a->via.ext.size == 0 || a->via.ext.ptr == b->via.ext.ptr);
    case MSGPACK_OBJECT_ARRAY:
      if (a->via.array.size != b->via.array.size) return 0;
      for (uint32_t i = 0; i < a->via.array.size; i++)
        if (!mpref_same(&a->via.array.ptr[i], &b->via.array.ptr[i])) return 0;
      return 1;
    case MSGPACK_OBJECT_MAP:
      if (a->via.map.size != b->via.map.size) return 0;
      for (uint32_t i = 0; i < a->via.map.size; i++)
        if (!mpref_same(&a->via.map.ptr[i].key, &b->via.map.ptr[i].key) ||
            !mpref_same(&a->via.map.ptr[i].val, &b->via.map.ptr[i].val))
          return 0;
      return 1;
  }
  return 0;
}

#endif
