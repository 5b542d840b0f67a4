/*
 * txmq/msg.h - the message model shared by every part.
 *
 * A message has a topic, optional tags and keys, string properties, a body of
 * bytes and the producer's born time. The store assigns the rest when it
 * accepts the message: a msg id (16 bytes, unique, sortable by time), the
 * store time, the queue id and, once the message is visible, the queue offset.
 *
 * Messages travel as msgpack maps (see txmq_msg_encode); the same encoding
 * is used in log records and on the wire, so a message is encoded once.
 */
#ifndef TXMQ_MSG_H
#define TXMQ_MSG_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct txmq_msg_s txmq_msg_t;

#define TXMQ_MSG_ID_LEN 16
#define TXMQ_MSG_ID_STRLEN 32       /* hex, without the NUL */
#define TXMQ_NAME_MAX 127           /* topics and groups */
#define TXMQ_MSG_MAX_PROPS 64
#define TXMQ_MSG_MAX_BODY (4u * 1024u * 1024u)
#define TXMQ_MSG_MAX_FIELD 4096     /* tags, keys, each property key/value */

/* A new empty message; NULL on out of memory. Free with txmq_msg_free. */
txmq_msg_t* txmq_msg_new(void);
void txmq_msg_free(txmq_msg_t* m);
/* A deep copy; NULL on out of memory. */
txmq_msg_t* txmq_msg_clone(const txmq_msg_t* m);

/* Setters copy their arguments. NULL clears an optional field. They return
 * TXMQ_ETOOBIG over the limits above and TXMQ_EBADNAME for an invalid topic
 * (see txmq_name_valid). */
int txmq_msg_set_topic(txmq_msg_t* m, const char* topic);
int txmq_msg_set_tags(txmq_msg_t* m, const char* tags);
int txmq_msg_set_keys(txmq_msg_t* m, const char* keys);
int txmq_msg_set_body(txmq_msg_t* m, const void* body, size_t len);
int txmq_msg_prop_set(txmq_msg_t* m, const char* key, const char* value);
void txmq_msg_set_born_ms(txmq_msg_t* m, int64_t ms);
/* -1 lets the store choose (round robin); otherwise a queue of the topic. */
void txmq_msg_set_queue_id(txmq_msg_t* m, int32_t qid);

/* Getters return pointers owned by m, valid until m changes or is freed.
 * Optional strings are NULL when unset. */
const char* txmq_msg_topic(const txmq_msg_t* m);
const char* txmq_msg_tags(const txmq_msg_t* m);
const char* txmq_msg_keys(const txmq_msg_t* m);
const void* txmq_msg_body(const txmq_msg_t* m, size_t* len);
const char* txmq_msg_prop_get(const txmq_msg_t* m, const char* key);
size_t txmq_msg_prop_count(const txmq_msg_t* m);
/* The i-th property (insertion order); TXMQ_ERANGE past the end. */
int txmq_msg_prop_at(const txmq_msg_t* m, size_t i, const char** key,
                     const char** value);
int64_t txmq_msg_born_ms(const txmq_msg_t* m);
int64_t txmq_msg_store_ms(const txmq_msg_t* m);   /* 0 until stored */
int32_t txmq_msg_queue_id(const txmq_msg_t* m);   /* -1 until stored */
int64_t txmq_msg_queue_offset(const txmq_msg_t* m); /* -1 until visible */
/* 16 raw bytes (all zero until stored). */
const uint8_t* txmq_msg_id(const txmq_msg_t* m);
/* The id as 32 lowercase hex digits plus NUL into buf; returns buf. */
char* txmq_msg_id_str(const txmq_msg_t* m, char buf[TXMQ_MSG_ID_STRLEN + 1]);
/* Parses 32 hex digits into 16 bytes; TXMQ_EINVAL if malformed. */
int txmq_msg_id_parse(const char* str, uint8_t id[TXMQ_MSG_ID_LEN]);

/* Encodes m as one msgpack map into a new buffer (*buf, *len), which the
 * caller frees with free(). Keys: "id" (bin 16), "topic", "qid", "qoff",
 * "tags", "keys", "props" (map str->str), "body" (bin), "born", "stored";
 * unset optional fields are left out. */
int txmq_msg_encode(const txmq_msg_t* m, void** buf, size_t* len);
/* Decodes one msgpack map produced by txmq_msg_encode (or a client) into a
 * new message. Hostile input is expected: TXMQ_EPROTO for anything that is
 * not such a map (wrong types, trailing bytes, over the limits, invalid
 * topic), never a crash. Unknown keys are ignored for forward
 * compatibility. */
int txmq_msg_decode(const void* buf, size_t len, txmq_msg_t** out);

/* Non-zero if name is a valid topic or group name: 1..TXMQ_NAME_MAX bytes of
 * [A-Za-z0-9._-], not starting with '.'. Names become directory names. */
int txmq_name_valid(const char* name);
/* The same for the len bytes at s (not terminated; a NUL among them makes
 * it invalid), e.g. a name straight from a decoded record. */
int txmq_name_valid_n(const char* s, size_t len);

#ifdef __cplusplus
}
#endif
#endif /* TXMQ_MSG_H */
