/*
 * main.c - the `txmq` command-line tool: parses the command line (GNU
 * style: options may stand anywhere, before or after the positional
 * arguments; `--` ends them) and dispatches to a subcommand.
 *
 * The offline log commands are in log_cmd.c; the commands that talk to
 * txmqd (send, tx, consume, offset, status, reload) in remote_cmd.c.
 */
#include <errno.h>
#include <getopt.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "clients/cli/cli.h"
#include "txmq/client.h"

#ifndef TXMQ_VERSION
#define TXMQ_VERSION "unknown"
#endif

#define DEFAULT_SERVER TXMQ_DEFAULT_SERVER

void cli_err(const char* fmt, ...) {
  char buf[4096];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  /* One line, whatever the message holds: scripts read the first line. */
  fputs("txmq: ", stderr);
  for (const char* p = buf; *p; p++) {
    if (*p == '\n') {
      if (p[1]) fputs("; ", stderr);
    } else {
      fputc(*p, stderr);
    }
  }
  fputc('\n', stderr);
}

static const struct {
  unsigned bit;
  const char* name;
} opt_names[] = {
    {CLI_OPT_SERVER, "--server"}, {CLI_OPT_JSON, "--json"},
    {CLI_OPT_N, "-n"},            {CLI_OPT_FROM, "--from"},
    {CLI_OPT_TAGS, "--tags"},     {CLI_OPT_KEYS, "--keys"},
    {CLI_OPT_PROP, "--prop"},     {CLI_OPT_GROUP, "--group"},
    {CLI_OPT_ARG, "--arg"},       {CLI_OPT_TIMEOUT, "--timeout"},
    {CLI_OPT_QUEUE, "--queue"},   {CLI_OPT_ROLE, "--role"},
};

int cli_check_opts(const cli_args_t* a, unsigned allowed, const char* name) {
  unsigned extra = a->seen & ~(allowed | CLI_OPTS_GLOBAL);
  for (size_t i = 0; i < sizeof opt_names / sizeof opt_names[0]; i++) {
    if (extra & opt_names[i].bit) {
      cli_err("option '%s' does not apply to '%s' (see 'txmq --help')",
              opt_names[i].name, name);
      return CLI_EXIT_USAGE;
    }
  }
  return 0;
}

int cli_parse_u64(const char* opt, const char* s, uint64_t* out) {
  const char* digits = s;
  int base = 10;
  if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
    digits = s + 2;
    base = 16;
  }
  /* strtoull accepts signs and spaces; a position or count never has them. */
  int ok = *digits != '\0';
  for (const char* p = digits; *p && ok; p++) {
    if (base == 10 ? !(*p >= '0' && *p <= '9')
                   : !strchr("0123456789abcdefABCDEF", *p))
      ok = 0;
  }
  char* end = NULL;
  unsigned long long v = 0;
  if (ok) {
    errno = 0;
    v = strtoull(digits, &end, base);
    ok = errno == 0 && *end == '\0';
  }
  if (!ok) {
    cli_err("%s '%s': expected a non-negative integer", opt, s);
    return CLI_EXIT_USAGE;
  }
  *out = v;
  return 0;
}

int cli_stdout_state(void) {
  errno = 0;
  int failed = fflush(stdout) != 0;
  int err = errno;
  if (!failed && !ferror(stdout)) return CLI_OUT_OK;
  if (failed && err == EPIPE) return CLI_OUT_CLOSED;
  /* An earlier write failed and stdio dropped what it held, with the
   * errno of the time: a pipe whose reader is gone polls POLLERR. */
  struct pollfd p = {.fd = STDOUT_FILENO, .events = POLLOUT, .revents = 0};
  if (poll(&p, 1, 0) == 1 && (p.revents & POLLERR)) return CLI_OUT_CLOSED;
  return CLI_OUT_FAILED;
}

/* --role or $TXMQ_ROLE (what names it, for the error) into a->role. */
static int parse_role(const char* what, const char* s, cli_args_t* a) {
  if (strcmp(s, "producer") == 0) a->role = TXMQ_ROLE_PRODUCER;
  else if (strcmp(s, "consumer") == 0) a->role = TXMQ_ROLE_CONSUMER;
  else if (strcmp(s, "admin") == 0) a->role = TXMQ_ROLE_ADMIN;
  else {
    cli_err("%s '%s': expected producer, consumer or admin", what, s);
    return CLI_EXIT_USAGE;
  }
  return 0;
}

static void usage(FILE* f) {
  fputs(
      "usage: txmq [--server HOST:PORT] [--role ROLE] [--json] COMMAND [ARGS]\n"
      "\n"
      "Offline commands (work on the files, no txmqd needed):\n"
      "  txmq log dump DIR [--from POS] [-n N]   print segments and records\n"
      "  txmq log verify DIR                     check every record\n"
      "\n"
      "Commands that talk to txmqd:\n"
      "  txmq send TOPIC [BODY|-] [--tags T] [--keys K] [--prop K=V]...\n"
      "      a plain message; BODY '-' reads standard input, no BODY is empty\n"
      "  txmq tx send --group G TOPIC [BODY|-] [--arg A]\n"
      "      a transaction decided by the group's script in txmqd; prints the\n"
      "      message id, the transaction id and the transaction state\n"
      "  txmq consume TOPIC --group G [--tags 'A || B'] [-n N] [--timeout S]\n"
      "               [--from earliest|latest|OFFSET]\n"
      "      one message per line, each acknowledged once printed; stops after\n"
      "      N messages or S seconds without one (default: never). --from\n"
      "      counts only for a group's first read of the topic (default\n"
      "      earliest); later reads go on from its committed offsets. OFFSET\n"
      "      is a per-queue offset applied to every queue of the topic (a\n"
      "      topic has default_queues queues, 4 unless configured)\n"
      "  txmq offset get TOPIC --group G [--queue Q]\n"
      "      the group's committed offset on each queue (Q: only that one):\n"
      "      the first message it has not acknowledged; '-' if it never read\n"
      "      the queue\n"
      "  txmq offset set TOPIC --group G --queue Q OFFSET\n"
      "      moves the group on queue Q: its next read starts at OFFSET (back\n"
      "      to read again, forward to skip); a message's queue and offset are\n"
      "      the qid and qoff of send and consume --json\n"
      "  txmq peek TOPIC [--queue Q] [--from OFFSET] [-n N]\n"
      "      the stored messages of each queue (Q: only that one) from OFFSET\n"
      "      (default: the first retained), N per queue (default 10), one per\n"
      "      line as 'qid=Q qoff=O BODY'; reads without a group: nothing is\n"
      "      consumed or moved\n"
      "  txmq topic create TOPIC QUEUES  a topic with QUEUES queues (admin; a\n"
      "                                topic a message creates has\n"
      "                                default_queues)\n"
      "  txmq topic list               topics: queues, messages, pending\n"
      "  txmq tx list [--group G] [-n N]  the N oldest pending and parked\n"
      "                                transactions (100; a cut list says so)\n"
      "  txmq tx show TXID             a transaction and its history\n"
      "  txmq tx resume TXID           a parked transaction checked again\n"
      "  txmq tx commit TXID           an operator's decision, for a parked or\n"
      "  txmq tx rollback TXID         pending transaction whose producer will\n"
      "                                never answer (admin)\n"
      "  txmq status                   the server's state and counters\n"
      "  txmq reload GROUP             load scripts/GROUP.lua again\n"
      "\n"
      "Options may stand anywhere on the line; '--' ends them.\n"
      "  --json            one JSON object per line, for scripts\n"
      "  --server H:P      txmqd address (default " DEFAULT_SERVER
      ", or $TXMQ_SERVER)\n"
      "  --role ROLE       producer, consumer or admin: the role to connect\n"
      "                    with (default $TXMQ_ROLE, else the least the command\n"
      "                    needs: consume, offset and peek consumer; tx\n"
      "                    resume|commit|rollback, reload and topic create\n"
      "                    admin; the others producer)\n"
      "                    $TXMQ_SECRET is sent as the secret when auth is on:\n"
      "                    the role's secret, or the admin secret for any role\n"
      "  -h, --help        this help; --version prints the version\n"
      "\n"
      "Exit status: 0 ok; 1 the request failed, the server could not be\n"
      "reached, or the data is corrupt; 2 usage error. Errors are one line on\n"
      "standard error. A reader that stops reading (`txmq ... | head`) ends\n"
      "the output quietly, status 0; consume leaves the message it could not\n"
      "print unacknowledged (it is delivered again).\n",
      f);
}

enum {
  LONG_SERVER = 256,
  LONG_JSON,
  LONG_FROM,
  LONG_TAGS,
  LONG_KEYS,
  LONG_PROP,
  LONG_GROUP,
  LONG_ARG,
  LONG_TIMEOUT,
  LONG_QUEUE,
  LONG_ROLE,
  LONG_VERSION
};

static const struct option long_opts[] = {
    {"server", required_argument, NULL, LONG_SERVER},
    {"json", no_argument, NULL, LONG_JSON},
    {"from", required_argument, NULL, LONG_FROM},
    {"tags", required_argument, NULL, LONG_TAGS},
    {"keys", required_argument, NULL, LONG_KEYS},
    {"prop", required_argument, NULL, LONG_PROP},
    {"group", required_argument, NULL, LONG_GROUP},
    {"arg", required_argument, NULL, LONG_ARG},
    {"timeout", required_argument, NULL, LONG_TIMEOUT},
    {"queue", required_argument, NULL, LONG_QUEUE},
    {"role", required_argument, NULL, LONG_ROLE},
    {"help", no_argument, NULL, 'h'},
    {"version", no_argument, NULL, LONG_VERSION},
    {NULL, 0, NULL, 0},
};

static const char* long_name(int val) {
  for (const struct option* o = long_opts; o->name; o++)
    if (o->val == val) return o->name;
  return "?";
}

/* The CLI_OPT_* bit of an option that takes a value and may be given once
 * (--prop may repeat), 0 for the others. */
static unsigned once_bit(int c) {
  switch (c) {
    case LONG_SERVER: return CLI_OPT_SERVER;
    case 'n': return CLI_OPT_N;
    case LONG_FROM: return CLI_OPT_FROM;
    case LONG_TAGS: return CLI_OPT_TAGS;
    case LONG_KEYS: return CLI_OPT_KEYS;
    case LONG_GROUP: return CLI_OPT_GROUP;
    case LONG_ARG: return CLI_OPT_ARG;
    case LONG_TIMEOUT: return CLI_OPT_TIMEOUT;
    case LONG_QUEUE: return CLI_OPT_QUEUE;
    case LONG_ROLE: return CLI_OPT_ROLE;
    default: return 0;
  }
}

int main(int argc, char** argv) {
  cli_args_t a;
  memset(&a, 0, sizeof a);
  a.role = CLI_ROLE_DEFAULT;
  const char* role = NULL;
  int help = 0, version = 0, rc = CLI_EXIT_USAGE;
  /* A server that closes while a request is written: an error, not death
   * by SIGPIPE. `txmq consume | head` stops on EPIPE without acknowledging
   * what it could not print. */
  signal(SIGPIPE, SIG_IGN);

  a.pos = calloc((size_t)argc + 1, sizeof *a.pos);
  a.props = calloc((size_t)argc + 1, sizeof *a.props);
  if (!a.pos || !a.props) {
    cli_err("out of memory");
    goto done;
  }

  /* "-" first: non-options come back in order as option 1, so options may
   * stand anywhere even when POSIXLY_CORRECT is set. ":" next: we print our
   * own one-line errors. */
  opterr = 0;
  int c;
  while ((c = getopt_long(argc, argv, "-:hn:", long_opts, NULL)) != -1) {
    /* Given twice is a mistake (which one was meant?), not "the last one
     * wins". */
    unsigned once = once_bit(c);
    if (once != 0 && (a.seen & once) != 0) {
      if (c == 'n')
        cli_err("option '-n' given twice");
      else
        cli_err("option '--%s' given twice", long_name(c));
      goto done;
    }
    switch (c) {
      case 1: a.pos[a.npos++] = optarg; break;
      case 'h': help = 1; break;
      case LONG_VERSION: version = 1; break;
      case LONG_SERVER: a.server = optarg; a.seen |= CLI_OPT_SERVER; break;
      case LONG_JSON: a.json = 1; a.seen |= CLI_OPT_JSON; break;
      case 'n': a.n = optarg; a.seen |= CLI_OPT_N; break;
      case LONG_FROM: a.from = optarg; a.seen |= CLI_OPT_FROM; break;
      case LONG_TAGS: a.tags = optarg; a.seen |= CLI_OPT_TAGS; break;
      case LONG_KEYS: a.keys = optarg; a.seen |= CLI_OPT_KEYS; break;
      case LONG_PROP: a.props[a.nprops++] = optarg; a.seen |= CLI_OPT_PROP; break;
      case LONG_GROUP: a.group = optarg; a.seen |= CLI_OPT_GROUP; break;
      case LONG_ARG: a.arg = optarg; a.seen |= CLI_OPT_ARG; break;
      case LONG_TIMEOUT: a.timeout = optarg; a.seen |= CLI_OPT_TIMEOUT; break;
      case LONG_QUEUE: a.queue = optarg; a.seen |= CLI_OPT_QUEUE; break;
      case LONG_ROLE: role = optarg; a.seen |= CLI_OPT_ROLE; break;
      case ':':
        if (optopt >= 256)
          cli_err("option '--%s' needs a value", long_name(optopt));
        else
          cli_err("option '-%c' needs a value", optopt);
        goto done;
      default:
        if (optopt > 0 && optopt < 256)
          cli_err("unknown option '-%c' (see 'txmq --help')", optopt);
        else
          cli_err("unknown option '%s' (see 'txmq --help')", argv[optind - 1]);
        goto done;
    }
  }
  /* Everything after "--" is positional. */
  while (optind < argc) a.pos[a.npos++] = argv[optind++];

  /* An empty --server is a mistake (an unset variable in a script), not
   * the local default; an empty TXMQ_SERVER counts as unset. */
  if (a.server && !*a.server) {
    cli_err("option '--server' is empty (HOST:PORT)");
    goto done;
  }
  if (!a.server) a.server = getenv("TXMQ_SERVER");
  if (!a.server || !*a.server) a.server = DEFAULT_SERVER;

  if (version) {
    printf("txmq %s\n", TXMQ_VERSION);
    rc = CLI_EXIT_OK;
    goto done;
  }
  if (help) {
    if (a.npos > 0 && strcmp(a.pos[0], "log") == 0)
      cli_usage_log(stdout);
    else
      usage(stdout);
    rc = CLI_EXIT_OK;
    goto done;
  }
  if (a.npos == 0) {
    cli_err("no command given (see 'txmq --help')");
    goto done;
  }

  const char* cmd = a.pos[0];
  /* The role counts for the commands that connect; the offline ones
   * ignore it, as they ignore --server. */
  if (strcmp(cmd, "log") != 0) {
    const char* env = getenv("TXMQ_ROLE");
    if (role && parse_role("--role", role, &a)) goto done;
    if (!role && env && *env && parse_role("TXMQ_ROLE", env, &a)) goto done;
  }
  if (strcmp(cmd, "log") == 0) {
    rc = cli_cmd_log(&a);
  } else if (strcmp(cmd, "send") == 0) {
    rc = cli_cmd_send(&a);
  } else if (strcmp(cmd, "tx") == 0) {
    rc = cli_cmd_tx(&a);
  } else if (strcmp(cmd, "consume") == 0) {
    rc = cli_cmd_consume(&a);
  } else if (strcmp(cmd, "offset") == 0) {
    rc = cli_cmd_offset(&a);
  } else if (strcmp(cmd, "peek") == 0) {
    rc = cli_cmd_peek(&a);
  } else if (strcmp(cmd, "topic") == 0) {
    rc = cli_cmd_topic(&a);
  } else if (strcmp(cmd, "status") == 0) {
    rc = cli_cmd_status(&a);
  } else if (strcmp(cmd, "reload") == 0) {
    rc = cli_cmd_reload(&a);
  } else {
    cli_err("unknown command '%s' (see 'txmq --help')", cmd);
  }

done:
  /* A reader that went away (`txmq log dump DIR | head`) only ends the
   * output: nothing to report, as with other Unix tools. */
  if (cli_stdout_state() == CLI_OUT_FAILED && rc == CLI_EXIT_OK) {
    cli_err("writing standard output failed");
    rc = CLI_EXIT_DATA;
  }
  free(a.pos);
  free(a.props);
  return rc;
}
