/*
 * txmq/log.h - the commit log: segmented, append-only, checksummed files.
 *
 * The log is the only thing txmq writes synchronously to disk. Every other
 * structure (indexes, offsets, transaction state) can be rebuilt from it.
 *
 * ON-DISK FORMAT (all integers little-endian, fixed width)
 *
 * A log is a directory of segment files named by their base position as 20
 * decimal digits plus ".log", e.g. 00000000000067108864.log. A record never
 * spans two segments; positions are dense across segments: the base of a
 * segment equals the base of the previous one plus that one's data length.
 *
 *   segment header (32 bytes)
 *   +--------+---------+--------+-------------------+--------+--------+
 *   | 0..7   | 8..11   | 12..15 | 16..23            | 24..27 | 28..31 |
 *   | magic  | version | hdrlen | base position     | seg id | crc32c |
 *   |"TXMQLOG\0"| =1   | =32    | u64               | u32    | of 0..27
 *   +--------+---------+--------+-------------------+--------+--------+
 *   seg id counts segments from 0 in creation order (the nth segment ever
 *   created in this directory), so a missing segment file is detected even
 *   when its neighbours look consistent.
 *
 *   record (header 12 bytes, then payload)
 *   +-----------+-----------+--------+---------+--------------------+
 *   | 0..3      | 4..7      | 8      | 9..11   | 12 .. 12+len-1     |
 *   | crc32c    | len       | type   | pos24   | payload            |
 *   | of 4..end | u32       | u8 1+  | u24     | len bytes          |
 *   +-----------+-----------+--------+---------+--------------------+
 *   crc32c covers bytes 4 .. 12+len-1 (length, type, pos24 and payload).
 *   pos24 is the low 24 bits of the record's own position: a valid-looking
 *   record copied to the wrong place (or read at a wrong position) fails.
 *   type 0 is never written; a zero length is allowed.
 *
 * A record's position (txmq_pos) is base + (file offset - 32) of its header.
 * Positions only grow; the end position of the log is where the next record
 * will go.
 *
 * DURABILITY
 *
 * Appends are copied into an in-memory buffer on the caller's (loop) thread
 * and given their positions at once. A writer thread beside the loop writes
 * the buffer with one write() per segment and, depending on the policy,
 * fdatasync()s it; many appends share one fsync (group commit). Completion
 * callbacks run on the loop thread:
 *   TXMQ_SYNC_ALWAYS    after the bytes are on disk (fdatasync returned);
 *   TXMQ_SYNC_INTERVAL  after write(); fdatasync every sync_interval_ms;
 *   TXMQ_SYNC_NEVER     after write(); the OS decides when to flush.
 * The directory is fsynced when a segment is created. After a failed write or
 * fsync the log refuses further appends with TXMQ_EFAILED (it never retries an
 * fsync and assumes success: Linux may have dropped the dirty pages).
 *
 * RECOVERY
 *
 * Open scans the last segment (and checks the others' headers and lengths).
 * A torn tail - an incomplete header, a record running past the end of the
 * file, or a bad record with no valid record after it - is cut and logged
 * through the diagnostic. Anything else that is invalid is corruption in the
 * middle: open fails with TXMQ_ECORRUPT and txmq_log_corruption() tells the
 * segment and position, unless the caller chose a recovery mode:
 *   TXMQ_LOG_RECOVER_READONLY  open read-only; everything before the
 *                              corruption can be read, appends fail EROFS;
 *   TXMQ_LOG_RECOVER_TRUNCATE  cut the log at the corruption (later segments
 *                              are deleted) and open read-write.
 */
#ifndef TXMQ_LOG_H
#define TXMQ_LOG_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TXMQ_LOG_SEGMENT_HEADER_SIZE 32
#define TXMQ_LOG_RECORD_HEADER_SIZE 12
#define TXMQ_LOG_FORMAT_VERSION 1
/* Largest payload of one record. */
#define TXMQ_LOG_MAX_RECORD (16u * 1024u * 1024u)
/* Positions stay below 2^62 (4 EiB written), so that a position never
 * wraps around and fits beside two bits of state in a 64-bit word. A file
 * whose name is a base at or beyond it is not a segment of the log. */
#define TXMQ_LOG_MAX_POS (UINT64_C(1) << 62)

typedef struct txmq_log_s txmq_log_t;
typedef struct txmq_log_iter_s txmq_log_iter_t;

typedef enum {
  TXMQ_SYNC_ALWAYS = 0,
  TXMQ_SYNC_INTERVAL = 1,
  TXMQ_SYNC_NEVER = 2
} txmq_sync_t;

typedef enum {
  TXMQ_LOG_RECOVER_STRICT = 0,  /* default: refuse to open on corruption */
  TXMQ_LOG_RECOVER_READONLY = 1,
  TXMQ_LOG_RECOVER_TRUNCATE = 2
} txmq_log_recover_t;

/* Options, set with txmq_log_set() between txmq_log_new() and
 * txmq_log_open(). Values are int64_t. */
typedef enum {
  TXMQ_LOG_OPT_SYNC = 1,             /* txmq_sync_t, default ALWAYS */
  TXMQ_LOG_OPT_SYNC_INTERVAL_MS,     /* default 1000 */
  TXMQ_LOG_OPT_SEGMENT_SIZE,         /* bytes, default 64 MiB, min 4096 */
  TXMQ_LOG_OPT_RECOVER,              /* txmq_log_recover_t */
  TXMQ_LOG_OPT_READ_ONLY,            /* 1: no writer thread, appends EROFS,
                                        a torn tail is reported, not cut;
                                        no loop needed */
  TXMQ_LOG_OPT_MAX_BUFFERED,         /* bytes accepted but not yet written
                                        before append says EAGAIN; default
                                        64 MiB */
  TXMQ_LOG_OPT_RETAIN_BYTES,         /* retention by total size; 0 = off */
  TXMQ_LOG_OPT_RETAIN_SECONDS,       /* retention by age; 0 = off */
  TXMQ_LOG_OPT_ZERO_AHEAD            /* sync ALWAYS: bytes of the segment
                                        file the writer, when idle, fills
                                        with zeros ahead of the data, so
                                        that an fdatasync flushes data only
                                        (no size change); default 1 MiB,
                                        0 = off. Recovery takes zeros after
                                        the newest segment's last record
                                        for that room; a clean close cuts
                                        them. */
} txmq_log_opt_t;

/* One record to append. data may be NULL when len is 0. */
typedef struct {
  uint8_t type;       /* 1..255 */
  const void* data;
  uint32_t len;
} txmq_log_rec_t;

/* A record read back. data points into memory owned by the reader (the log
 * for txmq_log_read, the iterator for txmq_log_iter_next) and stays valid
 * until the next read on the same reader. */
typedef struct {
  uint64_t pos;       /* position of this record */
  uint64_t next;      /* position of the record after it */
  uint8_t type;
  const uint8_t* data;
  uint32_t len;
} txmq_log_entry_t;

/* Called on the loop thread when a batch is durable per the sync policy
 * (status 0), or failed (negative TXMQ_E*, e.g. TXMQ_EFAILED, TXMQ_ECLOSED
 * when the log was closed first). first_pos is the position of the batch's
 * first record. */
typedef void (*txmq_log_append_cb)(txmq_log_t* log, int status,
                                   uint64_t first_pos, void* arg);

/* Retention hook: return non-zero to keep the segment [base, end). Called on
 * the loop thread for the oldest segments, oldest first; retention stops at
 * the first segment that is kept, so the log always stays one contiguous
 * range. */
typedef int (*txmq_log_keep_cb)(void* arg, uint64_t base, uint64_t end);

/* Allocates a closed log for directory dir (copied). loop is the loop that
 * will run completion callbacks; it may be NULL for a read-only log. */
int txmq_log_new(txmq_log_t** out, uv_loop_t* loop, const char* dir);

/* Sets an option; TXMQ_EINVAL for an unknown option or bad value, and
 * TXMQ_EBUSY once the log is open. */
int txmq_log_set(txmq_log_t* log, txmq_log_opt_t opt, int64_t value);

/* Opens (creating the directory and the first segment if needed), recovers
 * and starts the writer thread. On failure the log stays allocated and
 * closed: read txmq_log_diag(), then txmq_log_free(). */
int txmq_log_open(txmq_log_t* log);

/* Appends n records as one batch, contiguous in the log. The data is copied
 * before return. positions, if not NULL, receives n positions. cb (may be
 * NULL) runs on the loop thread when the batch is durable or failed; if the
 * call fails, cb is never called. Returns TXMQ_EAGAIN when more than
 * MAX_BUFFERED bytes wait to be written (back-pressure), TXMQ_ETOOBIG for a
 * record over TXMQ_LOG_MAX_RECORD, TXMQ_EROFS on a read-only log,
 * TXMQ_EFAILED after a storage failure. Loop thread only. */
int txmq_log_append(txmq_log_t* log, const txmq_log_rec_t* recs, size_t n,
                    uint64_t* positions, txmq_log_append_cb cb, void* arg);

/* Reads the record at pos into *out. TXMQ_ERANGE if pos is before the first
 * retained position or at/after the readable end, TXMQ_ECORRUPT (with a
 * diagnostic) if the bytes there are not a valid record. */
int txmq_log_read(txmq_log_t* log, uint64_t pos, txmq_log_entry_t* out);

/* First retained position. */
uint64_t txmq_log_begin(const txmq_log_t* log);
/* End of what can be read (written to the files). */
uint64_t txmq_log_end(const txmq_log_t* log);
/* End of what is durable on disk (equal to txmq_log_end under NEVER only
 * after an explicit txmq_log_flush). */
uint64_t txmq_log_durable_end(const txmq_log_t* log);
/* Position the next append will get (includes buffered records). */
uint64_t txmq_log_next_pos(const txmq_log_t* log);
int txmq_log_is_read_only(const txmq_log_t* log);

/* Asks the writer to write and fdatasync everything appended so far; cb runs
 * on the loop thread when done. Used by clean shutdown and checkpoints. */
int txmq_log_flush(txmq_log_t* log, txmq_log_append_cb cb, void* arg);

/* Installs the retention hook (NULL: keep nothing beyond the limits). */
void txmq_log_set_keep_cb(txmq_log_t* log, txmq_log_keep_cb cb, void* arg);

/* Applies retention now (by RETAIN_BYTES and RETAIN_SECONDS, asking keep_cb):
 * deletes whole old segments, never the one being written. *deleted, if not
 * NULL, receives how many were deleted. Loop thread. */
int txmq_log_apply_retention(txmq_log_t* log, size_t* deleted);

/* Number of segments and the base of segment i (0 = oldest). */
size_t txmq_log_segment_count(const txmq_log_t* log);
uint64_t txmq_log_segment_base(const txmq_log_t* log, size_t i);

/* Statistics since open. */
uint64_t txmq_log_fsync_count(const txmq_log_t* log);
uint64_t txmq_log_write_count(const txmq_log_t* log);
/* Reads served from the tail cache (the newest 8 MiB appended by this
 * process, kept in memory) instead of the segment files. */
uint64_t txmq_log_cache_hits(const txmq_log_t* log);

/* What recovery did or found, in words; "" if nothing. Valid until the next
 * call on log. */
const char* txmq_log_diag(const txmq_log_t* log);

/* After open failed with TXMQ_ECORRUPT (or opened READONLY/TRUNCATE because
 * of corruption): the segment file's base and the position of the first
 * invalid record. Returns 0 if there was corruption, TXMQ_ENOTFOUND if not. */
int txmq_log_corruption(const txmq_log_t* log, uint64_t* segment_base,
                        uint64_t* pos);
/* 0 while the log can take appends; after a failed write or fsync, the
 * failure (e.g. TXMQ_ENOSPC, TXMQ_EIO), for good: txmq_log_diag() says
 * what failed. Recovery is closing and opening the log again, which reads
 * back only complete, checksummed records. Loop thread. */
int txmq_log_failed(const txmq_log_t* log);

/* Bytes cut from a torn tail at open (0 if none). */
uint64_t txmq_log_torn_bytes(const txmq_log_t* log);

/* Starts closing: stops accepting appends, lets the writer finish and sync
 * what was accepted, fails nothing that was accepted. close_cb (may be NULL)
 * runs on the loop thread when the writer has stopped and every pending
 * append callback has run; after it, call txmq_log_free(). For a read-only
 * log or a log that never opened, close_cb runs synchronously. */
typedef void (*txmq_log_close_cb)(txmq_log_t* log, void* arg);
int txmq_log_close(txmq_log_t* log, txmq_log_close_cb cb, void* arg);

/* Frees a closed (or never opened) log. */
void txmq_log_free(txmq_log_t* log);

/* Iterator over [from, to) in position order; to = UINT64_MAX means to the
 * readable end at the time of each step. Reads with its own buffer, so it can
 * be used beside txmq_log_read. */
int txmq_log_iter_new(txmq_log_t* log, uint64_t from, uint64_t to,
                      txmq_log_iter_t** out);
/* 0 and *out filled; TXMQ_ENOTFOUND at the end; TXMQ_ECORRUPT on a bad
 * record (the iterator stops there). */
int txmq_log_iter_next(txmq_log_iter_t* it, txmq_log_entry_t* out);
/* From now on, records below position until whose type is one of
 * types[0..n) are stepped over and not returned: only their header is
 * checked (length, type, position), not their checksum. For a reader that
 * already holds what such records say (a replay below its checkpoint). */
int txmq_log_iter_skip(txmq_log_iter_t* it, uint64_t until,
                       const uint8_t* types, size_t n);
void txmq_log_iter_free(txmq_log_iter_t* it);

/* CRC32C (Castagnoli) of buf, continuing from crc (start with 0). Uses the
 * SSE4.2 instruction when the CPU has it. */
uint32_t txmq_crc32c(uint32_t crc, const void* buf, size_t len);

#ifdef __cplusplus
}
#endif
#endif /* TXMQ_LOG_H */
