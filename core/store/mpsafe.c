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

/* ---- decoding: check and build in one pass ----
 *
 * The objects are the ones msgpack-c's unpacker builds (same types, strings
 * and bins pointing into buf, containers' elements in the zone), and the
 * inputs accepted are the ones txmq__mp_check accepts, checked as they are
 * read: a container's count against the bytes left before anything is
 * allocated for it, the nesting depth, the number of objects. One walk
 * instead of a check and then msgpack-c's generic state machine. */

typedef struct {
  const uint8_t* p;
  size_t len;
  size_t off;
  size_t items;
  size_t max_items;
  unsigned max_depth;
  msgpack_zone* z;
} mpdec_t;

static int dec_obj(mpdec_t* d, unsigned depth, msgpack_object* o);

/* Reads an n-byte big-endian length or value. */
static int dec_be(mpdec_t* d, unsigned n, uint64_t* v) {
  if (d->len - d->off < n) return TXMQ_EPROTO;
  *v = be(d->p + d->off, n);
  d->off += n;
  return 0;
}

/* Takes n payload bytes, returning where they start. */
static int dec_take(mpdec_t* d, uint64_t n, const char** ptr) {
  if (n > d->len - d->off) return TXMQ_EPROTO;
  *ptr = (const char*)d->p + d->off;
  d->off += (size_t)n;
  return 0;
}

static int dec_str(mpdec_t* d, msgpack_object_type type, uint64_t n,
                   msgpack_object* o) {
  const char* ptr;
  if (dec_take(d, n, &ptr) != 0) return TXMQ_EPROTO;
  o->type = type;
  if (type == MSGPACK_OBJECT_STR) {
    o->via.str.size = (uint32_t)n;
    o->via.str.ptr = ptr;
  } else {
    o->via.bin.size = (uint32_t)n;
    o->via.bin.ptr = ptr;
  }
  return 0;
}

static int dec_ext(mpdec_t* d, uint64_t n, msgpack_object* o) {
  const char* ptr;
  if (dec_take(d, 1 + n, &ptr) != 0) return TXMQ_EPROTO;
  o->type = MSGPACK_OBJECT_EXT;
  o->via.ext.type = (int8_t)ptr[0];
  o->via.ext.size = (uint32_t)n;
  o->via.ext.ptr = ptr + 1;
  return 0;
}

static void dec_int(int64_t v, msgpack_object* o) {
  if (v >= 0) {
    o->type = MSGPACK_OBJECT_POSITIVE_INTEGER;
    o->via.u64 = (uint64_t)v;
  } else {
    o->type = MSGPACK_OBJECT_NEGATIVE_INTEGER;
    o->via.i64 = v;
  }
}

/* n elements (pairs: n pairs). Every object takes at least one byte, so a
 * count above the bytes left is a lie: it is refused before the zone is
 * asked for room, which bounds the allocation by the input's size. */
static int dec_container(mpdec_t* d, unsigned depth, uint64_t n, int pairs,
                         msgpack_object* o) {
  uint64_t objects = pairs ? n * 2 : n;
  if (objects > d->len - d->off) return TXMQ_EPROTO;
  if (n > 0 && depth + 1 > d->max_depth) return TXMQ_EPROTO;
  size_t each = pairs ? sizeof(msgpack_object_kv) : sizeof(msgpack_object);
  void* room = msgpack_zone_malloc(d->z, (size_t)n * each);
  if (room == NULL) return TXMQ_ENOMEM;
  if (pairs) {
    msgpack_object_kv* kv = room;
    o->type = MSGPACK_OBJECT_MAP;
    o->via.map.size = (uint32_t)n;
    o->via.map.ptr = kv;
    for (uint64_t i = 0; i < n; i++) {
      int rc = dec_obj(d, depth + 1, &kv[i].key);
      if (rc == 0) rc = dec_obj(d, depth + 1, &kv[i].val);
      if (rc != 0) return rc;
    }
  } else {
    msgpack_object* a = room;
    o->type = MSGPACK_OBJECT_ARRAY;
    o->via.array.size = (uint32_t)n;
    o->via.array.ptr = a;
    for (uint64_t i = 0; i < n; i++) {
      int rc = dec_obj(d, depth + 1, &a[i]);
      if (rc != 0) return rc;
    }
  }
  return 0;
}

static int dec_obj(mpdec_t* d, unsigned depth, msgpack_object* o) {
  if (++d->items > d->max_items || d->off >= d->len) return TXMQ_EPROTO;
  uint8_t b = d->p[d->off++];
  uint64_t v;
  if (b <= 0x7f) {
    o->type = MSGPACK_OBJECT_POSITIVE_INTEGER;
    o->via.u64 = b;
    return 0;
  }
  if (b >= 0xe0) {
    o->type = MSGPACK_OBJECT_NEGATIVE_INTEGER;
    o->via.i64 = (int8_t)b;
    return 0;
  }
  if (b <= 0x8f) return dec_container(d, depth, b & 0x0f, 1, o);
  if (b <= 0x9f) return dec_container(d, depth, b & 0x0f, 0, o);
  if (b <= 0xbf) return dec_str(d, MSGPACK_OBJECT_STR, b & 0x1f, o);
  switch (b) {
    case 0xc0:
      o->type = MSGPACK_OBJECT_NIL;
      return 0;
    case 0xc2:
    case 0xc3:
      o->type = MSGPACK_OBJECT_BOOLEAN;
      o->via.boolean = b == 0xc3;
      return 0;
    case 0xc4: case 0xc5: case 0xc6: /* bin 8/16/32 */
      if (dec_be(d, 1u << (b - 0xc4), &v) != 0) return TXMQ_EPROTO;
      return dec_str(d, MSGPACK_OBJECT_BIN, v, o);
    case 0xc7: case 0xc8: case 0xc9: /* ext 8/16/32 */
      if (dec_be(d, 1u << (b - 0xc7), &v) != 0) return TXMQ_EPROTO;
      return dec_ext(d, v, o);
    case 0xca: { /* float32 */
      if (dec_be(d, 4, &v) != 0) return TXMQ_EPROTO;
      uint32_t bits = (uint32_t)v;
      float f;
      memcpy(&f, &bits, sizeof f);
      o->type = MSGPACK_OBJECT_FLOAT32;
      o->via.f64 = f;
      return 0;
    }
    case 0xcb: { /* float64 */
      if (dec_be(d, 8, &v) != 0) return TXMQ_EPROTO;
      double f;
      memcpy(&f, &v, sizeof f);
      o->type = MSGPACK_OBJECT_FLOAT64;
      o->via.f64 = f;
      return 0;
    }
    case 0xcc: case 0xcd: case 0xce: case 0xcf: /* uint 8/16/32/64 */
      if (dec_be(d, 1u << (b - 0xcc), &v) != 0) return TXMQ_EPROTO;
      o->type = MSGPACK_OBJECT_POSITIVE_INTEGER;
      o->via.u64 = v;
      return 0;
    case 0xd0: /* int 8/16/32/64: sign-extended */
      if (dec_be(d, 1, &v) != 0) return TXMQ_EPROTO;
      dec_int((int8_t)(uint8_t)v, o);
      return 0;
    case 0xd1:
      if (dec_be(d, 2, &v) != 0) return TXMQ_EPROTO;
      dec_int((int16_t)(uint16_t)v, o);
      return 0;
    case 0xd2:
      if (dec_be(d, 4, &v) != 0) return TXMQ_EPROTO;
      dec_int((int32_t)(uint32_t)v, o);
      return 0;
    case 0xd3:
      if (dec_be(d, 8, &v) != 0) return TXMQ_EPROTO;
      dec_int((int64_t)v, o);
      return 0;
    case 0xd4: case 0xd5: case 0xd6: case 0xd7: case 0xd8: /* fixext */
      return dec_ext(d, 1u << (b - 0xd4), o);
    case 0xd9: case 0xda: case 0xdb: /* str 8/16/32 */
      if (dec_be(d, 1u << (b - 0xd9), &v) != 0) return TXMQ_EPROTO;
      return dec_str(d, MSGPACK_OBJECT_STR, v, o);
    case 0xdc: case 0xdd: /* array 16/32 */
      if (dec_be(d, b == 0xdc ? 2 : 4, &v) != 0) return TXMQ_EPROTO;
      return dec_container(d, depth, v, 0, o);
    case 0xde: case 0xdf: /* map 16/32 */
      if (dec_be(d, b == 0xde ? 2 : 4, &v) != 0) return TXMQ_EPROTO;
      return dec_container(d, depth, v, 1, o);
    default: /* 0xc1, never used */
      return TXMQ_EPROTO;
  }
}

/* Exactly one object filling all of buf, within the limits. */
static int decode_whole(const void* buf, size_t len, unsigned max_depth,
                        size_t max_items, msgpack_zone* z,
                        msgpack_object* out) {
  if (buf == NULL) return TXMQ_EPROTO;
  mpdec_t d = {.p = buf,
               .len = len,
               .max_items = max_items,
               .max_depth = max_depth > TXMQ__MP_MAX_DEPTH ? TXMQ__MP_MAX_DEPTH
                                                           : max_depth,
               .z = z};
  int rc = dec_obj(&d, 0, out);
  if (rc != 0) return rc;
  return d.off == len ? 0 : TXMQ_EPROTO;
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
