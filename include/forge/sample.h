// forge/sample.h - sampling on the backend: what a forward step is told per output row (the
// sampling parameters, the row's logit-bias and penalty entries, the uniform draw) and what
// it hands back per row instead of the logits (the token, its log-probability, the top-N).
// Plain data shared by the model API (fg_batch), the backend op (src/backend) and the host
// sampler (forge/engine.h), which fills rows from a request's history and applies results.
// Not here: the sampling arithmetic (src/backend/sample_ref.c, the CUDA kernel).
#ifndef FORGE_SAMPLE_H
#define FORGE_SAMPLE_H

#include "forge/status.h"

#ifdef __cplusplus
extern "C" {
#endif

#define FG_MAX_TOP_LOGPROBS 20

typedef struct fg_top_logprob {
    int32_t token;
    float logprob;
} fg_top_logprob;

typedef enum fg_sample_mode {
    FG_SAMPLE_NONE = 0,  // nothing wanted from this row (result token -1)
    FG_SAMPLE_DRAW = 1,  // sample a token (greedy when temperature <= 0)
    FG_SAMPLE_SCORE = 2, // the log-probability of a given token (prompt scoring, echo)
} fg_sample_mode;

// One output row's request. The chain is llama.cpp's (and fg_sampler_sample's): logit bias ->
// penalties -> top-k -> top-p -> min-p -> temperature -> draw. 64 bytes, no pointers: it is
// copied to the device with the step's metadata.
typedef struct fg_sample_row {
    int32_t mode;            // fg_sample_mode
    int32_t token;           // SCORE: the token whose log-probability is wanted
    int32_t n_top;           // -1: no log-probabilities; 0..FG_MAX_TOP_LOGPROBS: the token's and
                             // the n_top best (of the raw logits, before bias and penalties)
    int32_t top_k;           // <= 0 or >= n_vocab: off
    float temperature;       // <= 0: greedy (argmax, ties to the lowest id)
    float top_p;             // >= 1: off
    float min_p;             // <= 0: off
    float log_min_p;         // logf(min_p), computed on the host (a device logf may round apart)
    float repeat_penalty;    // llama.cpp's, for entries with count > 0
    float frequency_penalty; // OpenAI's: - count * frequency_penalty
    float presence_penalty;  //           - presence_penalty
    int32_t first_entry;     // the row's entries: fg_batch.sample_entries[first_entry ..
    int32_t n_entries;       //   + n_entries), tokens strictly ascending
    int32_t reserved;        // 0
    double inv_temp;         // 1.0 / (double)temperature (DRAW with temperature > 0)
    double uniform;          // the draw in [0, 1): the request's next xoshiro256** output,
                             // consumed only when the result says so (FG_SAMPLE_USED_UNIFORM)
} fg_sample_row;

#define FG_SAMPLE_ENTRY_BIAS 1 // fg_sample_entry.flags: bias is added to the logit

// A token the row treats specially: its logit bias (OpenAI's logit_bias, summed per token) and
// its count in the penalty window (0: not penalised). 16 bytes.
typedef struct fg_sample_entry {
    int32_t token;
    int32_t flags; // FG_SAMPLE_ENTRY_BIAS
    float bias;
    int32_t count;
} fg_sample_entry;

#define FG_SAMPLE_USED_UNIFORM 1 // fg_sample_result.flags: the draw was consumed

// What comes back for one row (176 bytes).
typedef struct fg_sample_result {
    int32_t token;   // DRAW: the sampled id; SCORE: the given one; NONE: -1
    int32_t flags;   // FG_SAMPLE_USED_UNIFORM
    float logprob;   // log-softmax of the raw logits at token (n_top >= 0; -inf when the token
                     // is outside the vocabulary or its logit is NaN)
    int32_t n_top;   // entries of top (min(n_top, n_vocab); 0 when n_top < 0)
    fg_top_logprob top[FG_MAX_TOP_LOGPROBS]; // best first, ties to the lower id, NaN as -inf
} fg_sample_result;

#define FG_SAMPLE_RESULT_WORDS ((int32_t)(sizeof(fg_sample_result) / sizeof(int32_t)))

#ifdef __cplusplus
}
#endif

#endif // FORGE_SAMPLE_H
