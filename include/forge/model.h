// forge/model.h - backends, model loading and the batched forward pass.
// A model is loaded onto one backend ("cpu" today, "cuda" next); its KV cache storage is a
// pool of fixed-size pages in backend memory (fg_kv_store). Which page belongs to which
// sequence is decided by the caller (the engine's page allocator, forge/engine.h); a forward
// step receives each sequence's page table. Thread safety: a model and its KV store are used
// by one thread at a time (the engine's scheduler thread).
#ifndef FORGE_MODEL_H
#define FORGE_MODEL_H

#include "forge/status.h"
#include "forge/backend.h"
#include "forge/gguf.h"
#include "forge/sample.h"
#include "forge/types.h"
#include "forge/tokenizer.h"

#ifdef __cplusplus
extern "C" {
#endif

// ---- models
typedef struct fg_model fg_model;
typedef struct fg_comm fg_comm; // a tensor-parallel communicator (internal: src/backend/comm.h)

typedef struct fg_model_opts {
    int32_t max_batch_tokens; // most tokens in one forward step (scratch sized at load); 0: 512
    int32_t max_seqs;         // most sequences in one step; 0: 64
    int32_t max_logit_rows;   // most rows of logits one step returns; 0: max_batch_tokens
    int32_t max_sample_entries; // most sample entries one step carries (fg_batch); 0: a default
                                // (fg_model_reserve_sampling grows it)
    const char *tokenizer_pre; // pre-tokenizer override (NULL: the file's)
    bool progress;            // progress bar while loading (on a terminal only)
    // ---- tensor parallelism (docs/ARCHITECTURE.md, "Tensor parallelism"): the attention heads
    // and FFN rows of every layer split across tp_size ranks, one all-reduce after the
    // attention output and one after the FFN down projection.
    int32_t tp_size;          // ranks (0 or 1: none; at most 8). n_head, n_head_kv and n_ff must divide
    int32_t tp_rank;          // this model's rank, with tp_comm
    fg_comm *tp_comm;         // borrowed: the rank's communicator, for callers that run the ranks
                              // themselves (one process per GPU). NULL with tp_size > 1:
                              // fg_model_load runs ranks 1..tp_size-1 as worker threads of this
                              // process on backends of their own and returns rank 0, which drives
                              // them: submit, wait and the KV store calls reach every rank
    const fg_backend_opts *tp_backend; // the workers' backends: the loading backend's kind with these
                              // options (NULL: defaults), rank r on device tp_backend->device + r
    double tp_timeout_s;      // a rank that does not answer within this many seconds fails the step
                              // and stops the group (0: 120)
    bool tp_skip_all_reduce;  // benchmarks only: the all-reduces are left out (every result is
                              // wrong); a step's time with and without them is their share
    uint32_t bench_skip_ops;  // benchmarks only: FG_SKIP_* ops left out of every decoder layer
                              // (every result is wrong; their inputs' buffers are read stale):
                              // a step's time with and without them is their share
} fg_model_opts;

// fg_model_opts.bench_skip_ops
enum {
    FG_SKIP_NORM = 1u << 0,   // the decoder's rmsnorms between the residual and the projections
    FG_SKIP_SWIGLU = 1u << 1, // the FFN's gate activation
    FG_SKIP_ATTN = 1u << 2,   // rope, the KV store and attention
};

typedef struct fg_model_info {
    const char *arch;     // "llama", "qwen2", "qwen3", "glm4", "bert", "nomic-bert"
    const char *name;     // general.name or the file stem
    int32_t n_vocab;
    int32_t n_ctx_train;
    int32_t n_embd;
    int32_t n_layer;
    int32_t n_head;
    int32_t n_head_kv;
    int32_t head_dim;
    int32_t n_ff;
    uint64_t n_params;
    uint64_t n_layer_params;     // weights of the layers' projections (q, k, v, o, gate, up, down)
    uint64_t weight_bytes;       // bytes of all weights
    uint64_t scratch_bytes;      // backend bytes of the activation scratch
    uint64_t bytes_per_token;    // weight bytes read per decoded token (all matmul weights + one embedding row)
    int32_t max_batch_tokens;    // limits of one forward step (fg_model_opts, after defaults)
    int32_t max_seqs;
    int32_t max_logit_rows;
    int32_t tp_size;             // tensor-parallel ranks (1: none) and this model's rank; with
    int32_t tp_rank;             // tp_size > 1 the byte counts above are this rank's
    int32_t max_sample_entries;
    bool async_steps;            // the backend runs a step after fg_model_submit returns (a GPU):
                                 // the caller may prepare the next one until fg_model_wait
    // embedding models (issue 14)
    int32_t pooling;             // <arch>.pooling_type: 0 none (no embeddings), 1 mean, 2 cls, 3 last
    bool causal;                 // <arch>.attention.causal (encoders: false)
    bool normalize;              // the pooled vector is L2-normalised (sentence_transformers.normalize)
    int32_t max_seq;             // input limit in tokens: sentence_transformers.max_seq_length, else
                                 // n_ctx_train
    int32_t max_embed_tokens;    // the longest input fg_model_embed takes: min(max_seq, max_batch_tokens)
} fg_model_info;

// "none", "mean", "cls", "last" for fg_model_info.pooling (issue 14); "unknown" otherwise.
const char *fg_pooling_name(int32_t pooling);

// Loads a GGUF model onto the backend. Errors name what is wrong (tensor missing or of the
// wrong shape, head counts that don't divide, vocabulary size mismatch, unsupported
// architecture with the supported list, weight type the backend lacks; with tp_size > 1, head
// counts or n_ff not divisible by it, or a rank's slice of a quantized row not whole blocks).
fg_status fg_model_load(const char *path, fg_backend *be, const fg_model_opts *opts, fg_model **out);
void fg_model_destroy(fg_model *m);
const fg_model_info *fg_model_get_info(const fg_model *m);
const fg_tokenizer *fg_model_tokenizer(const fg_model *m);
const fg_gguf *fg_model_gguf(const fg_model *m); // the file's metadata (chat template, ...)

// ---- KV cache storage
typedef struct fg_kv_store fg_kv_store;
// n_pages pages of page_size tokens for every layer, in backend memory, element type
// kv_type: FG_TYPE_F16 (as the reference), FG_TYPE_F32, or FG_TYPE_Q8_0 (each token's K and V
// row of each kv head as blocks of 32: head_dim must be a multiple of 32, else
// FG_ERR_UNSUPPORTED naming the model's head_dim).
fg_status fg_kv_store_create(fg_model *m, int32_t n_pages, int32_t page_size, uint32_t kv_type,
                             fg_kv_store **out);
void fg_kv_store_destroy(fg_kv_store *kv);
int32_t fg_kv_store_n_pages(const fg_kv_store *kv);
int32_t fg_kv_store_page_size(const fg_kv_store *kv);
uint64_t fg_kv_store_bytes(const fg_kv_store *kv); // backend bytes of the pool (rank 0's with tensor parallelism)
uint32_t fg_kv_store_type(const fg_kv_store *kv);  // its element type (FG_TYPE_F16, FG_TYPE_F32, FG_TYPE_Q8_0)
// Copy-on-write support: page dst <- page src (all layers).
fg_status fg_kv_store_copy_page(fg_kv_store *kv, int32_t dst, int32_t src);

// ---- forward
// One step over several sequences. Tokens of a sequence are contiguous and in position
// order; sequence s's new tokens take positions n_kv[s] - (its token count) .. n_kv[s] - 1,
// and page_tables[s] must cover n_kv[s] tokens (pages assigned by the caller).
typedef struct fg_batch {
    int32_t n_tokens;
    const int32_t *tokens;           // [n_tokens]
    const int32_t *pos;              // [n_tokens]
    const int32_t *seq;              // [n_tokens] 0..n_seqs-1
    const bool *want_logits;         // [n_tokens]; NULL: the last token of each sequence
    int32_t n_seqs;
    const int32_t *n_kv;             // [n_seqs] KV length after the step
    const int32_t *const *page_tables; // [n_seqs] -> page ids
    // Sampling on the backend (forge/sample.h): NULL, and the step hands back the logits of
    // the rows that want them; else one row per such row (in token order, as many as there
    // are), and the step hands back one fg_sample_result each instead (fg_model_wait_samples).
    const fg_sample_row *sample;
    const fg_sample_entry *sample_entries; // [n_sample_entries], indexed by the rows
    int32_t n_sample_entries;              // <= max_sample_entries
} fg_batch;

// Submits the step: validates the batch and enqueues the whole forward pass on the backend
// (a GPU runs it asynchronously; the CPU computes it here). The batch's arrays may be reused
// as soon as it returns. One step at a time: fg_model_wait before the next submit.
// FG_ERR_INVALID_ARG for an inconsistent batch (naming the field), FG_ERR_CAPACITY when it
// exceeds max_batch_tokens/max_seqs/max_logit_rows or a page table is too short.
fg_status fg_model_submit(fg_model *m, fg_kv_store *kv, const fg_batch *b);
// Waits for the submitted step. *logits gets its logits [n_out][n_vocab] (the tokens that
// want them, in token order) in memory the model owns, valid until the next submit; *n_out
// their count (either may be NULL). FG_ERR_FORMAT naming the logit when one is not finite
// (broken weights), FG_ERR_DEVICE on a device fault (sticky). A step that sampled
// (fg_batch.sample) gives *logits NULL.
fg_status fg_model_wait(fg_model *m, const float **logits, int32_t *n_out);
// The same for a step that sampled: *res gets its n_out results (token order), NULL for a
// step that handed back logits. Only these results and the requested log-probabilities cross
// from the device, never the logits rows.
fg_status fg_model_wait_samples(fg_model *m, const fg_sample_result **res, int32_t *n_out);
// Grows the per-step sample-entry capacity (outside steps; sizes device and pinned memory).
fg_status fg_model_reserve_sampling(fg_model *m, int32_t max_sample_entries);
// Submit + wait, copying the logits into logits[n_out * n_vocab] (NULL when none are wanted).
fg_status fg_model_forward(fg_model *m, fg_kv_store *kv, const fg_batch *b, float *logits);

// ---- embeddings (issue 14): models with a pooling type (fg_model_info.pooling != 0), BERT-family
// encoders (bert, nomic-bert) or decoders whose file names one. Each sequence is whole in its
// step: an encoder's token attends to every token of its own sequence and to none of the
// others'. Such a model has no logits: fg_model_submit refuses it.
typedef struct fg_embed_batch {
    int32_t n_seqs;                // 1..max_seqs
    const int32_t *const *tokens;  // [n_seqs] -> the sequence's token ids (with [CLS] / [SEP] as the
                                   // tokenizer's add_special puts them), each in [0, n_vocab)
    const int32_t *n_tokens;       // [n_seqs], each 1..max_embed_tokens; the sum <= max_batch_tokens
} fg_embed_batch;

// Validates the batch (FG_ERR_INVALID_ARG naming the sequence and field; FG_ERR_CAPACITY past the
// model's limits) and enqueues one step (a GPU runs it asynchronously). The batch's arrays may be
// reused as soon as it returns. One step at a time: fg_model_embed_wait before the next submit.
fg_status fg_model_embed_submit(fg_model *m, const fg_embed_batch *b);
// Waits: *out = the [n_seqs][n_embd] pooled vectors (normalised when fg_model_info.normalize) in
// memory the model owns, valid until the next submit. FG_ERR_FORMAT naming the value when one is
// not finite, FG_ERR_DEVICE on a device fault (sticky).
fg_status fg_model_embed_wait(fg_model *m, const float **out, int32_t *n_seqs);
// Submit + wait, copying into out[n_seqs * n_embd].
fg_status fg_model_embed(fg_model *m, const fg_embed_batch *b, float *out);
// Cuts a tokenized input ids[0..n) to at most limit (>= 2) tokens as Hugging Face truncates an
// encoded text: the special token the tokenizer appended at the end ([SEP], EOS) stays last.
// Returns the new count (n when it fits).
int32_t fg_embed_truncate(const fg_tokenizer *t, int32_t *ids, int32_t n, int32_t limit);

#ifdef __cplusplus
}
#endif

#endif // FORGE_MODEL_H
