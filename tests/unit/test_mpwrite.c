/*
 * test_mpwrite.c - common/mpwrite.h writes what msgpack-c's packer writes,
 * byte for byte, at every size and value boundary of every format, into a
 * buffer that grows from nothing.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <msgpack.h>

#include "common/mpwrite.h"

typedef struct {
  msgpack_sbuffer ref; /* msgpack-c's packer */
  msgpack_packer pk;
  msgpack_sbuffer got; /* mpwrite */
} pair_t;

static void pair_init(pair_t* p) {
  msgpack_sbuffer_init(&p->ref);
  msgpack_packer_init(&p->pk, &p->ref, msgpack_sbuffer_write);
  msgpack_sbuffer_init(&p->got);
}

static void pair_check(pair_t* p) {
  assert_int_equal(p->got.size, p->ref.size);
  assert_memory_equal(p->got.data, p->ref.data, p->ref.size);
  msgpack_sbuffer_destroy(&p->ref);
  msgpack_sbuffer_destroy(&p->got);
}

static void integers(void** state) {
  (void)state;
  static const int64_t s[] = {0,      1,       31,         32,         127,
                              128,    255,     256,        65535,      65536,
                              -1,     -31,     -32,        -33,        -127,
                              -128,   -129,    -32767,     -32768,     -32769,
                              INT32_MAX, (int64_t)INT32_MAX + 1, INT32_MIN,
                              (int64_t)INT32_MIN - 1, 4294967295LL,
                              4294967296LL, INT64_MAX, INT64_MIN};
  pair_t p;
  pair_init(&p);
  for (size_t i = 0; i < sizeof s / sizeof *s; i++) {
    assert_int_equal(msgpack_pack_int64(&p.pk, s[i]), 0);
    assert_int_equal(txmq__mpw_int(&p.got, s[i]), 0);
    /* int32 values go through msgpack_pack_int32 the same way */
    if (s[i] >= INT32_MIN && s[i] <= INT32_MAX) {
      assert_int_equal(msgpack_pack_int32(&p.pk, (int32_t)s[i]), 0);
      assert_int_equal(txmq__mpw_int(&p.got, s[i]), 0);
    }
  }
  static const uint64_t u[] = {0, 127, 128, 255, 256, 65535, 65536,
                               UINT32_MAX, (uint64_t)UINT32_MAX + 1,
                               UINT64_MAX};
  for (size_t i = 0; i < sizeof u / sizeof *u; i++) {
    assert_int_equal(msgpack_pack_uint64(&p.pk, u[i]), 0);
    assert_int_equal(txmq__mpw_uint(&p.got, u[i]), 0);
    if (u[i] <= UINT32_MAX) {
      assert_int_equal(msgpack_pack_uint32(&p.pk, (uint32_t)u[i]), 0);
      assert_int_equal(txmq__mpw_uint(&p.got, u[i]), 0);
    }
  }
  pair_check(&p);
}

static void strings_bins_and_containers(void** state) {
  (void)state;
  static const size_t lens[] = {0,   1,     31,    32,    255,
                                256, 65535, 65536, 70000};
  char* data = malloc(70000);
  assert_non_null(data);
  for (size_t i = 0; i < 70000; i++) data[i] = (char)(i * 31 + 7);
  pair_t p;
  pair_init(&p);
  for (size_t i = 0; i < sizeof lens / sizeof *lens; i++) {
    size_t n = lens[i];
    assert_int_equal(msgpack_pack_str(&p.pk, n), 0);
    assert_int_equal(msgpack_pack_str_body(&p.pk, data, n), 0);
    assert_int_equal(txmq__mpw_str(&p.got, data, n), 0);
    assert_int_equal(msgpack_pack_bin(&p.pk, n), 0);
    assert_int_equal(msgpack_pack_bin_body(&p.pk, data, n), 0);
    assert_int_equal(txmq__mpw_bin(&p.got, data, n), 0);
    uint32_t c = (uint32_t)n;
    assert_int_equal(msgpack_pack_map(&p.pk, c), 0);
    assert_int_equal(txmq__mpw_map(&p.got, c), 0);
    assert_int_equal(msgpack_pack_array(&p.pk, c), 0);
    assert_int_equal(txmq__mpw_array(&p.got, c), 0);
  }
  assert_int_equal(msgpack_pack_str(&p.pk, 5), 0);
  assert_int_equal(msgpack_pack_str_body(&p.pk, "hello", 5), 0);
  assert_int_equal(txmq__mpw_cstr(&p.got, "hello"), 0);
  pair_check(&p);
  free(data);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(integers),
      cmocka_unit_test(strings_bins_and_containers),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
