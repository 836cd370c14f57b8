// backend.h - the backend interface: one table of function pointers that the CPU backend
// (src/backend/cpu) implements today and the CUDA backend (src/backend/cuda) will implement
// unchanged. The forward pass (src/model/forward.c) is written once against it.
// Rules: weights, activations and KV pages live in backend-owned buffers; code outside a
// backend never dereferences fg_tensor.data. A forward step is described once per step by
// fg_step (host arrays the backend uploads in set_step); ops then refer to it implicitly
// (token ids, positions, page tables), so a GPU backend uploads metadata once per step and can
// capture the op sequence in a graph.
// Not here: who owns which KV page (src/engine), model hyper-parameters (src/model).
#ifndef FG_BACKEND_BACKEND_H
#define FG_BACKEND_BACKEND_H

#include "forge.h"

typedef struct fg_buffer fg_buffer;

// A view of backend memory. Never owns memory.
typedef struct fg_tensor {
    uint32_t type;   // fg_type of the elements (quantized weights: blocks along ne[0])
    int64_t ne[4];   // elements per dim, ne[0] innermost; unused dims are 1
    size_t nb[4];    // byte strides: nb[0] = bytes of one element (or block), nb[1] = row stride...
    void *data;      // backend address (device pointer on a GPU); opaque to callers
    fg_buffer *buf;  // borrowed: the buffer data points into
} fg_tensor;

// The paged KV cache as the forward pass sees it. One pool of pages shared by all sequences:
//   k, v: [n_layer][n_pages][page_size][n_head_kv * head_dim], element type `type` (F16 or F32).
// Token j of a sequence lives in page page_table[j / page_size], slot j % page_size.
typedef struct fg_kv_view {
    int32_t n_layer;
    int32_t n_pages;
    int32_t page_size;
    int32_t n_head_kv;
    int32_t head_dim;
    uint32_t type; // FG_TYPE_F16 (default, as the reference) or FG_TYPE_F32
    fg_tensor k;   // ne = {n_head_kv*head_dim, page_size, n_pages, n_layer}
    fg_tensor v;   // same shape as k
} fg_kv_view;

// One forward step: several sequences of different lengths, each with its own page table.
// Tokens of one sequence are contiguous in the step and in increasing position order; a
// sequence's new tokens occupy positions seq_n_kv - seq_n_tokens .. seq_n_kv - 1.
typedef struct fg_step {
    int32_t n_tokens;
    const int32_t *tokens;       // [n_tokens] token ids
    const int32_t *pos;          // [n_tokens] position of each token in its sequence
    const int32_t *seq;          // [n_tokens] index of the token's sequence, 0..n_seqs-1
    int32_t n_seqs;
    const int32_t *seq_n_kv;     // [n_seqs] KV length of the sequence after this step
    int32_t max_pages;           // row length of page_table
    const int32_t *page_table;   // [n_seqs][max_pages] page ids (first ceil(n_kv/page_size) valid)
    int32_t n_out;
    const int32_t *out_rows;     // [n_out] token indices whose logits are wanted, ascending
} fg_step;

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

typedef struct fg_backend_ops {
    const char *name; // "cpu", "cuda"
    void (*destroy)(fg_backend *be);

    // memory
    fg_status (*buf_alloc)(fg_backend *be, size_t n_bytes, fg_buffer **out);
    void (*buf_free)(fg_backend *be, fg_buffer *buf);
    void *(*buf_base)(fg_buffer *buf); // backend address of byte 0
    // Host <-> backend copies of n bytes at byte offset off of dst/src's data.
    fg_status (*upload)(fg_backend *be, const fg_tensor *dst, size_t off, const void *src, size_t n);
    fg_status (*download)(fg_backend *be, const fg_tensor *src, size_t off, void *dst, size_t n);
    // Waits for queued work; device faults surface here (sticky FG_ERR_DEVICE).
    fg_status (*sync)(fg_backend *be);
    // Whether matmul/get_rows support weights of this type.
    bool (*supports_type)(fg_backend *be, uint32_t type);

    // Per-step metadata (copied/uploaded; the arrays may be reused by the caller afterwards).
    fg_status (*set_step)(fg_backend *be, const fg_step *step);

    // ---- ops (enqueued; shapes checked on the host; activations are F32 [rows][cols])
    // dst[t][:] = dequant(table row step->tokens[t])        dst: [n_tokens][n_embd]
    fg_status (*get_rows)(fg_backend *be, fg_tensor *dst, const fg_tensor *table);
    // dst[i][:] = src[step->out_rows[i]][:]                 dst: [n_out][n]
    fg_status (*gather_out)(fg_backend *be, fg_tensor *dst, const fg_tensor *src);
    // dst[r][:] = x[r][:] / sqrt(mean(x[r]^2) + eps) * w[:]  (w: F32 [n]; rows may be heads)
    fg_status (*rmsnorm)(fg_backend *be, fg_tensor *dst, const fg_tensor *x, const fg_tensor *w,
                         float eps);
    // dst[r][o] = sum_i w[o][i] * x[r][i] (+ bias[o] if bias); w any supported type [n_out][n_in],
    // x F32 [rows][n_in]; activations converted as the reference does (vec_dot_type).
    fg_status (*matmul)(fg_backend *be, fg_tensor *dst, const fg_tensor *w, const fg_tensor *x,
                        const fg_tensor *bias);
    // dst = a + b (same shape; dst may alias a)
    fg_status (*add)(fg_backend *be, fg_tensor *dst, const fg_tensor *a, const fg_tensor *b);
    // dst = silu(gate) * up; gate/up may be strided views (e.g. halves of a fused projection)
    fg_status (*swiglu)(fg_backend *be, fg_tensor *dst, const fg_tensor *gate, const fg_tensor *up);
    // In-place rotary embedding of x: [n_tokens][n_head * head_dim], positions from the step.
    fg_status (*rope)(fg_backend *be, fg_tensor *x, const fg_rope_params *p);
    // Writes k, v ([n_tokens][n_head_kv * head_dim]) of layer `layer` into each token's slot
    // (page table of its sequence, position pos), converting to kv->type.
    fg_status (*kv_store)(fg_backend *be, const fg_kv_view *kv, int32_t layer, const fg_tensor *k,
                          const fg_tensor *v);
    // Causal attention of q ([n_tokens][n_head * head_dim]) over each token's sequence KV
    // (positions 0..pos) in layer `layer`; grouped heads: q head h uses kv head
    // h / (n_head / n_head_kv). dst: [n_tokens][n_head * head_dim]. softmax(scale * q.k).
    fg_status (*attention)(fg_backend *be, fg_tensor *dst, const fg_tensor *q, const fg_kv_view *kv,
                           int32_t layer, int32_t n_head, float scale);
    // Copies one KV page (all layers) dst_page <- src_page (copy-on-write for forked prefixes).
    fg_status (*kv_copy_page)(fg_backend *be, const fg_kv_view *kv, int32_t dst_page,
                              int32_t src_page);
} fg_backend_ops;

struct fg_backend {
    const fg_backend_ops *ops;
    void *ctx; // the implementation's state
};

// Constructors of the implementations; fg_backend_create (include/forge/model.h, in
// backend.c) picks one by name. fg_backend_opts is in include/forge/model.h.
fg_status fg_backend_cpu_create(const fg_backend_opts *opts, fg_backend **out);
#ifdef FG_HAVE_CUDA
fg_status fg_backend_cuda_create(const fg_backend_opts *opts, fg_backend **out);
#endif

// Helpers shared by all backends and the model (tensor.c).
// A contiguous tensor view over buf at byte offset `off`.
fg_tensor fg_tensor_view(fg_buffer *buf, void *base, size_t off, uint32_t type, int n_dims,
                         const int64_t *ne);
size_t fg_tensor_nbytes(const fg_tensor *t);
bool fg_tensor_is_contiguous(const fg_tensor *t);

#endif // FG_BACKEND_BACKEND_H
