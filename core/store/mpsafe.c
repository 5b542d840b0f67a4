/*
 * mpsafe.c - a bounded front end to msgpack-c's unpacker for input that may
 * be hostile (frames from the wire, records and checkpoints from disk).
 *
 * msgpack-c reserves a container's element array when it reads the
 * container's header, so a few bytes declaring 2^32 elements make it try to
 * allocate gigabytes. txmq__mp_check() walks the encoding without allocating
 * and rejects such inputs; txmq__mp_unpack() decodes them in the same walk
 * into msgpack-c's objects and insists on exactly one object. This unit
 * validates structure only: the meaning of the object is checked by its
 * reader.
 */
#include <stdint.h>
#include <string.h>

#include "txmq/error.h"
#include "store/store_int.h"

static uint64_t be(const uint8_t* p, unsigned n) {
  uint64_t v = 0;
  for (unsigned i = 0; i < n; i++) v = (v << 8) | p[i];
  return v;
}

int txmq__mp_check(const void* buf, size_t len, unsigned max_depth,
                   size_t max_items, size_t* used) {
  const uint8_t* p = buf;
  /* need[d] = objects still expected at nesting level d; level 0 holds the
   * single root object. */
  uint64_t need[TXMQ__MP_MAX_DEPTH + 2];
  unsigned top = 0;
  size_t off = 0, items = 0;

  if (p == NULL && len > 0) return TXMQ_EPROTO;
  if (max_depth > TXMQ__MP_MAX_DEPTH) max_depth = TXMQ__MP_MAX_DEPTH;
  need[0] = 1;
  for (;;) {
    while (top > 0 && need[top] == 0) top--;
    if (need[top] == 0) break;
    need[top]--;
    if (++items > max_items) return TXMQ_EPROTO;
    if (off >= len) return TXMQ_EPROTO;

    uint8_t b = p[off++];
    size_t rest = len - off;
    uint64_t skip = 0; /* payload bytes after the header */
    uint64_t count = 0; /* objects inside a container */
    int container = 0;
    unsigned lenbytes = 0;

    if (b <= 0x7f || b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3) {
      /* fixints, nil, booleans: no payload */
    } else if (b >= 0x80 && b <= 0x8f) {
      container = 1;
      count = (uint64_t)(b & 0x0f) * 2;
    } else if (b >= 0x90 && b <= 0x9f) {
      container = 1;
      count = b & 0x0f;
    } else if (b >= 0xa0 && b <= 0xbf) {
      skip = b & 0x1f;
    } else {
      switch (b) {
        case 0xc4: case 0xd9: lenbytes = 1; break;            /* bin8 str8 */
        case 0xc5: case 0xda: lenbytes = 2; break;            /* bin16 str16 */
        case 0xc6: case 0xdb: lenbytes = 4; break;            /* bin32 str32 */
        case 0xc7: lenbytes = 1; skip = 1; break;             /* ext8 + type */
        case 0xc8: lenbytes = 2; skip = 1; break;
        case 0xc9: lenbytes = 4; skip = 1; break;
        case 0xca: skip = 4; break;                           /* float32 */
        case 0xcb: skip = 8; break;                           /* float64 */
        case 0xcc: case 0xd0: skip = 1; break;
        case 0xcd: case 0xd1: skip = 2; break;
        case 0xce: case 0xd2: skip = 4; break;
        case 0xcf: case 0xd3: skip = 8; break;
        case 0xd4: skip = 2; break;                           /* fixext */
        case 0xd5: skip = 3; break;
        case 0xd6: skip = 5; break;
        case 0xd7: skip = 9; break;
        case 0xd8: skip = 17; break;
        case 0xdc: container = 1; lenbytes = 2; break;        /* array16 */
        case 0xdd: container = 1; lenbytes = 4; break;        /* array32 */
        case 0xde: container = 2; lenbytes = 2; break;        /* map16 */
        case 0xdf: container = 2; lenbytes = 4; break;        /* map32 */
        default: return TXMQ_EPROTO;                          /* 0xc1 */
      }
      if (lenbytes) {
        if (rest < lenbytes) return TXMQ_EPROTO;
        uint64_t n = be(p + off, lenbytes);
        off += lenbytes;
        rest -= lenbytes;
        if (container == 0) skip += n;
        else count = container == 2 ? n * 2 : n;
        if (container) container = 1;
      }
    }
    if (container) {
      /* Every object takes at least one byte, so a count above the bytes
       * left is a lie; refusing it bounds what msgpack-c will allocate. */
      if (count > rest) return TXMQ_EPROTO;
      if (count > 0) {
        if (top + 1 > max_depth) return TXMQ_EPROTO;
        need[++top] = count;
      }
    } else {
      if (skip > rest) return TXMQ_EPROTO;
      off += (size_t)skip;
    }
  }
  if (used != NULL) *used = off;
  return 0;
}

_Static_assert(sizeof(msgpack_object_kv) == 2 * sizeof(msgpack_object),
               "a map's pairs are filled as an array of objects");

/* ---- decoding: check and build in one pass ----
 *
 * The objects are the ones msgpack-c's unpacker builds (same types, strings
 * and bins pointing into buf, containers' elements in the zone), and the
 * inputs accepted are the ones txmq__mp_check accepts, checked as they are
 * read: a container's count against the bytes left before anything is
 * allocated for it, the nesting depth, the number of objects. One walk, as
 * txmq__mp_check's, with a stack of the slots still to fill instead of
 * recursion; a map's pairs are filled as key, value, key, ... (a
 * msgpack_object_kv is two msgpack_objects). */

typedef struct {
  msgpack_object* next; /* the slot the next object at this level fills */
  uint64_t left;        /* objects still expected at this level */
} mplevel_t;

static int64_t sext(uint64_t v, unsigned bytes) {
  switch (bytes) {
    case 1: return (int8_t)(uint8_t)v;
    case 2: return (int16_t)(uint16_t)v;
    case 4: return (int32_t)(uint32_t)v;
    default: return (int64_t)v;
  }
}

/* Exactly one object filling all of buf, within the limits. */
static int decode_whole(const void* buf, size_t len, unsigned max_depth,
                        size_t max_items, msgpack_zone* z,
                        msgpack_object* out) {
  const uint8_t* p = buf;
  if (p == NULL) return TXMQ_EPROTO;
  if (max_depth > TXMQ__MP_MAX_DEPTH) max_depth = TXMQ__MP_MAX_DEPTH;
  mplevel_t st[TXMQ__MP_MAX_DEPTH + 2];
  unsigned top = 0;
  size_t off = 0, items = 0;
  st[0].next = out;
  st[0].left = 1;
  for (;;) {
    while (top > 0 && st[top].left == 0) top--;
    if (st[top].left == 0) break;
    st[top].left--;
    msgpack_object* o = st[top].next++;
    if (++items > max_items || off >= len) return TXMQ_EPROTO;
    uint8_t b = p[off++];
    if (b <= 0x7f) {
      o->type = MSGPACK_OBJECT_POSITIVE_INTEGER;
      o->via.u64 = b;
      continue;
    }
    if (b >= 0xe0) {
      o->type = MSGPACK_OBJECT_NEGATIVE_INTEGER;
      o->via.i64 = (int8_t)b;
      continue;
    }
    uint64_t n = 0;     /* a length, a count or a number */
    unsigned nb = 0;    /* big-endian bytes that hold it */
    int kind;           /* what the header starts */
    enum { K_STR, K_BIN, K_EXT, K_FIXEXT, K_ARRAY, K_MAP, K_UINT, K_INT,
           K_F32, K_F64 };
    if (b <= 0x8f) {
      kind = K_MAP;
      n = b & 0x0f;
    } else if (b <= 0x9f) {
      kind = K_ARRAY;
      n = b & 0x0f;
    } else if (b <= 0xbf) {
      kind = K_STR;
      n = b & 0x1f;
    } else {
      switch (b) {
        case 0xc0:
          o->type = MSGPACK_OBJECT_NIL;
          continue;
        case 0xc2:
        case 0xc3:
          o->type = MSGPACK_OBJECT_BOOLEAN;
          o->via.boolean = b == 0xc3;
          continue;
        case 0xc4: case 0xc5: case 0xc6: /* bin 8/16/32 */
          kind = K_BIN;
          nb = 1u << (b - 0xc4);
          break;
        case 0xc7: case 0xc8: case 0xc9: /* ext 8/16/32 */
          kind = K_EXT;
          nb = 1u << (b - 0xc7);
          break;
        case 0xca: kind = K_F32; nb = 4; break;
        case 0xcb: kind = K_F64; nb = 8; break;
        case 0xcc: case 0xcd: case 0xce: case 0xcf: /* uint 8/16/32/64 */
          kind = K_UINT;
          nb = 1u << (b - 0xcc);
          break;
        case 0xd0: case 0xd1: case 0xd2: case 0xd3: /* int 8/16/32/64 */
          kind = K_INT;
          nb = 1u << (b - 0xd0);
          break;
        case 0xd4: case 0xd5: case 0xd6: case 0xd7: case 0xd8:
          kind = K_FIXEXT;
          n = 1u << (b - 0xd4);
          break;
        case 0xd9: case 0xda: case 0xdb: /* str 8/16/32 */
          kind = K_STR;
          nb = 1u << (b - 0xd9);
          break;
        case 0xdc: kind = K_ARRAY; nb = 2; break;
        case 0xdd: kind = K_ARRAY; nb = 4; break;
        case 0xde: kind = K_MAP; nb = 2; break;
        case 0xdf: kind = K_MAP; nb = 4; break;
        default: return TXMQ_EPROTO; /* 0xc1, never used */
      }
      if (nb > 0) {
        if (len - off < nb) return TXMQ_EPROTO;
        n = be(p + off, nb);
        off += nb;
      }
    }
    size_t rest = len - off;
    switch (kind) {
      case K_UINT:
        o->type = MSGPACK_OBJECT_POSITIVE_INTEGER;
        o->via.u64 = n;
        break;
      case K_INT: {
        int64_t v = sext(n, nb);
        o->type = v >= 0 ? MSGPACK_OBJECT_POSITIVE_INTEGER
                         : MSGPACK_OBJECT_NEGATIVE_INTEGER;
        o->via.i64 = v; /* the same bits as u64 for v >= 0 */
        break;
      }
      case K_F32: {
        uint32_t bits = (uint32_t)n;
        float f;
        memcpy(&f, &bits, sizeof f);
        o->type = MSGPACK_OBJECT_FLOAT32;
        o->via.f64 = f;
        break;
      }
      case K_F64: {
        double f;
        memcpy(&f, &n, sizeof f);
        o->type = MSGPACK_OBJECT_FLOAT64;
        o->via.f64 = f;
        break;
      }
      case K_STR:
      case K_BIN:
        if (n > rest) return TXMQ_EPROTO;
        o->type = kind == K_STR ? MSGPACK_OBJECT_STR : MSGPACK_OBJECT_BIN;
        o->via.str.size = (uint32_t)n; /* str and bin: the same layout */
        o->via.str.ptr = (const char*)p + off;
        off += (size_t)n;
        break;
      case K_EXT:
      case K_FIXEXT:
        if (n >= rest) return TXMQ_EPROTO; /* the type byte, then n */
        o->type = MSGPACK_OBJECT_EXT;
        o->via.ext.type = (int8_t)p[off];
        o->via.ext.size = (uint32_t)n;
        o->via.ext.ptr = (const char*)p + off + 1;
        off += 1 + (size_t)n;
        break;
      default: { /* K_ARRAY, K_MAP */
        /* Every object takes at least one byte, so a count above the
         * bytes left is a lie: refused before the zone is asked for room,
         * which bounds the allocation by the input's size. */
        uint64_t objects = kind == K_MAP ? n * 2 : n;
        if (objects > rest) return TXMQ_EPROTO;
        if (n > 0 && top + 1 > max_depth) return TXMQ_EPROTO;
        msgpack_object* slots =
            msgpack_zone_malloc(z, (size_t)objects * sizeof(msgpack_object));
        if (slots == NULL) return TXMQ_ENOMEM;
        if (kind == K_MAP) {
          o->type = MSGPACK_OBJECT_MAP;
          o->via.map.size = (uint32_t)n;
          o->via.map.ptr = (msgpack_object_kv*)(void*)slots;
        } else {
          o->type = MSGPACK_OBJECT_ARRAY;
          o->via.array.size = (uint32_t)n;
          o->via.array.ptr = slots;
        }
        if (n > 0) {
          top++;
          st[top].next = slots;
          st[top].left = objects;
        }
        break;
      }
    }
  }
  return off == len ? 0 : TXMQ_EPROTO;
}

int txmq__mp_unpack_zone(const void* buf, size_t len, unsigned max_depth,
                         size_t max_items, msgpack_zone* z,
                         msgpack_object* out) {
  return decode_whole(buf, len, max_depth, max_items, z, out);
}

int txmq__mp_unpack(const void* buf, size_t len, unsigned max_depth,
                    size_t max_items, msgpack_unpacked* out) {
  /* A result used before is replaced, as msgpack_unpack_next does. */
  if (out->zone != NULL)
    msgpack_zone_clear(out->zone);
  else if ((out->zone = msgpack_zone_new(MSGPACK_ZONE_CHUNK_SIZE)) == NULL)
    return TXMQ_ENOMEM;
  return decode_whole(buf, len, max_depth, max_items, out->zone, &out->data);
}
