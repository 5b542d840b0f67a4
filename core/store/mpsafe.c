/*
 * mpsafe.c - a bounded front end to msgpack-c's unpacker for input that may
 * be hostile (frames from the wire, records and checkpoints from disk).
 *
 * msgpack-c reserves a container's element array when it reads the
 * container's header, so a few bytes declaring 2^32 elements make it try to
 * allocate gigabytes. txmq__mp_check() walks the encoding without allocating
 * and rejects such inputs before msgpack-c sees them; txmq__mp_unpack() then
 * unpacks and insists on exactly one object. This unit validates structure
 * only: the meaning of the object is checked by its reader.
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

/* Checks that buf is exactly one object within the limits (no trailing
 * bytes), before msgpack-c sees it. */
static int check_whole(const void* buf, size_t len, unsigned max_depth,
                       size_t max_items) {
  size_t used = 0;
  int rc = txmq__mp_check(buf, len, max_depth, max_items, &used);
  if (rc != 0) return rc;
  return used == len ? 0 : TXMQ_EPROTO;
}

static int unpack_result(msgpack_unpack_return r, size_t off, size_t len) {
  if (r == MSGPACK_UNPACK_NOMEM_ERROR) return TXMQ_ENOMEM;
  return r == MSGPACK_UNPACK_SUCCESS && off == len ? 0 : TXMQ_EPROTO;
}

int txmq__mp_unpack_zone(const void* buf, size_t len, unsigned max_depth,
                         size_t max_items, msgpack_zone* z,
                         msgpack_object* out) {
  int rc = check_whole(buf, len, max_depth, max_items);
  if (rc != 0) return rc;
  size_t off = 0;
  msgpack_unpack_return r = msgpack_unpack(buf, len, &off, z, out);
  return unpack_result(r, off, len);
}

int txmq__mp_unpack(const void* buf, size_t len, unsigned max_depth,
                    size_t max_items, msgpack_unpacked* out) {
  int rc = check_whole(buf, len, max_depth, max_items);
  if (rc != 0) return rc;
  size_t off = 0;
  msgpack_unpack_return r = msgpack_unpack_next(out, buf, len, &off);
  return unpack_result(r, off, len);
}
