// cpu_embd.c - the CPU backend's ops for embedding models (issue 14): layernorm, gelu (erf and
// tanh forms), add_rows (position / token-type embedding rows added to the residual) and pool
// (mean / first / last token of each sequence, optional L2 normalisation). Numerics follow
// ggml's CPU ops: layernorm's mean and variance summed in double (ggml_float), the scale
// 1 / sqrtf(var + eps) in f32, then (x - mean) * scale * w + b in f32; gelu in f32 with erff /
// tanhf (erf as a rational approximation within a few ulp of erff); the pooled mean summed in
// double. The reference the GPU is tested against.
// Who calls it: the ops table in cpu_backend.c.
#include "backend/cpu/cpu_internal.h"

#include "base/half.h"
#include "base/status.h"

#include <math.h>
#include <string.h>

#if defined(__AVX2__)
#include <immintrin.h>
#define GELU_AVX2 1
#endif


#define SERIAL_ELEMS 32768 // below this many elements an op runs on the caller alone

static inline int hint_for(int64_t elems) { return elems < SERIAL_ELEMS ? 1 : 0; }

static inline float *row_f32(const fg_tensor *t, int64_t r) {
    return (float *)((char *)t->data + (size_t)r * t->nb[1]);
}

// ---------------------------------------------------------------- layernorm
typedef struct ln_args {
    fg_tensor *dst;
    const fg_tensor *x;
    const float *w, *b; // [n] or NULL
    float eps;
    int64_t n, rows;
} ln_args;

static void ln_work(void *p, int ith, int nth) {
    ln_args *a = p;
    int64_t rb, re;
    fg_cpu_split(a->rows, ith, nth, &rb, &re);
    const int64_t n = a->n;
    for (int64_t r = rb; r < re; r++) {
        const float *x = row_f32(a->x, r);
        float *y = row_f32(a->dst, r);
        double sum = 0.0;
        for (int64_t i = 0; i < n; i++)
            sum += (double)x[i];
        const float mean = (float)(sum / (double)n);
        double sum2 = 0.0;
        for (int64_t i = 0; i < n; i++) {
            const float v = x[i] - mean;
            sum2 += (double)(v * v);
        }
        const float var = (float)(sum2 / (double)n);
        const float scale = 1.0f / sqrtf(var + a->eps);
        for (int64_t i = 0; i < n; i++) { // y may alias x: x[i] is read before y[i] is written
            float v = (x[i] - mean) * scale;
            if (a->w)
                v *= a->w[i];
            if (a->b)
                v += a->b[i];
            y[i] = v;
        }
    }
}

fg_status fg_cpu_layernorm(fg_backend *be, fg_tensor *dst, const fg_tensor *x, const fg_tensor *w,
                           const fg_tensor *b, float eps) {
    fg_cpu *c = fg_cpu_ctx(be);
    ln_args a = {dst, x, w ? (const float *)w->data : NULL, b ? (const float *)b->data : NULL, eps,
                 x->ne[0], x->ne[1]};
    fg_tp_run(c->tp, ln_work, &a, hint_for(a.n * a.rows * 3));
    return FG_OK;
}

// ---------------------------------------------------------------- gelu
#define GELU_SQRT_HALF 0.70710678118654752440f      // 1 / sqrt(2)
#define GELU_SQRT_2_OVER_PI 0.79788456080286535588f // sqrt(2 / pi)
#define GELU_COEF_A 0.044715f

// erf as a rational function of x^2: the float approximation of Eigen's generic_fast_erf_float
// and XLA's ErfImpl32 (the same coefficients), |error| <= 3.2e-7 on [-3, 3] (erff: 5.4e-8),
// without a libm call, so that the GELU loop vectorizes (with erff GELU took ~10% of a BERT
// step). Arguments beyond +-3 (|x| > 4.24 in GELU, rare) take erff, where the tail of
// 1 + erf(x) is small and the approximation's absolute error would be relatively large.
#define ERF_APPROX_MAX 3.0f
static inline float erf_approx(float x) {
    const float x2 = x * x;
    float p = -2.72614225801306e-10f;
    p = p * x2 + 2.77068142495902e-08f;
    p = p * x2 + -2.10102402082508e-06f;
    p = p * x2 + -5.69250639462346e-05f;
    p = p * x2 + -7.34990630326855e-04f;
    p = p * x2 + -2.95459980854025e-03f;
    p = p * x2 + -1.60960333262415e-02f;
    float q = -1.45660718464996e-05f;
    q = q * x2 + -2.13374055278905e-04f;
    q = q * x2 + -1.68282697438203e-03f;
    q = q * x2 + -7.37332916720468e-03f;
    q = q * x2 + -1.42647390514189e-02f;
    return x * p / q;
}

static inline float gelu_erf(float x) { return 0.5f * x * (1.0f + erf_approx(x * GELU_SQRT_HALF)); }

#ifdef GELU_AVX2
// 8 at a time, the same operations in the same order as gelu_erf (multiplies and adds apart,
// no FMA: the scalar code is compiled without contraction), so the results do not depend on
// where a thread's columns start. Far inputs are stored unchanged; returns whether any was.
static inline int gelu_erf8(const float *x, float *y) {
    static const float P[7] = {-2.72614225801306e-10f, 2.77068142495902e-08f, -2.10102402082508e-06f,
                               -5.69250639462346e-05f, -7.34990630326855e-04f, -2.95459980854025e-03f,
                               -1.60960333262415e-02f};
    static const float Q[5] = {-1.45660718464996e-05f, -2.13374055278905e-04f, -1.68282697438203e-03f,
                               -7.37332916720468e-03f, -1.42647390514189e-02f};
    const __m256 v = _mm256_loadu_ps(x), u = _mm256_mul_ps(v, _mm256_set1_ps(GELU_SQRT_HALF));
    const __m256 x2 = _mm256_mul_ps(u, u);
    __m256 p = _mm256_set1_ps(P[0]), q = _mm256_set1_ps(Q[0]);
    for (int k = 1; k < 7; k++)
        p = _mm256_add_ps(_mm256_mul_ps(p, x2), _mm256_set1_ps(P[k]));
    for (int k = 1; k < 5; k++)
        q = _mm256_add_ps(_mm256_mul_ps(q, x2), _mm256_set1_ps(Q[k]));
    const __m256 erf = _mm256_div_ps(_mm256_mul_ps(u, p), q);
    const __m256 g = _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(0.5f), v), _mm256_add_ps(_mm256_set1_ps(1.0f), erf));
    const __m256 lim = _mm256_set1_ps(ERF_APPROX_MAX);
    const __m256 far = _mm256_or_ps(_mm256_cmp_ps(u, lim, _CMP_GT_OQ),
                                    _mm256_cmp_ps(u, _mm256_sub_ps(_mm256_setzero_ps(), lim), _CMP_LT_OQ));
    _mm256_storeu_ps(y, _mm256_blendv_ps(g, v, far));
    return _mm256_movemask_ps(far);
}
#endif
static inline float gelu_tanh(float x) {
    return 0.5f * x * (1.0f + tanhf(GELU_SQRT_2_OVER_PI * x * (1.0f + GELU_COEF_A * x * x)));
}

typedef struct gelu_args {
    fg_tensor *dst;
    const fg_tensor *x;
    fg_gelu_mode mode;
    int64_t n, rows;
} gelu_args;

static void gelu_work(void *p, int ith, int nth) {
    gelu_args *a = p;
    // rows split among the workers; one long row is split by columns
    int64_t rb = 0, re = a->rows, cb = 0, ce = a->n;
    if (a->rows >= nth || a->rows >= 4)
        fg_cpu_split(a->rows, ith, nth, &rb, &re);
    else
        fg_cpu_split(a->n, ith, nth, &cb, &ce);
    for (int64_t r = rb; r < re; r++) {
        const float *x = row_f32(a->x, r);
        float *y = row_f32(a->dst, r);
        if (a->mode == FG_GELU_ERF) {
            // y may alias x: far inputs are kept as they are for the second pass, which finds
            // them again (gelu of an input within the bound is never beyond it: |gelu(v)| <= |v|)
            int tail = 0;
            int64_t i0 = cb;
#ifdef GELU_AVX2
            for (; i0 + 8 <= ce; i0 += 8)
                tail |= gelu_erf8(x + i0, y + i0);
#endif
            for (int64_t i = i0; i < ce; i++) {
                const float v = x[i], u = v * GELU_SQRT_HALF;
                const bool far = u > ERF_APPROX_MAX || u < -ERF_APPROX_MAX;
                tail |= far;
                y[i] = far ? v : gelu_erf(v);
            }
            if (tail)
                for (int64_t i = cb; i < ce; i++) {
                    const float u = y[i] * GELU_SQRT_HALF;
                    if (u > ERF_APPROX_MAX || u < -ERF_APPROX_MAX)
                        y[i] = 0.5f * y[i] * (1.0f + erff(u));
                }
        } else
            for (int64_t i = cb; i < ce; i++)
                y[i] = gelu_tanh(x[i]);
    }
}

fg_status fg_cpu_gelu(fg_backend *be, fg_tensor *dst, const fg_tensor *x, fg_gelu_mode mode) {
    fg_cpu *c = fg_cpu_ctx(be);
    gelu_args a = {dst, x, mode, x->ne[0], x->ne[1]};
    fg_tp_run(c->tp, gelu_work, &a, hint_for(a.n * a.rows * 8));
    return FG_OK;
}

// ---------------------------------------------------------------- add_rows
typedef struct add_rows_args {
    fg_cpu *c;
    fg_tensor *dst;
    const fg_tensor *table;
    fg_rows_index idx;
    int32_t row;
} add_rows_args;

static void add_rows_work(void *p, int ith, int nth) {
    add_rows_args *a = p;
    const fg_step *st = a->c->st;
    const int64_t n = a->table->ne[0];
    int64_t tb, te;
    fg_cpu_split(st->n_tokens, ith, nth, &tb, &te);
    for (int64_t t = tb; t < te; t++) {
        const int32_t r = a->idx == FG_ROWS_POS ? st->pos[t] : a->row;
        const char *src = (const char *)a->table->data + (size_t)r * a->table->nb[1];
        float *d = row_f32(a->dst, t);
        switch (a->table->type) {
        case FG_TYPE_F32: {
            const float *s = (const float *)src;
            for (int64_t i = 0; i < n; i++)
                d[i] += s[i];
            break;
        }
        case FG_TYPE_F16: {
            const fg_f16 *s = (const fg_f16 *)src;
            for (int64_t i = 0; i < n; i++)
                d[i] += fg_f16_to_f32(s[i]);
            break;
        }
        default: { // BF16 (supports() takes these three)
            const uint16_t *s = (const uint16_t *)src;
            for (int64_t i = 0; i < n; i++)
                d[i] += fg_bf16_to_f32(s[i]);
            break;
        }
        }
    }
}

fg_status fg_cpu_add_rows(fg_backend *be, fg_tensor *dst, const fg_tensor *table, fg_rows_index idx,
                          int32_t row) {
    fg_cpu *c = fg_cpu_ctx(be);
    FG_ASSERT(c->st);
    add_rows_args a = {c, dst, table, idx, row};
    fg_tp_run(c->tp, add_rows_work, &a, hint_for((int64_t)c->st->n_tokens * table->ne[0]));
    return FG_OK;
}

// ---------------------------------------------------------------- pool
typedef struct pool_args {
    fg_cpu *c;
    fg_tensor *dst;
    const fg_tensor *x;
    fg_pool_mode mode;
    bool normalize;
} pool_args;

static void pool_work(void *p, int ith, int nth) {
    pool_args *a = p;
    const fg_step *st = a->c->st;
    const int64_t n = a->x->ne[0];
    int64_t sb, se;
    fg_cpu_split(st->n_seqs, ith, nth, &sb, &se);
    for (int64_t s = sb; s < se; s++) {
        const int32_t first = st->seq_first[s], count = st->seq_n_tokens[s];
        float *d = row_f32(a->dst, s);
        if (a->mode == FG_POOL_MEAN) { // columns in chunks, rows read in order
            double acc[256];
            for (int64_t c0 = 0; c0 < n; c0 += 256) {
                const int64_t m = n - c0 < 256 ? n - c0 : 256;
                memset(acc, 0, sizeof acc);
                for (int32_t t = 0; t < count; t++) {
                    const float *xr = row_f32(a->x, first + t) + c0;
                    for (int64_t i = 0; i < m; i++)
                        acc[i] += (double)xr[i];
                }
                for (int64_t i = 0; i < m; i++)
                    d[c0 + i] = (float)(acc[i] / (double)count);
            }
        } else {
            const int32_t t = a->mode == FG_POOL_CLS ? first : first + count - 1;
            memcpy(d, row_f32(a->x, t), (size_t)n * sizeof(float));
        }
        if (a->normalize) { // torch.nn.functional.normalize: x / max(||x||, 1e-12)
            double ss = 0.0;
            for (int64_t i = 0; i < n; i++)
                ss += (double)d[i] * (double)d[i];
            const float norm = (float)sqrt(ss);
            const float inv = 1.0f / (norm > 1e-12f ? norm : 1e-12f);
            for (int64_t i = 0; i < n; i++)
                d[i] *= inv;
        }
    }
}

fg_status fg_cpu_pool(fg_backend *be, fg_tensor *dst, const fg_tensor *x, fg_pool_mode mode, bool normalize) {
    fg_cpu *c = fg_cpu_ctx(be);
    FG_ASSERT(c->st);
    pool_args a = {c, dst, x, mode, normalize};
    fg_tp_run(c->tp, pool_work, &a, hint_for((int64_t)c->st->n_tokens * x->ne[0]));
    return FG_OK;
}
