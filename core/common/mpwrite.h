/*
 * mpwrite.h - writing msgpack into a msgpack_sbuffer without a packer, for
 * the records and responses written on every request.
 *
 * msgpack-c's packer calls its write callback once per piece: a type byte,
 * a length, a few bytes of a number, then a string's body. Profiles of
 * txmqd showed those calls (and the memcpy behind each) at a tenth of the
 * loop thread. These helpers write each value with one room check and
 * fixed-size stores instead, in the same encoding msgpack-c chooses (the
 * smallest form; unsigned forms for non-negative integers), which
 * test_mpwrite compares byte for byte.
 *
 * Each returns 0, or -1 when the buffer cannot grow (the buffer then holds
 * what was written before).
 */
#ifndef TXMQ_COMMON_MPWRITE_H
#define TXMQ_COMMON_MPWRITE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <msgpack.h>

/* Makes room for n more bytes: a pointer to them (size not yet counted),
 * or NULL. Grows like msgpack-c's sbuffer: doubling. */
char* txmq__mpw_grow(msgpack_sbuffer* sb, size_t n);

static inline char* txmq__mpw_room(msgpack_sbuffer* sb, size_t n) {
  if (sb->alloc - sb->size >= n) return sb->data + sb->size;
  return txmq__mpw_grow(sb, n);
}

static inline void txmq__mpw_be16(char* p, uint16_t v) {
  p[0] = (char)(v >> 8);
  p[1] = (char)v;
}

static inline void txmq__mpw_be32(char* p, uint32_t v) {
  p[0] = (char)(v >> 24);
  p[1] = (char)(v >> 16);
  p[2] = (char)(v >> 8);
  p[3] = (char)v;
}

static inline void txmq__mpw_be64(char* p, uint64_t v) {
  txmq__mpw_be32(p, (uint32_t)(v >> 32));
  txmq__mpw_be32(p + 4, (uint32_t)v);
}

/* A head: the type byte and, for formats with one, a length or value of
 * 0, 1, 2, 4 or 8 bytes. */
static inline int txmq__mpw_head(msgpack_sbuffer* sb, uint8_t type, int bytes,
                                 uint64_t v) {
  char* p = txmq__mpw_room(sb, 9);
  if (p == NULL) return -1;
  p[0] = (char)type;
  switch (bytes) {
    case 1: p[1] = (char)v; break;
    case 2: txmq__mpw_be16(p + 1, (uint16_t)v); break;
    case 4: txmq__mpw_be32(p + 1, (uint32_t)v); break;
    case 8: txmq__mpw_be64(p + 1, v); break;
    default: break;
  }
  sb->size += 1 + (size_t)bytes;
  return 0;
}

static inline int txmq__mpw_raw(msgpack_sbuffer* sb, const void* b,
                                size_t n) {
  if (n == 0) return 0;
  char* p = txmq__mpw_room(sb, n);
  if (p == NULL) return -1;
  memcpy(p, b, n);
  sb->size += n;
  return 0;
}

static inline int txmq__mpw_map(msgpack_sbuffer* sb, uint32_t n) {
  if (n < 16) return txmq__mpw_head(sb, (uint8_t)(0x80 | n), 0, 0);
  if (n < 65536) return txmq__mpw_head(sb, 0xde, 2, n);
  return txmq__mpw_head(sb, 0xdf, 4, n);
}

static inline int txmq__mpw_array(msgpack_sbuffer* sb, uint32_t n) {
  if (n < 16) return txmq__mpw_head(sb, (uint8_t)(0x90 | n), 0, 0);
  if (n < 65536) return txmq__mpw_head(sb, 0xdc, 2, n);
  return txmq__mpw_head(sb, 0xdd, 4, n);
}

static inline int txmq__mpw_str(msgpack_sbuffer* sb, const char* s,
                                size_t n) {
  int r;
  if (n < 32) r = txmq__mpw_head(sb, (uint8_t)(0xa0 | n), 0, 0);
  else if (n < 256) r = txmq__mpw_head(sb, 0xd9, 1, n);
  else if (n < 65536) r = txmq__mpw_head(sb, 0xda, 2, n);
  else r = txmq__mpw_head(sb, 0xdb, 4, n);
  return r != 0 ? r : txmq__mpw_raw(sb, s, n);
}

static inline int txmq__mpw_cstr(msgpack_sbuffer* sb, const char* s) {
  return txmq__mpw_str(sb, s, strlen(s));
}

static inline int txmq__mpw_bin(msgpack_sbuffer* sb, const void* b,
                                size_t n) {
  int r;
  if (n < 256) r = txmq__mpw_head(sb, 0xc4, 1, n);
  else if (n < 65536) r = txmq__mpw_head(sb, 0xc5, 2, n);
  else r = txmq__mpw_head(sb, 0xc6, 4, n);
  return r != 0 ? r : txmq__mpw_raw(sb, b, n);
}

static inline int txmq__mpw_uint(msgpack_sbuffer* sb, uint64_t v) {
  if (v < 128) return txmq__mpw_head(sb, (uint8_t)v, 0, 0);
  if (v < 256) return txmq__mpw_head(sb, 0xcc, 1, v);
  if (v < 65536) return txmq__mpw_head(sb, 0xcd, 2, v);
  if (v < (UINT64_C(1) << 32)) return txmq__mpw_head(sb, 0xce, 4, v);
  return txmq__mpw_head(sb, 0xcf, 8, v);
}

static inline int txmq__mpw_int(msgpack_sbuffer* sb, int64_t v) {
  if (v >= 0) return txmq__mpw_uint(sb, (uint64_t)v);
  if (v >= -32) return txmq__mpw_head(sb, (uint8_t)(int8_t)v, 0, 0);
  if (v >= -128) return txmq__mpw_head(sb, 0xd0, 1, (uint64_t)v);
  if (v >= -32768) return txmq__mpw_head(sb, 0xd1, 2, (uint64_t)v);
  if (v >= INT32_MIN) return txmq__mpw_head(sb, 0xd2, 4, (uint64_t)v);
  return txmq__mpw_head(sb, 0xd3, 8, (uint64_t)v);
}

#endif
