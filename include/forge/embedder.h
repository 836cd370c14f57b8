// forge/embedder.h - many clients' embedding requests batched onto one model (issue 14): a
// bounded queue and one thread that packs the queued inputs, oldest request first, into forward
// steps of up to the model's max_batch_tokens tokens and max_seqs sequences (fg_model_embed:
// each input whole in its step, pooled and normalised on the device), and hands each request
// its vectors when its last input is done. Used by `forge serve` (POST /v1/embeddings) for a
// model with a pooling type; the generation engine (forge/engine.h) is for the others.
// Thread safety: submit / cancel / stats from any thread; callbacks run on the embedder's thread.
#ifndef FORGE_EMBEDDER_H
#define FORGE_EMBEDDER_H

#include "forge/status.h"
#include "forge/model.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct fg_embedder fg_embedder;

typedef struct fg_embedder_opts {
    int32_t queue_cap;  // inputs waiting, all requests together, before FG_ERR_CAPACITY; 0: 65536
} fg_embedder_opts;

typedef struct fg_embed_result {
    uint64_t id;
    fg_status status;      // FG_OK; FG_ERR_CANCELLED (fg_embedder_cancel, shutdown); or the failure
    const char *error;     // the failure's message (status != FG_OK)
    int32_t n_inputs;
    int32_t n_embd;
    const float *vectors;  // [n_inputs][n_embd], in the order submitted (FG_OK; valid during the call)
    int64_t n_tokens;      // tokens fed to the model, all inputs together
    double t_queue_s;      // from submit to the first step that took one of its inputs
    double t_total_s;      // from submit to this call
} fg_embed_result;

// Called on the embedder's thread exactly once per submitted request: must not block (copy what
// is needed and return) and must not call fg_embedder_destroy.
typedef void (*fg_embed_fn)(void *user, const fg_embed_result *r);

// Starts the thread. The model (with a pooling type) must outlive the embedder.
fg_status fg_embedder_create(fg_model *m, const fg_embedder_opts *opts, fg_embedder **out);
// Stops: the step in flight finishes, what is still queued gets FG_ERR_CANCELLED; joins, frees.
void fg_embedder_destroy(fg_embedder *e);
// Copies the inputs (tokens[i][0..n_tokens[i]) for i < n_inputs, each 1..max_embed_tokens ids in
// [0, n_vocab)) and queues them. FG_ERR_INVALID_ARG naming the input; FG_ERR_CAPACITY when the
// queue is full; FG_ERR_CANCELLED while stopping; FG_ERR_DEVICE after a device fault.
fg_status fg_embedder_submit(fg_embedder *e, const int32_t *const *tokens, const int32_t *n_tokens,
                             int32_t n_inputs, fg_embed_fn fn, void *user, uint64_t *id);
// A queued or running request ends with FG_ERR_CANCELLED at the embedder's next step; one that
// has ended: FG_OK, nothing happens. FG_ERR_INVALID_ARG for an id never issued.
fg_status fg_embedder_cancel(fg_embedder *e, uint64_t id);

typedef struct fg_embedder_stats {
    uint64_t requests, finished, failed, cancelled; // submitted; by outcome
    uint64_t inputs, tokens, steps;                 // embedded
    int32_t queued_requests, queued_inputs;         // waiting or in progress now
} fg_embedder_stats;
void fg_embedder_get_stats(fg_embedder *e, fg_embedder_stats *out);

#ifdef __cplusplus
}
#endif

#endif // FORGE_EMBEDDER_H
