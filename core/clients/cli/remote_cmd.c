/*
 * remote_cmd.c - the `txmq` commands that talk to txmqd (DESIGN §7): send,
 * tx send|list|show|resume|commit|rollback, consume, offset get|set, peek,
 * topic create|list, status and reload, on the blocking client
 * (txmq/client.h).
 *
 * Every command checks its command line before it connects (a usage error
 * never costs a connection), connects with the least role its operations
 * need (PROTOCOL.md §3: producer for send, tx send|list|show and status,
 * consumer for consume, offset and peek, admin for tx resume|commit|rollback,
 * reload and topic create; topic list is status's, as producer), so
 * that a role's own secret is enough, unless --role or TXMQ_ROLE names
 * another (a holder of the consumer secret asks for status with --role
 * consumer; TXMQ_SECRET is sent as the secret when set), makes its
 * requests, and prints for people, or with --json one JSON object per
 * line.
 * Failures are one line on stderr: "cannot connect to HOST:PORT: REASON",
 * or "COMMAND: the server's reason". Exit status: 0 success, 1 the request
 * failed or the server could not be reached, 2 usage.
 *
 * It does not retry, and it never prints a result it did not get.
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <msgpack.h>
#include <uv.h>

#include "clients/cli/cli.h"
#include "txmq/client.h"
#include "txmq/error.h"
#include "txmq/store.h"
#include "txmq/tx.h"

/* ---- connecting ---- */

/* "txmq-cli:HOST:PID": shown in the server's audit trail. */
static void make_client_id(char* buf, size_t cap) {
  char host[48] = "";
  if (gethostname(host, sizeof host - 1) != 0) host[0] = '\0';
  host[sizeof host - 1] = '\0';
  for (char* p = host; *p; p++) {
    char ch = *p;
    if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
          (ch >= '0' && ch <= '9') || ch == '.' || ch == '_' || ch == '-'))
      *p = '-';
  }
  snprintf(buf, cap, "txmq-cli:%s:%ld", host[0] ? host : "local",
           (long)getpid());
}

/* Connects with the role --role or TXMQ_ROLE chose, else with role (the
 * least the command needs). */
static int connect_server(const cli_args_t* a, txmq_role_t role,
                          const char* consumer_group,
                          txmq_sync_client_t** out) {
  char id[96];
  make_client_id(id, sizeof id);
  txmq_client_options_t o;
  memset(&o, 0, sizeof o);
  o.client_id = id;
  o.role = a->role == CLI_ROLE_DEFAULT ? role : (txmq_role_t)a->role;
  const char* groups[1] = {consumer_group};
  if (consumer_group) {
    o.consumer_groups = groups;
    o.n_consumer_groups = 1;
  }
  const char* secret = getenv("TXMQ_SECRET");
  o.secret = secret && *secret ? secret : NULL;
  txmq_sync_client_t* s = NULL;
  int rc = txmq_sync_new(&s, &o);
  if (rc != 0) {
    cli_err("cannot create a client: %s", txmq_strerror(rc));
    return CLI_EXIT_FAIL;
  }
  rc = txmq_sync_connect(s, a->server);
  if (rc == TXMQ_EINVAL) {
    cli_err("invalid server address '%s': expected HOST:PORT", a->server);
    txmq_sync_free(s);
    return CLI_EXIT_USAGE;
  }
  if (rc != 0) {
    cli_err("cannot connect to %s: %s", a->server, txmq_sync_diag(s));
    txmq_sync_free(s);
    return CLI_EXIT_FAIL;
  }
  *out = s;
  return 0;
}

static int request_failed(txmq_sync_client_t* s, const char* what, int rc) {
  const char* d = txmq_sync_diag(s);
  cli_err("%s: %s", what, d && *d ? d : txmq_strerror(rc));
  return CLI_EXIT_FAIL;
}

static int check_group(const char* opt, const char* g) {
  if (txmq_name_valid(g)) return 0;
  cli_err("%s '%s': invalid group name (1..%d bytes of A-Z a-z 0-9 . _ -, "
          "not starting with '.')", opt, g, TXMQ_NAME_MAX);
  return CLI_EXIT_USAGE;
}

static int64_t wall_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static uint64_t mono_ms(void) { return uv_hrtime() / 1000000u; }

/* ---- building messages ---- */

/* Reads all of standard input, at most the body limit. */
static int read_stdin(char** out, size_t* len) {
  size_t cap = 65536, n = 0;
  char* buf = malloc(cap);
  if (!buf) {
    cli_err("out of memory");
    return CLI_EXIT_FAIL;
  }
  for (;;) {
    if (n == cap) {
      if (cap > TXMQ_MSG_MAX_BODY) {
        free(buf);
        cli_err("the body on standard input is over the limit of %u bytes",
                TXMQ_MSG_MAX_BODY);
        return CLI_EXIT_FAIL;
      }
      char* nb = realloc(buf, cap * 2);
      if (!nb) {
        free(buf);
        cli_err("out of memory");
        return CLI_EXIT_FAIL;
      }
      buf = nb;
      cap *= 2;
    }
    size_t k = fread(buf + n, 1, cap - n, stdin);
    n += k;
    if (k == 0) {
      if (ferror(stdin)) {
        free(buf);
        cli_err("reading standard input failed: %s", strerror(errno));
        return CLI_EXIT_FAIL;
      }
      break;
    }
  }
  if (n > TXMQ_MSG_MAX_BODY) {
    free(buf);
    cli_err("the body on standard input is over the limit of %u bytes",
            TXMQ_MSG_MAX_BODY);
    return CLI_EXIT_FAIL;
  }
  *out = buf;
  *len = n;
  return 0;
}

/* A topic name from the command line: 0, or CLI_EXIT_USAGE said. */
static int check_topic(const char* topic) {
  if (txmq_name_valid(topic)) return 0;
  cli_err("invalid topic name '%s' (1..%d bytes of A-Z a-z 0-9 . _ -, not "
          "starting with '.')", topic, TXMQ_NAME_MAX);
  return CLI_EXIT_USAGE;
}

/* The message of send / tx send: TOPIC at pos[ti], optional BODY (or "-"
 * for standard input) after it, --tags, --keys, --prop K=V. */
static int build_msg(const cli_args_t* a, size_t ti, txmq_msg_t** out) {
  const char* topic = a->pos[ti];
  int rc = check_topic(topic);
  if (rc) return rc;
  txmq_msg_t* m = txmq_msg_new();
  if (!m) {
    cli_err("out of memory");
    return CLI_EXIT_FAIL;
  }
  rc = txmq_msg_set_topic(m, topic);
  if (rc == 0 && a->tags) {
    rc = txmq_msg_set_tags(m, a->tags);
    if (rc) cli_err("--tags: %s", txmq_strerror(rc));
  }
  if (rc == 0 && a->keys) {
    rc = txmq_msg_set_keys(m, a->keys);
    if (rc) cli_err("--keys: %s", txmq_strerror(rc));
  }
  for (size_t i = 0; rc == 0 && i < a->nprops; i++) {
    const char* eq = strchr(a->props[i], '=');
    if (!eq || eq == a->props[i]) {
      cli_err("--prop '%s': expected KEY=VALUE", a->props[i]);
      rc = TXMQ_EINVAL;
      break;
    }
    char* key = strndup(a->props[i], (size_t)(eq - a->props[i]));
    if (key && txmq_msg_prop_get(m, key) != NULL) {
      cli_err("--prop '%s': property '%s' given twice", a->props[i], key);
      free(key);
      rc = TXMQ_EINVAL;
      break;
    }
    rc = key ? txmq_msg_prop_set(m, key, eq + 1) : TXMQ_ENOMEM;
    if (rc) cli_err("--prop '%s': %s", a->props[i], txmq_strerror(rc));
    free(key);
  }
  if (rc == 0 && a->npos > ti + 1) {
    const char* b = a->pos[ti + 1];
    if (strcmp(b, "-") == 0) {
      char* buf = NULL;
      size_t len = 0;
      int r = read_stdin(&buf, &len);
      if (r) {
        txmq_msg_free(m);
        return r;
      }
      rc = txmq_msg_set_body(m, buf, len);
      free(buf);
    } else {
      rc = txmq_msg_set_body(m, b, strlen(b));
    }
    if (rc) cli_err("BODY: %s", txmq_strerror(rc));
  }
  if (rc != 0) {
    txmq_msg_free(m);
    return CLI_EXIT_USAGE;
  }
  txmq_msg_set_born_ms(m, wall_ms());
  *out = m;
  return 0;
}

/* ---- msgpack rendering ---- */

static int is_time_key(const char* k, size_t n) {
  static const char* const keys[] = {"born", "stored", "at", "time"};
  for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
    if (strlen(keys[i]) == n && memcmp(keys[i], k, n) == 0) return 1;
  return 0;
}

/* A JSON value for a msgpack object: a 16-byte bin (an id) as hex, other
 * bins as text when valid UTF-8, else base64. */
static json_t* mp_json(const msgpack_object* o, int depth) {
  if (depth > 32) return json_null();
  switch (o->type) {
    case MSGPACK_OBJECT_NIL: return json_null();
    case MSGPACK_OBJECT_BOOLEAN: return json_boolean(o->via.boolean);
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
      if (o->via.u64 > (uint64_t)INT64_MAX) return json_real((double)o->via.u64);
      return json_integer((json_int_t)o->via.u64);
    case MSGPACK_OBJECT_NEGATIVE_INTEGER: return json_integer(o->via.i64);
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
      return isfinite(o->via.f64) ? json_real(o->via.f64) : json_null();
    case MSGPACK_OBJECT_STR: return cli_json_str(o->via.str.ptr, o->via.str.size);
    case MSGPACK_OBJECT_BIN: {
      if (o->via.bin.size == 16) {
        char hex[33];
        for (int i = 0; i < 16; i++)
          snprintf(hex + 2 * i, 3, "%02x", (unsigned char)o->via.bin.ptr[i]);
        return json_string(hex);
      }
      if (cli_is_utf8(o->via.bin.ptr, o->via.bin.size))
        return json_stringn(o->via.bin.ptr, o->via.bin.size);
      return cli_json_base64(o->via.bin.ptr, o->via.bin.size);
    }
    case MSGPACK_OBJECT_ARRAY: {
      json_t* a = json_array();
      for (uint32_t i = 0; i < o->via.array.size; i++)
        json_array_append_new(a, mp_json(&o->via.array.ptr[i], depth + 1));
      return a;
    }
    case MSGPACK_OBJECT_MAP: {
      json_t* m = json_object();
      for (uint32_t i = 0; i < o->via.map.size; i++) {
        const msgpack_object* k = &o->via.map.ptr[i].key;
        json_t* jk = k->type == MSGPACK_OBJECT_STR
                         ? cli_json_str(k->via.str.ptr, k->via.str.size)
                         : json_string("?");
        if (jk)
          json_object_set_new(m, json_string_value(jk),
                              mp_json(&o->via.map.ptr[i].val, depth + 1));
        json_decref(jk);
      }
      return m;
    }
    default: return json_null();
  }
}

/* The response map without its "re" and "ok". */
static json_t* reply_json(const msgpack_object* o) {
  json_t* j = mp_json(o, 0);
  json_object_del(j, "re");
  json_object_del(j, "ok");
  return j;
}

static int scalar(const msgpack_object* o) {
  return o->type != MSGPACK_OBJECT_ARRAY && o->type != MSGPACK_OBJECT_MAP;
}

/* A scalar for people; key (may be NULL) tells times apart. */
static void put_scalar(FILE* f, const char* key, size_t klen,
                       const msgpack_object* o) {
  switch (o->type) {
    case MSGPACK_OBJECT_NIL: fputs("-", f); break;
    case MSGPACK_OBJECT_BOOLEAN: fputs(o->via.boolean ? "yes" : "no", f); break;
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
      if (key && is_time_key(key, klen) && o->via.u64 > 100000000000ull &&
          o->via.u64 < (uint64_t)INT64_MAX)
        cli_put_time_ms(f, (int64_t)o->via.u64);
      else
        fprintf(f, "%llu", (unsigned long long)o->via.u64);
      break;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER: fprintf(f, "%lld", (long long)o->via.i64); break;
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64: fprintf(f, "%g", o->via.f64); break;
    case MSGPACK_OBJECT_STR:
      if (o->via.str.size > 0 && cli_is_text(o->via.str.ptr, o->via.str.size) &&
          !memchr(o->via.str.ptr, '\n', o->via.str.size))
        fwrite(o->via.str.ptr, 1, o->via.str.size, f);
      else
        cli_put_quoted(f, o->via.str.ptr, o->via.str.size);
      break;
    case MSGPACK_OBJECT_BIN: cli_put_hex(f, o->via.bin.ptr, o->via.bin.size); break;
    default: fputs("?", f); break;
  }
}

static void indent(FILE* f, int n) {
  for (int i = 0; i < n; i++) fputc(' ', f);
}

/* A map as "key: value" lines, nested maps and lists indented. */
static void put_tree(FILE* f, const msgpack_object* o, int ind, int depth) {
  if (depth > 16) return;
  if (o->type == MSGPACK_OBJECT_MAP) {
    for (uint32_t i = 0; i < o->via.map.size; i++) {
      const msgpack_object* k = &o->via.map.ptr[i].key;
      const msgpack_object* v = &o->via.map.ptr[i].val;
      const char* ks = k->type == MSGPACK_OBJECT_STR ? k->via.str.ptr : "?";
      size_t kl = k->type == MSGPACK_OBJECT_STR ? k->via.str.size : 1;
      if (ind == 0 && kl == 2 &&
          (memcmp(ks, "re", 2) == 0 || memcmp(ks, "ok", 2) == 0))
        continue;
      indent(f, ind);
      put_scalar(f, NULL, 0, k->type == MSGPACK_OBJECT_STR ? k : v);
      fputc(':', f);
      if (scalar(v)) {
        fputc(' ', f);
        put_scalar(f, ks, kl, v);
        fputc('\n', f);
      } else if (v->type == MSGPACK_OBJECT_ARRAY && v->via.array.size == 0) {
        fputs(" (none)\n", f);
      } else if (v->type == MSGPACK_OBJECT_MAP && v->via.map.size == 0) {
        fputs(" (none)\n", f);
      } else {
        int all_scalar = v->type == MSGPACK_OBJECT_ARRAY;
        for (uint32_t j = 0; all_scalar && j < v->via.array.size; j++)
          all_scalar = scalar(&v->via.array.ptr[j]);
        if (all_scalar) {
          for (uint32_t j = 0; j < v->via.array.size; j++) {
            fputs(j ? ", " : " ", f);
            put_scalar(f, ks, kl, &v->via.array.ptr[j]);
          }
          fputc('\n', f);
        } else {
          fputc('\n', f);
          put_tree(f, v, ind + 2, depth + 1);
        }
      }
    }
  } else if (o->type == MSGPACK_OBJECT_ARRAY) {
    /* "- " then the element; a map's first key on the dash's line, the
     * others under it (as YAML does). */
    for (uint32_t j = 0; j < o->via.array.size; j++) {
      const msgpack_object* e = &o->via.array.ptr[j];
      indent(f, ind);
      fputs("- ", f);
      if (scalar(e)) {
        put_scalar(f, NULL, 0, e);
        fputc('\n', f);
      } else {
        char* buf = NULL;
        size_t len = 0;
        FILE* mem = open_memstream(&buf, &len);
        if (!mem) continue;
        put_tree(mem, e, ind + 2, depth + 1);
        fclose(mem);
        size_t skip = 0;
        while (skip < len && skip < (size_t)ind + 2 && buf[skip] == ' ') skip++;
        if (len > skip) fwrite(buf + skip, 1, len - skip, f);
        else fputc('\n', f);
        free(buf);
      }
    }
  } else {
    indent(f, ind);
    put_scalar(f, NULL, 0, o);
    fputc('\n', f);
  }
}

static const msgpack_object* get(const msgpack_object* m, const char* k) {
  return txmq_client_map_get(m, k);
}

static int int_field(const msgpack_object* m, const char* k, int64_t* out) {
  const msgpack_object* v = get(m, k);
  if (v && v->type == MSGPACK_OBJECT_POSITIVE_INTEGER && v->via.u64 <= INT64_MAX) {
    *out = (int64_t)v->via.u64;
    return 1;
  }
  if (v && v->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
    *out = v->via.i64;
    return 1;
  }
  return 0;
}

static int str_is(const msgpack_object* v, const char* s) {
  return v && v->type == MSGPACK_OBJECT_STR && v->via.str.size == strlen(s) &&
         memcmp(v->via.str.ptr, s, v->via.str.size) == 0;
}

/* ---- fields of a request ---- */

typedef struct {
  msgpack_sbuffer sb;
  msgpack_packer pk;
} fields_t;

static void fields_init(fields_t* f, size_t n) {
  msgpack_sbuffer_init(&f->sb);
  msgpack_packer_init(&f->pk, &f->sb, msgpack_sbuffer_write);
  msgpack_pack_map(&f->pk, n);
}

static void fields_str(fields_t* f, const char* k, const char* v) {
  msgpack_pack_str(&f->pk, strlen(k));
  msgpack_pack_str_body(&f->pk, k, strlen(k));
  msgpack_pack_str(&f->pk, strlen(v));
  msgpack_pack_str_body(&f->pk, v, strlen(v));
}

static void fields_int(fields_t* f, const char* k, int64_t v) {
  msgpack_pack_str(&f->pk, strlen(k));
  msgpack_pack_str_body(&f->pk, k, strlen(k));
  msgpack_pack_int64(&f->pk, v);
}

static void fields_bin(fields_t* f, const char* k, const void* p, size_t n) {
  msgpack_pack_str(&f->pk, strlen(k));
  msgpack_pack_str_body(&f->pk, k, strlen(k));
  msgpack_pack_bin(&f->pk, n);
  msgpack_pack_bin_body(&f->pk, p, n);
}

/* Connects with role (the least op needs, unless --role says otherwise)
 * and sends op with f's fields (f may be NULL for none; its buffer is
 * freed here). 0 with *s and *reply, or the exit code with the reason said
 * and nothing left to free. */
static int role_call(const cli_args_t* a, txmq_role_t role, const char* op,
                     const char* what, fields_t* f, txmq_sync_client_t** s,
                     txmq_reply_t** reply) {
  *s = NULL;
  *reply = NULL;
  int rc = connect_server(a, role, NULL, s);
  if (rc == 0) {
    int st = txmq_sync_call(*s, op, f ? f->sb.data : NULL, f ? f->sb.size : 0,
                            reply);
    if (st != 0) {
      rc = request_failed(*s, what, st);
      txmq_reply_free(*reply);
      *reply = NULL;
      txmq_sync_free(*s);
      *s = NULL;
    }
  }
  if (f) msgpack_sbuffer_destroy(&f->sb);
  return rc;
}

/* ---- send ---- */

int cli_cmd_send(const cli_args_t* a) {
  int rc = cli_check_opts(a, CLI_OPT_TAGS | CLI_OPT_KEYS | CLI_OPT_PROP, "send");
  if (rc) return rc;
  if (a->npos < 2) {
    cli_err("send needs a TOPIC: txmq send TOPIC [BODY|-]");
    return CLI_EXIT_USAGE;
  }
  if (a->npos > 3) {
    cli_err("send takes a TOPIC and one BODY; quote a body with spaces");
    return CLI_EXIT_USAGE;
  }
  txmq_msg_t* m = NULL;
  if ((rc = build_msg(a, 1, &m))) return rc;
  txmq_sync_client_t* s = NULL;
  if ((rc = connect_server(a, TXMQ_ROLE_PRODUCER, NULL, &s))) {
    txmq_msg_free(m);
    return rc;
  }
  txmq_send_result_t r;
  int st = txmq_sync_send(s, m, &r);
  if (st != 0) {
    rc = request_failed(s, "send", st);
  } else {
    char id[TXMQ_MSG_ID_STRLEN + 1];
    txmq_tx_id_str(r.msg_id, id); /* the same 32 hex digits */
    if (a->json) {
      json_t* o = json_object();
      json_object_set_new(o, "msg_id", json_string(id));
      json_object_set_new(o, "topic", json_string(txmq_msg_topic(m)));
      json_object_set_new(o, "qid", json_integer(r.qid));
      json_object_set_new(o, "qoff", json_integer(r.qoff));
      cli_json_print(o);
    } else {
      printf("msg_id=%s topic=%s qid=%d qoff=%lld\n", id, txmq_msg_topic(m),
             (int)r.qid, (long long)r.qoff);
    }
  }
  txmq_msg_free(m);
  txmq_sync_free(s);
  return rc;
}

/* ---- tx ---- */

static int tx_send(const cli_args_t* a) {
  int rc = cli_check_opts(a, CLI_OPT_GROUP | CLI_OPT_ARG | CLI_OPT_TAGS |
                                 CLI_OPT_KEYS | CLI_OPT_PROP, "tx send");
  if (rc) return rc;
  if (!a->group) {
    cli_err("tx send needs --group G (the producer group whose script runs)");
    return CLI_EXIT_USAGE;
  }
  if ((rc = check_group("--group", a->group))) return rc;
  if (a->npos < 3) {
    cli_err("tx send needs a TOPIC: txmq tx send --group G TOPIC [BODY|-]");
    return CLI_EXIT_USAGE;
  }
  if (a->npos > 4) {
    cli_err("tx send takes a TOPIC and one BODY; quote a body with spaces");
    return CLI_EXIT_USAGE;
  }
  txmq_msg_t* m = NULL;
  if ((rc = build_msg(a, 2, &m))) return rc;
  /* --arg travels as one msgpack string: executeLocalTransaction's arg. */
  msgpack_sbuffer arg;
  msgpack_packer pk;
  msgpack_sbuffer_init(&arg);
  msgpack_packer_init(&pk, &arg, msgpack_sbuffer_write);
  if (a->arg) {
    msgpack_pack_str(&pk, strlen(a->arg));
    msgpack_pack_str_body(&pk, a->arg, strlen(a->arg));
  }
  txmq_sync_client_t* s = NULL;
  if ((rc = connect_server(a, TXMQ_ROLE_PRODUCER, NULL, &s))) {
    msgpack_sbuffer_destroy(&arg);
    txmq_msg_free(m);
    return rc;
  }
  txmq_tx_send_result_t r;
  const txmq_msg_t* one[1] = {m};
  int st = txmq_sync_tx_send(s, a->group, one, 1, a->arg ? arg.data : NULL,
                             a->arg ? arg.size : 0, &r);
  if (st != 0) {
    rc = request_failed(s, "tx send", st);
  } else {
    char mid[TXMQ_MSG_ID_STRLEN + 1], tid[TXMQ_TX_ID_STRLEN + 1];
    txmq_tx_id_str(r.msg_ids[0], mid);
    txmq_tx_id_str(r.tx_id, tid);
    const char* state = txmq_tx_state_name(r.state);
    if (a->json) {
      json_t* o = json_object();
      json_object_set_new(o, "msg_id", json_string(mid));
      json_object_set_new(o, "tx_id", json_string(tid));
      json_object_set_new(o, "state", json_string(state));
      json_object_set_new(o, "group", json_string(a->group));
      json_object_set_new(o, "topic", json_string(txmq_msg_topic(m)));
      json_object_set_new(o, "version", cli_json_str(r.version, strlen(r.version)));
      if (r.diag[0]) json_object_set_new(o, "diag", cli_json_str(r.diag, strlen(r.diag)));
      cli_json_print(o);
    } else {
      printf("msg_id=%s tx_id=%s state=%s", mid, tid, state);
      if (r.version[0]) printf(" version=%s", r.version);
      /* Why the script left it pending: the checks decide now. */
      if (r.diag[0]) {
        fputs(" diag=", stdout);
        cli_put_quoted(stdout, r.diag, strlen(r.diag));
      }
      fputc('\n', stdout);
    }
  }
  msgpack_sbuffer_destroy(&arg);
  txmq_msg_free(m);
  txmq_sync_free(s);
  return rc;
}

static void put_due(int64_t ms) {
  if (ms <= 0)
    fputs("now", stdout);
  else if (ms < 60000)
    printf("%.1fs", (double)ms / 1000.0);
  else
    printf("%lldm%02llds", (long long)(ms / 60000), (long long)(ms / 1000 % 60));
}

/* The most transactions one tx.list answers (PROTOCOL.md). */
#define TX_LIST_MAX 10000

static int tx_list(const cli_args_t* a) {
  int rc = cli_check_opts(a, CLI_OPT_GROUP | CLI_OPT_N, "tx list");
  if (rc) return rc;
  if (a->npos > 2) {
    cli_err("tx list takes no arguments (use --group G)");
    return CLI_EXIT_USAGE;
  }
  if (a->group && (rc = check_group("--group", a->group))) return rc;
  uint64_t limit = 100;
  if (a->n && (rc = cli_parse_u64("-n", a->n, &limit))) return rc;
  if (limit == 0 || limit > TX_LIST_MAX) {
    cli_err("-n %s: expected 1 to %d transactions", a->n, TX_LIST_MAX);
    return CLI_EXIT_USAGE;
  }
  /* One more than shown, to know whether the list was cut. */
  uint64_t ask = limit < TX_LIST_MAX ? limit + 1 : limit;
  fields_t f;
  fields_init(&f, a->group ? 2 : 1);
  if (a->group) fields_str(&f, "group", a->group);
  fields_int(&f, "limit", (int64_t)ask);
  txmq_sync_client_t* s;
  txmq_reply_t* reply;
  if ((rc = role_call(a, TXMQ_ROLE_PRODUCER, "tx.list", "tx list", &f, &s,
                      &reply)))
    return rc;
  const msgpack_object* txs = get(txmq_reply_object(reply), "txs");
  uint32_t shown = 0;
  if (txs && txs->type == MSGPACK_OBJECT_ARRAY)
    shown = txs->via.array.size < limit ? txs->via.array.size : (uint32_t)limit;
  if (!txs || txs->type != MSGPACK_OBJECT_ARRAY) {
    cli_err("tx list: the server's answer has no list of transactions");
    rc = CLI_EXIT_FAIL;
  } else if (a->json) {
    for (uint32_t i = 0; i < shown; i++)
      cli_json_print(mp_json(&txs->via.array.ptr[i], 0));
  } else if (shown == 0) {
    printf("no pending or parked transactions%s%s\n",
           a->group ? " in group " : "", a->group ? a->group : "");
  } else {
    printf("%-32s  %-7s  %-20s  %-24s  %6s  %4s  %-24s  %s\n", "TX_ID", "STATE",
           "GROUP", "PRODUCER", "CHECKS", "MSGS", "BORN", "NEXT_CHECK");
    for (uint32_t i = 0; i < shown; i++) {
      const msgpack_object* t = &txs->via.array.ptr[i];
      const msgpack_object* id = get(t, "tx_id");
      if (id && id->type == MSGPACK_OBJECT_BIN)
        cli_put_hex(stdout, id->via.bin.ptr, id->via.bin.size);
      else
        fputs("-", stdout);
      const char* cols[] = {"state", "group", "producer"};
      const int widths[] = {7, 20, 24};
      for (int k = 0; k < 3; k++) {
        const msgpack_object* v = get(t, cols[k]);
        if (v && v->type == MSGPACK_OBJECT_STR)
          printf("  %-*.*s", widths[k], (int)v->via.str.size, v->via.str.ptr);
        else
          printf("  %-*s", widths[k], "-");
      }
      int64_t n;
      printf("  %6lld", int_field(t, "check_count", &n) ? (long long)n : -1LL);
      printf("  %4lld  ", int_field(t, "nmsgs", &n) ? (long long)n : -1LL);
      if (int_field(t, "born", &n))
        cli_put_time_ms(stdout, n);
      else
        printf("%-24s", "-");
      fputs("  ", stdout);
      if (str_is(get(t, "state"), "pending") && int_field(t, "due_in_ms", &n))
        put_due(n);
      else
        fputs("-", stdout);
      fputc('\n', stdout);
    }
  }
  /* A cut list says so (on standard error, so that the listing itself
   * stays one transaction per line). */
  if (rc == 0 && txs->via.array.size > limit)
    cli_err("tx list: the oldest %llu shown; there are more (-n N, up to %d)",
            (unsigned long long)limit, TX_LIST_MAX);
  else if (rc == 0 && limit == TX_LIST_MAX && shown == TX_LIST_MAX)
    cli_err("tx list: the oldest %d shown, the most one list holds; there "
            "may be more", TX_LIST_MAX);
  txmq_reply_free(reply);
  txmq_sync_free(s);
  return rc;
}

/* The answer to an op on one thing: "name=value field=X", or the
 * response as JSON with name added. */
static void put_labelled(const cli_args_t* a, const msgpack_object* resp,
                         const char* name, const char* value,
                         const char* field) {
  if (a->json) {
    json_t* o = reply_json(resp);
    json_object_set_new(o, name, json_string(value));
    cli_json_print(o);
    return;
  }
  const msgpack_object* v = get(resp, field);
  printf("%s=%s %s=", name, value, field);
  if (v && scalar(v))
    put_scalar(stdout, NULL, 0, v);
  else
    fputs("-", stdout);
  fputc('\n', stdout);
}

static int parse_tx_id(const char* what, const cli_args_t* a, uint8_t id[16]) {
  if (a->npos != 3) {
    cli_err("%s needs one TXID: txmq %s TXID", what, what);
    return CLI_EXIT_USAGE;
  }
  if (txmq_tx_id_parse(a->pos[2], id) != 0) {
    cli_err("%s: '%s' is not a transaction id (32 hex digits)", what, a->pos[2]);
    return CLI_EXIT_USAGE;
  }
  return 0;
}

static void put_history_plain(const msgpack_object* h) {
  printf("history:\n");
  if (!h || h->type != MSGPACK_OBJECT_ARRAY || h->via.array.size == 0) {
    printf("  (none)\n");
    return;
  }
  for (uint32_t i = 0; i < h->via.array.size; i++) {
    const msgpack_object* e = &h->via.array.ptr[i];
    int64_t at;
    fputs("  ", stdout);
    if (int_field(e, "at", &at))
      cli_put_time_ms(stdout, at);
    else
      fputs("-", stdout);
    fputs("  ", stdout);
    const msgpack_object* ev = get(e, "event");
    if (ev && ev->type == MSGPACK_OBJECT_STR)
      printf("%-8.*s", (int)ev->via.str.size, ev->via.str.ptr);
    else
      printf("%-8s", "?");
    /* the rest as key=value, whatever the server adds */
    if (e->type == MSGPACK_OBJECT_MAP) {
      for (uint32_t k = 0; k < e->via.map.size; k++) {
        const msgpack_object* key = &e->via.map.ptr[k].key;
        const msgpack_object* val = &e->via.map.ptr[k].val;
        if (key->type != MSGPACK_OBJECT_STR || str_is(key, "event") ||
            str_is(key, "at") || val->type == MSGPACK_OBJECT_NIL || !scalar(val))
          continue;
        if (val->type == MSGPACK_OBJECT_STR && val->via.str.size == 0) continue;
        printf(" %.*s=", (int)key->via.str.size, key->via.str.ptr);
        put_scalar(stdout, key->via.str.ptr, key->via.str.size, val);
      }
    }
    fputc('\n', stdout);
  }
}

static int tx_show(const cli_args_t* a) {
  int rc = cli_check_opts(a, 0, "tx show");
  if (rc) return rc;
  uint8_t id[16];
  if ((rc = parse_tx_id("tx show", a, id))) return rc;
  fields_t f;
  fields_init(&f, 1);
  fields_bin(&f, "tx_id", id, 16);
  txmq_sync_client_t* s;
  txmq_reply_t* reply;
  if ((rc = role_call(a, TXMQ_ROLE_PRODUCER, "tx.show", "tx show", &f, &s,
                      &reply)))
    return rc;
  if (a->json) {
    cli_json_print(reply_json(txmq_reply_object(reply)));
  } else {
    const msgpack_object* o = txmq_reply_object(reply);
    const msgpack_object* tx = get(o, "tx");
    if (tx && tx->type == MSGPACK_OBJECT_MAP)
      put_tree(stdout, tx, 0, 0);
    else
      printf("tx_id: %s\n", a->pos[2]);
    put_history_plain(get(o, "history"));
    /* A history the server could not read back to the half record
     * (retention removed it, or damage) says so, as --json does. */
    const msgpack_object* complete = get(o, "complete");
    if (complete && complete->type == MSGPACK_OBJECT_BOOLEAN &&
        !complete->via.boolean) {
      const msgpack_object* d = get(o, "diag");
      printf("  (incomplete: ");
      if (d && d->type == MSGPACK_OBJECT_STR)
        cli_put_quoted(stdout, d->via.str.ptr, d->via.str.size);
      else
        fputs("unknown reason", stdout);
      printf("; the log no longer holds the older records, so what they "
             "would tell shows as - or 0)\n");
    }
  }
  txmq_reply_free(reply);
  txmq_sync_free(s);
  return rc;
}

/* An operator's action on one transaction (admin): tx resume (op
 * tx.resume), tx commit and tx rollback (op tx.decide with the decision). */
static int tx_operator(const cli_args_t* a, const char* cmd, const char* op,
                       const char* decision) {
  int rc = cli_check_opts(a, 0, cmd);
  if (rc) return rc;
  uint8_t id[16];
  if ((rc = parse_tx_id(cmd, a, id))) return rc;
  fields_t f;
  fields_init(&f, decision != NULL ? 2 : 1);
  fields_bin(&f, "tx_id", id, 16);
  if (decision != NULL) fields_str(&f, "decision", decision);
  txmq_sync_client_t* s;
  txmq_reply_t* reply;
  if ((rc = role_call(a, TXMQ_ROLE_ADMIN, op, cmd, &f, &s, &reply))) return rc;
  char tid[TXMQ_TX_ID_STRLEN + 1];
  txmq_tx_id_str(id, tid);
  put_labelled(a, txmq_reply_object(reply), "tx_id", tid, "state");
  txmq_reply_free(reply);
  txmq_sync_free(s);
  return 0;
}

int cli_cmd_tx(const cli_args_t* a) {
  if (a->npos < 2) {
    cli_err("tx needs a subcommand: send, list, show, resume, commit or "
            "rollback");
    return CLI_EXIT_USAGE;
  }
  const char* sub = a->pos[1];
  if (strcmp(sub, "send") == 0) return tx_send(a);
  if (strcmp(sub, "list") == 0) return tx_list(a);
  if (strcmp(sub, "show") == 0) return tx_show(a);
  if (strcmp(sub, "resume") == 0)
    return tx_operator(a, "tx resume", "tx.resume", NULL);
  if (strcmp(sub, "commit") == 0)
    return tx_operator(a, "tx commit", "tx.decide", "commit");
  if (strcmp(sub, "rollback") == 0)
    return tx_operator(a, "tx rollback", "tx.decide", "rollback");
  cli_err("unknown command 'tx %s' (tx send, list, show, resume, commit or "
          "rollback)", sub);
  return CLI_EXIT_USAGE;
}

/* ---- consume ---- */

/* A message's body on one line: text without line breaks as it is,
 * anything else quoted with escapes; an empty body is an empty line. */
static void put_body_line(const txmq_msg_t* m) {
  size_t len = 0;
  const char* body = txmq_msg_body(m, &len);
  if (len == 0) {
    /* an empty line */
  } else if (cli_is_text(body, len) && !memchr(body, '\n', len) &&
             !memchr(body, '\r', len)) {
    fwrite(body, 1, len, stdout);
  } else {
    cli_put_quoted(stdout, body, len);
  }
  fputc('\n', stdout);
}

static int print_delivery(const cli_args_t* a, const txmq_delivery_t* d) {
  if (a->json) {
    json_t* o = cli_msg_json(d->msg, 1);
    if (!o) return -1;
    json_object_set_new(o, "deliveries", json_integer(d->deliveries));
    return cli_json_print(o);
  }
  put_body_line(d->msg);
  return 0;
}

int cli_cmd_consume(const cli_args_t* a) {
  int rc = cli_check_opts(a, CLI_OPT_GROUP | CLI_OPT_TAGS | CLI_OPT_N |
                                 CLI_OPT_TIMEOUT | CLI_OPT_FROM, "consume");
  if (rc) return rc;
  if (a->npos != 2) {
    cli_err("consume needs one TOPIC: txmq consume TOPIC --group G");
    return CLI_EXIT_USAGE;
  }
  const char* topic = a->pos[1];
  if (!txmq_name_valid(topic)) {
    cli_err("invalid topic name '%s'", topic);
    return CLI_EXIT_USAGE;
  }
  if (!a->group) {
    cli_err("consume needs --group G (the consumer group)");
    return CLI_EXIT_USAGE;
  }
  if ((rc = check_group("--group", a->group))) return rc;
  uint64_t limit = 0;
  if (a->n) {
    if ((rc = cli_parse_u64("-n", a->n, &limit))) return rc;
    if (limit == 0) {
      cli_err("-n 0: expected at least 1 message");
      return CLI_EXIT_USAGE;
    }
  }
  int64_t timeout_ms = -1; /* none: wait for ever */
  if (a->timeout) {
    char* end = NULL;
    errno = 0;
    double sec = strtod(a->timeout, &end);
    if (errno || end == a->timeout || *end || !isfinite(sec) || sec < 0 ||
        sec > 1e9) {
      cli_err("--timeout '%s': expected seconds (e.g. 5 or 0.5)", a->timeout);
      return CLI_EXIT_USAGE;
    }
    timeout_ms = (int64_t)(sec * 1000.0 + 0.5);
  }
  txmq_receive_opts_t ro;
  memset(&ro, 0, sizeof ro);
  ro.group = a->group;
  ro.topic = topic;
  ro.tags = a->tags ? a->tags : "*";
  ro.from = TXMQ_FROM_EARLIEST;
  if (a->from) {
    if (strcmp(a->from, "earliest") == 0) {
      ro.from = TXMQ_FROM_EARLIEST;
    } else if (strcmp(a->from, "latest") == 0) {
      ro.from = TXMQ_FROM_LATEST;
    } else {
      uint64_t off = 0;
      int ok = a->from[0] != '\0' && strlen(a->from) <= 19;
      for (const char* p = a->from; ok && *p; p++) ok = *p >= '0' && *p <= '9';
      if (ok) off = strtoull(a->from, NULL, 10);
      if (!ok || off > INT64_MAX) {
        cli_err("--from '%s': expected earliest, latest or an offset", a->from);
        return CLI_EXIT_USAGE;
      }
      ro.from = TXMQ_FROM_OFFSET;
      ro.from_offset = (int64_t)off;
    }
  }
  txmq_sync_client_t* s = NULL;
  if ((rc = connect_server(a, TXMQ_ROLE_CONSUMER, a->group, &s))) return rc;

  uint64_t got = 0;
  uint64_t deadline = timeout_ms >= 0 ? mono_ms() + (uint64_t)timeout_ms : 0;
  int closed = 0;
  rc = CLI_EXIT_OK;
  while (rc == CLI_EXIT_OK && !closed && !(limit && got >= limit)) {
    uint32_t wait = 30000;
    if (timeout_ms >= 0) {
      uint64_t now = mono_ms();
      uint64_t rem = deadline > now ? deadline - now : 0;
      wait = rem < wait ? (uint32_t)rem : wait;
    }
    uint64_t want = limit ? limit - got : 32;
    ro.max = (uint32_t)(want < 256 ? want : 256);
    ro.wait_ms = wait;
    txmq_delivery_t* d = NULL;
    size_t n = 0;
    int st = txmq_sync_receive(s, &ro, &d, &n);
    if (st == TXMQ_ENOTFOUND) {
      /* The topic does not exist yet: nothing was ever sent to it. A
       * consumer waits for the first message as for any other, polling
       * (the server does not hold a receive on a missing topic), and
       * everything the topic will hold is newer than this consumer, so
       * "latest" means from its start. */
      if (ro.from == TXMQ_FROM_LATEST) ro.from = TXMQ_FROM_EARLIEST;
      uint32_t pause = wait < 250 ? wait : 250;
      if (pause > 0) uv_sleep(pause);
      if (timeout_ms >= 0 && mono_ms() >= deadline) break;
      continue;
    }
    if (st != 0) {
      rc = request_failed(s, "consume", st);
      break;
    }
    for (size_t i = 0; i < n && rc == CLI_EXIT_OK && !closed; i++) {
      /* Acknowledged only once it is out: a message the tool could not
       * print is delivered again. A reader that went away (`| head`) ends
       * the consumer quietly, as the end of -n does. */
      int bad = print_delivery(a, &d[i]) != 0;
      int out = cli_stdout_state();
      if (out == CLI_OUT_CLOSED) {
        closed = 1;
        break;
      }
      if (out != CLI_OUT_OK || bad) {
        cli_err("%s", out != CLI_OUT_OK ? "writing standard output failed"
                                        : "out of memory");
        rc = CLI_EXIT_FAIL;
        break;
      }
      const char* h[1] = {d[i].handle};
      int64_t acked = 0;
      st = txmq_sync_ack(s, a->group, h, 1, &acked);
      if (st != 0) rc = request_failed(s, "ack", st);
      got++;
    }
    txmq_client_free_deliveries(d, n);
    if (n > 0 && timeout_ms >= 0)
      deadline = mono_ms() + (uint64_t)timeout_ms;
    else if (timeout_ms >= 0 && mono_ms() >= deadline)
      break;
  }
  txmq_sync_free(s);
  return rc;
}

/* ---- offset ---- */

/* One queue's committed offset: "topic=T group=G qid=Q offset=N", with
 * "offset=-" (JSON: null) when the group never read the queue. */
static void put_offset(const cli_args_t* a, const char* topic, int qid,
                       int have, int64_t off) {
  if (a->json) {
    json_t* o = json_object();
    json_object_set_new(o, "topic", json_string(topic));
    json_object_set_new(o, "group", json_string(a->group));
    json_object_set_new(o, "qid", json_integer(qid));
    json_object_set_new(o, "offset", have ? json_integer(off) : json_null());
    cli_json_print(o);
  } else if (have) {
    printf("topic=%s group=%s qid=%d offset=%lld\n", topic, a->group, qid,
           (long long)off);
  } else {
    printf("topic=%s group=%s qid=%d offset=-\n", topic, a->group, qid);
  }
}

/* --queue Q: *qid, or -1 without it. */
static int parse_queue(const cli_args_t* a, int* qid) {
  *qid = -1;
  if (!a->queue) return 0;
  uint64_t q;
  int rc = cli_parse_u64("--queue", a->queue, &q);
  if (rc) return rc;
  if (q >= TXMQ_STORE_MAX_QUEUES) {
    cli_err("--queue %s: a topic has at most %d queues (0-%d)", a->queue,
            TXMQ_STORE_MAX_QUEUES, TXMQ_STORE_MAX_QUEUES - 1);
    return CLI_EXIT_USAGE;
  }
  *qid = (int)q;
  return 0;
}

/* TOPIC (pos[2]), --group and --queue of offset get|set; *qid -1 without
 * --queue. */
static int offset_target(const cli_args_t* a, const char* what, int* qid) {
  int rc = check_topic(a->pos[2]);
  if (rc) return rc;
  if (!a->group) {
    cli_err("%s needs --group G (the consumer group)", what);
    return CLI_EXIT_USAGE;
  }
  rc = check_group("--group", a->group);
  if (rc) return rc;
  return parse_queue(a, qid);
}

/* How many queues topic has, from status: offset.get asks about one queue
 * and cannot tell a topic that does not exist from a queue the group never
 * read (ENOTFOUND for both). */
static int topic_queues(txmq_sync_client_t* s, const char* what,
                        const char* topic, int* nq) {
  txmq_reply_t* reply = NULL;
  int st = txmq_sync_call(s, "status", NULL, 0, &reply);
  if (st != 0) return request_failed(s, what, st);
  const msgpack_object* ts = get(txmq_reply_object(reply), "topics");
  int rc = CLI_EXIT_FAIL;
  if (!ts || ts->type != MSGPACK_OBJECT_ARRAY) {
    cli_err("%s: the server's answer has no list of topics", what);
  } else {
    for (uint32_t i = 0; i < ts->via.array.size && rc != 0; i++) {
      const msgpack_object* t = &ts->via.array.ptr[i];
      int64_t n;
      if (str_is(get(t, "name"), topic) && int_field(t, "queues", &n) &&
          n >= 0 && n <= TXMQ_STORE_MAX_QUEUES) {
        *nq = (int)n;
        rc = 0;
      }
    }
    if (rc != 0) cli_err("%s: topic '%s' does not exist", what, topic);
  }
  txmq_reply_free(reply);
  return rc;
}

static int offset_get(const cli_args_t* a) {
  int rc = cli_check_opts(a, CLI_OPT_GROUP | CLI_OPT_QUEUE, "offset get");
  if (rc) return rc;
  if (a->npos != 3) {
    cli_err("offset get needs one TOPIC: txmq offset get TOPIC --group G "
            "[--queue Q]");
    return CLI_EXIT_USAGE;
  }
  int qid;
  if ((rc = offset_target(a, "offset get", &qid))) return rc;
  const char* topic = a->pos[2];
  txmq_sync_client_t* s = NULL;
  if ((rc = connect_server(a, TXMQ_ROLE_CONSUMER, NULL, &s))) return rc;
  int nq = 0;
  rc = topic_queues(s, "offset get", topic, &nq);
  int first = qid >= 0 ? qid : 0, last = qid >= 0 ? qid : nq - 1;
  for (int q = first; rc == 0 && q <= last; q++) {
    fields_t f;
    fields_init(&f, 3);
    fields_str(&f, "group", a->group);
    fields_str(&f, "topic", topic);
    fields_int(&f, "qid", q);
    txmq_reply_t* reply = NULL;
    int st = txmq_sync_call(s, "offset.get", f.sb.data, f.sb.size, &reply);
    msgpack_sbuffer_destroy(&f.sb);
    int64_t off = 0;
    if (st == TXMQ_ENOTFOUND) {
      put_offset(a, topic, q, 0, 0); /* the group never read this queue */
    } else if (st != 0) {
      rc = request_failed(s, "offset get", st); /* e.g. no such queue */
    } else if (!int_field(txmq_reply_object(reply), "offset", &off)) {
      cli_err("offset get: the server's answer has no offset");
      rc = CLI_EXIT_FAIL;
    } else {
      put_offset(a, topic, q, 1, off);
    }
    txmq_reply_free(reply);
  }
  txmq_sync_free(s);
  return rc;
}

static int offset_set(const cli_args_t* a) {
  int rc = cli_check_opts(a, CLI_OPT_GROUP | CLI_OPT_QUEUE, "offset set");
  if (rc) return rc;
  if (a->npos != 4) {
    cli_err("offset set needs a TOPIC and an OFFSET: txmq offset set TOPIC "
            "--group G --queue Q OFFSET");
    return CLI_EXIT_USAGE;
  }
  int qid;
  if ((rc = offset_target(a, "offset set", &qid))) return rc;
  if (qid < 0) {
    cli_err("offset set needs --queue Q (offsets are per queue; 'txmq offset "
            "get' lists them)");
    return CLI_EXIT_USAGE;
  }
  uint64_t off;
  if ((rc = cli_parse_u64("OFFSET", a->pos[3], &off))) return rc;
  if (off > INT64_MAX) {
    cli_err("OFFSET '%s': over the largest offset, %lld", a->pos[3],
            (long long)INT64_MAX);
    return CLI_EXIT_USAGE;
  }
  const char* topic = a->pos[2];
  fields_t f;
  fields_init(&f, 4);
  fields_str(&f, "group", a->group);
  fields_str(&f, "topic", topic);
  fields_int(&f, "qid", qid);
  fields_int(&f, "offset", (int64_t)off);
  txmq_sync_client_t* s;
  txmq_reply_t* reply;
  if ((rc = role_call(a, TXMQ_ROLE_CONSUMER, "offset.set", "offset set", &f,
                      &s, &reply)))
    return rc;
  put_offset(a, topic, qid, 1, (int64_t)off);
  txmq_reply_free(reply);
  txmq_sync_free(s);
  return 0;
}

int cli_cmd_offset(const cli_args_t* a) {
  if (a->npos < 2) {
    cli_err("offset needs a subcommand: get or set");
    return CLI_EXIT_USAGE;
  }
  const char* sub = a->pos[1];
  if (strcmp(sub, "get") == 0) return offset_get(a);
  if (strcmp(sub, "set") == 0) return offset_set(a);
  cli_err("unknown command 'offset %s' (offset get or set)", sub);
  return CLI_EXIT_USAGE;
}

/* ---- peek ---- */

/* One peeked message: "qid=Q qoff=O BODY" (the body as consume prints it),
 * or its JSON. */
static int print_peeked(const cli_args_t* a, const txmq_msg_t* m) {
  if (a->json) {
    json_t* j = cli_msg_json(m, 1);
    if (!j || cli_json_print(j) != 0) {
      cli_err("peek: out of memory");
      return CLI_EXIT_FAIL;
    }
    return 0;
  }
  printf("qid=%d qoff=%lld ", txmq_msg_queue_id(m),
         (long long)txmq_msg_queue_offset(m));
  put_body_line(m);
  return 0;
}

/* Up to limit messages of one queue from `from` (-1: the first retained),
 * 256 at most per request. *closed when standard output went away. */
static int peek_queue(const cli_args_t* a, txmq_sync_client_t* s,
                      const char* topic, int qid, int64_t from,
                      uint64_t limit, int* closed) {
  uint64_t got = 0;
  int64_t at = from;
  while (got < limit) {
    uint32_t want = limit - got < 256 ? (uint32_t)(limit - got) : 256;
    txmq_delivery_t* d = NULL;
    size_t n = 0;
    int64_t next = 0;
    int st = txmq_sync_peek(s, topic, qid, at, want, &d, &n, &next);
    if (st != 0) return request_failed(s, "peek", st);
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
      rc = print_peeked(a, d[i].msg);
      int out = cli_stdout_state();
      if (out == CLI_OUT_CLOSED) {
        *closed = 1;
        break;
      }
      if (rc == 0 && out != CLI_OUT_OK) {
        cli_err("writing standard output failed");
        rc = CLI_EXIT_FAIL;
      }
      got++;
    }
    txmq_client_free_deliveries(d, n);
    if (rc != 0 || *closed || n == 0) return rc;
    at = next;
  }
  return 0;
}

int cli_cmd_peek(const cli_args_t* a) {
  int rc = cli_check_opts(a, CLI_OPT_QUEUE | CLI_OPT_FROM | CLI_OPT_N, "peek");
  if (rc) return rc;
  if (a->npos != 2) {
    cli_err("peek needs one TOPIC: txmq peek TOPIC [--queue Q] [--from "
            "OFFSET] [-n N]");
    return CLI_EXIT_USAGE;
  }
  const char* topic = a->pos[1];
  if ((rc = check_topic(topic))) return rc;
  int qid;
  if ((rc = parse_queue(a, &qid))) return rc;
  int64_t from = -1;
  if (a->from) {
    uint64_t v;
    if ((rc = cli_parse_u64("--from", a->from, &v))) return rc;
    if (v > INT64_MAX) {
      cli_err("--from %s: over the largest offset", a->from);
      return CLI_EXIT_USAGE;
    }
    from = (int64_t)v;
  }
  uint64_t limit = 10;
  if (a->n) {
    if ((rc = cli_parse_u64("-n", a->n, &limit))) return rc;
    if (limit == 0) {
      cli_err("-n 0: nothing to show");
      return CLI_EXIT_USAGE;
    }
  }
  txmq_sync_client_t* s = NULL;
  if ((rc = connect_server(a, TXMQ_ROLE_CONSUMER, NULL, &s))) return rc;
  int nq = 0;
  if (qid >= 0) nq = qid + 1;
  else rc = topic_queues(s, "peek", topic, &nq);
  int closed = 0;
  for (int q = qid >= 0 ? qid : 0; rc == 0 && !closed && q < nq; q++)
    rc = peek_queue(a, s, topic, q, from, limit, &closed);
  txmq_sync_free(s);
  return rc;
}

/* ---- topic create|list ---- */

static int topic_create(const cli_args_t* a) {
  int rc = cli_check_opts(a, 0, "topic create");
  if (rc) return rc;
  if (a->npos != 4) {
    cli_err("topic create needs a TOPIC and its number of QUEUES: txmq topic "
            "create TOPIC QUEUES");
    return CLI_EXIT_USAGE;
  }
  const char* topic = a->pos[2];
  if ((rc = check_topic(topic))) return rc;
  uint64_t nq;
  if ((rc = cli_parse_u64("QUEUES", a->pos[3], &nq))) return rc;
  if (nq < 1 || nq > TXMQ_STORE_MAX_QUEUES) {
    cli_err("QUEUES %s: a topic has 1 to %d queues", a->pos[3],
            TXMQ_STORE_MAX_QUEUES);
    return CLI_EXIT_USAGE;
  }
  fields_t f;
  fields_init(&f, 2);
  fields_str(&f, "topic", topic);
  fields_int(&f, "queues", (int64_t)nq);
  txmq_sync_client_t* s;
  txmq_reply_t* reply;
  if ((rc = role_call(a, TXMQ_ROLE_ADMIN, "topic.create", "topic create", &f,
                      &s, &reply)))
    return rc;
  if (a->json) {
    cli_json_print(reply_json(txmq_reply_object(reply)));
  } else {
    printf("topic=%s queues=%d\n", topic, (int)nq);
  }
  txmq_reply_free(reply);
  txmq_sync_free(s);
  return 0;
}

/* The topics of status: name, queues, retained messages, pending
 * transactions with a message on it. */
static int topic_list(const cli_args_t* a) {
  int rc = cli_check_opts(a, 0, "topic list");
  if (rc) return rc;
  if (a->npos != 2) {
    cli_err("topic list takes no arguments");
    return CLI_EXIT_USAGE;
  }
  txmq_sync_client_t* s;
  txmq_reply_t* reply;
  if ((rc = role_call(a, TXMQ_ROLE_PRODUCER, "status", "topic list", NULL, &s,
                      &reply)))
    return rc;
  const msgpack_object* ts = get(txmq_reply_object(reply), "topics");
  if (!ts || ts->type != MSGPACK_OBJECT_ARRAY) {
    cli_err("topic list: the server's answer has no list of topics");
    rc = CLI_EXIT_FAIL;
  } else if (a->json) {
    for (uint32_t i = 0; i < ts->via.array.size; i++)
      cli_json_print(reply_json(&ts->via.array.ptr[i]));
  } else if (ts->via.array.size == 0) {
    printf("no topics\n");
  } else {
    printf("%-32s  %6s  %12s  %10s\n", "TOPIC", "QUEUES", "MESSAGES",
           "PENDING_TX");
    for (uint32_t i = 0; i < ts->via.array.size; i++) {
      const msgpack_object* t = &ts->via.array.ptr[i];
      const msgpack_object* name = get(t, "name");
      int64_t q = -1, n = -1, p = -1;
      int_field(t, "queues", &q);
      int_field(t, "messages", &n);
      int_field(t, "pending_tx", &p);
      printf("%-32.*s  %6lld  %12lld  %10lld\n",
             name && name->type == MSGPACK_OBJECT_STR ? (int)name->via.str.size
                                                      : 1,
             name && name->type == MSGPACK_OBJECT_STR ? name->via.str.ptr : "-",
             (long long)q, (long long)n, (long long)p);
    }
  }
  txmq_reply_free(reply);
  txmq_sync_free(s);
  return rc;
}

int cli_cmd_topic(const cli_args_t* a) {
  if (a->npos < 2) {
    cli_err("topic needs a subcommand: create or list");
    return CLI_EXIT_USAGE;
  }
  const char* sub = a->pos[1];
  if (strcmp(sub, "create") == 0) return topic_create(a);
  if (strcmp(sub, "list") == 0) return topic_list(a);
  cli_err("unknown command 'topic %s' (topic create or list)", sub);
  return CLI_EXIT_USAGE;
}

/* ---- status, reload ---- */

int cli_cmd_status(const cli_args_t* a) {
  int rc = cli_check_opts(a, 0, "status");
  if (rc) return rc;
  if (a->npos != 1) {
    cli_err("status takes no arguments");
    return CLI_EXIT_USAGE;
  }
  txmq_sync_client_t* s;
  txmq_reply_t* reply;
  if ((rc = role_call(a, TXMQ_ROLE_PRODUCER, "status", "status", NULL, &s,
                      &reply)))
    return rc;
  if (a->json) {
    cli_json_print(reply_json(txmq_reply_object(reply)));
  } else {
    printf("server: %s\n", a->server);
    put_tree(stdout, txmq_reply_object(reply), 0, 0);
  }
  txmq_reply_free(reply);
  txmq_sync_free(s);
  return rc;
}

int cli_cmd_reload(const cli_args_t* a) {
  int rc = cli_check_opts(a, 0, "reload");
  if (rc) return rc;
  if (a->npos != 2) {
    cli_err("reload needs one GROUP: txmq reload GROUP");
    return CLI_EXIT_USAGE;
  }
  const char* group = a->pos[1];
  if ((rc = check_group("GROUP", group))) return rc;
  fields_t f;
  fields_init(&f, 1);
  fields_str(&f, "group", group);
  txmq_sync_client_t* s;
  txmq_reply_t* reply;
  if ((rc = role_call(a, TXMQ_ROLE_ADMIN, "reload", "reload", &f, &s,
                      &reply)))
    return rc;
  put_labelled(a, txmq_reply_object(reply), "group", group, "version");
  txmq_reply_free(reply);
  txmq_sync_free(s);
  return 0;
}
