// cuda_common.cuh - device helpers shared by the CUDA backend's kernels: warp and block
// reductions written against FG_WARP (never a literal 32), half conversions, and a grid-size
// helper. Header-only (static inline / __device__); included by the .cu files only.
#ifndef FG_BACKEND_CUDA_COMMON_CUH
#define FG_BACKEND_CUDA_COMMON_CUH

#include "backend/cuda/gpu_compat.h"

static __device__ __forceinline__ float fg_warp_sum(float v) {
#pragma unroll
    for (int off = FG_WARP / 2; off > 0; off >>= 1)
        v += fg_shfl_xor(v, off);
    return v;
}

static __device__ __forceinline__ float fg_warp_max(float v) {
#pragma unroll
    for (int off = FG_WARP / 2; off > 0; off >>= 1)
        v = fmaxf(v, fg_shfl_xor(v, off));
    return v;
}

static __device__ __forceinline__ int fg_warp_sum_int(int v) {
#pragma unroll
    for (int off = FG_WARP / 2; off > 0; off >>= 1)
        v += fg_shfl_xor(v, off);
    return v;
}

// Sum over the whole block (blockDim.x a multiple of FG_WARP, at most 1024 threads); every
// thread gets the result. `sh` holds at least blockDim.x / FG_WARP floats.
static __device__ __forceinline__ float fg_block_sum(float v, float *sh) {
    const int lane = threadIdx.x % FG_WARP, w = threadIdx.x / FG_WARP, nw = blockDim.x / FG_WARP;
    v = fg_warp_sum(v);
    __syncthreads(); // sh may still be read by an earlier call
    if (lane == 0)
        sh[w] = v;
    __syncthreads();
    v = lane < nw ? sh[lane] : 0.0f;
    return fg_warp_sum(v);
}

static __device__ __forceinline__ float fg_block_max(float v, float *sh) {
    const int lane = threadIdx.x % FG_WARP, w = threadIdx.x / FG_WARP, nw = blockDim.x / FG_WARP;
    v = fg_warp_max(v);
    __syncthreads();
    if (lane == 0)
        sh[w] = v;
    __syncthreads();
    v = lane < nw ? sh[lane] : -INFINITY;
    return fg_warp_max(v);
}

// Rope (rope and the fused rope_kv_store): the angles of a token's `half` pairs into cs[0..half)
// (cos) and cs[half..2 half) (sin), by the block's threads: theta_i = pos * theta_scale^i by i
// float multiplications in order (exactly the CPU's rounding), th = freq_scale * (theta_i / ff[i]).
static __device__ __forceinline__ void fg_rope_angles(float *cs, int half, int32_t pos, const float *ff,
                                                      float theta_scale, float freq_scale) {
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
        float theta = (float)pos;
        for (int j = 0; j < i; j++)
            theta *= theta_scale;
        const float f = ff ? ff[i] : 1.0f;
        const float th = freq_scale * (theta / f);
        cs[i] = cosf(th);
        cs[half + i] = sinf(th);
    }
}
// One rotated pair, (x0 c - x1 s, x0 s + x1 c), without contractions (the reference's roundings;
// every rope of the backend goes through it, so the fused and the separate ropes agree bit for bit).
static __device__ __forceinline__ void fg_rope_pair(float &x0, float &x1, float c, float s) {
    const float a = x0, b = x1;
    x0 = fg_fsub_rn(fg_fmul_rn(a, c), fg_fmul_rn(b, s));
    x1 = fg_fadd_rn(fg_fmul_rn(a, s), fg_fmul_rn(b, c));
}
// Rotates every (head, pair) of one row in place with the angles of fg_rope_angles (NORMAL:
// pairs (2i, 2i + 1); NEOX: (i, i + half)), by the block's threads.
static __device__ __forceinline__ void fg_rope_row(float *row, int n_head, int head_dim, int half, int neox,
                                                   const float *cs) {
    const float *sn = cs + half;
    const int n_pairs = n_head * half;
    for (int k = threadIdx.x; k < n_pairs; k += blockDim.x) {
        const int h = k / half, i = k - h * half;
        float *v = row + (size_t)h * head_dim;
        const int i0 = neox ? i : 2 * i, i1 = neox ? i + half : 2 * i + 1;
        fg_rope_pair(v[i0], v[i1], cs[i], sn[i]);
    }
}

// IEEE half bits <-> float (round to nearest even), as base/half.h does on the host.
static __device__ __forceinline__ float fg_h2f(uint16_t h) {
    return __half2float(__ushort_as_half(h));
}
static __device__ __forceinline__ uint16_t fg_f2h(float f) {
    return __half_as_ushort(__float2half_rn(f));
}
// bfloat16 bits -> float (exact)
static __device__ __forceinline__ float fg_bf2f(uint16_t h) {
    return __uint_as_float((uint32_t)h << 16);
}

static inline unsigned fg_div_up(int64_t a, int64_t b) { return (unsigned)((a + b - 1) / b); }

// silu(g) * u: the one expression of the swiglu op and of the conversions that apply it first
static __device__ __forceinline__ float fg_swiglu(float g, float u) { return (g / (1.0f + expf(-g))) * u; }

// An F32 row source for the conversions: x, or silu(x) * u when u is set (swiglu into an
// activation type)
struct fg_src_rows {
    const uint8_t *x, *u;
    size_t x_nb1, u_nb1;
    __device__ __forceinline__ float at(int64_t r, int64_t i) const {
        const float v = ((const float *)(x + (size_t)r * x_nb1))[i];
        return u ? fg_swiglu(v, ((const float *)(u + (size_t)r * u_nb1))[i]) : v;
    }
};

#endif // FG_BACKEND_CUDA_COMMON_CUH
