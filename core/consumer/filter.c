/*
 * filter.c - tag filter expressions of consumer groups: parsing "*" and
 * "A || B || C", and matching them against a message, first by the tags
 * hash of its index entry (no read), then exactly against its tags.
 *
 * A tag in an expression is what stands between "||" separators with the
 * surrounding blanks removed. It may not be empty, contain blanks, control
 * characters or '|', nor be "*" (which stands alone). A message has one
 * tags string; it matches when that string equals one of the tags.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "txmq/consumer.h"
#include "txmq/error.h"
#include "txmq/msg.h"
#include "consumer/consumer_int.h"
#include "store/store_int.h"

static int fail(char* diag, size_t diag_len, const char* fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int fail(char* diag, size_t diag_len, const char* fmt, ...) {
  if (diag != NULL && diag_len > 0) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(diag, diag_len, fmt, ap);
    va_end(ap);
  }
  return TXMQ_EINVAL;
}

static int blank(char c) { return c == ' ' || c == '\t'; }

int txmq__filter_parse(const char* expr, txmq__filter_t* f, char* diag,
                       size_t diag_len) {
  f->all = 0;
  f->n = 0;
  if (diag != NULL && diag_len > 0) diag[0] = '\0';
  if (expr == NULL) {
    f->all = 1;
    return 0;
  }
  size_t len = strnlen(expr, TXMQ__FILTER_MAX_LEN + 1);
  if (len > TXMQ__FILTER_MAX_LEN)
    return fail(diag, diag_len, "tag expression longer than %d bytes",
                TXMQ__FILTER_MAX_LEN);
  size_t i = 0;
  for (;;) {
    /* One tag: from i up to the next "||" or the end. */
    size_t start = i;
    while (i < len && blank(expr[i])) i++;
    size_t b = i;
    while (i < len && expr[i] != '|' && !blank(expr[i])) {
      if ((unsigned char)expr[i] < 0x20 || expr[i] == 0x7f)
        return fail(diag, diag_len,
                    "control character at byte %zu of the tag expression",
                    i);
      i++;
    }
    size_t e = i;
    while (i < len && blank(expr[i])) i++;
    if (i < len && expr[i] != '|')
      return fail(diag, diag_len,
                  "blank inside a tag at byte %zu: separate tags with "
                  "'||'", e);
    if (e == b)
      return fail(diag, diag_len,
                  "empty tag at byte %zu of the tag expression (use \"*\" "
                  "for everything)", start);
    if (e - b > TXMQ_MSG_MAX_FIELD)
      return fail(diag, diag_len, "tag at byte %zu is longer than %zu bytes",
                  b, (size_t)TXMQ_MSG_MAX_FIELD);
    if (e - b == 1 && expr[b] == '*') {
      if (f->n > 0 || i < len)
        return fail(diag, diag_len,
                    "\"*\" must stand alone in a tag expression");
      f->all = 1;
      return 0;
    }
    if (f->n == TXMQ__FILTER_MAX_TAGS)
      return fail(diag, diag_len, "more than %d tags in the expression",
                  TXMQ__FILTER_MAX_TAGS);
    f->tags[f->n].s = expr + b;
    f->tags[f->n].len = e - b;
    f->tags[f->n].hash = txmq__tags_hash(expr + b, e - b);
    f->n++;
    if (i == len) return 0;
    if (i + 1 >= len || expr[i + 1] != '|')
      return fail(diag, diag_len,
                  "single '|' at byte %zu: separate tags with '||'", i);
    i += 2; /* an empty tag after a trailing "||" is caught above */
  }
}

int txmq__filter_match_hash(const txmq__filter_t* f, uint32_t tags_hash) {
  if (f->all) return 1;
  if (tags_hash == 0) return 0; /* no tags: only "*" takes it */
  for (size_t i = 0; i < f->n; i++)
    if (f->tags[i].hash == tags_hash) return 1;
  return 0;
}

int txmq__filter_match(const txmq__filter_t* f, const char* tags) {
  if (f->all) return 1;
  if (tags == NULL) return 0;
  size_t len = strlen(tags);
  for (size_t i = 0; i < f->n; i++)
    if (f->tags[i].len == len && memcmp(f->tags[i].s, tags, len) == 0)
      return 1;
  return 0;
}

int txmq_consumers_check_filter(const char* expr, char* diag,
                                size_t diag_len) {
  txmq__filter_t f; /* NULL is "*", as in txmq_consumers_receive */
  return txmq__filter_parse(expr, &f, diag, diag_len);
}
