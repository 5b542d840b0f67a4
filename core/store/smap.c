/*
 * smap.c - the small containers of the store: a string-keyed hash map for
 * topics and consumer offsets, and a list of strings.
 *
 * The map uses open addressing with linear probing and never deletes (the
 * store never forgets a topic or an offset entry), so it needs no
 * tombstones. It does not copy keys.
 */
#include <stdlib.h>
#include <string.h>

#include "store/store_impl.h"

static uint64_t hash_str(const char* s) {
  uint64_t h = 1469598103934665603u; /* FNV-1a 64 */
  for (; *s; s++) {
    h ^= (uint8_t)*s;
    h *= 1099511628211u;
  }
  return h;
}

static int grow(txmq__smap_t* m) {
  size_t cap = m->cap ? m->cap * 2 : 16;
  const char** keys = calloc(cap, sizeof *keys);
  void** vals = calloc(cap, sizeof *vals);
  if (keys == NULL || vals == NULL) {
    free(keys);
    free(vals);
    return TXMQ_ENOMEM;
  }
  for (size_t i = 0; i < m->cap; i++) {
    if (m->keys[i] == NULL) continue;
    size_t j = hash_str(m->keys[i]) & (cap - 1);
    while (keys[j] != NULL) j = (j + 1) & (cap - 1);
    keys[j] = m->keys[i];
    vals[j] = m->vals[i];
  }
  free(m->keys);
  free(m->vals);
  m->keys = keys;
  m->vals = vals;
  m->cap = cap;
  return 0;
}

int txmq__smap_put(txmq__smap_t* m, const char* key, void* val) {
  /* Keep the load under 1/2 so that probes stay short. */
  if ((m->n + 1) * 2 > m->cap) {
    int rc = grow(m);
    if (rc != 0) return rc;
  }
  size_t j = hash_str(key) & (m->cap - 1);
  while (m->keys[j] != NULL) {
    if (strcmp(m->keys[j], key) == 0) {
      m->vals[j] = val;
      return 0;
    }
    j = (j + 1) & (m->cap - 1);
  }
  m->keys[j] = key;
  m->vals[j] = val;
  m->n++;
  return 0;
}

void* txmq__smap_get(const txmq__smap_t* m, const char* key) {
  if (m->cap == 0) return NULL;
  size_t j = hash_str(key) & (m->cap - 1);
  while (m->keys[j] != NULL) {
    if (strcmp(m->keys[j], key) == 0) return m->vals[j];
    j = (j + 1) & (m->cap - 1);
  }
  return NULL;
}

void txmq__smap_free(txmq__smap_t* m) {
  free(m->keys);
  free(m->vals);
  memset(m, 0, sizeof *m);
}

int txmq__strv_push(txmq__strv_t* s, char* str) {
  if (str == NULL) return TXMQ_ENOMEM;
  if (s->n == s->cap) {
    size_t cap = s->cap ? s->cap * 2 : 8;
    char** v = realloc(s->v, cap * sizeof *v);
    if (v == NULL) {
      free(str);
      return TXMQ_ENOMEM;
    }
    s->v = v;
    s->cap = cap;
  }
  s->v[s->n++] = str;
  return 0;
}

void txmq__strv_free(txmq__strv_t* s) {
  for (size_t i = 0; i < s->n; i++) free(s->v[i]);
  free(s->v);
  memset(s, 0, sizeof *s);
}
