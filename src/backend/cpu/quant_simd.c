// quant_simd.c - AVX2/FMA/F16C fast paths of vec_dot (and of the Q8_0 activation quantizer).
// Each computes the same integer sums per block as its scalar reference in quant_ref.c /
// quant_kquants.c; only the float accumulation order differs (8 lanes, FMA). The Q8_0
// quantizer is bit-identical to the reference. Compiled only with -mavx2 -mfma -mf16c
// (-march=native); cpu_kernels.c falls back to the scalar kernels otherwise.
#include "backend/cpu/cpu_kernels.h"
#include "quant/quant_internal.h"

#ifdef FG_CPU_HAVE_AVX2
#include <immintrin.h>
#include <math.h>

// F16C conversion: the same value as fg_f16_to_f32 for every half (exact widening).
static inline float h2f(fg_f16 h) { return _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h))); }

static inline float hsum_ps(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

// Signed int8 x signed int8, 32 lanes -> 8 int32 sums of 4 (x, y in [-127, 127]).
// With AVX-512 VNNI (or AVX-VNNI) one dpbusd does the maddubs + madd (same integers).
static inline __m256i dot_i8(__m256i x, __m256i y) {
    __m256i ax = _mm256_sign_epi8(x, x), sy = _mm256_sign_epi8(y, x);
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), ax, sy);
#elif defined(__AVXVNNI__)
    return _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), ax, sy);
#else
    return _mm256_madd_epi16(_mm256_maddubs_epi16(ax, sy), _mm256_set1_epi16(1));
#endif
}
// Unsigned int8 (<= 127 per pair sum) x signed int8 -> 16 int16 pair sums.
static inline __m256i dot_u8_i16(__m256i ux, __m256i y) { return _mm256_maddubs_epi16(ux, y); }

// 16 bytes of nibbles -> 32 bytes: low nibbles in the low lane (elements 0..15), high in the high.
static inline __m256i nibbles_32(const uint8_t *p) {
    __m128i t = _mm_loadu_si128((const __m128i *)p);
    __m256i v = _mm256_set_m128i(_mm_srli_epi16(t, 4), t);
    return _mm256_and_si256(v, _mm256_set1_epi8(0x0F));
}
// 32 bits -> 32 bytes of 0xFF (bit set) / 0x00.
static inline __m256i bits_32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    const __m256i shuf = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202,
                                           0x0101010101010101, 0x0000000000000000);
    __m256i bytes = _mm256_shuffle_epi8(_mm256_set1_epi32((int)v), shuf);
    bytes = _mm256_or_si256(bytes, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe));
    return _mm256_cmpeq_epi8(bytes, _mm256_set1_epi64x(-1));
}

static inline __m256i load32(const void *p) { return _mm256_loadu_si256((const __m256i *)p); }

// ---------------------------------------------------------------- float types
void fg_vec_dot_f32_avx2(int64_t n, float *s, const void *x, const void *y) {
    const float *a = x, *b = y;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = acc0, acc2 = acc0, acc3 = acc0;
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), acc1);
        acc2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(b + i + 16), acc2);
        acc3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(b + i + 24), acc3);
    }
    for (; i + 8 <= n; i += 8)
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
    float sum = hsum_ps(_mm256_add_ps(_mm256_add_ps(acc0, acc1), _mm256_add_ps(acc2, acc3)));
    for (; i < n; i++)
        sum += a[i] * b[i];
    *s = sum;
}

static inline __m256 load_f16x8(const fg_f16 *p) {
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}
void fg_vec_dot_f16_avx2(int64_t n, float *s, const void *x, const void *y) {
    const fg_f16 *a = x, *b = y;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = acc0, acc2 = acc0, acc3 = acc0;
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        acc0 = _mm256_fmadd_ps(load_f16x8(a + i), load_f16x8(b + i), acc0);
        acc1 = _mm256_fmadd_ps(load_f16x8(a + i + 8), load_f16x8(b + i + 8), acc1);
        acc2 = _mm256_fmadd_ps(load_f16x8(a + i + 16), load_f16x8(b + i + 16), acc2);
        acc3 = _mm256_fmadd_ps(load_f16x8(a + i + 24), load_f16x8(b + i + 24), acc3);
    }
    for (; i + 8 <= n; i += 8)
        acc0 = _mm256_fmadd_ps(load_f16x8(a + i), load_f16x8(b + i), acc0);
    float sum = hsum_ps(_mm256_add_ps(_mm256_add_ps(acc0, acc1), _mm256_add_ps(acc2, acc3)));
    for (; i < n; i++)
        sum += h2f(a[i]) * h2f(b[i]);
    *s = sum;
}

static inline __m256 load_bf16x8(const fg_bf16 *p) {
    __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
}
void fg_vec_dot_bf16_avx2(int64_t n, float *s, const void *x, const void *y) {
    const fg_bf16 *a = x, *b = y;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = acc0, acc2 = acc0, acc3 = acc0;
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        acc0 = _mm256_fmadd_ps(load_bf16x8(a + i), load_bf16x8(b + i), acc0);
        acc1 = _mm256_fmadd_ps(load_bf16x8(a + i + 8), load_bf16x8(b + i + 8), acc1);
        acc2 = _mm256_fmadd_ps(load_bf16x8(a + i + 16), load_bf16x8(b + i + 16), acc2);
        acc3 = _mm256_fmadd_ps(load_bf16x8(a + i + 24), load_bf16x8(b + i + 24), acc3);
    }
    for (; i + 8 <= n; i += 8)
        acc0 = _mm256_fmadd_ps(load_bf16x8(a + i), load_bf16x8(b + i), acc0);
    float sum = hsum_ps(_mm256_add_ps(_mm256_add_ps(acc0, acc1), _mm256_add_ps(acc2, acc3)));
    for (; i < n; i++)
        sum += fg_bf16_to_f32(a[i]) * fg_bf16_to_f32(b[i]);
    *s = sum;
}

// ---------------------------------------------------------------- 32-element blocks
void fg_vec_dot_q8_0_avx2(int64_t n, float *s, const void *x, const void *y) {
    const fg_block_q8_0 *a = x, *b = y;
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / FG_QK8_0; i++) {
        __m256i p = dot_i8(load32(a[i].qs), load32(b[i].qs));
        __m256 d = _mm256_set1_ps(h2f(a[i].d) * h2f(b[i].d));
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(p), acc);
    }
    *s = hsum_ps(acc);
}

void fg_vec_dot_q4_0_avx2(int64_t n, float *s, const void *x, const void *y) {
    const fg_block_q4_0 *a = x;
    const fg_block_q8_0 *b = y;
    __m256 acc = _mm256_setzero_ps();
    const __m256i off = _mm256_set1_epi8(8);
    for (int64_t i = 0; i < n / FG_QK4_0; i++) {
        __m256i q = _mm256_sub_epi8(nibbles_32(a[i].qs), off);
        __m256i p = dot_i8(q, load32(b[i].qs));
        __m256 d = _mm256_set1_ps(h2f(a[i].d) * h2f(b[i].d));
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(p), acc);
    }
    *s = hsum_ps(acc);
}

void fg_vec_dot_q4_1_avx2(int64_t n, float *s, const void *x, const void *y) {
    const fg_block_q4_1 *a = x;
    const fg_block_q8_1 *b = y;
    __m256 acc = _mm256_setzero_ps();
    float summ = 0.0f;
    for (int64_t i = 0; i < n / FG_QK4_1; i++) {
        __m256i p = _mm256_madd_epi16(dot_u8_i16(nibbles_32(a[i].qs), load32(b[i].qs)), _mm256_set1_epi16(1));
        __m256 d = _mm256_set1_ps(h2f(a[i].d) * h2f(b[i].d));
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(p), acc);
        summ += h2f(a[i].m) * h2f(b[i].s);
    }
    *s = hsum_ps(acc) + summ;
}

void fg_vec_dot_q5_0_avx2(int64_t n, float *s, const void *x, const void *y) {
    const fg_block_q5_0 *a = x;
    const fg_block_q8_0 *b = y;
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / FG_QK5_0; i++) {
        // bit clear: nibble - 16 = nibble | 0xF0 (as int8); bit set: the nibble + 16 - 16
        __m256i hb = _mm256_andnot_si256(bits_32(a[i].qh), _mm256_set1_epi8((char)0xF0));
        __m256i q = _mm256_or_si256(nibbles_32(a[i].qs), hb);
        __m256i p = dot_i8(q, load32(b[i].qs));
        __m256 d = _mm256_set1_ps(h2f(a[i].d) * h2f(b[i].d));
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(p), acc);
    }
    *s = hsum_ps(acc);
}

void fg_vec_dot_q5_1_avx2(int64_t n, float *s, const void *x, const void *y) {
    const fg_block_q5_1 *a = x;
    const fg_block_q8_1 *b = y;
    __m256 acc = _mm256_setzero_ps();
    float summ = 0.0f;
    for (int64_t i = 0; i < n / FG_QK5_1; i++) {
        __m256i hb = _mm256_and_si256(bits_32(a[i].qh), _mm256_set1_epi8(0x10));
        __m256i q = _mm256_or_si256(nibbles_32(a[i].qs), hb);
        __m256i p = _mm256_madd_epi16(dot_u8_i16(q, load32(b[i].qs)), _mm256_set1_epi16(1));
        __m256 d = _mm256_set1_ps(h2f(a[i].d) * h2f(b[i].d));
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(p), acc);
        summ += h2f(a[i].m) * h2f(b[i].s);
    }
    *s = hsum_ps(acc) + summ;
}

void fg_vec_dot_mxfp4_avx2(int64_t n, float *s, const void *x, const void *y) {
    const fg_block_mxfp4 *a = x;
    const fg_block_q8_0 *b = y;
    const __m128i t = _mm_loadu_si128((const __m128i *)fg_kvalues_mxfp4);
    const __m256i table = _mm256_set_m128i(t, t);
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / FG_QK_MXFP4; i++) {
        __m256i q = _mm256_shuffle_epi8(table, nibbles_32(a[i].qs));
        __m256i p = dot_i8(q, load32(b[i].qs));
        __m256 d = _mm256_set1_ps(fg_e8m0_to_f32_half(a[i].e) * h2f(b[i].d));
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(p), acc);
    }
    *s = hsum_ps(acc);
}

// ---------------------------------------------------------------- K-quants
// scale pair for the two 16-element halves of a 32-byte maddubs result (int16 lanes 0-7 | 8-15)
static inline __m256i scale_pair(int lo, int hi) {
    return _mm256_set_m128i(_mm_set1_epi16((short)hi), _mm_set1_epi16((short)lo));
}

void fg_vec_dot_q2_k_avx2(int64_t n, float *s, const void *x, const void *y) {
    const fg_block_q2_k *a = x;
    const fg_block_q8_k *b = y;
    const __m256i m3 = _mm256_set1_epi8(3);
    __m256 acc = _mm256_setzero_ps();
    float accm = 0.0f;
    for (int64_t i = 0; i < n / FG_QK_K; i++) {
        int summ = 0;
        for (int j = 0; j < 16; j++)
            summ += (a[i].scales[j] >> 4) * b[i].bsums[j];
        __m256i sumi = _mm256_setzero_si256();
        for (int nn = 0; nn < 2; nn++) {
            __m256i q2 = load32(a[i].qs + 32 * nn);
            for (int j = 0; j < 4; j++) {
                __m256i v = _mm256_and_si256(_mm256_srl_epi16(q2, _mm_cvtsi32_si128(2 * j)), m3);
                __m256i p = dot_u8_i16(v, load32(b[i].qs + 128 * nn + 32 * j));
                int is = 8 * nn + 2 * j;
                p = _mm256_madd_epi16(p, scale_pair(a[i].scales[is] & 0xF, a[i].scales[is + 1] & 0xF));
                sumi = _mm256_add_epi32(sumi, p);
            }
        }
        float dall = b[i].d * h2f(a[i].d), dmin = b[i].d * h2f(a[i].dmin);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(dall), _mm256_cvtepi32_ps(sumi), acc);
        accm += dmin * (float)summ;
    }
    *s = hsum_ps(acc) - accm;
}

void fg_vec_dot_q3_k_avx2(int64_t n, float *s, const void *x, const void *y) {
    const fg_block_q3_k *a = x;
    const fg_block_q8_k *b = y;
    const __m256i m3 = _mm256_set1_epi8(3), one = _mm256_set1_epi8(1);
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / FG_QK_K; i++) {
        uint8_t usc[16];
        fg_q3_k_scales(a[i].scales, usc);
        int bias = 0; // q = (q2 | hbit << 2) - 4: the "- 4" times the Q8_K sums
        for (int j = 0; j < 16; j++)
            bias += (usc[j] - 32) * b[i].bsums[j];
        const __m256i hm = load32(a[i].hmask);
        __m256i sumi = _mm256_setzero_si256();
        for (int nn = 0; nn < 2; nn++) {
            __m256i q2 = load32(a[i].qs + 32 * nn);
            for (int j = 0; j < 4; j++) {
                __m256i v = _mm256_and_si256(_mm256_srl_epi16(q2, _mm_cvtsi32_si128(2 * j)), m3);
                __m256i h = _mm256_and_si256(_mm256_srl_epi16(hm, _mm_cvtsi32_si128(4 * nn + j)), one);
                v = _mm256_or_si256(v, _mm256_slli_epi16(h, 2));
                __m256i p = dot_u8_i16(v, load32(b[i].qs + 128 * nn + 32 * j));
                int is = 8 * nn + 2 * j;
                p = _mm256_madd_epi16(p, scale_pair(usc[is] - 32, usc[is + 1] - 32));
                sumi = _mm256_add_epi32(sumi, p);
            }
        }
        float d = h2f(a[i].d) * b[i].d;
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(_mm256_sub_epi32(sumi, _mm256_setr_epi32(4 * bias, 0, 0, 0, 0, 0, 0, 0))), acc);
    }
    *s = hsum_ps(acc);
}

// Q4_K: the same integer lanes and float operations as ggml's x86 AVX2 kernel (the mins in a
// 4-lane accumulator, one per pair of sub-blocks), so the result is the same bit for bit.
void fg_vec_dot_q4_k_avx2(int64_t n, float *s, const void *x, const void *y) {
    const fg_block_q4_k *a = x;
    const fg_block_q8_k *b = y;
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    __m256 acc = _mm256_setzero_ps();
    __m128 accm = _mm_setzero_ps();
    for (int64_t i = 0; i < n / FG_QK_K; i++) {
        uint8_t sc[8], mn[8];
        int32_t prod[4];
        for (int j = 0; j < 8; j++)
            fg_get_scale_min_k4(j, a[i].scales, &sc[j], &mn[j]);
        for (int k = 0; k < 4; k++) // sub-blocks 2k, 2k+1: mins times the Q8_K sums of 32
            prod[k] = mn[2 * k] * (b[i].bsums[4 * k] + b[i].bsums[4 * k + 1]) +
                      mn[2 * k + 1] * (b[i].bsums[4 * k + 2] + b[i].bsums[4 * k + 3]);
        float d = b[i].d * h2f(a[i].d), dmin = -b[i].d * h2f(a[i].dmin);
        accm = _mm_fmadd_ps(_mm_set1_ps(dmin), _mm_cvtepi32_ps(_mm_loadu_si128((const __m128i *)prod)), accm);
        __m256i sumi = _mm256_setzero_si256();
        for (int c = 0; c < 4; c++) {
            __m256i q4 = load32(a[i].qs + 32 * c);
            __m256i lo = _mm256_and_si256(q4, m4), hi = _mm256_and_si256(_mm256_srli_epi16(q4, 4), m4);
            __m256i p0 = dot_u8_i16(lo, load32(b[i].qs + 64 * c));
            __m256i p1 = dot_u8_i16(hi, load32(b[i].qs + 64 * c + 32));
            p0 = _mm256_madd_epi16(p0, _mm256_set1_epi16(sc[2 * c]));
            p1 = _mm256_madd_epi16(p1, _mm256_set1_epi16(sc[2 * c + 1]));
            sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p0, p1));
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    accm = _mm_add_ps(accm, _mm_movehl_ps(accm, accm));
    accm = _mm_add_ss(accm, _mm_movehdup_ps(accm));
    *s = hsum_ps(acc) + _mm_cvtss_f32(accm);
}

void fg_vec_dot_q5_k_avx2(int64_t n, float *s, const void *x, const void *y) {
    const fg_block_q5_k *a = x;
    const fg_block_q8_k *b = y;
    const __m256i m4 = _mm256_set1_epi8(0x0F), one = _mm256_set1_epi8(1);
    __m256 acc = _mm256_setzero_ps();
    float accm = 0.0f;
    for (int64_t i = 0; i < n / FG_QK_K; i++) {
        uint8_t sc[8], mn[8];
        int summ = 0;
        for (int j = 0; j < 8; j++) {
            fg_get_scale_min_k4(j, a[i].scales, &sc[j], &mn[j]);
            summ += mn[j] * (b[i].bsums[2 * j] + b[i].bsums[2 * j + 1]);
        }
        const __m256i hbits = load32(a[i].qh);
        __m256i sumi = _mm256_setzero_si256();
        for (int c = 0; c < 4; c++) {
            __m256i q4 = load32(a[i].qs + 32 * c);
            __m256i h0 = _mm256_and_si256(_mm256_srl_epi16(hbits, _mm_cvtsi32_si128(2 * c)), one);
            __m256i h1 = _mm256_and_si256(_mm256_srl_epi16(hbits, _mm_cvtsi32_si128(2 * c + 1)), one);
            __m256i lo = _mm256_or_si256(_mm256_and_si256(q4, m4), _mm256_slli_epi16(h0, 4));
            __m256i hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q4, 4), m4), _mm256_slli_epi16(h1, 4));
            __m256i p0 = dot_u8_i16(lo, load32(b[i].qs + 64 * c));
            __m256i p1 = dot_u8_i16(hi, load32(b[i].qs + 64 * c + 32));
            p0 = _mm256_madd_epi16(p0, _mm256_set1_epi16(sc[2 * c]));
            p1 = _mm256_madd_epi16(p1, _mm256_set1_epi16(sc[2 * c + 1]));
            sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p0, p1));
        }
        float d = b[i].d * h2f(a[i].d), dmin = -b[i].d * h2f(a[i].dmin);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
        accm += dmin * (float)summ;
    }
    *s = hsum_ps(acc) + accm;
}

// Q6_K: the "- 32" is applied in the int16 lanes (sum(q * y) - 32 * sum(y) per pair), as in
// ggml's x86 AVX2 kernel, so the int32 lanes and the float result match it bit for bit.
void fg_vec_dot_q6_k_avx2(int64_t n, float *s, const void *x, const void *y) {
    const fg_block_q6_k *a = x;
    const fg_block_q8_k *b = y;
    const __m256i m4 = _mm256_set1_epi8(0x0F), m2 = _mm256_set1_epi8(3), m32 = _mm256_set1_epi8(32);
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / FG_QK_K; i++) {
        const int8_t *sc = a[i].scales;
        __m256i sumi = _mm256_setzero_si256();
        for (int nn = 0; nn < 2; nn++) {
            const uint8_t *ql = a[i].ql + 64 * nn, *qh = a[i].qh + 32 * nn;
            const int8_t *q8 = b[i].qs + 128 * nn, *s8 = sc + 8 * nn;
            __m256i l0 = load32(ql), l1 = load32(ql + 32), h = load32(qh);
            __m256i q[4];
            q[0] = _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_slli_epi16(_mm256_and_si256(h, m2), 4));
            q[1] = _mm256_or_si256(_mm256_and_si256(l1, m4),
                                   _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 2), m2), 4));
            q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),
                                   _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 4), m2), 4));
            q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                                   _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 6), m2), 4));
            for (int k = 0; k < 4; k++) {
                __m256i yk = load32(q8 + 32 * k);
                __m256i p = _mm256_sub_epi16(dot_u8_i16(q[k], yk), dot_u8_i16(m32, yk));
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, scale_pair(s8[2 * k], s8[2 * k + 1])));
            }
        }
        float d = b[i].d * h2f(a[i].d);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    *s = hsum_ps(acc);
}

// ---------------------------------------------------------------- Q8_0 / Q8_1 activations
// Bit-identical to fg_quant_q8_0_act / fg_quant_q8_1_act (ggml's x86 quantize_row_q8_0/q8_1):
// multiplier 127 / amax, round to nearest even.
static inline int quant_act_block(const float *x, int8_t *qs, fg_f16 *hd, float *dout) {
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256 v[4];
    __m256 mx = _mm256_setzero_ps();
    for (int k = 0; k < 4; k++) {
        v[k] = _mm256_loadu_ps(x + 8 * k);
        mx = _mm256_max_ps(mx, _mm256_and_ps(v[k], absmask));
    }
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    float amax = _mm_cvtss_f32(m);
    float d = amax / 127.0f, id = amax != 0.0f ? 127.0f / amax : 0.0f;
    *hd = fg_f32_to_f16(d);
    *dout = d;
    __m256 vid = _mm256_set1_ps(id);
    __m256i qi[4];
    for (int k = 0; k < 4; k++)
        qi[k] = _mm256_cvtps_epi32(
            _mm256_round_ps(_mm256_mul_ps(v[k], vid), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    __m256i sum = _mm256_add_epi32(_mm256_add_epi32(qi[0], qi[1]), _mm256_add_epi32(qi[2], qi[3]));
    __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
    s4 = _mm_add_epi32(s4, _mm_unpackhi_epi64(s4, s4));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, _MM_SHUFFLE(2, 3, 0, 1)));
    // int32 -> int16 -> int8; the packs work per 128-bit lane, the permute restores the order
    __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(qi[0], qi[1]), _mm256_packs_epi32(qi[2], qi[3]));
    p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256((__m256i *)qs, p);
    return _mm_cvtsi128_si32(s4);
}

void fg_quant_q8_0_act_avx2(const float *src, void *dst, int64_t n) {
    fg_block_q8_0 *b = dst;
    float d;
    for (int64_t i = 0; i < n / FG_QK8_0; i++)
        (void)quant_act_block(src + i * 32, b[i].qs, &b[i].d, &d);
}

void fg_quant_q8_1_act_avx2(const float *src, void *dst, int64_t n) {
    fg_block_q8_1 *b = dst;
    float d;
    for (int64_t i = 0; i < n / FG_QK8_1; i++) {
        int sum = quant_act_block(src + i * 32, b[i].qs, &b[i].d, &d);
        b[i].s = fg_f32_to_f16(d * (float)sum);
    }
}

#else
typedef int fg_quant_simd_empty; // this build has no AVX2 fast paths
#endif
