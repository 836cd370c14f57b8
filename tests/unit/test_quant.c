// test_quant.c - weight types: block geometry, known-answer dequantization of hand-built blocks
// (values derived from the format definitions), activation quantizers (ggml's rounding), round
// trips through the reference quantizers, vec_dot against a double-precision dot of the
// dequantized operands, and the AVX2 fast paths against the scalar reference.
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

#define SEED 20261121u

// ---------------------------------------------------------------- helpers
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
static rng rng_make(uint32_t salt) {
    printf("  seed %u salt %u\n", SEED, salt);
    rng r = {((uint64_t)SEED << 32) ^ salt};
    return r;
}
static void fill_bytes(rng *r, void *p, size_t n) {
    uint8_t *b = p;
    for (size_t i = 0; i < n; i++)
        b[i] = (uint8_t)rng_next(r);
}

static const uint32_t k_weight_types[] = {
    FG_TYPE_F32,  FG_TYPE_F16,  FG_TYPE_BF16, FG_TYPE_Q4_0, FG_TYPE_Q4_1, FG_TYPE_Q5_0, FG_TYPE_Q5_1,
    FG_TYPE_Q8_0, FG_TYPE_Q2_K, FG_TYPE_Q3_K, FG_TYPE_Q4_K, FG_TYPE_Q5_K, FG_TYPE_Q6_K, FG_TYPE_MXFP4,
};
#define N_WEIGHT_TYPES (sizeof(k_weight_types) / sizeof(k_weight_types[0]))

static void dequant(uint32_t type, const void *src, float *dst, int64_t n) {
    fg_type_traits_ref(type)->to_float(src, dst, n);
}

// ---------------------------------------------------------------- geometry
static void test_geometry(void **state) {
    (void)state;
    struct {
        uint32_t t;
        int64_t bs;
        size_t ts;
        uint32_t vdt;
    } g[] = {
        {FG_TYPE_F32, 1, 4, FG_TYPE_F32},         {FG_TYPE_F16, 1, 2, FG_TYPE_F16},
        {FG_TYPE_BF16, 1, 2, FG_TYPE_BF16},       {FG_TYPE_Q4_0, 32, 18, FG_TYPE_Q8_0},
        {FG_TYPE_Q4_1, 32, 20, FG_TYPE_Q8_1},     {FG_TYPE_Q5_0, 32, 22, FG_TYPE_Q8_0},
        {FG_TYPE_Q5_1, 32, 24, FG_TYPE_Q8_1},     {FG_TYPE_Q8_0, 32, 34, FG_TYPE_Q8_0},
        {FG_TYPE_Q8_1, 32, 36, FG_TYPE_Q8_1},     {FG_TYPE_Q2_K, 256, 84, FG_TYPE_Q8_K},
        {FG_TYPE_Q3_K, 256, 110, FG_TYPE_Q8_K},   {FG_TYPE_Q4_K, 256, 144, FG_TYPE_Q8_K},
        {FG_TYPE_Q5_K, 256, 176, FG_TYPE_Q8_K},   {FG_TYPE_Q6_K, 256, 210, FG_TYPE_Q8_K},
        {FG_TYPE_Q8_K, 256, 292, FG_TYPE_Q8_K},   {FG_TYPE_MXFP4, 32, 17, FG_TYPE_Q8_0},
    };
    for (size_t i = 0; i < sizeof(g) / sizeof(g[0]); i++) {
        const fg_type_traits *t = kernels(g[i].t);
        assert_non_null(t);
        assert_int_equal(t->blck_size, g[i].bs);
        assert_int_equal(t->type_size, g[i].ts);
        assert_int_equal(t->vec_dot_type, g[i].vdt);
        assert_non_null(t->to_float);
        assert_non_null(t->from_float);
        assert_non_null(t->vec_dot);
        assert_int_equal(fg_type_row_size_n(g[i].t, 4096), (size_t)(4096 / g[i].bs) * g[i].ts);
    }
    assert_int_equal(fg_type_row_size_n(FG_TYPE_Q4_K, 4096), 16 * 144);
    assert_int_equal(fg_type_row_size_n(4, 32), 0);   // retired Q4_2
    assert_int_equal(fg_type_row_size_n(200, 32), 0); // unknown
    assert_null(kernels(5));
    assert_false(fg_type_known(FG_TYPE_Q8_K)); // activations only
    assert_true(fg_type_known(FG_TYPE_MXFP4));
    printf("  simd: %s\n", fg_cpu_simd_name());
    // the switch picks the scalar table
    set_use_ref(true);
    assert_true(g_ref);
    assert_ptr_equal(kernels(FG_TYPE_Q4_K)->vec_dot, fg_type_traits_ref(FG_TYPE_Q4_K)->vec_dot);
    set_use_ref(false);
    assert_false(g_ref);
    // public queries and their error messages
    uint64_t bytes = 0;
    assert_int_equal(fg_type_row_bytes(FG_TYPE_Q6_K, 512, &bytes), FG_OK);
    assert_int_equal(bytes, 2 * 210);
    assert_int_equal(fg_type_row_bytes(FG_TYPE_Q4_0, 33, &bytes), FG_ERR_FORMAT);
    assert_string_equal(fg_last_error(), "row of 33 elements is not a multiple of the q4_0 block size 32");
    assert_int_equal(fg_type_row_bytes(4, 32, &bytes), FG_ERR_UNSUPPORTED);
    assert_string_equal(fg_last_error(), "unknown weight type id 4");
    uint32_t id = 0;
    assert_int_equal(fg_type_from_name("MXFP4", &id), FG_OK);
    assert_int_equal(id, FG_TYPE_MXFP4);
    assert_int_equal(fg_type_from_name("q8_k", &id), FG_ERR_INVALID_ARG); // not a weight type
    assert_string_equal(fg_last_error(), "unknown weight type 'q8_k'");
    assert_string_equal(fg_type_name(FG_TYPE_Q5_K), "q5_k");
    assert_string_equal(fg_type_name(77), "unknown");
}

// ---------------------------------------------------------------- known answers
static void test_q4_0_known(void **state) {
    (void)state;
    fg_block_q4_0 b;
    b.d = fg_f32_to_f16(0.5f);
    for (int j = 0; j < 16; j++)
        b.qs[j] = (uint8_t)(j | ((15 - j) << 4));
    float y[32];
    dequant(FG_TYPE_Q4_0, &b, y, 32);
    for (int j = 0; j < 16; j++) {
        assert_true(y[j] == (float)(j - 8) * 0.5f);
        assert_true(y[j + 16] == (float)(15 - j - 8) * 0.5f);
    }
}

static void test_q4_1_q5_known(void **state) {
    (void)state;
    fg_block_q4_1 b1;
    b1.d = fg_f32_to_f16(0.25f);
    b1.m = fg_f32_to_f16(-1.0f);
    for (int j = 0; j < 16; j++)
        b1.qs[j] = (uint8_t)(j | ((15 - j) << 4));
    float y[32];
    dequant(FG_TYPE_Q4_1, &b1, y, 32);
    for (int j = 0; j < 16; j++) {
        assert_true(y[j] == (float)j * 0.25f - 1.0f);
        assert_true(y[j + 16] == (float)(15 - j) * 0.25f - 1.0f);
    }
    // Q5_0: element j takes bit j of qh (little-endian u32) as its fifth bit
    fg_block_q5_0 b5;
    b5.d = fg_f32_to_f16(2.0f);
    uint32_t qh = 0xA5C3F00Fu;
    memcpy(b5.qh, &qh, 4);
    for (int j = 0; j < 16; j++)
        b5.qs[j] = (uint8_t)(((3 * j) & 15) | (((7 * j + 1) & 15) << 4));
    dequant(FG_TYPE_Q5_0, &b5, y, 32);
    for (int j = 0; j < 32; j++) {
        int nib = j < 16 ? ((3 * j) & 15) : ((7 * (j - 16) + 1) & 15);
        int q = nib | (int)(((qh >> j) & 1) << 4);
        assert_true(y[j] == (float)(q - 16) * 2.0f);
    }
    fg_block_q5_1 b51;
    b51.d = fg_f32_to_f16(0.5f);
    b51.m = fg_f32_to_f16(3.0f);
    memcpy(b51.qh, &qh, 4);
    memcpy(b51.qs, b5.qs, 16);
    dequant(FG_TYPE_Q5_1, &b51, y, 32);
    for (int j = 0; j < 32; j++) {
        int nib = j < 16 ? ((3 * j) & 15) : ((7 * (j - 16) + 1) & 15);
        int q = nib | (int)(((qh >> j) & 1) << 4);
        assert_true(y[j] == (float)q * 0.5f + 3.0f);
    }
    fg_block_q8_0 b8;
    b8.d = fg_f32_to_f16(0.125f);
    for (int j = 0; j < 32; j++)
        b8.qs[j] = (int8_t)(j * 8 - 127);
    dequant(FG_TYPE_Q8_0, &b8, y, 32);
    for (int j = 0; j < 32; j++)
        assert_true(y[j] == (float)(j * 8 - 127) * 0.125f);
}

static void test_mxfp4_known(void **state) {
    (void)state;
    // E2M1 values: 0, 0.5, 1, 1.5, 2, 3, 4, 6 and their negatives (code 8 = -0)
    static const float e2m1[16] = {0, 0.5f, 1, 1.5f, 2, 3, 4, 6, -0.0f, -0.5f, -1, -1.5f, -2, -3, -4, -6};
    fg_block_mxfp4 b;
    for (int j = 0; j < 16; j++)
        b.qs[j] = (uint8_t)(j | ((15 - j) << 4));
    float y[32];
    const struct {
        uint8_t e;
        float scale;
    } cases[] = {{127, 1.0f}, {130, 8.0f}, {120, 1.0f / 128}, {1, 0x1p-126f}, {0, 0x1p-127f}};
    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
        b.e = cases[c].e;
        dequant(FG_TYPE_MXFP4, &b, y, 32);
        for (int j = 0; j < 16; j++) {
            assert_true(y[j] == e2m1[j] * cases[c].scale);
            assert_true(y[j + 16] == e2m1[15 - j] * cases[c].scale);
        }
    }
    // the quantizer picks e = floor(log2(amax)) - 2 + 127 and the nearest value
    float x[32] = {0};
    x[0] = 6.0f;
    x[1] = -1.4f; // nearest 1.5
    x[17] = 0.2f; // nearest 0
    x[18] = 0.3f; // nearest 0.5
    fg_block_mxfp4 q;
    fg_type_traits_ref(FG_TYPE_MXFP4)->from_float(x, &q, 32);
    assert_int_equal(q.e, 2 - 2 + 127);
    dequant(FG_TYPE_MXFP4, &q, y, 32);
    assert_true(y[0] == 6.0f);
    assert_true(y[1] == -1.5f);
    assert_true(y[17] == 0.0f);
    assert_true(y[18] == 0.5f);
}

// 6-bit scale j of Q4_K/Q5_K (the format definition, written out independently).
static void k4_scale(const uint8_t *s, int j, int *sc, int *m) {
    if (j < 4) {
        *sc = s[j] & 63;
        *m = s[j + 4] & 63;
    } else {
        *sc = (s[j + 4] & 15) | ((s[j - 4] >> 6) << 4);
        *m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

static void test_q4_k_q5_k_known(void **state) {
    (void)state;
    rng r = rng_make(1);
    static const int want_sc[8] = {1, 2, 3, 4, 17, 33, 47, 63};
    static const int want_m[8] = {0, 5, 10, 63, 16, 31, 48, 7};
    uint8_t s[12] = {0};
    for (int j = 0; j < 4; j++) { // pack by the definition: low 6 bits + top 2 bits of j+4
        s[j] = (uint8_t)(want_sc[j] | ((want_sc[j + 4] >> 4) << 6));
        s[j + 4] = (uint8_t)(want_m[j] | ((want_m[j + 4] >> 4) << 6));
        s[j + 8] = (uint8_t)((want_sc[j + 4] & 15) | ((want_m[j + 4] & 15) << 4));
    }
    for (int j = 0; j < 8; j++) {
        int sc, m;
        k4_scale(s, j, &sc, &m);
        assert_int_equal(sc, want_sc[j]);
        assert_int_equal(m, want_m[j]);
    }
    fg_block_q4_k b4;
    b4.d = fg_f32_to_f16(0.5f);
    b4.dmin = fg_f32_to_f16(0.25f);
    memcpy(b4.scales, s, 12);
    fill_bytes(&r, b4.qs, sizeof(b4.qs));
    float y[256];
    dequant(FG_TYPE_Q4_K, &b4, y, 256);
    for (int e = 0; e < 256; e++) {
        int c = e / 64, rr = e % 64;
        int q = rr < 32 ? (b4.qs[32 * c + rr] & 15) : (b4.qs[32 * c + rr - 32] >> 4);
        float want = 0.5f * (float)want_sc[e / 32] * (float)q - 0.25f * (float)want_m[e / 32];
        assert_true(y[e] == want);
    }
    fg_block_q5_k b5;
    b5.d = fg_f32_to_f16(0.5f);
    b5.dmin = fg_f32_to_f16(0.25f);
    memcpy(b5.scales, s, 12);
    fill_bytes(&r, b5.qs, sizeof(b5.qs));
    fill_bytes(&r, b5.qh, sizeof(b5.qh));
    dequant(FG_TYPE_Q5_K, &b5, y, 256);
    for (int e = 0; e < 256; e++) {
        int c = e / 64, rr = e % 64;
        int q = rr < 32 ? (b5.qs[32 * c + rr] & 15) : (b5.qs[32 * c + rr - 32] >> 4);
        int hbit = (b5.qh[rr % 32] >> (2 * c + (rr >= 32))) & 1; // bit 2c (low half), 2c+1 (high)
        q |= hbit << 4;
        float want = 0.5f * (float)want_sc[e / 32] * (float)q - 0.25f * (float)want_m[e / 32];
        assert_true(y[e] == want);
    }
}

static void test_q6_k_known(void **state) {
    (void)state;
    rng r = rng_make(2);
    fg_block_q6_k b;
    b.d = fg_f32_to_f16(0.25f);
    fill_bytes(&r, b.ql, sizeof(b.ql));
    fill_bytes(&r, b.qh, sizeof(b.qh));
    for (int j = 0; j < 16; j++)
        b.scales[j] = (int8_t)(j * 17 - 128);
    float y[256];
    dequant(FG_TYPE_Q6_K, &b, y, 256);
    for (int e = 0; e < 256; e++) {
        int n = e / 128, rr = e % 128, g = rr / 32, l = rr % 32;
        // groups 0,1: low nibbles of ql[l], ql[l+32]; groups 2,3: high nibbles; 2 bits of qh[l] each
        int lo = g < 2 ? (b.ql[64 * n + l + 32 * g] & 15) : (b.ql[64 * n + l + 32 * (g - 2)] >> 4);
        int hi = (b.qh[32 * n + l] >> (2 * g)) & 3;
        int q = (lo | (hi << 4)) - 32;
        float want = 0.25f * (float)b.scales[e / 16] * (float)q;
        assert_true(y[e] == want);
    }
}

static void test_q3_k_q2_k_known(void **state) {
    (void)state;
    rng r = rng_make(3);
    fg_block_q3_k b3;
    b3.d = fg_f32_to_f16(0.5f);
    fill_bytes(&r, b3.hmask, sizeof(b3.hmask));
    fill_bytes(&r, b3.qs, sizeof(b3.qs));
    fill_bytes(&r, b3.scales, sizeof(b3.scales));
    float y[256];
    dequant(FG_TYPE_Q3_K, &b3, y, 256);
    for (int e = 0; e < 256; e++) {
        int j = e / 16; // 6-bit scale: low 4 bits from byte j%8 (low nibble for j<8), top 2 from byte 8+j%4
        int lo4 = j < 8 ? (b3.scales[j] & 15) : (b3.scales[j - 8] >> 4);
        int hi2 = (b3.scales[8 + j % 4] >> (2 * (j / 4))) & 3;
        int sc = (lo4 | (hi2 << 4)) - 32;
        int n = e / 128, rr = e % 128, sh = rr / 32, l = rr % 32;
        int q2 = (b3.qs[32 * n + l] >> (2 * sh)) & 3;
        int hb = (b3.hmask[l] >> (4 * n + sh)) & 1;
        int q = q2 - (hb ? 0 : 4);
        float want = 0.5f * (float)sc * (float)q;
        assert_true(y[e] == want);
    }
    fg_block_q2_k b2;
    b2.d = fg_f32_to_f16(0.5f);
    b2.dmin = fg_f32_to_f16(0.125f);
    fill_bytes(&r, b2.qs, sizeof(b2.qs));
    fill_bytes(&r, b2.scales, sizeof(b2.scales));
    dequant(FG_TYPE_Q2_K, &b2, y, 256);
    for (int e = 0; e < 256; e++) {
        int sc = b2.scales[e / 16] & 15, m = b2.scales[e / 16] >> 4;
        int n = e / 128, rr = e % 128, sh = rr / 32, l = rr % 32;
        int q = (b2.qs[32 * n + l] >> (2 * sh)) & 3;
        float want = 0.5f * (float)sc * (float)q - 0.125f * (float)m;
        assert_true(y[e] == want);
    }
}

// ---------------------------------------------------------------- activation quantizers
static void test_activation_rounding(void **state) {
    (void)state;
    float x[256] = {0};
    x[0] = 127.0f; // amax 127: d = 1, multiplier 1
    x[1] = 2.5f;
    x[2] = -2.5f;
    x[3] = 3.5f;
    x[4] = 0.49f;
    x[31] = -126.5f;
    // the traits' from_float = ggml's quantize_row_q8_0_ref: roundf, ties away from zero
    fg_block_q8_0 q0;
    fg_type_traits_ref(FG_TYPE_Q8_0)->from_float(x, &q0, 32);
    assert_true(fg_f16_to_f32(q0.d) == 1.0f);
    assert_int_equal(q0.qs[0], 127);
    assert_int_equal(q0.qs[1], 3);
    assert_int_equal(q0.qs[2], -3);
    assert_int_equal(q0.qs[3], 4);
    assert_int_equal(q0.qs[4], 0);
    assert_int_equal(q0.qs[31], -127);
    fg_block_q8_1 q1;
    fg_type_traits_ref(FG_TYPE_Q8_1)->from_float(x, &q1, 32);
    assert_int_equal(q1.qs[1], 3);
    assert_true(fg_f16_to_f32(q1.s) == (float)(127 + 3 - 3 + 4 + 0 - 127));
    // activations (ggml's x86 CPU quantize_row_q8_0/q8_1): ties to even, scalar and AVX2
    for (int use_ref = 1; use_ref >= 0; use_ref--) {
        set_use_ref(use_ref);
        quantize_act(FG_TYPE_Q8_0, x, &q0, 32);
        assert_true(fg_f16_to_f32(q0.d) == 1.0f);
        assert_int_equal(q0.qs[0], 127);
        assert_int_equal(q0.qs[1], 2);
        assert_int_equal(q0.qs[2], -2);
        assert_int_equal(q0.qs[3], 4);
        assert_int_equal(q0.qs[31], -126);
        quantize_act(FG_TYPE_Q8_1, x, &q1, 32);
        assert_int_equal(q1.qs[1], 2);
        assert_int_equal(q1.qs[31], -126);
        assert_true(fg_f16_to_f32(q1.s) == (float)(127 + 2 - 2 + 4 + 0 - 126));
    }
    set_use_ref(false);
    // the multiplier is 127/amax, not 1/(amax/127): amax = 0.3 gives different products
    {
        float amax = 0.3f, d = amax / 127.0f;
        assert_true(127.0f / amax != 1.0f / d); // the two conventions differ for this amax
    }
    // Q8_K: iscale = -127 / max (max = the signed element of largest magnitude), nearest-even
    x[0] = -127.0f;
    x[1] = 2.5f;
    x[2] = 3.5f;
    x[3] = 0.0f;
    x[31] = 100.25f;
    fg_block_q8_k qk;
    quantize_act(FG_TYPE_Q8_K, x, &qk, 256);
    assert_true(qk.d == 1.0f);
    assert_int_equal(qk.qs[0], -127);
    assert_int_equal(qk.qs[1], 2);
    assert_int_equal(qk.qs[2], 4);
    assert_int_equal(qk.qs[31], 100);
    assert_int_equal(qk.bsums[0], -127 + 2 + 4);
    assert_int_equal(qk.bsums[1], 100);
    x[0] = 127.0f; // positive max: negative scale
    quantize_act(FG_TYPE_Q8_K, x, &qk, 256);
    assert_true(qk.d == -1.0f);
    assert_int_equal(qk.qs[0], -127);
    assert_int_equal(qk.qs[1], -2);
    // an all-zero block
    float z[256] = {0};
    quantize_act(FG_TYPE_Q8_K, z, &qk, 256);
    assert_true(qk.d == 0.0f);
    quantize_act(FG_TYPE_Q8_0, z, &q0, 32);
    assert_true(fg_f16_to_f32(q0.d) == 0.0f && q0.qs[5] == 0);
    // float activations
    fg_f16 h[4];
    fg_bf16 bh[4];
    float f[4], in[4] = {1.0f, -2.5f, 65504.0f, 0.1f};
    quantize_act(FG_TYPE_F16, in, h, 4);
    quantize_act(FG_TYPE_BF16, in, bh, 4);
    quantize_act(FG_TYPE_F32, in, f, 4);
    for (int i = 0; i < 4; i++) {
        assert_int_equal(h[i], fg_f32_to_f16(in[i]));
        assert_int_equal(bh[i], fg_f32_to_bf16(in[i]));
        assert_true(f[i] == in[i]);
    }
}

// The AVX2 activation quantizers are bit-identical to the scalar ones (ties included), and
// the ties-to-even convention differs from the reference only at ties and in the multiplier.
static void test_activation_fast_bitexact(void **state) {
    (void)state;
    rng r = rng_make(4);
    enum { N = 32 * 64 };
    float *x = malloc(N * sizeof(float));
    for (int i = 0; i < N; i++)
        x[i] = rng_gauss(&r) * (i % 64 == 0 ? 10.0f : 1.0f);
    for (int i = 0; i < 32; i++) // a block of exact ties
        x[32 + i] = (i == 0) ? 127.0f : (float)(i - 16) + 0.5f;
    static const uint32_t types[] = {FG_TYPE_Q8_0, FG_TYPE_Q8_1};
    for (int k = 0; k < 2; k++) {
        size_t bytes = fg_type_row_size_n(types[k], N);
        void *a = malloc(bytes), *b = malloc(bytes);
        set_use_ref(true);
        quantize_act(types[k], x, a, N);
        set_use_ref(false);
        quantize_act(types[k], x, b, N);
        assert_memory_equal(a, b, bytes);
        free(a);
        free(b);
    }
    fg_block_q8_0 q[N / 32], qr[N / 32];
    quantize_act(FG_TYPE_Q8_0, x, q, N);
    fg_type_traits_ref(FG_TYPE_Q8_0)->from_float(x, qr, N);
    assert_int_equal(q[1].qs[1], -14); // -14.5 -> even
    assert_int_equal(qr[1].qs[1], -15); // -14.5 -> away from zero
    int differ = 0;
    for (int i = 0; i < N / 32; i++) {
        assert_int_equal(q[i].d, qr[i].d);
        for (int j = 0; j < 32; j++) {
            int dq = q[i].qs[j] - qr[i].qs[j];
            assert_true(dq >= -1 && dq <= 1);
            differ += dq != 0;
        }
    }
    printf("  q8_0 activation vs reference quantizer: %d of %d quants differ\n", differ, N);
    free(x);
}

// ---------------------------------------------------------------- round trips
static void test_round_trip(void **state) {
    (void)state;
    rng r = rng_make(5);
    enum { N = 4096 };
    float *x = malloc(N * sizeof(float)), *y = malloc(N * sizeof(float));
    void *q = malloc(N * 4);
    for (int i = 0; i < N; i++)
        x[i] = rng_gauss(&r) * 0.08f;
    // max relative RMS error (rms(err) / rms(x)) per type, gaussian data
    const struct {
        uint32_t t;
        double max_rel_rms;
    } lim[] = {
        {FG_TYPE_F32, 0.0},    {FG_TYPE_F16, 0.0005}, {FG_TYPE_BF16, 0.004}, {FG_TYPE_Q8_0, 0.01},
        {FG_TYPE_Q5_0, 0.05},  {FG_TYPE_Q5_1, 0.05},  {FG_TYPE_Q4_0, 0.11},  {FG_TYPE_Q4_1, 0.1},
        {FG_TYPE_Q6_K, 0.025}, {FG_TYPE_Q5_K, 0.05},  {FG_TYPE_Q4_K, 0.1},   {FG_TYPE_Q3_K, 0.2},
        {FG_TYPE_Q2_K, 0.4},   {FG_TYPE_MXFP4, 0.2},
    };
    for (size_t k = 0; k < sizeof(lim) / sizeof(lim[0]); k++) {
        const fg_type_traits *t = fg_type_traits_ref(lim[k].t);
        t->from_float(x, q, N);
        t->to_float(q, y, N);
        double se = 0, sx = 0;
        for (int i = 0; i < N; i++) {
            se += ((double)y[i] - x[i]) * ((double)y[i] - x[i]);
            sx += (double)x[i] * x[i];
        }
        double rel = sqrt(se / sx);
        printf("  round trip %-5s rel rms err %.5f (limit %.4f)\n", t->name, rel, lim[k].max_rel_rms);
        assert_true(rel <= lim[k].max_rel_rms);
    }
    // element-wise bounds of the legacy formats: Q8_0 <= d/2 (+ the f16 rounding of d),
    // Q4_0 <= d (the clamped side), where d is the block's scale
    fg_block_q8_0 *b8 = q;
    fg_type_traits_ref(FG_TYPE_Q8_0)->from_float(x, q, N);
    dequant(FG_TYPE_Q8_0, q, y, N);
    for (int i = 0; i < N; i++) {
        float d = fabsf(fg_f16_to_f32(b8[i / 32].d));
        float err = fabsf(y[i] - x[i]);
        assert_true(err <= d * (0.5f + 127.0f / 2048.0f) + 1e-9f);
    }
    fg_block_q4_0 *b4 = q;
    fg_type_traits_ref(FG_TYPE_Q4_0)->from_float(x, q, N);
    dequant(FG_TYPE_Q4_0, q, y, N);
    for (int i = 0; i < N; i++) {
        float d = fabsf(fg_f16_to_f32(b4[i / 32].d));
        assert_true(fabsf(y[i] - x[i]) <= d * 1.01f + 1e-9f);
    }
    free(x);
    free(y);
    free(q);
}

// ---------------------------------------------------------------- vec_dot
// dot of the dequantized weight row with the dequantized activation row, in double
static double dot_ref(uint32_t wt, const void *w, uint32_t at, const void *a, int64_t n, double *abs_sum) {
    float *fw = malloc((size_t)n * 4), *fa = malloc((size_t)n * 4);
    dequant(wt, w, fw, n);
    dequant(at, a, fa, n);
    double s = 0, as = 0;
    for (int64_t i = 0; i < n; i++) {
        s += (double)fw[i] * fa[i];
        as += fabs((double)fw[i] * fa[i]);
    }
    if (at == FG_TYPE_Q8_1) {
        // Q8_1 carries s = f16(d * sum(q)); the dot uses m * s for the weights' offsets m
        const fg_block_q8_1 *qa = a;
        for (int64_t b = 0; b < n / 32; b++) {
            fg_f16 hm;
            size_t bs = wt == FG_TYPE_Q4_1 ? sizeof(fg_block_q4_1) : sizeof(fg_block_q5_1);
            memcpy(&hm, (const char *)w + (size_t)b * bs + 2, 2); // d, m, ...
            int sq = 0;
            for (int j = 0; j < 32; j++)
                sq += qa[b].qs[j];
            double exact = (double)fg_f16_to_f32(qa[b].d) * sq;
            s += (double)fg_f16_to_f32(hm) * ((double)fg_f16_to_f32(qa[b].s) - exact);
        }
    }
    free(fw);
    free(fa);
    *abs_sum = as;
    return s;
}

static void check_vec_dot(int64_t n, int rows, uint32_t salt) {
    rng r = rng_make(salt);
    float *x = malloc((size_t)n * 4), *act = malloc((size_t)n * 4);
    void *w = malloc((size_t)n * 4 * (size_t)rows), *qa = malloc((size_t)n * 4 + 4096);
    for (int64_t i = 0; i < n; i++)
        act[i] = rng_gauss(&r) * (i % 97 == 0 ? 4.0f : 1.0f);
    for (size_t k = 0; k < N_WEIGHT_TYPES; k++) {
        uint32_t type = k_weight_types[k];
        const fg_type_traits *ref = fg_type_traits_ref(type);
        set_use_ref(false);
        const fg_type_traits *fast = kernels(type);
        if (n % ref->blck_size != 0)
            continue;
        size_t row = fg_type_row_size_n(type, n);
        for (int rI = 0; rI < rows; rI++) {
            for (int64_t i = 0; i < n; i++)
                x[i] = rng_gauss(&r) * 0.08f + (rI == 1 ? 0.05f : 0.0f);
            ref->from_float(x, (char *)w + row * (size_t)rI, n);
        }
        quantize_act(ref->vec_dot_type, act, qa, n);
        double worst_ref = 0, worst_fast = 0;
        for (int rI = 0; rI < rows; rI++) {
            const void *wr = (const char *)w + row * (size_t)rI;
            double abs_sum;
            double want = dot_ref(type, wr, ref->vec_dot_type, qa, n, &abs_sum);
            float s_ref = NAN, s_fast = NAN;
            ref->vec_dot(n, &s_ref, wr, qa);
            fast->vec_dot(n, &s_fast, wr, qa);
            double e_ref = fabs(s_ref - want) / abs_sum, e_fast = fabs(s_fast - want) / abs_sum;
            double e_rf = fabs((double)s_ref - s_fast) / abs_sum;
            worst_ref = e_ref > worst_ref || isnan(e_ref) ? e_ref : worst_ref;
            worst_fast = e_fast > worst_fast || isnan(e_fast) ? e_fast : worst_fast;
            if (!(e_ref <= 1e-5) || !(e_fast <= 1e-5) || !(e_rf <= 1e-5))
                fail_msg("%s n=%lld row %d: ref %.9g fast %.9g double %.9g (abs sum %.6g)", ref->name,
                         (long long)n, rI, (double)s_ref, (double)s_fast, want, abs_sum);
        }
        printf("  vec_dot %-5s n=%-5lld rows=%d worst rel err: ref %.2e fast %.2e\n", ref->name,
               (long long)n, rows, worst_ref, worst_fast);
    }
    free(x);
    free(act);
    free(w);
    free(qa);
}

static void test_vec_dot_4096(void **state) {
    (void)state;
    check_vec_dot(4096, 3, 6);
}
static void test_vec_dot_odd_sizes(void **state) {
    (void)state;
    check_vec_dot(768, 7, 7);  // 3 super-blocks, 24 small blocks, odd row count
    check_vec_dot(224, 5, 8);  // 7 small blocks (no K-quants)
    check_vec_dot(1001, 3, 9); // float types only: SIMD tails
    check_vec_dot(32, 1, 10);
}

// vec_dot of hand-built blocks against the hand-derived value (integer arithmetic).
static void test_vec_dot_known(void **state) {
    (void)state;
    fg_block_q4_0 w;
    w.d = fg_f32_to_f16(0.5f);
    for (int j = 0; j < 16; j++)
        w.qs[j] = (uint8_t)(j | ((15 - j) << 4));
    fg_block_q8_0 a;
    a.d = fg_f32_to_f16(0.25f);
    long isum = 0;
    for (int j = 0; j < 32; j++) {
        a.qs[j] = (int8_t)(j - 10);
        int q = j < 16 ? j - 8 : (15 - (j - 16)) - 8;
        isum += q * (j - 10);
    }
    for (int use_ref = 1; use_ref >= 0; use_ref--) {
        set_use_ref(use_ref);
        float s = NAN;
        kernels(FG_TYPE_Q4_0)->vec_dot(32, &s, &w, &a);
        assert_true(s == (float)isum * 0.125f);
    }
    set_use_ref(false);
}

// ---------------------------------------------------------------- ggml x86 arithmetic
// The fast Q8_0/Q4_0/Q5_0/Q4_K/Q6_K kernels follow ggml's x86 AVX2 kernels (which produced the
// goldens): int32 lane k holds the products of elements 4k..4k+3 of each 32-element group,
// per block acc[k] = fma(d, lane[k], acc[k]), then the 8 lanes are summed as
// ((a0+a4)+(a2+a6)) + ((a1+a5)+(a3+a7)). This emulation must match them bit for bit.
static float hsum8(const float *a) {
    float s0 = a[0] + a[4], s1 = a[1] + a[5], s2 = a[2] + a[6], s3 = a[3] + a[7];
    return (s0 + s2) + (s1 + s3);
}

static float emulate_32(uint32_t type, const void *w, const fg_block_q8_0 *a, int64_t n) {
    float acc[8] = {0}, y[32];
    size_t bs = fg_type_traits_ref(type)->type_size;
    for (int64_t b = 0; b < n / 32; b++) {
        const void *blk = (const char *)w + (size_t)b * bs;
        fg_f16 hd;
        memcpy(&hd, blk, 2); // Q8_0, Q4_0 and Q5_0 start with d
        float dw = fg_f16_to_f32(hd);
        dequant(type, blk, y, 32);
        int32_t lane[8] = {0};
        for (int e = 0; e < 32; e++)
            lane[(e % 32) / 4] += (int32_t)lrintf(y[e] / dw) * a[b].qs[e];
        float d = dw * fg_f16_to_f32(a[b].d);
        for (int k = 0; k < 8; k++)
            acc[k] = fmaf(d, (float)lane[k], acc[k]);
    }
    return hsum8(acc);
}

static float emulate_q6_k(const fg_block_q6_k *w, const fg_block_q8_k *a, int64_t n) {
    float acc[8] = {0};
    for (int64_t b = 0; b < n / 256; b++) {
        int32_t lane[8] = {0};
        for (int e = 0; e < 256; e++) {
            int nn = e / 128, rr = e % 128, g = rr / 32, l = rr % 32;
            int lo = g < 2 ? (w[b].ql[64 * nn + l + 32 * g] & 15) : (w[b].ql[64 * nn + l + 32 * (g - 2)] >> 4);
            int hi = (w[b].qh[32 * nn + l] >> (2 * g)) & 3;
            lane[(e % 32) / 4] += w[b].scales[e / 16] * (((lo | (hi << 4)) - 32) * a[b].qs[e]);
        }
        float d = a[b].d * fg_f16_to_f32(w[b].d);
        for (int k = 0; k < 8; k++)
            acc[k] = fmaf(d, (float)lane[k], acc[k]);
    }
    return hsum8(acc);
}

static float emulate_q4_k(const fg_block_q4_k *w, const fg_block_q8_k *a, int64_t n) {
    float acc[8] = {0}, accm[4] = {0};
    for (int64_t b = 0; b < n / 256; b++) {
        int32_t lane[8] = {0}, prod[4] = {0};
        int sc[8], m[8];
        for (int j = 0; j < 8; j++)
            k4_scale(w[b].scales, j, &sc[j], &m[j]);
        for (int e = 0; e < 256; e++) {
            int c = e / 64, rr = e % 64;
            int q = rr < 32 ? (w[b].qs[32 * c + rr] & 15) : (w[b].qs[32 * c + rr - 32] >> 4);
            lane[(e % 32) / 4] += sc[e / 32] * (q * a[b].qs[e]);
        }
        for (int j = 0; j < 8; j++)
            prod[j / 2] += m[j] * (a[b].bsums[2 * j] + a[b].bsums[2 * j + 1]);
        float d = a[b].d * fg_f16_to_f32(w[b].d), dmin = -a[b].d * fg_f16_to_f32(w[b].dmin);
        for (int k = 0; k < 4; k++)
            accm[k] = fmaf(dmin, (float)prod[k], accm[k]);
        for (int k = 0; k < 8; k++)
            acc[k] = fmaf(d, (float)lane[k], acc[k]);
    }
    return hsum8(acc) + ((accm[0] + accm[2]) + (accm[1] + accm[3]));
}

static void test_fast_matches_ggml_x86_order(void **state) {
    (void)state;
    if (strncmp(fg_cpu_simd_name(), "avx2", 4) != 0) {
        printf("  scalar build: the fast kernels are the reference ones\n");
        return;
    }
    rng r = rng_make(11);
    enum { N = 2048 };
    float *x = malloc(N * 4), *act = malloc(N * 4);
    void *w = malloc(N * 4), *qa = malloc(N * 4);
    for (int i = 0; i < N; i++)
        act[i] = rng_gauss(&r);
    set_use_ref(false);
    for (int rep = 0; rep < 4; rep++) {
        for (int i = 0; i < N; i++)
            x[i] = rng_gauss(&r) * 0.08f + (rep == 3 ? 0.03f : 0.0f);
        static const uint32_t t32[] = {FG_TYPE_Q8_0, FG_TYPE_Q4_0, FG_TYPE_Q5_0};
        for (int k = 0; k < 3; k++) {
            const fg_type_traits *t = kernels(t32[k]);
            t->from_float(x, w, N);
            quantize_act(FG_TYPE_Q8_0, act, qa, N);
            float got = NAN, want = emulate_32(t32[k], w, qa, N);
            t->vec_dot(N, &got, w, qa);
            if (got != want)
                fail_msg("%s: fast %.9g != ggml-order %.9g", t->name, (double)got, (double)want);
        }
        quantize_act(FG_TYPE_Q8_K, act, qa, N);
        float got = NAN;
        kernels(FG_TYPE_Q6_K)->from_float(x, w, N);
        kernels(FG_TYPE_Q6_K)->vec_dot(N, &got, w, qa);
        assert_true(got == emulate_q6_k(w, qa, N));
        kernels(FG_TYPE_Q4_K)->from_float(x, w, N);
        kernels(FG_TYPE_Q4_K)->vec_dot(N, &got, w, qa);
        assert_true(got == emulate_q4_k(w, qa, N));
    }
    free(x);
    free(act);
    free(w);
    free(qa);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_geometry),
        cmocka_unit_test(test_q4_0_known),
        cmocka_unit_test(test_q4_1_q5_known),
        cmocka_unit_test(test_mxfp4_known),
        cmocka_unit_test(test_q4_k_q5_k_known),
        cmocka_unit_test(test_q6_k_known),
        cmocka_unit_test(test_q3_k_q2_k_known),
        cmocka_unit_test(test_activation_rounding),
        cmocka_unit_test(test_activation_fast_bitexact),
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_vec_dot_known),
        cmocka_unit_test(test_vec_dot_4096),
        cmocka_unit_test(test_vec_dot_odd_sizes),
        cmocka_unit_test(test_fast_matches_ggml_x86_order),
    };
    printf("test_quant: seed %u\n", SEED);
    return cmocka_run_group_tests_name("quant", tests, NULL, NULL);
}
