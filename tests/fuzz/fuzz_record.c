/*
 * fuzz_record.c - libFuzzer target for the decoders of what the log
 * records hold: messages (txmq_msg_decode, txmq__msg_from_object), the
 * transaction engine's half and event records, the store's checkpoint, and
 * the replay that turns all of them back into topics, queues and pending
 * transactions when a runtime opens.
 *
 * Input: one flags byte, then records as (type u8, length u16 LE, payload);
 * a length past the end is cut to what is left.
 *   bit 0  also write the records as a valid log (one segment, right
 *          checksums) and open a runtime on it: store replay, the engine's
 *          record handler and its decoder of messages inside half records
 *   bit 1  the payload of the first record of type 0 becomes the store's
 *          checkpoint file (with a right header and crc), so its loader
 *          and the choice between trusting and rebuilding get exercised
 *   bit 2  after that open, close (which writes a checkpoint) and open
 *          again: the second open must see the same topics, queues,
 *          messages and transactions
 *
 * Properties checked on every payload, whatever its type (beyond "no
 * crash, no leak, no UB"): a message that decodes encodes to bytes that
 * decode to the same message and encode the same again; a half record
 * that decodes gives, for every message, a topic iff the message decodes;
 * an event that decodes encodes back to a record that decodes the same.
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

/* ---- replay through a runtime ---- */

static uint64_t fixed_mono(void* arg) {
  (void)arg;
  return 1000000;
}
static int64_t fixed_wall(void* arg) {
  (void)arg;
  return 1700000000000;
}

static void write_log(const char* data, const rec_t* recs, size_t n) {
  char* logdir = fz_path(data, "log");
  FZ_CHECK(mkdir(logdir, 0755) == 0);
  size_t total = TXMQ_LOG_SEGMENT_HEADER_SIZE;
  for (size_t i = 0; i < n; i++) {
    if (recs[i].type != 0) total += TXMQ_LOG_RECORD_HEADER_SIZE + recs[i].len;
  }
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

/* What an open runtime holds, folded into a few numbers. */
typedef struct {
  uint32_t crc;
  uint64_t topics, queues, msgs, txs;
} snap_t;

static void fold(snap_t* s, const void* p, size_t n) {
  s->crc = txmq_crc32c(s->crc, p, n);
}

static int snap_tx(void* arg, const txmq_tx_info_t* info) {
  snap_t* s = arg;
  s->txs++;
  fold(s, info->tx_id, TXMQ_TX_ID_LEN);
  uint32_t v[3] = {(uint32_t)info->state, info->check_count, info->nmsgs};
  fold(s, v, sizeof v);
  fold(s, info->group, strlen(info->group));
  fold(s, &info->half_pos, sizeof info->half_pos);
  return 0;
}

static void snapshot(txmq_runtime_t* rt, snap_t* s) {
  memset(s, 0, sizeof *s);
  txmq_store_t* st = txmq_runtime_store(rt);
  s->topics = txmq_store_topic_count(st);
  for (size_t i = 0; i < s->topics; i++) {
    const char* t = txmq_store_topic_name(st, i);
    FZ_CHECK(t != NULL);
    fold(s, t, strlen(t));
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
  txmq_tx_list(txmq_runtime_tx(rt), NULL, snap_tx, s);
}

static void on_rt_closed(txmq_runtime_t* rt, void* arg) {
  (void)rt;
  *(int*)arg = 1;
}

/* Opens a runtime on data; 0 and *out, or the open's code (closed and
 * freed). */
static int rt_open(const char* data, const char* scripts,
                   txmq_runtime_t** out) {
  txmq_runtime_t* rt = NULL;
  FZ_CHECK(txmq_runtime_new(&rt, &g_loop, data, scripts) == 0);
  txmq_store_t* st = txmq_runtime_store(rt);
  FZ_CHECK(txmq_store_set(st, TXMQ_STORE_OPT_SYNC, TXMQ_SYNC_NEVER) == 0);
  txmq_tx_t* tx = txmq_runtime_tx(rt);
  FZ_CHECK(txmq_tx_set(tx, TXMQ_TX_OPT_MANUAL_CLOCK, 1) == 0);
  txmq_tx_clock_t clk = {fixed_mono, fixed_wall, NULL};
  txmq_tx_set_clock(tx, &clk);
  FZ_CHECK(txmq_script_host_set(txmq_runtime_scripts(rt),
                                TXMQ_SCRIPT_OPT_WATCH, 0) == 0);
  int rc = txmq_runtime_open(rt);
  if (g_verbose)
    fprintf(stderr, "open: %s; runtime: %s; store: %s\n", txmq_err_name(rc),
            txmq_runtime_diag(rt), txmq_store_diag(st));
  if (rc != 0) FZ_CHECK(txmq_runtime_diag(rt)[0] != '\0');
  if (rc != 0) {
    int closed = 0;
    FZ_CHECK(txmq_runtime_close(rt, on_rt_closed, &closed) == 0);
    FZ_CHECK(fz_run_until(&g_loop, &closed, 60000));
    txmq_runtime_free(rt);
    return rc;
  }
  *out = rt;
  return 0;
}

static void rt_close(txmq_runtime_t* rt) {
  int closed = 0;
  FZ_CHECK(txmq_runtime_close(rt, on_rt_closed, &closed) == 0);
  FZ_CHECK(fz_run_until(&g_loop, &closed, 60000));
  txmq_runtime_free(rt);
}

static void replay(const rec_t* recs, size_t n, int ckpt, int reopen) {
  char* data = fz_path(g_root, "data");
  char* scripts = fz_path(g_root, "scripts");
  fz_rmrf(data);
  FZ_CHECK(mkdir(data, 0755) == 0);
  mkdir(scripts, 0755);
  write_log(data, recs, n);
  if (ckpt) {
    for (size_t i = 0; i < n; i++) {
      if (recs[i].type == 0) {
        write_checkpoint(data, recs[i].p, recs[i].len);
        break;
      }
    }
  }
  txmq_runtime_t* rt = NULL;
  if (rt_open(data, scripts, &rt) == 0) {
    snap_t a, b;
    snapshot(rt, &a);
    if (g_verbose)
      fprintf(stderr, "topics %llu queues %llu msgs %llu txs %llu\n",
              (unsigned long long)a.topics, (unsigned long long)a.queues,
              (unsigned long long)a.msgs, (unsigned long long)a.txs);
    rt_close(rt);
    if (reopen) {
      rt = NULL;
      int rc = rt_open(data, scripts, &rt);
      if (rc != 0) {
        fprintf(stderr, "second open: %s\n", txmq_err_name(rc));
        FZ_CHECK(!"a runtime that opened and closed opens again");
      }
      snapshot(rt, &b);
      if (memcmp(&a, &b, sizeof a) != 0) {
        fprintf(stderr,
                "first open:  topics %llu queues %llu msgs %llu txs %llu "
                "crc %08x\nsecond open: topics %llu queues %llu msgs %llu "
                "txs %llu crc %08x\n",
                (unsigned long long)a.topics, (unsigned long long)a.queues,
                (unsigned long long)a.msgs, (unsigned long long)a.txs, a.crc,
                (unsigned long long)b.topics, (unsigned long long)b.queues,
                (unsigned long long)b.msgs, (unsigned long long)b.txs, b.crc);
        FZ_CHECK(!"close and open again keeps the state");
      }
      rt_close(rt);
    }
  }
  fz_rmrf(data);
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
  if (flags & 1) replay(recs, n, flags & 2, flags & 4);
  return 0;
}
