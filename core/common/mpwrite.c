/*
 * mpwrite.c - the out-of-line parts of mpwrite.h: growing the buffer, and
 * the packer callback.
 */
#include <stdlib.h>

#include "common/mpwrite.h"

char* txmq__mpw_grow(msgpack_sbuffer* sb, size_t n) {
  if (n > SIZE_MAX - sb->size) return NULL;
  size_t cap = sb->alloc ? sb->alloc : MSGPACK_SBUFFER_INIT_SIZE;
  while (cap < sb->size + n) {
    if (cap > SIZE_MAX / 2) return NULL;
    cap *= 2;
  }
  char* p = realloc(sb->data, cap);
  if (p == NULL) return NULL;
  sb->data = p;
  sb->alloc = cap;
  return p + sb->size;
}

int txmq__sbuf_write(void* data, const char* buf, size_t len) {
  msgpack_sbuffer* sb = data;
  char* p = txmq__mpw_room(sb, len);
  if (p == NULL) return -1;
  txmq__mp_copy(p, buf, len);
  sb->size += len;
  return 0;
}
