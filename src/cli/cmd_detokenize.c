// cmd_detokenize.c - `forge detokenize`: prints the text of token ids given as arguments or
// on stdin (exactly the bytes, no newline added). --batch-file takes one id sequence per
// line and prints each text followed by "\n__ggml_vocab_test__\n" (the .inp framing).
// Errors: one line on stderr, exit 1; usage errors exit 2. Not here: the detokenizer.
#include "cli/cli.h"

#include "base/status.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BATCH_SEP "\n__ggml_vocab_test__\n"

static void usage(FILE *f) {
    fprintf(f,
            "usage: forge detokenize -m MODEL [options] [ID...] [options]\n\n"
            "Prints the text of the token ids (from the arguments, else from stdin; separated\n"
            "by spaces, commas or newlines) exactly, with no newline added. Options may come\n"
            "before or after the ids (\"--\" ends the options).\n\n"
            "  -m, --model PATH     GGUF file with a tokenizer\n"
            "  --special            render control tokens' text (otherwise they print nothing)\n"
            "  --no-clean           skip the clean-up of spaces before punctuation that some\n"
            "                       vocabularies (gpt-2, falcon, bert...) ask for\n"
            "  --batch-file PATH    one id sequence per line; prints each text followed by\n"
            "                       \"\\n__ggml_vocab_test__\\n\"\n"
            "  -h, --help           this text\n");
}

// Parses whitespace/comma-separated ids from s[0..n).
static fg_status parse_ids(const char *s, size_t n, int32_t **ids, size_t *count) {
    size_t cap = 64, k = 0;
    int32_t *v = malloc(cap * sizeof *v);
    if (!v)
        return FG_FAIL(FG_ERR_NOMEM, "out of memory");
    size_t i = 0;
    while (i < n) {
        while (i < n && (isspace((unsigned char)s[i]) || s[i] == ','))
            i++;
        if (i >= n)
            break;
        size_t j = i;
        while (j < n && !isspace((unsigned char)s[j]) && s[j] != ',')
            j++;
        char tok[24];
        size_t tl = j - i;
        long long x = -1;
        char *end = NULL;
        if (tl < sizeof tok) {
            memcpy(tok, s + i, tl);
            tok[tl] = 0;
            errno = 0;
            x = strtoll(tok, &end, 10);
            if (errno || *end)
                x = -1;
        }
        if (x < 0 || x > INT32_MAX) {
            free(v);
            return FG_FAIL(FG_ERR_INVALID_ARG, "'%.*s' is not a token id", (int)(tl < 32 ? tl : 32), s + i);
        }
        if (k == cap) {
            int32_t *nv = realloc(v, 2 * cap * sizeof *v);
            if (!nv) {
                free(v);
                return FG_FAIL(FG_ERR_NOMEM, "out of memory");
            }
            v = nv;
            cap *= 2;
        }
        v[k++] = (int32_t)x;
        i = j;
    }
    *ids = v;
    *count = k;
    return FG_OK;
}

static fg_status print_text(const fg_tokenizer *t, const char *s, size_t n, unsigned flags) {
    int32_t *ids = NULL;
    size_t k = 0;
    FG_TRY(parse_ids(s, n, &ids, &k));
    char *text = NULL;
    size_t len = 0;
    fg_status st = fg_detokenize_ex(t, ids, k, flags, &text, &len);
    free(ids);
    FG_TRY(st);
    fwrite(text, 1, len, stdout);
    free(text);
    return FG_OK;
}

int fg_cmd_detokenize(int argc, char **argv) {
    const char *model = NULL, *batch = NULL;
    unsigned flags = 0;
    // ids and options may come in any order (`forge detokenize -m M 1 2 3 --special`)
    char **id_args = calloc((size_t)argc + 1, sizeof *id_args);
    int n_id_args = 0;
    bool only_ids = false; // after "--"
    if (!id_args) {
        fprintf(stderr, "forge detokenize: out of memory\n");
        return 1;
    }
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        bool has_next = i + 1 < argc;
        if (only_ids || a[0] != '-' || isdigit((unsigned char)a[1])) {
            id_args[n_id_args++] = argv[i];
        } else if (!strcmp(a, "--")) {
            only_ids = true;
        } else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            free(id_args);
            usage(stdout);
            return 0;
        } else if ((!strcmp(a, "-m") || !strcmp(a, "--model")) && has_next) {
            model = argv[++i];
        } else if (!strcmp(a, "--batch-file") && has_next) {
            batch = argv[++i];
        } else if (!strcmp(a, "--special")) {
            flags |= FG_DETOK_SPECIAL;
        } else if (!strcmp(a, "--no-clean")) {
            flags |= FG_DETOK_NO_CLEAN;
        } else {
            fprintf(stderr, "forge detokenize: unknown or incomplete option '%s' (see --help)\n", a);
            free(id_args);
            return 2;
        }
    }
    if (!model) {
        fprintf(stderr, "forge detokenize: -m MODEL is required (see --help)\n");
        free(id_args);
        return 2;
    }
    fg_gguf *g = NULL;
    fg_tokenizer *t = NULL;
    char *in = NULL;
    size_t len = 0;
    int rc = 1;
    if (fg_gguf_open(model, &g) != FG_OK)
        goto fail;
    if (fg_tokenizer_create(g, NULL, &t) != FG_OK)
        goto fail;
    fg_gguf_close(g);
    g = NULL;
    if (n_id_args > 0) { // ids from the arguments: join them
        size_t cap = 1;
        for (int i = 0; i < n_id_args; i++)
            cap += strlen(id_args[i]) + 1;
        in = malloc(cap);
        if (!in) {
            FG_FAIL(FG_ERR_NOMEM, "out of memory");
            goto fail;
        }
        for (int i = 0; i < n_id_args; i++) {
            size_t l = strlen(id_args[i]);
            memcpy(in + len, id_args[i], l);
            len += l;
            in[len++] = ' ';
        }
    } else if (fg_cli_read_file(batch ? batch : "/dev/stdin", &in, &len) != FG_OK) {
        goto fail;
    }
    if (batch) {
        size_t pos = 0;
        while (pos < len) {
            const char *nl = memchr(in + pos, '\n', len - pos);
            size_t end = nl ? (size_t)(nl - in) : len;
            if (print_text(t, in + pos, end - pos, flags) != FG_OK)
                goto fail;
            fputs(BATCH_SEP, stdout);
            pos = end + 1;
        }
    } else if (print_text(t, in, len, flags) != FG_OK) {
        goto fail;
    }
    rc = 0;
    goto done;
fail:
    rc = fg_cli_fail("detokenize");
done:
    free(id_args);
    free(in);
    fg_tokenizer_destroy(t);
    fg_gguf_close(g);
    if (fflush(stdout) != 0 && rc == 0) {
        fprintf(stderr, "forge detokenize: error writing the output\n");
        rc = 1;
    }
    return rc;
}
