/*
 * cli.h - shared pieces of the `txmq` command-line tool: the parsed command
 * line, the exit codes, one-line error reporting and the text/JSON renderers
 * used by the subcommands. Internal to the tool; not installed.
 */
#ifndef TXMQ_CLI_H
#define TXMQ_CLI_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <jansson.h>

#include "txmq/msg.h"

/* Exit status of the tool (DESIGN §7: 0 on success, non-zero with a
 * one-line reason on standard error). */
enum {
  CLI_EXIT_OK = 0,
  CLI_EXIT_DATA = 1,   /* the data is damaged or unreadable */
  CLI_EXIT_FAIL = 1,   /* the server refused, or could not be reached */
  CLI_EXIT_USAGE = 2   /* bad command line, or a command not available */
};

/* Options seen on the command line, one bit each, so that a command can
 * refuse an option that does not apply to it. */
enum {
  CLI_OPT_SERVER = 1u << 0,
  CLI_OPT_JSON = 1u << 1,
  CLI_OPT_N = 1u << 2,
  CLI_OPT_FROM = 1u << 3,
  CLI_OPT_TAGS = 1u << 4,
  CLI_OPT_KEYS = 1u << 5,
  CLI_OPT_PROP = 1u << 6,
  CLI_OPT_GROUP = 1u << 7,
  CLI_OPT_ARG = 1u << 8,
  CLI_OPT_TIMEOUT = 1u << 9,
  CLI_OPT_QUEUE = 1u << 10,
  CLI_OPT_ROLE = 1u << 11
};
/* Options every command accepts. */
#define CLI_OPTS_GLOBAL (CLI_OPT_SERVER | CLI_OPT_JSON | CLI_OPT_ROLE)

/* The role a command connects with, when --role or $TXMQ_ROLE chose one:
 * the values of txmq_role_t (txmq/client.h); CLI_ROLE_DEFAULT leaves each
 * command its own, the least role its operations need. */
enum { CLI_ROLE_DEFAULT = -1 };

typedef struct {
  unsigned seen;        /* CLI_OPT_* bits */
  int json;
  const char* server;   /* --server, else $TXMQ_SERVER, else the default */
  int role;             /* --role, else $TXMQ_ROLE, else CLI_ROLE_DEFAULT */
  const char* n;        /* -n, unparsed */
  const char* from;     /* --from, unparsed */
  const char* tags;
  const char* keys;
  const char* group;
  const char* arg;
  const char* timeout;
  const char* queue;    /* --queue, unparsed */
  const char** props;   /* --prop K=V, in order */
  size_t nprops;
  char** pos;           /* positional arguments, in order */
  size_t npos;
} cli_args_t;

/* Prints "txmq: <message>\n" to stderr as one line (newlines in the message
 * become "; "). */
void cli_err(const char* fmt, ...) __attribute__((format(printf, 1, 2)));

/* Refuses options outside allowed (plus the global ones) for command name:
 * prints the reason and returns CLI_EXIT_USAGE, or returns 0. */
int cli_check_opts(const cli_args_t* a, unsigned allowed, const char* name);

/* Parses a non-negative decimal (or 0x hex) integer for option opt; prints
 * the reason and returns CLI_EXIT_USAGE if malformed. */
int cli_parse_u64(const char* opt, const char* s, uint64_t* out);

/* The state of standard output (cli_stdout_state). */
enum {
  CLI_OUT_OK = 0,
  CLI_OUT_CLOSED, /* its reader went away (EPIPE: `txmq ... | head` closed
                   * the pipe): the output ends there, which is no error */
  CLI_OUT_FAILED  /* a write failed otherwise (a full disk, an I/O error) */
};
/* Flushes standard output and tells whether what was written so far got
 * out: CLI_OUT_OK, CLI_OUT_CLOSED or CLI_OUT_FAILED. */
int cli_stdout_state(void);

/* `txmq log ...` (log_cmd.c). */
int cli_cmd_log(const cli_args_t* a);
void cli_usage_log(FILE* f);

/* The commands that talk to txmqd (remote_cmd.c): send, tx send|list|show|
 * resume, consume, offset get|set, peek, topic create|list, status,
 * reload. */
int cli_cmd_send(const cli_args_t* a);
int cli_cmd_tx(const cli_args_t* a);
int cli_cmd_consume(const cli_args_t* a);
int cli_cmd_offset(const cli_args_t* a);
int cli_cmd_peek(const cli_args_t* a);
int cli_cmd_topic(const cli_args_t* a);
int cli_cmd_status(const cli_args_t* a);
int cli_cmd_reload(const cli_args_t* a);

/* ---- renderers (render.c) ---- */

/* Non-zero if s[0..len) is valid UTF-8 without control characters other
 * than tab, newline and carriage return: what the tool shows as text. */
int cli_is_text(const void* s, size_t len);
/* Non-zero if s[0..len) is valid UTF-8 (any code points). */
int cli_is_utf8(const void* s, size_t len);

/* Writes s[0..len) as a double-quoted string with JSON-style escapes; bytes
 * that are not valid UTF-8 are written as \xNN. */
void cli_put_quoted(FILE* f, const void* s, size_t len);
/* Writes len bytes as lowercase hex. */
void cli_put_hex(FILE* f, const void* p, size_t len);
/* Writes milliseconds since the epoch as 2006-01-02T15:04:05.000Z. */
void cli_put_time_ms(FILE* f, int64_t ms);

/* A new JSON string for s[0..len): the text itself when it is valid UTF-8,
 * else with each invalid byte replaced by U+FFFD. NULL on out of memory. */
json_t* cli_json_str(const void* s, size_t len);
/* A new JSON string holding the base64 (RFC 4648, padded) of p[0..len). */
json_t* cli_json_base64(const void* p, size_t len);
/* A new JSON object for message m, the schema of `log dump --json`: id,
 * topic, qid, qoff (if visible), tags, keys, props, born_ms, stored_ms,
 * body_len, body_encoding ("text" or "base64") and body. The body is text
 * when it is printable UTF-8, or with text_if_utf8 whenever it is valid
 * UTF-8. */
json_t* cli_msg_json(const txmq_msg_t* m, int text_if_utf8);
/* Prints obj compactly on one line to stdout and releases it. Returns 0, or
 * -1 if it could not be encoded (out of memory). */
int cli_json_print(json_t* obj);

#endif /* TXMQ_CLI_H */
