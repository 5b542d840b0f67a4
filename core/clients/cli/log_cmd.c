/*
 * log_cmd.c - `txmq log dump DIR` and `txmq log verify DIR`: the offline
 * dumper and verifier of the commit log (in the manner of Mosquitto's
 * db_dump). Both open the log read-only with TXMQ_LOG_RECOVER_READONLY, so
 * they never change a file, and read it through the log's own iterator, so
 * they see exactly what the runtime would see.
 *
 * dump prints each segment and each record (decoding messages, topic
 * records and the transaction engine's half and event records, the latter
 * with the engine's own codec so that the tool never reads them differently
 * from a replay); verify reads every record, decodes what it knows, and
 * tells a clean log, a torn tail (an incomplete last write, which the next
 * read-write open cuts) and corruption in the middle (which it names by
 * segment file and position) apart. It does not repair anything.
 */
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <msgpack.h>

#include "clients/cli/cli.h"
#include "tx/tx_int.h"
#include "txmq/error.h"
#include "txmq/log.h"
#include "txmq/msg.h"
#include "txmq/store.h"
#include "txmq/tx.h"

typedef struct {
  const cli_args_t* a;
  char* dir;            /* the log directory actually opened */
  txmq_log_t* log;
  char* open_diag;      /* copy of the diagnostic after open */
  /* Counts of what was read. */
  uint64_t records, bytes, msgs, topics, tx_halfs, tx_events, other;
  /* The first problem found. */
  enum { ST_OK, ST_TORN, ST_CORRUPT } status;
  uint64_t bad_pos;     /* corrupt: first invalid position; torn: cut point */
  uint64_t bad_seg;     /* base of the segment holding bad_pos */
  uint64_t torn_bytes;
  int torn_header;      /* torn: the newest segment's header, not a record */
  int partial;          /* dump --from or -n: records counts only those read */
  char reason[1024];
} logcmd_t;

void cli_usage_log(FILE* f) {
  fputs(
      "usage: txmq log dump DIR [--from POS] [-n N] [--json]\n"
      "       txmq log verify DIR [--json]\n"
      "\n"
      "DIR is a log directory (NNNNNNNNNNNNNNNNNNNN.log segment files) or a\n"
      "data directory holding log/. Both commands only read.\n"
      "\n"
      "dump    prints each segment (base position, data size) and each record\n"
      "        (position, type, length; messages, topics and transaction\n"
      "        records decoded, a half record's messages one per indented\n"
      "        line). Bodies are shown as text when they are printable\n"
      "        UTF-8, else as hex (base64 with --json), and the output says\n"
      "        which.\n"
      "          --from POS  start at the first record at or after POS\n"
      "          -n N        print at most N records\n"
      "verify  reads every record and prints the counts. A torn tail (an\n"
      "        incomplete last write, cut at the next open) is reported but\n"
      "        is not corruption: exit 0. Corruption in the middle, or a\n"
      "        record of a known type whose payload does not decode, exits 1\n"
      "        with the segment file and position on standard error.\n",
      f);
}

/* ---- files ---- */

static int is_segment_name(const char* n) {
  if (strlen(n) != 24 || strcmp(n + 20, ".log") != 0) return 0;
  for (int i = 0; i < 20; i++)
    if (n[i] < '0' || n[i] > '9') return 0;
  return 1;
}

/* 1 if dir holds at least one segment file, 0 if not, -1 (errno) if it
 * cannot be listed. */
static int has_segments(const char* dir) {
  DIR* d = opendir(dir);
  if (!d) return -1;
  int found = 0;
  struct dirent* de;
  while (!found && (de = readdir(d)) != NULL) found = is_segment_name(de->d_name);
  closedir(d);
  return found;
}

static char* join(const char* dir, const char* name) {
  size_t n = strlen(dir) + strlen(name) + 2;
  char* p = malloc(n);
  if (p) snprintf(p, n, "%s%s%s", dir, dir[strlen(dir) - 1] == '/' ? "" : "/", name);
  return p;
}

/* Number of segment files in dir and the base of the newest one. */
static size_t scan_segments(const char* dir, uint64_t* newest) {
  size_t n = 0;
  *newest = 0;
  DIR* d = opendir(dir);
  if (!d) return 0;
  struct dirent* de;
  while ((de = readdir(d)) != NULL) {
    if (!is_segment_name(de->d_name)) continue;
    uint64_t base = strtoull(de->d_name, NULL, 10);
    if (n == 0 || base > *newest) *newest = base;
    n++;
  }
  closedir(d);
  return n;
}

/* Finds the log directory for the DIR argument. */
static int resolve_dir(const char* arg, char** out) {
  struct stat sb;
  if (stat(arg, &sb) != 0) {
    cli_err("%s: %s", arg, strerror(errno));
    return errno == ENOENT || errno == ENOTDIR ? CLI_EXIT_USAGE : CLI_EXIT_DATA;
  }
  if (!S_ISDIR(sb.st_mode)) {
    cli_err("%s: not a directory", arg);
    return CLI_EXIT_USAGE;
  }
  int h = has_segments(arg);
  if (h < 0) {
    cli_err("%s: %s", arg, strerror(errno));
    return CLI_EXIT_DATA;
  }
  if (h) {
    *out = strdup(arg);
    return *out ? 0 : CLI_EXIT_DATA;
  }
  char* sub = join(arg, "log");
  if (!sub) return CLI_EXIT_DATA;
  if (stat(sub, &sb) == 0 && S_ISDIR(sb.st_mode) && has_segments(sub) > 0) {
    *out = sub;
    return 0;
  }
  free(sub);
  cli_err("%s: no log segments here (expected NNNNNNNNNNNNNNNNNNNN.log files, "
          "or a data directory with log/)", arg);
  return CLI_EXIT_USAGE;
}

/* Path of the segment file with base position base, in a static buffer. */
static const char* seg_path(const logcmd_t* c, uint64_t base) {
  static char buf[4096];
  snprintf(buf, sizeof buf, "%s%s%020" PRIu64 ".log", c->dir,
           c->dir[strlen(c->dir) - 1] == '/' ? "" : "/", base);
  return buf;
}

static const char* seg_name(uint64_t base) {
  static char buf[32];
  snprintf(buf, sizeof buf, "%020" PRIu64 ".log", base);
  return buf;
}

/* Index of the segment holding pos (the last one whose base <= pos). */
static size_t seg_index(const logcmd_t* c, uint64_t pos) {
  size_t n = txmq_log_segment_count(c->log), i = 0;
  while (i + 1 < n && txmq_log_segment_base(c->log, i + 1) <= pos) i++;
  return i;
}

static uint64_t seg_base_of(const logcmd_t* c, uint64_t pos) {
  if (txmq_log_segment_count(c->log) == 0) return 0;
  return txmq_log_segment_base(c->log, seg_index(c, pos));
}

/* Data bytes of segment i (what the records in it take). */
static uint64_t seg_size(const logcmd_t* c, size_t i) {
  size_t n = txmq_log_segment_count(c->log);
  uint64_t base = txmq_log_segment_base(c->log, i);
  uint64_t end = i + 1 < n ? txmq_log_segment_base(c->log, i + 1) : txmq_log_end(c->log);
  return end > base ? end - base : 0;
}

static void set_reason(logcmd_t* c, const char* r) {
  snprintf(c->reason, sizeof c->reason, "%s", r && *r ? r : "invalid record");
}

static int open_log(logcmd_t* c) {
  const char* diag = "";
  int r = txmq_log_new(&c->log, NULL, c->dir);
  if (r == 0) r = txmq_log_set(c->log, TXMQ_LOG_OPT_READ_ONLY, 1);
  if (r == 0) r = txmq_log_set(c->log, TXMQ_LOG_OPT_RECOVER, TXMQ_LOG_RECOVER_READONLY);
  if (r == 0) r = txmq_log_open(c->log);
  if (c->log) diag = txmq_log_diag(c->log);
  c->open_diag = strdup(diag ? diag : "");
  if (r == 0) return 0;

  uint64_t sb, pos;
  if (r == TXMQ_ECORRUPT && c->log && txmq_log_corruption(c->log, &sb, &pos) == 0) {
    cli_err("corrupt log: %s at position %" PRIu64 ": %s", seg_path(c, sb), pos,
            *c->open_diag ? c->open_diag : txmq_strerror(r));
    return CLI_EXIT_DATA;
  }
  cli_err("%s: cannot open the log: %s%s%s", c->dir, txmq_strerror(r),
          c->open_diag && *c->open_diag ? ": " : "", c->open_diag ? c->open_diag : "");
  return r == TXMQ_EINVAL || r == TXMQ_ENOTFOUND ? CLI_EXIT_USAGE : CLI_EXIT_DATA;
}

static void close_log(logcmd_t* c) {
  if (!c->log) return;
  /* A read-only log (or one that never opened) closes synchronously. */
  txmq_log_close(c->log, NULL, NULL);
  txmq_log_free(c->log);
  c->log = NULL;
}

/* Records where the reading stopped: it_rc is the iterator's last return
 * (TXMQ_ENOTFOUND at the end), at is the position it was asked for next,
 * complete says whether the reading was meant to reach the end. */
static void classify(logcmd_t* c, int it_rc, uint64_t at, int complete) {
  uint64_t sb, pos;
  if (it_rc == TXMQ_ECORRUPT) {
    c->status = ST_CORRUPT;
    c->bad_pos = at;
    c->bad_seg = seg_base_of(c, at);
    /* The log explains a failed read in its diagnostic; only trust it when
     * it changed since open (else it still describes the open). */
    const char* d = txmq_log_diag(c->log);
    set_reason(c, d && strcmp(d, c->open_diag) != 0 ? d : NULL);
  } else if (it_rc != 0 && it_rc != TXMQ_ENOTFOUND) {
    c->status = ST_CORRUPT;
    c->bad_pos = at;
    c->bad_seg = seg_base_of(c, at);
    set_reason(c, txmq_strerror(it_rc));
  } else if (txmq_log_corruption(c->log, &sb, &pos) == 0) {
    c->status = ST_CORRUPT;
    c->bad_pos = pos;
    c->bad_seg = sb;
    set_reason(c, c->open_diag);
  } else if (complete && at != txmq_log_end(c->log)) {
    c->status = ST_CORRUPT;
    c->bad_pos = at;
    c->bad_seg = seg_base_of(c, at);
    snprintf(c->reason, sizeof c->reason,
             "reading stopped at %" PRIu64 " before the end of the log at %" PRIu64,
             at, txmq_log_end(c->log));
  } else if (txmq_log_torn_bytes(c->log) > 0) {
    c->status = ST_TORN;
    c->torn_bytes = txmq_log_torn_bytes(c->log);
    c->bad_pos = txmq_log_end(c->log);
    /* Only the newest segment file can have a torn tail. A read-only open
     * may leave it out of the segment list when the torn record was its
     * only one, so ask the directory. */
    scan_segments(c->dir, &c->bad_seg);
    set_reason(c, c->open_diag);
  } else {
    /* A newest segment shorter than its header: its creation was cut short
     * (the log leaves it out and a read-write open rewrites its header),
     * which the log does not count as torn bytes. */
    uint64_t newest;
    struct stat sb;
    char* p = NULL;
    if (scan_segments(c->dir, &newest) > 0 &&
        (p = join(c->dir, seg_name(newest))) != NULL && stat(p, &sb) == 0 &&
        (uint64_t)sb.st_size < TXMQ_LOG_SEGMENT_HEADER_SIZE) {
      c->status = ST_TORN;
      c->torn_header = 1;
      c->torn_bytes = (uint64_t)sb.st_size;
      c->bad_pos = txmq_log_end(c->log);
      c->bad_seg = newest;
      snprintf(c->reason, sizeof c->reason,
               "the newest segment holds %" PRIu64 " of its %d header bytes: "
               "its creation was cut short (the next read-write open writes "
               "its header again)",
               c->torn_bytes, TXMQ_LOG_SEGMENT_HEADER_SIZE);
    }
    free(p);
  }
}

static void report_problem(const logcmd_t* c) {
  if (c->status == ST_CORRUPT) {
    cli_err("corrupt log: %s at position %" PRIu64 " (file offset %" PRIu64
            "): %s; %" PRIu64 " records %sbefore it are valid",
            seg_path(c, c->bad_seg), c->bad_pos,
            (uint64_t)TXMQ_LOG_SEGMENT_HEADER_SIZE + (c->bad_pos - c->bad_seg),
            c->reason, c->records,
            c->partial ? "read (from --from, up to -n) " : "");
  } else if (c->status == ST_TORN && c->torn_header) {
    cli_err("torn tail: %s: %s (not corruption)", seg_path(c, c->bad_seg),
            c->reason);
  } else if (c->status == ST_TORN) {
    cli_err("torn tail: %s: %" PRIu64 " bytes after position %" PRIu64
            " are an incomplete write; the next read-write open cuts them "
            "(not corruption)",
            seg_path(c, c->bad_seg), c->torn_bytes, c->bad_pos);
  }
}

/* ---- decoding ---- */

/* A topic record: msgpack [name, queue count], checked as the store's
 * replay checks it (a valid name, 1 to TXMQ_STORE_MAX_QUEUES queues): what
 * the store would skip is not shown as a topic (a name from a damaged or
 * forged log could hold a line break or a terminal escape). */
static int decode_topic(const txmq_log_entry_t* e, char* name, size_t cap,
                        uint64_t* queues) {
  msgpack_unpacked u;
  msgpack_unpacked_init(&u);
  size_t off = 0;
  int ok = 0;
  if (msgpack_unpack_next(&u, (const char*)e->data, e->len, &off) ==
          MSGPACK_UNPACK_SUCCESS &&
      off == e->len && u.data.type == MSGPACK_OBJECT_ARRAY &&
      u.data.via.array.size == 2 &&
      u.data.via.array.ptr[0].type == MSGPACK_OBJECT_STR &&
      u.data.via.array.ptr[1].type == MSGPACK_OBJECT_POSITIVE_INTEGER &&
      u.data.via.array.ptr[1].via.u64 >= 1 &&
      u.data.via.array.ptr[1].via.u64 <= TXMQ_STORE_MAX_QUEUES &&
      u.data.via.array.ptr[0].via.str.size < cap &&
      txmq_name_valid_n(u.data.via.array.ptr[0].via.str.ptr,
                        u.data.via.array.ptr[0].via.str.size)) {
    const msgpack_object_str* s = &u.data.via.array.ptr[0].via.str;
    memcpy(name, s->ptr, s->size);
    name[s->size] = '\0';
    *queues = u.data.via.array.ptr[1].via.u64;
    ok = 1;
  }
  msgpack_unpacked_destroy(&u);
  return ok;
}

/* A TX_HALF record read with the engine's decoder, and every message in
 * it decoded by the store's message codec, as a commit publishes them. */
typedef struct {
  txmq__half_t h;
  txmq_msg_t* msgs[TXMQ_TX_MAX_MSGS];
  uint32_t n;     /* messages decoded */
  uint32_t total; /* messages in the record (kept after a failure) */
} half_rec_t;

static void half_rec_done(half_rec_t* hr) {
  for (uint32_t i = 0; i < hr->n; i++) txmq_msg_free(hr->msgs[i]);
  txmq__half_done(&hr->h);
}

/* 0, or the decoder's code with *bad set to the index of the message that
 * did not decode (UINT32_MAX if the record itself did not). On success the
 * caller calls half_rec_done(). */
static int half_rec_decode(const txmq_log_entry_t* e, half_rec_t* hr,
                           uint32_t* bad) {
  memset(hr, 0, sizeof *hr);
  *bad = UINT32_MAX;
  int rc = txmq__half_decode(e->data, e->len, &hr->h);
  if (rc != 0) return rc;
  /* The decoder bounds the count by TXMQ_TX_MAX_MSGS. */
  hr->total = hr->h.msgs->size;
  for (uint32_t i = 0; i < hr->total; i++) {
    rc = txmq__half_msg(&hr->h, i, &hr->msgs[i]);
    if (rc != 0) {
      *bad = i;
      half_rec_done(hr);
      return rc;
    }
    hr->n++;
  }
  return 0;
}

/* "ECORRUPT", or "message 2 of 3: EPROTO" when a message is at fault. */
static const char* half_error(const half_rec_t* hr, int rc, uint32_t bad,
                              char* buf, size_t cap) {
  if (bad == UINT32_MAX) return txmq_err_name(rc);
  snprintf(buf, cap, "message %" PRIu32 " of %" PRIu32 ": %s", bad + 1,
           hr->total, txmq_err_name(rc));
  return buf;
}

static const char* type_name(uint8_t t, char buf[8]) {
  if (t == TXMQ_REC_MSG) return "msg";
  if (t == TXMQ_REC_TOPIC) return "topic";
  if (t == TXMQ_REC_TX_HALF) return "tx_half";
  if (t == TXMQ_REC_TX_EVENT) return "tx_event";
  snprintf(buf, 8, "%u", (unsigned)t);
  return buf;
}

static void count(logcmd_t* c, const txmq_log_entry_t* e) {
  c->records++;
  c->bytes += e->next - e->pos;
  if (e->type == TXMQ_REC_MSG)
    c->msgs++;
  else if (e->type == TXMQ_REC_TOPIC)
    c->topics++;
  else if (e->type == TXMQ_REC_TX_HALF)
    c->tx_halfs++;
  else if (e->type == TXMQ_REC_TX_EVENT)
    c->tx_events++;
  else
    c->other++;
}

/* Checks that a record of a known type decodes. Returns 1 if it does (or
 * its type is not one the tool knows), 0 after filling the reason. */
static int check_payload(logcmd_t* c, const txmq_log_entry_t* e) {
  if (e->type == TXMQ_REC_MSG) {
    txmq_msg_t* m = NULL;
    int r = txmq_msg_decode(e->data, e->len, &m);
    txmq_msg_free(m);
    if (r == 0) return 1;
    snprintf(c->reason, sizeof c->reason,
             "the record's checksum is valid but its payload is not a message (%s)",
             txmq_err_name(r));
    return 0;
  }
  if (e->type == TXMQ_REC_TOPIC) {
    char name[TXMQ_NAME_MAX + 1];
    uint64_t q;
    if (decode_topic(e, name, sizeof name, &q)) return 1;
    snprintf(c->reason, sizeof c->reason,
             "the record's checksum is valid but its payload is not [topic, "
             "queues] with a valid name and 1 to %d queues",
             TXMQ_STORE_MAX_QUEUES);
    return 0;
  }
  if (e->type == TXMQ_REC_TX_HALF) {
    half_rec_t hr;
    uint32_t bad;
    char eb[64];
    int r = half_rec_decode(e, &hr, &bad);
    if (r == 0) {
      half_rec_done(&hr);
      return 1;
    }
    snprintf(c->reason, sizeof c->reason,
             "the record's checksum is valid but its payload is not a "
             "transaction half record (%s)",
             half_error(&hr, r, bad, eb, sizeof eb));
    return 0;
  }
  if (e->type == TXMQ_REC_TX_EVENT) {
    txmq__event_t ev;
    int r = txmq__event_decode(e->data, e->len, &ev);
    if (r == 0) return 1;
    snprintf(c->reason, sizeof c->reason,
             "the record's checksum is valid but its payload is not a "
             "transaction event record (%s)",
             txmq_err_name(r));
    return 0;
  }
  return 1;
}

static void bad_payload(logcmd_t* c, const txmq_log_entry_t* e) {
  c->status = ST_CORRUPT;
  c->bad_pos = e->pos;
  c->bad_seg = seg_base_of(c, e->pos);
}

/* ---- dump: plain ---- */

static void put_msg_plain(const txmq_msg_t* m) {
  char id[TXMQ_MSG_ID_STRLEN + 1];
  printf(" id=%s topic=%s qid=%d", txmq_msg_id_str(m, id),
         txmq_msg_topic(m) ? txmq_msg_topic(m) : "", (int)txmq_msg_queue_id(m));
  if (txmq_msg_queue_offset(m) >= 0) printf(" qoff=%lld", (long long)txmq_msg_queue_offset(m));
  if (txmq_msg_tags(m)) {
    fputs(" tags=", stdout);
    cli_put_quoted(stdout, txmq_msg_tags(m), strlen(txmq_msg_tags(m)));
  }
  if (txmq_msg_keys(m)) {
    fputs(" keys=", stdout);
    cli_put_quoted(stdout, txmq_msg_keys(m), strlen(txmq_msg_keys(m)));
  }
  size_t np = txmq_msg_prop_count(m);
  if (np) {
    fputs(" props={", stdout);
    for (size_t i = 0; i < np; i++) {
      const char *k, *v;
      if (txmq_msg_prop_at(m, i, &k, &v) != 0) break;
      if (i) fputc(',', stdout);
      cli_put_quoted(stdout, k, strlen(k));
      fputc(':', stdout);
      cli_put_quoted(stdout, v, strlen(v));
    }
    fputc('}', stdout);
  }
  if (txmq_msg_born_ms(m)) {
    fputs(" born=", stdout);
    cli_put_time_ms(stdout, txmq_msg_born_ms(m));
  }
  if (txmq_msg_store_ms(m)) {
    fputs(" stored=", stdout);
    cli_put_time_ms(stdout, txmq_msg_store_ms(m));
  }
  size_t blen = 0;
  const void* body = txmq_msg_body(m, &blen);
  printf(" body_len=%zu", blen);
  if (cli_is_text(body, blen)) {
    fputs(" body=text:", stdout);
    cli_put_quoted(stdout, body, blen);
  } else {
    fputs(" body=hex:", stdout);
    cli_put_hex(stdout, body, blen);
  }
}

/* A label (a client id, a script version) as is when it is one plain word,
 * else quoted, so that a space or '=' inside cannot be taken for the next
 * field. */
static void put_label(const char* s, size_t len) {
  int plain = len > 0;
  for (size_t i = 0; i < len && plain; i++) {
    unsigned char ch = (unsigned char)s[i];
    /* (strchr finds the terminator too: a NUL is not plain.) */
    plain = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
            (ch >= '0' && ch <= '9') ||
            (ch != 0 && strchr("._:@/+-", ch) != NULL);
  }
  if (plain)
    fwrite(s, 1, len, stdout);
  else
    cli_put_quoted(stdout, s, len);
}

/* The half record's fields, then each message on its own indented line. */
static void put_half_plain(const half_rec_t* hr) {
  char tid[TXMQ_TX_ID_STRLEN + 1];
  const txmq__half_t* h = &hr->h;
  /* The decoder accepts only a valid name as the group: one plain word. */
  printf(" tx=%s group=%.*s", txmq_tx_id_str(h->id, tid), (int)h->group_len,
         h->group);
  if (h->producer) {
    fputs(" producer=", stdout);
    put_label(h->producer, h->producer_len);
  }
  fputs(" at=", stdout);
  cli_put_time_ms(stdout, h->at);
  printf(" immunity_ms=%" PRId64 " msgs=%" PRIu32, h->immunity_ms, hr->n);
  for (uint32_t i = 0; i < hr->n; i++) {
    fputs("\n  msg", stdout);
    put_msg_plain(hr->msgs[i]);
  }
}

static void put_event_plain(const txmq__event_t* ev) {
  char tid[TXMQ_TX_ID_STRLEN + 1];
  printf(" tx=%s ev=%s src=%s", txmq_tx_id_str(ev->id, tid),
         txmq__ev_name(ev->ev), txmq_tx_source_name(ev->src));
  if (ev->ver) {
    fputs(" ver=", stdout);
    put_label(ev->ver, ev->ver_len);
  }
  if (ev->who) {
    fputs(" who=", stdout);
    put_label(ev->who, ev->who_len);
  }
  printf(" count=%" PRIu32 " at=", ev->count);
  cli_put_time_ms(stdout, ev->at);
  printf(" prev=%" PRIu64, ev->prev);
}

static int dump_record_plain(logcmd_t* c, const txmq_log_entry_t* e) {
  char tb[8];
  printf("record pos=%" PRIu64 " type=%s len=%" PRIu32 " next=%" PRIu64, e->pos,
         type_name(e->type, tb), e->len, e->next);
  int ok = 1;
  if (e->type == TXMQ_REC_MSG) {
    txmq_msg_t* m = NULL;
    int r = txmq_msg_decode(e->data, e->len, &m);
    if (r == 0) {
      put_msg_plain(m);
    } else {
      printf(" error=%s payload=hex:", txmq_err_name(r));
      cli_put_hex(stdout, e->data, e->len);
      ok = check_payload(c, e);
    }
    txmq_msg_free(m);
  } else if (e->type == TXMQ_REC_TOPIC) {
    char name[TXMQ_NAME_MAX + 1];
    uint64_t q;
    if (decode_topic(e, name, sizeof name, &q)) {
      printf(" topic=%s queues=%" PRIu64, name, q);
    } else {
      fputs(" error=EPROTO payload=hex:", stdout);
      cli_put_hex(stdout, e->data, e->len);
      ok = check_payload(c, e);
    }
  } else if (e->type == TXMQ_REC_TX_HALF || e->type == TXMQ_REC_TX_EVENT) {
    half_rec_t hr;
    txmq__event_t ev;
    uint32_t bad;
    int r = e->type == TXMQ_REC_TX_HALF ? half_rec_decode(e, &hr, &bad)
                                        : txmq__event_decode(e->data, e->len, &ev);
    if (r == 0 && e->type == TXMQ_REC_TX_HALF) {
      put_half_plain(&hr);
      half_rec_done(&hr);
    } else if (r == 0) {
      put_event_plain(&ev);
    } else {
      /* The reason, with the message at fault, goes to standard error. */
      printf(" error=%s payload=hex:", txmq_err_name(r));
      cli_put_hex(stdout, e->data, e->len);
      ok = check_payload(c, e);
    }
  } else {
    fputs(" payload=hex:", stdout);
    cli_put_hex(stdout, e->data, e->len);
  }
  fputc('\n', stdout);
  return ok;
}

static void dump_segment_plain(logcmd_t* c, size_t i) {
  uint64_t base = txmq_log_segment_base(c->log, i);
  struct stat sb;
  long long fbytes = stat(seg_path(c, base), &sb) == 0 ? (long long)sb.st_size : -1;
  printf("segment %s base=%" PRIu64 " size=%" PRIu64 " file_bytes=%lld\n",
         seg_name(base), base, seg_size(c, i), fbytes);
}

/* ---- dump: JSON ---- */

static json_t* half_json(const half_rec_t* hr) {
  char tid[TXMQ_TX_ID_STRLEN + 1];
  const txmq__half_t* h = &hr->h;
  json_t* o = json_object();
  json_object_set_new(o, "tx", json_string(txmq_tx_id_str(h->id, tid)));
  json_object_set_new(o, "group", cli_json_str(h->group, h->group_len));
  if (h->producer)
    json_object_set_new(o, "producer", cli_json_str(h->producer, h->producer_len));
  json_object_set_new(o, "at_ms", json_integer(h->at));
  json_object_set_new(o, "immunity_ms", json_integer(h->immunity_ms));
  json_t* msgs = json_array();
  for (uint32_t i = 0; i < hr->n; i++)
    json_array_append_new(msgs, cli_msg_json(hr->msgs[i], 0));
  json_object_set_new(o, "msgs", msgs);
  return o;
}

static json_t* event_json(const txmq__event_t* ev) {
  char tid[TXMQ_TX_ID_STRLEN + 1];
  json_t* o = json_object();
  json_object_set_new(o, "tx", json_string(txmq_tx_id_str(ev->id, tid)));
  json_object_set_new(o, "ev", json_string(txmq__ev_name(ev->ev)));
  json_object_set_new(o, "src", json_string(txmq_tx_source_name(ev->src)));
  if (ev->ver) json_object_set_new(o, "ver", cli_json_str(ev->ver, ev->ver_len));
  if (ev->who) json_object_set_new(o, "who", cli_json_str(ev->who, ev->who_len));
  json_object_set_new(o, "count", json_integer(ev->count));
  json_object_set_new(o, "at_ms", json_integer(ev->at));
  json_object_set_new(o, "prev", json_integer((json_int_t)ev->prev));
  return o;
}

static int dump_record_json(logcmd_t* c, const txmq_log_entry_t* e) {
  char tb[8];
  int ok = 1;
  json_t* o = json_object();
  json_object_set_new(o, "kind", json_string("record"));
  json_object_set_new(o, "segment", json_string(seg_name(seg_base_of(c, e->pos))));
  json_object_set_new(o, "pos", json_integer((json_int_t)e->pos));
  json_object_set_new(o, "next", json_integer((json_int_t)e->next));
  json_object_set_new(o, "type", json_string(type_name(e->type, tb)));
  json_object_set_new(o, "type_id", json_integer(e->type));
  json_object_set_new(o, "len", json_integer(e->len));
  int raw = 0;
  if (e->type == TXMQ_REC_MSG) {
    txmq_msg_t* m = NULL;
    int r = txmq_msg_decode(e->data, e->len, &m);
    if (r == 0) {
      json_object_set_new(o, "msg", cli_msg_json(m, 0));
    } else {
      json_object_set_new(o, "error", json_string(txmq_err_name(r)));
      ok = check_payload(c, e);
      raw = 1;
    }
    txmq_msg_free(m);
  } else if (e->type == TXMQ_REC_TOPIC) {
    char name[TXMQ_NAME_MAX + 1];
    uint64_t q;
    if (decode_topic(e, name, sizeof name, &q)) {
      json_t* t = json_object();
      json_object_set_new(t, "name", cli_json_str(name, strlen(name)));
      json_object_set_new(t, "queues", json_integer((json_int_t)q));
      json_object_set_new(o, "topic", t);
    } else {
      json_object_set_new(o, "error", json_string("EPROTO"));
      ok = check_payload(c, e);
      raw = 1;
    }
  } else if (e->type == TXMQ_REC_TX_HALF || e->type == TXMQ_REC_TX_EVENT) {
    half_rec_t hr;
    txmq__event_t ev;
    uint32_t bad;
    int r = e->type == TXMQ_REC_TX_HALF ? half_rec_decode(e, &hr, &bad)
                                        : txmq__event_decode(e->data, e->len, &ev);
    if (r == 0 && e->type == TXMQ_REC_TX_HALF) {
      json_object_set_new(o, "tx_half", half_json(&hr));
      half_rec_done(&hr);
    } else if (r == 0) {
      json_object_set_new(o, "tx_event", event_json(&ev));
    } else {
      json_object_set_new(o, "error", json_string(txmq_err_name(r)));
      ok = check_payload(c, e);
      raw = 1;
    }
  } else {
    raw = 1;
  }
  if (raw) {
    json_object_set_new(o, "payload_encoding", json_string("base64"));
    json_object_set_new(o, "payload", cli_json_base64(e->data, e->len));
  }
  cli_json_print(o);
  return ok;
}

static void dump_segment_json(logcmd_t* c, size_t i) {
  uint64_t base = txmq_log_segment_base(c->log, i);
  struct stat sb;
  json_t* o = json_object();
  json_object_set_new(o, "kind", json_string("segment"));
  json_object_set_new(o, "file", json_string(seg_name(base)));
  json_object_set_new(o, "base", json_integer((json_int_t)base));
  json_object_set_new(o, "size", json_integer((json_int_t)seg_size(c, i)));
  if (stat(seg_path(c, base), &sb) == 0)
    json_object_set_new(o, "file_bytes", json_integer((json_int_t)sb.st_size));
  cli_json_print(o);
}

static void dump_segment(logcmd_t* c, size_t i) {
  if (c->a->json)
    dump_segment_json(c, i);
  else
    dump_segment_plain(c, i);
}

static int cmd_dump(logcmd_t* c) {
  const cli_args_t* a = c->a;
  uint64_t from = 0, limit = UINT64_MAX;
  if (a->from && cli_parse_u64("--from", a->from, &from)) return CLI_EXIT_USAGE;
  if (a->n && cli_parse_u64("-n", a->n, &limit)) return CLI_EXIT_USAGE;
  c->partial = a->from != NULL || a->n != NULL;

  int rc = open_log(c);
  if (rc) return rc;

  uint64_t begin = txmq_log_begin(c->log), end = txmq_log_end(c->log);
  size_t nseg = txmq_log_segment_count(c->log);
  if (a->json) {
    json_t* o = json_object();
    json_object_set_new(o, "kind", json_string("log"));
    json_object_set_new(o, "dir", cli_json_str(c->dir, strlen(c->dir)));
    json_object_set_new(o, "segments", json_integer((json_int_t)nseg));
    json_object_set_new(o, "begin", json_integer((json_int_t)begin));
    json_object_set_new(o, "end", json_integer((json_int_t)end));
    cli_json_print(o);
  } else {
    printf("log %s: %zu segment%s, positions %" PRIu64 "..%" PRIu64 "\n", c->dir,
           nseg, nseg == 1 ? "" : "s", begin, end);
  }

  /* Records never span segments, so reading from the start of the segment
   * that holds --from finds the first record at or after it without
   * needing --from to be a record boundary. */
  size_t seg = nseg ? seg_index(c, from) : 0;
  uint64_t start = nseg ? txmq_log_segment_base(c->log, seg) : begin;
  if (start < begin) start = begin;
  int printed_seg = 0;
  uint64_t shown = 0, at = start;
  int it_rc = TXMQ_ENOTFOUND, payload_ok = 1, out_gone = 0;
  txmq_log_iter_t* it = NULL;
  if (limit > 0 && from < end) {
    int r = txmq_log_iter_new(c->log, start, UINT64_MAX, &it);
    if (r != 0) {
      cli_err("%s: cannot read the log: %s", c->dir, txmq_strerror(r));
      close_log(c);
      return CLI_EXIT_DATA;
    }
    txmq_log_entry_t e;
    /* Output that failed (a reader gone: `txmq log dump DIR | head`) ends
     * the dump: reading the rest of the log would be for nobody. main()
     * tells a closed pipe, which is no error, from a failure. */
    while (shown < limit && !(out_gone = ferror(stdout) != 0) &&
           (it_rc = txmq_log_iter_next(it, &e)) == 0) {
      at = e.next;
      if (e.pos < from) continue;
      while (seg + 1 < nseg && txmq_log_segment_base(c->log, seg + 1) <= e.pos) {
        seg++;
        /* An empty segment between two printed ones still gets its line. */
        if (printed_seg) dump_segment(c, seg);
      }
      if (!printed_seg) {
        dump_segment(c, seg);
        printed_seg = 1;
      }
      shown++;
      if (!(a->json ? dump_record_json(c, &e) : dump_record_plain(c, &e))) {
        payload_ok = 0;
        bad_payload(c, &e);
        break;
      }
      count(c, &e);
    }
    if ((shown == limit || out_gone) && it_rc == 0) it_rc = TXMQ_ENOTFOUND;
    txmq_log_iter_free(it);
  }
  /* Segments after the last record (an empty newest segment) when the dump
   * ran to the end. */
  if (shown < limit && payload_ok && !out_gone && it_rc == TXMQ_ENOTFOUND) {
    /* With no record shown, list the segments only for an empty log. */
    size_t first = printed_seg ? seg + 1 : (from < end || begin == end ? seg : nseg);
    for (size_t i = first; i < nseg; i++) dump_segment(c, i);
  }

  if (payload_ok) classify(c, it_rc, at, 0);
  report_problem(c);
  close_log(c);
  return c->status == ST_CORRUPT ? CLI_EXIT_DATA : CLI_EXIT_OK;
}

/* ---- verify ---- */

static int cmd_verify(logcmd_t* c) {
  int rc = open_log(c);
  if (rc) return rc;
  uint64_t begin = txmq_log_begin(c->log);
  uint64_t at = begin;
  txmq_log_iter_t* it = NULL;
  int r = txmq_log_iter_new(c->log, begin, UINT64_MAX, &it);
  if (r != 0) {
    cli_err("%s: cannot read the log: %s", c->dir, txmq_strerror(r));
    close_log(c);
    return CLI_EXIT_DATA;
  }
  txmq_log_entry_t e;
  int payload_ok = 1;
  while ((r = txmq_log_iter_next(it, &e)) == 0) {
    if (!check_payload(c, &e)) {
      payload_ok = 0;
      bad_payload(c, &e);
      break;
    }
    count(c, &e);
    at = e.next;
  }
  txmq_log_iter_free(it);
  if (payload_ok) classify(c, r, at, 1);

  /* The segment files verify was given, readable or not. */
  uint64_t newest;
  size_t nseg = scan_segments(c->dir, &newest);
  uint64_t end = txmq_log_end(c->log);
  static const char* names[] = {"ok", "torn_tail", "corrupt"};
  if (c->a->json) {
    json_t* o = json_object();
    json_object_set_new(o, "kind", json_string("verify"));
    json_object_set_new(o, "dir", cli_json_str(c->dir, strlen(c->dir)));
    json_object_set_new(o, "status", json_string(names[c->status]));
    json_object_set_new(o, "segments", json_integer((json_int_t)nseg));
    json_object_set_new(o, "records", json_integer((json_int_t)c->records));
    json_object_set_new(o, "msgs", json_integer((json_int_t)c->msgs));
    json_object_set_new(o, "topics", json_integer((json_int_t)c->topics));
    json_object_set_new(o, "tx_halfs", json_integer((json_int_t)c->tx_halfs));
    json_object_set_new(o, "tx_events", json_integer((json_int_t)c->tx_events));
    json_object_set_new(o, "other", json_integer((json_int_t)c->other));
    json_object_set_new(o, "bytes", json_integer((json_int_t)c->bytes));
    json_object_set_new(o, "begin", json_integer((json_int_t)begin));
    json_object_set_new(o, "end", json_integer((json_int_t)end));
    if (c->status != ST_OK) {
      json_object_set_new(o, "segment_file", json_string(seg_name(c->bad_seg)));
      json_object_set_new(o, "pos", json_integer((json_int_t)c->bad_pos));
      json_object_set_new(o, "file_offset",
                          json_integer((json_int_t)(TXMQ_LOG_SEGMENT_HEADER_SIZE +
                                                    c->bad_pos - c->bad_seg)));
      json_object_set_new(o, "reason", cli_json_str(c->reason, strlen(c->reason)));
    }
    if (c->status == ST_TORN)
      json_object_set_new(o, "torn_bytes", json_integer((json_int_t)c->torn_bytes));
    cli_json_print(o);
  } else {
    printf("%s: %s, %zu segment%s, %" PRIu64 " records (%" PRIu64 " msg, %" PRIu64
           " topic, %" PRIu64 " tx_half, %" PRIu64 " tx_event, %" PRIu64
           " other), %" PRIu64 " bytes, positions %" PRIu64 "..%" PRIu64,
           c->dir,
           c->status == ST_OK ? "ok" : c->status == ST_TORN ? "torn tail" : "CORRUPT",
           nseg, nseg == 1 ? "" : "s", c->records, c->msgs, c->topics,
           c->tx_halfs, c->tx_events, c->other, c->bytes, begin,
           c->status == ST_CORRUPT ? c->bad_pos : end);
    if (c->status == ST_TORN && c->torn_header)
      printf("; %s has %" PRIu64 " bytes of its header, written again at the "
             "next open", seg_name(c->bad_seg), c->torn_bytes);
    else if (c->status == ST_TORN)
      printf("; %" PRIu64 " bytes at %" PRIu64 " in %s are cut at the next open",
             c->torn_bytes, c->bad_pos, seg_name(c->bad_seg));
    if (c->status == ST_CORRUPT)
      printf("; corrupt at %" PRIu64 " in %s", c->bad_pos, seg_name(c->bad_seg));
    fputc('\n', stdout);
  }
  report_problem(c);
  close_log(c);
  return c->status == ST_CORRUPT ? CLI_EXIT_DATA : CLI_EXIT_OK;
}

int cli_cmd_log(const cli_args_t* a) {
  if (a->npos < 2) {
    cli_err("'log' needs a subcommand: txmq log dump DIR | txmq log verify DIR");
    return CLI_EXIT_USAGE;
  }
  const char* sub = a->pos[1];
  int dump = strcmp(sub, "dump") == 0;
  if (!dump && strcmp(sub, "verify") != 0) {
    cli_err("unknown log subcommand '%s' (expected dump or verify)", sub);
    return CLI_EXIT_USAGE;
  }
  char name[16];
  snprintf(name, sizeof name, "log %s", sub);
  int rc = cli_check_opts(a, dump ? (CLI_OPT_FROM | CLI_OPT_N) : 0, name);
  if (rc) return rc;
  if (a->npos < 3) {
    cli_err("'log %s' needs a directory: txmq log %s DIR", sub, sub);
    return CLI_EXIT_USAGE;
  }
  if (a->npos > 3) {
    cli_err("'log %s' takes one directory; unexpected '%s'", sub, a->pos[3]);
    return CLI_EXIT_USAGE;
  }

  logcmd_t c;
  memset(&c, 0, sizeof c);
  c.a = a;
  rc = resolve_dir(a->pos[2], &c.dir);
  if (rc == 0) rc = dump ? cmd_dump(&c) : cmd_verify(&c);
  close_log(&c);
  free(c.dir);
  free(c.open_diag);
  return rc;
}
