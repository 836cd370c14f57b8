// cmd_bench.c - `forge bench`, modelled on llama-bench: prefill tokens/s over a p-token
// prompt (one sequence, chunks of max_batch_tokens), decode tokens/s over n tokens after it,
// median of r repetitions after a warm-up; the decode bound from the weight bytes read per
// token and a measured memory bandwidth (large memcpy, best of a few). --json for machines.
// Not a test: nothing here asserts on time.
#include "cli/cli.h"

#include "base/status.h"
#include "base/util.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define BENCH_PAGE 16
#define BENCH_BATCH 512

static void bench_usage(FILE *f) {
    fprintf(f, "usage: forge bench -m MODEL [-p 512] [-n 128] [-r 5] [--threads N] [--device cpu] [--json]\n");
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

typedef struct copy_job {
    char *dst;
    const char *src;
    size_t n;
} copy_job;

static void *copy_worker(void *arg) {
    copy_job *j = arg;
    memcpy(j->dst, j->src, j->n);
    return NULL;
}

// Best-of-5 memcpy bandwidth over `bytes` split across n_threads threads (read + write
// bytes counted), GB/s.
static double measure_bandwidth(size_t bytes, int n_threads) {
    char *a = malloc(bytes), *b = malloc(bytes);
    double best = 0;
    if (!a || !b)
        goto out;
    memset(a, 1, bytes);
    memset(b, 2, bytes);
    n_threads = n_threads < 1 ? 1 : n_threads > 64 ? 64 : n_threads;
    for (int i = 0; i < 5; i++) {
        pthread_t th[64];
        copy_job jobs[64];
        size_t per = bytes / (size_t)n_threads;
        double t0 = fg_time_s();
        bool started[64] = {false};
        for (int t = 0; t < n_threads; t++) {
            jobs[t] = (copy_job){(i % 2 ? a : b) + per * (size_t)t, (i % 2 ? b : a) + per * (size_t)t,
                                 t + 1 == n_threads ? bytes - per * (size_t)t : per};
            started[t] = t > 0 && pthread_create(&th[t], NULL, copy_worker, &jobs[t]) == 0;
        }
        copy_worker(&jobs[0]);
        for (int t = 1; t < n_threads; t++) {
            if (started[t])
                pthread_join(th[t], NULL);
            else
                copy_worker(&jobs[t]);
        }
        double dt = fg_time_s() - t0;
        double gbs = 2.0 * (double)bytes / dt / 1e9;
        if (gbs > best)
            best = gbs;
    }
out:
    free(a);
    free(b);
    return best;
}

typedef struct bench_ctx {
    fg_model *m;
    fg_kv_store *kv;
    int32_t *toks, *pos, *seqv, *pt;
    float *logits;
} bench_ctx;

// Evaluates tokens [from, from + n) of one sequence (fresh when from == 0).
static fg_status eval(bench_ctx *c, int32_t from, int32_t n) {
    for (int32_t s = 0; s < n; s += BENCH_BATCH) {
        int32_t k = FG_MIN(BENCH_BATCH, n - s);
        for (int32_t i = 0; i < k; i++) {
            c->pos[i] = from + s + i;
            c->seqv[i] = 0;
        }
        int32_t n_kv = from + s + k;
        const int32_t *pt = c->pt;
        fg_batch b = {.n_tokens = k, .tokens = c->toks + from + s, .pos = c->pos, .seq = c->seqv,
                      .n_seqs = 1, .n_kv = &n_kv, .page_tables = &pt};
        FG_TRY(fg_model_forward(c->m, c->kv, &b, c->logits));
    }
    return FG_OK;
}

int fg_cmd_bench(int argc, char **argv) {
    const char *C = "bench";
    const char *model = NULL, *device = "cpu";
    int64_t n_p = 512, n_g = 128, reps = 5, threads = 0;
    bool json = false;
    for (int i = 1; i < argc; i++) {
        const char *f = argv[i];
        const char *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(f, "-h") || !strcmp(f, "--help")) {
            bench_usage(stdout);
            return 0;
        }
        if (!strcmp(f, "--json")) {
            json = true;
            continue;
        }
        bool known = !strcmp(f, "-m") || !strcmp(f, "--model") || !strcmp(f, "-p") ||
                     !strcmp(f, "-n") || !strcmp(f, "-r") || !strcmp(f, "-t") ||
                     !strcmp(f, "--threads") || !strcmp(f, "--device");
        if (!known) {
            fprintf(stderr, "forge bench: unknown option '%s' (see forge bench --help)\n", f);
            return 2;
        }
        if (!val) {
            fprintf(stderr, "forge bench: %s needs a value\n", f);
            return 2;
        }
        i++;
        if (!strcmp(f, "-m") || !strcmp(f, "--model")) {
            model = val;
        } else if (!strcmp(f, "-p")) {
            if (!fg_cli_parse_i64(C, f, val, 0, 1 << 16, &n_p))
                return 2;
        } else if (!strcmp(f, "-n")) {
            if (!fg_cli_parse_i64(C, f, val, 0, 1 << 16, &n_g))
                return 2;
        } else if (!strcmp(f, "-r")) {
            if (!fg_cli_parse_i64(C, f, val, 1, 1000, &reps))
                return 2;
        } else if (!strcmp(f, "-t") || !strcmp(f, "--threads")) {
            if (!fg_cli_parse_i64(C, f, val, 1, 1024, &threads))
                return 2;
        } else {
            device = val;
        }
    }
    if (!model) {
        fprintf(stderr, "forge bench: -m MODEL is required\n");
        return 2;
    }
    if (n_p + n_g < 1) {
        fprintf(stderr, "forge bench: -p and -n are both 0: nothing to measure\n");
        return 2;
    }
    int rc = 1;
    fg_backend *be = NULL;
    bench_ctx c = {0};
    double *tp = NULL, *tg = NULL;
    fg_backend_opts bo = {.n_threads = (int32_t)threads};
    if (fg_backend_create(device, &bo, &be) != FG_OK)
        goto fail;
    fg_model_opts mo = {.max_batch_tokens = BENCH_BATCH, .max_seqs = 1, .progress = true};
    if (fg_model_load(model, be, &mo, &c.m) != FG_OK)
        goto fail;
    const fg_model_info *info = fg_model_get_info(c.m);
    int32_t total = (int32_t)(n_p + n_g);
    int32_t n_pages = (total + BENCH_PAGE - 1) / BENCH_PAGE;
    if (fg_kv_store_create(c.m, n_pages, BENCH_PAGE, FG_TYPE_F16, &c.kv) != FG_OK)
        goto fail;
    c.toks = fg_xcalloc((size_t)total, sizeof *c.toks);
    c.pos = fg_xcalloc(BENCH_BATCH, sizeof *c.pos);
    c.seqv = fg_xcalloc(BENCH_BATCH, sizeof *c.seqv);
    c.pt = fg_xcalloc((size_t)n_pages, sizeof *c.pt);
    c.logits = malloc((size_t)info->n_vocab * sizeof *c.logits);
    tp = fg_xcalloc((size_t)reps, sizeof *tp);
    tg = fg_xcalloc((size_t)reps, sizeof *tg);
    if (!c.logits) {
        FG_FAIL(FG_ERR_NOMEM, "out of memory");
        goto fail;
    }
    for (int32_t i = 0; i < n_pages; i++)
        c.pt[i] = i;
    uint64_t rng = 0x2545f4914f6cdd1dull; // fixed token stream (seed printed in the JSON)
    for (int32_t i = 0; i < total; i++) {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        c.toks[i] = (int32_t)(rng % (uint64_t)info->n_vocab);
    }
    // warm-up: a short prefill and a few decode steps
    if (eval(&c, 0, (int32_t)FG_MIN(n_p > 0 ? n_p : 1, 32)) != FG_OK)
        goto fail;
    for (int64_t r = 0; r < reps; r++) {
        double t0 = fg_time_s();
        if (n_p > 0 && eval(&c, 0, (int32_t)n_p) != FG_OK)
            goto fail;
        double t1 = fg_time_s();
        for (int32_t i = 0; i < n_g; i++)
            if (eval(&c, (int32_t)n_p + i, 1) != FG_OK)
                goto fail;
        double t2 = fg_time_s();
        tp[r] = t1 - t0;
        tg[r] = t2 - t1;
    }
    double mp = median(tp, (int)reps), mg = median(tg, (int)reps);
    double pp_tps = n_p > 0 && mp > 0 ? (double)n_p / mp : 0;
    double tg_tps = n_g > 0 && mg > 0 ? (double)n_g / mg : 0;
    int bw_threads = threads > 0 ? (int)threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
    double bw = measure_bandwidth((size_t)1 << 30, bw_threads);
    double gb_tok = (double)info->bytes_per_token / 1e9;
    double bound = gb_tok > 0 ? bw / gb_tok : 0;
    double frac = bound > 0 ? tg_tps / bound : 0;
    if (json) {
        printf("{\"model\": \"%s\", \"arch\": \"%s\", \"backend\": \"%s\", \"threads\": %lld, "
               "\"n_prompt\": %lld, \"n_gen\": %lld, \"reps\": %lld, "
               "\"prefill_tok_s\": %.2f, \"decode_tok_s\": %.2f, "
               "\"weight_bytes\": %llu, \"bytes_per_token\": %llu, "
               "\"mem_bandwidth_gb_s\": %.2f, \"decode_bound_tok_s\": %.2f, "
               "\"decode_fraction_of_bound\": %.3f, \"decode_gb_s\": %.2f}\n",
               info->name, info->arch, fg_backend_name(be), (long long)bw_threads, (long long)n_p,
               (long long)n_g, (long long)reps, pp_tps, tg_tps,
               (unsigned long long)info->weight_bytes, (unsigned long long)info->bytes_per_token,
               bw, bound, frac, tg_tps * gb_tok);
    } else {
        printf("model       %s (%s, %.1f M params, %.1f MB weights)\n", info->name, info->arch,
               (double)info->n_params / 1e6, (double)info->weight_bytes / 1e6);
        printf("backend     %s, threads %d, median of %lld runs\n", fg_backend_name(be),
               bw_threads, (long long)reps);
        printf("prefill     pp%lld: %.1f tok/s\n", (long long)n_p, pp_tps);
        printf("decode      tg%lld: %.2f tok/s (%.2f GB/s of weights)\n", (long long)n_g, tg_tps,
               tg_tps * gb_tok);
        printf("bound       %.1f MB/token, memcpy bandwidth %.2f GB/s -> %.2f tok/s; decode at %.0f%%\n",
               gb_tok * 1e3, bw, bound, frac * 100);
    }
    rc = 0;
    goto done;
fail:
    rc = fg_cli_fail("bench");
done:
    free(tp);
    free(tg);
    free(c.toks);
    free(c.pos);
    free(c.seqv);
    free(c.pt);
    free(c.logits);
    fg_kv_store_destroy(c.kv);
    fg_model_destroy(c.m);
    fg_backend_destroy(be);
    return rc;
}
