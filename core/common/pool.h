/*
 * pool.h - a bounded free list of equal-size blocks, for the objects the
 * loop thread allocates and frees once or twice per request (completion
 * contexts, queued operations).
 *
 * Why: with hundreds of requests in flight, glibc's per-thread cache (seven
 * blocks per size) runs dry and every one of those allocations goes through
 * the arena's bins; profiles of txmqd showed malloc and free at a third of
 * the loop thread. A pool keeps up to `max` freed blocks for reuse.
 *
 * A pool belongs to one owner and one thread; it is not locked. get returns
 * zeroed memory, like calloc. Under AddressSanitizer the pool keeps nothing,
 * so that a use after free is still caught at the first reuse.
 */
#ifndef TXMQ_COMMON_POOL_H
#define TXMQ_COMMON_POOL_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__SANITIZE_ADDRESS__)
#define TXMQ__POOL_KEEPS 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TXMQ__POOL_KEEPS 0
#endif
#endif
#ifndef TXMQ__POOL_KEEPS
#define TXMQ__POOL_KEEPS 1
#endif

typedef struct txmq__pool_s {
  void* head;    /* freed blocks, linked through their first word */
  uint32_t n;    /* blocks kept */
  uint32_t max;  /* at most this many are kept; the rest are freed */
  size_t size;   /* of every block, >= sizeof(void*) */
} txmq__pool_t;

static inline void txmq__pool_init(txmq__pool_t* p, size_t size,
                                   uint32_t max) {
  p->head = NULL;
  p->n = 0;
  p->max = TXMQ__POOL_KEEPS ? max : 0;
  p->size = size < sizeof(void*) ? sizeof(void*) : size;
}

static inline void* txmq__pool_get(txmq__pool_t* p) {
  void* b = p->head;
  if (b == NULL) return calloc(1, p->size);
  memcpy(&p->head, b, sizeof(void*));
  p->n--;
  memset(b, 0, p->size);
  return b;
}

static inline void txmq__pool_put(txmq__pool_t* p, void* b) {
  if (b == NULL) return;
  if (p->n >= p->max) {
    free(b);
    return;
  }
  memcpy(b, &p->head, sizeof(void*));
  p->head = b;
  p->n++;
}

/* Frees every kept block; the pool stays usable. */
static inline void txmq__pool_drain(txmq__pool_t* p) {
  while (p->head != NULL) {
    void* b = p->head;
    memcpy(&p->head, b, sizeof(void*));
    free(b);
  }
  p->n = 0;
}

#endif
