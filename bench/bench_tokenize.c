// bench_tokenize.c - tokenizer throughput: a text file repeated to N bytes, tokenized R
// times on one thread; prints MB/s and tokens/s as one JSON line per vocabulary.
// Build (after `make`; one line):
//   cc -O2 -Iinclude -Isrc bench/bench_tokenize.c build/lib/libfg_tokenizer.a build/lib/libfg_gguf.a
//      build/lib/libfg_quant.a build/lib/libfg_base.a -lpcre2-8 -lm -o build/bench_tokenize
// Run:   build/bench_tokenize TEXT.txt BYTES REPS VOCAB.gguf...
// Not a test: no timing assertion anywhere.
#include "forge.h"

#include "base/util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: bench_tokenize TEXT BYTES REPS VOCAB.gguf...\n");
        return 2;
    }
    FILE *f = fopen(argv[1], "rb");
    if (!f) {
        fprintf(stderr, "bench_tokenize: cannot open %s\n", argv[1]);
        return 1;
    }
    static char src[1 << 20];
    size_t sn = fread(src, 1, sizeof src, f);
    fclose(f);
    size_t n = (size_t)strtoull(argv[2], NULL, 10);
    int reps = atoi(argv[3]);
    if (sn == 0 || n == 0 || reps <= 0) {
        fprintf(stderr, "bench_tokenize: empty text or bad BYTES/REPS\n");
        return 2;
    }
    char *text = malloc(n);
    if (!text)
        return 1;
    for (size_t i = 0; i < n; i++)
        text[i] = src[i % sn];
    for (int a = 4; a < argc; a++) {
        fg_gguf *g = NULL;
        fg_tokenizer *t = NULL;
        double t0 = fg_time_s();
        if (fg_gguf_open(argv[a], &g) != FG_OK || fg_tokenizer_create(g, NULL, &t) != FG_OK) {
            fprintf(stderr, "bench_tokenize: %s\n", fg_last_error());
            fg_gguf_close(g);
            return 1;
        }
        double t_load = fg_time_s() - t0;
        fg_gguf_close(g);
        double best = 1e30;
        size_t n_tok = 0;
        for (int r = 0; r < reps; r++) {
            int32_t *ids = NULL;
            double t1 = fg_time_s();
            if (fg_tokenize(t, text, n, false, false, &ids, &n_tok) != FG_OK) {
                fprintf(stderr, "bench_tokenize: %s\n", fg_last_error());
                return 1;
            }
            double dt = fg_time_s() - t1;
            if (dt < best)
                best = dt;
            free(ids);
        }
        printf("{\"vocab\": \"%s\", \"model\": \"%s\", \"pre\": \"%s\", \"bytes\": %zu, \"tokens\": %zu, "
               "\"load_s\": %.3f, \"best_s\": %.4f, \"MB_per_s\": %.2f, \"tokens_per_s\": %.0f}\n",
               argv[a], fg_tokenizer_model_name(t), fg_tokenizer_pre_name(t), n, n_tok, t_load, best,
               (double)n / 1e6 / best, (double)n_tok / best);
        fg_tokenizer_destroy(t);
    }
    free(text);
    return 0;
}
