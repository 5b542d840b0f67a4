/*
 * render.c - how the `txmq` tool shows bytes to people and to scripts:
 * UTF-8 and printability checks, quoted strings, hex, base64, timestamps,
 * and one-line JSON output through jansson.
 *
 * It does not decide what to print; the subcommands do.
 */
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "clients/cli/cli.h"
#include "txmq/msg.h"

/* Decodes one UTF-8 sequence at p (n bytes left). Returns its length and
 * stores the code point, or returns 0 for an invalid sequence (overlong
 * forms, surrogates and values above U+10FFFF are invalid). */
static size_t utf8_next(const unsigned char* p, size_t n, uint32_t* cp) {
  unsigned char c = p[0];
  size_t len;
  uint32_t v, min;
  if (c < 0x80) {
    *cp = c;
    return 1;
  } else if ((c & 0xe0) == 0xc0) {
    len = 2, v = c & 0x1f, min = 0x80;
  } else if ((c & 0xf0) == 0xe0) {
    len = 3, v = c & 0x0f, min = 0x800;
  } else if ((c & 0xf8) == 0xf0) {
    len = 4, v = c & 0x07, min = 0x10000;
  } else {
    return 0;
  }
  if (n < len) return 0;
  for (size_t i = 1; i < len; i++) {
    if ((p[i] & 0xc0) != 0x80) return 0;
    v = (v << 6) | (p[i] & 0x3f);
  }
  if (v < min || v > 0x10ffff || (v >= 0xd800 && v <= 0xdfff)) return 0;
  *cp = v;
  return len;
}

static int cp_printable(uint32_t cp) {
  if (cp == '\t' || cp == '\n' || cp == '\r') return 1;
  if (cp < 0x20 || cp == 0x7f) return 0;
  if (cp >= 0x80 && cp < 0xa0) return 0; /* C1 controls */
  return 1;
}

int cli_is_utf8(const void* s, size_t len) {
  const unsigned char* p = s;
  uint32_t cp;
  for (size_t i = 0; i < len;) {
    size_t k = utf8_next(p + i, len - i, &cp);
    if (!k) return 0;
    i += k;
  }
  return 1;
}

int cli_is_text(const void* s, size_t len) {
  const unsigned char* p = s;
  uint32_t cp;
  for (size_t i = 0; i < len;) {
    size_t k = utf8_next(p + i, len - i, &cp);
    if (!k || !cp_printable(cp)) return 0;
    i += k;
  }
  return 1;
}

void cli_put_quoted(FILE* f, const void* s, size_t len) {
  const unsigned char* p = s;
  uint32_t cp;
  fputc('"', f);
  for (size_t i = 0; i < len;) {
    size_t k = utf8_next(p + i, len - i, &cp);
    if (!k) {
      fprintf(f, "\\x%02x", p[i]);
      i++;
      continue;
    }
    switch (cp) {
      case '"': fputs("\\\"", f); break;
      case '\\': fputs("\\\\", f); break;
      case '\n': fputs("\\n", f); break;
      case '\r': fputs("\\r", f); break;
      case '\t': fputs("\\t", f); break;
      default:
        if (cp < 0x20 || cp == 0x7f || (cp >= 0x80 && cp < 0xa0))
          fprintf(f, "\\u%04x", (unsigned)cp);
        else
          fwrite(p + i, 1, k, f);
    }
    i += k;
  }
  fputc('"', f);
}

void cli_put_hex(FILE* f, const void* p, size_t len) {
  static const char digits[] = "0123456789abcdef";
  const unsigned char* b = p;
  for (size_t i = 0; i < len; i++) {
    fputc(digits[b[i] >> 4], f);
    fputc(digits[b[i] & 15], f);
  }
}

void cli_put_time_ms(FILE* f, int64_t ms) {
  time_t secs = (time_t)(ms / 1000);
  int frac = (int)(ms % 1000);
  if (frac < 0) {
    frac += 1000;
    secs -= 1;
  }
  struct tm tm;
  char buf[64];
  if (!gmtime_r(&secs, &tm) || !strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm)) {
    fprintf(f, "%lld", (long long)ms);
    return;
  }
  fprintf(f, "%s.%03dZ", buf, frac);
}

json_t* cli_json_str(const void* s, size_t len) {
  if (cli_is_utf8(s, len)) return json_stringn(s, len);
  /* Each invalid byte becomes U+FFFD (3 bytes). */
  const unsigned char* p = s;
  char* out = malloc(len * 3 + 1);
  if (!out) return NULL;
  size_t o = 0;
  uint32_t cp;
  for (size_t i = 0; i < len;) {
    size_t k = utf8_next(p + i, len - i, &cp);
    if (!k) {
      memcpy(out + o, "\xef\xbf\xbd", 3);
      o += 3;
      i++;
    } else {
      memcpy(out + o, p + i, k);
      o += k;
      i += k;
    }
  }
  json_t* j = json_stringn(out, o);
  free(out);
  return j;
}

json_t* cli_json_base64(const void* p, size_t len) {
  static const char tab[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  const unsigned char* b = p;
  size_t olen = (len + 2) / 3 * 4;
  char* out = malloc(olen + 1);
  if (!out) return NULL;
  size_t o = 0, i = 0;
  for (; i + 3 <= len; i += 3) {
    uint32_t v = (uint32_t)b[i] << 16 | (uint32_t)b[i + 1] << 8 | b[i + 2];
    out[o++] = tab[v >> 18];
    out[o++] = tab[(v >> 12) & 63];
    out[o++] = tab[(v >> 6) & 63];
    out[o++] = tab[v & 63];
  }
  if (len - i == 1) {
    uint32_t v = (uint32_t)b[i] << 16;
    out[o++] = tab[v >> 18];
    out[o++] = tab[(v >> 12) & 63];
    out[o++] = '=';
    out[o++] = '=';
  } else if (len - i == 2) {
    uint32_t v = (uint32_t)b[i] << 16 | (uint32_t)b[i + 1] << 8;
    out[o++] = tab[v >> 18];
    out[o++] = tab[(v >> 12) & 63];
    out[o++] = tab[(v >> 6) & 63];
    out[o++] = '=';
  }
  json_t* j = json_stringn_nocheck(out, o);
  free(out);
  return j;
}

int cli_json_print(json_t* obj) {
  if (!obj) return -1;
  int rc = json_dumpf(obj, stdout, JSON_COMPACT);
  json_decref(obj);
  if (rc != 0) return -1;
  fputc('\n', stdout);
  return 0;
}

json_t* cli_msg_json(const txmq_msg_t* m, int text_if_utf8) {
  char id[TXMQ_MSG_ID_STRLEN + 1];
  json_t* o = json_object();
  json_object_set_new(o, "id", json_string(txmq_msg_id_str(m, id)));
  const char* t = txmq_msg_topic(m);
  json_object_set_new(o, "topic", cli_json_str(t ? t : "", t ? strlen(t) : 0));
  json_object_set_new(o, "qid", json_integer(txmq_msg_queue_id(m)));
  if (txmq_msg_queue_offset(m) >= 0)
    json_object_set_new(o, "qoff", json_integer(txmq_msg_queue_offset(m)));
  if (txmq_msg_tags(m))
    json_object_set_new(o, "tags", cli_json_str(txmq_msg_tags(m), strlen(txmq_msg_tags(m))));
  if (txmq_msg_keys(m))
    json_object_set_new(o, "keys", cli_json_str(txmq_msg_keys(m), strlen(txmq_msg_keys(m))));
  json_t* props = json_object();
  for (size_t i = 0; i < txmq_msg_prop_count(m); i++) {
    const char *k, *v;
    if (txmq_msg_prop_at(m, i, &k, &v) != 0) break;
    /* Keys that are not UTF-8 are shown with U+FFFD, like values. */
    json_t* jk = cli_json_str(k, strlen(k));
    if (jk) json_object_set_new(props, json_string_value(jk), cli_json_str(v, strlen(v)));
    json_decref(jk);
  }
  json_object_set_new(o, "props", props);
  json_object_set_new(o, "born_ms", json_integer(txmq_msg_born_ms(m)));
  json_object_set_new(o, "stored_ms", json_integer(txmq_msg_store_ms(m)));
  size_t blen = 0;
  const void* body = txmq_msg_body(m, &blen);
  if (!body) body = ""; /* an empty body: jansson wants a pointer */
  json_object_set_new(o, "body_len", json_integer((json_int_t)blen));
  if (text_if_utf8 ? cli_is_utf8(body, blen) : cli_is_text(body, blen)) {
    json_object_set_new(o, "body_encoding", json_string("text"));
    json_object_set_new(o, "body", json_stringn(body, blen));
  } else {
    json_object_set_new(o, "body_encoding", json_string("base64"));
    json_object_set_new(o, "body", cli_json_base64(body, blen));
  }
  return o;
}
