/*
 * test_msg.c - the message model and its msgpack codec: round trips of every
 * field, the setters' limits, name validation, hostile decode inputs (which
 * must all give TXMQ_EPROTO and never crash) and the msg id generator.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <msgpack.h>

#include "txmq/error.h"
#include "txmq/msg.h"
#include "store/store_int.h"
#include "testutil.h"
#include "../mpref.h"

/* ---- helpers ---- */

static txmq_msg_t* full_msg(void) {
  txmq_msg_t* m = txmq_msg_new();
  assert_non_null(m);
  assert_int_equal(txmq_msg_set_topic(m, "orders.paid-v2_x"), 0);
  assert_int_equal(txmq_msg_set_tags(m, "TagA"), 0);
  assert_int_equal(txmq_msg_set_keys(m, "order-42 order-43"), 0);
  uint8_t body[300];
  for (size_t i = 0; i < sizeof body; i++) body[i] = (uint8_t)(i * 7);
  body[5] = 0; /* bodies are bytes: NULs survive */
  assert_int_equal(txmq_msg_set_body(m, body, sizeof body), 0);
  assert_int_equal(txmq_msg_prop_set(m, "a", "1"), 0);
  assert_int_equal(txmq_msg_prop_set(m, "b", ""), 0);
  assert_int_equal(txmq_msg_prop_set(m, "unicode", "h\xc3\xa9llo"), 0);
  txmq_msg_set_born_ms(m, 1700000000123LL);
  txmq_msg_set_queue_id(m, 3);
  uint8_t id[16];
  for (int i = 0; i < 16; i++) id[i] = (uint8_t)(0xA0 + i);
  txmq__msg_set_id(m, id);
  txmq__msg_set_store_ms(m, 1700000000456LL);
  txmq__msg_set_queue_offset(m, 1234567890123LL);
  return m;
}

static void assert_msg_equal(const txmq_msg_t* a, const txmq_msg_t* b) {
  assert_string_equal(txmq_msg_topic(a), txmq_msg_topic(b));
#define OPTSTR(f)                                                 \
  if (f(a) == NULL) assert_null(f(b));                            \
  else {                                                          \
    assert_non_null(f(b));                                        \
    assert_string_equal(f(a), f(b));                              \
  }
  OPTSTR(txmq_msg_tags);
  OPTSTR(txmq_msg_keys);
#undef OPTSTR
  size_t la, lb;
  const void* ba = txmq_msg_body(a, &la);
  const void* bb = txmq_msg_body(b, &lb);
  assert_int_equal(la, lb);
  if (la > 0) assert_memory_equal(ba, bb, la);
  assert_int_equal(txmq_msg_prop_count(a), txmq_msg_prop_count(b));
  for (size_t i = 0; i < txmq_msg_prop_count(a); i++) {
    const char *ka, *va, *kb, *vb;
    assert_int_equal(txmq_msg_prop_at(a, i, &ka, &va), 0);
    assert_int_equal(txmq_msg_prop_at(b, i, &kb, &vb), 0);
    assert_string_equal(ka, kb);
    assert_string_equal(va, vb);
  }
  assert_int_equal(txmq_msg_born_ms(a), txmq_msg_born_ms(b));
  assert_int_equal(txmq_msg_store_ms(a), txmq_msg_store_ms(b));
  assert_int_equal(txmq_msg_queue_id(a), txmq_msg_queue_id(b));
  assert_int_equal(txmq_msg_queue_offset(a), txmq_msg_queue_offset(b));
  assert_memory_equal(txmq_msg_id(a), txmq_msg_id(b), TXMQ_MSG_ID_LEN);
}

static void roundtrip(const txmq_msg_t* m) {
  void* buf;
  size_t len;
  assert_int_equal(txmq_msg_encode(m, &buf, &len), 0);
  txmq_msg_t* d = NULL;
  assert_int_equal(txmq_msg_decode(buf, len, &d), 0);
  assert_msg_equal(m, d);
  /* Encoding is deterministic: the decoded message encodes to the same
   * bytes. */
  void* buf2;
  size_t len2;
  assert_int_equal(txmq_msg_encode(d, &buf2, &len2), 0);
  assert_int_equal(len, len2);
  assert_memory_equal(buf, buf2, len);
  free(buf);
  free(buf2);
  txmq_msg_free(d);
}

/* A msgpack builder for hand-made (and hostile) inputs. */
typedef struct {
  msgpack_sbuffer sb;
  msgpack_packer pk;
} mp_t;

static void mp_init(mp_t* b) {
  msgpack_sbuffer_init(&b->sb);
  msgpack_packer_init(&b->pk, &b->sb, msgpack_sbuffer_write);
}
static void mp_str(mp_t* b, const char* s) {
  msgpack_pack_str(&b->pk, strlen(s));
  msgpack_pack_str_body(&b->pk, s, strlen(s));
}
static void mp_strn(mp_t* b, const char* s, size_t n) {
  msgpack_pack_str(&b->pk, n);
  msgpack_pack_str_body(&b->pk, s, n);
}
static int mp_decode(mp_t* b) {
  txmq_msg_t* m = (txmq_msg_t*)0x1;
  int rc = txmq_msg_decode(b->sb.data, b->sb.size, &m);
  if (rc == 0) txmq_msg_free(m);
  else assert_null(m);
  msgpack_sbuffer_destroy(&b->sb);
  return rc;
}
static int decode_bytes(const void* p, size_t n) {
  txmq_msg_t* m = NULL;
  int rc = txmq_msg_decode(p, n, &m);
  if (rc == 0) txmq_msg_free(m);
  return rc;
}

/* ---- tests ---- */

static void msg_defaults(void** state) {
  (void)state;
  txmq_msg_t* m = txmq_msg_new();
  assert_non_null(m);
  assert_null(txmq_msg_topic(m));
  assert_null(txmq_msg_tags(m));
  assert_null(txmq_msg_keys(m));
  size_t len = 99;
  assert_null(txmq_msg_body(m, &len));
  assert_int_equal(len, 0);
  assert_int_equal(txmq_msg_prop_count(m), 0);
  assert_int_equal(txmq_msg_queue_id(m), -1);
  assert_int_equal(txmq_msg_queue_offset(m), -1);
  assert_int_equal(txmq_msg_store_ms(m), 0);
  assert_int_equal(txmq_msg_born_ms(m), 0);
  char s[TXMQ_MSG_ID_STRLEN + 1];
  assert_string_equal(txmq_msg_id_str(m, s), "00000000000000000000000000000000");
  /* Encoding needs a topic. */
  void* buf;
  assert_int_equal(txmq_msg_encode(m, &buf, &len), TXMQ_EINVAL);
  txmq_msg_free(m);
  txmq_msg_free(NULL);
}

static void msg_roundtrip_every_field(void** state) {
  (void)state;
  txmq_msg_t* m = full_msg();
  roundtrip(m);
  /* Only a topic. */
  txmq_msg_t* t = txmq_msg_new();
  assert_int_equal(txmq_msg_set_topic(t, "T"), 0);
  roundtrip(t);
  /* Extreme values. */
  txmq_msg_set_born_ms(t, INT64_MIN);
  txmq_msg_set_queue_id(t, INT32_MAX);
  txmq__msg_set_queue_offset(t, INT64_MAX);
  txmq__msg_set_store_ms(t, INT64_MAX);
  roundtrip(t);
  txmq_msg_set_born_ms(t, -1);
  txmq_msg_set_queue_id(t, 0);
  txmq__msg_set_queue_offset(t, 0);
  roundtrip(t);
  txmq_msg_free(t);
  /* Maximal sizes. */
  txmq_msg_t* big = full_msg();
  char* f = malloc(TXMQ_MSG_MAX_FIELD + 1);
  memset(f, 'x', TXMQ_MSG_MAX_FIELD);
  f[TXMQ_MSG_MAX_FIELD] = '\0';
  assert_int_equal(txmq_msg_set_tags(big, f), 0);
  assert_int_equal(txmq_msg_set_keys(big, f), 0);
  assert_int_equal(txmq_msg_prop_set(big, "a", NULL), 0);
  assert_int_equal(txmq_msg_prop_set(big, "b", NULL), 0);
  assert_int_equal(txmq_msg_prop_set(big, "unicode", NULL), 0);
  for (int i = 0; i < TXMQ_MSG_MAX_PROPS; i++) {
    char k[16];
    snprintf(k, sizeof k, "k%d", i);
    assert_int_equal(txmq_msg_prop_set(big, k, f), 0);
  }
  uint8_t* body = calloc(1, TXMQ_MSG_MAX_BODY);
  body[TXMQ_MSG_MAX_BODY - 1] = 0x5a;
  assert_int_equal(txmq_msg_set_body(big, body, TXMQ_MSG_MAX_BODY), 0);
  roundtrip(big);
  free(body);
  free(f);
  txmq_msg_free(big);
  txmq_msg_free(m);
}

static void msg_clone_is_deep(void** state) {
  (void)state;
  txmq_msg_t* m = full_msg();
  txmq_msg_t* c = txmq_msg_clone(m);
  assert_non_null(c);
  assert_msg_equal(m, c);
  assert_ptr_not_equal(txmq_msg_topic(m), txmq_msg_topic(c));
  assert_int_equal(txmq_msg_set_tags(m, "changed"), 0);
  assert_int_equal(txmq_msg_prop_set(m, "a", "2"), 0);
  txmq_msg_free(m);
  assert_string_equal(txmq_msg_tags(c), "TagA");
  assert_string_equal(txmq_msg_prop_get(c, "a"), "1");
  txmq_msg_free(c);
}

/* Every setter on a message whose fields live in its own block (a copy, a
 * decoded message): replacing, clearing, adding past the block's props
 * array and removing must leave a message that reads right and frees
 * cleanly (the sanitizer and valgrind runs catch a bad free). */
static void setters_on_one_block_messages(txmq_msg_t* c) {
  assert_int_equal(txmq_msg_set_topic(c, "other"), 0);
  assert_int_equal(txmq_msg_set_tags(c, NULL), 0);
  assert_int_equal(txmq_msg_set_keys(c, "k2"), 0);
  assert_int_equal(txmq_msg_set_body(c, "new body", 8), 0);
  assert_int_equal(txmq_msg_prop_set(c, "a", "replaced"), 0);
  for (int i = 0; i < 10; i++) {
    char k[16];
    snprintf(k, sizeof k, "added%d", i);
    assert_int_equal(txmq_msg_prop_set(c, k, "v"), 0);
  }
  assert_int_equal(txmq_msg_prop_set(c, "b", NULL), 0);
  assert_string_equal(txmq_msg_topic(c), "other");
  assert_null(txmq_msg_tags(c));
  assert_string_equal(txmq_msg_keys(c), "k2");
  size_t len;
  const void* body = txmq_msg_body(c, &len);
  assert_int_equal(len, 8);
  assert_memory_equal(body, "new body", 8);
  assert_string_equal(txmq_msg_prop_get(c, "a"), "replaced");
  assert_null(txmq_msg_prop_get(c, "b"));
  assert_string_equal(txmq_msg_prop_get(c, "added9"), "v");
  assert_string_equal(txmq_msg_prop_get(c, "unicode"), "h\xc3\xa9llo");
  txmq_msg_t* again = txmq_msg_clone(c);
  assert_non_null(again);
  assert_msg_equal(c, again);
  txmq_msg_free(again);
  txmq_msg_set_body(c, NULL, 0);
  assert_null(txmq_msg_body(c, &len));
  txmq_msg_free(c);
}

static void msg_one_block_copies_take_setters(void** state) {
  (void)state;
  txmq_msg_t* m = full_msg();
  setters_on_one_block_messages(txmq_msg_clone(m));
  void* buf;
  size_t len;
  assert_int_equal(txmq_msg_encode(m, &buf, &len), 0);
  txmq_msg_t* d = NULL;
  assert_int_equal(txmq_msg_decode(buf, len, &d), 0);
  free(buf);
  assert_msg_equal(m, d);
  setters_on_one_block_messages(d);
  txmq_msg_free(m);
}

static void msg_setters_and_limits(void** state) {
  (void)state;
  txmq_msg_t* m = txmq_msg_new();
  assert_int_equal(txmq_msg_set_topic(m, NULL), TXMQ_EINVAL);
  assert_int_equal(txmq_msg_set_topic(m, "bad topic"), TXMQ_EBADNAME);
  assert_int_equal(txmq_msg_set_topic(m, ".hidden"), TXMQ_EBADNAME);
  assert_null(txmq_msg_topic(m));
  char name[TXMQ_NAME_MAX + 2];
  memset(name, 'n', sizeof name);
  name[TXMQ_NAME_MAX] = '\0';
  assert_int_equal(txmq_msg_set_topic(m, name), 0);
  name[TXMQ_NAME_MAX] = 'n';
  name[TXMQ_NAME_MAX + 1] = '\0';
  assert_int_equal(txmq_msg_set_topic(m, name), TXMQ_EBADNAME);
  assert_int_equal(strlen(txmq_msg_topic(m)), TXMQ_NAME_MAX);

  /* Setters copy. */
  char buf[8] = "tag1";
  assert_int_equal(txmq_msg_set_tags(m, buf), 0);
  buf[0] = 'X';
  assert_string_equal(txmq_msg_tags(m), "tag1");
  assert_int_equal(txmq_msg_set_tags(m, NULL), 0);
  assert_null(txmq_msg_tags(m));
  assert_int_equal(txmq_msg_set_keys(m, ""), 0);
  assert_string_equal(txmq_msg_keys(m), "");

  char* big = malloc(TXMQ_MSG_MAX_FIELD + 2);
  memset(big, 'b', TXMQ_MSG_MAX_FIELD + 1);
  big[TXMQ_MSG_MAX_FIELD + 1] = '\0';
  assert_int_equal(txmq_msg_set_tags(m, big), TXMQ_ETOOBIG);
  assert_int_equal(txmq_msg_set_keys(m, big), TXMQ_ETOOBIG);
  assert_int_equal(txmq_msg_prop_set(m, big, "v"), TXMQ_ETOOBIG);
  assert_int_equal(txmq_msg_prop_set(m, "k", big), TXMQ_ETOOBIG);
  assert_string_equal(txmq_msg_keys(m), ""); /* unchanged on failure */
  free(big);

  assert_int_equal(txmq_msg_set_body(m, NULL, 1), TXMQ_EINVAL);
  assert_int_equal(txmq_msg_set_body(m, "x", TXMQ_MSG_MAX_BODY + 1), TXMQ_ETOOBIG);
  assert_int_equal(txmq_msg_set_body(m, "abc", 3), 0);
  size_t len;
  assert_memory_equal(txmq_msg_body(m, &len), "abc", 3);
  assert_int_equal(len, 3);
  assert_int_equal(txmq_msg_set_body(m, NULL, 0), 0);
  assert_null(txmq_msg_body(m, &len));
  assert_int_equal(len, 0);

  /* Properties: insertion order, replace in place, remove with NULL, at
   * most TXMQ_MSG_MAX_PROPS. */
  assert_int_equal(txmq_msg_prop_set(m, "", "v"), TXMQ_EINVAL);
  assert_int_equal(txmq_msg_prop_set(m, NULL, "v"), TXMQ_EINVAL);
  for (int i = 0; i < TXMQ_MSG_MAX_PROPS; i++) {
    char k[16], v[16];
    snprintf(k, sizeof k, "k%d", i);
    snprintf(v, sizeof v, "v%d", i);
    assert_int_equal(txmq_msg_prop_set(m, k, v), 0);
  }
  assert_int_equal(txmq_msg_prop_set(m, "one-more", "v"), TXMQ_ETOOBIG);
  assert_int_equal(txmq_msg_prop_set(m, "k5", "five"), 0);
  assert_string_equal(txmq_msg_prop_get(m, "k5"), "five");
  const char *k, *v;
  assert_int_equal(txmq_msg_prop_at(m, 5, &k, &v), 0);
  assert_string_equal(k, "k5");
  assert_int_equal(txmq_msg_prop_at(m, TXMQ_MSG_MAX_PROPS, &k, &v), TXMQ_ERANGE);
  assert_int_equal(txmq_msg_prop_set(m, "k0", NULL), 0);
  assert_null(txmq_msg_prop_get(m, "k0"));
  assert_int_equal(txmq_msg_prop_count(m), TXMQ_MSG_MAX_PROPS - 1);
  assert_int_equal(txmq_msg_prop_at(m, 0, &k, &v), 0);
  assert_string_equal(k, "k1");
  assert_int_equal(txmq_msg_prop_set(m, "one-more", "v"), 0);
  assert_int_equal(txmq_msg_prop_set(m, "absent", NULL), 0);
  assert_null(txmq_msg_prop_get(m, "absent"));

  txmq_msg_set_queue_id(m, -5);
  assert_int_equal(txmq_msg_queue_id(m), -1);
  txmq_msg_free(m);
}

static void msg_name_validation(void** state) {
  (void)state;
  const char* good[] = {"a", "TopicTest", "order-payment", "a.b_c-d", "0", "x."};
  const char* bad[] = {"", ".", "..", ".a", "a/b", "a b", "a\\b", "ä", "a:b",
                       "a\tb", "a*", "../x"};
  /* txmq_name_valid_n gives the same verdicts on the bytes alone. */
  for (size_t i = 0; i < sizeof good / sizeof *good; i++) {
    assert_true(txmq_name_valid(good[i]));
    assert_true(txmq_name_valid_n(good[i], strlen(good[i])));
  }
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    assert_false(txmq_name_valid(bad[i]));
    assert_false(txmq_name_valid_n(bad[i], strlen(bad[i])));
  }
  assert_false(txmq_name_valid(NULL));
  assert_false(txmq_name_valid_n(NULL, 1));
  assert_false(txmq_name_valid_n("a\0b", 3)); /* a NUL inside */
  assert_true(txmq_name_valid_n("ab/", 2));   /* only len bytes count */
  char n[TXMQ_NAME_MAX + 2];
  memset(n, 'a', sizeof n);
  n[TXMQ_NAME_MAX] = '\0';
  assert_true(txmq_name_valid(n));
  assert_true(txmq_name_valid_n(n, TXMQ_NAME_MAX));
  n[TXMQ_NAME_MAX] = 'a';
  n[TXMQ_NAME_MAX + 1] = '\0';
  assert_false(txmq_name_valid(n));
  assert_false(txmq_name_valid_n(n, TXMQ_NAME_MAX + 1));
}

static void msg_id_string_and_parse(void** state) {
  (void)state;
  txmq_msg_t* m = full_msg();
  char s[TXMQ_MSG_ID_STRLEN + 1];
  assert_string_equal(txmq_msg_id_str(m, s), "a0a1a2a3a4a5a6a7a8a9aaabacadaeaf");
  uint8_t id[16];
  assert_int_equal(txmq_msg_id_parse(s, id), 0);
  assert_memory_equal(id, txmq_msg_id(m), 16);
  assert_int_equal(txmq_msg_id_parse("A0A1A2A3A4A5A6A7A8A9AAABACADAEAF", id), 0);
  assert_memory_equal(id, txmq_msg_id(m), 16);
  assert_int_equal(txmq_msg_id_parse("a0a1", id), TXMQ_EINVAL);
  assert_int_equal(txmq_msg_id_parse("a0a1a2a3a4a5a6a7a8a9aaabacadaeafff", id),
                   TXMQ_EINVAL);
  assert_int_equal(txmq_msg_id_parse("g0a1a2a3a4a5a6a7a8a9aaabacadaeaf", id),
                   TXMQ_EINVAL);
  assert_int_equal(txmq_msg_id_parse(NULL, id), TXMQ_EINVAL);
  txmq_msg_free(m);
}

static void decode_truncated_at_every_length(void** state) {
  (void)state;
  txmq_msg_t* m = full_msg();
  void* buf;
  size_t len;
  assert_int_equal(txmq_msg_encode(m, &buf, &len), 0);
  for (size_t n = 0; n < len; n++) {
    /* A copy of exactly n bytes, so that ASan sees any read past the end. */
    uint8_t* p = malloc(n ? n : 1);
    memcpy(p, buf, n);
    assert_int_equal(decode_bytes(p, n), TXMQ_EPROTO);
    free(p);
  }
  assert_int_equal(decode_bytes(buf, len), 0);
  assert_int_equal(decode_bytes(NULL, 0), TXMQ_EPROTO);
  free(buf);
  txmq_msg_free(m);
}

static void decode_trailing_bytes_and_non_maps(void** state) {
  (void)state;
  txmq_msg_t* m = full_msg();
  void* buf;
  size_t len;
  assert_int_equal(txmq_msg_encode(m, &buf, &len), 0);
  uint8_t* p = malloc(len + 1);
  memcpy(p, buf, len);
  p[len] = 0xc0;
  assert_int_equal(decode_bytes(p, len + 1), TXMQ_EPROTO);
  /* Two messages back to back are not one message. */
  uint8_t* two = malloc(2 * len);
  memcpy(two, buf, len);
  memcpy(two + len, buf, len);
  assert_int_equal(decode_bytes(two, 2 * len), TXMQ_EPROTO);
  free(two);
  free(p);
  free(buf);
  txmq_msg_free(m);

  const uint8_t nil = 0xc0, t = 0xc3, i = 0x05, arr[] = {0x91, 0x80},
                str[] = {0xa1, 'x'}, bin[] = {0xc4, 0x01, 0x00},
                f64[] = {0xcb, 0, 0, 0, 0, 0, 0, 0, 0},
                ext[] = {0xd4, 0x01, 0x00}, never = 0xc1;
  assert_int_equal(decode_bytes(&nil, 1), TXMQ_EPROTO);
  assert_int_equal(decode_bytes(&t, 1), TXMQ_EPROTO);
  assert_int_equal(decode_bytes(&i, 1), TXMQ_EPROTO);
  assert_int_equal(decode_bytes(arr, sizeof arr), TXMQ_EPROTO);
  assert_int_equal(decode_bytes(str, sizeof str), TXMQ_EPROTO);
  assert_int_equal(decode_bytes(bin, sizeof bin), TXMQ_EPROTO);
  assert_int_equal(decode_bytes(f64, sizeof f64), TXMQ_EPROTO);
  assert_int_equal(decode_bytes(ext, sizeof ext), TXMQ_EPROTO);
  assert_int_equal(decode_bytes(&never, 1), TXMQ_EPROTO);
  /* An empty map has no topic. */
  const uint8_t empty = 0x80;
  assert_int_equal(decode_bytes(&empty, 1), TXMQ_EPROTO);
}

/* A map {"topic": "T", key: <value written by fn>}. */
typedef void (*value_fn)(mp_t* b);
static int decode_with(const char* key, value_fn fn) {
  mp_t b;
  mp_init(&b);
  int is_topic = strcmp(key, "topic") == 0;
  msgpack_pack_map(&b.pk, is_topic ? 1 : 2);
  if (!is_topic) {
    mp_str(&b, "topic");
    mp_str(&b, "T");
  }
  mp_str(&b, key);
  fn(&b);
  return mp_decode(&b);
}

static void v_nil(mp_t* b) { msgpack_pack_nil(&b->pk); }
static void v_true(mp_t* b) { msgpack_pack_true(&b->pk); }
static void v_int(mp_t* b) { msgpack_pack_int(&b->pk, 7); }
static void v_neg2(mp_t* b) { msgpack_pack_int(&b->pk, -2); }
static void v_float(mp_t* b) { msgpack_pack_double(&b->pk, 1.5); }
static void v_str(mp_t* b) { mp_str(b, "s"); }
static void v_bin(mp_t* b) {
  msgpack_pack_bin(&b->pk, 2);
  msgpack_pack_bin_body(&b->pk, "ab", 2);
}
static void v_bin15(mp_t* b) {
  msgpack_pack_bin(&b->pk, 15);
  msgpack_pack_bin_body(&b->pk, "0123456789abcde", 15);
}
static void v_bin17(mp_t* b) {
  msgpack_pack_bin(&b->pk, 17);
  msgpack_pack_bin_body(&b->pk, "0123456789abcdefg", 17);
}
static void v_str16(mp_t* b) { mp_str(b, "0123456789abcdef"); }
static void v_arr(mp_t* b) {
  msgpack_pack_array(&b->pk, 1);
  mp_str(b, "x");
}
static void v_map(mp_t* b) {
  msgpack_pack_map(&b->pk, 1);
  mp_str(b, "x");
  mp_str(b, "y");
}
static void v_ext(mp_t* b) {
  msgpack_pack_ext(&b->pk, 1, 1);
  msgpack_pack_ext_body(&b->pk, "e", 1);
}
static void v_u64max(mp_t* b) { msgpack_pack_uint64(&b->pk, UINT64_MAX); }
static void v_i32over(mp_t* b) { msgpack_pack_int64(&b->pk, (int64_t)INT32_MAX + 1); }
static void v_nul_str(mp_t* b) { mp_strn(b, "a\0b", 3); }
static void v_bad_name(mp_t* b) { mp_str(b, "no/slash"); }
static void v_long_str(mp_t* b) {
  char* s = malloc(TXMQ_MSG_MAX_FIELD + 1);
  memset(s, 's', TXMQ_MSG_MAX_FIELD + 1);
  mp_strn(b, s, TXMQ_MSG_MAX_FIELD + 1);
  free(s);
}
static void v_long_name(mp_t* b) {
  char s[TXMQ_NAME_MAX + 1];
  memset(s, 'n', sizeof s);
  mp_strn(b, s, sizeof s);
}
static void v_props_int_value(mp_t* b) {
  msgpack_pack_map(&b->pk, 1);
  mp_str(b, "k");
  msgpack_pack_int(&b->pk, 1);
}
static void v_props_int_key(mp_t* b) {
  msgpack_pack_map(&b->pk, 1);
  msgpack_pack_int(&b->pk, 1);
  mp_str(b, "v");
}
static void v_props_empty_key(mp_t* b) {
  msgpack_pack_map(&b->pk, 1);
  mp_str(b, "");
  mp_str(b, "v");
}
static void v_props_dup(mp_t* b) {
  msgpack_pack_map(&b->pk, 2);
  mp_str(b, "k");
  mp_str(b, "1");
  mp_str(b, "k");
  mp_str(b, "2");
}
static void v_props_too_many(mp_t* b) {
  msgpack_pack_map(&b->pk, TXMQ_MSG_MAX_PROPS + 1);
  for (int i = 0; i <= TXMQ_MSG_MAX_PROPS; i++) {
    char k[16];
    snprintf(k, sizeof k, "k%d", i);
    mp_str(b, k);
    mp_str(b, "v");
  }
}
static void v_props_long_value(mp_t* b) {
  msgpack_pack_map(&b->pk, 1);
  mp_str(b, "k");
  v_long_str(b);
}
static void v_props_nul(mp_t* b) {
  msgpack_pack_map(&b->pk, 1);
  mp_str(b, "k");
  v_nul_str(b);
}
static void v_body_too_big(mp_t* b) {
  msgpack_pack_bin(&b->pk, TXMQ_MSG_MAX_BODY + 1);
  char* p = calloc(1, TXMQ_MSG_MAX_BODY + 1);
  msgpack_pack_bin_body(&b->pk, p, TXMQ_MSG_MAX_BODY + 1);
  free(p);
}

static void decode_wrong_types_for_each_key(void** state) {
  (void)state;
  struct {
    const char* key;
    value_fn fn;
  } bad[] = {
      {"id", v_str16},   {"id", v_bin15},   {"id", v_bin17},   {"id", v_int},
      {"id", v_nil},     {"topic", v_int},  {"topic", v_bin},  {"topic", v_nil},
      {"topic", v_arr},  {"topic", v_bad_name}, {"topic", v_long_name},
      {"topic", v_nul_str},
      {"qid", v_str},    {"qid", v_float},  {"qid", v_neg2},   {"qid", v_true},
      {"qid", v_i32over}, {"qid", v_u64max},
      {"qoff", v_str},   {"qoff", v_neg2},  {"qoff", v_u64max}, {"qoff", v_nil},
      {"tags", v_int},   {"tags", v_bin},   {"tags", v_nil},   {"tags", v_nul_str},
      {"tags", v_long_str},
      {"keys", v_int},   {"keys", v_arr},   {"keys", v_long_str}, {"keys", v_nul_str},
      {"props", v_arr},  {"props", v_str},  {"props", v_nil},  {"props", v_props_int_value},
      {"props", v_props_int_key}, {"props", v_props_empty_key}, {"props", v_props_dup},
      {"props", v_props_too_many}, {"props", v_props_long_value}, {"props", v_props_nul},
      {"body", v_int},   {"body", v_map},   {"body", v_nil},   {"body", v_ext},
      {"body", v_body_too_big},
      {"born", v_str},   {"born", v_float}, {"born", v_u64max}, {"born", v_bin},
      {"stored", v_str}, {"stored", v_neg2}, {"stored", v_arr}, {"stored", v_u64max},
  };
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    int rc = decode_with(bad[i].key, bad[i].fn);
    if (rc != TXMQ_EPROTO)
      fail_msg("case %zu (key %s): got %s, want EPROTO", i, bad[i].key,
               txmq_err_name(rc));
  }
  /* The right types are accepted, unknown keys of any type are ignored,
   * and a body may come as a str. */
  assert_int_equal(decode_with("qid", v_int), 0);
  assert_int_equal(decode_with("body", v_str), 0);
  assert_int_equal(decode_with("body", v_bin), 0);
  assert_int_equal(decode_with("future", v_map), 0);
  assert_int_equal(decode_with("future", v_ext), 0);
  assert_int_equal(decode_with("future", v_float), 0);
}

static void decode_duplicate_and_odd_keys(void** state) {
  (void)state;
  const char* keys[] = {"topic", "tags", "body", "born", "unknown"};
  for (size_t i = 0; i < sizeof keys / sizeof *keys; i++) {
    mp_t b;
    mp_init(&b);
    int extra = strcmp(keys[i], "topic") != 0;
    msgpack_pack_map(&b.pk, 2 + extra);
    if (extra) {
      mp_str(&b, "topic");
      mp_str(&b, "T");
    }
    for (int j = 0; j < 2; j++) {
      mp_str(&b, keys[i]);
      if (strcmp(keys[i], "born") == 0) msgpack_pack_int(&b.pk, 5);
      else if (strcmp(keys[i], "body") == 0) v_bin(&b);
      else mp_str(&b, "T");
    }
    assert_int_equal(mp_decode(&b), TXMQ_EPROTO);
  }
  /* A non-string key. */
  mp_t b;
  mp_init(&b);
  msgpack_pack_map(&b.pk, 2);
  mp_str(&b, "topic");
  mp_str(&b, "T");
  msgpack_pack_int(&b.pk, 1);
  mp_str(&b, "x");
  assert_int_equal(mp_decode(&b), TXMQ_EPROTO);
  /* Too many keys, even unknown ones. */
  mp_init(&b);
  msgpack_pack_map(&b.pk, 65);
  mp_str(&b, "topic");
  mp_str(&b, "T");
  for (int i = 0; i < 64; i++) {
    char k[16];
    snprintf(k, sizeof k, "u%d", i);
    mp_str(&b, k);
    msgpack_pack_nil(&b.pk);
  }
  assert_int_equal(mp_decode(&b), TXMQ_EPROTO);
  /* Deep nesting under an unknown key. */
  mp_init(&b);
  msgpack_pack_map(&b.pk, 2);
  mp_str(&b, "topic");
  mp_str(&b, "T");
  mp_str(&b, "deep");
  for (int i = 0; i < 40; i++) msgpack_pack_array(&b.pk, 1);
  msgpack_pack_nil(&b.pk);
  assert_int_equal(mp_decode(&b), TXMQ_EPROTO);
}

static void decode_huge_declared_lengths(void** state) {
  (void)state;
  /* Each declares far more than is there; none may allocate by the
   * declaration (ASan would abort on a multi-GB request) or crash. */
  const uint8_t cases[][12] = {
      {0xdd, 0xff, 0xff, 0xff, 0xff},                 /* array32 */
      {0xdf, 0xff, 0xff, 0xff, 0xff},                 /* map32 */
      {0xdb, 0xff, 0xff, 0xff, 0xff, 'a'},            /* str32 */
      {0xc6, 0xff, 0xff, 0xff, 0xff, 'a'},            /* bin32 */
      {0xc9, 0xff, 0xff, 0xff, 0xff, 0x01, 'a'},      /* ext32 */
      {0xdc, 0xff, 0xff, 0xc0},                       /* array16 */
      {0xde, 0xff, 0xff, 0xc0, 0xc0},                 /* map16 */
      {0x81, 0xa5, 't', 'o', 'p', 'i', 'c', 0xdd, 0x7f, 0xff, 0xff, 0xff},
      {0x82, 0xa1, 'x', 0xdf, 0x10, 0x00, 0x00, 0x00, 0xc0},
      {0x81, 0xa4, 'b', 'o', 'd', 'y', 0xc6, 0x7f, 0xff, 0xff, 0xff, 0x00},
  };
  const size_t lens[] = {5, 5, 6, 6, 7, 4, 5, 12, 9, 12};
  for (size_t i = 0; i < sizeof lens / sizeof *lens; i++) {
    uint8_t* p = malloc(lens[i]);
    memcpy(p, cases[i], lens[i]);
    assert_int_equal(decode_bytes(p, lens[i]), TXMQ_EPROTO);
    free(p);
  }
  /* Many small objects within the size but over the item budget. */
  size_t n = 100000;
  uint8_t* p = malloc(n + 16);
  size_t o = 0;
  p[o++] = 0x82;
  p[o++] = 0xa5;
  memcpy(p + o, "topic", 5);
  o += 5;
  p[o++] = 0xa1;
  p[o++] = 'T';
  p[o++] = 0xa1;
  p[o++] = 'z';
  p[o++] = 0xdd;
  p[o++] = 0;
  p[o++] = (uint8_t)(n >> 16);
  p[o++] = (uint8_t)(n >> 8);
  p[o++] = (uint8_t)n;
  memset(p + o, 0xc0, n);
  assert_int_equal(decode_bytes(p, o + n), TXMQ_EPROTO);
  free(p);
}

static void decode_random_mutations_never_crash(void** state) {
  (void)state;
  txmq_msg_t* m = full_msg();
  void* buf;
  size_t len;
  assert_int_equal(txmq_msg_encode(m, &buf, &len), 0);
  uint8_t* p = malloc(len);
  uint32_t x = 2463534242u;
  int ok = 0, proto = 0;
  for (int iter = 0; iter < 20000; iter++) {
    memcpy(p, buf, len);
    int flips = 1 + (int)(x % 4);
    for (int f = 0; f < flips; f++) {
      x ^= x << 13;
      x ^= x >> 17;
      x ^= x << 5;
      p[x % len] = (uint8_t)(x >> 8);
    }
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    size_t n = (x & 1) ? len : x % (len + 1);
    int rc = decode_bytes(p, n);
    if (rc == 0) ok++;
    else if (rc == TXMQ_EPROTO) proto++;
    else fail_msg("unexpected %s", txmq_err_name(rc));
  }
  assert_int_equal(ok + proto, 20000);
  assert_true(proto > 0);
  free(p);
  free(buf);
  txmq_msg_free(m);
}

/* txmq__msg_peek_object() accepts exactly what txmq__msg_from_object()
 * builds, and gives the same queue id and tags: checked on random
 * mutations of a small message (small body, so that most flips hit the
 * structure, keys, names and properties) and on a few chosen maps. */
static void peek_object_agrees_with_from_object(void** state) {
  (void)state;
  txmq_msg_t* m = txmq_msg_new();
  assert_int_equal(txmq_msg_set_topic(m, "orders"), 0);
  assert_int_equal(txmq_msg_set_tags(m, "TagA"), 0);
  assert_int_equal(txmq_msg_set_keys(m, "k1"), 0);
  assert_int_equal(txmq_msg_set_body(m, "body", 4), 0);
  assert_int_equal(txmq_msg_prop_set(m, "a", "1"), 0);
  assert_int_equal(txmq_msg_prop_set(m, "b", "2"), 0);
  txmq_msg_set_queue_id(m, 3);
  void* buf;
  size_t len;
  assert_int_equal(txmq_msg_encode(m, &buf, &len), 0);
  txmq_msg_free(m);
  uint8_t* p = malloc(len);
  uint32_t x = 88172645u;
  int ok = 0, bad = 0;
  for (int iter = 0; iter < 20000; iter++) {
    memcpy(p, buf, len);
    int flips = iter == 0 ? 0 : 1 + (int)(x % 3);
    for (int f = 0; f < flips; f++) {
      x ^= x << 13;
      x ^= x >> 17;
      x ^= x << 5;
      p[x % len] = (uint8_t)(x >> 8);
    }
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    if (txmq__mp_unpack(p, len, 8, 4096, &u) != 0) {
      msgpack_unpacked_destroy(&u);
      continue;
    }
    txmq_msg_t* built = NULL;
    int rc1 = txmq__msg_from_object(&u.data, &built);
    int32_t q = -7;
    const char* tags = NULL;
    size_t tlen = 0;
    int rc2 = txmq__msg_peek_object(&u.data, &q, &tags, &tlen);
    if (rc1 != rc2)
      fail_msg("iteration %d: from_object %s, peek %s", iter,
               txmq_err_name(rc1), txmq_err_name(rc2));
    if (rc1 == 0) {
      ok++;
      assert_int_equal(q, txmq_msg_queue_id(built));
      const char* bt = txmq_msg_tags(built);
      if (bt == NULL) {
        assert_null(tags);
      } else {
        assert_non_null(tags);
        assert_int_equal(tlen, strlen(bt));
        assert_memory_equal(tags, bt, tlen);
      }
      txmq_msg_free(built);
    } else {
      assert_int_equal(rc1, TXMQ_EPROTO);
      bad++;
    }
    msgpack_unpacked_destroy(&u);
  }
  assert_true(ok > 0);
  assert_true(bad > 0);
  free(p);
  free(buf);

  /* Chosen maps: duplicate property keys, no topic, a bad topic name, no
   * qid (queue id -1) and no tags. */
  static const char* const cases[] = {
      "\x82\xa5topic\xa1t\xa5props\x82\xa1k\xa1v\xa1k\xa1w",
      "\x81\xa4tags\xa1x",
      "\x81\xa5topic\xa2.t",
      "\x81\xa5topic\xa1t",
  };
  static const int expect[] = {TXMQ_EPROTO, TXMQ_EPROTO, TXMQ_EPROTO, 0};
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    assert_int_equal(
        txmq__mp_unpack(cases[i], strlen(cases[i]), 8, 4096, &u), 0);
    txmq_msg_t* built = NULL;
    int32_t q = -7;
    const char* tags = "x";
    assert_int_equal(txmq__msg_from_object(&u.data, &built), expect[i]);
    assert_int_equal(txmq__msg_peek_object(&u.data, &q, &tags, NULL),
                     expect[i]);
    if (expect[i] == 0) {
      assert_int_equal(q, -1);
      assert_null(tags);
      txmq_msg_free(built);
    }
    msgpack_unpacked_destroy(&u);
  }
}

static void ids_strictly_increase_and_are_unique(void** state) {
  (void)state;
  txmq__idgen_t g, h;
  txmq__idgen_init(&g);
  txmq__idgen_init(&h);
  enum { N = 100000 };
  uint8_t(*ids)[16] = malloc(sizeof(uint8_t[16]) * N);
  int64_t now = txmq__now_ms();
  for (int i = 0; i < N; i++) {
    /* The clock stands still, runs and steps back: ids still grow. */
    int64_t t = now + (i / 1000) - ((i % 5000) == 4999 ? 100 : 0);
    txmq__idgen_next(&g, t, ids[i]);
    if (i > 0 && memcmp(ids[i - 1], ids[i], 16) >= 0)
      fail_msg("id %d not greater than id %d", i, i - 1);
  }
  /* The time part is the clock's ms, big-endian. */
  uint64_t ms = 0;
  for (int i = 0; i < 6; i++) ms = ms << 8 | ids[0][i];
  assert_int_equal(ms, (uint64_t)now);
  /* Another generator at the same ms gives different ids. */
  uint8_t other[16];
  txmq__idgen_next(&h, now, other);
  assert_memory_not_equal(other, ids[0], 16);
  assert_memory_not_equal(other + 6, ids[0] + 6, 4);
  free(ids);

  /* The counter carries into the time part instead of wrapping. */
  g.seq = (UINT64_C(1) << 48) - 2;
  uint8_t a[16], b[16], c[16];
  txmq__idgen_next(&g, now, a);
  txmq__idgen_next(&g, now, b);
  txmq__idgen_next(&g, now, c);
  assert_true(memcmp(a, b, 16) < 0);
  assert_true(memcmp(b, c, 16) < 0);
}

static void mp_check_limits(void** state) {
  (void)state;
  /* Depth: n nested arrays around nil. */
  uint8_t deep[40];
  for (int i = 0; i < 30; i++) deep[i] = 0x91;
  deep[30] = 0xc0;
  size_t used;
  assert_int_equal(txmq__mp_check(deep, 31, 24, 1000, &used), TXMQ_EPROTO);
  assert_int_equal(txmq__mp_check(deep + 10, 21, 24, 1000, &used), 0);
  assert_int_equal(used, 21);
  assert_int_equal(txmq__mp_check(deep + 10, 21, 19, 1000, &used), TXMQ_EPROTO);
  assert_int_equal(txmq__mp_check(deep + 10, 21, 24, 20, &used), TXMQ_EPROTO);
  /* An object followed by more: check reports the first one's size, unpack
   * refuses the trailing bytes. */
  const uint8_t two[] = {0x01, 0x02};
  assert_int_equal(txmq__mp_check(two, 2, 4, 10, &used), 0);
  assert_int_equal(used, 1);
  msgpack_unpacked u;
  msgpack_unpacked_init(&u);
  assert_int_equal(txmq__mp_unpack(two, 2, 4, 10, &u), TXMQ_EPROTO);
  assert_int_equal(txmq__mp_unpack(two, 1, 4, 10, &u), 0);
  assert_int_equal(u.data.type, MSGPACK_OBJECT_POSITIVE_INTEGER);
  msgpack_unpacked_destroy(&u);
}

/* ---- the one-pass decoder against msgpack-c ---- */

static uint32_t xs32(uint32_t* x) {
  *x ^= *x << 13;
  *x ^= *x >> 17;
  *x ^= *x << 5;
  return *x;
}

/* Packs a random object using every encoding msgpack-c writes. */
static void pack_random(msgpack_packer* pk, uint32_t* x, int depth) {
  static const char text[300] = "abcdefghijklmnopqrstuvwxyz";
  uint32_t r = xs32(x);
  int kind = (int)(r % (depth < 5 ? 16 : 12));
  switch (kind) {
    case 0: msgpack_pack_nil(pk); break;
    case 1: (r & 16) ? msgpack_pack_true(pk) : msgpack_pack_false(pk); break;
    case 2: {
      uint64_t v = xs32(x);
      v = v << (r % 33);
      switch ((r >> 8) % 5) {
        case 0: msgpack_pack_uint8(pk, (uint8_t)v); break;
        case 1: msgpack_pack_uint16(pk, (uint16_t)v); break;
        case 2: msgpack_pack_uint32(pk, (uint32_t)v); break;
        case 3: msgpack_pack_uint64(pk, v); break;
        default: msgpack_pack_fix_uint8(pk, (uint8_t)v); break;
      }
      break;
    }
    case 3: {
      int64_t v = (int64_t)(int32_t)xs32(x) * (int64_t)(1 + r % 1000);
      switch ((r >> 8) % 6) {
        case 0: msgpack_pack_int8(pk, (int8_t)v); break;
        case 1: msgpack_pack_int16(pk, (int16_t)v); break;
        case 2: msgpack_pack_int32(pk, (int32_t)v); break;
        case 3: msgpack_pack_int64(pk, v); break;
        case 4: msgpack_pack_fix_int64(pk, v); break;
        default: msgpack_pack_fix_int8(pk, (int8_t)v); break;
      }
      break;
    }
    case 4: msgpack_pack_float(pk, (float)(int32_t)xs32(x) / 7.0f); break;
    case 5: msgpack_pack_double(pk, (double)(int32_t)xs32(x) / 3.0); break;
    case 6:
    case 7: {
      static const size_t lens[] = {0, 1, 31, 32, 255, 256, 299};
      size_t n = lens[(r >> 8) % 7];
      msgpack_pack_str_with_body(pk, text, n);
      break;
    }
    case 8: {
      size_t n = (r >> 8) % 300;
      msgpack_pack_bin_with_body(pk, text, n);
      break;
    }
    case 9:
    case 10: {
      static const size_t lens[] = {0, 1, 2, 3, 4, 8, 16, 17, 255, 256};
      size_t n = lens[(r >> 8) % 10];
      msgpack_pack_ext_with_body(pk, text, n, (int8_t)(r >> 16));
      break;
    }
    case 11: msgpack_pack_str_with_body(pk, "k", 1); break;
    case 12:
    case 13: {
      uint32_t n = (r >> 8) % 5 == 0 ? 16 + (r >> 12) % 4 : (r >> 8) % 4;
      msgpack_pack_array(pk, n);
      for (uint32_t i = 0; i < n; i++) pack_random(pk, x, depth + 1);
      break;
    }
    default: {
      uint32_t n = (r >> 8) % 5 == 0 ? 16 + (r >> 12) % 3 : (r >> 8) % 4;
      msgpack_pack_map(pk, n);
      for (uint32_t i = 0; i < n; i++) {
        pack_random(pk, x, depth + 1);
        pack_random(pk, x, depth + 1);
      }
      break;
    }
  }
}

/* Decodes p both ways with the given limits and fails unless both refuse
 * it or both give the same object; returns 1 if it was accepted. */
static int decode_both(const uint8_t* p, size_t n, unsigned depth,
                       size_t items, msgpack_zone* z) {
  msgpack_unpacked a, b;
  msgpack_unpacked_init(&a);
  msgpack_unpacked_init(&b);
  int ra = txmq__mp_unpack(p, n, depth, items, &a);
  int rb = mpref_unpack(p, n, depth, items, &b);
  msgpack_object oz;
  int rz = txmq__mp_unpack_zone(p, n, depth, items, z, &oz);
  if ((ra == 0) != (rb == 0) || (rz == 0) != (rb == 0))
    fail_msg("%zu bytes, depth %u, items %zu: decoder %s, zone %s, "
             "msgpack-c %s", n, depth, items, txmq_err_name(ra),
             txmq_err_name(rz), txmq_err_name(rb));
  if (ra != 0) assert_int_equal(ra, TXMQ_EPROTO);
  if (ra == 0) {
    assert_true(mpref_same(&a.data, &b.data));
    assert_true(mpref_same(&oz, &b.data));
  }
  msgpack_zone_clear(z);
  msgpack_unpacked_destroy(&a);
  msgpack_unpacked_destroy(&b);
  return ra == 0;
}

static void mp_decode_agrees_with_msgpack_c(void** state) {
  (void)state;
  msgpack_zone z;
  assert_true(msgpack_zone_init(&z, 1024));
  uint32_t x = 88172645u;
  int accepted = 0, refused = 0;
  uint8_t* m = malloc(1 << 20);
  assert_non_null(m);
  for (int t = 0; t < 300; t++) {
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    pack_random(&pk, &x, 0);
    const uint8_t* p = (const uint8_t*)sb.data;
    size_t n = sb.size;
    assert_true(n <= (1 << 20));
    /* As packed, within generous limits, must decode. */
    assert_true(decode_both(p, n, TXMQ__MP_MAX_DEPTH, n + 1, &z));
    /* Every limit and every truncation. */
    for (unsigned d = 0; d <= 6; d++) decode_both(p, n, d, n + 1, &z);
    for (size_t i = 0; i < 40; i++) decode_both(p, n, 24, i, &z);
    for (size_t cut = 0; cut < n && cut < 400; cut++)
      decode_both(p, cut, 24, n + 1, &z);
    /* Random mutations: flips, and a byte appended now and then. */
    for (int k = 0; k < 300; k++) {
      memcpy(m, p, n);
      size_t len = n;
      int flips = 1 + (int)(xs32(&x) % 4);
      for (int f = 0; f < flips; f++) {
        uint32_t r = xs32(&x);
        m[r % len] = (uint8_t)(r >> 8);
      }
      if (xs32(&x) % 8 == 0) m[len++] = (uint8_t)xs32(&x);
      if (decode_both(m, len, 24, 65536, &z))
        accepted++;
      else
        refused++;
    }
    msgpack_sbuffer_destroy(&sb);
  }
  /* A few the random trees do not make: nesting past the clamp of 24,
   * 0xc1, declared counts beyond the input, the empty input. */
  uint8_t deep[40];
  memset(deep, 0x91, 30);
  deep[30] = 0xc0;
  for (size_t s = 0; s < 31; s++) decode_both(deep + s, 31 - s, 30, 100, &z);
  const uint8_t odd[][6] = {{0xc1}, {0xdd, 0xff, 0xff, 0xff, 0xff},
                            {0xdf, 0, 0, 0, 3, 1}, {0xc6, 0, 0, 0, 9},
                            {0xc9, 0, 0, 0, 0, 1}, {0xd8, 1}};
  for (size_t i = 0; i < sizeof odd / sizeof odd[0]; i++)
    for (size_t n = 0; n <= 6; n++) decode_both(odd[i], n, 24, 100, &z);
  assert_true(accepted > 1000);
  assert_true(refused > 1000);
  free(m);
  msgpack_zone_destroy(&z);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(msg_defaults),
      cmocka_unit_test(msg_roundtrip_every_field),
      cmocka_unit_test(msg_clone_is_deep),
      cmocka_unit_test(msg_one_block_copies_take_setters),
      cmocka_unit_test(msg_setters_and_limits),
      cmocka_unit_test(msg_name_validation),
      cmocka_unit_test(msg_id_string_and_parse),
      cmocka_unit_test(decode_truncated_at_every_length),
      cmocka_unit_test(decode_trailing_bytes_and_non_maps),
      cmocka_unit_test(decode_wrong_types_for_each_key),
      cmocka_unit_test(decode_duplicate_and_odd_keys),
      cmocka_unit_test(decode_huge_declared_lengths),
      cmocka_unit_test(decode_random_mutations_never_crash),
      cmocka_unit_test(peek_object_agrees_with_from_object),
      cmocka_unit_test(ids_strictly_increase_and_are_unique),
      cmocka_unit_test(mp_check_limits),
      cmocka_unit_test(mp_decode_agrees_with_msgpack_c),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
