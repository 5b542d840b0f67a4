/*
 * test_common.c - CRC32C (hardware and software paths agree with the
 * standard check values) and the error model.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "txmq/error.h"
#include "txmq/log.h"

uint32_t txmq__crc32c_sw(uint32_t crc, const void* buf, size_t len);

static void crc32c_check_values(void** state) {
  (void)state;
  assert_int_equal(txmq_crc32c(0, "123456789", 9), 0xE3069283u);
  assert_int_equal(txmq__crc32c_sw(0, "123456789", 9), 0xE3069283u);
  uint8_t zeros[32] = {0};
  assert_int_equal(txmq_crc32c(0, zeros, 32), 0x8A9136AAu);
  uint8_t ones[32];
  memset(ones, 0xff, sizeof ones);
  assert_int_equal(txmq_crc32c(0, ones, 32), 0x62A8AB43u);
  assert_int_equal(txmq_crc32c(0, "", 0), 0u);
}

static void crc32c_paths_agree_and_chain(void** state) {
  (void)state;
  uint8_t buf[1031];
  uint32_t x = 12345;
  for (size_t i = 0; i < sizeof buf; i++) {
    x = x * 1103515245u + 12345u;
    buf[i] = (uint8_t)(x >> 16);
  }
  for (size_t off = 0; off < 9; off++) {
    for (size_t len = 0; len + off <= sizeof buf; len += 97) {
      uint32_t hw = txmq_crc32c(0, buf + off, len);
      assert_int_equal(hw, txmq__crc32c_sw(0, buf + off, len));
      /* Chaining two halves gives the crc of the whole. */
      size_t half = len / 2;
      uint32_t c = txmq_crc32c(0, buf + off, half);
      c = txmq_crc32c(c, buf + off + half, len - half);
      assert_int_equal(c, hw);
    }
  }
}

static void error_names_and_messages(void** state) {
  (void)state;
  assert_string_equal(txmq_err_name(TXMQ_ECORRUPT), "ECORRUPT");
  assert_string_equal(txmq_strerror(TXMQ_ECORRUPT), "data on disk is corrupt");
  assert_string_equal(txmq_err_name(TXMQ_EAUTH), "EAUTH");
  assert_int_equal(TXMQ_EAUTH, -22); /* travels on the wire: never renumbered */
  assert_string_equal(txmq_err_name(0), "OK");
  assert_string_equal(txmq_err_name(-9999), "EUNKNOWN");
  assert_string_equal(txmq_strerror(-9999), "unknown error");
  for (int c = -1; c >= TXMQ_ERRNO_MIN; c--) {
    assert_string_not_equal(txmq_err_name(c), "EUNKNOWN");
  }
  assert_int_equal(txmq_err_from_errno(28 /* ENOSPC */), TXMQ_ENOSPC);
  assert_int_equal(txmq_err_from_errno(5 /* EIO */), TXMQ_EIO);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(crc32c_check_values),
      cmocka_unit_test(crc32c_paths_agree_and_chain),
      cmocka_unit_test(error_names_and_messages),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
