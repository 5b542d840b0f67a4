/*
 * mpwrite.c - the out-of-line part of mpwrite.h: growing the buffer.
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
