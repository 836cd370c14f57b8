// cuda_common.cuh - device helpers shared by the CUDA backend's kernels: warp and block
// reductions written against FG_WARP (never a literal 32), half conversions, and a grid-size
// helper. Header-only (static inline / __device__); included by the .cu files only.
#ifndef FG_BACKEND_CUDA_COMMON_CUH
#define FG_BACKEND_CUDA_COMMON_CUH

#include "backend/cuda/gpu_compat.h"
#include "quant/blocks.h"

#include <stddef.h>

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

// The reference's 8-bit activation grids (fg_quantize_row), shared by every kernel that writes
// them (convert, rmsnorm and swiglu into an activation type, the decode attention's output):
// Q8_1: d = amax / 127, q = nearest-even(x * (127 / amax)), s = f16(d * sum q); Q8_K: the
// element of largest |x| (the first of equals) sets iscale = -127 / x, q = nearest-even(iscale
// x) capped at 127, d = 1 / iscale; all zeros when amax is 0.
static __device__ __forceinline__ float fg_q8_1_id(float amax) { return amax != 0.0f ? 127.0f / amax : 0.0f; }
static __device__ __forceinline__ int fg_q8_1_q(float x, float id) { return __float2int_rn(fg_fmul_rn(x, id)); }
// d and s of a Q8_1 block (blk: its first byte) whose quants sum to qsum
static __device__ __forceinline__ void fg_q8_1_head(uint8_t *blk, float amax, int qsum) {
    const float d = amax / 127.0f;
    *(uint16_t *)(blk + offsetof(fg_block_q8_1, d)) = fg_f2h(d);
    *(uint16_t *)(blk + offsetof(fg_block_q8_1, s)) = fg_f2h(fg_fmul_rn(d, (float)qsum));
}
// whether (|x| oa at index oi) replaces (a at i) as the arg-max of |x|: ties to the lower index
static __device__ __forceinline__ bool fg_q8_k_takes(float oa, int oi, float a, int i) {
    return oa > a || (oa == a && oi < i);
}
static __device__ __forceinline__ float fg_q8_k_iscale(float amax, float xmax) {
    return amax != 0.0f ? -127.0f / xmax : 0.0f;
}
static __device__ __forceinline__ int fg_q8_k_q(float x, float iscale, float amax) {
    const int q = __float2int_rn(fg_fmul_rn(iscale, x));
    return amax != 0.0f ? (q < 127 ? q : 127) : 0;
}
static __device__ __forceinline__ float fg_q8_k_d(float amax, float iscale) { return amax != 0.0f ? 1.0f / iscale : 0.0f; }

// One Q8_K block from 256 values in shared memory (xs), by all threads of the block (a multiple
// of 32 of them, at most 512; xor shuffles below 32 stay inside a half of a 64-wide wavefront):
// the arg-max of |x| over 32-lane groups, then across them (sv, si: 16 slots), the quants (iq:
// 256 ints of scratch), the bsums of each 16. Every thread calls it; it ends with a barrier.
static inline __device__ void fg_q8_k_block(const float *xs, fg_block_q8_k *blk, float *sv, int *si, int *iq) {
    const int t = threadIdx.x, nt = blockDim.x;
    float a = -1.0f;
    int idx = 0;
    for (int i = t; i < 256; i += nt)
        if (fg_q8_k_takes(fabsf(xs[i]), i, a, idx)) {
            a = fabsf(xs[i]);
            idx = i;
        }
    for (int off = 16; off > 0; off >>= 1) {
        const float oa = fg_shfl_xor(a, off);
        const int oi = fg_shfl_xor(idx, off);
        if (fg_q8_k_takes(oa, oi, a, idx)) {
            a = oa;
            idx = oi;
        }
    }
    if (t % 32 == 0) {
        sv[t / 32] = a;
        si[t / 32] = idx;
    }
    __syncthreads();
    float amax = sv[0];
    int at = si[0];
    for (int k = 1; k < nt / 32; k++)
        if (fg_q8_k_takes(sv[k], si[k], amax, at)) {
            amax = sv[k];
            at = si[k];
        }
    const float iscale = fg_q8_k_iscale(amax, xs[at]);
    for (int i = t; i < 256; i += nt) {
        const int q = fg_q8_k_q(xs[i], iscale, amax);
        blk->qs[i] = (int8_t)q;
        iq[i] = q;
    }
    __syncthreads();
    if (t < 16) {
        int sum = 0;
        for (int k = 0; k < 16; k++)
            sum += iq[t * 16 + k];
        blk->bsums[t] = (int16_t)sum;
    }
    if (t == 0)
        blk->d = fg_q8_k_d(amax, iscale);
    __syncthreads(); // (sv, si, iq: free again)
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
