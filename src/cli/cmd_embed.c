// cmd_embed.c - `forge embed`: one embedding per input, for models with a pooling type (BERT
// family: bert, nomic-bert; issue 14). Inputs are the -p texts, or the lines of -f FILE (or of
// stdin), one input per line in order (an empty line is an input too: [CLS] [SEP]); each is
// tokenized as sentence-transformers does (the model's [CLS] / [SEP], special-token strings in
// the text recognised as Hugging Face's tokenizer recognises them), batched into steps of up to
// --batch-tokens tokens and --max-seqs inputs, pooled and normalised on the device as the
// model's file says. Output: one line per input, the floats separated by spaces, or with
// --json one JSON array per line. An input longer than the model's limit
// (sentence_transformers.max_seq_length, else context_length) is an error naming its line,
// unless --truncate (cut to the limit, [SEP] kept last). The model is driven directly, like
// `forge run` (no scheduler thread; that is `forge serve`'s /v1/embeddings).
#include "cli/cli.h"

#include "base/status.h"
#include "base/util.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void embed_usage(FILE *f) {
    fprintf(f,
            "usage: forge embed -m MODEL [-p TEXT ... | -f FILE] [options]\n"
            "  -m, --model PATH       GGUF embedding model (a pooling type: bert, nomic-bert, ...)\n"
            "  -p, --prompt TEXT      one input (repeatable)\n"
            "  -f, --file PATH        one input per line ('-': stdin; the default without -p)\n"
            "  --json                 one JSON array of floats per input (default: floats separated by spaces)\n"
            "  --truncate             cut inputs longer than the model takes (default: an error)\n"
            "  --batch-tokens N       tokens per step (default 8192 on a GPU, 2048 on the CPU; at least\n"
            "                         the longest input)\n"
            "  --max-seqs N           inputs per step (default 512 on a GPU, 256 on the CPU)\n"
            "  -t, --threads N        CPU threads (default: all cores)\n"
            "  --device NAME          auto (default: the GPU when usable), cpu or cuda\n"
            "  --gpu N                GPU index (default 0)\n"
            "  --timing               inputs, tokens and inputs/s of the embedding steps on stderr\n");
}

typedef struct embed_args {
    const char **prompts;
    int n_prompts;
    const char *model, *file, *device;
    int64_t threads, gpu, batch_tokens, max_seqs;
    bool json, truncate, timing;
} embed_args;

// 0: ok, 2: usage error (message printed), 3: --help
static int parse(int argc, char **argv, embed_args *a) {
    const char *C = "embed";
    a->batch_tokens = 0; // 0: by device, after the backend is chosen
    a->max_seqs = 0;
    a->prompts = fg_xcalloc((size_t)argc, sizeof *a->prompts);
    for (int i = 1; i < argc; i++) {
        const char *f = argv[i];
        const char *val = i + 1 < argc ? argv[i + 1] : NULL; // the flag's value, taken by fg_cli_value
        if (!strcmp(f, "-h") || !strcmp(f, "--help")) {
            return 3;
        } else if (!strcmp(f, "-m") || !strcmp(f, "--model")) {
            if (!fg_cli_value(C, argc, argv, &i))
                return 2;
            a->model = val;
        } else if (!strcmp(f, "-p") || !strcmp(f, "--prompt")) {
            if (!fg_cli_value(C, argc, argv, &i))
                return 2;
            a->prompts[a->n_prompts++] = val;
        } else if (!strcmp(f, "-f") || !strcmp(f, "--file")) {
            if (!fg_cli_value(C, argc, argv, &i))
                return 2;
            a->file = val;
        } else if (!strcmp(f, "--json")) {
            a->json = true;
        } else if (!strcmp(f, "--truncate")) {
            a->truncate = true;
        } else if (!strcmp(f, "--timing")) {
            a->timing = true;
        } else if (!strcmp(f, "--batch-tokens")) {
            if (!fg_cli_value(C, argc, argv, &i))
                return 2;
            if (!fg_cli_parse_i64(C, f, val, 1, 1 << 20, &a->batch_tokens))
                return 2;
        } else if (!strcmp(f, "--max-seqs")) {
            if (!fg_cli_value(C, argc, argv, &i))
                return 2;
            if (!fg_cli_parse_i64(C, f, val, 1, 1 << 16, &a->max_seqs))
                return 2;
        } else if (!strcmp(f, "-t") || !strcmp(f, "--threads")) {
            if (!fg_cli_value(C, argc, argv, &i))
                return 2;
            if (!fg_cli_parse_i64(C, f, val, 1, 1024, &a->threads))
                return 2;
        } else if (!strcmp(f, "--device")) {
            if (!fg_cli_value(C, argc, argv, &i))
                return 2;
            a->device = val;
            if (!fg_cli_device_valid(C, val))
                return 2;
        } else if (!strcmp(f, "--gpu")) {
            if (!fg_cli_value(C, argc, argv, &i))
                return 2;
            if (!fg_cli_parse_i64(C, f, val, 0, 1023, &a->gpu))
                return 2;
        } else {
            fprintf(stderr, "forge embed: unknown option '%s' (see forge embed --help)\n", f);
            return 2;
        }
    }
    if (!a->model) {
        fprintf(stderr, "forge embed: -m MODEL is required\n");
        return 2;
    }
    if (a->n_prompts > 0 && a->file) {
        fprintf(stderr, "forge embed: give -p TEXT or -f FILE, not both\n");
        return 2;
    }
    return 0;
}

// Splits text into lines (\n, a \r before it dropped); the newline ending the last line does
// not start another. Pointers into text (NUL-terminated in place).
static char **split_lines(char *text, size_t len, int32_t *n_out) {
    int32_t cap = 64, n = 0;
    char **lines = fg_xmalloc((size_t)cap * sizeof *lines);
    size_t start = 0;
    for (size_t i = 0; i <= len; i++) {
        if (i < len && text[i] != '\n')
            continue;
        if (i == len && start == len && n > 0)
            break; // the final newline
        if (n == cap) {
            cap *= 2;
            lines = fg_xrealloc(lines, (size_t)cap * sizeof *lines);
        }
        size_t end = i;
        if (end > start && text[end - 1] == '\r')
            end--;
        text[end] = '\0';
        lines[n++] = text + start;
        start = i + 1;
    }
    *n_out = n;
    return lines;
}

// Reads all of stdin (NUL-terminated heap buffer).
static fg_status read_stdin(char **out, size_t *len) {
    size_t cap = 1 << 16, n = 0;
    char *buf = fg_xmalloc(cap);
    for (;;) {
        if (n + 1 >= cap) {
            cap *= 2;
            buf = fg_xrealloc(buf, cap);
        }
        size_t r = fread(buf + n, 1, cap - n - 1, stdin);
        n += r;
        if (r == 0)
            break;
    }
    if (ferror(stdin)) {
        free(buf);
        return FG_FAIL(FG_ERR_IO, "stdin: read error");
    }
    buf[n] = '\0';
    *out = buf;
    *len = n;
    return FG_OK;
}

// One input's vector as a line at p: "[a, b, ...]" (--json) or "a b ...". %.9g: every float
// comes back exactly. Returns the bytes written (at most VEC_LINE_MAX(n)).
#define VEC_FLOAT_MAX 18 // ", " and "%.9g" of a float ("-1.23456789e-38")
#define VEC_LINE_MAX(n) ((size_t)(n) * VEC_FLOAT_MAX + 4)
static size_t format_vector(char *p, const float *v, int32_t n, bool json) {
    char *q = p;
    if (json)
        *q++ = '[';
    for (int32_t i = 0; i < n; i++)
        q += snprintf(q, VEC_FLOAT_MAX + 1, "%s%.9g", i == 0 ? "" : json ? ", " : " ", (double)v[i]);
    if (json)
        *q++ = ']';
    *q++ = '\n';
    return (size_t)(q - p);
}

// A slice of the rows to write, formatted by one thread into its own buffer.
typedef struct fmt_slice {
    const float *v; // first row
    int32_t rows, E;
    bool json;
    char *buf; // rows * VEC_LINE_MAX(E)
    size_t len;
} fmt_slice;

static void *format_slice(void *arg) {
    fmt_slice *s = arg;
    s->len = 0;
    for (int32_t r = 0; r < s->rows; r++)
        s->len += format_vector(s->buf + s->len, s->v + (size_t)r * s->E, s->E, s->json);
    return NULL;
}

// Writes rows [0, n) of v (E floats each): formatting a float takes ~0.2 us, so 10,000 vectors of
// 384 take ~0.7 s on one thread, longer than a GPU takes to compute them; the rows are formatted
// by up to `threads` threads (slices in order, each into its own buffer), then written in order.
#define FMT_MAX_THREADS 64
static void write_vectors(FILE *out, const float *v, int32_t n, int32_t E, bool json, int threads) {
    if (n <= 0)
        return;
    int nt = threads < 1 ? 1 : threads > FMT_MAX_THREADS ? FMT_MAX_THREADS : threads;
    if (n < 16 * nt) // a few rows: not worth a thread each
        nt = (n + 15) / 16;
    fmt_slice sl[FMT_MAX_THREADS];
    pthread_t th[FMT_MAX_THREADS];
    bool started[FMT_MAX_THREADS] = {false};
    for (int t = 0; t < nt; t++) {
        const int32_t r0 = (int32_t)((int64_t)n * t / nt), r1 = (int32_t)((int64_t)n * (t + 1) / nt);
        sl[t] = (fmt_slice){.v = v + (size_t)r0 * E, .rows = r1 - r0, .E = E, .json = json};
        sl[t].buf = fg_xmalloc((size_t)sl[t].rows * VEC_LINE_MAX(E) + 1);
        started[t] = t > 0 && pthread_create(&th[t], NULL, format_slice, &sl[t]) == 0;
    }
    format_slice(&sl[0]);
    for (int t = 1; t < nt; t++) {
        if (started[t])
            pthread_join(th[t], NULL);
        else // no thread: this one formats it
            format_slice(&sl[t]);
    }
    for (int t = 0; t < nt; t++) {
        fwrite(sl[t].buf, 1, sl[t].len, out);
        free(sl[t].buf);
    }
}

int fg_cmd_embed(int argc, char **argv) {
    embed_args a = {0};
    int pr = parse(argc, argv, &a);
    if (pr == 3) {
        embed_usage(stdout);
        free(a.prompts);
        return 0;
    }
    if (pr) {
        free(a.prompts);
        return pr;
    }
    int rc = 1;
    fg_backend *be = NULL;
    fg_model *m = NULL;
    char *text = NULL;
    char **lines = NULL;
    int32_t n_in = 0;
    int32_t **ids = NULL, *n_ids = NULL;
    float *vecs = NULL;

    if (a.n_prompts > 0) {
        n_in = a.n_prompts;
        lines = fg_xmalloc((size_t)n_in * sizeof *lines);
        for (int32_t i = 0; i < n_in; i++)
            lines[i] = (char *)a.prompts[i];
    } else {
        size_t len = 0;
        fg_status st = a.file && strcmp(a.file, "-") ? fg_cli_read_file(a.file, &text, &len) : read_stdin(&text, &len);
        if (st != FG_OK)
            goto fail;
        lines = split_lines(text, len, &n_in);
        if (len == 0)
            n_in = 0; // an empty file holds no input
    }
    if (n_in == 0) {
        fprintf(stderr, "forge embed: no input (an empty file or stdin)\n");
        goto fail_quiet;
    }
    if (fg_cli_backend("embed", a.device, (int)a.gpu, (int)a.threads, &be) != FG_OK)
        goto fail;
    // a GPU wants large steps (10,000 inputs of ~20 tokens on an H100: 25k inputs/s in steps of
    // 2,048 tokens, 38k in steps of 8,192); the CPU gains nothing from them
    uint64_t free_b = 0, total_b = 0;
    const bool gpu = fg_backend_mem_info(be, &free_b, &total_b) == FG_OK && total_b > 0;
    if (a.batch_tokens == 0)
        a.batch_tokens = gpu ? 8192 : 2048;
    if (a.max_seqs == 0)
        a.max_seqs = gpu ? 512 : 256;
    fg_model_opts mo = {.max_batch_tokens = (int32_t)a.batch_tokens, .max_seqs = (int32_t)a.max_seqs, .progress = true};
    if (fg_model_load(a.model, be, &mo, &m) != FG_OK)
        goto fail;
    const fg_model_info *info = fg_model_get_info(m);
    if (info->pooling == 0) {
        fprintf(stderr,
                "forge embed: %s: %s.pooling_type is absent or 0 (none): the model gives no vector per input "
                "(an embedding model names mean, cls or last)\n",
                a.model, info->arch);
        goto fail_quiet;
    }
    fg_cli_print_memory("embed", be, m, NULL);
    const fg_tokenizer *tok = fg_model_tokenizer(m);
    const int32_t limit = info->max_embed_tokens, E = info->n_embd;
    const int fmt_threads = a.threads > 0 ? (int)a.threads : (int)FG_MAX(1L, sysconf(_SC_NPROCESSORS_ONLN));
    double t0 = fg_time_s(), t_write = 0; // tokenizing, steps and writing: what the rate counts
    ids = fg_xcalloc((size_t)n_in, sizeof *ids);
    n_ids = fg_xcalloc((size_t)n_in, sizeof *n_ids);
    int64_t total = 0;
    for (int32_t i = 0; i < n_in; i++) {
        size_t n = 0;
        // sentence-transformers: [CLS] text [SEP], and "[SEP]" in the text is the special token
        if (fg_tokenize(tok, lines[i], strlen(lines[i]), true, true, &ids[i], &n) != FG_OK)
            goto fail;
        if (n == 0) {
            fprintf(stderr, "forge embed: input %d is empty and the model adds no special tokens\n", i + 1);
            goto fail_quiet;
        }
        if ((int64_t)n > limit && !a.truncate) {
            fprintf(stderr,
                    "forge embed: input %d has %zu tokens, the model takes at most %d (max_seq_length %d, "
                    "--batch-tokens %lld): shorten it or pass --truncate\n",
                    i + 1, n, limit, info->max_seq, (long long)a.batch_tokens);
            goto fail_quiet;
        }
        n_ids[i] = fg_embed_truncate(tok, ids[i], (int32_t)FG_MIN(n, (size_t)INT32_MAX), limit);
        total += n_ids[i];
    }
    vecs = malloc((size_t)n_in * (size_t)E * sizeof *vecs);
    if (!vecs) {
        FG_FAIL(FG_ERR_NOMEM, "out of memory for %d vectors", n_in);
        goto fail;
    }
    // batches of consecutive inputs; while a GPU computes one, the previous one is written out
    int32_t n_steps = 0, done = 0, written = 0;
    while (done < n_in) {
        int32_t ns = 0, nt = 0;
        while (done + ns < n_in && ns < info->max_seqs && nt + n_ids[done + ns] <= info->max_batch_tokens)
            nt += n_ids[done + ns++];
        fg_embed_batch b = {.n_seqs = ns, .tokens = (const int32_t *const *)(ids + done), .n_tokens = n_ids + done};
        if (fg_model_embed_submit(m, &b) != FG_OK)
            goto fail;
        double tw = fg_time_s();
        write_vectors(stdout, vecs + (size_t)written * E, done - written, E, a.json, fmt_threads);
        written = done;
        t_write += fg_time_s() - tw;
        const float *out = NULL;
        int32_t got = 0;
        if (fg_model_embed_wait(m, &out, &got) != FG_OK)
            goto fail;
        memcpy(vecs + (size_t)done * E, out, (size_t)got * (size_t)E * sizeof *vecs);
        done += ns;
        n_steps++;
    }
    double tw = fg_time_s();
    write_vectors(stdout, vecs + (size_t)written * E, n_in - written, E, a.json, fmt_threads);
    if (fflush(stdout) != 0 || ferror(stdout)) {
        fprintf(stderr, "forge embed: cannot write the output\n");
        goto fail_quiet;
    }
    double t1 = fg_time_s();
    t_write += t1 - tw;
    if (a.timing) { // tokenizing, the steps and writing every vector out, not the loading
        double dt = t1 - t0;
        fprintf(stderr,
                "forge embed: %d inputs, %lld tokens, %d steps in %.3f s (%.3f s of it writing): %.1f inputs/s, "
                "%.0f tokens/s; %s\n",
                n_in, (long long)total, n_steps, dt, t_write, (double)n_in / dt, (double)total / dt,
                fg_backend_describe(be));
    }
    rc = 0;
    goto done;
fail:
    rc = fg_cli_fail("embed");
    goto done;
fail_quiet:
    rc = 1;
done:
    for (int32_t i = 0; ids && i < n_in; i++)
        free(ids[i]);
    free(ids);
    free(n_ids);
    free(vecs);
    free(lines);
    free(text);
    free(a.prompts);
    fg_model_destroy(m);
    fg_backend_destroy(be);
    return rc;
}
