/*
 * log-demo - a small program that shows txmq's storage from the outside:
 * it stores messages through the store (<txmq/store.h>), reads them back,
 * keeps writing until it is killed, and after a crash checks that every
 * message it was told is durable really is. It also appends raw records
 * straight to a commit log (<txmq/log.h>), to show the layer underneath.
 *
 *   log-demo put    DATA [--count N] [--topic T] [--binary] [--segment-size B]
 *   log-demo show   DATA [--topic T]
 *   log-demo writer DATA --acks FILE [--inflight N] [--seconds S]
 *   log-demo check  DATA --acks FILE
 *   log-demo append LOGDIR --type T [--count N] [--size S | --hex HEX]
 *                   [--segment-size B]
 *
 * The messages are orders: keys "order-<n>", tags "paid", a JSON body that
 * is a function of n (so a read-back can be checked), property
 * source=log-demo. Writes use sync ALWAYS: a message is acknowledged only
 * after its log record is fdatasync'ed.
 *
 * It is an example, not a tool: it handles errors by printing them and
 * exiting non-zero, and keeps everything on one libuv loop.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <uv.h>

#include "txmq/error.h"
#include "txmq/log.h"
#include "txmq/msg.h"
#include "txmq/store.h"

typedef struct {
  const char* dir;
  const char* topic;
  const char* acks;
  uint64_t count;
  uint64_t size;
  uint64_t segment_size;
  int type;
  const char* hex; /* append: the payload itself, in hex */
  int binary;
  int inflight;
  int seconds;
} opts_t;

static void die(const char* what, int err) {
  fprintf(stderr, "log-demo: %s: %s (%s)\n", what, txmq_strerror(err), txmq_err_name(err));
  exit(1);
}

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Runs the loop until *flag is set. The store keeps a checkpoint timer, so
 * the loop would never run dry on its own while the store is open. */
static void run_until(uv_loop_t* loop, volatile int* flag) {
  while (!*flag) uv_run(loop, UV_RUN_ONCE);
}

/* ---- messages ---- */

static int order_body(uint64_t n, int binary, char* buf, size_t cap) {
  if (binary) {
    /* Bytes that are not UTF-8, to show how dump renders them. */
    int len = 24;
    for (int i = 0; i < len; i++) buf[i] = (char)((n * 31 + (uint64_t)i * 97) & 0xff);
    buf[0] = (char)0xff;
    return len;
  }
  return snprintf(buf, cap, "{\"order\":%" PRIu64 ",\"amount_cents\":%" PRIu64
                  ",\"status\":\"paid\"}", n, (n * 7919) % 100000);
}

static txmq_msg_t* order_msg(const char* topic, uint64_t n, int binary) {
  char body[256], keys[64];
  int blen = order_body(n, binary, body, sizeof body);
  snprintf(keys, sizeof keys, "order-%" PRIu64, n);
  txmq_msg_t* m = txmq_msg_new();
  if (!m) die("txmq_msg_new", TXMQ_ENOMEM);
  int r = txmq_msg_set_topic(m, topic);
  if (r == 0) r = txmq_msg_set_tags(m, "paid");
  if (r == 0) r = txmq_msg_set_keys(m, keys);
  if (r == 0) r = txmq_msg_prop_set(m, "source", "log-demo");
  if (r == 0) r = txmq_msg_set_body(m, body, (size_t)blen);
  if (r) die("building a message", r);
  txmq_msg_set_born_ms(m, now_ms());
  return m;
}

/* The order number of a message, from its keys ("order-<n>"). */
static int order_number(const txmq_msg_t* m, uint64_t* n) {
  const char* k = txmq_msg_keys(m);
  return k && sscanf(k, "order-%" SCNu64, n) == 1 ? 0 : -1;
}

/* ---- store helpers ---- */

static txmq_store_t* store_open(uv_loop_t* loop, const opts_t* o) {
  txmq_store_t* st = NULL;
  int r = txmq_store_new(&st, loop, o->dir);
  if (r) die("txmq_store_new", r);
  r = txmq_store_set(st, TXMQ_STORE_OPT_SYNC, TXMQ_SYNC_ALWAYS);
  if (r == 0 && o->segment_size)
    r = txmq_store_set(st, TXMQ_STORE_OPT_SEGMENT_SIZE, (int64_t)o->segment_size);
  if (r) die("txmq_store_set", r);
  r = txmq_store_open(st);
  if (r) {
    fprintf(stderr, "log-demo: opening the store in %s failed: %s: %s\n", o->dir,
            txmq_strerror(r), txmq_store_diag(st));
    txmq_store_free(st);
    exit(1);
  }
  return st;
}

/* What recovery found, in words, for people watching the demo. */
static void print_recovery(txmq_store_t* st) {
  txmq_log_t* log = txmq_store_log(st);
  const char* sd = txmq_store_diag(st);
  const char* ld = txmq_log_diag(log);
  uint64_t torn = txmq_log_torn_bytes(log);
  if (torn)
    printf("recovery: torn tail cut: %" PRIu64 " bytes\n", torn);
  else
    printf("recovery: log clean, no torn tail\n");
  if (ld && *ld) printf("recovery: log says: %s\n", ld);
  if (sd && *sd) printf("recovery: store says: %s\n", sd);
  printf("recovery: %" PRIu64 " log records replayed; log ends at position %" PRIu64 "\n",
         txmq_store_replayed(st), txmq_log_end(log));
}

static void closed_cb(txmq_store_t* st, int status, void* arg) {
  (void)st;
  if (status) fprintf(stderr, "log-demo: closing the store: %s\n", txmq_strerror(status));
  *(int*)arg = status ? 2 : 1;
}

static int store_close(uv_loop_t* loop, txmq_store_t* st) {
  int done = 0;
  int r = txmq_store_close(st, closed_cb, &done);
  if (r) die("txmq_store_close", r);
  run_until(loop, &done);
  txmq_store_free(st);
  return done == 1 ? 0 : 1;
}

/* ---- put and writer: chains of appends ---- */

typedef struct {
  uv_loop_t* loop;
  txmq_store_t* st;
  const opts_t* o;
  uint64_t issued, acked, limit;
  int inflight, failed, verbose;
  int ack_fd;
  uint64_t deadline_ms;
} writer_t;

static void issue(writer_t* w);

static void put_cb(txmq_store_t* st, int status, const txmq_msg_t* msg, void* arg) {
  (void)st;
  writer_t* w = arg;
  w->inflight--;
  if (status) {
    fprintf(stderr, "log-demo: put failed: %s\n", txmq_strerror(status));
    w->failed = 1;
    return;
  }
  w->acked++;
  char id[TXMQ_MSG_ID_STRLEN + 1];
  uint64_t n = 0;
  order_number(msg, &n);
  if (w->verbose)
    printf("put %s qid=%d offset=%" PRId64 " id=%s order=%" PRIu64 "\n",
           txmq_msg_topic(msg), (int)txmq_msg_queue_id(msg),
           txmq_msg_queue_offset(msg), txmq_msg_id_str(msg, id), n);
  if (w->ack_fd >= 0) {
    /* One write() per acknowledgement and no stdio buffer: when the demo
     * kills us, the file holds every acknowledgement we received, and
     * possibly a last line cut short (the checker skips it). */
    char line[256];
    int len = snprintf(line, sizeof line, "%s %d %" PRId64 " %s %" PRIu64 "\n",
                       txmq_msg_topic(msg), (int)txmq_msg_queue_id(msg),
                       txmq_msg_queue_offset(msg), txmq_msg_id_str(msg, id), n);
    if (write(w->ack_fd, line, (size_t)len) != len) {
      perror("log-demo: writing the acks file");
      w->failed = 1;
    }
  }
  issue(w);
}

static void issue(writer_t* w) {
  while (!w->failed && w->issued < w->limit && w->inflight < w->o->inflight) {
    if (w->deadline_ms && (uint64_t)now_ms() >= w->deadline_ms) return;
    txmq_msg_t* m = order_msg(w->o->topic, w->issued + 1, w->o->binary);
    int r = txmq_store_put(w->st, m, put_cb, w);
    txmq_msg_free(m);
    if (r == TXMQ_EAGAIN && w->inflight > 0) return; /* a callback resumes */
    if (r) {
      fprintf(stderr, "log-demo: txmq_store_put: %s\n", txmq_strerror(r));
      w->failed = 1;
      return;
    }
    w->issued++;
    w->inflight++;
  }
}

static int cmd_put(const opts_t* o, int writer_mode) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  writer_t w = {.loop = &loop, .o = o, .limit = o->count, .ack_fd = -1,
                .verbose = !writer_mode};
  w.st = store_open(&loop, o);
  if (writer_mode) {
    w.ack_fd = open(o->acks, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (w.ack_fd < 0) {
      perror(o->acks);
      return 1;
    }
    w.limit = UINT64_MAX;
    w.deadline_ms = (uint64_t)now_ms() + (uint64_t)o->seconds * 1000;
    /* Order numbers continue after what the topic already holds. */
    printf("writer: appending to %s with sync=always, %d in flight, "
           "acknowledgements to %s\n", o->topic, o->inflight, o->acks);
    fflush(stdout);
  }
  /* Continue the order numbers after the messages already in the topic. */
  int nq = txmq_store_topic_queues(w.st, o->topic);
  for (int q = 0; q < nq; q++) {
    int64_t b, e;
    if (txmq_store_queue_range(w.st, o->topic, q, &b, &e) == 0) w.issued += (uint64_t)e;
  }
  w.limit = w.limit == UINT64_MAX ? UINT64_MAX : w.limit + w.issued;
  /* Each callback issues the next put, so the chains run until the count
   * or the time is used up; then the last callbacks drain. */
  issue(&w);
  while (w.inflight > 0) uv_run(&loop, UV_RUN_ONCE);
  if (w.ack_fd >= 0) close(w.ack_fd);
  printf("%s: %" PRIu64 " messages acknowledged\n", writer_mode ? "writer" : "put", w.acked);
  int rc = store_close(&loop, w.st);
  uv_loop_close(&loop);
  return w.failed || rc ? 1 : 0;
}

/* ---- show ---- */

static void show_msg(const char* topic, int q, int64_t off, const txmq_msg_t* m) {
  char id[TXMQ_MSG_ID_STRLEN + 1];
  size_t blen = 0;
  const char* body = txmq_msg_body(m, &blen);
  int text = 1;
  for (size_t i = 0; i < blen; i++)
    if ((unsigned char)body[i] < 0x20 || (unsigned char)body[i] >= 0x7f) text = 0;
  printf("  %s q%d #%" PRId64 " id=%s keys=%s tags=%s ", topic, q, off,
         txmq_msg_id_str(m, id), txmq_msg_keys(m) ? txmq_msg_keys(m) : "-",
         txmq_msg_tags(m) ? txmq_msg_tags(m) : "-");
  if (text)
    printf("body=%.*s\n", (int)blen, body);
  else
    printf("body=<%zu binary bytes>\n", blen);
}

static int cmd_show(const opts_t* o) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  txmq_store_t* st = store_open(&loop, o);
  print_recovery(st);
  int bad = 0;
  for (size_t t = 0; t < txmq_store_topic_count(st); t++) {
    const char* topic = txmq_store_topic_name(st, t);
    if (o->topic && strcmp(o->topic, topic) != 0) continue;
    int nq = txmq_store_topic_queues(st, topic);
    printf("topic %s: %d queues\n", topic, nq);
    for (int q = 0; q < nq; q++) {
      int64_t b = 0, e = 0;
      int r = txmq_store_queue_range(st, topic, q, &b, &e);
      if (r) {
        fprintf(stderr, "log-demo: queue %s/%d: %s\n", topic, q, txmq_strerror(r));
        bad = 1;
        continue;
      }
      for (int64_t off = b; off < e; off++) {
        txmq_msg_t* m = NULL;
        r = txmq_store_get(st, topic, q, off, &m);
        if (r) {
          fprintf(stderr, "log-demo: get %s/%d#%" PRId64 ": %s\n", topic, q, off,
                  txmq_strerror(r));
          bad = 1;
          continue;
        }
        show_msg(topic, q, off, m);
        txmq_msg_free(m);
      }
    }
  }
  int rc = store_close(&loop, st);
  uv_loop_close(&loop);
  return bad || rc ? 1 : 0;
}

/* ---- check ---- */

static int cmd_check(const opts_t* o) {
  FILE* f = fopen(o->acks, "r");
  if (!f) {
    perror(o->acks);
    return 1;
  }
  uv_loop_t loop;
  uv_loop_init(&loop);
  txmq_store_t* st = store_open(&loop, o);
  print_recovery(st);

  uint64_t acked = 0, ok = 0, missing = 0, wrong = 0, partial = 0;
  char line[512];
  while (fgets(line, sizeof line, f)) {
    size_t len = strlen(line);
    if (len == 0 || line[len - 1] != '\n') {
      partial++; /* the writer died in the middle of this line */
      continue;
    }
    char topic[TXMQ_NAME_MAX + 1], id[TXMQ_MSG_ID_STRLEN + 1];
    int q;
    int64_t off;
    uint64_t n;
    if (sscanf(line, "%127s %d %" SCNd64 " %32s %" SCNu64, topic, &q, &off, id, &n) != 5) {
      partial++;
      continue;
    }
    acked++;
    txmq_msg_t* m = NULL;
    int r = txmq_store_get(st, topic, q, off, &m);
    if (r) {
      printf("MISSING %s q%d #%" PRId64 " (order %" PRIu64 "): %s\n", topic, q, off, n,
             txmq_strerror(r));
      missing++;
      continue;
    }
    char got[TXMQ_MSG_ID_STRLEN + 1], body[256];
    size_t blen = 0;
    const void* b = txmq_msg_body(m, &blen);
    int elen = order_body(n, 0, body, sizeof body);
    if (strcmp(txmq_msg_id_str(m, got), id) != 0 || blen != (size_t)elen ||
        memcmp(b, body, blen) != 0) {
      printf("WRONG %s q%d #%" PRId64 ": expected id %s (order %" PRIu64 "), got id %s\n",
             topic, q, off, id, n, got);
      wrong++;
    } else {
      ok++;
    }
    txmq_msg_free(m);
  }
  fclose(f);

  /* Everything stored, acknowledged or not. */
  uint64_t stored = 0;
  int nq = txmq_store_topic_queues(st, o->topic);
  for (int q = 0; q < nq; q++) {
    int64_t b, e;
    if (txmq_store_queue_range(st, o->topic, q, &b, &e) == 0) stored += (uint64_t)(e - b);
  }
  printf("check: %" PRIu64 " acknowledged, %" PRIu64 " read back intact, %" PRIu64
         " missing, %" PRIu64 " wrong; %" PRIu64 " messages in topic %s%s\n",
         acked, ok, missing, wrong, stored, o->topic,
         partial ? " (a cut-off last acknowledgement line was skipped)" : "");
  int rc = store_close(&loop, st);
  uv_loop_close(&loop);
  return missing || wrong || rc || acked == 0 ? 1 : 0;
}

/* ---- append: raw log records, no store ---- */

typedef struct {
  int done, failed;
  uint64_t left;
} raw_t;

static void raw_cb(txmq_log_t* log, int status, uint64_t first, void* arg) {
  (void)log;
  (void)first;
  raw_t* r = arg;
  if (status) {
    fprintf(stderr, "log-demo: append failed: %s\n", txmq_strerror(status));
    r->failed = 1;
  }
  if (--r->left == 0) r->done = 1;
}

static void raw_closed(txmq_log_t* log, void* arg) {
  (void)log;
  *(int*)arg = 1;
}

static int cmd_append(const opts_t* o) {
  if (o->type < 1 || o->type > 255) {
    fprintf(stderr, "log-demo: --type must be 1..255\n");
    return 2;
  }
  uv_loop_t loop;
  uv_loop_init(&loop);
  txmq_log_t* log = NULL;
  int r = txmq_log_new(&log, &loop, o->dir);
  if (r == 0 && o->segment_size)
    r = txmq_log_set(log, TXMQ_LOG_OPT_SEGMENT_SIZE, (int64_t)o->segment_size);
  if (r == 0) r = txmq_log_open(log);
  if (r) {
    fprintf(stderr, "log-demo: opening the log %s: %s: %s\n", o->dir, txmq_strerror(r),
            log ? txmq_log_diag(log) : "");
    txmq_log_free(log);
    return 1;
  }
  uint64_t size = o->hex ? strlen(o->hex) / 2 : o->size;
  uint8_t* payload = malloc(size ? size : 1);
  for (uint64_t k = 0; o->hex && k < size; k++) {
    unsigned v = 0;
    sscanf(o->hex + 2 * k, "%2x", &v); /* checked to be hex digits */
    payload[k] = (uint8_t)v;
  }
  raw_t st = {.left = o->count};
  for (uint64_t i = 0; i < o->count && !st.failed; i++) {
    for (uint64_t k = 0; !o->hex && k < size; k++) payload[k] = (uint8_t)(i + k * 13);
    txmq_log_rec_t rec = {.type = (uint8_t)o->type, .data = payload, .len = (uint32_t)size};
    uint64_t pos;
    r = txmq_log_append(log, &rec, 1, &pos, raw_cb, &st);
    if (r) {
      fprintf(stderr, "log-demo: txmq_log_append: %s\n", txmq_strerror(r));
      st.failed = 1;
      st.left -= o->count - i;
      break;
    }
    printf("appended type=%d len=%" PRIu64 " pos=%" PRIu64 "\n", o->type, size, pos);
  }
  if (st.left) run_until(&loop, &st.done);
  int closed = 0;
  txmq_log_close(log, raw_closed, &closed);
  run_until(&loop, &closed);
  txmq_log_free(log);
  free(payload);
  uv_run(&loop, UV_RUN_DEFAULT);
  uv_loop_close(&loop);
  return st.failed ? 1 : 0;
}

/* ---- command line ---- */

static void usage(FILE* f) {
  fputs("usage: log-demo put    DATA [--count N] [--topic T] [--binary] [--segment-size B]\n"
        "       log-demo show   DATA [--topic T]\n"
        "       log-demo writer DATA --acks FILE [--inflight N] [--seconds S]\n"
        "       log-demo check  DATA --acks FILE [--topic T]\n"
        "       log-demo append LOGDIR --type T [--count N] [--size S | --hex HEX]\n"
        "                       [--segment-size B]\n",
        f);
}

int main(int argc, char** argv) {
  opts_t o = {.topic = NULL, .count = 10, .size = 16, .type = 0, .inflight = 32,
              .seconds = 60};
  static const struct option lo[] = {
      {"count", required_argument, NULL, 'c'},  {"topic", required_argument, NULL, 't'},
      {"binary", no_argument, NULL, 'b'},       {"segment-size", required_argument, NULL, 'S'},
      {"acks", required_argument, NULL, 'a'},   {"inflight", required_argument, NULL, 'i'},
      {"seconds", required_argument, NULL, 's'}, {"type", required_argument, NULL, 'T'},
      {"size", required_argument, NULL, 'z'},   {"hex", required_argument, NULL, 'x'},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0}};
  const char* pos[2] = {NULL, NULL};
  int npos = 0, c;
  while ((c = getopt_long(argc, argv, "-h", lo, NULL)) != -1) {
    switch (c) {
      case 1:
        if (npos == 2) {
          usage(stderr);
          return 2;
        }
        pos[npos++] = optarg;
        break;
      case 'c': o.count = strtoull(optarg, NULL, 10); break;
      case 't': o.topic = optarg; break;
      case 'b': o.binary = 1; break;
      case 'S': o.segment_size = strtoull(optarg, NULL, 10); break;
      case 'a': o.acks = optarg; break;
      case 'i': o.inflight = atoi(optarg); break;
      case 's': o.seconds = atoi(optarg); break;
      case 'T': o.type = atoi(optarg); break;
      case 'z': o.size = strtoull(optarg, NULL, 10); break;
      case 'x':
        if (strlen(optarg) % 2 != 0 ||
            strspn(optarg, "0123456789abcdefABCDEF") != strlen(optarg)) {
          fprintf(stderr, "log-demo: --hex needs pairs of hex digits\n");
          return 2;
        }
        o.hex = optarg;
        break;
      case 'h': usage(stdout); return 0;
      default: usage(stderr); return 2;
    }
  }
  if (npos != 2 || o.inflight < 1) {
    usage(stderr);
    return 2;
  }
  const char* cmd = pos[0];
  o.dir = pos[1];
  /* show lists every topic unless one is named; the others use "orders". */
  if (!o.topic && strcmp(cmd, "show") != 0) o.topic = "orders";
  if (strcmp(cmd, "put") == 0) return cmd_put(&o, 0);
  if (strcmp(cmd, "show") == 0) return cmd_show(&o);
  if ((strcmp(cmd, "writer") == 0 || strcmp(cmd, "check") == 0) && !o.acks) {
    fprintf(stderr, "log-demo: %s needs --acks FILE\n", cmd);
    return 2;
  }
  if (strcmp(cmd, "writer") == 0) return cmd_put(&o, 1);
  if (strcmp(cmd, "check") == 0) return cmd_check(&o);
  if (strcmp(cmd, "append") == 0) return cmd_append(&o);
  usage(stderr);
  return 2;
}
