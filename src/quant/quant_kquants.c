// quant_kquants.c - scalar reference kernels of the K-quants (256-element super-blocks):
// Q2_K, Q3_K, Q4_K, Q5_K, Q6_K (dequantize, a simple least-squares quantizer for `forge synth`,
// vec_dot against Q8_K with integer sums per sub-block) and Q8_K (bit-identical to ggml's
// quantize_row_q8_K_ref). The quantizers are not ggml's (no importance search); the layouts are.
// Who calls it: the traits table (quant_ref.c).
#include "quant/quant_internal.h"

#include <math.h>
#include <string.h>

// ---------------------------------------------------------------- unpacking to integers
// Each fills q[256] with the integer quant of every element (the value the dot multiplies).
// Q2_K/Q3_K: element 128n + 32j + l takes bits 2j..2j+1 of qs[32n + l] (and Q3_K bit 4n + j
// of hmask[l] as its high bit).
static void q2_k_unpack(const fg_block_q2_k *b, int8_t *q) {
    for (int n = 0; n < 2; n++)
        for (int j = 0; j < 4; j++)
            for (int l = 0; l < 32; l++)
                q[128 * n + 32 * j + l] = (int8_t)((b->qs[32 * n + l] >> (2 * j)) & 3);
}
static void q3_k_unpack(const fg_block_q3_k *b, int8_t *q) {
    for (int n = 0; n < 2; n++)
        for (int j = 0; j < 4; j++)
            for (int l = 0; l < 32; l++) {
                int lo = (b->qs[32 * n + l] >> (2 * j)) & 3;
                int hi = (b->hmask[l] >> (4 * n + j)) & 1;
                q[128 * n + 32 * j + l] = (int8_t)(lo - (hi ? 0 : 4));
            }
}
static void q4_k_unpack(const fg_block_q4_k *b, int8_t *q) {
    for (int c = 0; c < 4; c++)
        for (int l = 0; l < 32; l++) {
            q[64 * c + l] = (int8_t)(b->qs[32 * c + l] & 0xF);
            q[64 * c + 32 + l] = (int8_t)(b->qs[32 * c + l] >> 4);
        }
}
static void q5_k_unpack(const fg_block_q5_k *b, int8_t *q) {
    for (int c = 0; c < 4; c++)
        for (int l = 0; l < 32; l++) {
            int h0 = (b->qh[l] >> (2 * c)) & 1, h1 = (b->qh[l] >> (2 * c + 1)) & 1;
            q[64 * c + l] = (int8_t)((b->qs[32 * c + l] & 0xF) | (h0 << 4));
            q[64 * c + 32 + l] = (int8_t)((b->qs[32 * c + l] >> 4) | (h1 << 4));
        }
}
static void q6_k_unpack(const fg_block_q6_k *b, int8_t *q) {
    for (int n = 0; n < 2; n++) {
        const uint8_t *ql = b->ql + 64 * n, *qh = b->qh + 32 * n;
        int8_t *o = q + 128 * n;
        for (int l = 0; l < 32; l++) {
            o[l] = (int8_t)(((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32);
            o[l + 32] = (int8_t)(((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32);
            o[l + 64] = (int8_t)(((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32);
            o[l + 96] = (int8_t)(((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32);
        }
    }
}

// ---------------------------------------------------------------- dequantize
void fg_dequant_q2_k(const void *src, float *dst, int64_t n) {
    const fg_block_q2_k *b = src;
    int8_t q[FG_QK_K];
    for (int64_t i = 0; i < n / FG_QK_K; i++, dst += FG_QK_K) {
        q2_k_unpack(&b[i], q);
        float d = fg_f16_to_f32(b[i].d), dmin = fg_f16_to_f32(b[i].dmin);
        for (int e = 0; e < FG_QK_K; e++) {
            uint8_t sc = b[i].scales[e / 16];
            float dl = d * (float)(sc & 0xF), ml = dmin * (float)(sc >> 4);
            dst[e] = dl * (float)q[e] - ml;
        }
    }
}
void fg_dequant_q3_k(const void *src, float *dst, int64_t n) {
    const fg_block_q3_k *b = src;
    int8_t q[FG_QK_K];
    uint8_t sc[16];
    for (int64_t i = 0; i < n / FG_QK_K; i++, dst += FG_QK_K) {
        q3_k_unpack(&b[i], q);
        fg_q3_k_scales(b[i].scales, sc);
        float d = fg_f16_to_f32(b[i].d);
        for (int e = 0; e < FG_QK_K; e++)
            dst[e] = (d * (float)(sc[e / 16] - 32)) * (float)q[e];
    }
}
void fg_dequant_q4_k(const void *src, float *dst, int64_t n) {
    const fg_block_q4_k *b = src;
    int8_t q[FG_QK_K];
    for (int64_t i = 0; i < n / FG_QK_K; i++, dst += FG_QK_K) {
        q4_k_unpack(&b[i], q);
        float d = fg_f16_to_f32(b[i].d), dmin = fg_f16_to_f32(b[i].dmin);
        for (int j = 0; j < 8; j++) {
            uint8_t sc, m;
            fg_get_scale_min_k4(j, b[i].scales, &sc, &m);
            float d1 = d * (float)sc, m1 = dmin * (float)m;
            for (int l = 0; l < 32; l++)
                dst[32 * j + l] = d1 * (float)q[32 * j + l] - m1;
        }
    }
}
void fg_dequant_q5_k(const void *src, float *dst, int64_t n) {
    const fg_block_q5_k *b = src;
    int8_t q[FG_QK_K];
    for (int64_t i = 0; i < n / FG_QK_K; i++, dst += FG_QK_K) {
        q5_k_unpack(&b[i], q);
        float d = fg_f16_to_f32(b[i].d), dmin = fg_f16_to_f32(b[i].dmin);
        for (int j = 0; j < 8; j++) {
            uint8_t sc, m;
            fg_get_scale_min_k4(j, b[i].scales, &sc, &m);
            float d1 = d * (float)sc, m1 = dmin * (float)m;
            for (int l = 0; l < 32; l++)
                dst[32 * j + l] = d1 * (float)q[32 * j + l] - m1;
        }
    }
}
void fg_dequant_q6_k(const void *src, float *dst, int64_t n) {
    const fg_block_q6_k *b = src;
    int8_t q[FG_QK_K];
    for (int64_t i = 0; i < n / FG_QK_K; i++, dst += FG_QK_K) {
        q6_k_unpack(&b[i], q);
        float d = fg_f16_to_f32(b[i].d);
        for (int e = 0; e < FG_QK_K; e++)
            dst[e] = d * (float)b[i].scales[e / 16] * (float)q[e];
    }
}
void fg_dequant_q8_k(const void *src, float *dst, int64_t n) {
    const fg_block_q8_k *b = src;
    for (int64_t i = 0; i < n / FG_QK_K; i++, dst += FG_QK_K)
        for (int e = 0; e < FG_QK_K; e++)
            dst[e] = b[i].d * (float)b[i].qs[e];
}

// ---------------------------------------------------------------- quantizer helpers
// Symmetric fit of x[0..n) to scale * L, L in [-nmax, nmax-1]: a few candidate inverse scales,
// each refined by least squares; returns the scale with the least squared error (0 if x == 0).
static float fit_sym(const float *x, int n, int nmax, int8_t *L) {
    float amax = 0.0f, max = 0.0f;
    for (int i = 0; i < n; i++)
        if (fabsf(x[i]) > amax) {
            amax = fabsf(x[i]);
            max = x[i];
        }
    if (amax < 1e-30f) {
        memset(L, 0, (size_t)n);
        return 0.0f;
    }
    float best_scale = 0.0f, best_err = INFINITY;
    for (int k = -6; k <= 6; k++) {
        float iscale = -((float)nmax + 0.1f * (float)k) / max;
        float sumlx = 0.0f, suml2 = 0.0f;
        int8_t Lt[32];
        for (int i = 0; i < n; i++) {
            int l = fg_nearest_int(iscale * x[i]);
            l = l < -nmax ? -nmax : l > nmax - 1 ? nmax - 1 : l;
            Lt[i] = (int8_t)l;
            sumlx += x[i] * (float)l;
            suml2 += (float)(l * l);
        }
        float scale = suml2 > 0.0f ? sumlx / suml2 : 0.0f;
        float err = 0.0f;
        for (int i = 0; i < n; i++) {
            float r = x[i] - scale * (float)Lt[i];
            err += r * r;
        }
        if (err < best_err) {
            best_err = err;
            best_scale = scale;
            memcpy(L, Lt, (size_t)n);
        }
    }
    return best_scale;
}

// Asymmetric fit x ~ scale * L - min, L in [0, nmax], min >= 0, scale >= 0; returns scale.
static float fit_asym(const float *x, int n, int nmax, float *the_min) {
    float lo = x[0], hi = x[0];
    for (int i = 1; i < n; i++) {
        lo = x[i] < lo ? x[i] : lo;
        hi = x[i] > hi ? x[i] : hi;
    }
    if (lo > 0.0f)
        lo = 0.0f;
    if (hi <= lo) {
        *the_min = -lo;
        return 0.0f;
    }
    float best_scale = (hi - lo) / (float)nmax, best_b = lo, best_err = INFINITY;
    for (int k = -4; k <= 4; k++) {
        float scale = (hi - lo) / ((float)nmax + 0.1f * (float)k), b = lo;
        for (int it = 0; it < 3; it++) {
            // assign levels, then least squares for (scale, b) with b <= 0
            double sl = 0, sl2 = 0, sx = 0, slx = 0;
            for (int i = 0; i < n; i++) {
                int l = fg_nearest_int((x[i] - b) / scale);
                l = l < 0 ? 0 : l > nmax ? nmax : l;
                sl += l;
                sl2 += (double)l * l;
                sx += x[i];
                slx += (double)l * x[i];
            }
            double det = n * sl2 - sl * sl;
            if (det <= 0)
                break;
            double a = (n * slx - sl * sx) / det, bb = (sl2 * sx - sl * slx) / det;
            if (bb > 0) {
                bb = 0;
                a = sl2 > 0 ? slx / sl2 : 0;
            }
            if (a <= 0)
                break;
            scale = (float)a;
            b = (float)bb;
        }
        float err = 0.0f;
        for (int i = 0; i < n; i++) {
            int l = fg_nearest_int((x[i] - b) / scale);
            l = l < 0 ? 0 : l > nmax ? nmax : l;
            float r = x[i] - (scale * (float)l + b);
            err += r * r;
        }
        if (err < best_err) {
            best_err = err;
            best_scale = scale;
            best_b = b;
        }
    }
    *the_min = -best_b;
    return best_scale;
}

static int clampi(int v, int lo, int hi) { return v < lo ? lo : v > hi ? hi : v; }

// Scales and mins of nsub sub-blocks -> super-block d/dmin and nbits-bit integers.
static void quant_scales(const float *scales, const float *mins, int nsub, int maxq, float *d,
                         float *dmin, uint8_t *qsc, uint8_t *qm) {
    float ms = 0.0f, mm = 0.0f;
    for (int j = 0; j < nsub; j++) {
        ms = scales[j] > ms ? scales[j] : ms;
        mm = mins[j] > mm ? mins[j] : mm;
    }
    *d = fg_f16_to_f32(fg_f32_to_f16(ms / (float)maxq));
    *dmin = fg_f16_to_f32(fg_f32_to_f16(mm / (float)maxq));
    for (int j = 0; j < nsub; j++) {
        qsc[j] = (uint8_t)(*d > 0 ? clampi(fg_nearest_int(scales[j] / *d), 0, maxq) : 0);
        qm[j] = (uint8_t)(*dmin > 0 ? clampi(fg_nearest_int(mins[j] / *dmin), 0, maxq) : 0);
    }
}

// Levels of x for a given dequantized (scale, min): L = round((x + min) / scale) in [0, nmax].
static void levels_asym(const float *x, int n, float scale, float min, int nmax, uint8_t *L) {
    for (int i = 0; i < n; i++)
        L[i] = (uint8_t)(scale > 0 ? clampi(fg_nearest_int((x[i] + min) / scale), 0, nmax) : 0);
}

// ---------------------------------------------------------------- quantize
void fg_quant_q2_k(const float *src, void *dst, int64_t n) {
    fg_block_q2_k *b = dst;
    for (int64_t i = 0; i < n / FG_QK_K; i++, src += FG_QK_K) {
        float sc[16], mn[16], d, dmin;
        uint8_t qsc[16], qm[16], L[FG_QK_K];
        for (int j = 0; j < 16; j++)
            sc[j] = fit_asym(src + 16 * j, 16, 3, &mn[j]);
        quant_scales(sc, mn, 16, 15, &d, &dmin, qsc, qm);
        b[i].d = fg_f32_to_f16(d);
        b[i].dmin = fg_f32_to_f16(dmin);
        for (int j = 0; j < 16; j++) {
            b[i].scales[j] = (uint8_t)(qsc[j] | (qm[j] << 4));
            levels_asym(src + 16 * j, 16, d * (float)qsc[j], dmin * (float)qm[j], 3, L + 16 * j);
        }
        memset(b[i].qs, 0, sizeof(b[i].qs));
        for (int e = 0; e < FG_QK_K; e++) {
            int nn = e / 128, r = e % 128, j = r / 32, h = (r % 32) / 16, l = r % 16;
            b[i].qs[32 * nn + 16 * h + l] |= (uint8_t)(L[e] << (2 * j));
        }
    }
}

void fg_quant_q3_k(const float *src, void *dst, int64_t n) {
    fg_block_q3_k *b = dst;
    for (int64_t i = 0; i < n / FG_QK_K; i++, src += FG_QK_K) {
        float sc[16], amax = 0.0f, max = 0.0f;
        int8_t L[FG_QK_K];
        for (int j = 0; j < 16; j++) {
            sc[j] = fit_sym(src + 16 * j, 16, 4, L + 16 * j);
            if (fabsf(sc[j]) > amax) {
                amax = fabsf(sc[j]);
                max = sc[j];
            }
        }
        memset(b[i].scales, 0, 12);
        memset(b[i].hmask, 0, sizeof(b[i].hmask));
        memset(b[i].qs, 0, sizeof(b[i].qs));
        float d = 0.0f;
        if (amax > 0.0f) {
            float iscale = -32.0f / max;
            d = fg_f16_to_f32(fg_f32_to_f16(1.0f / iscale));
        }
        b[i].d = fg_f32_to_f16(d);
        for (int j = 0; j < 16; j++) {
            int l = d != 0.0f ? clampi(fg_nearest_int(sc[j] / d), -32, 31) : 0;
            int u = l + 32;
            if (j < 8)
                b[i].scales[j] |= (uint8_t)(u & 0xF);
            else
                b[i].scales[j - 8] |= (uint8_t)((u & 0xF) << 4);
            b[i].scales[8 + (j & 3)] |= (uint8_t)((u >> 4) << (2 * (j >> 2)));
            float dl = d * (float)l;
            for (int k = 0; k < 16; k++) // requantize with the stored scale
                L[16 * j + k] = (int8_t)(dl != 0.0f ? clampi(fg_nearest_int(src[16 * j + k] / dl), -4, 3) : 0);
        }
        for (int e = 0; e < FG_QK_K; e++) {
            int nn = e / 128, r = e % 128, j = r / 32, h = (r % 32) / 16, l = r % 16;
            int u = L[e] + 4;
            b[i].qs[32 * nn + 16 * h + l] |= (uint8_t)((u & 3) << (2 * j));
            if (u & 4)
                b[i].hmask[16 * h + l] |= (uint8_t)(1u << (4 * nn + j));
        }
    }
}

// Q4_K and Q5_K share the scale packing: 8 x (6-bit scale, 6-bit min) in 12 bytes.
static void pack_scales_k4(const uint8_t *sc, const uint8_t *m, uint8_t *q) {
    for (int j = 0; j < 4; j++) {
        q[j] = (uint8_t)(sc[j] | ((sc[j + 4] >> 4) << 6));
        q[j + 4] = (uint8_t)(m[j] | ((m[j + 4] >> 4) << 6));
        q[j + 8] = (uint8_t)((sc[j + 4] & 0xF) | ((m[j + 4] & 0xF) << 4));
    }
}

static void quant_k4_common(const float *x, int nmax, fg_f16 *hd, fg_f16 *hdmin, uint8_t *scales,
                            uint8_t *L) {
    float sc[8], mn[8], d, dmin;
    uint8_t qsc[8], qm[8];
    for (int j = 0; j < 8; j++)
        sc[j] = fit_asym(x + 32 * j, 32, nmax, &mn[j]);
    quant_scales(sc, mn, 8, 63, &d, &dmin, qsc, qm);
    *hd = fg_f32_to_f16(d);
    *hdmin = fg_f32_to_f16(dmin);
    pack_scales_k4(qsc, qm, scales);
    for (int j = 0; j < 8; j++)
        levels_asym(x + 32 * j, 32, d * (float)qsc[j], dmin * (float)qm[j], nmax, L + 32 * j);
}

void fg_quant_q4_k(const float *src, void *dst, int64_t n) {
    fg_block_q4_k *b = dst;
    uint8_t L[FG_QK_K];
    for (int64_t i = 0; i < n / FG_QK_K; i++, src += FG_QK_K) {
        quant_k4_common(src, 15, &b[i].d, &b[i].dmin, b[i].scales, L);
        for (int c = 0; c < 4; c++)
            for (int l = 0; l < 32; l++)
                b[i].qs[32 * c + l] = (uint8_t)(L[64 * c + l] | (L[64 * c + 32 + l] << 4));
    }
}

void fg_quant_q5_k(const float *src, void *dst, int64_t n) {
    fg_block_q5_k *b = dst;
    uint8_t L[FG_QK_K];
    for (int64_t i = 0; i < n / FG_QK_K; i++, src += FG_QK_K) {
        quant_k4_common(src, 31, &b[i].d, &b[i].dmin, b[i].scales, L);
        memset(b[i].qh, 0, sizeof(b[i].qh));
        for (int c = 0; c < 4; c++)
            for (int l = 0; l < 32; l++) {
                int a = L[64 * c + l], h = L[64 * c + 32 + l];
                b[i].qs[32 * c + l] = (uint8_t)((a & 0xF) | ((h & 0xF) << 4));
                b[i].qh[l] |= (uint8_t)(((a >> 4) << (2 * c)) | ((h >> 4) << (2 * c + 1)));
            }
    }
}

void fg_quant_q6_k(const float *src, void *dst, int64_t n) {
    fg_block_q6_k *b = dst;
    for (int64_t i = 0; i < n / FG_QK_K; i++, src += FG_QK_K) {
        float sc[16], amax = 0.0f, max = 0.0f;
        int8_t L[FG_QK_K];
        for (int j = 0; j < 16; j++) {
            sc[j] = fit_sym(src + 16 * j, 16, 32, L + 16 * j);
            if (fabsf(sc[j]) > amax) {
                amax = fabsf(sc[j]);
                max = sc[j];
            }
        }
        float d = amax > 0.0f ? fg_f16_to_f32(fg_f32_to_f16(max / -128.0f)) : 0.0f;
        b[i].d = fg_f32_to_f16(d);
        for (int j = 0; j < 16; j++) {
            int l = d != 0.0f ? clampi(fg_nearest_int(sc[j] / d), -128, 127) : 0;
            b[i].scales[j] = (int8_t)l;
            float dl = d * (float)l;
            for (int k = 0; k < 16; k++)
                L[16 * j + k] = (int8_t)(dl != 0.0f ? clampi(fg_nearest_int(src[16 * j + k] / dl), -32, 31) : 0);
        }
        memset(b[i].qh, 0, sizeof(b[i].qh));
        for (int nn = 0; nn < 2; nn++) {
            uint8_t *ql = b[i].ql + 64 * nn, *qh = b[i].qh + 32 * nn;
            const int8_t *o = L + 128 * nn;
            for (int l = 0; l < 32; l++) {
                int q1 = o[l] + 32, q2 = o[l + 32] + 32, q3 = o[l + 64] + 32, q4 = o[l + 96] + 32;
                ql[l] = (uint8_t)((q1 & 0xF) | ((q3 & 0xF) << 4));
                ql[l + 32] = (uint8_t)((q2 & 0xF) | ((q4 & 0xF) << 4));
                qh[l] = (uint8_t)((q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6));
            }
        }
    }
}

// ggml's quantize_row_q8_K_ref: iscale = -127 / (the element of largest magnitude),
// q = min(127, nearest_int(iscale * x)), d = 1 / iscale, bsums per 16.
void fg_quant_q8_k(const float *src, void *dst, int64_t n) {
    fg_block_q8_k *b = dst;
    for (int64_t i = 0; i < n / FG_QK_K; i++, src += FG_QK_K) {
        float max = 0.0f, amax = 0.0f;
        for (int j = 0; j < FG_QK_K; j++) {
            float ax = fabsf(src[j]);
            if (ax > amax) {
                amax = ax;
                max = src[j];
            }
        }
        if (amax == 0.0f) {
            b[i].d = 0.0f;
            memset(b[i].qs, 0, sizeof(b[i].qs));
            memset(b[i].bsums, 0, sizeof(b[i].bsums));
            continue;
        }
        const float iscale = -127.0f / max;
        for (int j = 0; j < FG_QK_K; j++) {
            int v = fg_nearest_int(iscale * src[j]);
            b[i].qs[j] = (int8_t)(v < 127 ? v : 127);
        }
        for (int j = 0; j < FG_QK_K / 16; j++) {
            int sum = 0;
            for (int k = 0; k < 16; k++)
                sum += b[i].qs[16 * j + k];
            b[i].bsums[j] = (int16_t)sum;
        }
        b[i].d = 1.0f / iscale;
    }
}

// ---------------------------------------------------------------- vec_dot (x . Q8_K)
void fg_vec_dot_q2_k(int64_t n, float *s, const void *x, const void *y) {
    const fg_block_q2_k *a = x;
    const fg_block_q8_k *b = y;
    int8_t q[FG_QK_K];
    float sum = 0.0f;
    for (int64_t i = 0; i < n / FG_QK_K; i++) {
        q2_k_unpack(&a[i], q);
        int isum = 0, summ = 0;
        for (int j = 0; j < 16; j++) {
            int sub = 0;
            for (int k = 0; k < 16; k++)
                sub += q[16 * j + k] * b[i].qs[16 * j + k];
            isum += (a[i].scales[j] & 0xF) * sub;
            summ += (a[i].scales[j] >> 4) * b[i].bsums[j];
        }
        float dall = b[i].d * fg_f16_to_f32(a[i].d), dmin = b[i].d * fg_f16_to_f32(a[i].dmin);
        sum += dall * (float)isum - dmin * (float)summ;
    }
    *s = sum;
}
void fg_vec_dot_q3_k(int64_t n, float *s, const void *x, const void *y) {
    const fg_block_q3_k *a = x;
    const fg_block_q8_k *b = y;
    int8_t q[FG_QK_K];
    uint8_t sc[16];
    float sum = 0.0f;
    for (int64_t i = 0; i < n / FG_QK_K; i++) {
        q3_k_unpack(&a[i], q);
        fg_q3_k_scales(a[i].scales, sc);
        int isum = 0;
        for (int j = 0; j < 16; j++) {
            int sub = 0;
            for (int k = 0; k < 16; k++)
                sub += q[16 * j + k] * b[i].qs[16 * j + k];
            isum += (sc[j] - 32) * sub;
        }
        sum += (fg_f16_to_f32(a[i].d) * b[i].d) * (float)isum;
    }
    *s = sum;
}
// Q4_K / Q5_K: sum over 8 sub-blocks of scale * dot, minus the mins times the Q8_K bsums.
static float dot_k4_block(const int8_t *q, const uint8_t *scales, fg_f16 hd, fg_f16 hdmin,
                          const fg_block_q8_k *b) {
    int isum = 0, summ = 0;
    for (int j = 0; j < 8; j++) {
        uint8_t sc, m;
        fg_get_scale_min_k4(j, scales, &sc, &m);
        int sub = 0;
        for (int k = 0; k < 32; k++)
            sub += q[32 * j + k] * b->qs[32 * j + k];
        isum += sc * sub;
        summ += m * (b->bsums[2 * j] + b->bsums[2 * j + 1]);
    }
    float d = fg_f16_to_f32(hd) * b->d, dmin = fg_f16_to_f32(hdmin) * b->d;
    return d * (float)isum - dmin * (float)summ;
}
void fg_vec_dot_q4_k(int64_t n, float *s, const void *x, const void *y) {
    const fg_block_q4_k *a = x;
    const fg_block_q8_k *b = y;
    int8_t q[FG_QK_K];
    float sum = 0.0f;
    for (int64_t i = 0; i < n / FG_QK_K; i++) {
        q4_k_unpack(&a[i], q);
        sum += dot_k4_block(q, a[i].scales, a[i].d, a[i].dmin, &b[i]);
    }
    *s = sum;
}
void fg_vec_dot_q5_k(int64_t n, float *s, const void *x, const void *y) {
    const fg_block_q5_k *a = x;
    const fg_block_q8_k *b = y;
    int8_t q[FG_QK_K];
    float sum = 0.0f;
    for (int64_t i = 0; i < n / FG_QK_K; i++) {
        q5_k_unpack(&a[i], q);
        sum += dot_k4_block(q, a[i].scales, a[i].d, a[i].dmin, &b[i]);
    }
    *s = sum;
}
void fg_vec_dot_q6_k(int64_t n, float *s, const void *x, const void *y) {
    const fg_block_q6_k *a = x;
    const fg_block_q8_k *b = y;
    int8_t q[FG_QK_K];
    float sum = 0.0f;
    for (int64_t i = 0; i < n / FG_QK_K; i++) {
        q6_k_unpack(&a[i], q);
        int isum = 0;
        for (int j = 0; j < 16; j++) {
            int sub = 0;
            for (int k = 0; k < 16; k++)
                sub += q[16 * j + k] * b[i].qs[16 * j + k];
            isum += a[i].scales[j] * sub;
        }
        sum += (fg_f16_to_f32(a[i].d) * b[i].d) * (float)isum;
    }
    *s = sum;
}
void fg_vec_dot_q8_k(int64_t n, float *s, const void *x, const void *y) {
    const fg_block_q8_k *a = x, *b = y;
    float sum = 0.0f;
    for (int64_t i = 0; i < n / FG_QK_K; i++) {
        int isum = 0;
        for (int e = 0; e < FG_QK_K; e++)
            isum += a[i].qs[e] * b[i].qs[e];
        sum += (a[i].d * b[i].d) * (float)isum;
    }
    *s = sum;
}
