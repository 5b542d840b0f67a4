/*
 * msg.c - the message model of txmq/msg.h, its msgpack codec and the msg id
 * generator.
 *
 * A message owns copies of all its fields. A copy (txmq_msg_clone) and a
 * decoded message are one allocation: their fields live in room at the end
 * of the block, so that making and freeing one costs a malloc and a free
 * instead of one per field (messages are made several times per request).
 * Fields set later are allocated alone; a field is freed only if it is not
 * inside the block. The codec writes one msgpack map
 * and reads it back from untrusted bytes: every key's type and every limit
 * is checked, duplicate keys and trailing bytes are refused, and nothing the
 * input declares is allocated before the bytes are known to be there (see
 * mpsafe.c). It does not know about queues or files; the store assigns ids,
 * times and offsets through store_int.h.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include <msgpack.h>

#include "common/mpwrite.h"
#include "txmq/error.h"
#include "txmq/msg.h"
#include "store/store_int.h"

typedef struct {
  char* key;
  char* value;
} prop_t;

struct txmq_msg_s {
  char* topic;
  char* tags;
  char* keys;
  uint8_t* body;
  size_t body_len;
  prop_t* props;
  size_t nprops;
  int64_t born_ms;
  int64_t store_ms;
  int64_t queue_offset;
  int32_t queue_id;
  uint8_t id[TXMQ_MSG_ID_LEN];
  size_t props_cap; /* entries props has room for */
  char* room;       /* the part of the message's block not used yet: */
  size_t room_len;  /* the block ends at room + room_len */
};

/* Where a message's room starts: aligned for the props array. */
#define MSG_HEAD ((sizeof(struct txmq_msg_s) + 15) & ~(size_t)15)

/* The top-level map has 10 known keys; unknown keys are allowed for forward
 * compatibility but bounded so that the duplicate check stays cheap. */
#define MSG_MAX_KEYS 64
/* Objects in one encoded message: keys, values, properties and whatever an
 * unknown key carries. Bounds msgpack-c's allocations per message. */
#define MSG_MAX_ITEMS 4096
#define MSG_MAX_DEPTH 8

/* A message with room bytes of room for its fields. */
static txmq_msg_t* msg_alloc(size_t room) {
  if (room > SIZE_MAX - MSG_HEAD) return NULL;
  txmq_msg_t* m = malloc(MSG_HEAD + room);
  if (m == NULL) return NULL;
  memset(m, 0, sizeof *m);
  m->queue_id = -1;
  m->queue_offset = -1;
  m->room = (char*)m + MSG_HEAD;
  m->room_len = room;
  return m;
}

/* n bytes for a field: from the room if they fit, else malloc(). */
static void* take(txmq_msg_t* m, size_t n) {
  if (n <= m->room_len) {
    void* p = m->room;
    m->room += n;
    m->room_len -= n;
    return p;
  }
  return malloc(n);
}

/* Frees a field unless it lives in the message's block. */
static void drop(const txmq_msg_t* m, void* p) {
  uintptr_t b = (uintptr_t)m, q = (uintptr_t)p;
  uintptr_t end = (uintptr_t)m->room + m->room_len;
  if (p != NULL && (q < b || q >= end)) free(p);
}

static char* dup_n(txmq_msg_t* m, const char* s, size_t n) {
  char* p = take(m, n + 1);
  if (p == NULL) return NULL;
  memcpy(p, s, n);
  p[n] = '\0';
  return p;
}

txmq_msg_t* txmq_msg_new(void) { return msg_alloc(0); }

static void clear_props(txmq_msg_t* m) {
  for (size_t i = 0; i < m->nprops; i++) {
    drop(m, m->props[i].key);
    drop(m, m->props[i].value);
  }
  drop(m, m->props);
  m->props = NULL;
  m->props_cap = 0;
  m->nprops = 0;
}

void txmq_msg_free(txmq_msg_t* m) {
  if (m == NULL) return;
  drop(m, m->topic);
  drop(m, m->tags);
  drop(m, m->keys);
  drop(m, m->body);
  clear_props(m);
  free(m);
}

static size_t str_room(const char* s) { return s != NULL ? strlen(s) + 1 : 0; }

txmq_msg_t* txmq_msg_clone(const txmq_msg_t* m) {
  size_t room = str_room(m->topic) + str_room(m->tags) + str_room(m->keys) +
                m->body_len + m->nprops * sizeof(prop_t);
  for (size_t i = 0; i < m->nprops; i++)
    room += str_room(m->props[i].key) + str_room(m->props[i].value);
  txmq_msg_t* c = msg_alloc(room);
  if (c == NULL) return NULL;
  /* The props array first: the room starts aligned. */
  if (m->nprops > 0) {
    c->props = take(c, m->nprops * sizeof(prop_t));
    c->props_cap = m->nprops;
    for (size_t i = 0; i < m->nprops; i++) {
      c->props[i].key = dup_n(c, m->props[i].key, strlen(m->props[i].key));
      c->props[i].value =
          dup_n(c, m->props[i].value, strlen(m->props[i].value));
      c->nprops = i + 1;
    }
  }
  if (m->topic) c->topic = dup_n(c, m->topic, strlen(m->topic));
  if (m->tags) c->tags = dup_n(c, m->tags, strlen(m->tags));
  if (m->keys) c->keys = dup_n(c, m->keys, strlen(m->keys));
  if (m->body_len > 0) {
    c->body = take(c, m->body_len);
    memcpy(c->body, m->body, m->body_len);
    c->body_len = m->body_len;
  }
  c->born_ms = m->born_ms;
  c->store_ms = m->store_ms;
  c->queue_id = m->queue_id;
  c->queue_offset = m->queue_offset;
  memcpy(c->id, m->id, sizeof c->id);
  return c;
}

/* The bytes a name may hold: [A-Za-z0-9._-]. A table, because names are
 * checked several times per request. */
#define NC_ROW(c) ((c) >= 'a' && (c) <= 'z') || ((c) >= 'A' && (c) <= 'Z') || \
    ((c) >= '0' && (c) <= '9') || (c) == '.' || (c) == '_' || (c) == '-'
#define NC4(c) NC_ROW(c), NC_ROW((c) + 1), NC_ROW((c) + 2), NC_ROW((c) + 3)
#define NC16(c) NC4(c), NC4((c) + 4), NC4((c) + 8), NC4((c) + 12)
static const unsigned char NAME_CHARS[256] = {
    NC16(0),   NC16(16),  NC16(32),  NC16(48),  NC16(64),  NC16(80),
    NC16(96),  NC16(112), NC16(128), NC16(144), NC16(160), NC16(176),
    NC16(192), NC16(208), NC16(224), NC16(240)};

int txmq_name_valid(const char* name) {
  if (name == NULL || name[0] == '\0' || name[0] == '.') return 0;
  const unsigned char* p = (const unsigned char*)name;
  size_t n = 0;
  for (; p[n] != '\0'; n++)
    if (n >= TXMQ_NAME_MAX || !NAME_CHARS[p[n]]) return 0;
  return 1;
}

int txmq_name_valid_n(const char* s, size_t len) {
  if (s == NULL || len == 0 || len > TXMQ_NAME_MAX || s[0] == '.') return 0;
  const unsigned char* p = (const unsigned char*)s;
  for (size_t i = 0; i < len; i++)
    if (!NAME_CHARS[p[i]]) return 0; /* a NUL is not a name byte either */
  return 1;
}

/* Replaces *slot (a field of m) with a copy of s (NULL clears). */
static int set_str(txmq_msg_t* m, char** slot, const char* s, size_t max) {
  if (s == NULL) {
    drop(m, *slot);
    *slot = NULL;
    return 0;
  }
  size_t n = strnlen(s, max + 1);
  if (n > max) return TXMQ_ETOOBIG;
  char* c = dup_n(m, s, n);
  if (c == NULL) return TXMQ_ENOMEM;
  drop(m, *slot);
  *slot = c;
  return 0;
}

int txmq_msg_set_topic(txmq_msg_t* m, const char* topic) {
  if (m == NULL || topic == NULL) return TXMQ_EINVAL;
  if (!txmq_name_valid(topic)) return TXMQ_EBADNAME;
  return set_str(m, &m->topic, topic, TXMQ_NAME_MAX);
}

int txmq_msg_set_tags(txmq_msg_t* m, const char* tags) {
  if (m == NULL) return TXMQ_EINVAL;
  return set_str(m, &m->tags, tags, TXMQ_MSG_MAX_FIELD);
}

int txmq_msg_set_keys(txmq_msg_t* m, const char* keys) {
  if (m == NULL) return TXMQ_EINVAL;
  return set_str(m, &m->keys, keys, TXMQ_MSG_MAX_FIELD);
}

int txmq_msg_set_body(txmq_msg_t* m, const void* body, size_t len) {
  if (m == NULL || (body == NULL && len > 0)) return TXMQ_EINVAL;
  if (len > TXMQ_MSG_MAX_BODY) return TXMQ_ETOOBIG;
  uint8_t* c = NULL;
  /* An empty body and no body are the same thing: the encoding leaves both
   * out, so keeping them apart here would not survive a round trip. */
  if (len > 0) {
    if ((c = take(m, len)) == NULL) return TXMQ_ENOMEM;
    memcpy(c, body, len);
  }
  drop(m, m->body);
  m->body = c;
  m->body_len = len;
  return 0;
}

static prop_t* find_prop(const txmq_msg_t* m, const char* key, size_t n) {
  for (size_t i = 0; i < m->nprops; i++) {
    if (strlen(m->props[i].key) == n && memcmp(m->props[i].key, key, n) == 0)
      return &m->props[i];
  }
  return NULL;
}

/* Sets or (value NULL) removes a property, from counted strings. */
static int prop_set_n(txmq_msg_t* m, const char* key, size_t klen,
                      const char* value, size_t vlen) {
  if (klen == 0) return TXMQ_EINVAL;
  if (klen > TXMQ_MSG_MAX_FIELD) return TXMQ_ETOOBIG;
  prop_t* p = find_prop(m, key, klen);
  if (value == NULL) {
    if (p != NULL) {
      size_t i = (size_t)(p - m->props);
      drop(m, p->key);
      drop(m, p->value);
      memmove(p, p + 1, (m->nprops - i - 1) * sizeof *p);
      m->nprops--;
    }
    return 0;
  }
  if (vlen > TXMQ_MSG_MAX_FIELD) return TXMQ_ETOOBIG;
  if (p == NULL && m->nprops >= TXMQ_MSG_MAX_PROPS) return TXMQ_ETOOBIG;
  char* v = dup_n(m, value, vlen);
  if (v == NULL) return TXMQ_ENOMEM;
  if (p != NULL) {
    drop(m, p->value);
    p->value = v;
    return 0;
  }
  if (m->nprops == m->props_cap) {
    /* Grown once to the maximum: properties are few and small. */
    prop_t* a = calloc(TXMQ_MSG_MAX_PROPS, sizeof *a);
    if (a == NULL) {
      drop(m, v);
      return TXMQ_ENOMEM;
    }
    if (m->nprops > 0) memcpy(a, m->props, m->nprops * sizeof *a);
    drop(m, m->props);
    m->props = a;
    m->props_cap = TXMQ_MSG_MAX_PROPS;
  }
  char* k = dup_n(m, key, klen);
  if (k == NULL) {
    drop(m, v);
    return TXMQ_ENOMEM;
  }
  m->props[m->nprops].key = k;
  m->props[m->nprops].value = v;
  m->nprops++;
  return 0;
}

int txmq_msg_prop_set(txmq_msg_t* m, const char* key, const char* value) {
  if (m == NULL || key == NULL) return TXMQ_EINVAL;
  size_t klen = strnlen(key, TXMQ_MSG_MAX_FIELD + 1);
  size_t vlen = value ? strnlen(value, TXMQ_MSG_MAX_FIELD + 1) : 0;
  return prop_set_n(m, key, klen, value, vlen);
}

void txmq_msg_set_born_ms(txmq_msg_t* m, int64_t ms) {
  if (m != NULL) m->born_ms = ms;
}

void txmq_msg_set_queue_id(txmq_msg_t* m, int32_t qid) {
  if (m != NULL) m->queue_id = qid < 0 ? -1 : qid;
}

const char* txmq_msg_topic(const txmq_msg_t* m) { return m->topic; }
const char* txmq_msg_tags(const txmq_msg_t* m) { return m->tags; }
const char* txmq_msg_keys(const txmq_msg_t* m) { return m->keys; }

const void* txmq_msg_body(const txmq_msg_t* m, size_t* len) {
  if (len != NULL) *len = m->body_len;
  return m->body;
}

const char* txmq_msg_prop_get(const txmq_msg_t* m, const char* key) {
  if (key == NULL) return NULL;
  prop_t* p = find_prop(m, key, strlen(key));
  return p ? p->value : NULL;
}

size_t txmq_msg_prop_count(const txmq_msg_t* m) { return m->nprops; }

int txmq_msg_prop_at(const txmq_msg_t* m, size_t i, const char** key,
                     const char** value) {
  if (i >= m->nprops) return TXMQ_ERANGE;
  if (key != NULL) *key = m->props[i].key;
  if (value != NULL) *value = m->props[i].value;
  return 0;
}

int64_t txmq_msg_born_ms(const txmq_msg_t* m) { return m->born_ms; }
int64_t txmq_msg_store_ms(const txmq_msg_t* m) { return m->store_ms; }
int32_t txmq_msg_queue_id(const txmq_msg_t* m) { return m->queue_id; }
int64_t txmq_msg_queue_offset(const txmq_msg_t* m) { return m->queue_offset; }
const uint8_t* txmq_msg_id(const txmq_msg_t* m) { return m->id; }

char* txmq_msg_id_str(const txmq_msg_t* m, char buf[TXMQ_MSG_ID_STRLEN + 1]) {
  static const char hex[] = "0123456789abcdef";
  for (int i = 0; i < TXMQ_MSG_ID_LEN; i++) {
    buf[2 * i] = hex[m->id[i] >> 4];
    buf[2 * i + 1] = hex[m->id[i] & 15];
  }
  buf[TXMQ_MSG_ID_STRLEN] = '\0';
  return buf;
}

static int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

int txmq_msg_id_parse(const char* str, uint8_t id[TXMQ_MSG_ID_LEN]) {
  if (str == NULL || strnlen(str, TXMQ_MSG_ID_STRLEN + 1) != TXMQ_MSG_ID_STRLEN)
    return TXMQ_EINVAL;
  uint8_t tmp[TXMQ_MSG_ID_LEN];
  for (int i = 0; i < TXMQ_MSG_ID_LEN; i++) {
    int hi = hexval(str[2 * i]), lo = hexval(str[2 * i + 1]);
    if (hi < 0 || lo < 0) return TXMQ_EINVAL;
    tmp[i] = (uint8_t)(hi << 4 | lo);
  }
  memcpy(id, tmp, sizeof tmp);
  return 0;
}

void txmq__msg_set_id(txmq_msg_t* m, const uint8_t id[TXMQ_MSG_ID_LEN]) {
  memcpy(m->id, id, TXMQ_MSG_ID_LEN);
}
void txmq__msg_set_store_ms(txmq_msg_t* m, int64_t ms) { m->store_ms = ms; }
void txmq__msg_set_queue_offset(txmq_msg_t* m, int64_t offset) {
  m->queue_offset = offset < 0 ? -1 : offset;
}

/* ---- encoding ---- */

static int id_is_zero(const uint8_t* id) {
  for (int i = 0; i < TXMQ_MSG_ID_LEN; i++)
    if (id[i]) return 0;
  return 1;
}

static int put_str(msgpack_sbuffer* sb, const char* k, const char* v) {
  return txmq__mpw_cstr(sb, k) || txmq__mpw_cstr(sb, v);
}

int txmq__msg_write(msgpack_sbuffer* sb, const txmq_msg_t* m) {
  if (m == NULL || m->topic == NULL) return TXMQ_EINVAL;
  int has_id = !id_is_zero(m->id);
  size_t n = 1 + (size_t)has_id + (m->queue_id >= 0) + (m->queue_offset >= 0) +
             (m->tags != NULL) + (m->keys != NULL) + (m->nprops > 0) +
             (m->body_len > 0) + (m->born_ms != 0) + (m->store_ms != 0);
  int e = txmq__mpw_map(sb, (uint32_t)n);
  if (has_id)
    e = e || txmq__mpw_cstr(sb, "id") ||
        txmq__mpw_bin(sb, m->id, TXMQ_MSG_ID_LEN);
  e = e || put_str(sb, "topic", m->topic);
  if (m->queue_id >= 0)
    e = e || txmq__mpw_cstr(sb, "qid") || txmq__mpw_int(sb, m->queue_id);
  if (m->queue_offset >= 0)
    e = e || txmq__mpw_cstr(sb, "qoff") || txmq__mpw_int(sb, m->queue_offset);
  if (m->tags != NULL) e = e || put_str(sb, "tags", m->tags);
  if (m->keys != NULL) e = e || put_str(sb, "keys", m->keys);
  if (m->nprops > 0) {
    e = e || txmq__mpw_cstr(sb, "props") ||
        txmq__mpw_map(sb, (uint32_t)m->nprops);
    for (size_t i = 0; i < m->nprops && !e; i++)
      e = put_str(sb, m->props[i].key, m->props[i].value);
  }
  if (m->body_len > 0)
    e = e || txmq__mpw_cstr(sb, "body") ||
        txmq__mpw_bin(sb, m->body, m->body_len);
  if (m->born_ms != 0)
    e = e || txmq__mpw_cstr(sb, "born") || txmq__mpw_int(sb, m->born_ms);
  if (m->store_ms != 0)
    e = e || txmq__mpw_cstr(sb, "stored") || txmq__mpw_int(sb, m->store_ms);
  return e ? TXMQ_ENOMEM : 0;
}

int txmq_msg_encode(const txmq_msg_t* m, void** buf, size_t* len) {
  if (m == NULL || buf == NULL || len == NULL) return TXMQ_EINVAL;
  msgpack_sbuffer sb;
  msgpack_sbuffer_init(&sb);
  int rc = txmq__msg_write(&sb, m);
  if (rc != 0) {
    msgpack_sbuffer_destroy(&sb);
    return rc;
  }
  *len = sb.size;
  *buf = msgpack_sbuffer_release(&sb);
  return 0;
}

/* ---- decoding ---- */

static int key_is(const msgpack_object_str* k, const char* name) {
  size_t n = strlen(name);
  return k->size == n && memcmp(k->ptr, name, n) == 0;
}

/* A string field: STR type, at most max bytes, no NUL inside (the API hands
 * out C strings, so an embedded NUL would silently cut the value). */
static int get_str(const msgpack_object* o, size_t max, const char** p,
                   size_t* n) {
  if (o->type != MSGPACK_OBJECT_STR) return TXMQ_EPROTO;
  if (o->via.str.size > max) return TXMQ_EPROTO;
  if (o->via.str.size > 0 && memchr(o->via.str.ptr, 0, o->via.str.size))
    return TXMQ_EPROTO;
  *p = o->via.str.ptr;
  *n = o->via.str.size;
  return 0;
}

static int get_int(const msgpack_object* o, int64_t min, int64_t max,
                   int64_t* v) {
  if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
    if (o->via.u64 > (uint64_t)INT64_MAX) return TXMQ_EPROTO;
    *v = (int64_t)o->via.u64;
  } else if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
    *v = o->via.i64;
  } else {
    return TXMQ_EPROTO;
  }
  return *v < min || *v > max ? TXMQ_EPROTO : 0;
}

/* Fields a map object gives, as decode_field() finds them: the routing
 * fields are noted here whether or not a message is being built. */
typedef struct {
  int have_topic;
  int32_t queue_id;
  const char* tags; /* into the object, not terminated; NULL if none */
  size_t tags_len;
} peek_t;

/* A string field: checked, then copied into *slot when there is a message
 * to build (slot non-NULL). */
static int str_field(txmq_msg_t* m, char** slot, const msgpack_object* o,
                     size_t max, const char** p, size_t* n) {
  int rc = get_str(o, max, p, n);
  if (rc != 0 || slot == NULL) return rc;
  char* c = dup_n(m, *p, *n);
  if (c == NULL) return TXMQ_ENOMEM;
  drop(m, *slot);
  *slot = c;
  return 0;
}

static int decode_props(txmq_msg_t* m, const msgpack_object* o) {
  if (o->type != MSGPACK_OBJECT_MAP) return TXMQ_EPROTO;
  if (o->via.map.size > TXMQ_MSG_MAX_PROPS) return TXMQ_EPROTO;
  if (m != NULL && o->via.map.size > 0 && m->props == NULL) {
    /* The array, aligned, from the room decoded_room kept for it. */
    size_t pad = (size_t)(-(uintptr_t)m->room) & (sizeof(prop_t) - 1);
    size_t need = pad + o->via.map.size * sizeof(prop_t);
    if (need <= m->room_len) {
      m->props = (prop_t*)(void*)(m->room + pad);
      m->room += need;
      m->room_len -= need;
      m->props_cap = o->via.map.size;
    }
  }
  for (uint32_t i = 0; i < o->via.map.size; i++) {
    const msgpack_object_kv* kv = &o->via.map.ptr[i];
    const char *k, *v;
    size_t kn, vn;
    if (get_str(&kv->key, TXMQ_MSG_MAX_FIELD, &k, &kn) != 0 || kn == 0 ||
        get_str(&kv->val, TXMQ_MSG_MAX_FIELD, &v, &vn) != 0)
      return TXMQ_EPROTO;
    if (m == NULL) {
      /* Only checking: the duplicate test find_prop() makes on a built
       * message, made on the keys before this one. */
      for (uint32_t j = 0; j < i; j++) {
        const msgpack_object_str* o2 = &o->via.map.ptr[j].key.via.str;
        if (o2->size == kn && memcmp(o2->ptr, k, kn) == 0) return TXMQ_EPROTO;
      }
      continue;
    }
    if (find_prop(m, k, kn) != NULL) return TXMQ_EPROTO; /* duplicate */
    int rc = prop_set_n(m, k, kn, v, vn);
    if (rc != 0) return rc == TXMQ_ENOMEM ? rc : TXMQ_EPROTO;
  }
  return 0;
}

/* Checks one field and, when m is not NULL, stores it in m. Checking and
 * building are one function so that a message txmq__msg_peek_object()
 * accepts is exactly one txmq__msg_from_object() builds. */
static int decode_field(txmq_msg_t* m, peek_t* pk, const msgpack_object_str* k,
                        const msgpack_object* v) {
  int64_t n;
  const char* p;
  size_t len;
  if (key_is(k, "id")) {
    if (v->type != MSGPACK_OBJECT_BIN || v->via.bin.size != TXMQ_MSG_ID_LEN)
      return TXMQ_EPROTO;
    if (m != NULL) memcpy(m->id, v->via.bin.ptr, TXMQ_MSG_ID_LEN);
  } else if (key_is(k, "topic")) {
    char t[TXMQ_NAME_MAX + 1];
    if (get_str(v, TXMQ_NAME_MAX, &p, &len) != 0) return TXMQ_EPROTO;
    memcpy(t, p, len);
    t[len] = '\0';
    if (!txmq_name_valid(t)) return TXMQ_EPROTO;
    if (m != NULL && (m->topic = dup_n(m, p, len)) == NULL) return TXMQ_ENOMEM;
    pk->have_topic = 1;
  } else if (key_is(k, "qid")) {
    if (get_int(v, -1, INT32_MAX, &n) != 0) return TXMQ_EPROTO;
    pk->queue_id = (int32_t)n;
    if (m != NULL) m->queue_id = (int32_t)n;
  } else if (key_is(k, "qoff")) {
    if (get_int(v, -1, INT64_MAX, &n) != 0) return TXMQ_EPROTO;
    if (m != NULL) m->queue_offset = n;
  } else if (key_is(k, "tags")) {
    int rc = str_field(m, m ? &m->tags : NULL, v, TXMQ_MSG_MAX_FIELD, &p, &len);
    if (rc == 0) {
      pk->tags = p;
      pk->tags_len = len;
    }
    return rc;
  } else if (key_is(k, "keys")) {
    return str_field(m, m ? &m->keys : NULL, v, TXMQ_MSG_MAX_FIELD, &p, &len);
  } else if (key_is(k, "props")) {
    return decode_props(m, v);
  } else if (key_is(k, "body")) {
    /* bin is what txmq writes; str is accepted too because many msgpack
     * libraries encode byte strings as str by default. */
    if (v->type == MSGPACK_OBJECT_BIN) {
      p = v->via.bin.ptr;
      len = v->via.bin.size;
    } else if (v->type == MSGPACK_OBJECT_STR) {
      p = v->via.str.ptr;
      len = v->via.str.size;
    } else {
      return TXMQ_EPROTO;
    }
    if (len > TXMQ_MSG_MAX_BODY) return TXMQ_EPROTO;
    return m != NULL ? txmq_msg_set_body(m, p, len) : 0;
  } else if (key_is(k, "born")) {
    if (get_int(v, INT64_MIN, INT64_MAX, &n) != 0) return TXMQ_EPROTO;
    if (m != NULL) m->born_ms = n;
  } else if (key_is(k, "stored")) {
    if (get_int(v, 0, INT64_MAX, &n) != 0) return TXMQ_EPROTO;
    if (m != NULL) m->store_ms = n;
  }
  /* Unknown keys are ignored (forward compatibility). */
  return 0;
}

/* Every check of a message map; builds it into m unless m is NULL. */
static int decode_object(const msgpack_object* o, txmq_msg_t* m, peek_t* pk) {
  pk->have_topic = 0;
  pk->queue_id = -1;
  pk->tags = NULL;
  pk->tags_len = 0;
  if (o->type != MSGPACK_OBJECT_MAP) return TXMQ_EPROTO;
  const msgpack_object_map* map = &o->via.map;
  if (map->size > MSG_MAX_KEYS) return TXMQ_EPROTO;
  for (uint32_t i = 0; i < map->size; i++) {
    if (map->ptr[i].key.type != MSGPACK_OBJECT_STR) return TXMQ_EPROTO;
    /* Duplicate keys: a reader that kept the first and one that kept the
     * last would see different messages, so neither is allowed. */
    for (uint32_t j = 0; j < i; j++) {
      const msgpack_object_str* a = &map->ptr[i].key.via.str;
      const msgpack_object_str* b = &map->ptr[j].key.via.str;
      if (a->size == b->size && memcmp(a->ptr, b->ptr, a->size) == 0)
        return TXMQ_EPROTO;
    }
  }
  int rc = 0;
  for (uint32_t i = 0; i < map->size && rc == 0; i++)
    rc = decode_field(m, pk, &map->ptr[i].key.via.str, &map->ptr[i].val);
  if (rc == 0 && !pk->have_topic) rc = TXMQ_EPROTO;
  return rc == 0 || rc == TXMQ_ENOMEM ? rc : TXMQ_EPROTO;
}

static size_t str_obj_room(const msgpack_object* o) {
  return o->type == MSGPACK_OBJECT_STR ? (size_t)o->via.str.size + 1 : 0;
}

/* The room the fields of a message map take once decoded (an upper bound
 * for what does not decode: decoding then fails anyway). The props array
 * may come after strings, so room for aligning it is added. */
static size_t decoded_room(const msgpack_object_map* map) {
  size_t room = 0;
  for (uint32_t i = 0; i < map->size; i++) {
    if (map->ptr[i].key.type != MSGPACK_OBJECT_STR) continue;
    const msgpack_object_str* k = &map->ptr[i].key.via.str;
    const msgpack_object* v = &map->ptr[i].val;
    if (key_is(k, "topic") || key_is(k, "tags") || key_is(k, "keys")) {
      room += str_obj_room(v);
    } else if (key_is(k, "body")) {
      if (v->type == MSGPACK_OBJECT_BIN) room += v->via.bin.size;
      else if (v->type == MSGPACK_OBJECT_STR) room += v->via.str.size;
    } else if (key_is(k, "props") && v->type == MSGPACK_OBJECT_MAP &&
               v->via.map.size <= TXMQ_MSG_MAX_PROPS) {
      room += sizeof(prop_t) - 1 + v->via.map.size * sizeof(prop_t);
      for (uint32_t j = 0; j < v->via.map.size; j++)
        room += str_obj_room(&v->via.map.ptr[j].key) +
                str_obj_room(&v->via.map.ptr[j].val);
    }
  }
  return room;
}

int txmq__msg_from_object(const msgpack_object* o, txmq_msg_t** out) {
  if (o == NULL || out == NULL) return TXMQ_EINVAL;
  /* The checks that need no message first: a bad map costs no
   * allocation. */
  if (o->type != MSGPACK_OBJECT_MAP || o->via.map.size > MSG_MAX_KEYS)
    return TXMQ_EPROTO;
  txmq_msg_t* m = msg_alloc(decoded_room(&o->via.map));
  if (m == NULL) return TXMQ_ENOMEM;
  peek_t pk;
  int rc = decode_object(o, m, &pk);
  if (rc != 0) {
    txmq_msg_free(m);
    return rc;
  }
  *out = m;
  return 0;
}

int txmq__msg_peek_object(const msgpack_object* o, int32_t* queue_id,
                          const char** tags, size_t* tags_len) {
  if (o == NULL) return TXMQ_EINVAL;
  peek_t pk;
  int rc = decode_object(o, NULL, &pk);
  if (rc != 0) return rc;
  if (queue_id != NULL) *queue_id = pk.queue_id;
  if (tags != NULL) *tags = pk.tags;
  if (tags_len != NULL) *tags_len = pk.tags_len;
  return 0;
}

int txmq_msg_decode(const void* buf, size_t len, txmq_msg_t** out) {
  if (out == NULL || (buf == NULL && len > 0)) return TXMQ_EINVAL;
  *out = NULL;
  msgpack_unpacked u;
  msgpack_unpacked_init(&u);
  int rc = txmq__mp_unpack(buf, len, MSG_MAX_DEPTH, MSG_MAX_ITEMS, &u);
  if (rc == 0) rc = txmq__msg_from_object(&u.data, out);
  msgpack_unpacked_destroy(&u);
  return rc;
}

/* ---- ids ---- */

int64_t txmq__now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void txmq__idgen_init(txmq__idgen_t* g) {
  uint8_t r[10];
  size_t got = 0;
  while (got < sizeof r) {
    ssize_t n = getrandom(r + got, sizeof r - got, 0);
    if (n > 0) {
      got += (size_t)n;
    } else if (n < 0 && errno != EINTR) {
      break;
    }
  }
  if (got < sizeof r) {
    /* No getrandom (very old kernel): the clock, the pid and the address of
     * the generator still make two stores of one host differ. */
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    uint64_t x = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 30) ^
                 ((uint64_t)getpid() << 40) ^ (uint64_t)(uintptr_t)g;
    for (size_t i = got; i < sizeof r; i++) {
      x ^= x << 13;
      x ^= x >> 7;
      x ^= x << 17;
      r[i] = (uint8_t)x;
    }
  }
  g->node = (uint32_t)r[0] << 24 | (uint32_t)r[1] << 16 | (uint32_t)r[2] << 8 |
            r[3];
  uint64_t s = 0;
  for (int i = 4; i < 10; i++) s = s << 8 | r[i];
  /* Start below 2^47 so that the counter has at least 2^47 ids to go before
   * it must carry into the time part. */
  g->seq = s & ((UINT64_C(1) << 47) - 1);
  g->last_ms = 0;
}

void txmq__idgen_next(txmq__idgen_t* g, int64_t now_ms,
                      uint8_t out[TXMQ_MSG_ID_LEN]) {
  uint64_t ms = now_ms > 0 ? (uint64_t)now_ms & ((UINT64_C(1) << 48) - 1) : 0;
  if (ms < g->last_ms) ms = g->last_ms; /* the clock stepped back */
  g->seq++;
  if (g->seq >= (UINT64_C(1) << 48)) {
    /* Carry into the time part rather than wrap, so ids keep growing. */
    g->seq = 0;
    if (ms <= g->last_ms) ms = g->last_ms + 1;
  }
  g->last_ms = ms;
  for (int i = 0; i < 6; i++) out[i] = (uint8_t)(ms >> (40 - 8 * i));
  for (int i = 0; i < 4; i++) out[6 + i] = (uint8_t)(g->node >> (24 - 8 * i));
  for (int i = 0; i < 6; i++) out[10 + i] = (uint8_t)(g->seq >> (40 - 8 * i));
}

uint32_t txmq__tags_hash(const char* s, size_t len) {
  if (s == NULL || len == 0) return 0;
  uint32_t h = 2166136261u;
  for (size_t i = 0; i < len; i++) {
    h ^= (uint8_t)s[i];
    h *= 16777619u;
  }
  return h == 0 ? 1 : h;
}
