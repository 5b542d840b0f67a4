/*
 * fuzz_record.c - libFuzzer target for the decoders of what the log
 * records hold: messages (txmq_msg_decode, txmq__msg_from_object), the
 * transaction engine's half and event records, the store's checkpoint, the
 * engine's snapshot, and the replay that turns all of them back into
 * topics, queues and pending transactions when a runtime opens.
 *
 * Input: one flags byte, then records as (type u8, length u16 LE, payload);
 * a length past the end is cut to what is left. Records of type 0 never go
 * to the log (the log does not write that type): the first is the store's
 * checkpoint (bit 1), the second the engine's snapshot (bit 3).
 *   bit 0  also write the records as a valid log (one segment, right
 *          checksums) and open a runtime on it: store replay, the engine's
 *          record handler and its decoder of messages inside half records
 *   bit 1  the payload of the first record of type 0 becomes the store's
 *          checkpoint file (with a right header and crc), so its loader
 *          and the choice between trusting and rebuilding get exercised
 *   bit 2  after that open, close (which writes a checkpoint and the
 *          engine's snapshot) and open again: the second open must see the
 *          same topics, queues, messages and transactions
 *   bit 3  the payload of the second record of type 0 (none: an empty
 *          payload) becomes the engine's snapshot (snapshot.0), with a
 *          right header and crc, taken at the position the checkpoint
 *          names for it. With bit 1 that is the checkpoint's "snapshot"
 *          (else its "applied"); without, it is where the record stands
 *          among the records written to the log, and a checkpoint that
 *          names it is written too (applied there, replay floor 0, no
 *          topics, no offsets). The open then loads the snapshot and
 *          replays the log after it, or refuses it
 *   bit 4  the snapshot goes to snapshot.1 instead
 *   bit 5  the other slot holds an older snapshot of an empty engine at
 *          the same position: what an open falls back to when it refuses
 *          the newer one
 *
 * Properties checked on every payload, whatever its type (beyond "no
 * crash, no leak, no UB"): a message that decodes encodes to bytes that
 * decode to the same message and encode the same again; a half record
 * that decodes gives, for every message, a topic iff the message decodes;
 * an event that decodes encodes back to a record that decodes the same.
 *
 * And on the opens: an open either succeeds or says why it failed; every
 * message the indexes hold reads back. The state compared between opens
 * is the topics, the queues' ranges and messages, the pending count per
 * topic, the pending and parked transactions (ids, states, counts, groups,
 * producers, positions and times), the engine's pending and parked gauges,
 * and what txmq_tx_show says of every transaction id the input names
 * (decided ones included, with their history). With bit 2, a close that
 * reported no failure wrote a snapshot the next open loads. With bit 3, a
 * refused snapshot is refused with a reason (the store's diagnostic names
 * the slot and why); a snapshot that is not loaded (refused, or never
 * looked at because the checkpoint was not trusted) changes nothing: an
 * open of the same directory without the snapshot files ends the same
 * way, with the same state; and one that is loaded never makes an open
 * fail that succeeds without it.
 */
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

#define CKPT_MAGIC "TXMQCKP1"
/* The store's envelope of a snapshot (core/store/checkpoint.c): magic,
 * crc32c of bytes 12..end, version, payload length, applied, seq. */
#define SNAP_MAGIC "TXMQSNP1"
#define SNAP_HEADER 40
#define SNAP_VERSION 1
/* The engine's payload (core/tx/tx.c): its header, entry and decided
 * transaction sizes. */
#define PAY_HEAD 24
#define PAY_ENTRY 80
#define PAY_DEC 24

static char* g_root;
static uv_loop_t g_loop;
/* TXMQ_FUZZ_VERBOSE=1 prints what each open found. */
static int g_verbose;

int LLVMFuzzerInitialize(int* argc, char*** argv) {
  (void)argc;
  (void)argv;
  g_root = fz_tmpdir("record");
  const char* v = getenv("TXMQ_FUZZ_VERBOSE");
  g_verbose = v != NULL && *v != '\0' && *v != '0';
  FZ_CHECK(uv_loop_init(&g_loop) == 0);
  return 0;
}

typedef struct {
  uint8_t type;
  const uint8_t* p;
  uint32_t len;
} rec_t;

#define MAX_RECS 256

/* ---- the decoders on their own ---- */

static void check_msg(const uint8_t* p, size_t n) {
  txmq_msg_t* m = NULL;
  if (txmq_msg_decode(p, n, &m) != 0) return;
  void* e1 = NULL;
  size_t l1 = 0;
  int rc = txmq_msg_encode(m, &e1, &l1);
  FZ_CHECK(rc == 0);
  txmq_msg_t* back = NULL;
  rc = txmq_msg_decode(e1, l1, &back);
  if (rc != 0) {
    fprintf(stderr, "a decoded message encodes to bytes that do not decode "
            "(%s)\n", txmq_err_name(rc));
    FZ_CHECK(!"msg: decode(encode(decode(x))) succeeds");
  }
  FZ_CHECK(fz_msg_eq(m, back));
  void* e2 = NULL;
  size_t l2 = 0;
  FZ_CHECK(txmq_msg_encode(back, &e2, &l2) == 0);
  FZ_CHECK(l1 == l2 && memcmp(e1, e2, l1) == 0);
  free(e1);
  free(e2);
  txmq_msg_free(m);
  txmq_msg_free(back);
}

static void check_half(const uint8_t* p, size_t n) {
  txmq__half_t h;
  if (txmq__half_decode(p, n, &h) != 0) return;
  txmq_msg_t* msgs[TXMQ_TX_MAX_MSGS];
  size_t ok = 0;
  for (uint32_t i = 0; i < h.msgs->size; i++) {
    const char* t;
    uint32_t tl;
    int trc = txmq__half_topic(&h, i, &t, &tl);
    txmq_msg_t* m = NULL;
    int mrc = txmq__half_msg(&h, i, &m);
    if (mrc == 0) {
      /* The topic read alone is the topic of the decoded message. */
      FZ_CHECK(trc == 0 && strlen(txmq_msg_topic(m)) == tl &&
               memcmp(txmq_msg_topic(m), t, tl) == 0);
      msgs[ok++] = m;
    }
  }
  FZ_CHECK(txmq__half_msg(&h, h.msgs->size, &msgs[0]) == TXMQ_EPROTO);
  /* A record whose messages all decode encodes back to one that decodes
   * to the same. */
  if (ok == h.msgs->size) {
    char group[TXMQ_NAME_MAX + 1];
    memcpy(group, h.group, h.group_len);
    group[h.group_len] = '\0';
    char* producer = NULL;
    if (h.producer != NULL) {
      producer = malloc(h.producer_len + 1);
      FZ_CHECK(producer != NULL);
      memcpy(producer, h.producer, h.producer_len);
      producer[h.producer_len] = '\0';
    }
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    FZ_CHECK(txmq__half_encode(&sb, h.id, group, producer, h.immunity_ms,
                               h.at, msgs, ok) == 0);
    txmq__half_t h2;
    int rc = txmq__half_decode(sb.data, sb.size, &h2);
    if (rc != 0) {
      fprintf(stderr, "a decoded half record encodes to bytes that do not "
              "decode (%s)\n", txmq_err_name(rc));
      FZ_CHECK(!"half: decode(encode(decode(x))) succeeds");
    }
    FZ_CHECK(memcmp(h2.id, h.id, TXMQ_TX_ID_LEN) == 0);
    FZ_CHECK(h2.group_len == h.group_len &&
             memcmp(h2.group, h.group, h.group_len) == 0);
    FZ_CHECK((h2.producer == NULL) == (h.producer == NULL));
    FZ_CHECK(h2.immunity_ms == h.immunity_ms && h2.at == h.at);
    FZ_CHECK(h2.msgs->size == h.msgs->size);
    for (uint32_t i = 0; i < h2.msgs->size; i++) {
      txmq_msg_t* m2 = NULL;
      FZ_CHECK(txmq__half_msg(&h2, i, &m2) == 0);
      FZ_CHECK(fz_msg_eq(msgs[i], m2));
      txmq_msg_free(m2);
    }
    txmq__half_done(&h2);
    msgpack_sbuffer_destroy(&sb);
    free(producer);
  }
  for (size_t i = 0; i < ok; i++) txmq_msg_free(msgs[i]);
  txmq__half_done(&h);
}

static void check_event(const uint8_t* p, size_t n) {
  txmq__event_t ev;
  if (txmq__event_decode(p, n, &ev) != 0) return;
  msgpack_sbuffer sb;
  msgpack_sbuffer_init(&sb);
  FZ_CHECK(txmq__event_encode(&sb, &ev) == 0);
  txmq__event_t ev2;
  int rc = txmq__event_decode(sb.data, sb.size, &ev2);
  if (rc != 0) {
    fprintf(stderr, "a decoded event encodes to bytes that do not decode "
            "(%s)\n", txmq_err_name(rc));
    FZ_CHECK(!"event: decode(encode(decode(x))) succeeds");
  }
  FZ_CHECK(memcmp(ev.id, ev2.id, TXMQ_TX_ID_LEN) == 0 && ev.ev == ev2.ev &&
           ev.src == ev2.src && ev.count == ev2.count && ev.at == ev2.at &&
           ev.prev == ev2.prev);
  FZ_CHECK((ev.ver == NULL) == (ev2.ver == NULL) && ev.ver_len == ev2.ver_len);
  FZ_CHECK((ev.who == NULL) == (ev2.who == NULL) && ev.who_len == ev2.who_len);
  FZ_CHECK(ev.ver == NULL || memcmp(ev.ver, ev2.ver, ev.ver_len) == 0);
  FZ_CHECK(ev.who == NULL || memcmp(ev.who, ev2.who, ev.who_len) == 0);
  msgpack_sbuffer_destroy(&sb);
}

/* ---- the files of a data directory ---- */

/* The log position write_log gives recs[k] (the log's end for k == n). */
static uint64_t log_pos(const rec_t* recs, size_t k) {
  uint64_t pos = 0;
  for (size_t i = 0; i < k; i++)
    if (recs[i].type != 0) pos += TXMQ_LOG_RECORD_HEADER_SIZE + recs[i].len;
  return pos;
}

static void write_log(const char* data, const rec_t* recs, size_t n) {
  char* logdir = fz_path(data, "log");
  FZ_CHECK(mkdir(logdir, 0755) == 0);
  size_t total = TXMQ_LOG_SEGMENT_HEADER_SIZE + (size_t)log_pos(recs, n);
  uint8_t* seg = malloc(total);
  FZ_CHECK(seg != NULL);
  txmq__log_seg_header(seg, 0, 0);
  size_t off = TXMQ_LOG_SEGMENT_HEADER_SIZE;
  for (size_t i = 0; i < n; i++) {
    if (recs[i].type == 0) continue; /* never written by the log */
    txmq_log_rec_t r = {recs[i].type, recs[i].p, recs[i].len};
    txmq__log_rec_encode(seg + off, off - TXMQ_LOG_SEGMENT_HEADER_SIZE, &r);
    off += TXMQ_LOG_RECORD_HEADER_SIZE + recs[i].len;
  }
  char* path = fz_path(logdir, "00000000000000000000.log");
  fz_write_file(path, seg, total);
  free(path);
  free(seg);
  free(logdir);
}

static void write_checkpoint(const char* data, const uint8_t* p, uint32_t n) {
  uint8_t* f = malloc(16 + (size_t)n);
  FZ_CHECK(f != NULL);
  memcpy(f, CKPT_MAGIC, 8);
  txmq__put_le32(f + 12, n);
  if (n > 0) memcpy(f + 16, p, n);
  txmq__put_le32(f + 8, txmq_crc32c(0, f + 12, 4 + (size_t)n));
  char* path = fz_path(data, "checkpoint");
  fz_write_file(path, f, 16 + (size_t)n);
  free(path);
  free(f);
}

static void pk_key(msgpack_packer* pk, const char* k) {
  msgpack_pack_str(pk, strlen(k));
  msgpack_pack_str_body(pk, k, strlen(k));
}

/* The checkpoint that names the snapshot when the input brings none (bit
 * 1 clear): every record before `at` applied, no topic in the indexes
 * (true when the input puts none of the store's own records before the
 * snapshot; when it does, they stay out of the indexes, which an open must
 * cope with as with any checkpoint), and a replay floor of 0, so that an
 * open that does not use the snapshot rebuilds the engine from the whole
 * log. */
static void write_min_checkpoint(const char* data, uint64_t at) {
  msgpack_sbuffer sb;
  msgpack_packer pk;
  msgpack_sbuffer_init(&sb);
  msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
  msgpack_pack_map(&pk, 6);
  pk_key(&pk, "v");
  msgpack_pack_uint64(&pk, 1);
  pk_key(&pk, "applied");
  msgpack_pack_uint64(&pk, at);
  pk_key(&pk, "replay_from");
  msgpack_pack_uint64(&pk, 0);
  pk_key(&pk, "snapshot");
  msgpack_pack_uint64(&pk, at);
  pk_key(&pk, "topics");
  msgpack_pack_array(&pk, 0);
  pk_key(&pk, "offsets");
  msgpack_pack_array(&pk, 0);
  write_checkpoint(data, (const uint8_t*)sb.data, (uint32_t)sb.size);
  msgpack_sbuffer_destroy(&sb);
}

/* The position a checkpoint's map names for the snapshot, read as the
 * store reads it: "snapshot", else "applied"; 0 for a map the store
 * refuses anyway (the open then rebuilds and never looks at a snapshot,
 * wherever it was taken). */
static uint64_t ckpt_snap_at(const rec_t* c) {
  uint64_t at = 0;
  int named = 0;
  msgpack_unpacked u;
  msgpack_unpacked_init(&u);
  if (txmq__mp_unpack(c->p, c->len, 6, SIZE_MAX, &u) == 0 &&
      u.data.type == MSGPACK_OBJECT_MAP) {
    for (uint32_t i = 0; i < u.data.via.map.size; i++) {
      const msgpack_object* k = &u.data.via.map.ptr[i].key;
      const msgpack_object* v = &u.data.via.map.ptr[i].val;
      if (k->type != MSGPACK_OBJECT_STR ||
          v->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
        continue;
      if (k->via.str.size == 8 && memcmp(k->via.str.ptr, "snapshot", 8) == 0) {
        at = v->via.u64;
        named = 1;
      } else if (!named && k->via.str.size == 7 &&
                 memcmp(k->via.str.ptr, "applied", 7) == 0) {
        at = v->via.u64;
      }
    }
  }
  msgpack_unpacked_destroy(&u);
  return at;
}

static void write_snapshot(const char* data, int slot, uint64_t at,
                           uint64_t seq, const uint8_t* p, size_t n) {
  uint8_t* f = malloc(SNAP_HEADER + n);
  FZ_CHECK(f != NULL);
  memcpy(f, SNAP_MAGIC, 8);
  txmq__put_le32(f + 12, SNAP_VERSION);
  txmq__put_le64(f + 16, n);
  txmq__put_le64(f + 24, at);
  txmq__put_le64(f + 32, seq);
  if (n > 0) memcpy(f + SNAP_HEADER, p, n);
  txmq__put_le32(f + 8, txmq_crc32c(0, f + 12, SNAP_HEADER - 12 + n));
  char* path = fz_path(data, slot ? "snapshot.1" : "snapshot.0");
  fz_write_file(path, f, SNAP_HEADER + n);
  free(path);
  free(f);
}

/* What goes into the data directory besides the log. */
typedef struct {
  const rec_t* ckpt; /* bit 1: the checkpoint's map; else NULL */
  const rec_t* snap; /* bit 3: the engine's snapshot payload; else NULL */
  uint64_t snap_at;  /* the position the checkpoint names for it */
  int slot;          /* bit 4: snapshot.1 rather than snapshot.0 */
  int fallback;      /* bit 5: an older, empty one in the other slot */
} files_t;

/* A fresh data directory; with_snap 0: the same without the snapshot
 * files. */
static void write_dir(const char* data, const rec_t* recs, size_t n,
                      const files_t* f, int with_snap) {
  fz_rmrf(data);
  FZ_CHECK(mkdir(data, 0755) == 0);
  write_log(data, recs, n);
  if (f->ckpt != NULL) write_checkpoint(data, f->ckpt->p, f->ckpt->len);
  else if (f->snap != NULL) write_min_checkpoint(data, f->snap_at);
  if (f->snap == NULL || !with_snap) return;
  write_snapshot(data, f->slot, f->snap_at, 2, f->snap->p, f->snap->len);
  if (f->fallback) {
    /* The engine's payload of no entries and nothing decided: version 1,
     * then zeros. Its lower seq makes it the one an open tries second. */
    uint8_t empty[PAY_HEAD] = {1};
    write_snapshot(data, !f->slot, f->snap_at, 1, empty, sizeof empty);
  }
}

/* ---- what an open runtime holds ---- */

/* Transaction ids the input names (in its half and event records, in the
 * snapshot's entries and decided transactions): the summary looks each one
 * up, so that decided transactions, which no list shows, are compared too.
 */
#define MAX_IDS 512
typedef struct {
  uint8_t v[MAX_IDS][TXMQ_TX_ID_LEN];
  size_t n;
} ids_t;

static void id_add(ids_t* ids, const uint8_t* id) {
  if (ids->n == MAX_IDS) return;
  for (size_t i = 0; i < ids->n; i++)
    if (memcmp(ids->v[i], id, TXMQ_TX_ID_LEN) == 0) return;
  memcpy(ids->v[ids->n++], id, TXMQ_TX_ID_LEN);
}

static void ids_of_records(ids_t* ids, const rec_t* recs, size_t n) {
  for (size_t i = 0; i < n; i++) {
    txmq__half_t h;
    txmq__event_t ev;
    if (recs[i].type == TXMQ_REC_TX_HALF &&
        txmq__half_decode(recs[i].p, recs[i].len, &h) == 0) {
      id_add(ids, h.id);
      txmq__half_done(&h);
    } else if (recs[i].type == TXMQ_REC_TX_EVENT &&
               txmq__event_decode(recs[i].p, recs[i].len, &ev) == 0) {
      id_add(ids, ev.id);
    }
  }
}

/* The ids of a payload whose sizes add up (the layout in core/tx/tx.c). */
static void ids_of_payload(ids_t* ids, const uint8_t* p, size_t len) {
  if (len < PAY_HEAD) return;
  uint64_t n = txmq__get_le32(p + 8), nd = txmq__get_le32(p + 12);
  uint64_t sbytes = txmq__get_le64(p + 16);
  if (sbytes > len - PAY_HEAD ||
      len - PAY_HEAD - sbytes != n * PAY_ENTRY + nd * PAY_DEC)
    return;
  const uint8_t* e = p + PAY_HEAD + sbytes;
  for (uint64_t k = 0; k < n + nd && ids->n < MAX_IDS; k++) {
    id_add(ids, e);
    e += k < n ? PAY_ENTRY : PAY_DEC;
  }
}

/* An open runtime's topics, queues, messages and transactions, folded into
 * a few numbers. */
typedef struct {
  uint32_t crc;
  uint64_t topics, queues, msgs, txs, pending, parked, known;
} state_t;

static void fold(state_t* s, const void* p, size_t n) {
  s->crc = txmq_crc32c(s->crc, p, n);
}

/* NULL and "" fold differently. */
static void fold_str(state_t* s, const char* str) {
  if (str == NULL) fold(s, "\xff", 1);
  else fold(s, str, strlen(str) + 1);
}

static int fold_tx(void* arg, const txmq_tx_info_t* info) {
  state_t* s = arg;
  s->txs++;
  fold(s, info->tx_id, TXMQ_TX_ID_LEN);
  uint32_t v[3] = {(uint32_t)info->state, info->check_count, info->nmsgs};
  fold(s, v, sizeof v);
  fold_str(s, info->group);
  fold_str(s, info->producer);
  int64_t w[3] = {(int64_t)info->half_pos, info->born_wall_ms,
                  info->due_in_ms};
  fold(s, w, sizeof w);
  return 0;
}

static void fold_event(void* arg, const txmq_tx_event_t* ev) {
  state_t* s = arg;
  int64_t v[4] = {(int64_t)ev->pos, (int64_t)ev->source, ev->check_count,
                  ev->wall_ms};
  fold(s, v, sizeof v);
  fold_str(s, ev->event);
  fold_str(s, ev->version);
  fold_str(s, ev->who);
}

static void summarize(txmq_runtime_t* rt, const ids_t* ids, state_t* s) {
  memset(s, 0, sizeof *s);
  txmq_store_t* st = txmq_runtime_store(rt);
  txmq_tx_t* tx = txmq_runtime_tx(rt);
  s->topics = txmq_store_topic_count(st);
  for (size_t i = 0; i < s->topics; i++) {
    const char* t = txmq_store_topic_name(st, i);
    FZ_CHECK(t != NULL);
    fold(s, t, strlen(t));
    uint64_t pend = txmq_tx_pending_on_topic(tx, t);
    fold(s, &pend, sizeof pend);
    int nq = txmq_store_topic_queues(st, t);
    FZ_CHECK(nq >= 1);
    for (int q = 0; q < nq; q++) {
      int64_t b, e;
      FZ_CHECK(txmq_store_queue_range(st, t, q, &b, &e) == 0);
      FZ_CHECK(0 <= b && b <= e);
      s->queues++;
      fold(s, &b, sizeof b);
      fold(s, &e, sizeof e);
      for (int64_t o = b; o < e && o < b + 64; o++) {
        txmq_msg_t* m = NULL;
        int rc = txmq_store_get(st, t, q, o, &m);
        if (rc != 0) {
          fprintf(stderr, "get %s/%d/%lld: %s\n", t, q, (long long)o,
                  txmq_err_name(rc));
          FZ_CHECK(!"every indexed message of a sound log reads back");
        }
        FZ_CHECK(strcmp(txmq_msg_topic(m), t) == 0);
        FZ_CHECK(txmq_msg_queue_id(m) == q && txmq_msg_queue_offset(m) == o);
        void* enc;
        size_t len;
        FZ_CHECK(txmq_msg_encode(m, &enc, &len) == 0);
        fold(s, enc, len);
        free(enc);
        txmq_msg_free(m);
        s->msgs++;
      }
    }
  }
  txmq_tx_metrics_t m;
  txmq_tx_metrics(tx, &m);
  s->pending = m.pending;
  s->parked = m.parked;
  txmq_tx_list(tx, NULL, fold_tx, s);
  for (size_t i = 0; i < ids->n; i++) {
    txmq_tx_info_t info;
    int rc = txmq_tx_show(tx, ids->v[i], &info, fold_event, s);
    fold(s, &rc, sizeof rc);
    if (rc == TXMQ_ENOTFOUND) continue;
    s->known++;
    int64_t v[5] = {(int64_t)info.state, info.check_count, info.nmsgs,
                    (int64_t)info.half_pos, info.born_wall_ms};
    fold(s, v, sizeof v);
    fold_str(s, info.group);
    fold_str(s, info.producer);
  }
}

static int same_state(const char* a_name, const state_t* a,
                      const char* b_name, const state_t* b) {
  if (memcmp(a, b, sizeof *a) == 0) return 1;
  const state_t* s[2] = {a, b};
  const char* name[2] = {a_name, b_name};
  for (int k = 0; k < 2; k++)
    fprintf(stderr,
            "%s: topics %llu queues %llu msgs %llu txs %llu (pending %llu "
            "parked %llu) known %llu crc %08x\n",
            name[k], (unsigned long long)s[k]->topics,
            (unsigned long long)s[k]->queues, (unsigned long long)s[k]->msgs,
            (unsigned long long)s[k]->txs, (unsigned long long)s[k]->pending,
            (unsigned long long)s[k]->parked, (unsigned long long)s[k]->known,
            s[k]->crc);
  return 0;
}

/* ---- opening a runtime ---- */

/* What an open did with the snapshot its checkpoint names, as the store's
 * diagnostic says (tests/unit/test_tx.c reads it the same way): refused
 * ("snapshot not used (snapshot.0 why, snapshot.1 why)"), loaded (not a
 * word about it), or not used: there was none ("no snapshot"), or the
 * checkpoint was not trusted ("rebuilding the indexes") and no snapshot
 * was looked at. */
enum { SNAP_LOADED, SNAP_REFUSED, SNAP_UNUSED };
static const char* const snap_use_name[] = {"loaded", "refused", "not used"};

static int snap_use(const char* diag) {
  if (strstr(diag, "snapshot not used") != NULL) return SNAP_REFUSED;
  if (strstr(diag, "snapshot") != NULL ||
      strstr(diag, "rebuilding the indexes") != NULL)
    return SNAP_UNUSED;
  return SNAP_LOADED;
}

/* A refusal names the slot that was there with a reason. */
static void check_refusal(const char* diag, int slot) {
  const char* s = strstr(diag, "snapshot not used (");
  char key[16];
  snprintf(key, sizeof key, "snapshot.%d ", slot);
  const char* why = s != NULL ? strstr(s, key) : NULL;
  if (why != NULL) why += strlen(key);
  if (why == NULL || *why == '\0' || *why == ',' || *why == ')' ||
      strncmp(why, "missing", 7) == 0) {
    fprintf(stderr, "store: %s\n", diag);
    FZ_CHECK(!"a refused snapshot is refused with a reason");
  }
}

/* One open of a runtime on a data directory, summed up and closed. */
typedef struct {
  int rc;
  int use;   /* SNAP_*, from the diagnostic right after the open */
  int clean; /* opened, and its close wrote a checkpoint and a snapshot */
  state_t st;
  char diag[2048]; /* the store's, right after the open */
} open_t;

static void on_rt_closed(txmq_runtime_t* rt, void* arg) {
  (void)rt;
  *(int*)arg = 1;
}

static void on_flushed(txmq_log_t* log, int status, uint64_t pos, void* arg) {
  (void)log;
  (void)pos;
  FZ_CHECK(status == 0);
  *(int*)arg = 1;
}

static void open_sum(const char* what, const char* data, const char* scripts,
                     const ids_t* ids, open_t* o) {
  memset(o, 0, sizeof *o);
  txmq_runtime_t* rt = fz_runtime_fixed(&g_loop, data, scripts);
  txmq_store_t* st = txmq_runtime_store(rt);
  o->rc = txmq_runtime_open(rt);
  snprintf(o->diag, sizeof o->diag, "%s", txmq_store_diag(st));
  o->use = snap_use(o->diag);
  if (g_verbose)
    fprintf(stderr,
            "%s: open: %s; snapshot: %s; replayed %llu records; runtime: %s; "
            "store: %s\n",
            what, txmq_err_name(o->rc), snap_use_name[o->use],
            (unsigned long long)txmq_store_replayed(st),
            txmq_runtime_diag(rt), o->diag);
  if (o->rc != 0) FZ_CHECK(txmq_runtime_diag(rt)[0] != '\0');
  if (o->rc == 0) {
    /* Records the open itself appended (a transaction parked at start
     * because its counted checks already reach the maximum) are written
     * first: a history read before that ends in EAGAIN. */
    int flushed = 0;
    FZ_CHECK(txmq_log_flush(txmq_store_log(st), on_flushed, &flushed) == 0);
    FZ_CHECK(fz_run_until(&g_loop, &flushed, 60000));
    summarize(rt, ids, &o->st);
    if (g_verbose)
      fprintf(stderr,
              "%s: topics %llu queues %llu msgs %llu txs %llu (pending %llu "
              "parked %llu) known %llu crc %08x\n",
              what, (unsigned long long)o->st.topics,
              (unsigned long long)o->st.queues,
              (unsigned long long)o->st.msgs, (unsigned long long)o->st.txs,
              (unsigned long long)o->st.pending,
              (unsigned long long)o->st.parked,
              (unsigned long long)o->st.known, o->st.crc);
  }
  int closed = 0;
  FZ_CHECK(txmq_runtime_close(rt, on_rt_closed, &closed) == 0);
  FZ_CHECK(fz_run_until(&g_loop, &closed, 60000));
  /* A close that could not write its checkpoint or its snapshot says so:
   * the runtime in its diagnostic ("store close: ..."), the store by
   * replacing what the open said ("checkpoint: ...", "snapshot: ..."). */
  o->clean = o->rc == 0 && txmq_runtime_diag(rt)[0] == '\0' &&
             strcmp(txmq_store_diag(st), o->diag) == 0;
  txmq_runtime_free(rt);
}

/* ---- replay through a runtime ---- */

static void replay(const rec_t* recs, size_t n, uint8_t flags) {
  char* data = fz_path(g_root, "data");
  char* scripts = fz_path(g_root, "scripts");
  mkdir(scripts, 0755);
  /* The records of type 0 are the files that are not log records, in
   * order: the checkpoint's map, then the snapshot's payload. */
  size_t zero[2] = {n, n}, nz = 0;
  for (size_t i = 0; i < n && nz < 2; i++)
    if (recs[i].type == 0) zero[nz++] = i;
  static const rec_t no_payload = {0, (const uint8_t*)"", 0};
  files_t f;
  memset(&f, 0, sizeof f);
  if ((flags & 2) && nz > 0) f.ckpt = &recs[zero[0]];
  if (flags & 8) {
    f.snap = nz > 1 ? &recs[zero[1]] : &no_payload;
    f.snap_at = f.ckpt != NULL ? ckpt_snap_at(f.ckpt) : log_pos(recs, zero[1]);
    f.slot = (flags >> 4) & 1;
    f.fallback = (flags >> 5) & 1;
  }
  ids_t* ids = calloc(1, sizeof *ids);
  open_t* o = malloc(3 * sizeof *o);
  FZ_CHECK(ids != NULL && o != NULL);
  ids_of_records(ids, recs, n);
  if (f.snap != NULL) ids_of_payload(ids, f.snap->p, f.snap->len);

  write_dir(data, recs, n, &f, 1);
  open_sum("first open", data, scripts, ids, &o[0]);
  if (f.snap != NULL && o[0].use == SNAP_REFUSED)
    check_refusal(o[0].diag, f.slot);
  if (o[0].rc == 0 && (flags & 4)) {
    open_sum("second open", data, scripts, ids, &o[1]);
    if (o[1].rc != 0) {
      fprintf(stderr, "second open: %s\n", txmq_err_name(o[1].rc));
      FZ_CHECK(!"a runtime that opened and closed opens again");
    }
    /* A snapshot from the input that was loaded is trusted for the half
     * record positions of its entries (checking them would cost a read
     * each at every open): one that does not point at a record becomes
     * the replay floor once it is the oldest, the next checkpoint names
     * it, and the open after that rebuilds everything from the log. That
     * open is then the log's truth, not the snapshot's claims. */
    int rebuilt = f.snap != NULL && o[0].use == SNAP_LOADED &&
                  strstr(o[1].diag, "are not where records start") != NULL;
    /* What txmq wrote itself at close it must take back. */
    if (o[0].clean && o[1].use != SNAP_LOADED && !rebuilt) {
      fprintf(stderr, "second open: store: %s\n", o[1].diag);
      FZ_CHECK(!"the next open loads the snapshot a clean close wrote");
    }
    if (!rebuilt &&
        !same_state("first open", &o[0].st, "second open", &o[1].st))
      FZ_CHECK(!"close and open again keeps the state");
  }
  /* A snapshot that is not loaded changes nothing: the open replays the
   * log as it would without the snapshot files. One that is loaded only
   * spares the replay of the log before it (store_int.h): an open that
   * fails with it fails without it too. */
  if (f.snap != NULL && (o[0].use != SNAP_LOADED || o[0].rc != 0)) {
    write_dir(data, recs, n, &f, 0);
    open_sum("without the snapshot", data, scripts, ids, &o[2]);
    if (o[0].use == SNAP_LOADED) {
      if (o[2].rc == 0) {
        fprintf(stderr, "with the snapshot: %s: %s\n",
                txmq_err_name(o[0].rc), o[0].diag);
        FZ_CHECK(!"a loaded snapshot does not make an open fail");
      }
    } else if (o[2].rc != o[0].rc) {
      fprintf(stderr, "with the snapshot: %s; without: %s\n",
              txmq_err_name(o[0].rc), txmq_err_name(o[2].rc));
      FZ_CHECK(!"an unused snapshot does not change the open's outcome");
    }
    if (o[0].rc == 0 &&
        !same_state("with the snapshot", &o[0].st, "without", &o[2].st))
      FZ_CHECK(!"an unused snapshot leaves the state a replay gives");
  }
  fz_rmrf(data);
  free(o);
  free(ids);
  free(data);
  free(scripts);
}

int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  uint8_t flags = data[0];
  rec_t recs[MAX_RECS];
  size_t n = 0;
  size_t off = 1;
  while (off + 3 <= size && n < MAX_RECS) {
    rec_t* r = &recs[n++];
    r->type = data[off];
    uint32_t len = (uint32_t)data[off + 1] | (uint32_t)data[off + 2] << 8;
    off += 3;
    if (len > size - off) len = (uint32_t)(size - off);
    r->p = data + off;
    r->len = len;
    off += len;
  }
  for (size_t i = 0; i < n; i++) {
    check_msg(recs[i].p, recs[i].len);
    check_half(recs[i].p, recs[i].len);
    check_event(recs[i].p, recs[i].len);
  }
  if (flags & 1) replay(recs, n, flags);
  return 0;
}
