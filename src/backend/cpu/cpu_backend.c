// cpu_backend.c - the CPU backend: host buffers (64-byte aligned), copies, the KV pool, the
// step (backend.c's validated metadata is used in place; the CPU computes synchronously, so a
// step is done when its last op returns) and the ops table. The ops themselves are in
// cpu_ops.c, cpu_matmul.c, cpu_attn.c. This is the reference every other backend is tested
// against. Who calls it: registry.c, tests.
#include "backend/cpu/cpu_internal.h"

#include "base/status.h"
#include "base/util.h"
#include "backend/cpu/cpu_kernels.h"
#include "backend/sample_ref.h"

#include <sched.h>
#include <stdio.h>
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

static fg_status cpu_sync(fg_backend *be) { return FG_OK; } // every op ran to completion

static fg_status cpu_host_alloc(fg_backend *be, size_t n_bytes, void **out) {
    void *p = NULL;
    if (posix_memalign(&p, FG_CPU_ALIGN, n_bytes ? n_bytes : 1) != 0)
        return FG_FAIL(FG_ERR_NOMEM, "cpu backend: host buffer of %zu bytes: out of memory", n_bytes);
    *out = p;
    return FG_OK;
}

static void cpu_host_free(fg_backend *be, void *p) { free(p); }

static size_t cpu_buf_size(fg_buffer *buf) { return buf ? buf->size : 0; }

static const char *cpu_describe(fg_backend *be) { return fg_cpu_ctx(be)->desc; }

static fg_status cpu_mem_info(fg_backend *be, uint64_t *free_bytes, uint64_t *total_bytes) {
    *free_bytes = 0;
    *total_bytes = 0;
    return FG_OK;
}

static bool cpu_supports(fg_backend *be, fg_op op, uint32_t type) {
    const fg_type_traits *t = fg_type_traits_get(type);
    switch (op) {
    case FG_OP_GET_ROWS:
        return t && t->is_weight && t->to_float;
    case FG_OP_MATMUL: {
        if (!t || !t->is_weight || !t->to_float || !t->vec_dot)
            return false;
        const fg_type_traits *vt = fg_type_traits_get(t->vec_dot_type);
        return vt && (t->vec_dot_type == FG_TYPE_F32 || vt->from_float);
    }
    case FG_OP_CONVERT:
        return type == FG_TYPE_Q8_0 || type == FG_TYPE_Q8_1 || type == FG_TYPE_Q8_K || type == FG_TYPE_F16 ||
               type == FG_TYPE_BF16;
    case FG_OP_KV_STORE:
    case FG_OP_ATTENTION:
    case FG_OP_KV_COPY_PAGE:
        return type == FG_TYPE_F16 || type == FG_TYPE_F32 || type == FG_TYPE_Q8_0;
    case FG_OP_ADD_ROWS: // position / token-type tables (issue 14)
        return type == FG_TYPE_F32 || type == FG_TYPE_F16 || type == FG_TYPE_BF16;
    default:
        return type == FG_TYPE_F32;
    }
}

// The canonical layout: the GGUF bytes as they are.
static size_t cpu_weight_size(fg_backend *be, uint32_t type, int64_t ne0, int64_t ne1) {
    return fg_type_row_size_n(type, ne0) * (size_t)ne1;
}

static fg_status cpu_weight_upload(fg_backend *be, fg_tensor *w, const void *src) {
    memcpy(w->data, src, fg_tensor_nbytes(w));
    return FG_OK;
}

static fg_status cpu_kv_alloc(fg_backend *be, fg_kv_view *v, fg_buffer **out) {
    if (!cpu_supports(be, FG_OP_KV_STORE, v->type))
        return FG_FAIL(FG_ERR_UNSUPPORTED, "cpu: KV type %s is not supported (f16, f32 or q8_0)", fg_type_name(v->type));
    if (v->head_dim < 1 || v->head_dim % fg_type_block_size(v->type) != 0)
        return FG_FAIL(FG_ERR_UNSUPPORTED, "cpu: a %s KV cache needs head_dim a multiple of %lld, found %d",
                       fg_type_name(v->type), (long long)fg_type_block_size(v->type), v->head_dim);
    uint64_t kv_dim = (uint64_t)v->n_head_kv * (uint64_t)v->head_dim;
    // bytes of one slot's row: whole blocks for a quantized type (head_dim is whole blocks)
    uint64_t row = fg_type_row_size_n(v->type, (int64_t)kv_dim), one = 0, all = 0;
    if (!fg_mul_u64(row, (uint64_t)v->page_size, &one) ||
        !fg_mul_u64(one, (uint64_t)v->n_pages * (uint64_t)v->n_layer, &one) || !fg_mul_u64(one, 2, &all) ||
        all > SIZE_MAX / 2)
        return FG_FAIL(FG_ERR_INVALID_ARG, "kv store: %d pages of %d tokens overflow", v->n_pages, v->page_size);
    fg_buffer *buf = NULL;
    FG_TRY(cpu_buf_alloc(be, (size_t)all, &buf));
    int64_t ne[4] = {(int64_t)kv_dim, v->page_size, v->n_pages, v->n_layer};
    v->k = fg_tensor_view(buf, buf->data, 0, v->type, 4, ne);
    v->v = fg_tensor_view(buf, buf->data, (size_t)one, v->type, 4, ne);
    *out = buf;
    return FG_OK;
}

// Attention keeps each task's probabilities: n_threads x FG_CPU_ATTN_HEADS rows of max_n_kv.
static fg_status reserve_scores(fg_cpu *c, int64_t max_n_kv) {
    if ((size_t)max_n_kv <= c->scores_stride)
        return FG_OK;
    size_t stride = ((size_t)max_n_kv + (size_t)max_n_kv / 4 + 15) / 16 * 16, need = 0;
    if (!fg_mul_size(stride, sizeof(float) * FG_CPU_ATTN_HEADS * (size_t)c->n_threads, &need))
        return FG_FAIL(FG_ERR_INVALID_ARG, "cpu backend: attention scratch size overflows");
    size_t cur = c->scores_stride * sizeof(float) * FG_CPU_ATTN_HEADS * (size_t)c->n_threads;
    void *p = c->scores;
    FG_TRY(fg_cpu_scratch_reserve(&p, &cur, need, "attention scores"));
    c->scores = p;
    c->scores_stride = stride;
    return FG_OK;
}

static fg_status cpu_reserve(fg_backend *be, const fg_backend_limits *lim) {
    fg_cpu *c = fg_cpu_ctx(be);
    FG_TRY(reserve_scores(c, lim->max_kv_len));
    // converted activations: at most 4 bytes per element (F32 rows are used as they are)
    size_t act = 0;
    if (!fg_mul_size((size_t)lim->max_tokens, (size_t)lim->max_cols * 2 + 64, &act))
        return FG_FAIL(FG_ERR_INVALID_ARG, "cpu backend: activation scratch size overflows");
    FG_TRY(fg_cpu_scratch_reserve(&c->act, &c->act_size, act, "matmul activation"));
    // sample: a candidate array of the widest row (n_vocab) per worker
    size_t stride = (size_t)lim->max_cols, samp = 0;
    if (stride > c->samp_stride) {
        if (!fg_mul_size(stride * sizeof(fg_sample_cand), (size_t)c->n_threads, &samp))
            return FG_FAIL(FG_ERR_INVALID_ARG, "cpu backend: sample scratch size overflows");
        size_t cur = c->samp_stride * sizeof(fg_sample_cand) * (size_t)c->n_threads;
        FG_TRY(fg_cpu_scratch_reserve(&c->samp, &cur, samp, "sample candidates"));
        c->samp_stride = stride;
    }
    return FG_OK;
}

static uint32_t cpu_act_type(fg_backend *be, uint32_t wtype, int64_t n_rows) {
    const fg_type_traits *t = fg_type_traits_get(wtype);
    return t ? t->vec_dot_type : FG_TYPE_F32;
}

// ---------------------------------------------------------------- step
static fg_status cpu_step_begin(fg_backend *be, const fg_step *st) {
    fg_cpu *c = fg_cpu_ctx(be);
    c->st = st;
    c->max_n_kv = be->state.max_n_kv;
    c->result = (fg_step_result){-1, -1, 0.0f};
    return reserve_scores(c, c->max_n_kv); // grows only past every earlier step (and reserve)
}

static fg_status cpu_step_end(fg_backend *be) { return FG_OK; }

static fg_status cpu_step_wait(fg_backend *be, fg_step_result *res) {
    *res = fg_cpu_ctx(be)->result;
    return FG_OK;
}

static fg_status cpu_download_async(fg_backend *be, const fg_tensor *src, size_t off, void *host, size_t n) {
    memcpy(host, (const char *)src->data + off, n); // the CPU computes synchronously
    return FG_OK;
}

// ---------------------------------------------------------------- copy bandwidth
typedef struct copy_args {
    char *dst;
    const char *src;
    size_t n;
} copy_args;

static void copy_work(void *p, int ith, int nth) {
    copy_args *a = p;
    int64_t b, e;
    fg_cpu_split((int64_t)(a->n / 64), ith, nth, &b, &e);
    memcpy(a->dst + b * 64, a->src + b * 64, (size_t)(e - b) * 64);
}

// Best of 5 copies of `bytes` split across the backend's threads (read + write counted).
static fg_status cpu_copy_bandwidth(fg_backend *be, size_t bytes, double *gb_per_s) {
    fg_cpu *c = fg_cpu_ctx(be);
    bytes = bytes / 64 * 64;
    char *a = NULL, *b = NULL;
    if (posix_memalign((void **)&a, FG_CPU_ALIGN, bytes) != 0 || posix_memalign((void **)&b, FG_CPU_ALIGN, bytes) != 0) {
        free(a);
        return FG_FAIL(FG_ERR_NOMEM, "cpu backend: copy bandwidth: %zu bytes", bytes);
    }
    memset(a, 1, bytes);
    memset(b, 2, bytes);
    double best = 0;
    for (int i = 0; i < 5; i++) {
        copy_args ca = {i % 2 ? a : b, i % 2 ? b : a, bytes};
        double t0 = fg_time_s();
        fg_tp_run(c->tp, copy_work, &ca, 0);
        double dt = fg_time_s() - t0;
        best = FG_MAX(best, 2.0 * (double)bytes / dt / 1e9);
    }
    free(a);
    free(b);
    *gb_per_s = best;
    return FG_OK;
}

// ---------------------------------------------------------------- create / destroy
static void cpu_destroy(fg_backend *be) {
    if (!be)
        return;
    fg_cpu *c = be->ctx;
    if (c) {
        fg_tp_destroy(c->tp);
        free(c->scores);
        free(c->act);
        free(c->samp);
        free(c);
    }
    fg_step_state_free(&be->state);
    free(be);
}

static const fg_backend_ops k_cpu_ops = {
    .name = "cpu",
    .destroy = cpu_destroy,
    .describe = cpu_describe,
    .mem_info = cpu_mem_info,
    .buf_alloc = cpu_buf_alloc,
    .buf_free = cpu_buf_free,
    .buf_base = cpu_buf_base,
    .buf_size = cpu_buf_size,
    .host_alloc = cpu_host_alloc,
    .host_free = cpu_host_free,
    .upload = cpu_upload,
    .download = cpu_download,
    .sync = cpu_sync,
    .supports = cpu_supports,
    .weight_size = cpu_weight_size,
    .weight_upload = cpu_weight_upload,
    .kv_alloc = cpu_kv_alloc,
    .reserve = cpu_reserve,
    .act_type = cpu_act_type,
    .step_begin = cpu_step_begin,
    .step_end = cpu_step_end,
    .step_wait = cpu_step_wait,
    .get_rows = fg_cpu_get_rows,
    .gather_out = fg_cpu_gather_out,
    .rmsnorm = fg_cpu_rmsnorm,
    .convert = fg_cpu_convert,
    .matmul = fg_cpu_matmul,
    .add = fg_cpu_add,
    .swiglu = fg_cpu_swiglu,
    .rope = fg_cpu_rope,
    .kv_store = fg_cpu_kv_store,
    .attention = fg_cpu_attention,
    .check_finite = fg_cpu_check_finite,
    .sample = fg_cpu_sample,
    .download_async = cpu_download_async,
    .copy_bandwidth = cpu_copy_bandwidth,
    .kv_copy_page = fg_cpu_kv_copy_page,
    // embedding models (issue 14)
    .layernorm = fg_cpu_layernorm,
    .gelu = fg_cpu_gelu,
    .add_rows = fg_cpu_add_rows,
    .pool = fg_cpu_pool,
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
    c->use_ref = opts && opts->use_ref;
    snprintf(c->desc, sizeof c->desc, "cpu (%d threads, %s kernels)", n_threads,
             c->use_ref ? "scalar reference" : fg_cpu_simd_name());
    fg_status st = fg_tp_create(n_threads, &c->tp);
    if (st != FG_OK) {
        cpu_destroy(be);
        return st;
    }
    *out = be;
    return FG_OK;
}
