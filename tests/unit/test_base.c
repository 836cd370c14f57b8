// test_base.c - base helpers: status messages, half/bfloat16 conversion, overflow helpers.
// forge-test-modules: base
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "base/half.h"
#include "base/status.h"
#include "base/util.h"

#include <math.h>
#include <string.h>

static void test_fail_sets_message(void **state) {
    (void)state;
    fg_status st = FG_FAIL(FG_ERR_FORMAT, "%s: key '%s': expected %s, found %s", "m.gguf", "k",
                           "uint32", "string\nwith newline");
    assert_int_equal(st, FG_ERR_FORMAT);
    assert_string_equal(fg_last_error(), "m.gguf: key 'k': expected uint32, found string with newline");
    fg_error_prefix("load");
    assert_string_equal(fg_last_error(),
                        "load: m.gguf: key 'k': expected uint32, found string with newline");
    assert_string_equal(fg_status_name(FG_ERR_CAPACITY), "capacity exhausted");
}

static void test_f16_known_values(void **state) {
    (void)state;
    assert_int_equal(fg_f32_to_f16(1.0f), 0x3c00);
    assert_int_equal(fg_f32_to_f16(-2.0f), 0xc000);
    assert_int_equal(fg_f32_to_f16(65504.0f), 0x7bff);
    assert_int_equal(fg_f32_to_f16(65520.0f), 0x7c00);      // rounds up to inf
    assert_int_equal(fg_f32_to_f16(5.9604645e-8f), 0x0001); // smallest subnormal
    assert_int_equal(fg_f32_to_f16(0.0f), 0x0000);
    assert_int_equal(fg_f32_to_f16(1.0f + 1.0f / 2048.0f), 0x3c00); // tie -> even
    assert_int_equal(fg_f32_to_f16(1.0f + 3.0f / 2048.0f), 0x3c02); // tie -> even (up)
    assert_true(isnan(fg_f16_to_f32(fg_f32_to_f16(NAN))));
    assert_true(fg_f16_to_f32(0x0001) == 5.9604645e-8f);
    assert_true(fg_f16_to_f32(0x7bff) == 65504.0f);
    assert_true(isinf(fg_f16_to_f32(0xfc00)) && fg_f16_to_f32(0xfc00) < 0);
    // every half round-trips exactly
    for (uint32_t h = 0; h < 0x10000; h++) {
        float f = fg_f16_to_f32((fg_f16)h);
        if (isnan(f))
            continue;
        assert_int_equal(fg_f32_to_f16(f), h);
    }
}

static void test_bf16(void **state) {
    (void)state;
    assert_int_equal(fg_f32_to_bf16(1.0f), 0x3f80);
    assert_true(fg_bf16_to_f32(0x3f80) == 1.0f);
    assert_int_equal(fg_f32_to_bf16(fg_bits_to_f32(0x3f808000)), 0x3f80); // tie -> even
    assert_int_equal(fg_f32_to_bf16(fg_bits_to_f32(0x3f818000)), 0x3f82);
    assert_true(isnan(fg_bf16_to_f32(fg_f32_to_bf16(NAN))));
}

static void test_overflow_helpers(void **state) {
    (void)state;
    uint64_t r = 7;
    assert_false(fg_mul_u64(UINT64_C(1) << 62, 4, &r));
    assert_int_equal(r, 7);
    assert_true(fg_mul_u64(1 << 20, 1 << 20, &r));
    assert_int_equal(r, UINT64_C(1) << 40);
    assert_false(fg_add_u64(UINT64_MAX, 1, &r));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fail_sets_message),
        cmocka_unit_test(test_f16_known_values),
        cmocka_unit_test(test_bf16),
        cmocka_unit_test(test_overflow_helpers),
    };
    return cmocka_run_group_tests_name("base", tests, NULL, NULL);
}
