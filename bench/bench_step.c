// bench_step.c - host time of one forward step: decode steps of one sequence on a small model
// (stories260K: the arithmetic is negligible, so the time is the step's fixed host cost:
// validation, op dispatch, thread-pool hand-offs, the logits hand-back). Prints the median and
// the best of many steps. Not a test. Usage: build/bench/bench_step MODEL [threads] [steps]
#include "forge.h"

#include "base/util.h"

#include <stdio.h>
#include <stdlib.h>

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: bench_step MODEL [threads] [steps]\n");
        return 2;
    }
    int threads = argc > 2 ? atoi(argv[2]) : 1;
    int steps = argc > 3 ? atoi(argv[3]) : 400;
    fg_backend_opts bo = {threads, 0, false};
    fg_backend *be = NULL;
    fg_model *m = NULL;
    fg_kv_store *kv = NULL;
    if (fg_backend_create("cpu", &bo, &be) != FG_OK || fg_model_load(argv[1], be, NULL, &m) != FG_OK) {
        fprintf(stderr, "bench_step: %s\n", fg_last_error());
        return 1;
    }
    const fg_model_info *in = fg_model_get_info(m);
    int page = 16, n_pages = 4;
    if (fg_kv_store_create(m, n_pages, page, FG_TYPE_F16, &kv) != FG_OK) {
        fprintf(stderr, "bench_step: %s\n", fg_last_error());
        return 1;
    }
    int32_t *pt = malloc((size_t)n_pages * sizeof *pt);
    for (int i = 0; i < n_pages; i++)
        pt[i] = i;
    const int32_t *pts[1] = {pt};
    float *logits = malloc((size_t)in->n_vocab * sizeof(float));
    double *t = malloc((size_t)steps * sizeof *t);
    int32_t tok = 1, seq = 0;
    for (int i = 0; i < steps; i++) {
        int32_t pos = i % 32, n_kv = pos + 1; // short KV: the step's fixed cost dominates
        fg_batch b = {1, &tok, &pos, &seq, NULL, 1, &n_kv, pts, NULL, NULL, 0};
        double t0 = fg_time_s();
        if (fg_model_forward(m, kv, &b, logits) != FG_OK) {
            fprintf(stderr, "bench_step: %s\n", fg_last_error());
            return 1;
        }
        t[i] = fg_time_s() - t0;
        tok = (int32_t)((tok * 7 + 3) % in->n_vocab);
    }
    qsort(t, (size_t)steps, sizeof *t, cmp_d);
    printf("bench_step %s: %d threads, %d decode steps: median %.1f us, best %.1f us\n", argv[1], threads,
           steps, t[steps / 2] * 1e6, t[0] * 1e6);
    free(t);
    free(logits);
    free(pt);
    fg_kv_store_destroy(kv);
    fg_model_destroy(m);
    fg_backend_destroy(be);
    return 0;
}
