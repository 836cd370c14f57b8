// cmd_perplexity.c - `forge perplexity`: llama.cpp's llama-perplexity method. The file is
// tokenized with the model's BOS rule and cut into floor(n_tokens / CTX) chunks; each chunk's
// first token is replaced by BOS (when the model adds one), the chunk is evaluated with a
// fresh KV cache, and positions CTX/2 .. CTX-2 are scored on the next token.
// PPL = exp(mean NLL); +/- = PPL * sqrt((mean(NLL^2) - mean(NLL)^2) / (count - 1)).
// Last stdout line: "ppl <value> +/- <uncertainty>". Progress on a terminal (stderr).
#include "cli/cli.h"

#include "base/progress.h"
#include "base/status.h"
#include "base/util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PPL_PAGE 16

static void ppl_usage(FILE *f) {
    fprintf(f, "usage: forge perplexity -m MODEL -f FILE [-c CTX] [--threads N] [--device auto|cpu|cuda] [--gpu N]\n"
               "                  [--tensor-parallel N] [--kv-type f16|q8_0|f32]\n"
               "  -c, --ctx N     chunk length in tokens (default 512)\n"
               "  --kv-type T     " FG_CLI_KV_TYPE_HELP "\n"
               "  --tensor-parallel N  split the model across N GPUs (gpu..gpu+N-1) or N groups of CPU threads\n");
}

// log-softmax of logits[tok] computed as llama.cpp does (max subtracted, sum in double)
static double log_softmax_at(const float *logits, int32_t n_vocab, int32_t tok) {
    float mx = logits[0];
    for (int32_t i = 1; i < n_vocab; i++)
        mx = logits[i] > mx ? logits[i] : mx;
    double sum = 0;
    for (int32_t i = 0; i < n_vocab; i++)
        sum += exp((double)(logits[i] - mx));
    return (double)(logits[tok] - mx) - log(sum);
}

int fg_cmd_perplexity(int argc, char **argv) {
    const char *C = "perplexity";
    const char *model = NULL, *file = NULL, *device = NULL;
    int64_t ctx = 512, threads = 0, gpu = 0, tp = 1;
    uint32_t kv_type = FG_TYPE_F16;
    for (int i = 1; i < argc; i++) {
        const char *f = argv[i];
        const char *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(f, "-h") || !strcmp(f, "--help")) {
            ppl_usage(stdout);
            return 0;
        }
        int kr = fg_cli_kv_type_flag(C, argc, argv, &i, &kv_type);
        if (kr < 0)
            return 2;
        if (kr > 0)
            continue;
        bool known = !strcmp(f, "-m") || !strcmp(f, "--model") || !strcmp(f, "-f") ||
                     !strcmp(f, "--file") || !strcmp(f, "-c") || !strcmp(f, "--ctx") ||
                     !strcmp(f, "-t") || !strcmp(f, "--threads") || !strcmp(f, "--device") ||
                     !strcmp(f, "--gpu") || !strcmp(f, "--tensor-parallel");
        if (!known) {
            fprintf(stderr, "forge perplexity: unknown option '%s' (see forge perplexity --help)\n", f);
            return 2;
        }
        if (!fg_cli_value(C, argc, argv, &i)) // val is argv[i + 1]
            return 2;
        if (!strcmp(f, "-m") || !strcmp(f, "--model")) {
            model = val;
        } else if (!strcmp(f, "-f") || !strcmp(f, "--file")) {
            file = val;
        } else if (!strcmp(f, "-c") || !strcmp(f, "--ctx")) {
            if (!fg_cli_parse_i64(C, f, val, 4, 1 << 20, &ctx))
                return 2;
        } else if (!strcmp(f, "-t") || !strcmp(f, "--threads")) {
            if (!fg_cli_parse_i64(C, f, val, 1, 1024, &threads))
                return 2;
        } else if (!strcmp(f, "--gpu")) {
            if (!fg_cli_parse_i64(C, f, val, 0, 1023, &gpu))
                return 2;
        } else if (!strcmp(f, "--tensor-parallel")) {
            if (!fg_cli_parse_i64(C, f, val, 1, 8, &tp))
                return 2;
        } else {
            device = val;
        }
    }
    if (!model || !file) {
        fprintf(stderr, "forge perplexity: -m MODEL and -f FILE are required\n");
        return 2;
    }
    int rc = 1;
    char *text = NULL;
    size_t text_len = 0, n_ids = 0;
    int32_t *ids = NULL, *chunk = NULL, *pos = NULL, *seqv = NULL, *pt = NULL;
    bool *want = NULL;
    float *logits = NULL;
    fg_backend *be = NULL;
    fg_model *m = NULL;
    fg_kv_store *kv = NULL;
    int32_t n_ctx = (int32_t)ctx;

    if (fg_cli_read_file(file, &text, &text_len) != FG_OK)
        goto fail;
    int rank_threads = fg_cli_rank_threads((int)threads, (int)tp);
    if (fg_cli_backend(C, device, (int)gpu, rank_threads, &be) != FG_OK)
        goto fail;
    int32_t max_batch = FG_MIN(n_ctx, 512);
    fg_model_opts mo = {.max_batch_tokens = max_batch, .max_seqs = 1, .progress = true};
    fg_backend_opts tp_bo;
    fg_cli_tensor_parallel((int)tp, rank_threads, (int)gpu, &tp_bo, &mo);
    if (fg_model_load(model, be, &mo, &m) != FG_OK)
        goto fail;
    const fg_tokenizer *tok = fg_model_tokenizer(m);
    int32_t n_vocab = fg_model_get_info(m)->n_vocab;
    fg_cli_warn_ctx("perplexity", "-c", n_ctx, fg_model_get_info(m));
    if (fg_tokenize(tok, text, text_len, true, false, &ids, &n_ids) != FG_OK)
        goto fail;
    int64_t n_chunks = (int64_t)n_ids / n_ctx;
    if (n_chunks < 1) {
        fprintf(stderr, "forge perplexity: %s has %zu tokens, fewer than one chunk of %d (see -c)\n",
                file, n_ids, n_ctx);
        goto fail_quiet;
    }
    int32_t n_pages = (n_ctx + PPL_PAGE - 1) / PPL_PAGE;
    if (fg_kv_store_create(m, n_pages, PPL_PAGE, kv_type, &kv) != FG_OK)
        goto fail;
    fg_cli_print_memory(C, be, m, kv);
    chunk = fg_xcalloc((size_t)n_ctx, sizeof *chunk);
    pos = fg_xcalloc((size_t)n_ctx, sizeof *pos);
    seqv = fg_xcalloc((size_t)n_ctx, sizeof *seqv);
    want = fg_xcalloc((size_t)n_ctx, sizeof *want);
    pt = fg_xcalloc((size_t)n_pages, sizeof *pt);
    for (int32_t i = 0; i < n_pages; i++)
        pt[i] = i;
    int32_t first = n_ctx / 2;
    logits = malloc((size_t)max_batch * (size_t)n_vocab * sizeof *logits);
    if (!logits) {
        FG_FAIL(FG_ERR_NOMEM, "out of memory for logits");
        goto fail;
    }
    bool add_bos = fg_tokenizer_add_bos(tok);
    int32_t bos = fg_tokenizer_bos(tok);
    double nll = 0, nll2 = 0;
    int64_t count = 0;
    fg_progress pr;
    fg_progress_begin(&pr, "perplexity", (uint64_t)n_chunks);
    double t0 = fg_time_s();
    for (int64_t c = 0; c < n_chunks; c++) {
        memcpy(chunk, ids + c * n_ctx, (size_t)n_ctx * sizeof *chunk);
        if (add_bos && bos >= 0)
            chunk[0] = bos;
        for (int32_t s = 0; s < n_ctx; s += max_batch) {
            int32_t n = FG_MIN(max_batch, n_ctx - s);
            int32_t n_out = 0;
            for (int32_t i = 0; i < n; i++) {
                pos[i] = s + i;
                want[i] = s + i >= first && s + i <= n_ctx - 2;
                n_out += want[i];
            }
            int32_t n_kv = s + n;
            const int32_t *ptab = pt;
            fg_batch b = {.n_tokens = n, .tokens = chunk + s, .pos = pos, .seq = seqv,
                          .want_logits = want, .n_seqs = 1, .n_kv = &n_kv, .page_tables = &ptab};
            if (fg_model_forward(m, kv, &b, logits) != FG_OK)
                goto fail;
            int32_t r = 0;
            for (int32_t i = 0; i < n; i++) {
                if (!want[i])
                    continue;
                int32_t next = chunk[s + i + 1];
                double lp = log_softmax_at(logits + (size_t)r * (size_t)n_vocab, n_vocab, next);
                nll -= lp;
                nll2 += lp * lp;
                count++;
                r++;
            }
            (void)n_out;
        }
        fg_progress_update(&pr, (uint64_t)c + 1);
    }
    fg_progress_end(&pr);
    double dt = fg_time_s() - t0;
    if (count < 1) {
        fprintf(stderr, "forge perplexity: no token scored (context %d too short)\n", n_ctx);
        goto fail_quiet;
    }
    double mean = nll / (double)count, mean2 = nll2 / (double)count;
    double ppl = exp(mean);
    double unc = 0;
    if (count > 1) {
        double var = mean2 - mean * mean;
        unc = ppl * sqrt(var > 0 ? var / (double)(count - 1) : 0.0);
    }
    fprintf(stderr, "forge perplexity: %lld chunks of %d tokens, %lld scored, %.2f s (%.1f tok/s)\n",
            (long long)n_chunks, n_ctx, (long long)count, dt,
            dt > 0 ? (double)(n_chunks * n_ctx) / dt : 0.0);
    printf("tokens %zu chunks %lld ctx %d scored %lld\n", n_ids, (long long)n_chunks, n_ctx,
           (long long)count);
    printf("ppl %.4f +/- %.5f\n", ppl, unc);
    rc = 0;
    goto done;
fail:
    rc = fg_cli_fail("perplexity");
    goto done;
fail_quiet:
    rc = 1;
done:
    free(logits);
    free(chunk);
    free(pos);
    free(seqv);
    free(want);
    free(pt);
    free(ids);
    free(text);
    fg_kv_store_destroy(kv);
    fg_model_destroy(m);
    fg_backend_destroy(be);
    return rc;
}
