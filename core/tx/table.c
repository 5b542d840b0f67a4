/*
 * table.c - the engine's in-memory tables: interned strings, the pool and
 * hash of live transactions, the due-time heap and the bounded table of
 * decided transactions.
 *
 * Everything here is plain data structure code with no I/O and no clock;
 * the rules of the transaction states live in tx.c. All hash tables use
 * linear probing with backward-shift deletion, so they never accumulate
 * tombstones no matter how many transactions come and go.
 */
#include <stdlib.h>
#include <string.h>

#include "txmq/error.h"
#include "tx/tx_int.h"

/* ---- hashing ---- */

static uint64_t fmix64(uint64_t k) {
  k ^= k >> 33;
  k *= 0xff51afd7ed558ccdULL;
  k ^= k >> 33;
  k *= 0xc4ceb9fe1a85ec53ULL;
  k ^= k >> 33;
  return k;
}

uint64_t txmq__id_hash(const uint8_t id[TXMQ_TX_ID_LEN]) {
  uint64_t a, b;
  memcpy(&a, id, 8);
  memcpy(&b, id + 8, 8);
  return fmix64(a * 0x9e3779b97f4a7c15ULL ^ fmix64(b));
}

static uint32_t str_hash(const char* s, size_t len) {
  uint32_t h = 2166136261u; /* FNV-1a: names are short */
  for (size_t i = 0; i < len; i++) h = (h ^ (uint8_t)s[i]) * 16777619u;
  return h;
}

/* ---- interned strings ---- */

void txmq__itab_free(txmq__itab_t* t) {
  for (uint32_t i = 0; i < t->cap; i++) free(t->slots[i]);
  free(t->slots);
  memset(t, 0, sizeof *t);
}

static uint32_t itab_pos(const txmq__itab_t* t, const char* s, size_t len,
                         uint32_t h, int* found) {
  uint32_t mask = t->cap - 1, i = h & mask;
  for (;;) {
    txmq__istr_t* e = t->slots[i];
    if (e == NULL) {
      *found = 0;
      return i;
    }
    if (e->hash == h && e->len == len && memcmp(e->s, s, len) == 0) {
      *found = 1;
      return i;
    }
    i = (i + 1) & mask;
  }
}

static int itab_grow(txmq__itab_t* t) {
  uint32_t ncap = t->cap ? t->cap * 2 : 16;
  txmq__istr_t** ns = calloc(ncap, sizeof *ns);
  if (ns == NULL) return TXMQ_ENOMEM;
  for (uint32_t i = 0; i < t->cap; i++) {
    txmq__istr_t* e = t->slots[i];
    if (e == NULL) continue;
    uint32_t j = e->hash & (ncap - 1);
    while (ns[j] != NULL) j = (j + 1) & (ncap - 1);
    ns[j] = e;
  }
  free(t->slots);
  t->slots = ns;
  t->cap = ncap;
  return 0;
}

txmq__istr_t* txmq__istr_find(const txmq__itab_t* t, const char* s,
                              size_t len) {
  if (t->cap == 0) return NULL;
  int found;
  uint32_t i = itab_pos(t, s, len, str_hash(s, len), &found);
  return found ? t->slots[i] : NULL;
}

txmq__istr_t* txmq__intern(txmq__itab_t* t, const char* s, size_t len) {
  uint32_t h = str_hash(s, len);
  int found = 0;
  if (t->cap > 0) {
    uint32_t i = itab_pos(t, s, len, h, &found);
    if (found) {
      t->slots[i]->refs++;
      return t->slots[i];
    }
  }
  if ((t->n + 1) * 4 > t->cap * 3 && itab_grow(t) != 0) return NULL;
  txmq__istr_t* e = malloc(sizeof *e + len + 1);
  if (e == NULL) return NULL;
  e->refs = 1;
  e->hash = h;
  e->pending = 0;
  e->undeliv_head = TXMQ__NIL;
  e->group_refs = 0;
  e->len = (uint32_t)len;
  e->snap_idx = 0;
  memcpy(e->s, s, len);
  e->s[len] = '\0';
  uint32_t i = itab_pos(t, s, len, h, &found);
  t->slots[i] = e;
  t->n++;
  return e;
}

void txmq__istr_unref(txmq__itab_t* t, txmq__istr_t* s) {
  if (s == NULL || --s->refs > 0) return;
  int found;
  uint32_t mask = t->cap - 1;
  uint32_t i = itab_pos(t, s->s, s->len, s->hash, &found);
  /* Backward-shift deletion keeps every probe chain unbroken. */
  uint32_t j = i;
  for (;;) {
    j = (j + 1) & mask;
    txmq__istr_t* e = t->slots[j];
    if (e == NULL) break;
    uint32_t home = e->hash & mask;
    if (((j - home) & mask) >= ((j - i) & mask)) {
      t->slots[i] = e;
      i = j;
    }
  }
  t->slots[i] = NULL;
  t->n--;
  free(s);
}

/* ---- live transactions ---- */

void txmq__txtab_free(txmq__txtab_t* t) {
  for (uint32_t i = 0; i < t->nchunks; i++) free(t->chunks[i]);
  free(t->chunks);
  free(t->slots);
  memset(t, 0, sizeof *t);
  t->free_head = TXMQ__NIL;
}

#define SLOT_IDX(v) ((uint32_t)(v))
#define SLOT_TAG(v) ((uint32_t)((v) >> 32))

/* The home slot is taken from the tag, so that growing and deleting work
 * from the slots alone. */
static uint64_t mkslot(uint32_t tag, uint32_t i) {
  return ((uint64_t)tag << 32) | (uint64_t)(i + 1);
}

static uint32_t id_tag(const uint8_t* id) {
  return (uint32_t)(txmq__id_hash(id) >> 32);
}

static int txtab_grow(txmq__txtab_t* t) {
  uint32_t ncap = t->cap ? t->cap * 2 : 64;
  uint64_t* ns = calloc(ncap, sizeof *ns);
  if (ns == NULL) return TXMQ_ENOMEM;
  for (uint32_t k = 0; k < t->cap; k++) {
    uint64_t v = t->slots[k];
    if (v == 0) continue;
    uint32_t j = SLOT_TAG(v) & (ncap - 1);
    while (ns[j] != 0) j = (j + 1) & (ncap - 1);
    ns[j] = v;
  }
  free(t->slots);
  t->slots = ns;
  t->cap = ncap;
  return 0;
}

uint32_t txmq__txtab_add(txmq__txtab_t* t, const uint8_t id[TXMQ_TX_ID_LEN]) {
  /* Load factor at most 0.7: short probes. */
  if ((uint64_t)(t->used + 1) * 10 > (uint64_t)t->cap * 7 &&
      txtab_grow(t) != 0)
    return TXMQ__NIL;
  uint32_t i;
  if (t->used == 0 && t->top == 0) t->free_head = TXMQ__NIL;
  if (t->free_head != TXMQ__NIL) {
    i = t->free_head;
    t->free_head = txmq__txe(t, i)->age_next;
  } else {
    if (t->top == UINT32_MAX - 1) return TXMQ__NIL;
    if ((t->top >> TXMQ__POOL_SHIFT) >= t->nchunks) {
      if (t->nchunks == t->chunks_cap) {
        uint32_t nc = t->chunks_cap ? t->chunks_cap * 2 : 16;
        txmq__txe_t** c = realloc(t->chunks, nc * sizeof *c);
        if (c == NULL) return TXMQ__NIL;
        t->chunks = c;
        t->chunks_cap = nc;
      }
      txmq__txe_t* chunk = malloc(TXMQ__POOL_CHUNK * sizeof *chunk);
      if (chunk == NULL) return TXMQ__NIL;
      t->chunks[t->nchunks++] = chunk;
    }
    i = t->top++;
  }
  txmq__txe_t* e = txmq__txe(t, i);
  memset(e, 0, sizeof *e);
  memcpy(e->id, id, TXMQ_TX_ID_LEN);
  e->heap_idx = TXMQ__NIL;
  e->age_prev = e->age_next = TXMQ__NIL;
  e->u.ul.prev = e->u.ul.next = TXMQ__NIL;
  uint32_t tag = id_tag(id);
  uint32_t j = tag & (t->cap - 1);
  while (t->slots[j] != 0) j = (j + 1) & (t->cap - 1);
  t->slots[j] = mkslot(tag, i);
  t->used++;
  return i;
}

uint32_t txmq__txtab_find(const txmq__txtab_t* t,
                          const uint8_t id[TXMQ_TX_ID_LEN]) {
  if (t->cap == 0) return TXMQ__NIL;
  uint32_t tag = id_tag(id);
  uint32_t mask = t->cap - 1, j = tag & mask;
  for (;;) {
    uint64_t v = t->slots[j];
    if (v == 0) return TXMQ__NIL;
    if (SLOT_TAG(v) == tag &&
        memcmp(txmq__txe(t, SLOT_IDX(v) - 1)->id, id, TXMQ_TX_ID_LEN) == 0)
      return SLOT_IDX(v) - 1;
    j = (j + 1) & mask;
  }
}

void txmq__txtab_del(txmq__txtab_t* t, uint32_t idx) {
  uint32_t mask = t->cap - 1, i = id_tag(txmq__txe(t, idx)->id) & mask;
  while (SLOT_IDX(t->slots[i]) != idx + 1) i = (i + 1) & mask;
  uint32_t j = i;
  for (;;) {
    j = (j + 1) & mask;
    uint64_t v = t->slots[j];
    if (v == 0) break;
    uint32_t home = SLOT_TAG(v) & mask;
    if (((j - home) & mask) >= ((j - i) & mask)) {
      t->slots[i] = v;
      i = j;
    }
  }
  t->slots[i] = 0;
  txmq__txe(t, idx)->age_next = t->free_head;
  t->free_head = idx;
  t->used--;
}

size_t txmq__txtab_bytes(const txmq__txtab_t* t) {
  return (size_t)t->nchunks * TXMQ__POOL_CHUNK * sizeof(txmq__txe_t) +
         (size_t)t->cap * sizeof(uint64_t) +
         (size_t)t->chunks_cap * sizeof(void*);
}

/* ---- heap ---- */

void txmq__heap_free(txmq__heap_t* h) {
  free(h->a);
  memset(h, 0, sizeof *h);
}

static void heap_put(txmq__heap_t* h, txmq__txtab_t* t, uint32_t k,
                     txmq__hent_t v) {
  h->a[k] = v;
  txmq__txe(t, v.tx)->heap_idx = k;
}

static void sift_up(txmq__heap_t* h, txmq__txtab_t* t, uint32_t k) {
  txmq__hent_t v = h->a[k];
  while (k > 0) {
    uint32_t p = (k - 1) / 2;
    if (h->a[p].due <= v.due) break;
    heap_put(h, t, k, h->a[p]);
    k = p;
  }
  heap_put(h, t, k, v);
}

static void sift_down(txmq__heap_t* h, txmq__txtab_t* t, uint32_t k) {
  txmq__hent_t v = h->a[k];
  for (;;) {
    uint32_t c = 2 * k + 1;
    if (c >= h->n) break;
    if (c + 1 < h->n && h->a[c + 1].due < h->a[c].due) c++;
    if (v.due <= h->a[c].due) break;
    heap_put(h, t, k, h->a[c]);
    k = c;
  }
  heap_put(h, t, k, v);
}

int txmq__heap_set(txmq__heap_t* h, txmq__txtab_t* t, uint32_t i,
                   uint64_t due) {
  txmq__txe_t* e = txmq__txe(t, i);
  if (e->heap_idx != TXMQ__NIL) {
    uint32_t k = e->heap_idx;
    uint64_t old = h->a[k].due;
    h->a[k].due = due;
    if (due < old) sift_up(h, t, k);
    else sift_down(h, t, k);
    return 0;
  }
  if (h->n == h->cap) {
    uint32_t nc = h->cap ? h->cap * 2 : 64;
    txmq__hent_t* a = realloc(h->a, (size_t)nc * sizeof *a);
    if (a == NULL) return TXMQ_ENOMEM;
    h->a = a;
    h->cap = nc;
  }
  h->a[h->n] = (txmq__hent_t){.due = due, .tx = i};
  sift_up(h, t, h->n++);
  return 0;
}

void txmq__heap_del(txmq__heap_t* h, txmq__txtab_t* t, uint32_t i) {
  txmq__txe_t* e = txmq__txe(t, i);
  uint32_t k = e->heap_idx;
  if (k == TXMQ__NIL) return;
  e->heap_idx = TXMQ__NIL;
  h->n--;
  if (k == h->n) return;
  uint64_t old = h->a[k].due;
  heap_put(h, t, k, h->a[h->n]);
  if (h->a[k].due < old) sift_up(h, t, k);
  else sift_down(h, t, k);
}

/* ---- decided transactions ---- */

#define DEC_POS_MASK ((UINT64_C(1) << 62) - 1)

void txmq__dtab_free(txmq__dtab_t* d) {
  free(d->ring);
  free(d->slots);
  uint32_t w = d->window;
  memset(d, 0, sizeof *d);
  d->window = w;
}

static uint32_t dtab_home(const txmq__dtab_t* d, const uint8_t* id) {
  return (uint32_t)txmq__id_hash(id) & (d->scap - 1);
}

static void dtab_index(txmq__dtab_t* d, uint32_t r) {
  uint32_t j = dtab_home(d, d->ring[r].id);
  while (d->slots[j] != 0) j = (j + 1) & (d->scap - 1);
  d->slots[j] = r + 1;
}

static void dtab_unindex(txmq__dtab_t* d, uint32_t r) {
  uint32_t mask = d->scap - 1, i = dtab_home(d, d->ring[r].id);
  while (d->slots[i] != r + 1) i = (i + 1) & mask;
  uint32_t j = i;
  for (;;) {
    j = (j + 1) & mask;
    uint32_t v = d->slots[j];
    if (v == 0) break;
    uint32_t home = dtab_home(d, d->ring[v - 1].id);
    if (((j - home) & mask) >= ((j - i) & mask)) {
      d->slots[i] = v;
      i = j;
    }
  }
  d->slots[i] = 0;
}

static void dtab_pop(txmq__dtab_t* d) {
  if (d->n == 0) return;
  dtab_unindex(d, d->head);
  d->head = (d->head + 1) % d->cap;
  d->n--;
}

/* Grows the ring (unwrapping it) and rebuilds the index at twice the ring's
 * size, so the index never runs fuller than one half. */
static int dtab_grow(txmq__dtab_t* d, uint32_t ncap) {
  txmq__dent_t* nr = malloc((size_t)ncap * sizeof *nr);
  uint32_t scap = 64;
  while (scap < ncap * 2u) scap *= 2;
  uint32_t* ns = calloc(scap, sizeof *ns);
  if (nr == NULL || ns == NULL) {
    free(nr);
    free(ns);
    return TXMQ_ENOMEM;
  }
  for (uint32_t k = 0; k < d->n; k++) nr[k] = d->ring[(d->head + k) % d->cap];
  free(d->ring);
  free(d->slots);
  d->ring = nr;
  d->cap = ncap;
  d->head = 0;
  d->slots = ns;
  d->scap = scap;
  for (uint32_t k = 0; k < d->n; k++) dtab_index(d, k);
  return 0;
}

void txmq__dtab_add(txmq__dtab_t* d, const uint8_t id[TXMQ_TX_ID_LEN],
                    txmq_tx_state_t state, uint64_t last_pos) {
  if (d->window == 0) return;
  if (d->n == d->cap && d->cap < d->window) {
    uint64_t nc = d->cap ? (uint64_t)d->cap * 2 : 256;
    if (nc > d->window) nc = d->window;
    if (dtab_grow(d, (uint32_t)nc) != 0 && d->cap == 0) return;
  }
  if (d->cap == 0) return;
  if (d->n >= d->window || d->n == d->cap) dtab_pop(d);
  uint32_t r = (d->head + d->n) % d->cap;
  memcpy(d->ring[r].id, id, TXMQ_TX_ID_LEN);
  d->ring[r].word = (last_pos & DEC_POS_MASK) | ((uint64_t)state << 62);
  d->n++;
  dtab_index(d, r);
}

int txmq__dtab_find(const txmq__dtab_t* d, const uint8_t id[TXMQ_TX_ID_LEN],
                    txmq_tx_state_t* state, uint64_t* last_pos) {
  if (d->n == 0) return TXMQ_ENOTFOUND;
  uint32_t mask = d->scap - 1, j = dtab_home(d, id);
  for (;;) {
    uint32_t v = d->slots[j];
    if (v == 0) return TXMQ_ENOTFOUND;
    const txmq__dent_t* e = &d->ring[v - 1];
    if (memcmp(e->id, id, TXMQ_TX_ID_LEN) == 0) {
      if (state) *state = (txmq_tx_state_t)(e->word >> 62);
      if (last_pos) *last_pos = e->word & DEC_POS_MASK;
      return 0;
    }
    j = (j + 1) & mask;
  }
}

void txmq__dtab_set_window(txmq__dtab_t* d, uint32_t window) {
  d->window = window;
  while (d->n > window) dtab_pop(d);
  if (window == 0) txmq__dtab_free(d);
}
