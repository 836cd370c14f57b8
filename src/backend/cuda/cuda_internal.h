// cuda_internal.h - what the CUDA backend's files share (not for other modules): the backend
// context (device, stream, the current step's metadata on the device, scratch arenas sized at
// reserve), the buffer struct, and the launchers each .cu file provides to the ops table in
// cuda_backend.cu. Files:
//   cuda_backend.cu  lifecycle, buffers, copies, step begin/end/wait, reserve, the ops table
//   cuda_ops.cu      row-wise ops: rmsnorm, add, swiglu, rope, gather_out, check_finite, fused
//   cuda_matmul.cu   get_rows, convert, matmul for every weight type (matvec and tiled paths)
//   cuda_attn.cu     kv_store, kv_copy_page, paged flash attention (prefill and decode)
//   cuda_sample.cu   the sample op: a block per row (greedy/top-k rows split over blocks), radix selects
//   cuda_prof.cu     the op profiler (FORGE_CUDA_PROFILE=1)
//   comm_nccl.cu     the NCCL communicator of tensor parallelism (backend/comm.h)
//   cuda_embd.cu     embedding models: layernorm, gelu, add_rows, pool (issue 14)
//   cuda_common.cuh  device helpers (warp reductions, half conversion, block dequantizers)
// Every launch is checked (FG_GPU_LAUNCH_CHECK); launchers trust their arguments (backend.c
// validated them) and guard our own invariants with FG_ASSERT.
#ifndef FG_BACKEND_CUDA_INTERNAL_H
#define FG_BACKEND_CUDA_INTERNAL_H

extern "C" {
#include "backend/backend.h"
#include "base/status.h"
}
#include "backend/cuda/gpu_compat.h"

#define FG_CUDA_MAX_PENDING 2              // ended steps that may await step_wait at once
#define FG_CUDA_BAD_NONE (~0ull)           // d_bad key: no non-finite value seen
#define FG_CUDA_ARENA_ALIGN ((size_t)256)  // fg_cuda_arena_take alignment
#define FG_CUDA_GRAPHS 48                   // recorded steps kept (least recently used goes)
#define FG_CUDA_GRAPH_MAX_TOKENS 256        // steps of at most this many tokens are recorded
#define FG_MMQ_OFF 0                        // fg_cuda.mmq: quantized GEMMs through F16 + cuBLAS
#define FG_MMQ_DP4A 1                       //   the integer tiled kernel, dp4a
#define FG_MMQ_MMA 2                        //   the integer tiled kernel, mma.sync (sm_80+)
#define FG_MMQ_F16 3                        //   the F16 tensor-core kernel, weights dequantized inside (sm_80+)

struct fg_buffer {
    void *dev;
    size_t size;
};

// The current step's metadata on the device (valid from step_begin to the next step_begin);
// the scalars are host copies the launchers size their grids with. A recorded step (CUDA
// graph) replays for every later step of the same shape, so launch geometry may depend only
// on the shape: n_tokens, n_seqs and n_out are exact; max_pages (the page table's row
// stride), max_n_kv and max_seq_tokens are upper bounds rounded up to a power of two (the
// per-sequence values are in device memory: seq_n_kv, seq_n_tokens, pos).
typedef struct fg_cuda_step {
    int32_t n_tokens, n_seqs, max_pages, n_out;
    int32_t max_n_kv;        // >= the longest seq_n_kv (a power of two, capped at the reserve)
    int32_t max_seq_tokens;  // >= the most tokens of one sequence (a power of two, <= n_tokens)
    const int32_t *tokens;       // [n_tokens]
    const int32_t *pos;          // [n_tokens]
    const int32_t *seq;          // [n_tokens]
    const int32_t *seq_n_kv;     // [n_seqs]
    const int32_t *seq_first;    // [n_seqs]
    const int32_t *seq_n_tokens; // [n_seqs]
    const int32_t *page_table;   // [n_seqs][max_pages]
    const int32_t *out_rows;     // [n_out]
    const fg_sample_row *sample;           // [n_out] or NULL (no sample op this step)
    const fg_sample_entry *sample_entries; // after the rows; rows index them (device memory)
} fg_cuda_step;

// A bump arena of device memory, reset at every step_begin; sized at reserve.
typedef struct fg_cuda_arena {
    char *base;
    size_t size, used;
} fg_cuda_arena;

typedef struct fg_cuda {
    int device;
    int sticky;          // a device error happened: every later call fails
    gpuStream_t stream;
    int warp;            // the device's warp width (32, or 64 on CDNA)
    int n_sm;
    size_t smem_optin;   // most dynamic shared memory a block may opt into
    int cc_major, cc_minor;
    uint64_t mem_total;
    char name[256];
    char desc[320];

    fg_backend_limits lim;  // reserved so far

    // step metadata: packed int32 arrays (tokens, pos, seq, out_rows, seq_n_kv, seq_first,
    // seq_n_tokens, page_table; offsets depend only on n_tokens, n_out, n_seqs) in pinned
    // staging and their device twin. The staging has two halves of meta_cap elements used by
    // alternate steps, so a step can be packed while the previous one's copy is in flight.
    int32_t *h_meta, *d_meta;
    size_t meta_cap;        // int32 elements of d_meta and of each staging half
    int meta_half;          // the half the last step_begin packed
    gpuEvent_t meta_ev[2];  // recorded after each half's H2D copy
    bool meta_ev_live[2];   // meta_ev[i] has been recorded
    fg_cuda_step step;
    bool in_step;

    // step result: the first non-finite value any check_finite saw (lowest row, then col).
    // d_bad words: [0..1] uint64 key (row << 32 | col), FG_CUDA_BAD_NONE when none (reduced with
    // atomicMin), [2] the value's bits, [3] unused. h_bad: pinned, FG_CUDA_MAX_PENDING slots of
    // 4 words; an ended step copies d_bad into its slot and records done_ev[slot].
    int32_t *d_bad, *h_bad;
    gpuEvent_t done_ev[FG_CUDA_MAX_PENDING];
    int n_pending;          // ended steps not yet waited (FIFO of slots)
    int pending_head;       // slot of the oldest

    // scratch arenas, reset per op
    fg_cuda_arena mm;   // matmul: converted activations, partial sums
    fg_cuda_arena attn; // attention: split-sequence partials

    // the library GEMM of prefill (cuBLAS; not in HIP builds): handle, workspace, and the F16
    // copy of a weight it multiplies (dequantized per call: cuda_matmul.cu)
    void *blas;             // cublasHandle_t
    void *blas_ws;          // workspace (fixed, so that a recorded step may call the library)
    fg_cuda_arena deq;      // F16 weight rows [chunk][n_in] (FORGE_CUDA_DEQ_MB, at most the largest weight)
    size_t deq_want;        // its wanted size in bytes
    int blas_min_rows;      // activation rows from which the library GEMM runs (0: never)
    int qblas_rows;         // quantized weights: rows from which they go through the chunked F16
                            // GEMM (FORGE_CUDA_QBLAS_ROWS; 0: never)
    int mv_direct;          // quantized matvec: 1 the direct kernel (default), 0 the staged one (FORGE_CUDA_MV=staged),
                            // 2 the direct one with 16-bit weight reads only (FORGE_CUDA_MV=direct16)
    int mv_pipe;            // direct quantized matvec, rows of more than 4,096 elements: the next
                            // unit read before this one is used (FORGE_CUDA_MV_PIPE=1; default one at a time)
    int mwk;                // Q4_K/Q5_K, 1-2 rows: the K-quant matvec (mwk) with this many weight rows a
                            // 32-lane group (FORGE_CUDA_MWK: 1 or 2; 0: the direct matvec)
    int mq_split;           // the tensor-core integer kernel splits K when its tiles leave SMs idle
    int mqr_min, mqr_max;   // Q4_K weights: rows through the register-fed tensor-core kernel (mqr;
                            // FORGE_CUDA_MQR=LO:HI, 0 off; mqr_max 0: never)
    int mqr_nt;             // mqr: mma n tiles a warp at most (FORGE_CUDA_MQR_NT: 1, 2, 4, 8)
    bool mqr_pack;          // mqr: the activation rows repacked in the lanes' order first (FORGE_CUDA_MQR_PACK=0 off)
    bool mqr_chain;         // mqr, Q4_K over repacked rows: the scales in the A fragments (FORGE_CUDA_MQR_CHAIN=0 off)
    bool mqr_stage;         // mqr, Q4_K: weights staged in shared memory (FORGE_CUDA_MQR_STAGE=0 off)
    int mv_rows;            // quantized weights: up to this many rows through the matvec in passes of
                            // FG_MV_MAX_ROWS, more through the tiled kernel (FORGE_CUDA_MV_ROWS)
    int mmq;                // quantized weights, many rows (FORGE_CUDA_MMQ): FG_MMQ_OFF the F16 GEMMs
                            // (=0), FG_MMQ_DP4A the dp4a integer kernel (=dp4a; the default without
                            // tensor cores), FG_MMQ_MMA the mma.sync one (=mma, sm_80+); both
                            // integer kernels keep the reference's arithmetic; FG_MMQ_F16 (the
                            // default on sm_80+) the F16 tensor-core kernel: the F16 GEMM's arithmetic
    bool pdl;               // the step's small kernels and matvecs launched with programmatic dependent
                            // launch (fg_launch; sm_90+, CUDA; FORGE_CUDA_PDL=0 off): each starts
                            // while the one before it ends, the matvecs' first weights in flight
    int sample_slice;       // logits a block of the sample op's split pass reads (FORGE_CUDA_SAMPLE_SLICE;
                            // 0: SAMP_SLICE, below 0: rows never split; the emulator test sets
                            // small ones to split small vocabularies)
    int dec_l_min;          // decode attention: fewest keys of a split chunk (FORGE_CUDA_DEC_L_MIN; 0: DEC_L_MIN)
    int dec_hsplit;         // decode attention: blocks a kv head's q heads are split over at most
                            // (FORGE_CUDA_DEC_HSPLIT, 1: unsplit; 0: DEC_HSPLIT): the group's largest divisor up to it
    int dec_passes;         // decode attention: warp passes with their loads in flight together
                            // (FORGE_CUDA_DEC_PASSES: 2, the default, or 4)
    bool dec_rope;          // decode steps: rope + KV store inside attn_dec_kernel (rope_kv_attention;
                            // FORGE_CUDA_DEC_ROPE=0: rope_kv_store_kernel, then attention)
    int norm_w_late;        // rmsnorm: its weights loaded after the PDL wait (FORGE_CUDA_NORM_W_EARLY=0);
                            // by default before it (one memory round trip less)
    int dec_quant;          // ... and the output projection's activations from it: 1 (default) Q8_1 rows,
                            // 2 Q8_1 and Q8_K (H100: Q8_K slower than the convert kernel), 0 none
                            // (FORGE_CUDA_DEC_QUANT; otherwise the f32 rows, then convert)
    bool attn_dec;          // decode steps through attn_dec_kernel (FORGE_CUDA_ATTN_DEC=0: attn_kernel)
    bool attn_fa;           // other steps (F16 cache, head_dim 64/128, sm_80+) through the tensor-core
                            // attn_fa_kernel (FORGE_CUDA_ATTN_MMA=0: attn_kernel)

    // recorded steps (CUDA graphs), keyed by the step's graph_id and shape
    bool graphs_on;        // FORGE_CUDA_GRAPHS=0 turns them off
    int graph_mode;        // 0: ops launch; 1: ops are being captured; 2: a recorded step replays
    int graph_cur;         // slot being captured or replayed
    uint64_t graph_clock;
    struct {
        bool used;
        uint64_t id;
        int32_t shape[7];
        uint64_t last_use;
        gpuGraphExec_t exec;
    } graphs[FG_CUDA_GRAPHS];
    uint64_t graph_launches, graph_captures; // counters (bench, tests)

    // tensor parallelism: the communicator of the current step's all-reduces and of each
    // ended step (borrowed; step_wait watches it so that a dead peer cannot hang the wait)
    fg_comm *step_comm;
    fg_comm *pending_comm[FG_CUDA_MAX_PENDING];

    // FORGE_CUDA_PROFILE=1: every op between a pair of timing events (graphs off), summed per
    // op and shape, printed to stderr when the backend is destroyed (cuda_backend.cu)
    struct fg_cuda_prof *prof;
} fg_cuda;

static inline fg_cuda *fg_cuda_ctx(fg_backend *be) { return (fg_cuda *)be->ctx; }

// Takes n bytes (256-aligned) from an arena: FG_ERR_CAPACITY naming `what` when reserve sized
// it too small (our bug: the *_scratch_bytes functions below must cover every step).
fg_status fg_cuda_arena_take(fg_cuda_arena *a, size_t n, const char *what, void **out);
// Bytes fg_cuda_arena_take could still give (after its alignment).
size_t fg_cuda_arena_left(const fg_cuda_arena *a);

// ---- cuda_prof.cu (FORGE_CUDA_PROFILE=1: per-op timing events, printed at destroy)
fg_status fg_cuda_prof_init(fg_cuda *c);
void fg_cuda_prof_free(fg_cuda *c);
void fg_cuda_prof_drain(fg_cuda *c);
fg_status fg_cuda_prof_step(fg_cuda *c); // at step_begin: keeps the device busy while the step is queued
int fg_cuda_prof_begin(fg_cuda *c, const char *fmt, ...);
void fg_cuda_prof_end(fg_cuda *c, int i);

// per-op scratch from the matmul arena (valid until the next op that takes it)
fg_status fg_cuda_op_scratch(fg_cuda *c, size_t n, void **out);

// ---- cuda_ops.cu
// dst F32, or an activation type of convert (the rows normed, then converted as convert does)
fg_status fg_cuda_rmsnorm(fg_cuda *c, fg_tensor *dst, const fg_tensor *x, const fg_tensor *w, float eps);
fg_status fg_cuda_add(fg_cuda *c, fg_tensor *dst, const fg_tensor *a, const fg_tensor *b);
fg_status fg_cuda_swiglu(fg_cuda *c, fg_tensor *dst, const fg_tensor *gate, const fg_tensor *up);
// convert of x, or of silu(x) * u when u is set (swiglu into an activation type)
fg_status fg_cuda_convert_src(fg_cuda *c, fg_tensor *dst, const fg_tensor *x, const fg_tensor *u);
fg_status fg_cuda_rope(fg_cuda *c, fg_tensor *x, const fg_rope_params *p);
fg_status fg_cuda_gather_out(fg_cuda *c, fg_tensor *dst, const fg_tensor *src);
fg_status fg_cuda_check_finite(fg_cuda *c, const fg_tensor *x, int64_t row0);
fg_status fg_cuda_add_rmsnorm(fg_cuda *c, fg_tensor *x, fg_tensor *xn, const fg_tensor *a,
                              const fg_tensor *w, float eps);

// ---- cuda_matmul.cu
bool fg_cuda_matmul_supports(uint32_t wtype);                // matmul and get_rows
bool fg_cuda_convert_supports(uint32_t act_type);
uint32_t fg_cuda_act_type(fg_cuda *c, uint32_t wtype, int64_t n_rows);
size_t fg_cuda_matmul_scratch_bytes(const fg_backend_limits *lim);
fg_status fg_cuda_get_rows(fg_cuda *c, fg_tensor *dst, const fg_tensor *table);
fg_status fg_cuda_convert(fg_cuda *c, fg_tensor *dst, const fg_tensor *x);
fg_status fg_cuda_matmul(fg_cuda *c, fg_tensor *dst, const fg_tensor *w, const fg_tensor *x,
                         const fg_tensor *bias, bool accumulate);
// The library GEMM's state: created with the backend, sized at reserve, freed with it.
fg_status fg_cuda_matmul_init(fg_cuda *c);
fg_status fg_cuda_matmul_reserve(fg_cuda *c, const fg_backend_limits *lim);
fg_status fg_cuda_attn_init(fg_cuda *c);
void fg_cuda_matmul_free(fg_cuda *c);

// ---- cuda_sample.cu
fg_status fg_cuda_sample(fg_cuda *c, fg_tensor *out, const fg_tensor *logits, int64_t row0);
// matmul-arena bytes the sample op's split pass takes for the rows of a step (reserve)
size_t fg_cuda_sample_scratch_bytes(const fg_backend_limits *lim);

// ---- cuda_attn.cu
bool fg_cuda_kv_supports(uint32_t kv_type);
size_t fg_cuda_attn_scratch_bytes(const fg_backend_limits *lim);
fg_status fg_cuda_kv_store(fg_cuda *c, const fg_kv_view *kv, int32_t layer, const fg_tensor *k,
                           const fg_tensor *v);
fg_status fg_cuda_attention(fg_cuda *c, fg_tensor *dst, const fg_tensor *q, const fg_kv_view *kv,
                            const fg_attn_params *p);
fg_status fg_cuda_rope_kv_store(fg_cuda *c, fg_tensor *q, fg_tensor *k, const fg_tensor *v, const fg_rope_params *p,
                                int32_t n_head_kv, const fg_kv_view *kv, int32_t layer);
fg_status fg_cuda_rope_kv_attention(fg_cuda *c, fg_tensor *dst, fg_tensor *dq, fg_tensor *q, fg_tensor *k,
                                   const fg_tensor *v, const fg_rope_params *rp, int32_t n_head_kv,
                                   const fg_kv_view *kv, const fg_attn_params *ap);
fg_status fg_cuda_kv_copy_page(fg_cuda *c, const fg_kv_view *kv, int32_t dst_page, int32_t src_page);

// ---- cuda_embd.cu (embedding models, issue 14)
bool fg_cuda_add_rows_supports(uint32_t table_type);
fg_status fg_cuda_layernorm(fg_cuda *c, fg_tensor *dst, const fg_tensor *x, const fg_tensor *w, const fg_tensor *b,
                            float eps);
fg_status fg_cuda_gelu(fg_cuda *c, fg_tensor *dst, const fg_tensor *x, fg_gelu_mode mode);
fg_status fg_cuda_add_rows(fg_cuda *c, fg_tensor *dst, const fg_tensor *table, fg_rows_index idx, int32_t row);
fg_status fg_cuda_pool(fg_cuda *c, fg_tensor *dst, const fg_tensor *x, fg_pool_mode mode, bool normalize);

#endif // FG_BACKEND_CUDA_INTERNAL_H
