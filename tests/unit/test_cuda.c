// test_cuda.c - the CUDA backend on a real GPU: device lifecycle, buffer round trips, checked
// errors. Without a GPU (CI has nvcc but no driver) every test SKIPS LOUDLY and says why;
// in a build without CUDA it checks that "cuda" is refused with a clear message.
// forge-test-modules: registry backend quant base
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "backend/backend.h"
#include "base/status.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef FG_HAVE_CUDA
static fg_backend *open_or_skip(void) {
    fg_backend *be = NULL;
    fg_backend_opts o = {0, 0};
    fg_status st = fg_backend_create("cuda", &o, &be);
    if (st == FG_ERR_DEVICE) {
        fprintf(stderr, "SKIP (no GPU): %s\n", fg_last_error());
        assert_non_null(strstr(fg_last_error(), "cuda:"));
        skip();
    }
    assert_int_equal(st, FG_OK);
    assert_string_equal(fg_backend_name(be), "cuda");
    return be;
}

static void test_buffer_round_trip(void **state) {
    (void)state;
    fg_backend *be = open_or_skip();
    const int64_t n = 1000003; // odd size
    fg_buffer *buf = NULL;
    assert_int_equal(be->ops->buf_alloc(be, (size_t)n * 4, &buf), FG_OK);
    int64_t ne[1] = {n};
    fg_tensor t = fg_tensor_view(buf, be->ops->buf_base(buf), 0, FG_TYPE_F32, 1, ne);
    float *src = malloc((size_t)n * 4), *dst = malloc((size_t)n * 4);
    unsigned seed = 12345;
    printf("seed %u\n", seed);
    for (int64_t i = 0; i < n; i++) {
        seed = seed * 1103515245u + 12345u;
        src[i] = (float)(seed >> 8) / 16777216.0f - 0.5f;
    }
    assert_int_equal(be->ops->upload(be, &t, 0, src, (size_t)n * 4), FG_OK);
    memset(dst, 0, (size_t)n * 4);
    assert_int_equal(be->ops->download(be, &t, 0, dst, (size_t)n * 4), FG_OK);
    assert_memory_equal(src, dst, (size_t)n * 4);
    // partial copy at an offset
    assert_int_equal(be->ops->download(be, &t, 4 * 17, dst, 4 * 5), FG_OK);
    assert_memory_equal(src + 17, dst, 4 * 5);
    // out of range is refused, not a device fault
    assert_int_equal(be->ops->download(be, &t, (size_t)n * 4 - 4, dst, 8), FG_ERR_INVALID_ARG);
    assert_int_equal(be->ops->sync(be), FG_OK);
    be->ops->buf_free(be, buf);
    free(src);
    free(dst);
    fg_backend_destroy(be);
}

static void test_huge_alloc_is_nomem(void **state) {
    (void)state;
    fg_backend *be = open_or_skip();
    fg_buffer *buf = NULL;
    assert_int_equal(be->ops->buf_alloc(be, (size_t)1 << 50, &buf), FG_ERR_NOMEM);
    assert_non_null(strstr(fg_last_error(), "cannot allocate"));
    // the failure is not sticky
    assert_int_equal(be->ops->sync(be), FG_OK);
    fg_backend_destroy(be);
}

static void test_no_weight_types_yet(void **state) {
    (void)state;
    fg_backend *be = open_or_skip();
    assert_false(be->ops->supports_type(be, FG_TYPE_F32));
    assert_false(be->ops->supports_type(be, FG_TYPE_Q4_K));
    fg_backend_destroy(be);
}

static void test_bad_device_index(void **state) {
    (void)state;
    fg_backend *be = open_or_skip();
    fg_backend_destroy(be);
    fg_backend_opts o = {0, 4096};
    assert_int_equal(fg_backend_create("cuda", &o, &be), FG_ERR_INVALID_ARG);
    assert_non_null(strstr(fg_last_error(), "device 4096 requested"));
}
#else
static void test_cuda_not_built(void **state) {
    (void)state;
    fg_backend *be = NULL;
    assert_int_equal(fg_backend_create("cuda", NULL, &be), FG_ERR_UNSUPPORTED);
    assert_string_equal(fg_last_error(), "forge was built without CUDA");
}
#endif

int main(void) {
    const struct CMUnitTest tests[] = {
#ifdef FG_HAVE_CUDA
        cmocka_unit_test(test_buffer_round_trip),
        cmocka_unit_test(test_huge_alloc_is_nomem),
        cmocka_unit_test(test_no_weight_types_yet),
        cmocka_unit_test(test_bad_device_index),
#else
        cmocka_unit_test(test_cuda_not_built),
#endif
    };
    return cmocka_run_group_tests_name("cuda", tests, NULL, NULL);
}
