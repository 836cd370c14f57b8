// test_backend_ops.c - every op of the backend interface x weight type x shape against plain
// scalar references written here (double precision), on each backend the build has: the CPU
// (run with 1 and 3 threads, which must agree bit for bit) and, in a CUDA build, the GPU
// (SKIPPED loudly when no GPU is usable). Inputs are random from a printed seed (FORGE_SEED
// overrides it); every output is poisoned with NaN before the op and 64 guard bytes after it
// must survive; comparisons are NaN-safe (!(err <= tol)). Shapes: odd row counts (1, 2, 3,
// 7, 8, 9, 33, 511, 512), columns that are no multiple of any tile, several sequences per
// step with scattered and shared pages, GQA 1/4/8 and multi-query, page sizes 7 and 16,
// causal and non-causal attention, a 2,100-token sequence; the embedding-model ops (layernorm,
// gelu, add_rows, pool: issue 14).
// Tolerances (per op; the reference states what it emulates):
//   get_rows, gather_out, kv_store, kv_copy_page, CPU convert: bit-exact
//   add_rows: bit-exact; add, swiglu, gelu, pool: |d| <= 1e-6 + 1e-5 |ref|; rmsnorm, rope,
//   layernorm: NMSE 1e-6 (+ the element bound for rmsnorm and layernorm); matmul: NMSE 5e-4 against double dequantized weights x f32 activations (the
//   activation conversion is the only loss: ~1.5e-5 measured for 8-bit), and on the CPU 1e-9
//   against the reference vec_dot on the same converted activations (summation order only);
//   attention: NMSE 5e-4 against a double reference with ggml's f16 roundings, 5e-9 on the CPU;
//   a Q8_0 cache (q on the reference's Q8_0 grid, f32 probabilities): 1e-9 on every backend.
// forge-test-modules: registry backend quant base
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "backend/backend.h"
#include "backend/cpu/cpu_kernels.h"
#include "backend/sample_ref.h"
#include "base/half.h"
#include "base/status.h"
#include "base/util.h"
#include "quant/blocks.h"
#include "quant/quant.h"

#include <fnmatch.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define GUARD 64
#define GUARD_BYTE 0xA5
#define POISON_BYTE 0xFF // 0xFFFFFFFF: a NaN in every float an op forgets to write

static uint64_t g_seed = 0x0b5eedf00dULL;
// FORGE_OPS_QUICK=1: fewer types and shapes (for runs under compute-sanitizer, which is slow);
// FORGE_TEST_FILTER=patterns: only the tests whose name matches one of the comma-separated fnmatch
// patterns (e.g. "k_cuda*", "*_variants,*rope_kv_attention").
static bool g_quick;
static uint64_t g_rng;
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

// ---------------------------------------------------------------- targets
typedef struct target {
    const char *name; // "cpu", "cuda"
    bool cpu;         // two instances (1 and 3 threads) that must agree bit for bit
} target;
static const target k_cpu = {"cpu", true};
#ifdef FG_HAVE_CUDA
static const target k_cuda = {"cuda", false};
#endif

static int n_instances(const target *tg) { return tg->cpu ? 2 : 1; }

// Instance i of the target; a GPU target that cannot start SKIPS the test (loudly).
static fg_backend *open_backend(const target *tg, int i) {
    fg_backend *be = NULL;
    fg_backend_opts o = {tg->cpu ? (i == 0 ? 1 : 3) : 0, 0, false};
    fg_status st = fg_backend_create(tg->name, &o, &be);
    if (!tg->cpu && (st == FG_ERR_DEVICE || st == FG_ERR_UNSUPPORTED)) {
        fprintf(stderr, "SKIP (no GPU): %s backend: %s\n", tg->name, fg_last_error());
        skip();
    }
    if (st != FG_OK)
        fail_msg("%s backend: %s", tg->name, fg_last_error());
    return be;
}

// Called first in each test: skips before anything is allocated when the GPU is missing.
static void need_target(const target *tg) { fg_backend_destroy(open_backend(tg, 0)); }

// Sizes every backend must be ready for (tests use small ones).
static void reserve(fg_backend *be, int max_tokens, int max_seqs, int max_pages, int max_kv, int64_t max_cols) {
    fg_backend_limits lim = {max_tokens, max_seqs, max_pages, max_kv, 64, 512, max_cols, (int64_t)1 << 20, 0};
    if (fg_backend_reserve(be, &lim) != FG_OK)
        fail_msg("reserve: %s", fg_last_error());
}

// ---------------------------------------------------------------- device tensors
// A tensor in its own backend buffer: its bytes poisoned, then GUARD guard bytes.
typedef struct dev {
    fg_buffer *buf;
    fg_tensor t;
    size_t bytes;
} dev;

static dev dev_new(fg_backend *be, uint32_t type, int n_dims, const int64_t *ne) {
    dev d;
    fg_tensor probe = fg_tensor_view(NULL, NULL, 0, type, n_dims, ne);
    d.bytes = fg_tensor_nbytes(&probe);
    if (be->ops->buf_alloc(be, d.bytes + GUARD, &d.buf) != FG_OK)
        fail_msg("buf_alloc: %s", fg_last_error());
    void *base = be->ops->buf_base(d.buf);
    d.t = fg_tensor_view(d.buf, base, 0, type, n_dims, ne);
    int64_t all = (int64_t)(d.bytes + GUARD);
    fg_tensor whole = fg_tensor_view(d.buf, base, 0, FG_TYPE_I8, 1, &all);
    unsigned char *g = malloc(d.bytes + GUARD);
    memset(g, POISON_BYTE, d.bytes);
    memset(g + d.bytes, GUARD_BYTE, GUARD);
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
static void *dev_get(fg_backend *be, const dev *d) {
    void *p = malloc(d->bytes);
    assert_int_equal(be->ops->sync(be), FG_OK);
    if (be->ops->download(be, &d->t, 0, p, d->bytes) != FG_OK)
        fail_msg("download: %s", fg_last_error());
    return p;
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

// ---------------------------------------------------------------- comparisons
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
    for (size_t i = 0; i < n; i++)
        if (!isfinite(got[i]))
            fail_msg("%s: element %zu is %g (unwritten or non-finite), expected %.6g", what, i, (double)got[i],
                     ref[i]);
    double e = nmse(got, ref, n);
    if (getenv("FORGE_TEST_VERBOSE"))
        print_message("%s: nmse %.3g (tol %.3g)\n", what, e, tol);
    if (!(e <= tol)) {
        size_t worst = 0;
        double wd = -1;
        int shown = 0;
        for (size_t i = 0; i < n; i++) {
            double d = fabs((double)got[i] - ref[i]);
            if (d > wd) {
                wd = d;
                worst = i;
            }
            if (d > 1e-3 * (1.0 + fabs(ref[i])) && shown < 5) {
                print_message("  [%zu] got %.7g expected %.7g\n", i, (double)got[i], ref[i]);
                shown++;
            }
        }
        fail_msg("%s: nmse %.3g > %.3g (worst at %zu: got %.7g expected %.7g)", what, e, tol, worst,
                 (double)got[worst], ref[worst]);
    }
}
static void check_close(const char *what, const float *got, const double *ref, size_t n) {
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)got[i] - ref[i]);
        if (!(e <= 1e-6 + 1e-5 * fabs(ref[i])))
            fail_msg("%s: element %zu: got %.9g, expected %.9g", what, i, (double)got[i], ref[i]);
    }
}
static void check_same(const char *what, const void *a, const void *b, size_t n) {
    if (memcmp(a, b, n) != 0) {
        const unsigned char *x = a, *y = b;
        size_t i = 0;
        while (x[i] == y[i])
            i++;
        fail_msg("%s: differs at byte %zu of %zu (0x%02x, expected 0x%02x)", what, i, n, x[i], y[i]);
    }
}

// ---------------------------------------------------------------- steps
// A step over n_seqs sequences: sequence s ends at n_kv[s] with its last n_new[s] tokens new;
// pages are scattered (a shuffled pool); with share_prefix every sequence maps its first
// `share` pages to the same pages as sequence 0 (a shared, read-only prefix).
typedef struct step_data {
    fg_step st;
    int32_t *tokens, *pos, *seq, *out_rows;
    int32_t n_kv[16];
    int32_t *page_table; // [n_seqs][max_pages]
    int max_pages, n_pages, page_size;
} step_data;

static void make_step(step_data *sd, int n_seqs, const int *n_kv, const int *n_new, int page_size, int n_vocab,
                      int share) {
    memset(sd, 0, sizeof *sd);
    assert_true(n_seqs <= 16);
    int nt = 0, max_pages = 1, total_pages = 0;
    for (int s = 0; s < n_seqs; s++) {
        nt += n_new[s];
        int need = (n_kv[s] + page_size - 1) / page_size;
        max_pages = FG_MAX(max_pages, need);
        total_pages += need;
    }
    sd->max_pages = max_pages;
    sd->page_size = page_size;
    sd->n_pages = total_pages + 3; // a few pages nobody uses
    sd->tokens = malloc(sizeof(int32_t) * nt);
    sd->pos = malloc(sizeof(int32_t) * nt);
    sd->seq = malloc(sizeof(int32_t) * nt);
    sd->out_rows = malloc(sizeof(int32_t) * nt);
    sd->page_table = malloc(sizeof(int32_t) * n_seqs * max_pages);
    int *perm = malloc(sizeof(int) * sd->n_pages);
    for (int i = 0; i < sd->n_pages; i++)
        perm[i] = i;
    for (int i = sd->n_pages - 1; i > 0; i--) {
        int j = rnd_int(i + 1), t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    int next = 0, t = 0;
    for (int s = 0; s < n_seqs; s++) {
        sd->n_kv[s] = n_kv[s];
        int need = (n_kv[s] + page_size - 1) / page_size;
        for (int j = 0; j < max_pages; j++) {
            int p = -1;
            if (j < need)
                p = (s > 0 && j < share && j < (n_kv[0] + page_size - 1) / page_size) ? sd->page_table[j]
                                                                                         : perm[next++];
            sd->page_table[s * max_pages + j] = p < 0 ? 0 : p;
        }
        for (int i = 0; i < n_new[s]; i++, t++) {
            sd->tokens[t] = rnd_int(n_vocab);
            sd->pos[t] = n_kv[s] - n_new[s] + i;
            sd->seq[t] = s;
        }
        sd->out_rows[sd->st.n_out++] = t - 1;
    }
    free(perm);
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
static void free_step(step_data *sd) {
    free(sd->tokens);
    free(sd->pos);
    free(sd->seq);
    free(sd->out_rows);
    free(sd->page_table);
}
static void simple_step(step_data *sd, int n, int p0, int n_vocab) {
    int n_kv = p0 + n, n_new = n;
    make_step(sd, 1, &n_kv, &n_new, 64, n_vocab, 0);
}
static void begin(fg_backend *be, step_data *sd) {
    if (fg_step_begin(be, &sd->st) != FG_OK)
        fail_msg("step_begin: %s", fg_last_error());
}
static void end(fg_backend *be) {
    if (fg_step_end(be) != FG_OK)
        fail_msg("step_end: %s", fg_last_error());
    fg_step_result r;
    if (fg_step_wait(be, &r) != FG_OK)
        fail_msg("step_wait: %s", fg_last_error());
}

// ---------------------------------------------------------------- matmul, convert
static bool weight_type(uint32_t type) {
    const fg_type_traits *t = fg_type_traits_get(type);
    return t && t->is_weight && t->vec_dot && t->to_float && t->from_float;
}

static int g_deviations; // GPU matmul cases off the reference's arithmetic (test_matmul_all_types)
static int g_int_cases, g_f16_cases; // GPU quantized cases per arithmetic (test_matmul_all_types)

static void matmul_case(const target *tg, uint32_t type, int64_t n_in, int64_t n_out, int64_t n_rows, bool with_bias,
                        bool strided_x, bool accumulate, bool preconvert) {
    const fg_type_traits *ref = fg_type_traits_ref(type);
    const fg_type_traits *vref = fg_type_traits_ref(ref->vec_dot_type);
    size_t wrow = (size_t)(n_in / ref->blck_size) * ref->type_size;
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
    float *bias = malloc((size_t)n_out * sizeof(float)), *d0 = malloc((size_t)(n_out * n_rows) * sizeof(float));
    fill(bias, (size_t)n_out, 0.5f);
    fill(d0, (size_t)(n_out * n_rows), 3.0f);
    // reference 1 (math): double dot of the dequantized weights and the f32 activations
    // reference 2 (semantics, CPU): the scalar reference vec_dot on the activation row converted
    // to vec_dot_type, i.e. what ggml computes; only the summation order may differ.
    double *r1 = malloc((size_t)(n_out * n_rows) * sizeof(double));
    double *r2 = malloc((size_t)(n_out * n_rows) * sizeof(double));
    // reference 3 (the GPU's library GEMM for many rows of a quantized weight): the dequantized
    // weights and the activations, each rounded to F16, products summed; the activations are
    // the 8-bit values d * q when the rows come converted (act_type, as the forward pass
    // converts them), else the F32 rows themselves
    double *r3 = malloc((size_t)(n_out * n_rows) * sizeof(double));
    float *xh = malloc((size_t)n_in * sizeof(float));
    size_t arow = (size_t)(n_in / vref->blck_size) * vref->type_size;
    unsigned char *xa = malloc(arow);
    for (int64_t r = 0; r < n_rows; r++) {
        const float *xr = x + r * xcols;
        if (ref->vec_dot_type == FG_TYPE_F32)
            memcpy(xa, xr, arow);
        else
            fg_quantize_row(ref->vec_dot_type, xr, xa, n_in);
        for (int64_t i = 0; i < n_in; i++) {
            float v = xr[i];
            if (preconvert && ref->vec_dot_type == FG_TYPE_Q8_0) {
                const fg_block_q8_0 *b = (const fg_block_q8_0 *)xa + i / 32;
                v = fg_f16_to_f32(b->d) * (float)b->qs[i % 32];
            } else if (preconvert && ref->vec_dot_type == FG_TYPE_Q8_1) {
                const fg_block_q8_1 *b = (const fg_block_q8_1 *)xa + i / 32;
                v = fg_f16_to_f32(b->d) * (float)b->qs[i % 32];
            } else if (preconvert && ref->vec_dot_type == FG_TYPE_Q8_K) {
                const fg_block_q8_k *b = (const fg_block_q8_k *)xa + i / 256;
                v = b->d * (float)b->qs[i % 256];
            }
            xh[i] = fg_f16_to_f32(fg_f32_to_f16(v));
        }
        for (int64_t o = 0; o < n_out; o++) {
            double s = 0.0;
            for (int64_t i = 0; i < n_in; i++)
                s += (double)wd[o * n_in + i] * xr[i];
            float s2;
            ref->vec_dot(n_in, &s2, wq + (size_t)o * wrow, xa);
            double s3 = 0.0;
            for (int64_t i = 0; i < n_in; i++)
                s3 += (double)fg_f16_to_f32(fg_f32_to_f16(wd[o * n_in + i])) * xh[i];
            double add = (with_bias ? bias[o] : 0.0) + (accumulate ? d0[r * n_out + o] : 0.0);
            r1[r * n_out + o] = s + add;
            r3[r * n_out + o] = s3 + add;
            r2[r * n_out + o] = (double)((with_bias ? s2 + bias[o] : s2) + (accumulate ? d0[r * n_out + o] : 0.0f));
        }
    }
    char what[192];
    snprintf(what, sizeof what, "%s matmul %s n_in=%lld n_out=%lld rows=%lld%s%s%s%s", tg->name, ref->name,
             (long long)n_in, (long long)n_out, (long long)n_rows, with_bias ? " bias" : "",
             strided_x ? " strided" : "", accumulate ? " accumulate" : "", preconvert ? " converted" : "");
    float *out[2] = {NULL, NULL};
    for (int k = 0; k < n_instances(tg); k++) {
        fg_backend *be = open_backend(tg, k);
        reserve(be, (int)n_rows, 1, 1, 1, xcols);
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
        if (accumulate)
            dev_put(be, &dd, d0);
        dev da = {0};
        fg_tensor *xin = &xv;
        uint32_t at = fg_backend_act_type(be, type, n_rows);
        if (preconvert && at != FG_TYPE_F32) {
            da = dev_2d(be, at, n_in, n_rows);
            if (fg_op_convert(be, &da.t, &xv) != FG_OK)
                fail_msg("%s: convert to %s: %s", what, fg_type_name(at), fg_last_error());
            xin = &da.t;
        }
        fg_status st = fg_op_matmul(be, &dd.t, &dw.t, xin, with_bias ? &db.t : NULL, accumulate);
        if (st != FG_OK)
            fail_msg("%s: %s", what, fg_last_error());
        out[k] = dev_get(be, &dd);
        dev_check_guard(be, &dd, what);
        dev_free(be, &dw);
        dev_free(be, &dx);
        dev_free(be, &db);
        dev_free(be, &dd);
        if (da.buf)
            dev_free(be, &da);
        fg_backend_destroy(be);
    }
    if (tg->cpu)
        check_same(what, out[0], out[1], (size_t)(n_out * n_rows) * sizeof(float)); // 1 vs 3 threads
    check_nmse(what, out[0], r1, (size_t)(n_out * n_rows), 5e-4);
    if (tg->cpu)
        check_nmse(what, out[0], r2, (size_t)(n_out * n_rows), 1e-9);
    else if (ref->is_quantized) {
        // the GPU's integer kernels keep the reference's arithmetic (any row count); the library
        // GEMM that takes many rows (CUDA, FORGE_CUDA_QBLAS_ROWS) multiplies the F16-rounded
        // values exactly and sums in f32: one of the two, each within its summation-order noise
        double e = nmse(out[0], r2, (size_t)(n_out * n_rows));
        double e3 = nmse(out[0], r3, (size_t)(n_out * n_rows));
        if (e <= 1e-8)
            g_int_cases++;
        else if (e3 <= 1e-10)
            g_f16_cases++;
        else { // counted, every case reported, failed at the end of the test
            print_message("DEVIATES from the reference's arithmetic and from the F16 GEMM's: %s: nmse %.3g > 1e-8, "
                          "%.3g > 1e-10\n", what, e, e3);
            g_deviations++;
        }
    }
    free(out[0]);
    free(out[1]);
    free(wf);
    free(wq);
    free(wd);
    free(x);
    free(bias);
    free(d0);
    free(r1);
    free(r2);
    free(r3);
    free(xh);
    free(xa);
}

static bool in_types(uint32_t type, const uint32_t *types, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (types[i] == type)
            return true;
    return false;
}

static void test_matmul_all_types(void **state) {
    const target *tg = *state;
    need_target(tg);
    static const int rows[] = {1, 2, 3, 7, 8, 9, 33};
    static const uint32_t quick_types[] = {FG_TYPE_F16, FG_TYPE_Q4_0, FG_TYPE_Q4_K, FG_TYPE_Q6_K};
    int n_types = 0;
    char tested[512] = "";
    g_deviations = 0;
    g_int_cases = g_f16_cases = 0;
    fg_backend *be = open_backend(tg, 0);
    for (uint32_t type = 0; type < FG_TYPE_COUNT; type++) {
        if (!weight_type(type))
            continue;
        if (g_quick && !in_types(type, quick_types, FG_ARRAY_LEN(quick_types)))
            continue;
        if (!fg_backend_supports(be, FG_OP_MATMUL, type))
            fail_msg("%s: matmul does not support weight type %s", tg->name, fg_type_name(type));
        const fg_type_traits *tr = fg_type_traits_get(type);
        const fg_type_traits *vt = fg_type_traits_get(tr->vec_dot_type);
        int64_t blk = FG_MAX(tr->blck_size, vt->blck_size);
        int64_t n_in = blk == 1 ? 67 : (blk == 32 ? 7 * 32 : 2 * 256);
        for (size_t i = 0; i < FG_ARRAY_LEN(rows); i++)
            if (!g_quick || i % 3 == 0)
                matmul_case(tg, type, n_in, 37, rows[i], i % 2 == 0, i == 3, i == 4, i == 5);
        // both sides of any matvec/matmul crossover, threaded on the CPU
        matmul_case(tg, type, blk == 1 ? 515 : 4 * 256, 131, 9, true, false, false, true);
        // (one row over 17 super-blocks: the K-quant matvec's lanes take a second batch of chunks)
        matmul_case(tg, type, blk == 1 ? 515 : blk == 256 ? 17 * 256 : 4 * 256, 300, 1, false, false, true, false);
        // past the batched matvec (16 rows on CUDA): the integer tiled kernels' ragged tiles
        matmul_case(tg, type, blk == 1 ? 131 : 2 * 256, 131, 65, true, false, true, true);
        // few tiles over a long K: the tensor-core kernel splits K (partial sums after the
        // converted rows in the arena: F32 rows converted in the second case)
        matmul_case(tg, type, blk == 1 ? 131 : 8 * 256, 131, 65, true, false, true, true);
        matmul_case(tg, type, blk == 1 ? 131 : 8 * 256, 131, 70, false, true, false, false);
        if (!g_quick) {
            matmul_case(tg, type, blk == 1 ? 131 : 3 * 256, 259, 200, true, true, false, true);
            matmul_case(tg, type, blk == 1 ? 131 : 256, 37, 511, true, true, false, true);
            matmul_case(tg, type, blk == 1 ? 131 : 256, 64, 512, false, false, true, false);
        }
        n_types++;
        strcat(tested, " ");
        strcat(tested, tr->name);
    }
    fg_backend_destroy(be);
    print_message("%s: matmul tested for %d types:%s\n", tg->name, n_types, tested);
    if (!tg->cpu)
        print_message("%s: quantized cases in the reference's integer arithmetic: %d, in the F16 GEMM's: %d\n",
                      tg->name, g_int_cases, g_f16_cases);
    if (g_deviations)
        fail_msg("%s: %d matmul cases off the reference's arithmetic (listed above)", tg->name, g_deviations);
    assert_int_equal(n_types, g_quick ? (int)FG_ARRAY_LEN(quick_types) : 14); // all 14 weight types
}

// The integer tiled kernels at the row counts of batched decode, whatever the defaults send
// there: on CUDA the matvec's passes and the library GEMM are switched off (FORGE_CUDA_MV_ROWS=8,
// FORGE_CUDA_QBLAS_ROWS=0), so every case from 9 rows takes the tensor-core kernel (dp4a where
// the device has no mma), K split where its tiles are few (n_in 2,048: 4 splits), whole where
// K is short. Each case must keep the reference's integer arithmetic. The CPU has no such
// paths: skipped there.
// The tiled kernels at the row counts of batched decode (see above), through the path `path`
// names: the integer mma kernel (TILES_MMA), the F16 tensor-core kernel (TILES_F16), mqr
// (TILES_MQR: Q4_K and Q6_K alone, at 9..121 rows; FORGE_CUDA_MQR off otherwise) or the library
// GEMM over F16 copies of the weights (TILES_BLAS: from 9 rows, the copies in 1 MiB chunks, so
// that the 259-row weights take two); every case must take that path's arithmetic: the
// reference's integers (mma, mqr) or the F16 GEMM's (f16, blas).
// TILES_MQR: mqr over the activation rows as they are (FORGE_CUDA_MQR_PACK=0); TILES_MQR_PACK:
// repacked first, without Q4_K's variants (FORGE_CUDA_MQR_CHAIN=0 FORGE_CUDA_MQR_STAGE=0); then those
// variants over repacked rows: chained, staged, both (the default).
typedef enum {
    TILES_MMA,
    TILES_F16,
    TILES_MQR,
    TILES_MQR_PACK,
    TILES_MQR_CHAIN,
    TILES_MQR_STAGE,
    TILES_MQR_CHAIN_STAGE,
    TILES_BLAS
} tiles_path;
static void matmul_tiles(const target *tg, tiles_path path) {
    const char *mmq = path == TILES_MMA ? "mma" : path == TILES_F16 ? "f16" : NULL;
    const bool chain = path == TILES_MQR_CHAIN || path == TILES_MQR_CHAIN_STAGE;
    const bool stage = path == TILES_MQR_STAGE || path == TILES_MQR_CHAIN_STAGE;
    const bool mqr = path == TILES_MQR || path == TILES_MQR_PACK || chain || stage, blas = path == TILES_BLAS;
    const bool want_int = path == TILES_MMA || mqr;
    if (tg->cpu) {
        print_message("SKIP: %s: the CUDA tiled kernels only\n", tg->name);
        skip();
    }
    need_target(tg);
    if (path == TILES_F16 || mqr) { // the F16 kernel and mqr need NVIDIA's mma (sm_80+)
        fg_backend *be = open_backend(tg, 0);
        const char *sm = strstr(fg_backend_describe(be), "sm_");
        const int cc = sm ? atoi(sm + 3) : 0;
        fg_backend_destroy(be);
        if (cc < 80) {
            print_message("SKIP: %s: %s needs sm_80+ (%s)\n", tg->name, mqr ? "mqr" : "FORGE_CUDA_MMQ=f16",
                          sm ? sm : "not NVIDIA");
            skip();
        }
    }
    static const int rows[] = {9, 17, 40, 65};
    static const int mqr_rows[] = {9, 17, 64, 121}; // (121: two row blocks of 8 tiles, the last partial)
    static const uint32_t quick_types[] = {FG_TYPE_Q4_0, FG_TYPE_Q4_K, FG_TYPE_Q6_K};
    static const uint32_t mqr_types[] = {FG_TYPE_Q4_K, FG_TYPE_Q6_K};
    setenv("FORGE_CUDA_MV_ROWS", "8", 1);
    setenv("FORGE_CUDA_QBLAS_ROWS", blas ? "9" : "0", 1);
    if (blas)
        setenv("FORGE_CUDA_DEQ_MB", "1", 1);
    setenv("FORGE_CUDA_MQR", mqr ? "9:128" : "0", 1);
    setenv("FORGE_CUDA_MQR_PACK", path == TILES_MQR ? "0" : "1", 1);
    setenv("FORGE_CUDA_MQR_CHAIN", chain ? "1" : "0", 1);
    setenv("FORGE_CUDA_MQR_STAGE", stage ? "1" : "0", 1);
    if (mmq)
        setenv("FORGE_CUDA_MMQ", mmq, 1);
    g_deviations = 0;
    g_int_cases = g_f16_cases = 0;
    int n_cases = 0;
    for (uint32_t type = 0; type < FG_TYPE_COUNT; type++) {
        const fg_type_traits *tr = fg_type_traits_get(type);
        if (!weight_type(type) || !tr->is_quantized)
            continue;
        if (g_quick && !in_types(type, quick_types, FG_ARRAY_LEN(quick_types)))
            continue;
        if (mqr && !in_types(type, mqr_types, FG_ARRAY_LEN(mqr_types)))
            continue;
        for (size_t i = 0; i < FG_ARRAY_LEN(rows); i++) {
            if (g_quick && i % 2 == 1)
                continue;
            const int nr = mqr ? mqr_rows[i] : rows[i];
            matmul_case(tg, type, 8 * 256, 131, nr, i % 2 == 0, i == 1, i != 2, i >= 2); // split K
            matmul_case(tg, type, 2 * 256, 259, nr, i % 2 == 1, false, i == 2, i < 2);   // whole K
            n_cases += 2;
        }
    }
    unsetenv("FORGE_CUDA_MV_ROWS");
    unsetenv("FORGE_CUDA_QBLAS_ROWS");
    unsetenv("FORGE_CUDA_DEQ_MB");
    unsetenv("FORGE_CUDA_MQR");
    unsetenv("FORGE_CUDA_MQR_PACK");
    unsetenv("FORGE_CUDA_MQR_CHAIN");
    unsetenv("FORGE_CUDA_MQR_STAGE");
    unsetenv("FORGE_CUDA_MMQ");
    print_message("%s: tiled cases (FORGE_CUDA_MMQ=%s%s): %d in the reference's integer arithmetic, %d in the F16 "
                  "GEMM's\n",
                  tg->name, mmq ? mmq : "default",
                  chain && stage ? ", mqr chained staged"
                  : chain        ? ", mqr chained"
                  : stage        ? ", mqr staged"
                  : path == TILES_MQR_PACK ? ", mqr packed"
                  : mqr                    ? ", mqr"
                                           : blas ? ", library GEMM" : "", g_int_cases,
                  g_f16_cases);
    if (g_deviations)
        fail_msg("%s: %d matmul cases off the reference's arithmetic (listed above)", tg->name, g_deviations);
    assert_int_equal(want_int ? g_int_cases : g_f16_cases, n_cases);
}

static void test_matmul_integer_tiles(void **state) { matmul_tiles(*state, TILES_MMA); }

// The F16 tensor-core kernel (FORGE_CUDA_MMQ=f16), the same cases: the F16 GEMM's arithmetic.
static void test_matmul_f16_tiles(void **state) { matmul_tiles(*state, TILES_F16); }

// mqr (Q4_K and Q6_K, 9..64 rows, every n-tile count; K split over warps): the reference's integers.
static void test_matmul_mqr_tiles(void **state) { matmul_tiles(*state, TILES_MQR); }

// The same over the repacked activation rows (Q4_K without its chained and staged variants).
static void test_matmul_mqr_pack_tiles(void **state) { matmul_tiles(*state, TILES_MQR_PACK); }

// The same with Q4_K's variants (Q6_K as before): chained (the scales in the A fragments), staged
// (the weights through shared memory), both (the default).
static void test_matmul_mqr_chain_tiles(void **state) { matmul_tiles(*state, TILES_MQR_CHAIN); }
static void test_matmul_mqr_stage_tiles(void **state) { matmul_tiles(*state, TILES_MQR_STAGE); }
static void test_matmul_mqr_chain_stage_tiles(void **state) { matmul_tiles(*state, TILES_MQR_CHAIN_STAGE); }

// The K-quant matvec's (mwk: Q4_K, Q5_K, 1-2 rows) other shapes: 1 weight row a 32-lane group
// (FORGE_CUDA_MWK=1) and 2 (the default, set explicitly); one and two activation rows, K of 2 and
// 17 super-blocks (17: a lane's second round of loads).
static void test_matmul_mwk_variants(void **state) {
    const target *tg = *state;
    if (tg->cpu) {
        print_message("SKIP: %s: the CUDA K-quant matvec's variants only\n", tg->name);
        skip();
    }
    need_target(tg);
    static const char *const env[] = {"1", "2"};
    static const uint32_t types[] = {FG_TYPE_Q4_K, FG_TYPE_Q5_K};
    int n_cases = 0;
    g_deviations = 0;
    g_int_cases = g_f16_cases = 0;
    for (size_t v = 0; v < FG_ARRAY_LEN(env); v++) {
        setenv("FORGE_CUDA_MWK", env[v], 1);
        for (size_t t = 0; t < FG_ARRAY_LEN(types); t++)
            for (int nr = 1; nr <= 2; nr++) {
                matmul_case(tg, types[t], 2 * 256, 37, nr, nr == 1, nr == 2, false, true);
                matmul_case(tg, types[t], 17 * 256, 300, nr, nr == 2, false, nr == 1, false);
                n_cases += 2;
            }
    }
    unsetenv("FORGE_CUDA_MWK");
    if (g_deviations)
        fail_msg("%s: %d K-quant matvec cases off the reference's arithmetic (listed above)", tg->name, g_deviations);
    assert_int_equal(g_int_cases, n_cases);
}

// The library GEMM over F16 copies of quantized weights (prefill), every quantized type, the
// copies dequantized in chunks: the F16 GEMM's arithmetic.
static void test_matmul_blas_tiles(void **state) { matmul_tiles(*state, TILES_BLAS); }

// convert: every activation type the backend converts to holds x within half a quantization
// step of each block (8-bit types) or exactly rounded
// (F16/BF16), and is bit for bit what the reference quantizer writes, on every backend.
static void test_convert(void **state) {
    const target *tg = *state;
    need_target(tg);
    static const uint32_t acts[] = {FG_TYPE_Q8_0, FG_TYPE_Q8_1, FG_TYPE_Q8_K, FG_TYPE_F16, FG_TYPE_BF16};
    int tested = 0;
    for (size_t ai = 0; ai < FG_ARRAY_LEN(acts); ai++) {
        const fg_type_traits *tr = fg_type_traits_get(acts[ai]);
        fg_backend *be = open_backend(tg, 0);
        if (!fg_backend_supports(be, FG_OP_CONVERT, acts[ai])) {
            fg_backend_destroy(be);
            continue;
        }
        const int64_t n = tr->blck_size == 1 ? 515 : 3 * 256, rows = 9;
        float *x = malloc(sizeof(float) * n * rows);
        fill(x, (size_t)(n * rows), 4.0f);
        x[3] = 0.0f; // a zero and a block of zeros
        for (int i = 256; i < 288; i++)
            x[i] = 0.0f;
        reserve(be, (int)rows, 1, 1, 1, n);
        dev dx = dev_2d(be, FG_TYPE_F32, n, rows), dd = dev_2d(be, acts[ai], n, rows);
        dev_put(be, &dx, x);
        if (fg_op_convert(be, &dd.t, &dx.t) != FG_OK)
            fail_msg("%s convert %s: %s", tg->name, tr->name, fg_last_error());
        unsigned char *got = dev_get(be, &dd);
        dev_check_guard(be, &dd, "convert");
        size_t rb = (size_t)(n / tr->blck_size) * tr->type_size;
        float *deq = malloc(sizeof(float) * n);
        for (int64_t r = 0; r < rows; r++) {
            { // every backend converts bit for bit as the reference (the GPU's integer dots rely on it)
                unsigned char *want = malloc(rb);
                fg_quantize_row(acts[ai], x + r * n, want, n);
                char what[64];
                snprintf(what, sizeof what, "%s convert %s row %lld", tg->name, tr->name, (long long)r);
                check_same(what, got + r * rb, want, rb);
                free(want);
            }
            tr->to_float(got + r * rb, deq, n);
            for (int64_t b0 = 0; b0 < n; b0 += tr->blck_size) {
                float amax = 0.0f;
                for (int64_t i = b0; i < b0 + tr->blck_size; i++)
                    amax = fmaxf(amax, fabsf(x[r * n + i]));
                for (int64_t i = b0; i < b0 + tr->blck_size; i++) {
                    // 8-bit: half a step, plus the f16 rounding of the block's scale times 127
                    double tol = tr->blck_size == 1 ? fabs(x[r * n + i]) * (acts[ai] == FG_TYPE_BF16 ? 4e-3 : 5e-4)
                                                    : amax / 127.0 * 0.5 * 1.01 + amax * 1e-3 + 1e-7;
                    if (!(fabs((double)deq[i] - x[r * n + i]) <= tol))
                        fail_msg("%s convert %s: row %lld element %lld: %g -> %g (tolerance %g)", tg->name, tr->name,
                                 (long long)r, (long long)i, (double)x[r * n + i], (double)deq[i], tol);
                }
            }
        }
        tested++;
        free(deq);
        free(got);
        free(x);
        dev_free(be, &dx);
        dev_free(be, &dd);
        fg_backend_destroy(be);
    }
    print_message("%s: convert tested for %d activation types\n", tg->name, tested);
    assert_true(tested >= 1);
}

// ---------------------------------------------------------------- row-wise ops
static void test_rmsnorm(void **state) {
    const target *tg = *state;
    need_target(tg);
    // float4 rows (n % 4 == 0, 1024 < n <= 16384) take the vector kernel, others the block one
    static const int64_t shapes[9][3] = {{67, 7, 1},   {64, 33, 1},    {4096, 2, 1},  {4096, 9, 1}, {64, 5, 9},
                                         {2052, 3, 1}, {14336, 1, 1},  {16388, 1, 1}, {1030, 2, 1}};
    for (int sh = 0; sh < 9; sh++) {
        int64_t n = shapes[sh][0], ne1 = shapes[sh][1], ne2 = shapes[sh][2], rows = ne1 * ne2;
        // 3-D case: heads of a strided row (a fused projection of 3 * n * ne1 floats per token)
        int64_t rowlen = ne2 > 1 ? 3 * n * ne1 : n * ne1;
        float *x = malloc(sizeof(float) * rowlen * ne2), *w = malloc((size_t)n * 4), *o[2];
        fill(x, (size_t)(rowlen * ne2), 3.0f);
        fill(w, (size_t)n, 1.5f);
        double *ref = malloc(sizeof(double) * n * rows);
        for (int64_t r = 0; r < rows; r++) {
            const float *xr = x + (r / ne1) * rowlen + (r % ne1) * n;
            double ss = 0.0;
            for (int64_t i = 0; i < n; i++)
                ss += (double)xr[i] * xr[i];
            double sc = 1.0 / sqrt(ss / (double)n + 1e-5);
            for (int64_t i = 0; i < n; i++)
                ref[r * n + i] = xr[i] * sc * w[i];
        }
        char what[96];
        snprintf(what, sizeof what, "%s rmsnorm [%lld][%lld][%lld]", tg->name, (long long)ne2, (long long)ne1,
                 (long long)n);
        for (int k = 0; k < n_instances(tg); k++) {
            fg_backend *be = open_backend(tg, k);
            dev dx = ne2 > 1 ? dev_2d(be, FG_TYPE_F32, rowlen, ne2) : dev_2d(be, FG_TYPE_F32, n, ne1),
                dw = dev_2d(be, FG_TYPE_F32, n, 1), dd = dev_2d(be, FG_TYPE_F32, n * ne1, ne2);
            dev_put(be, &dx, x);
            dev_put(be, &dw, w);
            fg_tensor xv = dx.t, dv = dd.t;
            if (ne2 > 1) { // [ne2][ne1][n] views, x strided
                xv.ne[0] = dv.ne[0] = n;
                xv.ne[1] = dv.ne[1] = ne1;
                xv.ne[2] = dv.ne[2] = ne2;
                xv.nb[1] = dv.nb[1] = (size_t)n * 4;
                xv.nb[2] = (size_t)rowlen * 4;
                dv.nb[2] = (size_t)(n * ne1) * 4;
                xv.nb[3] = xv.nb[2] * ne2;
                dv.nb[3] = dv.nb[2] * ne2;
                if (fg_op_rmsnorm(be, &dv, &xv, &dw.t, 1e-5f) != FG_OK)
                    fail_msg("%s: %s", what, fg_last_error());
                o[k] = dev_get(be, &dd);
            } else { // in place (dst aliases x)
                assert_int_equal(fg_op_rmsnorm(be, &dx.t, &dx.t, &dw.t, 1e-5f), FG_OK);
                o[k] = dev_get(be, &dx);
            }
            dev_check_guard(be, ne2 > 1 ? &dd : &dx, what);
            dev_free(be, &dx);
            dev_free(be, &dw);
            dev_free(be, &dd);
            fg_backend_destroy(be);
        }
        if (tg->cpu)
            check_same(what, o[0], o[1], (size_t)(n * rows) * 4);
        check_close(what, o[0], ref, (size_t)(n * rows));
        check_nmse(what, o[0], ref, (size_t)(n * rows), 1e-6);
        free(o[0]);
        if (tg->cpu)
            free(o[1]);
        free(x);
        free(w);
        free(ref);
    }
}

// swiglu straight into an activation type (where a backend offers it): bit for bit swiglu to
// F32 followed by convert; elsewhere the exact "unsupported" error
// An op written straight into activation type at (dq; st: its status): refused with the exact
// unsupported error ("<op>: dst type ...") where the backend does not claim it (returns 0), else
// byte for byte the op's F32 result (df, computed by the caller) converted by convert (dr)
// (returns 1).
static int check_into_act(fg_backend *be, const target *tg, fg_op op, const char *name, fg_status st, dev *dq,
                          dev *df, dev *dr, int64_t n, int64_t rows) {
    const uint32_t at = dq->t.type;
    const fg_type_traits *tr = fg_type_traits_get(at);
    if (!fg_backend_supports(be, op, at)) {
        char want[64];
        snprintf(want, sizeof want, "%s: dst type", name);
        assert_int_equal(st, FG_ERR_UNSUPPORTED);
        assert_non_null(strstr(fg_last_error(), want));
        return 0;
    }
    if (st != FG_OK)
        fail_msg("%s %s into %s: %s", tg->name, name, tr->name, fg_last_error());
    assert_int_equal(fg_op_convert(be, &dr->t, &df->t), FG_OK);
    unsigned char *got = dev_get(be, dq), *want = dev_get(be, dr);
    dev_check_guard(be, dq, name);
    char what[96];
    snprintf(what, sizeof what, "%s %s into %s, %lld x %lld", tg->name, name, tr->name, (long long)rows, (long long)n);
    check_same(what, got, want, (size_t)rows * (size_t)(n / tr->blck_size) * tr->type_size);
    free(got);
    free(want);
    return 1;
}

static void test_swiglu_convert(void **state) {
    const target *tg = *state;
    need_target(tg);
    static const uint32_t acts[] = {FG_TYPE_Q8_0, FG_TYPE_Q8_1, FG_TYPE_Q8_K, FG_TYPE_F16, FG_TYPE_BF16};
    static const int64_t shapes[2][2] = {{3 * 256, 5}, {14336, 2}};
    int fused = 0, refused = 0;
    for (size_t ai = 0; ai < FG_ARRAY_LEN(acts); ai++) {
        for (int sh = 0; sh < 2; sh++) {
            const int64_t n = shapes[sh][0], rows = shapes[sh][1];
            fg_backend *be = open_backend(tg, 0);
            reserve(be, (int)rows, 1, 1, 1, 2 * n);
            float *gu = malloc((size_t)(2 * n * rows) * 4);
            fill(gu, (size_t)(2 * n * rows), 6.0f);
            dev dgu = dev_2d(be, FG_TYPE_F32, 2 * n, rows), dh = dev_2d(be, FG_TYPE_F32, n, rows);
            dev dq = dev_2d(be, acts[ai], n, rows), dr = dev_2d(be, acts[ai], n, rows);
            dev_put(be, &dgu, gu);
            fg_tensor g = dgu.t, u = dgu.t; // halves of a fused projection: strided views
            g.ne[0] = u.ne[0] = n;
            u.data = (char *)u.data + n * 4;
            fg_status st = fg_op_swiglu(be, &dq.t, &g, &u);
            assert_int_equal(fg_op_swiglu(be, &dh.t, &g, &u), FG_OK);
            if (check_into_act(be, tg, FG_OP_SWIGLU, "swiglu", st, &dq, &dh, &dr, n, rows))
                fused++;
            else
                refused++;
            free(gu);
            dev_free(be, &dgu);
            dev_free(be, &dh);
            dev_free(be, &dq);
            dev_free(be, &dr);
            fg_backend_destroy(be);
        }
    }
    // the other row-wise ops write F32 only (a backend must not claim more)
    fg_backend *be = open_backend(tg, 0);
    static const fg_op f32_only[] = {FG_OP_GATHER_OUT, FG_OP_ADD, FG_OP_ROPE};
    for (size_t k = 0; k < FG_ARRAY_LEN(f32_only); k++) {
        assert_true(fg_backend_supports(be, f32_only[k], FG_TYPE_F32));
        assert_false(fg_backend_supports(be, f32_only[k], FG_TYPE_Q8_K));
        assert_false(fg_backend_supports(be, f32_only[k], FG_TYPE_F16));
    }
    fg_backend_destroy(be);
    print_message("%s: swiglu into an activation type: %d cases fused, %d refused\n", tg->name, fused, refused);
    if (tg->cpu)
        assert_int_equal(refused, 2 * (int)FG_ARRAY_LEN(acts)); // the CPU converts separately
    else
        assert_true(fused >= 2 * 3); // Q8_1, Q8_K, F16 at least
}

// rmsnorm straight into an activation type: byte for byte rmsnorm (F32) + convert where the
// backend claims it (rows of the fused kernel, and rows it does not take: an odd width for
// F16/BF16, a width beyond the float4 kernel's), else the exact unsupported error.
static void test_rmsnorm_convert(void **state) {
    const target *tg = *state;
    need_target(tg);
    static const uint32_t acts[] = {FG_TYPE_Q8_0, FG_TYPE_Q8_1, FG_TYPE_Q8_K, FG_TYPE_F16, FG_TYPE_BF16};
    static const int64_t shapes[5][2] = {{3 * 256, 5}, {4096, 1}, {14336, 3}, {17 * 1024, 2}, {256, 70}};
    int fused = 0, refused = 0;
    for (size_t ai = 0; ai < FG_ARRAY_LEN(acts); ai++) {
        const fg_type_traits *tr = fg_type_traits_get(acts[ai]);
        for (int sh = 0; sh < 6; sh++) {
            // shape 5: an odd width (blocks of one element only)
            const int64_t n = sh < 5 ? shapes[sh][0] : 1001, rows = sh < 5 ? shapes[sh][1] : 3;
            if (n % tr->blck_size != 0)
                continue;
            fg_backend *be = open_backend(tg, 0);
            reserve(be, (int)rows, 1, 1, 1, n);
            float *xv = malloc((size_t)(n * rows) * 4), *wv = malloc((size_t)n * 4);
            fill(xv, (size_t)(n * rows), 3.0f);
            fill(wv, (size_t)n, 1.5f);
            if (sh == 1)
                for (int64_t i = 0; i < 256; i++) // a Q8_K block of zeros, ties of |x| in another
                    xv[i] = 0.0f, xv[512 + i] = i % 3 ? 0.5f : -0.5f;
            dev dx = dev_2d(be, FG_TYPE_F32, n, rows), dw = dev_2d(be, FG_TYPE_F32, n, 1);
            dev df = dev_2d(be, FG_TYPE_F32, n, rows);
            dev dq = dev_2d(be, acts[ai], n, rows), dr = dev_2d(be, acts[ai], n, rows);
            dev_put(be, &dx, xv);
            dev_put(be, &dw, wv);
            fg_status st = fg_op_rmsnorm(be, &dq.t, &dx.t, &dw.t, 1e-5f);
            assert_int_equal(fg_op_rmsnorm(be, &df.t, &dx.t, &dw.t, 1e-5f), FG_OK);
            if (check_into_act(be, tg, FG_OP_RMSNORM, "rmsnorm", st, &dq, &df, &dr, n, rows))
                fused++;
            else
                refused++;
            free(xv);
            free(wv);
            dev_free(be, &dx);
            dev_free(be, &dw);
            dev_free(be, &df);
            dev_free(be, &dq);
            dev_free(be, &dr);
            fg_backend_destroy(be);
        }
    }
    print_message("%s: rmsnorm into an activation type: %d cases fused, %d refused\n", tg->name, fused, refused);
    if (tg->cpu)
        assert_int_equal(fused, 0); // the CPU converts separately
    else
        assert_true(fused >= 3 * 5 + 2); // Q8_1, Q8_K, F16 (and BF16) at every width
}

static void test_add_swiglu(void **state) {
    const target *tg = *state;
    need_target(tg);
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
        float *os[2] = {0}, *oa[2] = {0};
        for (int k = 0; k < n_instances(tg); k++) {
            fg_backend *be = open_backend(tg, k);
            dev dgu = dev_2d(be, FG_TYPE_F32, 2 * n, rows), db = dev_2d(be, FG_TYPE_F32, n, rows);
            dev ds = dev_2d(be, FG_TYPE_F32, n, rows), da = dev_2d(be, FG_TYPE_F32, n, rows);
            dev_put(be, &dgu, gu);
            dev_put(be, &db, b);
            fg_tensor g = dgu.t, u = dgu.t; // halves of a fused projection: strided views
            g.ne[0] = u.ne[0] = n;
            u.data = (char *)u.data + n * 4;
            assert_int_equal(fg_op_swiglu(be, &ds.t, &g, &u), FG_OK);
            assert_int_equal(fg_op_add(be, &da.t, &g, &db.t), FG_OK);
            os[k] = dev_get(be, &ds);
            oa[k] = dev_get(be, &da);
            dev_check_guard(be, &ds, "swiglu");
            dev_check_guard(be, &da, "add");
            // add in place: dst aliases a
            assert_int_equal(fg_op_add(be, &db.t, &db.t, &db.t), FG_OK);
            float *two = dev_get(be, &db);
            for (int i = 0; i < 4; i++)
                assert_true(two[i] == 2.0f * b[i]);
            free(two);
            dev_free(be, &dgu);
            dev_free(be, &db);
            dev_free(be, &ds);
            dev_free(be, &da);
            fg_backend_destroy(be);
        }
        if (tg->cpu) {
            check_same("swiglu threads", os[0], os[1], (size_t)(n * rows) * 4);
            check_same("add threads", oa[0], oa[1], (size_t)(n * rows) * 4);
        }
        check_close("swiglu", os[0], rs, (size_t)(n * rows));
        check_close("add", oa[0], ra, (size_t)(n * rows));
        for (int k = 0; k < 2; k++) {
            free(os[k]);
            free(oa[k]);
        }
        free(gu);
        free(b);
        free(rs);
        free(ra);
    }
}

// x = x + a; xn = rmsnorm(x) * w: the fused op (or its composition) against the reference.
static void add_rmsnorm_case(const target *tg, int64_t n, int64_t rows) {
    float *x = malloc(sizeof(float) * n * rows), *a = malloc(sizeof(float) * n * rows), *w = malloc(sizeof(float) * n);
    fill(x, (size_t)(n * rows), 2.0f);
    fill(a, (size_t)(n * rows), 2.0f);
    fill(w, (size_t)n, 1.0f);
    double *rx = malloc(sizeof(double) * n * rows), *rn = malloc(sizeof(double) * n * rows);
    for (int64_t r = 0; r < rows; r++) {
        double ss = 0;
        for (int64_t i = 0; i < n; i++) {
            float s = x[r * n + i] + a[r * n + i];
            rx[r * n + i] = s;
            ss += (double)s * s;
        }
        double sc = 1.0 / sqrt(ss / n + 1e-6);
        for (int64_t i = 0; i < n; i++)
            rn[r * n + i] = rx[r * n + i] * sc * w[i];
    }
    fg_backend *be = open_backend(tg, 0);
    dev dx = dev_2d(be, FG_TYPE_F32, n, rows), da = dev_2d(be, FG_TYPE_F32, n, rows), dw = dev_2d(be, FG_TYPE_F32, n, 1),
        dn = dev_2d(be, FG_TYPE_F32, n, rows);
    dev_put(be, &dx, x);
    dev_put(be, &da, a);
    dev_put(be, &dw, w);
    assert_int_equal(fg_op_add_rmsnorm(be, &dx.t, &dn.t, &da.t, &dw.t, 1e-6f), FG_OK);
    float *gx = dev_get(be, &dx), *gn = dev_get(be, &dn);
    check_close("add_rmsnorm x", gx, rx, (size_t)(n * rows));
    check_close("add_rmsnorm xn", gn, rn, (size_t)(n * rows));
    dev_check_guard(be, &dn, "add_rmsnorm");
    free(gx);
    free(gn);
    dev_free(be, &dx);
    dev_free(be, &da);
    dev_free(be, &dw);
    dev_free(be, &dn);
    fg_backend_destroy(be);
    free(x);
    free(a);
    free(w);
    free(rx);
    free(rn);
}

static void test_add_rmsnorm(void **state) {
    const target *tg = *state;
    need_target(tg);
    add_rmsnorm_case(tg, 1000, 7); // one warp a row
    add_rmsnorm_case(tg, 4100, 3); // float4 rows
    add_rmsnorm_case(tg, 1026, 2); // the block kernel
}

static void rope_case(const target *tg, fg_rope_mode mode, int n_head, int head_dim, int n_rot, bool factors,
                      float freq_scale, int n_tokens, bool strided) {
    step_data sd;
    simple_step(&sd, n_tokens, 3 + rnd_int(90), 100);
    int64_t width = (int64_t)n_head * head_dim, rowlen = strided ? width + 37 : width;
    float *x = malloc((size_t)(rowlen * n_tokens) * 4), *o[2] = {0};
    fill(x, (size_t)(rowlen * n_tokens), 2.0f);
    float ff[512];
    for (int i = 0; i < n_rot / 2; i++)
        ff[i] = 1.0f + 3.0f * (float)rnd_int(8);
    const float base = 10000.0f;
    double *ref = malloc((size_t)(width * n_tokens) * 8);
    for (int t = 0; t < n_tokens; t++)
        for (int h = 0; h < n_head; h++) {
            const float *v = x + t * rowlen + h * head_dim;
            double *r = ref + t * width + h * head_dim;
            for (int d = 0; d < head_dim; d++)
                r[d] = v[d];
            for (int i = 0; i < n_rot / 2; i++) {
                double th =
                    sd.pos[t] * (double)freq_scale * pow(base, -2.0 * i / n_rot) / (factors ? ff[i] : 1.0);
                int i0 = mode == FG_ROPE_NEOX ? i : 2 * i, i1 = mode == FG_ROPE_NEOX ? i + n_rot / 2 : 2 * i + 1;
                r[i0] = v[i0] * cos(th) - v[i1] * sin(th);
                r[i1] = v[i0] * sin(th) + v[i1] * cos(th);
            }
        }
    char what[128];
    snprintf(what, sizeof what, "%s rope mode %d heads %d dim %d rot %d%s scale %g tokens %d%s", tg->name, (int)mode,
             n_head, head_dim, n_rot, factors ? " factors" : "", (double)freq_scale, n_tokens, strided ? " strided" : "");
    for (int k = 0; k < n_instances(tg); k++) {
        fg_backend *be = open_backend(tg, k);
        reserve(be, n_tokens, 1, sd.max_pages, sd.max_pages * sd.page_size, rowlen);
        begin(be, &sd);
        dev dx = dev_2d(be, FG_TYPE_F32, rowlen, n_tokens), df = dev_2d(be, FG_TYPE_F32, n_rot / 2, 1);
        dev_put(be, &dx, x);
        dev_put(be, &df, ff);
        fg_tensor xv = dx.t;
        xv.ne[0] = width;
        fg_rope_params p = {n_head, head_dim, n_rot, mode, base, freq_scale, factors ? &df.t : NULL};
        if (fg_op_rope(be, &xv, &p) != FG_OK)
            fail_msg("%s: %s", what, fg_last_error());
        end(be);
        float *got = dev_get(be, &dx);
        o[k] = malloc((size_t)(width * n_tokens) * 4);
        for (int t = 0; t < n_tokens; t++) {
            memcpy(o[k] + t * width, got + t * rowlen, (size_t)width * 4);
            for (int64_t c = width; c < rowlen; c++) // past the view: untouched
                assert_true(memcmp(&got[t * rowlen + c], &x[t * rowlen + c], 4) == 0);
        }
        free(got);
        dev_check_guard(be, &dx, what);
        dev_free(be, &dx);
        dev_free(be, &df);
        fg_backend_destroy(be);
    }
    if (tg->cpu)
        check_same(what, o[0], o[1], (size_t)(width * n_tokens) * 4);
    // untouched dims beyond n_rot are bit-exact
    for (int t = 0; t < n_tokens; t++)
        for (int h = 0; h < n_head; h++)
            for (int d = n_rot; d < head_dim; d++)
                assert_true(o[0][t * width + h * head_dim + d] == x[t * rowlen + h * head_dim + d]);
    // f32 cos/sin of an f32 theta (ggml) against double: positions < 100 keep theta's
    // accumulated rounding (theta *= theta_scale per pair) well inside 1e-6.
    check_nmse(what, o[0], ref, (size_t)(width * n_tokens), 1e-6);
    free(o[0]);
    free(o[1]);
    free(x);
    free(ref);
    free_step(&sd);
}

static void test_rope(void **state) {
    const target *tg = *state;
    need_target(tg);
    rope_case(tg, FG_ROPE_NORMAL, 4, 64, 64, false, 1.0f, 7, false);
    rope_case(tg, FG_ROPE_NEOX, 3, 128, 128, false, 1.0f, 33, true);
    rope_case(tg, FG_ROPE_NEOX, 2, 128, 64, false, 0.5f, 9, false); // glm4-like partial rotation
    rope_case(tg, FG_ROPE_NORMAL, 5, 96, 32, true, 1.0f, 2, true);  // freq_factors, n_rot < head_dim
    rope_case(tg, FG_ROPE_NEOX, 8, 64, 64, true, 0.25f, 1, false);
    rope_case(tg, FG_ROPE_NORMAL, 32, 128, 128, false, 1.0f, 33, false); // large enough to run threaded
    rope_case(tg, FG_ROPE_NEOX, 4, 8, 8, false, 1.0f, 3, false);          // tiny heads (stories260K)
}

static void test_get_rows_gather(void **state) {
    const target *tg = *state;
    need_target(tg);
    int n_types = 0;
    for (uint32_t type = 0; type < FG_TYPE_COUNT; type++) {
        if (!weight_type(type))
            continue;
        const fg_type_traits *ref = fg_type_traits_ref(type);
        const int64_t n_embd = ref->blck_size == 1 ? 3001 : 512, n_vocab = 50;
        size_t rb = (size_t)(n_embd / ref->blck_size) * ref->type_size;
        float *tf = malloc((size_t)(n_embd * n_vocab) * 4);
        fill(tf, (size_t)(n_embd * n_vocab), 1.0f);
        unsigned char *tq = malloc(rb * n_vocab);
        for (int64_t v = 0; v < n_vocab; v++)
            ref->from_float(tf + v * n_embd, tq + v * rb, n_embd);
        int lens[3] = {9, 20, 4}, news[3] = {9, 1, 4};
        step_data sd;
        make_step(&sd, 3, lens, news, 8, (int)n_vocab, 0);
        int nt = sd.st.n_tokens;
        float *exp_rows = malloc((size_t)(n_embd * nt) * 4);
        for (int t = 0; t < nt; t++)
            ref->to_float(tq + (size_t)sd.tokens[t] * rb, exp_rows + t * n_embd, n_embd);
        for (int k = 0; k < n_instances(tg); k++) {
            fg_backend *be = open_backend(tg, k);
            if (!fg_backend_supports(be, FG_OP_GET_ROWS, type))
                fail_msg("%s: get_rows does not support %s", tg->name, ref->name);
            reserve(be, nt, 3, sd.max_pages, sd.max_pages * sd.page_size, n_embd);
            begin(be, &sd);
            int64_t tne[2] = {n_embd, n_vocab};
            dev dt = dev_new(be, type, 2, tne);
            dev_put(be, &dt, tq);
            dev dd = dev_2d(be, FG_TYPE_F32, n_embd, nt), dg = dev_2d(be, FG_TYPE_F32, n_embd, sd.st.n_out);
            assert_int_equal(fg_op_get_rows(be, &dd.t, &dt.t), FG_OK);
            assert_int_equal(fg_op_gather_out(be, &dg.t, &dd.t), FG_OK);
            end(be);
            float *got = dev_get(be, &dd), *gat = dev_get(be, &dg);
            dev_check_guard(be, &dd, "get_rows");
            dev_check_guard(be, &dg, "gather_out");
            char what[64];
            snprintf(what, sizeof what, "%s get_rows %s", tg->name, ref->name);
            check_same(what, got, exp_rows, dd.bytes); // dequantization is bit-exact
            for (int i = 0; i < sd.st.n_out; i++)
                check_same("gather_out", gat + i * n_embd, exp_rows + sd.out_rows[i] * n_embd, n_embd * 4);
            // gather in place (dst aliases src: rows move down in order)
            begin(be, &sd);
            fg_tensor in_place = dd.t;
            in_place.ne[1] = sd.st.n_out;
            assert_int_equal(fg_op_gather_out(be, &in_place, &dd.t), FG_OK);
            end(be);
            float *ip = dev_get(be, &dd);
            for (int i = 0; i < sd.st.n_out; i++)
                check_same("gather_out in place", ip + i * n_embd, exp_rows + sd.out_rows[i] * n_embd, n_embd * 4);
            free(ip);
            free(got);
            free(gat);
            dev_free(be, &dt);
            dev_free(be, &dd);
            dev_free(be, &dg);
            fg_backend_destroy(be);
        }
        free(tf);
        free(tq);
        free(exp_rows);
        free_step(&sd);
        n_types++;
    }
    assert_int_equal(n_types, 14);
}

// check_finite: the first non-finite value (lowest row, then column) over several calls of a
// step, reported by step_wait with the caller's row numbering; none when all are finite.
static void test_check_finite(void **state) {
    const target *tg = *state;
    need_target(tg);
    const int64_t cols = 1001, rows = 6;
    float *x = malloc(sizeof(float) * cols * rows);
    fill(x, (size_t)(cols * rows), 50.0f);
    step_data sd;
    simple_step(&sd, 1, 0, 10);
    fg_backend *be = open_backend(tg, 0);
    reserve(be, 8, 1, 1, 64, cols);
    dev dx = dev_2d(be, FG_TYPE_F32, cols, rows);
    fg_tensor first = fg_tensor_rows(&dx.t, 0, cols, 3, dx.t.nb[1]);
    fg_tensor second = fg_tensor_rows(&dx.t, 3 * dx.t.nb[1], cols, 3, dx.t.nb[1]);
    const struct {
        int64_t row, col;
        float v;
    } cases[] = {{-1, -1, 0.0f}, {4, 17, INFINITY}, {1, 1000, NAN}, {0, 0, -INFINITY}};
    for (size_t c = 0; c < FG_ARRAY_LEN(cases); c++) {
        float *y = malloc(sizeof(float) * cols * rows);
        memcpy(y, x, sizeof(float) * cols * rows);
        if (cases[c].row >= 0) {
            y[cases[c].row * cols + cases[c].col] = cases[c].v;
            y[5 * cols + 3] = NAN; // a later one does not win
        }
        dev_put(be, &dx, y);
        begin(be, &sd);
        assert_int_equal(fg_op_check_finite(be, &first, 10), FG_OK);
        assert_int_equal(fg_op_check_finite(be, &second, 13), FG_OK);
        assert_int_equal(fg_step_end(be), FG_OK);
        fg_step_result r;
        assert_int_equal(fg_step_wait(be, &r), FG_OK);
        if (cases[c].row < 0) {
            assert_int_equal(r.bad_row, -1);
        } else {
            assert_int_equal(r.bad_row, 10 + cases[c].row);
            assert_int_equal(r.bad_col, cases[c].col);
            assert_true(isnan(cases[c].v) ? isnan(r.bad_value) : r.bad_value == cases[c].v);
        }
        free(y);
    }
    dev_free(be, &dx);
    fg_backend_destroy(be);
    free(x);
    free_step(&sd);
}

// ---------------------------------------------------------------- KV cache and attention
typedef struct kv_case {
    int n_seqs;
    int n_kv[8];  // after the step
    int n_new[8]; // new tokens of the step
    int n_head, n_head_kv, head_dim, page_size;
    uint32_t kv_type;
    bool causal;
    int share; // pages of sequence 0's prefix every other sequence maps too
} kv_case;

// Element i of a cache whose rows (slots) hold kw elements of `type` (Q8_0: dequantized).
static float kv_get(const unsigned char *c, uint32_t type, int64_t kw, size_t i) {
    if (type == FG_TYPE_Q8_0) {
        size_t row = i / (size_t)kw, e = i % (size_t)kw;
        const fg_block_q8_0 *b = (const fg_block_q8_0 *)(c + row * fg_type_row_size_n(type, kw)) + e / FG_QK8_0;
        return (float)b->qs[e % FG_QK8_0] * fg_f16_to_f32(b->d);
    }
    return type == FG_TYPE_F16 ? fg_f16_to_f32(((const fg_f16 *)c)[i]) : ((const float *)c)[i];
}
// Row `row` of such a cache <- x[0..kw) converted as the reference stores it (Q8_0: the
// reference quantizer fg_quantize_row, whole row at once; blocks never straddle heads).
static void kv_put_row(unsigned char *c, uint32_t type, int64_t kw, size_t row, const float *x) {
    unsigned char *d = c + row * fg_type_row_size_n(type, kw);
    if (type == FG_TYPE_F16) {
        for (int64_t j = 0; j < kw; j++)
            ((fg_f16 *)d)[j] = fg_f32_to_f16(x[j]);
    } else if (type == FG_TYPE_Q8_0) {
        fg_quantize_row(FG_TYPE_Q8_0, x, d, kw);
    } else {
        memcpy(d, x, (size_t)kw * sizeof(float));
    }
}

static void attention_case(const target *tg, const kv_case *kc) {
    const int n_layer = 2, layer = 1;
    const int hd = kc->head_dim, nkv = kc->n_head_kv, ps = kc->page_size;
    const int64_t kw = (int64_t)nkv * hd, qw = (int64_t)kc->n_head * hd;
    const uint32_t ty = kc->kv_type;
    const bool f16 = ty == FG_TYPE_F16, q8 = ty == FG_TYPE_Q8_0;
    const size_t row_b = fg_type_row_size_n(ty, kw); // bytes of one slot
    step_data sd;
    make_step(&sd, kc->n_seqs, kc->n_kv, kc->n_new, ps, 100, kc->share);
    const int nt = sd.st.n_tokens, n_pages = sd.n_pages, max_pages = sd.max_pages;
    // a shared prefix is written by nobody in this step: its sequences' new tokens start past it
    for (int s = 1; s < kc->n_seqs && kc->share; s++)
        assert_true(kc->n_kv[s] - kc->n_new[s] >= FG_MIN(kc->share, (kc->n_kv[0] + ps - 1) / ps) * ps);
    // initial cache contents: random everywhere (stale pages included)
    const size_t cache_rows = (size_t)n_layer * n_pages * ps, cache_bytes = cache_rows * row_b;
    unsigned char *k0 = malloc(cache_bytes), *v0 = malloc(cache_bytes);
    float *tmp = malloc(sizeof(float) * (size_t)kw * 2);
    for (size_t r = 0; r < cache_rows; r++) {
        for (int64_t j = 0; j < kw; j++) {
            tmp[j] = rnd_f() * 2.0f;
            tmp[kw + j] = rnd_f();
        }
        kv_put_row(k0, ty, kw, r, tmp);
        kv_put_row(v0, ty, kw, r, tmp + kw);
    }
    free(tmp);
    // q, k, v as strided views of one fused projection row per token: q | k | v | 5 floats
    const int64_t rowlen = qw + 2 * kw + 5;
    float *qkv = malloc(sizeof(float) * rowlen * nt);
    fill(qkv, (size_t)(rowlen * nt), 2.0f);
    // expected cache after kv_store
    unsigned char *ke = malloc(cache_bytes), *ve = malloc(cache_bytes);
    memcpy(ke, k0, cache_bytes);
    memcpy(ve, v0, cache_bytes);
    for (int t = 0; t < nt; t++) {
        int page = sd.page_table[sd.seq[t] * max_pages + sd.pos[t] / ps], slot = sd.pos[t] % ps;
        size_t r = ((size_t)layer * n_pages + page) * ps + slot;
        const float *kn = qkv + t * rowlen + qw, *vn = kn + kw;
        kv_put_row(ke, ty, kw, r, kn);
        kv_put_row(ve, ty, kw, r, vn);
    }
    // reference attention in double, with ggml's roundings: F16, q and the probabilities to
    // F16; Q8_0, q to Q8_0 (quantized as the reference's activations are, then dequantized:
    // the integer dot is exact), probabilities unrounded
    double *ref = malloc((size_t)(qw * nt) * 8);
    int max_kv = 0;
    for (int s = 0; s < kc->n_seqs; s++)
        max_kv = FG_MAX(max_kv, kc->n_kv[s]);
    double *sc = malloc(sizeof(double) * max_kv);
    const float scale = 1.0f / sqrtf((float)hd);
    for (int t = 0; t < nt; t++) {
        const int s = sd.seq[t], n = kc->causal ? sd.pos[t] + 1 : kc->n_kv[s];
        for (int h = 0; h < kc->n_head; h++) {
            const int kvh = h / (kc->n_head / nkv);
            double qv[512];
            fg_block_q8_0 qb[512 / FG_QK8_0];
            if (q8)
                fg_quantize_row(FG_TYPE_Q8_0, qkv + t * rowlen + h * hd, qb, hd);
            for (int d = 0; d < hd; d++) {
                float x = qkv[t * rowlen + h * hd + d];
                qv[d] = f16 ? fg_f16_to_f32(fg_f32_to_f16(x))
                        : q8 ? (double)qb[d / FG_QK8_0].qs[d % FG_QK8_0] * fg_f16_to_f32(qb[d / FG_QK8_0].d)
                             : x;
            }
            double mx = -INFINITY;
            for (int j = 0; j < n; j++) {
                int page = sd.page_table[s * max_pages + j / ps];
                size_t off = (((size_t)layer * n_pages + page) * ps + j % ps) * kw + (size_t)kvh * hd;
                double dot = 0.0;
                for (int d = 0; d < hd; d++)
                    dot += qv[d] * kv_get(ke, ty, kw, off + d);
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
                    ref[t * qw + h * hd + d] += p * kv_get(ve, ty, kw, off + d);
            }
        }
    }
    char what[192];
    snprintf(what, sizeof(what), "%s attention %s%s n_seqs=%d n_tokens=%d max_kv=%d n_head=%d n_head_kv=%d head_dim=%d page=%d%s",
             tg->name, fg_type_name(ty), kc->causal ? "" : " non-causal", kc->n_seqs, nt, max_kv, kc->n_head, nkv, hd,
             ps, kc->share ? " shared-prefix" : "");
    float *out[2] = {0};
    for (int k = 0; k < n_instances(tg); k++) {
        fg_backend *be = open_backend(tg, k);
        if (!fg_backend_supports(be, FG_OP_ATTENTION, kc->kv_type))
            fail_msg("%s: no attention for a %s cache", what, fg_type_name(kc->kv_type));
        reserve(be, nt, kc->n_seqs, max_pages, max_pages * ps, rowlen);
        fg_kv_view kv = {n_layer, n_pages, ps, nkv, hd, kc->kv_type, {0}, {0}};
        fg_buffer *kvbuf = NULL;
        if (be->ops->kv_alloc(be, &kv, &kvbuf) != FG_OK)
            fail_msg("%s: kv_alloc: %s", what, fg_last_error());
        assert_int_equal(fg_tensor_nbytes(&kv.k), cache_bytes);
        assert_int_equal(be->ops->upload(be, &kv.k, 0, k0, cache_bytes), FG_OK);
        assert_int_equal(be->ops->upload(be, &kv.v, 0, v0, cache_bytes), FG_OK);
        dev dqkv = dev_2d(be, FG_TYPE_F32, rowlen, nt), dd = dev_2d(be, FG_TYPE_F32, qw, nt);
        dev_put(be, &dqkv, qkv);
        fg_tensor q = fg_tensor_rows(&dqkv.t, 0, qw, nt, dqkv.t.nb[1]);
        fg_tensor kn = fg_tensor_rows(&dqkv.t, (size_t)qw * 4, kw, nt, dqkv.t.nb[1]);
        fg_tensor vn = fg_tensor_rows(&dqkv.t, (size_t)(qw + kw) * 4, kw, nt, dqkv.t.nb[1]);
        begin(be, &sd);
        fg_status st = fg_op_kv_store(be, &kv, layer, &kn, &vn);
        if (st != FG_OK)
            fail_msg("%s: kv_store: %s", what, fg_last_error());
        fg_attn_params ap = {layer, kc->n_head, scale, kc->causal};
        st = fg_op_attention(be, &dd.t, &q, &kv, &ap);
        if (st != FG_OK)
            fail_msg("%s: %s", what, fg_last_error());
        end(be);
        unsigned char *kg = malloc(cache_bytes), *vg = malloc(cache_bytes);
        assert_int_equal(be->ops->download(be, &kv.k, 0, kg, cache_bytes), FG_OK);
        assert_int_equal(be->ops->download(be, &kv.v, 0, vg, cache_bytes), FG_OK);
        check_same("kv_store k", kg, ke, cache_bytes); // KV writes are bit-exact (stale slots kept)
        check_same("kv_store v", vg, ve, cache_bytes);
        out[k] = dev_get(be, &dd);
        dev_check_guard(be, &dd, what);
        // kv_copy_page: page a <- page b, all layers
        int pa = sd.page_table[0], pb = sd.page_table[max_pages > 1 ? 1 : 0];
        if (pb != pa) {
            assert_int_equal(fg_kv_copy_page_checked(be, &kv, pa, pb), FG_OK);
            assert_int_equal(be->ops->sync(be), FG_OK);
            assert_int_equal(be->ops->download(be, &kv.k, 0, kg, cache_bytes), FG_OK);
            assert_int_equal(be->ops->download(be, &kv.v, 0, vg, cache_bytes), FG_OK);
            const size_t pbytes = (size_t)ps * row_b;
            for (int l = 0; l < n_layer; l++)
                for (int pg = 0; pg < n_pages; pg++) { // page pa of every layer, the others unchanged
                    size_t at = ((size_t)l * n_pages + pg) * pbytes;
                    size_t from = ((size_t)l * n_pages + (pg == pa ? pb : pg)) * pbytes;
                    check_same("kv_copy_page k", kg + at, ke + from, pbytes);
                    check_same("kv_copy_page v", vg + at, ve + from, pbytes);
                }
        }
        free(kg);
        free(vg);
        be->ops->buf_free(be, kvbuf);
        dev_free(be, &dqkv);
        dev_free(be, &dd);
        fg_backend_destroy(be);
    }
    if (tg->cpu)
        check_same(what, out[0], out[1], (size_t)(qw * nt) * 4);
    check_nmse(what, out[0], ref, (size_t)(qw * nt), 5e-4);
    // the CPU emulates the roundings of the reference: only f32 summation order differs (and
    // the odd probability on the other side of an f16 rounding); ~3e-8 without the rounding.
    // A Q8_0 cache: the CPU and the GPU both take q on the reference's Q8_0 grid and keep the
    // probabilities in f32, so only f32 arithmetic differs, on the GPU too (online softmax,
    // exp2): 1e-9 (unrounded q would be ~1e-5 off)
    if (tg->cpu || q8)
        check_nmse(what, out[0], ref, (size_t)(qw * nt), q8 ? 1e-9 : 5e-9);
    free(out[0]);
    free(out[1]);
    free(k0);
    free(v0);
    free(ke);
    free(ve);
    free(qkv);
    free(ref);
    free(sc);
    free_step(&sd);
}

static const kv_case attn_cases[] = {
        // n_seqs, n_kv, n_new, n_head, n_head_kv, head_dim, page_size, type, causal, share
        {1, {1}, {1}, 4, 4, 64, 16, FG_TYPE_F16, true, 0},                     // 1 token, first position
        {2, {37, 5}, {1, 1}, 8, 4, 64, 16, FG_TYPE_F16, true, 0},              // 2 decodes, GQA 2, mid-page
        {3, {40, 7, 19}, {3, 2, 2}, 8, 2, 40, 8, FG_TYPE_F16, true, 0},        // 7 tokens, GQA 4, head_dim 40
        {2, {33, 8}, {4, 4}, 4, 1, 64, 16, FG_TYPE_F16, true, 0},              // 8 tokens, multi-query
        {3, {50, 12, 9}, {1, 4, 4}, 6, 6, 72, 16, FG_TYPE_F32, true, 0},       // 9 tokens, F32 cache
        {2, {45, 20}, {30, 3}, 8, 4, 128, 16, FG_TYPE_F16, true, 0},           // prefill after a cached prefix
        {4, {17, 3, 64, 30}, {2, 3, 1, 3}, 4, 2, 64, 32, FG_TYPE_F32, true, 0}, // F32, GQA 2
        {3, {61, 29, 90}, {1, 1, 1}, 16, 2, 128, 7, FG_TYPE_F16, true, 0},     // GQA 8, odd page size
        {3, {70, 50, 80}, {6, 2, 9}, 8, 1, 64, 16, FG_TYPE_F16, true, 3},      // shared prefix pages, MQA
        {2, {23, 9}, {23, 9}, 4, 2, 16, 16, FG_TYPE_F16, false, 0},            // non-causal (embeddings)
        {2, {12, 40}, {12, 40}, 2, 2, 8, 7, FG_TYPE_F32, false, 0},            // non-causal, tiny heads
        {2, {2100, 300}, {64, 1}, 8, 2, 128, 16, FG_TYPE_F16, true, 0},        // a 2,100-token sequence
        // prefill chunks with few q tiles and many keys (the tensor-core kernel's long loops,
        // tiles that are wholly visible, the diagonal ones, and non-causal rows)
        {1, {900}, {300}, 8, 2, 128, 16, FG_TYPE_F16, true, 0},                // 300 tokens after 600
        {1, {600}, {600}, 4, 2, 64, 16, FG_TYPE_F16, false, 0},                // non-causal, head_dim 64
        {2, {1200, 700}, {40, 33}, 8, 2, 64, 16, FG_TYPE_F16, true, 0},        // two chunks, head_dim 64
        {1, {1000}, {1}, 4, 4, 256, 16, FG_TYPE_F16, true, 0},                 // head_dim 256, long decode
        {2, {77, 31}, {5, 31}, 10, 5, 80, 16, FG_TYPE_F16, true, 0},           // head_dim 80
        {1, {10}, {10}, 8, 4, 8, 16, FG_TYPE_F32, true, 0},                    // stories260K's shape
        // decode steps (one token a sequence: the decode kernel where head_dim is 64/128/256)
        {1, {4096}, {1}, 32, 8, 128, 16, FG_TYPE_F16, true, 0},                // 8B shape, split sequence
        {4, {300, 1, 77, 1500}, {1, 1, 1, 1}, 28, 4, 128, 16, FG_TYPE_F16, true, 0}, // GQA 7, mixed lengths
        {3, {200, 50, 129}, {1, 1, 1}, 8, 8, 64, 5, FG_TYPE_F16, true, 0},     // MHA, page size 5
        {3, {70, 50, 80}, {1, 1, 1}, 8, 2, 64, 16, FG_TYPE_F16, true, 3},      // shared prefix pages
        {2, {23, 9}, {1, 1}, 4, 2, 64, 16, FG_TYPE_F16, false, 0},             // non-causal, one token
        {2, {700, 33}, {1, 1}, 32, 2, 256, 16, FG_TYPE_F16, true, 0},          // GQA 16: attn_kernel
        // Q8_0 cache (--kv-type q8_0): head_dim a multiple of 32
        {1, {1}, {1}, 4, 4, 64, 16, FG_TYPE_Q8_0, true, 0},                    // 1 token, first position
        {2, {37, 5}, {1, 1}, 8, 4, 64, 16, FG_TYPE_Q8_0, true, 0},             // 2 decodes, GQA 2, mid-page
        {3, {40, 7, 19}, {3, 2, 2}, 8, 2, 32, 8, FG_TYPE_Q8_0, true, 0},       // 7 tokens, GQA 4, head_dim 32
        {3, {50, 12, 9}, {1, 4, 4}, 6, 6, 96, 16, FG_TYPE_Q8_0, true, 0},      // 9 tokens, head_dim 96
        {2, {45, 20}, {30, 3}, 8, 4, 128, 16, FG_TYPE_Q8_0, true, 0},          // prefill chunk + decode
        {3, {61, 29, 90}, {1, 1, 1}, 16, 2, 128, 7, FG_TYPE_Q8_0, true, 0},    // GQA 8, odd page size
        {3, {70, 50, 80}, {6, 2, 9}, 8, 1, 64, 16, FG_TYPE_Q8_0, true, 3},     // shared prefix pages, MQA
        {2, {23, 9}, {23, 9}, 4, 2, 64, 16, FG_TYPE_Q8_0, false, 0},           // non-causal
        {2, {2100, 300}, {65, 1}, 8, 2, 128, 16, FG_TYPE_Q8_0, true, 0},       // a 2,100-token sequence
        {1, {1000}, {1}, 4, 4, 256, 16, FG_TYPE_Q8_0, true, 0},                // head_dim 256, long decode
        {2, {33, 17}, {33, 17}, 4, 2, 512, 5, FG_TYPE_Q8_0, true, 0},          // head_dim 512, page size 5
        // Q8_0 decode steps
        {1, {4096}, {1}, 32, 8, 128, 16, FG_TYPE_Q8_0, true, 0},               // 8B shape, split sequence
        {4, {300, 1, 77, 1500}, {1, 1, 1, 1}, 28, 4, 128, 16, FG_TYPE_Q8_0, true, 0}, // GQA 7, mixed lengths
        {3, {200, 50, 129}, {1, 1, 1}, 8, 8, 64, 5, FG_TYPE_Q8_0, true, 0},    // MHA, page size 5
        {2, {513, 64}, {1, 1}, 16, 2, 256, 16, FG_TYPE_Q8_0, true, 3},         // GQA 8, head_dim 256, shared
        {2, {45, 20}, {1, 1}, 8, 4, 96, 16, FG_TYPE_Q8_0, true, 0},            // head_dim 96: attn_kernel
};

static void test_attention(void **state) {
    const target *tg = *state;
    need_target(tg);
    for (size_t i = 0; i < FG_ARRAY_LEN(attn_cases); i++)
        if (!g_quick || attn_cases[i].n_kv[0] < 1000)
            attention_case(tg, &attn_cases[i]);
}

// The CUDA decode kernel's variants, every case again: four warp passes in flight an iteration
// (FORGE_CUDA_DEC_PASSES=4), sequences split only past 1,000 keys (FORGE_CUDA_DEC_L_MIN=1000:
// the 37-, 50- and 61-key decodes, split by default, in one block a kv head), and a kv head's q
// heads in one block and over 2 (FORGE_CUDA_DEC_HSPLIT=1, 2; by default over up to 4: the group's
// largest divisor up to it).
static void test_attention_dec_variants(void **state) {
    const target *tg = *state;
    if (tg->cpu) {
        print_message("SKIP: %s: the CUDA decode kernel's variants only\n", tg->name);
        skip();
    }
    need_target(tg);
    static const char *const env[][2] = {{"FORGE_CUDA_DEC_PASSES", "4"},
                                         {"FORGE_CUDA_DEC_L_MIN", "1000"},
                                         {"FORGE_CUDA_DEC_HSPLIT", "1"},
                                         {"FORGE_CUDA_DEC_HSPLIT", "2"}};
    for (size_t v = 0; v < FG_ARRAY_LEN(env); v++) {
        setenv(env[v][0], env[v][1], 1);
        print_message("%s: attention cases with %s=%s\n", tg->name, env[v][0], env[v][1]);
        for (size_t i = 0; i < FG_ARRAY_LEN(attn_cases); i++)
            if (!g_quick || attn_cases[i].n_kv[0] < 1000)
                attention_case(tg, &attn_cases[i]);
        unsetenv(env[v][0]);
    }
}

// The KV types every backend takes, and a Q8_0 pool whose head_dim is not whole blocks refused
// at kv_alloc (FG_ERR_UNSUPPORTED naming head_dim).
static void test_kv_types(void **state) {
    const target *tg = *state;
    need_target(tg);
    fg_backend *be = open_backend(tg, 0);
    static const uint32_t ok[] = {FG_TYPE_F16, FG_TYPE_F32, FG_TYPE_Q8_0};
    for (size_t i = 0; i < FG_ARRAY_LEN(ok); i++)
        for (fg_op op = FG_OP_KV_STORE; op <= FG_OP_KV_COPY_PAGE; op++)
            if (!fg_backend_supports(be, op, ok[i]))
                fail_msg("%s: %s of a %s cache not supported", tg->name, fg_op_name(op), fg_type_name(ok[i]));
    assert_false(fg_backend_supports(be, FG_OP_ATTENTION, FG_TYPE_Q4_0));
    fg_kv_view kv = {2, 3, 16, 2, 40, FG_TYPE_Q8_0, {0}, {0}};
    fg_buffer *buf = NULL;
    assert_int_equal(be->ops->kv_alloc(be, &kv, &buf), FG_ERR_UNSUPPORTED);
    assert_null(buf);
    const char *want = "a q8_0 KV cache needs head_dim a multiple of 32, found 40";
    const char *msg = fg_last_error();
    if (!strstr(msg, want))
        fail_msg("%s: kv_alloc said '%s', expected '...%s'", tg->name, msg, want);
    // head_dim 64: 2 kv heads x 2 blocks of 34 bytes a slot
    kv.head_dim = 64;
    assert_int_equal(be->ops->kv_alloc(be, &kv, &buf), FG_OK);
    assert_int_equal(kv.k.nb[1], 4 * 34);
    assert_int_equal(kv.k.nb[2], 16 * 4 * 34);
    assert_int_equal(fg_tensor_nbytes(&kv.v), 2 * 3 * 16 * 4 * 34);
    be->ops->buf_free(be, buf);
    fg_backend_destroy(be);
}

// ---------------------------------------------------------------- sample
// Random sampling rows (every setting of the chain, entries with biases and penalty counts),
// like tests/emu/test_sample_emu.cpp.
static void random_sample_row(fg_sample_row *p, int n_vocab, fg_sample_entry *ent, int first, int *n_ent) {
    memset(p, 0, sizeof *p);
    double u = (double)(rnd_u64() >> 11) * 0x1p-53;
    p->mode = u < 0.15 ? FG_SAMPLE_SCORE : FG_SAMPLE_DRAW;
    p->token = rnd_int(n_vocab + 2) - 1;
    p->n_top = rnd_int(23) - 2;
    if (p->n_top < -1)
        p->n_top = -1;
    static const int ks[] = {0, 0, 1, 5, 40, 1000, 1100, 5000};
    p->top_k = ks[rnd_int(8)];
    p->temperature = rnd_int(7) == 0 ? 0.0f : 0.2f + (rnd_f() + 1.0f);
    p->top_p = rnd_int(5) < 2 ? 1.0f : 0.75f + 0.25f * rnd_f();
    p->min_p = rnd_int(5) < 2 ? 0.0f : 0.1f * (rnd_f() + 1.0f);
    p->log_min_p = p->min_p > 0.0f ? logf(p->min_p) : 0.0f;
    p->repeat_penalty = rnd_int(2) ? 1.0f : 1.0f + 0.5f * rnd_f();
    p->frequency_penalty = rnd_int(2) ? 0.0f : 0.5f * rnd_f();
    p->presence_penalty = rnd_int(2) ? 0.0f : 0.5f * rnd_f();
    p->inv_temp = p->temperature > 0.0f ? 1.0 / (double)p->temperature : 0.0;
    p->uniform = (double)(rnd_u64() >> 11) * 0x1p-53;
    p->first_entry = first;
    int n = rnd_int(2) ? 0 : rnd_int(FG_MIN(n_vocab, 40));
    int t = -1;
    for (int i = 0; i < n; i++) { // ascending tokens, spread over the vocabulary
        t += 1 + rnd_int(FG_MAX(1, (n_vocab - t - 1) / (n - i + 1)));
        if (t >= n_vocab)
            break;
        fg_sample_entry e = {t, 0, 0.0f, 0};
        if (rnd_int(2)) {
            e.flags = FG_SAMPLE_ENTRY_BIAS;
            e.bias = 8.0f * rnd_f();
        }
        if (!e.flags || rnd_int(2))
            e.count = 1 + rnd_int(5);
        ent[first + (*n_ent)++] = e;
    }
    p->n_entries = *n_ent;
}

static bool lp_close(float got, float want) {
    if (got == want || (isnan(got) && isnan(want)))
        return true;
    double d = fabs((double)got - (double)want);
    return d <= 1e-6 + 1e-6 * fabs((double)want);
}

// The sample op against the reference sampler (sample_ref.c) on fresh random logits (ties,
// +-inf, NaN, huge values), the rows in two calls (row0 > 0), outputs poisoned, guard bytes.
// CPU: bit-identical (it is the reference) for 1 and 3 threads. GPU: tokens, the "uniform
// used" flag and the top-N ids identical; log-probabilities within 1e-6 (the log-softmax sum
// runs in another order; CUDA's exp/log are within 1 ulp of glibc's).
static void test_sample(void **state) {
    const target *tg = *state;
    need_target(tg);
    static const int vocabs[] = {7, 512, 3000, 151936};
    int n_rows_total = 0, n_draws = 0;
    for (size_t vi = 0; vi < FG_ARRAY_LEN(vocabs); vi++) {
        const int n_vocab = vocabs[vi], rows = n_vocab > 100000 ? 9 : 37, split = rows / 3;
        float *x = malloc(sizeof(float) * (size_t)n_vocab * rows);
        for (int r = 0; r < rows; r++) {
            float *xr = x + (size_t)r * n_vocab;
            int shape = rnd_int(6);
            float amp = shape == 0 ? 0.01f : shape == 1 ? 30.0f : 4.0f;
            for (int i = 0; i < n_vocab; i++) {
                float v = rnd_f() * amp;
                xr[i] = shape == 2 ? floorf(v * 2.0f) / 2.0f : shape == 3 ? 1.0f : v;
            }
            if (shape == 4) {
                xr[rnd_int(n_vocab)] = INFINITY;
                xr[rnd_int(n_vocab)] = INFINITY;
                xr[rnd_int(n_vocab)] = -INFINITY;
                xr[rnd_int(n_vocab)] = NAN;
                xr[rnd_int(n_vocab)] = 3e38f;
                xr[rnd_int(n_vocab)] = -0.0f;
            }
            if (shape == 5)
                for (int i = 0; i < n_vocab; i++)
                    if (rnd_int(3) == 0)
                        xr[i] = rnd_int(2) ? -INFINITY : NAN;
        }
        fg_sample_row *prow = malloc(sizeof *prow * rows);
        fg_sample_entry *ent = malloc(sizeof *ent * rows * 40);
        int n_ent = 0;
        for (int r = 0; r < rows; r++) {
            int ne = 0;
            random_sample_row(&prow[r], n_vocab, ent, n_ent, &ne);
            n_ent += ne;
        }
        // the reference
        fg_sample_result *want = malloc(sizeof *want * rows);
        fg_sample_cand *cands = malloc(sizeof *cands * (size_t)n_vocab);
        for (int r = 0; r < rows; r++) {
            fg_sample_ref(&prow[r], ent + prow[r].first_entry, x + (size_t)r * n_vocab, n_vocab, cands, &want[r]);
            n_draws += (want[r].flags & FG_SAMPLE_USED_UNIFORM) != 0;
        }
        // a step of `rows` tokens, every one an output row
        step_data sd;
        simple_step(&sd, rows, 0, 10);
        sd.st.n_out = rows;
        for (int r = 0; r < rows; r++)
            sd.out_rows[r] = r;
        sd.st.sample = prow;
        sd.st.sample_entries = ent;
        sd.st.n_sample_entries = n_ent;
        fg_sample_result *got[2] = {NULL, NULL};
        for (int k = 0; k < n_instances(tg); k++) {
            fg_backend *be = open_backend(tg, k);
            fg_backend_limits lim = {rows, 1, sd.max_pages, 64 * sd.max_pages, 64, 512, n_vocab, 0, n_ent};
            assert_int_equal(fg_backend_reserve(be, &lim), FG_OK);
            dev dx = dev_2d(be, FG_TYPE_F32, n_vocab, rows);
            dev_put(be, &dx, x);
            dev dr = dev_2d(be, FG_TYPE_I32, FG_SAMPLE_RESULT_WORDS, rows);
            begin(be, &sd);
            fg_tensor x0 = fg_tensor_rows(&dx.t, 0, n_vocab, split, dx.t.nb[1]);
            fg_tensor x1 = fg_tensor_rows(&dx.t, (size_t)split * dx.t.nb[1], n_vocab, rows - split, dx.t.nb[1]);
            fg_tensor r0 = fg_tensor_rows(&dr.t, 0, FG_SAMPLE_RESULT_WORDS, split, dr.t.nb[1]);
            fg_tensor r1 = fg_tensor_rows(&dr.t, (size_t)split * dr.t.nb[1], FG_SAMPLE_RESULT_WORDS, rows - split,
                                          dr.t.nb[1]);
            r0.type = r1.type = FG_TYPE_I32;
            if (fg_op_sample(be, &r0, &x0, 0) != FG_OK || fg_op_sample(be, &r1, &x1, split) != FG_OK)
                fail_msg("%s sample (n_vocab %d): %s", tg->name, n_vocab, fg_last_error());
            end(be);
            got[k] = dev_get(be, &dr);
            dev_check_guard(be, &dr, "sample");
            float *back = dev_get(be, &dx); // the op may not modify the logits
            check_same("sample: logits untouched", back, x, dx.bytes);
            free(back);
            dev_free(be, &dx);
            dev_free(be, &dr);
            fg_backend_destroy(be);
        }
        for (int r = 0; r < rows; r++) {
            const fg_sample_result *g = &got[0][r], *w = &want[r];
            const fg_sample_row *p = &prow[r];
            bool ok = g->token == w->token && g->flags == w->flags && g->n_top == w->n_top;
            if (p->n_top >= 0) {
                ok = ok && lp_close(g->logprob, w->logprob);
                for (int i = 0; ok && i < w->n_top; i++)
                    ok = g->top[i].token == w->top[i].token && lp_close(g->top[i].logprob, w->top[i].logprob);
            }
            if (tg->cpu)
                ok = ok && !memcmp(g, w, sizeof *g) && !memcmp(&got[1][r], w, sizeof *g);
            if (!ok)
                fail_msg("%s sample n_vocab %d row %d (mode %d, k %d, T %g, top_p %g, min_p %g, %d entries, u %.17g, "
                         "n_top %d): token %d flags %d logprob %.9g n_top %d, reference %d %d %.9g %d (seed 0x%llx)",
                         tg->name, n_vocab, r, p->mode, p->top_k, (double)p->temperature, (double)p->top_p,
                         (double)p->min_p, p->n_entries, p->uniform, p->n_top, g->token, g->flags,
                         (double)g->logprob, g->n_top, w->token, w->flags, (double)w->logprob, w->n_top,
                         (unsigned long long)g_seed);
        }
        n_rows_total += rows;
        free(got[0]);
        free(got[1]);
        free(want);
        free(cands);
        free(prow);
        free(ent);
        free(x);
        free_step(&sd);
    }
    print_message("%s sample: %d rows (%d draws) equal to the reference\n", tg->name, n_rows_total, n_draws);
}

// Validation of the sampling rows and entries (once per step) and of the op's shapes.
static void test_sample_checks(void **state) {
    const target *tg = *state;
    need_target(tg);
    fg_backend *be = open_backend(tg, 0);
    fg_backend_limits lim = {4, 1, 1, 64, 64, 512, 100, 0, 16};
    assert_int_equal(fg_backend_reserve(be, &lim), FG_OK);
    step_data sd;
    simple_step(&sd, 2, 0, 10);
    sd.st.n_out = 2;
    sd.out_rows[0] = 0;
    sd.out_rows[1] = 1;
    fg_sample_row rows[2];
    fg_sample_entry ent[3] = {{5, FG_SAMPLE_ENTRY_BIAS, 1.0f, 0}, {9, 0, 0.0f, 2}, {3, 0, 0.0f, 1}};
    rows[0] = (fg_sample_row){.mode = FG_SAMPLE_DRAW, .n_top = -1, .temperature = 0.0f, .top_p = 1.0f,
                              .repeat_penalty = 1.0f, .first_entry = 0, .n_entries = 3};
    rows[1] = rows[0];
    rows[1].n_entries = 0;
    sd.st.sample = rows;
    sd.st.sample_entries = ent;
    sd.st.n_sample_entries = 3;
    assert_int_equal(fg_step_begin(be, &sd.st), FG_ERR_INVALID_ARG); // 9 then 3: not ascending
    assert_non_null(strstr(fg_last_error(), "sample[0] entry 2 (token 3"));
    ent[2].token = 120; // ascending, but past the rows' 100 logits
    begin(be, &sd);
    dev dx = dev_2d(be, FG_TYPE_F32, 100, 2), dr = dev_2d(be, FG_TYPE_I32, FG_SAMPLE_RESULT_WORDS, 2);
    assert_int_equal(fg_op_sample(be, &dr.t, &dx.t, 0), FG_ERR_INVALID_ARG);
    assert_string_equal(fg_last_error(), "sample: an entry names token 120, the rows have 100 logits");
    fg_tensor one = fg_tensor_rows(&dx.t, 0, 100, 2, dx.t.nb[1]);
    assert_int_equal(fg_op_sample(be, &dr.t, &one, 1), FG_ERR_INVALID_ARG); // rows 1..2 of 2
    end(be);
    ent[2].token = 50;
    rows[1].uniform = 1.0;
    rows[1].temperature = 1.0f;
    rows[1].inv_temp = 1.0;
    assert_int_equal(fg_step_begin(be, &sd.st), FG_ERR_INVALID_ARG); // the draw must be < 1
    rows[1].uniform = 0.5;
    rows[1].n_entries = 4;
    assert_int_equal(fg_step_begin(be, &sd.st), FG_ERR_INVALID_ARG); // entries past the array
    rows[1].n_entries = 0;
    begin(be, &sd);
    assert_int_equal(fg_op_sample(be, &dr.t, &dx.t, 0), FG_OK);
    end(be);
    sd.st.sample = NULL; // a step without rows has no sample op
    sd.st.n_sample_entries = 0;
    begin(be, &sd);
    assert_int_equal(fg_op_sample(be, &dr.t, &dx.t, 0), FG_ERR_INVALID_ARG);
    end(be);
    dev_free(be, &dx);
    dev_free(be, &dr);
    fg_backend_destroy(be);
    free_step(&sd);
}

// The fused rope + KV store equals rope then kv_store (bit for bit on the same backend), for
// every cache type, both rope modes and a partial rotary dimension; q and the rotated k too.
static void rope_kv_store_case(const target *tg, uint32_t kv_type, fg_rope_mode mode, int n_rot) {
    const int n_head = 8, nkv = 2, hd = 64, ps = 16, n_layer = 1;
    int lens[2] = {40, 7}, news[2] = {5, 7};
    step_data sd;
    make_step(&sd, 2, lens, news, ps, 100, 0);
    const int nt = sd.st.n_tokens;
    const int64_t qw = n_head * hd, kw = nkv * hd;
    float *q = malloc(sizeof(float) * qw * nt), *k = malloc(sizeof(float) * kw * nt), *v = malloc(sizeof(float) * kw * nt);
    fill(q, (size_t)(qw * nt), 1.0f);
    fill(k, (size_t)(kw * nt), 1.0f);
    fill(v, (size_t)(kw * nt), 1.0f);
    unsigned char *res[2][2];
    float *qres[2], *kres[2];
    for (int fused = 0; fused < 2; fused++) {
        fg_backend *be = open_backend(tg, 0);
        reserve(be, nt, 2, sd.max_pages, sd.max_pages * ps, qw);
        fg_kv_view kv = {n_layer, sd.n_pages, ps, nkv, hd, kv_type, {0}, {0}};
        fg_buffer *kvbuf = NULL;
        assert_int_equal(be->ops->kv_alloc(be, &kv, &kvbuf), FG_OK);
        size_t kvb = fg_tensor_nbytes(&kv.k);
        unsigned char *z = calloc(1, kvb);
        assert_int_equal(be->ops->upload(be, &kv.k, 0, z, kvb), FG_OK);
        assert_int_equal(be->ops->upload(be, &kv.v, 0, z, kvb), FG_OK);
        dev dq = dev_2d(be, FG_TYPE_F32, qw, nt), dk = dev_2d(be, FG_TYPE_F32, kw, nt), dv = dev_2d(be, FG_TYPE_F32, kw, nt);
        dev_put(be, &dq, q);
        dev_put(be, &dk, k);
        dev_put(be, &dv, v);
        fg_rope_params p = {n_head, hd, n_rot, mode, 1e6f, 1.0f, NULL};
        begin(be, &sd);
        if (fused) {
            assert_int_equal(fg_op_rope_kv_store(be, &dq.t, &dk.t, &dv.t, &p, nkv, &kv, 0), FG_OK);
        } else {
            fg_rope_params pk = p;
            pk.n_head = nkv;
            assert_int_equal(fg_op_rope(be, &dq.t, &p), FG_OK);
            assert_int_equal(fg_op_rope(be, &dk.t, &pk), FG_OK);
            assert_int_equal(fg_op_kv_store(be, &kv, 0, &dk.t, &dv.t), FG_OK);
        }
        end(be);
        res[fused][0] = malloc(kvb);
        res[fused][1] = malloc(kvb);
        assert_int_equal(be->ops->download(be, &kv.k, 0, res[fused][0], kvb), FG_OK);
        assert_int_equal(be->ops->download(be, &kv.v, 0, res[fused][1], kvb), FG_OK);
        qres[fused] = dev_get(be, &dq);
        kres[fused] = dev_get(be, &dk);
        if (fused) {
            check_same("rope_kv_store rotated k", kres[1], kres[0], dk.bytes);
            check_same("rope_kv_store k", res[1][0], res[0][0], kvb);
            check_same("rope_kv_store v", res[1][1], res[0][1], kvb);
            check_same("rope_kv_store q", qres[1], qres[0], dq.bytes);
        }
        free(z);
        be->ops->buf_free(be, kvbuf);
        dev_free(be, &dq);
        dev_free(be, &dk);
        dev_free(be, &dv);
        fg_backend_destroy(be);
    }
    for (int i = 0; i < 2; i++) {
        free(res[i][0]);
        free(res[i][1]);
        free(qres[i]);
        free(kres[i]);
    }
    free(q);
    free(k);
    free(v);
    free_step(&sd);
}

static void test_rope_kv_store(void **state) {
    const target *tg = *state;
    need_target(tg);
    rope_kv_store_case(tg, FG_TYPE_F16, FG_ROPE_NEOX, 64);
    rope_kv_store_case(tg, FG_TYPE_Q8_0, FG_ROPE_NORMAL, 32);
    rope_kv_store_case(tg, FG_TYPE_F32, FG_ROPE_NEOX, 48);
}

// rope_kv_attention equals rope_kv_store then attention (then convert, with dq) on the same
// backend, bit for bit (the cache and the output): the CUDA decode kernel rotates q and the new
// k in shared memory and stores K/V itself on decode steps (split sequences included: the store
// is the work of the chunk that holds the position) and, unsplit, quantizes its output rows
// into dq; prefill steps and F32 caches run the ops. The cache
// holds random history; the other layer's pages must stay as they were.
typedef struct {
    uint32_t kv_type;
    fg_rope_mode mode;
    int n_rot, head_dim, n_head, n_head_kv, n_seqs;
    int n_kv[4], n_new[4];
    bool ff;
    uint32_t dq_type; // the output projection's activations from the op too (0: none)
} rka_case;

static void rope_kv_attention_case(const target *tg, const rka_case *rc) {
    const int n_layer = 2, layer = 1, hd = rc->head_dim, nkv = rc->n_head_kv, ps = 16;
    const int64_t qw = (int64_t)rc->n_head * hd, kw = (int64_t)nkv * hd;
    step_data sd;
    make_step(&sd, rc->n_seqs, rc->n_kv, rc->n_new, ps, 100, 0);
    const int nt = sd.st.n_tokens;
    const size_t row_b = fg_type_row_size_n(rc->kv_type, kw);
    const size_t cache_rows = (size_t)n_layer * sd.n_pages * ps, cache_bytes = cache_rows * row_b;
    unsigned char *k0 = malloc(cache_bytes), *v0 = malloc(cache_bytes);
    float *tmp = malloc(sizeof(float) * (size_t)kw);
    for (size_t r = 0; r < cache_rows; r++) {
        fill(tmp, (size_t)kw, 2.0f);
        kv_put_row(k0, rc->kv_type, kw, r, tmp);
        fill(tmp, (size_t)kw, 1.0f);
        kv_put_row(v0, rc->kv_type, kw, r, tmp);
    }
    free(tmp);
    float *q = malloc(sizeof(float) * qw * nt), *k = malloc(sizeof(float) * kw * nt), *v = malloc(sizeof(float) * kw * nt);
    fill(q, (size_t)(qw * nt), 2.0f);
    fill(k, (size_t)(kw * nt), 2.0f);
    fill(v, (size_t)(kw * nt), 1.0f);
    float ffv[256];
    for (int i = 0; i < rc->n_rot / 2; i++)
        ffv[i] = 1.0f + 3.0f * fabsf(rnd_f());
    char what[160];
    snprintf(what, sizeof(what), "%s rope_kv_attention %s %s n_rot=%d hd=%d heads %d/%d%s%s%s", tg->name,
             fg_type_name(rc->kv_type), rc->mode == FG_ROPE_NEOX ? "neox" : "normal", rc->n_rot, hd, rc->n_head, nkv,
             rc->ff ? " freq_factors" : "", rc->dq_type ? " into " : "", rc->dq_type ? fg_type_name(rc->dq_type) : "");
    unsigned char *kres[2], *vres[2];
    void *out[2];
    size_t obytes = 0;
    for (int fused = 0; fused < 2; fused++) {
        fg_backend *be = open_backend(tg, 0);
        reserve(be, nt, rc->n_seqs, sd.max_pages, sd.max_pages * ps, qw);
        fg_kv_view kv = {n_layer, sd.n_pages, ps, nkv, hd, rc->kv_type, {0}, {0}};
        fg_buffer *kvbuf = NULL;
        assert_int_equal(be->ops->kv_alloc(be, &kv, &kvbuf), FG_OK);
        assert_int_equal(fg_tensor_nbytes(&kv.k), cache_bytes);
        assert_int_equal(be->ops->upload(be, &kv.k, 0, k0, cache_bytes), FG_OK);
        assert_int_equal(be->ops->upload(be, &kv.v, 0, v0, cache_bytes), FG_OK);
        dev dq = dev_2d(be, FG_TYPE_F32, qw, nt), dk = dev_2d(be, FG_TYPE_F32, kw, nt), dv = dev_2d(be, FG_TYPE_F32, kw, nt);
        dev dd = dev_2d(be, FG_TYPE_F32, qw, nt), dff = dev_2d(be, FG_TYPE_F32, 128, 1);
        dev dqd = dev_2d(be, rc->dq_type ? rc->dq_type : FG_TYPE_F32, qw, nt);
        dev_put(be, &dq, q);
        dev_put(be, &dk, k);
        dev_put(be, &dv, v);
        float ffp[128] = {0};
        memcpy(ffp, ffv, sizeof(float) * (size_t)(rc->n_rot / 2));
        dev_put(be, &dff, ffp);
        fg_rope_params rp = {rc->n_head, hd, rc->n_rot, rc->mode, 1e4f, 0.5f, rc->ff ? &dff.t : NULL};
        fg_attn_params ap = {layer, rc->n_head, 1.0f / sqrtf((float)hd), true};
        begin(be, &sd);
        if (fused) {
            if (fg_op_rope_kv_attention(be, &dd.t, rc->dq_type ? &dqd.t : NULL, &dq.t, &dk.t, &dv.t, &rp, nkv, &kv,
                                        &ap) != FG_OK)
                fail_msg("%s: %s", what, fg_last_error());
        } else {
            assert_int_equal(fg_op_rope_kv_store(be, &dq.t, &dk.t, &dv.t, &rp, nkv, &kv, layer), FG_OK);
            assert_int_equal(fg_op_attention(be, &dd.t, &dq.t, &kv, &ap), FG_OK);
            if (rc->dq_type)
                assert_int_equal(fg_op_convert(be, &dqd.t, &dd.t), FG_OK);
        }
        end(be);
        kres[fused] = malloc(cache_bytes);
        vres[fused] = malloc(cache_bytes);
        assert_int_equal(be->ops->download(be, &kv.k, 0, kres[fused], cache_bytes), FG_OK);
        assert_int_equal(be->ops->download(be, &kv.v, 0, vres[fused], cache_bytes), FG_OK);
        out[fused] = rc->dq_type ? dev_get(be, &dqd) : dev_get(be, &dd); // (with dq, dst is unspecified)
        dev_check_guard(be, &dd, what);
        dev_check_guard(be, &dqd, what);
        obytes = rc->dq_type ? dqd.bytes : dd.bytes;
        be->ops->buf_free(be, kvbuf);
        dev_free(be, &dq);
        dev_free(be, &dk);
        dev_free(be, &dv);
        dev_free(be, &dd);
        dev_free(be, &dff);
        dev_free(be, &dqd);
        fg_backend_destroy(be);
    }
    const size_t layer_bytes = cache_bytes / n_layer; // layer 0 untouched
    check_same(what, kres[0], k0, layer_bytes);
    check_same(what, kres[1], k0, layer_bytes);
    check_same(what, vres[1], v0, layer_bytes);
    check_same(what, kres[1], kres[0], cache_bytes);
    check_same(what, vres[1], vres[0], cache_bytes);
    check_same(what, out[1], out[0], obytes);
    for (int i = 0; i < 2; i++) {
        free(kres[i]);
        free(vres[i]);
        free(out[i]);
    }
    free(k0);
    free(v0);
    free(q);
    free(k);
    free(v);
    free_step(&sd);
}

static void test_rope_kv_attention(void **state) {
    const target *tg = *state;
    need_target(tg);
    static const rka_case cases[] = {
        // type, mode, n_rot, head_dim, n_head, n_head_kv, n_seqs, n_kv, n_new, freq factors, dq
        {FG_TYPE_F16, FG_ROPE_NORMAL, 128, 128, 32, 8, 1, {37}, {1}, false, 0},                  // 8B's shape
        {FG_TYPE_F16, FG_ROPE_NORMAL, 128, 128, 32, 8, 1, {37}, {1}, false, FG_TYPE_Q8_K},       // ... into Q8_K
        {FG_TYPE_F16, FG_ROPE_NEOX, 64, 64, 32, 8, 2, {5, 90}, {1, 1}, false, FG_TYPE_Q8_1},     // 1B's, Q8_1
        {FG_TYPE_F16, FG_ROPE_NEOX, 64, 64, 32, 8, 2, {5, 14}, {1, 1}, false, FG_TYPE_Q8_1},     // short: unsplit
        {FG_TYPE_F16, FG_ROPE_NEOX, 64, 64, 8, 2, 3, {1, 70, 17}, {1, 1, 1}, true, 0},           // first position, ff
        {FG_TYPE_Q8_0, FG_ROPE_NEOX, 64, 128, 28, 4, 2, {300, 45}, {1, 1}, false, FG_TYPE_Q8_1}, // GQA 7, partial rotary
        {FG_TYPE_Q8_0, FG_ROPE_NEOX, 64, 128, 28, 4, 2, {300, 45}, {1, 1}, false, FG_TYPE_Q8_K}, // (896: convert after)
        {FG_TYPE_Q8_0, FG_ROPE_NORMAL, 32, 64, 4, 4, 2, {20, 9}, {1, 1}, true, FG_TYPE_Q8_1},    // MHA, partial, ff
        {FG_TYPE_F16, FG_ROPE_NORMAL, 128, 128, 32, 8, 2, {4000, 33}, {1, 1}, false, 0},         // a split sequence
        {FG_TYPE_F16, FG_ROPE_NORMAL, 128, 128, 32, 8, 2, {4000, 33}, {1, 1}, false, FG_TYPE_Q8_K},
        {FG_TYPE_Q8_0, FG_ROPE_NEOX, 256, 256, 8, 2, 1, {1000}, {1}, false, 0},                  // head_dim 256, split
        {FG_TYPE_F16, FG_ROPE_NEOX, 64, 64, 8, 2, 2, {40, 12}, {20, 3}, true, FG_TYPE_Q8_1},     // prefill: the ops
        {FG_TYPE_F32, FG_ROPE_NORMAL, 48, 64, 8, 2, 2, {40, 12}, {1, 1}, false, FG_TYPE_Q8_K},   // F32 cache: the ops
    };
    // the CUDA decode kernel quantizes its output only unsplit, and Q8_K rows only where asked
    // (FORGE_CUDA_DEC_QUANT=2): the cases again with both, short sequences unsplit; then with a
    // kv head's q heads in one block (FORGE_CUDA_DEC_HSPLIT=1; by default over up to 4, each
    // block storing the new k and v), and over 2 with both (two heads a block: 256 elements,
    // Q8_K rows from the kernel)
    for (int pass = 0; pass < (tg->cpu ? 1 : 4); pass++) {
        if (pass == 1 || pass == 3) {
            setenv("FORGE_CUDA_DEC_QUANT", "2", 1);
            setenv("FORGE_CUDA_DEC_L_MIN", "1000", 1);
        }
        if (pass >= 2)
            setenv("FORGE_CUDA_DEC_HSPLIT", pass == 2 ? "1" : "2", 1);
        for (size_t i = 0; i < FG_ARRAY_LEN(cases); i++)
            if (!g_quick || cases[i].n_kv[0] < 1000)
                rope_kv_attention_case(tg, &cases[i]);
        unsetenv("FORGE_CUDA_DEC_QUANT");
        unsetenv("FORGE_CUDA_DEC_L_MIN");
        unsetenv("FORGE_CUDA_DEC_HSPLIT");
    }
}

// ---------------------------------------------------------------- embedding models (issue 14)
// layernorm: rows of odd widths on both sides of the GPU's warp/block switch (1,024 columns),
// with weight and bias, without them, and in place; the inputs carry an offset, so the mean
// subtraction matters. Reference in double; the element bound and NMSE 1e-6 (the CPU sums in
// double, the GPU in f32).
static void test_layernorm(void **state) {
    const target *tg = *state;
    need_target(tg);
    static const int64_t shapes[5][2] = {{67, 7}, {384, 33}, {1025, 3}, {4096, 2}, {1, 5}};
    for (int sh = 0; sh < 5; sh++)
        for (int variant = 0; variant < 3; variant++) { // 0: w and b, 1: neither, 2: w and b in place
            const int64_t n = shapes[sh][0], rows = shapes[sh][1];
            const bool wb = variant != 1, inplace = variant == 2;
            float *x = malloc(sizeof(float) * n * rows), *w = malloc(sizeof(float) * n), *b = malloc(sizeof(float) * n);
            fill(x, (size_t)(n * rows), 3.0f);
            for (int64_t i = 0; i < n * rows; i++)
                x[i] += 1.5f;
            fill(w, (size_t)n, 1.5f);
            fill(b, (size_t)n, 0.5f);
            const float eps = n == 1 ? 1e-5f : 1e-12f; // BERT's eps; a 1-wide row has variance 0
            double *ref = malloc(sizeof(double) * n * rows);
            for (int64_t r = 0; r < rows; r++) {
                const float *xr = x + r * n;
                double mu = 0, var = 0;
                for (int64_t i = 0; i < n; i++)
                    mu += xr[i];
                mu /= (double)n;
                for (int64_t i = 0; i < n; i++)
                    var += (xr[i] - mu) * (xr[i] - mu);
                var /= (double)n;
                for (int64_t i = 0; i < n; i++)
                    ref[r * n + i] = (xr[i] - mu) / sqrt(var + eps) * (wb ? w[i] : 1.0) + (wb ? b[i] : 0.0);
            }
            char what[96];
            snprintf(what, sizeof what, "%s layernorm [%lld][%lld]%s%s", tg->name, (long long)rows, (long long)n,
                     wb ? "" : " no w/b", inplace ? " in place" : "");
            float *o[2] = {0};
            for (int k = 0; k < n_instances(tg); k++) {
                fg_backend *be = open_backend(tg, k);
                dev dx = dev_2d(be, FG_TYPE_F32, n, rows), dw = dev_2d(be, FG_TYPE_F32, n, 1),
                    db = dev_2d(be, FG_TYPE_F32, n, 1), dd = dev_2d(be, FG_TYPE_F32, n, rows);
                dev_put(be, &dx, x);
                dev_put(be, &dw, w);
                dev_put(be, &db, b);
                dev *out = inplace ? &dx : &dd;
                if (fg_op_layernorm(be, &out->t, &dx.t, wb ? &dw.t : NULL, wb ? &db.t : NULL, eps) != FG_OK)
                    fail_msg("%s: %s", what, fg_last_error());
                o[k] = dev_get(be, out);
                dev_check_guard(be, out, what);
                dev_free(be, &dx);
                dev_free(be, &dw);
                dev_free(be, &db);
                dev_free(be, &dd);
                fg_backend_destroy(be);
            }
            if (tg->cpu)
                check_same(what, o[0], o[1], (size_t)(n * rows) * 4);
            check_close(what, o[0], ref, (size_t)(n * rows));
            check_nmse(what, o[0], ref, (size_t)(n * rows), 1e-6);
            free(o[0]);
            free(o[1]);
            free(x);
            free(w);
            free(b);
            free(ref);
        }
    // refusals: a bias of the wrong width, a negative eps
    fg_backend *be = open_backend(tg, 0);
    dev dx = dev_2d(be, FG_TYPE_F32, 8, 2), db = dev_2d(be, FG_TYPE_F32, 7, 1);
    assert_int_equal(fg_op_layernorm(be, &dx.t, &dx.t, NULL, &db.t, 1e-5f), FG_ERR_INVALID_ARG);
    assert_int_equal(fg_op_layernorm(be, &dx.t, &dx.t, NULL, NULL, -1.0f), FG_ERR_INVALID_ARG);
    dev_free(be, &dx);
    dev_free(be, &db);
    fg_backend_destroy(be);
}

// gelu, erf and tanh forms, on strided views (the halves of a wider row) and in place;
// element-wise bound against double erf / tanh.
static void test_gelu(void **state) {
    const target *tg = *state;
    need_target(tg);
    static const int64_t shapes[3][2] = {{67, 9}, {1536, 33}, {5000, 2}};
    for (int sh = 0; sh < 3; sh++)
        for (int mode = 0; mode < 2; mode++) {
            const int64_t n = shapes[sh][0], rows = shapes[sh][1];
            float *x = malloc(sizeof(float) * 2 * n * rows);
            fill(x, (size_t)(2 * n * rows), 6.0f);
            double *ref = malloc(sizeof(double) * n * rows);
            for (int64_t r = 0; r < rows; r++)
                for (int64_t i = 0; i < n; i++) {
                    double v = x[r * 2 * n + n + i]; // the second half of each row
                    ref[r * n + i] = mode == FG_GELU_ERF
                                         ? 0.5 * v * (1.0 + erf(v / sqrt(2.0)))
                                         : 0.5 * v * (1.0 + tanh(sqrt(2.0 / M_PI) * (v + 0.044715 * v * v * v)));
                }
            char what[96];
            snprintf(what, sizeof what, "%s gelu %s [%lld][%lld]", tg->name, mode == FG_GELU_ERF ? "erf" : "tanh",
                     (long long)rows, (long long)n);
            float *o[2] = {0}, *oi = NULL;
            for (int k = 0; k < n_instances(tg); k++) {
                fg_backend *be = open_backend(tg, k);
                dev dx = dev_2d(be, FG_TYPE_F32, 2 * n, rows), dd = dev_2d(be, FG_TYPE_F32, n, rows);
                dev_put(be, &dx, x);
                fg_tensor half = fg_tensor_rows(&dx.t, (size_t)n * 4, n, rows, dx.t.nb[1]);
                if (fg_op_gelu(be, &dd.t, &half, (fg_gelu_mode)mode) != FG_OK)
                    fail_msg("%s: %s", what, fg_last_error());
                o[k] = dev_get(be, &dd);
                dev_check_guard(be, &dd, what);
                if (k == 0) { // in place on the strided view: the same values, the first half untouched
                    assert_int_equal(fg_op_gelu(be, &half, &half, (fg_gelu_mode)mode), FG_OK);
                    oi = dev_get(be, &dx);
                    for (int64_t r = 0; r < rows; r++) {
                        check_same(what, oi + r * 2 * n, x + r * 2 * n, (size_t)n * 4);
                        check_same(what, oi + r * 2 * n + n, o[0] + r * n, (size_t)n * 4);
                    }
                    free(oi);
                }
                dev_free(be, &dx);
                dev_free(be, &dd);
                fg_backend_destroy(be);
            }
            if (tg->cpu)
                check_same(what, o[0], o[1], (size_t)(n * rows) * 4);
            check_close(what, o[0], ref, (size_t)(n * rows));
            free(o[0]);
            free(o[1]);
            free(x);
            free(ref);
        }
    fg_backend *be = open_backend(tg, 0);
    dev dx = dev_2d(be, FG_TYPE_F32, 8, 2);
    assert_int_equal(fg_op_gelu(be, &dx.t, &dx.t, (fg_gelu_mode)7), FG_ERR_INVALID_ARG);
    dev_free(be, &dx);
    fg_backend_destroy(be);
}

// add_rows: position rows (sequences that start mid-way, a table exactly as long as the step
// needs) and a fixed row, from F32 / F16 / BF16 tables, into a residual that holds values.
// Bit-exact: one f32 addition of an exactly converted element. A table one row too short and
// a row out of range are refused.
static void test_add_rows(void **state) {
    const target *tg = *state;
    need_target(tg);
    static const uint32_t types[3] = {FG_TYPE_F32, FG_TYPE_F16, FG_TYPE_BF16};
    const int64_t n = 67;
    int lens[3] = {40, 7, 13}, news[3] = {5, 7, 13};
    step_data sd;
    make_step(&sd, 3, lens, news, 16, 100, 0);
    const int nt = sd.st.n_tokens, n_rows = 40;
    float *x = malloc(sizeof(float) * n * nt), *tab = malloc(sizeof(float) * n * n_rows);
    fill(x, (size_t)(n * nt), 2.0f);
    fill(tab, (size_t)(n * n_rows), 1.0f);
    for (int ti = 0; ti < 3; ti++)
        for (int fixed = 0; fixed < 2; fixed++) {
            const uint32_t type = types[ti];
            // the table in its type, and its exact f32 values
            size_t esz = type == FG_TYPE_F32 ? 4 : 2;
            unsigned char *traw = malloc(esz * n * n_rows);
            float *tv = malloc(sizeof(float) * n * n_rows);
            for (int64_t i = 0; i < n * n_rows; i++) {
                if (type == FG_TYPE_F32) {
                    memcpy(traw + 4 * i, &tab[i], 4);
                    tv[i] = tab[i];
                } else if (type == FG_TYPE_F16) {
                    fg_f16 h = fg_f32_to_f16(tab[i]);
                    memcpy(traw + 2 * i, &h, 2);
                    tv[i] = fg_f16_to_f32(h);
                } else {
                    fg_bf16 h = fg_f32_to_bf16(tab[i]);
                    memcpy(traw + 2 * i, &h, 2);
                    tv[i] = fg_bf16_to_f32(h);
                }
            }
            const int32_t row = 1;
            float *want = malloc(sizeof(float) * n * nt);
            for (int t = 0; t < nt; t++) {
                int r = fixed ? row : sd.pos[t];
                for (int64_t i = 0; i < n; i++)
                    want[t * n + i] = x[t * n + i] + tv[r * n + i];
            }
            char what[96];
            snprintf(what, sizeof what, "%s add_rows %s %s", tg->name, fg_type_name(type), fixed ? "fixed" : "pos");
            fg_backend *be = open_backend(tg, 0);
            reserve(be, nt, 3, sd.max_pages, sd.max_pages * sd.page_size, n);
            if (!fg_backend_supports(be, FG_OP_ADD_ROWS, type))
                fail_msg("%s: not supported", what);
            dev dx = dev_2d(be, FG_TYPE_F32, n, nt), dt = dev_2d(be, type, n, n_rows);
            dev_put(be, &dx, x);
            dev_put(be, &dt, traw);
            begin(be, &sd);
            if (fg_op_add_rows(be, &dx.t, &dt.t, fixed ? FG_ROWS_FIXED : FG_ROWS_POS, row) != FG_OK)
                fail_msg("%s: %s", what, fg_last_error());
            // refusals: positions past the table, a row out of range
            fg_tensor short_t = dt.t;
            short_t.ne[1] = n_rows - 1;
            assert_int_equal(fg_op_add_rows(be, &dx.t, &short_t, FG_ROWS_POS, 0), FG_ERR_INVALID_ARG);
            assert_int_equal(fg_op_add_rows(be, &dx.t, &dt.t, FG_ROWS_FIXED, n_rows), FG_ERR_INVALID_ARG);
            end(be);
            float *got = dev_get(be, &dx);
            check_same(what, got, want, (size_t)(n * nt) * 4);
            dev_check_guard(be, &dx, what);
            free(got);
            dev_free(be, &dx);
            dev_free(be, &dt);
            fg_backend_destroy(be);
            free(traw);
            free(tv);
            free(want);
        }
    free(x);
    free(tab);
    free_step(&sd);
}

// pool: mean / first / last token of each sequence, with and without the L2 normalisation,
// over sequences of 1 to 70 tokens (one all zeros: its normalised vector stays 0, not NaN),
// widths on both sides of the GPU's 1,024 threads; the element bound against double.
static void test_pool(void **state) {
    const target *tg = *state;
    need_target(tg);
    static const int64_t widths[3] = {384, 67, 1500};
    int lens[5] = {1, 9, 33, 2, 70};
    step_data sd;
    make_step(&sd, 5, lens, lens, 16, 100, 0);
    const int nt = sd.st.n_tokens, ns = 5;
    for (int wi = 0; wi < 3; wi++)
        for (int mode = FG_POOL_MEAN; mode <= FG_POOL_LAST; mode++)
            for (int norm = 0; norm < 2; norm++) {
                const int64_t n = widths[wi];
                float *x = malloc(sizeof(float) * n * nt);
                fill(x, (size_t)(n * nt), 2.0f);
                for (int t = 0; t < lens[0]; t++) // sequence 0: zeros
                    memset(x + t * n, 0, (size_t)n * 4);
                double *ref = malloc(sizeof(double) * n * ns);
                for (int s = 0, first = 0; s < ns; first += lens[s], s++) {
                    double *r = ref + s * n, ss = 0;
                    for (int64_t i = 0; i < n; i++) {
                        double v = 0;
                        if (mode == FG_POOL_MEAN) {
                            for (int t = 0; t < lens[s]; t++)
                                v += x[(first + t) * n + i];
                            v /= lens[s];
                        } else {
                            v = x[(mode == FG_POOL_CLS ? first : first + lens[s] - 1) * n + i];
                        }
                        r[i] = v;
                        ss += v * v;
                    }
                    if (norm)
                        for (int64_t i = 0; i < n; i++)
                            r[i] /= fmax(sqrt(ss), 1e-12);
                }
                char what[96];
                snprintf(what, sizeof what, "%s pool mode %d%s [%lld]", tg->name, mode, norm ? " normalised" : "",
                         (long long)n);
                float *o[2] = {0};
                for (int k = 0; k < n_instances(tg); k++) {
                    fg_backend *be = open_backend(tg, k);
                    reserve(be, nt, ns, sd.max_pages, sd.max_pages * sd.page_size, n);
                    dev dx = dev_2d(be, FG_TYPE_F32, n, nt), dd = dev_2d(be, FG_TYPE_F32, n, ns);
                    dev_put(be, &dx, x);
                    begin(be, &sd);
                    if (fg_op_pool(be, &dd.t, &dx.t, (fg_pool_mode)mode, norm) != FG_OK)
                        fail_msg("%s: %s", what, fg_last_error());
                    // refusals: dst overlapping x, pooling 'none'
                    fg_tensor ov = fg_tensor_rows(&dx.t, 0, n, ns, dx.t.nb[1]);
                    assert_int_equal(fg_op_pool(be, &ov, &dx.t, (fg_pool_mode)mode, norm), FG_ERR_INVALID_ARG);
                    assert_int_equal(fg_op_pool(be, &dd.t, &dx.t, FG_POOL_NONE, norm), FG_ERR_INVALID_ARG);
                    end(be);
                    o[k] = dev_get(be, &dd);
                    dev_check_guard(be, &dd, what);
                    dev_free(be, &dx);
                    dev_free(be, &dd);
                    fg_backend_destroy(be);
                }
                if (tg->cpu)
                    check_same(what, o[0], o[1], (size_t)(n * ns) * 4);
                check_close(what, o[0], ref, (size_t)(n * ns));
                free(o[0]);
                free(o[1]);
                free(x);
                free(ref);
            }
    free_step(&sd);
}
// ---------------------------------------------------------------- (end issue 14)

int main(void) {
    const char *s = getenv("FORGE_SEED");
    if (s)
        g_seed = strtoull(s, NULL, 0);
    g_rng = g_seed;
    g_quick = getenv("FORGE_OPS_QUICK") && !strcmp(getenv("FORGE_OPS_QUICK"), "1");
    printf("test_backend_ops: seed 0x%llx (FORGE_SEED replays it), cpu kernels %s\n", (unsigned long long)g_seed,
           fg_cpu_simd_name());
#define T(tg, fn) {#tg ": " #fn, fn, NULL, NULL, (void *)&tg}
#define PER_TARGET(tg)                                                                                        \
    T(tg, test_matmul_all_types), T(tg, test_matmul_integer_tiles), T(tg, test_matmul_f16_tiles),              \
        T(tg, test_matmul_mqr_tiles), T(tg, test_matmul_mqr_pack_tiles), T(tg, test_matmul_mqr_chain_tiles),   \
        T(tg, test_matmul_mqr_stage_tiles), T(tg, test_matmul_mqr_chain_stage_tiles),                          \
        T(tg, test_matmul_blas_tiles), T(tg, test_matmul_mwk_variants),                                           \
        T(tg, test_convert), T(tg, test_rmsnorm),                                                                 \
        T(tg, test_add_swiglu), T(tg, test_swiglu_convert), T(tg, test_rmsnorm_convert), T(tg, test_add_rmsnorm), \
        T(tg, test_rope), T(tg, test_get_rows_gather), T(tg, test_check_finite), T(tg, test_attention),           \
        T(tg, test_attention_dec_variants), T(tg, test_kv_types), T(tg, test_rope_kv_store), T(tg, test_rope_kv_attention), T(tg, test_sample),  \
        T(tg, test_sample_checks), T(tg, test_layernorm), T(tg, test_gelu), T(tg, test_add_rows), T(tg, test_pool)
    const struct CMUnitTest tests[] = {
        PER_TARGET(k_cpu),
#ifdef FG_HAVE_CUDA
        PER_TARGET(k_cuda),
#endif
    };
    // FORGE_TEST_FILTER: comma-separated fnmatch patterns over "target: test" names
    struct CMUnitTest sel[FG_ARRAY_LEN(tests)];
    size_t n_sel = 0;
    const char *filter = getenv("FORGE_TEST_FILTER");
    for (size_t i = 0; i < FG_ARRAY_LEN(tests); i++) {
        bool take = !filter || !*filter;
        for (const char *f = filter; f && *f && !take; f = strchr(f, ',') ? strchr(f, ',') + 1 : NULL) {
            char pat[128];
            size_t len = strcspn(f, ",");
            if (len >= sizeof(pat))
                len = sizeof(pat) - 1;
            memcpy(pat, f, len);
            pat[len] = '\0';
            take = fnmatch(pat, tests[i].name, 0) == 0;
        }
        if (take)
            sel[n_sel++] = tests[i];
    }
    if (n_sel == 0) {
        fprintf(stderr, "test_backend_ops: FORGE_TEST_FILTER=%s matches no test\n", filter);
        return 1;
    }
    return _cmocka_run_group_tests("backend_ops", sel, n_sel, NULL, NULL);
}
