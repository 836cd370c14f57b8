// backend.h - the backend interface: one table of function pointers that every backend (the
// CPU reference in src/backend/cpu, the GPU in src/backend/cuda) fills in, and the checked
// wrappers (backend.c) through which the forward pass and the tests call it.
//
// The step is the device boundary. A forward step is
//     fg_step_begin(be, &step)      metadata validated once (shared code), handed to the backend
//     fg_op_*(be, ...)              ops, enqueued; they read the step's metadata implicitly
//     fg_op_sample(...)             per output row: the sampled token / log-probabilities
//     fg_op_download_async(...)     results (logits rows or sample results) into host memory
//     fg_step_end(be)               no more ops for this step: a GPU may launch what it recorded
//     fg_step_wait(be, &result)     waits; reports the first non-finite value check_finite saw
// Nothing between begin and end synchronises with the host, downloads synchronously or
// branches on data: the op sequence depends only on the step's shape (n_tokens, n_out, ...),
// so a GPU backend may capture it once per shape and replay it with new metadata.
//
// Validation lives in one place: the fg_step_begin / fg_op_* wrappers check the step once and
// each op's shapes in O(1); backend ops are trusting launchers (FG_ASSERT for our own bugs).
// Fused ops (fg_op_add_rmsnorm, fg_op_rope_kv_store, fg_op_rope_kv_attention) have a default composition here that a
// backend overrides by filling the optional table entry.
// Rules: weights, activations and KV pages live in backend-owned buffers; code outside a
// backend never dereferences fg_tensor.data. Not here: who owns which KV page (src/engine),
// model hyper-parameters (src/model).
#ifndef FG_BACKEND_BACKEND_H
#define FG_BACKEND_BACKEND_H

#include "forge/backend.h"
#include "forge/sample.h"
#include "forge/types.h"

typedef struct fg_buffer fg_buffer;
typedef struct fg_comm fg_comm; // backend/comm.h

// A view of backend memory. Never owns memory.
typedef struct fg_tensor {
    uint32_t type;   // fg_type of the elements (quantized: blocks along ne[0])
    int64_t ne[4];   // elements per dim, ne[0] innermost; unused dims are 1
    size_t nb[4];    // byte strides: nb[0] = bytes of one element (or block), nb[1] = row stride...
    void *data;      // backend address (device pointer on a GPU); opaque to callers
    fg_buffer *buf;  // borrowed: the buffer data points into
} fg_tensor;

// The paged KV cache as the forward pass sees it. One pool of pages shared by all sequences;
// the backend allocates it (kv_alloc) and the canonical layout, which download returns, is
//   k, v: [n_layer][n_pages][page_size][n_head_kv * head_dim], element type `type`
// (a quantized type: each slot's row is whole blocks, so each head's head_dim elements start
// at byte kv_head * fg_type_row_size_n(type, head_dim) of it).
// Token j of a sequence lives in page page_table[j / page_size], slot j % page_size.
typedef struct fg_kv_view {
    int32_t n_layer;
    int32_t n_pages;
    int32_t page_size;
    int32_t n_head_kv;
    int32_t head_dim;
    uint32_t type; // FG_TYPE_F16 (default, as the reference), FG_TYPE_F32 or FG_TYPE_Q8_0 (a row's
                   // n_head_kv * head_dim elements as Q8_0 blocks; head_dim a multiple of 32)
    fg_tensor k;   // ne = {n_head_kv*head_dim, page_size, n_pages, n_layer}
    fg_tensor v;   // same shape as k
} fg_kv_view;

// One forward step: several sequences of different lengths, each with its own page table.
// Tokens of one sequence are contiguous in the step and in increasing position order; a
// sequence's new tokens occupy positions seq_n_kv - seq_n_tokens .. seq_n_kv - 1.
// The arrays must stay unchanged until fg_step_end returns (a GPU copies them at begin).
typedef struct fg_step {
    int32_t n_tokens;
    const int32_t *tokens;       // [n_tokens] token ids
    const int32_t *pos;          // [n_tokens] position of each token in its sequence
    const int32_t *seq;          // [n_tokens] index of the token's sequence, 0..n_seqs-1
    int32_t n_seqs;
    const int32_t *seq_n_kv;     // [n_seqs] KV length of the sequence after this step
    const int32_t *seq_first;    // [n_seqs] index of the sequence's first token in the step
    const int32_t *seq_n_tokens; // [n_seqs] its number of tokens in the step
                                 // (these two are derived by fg_step_begin: callers leave them NULL)
    int32_t max_pages;           // row length of page_table
    const int32_t *page_table;   // [n_seqs][max_pages] page ids (first ceil(n_kv/page_size) valid)
    int32_t n_out;
    const int32_t *out_rows;     // [n_out] token indices whose results are wanted, ascending
    // Identifies what the step's ops read and write besides the metadata (the model's weights
    // and scratch, the KV store, the host result buffer): two steps with the same graph_id and
    // the same shape run the same ops on the same buffers, so a backend may record the op
    // sequence once and replay it. 0: never record.
    uint64_t graph_id;
    // Sampling on the backend (forge/sample.h): one row per output row, or NULL when the step
    // hands back logits rows instead (no sample op). The entries of all rows in one array.
    const fg_sample_row *sample;           // [n_out] or NULL
    int32_t n_sample_entries;
    const fg_sample_entry *sample_entries; // [n_sample_entries]
} fg_step;

// What a step reports back (fg_step_wait).
typedef struct fg_step_result {
    int64_t bad_row;   // first row (as given to check_finite) holding a non-finite value; -1: none
    int64_t bad_col;
    float bad_value;
} fg_step_result;

typedef enum fg_rope_mode {
    FG_ROPE_NORMAL = 0, // rotate adjacent pairs (x[2i], x[2i+1]) - llama, glm4 (partial)
    FG_ROPE_NEOX = 2,   // rotate halves (x[i], x[i + n_rot/2]) - qwen2, qwen3
} fg_rope_mode;

typedef struct fg_rope_params {
    int32_t n_head;       // heads in the tensor being rotated
    int32_t head_dim;
    int32_t n_rot;        // rotated dims per head (<= head_dim; glm4: head_dim/2); rest untouched
    fg_rope_mode mode;
    float freq_base;      // theta_i = pos * freq_scale * freq_base^(-2i/n_rot) / freq_factors[i]
    float freq_scale;
    const fg_tensor *freq_factors; // NULL or F32 [n_rot/2] (llama 3 `rope_freqs.weight`)
} fg_rope_params;

typedef struct fg_attn_params {
    int32_t layer;
    int32_t n_head;   // q heads; q head h uses kv head h / (n_head / n_head_kv)
    float scale;      // softmax(scale * q.k)
    bool causal;      // true: token at position p attends to 0..p; false: to its whole sequence
} fg_attn_params;

// ---- embedding models (issue 14)
typedef enum fg_gelu_mode {
    FG_GELU_ERF = 0,  // x/2 (1 + erf(x / sqrt 2)): BERT's "gelu", the exact form
    FG_GELU_TANH = 1, // x/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))): "gelu_new", ggml_gelu
} fg_gelu_mode;

typedef enum fg_pool_mode { // llama.cpp's pooling_type values (GGUF <arch>.pooling_type)
    FG_POOL_NONE = 0,
    FG_POOL_MEAN = 1, // mean over the sequence's tokens (all of them, [CLS] and [SEP] included)
    FG_POOL_CLS = 2,  // its first token
    FG_POOL_LAST = 3, // its last token
} fg_pool_mode;

typedef enum fg_rows_index {
    FG_ROWS_POS = 0,   // row step->pos[t] for token t (absolute position embeddings)
    FG_ROWS_FIXED = 1, // one given row for every token (BERT's token type 0)
} fg_rows_index;
// ---- (end issue 14)

// The most a step will ask of a backend (reserve). Zero fields: no requirement.
typedef struct fg_backend_limits {
    int32_t max_tokens;   // tokens in one step
    int32_t max_seqs;     // sequences in one step
    int32_t max_pages;    // page-table row length (pages of the longest sequence)
    int32_t max_kv_len;   // longest sequence in tokens (max_pages * page_size)
    int32_t max_heads;    // q heads of an attention call
    int32_t max_head_dim;
    int64_t max_cols;     // widest activation row any op sees (n_embd, q width, 2 * n_ff, n_vocab...)
    int64_t max_weight_elems; // largest layer weight (n_out x n_in): a backend may expand one
                              // (e.g. dequantize it for a library GEMM) during prefill
    int32_t max_sample_entries; // fg_step.n_sample_entries
} fg_backend_limits;

// What supports() is asked about. `type` is the weight type (get_rows, matmul), the KV type
// (kv_store, attention, kv_copy_page), the destination type (convert) or F32 (the rest).
typedef enum fg_op {
    FG_OP_GET_ROWS,
    FG_OP_GATHER_OUT,
    FG_OP_RMSNORM,
    FG_OP_CONVERT,
    FG_OP_MATMUL,
    FG_OP_ADD,
    FG_OP_SWIGLU,
    FG_OP_ROPE,
    FG_OP_KV_STORE,
    FG_OP_ATTENTION,
    FG_OP_KV_COPY_PAGE,
    FG_OP_CHECK_FINITE,
    FG_OP_ALL_REDUCE,
    FG_OP_SAMPLE,
    // embedding models (issue 14); add_rows: `type` is the table's
    FG_OP_LAYERNORM,
    FG_OP_GELU,
    FG_OP_ADD_ROWS,
    FG_OP_POOL,
    FG_OP_COUNT
} fg_op;

const char *fg_op_name(fg_op op);

// Activations are F32 [rows][cols] (ne = {cols, rows}; nb[0] = 4; row stride nb[1] >= 4 * cols,
// so strided views of a wider tensor are fine) unless an op says otherwise.
typedef struct fg_backend_ops {
    const char *name; // "cpu", "cuda"
    // step_end returns before the step's work is done (a GPU): the host may prepare the next
    // step meanwhile. false: the ops compute as they are called (the CPU).
    bool async_steps;
    void (*destroy)(fg_backend *be);
    const char *(*describe)(fg_backend *be);
    fg_status (*mem_info)(fg_backend *be, uint64_t *free_bytes, uint64_t *total_bytes);

    // ---- memory (outside steps)
    fg_status (*buf_alloc)(fg_backend *be, size_t n_bytes, fg_buffer **out);
    void (*buf_free)(fg_backend *be, fg_buffer *buf);
    void *(*buf_base)(fg_buffer *buf);  // backend address of byte 0
    size_t (*buf_size)(fg_buffer *buf); // bytes usable
    // Host memory the backend can copy into asynchronously (pinned on a GPU).
    fg_status (*host_alloc)(fg_backend *be, size_t n_bytes, void **out);
    void (*host_free)(fg_backend *be, void *p);
    // Synchronous host <-> backend copies of n bytes at byte offset off of the tensor's data.
    fg_status (*upload)(fg_backend *be, const fg_tensor *dst, size_t off, const void *src, size_t n);
    fg_status (*download)(fg_backend *be, const fg_tensor *src, size_t off, void *dst, size_t n);
    // Waits for all queued work; device faults surface here (sticky FG_ERR_DEVICE).
    fg_status (*sync)(fg_backend *be);
    bool (*supports)(fg_backend *be, fg_op op, uint32_t type);
    // Bytes a weight of this type and shape takes in this backend (it may repack), and the
    // upload of the whole tensor from its GGUF bytes (fg_tensor_nbytes of the canonical view).
    size_t (*weight_size)(fg_backend *be, uint32_t type, int64_t ne0, int64_t ne1);
    fg_status (*weight_upload)(fg_backend *be, fg_tensor *w, const void *src);
    // The KV pool: the backend sizes and lays it out; view geometry (n_layer, n_pages,
    // page_size, n_head_kv, head_dim, type) is filled in by the caller, k and v by the backend.
    fg_status (*kv_alloc)(fg_backend *be, fg_kv_view *view, fg_buffer **out);
    // Largest step the backend must take: metadata and scratch are sized here, at load (the
    // model, then the KV store, call it; each field only grows). Never called inside a step.
    fg_status (*reserve)(fg_backend *be, const fg_backend_limits *lim);
    // The activation type matmul wants for weights of `wtype` with n_rows activation rows:
    // FG_TYPE_F32 (matmul takes F32) or a type `convert` produces (F16, BF16, Q8_0, Q8_1, Q8_K).
    uint32_t (*act_type)(fg_backend *be, uint32_t wtype, int64_t n_rows);

    // ---- the step (the wrappers in backend.c have validated everything)
    fg_status (*step_begin)(fg_backend *be, const fg_step *step);
    fg_status (*step_end)(fg_backend *be);
    fg_status (*step_wait)(fg_backend *be, fg_step_result *res);
    // Abandons a step whose ops failed before step_end (NULL: step_end + step_wait do).
    void (*step_abort)(fg_backend *be);

    // ---- ops (enqueued between step_begin and step_end; trusting: shapes were checked. They
    // return FG_OK, or FG_ERR_DEVICE / FG_ERR_NOMEM for a failure of the launch itself)
    // dst[t][:] = dequant(table row step->tokens[t])        dst: [n_tokens][n_embd]
    fg_status (*get_rows)(fg_backend *be, fg_tensor *dst, const fg_tensor *table);
    // dst[i][:] = src[step->out_rows[i]][:]                 dst: [n_out][n] (may alias src)
    fg_status (*gather_out)(fg_backend *be, fg_tensor *dst, const fg_tensor *src);
    // dst[..][r][:] = x[..][r][:] / sqrt(mean(x^2) + eps) * w[:] over every row of 3-D views
    // [ne2][ne1][n] (per-head norms), w F32 [n] or NULL; dst may alias x. dst F32, or (2-D x,
    // where supports(FG_OP_RMSNORM, type)) an activation type of convert: the F32 result
    // converted as convert would, byte for byte. w is a weight (no op of a step writes it: a
    // backend may read it ahead of the op's turn), as in add_rmsnorm.
    fg_status (*rmsnorm)(fg_backend *be, fg_tensor *dst, const fg_tensor *x, const fg_tensor *w, float eps);
    // dst = x converted row by row to dst->type (act_type's types); dst rows contiguous.
    fg_status (*convert)(fg_backend *be, fg_tensor *dst, const fg_tensor *x);
    // dst[r][o] (+)= sum_i w[o][i] * x[r][i] + bias[o]: w [n_out][n_in] any supported type,
    // x F32 or act_type(w) [rows][n_in], bias F32 [n_out] or NULL; accumulate adds to dst.
    // w is a weight: no op of a step writes it (a backend may read it ahead of the op's turn).
    fg_status (*matmul)(fg_backend *be, fg_tensor *dst, const fg_tensor *w, const fg_tensor *x,
                   const fg_tensor *bias, bool accumulate);
    // dst = a + b (same shape; dst may alias a or b)
    fg_status (*add)(fg_backend *be, fg_tensor *dst, const fg_tensor *a, const fg_tensor *b);
    // dst = silu(gate) * up; gate/up may be strided views (e.g. halves of a fused projection).
    // dst F32, or (where supports(FG_OP_SWIGLU, type)) an activation type of convert: the
    // product converted bit for bit as convert would convert the F32 product (a matmul's input
    // in one pass)
    fg_status (*swiglu)(fg_backend *be, fg_tensor *dst, const fg_tensor *gate, const fg_tensor *up);
    // In-place rotary embedding of x: [n_tokens][n_head * head_dim], positions from the step.
    fg_status (*rope)(fg_backend *be, fg_tensor *x, const fg_rope_params *p);
    // Writes k, v ([n_tokens][n_head_kv * head_dim]) of layer `layer` into each token's slot
    // (page table of its sequence, position pos), converting to kv->type.
    fg_status (*kv_store)(fg_backend *be, const fg_kv_view *kv, int32_t layer, const fg_tensor *k,
                     const fg_tensor *v);
    // Attention of q ([n_tokens][n_head * head_dim]) over each token's sequence KV in layer
    // p->layer. dst: [n_tokens][n_head * head_dim].
    fg_status (*attention)(fg_backend *be, fg_tensor *dst, const fg_tensor *q, const fg_kv_view *kv,
                      const fg_attn_params *p);
    // Records the first non-finite value of x ([rows][cols]) as row row0 + r (fg_step_result).
    fg_status (*check_finite)(fg_backend *be, const fg_tensor *x, int64_t row0);
    // Samples or scores the step's output rows row0 .. row0 + rows - 1 (step->sample[row0 + i])
    // from their raw logits ([rows][n_vocab]; NaN and inf as the reference treats them) into out (I32
    // [rows][FG_SAMPLE_RESULT_WORDS]: one fg_sample_result per row). May not modify logits.
    fg_status (*sample)(fg_backend *be, fg_tensor *out, const fg_tensor *logits, int64_t row0);
    // Copies n bytes at offset off of src into host memory from host_alloc, in step order;
    // complete when step_wait returns.
    fg_status (*download_async)(fg_backend *be, const fg_tensor *src, size_t off, void *host, size_t n);

    // ---- optional fused ops (NULL: backend.c composes them from the ops above)
    // x = x + a; xn = rmsnorm(x) * w
    fg_status (*add_rmsnorm)(fg_backend *be, fg_tensor *x, fg_tensor *xn, const fg_tensor *a,
                        const fg_tensor *w, float eps);
    // rope(q), rope(k) (n_head_kv heads), kv_store(k, v)
    fg_status (*rope_kv_store)(fg_backend *be, fg_tensor *q, fg_tensor *k, const fg_tensor *v,
                          const fg_rope_params *p, int32_t n_head_kv, const fg_kv_view *kv,
                          int32_t layer);
    // rope_kv_store(q, k, v) into layer ap->layer, then attention(dst, q), then (dq not NULL)
    // convert(dq, dst); with dq the backend may write dq straight and leave dst unwritten. q
    // and k may be left rotated or not (nothing reads them after).
    fg_status (*rope_kv_attention)(fg_backend *be, fg_tensor *dst, fg_tensor *dq, fg_tensor *q, fg_tensor *k,
                                   const fg_tensor *v, const fg_rope_params *rp, int32_t n_head_kv,
                                   const fg_kv_view *kv, const fg_attn_params *ap);

    // ---- embedding models (issue 14): BERT's LayerNorm, GELU, position / token-type rows,
    // pooling. Required of every backend (backend.c does not compose them).
    // dst[r][:] = (x[r][:] - mean) / sqrt(var + eps) * w[:] + b[:] over each row (biased
    // variance; w, b F32 [n] or NULL); dst may alias x.
    fg_status (*layernorm)(fg_backend *be, fg_tensor *dst, const fg_tensor *x, const fg_tensor *w,
                           const fg_tensor *b, float eps);
    // dst = gelu(x) element by element in `mode`; dst may alias x.
    fg_status (*gelu)(fg_backend *be, fg_tensor *dst, const fg_tensor *x, fg_gelu_mode mode);
    // dst[t][:] += table row r(t) (converted to F32): r(t) = step->pos[t] (FG_ROWS_POS) or `row`
    // (FG_ROWS_FIXED). dst: [n_tokens][n]; table: [rows][n] of a type supports(ADD_ROWS) takes.
    fg_status (*add_rows)(fg_backend *be, fg_tensor *dst, const fg_tensor *table, fg_rows_index idx,
                          int32_t row);
    // dst[s][:] = the rows of x belonging to sequence s (step seq_first / seq_n_tokens) pooled
    // (mean, first, last), then divided by max(||.||_2, 1e-12) when normalize.
    // x: [n_tokens][n], dst: [n_seqs][n], not overlapping x.
    fg_status (*pool)(fg_backend *be, fg_tensor *dst, const fg_tensor *x, fg_pool_mode mode, bool normalize);
    // ---- (end issue 14)

    // ---- outside steps
    // Measures the device's copy bandwidth: a device-to-device copy of `bytes` (best or median
    // of a few; bytes read + written per second). For benchmarks; allocates its own buffers.
    fg_status (*copy_bandwidth)(fg_backend *be, size_t bytes, double *gb_per_s);
    // Copies one KV page (all layers) dst_page <- src_page (copy-on-write for forked prefixes).
    fg_status (*kv_copy_page)(fg_backend *be, const fg_kv_view *kv, int32_t dst_page, int32_t src_page);

    // ---- tensor parallelism (optional; NULL: backend.c calls the communicator directly, right
    // for a backend whose ops complete before they return, as the CPU's do)
    // x = the sum of x over the communicator's ranks, in place, enqueued in step order.
    fg_status (*all_reduce)(fg_backend *be, fg_comm *comm, fg_tensor *x);
} fg_backend_ops;

// Largest head size the attention and rope ops take (the CPU keeps heads on the stack);
// the model refuses larger ones at load.
#define FG_MAX_HEAD_DIM 512

// What backend.c keeps about the current step for the checked wrappers.
typedef struct fg_step_state {
    bool active;            // between fg_step_begin and fg_step_end
    fg_step step;           // the caller's arrays (valid until fg_step_end) + the derived ones
    int32_t *seq_first;     // [cap_seqs] derived per step
    int32_t *seq_n_tokens;  // [cap_seqs]
    int32_t cap_seqs;       // sized by fg_backend_reserve
    int32_t max_n_kv;       // longest seq_n_kv
    int32_t max_token;      // largest token id and the first index holding it
    int32_t max_token_at;
    int32_t max_entry_token; // largest token of the step's sample entries (-1: none)
    const void *kv_checked; // the KV view whose pages were checked against this step
} fg_step_state;

struct fg_backend {
    const fg_backend_ops *ops;
    void *ctx;           // the implementation's state
    fg_step_state state; // backend.c's
};

// ---- construction (each backend's create; fg_backend_create in registry.c picks one)
fg_status fg_backend_cpu_create(const fg_backend_opts *opts, fg_backend **out);
// Frees backend.c's per-backend state; every backend's destroy calls it.
void fg_step_state_free(fg_step_state *ss);

// ---- checked entry points (backend.c). Each validates, then calls the backend.
// Validation failures are FG_ERR_INVALID_ARG / FG_ERR_UNSUPPORTED naming the op and field.
// Sizes the backend for the largest step (at load; never inside a step).
fg_status fg_backend_reserve(fg_backend *be, const fg_backend_limits *lim);
fg_status fg_step_begin(fg_backend *be, const fg_step *step);
fg_status fg_step_end(fg_backend *be);
fg_status fg_step_wait(fg_backend *be, fg_step_result *res);
// After an op of the step failed: ends and drains it, dropping its errors (the op's stands).
void fg_step_abort(fg_backend *be);
const fg_step *fg_step_current(const fg_backend *be); // NULL outside a step

bool fg_backend_supports(fg_backend *be, fg_op op, uint32_t type);
uint32_t fg_backend_act_type(fg_backend *be, uint32_t wtype, int64_t n_rows);

fg_status fg_op_get_rows(fg_backend *be, fg_tensor *dst, const fg_tensor *table);
fg_status fg_op_gather_out(fg_backend *be, fg_tensor *dst, const fg_tensor *src);
fg_status fg_op_rmsnorm(fg_backend *be, fg_tensor *dst, const fg_tensor *x, const fg_tensor *w, float eps);
fg_status fg_op_convert(fg_backend *be, fg_tensor *dst, const fg_tensor *x);
fg_status fg_op_matmul(fg_backend *be, fg_tensor *dst, const fg_tensor *w, const fg_tensor *x,
                       const fg_tensor *bias, bool accumulate);
fg_status fg_op_add(fg_backend *be, fg_tensor *dst, const fg_tensor *a, const fg_tensor *b);
fg_status fg_op_swiglu(fg_backend *be, fg_tensor *dst, const fg_tensor *gate, const fg_tensor *up);
fg_status fg_op_rope(fg_backend *be, fg_tensor *x, const fg_rope_params *p);
fg_status fg_op_kv_store(fg_backend *be, const fg_kv_view *kv, int32_t layer, const fg_tensor *k,
                         const fg_tensor *v);
fg_status fg_op_attention(fg_backend *be, fg_tensor *dst, const fg_tensor *q, const fg_kv_view *kv,
                          const fg_attn_params *p);
fg_status fg_op_check_finite(fg_backend *be, const fg_tensor *x, int64_t row0);
fg_status fg_op_sample(fg_backend *be, fg_tensor *out, const fg_tensor *logits, int64_t row0);
fg_status fg_op_download_async(fg_backend *be, const fg_tensor *src, size_t off, void *host, size_t n);
fg_status fg_op_add_rmsnorm(fg_backend *be, fg_tensor *x, fg_tensor *xn, const fg_tensor *a,
                            const fg_tensor *w, float eps);
fg_status fg_op_rope_kv_store(fg_backend *be, fg_tensor *q, fg_tensor *k, const fg_tensor *v,
                              const fg_rope_params *p, int32_t n_head_kv, const fg_kv_view *kv,
                              int32_t layer);
// fg_op_rope_kv_store then fg_op_attention (layer ap->layer), then, when dq is not NULL,
// fg_op_convert(dq, dst) (the output projection's activations): with dq, dst's contents are
// unspecified afterwards (a backend may quantize in the attention kernel). q and k hold their
// rows rotated or as they were (a backend may rotate copies: nothing may read them after).
fg_status fg_op_rope_kv_attention(fg_backend *be, fg_tensor *dst, fg_tensor *dq, fg_tensor *q, fg_tensor *k,
                                  const fg_tensor *v, const fg_rope_params *rp, int32_t n_head_kv,
                                  const fg_kv_view *kv, const fg_attn_params *ap);
// x ([rows][cols] F32, contiguous) summed over comm's ranks in place; every rank calls it at
// the same point of the same step (a communicator of size 1: nothing to do).
fg_status fg_op_all_reduce(fg_backend *be, fg_comm *comm, fg_tensor *x);
// embedding models (issue 14)
fg_status fg_op_layernorm(fg_backend *be, fg_tensor *dst, const fg_tensor *x, const fg_tensor *w,
                          const fg_tensor *b, float eps);
fg_status fg_op_gelu(fg_backend *be, fg_tensor *dst, const fg_tensor *x, fg_gelu_mode mode);
fg_status fg_op_add_rows(fg_backend *be, fg_tensor *dst, const fg_tensor *table, fg_rows_index idx,
                         int32_t row);
fg_status fg_op_pool(fg_backend *be, fg_tensor *dst, const fg_tensor *x, fg_pool_mode mode, bool normalize);
fg_status fg_kv_copy_page_checked(fg_backend *be, const fg_kv_view *kv, int32_t dst_page, int32_t src_page);

// ---- tensor helpers shared by all backends and the model (tensor.c)
// A contiguous tensor view over buf at byte offset `off`.
fg_tensor fg_tensor_view(fg_buffer *buf, void *base, size_t off, uint32_t type, int n_dims,
                         const int64_t *ne);
size_t fg_tensor_nbytes(const fg_tensor *t);
bool fg_tensor_is_contiguous(const fg_tensor *t);
// A 2-D F32 view: rows x cols floats, row stride nb1 bytes, starting `off` bytes into t.
fg_tensor fg_tensor_rows(const fg_tensor *t, size_t off, int64_t cols, int64_t rows, size_t nb1);

#endif // FG_BACKEND_BACKEND_H
