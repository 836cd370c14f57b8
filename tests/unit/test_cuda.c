// test_cuda.c - the CUDA backend on a real GPU, through its ops table: lifecycle (describe,
// mem_info, bad device index), buffers and checked copies, pinned host memory, out of memory
// (not sticky), weight_size and kv_alloc, the step (reserve, begin, download_async, end, wait,
// its errors, the non-finite report of check_finite) and the row-wise ops of cuda_ops.cu
// against double references (element-wise 1e-6 abs + 1e-5 rel, norms NMSE 1e-6, copies
// bit-exact; outputs poisoned first, padding between strided rows checked untouched).
// Without a GPU every test SKIPS LOUDLY ("SKIP (no GPU): ..."); in a build without CUDA it
// checks that "cuda" is refused with a clear message. The op-by-op comparison against the CPU
// backend is test_backend_ops; this file is the GPU backend's own first line.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "backend/backend.h"
#include "base/status.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef FG_HAVE_CUDA
static fg_backend *open_or_skip(void) {
    fg_backend *be = NULL;
    fg_backend_opts o;
    memset(&o, 0, sizeof o);
    fg_status st = fg_backend_create("cuda", &o, &be);
    if (st == FG_ERR_DEVICE) {
        fprintf(stderr, "SKIP (no GPU): %s\n", fg_last_error());
        assert_true(strstr(fg_last_error(), "cuda:") || strstr(fg_last_error(), "hip:"));
        skip();
    }
    if (st != FG_OK)
        fprintf(stderr, "cuda backend: %s\n", fg_last_error());
    assert_int_equal(st, FG_OK);
    assert_string_equal(fg_backend_name(be), "cuda");
    return be;
}

static uint32_t g_seed;

static float frand(void) { // [-1, 1)
    g_seed = g_seed * 1103515245u + 12345u;
    return (float)(g_seed >> 8) / 8388608.0f - 1.0f;
}

// A device buffer of n floats with a contiguous 1-D view over all of it.
typedef struct dbuf {
    fg_buffer *buf;
    fg_tensor t;
    size_t n;
} dbuf;

static dbuf dalloc(fg_backend *be, size_t n) {
    dbuf d;
    assert_int_equal(be->ops->buf_alloc(be, n * 4, &d.buf), FG_OK);
    int64_t ne[1] = {(int64_t)n};
    d.t = fg_tensor_view(d.buf, be->ops->buf_base(d.buf), 0, FG_TYPE_F32, 1, ne);
    d.n = n;
    return d;
}

static void dput(fg_backend *be, dbuf *d, const float *src) {
    assert_int_equal(be->ops->upload(be, &d->t, 0, src, d->n * 4), FG_OK);
}
static void dget(fg_backend *be, dbuf *d, float *dst) {
    assert_int_equal(be->ops->download(be, &d->t, 0, dst, d->n * 4), FG_OK);
}
static void dfree(fg_backend *be, dbuf *d) { be->ops->buf_free(be, d->buf); }

// A 3-D F32 view [ne2][ne1][ne0] of d at float offset off with row strides s1, s2 (floats).
static fg_tensor view3(dbuf *d, size_t off, int64_t ne0, int64_t ne1, int64_t ne2, size_t s1, size_t s2) {
    fg_tensor t = d->t;
    t.data = (char *)d->t.data + off * 4;
    t.ne[0] = ne0;
    t.ne[1] = ne1;
    t.ne[2] = ne2;
    t.ne[3] = 1;
    t.nb[0] = 4;
    t.nb[1] = s1 * 4;
    t.nb[2] = s2 * 4;
    t.nb[3] = s2 * 4 * (size_t)ne2;
    return t;
}
static fg_tensor view2(dbuf *d, size_t off, int64_t cols, int64_t rows, size_t stride) {
    return view3(d, off, cols, rows, 1, stride, stride * (size_t)rows);
}

static const fg_backend_limits k_lim = {64, 4, 8, 1 << 16, 32, 256, 1 << 14, 0, 0};

// One sequence of n tokens at positions pos (the backend itself does not check them).
typedef struct step_arrays {
    int32_t tokens[64], pos[64], seq[64], out_rows[64];
    int32_t seq_n_kv[1], seq_first[1], seq_n_tokens[1], page_table[8];
    fg_step s;
} step_arrays;

static void make_step(step_arrays *a, int32_t n, const int32_t *pos, int32_t n_out, const int32_t *out_rows) {
    memset(a, 0, sizeof *a);
    for (int32_t i = 0; i < n; i++) {
        a->tokens[i] = i;
        a->pos[i] = pos ? pos[i] : i;
        a->seq[i] = 0;
    }
    for (int32_t i = 0; i < n_out; i++)
        a->out_rows[i] = out_rows[i];
    for (int32_t i = 0; i < 8; i++)
        a->page_table[i] = i;
    a->seq_n_kv[0] = n;
    a->seq_first[0] = 0;
    a->seq_n_tokens[0] = n;
    fg_step s = {n, a->tokens, a->pos, a->seq, 1, a->seq_n_kv, a->seq_first, a->seq_n_tokens,
                 8, a->page_table, n_out, a->out_rows, 0, NULL, 0, NULL};
    a->s = s;
}

static void run_step_end(fg_backend *be, fg_step_result *res) {
    assert_int_equal(be->ops->step_end(be), FG_OK);
    assert_int_equal(be->ops->step_wait(be, res), FG_OK);
}

static int n_bad;
static void expect_close(const char *what, size_t i, float got, double ref) {
    if (!(fabs((double)got - ref) <= 1e-6 + 1e-5 * fabs(ref))) {
        if (n_bad++ < 10)
            fprintf(stderr, "%s[%zu]: got %.9g, expected %.9g\n", what, i, (double)got, ref);
    }
}
static void expect_nmse(const char *what, const float *got, const double *ref, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        num += ((double)got[i] - ref[i]) * ((double)got[i] - ref[i]);
        den += ref[i] * ref[i];
    }
    double e = den > 0 ? num / den : num;
    if (!(e <= 1e-6)) {
        n_bad++;
        fprintf(stderr, "%s: NMSE %.3g > 1e-6\n", what, e);
    }
}
static void expect_bits(const char *what, size_t i, float got, float ref) {
    if (memcmp(&got, &ref, 4) != 0 && n_bad++ < 10)
        fprintf(stderr, "%s[%zu]: got %.9g, expected %.9g (bit-exact)\n", what, i, (double)got, (double)ref);
}

static float *poisoned(size_t n) {
    float *p = malloc(n * 4);
    memset(p, 0xff, n * 4); // NaN (all bits set)
    return p;
}
static float poison_value(void) {
    float f;
    memset(&f, 0xff, sizeof f);
    return f;
}

// ---------------------------------------------------------------- lifecycle, buffers

static void test_describe_and_mem_info(void **state) {
    (void)state;
    fg_backend *be = open_or_skip();
    const char *d = fg_backend_describe(be);
    printf("%s\n", d);
    assert_true(strncmp(d, "cuda: ", 6) == 0 || strncmp(d, "hip: ", 5) == 0);
    assert_non_null(strstr(d, "(device 0, "));
    assert_non_null(strstr(d, " GiB)"));
    uint64_t fr = 0, tot = 0;
    assert_int_equal(fg_backend_mem_info(be, &fr, &tot), FG_OK);
    assert_true(tot > 0 && fr > 0 && fr <= tot);
    fg_backend_destroy(be);
}

static void test_buffer_round_trip(void **state) {
    (void)state;
    fg_backend *be = open_or_skip();
    const int64_t n = 1000003; // odd size
    fg_buffer *buf = NULL;
    assert_int_equal(be->ops->buf_alloc(be, (size_t)n * 4, &buf), FG_OK);
    assert_int_equal(be->ops->buf_size(buf), (size_t)n * 4);
    int64_t ne[1] = {n};
    fg_tensor t = fg_tensor_view(buf, be->ops->buf_base(buf), 0, FG_TYPE_F32, 1, ne);
    float *src = malloc((size_t)n * 4), *dst = malloc((size_t)n * 4);
    g_seed = 12345;
    printf("seed %u\n", g_seed);
    for (int64_t i = 0; i < n; i++)
        src[i] = frand();
    assert_int_equal(be->ops->upload(be, &t, 0, src, (size_t)n * 4), FG_OK);
    memset(dst, 0, (size_t)n * 4);
    assert_int_equal(be->ops->download(be, &t, 0, dst, (size_t)n * 4), FG_OK);
    assert_memory_equal(src, dst, (size_t)n * 4);
    // partial copy at an offset
    assert_int_equal(be->ops->download(be, &t, 4 * 17, dst, 4 * 5), FG_OK);
    assert_memory_equal(src + 17, dst, 4 * 5);
    // out of range is refused, not a device fault
    assert_int_equal(be->ops->download(be, &t, (size_t)n * 4 - 4, dst, 8), FG_ERR_INVALID_ARG);
    assert_non_null(strstr(fg_last_error(), "exceeds the tensor's"));
    assert_int_equal(be->ops->upload(be, &t, (size_t)n * 4 + 4, src, 0), FG_ERR_INVALID_ARG);
    assert_int_equal(be->ops->sync(be), FG_OK);
    be->ops->buf_free(be, buf);
    be->ops->buf_free(be, NULL);
    free(src);
    free(dst);
    fg_backend_destroy(be);
}

static void test_huge_alloc_is_nomem(void **state) {
    (void)state;
    fg_backend *be = open_or_skip();
    fg_buffer *buf = NULL;
    assert_int_equal(be->ops->buf_alloc(be, (size_t)1 << 50, &buf), FG_ERR_NOMEM);
    printf("%s\n", fg_last_error());
    assert_non_null(strstr(fg_last_error(), "cannot allocate"));
    assert_non_null(strstr(fg_last_error(), "bytes free"));
    // the failure is not sticky
    assert_int_equal(be->ops->sync(be), FG_OK);
    assert_int_equal(be->ops->buf_alloc(be, 4096, &buf), FG_OK);
    be->ops->buf_free(be, buf);
    fg_backend_destroy(be);
}

static void test_host_alloc(void **state) {
    (void)state;
    fg_backend *be = open_or_skip();
    void *p = NULL;
    assert_int_equal(be->ops->host_alloc(be, 1 << 20, &p), FG_OK);
    assert_non_null(p);
    memset(p, 0x5a, 1 << 20); // writable host memory
    be->ops->host_free(be, p);
    be->ops->host_free(be, NULL);
    fg_backend_destroy(be);
}

static void test_bad_device_index(void **state) {
    (void)state;
    fg_backend *be = open_or_skip();
    fg_backend_destroy(be);
    fg_backend_opts o;
    memset(&o, 0, sizeof o);
    o.device = 4096;
    assert_int_equal(fg_backend_create("cuda", &o, &be), FG_ERR_INVALID_ARG);
    printf("%s\n", fg_last_error());
    assert_non_null(strstr(fg_last_error(), "device 4096 requested"));
    o.device = -1;
    assert_int_equal(fg_backend_create("cuda", &o, &be), FG_ERR_INVALID_ARG);
}

static void test_weight_size_and_kv_alloc(void **state) {
    (void)state;
    fg_backend *be = open_or_skip();
    assert_int_equal(be->ops->weight_size(be, FG_TYPE_Q4_0, 4096, 10), (size_t)(4096 / 32) * 18 * 10);
    assert_int_equal(be->ops->weight_size(be, FG_TYPE_F32, 7, 3), (size_t)84);
    assert_int_equal(be->ops->weight_size(be, FG_TYPE_Q4_0, 33, 1), (size_t)0); // not whole blocks
    // weight_upload: whole tensor
    int64_t ne[2] = {64, 3};
    fg_buffer *wb = NULL;
    assert_int_equal(be->ops->buf_alloc(be, be->ops->weight_size(be, FG_TYPE_F32, 64, 3), &wb), FG_OK);
    fg_tensor w = fg_tensor_view(wb, be->ops->buf_base(wb), 0, FG_TYPE_F32, 2, ne);
    float src[192], back[192];
    for (int i = 0; i < 192; i++)
        src[i] = (float)i * 0.25f;
    assert_int_equal(be->ops->weight_upload(be, &w, src), FG_OK);
    assert_int_equal(be->ops->download(be, &w, 0, back, sizeof back), FG_OK);
    assert_memory_equal(src, back, sizeof back);
    be->ops->buf_free(be, wb);

    fg_kv_view kv;
    memset(&kv, 0, sizeof kv);
    kv.n_layer = 3;
    kv.n_pages = 5;
    kv.page_size = 16;
    kv.n_head_kv = 2;
    kv.head_dim = 64;
    kv.type = FG_TYPE_F16;
    fg_buffer *kb = NULL;
    assert_int_equal(be->ops->kv_alloc(be, &kv, &kb), FG_OK);
    const size_t bytes = (size_t)3 * 5 * 16 * 128 * 2;
    assert_int_equal(kv.k.ne[0], 128);
    assert_int_equal(kv.k.ne[1], 16);
    assert_int_equal(kv.k.ne[2], 5);
    assert_int_equal(kv.k.ne[3], 3);
    assert_int_equal(kv.k.nb[0], 2);
    assert_int_equal(fg_tensor_nbytes(&kv.k), bytes);
    assert_int_equal(fg_tensor_nbytes(&kv.v), bytes);
    assert_true((char *)kv.v.data >= (char *)kv.k.data + bytes);
    assert_true(be->ops->buf_size(kb) >= (size_t)((char *)kv.v.data - (char *)kv.k.data) + bytes);
    unsigned char *z = malloc(bytes);
    memset(z, 0xee, bytes);
    assert_int_equal(be->ops->download(be, &kv.v, 0, z, bytes), FG_OK);
    for (size_t i = 0; i < bytes; i++)
        if (z[i] != 0)
            fail_msg("kv pool byte %zu is %d, expected zeroed pages", i, z[i]);
    free(z);
    be->ops->buf_free(be, kb);
    kv.type = FG_TYPE_Q4_0;
    assert_int_equal(be->ops->kv_alloc(be, &kv, &kb), FG_ERR_UNSUPPORTED);
    fg_backend_destroy(be);
}

// ---------------------------------------------------------------- the step

static void test_step_download_async(void **state) {
    (void)state;
    fg_backend *be = open_or_skip();
    assert_int_equal(be->ops->reserve(be, &k_lim), FG_OK);
    dbuf d = dalloc(be, 1000);
    float src[1000];
    for (int i = 0; i < 1000; i++)
        src[i] = (float)i;
    dput(be, &d, src);
    float *host = NULL;
    assert_int_equal(be->ops->host_alloc(be, 1000 * 4, (void **)&host), FG_OK);
    memset(host, 0, 1000 * 4);
    step_arrays a;
    for (int k = 0; k < 3; k++) { // a few steps: the staging halves alternate
        make_step(&a, 3 + k, NULL, 1, (const int32_t[]){2});
        assert_int_equal(be->ops->step_begin(be, &a.s), FG_OK);
        assert_int_equal(be->ops->download_async(be, &d.t, 4 * 10, host, 4 * (size_t)(100 + k)), FG_OK);
        fg_step_result res;
        memset(&res, 0x7f, sizeof res);
        run_step_end(be, &res);
        assert_int_equal(res.bad_row, -1);
        assert_int_equal(res.bad_col, -1);
        assert_memory_equal(host, src + 10, 4 * (size_t)(100 + k));
    }
    // two steps ended before one wait: results come back in order
    make_step(&a, 2, NULL, 0, NULL);
    assert_int_equal(be->ops->step_begin(be, &a.s), FG_OK);
    assert_int_equal(be->ops->step_end(be), FG_OK);
    assert_int_equal(be->ops->step_begin(be, &a.s), FG_OK);
    assert_int_equal(be->ops->step_end(be), FG_OK);
    fg_step_result res;
    assert_int_equal(be->ops->step_wait(be, &res), FG_OK);
    assert_int_equal(be->ops->step_wait(be, &res), FG_OK);
    // errors: wait without a step, a step bigger than the reserve
    assert_int_equal(be->ops->step_wait(be, &res), FG_ERR_INVALID_ARG);
    make_step(&a, 64, NULL, 0, NULL);
    a.s.n_tokens = 65;
    assert_int_equal(be->ops->step_begin(be, &a.s), FG_ERR_INVALID_ARG);
    printf("%s\n", fg_last_error());
    assert_non_null(strstr(fg_last_error(), "exceeds the reserve"));
    assert_int_equal(be->ops->sync(be), FG_OK); // not sticky
    be->ops->host_free(be, host);
    dfree(be, &d);
    fg_backend_destroy(be);
}

static void test_check_finite(void **state) {
    (void)state;
    fg_backend *be = open_or_skip();
    assert_int_equal(be->ops->reserve(be, &k_lim), FG_OK);
    const int rows = 9, cols = 1000;
    dbuf x = dalloc(be, (size_t)rows * 1024), y = dalloc(be, (size_t)rows * cols);
    float *hx = calloc((size_t)rows * 1024, 4), *hy = calloc((size_t)rows * cols, 4);
    hx[3 * 1024 + 700] = INFINITY; // x row 3: found as row 10 + 3 = 13
    hx[3 * 1024 + 5] = NAN;        // lower column of the same row wins
    hx[7 * 1024 + 0] = -INFINITY;
    hx[3 * 1024 + 1010] = NAN;     // in the padding between strided rows: never looked at
    dput(be, &x, hx);
    dput(be, &y, hy);
    fg_tensor vx = view2(&x, 0, cols, rows, 1024), vy = view2(&y, 0, cols, rows, cols);
    step_arrays a;
    make_step(&a, rows, NULL, 0, NULL);
    fg_step_result res;

    assert_int_equal(be->ops->step_begin(be, &a.s), FG_OK);
    assert_int_equal(be->ops->check_finite(be, &vy, 0), FG_OK); // all finite
    run_step_end(be, &res);
    assert_int_equal(res.bad_row, -1);

    assert_int_equal(be->ops->step_begin(be, &a.s), FG_OK);
    assert_int_equal(be->ops->check_finite(be, &vy, 0), FG_OK);
    assert_int_equal(be->ops->check_finite(be, &vx, 10), FG_OK);
    run_step_end(be, &res);
    assert_int_equal(res.bad_row, 13);
    assert_int_equal(res.bad_col, 5);
    assert_true(isnan(res.bad_value));

    // a later call with a lower row wins, with its own value
    hy[2 * cols + 999] = -INFINITY;
    dput(be, &y, hy);
    assert_int_equal(be->ops->step_begin(be, &a.s), FG_OK);
    assert_int_equal(be->ops->check_finite(be, &vx, 10), FG_OK);
    assert_int_equal(be->ops->check_finite(be, &vy, 0), FG_OK);
    run_step_end(be, &res);
    assert_int_equal(res.bad_row, 2);
    assert_int_equal(res.bad_col, 999);
    assert_true(isinf(res.bad_value) && res.bad_value < 0);

    // the next step starts clean
    assert_int_equal(be->ops->step_begin(be, &a.s), FG_OK);
    run_step_end(be, &res);
    assert_int_equal(res.bad_row, -1);
    free(hx);
    free(hy);
    dfree(be, &x);
    dfree(be, &y);
    fg_backend_destroy(be);
}

// ---------------------------------------------------------------- row-wise ops

static void ref_rmsnorm(const float *x, const float *w, int64_t n, float eps, double *out) {
    double s = 0;
    for (int64_t i = 0; i < n; i++)
        s += (double)x[i] * x[i];
    double scale = 1.0 / sqrt(s / (double)n + eps);
    for (int64_t i = 0; i < n; i++)
        out[i] = x[i] * scale * (w ? w[i] : 1.0);
}

// rows x n in a buffer of row stride `stride`; warp path (n <= 1024) and block path
static void check_rmsnorm_2d(fg_backend *be, int rows, int n, int stride, bool with_w, bool in_place) {
    dbuf x = dalloc(be, (size_t)rows * stride), y = dalloc(be, (size_t)rows * stride), w = dalloc(be, (size_t)n);
    float *hx = malloc((size_t)rows * stride * 4), *hw = malloc((size_t)n * 4);
    float *hy = poisoned((size_t)rows * stride);
    for (int i = 0; i < rows * stride; i++)
        hx[i] = frand() * 3.0f;
    for (int i = 0; i < n; i++)
        hw[i] = frand() + 1.5f;
    dput(be, &x, hx);
    dput(be, &y, hy);
    dput(be, &w, hw);
    fg_tensor vx = view2(&x, 0, n, rows, (size_t)stride);
    fg_tensor vy = in_place ? vx : view2(&y, 0, n, rows, (size_t)stride);
    fg_tensor vw = view2(&w, 0, n, 1, (size_t)n);
    assert_int_equal(be->ops->rmsnorm(be, &vy, &vx, with_w ? &vw : NULL, 1e-5f), FG_OK);
    assert_int_equal(be->ops->sync(be), FG_OK);
    dget(be, in_place ? &x : &y, hy);
    double *ref = malloc((size_t)n * sizeof(double));
    char what[96];
    snprintf(what, sizeof what, "rmsnorm %dx%d stride %d%s%s", rows, n, stride, with_w ? " w" : "",
             in_place ? " in place" : "");
    for (int r = 0; r < rows; r++) {
        ref_rmsnorm(hx + (size_t)r * stride, with_w ? hw : NULL, n, 1e-5f, ref);
        expect_nmse(what, hy + (size_t)r * stride, ref, (size_t)n);
        for (int i = n; i < stride; i++) // padding untouched
            expect_bits(what, (size_t)r * stride + i, hy[(size_t)r * stride + i],
                        in_place ? hx[(size_t)r * stride + i] : poison_value());
    }
    free(ref);
    free(hx);
    free(hw);
    free(hy);
    dfree(be, &x);
    dfree(be, &y);
    dfree(be, &w);
}

// per-head norms on a strided 3-D view: [tokens][heads][head_dim] inside rows of width `row`
static void check_rmsnorm_heads(fg_backend *be) {
    const int tokens = 5, heads = 6, hd = 128, row = heads * hd + 96;
    dbuf x = dalloc(be, (size_t)tokens * row), w = dalloc(be, hd);
    float *hx = malloc((size_t)tokens * row * 4), *hw = malloc(hd * 4), *hy = malloc((size_t)tokens * row * 4);
    for (int i = 0; i < tokens * row; i++)
        hx[i] = frand() * 2.0f;
    for (int i = 0; i < hd; i++)
        hw[i] = frand();
    dput(be, &x, hx);
    dput(be, &w, hw);
    fg_tensor v = view3(&x, 32, hd, heads, tokens, hd, (size_t)row); // starts 32 floats in
    fg_tensor vw = view2(&w, 0, hd, 1, hd);
    assert_int_equal(be->ops->rmsnorm(be, &v, &v, &vw, 1e-6f), FG_OK);
    assert_int_equal(be->ops->sync(be), FG_OK);
    dget(be, &x, hy);
    double ref[128];
    for (int t = 0; t < tokens; t++) {
        for (int h = 0; h < heads; h++) {
            size_t o = (size_t)t * row + 32 + (size_t)h * hd;
            ref_rmsnorm(hx + o, hw, hd, 1e-6f, ref);
            expect_nmse("rmsnorm per head", hy + o, ref, hd);
        }
        for (int i = 0; i < 32; i++)
            expect_bits("rmsnorm per head (before)", (size_t)t * row + i, hy[(size_t)t * row + i], hx[(size_t)t * row + i]);
        for (int i = 32 + heads * hd; i < row; i++)
            expect_bits("rmsnorm per head (after)", (size_t)t * row + i, hy[(size_t)t * row + i], hx[(size_t)t * row + i]);
    }
    free(hx);
    free(hw);
    free(hy);
    dfree(be, &x);
    dfree(be, &w);
}

static void check_add_swiglu(fg_backend *be) {
    const int rows = 5, n = 1000, stride = 1024;
    // add: strided rows, dst aliasing a
    dbuf a = dalloc(be, (size_t)rows * stride), b = dalloc(be, (size_t)rows * n);
    float *ha = malloc((size_t)rows * stride * 4), *hb = malloc((size_t)rows * n * 4);
    float *out = malloc((size_t)rows * stride * 4);
    for (int i = 0; i < rows * stride; i++)
        ha[i] = frand() * 10.0f;
    for (int i = 0; i < rows * n; i++)
        hb[i] = frand();
    dput(be, &a, ha);
    dput(be, &b, hb);
    fg_tensor va = view2(&a, 0, n, rows, stride), vb = view2(&b, 0, n, rows, n);
    assert_int_equal(be->ops->add(be, &va, &va, &vb), FG_OK);
    assert_int_equal(be->ops->sync(be), FG_OK);
    dget(be, &a, out);
    for (int r = 0; r < rows; r++) {
        for (int i = 0; i < n; i++)
            expect_close("add", (size_t)r * n + i, out[(size_t)r * stride + i],
                         (double)ha[(size_t)r * stride + i] + (double)hb[(size_t)r * n + i]);
        for (int i = n; i < stride; i++)
            expect_bits("add padding", (size_t)i, out[(size_t)r * stride + i], ha[(size_t)r * stride + i]);
    }
    // swiglu: gate and up are the halves of a fused [rows][2n] projection
    dbuf gu = dalloc(be, (size_t)rows * 2 * n), d = dalloc(be, (size_t)rows * n);
    float *hgu = malloc((size_t)rows * 2 * n * 4), *hd = poisoned((size_t)rows * n);
    for (int i = 0; i < rows * 2 * n; i++)
        hgu[i] = frand() * 8.0f;
    hgu[0] = -100.0f; // silu of a large negative: expf(100) overflows to inf, result -0
    hgu[1] = 90.0f;
    dput(be, &gu, hgu);
    dput(be, &d, hd);
    fg_tensor vg = view2(&gu, 0, n, rows, 2 * n), vu = view2(&gu, n, n, rows, 2 * n);
    fg_tensor vd = view2(&d, 0, n, rows, n);
    assert_int_equal(be->ops->swiglu(be, &vd, &vg, &vu), FG_OK);
    assert_int_equal(be->ops->sync(be), FG_OK);
    dget(be, &d, hd);
    for (int r = 0; r < rows; r++)
        for (int i = 0; i < n; i++) {
            double g = hgu[(size_t)r * 2 * n + i], u = hgu[(size_t)r * 2 * n + n + i];
            expect_close("swiglu", (size_t)r * n + i, hd[(size_t)r * n + i], g / (1.0 + exp(-g)) * u);
        }
    free(ha);
    free(hb);
    free(out);
    free(hgu);
    free(hd);
    dfree(be, &a);
    dfree(be, &b);
    dfree(be, &gu);
    dfree(be, &d);
}

static void check_add_rmsnorm(fg_backend *be) {
    const int rows = 3, n = 2048;
    dbuf x = dalloc(be, (size_t)rows * n), a = dalloc(be, (size_t)rows * n), xn = dalloc(be, (size_t)rows * n),
         w = dalloc(be, n);
    float *hx = malloc((size_t)rows * n * 4), *ha = malloc((size_t)rows * n * 4), *hw = malloc((size_t)n * 4);
    float *ox = malloc((size_t)rows * n * 4), *on = poisoned((size_t)rows * n);
    for (int i = 0; i < rows * n; i++) {
        hx[i] = frand() * 4.0f;
        ha[i] = frand();
    }
    for (int i = 0; i < n; i++)
        hw[i] = frand() + 1.0f;
    dput(be, &x, hx);
    dput(be, &a, ha);
    dput(be, &w, hw);
    dput(be, &xn, on);
    fg_tensor vx = view2(&x, 0, n, rows, n), va = view2(&a, 0, n, rows, n), vn = view2(&xn, 0, n, rows, n);
    fg_tensor vw = view2(&w, 0, n, 1, n);
    assert_int_equal(be->ops->add_rmsnorm(be, &vx, &vn, &va, &vw, 1e-5f), FG_OK);
    assert_int_equal(be->ops->sync(be), FG_OK);
    dget(be, &x, ox);
    dget(be, &xn, on);
    double *ref = malloc((size_t)n * sizeof(double));
    for (int r = 0; r < rows; r++) {
        for (int i = 0; i < n; i++) {
            size_t k = (size_t)r * n + i;
            expect_close("add_rmsnorm x", k, ox[k], (double)hx[k] + (double)ha[k]);
        }
        ref_rmsnorm(ox + (size_t)r * n, hw, n, 1e-5f, ref);
        expect_nmse("add_rmsnorm xn", on + (size_t)r * n, ref, (size_t)n);
    }
    free(ref);
    free(hx);
    free(ha);
    free(hw);
    free(ox);
    free(on);
    dfree(be, &x);
    dfree(be, &a);
    dfree(be, &xn);
    dfree(be, &w);
}

// rope of x [tokens][heads * hd] (row stride `row`) at positions pos; the angles as the CPU
// computes them (float theta, multiplied pair by pair), cos/sin and rotation in double.
static void check_rope(fg_backend *be, fg_rope_mode mode, int n_rot, bool with_ff, float freq_scale) {
    const int tokens = 4, heads = 3, hd = 64, row = heads * hd + 16;
    const int32_t pos[4] = {0, 7, 1000, 32767};
    dbuf x = dalloc(be, (size_t)tokens * row), ff = dalloc(be, 64);
    float *hx = malloc((size_t)tokens * row * 4), *out = malloc((size_t)tokens * row * 4), hff[64];
    for (int i = 0; i < tokens * row; i++)
        hx[i] = frand();
    for (int i = 0; i < 64; i++)
        hff[i] = 1.0f + 7.0f * (float)i / 64.0f;
    dput(be, &x, hx);
    dput(be, &ff, hff);
    fg_tensor vx = view2(&x, 0, heads * hd, tokens, row);
    fg_tensor vff = view2(&ff, 0, n_rot / 2, 1, 64);
    fg_rope_params p = {heads, hd, n_rot, mode, 10000.0f, freq_scale, with_ff ? &vff : NULL};
    step_arrays a;
    make_step(&a, tokens, pos, 0, NULL);
    fg_step_result res;
    assert_int_equal(be->ops->step_begin(be, &a.s), FG_OK);
    assert_int_equal(be->ops->rope(be, &vx, &p), FG_OK);
    run_step_end(be, &res);
    dget(be, &x, out);
    const float theta_scale = powf(10000.0f, -2.0f / (float)n_rot);
    const int half = n_rot / 2;
    char what[64];
    snprintf(what, sizeof what, "rope %s n_rot %d%s", mode == FG_ROPE_NEOX ? "neox" : "normal", n_rot,
             with_ff ? " ff" : "");
    for (int t = 0; t < tokens; t++) {
        float theta = (float)pos[t];
        double cs[64], sn[64];
        for (int i = 0; i < half; i++) {
            float th = freq_scale * (theta / (with_ff ? hff[i] : 1.0f));
            cs[i] = cos((double)th);
            sn[i] = sin((double)th);
            theta *= theta_scale;
        }
        for (int h = 0; h < heads; h++) {
            const float *v = hx + (size_t)t * row + (size_t)h * hd;
            const float *o = out + (size_t)t * row + (size_t)h * hd;
            for (int i = 0; i < half; i++) {
                int i0 = mode == FG_ROPE_NEOX ? i : 2 * i, i1 = mode == FG_ROPE_NEOX ? i + half : 2 * i + 1;
                expect_close(what, (size_t)i0, o[i0], v[i0] * cs[i] - v[i1] * sn[i]);
                expect_close(what, (size_t)i1, o[i1], v[i0] * sn[i] + v[i1] * cs[i]);
            }
            for (int i = n_rot; i < hd; i++)
                expect_bits("rope (unrotated dims)", (size_t)i, o[i], v[i]);
        }
        for (int i = heads * hd; i < row; i++)
            expect_bits("rope (padding)", (size_t)i, out[(size_t)t * row + i], hx[(size_t)t * row + i]);
    }
    free(hx);
    free(out);
    dfree(be, &x);
    dfree(be, &ff);
}

static void check_gather_out(fg_backend *be) {
    const int tokens = 20, n = 300;
    const int32_t rows[12] = {1, 2, 4, 5, 6, 9, 10, 12, 13, 15, 18, 19}; // 12 > one chunk of 8
    dbuf x = dalloc(be, (size_t)tokens * n), d = dalloc(be, (size_t)12 * n);
    float *hx = malloc((size_t)tokens * n * 4), *out = malloc((size_t)tokens * n * 4);
    float *hd = poisoned((size_t)12 * n);
    for (int i = 0; i < tokens * n; i++)
        hx[i] = frand();
    dput(be, &x, hx);
    dput(be, &d, hd);
    fg_tensor vx = view2(&x, 0, n, tokens, n), vd = view2(&d, 0, n, 12, n);
    step_arrays a;
    make_step(&a, tokens, NULL, 12, rows);
    fg_step_result res;
    assert_int_equal(be->ops->step_begin(be, &a.s), FG_OK);
    assert_int_equal(be->ops->gather_out(be, &vd, &vx), FG_OK);
    fg_tensor vdi = view2(&x, 0, n, 12, n);
    assert_int_equal(be->ops->gather_out(be, &vdi, &vx), FG_OK); // in place
    run_step_end(be, &res);
    dget(be, &d, hd);
    dget(be, &x, out);
    for (int i = 0; i < 12; i++)
        for (int k = 0; k < n; k++) {
            expect_bits("gather_out", (size_t)i * n + k, hd[(size_t)i * n + k], hx[(size_t)rows[i] * n + k]);
            expect_bits("gather_out in place", (size_t)i * n + k, out[(size_t)i * n + k], hx[(size_t)rows[i] * n + k]);
        }
    free(hx);
    free(out);
    free(hd);
    dfree(be, &x);
    dfree(be, &d);
}

static void test_row_ops(void **state) {
    (void)state;
    fg_backend *be = open_or_skip();
    assert_int_equal(be->ops->reserve(be, &k_lim), FG_OK);
    g_seed = 2024;
    printf("seed %u\n", g_seed);
    n_bad = 0;
    step_arrays a;
    make_step(&a, 8, NULL, 0, NULL);
    fg_step_result res;
    assert_int_equal(be->ops->step_begin(be, &a.s), FG_OK); // ops run inside a step
    check_rmsnorm_2d(be, 3, 4096, 4096 + 64, true, false);  // block per row
    check_rmsnorm_2d(be, 7, 1000, 1000, false, true);        // warp per row, in place
    check_rmsnorm_2d(be, 5, 128, 160, true, false);
    check_rmsnorm_2d(be, 2, 1025, 1100, true, true);         // just past the warp path
    check_rmsnorm_heads(be);
    check_add_swiglu(be);
    check_add_rmsnorm(be);
    run_step_end(be, &res);
    check_rope(be, FG_ROPE_NORMAL, 64, false, 1.0f);
    check_rope(be, FG_ROPE_NEOX, 64, false, 1.0f);
    check_rope(be, FG_ROPE_NORMAL, 32, true, 1.0f); // partial (glm4-like), frequency factors
    check_rope(be, FG_ROPE_NEOX, 48, true, 0.5f);
    check_gather_out(be);
    assert_int_equal(be->ops->sync(be), FG_OK);
    fg_backend_destroy(be);
    if (n_bad)
        fail_msg("%d mismatches (seed 2024)", n_bad);
}
#else
static void test_cuda_not_built(void **state) {
    (void)state;
    fg_backend *be = NULL;
    assert_int_equal(fg_backend_create("cuda", NULL, &be), FG_ERR_UNSUPPORTED);
    assert_string_equal(fg_last_error(), "forge was built without CUDA");
}
#endif

int main(void) {
    const struct CMUnitTest tests[] = {
#ifdef FG_HAVE_CUDA
        cmocka_unit_test(test_describe_and_mem_info),
        cmocka_unit_test(test_buffer_round_trip),
        cmocka_unit_test(test_huge_alloc_is_nomem),
        cmocka_unit_test(test_host_alloc),
        cmocka_unit_test(test_bad_device_index),
        cmocka_unit_test(test_weight_size_and_kv_alloc),
        cmocka_unit_test(test_step_download_async),
        cmocka_unit_test(test_check_finite),
        cmocka_unit_test(test_row_ops),
#else
        cmocka_unit_test(test_cuda_not_built),
#endif
    };
    return cmocka_run_group_tests_name("cuda", tests, NULL, NULL);
}
