// cmd_run.c - `forge run`: loads a model, tokenizes a prompt with the model's add-BOS rule,
// prefills it in chunks of max_batch_tokens and generates token by token with the sampler,
// streaming the continuation to stdout (timings to stderr). One sequence, pages from the
// engine's page allocator; no scheduler thread (that is `forge serve`).
// Choices: -n 0 prints nothing and exits 0 after the prefill; -n -1 generates until EOG or
// the context is full; an empty prompt is allowed when the model adds BOS.
#include "cli/cli.h"

#include "base/status.h"
#include "base/util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define PAGE_SIZE 16
#define MAX_BATCH 512

static void run_usage(FILE *f) {
    fprintf(f,
            "usage: forge run -m MODEL [-p PROMPT | -f FILE] [options]\n"
            "  -m, --model PATH       GGUF model\n"
            "  -p, --prompt TEXT      prompt (may be empty when the model adds BOS)\n"
            "  -f, --file PATH        read the prompt from a file\n"
            "  -n, --n-predict N      tokens to generate (default 128; 0: none; -1: until EOG or full context)\n"
            FG_CLI_SAMPLING_HELP
            "  -t, --threads N        CPU threads (default: all cores)\n"
            "  -c, --ctx N            context length (default: the model's, at most 4096)\n"
            "  --kv-type T            " FG_CLI_KV_TYPE_HELP "\n"
            "  --device NAME          auto (default: the GPU when usable), cpu or cuda\n"
            "  --gpu N                GPU index (default 0)\n"
            "  --tensor-parallel N    split the model across N GPUs (gpu..gpu+N-1) or N groups of CPU threads\n"
            "  --ids                  print generated token ids instead of text\n"
            "  --special              render control tokens in the output\n");
}

typedef struct run_args {
    const char *model, *prompt, *file, *device;
    int64_t n_predict, threads, ctx, gpu, tp;
    uint32_t kv_type;
    fg_sampling smp;
    bool seed_set, ids, special;
} run_args;

// 0: ok, 2: usage error (message printed), 3: --help
static int parse(int argc, char **argv, run_args *a) {
    const char *C = "run";
    a->n_predict = 128;
    a->device = NULL; // fg_cli_default_device()
    a->smp = fg_sampling_default();
    a->kv_type = FG_TYPE_F16;
    for (int i = 1; i < argc; i++) {
        const char *f = argv[i];
        const char *val = i + 1 < argc ? argv[i + 1] : NULL; // the flag's value, taken by fg_cli_value
        int sr = fg_cli_sampling_flag(C, argc, argv, &i, &a->smp, &a->seed_set);
        if (sr == 0)
            sr = fg_cli_kv_type_flag(C, argc, argv, &i, &a->kv_type);
        if (sr < 0)
            return 2;
        if (sr > 0)
            continue;
        if (!strcmp(f, "-h") || !strcmp(f, "--help")) {
            return 3;
        } else if (!strcmp(f, "-m") || !strcmp(f, "--model")) {
            if (!fg_cli_value(C, argc, argv, &i))
                return 2;
            a->model = val;
        } else if (!strcmp(f, "-p") || !strcmp(f, "--prompt")) {
            if (!fg_cli_value(C, argc, argv, &i))
                return 2;
            a->prompt = val;
        } else if (!strcmp(f, "-f") || !strcmp(f, "--file")) {
            if (!fg_cli_value(C, argc, argv, &i))
                return 2;
            a->file = val;
        } else if (!strcmp(f, "-n") || !strcmp(f, "--n-predict")) {
            if (!fg_cli_value(C, argc, argv, &i))
                return 2;
            if (!fg_cli_parse_i64(C, f, val, -1, INT32_MAX, &a->n_predict))
                return 2;
        } else if (!strcmp(f, "-t") || !strcmp(f, "--threads")) {
            if (!fg_cli_value(C, argc, argv, &i))
                return 2;
            if (!fg_cli_parse_i64(C, f, val, 1, 1024, &a->threads))
                return 2;
        } else if (!strcmp(f, "-c") || !strcmp(f, "--ctx")) {
            if (!fg_cli_value(C, argc, argv, &i))
                return 2;
            if (!fg_cli_parse_i64(C, f, val, 1, 1 << 24, &a->ctx))
                return 2;
        } else if (!strcmp(f, "--device")) {
            if (!fg_cli_value(C, argc, argv, &i))
                return 2;
            a->device = val;
        } else if (!strcmp(f, "--gpu")) {
            if (!fg_cli_value(C, argc, argv, &i))
                return 2;
            if (!fg_cli_parse_i64(C, f, val, 0, 1023, &a->gpu))
                return 2;
        } else if (!strcmp(f, "--tensor-parallel")) {
            if (!fg_cli_value(C, argc, argv, &i))
                return 2;
            if (!fg_cli_parse_i64(C, f, val, 1, 8, &a->tp))
                return 2;
        } else if (!strcmp(f, "--ids")) {
            a->ids = true;
        } else if (!strcmp(f, "--special")) {
            a->special = true;
        } else {
            fprintf(stderr, "forge run: unknown option '%s' (see forge run --help)\n", f);
            return 2;
        }
    }
    if (!a->model) {
        fprintf(stderr, "forge run: -m MODEL is required\n");
        return 2;
    }
    if (!a->prompt == !a->file) {
        fprintf(stderr, "forge run: give exactly one of -p PROMPT or -f FILE\n");
        return 2;
    }
    return 0;
}

// Evaluates n tokens of the sequence at positions len..len+n-1; logits of the last one.
static fg_status eval(fg_model *m, fg_kv_store *kv, fg_kv_pages *pages, int32_t seq,
                      const int32_t *toks, int32_t n, int32_t *pos, int32_t *seqv, float *logits) {
    int32_t len = fg_kv_seq_len(pages, seq);
    FG_TRY(fg_kv_seq_append(pages, seq, n));
    for (int32_t i = 0; i < n; i++) {
        pos[i] = len + i;
        seqv[i] = 0;
    }
    int32_t n_kv = len + n;
    const int32_t *pt = fg_kv_seq_pages(pages, seq);
    fg_batch b = {
        .n_tokens = n,
        .tokens = toks,
        .pos = pos,
        .seq = seqv,
        .want_logits = NULL,
        .n_seqs = 1,
        .n_kv = &n_kv,
        .page_tables = &pt,
    };
    return fg_model_forward(m, kv, &b, logits);
}

int fg_cmd_run(int argc, char **argv) {
    run_args a = {0};
    int pr = parse(argc, argv, &a);
    if (pr == 3) {
        run_usage(stdout);
        return 0;
    }
    if (pr)
        return pr;
    int rc = 1;
    fg_backend *be = NULL;
    fg_model *m = NULL;
    fg_kv_store *kv = NULL;
    fg_kv_pages *pages = NULL;
    fg_sampler *smp = NULL;
    char *text = NULL;
    int32_t *ids = NULL, *pos = NULL, *seqv = NULL;
    float *logits = NULL;
    size_t n_ids = 0, text_len = 0;

    if (a.file) {
        if (fg_cli_read_file(a.file, &text, &text_len) != FG_OK)
            return fg_cli_fail("run");
    } else {
        text = fg_xstrdup(a.prompt);
        text_len = strlen(text);
    }
    int rank_threads = fg_cli_rank_threads((int)a.threads, (int)a.tp);
    if (fg_cli_backend("run", a.device, (int)a.gpu, rank_threads, &be) != FG_OK)
        goto fail;
    fg_model_opts mo = {.max_batch_tokens = MAX_BATCH, .max_seqs = 1, .progress = true};
    fg_backend_opts tp_bo;
    fg_cli_tensor_parallel((int)a.tp, rank_threads, (int)a.gpu, &tp_bo, &mo);
    if (fg_model_load(a.model, be, &mo, &m) != FG_OK)
        goto fail;
    const fg_model_info *info = fg_model_get_info(m);
    const fg_tokenizer *tok = fg_model_tokenizer(m);
    if (fg_tokenize(tok, text, text_len, true, false, &ids, &n_ids) != FG_OK)
        goto fail;
    if (n_ids == 0) {
        fprintf(stderr, "forge run: the prompt is empty and the model adds no BOS token\n");
        goto fail_quiet;
    }
    int32_t n_ctx = a.ctx > 0 ? (int32_t)a.ctx : FG_MIN(info->n_ctx_train, 4096);
    fg_cli_warn_ctx("run", "--ctx", n_ctx, info);
    if ((int64_t)n_ids > n_ctx) {
        fprintf(stderr, "forge run: the prompt has %zu tokens, more than the context (%d; see --ctx)\n",
                n_ids, n_ctx);
        goto fail_quiet;
    }
    int32_t n_pages = (n_ctx + PAGE_SIZE - 1) / PAGE_SIZE;
    if (fg_kv_store_create(m, n_pages, PAGE_SIZE, a.kv_type, &kv) != FG_OK)
        goto fail;
    if (fg_kv_pages_create(n_pages, PAGE_SIZE, 1, &pages) != FG_OK)
        goto fail;
    int32_t seq = 0;
    if (fg_kv_seq_new(pages, &seq) != FG_OK)
        goto fail;
    fg_cli_print_memory("run", be, m, kv);
    if (!a.seed_set) {
        a.smp.seed = (uint64_t)time(NULL);
        if (a.smp.temperature > 0)
            fprintf(stderr, "forge run: seed %llu\n", (unsigned long long)a.smp.seed);
    }
    if (fg_sampler_create(&a.smp, info->n_vocab, &smp) != FG_OK)
        goto fail;
    pos = fg_xcalloc(MAX_BATCH, sizeof *pos);
    seqv = fg_xcalloc(MAX_BATCH, sizeof *seqv);
    logits = malloc((size_t)info->n_vocab * sizeof *logits);
    if (!logits) {
        FG_FAIL(FG_ERR_NOMEM, "out of memory");
        goto fail;
    }
    for (size_t i = 0; i < n_ids; i++)
        fg_sampler_accept(smp, ids[i]);

    double t0 = fg_time_s();
    for (size_t i = 0; i < n_ids; i += MAX_BATCH) {
        int32_t n = (int32_t)FG_MIN(n_ids - i, (size_t)MAX_BATCH);
        if (eval(m, kv, pages, seq, ids + i, n, pos, seqv, logits) != FG_OK)
            goto fail;
    }
    double t1 = fg_time_s();
    int64_t limit = a.n_predict < 0 ? INT64_MAX : a.n_predict;
    int64_t n_gen = 0;
    bool ctx_full = false;
    fg_detok_stream ds;
    fg_detok_stream_init(&ds);
    char piece[1024];
    while (n_gen < limit) {
        int32_t t = fg_sampler_sample(smp, logits);
        n_gen++;
        if (fg_tokenizer_is_eog(tok, t))
            break;
        fg_sampler_accept(smp, t);
        if (a.ids) {
            printf("%s%d", n_gen > 1 ? " " : "", t);
        } else {
            int32_t w = fg_detok_stream_push(tok, &ds, t, a.special, piece, sizeof piece);
            if (w > 0)
                fwrite(piece, 1, (size_t)w, stdout);
        }
        fflush(stdout);
        if (n_gen >= limit)
            break;
        if (fg_kv_seq_len(pages, seq) >= n_ctx) {
            ctx_full = true;
            break;
        }
        if (eval(m, kv, pages, seq, &t, 1, pos, seqv, logits) != FG_OK)
            goto fail;
    }
    if (a.ids) {
        if (n_gen > 0)
            printf("\n");
    } else {
        int32_t w = fg_detok_stream_flush(&ds, piece, sizeof piece);
        if (w > 0)
            fwrite(piece, 1, (size_t)w, stdout);
    }
    fflush(stdout);
    double t2 = fg_time_s();
    if (ctx_full)
        fprintf(stderr, "\nforge run: context full (%d tokens)\n", n_ctx);
    double tp = t1 - t0, tg = t2 - t1;
    fprintf(stderr, "\nforge run: prompt %zu tokens in %.3f s (%.1f tok/s); generated %lld tokens in %.3f s (%.1f tok/s)\n",
            n_ids, tp, tp > 0 ? (double)n_ids / tp : 0.0, (long long)n_gen, tg,
            tg > 0 ? (double)n_gen / tg : 0.0);
    rc = 0;
    goto done;
fail:
    rc = fg_cli_fail("run");
    goto done;
fail_quiet:
    rc = 1;
done:
    free(logits);
    free(pos);
    free(seqv);
    free(ids);
    free(text);
    fg_sampler_destroy(smp);
    fg_kv_pages_destroy(pages);
    fg_kv_store_destroy(kv);
    fg_model_destroy(m);
    fg_backend_destroy(be);
    return rc;
}
