/*
 * consumer_int.h - internals of the consumer part (core/consumer), shared by
 * its files and by nothing else. Not installed.
 *
 * It provides the parsed form of a tag filter expression: "*" or
 * "A || B || C". A parsed filter points into the expression it came from,
 * so it lives no longer than that string.
 */
#ifndef TXMQ_CONSUMER_INT_H
#define TXMQ_CONSUMER_INT_H

#include <stddef.h>
#include <stdint.h>

/* Limits of an expression, so that parsing and matching stay cheap. */
#define TXMQ__FILTER_MAX_TAGS 64
#define TXMQ__FILTER_MAX_LEN 8192

typedef struct {
  const char* s; /* into the expression, not NUL-terminated */
  size_t len;
  uint32_t hash; /* txmq__tags_hash(s, len), never 0 */
} txmq__filter_tag_t;

typedef struct {
  int all; /* "*" (or NULL): everything, also messages without tags */
  size_t n;
  txmq__filter_tag_t tags[TXMQ__FILTER_MAX_TAGS];
} txmq__filter_t;

/* Parses expr (NULL means "*"). 0, or TXMQ_EINVAL with a reason in diag
 * (if not NULL and diag_len > 0). */
int txmq__filter_parse(const char* expr, txmq__filter_t* f, char* diag,
                       size_t diag_len);
/* Whether a message whose index entry carries tags_hash may match (0 when
 * it cannot: the message need not be read). */
int txmq__filter_match_hash(const txmq__filter_t* f, uint32_t tags_hash);
/* Whether a message with these tags (NULL when it has none) matches: the
 * exact comparison that settles hash collisions. */
int txmq__filter_match(const txmq__filter_t* f, const char* tags);

#endif /* TXMQ_CONSUMER_INT_H */
