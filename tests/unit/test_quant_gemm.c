// test_quant_gemm.c - the multi-row dot products (fg_quant_gemm) against the single-row vec_dot
// of the same table, bit for bit (memcmp), for every weight type, in the fast and the reference
// mode: random weights (reference quantizer, plus -128 bytes in Q8_0), activations converted
// by fg_quantize_row, every (weight rows x activation rows) count 1..9 and 13 at shifted
// starts (all tile remainders), padded strides, row lengths with and without float tails.
// forge-test-modules: backend quant base
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "quant/blocks.h"
#include "backend/cpu/cpu_kernels.h"
#include "quant/quant.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// The CPU backend's kernels, scalar reference or SIMD as a backend instance would choose them
// (use_ref); the tests flip the choice the way fg_backend_opts.use_ref does.
static bool g_ref;
static void set_use_ref(bool v) { g_ref = v; }
static const fg_type_traits *kernels(uint32_t type) { return fg_cpu_traits(type, g_ref); }
static void quantize_act(uint32_t type, const float *x, void *y, int64_t n) { fg_cpu_quantize_row(g_ref, type, x, y, n); }

#define SEED 20261122u
#define NW 16 // weight rows generated
#define NX 16 // activation rows generated

typedef struct rng {
    uint64_t s;
} rng;
static uint64_t rng_next(rng *r) {
    uint64_t z = (r->s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
static float rng_unif(rng *r) { return (float)((rng_next(r) >> 40) + 0.5) / 16777216.0f; }
static float rng_gauss(rng *r) {
    float u = rng_unif(r), v = rng_unif(r);
    return sqrtf(-2.0f * logf(u)) * cosf(6.2831853f * v);
}

static const uint32_t k_types[] = {
    FG_TYPE_F32,  FG_TYPE_F16,  FG_TYPE_BF16, FG_TYPE_Q4_0, FG_TYPE_Q4_1, FG_TYPE_Q5_0, FG_TYPE_Q5_1,
    FG_TYPE_Q8_0, FG_TYPE_Q2_K, FG_TYPE_Q3_K, FG_TYPE_Q4_K, FG_TYPE_Q5_K, FG_TYPE_Q6_K, FG_TYPE_MXFP4,
};
#define N_TYPES (sizeof(k_types) / sizeof(k_types[0]))

// Compares fg_quant_gemm with vec_dot for one type and row length; returns the number of
// mismatching elements (printing the first).
static int check_type(uint32_t type, int64_t n, uint32_t salt) {
    const fg_type_traits *tr = kernels(type);
    rng g = {((uint64_t)SEED << 32) ^ salt};
    const size_t wrow = fg_type_row_size_n(type, n), xrow = fg_type_row_size_n(tr->vec_dot_type, n);
    const size_t ws = wrow + 48, xs = xrow + 80; // padded strides
    char *w = calloc(NW, ws), *x = calloc(NX, xs);
    float *f = malloc((size_t)n * sizeof(float));
    float ref[NX][NW], out[NX * 32];
    assert_non_null(w);
    assert_non_null(x);
    assert_non_null(f);
    for (int o = 0; o < NW; o++) {
        float scale = 0.01f + 2.0f * rng_unif(&g);
        for (int64_t i = 0; i < n; i++)
            f[i] = scale * rng_gauss(&g);
        tr->from_float(f, w + o * ws, n);
        if (type == FG_TYPE_Q8_0 && o % 3 == 1) { // the reference quantizer never writes -128
            fg_block_q8_0 *b = (fg_block_q8_0 *)(w + o * ws);
            for (int64_t i = 0; i < n / 32; i++)
                b[i].qs[rng_next(&g) % 32] = -128;
        }
    }
    for (int r = 0; r < NX; r++) {
        float scale = 0.01f + 4.0f * rng_unif(&g);
        for (int64_t i = 0; i < n; i++)
            f[i] = scale * rng_gauss(&g);
        if (tr->vec_dot_type == FG_TYPE_F32)
            memcpy(x + r * xs, f, (size_t)n * sizeof(float));
        else
            quantize_act(tr->vec_dot_type, f, x + r * xs, n);
    }
    for (int r = 0; r < NX; r++)
        for (int o = 0; o < NW; o++)
            tr->vec_dot(n, &ref[r][o], w + o * ws, x + r * xs);
    static const int counts[] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 13};
    int bad = 0;
    for (size_t a = 0; a < sizeof(counts) / sizeof(counts[0]); a++)
        for (size_t b = 0; b < sizeof(counts) / sizeof(counts[0]); b++) {
            int nw = counts[a], nx = counts[b];
            int o0 = (int)((a + b) % (size_t)(NW - nw + 1)), r0 = (int)((3 * a + b) % (size_t)(NX - nx + 1));
            const size_t ds = (size_t)nw + 3;
            memset(out, 0xAB, sizeof(out));
            assert_int_equal(fg_cpu_gemm(g_ref, type, n, nw, nx, w + o0 * ws, ws, x + r0 * xs, xs, out, ds), FG_OK);
            for (int r = 0; r < nx; r++)
                for (int o = 0; o < nw; o++)
                    if (memcmp(&out[r * ds + o], &ref[r0 + r][o0 + o], sizeof(float)) != 0) {
                        if (!bad)
                            printf("  %s n %lld: %d x %d tile, element (w %d, x %d): %.9g, vec_dot %.9g\n", tr->name,
                                   (long long)n, nw, nx, o0 + o, r0 + r, (double)out[r * ds + o],
                                   (double)ref[r0 + r][o0 + o]);
                        bad++;
                    }
        }
    free(w);
    free(x);
    free(f);
    return bad;
}

static void check_all(bool use_ref) {
    set_use_ref(use_ref);
    printf("  seed %u, %s kernels (%s build)\n", SEED, use_ref ? "reference" : "fast", fg_cpu_simd_name());
    int bad = 0;
    for (size_t t = 0; t < N_TYPES; t++) {
        const fg_type_traits *tr = kernels(k_types[t]);
        int64_t bs = tr->blck_size;
        // block types: 1, 3 and 8 blocks (of 256) / 1, 5, 40 blocks (of 32); floats: tails too
        int64_t lens[4] = {bs == 1 ? 77 : bs, bs == 1 ? 96 : 3 * bs, bs == 1 ? 1000 : bs == 32 ? 1280 : 2048,
                           bs == 1 ? 4 : 5 * bs};
        for (int l = 0; l < 4; l++)
            bad += check_type(k_types[t], lens[l], (uint32_t)(t * 16 + (size_t)l + (use_ref ? 8 : 0)));
    }
    set_use_ref(false);
    assert_int_equal(bad, 0);
}

static void test_gemm_fast_matches_vec_dot(void **state) {
    (void)state;
    check_all(false);
}

static void test_gemm_ref_matches_vec_dot(void **state) {
    (void)state;
    check_all(true);
}

static void test_gemm_has_fast(void **state) {
    (void)state;
    bool simd = strcmp(fg_cpu_simd_name(), "scalar") != 0;
    static const uint32_t required[] = {FG_TYPE_Q4_0, FG_TYPE_Q8_0, FG_TYPE_Q4_K, FG_TYPE_Q6_K, FG_TYPE_F16};
    for (size_t i = 0; i < sizeof(required) / sizeof(required[0]); i++)
        assert_int_equal(fg_cpu_gemm_has_fast(g_ref, required[i], 2), simd);
    assert_false(fg_cpu_gemm_has_fast(g_ref, FG_TYPE_Q2_K, 1));
    assert_false(fg_cpu_gemm_has_fast(g_ref, FG_TYPE_Q6_K, 1));
    assert_false(fg_cpu_gemm_has_fast(g_ref, FG_TYPE_Q4_0, 0));
    set_use_ref(true);
    assert_false(fg_cpu_gemm_has_fast(g_ref, FG_TYPE_Q4_0, 8));
    set_use_ref(false);
    assert_false(fg_cpu_gemm_has_fast(g_ref, FG_TYPE_I32, 8));
}

static void test_gemm_errors(void **state) {
    (void)state;
    float out[4];
    char buf[64] = {0};
    assert_int_equal(fg_cpu_gemm(g_ref, FG_TYPE_I8, 32, 1, 1, buf, 32, buf, 32, out, 1), FG_ERR_UNSUPPORTED);
    assert_string_equal(fg_last_error(), "gemm: no vec_dot kernel for weight type i8");
    assert_int_equal(fg_cpu_gemm(g_ref, FG_TYPE_Q4_0, 33, 1, 1, buf, 18, buf, 34, out, 1), FG_ERR_INVALID_ARG);
    assert_string_equal(fg_last_error(), "gemm: q4_0 rows of 33 elements (block 32), 1 x 1 rows");
    // zero rows: nothing written
    out[0] = 7.0f;
    assert_int_equal(fg_cpu_gemm(g_ref, FG_TYPE_Q4_0, 32, 0, 3, buf, 18, buf, 34, out, 1), FG_OK);
    assert_true(out[0] == 7.0f);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gemm_fast_matches_vec_dot),
        cmocka_unit_test(test_gemm_ref_matches_vec_dot),
        cmocka_unit_test(test_gemm_has_fast),
        cmocka_unit_test(test_gemm_errors),
    };
    return cmocka_run_group_tests_name("quant_gemm", tests, NULL, NULL);
}
