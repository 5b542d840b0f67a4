/*
 * wire_driver.c - a scriptable raw client of the txmq wire protocol for the
 * black-box tests of txmqd (tests/integration/daemon_*.sh).
 *
 * It speaks the protocol with msgpack-c and plain sockets, independent of
 * the server's code, so it can also send what no real client would: bad
 * lengths, invalid msgpack, raw bytes. It reads a script from stdin, one
 * command per line, and exits 0 when every command and expectation held,
 * 1 with "FAIL line N: ..." at the first that did not.
 *
 *   wire_driver HOST:PORT < script
 *
 * Values are written as JSON (jansson): objects are msgpack maps, integers
 * stay integers; {"$bin":"hex"} is a bin; {"$bytes":N} is a bin of N 'x'
 * bytes. Frames received are printed as JSON, bins as {"$bin":"hex"} plus
 * "$text" when the bytes are printable. $NAME in a line is replaced by the
 * JSON of a saved value.
 *
 * COMMANDS (the "current" connection is the last opened or used)
 *   conn NAME                 connect, make it current
 *   use NAME                  make NAME current
 *   hello CLIENT ROLE [G,G..] send hello (version 1) and expect ok
 *   secret TEXT | secret -    hello and many send this secret from now on
 *                             (- for none, the default)
 *   req JSON                  send a request (id added if absent) and wait
 *                             for its response (5 s); it becomes "last"
 *   send JSON                 send a frame without waiting (id added to a
 *                             request without one)
 *   wait [MS]                 wait for the response to the last sent id
 *   recv [MS]                 the next frame, whatever it is
 *   norecv MS                 no frame arrives within MS
 *   closed [MS]               the server closes the connection within MS
 *                             (frames before that are read; the last one
 *                             becomes "last")
 *   raw HEX | frame HEX | len N   raw bytes / a frame with this payload /
 *                             only a 4-byte length prefix
 *   expect PATH OP [VALUE]    on "last": OP is = != ~ (contains) > >= < <=
 *                             exists absent; PATH is dotted, with # for an
 *                             array's length (msgs.#, msgs.0.topic)
 *   save NAME PATH            keep a value for $NAME
 *   print PATH                print "value PATH TEXT" (strings unquoted)
 *   check DECISION [MS]       wait for a server "check" request and answer
 *                             commit|rollback|unknown, or error (ok=false),
 *                             or none (no answer); it becomes "last"
 *   checks MODE               answer future checks of this connection
 *                             automatically (MODE as above, or queue)
 *   sleep MS | close | echo TEXT | shutdown (half-close: no more writes)
 *   many N PREFIX             open N more connections, hello and ping on
 *                             each (all at once), keep them open
 *   closemany                 close them
 *   flood N OPJSON            pipeline N copies of a request without ever
 *                             reading; prints how many bytes went out
 *                             before the socket stayed blocked for 2 s
 */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <msgpack.h>

#define MAX_CONNS 16
#define MAX_VARS 64
#define DEFAULT_WAIT_MS 5000

typedef struct {
  json_t* j;
} frame_t;

typedef struct {
  char name[32];
  int fd;
  uint8_t* buf;
  size_t len, cap;
  uint64_t next_id;
  uint64_t last_sent;
  json_t* queue[256]; /* frames read but not yet consumed */
  size_t nq;
  char checks[16];    /* auto answer mode, "" = queue */
} conn_t;

static const char* g_host;
static const char* g_port;
static conn_t g_conns[MAX_CONNS];
static size_t g_nconns;
static conn_t* g_cur;
static json_t* g_last;
static struct {
  char name[32];
  char* json;
} g_vars[MAX_VARS];
static size_t g_nvars;
static int g_line;
static char g_secret[512]; /* sent by hello and many; "" for none */
static int* g_many;
static size_t g_nmany;

static void fail(const char* fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void fail(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stdout, "FAIL line %d: ", g_line);
  vfprintf(stdout, fmt, ap);
  fputc('\n', stdout);
  va_end(ap);
  fflush(stdout);
  exit(1);
}

static uint64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* ---- JSON <-> msgpack ---- */

static int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

static size_t unhex(const char* s, uint8_t* out, size_t max) {
  size_t n = strlen(s);
  if (n % 2 != 0 || n / 2 > max) fail("bad hex '%s'", s);
  for (size_t i = 0; i < n / 2; i++) {
    int a = hexval(s[2 * i]), b = hexval(s[2 * i + 1]);
    if (a < 0 || b < 0) fail("bad hex '%s'", s);
    out[i] = (uint8_t)(a << 4 | b);
  }
  return n / 2;
}

static void pack_json(msgpack_packer* pk, json_t* j) {
  switch (json_typeof(j)) {
    case JSON_OBJECT: {
      json_t* b = json_object_get(j, "$bin");
      if (b != NULL && json_is_string(b)) {
        const char* s = json_string_value(b);
        size_t cap = strlen(s) / 2 + 1;
        uint8_t* buf = malloc(cap);
        size_t n = unhex(s, buf, cap);
        msgpack_pack_bin(pk, n);
        msgpack_pack_bin_body(pk, buf, n);
        free(buf);
        return;
      }
      json_t* by = json_object_get(j, "$bytes");
      if (by != NULL && json_is_integer(by)) {
        size_t n = (size_t)json_integer_value(by);
        char* buf = malloc(n ? n : 1);
        memset(buf, 'x', n);
        msgpack_pack_bin(pk, n);
        msgpack_pack_bin_body(pk, buf, n);
        free(buf);
        return;
      }
      msgpack_pack_map(pk, json_object_size(j));
      const char* k;
      json_t* v;
      json_object_foreach(j, k, v) {
        msgpack_pack_str(pk, strlen(k));
        msgpack_pack_str_body(pk, k, strlen(k));
        pack_json(pk, v);
      }
      return;
    }
    case JSON_ARRAY: {
      msgpack_pack_array(pk, json_array_size(j));
      size_t i;
      json_t* v;
      json_array_foreach(j, i, v) pack_json(pk, v);
      return;
    }
    case JSON_STRING: {
      size_t n = json_string_length(j);
      msgpack_pack_str(pk, n);
      msgpack_pack_str_body(pk, json_string_value(j), n);
      return;
    }
    case JSON_INTEGER: msgpack_pack_int64(pk, json_integer_value(j)); return;
    case JSON_REAL: msgpack_pack_double(pk, json_real_value(j)); return;
    case JSON_TRUE: msgpack_pack_true(pk); return;
    case JSON_FALSE: msgpack_pack_false(pk); return;
    case JSON_NULL: msgpack_pack_nil(pk); return;
  }
}

static json_t* to_json(const msgpack_object* o) {
  switch (o->type) {
    case MSGPACK_OBJECT_NIL: return json_null();
    case MSGPACK_OBJECT_BOOLEAN: return json_boolean(o->via.boolean);
    case MSGPACK_OBJECT_POSITIVE_INTEGER: return json_integer((json_int_t)o->via.u64);
    case MSGPACK_OBJECT_NEGATIVE_INTEGER: return json_integer((json_int_t)o->via.i64);
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64: return json_real(o->via.f64);
    case MSGPACK_OBJECT_STR: return json_stringn(o->via.str.ptr, o->via.str.size);
    case MSGPACK_OBJECT_BIN: {
      json_t* b = json_object();
      char* hex = malloc(o->via.bin.size * 2 + 1);
      int printable = 1;
      for (uint32_t i = 0; i < o->via.bin.size; i++) {
        unsigned char c = (unsigned char)o->via.bin.ptr[i];
        sprintf(hex + 2 * i, "%02x", c);
        if (c < 0x20 || c > 0x7e) printable = 0;
      }
      hex[o->via.bin.size * 2] = '\0';
      json_object_set_new(b, "$bin", json_string(hex));
      free(hex);
      if (printable)
        json_object_set_new(b, "$text",
                            json_stringn(o->via.bin.ptr, o->via.bin.size));
      return b;
    }
    case MSGPACK_OBJECT_ARRAY: {
      json_t* a = json_array();
      for (uint32_t i = 0; i < o->via.array.size; i++)
        json_array_append_new(a, to_json(&o->via.array.ptr[i]));
      return a;
    }
    case MSGPACK_OBJECT_MAP: {
      json_t* m = json_object();
      for (uint32_t i = 0; i < o->via.map.size; i++) {
        const msgpack_object* k = &o->via.map.ptr[i].key;
        char key[256];
        if (k->type == MSGPACK_OBJECT_STR) {
          snprintf(key, sizeof key, "%.*s", (int)k->via.str.size, k->via.str.ptr);
        } else {
          snprintf(key, sizeof key, "?%u", i);
        }
        json_object_set_new(m, key, to_json(&o->via.map.ptr[i].val));
      }
      return m;
    }
    default: return json_string("<ext>");
  }
}

static char* dumps(json_t* j) {
  return json_dumps(j, JSON_COMPACT | JSON_ENCODE_ANY | JSON_SORT_KEYS);
}

static void show(const char* dir, const conn_t* c, json_t* j) {
  char* s = dumps(j);
  if (strlen(s) > 600) strcpy(s + 590, "...");
  printf("%s%s %s\n", c->name, dir, s);
  fflush(stdout);
  free(s);
}

/* ---- sockets ---- */

static int dial(void) {
  struct addrinfo hints, *res;
  memset(&hints, 0, sizeof hints);
  hints.ai_socktype = SOCK_STREAM;
  if (getaddrinfo(g_host, g_port, &hints, &res) != 0) fail("cannot resolve %s", g_host);
  int fd = socket(res->ai_family, SOCK_STREAM, 0);
  if (fd < 0) fail("socket: %s", strerror(errno));
  if (connect(fd, res->ai_addr, res->ai_addrlen) != 0) {
    int e = errno;
    close(fd);
    freeaddrinfo(res);
    errno = e;
    return -1;
  }
  freeaddrinfo(res);
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return fd;
}

static void write_all(int fd, const void* p, size_t n) {
  const uint8_t* b = p;
  while (n > 0) {
    ssize_t w = send(fd, b, n, MSG_NOSIGNAL);
    if (w < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) {
        struct pollfd pf = {fd, POLLOUT, 0};
        poll(&pf, 1, 1000);
        continue;
      }
      fail("write: %s", strerror(errno));
    }
    b += w;
    n -= (size_t)w;
  }
}

static void send_payload(int fd, const void* p, size_t n) {
  uint8_t h[4] = {(uint8_t)(n >> 24), (uint8_t)(n >> 16), (uint8_t)(n >> 8),
                  (uint8_t)n};
  write_all(fd, h, 4);
  write_all(fd, p, n);
}

static void send_json(conn_t* c, json_t* j) {
  msgpack_sbuffer sb;
  msgpack_sbuffer_init(&sb);
  msgpack_packer pk;
  msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
  pack_json(&pk, j);
  send_payload(c->fd, sb.data, sb.size);
  msgpack_sbuffer_destroy(&sb);
}

/* Reads one frame: 1 with *out, 0 on timeout, -1 when the peer closed. */
static int read_frame(conn_t* c, int timeout_ms, json_t** out) {
  uint64_t deadline = now_ms() + (uint64_t)timeout_ms;
  for (;;) {
    if (c->len >= 4) {
      uint32_t n = (uint32_t)c->buf[0] << 24 | (uint32_t)c->buf[1] << 16 |
                   (uint32_t)c->buf[2] << 8 | c->buf[3];
      if (c->len >= 4 + (size_t)n) {
        msgpack_unpacked u;
        msgpack_unpacked_init(&u);
        size_t off = 0;
        if (msgpack_unpack_next(&u, (const char*)c->buf + 4, n, &off) !=
                MSGPACK_UNPACK_SUCCESS || off != n)
          fail("%s: server sent invalid msgpack", c->name);
        *out = to_json(&u.data);
        msgpack_unpacked_destroy(&u);
        memmove(c->buf, c->buf + 4 + n, c->len - 4 - n);
        c->len -= 4 + (size_t)n;
        return 1;
      }
    }
    uint64_t now = now_ms();
    if (now >= deadline) return 0;
    struct pollfd pf = {c->fd, POLLIN, 0};
    int pr = poll(&pf, 1, (int)(deadline - now));
    if (pr < 0 && errno != EINTR) fail("poll: %s", strerror(errno));
    if (pr <= 0) continue;
    if (c->cap - c->len < 65536) {
      c->cap = c->cap ? c->cap * 2 : 131072;
      c->buf = realloc(c->buf, c->cap);
    }
    ssize_t r = recv(c->fd, c->buf + c->len, c->cap - c->len, 0);
    if (r == 0) return -1;
    if (r < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      if (errno == ECONNRESET) return -1;
      fail("read: %s", strerror(errno));
    }
    c->len += (size_t)r;
  }
}

static int is_check(json_t* j) {
  json_t* op = json_object_get(j, "op");
  return op != NULL && json_is_string(op) &&
         strcmp(json_string_value(op), "check") == 0;
}

static void answer_check(conn_t* c, json_t* chk, const char* decision) {
  if (strcmp(decision, "none") == 0) return;
  json_t* a = json_object();
  json_object_set(a, "re", json_object_get(chk, "id"));
  if (strcmp(decision, "error") == 0) {
    json_object_set_new(a, "ok", json_false());
    json_object_set_new(a, "err", json_string("EIO"));
    json_object_set_new(a, "code", json_integer(-3));
    json_object_set_new(a, "msg", json_string("test: the local transaction cannot be read"));
  } else {
    json_object_set_new(a, "ok", json_true());
    json_object_set_new(a, "decision", json_string(decision));
  }
  send_json(c, a);
  show(">", c, a);
  json_decref(a);
}

/* The next frame that is not an auto-answered check. */
static int next_frame(conn_t* c, int timeout_ms, json_t** out) {
  if (c->nq > 0) {
    *out = c->queue[0];
    memmove(c->queue, c->queue + 1, (c->nq - 1) * sizeof c->queue[0]);
    c->nq--;
    return 1;
  }
  uint64_t deadline = now_ms() + (uint64_t)timeout_ms;
  for (;;) {
    uint64_t now = now_ms();
    int left = now >= deadline ? 0 : (int)(deadline - now);
    json_t* j;
    int rc = read_frame(c, left, &j);
    if (rc <= 0) return rc;
    show("<", c, j);
    if (c->checks[0] != '\0' && is_check(j)) {
      answer_check(c, j, c->checks);
      json_decref(j);
      continue;
    }
    *out = j;
    return 1;
  }
}

static void set_last(json_t* j) {
  json_decref(g_last);
  g_last = j;
}

/* Waits for the response to id; other frames are queued. */
static void wait_response(conn_t* c, uint64_t id, int timeout_ms) {
  for (size_t i = 0; i < c->nq; i++) {
    json_t* re = json_object_get(c->queue[i], "re");
    if (re != NULL && json_integer_value(re) == (json_int_t)id) {
      set_last(c->queue[i]);
      memmove(c->queue + i, c->queue + i + 1, (c->nq - i - 1) * sizeof c->queue[0]);
      c->nq--;
      return;
    }
  }
  uint64_t deadline = now_ms() + (uint64_t)timeout_ms;
  for (;;) {
    uint64_t now = now_ms();
    int left = now >= deadline ? 0 : (int)(deadline - now);
    json_t* j;
    int rc = read_frame(c, left, &j);
    if (rc == 0) fail("%s: no response to id %llu within %d ms", c->name, (unsigned long long)id, timeout_ms);
    if (rc < 0) fail("%s: connection closed while waiting for id %llu", c->name, (unsigned long long)id);
    show("<", c, j);
    if (c->checks[0] != '\0' && is_check(j)) {
      answer_check(c, j, c->checks);
      json_decref(j);
      continue;
    }
    json_t* re = json_object_get(j, "re");
    if (re != NULL && json_is_integer(re) && json_integer_value(re) == (json_int_t)id) {
      set_last(j);
      return;
    }
    if (c->nq == 256) fail("%s: too many unread frames", c->name);
    c->queue[c->nq++] = j;
  }
}

static conn_t* need_cur(void) {
  if (g_cur == NULL) fail("no connection");
  return g_cur;
}

static json_t* parse_json(const char* s) {
  json_error_t e;
  json_t* j = json_loads(s, JSON_DECODE_ANY, &e);
  if (j == NULL) fail("bad JSON '%s': %s", s, e.text);
  return j;
}

/* Sends a request; returns its id. */
static uint64_t send_request(conn_t* c, json_t* j) {
  if (json_is_object(j) && json_object_get(j, "op") != NULL &&
      json_object_get(j, "id") == NULL)
    json_object_set_new(j, "id", json_integer((json_int_t)++c->next_id));
  json_t* id = json_is_object(j) ? json_object_get(j, "id") : NULL;
  uint64_t v = id != NULL && json_is_integer(id) ? (uint64_t)json_integer_value(id) : 0;
  send_json(c, j);
  show(">", c, j);
  c->last_sent = v;
  return v;
}

/* ---- paths and expectations ---- */

static json_t* lookup(json_t* root, const char* path, int* is_len) {
  *is_len = 0;
  if (root == NULL) return NULL;
  char buf[512];
  snprintf(buf, sizeof buf, "%s", path);
  json_t* cur = root;
  char* save = NULL;
  for (char* tok = strtok_r(buf, ".", &save); tok != NULL; tok = strtok_r(NULL, ".", &save)) {
    if (cur == NULL) return NULL;
    if (strcmp(tok, "#") == 0) {
      if (json_is_array(cur)) {
        *is_len = 1;
        return json_integer((json_int_t)json_array_size(cur));
      }
      if (json_is_object(cur)) {
        *is_len = 1;
        return json_integer((json_int_t)json_object_size(cur));
      }
      return NULL;
    }
    if (json_is_array(cur)) {
      char* end;
      long i = strtol(tok, &end, 10);
      if (*end != '\0') return NULL;
      cur = json_array_get(cur, (size_t)i);
    } else if (json_is_object(cur)) {
      cur = json_object_get(cur, tok);
    } else {
      return NULL;
    }
  }
  return cur;
}

static void do_expect(char* args) {
  char path[256], op[8];
  int n = 0;
  if (sscanf(args, "%255s %7s %n", path, op, &n) < 2) fail("expect PATH OP [VALUE]");
  const char* val = args + n;
  int is_len;
  json_t* got = lookup(g_last, path, &is_len);
  char* gs = got ? dumps(got) : strdup("<absent>");
  int ok;
  if (strcmp(op, "exists") == 0) {
    ok = got != NULL;
  } else if (strcmp(op, "absent") == 0) {
    ok = got == NULL;
  } else {
    json_error_t e;
    json_t* want = json_loads(val, JSON_DECODE_ANY, &e);
    if (want == NULL) want = json_string(val);
    if (strcmp(op, "=") == 0 || strcmp(op, "!=") == 0) {
      int eq = got != NULL && json_equal(got, want);
      ok = op[0] == '=' ? eq : !eq;
    } else if (strcmp(op, "~") == 0) {
      ok = got != NULL && json_is_string(got) && json_is_string(want) &&
           strstr(json_string_value(got), json_string_value(want)) != NULL;
    } else {
      if (got == NULL || !json_is_number(got) || !json_is_number(want)) {
        ok = 0;
      } else {
        double a = json_number_value(got), b = json_number_value(want);
        if (strcmp(op, ">") == 0) ok = a > b;
        else if (strcmp(op, ">=") == 0) ok = a >= b;
        else if (strcmp(op, "<") == 0) ok = a < b;
        else if (strcmp(op, "<=") == 0) ok = a <= b;
        else fail("unknown operator '%s'", op);
      }
    }
    json_decref(want);
  }
  if (!ok) {
    char* ls = g_last ? dumps(g_last) : strdup("<nothing>");
    fail("expected %s %s %s, got %s (in %s)", path, op, val, gs, ls);
  }
  if (is_len) json_decref(got);
  free(gs);
}

/* Replaces $NAME with saved JSON. */
static char* expand(const char* line) {
  size_t cap = strlen(line) + 1;
  for (size_t i = 0; i < g_nvars; i++) cap += strlen(g_vars[i].json) * 8;
  char* out = malloc(cap + 1);
  size_t k = 0;
  for (const char* p = line; *p;) {
    if (*p == '$' && (p[1] == '_' || (p[1] >= 'A' && p[1] <= 'Z'))) {
      const char* e = p + 1;
      while (*e == '_' || (*e >= 'A' && *e <= 'Z') || (*e >= '0' && *e <= '9')) e++;
      size_t nl = (size_t)(e - p - 1);
      size_t i;
      for (i = 0; i < g_nvars; i++)
        if (strlen(g_vars[i].name) == nl && memcmp(g_vars[i].name, p + 1, nl) == 0) break;
      if (i == g_nvars) fail("unknown variable $%.*s", (int)nl, p + 1);
      size_t vl = strlen(g_vars[i].json);
      memcpy(out + k, g_vars[i].json, vl);
      k += vl;
      p = e;
    } else {
      out[k++] = *p++;
    }
  }
  out[k] = '\0';
  return out;
}

/* ---- commands ---- */

/* Closes c's socket and frees what it holds. */
static void conn_drop(conn_t* c) {
  if (c->fd >= 0) close(c->fd);
  c->fd = -1;
  free(c->buf);
  c->buf = NULL;
  c->len = c->cap = 0;
  for (size_t i = 0; i < c->nq; i++) json_decref(c->queue[i]);
  c->nq = 0;
  if (g_cur == c) g_cur = NULL;
}

static conn_t* find_conn(const char* name) {
  for (size_t i = 0; i < g_nconns; i++)
    if (strcmp(g_conns[i].name, name) == 0 && g_conns[i].fd >= 0) return &g_conns[i];
  return NULL;
}

static void cmd_conn(const char* name) {
  conn_t* c = NULL;
  for (size_t i = 0; i < g_nconns; i++)
    if (strcmp(g_conns[i].name, name) == 0) c = &g_conns[i];
  if (c == NULL) {
    if (g_nconns == MAX_CONNS) fail("too many connections");
    c = &g_conns[g_nconns++];
  } else {
    conn_drop(c);
  }
  memset(c, 0, sizeof *c);
  snprintf(c->name, sizeof c->name, "%s", name);
  c->fd = dial();
  if (c->fd < 0) fail("connect %s:%s: %s", g_host, g_port, strerror(errno));
  g_cur = c;
}

static void cmd_hello(char* args) {
  char client[256], role[64], groups[1024] = "";
  if (sscanf(args, "%255s %63s %1023s", client, role, groups) < 2)
    fail("hello CLIENT ROLE [GROUPS]");
  conn_t* c = need_cur();
  json_t* j = json_object();
  json_object_set_new(j, "op", json_string("hello"));
  json_object_set_new(j, "version", json_integer(1));
  json_object_set_new(j, "client", json_string(client));
  json_object_set_new(j, "role", json_string(role));
  json_t* pg = json_array();
  char* save = NULL;
  for (char* g = strtok_r(groups, ",", &save); g != NULL; g = strtok_r(NULL, ",", &save))
    json_array_append_new(pg, json_string(g));
  json_object_set_new(j, "producer_groups", pg);
  if (g_secret[0]) json_object_set_new(j, "secret", json_string(g_secret));
  uint64_t id = send_request(c, j);
  json_decref(j);
  wait_response(c, id, DEFAULT_WAIT_MS);
  json_t* ok = json_object_get(g_last, "ok");
  if (!json_is_true(ok)) fail("hello refused");
}

static void cmd_many(char* args) {
  int n = 0;
  char prefix[64];
  if (sscanf(args, "%d %63s", &n, prefix) != 2 || n <= 0) fail("many N PREFIX");
  g_many = realloc(g_many, (g_nmany + (size_t)n) * sizeof *g_many);
  size_t base = g_nmany;
  for (int i = 0; i < n; i++) {
    int fd = dial();
    if (fd < 0) fail("many: connection %d: %s", i, strerror(errno));
    g_many[g_nmany++] = fd;
  }
  /* hello and ping on every connection, then read both answers of each. */
  for (int i = 0; i < n; i++) {
    conn_t tmp;
    memset(&tmp, 0, sizeof tmp);
    tmp.fd = g_many[base + (size_t)i];
    char buf[256];
    snprintf(buf, sizeof buf,
             "{\"op\":\"hello\",\"id\":1,\"version\":1,\"client\":\"%s-%d\","
             "\"role\":\"consumer\"}", prefix, i);
    json_t* h = parse_json(buf);
    if (g_secret[0]) json_object_set_new(h, "secret", json_string(g_secret));
    send_json(&tmp, h);
    json_decref(h);
    json_t* p = parse_json("{\"op\":\"ping\",\"id\":2}");
    send_json(&tmp, p);
    json_decref(p);
  }
  int okc = 0;
  for (int i = 0; i < n; i++) {
    conn_t tmp;
    memset(&tmp, 0, sizeof tmp);
    snprintf(tmp.name, sizeof tmp.name, "many%d", i);
    tmp.fd = g_many[base + (size_t)i];
    for (int k = 0; k < 2; k++) {
      json_t* j;
      int rc = read_frame(&tmp, 10000, &j);
      if (rc <= 0) fail("many: connection %d: %s", i, rc == 0 ? "no answer" : "closed");
      if (!json_is_true(json_object_get(j, "ok"))) {
        char* s = dumps(j);
        fail("many: connection %d refused: %s", i, s);
      }
      json_decref(j);
      okc++;
    }
    free(tmp.buf);
  }
  printf("many: %d connections answered hello and ping (%d answers)\n", n, okc);
}

static void cmd_flood(char* args) {
  long n = 0;
  int off = 0;
  if (sscanf(args, "%ld %n", &n, &off) < 1 || n <= 0) fail("flood N JSON");
  conn_t* c = need_cur();
  json_t* j = parse_json(args + off);
  int fl = fcntl(c->fd, F_GETFL);
  fcntl(c->fd, F_SETFL, fl | O_NONBLOCK);
  size_t total = 0;
  long sent = 0;
  int blocked = 0;
  uint8_t* pending = NULL;
  size_t plen = 0, ppos = 0;
  while (sent < n || ppos < plen) {
    if (ppos == plen) {
      free(pending);
      json_object_set_new(j, "id", json_integer((json_int_t)++c->next_id));
      msgpack_sbuffer sb;
      msgpack_sbuffer_init(&sb);
      msgpack_packer pk;
      msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
      pack_json(&pk, j);
      plen = sb.size + 4;
      pending = malloc(plen);
      pending[0] = (uint8_t)(sb.size >> 24);
      pending[1] = (uint8_t)(sb.size >> 16);
      pending[2] = (uint8_t)(sb.size >> 8);
      pending[3] = (uint8_t)sb.size;
      memcpy(pending + 4, sb.data, sb.size);
      msgpack_sbuffer_destroy(&sb);
      ppos = 0;
      sent++;
    }
    ssize_t w = send(c->fd, pending + ppos, plen - ppos, MSG_NOSIGNAL);
    if (w > 0) {
      ppos += (size_t)w;
      total += (size_t)w;
      continue;
    }
    if (w < 0 && errno == EAGAIN) {
      struct pollfd pf = {c->fd, POLLOUT, 0};
      if (poll(&pf, 1, 2000) == 0) {
        blocked = 1;
        break;
      }
      continue;
    }
    fail("flood: write: %s", w < 0 ? strerror(errno) : "closed");
  }
  free(pending);
  fcntl(c->fd, F_SETFL, fl);
  json_decref(j);
  printf("flood: wrote %zu bytes (%ld requests) %s\n", total, sent,
         blocked ? "and the socket stayed blocked" : "without blocking");
  fflush(stdout);
}

static void run_line(char* line) {
  char cmd[32];
  int off = 0;
  if (sscanf(line, "%31s %n", cmd, &off) < 1) return;
  char* args = line + off;
  if (strcmp(cmd, "conn") == 0) {
    cmd_conn(args);
  } else if (strcmp(cmd, "use") == 0) {
    conn_t* c = find_conn(args);
    if (c == NULL) fail("no connection '%s'", args);
    g_cur = c;
  } else if (strcmp(cmd, "hello") == 0) {
    cmd_hello(args);
  } else if (strcmp(cmd, "secret") == 0) {
    snprintf(g_secret, sizeof g_secret, "%s", strcmp(args, "-") == 0 ? "" : args);
  } else if (strcmp(cmd, "req") == 0 || strcmp(cmd, "send") == 0) {
    conn_t* c = need_cur();
    json_t* j = parse_json(args);
    uint64_t id = send_request(c, j);
    json_decref(j);
    if (cmd[0] == 'r') wait_response(c, id, DEFAULT_WAIT_MS);
  } else if (strcmp(cmd, "wait") == 0) {
    int ms = args[0] ? atoi(args) : DEFAULT_WAIT_MS;
    wait_response(need_cur(), need_cur()->last_sent, ms);
  } else if (strcmp(cmd, "recv") == 0) {
    int ms = args[0] ? atoi(args) : DEFAULT_WAIT_MS;
    json_t* j;
    int rc = next_frame(need_cur(), ms, &j);
    if (rc == 0) fail("no frame within %d ms", ms);
    if (rc < 0) fail("connection closed");
    set_last(j);
  } else if (strcmp(cmd, "norecv") == 0) {
    json_t* j;
    int rc = next_frame(need_cur(), atoi(args), &j);
    if (rc > 0) {
      char* s = dumps(j);
      fail("unexpected frame %s", s);
    }
    if (rc < 0) fail("connection closed");
  } else if (strcmp(cmd, "closed") == 0) {
    int ms = args[0] ? atoi(args) : DEFAULT_WAIT_MS;
    conn_t* c = need_cur();
    uint64_t deadline = now_ms() + (uint64_t)ms;
    for (;;) {
      uint64_t now = now_ms();
      json_t* j;
      int rc = read_frame(c, now >= deadline ? 0 : (int)(deadline - now), &j);
      if (rc < 0) break;
      if (rc == 0) fail("%s still open after %d ms", c->name, ms);
      show("<", c, j);
      set_last(j);
    }
    printf("%s closed by the server\n", c->name);
    conn_drop(c);
  } else if (strcmp(cmd, "raw") == 0 || strcmp(cmd, "frame") == 0) {
    size_t cap = strlen(args) / 2 + 1;
    uint8_t* b = malloc(cap);
    size_t n = unhex(args, b, cap);
    if (cmd[0] == 'r') write_all(need_cur()->fd, b, n);
    else send_payload(need_cur()->fd, b, n);
    free(b);
  } else if (strcmp(cmd, "len") == 0) {
    uint32_t n = (uint32_t)strtoul(args, NULL, 0);
    uint8_t h[4] = {(uint8_t)(n >> 24), (uint8_t)(n >> 16), (uint8_t)(n >> 8), (uint8_t)n};
    write_all(need_cur()->fd, h, 4);
  } else if (strcmp(cmd, "expect") == 0) {
    do_expect(args);
  } else if (strcmp(cmd, "save") == 0) {
    char name[32], path[256];
    if (sscanf(args, "%31s %255s", name, path) != 2) fail("save NAME PATH");
    int is_len;
    json_t* v = lookup(g_last, path, &is_len);
    if (v == NULL) fail("nothing at %s", path);
    size_t i;
    for (i = 0; i < g_nvars; i++)
      if (strcmp(g_vars[i].name, name) == 0) break;
    if (i == g_nvars) {
      if (g_nvars == MAX_VARS) fail("too many variables");
      g_nvars++;
    } else {
      free(g_vars[i].json);
    }
    snprintf(g_vars[i].name, sizeof g_vars[i].name, "%s", name);
    g_vars[i].json = dumps(v);
    if (is_len) json_decref(v);
  } else if (strcmp(cmd, "print") == 0) {
    int is_len;
    json_t* v = lookup(g_last, args, &is_len);
    if (v == NULL) fail("nothing at %s", args);
    if (json_is_string(v)) {
      printf("value %s %s\n", args, json_string_value(v));
    } else {
      char* s = dumps(v);
      printf("value %s %s\n", args, s);
      free(s);
    }
    fflush(stdout);
    if (is_len) json_decref(v);
  } else if (strcmp(cmd, "check") == 0) {
    char dec[16];
    int ms = DEFAULT_WAIT_MS;
    if (sscanf(args, "%15s %d", dec, &ms) < 1) fail("check DECISION [MS]");
    conn_t* c = need_cur();
    json_t* j = NULL;
    uint64_t deadline = now_ms() + (uint64_t)ms;
    for (;;) {
      uint64_t now = now_ms();
      int left = now >= deadline ? 0 : (int)(deadline - now);
      /* Frames already queued are looked at first, then the socket. */
      size_t i;
      for (i = 0; i < c->nq && !is_check(c->queue[i]); i++) {
      }
      if (i < c->nq) {
        j = c->queue[i];
        memmove(c->queue + i, c->queue + i + 1, (c->nq - i - 1) * sizeof c->queue[0]);
        c->nq--;
        break;
      }
      int rc = read_frame(c, left, &j);
      if (rc == 0) fail("no check request within %d ms", ms);
      if (rc < 0) fail("connection closed while waiting for a check");
      show("<", c, j);
      if (is_check(j)) break;
      if (c->nq == 256) fail("too many unread frames");
      c->queue[c->nq++] = j; /* not a check: kept for later */
    }
    answer_check(c, j, dec);
    set_last(j);
  } else if (strcmp(cmd, "checks") == 0) {
    snprintf(need_cur()->checks, sizeof need_cur()->checks, "%s",
             strcmp(args, "queue") == 0 ? "" : args);
  } else if (strcmp(cmd, "sleep") == 0) {
    usleep((useconds_t)atoi(args) * 1000u);
  } else if (strcmp(cmd, "close") == 0) {
    conn_drop(need_cur());
  } else if (strcmp(cmd, "shutdown") == 0) {
    shutdown(need_cur()->fd, SHUT_WR);
  } else if (strcmp(cmd, "echo") == 0) {
    printf("%s\n", args);
  } else if (strcmp(cmd, "many") == 0) {
    cmd_many(args);
  } else if (strcmp(cmd, "closemany") == 0) {
    for (size_t i = 0; i < g_nmany; i++) close(g_many[i]);
    g_nmany = 0;
  } else if (strcmp(cmd, "flood") == 0) {
    cmd_flood(args);
  } else {
    fail("unknown command '%s'", cmd);
  }
}

int main(int argc, char** argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: wire_driver HOST:PORT < script\n");
    return 2;
  }
  static char host[256];
  snprintf(host, sizeof host, "%s", argv[1]);
  char* colon = strrchr(host, ':');
  if (colon == NULL) {
    fprintf(stderr, "wire_driver: HOST:PORT\n");
    return 2;
  }
  *colon = '\0';
  g_host = host;
  g_port = colon + 1;
  setvbuf(stdout, NULL, _IOLBF, 0);
  char* line = NULL;
  size_t cap = 0;
  ssize_t n;
  while ((n = getline(&line, &cap, stdin)) != -1) {
    g_line++;
    while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r')) line[--n] = '\0';
    char* p = line;
    while (*p == ' ' || *p == '\t') p++;
    if (*p == '\0' || *p == '#') continue;
    char* x = expand(p);
    run_line(x);
    free(x);
  }
  free(line);
  json_decref(g_last);
  for (size_t i = 0; i < g_nconns; i++) conn_drop(&g_conns[i]);
  for (size_t i = 0; i < g_nvars; i++) free(g_vars[i].json);
  for (size_t i = 0; i < g_nmany; i++) close(g_many[i]);
  free(g_many);
  printf("ok: %d lines\n", g_line);
  return 0;
}
