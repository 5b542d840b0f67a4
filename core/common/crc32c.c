/*
 * crc32c.c - CRC32C (Castagnoli) for log records, segment headers and
 * checkpoints.
 *
 * Uses the SSE4.2 crc32 instruction when the CPU has it (checked once per
 * call through the compiler's cached cpu feature flags), else a
 * slicing-by-8 table. It does not provide other CRC polynomials.
 */
#include <stdint.h>
#include <string.h>

#include "txmq/log.h"
#include "crc32c_table.h"

static uint32_t crc32c_sw(uint32_t crc, const uint8_t* p, size_t len) {
  while (len && ((uintptr_t)p & 7)) {
    crc = crc32c_table[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
    len--;
  }
  while (len >= 8) {
    uint64_t w;
    memcpy(&w, p, 8);
    w ^= crc; /* little-endian: the low 4 bytes absorb the running crc */
    crc = crc32c_table[7][w & 0xff] ^ crc32c_table[6][(w >> 8) & 0xff] ^
          crc32c_table[5][(w >> 16) & 0xff] ^ crc32c_table[4][(w >> 24) & 0xff] ^
          crc32c_table[3][(w >> 32) & 0xff] ^ crc32c_table[2][(w >> 40) & 0xff] ^
          crc32c_table[1][(w >> 48) & 0xff] ^ crc32c_table[0][w >> 56];
    p += 8;
    len -= 8;
  }
  while (len--) crc = crc32c_table[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
  return crc;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define TXMQ_HAVE_HW_CRC 1
__attribute__((target("sse4.2"))) static uint32_t crc32c_hw(uint32_t crc,
                                                           const uint8_t* p,
                                                           size_t len) {
  uint64_t c = crc;
  while (len && ((uintptr_t)p & 7)) {
    c = __builtin_ia32_crc32qi((uint32_t)c, *p++);
    len--;
  }
  while (len >= 8) {
    uint64_t w;
    memcpy(&w, p, 8);
    c = __builtin_ia32_crc32di(c, w);
    p += 8;
    len -= 8;
  }
  while (len--) c = __builtin_ia32_crc32qi((uint32_t)c, *p++);
  return (uint32_t)c;
}
#endif

uint32_t txmq_crc32c(uint32_t crc, const void* buf, size_t len) {
  const uint8_t* p = buf;
  crc = ~crc;
#ifdef TXMQ_HAVE_HW_CRC
  if (__builtin_cpu_supports("sse4.2")) return ~crc32c_hw(crc, p, len);
#endif
  return ~crc32c_sw(crc, p, len);
}

/* Exposed for the unit test, which checks both paths against each other. */
uint32_t txmq__crc32c_sw(uint32_t crc, const void* buf, size_t len) {
  return ~crc32c_sw(~crc, buf, len);
}
