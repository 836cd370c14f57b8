// cpu_attn.c - causal attention over the paged KV cache, as llama.cpp computes it with flash
// attention off: q rounded to the cache type (F16) before q.k (f32 accumulation), scores
// scaled, softmax in f32 with max subtraction and a double sum, probabilities rounded to F16
// before the weighted sum of V (f32 accumulation); an F32 cache has no roundings. A Q8_0
// cache as llama.cpp's CPU flash attention reads one (a quantized V needs flash attention
// there): q converted to the K type's vec_dot_type, Q8_0 itself (fg_quantize_row: per 32-block
// d = f16(amax / 127), nearest-even quants), q.k by the integer Q8_0 vec_dot (per block the
// int32 sum times d_k * d_q), softmax as above but the probabilities kept in f32, V rows
// dequantized (q * d, exact in f32) and accumulated in f32 (its online softmax is the same
// arithmetic up to f32 rounding). One task per (token, group of heads sharing a kv head): a
// K/V row is loaded once for the group.
#include "backend/cpu/cpu_internal.h"

#include "backend/cpu/cpu_kernels.h"
#include "quant/blocks.h"

#include "base/half.h"
#include "base/status.h"
#include "base/util.h"

#include <math.h>
#include <stdatomic.h>
#include <string.h>

#if defined(__AVX2__) && defined(__F16C__) && defined(__FMA__)
#include <immintrin.h>
#define ATTN_AVX2 1
#endif

#ifdef ATTN_AVX2
static inline float hsum256(__m256 v) {
    __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
    lo = _mm_add_ps(lo, hi);
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
    return _mm_cvtss_f32(lo);
}
#endif

// dot of an f32 vector with an f16 vector, f32 accumulation
static inline float dot_f32_f16(const float *q, const fg_f16 *k, int n) {
    int i = 0;
    float s = 0.0f;
#ifdef ATTN_AVX2
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    for (; i + 16 <= n; i += 16) {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(k + i))), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i + 8),
                             _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(k + i + 8))), a1);
    }
    for (; i + 8 <= n; i += 8)
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(k + i))), a0);
    s = hsum256(_mm256_add_ps(a0, a1));
#endif
    for (; i < n; i++)
        s += q[i] * fg_f16_to_f32(k[i]);
    return s;
}

static inline float dot_f32_f32(const float *q, const float *k, int n) {
    int i = 0;
    float s = 0.0f;
#ifdef ATTN_AVX2
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    for (; i + 16 <= n; i += 16) {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), _mm256_loadu_ps(k + i), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i + 8), _mm256_loadu_ps(k + i + 8), a1);
    }
    for (; i + 8 <= n; i += 8)
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), _mm256_loadu_ps(k + i), a0);
    s = hsum256(_mm256_add_ps(a0, a1));
#endif
    for (; i < n; i++)
        s += q[i] * k[i];
    return s;
}

// out[0..n) += p * v[0..n)
static inline void axpy_f16(float *out, float p, const fg_f16 *v, int n) {
    int i = 0;
#ifdef ATTN_AVX2
    __m256 pp = _mm256_set1_ps(p);
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(out + i, _mm256_fmadd_ps(pp, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(v + i))),
                                                  _mm256_loadu_ps(out + i)));
#endif
    for (; i < n; i++)
        out[i] += p * fg_f16_to_f32(v[i]);
}

static inline void axpy_f32(float *out, float p, const float *v, int n) {
    int i = 0;
#ifdef ATTN_AVX2
    __m256 pp = _mm256_set1_ps(p);
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(out + i, _mm256_fmadd_ps(pp, _mm256_loadu_ps(v + i), _mm256_loadu_ps(out + i)));
#endif
    for (; i < n; i++)
        out[i] += p * v[i];
}

// out[0..n) += p * dequant(v), v n / 32 Q8_0 blocks: each element q * d is exact in f32
static inline void axpy_q8_0(float *out, float p, const fg_block_q8_0 *v, int n) {
    for (int b = 0; b < n / FG_QK8_0; b++) {
        const float d = fg_f16_to_f32(v[b].d);
        float *o = out + (size_t)b * FG_QK8_0;
        int i = 0;
#ifdef ATTN_AVX2
        const __m256 pp = _mm256_set1_ps(p), dd = _mm256_set1_ps(d);
        for (; i + 8 <= FG_QK8_0; i += 8) {
            __m256i q32 = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(v[b].qs + i)));
            __m256 x = _mm256_mul_ps(_mm256_cvtepi32_ps(q32), dd);
            _mm256_storeu_ps(o + i, _mm256_fmadd_ps(pp, x, _mm256_loadu_ps(o + i)));
        }
#endif
        for (; i < FG_QK8_0; i++)
            o[i] += p * ((float)v[b].qs[i] * d);
    }
}

// A head's K/V rows are n_head_kv * head_dim elements apart (often 2 KiB): too sparse for
// the hardware prefetcher, so rows PF_DIST slots ahead are prefetched by hand.
#define PF_DIST 6
static inline void prefetch_row(const char *p, size_t n) {
#if defined(__GNUC__) || defined(__clang__)
    for (size_t i = 0; i < n; i += 64)
        __builtin_prefetch(p + i, 0, 3);
#else
    (void)p;
    (void)n;
#endif
}

// x[i] = f16(x[i]) as f32 (round to nearest even). F16C gives the same values as half.h
// for every input (NaN stays a NaN).
static inline void round_to_f16(float *x, int n) {
    int i = 0;
#ifdef ATTN_AVX2
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(x + i, _mm256_cvtph_ps(_mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT)));
#endif
    for (; i < n; i++)
        x[i] = fg_f16_to_f32(fg_f32_to_f16(x[i]));
}

typedef struct attn_args {
    fg_cpu *c;
    fg_tensor *dst;
    const fg_tensor *q;
    const fg_kv_view *kv;
    int32_t layer, n_head, group; // group: q heads per kv head
    int32_t sub;                  // q heads per task (divides group, <= FG_CPU_ATTN_HEADS)
    float scale;
    bool causal;                  // false: the whole sequence (n_kv), not 0..pos
    int64_t n_tasks;              // n_tokens * n_head / sub
    atomic_long next;
} attn_args;

// Heads h0..h0+nh-1 of token t, all on kv head kvh: each K/V row is loaded once for the nh
// heads. Each head's arithmetic is the same whatever nh is (results do not depend on it).
static void attn_heads(attn_args *a, float *sc0, int64_t t, int h0, int nh) {
    const fg_cpu *c = a->c;
    const fg_kv_view *kv = a->kv;
    const int hd = kv->head_dim, ps = kv->page_size;
    const bool f16 = kv->type == FG_TYPE_F16, q8 = kv->type == FG_TYPE_Q8_0;
    const size_t stride = c->scores_stride;
    const int kvh = h0 / a->group;
    const int32_t n_kv = a->causal ? c->st->pos[t] + 1 : c->st->seq_n_kv[c->st->seq[t]];
    const int32_t *pt = c->st->page_table + (size_t)c->st->seq[t] * c->st->max_pages;
    // bytes of one head's row in a slot (Q8_0: head_dim / 32 blocks)
    const size_t row_bytes = fg_type_row_size_n(kv->type, hd);
    const size_t head_off = (size_t)kvh * row_bytes;
    const char *kbase = (const char *)kv->k.data + (size_t)a->layer * kv->k.nb[3] + head_off;
    const char *vbase = (const char *)kv->v.data + (size_t)a->layer * kv->v.nb[3] + head_off;
    const size_t pnb = kv->k.nb[2], snb = kv->k.nb[1];

    float qf[FG_CPU_ATTN_HEADS][FG_CPU_MAX_HEAD_DIM];
    fg_block_q8_0 qq[FG_CPU_ATTN_HEADS][FG_CPU_MAX_HEAD_DIM / FG_QK8_0]; // q as Q8_0 (a Q8_0 cache)
    fg_vec_dot_fn q8_dot = q8 ? fg_cpu_traits(FG_TYPE_Q8_0, c->use_ref)->vec_dot : NULL;
    float mx[FG_CPU_ATTN_HEADS];
    const float *qrow = (const float *)((const char *)a->q->data + (size_t)t * a->q->nb[1]);
    for (int k = 0; k < nh; k++) {
        const float *qr = qrow + (size_t)(h0 + k) * hd;
        if (q8) {
            fg_cpu_quantize_row(c->use_ref, FG_TYPE_Q8_0, qr, qq[k], hd); // ggml: q to vec_dot_type
        } else {
            memcpy(qf[k], qr, (size_t)hd * sizeof(float));
            if (f16)
                round_to_f16(qf[k], hd); // ggml converts q to the K type
        }
        mx[k] = -INFINITY;
    }
    // scores: scale * q.k
    for (int32_t j0 = 0, pg = 0; j0 < n_kv; j0 += ps, pg++) {
        const char *kp = kbase + (size_t)pt[pg] * pnb;
        int32_t m = FG_MIN(ps, n_kv - j0);
        for (int32_t s = 0; s < m; s++) {
            const void *kr = kp + (size_t)s * snb;
            if (s + PF_DIST < m)
                prefetch_row(kp + (size_t)(s + PF_DIST) * snb, row_bytes);
            for (int k = 0; k < nh; k++) {
                float d;
                if (q8)
                    q8_dot(hd, &d, kr, qq[k]);
                else
                    d = f16 ? dot_f32_f16(qf[k], kr, hd) : dot_f32_f32(qf[k], kr, hd);
                float v = d * a->scale;
                sc0[(size_t)k * stride + j0 + s] = v;
                mx[k] = v > mx[k] ? v : mx[k];
            }
        }
    }
    // softmax (ggml_vec_soft_max_f32: expf in f32, sum in double, then scale by 1/sum); the
    // probabilities are rounded to the V type before the weighted sum, as ggml's mul_mat does
    // (F16; a Q8_0 V keeps them in f32, as its flash attention does)
    for (int k = 0; k < nh; k++) {
        float *sc = sc0 + (size_t)k * stride;
        if (!(mx[k] > -INFINITY)) { // every score -inf (or NaN): attend to nothing, no NaN
            memset(sc, 0, (size_t)n_kv * sizeof(float));
            continue;
        }
        double sum = 0.0;
        for (int32_t j = 0; j < n_kv; j++) {
            float e = expf(sc[j] - mx[k]);
            sc[j] = e;
            sum += (double)e;
        }
        const float inv = sum > 0.0 ? (float)(1.0 / sum) : 0.0f;
        for (int32_t j = 0; j < n_kv; j++)
            sc[j] *= inv;
        if (f16)
            round_to_f16(sc, n_kv);
    }
    // weighted sum of V, accumulated in place in dst (f32)
    float *drow = (float *)((char *)a->dst->data + (size_t)t * a->dst->nb[1]);
    float *out[FG_CPU_ATTN_HEADS];
    for (int k = 0; k < nh; k++) {
        out[k] = drow + (size_t)(h0 + k) * hd;
        memset(out[k], 0, (size_t)hd * sizeof(float)); // q of these heads is in qf already
    }
    for (int32_t j0 = 0, pg = 0; j0 < n_kv; j0 += ps, pg++) {
        const char *vp = vbase + (size_t)pt[pg] * pnb;
        int32_t m = FG_MIN(ps, n_kv - j0);
        for (int32_t s = 0; s < m; s++) {
            const void *vr = vp + (size_t)s * snb;
            if (s + PF_DIST < m)
                prefetch_row(vp + (size_t)(s + PF_DIST) * snb, row_bytes);
            for (int k = 0; k < nh; k++) {
                float p = sc0[(size_t)k * stride + j0 + s];
                if (f16)
                    axpy_f16(out[k], p, vr, hd);
                else if (q8)
                    axpy_q8_0(out[k], p, vr, hd);
                else
                    axpy_f32(out[k], p, vr, hd);
            }
        }
    }
}

static void attn_work(void *p, int ith, int nth) {
    attn_args *a = p;
    float *sc = a->c->scores + (size_t)ith * FG_CPU_ATTN_HEADS * a->c->scores_stride;
    const int64_t per_token = a->n_head / a->sub;
    for (;;) {
        int64_t i = atomic_fetch_add_explicit(&a->next, 1, memory_order_relaxed);
        if (i >= a->n_tasks)
            break;
        attn_heads(a, sc, i / per_token, (int)(i % per_token) * a->sub, a->sub);
    }
    (void)nth;
}

fg_status fg_cpu_attention(fg_backend *be, fg_tensor *dst, const fg_tensor *q, const fg_kv_view *kv,
                           const fg_attn_params *p) {
    fg_cpu *c = fg_cpu_ctx(be);
    FG_ASSERT(c->st && kv->head_dim <= FG_CPU_MAX_HEAD_DIM && (size_t)c->max_n_kv <= c->scores_stride);
    const int32_t layer = p->layer, n_head = p->n_head;
    const float scale = p->scale;
    attn_args a;
    memset(&a, 0, sizeof(a));
    a.c = c;
    a.dst = dst;
    a.q = q;
    a.kv = kv;
    a.layer = layer;
    a.n_head = n_head;
    a.group = n_head / kv->n_head_kv;
    a.scale = scale;
    a.causal = p->causal;
    // heads per task: the whole GQA group (K/V rows loaded once) unless that leaves too few
    // tasks for the threads; always a divisor of the group, at most FG_CPU_ATTN_HEADS
    int32_t sub = 1;
    for (int32_t g = 1; g <= a.group && g <= FG_CPU_ATTN_HEADS; g++)
        if (a.group % g == 0 && (int64_t)c->st->n_tokens * (n_head / g) >= 2 * (int64_t)c->n_threads)
            sub = g;
    a.sub = sub;
    a.n_tasks = (int64_t)c->st->n_tokens * (n_head / sub);
    atomic_init(&a.next, 0);
    int64_t work = (int64_t)c->st->n_tokens * n_head * (c->max_n_kv + 1) * kv->head_dim;
    fg_tp_run(c->tp, attn_work, &a, work < 32768 ? 1 : 0);
    return FG_OK;
}
