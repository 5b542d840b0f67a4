/*
 * mem_bench.c - the memory of a real txmqd under the two loads that could
 * grow it without bound: many idle connections, and a consumer that stops
 * reading while a producer keeps sending to its topic. Prints figures (the
 * daemon's VmRSS, and RssAnon: its heap, without the mapped index and log
 * files that the page cache backs) and asserts nothing about them; it fails
 * when txmqd does not start, a connection or a send fails, or txmqd does not
 * exit cleanly.
 *
 *   bench=mem case=idle rss_kb=.. anon_kb=..
 *       txmqd started (--listen 127.0.0.1:0, fresh data dir), nothing
 *       connected;
 *   bench=mem case=idle_conns conns=N rss_kb=.. anon_kb=.. per_conn_bytes=..
 *       anon_per_conn_bytes=..
 *       N connections that completed the hello handshake (the C client,
 *       role consumer) and then send nothing; per_conn_bytes is the RSS
 *       over the idle figure divided by N;
 *   bench=mem case=stalled_consumer sent_mb=.. msgs=.. secs=..
 *       rss_before_kb=.. rss_max_kb=.. rss_after_kb=..
 *       anon_before_kb=.. anon_max_kb=.. anon_after_kb=.. consumer=open|closed
 *       a consumer on a raw socket says hello, pipelines 2,048 long-polling
 *       receives (max 256 messages each) for topic "stall" and never reads
 *       its socket again, nor acknowledges anything; meanwhile a producer
 *       (the C client, 256 sends in flight) sends sent_mb MiB of 256-byte
 *       messages to that topic. RSS is sampled every 20 ms during the load
 *       (max) and 1 s after it (after). What bounds it: max_inflight
 *       requests per connection, max_output queued response bytes, and
 *       consumer_max_inflight unacknowledged messages per group. consumer=
 *       says whether the server still had the stalled connection open at
 *       the end (it closes one whose output stays full past 3 heartbeats).
 *
 *   mem_bench [--smoke] [--conns N] [--stall-mb M] [--sync always|interval|never]
 *             [--dir BASE] [--txmqd PATH]
 * Defaults: 1,000 connections, 200 MiB, --sync never (memory, not the disk,
 * is measured; the log is the same either way), BASE $TMPDIR else /tmp.
 * --smoke: 100 connections, 4 MiB (ctest, a few seconds). txmqd is taken
 * from the bin folder of this binary unless --txmqd says otherwise; its log
 * is kept (and named) only when something failed.
 */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <msgpack.h>
#include <uv.h>

#include "txmq/client.h"
#include "txmq/error.h"
#include "txmq/msg.h"

#define BODY 256
#define STALL_TOPIC "stall"
#define STALL_GROUP "stalled"
#define STALL_RECEIVES 2048
#define PRODUCER_WINDOW 256
#define CONNECTS_IN_FLIGHT 64
#define SAMPLE_MS 20
#define START_TIMEOUT_MS 30000

typedef struct {
  int conns;
  double stall_mb;
  const char* sync;
  const char* base;
  char txmqd[PATH_MAX];
} opts_t;

/* The daemon under test. */
typedef struct {
  pid_t pid;
  char port[16];
  char dir[PATH_MAX];
  char log[PATH_MAX + 16];
} daemon_t;

/* Memory of a process, in kB (from /proc/PID/status). */
typedef struct {
  long rss, anon;
} mem_t;

static void die(const daemon_t* d, const char* fmt, ...)
    __attribute__((format(printf, 2, 3), noreturn));

static void die(const daemon_t* d, const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "mem_bench: ");
  vfprintf(stderr, fmt, ap);
  fprintf(stderr, "\n");
  va_end(ap);
  if (d != NULL && d->pid > 0) {
    kill(d->pid, SIGKILL);
    waitpid(d->pid, NULL, 0);
    fprintf(stderr, "mem_bench: txmqd's log and data kept in %s\n", d->dir);
  }
  exit(1);
}

static double now_ms(void) {
  return (double)uv_hrtime() / 1e6;
}

static void sleep_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

static mem_t mem_of(const daemon_t* d) {
  char path[64], line[256];
  snprintf(path, sizeof path, "/proc/%ld/status", (long)d->pid);
  FILE* f = fopen(path, "r");
  if (f == NULL) die(d, "cannot read %s: %s (did txmqd exit?)", path, strerror(errno));
  mem_t m = {-1, -1};
  while (fgets(line, sizeof line, f) != NULL) {
    if (strncmp(line, "VmRSS:", 6) == 0) m.rss = strtol(line + 6, NULL, 10);
    else if (strncmp(line, "RssAnon:", 8) == 0) m.anon = strtol(line + 8, NULL, 10);
  }
  fclose(f);
  if (m.rss < 0 || m.anon < 0) die(d, "no VmRSS or RssAnon in %s", path);
  return m;
}

/* ---- files ---- */

static int rm_tree(const char* path) {
  struct stat sb;
  if (lstat(path, &sb) != 0) return -1;
  if (S_ISDIR(sb.st_mode)) {
    DIR* dir = opendir(path);
    if (dir == NULL) return -1;
    struct dirent* e;
    while ((e = readdir(dir)) != NULL) {
      if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
      char child[PATH_MAX];
      snprintf(child, sizeof child, "%s/%s", path, e->d_name);
      rm_tree(child);
    }
    closedir(dir);
  }
  return remove(path);
}

/* ---- txmqd ---- */

static void start_txmqd(const opts_t* o, daemon_t* d) {
  snprintf(d->dir, sizeof d->dir, "%s/txmq-mem-bench-XXXXXX", o->base);
  if (mkdtemp(d->dir) == NULL) die(NULL, "cannot create %s: %s", d->dir, strerror(errno));
  char data[PATH_MAX + 16], scripts[PATH_MAX + 16];
  snprintf(data, sizeof data, "%s/data", d->dir);
  snprintf(scripts, sizeof scripts, "%s/scripts", d->dir);
  snprintf(d->log, sizeof d->log, "%s/txmqd.log", d->dir);
  if (mkdir(scripts, 0755) != 0) die(NULL, "cannot create %s: %s", scripts, strerror(errno));
  d->pid = fork();
  if (d->pid < 0) die(NULL, "fork: %s", strerror(errno));
  if (d->pid == 0) {
    int fd = open(d->log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) {
      dup2(fd, 2);
      close(fd);
    }
    execl(o->txmqd, o->txmqd, "--listen", "127.0.0.1:0", "--data", data, "--scripts",
          scripts, "--sync", o->sync, "--log-level", "info", (char*)NULL);
    fprintf(stderr, "exec %s: %s\n", o->txmqd, strerror(errno));
    _exit(127);
  }
}

/* Waits for the "listening" line and reads the port from it. */
static void wait_listening(daemon_t* d) {
  const char* key = "msg=\"listening\" addr=127.0.0.1:";
  double t0 = now_ms();
  while (now_ms() - t0 < START_TIMEOUT_MS) {
    FILE* f = fopen(d->log, "r");
    char line[2048];
    while (f != NULL && fgets(line, sizeof line, f) != NULL) {
      const char* a = strstr(line, key);
      if (a == NULL) continue;
      a += strlen(key);
      size_t n = strspn(a, "0123456789");
      if (n > 0 && n < sizeof d->port) {
        memcpy(d->port, a, n);
        d->port[n] = '\0';
        fclose(f);
        return;
      }
    }
    if (f != NULL) fclose(f);
    int st;
    if (waitpid(d->pid, &st, WNOHANG) == d->pid) {
      d->pid = 0;
      die(d, "txmqd exited at start (status %d); its log: %s", st, d->log);
    }
    sleep_ms(10);
  }
  die(d, "txmqd did not log \"listening\" within %d s", START_TIMEOUT_MS / 1000);
}

static void stop_txmqd(daemon_t* d) {
  kill(d->pid, SIGTERM);
  double t0 = now_ms();
  int st;
  while (waitpid(d->pid, &st, WNOHANG) != d->pid) {
    if (now_ms() - t0 > 60000) die(d, "txmqd did not stop within 60 s of SIGTERM");
    sleep_ms(20);
  }
  d->pid = 0;
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
    die(d, "txmqd did not exit cleanly (status %d); its log: %s", st, d->log);
}

/* ---- idle connections ---- */

typedef struct conns_s conns_t;
typedef struct {
  conns_t* cs;
  txmq_client_t* c;
  char id[32];
} conn_t;

struct conns_s {
  uv_loop_t loop;
  const daemon_t* d;
  conn_t* v;
  int n, started, connected, closed, failed;
  char addr[64];
  int64_t status_conns;
  int status_done;
};

static void connect_next(conns_t* cs);

static void on_conn(txmq_client_t* c, int status, void* arg) {
  conn_t* k = arg;
  conns_t* cs = k->cs;
  if (status != 0) {
    if (cs->failed++ == 0)
      fprintf(stderr, "mem_bench: connection %s: %s (%s)\n", k->id, txmq_err_name(status),
              txmq_client_diag(c));
    return;
  }
  cs->connected++;
  connect_next(cs);
}

static void connect_next(conns_t* cs) {
  while (cs->started < cs->n && cs->started - cs->connected - cs->failed < CONNECTS_IN_FLIGHT) {
    conn_t* k = &cs->v[cs->started++];
    k->cs = cs;
    snprintf(k->id, sizeof k->id, "idle-%d", cs->started);
    txmq_client_options_t o;
    memset(&o, 0, sizeof o);
    o.client_id = k->id;
    o.role = TXMQ_ROLE_CONSUMER;
    int rc = txmq_client_new(&k->c, &cs->loop, &o);
    if (rc == 0) rc = txmq_client_connect(k->c, cs->addr, on_conn, k);
    if (rc != 0) die(cs->d, "client %s: %s", k->id, txmq_err_name(rc));
  }
}

static void on_status(txmq_client_t* c, int status, const msgpack_object* rep, void* arg) {
  conns_t* cs = arg;
  cs->status_done = 1;
  if (status != 0) die(cs->d, "status: %s (%s)", txmq_err_name(status), txmq_client_diag(c));
  const msgpack_object* v = txmq_client_map_get(rep, "connections");
  if (v != NULL && v->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
    cs->status_conns = (int64_t)v->via.u64;
}

static void on_closed(txmq_client_t* c, void* arg) {
  conn_t* k = arg;
  txmq_client_free(c);
  k->c = NULL;
  k->cs->closed++;
}

static void on_settled(uv_timer_t* t) {
  *(int*)t->data = 1;
}

/* Runs the loop for ms milliseconds. */
static void run_for(uv_loop_t* loop, uint64_t ms) {
  uv_timer_t t;
  int done = 0;
  uv_timer_init(loop, &t);
  t.data = &done;
  uv_timer_start(&t, on_settled, ms, 0);
  while (!done) uv_run(loop, UV_RUN_ONCE);
  uv_close((uv_handle_t*)&t, NULL);
  uv_run(loop, UV_RUN_NOWAIT);
}

static void idle_conns(const opts_t* o, const daemon_t* d, mem_t idle) {
  conns_t* cs = calloc(1, sizeof *cs);
  if (cs == NULL) die(d, "out of memory");
  cs->d = d;
  cs->n = o->conns;
  cs->v = calloc((size_t)o->conns, sizeof *cs->v);
  if (cs->v == NULL) die(d, "out of memory");
  snprintf(cs->addr, sizeof cs->addr, "127.0.0.1:%s", d->port);
  uv_loop_init(&cs->loop);
  connect_next(cs);
  while (cs->connected + cs->failed < cs->n) uv_run(&cs->loop, UV_RUN_ONCE);
  if (cs->failed) die(d, "%d of %d connections failed", cs->failed, cs->n);
  /* What the server counts, then let it settle. */
  int rc = txmq_client_status(cs->v[0].c, on_status, cs);
  if (rc != 0) die(d, "status: %s", txmq_err_name(rc));
  while (!cs->status_done) uv_run(&cs->loop, UV_RUN_ONCE);
  if (cs->status_conns < cs->n)
    die(d, "txmqd counts %" PRId64 " connections, %d were opened", cs->status_conns, cs->n);
  run_for(&cs->loop, 500);
  mem_t m = mem_of(d);
  printf("bench=mem case=idle_conns conns=%d rss_kb=%ld anon_kb=%ld per_conn_bytes=%.0f"
         " anon_per_conn_bytes=%.0f\n",
         cs->n, m.rss, m.anon, (double)(m.rss - idle.rss) * 1024.0 / cs->n,
         (double)(m.anon - idle.anon) * 1024.0 / cs->n);
  fflush(stdout);
  for (int i = 0; i < cs->n; i++) {
    rc = txmq_client_close(cs->v[i].c, on_closed, &cs->v[i]);
    if (rc != 0) die(d, "closing a client: %s", txmq_err_name(rc));
  }
  while (cs->closed < cs->n) uv_run(&cs->loop, UV_RUN_ONCE);
  uv_run(&cs->loop, UV_RUN_DEFAULT);
  if (uv_loop_close(&cs->loop) != 0) die(d, "the clients' loop has handles left open");
  free(cs->v);
  free(cs);
}

/* ---- the stalled consumer: a raw socket ---- */

static void write_all(const daemon_t* d, int fd, const char* buf, size_t len) {
  while (len > 0) {
    ssize_t n = write(fd, buf, len);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) die(d, "stalled consumer: write: %s", strerror(errno));
    buf += n;
    len -= (size_t)n;
  }
}

static void read_all(const daemon_t* d, int fd, char* buf, size_t len) {
  while (len > 0) {
    ssize_t n = read(fd, buf, len);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0)
      die(d, "stalled consumer: read: %s", n == 0 ? "connection closed" : strerror(errno));
    buf += n;
    len -= (size_t)n;
  }
}

static void pack_str(msgpack_packer* pk, const char* s) {
  size_t n = strlen(s);
  msgpack_pack_str(pk, n);
  msgpack_pack_str_body(pk, s, n);
}

/* Frames the map in sb (length prefix) into out. */
static size_t frame(const msgpack_sbuffer* sb, char* out, size_t cap) {
  if (sb->size + 4 > cap) return 0;
  uint32_t be = htonl((uint32_t)sb->size);
  memcpy(out, &be, 4);
  memcpy(out + 4, sb->data, sb->size);
  return sb->size + 4;
}

/* Connects, completes the hello, pipelines the receives; returns the
 * socket, which is never read again until the end. */
static int stalled_consumer(const daemon_t* d) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) die(d, "socket: %s", strerror(errno));
  /* A small receive buffer: the server's output backs up into its own
   * queue instead of this kernel buffer. */
  int small = 4096;
  setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
  struct timeval tv = {10, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_port = htons((uint16_t)atoi(d->port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, (struct sockaddr*)&a, sizeof a) != 0)
    die(d, "stalled consumer: connect: %s", strerror(errno));

  msgpack_sbuffer sb;
  msgpack_sbuffer_init(&sb);
  msgpack_packer pk;
  msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
  msgpack_pack_map(&pk, 5);
  pack_str(&pk, "op");
  pack_str(&pk, "hello");
  pack_str(&pk, "id");
  msgpack_pack_uint64(&pk, 1);
  pack_str(&pk, "version");
  msgpack_pack_int(&pk, TXMQ_PROTOCOL_VERSION);
  pack_str(&pk, "client");
  pack_str(&pk, "stalled-consumer");
  pack_str(&pk, "role");
  pack_str(&pk, "consumer");
  char buf[4096];
  size_t n = frame(&sb, buf, sizeof buf);
  write_all(d, fd, buf, n);

  /* The hello's answer: ok = true. */
  uint32_t be;
  read_all(d, fd, (char*)&be, 4);
  uint32_t len = ntohl(be);
  if (len == 0 || len > sizeof buf) die(d, "stalled consumer: hello answer of %u bytes", len);
  read_all(d, fd, buf, len);
  msgpack_unpacked up;
  msgpack_unpacked_init(&up);
  if (msgpack_unpack_next(&up, buf, len, NULL) != MSGPACK_UNPACK_SUCCESS)
    die(d, "stalled consumer: the hello answer is not msgpack");
  const msgpack_object* ok = txmq_client_map_get(&up.data, "ok");
  if (ok == NULL || ok->type != MSGPACK_OBJECT_BOOLEAN || !ok->via.boolean)
    die(d, "stalled consumer: hello refused");
  msgpack_unpacked_destroy(&up);

  /* The receives, as many as the socket takes without blocking. */
  int fl = fcntl(fd, F_GETFL);
  fcntl(fd, F_SETFL, fl | O_NONBLOCK);
  for (uint64_t id = 2; id < 2 + STALL_RECEIVES; id++) {
    msgpack_sbuffer_clear(&sb);
    msgpack_pack_map(&pk, 7);
    pack_str(&pk, "op");
    pack_str(&pk, "receive");
    pack_str(&pk, "id");
    msgpack_pack_uint64(&pk, id);
    pack_str(&pk, "group");
    pack_str(&pk, STALL_GROUP);
    pack_str(&pk, "topic");
    pack_str(&pk, STALL_TOPIC);
    pack_str(&pk, "max");
    msgpack_pack_int(&pk, 256);
    pack_str(&pk, "wait_ms");
    msgpack_pack_int(&pk, 30000);
    pack_str(&pk, "from");
    pack_str(&pk, "earliest");
    n = frame(&sb, buf, sizeof buf);
    ssize_t w = write(fd, buf, n);
    if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
    if (w != (ssize_t)n) die(d, "stalled consumer: write: %s", strerror(errno));
  }
  msgpack_sbuffer_destroy(&sb);
  return fd;
}

/* Drains the socket for a moment: 1 if the server closed it. */
static int consumer_closed(int fd) {
  char buf[65536];
  double t0 = now_ms();
  while (now_ms() - t0 < 200) {
    ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
    if (n == 0) return 1;
    if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) return 1;
    if (n < 0) sleep_ms(5);
  }
  return 0;
}

/* ---- the producer ---- */

typedef struct {
  uv_loop_t loop;
  uv_timer_t sampler;
  const daemon_t* d;
  txmq_client_t* c;
  txmq_msg_t* msg;
  uint64_t target, issued, done;
  int inflight, connected, finished, closed;
  mem_t max;
} producer_t;

static void send_more(producer_t* p);

static void on_sent(txmq_client_t* c, int status, const txmq_send_result_t* r, void* arg) {
  (void)r;
  producer_t* p = arg;
  if (status != 0) die(p->d, "send: %s (%s)", txmq_err_name(status), txmq_client_diag(c));
  p->inflight--;
  p->done++;
  send_more(p);
}

static void send_more(producer_t* p) {
  while (p->issued < p->target && p->inflight < PRODUCER_WINDOW) {
    int rc = txmq_client_send(p->c, p->msg, on_sent, p);
    if (rc != 0) die(p->d, "send: %s (%s)", txmq_err_name(rc), txmq_client_diag(p->c));
    p->issued++;
    p->inflight++;
  }
  if (p->done == p->target) p->finished = 1;
}

static void on_producer(txmq_client_t* c, int status, void* arg) {
  producer_t* p = arg;
  if (status != 0) die(p->d, "producer: connect: %s (%s)", txmq_err_name(status),
                       txmq_client_diag(c));
  p->connected = 1;
  send_more(p);
}

static void on_sample(uv_timer_t* t) {
  producer_t* p = t->data;
  mem_t m = mem_of(p->d);
  if (m.rss > p->max.rss) p->max.rss = m.rss;
  if (m.anon > p->max.anon) p->max.anon = m.anon;
}

static void on_producer_closed(txmq_client_t* c, void* arg) {
  producer_t* p = arg;
  txmq_client_free(c);
  p->c = NULL;
  p->closed = 1;
}

static void stalled(const opts_t* o, const daemon_t* d) {
  mem_t before = mem_of(d);
  int fd = stalled_consumer(d);
  producer_t* p = calloc(1, sizeof *p);
  if (p == NULL) die(d, "out of memory");
  p->d = d;
  p->max = before;
  p->target = (uint64_t)(o->stall_mb * 1048576.0 / BODY);
  char body[BODY];
  for (size_t i = 0; i < sizeof body; i++) body[i] = (char)('a' + i % 26);
  p->msg = txmq_msg_new();
  if (p->msg == NULL || txmq_msg_set_topic(p->msg, STALL_TOPIC) != 0 ||
      txmq_msg_set_body(p->msg, body, sizeof body) != 0)
    die(d, "cannot build the message");
  uv_loop_init(&p->loop);
  uv_timer_init(&p->loop, &p->sampler);
  p->sampler.data = p;
  uv_timer_start(&p->sampler, on_sample, SAMPLE_MS, SAMPLE_MS);
  txmq_client_options_t co;
  memset(&co, 0, sizeof co);
  co.client_id = "mem-producer";
  co.role = TXMQ_ROLE_PRODUCER;
  char addr[64];
  snprintf(addr, sizeof addr, "127.0.0.1:%s", d->port);
  int rc = txmq_client_new(&p->c, &p->loop, &co);
  if (rc == 0) rc = txmq_client_connect(p->c, addr, on_producer, p);
  if (rc != 0) die(d, "producer: %s", txmq_err_name(rc));
  double t0 = now_ms();
  while (!p->finished) uv_run(&p->loop, UV_RUN_ONCE);
  double secs = (now_ms() - t0) / 1000.0;
  run_for(&p->loop, 1000);
  mem_t after = mem_of(d);
  int closed = consumer_closed(fd);
  close(fd);
  rc = txmq_client_close(p->c, on_producer_closed, p);
  if (rc != 0) die(d, "producer: close: %s", txmq_err_name(rc));
  uv_close((uv_handle_t*)&p->sampler, NULL);
  uv_run(&p->loop, UV_RUN_DEFAULT);
  if (uv_loop_close(&p->loop) != 0) die(d, "the producer's loop has handles left open");
  printf("bench=mem case=stalled_consumer sent_mb=%.0f msgs=%" PRIu64 " secs=%.1f"
         " rss_before_kb=%ld rss_max_kb=%ld rss_after_kb=%ld anon_before_kb=%ld"
         " anon_max_kb=%ld anon_after_kb=%ld consumer=%s\n",
         (double)p->done * BODY / 1048576.0, p->done, secs, before.rss, p->max.rss,
         after.rss, before.anon, p->max.anon, after.anon, closed ? "closed" : "open");
  fflush(stdout);
  txmq_msg_free(p->msg);
  free(p);
}

/* ---- main ---- */

static void usage(void) {
  fprintf(stderr,
          "usage: mem_bench [--smoke] [--conns N] [--stall-mb M]\n"
          "                 [--sync always|interval|never] [--dir BASE] [--txmqd PATH]\n");
  exit(2);
}

int main(int argc, char** argv) {
  signal(SIGPIPE, SIG_IGN);
  opts_t o;
  memset(&o, 0, sizeof o);
  o.conns = 1000;
  o.stall_mb = 200;
  o.sync = "never";
  int smoke = 0, set_conns = 0, set_mb = 0;
  for (int k = 1; k < argc; k++) {
    const char* a = argv[k];
    int more = k + 1 < argc;
    if (strcmp(a, "--smoke") == 0) smoke = 1;
    else if (strcmp(a, "--conns") == 0 && more) {
      o.conns = atoi(argv[++k]);
      set_conns = 1;
    } else if (strcmp(a, "--stall-mb") == 0 && more) {
      o.stall_mb = atof(argv[++k]);
      set_mb = 1;
    } else if (strcmp(a, "--sync") == 0 && more) {
      o.sync = argv[++k];
      if (strcmp(o.sync, "always") != 0 && strcmp(o.sync, "interval") != 0 &&
          strcmp(o.sync, "never") != 0)
        usage();
    } else if (strcmp(a, "--dir") == 0 && more) o.base = argv[++k];
    else if (strcmp(a, "--txmqd") == 0 && more)
      snprintf(o.txmqd, sizeof o.txmqd, "%s", argv[++k]);
    else usage();
  }
  if (smoke) {
    if (!set_conns) o.conns = 100;
    if (!set_mb) o.stall_mb = 4;
  }
  if (o.conns < 1 || o.stall_mb <= 0) usage();
  if (o.base == NULL) o.base = getenv("TMPDIR");
  if (o.base == NULL || *o.base == '\0') o.base = "/tmp";
  if (o.txmqd[0] == '\0') {
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0) die(NULL, "readlink /proc/self/exe: %s", strerror(errno));
    self[n] = '\0';
    snprintf(o.txmqd, sizeof o.txmqd, "%s/txmqd", dirname(self));
  }
  if (access(o.txmqd, X_OK) != 0) die(NULL, "%s is not built (or pass --txmqd PATH)", o.txmqd);

  /* Both ends of every connection live on this machine: this process and
   * txmqd (which inherits the limit) each need a descriptor per
   * connection. */
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < (rlim_t)o.conns + 256)
    die(NULL, "%d connections need more open files than the limit allows (%llu; ulimit -n)",
        o.conns, (unsigned long long)rl.rlim_cur);

  daemon_t d;
  memset(&d, 0, sizeof d);
  start_txmqd(&o, &d);
  wait_listening(&d);
  printf("# mem_bench: txmqd pid %ld port %s sync %s, %d connections, %.0f MiB to a stalled"
         " consumer\n", (long)d.pid, d.port, o.sync, o.conns, o.stall_mb);
  sleep_ms(300);
  mem_t idle = mem_of(&d);
  printf("bench=mem case=idle rss_kb=%ld anon_kb=%ld\n", idle.rss, idle.anon);
  fflush(stdout);
  idle_conns(&o, &d, idle);
  stalled(&o, &d);
  stop_txmqd(&d);
  rm_tree(d.dir);
  return 0;
}
