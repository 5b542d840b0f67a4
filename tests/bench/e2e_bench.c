/*
 * e2e_bench.c - end-to-end load client of txmqd for the peer benchmarks
 * (../shared/bench beside the repository, "the harness contract"): the async C client on one
 * connection, a fixed window of in-flight requests, the same payload for
 * every message.
 *
 *   e2e_bench HOST PORT MODE INFLIGHT MSGS MAXSEC SERVER_PID DURABILITY [SIZE]
 *   e2e_bench --smoke
 *
 * MODE plain     : send (one acknowledged plain message).
 *      tx-2step  : tx.half, then once it is acknowledged tx.end commit;
 *                  latency = half sent -> end reply.
 *      tx-oneway : tx.half acknowledged, tx.end commit sent without waiting
 *                  (RocketMQ's oneway END_TRANSACTION); latency = half round
 *                  trip. Every end reply is still awaited before the clock
 *                  stops and checked.
 *      tx-hosted : tx.send to group "bench" whose scripts/bench.lua commits;
 *                  latency = request -> reply (state must be committed).
 * Bounded by MSGS and MAXSEC (no new message once MAXSEC has passed).
 * DURABILITY is only the label of the line (the server's --sync decides).
 * srv_cpu comes from /proc/SERVER_PID/stat, cli_cpu from getrusage.
 *
 * Verification (after the load, on the same connection): the status op
 * must show topic "bench" holding exactly the acknowledged messages and no
 * pending or parked transaction; any failed request is a FAIL too.
 *
 * --smoke: starts txmqd from the same bin directory (ephemeral port, temp
 * data and scripts dirs, --sync always) once per run, runs every mode at 1
 * and 32 in flight with 300 messages, stops it with SIGTERM; exit 0 only if
 * every line says verified=ok.
 */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <libgen.h>
#include <limits.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <uv.h>

#include "txmq/client.h"
#include "txmq/error.h"
#include "txmq/msg.h"
#include "txmq/tx.h"

#define TOPIC "bench"
#define HOSTED_GROUP "bench"
#define PRODUCER_GROUP "bench-producer"

enum { M_PLAIN, M_2STEP, M_ONEWAY, M_HOSTED };

/* ---- measurement helpers ---- */

static uint64_t mono_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static double self_cpu_s(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
         (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

/* utime + stime of process pid in seconds; -1 if unreadable. */
static double proc_cpu_s(long pid) {
  if (pid <= 0) return -1;
  char path[64], buf[2048];
  snprintf(path, sizeof path, "/proc/%ld/stat", pid);
  int fd = open(path, O_RDONLY);
  if (fd < 0) return -1;
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return -1;
  buf[n] = '\0';
  /* the command name may hold spaces: fields count from the last ')' */
  char* p = strrchr(buf, ')');
  if (p == NULL) return -1;
  unsigned long long ut = 0, st = 0;
  /* after ") ": state is field 3; utime 14, stime 15 */
  int field = 2;
  char* save = NULL;
  for (char* tok = strtok_r(p + 1, " ", &save); tok != NULL;
       tok = strtok_r(NULL, " ", &save)) {
    field++;
    if (field == 14) ut = strtoull(tok, NULL, 10);
    if (field == 15) {
      st = strtoull(tok, NULL, 10);
      break;
    }
  }
  long hz = sysconf(_SC_CLK_TCK);
  if (hz <= 0) hz = 100;
  return (double)(ut + st) / (double)hz;
}

static int cmp_u64(const void* a, const void* b) {
  uint64_t x = *(const uint64_t*)a, y = *(const uint64_t*)b;
  return x < y ? -1 : x > y;
}

/* v sorted ascending; nearest rank. */
static uint64_t percentile(const uint64_t* v, size_t n, double p) {
  if (n == 0) return 0;
  size_t i = (size_t)(p / 100.0 * (double)(n - 1) + 0.5);
  return v[i < n ? i : n - 1];
}

/* ---- one measurement ---- */

typedef struct {
  uint64_t t0;
  uint8_t tx_id[TXMQ_TX_ID_LEN];
} slot_t;

typedef struct {
  uv_loop_t loop;
  txmq_client_t* c;
  txmq_msg_t* msg;
  const txmq_msg_t* msgs[1];
  int mode, inflight, active;
  long msgs_max, issued, done, ends_pending;
  double maxsec;
  uint64_t t_start, t_end, *lat;
  slot_t* slots;
  long failed;
  int connected, verified;
  int64_t topic_msgs, tx_pending, tx_parked;
} run_t;

static run_t R;

static void start_msg(slot_t* s);

static void fail(const char* what, int status) {
  if (R.failed++ < 3)
    fprintf(stderr, "e2e_bench: %s: %s (%s)\n", what, txmq_err_name(status),
            R.c != NULL ? txmq_client_diag(R.c) : "");
}

static void on_closed(txmq_client_t* c, void* arg) {
  (void)arg;
  txmq_client_free(c);
  R.c = NULL;
}

static void finish(void) {
  if (R.c != NULL) txmq_client_close(R.c, on_closed, NULL);
}

static int64_t obj_int(const msgpack_object* o) {
  if (o == NULL) return -1;
  if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER) return (int64_t)o->via.u64;
  if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) return o->via.i64;
  return -1;
}

static void on_status(txmq_client_t* c, int status, const msgpack_object* rep,
                      void* arg) {
  (void)c;
  (void)arg;
  if (status != 0 || rep == NULL) {
    fail("status", status);
    finish();
    return;
  }
  R.topic_msgs = 0; /* no topic "bench": nothing stored */
  const msgpack_object* topics = txmq_client_map_get(rep, "topics");
  if (topics != NULL && topics->type == MSGPACK_OBJECT_ARRAY) {
    for (uint32_t i = 0; i < topics->via.array.size; i++) {
      const msgpack_object* t = &topics->via.array.ptr[i];
      const msgpack_object* name = txmq_client_map_get(t, "name");
      if (name == NULL || name->type != MSGPACK_OBJECT_STR) continue;
      if (name->via.str.size == strlen(TOPIC) &&
          memcmp(name->via.str.ptr, TOPIC, strlen(TOPIC)) == 0)
        R.topic_msgs = obj_int(txmq_client_map_get(t, "messages"));
    }
  }
  const msgpack_object* tx = txmq_client_map_get(rep, "tx");
  R.tx_pending = obj_int(txmq_client_map_get(tx, "pending"));
  R.tx_parked = obj_int(txmq_client_map_get(tx, "parked"));
  R.verified = 1;
  finish();
}

/* All slots retired and every end reply in: stop the clock, verify. */
static void maybe_verify(void) {
  if (R.active > 0 || R.ends_pending > 0 || R.c == NULL) return;
  int rc = txmq_client_status(R.c, on_status, NULL);
  if (rc != 0) {
    fail("status", rc);
    finish();
  }
}

static void complete(slot_t* s) {
  uint64_t t = mono_ns();
  R.lat[R.done++] = t - s->t0;
  R.t_end = t;
  start_msg(s);
}

static void on_send(txmq_client_t* c, int status, const txmq_send_result_t* r,
                    void* arg) {
  (void)c;
  (void)r;
  if (status != 0) {
    fail("send", status);
    start_msg(arg);
    return;
  }
  complete(arg);
}

static void on_end(txmq_client_t* c, int status, txmq_tx_state_t state,
                   void* arg) {
  (void)c;
  if (status == 0 && state != TXMQ_TX_COMMITTED) status = TXMQ_EPROTO;
  if (status != 0) {
    fail("tx.end", status);
    start_msg(arg);
    return;
  }
  complete(arg);
}

static void on_end_oneway(txmq_client_t* c, int status, txmq_tx_state_t state,
                          void* arg) {
  (void)c;
  (void)arg;
  if (status == 0 && state != TXMQ_TX_COMMITTED) status = TXMQ_EPROTO;
  if (status != 0) fail("tx.end (oneway)", status);
  R.t_end = mono_ns(); /* the rate counts until the last commit applied */
  R.ends_pending--;
  maybe_verify();
}

static void on_half(txmq_client_t* c, int status, const txmq_half_result_t* r,
                    void* arg) {
  slot_t* s = arg;
  if (status != 0) {
    fail("tx.half", status);
    start_msg(s);
    return;
  }
  /* the producer's local transaction would run here */
  memcpy(s->tx_id, r->tx_id, TXMQ_TX_ID_LEN);
  if (R.mode == M_2STEP) {
    int rc = txmq_client_tx_end(c, s->tx_id, TXMQ_TX_COMMIT, on_end, s);
    if (rc != 0) {
      fail("tx.end", rc);
      start_msg(s);
    }
    return;
  }
  int rc = txmq_client_tx_end(c, s->tx_id, TXMQ_TX_COMMIT, on_end_oneway, NULL);
  if (rc != 0) fail("tx.end (oneway)", rc);
  else R.ends_pending++;
  complete(s);
}

static void on_tx_send(txmq_client_t* c, int status,
                       const txmq_tx_send_result_t* r, void* arg) {
  (void)c;
  if (status == 0 && r->state != TXMQ_TX_COMMITTED) {
    fprintf(stderr, "e2e_bench: tx.send not committed (state %d): %s\n",
            (int)r->state, r->diag);
    status = TXMQ_EPROTO;
  }
  if (status != 0) {
    fail("tx.send", status);
    start_msg(arg);
    return;
  }
  complete(arg);
}

static void start_msg(slot_t* s) {
  if (R.issued >= R.msgs_max || R.failed ||
      (double)(mono_ns() - R.t_start) > R.maxsec * 1e9) {
    R.active--;
    maybe_verify();
    return;
  }
  R.issued++;
  s->t0 = mono_ns();
  int rc;
  switch (R.mode) {
    case M_PLAIN:
      rc = txmq_client_send(R.c, R.msg, on_send, s);
      break;
    case M_HOSTED:
      rc = txmq_client_tx_send(R.c, HOSTED_GROUP, R.msgs, 1, NULL, 0, 0,
                               on_tx_send, s);
      break;
    default:
      rc = txmq_client_tx_half(R.c, PRODUCER_GROUP, R.msgs, 1, 0, on_half, s);
      break;
  }
  if (rc != 0) {
    fail("request", rc);
    R.active--;
    maybe_verify();
  }
}

static void on_connected(txmq_client_t* c, int status, void* arg) {
  (void)arg;
  if (status != 0) {
    fprintf(stderr, "e2e_bench: connect: %s (%s)\n", txmq_err_name(status),
            txmq_client_diag(c));
    R.failed++;
    finish();
    return;
  }
  R.connected = 1;
  R.t_start = R.t_end = mono_ns();
  R.active = R.inflight;
  for (int i = 0; i < R.inflight; i++) start_msg(&R.slots[i]);
}

static int mode_of(const char* s) {
  if (strcmp(s, "plain") == 0) return M_PLAIN;
  if (strcmp(s, "tx-2step") == 0) return M_2STEP;
  if (strcmp(s, "tx-oneway") == 0) return M_ONEWAY;
  if (strcmp(s, "tx-hosted") == 0) return M_HOSTED;
  return -1;
}

/* Runs one measurement and prints its line; 0 if verified. */
static int run_one(const char* host, const char* port, const char* mode,
                   int inflight, long msgs, double maxsec, long spid,
                   const char* dur, size_t size) {
  memset(&R, 0, sizeof R);
  R.mode = mode_of(mode);
  if (R.mode < 0 || inflight < 1 || msgs < 1 || maxsec <= 0) {
    fprintf(stderr, "e2e_bench: bad mode, inflight, msgs or maxsec\n");
    return 2;
  }
  R.inflight = inflight;
  R.msgs_max = msgs;
  R.maxsec = maxsec;
  R.lat = malloc(sizeof *R.lat * (size_t)msgs);
  R.slots = calloc((size_t)inflight, sizeof *R.slots);
  char* payload = malloc(size ? size : 1);
  if (R.lat == NULL || R.slots == NULL || payload == NULL) {
    fprintf(stderr, "e2e_bench: out of memory\n");
    return 1;
  }
  for (size_t i = 0; i < size; i++) payload[i] = (char)('a' + i % 26);
  R.msg = txmq_msg_new();
  if (R.msg == NULL || txmq_msg_set_topic(R.msg, TOPIC) != 0 ||
      txmq_msg_set_body(R.msg, payload, size) != 0) {
    fprintf(stderr, "e2e_bench: cannot build the message\n");
    return 1;
  }
  R.msgs[0] = R.msg;
  free(payload);

  uv_loop_init(&R.loop);
  txmq_client_options_t o;
  memset(&o, 0, sizeof o);
  o.client_id = "e2e-bench";
  o.role = TXMQ_ROLE_PRODUCER;
  int rc = txmq_client_new(&R.c, &R.loop, &o);
  char addr[300];
  snprintf(addr, sizeof addr, "%s:%s", host, port);
  if (rc == 0) rc = txmq_client_connect(R.c, addr, on_connected, NULL);
  if (rc != 0) {
    fprintf(stderr, "e2e_bench: client: %s\n", txmq_err_name(rc));
    if (R.c != NULL) finish();
    R.failed++;
  }
  double c0 = self_cpu_s(), s0 = proc_cpu_s(spid);
  uv_run(&R.loop, UV_RUN_DEFAULT);
  double cc = self_cpu_s() - c0, sc = proc_cpu_s(spid) - s0;
  if (uv_loop_close(&R.loop) != 0)
    fprintf(stderr, "e2e_bench: loop still has handles\n");

  /* nothing completed: the wall time of the attempt */
  if (R.done == 0 && R.t_start != 0) R.t_end = mono_ns();
  double el = (double)(R.t_end - R.t_start) / 1e9;
  if (el <= 0) el = 1e-9;
  qsort(R.lat, (size_t)R.done, sizeof *R.lat, cmp_u64);
  int ok = R.connected && R.verified && !R.failed &&
           R.topic_msgs == R.done && R.tx_pending == 0 && R.tx_parked == 0;
  if (!ok && R.verified)
    fprintf(stderr,
            "e2e_bench: verify: acknowledged=%ld topic=%" PRId64
            " pending=%" PRId64 " parked=%" PRId64 " failed=%ld\n",
            R.done, R.topic_msgs, R.tx_pending, R.tx_parked, R.failed);
  printf("peer=txmq mode=%s durability=%s inflight=%d client=c msgs=%ld"
         " rate=%.0f/s p50_us=%.0f p99_us=%.0f srv_cpu=%.0f%% cli_cpu=%.0f%%"
         " secs=%.1f verified=%s\n",
         mode, dur, inflight, R.done, (double)R.done / el,
         (double)percentile(R.lat, (size_t)R.done, 50) / 1e3,
         (double)percentile(R.lat, (size_t)R.done, 99) / 1e3,
         sc >= 0 && s0 >= 0 ? 100 * sc / el : -1.0, 100 * cc / el, el,
         ok ? "ok" : "FAIL");
  fflush(stdout);
  txmq_msg_free(R.msg);
  free(R.lat);
  free(R.slots);
  return ok ? 0 : 1;
}

/* ---- --smoke: own txmqd per run ---- */

static int rm_one(const char* p, const struct stat* s, int flag,
                  struct FTW* f) {
  (void)s;
  (void)flag;
  (void)f;
  return remove(p);
}

static int write_file(const char* path, const char* text) {
  FILE* f = fopen(path, "w");
  if (f == NULL) return -1;
  fputs(text, f);
  return fclose(f);
}

static void sleep_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

/* Starts txmqd; returns its pid and its port in port (or -1). */
static pid_t start_txmqd(const char* exe, const char* dir, int run,
                         char* port, size_t portsz) {
  char data[PATH_MAX + 32], scripts[PATH_MAX + 32], logp[PATH_MAX + 32];
  snprintf(data, sizeof data, "%s/data%d", dir, run);
  snprintf(scripts, sizeof scripts, "%s/scripts", dir);
  snprintf(logp, sizeof logp, "%s/txmqd%d.log", dir, run);
  pid_t pid = fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    int fd = open(logp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) {
      dup2(fd, 2);
      close(fd);
    }
    execl(exe, exe, "--listen", "127.0.0.1:0", "--data", data, "--scripts",
          scripts, "--sync", "always", (char*)NULL);
    _exit(127);
  }
  for (int i = 0; i < 400; i++) { /* at most 20 s (sanitizer builds) */
    FILE* f = fopen(logp, "r");
    char line[1024];
    while (f != NULL && fgets(line, sizeof line, f) != NULL) {
      const char* a = strstr(line, "msg=\"listening\" addr=127.0.0.1:");
      if (a != NULL) {
        a += strlen("msg=\"listening\" addr=127.0.0.1:");
        size_t n = strspn(a, "0123456789");
        if (n > 0 && n < portsz) {
          memcpy(port, a, n);
          port[n] = '\0';
          fclose(f);
          return pid;
        }
      }
    }
    if (f != NULL) fclose(f);
    if (waitpid(pid, NULL, WNOHANG) == pid) {
      fprintf(stderr, "e2e_bench: txmqd exited at start (log %s)\n", logp);
      return -1;
    }
    sleep_ms(50);
  }
  fprintf(stderr, "e2e_bench: txmqd did not listen (log %s)\n", logp);
  kill(pid, SIGKILL);
  waitpid(pid, NULL, 0);
  return -1;
}

static int stop_txmqd(pid_t pid) {
  kill(pid, SIGTERM);
  for (int i = 0; i < 200; i++) {
    int st;
    if (waitpid(pid, &st, WNOHANG) == pid)
      return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : -1;
    sleep_ms(50);
  }
  kill(pid, SIGKILL);
  waitpid(pid, NULL, 0);
  return -1;
}

static int smoke(void) {
  char self[PATH_MAX], exe[PATH_MAX + 16];
  ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  if (n <= 0) {
    fprintf(stderr, "e2e_bench: /proc/self/exe: %s\n", strerror(errno));
    return 1;
  }
  self[n] = '\0';
  snprintf(exe, sizeof exe, "%s/txmqd", dirname(self));
  if (access(exe, X_OK) != 0) {
    fprintf(stderr, "e2e_bench: %s is not built\n", exe);
    return 1;
  }
  const char* tmp = getenv("TMPDIR");
  char dir[PATH_MAX];
  snprintf(dir, sizeof dir, "%s/txmq-e2e-smoke-XXXXXX",
           tmp != NULL && *tmp ? tmp : "/tmp");
  if (mkdtemp(dir) == NULL) {
    fprintf(stderr, "e2e_bench: mkdtemp: %s\n", strerror(errno));
    return 1;
  }
  char path[PATH_MAX + 32];
  snprintf(path, sizeof path, "%s/scripts", dir);
  mkdir(path, 0755);
  snprintf(path, sizeof path, "%s/scripts/bench.lua", dir);
  write_file(path,
             "function executeLocalTransaction(msg, arg) return txmq.COMMIT "
             "end\nfunction checkLocalTransaction(msg) return txmq.COMMIT "
             "end\n");

  static const char* const modes[] = {"plain", "tx-2step", "tx-oneway",
                                      "tx-hosted"};
  static const int infl[] = {1, 32};
  int bad = 0, run = 0;
  for (size_t m = 0; m < 4; m++) {
    for (size_t k = 0; k < 2; k++) {
      char port[16];
      pid_t pid = start_txmqd(exe, dir, run++, port, sizeof port);
      if (pid < 0) {
        bad++;
        continue;
      }
      if (run_one("127.0.0.1", port, modes[m], infl[k], 300, 5.0, (long)pid,
                  "always", 256) != 0)
        bad++;
      if (stop_txmqd(pid) != 0) {
        fprintf(stderr, "e2e_bench: txmqd did not exit cleanly\n");
        bad++;
      }
    }
  }
  if (!bad) nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
  else fprintf(stderr, "e2e_bench: smoke failed; logs kept in %s\n", dir);
  return bad ? 1 : 0;
}

int main(int argc, char** argv) {
  signal(SIGPIPE, SIG_IGN);
  if (argc == 2 && strcmp(argv[1], "--smoke") == 0) return smoke();
  if (argc < 9 || argc > 10) {
    fprintf(stderr,
            "usage: e2e_bench HOST PORT MODE INFLIGHT MSGS MAXSEC SERVER_PID "
            "DURABILITY [SIZE]\n"
            "       e2e_bench --smoke\n"
            "MODE: plain | tx-2step | tx-oneway | tx-hosted\n");
    return 2;
  }
  size_t size = argc > 9 ? (size_t)strtoul(argv[9], NULL, 10) : 256;
  return run_one(argv[1], argv[2], argv[3], atoi(argv[4]), atol(argv[5]),
                 atof(argv[6]), atol(argv[7]), argv[8], size);
}
