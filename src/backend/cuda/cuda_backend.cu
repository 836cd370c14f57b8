// cuda_backend.cu - the CUDA (and, through gpu_compat.h, HIP) backend: one device, one
// non-blocking stream; device lifecycle, buffers, checked copies, reserve (step metadata and
// scratch arenas, sized at load), the step (begin: one metadata copy; end: the result copy
// and an event; wait: the only blocking call) and the ops table wired to the launchers of
// cuda_ops.cu, cuda_matmul.cu and cuda_attn.cu. Not here: kernels. Who calls it: backend.c's
// checked wrappers (fg_backend_cuda_create through fg_backend_create). Every runtime call is
// checked; a device error is sticky (every later call fails with FG_ERR_DEVICE).
#include "backend/cuda/cuda_internal.h"

extern "C" {
#include "backend/comm.h"
#include "base/util.h"
}

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

// backend.c's per-backend step state, freed by every backend's destroy. Declared in backend.h
// by the seam rewrite; repeated here until that lands on this branch (identical redeclaration).
extern "C" void fg_step_state_free(fg_step_state *ss);

static fg_status sticky_error(const fg_cuda *c) {
    return fg_fail(FG_ERR_DEVICE, "%s: device %d is in an error state from an earlier failure",
                   FG_GPU_VENDOR, c->device);
}

#define CHECK_STICKY(c)                \
    do {                               \
        if ((c)->sticky)               \
            return sticky_error((c));  \
    } while (0)

// The current device is per host thread: the backend may be created on one thread and driven
// from another (the engine's scheduler), so every entry point that is not an op makes its
// device current (cheap when it already is). Ops run on the thread that began the step.
#define USE_DEVICE(c) FG_GPU_CHECK((c), gpuSetDevice((c)->device))
#define USE_DEVICE_VOID(c) FG_GPU_IGNORE(gpuSetDevice((c)->device))

// Forgets every recorded step: they name buffers by address, and a freed or reallocated
// buffer (a model unloaded, the arenas grown) may come back at the same address for another
// use.
static void drop_graphs(fg_cuda *c) {
    for (int i = 0; i < FG_CUDA_GRAPHS; i++)
        if (c->graphs[i].used) {
            FG_GPU_IGNORE(gpuGraphExecDestroy(c->graphs[i].exec));
            c->graphs[i].used = false;
        }
}

// ------------------------------------------------------------------------------ arenas

static size_t arena_next(const fg_cuda_arena *a) {
    return (a->used + FG_CUDA_ARENA_ALIGN - 1) & ~(FG_CUDA_ARENA_ALIGN - 1);
}

size_t fg_cuda_arena_left(const fg_cuda_arena *a) {
    const size_t off = arena_next(a);
    return off < a->size ? a->size - off : 0;
}

fg_status fg_cuda_arena_take(fg_cuda_arena *a, size_t n, const char *what, void **out) {
    size_t off = arena_next(a);
    if (off > a->size || n > a->size - off)
        return fg_fail(FG_ERR_CAPACITY,
                       "%s: %s needs %zu bytes of step scratch but %zu of the arena's %zu are left "
                       "(reserve sized it too small: a *_scratch_bytes bug)",
                       FG_GPU_VENDOR, what, n, off > a->size ? (size_t)0 : a->size - off, a->size);
    *out = a->base + off;
    a->used = off + n;
    return FG_OK;
}

// Grows an arena to at least n bytes (contents not kept). Outside steps only.
static fg_status arena_grow(fg_cuda *c, fg_cuda_arena *a, size_t n, const char *what) {
    if (n <= a->size)
        return FG_OK;
    if (a->base)
        FG_GPU_IGNORE(gpuFree(a->base));
    a->base = NULL;
    a->size = a->used = 0;
    void *p = NULL;
    gpuError_t err = gpuMalloc(&p, n);
    if (err != gpuSuccess) {
        FG_GPU_IGNORE(gpuGetLastError()); // an allocation failure is not sticky
        return fg_fail(FG_ERR_NOMEM, "%s: cannot allocate the %zu-byte %s scratch arena on device %d: %s",
                       FG_GPU_VENDOR, n, what, c->device, gpuGetErrorString(err));
    }
    a->base = (char *)p;
    a->size = n;
    return FG_OK;
}

// ------------------------------------------------------------------------------ lifecycle

static void cuda_destroy(fg_backend *be) {
    if (!be)
        return;
    fg_cuda *c = fg_cuda_ctx(be);
    if (c) {
        // Frees whatever was built (destroy accepts half-built contexts); failures can't be
        // acted on here, so each result is read and dropped.
        FG_GPU_IGNORE(gpuSetDevice(c->device));
        if (c->stream)
            FG_GPU_IGNORE(gpuStreamSynchronize(c->stream));
        drop_graphs(c);
        fg_cuda_prof_free(c);
        fg_cuda_matmul_free(c);
        for (int i = 0; i < 2; i++)
            if (c->meta_ev[i])
                FG_GPU_IGNORE(gpuEventDestroy(c->meta_ev[i]));
        for (int i = 0; i < FG_CUDA_MAX_PENDING; i++)
            if (c->done_ev[i])
                FG_GPU_IGNORE(gpuEventDestroy(c->done_ev[i]));
        if (c->h_meta)
            FG_GPU_IGNORE(gpuFreeHost(c->h_meta));
        if (c->d_meta)
            FG_GPU_IGNORE(gpuFree(c->d_meta));
        if (c->h_bad)
            FG_GPU_IGNORE(gpuFreeHost(c->h_bad));
        if (c->d_bad)
            FG_GPU_IGNORE(gpuFree(c->d_bad));
        if (c->mm.base)
            FG_GPU_IGNORE(gpuFree(c->mm.base));
        if (c->attn.base)
            FG_GPU_IGNORE(gpuFree(c->attn.base));
        if (c->stream)
            FG_GPU_IGNORE(gpuStreamDestroy(c->stream));
        free(c);
    }
    fg_step_state_free(&be->state);
    free(be);
}

static const char *cuda_describe(fg_backend *be) { return fg_cuda_ctx(be)->desc; }

static fg_status cuda_mem_info(fg_backend *be, uint64_t *free_bytes, uint64_t *total_bytes) {
    fg_cuda *c = fg_cuda_ctx(be);
    CHECK_STICKY(c);
    USE_DEVICE(c);
    size_t fr = 0, tot = 0;
    FG_GPU_CHECK(c, gpuMemGetInfo(&fr, &tot));
    if (free_bytes)
        *free_bytes = fr;
    if (total_bytes)
        *total_bytes = tot;
    return FG_OK;
}

// ------------------------------------------------------------------------------ memory

// Free device bytes for an out-of-memory message (0 when even that query fails).
static size_t free_device_bytes(void) {
    size_t fr = 0, tot = 0;
    if (gpuMemGetInfo(&fr, &tot) != gpuSuccess) {
        FG_GPU_IGNORE(gpuGetLastError());
        return 0;
    }
    return fr;
}

static fg_status cuda_buf_alloc(fg_backend *be, size_t n_bytes, fg_buffer **out) {
    fg_cuda *c = fg_cuda_ctx(be);
    CHECK_STICKY(c);
    USE_DEVICE(c);
    void *p = NULL;
    gpuError_t err = gpuMalloc(&p, n_bytes ? n_bytes : 1);
    if (err == gpuErrorMemoryAllocation) {
        FG_GPU_IGNORE(gpuGetLastError()); // out of memory is not sticky: the caller may retry smaller
        return fg_fail(FG_ERR_NOMEM, "%s: cannot allocate %zu bytes on device %d (%zu bytes free): %s",
                       FG_GPU_VENDOR, n_bytes, c->device, free_device_bytes(), gpuGetErrorString(err));
    }
    FG_GPU_CHECK(c, err);
    fg_buffer *b = (fg_buffer *)calloc(1, sizeof *b);
    if (!b) {
        FG_GPU_IGNORE(gpuFree(p));
        return fg_fail(FG_ERR_NOMEM, "%s: out of host memory for a buffer record", FG_GPU_VENDOR);
    }
    b->dev = p;
    b->size = n_bytes;
    *out = b;
    return FG_OK;
}

static void cuda_buf_free(fg_backend *be, fg_buffer *buf) {
    if (!buf)
        return;
    drop_graphs(fg_cuda_ctx(be));
    FG_GPU_IGNORE(gpuFree(buf->dev)); // waits for work using it (cudaFree synchronises)
    free(buf);
}

static void *cuda_buf_base(fg_buffer *buf) { return buf->dev; }
static size_t cuda_buf_size(fg_buffer *buf) { return buf->size; }

static fg_status cuda_host_alloc(fg_backend *be, size_t n_bytes, void **out) {
    fg_cuda *c = fg_cuda_ctx(be);
    CHECK_STICKY(c);
    USE_DEVICE(c);
    void *p = NULL;
    gpuError_t err = gpuMallocHost(&p, n_bytes ? n_bytes : 1);
    if (err != gpuSuccess) {
        FG_GPU_IGNORE(gpuGetLastError()); // pinning failures are not device faults
        return fg_fail(FG_ERR_NOMEM, "%s: cannot allocate %zu bytes of pinned host memory: %s",
                       FG_GPU_VENDOR, n_bytes, gpuGetErrorString(err));
    }
    *out = p;
    return FG_OK;
}

static void cuda_host_free(fg_backend *be, void *p) {
    (void)be;
    if (p)
        FG_GPU_IGNORE(gpuFreeHost(p));
}

static fg_status check_range(const fg_tensor *t, size_t off, size_t n, const char *what) {
    size_t total = fg_tensor_nbytes(t);
    if (off > total || n > total - off)
        return fg_fail(FG_ERR_INVALID_ARG, "%s: %s of %zu bytes at offset %zu exceeds the tensor's %zu bytes",
                       FG_GPU_VENDOR, what, n, off, total);
    return FG_OK;
}

static fg_status cuda_upload(fg_backend *be, const fg_tensor *dst, size_t off, const void *src, size_t n) {
    fg_cuda *c = fg_cuda_ctx(be);
    CHECK_STICKY(c);
    FG_TRY(check_range(dst, off, n, "upload"));
    if (n == 0)
        return FG_OK;
    USE_DEVICE(c);
    FG_GPU_CHECK(c, gpuMemcpyAsync((char *)dst->data + off, src, n, gpuMemcpyHostToDevice, c->stream));
    FG_GPU_CHECK(c, gpuStreamSynchronize(c->stream)); // src may be reused by the caller at once
    return FG_OK;
}

static fg_status cuda_download(fg_backend *be, const fg_tensor *src, size_t off, void *dst, size_t n) {
    fg_cuda *c = fg_cuda_ctx(be);
    CHECK_STICKY(c);
    FG_TRY(check_range(src, off, n, "download"));
    if (n == 0)
        return FG_OK;
    USE_DEVICE(c);
    FG_GPU_CHECK(c, gpuMemcpyAsync(dst, (const char *)src->data + off, n, gpuMemcpyDeviceToHost, c->stream));
    FG_GPU_CHECK(c, gpuStreamSynchronize(c->stream));
    return FG_OK;
}

static fg_status cuda_sync(fg_backend *be) {
    fg_cuda *c = fg_cuda_ctx(be);
    CHECK_STICKY(c);
    USE_DEVICE(c);
    FG_GPU_CHECK(c, gpuStreamSynchronize(c->stream));
    FG_GPU_CHECK(c, gpuGetLastError());
    return FG_OK;
}

static bool cuda_supports(fg_backend *be, fg_op op, uint32_t type) {
    (void)be;
    switch (op) {
    case FG_OP_MATMUL:
    case FG_OP_GET_ROWS:
        return fg_cuda_matmul_supports(type);
    case FG_OP_KV_STORE:
    case FG_OP_ATTENTION:
    case FG_OP_KV_COPY_PAGE:
        return fg_cuda_kv_supports(type);
    case FG_OP_CONVERT:
        return fg_cuda_convert_supports(type);
    case FG_OP_SWIGLU: // F32, or straight into an activation type
    case FG_OP_RMSNORM:
        return type == FG_TYPE_F32 || fg_cuda_convert_supports(type);
    case FG_OP_GATHER_OUT:
    case FG_OP_ADD:
    case FG_OP_ROPE:
    case FG_OP_CHECK_FINITE:
    case FG_OP_ALL_REDUCE: // the communicator (comm_nccl.cu) says whether NCCL is built in
        return type == FG_TYPE_F32;
    case FG_OP_SAMPLE:
        return type == FG_TYPE_F32;
    case FG_OP_LAYERNORM: // embedding models (issue 14)
    case FG_OP_GELU:
    case FG_OP_POOL:
        return type == FG_TYPE_F32;
    case FG_OP_ADD_ROWS:
        return fg_cuda_add_rows_supports(type);
    case FG_OP_COUNT:
        break;
    }
    return false;
}

// ------------------------------------------------------------------------------ weights, KV

// The canonical (GGUF) bytes for now; 0 for a type or width the traits table refuses.
static size_t cuda_weight_size(fg_backend *be, uint32_t type, int64_t ne0, int64_t ne1) {
    (void)be;
    uint64_t row = 0, total = 0;
    if (ne1 < 0 || fg_type_row_bytes(type, ne0, &row) != FG_OK || !fg_mul_u64(row, (uint64_t)ne1, &total) ||
        total > SIZE_MAX)
        return 0;
    return (size_t)total;
}

// The whole tensor in its canonical layout, synchronously (src is the caller's mapping).
// A repacked device layout (e.g. blocks interleaved for the matmul kernels) goes HERE: convert
// into a pinned staging block or a device temporary, and make weight_size report its bytes;
// w->nb then describes the repacked layout only to cuda_matmul.cu.
static fg_status cuda_weight_upload(fg_backend *be, fg_tensor *w, const void *src) {
    fg_cuda *c = fg_cuda_ctx(be);
    CHECK_STICKY(c);
    size_t n = fg_tensor_nbytes(w);
    if (w->buf && (size_t)((char *)w->data - (char *)w->buf->dev) + n > w->buf->size)
        return fg_fail(FG_ERR_INVALID_ARG, "%s: weight_upload of %zu bytes at offset %zu overruns its %zu-byte buffer",
                       FG_GPU_VENDOR, n, (size_t)((char *)w->data - (char *)w->buf->dev), w->buf->size);
    if (n == 0)
        return FG_OK;
    USE_DEVICE(c);
    FG_GPU_CHECK(c, gpuMemcpyAsync(w->data, src, n, gpuMemcpyHostToDevice, c->stream));
    FG_GPU_CHECK(c, gpuStreamSynchronize(c->stream));
    return FG_OK;
}

// One buffer: K then V (V starts on a 256-byte boundary), each in the canonical layout
// [n_layer][n_pages][page_size][n_head_kv * head_dim]. Zeroed, so a kernel that reads a slot
// nobody wrote sees 0, not stale NaNs (compute-sanitizer initcheck still finds such reads).
static fg_status cuda_kv_alloc(fg_backend *be, fg_kv_view *view, fg_buffer **out) {
    fg_cuda *c = fg_cuda_ctx(be);
    CHECK_STICKY(c);
    if (!fg_cuda_kv_supports(view->type))
        return fg_fail(FG_ERR_UNSUPPORTED, "%s: KV type %s is not supported (f16, f32 or q8_0)", FG_GPU_VENDOR,
                       fg_type_name(view->type));
    if (view->n_layer < 1 || view->n_pages < 1 || view->page_size < 1 || view->n_head_kv < 1 || view->head_dim < 1)
        return fg_fail(FG_ERR_INVALID_ARG,
                       "%s: kv_alloc geometry n_layer=%d n_pages=%d page_size=%d n_head_kv=%d head_dim=%d (all must be >= 1)",
                       FG_GPU_VENDOR, view->n_layer, view->n_pages, view->page_size, view->n_head_kv, view->head_dim);
    if (view->head_dim % fg_type_block_size(view->type) != 0)
        return fg_fail(FG_ERR_UNSUPPORTED, "%s: a %s KV cache needs head_dim a multiple of %lld, found %d",
                       FG_GPU_VENDOR, fg_type_name(view->type), (long long)fg_type_block_size(view->type),
                       view->head_dim);
    // one slot's row: n_head_kv * head_dim elements (Q8_0: whole 34-byte blocks, head by head)
    uint64_t b = fg_type_block_bytes(view->type) *
                 ((uint64_t)view->n_head_kv * (uint64_t)view->head_dim / (uint64_t)fg_type_block_size(view->type));
    if (b == 0 || !fg_mul_u64(b, (uint64_t)view->page_size, &b) || !fg_mul_u64(b, (uint64_t)view->n_pages, &b) ||
        !fg_mul_u64(b, (uint64_t)view->n_layer, &b) || b > (SIZE_MAX - 256) / 2)
        return fg_fail(FG_ERR_INVALID_ARG, "%s: kv_alloc size overflows (%d layers x %d pages x %d slots)",
                       FG_GPU_VENDOR, view->n_layer, view->n_pages, view->page_size);
    const size_t k_bytes = (size_t)b, v_off = (k_bytes + 255) & ~(size_t)255;
    fg_buffer *buf = NULL;
    FG_TRY(cuda_buf_alloc(be, v_off + k_bytes, &buf));
    gpuError_t err = gpuMemsetAsync(buf->dev, 0, v_off + k_bytes, c->stream);
    if (err == gpuSuccess)
        err = gpuStreamSynchronize(c->stream);
    if (err != gpuSuccess) {
        cuda_buf_free(be, buf);
        c->sticky = 1;
        return fg_fail(FG_ERR_DEVICE, "%s: clearing the %zu-byte KV pool failed: %s", FG_GPU_VENDOR,
                       v_off + k_bytes, gpuGetErrorString(err));
    }
    const int64_t ne[4] = {(int64_t)view->n_head_kv * view->head_dim, view->page_size, view->n_pages, view->n_layer};
    view->k = fg_tensor_view(buf, buf->dev, 0, view->type, 4, ne);
    view->v = fg_tensor_view(buf, buf->dev, v_off, view->type, 4, ne);
    *out = buf;
    return FG_OK;
}

// ------------------------------------------------------------------------------ reserve

// Offsets (int32 elements) of the packed metadata arrays; every start is 16-byte aligned. The
// offsets depend only on (n_tokens, n_out, n_seqs, the page-table stride, whether the step
// samples); the sample entries come last (their count varies from step to step: the kernels
// find each row's in the rows).
typedef struct meta_layout {
    size_t tokens, pos, seq, out_rows, seq_n_kv, seq_first, seq_n_tokens, page_table, sample, entries, total;
} meta_layout;

#define SAMPLE_ROW_WORDS (sizeof(fg_sample_row) / sizeof(int32_t))
#define SAMPLE_ENTRY_WORDS (sizeof(fg_sample_entry) / sizeof(int32_t))

static size_t up4(size_t n) { return (n + 3) & ~(size_t)3; }

static meta_layout meta_layout_of(size_t n_tokens, size_t n_out, size_t n_seqs, size_t max_pages, size_t n_sample,
                                  size_t n_entries) {
    meta_layout l;
    size_t o = 0;
    l.tokens = o;
    o += up4(n_tokens);
    l.pos = o;
    o += up4(n_tokens);
    l.seq = o;
    o += up4(n_tokens);
    l.out_rows = o;
    o += up4(n_out);
    l.seq_n_kv = o;
    o += up4(n_seqs);
    l.seq_first = o;
    o += up4(n_seqs);
    l.seq_n_tokens = o;
    o += up4(n_seqs);
    l.page_table = o;
    o += up4(n_seqs * max_pages);
    l.sample = o; // 16-byte aligned: the rows hold doubles
    o += n_sample * SAMPLE_ROW_WORDS;
    l.entries = o;
    o += n_entries * SAMPLE_ENTRY_WORDS;
    l.total = o;
    return l;
}

static fg_backend_limits limits_max(const fg_backend_limits *a, const fg_backend_limits *b) {
    fg_backend_limits m;
    m.max_tokens = FG_MAX(a->max_tokens, b->max_tokens);
    m.max_seqs = FG_MAX(a->max_seqs, b->max_seqs);
    m.max_pages = FG_MAX(a->max_pages, b->max_pages);
    m.max_kv_len = FG_MAX(a->max_kv_len, b->max_kv_len);
    m.max_heads = FG_MAX(a->max_heads, b->max_heads);
    m.max_head_dim = FG_MAX(a->max_head_dim, b->max_head_dim);
    m.max_cols = FG_MAX(a->max_cols, b->max_cols);
    m.max_weight_elems = FG_MAX(a->max_weight_elems, b->max_weight_elems);
    m.max_sample_entries = FG_MAX(a->max_sample_entries, b->max_sample_entries);
    return m;
}

// Keeps the max of every field seen; (re)allocates the metadata staging and its device twin
// and the two arenas when a bigger size is needed. Called at load only (it may synchronise).
static fg_status cuda_reserve(fg_backend *be, const fg_backend_limits *lim) {
    fg_cuda *c = fg_cuda_ctx(be);
    CHECK_STICKY(c);
    if (c->in_step)
        return fg_fail(FG_ERR_INVALID_ARG, "%s: reserve inside a step (it sizes memory the step uses)", FG_GPU_VENDOR);
    USE_DEVICE(c);
    if (lim->max_tokens < 0 || lim->max_seqs < 0 || lim->max_pages < 0 || lim->max_kv_len < 0 ||
        lim->max_heads < 0 || lim->max_head_dim < 0 || lim->max_cols < 0)
        return fg_fail(FG_ERR_INVALID_ARG, "%s: reserve with a negative limit", FG_GPU_VENDOR);
    const fg_backend_limits m = limits_max(&c->lim, lim);
    uint64_t pt = 0;
    if (!fg_mul_u64((uint64_t)m.max_seqs, (uint64_t)m.max_pages, &pt) || pt > ((uint64_t)1 << 40))
        return fg_fail(FG_ERR_INVALID_ARG, "%s: reserve: page table of %d sequences x %d pages is too large",
                       FG_GPU_VENDOR, m.max_seqs, m.max_pages);
    const size_t need = meta_layout_of((size_t)m.max_tokens, (size_t)m.max_tokens, (size_t)m.max_seqs,
                                       (size_t)m.max_pages, (size_t)m.max_tokens, (size_t)m.max_sample_entries)
                            .total;

    drop_graphs(c); // the metadata and the arenas may move
    // The staging may be the source of a copy in flight and the arenas in use by queued
    // kernels: drain the stream before freeing anything.
    FG_GPU_CHECK(c, gpuStreamSynchronize(c->stream));

    if (need > c->meta_cap) {
        if (c->h_meta)
            FG_GPU_IGNORE(gpuFreeHost(c->h_meta));
        if (c->d_meta)
            FG_GPU_IGNORE(gpuFree(c->d_meta));
        c->h_meta = c->d_meta = NULL;
        c->meta_cap = 0;
        c->meta_ev_live[0] = c->meta_ev_live[1] = false;
        void *h = NULL, *d = NULL;
        gpuError_t err = gpuMallocHost(&h, 2 * need * sizeof(int32_t));
        if (err != gpuSuccess) {
            FG_GPU_IGNORE(gpuGetLastError());
            return fg_fail(FG_ERR_NOMEM, "%s: cannot allocate %zu bytes of pinned step metadata: %s",
                           FG_GPU_VENDOR, 2 * need * sizeof(int32_t), gpuGetErrorString(err));
        }
        err = gpuMalloc(&d, need * sizeof(int32_t));
        if (err != gpuSuccess) {
            FG_GPU_IGNORE(gpuGetLastError());
            FG_GPU_IGNORE(gpuFreeHost(h));
            return fg_fail(FG_ERR_NOMEM, "%s: cannot allocate %zu bytes of step metadata on device %d: %s",
                           FG_GPU_VENDOR, need * sizeof(int32_t), c->device, gpuGetErrorString(err));
        }
        c->h_meta = (int32_t *)h;
        c->d_meta = (int32_t *)d;
        c->meta_cap = need;
    }
    const size_t mm_bytes = fg_cuda_matmul_scratch_bytes(&m), samp_bytes = fg_cuda_sample_scratch_bytes(&m);
    FG_TRY(arena_grow(c, &c->mm, mm_bytes > samp_bytes ? mm_bytes : samp_bytes, "matmul"));
    FG_TRY(fg_cuda_matmul_reserve(c, &m));
    FG_TRY(arena_grow(c, &c->attn, fg_cuda_attn_scratch_bytes(&m), "attention"));
    c->lim = m;
    return FG_OK;
}

static uint32_t cuda_act_type(fg_backend *be, uint32_t wtype, int64_t n_rows) {
    return fg_cuda_act_type(fg_cuda_ctx(be), wtype, n_rows);
}

// ------------------------------------------------------------------------------ the step

static void drop_capture(fg_cuda *c);

// The smallest power of two >= n (n >= 1), at most cap (and at least n).
static int32_t round_up_pow2(int32_t n, int32_t cap) {
    int32_t p = 1;
    while (p < n && p < (1 << 30))
        p <<= 1;
    return FG_MAX(n, FG_MIN(p, cap));
}

static void pack(int32_t *base, size_t off, const int32_t *src, size_t n) {
    if (n)
        memcpy(base + off, src, n * sizeof(int32_t));
}

// Packs the step's arrays into the next staging half, copies them to the device in one
// asynchronous copy and points c->step at them; resets the arenas and the result word.
// It never blocks, except when the staging half it needs is still the source of a copy two
// steps back (a caller running two steps ahead of step_wait).
static fg_status cuda_step_begin(fg_backend *be, const fg_step *s) {
    fg_cuda *c = fg_cuda_ctx(be);
    CHECK_STICKY(c);
    // A step left open (an op failed and its caller gave up) is abandoned: its queued work is
    // harmless and everything below is reset; a capture in progress is dropped.
    drop_capture(c);
    c->in_step = false;
    if (c->n_pending >= FG_CUDA_MAX_PENDING)
        return fg_fail(FG_ERR_INVALID_ARG, "%s: step_begin with %d ended steps not yet waited (at most %d)",
                       FG_GPU_VENDOR, c->n_pending, FG_CUDA_MAX_PENDING - 1);
    const fg_backend_limits *L = &c->lim;
    if (s->n_tokens > L->max_tokens || s->n_seqs > L->max_seqs || s->max_pages > L->max_pages ||
        s->n_out > s->n_tokens)
        return fg_fail(FG_ERR_INVALID_ARG,
                       "%s: step of %d tokens, %d sequences, %d pages per sequence, %d outputs exceeds the "
                       "reserve (max_tokens %d, max_seqs %d, max_pages %d)",
                       FG_GPU_VENDOR, s->n_tokens, s->n_seqs, s->max_pages, s->n_out, L->max_tokens,
                       L->max_seqs, L->max_pages);
    int32_t max_n_kv = 0, max_seq_tokens = 0;
    for (int32_t i = 0; i < s->n_seqs; i++) {
        max_n_kv = FG_MAX(max_n_kv, s->seq_n_kv[i]);
        max_seq_tokens = FG_MAX(max_seq_tokens, s->seq_n_tokens[i]);
    }
    if (s->sample && s->n_sample_entries > L->max_sample_entries)
        return fg_fail(FG_ERR_INVALID_ARG, "%s: step has %d sample entries, the reserve says %d", FG_GPU_VENDOR,
                       s->n_sample_entries, L->max_sample_entries);
    if (max_n_kv > L->max_kv_len)
        return fg_fail(FG_ERR_INVALID_ARG, "%s: step has a sequence of %d KV tokens, the reserve says max_kv_len %d",
                       FG_GPU_VENDOR, max_n_kv, L->max_kv_len);
    // launch geometry may depend only on the shape (graphs replay it): the lengths are
    // rounded up to powers of two within the reserve
    const int32_t pt_stride = round_up_pow2(s->max_pages, L->max_pages);
    max_n_kv = round_up_pow2(max_n_kv, FG_MAX(L->max_kv_len, max_n_kv));
    max_seq_tokens = round_up_pow2(max_seq_tokens, s->n_tokens);
    const meta_layout l = meta_layout_of((size_t)s->n_tokens, (size_t)s->n_out, (size_t)s->n_seqs,
                                         (size_t)pt_stride, s->sample ? (size_t)s->n_out : 0,
                                         s->sample ? (size_t)s->n_sample_entries : 0);
    FG_ASSERT(l.total <= c->meta_cap); // the layout is monotonic in every count

    USE_DEVICE(c);
    // The half this step packs was the source of the copy two steps back: normally long done
    // (the event has completed and this returns at once).
    const int half = c->meta_half ^ 1;
    if (c->meta_ev_live[half])
        FG_GPU_CHECK(c, gpuEventSynchronize(c->meta_ev[half]));
    int32_t *h = c->h_meta + (size_t)half * c->meta_cap;
    pack(h, l.tokens, s->tokens, (size_t)s->n_tokens);
    pack(h, l.pos, s->pos, (size_t)s->n_tokens);
    pack(h, l.seq, s->seq, (size_t)s->n_tokens);
    pack(h, l.out_rows, s->out_rows, (size_t)s->n_out);
    pack(h, l.seq_n_kv, s->seq_n_kv, (size_t)s->n_seqs);
    pack(h, l.seq_first, s->seq_first, (size_t)s->n_seqs);
    pack(h, l.seq_n_tokens, s->seq_n_tokens, (size_t)s->n_seqs);
    // the page table with rows of the (rounded-up) stride: the extra entries are page 0, which
    // no kernel reads (a sequence reads pages 0..ceil(n_kv/page_size)-1 only)
    for (int32_t i = 0; i < s->n_seqs; i++) {
        int32_t *row = h + l.page_table + (size_t)i * (size_t)pt_stride;
        memcpy(row, s->page_table + (size_t)i * (size_t)s->max_pages, (size_t)s->max_pages * sizeof(int32_t));
        memset(row + s->max_pages, 0, (size_t)(pt_stride - s->max_pages) * sizeof(int32_t));
    }
    if (s->sample) { // the sampling rows and their entries (a few KB: no logits come back)
        memcpy(h + l.sample, s->sample, (size_t)s->n_out * sizeof(fg_sample_row));
        if (s->n_sample_entries > 0)
            memcpy(h + l.entries, s->sample_entries, (size_t)s->n_sample_entries * sizeof(fg_sample_entry));
    }
    if (l.total) {
        // d_meta is single: the stream orders this copy after the previous step's kernels.
        FG_GPU_CHECK(c, gpuMemcpyAsync(c->d_meta, h, l.total * sizeof(int32_t), gpuMemcpyHostToDevice, c->stream));
        FG_GPU_CHECK(c, gpuEventRecord(c->meta_ev[half], c->stream));
        c->meta_ev_live[half] = true;
    }
    FG_GPU_CHECK(c, gpuMemsetAsync(c->d_bad, 0xff, 4 * sizeof(int32_t), c->stream)); // key: none
    c->meta_half = half;

    fg_cuda_step *d = &c->step;
    d->n_tokens = s->n_tokens;
    d->n_seqs = s->n_seqs;
    d->max_pages = pt_stride;
    d->n_out = s->n_out;
    d->max_n_kv = max_n_kv;
    d->max_seq_tokens = max_seq_tokens;
    d->tokens = c->d_meta + l.tokens;
    d->pos = c->d_meta + l.pos;
    d->seq = c->d_meta + l.seq;
    d->out_rows = c->d_meta + l.out_rows;
    d->seq_n_kv = c->d_meta + l.seq_n_kv;
    d->seq_first = c->d_meta + l.seq_first;
    d->seq_n_tokens = c->d_meta + l.seq_n_tokens;
    d->page_table = c->d_meta + l.page_table;
    d->sample = s->sample ? (const fg_sample_row *)(c->d_meta + l.sample) : NULL;
    d->sample_entries = s->sample ? (const fg_sample_entry *)(c->d_meta + l.entries) : NULL;
    c->mm.used = c->attn.used = 0;
    c->step_comm = NULL;
    c->in_step = true;
    // Recorded steps: the ops enqueued from here to step_end are a function of the step's
    // shape and of what graph_id names (model, KV store, buffers), and the device addresses
    // above depend only on the counts. A known step replays its graph (the ops only return);
    // a new one is captured as it is enqueued. The metadata copy and the d_bad reset above
    // stay outside the graph.
    c->graph_mode = 0;
    if (c->graphs_on && s->graph_id != 0 && s->n_tokens <= FG_CUDA_GRAPH_MAX_TOKENS) {
        const int32_t shape[7] = {s->n_tokens, s->n_seqs,       s->n_out,        pt_stride,
                                  max_n_kv,    max_seq_tokens, s->sample != NULL};
        int hit = -1, victim = 0;
        for (int i = 0; i < FG_CUDA_GRAPHS; i++) {
            if (c->graphs[i].used && c->graphs[i].id == s->graph_id &&
                !memcmp(c->graphs[i].shape, shape, sizeof shape)) {
                hit = i;
                break;
            }
            if (!c->graphs[i].used || (c->graphs[victim].used && c->graphs[i].last_use < c->graphs[victim].last_use))
                victim = i;
        }
        if (hit >= 0) {
            c->graph_mode = 2;
            c->graph_cur = hit;
        } else {
            if (c->graphs[victim].used) {
                FG_GPU_IGNORE(gpuGraphExecDestroy(c->graphs[victim].exec));
                c->graphs[victim].used = false;
            }
            FG_GPU_CHECK(c, gpuStreamBeginCapture(c->stream, gpuStreamCaptureModeRelaxed));
            c->graph_mode = 1;
            c->graph_cur = victim;
            c->graphs[victim].id = s->graph_id;
            memcpy(c->graphs[victim].shape, shape, sizeof shape);
        }
        c->graphs[c->graph_cur].last_use = ++c->graph_clock;
    }
    if (c->prof)
        FG_TRY(fg_cuda_prof_step(c));
    return FG_OK;
}

static fg_status cuda_step_end(fg_backend *be) {
    fg_cuda *c = fg_cuda_ctx(be);
    CHECK_STICKY(c);
    if (!c->in_step)
        return fg_fail(FG_ERR_INVALID_ARG, "%s: step_end without step_begin", FG_GPU_VENDOR);
    c->in_step = false;
    if (c->graph_mode == 1) { // the step was captured: instantiate it, then run it
        gpuGraph_t g = NULL;
        c->graph_mode = 0;
        gpuError_t err = gpuStreamEndCapture(c->stream, &g);
        gpuGraphExec_t exec = NULL;
        if (err == gpuSuccess)
            err = gpuGraphInstantiate(&exec, g);
        if (g)
            FG_GPU_IGNORE(gpuGraphDestroy(g));
        if (err != gpuSuccess) {
            c->sticky = 1;
            return fg_fail(FG_ERR_DEVICE, "%s: recording the step as a graph failed: %s", FG_GPU_VENDOR,
                           gpuGetErrorString(err));
        }
        c->graphs[c->graph_cur].exec = exec;
        c->graphs[c->graph_cur].used = true;
        c->graph_captures++;
        FG_GPU_CHECK(c, gpuGraphLaunch(exec, c->stream));
        c->graph_launches++;
    } else if (c->graph_mode == 2) {
        c->graph_mode = 0;
        FG_GPU_CHECK(c, gpuGraphLaunch(c->graphs[c->graph_cur].exec, c->stream));
        c->graph_launches++;
    }
    const int slot = (c->pending_head + c->n_pending) % FG_CUDA_MAX_PENDING;
    FG_GPU_CHECK(c, gpuMemcpyAsync(c->h_bad + 4 * slot, c->d_bad, 4 * sizeof(int32_t), gpuMemcpyDeviceToHost,
                                   c->stream));
    FG_GPU_CHECK(c, gpuEventRecord(c->done_ev[slot], c->stream));
    c->pending_comm[slot] = c->step_comm;
    c->n_pending++;
    return FG_OK;
}

// Drops a step whose ops failed before it ended: nothing of it runs and nothing is recorded.
static void drop_capture(fg_cuda *c) {
    if (c->graph_mode == 1) {
        gpuGraph_t g = NULL;
        if (gpuStreamEndCapture(c->stream, &g) == gpuSuccess && g)
            FG_GPU_IGNORE(gpuGraphDestroy(g));
        FG_GPU_IGNORE(gpuGetLastError());
        c->graphs[c->graph_cur].used = false;
    }
    c->graph_mode = 0;
}

static void cuda_step_abort(fg_backend *be) {
    fg_cuda *c = fg_cuda_ctx(be);
    USE_DEVICE_VOID(c);
    drop_capture(c);
    c->in_step = false;
}

// A step with all-reduces: a peer that died or hangs leaves this rank's collective kernels
// waiting forever, so the wait polls the step's event and the communicator (NCCL's
// asynchronous errors, an abort asked for by a failed rank) and gives up after the
// communicator's timeout, aborting it (which makes the waiting kernels return). Sticky.
static fg_status wait_collective_step(fg_cuda *c, int slot) {
    fg_comm *comm = c->pending_comm[slot];
    c->pending_comm[slot] = NULL;
    const double t0 = fg_time_s();
    for (unsigned spin = 0;; spin++) {
        gpuError_t q = gpuEventQuery(c->done_ev[slot]);
        if (q == gpuSuccess)
            return FG_OK;
        if (q != gpuErrorNotReady) {
            c->sticky = 1;
            return fg_fail(FG_ERR_DEVICE, "%s: a step with all-reduces failed on device %d: %s", FG_GPU_VENDOR,
                           c->device, gpuGetErrorString(q));
        }
        fg_status st = fg_comm_poll(comm);
        if (st != FG_OK) {
            c->sticky = 1;
            return st;
        }
        if (fg_time_s() - t0 > comm->timeout_s) {
            fg_comm_abort(comm);
            (void)fg_comm_poll(comm); // aborts it on this (the owning) thread
            c->sticky = 1;
            return fg_fail(FG_ERR_DEVICE,
                           "%s: tensor-parallel rank %d of %d: the step did not finish within %.0f s on device %d "
                           "(a peer rank hung or died); the communicator was aborted",
                           FG_GPU_VENDOR, comm->rank, comm->size, comm->timeout_s, c->device);
        }
        if (spin >= 256) // a decode step takes milliseconds: spin a little, then nap
            usleep(20);
    }
}

// Waits for the oldest ended step (the only blocking call of a step) and reports the first
// non-finite value its check_finite calls saw.
static fg_status cuda_step_wait(fg_backend *be, fg_step_result *res) {
    fg_cuda *c = fg_cuda_ctx(be);
    CHECK_STICKY(c);
    if (c->n_pending == 0)
        return fg_fail(FG_ERR_INVALID_ARG, "%s: step_wait without an ended step", FG_GPU_VENDOR);
    USE_DEVICE(c);
    const int slot = c->pending_head;
    c->pending_head = (c->pending_head + 1) % FG_CUDA_MAX_PENDING;
    c->n_pending--;
    // An asynchronous fault (illegal address, trap) of any kernel of the step surfaces here.
    if (c->pending_comm[slot])
        FG_TRY(wait_collective_step(c, slot));
    else
        FG_GPU_CHECK(c, gpuEventSynchronize(c->done_ev[slot]));
    fg_cuda_prof_drain(c);
    const int32_t *w = c->h_bad + 4 * slot;
    uint64_t key;
    memcpy(&key, w, sizeof key);
    if (res) {
        if (key == FG_CUDA_BAD_NONE) {
            res->bad_row = -1;
            res->bad_col = -1;
            res->bad_value = 0.0f;
        } else {
            res->bad_row = (int64_t)(key >> 32);
            res->bad_col = (int64_t)(key & 0xffffffffu);
            memcpy(&res->bad_value, &w[2], sizeof(float));
        }
    }
    return FG_OK;
}

static fg_status cuda_download_async(fg_backend *be, const fg_tensor *src, size_t off, void *host, size_t n) {
    fg_cuda *c = fg_cuda_ctx(be);
    CHECK_STICKY(c);
    if (c->graph_mode == 2)
        return FG_OK; // the recorded step does it
    if (n == 0)
        return FG_OK;
    FG_GPU_CHECK(c, gpuMemcpyAsync(host, (const char *)src->data + off, n, gpuMemcpyDeviceToHost, c->stream));
    return FG_OK;
}

// ------------------------------------------------------------------------------ the ops table
// Thin adapters from the table's fg_backend * to the launchers' fg_cuda *; a sticky device
// error fails every op at once. The scratch arenas start empty at every op that uses them:
// the stream runs the ops one after the other, so an op's scratch is free again when the next
// op's kernels run (also outside steps, and in a captured graph, which keeps that order).

// An op's launch, timed by the op profiler when FORGE_CUDA_PROFILE is on (cuda_prof.cu); the
// arguments after the call name the op and its shape.
#define PROF_RETURN(c, call, ...)                                                  \
    do {                                                                           \
        const int pi_ = (c)->prof ? fg_cuda_prof_begin((c), __VA_ARGS__) : -1;    \
        const fg_status st_ = (call);                                              \
        fg_cuda_prof_end((c), pi_);                                                \
        return st_;                                                                \
    } while (0)
#define LL(x) ((long long)(x))
#define TN(t) fg_type_name((t)->type)

static fg_status op_get_rows(fg_backend *be, fg_tensor *dst, const fg_tensor *table) {
    fg_cuda *c = fg_cuda_ctx(be);
    CHECK_STICKY(c);
    if (c->graph_mode == 2)
        return FG_OK; // the recorded step does it
    PROF_RETURN(c, fg_cuda_get_rows(c, dst, table), "get_rows %s x%lld", TN(table), LL(dst->ne[1]));
}
static fg_status op_gather_out(fg_backend *be, fg_tensor *dst, const fg_tensor *src) {
    fg_cuda *c = fg_cuda_ctx(be);
    CHECK_STICKY(c);
    if (c->graph_mode == 2)
        return FG_OK; // the recorded step does it
    PROF_RETURN(c, fg_cuda_gather_out(c, dst, src), "gather_out x%lld", LL(dst->ne[1]));
}
static fg_status op_rmsnorm(fg_backend *be, fg_tensor *dst, const fg_tensor *x, const fg_tensor *w, float eps) {
    fg_cuda *c = fg_cuda_ctx(be);
    CHECK_STICKY(c);
    if (c->graph_mode == 2)
        return FG_OK; // the recorded step does it
    PROF_RETURN(c, fg_cuda_rmsnorm(c, dst, x, w, eps), "rmsnorm %lld x%lld", LL(x->ne[0]), LL(x->ne[1]));
}
static fg_status op_convert(fg_backend *be, fg_tensor *dst, const fg_tensor *x) {
    fg_cuda *c = fg_cuda_ctx(be);
    CHECK_STICKY(c);
    if (c->graph_mode == 2)
        return FG_OK; // the recorded step does it
    c->mm.used = 0;
    PROF_RETURN(c, fg_cuda_convert(c, dst, x), "convert %s %lld x%lld", TN(dst), LL(x->ne[0]), LL(x->ne[1]));
}
static fg_status op_matmul(fg_backend *be, fg_tensor *dst, const fg_tensor *w, const fg_tensor *x,
                           const fg_tensor *bias, bool accumulate) {
    fg_cuda *c = fg_cuda_ctx(be);
    CHECK_STICKY(c);
    if (c->graph_mode == 2)
        return FG_OK; // the recorded step does it
    c->mm.used = 0;
    PROF_RETURN(c, fg_cuda_matmul(c, dst, w, x, bias, accumulate), "matmul %s %lldx%lld x%lld", TN(w), LL(w->ne[1]),
                LL(w->ne[0]), LL(x->ne[1]));
}
static fg_status op_add(fg_backend *be, fg_tensor *dst, const fg_tensor *a, const fg_tensor *b) {
    fg_cuda *c = fg_cuda_ctx(be);
    CHECK_STICKY(c);
    if (c->graph_mode == 2)
        return FG_OK; // the recorded step does it
    PROF_RETURN(c, fg_cuda_add(c, dst, a, b), "add %lld x%lld", LL(a->ne[0]), LL(a->ne[1]));
}
static fg_status op_swiglu(fg_backend *be, fg_tensor *dst, const fg_tensor *gate, const fg_tensor *up) {
    fg_cuda *c = fg_cuda_ctx(be);
    CHECK_STICKY(c);
    if (c->graph_mode == 2)
        return FG_OK; // the recorded step does it
    PROF_RETURN(c, fg_cuda_swiglu(c, dst, gate, up), "swiglu %lld x%lld", LL(gate->ne[0]), LL(gate->ne[1]));
}
static fg_status op_rope(fg_backend *be, fg_tensor *x, const fg_rope_params *p) {
    fg_cuda *c = fg_cuda_ctx(be);
    CHECK_STICKY(c);
    if (c->graph_mode == 2)
        return FG_OK; // the recorded step does it
    PROF_RETURN(c, fg_cuda_rope(c, x, p), "rope %lld x%lld", LL(x->ne[0]), LL(x->ne[1]));
}
static fg_status op_kv_store(fg_backend *be, const fg_kv_view *kv, int32_t layer, const fg_tensor *k,
                             const fg_tensor *v) {
    fg_cuda *c = fg_cuda_ctx(be);
    CHECK_STICKY(c);
    if (c->graph_mode == 2)
        return FG_OK; // the recorded step does it
    PROF_RETURN(c, fg_cuda_kv_store(c, kv, layer, k, v), "kv_store %s x%lld", fg_type_name(kv->type), LL(k->ne[1]));
}
static fg_status op_attention(fg_backend *be, fg_tensor *dst, const fg_tensor *q, const fg_kv_view *kv,
                              const fg_attn_params *p) {
    fg_cuda *c = fg_cuda_ctx(be);
    CHECK_STICKY(c);
    if (c->graph_mode == 2)
        return FG_OK; // the recorded step does it
    c->attn.used = 0;
    PROF_RETURN(c, fg_cuda_attention(c, dst, q, kv, p), "attention %s kv<=%d x%lld", fg_type_name(kv->type),
                c->step.max_n_kv, LL(q->ne[1]));
}
static fg_status op_check_finite(fg_backend *be, const fg_tensor *x, int64_t row0) {
    fg_cuda *c = fg_cuda_ctx(be);
    CHECK_STICKY(c);
    if (c->graph_mode == 2)
        return FG_OK; // the recorded step does it
    PROF_RETURN(c, fg_cuda_check_finite(c, x, row0), "check_finite %lld x%lld", LL(x->ne[0]), LL(x->ne[1]));
}
static fg_status op_sample(fg_backend *be, fg_tensor *out, const fg_tensor *logits, int64_t row0) {
    fg_cuda *c = fg_cuda_ctx(be);
    CHECK_STICKY(c);
    if (c->graph_mode == 2)
        return FG_OK; // the recorded step does it
    PROF_RETURN(c, fg_cuda_sample(c, out, logits, row0), "sample %lld x%lld", LL(logits->ne[0]), LL(logits->ne[1]));
}
static fg_status op_add_rmsnorm(fg_backend *be, fg_tensor *x, fg_tensor *xn, const fg_tensor *a,
                                const fg_tensor *w, float eps) {
    fg_cuda *c = fg_cuda_ctx(be);
    CHECK_STICKY(c);
    if (c->graph_mode == 2)
        return FG_OK; // the recorded step does it
    PROF_RETURN(c, fg_cuda_add_rmsnorm(c, x, xn, a, w, eps), "add_rmsnorm %lld x%lld", LL(x->ne[0]), LL(x->ne[1]));
}
static fg_status op_rope_kv_store(fg_backend *be, fg_tensor *q, fg_tensor *k, const fg_tensor *v,
                                 const fg_rope_params *p, int32_t n_head_kv, const fg_kv_view *kv, int32_t layer) {
    fg_cuda *c = fg_cuda_ctx(be);
    CHECK_STICKY(c);
    if (c->graph_mode == 2)
        return FG_OK; // the recorded step does it
    PROF_RETURN(c, fg_cuda_rope_kv_store(c, q, k, v, p, n_head_kv, kv, layer), "rope_kv_store %s x%lld",
                fg_type_name(kv->type), LL(q->ne[1]));
}
static fg_status op_rope_kv_attention(fg_backend *be, fg_tensor *dst, fg_tensor *dq, fg_tensor *q, fg_tensor *k,
                                     const fg_tensor *v, const fg_rope_params *rp, int32_t n_head_kv,
                                     const fg_kv_view *kv, const fg_attn_params *ap) {
    fg_cuda *c = fg_cuda_ctx(be);
    CHECK_STICKY(c);
    if (c->graph_mode == 2)
        return FG_OK; // the recorded step does it
    c->attn.used = 0;
    PROF_RETURN(c, fg_cuda_rope_kv_attention(c, dst, dq, q, k, v, rp, n_head_kv, kv, ap),
                "rope_kv_attention %s kv<=%d x%lld", fg_type_name(kv->type), c->step.max_n_kv, LL(q->ne[1]));
}
static fg_status op_kv_copy_page(fg_backend *be, const fg_kv_view *kv, int32_t dst_page, int32_t src_page) {
    fg_cuda *c = fg_cuda_ctx(be);
    CHECK_STICKY(c);
    USE_DEVICE(c); // outside steps
    return fg_cuda_kv_copy_page(c, kv, dst_page, src_page);
}

// The all-reduce of tensor parallelism: the communicator enqueues it on this stream (NCCL),
// so it is captured and replayed with the step's kernels; step_wait watches the communicator.
static fg_status op_all_reduce(fg_backend *be, fg_comm *comm, fg_tensor *x) {
    fg_cuda *c = fg_cuda_ctx(be);
    CHECK_STICKY(c);
    c->step_comm = comm;
    if (c->graph_mode == 2)
        return FG_OK; // the recorded step does it
    return comm->ops->all_reduce_sum(comm, be, x);
}

// embedding models (issue 14)
static fg_status op_layernorm(fg_backend *be, fg_tensor *dst, const fg_tensor *x, const fg_tensor *w,
                              const fg_tensor *b, float eps) {
    fg_cuda *c = fg_cuda_ctx(be);
    CHECK_STICKY(c);
    if (c->graph_mode == 2)
        return FG_OK; // the recorded step does it
    PROF_RETURN(c, fg_cuda_layernorm(c, dst, x, w, b, eps), "layernorm %lld x%lld", LL(x->ne[0]), LL(x->ne[1]));
}
static fg_status op_gelu(fg_backend *be, fg_tensor *dst, const fg_tensor *x, fg_gelu_mode mode) {
    fg_cuda *c = fg_cuda_ctx(be);
    CHECK_STICKY(c);
    if (c->graph_mode == 2)
        return FG_OK; // the recorded step does it
    PROF_RETURN(c, fg_cuda_gelu(c, dst, x, mode), "gelu %lld x%lld", LL(x->ne[0]), LL(x->ne[1]));
}
static fg_status op_add_rows(fg_backend *be, fg_tensor *dst, const fg_tensor *table, fg_rows_index idx,
                             int32_t row) {
    fg_cuda *c = fg_cuda_ctx(be);
    CHECK_STICKY(c);
    if (c->graph_mode == 2)
        return FG_OK; // the recorded step does it
    PROF_RETURN(c, fg_cuda_add_rows(c, dst, table, idx, row), "add_rows %lld x%lld", LL(dst->ne[0]), LL(dst->ne[1]));
}
static fg_status op_pool(fg_backend *be, fg_tensor *dst, const fg_tensor *x, fg_pool_mode mode, bool normalize) {
    fg_cuda *c = fg_cuda_ctx(be);
    CHECK_STICKY(c);
    if (c->graph_mode == 2)
        return FG_OK; // the recorded step does it
    PROF_RETURN(c, fg_cuda_pool(c, dst, x, mode, normalize), "pool %lld x%lld", LL(x->ne[0]), LL(x->ne[1]));
}

// Median of 7 device-to-device copies of `bytes` (after a warm-up), timed with events; bytes
// read + written per second. Benchmarks only: the two buffers are allocated here and freed.
static fg_status cuda_copy_bandwidth(fg_backend *be, size_t bytes, double *gb_per_s) {
    fg_cuda *c = fg_cuda_ctx(be);
    CHECK_STICKY(c);
    USE_DEVICE(c);
    void *a = NULL, *b = NULL;
    gpuEvent_t e0 = NULL, e1 = NULL;
    float ms[7];
    fg_status st = FG_OK;
    if (gpuMalloc(&a, bytes) != gpuSuccess || gpuMalloc(&b, bytes) != gpuSuccess) {
        FG_GPU_IGNORE(gpuGetLastError());
        st = fg_fail(FG_ERR_NOMEM, "%s: copy bandwidth: cannot allocate 2 x %zu bytes", FG_GPU_VENDOR, bytes);
        goto out;
    }
    if (gpuEventCreate(&e0) != gpuSuccess || gpuEventCreate(&e1) != gpuSuccess ||
        gpuMemsetAsync(a, 1, bytes, c->stream) != gpuSuccess || gpuMemsetAsync(b, 2, bytes, c->stream) != gpuSuccess ||
        gpuMemcpyAsync(b, a, bytes, gpuMemcpyDeviceToDevice, c->stream) != gpuSuccess) {
        st = fg_fail(FG_ERR_DEVICE, "%s: copy bandwidth: %s", FG_GPU_VENDOR, gpuGetErrorString(gpuGetLastError()));
        goto out;
    }
    for (int i = 0; i < 7 && st == FG_OK; i++) {
        if (gpuEventRecord(e0, c->stream) != gpuSuccess ||
            gpuMemcpyAsync(i % 2 ? a : b, i % 2 ? b : a, bytes, gpuMemcpyDeviceToDevice, c->stream) != gpuSuccess ||
            gpuEventRecord(e1, c->stream) != gpuSuccess || gpuEventSynchronize(e1) != gpuSuccess ||
            gpuEventElapsedTime(&ms[i], e0, e1) != gpuSuccess)
            st = fg_fail(FG_ERR_DEVICE, "%s: copy bandwidth: %s", FG_GPU_VENDOR, gpuGetErrorString(gpuGetLastError()));
    }
    if (st == FG_OK) {
        for (int i = 1; i < 7; i++) // insertion sort: the median of 7
            for (int j = i; j > 0 && ms[j] < ms[j - 1]; j--) {
                float t = ms[j];
                ms[j] = ms[j - 1];
                ms[j - 1] = t;
            }
        *gb_per_s = 2.0 * (double)bytes / ((double)ms[3] * 1e-3) / 1e9;
    }
out:
    if (e0)
        FG_GPU_IGNORE(gpuEventDestroy(e0));
    if (e1)
        FG_GPU_IGNORE(gpuEventDestroy(e1));
    if (a)
        FG_GPU_IGNORE(gpuFree(a));
    if (b)
        FG_GPU_IGNORE(gpuFree(b));
    return st;
}

// Filled field by field so that a new interface member defaults to NULL.
static fg_backend_ops make_cuda_ops(void) {
    fg_backend_ops o;
    memset(&o, 0, sizeof o);
    o.name = "cuda";
    o.async_steps = true;
    o.destroy = cuda_destroy;
    o.describe = cuda_describe;
    o.mem_info = cuda_mem_info;
    o.buf_alloc = cuda_buf_alloc;
    o.buf_free = cuda_buf_free;
    o.buf_base = cuda_buf_base;
    o.buf_size = cuda_buf_size;
    o.host_alloc = cuda_host_alloc;
    o.host_free = cuda_host_free;
    o.upload = cuda_upload;
    o.download = cuda_download;
    o.sync = cuda_sync;
    o.supports = cuda_supports;
    o.weight_size = cuda_weight_size;
    o.weight_upload = cuda_weight_upload;
    o.kv_alloc = cuda_kv_alloc;
    o.reserve = cuda_reserve;
    o.act_type = cuda_act_type;
    o.step_begin = cuda_step_begin;
    o.step_end = cuda_step_end;
    o.step_wait = cuda_step_wait;
    o.step_abort = cuda_step_abort;
    o.get_rows = op_get_rows;
    o.gather_out = op_gather_out;
    o.rmsnorm = op_rmsnorm;
    o.convert = op_convert;
    o.matmul = op_matmul;
    o.add = op_add;
    o.swiglu = op_swiglu;
    o.rope = op_rope;
    o.kv_store = op_kv_store;
    o.attention = op_attention;
    o.check_finite = op_check_finite;
    o.sample = op_sample;
    o.download_async = cuda_download_async;
    o.add_rmsnorm = op_add_rmsnorm;
    o.rope_kv_store = op_rope_kv_store;
    o.rope_kv_attention = op_rope_kv_attention;
    o.kv_copy_page = op_kv_copy_page;
    o.copy_bandwidth = cuda_copy_bandwidth;
    o.all_reduce = op_all_reduce;
    o.layernorm = op_layernorm; // embedding models (issue 14)
    o.gelu = op_gelu;
    o.add_rows = op_add_rows;
    o.pool = op_pool;
    return o;
}
static const fg_backend_ops k_cuda_ops = make_cuda_ops();

// ------------------------------------------------------------------------------ create

static fg_status init_device(fg_cuda *c) {
    gpuDeviceProp prop;
    memset(&prop, 0, sizeof prop);
    FG_GPU_CHECK(c, gpuSetDevice(c->device));
    FG_GPU_CHECK(c, gpuGetDeviceProperties(&prop, c->device));
    snprintf(c->name, sizeof c->name, "%s", prop.name);
    c->warp = prop.warpSize;
    c->n_sm = prop.multiProcessorCount;
    c->smem_optin = (size_t)FG_GPU_SMEM_OPTIN(prop);
    c->cc_major = prop.major;
    c->cc_minor = prop.minor;
    c->mem_total = (uint64_t)prop.totalGlobalMem;
    if (c->warp != 32 && c->warp != 64) {
        c->sticky = 1;
        return fg_fail(FG_ERR_DEVICE, "%s: device %d (%s) reports a warp width of %d (expected 32 or 64)",
                       FG_GPU_VENDOR, c->device, c->name, c->warp);
    }
    char arch[64];
    FG_GPU_ARCH_FMT(arch, sizeof arch, prop);
    snprintf(c->desc, sizeof c->desc, "%s: %.200s (device %d, %.32s, %d %s, %.1f GiB)", FG_GPU_VENDOR, c->name,
             c->device, arch, c->n_sm, FG_GPU_SM_WORD, (double)c->mem_total / (1024.0 * 1024.0 * 1024.0));

    FG_GPU_CHECK(c, gpuStreamCreateWithFlags(&c->stream, gpuStreamNonBlocking));
    for (int i = 0; i < 2; i++)
        FG_GPU_CHECK(c, gpuEventCreateWithFlags(&c->meta_ev[i], gpuEventDisableTiming));
    for (int i = 0; i < FG_CUDA_MAX_PENDING; i++)
        FG_GPU_CHECK(c, gpuEventCreateWithFlags(&c->done_ev[i], gpuEventDisableTiming));
    void *p = NULL;
    FG_GPU_CHECK(c, gpuMalloc(&p, 4 * sizeof(int32_t)));
    c->d_bad = (int32_t *)p;
    FG_GPU_CHECK(c, gpuMallocHost(&p, FG_CUDA_MAX_PENDING * 4 * sizeof(int32_t)));
    c->h_bad = (int32_t *)p;
    FG_GPU_CHECK(c, gpuMemsetAsync(c->d_bad, 0xff, 4 * sizeof(int32_t), c->stream)); // key: none
    FG_GPU_CHECK(c, gpuStreamSynchronize(c->stream));
    c->meta_half = 1; // the first step packs half 0
    FG_TRY(fg_cuda_matmul_init(c));
    const char *gv = getenv("FORGE_CUDA_GRAPHS");
    c->graphs_on = !(gv && !strcmp(gv, "0"));
    const char *pv = getenv("FORGE_CUDA_PDL");
#if defined(__HIPCC__)
    c->pdl = false;
    (void)pv;
#else
    c->pdl = c->cc_major >= 9 && !(pv && !strcmp(pv, "0"));
#endif
    const char *ad = getenv("FORGE_CUDA_ATTN_DEC");
    c->attn_dec = !(ad && !strcmp(ad, "0"));
    const char *dl = getenv("FORGE_CUDA_DEC_L_MIN");
    c->dec_l_min = dl ? atoi(dl) : 0;
    const char *dh = getenv("FORGE_CUDA_DEC_HSPLIT"); // blocks a kv head's q heads are split over
    c->dec_hsplit = dh && atoi(dh) >= 1 ? atoi(dh) : 0; // (0: DEC_HSPLIT)
    const char *dp = getenv("FORGE_CUDA_DEC_PASSES"); // 2 (default) or 4
    c->dec_passes = dp && !strcmp(dp, "4") ? 4 : 2;
    const char *dr = getenv("FORGE_CUDA_DEC_ROPE");
    c->dec_rope = !(dr && !strcmp(dr, "0"));
    const char *nwe = getenv("FORGE_CUDA_NORM_W_EARLY");
    c->norm_w_late = nwe && !strcmp(nwe, "0"); // (H100, 8B Q4_K tg128: early +1.4%)
    const char *dqe = getenv("FORGE_CUDA_DEC_QUANT");
    c->dec_quant = dqe && (!strcmp(dqe, "0") || !strcmp(dqe, "2")) ? atoi(dqe) : 1;
    const char *ss = getenv("FORGE_CUDA_SAMPLE_SLICE"); // logits a block of the split sample pass
    c->sample_slice = ss ? atoi(ss) : 0;                // (0: SAMP_SLICE; below 0: no split)
    FG_TRY(fg_cuda_attn_init(c));
    FG_TRY(fg_cuda_prof_init(c));
    return FG_OK;
}

extern "C" fg_status fg_backend_cuda_create(const fg_backend_opts *opts, fg_backend **out) {
    int n = 0;
    gpuError_t err = gpuGetDeviceCount(&n);
    if (err != gpuSuccess) {
        FG_GPU_IGNORE(gpuGetLastError());
        if (err == gpuErrorNoDevice)
            return fg_fail(FG_ERR_DEVICE, "%s: no %s device found (%s)", FG_GPU_VENDOR, FG_GPU_VENDOR,
                           gpuGetErrorString(err));
        if (err == gpuErrorInsufficientDriver)
            return fg_fail(FG_ERR_DEVICE, "%s: no usable driver: %s (no GPU driver loaded, or one older than this runtime)",
                           FG_GPU_VENDOR, gpuGetErrorString(err));
        return fg_fail(FG_ERR_DEVICE, "%s: cannot count devices: %s", FG_GPU_VENDOR, gpuGetErrorString(err));
    }
    if (n == 0)
        return fg_fail(FG_ERR_DEVICE, "%s: no %s device found (device count is 0)", FG_GPU_VENDOR, FG_GPU_VENDOR);
    const int dev = opts ? opts->device : 0;
    if (dev < 0 || dev >= n)
        return fg_fail(FG_ERR_INVALID_ARG, "%s: device %d requested but %d device(s) present (valid: 0..%d)",
                       FG_GPU_VENDOR, dev, n, n - 1);
    fg_cuda *c = (fg_cuda *)calloc(1, sizeof *c);
    fg_backend *be = (fg_backend *)calloc(1, sizeof *be);
    if (!c || !be) {
        free(c);
        free(be);
        return fg_fail(FG_ERR_NOMEM, "%s: out of host memory", FG_GPU_VENDOR);
    }
    c->device = dev;
    be->ops = &k_cuda_ops;
    be->ctx = c;
    fg_status st = init_device(c);
    if (st != FG_OK) {
        fg_error_prefix("cannot initialise device %d", dev);
        cuda_destroy(be);
        return st;
    }
    *out = be;
    return FG_OK;
}
