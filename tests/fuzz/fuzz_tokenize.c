// fuzz_tokenize.c - libFuzzer target for the tokenizers: arbitrary bytes (any UTF-8 validity)
// through SentencePiece, byte-level BPE (two pre-tokenizer regex sets) and WordPiece, with and
// without special-token parsing, then whole and streaming detokenization. Checks: no crash, no
// out-of-range id, the stream never reports a too-small buffer with the documented capacity.
// Vocabularies come from $FORGE_SHARED/vocab (default ../shared); missing data aborts loudly.
// forge-fuzz-modules: tokenizer gguf quant base
#include "forge.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *k_vocabs[] = {"llama-spm", "gpt-2", "deepseek-llm", "bert-bge"};
#define N_VOCABS (sizeof k_vocabs / sizeof k_vocabs[0])
static fg_tokenizer *g_tok[N_VOCABS];

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    const char *shared = getenv("FORGE_SHARED");
    if (!shared)
        shared = "../shared";
    for (size_t i = 0; i < N_VOCABS; i++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/vocab/ggml-vocab-%s.gguf", shared, k_vocabs[i]);
        fg_gguf *g = NULL;
        if (fg_gguf_open(path, &g) != FG_OK || fg_tokenizer_create(g, NULL, &g_tok[i]) != FG_OK) {
            fprintf(stderr, "fuzz_tokenize: cannot load %s: %s (set FORGE_SHARED)\n", path,
                    fg_last_error());
            abort();
        }
        fg_gguf_close(g);
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1 || size > 4096)
        return 0;
    const fg_tokenizer *t = g_tok[data[0] % N_VOCABS];
    bool special = (data[0] >> 4) & 1;
    bool add = (data[0] >> 5) & 1;
    char *text = malloc(size); // exact bounds for ASan
    memcpy(text, data + 1, size - 1);
    int32_t *ids = NULL;
    size_t n = 0;
    if (fg_tokenize(t, text, size - 1, add, special, &ids, &n) == FG_OK) {
        int32_t nv = fg_tokenizer_n_vocab(t);
        for (size_t i = 0; i < n; i++)
            if (ids[i] < 0 || ids[i] >= nv)
                abort();
        char *out = NULL;
        size_t len = 0;
        if (fg_detokenize(t, ids, n, special, &out, &len) != FG_OK)
            abort();
        free(out);
        fg_detok_stream st;
        fg_detok_stream_init(&st);
        char buf[64 + 4 * 1024];
        for (size_t i = 0; i < n; i++) {
            int32_t piece = fg_token_to_piece(t, ids[i], special, NULL, 0);
            if (piece < 0 || piece > 1024)
                continue;
            if (fg_detok_stream_push(t, &st, ids[i], special, buf, sizeof buf) < 0)
                abort();
        }
        if (fg_detok_stream_flush(&st, buf, sizeof buf) < 0)
            abort();
        free(ids);
    }
    free(text);
    return 0;
}
