// sample_ref.h - the reference sampling arithmetic (forge/sample.h): one logits row and its
// fg_sample_row in, the token, its log-probability and the top-N out. The CPU backend's sample
// op and the host sampler (src/engine/sampler.c) both call it, so the engine's CPU results
// are those of the sampler as it always was; the CUDA kernel is tested against it.
// Not here: per-request history and RNG (the host sampler owns them), validation (backend.c).
#ifndef FG_BACKEND_SAMPLE_REF_H
#define FG_BACKEND_SAMPLE_REF_H

#include "forge/sample.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct fg_sample_cand {
    int32_t id;
    float logit;
} fg_sample_cand;

// Samples (DRAW) or scores (SCORE) one row of raw logits [n_vocab]; ent: the row's entries
// (p->n_entries of them, tokens ascending, in range). scratch: n_vocab candidates. Writes
// every field of *out. Allocates nothing.
void fg_sample_ref(const fg_sample_row *p, const fg_sample_entry *ent, const float *logits,
                   int32_t n_vocab, fg_sample_cand *scratch, fg_sample_result *out);

// Log-softmax of a raw logits row at `token` (-inf when out of range or NaN) and, when top is
// not NULL, the min(n_top, FG_MAX_TOP_LOGPROBS, n_vocab) best tokens (ties to the lower id,
// NaN as -inf) in top[0..*n_top_out). fg_logprobs (forge/engine.h) is this.
float fg_logprobs_ref(const float *logits, int32_t n_vocab, int32_t token, int32_t n_top,
                      fg_top_logprob *top, int32_t *n_top_out);

#ifdef __cplusplus
}
#endif

#endif // FG_BACKEND_SAMPLE_REF_H
