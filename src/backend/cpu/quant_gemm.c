// quant_gemm.c - multi-row dot products (prefill): fg_cpu_gemm computes tiles of (weight rows x
// activation rows), decoding each weight block once per several activation rows. Every output
// is bit for bit the type's single-row vec_dot (quant_simd.c): the same int32 lanes per block
// (exact integer sums, computed differently) and the same float operations in the same order
// per output; only independent outputs are interleaved. Without a kernel here (reference table,
// build without AVX2, other types) it loops over vec_dot.
#include "backend/cpu/cpu_kernels.h"
#include "quant/quant_internal.h"

#include "base/status.h"

typedef void (*gemm_kernel)(int64_t n, const char *w, size_t ws, const char *x, size_t xs, float *d,
                            size_t ds);

// Reference / fallback: one vec_dot per output.
static void gemm_loop(fg_vec_dot_fn vd, int64_t n, int64_t n_w, int64_t n_x, const char *w, size_t ws,
                      const char *x, size_t xs, float *d, size_t ds) {
    for (int64_t r = 0; r < n_x; r++)
        for (int64_t o = 0; o < n_w; o++)
            vd(n, d + r * ds + o, w + o * ws, x + r * xs);
}

#ifdef FG_CPU_HAVE_AVX2
#include <immintrin.h>

#define FG_AI static inline __attribute__((always_inline))
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
#define GEMM_VNNI 1
#define dpbusd(acc, u, s) _mm256_dpbusd_epi32(acc, u, s)
#define dpwssd(acc, a, b) _mm256_dpwssd_epi32(acc, a, b)
#elif defined(__AVXVNNI__)
#define GEMM_VNNI 1
#define dpbusd(acc, u, s) _mm256_dpbusd_avx_epi32(acc, u, s)
#define dpwssd(acc, a, b) _mm256_dpwssd_avx_epi32(acc, a, b)
#else
#define dpwssd(acc, a, b) _mm256_add_epi32(acc, _mm256_madd_epi16(a, b))
#endif
// 32 vector registers (AVX-512VL) allow 4x4 tiles of 256-bit accumulators.
#if defined(GEMM_VNNI) && defined(__AVX512VNNI__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define GEMM_Z 1 // 512-bit kernels for the 32-element types and the K-quants
#endif
#ifdef __AVX512VL__
#define TILE_W 4
#define TILE_X 4
#else
#define TILE_W 2
#define TILE_X 4
#endif

// The helpers below are quant_simd.c's, repeated: identical operations (hsum_ps in particular
// must add the lanes in the same order).
FG_AI float h2f(fg_f16 h) { return _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h))); }
FG_AI float hsum_ps(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
FG_AI __m256i load32(const void *p) { return _mm256_loadu_si256((const __m256i *)p); }
FG_AI int hsum_epi32(__m256i v) {
    __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s4 = _mm_add_epi32(s4, _mm_unpackhi_epi64(s4, s4));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 1));
    return _mm_cvtsi128_si32(s4);
}
FG_AI __m256i nibbles_32(const uint8_t *p) {
    __m128i t = _mm_loadu_si128((const __m128i *)p);
    __m256i v = _mm256_set_m128i(_mm_srli_epi16(t, 4), t);
    return _mm256_and_si256(v, _mm256_set1_epi8(0x0F));
}
FG_AI __m256i bits_32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    const __m256i shuf = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101,
                                           0x0000000000000000);
    __m256i bytes = _mm256_shuffle_epi8(_mm256_set1_epi32((int)v), shuf);
    bytes = _mm256_or_si256(bytes, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe));
    return _mm256_cmpeq_epi8(bytes, _mm256_set1_epi64x(-1));
}
#ifndef GEMM_VNNI
FG_AI __m256i dot_i8(__m256i x, __m256i y) {
    __m256i ax = _mm256_sign_epi8(x, x), sy = _mm256_sign_epi8(y, x);
    return _mm256_madd_epi16(_mm256_maddubs_epi16(ax, sy), _mm256_set1_epi16(1));
}
#endif

#define UNROLL _Pragma("GCC unroll 8")
// Prefetch of the next R weight rows (the next tile's), spread evenly over the block steps:
// R rows read side by side defeat the hardware prefetchers (Zen 5, weights from memory: half
// of vec_dot's bandwidth without it); one sequential stream ahead does not.
#define PF_INIT(R, steps)                                                                          \
    uintptr_t pf_ = (uintptr_t)w + (uintptr_t)(R) * ws;                                            \
    const uintptr_t pfs_ = ((uintptr_t)(R) * ws + (uintptr_t)(steps) - 1) / (uintptr_t)((steps) > 0 ? (steps) : 1)
#define PF_STEP()                                                                                  \
    do {                                                                                           \
        for (uintptr_t off_ = 0; off_ < pfs_; off_ += 64)                                          \
            _mm_prefetch((const char *)(pf_ + off_), _MM_HINT_T0);                                 \
        pf_ += pfs_;                                                                               \
    } while (0)

// Runs a kernel family over the whole (n_w x n_x) range: full tiles with the TILE_W x C
// kernels, leftover weight rows with the 1 x C kernels (C = 1..TILE_X).
static void run_tiles(const gemm_kernel *full, const gemm_kernel *one, int tw, int tx, int64_t n, int64_t n_w,
                      int64_t n_x, const char *w, size_t ws, const char *x, size_t xs, float *d, size_t ds) {
    for (int64_t r = 0; r < n_x; r += tx) {
        int c = (int)(n_x - r < tx ? n_x - r : tx);
        const char *xr = x + (size_t)r * xs;
        float *dr = d + (size_t)r * ds;
        int64_t o = 0;
        for (; o + tw <= n_w; o += tw)
            full[c - 1](n, w + (size_t)o * ws, ws, xr, xs, dr + o, ds);
        for (; o < n_w; o++)
            one[c - 1](n, w + (size_t)o * ws, ws, xr, xs, dr + o, ds);
    }
}

#define INST(fam, R, C)                                                                            \
    static void fam##_##R##_##C(int64_t n, const char *w, size_t ws, const char *x, size_t xs, float *d, \
                                size_t ds) {                                                       \
        fam##_k(R, C, n, w, ws, x, xs, d, ds);                                                     \
    }
#if TILE_W == 4
#define INST_FAMILY(fam)                                                                           \
    INST(fam, 4, 1) INST(fam, 4, 2) INST(fam, 4, 3) INST(fam, 4, 4) INST(fam, 1, 1) INST(fam, 1, 2)  \
        INST(fam, 1, 3) INST(fam, 1, 4) static const gemm_kernel fam##_full[4] = {                \
            fam##_4_1, fam##_4_2, fam##_4_3, fam##_4_4};                                           \
    static const gemm_kernel fam##_one[4] = {fam##_1_1, fam##_1_2, fam##_1_3, fam##_1_4};
#else
#define INST_FAMILY(fam)                                                                           \
    INST(fam, 2, 1) INST(fam, 2, 2) INST(fam, 2, 3) INST(fam, 2, 4) INST(fam, 1, 1) INST(fam, 1, 2)  \
        INST(fam, 1, 3) INST(fam, 1, 4) static const gemm_kernel fam##_full[4] = {                \
            fam##_2_1, fam##_2_2, fam##_2_3, fam##_2_4};                                           \
    static const gemm_kernel fam##_one[4] = {fam##_1_1, fam##_1_2, fam##_1_3, fam##_1_4};
#endif

// ---------------------------------------------------------------- 32-element blocks, Q8_0 acts
// vec_dot: acc += (wd * yd) * cvt(p), p the 8 int32 sums of 4 products q*y, then hsum_ps.
// With VNNI the weight block is decoded to unsigned u = q + off and p = dpbusd(-off*sum4(y), u, y)
// (exact; y in [-127, 127] as fg_quantize_row writes it, the domain of vec_dot's sign trick
// too); without VNNI, p = dot_i8(q, y) as in quant_simd.c.
enum { K32_Q4_0, K32_Q5_0, K32_Q8_0, K32_MXFP4 };

FG_AI __m256i k32_decode(int t, const char *blk, float *wd) {
    if (t == K32_Q4_0) {
        const fg_block_q4_0 *b = (const fg_block_q4_0 *)blk;
        *wd = h2f(b->d);
#ifdef GEMM_VNNI
        return nibbles_32(b->qs);
#else
        return _mm256_sub_epi8(nibbles_32(b->qs), _mm256_set1_epi8(8));
#endif
    } else if (t == K32_Q5_0) {
        const fg_block_q5_0 *b = (const fg_block_q5_0 *)blk;
        *wd = h2f(b->d);
#ifdef GEMM_VNNI
        return _mm256_or_si256(nibbles_32(b->qs), _mm256_and_si256(bits_32(b->qh), _mm256_set1_epi8(0x10)));
#else
        __m256i hb = _mm256_andnot_si256(bits_32(b->qh), _mm256_set1_epi8((char)0xF0));
        return _mm256_or_si256(nibbles_32(b->qs), hb);
#endif
    } else if (t == K32_Q8_0) {
        const fg_block_q8_0 *b = (const fg_block_q8_0 *)blk;
        *wd = h2f(b->d);
#ifdef GEMM_VNNI
        return _mm256_xor_si256(load32(b->qs), _mm256_set1_epi8((char)0x80));
#else
        return load32(b->qs);
#endif
    } else {
        const fg_block_mxfp4 *b = (const fg_block_mxfp4 *)blk;
        *wd = fg_e8m0_to_f32_half(b->e);
#ifdef GEMM_VNNI
        // the table plus 12: 0..24
        const __m128i t16 = _mm_setr_epi8(12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0);
#else
        const __m128i t16 = _mm_loadu_si128((const __m128i *)fg_kvalues_mxfp4);
#endif
        return _mm256_shuffle_epi8(_mm256_set_m128i(t16, t16), nibbles_32(b->qs));
    }
}
FG_AI int k32_off(int t) { return t == K32_Q4_0 ? 8 : t == K32_Q5_0 ? 16 : t == K32_Q8_0 ? 128 : 12; }
FG_AI size_t k32_size(int t) {
    return t == K32_Q4_0 ? sizeof(fg_block_q4_0)
           : t == K32_Q5_0 ? sizeof(fg_block_q5_0)
           : t == K32_Q8_0 ? sizeof(fg_block_q8_0)
                           : sizeof(fg_block_mxfp4);
}

#ifndef GEMM_Z
FG_AI void k32_tile(int t, int R, int C, int64_t n, const char *w, size_t ws, const char *x, size_t xs,
                    float *d, size_t ds) {
    const size_t bsz = k32_size(t);
    __m256 acc[TILE_W][TILE_X];
    UNROLL for (int o = 0; o < R; o++) UNROLL for (int r = 0; r < C; r++) acc[o][r] = _mm256_setzero_ps();
    const int64_t nb = n / 32;
    PF_INIT(R, nb);
    for (int64_t i = 0; i < nb; i++) {
        PF_STEP();
        __m256i u[TILE_W];
        float wd[TILE_W];
        UNROLL for (int o = 0; o < R; o++) u[o] = k32_decode(t, w + o * ws + (size_t)i * bsz, &wd[o]);
        UNROLL for (int r = 0; r < C; r++) {
            const fg_block_q8_0 *b = (const fg_block_q8_0 *)(x + r * xs) + i;
            const __m256i y = load32(b->qs);
            const float yd = h2f(b->d);
#ifdef GEMM_VNNI
            const __m256i base = _mm256_sub_epi32(
                _mm256_setzero_si256(), dpbusd(_mm256_setzero_si256(), _mm256_set1_epi8((char)k32_off(t)), y));
#endif
            UNROLL for (int o = 0; o < R; o++) {
#ifdef GEMM_VNNI
                __m256i p = dpbusd(base, u[o], y);
#else
                __m256i p = dot_i8(u[o], y);
#endif
                acc[o][r] = _mm256_fmadd_ps(_mm256_set1_ps(wd[o] * yd), _mm256_cvtepi32_ps(p), acc[o][r]);
            }
        }
    }
    UNROLL for (int r = 0; r < C; r++) UNROLL for (int o = 0; o < R; o++) d[r * ds + o] = hsum_ps(acc[o][r]);
}

#endif

#ifdef GEMM_Z
// AVX-512: two activation rows per 512-bit register (row 2p in the low half, 2p+1 in the high
// half), the weight block repeated in both halves; each half holds exactly the 8 lanes of that
// output's 256-bit accumulator, so every lane sees the same operations as in vec_dot.
#define TILE_XZ 8
FG_AI __m512i cat_si(__m256i lo, __m256i hi) { return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1); }
FG_AI __m512 cat_ps(__m256 lo, __m256 hi) {
    return _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castpd256_pd512(_mm256_castps_pd(lo)), _mm256_castps_pd(hi), 1));
}
FG_AI __m256 lo_ps(__m512 v) { return _mm512_castps512_ps256(v); }
FG_AI __m256 hi_ps(__m512 v) { return _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)); }

FG_AI void k32z_tile(int t, int R, int C, int64_t n, const char *w, size_t ws, const char *x, size_t xs,
                     float *d, size_t ds) {
    const size_t bsz = k32_size(t);
    const int CP = C / 2;
    __m512 acc[TILE_W][TILE_XZ / 2];
    __m256 acc1[TILE_W];
    UNROLL for (int o = 0; o < R; o++) {
        UNROLL for (int p = 0; p < CP; p++) acc[o][p] = _mm512_setzero_ps();
        acc1[o] = _mm256_setzero_ps();
    }
    const __m512i offv = _mm512_set1_epi8((char)k32_off(t));
    const int64_t nb = n / 32;
    PF_INIT(R, nb);
    for (int64_t i = 0; i < nb; i++) {
        PF_STEP();
        __m512i u[TILE_W];
        __m256i u1[TILE_W];
        float wd[TILE_W];
        UNROLL for (int o = 0; o < R; o++) {
            u1[o] = k32_decode(t, w + o * ws + (size_t)i * bsz, &wd[o]);
            u[o] = cat_si(u1[o], u1[o]);
        }
        UNROLL for (int p = 0; p < CP; p++) {
            const fg_block_q8_0 *b0 = (const fg_block_q8_0 *)(x + (2 * p) * xs) + i;
            const fg_block_q8_0 *b1 = (const fg_block_q8_0 *)(x + (2 * p + 1) * xs) + i;
            const __m512i y = cat_si(load32(b0->qs), load32(b1->qs));
            const __m512i base =
                _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_dpbusd_epi32(_mm512_setzero_si512(), offv, y));
            const __m512 yd = cat_ps(_mm256_set1_ps(h2f(b0->d)), _mm256_set1_ps(h2f(b1->d)));
            UNROLL for (int o = 0; o < R; o++) {
                __m512i pz = _mm512_dpbusd_epi32(base, u[o], y);
                acc[o][p] = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_set1_ps(wd[o]), yd), _mm512_cvtepi32_ps(pz), acc[o][p]);
            }
        }
        if (C & 1) {
            const fg_block_q8_0 *b = (const fg_block_q8_0 *)(x + (C - 1) * xs) + i;
            const __m256i y = load32(b->qs);
            const float yd = h2f(b->d);
            const __m256i base = _mm256_sub_epi32(
                _mm256_setzero_si256(), dpbusd(_mm256_setzero_si256(), _mm256_set1_epi8((char)k32_off(t)), y));
            UNROLL for (int o = 0; o < R; o++) {
                __m256i pv = dpbusd(base, u1[o], y);
                acc1[o] = _mm256_fmadd_ps(_mm256_set1_ps(wd[o] * yd), _mm256_cvtepi32_ps(pv), acc1[o]);
            }
        }
    }
    UNROLL for (int p = 0; p < CP; p++) UNROLL for (int o = 0; o < R; o++) {
        d[(2 * p) * ds + o] = hsum_ps(lo_ps(acc[o][p]));
        d[(2 * p + 1) * ds + o] = hsum_ps(hi_ps(acc[o][p]));
    }
    if (C & 1)
        UNROLL for (int o = 0; o < R; o++) d[(C - 1) * ds + o] = hsum_ps(acc1[o]);
}
#define INST_FAMILY_Z(fam)                                                                         \
    INST(fam, 4, 1) INST(fam, 4, 2) INST(fam, 4, 3) INST(fam, 4, 4) INST(fam, 4, 5) INST(fam, 4, 6)  \
    INST(fam, 4, 7) INST(fam, 4, 8) INST(fam, 1, 1) INST(fam, 1, 2) INST(fam, 1, 3) INST(fam, 1, 4)  \
    INST(fam, 1, 5) INST(fam, 1, 6) INST(fam, 1, 7) INST(fam, 1, 8)                                  \
    static const gemm_kernel fam##_full[8] = {fam##_4_1, fam##_4_2, fam##_4_3, fam##_4_4,           \
                                              fam##_4_5, fam##_4_6, fam##_4_7, fam##_4_8};          \
    static const gemm_kernel fam##_one[8] = {fam##_1_1, fam##_1_2, fam##_1_3, fam##_1_4,            \
                                             fam##_1_5, fam##_1_6, fam##_1_7, fam##_1_8};
#define q4_0_k(R, C, ...) k32z_tile(K32_Q4_0, R, C, __VA_ARGS__)
#define q5_0_k(R, C, ...) k32z_tile(K32_Q5_0, R, C, __VA_ARGS__)
#define q8_0_k(R, C, ...) k32z_tile(K32_Q8_0, R, C, __VA_ARGS__)
#define mxfp4_k(R, C, ...) k32z_tile(K32_MXFP4, R, C, __VA_ARGS__)
INST_FAMILY_Z(q4_0)
INST_FAMILY_Z(q5_0)
INST_FAMILY_Z(q8_0)
INST_FAMILY_Z(mxfp4)
#else
#define TILE_XZ TILE_X
#define q4_0_k(R, C, ...) k32_tile(K32_Q4_0, R, C, __VA_ARGS__)
#define q5_0_k(R, C, ...) k32_tile(K32_Q5_0, R, C, __VA_ARGS__)
#define q8_0_k(R, C, ...) k32_tile(K32_Q8_0, R, C, __VA_ARGS__)
#define mxfp4_k(R, C, ...) k32_tile(K32_MXFP4, R, C, __VA_ARGS__)
INST_FAMILY(q4_0)
INST_FAMILY(q5_0)
INST_FAMILY(q8_0)
INST_FAMILY(mxfp4)
#endif

// ---------------------------------------------------------------- Q4_1 / Q5_1, Q8_1 acts
// vec_dot: acc += (wd * yd) * cvt(madd(maddubs(u, y), 1)); summ += wm * ys (scalar chain);
// result hsum_ps(acc) + summ. u is unsigned (0..15 / 0..31), so dpbusd gives the same lanes.
#ifndef GEMM_Z
FG_AI void k32_1_tile(int t5, int R, int C, int64_t n, const char *w, size_t ws, const char *x, size_t xs,
                      float *d, size_t ds) {
    const size_t bsz = t5 ? sizeof(fg_block_q5_1) : sizeof(fg_block_q4_1);
    __m256 acc[TILE_W][TILE_X];
    float summ[TILE_W][TILE_X];
    UNROLL for (int o = 0; o < R; o++) UNROLL for (int r = 0; r < C; r++) {
        acc[o][r] = _mm256_setzero_ps();
        summ[o][r] = 0.0f;
    }
    const int64_t nb = n / 32;
    PF_INIT(R, nb);
    for (int64_t i = 0; i < nb; i++) {
        PF_STEP();
        __m256i u[TILE_W];
        float wd[TILE_W], wm[TILE_W];
        UNROLL for (int o = 0; o < R; o++) {
            const char *blk = w + o * ws + (size_t)i * bsz;
            if (t5) {
                const fg_block_q5_1 *b = (const fg_block_q5_1 *)blk;
                u[o] = _mm256_or_si256(nibbles_32(b->qs), _mm256_and_si256(bits_32(b->qh), _mm256_set1_epi8(0x10)));
                wd[o] = h2f(b->d);
                wm[o] = h2f(b->m);
            } else {
                const fg_block_q4_1 *b = (const fg_block_q4_1 *)blk;
                u[o] = nibbles_32(b->qs);
                wd[o] = h2f(b->d);
                wm[o] = h2f(b->m);
            }
        }
        UNROLL for (int r = 0; r < C; r++) {
            const fg_block_q8_1 *b = (const fg_block_q8_1 *)(x + r * xs) + i;
            const __m256i y = load32(b->qs);
            const float yd = h2f(b->d), ys = h2f(b->s);
            UNROLL for (int o = 0; o < R; o++) {
#ifdef GEMM_VNNI
                __m256i p = dpbusd(_mm256_setzero_si256(), u[o], y);
#else
                __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(u[o], y), _mm256_set1_epi16(1));
#endif
                acc[o][r] = _mm256_fmadd_ps(_mm256_set1_ps(wd[o] * yd), _mm256_cvtepi32_ps(p), acc[o][r]);
                summ[o][r] += wm[o] * ys;
            }
        }
    }
    UNROLL for (int r = 0; r < C; r++) UNROLL for (int o = 0; o < R; o++) d[r * ds + o] =
        hsum_ps(acc[o][r]) + summ[o][r];
}
#endif

#ifdef GEMM_Z
// Two activation rows per 512-bit register, as k32z_tile.
FG_AI void k32_1z_tile(int t5, int R, int C, int64_t n, const char *w, size_t ws, const char *x, size_t xs,
                       float *d, size_t ds) {
    const size_t bsz = t5 ? sizeof(fg_block_q5_1) : sizeof(fg_block_q4_1);
    const int CP = C / 2;
    __m512 acc[TILE_W][TILE_XZ / 2];
    __m256 acc1[TILE_W];
    float summ[TILE_W][TILE_XZ];
    UNROLL for (int o = 0; o < R; o++) {
        UNROLL for (int p = 0; p < CP; p++) acc[o][p] = _mm512_setzero_ps();
        acc1[o] = _mm256_setzero_ps();
        UNROLL for (int r = 0; r < C; r++) summ[o][r] = 0.0f;
    }
    const int64_t nb = n / 32;
    PF_INIT(R, nb);
    for (int64_t i = 0; i < nb; i++) {
        PF_STEP();
        __m512i u[TILE_W];
        __m256i u1[TILE_W];
        float wd[TILE_W], wm[TILE_W];
        UNROLL for (int o = 0; o < R; o++) {
            const char *blk = w + o * ws + (size_t)i * bsz;
            if (t5) {
                const fg_block_q5_1 *b = (const fg_block_q5_1 *)blk;
                u1[o] = _mm256_or_si256(nibbles_32(b->qs), _mm256_and_si256(bits_32(b->qh), _mm256_set1_epi8(0x10)));
                wd[o] = h2f(b->d);
                wm[o] = h2f(b->m);
            } else {
                const fg_block_q4_1 *b = (const fg_block_q4_1 *)blk;
                u1[o] = nibbles_32(b->qs);
                wd[o] = h2f(b->d);
                wm[o] = h2f(b->m);
            }
            u[o] = cat_si(u1[o], u1[o]);
        }
        UNROLL for (int p = 0; p < CP; p++) {
            const fg_block_q8_1 *b0 = (const fg_block_q8_1 *)(x + (2 * p) * xs) + i;
            const fg_block_q8_1 *b1 = (const fg_block_q8_1 *)(x + (2 * p + 1) * xs) + i;
            const __m512i y = cat_si(load32(b0->qs), load32(b1->qs));
            const __m512 yd = cat_ps(_mm256_set1_ps(h2f(b0->d)), _mm256_set1_ps(h2f(b1->d)));
            const float ys0 = h2f(b0->s), ys1 = h2f(b1->s);
            UNROLL for (int o = 0; o < R; o++) {
                __m512i pz = _mm512_dpbusd_epi32(_mm512_setzero_si512(), u[o], y);
                acc[o][p] = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_set1_ps(wd[o]), yd), _mm512_cvtepi32_ps(pz), acc[o][p]);
                summ[o][2 * p] += wm[o] * ys0;
                summ[o][2 * p + 1] += wm[o] * ys1;
            }
        }
        if (C & 1) {
            const fg_block_q8_1 *b = (const fg_block_q8_1 *)(x + (C - 1) * xs) + i;
            const __m256i y = load32(b->qs);
            const float yd = h2f(b->d), ys = h2f(b->s);
            UNROLL for (int o = 0; o < R; o++) {
                __m256i pv = dpbusd(_mm256_setzero_si256(), u1[o], y);
                acc1[o] = _mm256_fmadd_ps(_mm256_set1_ps(wd[o] * yd), _mm256_cvtepi32_ps(pv), acc1[o]);
                summ[o][C - 1] += wm[o] * ys;
            }
        }
    }
    UNROLL for (int p = 0; p < CP; p++) UNROLL for (int o = 0; o < R; o++) {
        d[(2 * p) * ds + o] = hsum_ps(lo_ps(acc[o][p])) + summ[o][2 * p];
        d[(2 * p + 1) * ds + o] = hsum_ps(hi_ps(acc[o][p])) + summ[o][2 * p + 1];
    }
    if (C & 1)
        UNROLL for (int o = 0; o < R; o++) d[(C - 1) * ds + o] = hsum_ps(acc1[o]) + summ[o][C - 1];
}
#define q4_1_k(R, C, ...) k32_1z_tile(0, R, C, __VA_ARGS__)
#define q5_1_k(R, C, ...) k32_1z_tile(1, R, C, __VA_ARGS__)
INST_FAMILY_Z(q4_1)
INST_FAMILY_Z(q5_1)
#else
#define q4_1_k(R, C, ...) k32_1_tile(0, R, C, __VA_ARGS__)
#define q5_1_k(R, C, ...) k32_1_tile(1, R, C, __VA_ARGS__)
INST_FAMILY(q4_1)
INST_FAMILY(q5_1)
#endif

#ifndef GEMM_Z // 256-bit K-quant kernels (the 512-bit ones below replace them)
FG_AI __m256i scale_pair(int lo, int hi) {
    return _mm256_set_m128i(_mm_set1_epi16((short)hi), _mm_set1_epi16((short)lo));
}

// ---------------------------------------------------------------- Q4_K / Q5_K
// vec_dot (Q4_K): per block prod[k] = mn[2k]*(bs[4k]+bs[4k+1]) + mn[2k+1]*(bs[4k+2]+bs[4k+3])
// into a 4-lane accm by fma(dmin, .), sumi = sum_c sc*maddubs-pairs, acc = fma(d, cvt(sumi));
// result hsum_ps(acc) + hsum4(accm). Q5_K: the same sumi with the fifth bit, and a scalar
// accm += dmin * (float)summ with summ = sum_j mn[j] * (bs[2j] + bs[2j+1]).
// The decoded weight block (unsigned 0..15/0..31 bytes per sub-block, broadcast scales) goes
// to a small buffer that the C activation rows read from L1.
typedef struct kq_dec {
    __m256i q[8];   // sub-block j (32 bytes)
    __m256i sc[8];  // int16 broadcast of scale j
    __m256i mn16;   // mins, each repeated twice as int16 (pairs with the 16 bsums)
    float d, dmin;  // fp16 d, dmin as floats
} kq_dec;

FG_AI void kq_decode(int t5, const char *blk, kq_dec *k) {
    const uint8_t *scales, *qs, *qh = NULL;
    if (t5) {
        const fg_block_q5_k *b = (const fg_block_q5_k *)blk;
        scales = b->scales;
        qs = b->qs;
        qh = b->qh;
        k->d = h2f(b->d);
        k->dmin = h2f(b->dmin);
    } else {
        const fg_block_q4_k *b = (const fg_block_q4_k *)blk;
        scales = b->scales;
        qs = b->qs;
        k->d = h2f(b->d);
        k->dmin = h2f(b->dmin);
    }
    uint8_t sc[8], mn[8];
    int16_t m16[16];
    for (int j = 0; j < 8; j++) {
        fg_get_scale_min_k4(j, scales, &sc[j], &mn[j]);
        k->sc[j] = _mm256_set1_epi16(sc[j]);
        m16[2 * j] = m16[2 * j + 1] = mn[j];
    }
    k->mn16 = load32(m16);
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    __m256i hbits = t5 ? load32(qh) : _mm256_setzero_si256();
    for (int c = 0; c < 4; c++) {
        __m256i q4 = load32(qs + 32 * c);
        __m256i lo = _mm256_and_si256(q4, m4), hi = _mm256_and_si256(_mm256_srli_epi16(q4, 4), m4);
        if (t5) {
            const __m256i one = _mm256_set1_epi8(1);
            __m256i h0 = _mm256_and_si256(_mm256_srl_epi16(hbits, _mm_cvtsi32_si128(2 * c)), one);
            __m256i h1 = _mm256_and_si256(_mm256_srl_epi16(hbits, _mm_cvtsi32_si128(2 * c + 1)), one);
            lo = _mm256_or_si256(lo, _mm256_slli_epi16(h0, 4));
            hi = _mm256_or_si256(hi, _mm256_slli_epi16(h1, 4));
        }
        k->q[2 * c] = lo;
        k->q[2 * c + 1] = hi;
    }
}

FG_AI void kq_tile(int t5, int R, int C, int64_t n, const char *w, size_t ws, const char *x, size_t xs,
                   float *d, size_t ds) {
    const size_t bsz = t5 ? sizeof(fg_block_q5_k) : sizeof(fg_block_q4_k);
    __m256 acc[TILE_W][TILE_X];
    __m128 accm4[TILE_W][TILE_X];
    float accm[TILE_W][TILE_X];
    UNROLL for (int o = 0; o < R; o++) UNROLL for (int r = 0; r < C; r++) {
        acc[o][r] = _mm256_setzero_ps();
        accm4[o][r] = _mm_setzero_ps();
        accm[o][r] = 0.0f;
    }
    kq_dec dec[TILE_W];
    const int64_t nb = n / FG_QK_K;
    PF_INIT(R, nb);
    for (int64_t i = 0; i < nb; i++) {
        PF_STEP();
        UNROLL for (int o = 0; o < R; o++) kq_decode(t5, w + o * ws + (size_t)i * bsz, &dec[o]);
        UNROLL for (int r = 0; r < C; r++) {
            const fg_block_q8_k *b = (const fg_block_q8_k *)(x + r * xs) + i;
            const __m256i bs = load32(b->bsums);
            __m256i sumi[TILE_W];
            UNROLL for (int o = 0; o < R; o++) sumi[o] = _mm256_setzero_si256();
            for (int j = 0; j < 8; j++) {
                const __m256i y = load32(b->qs + 32 * j);
                UNROLL for (int o = 0; o < R; o++) sumi[o] =
                    dpwssd(sumi[o], _mm256_maddubs_epi16(dec[o].q[j], y), dec[o].sc[j]);
            }
            UNROLL for (int o = 0; o < R; o++) {
                // lane j of mj: mn[j] * (bs[2j] + bs[2j+1]) (exact int32)
                __m256i mj = _mm256_madd_epi16(dec[o].mn16, bs);
                float dd = b->d * dec[o].d, dmin = -b->d * dec[o].dmin;
                if (t5) {
                    __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(mj), _mm256_extracti128_si256(mj, 1));
                    s4 = _mm_add_epi32(s4, _mm_unpackhi_epi64(s4, s4));
                    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 1));
                    int summ = _mm_cvtsi128_si32(s4);
                    accm[o][r] += dmin * (float)summ;
                } else {
                    // prod[k] = lane 2k + lane 2k+1
                    __m128i prod = _mm_hadd_epi32(_mm256_castsi256_si128(mj), _mm256_extracti128_si256(mj, 1));
                    accm4[o][r] = _mm_fmadd_ps(_mm_set1_ps(dmin), _mm_cvtepi32_ps(prod), accm4[o][r]);
                }
                acc[o][r] = _mm256_fmadd_ps(_mm256_set1_ps(dd), _mm256_cvtepi32_ps(sumi[o]), acc[o][r]);
            }
        }
    }
    UNROLL for (int r = 0; r < C; r++) UNROLL for (int o = 0; o < R; o++) {
        if (t5) {
            d[r * ds + o] = hsum_ps(acc[o][r]) + accm[o][r];
        } else {
            __m128 m = accm4[o][r];
            m = _mm_add_ps(m, _mm_movehl_ps(m, m));
            m = _mm_add_ss(m, _mm_movehdup_ps(m));
            d[r * ds + o] = hsum_ps(acc[o][r]) + _mm_cvtss_f32(m);
        }
    }
}
#define q4_k_k(R, C, ...) kq_tile(0, R, C, __VA_ARGS__)
#define q5_k_k(R, C, ...) kq_tile(1, R, C, __VA_ARGS__)
INST_FAMILY(q4_k)
INST_FAMILY(q5_k)

// ---------------------------------------------------------------- Q6_K
// vec_dot: per 32 quants p = maddubs(q, y) - maddubs(32, y) (int16), sumi += madd(p, scale pair);
// acc = fma(d, cvt(sumi)); result hsum_ps(acc). The maddubs(32, y) part is per activation.
typedef struct q6_dec {
    __m256i q[8];  // 0..63 per byte, chunk nn*4+k
    __m256i sc[8]; // scale pairs
    float d;
} q6_dec;

FG_AI void q6_decode(const fg_block_q6_k *a, q6_dec *k) {
    const __m256i m4 = _mm256_set1_epi8(0x0F), m2 = _mm256_set1_epi8(3);
    k->d = h2f(a->d);
    for (int nn = 0; nn < 2; nn++) {
        const uint8_t *ql = a->ql + 64 * nn, *qh = a->qh + 32 * nn;
        const int8_t *s8 = a->scales + 8 * nn;
        __m256i l0 = load32(ql), l1 = load32(ql + 32), h = load32(qh);
        __m256i *q = k->q + 4 * nn;
        q[0] = _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_slli_epi16(_mm256_and_si256(h, m2), 4));
        q[1] = _mm256_or_si256(_mm256_and_si256(l1, m4),
                               _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 2), m2), 4));
        q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),
                               _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 4), m2), 4));
        q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                               _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 6), m2), 4));
        for (int kk = 0; kk < 4; kk++)
            k->sc[4 * nn + kk] = scale_pair(s8[2 * kk], s8[2 * kk + 1]);
    }
}

FG_AI void q6_k_k(int R, int C, int64_t n, const char *w, size_t ws, const char *x, size_t xs, float *d,
                  size_t ds) {
    __m256 acc[TILE_W][TILE_X];
    UNROLL for (int o = 0; o < R; o++) UNROLL for (int r = 0; r < C; r++) acc[o][r] = _mm256_setzero_ps();
    q6_dec dec[TILE_W];
    const __m256i m32 = _mm256_set1_epi8(32);
    const int64_t nb = n / FG_QK_K;
    PF_INIT(R, nb);
    for (int64_t i = 0; i < nb; i++) {
        PF_STEP();
        UNROLL for (int o = 0; o < R; o++) q6_decode((const fg_block_q6_k *)(w + o * ws) + i, &dec[o]);
        UNROLL for (int r = 0; r < C; r++) {
            const fg_block_q8_k *b = (const fg_block_q8_k *)(x + r * xs) + i;
            __m256i sumi[TILE_W];
            UNROLL for (int o = 0; o < R; o++) sumi[o] = _mm256_setzero_si256();
            for (int j = 0; j < 8; j++) {
                const __m256i y = load32(b->qs + 32 * j);
                const __m256i y32 = _mm256_maddubs_epi16(m32, y);
                UNROLL for (int o = 0; o < R; o++) {
                    __m256i p = _mm256_sub_epi16(_mm256_maddubs_epi16(dec[o].q[j], y), y32);
                    sumi[o] = dpwssd(sumi[o], p, dec[o].sc[j]);
                }
            }
            UNROLL for (int o = 0; o < R; o++) acc[o][r] =
                _mm256_fmadd_ps(_mm256_set1_ps(b->d * dec[o].d), _mm256_cvtepi32_ps(sumi[o]), acc[o][r]);
        }
    }
    UNROLL for (int r = 0; r < C; r++) UNROLL for (int o = 0; o < R; o++) d[r * ds + o] = hsum_ps(acc[o][r]);
}
INST_FAMILY(q6_k)

// ---------------------------------------------------------------- Q3_K / Q2_K
// Q3_K vec_dot: bias = sum_j (usc[j] - 32) * bsums[j]; sumi = sum scale-pair * maddubs(v, y),
// v = q2 | hbit << 2 (0..7); acc = fma(d, cvt(sumi - (4 * bias in lane 0))); hsum_ps(acc).
// Q2_K: summ = sum_j (sc[j] >> 4) * bsums[j]; sumi with scale pairs of the low nibbles;
// acc = fma(dall, cvt(sumi)), accm += dmin * (float)summ; hsum_ps(acc) - accm.
typedef struct k23_dec {
    __m256i q[8];  // chunk nn*4+j
    __m256i sc[8]; // scale pairs
    __m256i m16;   // per-16 multipliers of the bsums (int16)
    float d, dmin;
} k23_dec;

FG_AI void k23_decode(int t3, const char *blk, k23_dec *k) {
    const __m256i m3 = _mm256_set1_epi8(3);
    int16_t m16[16];
    if (t3) {
        const fg_block_q3_k *a = (const fg_block_q3_k *)blk;
        uint8_t usc[16];
        fg_q3_k_scales(a->scales, usc);
        for (int j = 0; j < 16; j++)
            m16[j] = (int16_t)(usc[j] - 32);
        const __m256i hm = load32(a->hmask), one = _mm256_set1_epi8(1);
        for (int nn = 0; nn < 2; nn++) {
            __m256i q2 = load32(a->qs + 32 * nn);
            for (int j = 0; j < 4; j++) {
                __m256i v = _mm256_and_si256(_mm256_srl_epi16(q2, _mm_cvtsi32_si128(2 * j)), m3);
                __m256i h = _mm256_and_si256(_mm256_srl_epi16(hm, _mm_cvtsi32_si128(4 * nn + j)), one);
                k->q[4 * nn + j] = _mm256_or_si256(v, _mm256_slli_epi16(h, 2));
                int is = 8 * nn + 2 * j;
                k->sc[4 * nn + j] = scale_pair(usc[is] - 32, usc[is + 1] - 32);
            }
        }
        k->d = h2f(a->d);
        k->dmin = 0.0f;
    } else {
        const fg_block_q2_k *a = (const fg_block_q2_k *)blk;
        for (int j = 0; j < 16; j++)
            m16[j] = (int16_t)(a->scales[j] >> 4);
        for (int nn = 0; nn < 2; nn++) {
            __m256i q2 = load32(a->qs + 32 * nn);
            for (int j = 0; j < 4; j++) {
                k->q[4 * nn + j] = _mm256_and_si256(_mm256_srl_epi16(q2, _mm_cvtsi32_si128(2 * j)), m3);
                int is = 8 * nn + 2 * j;
                k->sc[4 * nn + j] = scale_pair(a->scales[is] & 0xF, a->scales[is + 1] & 0xF);
            }
        }
        k->d = h2f(a->d);
        k->dmin = h2f(a->dmin);
    }
    k->m16 = load32(m16);
}


FG_AI void k23_tile(int t3, int R, int C, int64_t n, const char *w, size_t ws, const char *x, size_t xs,
                    float *d, size_t ds) {
    const size_t bsz = t3 ? sizeof(fg_block_q3_k) : sizeof(fg_block_q2_k);
    __m256 acc[TILE_W][TILE_X];
    float accm[TILE_W][TILE_X];
    UNROLL for (int o = 0; o < R; o++) UNROLL for (int r = 0; r < C; r++) {
        acc[o][r] = _mm256_setzero_ps();
        accm[o][r] = 0.0f;
    }
    k23_dec dec[TILE_W];
    const int64_t nb = n / FG_QK_K;
    PF_INIT(R, nb);
    for (int64_t i = 0; i < nb; i++) {
        PF_STEP();
        UNROLL for (int o = 0; o < R; o++) k23_decode(t3, w + o * ws + (size_t)i * bsz, &dec[o]);
        UNROLL for (int r = 0; r < C; r++) {
            const fg_block_q8_k *b = (const fg_block_q8_k *)(x + r * xs) + i;
            const __m256i bs = load32(b->bsums);
            __m256i sumi[TILE_W];
            UNROLL for (int o = 0; o < R; o++) sumi[o] = _mm256_setzero_si256();
            for (int j = 0; j < 8; j++) {
                const __m256i y = load32(b->qs + 32 * j);
                UNROLL for (int o = 0; o < R; o++) sumi[o] =
                    dpwssd(sumi[o], _mm256_maddubs_epi16(dec[o].q[j], y), dec[o].sc[j]);
            }
            UNROLL for (int o = 0; o < R; o++) {
                int s = hsum_epi32(_mm256_madd_epi16(dec[o].m16, bs));
                if (t3) {
                    float dd = dec[o].d * b->d;
                    __m256i v = _mm256_sub_epi32(sumi[o], _mm256_setr_epi32(4 * s, 0, 0, 0, 0, 0, 0, 0));
                    acc[o][r] = _mm256_fmadd_ps(_mm256_set1_ps(dd), _mm256_cvtepi32_ps(v), acc[o][r]);
                } else {
                    float dall = b->d * dec[o].d, dmin = b->d * dec[o].dmin;
                    acc[o][r] = _mm256_fmadd_ps(_mm256_set1_ps(dall), _mm256_cvtepi32_ps(sumi[o]), acc[o][r]);
                    accm[o][r] += dmin * (float)s;
                }
            }
        }
    }
    UNROLL for (int r = 0; r < C; r++) UNROLL for (int o = 0; o < R; o++) d[r * ds + o] =
        t3 ? hsum_ps(acc[o][r]) : hsum_ps(acc[o][r]) - accm[o][r];
}
#define q3_k_k(R, C, ...) k23_tile(1, R, C, __VA_ARGS__)
#define q2_k_k(R, C, ...) k23_tile(0, R, C, __VA_ARGS__)
INST_FAMILY(q3_k)
INST_FAMILY(q2_k)
#endif

#ifdef GEMM_Z
// ---------------------------------------------------------------- K-quants, AVX-512
// Two activation rows per 512-bit register as for the 32-element types (an odd last row is
// paired with itself and stored once); the decoded weight block is repeated in both halves.
// Per half the int32 lanes and float operations are those of the 256-bit kernels above.
#define KZ_W 4
#define KZ_X 4
enum { KZ_Q2, KZ_Q3, KZ_Q4, KZ_Q5, KZ_Q6 };
typedef struct kz_dec {
    __m256i q[8];  // unsigned quants of chunk j (32 bytes), repeated in both halves at use
    __m256i sc[8]; // int16 multipliers of the 16 pair sums of chunk j (Q2_K/Q3_K/Q6_K)
    __m256i m16;   // bsums multipliers (Q2_K/Q3_K/Q4_K/Q5_K)
    uint32_t sc32[8]; // Q4_K/Q5_K: scale j in both int16 halves (one multiplier for all 16)
    float d, dmin;
} kz_dec;
FG_AI __m512i dup_si(__m256i v) { return cat_si(v, v); }
FG_AI __m256i lo_si(__m512i v) { return _mm512_castsi512_si256(v); }
FG_AI __m256i hi_si(__m512i v) { return _mm512_extracti64x4_epi64(v, 1); }
FG_AI __m128i load16(const void *p) { return _mm_loadu_si128((const __m128i *)p); }

// sc[c] from 16 signed byte scales s: [s[2c] x 8 | s[2c+1] x 8] as int16 (scale pairs).
FG_AI void kz_pair_scales(__m128i s8, __m256i sc[8]) {
    for (int c = 0; c < 8; c++) {
        __m128i idx = _mm_set_epi64x(0x0101010101010101LL * (2 * c + 1), 0x0101010101010101LL * (2 * c));
        sc[c] = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(s8, idx));
    }
}

FG_AI void kz_decode(int t, const char *blk, kz_dec *z) {
    const __m256i m4 = _mm256_set1_epi8(0x0F), m3 = _mm256_set1_epi8(3), one = _mm256_set1_epi8(1);
    if (t == KZ_Q4 || t == KZ_Q5) {
        const uint8_t *scales, *qs;
        __m256i hbits = _mm256_setzero_si256();
        if (t == KZ_Q5) {
            const fg_block_q5_k *b = (const fg_block_q5_k *)blk;
            scales = b->scales;
            qs = b->qs;
            hbits = load32(b->qh);
            z->d = h2f(b->d);
            z->dmin = h2f(b->dmin);
        } else {
            const fg_block_q4_k *b = (const fg_block_q4_k *)blk;
            scales = b->scales;
            qs = b->qs;
            z->d = h2f(b->d);
            z->dmin = h2f(b->dmin);
        }
        // the 6-bit scales (bytes of u[0], u[1]) and mins (u[2], u[3]) of fg_get_scale_min_k4
        uint32_t u[4];
        memcpy(u, scales, 12);
        u[3] = ((u[2] >> 4) & 0x0f0f0f0fu) | (((u[1] >> 6) & 0x03030303u) << 4);
        const uint32_t m01 = u[1] & 0x3f3f3f3fu;
        u[1] = (u[2] & 0x0f0f0f0fu) | (((u[0] >> 6) & 0x03030303u) << 4);
        u[2] = m01;
        u[0] &= 0x3f3f3f3fu;
        const __m128i v = _mm_loadu_si128((const __m128i *)u);
        const __m128i s16 = _mm_cvtepu8_epi16(v);
        _mm_storeu_si128((__m128i *)z->sc32, _mm_unpacklo_epi16(s16, s16));
        _mm_storeu_si128((__m128i *)(z->sc32 + 4), _mm_unpackhi_epi16(s16, s16));
        const __m128i mn = _mm_cvtepu8_epi16(_mm_srli_si128(v, 8));
        z->m16 = _mm256_set_m128i(_mm_unpackhi_epi16(mn, mn), _mm_unpacklo_epi16(mn, mn));
        for (int c = 0; c < 4; c++) {
            __m256i q4 = load32(qs + 32 * c);
            __m256i lo = _mm256_and_si256(q4, m4), hi = _mm256_and_si256(_mm256_srli_epi16(q4, 4), m4);
            if (t == KZ_Q5) {
                __m256i h0 = _mm256_and_si256(_mm256_srli_epi16(hbits, 2 * c), one);
                __m256i h1 = _mm256_and_si256(_mm256_srli_epi16(hbits, 2 * c + 1), one);
                lo = _mm256_or_si256(lo, _mm256_slli_epi16(h0, 4));
                hi = _mm256_or_si256(hi, _mm256_slli_epi16(h1, 4));
            }
            z->q[2 * c] = lo;
            z->q[2 * c + 1] = hi;
        }
    } else if (t == KZ_Q6) {
        const fg_block_q6_k *a = (const fg_block_q6_k *)blk;
        z->d = h2f(a->d);
        for (int nn = 0; nn < 2; nn++) {
            const uint8_t *ql = a->ql + 64 * nn, *qh = a->qh + 32 * nn;
            __m256i l0 = load32(ql), l1 = load32(ql + 32), h = load32(qh);
            __m256i *q = z->q + 4 * nn;
            q[0] = _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_slli_epi16(_mm256_and_si256(h, m3), 4));
            q[1] = _mm256_or_si256(_mm256_and_si256(l1, m4),
                                   _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 2), m3), 4));
            q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),
                                   _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 4), m3), 4));
            q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                                   _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 6), m3), 4));
        }
        kz_pair_scales(load16(a->scales), z->sc);
    } else if (t == KZ_Q3) {
        const fg_block_q3_k *a = (const fg_block_q3_k *)blk;
        // the 16 6-bit scales of fg_q3_k_scales, minus 32
        uint32_t s[3], us[4];
        memcpy(s, a->scales, 12);
        us[0] = (s[0] & 0x0f0f0f0fu) | ((s[2] & 0x03030303u) << 4);
        us[1] = (s[1] & 0x0f0f0f0fu) | (((s[2] >> 2) & 0x03030303u) << 4);
        us[2] = ((s[0] >> 4) & 0x0f0f0f0fu) | (((s[2] >> 4) & 0x03030303u) << 4);
        us[3] = ((s[1] >> 4) & 0x0f0f0f0fu) | (((s[2] >> 6) & 0x03030303u) << 4);
        const __m128i sv = _mm_sub_epi8(_mm_loadu_si128((const __m128i *)us), _mm_set1_epi8(32));
        kz_pair_scales(sv, z->sc);
        z->m16 = _mm256_cvtepi8_epi16(sv);
        const __m256i hm = load32(a->hmask);
        for (int nn = 0; nn < 2; nn++) {
            __m256i q2 = load32(a->qs + 32 * nn);
            for (int j = 0; j < 4; j++) {
                __m256i v = _mm256_and_si256(_mm256_srli_epi16(q2, 2 * j), m3);
                __m256i h = _mm256_and_si256(_mm256_srli_epi16(hm, 4 * nn + j), one);
                z->q[4 * nn + j] = _mm256_or_si256(v, _mm256_slli_epi16(h, 2));
            }
        }
        z->d = h2f(a->d);
        z->dmin = 0.0f;
    } else {
        const fg_block_q2_k *a = (const fg_block_q2_k *)blk;
        const __m128i sv = load16(a->scales);
        kz_pair_scales(_mm_and_si128(sv, _mm_set1_epi8(0x0F)), z->sc);
        z->m16 = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(sv, 4), _mm_set1_epi8(0x0F)));
        for (int nn = 0; nn < 2; nn++) {
            __m256i q2 = load32(a->qs + 32 * nn);
            for (int j = 0; j < 4; j++)
                z->q[4 * nn + j] = _mm256_and_si256(_mm256_srli_epi16(q2, 2 * j), m3);
        }
        z->d = h2f(a->d);
        z->dmin = h2f(a->dmin);
    }
}
FG_AI size_t kz_size(int t) {
    return t == KZ_Q2   ? sizeof(fg_block_q2_k)
           : t == KZ_Q3 ? sizeof(fg_block_q3_k)
           : t == KZ_Q4 ? sizeof(fg_block_q4_k)
           : t == KZ_Q5 ? sizeof(fg_block_q5_k)
                        : sizeof(fg_block_q6_k);
}

FG_AI void kz_tile(int t, int R, int C, int64_t n, const char *w, size_t ws, const char *x, size_t xs,
                   float *d, size_t ds) {
    const size_t bsz = kz_size(t);
    const int CP = (C + 1) / 2;
    __m512 acc[KZ_W][KZ_X / 2];
    __m256 accm4[KZ_W][KZ_X / 2]; // Q4_K: the two rows' 4-lane min accumulators
    float accm[KZ_W][KZ_X];       // Q5_K / Q2_K
    UNROLL for (int o = 0; o < R; o++) {
        UNROLL for (int p = 0; p < CP; p++) {
            acc[o][p] = _mm512_setzero_ps();
            accm4[o][p] = _mm256_setzero_ps();
        }
        UNROLL for (int r = 0; r < C; r++) accm[o][r] = 0.0f;
    }
    const __m512i m32 = _mm512_set1_epi8(32);
    kz_dec dec[KZ_W];
    const int64_t nb = n / FG_QK_K;
    PF_INIT(R, nb);
    for (int64_t i = 0; i < nb; i++) {
        PF_STEP();
        UNROLL for (int o = 0; o < R; o++) kz_decode(t, w + o * ws + (size_t)i * bsz, &dec[o]);
        UNROLL for (int p = 0; p < CP; p++) {
            const int r0 = 2 * p, r1 = 2 * p + 1 < C ? 2 * p + 1 : 2 * p;
            const fg_block_q8_k *b0 = (const fg_block_q8_k *)(x + r0 * xs) + i;
            const fg_block_q8_k *b1 = (const fg_block_q8_k *)(x + r1 * xs) + i;
            __m512i sumi[KZ_W];
            UNROLL for (int o = 0; o < R; o++) sumi[o] = _mm512_setzero_si512();
            for (int j = 0; j < 8; j++) {
                const __m512i y = cat_si(load32(b0->qs + 32 * j), load32(b1->qs + 32 * j));
                const __m512i y32 = _mm512_maddubs_epi16(m32, y);
                UNROLL for (int o = 0; o < R; o++) {
                    __m512i pr = _mm512_maddubs_epi16(_mm512_broadcast_i64x4(dec[o].q[j]), y);
                    if (t == KZ_Q6)
                        pr = _mm512_sub_epi16(pr, y32);
                    __m512i sc = t == KZ_Q4 || t == KZ_Q5 ? _mm512_set1_epi32((int)dec[o].sc32[j])
                                                          : _mm512_broadcast_i64x4(dec[o].sc[j]);
                    sumi[o] = _mm512_dpwssd_epi32(sumi[o], pr, sc);
                }
            }
            const __m512i bs = cat_si(load32(b0->bsums), load32(b1->bsums));
            const __m512 bd = cat_ps(_mm256_set1_ps(b0->d), _mm256_set1_ps(b1->d));
            UNROLL for (int o = 0; o < R; o++) {
                __m512i si = sumi[o];
                if (t == KZ_Q4) {
                    __m512i mj = _mm512_madd_epi16(dup_si(dec[o].m16), bs);
                    __m256i h = _mm256_hadd_epi32(lo_si(mj), hi_si(mj));
                    __m256i prod = _mm256_permutevar8x32_epi32(h, _mm256_setr_epi32(0, 1, 4, 5, 2, 3, 6, 7));
                    __m256 nbd = _mm256_set_m128(_mm_set1_ps(-b1->d), _mm_set1_ps(-b0->d));
                    accm4[o][p] = _mm256_fmadd_ps(_mm256_mul_ps(nbd, _mm256_set1_ps(dec[o].dmin)),
                                                  _mm256_cvtepi32_ps(prod), accm4[o][p]);
                } else if (t == KZ_Q5 || t == KZ_Q2 || t == KZ_Q3) {
                    __m512i mj = _mm512_madd_epi16(dup_si(dec[o].m16), bs);
                    int s0 = hsum_epi32(lo_si(mj)), s1 = hsum_epi32(hi_si(mj));
                    if (t == KZ_Q3) {
                        si = _mm512_sub_epi32(si, _mm512_setr_epi32(4 * s0, 0, 0, 0, 0, 0, 0, 0, 4 * s1, 0, 0, 0, 0, 0, 0, 0));
                    } else {
                        float dm0 = t == KZ_Q5 ? -b0->d * dec[o].dmin : b0->d * dec[o].dmin;
                        accm[o][r0] += dm0 * (float)s0;
                        if (r1 != r0) {
                            float dm1 = t == KZ_Q5 ? -b1->d * dec[o].dmin : b1->d * dec[o].dmin;
                            accm[o][r1] += dm1 * (float)s1;
                        }
                    }
                }
                acc[o][p] = _mm512_fmadd_ps(_mm512_mul_ps(bd, _mm512_set1_ps(dec[o].d)), _mm512_cvtepi32_ps(si), acc[o][p]);
            }
        }
    }
    UNROLL for (int p = 0; p < CP; p++) UNROLL for (int h = 0; h < 2; h++) UNROLL for (int o = 0; o < R; o++) {
        const int r = 2 * p + h;
        if (r >= C)
            continue;
        float v = hsum_ps(h ? hi_ps(acc[o][p]) : lo_ps(acc[o][p]));
        if (t == KZ_Q4) {
            __m128 m = h ? _mm256_extractf128_ps(accm4[o][p], 1) : _mm256_castps256_ps128(accm4[o][p]);
            m = _mm_add_ps(m, _mm_movehl_ps(m, m));
            m = _mm_add_ss(m, _mm_movehdup_ps(m));
            v = v + _mm_cvtss_f32(m);
        } else if (t == KZ_Q5) {
            v = v + accm[o][r];
        } else if (t == KZ_Q2) {
            v = v - accm[o][r];
        }
        d[r * ds + o] = v;
    }
}
// One activation row (decode): 256-bit, the weight blocks decoded as above (vector scale
// unpacking instead of vec_dot's scalar loops), the activation block shared by R weight rows.
FG_AI void kz1_tile(int t, int R, int64_t n, const char *w, size_t ws, const char *x, float *d) {
    const size_t bsz = kz_size(t);
    __m256 acc[KZ_W];
    __m128 accm4[KZ_W];
    float accm[KZ_W];
    UNROLL for (int o = 0; o < R; o++) {
        acc[o] = _mm256_setzero_ps();
        accm4[o] = _mm_setzero_ps();
        accm[o] = 0.0f;
    }
    const __m256i m32 = _mm256_set1_epi8(32);
    kz_dec dec[KZ_W];
    const int64_t nb = n / FG_QK_K;
    PF_INIT(R, nb);
    for (int64_t i = 0; i < nb; i++) {
        PF_STEP();
        UNROLL for (int o = 0; o < R; o++) kz_decode(t, w + o * ws + (size_t)i * bsz, &dec[o]);
        const fg_block_q8_k *b = (const fg_block_q8_k *)x + i;
        __m256i sumi[KZ_W];
        UNROLL for (int o = 0; o < R; o++) sumi[o] = _mm256_setzero_si256();
        for (int j = 0; j < 8; j++) {
            const __m256i y = load32(b->qs + 32 * j);
            const __m256i y32 = _mm256_maddubs_epi16(m32, y);
            UNROLL for (int o = 0; o < R; o++) {
                __m256i pr = _mm256_maddubs_epi16(dec[o].q[j], y);
                if (t == KZ_Q6)
                    pr = _mm256_sub_epi16(pr, y32);
                __m256i sc = t == KZ_Q4 || t == KZ_Q5 ? _mm256_set1_epi32((int)dec[o].sc32[j]) : dec[o].sc[j];
                sumi[o] = dpwssd(sumi[o], pr, sc);
            }
        }
        const __m256i bs = load32(b->bsums);
        UNROLL for (int o = 0; o < R; o++) {
            __m256i si = sumi[o];
            float dd = b->d * dec[o].d;
            if (t == KZ_Q4) {
                __m256i mj = _mm256_madd_epi16(dec[o].m16, bs);
                __m128i prod = _mm_hadd_epi32(_mm256_castsi256_si128(mj), _mm256_extracti128_si256(mj, 1));
                float dmin = -b->d * dec[o].dmin;
                accm4[o] = _mm_fmadd_ps(_mm_set1_ps(dmin), _mm_cvtepi32_ps(prod), accm4[o]);
            } else if (t != KZ_Q6) {
                int sm = hsum_epi32(_mm256_madd_epi16(dec[o].m16, bs));
                if (t == KZ_Q3) {
                    si = _mm256_sub_epi32(si, _mm256_setr_epi32(4 * sm, 0, 0, 0, 0, 0, 0, 0));
                } else {
                    float dmin = t == KZ_Q5 ? -b->d * dec[o].dmin : b->d * dec[o].dmin;
                    accm[o] += dmin * (float)sm;
                }
            }
            acc[o] = _mm256_fmadd_ps(_mm256_set1_ps(dd), _mm256_cvtepi32_ps(si), acc[o]);
        }
    }
    UNROLL for (int o = 0; o < R; o++) {
        float v = hsum_ps(acc[o]);
        if (t == KZ_Q4) {
            __m128 m = accm4[o];
            m = _mm_add_ps(m, _mm_movehl_ps(m, m));
            m = _mm_add_ss(m, _mm_movehdup_ps(m));
            v = v + _mm_cvtss_f32(m);
        } else if (t == KZ_Q5) {
            v = v + accm[o];
        } else if (t == KZ_Q2) {
            v = v - accm[o];
        }
        d[o] = v;
    }
}
#define KZ1_INST(fam, tt, R)                                                                       \
    static void fam##_##R##_1(int64_t n, const char *w, size_t ws, const char *x, size_t xs, float *d,  \
                              size_t ds) {                                                         \
        (void)xs;                                                                                  \
        (void)ds;                                                                                  \
        kz1_tile(tt, R, n, w, ws, x, d);                                                           \
    }
#define KZ_INST(fam, tt, R, C)                                                                     \
    static void fam##_##R##_##C(int64_t n, const char *w, size_t ws, const char *x, size_t xs, float *d, \
                                size_t ds) {                                                       \
        kz_tile(tt, R, C, n, w, ws, x, xs, d, ds);                                                 \
    }
#define KZ_FAMILY(fam, tt)                                                                         \
    KZ1_INST(fam, tt, 4) KZ_INST(fam, tt, 4, 2) KZ_INST(fam, tt, 4, 3) KZ_INST(fam, tt, 4, 4)         \
    KZ1_INST(fam, tt, 1) KZ_INST(fam, tt, 1, 2) KZ_INST(fam, tt, 1, 3) KZ_INST(fam, tt, 1, 4)       \
    static const gemm_kernel fam##_full[4] = {fam##_4_1, fam##_4_2, fam##_4_3, fam##_4_4};         \
    static const gemm_kernel fam##_one[4] = {fam##_1_1, fam##_1_2, fam##_1_3, fam##_1_4};
KZ_FAMILY(q2_k, KZ_Q2)
KZ_FAMILY(q3_k, KZ_Q3)
KZ_FAMILY(q4_k, KZ_Q4)
KZ_FAMILY(q5_k, KZ_Q5)
KZ_FAMILY(q6_k, KZ_Q6)
#endif

// ---------------------------------------------------------------- float types
// vec_dot: four 8-lane accumulators over 32-element steps (acc0..acc3 for elements 0-7 .. 24-31
// of each step), then 8-element steps into acc0, hsum_ps((acc0 + acc1) + (acc2 + acc3)), then
// the scalar tail. Here acc0|acc1 and acc2|acc3 may share a 512-bit register (same lanes).
enum { KF_F32, KF_F16, KF_BF16 };
FG_AI size_t kf_esize(int t) { return t == KF_F32 ? 4 : 2; }
FG_AI __m256 kf_load8(int t, const char *p) {
    if (t == KF_F32)
        return _mm256_loadu_ps((const float *)p);
    if (t == KF_F16)
        return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
    __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
}
FG_AI float kf_scalar(int t, const char *p) {
    if (t == KF_F32)
        return *(const float *)p;
    uint16_t h;
    memcpy(&h, p, 2);
    return t == KF_F16 ? h2f(h) : fg_bf16_to_f32(h);
}

// The part of vec_dot after the 32-element steps, for one output.
FG_AI float kf_finish(int t, __m256 acc0, __m256 acc1, __m256 acc2, __m256 acc3, int64_t i, int64_t n,
                      const char *a, const char *b) {
    const size_t es = kf_esize(t);
    for (; i + 8 <= n; i += 8)
        acc0 = _mm256_fmadd_ps(kf_load8(t, a + i * es), kf_load8(t, b + i * es), acc0);
    float sum = hsum_ps(_mm256_add_ps(_mm256_add_ps(acc0, acc1), _mm256_add_ps(acc2, acc3)));
    for (; i < n; i++)
        sum += kf_scalar(t, a + i * es) * kf_scalar(t, b + i * es);
    return sum;
}

#ifdef __AVX512F__
#define KF_W 4
#define KF_X 3
FG_AI __m512 kf_load16(int t, const char *p) {
    if (t == KF_F32)
        return _mm512_loadu_ps((const float *)p);
    if (t == KF_F16)
        return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
    __m512i v = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
}
FG_AI __m256 hi256(__m512 v) { return _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)); }
FG_AI void kf_tile(int t, int R, int C, int64_t n, const char *w, size_t ws, const char *x, size_t xs,
                   float *d, size_t ds) {
    const size_t es = kf_esize(t);
    __m512 a01[KF_W][KF_X], a23[KF_W][KF_X];
    UNROLL for (int o = 0; o < R; o++) UNROLL for (int r = 0; r < C; r++) {
        a01[o][r] = _mm512_setzero_ps();
        a23[o][r] = _mm512_setzero_ps();
    }
    PF_INIT(R, n / 32);
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        PF_STEP();
        __m512 wv[KF_W];
        UNROLL for (int o = 0; o < R; o++) wv[o] = kf_load16(t, w + o * ws + i * es);
        UNROLL for (int r = 0; r < C; r++) {
            __m512 xv = kf_load16(t, x + r * xs + i * es);
            UNROLL for (int o = 0; o < R; o++) a01[o][r] = _mm512_fmadd_ps(wv[o], xv, a01[o][r]);
        }
        UNROLL for (int o = 0; o < R; o++) wv[o] = kf_load16(t, w + o * ws + (i + 16) * es);
        UNROLL for (int r = 0; r < C; r++) {
            __m512 xv = kf_load16(t, x + r * xs + (i + 16) * es);
            UNROLL for (int o = 0; o < R; o++) a23[o][r] = _mm512_fmadd_ps(wv[o], xv, a23[o][r]);
        }
    }
    UNROLL for (int r = 0; r < C; r++) UNROLL for (int o = 0; o < R; o++) d[r * ds + o] =
        kf_finish(t, _mm512_castps512_ps256(a01[o][r]), hi256(a01[o][r]),
                  _mm512_castps512_ps256(a23[o][r]), hi256(a23[o][r]), i, n,
                  w + o * ws, x + r * xs);
}
#else
#define KF_W 1
#define KF_X 2
FG_AI void kf_tile(int t, int R, int C, int64_t n, const char *w, size_t ws, const char *x, size_t xs,
                   float *d, size_t ds) {
    const size_t es = kf_esize(t);
    __m256 acc[KF_W][KF_X][4];
    UNROLL for (int o = 0; o < R; o++) UNROLL for (int r = 0; r < C; r++) UNROLL for (int k = 0; k < 4; k++)
        acc[o][r][k] = _mm256_setzero_ps();
    PF_INIT(R, n / 32);
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        PF_STEP();
        UNROLL for (int k = 0; k < 4; k++) {
            __m256 wv[KF_W];
            UNROLL for (int o = 0; o < R; o++) wv[o] = kf_load8(t, w + o * ws + (i + 8 * k) * es);
            UNROLL for (int r = 0; r < C; r++) {
                __m256 xv = kf_load8(t, x + r * xs + (i + 8 * k) * es);
                UNROLL for (int o = 0; o < R; o++) acc[o][r][k] = _mm256_fmadd_ps(wv[o], xv, acc[o][r][k]);
            }
        }
    }
    UNROLL for (int r = 0; r < C; r++) UNROLL for (int o = 0; o < R; o++) d[r * ds + o] =
        kf_finish(t, acc[o][r][0], acc[o][r][1], acc[o][r][2], acc[o][r][3], i, n, w + o * ws, x + r * xs);
}
#endif

#define KF_INST(fam, tt, R, C)                                                                     \
    static void fam##_##R##_##C(int64_t n, const char *w, size_t ws, const char *x, size_t xs, float *d, \
                                size_t ds) {                                                       \
        kf_tile(tt, R, C, n, w, ws, x, xs, d, ds);                                                 \
    }
#if KF_W == 4
#define KF_FAMILY(fam, tt)                                                                         \
    KF_INST(fam, tt, 4, 1) KF_INST(fam, tt, 4, 2) KF_INST(fam, tt, 4, 3) KF_INST(fam, tt, 1, 1)       \
        KF_INST(fam, tt, 1, 2) KF_INST(fam, tt, 1, 3) static const gemm_kernel fam##_full[3] = {   \
            fam##_4_1, fam##_4_2, fam##_4_3};                                                      \
    static const gemm_kernel fam##_one[3] = {fam##_1_1, fam##_1_2, fam##_1_3};
#else
#define KF_FAMILY(fam, tt)                                                                         \
    KF_INST(fam, tt, 1, 1) KF_INST(fam, tt, 1, 2) static const gemm_kernel fam##_full[2] = {       \
        fam##_1_1, fam##_1_2};                                                                     \
    static const gemm_kernel fam##_one[2] = {fam##_1_1, fam##_1_2};
#endif
KF_FAMILY(f32, KF_F32)
KF_FAMILY(f16, KF_F16)
KF_FAMILY(bf16, KF_BF16)

static bool gemm_fast(uint32_t type, const gemm_kernel **full, const gemm_kernel **one, int *tw, int *tx) {
    *tw = TILE_W;
    *tx = TILE_X;
    switch (type) {
#define CASE(T, fam)                                                                               \
    case T:                                                                                        \
        *full = fam##_full;                                                                        \
        *one = fam##_one;                                                                          \
        return true;
#undef CASE
#define CASE(T, fam)                                                                               \
    case T:                                                                                        \
        *full = fam##_full;                                                                        \
        *one = fam##_one;                                                                          \
        *tx = TILE_XZ;                                                                             \
        return true;
        CASE(FG_TYPE_Q4_0, q4_0)
        CASE(FG_TYPE_Q5_0, q5_0)
        CASE(FG_TYPE_Q8_0, q8_0)
        CASE(FG_TYPE_MXFP4, mxfp4)
        CASE(FG_TYPE_Q4_1, q4_1)
        CASE(FG_TYPE_Q5_1, q5_1)
#undef CASE
#define CASE(T, fam)                                                                               \
    case T:                                                                                        \
        *full = fam##_full;                                                                        \
        *one = fam##_one;                                                                          \
        return true;
        CASE(FG_TYPE_Q2_K, q2_k)
        CASE(FG_TYPE_Q3_K, q3_k)
        CASE(FG_TYPE_Q4_K, q4_k)
        CASE(FG_TYPE_Q5_K, q5_k)
        CASE(FG_TYPE_Q6_K, q6_k)
#undef CASE
#define CASE(T, fam)                                                                               \
    case T:                                                                                        \
        *full = fam##_full;                                                                        \
        *one = fam##_one;                                                                          \
        *tw = KF_W;                                                                                \
        *tx = KF_X;                                                                                \
        return true;
        CASE(FG_TYPE_F32, f32)
        CASE(FG_TYPE_F16, f16)
        CASE(FG_TYPE_BF16, bf16)
#undef CASE
    default:
        return false;
    }
}
#endif // FG_CPU_HAVE_AVX2

bool fg_cpu_gemm_has_fast(bool use_ref, uint32_t type, int64_t n_x) {
#ifdef FG_CPU_HAVE_AVX2
    const gemm_kernel *full, *one;
    int tw, tx;
    if (use_ref || n_x < 1 || !gemm_fast(type, &full, &one, &tw, &tx))
        return false;
    if (n_x >= 2)
        return true;
#ifdef GEMM_Z
    // one row (decode, weights streamed from memory): measured faster than vec_dot on Zen 5
    // (the activation block shared by 4 weight rows, vector scale unpacking, prefetch) except
    // Q2_K, Q6_K (within noise) and the float types (memory bound either way)
    switch (type) {
    case FG_TYPE_Q2_K:
    case FG_TYPE_Q6_K:
    case FG_TYPE_F32:
    case FG_TYPE_F16:
    case FG_TYPE_BF16:
        return false;
    default:
        return true;
    }
#else
    return false; // the 256-bit kernels were not measured against vec_dot for one row
#endif
#else
    (void)use_ref;
    (void)type;
    (void)n_x;
    return false;
#endif
}

fg_status fg_cpu_gemm(bool use_ref, uint32_t type, int64_t n, int64_t n_w, int64_t n_x, const void *w,
                      size_t w_stride, const void *x, size_t x_stride, float *dst, size_t dst_stride) {
    const fg_type_traits *tr = fg_cpu_traits(type, use_ref);
    if (!tr || !tr->vec_dot)
        return FG_FAIL(FG_ERR_UNSUPPORTED, "gemm: no vec_dot kernel for weight type %s", fg_type_name(type));
    if (n < 0 || n_w < 0 || n_x < 0 || n % tr->blck_size != 0)
        return FG_FAIL(FG_ERR_INVALID_ARG, "gemm: %s rows of %lld elements (block %lld), %lld x %lld rows",
                       tr->name, (long long)n, (long long)tr->blck_size, (long long)n_w, (long long)n_x);
#ifdef FG_CPU_HAVE_AVX2
    const gemm_kernel *full, *one;
    int tw, tx;
    if (!use_ref && gemm_fast(type, &full, &one, &tw, &tx)) {
        run_tiles(full, one, tw, tx, n, n_w, n_x, w, w_stride, x, x_stride, dst, dst_stride);
        return FG_OK;
    }
#endif
    gemm_loop(tr->vec_dot, n, n_w, n_x, w, w_stride, x, x_stride, dst, dst_stride);
    return FG_OK;
}
