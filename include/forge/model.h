// forge/model.h - backends, model loading and the batched forward pass.
// A model is loaded onto one backend ("cpu" today, "cuda" next); its KV cache storage is a
// pool of fixed-size pages in backend memory (fg_kv_store). Which page belongs to which
// sequence is decided by the caller (the engine's page allocator, forge/engine.h); a forward
// step receives each sequence's page table. Thread safety: a model and its KV store are used
// by one thread at a time (the engine's scheduler thread).
#ifndef FORGE_MODEL_H
#define FORGE_MODEL_H

#include "forge/status.h"
#include "forge/gguf.h"
#include "forge/tokenizer.h"

#ifdef __cplusplus
extern "C" {
#endif

// ---- backends
typedef struct fg_backend fg_backend;

typedef struct fg_backend_opts {
    int32_t n_threads; // CPU: worker threads (0: all cores)
    int32_t device;    // GPU index
} fg_backend_opts;

// name: "cpu" or "cuda". FG_ERR_UNSUPPORTED for an unknown name or a backend not built in;
// FG_ERR_DEVICE when the device can't be used (no driver, no GPU).
fg_status fg_backend_create(const char *name, const fg_backend_opts *opts, fg_backend **out);
void fg_backend_destroy(fg_backend *be);
const char *fg_backend_name(const fg_backend *be);

// ---- models
typedef struct fg_model fg_model;

typedef struct fg_model_opts {
    int32_t max_batch_tokens; // most tokens in one forward step (scratch sized at load); 0: 512
    int32_t max_seqs;         // most sequences in one step; 0: 64
    const char *tokenizer_pre; // pre-tokenizer override (NULL: the file's)
    bool progress;            // progress bar while loading (on a terminal only)
} fg_model_opts;

typedef struct fg_model_info {
    const char *arch;     // "llama", "qwen2", "qwen3", "glm4"
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
    uint64_t weight_bytes;       // bytes of all weights
    uint64_t bytes_per_token;    // weight bytes read per decoded token (all matmul weights + one embedding row)
    int32_t max_batch_tokens;    // limits of one forward step (fg_model_opts, after defaults)
    int32_t max_seqs;
} fg_model_info;

// Loads a GGUF model onto the backend. Errors name what is wrong (tensor missing or of the
// wrong shape, head counts that don't divide, vocabulary size mismatch, unsupported
// architecture with the supported list, weight type the backend lacks).
fg_status fg_model_load(const char *path, fg_backend *be, const fg_model_opts *opts, fg_model **out);
void fg_model_destroy(fg_model *m);
const fg_model_info *fg_model_get_info(const fg_model *m);
const fg_tokenizer *fg_model_tokenizer(const fg_model *m);
const fg_gguf *fg_model_gguf(const fg_model *m); // the file's metadata (chat template, ...)

// ---- KV cache storage
typedef struct fg_kv_store fg_kv_store;
// n_pages pages of page_size tokens for every layer, in backend memory, element type
// kv_type (FG_TYPE_F16 as the reference, or FG_TYPE_F32).
fg_status fg_kv_store_create(fg_model *m, int32_t n_pages, int32_t page_size, uint32_t kv_type,
                             fg_kv_store **out);
void fg_kv_store_destroy(fg_kv_store *kv);
int32_t fg_kv_store_n_pages(const fg_kv_store *kv);
int32_t fg_kv_store_page_size(const fg_kv_store *kv);
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
} fg_batch;

// Runs the step and writes logits [n_out][n_vocab] for the tokens that want them, in token
// order (n_out = number of such tokens; logits must hold n_out * n_vocab floats).
// FG_ERR_INVALID_ARG for an inconsistent batch (naming the field), FG_ERR_CAPACITY when it
// exceeds max_batch_tokens/max_seqs or a page table is too short.
fg_status fg_model_forward(fg_model *m, fg_kv_store *kv, const fg_batch *b, float *logits);

#ifdef __cplusplus
}
#endif

#endif // FORGE_MODEL_H
