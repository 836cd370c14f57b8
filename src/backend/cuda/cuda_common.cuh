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

#endif // FG_BACKEND_CUDA_COMMON_CUH
