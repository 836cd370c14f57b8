// quant_ref.c - the traits tables (scalar reference and fast) and the scalar kernels of the
// float types (F32/F16/BF16) and the 32-element types (Q4_0/Q4_1/Q5_0/Q5_1/Q8_0/Q8_1/MXFP4):
// dequantize, ggml's *_ref quantizers (bit-identical), vec_dot; plus the Q8_0/Q8_1 activation
// quantizers of ggml's x86 CPU backend. K-quants: quant_kquants.c; AVX2: quant_simd.c.
// Who calls it: types.c (fg_type_traits_get), backend/cpu (fg_quantize_row), synth, tests.
#include "quant/quant_internal.h"

#include <math.h>
#include <stdatomic.h>
#include <string.h>

const fg_type_traits *fg_quant_ref_table(void);

// ---------------------------------------------------------------- float types
void fg_dequant_f32(const void *src, float *dst, int64_t n) { memcpy(dst, src, (size_t)n * 4); }
void fg_quant_f32(const float *src, void *dst, int64_t n) { memcpy(dst, src, (size_t)n * 4); }
// ggml's scalar path: f32 products accumulated in double.
void fg_vec_dot_f32(int64_t n, float *s, const void *x, const void *y) {
    const float *a = x, *b = y;
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++)
        sum += (double)(a[i] * b[i]);
    *s = (float)sum;
}

void fg_dequant_f16(const void *src, float *dst, int64_t n) {
    const fg_f16 *h = src;
    for (int64_t i = 0; i < n; i++)
        dst[i] = fg_f16_to_f32(h[i]);
}
void fg_quant_f16(const float *src, void *dst, int64_t n) {
    fg_f16 *h = dst;
    for (int64_t i = 0; i < n; i++)
        h[i] = fg_f32_to_f16(src[i]);
}
// Products of two halves are exact in f32; accumulated in double (ggml's scalar path).
void fg_vec_dot_f16(int64_t n, float *s, const void *x, const void *y) {
    const fg_f16 *a = x, *b = y;
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++)
        sum += (double)(fg_f16_to_f32(a[i]) * fg_f16_to_f32(b[i]));
    *s = (float)sum;
}

void fg_dequant_bf16(const void *src, float *dst, int64_t n) {
    const fg_bf16 *h = src;
    for (int64_t i = 0; i < n; i++)
        dst[i] = fg_bf16_to_f32(h[i]);
}
void fg_quant_bf16(const float *src, void *dst, int64_t n) {
    fg_bf16 *h = dst;
    for (int64_t i = 0; i < n; i++)
        h[i] = fg_f32_to_bf16(src[i]);
}
void fg_vec_dot_bf16(int64_t n, float *s, const void *x, const void *y) {
    const fg_bf16 *a = x, *b = y;
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++)
        sum += (double)(fg_bf16_to_f32(a[i]) * fg_bf16_to_f32(b[i]));
    *s = (float)sum;
}

// ---------------------------------------------------------------- Q4_0
void fg_dequant_q4_0(const void *src, float *dst, int64_t n) {
    const fg_block_q4_0 *b = src;
    for (int64_t i = 0; i < n / FG_QK4_0; i++) {
        float d = fg_f16_to_f32(b[i].d);
        for (int j = 0; j < 16; j++) {
            dst[i * 32 + j] = (float)((b[i].qs[j] & 0xF) - 8) * d;
            dst[i * 32 + j + 16] = (float)((b[i].qs[j] >> 4) - 8) * d;
        }
    }
}
void fg_quant_q4_0(const float *src, void *dst, int64_t n) {
    fg_block_q4_0 *b = dst;
    for (int64_t i = 0; i < n / FG_QK4_0; i++) {
        const float *x = src + i * 32;
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < 32; j++) {
            if (amax < fabsf(x[j])) {
                amax = fabsf(x[j]);
                max = x[j];
            }
        }
        float d = max / -8, id = d != 0.0f ? 1.0f / d : 0.0f;
        b[i].d = fg_f32_to_f16(d);
        for (int j = 0; j < 16; j++) {
            int q0 = (int8_t)(x[j] * id + 8.5f), q1 = (int8_t)(x[j + 16] * id + 8.5f);
            q0 = q0 < 15 ? q0 : 15;
            q1 = q1 < 15 ? q1 : 15;
            b[i].qs[j] = (uint8_t)(q0 | (q1 << 4));
        }
    }
}
void fg_vec_dot_q4_0(int64_t n, float *s, const void *x, const void *y) {
    const fg_block_q4_0 *a = x;
    const fg_block_q8_0 *b = y;
    float sum = 0.0f;
    for (int64_t i = 0; i < n / FG_QK4_0; i++) {
        int sumi = 0;
        for (int j = 0; j < 16; j++)
            sumi += ((a[i].qs[j] & 0xF) - 8) * b[i].qs[j] + ((a[i].qs[j] >> 4) - 8) * b[i].qs[j + 16];
        sum += (float)sumi * fg_f16_to_f32(a[i].d) * fg_f16_to_f32(b[i].d);
    }
    *s = sum;
}

// ---------------------------------------------------------------- Q4_1
void fg_dequant_q4_1(const void *src, float *dst, int64_t n) {
    const fg_block_q4_1 *b = src;
    for (int64_t i = 0; i < n / FG_QK4_1; i++) {
        float d = fg_f16_to_f32(b[i].d), m = fg_f16_to_f32(b[i].m);
        for (int j = 0; j < 16; j++) {
            dst[i * 32 + j] = (float)(b[i].qs[j] & 0xF) * d + m;
            dst[i * 32 + j + 16] = (float)(b[i].qs[j] >> 4) * d + m;
        }
    }
}
void fg_quant_q4_1(const float *src, void *dst, int64_t n) {
    fg_block_q4_1 *b = dst;
    for (int64_t i = 0; i < n / FG_QK4_1; i++) {
        const float *x = src + i * 32;
        float min = INFINITY, max = -INFINITY;
        for (int j = 0; j < 32; j++) {
            if (x[j] < min)
                min = x[j];
            if (x[j] > max)
                max = x[j];
        }
        float d = (max - min) / 15, id = d != 0.0f ? 1.0f / d : 0.0f;
        b[i].d = fg_f32_to_f16(d);
        b[i].m = fg_f32_to_f16(min);
        for (int j = 0; j < 16; j++) {
            int q0 = (int8_t)((x[j] - min) * id + 0.5f), q1 = (int8_t)((x[j + 16] - min) * id + 0.5f);
            q0 = q0 < 15 ? q0 : 15;
            q1 = q1 < 15 ? q1 : 15;
            b[i].qs[j] = (uint8_t)(q0 | (q1 << 4));
        }
    }
}
void fg_vec_dot_q4_1(int64_t n, float *s, const void *x, const void *y) {
    const fg_block_q4_1 *a = x;
    const fg_block_q8_1 *b = y;
    float sum = 0.0f;
    for (int64_t i = 0; i < n / FG_QK4_1; i++) {
        int sumi = 0;
        for (int j = 0; j < 16; j++)
            sumi += (a[i].qs[j] & 0xF) * b[i].qs[j] + (a[i].qs[j] >> 4) * b[i].qs[j + 16];
        sum += (fg_f16_to_f32(a[i].d) * fg_f16_to_f32(b[i].d)) * (float)sumi +
               fg_f16_to_f32(a[i].m) * fg_f16_to_f32(b[i].s);
    }
    *s = sum;
}

// ---------------------------------------------------------------- Q5_0 / Q5_1
static inline uint32_t load_u32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

void fg_dequant_q5_0(const void *src, float *dst, int64_t n) {
    const fg_block_q5_0 *b = src;
    for (int64_t i = 0; i < n / FG_QK5_0; i++) {
        float d = fg_f16_to_f32(b[i].d);
        uint32_t qh = load_u32(b[i].qh);
        for (int j = 0; j < 16; j++) {
            int h0 = (int)((qh >> j) << 4) & 0x10, h1 = (int)(qh >> (j + 12)) & 0x10;
            dst[i * 32 + j] = (float)(((b[i].qs[j] & 0xF) | h0) - 16) * d;
            dst[i * 32 + j + 16] = (float)(((b[i].qs[j] >> 4) | h1) - 16) * d;
        }
    }
}
void fg_quant_q5_0(const float *src, void *dst, int64_t n) {
    fg_block_q5_0 *b = dst;
    for (int64_t i = 0; i < n / FG_QK5_0; i++) {
        const float *x = src + i * 32;
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < 32; j++) {
            if (amax < fabsf(x[j])) {
                amax = fabsf(x[j]);
                max = x[j];
            }
        }
        float d = max / -16, id = d != 0.0f ? 1.0f / d : 0.0f;
        b[i].d = fg_f32_to_f16(d);
        uint32_t qh = 0;
        for (int j = 0; j < 16; j++) {
            int q0 = (int8_t)(x[j] * id + 16.5f), q1 = (int8_t)(x[j + 16] * id + 16.5f);
            q0 = q0 < 31 ? q0 : 31;
            q1 = q1 < 31 ? q1 : 31;
            b[i].qs[j] = (uint8_t)((q0 & 0xF) | ((q1 & 0xF) << 4));
            qh |= (uint32_t)((q0 & 0x10) >> 4) << j;
            qh |= (uint32_t)((q1 & 0x10) >> 4) << (j + 16);
        }
        memcpy(b[i].qh, &qh, 4);
    }
}
void fg_vec_dot_q5_0(int64_t n, float *s, const void *x, const void *y) {
    const fg_block_q5_0 *a = x;
    const fg_block_q8_0 *b = y;
    float sum = 0.0f;
    for (int64_t i = 0; i < n / FG_QK5_0; i++) {
        uint32_t qh = load_u32(a[i].qh);
        int sumi = 0;
        for (int j = 0; j < 16; j++) {
            int h0 = (int)((qh >> j) << 4) & 0x10, h1 = (int)(qh >> (j + 12)) & 0x10;
            sumi += (((a[i].qs[j] & 0xF) | h0) - 16) * b[i].qs[j] +
                    (((a[i].qs[j] >> 4) | h1) - 16) * b[i].qs[j + 16];
        }
        sum += (fg_f16_to_f32(a[i].d) * fg_f16_to_f32(b[i].d)) * (float)sumi;
    }
    *s = sum;
}

void fg_dequant_q5_1(const void *src, float *dst, int64_t n) {
    const fg_block_q5_1 *b = src;
    for (int64_t i = 0; i < n / FG_QK5_1; i++) {
        float d = fg_f16_to_f32(b[i].d), m = fg_f16_to_f32(b[i].m);
        uint32_t qh = load_u32(b[i].qh);
        for (int j = 0; j < 16; j++) {
            int h0 = (int)((qh >> j) << 4) & 0x10, h1 = (int)(qh >> (j + 12)) & 0x10;
            dst[i * 32 + j] = (float)((b[i].qs[j] & 0xF) | h0) * d + m;
            dst[i * 32 + j + 16] = (float)((b[i].qs[j] >> 4) | h1) * d + m;
        }
    }
}
void fg_quant_q5_1(const float *src, void *dst, int64_t n) {
    fg_block_q5_1 *b = dst;
    for (int64_t i = 0; i < n / FG_QK5_1; i++) {
        const float *x = src + i * 32;
        float min = INFINITY, max = -INFINITY;
        for (int j = 0; j < 32; j++) {
            if (x[j] < min)
                min = x[j];
            if (x[j] > max)
                max = x[j];
        }
        float d = (max - min) / 31, id = d != 0.0f ? 1.0f / d : 0.0f;
        b[i].d = fg_f32_to_f16(d);
        b[i].m = fg_f32_to_f16(min);
        uint32_t qh = 0;
        for (int j = 0; j < 16; j++) {
            int q0 = (uint8_t)((x[j] - min) * id + 0.5f), q1 = (uint8_t)((x[j + 16] - min) * id + 0.5f);
            b[i].qs[j] = (uint8_t)((q0 & 0xF) | ((q1 & 0xF) << 4));
            qh |= (uint32_t)((q0 & 0x10) >> 4) << j;
            qh |= (uint32_t)((q1 & 0x10) >> 4) << (j + 16);
        }
        memcpy(b[i].qh, &qh, 4);
    }
}
void fg_vec_dot_q5_1(int64_t n, float *s, const void *x, const void *y) {
    const fg_block_q5_1 *a = x;
    const fg_block_q8_1 *b = y;
    float sum = 0.0f;
    for (int64_t i = 0; i < n / FG_QK5_1; i++) {
        uint32_t qh = load_u32(a[i].qh);
        int sumi = 0;
        for (int j = 0; j < 16; j++) {
            int h0 = (int)((qh >> j) << 4) & 0x10, h1 = (int)(qh >> (j + 12)) & 0x10;
            sumi += ((a[i].qs[j] & 0xF) | h0) * b[i].qs[j] + ((a[i].qs[j] >> 4) | h1) * b[i].qs[j + 16];
        }
        sum += (fg_f16_to_f32(a[i].d) * fg_f16_to_f32(b[i].d)) * (float)sumi +
               fg_f16_to_f32(a[i].m) * fg_f16_to_f32(b[i].s);
    }
    *s = sum;
}

// ---------------------------------------------------------------- Q8_0 / Q8_1
void fg_dequant_q8_0(const void *src, float *dst, int64_t n) {
    const fg_block_q8_0 *b = src;
    for (int64_t i = 0; i < n / FG_QK8_0; i++) {
        float d = fg_f16_to_f32(b[i].d);
        for (int j = 0; j < 32; j++)
            dst[i * 32 + j] = (float)b[i].qs[j] * d;
    }
}
// ggml's quantize_row_q8_0_ref: d = amax / 127, q = roundf(x / d) (ties away from zero).
void fg_quant_q8_0(const float *src, void *dst, int64_t n) {
    fg_block_q8_0 *b = dst;
    for (int64_t i = 0; i < n / FG_QK8_0; i++) {
        const float *x = src + i * 32;
        float amax = 0.0f;
        for (int j = 0; j < 32; j++)
            amax = amax > fabsf(x[j]) ? amax : fabsf(x[j]); // ggml's MAX()
        float d = amax / 127, id = d != 0.0f ? 1.0f / d : 0.0f;
        b[i].d = fg_f32_to_f16(d);
        for (int j = 0; j < 32; j++)
            b[i].qs[j] = (int8_t)roundf(x[j] * id);
    }
}
void fg_vec_dot_q8_0(int64_t n, float *s, const void *x, const void *y) {
    const fg_block_q8_0 *a = x, *b = y;
    float sum = 0.0f;
    for (int64_t i = 0; i < n / FG_QK8_0; i++) {
        int sumi = 0;
        for (int j = 0; j < 32; j++)
            sumi += a[i].qs[j] * b[i].qs[j];
        sum += (float)sumi * (fg_f16_to_f32(a[i].d) * fg_f16_to_f32(b[i].d));
    }
    *s = sum;
}

void fg_dequant_q8_1(const void *src, float *dst, int64_t n) {
    const fg_block_q8_1 *b = src;
    for (int64_t i = 0; i < n / FG_QK8_1; i++) {
        float d = fg_f16_to_f32(b[i].d);
        for (int j = 0; j < 32; j++)
            dst[i * 32 + j] = (float)b[i].qs[j] * d;
    }
}
// ggml's quantize_row_q8_1_ref: as Q8_0, plus s = f16(sum(q) * d).
void fg_quant_q8_1(const float *src, void *dst, int64_t n) {
    fg_block_q8_1 *b = dst;
    for (int64_t i = 0; i < n / FG_QK8_1; i++) {
        const float *x = src + i * 32;
        float amax = 0.0f;
        for (int j = 0; j < 32; j++)
            amax = amax > fabsf(x[j]) ? amax : fabsf(x[j]); // ggml's MAX()
        float d = amax / 127, id = d != 0.0f ? 1.0f / d : 0.0f;
        b[i].d = fg_f32_to_f16(d);
        int sum = 0;
        for (int j = 0; j < 32; j++) {
            b[i].qs[j] = (int8_t)roundf(x[j] * id);
            sum += b[i].qs[j];
        }
        b[i].s = fg_f32_to_f16((float)sum * d);
    }
}
void fg_vec_dot_q8_1(int64_t n, float *s, const void *x, const void *y) {
    const fg_block_q8_1 *a = x, *b = y;
    float sum = 0.0f;
    for (int64_t i = 0; i < n / FG_QK8_1; i++) {
        int sumi = 0;
        for (int j = 0; j < 32; j++)
            sumi += a[i].qs[j] * b[i].qs[j];
        sum += (float)sumi * (fg_f16_to_f32(a[i].d) * fg_f16_to_f32(b[i].d));
    }
    *s = sum;
}

// Activation quantizers of ggml's x86 CPU backend (quantize_row_q8_0 / q8_1 with AVX/AVX2,
// which produced the llama.cpp goldens): d = amax / 127 stored as f16, but the multiplier is
// 127 / amax (not 1 / d) and rounding is to nearest, ties to even. They differ from the
// reference quantizers above in the last ulp of the multiplier and in ties.
static float quant_q8_act(const float *x, int8_t *qs, fg_f16 *hd, int *sum) {
    float amax = 0.0f;
    for (int j = 0; j < 32; j++)
        amax = amax > fabsf(x[j]) ? amax : fabsf(x[j]);
    float d = amax / 127.0f, id = amax != 0.0f ? 127.0f / amax : 0.0f;
    *hd = fg_f32_to_f16(d);
    int s = 0;
    for (int j = 0; j < 32; j++) {
        qs[j] = (int8_t)fg_nearest_int(x[j] * id);
        s += qs[j];
    }
    *sum = s;
    return d;
}
void fg_quant_q8_0_act(const float *src, void *dst, int64_t n) {
    fg_block_q8_0 *b = dst;
    int sum;
    for (int64_t i = 0; i < n / FG_QK8_0; i++)
        quant_q8_act(src + i * 32, b[i].qs, &b[i].d, &sum);
}
void fg_quant_q8_1_act(const float *src, void *dst, int64_t n) {
    fg_block_q8_1 *b = dst;
    int sum;
    for (int64_t i = 0; i < n / FG_QK8_1; i++) {
        float d = quant_q8_act(src + i * 32, b[i].qs, &b[i].d, &sum);
        b[i].s = fg_f32_to_f16(d * (float)sum);
    }
}

// ---------------------------------------------------------------- MXFP4
void fg_dequant_mxfp4(const void *src, float *dst, int64_t n) {
    const fg_block_mxfp4 *b = src;
    for (int64_t i = 0; i < n / FG_QK_MXFP4; i++) {
        float d = fg_e8m0_to_f32_half(b[i].e);
        for (int j = 0; j < 16; j++) {
            dst[i * 32 + j] = (float)fg_kvalues_mxfp4[b[i].qs[j] & 0xF] * d;
            dst[i * 32 + j + 16] = (float)fg_kvalues_mxfp4[b[i].qs[j] >> 4] * d;
        }
    }
}
static int mxfp4_best_index(float x, float d) {
    int best = 0;
    float best_err = fabsf((float)fg_kvalues_mxfp4[0] * d - x);
    for (int k = 1; k < 16; k++) {
        float err = fabsf((float)fg_kvalues_mxfp4[k] * d - x);
        if (err < best_err) {
            best = k;
            best_err = err;
        }
    }
    return best;
}
// ggml's quantize_row_mxfp4_ref: e = floor(log2(amax)) - 2 + 127, nearest table value.
void fg_quant_mxfp4(const float *src, void *dst, int64_t n) {
    fg_block_mxfp4 *b = dst;
    for (int64_t i = 0; i < n / FG_QK_MXFP4; i++) {
        const float *x = src + i * 32;
        float amax = 0.0f;
        for (int j = 0; j < 32; j++)
            if (amax < fabsf(x[j]))
                amax = fabsf(x[j]);
        uint8_t e = amax > 0.0f ? (uint8_t)(floorf(log2f(amax)) - 2 + 127) : 0;
        float d = fg_e8m0_to_f32_half(e);
        b[i].e = e;
        for (int j = 0; j < 16; j++)
            b[i].qs[j] = (uint8_t)(mxfp4_best_index(x[j], d) | (mxfp4_best_index(x[j + 16], d) << 4));
    }
}
void fg_vec_dot_mxfp4(int64_t n, float *s, const void *x, const void *y) {
    const fg_block_mxfp4 *a = x;
    const fg_block_q8_0 *b = y;
    float sum = 0.0f;
    for (int64_t i = 0; i < n / FG_QK_MXFP4; i++) {
        int sumi = 0;
        for (int j = 0; j < 16; j++)
            sumi += fg_kvalues_mxfp4[a[i].qs[j] & 0xF] * b[i].qs[j] +
                    fg_kvalues_mxfp4[a[i].qs[j] >> 4] * b[i].qs[j + 16];
        sum += (fg_e8m0_to_f32_half(a[i].e) * fg_f16_to_f32(b[i].d)) * (float)sumi;
    }
    *s = sum;
}

// ---------------------------------------------------------------- tables
#define ROW(id, nm, bs, ts, quantized, weight, t, vdt)                                          \
    [id] = {nm, bs, ts, quantized, weight, fg_dequant_##t, fg_quant_##t, fg_vec_dot_##t, vdt}
#define ROW_NK(id, nm, bs, ts) [id] = {nm, bs, ts, false, false, NULL, NULL, NULL, id}

#define ALL_ROWS                                                                         \
    ROW(FG_TYPE_F32, "f32", 1, 4, false, true, f32, FG_TYPE_F32),                         \
    ROW(FG_TYPE_F16, "f16", 1, 2, false, true, f16, FG_TYPE_F16),                         \
    ROW(FG_TYPE_Q4_0, "q4_0", 32, 18, true, true, q4_0, FG_TYPE_Q8_0),                    \
    ROW(FG_TYPE_Q4_1, "q4_1", 32, 20, true, true, q4_1, FG_TYPE_Q8_1),                    \
    ROW(FG_TYPE_Q5_0, "q5_0", 32, 22, true, true, q5_0, FG_TYPE_Q8_0),                    \
    ROW(FG_TYPE_Q5_1, "q5_1", 32, 24, true, true, q5_1, FG_TYPE_Q8_1),                    \
    ROW(FG_TYPE_Q8_0, "q8_0", 32, 34, true, true, q8_0, FG_TYPE_Q8_0),                    \
    ROW(FG_TYPE_Q8_1, "q8_1", 32, 36, true, false, q8_1, FG_TYPE_Q8_1),                   \
    ROW(FG_TYPE_Q2_K, "q2_k", 256, 84, true, true, q2_k, FG_TYPE_Q8_K),                   \
    ROW(FG_TYPE_Q3_K, "q3_k", 256, 110, true, true, q3_k, FG_TYPE_Q8_K),                  \
    ROW(FG_TYPE_Q4_K, "q4_k", 256, 144, true, true, q4_k, FG_TYPE_Q8_K),                  \
    ROW(FG_TYPE_Q5_K, "q5_k", 256, 176, true, true, q5_k, FG_TYPE_Q8_K),                  \
    ROW(FG_TYPE_Q6_K, "q6_k", 256, 210, true, true, q6_k, FG_TYPE_Q8_K),                  \
    ROW(FG_TYPE_Q8_K, "q8_k", 256, 292, true, false, q8_k, FG_TYPE_Q8_K),                 \
    ROW_NK(FG_TYPE_I8, "i8", 1, 1), ROW_NK(FG_TYPE_I16, "i16", 1, 2),                    \
    ROW_NK(FG_TYPE_I32, "i32", 1, 4),                                                     \
    ROW(FG_TYPE_BF16, "bf16", 1, 2, false, true, bf16, FG_TYPE_BF16),                     \
    ROW(FG_TYPE_MXFP4, "mxfp4", 32, 17, true, true, mxfp4, FG_TYPE_Q8_0)

static const fg_type_traits k_ref_table[FG_TYPE_COUNT] = {ALL_ROWS};

const fg_type_traits *fg_quant_ref_table(void) { return k_ref_table; }
