// cpu_sample.c - the CPU backend's sample op: each output row through the reference sampling
// arithmetic (src/backend/sample_ref.c), rows spread over the thread pool (each worker with its
// own candidate scratch, reserved with the step sizes). The rows are independent, so the
// results do not depend on the thread count. Who calls it: the ops table (cpu_backend.c).
#include "backend/cpu/cpu_internal.h"

#include "backend/sample_ref.h"
#include "base/status.h"

typedef struct sample_args {
    fg_cpu *c;
    fg_tensor *out;
    const fg_tensor *logits;
    int64_t row0;
} sample_args;

static void sample_work(void *p, int ith, int nth) {
    sample_args *a = p;
    const fg_step *st = a->c->st;
    const int32_t n_vocab = (int32_t)a->logits->ne[0];
    fg_sample_cand *scratch = (fg_sample_cand *)a->c->samp + (size_t)ith * a->c->samp_stride;
    int64_t b, e;
    fg_cpu_split(a->logits->ne[1], ith, nth, &b, &e);
    for (int64_t r = b; r < e; r++) {
        const fg_sample_row *row = &st->sample[a->row0 + r];
        const float *x = (const float *)((const char *)a->logits->data + (size_t)r * a->logits->nb[1]);
        fg_sample_result *res = (fg_sample_result *)((char *)a->out->data + (size_t)r * a->out->nb[1]);
        fg_sample_ref(row, st->sample_entries + row->first_entry, x, n_vocab, scratch, res);
    }
}

fg_status fg_cpu_sample(fg_backend *be, fg_tensor *out, const fg_tensor *logits, int64_t row0) {
    fg_cpu *c = fg_cpu_ctx(be);
    FG_ASSERT(c->st && c->st->sample);
    size_t stride = (size_t)logits->ne[0];
    if (stride > c->samp_stride) { // a caller that did not reserve n_vocab columns (tests)
        size_t size = c->samp_stride * sizeof(fg_sample_cand) * (size_t)c->n_threads;
        FG_TRY(fg_cpu_scratch_reserve(&c->samp, &size, stride * sizeof(fg_sample_cand) * (size_t)c->n_threads,
                                      "sample candidates"));
        c->samp_stride = stride;
    }
    sample_args a = {c, out, logits, row0};
    fg_tp_run(c->tp, sample_work, &a, logits->ne[1] == 1 ? 1 : 0);
    return FG_OK;
}
