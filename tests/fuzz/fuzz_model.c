// fuzz_model.c - libFuzzer target for model loading: writes the input bytes (mutations of
// small synth models: llama, qwen2, qwen3 in q8_0 / f16 / q4_0) to a file in /dev/shm (else
// /tmp), loads it with fg_model_load on the CPU backend (small scratch: 8 tokens, 2
// sequences) and, when it loads, tokenizes a short text and runs one forward step of up to 3
// tokens over 2 KV pages. Any status is fine; a crash, sanitizer report, hang or runaway
// allocation is a bug. Built by `make fuzz`; seeds in tests/fuzz/corpus/model/.
// forge-fuzz-modules: model registry backend tokenizer gguf quant base
#include "forge.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static fg_backend *g_be;
static char g_path[96];

static void step(fg_model *m) {
    const fg_model_info *in = fg_model_get_info(m);
    int32_t V = in->n_vocab;
    if (V < 1 || in->n_embd < 1 || in->n_layer < 1 || in->n_head < 1 || in->n_head_kv < 1 ||
        in->n_head % in->n_head_kv != 0)
        abort(); // the loader must have refused these
    int32_t *ids = NULL;
    size_t n_ids = 0;
    if (fg_tokenize(fg_model_tokenizer(m), "Once upon a time", 16, true, false, &ids, &n_ids) != FG_OK)
        n_ids = 0;
    int32_t toks[3] = {0, V / 2, V - 1};
    for (size_t i = 0; i < n_ids && i < 3; i++)
        toks[i] = ids[i];
    free(ids);
    for (int i = 0; i < 3; i++)
        if (toks[i] < 0 || toks[i] >= V)
            abort(); // the tokenizer produced an id outside the vocabulary
    fg_kv_store *kv = NULL;
    if (fg_kv_store_create(m, 2, 4, FG_TYPE_F16, &kv) != FG_OK)
        return;
    int32_t pos[3] = {0, 1, 2}, seq[3] = {0}, n_kv = 3, pages[2] = {1, 0};
    const int32_t *pt = pages;
    fg_batch b = {.n_tokens = 3, .tokens = toks, .pos = pos, .seq = seq, .n_seqs = 1, .n_kv = &n_kv,
                  .page_tables = &pt};
    float *lg = malloc(sizeof(float) * (size_t)V);
    if (lg)
        (void)fg_model_forward(m, kv, &b, lg);
    free(lg);
    fg_kv_store_destroy(kv);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!g_be) {
        fg_backend_opts bo = {.n_threads = 1};
        if (fg_backend_create("cpu", &bo, &g_be) != FG_OK)
            abort();
        // /dev/shm keeps the per-input file in memory; /tmp where there is none
        const char *dir = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
        snprintf(g_path, sizeof g_path, "%s/forge-fuzz-model-%d.gguf", dir, (int)getpid());
    }
    FILE *f = fopen(g_path, "wb");
    if (!f)
        abort(); // nothing would be tested
    size_t w = size ? fwrite(data, 1, size, f) : 0;
    if (fclose(f) != 0 || w != size)
        return 0;
    fg_model *m = NULL;
    fg_model_opts mo = {.max_batch_tokens = 8, .max_seqs = 2};
    if (fg_model_load(g_path, g_be, &mo, &m) == FG_OK) {
        step(m);
        fg_model_destroy(m);
    }
    unlink(g_path);
    return 0;
}
