// cuda_ops.cu - the CUDA backend's row-wise ops: rmsnorm (also per head, on strided 3-D
// views), add, swiglu, rope (NORMAL and NEOX, partial rotary dims, frequency factors),
// gather_out (in place too), check_finite (the step's first non-finite value, no host sync)
// and the fused add_rmsnorm. Numerics follow src/backend/cpu/cpu_ops.c: silu with expf,
// 1 / sqrtf(mean + eps), (x * scale) * w, rope angles by repeated float multiplication as
// the CPU (and ggml's CPU rope) computes them. Not here: matmul, attention, KV (their files).
// Who calls it: the ops table in cuda_backend.cu. Launchers trust their arguments (backend.c
// validated them); launch geometry uses the device's warp width (c->warp), kernels FG_WARP.
#include "backend/cuda/cuda_common.cuh"
#include "backend/cuda/cuda_internal.h"
#include "quant/blocks.h"

#include <math.h>

// Rows of a tensor of up to 4 dims, F32 elements contiguous within a row: flat row index
// r = i1 + ne1 * (i2 + ne2 * i3) lives at p + i1 * nb1 + i2 * nb2 + i3 * nb3.
typedef struct rows_view {
    char *p;
    int64_t ne1, ne2;
    size_t nb1, nb2, nb3;
} rows_view;

static rows_view rows_of(const fg_tensor *t) {
    rows_view v;
    v.p = (char *)t->data;
    v.ne1 = t->ne[1];
    v.ne2 = t->ne[2];
    v.nb1 = t->nb[1];
    v.nb2 = t->nb[2];
    v.nb3 = t->nb[3];
    return v;
}

static int64_t n_rows_of(const fg_tensor *t) { return t->ne[1] * t->ne[2] * t->ne[3]; }

static __device__ __forceinline__ float *row_ptr(const rows_view &v, int64_t r) {
    if (v.ne1 == 1 && v.ne2 == 1) // the common 2-D shapes skip the divisions
        return (float *)(v.p + (size_t)r * v.nb3);
    const int64_t i1 = r % v.ne1, t = r / v.ne1;
    const int64_t i2 = t % v.ne2, i3 = t / v.ne2;
    return (float *)(v.p + (size_t)i1 * v.nb1 + (size_t)i2 * v.nb2 + (size_t)i3 * v.nb3);
}

// 2-D tensors ([rows][cols], ne2 = ne3 = 1) have nb3 unused; rows_view's fast path indexes by
// nb3 when ne1 = ne2 = 1, so make every flat row index go through nb1 for 2-D shapes.
static rows_view rows_flat(const fg_tensor *t) {
    rows_view v = rows_of(t);
    if (t->ne[2] == 1 && t->ne[3] == 1) {
        v.ne1 = 1;
        v.ne2 = 1;
        v.nb3 = t->nb[1];
    }
    return v;
}

static int round_up(int64_t n, int m) { return (int)(((n + m - 1) / m) * m); }

static bool is_f32_rows(const fg_tensor *t) { return t && t->data && t->type == FG_TYPE_F32 && t->nb[0] == 4; }
// F32 rows whose every row starts 16-byte aligned (float4 access)
static bool is_f32_rows_a16(const fg_tensor *t) {
    return is_f32_rows(t) && ((uintptr_t)t->data | t->nb[1] | t->nb[2] | t->nb[3]) % 16 == 0;
}

// ============================================================================ rmsnorm

// One warp per row (n <= FG_NORM_WARP_MAX) or one block per row. kAdd: x = x + a first (the
// fused add_rmsnorm); dst = x / sqrt(mean(x^2) + eps) (* w). dst may alias x: every element is
// read by the thread that writes it, after the row's sum is complete.
#define FG_NORM_WARP_MAX 1024

template <bool kAdd>
static __global__ void rmsnorm_warp_kernel(rows_view dst, rows_view x, rows_view a, const float *w, int n,
                                           int64_t n_rows, float eps) {
    fg_pdl_wait(); // PDL: the earlier kernels' outputs are visible from here
    fg_pdl_trigger();
    const int lane = threadIdx.x % FG_WARP;
    const int64_t r = (int64_t)blockIdx.x * (blockDim.x / FG_WARP) + threadIdx.x / FG_WARP;
    if (r >= n_rows) // warp-uniform: the whole warp leaves together
        return;
    float *xr = row_ptr(x, r);
    float *yr = row_ptr(dst, r);
    float sum = 0.0f;
    if (kAdd) {
        const float *ar = row_ptr(a, r);
        for (int i = lane; i < n; i += FG_WARP) {
            const float v = xr[i] + ar[i];
            xr[i] = v;
            sum += v * v;
        }
    } else {
        for (int i = lane; i < n; i += FG_WARP) {
            const float v = xr[i];
            sum += v * v;
        }
    }
    sum = fg_warp_sum(sum);
    const float mean = sum / (float)n;
    const float scale = 1.0f / sqrtf(mean + eps);
    if (w) {
        for (int i = lane; i < n; i += FG_WARP)
            yr[i] = (xr[i] * scale) * w[i];
    } else {
        for (int i = lane; i < n; i += FG_WARP)
            yr[i] = xr[i] * scale;
    }
}

template <bool kAdd>
static __global__ void rmsnorm_block_kernel(rows_view dst, rows_view x, rows_view a, const float *w, int64_t n,
                                            float eps) {
    __shared__ float sh[1024 / FG_WARP];
    fg_pdl_wait(); // PDL: the earlier kernels' outputs are visible from here
    fg_pdl_trigger();
    const int64_t r = blockIdx.x;
    float *xr = row_ptr(x, r);
    float *yr = row_ptr(dst, r);
    float sum = 0.0f;
    if (kAdd) {
        const float *ar = row_ptr(a, r);
        for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
            const float v = xr[i] + ar[i];
            xr[i] = v;
            sum += v * v;
        }
    } else {
        for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
            const float v = xr[i];
            sum += v * v;
        }
    }
    sum = fg_block_sum(sum, sh);
    const float mean = sum / (float)n;
    const float scale = 1.0f / sqrtf(mean + eps);
    if (w) {
        for (int64_t i = threadIdx.x; i < n; i += blockDim.x)
            yr[i] = (xr[i] * scale) * w[i];
    } else {
        for (int64_t i = threadIdx.x; i < n; i += blockDim.x)
            yr[i] = xr[i] * scale;
    }
}

// Rows of n = 4 k elements (16-byte aligned) up to 4 * 4 * 1024: each thread reads its float4s
// of the row once into registers (up to RMS_V of them), so the row is read from memory once
// and the block's chain of dependent loads is one deep (a one-row rmsnorm in decode is latency).
#define RMS_V 4
// The normed row straight into an activation type (OUT: Q8_K, Q8_1, F16, BF16; F32 writes dst
// as before): the values are the F32 ones, converted exactly as the convert kernels do
// (cvt_q8_k_kernel, cvt_q8_1_kernel, cvt_half_kernel), so the bytes equal rmsnorm + convert.
// A Q8_K block is 64 float4s: 64 consecutive threads of one k (blockDim a multiple of 64), its
// arg-max met in two 32-lane halves through shared memory; a Q8_1 block is 8 lanes.
struct norm_act {
    uint8_t *y; // activation rows, y_nb1 bytes apart
    size_t y_nb1;
    int w_late; // the norm weights read after the PDL wait (FORGE_CUDA_NORM_W_EARLY=0), else before it
};

static __device__ __forceinline__ void norm_argmax(float &am, int &ai, float &mv, float oa, int oi, float ov) {
    if (fg_q8_k_takes(oa, oi, am, ai)) {
        am = oa;
        ai = oi;
        mv = ov;
    }
}

template <int OUT>
static __device__ __forceinline__ void norm_put(const norm_act &y, int64_t r, int i, bool ok, const float4 &o,
                                                float *s_a, int *s_i, float *s_v) {
    uint8_t *yr = y.y + (size_t)r * y.y_nb1;
    const float e[4] = {o.x, o.y, o.z, o.w};
    if constexpr (OUT == FG_TYPE_Q8_K) {
        // arg-max of |x| over the 256 elements, ties to the lowest index (lanes of invalid
        // float4s hold zeros and sit in whole invalid blocks)
        float am = fabsf(e[0]), mv = e[0];
        int ai = 4 * i;
        for (int c = 1; c < 4; c++)
            norm_argmax(am, ai, mv, fabsf(e[c]), 4 * i + c, e[c]);
        for (int off = 16; off > 0; off >>= 1) {
            const float oa = fg_shfl_xor(am, off), ov = fg_shfl_xor(mv, off);
            const int oi = fg_shfl_xor(ai, off);
            norm_argmax(am, ai, mv, oa, oi, ov);
        }
        const int h = threadIdx.x / 32;
        if (threadIdx.x % 32 == 0) {
            s_a[h] = am;
            s_i[h] = ai;
            s_v[h] = mv;
        }
        __syncthreads();
        norm_argmax(am, ai, mv, s_a[h ^ 1], s_i[h ^ 1], s_v[h ^ 1]);
        __syncthreads(); // (the next k reuses the slots)
        const float iscale = fg_q8_k_iscale(am, mv);
        int q[4];
        for (int c = 0; c < 4; c++)
            q[c] = fg_q8_k_q(e[c], iscale, am);
        int sum = q[0] + q[1] + q[2] + q[3];
        sum += fg_shfl_xor(sum, 1);
        sum += fg_shfl_xor(sum, 2);
        if (ok) {
            fg_block_q8_k *blk = (fg_block_q8_k *)yr + i / 64;
            *(uint32_t *)&blk->qs[4 * (i % 64)] =
                (uint32_t)(uint8_t)q[0] | (uint32_t)(uint8_t)q[1] << 8 | (uint32_t)(uint8_t)q[2] << 16 |
                (uint32_t)(uint8_t)q[3] << 24;
            if (i % 4 == 0)
                blk->bsums[(i % 64) / 4] = (int16_t)sum;
            if (i % 64 == 0)
                blk->d = fg_q8_k_d(am, iscale);
        }
    } else if constexpr (OUT == FG_TYPE_Q8_1) {
        float am = fmaxf(fmaxf(fabsf(e[0]), fabsf(e[1])), fmaxf(fabsf(e[2]), fabsf(e[3])));
        for (int off = 1; off < 8; off <<= 1)
            am = fmaxf(am, fg_shfl_xor(am, off));
        const float id = fg_q8_1_id(am);
        int q[4];
        for (int c = 0; c < 4; c++)
            q[c] = fg_q8_1_q(e[c], id);
        int sum = q[0] + q[1] + q[2] + q[3];
        for (int off = 1; off < 8; off <<= 1)
            sum += fg_shfl_xor(sum, off);
        if (ok) {
            uint8_t *blk = yr + (size_t)(i / 8) * sizeof(fg_block_q8_1);
            *(uint32_t *)(blk + offsetof(fg_block_q8_1, qs) + 4 * (i % 8)) =
                (uint32_t)(uint8_t)q[0] | (uint32_t)(uint8_t)q[1] << 8 | (uint32_t)(uint8_t)q[2] << 16 |
                (uint32_t)(uint8_t)q[3] << 24;
            if (i % 8 == 0)
                fg_q8_1_head(blk, am, sum);
        }
    } else {
        static_assert(OUT == FG_TYPE_F16 || OUT == FG_TYPE_BF16, "rmsnorm into F16/BF16/Q8_1/Q8_K");
        if (ok) {
            uint16_t hv[4];
            for (int c = 0; c < 4; c++)
                hv[c] = OUT == FG_TYPE_BF16 ? fg_f32_to_bf16(e[c]) : fg_f2h(e[c]);
            *(uint2 *)(yr + (size_t)8 * i) =
                make_uint2((uint32_t)hv[0] | (uint32_t)hv[1] << 16, (uint32_t)hv[2] | (uint32_t)hv[3] << 16);
        }
    }
}

template <bool kAdd, int OUT = FG_TYPE_F32>
static __global__ void rmsnorm_vec_kernel(rows_view dst, rows_view x, rows_view a, const float *w, int n4,
                                          float eps, norm_act y) {
    __shared__ float sh[1024 / FG_WARP];
    __shared__ float s_a[32], s_v[32];
    __shared__ int s_i[32];
    // the norm's weights before the PDL wait (a weight: no op of the step writes it), so that
    // their load is not one more memory round trip after the row's
    float4 wv[RMS_V];
    if (y.w_late)
        fg_pdl_wait();
#pragma unroll
    for (int k = 0; k < RMS_V; k++) {
        const int i = threadIdx.x + k * blockDim.x;
        wv[k] = w && i < n4 ? ((const float4 *)w)[i] : make_float4(1.0f, 1.0f, 1.0f, 1.0f);
    }
    fg_pdl_wait(); // PDL: the earlier kernels' outputs are visible from here
    fg_pdl_trigger();
    const int64_t r = blockIdx.x;
    float4 *xr = (float4 *)row_ptr(x, r);
    float4 *yr = (float4 *)row_ptr(dst, r);
    const float4 *ar = kAdd ? (const float4 *)row_ptr(a, r) : NULL;
    float4 v[RMS_V];
    float sum = 0.0f;
#pragma unroll
    for (int k = 0; k < RMS_V; k++) {
        const int i = threadIdx.x + k * blockDim.x;
        v[k] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        if (i < n4) {
            v[k] = xr[i];
            if (kAdd) {
                const float4 b = ar[i];
                v[k].x += b.x;
                v[k].y += b.y;
                v[k].z += b.z;
                v[k].w += b.w;
                xr[i] = v[k];
            }
            sum += v[k].x * v[k].x;
            sum += v[k].y * v[k].y;
            sum += v[k].z * v[k].z;
            sum += v[k].w * v[k].w;
        }
    }
    sum = fg_block_sum(sum, sh);
    const float mean = sum / (float)(4 * n4);
    const float scale = 1.0f / sqrtf(mean + eps);
#pragma unroll
    for (int k = 0; k < RMS_V; k++) {
        const int i = threadIdx.x + k * blockDim.x;
        if (OUT != FG_TYPE_F32 && k * (int)blockDim.x >= n4)
            continue; // uniform (not break: loops with early exits are not unrolled)
        float4 o = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        if (i < n4) {
            o = make_float4(v[k].x * scale, v[k].y * scale, v[k].z * scale, v[k].w * scale);
            if (w) {
                o.x *= wv[k].x;
                o.y *= wv[k].y;
                o.z *= wv[k].z;
                o.w *= wv[k].w;
            }
        }
        if constexpr (OUT == FG_TYPE_F32) {
            if (i < n4)
                yr[i] = o;
        } else {
            norm_put<OUT>(y, r, i, i < n4, o, s_a, s_i, s_v);
        }
    }
}

template <bool kAdd>
static fg_status launch_rmsnorm(fg_cuda *c, const char *what, fg_tensor *dst, const fg_tensor *x,
                                const fg_tensor *a, const fg_tensor *w, float eps) {
    FG_ASSERT(is_f32_rows(dst) && is_f32_rows(x) && (!kAdd || is_f32_rows(a)));
    FG_ASSERT(!w || (w->data && w->type == FG_TYPE_F32 && w->ne[0] >= x->ne[0]));
    const int64_t n = x->ne[0], n_rows = n_rows_of(x);
    FG_ASSERT(n_rows_of(dst) == n_rows && dst->ne[0] == n);
    if (n == 0 || n_rows == 0)
        return FG_OK;
    const rows_view vd = rows_flat(dst), vx = rows_flat(x), va = kAdd ? rows_flat(a) : vx;
    const float *wp = w ? (const float *)w->data : NULL;
    if (n <= FG_NORM_WARP_MAX) {
        const int rows_per_block = 4;
        const unsigned grid = fg_div_up(n_rows, rows_per_block);
        fg_launch(c->pdl, rmsnorm_warp_kernel<kAdd>, grid, rows_per_block * c->warp, 0, c->stream, vd, vx, va, wp, (int)n,
                  n_rows, eps);
    } else if (n % 4 == 0 && n <= 4 * RMS_V * 1024 && is_f32_rows_a16(dst) && is_f32_rows_a16(x) &&
               (!kAdd || is_f32_rows_a16(a)) && (!wp || (uintptr_t)wp % 16 == 0)) {
        const int64_t n4 = n / 4;
        int threads = round_up((n4 + 1) / 2, c->warp); // two float4s a thread where the block allows
        threads = threads > 1024 ? 1024 : threads;
        fg_launch(c->pdl, rmsnorm_vec_kernel<kAdd>, (unsigned)n_rows, threads, 0, c->stream, vd, vx, va, wp, (int)n4, eps,
                  norm_act{NULL, 0, c->norm_w_late});
    } else {
        int threads = round_up((n + 7) / 8, c->warp);
        threads = threads > 1024 ? 1024 : threads;
        fg_launch(c->pdl, rmsnorm_block_kernel<kAdd>, (unsigned)n_rows, threads, 0, c->stream, vd, vx, va, wp, n, eps);
    }
    FG_GPU_LAUNCH_CHECK(c, what);
    return FG_OK;
}

// rmsnorm straight into an activation type: one kernel where the F32 op takes the float4
// kernel (rows of 4n floats, 1,024 < n <= 4 RMS_V 1024, 16-byte aligned) with the same block
// (so the row's sum of squares, and every byte, equal rmsnorm + convert), whole Q8_K blocks
// per k for Q8_K; else the F32 rows in the per-op scratch, then convert.
template <int OUT> static void launch_norm_act(fg_cuda *c, const rows_view &vx, const float *wp, int n4, int64_t rows,
                                               int threads, float eps, norm_act y) {
    fg_launch(c->pdl, rmsnorm_vec_kernel<false, OUT>, (unsigned)rows, threads, 0, c->stream, vx, vx, vx, wp, n4, eps, y);
}

fg_status fg_cuda_rmsnorm(fg_cuda *c, fg_tensor *dst, const fg_tensor *x, const fg_tensor *w, float eps) {
    if (dst->type == FG_TYPE_F32)
        return launch_rmsnorm<false>(c, "rmsnorm", dst, x, NULL, w, eps);
    const uint32_t at = dst->type;
    FG_ASSERT(fg_cuda_convert_supports(at) && is_f32_rows(x) && x->ne[2] == 1 && x->ne[3] == 1);
    const int64_t n = x->ne[0], rows = x->ne[1];
    const float *wp = w ? (const float *)w->data : NULL;
    const int64_t n4 = n / 4;
    int threads = round_up((n4 + 1) / 2, c->warp); // as launch_rmsnorm
    threads = threads > 1024 ? 1024 : threads;
    if (n > FG_NORM_WARP_MAX && n % 4 == 0 && n <= 4 * RMS_V * 1024 && is_f32_rows_a16(x) &&
        (!wp || (uintptr_t)wp % 16 == 0) && (at != FG_TYPE_Q8_K || threads % 64 == 0) && rows <= INT32_MAX) {
        const norm_act y = {(uint8_t *)dst->data, dst->nb[1], c->norm_w_late};
        const rows_view vx = rows_flat(x);
        if (at == FG_TYPE_Q8_K)
            launch_norm_act<FG_TYPE_Q8_K>(c, vx, wp, (int)n4, rows, threads, eps, y);
        else if (at == FG_TYPE_Q8_1)
            launch_norm_act<FG_TYPE_Q8_1>(c, vx, wp, (int)n4, rows, threads, eps, y);
        else if (at == FG_TYPE_F16)
            launch_norm_act<FG_TYPE_F16>(c, vx, wp, (int)n4, rows, threads, eps, y);
        else
            launch_norm_act<FG_TYPE_BF16>(c, vx, wp, (int)n4, rows, threads, eps, y);
        FG_GPU_LAUNCH_CHECK(c, "rmsnorm into an activation type");
        return FG_OK;
    }
    void *f = NULL;
    FG_TRY(fg_cuda_op_scratch(c, (size_t)n * (size_t)rows * sizeof(float), &f));
    int64_t ne[2] = {n, rows};
    fg_tensor xf = fg_tensor_view(NULL, f, 0, FG_TYPE_F32, 2, ne);
    FG_TRY(launch_rmsnorm<false>(c, "rmsnorm", &xf, x, NULL, w, eps));
    return fg_cuda_convert_src(c, dst, &xf, NULL);
}

fg_status fg_cuda_add_rmsnorm(fg_cuda *c, fg_tensor *x, fg_tensor *xn, const fg_tensor *a, const fg_tensor *w,
                              float eps) {
    return launch_rmsnorm<true>(c, "add_rmsnorm", xn, x, a, w, eps);
}

// ============================================================================ add, swiglu

enum { EW_ADD, EW_SWIGLU };

// blockIdx.x: the row; blockIdx.y and a stride loop: the columns. Each element is read and
// written by one thread, so dst may alias a or b.
template <int kOp>
static __global__ void ew_kernel(rows_view d, rows_view a, rows_view b, int64_t n) {
    fg_pdl_wait(); // PDL: the earlier kernels' outputs are visible from here
    fg_pdl_trigger();
    const int64_t r = blockIdx.x;
    float *dr = row_ptr(d, r);
    const float *ar = row_ptr(a, r), *br = row_ptr(b, r);
    for (int64_t i = (int64_t)blockIdx.y * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.y * blockDim.x) {
        const float x = ar[i], y = br[i];
        if (kOp == EW_ADD)
            dr[i] = x + y;
        else
            dr[i] = fg_swiglu(x, y);
    }
}

template <int kOp>
static fg_status launch_ew(fg_cuda *c, const char *what, fg_tensor *dst, const fg_tensor *a, const fg_tensor *b) {
    FG_ASSERT(is_f32_rows(dst) && is_f32_rows(a) && is_f32_rows(b));
    const int64_t n = a->ne[0], n_rows = n_rows_of(a);
    FG_ASSERT(b->ne[0] == n && dst->ne[0] == n && n_rows_of(b) == n_rows && n_rows_of(dst) == n_rows);
    if (n == 0 || n_rows == 0)
        return FG_OK;
    const int threads = n >= 256 ? 256 : round_up(n, c->warp);
    const unsigned chunks = fg_div_up(n, threads);
    dim3 grid((unsigned)n_rows, chunks > 65535 ? 65535 : chunks);
    fg_launch(c->pdl, ew_kernel<kOp>, grid, threads, 0, c->stream, rows_flat(dst), rows_flat(a), rows_flat(b), n);
    FG_GPU_LAUNCH_CHECK(c, what);
    return FG_OK;
}

fg_status fg_cuda_add(fg_cuda *c, fg_tensor *dst, const fg_tensor *a, const fg_tensor *b) {
    return launch_ew<EW_ADD>(c, "add", dst, a, b);
}

fg_status fg_cuda_swiglu(fg_cuda *c, fg_tensor *dst, const fg_tensor *gate, const fg_tensor *up) {
    if (dst->type != FG_TYPE_F32) // straight into a matmul's activation type
        return fg_cuda_convert_src(c, dst, gate, up);
    return launch_ew<EW_SWIGLU>(c, "swiglu", dst, gate, up);
}

// ============================================================================ rope

// One block per token: the token's angles (fg_rope_angles), then every (head, pair) rotated in
// place (fg_rope_row); dims n_rot..head_dim-1 are not touched.
static __global__ void rope_kernel(char *x, size_t nb1, int n_head, int head_dim, int half, int neox,
                                   const int32_t *pos, const float *ff, float theta_scale, float freq_scale) {
    extern __shared__ float rope_sh[]; // [2 * half]: cos, then sin
    const int64_t t = blockIdx.x;
    fg_rope_angles(rope_sh, half, pos[t], ff, theta_scale, freq_scale);
    __syncthreads();
    fg_rope_row((float *)(x + (size_t)t * nb1), n_head, head_dim, half, neox, rope_sh);
}

fg_status fg_cuda_rope(fg_cuda *c, fg_tensor *x, const fg_rope_params *p) {
    FG_ASSERT(is_f32_rows(x) && p);
    FG_ASSERT(p->n_rot >= 2 && p->n_rot % 2 == 0 && p->n_rot <= p->head_dim && p->n_head >= 1);
    FG_ASSERT(x->ne[0] >= (int64_t)p->n_head * p->head_dim);
    FG_ASSERT(p->mode == FG_ROPE_NORMAL || p->mode == FG_ROPE_NEOX);
    const int64_t n_tokens = x->ne[1];
    FG_ASSERT(n_tokens <= c->step.n_tokens);
    if (n_tokens == 0)
        return FG_OK;
    const float *ff = NULL;
    if (p->freq_factors) {
        FG_ASSERT(p->freq_factors->type == FG_TYPE_F32 && p->freq_factors->ne[0] >= p->n_rot / 2);
        ff = (const float *)p->freq_factors->data;
    }
    // the same float as the CPU's powf (host libm), so theta_i rounds identically
    const float theta_scale = powf(p->freq_base, -2.0f / (float)p->n_rot);
    const int half = p->n_rot / 2, n_pairs = p->n_head * half;
    const int threads = n_pairs >= 256 ? 256 : round_up(n_pairs, c->warp);
    const size_t smem = 2 * (size_t)half * sizeof(float);
    rope_kernel<<<(unsigned)n_tokens, threads, smem, c->stream>>>((char *)x->data, x->nb[1], p->n_head, p->head_dim,
                                                                  half, p->mode == FG_ROPE_NEOX, c->step.pos, ff,
                                                                  theta_scale, p->freq_scale);
    FG_GPU_LAUNCH_CHECK(c, "rope");
    return FG_OK;
}

// ============================================================================ gather_out

// dst and src disjoint: every output row in parallel.
static __global__ void gather_rows_kernel(char *dst, size_t dnb1, const char *src, size_t snb1,
                                          const int32_t *out_rows, int64_t n) {
    fg_pdl_wait(); // PDL: the earlier kernels' outputs are visible from here
    fg_pdl_trigger();
    const int64_t i = blockIdx.x;
    const float *s = (const float *)(src + (size_t)out_rows[i] * snb1);
    float *d = (float *)(dst + (size_t)i * dnb1);
    for (int64_t k = (int64_t)blockIdx.y * blockDim.x + threadIdx.x; k < n; k += (int64_t)gridDim.y * blockDim.x)
        d[k] = s[k];
}

// In place (dst = src, same row stride). Output i reads row out_rows[i] >= i, and a row j is
// only read by outputs i <= j (out_rows ascends), so processing outputs in increasing order
// never reads a row already overwritten. Every column belongs to one thread for all rows, so
// the order is a per-thread program order and needs no synchronisation. Outputs are taken
// GATHER_ILP at a time, all loads before all stores (loads in flight together): a chunk
// i0.. loads rows out_rows[i0..] >= i0, which earlier chunks (writing rows < i0) left intact,
// and writes rows i0.., which later chunks never read.
#define GATHER_ILP 8
static __global__ void gather_inplace_kernel(char *x, size_t nb1, const int32_t *out_rows, int n_out, int64_t n) {
    const int64_t k = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (k >= n)
        return;
    for (int i0 = 0; i0 < n_out; i0 += GATHER_ILP) {
        const int m = n_out - i0 < GATHER_ILP ? n_out - i0 : GATHER_ILP;
        float v[GATHER_ILP];
#pragma unroll
        for (int u = 0; u < GATHER_ILP; u++)
            if (u < m)
                v[u] = ((const float *)(x + (size_t)out_rows[i0 + u] * nb1))[k];
#pragma unroll
        for (int u = 0; u < GATHER_ILP; u++)
            if (u < m)
                ((float *)(x + (size_t)(i0 + u) * nb1))[k] = v[u];
    }
}

fg_status fg_cuda_gather_out(fg_cuda *c, fg_tensor *dst, const fg_tensor *src) {
    FG_ASSERT(is_f32_rows(dst) && is_f32_rows(src));
    const int64_t n = src->ne[0];
    const int32_t n_out = c->step.n_out;
    FG_ASSERT(dst->ne[0] == n && dst->ne[1] >= n_out);
    if (n_out == 0 || n == 0)
        return FG_OK;
    const char *d0 = (const char *)dst->data, *s0 = (const char *)src->data;
    const size_t d_bytes = (size_t)(n_out - 1) * dst->nb[1] + (size_t)n * 4;
    const size_t s_bytes = fg_tensor_nbytes(src);
    const bool overlap = d0 < s0 + s_bytes && s0 < d0 + d_bytes;
    if (!overlap) {
        const int threads = n >= 256 ? 256 : round_up(n, c->warp);
        const unsigned chunks = fg_div_up(n, threads);
        dim3 grid((unsigned)n_out, chunks > 65535 ? 65535 : chunks);
        fg_launch(c->pdl, gather_rows_kernel, grid, threads, 0, c->stream, (char *)dst->data, dst->nb[1], s0,
                  src->nb[1], c->step.out_rows, n);
    } else {
        if (d0 != s0 || dst->nb[1] != src->nb[1])
            return fg_fail(FG_ERR_INVALID_ARG,
                           "gather_out: dst overlaps src without being the same rows (offset %lld, row strides %zu and %zu)",
                           (long long)(d0 - s0), dst->nb[1], src->nb[1]);
        const int threads = 256;
        gather_inplace_kernel<<<fg_div_up(n, threads), threads, 0, c->stream>>>((char *)dst->data, dst->nb[1],
                                                                               c->step.out_rows, n_out, n);
    }
    FG_GPU_LAUNCH_CHECK(c, "gather_out");
    return FG_OK;
}

// ============================================================================ check_finite

// Every non-finite element proposes its key (row << 32 | col) to the step's result word with
// atomicMin; a later, single-thread kernel copies the value at the winning key if that key
// lies in this tensor (a key only decreases, and each check_finite writes the value only for
// its own rows, so the value always matches the final key).
static __global__ void check_finite_kernel(rows_view x, int64_t n, int64_t row0, unsigned long long *key) {
    const int64_t r = blockIdx.x;
    const float *xr = row_ptr(x, r);
    const unsigned long long row_key = (unsigned long long)(row0 + r) << 32;
    for (int64_t i = (int64_t)blockIdx.y * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.y * blockDim.x) {
        if (!isfinite(xr[i])) {
            const unsigned long long k = row_key | (unsigned long long)i;
            if (k < *(volatile unsigned long long *)key) // cheap filter; atomicMin decides
                atomicMin(key, k);
            return; // later columns of this thread have larger keys
        }
    }
}

static __global__ void check_finite_value_kernel(rows_view x, int64_t n, int64_t n_rows, int64_t row0,
                                                 const unsigned long long *key, uint32_t *value) {
    const unsigned long long k = *key;
    if (k == FG_CUDA_BAD_NONE)
        return;
    const int64_t row = (int64_t)(k >> 32), col = (int64_t)(k & 0xffffffffu);
    if (row < row0 || row >= row0 + n_rows || col >= n)
        return;
    const float v = row_ptr(x, row - row0)[col];
    if (!isfinite(v))
        *value = __float_as_uint(v);
}

fg_status fg_cuda_check_finite(fg_cuda *c, const fg_tensor *x, int64_t row0) {
    FG_ASSERT(is_f32_rows(x) && row0 >= 0);
    const int64_t n = x->ne[0], n_rows = n_rows_of(x);
    if (n == 0 || n_rows == 0)
        return FG_OK;
    FG_ASSERT(row0 + n_rows <= (int64_t)0xffffffff && n <= (int64_t)0xffffffff); // key fields
    const rows_view v = rows_flat(x);
    unsigned long long *key = (unsigned long long *)c->d_bad;
    uint32_t *value = (uint32_t *)(c->d_bad + 2);
    const int threads = n >= 256 ? 256 : round_up(n, c->warp);
    const unsigned chunks = fg_div_up(n, threads);
    dim3 grid((unsigned)n_rows, chunks > 65535 ? 65535 : chunks);
    check_finite_kernel<<<grid, threads, 0, c->stream>>>(v, n, row0, key);
    FG_GPU_LAUNCH_CHECK(c, "check_finite");
    check_finite_value_kernel<<<1, 1, 0, c->stream>>>(v, n, n_rows, row0, key, value);
    FG_GPU_LAUNCH_CHECK(c, "check_finite (value)");
    return FG_OK;
}
