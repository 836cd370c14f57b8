// test_backend_cpu.c - the CPU backend's ops against plain scalar references written here
// (double precision where it matters), on random inputs from a fixed printed seed: odd
// shapes, several sequences per step with shuffled page tables, GQA, both rope modes, F16 and
// F32 KV caches, matmul for every weight type with kernels; guard bytes after outputs; every
// op run with 1 and 3 threads must give bit-identical results.
// forge-test-modules: backend quant base
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "backend/backend.h"
#include "base/half.h"
#include "base/status.h"
#include "base/util.h"
#include "quant/quant.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SEED 0x5eedf00dULL
#define GUARD 64
#define GUARD_BYTE 0xA5

// ---------------------------------------------------------------- helpers
static uint64_t g_rng = SEED;
static uint64_t rnd_u64(void) { // splitmix64
    uint64_t z = (g_rng += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}
static float rnd_f(void) { return (float)((double)(rnd_u64() >> 11) / 9007199254740992.0 * 2.0 - 1.0); }
static int rnd_int(int n) { return (int)(rnd_u64() % (uint64_t)n); }
static void fill(float *x, size_t n, float amp) {
    for (size_t i = 0; i < n; i++)
        x[i] = rnd_f() * amp;
}

static fg_backend *make_cpu(int n_threads) {
    fg_backend_opts o = {n_threads, 0};
    fg_backend *be = NULL;
    fg_status st = fg_backend_cpu_create(&o, &be);
    if (st != FG_OK)
        fail_msg("cpu backend: %s", fg_last_error());
    return be;
}

// A tensor in its own backend buffer followed by GUARD guard bytes.
typedef struct dev {
    fg_buffer *buf;
    fg_tensor t;
    size_t bytes;
} dev;

static dev dev_new(fg_backend *be, uint32_t type, int n_dims, const int64_t *ne) {
    dev d;
    fg_tensor probe = fg_tensor_view(NULL, NULL, 0, type, n_dims, ne);
    d.bytes = fg_tensor_nbytes(&probe);
    assert_int_equal(be->ops->buf_alloc(be, d.bytes + GUARD, &d.buf), FG_OK);
    void *base = be->ops->buf_base(d.buf);
    assert_true(((uintptr_t)base & 63) == 0);
    d.t = fg_tensor_view(d.buf, base, 0, type, n_dims, ne);
    int64_t all = (int64_t)(d.bytes + GUARD);
    fg_tensor whole = fg_tensor_view(d.buf, base, 0, FG_TYPE_I8, 1, &all);
    unsigned char *g = malloc(d.bytes + GUARD);
    memset(g, GUARD_BYTE, d.bytes + GUARD);
    assert_int_equal(be->ops->upload(be, &whole, 0, g, d.bytes + GUARD), FG_OK);
    free(g);
    return d;
}
static dev dev_2d(fg_backend *be, uint32_t type, int64_t cols, int64_t rows) {
    int64_t ne[2] = {cols, rows};
    return dev_new(be, type, 2, ne);
}
static void dev_put(fg_backend *be, dev *d, const void *src) {
    assert_int_equal(be->ops->upload(be, &d->t, 0, src, d->bytes), FG_OK);
}
static void dev_get(fg_backend *be, const dev *d, void *dst) {
    assert_int_equal(be->ops->download(be, &d->t, 0, dst, d->bytes), FG_OK);
}
static void dev_check_guard(fg_backend *be, const dev *d, const char *what) {
    int64_t all = (int64_t)(d->bytes + GUARD);
    fg_tensor whole = fg_tensor_view(d->buf, be->ops->buf_base(d->buf), 0, FG_TYPE_I8, 1, &all);
    unsigned char g[GUARD];
    assert_int_equal(be->ops->download(be, &whole, d->bytes, g, GUARD), FG_OK);
    for (int i = 0; i < GUARD; i++)
        if (g[i] != GUARD_BYTE)
            fail_msg("%s: guard byte %d after the output was overwritten (0x%02x)", what, i, g[i]);
}
static void dev_free(fg_backend *be, dev *d) { be->ops->buf_free(be, d->buf); }

static double nmse(const float *got, const double *ref, size_t n) {
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < n; i++) {
        double e = (double)got[i] - ref[i];
        num += e * e;
        den += ref[i] * ref[i];
    }
    return den > 0.0 ? num / den : num;
}
static void check_nmse(const char *what, const float *got, const double *ref, size_t n, double tol) {
    double e = nmse(got, ref, n);
    if (getenv("FORGE_TEST_VERBOSE"))
        print_message("%s: nmse %.3g (tol %.3g)\n", what, e, tol);
    if (!(e <= tol))
        fail_msg("%s: nmse %.3g > %.3g", what, e, tol);
}
static void check_close(const char *what, const float *got, const double *ref, size_t n) {
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)got[i] - ref[i]);
        if (!(e <= 1e-6 + 1e-5 * fabs(ref[i])))
            fail_msg("%s: element %zu: got %.9g, expected %.9g", what, i, (double)got[i], ref[i]);
    }
}

static const int k_threads[2] = {1, 3};

// A step over n_seqs sequences: seq s gets new_tokens[s] tokens at the end of n_kv[s].
typedef struct step_data {
    fg_step st;
    int32_t tokens[64], pos[64], seq[64], n_kv[8], out_rows[64];
    int32_t page_table[8 * 16];
} step_data;

static void make_step(step_data *sd, int n_seqs, const int *n_kv, const int *n_new, int max_pages,
                      int n_pages, int page_size, int n_vocab) {
    memset(sd, 0, sizeof(*sd));
    int perm[256];
    assert_true(n_pages <= 256 && n_seqs <= 8 && max_pages <= 16);
    for (int i = 0; i < n_pages; i++)
        perm[i] = i;
    for (int i = n_pages - 1; i > 0; i--) { // shuffle: pages of a sequence are scattered
        int j = rnd_int(i + 1), t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    int next_page = 0, nt = 0;
    for (int s = 0; s < n_seqs; s++) {
        sd->n_kv[s] = n_kv[s];
        int need = (n_kv[s] + page_size - 1) / page_size;
        assert_true(need <= max_pages);
        for (int j = 0; j < max_pages; j++)
            sd->page_table[s * max_pages + j] = j < need ? perm[next_page++] : -1;
        assert_true(next_page <= n_pages);
        for (int i = 0; i < n_new[s]; i++) {
            sd->tokens[nt] = rnd_int(n_vocab);
            sd->pos[nt] = n_kv[s] - n_new[s] + i;
            sd->seq[nt] = s;
            nt++;
        }
        sd->out_rows[sd->st.n_out++] = nt - 1;
    }
    assert_true(nt <= 64);
    sd->st.n_tokens = nt;
    sd->st.tokens = sd->tokens;
    sd->st.pos = sd->pos;
    sd->st.seq = sd->seq;
    sd->st.n_seqs = n_seqs;
    sd->st.seq_n_kv = sd->n_kv;
    sd->st.max_pages = max_pages;
    sd->st.page_table = sd->page_table;
    sd->st.out_rows = sd->out_rows;
}

// Single-sequence step of n tokens at positions p0..p0+n-1.
static void simple_step(step_data *sd, int n, int p0, int n_vocab) {
    int n_kv = p0 + n, n_new = n;
    make_step(sd, 1, &n_kv, &n_new, 16, 256, 64, n_vocab);
}

// ---------------------------------------------------------------- registry, buffers, helpers
static void test_registry(void **state) {
    (void)state;
#ifndef FG_HAVE_CUDA
    fg_backend *be = NULL;
    assert_int_equal(fg_backend_create("cpu", NULL, &be), FG_OK);
    assert_string_equal(fg_backend_name(be), "cpu");
    fg_backend_destroy(be);
    fg_backend_destroy(NULL);
    be = NULL;
    assert_int_equal(fg_backend_create("cuda", NULL, &be), FG_ERR_UNSUPPORTED);
    assert_string_equal(fg_last_error(), "forge was built without CUDA");
    assert_int_equal(fg_backend_create("metal", NULL, &be), FG_ERR_UNSUPPORTED);
    assert_string_equal(fg_last_error(), "unknown backend 'metal' (expected cpu or cuda)");
    assert_null(be);
#endif
    // (with FG_HAVE_CUDA the registry links the CUDA library, which this suite does not)
    fg_backend_opts bad = {-2, 0};
    fg_backend *b2 = NULL;
    assert_int_equal(fg_backend_cpu_create(&bad, &b2), FG_ERR_INVALID_ARG);
    assert_string_equal(fg_last_error(), "cpu backend: n_threads = -2 (expected 0..1024, 0 = all cores)");
    fg_backend_opts all = {0, 0};
    assert_int_equal(fg_backend_cpu_create(&all, &b2), FG_OK);
    assert_string_equal(b2->ops->name, "cpu");
    b2->ops->destroy(b2);
}

static void test_buffers(void **state) {
    (void)state;
    fg_backend *be = make_cpu(2);
    fg_buffer *buf = NULL;
    assert_int_equal(be->ops->buf_alloc(be, 1000, &buf), FG_OK);
    char *base = be->ops->buf_base(buf);
    assert_true(((uintptr_t)base & 63) == 0);
    int64_t ne[2] = {10, 20};
    fg_tensor t = fg_tensor_view(buf, base, 200, FG_TYPE_F32, 2, ne);
    assert_int_equal(fg_tensor_nbytes(&t), 800);
    float src[200], dst[200];
    fill(src, 200, 1.0f);
    assert_int_equal(be->ops->upload(be, &t, 0, src, 800), FG_OK);
    memset(dst, 0, sizeof(dst));
    assert_int_equal(be->ops->download(be, &t, 0, dst, 800), FG_OK);
    assert_memory_equal(src, dst, 800);
    assert_int_equal(be->ops->download(be, &t, 40, dst, 40), FG_OK);
    assert_memory_equal(src + 10, dst, 40);
    // past the tensor
    assert_int_equal(be->ops->upload(be, &t, 4, src, 800), FG_ERR_INVALID_ARG);
    assert_string_equal(fg_last_error(), "upload: 800 bytes at offset 4 exceed the tensor's 800 bytes");
    // past the buffer (tensor claims more than the buffer holds)
    int64_t ne2[1] = {300};
    fg_tensor big = fg_tensor_view(buf, base, 0, FG_TYPE_F32, 1, ne2);
    assert_int_equal(be->ops->download(be, &big, 0, dst, 800), FG_OK);
    float huge[300];
    assert_int_equal(be->ops->download(be, &big, 0, huge, 1200), FG_ERR_INVALID_ARG);
    assert_string_equal(fg_last_error(),
                        "download: 1200 bytes at offset 0 fall outside the tensor's buffer (1000 bytes)");
    assert_int_equal(be->ops->sync(be), FG_OK);
    be->ops->buf_free(be, buf);
    be->ops->buf_free(be, NULL);
    // try-allocation of an impossible size
    fg_buffer *nb = NULL;
    assert_int_equal(be->ops->buf_alloc(be, (size_t)1 << 62, &nb), FG_ERR_NOMEM);
    assert_string_equal(fg_last_error(), "cpu backend: buffer of 4611686018427387904 bytes: out of memory");
    assert_null(nb);
    be->ops->destroy(be);
}

static void test_tensor_helpers(void **state) {
    (void)state;
    int64_t ne[3] = {64, 3, 2};
    fg_tensor t = fg_tensor_view(NULL, (void *)0x1000, 0x40, FG_TYPE_Q4_0, 3, ne);
    assert_int_equal(t.nb[0], 18);
    assert_int_equal(t.nb[1], 36);
    assert_int_equal(t.nb[2], 108);
    assert_int_equal(t.nb[3], 216);
    assert_int_equal(t.ne[3], 1);
    assert_ptr_equal(t.data, (void *)0x1040);
    assert_int_equal(fg_tensor_nbytes(&t), 216);
    assert_true(fg_tensor_is_contiguous(&t));
    fg_tensor v = t; // every other row: a strided view
    v.ne[1] = 2;
    v.nb[1] = 72;
    assert_false(fg_tensor_is_contiguous(&v));
    assert_int_equal(fg_tensor_nbytes(&v), 36 + 72 + 108);
    fg_tensor r = t; // one row of a larger matrix is contiguous
    r.ne[1] = 1;
    r.ne[2] = 1;
    assert_true(fg_tensor_is_contiguous(&r));
    r.ne[0] = 0;
    assert_int_equal(fg_tensor_nbytes(&r), 0);
}

// ---------------------------------------------------------------- matmul
static bool type_has_kernels(uint32_t type) {
    const fg_type_traits *t = fg_type_traits_get(type);
    if (!t || !t->is_weight || !t->vec_dot || !t->to_float || !t->from_float)
        return false;
    const fg_type_traits *v = fg_type_traits_get(t->vec_dot_type);
    return v && v->from_float;
}

// One matmul case on both thread counts; returns false if the type has no kernels.
static void matmul_case(uint32_t type, int64_t n_in, int64_t n_out, int64_t n_rows, bool with_bias,
                        bool strided_x) {
    const fg_type_traits *tr = fg_type_traits_get(type);
    const fg_type_traits *ref = fg_type_traits_ref(type);
    const fg_type_traits *vref = fg_type_traits_ref(tr->vec_dot_type);
    size_t wrow = (size_t)(n_in / tr->blck_size) * tr->type_size;
    float *wf = malloc((size_t)(n_in * n_out) * sizeof(float));
    fill(wf, (size_t)(n_in * n_out), 1.0f);
    unsigned char *wq = malloc(wrow * (size_t)n_out);
    for (int64_t o = 0; o < n_out; o++)
        ref->from_float(wf + o * n_in, wq + (size_t)o * wrow, n_in);
    float *wd = malloc((size_t)(n_in * n_out) * sizeof(float)); // dequantized weights
    for (int64_t o = 0; o < n_out; o++)
        ref->to_float(wq + (size_t)o * wrow, wd + o * n_in, n_in);
    int64_t xcols = strided_x ? n_in + 5 : n_in;
    float *x = malloc((size_t)(xcols * n_rows) * sizeof(float));
    fill(x, (size_t)(xcols * n_rows), 2.0f);
    float bias[512];
    fill(bias, (size_t)n_out, 0.5f);
    // reference 1 (math): double dot of the dequantized weights and the f32 activations
    // reference 2 (semantics): the scalar reference vec_dot on the activation row converted
    // to vec_dot_type, i.e. what ggml computes; only the summation order may differ.
    double *r1 = malloc((size_t)(n_out * n_rows) * sizeof(double));
    double *r2 = malloc((size_t)(n_out * n_rows) * sizeof(double));
    size_t arow = (size_t)(n_in / vref->blck_size) * vref->type_size;
    unsigned char *xa = malloc(arow);
    for (int64_t r = 0; r < n_rows; r++) {
        const float *xr = x + r * xcols;
        if (tr->vec_dot_type == FG_TYPE_F32)
            memcpy(xa, xr, arow);
        else
            vref->from_float(xr, xa, n_in);
        for (int64_t o = 0; o < n_out; o++) {
            double s = 0.0;
            for (int64_t i = 0; i < n_in; i++)
                s += (double)wd[o * n_in + i] * xr[i];
            float s2;
            ref->vec_dot(n_in, &s2, wq + (size_t)o * wrow, xa);
            r1[r * n_out + o] = s + (with_bias ? bias[o] : 0.0);
            r2[r * n_out + o] = (double)s2 + (with_bias ? bias[o] : 0.0);
        }
    }
    float *out[2];
    for (int k = 0; k < 2; k++) {
        fg_backend *be = make_cpu(k_threads[k]);
        int64_t wne[2] = {n_in, n_out};
        dev dw = dev_new(be, type, 2, wne);
        dev_put(be, &dw, wq);
        dev dx = dev_2d(be, FG_TYPE_F32, xcols, n_rows);
        dev_put(be, &dx, x);
        fg_tensor xv = dx.t; // strided view: the first n_in columns of each row
        xv.ne[0] = n_in;
        dev db = dev_2d(be, FG_TYPE_F32, n_out, 1);
        dev_put(be, &db, bias);
        dev dd = dev_2d(be, FG_TYPE_F32, n_out, n_rows);
        fg_status st = be->ops->matmul(be, &dd.t, &dw.t, &xv, with_bias ? &db.t : NULL);
        if (st != FG_OK)
            fail_msg("matmul %s: %s", tr->name, fg_last_error());
        out[k] = malloc(dd.bytes);
        dev_get(be, &dd, out[k]);
        dev_check_guard(be, &dd, "matmul dst");
        dev_free(be, &dw);
        dev_free(be, &dx);
        dev_free(be, &db);
        dev_free(be, &dd);
        be->ops->destroy(be);
    }
    char what[128];
    snprintf(what, sizeof(what), "matmul %s n_in=%lld n_out=%lld rows=%lld", tr->name, (long long)n_in,
             (long long)n_out, (long long)n_rows);
    if (memcmp(out[0], out[1], (size_t)(n_out * n_rows) * sizeof(float)) != 0)
        fail_msg("%s: 1 and 3 threads differ", what);
    // Against the math reference: 5e-4 for every type. The activation conversion is the only
    // error here (weights are compared dequantized): bf16 ~2e-6, 8-bit Q8_0/Q8_1/Q8_K ~1.5e-5
    // measured, so quantized activations need no extra allowance at these sizes. Against the
    // semantic reference only the summation order differs: 1e-9.
    check_nmse(what, out[0], r1, (size_t)(n_out * n_rows), 5e-4);
    check_nmse(what, out[0], r2, (size_t)(n_out * n_rows), 1e-9);
    free(out[0]);
    free(out[1]);
    free(wf);
    free(wq);
    free(wd);
    free(x);
    free(r1);
    free(r2);
    free(xa);
}

static void test_matmul_all_types(void **state) {
    (void)state;
    static const int rows[] = {1, 2, 7, 8, 9, 33};
    int n_types = 0;
    char tested[512] = "";
    for (uint32_t type = 0; type < FG_TYPE_COUNT; type++) {
        if (!type_has_kernels(type))
            continue;
        const fg_type_traits *tr = fg_type_traits_get(type);
        const fg_type_traits *vt = fg_type_traits_get(tr->vec_dot_type);
        int64_t blk = FG_MAX(tr->blck_size, vt->blck_size);
        int64_t n_in = blk == 1 ? 67 : (blk == 32 ? 7 * 32 : 2 * 256);
        for (size_t i = 0; i < FG_ARRAY_LEN(rows); i++)
            matmul_case(type, n_in, 37, rows[i], i % 2 == 0, i == 3);
        // large enough to run threaded (the small ones run on the caller alone)
        matmul_case(type, blk == 1 ? 515 : 4 * 256, 131, 9, true, false);
        matmul_case(type, blk == 1 ? 515 : 4 * 256, 300, 1, false, false);
        n_types++;
        strcat(tested, " ");
        strcat(tested, tr->name);
    }
    print_message("matmul tested for %d types:%s\n", n_types, tested);
    assert_true(n_types >= 2); // at least f32 and f16
}

// ---------------------------------------------------------------- row-wise ops
static void test_rmsnorm(void **state) {
    (void)state;
    static const int64_t shapes[4][2] = {{67, 7}, {64, 33}, {4096, 2}, {4096, 9}};
    for (int sh = 0; sh < 4; sh++) {
        int64_t n = shapes[sh][0], rows = shapes[sh][1];
        float *x = malloc((size_t)(n * rows) * 4), *w = malloc((size_t)n * 4), *o[2];
        fill(x, (size_t)(n * rows), 3.0f);
        fill(w, (size_t)n, 1.5f);
        double *ref = malloc((size_t)(n * rows) * 8);
        for (int64_t r = 0; r < rows; r++) {
            double ss = 0.0;
            for (int64_t i = 0; i < n; i++)
                ss += (double)x[r * n + i] * x[r * n + i];
            double sc = 1.0 / sqrt(ss / (double)n + 1e-5);
            for (int64_t i = 0; i < n; i++)
                ref[r * n + i] = x[r * n + i] * sc * w[i];
        }
        for (int k = 0; k < 2; k++) {
            fg_backend *be = make_cpu(k_threads[k]);
            dev dx = dev_2d(be, FG_TYPE_F32, n, rows), dw = dev_2d(be, FG_TYPE_F32, n, 1);
            dev_put(be, &dx, x);
            dev_put(be, &dw, w);
            // in place (dst aliases x)
            assert_int_equal(be->ops->rmsnorm(be, &dx.t, &dx.t, &dw.t, 1e-5f), FG_OK);
            o[k] = malloc(dx.bytes);
            dev_get(be, &dx, o[k]);
            dev_check_guard(be, &dx, "rmsnorm");
            dev_free(be, &dx);
            dev_free(be, &dw);
            be->ops->destroy(be);
        }
        assert_memory_equal(o[0], o[1], (size_t)(n * rows) * 4);
        check_close("rmsnorm", o[0], ref, (size_t)(n * rows));
        check_nmse("rmsnorm", o[0], ref, (size_t)(n * rows), 1e-6);
        free(o[0]);
        free(o[1]);
        free(x);
        free(w);
        free(ref);
    }
}

static void test_add_swiglu(void **state) {
    (void)state;
    static const int64_t shapes[3][2] = {{67, 9}, {11008, 2}, {3000, 33}};
    for (int sh = 0; sh < 3; sh++) {
        int64_t n = shapes[sh][0], rows = shapes[sh][1];
        float *gu = malloc((size_t)(2 * n * rows) * 4), *b = malloc((size_t)(n * rows) * 4);
        fill(gu, (size_t)(2 * n * rows), 8.0f);
        fill(b, (size_t)(n * rows), 1.0f);
        double *rs = malloc((size_t)(n * rows) * 8), *ra = malloc((size_t)(n * rows) * 8);
        for (int64_t r = 0; r < rows; r++)
            for (int64_t i = 0; i < n; i++) {
                double g = gu[r * 2 * n + i], u = gu[r * 2 * n + n + i];
                rs[r * n + i] = g / (1.0 + exp(-g)) * u;
                ra[r * n + i] = (double)gu[r * 2 * n + i] + b[r * n + i];
            }
        float *os[2], *oa[2];
        for (int k = 0; k < 2; k++) {
            fg_backend *be = make_cpu(k_threads[k]);
            dev dgu = dev_2d(be, FG_TYPE_F32, 2 * n, rows), db = dev_2d(be, FG_TYPE_F32, n, rows);
            dev ds = dev_2d(be, FG_TYPE_F32, n, rows), da = dev_2d(be, FG_TYPE_F32, n, rows);
            dev_put(be, &dgu, gu);
            dev_put(be, &db, b);
            fg_tensor g = dgu.t, u = dgu.t; // halves of a fused projection: strided views
            g.ne[0] = u.ne[0] = n;
            u.data = (char *)u.data + n * 4;
            assert_int_equal(be->ops->swiglu(be, &ds.t, &g, &u), FG_OK);
            assert_int_equal(be->ops->add(be, &da.t, &g, &db.t), FG_OK);
            os[k] = malloc(ds.bytes);
            oa[k] = malloc(da.bytes);
            dev_get(be, &ds, os[k]);
            dev_get(be, &da, oa[k]);
            dev_check_guard(be, &ds, "swiglu");
            dev_check_guard(be, &da, "add");
            // add in place: dst aliases a
            assert_int_equal(be->ops->add(be, &db.t, &db.t, &db.t), FG_OK);
            float two[4];
            assert_int_equal(be->ops->download(be, &db.t, 0, two, 16), FG_OK);
            for (int i = 0; i < 4; i++)
                assert_true(two[i] == 2.0f * b[i]);
            dev_free(be, &dgu);
            dev_free(be, &db);
            dev_free(be, &ds);
            dev_free(be, &da);
            be->ops->destroy(be);
        }
        assert_memory_equal(os[0], os[1], (size_t)(n * rows) * 4);
        assert_memory_equal(oa[0], oa[1], (size_t)(n * rows) * 4);
        check_close("swiglu", os[0], rs, (size_t)(n * rows));
        check_close("add", oa[0], ra, (size_t)(n * rows));
        free(os[0]);
        free(os[1]);
        free(oa[0]);
        free(oa[1]);
        free(gu);
        free(b);
        free(rs);
        free(ra);
    }
}

static void rope_case(fg_rope_mode mode, int n_head, int head_dim, int n_rot, bool factors,
                      float freq_scale, int n_tokens) {
    step_data sd;
    simple_step(&sd, n_tokens, 3 + rnd_int(90), 100);
    int64_t width = (int64_t)n_head * head_dim;
    float *x = malloc((size_t)(width * n_tokens) * 4), *o[2];
    fill(x, (size_t)(width * n_tokens), 2.0f);
    float ff[512];
    for (int i = 0; i < n_rot / 2; i++)
        ff[i] = 1.0f + 3.0f * (float)rnd_int(8);
    const float base = 10000.0f;
    double *ref = malloc((size_t)(width * n_tokens) * 8);
    for (int t = 0; t < n_tokens; t++)
        for (int h = 0; h < n_head; h++) {
            const float *v = x + t * width + h * head_dim;
            double *r = ref + t * width + h * head_dim;
            for (int d = 0; d < head_dim; d++)
                r[d] = v[d];
            for (int i = 0; i < n_rot / 2; i++) {
                double th = sd.pos[t] * (double)freq_scale * pow(base, -2.0 * i / n_rot) /
                            (factors ? ff[i] : 1.0);
                int i0 = mode == FG_ROPE_NEOX ? i : 2 * i, i1 = mode == FG_ROPE_NEOX ? i + n_rot / 2 : 2 * i + 1;
                r[i0] = v[i0] * cos(th) - v[i1] * sin(th);
                r[i1] = v[i0] * sin(th) + v[i1] * cos(th);
            }
        }
    for (int k = 0; k < 2; k++) {
        fg_backend *be = make_cpu(k_threads[k]);
        assert_int_equal(be->ops->set_step(be, &sd.st), FG_OK);
        dev dx = dev_2d(be, FG_TYPE_F32, width, n_tokens), df = dev_2d(be, FG_TYPE_F32, n_rot / 2, 1);
        dev_put(be, &dx, x);
        dev_put(be, &df, ff);
        fg_rope_params p = {n_head, head_dim, n_rot, mode, base, freq_scale, factors ? &df.t : NULL};
        fg_status st = be->ops->rope(be, &dx.t, &p);
        if (st != FG_OK)
            fail_msg("rope: %s", fg_last_error());
        o[k] = malloc(dx.bytes);
        dev_get(be, &dx, o[k]);
        dev_check_guard(be, &dx, "rope");
        dev_free(be, &dx);
        dev_free(be, &df);
        be->ops->destroy(be);
    }
    assert_memory_equal(o[0], o[1], (size_t)(width * n_tokens) * 4);
    // untouched dims beyond n_rot are bit-exact
    for (int t = 0; t < n_tokens; t++)
        for (int h = 0; h < n_head; h++)
            for (int d = n_rot; d < head_dim; d++)
                assert_true(o[0][t * width + h * head_dim + d] == x[t * width + h * head_dim + d]);
    // f32 cos/sin of an f32 theta (ggml) against double: positions < 100 keep theta's
    // accumulated rounding (theta *= theta_scale per pair) well inside 1e-6.
    check_nmse("rope", o[0], ref, (size_t)(width * n_tokens), 1e-6);
    free(o[0]);
    free(o[1]);
    free(x);
    free(ref);
}

static void test_rope(void **state) {
    (void)state;
    rope_case(FG_ROPE_NORMAL, 4, 64, 64, false, 1.0f, 7);
    rope_case(FG_ROPE_NEOX, 3, 128, 128, false, 1.0f, 33);
    rope_case(FG_ROPE_NEOX, 2, 128, 64, false, 0.5f, 9);   // glm4-like partial rotation
    rope_case(FG_ROPE_NORMAL, 5, 96, 32, true, 1.0f, 2);   // freq_factors, n_rot < head_dim
    rope_case(FG_ROPE_NEOX, 8, 64, 64, true, 0.25f, 1);
    rope_case(FG_ROPE_NORMAL, 32, 128, 128, false, 1.0f, 33); // large enough to run threaded
}

static void test_get_rows_gather(void **state) {
    (void)state;
    static const uint32_t types[] = {FG_TYPE_F32, FG_TYPE_F16, FG_TYPE_BF16, FG_TYPE_Q8_0, FG_TYPE_Q4_0,
                                     FG_TYPE_Q4_K, FG_TYPE_Q6_K};
    for (size_t ti = 0; ti < FG_ARRAY_LEN(types); ti++) {
        const fg_type_traits *ref = fg_type_traits_ref(types[ti]);
        if (!ref || !ref->to_float || !ref->from_float)
            continue;
        const int64_t n_embd = ref->blck_size == 1 ? 3001 : 512, n_vocab = 50;
        size_t rb = (size_t)(n_embd / ref->blck_size) * ref->type_size;
        float *tf = malloc((size_t)(n_embd * n_vocab) * 4);
        fill(tf, (size_t)(n_embd * n_vocab), 1.0f);
        unsigned char *tq = malloc(rb * n_vocab);
        for (int64_t v = 0; v < n_vocab; v++)
            ref->from_float(tf + v * n_embd, tq + v * rb, n_embd);
        int lens[3] = {9, 20, 4}, news[3] = {9, 1, 4};
        step_data sd;
        make_step(&sd, 3, lens, news, 4, 64, 8, (int)n_vocab);
        int nt = sd.st.n_tokens;
        float *exp_rows = malloc((size_t)(n_embd * nt) * 4);
        for (int t = 0; t < nt; t++)
            ref->to_float(tq + (size_t)sd.tokens[t] * rb, exp_rows + t * n_embd, n_embd);
        for (int k = 0; k < 2; k++) {
            fg_backend *be = make_cpu(k_threads[k]);
            assert_int_equal(be->ops->set_step(be, &sd.st), FG_OK);
            int64_t tne[2] = {n_embd, n_vocab};
            dev dt = dev_new(be, types[ti], 2, tne);
            dev_put(be, &dt, tq);
            dev dd = dev_2d(be, FG_TYPE_F32, n_embd, nt), dg = dev_2d(be, FG_TYPE_F32, n_embd, sd.st.n_out);
            assert_int_equal(be->ops->get_rows(be, &dd.t, &dt.t), FG_OK);
            assert_int_equal(be->ops->gather_out(be, &dg.t, &dd.t), FG_OK);
            float *got = malloc(dd.bytes), *gat = malloc(dg.bytes);
            dev_get(be, &dd, got);
            dev_get(be, &dg, gat);
            dev_check_guard(be, &dd, "get_rows");
            dev_check_guard(be, &dg, "gather_out");
            assert_memory_equal(got, exp_rows, dd.bytes); // dequantization is bit-exact
            for (int i = 0; i < sd.st.n_out; i++)
                assert_memory_equal(gat + i * n_embd, exp_rows + sd.out_rows[i] * n_embd, n_embd * 4);
            free(got);
            free(gat);
            dev_free(be, &dt);
            dev_free(be, &dd);
            dev_free(be, &dg);
            be->ops->destroy(be);
        }
        free(tf);
        free(tq);
        free(exp_rows);
    }
}

// ---------------------------------------------------------------- KV cache and attention
typedef struct kv_case {
    int n_seqs;
    int n_kv[4];  // after the step
    int n_new[4]; // new tokens of the step
    int n_head, n_head_kv, head_dim, page_size;
    uint32_t kv_type;
} kv_case;

static void attention_case(const kv_case *kc) {
    const int n_layer = 2, layer = 1, n_pages = 40, max_pages = 12;
    const int hd = kc->head_dim, nkv = kc->n_head_kv, ps = kc->page_size;
    const int64_t kw = (int64_t)nkv * hd, qw = (int64_t)kc->n_head * hd;
    const bool f16 = kc->kv_type == FG_TYPE_F16;
    const size_t esz = f16 ? 2 : 4;
    step_data sd;
    make_step(&sd, kc->n_seqs, kc->n_kv, kc->n_new, max_pages, n_pages, ps, 100);
    const int nt = sd.st.n_tokens;
    // initial cache contents: random everywhere (stale pages included)
    const size_t cache_elems = (size_t)n_layer * n_pages * ps * kw;
    unsigned char *k0 = malloc(cache_elems * esz), *v0 = malloc(cache_elems * esz);
    for (size_t i = 0; i < cache_elems; i++) {
        float a = rnd_f() * 2.0f, b = rnd_f();
        if (f16) {
            ((fg_f16 *)k0)[i] = fg_f32_to_f16(a);
            ((fg_f16 *)v0)[i] = fg_f32_to_f16(b);
        } else {
            ((float *)k0)[i] = a;
            ((float *)v0)[i] = b;
        }
    }
    float *q = malloc((size_t)(qw * nt) * 4), *kn = malloc((size_t)(kw * nt) * 4),
          *vn = malloc((size_t)(kw * nt) * 4);
    fill(q, (size_t)(qw * nt), 2.0f);
    fill(kn, (size_t)(kw * nt), 2.0f);
    fill(vn, (size_t)(kw * nt), 1.0f);
    // expected cache after kv_store
    unsigned char *ke = malloc(cache_elems * esz), *ve = malloc(cache_elems * esz);
    memcpy(ke, k0, cache_elems * esz);
    memcpy(ve, v0, cache_elems * esz);
    for (int t = 0; t < nt; t++) {
        int page = sd.page_table[sd.seq[t] * max_pages + sd.pos[t] / ps], slot = sd.pos[t] % ps;
        size_t off = (((size_t)layer * n_pages + page) * ps + slot) * kw;
        for (int64_t j = 0; j < kw; j++) {
            if (f16) {
                ((fg_f16 *)ke)[off + j] = fg_f32_to_f16(kn[t * kw + j]);
                ((fg_f16 *)ve)[off + j] = fg_f32_to_f16(vn[t * kw + j]);
            } else {
                ((float *)ke)[off + j] = kn[t * kw + j];
                ((float *)ve)[off + j] = vn[t * kw + j];
            }
        }
    }
    // reference attention in double, with ggml's roundings (q and probabilities to F16)
    double *ref = malloc((size_t)(qw * nt) * 8);
    double *sc = malloc(sizeof(double) * 512);
    const float scale = 1.0f / sqrtf((float)hd);
    for (int t = 0; t < nt; t++) {
        const int s = sd.seq[t], n = sd.pos[t] + 1;
        for (int h = 0; h < kc->n_head; h++) {
            const int kvh = h / (kc->n_head / nkv);
            double qv[256];
            for (int d = 0; d < hd; d++) {
                float x = q[t * qw + h * hd + d];
                qv[d] = f16 ? fg_f16_to_f32(fg_f32_to_f16(x)) : x;
            }
            double mx = -INFINITY;
            for (int j = 0; j < n; j++) {
                int page = sd.page_table[s * max_pages + j / ps];
                size_t off = (((size_t)layer * n_pages + page) * ps + j % ps) * kw + (size_t)kvh * hd;
                double dot = 0.0;
                for (int d = 0; d < hd; d++)
                    dot += qv[d] * (f16 ? fg_f16_to_f32(((fg_f16 *)ke)[off + d]) : ((float *)ke)[off + d]);
                sc[j] = dot * scale;
                mx = fmax(mx, sc[j]);
            }
            double sum = 0.0;
            for (int j = 0; j < n; j++)
                sum += (sc[j] = exp(sc[j] - mx));
            for (int d = 0; d < hd; d++)
                ref[t * qw + h * hd + d] = 0.0;
            for (int j = 0; j < n; j++) {
                double p = sc[j] / sum;
                if (f16)
                    p = fg_f16_to_f32(fg_f32_to_f16((float)p));
                int page = sd.page_table[s * max_pages + j / ps];
                size_t off = (((size_t)layer * n_pages + page) * ps + j % ps) * kw + (size_t)kvh * hd;
                for (int d = 0; d < hd; d++)
                    ref[t * qw + h * hd + d] +=
                        p * (f16 ? fg_f16_to_f32(((fg_f16 *)ve)[off + d]) : ((float *)ve)[off + d]);
            }
        }
    }
    float *out[2];
    for (int k = 0; k < 2; k++) {
        fg_backend *be = make_cpu(k_threads[k]);
        assert_int_equal(be->ops->set_step(be, &sd.st), FG_OK);
        int64_t cne[4] = {kw, ps, n_pages, n_layer};
        dev dk = dev_new(be, kc->kv_type, 4, cne), dv = dev_new(be, kc->kv_type, 4, cne);
        dev_put(be, &dk, k0);
        dev_put(be, &dv, v0);
        fg_kv_view kv = {n_layer, n_pages, ps, nkv, hd, kc->kv_type, dk.t, dv.t};
        dev dq = dev_2d(be, FG_TYPE_F32, qw, nt), dkn = dev_2d(be, FG_TYPE_F32, kw, nt),
            dvn = dev_2d(be, FG_TYPE_F32, kw, nt), dd = dev_2d(be, FG_TYPE_F32, qw, nt);
        dev_put(be, &dq, q);
        dev_put(be, &dkn, kn);
        dev_put(be, &dvn, vn);
        fg_status st = be->ops->kv_store(be, &kv, layer, &dkn.t, &dvn.t);
        if (st != FG_OK)
            fail_msg("kv_store: %s", fg_last_error());
        unsigned char *kg = malloc(dk.bytes), *vg = malloc(dv.bytes);
        dev_get(be, &dk, kg);
        dev_get(be, &dv, vg);
        assert_memory_equal(kg, ke, dk.bytes); // KV writes are bit-exact (stale slots kept)
        assert_memory_equal(vg, ve, dv.bytes);
        dev_check_guard(be, &dk, "kv k");
        dev_check_guard(be, &dv, "kv v");
        st = be->ops->attention(be, &dd.t, &dq.t, &kv, layer, kc->n_head, scale);
        if (st != FG_OK)
            fail_msg("attention: %s", fg_last_error());
        out[k] = malloc(dd.bytes);
        dev_get(be, &dd, out[k]);
        dev_check_guard(be, &dd, "attention");
        // kv_copy_page: page a <- page b, all layers
        int pa = sd.page_table[0], pb = sd.page_table[1 % max_pages];
        if (pb >= 0 && pb != pa) {
            assert_int_equal(be->ops->kv_copy_page(be, &kv, pa, pb), FG_OK);
            dev_get(be, &dk, kg);
            for (int l = 0; l < n_layer; l++) {
                size_t pbytes = (size_t)ps * kw * esz;
                assert_memory_equal(kg + ((size_t)l * n_pages + pa) * pbytes,
                                    ke + ((size_t)l * n_pages + pb) * pbytes, pbytes);
            }
        }
        free(kg);
        free(vg);
        dev_free(be, &dk);
        dev_free(be, &dv);
        dev_free(be, &dq);
        dev_free(be, &dkn);
        dev_free(be, &dvn);
        dev_free(be, &dd);
        be->ops->destroy(be);
    }
    char what[160];
    snprintf(what, sizeof(what), "attention %s n_tokens=%d n_head=%d n_head_kv=%d head_dim=%d page=%d",
             f16 ? "f16" : "f32", nt, kc->n_head, nkv, hd, ps);
    if (memcmp(out[0], out[1], (size_t)(qw * nt) * 4) != 0)
        fail_msg("%s: 1 and 3 threads differ", what);
    for (size_t i = 0; i < (size_t)(qw * nt); i++)
        if (!isfinite(out[0][i]))
            fail_msg("%s: non-finite output at %zu", what, i);
    check_nmse(what, out[0], ref, (size_t)(qw * nt), 5e-4);
    // the roundings are emulated in the reference: the only differences are f32 summation
    // order (and the odd probability that lands on the other side of an f16 rounding);
    // dropping the f16 rounding of the probabilities gives ~3e-8 here
    check_nmse(what, out[0], ref, (size_t)(qw * nt), 5e-9);
    free(out[0]);
    free(out[1]);
    free(k0);
    free(v0);
    free(ke);
    free(ve);
    free(q);
    free(kn);
    free(vn);
    free(ref);
    free(sc);
}

static void test_attention(void **state) {
    (void)state;
    static const kv_case cases[] = {
        // n_seqs, n_kv, n_new, n_head, n_head_kv, head_dim, page_size, type
        {1, {1}, {1}, 4, 4, 64, 16, FG_TYPE_F16},                      // 1 token, first position
        {2, {37, 5}, {1, 1}, 8, 4, 64, 16, FG_TYPE_F16},               // 2 decodes, GQA 2, mid-page
        {3, {40, 7, 19}, {3, 2, 2}, 8, 2, 40, 8, FG_TYPE_F16},         // 7 tokens, GQA 4, head_dim 40
        {2, {33, 8}, {4, 4}, 4, 1, 64, 16, FG_TYPE_F16},               // 8 tokens, n_head_kv 1
        {3, {50, 12, 9}, {1, 4, 4}, 6, 6, 72, 16, FG_TYPE_F32},        // 9 tokens, F32 cache
        {2, {45, 20}, {30, 3}, 8, 4, 128, 16, FG_TYPE_F16},            // 33 tokens: prefill after a cached prefix
        {4, {17, 3, 64, 30}, {2, 3, 1, 3}, 4, 2, 64, 32, FG_TYPE_F32}, // 9 tokens, F32, GQA 2
    };
    for (size_t i = 0; i < FG_ARRAY_LEN(cases); i++) {
        attention_case(&cases[i]);
    }
}

// ---------------------------------------------------------------- errors
static void test_errors(void **state) {
    (void)state;
    fg_backend *be = make_cpu(2);
    dev a = dev_2d(be, FG_TYPE_F32, 16, 3), b = dev_2d(be, FG_TYPE_F32, 15, 3);
    assert_int_equal(be->ops->add(be, &a.t, &a.t, &b.t), FG_ERR_INVALID_ARG);
    assert_string_equal(fg_last_error(),
                        "add: b has shape [1,1,3,15], expected [3][16] (rows x cols)");
    // ops that need the step
    fg_rope_params rp = {1, 16, 16, FG_ROPE_NORMAL, 10000.0f, 1.0f, NULL};
    assert_int_equal(be->ops->rope(be, &a.t, &rp), FG_ERR_INVALID_ARG);
    assert_string_equal(fg_last_error(), "rope: no step set (call set_step first)");
    // bad step
    step_data sd;
    simple_step(&sd, 3, 0, 10);
    sd.pos[2] = 7;
    assert_int_equal(be->ops->set_step(be, &sd.st), FG_ERR_INVALID_ARG);
    assert_string_equal(fg_last_error(), "set_step: pos[2] = 7 outside sequence 0's kv length 3");
    simple_step(&sd, 3, 0, 10);
    assert_int_equal(be->ops->set_step(be, &sd.st), FG_OK);
    rp.n_rot = 17;
    assert_int_equal(be->ops->rope(be, &a.t, &rp), FG_ERR_INVALID_ARG);
    assert_string_equal(fg_last_error(),
                        "rope: n_head=1 head_dim=16 n_rot=17 (need n_rot even, 2 <= n_rot <= head_dim <= 512)");
    // matmul: type without kernels, shape mismatch
    int64_t wne[2] = {15, 4};
    dev w = dev_new(be, FG_TYPE_F32, 2, wne), d = dev_2d(be, FG_TYPE_F32, 4, 3);
    assert_int_equal(be->ops->matmul(be, &d.t, &w.t, &a.t, NULL), FG_ERR_INVALID_ARG);
    assert_string_equal(fg_last_error(), "matmul: x rows have 16 elements, w rows 15");
    fg_tensor wi = w.t;
    wi.type = FG_TYPE_I32;
    assert_int_equal(be->ops->matmul(be, &d.t, &wi, &a.t, NULL), FG_ERR_UNSUPPORTED);
    assert_string_equal(fg_last_error(), "matmul: no vec_dot kernel for weight type i32");
    assert_false(be->ops->supports_type(be, FG_TYPE_I32));
    assert_false(be->ops->supports_type(be, 4)); // retired Q4_2
    assert_true(be->ops->supports_type(be, FG_TYPE_F16));
    // get_rows with a token past the table
    int64_t tne[2] = {16, 5};
    dev tab = dev_new(be, FG_TYPE_F32, 2, tne);
    sd.tokens[0] = 0;
    sd.tokens[1] = 5;
    sd.tokens[2] = 4;
    assert_int_equal(be->ops->set_step(be, &sd.st), FG_OK);
    assert_int_equal(be->ops->get_rows(be, &a.t, &tab.t), FG_ERR_INVALID_ARG);
    assert_string_equal(fg_last_error(), "get_rows: token 1 of the step is id 5, table has 5 rows");
    // KV: page id out of range, bad n_head
    int64_t cne[4] = {16, 4, 2, 1};
    dev kc = dev_new(be, FG_TYPE_F16, 4, cne), vc = dev_new(be, FG_TYPE_F16, 4, cne);
    fg_kv_view kv = {1, 2, 4, 1, 16, FG_TYPE_F16, kc.t, vc.t};
    sd.page_table[0] = 2;
    assert_int_equal(be->ops->set_step(be, &sd.st), FG_OK);
    assert_int_equal(be->ops->kv_store(be, &kv, 0, &a.t, &a.t), FG_ERR_INVALID_ARG);
    assert_string_equal(fg_last_error(), "kv_store: sequence 0 page_table[0] = 2 out of range [0, 2)");
    sd.page_table[0] = 1;
    assert_int_equal(be->ops->set_step(be, &sd.st), FG_OK);
    assert_int_equal(be->ops->kv_store(be, &kv, 1, &a.t, &a.t), FG_ERR_INVALID_ARG);
    assert_string_equal(fg_last_error(), "kv_store: layer 1 out of range [0, 1)");
    assert_int_equal(be->ops->kv_store(be, &kv, 0, &a.t, &a.t), FG_OK);
    assert_int_equal(be->ops->attention(be, &d.t, &a.t, &kv, 0, 1, 0.25f), FG_ERR_INVALID_ARG);
    assert_string_equal(fg_last_error(), "attention: dst has shape [1,1,3,4], expected [3][16] (rows x cols)");
    assert_int_equal(be->ops->kv_copy_page(be, &kv, 0, 2), FG_ERR_INVALID_ARG);
    assert_string_equal(fg_last_error(), "kv_copy_page: pages 0 <- 2 out of range [0, 2)");
    fg_kv_view bad = kv;
    bad.type = FG_TYPE_Q8_0;
    assert_int_equal(be->ops->attention(be, &a.t, &a.t, &bad, 0, 1, 0.25f), FG_ERR_INVALID_ARG);
    assert_string_equal(fg_last_error(), "attention: kv type must be f16 or f32, found q8_0");
    assert_int_equal(be->ops->sync(be), FG_OK);
    dev *all[] = {&a, &b, &w, &d, &tab, &kc, &vc};
    for (size_t i = 0; i < FG_ARRAY_LEN(all); i++)
        dev_free(be, all[i]);
    be->ops->destroy(be);
}

int main(void) {
    printf("test_backend_cpu: seed 0x%llx, quant kernels %s\n", (unsigned long long)SEED,
           fg_quant_simd_name());
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_registry),        cmocka_unit_test(test_buffers),
        cmocka_unit_test(test_tensor_helpers),  cmocka_unit_test(test_matmul_all_types),
        cmocka_unit_test(test_rmsnorm),         cmocka_unit_test(test_add_swiglu),
        cmocka_unit_test(test_rope),            cmocka_unit_test(test_get_rows_gather),
        cmocka_unit_test(test_attention),       cmocka_unit_test(test_errors),
    };
    return cmocka_run_group_tests_name("backend_cpu", tests, NULL, NULL);
}
