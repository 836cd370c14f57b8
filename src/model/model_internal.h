// model_internal.h - the loaded model as the forward pass sees it: hyper-parameters, the
// architecture's traits, the bound weight tensors (views into one backend buffer), the
// scratch activations sized at load, and the KV store. Shared by model_load.c, forward.c and
// kv_store.c only; callers use include/forge/model.h.
// Not here: which KV page belongs to whom (src/engine), kernels (src/backend).
#ifndef FG_MODEL_MODEL_INTERNAL_H
#define FG_MODEL_MODEL_INTERNAL_H

#include "backend/backend.h"
#include "forge/model.h"

typedef enum fg_arch {
    FG_ARCH_LLAMA = 0,
    FG_ARCH_QWEN2,
    FG_ARCH_QWEN3,
    FG_ARCH_GLM4,
    FG_ARCH_BERT,       // encoders (issue 14)
    FG_ARCH_NOMIC_BERT,
    FG_ARCH_COUNT
} fg_arch;

// What distinguishes the supported architectures (one row per fg_arch, model_arch.c).
typedef struct fg_arch_traits {
    const char *name;      // general.architecture
    fg_rope_mode rope;     // llama, glm4: NORMAL; qwen2, qwen3: NEOX
    bool qkv_bias;         // q/k/v biases all or none (qwen2); any subset otherwise
    bool qk_norm;          // per-head RMSNorm of q and k before rope (qwen3)
    bool post_norms;       // post_attention_norm / post_ffw_norm before the residual adds (glm4)
    bool fused_gate_up;    // ffn_up is [2*n_ff][n_embd] = gate | up halves (glm4)
    // encoders (issue 14): token-type embeddings and a LayerNorm (with bias) of the embeddings,
    // then per layer x = LN(x + attn(x)), x = LN(x + ffn(x)) (post-norm), no output head
    bool encoder;
    bool abs_pos;          // learned absolute position embeddings (position_embd), no rope (bert)
    bool ffn_gelu;         // ffn: down(gelu(up x + b) + b) (bert); else down(silu(gate x) * up x)
} fg_arch_traits;

extern const fg_arch_traits fg_arch_table[FG_ARCH_COUNT];
// Index in fg_arch_table, or -1; fg_arch_list: "llama, qwen2, ..., nomic-bert".
int fg_arch_find(const char *name, size_t len);
const char *fg_arch_list(void);

typedef struct fg_hparams {
    int32_t n_vocab;
    int32_t n_ctx_train;
    int32_t n_embd;
    int32_t n_layer;
    int32_t n_head;
    int32_t n_head_kv;
    int32_t head_dim;  // attention.key_length, else n_embd / n_head
    int32_t n_rot;     // rope.dimension_count, else head_dim
    int32_t n_ff;
    float rms_eps;
    float rope_freq_base;
    float rope_freq_scale;
    // embedding models (issue 14)
    float norm_eps;    // encoders: attention.layer_norm_epsilon (LayerNorm)
    bool causal;       // attention.causal (default true; encoders say false)
    int32_t pooling;   // pooling_type: fg_pool_mode (FG_POOL_NONE: no embeddings)
    bool normalize;    // sentence_transformers.normalize: L2-normalise the pooled vector
    int32_t max_seq;   // sentence_transformers.max_seq_length, else n_ctx_train: the input limit
} fg_hparams;

// Weight views in the model's backend buffer; NULL when absent (optional tensors).
typedef struct fg_layer {
    const fg_tensor *attn_norm;   // F32 [n_embd]
    // q|k|v: one fused weight [(n_head + 2*n_head_kv)*head_dim][n_embd] (and bias) when the
    // three have the same type (concatenated at load); else three (wqkv NULL)
    const fg_tensor *wqkv;
    const fg_tensor *bqkv;        // F32 fused bias or NULL
    const fg_tensor *wq;          // [n_head*head_dim][n_embd] (NULL when fused)
    const fg_tensor *wk;          // [n_head_kv*head_dim][n_embd]
    const fg_tensor *wv;          // [n_head_kv*head_dim][n_embd]
    const fg_tensor *bq;          // F32 [n_head*head_dim] or NULL
    const fg_tensor *bk;          // F32 [n_head_kv*head_dim] or NULL
    const fg_tensor *bv;          // F32 [n_head_kv*head_dim] or NULL
    const fg_tensor *q_norm;      // F32 [head_dim] (qwen3) or NULL
    const fg_tensor *k_norm;      // F32 [head_dim] (qwen3) or NULL
    const fg_tensor *wo;          // [n_embd][n_head*head_dim]
    const fg_tensor *bo;          // F32 [n_embd] or NULL
    const fg_tensor *post_attn_norm; // F32 [n_embd] (glm4) or NULL
    const fg_tensor *ffn_norm;    // F32 [n_embd]
    const fg_tensor *w_gate;      // [n_ff][n_embd] (NULL when fused)
    const fg_tensor *w_up;        // [n_ff][n_embd] (NULL when fused)
    const fg_tensor *w_gate_up;   // [2*n_ff][n_embd] gate|up: glm4's file tensor, or gate and up
                                  // concatenated at load when their types match; else NULL
    const fg_tensor *w_down;      // [n_embd][n_ff]
    const fg_tensor *post_ffw_norm; // F32 [n_embd] (glm4) or NULL
    // encoders (issue 14); wqkv may be the file's attn_qkv ([3*n_embd][n_embd], bqkv its bias)
    const fg_tensor *attn_out_norm;   // F32 [n_embd] LayerNorm after the attention's residual add
    const fg_tensor *attn_out_norm_b; // F32 [n_embd]
    const fg_tensor *layer_out_norm;  // F32 [n_embd] LayerNorm after the FFN's residual add
    const fg_tensor *layer_out_norm_b;
    const fg_tensor *b_up;            // F32 [n_ff] (bert's GELU FFN) or NULL
    const fg_tensor *b_down;          // F32 [n_embd] or NULL
} fg_layer;

// Tensor parallelism (fg_model_opts.tp_*): this model's share of every layer. Rank r of N
// holds q heads [r*n_head/N, (r+1)*n_head/N) and the same share of the kv heads (q|k|v rows),
// the matching input columns of attn_output, n_ff/N rows of gate and up and the matching
// input columns of ffn_down; the rest is replicated. hp keeps the file's (global) values.
typedef struct fg_tp {
    int32_t size, rank;              // 1, 0: not sharded
    int32_t n_head, n_head_kv, n_ff; // this rank's share (hp's / size)
    fg_comm *comm;                   // borrowed (NULL when size == 1)
    struct fg_tp_group *group;       // rank 0 of an in-process group: its workers (owned)
    bool skip_all_reduce;            // fg_model_opts.tp_skip_all_reduce (benchmarks)
} fg_tp;

// Scratch activations, F32 unless noted, allocated at load for max_batch_tokens rows.
typedef struct fg_scratch {
    fg_buffer *buf;
    fg_tensor x;    // [T][n_embd] residual stream
    fg_tensor xn;   // [T][n_embd] normed input
    fg_tensor ao;   // [T][n_embd] projection output before a post-norm (glm4)
    fg_tensor qkv;  // [T][(n_head + 2*n_head_kv)*head_dim] fused projection output
    fg_tensor q;    // [T][n_head*head_dim] q (unfused or qk-normed); gathered attention rows
    fg_tensor k;    // [T][n_head_kv*head_dim]
    fg_tensor v;    // [T][n_head_kv*head_dim]
    fg_tensor att;  // [T][n_head*head_dim] attention output
    fg_tensor g;    // [T][2*n_ff] gate|up (fused), or gate
    fg_tensor u;    // [T][n_ff] up (unfused)
    fg_tensor h;    // [T][n_ff] swiglu output
    fg_tensor xo;   // [T][n_embd] rows wanting logits (last layer)
    fg_tensor lg;   // [lg_rows][n_vocab] one chunk of logits
    fg_tensor samp; // I32 [max_logit_rows][FG_SAMPLE_RESULT_WORDS] sample results
    int32_t lg_rows;
    fg_tensor emb;  // [max_seqs][n_embd] pooled embeddings (embedding models, issue 14)
    void *act;      // activations converted for the matmuls (fg_op_convert), act_bytes
    size_t act_bytes;
} fg_scratch;

struct fg_model {
    char *path;
    fg_arch arch;
    const fg_arch_traits *at; // borrowed: fg_arch_table row
    fg_hparams hp;
    fg_model_info info;
    char *name;
    fg_gguf *gguf;
    fg_tokenizer *tok;
    fg_backend *be; // borrowed
    int32_t max_batch_tokens;
    int32_t max_seqs;

    fg_buffer *wbuf;     // all weights
    fg_tensor *tensors;  // [n_tensors] views into wbuf: the file's, then the fused ones made at
                         // load (the parts of a fused weight keep data NULL: never read)
    int32_t n_tensors;
    const fg_tensor *tok_embd;    // [n_vocab][n_embd]
    const fg_tensor *output_norm; // F32 [n_embd]
    const fg_tensor *output;      // [n_vocab][n_embd] (token_embd when tied)
    const fg_tensor *rope_freqs;  // F32 [n_rot/2] or NULL
    fg_layer *layers;             // [n_layer]
    // encoders (issue 14)
    const fg_tensor *pos_embd;    // [n_ctx_train][n_embd] (bert) or NULL
    const fg_tensor *type_embd;   // [n_types][n_embd] or NULL (token type 0 is added)
    const fg_tensor *embd_norm;   // F32 [n_embd] LayerNorm of the embeddings, and its bias
    const fg_tensor *embd_norm_b;

    fg_scratch s;
    fg_tp tp;
    uint32_t skip_ops; // fg_model_opts.bench_skip_ops (benchmarks)
    // host step metadata, sized at load
    int32_t *seq_count; // [max_seqs]
    int32_t *seq_first; // [max_seqs]
    int32_t *out_rows;  // [max_batch_tokens]
    // results: logits of the last submitted step, in backend host memory (pinned on a GPU)
    float *logits;         // [max_logit_rows][n_vocab]
    fg_sample_result *samples; // [max_logit_rows] (a step that sampled)
    int32_t max_logit_rows;
    int32_t max_sample_entries;
    bool pending;          // a step was submitted and not yet waited for
    bool pending_sampled;  // it sampled (results in samples, not logits)
    int32_t pending_out;   // its n_out
    // embedding models (issue 14, embed.c): a KV store used as the attention's scratch (every
    // input is whole in its step; F32, so no rounding), the batch built per step, the results
    fg_kv_store *ekv;
    int32_t *e_tokens, *e_pos, *e_seq; // [max_batch_tokens]
    bool *e_want;                      // [max_batch_tokens] all false (no logits)
    int32_t *e_n_kv;                   // [max_seqs]
    int32_t *e_pages;                  // [ekv pages] 0, 1, 2, ...: a sequence takes consecutive pages
    const int32_t **e_pt;              // [max_seqs] page table of each sequence (into e_pages)
    float *embd;                       // [max_seqs][n_embd] pooled vectors (backend host memory)
    int32_t e_pending;                 // sequences of the submitted embedding step, -1: none
};

// model_check.c: the file's tensors, the hyper-parameters and every weight's values agree with
// the architecture (FG_ERR_FORMAT naming the tensor or key; see the file for the list of
// known-optional tensors). n_threads: for the NaN/inf scan (0: the cores, at most 8).
fg_status fg_model_check(const fg_gguf *g, const char *path, const fg_arch_traits *at,
                         const fg_hparams *hp, int32_t n_threads);

// forward.c: the ops of one step (between fg_step_begin and fg_step_end): logits for the rows
// that want them, or, for an embedding model, the pooled vector of each sequence into m->embd.
fg_status fg_model_run_step(fg_model *m, fg_kv_store *kv, const fg_step *st);
// forward.c: checks the batch and fills the step (host metadata in the KV store's scratch).
fg_status fg_model_make_step(fg_model *m, fg_kv_store *kv, const fg_batch *b, fg_step *st);
// embed.c: the embedding state (KV scratch, batch arrays, results) of an embedding model, at load.
fg_status fg_model_embed_init(fg_model *m);
void fg_model_embed_free(fg_model *m);

struct fg_kv_store {
    fg_model *m; // borrowed
    fg_buffer *buf; // allocated and laid out by the backend (kv_alloc)
    fg_kv_view view;
    int32_t *page_table; // [max_seqs][n_pages] host scratch for fg_step
    struct fg_kv_store **tp_peer; // [tp.size] the workers' stores (rank 0 of a group; [0] unused)
};

// ---- tp_group.c: the in-process tensor-parallel group (fg_model_opts.tp_size > 1 without a
// communicator). Rank 0 is the model fg_model_load returns; ranks 1..N-1 are worker threads,
// each with its own backend, communicator, model shard and KV stores. Every call below is made
// by rank 0's thread; a failure of any rank stops the group (FG_ERR_DEVICE from then on).
typedef struct fg_tp_group fg_tp_group;
fg_status fg_tp_group_load(const char *path, fg_backend *be, const fg_model_opts *o, fg_model **out);
void fg_tp_group_destroy(fg_tp_group *g);
// Hands the (validated) batch to the workers, which run the same step on their shards.
fg_status fg_tp_group_post_step(fg_tp_group *g, fg_kv_store *kv, const fg_batch *b);
// Rank 0's step ended with st (its own result): waits for the workers' and returns the group's
// (the first failure of any rank, FG_ERR_DEVICE, naming the rank).
fg_status fg_tp_group_wait_step(fg_tp_group *g, fg_status st);
fg_status fg_tp_group_kv_create(fg_tp_group *g, fg_kv_store *kv, int32_t n_pages, int32_t page_size,
                                uint32_t kv_type);
void fg_tp_group_kv_destroy(fg_tp_group *g, fg_kv_store *kv);
fg_status fg_tp_group_kv_copy_page(fg_tp_group *g, fg_kv_store *kv, int32_t dst, int32_t src);
// Tests: from its `step`-th step on (0-based, counted by the group), rank `rank` fails
// (mode 1: an error before its ops) or stalls for `seconds` before running the step (mode 2).
void fg_tp_debug_fault(fg_model *m, int32_t rank, int64_t step, int mode, double seconds);

#endif // FG_MODEL_MODEL_INTERNAL_H
