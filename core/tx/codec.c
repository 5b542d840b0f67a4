/*
 * codec.c - the engine's two log record types, TXMQ_REC_TX_HALF and
 * TXMQ_REC_TX_EVENT, as msgpack maps (see txmq/tx.h for the keys).
 *
 * Records are read back from disk, so decoding goes through the store's
 * bounded unpacker and checks every type; a record that does not have the
 * expected shape is TXMQ_ECORRUPT (the log's checksum passed, so the bytes
 * are what some writer meant: a wrong shape is a bug or a foreign writer,
 * never something to guess around). Unknown keys are ignored so that later
 * versions can add fields.
 */
#include <string.h>

#include "common/mpwrite.h"
#include "store/store_int.h"
#include "txmq/error.h"
#include "tx/tx_int.h"

static const char* const ev_names[TXMQ__EV_COUNT] = {
    "half", "commit", "rollback", "unknown", "check", "park", "resume"};

const char* txmq__ev_name(txmq__ev_t ev) {
  return (unsigned)ev < TXMQ__EV_COUNT ? ev_names[ev] : "?";
}

int txmq__half_encode(msgpack_sbuffer* sb, const uint8_t* id,
                      const char* group, const char* producer,
                      int64_t immunity_ms, int64_t at,
                      txmq_msg_t* const* msgs, size_t n) {
  int r = txmq__mpw_map(sb, producer ? 6 : 5);
  r |= txmq__mpw_cstr(sb, "tx");
  r |= txmq__mpw_bin(sb, id, TXMQ_TX_ID_LEN);
  r |= txmq__mpw_cstr(sb, "group");
  r |= txmq__mpw_cstr(sb, group);
  if (producer) {
    r |= txmq__mpw_cstr(sb, "producer");
    r |= txmq__mpw_cstr(sb, producer);
  }
  r |= txmq__mpw_cstr(sb, "immunity_ms");
  r |= txmq__mpw_int(sb, immunity_ms);
  r |= txmq__mpw_cstr(sb, "at");
  r |= txmq__mpw_int(sb, at);
  /* Messages are embedded as msgpack values, byte for byte what
   * txmq_msg_encode() gives, so the store's message codec reads them. */
  r |= txmq__mpw_cstr(sb, "msgs");
  r |= txmq__mpw_array(sb, (uint32_t)n);
  if (r != 0) return TXMQ_ENOMEM;
  for (size_t i = 0; i < n; i++) {
    int rc = txmq__msg_write(sb, msgs[i]);
    if (rc != 0) return rc;
  }
  return 0;
}

static int key_is(const msgpack_object* k, const char* s) {
  size_t n = strlen(s);
  return k->type == MSGPACK_OBJECT_STR && k->via.str.size == n &&
         memcmp(k->via.str.ptr, s, n) == 0;
}

static int get_int(const msgpack_object* o, int64_t* v) {
  if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
    if (o->via.u64 > INT64_MAX) return TXMQ_ECORRUPT;
    *v = (int64_t)o->via.u64;
    return 0;
  }
  if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
    *v = o->via.i64;
    return 0;
  }
  return TXMQ_ECORRUPT;
}

static int get_uint(const msgpack_object* o, uint64_t* v) {
  if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER) return TXMQ_ECORRUPT;
  *v = o->via.u64;
  return 0;
}

static int get_id(const msgpack_object* o, uint8_t id[TXMQ_TX_ID_LEN]) {
  if (o->type != MSGPACK_OBJECT_BIN || o->via.bin.size != TXMQ_TX_ID_LEN)
    return TXMQ_ECORRUPT;
  memcpy(id, o->via.bin.ptr, TXMQ_TX_ID_LEN);
  return 0;
}

/* A string or nil; nil gives NULL. */
static int get_str(const msgpack_object* o, const char** s, uint32_t* len) {
  if (o->type == MSGPACK_OBJECT_NIL) {
    *s = NULL;
    *len = 0;
    return 0;
  }
  if (o->type != MSGPACK_OBJECT_STR) return TXMQ_ECORRUPT;
  *s = o->via.str.ptr;
  *len = o->via.str.size;
  return 0;
}

static int unpack(const void* data, size_t len, msgpack_unpacked* up) {
  msgpack_unpacked_init(up);
  int rc = txmq__mp_unpack(data, len, TXMQ__MP_MAX_DEPTH, len + 1, up);
  if (rc == 0 && up->data.type != MSGPACK_OBJECT_MAP) rc = TXMQ_EPROTO;
  if (rc != 0) {
    msgpack_unpacked_destroy(up);
    return rc == TXMQ_ENOMEM ? rc : TXMQ_ECORRUPT;
  }
  return 0;
}

/* unpack() into the half's zone when it has one. */
static int unpack_half(const void* data, size_t len, txmq__half_t* h) {
  if (h->zone == NULL) {
    int rc = unpack(data, len, &h->up);
    if (rc == 0) h->obj = h->up.data;
    return rc;
  }
  msgpack_unpacked_init(&h->up);
  int rc = txmq__mp_unpack_zone(data, len, TXMQ__MP_MAX_DEPTH, len + 1,
                                h->zone, &h->obj);
  if (rc == 0 && h->obj.type != MSGPACK_OBJECT_MAP) rc = TXMQ_EPROTO;
  if (rc != 0) {
    msgpack_zone_clear(h->zone);
    return rc == TXMQ_ENOMEM ? rc : TXMQ_ECORRUPT;
  }
  return 0;
}

int txmq__half_decode(const void* data, size_t len, txmq__half_t* h) {
  return txmq__half_decode_in(data, len, NULL, h);
}

int txmq__half_decode_in(const void* data, size_t len, msgpack_zone* z,
                         txmq__half_t* h) {
  memset(h, 0, sizeof *h);
  h->zone = z;
  int rc = unpack_half(data, len, h);
  if (rc != 0) return rc;
  const msgpack_object_map* m = &h->obj.via.map;
  int have_id = 0;
  for (uint32_t i = 0; i < m->size && rc == 0; i++) {
    const msgpack_object* k = &m->ptr[i].key;
    const msgpack_object* v = &m->ptr[i].val;
    if (key_is(k, "tx")) {
      rc = get_id(v, h->id);
      have_id = 1;
    } else if (key_is(k, "group")) {
      rc = get_str(v, &h->group, &h->group_len);
    } else if (key_is(k, "producer")) {
      rc = get_str(v, &h->producer, &h->producer_len);
    } else if (key_is(k, "immunity_ms")) {
      rc = get_int(v, &h->immunity_ms);
    } else if (key_is(k, "at")) {
      rc = get_int(v, &h->at);
    } else if (key_is(k, "msgs")) {
      if (v->type != MSGPACK_OBJECT_ARRAY) rc = TXMQ_ECORRUPT;
      else h->msgs = &v->via.array;
    }
  }
  if (rc == 0 && (!have_id || h->group == NULL || h->msgs == NULL ||
                  h->msgs->size == 0 || h->msgs->size > TXMQ_TX_MAX_MSGS))
    rc = TXMQ_ECORRUPT;
  /* What txmq_tx_begin accepts and nothing else: the group and producer
   * reach check targets (and the script host) as C strings, so a group
   * that is not a valid name, or either one with a NUL inside, would send
   * the check somewhere else than where it belongs. */
  if (rc == 0) {
    char g[TXMQ_NAME_MAX + 1];
    if (h->group_len > TXMQ_NAME_MAX) {
      rc = TXMQ_ECORRUPT;
    } else {
      memcpy(g, h->group, h->group_len);
      g[h->group_len] = '\0';
      if (memchr(g, '\0', h->group_len) != NULL || !txmq_name_valid(g))
        rc = TXMQ_ECORRUPT;
    }
  }
  if (rc == 0 && h->producer != NULL &&
      (h->producer_len == 0 || h->producer_len > TXMQ__MAX_LABEL ||
       memchr(h->producer, '\0', h->producer_len) != NULL))
    rc = TXMQ_ECORRUPT;
  if (rc != 0) txmq__half_done(h);
  return rc;
}

void txmq__half_done(txmq__half_t* h) {
  if (h->zone != NULL) msgpack_zone_clear(h->zone);
  else msgpack_unpacked_destroy(&h->up);
}

int txmq__half_msg(const txmq__half_t* h, uint32_t i, txmq_msg_t** out) {
  if (i >= h->msgs->size) return TXMQ_EPROTO;
  return txmq__msg_from_object(&h->msgs->ptr[i], out);
}

int txmq__half_msg_peek(const txmq__half_t* h, uint32_t i, int32_t* queue_id,
                        const char** tags, size_t* tags_len) {
  if (i >= h->msgs->size) return TXMQ_EPROTO;
  return txmq__msg_peek_object(&h->msgs->ptr[i], queue_id, tags, tags_len);
}

int txmq__half_topic(const txmq__half_t* h, uint32_t i, const char** s,
                     uint32_t* len) {
  if (i >= h->msgs->size) return TXMQ_EPROTO;
  const msgpack_object* o = &h->msgs->ptr[i];
  if (o->type != MSGPACK_OBJECT_MAP) return TXMQ_EPROTO;
  for (uint32_t k = 0; k < o->via.map.size; k++) {
    const msgpack_object_kv* kv = &o->via.map.ptr[k];
    if (key_is(&kv->key, "topic") && kv->val.type == MSGPACK_OBJECT_STR &&
        kv->val.via.str.size > 0) {
      *s = kv->val.via.str.ptr;
      *len = kv->val.via.str.size;
      return 0;
    }
  }
  return TXMQ_EPROTO;
}

int txmq__event_encode(msgpack_sbuffer* sb, const txmq__event_t* ev) {
  uint32_t n = 6 + (ev->ver != NULL) + (ev->who != NULL);
  int r = txmq__mpw_map(sb, n);
  r |= txmq__mpw_cstr(sb, "tx");
  r |= txmq__mpw_bin(sb, ev->id, TXMQ_TX_ID_LEN);
  /* The event as a word, so that `txmq log dump` output reads by itself. */
  r |= txmq__mpw_cstr(sb, "ev");
  r |= txmq__mpw_cstr(sb, txmq__ev_name(ev->ev));
  r |= txmq__mpw_cstr(sb, "src");
  r |= txmq__mpw_uint(sb, (uint32_t)ev->src);
  if (ev->ver) {
    r |= txmq__mpw_cstr(sb, "ver");
    r |= txmq__mpw_str(sb, ev->ver, ev->ver_len);
  }
  if (ev->who) {
    r |= txmq__mpw_cstr(sb, "who");
    r |= txmq__mpw_str(sb, ev->who, ev->who_len);
  }
  r |= txmq__mpw_cstr(sb, "count");
  r |= txmq__mpw_uint(sb, ev->count);
  r |= txmq__mpw_cstr(sb, "at");
  r |= txmq__mpw_int(sb, ev->at);
  r |= txmq__mpw_cstr(sb, "prev");
  r |= txmq__mpw_uint(sb, ev->prev);
  return r != 0 ? TXMQ_ENOMEM : 0;
}

int txmq__event_decode(const void* data, size_t len, txmq__event_t* ev) {
  msgpack_unpacked up;
  memset(ev, 0, sizeof *ev);
  int rc = unpack(data, len, &up);
  if (rc != 0) return rc;
  const msgpack_object_map* m = &up.data.via.map;
  int have = 0; /* bits: tx, ev, prev, src, count, at */
  for (uint32_t i = 0; i < m->size && rc == 0; i++) {
    const msgpack_object* k = &m->ptr[i].key;
    const msgpack_object* v = &m->ptr[i].val;
    uint64_t u = 0;
    if (key_is(k, "tx")) {
      rc = get_id(v, ev->id);
      have |= 1;
    } else if (key_is(k, "ev")) {
      rc = TXMQ_ECORRUPT;
      for (int e = 1; e < TXMQ__EV_COUNT; e++) {
        if (key_is(v, ev_names[e])) {
          ev->ev = (txmq__ev_t)e;
          rc = 0;
          have |= 2;
        }
      }
    } else if (key_is(k, "src")) {
      rc = get_uint(v, &u);
      if (rc == 0 && (u < TXMQ_TX_SRC_PRODUCER || u > TXMQ_TX_SRC_UNREADABLE))
        rc = TXMQ_ECORRUPT;
      ev->src = (txmq_tx_source_t)u;
      have |= 8;
    } else if (key_is(k, "ver")) {
      rc = get_str(v, &ev->ver, &ev->ver_len);
    } else if (key_is(k, "who")) {
      rc = get_str(v, &ev->who, &ev->who_len);
    } else if (key_is(k, "count")) {
      rc = get_uint(v, &u);
      if (rc == 0 && u > UINT32_MAX) rc = TXMQ_ECORRUPT;
      ev->count = (uint32_t)u;
      have |= 16;
    } else if (key_is(k, "at")) {
      rc = get_int(v, &ev->at);
      have |= 32;
    } else if (key_is(k, "prev")) {
      rc = get_uint(v, &ev->prev);
      have |= 4;
    }
  }
  /* Every field our encoder writes must be there: an event replay acts on
   * (a commit publishes) is never guessed from a partial record. */
  if (rc == 0 && have != 63) rc = TXMQ_ECORRUPT;
  /* Strings point into data, not into the unpacked zone, so they outlive
   * it. */
  msgpack_unpacked_destroy(&up);
  return rc;
}
