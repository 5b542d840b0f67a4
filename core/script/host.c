/*
 * host.c - the Lua handler host of txmq/script.h: groups, script versions,
 * the worker pool, hot reload and the file watch.
 *
 * Provides the public txmq_script_* API. Every function runs on the loop
 * thread; handler calls, script builds and the closing of old states run
 * on the host's own worker threads (uv_thread_t), which take work from a
 * queue under one mutex and post results back with a uv_async_t.
 *
 * A group record (loop thread only) points at its current version. A
 * version holds STATES_PER_GROUP Lua states and a reference count: one for
 * being current, one per call queued or running on it. A call takes a
 * reference when it is submitted, so calls already queued or running finish
 * on the version they started with while new calls go to the new one; the
 * last reference to a replaced version sends its states to a worker to be
 * closed. Versions with queued calls and a free state wait in a run queue,
 * round robin, so a group whose states are all busy (a runaway handler)
 * never holds a worker that another group could use.
 *
 * A reload builds the new version on a worker (read, hash, build each state
 * under the load budget), then swaps on the loop: build, validate, swap,
 * never stop the world. A reload while one of the same group is building is
 * refused with TXMQ_EBUSY; a failed build keeps the old version.
 *
 * It does not: decide transactions (tx) or speak to the network (net).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <uv.h>

#include "common/pool.h"
#include "script_int.h"
#include "txmq/error.h"

#define DIAG_MAX 512
#define SCRIPT_MAX_BYTES (16u * 1024u * 1024u)
#define DEBOUNCE_MS 50
#define WORKER_STACK (8u * 1024u * 1024u)

typedef struct job_s job_t;
typedef struct version_s version_t;
typedef struct group_s group_t;

enum { JOB_CALL = 1, JOB_BUILD, JOB_DESTROY };

struct version_s {
  group_t* group;
  char id[TXMQ_SCRIPT_VERSION_LEN + 1];
  int refs;                    /* loop thread only */
  txmq__lstate_t** states;
  size_t n_states;
  /* Under host->mu: */
  txmq__lstate_t** free_states;
  size_t n_free;
  job_t* jq_head;
  job_t* jq_tail;
  int in_runq;
  version_t* runq_next;
  /* All live versions, for close (loop thread only). */
  version_t* all_prev;
  version_t* all_next;
};

struct group_s {
  char* name;
  char* path;
  version_t* current;
  /* The current version's id, kept here so that the pointer returned by
   * txmq_script_version stays valid for the host's life. */
  char cur_id[TXMQ_SCRIPT_VERSION_LEN + 1];
  int building;
  int dirty;
  job_t* wait_head;            /* calls waiting for the first load */
  job_t* wait_tail;
  txmq_script_reload_cb rcb;
  void* rarg;
  txmq_script_stats_t stats;
  group_t* next;
};

struct job_s {
  int kind;
  job_t* next;
  group_t* group;
  /* JOB_CALL */
  version_t* version;
  int check;
  int has_tx;
  uint8_t tx_id[16];
  txmq_msg_t** msgs;   /* &msg1 for one message */
  txmq_msg_t* msg1;
  size_t n;
  void* arg;
  size_t arg_len;
  uint32_t check_count;
  int64_t budget_ms;
  txmq_script_call_cb cb;
  void* cbarg;
  int status;
  txmq_script_result_t result;
  /* JOB_BUILD */
  char* path;
  char skip[TXMQ_SCRIPT_VERSION_LEN + 1];
  char ver[TXMQ_SCRIPT_VERSION_LEN + 1];
  int unchanged;
  size_t n_states;
  size_t mem_limit;
  int64_t load_budget_ms;
  version_t* built;
  /* JOB_DESTROY */
  version_t* victim;
  char diag[DIAG_MAX];
};

struct txmq_script_host_s {
  uv_loop_t* loop;
  char* dir;
  int n_workers;
  int states_per_group;
  size_t mem_limit;
  int64_t call_budget_ms;
  int64_t load_budget_ms;
  int watch;
  char** allow;
  size_t n_allow;
  txmq__hostfn_t* fns;
  size_t n_fns;
  txmq__script_logger_t log;   /* fixed once the workers run */
  txmq_script_loaded_cb loaded_cb;
  void* loaded_arg;
  group_t* groups;
  version_t* versions;         /* every live version */

  uv_thread_t* threads;
  int n_threads;
  uv_mutex_t mu;
  uv_cond_t cond;
  job_t* tq_head;              /* builds and destroys */
  job_t* tq_tail;
  version_t* rq_head;          /* versions with queued calls and a free state */
  version_t* rq_tail;
  job_t* dq_head;              /* finished, for the loop */
  job_t* dq_tail;
  int exited;                  /* workers that have left */
  int stopping;

  txmq__pool_t job_pool;       /* calls and builds (loop thread only) */

  uv_async_t async;
  uv_timer_t debounce;
  uv_fs_event_t fsw;
  int fsw_init;
  int started;
  int closing;
  int final_phase;
  int handles_open;
  void (*close_cb)(txmq_script_host_t* host, void* arg);
  void* close_arg;
};

/* ---- small helpers ------------------------------------------------------ */

static char* dupstr(const char* s) {
  size_t n = strlen(s) + 1;
  char* d = malloc(n);
  if (d != NULL) memcpy(d, s, n);
  return d;
}

static void fnv1a_hex(const void* buf, size_t len, char out[17]) {
  uint64_t h = 0xcbf29ce484222325ull;
  const uint8_t* p = buf;
  for (size_t i = 0; i < len; i++) {
    h ^= p[i];
    h *= 0x100000001b3ull;
  }
  snprintf(out, 17, "%016" PRIx64, h);
}

static void jq_push(job_t** head, job_t** tail, job_t* j) {
  j->next = NULL;
  if (*tail != NULL) (*tail)->next = j;
  else *head = j;
  *tail = j;
}

static job_t* jq_pop(job_t** head, job_t** tail) {
  job_t* j = *head;
  if (j != NULL) {
    *head = j->next;
    if (*head == NULL) *tail = NULL;
    j->next = NULL;
  }
  return j;
}

/* Under mu. */
static void rq_push(txmq_script_host_t* h, version_t* v) {
  v->in_runq = 1;
  v->runq_next = NULL;
  if (h->rq_tail != NULL) h->rq_tail->runq_next = v;
  else h->rq_head = v;
  h->rq_tail = v;
}

static version_t* rq_pop(txmq_script_host_t* h) {
  version_t* v = h->rq_head;
  if (v != NULL) {
    h->rq_head = v->runq_next;
    if (h->rq_head == NULL) h->rq_tail = NULL;
    v->in_runq = 0;
    v->runq_next = NULL;
  }
  return v;
}

/* Calls and builds are made and ended on the loop, through the pool;
 * JOB_DESTROY jobs are freed by the worker that runs them (free()). */
static void job_free(txmq_script_host_t* h, job_t* j) {
  if (j == NULL) return;
  for (size_t i = 0; i < j->n; i++) txmq_msg_free(j->msgs[i]);
  if (j->msgs != &j->msg1) free(j->msgs);
  free(j->arg);
  free(j->path);
  txmq__pool_put(&h->job_pool, j);
}

static group_t* group_find(txmq_script_host_t* h, const char* name) {
  for (group_t* g = h->groups; g != NULL; g = g->next) {
    if (strcmp(g->name, name) == 0) return g;
  }
  return NULL;
}

static char* script_path(txmq_script_host_t* h, const char* name) {
  size_t n = strlen(h->dir) + strlen(name) + 6;
  char* p = malloc(n);
  if (p != NULL) snprintf(p, n, "%s/%s.lua", h->dir, name);
  return p;
}

static group_t* group_get(txmq_script_host_t* h, const char* name) {
  group_t* g = group_find(h, name);
  if (g != NULL) return g;
  g = calloc(1, sizeof *g);
  if (g == NULL) return NULL;
  g->name = dupstr(name);
  g->path = script_path(h, name);
  if (g->name == NULL || g->path == NULL) {
    free(g->name);
    free(g->path);
    free(g);
    return NULL;
  }
  g->next = h->groups;
  h->groups = g;
  return g;
}

/* Unlinks and frees a group that has no version and nothing waiting. */
static void group_drop(txmq_script_host_t* h, group_t* g) {
  group_t** p = &h->groups;
  while (*p != NULL && *p != g) p = &(*p)->next;
  if (*p == g) *p = g->next;
  free(g->name);
  free(g->path);
  free(g);
}

/* ---- versions ----------------------------------------------------------- */

static void version_destroy(version_t* v) {
  for (size_t i = 0; i < v->n_states; i++) txmq__lstate_free(v->states[i]);
  free(v->states);
  free(v->free_states);
  free(v);
}

static void version_unlink(txmq_script_host_t* h, version_t* v) {
  if (v->all_prev != NULL) v->all_prev->all_next = v->all_next;
  else h->versions = v->all_next;
  if (v->all_next != NULL) v->all_next->all_prev = v->all_prev;
  v->all_prev = v->all_next = NULL;
}

static void version_unref(txmq_script_host_t* h, version_t* v) {
  if (v == NULL || --v->refs > 0) return;
  version_unlink(h, v);
  /* Closing a big state takes a while: a worker does it, unless the
   * workers are going away. */
  if (!h->stopping && h->n_threads > 0) {
    job_t* j = calloc(1, sizeof *j);
    if (j != NULL) {
      j->kind = JOB_DESTROY;
      j->victim = v;
      uv_mutex_lock(&h->mu);
      jq_push(&h->tq_head, &h->tq_tail, j);
      uv_cond_signal(&h->cond);
      uv_mutex_unlock(&h->mu);
      return;
    }
  }
  version_destroy(v);
}

/* Queues a call on v (loop thread). */
static void dispatch(txmq_script_host_t* h, version_t* v, job_t* j) {
  j->version = v;
  v->refs++;
  uv_mutex_lock(&h->mu);
  jq_push(&v->jq_head, &v->jq_tail, j);
  if (v->n_free > 0 && !v->in_runq) {
    rq_push(h, v);
    uv_cond_signal(&h->cond);
  }
  uv_mutex_unlock(&h->mu);
}

/* ---- workers ------------------------------------------------------------ */

static void run_call(job_t* j, txmq__lstate_t* S) {
  txmq__lcall_t c;
  c.check = j->check;
  c.tx_id = j->has_tx ? j->tx_id : NULL;
  c.msgs = (const txmq_msg_t* const*)j->msgs;
  c.n = j->n;
  c.arg = j->arg;
  c.arg_len = j->arg_len;
  c.check_count = j->check_count;
  c.budget_ms = j->budget_ms;
  j->status = txmq__lstate_call(S, &c, &j->result, j->diag, sizeof j->diag);
}

static int read_file(const char* path, char** out, size_t* len, char* diag,
                     size_t dn) {
  FILE* f = fopen(path, "rb");
  if (f == NULL) {
    int e = errno;
    snprintf(diag, dn, "%s: %s", path, strerror(e));
    return e == ENOENT ? TXMQ_ENOTFOUND : txmq_err_from_errno(e);
  }
  size_t cap = 4096, n = 0;
  char* buf = malloc(cap);
  int rc = 0;
  while (buf != NULL) {
    if (n == cap) {
      if (cap >= SCRIPT_MAX_BYTES) {
        snprintf(diag, dn, "%s: larger than %u bytes", path, SCRIPT_MAX_BYTES);
        rc = TXMQ_ETOOBIG;
        break;
      }
      char* nb = realloc(buf, cap * 2);
      if (nb == NULL) break;
      buf = nb;
      cap *= 2;
    }
    size_t r = fread(buf + n, 1, cap - n, f);
    n += r;
    if (r == 0) {
      if (ferror(f)) {
        snprintf(diag, dn, "%s: read error", path);
        rc = TXMQ_EIO;
      }
      break;
    }
  }
  fclose(f);
  if (buf == NULL) {
    snprintf(diag, dn, "%s: out of memory", path);
    return TXMQ_ENOMEM;
  }
  if (rc != 0) {
    free(buf);
    return rc;
  }
  *out = buf;
  *len = n;
  return 0;
}

static void run_build(txmq_script_host_t* h, job_t* j) {
  char* src = NULL;
  size_t len = 0;
  j->status = read_file(j->path, &src, &len, j->diag, sizeof j->diag);
  if (j->status != 0) return;
  fnv1a_hex(src, len, j->ver);
  if (j->skip[0] != '\0' && strcmp(j->skip, j->ver) == 0) {
    j->unchanged = 1;
    free(src);
    return;
  }
  version_t* v = calloc(1, sizeof *v);
  if (v != NULL) {
    v->states = calloc(j->n_states, sizeof *v->states);
    v->free_states = calloc(j->n_states, sizeof *v->free_states);
  }
  if (v == NULL || v->states == NULL || v->free_states == NULL) {
    if (v != NULL) version_destroy(v);
    free(src);
    snprintf(j->diag, sizeof j->diag, "%s: out of memory", j->path);
    j->status = TXMQ_ENOMEM;
    return;
  }
  memcpy(v->id, j->ver, sizeof v->id);
  txmq__lstate_conf_t conf = {
      .group = j->group->name,
      .path = j->path,
      .version = j->ver,
      .src = src,
      .src_len = len,
      .mem_limit = j->mem_limit,
      .load_budget_ms = j->load_budget_ms,
      .allow = (const char* const*)h->allow,
      .n_allow = h->n_allow,
      .fns = h->fns,
      .n_fns = h->n_fns,
      .log = h->log,
  };
  for (size_t i = 0; i < j->n_states; i++) {
    j->status = txmq__lstate_new(&conf, &v->states[i], j->diag, sizeof j->diag);
    if (j->status != 0) break;
    v->n_states++;
  }
  free(src);
  if (j->status != 0) {
    version_destroy(v);
    return;
  }
  for (size_t i = 0; i < v->n_states; i++) v->free_states[i] = v->states[i];
  v->n_free = v->n_states;
  j->built = v;
}

/* A call shorter than this lets its worker go on with the next queued call
 * of the same version on the same state, when no other version or task is
 * waiting: no hand-off through the run queue, no wake-up. A longer call
 * gives the state back, so another group never waits more than one call. */
#define QUICK_CALL_NS 1000000u

static void worker(void* arg) {
  txmq_script_host_t* h = arg;
  uv_mutex_lock(&h->mu);
  for (;;) {
    job_t* j = NULL;
    version_t* v = NULL;
    txmq__lstate_t* S = NULL;
    if (h->tq_head != NULL) {
      j = jq_pop(&h->tq_head, &h->tq_tail);
    } else if (h->rq_head != NULL) {
      v = rq_pop(h);
      j = jq_pop(&v->jq_head, &v->jq_tail);
      S = v->free_states[--v->n_free];
      if (v->jq_head != NULL && v->n_free > 0) {
        rq_push(h, v);
        uv_cond_signal(&h->cond);
      }
    } else if (h->stopping) {
      break;
    } else {
      uv_cond_wait(&h->cond, &h->mu);
      continue;
    }
    uv_mutex_unlock(&h->mu);

    for (;;) {
      uint64_t t0 = uv_hrtime();
      if (j->kind == JOB_CALL) {
        run_call(j, S);
      } else if (j->kind == JOB_BUILD) {
        run_build(h, j);
      } else {
        version_destroy(j->victim);
        free(j);
        j = NULL;
      }
      int quick = uv_hrtime() - t0 < QUICK_CALL_NS;

      uv_mutex_lock(&h->mu);
      /* The loop drains the whole done queue on each wake-up, so only the
       * push that makes it non-empty needs to wake it. */
      int wake = 0;
      if (j != NULL) {
        wake = h->dq_head == NULL;
        jq_push(&h->dq_head, &h->dq_tail, j);
      }
      job_t* next = NULL;
      if (S != NULL && quick && v->jq_head != NULL && h->rq_head == NULL &&
          h->tq_head == NULL && !h->stopping) {
        next = jq_pop(&v->jq_head, &v->jq_tail);
      }
      if (next == NULL && S != NULL) {
        v->free_states[v->n_free++] = S;
        if (v->jq_head != NULL && !v->in_runq) {
          rq_push(h, v);
          uv_cond_signal(&h->cond);
        }
      }
      if (wake) {
        uv_mutex_unlock(&h->mu);
        uv_async_send(&h->async);
        uv_mutex_lock(&h->mu);
      }
      if (next == NULL) break; /* back to the queues, holding the lock */
      j = next;
      uv_mutex_unlock(&h->mu);
    }
  }
  h->exited++;
  uv_mutex_unlock(&h->mu);
  uv_async_send(&h->async);
}

/* ---- completions on the loop -------------------------------------------- */

static void finish_call(txmq_script_host_t* h, job_t* j) {
  group_t* g = j->group;
  if (j->status != TXMQ_ECLOSED) {
    g->stats.calls++;
    switch (j->status) {
      case 0: break;
      case TXMQ_ETIMEDOUT: g->stats.timeouts++; break;
      case TXMQ_ENOMEM: g->stats.oom++; break;
      default: g->stats.failures++; break;
    }
  }
  if (j->status != 0) j->result = TXMQ_SCRIPT_UNKNOWN;
  const char* ver = j->version != NULL ? j->version->id : "";
  j->cb(h, j->status, j->result, ver, j->diag, j->cbarg);
  version_unref(h, j->version);
  job_free(h, j);
}

/* Fails a call that never reached a version. */
static void fail_call(txmq_script_host_t* h, job_t* j, int status,
                      const char* diag) {
  j->status = status;
  snprintf(j->diag, sizeof j->diag, "%s", diag);
  finish_call(h, j);
}

static void start_debounce(txmq_script_host_t* h);

static void finish_build(txmq_script_host_t* h, job_t* j) {
  group_t* g = j->group;
  g->building = 0;
  int status = j->status;
  if (h->closing) {
    if (j->built != NULL) version_destroy(j->built);
    j->built = NULL;
    status = TXMQ_ECLOSED;
    snprintf(j->diag, sizeof j->diag, "the script host is closing");
  }
  const char* reported = j->ver;
  /* The version that served before this load, for the loaded callback:
   * the replaced one may be freed below. */
  char prev[TXMQ_SCRIPT_VERSION_LEN + 1] = "";
  int had_prev = g->current != NULL;
  if (had_prev) memcpy(prev, g->current->id, sizeof prev);
  if (status == 0 && !j->unchanged) {
    version_t* v = j->built;
    v->group = g;
    v->refs = 1;
    v->all_next = h->versions;
    if (h->versions != NULL) h->versions->all_prev = v;
    h->versions = v;
    version_t* old = g->current;
    g->current = v;
    memcpy(g->cur_id, v->id, sizeof g->cur_id);
    g->stats.reloads++;
    char msg[DIAG_MAX + 64];
    snprintf(msg, sizeof msg, "loaded %s%s%s", g->path, old ? ", replacing " : "",
             old ? old->id : "");
    txmq__script_log(&h->log, g->name, v->id, TXMQ_SCRIPT_LOG_INFO, msg);
    if (old != NULL) version_unref(h, old);
  } else if (status == 0) {
    reported = g->current != NULL ? g->current->id : j->ver;
  } else if (status != TXMQ_ECLOSED) {
    g->stats.reload_failures++;
    char msg[DIAG_MAX + 64];
    snprintf(msg, sizeof msg, "load failed, %s%s: %s",
             g->current ? "keeping version " : "no version loaded",
             g->current ? g->current->id : "", j->diag);
    txmq__script_log(&h->log, g->name, j->ver, TXMQ_SCRIPT_LOG_ERROR, msg);
  }
  /* Calls that waited for the first load. */
  job_t* w;
  while ((w = jq_pop(&g->wait_head, &g->wait_tail)) != NULL) {
    if (g->current != NULL && !h->closing) {
      dispatch(h, g->current, w);
    } else {
      fail_call(h, w, status != 0 ? status : TXMQ_ESCRIPT, j->diag);
    }
  }
  /* Taken before the loaded callback runs: it may start the next reload. */
  txmq_script_reload_cb cb = g->rcb;
  void* arg = g->rarg;
  g->rcb = NULL;
  g->rarg = NULL;
  /* A watch event that left the bytes as they were loaded nothing. */
  if (h->loaded_cb != NULL && status != TXMQ_ECLOSED && !j->unchanged) {
    const char* ver = status == 0 ? g->cur_id : j->ver[0] ? j->ver : NULL;
    h->loaded_cb(h, status, g->name, ver, had_prev ? prev : NULL,
                 status == 0 ? "" : j->diag, h->loaded_arg);
  }
  if (cb != NULL) {
    cb(h, status, g->name, reported, status == 0 ? "" : j->diag, arg);
  }
  if (g->dirty && !h->closing) start_debounce(h);
  job_free(h, j);
  /* A name without a script leaves nothing behind: reloads and calls name
   * groups that come from the wire, and a record kept for every name asked
   * would grow without bound. */
  if (status == TXMQ_ENOTFOUND && g->current == NULL && !g->building &&
      g->wait_head == NULL)
    group_drop(h, g);
}

static void on_handle_closed(uv_handle_t* hd) {
  txmq_script_host_t* h = hd->data;
  if (--h->handles_open == 0 && h->close_cb != NULL) {
    h->close_cb(h, h->close_arg);
  }
}

static void final_phase(txmq_script_host_t* h) {
  h->final_phase = 1;
  for (int i = 0; i < h->n_threads; i++) uv_thread_join(&h->threads[i]);
  h->n_threads = 0;
  /* Work the workers never took (the host was never started). */
  job_t* t;
  while ((t = jq_pop(&h->tq_head, &h->tq_tail)) != NULL) {
    if (t->kind == JOB_BUILD) {
      t->status = TXMQ_ECLOSED;
      finish_build(h, t);
    } else {
      version_destroy(t->victim);
      free(t);
    }
  }
  for (group_t* g = h->groups; g != NULL; g = g->next) {
    version_t* v = g->current;
    g->current = NULL;
    version_unref(h, v);
  }
  /* Versions still referenced would mean a call never completed. */
  while (h->versions != NULL) {
    version_t* v = h->versions;
    version_unlink(h, v);
    version_destroy(v);
  }
  h->handles_open = 2 + (h->fsw_init ? 1 : 0);
  uv_close((uv_handle_t*)&h->async, on_handle_closed);
  uv_close((uv_handle_t*)&h->debounce, on_handle_closed);
  if (h->fsw_init) uv_close((uv_handle_t*)&h->fsw, on_handle_closed);
}

static void on_async(uv_async_t* a) {
  txmq_script_host_t* h = a->data;
  if (h->final_phase) return;
  uv_mutex_lock(&h->mu);
  job_t* list = h->dq_head;
  h->dq_head = h->dq_tail = NULL;
  int exited = h->exited;
  uv_mutex_unlock(&h->mu);
  while (list != NULL) {
    job_t* j = list;
    list = j->next;
    j->next = NULL;
    if (j->kind == JOB_CALL) finish_call(h, j);
    else finish_build(h, j);
  }
  if (h->closing && !h->final_phase && exited == h->n_threads) {
    uv_mutex_lock(&h->mu);
    int empty = h->dq_head == NULL;
    uv_mutex_unlock(&h->mu);
    if (empty) final_phase(h);
    else uv_async_send(&h->async);
  }
}

/* ---- builds and the watch ----------------------------------------------- */

static int start_build(txmq_script_host_t* h, group_t* g,
                       txmq_script_reload_cb cb, void* arg, int skip_unchanged) {
  job_t* j = txmq__pool_get(&h->job_pool);
  if (j == NULL) return TXMQ_ENOMEM;
  j->kind = JOB_BUILD;
  j->group = g;
  j->path = dupstr(g->path);
  if (j->path == NULL) {
    txmq__pool_put(&h->job_pool, j);
    return TXMQ_ENOMEM;
  }
  if (skip_unchanged && g->current != NULL) {
    memcpy(j->skip, g->current->id, sizeof j->skip);
  }
  j->n_states = (size_t)h->states_per_group;
  j->mem_limit = h->mem_limit;
  j->load_budget_ms = h->load_budget_ms;
  g->building = 1;
  g->rcb = cb;
  g->rarg = arg;
  uv_mutex_lock(&h->mu);
  jq_push(&h->tq_head, &h->tq_tail, j);
  uv_cond_signal(&h->cond);
  uv_mutex_unlock(&h->mu);
  return 0;
}

static void on_debounce(uv_timer_t* t) {
  txmq_script_host_t* h = t->data;
  if (h->closing) return;
  for (group_t* g = h->groups; g != NULL; g = g->next) {
    if (!g->dirty || g->building) continue;
    g->dirty = 0;
    start_build(h, g, NULL, NULL, 1);
  }
}

static void start_debounce(txmq_script_host_t* h) {
  /* Restarting the timer on every event waits for the writes to settle. */
  uv_timer_start(&h->debounce, on_debounce, DEBOUNCE_MS, 0);
}

static void on_fs_event(uv_fs_event_t* w, const char* filename, int events,
                        int status) {
  (void)events;
  txmq_script_host_t* h = w->data;
  if (status < 0 || h->closing) return;
  int any = 0;
  if (filename == NULL) {
    for (group_t* g = h->groups; g != NULL; g = g->next) {
      if (g->current != NULL || g->building) g->dirty = any = 1;
    }
  } else {
    size_t n = strlen(filename);
    if (n <= 4 || strcmp(filename + n - 4, ".lua") != 0 || n - 4 > TXMQ_NAME_MAX) {
      return;
    }
    char name[TXMQ_NAME_MAX + 1];
    memcpy(name, filename, n - 4);
    name[n - 4] = '\0';
    group_t* g = group_find(h, name);
    if (g != NULL && (g->current != NULL || g->building)) g->dirty = any = 1;
  }
  if (any) start_debounce(h);
}

/* ---- public API --------------------------------------------------------- */

int txmq_script_host_new(txmq_script_host_t** out, uv_loop_t* loop,
                         const char* scripts_dir) {
  if (out == NULL || loop == NULL || scripts_dir == NULL) return TXMQ_EINVAL;
  txmq_script_host_t* h = calloc(1, sizeof *h);
  if (h == NULL) return TXMQ_ENOMEM;
  h->loop = loop;
  txmq__pool_init(&h->job_pool, sizeof(job_t), 1024);
  h->dir = dupstr(scripts_dir);
  if (h->dir == NULL) {
    free(h);
    return TXMQ_ENOMEM;
  }
  h->n_workers = 2;
  h->states_per_group = 1;
  h->mem_limit = 64u * 1024u * 1024u;
  h->call_budget_ms = 1000;
  h->load_budget_ms = 200;
  h->watch = 1;
  if (uv_mutex_init(&h->mu) != 0) {
    free(h->dir);
    free(h);
    return TXMQ_ENOMEM;
  }
  if (uv_cond_init(&h->cond) != 0) {
    uv_mutex_destroy(&h->mu);
    free(h->dir);
    free(h);
    return TXMQ_ENOMEM;
  }
  uv_async_init(loop, &h->async, on_async);
  h->async.data = h;
  uv_timer_init(loop, &h->debounce);
  h->debounce.data = h;
  *out = h;
  return 0;
}

int txmq_script_host_set(txmq_script_host_t* h, txmq_script_opt_t opt,
                         int64_t value) {
  if (h == NULL) return TXMQ_EINVAL;
  switch (opt) {
    case TXMQ_SCRIPT_OPT_WORKERS:
      if (h->started || value < 1 || value > 256) return TXMQ_EINVAL;
      h->n_workers = (int)value;
      return 0;
    case TXMQ_SCRIPT_OPT_STATES_PER_GROUP:
      if (value < 1 || value > 256) return TXMQ_EINVAL;
      h->states_per_group = (int)value;
      return 0;
    case TXMQ_SCRIPT_OPT_MEMORY_LIMIT:
      if (value < 256 * 1024) return TXMQ_EINVAL;
      h->mem_limit = (size_t)value;
      return 0;
    case TXMQ_SCRIPT_OPT_CALL_BUDGET_MS:
      if (value < 1) return TXMQ_EINVAL;
      h->call_budget_ms = value;
      return 0;
    case TXMQ_SCRIPT_OPT_LOAD_BUDGET_MS:
      if (value < 1) return TXMQ_EINVAL;
      h->load_budget_ms = value;
      return 0;
    case TXMQ_SCRIPT_OPT_WATCH:
      if (h->started) return TXMQ_EINVAL;
      h->watch = value != 0;
      return 0;
  }
  return TXMQ_EINVAL;
}

int txmq_script_allow_path(txmq_script_host_t* h, const char* pattern) {
  if (h == NULL || pattern == NULL || strchr(pattern, '?') == NULL ||
      h->started) {
    return TXMQ_EINVAL;
  }
  char** a = realloc(h->allow, (h->n_allow + 1) * sizeof *a);
  if (a == NULL) return TXMQ_ENOMEM;
  h->allow = a;
  if ((a[h->n_allow] = dupstr(pattern)) == NULL) return TXMQ_ENOMEM;
  h->n_allow++;
  return 0;
}

static int valid_ident(const char* s) {
  if (s == NULL || *s == '\0' || strlen(s) > 64) return 0;
  if (*s >= '0' && *s <= '9') return 0;
  for (; *s; s++) {
    char c = *s;
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
          (c >= '0' && c <= '9') || c == '_')) {
      return 0;
    }
  }
  return 1;
}

int txmq_script_register(txmq_script_host_t* h, const char* name,
                         lua_CFunction fn, void* arg) {
  if (h == NULL || fn == NULL || !valid_ident(name) || h->started) {
    return TXMQ_EINVAL;
  }
  for (size_t i = 0; i < h->n_fns; i++) {
    if (strcmp(h->fns[i].name, name) == 0) return TXMQ_EEXIST;
  }
  txmq__hostfn_t* f = realloc(h->fns, (h->n_fns + 1) * sizeof *f);
  if (f == NULL) return TXMQ_ENOMEM;
  h->fns = f;
  char* n = dupstr(name);
  if (n == NULL) return TXMQ_ENOMEM;
  f[h->n_fns].name = n;
  f[h->n_fns].fn = fn;
  f[h->n_fns].arg = arg;
  h->n_fns++;
  return 0;
}

int txmq_script_set_log_cb(txmq_script_host_t* h, txmq_script_log_cb cb,
                           void* arg) {
  /* Workers copy the logger into every state they build, without a lock:
   * it may change only while there are none. */
  if (h == NULL || h->started) return TXMQ_EINVAL;
  h->log.cb = cb;
  h->log.arg = arg;
  return 0;
}

int txmq_script_set_loaded_cb(txmq_script_host_t* h,
                              txmq_script_loaded_cb cb, void* arg) {
  if (h == NULL) return TXMQ_EINVAL;
  h->loaded_cb = cb;
  h->loaded_arg = arg;
  return 0;
}

int txmq_script_host_start(txmq_script_host_t* h) {
  if (h == NULL || h->started || h->closing) return TXMQ_EINVAL;
  if (h->watch) {
    int rc = uv_fs_event_init(h->loop, &h->fsw);
    if (rc != 0) return txmq_err_from_errno(-rc);
    h->fsw_init = 1;
    h->fsw.data = h;
    rc = uv_fs_event_start(&h->fsw, on_fs_event, h->dir, 0);
    if (rc != 0) return txmq_err_from_errno(-rc);
  }
  h->threads = calloc((size_t)h->n_workers, sizeof *h->threads);
  if (h->threads == NULL) return TXMQ_ENOMEM;
  uv_thread_options_t o;
  o.flags = UV_THREAD_HAS_STACK_SIZE;
  o.stack_size = WORKER_STACK;
  for (int i = 0; i < h->n_workers; i++) {
    int rc = uv_thread_create_ex(&h->threads[i], &o, worker, h);
    if (rc != 0) {
      if (h->n_threads == 0) return txmq_err_from_errno(-rc);
      break; /* fewer workers than asked, but working */
    }
    h->n_threads++;
  }
  h->started = 1;
  return 0;
}

int txmq_script_reload(txmq_script_host_t* h, const char* group,
                       txmq_script_reload_cb cb, void* arg) {
  if (h == NULL || group == NULL) return TXMQ_EINVAL;
  if (h->closing) return TXMQ_ECLOSED;
  if (!txmq_name_valid(group)) return TXMQ_EBADNAME;
  group_t* g = group_get(h, group);
  if (g == NULL) return TXMQ_ENOMEM;
  if (g->building) return TXMQ_EBUSY;
  return start_build(h, g, cb, arg, 0);
}

int txmq_script_has_group(txmq_script_host_t* h, const char* group) {
  if (h == NULL || group == NULL || !txmq_name_valid(group)) return 0;
  group_t* g = group_find(h, group);
  if (g != NULL && g->current != NULL) return 1;
  char* p = script_path(h, group);
  if (p == NULL) return 0;
  int yes = access(p, R_OK) == 0;
  free(p);
  return yes;
}

const char* txmq_script_version(txmq_script_host_t* h, const char* group) {
  if (h == NULL || group == NULL) return NULL;
  group_t* g = group_find(h, group);
  return g != NULL && g->current != NULL ? g->cur_id : NULL;
}

static int submit(txmq_script_host_t* h, const char* group, int check,
                  const uint8_t* tx_id, const txmq_msg_t* const* msgs,
                  size_t n, const void* arg, size_t arg_len,
                  uint32_t check_count, txmq_script_call_cb cb, void* cbarg) {
  if (h == NULL || group == NULL || msgs == NULL || n == 0 || cb == NULL) {
    return TXMQ_EINVAL;
  }
  if (h->closing) return TXMQ_ECLOSED;
  if (!txmq_name_valid(group)) return TXMQ_EBADNAME;
  for (size_t i = 0; i < n; i++) {
    if (msgs[i] == NULL) return TXMQ_EINVAL;
  }
  if (arg != NULL && arg_len > 0) {
    char err[TXMQ__CODEC_ERRLEN];
    int rc = txmq__msgpack_scan(arg, arg_len, err, sizeof err);
    if (rc != 0) return rc;
  }
  group_t* g = group_find(h, group);
  if (g == NULL || (g->current == NULL && !g->building)) {
    if (!txmq_script_has_group(h, group)) return TXMQ_ENOTFOUND;
    if (g == NULL && (g = group_get(h, group)) == NULL) return TXMQ_ENOMEM;
  }
  job_t* j = txmq__pool_get(&h->job_pool);
  if (j == NULL) return TXMQ_ENOMEM;
  j->kind = JOB_CALL;
  j->group = g;
  j->check = check;
  if (tx_id != NULL) {
    memcpy(j->tx_id, tx_id, sizeof j->tx_id);
    j->has_tx = 1;
  }
  j->check_count = check_count;
  j->budget_ms = h->call_budget_ms;
  j->cb = cb;
  j->cbarg = cbarg;
  j->msgs = n == 1 ? &j->msg1 : calloc(n, sizeof *j->msgs);
  if (j->msgs == NULL) goto nomem;
  for (; j->n < n; j->n++) {
    if ((j->msgs[j->n] = txmq_msg_clone(msgs[j->n])) == NULL) goto nomem;
  }
  if (arg != NULL && arg_len > 0) {
    if ((j->arg = malloc(arg_len)) == NULL) goto nomem;
    memcpy(j->arg, arg, arg_len);
    j->arg_len = arg_len;
  }
  if (g->current != NULL) {
    dispatch(h, g->current, j);
    return 0;
  }
  if (!g->building) {
    int rc = start_build(h, g, NULL, NULL, 0);
    if (rc != 0) {
      job_free(h, j);
      return rc;
    }
  }
  jq_push(&g->wait_head, &g->wait_tail, j);
  return 0;
nomem:
  job_free(h, j);
  return TXMQ_ENOMEM;
}

int txmq_script_execute(txmq_script_host_t* h, const char* group,
                        const uint8_t* tx_id, const txmq_msg_t* const* msgs,
                        size_t n, const void* arg, size_t arg_len,
                        txmq_script_call_cb cb, void* cbarg) {
  return submit(h, group, 0, tx_id, msgs, n, arg, arg_len, 0, cb, cbarg);
}

int txmq_script_check(txmq_script_host_t* h, const char* group,
                      const uint8_t* tx_id, const txmq_msg_t* const* msgs,
                      size_t n, uint32_t check_count, txmq_script_call_cb cb,
                      void* cbarg) {
  return submit(h, group, 1, tx_id, msgs, n, NULL, 0, check_count, cb, cbarg);
}

int txmq_script_stats(txmq_script_host_t* h, const char* group,
                      txmq_script_stats_t* out) {
  if (h == NULL || group == NULL || out == NULL) return TXMQ_EINVAL;
  group_t* g = group_find(h, group);
  if (g == NULL) return TXMQ_ENOTFOUND;
  *out = g->stats;
  return 0;
}

int txmq_script_host_close(txmq_script_host_t* h,
                           void (*cb)(txmq_script_host_t* host, void* arg),
                           void* arg) {
  if (h == NULL) return TXMQ_EINVAL;
  if (h->closing) return TXMQ_ECLOSED;
  h->closing = 1;
  h->close_cb = cb;
  h->close_arg = arg;
  uv_timer_stop(&h->debounce);
  if (h->fsw_init) uv_fs_event_stop(&h->fsw);
  /* Calls not yet started end with ECLOSED (their callbacks run); running
   * ones finish; builds finish and are discarded. */
  uv_mutex_lock(&h->mu);
  for (version_t* v = h->versions; v != NULL; v = v->all_next) {
    job_t* j;
    while ((j = jq_pop(&v->jq_head, &v->jq_tail)) != NULL) {
      j->status = TXMQ_ECLOSED;
      snprintf(j->diag, sizeof j->diag, "the script host is closing");
      jq_push(&h->dq_head, &h->dq_tail, j);
    }
    v->in_runq = 0;
    v->runq_next = NULL;
  }
  h->rq_head = h->rq_tail = NULL;
  for (group_t* g = h->groups; g != NULL; g = g->next) {
    job_t* j;
    if (g->building) continue; /* the build's completion fails them */
    while ((j = jq_pop(&g->wait_head, &g->wait_tail)) != NULL) {
      j->status = TXMQ_ECLOSED;
      snprintf(j->diag, sizeof j->diag, "the script host is closing");
      jq_push(&h->dq_head, &h->dq_tail, j);
    }
  }
  h->stopping = 1;
  uv_cond_broadcast(&h->cond);
  uv_mutex_unlock(&h->mu);
  uv_async_send(&h->async);
  return 0;
}

void txmq_script_host_free(txmq_script_host_t* h) {
  if (h == NULL) return;
  while (h->groups != NULL) {
    group_t* g = h->groups;
    h->groups = g->next;
    free(g->name);
    free(g->path);
    free(g);
  }
  for (size_t i = 0; i < h->n_allow; i++) free(h->allow[i]);
  free(h->allow);
  for (size_t i = 0; i < h->n_fns; i++) free((char*)h->fns[i].name);
  free(h->fns);
  free(h->threads);
  txmq__pool_drain(&h->job_pool);
  uv_cond_destroy(&h->cond);
  uv_mutex_destroy(&h->mu);
  free(h->dir);
  free(h);
}
