// cpu_ops.c - the CPU backend's row-wise ops: get_rows, gather_out, rmsnorm, convert, add,
// swiglu, rope, kv_store, kv_copy_page, check_finite. Numerics follow ggml's CPU ops (rmsnorm sum in double,
// silu in f32, rope cos/sin in f32 with theta *= theta_scale per pair, F16 rounding to
// nearest even). Matmul and attention are in their own files. Who calls it: the ops table.
#include "backend/cpu/cpu_internal.h"

#include "base/half.h"
#include "base/status.h"
#include "backend/cpu/cpu_kernels.h"

#include <math.h>
#include <string.h>

#define SERIAL_ELEMS 32768 // below this many elements an op runs on the caller alone

static inline int hint_for(int64_t elems) { return elems < SERIAL_ELEMS ? 1 : 0; }

static inline float *row_f32(const fg_tensor *t, int64_t r) {
    return (float *)((char *)t->data + (size_t)r * t->nb[1]);
}

// ---------------------------------------------------------------- get_rows
typedef struct get_rows_args {
    fg_cpu *c;
    fg_tensor *dst;
    const fg_tensor *table;
    fg_to_float_fn to_float;
} get_rows_args;

static void get_rows_work(void *p, int ith, int nth) {
    get_rows_args *a = p;
    int64_t b, e;
    fg_cpu_split(a->c->st->n_tokens, ith, nth, &b, &e);
    for (int64_t t = b; t < e; t++) {
        const char *src = (const char *)a->table->data + (size_t)a->c->st->tokens[t] * a->table->nb[1];
        a->to_float(src, row_f32(a->dst, t), a->table->ne[0]);
    }
}

fg_status fg_cpu_get_rows(fg_backend *be, fg_tensor *dst, const fg_tensor *table) {
    fg_cpu *c = fg_cpu_ctx(be);
    const fg_type_traits *tr = fg_type_traits_get(table->type);
    FG_ASSERT(c->st && tr && tr->to_float);
    get_rows_args a = {c, dst, table, tr->to_float};
    fg_tp_run(c->tp, get_rows_work, &a, hint_for((int64_t)c->st->n_tokens * table->ne[0]));
    return FG_OK;
}

// ---------------------------------------------------------------- gather_out
fg_status fg_cpu_gather_out(fg_backend *be, fg_tensor *dst, const fg_tensor *src) {
    fg_cpu *c = fg_cpu_ctx(be);
    FG_ASSERT(c->st);
    int64_t n = src->ne[0];
    // in order: out_rows ascend and i <= out_rows[i], so in place (dst aliasing src) is safe
    for (int32_t i = 0; i < c->st->n_out; i++) {
        float *d = row_f32(dst, i);
        const float *s = row_f32(src, c->st->out_rows[i]);
        if (d != s)
            memmove(d, s, (size_t)n * sizeof(float));
    }
    return FG_OK;
}

// ---------------------------------------------------------------- rmsnorm
typedef struct rmsnorm_args {
    fg_tensor *dst;
    const fg_tensor *x;
    const float *w; // [n] or NULL
    float eps;
    int64_t n, rows, ne1; // rows = ne1 * ne2 of a 3-D view
} rmsnorm_args;

// Row r of a [ne2][ne1][n] view.
static inline float *row3_f32(const fg_tensor *t, int64_t r, int64_t ne1) {
    return (float *)((char *)t->data + (size_t)(r / ne1) * t->nb[2] + (size_t)(r % ne1) * t->nb[1]);
}

static void rmsnorm_work(void *p, int ith, int nth) {
    rmsnorm_args *a = p;
    int64_t b, e;
    fg_cpu_split(a->rows, ith, nth, &b, &e);
    const int64_t n = a->n;
    for (int64_t r = b; r < e; r++) {
        const float *x = row3_f32(a->x, r, a->ne1);
        float *y = row3_f32(a->dst, r, a->ne1);
        double sum = 0.0; // ggml_float
        for (int64_t i = 0; i < n; i++)
            sum += (double)(x[i] * x[i]);
        const float mean = (float)(sum / (double)n);
        const float scale = 1.0f / sqrtf(mean + a->eps);
        if (a->w) {
            for (int64_t i = 0; i < n; i++)
                y[i] = (x[i] * scale) * a->w[i]; // ggml: rms_norm, then mul
        } else {
            for (int64_t i = 0; i < n; i++)
                y[i] = x[i] * scale;
        }
    }
}

fg_status fg_cpu_rmsnorm(fg_backend *be, fg_tensor *dst, const fg_tensor *x, const fg_tensor *w,
                         float eps) {
    fg_cpu *c = fg_cpu_ctx(be);
    int64_t n = x->ne[0], rows = x->ne[1] * x->ne[2];
    rmsnorm_args a = {dst, x, w ? (const float *)w->data : NULL, eps, n, rows, x->ne[1]};
    fg_tp_run(c->tp, rmsnorm_work, &a, hint_for(n * rows));
    return FG_OK;
}

// ---------------------------------------------------------------- convert
typedef struct convert_args {
    fg_cpu *c;
    fg_tensor *dst;
    const fg_tensor *x;
} convert_args;

static void convert_work(void *p, int ith, int nth) {
    convert_args *a = p;
    int64_t b, e;
    fg_cpu_split(a->x->ne[1], ith, nth, &b, &e);
    for (int64_t r = b; r < e; r++)
        fg_cpu_quantize_row(a->c->use_ref, a->dst->type, row_f32(a->x, r),
                            (char *)a->dst->data + (size_t)r * a->dst->nb[1], a->x->ne[0]);
}

fg_status fg_cpu_convert(fg_backend *be, fg_tensor *dst, const fg_tensor *x) {
    fg_cpu *c = fg_cpu_ctx(be);
    convert_args a = {c, dst, x};
    fg_tp_run(c->tp, convert_work, &a, hint_for(x->ne[0] * x->ne[1] * 2));
    return FG_OK;
}

// ---------------------------------------------------------------- add, swiglu
typedef struct ew_args {
    fg_tensor *dst;
    const fg_tensor *a, *b;
    int64_t n, rows;
    bool swiglu;
} ew_args;

static void ew_work(void *p, int ith, int nth) {
    ew_args *e = p;
    int64_t rb, re;
    const int64_t n = e->n;
    // split rows; a single long row is split by columns
    if (e->rows >= nth || e->rows >= 4) {
        fg_cpu_split(e->rows, ith, nth, &rb, &re);
        for (int64_t r = rb; r < re; r++) {
            float *d = row_f32(e->dst, r);
            const float *x = row_f32(e->a, r), *y = row_f32(e->b, r);
            if (e->swiglu)
                for (int64_t i = 0; i < n; i++)
                    d[i] = (x[i] / (1.0f + expf(-x[i]))) * y[i];
            else
                for (int64_t i = 0; i < n; i++)
                    d[i] = x[i] + y[i];
        }
    } else {
        int64_t cb, ce;
        fg_cpu_split(n, ith, nth, &cb, &ce);
        for (int64_t r = 0; r < e->rows; r++) {
            float *d = row_f32(e->dst, r);
            const float *x = row_f32(e->a, r), *y = row_f32(e->b, r);
            if (e->swiglu)
                for (int64_t i = cb; i < ce; i++)
                    d[i] = (x[i] / (1.0f + expf(-x[i]))) * y[i];
            else
                for (int64_t i = cb; i < ce; i++)
                    d[i] = x[i] + y[i];
        }
    }
}

static fg_status elementwise(fg_backend *be, fg_tensor *dst, const fg_tensor *a, const fg_tensor *b,
                             bool swiglu) {
    fg_cpu *c = fg_cpu_ctx(be);
    int64_t n = a->ne[0], rows = a->ne[1];
    ew_args e = {dst, a, b, n, rows, swiglu};
    fg_tp_run(c->tp, ew_work, &e, hint_for(n * rows * (swiglu ? 4 : 1)));
    return FG_OK;
}

fg_status fg_cpu_add(fg_backend *be, fg_tensor *dst, const fg_tensor *a, const fg_tensor *b) {
    return elementwise(be, dst, a, b, false);
}

fg_status fg_cpu_swiglu(fg_backend *be, fg_tensor *dst, const fg_tensor *gate, const fg_tensor *up) {
    return elementwise(be, dst, gate, up, true);
}

// ---------------------------------------------------------------- rope
typedef struct rope_args {
    fg_cpu *c;
    fg_tensor *x;
    const fg_rope_params *p;
    const float *ff; // [n_rot/2] or NULL
    float theta_scale;
} rope_args;

static void rope_work(void *pp, int ith, int nth) {
    rope_args *a = pp;
    const fg_rope_params *p = a->p;
    const int n_rot = p->n_rot, half = n_rot / 2;
    float cs[FG_CPU_MAX_HEAD_DIM / 2], sn[FG_CPU_MAX_HEAD_DIM / 2];
    int64_t b, e;
    fg_cpu_split(a->c->st->n_tokens, ith, nth, &b, &e);
    for (int64_t t = b; t < e; t++) {
        // ggml_rope_cache_init with ext_factor 0, attn_factor 1: theta_interp = scale * theta
        float theta = (float)a->c->st->pos[t];
        for (int i = 0; i < half; i++) {
            float ff = a->ff ? a->ff[i] : 1.0f;
            float th = p->freq_scale * (theta / ff);
            cs[i] = cosf(th);
            sn[i] = sinf(th);
            theta *= a->theta_scale;
        }
        float *row = row_f32(a->x, t);
        for (int h = 0; h < p->n_head; h++) {
            float *v = row + (size_t)h * p->head_dim;
            if (p->mode == FG_ROPE_NEOX) {
                for (int i = 0; i < half; i++) {
                    float x0 = v[i], x1 = v[i + half];
                    v[i] = x0 * cs[i] - x1 * sn[i];
                    v[i + half] = x0 * sn[i] + x1 * cs[i];
                }
            } else {
                for (int i = 0; i < half; i++) {
                    float x0 = v[2 * i], x1 = v[2 * i + 1];
                    v[2 * i] = x0 * cs[i] - x1 * sn[i];
                    v[2 * i + 1] = x0 * sn[i] + x1 * cs[i];
                }
            }
        }
    }
}

fg_status fg_cpu_rope(fg_backend *be, fg_tensor *x, const fg_rope_params *p) {
    fg_cpu *c = fg_cpu_ctx(be);
    FG_ASSERT(c->st && p->n_rot <= FG_CPU_MAX_HEAD_DIM);
    const float *ff = p->freq_factors ? p->freq_factors->data : NULL;
    rope_args a = {c, x, p, ff, powf(p->freq_base, -2.0f / (float)p->n_rot)};
    fg_tp_run(c->tp, rope_work, &a, hint_for((int64_t)c->st->n_tokens * p->n_head * p->n_rot));
    return FG_OK;
}

// ---------------------------------------------------------------- kv_store
static inline char *kv_row(const fg_tensor *t, int32_t layer, int32_t page, int32_t slot) {
    return (char *)t->data + (size_t)layer * t->nb[3] + (size_t)page * t->nb[2] +
           (size_t)slot * t->nb[1];
}

typedef struct kv_store_args {
    fg_cpu *c;
    const fg_kv_view *kv;
    int32_t layer;
    const fg_tensor *k, *v;
} kv_store_args;

static void kv_store_work(void *p, int ith, int nth) {
    kv_store_args *a = p;
    const fg_kv_view *kv = a->kv;
    const int64_t n = (int64_t)kv->n_head_kv * kv->head_dim;
    int64_t b, e;
    fg_cpu_split(a->c->st->n_tokens, ith, nth, &b, &e);
    for (int64_t t = b; t < e; t++) {
        int32_t s = a->c->st->seq[t], pos = a->c->st->pos[t];
        int32_t page = a->c->st->page_table[(size_t)s * a->c->st->max_pages + pos / kv->page_size];
        int32_t slot = pos % kv->page_size;
        const float *src[2] = {row_f32(a->k, t), row_f32(a->v, t)};
        char *dst[2] = {kv_row(&kv->k, a->layer, page, slot), kv_row(&kv->v, a->layer, page, slot)};
        for (int i = 0; i < 2; i++) {
            if (kv->type == FG_TYPE_F16) {
                fg_f16 *d = (fg_f16 *)dst[i];
                for (int64_t j = 0; j < n; j++)
                    d[j] = fg_f32_to_f16(src[i][j]);
            } else if (kv->type == FG_TYPE_Q8_0) {
                // Q8_0 blocks of 32 (head_dim is whole blocks, so each head's are its own): ggml's
                // CPU set_rows quantizes with the type's from_float, on x86 quantize_row_q8_0 =
                // fg_quantize_row's Q8_0 (d = f16(amax / 127), q = nearest-even(x * 127 / amax))
                fg_cpu_quantize_row(a->c->use_ref, FG_TYPE_Q8_0, src[i], dst[i], n);
            } else {
                memcpy(dst[i], src[i], (size_t)n * sizeof(float));
            }
        }
    }
}

fg_status fg_cpu_kv_store(fg_backend *be, const fg_kv_view *kv, int32_t layer, const fg_tensor *k,
                          const fg_tensor *v) {
    fg_cpu *c = fg_cpu_ctx(be);
    FG_ASSERT(c->st);
    int64_t n = (int64_t)kv->n_head_kv * kv->head_dim;
    kv_store_args a = {c, kv, layer, k, v};
    fg_tp_run(c->tp, kv_store_work, &a, hint_for((int64_t)c->st->n_tokens * n * 2));
    return FG_OK;
}

// ---------------------------------------------------------------- kv_copy_page
fg_status fg_cpu_kv_copy_page(fg_backend *be, const fg_kv_view *kv, int32_t dst_page,
                              int32_t src_page) {
    for (int32_t l = 0; l < kv->n_layer; l++) {
        memcpy(kv_row(&kv->k, l, dst_page, 0), kv_row(&kv->k, l, src_page, 0), kv->k.nb[2]);
        memcpy(kv_row(&kv->v, l, dst_page, 0), kv_row(&kv->v, l, src_page, 0), kv->v.nb[2]);
    }
    return FG_OK;
}

// ---------------------------------------------------------------- check_finite
// The first non-finite element (lowest row, then column) of x is recorded as row row0 + r.
fg_status fg_cpu_check_finite(fg_backend *be, const fg_tensor *x, int64_t row0) {
    fg_cpu *c = fg_cpu_ctx(be);
    if (c->result.bad_row >= 0)
        return FG_OK; // an earlier call of the step found one: it comes first
    for (int64_t r = 0; r < x->ne[1]; r++) {
        const float *v = row_f32(x, r);
        for (int64_t i = 0; i < x->ne[0]; i++)
            if (!isfinite(v[i])) {
                c->result = (fg_step_result){row0 + r, i, v[i]};
                return FG_OK;
            }
    }
    return FG_OK;
}
