// test_backend_cpu.c - what is particular to the CPU backend and the shared checked wrappers:
// the registry, buffers and their range errors, the tensor helpers, the scalar/SIMD kernel
// choice per backend instance, and the exact error of each validation in backend.c (bad
// steps, shapes, types, pages, ops outside a step). The ops themselves are tested on every
// backend by test_backend_ops.c.
// forge-test-modules: registry backend quant base
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "backend/backend.h"
#include "base/half.h"
#include "base/status.h"
#include "base/util.h"
#include "backend/cpu/cpu_kernels.h"
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
    fg_backend_opts o = {n_threads, 0, false};
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
static void dev_free(fg_backend *be, dev *d) { be->ops->buf_free(be, d->buf); }



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
    fg_backend_opts bad = {-2, 0, false};
    fg_backend *b2 = NULL;
    assert_int_equal(fg_backend_cpu_create(&bad, &b2), FG_ERR_INVALID_ARG);
    assert_string_equal(fg_last_error(), "cpu backend: n_threads = -2 (expected 0..1024, 0 = all cores)");
    fg_backend_opts all = {0, 0, false};
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

// ---------------------------------------------------------------- kernels per instance
// Two CPU backends in one process, one with the scalar reference kernels (use_ref), one with
// the SIMD ones: each instance keeps its own choice (no process-wide switch), and both agree
// with the reference vec_dot (bit for bit for use_ref, within the summation order otherwise).
static void test_use_ref_per_instance(void **state) {
    (void)state;
    const int64_t n_in = 512, n_out = 9, rows = 3;
    float wf[512 * 9], x[512 * 3];
    fill(wf, FG_ARRAY_LEN(wf), 1.0f);
    fill(x, FG_ARRAY_LEN(x), 1.0f);
    const fg_type_traits *tr = fg_type_traits_get(FG_TYPE_Q4_K);
    const fg_type_traits *vt = fg_type_traits_get(tr->vec_dot_type);
    size_t wrow = (size_t)(n_in / tr->blck_size) * tr->type_size, arow = (size_t)(n_in / vt->blck_size) * vt->type_size;
    unsigned char wq[9 * 144 * 2], xa[292 * 2];
    for (int64_t o = 0; o < n_out; o++)
        tr->from_float(wf + o * n_in, wq + o * wrow, n_in);
    float ref[27];
    for (int64_t r = 0; r < rows; r++) {
        fg_quantize_row(tr->vec_dot_type, x + r * n_in, xa, n_in);
        for (int64_t o = 0; o < n_out; o++)
            tr->vec_dot(n_in, &ref[r * n_out + o], wq + o * wrow, xa);
    }
    (void)arow;
    fg_backend *bes[2];
    fg_backend_opts ro = {2, 0, true}, fo = {2, 0, false};
    assert_int_equal(fg_backend_cpu_create(&ro, &bes[0]), FG_OK);
    assert_int_equal(fg_backend_cpu_create(&fo, &bes[1]), FG_OK);
    assert_non_null(strstr(fg_backend_describe(bes[0]), "scalar reference"));
    for (int k = 0; k < 2; k++) {
        fg_backend *be = bes[k];
        int64_t wne[2] = {n_in, n_out};
        dev dw = dev_new(be, FG_TYPE_Q4_K, 2, wne), dx = dev_2d(be, FG_TYPE_F32, n_in, rows),
            dd = dev_2d(be, FG_TYPE_F32, n_out, rows);
        dev_put(be, &dw, wq);
        dev_put(be, &dx, x);
        assert_int_equal(fg_op_matmul(be, &dd.t, &dw.t, &dx.t, NULL, false), FG_OK);
        float got[27];
        dev_get(be, &dd, got);
        if (k == 0)
            assert_memory_equal(got, ref, sizeof got);
        else
            for (int i = 0; i < 27; i++)
                assert_true(fabsf(got[i] - ref[i]) <= 1e-4f * (1.0f + fabsf(ref[i])));
        dev_free(be, &dw);
        dev_free(be, &dx);
        dev_free(be, &dd);
    }
    fg_backend_destroy(bes[0]);
    fg_backend_destroy(bes[1]);
}

// ---------------------------------------------------------------- errors
static void test_errors(void **state) {
    (void)state;
    fg_backend *be = make_cpu(2);
    dev a = dev_2d(be, FG_TYPE_F32, 16, 3), b = dev_2d(be, FG_TYPE_F32, 15, 3);
    assert_int_equal(fg_op_add(be, &a.t, &a.t, &b.t), FG_ERR_INVALID_ARG);
    assert_string_equal(fg_last_error(),
                        "add: b has shape [1,1,3,15], expected [3][16] (rows x cols)");
    // ops that need the step
    fg_rope_params rp = {1, 16, 16, FG_ROPE_NORMAL, 10000.0f, 1.0f, NULL};
    assert_int_equal(fg_op_rope(be, &a.t, &rp), FG_ERR_INVALID_ARG);
    assert_string_equal(fg_last_error(), "rope: no step set (call step_begin first)");
    // bad step
    fg_backend_limits lim = {8, 2, 16, 1024, 8, 64, 64, 0, 0};
    assert_int_equal(fg_backend_reserve(be, &lim), FG_OK);
    step_data sd;
    simple_step(&sd, 3, 0, 10);
    sd.pos[2] = 7;
    assert_int_equal(fg_step_begin(be, &sd.st), FG_ERR_INVALID_ARG);
    assert_string_equal(fg_last_error(), "step_begin: pos[2] = 7 outside sequence 0's kv length 3");
    simple_step(&sd, 3, 0, 10);
    assert_int_equal(fg_step_begin(be, &sd.st), FG_OK);
    rp.n_rot = 17;
    assert_int_equal(fg_op_rope(be, &a.t, &rp), FG_ERR_INVALID_ARG);
    assert_string_equal(fg_last_error(),
                        "rope: n_head=1 head_dim=16 n_rot=17 (need n_rot even, 2 <= n_rot <= head_dim <= 512)");
    // matmul: type without kernels, shape mismatch
    int64_t wne[2] = {15, 4};
    dev w = dev_new(be, FG_TYPE_F32, 2, wne), d = dev_2d(be, FG_TYPE_F32, 4, 3);
    assert_int_equal(fg_op_matmul(be, &d.t, &w.t, &a.t, NULL, false), FG_ERR_INVALID_ARG);
    assert_string_equal(fg_last_error(), "matmul: x rows have 16 elements, w rows 15");
    fg_tensor wi = w.t;
    wi.type = FG_TYPE_I32;
    assert_int_equal(fg_op_matmul(be, &d.t, &wi, &a.t, NULL, false), FG_ERR_UNSUPPORTED);
    assert_string_equal(fg_last_error(), "matmul: no vec_dot kernel for weight type i32");
    assert_false(fg_backend_supports(be, FG_OP_MATMUL, FG_TYPE_I32));
    assert_false(fg_backend_supports(be, FG_OP_MATMUL, 4)); // retired Q4_2
    assert_true(fg_backend_supports(be, FG_OP_MATMUL, FG_TYPE_F16));
    // get_rows with a token past the table
    int64_t tne[2] = {16, 5};
    dev tab = dev_new(be, FG_TYPE_F32, 2, tne);
    sd.tokens[0] = 0;
    sd.tokens[1] = 5;
    sd.tokens[2] = 4;
    fg_step_abort(be);
    assert_int_equal(fg_step_begin(be, &sd.st), FG_OK);
    assert_int_equal(fg_op_get_rows(be, &a.t, &tab.t), FG_ERR_INVALID_ARG);
    assert_string_equal(fg_last_error(), "get_rows: token 1 of the step is id 5, table has 5 rows");
    // KV: page id out of range, bad n_head
    int64_t cne[4] = {16, 4, 2, 1};
    dev kc = dev_new(be, FG_TYPE_F16, 4, cne), vc = dev_new(be, FG_TYPE_F16, 4, cne);
    fg_kv_view kv = {1, 2, 4, 1, 16, FG_TYPE_F16, kc.t, vc.t};
    sd.page_table[0] = 2;
    fg_step_abort(be);
    assert_int_equal(fg_step_begin(be, &sd.st), FG_OK);
    assert_int_equal(fg_op_kv_store(be, &kv, 0, &a.t, &a.t), FG_ERR_INVALID_ARG);
    assert_string_equal(fg_last_error(), "kv_store: sequence 0 page_table[0] = 2 out of range [0, 2)");
    sd.page_table[0] = 1;
    fg_step_abort(be);
    assert_int_equal(fg_step_begin(be, &sd.st), FG_OK);
    assert_int_equal(fg_op_kv_store(be, &kv, 1, &a.t, &a.t), FG_ERR_INVALID_ARG);
    assert_string_equal(fg_last_error(), "kv_store: layer 1 out of range [0, 1)");
    assert_int_equal(fg_op_kv_store(be, &kv, 0, &a.t, &a.t), FG_OK);
    fg_attn_params ap = {0, 1, 0.25f, true};
    assert_int_equal(fg_op_attention(be, &d.t, &a.t, &kv, &ap), FG_ERR_INVALID_ARG);
    assert_string_equal(fg_last_error(), "attention: dst has shape [1,1,3,4], expected [3][16] (rows x cols)");
    fg_kv_view bad = kv;
    bad.type = FG_TYPE_Q4_0;
    assert_int_equal(fg_op_attention(be, &a.t, &a.t, &bad, &ap), FG_ERR_INVALID_ARG);
    assert_string_equal(fg_last_error(), "attention: kv type must be f16, f32 or q8_0, found q4_0");
    bad.type = FG_TYPE_Q8_0; // head_dim 16: not whole Q8_0 blocks
    assert_int_equal(fg_op_attention(be, &a.t, &a.t, &bad, &ap), FG_ERR_UNSUPPORTED);
    assert_string_equal(fg_last_error(), "attention: a q8_0 kv cache needs head_dim a multiple of 32, found 16");
    assert_int_equal(fg_op_kv_store(be, &bad, 0, &a.t, &a.t), FG_ERR_UNSUPPORTED);
    assert_string_equal(fg_last_error(), "kv_store: a q8_0 kv cache needs head_dim a multiple of 32, found 16");
    // page copies happen between steps
    assert_int_equal(fg_kv_copy_page_checked(be, &kv, 0, 1), FG_ERR_INVALID_ARG);
    assert_string_equal(fg_last_error(), "kv_copy_page: not allowed inside a step (call step_end first)");
    assert_int_equal(fg_step_end(be), FG_OK);
    fg_step_result res;
    assert_int_equal(fg_step_wait(be, &res), FG_OK);
    assert_int_equal(res.bad_row, -1);
    assert_int_equal(fg_kv_copy_page_checked(be, &kv, 0, 2), FG_ERR_INVALID_ARG);
    assert_string_equal(fg_last_error(), "kv_copy_page: pages 0 <- 2 out of range [0, 2)");
    assert_int_equal(be->ops->sync(be), FG_OK);
    dev *all[] = {&a, &b, &w, &d, &tab, &kc, &vc};
    for (size_t i = 0; i < FG_ARRAY_LEN(all); i++)
        dev_free(be, all[i]);
    be->ops->destroy(be);
}

int main(void) {
    printf("test_backend_cpu: seed 0x%llx, cpu kernels %s\n", (unsigned long long)SEED, fg_cpu_simd_name());
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_registry),        cmocka_unit_test(test_buffers),
        cmocka_unit_test(test_tensor_helpers),  cmocka_unit_test(test_use_ref_per_instance),
        cmocka_unit_test(test_errors),
    };
    return cmocka_run_group_tests_name("backend_cpu", tests, NULL, NULL);
}
