/*
 * gen_seeds.c - writes the seed corpus of the fuzz targets:
 *
 *   <build>/fuzz/fuzz_seeds tests/fuzz/corpus
 *
 * A handful of small, valid inputs per target (tests/fuzz/corpus/<target>/),
 * built with txmq's own encoders where it has them (messages, half and
 * event records, log segments and records) and by hand from
 * core/net/PROTOCOL.md for frames. The output is deterministic (fixed ids
 * and times), so running it again changes nothing unless the formats
 * changed. Each input starts with the target's flags byte (see the comment
 * at the top of each fuzz_<name>.c).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fuzz_util.h"
#include "log/log_int.h"
#include "store/store_int.h"
#include "tx/tx_int.h"
#include "txmq/error.h"
#include "txmq/runtime.h"
#include "txmq/script.h"

static const char* g_out;

/* ---- output ---- */

typedef struct {
  msgpack_sbuffer sb;
  msgpack_packer pk;
} buf_t;

static void buf_init(buf_t* b) {
  msgpack_sbuffer_init(&b->sb);
  msgpack_packer_init(&b->pk, &b->sb, msgpack_sbuffer_write);
}
static void buf_free(buf_t* b) { msgpack_sbuffer_destroy(&b->sb); }
static void buf_put(buf_t* b, const void* p, size_t n) {
  if (n > 0) msgpack_sbuffer_write(&b->sb, p, n);
}
static void buf_byte(buf_t* b, uint8_t v) { buf_put(b, &v, 1); }

static void seed(const char* target, const char* name, const buf_t* b) {
  char* dir = fz_path(g_out, target);
  if (mkdir(dir, 0755) != 0 && errno != EEXIST) FZ_CHECK(!"mkdir");
  char* path = fz_path(dir, name);
  fz_write_file(path, b->sb.data, b->sb.size);
  printf("%s (%zu bytes)\n", path, b->sb.size);
  free(path);
  free(dir);
}

/* ---- msgpack shorthands ---- */

static void s(msgpack_packer* pk, const char* v) {
  msgpack_pack_str(pk, strlen(v));
  msgpack_pack_str_body(pk, v, strlen(v));
}
static void kv_s(msgpack_packer* pk, const char* k, const char* v) {
  s(pk, k);
  s(pk, v);
}
static void kv_i(msgpack_packer* pk, const char* k, int64_t v) {
  s(pk, k);
  msgpack_pack_int64(pk, v);
}
static void kv_bin(msgpack_packer* pk, const char* k, const void* p, size_t n) {
  s(pk, k);
  msgpack_pack_bin(pk, n);
  msgpack_pack_bin_body(pk, p, n);
}

/* Appends frame's bytes to out as one length-prefixed frame. */
static void frame(buf_t* out, buf_t* frame) {
  uint32_t n = (uint32_t)frame->sb.size;
  uint8_t len[4] = {(uint8_t)(n >> 24), (uint8_t)(n >> 16), (uint8_t)(n >> 8),
                    (uint8_t)n};
  buf_put(out, len, 4);
  buf_put(out, frame->sb.data, frame->sb.size);
  buf_free(frame);
}

static const uint8_t ID_A[16] = {0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6,
                                 0xa7, 0xa8, 0xa9, 0xaa, 0xab, 0xac,
                                 0xad, 0xae, 0xaf, 0xb0};
static const int64_t T0 = 1700000000000;

static void id_n(uint8_t out[16], uint8_t n) {
  memcpy(out, ID_A, 16);
  out[15] = n;
}

static txmq_msg_t* msg(const char* topic, const char* body, int qid,
                       uint8_t id) {
  txmq_msg_t* m = txmq_msg_new();
  FZ_CHECK(m != NULL);
  FZ_CHECK(txmq_msg_set_topic(m, topic) == 0);
  FZ_CHECK(txmq_msg_set_body(m, body, strlen(body)) == 0);
  FZ_CHECK(txmq_msg_set_tags(m, "paid") == 0);
  FZ_CHECK(txmq_msg_set_keys(m, "order-1") == 0);
  FZ_CHECK(txmq_msg_prop_set(m, "region", "eu") == 0);
  txmq_msg_set_born_ms(m, T0);
  if (id != 0) {
    uint8_t mid[16];
    id_n(mid, id);
    txmq__msg_set_id(m, mid);
    txmq__msg_set_store_ms(m, T0 + 1);
  }
  if (qid >= 0) txmq_msg_set_queue_id(m, qid);
  return m;
}

/* A message as a wire map (PROTOCOL.md section 4), what a client sends. */
static void wire_msg(msgpack_packer* pk, const char* topic, const char* body) {
  msgpack_pack_map(pk, 5);
  kv_s(pk, "topic", topic);
  kv_s(pk, "tags", "paid");
  kv_s(pk, "keys", "order-1");
  s(pk, "props");
  msgpack_pack_map(pk, 1);
  kv_s(pk, "region", "eu");
  kv_bin(pk, "body", body, strlen(body));
}

/* ---- codec ---- */

static void seeds_codec(void) {
  buf_t b;
  buf_init(&b);
  buf_byte(&b, 0);
  msgpack_pack_map(&b.pk, 6);
  kv_s(&b.pk, "topic", "orders");
  kv_s(&b.pk, "tags", "paid");
  kv_s(&b.pk, "keys", "order-1 order-2");
  kv_bin(&b.pk, "body", "hello", 5);
  s(&b.pk, "properties");
  msgpack_pack_map(&b.pk, 1);
  kv_s(&b.pk, "region", "eu");
  kv_i(&b.pk, "born_at", T0);
  seed("codec", "msg_table", &b);
  buf_free(&b);

  buf_init(&b);
  buf_byte(&b, 0);
  msgpack_pack_array(&b.pk, 18);
  msgpack_pack_nil(&b.pk);
  msgpack_pack_true(&b.pk);
  msgpack_pack_false(&b.pk);
  msgpack_pack_int64(&b.pk, 0);
  msgpack_pack_int64(&b.pk, -1);
  msgpack_pack_int64(&b.pk, 128);
  msgpack_pack_int64(&b.pk, -129);
  msgpack_pack_int64(&b.pk, INT64_MIN);
  msgpack_pack_uint64(&b.pk, UINT64_MAX);
  msgpack_pack_double(&b.pk, 1.5);
  msgpack_pack_float(&b.pk, 0.25f);
  s(&b.pk, "text");
  msgpack_pack_bin(&b.pk, 2);
  msgpack_pack_bin_body(&b.pk, "\0\1", 2);
  msgpack_pack_array(&b.pk, 0);
  msgpack_pack_map(&b.pk, 0);
  msgpack_pack_map(&b.pk, 2);
  msgpack_pack_int64(&b.pk, 1);
  s(&b.pk, "a");
  msgpack_pack_int64(&b.pk, 2);
  s(&b.pk, "b");
  msgpack_pack_map(&b.pk, 2);
  msgpack_pack_int64(&b.pk, -1);
  s(&b.pk, "negative key");
  s(&b.pk, "nil value");
  msgpack_pack_nil(&b.pk);
  msgpack_pack_array(&b.pk, 2);
  msgpack_pack_nil(&b.pk);
  msgpack_pack_nil(&b.pk);
  seed("codec", "every_type", &b);
  buf_free(&b);

  /* 32 levels: the deepest the codec takes. */
  buf_init(&b);
  buf_byte(&b, 0);
  for (int i = 0; i < 31; i++) msgpack_pack_array(&b.pk, 1);
  msgpack_pack_map(&b.pk, 1);
  kv_i(&b.pk, "deep", 32);
  seed("codec", "deepest", &b);
  buf_free(&b);

  /* Many small tables under the tight memory cap. */
  buf_init(&b);
  buf_byte(&b, 1);
  msgpack_pack_array(&b.pk, 300);
  for (int i = 0; i < 300; i++) {
    msgpack_pack_map(&b.pk, 1);
    kv_i(&b.pk, "i", i);
  }
  seed("codec", "tight_many_tables", &b);
  buf_free(&b);
}

/* ---- log ---- */

/* One segment: header, then records of the given payload lengths (bytes
 * from a counter), then tail garbage. Returns its data length. */
static size_t segment(buf_t* out, uint64_t base, uint32_t id,
                      const uint32_t* lens, size_t n, const uint8_t* tail,
                      size_t tail_len) {
  uint8_t h[TXMQ_LOG_SEGMENT_HEADER_SIZE];
  txmq__log_seg_header(h, base, id);
  buf_put(out, h, sizeof h);
  size_t data = 0;
  uint8_t payload[64];
  for (size_t i = 0; i < n; i++) {
    for (uint32_t k = 0; k < lens[i]; k++) payload[k] = (uint8_t)(i * 31 + k);
    uint8_t r[TXMQ_LOG_RECORD_HEADER_SIZE + 64];
    txmq_log_rec_t rec = {(uint8_t)(1 + i), payload, lens[i]};
    txmq__log_rec_encode(r, base + data, &rec);
    buf_put(out, r, TXMQ_LOG_RECORD_HEADER_SIZE + lens[i]);
    data += TXMQ_LOG_RECORD_HEADER_SIZE + lens[i];
  }
  buf_put(out, tail, tail_len);
  return data + tail_len;
}

static void seeds_log(void) {
  static const uint32_t a[] = {3, 0, 10};
  static const uint32_t b2[] = {5, 1};
  static const struct {
    uint8_t flags;
    const char* name;
  } modes[] = {{0x00, "good_strict"},
               {0x02, "good_truncate"},
               {0x03, "good_read_only"},
               {0x0c, "good_fixed_append"}};
  for (size_t m = 0; m < sizeof modes / sizeof modes[0]; m++) {
    buf_t b;
    buf_init(&b);
    buf_byte(&b, modes[m].flags);
    size_t d0 = segment(&b, 0, 0, a, 3, NULL, 0);
    segment(&b, d0, 1, b2, 2, NULL, 0);
    seed("log", modes[m].name, &b);
    buf_free(&b);
  }
  /* A torn last record, cut by a read-write open. */
  static const uint8_t torn[] = {0x11, 0x22, 0x33, 0x44, 9, 0, 0, 0, 1, 0x20};
  buf_t b;
  buf_init(&b);
  buf_byte(&b, 0x08);
  segment(&b, 0, 0, a, 3, torn, sizeof torn);
  seed("log", "torn_tail_append", &b);
  buf_free(&b);
  /* A damaged middle record, cut in TRUNCATE mode. */
  buf_init(&b);
  buf_byte(&b, 0x02);
  segment(&b, 0, 0, a, 3, NULL, 0);
  b.sb.data[1 + TXMQ_LOG_SEGMENT_HEADER_SIZE + TXMQ_LOG_RECORD_HEADER_SIZE] ^= 1;
  seed("log", "bitflip_truncate", &b);
  buf_free(&b);
  /* A segment created but its header never written. */
  buf_init(&b);
  buf_byte(&b, 0x00);
  size_t d0 = segment(&b, 0, 0, a, 3, NULL, 0);
  uint8_t h[TXMQ_LOG_SEGMENT_HEADER_SIZE];
  txmq__log_seg_header(h, d0, 1);
  buf_put(&b, h, 12);
  seed("log", "torn_creation", &b);
  buf_free(&b);
}

/* ---- record ---- */

/* A record of the fuzz_record input: type, u16 length, payload. */
static void rec(buf_t* out, uint8_t type, const void* p, size_t n,
                uint64_t* pos) {
  FZ_CHECK(n <= 0xffff);
  buf_byte(out, type);
  buf_byte(out, (uint8_t)n);
  buf_byte(out, (uint8_t)(n >> 8));
  buf_put(out, p, n);
  if (type != 0 && pos != NULL) *pos += TXMQ_LOG_RECORD_HEADER_SIZE + n;
}

static void rec_event(buf_t* out, const uint8_t* id, txmq__ev_t ev,
                      txmq_tx_source_t src, uint32_t count, uint64_t prev,
                      uint64_t* pos) {
  txmq__event_t e;
  memset(&e, 0, sizeof e);
  memcpy(e.id, id, 16);
  e.ev = ev;
  e.src = src;
  e.who = "producer-1";
  e.who_len = 10;
  e.count = count;
  e.at = T0 + 10;
  e.prev = prev;
  msgpack_sbuffer sb;
  msgpack_sbuffer_init(&sb);
  FZ_CHECK(txmq__event_encode(&sb, &e) == 0);
  rec(out, TXMQ_REC_TX_EVENT, sb.data, sb.size, pos);
  msgpack_sbuffer_destroy(&sb);
}

/* A half record of n messages; returns its position. */
static uint64_t rec_half(buf_t* out, uint8_t idn, size_t n, uint64_t* pos) {
  uint8_t id[16];
  id_n(id, idn);
  txmq_msg_t* m[2];
  m[0] = msg("orders", "paid order", 0, (uint8_t)(idn * 2));
  m[1] = msg("points", "add points", 1, (uint8_t)(idn * 2 + 1));
  msgpack_sbuffer sb;
  msgpack_sbuffer_init(&sb);
  FZ_CHECK(txmq__half_encode(&sb, id, "g", "producer-1", 0, T0, m, n) == 0);
  uint64_t at = *pos;
  rec(out, TXMQ_REC_TX_HALF, sb.data, sb.size, pos);
  msgpack_sbuffer_destroy(&sb);
  txmq_msg_free(m[0]);
  txmq_msg_free(m[1]);
  return at;
}


/* A checkpoint's map (the target adds header and crc): applied and
 * replay_from 0 .. applied, the snapshot key when snapshot >= 0, no
 * topics, and consumer group cg's offset on orders/0. */
static void pk_ckpt(buf_t* c, int64_t applied, int64_t snapshot,
                    int64_t offset) {
  msgpack_pack_map(&c->pk, snapshot >= 0 ? 6 : 5);
  kv_i(&c->pk, "v", 1);
  kv_i(&c->pk, "applied", applied);
  kv_i(&c->pk, "replay_from", 0);
  if (snapshot >= 0) kv_i(&c->pk, "snapshot", snapshot);
  s(&c->pk, "topics");
  msgpack_pack_array(&c->pk, 0);
  s(&c->pk, "offsets");
  msgpack_pack_array(&c->pk, 1);
  msgpack_pack_array(&c->pk, 4);
  s(&c->pk, "cg");
  s(&c->pk, "orders");
  msgpack_pack_int64(&c->pk, 0);
  msgpack_pack_int64(&c->pk, offset);
}

static void records(buf_t* b, int ckpt) {
  uint64_t pos = 0;
  /* A topic, and a plain message on it. */
  buf_t t;
  buf_init(&t);
  msgpack_pack_array(&t.pk, 2);
  s(&t.pk, "orders");
  msgpack_pack_int64(&t.pk, 2);
  rec(b, TXMQ_REC_TOPIC, t.sb.data, t.sb.size, &pos);
  buf_free(&t);
  txmq_msg_t* m = msg("orders", "plain", 1, 1);
  void* enc;
  size_t len;
  FZ_CHECK(txmq_msg_encode(m, &enc, &len) == 0);
  rec(b, TXMQ_REC_MSG, enc, len, &pos);
  free(enc);
  txmq_msg_free(m);
  /* Committed, pending after a check, parked, parked and resumed, rolled
   * back. */
  uint8_t id[16];
  uint64_t h = rec_half(b, 0x10, 2, &pos);
  id_n(id, 0x10);
  rec_event(b, id, TXMQ__EV_COMMIT, TXMQ_TX_SRC_PRODUCER, 0, h, &pos);
  h = rec_half(b, 0x20, 1, &pos);
  id_n(id, 0x20);
  rec_event(b, id, TXMQ__EV_CHECK, TXMQ_TX_SRC_TIMEOUT, 1, h, &pos);
  h = rec_half(b, 0x30, 1, &pos);
  id_n(id, 0x30);
  rec_event(b, id, TXMQ__EV_PARK, TXMQ_TX_SRC_MAX_CHECKS, 15, h, &pos);
  h = rec_half(b, 0x40, 2, &pos);
  id_n(id, 0x40);
  uint64_t p = pos;
  rec_event(b, id, TXMQ__EV_PARK, TXMQ_TX_SRC_MAX_CHECKS, 15, h, &pos);
  rec_event(b, id, TXMQ__EV_RESUME, TXMQ_TX_SRC_OPERATOR, 0, p, &pos);
  h = rec_half(b, 0x50, 1, &pos);
  id_n(id, 0x50);
  rec_event(b, id, TXMQ__EV_ROLLBACK, TXMQ_TX_SRC_CHECK, 2, h, &pos);
  if (ckpt) {
    /* A checkpoint (its map; the target adds header and crc) that has
     * applied nothing but knows a consumer group's offset. */
    buf_t c;
    buf_init(&c);
    pk_ckpt(&c, 0, -1, 1);
    rec(b, 0, c.sb.data, c.sb.size, NULL);
    buf_free(&c);
  }
}

/* ---- record: the engine's snapshot ---- */

/* The clocks fuzz_record gives its runtimes, so that the due times in a
 * captured snapshot mean the same there. */
static void on_rt_closed(txmq_runtime_t* rt, void* arg) {
  (void)rt;
  *(int*)arg = 1;
}

/* The engine's snapshot payload, as txmq writes it beside a checkpoint, of
 * a runtime that replayed recs (fuzz_record records, none of type 0) and
 * nothing else: taken at the end of their log. */
static void capture_snapshot(const buf_t* recs, void** payload, size_t* len) {
  buf_t seg;
  buf_init(&seg);
  uint8_t h[TXMQ_LOG_SEGMENT_HEADER_SIZE];
  txmq__log_seg_header(h, 0, 0);
  buf_put(&seg, h, sizeof h);
  const uint8_t* p = (const uint8_t*)recs->sb.data;
  size_t off = 0;
  uint64_t end = 0;
  while (off < recs->sb.size) {
    FZ_CHECK(off + 3 <= recs->sb.size && p[off] != 0);
    uint32_t n = (uint32_t)p[off + 1] | (uint32_t)p[off + 2] << 8;
    FZ_CHECK(n <= recs->sb.size - off - 3);
    uint8_t* r = malloc(TXMQ_LOG_RECORD_HEADER_SIZE + (size_t)n);
    FZ_CHECK(r != NULL);
    txmq_log_rec_t rec = {p[off], p + off + 3, n};
    txmq__log_rec_encode(r, end, &rec);
    buf_put(&seg, r, TXMQ_LOG_RECORD_HEADER_SIZE + (size_t)n);
    free(r);
    end += TXMQ_LOG_RECORD_HEADER_SIZE + n;
    off += 3 + n;
  }
  char* root = fz_tmpdir("seeds");
  char* data = fz_path(root, "data");
  char* logdir = fz_path(data, "log");
  char* scripts = fz_path(root, "scripts");
  char* path = fz_path(logdir, "00000000000000000000.log");
  FZ_CHECK(mkdir(data, 0755) == 0 && mkdir(logdir, 0755) == 0 &&
           mkdir(scripts, 0755) == 0);
  fz_write_file(path, seg.sb.data, seg.sb.size);
  buf_free(&seg);

  uv_loop_t loop;
  FZ_CHECK(uv_loop_init(&loop) == 0);
  txmq_runtime_t* rt = fz_runtime_fixed(&loop, data, scripts);
  txmq_tx_t* tx = txmq_runtime_tx(rt);
  FZ_CHECK(txmq_runtime_open(rt) == 0);
  FZ_CHECK(txmq__tx_snapshot(tx, end, payload, len) == 0);
  int closed = 0;
  FZ_CHECK(txmq_runtime_close(rt, on_rt_closed, &closed) == 0);
  FZ_CHECK(fz_run_until(&loop, &closed, 60000));
  txmq_runtime_free(rt);
  fz_loop_close(&loop);
  fz_rmrf(root);
  free(path);
  free(scripts);
  free(logdir);
  free(data);
  free(root);
}

/* Where the chain of each transaction of snap_records ends. */
typedef struct {
  uint64_t checked, parked, two, decided;
} chains_t;

/* The records before the snapshot: a transaction pending after a counted
 * check, two parked ones (one of two messages), a pending one of two
 * messages and a rolled back one (the snapshot keeps it as decided). None
 * of the store's own records: the checkpoint that names the snapshot says
 * that no topic is indexed. */
static void snap_records(buf_t* b, uint64_t* pos, chains_t* c) {
  uint8_t id[16];
  uint64_t h = rec_half(b, 0x21, 1, pos);
  id_n(id, 0x21);
  c->checked = *pos;
  rec_event(b, id, TXMQ__EV_CHECK, TXMQ_TX_SRC_TIMEOUT, 1, h, pos);
  h = rec_half(b, 0x31, 1, pos);
  id_n(id, 0x31);
  c->parked = *pos;
  rec_event(b, id, TXMQ__EV_PARK, TXMQ_TX_SRC_MAX_CHECKS, 15, h, pos);
  h = rec_half(b, 0x35, 2, pos);
  id_n(id, 0x35);
  rec_event(b, id, TXMQ__EV_PARK, TXMQ_TX_SRC_MAX_CHECKS, 15, h, pos);
  c->two = rec_half(b, 0x41, 2, pos);
  h = rec_half(b, 0x51, 1, pos);
  id_n(id, 0x51);
  c->decided = *pos;
  rec_event(b, id, TXMQ__EV_ROLLBACK, TXMQ_TX_SRC_PRODUCER, 0, h, pos);
}

/* The log after the snapshot: the store's topic and a plain message; the
 * checked transaction committed (a one-message transaction the snapshot
 * holds: published from what the snapshot says of it), the first parked
 * one resumed, the pending one of two messages rolled back; a new
 * transaction of two messages, committed. */
static void snap_tail(buf_t* b, uint64_t* pos, const chains_t* c) {
  buf_t t;
  buf_init(&t);
  msgpack_pack_array(&t.pk, 2);
  s(&t.pk, "orders");
  msgpack_pack_int64(&t.pk, 2);
  rec(b, TXMQ_REC_TOPIC, t.sb.data, t.sb.size, pos);
  buf_free(&t);
  txmq_msg_t* m = msg("orders", "plain", 1, 1);
  void* enc;
  size_t len;
  FZ_CHECK(txmq_msg_encode(m, &enc, &len) == 0);
  rec(b, TXMQ_REC_MSG, enc, len, pos);
  free(enc);
  txmq_msg_free(m);
  uint8_t id[16];
  id_n(id, 0x21);
  rec_event(b, id, TXMQ__EV_COMMIT, TXMQ_TX_SRC_PRODUCER, 1, c->checked, pos);
  id_n(id, 0x31);
  rec_event(b, id, TXMQ__EV_RESUME, TXMQ_TX_SRC_OPERATOR, 0, c->parked, pos);
  id_n(id, 0x41);
  rec_event(b, id, TXMQ__EV_ROLLBACK, TXMQ_TX_SRC_PRODUCER, 0, c->two, pos);
  uint64_t h = rec_half(b, 0x61, 2, pos);
  id_n(id, 0x61);
  rec_event(b, id, TXMQ__EV_COMMIT, TXMQ_TX_SRC_PRODUCER, 0, h, pos);
}

/* A snapshot seed: flags; a checkpoint's map (bit 1) or an empty record
 * of type 0 in its place; the records before the snapshot; the snapshot's
 * payload (with damage: a byte of the last entry's zero padding set, which
 * the loader refuses after it took the entries before); the tail. */
static void snap_seed(const char* name, uint8_t flags, int damage) {
  buf_t pre;
  buf_init(&pre);
  uint64_t pos = 0;
  chains_t c;
  snap_records(&pre, &pos, &c);
  uint64_t at = pos;
  void* payload;
  size_t plen;
  capture_snapshot(&pre, &payload, &plen);
  uint8_t* pl = payload;
  if (damage) {
    /* The layout in core/tx/tx.c: entries of 80 bytes after the 24-byte
     * header and the strings. */
    uint64_t sbytes = txmq__get_le64(pl + 16);
    uint32_t n = txmq__get_le32(pl + 8);
    FZ_CHECK(n >= 1 && 24 + sbytes + (uint64_t)n * 80 <= plen);
    pl[24 + sbytes + (uint64_t)(n - 1) * 80 + 74] = 1;
  }
  /* With its own checkpoint (bit 1), the snapshot is older than the
   * checkpoint: between the two lie records of the engine only (a counted
   * check, a new half record), which the store has nothing to index for. */
  buf_t mid;
  buf_init(&mid);
  if (flags & 2) {
    uint8_t id[16];
    id_n(id, 0x41);
    uint64_t check = pos;
    rec_event(&mid, id, TXMQ__EV_CHECK, TXMQ_TX_SRC_TIMEOUT, 1, c.two, &pos);
    c.two = check;
    rec_half(&mid, 0x71, 1, &pos);
  }
  uint64_t applied = pos;
  buf_t tail;
  buf_init(&tail);
  snap_tail(&tail, &pos, &c);

  buf_t b;
  buf_init(&b);
  buf_byte(&b, flags);
  if (flags & 2) {
    buf_t ck;
    buf_init(&ck);
    pk_ckpt(&ck, (int64_t)applied, (int64_t)at, 0);
    rec(&b, 0, ck.sb.data, ck.sb.size, NULL);
    buf_free(&ck);
  } else {
    rec(&b, 0, NULL, 0, NULL);
  }
  buf_put(&b, pre.sb.data, pre.sb.size);
  rec(&b, 0, payload, plen, NULL);
  buf_put(&b, mid.sb.data, mid.sb.size);
  buf_put(&b, tail.sb.data, tail.sb.size);
  seed("record", name, &b);
  buf_free(&b);
  buf_free(&tail);
  buf_free(&mid);
  buf_free(&pre);
  free(payload);
}

static void seeds_record(void) {
  buf_t b;
  buf_init(&b);
  buf_byte(&b, 0x00);
  records(&b, 0);
  seed("record", "decoders_only", &b);
  buf_free(&b);
  buf_init(&b);
  buf_byte(&b, 0x01);
  records(&b, 0);
  seed("record", "replay", &b);
  buf_free(&b);
  buf_init(&b);
  buf_byte(&b, 0x07);
  records(&b, 1);
  seed("record", "replay_checkpoint_reopen", &b);
  buf_free(&b);
  /* The engine's snapshot (bit 3), loaded, then closed and opened again;
   * older than its checkpoint, in slot 1; refused; refused with an older
   * one to fall back to. */
  snap_seed("snapshot_reopen", 0x0d, 0);
  snap_seed("snapshot_older_than_checkpoint", 0x1f, 0);
  snap_seed("snapshot_damaged", 0x0d, 1);
  snap_seed("snapshot_damaged_fallback", 0x2d, 1);
}

/* ---- frame (server) ---- */

static void req_begin(buf_t* f, const char* op, uint32_t id, uint32_t fields) {
  buf_init(f);
  msgpack_pack_map(&f->pk, 2 + fields);
  kv_s(&f->pk, "op", op);
  kv_i(&f->pk, "id", id);
}

static void seeds_frame(void) {
  buf_t b, f;
  char txid[33];
  txmq_tx_id_str(ID_A, txid);

  /* A producer (the target sends its hello first). */
  buf_init(&b);
  buf_byte(&b, 1);
  req_begin(&f, "ping", 2, 0);
  frame(&b, &f);
  req_begin(&f, "send", 3, 1);
  s(&f.pk, "msg");
  wire_msg(&f.pk, "orders", "plain");
  frame(&b, &f);
  req_begin(&f, "tx.half", 4, 3);
  kv_s(&f.pk, "group", "g");
  kv_i(&f.pk, "immunity_ms", 50);
  s(&f.pk, "msgs");
  msgpack_pack_array(&f.pk, 2);
  wire_msg(&f.pk, "orders", "half 1");
  wire_msg(&f.pk, "points", "half 2");
  frame(&b, &f);
  req_begin(&f, "tx.end", 5, 2);
  kv_s(&f.pk, "tx_id", txid);
  kv_s(&f.pk, "decision", "commit");
  frame(&b, &f);
  req_begin(&f, "tx.send", 6, 3);
  kv_s(&f.pk, "group", "hosted");
  kv_s(&f.pk, "arg", "commit");
  s(&f.pk, "msgs");
  msgpack_pack_array(&f.pk, 1);
  wire_msg(&f.pk, "orders", "hosted");
  frame(&b, &f);
  req_begin(&f, "tx.send", 7, 3);
  kv_s(&f.pk, "group", "hosted");
  s(&f.pk, "arg");
  msgpack_pack_map(&f.pk, 1);
  kv_i(&f.pk, "result", 2);
  s(&f.pk, "msgs");
  msgpack_pack_array(&f.pk, 1);
  wire_msg(&f.pk, "orders", "hosted rollback");
  frame(&b, &f);
  seed("frame", "producer", &b);
  buf_free(&b);

  /* A consumer. */
  buf_init(&b);
  buf_byte(&b, 2);
  req_begin(&f, "send", 2, 1);
  s(&f.pk, "msg");
  wire_msg(&f.pk, "orders", "to consume");
  frame(&b, &f);
  req_begin(&f, "receive", 3, 6);
  kv_s(&f.pk, "group", "cg");
  kv_s(&f.pk, "topic", "orders");
  kv_s(&f.pk, "tags", "paid || other");
  kv_i(&f.pk, "max", 4);
  kv_i(&f.pk, "wait_ms", 0);
  kv_s(&f.pk, "from", "earliest");
  frame(&b, &f);
  req_begin(&f, "ack", 4, 2);
  kv_s(&f.pk, "group", "cg");
  s(&f.pk, "handles");
  msgpack_pack_array(&f.pk, 1);
  s(&f.pk, "0.0.0.1");
  frame(&b, &f);
  req_begin(&f, "offset.get", 5, 3);
  kv_s(&f.pk, "group", "cg");
  kv_s(&f.pk, "topic", "orders");
  kv_i(&f.pk, "qid", 0);
  frame(&b, &f);
  req_begin(&f, "offset.set", 6, 4);
  kv_s(&f.pk, "group", "cg2");
  kv_s(&f.pk, "topic", "orders");
  kv_i(&f.pk, "qid", 1);
  kv_i(&f.pk, "offset", 0);
  frame(&b, &f);
  seed("frame", "consumer", &b);
  buf_free(&b);

  /* An admin. */
  buf_init(&b);
  buf_byte(&b, 3);
  req_begin(&f, "status", 2, 0);
  frame(&b, &f);
  req_begin(&f, "tx.list", 3, 2);
  kv_s(&f.pk, "group", "g");
  kv_i(&f.pk, "limit", 10);
  frame(&b, &f);
  req_begin(&f, "tx.show", 4, 1);
  kv_bin(&f.pk, "tx_id", ID_A, 16);
  frame(&b, &f);
  req_begin(&f, "tx.resume", 5, 1);
  kv_s(&f.pk, "tx_id", txid);
  frame(&b, &f);
  req_begin(&f, "reload", 6, 1);
  kv_s(&f.pk, "group", "hosted");
  frame(&b, &f);
  seed("frame", "admin", &b);
  buf_free(&b);

  /* No prelude: the input says hello itself. */
  buf_init(&b);
  buf_byte(&b, 0);
  req_begin(&f, "hello", 1, 5);
  kv_i(&f.pk, "version", 1);
  kv_s(&f.pk, "client", "seed-1");
  kv_s(&f.pk, "role", "producer");
  s(&f.pk, "producer_groups");
  msgpack_pack_array(&f.pk, 1);
  s(&f.pk, "g");
  s(&f.pk, "consumer_groups");
  msgpack_pack_array(&f.pk, 0);
  frame(&b, &f);
  req_begin(&f, "ping", 2, 0);
  frame(&b, &f);
  seed("frame", "hello", &b);
  buf_free(&b);

  /* Bad input the protocol answers: a frame that is not a map, an unknown
   * op, a missing field, then a length over max_frame. */
  buf_init(&b);
  buf_byte(&b, 1);
  buf_init(&f);
  msgpack_pack_array(&f.pk, 1);
  msgpack_pack_int64(&f.pk, 1);
  frame(&b, &f);
  req_begin(&f, "no.such.op", 2, 0);
  frame(&b, &f);
  req_begin(&f, "send", 3, 0);
  frame(&b, &f);
  static const uint8_t too_big[4] = {0x00, 0x10, 0x00, 0x00};
  buf_put(&b, too_big, 4);
  seed("frame", "bad_input", &b);
  buf_free(&b);
}

/* ---- client ---- */

/* A response: map of 2 + extra, re and ok. */
static void resp_begin(buf_t* f, uint32_t re, int ok, uint32_t extra) {
  buf_init(f);
  msgpack_pack_map(&f->pk, 2 + extra);
  kv_i(&f->pk, "re", re);
  s(&f->pk, "ok");
  if (ok) msgpack_pack_true(&f->pk);
  else msgpack_pack_false(&f->pk);
}

static void ids(msgpack_packer* pk, const char* key, size_t n, uint8_t first) {
  s(pk, key);
  msgpack_pack_array(pk, n);
  for (size_t i = 0; i < n; i++) {
    uint8_t id[16];
    id_n(id, (uint8_t)(first + i));
    msgpack_pack_bin(pk, 16);
    msgpack_pack_bin_body(pk, id, 16);
  }
}

static void tx_summary(msgpack_packer* pk) {
  msgpack_pack_map(pk, 8);
  kv_bin(pk, "tx_id", ID_A, 16);
  kv_s(pk, "state", "pending");
  kv_s(pk, "group", "g");
  kv_s(pk, "producer", "fuzz");
  kv_i(pk, "check_count", 1);
  kv_i(pk, "nmsgs", 1);
  kv_i(pk, "born", T0);
  kv_i(pk, "due_in_ms", 500);
}

static void client_all_ok(buf_t* b) {
  buf_t f;
  resp_begin(&f, 2, 1, 1); /* ping */
  kv_i(&f.pk, "time", T0);
  frame(b, &f);
  resp_begin(&f, 3, 1, 3); /* send */
  kv_bin(&f.pk, "msg_id", ID_A, 16);
  kv_i(&f.pk, "qid", 0);
  kv_i(&f.pk, "qoff", 5);
  frame(b, &f);
  resp_begin(&f, 4, 1, 2); /* tx.half */
  kv_bin(&f.pk, "tx_id", ID_A, 16);
  ids(&f.pk, "msg_ids", 2, 1);
  frame(b, &f);
  resp_begin(&f, 5, 1, 1); /* tx.end */
  kv_s(&f.pk, "state", "committed");
  frame(b, &f);
  resp_begin(&f, 6, 1, 5); /* tx.send */
  kv_bin(&f.pk, "tx_id", ID_A, 16);
  ids(&f.pk, "msg_ids", 1, 3);
  kv_s(&f.pk, "state", "pending");
  kv_s(&f.pk, "version", "0123456789abcdef");
  kv_s(&f.pk, "diag", "the handler answered UNKNOWN");
  frame(b, &f);
  resp_begin(&f, 7, 1, 1); /* receive */
  s(&f.pk, "msgs");
  msgpack_pack_array(&f.pk, 1);
  msgpack_pack_map(&f.pk, 12);
  kv_bin(&f.pk, "id", ID_A, 16);
  kv_s(&f.pk, "topic", "t");
  kv_i(&f.pk, "qid", 0);
  kv_i(&f.pk, "qoff", 0);
  kv_s(&f.pk, "tags", "paid");
  kv_s(&f.pk, "keys", "order-1");
  s(&f.pk, "props");
  msgpack_pack_map(&f.pk, 1);
  kv_s(&f.pk, "region", "eu");
  kv_bin(&f.pk, "body", "body", 4);
  kv_i(&f.pk, "born", T0);
  kv_i(&f.pk, "stored", T0 + 1);
  kv_s(&f.pk, "handle", "0.0.0.1");
  kv_i(&f.pk, "deliveries", 1);
  frame(b, &f);
  resp_begin(&f, 8, 1, 2); /* ack */
  kv_i(&f.pk, "acked", 1);
  kv_i(&f.pk, "missed", 1);
  frame(b, &f);
  resp_begin(&f, 9, 1, 1); /* offset.get */
  kv_i(&f.pk, "offset", 3);
  frame(b, &f);
  resp_begin(&f, 10, 1, 0); /* offset.set */
  frame(b, &f);
  resp_begin(&f, 11, 1, 4); /* status */
  kv_s(&f.pk, "version", "fake");
  kv_i(&f.pk, "protocol", 1);
  s(&f.pk, "topics");
  msgpack_pack_array(&f.pk, 1);
  msgpack_pack_map(&f.pk, 2);
  kv_s(&f.pk, "name", "t");
  kv_i(&f.pk, "queues", 4);
  kv_i(&f.pk, "connections", 1);
  frame(b, &f);
  resp_begin(&f, 12, 1, 1); /* tx.list */
  s(&f.pk, "txs");
  msgpack_pack_array(&f.pk, 1);
  tx_summary(&f.pk);
  frame(b, &f);
  resp_begin(&f, 13, 1, 3); /* tx.show */
  s(&f.pk, "tx");
  tx_summary(&f.pk);
  s(&f.pk, "history");
  msgpack_pack_array(&f.pk, 1);
  msgpack_pack_map(&f.pk, 2);
  kv_s(&f.pk, "event", "half");
  kv_i(&f.pk, "at", T0);
  s(&f.pk, "complete");
  msgpack_pack_true(&f.pk);
  frame(b, &f);
  resp_begin(&f, 14, 1, 1); /* tx.resume */
  kv_s(&f.pk, "state", "pending");
  frame(b, &f);
  resp_begin(&f, 15, 1, 1); /* reload */
  kv_s(&f.pk, "version", "0123456789abcdef");
  frame(b, &f);
  resp_begin(&f, 16, 1, 1); /* custom */
  kv_i(&f.pk, "k", 1);
  frame(b, &f);
  resp_begin(&f, 17, 1, 2); /* send_in_transaction's tx.half */
  kv_bin(&f.pk, "tx_id", ID_A, 16);
  ids(&f.pk, "msg_ids", 1, 5);
  frame(b, &f);
  resp_begin(&f, 18, 1, 1); /* its tx.end, sent from the half's callback */
  kv_s(&f.pk, "state", "committed");
  frame(b, &f);
  /* A check request from the server. */
  buf_init(&f);
  msgpack_pack_map(&f.pk, 8);
  kv_s(&f.pk, "op", "check");
  kv_i(&f.pk, "id", 1);
  kv_bin(&f.pk, "tx_id", ID_A, 16);
  kv_s(&f.pk, "group", "g");
  kv_i(&f.pk, "check_count", 2);
  kv_s(&f.pk, "producer", "fuzz");
  kv_i(&f.pk, "born", T0);
  s(&f.pk, "msgs");
  msgpack_pack_array(&f.pk, 1);
  wire_msg(&f.pk, "t", "checked");
  frame(b, &f);
}

static void seeds_client(void) {
  buf_t b, f;
  buf_init(&b);
  buf_byte(&b, 0);
  client_all_ok(&b);
  seed("client", "all_ok", &b);
  buf_free(&b);

  buf_init(&b);
  buf_byte(&b, 2);
  for (uint32_t re = 2; re <= 17; re++) {
    resp_begin(&f, re, 0, 3);
    kv_s(&f.pk, "err", "ECONFLICT");
    kv_i(&f.pk, "code", TXMQ_ECONFLICT);
    kv_s(&f.pk, "msg", "the transaction was rolled back");
    frame(&b, &f);
  }
  seed("client", "all_errors", &b);
  buf_free(&b);

  /* The answer to the hello itself (bit 0), then the rest. */
  buf_init(&b);
  buf_byte(&b, 1);
  resp_begin(&f, 1, 1, 4);
  kv_i(&f.pk, "version", 1);
  kv_s(&f.pk, "server", "seed");
  kv_i(&f.pk, "max_frame", 65536);
  kv_i(&f.pk, "heartbeat_ms", 0);
  frame(&b, &f);
  seed("client", "hello", &b);
  buf_free(&b);
}

int main(int argc, char** argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s CORPUS_DIR (tests/fuzz/corpus)\n", argv[0]);
    return 2;
  }
  g_out = argv[1];
  if (mkdir(g_out, 0755) != 0 && errno != EEXIST) {
    perror(g_out);
    return 1;
  }
  seeds_codec();
  seeds_log();
  seeds_record();
  seeds_frame();
  seeds_client();
  return 0;
}
