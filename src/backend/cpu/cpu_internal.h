// cpu_internal.h - state shared by the CPU backend's files: the backend context (thread pool,
// the copied step metadata, scratch), the buffer struct and the op entry points that
// cpu_backend.c puts into the ops table. Not for other modules.
// Files: cpu_backend.c (buffers, set_step, table), cpu_ops.c (element-wise, norms, rope, KV),
// cpu_matmul.c, cpu_attn.c.
#ifndef FG_BACKEND_CPU_INTERNAL_H
#define FG_BACKEND_CPU_INTERNAL_H

#include "backend/backend.h"
#include "backend/cpu/threadpool.h"

#define FG_CPU_ALIGN 64
#define FG_CPU_MAX_HEAD_DIM 512 // attention keeps heads on the stack
#define FG_CPU_ATTN_HEADS 8     // most q heads one attention task handles together

struct fg_buffer {
    void *data;  // FG_CPU_ALIGN-aligned
    size_t size; // bytes usable
};

typedef struct fg_cpu {
    fg_threadpool *tp;
    int n_threads;

    // the current step (copies of fg_step's arrays; capacities grow, never shrink)
    bool have_step;
    int32_t n_tokens, n_seqs, max_pages, n_out;
    int32_t max_n_kv;       // longest seq_n_kv of the step
    int32_t *tokens;        // [n_tokens]
    int32_t *pos;           // [n_tokens]
    int32_t *seq;           // [n_tokens]
    int32_t *seq_n_kv;      // [n_seqs]
    int32_t *page_table;    // [n_seqs][max_pages]
    int32_t *out_rows;      // [n_out]
    size_t cap_tokens, cap_pos, cap_seq, cap_out, cap_seqs, cap_pt;

    // scratch
    float *scores;          // [n_threads][FG_CPU_ATTN_HEADS][scores_stride] probabilities
    size_t scores_stride;   // floats per thread (>= max_n_kv of every step so far)
    void *act;              // matmul activations converted to vec_dot_type
    size_t act_size;

    fg_status sticky;       // first asynchronous failure (none on the CPU so far)
    char sticky_msg[256];
} fg_cpu;

static inline fg_cpu *fg_cpu_ctx(fg_backend *be) { return (fg_cpu *)be->ctx; }

// Grows *p to at least n bytes (64-aligned, contents not kept). FG_ERR_NOMEM naming what.
fg_status fg_cpu_scratch_reserve(void **p, size_t *size, size_t n, const char *what);

// Checks an F32 activation tensor [rows][cols] with contiguous rows (nb[0] = 4, nb[1] >= 4*cols).
fg_status fg_cpu_check_f32_rows(const char *op, const char *name, const fg_tensor *t, int64_t cols,
                                int64_t rows);
// The step must have been set.
fg_status fg_cpu_check_step(fg_cpu *c, const char *op);
// KV view checks (type, geometry, layer) and the page ids of every step token's sequence.
fg_status fg_cpu_check_kv(fg_cpu *c, const char *op, const fg_kv_view *kv, int32_t layer);

fg_status fg_cpu_get_rows(fg_backend *be, fg_tensor *dst, const fg_tensor *table);
fg_status fg_cpu_gather_out(fg_backend *be, fg_tensor *dst, const fg_tensor *src);
fg_status fg_cpu_rmsnorm(fg_backend *be, fg_tensor *dst, const fg_tensor *x, const fg_tensor *w,
                         float eps);
fg_status fg_cpu_matmul(fg_backend *be, fg_tensor *dst, const fg_tensor *w, const fg_tensor *x,
                        const fg_tensor *bias);
fg_status fg_cpu_add(fg_backend *be, fg_tensor *dst, const fg_tensor *a, const fg_tensor *b);
fg_status fg_cpu_swiglu(fg_backend *be, fg_tensor *dst, const fg_tensor *gate, const fg_tensor *up);
fg_status fg_cpu_rope(fg_backend *be, fg_tensor *x, const fg_rope_params *p);
fg_status fg_cpu_kv_store(fg_backend *be, const fg_kv_view *kv, int32_t layer, const fg_tensor *k,
                          const fg_tensor *v);
fg_status fg_cpu_attention(fg_backend *be, fg_tensor *dst, const fg_tensor *q, const fg_kv_view *kv,
                           int32_t layer, int32_t n_head, float scale);
fg_status fg_cpu_kv_copy_page(fg_backend *be, const fg_kv_view *kv, int32_t dst_page,
                              int32_t src_page);

// [begin, end) of n items for worker ith of nth (contiguous, balanced).
static inline void fg_cpu_split(int64_t n, int ith, int nth, int64_t *begin, int64_t *end) {
    int64_t per = n / nth, rem = n % nth;
    *begin = ith * per + (ith < rem ? ith : rem);
    *end = *begin + per + (ith < rem ? 1 : 0);
}

#endif // FG_BACKEND_CPU_INTERNAL_H
