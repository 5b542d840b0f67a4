/*
 * log_format.c - the commit log's on-disk format: segment headers, record
 * framing and validation, segment file names, and I/O helpers that retry
 * EINTR and short transfers.
 *
 * It knows nothing about threads, buffering or recovery policy; log.c,
 * log_writer.c and log_recover.c build on it. The format is drawn in
 * <txmq/log.h>.
 */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "log_int.h"

void txmq__log_seg_header(uint8_t out[TXMQ_LOG_SEGMENT_HEADER_SIZE],
                          uint64_t base, uint32_t id) {
  memcpy(out, TXMQ__LOG_MAGIC, 8); /* the string literal carries the NUL */
  txmq__put_le32(out + 8, TXMQ_LOG_FORMAT_VERSION);
  txmq__put_le32(out + 12, TXMQ_LOG_SEGMENT_HEADER_SIZE);
  txmq__put_le64(out + 16, base);
  txmq__put_le32(out + 24, id);
  txmq__put_le32(out + 28, txmq_crc32c(0, out, 28));
}

int txmq__log_seg_header_check(const uint8_t* h, size_t n, uint64_t base,
                               uint32_t* id, char* why, size_t whylen) {
  if (n < TXMQ_LOG_SEGMENT_HEADER_SIZE) {
    snprintf(why, whylen, "header incomplete (%zu of %d bytes)", n,
             TXMQ_LOG_SEGMENT_HEADER_SIZE);
    return -1;
  }
  if (memcmp(h, TXMQ__LOG_MAGIC, 8) != 0) {
    snprintf(why, whylen, "bad magic");
    return -1;
  }
  /* The crc comes before the other fields: a damaged header should be
   * reported as damaged, not as a strange version. */
  uint32_t crc = txmq__get_le32(h + 28);
  if (crc != txmq_crc32c(0, h, 28)) {
    snprintf(why, whylen, "header crc mismatch");
    return -1;
  }
  uint32_t version = txmq__get_le32(h + 8);
  if (version != TXMQ_LOG_FORMAT_VERSION) {
    snprintf(why, whylen, "unsupported format version %" PRIu32, version);
    return -1;
  }
  uint32_t hdrlen = txmq__get_le32(h + 12);
  if (hdrlen != TXMQ_LOG_SEGMENT_HEADER_SIZE) {
    snprintf(why, whylen, "header length %" PRIu32 ", expected %d", hdrlen,
             TXMQ_LOG_SEGMENT_HEADER_SIZE);
    return -1;
  }
  uint64_t hbase = txmq__get_le64(h + 16);
  if (hbase != base) {
    snprintf(why, whylen,
             "header says base %" PRIu64 " but the file name says %" PRIu64,
             hbase, base);
    return -1;
  }
  *id = txmq__get_le32(h + 24);
  return 0;
}

void txmq__log_rec_encode(uint8_t* dst, uint64_t pos, const txmq_log_rec_t* r) {
  txmq__put_le32(dst + 4, r->len);
  dst[8] = r->type;
  dst[9] = (uint8_t)pos;
  dst[10] = (uint8_t)(pos >> 8);
  dst[11] = (uint8_t)(pos >> 16);
  if (r->len > 0) memcpy(dst + TXMQ_LOG_RECORD_HEADER_SIZE, r->data, r->len);
  uint32_t crc = txmq_crc32c(0, dst + 4, 8u + r->len);
  txmq__put_le32(dst, crc);
}

int txmq__log_rec_check_header(const uint8_t* p, uint64_t avail, uint64_t pos,
                               uint32_t* len) {
  if (avail < TXMQ_LOG_RECORD_HEADER_SIZE) return TXMQ__REC_SHORT_HEADER;
  uint32_t n = txmq__get_le32(p + 4);
  *len = n;
  if (n > TXMQ_LOG_MAX_RECORD) return TXMQ__REC_TOO_BIG;
  if ((uint64_t)n > avail - TXMQ_LOG_RECORD_HEADER_SIZE)
    return TXMQ__REC_PAST_END;
  if (p[8] == 0) return TXMQ__REC_BAD_TYPE;
  if (txmq__get_le24(p + 9) != (uint32_t)(pos & 0xffffffu))
    return TXMQ__REC_BAD_POS;
  return TXMQ__REC_OK;
}

int txmq__log_rec_check(const uint8_t* p, uint64_t avail, uint64_t pos,
                        uint32_t* len) {
  int rc = txmq__log_rec_check_header(p, avail, pos, len);
  if (rc != TXMQ__REC_OK) return rc;
  uint32_t n = *len;
  if (txmq__get_le32(p) != txmq_crc32c(0, p + 4, 8u + n))
    return TXMQ__REC_BAD_CRC;
  return TXMQ__REC_OK;
}

const char* txmq__log_rec_problem(int code) {
  switch (code) {
    case TXMQ__REC_OK: return "valid";
    case TXMQ__REC_SHORT_HEADER: return "incomplete record header";
    case TXMQ__REC_TOO_BIG: return "record length over the maximum";
    case TXMQ__REC_PAST_END: return "record runs past the end of the data";
    case TXMQ__REC_BAD_TYPE: return "record type 0";
    case TXMQ__REC_BAD_POS: return "record position mismatch";
    case TXMQ__REC_BAD_CRC: return "record crc mismatch";
    default: return "invalid record";
  }
}

int64_t txmq__log_find_valid(const uint8_t* data, uint64_t n, uint64_t from,
                             uint64_t base) {
  /* Byte by byte: after damage there is no framing to follow. The cheap
   * checks (type, pos24, bounds) reject almost every offset before the crc
   * is computed. */
  for (uint64_t q = from; q + TXMQ_LOG_RECORD_HEADER_SIZE <= n; q++) {
    const uint8_t* p = data + q;
    if (p[8] == 0) continue;
    if (txmq__get_le24(p + 9) != (uint32_t)((base + q) & 0xffffffu)) continue;
    uint32_t len;
    if (txmq__log_rec_check(p, n - q, base + q, &len) == TXMQ__REC_OK)
      return (int64_t)q;
  }
  return -1;
}

void txmq__log_seg_path(char* out, size_t outlen, const char* dir,
                        uint64_t base) {
  snprintf(out, outlen, "%s/%020" PRIu64 ".log", dir, base);
}

int txmq__log_parse_name(const char* name, uint64_t* base) {
  if (strlen(name) != TXMQ__LOG_NAME_LEN) return -1;
  if (strcmp(name + TXMQ__LOG_NAME_DIGITS, ".log") != 0) return -1;
  uint64_t v = 0;
  for (int i = 0; i < TXMQ__LOG_NAME_DIGITS; i++) {
    if (name[i] < '0' || name[i] > '9') return -1;
    unsigned d = (unsigned)(name[i] - '0');
    if (v > (UINT64_MAX - d) / 10) return -1; /* not a position we write */
    v = v * 10 + d;
  }
  /* Nor is a base at or past TXMQ_LOG_MAX_POS: the positions after it
   * would wrap around. */
  if (v >= TXMQ_LOG_MAX_POS) return -1;
  *base = v;
  return 0;
}

int txmq__pread_full(int fd, void* buf, size_t len, uint64_t off) {
  uint8_t* p = buf;
  while (len > 0) {
    ssize_t r = pread(fd, p, len, (off_t)off);
    if (r < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    if (r == 0) return ENODATA; /* shorter than its positions say */
    p += r;
    len -= (size_t)r;
    off += (uint64_t)r;
  }
  return 0;
}

int txmq__pwrite_full(int fd, const void* buf, size_t len, uint64_t off) {
  const uint8_t* p = buf;
  while (len > 0) {
    ssize_t r = pwrite(fd, p, len, (off_t)off);
    if (r < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    if (r == 0) return EIO;
    p += r;
    len -= (size_t)r;
    off += (uint64_t)r;
  }
  return 0;
}

int txmq__pwritev_full(int fd, struct iovec* iov, int iovcnt, uint64_t off,
                       atomic_uint_fast64_t* nwrite) {
  /* iov is consumed: a short write advances it in place. */
  while (iovcnt > 0) {
    if (iov->iov_len == 0) {
      iov++;
      iovcnt--;
      continue;
    }
    ssize_t r = pwritev(fd, iov, iovcnt, (off_t)off);
    if (nwrite != NULL) atomic_fetch_add(nwrite, 1);
    if (r < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    if (r == 0) return EIO;
    off += (uint64_t)r;
    size_t done = (size_t)r;
    while (iovcnt > 0 && done >= iov->iov_len) {
      done -= iov->iov_len;
      iov++;
      iovcnt--;
    }
    if (iovcnt > 0) {
      iov->iov_base = (uint8_t*)iov->iov_base + done;
      iov->iov_len -= done;
    }
  }
  return 0;
}

int txmq__fdatasync(int fd) {
  /* EINTR is retried, nothing else is: after a failed fdatasync the kernel
   * may have dropped the dirty pages, so a second call could succeed
   * without the data being on disk. */
  while (fdatasync(fd) != 0) {
    if (errno != EINTR) return errno;
  }
  return 0;
}

int txmq__fsync(int fd) {
  while (fsync(fd) != 0) {
    if (errno != EINTR) return errno;
  }
  return 0;
}
