// cpu_backend.c - the CPU backend: host buffers (64-byte aligned), copies, the step metadata
// (copied once per step, arrays grown only when a larger step appears), shared validation
// helpers and the ops table. The ops themselves are in cpu_ops.c, cpu_matmul.c, cpu_attn.c.
// This is the reference every other backend is tested against. Who calls it: backend.c.
#include "backend/cpu/cpu_internal.h"

#include "base/status.h"
#include "base/util.h"
#include "quant/quant.h"

#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

// ---------------------------------------------------------------- scratch
fg_status fg_cpu_scratch_reserve(void **p, size_t *size, size_t n, const char *what) {
    if (n <= *size)
        return FG_OK;
    size_t want = n + n / 4; // some headroom: grow rarely
    want = (want + FG_CPU_ALIGN - 1) / FG_CPU_ALIGN * FG_CPU_ALIGN;
    void *q = NULL;
    if (posix_memalign(&q, FG_CPU_ALIGN, want) != 0)
        return FG_FAIL(FG_ERR_NOMEM, "cpu backend: %s scratch of %zu bytes: out of memory", what, want);
    free(*p);
    *p = q;
    *size = want;
    return FG_OK;
}

static fg_status grow_i32(int32_t **p, size_t *cap, size_t n, const char *what) {
    if (n <= *cap)
        return FG_OK;
    size_t want = n < 64 ? 64 : n + n / 2;
    int32_t *q = realloc(*p, want * sizeof(int32_t));
    if (!q)
        return FG_FAIL(FG_ERR_NOMEM, "cpu backend: set_step: %s array of %zu entries: out of memory",
                       what, want);
    *p = q;
    *cap = want;
    return FG_OK;
}

// ---------------------------------------------------------------- validation helpers
fg_status fg_cpu_check_f32_rows(const char *op, const char *name, const fg_tensor *t, int64_t cols,
                                int64_t rows) {
    if (!t || !t->data)
        return FG_FAIL(FG_ERR_INVALID_ARG, "%s: %s is NULL", op, name);
    if (t->type != FG_TYPE_F32)
        return FG_FAIL(FG_ERR_INVALID_ARG, "%s: %s must be f32, found %s", op, name,
                       fg_type_name(t->type));
    if (t->ne[0] != cols || t->ne[1] != rows || t->ne[2] != 1 || t->ne[3] != 1)
        return FG_FAIL(FG_ERR_INVALID_ARG,
                       "%s: %s has shape [%lld,%lld,%lld,%lld], expected [%lld][%lld] (rows x cols)",
                       op, name, (long long)t->ne[3], (long long)t->ne[2], (long long)t->ne[1],
                       (long long)t->ne[0], (long long)rows, (long long)cols);
    if (t->nb[0] != sizeof(float) || (rows > 1 && t->nb[1] < (size_t)cols * sizeof(float)))
        return FG_FAIL(FG_ERR_INVALID_ARG, "%s: %s rows are not contiguous (nb[0]=%zu, nb[1]=%zu)", op,
                       name, t->nb[0], t->nb[1]);
    return FG_OK;
}

fg_status fg_cpu_check_step(fg_cpu *c, const char *op) {
    if (!c->have_step)
        return FG_FAIL(FG_ERR_INVALID_ARG, "%s: no step set (call set_step first)", op);
    return FG_OK;
}

fg_status fg_cpu_check_kv(fg_cpu *c, const char *op, const fg_kv_view *kv, int32_t layer) {
    if (!kv)
        return FG_FAIL(FG_ERR_INVALID_ARG, "%s: kv view is NULL", op);
    if (kv->type != FG_TYPE_F16 && kv->type != FG_TYPE_F32)
        return FG_FAIL(FG_ERR_INVALID_ARG, "%s: kv type must be f16 or f32, found %s", op,
                       fg_type_name(kv->type));
    if (kv->n_layer < 1 || kv->n_pages < 1 || kv->page_size < 1 || kv->n_head_kv < 1 ||
        kv->head_dim < 1)
        return FG_FAIL(FG_ERR_INVALID_ARG,
                       "%s: kv geometry n_layer=%d n_pages=%d page_size=%d n_head_kv=%d head_dim=%d",
                       op, kv->n_layer, kv->n_pages, kv->page_size, kv->n_head_kv, kv->head_dim);
    if (layer < 0 || layer >= kv->n_layer)
        return FG_FAIL(FG_ERR_INVALID_ARG, "%s: layer %d out of range [0, %d)", op, layer, kv->n_layer);
    const int64_t ne[4] = {(int64_t)kv->n_head_kv * kv->head_dim, kv->page_size, kv->n_pages,
                           kv->n_layer};
    size_t esz = kv->type == FG_TYPE_F16 ? 2 : 4;
    const fg_tensor *tt[2] = {&kv->k, &kv->v};
    for (int i = 0; i < 2; i++) {
        const fg_tensor *t = tt[i];
        if (!t->data || t->type != kv->type || t->ne[0] != ne[0] || t->ne[1] != ne[1] ||
            t->ne[2] != ne[2] || t->ne[3] != ne[3] || !fg_tensor_is_contiguous(t) || t->nb[0] != esz)
            return FG_FAIL(FG_ERR_INVALID_ARG,
                           "%s: kv %s tensor (type %s, ne [%lld,%lld,%lld,%lld]) does not match the view "
                           "(type %s, ne [%lld,%lld,%lld,%lld], contiguous)",
                           op, i ? "v" : "k", fg_type_name(t->type), (long long)t->ne[0],
                           (long long)t->ne[1], (long long)t->ne[2], (long long)t->ne[3],
                           fg_type_name(kv->type), (long long)ne[0], (long long)ne[1],
                           (long long)ne[2], (long long)ne[3]);
    }
    // every page a step token may touch: pages 0..(n_kv-1)/page_size of each sequence
    for (int32_t s = 0; s < c->n_seqs; s++) {
        int64_t need = ((int64_t)c->seq_n_kv[s] + kv->page_size - 1) / kv->page_size;
        if (need > c->max_pages)
            return FG_FAIL(FG_ERR_INVALID_ARG,
                           "%s: sequence %d needs %lld pages for n_kv=%d (page_size %d), page table "
                           "rows hold %d",
                           op, s, (long long)need, c->seq_n_kv[s], kv->page_size, c->max_pages);
        const int32_t *pt = c->page_table + (size_t)s * c->max_pages;
        for (int64_t j = 0; j < need; j++)
            if (pt[j] < 0 || pt[j] >= kv->n_pages)
                return FG_FAIL(FG_ERR_INVALID_ARG,
                               "%s: sequence %d page_table[%lld] = %d out of range [0, %d)", op, s,
                               (long long)j, pt[j], kv->n_pages);
    }
    return FG_OK;
}

// ---------------------------------------------------------------- memory
static fg_status cpu_buf_alloc(fg_backend *be, size_t n_bytes, fg_buffer **out) {
    fg_buffer *b = malloc(sizeof(*b));
    if (!b)
        return FG_FAIL(FG_ERR_NOMEM, "cpu backend: buffer of %zu bytes: out of memory", n_bytes);
    size_t sz = n_bytes ? n_bytes : 1;
    if (sz > SIZE_MAX - FG_CPU_ALIGN) {
        free(b);
        return FG_FAIL(FG_ERR_NOMEM, "cpu backend: buffer of %zu bytes: too large", n_bytes);
    }
    sz = (sz + FG_CPU_ALIGN - 1) / FG_CPU_ALIGN * FG_CPU_ALIGN;
    b->data = NULL;
    if (posix_memalign(&b->data, FG_CPU_ALIGN, sz) != 0) {
        free(b);
        return FG_FAIL(FG_ERR_NOMEM, "cpu backend: buffer of %zu bytes: out of memory", n_bytes);
    }
    b->size = n_bytes;
    *out = b;
    return FG_OK;
}

static void cpu_buf_free(fg_backend *be, fg_buffer *buf) {
    if (!buf)
        return;
    free(buf->data);
    free(buf);
}

static void *cpu_buf_base(fg_buffer *buf) { return buf ? buf->data : NULL; }

// The byte range [data+off, data+off+n) must lie in t's extent and in its buffer.
static fg_status check_range(const char *op, const fg_tensor *t, size_t off, size_t n) {
    if (!t || !t->data)
        return FG_FAIL(FG_ERR_INVALID_ARG, "%s: tensor is NULL", op);
    size_t tn = fg_tensor_nbytes(t);
    if (off > tn || n > tn - off)
        return FG_FAIL(FG_ERR_INVALID_ARG, "%s: %zu bytes at offset %zu exceed the tensor's %zu bytes",
                       op, n, off, tn);
    if (t->buf) {
        const char *b0 = t->buf->data, *p = t->data;
        if (p < b0 || (size_t)(p - b0) > t->buf->size ||
            off + n > t->buf->size - (size_t)(p - b0))
            return FG_FAIL(FG_ERR_INVALID_ARG,
                           "%s: %zu bytes at offset %zu fall outside the tensor's buffer (%zu bytes)",
                           op, n, off, t->buf->size);
    }
    return FG_OK;
}

static fg_status cpu_upload(fg_backend *be, const fg_tensor *dst, size_t off, const void *src,
                            size_t n) {
    FG_TRY(check_range("upload", dst, off, n));
    if (n)
        memcpy((char *)dst->data + off, src, n);
    return FG_OK;
}

static fg_status cpu_download(fg_backend *be, const fg_tensor *src, size_t off, void *dst, size_t n) {
    FG_TRY(check_range("download", src, off, n));
    if (n)
        memcpy(dst, (const char *)src->data + off, n);
    return FG_OK;
}

static fg_status cpu_sync(fg_backend *be) {
    fg_cpu *c = fg_cpu_ctx(be);
    if (c->sticky != FG_OK)
        return FG_FAIL(c->sticky, "%s", c->sticky_msg);
    return FG_OK;
}

static bool cpu_supports_type(fg_backend *be, uint32_t type) {
    const fg_type_traits *t = fg_type_traits_get(type);
    if (!t || !t->is_weight || !t->to_float || !t->vec_dot)
        return false;
    const fg_type_traits *vt = fg_type_traits_get(t->vec_dot_type);
    return vt && (t->vec_dot_type == FG_TYPE_F32 || vt->from_float);
}

// ---------------------------------------------------------------- step
static fg_status cpu_set_step(fg_backend *be, const fg_step *st) {
    fg_cpu *c = fg_cpu_ctx(be);
    c->have_step = false;
    if (!st)
        return FG_FAIL(FG_ERR_INVALID_ARG, "set_step: step is NULL");
    if (st->n_tokens < 1 || st->n_seqs < 1 || st->max_pages < 1 || st->n_out < 0 ||
        st->n_out > st->n_tokens)
        return FG_FAIL(FG_ERR_INVALID_ARG,
                       "set_step: n_tokens=%d n_seqs=%d max_pages=%d n_out=%d (need n_tokens, n_seqs, "
                       "max_pages >= 1 and 0 <= n_out <= n_tokens)",
                       st->n_tokens, st->n_seqs, st->max_pages, st->n_out);
    if (!st->tokens || !st->pos || !st->seq || !st->seq_n_kv || !st->page_table ||
        (st->n_out > 0 && !st->out_rows))
        return FG_FAIL(FG_ERR_INVALID_ARG, "set_step: a metadata array is NULL");
    int32_t max_n_kv = 0;
    for (int32_t s = 0; s < st->n_seqs; s++) {
        if (st->seq_n_kv[s] < 1)
            return FG_FAIL(FG_ERR_INVALID_ARG, "set_step: seq_n_kv[%d] = %d (must be >= 1)", s,
                           st->seq_n_kv[s]);
        max_n_kv = FG_MAX(max_n_kv, st->seq_n_kv[s]);
    }
    for (int32_t t = 0; t < st->n_tokens; t++) {
        int32_t s = st->seq[t];
        if (s < 0 || s >= st->n_seqs)
            return FG_FAIL(FG_ERR_INVALID_ARG, "set_step: seq[%d] = %d out of range [0, %d)", t, s,
                           st->n_seqs);
        if (st->tokens[t] < 0)
            return FG_FAIL(FG_ERR_INVALID_ARG, "set_step: tokens[%d] = %d is negative", t, st->tokens[t]);
        if (st->pos[t] < 0 || st->pos[t] >= st->seq_n_kv[s])
            return FG_FAIL(FG_ERR_INVALID_ARG, "set_step: pos[%d] = %d outside sequence %d's kv length %d",
                           t, st->pos[t], s, st->seq_n_kv[s]);
    }
    for (int32_t i = 0; i < st->n_out; i++) {
        if (st->out_rows[i] < 0 || st->out_rows[i] >= st->n_tokens ||
            (i > 0 && st->out_rows[i] <= st->out_rows[i - 1]))
            return FG_FAIL(FG_ERR_INVALID_ARG,
                           "set_step: out_rows[%d] = %d (must be ascending and in [0, %d))", i,
                           st->out_rows[i], st->n_tokens);
    }
    size_t nt = (size_t)st->n_tokens, ns = (size_t)st->n_seqs, npt = 0;
    if (!fg_mul_size(ns, (size_t)st->max_pages, &npt))
        return FG_FAIL(FG_ERR_INVALID_ARG, "set_step: page table size overflows");
    FG_TRY(grow_i32(&c->tokens, &c->cap_tokens, nt, "tokens"));
    FG_TRY(grow_i32(&c->pos, &c->cap_pos, nt, "pos"));
    FG_TRY(grow_i32(&c->seq, &c->cap_seq, nt, "seq"));
    FG_TRY(grow_i32(&c->out_rows, &c->cap_out, nt, "out_rows"));
    FG_TRY(grow_i32(&c->seq_n_kv, &c->cap_seqs, ns, "seq_n_kv"));
    FG_TRY(grow_i32(&c->page_table, &c->cap_pt, npt, "page_table"));
    size_t need_scores = 0;
    if (!fg_mul_size((size_t)max_n_kv, sizeof(float) * FG_CPU_ATTN_HEADS, &need_scores) ||
        !fg_mul_size(need_scores, (size_t)c->n_threads, &need_scores))
        return FG_FAIL(FG_ERR_INVALID_ARG, "set_step: attention scratch size overflows");
    if ((size_t)max_n_kv > c->scores_stride) {
        size_t stride = ((size_t)max_n_kv + (size_t)max_n_kv / 4 + 15) / 16 * 16;
        size_t cur = c->scores_stride * sizeof(float) * FG_CPU_ATTN_HEADS * (size_t)c->n_threads;
        void *p = c->scores;
        FG_TRY(fg_cpu_scratch_reserve(&p, &cur,
                                      stride * sizeof(float) * FG_CPU_ATTN_HEADS * (size_t)c->n_threads,
                                      "attention scores"));
        c->scores = p;
        c->scores_stride = stride;
    }
    memcpy(c->tokens, st->tokens, nt * sizeof(int32_t));
    memcpy(c->pos, st->pos, nt * sizeof(int32_t));
    memcpy(c->seq, st->seq, nt * sizeof(int32_t));
    memcpy(c->seq_n_kv, st->seq_n_kv, ns * sizeof(int32_t));
    memcpy(c->page_table, st->page_table, npt * sizeof(int32_t));
    if (st->n_out)
        memcpy(c->out_rows, st->out_rows, (size_t)st->n_out * sizeof(int32_t));
    c->n_tokens = st->n_tokens;
    c->n_seqs = st->n_seqs;
    c->max_pages = st->max_pages;
    c->n_out = st->n_out;
    c->max_n_kv = max_n_kv;
    c->have_step = true;
    return FG_OK;
}

// ---------------------------------------------------------------- create / destroy
static void cpu_destroy(fg_backend *be) {
    if (!be)
        return;
    fg_cpu *c = be->ctx;
    if (c) {
        fg_tp_destroy(c->tp);
        free(c->tokens);
        free(c->pos);
        free(c->seq);
        free(c->seq_n_kv);
        free(c->page_table);
        free(c->out_rows);
        free(c->scores);
        free(c->act);
        free(c);
    }
    free(be);
}

static const fg_backend_ops k_cpu_ops = {
    .name = "cpu",
    .destroy = cpu_destroy,
    .buf_alloc = cpu_buf_alloc,
    .buf_free = cpu_buf_free,
    .buf_base = cpu_buf_base,
    .upload = cpu_upload,
    .download = cpu_download,
    .sync = cpu_sync,
    .supports_type = cpu_supports_type,
    .set_step = cpu_set_step,
    .get_rows = fg_cpu_get_rows,
    .gather_out = fg_cpu_gather_out,
    .rmsnorm = fg_cpu_rmsnorm,
    .matmul = fg_cpu_matmul,
    .add = fg_cpu_add,
    .swiglu = fg_cpu_swiglu,
    .rope = fg_cpu_rope,
    .kv_store = fg_cpu_kv_store,
    .attention = fg_cpu_attention,
    .kv_copy_page = fg_cpu_kv_copy_page,
};

static int count_cores(void) {
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0) {
        int n = CPU_COUNT(&set);
        if (n > 0)
            return n;
    }
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

fg_status fg_backend_cpu_create(const fg_backend_opts *opts, fg_backend **out) {
    int n_threads = opts ? opts->n_threads : 0;
    if (n_threads < 0 || n_threads > 1024)
        return FG_FAIL(FG_ERR_INVALID_ARG, "cpu backend: n_threads = %d (expected 0..1024, 0 = all cores)",
                       n_threads);
    if (n_threads == 0)
        n_threads = count_cores();
    fg_backend *be = calloc(1, sizeof(*be));
    fg_cpu *c = calloc(1, sizeof(*c));
    if (!be || !c) {
        free(be);
        free(c);
        return FG_FAIL(FG_ERR_NOMEM, "cpu backend: out of memory");
    }
    be->ops = &k_cpu_ops;
    be->ctx = c;
    c->n_threads = n_threads;
    c->sticky = FG_OK;
    fg_status st = fg_tp_create(n_threads, &c->tp);
    if (st != FG_OK) {
        cpu_destroy(be);
        return st;
    }
    *out = be;
    return FG_OK;
}
