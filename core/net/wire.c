/*
 * wire.c - the server's msgpack helpers: output buffers that become frames,
 * response packing, and typed access to the fields of request maps that
 * came from the network.
 *
 * The getters never trust the input: every field is checked for presence,
 * type and range, and a failure comes back as a TXMQ_E* code plus one
 * sentence naming the field, which the server sends as the error's msg. It
 * does not decode frames (server.c does, through txmq__mp_unpack) and knows
 * no operation.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/mpwrite.h"
#include "net/net_int.h"
#include "store/store_int.h"
#include "txmq/error.h"
#include "txmq/msg.h"
#include "txmq/tx.h"

/* ---- output buffers ---- */

/* Copies n bytes: pieces of 1, 2, 3, 5 and 9 bytes (what a packer hands
 * its callback for heads and numbers) without a call. */
static void copy_piece(char* d, const char* s, size_t n) {
  switch (n) {
    case 1: d[0] = s[0]; break;
    case 2: memcpy(d, s, 2); break;
    case 3: memcpy(d, s, 3); break;
    case 5: memcpy(d, s, 5); break;
    case 9: memcpy(d, s, 9); break;
    default: memcpy(d, s, n); break;
  }
}

static int wb_write(void* data, const char* buf, size_t len) {
  net_wbuf_t* w = data;
  if (w->failed) return -1;
  if (w->len + len > w->cap) {
    size_t cap = w->cap ? w->cap : 256;
    while (cap < w->len + len) cap *= 2;
    char* p = realloc(w->p, cap);
    if (p == NULL) {
      w->failed = 1;
      return -1;
    }
    w->p = p;
    w->cap = cap;
  }
  copy_piece(w->p + w->len, buf, len);
  w->len += len;
  return 0;
}

void net__wb_init(net_wbuf_t* w) {
  memset(w, 0, sizeof *w);
  msgpack_packer_init(&w->pk, w, wb_write);
  wb_write(w, "\0\0\0\0", 4);
}

void net__wb_free(net_wbuf_t* w) {
  free(w->p);
  w->p = NULL;
  w->len = w->cap = 0;
}

void net__wb_put(net_wbuf_t* w, const void* p, size_t n) {
  wb_write(w, p, n);
}

/* A buffer seen as a msgpack_sbuffer, to write into it with
 * common/mpwrite.h (one room check per value) rather than through the
 * packer's callback piece by piece. */
static void wb_view(const net_wbuf_t* w, msgpack_sbuffer* v) {
  v->size = w->len;
  v->data = w->p;
  v->alloc = w->cap;
}

static void wb_unview(net_wbuf_t* w, const msgpack_sbuffer* v, int r) {
  w->p = v->data;
  w->len = v->size;
  w->cap = v->alloc;
  if (r != 0) w->failed = 1;
}

/* The buffer behind pk if it is one of ours and can take more, else NULL
 * (a failed buffer stays failed; another packer is written through). */
static net_wbuf_t* wb_of(msgpack_packer* pk) {
  return pk->callback == wb_write ? pk->data : NULL;
}

void net__pk_strn(msgpack_packer* pk, const char* s, size_t n) {
  net_wbuf_t* w = wb_of(pk);
  if (w == NULL) {
    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, s, n);
    return;
  }
  if (w->failed) return;
  msgpack_sbuffer v;
  wb_view(w, &v);
  wb_unview(w, &v, txmq__mpw_str(&v, s, n));
}

void net__pk_str(msgpack_packer* pk, const char* s) {
  if (s == NULL) {
    msgpack_pack_nil(pk);
    return;
  }
  net__pk_strn(pk, s, strlen(s));
}

void net__pk_bin(msgpack_packer* pk, const void* p, size_t n) {
  net_wbuf_t* w = wb_of(pk);
  if (w == NULL) {
    msgpack_pack_bin(pk, n);
    msgpack_pack_bin_body(pk, p, n);
    return;
  }
  if (w->failed) return;
  msgpack_sbuffer v;
  wb_view(w, &v);
  wb_unview(w, &v, txmq__mpw_bin(&v, p, n));
}

void net__resp_begin(net_wbuf_t* w, uint64_t re, uint32_t nfields) {
  if (w->failed) return;
  msgpack_sbuffer v;
  wb_view(w, &v);
  int r = txmq__mpw_map(&v, 2 + nfields) || txmq__mpw_cstr(&v, "re") ||
          txmq__mpw_uint(&v, re) || txmq__mpw_cstr(&v, "ok") ||
          txmq__mpw_head(&v, 0xc3, 0, 0); /* true */
  wb_unview(w, &v, r);
}

void net__resp_error(net_wbuf_t* w, uint64_t re, int code, const char* msg) {
  msgpack_pack_map(&w->pk, 5);
  net__pk_str(&w->pk, "re");
  msgpack_pack_uint64(&w->pk, re);
  net__pk_str(&w->pk, "ok");
  msgpack_pack_false(&w->pk);
  net__pk_str(&w->pk, "err");
  net__pk_str(&w->pk, txmq_err_name(code));
  net__pk_str(&w->pk, "code");
  msgpack_pack_int(&w->pk, code);
  net__pk_str(&w->pk, "msg");
  net__pk_str(&w->pk, msg != NULL && msg[0] != '\0' ? msg : txmq_strerror(code));
}

int net__pk_msg_extra(net_wbuf_t* w, const txmq_msg_t* m, const char* handle,
                      int64_t deliveries) {
  if (handle == NULL) {
    if (w->failed) return TXMQ_ENOMEM;
    msgpack_sbuffer v;
    wb_view(w, &v);
    int rc = txmq__msg_write(&v, m);
    wb_unview(w, &v, rc == TXMQ_ENOMEM);
    return rc;
  }
  /* A written map cannot grow, so write the message aside and copy it
   * with a header of two more entries. */
  msgpack_sbuffer t;
  msgpack_sbuffer_init(&t);
  int rc = txmq__msg_write(&t, m);
  if (rc != 0) {
    msgpack_sbuffer_destroy(&t);
    return rc;
  }
  const uint8_t* p = (const uint8_t*)t.data;
  uint32_t n;
  size_t hdr;
  if ((p[0] & 0xf0) == 0x80) {
    n = p[0] & 0x0f;
    hdr = 1;
  } else if (p[0] == 0xde && t.size >= 3) {
    n = (uint32_t)p[1] << 8 | p[2];
    hdr = 3;
  } else if (p[0] == 0xdf && t.size >= 5) {
    n = (uint32_t)p[1] << 24 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 8 | p[4];
    hdr = 5;
  } else {
    msgpack_sbuffer_destroy(&t);
    return TXMQ_EINVAL;
  }
  msgpack_pack_map(&w->pk, n + 2);
  net__wb_put(w, p + hdr, t.size - hdr);
  net__pk_str(&w->pk, "handle");
  net__pk_str(&w->pk, handle);
  net__pk_str(&w->pk, "deliveries");
  msgpack_pack_int64(&w->pk, deliveries);
  msgpack_sbuffer_destroy(&t);
  return w->failed ? TXMQ_ENOMEM : 0;
}

/* ---- fields ---- */

int net__errf(char* err, int code, const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err, NET_ERR_MAX, fmt, ap);
  va_end(ap);
  return code;
}

const msgpack_object* net__field_n(const msgpack_object* map, const char* key,
                                   size_t klen) {
  if (map == NULL || map->type != MSGPACK_OBJECT_MAP) return NULL;
  for (uint32_t i = 0; i < map->via.map.size; i++) {
    const msgpack_object* k = &map->via.map.ptr[i].key;
    /* The first byte before memcmp: most keys differ there or in length. */
    if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == klen &&
        (klen == 0 || k->via.str.ptr[0] == key[0]) &&
        memcmp(k->via.str.ptr, key, klen) == 0) {
      /* Per PROTOCOL.md a nil value is the same as an absent field. */
      const msgpack_object* v = &map->via.map.ptr[i].val;
      return v->type == MSGPACK_OBJECT_NIL ? NULL : v;
    }
  }
  return NULL;
}

static int missing(char* err, const char* key) {
  return net__errf(err, TXMQ_EPROTO, "field '%s' is missing", key);
}

int net__get_str(const msgpack_object* map, const char* key, int required,
                 size_t maxlen, const char** p, size_t* len, char* err) {
  const msgpack_object* v = net__field(map, key);
  if (v == NULL) return required ? missing(err, key) : 1;
  if (v->type != MSGPACK_OBJECT_STR)
    return net__errf(err, TXMQ_EPROTO, "field '%s' must be a string", key);
  if (v->via.str.size > maxlen)
    return net__errf(err, TXMQ_ETOOBIG, "field '%s' is longer than %zu bytes",
                     key, maxlen);
  *p = v->via.str.ptr;
  *len = v->via.str.size;
  return 0;
}

int net__name_copy(const char* p, size_t n, char* out) {
  if (n > TXMQ_NAME_MAX) return 0;
  memcpy(out, p, n);
  out[n] = '\0';
  /* An embedded NUL would make the name shorter than it looks. */
  return strlen(out) == n && txmq_name_valid(out);
}

int net__get_name(const msgpack_object* map, const char* key, int required,
                  char* out, char* err) {
  const char* p;
  size_t n;
  int rc = net__get_str(map, key, required, TXMQ_NAME_MAX, &p, &n, err);
  if (rc == TXMQ_ETOOBIG) {
    return net__errf(err, TXMQ_EBADNAME,
                     "field '%s' is not a valid name (1-127 bytes of "
                     "[A-Za-z0-9._-], not starting with '.')", key);
  }
  if (rc != 0) return rc;
  if (!net__name_copy(p, n, out)) {
    return net__errf(err, TXMQ_EBADNAME,
                     "field '%s' is not a valid name (1-127 bytes of "
                     "[A-Za-z0-9._-], not starting with '.')", key);
  }
  return 0;
}

int net__get_int(const msgpack_object* map, const char* key, int required,
                 int64_t min, int64_t max, int64_t* out, char* err) {
  const msgpack_object* v = net__field(map, key);
  if (v == NULL) return required ? missing(err, key) : 1;
  int64_t x;
  if (v->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
    if (v->via.u64 > (uint64_t)INT64_MAX) goto range;
    x = (int64_t)v->via.u64;
  } else if (v->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
    x = v->via.i64;
  } else {
    return net__errf(err, TXMQ_EPROTO, "field '%s' must be an integer", key);
  }
  if (x < min || x > max) goto range;
  *out = x;
  return 0;
range:
  return net__errf(err, TXMQ_ERANGE,
                   "field '%s' must be between %lld and %lld", key,
                   (long long)min, (long long)max);
}

int net__get_txid(const msgpack_object* map, const char* key, uint8_t out[16],
                  char* err) {
  const msgpack_object* v = net__field(map, key);
  if (v == NULL) return missing(err, key);
  if (v->type == MSGPACK_OBJECT_BIN && v->via.bin.size == TXMQ_TX_ID_LEN) {
    memcpy(out, v->via.bin.ptr, TXMQ_TX_ID_LEN);
    return 0;
  }
  if (v->type == MSGPACK_OBJECT_STR && v->via.str.size == TXMQ_TX_ID_STRLEN) {
    char hex[TXMQ_TX_ID_STRLEN + 1];
    memcpy(hex, v->via.str.ptr, TXMQ_TX_ID_STRLEN);
    hex[TXMQ_TX_ID_STRLEN] = '\0';
    if (txmq_tx_id_parse(hex, out) == 0) return 0;
  }
  return net__errf(err, TXMQ_EPROTO,
                   "field '%s' must be a transaction id (bin 16, or 32 hex "
                   "digits)", key);
}

/* Checks what txmq__msg_from_object would refuse without saying why, so
 * that the error names the field. */
static int msg_precheck(const msgpack_object* o, const char* where,
                        char* err) {
  if (o->type != MSGPACK_OBJECT_MAP)
    return net__errf(err, TXMQ_EPROTO, "%s must be a map (a message)", where);
  const msgpack_object* t = net__field(o, "topic");
  if (t == NULL) return net__errf(err, TXMQ_EPROTO, "%s.topic is missing", where);
  if (t->type != MSGPACK_OBJECT_STR)
    return net__errf(err, TXMQ_EPROTO, "%s.topic must be a string", where);
  char name[TXMQ_NAME_MAX + 1];
  if (!net__name_copy(t->via.str.ptr, t->via.str.size, name)) {
    return net__errf(err, TXMQ_EBADNAME,
                     "%s.topic is not a valid topic name (1-127 bytes of "
                     "[A-Za-z0-9._-], not starting with '.')", where);
  }
  const msgpack_object* b = net__field(o, "body");
  if (b != NULL) {
    uint32_t n;
    if (b->type == MSGPACK_OBJECT_BIN) {
      n = b->via.bin.size;
    } else if (b->type == MSGPACK_OBJECT_STR) {
      n = b->via.str.size;
    } else {
      return net__errf(err, TXMQ_EPROTO, "%s.body must be bin or str", where);
    }
    if (n > TXMQ_MSG_MAX_BODY)
      return net__errf(err, TXMQ_ETOOBIG, "%s.body is over %u bytes", where,
                       TXMQ_MSG_MAX_BODY);
  }
  const msgpack_object* pr = net__field(o, "props");
  if (pr != NULL) {
    if (pr->type != MSGPACK_OBJECT_MAP)
      return net__errf(err, TXMQ_EPROTO, "%s.props must be a map of strings",
                       where);
    if (pr->via.map.size > TXMQ_MSG_MAX_PROPS)
      return net__errf(err, TXMQ_ETOOBIG, "%s.props has more than %d entries",
                       where, TXMQ_MSG_MAX_PROPS);
  }
  return 0;
}

/* "key[i]" (or "key" when i < 0), naming a message in errors. */
static void msg_where(char* where, size_t cap, const char* key, long i) {
  if (i < 0) snprintf(where, cap, "%s", key);
  else snprintf(where, cap, "%s[%ld]", key, i);
}

/* The message map o (field key, element i of it unless i < 0), decoded.
 * The decoder checks everything; only when it refuses is the map checked
 * again, to name the field in the error. */
static int msg_decode(const msgpack_object* o, const char* key, long i,
                      txmq_msg_t** out, char* err) {
  int rc = txmq__msg_from_object(o, out);
  if (rc == TXMQ_ENOMEM) return net__errf(err, rc, "out of memory");
  if (rc != 0) {
    char where[TXMQ_NAME_MAX + 32];
    msg_where(where, sizeof where, key, i);
    rc = msg_precheck(o, where, err);
    if (rc != 0) return rc;
    return net__errf(err, TXMQ_EPROTO,
                     "%s is not a valid message (tags, keys: str of at most "
                     "%d bytes; props: map str->str; born: int; qid: int; "
                     "no duplicate keys)", where, TXMQ_MSG_MAX_FIELD);
  }
  /* The store assigns these; a client's values mean nothing. */
  static const uint8_t zero[TXMQ_MSG_ID_LEN];
  txmq__msg_set_id(*out, zero);
  txmq__msg_set_store_ms(*out, 0);
  txmq__msg_set_queue_offset(*out, -1);
  return 0;
}

int net__get_msg(const msgpack_object* map, const char* key, txmq_msg_t** out,
                 char* err) {
  const msgpack_object* v = net__field(map, key);
  if (v == NULL) return missing(err, key);
  return msg_decode(v, key, -1, out, err);
}

void net__msgs_free(txmq_msg_t** msgs, size_t n) {
  for (size_t i = 0; i < n; i++) txmq_msg_free(msgs[i]);
}

int net__get_msgs(const msgpack_object* map, const char* key, size_t max,
                  txmq_msg_t** msgs, size_t* n, char* err) {
  const msgpack_object* v = net__field(map, key);
  if (v == NULL) return missing(err, key);
  if (v->type != MSGPACK_OBJECT_ARRAY)
    return net__errf(err, TXMQ_EPROTO, "field '%s' must be an array of messages",
                     key);
  size_t cnt = v->via.array.size;
  if (cnt == 0 || cnt > max)
    return net__errf(err, TXMQ_ERANGE, "field '%s' must hold 1 to %zu messages",
                     key, max);
  for (size_t i = 0; i < cnt; i++) {
    int rc = msg_decode(&v->via.array.ptr[i], key, (long)i, &msgs[i], err);
    if (rc != 0) {
      net__msgs_free(msgs, i);
      return rc;
    }
  }
  *n = cnt;
  return 0;
}
