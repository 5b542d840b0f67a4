/*
 * fuzz_util.h - helpers shared by the libFuzzer targets of tests/fuzz:
 * temporary directories, whole files, a loop run with a deadline, and the
 * libFuzzer entry points' prototypes. A helper that cannot do its job
 * aborts: a fuzz target has no one to report an error to, and a broken
 * harness must not look like a clean run.
 */
#ifndef TXMQ_FUZZ_UTIL_H
#define TXMQ_FUZZ_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <msgpack.h>
#include <uv.h>

#include "txmq/msg.h"

int LLVMFuzzerInitialize(int* argc, char*** argv);
int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

/* Aborts with a message when cond is false (also in release builds). */
#define FZ_CHECK(cond)                                                   \
  do {                                                                   \
    if (!(cond)) fz_fail(__FILE__, __LINE__, #cond);                     \
  } while (0)
void fz_fail(const char* file, int line, const char* what)
    __attribute__((noreturn));

/* A new empty directory under $TMPDIR (or /tmp); caller frees the string. */
char* fz_tmpdir(const char* tag);
/* Removes a directory tree; missing is fine. */
void fz_rmrf(const char* path);
/* Joins dir and name into a new string. */
char* fz_path(const char* dir, const char* name);
/* Writes len bytes (creating/truncating); aborts on failure. */
void fz_write_file(const char* path, const void* data, size_t len);

/* Order-insensitive equality of two msgpack values: str and bin with the
 * same bytes are equal (a Lua string always packs back as str), and so are
 * float32 and float64 of the same value (NaNs of the same bits too). */
int fz_obj_eq(const msgpack_object* a, const msgpack_object* b);
/* Equality of every field of two messages (ids and store fields too). */
int fz_msg_eq(const txmq_msg_t* a, const txmq_msg_t* b);

/* Runs the loop until *flag is non-zero or timeout_ms passes; returns
 * *flag. */
int fz_run_until(uv_loop_t* loop, volatile int* flag, uint64_t timeout_ms);
/* Runs the loop to its end and closes it; aborts if a handle is left. */
void fz_loop_close(uv_loop_t* loop);

typedef struct txmq_runtime_s txmq_runtime_t;
/* A runtime on loop over data and scripts, not opened: sync never, the
 * transaction engine on a fixed manual clock (monotonic 1000000 ms, wall
 * 1700000000000 ms), no watch of the scripts folder; what the record
 * target and its seed writer open, so that both see the same times. */
txmq_runtime_t* fz_runtime_fixed(uv_loop_t* loop, const char* data,
                                 const char* scripts);

#endif /* TXMQ_FUZZ_UTIL_H */
