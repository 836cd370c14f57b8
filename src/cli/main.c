// main.c - the `forge` command: dispatches to the subcommands. Only the CLI exits.
#include "cli/cli.h"

#include "base/status.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct command {
    const char *name;
    int (*fn)(int argc, char **argv);
    const char *help;
} command;

static const command k_commands[] = {
    {"run", fg_cmd_run, "generate text from a prompt"},
    {"chat", fg_cmd_chat, "talk with a model on a terminal, in its chat template"},
    {"serve", fg_cmd_serve, "OpenAI-compatible HTTP server with continuous batching"},
    {"bench", fg_cmd_bench, "prefill and decode throughput against the memory bound"},
    {"perplexity", fg_cmd_perplexity, "perplexity of a text file (llama.cpp's method)"},
    {"embed", fg_cmd_embed, "one embedding vector per input line (BERT-family models)"},
    {"tokenize", fg_cmd_tokenize, "print the token ids of a text"},
    {"detokenize", fg_cmd_detokenize, "print the text of token ids"},
    {"info", fg_cmd_info, "print a GGUF file's metadata and tensors"},
    {"synth", fg_cmd_synth, "write a GGUF model with random weights"},
};

static void usage(FILE *f) {
    fprintf(f, "forge %s - LLM inference for GGUF models\n\nusage: forge <command> [options]\n\n",
            FORGE_VERSION);
    for (size_t i = 0; i < sizeof k_commands / sizeof k_commands[0]; i++)
        fprintf(f, "  %-11s %s\n", k_commands[i].name, k_commands[i].help);
    fprintf(f, "\n'forge <command> --help' describes a command's options.\n");
}

int fg_cli_fail(const char *cmd) {
    fprintf(stderr, "forge %s: %s\n", cmd, fg_last_error());
    return 1;
}

const char *fg_cli_value(const char *cmd, int argc, char **argv, int *i) {
    if (*i + 1 >= argc) {
        fprintf(stderr, "forge %s: %s needs a value\n", cmd, argv[*i]);
        return NULL;
    }
    return argv[++*i];
}

bool fg_cli_parse_i64(const char *cmd, const char *flag, const char *s, int64_t lo, int64_t hi,
                      int64_t *out) {
    char *end = NULL;
    errno = 0;
    long long v = s ? strtoll(s, &end, 10) : 0;
    if (!s || !*s || *end || errno || v < lo || v > hi) {
        fprintf(stderr, "forge %s: %s expects an integer in [%lld, %lld], got '%s'\n", cmd, flag,
                (long long)lo, (long long)hi, s ? s : "");
        return false;
    }
    *out = v;
    return true;
}

bool fg_cli_parse_f64(const char *cmd, const char *flag, const char *s, double lo, double hi,
                      double *out) {
    char *end = NULL;
    errno = 0;
    double v = s ? strtod(s, &end) : 0;
    if (!s || !*s || *end || errno || !(v >= lo && v <= hi)) {
        fprintf(stderr, "forge %s: %s expects a number in [%g, %g], got '%s'\n", cmd, flag, lo,
                hi, s ? s : "");
        return false;
    }
    *out = v;
    return true;
}

void fg_cli_warn_ctx(const char *cmd, const char *flag, int32_t n_ctx, const fg_model_info *info) {
    if (n_ctx > info->n_ctx_train)
        fprintf(stderr,
                "forge %s: warning: %s %d is beyond the %d tokens the model was trained on "
                "(%s.context_length): positions past it were never trained, expect worse "
                "results there\n",
                cmd, flag, n_ctx, info->n_ctx_train, info->arch);
}

fg_status fg_cli_read_file(const char *path, char **out, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f)
        return FG_FAIL(FG_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    if (!buf) {
        fclose(f);
        return FG_FAIL(FG_ERR_NOMEM, "%s: out of memory", path);
    }
    for (;;) {
        if (n + 1 >= cap) {
            char *nb = realloc(buf, cap * 2);
            if (!nb) {
                free(buf);
                fclose(f);
                return FG_FAIL(FG_ERR_NOMEM, "%s: out of memory", path);
            }
            buf = nb;
            cap *= 2;
        }
        errno = 0;
        size_t r = fread(buf + n, 1, cap - n - 1, f);
        n += r;
        if (r == 0)
            break;
    }
    int err = ferror(f) ? (errno ? errno : EIO) : 0; // EISDIR for a directory
    fclose(f);
    if (err) {
        free(buf);
        return FG_FAIL(FG_ERR_IO, "%s: cannot read: %s", path, strerror(err));
    }
    buf[n] = '\0';
    *out = buf;
    *len = n;
    return FG_OK;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(argv[1], "--version")) {
        printf("forge %s\n", FORGE_VERSION);
        return 0;
    }
    for (size_t i = 0; i < sizeof k_commands / sizeof k_commands[0]; i++)
        if (!strcmp(argv[1], k_commands[i].name))
            return k_commands[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "forge: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
