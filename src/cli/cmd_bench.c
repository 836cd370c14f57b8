// cmd_bench.c - `forge bench`, modelled on llama-bench: for each prompt length p of -p, the
// prefill rate over a fresh p-token prompt (one sequence, chunks of -b tokens, logits of the
// last token only); for each depth d of -d, the decode rate over n tokens generated one at a
// time after a d-token context (logits back every step, as `forge run` does). Each figure is
// the median of -r repetitions after a warm-up. Alongside: the weight and KV bytes a decoded
// token reads, the device's measured copy bandwidth (bytes read + written) and the decode
// bound they give, prefill TFLOP/s, device memory in use. --json for scripts.
// Not a test: nothing here asserts on time.
#include "cli/cli.h"

#include "base/status.h"
#include "base/util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BENCH_PAGE 16
#define MAX_LIST 16

static void bench_usage(FILE *f) {
    fprintf(f, "usage: forge bench -m MODEL [options]\n"
               "  -p LIST         prompt lengths for the prefill test, comma-separated (default 512; 0: none)\n"
               "  -n N            tokens generated for the decode test (default 128; 0: none)\n"
               "  -d LIST         context depths before the decode test (default 0)\n"
               "  -r N            repetitions; the median is reported (default 5)\n"
               "  -b N            tokens per forward step during prefill (default 512)\n"
               "  --kv-type T     " FG_CLI_KV_TYPE_HELP "\n"
               "  -t, --threads N CPU threads (default: all cores)\n"
               "  --device NAME   auto (default), cpu or cuda\n"
               "  --gpu N         GPU index (default 0)\n"
               "  --tensor-parallel N  split the model across N GPUs (gpu..gpu+N-1) or N groups of CPU threads\n"
               "  --tp-skip-all-reduce  leave the all-reduces out (wrong results): with and without, their share\n"
               "  --skip-ops LIST  leave these ops out of every layer (wrong results; their share): norm, swiglu,\n"
               "                  attn, comma-separated\n"
               "  --json          one JSON object on stdout\n");
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// "512,4096" -> values; a usage error names the flag.
static bool parse_list(const char *flag, const char *s, int64_t lo, int64_t hi, int64_t *out, int *n) {
    *n = 0;
    char buf[256];
    snprintf(buf, sizeof buf, "%s", s);
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        if (*n == MAX_LIST) {
            fprintf(stderr, "forge bench: %s takes at most %d values\n", flag, MAX_LIST);
            return false;
        }
        if (!fg_cli_parse_i64("bench", flag, tok, lo, hi, &out[*n]))
            return false;
        (*n)++;
    }
    if (*n == 0)
        return fg_cli_parse_i64("bench", flag, s, lo, hi, &out[0]); // prints the usage error
    return true;
}

typedef struct bench_ctx {
    fg_model *m;
    fg_kv_store *kv;
    int32_t batch;
    int32_t *toks, *pos, *seqv, *pt;
    float *logits;
} bench_ctx;

// Evaluates tokens [from, from + n) of one sequence (fresh when from == 0).
static fg_status eval(bench_ctx *c, int32_t from, int32_t n) {
    for (int32_t s = 0; s < n; s += c->batch) {
        int32_t k = FG_MIN(c->batch, n - s);
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

// Matmul FLOPs of one prompt token: 2 per weight of the layers' projections (the output
// projection runs for the last token only).
// (n_layer_params is one rank's share with tensor parallelism: all ranks together do tp_size x)
static double token_flops(const fg_model_info *in) { return 2.0 * (double)in->n_layer_params * in->tp_size; }

// Attention FLOPs of positions [0, p): q.k and p.v, 2 FLOPs a multiply-add each.
static double attn_flops(const fg_model_info *in, int64_t p) {
    double w = (double)in->n_head * in->head_dim;
    return 4.0 * in->n_layer * w * ((double)p * (double)(p + 1) / 2.0);
}

// --skip-ops: comma-separated names into FG_SKIP_* bits.
static bool parse_skip_ops(const char *val, uint32_t *out) {
    static const struct {
        const char *name;
        uint32_t bit;
    } ops[] = {{"norm", FG_SKIP_NORM}, {"swiglu", FG_SKIP_SWIGLU}, {"attn", FG_SKIP_ATTN}};
    uint32_t bits = 0;
    for (const char *p = val; *p;) {
        const size_t len = strcspn(p, ",");
        size_t i = 0;
        while (i < FG_ARRAY_LEN(ops) && !(strlen(ops[i].name) == len && !strncmp(p, ops[i].name, len)))
            i++;
        if (i == FG_ARRAY_LEN(ops)) {
            fprintf(stderr, "forge bench: --skip-ops: unknown op '%.*s' (norm, swiglu, attn)\n", (int)len, p);
            return false;
        }
        bits |= ops[i].bit;
        p += len + (p[len] == ',');
    }
    *out = bits;
    return bits != 0 || (fprintf(stderr, "forge bench: --skip-ops: empty list\n"), false);
}

int fg_cmd_bench(int argc, char **argv) {
    const char *C = "bench";
    const char *model = NULL, *device = NULL;
    int64_t P[MAX_LIST] = {512}, D[MAX_LIST] = {0}, n_g = 128, reps = 5, threads = 0, batch = 512, gpu = 0, tp = 1;
    int n_p = 1, n_d = 1;
    bool json = false, skip_ar = false;
    uint32_t skip_ops = 0;
    uint32_t kv_type = FG_TYPE_F16;
    for (int i = 1; i < argc; i++) {
        const char *f = argv[i];
        const char *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(f, "-h") || !strcmp(f, "--help")) {
            bench_usage(stdout);
            return 0;
        }
        int kr = fg_cli_kv_type_flag(C, argc, argv, &i, &kv_type);
        if (kr < 0)
            return 2;
        if (kr > 0)
            continue;
        if (!strcmp(f, "--json")) {
            json = true;
            continue;
        }
        if (!strcmp(f, "--tp-skip-all-reduce")) {
            skip_ar = true;
            continue;
        }
        bool known = !strcmp(f, "-m") || !strcmp(f, "--model") || !strcmp(f, "-p") || !strcmp(f, "-n") ||
                     !strcmp(f, "-d") || !strcmp(f, "-r") || !strcmp(f, "-b") || !strcmp(f, "-t") ||
                     !strcmp(f, "--threads") || !strcmp(f, "--device") || !strcmp(f, "--gpu") ||
                     !strcmp(f, "--tensor-parallel") || !strcmp(f, "--skip-ops");
        if (!known) {
            fprintf(stderr, "forge bench: unknown option '%s' (see forge bench --help)\n", f);
            return 2;
        }
        if (!fg_cli_value(C, argc, argv, &i)) // val is argv[i + 1]
            return 2;
        if (!strcmp(f, "-m") || !strcmp(f, "--model")) {
            model = val;
        } else if (!strcmp(f, "-p")) {
            if (!parse_list(f, val, 0, 1 << 20, P, &n_p))
                return 2;
        } else if (!strcmp(f, "-d")) {
            if (!parse_list(f, val, 0, 1 << 20, D, &n_d))
                return 2;
        } else if (!strcmp(f, "-n")) {
            if (!fg_cli_parse_i64(C, f, val, 0, 1 << 16, &n_g))
                return 2;
        } else if (!strcmp(f, "-r")) {
            if (!fg_cli_parse_i64(C, f, val, 1, 1000, &reps))
                return 2;
        } else if (!strcmp(f, "-b")) {
            if (!fg_cli_parse_i64(C, f, val, 1, 1 << 16, &batch))
                return 2;
        } else if (!strcmp(f, "-t") || !strcmp(f, "--threads")) {
            if (!fg_cli_parse_i64(C, f, val, 1, 1024, &threads))
                return 2;
        } else if (!strcmp(f, "--gpu")) {
            if (!fg_cli_parse_i64(C, f, val, 0, 1023, &gpu))
                return 2;
        } else if (!strcmp(f, "--skip-ops")) {
            if (!parse_skip_ops(val, &skip_ops))
                return 2;
        } else if (!strcmp(f, "--tensor-parallel")) {
            if (!fg_cli_parse_i64(C, f, val, 1, 8, &tp))
                return 2;
        } else {
            device = val;
        }
    }
    if (!model) {
        fprintf(stderr, "forge bench: -m MODEL is required\n");
        return 2;
    }
    int64_t max_p = 0, max_d = 0;
    for (int i = 0; i < n_p; i++)
        max_p = FG_MAX(max_p, P[i]);
    for (int i = 0; i < n_d; i++)
        max_d = FG_MAX(max_d, D[i]);
    if (max_p == 0 && n_g == 0) {
        fprintf(stderr, "forge bench: -p and -n are both 0: nothing to measure\n");
        return 2;
    }
    int rc = 1;
    fg_backend *be = NULL;
    bench_ctx c = {0};
    double *t = fg_xcalloc((size_t)reps, sizeof *t);
    double pp_tps[MAX_LIST] = {0}, tg_tps[MAX_LIST] = {0};
    int rank_threads = fg_cli_rank_threads((int)threads, (int)tp);
    if (fg_cli_backend(C, device, (int)gpu, rank_threads, &be) != FG_OK)
        goto fail;
    c.batch = (int32_t)batch;
    fg_model_opts mo = {.max_batch_tokens = c.batch, .max_seqs = 1, .progress = !json};
    fg_backend_opts tp_bo;
    fg_cli_tensor_parallel((int)tp, rank_threads, (int)gpu, &tp_bo, &mo);
    mo.tp_skip_all_reduce = skip_ar;
    mo.bench_skip_ops = skip_ops;
    if (skip_ops && !json)
        fprintf(stderr, "forge bench: --skip-ops: ops are left out, every result is wrong\n");
    if (skip_ar && !json)
        fprintf(stderr, "forge bench: --tp-skip-all-reduce: the all-reduces are left out, every result is wrong\n");
    if (fg_model_load(model, be, &mo, &c.m) != FG_OK)
        goto fail;
    const fg_model_info *info = fg_model_get_info(c.m);
    int32_t total = (int32_t)FG_MAX(FG_MAX(max_p, max_d + n_g), 1);
    int32_t n_pages = (total + BENCH_PAGE - 1) / BENCH_PAGE;
    if (fg_kv_store_create(c.m, n_pages, BENCH_PAGE, kv_type, &c.kv) != FG_OK)
        goto fail;
    if (!json)
        fg_cli_print_memory(C, be, c.m, c.kv);
    c.toks = fg_xcalloc((size_t)total, sizeof *c.toks);
    c.pos = fg_xcalloc((size_t)c.batch, sizeof *c.pos);
    c.seqv = fg_xcalloc((size_t)c.batch, sizeof *c.seqv);
    c.pt = fg_xcalloc((size_t)n_pages, sizeof *c.pt);
    c.logits = malloc((size_t)info->n_vocab * sizeof *c.logits);
    if (!c.logits) {
        FG_FAIL(FG_ERR_NOMEM, "out of memory");
        goto fail;
    }
    for (int32_t i = 0; i < n_pages; i++)
        c.pt[i] = i;
    uint64_t rng = 0x2545f4914f6cdd1dull; // fixed token stream (the work does not depend on text)
    for (int32_t i = 0; i < total; i++) {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        c.toks[i] = (int32_t)(rng % (uint64_t)info->n_vocab);
    }
    // warm-up: a short prefill and a few decode steps (kernels loaded, graphs captured)
    if (eval(&c, 0, (int32_t)FG_MIN(total, 32)) != FG_OK || eval(&c, (int32_t)FG_MIN(total, 32) - 1, 1) != FG_OK)
        goto fail;
    for (int i = 0; i < n_p; i++) {
        if (P[i] == 0)
            continue;
        // one untimed run of each prompt length first, as llama-bench does (a library GEMM
        // chooses its kernels at the first call of a shape)
        if (eval(&c, 0, (int32_t)P[i]) != FG_OK)
            goto fail;
        for (int64_t r = 0; r < reps; r++) {
            double t0 = fg_time_s();
            if (eval(&c, 0, (int32_t)P[i]) != FG_OK)
                goto fail;
            t[r] = fg_time_s() - t0;
        }
        double m = median(t, (int)reps);
        pp_tps[i] = m > 0 ? (double)P[i] / m : 0;
    }
    for (int i = 0; i < n_d && n_g > 0; i++) {
        for (int64_t r = 0; r < reps; r++) {
            if (D[i] > 0 && eval(&c, 0, (int32_t)D[i]) != FG_OK) // the context, not timed
                goto fail;
            double t0 = fg_time_s();
            for (int32_t k = 0; k < n_g; k++)
                if (eval(&c, (int32_t)D[i] + k, 1) != FG_OK)
                    goto fail;
            t[r] = fg_time_s() - t0;
        }
        double m = median(t, (int)reps);
        tg_tps[i] = m > 0 ? (double)n_g / m : 0;
    }
    double bw = 0;
    if (fg_backend_copy_bandwidth(be, (size_t)1 << 30, &bw) != FG_OK)
        goto fail;
    uint64_t mem_free = 0, mem_total = 0;
    if (fg_backend_mem_info(be, &mem_free, &mem_total) != FG_OK)
        goto fail;
    // Bytes a decoded token reads. With tensor parallelism: rank 0's (its share of the layers, its
    // kv heads, the output projection), which the ranks read in parallel, each from its own
    // memory: the bound is rank 0's bytes over one device's bandwidth (all-reduces not in it).
    const double w_tok = (double)info->bytes_per_token;
    // KV bytes a decoded token reads: K and V of every layer over its context, in the cache's
    // type (Q8_0: 34 bytes per 32 elements)
    const double kv_el = (double)fg_type_block_bytes(kv_type) / (double)fg_type_block_size(kv_type);
    const double kv_pos = 2.0 * info->n_layer * (info->n_head_kv / info->tp_size) * info->head_dim * kv_el;
    if (json) {
        printf("{\"model\": \"%s\", \"arch\": \"%s\", \"backend\": \"%s\", \"device\": \"%s\", \"threads\": %lld, "
               "\"tensor_parallel\": %d, \"tp_skip_all_reduce\": %s, \"skip_ops\": %u, \"kv_type\": \"%s\", \"n_params\": %llu, \"weight_bytes\": %llu, \"bytes_per_token\": %llu, \"reps\": %lld, "
               "\"batch\": %lld, \"copy_bandwidth_gb_s\": %.2f, \"mem_bandwidth_gb_s\": %.2f, "
               "\"vram_used_bytes\": %llu, \"pp\": [",
               info->name, info->arch, fg_backend_name(be), fg_backend_describe(be), (long long)threads,
               info->tp_size, skip_ar ? "true" : "false", (unsigned)skip_ops, fg_type_name(kv_type), (unsigned long long)info->n_params, (unsigned long long)info->weight_bytes,
               (unsigned long long)info->bytes_per_token, (long long)reps, (long long)batch, bw, bw,
               (unsigned long long)(mem_total - mem_free));
        for (int i = 0, k = 0; i < n_p; i++) {
            if (P[i] == 0)
                continue;
            double fl = (double)P[i] * token_flops(info) + attn_flops(info, P[i]);
            printf("%s{\"n_prompt\": %lld, \"tok_s\": %.2f, \"tflop_s\": %.3f}", k++ ? ", " : "", (long long)P[i],
                   pp_tps[i], pp_tps[i] > 0 ? fl / ((double)P[i] / pp_tps[i]) / 1e12 : 0);
        }
        printf("], \"tg\": [");
        for (int i = 0; i < n_d && n_g > 0; i++) {
            double kvb = kv_pos * ((double)D[i] + (double)(n_g + 1) / 2.0);
            double bound = bw * 1e9 / (w_tok + kvb);
            printf("%s{\"n_gen\": %lld, \"depth\": %lld, \"tok_s\": %.2f, \"kv_bytes_per_token\": %.0f, "
                   "\"bound_tok_s\": %.2f, \"fraction_of_bound\": %.4f}",
                   i ? ", " : "", (long long)n_g, (long long)D[i], tg_tps[i], kvb, bound, tg_tps[i] / bound);
        }
        // the first figures under flat names too (older scripts read these)
        double kvb0 = kv_pos * ((double)D[0] + (double)(n_g + 1) / 2.0), bound0 = bw * 1e9 / (w_tok + kvb0);
        printf("], \"n_prompt\": %lld, \"n_gen\": %lld, \"prefill_tok_s\": %.2f, \"decode_tok_s\": %.2f, "
               "\"decode_bound_tok_s\": %.2f, \"decode_fraction_of_bound\": %.4f, \"decode_gb_s\": %.2f}\n",
               (long long)P[0], (long long)n_g, pp_tps[0], tg_tps[0], bound0, tg_tps[0] / bound0,
               tg_tps[0] * (w_tok + kvb0) / 1e9);
    } else {
        printf("model    %s (%s, %.1f M params, %.2f GB weights, %.2f GB read per decoded token)\n", info->name,
               info->arch, (double)info->n_params / 1e6, (double)info->weight_bytes / 1e9, w_tok / 1e9);
        printf("device   %s; copy bandwidth %.1f GB/s (read + write); %.2f GB in use; median of %lld runs\n",
               fg_backend_describe(be), bw, (double)(mem_total - mem_free) / 1e9, (long long)reps);
        printf("kv cache %s, %.1f KB per token\n", fg_type_name(kv_type), kv_pos / 1e3);
        if (info->tp_size > 1)
            printf("tensor   parallel over %d ranks: weights, bytes per token, memory and bound are rank 0's (with "
                   "the output projection); TFLOP/s are all ranks'\n",
                   info->tp_size);
        printf("%-8s %9s %12s %10s %14s %14s %10s\n", "test", "depth", "tok/s", "TFLOP/s", "KV MB/token",
               "bound tok/s", "of bound");
        for (int i = 0; i < n_p; i++) {
            if (P[i] == 0)
                continue;
            double fl = (double)P[i] * token_flops(info) + attn_flops(info, P[i]);
            char name[32];
            snprintf(name, sizeof name, "pp%lld", (long long)P[i]);
            printf("%-8s %9d %12.1f %10.2f %14s %14s %10s\n", name, 0, pp_tps[i],
                   pp_tps[i] > 0 ? fl / ((double)P[i] / pp_tps[i]) / 1e12 : 0.0, "-", "-", "-");
        }
        for (int i = 0; i < n_d && n_g > 0; i++) {
            double kvb = kv_pos * ((double)D[i] + (double)(n_g + 1) / 2.0);
            double bound = bw * 1e9 / (w_tok + kvb);
            char name[32];
            snprintf(name, sizeof name, "tg%lld", (long long)n_g);
            printf("%-8s %9lld %12.2f %10s %14.1f %14.1f %9.1f%%\n", name, (long long)D[i], tg_tps[i], "-", kvb / 1e6,
                   bound, 100.0 * tg_tps[i] / bound);
        }
    }
    rc = 0;
    goto done;
fail:
    rc = fg_cli_fail(C);
done:
    free(t);
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
