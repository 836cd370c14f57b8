// cuda_embd.cu - the CUDA backend's ops for embedding models (issue 14): layernorm (one warp
// per row up to 1,024 columns, else one block per row), gelu (erf and tanh forms), add_rows
// (position / token-type embedding rows added to the residual; F32, F16 or BF16 tables) and
// pool (one block per sequence: mean / first / last token, then the L2 normalisation with a
// block reduction). Numerics follow src/backend/cpu/cpu_embd.c, with f32 sums where the CPU
// sums in double (layernorm statistics, the pooled mean, the norm): the tests' tolerances.
// Who calls it: the ops table in cuda_backend.cu. Launchers trust their arguments (backend.c
// validated them); launch geometry uses the device's warp width (c->warp), kernels FG_WARP,
// and depends only on the step's shape (n_tokens, n_seqs), so a recorded step replays it.
#include "backend/cuda/cuda_common.cuh"
#include "backend/cuda/cuda_internal.h"

#include <math.h>

static int round_up(int64_t n, int m) { return (int)(((n + m - 1) / m) * m); }

static bool is_f32_rows(const fg_tensor *t) { return t && t->data && t->type == FG_TYPE_F32 && t->nb[0] == 4; }

// ============================================================================ layernorm

// y = (x - mean) * scale (* w) (+ b); every element is read and written by the same thread,
// after the row's statistics are complete, so dst may alias x.
static __device__ __forceinline__ float ln_out(float x, float mean, float scale, const float *w, const float *b,
                                               int64_t i) {
    float v = (x - mean) * scale;
    if (w)
        v *= w[i];
    if (b)
        v += b[i];
    return v;
}

#define FG_LN_WARP_MAX 1024 // up to this many columns a row is one warp's

static __global__ void layernorm_warp_kernel(char *dst, size_t dnb, const char *x, size_t xnb, const float *w,
                                             const float *b, int n, int64_t n_rows, float eps) {
    const int lane = threadIdx.x % FG_WARP;
    const int64_t r = (int64_t)blockIdx.x * (blockDim.x / FG_WARP) + threadIdx.x / FG_WARP;
    if (r >= n_rows) // warp-uniform: the whole warp leaves together
        return;
    const float *xr = (const float *)(x + (size_t)r * xnb);
    float *yr = (float *)(dst + (size_t)r * dnb);
    float sum = 0.0f;
    for (int i = lane; i < n; i += FG_WARP)
        sum += xr[i];
    const float mean = fg_warp_sum(sum) / (float)n;
    float sum2 = 0.0f;
    for (int i = lane; i < n; i += FG_WARP) {
        const float v = xr[i] - mean;
        sum2 += v * v;
    }
    const float var = fg_warp_sum(sum2) / (float)n;
    const float scale = 1.0f / sqrtf(var + eps);
    for (int i = lane; i < n; i += FG_WARP)
        yr[i] = ln_out(xr[i], mean, scale, w, b, i);
}

static __global__ void layernorm_block_kernel(char *dst, size_t dnb, const char *x, size_t xnb, const float *w,
                                              const float *b, int64_t n, float eps) {
    __shared__ float sh[1024 / FG_WARP];
    const int64_t r = blockIdx.x;
    const float *xr = (const float *)(x + (size_t)r * xnb);
    float *yr = (float *)(dst + (size_t)r * dnb);
    float sum = 0.0f;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x)
        sum += xr[i];
    const float mean = fg_block_sum(sum, sh) / (float)n;
    float sum2 = 0.0f;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
        const float v = xr[i] - mean;
        sum2 += v * v;
    }
    const float var = fg_block_sum(sum2, sh) / (float)n;
    const float scale = 1.0f / sqrtf(var + eps);
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x)
        yr[i] = ln_out(xr[i], mean, scale, w, b, i);
}

fg_status fg_cuda_layernorm(fg_cuda *c, fg_tensor *dst, const fg_tensor *x, const fg_tensor *w, const fg_tensor *b,
                            float eps) {
    FG_ASSERT(is_f32_rows(dst) && is_f32_rows(x));
    FG_ASSERT(!w || (w->data && w->type == FG_TYPE_F32 && w->ne[0] >= x->ne[0]));
    FG_ASSERT(!b || (b->data && b->type == FG_TYPE_F32 && b->ne[0] >= x->ne[0]));
    const int64_t n = x->ne[0], n_rows = x->ne[1];
    FG_ASSERT(dst->ne[0] == n && dst->ne[1] == n_rows);
    if (n == 0 || n_rows == 0)
        return FG_OK;
    const float *wp = w ? (const float *)w->data : NULL, *bp = b ? (const float *)b->data : NULL;
    if (n <= FG_LN_WARP_MAX) {
        const int rows_per_block = 4;
        layernorm_warp_kernel<<<fg_div_up(n_rows, rows_per_block), rows_per_block * c->warp, 0, c->stream>>>(
            (char *)dst->data, dst->nb[1], (const char *)x->data, x->nb[1], wp, bp, (int)n, n_rows, eps);
    } else {
        int threads = round_up((n + 7) / 8, c->warp);
        threads = threads > 1024 ? 1024 : threads;
        layernorm_block_kernel<<<(unsigned)n_rows, threads, 0, c->stream>>>(
            (char *)dst->data, dst->nb[1], (const char *)x->data, x->nb[1], wp, bp, n, eps);
    }
    FG_GPU_LAUNCH_CHECK(c, "layernorm");
    return FG_OK;
}

// ============================================================================ gelu

#define GELU_SQRT_HALF 0.70710678118654752440f      // 1 / sqrt(2)
#define GELU_SQRT_2_OVER_PI 0.79788456080286535588f // sqrt(2 / pi)
#define GELU_COEF_A 0.044715f

// blockIdx.x: the row; blockIdx.y and a stride loop: the columns. dst may alias x.
template <int kMode>
static __global__ void gelu_kernel(char *dst, size_t dnb, const char *x, size_t xnb, int64_t n) {
    const int64_t r = blockIdx.x;
    const float *xr = (const float *)(x + (size_t)r * xnb);
    float *yr = (float *)(dst + (size_t)r * dnb);
    for (int64_t i = (int64_t)blockIdx.y * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.y * blockDim.x) {
        const float v = xr[i];
        if (kMode == FG_GELU_ERF)
            yr[i] = 0.5f * v * (1.0f + erff(v * GELU_SQRT_HALF));
        else
            yr[i] = 0.5f * v * (1.0f + tanhf(GELU_SQRT_2_OVER_PI * v * (1.0f + GELU_COEF_A * v * v)));
    }
}

fg_status fg_cuda_gelu(fg_cuda *c, fg_tensor *dst, const fg_tensor *x, fg_gelu_mode mode) {
    FG_ASSERT(is_f32_rows(dst) && is_f32_rows(x));
    const int64_t n = x->ne[0], n_rows = x->ne[1];
    FG_ASSERT(dst->ne[0] == n && dst->ne[1] == n_rows);
    if (n == 0 || n_rows == 0)
        return FG_OK;
    const int threads = n >= 256 ? 256 : round_up(n, c->warp);
    const unsigned chunks = fg_div_up(n, threads);
    dim3 grid((unsigned)n_rows, chunks > 65535 ? 65535 : chunks);
    if (mode == FG_GELU_ERF)
        gelu_kernel<FG_GELU_ERF><<<grid, threads, 0, c->stream>>>((char *)dst->data, dst->nb[1],
                                                                  (const char *)x->data, x->nb[1], n);
    else
        gelu_kernel<FG_GELU_TANH><<<grid, threads, 0, c->stream>>>((char *)dst->data, dst->nb[1],
                                                                   (const char *)x->data, x->nb[1], n);
    FG_GPU_LAUNCH_CHECK(c, "gelu");
    return FG_OK;
}

// ============================================================================ add_rows

static __device__ __forceinline__ float load_elem(const char *row, int64_t i, uint32_t type) {
    if (type == FG_TYPE_F32)
        return ((const float *)row)[i];
    if (type == FG_TYPE_F16)
        return fg_h2f(((const uint16_t *)row)[i]);
    return fg_bf2f(((const uint16_t *)row)[i]); // BF16
}

// blockIdx.x: the token; blockIdx.y and a stride loop: the columns. The table row is the
// token's position (pos != NULL) or `row`.
static __global__ void add_rows_kernel(char *dst, size_t dnb, const char *table, size_t tnb, uint32_t type,
                                       const int32_t *pos, int32_t row, int64_t n) {
    const int64_t t = blockIdx.x;
    const int32_t r = pos ? pos[t] : row;
    const char *src = table + (size_t)r * tnb;
    float *d = (float *)(dst + (size_t)t * dnb);
    for (int64_t i = (int64_t)blockIdx.y * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.y * blockDim.x)
        d[i] += load_elem(src, i, type);
}

bool fg_cuda_add_rows_supports(uint32_t type) {
    return type == FG_TYPE_F32 || type == FG_TYPE_F16 || type == FG_TYPE_BF16;
}

fg_status fg_cuda_add_rows(fg_cuda *c, fg_tensor *dst, const fg_tensor *table, fg_rows_index idx, int32_t row) {
    FG_ASSERT(is_f32_rows(dst) && table && table->data && fg_cuda_add_rows_supports(table->type));
    const int64_t n = table->ne[0], n_tokens = c->step.n_tokens;
    FG_ASSERT(dst->ne[0] == n && dst->ne[1] == n_tokens);
    if (n == 0 || n_tokens == 0)
        return FG_OK;
    const int threads = n >= 256 ? 256 : round_up(n, c->warp);
    const unsigned chunks = fg_div_up(n, threads);
    dim3 grid((unsigned)n_tokens, chunks > 65535 ? 65535 : chunks);
    add_rows_kernel<<<grid, threads, 0, c->stream>>>((char *)dst->data, dst->nb[1], (const char *)table->data,
                                                     table->nb[1], table->type,
                                                     idx == FG_ROWS_POS ? c->step.pos : NULL, row, n);
    FG_GPU_LAUNCH_CHECK(c, "add_rows");
    return FG_OK;
}

// ============================================================================ pool

// One block per sequence; each thread owns the columns tid, tid + blockDim.x, ...: it pools
// them (the mean summed in f32 over the sequence's rows, read in order), writes them, and
// adds their squares to the block's sum; the norm's reciprocal then rescales its own columns.
template <int kMode>
static __global__ void pool_kernel(char *dst, size_t dnb, const char *x, size_t xnb, int64_t n,
                                   const int32_t *seq_first, const int32_t *seq_n_tokens, int normalize) {
    __shared__ float sh[1024 / FG_WARP];
    const int64_t s = blockIdx.x;
    const int32_t first = seq_first[s], count = seq_n_tokens[s];
    float *d = (float *)(dst + (size_t)s * dnb);
    float ss = 0.0f;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
        float v;
        if (kMode == FG_POOL_MEAN) {
            float sum = 0.0f;
            for (int32_t t = 0; t < count; t++)
                sum += ((const float *)(x + (size_t)(first + t) * xnb))[i];
            v = sum / (float)count;
        } else {
            const int32_t t = kMode == FG_POOL_CLS ? first : first + count - 1;
            v = ((const float *)(x + (size_t)t * xnb))[i];
        }
        d[i] = v;
        ss += v * v;
    }
    if (!normalize) // block-uniform
        return;
    const float norm = sqrtf(fg_block_sum(ss, sh));
    const float inv = 1.0f / fmaxf(norm, 1e-12f);
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x)
        d[i] *= inv;
}

fg_status fg_cuda_pool(fg_cuda *c, fg_tensor *dst, const fg_tensor *x, fg_pool_mode mode, bool normalize) {
    FG_ASSERT(is_f32_rows(dst) && is_f32_rows(x));
    const int64_t n = x->ne[0];
    const int32_t n_seqs = c->step.n_seqs;
    FG_ASSERT(dst->ne[0] == n && dst->ne[1] == n_seqs && x->ne[1] == c->step.n_tokens);
    if (n == 0 || n_seqs == 0)
        return FG_OK;
    int threads = round_up(n, c->warp);
    threads = threads > 1024 ? 1024 : threads;
    char *dp = (char *)dst->data;
    const char *xp = (const char *)x->data;
    const int norm = normalize ? 1 : 0;
    switch (mode) {
    case FG_POOL_MEAN:
        pool_kernel<FG_POOL_MEAN><<<(unsigned)n_seqs, threads, 0, c->stream>>>(dp, dst->nb[1], xp, x->nb[1], n,
                                                                               c->step.seq_first,
                                                                               c->step.seq_n_tokens, norm);
        break;
    case FG_POOL_CLS:
        pool_kernel<FG_POOL_CLS><<<(unsigned)n_seqs, threads, 0, c->stream>>>(dp, dst->nb[1], xp, x->nb[1], n,
                                                                              c->step.seq_first,
                                                                              c->step.seq_n_tokens, norm);
        break;
    default:
        FG_ASSERT(mode == FG_POOL_LAST);
        pool_kernel<FG_POOL_LAST><<<(unsigned)n_seqs, threads, 0, c->stream>>>(dp, dst->nb[1], xp, x->nb[1], n,
                                                                               c->step.seq_first,
                                                                               c->step.seq_n_tokens, norm);
        break;
    }
    FG_GPU_LAUNCH_CHECK(c, "pool");
    return FG_OK;
}
