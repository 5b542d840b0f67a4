/*
 * testutil.h - helpers shared by the C unit tests: temporary directories,
 * file surgery for corruption tests, and a check that a loop closes cleanly.
 * Include after <cmocka.h>'s prerequisites (stdarg, stddef, setjmp).
 */
#ifndef TXMQ_TESTUTIL_H
#define TXMQ_TESTUTIL_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

/* A new empty directory under $TMPDIR (or /tmp); caller frees the string. */
char* tu_tmpdir(const char* tag);
/* Removes a directory tree; missing is fine. */
void tu_rmrf(const char* path);
/* Joins dir and name into a new string. */
char* tu_path(const char* dir, const char* name);
/* Whole file into a new buffer (caller frees); NULL if unreadable. */
uint8_t* tu_read_file(const char* path, size_t* len);
/* Writes len bytes (creating/truncating). Returns 0 or -1. */
int tu_write_file(const char* path, const void* data, size_t len);
/* File size, or -1. */
long long tu_file_size(const char* path);
/* Truncates a file to len bytes. Returns 0 or -1. */
int tu_truncate(const char* path, long long len);
/* XORs byte at offset with mask. Returns 0 or -1. */
int tu_flip(const char* path, long long offset, uint8_t mask);
/* Copies every regular file of src into dst (created), recursively. */
int tu_copy_tree(const char* src, const char* dst);
/* Runs the loop until *flag becomes non-zero or timeout_ms passes; returns
 * *flag. */
int tu_run_until(uv_loop_t* loop, volatile int* flag, int timeout_ms);
/* Runs the loop to completion, closes it and fails the test if any handle
 * was left open (libuv's habit: every test closes its loop cleanly). */
void tu_loop_close_clean(uv_loop_t* loop);

#endif
