// bench_ops.c - single-op timings of the CPU backend: a decode matvec and a prefill matmul per
// weight type (GB/s of weights read, GFLOP/s), a large decode matvec (4096 x 14336, beyond the
// caches) against the memory bandwidth (memcpy, threaded read), F16-KV attention for decode,
// and the cost of one thread-pool dispatch. Times are the best and the median of several runs
// (the box may be shared). Not a test: no assertions on time. Build and run:
//   make build/lib/libfg_backend.a build/lib/libfg_quant.a build/lib/libfg_base.a
//   cc -O2 -march=native -Iinclude -Isrc -D_GNU_SOURCE bench/bench_ops.c build/lib/libfg_backend.a
//      build/lib/libfg_quant.a build/lib/libfg_base.a -lm -lpthread -o build/bench_ops
//   build/bench_ops [n_threads] [type ...]      (env BENCH_ONLY=decode|prefill|big|mem: one group)
#include "backend/backend.h"
#include "base/status.h"
#include "base/util.h"
#include "backend/cpu/cpu_kernels.h"
#include "quant/quant.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t g_rng = 1234567;
static float rnd_f(void) {
    g_rng = g_rng * 6364136223846793005ULL + 1442695040888963407ULL;
    return (float)((g_rng >> 40) / 16777216.0 * 2.0 - 1.0);
}

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}
// Best and median of the times in t[0..n) (sorted in place).
static void best_med(double *t, int n, double *best, double *med) {
    qsort(t, (size_t)n, sizeof(double), cmp_d);
    *best = t[0];
    *med = t[n / 2];
}

static fg_tensor alloc_t(fg_backend *be, uint32_t type, int64_t ne0, int64_t ne1, fg_buffer **buf) {
    int64_t ne[2] = {ne0, ne1};
    fg_tensor probe = fg_tensor_view(NULL, NULL, 0, type, 2, ne);
    if (be->ops->buf_alloc(be, fg_tensor_nbytes(&probe), buf) != FG_OK) {
        fprintf(stderr, "bench: %s\n", fg_last_error());
        exit(1);
    }
    return fg_tensor_view(*buf, be->ops->buf_base(*buf), 0, type, 2, ne);
}

static void bench_matmul(fg_backend *be, uint32_t type, int64_t n_out, int64_t n_in, int64_t rows) {
    const fg_type_traits *tr = fg_type_traits_get(type);
    fg_buffer *bw, *bx, *bd;
    fg_tensor w = alloc_t(be, type, n_in, n_out, &bw);
    fg_tensor x = alloc_t(be, FG_TYPE_F32, n_in, rows, &bx);
    fg_tensor d = alloc_t(be, FG_TYPE_F32, n_out, rows, &bd);
    float *tmp = malloc((size_t)n_in * 4);
    size_t rb = (size_t)(n_in / tr->blck_size) * tr->type_size;
    for (int64_t o = 0; o < n_out; o++) {
        for (int64_t i = 0; i < n_in; i++)
            tmp[i] = rnd_f();
        tr->from_float(tmp, (char *)w.data + (size_t)o * rb, n_in); // bench: direct host access
    }
    for (int64_t i = 0; i < n_in * rows; i++)
        ((float *)x.data)[i] = rnd_f();
    fg_op_matmul(be, &d, &w, &x, NULL, false); // warm-up (scratch growth)
    enum { MAX_IT = 100 };
    double t[MAX_IT];
    int iters = rows == 1 ? MAX_IT : rows <= 64 ? 20 : 7;
    for (int i = 0; i < iters; i++) {
        double t0 = fg_time_s();
        if (fg_op_matmul(be, &d, &w, &x, NULL, false) != FG_OK) {
            fprintf(stderr, "bench: %s\n", fg_last_error());
            exit(1);
        }
        t[i] = fg_time_s() - t0;
    }
    double dt, med;
    best_med(t, iters, &dt, &med);
    double gb = (double)rb * n_out / dt / 1e9, gf = 2.0 * n_out * n_in * rows / dt / 1e9;
    printf("matmul %-5s w[%5lld][%5lld] x %4lld rows: best %9.3f ms (median %9.3f)  %7.2f GB/s (weights)  "
           "%8.2f GFLOP/s\n",
           tr->name, (long long)n_out, (long long)n_in, (long long)rows, dt * 1e3, med * 1e3, gb, gf);
    free(tmp);
    be->ops->buf_free(be, bw);
    be->ops->buf_free(be, bx);
    be->ops->buf_free(be, bd);
}

static void bench_attention(fg_backend *be, int n_kv, int n_seqs) {
    const int n_head = 32, n_head_kv = 8, hd = 128, ps = 64;
    const int pages_per_seq = (n_kv + ps - 1) / ps, n_pages = pages_per_seq * n_seqs;
    int64_t cne[4] = {n_head_kv * hd, ps, n_pages, 1};
    fg_tensor probe = fg_tensor_view(NULL, NULL, 0, FG_TYPE_F16, 4, cne);
    fg_buffer *bk, *bv, *bq, *bd;
    be->ops->buf_alloc(be, fg_tensor_nbytes(&probe), &bk);
    be->ops->buf_alloc(be, fg_tensor_nbytes(&probe), &bv);
    memset(be->ops->buf_base(bk), 0x11, fg_tensor_nbytes(&probe));
    memset(be->ops->buf_base(bv), 0x22, fg_tensor_nbytes(&probe));
    fg_kv_view kv = {1, n_pages, ps, n_head_kv, hd, FG_TYPE_F16,
                     fg_tensor_view(bk, be->ops->buf_base(bk), 0, FG_TYPE_F16, 4, cne),
                     fg_tensor_view(bv, be->ops->buf_base(bv), 0, FG_TYPE_F16, 4, cne)};
    fg_tensor q = alloc_t(be, FG_TYPE_F32, n_head * hd, n_seqs, &bq);
    fg_tensor d = alloc_t(be, FG_TYPE_F32, n_head * hd, n_seqs, &bd);
    for (int i = 0; i < n_head * hd * n_seqs; i++)
        ((float *)q.data)[i] = rnd_f();
    int32_t *tok = calloc((size_t)n_seqs, 4), *pos = calloc((size_t)n_seqs, 4), *seq = calloc((size_t)n_seqs, 4),
            *nkv = calloc((size_t)n_seqs, 4), *pt = calloc((size_t)n_pages, 4);
    for (int s = 0; s < n_seqs; s++) {
        pos[s] = n_kv - 1;
        seq[s] = s;
        nkv[s] = n_kv;
    }
    for (int i = 0; i < n_pages; i++)
        pt[i] = i;
    fg_step st = {n_seqs, tok, pos, seq, n_seqs, nkv, NULL, NULL, pages_per_seq, pt, 0, NULL, 0, NULL, 0, NULL};
    fg_backend_limits lim = {n_seqs, n_seqs, pages_per_seq, n_kv, n_head, hd, n_head * hd, 0, 0};
    fg_attn_params ap = {0, n_head, 0.088f, true};
    if (fg_backend_reserve(be, &lim) != FG_OK || fg_step_begin(be, &st) != FG_OK ||
        fg_op_attention(be, &d, &q, &kv, &ap) != FG_OK) {
        fprintf(stderr, "bench: %s\n", fg_last_error());
        exit(1);
    }
    int iters = 20;
    double t0 = fg_time_s();
    for (int i = 0; i < iters; i++)
        fg_op_attention(be, &d, &q, &kv, &ap);
    double dt = (fg_time_s() - t0) / iters;
    fg_step_abort(be);
    double bytes = 2.0 * n_kv * n_head_kv * hd * 2 * n_seqs;
    printf("attention f16 decode %d seqs x n_kv %5d (32 q / 8 kv heads, d 128): %8.3f ms  %6.2f GB/s (KV)\n",
           n_seqs, n_kv, dt * 1e3, bytes / dt / 1e9);
    free(tok);
    free(pos);
    free(seq);
    free(nkv);
    free(pt);
    be->ops->buf_free(be, bk);
    be->ops->buf_free(be, bv);
    be->ops->buf_free(be, bq);
    be->ops->buf_free(be, bd);
}

// Memory bandwidth: memcpy of 256 MiB on one thread (read + write bytes), and a read of
// 256 MiB split over n_threads threads (the bound of a matvec that streams its weights).
typedef struct rd_arg {
    const char *p;
    size_t n;
    double sum;
} rd_arg;
static void *read_worker(void *p) {
    rd_arg *a = p;
    const uint64_t *q = (const uint64_t *)a->p;
    uint64_t x0 = 0, x1 = 0, x2 = 0, x3 = 0; // the compiler vectorizes this (-O2 -march=native)
    for (size_t i = 0; i + 4 <= a->n / 8; i += 4) {
        x0 ^= q[i];
        x1 ^= q[i + 1];
        x2 ^= q[i + 2];
        x3 ^= q[i + 3];
    }
    a->sum = (double)((x0 ^ x1 ^ x2 ^ x3) & 0xffff);
    return NULL;
}
static void bench_membw(int n_threads) {
    const size_t n = (size_t)256 << 20;
    char *a = malloc(n), *b = malloc(n);
    if (!a || !b) {
        fprintf(stderr, "bench: no memory for the bandwidth test\n");
        exit(1);
    }
    memset(a, 1, n);
    memset(b, 2, n);
    double t[5], best, med;
    for (int i = 0; i < 5; i++) {
        double t0 = fg_time_s();
        memcpy(b, a, n);
        t[i] = fg_time_s() - t0;
    }
    best_med(t, 5, &best, &med);
    printf("memcpy 256 MiB, 1 thread: best %.2f GB/s (read + write), median %.2f\n", 2.0 * n / best / 1e9,
           2.0 * n / med / 1e9);
    if (n_threads > 16)
        n_threads = 16;
    pthread_t th[16];
    rd_arg ra[16];
    double xs = 0;
    for (int i = 0; i < 5; i++) {
        double t0 = fg_time_s();
        for (int k = 0; k < n_threads; k++) {
            ra[k] = (rd_arg){a + n / (size_t)n_threads * (size_t)k, n / (size_t)n_threads, 0};
            pthread_create(&th[k], NULL, read_worker, &ra[k]);
        }
        for (int k = 0; k < n_threads; k++) {
            pthread_join(th[k], NULL);
            xs += ra[k].sum;
        }
        t[i] = fg_time_s() - t0;
    }
    best_med(t, 5, &best, &med);
    printf("read 256 MiB, %d threads: best %.2f GB/s, median %.2f (checksum %g)\n", n_threads, n / best / 1e9,
           n / med / 1e9, xs);
    free(a);
    free(b);
}

static void bench_dispatch(fg_backend *be) {
    fg_buffer *b;
    fg_tensor t = alloc_t(be, FG_TYPE_F32, 65536, 1, &b); // above the serial threshold
    memset(t.data, 0, 65536 * 4);
    int iters = 2000;
    double t0 = fg_time_s();
    for (int i = 0; i < iters; i++)
        be->ops->add(be, &t, &t, &t);
    double dt = (fg_time_s() - t0) / iters;
    printf("add of 65536 floats (one threaded dispatch): %.2f us\n", dt * 1e6);
    be->ops->buf_free(be, b);
}

int main(int argc, char **argv) {
    int n_threads = argc > 1 ? atoi(argv[1]) : 2;
    fg_backend_opts o = {n_threads, 0, false};
    fg_backend *be;
    if (fg_backend_cpu_create(&o, &be) != FG_OK) {
        fprintf(stderr, "bench: %s\n", fg_last_error());
        return 1;
    }
    printf("cpu backend, %d threads, quant kernels %s\n", n_threads, fg_cpu_simd_name());
    uint32_t types[16];
    int n_types = 0;
    for (int i = 2; i < argc && n_types < 16; i++)
        if (fg_type_from_name(argv[i], &types[n_types]) == FG_OK)
            n_types++;
    if (n_types == 0) {
        types[n_types++] = FG_TYPE_Q4_0;
        types[n_types++] = FG_TYPE_Q4_K;
        types[n_types++] = FG_TYPE_Q8_0;
        types[n_types++] = FG_TYPE_F16;
    }
    const char *only = getenv("BENCH_ONLY"); // "decode", "prefill", "big", "mem": one group
    bool all = !only;
    if (all || strcmp(only, "mem") == 0)
        bench_membw(n_threads);
    if (all || strcmp(only, "big") == 0) // Q4_0: ~33 MB of weights, beyond the caches
        for (int i = 0; i < n_types; i++)
            for (int rows = 1; rows <= 8; rows *= 2)
                bench_matmul(be, types[i], 14336, 4096, rows);
    for (int i = 0; i < n_types; i++) {
        if (all || strcmp(only, "decode") == 0) {
            bench_matmul(be, types[i], 2048, 8192, 1);
            bench_matmul(be, types[i], 8192, 2048, 1);
        }
        if (all || strcmp(only, "prefill") == 0) {
            bench_matmul(be, types[i], 2048, 8192, 8);
            bench_matmul(be, types[i], 2048, 8192, 512);
        }
    }
    if (!all) {
        be->ops->destroy(be);
        return 0;
    }
    bench_attention(be, 4096, 1);
    bench_attention(be, 1024, 8);
    bench_dispatch(be);
    be->ops->destroy(be);
    return 0;
}
