/*
 * store.c - the store of txmq/store.h: topics and queues over the commit
 * log, puts and publishes, reads by queue offset, consumer offsets, open
 * (checkpoint + replay of the log's tail) and close.
 *
 * Every append goes through the store (append_wrapped), so the store knows
 * the log position below which every record has been applied to the
 * indexes ("applied"): an append's completion callback first does what the
 * record asks (index a plain message, or run the owner's callback, which
 * may publish), then moves applied past the batch. The log runs callbacks in
 * append order, so applied only grows and queue offsets follow log order.
 *
 * It does not write the index files itself (index.c) nor the checkpoint
 * (checkpoint.c), and it knows nothing of transactions: other parts store
 * their records with txmq_store_append and make their messages visible with
 * txmq_store_publish.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <fcntl.h>
#include <unistd.h>

#include "store/store_impl.h"

#define DEFAULT_QUEUES 4
#define DEFAULT_CKPT_INTERVAL_MS 5000
/* The engine's snapshot holds the loop while it is captured (tens of ms
 * with a million pending transactions), so not at every checkpoint: a
 * crash replays at most this much of the log beyond it. */
#define DEFAULT_SNAP_INTERVAL_MS 60000
#define DEFAULT_MAX_TOPICS 4096

/* What an append's completion has to do. */
enum { APP_PUT = 1, APP_TOPIC, APP_FOREIGN };

typedef struct {
  txmq_store_t* st;
  int kind;
  uint64_t pos; /* first record */
  uint64_t end; /* after the last record */
  uint32_t len; /* APP_PUT: the record's payload length */
  txmq_msg_t* msg;
  txmq_store_put_cb put_cb;
  txmq_log_append_cb cb;
  void* arg;
} app_ctx_t;

static void close_final_ckpt(txmq_store_t* st);

/* ---- diagnostics ---- */

static void diag_v(txmq_store_t* st, int append, const char* fmt, va_list ap) {
  /* Open tells everything it found, so nothing replaces during open. */
  if (st->state == TXMQ__ST_OPENING) append = 1;
  size_t n = append ? strlen(st->diag) : 0;
  if (append && n > 0 && n + 2 < sizeof st->diag) {
    memcpy(st->diag + n, "; ", 3);
    n += 2;
  }
  if (n < sizeof st->diag) vsnprintf(st->diag + n, sizeof st->diag - n, fmt, ap);
}

void txmq__store_diag_set(txmq_store_t* st, const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  diag_v(st, 0, fmt, ap);
  va_end(ap);
}

void txmq__store_diag_add(txmq_store_t* st, const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  diag_v(st, 1, fmt, ap);
  va_end(ap);
}

const char* txmq_store_diag(const txmq_store_t* st) { return st->diag; }
uint64_t txmq_store_replayed(const txmq_store_t* st) { return st->replayed; }
txmq_log_t* txmq_store_log(txmq_store_t* st) { return st->log; }

/* ---- new, options ---- */

static char* join(const char* a, const char* b) {
  size_t n = strlen(a) + strlen(b) + 2;
  char* p = malloc(n);
  if (p != NULL) snprintf(p, n, "%s/%s", a, b);
  return p;
}

int txmq_store_new(txmq_store_t** out, uv_loop_t* loop, const char* data_dir) {
  if (out == NULL || data_dir == NULL || data_dir[0] == '\0')
    return TXMQ_EINVAL;
  *out = NULL;
  txmq_store_t* st = calloc(1, sizeof *st);
  if (st == NULL) return TXMQ_ENOMEM;
  st->loop = loop;
  txmq__pool_init(&st->app_pool, sizeof(app_ctx_t), 1024);
  st->dir = strdup(data_dir);
  st->index_dir = join(data_dir, "index");
  st->ckpt_path = join(data_dir, "checkpoint");
  st->ckpt_tmp = join(data_dir, "checkpoint.tmp");
  st->snap_path[0] = join(data_dir, "snapshot.0");
  st->snap_path[1] = join(data_dir, "snapshot.1");
  st->snap_tmp = join(data_dir, "snapshot.tmp");
  st->snap_slot = -1;
  char* logdir = join(data_dir, "log");
  int rc = TXMQ_ENOMEM;
  if (st->dir && st->index_dir && st->ckpt_path && st->ckpt_tmp &&
      st->snap_path[0] && st->snap_path[1] && st->snap_tmp && logdir)
    rc = txmq_log_new(&st->log, loop, logdir);
  free(logdir);
  if (rc != 0) {
    txmq_store_free(st);
    return rc;
  }
  st->default_queues = DEFAULT_QUEUES;
  st->ckpt_interval_ms = DEFAULT_CKPT_INTERVAL_MS;
  st->snap_interval_ms = DEFAULT_SNAP_INTERVAL_MS;
  st->max_topics = DEFAULT_MAX_TOPICS;
  st->file_entries = TXMQ_STORE_INDEX_FILE_ENTRIES;
  txmq__idgen_init(&st->idgen);
  *out = st;
  return 0;
}

int txmq_store_set(txmq_store_t* st, txmq_store_opt_t opt, int64_t value) {
  if (st->state != TXMQ__ST_NEW) return TXMQ_EBUSY;
  int rc;
  switch (opt) {
    case TXMQ_STORE_OPT_SYNC:
      return txmq_log_set(st->log, TXMQ_LOG_OPT_SYNC, value);
    case TXMQ_STORE_OPT_SYNC_INTERVAL_MS:
      return txmq_log_set(st->log, TXMQ_LOG_OPT_SYNC_INTERVAL_MS, value);
    case TXMQ_STORE_OPT_SEGMENT_SIZE:
      return txmq_log_set(st->log, TXMQ_LOG_OPT_SEGMENT_SIZE, value);
    case TXMQ_STORE_OPT_RECOVER:
      return txmq_log_set(st->log, TXMQ_LOG_OPT_RECOVER, value);
    case TXMQ_STORE_OPT_RETAIN_BYTES:
      return txmq_log_set(st->log, TXMQ_LOG_OPT_RETAIN_BYTES, value);
    case TXMQ_STORE_OPT_RETAIN_SECONDS:
      return txmq_log_set(st->log, TXMQ_LOG_OPT_RETAIN_SECONDS, value);
    case TXMQ_STORE_OPT_READ_ONLY:
      rc = txmq_log_set(st->log, TXMQ_LOG_OPT_READ_ONLY, value);
      if (rc == 0) st->read_only = value != 0;
      return rc;
    case TXMQ_STORE_OPT_DEFAULT_QUEUES:
      if (value < 1 || value > TXMQ_STORE_MAX_QUEUES) return TXMQ_EINVAL;
      st->default_queues = (int)value;
      return 0;
    case TXMQ_STORE_OPT_CHECKPOINT_INTERVAL_MS:
      if (value < 0) return TXMQ_EINVAL;
      st->ckpt_interval_ms = (uint64_t)value;
      return 0;
    case TXMQ_STORE_OPT_MAX_TOPICS:
      if (value < 1) return TXMQ_EINVAL;
      st->max_topics = (size_t)value;
      return 0;
    case TXMQ_STORE_OPT_SNAPSHOT_INTERVAL_MS:
      if (value < 0) return TXMQ_EINVAL;
      st->snap_interval_ms = (uint64_t)value;
      return 0;
  }
  return TXMQ_EINVAL;
}

void txmq_store_set_record_handler(txmq_store_t* st, txmq_store_record_cb cb,
                                   void* arg) {
  st->rec_cb = cb;
  st->rec_arg = arg;
}

void txmq_store_set_replay_floor_cb(txmq_store_t* st,
                                    txmq_store_replay_floor_cb cb, void* arg) {
  st->floor_cb = cb;
  st->floor_arg = arg;
}

void txmq__store_set_snapshot(txmq_store_t* st,
                              const txmq__store_snap_ops_t* ops, void* arg) {
  st->snap_ops = ops;
  st->snap_arg = ops != NULL ? arg : NULL;
}

uint64_t txmq__store_applied(const txmq_store_t* st) { return st->applied; }

void txmq__store_set_publish_cb(txmq_store_t* st, txmq__store_publish_cb cb,
                                void* arg) {
  st->pub_cb = cb;
  st->pub_arg = cb != NULL ? arg : NULL;
}

int txmq__store_set_decoder(txmq_store_t* st, uint8_t type,
                            txmq__rec_decode_cb fn, void* arg) {
  if (type < TXMQ_REC_FIRST_FOREIGN) return TXMQ_EINVAL;
  st->decoders[type].fn = fn;
  st->decoders[type].arg = arg;
  return 0;
}

int txmq__store_set_index_file_entries(txmq_store_t* st, uint32_t n) {
  if (st->state != TXMQ__ST_NEW) return TXMQ_EBUSY;
  if (n == 0 || n > TXMQ_STORE_INDEX_FILE_ENTRIES) return TXMQ_EINVAL;
  st->file_entries = n;
  return 0;
}

/* ---- topics ---- */

txmq__topic_t* txmq__store_topic(const txmq_store_t* st, const char* name) {
  return txmq__smap_get(&st->topic_map, name);
}

static void topic_free(txmq__topic_t* t) {
  if (t == NULL) return;
  if (t->queues != NULL) {
    for (int q = 0; q < t->nqueues; q++) txmq__index_unmap(&t->queues[q]);
  }
  free(t->queues);
  free(t->name);
  free(t);
}

int txmq__store_topic_add(txmq_store_t* st, const char* name, int nqueues,
                          txmq__topic_t** out) {
  txmq__topic_t* t = calloc(1, sizeof *t);
  if (t == NULL) return TXMQ_ENOMEM;
  t->name = strdup(name);
  t->nqueues = nqueues;
  t->queues = calloc((size_t)nqueues, sizeof *t->queues);
  if (t->name == NULL || t->queues == NULL) goto oom;
  if (st->ntopics == st->topics_cap) {
    size_t cap = st->topics_cap ? st->topics_cap * 2 : 16;
    txmq__topic_t** v = realloc(st->topics, cap * sizeof *v);
    if (v == NULL) goto oom;
    st->topics = v;
    st->topics_cap = cap;
  }
  if (txmq__smap_put(&st->topic_map, t->name, t) != 0) goto oom;
  st->topics[st->ntopics++] = t;
  st->mutations++;
  if (out != NULL) *out = t;
  return 0;
oom:
  topic_free(t);
  return TXMQ_ENOMEM;
}

void txmq__store_forget_all(txmq_store_t* st) {
  for (size_t i = 0; i < st->ntopics; i++) topic_free(st->topics[i]);
  free(st->topics);
  st->topics = NULL;
  st->ntopics = st->topics_cap = 0;
  txmq__smap_free(&st->topic_map);
  for (size_t i = 0; i < st->noffsets; i++) {
    free(st->offsets[i]->key);
    free(st->offsets[i]->group);
    free(st->offsets[i]->topic);
    free(st->offsets[i]);
  }
  free(st->offsets);
  st->offsets = NULL;
  st->noffsets = st->offsets_cap = 0;
  txmq__smap_free(&st->offset_map);
}

int txmq_store_topic_queues(const txmq_store_t* st, const char* topic) {
  const txmq__topic_t* t = topic ? txmq__store_topic(st, topic) : NULL;
  return t ? t->nqueues : TXMQ_ENOTFOUND;
}

size_t txmq_store_topic_count(const txmq_store_t* st) { return st->ntopics; }

const char* txmq_store_topic_name(const txmq_store_t* st, size_t i) {
  return i < st->ntopics ? st->topics[i]->name : NULL;
}

static txmq__queue_t* find_queue(const txmq_store_t* st, const char* topic,
                                 int qid) {
  txmq__topic_t* t = topic ? txmq__store_topic(st, topic) : NULL;
  if (t == NULL || qid < 0 || qid >= t->nqueues) return NULL;
  return &t->queues[qid];
}

/* ---- appends ---- */

/* Why the store cannot take a write now, or 0. */
static int writable(const txmq_store_t* st) {
  if (st->state == TXMQ__ST_OPENING) return TXMQ_EBUSY;
  if (st->state != TXMQ__ST_OPEN) return TXMQ_ECLOSED;
  if (st->read_only) return TXMQ_EROFS;
  if (st->index_failed) return TXMQ_EFAILED;
  return 0;
}

static int publish_int(txmq_store_t* st, uint64_t rec_pos, uint32_t rec_len,
                       uint32_t sub, const txmq_msg_t* msg, int64_t* offset);

static void on_appended(txmq_log_t* log, int status, uint64_t first_pos,
                        void* arg) {
  app_ctx_t* c = arg;
  txmq_store_t* st = c->st;
  switch (c->kind) {
    case APP_PUT:
      if (status == 0) {
        int64_t off;
        status = publish_int(st, c->pos, c->len, 0, c->msg, &off);
        if (status == 0) txmq__msg_set_queue_offset(c->msg, off);
      }
      if (c->put_cb != NULL) c->put_cb(st, status, c->msg, c->arg);
      break;
    case APP_FOREIGN:
      if (c->cb != NULL) c->cb(log, status, first_pos, c->arg);
      break;
    default:
      break;
  }
  /* Only now is everything the batch asked for in the indexes. */
  if (status == 0 && !st->index_failed && c->end > st->applied)
    st->applied = c->end;
  txmq_msg_free(c->msg);
  txmq__pool_put(&st->app_pool, c);
}

/* Appends through the log with c as the completion; fills c->pos, c->end
 * and positions (if not NULL). On failure c is untouched (the caller frees
 * it) and no callback will run. */
static int append_wrapped(txmq_store_t* st, const txmq_log_rec_t* recs,
                          size_t n, uint64_t* positions, app_ctx_t* c) {
  uint64_t local[8];
  uint64_t* pos = n <= 8 ? local : malloc(n * sizeof *pos);
  if (pos == NULL) return TXMQ_ENOMEM;
  c->st = st;
  int rc = txmq_log_append(st->log, recs, n, pos, on_appended, c);
  if (rc == 0) {
    c->pos = pos[0];
    c->end = pos[n - 1] + TXMQ_LOG_RECORD_HEADER_SIZE + recs[n - 1].len;
    if (positions != NULL) memcpy(positions, pos, n * sizeof *pos);
  }
  if (pos != local) free(pos);
  return rc;
}

/* Creates a topic: a TXMQ_REC_TOPIC record, then the topic in memory (at
 * once, so that the next put finds it; the record precedes the messages in
 * the log, so a replay sees them in the same order). */
static int create_topic_logged(txmq_store_t* st, const char* name, int nqueues,
                               txmq__topic_t** out) {
  if (st->ntopics >= st->max_topics) {
    txmq__store_diag_set(st, "topic limit reached (max_topics = %zu): topic "
                         "'%s' not created", st->max_topics, name);
    return TXMQ_ERANGE;
  }
  msgpack_sbuffer sb;
  msgpack_packer pk;
  msgpack_sbuffer_init(&sb);
  msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
  size_t n = strlen(name);
  if (msgpack_pack_array(&pk, 2) || msgpack_pack_str(&pk, n) ||
      msgpack_pack_str_body(&pk, name, n) || msgpack_pack_int(&pk, nqueues)) {
    msgpack_sbuffer_destroy(&sb);
    return TXMQ_ENOMEM;
  }
  app_ctx_t* c = txmq__pool_get(&st->app_pool);
  if (c == NULL) {
    msgpack_sbuffer_destroy(&sb);
    return TXMQ_ENOMEM;
  }
  c->kind = APP_TOPIC;
  txmq_log_rec_t rec = {TXMQ_REC_TOPIC, sb.data, (uint32_t)sb.size};
  int rc = append_wrapped(st, &rec, 1, NULL, c);
  msgpack_sbuffer_destroy(&sb);
  if (rc != 0) {
    txmq__pool_put(&st->app_pool, c);
    return rc;
  }
  return txmq__store_topic_add(st, name, nqueues, out);
}

int txmq_store_create_topic(txmq_store_t* st, const char* topic, int nqueues) {
  int rc = writable(st);
  if (rc != 0) return rc;
  if (!txmq_name_valid(topic)) return TXMQ_EBADNAME;
  if (nqueues < 1 || nqueues > TXMQ_STORE_MAX_QUEUES) return TXMQ_EINVAL;
  if (txmq__store_topic(st, topic) != NULL) return TXMQ_EEXIST;
  return create_topic_logged(st, topic, nqueues, NULL);
}

int txmq_store_prepare(txmq_store_t* st, txmq_msg_t* msg) {
  if (msg == NULL) return TXMQ_EINVAL;
  int rc = writable(st);
  if (rc != 0) return rc;
  const char* name = txmq_msg_topic(msg);
  if (name == NULL) return TXMQ_EINVAL;
  if (!txmq_name_valid(name)) return TXMQ_EBADNAME;
  txmq__topic_t* t = txmq__store_topic(st, name);
  if (t == NULL) {
    rc = create_topic_logged(st, name, st->default_queues, &t);
    if (rc != 0) return rc;
  }
  int32_t qid = txmq_msg_queue_id(msg);
  if (qid < 0) qid = (int32_t)(t->rr++ % (uint32_t)t->nqueues);
  else if (qid >= t->nqueues) return TXMQ_ENOTFOUND;
  int64_t now = txmq__now_ms();
  uint8_t id[TXMQ_MSG_ID_LEN];
  txmq__idgen_next(&st->idgen, now, id);
  txmq__msg_set_id(msg, id);
  txmq__msg_set_store_ms(msg, now);
  txmq_msg_set_queue_id(msg, qid);
  txmq__msg_set_queue_offset(msg, -1);
  return 0;
}

int txmq_store_put(txmq_store_t* st, txmq_msg_t* msg, txmq_store_put_cb cb,
                   void* arg) {
  int rc = txmq_store_prepare(st, msg);
  if (rc != 0) return rc;
  void* buf;
  size_t len;
  if ((rc = txmq_msg_encode(msg, &buf, &len)) != 0) return rc;
  if (len > TXMQ_LOG_MAX_RECORD) {
    free(buf);
    return TXMQ_ETOOBIG;
  }
  app_ctx_t* c = txmq__pool_get(&st->app_pool);
  if (c == NULL || (c->msg = txmq_msg_clone(msg)) == NULL) {
    txmq__pool_put(&st->app_pool, c);
    free(buf);
    return TXMQ_ENOMEM;
  }
  c->kind = APP_PUT;
  c->len = (uint32_t)len;
  c->put_cb = cb;
  c->arg = arg;
  txmq_log_rec_t rec = {TXMQ_REC_MSG, buf, (uint32_t)len};
  rc = append_wrapped(st, &rec, 1, NULL, c);
  free(buf);
  if (rc != 0) {
    txmq_msg_free(c->msg);
    txmq__pool_put(&st->app_pool, c);
  }
  return rc;
}

int txmq_store_append(txmq_store_t* st, const txmq_log_rec_t* recs, size_t n,
                      uint64_t* positions, txmq_log_append_cb cb, void* arg) {
  if (recs == NULL || n == 0) return TXMQ_EINVAL;
  int rc = writable(st);
  if (rc != 0) return rc;
  for (size_t i = 0; i < n; i++)
    if (recs[i].type < TXMQ_REC_FIRST_FOREIGN) return TXMQ_EINVAL;
  app_ctx_t* c = txmq__pool_get(&st->app_pool);
  if (c == NULL) return TXMQ_ENOMEM;
  c->kind = APP_FOREIGN;
  c->cb = cb;
  c->arg = arg;
  rc = append_wrapped(st, recs, n, positions, c);
  if (rc != 0) txmq__pool_put(&st->app_pool, c);
  return rc;
}

/* ---- publish and read ---- */

static int topic_grow(txmq_store_t* st, txmq__topic_t* t, int nqueues) {
  txmq__queue_t* q = realloc(t->queues, (size_t)nqueues * sizeof *q);
  if (q == NULL) return TXMQ_ENOMEM;
  memset(q + t->nqueues, 0, (size_t)(nqueues - t->nqueues) * sizeof *q);
  t->queues = q;
  t->nqueues = nqueues;
  st->mutations++;
  return 0;
}

static int publish_hashed(txmq_store_t* st, uint64_t rec_pos,
                          uint32_t rec_len, uint32_t sub, const char* name,
                          int32_t qid, uint32_t h, int64_t* offset) {
  if (name == NULL || qid < 0) return TXMQ_EINVAL;
  txmq__topic_t* t = txmq__store_topic(st, name);
  if (t == NULL && st->replaying && txmq_name_valid(name) &&
      qid < TXMQ_STORE_MAX_QUEUES) {
    /* Its TXMQ_REC_TOPIC record is gone (retention, or a rebuild that
     * starts past it): the messages bring the topic back. */
    int nq = qid + 1 > st->default_queues ? qid + 1 : st->default_queues;
    int rc = txmq__store_topic_add(st, name, nq, &t);
    if (rc != 0) return rc;
    t->from_msgs = 1;
    txmq__store_diag_add(st, "topic %s recreated with %d queues from its "
                         "messages", name, nq);
  } else if (t != NULL && t->from_msgs && st->replaying &&
             qid >= t->nqueues && qid < TXMQ_STORE_MAX_QUEUES) {
    /* A later message of such a topic names a queue beyond the first
     * one's guess: the topic had it, and the message is kept. */
    int rc = topic_grow(st, t, qid + 1);
    if (rc != 0) return rc;
    txmq__store_diag_add(st, "topic %s grown to %d queues from its messages",
                         name, t->nqueues);
  }
  if (t == NULL || qid >= t->nqueues) return TXMQ_ENOTFOUND;
  int rc = txmq__index_append(st, t, qid, rec_pos, rec_len, h, sub);
  if (rc != 0) {
    /* The record is durable but not indexed: stop applied here so that the
     * next open replays it, and refuse writes until then. */
    if (!st->replaying) st->index_failed = rc;
    return rc;
  }
  if (offset != NULL) *offset = t->queues[qid].count - 1;
  /* Replayed messages were visible before the restart: nobody waits for
   * them, so only live puts and publishes are announced. */
  if (!st->replaying && st->pub_cb != NULL)
    st->pub_cb(st->pub_arg, t->name, qid, t->queues[qid].count - 1);
  return 0;
}

static int publish_int(txmq_store_t* st, uint64_t rec_pos, uint32_t rec_len,
                       uint32_t sub, const txmq_msg_t* msg, int64_t* offset) {
  const char* tags = txmq_msg_tags(msg);
  return publish_hashed(st, rec_pos, rec_len, sub, txmq_msg_topic(msg),
                        txmq_msg_queue_id(msg),
                        tags ? txmq__tags_hash(tags, strlen(tags)) : 0,
                        offset);
}

/* What may publish now: 0, or why not (the same for both forms). */
static int publish_allowed(txmq_store_t* st, int* skip) {
  *skip = 0;
  if (st->replaying) {
    /* Publishes of records before the checkpoint are in the index. */
    *skip = st->replay_cur_applied;
    return 0;
  }
  /* Append callbacks still run while the store closes. */
  if (st->state != TXMQ__ST_OPEN && st->state != TXMQ__ST_CLOSING)
    return TXMQ_ECLOSED;
  if (st->read_only) return TXMQ_EROFS;
  if (st->index_failed) return TXMQ_EFAILED;
  return 0;
}

int txmq__store_publish_hashed(txmq_store_t* st, uint64_t rec_pos,
                               uint32_t rec_len, uint32_t sub,
                               const char* topic, int32_t qid,
                               uint32_t tags_hash, int64_t* offset) {
  if (offset != NULL) *offset = -1;
  if (st == NULL || topic == NULL) return TXMQ_EINVAL;
  int skip;
  int rc = publish_allowed(st, &skip);
  if (rc != 0 || skip) return rc;
  return publish_hashed(st, rec_pos, rec_len, sub, topic, qid, tags_hash,
                        offset);
}

int txmq_store_publish(txmq_store_t* st, uint64_t rec_pos, uint32_t rec_len,
                       uint32_t sub, const txmq_msg_t* msg, int64_t* offset) {
  if (offset != NULL) *offset = -1;
  if (msg == NULL) return TXMQ_EINVAL;
  int skip;
  int rc = publish_allowed(st, &skip);
  if (rc != 0 || skip) return rc;
  return publish_int(st, rec_pos, rec_len, sub, msg, offset);
}

static int readable(const txmq_store_t* st) {
  if (st->replaying) return 0;
  if (st->state == TXMQ__ST_OPEN) return 0;
  if (st->state == TXMQ__ST_CLOSING && !st->close_log_started) return 0;
  return TXMQ_ECLOSED;
}

int txmq_store_get(txmq_store_t* st, const char* topic, int qid,
                   int64_t offset, txmq_msg_t** out) {
  if (out == NULL) return TXMQ_EINVAL;
  *out = NULL;
  int rc = readable(st);
  if (rc != 0) return rc;
  txmq__queue_t* q = find_queue(st, topic, qid);
  if (q == NULL) return TXMQ_ENOTFOUND;
  txmq__index_update_begin(st, q);
  if (offset < q->begin || offset >= q->count) return TXMQ_ERANGE;
  uint64_t pos;
  uint32_t len, sub;
  txmq__index_read(q, offset, &pos, &len, NULL, &sub);
  txmq_log_entry_t e;
  rc = txmq_log_read(st->log, pos, &e);
  if (rc == TXMQ_ERANGE) {
    txmq__store_diag_set(st, "%s/%d@%" PRId64 ": record at %" PRIu64
                         " is no longer in the log", topic, qid, offset, pos);
    return rc;
  }
  if (rc != 0) {
    txmq__store_diag_set(st, "%s/%d@%" PRId64 ": cannot read record at %"
                         PRIu64 ": %s", topic, qid, offset, pos,
                         txmq_log_diag(st->log));
    return rc;
  }
  if (e.len != len) {
    txmq__store_diag_set(st, "%s/%d@%" PRId64 ": index says the record at %"
                         PRIu64 " has %" PRIu32 " bytes, the log says %" PRIu32,
                         topic, qid, offset, pos, len, e.len);
    return TXMQ_ECORRUPT;
  }
  txmq_msg_t* m = NULL;
  if (e.type == TXMQ_REC_MSG) {
    if (sub != 0 || txmq_msg_decode(e.data, e.len, &m) != 0) {
      txmq__store_diag_set(st, "%s/%d@%" PRId64 ": message record at %" PRIu64
                           " does not decode (sub %" PRIu32 ")", topic, qid,
                           offset, pos, sub);
      return TXMQ_ECORRUPT;
    }
  } else if (e.type >= TXMQ_REC_FIRST_FOREIGN && st->decoders[e.type].fn) {
    rc = st->decoders[e.type].fn(st->decoders[e.type].arg, &e, sub, &m);
    if (rc != 0) {
      txmq__store_diag_set(st, "%s/%d@%" PRId64 ": record of type %u at %"
                           PRIu64 " gave no message %" PRIu32 ": %s", topic,
                           qid, offset, e.type, pos, sub, txmq_err_name(rc));
      return rc;
    }
  } else {
    txmq__store_diag_set(st, "%s/%d@%" PRId64 ": record of type %u at %" PRIu64
                         " holds no message this store can read (no decoder)",
                         topic, qid, offset, e.type, pos);
    return TXMQ_EPROTO;
  }
  /* The record must be the message the index promised. */
  if (m == NULL || txmq_msg_topic(m) == NULL ||
      strcmp(txmq_msg_topic(m), topic) != 0 ||
      (txmq_msg_queue_id(m) >= 0 && txmq_msg_queue_id(m) != qid)) {
    txmq__store_diag_set(st, "%s/%d@%" PRId64 ": record at %" PRIu64
                         " holds a message of %s/%d", topic, qid, offset, pos,
                         m && txmq_msg_topic(m) ? txmq_msg_topic(m) : "?",
                         m ? txmq_msg_queue_id(m) : -1);
    txmq_msg_free(m);
    return TXMQ_ECORRUPT;
  }
  txmq_msg_set_queue_id(m, qid);
  txmq__msg_set_queue_offset(m, offset);
  *out = m;
  return 0;
}

int txmq_store_queue_range(txmq_store_t* st, const char* topic, int qid,
                           int64_t* begin, int64_t* end) {
  txmq__queue_t* q = find_queue(st, topic, qid);
  if (q == NULL) return TXMQ_ENOTFOUND;
  if (readable(st) == 0) txmq__index_update_begin(st, q);
  if (begin != NULL) *begin = q->begin;
  if (end != NULL) *end = q->count;
  return 0;
}

uint32_t txmq_store_tags_hash(const char* tags) {
  return tags ? txmq__tags_hash(tags, strlen(tags)) : 0;
}

int txmq_store_entry(txmq_store_t* st, const char* topic, int qid,
                     int64_t offset, uint64_t* rec_pos, uint32_t* tags_hash) {
  txmq__queue_t* q = find_queue(st, topic, qid);
  if (q == NULL) return TXMQ_ENOTFOUND;
  if (readable(st) == 0) txmq__index_update_begin(st, q);
  if (offset < q->begin || offset >= q->count) return TXMQ_ERANGE;
  txmq__index_read(q, offset, rec_pos, NULL, tags_hash, NULL);
  return 0;
}

/* ---- consumer offsets ---- */

static int offset_key(char* buf, size_t cap, const char* group,
                      const char* topic, int qid) {
  int n = snprintf(buf, cap, "%s\1%s\1%d", group, topic, qid);
  return n < 0 || (size_t)n >= cap ? -1 : 0;
}

#define OFFSET_KEY_MAX (2 * TXMQ_NAME_MAX + 16)

int txmq__store_offset_put(txmq_store_t* st, const char* group,
                           const char* topic, int qid, int64_t offset) {
  char key[OFFSET_KEY_MAX];
  if (offset_key(key, sizeof key, group, topic, qid) != 0) return TXMQ_EINVAL;
  txmq__offset_t* o = txmq__smap_get(&st->offset_map, key);
  if (o != NULL) {
    o->offset = offset;
    return 0;
  }
  o = calloc(1, sizeof *o);
  if (o == NULL) return TXMQ_ENOMEM;
  o->key = strdup(key);
  o->group = strdup(group);
  o->topic = strdup(topic);
  o->qid = qid;
  o->offset = offset;
  if (o->key == NULL || o->group == NULL || o->topic == NULL) goto oom;
  if (st->noffsets == st->offsets_cap) {
    size_t cap = st->offsets_cap ? st->offsets_cap * 2 : 16;
    txmq__offset_t** v = realloc(st->offsets, cap * sizeof *v);
    if (v == NULL) goto oom;
    st->offsets = v;
    st->offsets_cap = cap;
  }
  if (txmq__smap_put(&st->offset_map, o->key, o) != 0) goto oom;
  st->offsets[st->noffsets++] = o;
  return 0;
oom:
  free(o->key);
  free(o->group);
  free(o->topic);
  free(o);
  return TXMQ_ENOMEM;
}

int txmq__store_offset_settable(txmq_store_t* st, const char* topic, int qid,
                                int64_t offset) {
  const txmq__queue_t* q = find_queue(st, topic, qid);
  if (q == NULL) return TXMQ_ENOTFOUND;
  if (offset > q->count) {
    txmq__store_diag_set(st,
                         "offset %" PRId64 " is past the end of %s/%d (%" PRId64
                         "): the group would skip messages not yet written",
                         offset, topic, qid, q->count);
    return TXMQ_ERANGE;
  }
  return 0;
}

int txmq_store_offset_set(txmq_store_t* st, const char* group,
                          const char* topic, int qid, int64_t offset) {
  int rc = writable(st);
  if (rc != 0) return rc;
  if (!txmq_name_valid(group) || !txmq_name_valid(topic)) return TXMQ_EBADNAME;
  if (offset < 0) return TXMQ_EINVAL;
  rc = txmq__store_offset_settable(st, topic, qid, offset);
  if (rc != 0) return rc;
  rc = txmq__store_offset_put(st, group, topic, qid, offset);
  if (rc == 0) st->mutations++;
  return rc;
}

int txmq_store_offset_get(const txmq_store_t* st, const char* group,
                          const char* topic, int qid, int64_t* offset) {
  if (!txmq_name_valid(group) || !txmq_name_valid(topic)) return TXMQ_EBADNAME;
  char key[OFFSET_KEY_MAX];
  if (qid < 0 || offset_key(key, sizeof key, group, topic, qid) != 0)
    return TXMQ_ENOTFOUND;
  const txmq__offset_t* o = txmq__smap_get(&st->offset_map, key);
  if (o == NULL) return TXMQ_ENOTFOUND;
  if (offset != NULL) *offset = o->offset;
  return 0;
}

size_t txmq_store_offset_count(const txmq_store_t* st) {
  return st != NULL ? st->noffsets : 0;
}

int txmq_store_offset_at(const txmq_store_t* st, size_t i, const char** group,
                         const char** topic, int* qid, int64_t* offset) {
  if (st == NULL || i >= st->noffsets) return TXMQ_ENOTFOUND;
  const txmq__offset_t* o = st->offsets[i];
  if (group != NULL) *group = o->group;
  if (topic != NULL) *topic = o->topic;
  if (qid != NULL) *qid = o->qid;
  if (offset != NULL) *offset = o->offset;
  return 0;
}

int txmq__store_offset_groups(const txmq_store_t* st,
                              int (*fn)(void* arg, const char* group),
                              void* arg) {
  for (size_t i = 0; i < st->noffsets; i++) {
    int rc = fn(arg, st->offsets[i]->group);
    if (rc != 0) return rc;
  }
  return 0;
}

/* ---- checkpoints and retention ---- */

int txmq_store_checkpoint(txmq_store_t* st, txmq_store_done_cb cb, void* arg) {
  int rc = writable(st);
  if (rc != 0) return rc;
  return txmq__ckpt_start(st, cb, arg);
}

/* The log's retention asks before deleting each old segment. A segment is
 * kept while the next open may need to replay it: from the checkpoint on
 * disk, from the replay floor of other parts, from the snapshot an open
 * would use, or because it is not applied yet. */
static int keep_segment(void* arg, uint64_t base, uint64_t end) {
  (void)base;
  txmq_store_t* st = arg;
  uint64_t need = st->durable_floor;
  if (st->floor_cb != NULL) {
    uint64_t f = st->floor_cb(st, st->floor_arg);
    if (f < need) need = f;
  }
  if (st->snap_slot >= 0 && st->snap_applied < need) need = st->snap_applied;
  if (st->applied < need) need = st->applied;
  return end > need;
}

void txmq__store_ckpt_done(txmq_store_t* st, int status) {
  if (status != 0 || st->state != TXMQ__ST_OPEN) return;
  /* Retention runs after a checkpoint because the checkpoint is what lets
   * old segments go (keep_segment). */
  size_t deleted = 0;
  if (txmq_log_apply_retention(st->log, &deleted) != 0) deleted = 0;
  for (size_t i = 0; i < st->ntopics; i++) {
    txmq__topic_t* t = st->topics[i];
    for (int q = 0; q < t->nqueues; q++) {
      txmq__index_update_begin(st, &t->queues[q]);
      txmq__index_trim(st, t, q);
    }
  }
}

void txmq__store_ckpt_finished(txmq_store_t* st) {
  if (st->close_waiting) {
    st->close_waiting = 0;
    close_final_ckpt(st);
  }
}

static void on_timer(uv_timer_t* h) {
  txmq_store_t* st = h->data;
  if (st->ckpt != NULL || writable(st) != 0) return;
  if (st->ckpt_ever && st->applied == st->ckpt_applied &&
      st->mutations == st->ckpt_mutations)
    return; /* nothing new to record */
  int rc = txmq__ckpt_start(st, NULL, NULL);
  if (rc != 0)
    txmq__store_diag_set(st, "periodic checkpoint not started: %s",
                         txmq_strerror(rc));
}

/* ---- open ---- */

static int replay_topic(txmq_store_t* st, const txmq_log_entry_t* e) {
  msgpack_unpacked u;
  msgpack_unpacked_init(&u);
  int ok = txmq__mp_unpack(e->data, e->len, 2, 8, &u) == 0;
  const msgpack_object* a = &u.data;
  char name[TXMQ_NAME_MAX + 1];
  int64_t nq = 0;
  if (ok) {
    ok = a->type == MSGPACK_OBJECT_ARRAY && a->via.array.size == 2 &&
         a->via.array.ptr[0].type == MSGPACK_OBJECT_STR &&
         txmq_name_valid_n(a->via.array.ptr[0].via.str.ptr,
                           a->via.array.ptr[0].via.str.size) &&
         a->via.array.ptr[1].type == MSGPACK_OBJECT_POSITIVE_INTEGER &&
         a->via.array.ptr[1].via.u64 >= 1 &&
         a->via.array.ptr[1].via.u64 <= TXMQ_STORE_MAX_QUEUES;
  }
  if (ok) {
    memcpy(name, a->via.array.ptr[0].via.str.ptr, a->via.array.ptr[0].via.str.size);
    name[a->via.array.ptr[0].via.str.size] = '\0';
    nq = (int64_t)a->via.array.ptr[1].via.u64;
  }
  msgpack_unpacked_destroy(&u);
  if (!ok) {
    txmq__store_diag_add(st, "skipped a bad topic record at %" PRIu64, e->pos);
    return 0;
  }
  if (txmq__store_topic(st, name) != NULL) return 0;
  return txmq__store_topic_add(st, name, (int)nq, NULL);
}

static int replay_msg(txmq_store_t* st, const txmq_log_entry_t* e) {
  txmq_msg_t* m = NULL;
  if (txmq_msg_decode(e->data, e->len, &m) != 0) {
    txmq__store_diag_add(st, "skipped an undecodable message record at %" PRIu64,
                         e->pos);
    return 0;
  }
  /* A message for a queue its topic does not have (only a damaged or
   * foreign log can hold one) is skipped; a topic that is missing
   * altogether is recreated by publish_int, and grows there to the queues
   * its later messages name. */
  const txmq__topic_t* t = txmq__store_topic(st, txmq_msg_topic(m));
  int qid = txmq_msg_queue_id(m);
  if (qid < 0 || qid >= TXMQ_STORE_MAX_QUEUES ||
      (t && qid >= t->nqueues && !t->from_msgs)) {
    txmq__store_diag_add(st, "skipped the message record at %" PRIu64
                         ": no queue %s/%d", e->pos, txmq_msg_topic(m), qid);
    txmq_msg_free(m);
    return 0;
  }
  int rc = publish_int(st, e->pos, e->len, 0, m, NULL);
  txmq_msg_free(m);
  return rc;
}

/* Replays [from, end): records before the checkpoint's applied only go to
 * the record handler (marked already applied); the others are applied. */
static int replay(txmq_store_t* st, uint64_t from) {
  uint64_t ckpt_applied = st->applied;
  txmq_log_iter_t* it;
  int rc = txmq_log_iter_new(st->log, from, UINT64_MAX, &it);
  if (rc != 0) {
    txmq__store_diag_add(st, "cannot replay the log from %" PRIu64 ": %s", from,
                         txmq_strerror(rc));
    return rc;
  }
  /* Below the checkpoint, the store's own records are in the checkpoint
   * already: step over them by their headers (the other parts' records
   * still come, checked whole). */
  static const uint8_t own[] = {TXMQ_REC_MSG, TXMQ_REC_TOPIC};
  txmq_log_iter_skip(it, ckpt_applied, own, sizeof own);
  int unknown_seen = 0;
  st->replaying = 1;
  for (;;) {
    txmq_log_entry_t e;
    rc = txmq_log_iter_next(it, &e);
    if (rc == TXMQ_ENOTFOUND) {
      rc = 0;
      break;
    }
    if (rc != 0) {
      txmq__store_diag_add(st, "replay stopped after %" PRIu64 " records: %s%s%s",
                           st->replayed, txmq_strerror(rc),
                           txmq_log_diag(st->log)[0] ? ": " : "",
                           txmq_log_diag(st->log));
      break;
    }
    st->replayed++;
    int before = e.pos < ckpt_applied;
    if (e.type == TXMQ_REC_MSG) {
      if (!before) rc = replay_msg(st, &e);
    } else if (e.type == TXMQ_REC_TOPIC) {
      if (!before) rc = replay_topic(st, &e);
    } else if (e.type >= TXMQ_REC_FIRST_FOREIGN) {
      if (st->rec_cb != NULL) {
        st->replay_cur_applied = before;
        rc = st->rec_cb(st, &e, before, st->rec_arg);
        st->replay_cur_applied = 0;
        if (rc != 0)
          txmq__store_diag_add(st, "the record handler refused the record of "
                               "type %u at %" PRIu64 ": %s", e.type, e.pos,
                               txmq_err_name(rc));
      }
    } else if (!unknown_seen) {
      unknown_seen = 1;
      txmq__store_diag_add(st, "skipped store records of unknown type %u "
                           "(first at %" PRIu64 ")", e.type, e.pos);
    }
    if (rc != 0) break;
    if (!before && e.next > st->applied) st->applied = e.next;
  }
  st->replaying = 0;
  txmq_log_iter_free(it);
  return rc;
}

static void free_closed_log(txmq_log_t* log, void* arg) {
  (void)arg;
  txmq_log_free(log);
}

/* Moves a checkpoint that cannot be trusted out of the way (kept for a
 * post-mortem as checkpoint.bad): after the rebuild its counts would be
 * wrong, and a crash before the next checkpoint must not bring it back. */
static int retire_checkpoint(txmq_store_t* st) {
  char* bad = join(st->dir, "checkpoint.bad");
  if (bad == NULL) return TXMQ_ENOMEM;
  int rc = 0;
  if (rename(st->ckpt_path, bad) != 0 && errno != ENOENT) {
    rc = txmq_err_from_errno(errno);
    txmq__store_diag_add(st, "cannot move the checkpoint aside: %s",
                         strerror(errno));
  } else {
    int fd = open(st->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
      fsync(fd);
      close(fd);
    }
  }
  free(bad);
  return rc;
}

/* Whether a position a checkpoint names is one a replay can start from:
 * 0 at the log's begin or end or where a valid record starts,
 * TXMQ_ECORRUPT where none does, another code when the log could not be
 * read there (then nothing is decided). Below the begin is not decided
 * here (retention may have passed it). */
static int at_record(txmq_log_t* log, uint64_t pos, uint64_t lb, uint64_t le) {
  if (pos <= lb || pos >= le) return 0;
  txmq_log_entry_t e;
  int rc = txmq_log_read(log, pos, &e);
  return rc == TXMQ_ERANGE ? TXMQ_ECORRUPT : rc;
}

int txmq_store_open(txmq_store_t* st) {
  if (st->state != TXMQ__ST_NEW) return TXMQ_EBUSY;
  if (st->loop == NULL && !st->read_only) return TXMQ_EINVAL;
  st->diag[0] = '\0';
  st->state = TXMQ__ST_OPENING;
  int rc;
  if (!st->read_only && mkdir(st->dir, 0755) != 0 && errno != EEXIST) {
    rc = txmq_err_from_errno(errno);
    txmq__store_diag_add(st, "cannot create %s: %s", st->dir, strerror(errno));
    st->state = TXMQ__ST_FAILED;
    return rc;
  }
  rc = txmq_log_open(st->log);
  if (rc != 0) {
    txmq__store_diag_add(st, "log: %s", txmq_log_diag(st->log));
    st->state = TXMQ__ST_FAILED;
    return rc;
  }
  if (txmq_log_diag(st->log)[0]) txmq__store_diag_add(st, "log: %s",
                                                      txmq_log_diag(st->log));
  if (txmq_log_is_read_only(st->log) && !st->read_only) {
    st->read_only = 1;
    txmq__store_diag_add(st, "the log opened read-only, so does the store");
  }

  uint64_t lb = txmq_log_begin(st->log), le = txmq_log_end(st->log);
  uint64_t applied = lb, replay_from = lb, snap_at = lb;
  int rebuild = 0, have_file = 1;
  rc = txmq__ckpt_load(st, &applied, &replay_from, &snap_at);
  if (rc == TXMQ_ENOTFOUND) {
    rebuild = 1;
    have_file = 0;
    if (le > lb)
      txmq__store_diag_add(st, "no checkpoint: rebuilding the indexes from the "
                           "log");
  } else if (rc == TXMQ_ECORRUPT) {
    rebuild = 1;
    txmq__store_diag_add(st, "rebuilding the indexes from the log");
  } else if (rc != 0) {
    goto fail;
  } else if (applied > le) {
    rebuild = 1;
    txmq__store_diag_add(st, "checkpoint is ahead of the log (applied %" PRIu64
                         ", log ends at %" PRIu64 "): rebuilding the indexes",
                         applied, le);
  } else if ((rc = at_record(st->log, applied, lb, le)) != 0 ||
             (rc = at_record(st->log, replay_from, lb, le)) != 0) {
    /* Its checksum holds, yet a replay from there would start inside a
     * record; and a close would write the same positions again. A read
     * that failed for another reason says nothing of the checkpoint. */
    if (rc != TXMQ_ECORRUPT) {
      txmq__store_diag_add(st, "log: %s", txmq_log_diag(st->log));
      goto fail;
    }
    rebuild = 1;
    txmq__store_diag_add(st, "checkpoint positions (applied %" PRIu64
                         ", replay from %" PRIu64 ") are not where records "
                         "start: rebuilding the indexes", applied,
                         replay_from);
  } else {
    for (size_t i = 0; i < st->ntopics && !rebuild; i++) {
      txmq__topic_t* t = st->topics[i];
      for (int q = 0; q < t->nqueues && !rebuild; q++) {
        rc = txmq__index_load(st, t, q);
        if (rc == TXMQ_ECORRUPT) {
          rebuild = 1;
          txmq__store_diag_add(st, "rebuilding the indexes from the log");
        } else if (rc != 0) {
          goto fail;
        }
      }
    }
  }
  rc = 0;
  if (rebuild) {
    /* Topics and offsets of a sound checkpoint are kept; its counts are
     * not: every queue is rebuilt from the start of the log. */
    for (size_t i = 0; i < st->ntopics; i++) {
      txmq__topic_t* t = st->topics[i];
      t->dir_made = 0; /* the index directory is about to go */
      for (int q = 0; q < t->nqueues; q++) {
        txmq__index_unmap(&t->queues[q]);
        memset(&t->queues[q], 0, sizeof t->queues[q]);
      }
    }
    if (!st->read_only) {
      if (have_file && (rc = retire_checkpoint(st)) != 0) goto fail;
      if ((rc = txmq__index_remove_all(st)) != 0) goto fail;
    }
    applied = replay_from = lb;
  }
  uint64_t from = replay_from < applied ? replay_from : applied;
  /* With the registered part's snapshot loaded (of this checkpoint or an
   * earlier one), nothing below its position needs replaying; without it,
   * the part rebuilds its state from the replay floor as it always could
   * (only slower). */
  if (!rebuild && st->snap_ops != NULL) {
    char why[600];
    int src = TXMQ_ECORRUPT;
    if (at_record(st->log, snap_at, lb, le) == 0)
      src = txmq__snap_load(st, snap_at, lb, why, sizeof why);
    else
      snprintf(why, sizeof why, "snapshot.0 and snapshot.1 not read: the "
               "checkpoint names a snapshot at %" PRIu64 ", where no record "
               "starts", snap_at);
    if (src == 0) {
      from = snap_at;
    } else {
      txmq__store_diag_add(st, "%s (%s): replaying the log from the replay "
                           "floor at %" PRIu64 " instead of the checkpoint "
                           "at %" PRIu64,
                           src == TXMQ_ENOTFOUND ? "no snapshot"
                                                 : "snapshot not used",
                           why, from, applied);
    }
  }
  if (from < lb) from = lb;
  st->applied = applied;
  st->ckpt_applied = applied;
  st->ckpt_ever = !rebuild;
  st->durable_floor = from;
  if ((rc = replay(st, from)) != 0) goto fail;
  st->ckpt_mutations = st->mutations;

  txmq_log_set_keep_cb(st->log, keep_segment, st);
  if (st->loop != NULL) {
    st->timer = malloc(sizeof *st->timer);
    if (st->timer == NULL) {
      rc = TXMQ_ENOMEM;
      goto fail;
    }
    uv_timer_init(st->loop, st->timer);
    st->timer->data = st;
    if (!st->read_only && st->ckpt_interval_ms > 0)
      uv_timer_start(st->timer, on_timer, st->ckpt_interval_ms,
                     st->ckpt_interval_ms);
  }
  st->state = TXMQ__ST_OPEN;
  /* A rebuilt index gets its checkpoint at once rather than at the next
   * tick: until then a crash would mean another full replay. */
  if (rebuild && !st->read_only && le > lb) txmq__ckpt_start(st, NULL, NULL);
  return 0;

fail:
  /* The log is open: close it; it frees itself when its writer is gone
   * (at once for a read-only log). The store is left for free(). */
  st->state = TXMQ__ST_FAILED;
  txmq__store_forget_all(st);
  txmq_log_t* log = st->log;
  st->log = NULL;
  if (txmq_log_close(log, free_closed_log, NULL) != 0) txmq_log_free(log);
  return rc;
}

/* ---- close ---- */

static void finish_close(txmq_store_t* st) {
  st->state = TXMQ__ST_CLOSED;
  txmq_store_done_cb cb = st->close_cb;
  st->close_cb = NULL;
  if (cb != NULL) cb(st, st->close_status, st->close_arg);
}

static void on_timer_closed(uv_handle_t* h) {
  txmq_store_t* st = h->data;
  free(h);
  st->timer = NULL;
  finish_close(st);
}

static void on_log_closed(txmq_log_t* log, void* arg) {
  (void)log;
  txmq_store_t* st = arg;
  if (st->timer != NULL) uv_close((uv_handle_t*)st->timer, on_timer_closed);
  else finish_close(st);
}

static void close_log(txmq_store_t* st) {
  st->close_log_started = 1;
  if (txmq_log_close(st->log, on_log_closed, st) != 0) on_log_closed(st->log, st);
}

static void on_final_ckpt(txmq_store_t* st, int status, void* arg) {
  (void)arg;
  if (status != 0 && st->close_status == 0) st->close_status = status;
  close_log(st);
}

static void close_final_ckpt(txmq_store_t* st) {
  /* After an indexing failure the checkpoint on disk is the last sound
   * one; writing another would record entries past applied. */
  if (st->index_failed) {
    st->close_status = st->index_failed;
    close_log(st);
    return;
  }
  int rc = txmq__ckpt_start(st, on_final_ckpt, NULL);
  if (rc != 0) {
    st->close_status = rc;
    close_log(st);
  }
}

int txmq_store_close(txmq_store_t* st, txmq_store_done_cb cb, void* arg) {
  if (st->state != TXMQ__ST_OPEN) return TXMQ_ECLOSED;
  st->state = TXMQ__ST_CLOSING;
  st->close_cb = cb;
  st->close_arg = arg;
  st->close_status = 0;
  if (st->timer != NULL) uv_timer_stop(st->timer);
  if (st->read_only) close_log(st);
  else if (st->ckpt != NULL) st->close_waiting = 1;
  else close_final_ckpt(st);
  return 0;
}

void txmq_store_free(txmq_store_t* st) {
  if (st == NULL) return;
  if (st->state == TXMQ__ST_OPENING || st->state == TXMQ__ST_OPEN ||
      st->state == TXMQ__ST_CLOSING) {
    /* Freeing a store whose log and handles are live would leave the loop
     * with dangling callbacks: a programming error, caught loudly. */
    fprintf(stderr, "txmq_store_free: store is still open\n");
    abort();
  }
  txmq__store_forget_all(st);
  txmq__pool_drain(&st->app_pool);
  if (st->log != NULL) txmq_log_free(st->log);
  txmq__strv_free(&st->sync_files);
  txmq__strv_free(&st->sync_dirs);
  free(st->dir);
  free(st->index_dir);
  free(st->ckpt_path);
  free(st->ckpt_tmp);
  free(st->snap_path[0]);
  free(st->snap_path[1]);
  free(st->snap_tmp);
  free(st);
}
