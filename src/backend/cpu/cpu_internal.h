// cpu_internal.h - state shared by the CPU backend's files: the backend context (thread pool,
// the current step, scratch), the buffer struct and the op entry points that cpu_backend.c
// puts into the ops table. Not for other modules.
// Files: cpu_backend.c (buffers, step, table), cpu_ops.c (element-wise, norms, rope, KV),
// cpu_matmul.c, cpu_attn.c, cpu_sample.c, cpu_embd.c (embedding models); cpu_kernels.c,
// quant_simd.c, quant_gemm.c (SIMD kernels).
#ifndef FG_BACKEND_CPU_INTERNAL_H
#define FG_BACKEND_CPU_INTERNAL_H

#include "backend/backend.h"
#include "backend/cpu/threadpool.h"

#define FG_CPU_ALIGN 64
#define FG_CPU_MAX_HEAD_DIM FG_MAX_HEAD_DIM // attention keeps heads on the stack
#define FG_CPU_ATTN_HEADS 8     // most q heads one attention task handles together

struct fg_buffer {
    void *data;  // FG_CPU_ALIGN-aligned
    size_t size; // bytes usable
};

typedef struct fg_cpu {
    fg_threadpool *tp;
    int n_threads;
    bool use_ref;           // scalar reference kernels (fg_backend_opts.use_ref)
    char desc[96];

    // the current step: backend.c's validated copy (valid from step_begin to step_end)
    const fg_step *st;
    int32_t max_n_kv;       // longest seq_n_kv of the step

    // scratch (grown at reserve or step_begin, never inside an op)
    float *scores;          // [n_threads][FG_CPU_ATTN_HEADS][scores_stride] probabilities
    size_t scores_stride;   // floats per thread (>= max_n_kv of every step so far)
    void *act;              // matmul activations converted to vec_dot_type
    size_t act_size;
    void *samp;             // sample: [n_threads][samp_stride] fg_sample_cand
    size_t samp_stride;     // candidates per thread (>= n_vocab)

    fg_step_result result;  // first non-finite value check_finite saw this step
} fg_cpu;

static inline fg_cpu *fg_cpu_ctx(fg_backend *be) { return (fg_cpu *)be->ctx; }

// Grows *p to at least n bytes (64-aligned, contents not kept). FG_ERR_NOMEM naming what.
fg_status fg_cpu_scratch_reserve(void **p, size_t *size, size_t n, const char *what);

// The op entry points (trusting: backend.c validated the step and the shapes).
fg_status fg_cpu_get_rows(fg_backend *be, fg_tensor *dst, const fg_tensor *table);
fg_status fg_cpu_gather_out(fg_backend *be, fg_tensor *dst, const fg_tensor *src);
fg_status fg_cpu_rmsnorm(fg_backend *be, fg_tensor *dst, const fg_tensor *x, const fg_tensor *w,
                         float eps);
fg_status fg_cpu_convert(fg_backend *be, fg_tensor *dst, const fg_tensor *x);
fg_status fg_cpu_matmul(fg_backend *be, fg_tensor *dst, const fg_tensor *w, const fg_tensor *x,
                        const fg_tensor *bias, bool accumulate);
fg_status fg_cpu_add(fg_backend *be, fg_tensor *dst, const fg_tensor *a, const fg_tensor *b);
fg_status fg_cpu_swiglu(fg_backend *be, fg_tensor *dst, const fg_tensor *gate, const fg_tensor *up);
fg_status fg_cpu_rope(fg_backend *be, fg_tensor *x, const fg_rope_params *p);
fg_status fg_cpu_kv_store(fg_backend *be, const fg_kv_view *kv, int32_t layer, const fg_tensor *k,
                          const fg_tensor *v);
fg_status fg_cpu_attention(fg_backend *be, fg_tensor *dst, const fg_tensor *q, const fg_kv_view *kv,
                           const fg_attn_params *p);
fg_status fg_cpu_check_finite(fg_backend *be, const fg_tensor *x, int64_t row0);
fg_status fg_cpu_sample(fg_backend *be, fg_tensor *out, const fg_tensor *logits, int64_t row0);
fg_status fg_cpu_kv_copy_page(fg_backend *be, const fg_kv_view *kv, int32_t dst_page,
                              int32_t src_page);

// cpu_embd.c: embedding models (issue 14)
fg_status fg_cpu_layernorm(fg_backend *be, fg_tensor *dst, const fg_tensor *x, const fg_tensor *w,
                           const fg_tensor *b, float eps);
fg_status fg_cpu_gelu(fg_backend *be, fg_tensor *dst, const fg_tensor *x, fg_gelu_mode mode);
fg_status fg_cpu_add_rows(fg_backend *be, fg_tensor *dst, const fg_tensor *table, fg_rows_index idx,
                          int32_t row);
fg_status fg_cpu_pool(fg_backend *be, fg_tensor *dst, const fg_tensor *x, fg_pool_mode mode, bool normalize);

// [begin, end) of n items for worker ith of nth (contiguous, balanced).
static inline void fg_cpu_split(int64_t n, int ith, int nth, int64_t *begin, int64_t *end) {
    int64_t per = n / nth, rem = n % nth;
    *begin = ith * per + (ith < rem ? ith : rem);
    *end = *begin + per + (ith < rem ? 1 : 0);
}

#endif // FG_BACKEND_CPU_INTERNAL_H
