/*
 * mpwrite.h - a msgpack-c write callback for msgpack_sbuffer, for the
 * records written on every request.
 *
 * A packer calls its callback once per piece: a type byte, a length, a few
 * bytes of a number, then a string's body. msgpack_sbuffer_write hands each
 * to memcpy; profiles of txmqd showed those calls at a tenth of the loop
 * thread. Pieces of the sizes msgpack heads and numbers have are copied with
 * fixed-size copies the compiler inlines. Same buffer growth rule as
 * msgpack-c's (double, from MSGPACK_SBUFFER_INIT_SIZE).
 */
#ifndef TXMQ_COMMON_MPWRITE_H
#define TXMQ_COMMON_MPWRITE_H

#include <stdlib.h>
#include <string.h>

#include <msgpack.h>

/* Copies n bytes: pieces of 1, 2, 3, 5 and 9 bytes (msgpack heads and
 * numbers) without a call. */
static inline void txmq__mp_copy(char* d, const char* s, size_t n) {
  switch (n) {
    case 1: d[0] = s[0]; break;
    case 2: memcpy(d, s, 2); break;
    case 3: memcpy(d, s, 3); break;
    case 5: memcpy(d, s, 5); break;
    case 9: memcpy(d, s, 9); break;
    default: memcpy(d, s, n); break;
  }
}

static inline int txmq__sbuf_write(void* data, const char* buf, size_t len) {
  msgpack_sbuffer* sb = data;
  if (sb->alloc - sb->size < len) {
    size_t cap = sb->alloc ? sb->alloc * 2 : MSGPACK_SBUFFER_INIT_SIZE;
    while (cap < sb->size + len) {
      if (cap * 2 < cap) return -1;
      cap *= 2;
    }
    char* p = realloc(sb->data, cap);
    if (p == NULL) return -1;
    sb->data = p;
    sb->alloc = cap;
  }
  txmq__mp_copy(sb->data + sb->size, buf, len);
  sb->size += len;
  return 0;
}

#endif
