// quant_internal.h - declarations shared by the quant module's files (not for other modules):
// the scalar reference kernels of each type (the oracle) and small helpers the CPU backend's
// fast paths (src/backend/cpu/quant_simd.c, quant_gemm.c) share with them.
// quant_ref.c holds the table and the legacy/float types, quant_kquants.c the K-quants.
#ifndef FG_QUANT_INTERNAL_H
#define FG_QUANT_INTERNAL_H

#include "quant/blocks.h"
#include "quant/quant.h"

// Round to nearest, ties to even, for |x| < 2^22 (ggml's nearest_int).
static inline int fg_nearest_int(float x) {
    float v = x + 12582912.0f;
    int32_t i;
    memcpy(&i, &v, 4);
    return (i & 0x007fffff) - 0x00400000;
}

#define FG_DECL_KERNELS(t)                                                    \
    void fg_dequant_##t(const void *src, float *dst, int64_t n);             \
    void fg_quant_##t(const float *src, void *dst, int64_t n);               \
    void fg_vec_dot_##t(int64_t n, float *s, const void *x, const void *y);

FG_DECL_KERNELS(f32)
FG_DECL_KERNELS(f16)
FG_DECL_KERNELS(bf16)
FG_DECL_KERNELS(q4_0)
FG_DECL_KERNELS(q4_1)
FG_DECL_KERNELS(q5_0)
FG_DECL_KERNELS(q5_1)
FG_DECL_KERNELS(q8_0)
FG_DECL_KERNELS(q8_1)
FG_DECL_KERNELS(mxfp4)
FG_DECL_KERNELS(q2_k)
FG_DECL_KERNELS(q3_k)
FG_DECL_KERNELS(q4_k)
FG_DECL_KERNELS(q5_k)
FG_DECL_KERNELS(q6_k)
FG_DECL_KERNELS(q8_k)

// Activation quantizers with the arithmetic of ggml's x86 CPU backend (see quant_ref.c).
void fg_quant_q8_0_act(const float *src, void *dst, int64_t n);
void fg_quant_q8_1_act(const float *src, void *dst, int64_t n);

// Q4_K/Q5_K: the 6-bit scale and min of sub-block j (0..7) from the 12 packed bytes.
static inline void fg_get_scale_min_k4(int j, const uint8_t *q, uint8_t *sc, uint8_t *m) {
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (uint8_t)((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
        *m = (uint8_t)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
    }
}

// Q3_K: the 16 6-bit scales (0..63, stored value; subtract 32 to use).
static inline void fg_q3_k_scales(const uint8_t *s, uint8_t out[16]) {
    for (int j = 0; j < 16; j++) {
        int lo = j < 8 ? (s[j] & 0xF) : (s[j - 8] >> 4);
        int hi = (s[8 + (j & 3)] >> (2 * (j >> 2))) & 3;
        out[j] = (uint8_t)(lo | (hi << 4));
    }
}

#endif // FG_QUANT_INTERNAL_H
