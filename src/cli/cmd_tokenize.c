// cmd_tokenize.c - `forge tokenize`: prints the token ids of a text (one line, space
// separated), or `id 'piece'` lines with --pieces, or one line per string of a batch file
// in llama.cpp's vocabulary-test format (strings separated by "\n__ggml_vocab_test__\n").
// Errors: one line on stderr, exit 1; usage errors exit 2. Not here: the tokenizer itself.
#include "cli/cli.h"

#include "base/status.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BATCH_SEP "\n__ggml_vocab_test__\n"

static void usage(FILE *f) {
    fprintf(f,
            "usage: forge tokenize -m MODEL [-p TEXT | -f FILE | --batch-file FILE] [options]\n\n"
            "Prints the token ids of TEXT (or FILE, or stdin) on one line, space separated.\n\n"
            "  -m, --model PATH     GGUF file with a tokenizer\n"
            "  -p, --prompt TEXT    the text (bytes as given; see --escape)\n"
            "  -f, --file PATH      read the text from a file\n"
            "  --batch-file PATH    strings separated by \"\\n__ggml_vocab_test__\\n\" (llama.cpp's\n"
            "                       .inp format): one output line of ids per string\n"
            "  --no-bos             do not add BOS/EOS (add_special = false)\n"
            "  --special            match control-token texts in the input (parse_special)\n"
            "  --pieces             one line per token: ID<TAB>'PIECE' (piece bytes escaped as\n"
            "                       \\n \\t \\r \\\\ \\' and \\xNN for other control bytes and for\n"
            "                       pieces that are not valid UTF-8, e.g. single byte tokens)\n"
            "  --pre NAME           use pre-tokenizer NAME instead of tokenizer.ggml.pre\n"
            "  --words              byte-level BPE only: print the pre-tokenizer's words as a\n"
            "                       JSON array of strings (one line per text) instead of ids\n"
            "  --escape             process \\n \\t \\r \\\\ \\\" \\' \\xNN escapes in -p TEXT\n"
            "  -h, --help           this text\n");
}

static size_t unescape(char *s, size_t n) {
    size_t w = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] != '\\' || i + 1 >= n) {
            s[w++] = s[i];
            continue;
        }
        char c = s[++i];
        switch (c) {
        case 'n': s[w++] = '\n'; break;
        case 't': s[w++] = '\t'; break;
        case 'r': s[w++] = '\r'; break;
        case '\\': s[w++] = '\\'; break;
        case '"': s[w++] = '"'; break;
        case '\'': s[w++] = '\''; break;
        case 'x': {
            unsigned v = 0;
            int k = 0;
            while (k < 2 && i + 1 < n && strchr("0123456789abcdefABCDEF", s[i + 1]) && s[i + 1]) {
                char h = s[++i];
                v = v * 16 + (unsigned)(h <= '9' ? h - '0' : (h | 0x20) - 'a' + 10);
                k++;
            }
            s[w++] = k ? (char)v : 'x';
            break;
        }
        default:
            s[w++] = '\\';
            s[w++] = c;
        }
    }
    return w;
}

// Valid UTF-8 (no overlongs, surrogates or values past U+10FFFF)?
static bool utf8_valid(const unsigned char *s, size_t n) {
    for (size_t i = 0; i < n;) {
        unsigned char c = s[i];
        size_t l = c < 0x80 ? 1 : c >= 0xc2 && c <= 0xdf ? 2 : c >= 0xe0 && c <= 0xef ? 3 : c >= 0xf0 && c <= 0xf4 ? 4 : 0;
        if (l == 0 || i + l > n)
            return false;
        for (size_t k = 1; k < l; k++)
            if ((s[i + k] & 0xc0) != 0x80)
                return false;
        if (l == 3 && ((c == 0xe0 && s[i + 1] < 0xa0) || (c == 0xed && s[i + 1] > 0x9f)))
            return false;
        if (l == 4 && ((c == 0xf0 && s[i + 1] < 0x90) || (c == 0xf4 && s[i + 1] > 0x8f)))
            return false;
        i += l;
    }
    return true;
}

static void print_piece(const fg_tokenizer *t, int32_t id) {
    char buf[512];
    int32_t n = fg_token_to_piece(t, id, true, buf, sizeof buf);
    char *p = buf;
    char *heap = NULL;
    if (n > (int32_t)sizeof buf) {
        heap = malloc((size_t)n);
        if (heap) {
            fg_token_to_piece(t, id, true, heap, (size_t)n);
            p = heap;
        } else {
            n = (int32_t)sizeof buf;
        }
    }
    printf("%d\t'", id);
    bool raw_ok = n >= 0 && utf8_valid((const unsigned char *)p, (size_t)n);
    for (int32_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c == '\n')
            fputs("\\n", stdout);
        else if (c == '\t')
            fputs("\\t", stdout);
        else if (c == '\r')
            fputs("\\r", stdout);
        else if (c == '\\' || c == '\'')
            printf("\\%c", c);
        else if (c < 0x20 || c == 0x7f || (c >= 0x80 && !raw_ok))
            printf("\\x%02x", c);
        else
            putchar(c);
    }
    fputs("'\n", stdout);
    free(heap);
}

static fg_status print_words(const fg_tokenizer *t, const char *text, size_t len) {
    size_t *sp = NULL, n = 0;
    FG_TRY(fg_tokenizer_pre_split(t, text, len, &sp, &n));
    putchar('[');
    for (size_t i = 0; i < n; i++) {
        fputs(i ? ", \"" : "\"", stdout);
        for (size_t k = sp[2 * i]; k < sp[2 * i] + sp[2 * i + 1]; k++) {
            unsigned char c = (unsigned char)text[k];
            if (c == '"' || c == '\\')
                printf("\\%c", c);
            else if (c < 0x20 || c == 0x7f)
                printf("\\u%04x", c);
            else
                putchar(c);
        }
        putchar('"');
    }
    fputs("]\n", stdout);
    free(sp);
    return FG_OK;
}

static fg_status run_one(const fg_tokenizer *t, const char *text, size_t len, bool add_special,
                         bool parse_special, bool pieces, bool words) {
    if (words)
        return print_words(t, text, len);
    int32_t *ids = NULL;
    size_t n = 0;
    FG_TRY(fg_tokenize(t, text, len, add_special, parse_special, &ids, &n));
    if (pieces) {
        for (size_t i = 0; i < n; i++)
            print_piece(t, ids[i]);
    } else {
        for (size_t i = 0; i < n; i++)
            printf(i ? " %d" : "%d", ids[i]);
        putchar('\n');
    }
    free(ids);
    return FG_OK;
}

int fg_cmd_tokenize(int argc, char **argv) {
    const char *model = NULL, *prompt = NULL, *file = NULL, *batch = NULL, *pre = NULL;
    bool no_bos = false, special = false, pieces = false, escape = false, words = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        bool has_next = i + 1 < argc;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        } else if ((!strcmp(a, "-m") || !strcmp(a, "--model")) && has_next) {
            model = argv[++i];
        } else if ((!strcmp(a, "-p") || !strcmp(a, "--prompt")) && has_next) {
            prompt = argv[++i];
        } else if ((!strcmp(a, "-f") || !strcmp(a, "--file")) && has_next) {
            file = argv[++i];
        } else if (!strcmp(a, "--batch-file") && has_next) {
            batch = argv[++i];
        } else if (!strcmp(a, "--pre") && has_next) {
            pre = argv[++i];
        } else if (!strcmp(a, "--no-bos")) {
            no_bos = true;
        } else if (!strcmp(a, "--special")) {
            special = true;
        } else if (!strcmp(a, "--pieces")) {
            pieces = true;
        } else if (!strcmp(a, "--words")) {
            words = true;
        } else if (!strcmp(a, "--escape")) {
            escape = true;
        } else {
            fprintf(stderr, "forge tokenize: unknown or incomplete option '%s' (see --help)\n", a);
            return 2;
        }
    }
    if (!model) {
        fprintf(stderr, "forge tokenize: -m MODEL is required (see --help)\n");
        return 2;
    }
    if ((prompt != NULL) + (file != NULL) + (batch != NULL) > 1) {
        fprintf(stderr, "forge tokenize: give only one of -p, -f, --batch-file\n");
        return 2;
    }
    fg_gguf *g = NULL;
    fg_tokenizer *t = NULL;
    char *text = NULL;
    size_t len = 0;
    int rc = 1;
    if (fg_gguf_open(model, &g) != FG_OK)
        goto fail;
    fg_tokenizer_opts opts = {.pre_override = pre};
    if (fg_tokenizer_create(g, &opts, &t) != FG_OK)
        goto fail;
    fg_gguf_close(g);
    g = NULL;
    if (prompt) {
        len = strlen(prompt);
        text = malloc(len + 1);
        if (!text) {
            FG_FAIL(FG_ERR_NOMEM, "out of memory");
            goto fail;
        }
        memcpy(text, prompt, len + 1);
        if (escape)
            len = unescape(text, len);
    } else if (fg_cli_read_file(batch ? batch : file ? file : "/dev/stdin", &text, &len) != FG_OK) {
        goto fail;
    }
    if (batch) {
        const size_t sl = strlen(BATCH_SEP);
        size_t pos = 0;
        while (pos < len) {
            const char *m = memmem(text + pos, len - pos, BATCH_SEP, sl);
            size_t end = m ? (size_t)(m - text) : len;
            if (run_one(t, text + pos, end - pos, !no_bos, special, pieces, words) != FG_OK)
                goto fail;
            if (!m)
                break;
            pos = end + sl;
        }
    } else if (run_one(t, text, len, !no_bos, special, pieces, words) != FG_OK) {
        goto fail;
    }
    rc = 0;
    goto done;
fail:
    rc = fg_cli_fail("tokenize");
done:
    free(text);
    fg_tokenizer_destroy(t);
    fg_gguf_close(g);
    if (fflush(stdout) != 0 && rc == 0) {
        fprintf(stderr, "forge tokenize: error writing the output\n");
        rc = 1;
    }
    return rc;
}
