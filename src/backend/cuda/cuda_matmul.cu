// cuda_matmul.cu - get_rows, convert and matmul for the 14 weight types (F32 F16 BF16 Q4_0 Q4_1
// Q5_0 Q5_1 Q8_0 Q2_K Q3_K Q4_K Q5_K Q6_K MXFP4), one source for CUDA and HIP. Weights stay in
// their GGUF layout (no repacking). Per-type block decoders: cuda_quant.cuh. cuBLAS (the library
// GEMM of many rows) at the end, NVIDIA only.
// Called through the launchers declared in cuda_internal.h (the ops table in cuda_backend.cu).
//
// Activation types (act_type), chosen so the forward pass converts a normed row once:
//   quantized weights, any row count:  the reference's 8-bit grid (Q8_K for the K-quants, Q8_1
//                                      for the others): integer dot products (dp4a) in the
//                                      matvec; the GEMMs (rows > FG_MV_MAX_ROWS) widen the 8-bit
//                                      rows to F16 (d*q rounded to F16, rel. error <= 2^-11).
//   float weights: F32 for the matvec (f32 FMA) and F32 weights, F16/BF16 for the GEMMs.
// matmul also takes F32 x for every type and row count (converted first into the mm arena),
// and F16 x with any row count (tiled kernel).
//
// Matvec (1..8 rows), quantized types: the direct kernel (mw, below: each block owns 2 or 4
// weight rows, K split over its 128 threads, operands read straight from global memory).
// Staged matvec (float types; the quantized ones with FORGE_CUDA_MV=staged): a block of NT threads owns MV_R output rows and walks K in chunks of NT
// 32-element units (8-element units for float weights). Each chunk, the raw bytes of the MV_R
// weight row segments and of the NR activation row segments are staged into shared memory
// with 16-byte loads (aligned windows; bytes outside a segment are never read from global
// memory), then each thread decodes one unit of every weight row into registers and dots it
// with that unit of every activation row: every weight byte is read from DRAM once per call,
// every decoded unit serves NR rows. Partial sums are reduced with warp shuffles at the end.
// Quantized weights from FORGE_CUDA_QBLAS_ROWS rows (65 after mhm, 128 after the integer
// kernels; where cuBLAS is): the library GEMM at the end of this file, the weight dequantized to
// F16 a chunk of rows at a time (docs/PERF.md has the crossovers measured).
// F16 tensor-core tiled (mhm; the default on NVIDIA sm_80+, FORGE_CUDA_MMQ=f16): quantized
// weights, 9 rows up to the library GEMM's (every row count without cuBLAS); each weight unit
// dequantized exactly, rounded to F16 into shared memory, ldmatrix + mma.m16n8k16 over the 8-bit
// rows widened to F16: the F16 GEMM's arithmetic.
// Integer tiled (FORGE_CUDA_MMQ=mma or dp4a, and the default without mma: HIP; quantized
// weights, 17 rows (FORGE_CUDA_MV_ROWS + 1) up to the library GEMM's; 8-bit x): the matvec's
// per-unit integer dots and f32 scaling, so these keep the reference's arithmetic: the
// tensor-core kernel (mqm: 128 x 64 tiles, int8 mma.sync, K split when the tiles leave SMs
// idle) or the dp4a one (mq: 64 x 64 tiles). FORGE_CUDA_MMQ=0 sends these to the F16 GEMMs
// below instead.
// Tiled (float weights with more rows, or F16 x): 128 weight rows x 64 activation rows x 64 K per tile, 256
// threads; weights dequantized (exactly) once per tile into f16 shared memory, activations
// converted to f16; nvcuda::wmma 16x16x16 with f32 accumulation under FG_GPU_HAS_MMA (sm_80+),
// a register-tiled FMA twin elsewhere (HIP, older archs, or -DFG_MM_NO_MMA to test it on NVIDIA).
// Its f16 operands overflow beyond 65504 (activations or BF16 weights that large become inf) and
// lose precision below 6e-5 (f16 subnormals); f32 accumulation throughout.
//
// The device helpers below are FG_HD (host-callable) phases of the kernels so that
// tests/unit/test_cuda_matmul_host.cu can replay every kernel's index maths on the CPU; it
// defines FG_MM_HOST_TEST, which leaves out the kernels and the launchers.
#include "backend/cuda/cuda_internal.h"

#include "backend/cuda/cuda_quant.cuh"

#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <type_traits>

#if defined(FG_GPU_HAS_MMA) && !defined(FG_MM_NO_MMA)
#define FG_MM_USE_MMA 1
#endif

#define FG_MV_MAX_ROWS 8 // activation rows up to which the matvec kernels run
// Q4_K/Q6_K weights: rows up to which mqr runs (from FG_MV_MAX_ROWS + 1), before the library
// GEMM (from 65 rows). Over repacked rows (mqr_pack) it beats mhm up to 64 (H100, 8B Q4_K step:
// 48 rows 9.20 against 11.72 ms, 64 rows 10.26 against 12.47; unpacked it lost from 33 rows on)
// and, with its chained and staged variants, the GEMM up to 128 (H100, r58, two runs each: 96
// rows 13.91 / 14.02 against 14.62 / 15.97 ms, 128 rows 14.81 / 14.49 against 16.16 / 18.02)
#define FG_MQR_MAX_ROWS 128
#define FG_MQR_XP_BYTES 2592 // mqr: bytes of a repacked chunk (8 rows, a super-block; MQR_XP below)
#define FG_MQR_NT 8 // mqr: n tiles (8 rows each) a warp at most
#define FG_MQR_DEFAULT 1 // mqr on (H100, unpacked: 16 rows 6.03 ms a step against mhm's 9.74)
#define FG_MV_BATCH_ROWS 16 // quantized weights: rows up to which the matvec runs in passes of 8 (measured)
// split K of the tensor-core integer kernel (mq_plan_split)
#define MQ_SPLIT_BLOCKS_PER_SM 2             // blocks an SM it aims for (2 are resident)
#define MQ_SPLIT_MIN_STEPS 4                 // K steps (of 4 units) a split at least
#define MQ_SPLIT_MAX 16                      // splits at most
#define MQ_SPLIT_BYTES ((size_t)16 << 20)    // the arena's room for partial sums, at least

static constexpr FG_HD bool mm_is_float(int t) {
    return t == FG_TYPE_F32 || t == FG_TYPE_F16 || t == FG_TYPE_BF16;
}
// The K-quants take their matvec activations as the reference quantizes them (Q8_K: one f32
// scale per 256, ties to even, the signed extreme mapped to -127), the other quantized types
// as Q8_1 (one scale per 32: the grid of the reference's Q8_0 / Q8_1).
static constexpr FG_HD bool mm_is_k(int t) {
    return t == FG_TYPE_Q2_K || t == FG_TYPE_Q3_K || t == FG_TYPE_Q4_K || t == FG_TYPE_Q5_K || t == FG_TYPE_Q6_K;
}

#define MM_QTYPES(X)                                                                             \
    X(FG_TYPE_Q4_0) X(FG_TYPE_Q4_1) X(FG_TYPE_Q5_0) X(FG_TYPE_Q5_1) X(FG_TYPE_Q8_0) X(FG_TYPE_MXFP4) \
    X(FG_TYPE_Q2_K) X(FG_TYPE_Q3_K) X(FG_TYPE_Q4_K) X(FG_TYPE_Q5_K) X(FG_TYPE_Q6_K)
#define MM_FTYPES(X) X(FG_TYPE_F32) X(FG_TYPE_F16) X(FG_TYPE_BF16)

static inline int64_t mm_block_size(uint32_t wt) {
    return wt == FG_TYPE_Q2_K || wt == FG_TYPE_Q3_K || wt == FG_TYPE_Q4_K || wt == FG_TYPE_Q5_K || wt == FG_TYPE_Q6_K
               ? 256
               : mm_is_float((int)wt) ? 1 : 32;
}

static inline size_t mm_q8_1_row_bytes(int64_t n) { return (size_t)(n / 32) * sizeof(fg_block_q8_1); }
static inline size_t mm_q8_k_row_bytes(int64_t n) { return (size_t)(n / 256) * sizeof(fg_block_q8_k); }
// The matvec activation row of a quantized weight type.
static inline size_t mm_act_row_bytes(uint32_t wt, int64_t n) {
    return mm_is_k((int)wt) ? mm_q8_k_row_bytes(n) : mm_q8_1_row_bytes(n);
}

// One float weight element (F32 4-aligned, F16/BF16 2-aligned), exactly as the reference.
template <int WT> static FG_HD __forceinline__ float mm_float_elem(const uint8_t *p) {
    if constexpr (WT == FG_TYPE_F32) {
#ifdef FG_Q_DEVICE
        return *(const float *)p;
#else
        float f;
        memcpy(&f, p, 4);
        return f;
#endif
    } else if constexpr (WT == FG_TYPE_F16) {
        return fg_q_h2f((uint16_t)fg_q_ld16(p));
    } else {
        return fg_bits_to_f32(fg_q_ld16(p) << 16);
    }
}

// dst element update shared by every kernel: (+)= s + bias[o].
static FG_HD __forceinline__ void mm_store(float *d, const float *bias, int64_t o, float s, int accumulate) {
    float v = bias ? s + bias[o] : s;
    if (accumulate)
        v = *d + v;
    *d = v;
}

// ============================================================================ matvec
// Staging of byte segments into shared memory. Segment s is the byte range [p, p + n) of
// global memory; it goes to slot s of shared memory (16-aligned) so that byte p + i lands at
// slot + (p & 15) + i: 16-byte loads and stores of the aligned windows. Only bytes of
// [p, p + n) are read from global memory; the rest of the slot is left as it was.
struct mv_args {
    const uint8_t *w;  // [n_out] weight rows, w_nb1 bytes apart
    size_t w_nb1;
    const uint8_t *x;  // [n_rows] activation rows (Q8_1 blocks or F32), x_nb1 bytes apart
    size_t x_nb1;
    float *dst;        // [n_rows][n_out], d_nb1 bytes apart
    size_t d_nb1;
    const float *bias; // [n_out] or NULL
    int64_t n_out;
    int n_in;
    int nr;            // activation rows, 1 .. the kernel's NR
    int accumulate;
    int pipe;          // direct quantized matvec: two units of a row in flight (c->mv_pipe)
};

enum { MV_R = 4 };

// Geometry of the matvec kernel for weight type WT and up to NR (1, 2, 4, 8) activation rows.
template <int WT, int NR> struct mv_geo {
    static constexpr bool FLT = mm_is_float(WT);
    static constexpr int NT = NR <= 4 ? 128 : 64;                 // threads; multiple of 64
    static constexpr int R = MV_R;                                // weight rows per block
    static constexpr int UE = FLT ? 8 : 32;                       // elements per unit
    static constexpr int UC = NT;                                 // units per chunk (one a thread)
    static constexpr int W_ESZ = FLT ? (WT == FG_TYPE_F32 ? 4 : 2) : 0;
    static constexpr int UPB = FLT ? 1 : fg_qt<FLT ? FG_TYPE_Q8_0 : WT>::UPB;
    static constexpr int BYTES = FLT ? 0 : fg_qt<FLT ? FG_TYPE_Q8_0 : WT>::BYTES;
    static constexpr int W_CHUNK = FLT ? UC * UE * W_ESZ : UC / UPB * BYTES;      // bytes
    static constexpr bool AK = mm_is_k(WT);                       // Q8_K activations
    static constexpr int A_CHUNK = FLT ? UC * UE * 4 : AK ? UC / 8 * (int)sizeof(fg_block_q8_k)
                                                          : UC * (int)sizeof(fg_block_q8_1);
    static constexpr int WCH = (W_CHUNK + 15) / 16 + 2; // 16-byte slots of a weight segment
    static constexpr int ACH = (A_CHUNK + 15) / 16 + 2; // ... of an activation segment
    static constexpr int SMEM = (R * WCH + NR * ACH) * 16;
    static_assert(SMEM <= 48 * 1024, "matvec staging must fit static shared memory");
    static_assert(FLT || UC % UPB == 0, "chunks hold whole blocks");
};

// Segment s of chunk c for the block whose first weight row is o0: s < R weight row o0 + s
// (clamped to the last row), else activation row s - R.
template <int WT, int NR>
static FG_HD __forceinline__ void mv_seg(const mv_args &a, int64_t o0, int c, int s, const uint8_t **p, int *n) {
    typedef mv_geo<WT, NR> G;
    const int e0 = c * G::UC * G::UE;                       // first element of the chunk
    const int ne = a.n_in - e0 < G::UC * G::UE ? a.n_in - e0 : G::UC * G::UE;
    if (s < G::R) {
        const int64_t o = o0 + s < a.n_out ? o0 + s : a.n_out - 1;
        if constexpr (G::FLT) {
            *p = a.w + (size_t)o * a.w_nb1 + (size_t)e0 * G::W_ESZ;
            *n = ne * G::W_ESZ;
        } else {
            *p = a.w + (size_t)o * a.w_nb1 + (size_t)(e0 / 32 / G::UPB) * G::BYTES;
            *n = ne / 32 / G::UPB * G::BYTES;
        }
    } else {
        const size_t r = (size_t)(s - G::R);
        if constexpr (G::FLT) {
            *p = a.x + r * a.x_nb1 + (size_t)e0 * 4;
            *n = ne * 4;
        } else if constexpr (G::AK) {
            *p = a.x + r * a.x_nb1 + (size_t)(e0 / 256) * sizeof(fg_block_q8_k);
            *n = ne / 256 * (int)sizeof(fg_block_q8_k);
        } else {
            *p = a.x + r * a.x_nb1 + (size_t)(e0 / 32) * sizeof(fg_block_q8_1);
            *n = ne / 32 * (int)sizeof(fg_block_q8_1);
        }
    }
}

// Shared-memory slot of segment s.
template <int WT, int NR> static FG_HD __forceinline__ int mv_slot(int s) {
    typedef mv_geo<WT, NR> G;
    return s < G::R ? s * G::WCH * 16 : (G::R * G::WCH + (s - G::R) * G::ACH) * 16;
}

// Staging phase of chunk c, thread tid, segments s_lo .. s_hi - 1 (mv_stage: all of them). Per
// segment: the 16-byte windows wholly inside it, NT apart (loads first, then stores), and its
// head and tail bytes (< 16 each, the windows it shares with neighbouring data) by threads
// 0..15 and 16..31.
template <int WT, int NR>
static FG_HD __forceinline__ void mv_stage_segs(const mv_args &a, int64_t o0, int c, int tid, uint8_t *sm, int s_lo,
                                                int s_hi) {
    typedef mv_geo<WT, NR> G;
FG_UNROLL
    for (int s = 0; s < G::R + NR; s++) {
        if (s < s_lo || s >= s_hi || s >= G::R + a.nr)
            continue; // uniform
        constexpr int KW = (G::WCH + G::NT - 1) / G::NT, KA = (G::ACH + G::NT - 1) / G::NT;
        constexpr int K = KW > KA ? KW : KA;
        const uint8_t *p;
        int n;
        mv_seg<WT, NR>(a, o0, c, s, &p, &n);
        uint8_t *slot = sm + mv_slot<WT, NR>(s);
        const int off = (int)((uintptr_t)p & 15);
        const uint8_t *base = p - off;                  // 16-aligned
        const int c0 = (off + 15) / 16, c1 = (off + n) / 16; // full windows c0 .. c1-1
        uint4 v[K];
FG_UNROLL
        for (int k = 0; k < K; k++) {
            const int ch = c0 + tid + k * G::NT;
            if ((s < G::R ? k < KW : k < KA) && ch < c1)
                v[k] = *(const uint4 *)(base + 16 * ch);
        }
FG_UNROLL
        for (int k = 0; k < K; k++) {
            const int ch = c0 + tid + k * G::NT;
            if ((s < G::R ? k < KW : k < KA) && ch < c1)
                *(uint4 *)(slot + 16 * ch) = v[k];
        }
        const int head = 16 * c0 - off < n ? 16 * c0 - off : n; // bytes [0, head)
        const int t0 = (c1 > c0 ? 16 * c1 : 16 * c0) - off;      // bytes [t0, n)
        const int i = tid < 16 ? tid : t0 + tid - 16;
        if (tid < 32 && (tid < 16 ? i < head : i < n))
            slot[off + i] = p[i];
    }
}
template <int WT, int NR>
static FG_HD __forceinline__ void mv_stage(const mv_args &a, int64_t o0, int c, int tid, uint8_t *sm) {
    mv_stage_segs<WT, NR>(a, o0, c, tid, sm, 0, mv_geo<WT, NR>::R + NR);
}

// Compute phase of chunk c, quantized weights: thread tid takes unit tid of the chunk.
template <int WT, int NR>
static FG_HD __forceinline__ void mv_q_compute(const mv_args &a, int64_t o0, int c, int tid, const uint8_t *sm,
                                               float (&acc)[MV_R][NR]) {
    typedef mv_geo<WT, NR> G;
    typedef fg_qt<WT> Q;
    const int nu = (a.n_in / 32 - c * G::UC) < G::UC ? a.n_in / 32 - c * G::UC : G::UC;
    if (tid >= nu)
        return;
    fg_qunit wu[G::R];
FG_UNROLL
    for (int r = 0; r < G::R; r++) {
        const uint8_t *p;
        int n;
        mv_seg<WT, NR>(a, o0, c, r, &p, &n);
        const uint8_t *blk = sm + mv_slot<WT, NR>(r) + ((uintptr_t)p & 15) + (tid / Q::UPB) * Q::BYTES;
        fg_q_decode<WT, fg_rd_smem>(blk, tid % Q::UPB, wu[r]);
    }
FG_UNROLL
    for (int j = 0; j < NR; j++) {
        if (j < a.nr) { // (not break: loops with early exits are not unrolled)
            const uint8_t *p;
            int n;
            mv_seg<WT, NR>(a, o0, c, G::R + j, &p, &n);
            fg_q8unit xu;
            const uint8_t *xs = sm + mv_slot<WT, NR>(G::R + j) + ((uintptr_t)p & 15);
            if constexpr (G::AK)
                fg_q8_k_load(xs + (tid / 8) * (int)sizeof(fg_block_q8_k), tid % 8, xu);
            else
                fg_q8_1_load(xs + tid * (int)sizeof(fg_block_q8_1), xu);
FG_UNROLL
            for (int r = 0; r < G::R; r++)
                acc[r][j] += fg_q_dot<WT>(wu[r], xu);
        }
    }
}

// Compute phase of chunk c, float weights: thread tid takes elements 8 tid .. 8 tid + 7.
template <int WT, int NR>
static FG_HD __forceinline__ void mv_f_compute(const mv_args &a, int64_t o0, int c, int tid, const uint8_t *sm,
                                               float (&acc)[MV_R][NR]) {
    typedef mv_geo<WT, NR> G;
    const int cnt = a.n_in - c * G::UC * 8 - tid * 8; // valid elements of this unit
    if (cnt <= 0)
        return;
    float wv[G::R][8];
FG_UNROLL
    for (int r = 0; r < G::R; r++) {
        const uint8_t *p;
        int n;
        mv_seg<WT, NR>(a, o0, c, r, &p, &n);
        const uint8_t *q = sm + mv_slot<WT, NR>(r) + ((uintptr_t)p & 15) + tid * 8 * G::W_ESZ;
FG_UNROLL
        for (int i = 0; i < 8; i++)
            wv[r][i] = i < cnt ? mm_float_elem<WT>(q + i * G::W_ESZ) : 0.0f;
    }
FG_UNROLL
    for (int j = 0; j < NR; j++) {
        if (j < a.nr) {
            const uint8_t *p;
            int n;
            mv_seg<WT, NR>(a, o0, c, G::R + j, &p, &n);
            const uint8_t *q = sm + mv_slot<WT, NR>(G::R + j) + ((uintptr_t)p & 15) + tid * 32;
            float xv[8];
FG_UNROLL
            for (int i = 0; i < 8; i++) {
                xv[i] = i < cnt ? mm_float_elem<FG_TYPE_F32>(q + 4 * i) : 0.0f;
                // x on the weights' grid, as the reference's F16/BF16 dot and the GEMMs see it:
                // a row's result then does not depend on how many rows share the step
                if constexpr (WT == FG_TYPE_F16)
                    xv[i] = fg_f16_to_f32(fg_f32_to_f16(xv[i]));
                else if constexpr (WT == FG_TYPE_BF16)
                    xv[i] = fg_bf16_to_f32(fg_f32_to_bf16(xv[i]));
            }
FG_UNROLL
            for (int r = 0; r < G::R; r++)
FG_UNROLL
                for (int i = 0; i < 8; i++)
                    acc[r][j] += wv[r][i] * xv[i];
        }
    }
}

template <int WT, int NR> static FG_HD __forceinline__ int mv_n_chunks(const mv_args &a) {
    typedef mv_geo<WT, NR> G;
    return (a.n_in + G::UC * G::UE - 1) / (G::UC * G::UE);
}

// dst[j][o0 + r] for the block's sums; rows past n_out and activation rows past nr are dropped.
template <int WT, int NR>
static FG_HD __forceinline__ void mv_write(const mv_args &a, int64_t o0, int r, int j, float s) {
    const int64_t o = o0 + r;
    if (o < a.n_out && j < a.nr)
        mm_store((float *)((uint8_t *)a.dst + (size_t)j * a.d_nb1) + o, a.bias, o, s, a.accumulate);
}

#ifndef FG_MM_HOST_TEST
template <int WT, int NR>
static __global__ __launch_bounds__((mv_geo<WT, NR>::NT)) void mv_kernel(mv_args a) {
    typedef mv_geo<WT, NR> G;
    __shared__ __align__(16) uint8_t sm[G::SMEM];
    __shared__ float red[(G::NT / 32) * G::R * NR]; // (warps of 32 or 64) x sums
    const int tid = threadIdx.x;
    const int64_t o0 = (int64_t)blockIdx.x * G::R;
    float acc[G::R][NR];
FG_UNROLL
    for (int r = 0; r < G::R; r++)
FG_UNROLL
        for (int j = 0; j < NR; j++)
            acc[r][j] = 0.0f;
    const int n_chunks = mv_n_chunks<WT, NR>(a);
    // the first chunk's weights before the PDL wait (nothing in the step writes them), its
    // activation rows after it
    mv_stage_segs<WT, NR>(a, o0, 0, tid, sm, 0, G::R);
    fg_pdl_wait();
    fg_pdl_trigger();
    mv_stage_segs<WT, NR>(a, o0, 0, tid, sm, G::R, G::R + NR);
    for (int c = 0; c < n_chunks; c++) {
        if (c > 0)
            mv_stage<WT, NR>(a, o0, c, tid, sm);
        __syncthreads();
        if constexpr (G::FLT)
            mv_f_compute<WT, NR>(a, o0, c, tid, sm, acc);
        else
            mv_q_compute<WT, NR>(a, o0, c, tid, sm, acc);
        __syncthreads();
    }
    const int lane = tid % FG_WARP, wid = tid / FG_WARP, nw = G::NT / FG_WARP;
FG_UNROLL
    for (int r = 0; r < G::R; r++)
FG_UNROLL
        for (int j = 0; j < NR; j++) {
            const float v = fg_warp_sum(acc[r][j]);
            if (lane == 0)
                red[(wid * G::R + r) * NR + j] = v;
        }
    __syncthreads();
    if (tid < G::R * NR) {
        float s = 0.0f;
        for (int w = 0; w < nw; w++)
            s += red[w * G::R * NR + tid];
        mv_write<WT, NR>(a, o0, tid / NR, tid % NR, s);
    }
}

#endif // FG_MM_HOST_TEST

// Unit u (32 elements) of an 8-bit activation row on WT's grid: Q8_K blocks for the K-quants,
// Q8_1 otherwise; mm_x_unit_zero: the unit past the rows or K (contributes nothing).
template <int WT> static FG_HD __forceinline__ void mm_x_unit(const uint8_t *row, int u, fg_q8unit &x) {
    if constexpr (mm_is_k(WT))
        fg_q8_k_load(row + (size_t)(u / 8) * sizeof(fg_block_q8_k), u % 8, x);
    else
        fg_q8_1_load(row + (size_t)u * sizeof(fg_block_q8_1), x);
}
static FG_HD __forceinline__ void mm_x_unit_zero(fg_q8unit &x) {
FG_UNROLL
    for (int k = 0; k < 8; k++)
        x.q[k] = 0;
    x.sum_lo = x.sum_hi = 0;
    x.d = x.s = 0.0f;
}

// ============================================================================ direct matvec (mw)
// The quantized types' matvec (FORGE_CUDA_MV=staged: the staged kernel above instead): no
// shared-memory staging of the operands. A block of MW_NT threads owns mw_r<NR> weight rows;
// thread t takes units t, t + MW_NT, ... of them, decodes each weight unit straight from
// global memory and dots it with that unit of every activation row (read from global memory
// too: small, shared by every block, served by L1/L2). Sums meet through xor shuffles inside
// each 32-lane group (a warp on NVIDIA, half a wavefront on CDNA), then across the groups in
// shared memory. K is split over the whole block so that every row's loads are in flight at
// once and a 4096-row matrix still fills the GPU (2048 blocks).
enum { MW_NT = 128, MW_NG = MW_NT / 32 };

#ifndef FG_MM_HOST_TEST
// The sum over a 32-lane group (a warp on NVIDIA, half a wavefront on CDNA), in every lane.
template <typename T> static __device__ __forceinline__ T mm_sum32(T v) {
FG_UNROLL
    for (int off = 16; off > 0; off >>= 1)
        v += fg_shfl_xor(v, off);
    return v;
}
#endif
template <int NR> struct mw_r {
    static constexpr int R = NR <= 2 ? 2 : 4; // more rows share each activation load when NR grows
};
static_assert(4 * FG_MV_MAX_ROWS <= 32, "one lane writes each sum");

// 32-bit weight reads as single loads, in rows that start 4-aligned: blocks a multiple of 4
// bytes read through fg_rd_a4 (Q4_1, Q5_1, Q2_K, Q4_K, Q5_K); one-unit blocks of 2 mod 4 bytes
// (Q4_0, Q5_0, Q8_0) through mw_image.
template <int WT> static FG_HD __forceinline__ bool mw_a4(const mv_args &a) {
    typedef fg_qt<WT> Q;
    return (Q::BYTES % 4 == 0 || (Q::UPB == 1 && Q::BYTES % 4 == 2)) && ((uintptr_t)a.w & 3) == 0 &&
           a.w_nb1 % 4 == 0;
}

// A one-unit block of 2 mod 4 bytes at blk, copied into registers with aligned 32-bit loads: the
// image holds the bytes from blk - 2 on, so the block's fields sit as in a 4-aligned block
// shifted by 2 (qs at image + 4 for Q4_0/Q8_0, qh at + 4 and qs at + 8 for Q5_0). In a row that
// starts 4-aligned with an even number of such blocks, the words read, from blk & ~3 on, stay
// inside the row: an odd block (blk = 2 mod 4) reads [blk - 2, blk + BYTES), an even one
// [blk, blk + BYTES + 2). Branch-free, as neighbouring lanes alternate between the two.
template <int WT> struct mw_image {
    static constexpr int NW = (fg_qt<WT>::BYTES + 2) / 4;
    uint32_t w[NW];
    static FG_HD __forceinline__ void load(const uint8_t *blk, mw_image &im) {
        const uint8_t *base = (const uint8_t *)((uintptr_t)blk & ~(uintptr_t)3);
        const uint32_t sh = ((uintptr_t)blk & 2) ? 32u : 16u; // odd block: the words as they are
        uint32_t prev = 0;
FG_UNROLL
        for (int i = 0; i < NW; i++) {
            const uint32_t cur = fg_q_ld32a(base + 4 * i);
            im.w[i] = (uint32_t)((((uint64_t)cur << 32) | prev) >> sh);
            prev = cur;
        }
    }
};

// Unit u of weight rows o0 .. o0 + R - 1 (rows past n_out clamped), decoded from global memory;
// A4: read through fg_rd_a4 (mw_a4 holds).
template <int WT, int NR, bool A4>
static FG_HD __forceinline__ void mw_load(const mv_args &a, int64_t o0, int u, fg_qunit (&wu)[mw_r<NR>::R]) {
    typedef typename std::conditional<A4, fg_rd_a4, fg_rd_exact>::type RD;
    typedef fg_qt<WT> Q;
FG_UNROLL
    for (int r = 0; r < mw_r<NR>::R; r++) {
        const int64_t o = o0 + r < a.n_out ? o0 + r : a.n_out - 1;
        const uint8_t *blk = a.w + (size_t)o * a.w_nb1 + (size_t)(u / Q::UPB) * Q::BYTES;
        if constexpr (A4 && Q::BYTES % 4 == 2) {
            mw_image<WT> im;
            mw_image<WT>::load(blk, im);
            fg_q_decode<WT, fg_rd_a4>((const uint8_t *)im.w + 2, 0, wu[r]);
        } else {
            fg_q_decode<WT, RD>(blk, u % Q::UPB, wu[r]);
        }
    }
}

// acc[r][j] += unit u of weight row o0 + r (decoded in wu) . unit u of activation row j.
template <int WT, int NR>
static FG_HD __forceinline__ void mw_dots(const mv_args &a, int u, const fg_qunit (&wu)[mw_r<NR>::R],
                                          float (&acc)[mw_r<NR>::R][NR]) {
FG_UNROLL
    for (int j = 0; j < NR; j++) {
        if (j < a.nr) {
            fg_q8unit xu;
            mm_x_unit<WT>(a.x + (size_t)j * a.x_nb1, u, xu);
FG_UNROLL
            for (int r = 0; r < mw_r<NR>::R; r++)
                acc[r][j] += fg_q_dot<WT>(wu[r], xu);
        }
    }
}

// Thread t's partial sums for weight rows o0 .. o0 + R - 1. Its first unit's weights are read
// before the PDL wait (nothing in the step writes weights), so that under programmatic launch
// they are in flight while the kernel before it finishes; the activations after it. Rows of
// more than MW_NT units (the down projection's 14,336 elements) keep two units of each row in
// flight: the next unit's weights are read (an index clamped to the last one, so that the loop
// body is one branch-free block the compiler may schedule freely) before this unit's dots.
template <int WT, int NR, bool A4>
static FG_HD __forceinline__ void mw_thread(const mv_args &a, int64_t o0, int t, float (&acc)[mw_r<NR>::R][NR]) {
    constexpr int R = mw_r<NR>::R;
    const int nu = a.n_in / 32;
    fg_qunit wu[R];
    if (t < nu)
        mw_load<WT, NR, A4>(a, o0, t, wu);
    fg_pdl_wait();
    fg_pdl_trigger();
    if (nu <= MW_NT || !a.pipe) { // uniform (at most one unit a thread, or FORGE_CUDA_MV_PIPE not 1)
        for (int u = t; u < nu; u += MW_NT) {
            if (u != t)
                mw_load<WT, NR, A4>(a, o0, u, wu);
            mw_dots<WT, NR>(a, u, wu, acc);
        }
        return;
    }
    for (int u = t; u < nu; u += MW_NT) {
        fg_qunit wn[R];
        mw_load<WT, NR, A4>(a, o0, u + MW_NT < nu ? u + MW_NT : u, wn);
        mw_dots<WT, NR>(a, u, wu, acc);
FG_UNROLL
        for (int r = 0; r < R; r++)
            wu[r] = wn[r];
    }
}

// ============================================================================ direct float matvec (mwf)
// F16/BF16 weights (FORGE_CUDA_MV=staged: the staged kernel instead) in rows that start 16-byte
// aligned with n_in % 8 == 0, F32 activation rows 16-byte aligned: no staging. A block of
// MW_NT threads owns mw_r<NR> weight rows; thread t takes the 8-element pieces t, t + MW_NT, ...
// of each, U = mwf_u<NR> pieces of every row loaded (16 bytes each) before any is used, so that
// a thread has U * R = 8 loads in flight (a 4096-element row and one activation row: all of it
// in one batch; fewer pieces a batch with more rows keep the unrolled code small). The first
// batch is read before the PDL wait; x is rounded to the weights' grid as the staged kernel
// does (the reference's vec_dot_type). Sums meet as in the quantized direct matvec.
template <int NR> struct mwf_u {
    static constexpr int U = NR <= 2 ? 4 : 2;
};
template <int WT> static FG_HD __forceinline__ bool mwf_ok(const mv_args &a) {
    return (WT == FG_TYPE_F16 || WT == FG_TYPE_BF16) && a.n_in % 8 == 0 && ((uintptr_t)a.w | a.w_nb1) % 16 == 0 &&
           ((uintptr_t)a.x | a.x_nb1) % 16 == 0;
}

// Batch p0 of rows wr: pieces p0 + k MW_NT (k < U) below np (the rest left as they were).
template <int U, int R>
static FG_HD __forceinline__ void mwf_load(const uint8_t *const (&wr)[R], int p0, int np, uint4 (&wv)[U][R]) {
FG_UNROLL
    for (int k = 0; k < U; k++) {
        const int p = p0 + k * MW_NT;
        if (p < np)
FG_UNROLL
            for (int r = 0; r < R; r++)
                wv[k][r] = *(const uint4 *)(wr[r] + (size_t)16 * p);
    }
}

// The 8 weights of a 16-byte piece as floats, exactly as mm_float_elem.
template <int WT> static FG_HD __forceinline__ void mwf_unpack(const uint4 &v, float (&f)[8]) {
    const uint32_t w[4] = {v.x, v.y, v.z, v.w};
FG_UNROLL
    for (int i = 0; i < 4; i++) {
        if constexpr (WT == FG_TYPE_F16) {
            f[2 * i] = fg_q_h2f((uint16_t)(w[i] & 0xFFFFu));
            f[2 * i + 1] = fg_q_h2f((uint16_t)(w[i] >> 16));
        } else {
            f[2 * i] = fg_bits_to_f32(w[i] << 16);
            f[2 * i + 1] = fg_bits_to_f32(w[i] & 0xFFFF0000u);
        }
    }
}

template <int WT, int NR>
static FG_HD __forceinline__ void mwf_dots(const mv_args &a, int p0, int np,
                                           const uint4 (&wv)[mwf_u<NR>::U][mw_r<NR>::R], float (&acc)[mw_r<NR>::R][NR]) {
    constexpr int R = mw_r<NR>::R;
FG_UNROLL
    for (int k = 0; k < mwf_u<NR>::U; k++) {
        const int p = p0 + k * MW_NT;
        float wf[R][8];
FG_UNROLL
        for (int r = 0; r < R; r++)
            mwf_unpack<WT>(wv[k][r], wf[r]);
FG_UNROLL
        for (int j = 0; j < NR; j++) {
            if (j < a.nr && p < np) { // (not continue: loops with early exits are not unrolled)
                const float *xr = (const float *)(a.x + (size_t)j * a.x_nb1) + 8 * (size_t)p;
                const float4 x0 = *(const float4 *)xr, x1 = *(const float4 *)(xr + 4);
                float xv[8] = {x0.x, x0.y, x0.z, x0.w, x1.x, x1.y, x1.z, x1.w};
FG_UNROLL
                for (int i = 0; i < 8; i++)
                    xv[i] = WT == FG_TYPE_F16 ? fg_f16_to_f32(fg_f32_to_f16(xv[i]))
                                              : fg_bf16_to_f32(fg_f32_to_bf16(xv[i]));
FG_UNROLL
                for (int r = 0; r < R; r++)
FG_UNROLL
                    for (int i = 0; i < 8; i++)
                        acc[r][j] += wf[r][i] * xv[i];
            }
        }
    }
}

// Thread t's partial sums for weight rows o0 .. o0 + R - 1 (rows past n_out clamped).
template <int WT, int NR>
static FG_HD __forceinline__ void mwf_thread(const mv_args &a, int64_t o0, int t, float (&acc)[mw_r<NR>::R][NR]) {
    constexpr int R = mw_r<NR>::R, U = mwf_u<NR>::U;
    const int np = a.n_in / 8;
    const uint8_t *wr[R];
FG_UNROLL
    for (int r = 0; r < R; r++)
        wr[r] = a.w + (size_t)(o0 + r < a.n_out ? o0 + r : a.n_out - 1) * a.w_nb1;
    uint4 wv[U][R];
    mwf_load<U, R>(wr, t, np, wv);
    fg_pdl_wait();
    fg_pdl_trigger();
    for (int p0 = t; p0 < np; p0 += U * MW_NT) {
        if (p0 != t)
            mwf_load<U, R>(wr, p0, np, wv);
        mwf_dots<WT, NR>(a, p0, np, wv, acc);
    }
}

#ifndef FG_MM_HOST_TEST
template <int WT, int NR, bool A4> static __global__ __launch_bounds__(MW_NT) void mw_kernel(mv_args a) {
    constexpr int R = mw_r<NR>::R;
    __shared__ float red[MW_NG][R * NR];
    const int t = threadIdx.x, lane = t % 32, g = t / 32;
    const int64_t o0 = (int64_t)blockIdx.x * R;
    float acc[R][NR];
FG_UNROLL
    for (int r = 0; r < R; r++)
FG_UNROLL
        for (int j = 0; j < NR; j++)
            acc[r][j] = 0.0f;
    if constexpr (mm_is_float(WT))
        mwf_thread<WT, NR>(a, o0, t, acc);
    else
        mw_thread<WT, NR, A4>(a, o0, t, acc);
FG_UNROLL
    for (int r = 0; r < R; r++)
FG_UNROLL
        for (int j = 0; j < NR; j++) {
            const float v = mm_sum32(acc[r][j]);
            if (lane == 0)
                red[g][r * NR + j] = v;
        }
    __syncthreads();
    if (t < R * NR) {
        float v = 0.0f;
FG_UNROLL
        for (int k = 0; k < MW_NG; k++)
            v += red[k][t];
        mv_write<WT, NR>(a, o0, t / NR, t % NR, v);
    }
}
#endif // FG_MM_HOST_TEST

// Q4_K/Q5_K: the 6-bit scales (sc) and mins (m) of sub-blocks 0-3 ([0]) and 4-7 ([1]), a byte
// each, from a block's first 16 bytes h (d, dmin, then the 12 scale bytes): fg_q_scale_min_k4,
// four at a time.
static FG_HD __forceinline__ void mm_k4_scales4(const uint4 &h, uint32_t (&sc)[2], uint32_t (&m)[2]) {
    const uint32_t w0 = h.y, w1 = h.z, w2 = h.w; // scales[0..3], [4..7], [8..11]
    sc[0] = w0 & 0x3F3F3F3Fu;
    m[0] = w1 & 0x3F3F3F3Fu;
    sc[1] = (w2 & 0x0F0F0F0Fu) | ((w0 >> 2) & 0x30303030u);
    m[1] = ((w2 >> 4) & 0x0F0F0F0Fu) | ((w1 >> 2) & 0x30303030u);
}

// ============================================================================ K-quant matvec (mwk)
// Q4_K and Q5_K weights, 1-2 activation rows (single-stream decode), rows that start 16-byte
// aligned (their blocks are 144 and 176 bytes: every block then does): a lane takes a 16-byte
// chunk of a block's qs at a time, i.e. half of a 32-byte group: 16 elements of sub-block 2g
// (low nibbles) and 16 of sub-block 2g + 1 (high nibbles), one 16-byte load, plus the block's
// first 16 bytes (d, dmin, the 12 scale bytes; the 8 lanes of a block read the same ones) and,
// Q5_K, the 16 qh bytes of its half. The direct matvec (mw) decodes 32-element units with
// 4-byte loads, two lanes reading the same qs words, and reads the activation blocks from
// global memory in every block (ncu: L1-bound, 64 registers, 50% occupancy); here each block
// first stages its activation rows in shared memory in the order the lanes read them (two
// 16-byte loads a lane a chunk, the two bsums it needs as one word: one dp2a for the min term).
// Each 32-lane group owns WR weight rows and walks all of K (chunk c = 32 i + lane), sums meet
// through xor shuffles: no shared-memory reduction. A lane's first MWK_B chunks of each row are
// loaded before the PDL wait (weights are never written in a step), the staging after it.
// Arithmetic: per chunk the reference's integers (sc x dot, m x bsums), then
// d_x (d S - dmin M) in f32; the reference sums a super-block's integers before scaling, so
// only rounding differs (summation-order noise).
enum { MWK_NT = 128, MWK_B = 4 }; // threads a block, chunks a round (unpipelined)

// Shared-memory bytes of one staged activation row of n_in elements (n_in / 256 Q8_K blocks):
// qs permuted [256 nb], d [4 nb], the chunks' bsum pairs [32 nb], padded to 16.
enum { // a Q8_K activation block: bytes, offsets of qs and bsums
    MWK_XB = sizeof(fg_block_q8_k),
    MWK_XQS = offsetof(fg_block_q8_k, qs),
    MWK_XBS = offsetof(fg_block_q8_k, bsums)
};
static_assert(MWK_XB == 256 + 4 + 32 && offsetof(fg_block_q8_k, d) == 0,
              "mwk: a staged block (qs, d, bsum pairs) as large as a Q8_K block");
static FG_HD __forceinline__ int mwk_row_smem(int n_in) { return (n_in / 256 * MWK_XB + 15) / 16 * 16; }

static FG_HD __forceinline__ uint4 mwk_ld16(const uint8_t *p) { return *(const uint4 *)p; } // p 16-aligned

static_assert(sizeof(fg_block_q4_k) % 16 == 0 && sizeof(fg_block_q5_k) % 16 == 0 &&
                  offsetof(fg_block_q4_k, scales) == 4 && offsetof(fg_block_q5_k, scales) == 4,
              "mwk: 16-aligned K-quant blocks that start with d, dmin and the 12 scale bytes");
template <int WT> static FG_HD __forceinline__ bool mwk_ok(const mv_args &a, int nr_max) {
    return (WT == FG_TYPE_Q4_K || WT == FG_TYPE_Q5_K) && a.nr <= nr_max && a.n_in % 256 == 0 &&
           ((uintptr_t)a.w | a.w_nb1) % 16 == 0 && ((uintptr_t)a.x | a.x_nb1) % 4 == 0 &&
           nr_max * mwk_row_smem(a.n_in) <= 48 * 1024;
}

// Thread tid of nt stages activation row j (Q8_K blocks) at sm + j mwk_row_smem: piece p (16
// elements 16 q of block b, q = p % 16 = 4 g + 2 s + h: sub-block 2 g + s, half h) goes to
// 256 b + 32 (2 g + h) + 16 s, where chunk (b, g, h) reads its low then its high half; the d of
// block b to 256 nb + 4 b; bsums 4 g + h and 4 g + 2 + h of block b, as one word, to
// 260 nb + 4 (8 b + 2 g + h).
static FG_HD __forceinline__ void mwk_stage(const mv_args &a, int j, int tid, int nt, uint8_t *sm) {
    const int nb = a.n_in / 256;
    const uint8_t *x = a.x + (size_t)j * a.x_nb1;
    uint8_t *s = sm + (size_t)j * mwk_row_smem(a.n_in);
    for (int p = tid; p < 16 * nb; p += nt) {
        const int b = p / 16, q = p % 16, g = q / 4, sh = (q / 2) % 2, h = q % 2;
        const uint8_t *src = x + (size_t)b * MWK_XB + MWK_XQS + 16 * q;
        uint4 v;
        v.x = fg_q_ld32a(src);
        v.y = fg_q_ld32a(src + 4);
        v.z = fg_q_ld32a(src + 8);
        v.w = fg_q_ld32a(src + 12);
        *(uint4 *)(s + 256 * b + 32 * (2 * g + h) + 16 * sh) = v;
    }
    for (int i = tid; i < 9 * nb; i += nt) {
        if (i < nb) {
            *(uint32_t *)(s + 256 * nb + 4 * i) = fg_q_ld32a(x + (size_t)i * MWK_XB); // d
        } else {
            const int c = i - nb, b = c / 8, g = (c % 8) / 2, h = c % 2;
            const uint8_t *bs = x + (size_t)b * MWK_XB + MWK_XBS;
            *(uint32_t *)(s + 260 * nb + 4 * c) = fg_q_ld16(bs + 2 * (4 * g + h)) | (fg_q_ld16(bs + 2 * (4 * g + 2 + h)) << 16);
        }
    }
}

// A lane's loads of chunk c of weight row o: qs, the block's first 16 bytes, Q5_K its qh half.
template <int WT> struct mwk_w {
    uint4 q, hd, qh;
};
template <int WT> static FG_HD __forceinline__ void mwk_load(const mv_args &a, int64_t o, int c, mwk_w<WT> &w) {
    const uint8_t *blk = a.w + (size_t)o * a.w_nb1 + (size_t)(c / 8) * fg_qt<WT>::BYTES;
    w.hd = mwk_ld16(blk);
    w.q = mwk_ld16(blk + FG_QOFF(WT, qs) + 16 * (c % 8));
    if constexpr (WT == FG_TYPE_Q5_K)
        w.qh = mwk_ld16(blk + FG_QOFF(WT, qh) + 16 * (c % 2));
}

// sum over chunk c of weight row w (loaded) . activation row staged at s (nb blocks).
template <int WT> static FG_HD __forceinline__ float mwk_dot(const mwk_w<WT> &w, int c, const uint8_t *s, int nb) {
    const int b = c / 8, g = (c % 8) / 2;
    const uint4 xl = *(const uint4 *)(s + 32 * c), xh = *(const uint4 *)(s + 32 * c + 16);
    const uint32_t q[4] = {w.q.x, w.q.y, w.q.z, w.q.w}, xlo[4] = {xl.x, xl.y, xl.z, xl.w},
                   xhi[4] = {xh.x, xh.y, xh.z, xh.w};
    int dl = 0, dh = 0;
    if constexpr (WT == FG_TYPE_Q5_K) {
        const uint32_t qh[4] = {w.qh.x, w.qh.y, w.qh.z, w.qh.w};
FG_UNROLL
        for (int k = 0; k < 4; k++) {
            const uint32_t lo = (q[k] & 0x0F0F0F0Fu) | (((qh[k] >> (2 * g)) & 0x01010101u) << 4);
            const uint32_t hi = ((q[k] >> 4) & 0x0F0F0F0Fu) | (((qh[k] >> (2 * g + 1)) & 0x01010101u) << 4);
            dl = fg_dp4a((int)lo, (int)xlo[k], dl);
            dh = fg_dp4a((int)hi, (int)xhi[k], dh);
        }
    } else {
FG_UNROLL
        for (int k = 0; k < 4; k++) {
            dl = fg_dp4a((int)(q[k] & 0x0F0F0F0Fu), (int)xlo[k], dl);
            dh = fg_dp4a((int)((q[k] >> 4) & 0x0F0F0F0Fu), (int)xhi[k], dh);
        }
    }
    // bytes 2 (g % 2) and 2 (g % 2) + 1 of word g / 2 are the scales (mins) of sub-blocks 2 g, 2 g + 1
    uint32_t scw[2], mw[2];
    mm_k4_scales4(w.hd, scw, mw);
    const int sh = 16 * (g % 2);
    const uint32_t sc = (g < 2 ? scw[0] : scw[1]) >> sh, mn = (g < 2 ? mw[0] : mw[1]) >> sh;
    const int si = dl * (int)(sc & 0xFFu) + dh * (int)((sc >> 8) & 0xFFu);
    const int mi = fg_dp2a_lo(fg_q_ld32a(s + 260 * nb + 4 * c), mn, 0);
    const float d = fg_q_h2f((uint16_t)(w.hd.x & 0xFFFFu)), dmin = fg_q_h2f((uint16_t)(w.hd.x >> 16));
    return fg_q_ldf32(s + 256 * nb + 4 * b) * (d * (float)si - dmin * (float)mi);
}

// One round of a lane's weight loads: chunks i0 + 32 k + lane (k < MWK_B) of its WR rows, into
// registers (MWK_B chunks x WR rows x 32 bytes a lane: 120 registers at WR 2, 16 warps an SM;
// landing them in shared memory through cp.async instead measured 23% slower, H100 2026-12-07).
template <int WT, int WR>
static FG_HD __forceinline__ void mwk_round_load(const mv_args &a, const int64_t (&o)[WR], int i0, int lane, int nc,
                                                 mwk_w<WT> (&w)[MWK_B][WR]) {
FG_UNROLL
    for (int k = 0; k < MWK_B; k++) {
        const int c = i0 + 32 * k + lane;
        if (c < nc)
FG_UNROLL
            for (int r = 0; r < WR; r++)
                mwk_load<WT>(a, o[r], c, w[k][r]);
    }
}

// ... and its dot products with the staged activation rows.
template <int WT, int NR, int WR>
static FG_HD __forceinline__ void mwk_round_dot(const mv_args &a, int i0, int lane, int nc, const uint8_t *sm,
                                                const mwk_w<WT> (&w)[MWK_B][WR], float (&acc)[WR][NR]) {
    const int nb = a.n_in / 256, rs = mwk_row_smem(a.n_in);
FG_UNROLL
    for (int k = 0; k < MWK_B; k++) {
        const int c = i0 + 32 * k + lane;
FG_UNROLL
        for (int j = 0; j < NR; j++)
            if (c < nc && j < a.nr)
FG_UNROLL
                for (int r = 0; r < WR; r++)
                    acc[r][j] += mwk_dot<WT>(w[k][r], c, sm + (size_t)j * rs, nb);
    }
}

// Lane `lane`'s partial sums for weight rows o0 .. o0 + WR - 1 (rows past n_out clamped) over
// the activation rows staged at sm; staged() runs once, after the first round's loads (the
// kernel: the PDL wait, the staging and a block barrier).
template <int WT, int NR, int WR, class F>
static FG_HD __forceinline__ void mwk_lane(const mv_args &a, int64_t o0, int lane, const uint8_t *sm,
                                           float (&acc)[WR][NR], F staged) {
    const int nc = 8 * (a.n_in / 256);
    int64_t o[WR];
FG_UNROLL
    for (int r = 0; r < WR; r++)
        o[r] = o0 + r < a.n_out ? o0 + r : a.n_out - 1;
    mwk_w<WT> w[MWK_B][WR];
    for (int i0 = 0; i0 < nc; i0 += 32 * MWK_B) {
        mwk_round_load<WT, WR>(a, o, i0, lane, nc, w);
        if (i0 == 0)
            staged();
        mwk_round_dot<WT, NR, WR>(a, i0, lane, nc, sm, w, acc);
    }
}

#ifndef FG_MM_HOST_TEST
template <int WT, int NR, int WR> static __global__ FG_LAUNCH_BOUNDS(MWK_NT, 1) void mwk_kernel(mv_args a) {
    constexpr int NT = MWK_NT;
    extern __shared__ uint4 mwk_sm[];
    uint8_t *sm = (uint8_t *)mwk_sm; // NR staged activation rows
    const int t = threadIdx.x, lane = t % 32;
    const int64_t o0 = ((int64_t)blockIdx.x * (NT / 32) + t / 32) * WR;
    float acc[WR][NR];
FG_UNROLL
    for (int r = 0; r < WR; r++)
FG_UNROLL
        for (int j = 0; j < NR; j++)
            acc[r][j] = 0.0f;
    mwk_lane<WT, NR, WR>(
        a, o0, lane, sm, acc,
        [&]() {
            fg_pdl_wait();
            fg_pdl_trigger();
            for (int j = 0; j < a.nr; j++)
                mwk_stage(a, j, t, NT, sm);
            __syncthreads();
        });
FG_UNROLL
    for (int r = 0; r < WR; r++)
FG_UNROLL
        for (int j = 0; j < NR; j++) {
            const float v = mm_sum32(acc[r][j]);
            if (lane == r * NR + j)
                mv_write<WT, NR>(a, o0, r, j, v);
        }
}
#endif // FG_MM_HOST_TEST

// ============================================================================ tiled
enum {
    TM_BM = 128, // weight rows (outputs) per tile
    TM_BN = 64,  // activation rows per tile
    TM_BK = 64,  // K per step
    TM_NT = 256, // threads
    TM_LDA = TM_BK + 8, // halves; rows 144 bytes apart (16-aligned, 4-bank shift)
    TM_LDB = TM_BK + 8,
    TM_LDC = TM_BM + 4, // floats
    TM_SMEM_AB = (TM_BM * TM_LDA + TM_BN * TM_LDB) * 2,
    TM_SMEM_C = TM_BN * TM_LDC * 4,
    TM_SMEM = TM_SMEM_AB > TM_SMEM_C ? TM_SMEM_AB : TM_SMEM_C,
    TM_TM = 8, // FMA twin: outputs per thread along m (16 threads) ...
    TM_TN = 4, // ... and along n (16 threads)
};
static_assert(TM_BM * (TM_BK / 32) == TM_NT, "one weight unit per thread per K step");
static_assert(TM_SMEM <= 48 * 1024, "tiles fit static shared memory");
static_assert(TM_BM == 16 * TM_TM && TM_BN == 16 * TM_TN, "FMA twin covers the tile");

struct tm_args {
    const uint8_t *w; // [n_out] weight rows, w_nb1 bytes apart
    size_t w_nb1;
    const uint8_t *x; // [n_rows] activation rows (F32 or F16), x_nb1 bytes apart
    size_t x_nb1;
    float *dst;       // [n_rows][n_out], d_nb1 bytes apart
    size_t d_nb1;
    const float *bias;
    int64_t n_out;
    int64_t n_rows;
    int n_in;
    int accumulate;
};

// Weight tile [TM_BM][TM_BK] at (m0, k0) into As as f16 bits; zeros outside the matrix.
template <int WT>
static FG_HD __forceinline__ void tm_load_w(const tm_args &a, int64_t m0, int k0, int tid, uint16_t *As) {
    if constexpr (mm_is_float(WT)) {
        // thread: column k, rows mb, mb + RS, ... (coalesced along k)
        constexpr int ESZ = WT == FG_TYPE_F32 ? 4 : 2, RS = TM_NT / TM_BK;
        const int k = tid % TM_BK, mb = tid / TM_BK;
        const bool k_in = k0 + k < a.n_in;
        const uint8_t *p = a.w + (size_t)(m0 + mb) * a.w_nb1 + (size_t)(k0 + k) * ESZ;
FG_UNROLL_N(8) // (fully unrolled, the 32 loads' addresses spill)
        for (int i = 0; i < TM_BM / RS; i++) {
            const int m = mb + i * RS;
            uint16_t h = 0;
            if (k_in && m0 + m < a.n_out) {
                const uint8_t *q = p + (size_t)i * RS * a.w_nb1;
                if constexpr (WT == FG_TYPE_F16)
                    h = (uint16_t)fg_q_ld16(q);
                else
                    h = fg_q_f2h(mm_float_elem<WT>(q));
            }
            As[m * TM_LDA + k] = h;
        }
    } else {
        typedef fg_qt<WT> Q;
        const int m = tid / (TM_BK / 32), uu = tid % (TM_BK / 32);
        const int ku = k0 / 32 + uu; // unit along the row
        uint32_t h[16];
        if (m0 + m < a.n_out && ku * 32 < a.n_in) {
            const uint8_t *blk = a.w + (size_t)(m0 + m) * a.w_nb1 + (size_t)(ku / Q::UPB) * Q::BYTES;
            float f[32];
            fg_q_dequant_unit<WT, fg_rd_exact>(blk, ku % Q::UPB, f);
FG_UNROLL
            for (int e = 0; e < 16; e++)
                h[e] = (uint32_t)fg_q_f2h(f[2 * e]) | ((uint32_t)fg_q_f2h(f[2 * e + 1]) << 16);
        } else {
FG_UNROLL
            for (int e = 0; e < 16; e++)
                h[e] = 0;
        }
        uint4 *dst = (uint4 *)(As + m * TM_LDA + uu * 32); // 16-aligned: 144 m + 64 uu bytes
FG_UNROLL
        for (int q = 0; q < 4; q++)
            dst[q] = make_uint4(h[4 * q], h[4 * q + 1], h[4 * q + 2], h[4 * q + 3]);
    }
}

// Activation tile [TM_BN][TM_BK] at (n0, k0) into Bs as f16 bits; zeros outside.
template <int XT>
static FG_HD __forceinline__ void tm_load_x(const tm_args &a, int64_t n0, int k0, int tid, uint16_t *Bs) {
    static_assert(XT == FG_TYPE_F32 || XT == FG_TYPE_F16, "tiled activations: F32 or F16");
    constexpr int ESZ = XT == FG_TYPE_F32 ? 4 : 2, RS = TM_NT / TM_BK;
    const int k = tid % TM_BK, nb = tid / TM_BK;
    const bool k_in = k0 + k < a.n_in;
    const uint8_t *p = a.x + (size_t)(n0 + nb) * a.x_nb1 + (size_t)(k0 + k) * ESZ;
FG_UNROLL
    for (int i = 0; i < TM_BN / RS; i++) {
        const int n = nb + i * RS;
        uint16_t h = 0;
        if (k_in && n0 + n < a.n_rows) {
            const uint8_t *q = p + (size_t)i * RS * a.x_nb1;
            if constexpr (XT == FG_TYPE_F32)
                h = fg_q_f2h(mm_float_elem<FG_TYPE_F32>(q));
            else
                h = (uint16_t)fg_q_ld16(q);
        }
        Bs[n * TM_LDB + k] = h;
    }
}

// FMA twin: thread (tx, ty) = (tid % 16, tid / 16) owns outputs m = tx + 16 i, n = ty + 16 j.
[[maybe_unused]] static FG_HD __forceinline__ void tm_fma(const uint16_t *As, const uint16_t *Bs, int tid,
                                         float (&acc)[TM_TM][TM_TN]) {
    const int tx = tid % 16, ty = tid / 16;
    for (int k = 0; k < TM_BK; k += 2) {
        float a0[TM_TM], a1[TM_TM], b0[TM_TN], b1[TM_TN];
FG_UNROLL
        for (int i = 0; i < TM_TM; i++) {
            const uint32_t v = fg_q_ld32a((const uint8_t *)(As + (tx + 16 * i) * TM_LDA + k));
            a0[i] = fg_q_h2f((uint16_t)v);
            a1[i] = fg_q_h2f((uint16_t)(v >> 16));
        }
FG_UNROLL
        for (int j = 0; j < TM_TN; j++) {
            const uint32_t v = fg_q_ld32a((const uint8_t *)(Bs + (ty + 16 * j) * TM_LDB + k));
            b0[j] = fg_q_h2f((uint16_t)v);
            b1[j] = fg_q_h2f((uint16_t)(v >> 16));
        }
FG_UNROLL
        for (int i = 0; i < TM_TM; i++)
FG_UNROLL
            for (int j = 0; j < TM_TN; j++)
                acc[i][j] += a0[i] * b0[j] + a1[i] * b1[j];
    }
}

// Cs[n][m] (col-major C of the BM x BN tile) from the FMA twin's registers.
[[maybe_unused]] static FG_HD __forceinline__ void tm_fma_store(const float (&acc)[TM_TM][TM_TN], int tid, float *Cs) {
    const int tx = tid % 16, ty = tid / 16;
FG_UNROLL
    for (int i = 0; i < TM_TM; i++)
FG_UNROLL
        for (int j = 0; j < TM_TN; j++)
            Cs[(ty + 16 * j) * TM_LDC + tx + 16 * i] = acc[i][j];
}

// Epilogue: dst[n0 + n][m0 + m] (+)= Cs[n][m] + bias, coalesced along m.
static FG_HD __forceinline__ void tm_write(const tm_args &a, int64_t m0, int64_t n0, int tid, const float *Cs) {
    for (int idx = tid; idx < TM_BM * TM_BN; idx += TM_NT) {
        const int n = idx / TM_BM, m = idx % TM_BM;
        const int64_t o = m0 + m, r = n0 + n;
        if (o < a.n_out && r < a.n_rows)
            mm_store((float *)((uint8_t *)a.dst + (size_t)r * a.d_nb1) + o, a.bias, o, Cs[n * TM_LDC + m],
                     a.accumulate);
    }
}

#ifndef FG_MM_HOST_TEST
template <int WT, int XT> static __global__ __launch_bounds__(TM_NT, 2) void tm_kernel(tm_args a) {
    __shared__ __align__(32) uint8_t sm[TM_SMEM];
    uint16_t *As = (uint16_t *)sm;
    uint16_t *Bs = As + TM_BM * TM_LDA;
    float *Cs = (float *)sm; // after the K loop
    const int tid = threadIdx.x;
    const int64_t n0 = (int64_t)blockIdx.x * TM_BN, m0 = (int64_t)blockIdx.y * TM_BM;
#ifdef FG_MM_USE_MMA
    using namespace nvcuda;
    const int warp = tid / FG_WARP, wm = warp % 4, wn = warp / 4; // 8 warps: 4 x 2 of 32 x 32
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> cf[2][2];
FG_UNROLL
    for (int i = 0; i < 2; i++)
FG_UNROLL
        for (int j = 0; j < 2; j++)
            wmma::fill_fragment(cf[i][j], 0.0f);
#else
    float acc[TM_TM][TM_TN];
FG_UNROLL
    for (int i = 0; i < TM_TM; i++)
FG_UNROLL
        for (int j = 0; j < TM_TN; j++)
            acc[i][j] = 0.0f;
#endif
    for (int k0 = 0; k0 < a.n_in; k0 += TM_BK) {
        tm_load_w<WT>(a, m0, k0, tid, As);
        tm_load_x<XT>(a, n0, k0, tid, Bs);
        __syncthreads();
#ifdef FG_MM_USE_MMA
FG_UNROLL
        for (int kk = 0; kk < TM_BK; kk += 16) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> af[2];
            wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::col_major> bf[2];
FG_UNROLL
            for (int i = 0; i < 2; i++)
                wmma::load_matrix_sync(af[i], (const __half *)(As + (wm * 32 + 16 * i) * TM_LDA + kk), TM_LDA);
FG_UNROLL
            for (int j = 0; j < 2; j++)
                wmma::load_matrix_sync(bf[j], (const __half *)(Bs + (wn * 32 + 16 * j) * TM_LDB + kk), TM_LDB);
FG_UNROLL
            for (int i = 0; i < 2; i++)
FG_UNROLL
                for (int j = 0; j < 2; j++)
                    wmma::mma_sync(cf[i][j], af[i], bf[j], cf[i][j]);
        }
#else
        tm_fma(As, Bs, tid, acc);
#endif
        __syncthreads();
    }
#ifdef FG_MM_USE_MMA
FG_UNROLL
    for (int i = 0; i < 2; i++)
FG_UNROLL
        for (int j = 0; j < 2; j++)
            wmma::store_matrix_sync(Cs + (wn * 32 + 16 * j) * TM_LDC + wm * 32 + 16 * i, cf[i][j], TM_LDC,
                                    wmma::mem_col_major);
#else
    tm_fma_store(acc, tid, Cs);
#endif
    __syncthreads();
    tm_write(a, m0, n0, tid, Cs);
}

#endif // FG_MM_HOST_TEST

// ============================================================================ integer tiled (mq)
// Quantized weights x 8-bit activations (Q8_1, or Q8_K for the K-quants) for many rows, with
// the reference's arithmetic: per 32-element unit an integer dot of the weight's stored values
// and the activation bytes (dp4a), scaled in f32 by the unit's weight scales and the block's
// activation scale (fg_q_dot, the matvec's own), so prefill sees the same numbers as decode and
// as the CPU reference, up to the f32 summation order. No tensor cores: dp4a on every target
// (HIP included); on sm_80+ its tensor-core twin (mqm, below) runs unless FORGE_CUDA_MMQ=dp4a.
// Tile: MQ_BM weight rows x MQ_BN activation rows, MQ_BU units of K per step, 256 threads;
// thread (tx, ty) = (tid % 16, tid / 16) owns outputs m = tx + 16 i, n = ty + 16 j.
// Each step every thread decodes one weight unit (row tid / MQ_BU) and loads one activation unit
// into shared memory (bytes + scales), then every thread dots its 4 x 4 outputs over the units.
enum {
    MQ_BM = 64,
    MQ_BN = 64,
    MQ_BU = 4, // 32-element units per K step
    MQ_NT = 256,
    MQ_TM = MQ_BM / 16,
    MQ_TN = MQ_BN / 16,
    // shared memory: [MQ_BU][rows] of 32 bytes (the unit's 8 words) then [MQ_BU][rows] of 16
    // bytes (weights: a_lo a_hi b_lo b_hi; activations: d, sum_lo, sum_hi, s)
    MQ_WQ = 0,
    MQ_WS = MQ_WQ + MQ_BU * MQ_BM * 32,
    MQ_XQ = MQ_WS + MQ_BU * MQ_BM * 16,
    MQ_XS = MQ_XQ + MQ_BU * MQ_BN * 32,
    MQ_SMEM = MQ_XS + MQ_BU * MQ_BN * 16,
};
static_assert(MQ_BM * MQ_BU == MQ_NT && MQ_BN * MQ_BU == MQ_NT, "one weight and one activation unit a thread");
static_assert(MQ_SMEM <= 48 * 1024, "mq tiles fit static shared memory");

struct mq_args {
    const uint8_t *w; // [n_out] weight rows, w_nb1 bytes apart
    size_t w_nb1;
    const uint8_t *x; // [n_rows] activation rows (Q8_1 or Q8_K blocks), x_nb1 bytes apart
    size_t x_nb1;
    float *dst;       // [n_rows][n_out], d_nb1 bytes apart
    size_t d_nb1;
    const float *bias;
    int64_t n_out;
    int64_t n_rows;
    int n_units; // n_in / 32
    int accumulate;
    // split K (mqm): block z takes units [z ku_split, (z + 1) ku_split); with part set it writes
    // its partial sums (no bias, no accumulate) to part + z split_nb, rows part_nb1 bytes apart,
    // and mq_reduce adds them up into dst
    int ku_split; // a multiple of MQM_BU (>= n_units when not split)
    uint8_t *part;
    size_t part_nb1, split_nb;
    // mqr: the activation rows repacked (mqr_pack), xp_tiles tiles of 8 rows a super-block; NULL:
    // read from x as they are
    const uint8_t *xp;
    int xp_tiles;
};

// The arguments of a whole-K call (the split fields are mq_plan_split's).
static inline mq_args mq_args_make(const uint8_t *w, size_t w_nb1, const uint8_t *x, size_t x_nb1, float *dst,
                                   size_t d_nb1, const float *bias, int64_t n_out, int64_t n_rows, int64_t n_in,
                                   bool accumulate) {
    mq_args a;
    a.w = w;
    a.w_nb1 = w_nb1;
    a.x = x;
    a.x_nb1 = x_nb1;
    a.dst = dst;
    a.d_nb1 = d_nb1;
    a.bias = bias;
    a.n_out = n_out;
    a.n_rows = n_rows;
    a.n_units = (int)(n_in / 32);
    a.accumulate = accumulate;
    a.ku_split = a.n_units;
    a.part = NULL;
    a.part_nb1 = a.split_nb = 0;
    a.xp = NULL;
    a.xp_tiles = 0;
    return a;
}

// Weight unit (m0 + tid / MQ_BU, ku0 + tid % MQ_BU) decoded into shared memory; zeros (a unit
// that adds nothing) outside the matrix.
template <int WT>
static FG_HD __forceinline__ void mq_load_w(const mq_args &a, int64_t m0, int ku0, int tid, uint8_t *sm) {
    typedef fg_qt<WT> Q;
    const int m = tid / MQ_BU, uu = tid % MQ_BU, ku = ku0 + uu;
    fg_qunit u;
    if (m0 + m < a.n_out && ku < a.n_units) {
        const uint8_t *blk = a.w + (size_t)(m0 + m) * a.w_nb1 + (size_t)(ku / Q::UPB) * Q::BYTES;
        fg_q_decode<WT, fg_rd_exact>(blk, ku % Q::UPB, u);
    } else {
FG_UNROLL
        for (int k = 0; k < 8; k++)
            u.q[k] = 0;
        u.a_lo = u.a_hi = u.b_lo = u.b_hi = 0.0f;
    }
    uint4 *q = (uint4 *)(sm + MQ_WQ + (size_t)(uu * MQ_BM + m) * 32);
    q[0] = make_uint4(u.q[0], u.q[1], u.q[2], u.q[3]);
    q[1] = make_uint4(u.q[4], u.q[5], u.q[6], u.q[7]);
    *(float4 *)(sm + MQ_WS + (size_t)(uu * MQ_BM + m) * 16) = make_float4(u.a_lo, u.a_hi, u.b_lo, u.b_hi);
}

// Activation unit (n0 + tid / MQ_BU, ku0 + tid % MQ_BU) into shared memory; zeros outside.
template <int WT>
static FG_HD __forceinline__ void mq_load_x(const mq_args &a, int64_t n0, int ku0, int tid, uint8_t *sm) {
    const int n = tid / MQ_BU, uu = tid % MQ_BU, ku = ku0 + uu;
    fg_q8unit x;
    if (n0 + n < a.n_rows && ku < a.n_units)
        mm_x_unit<WT>(a.x + (size_t)(n0 + n) * a.x_nb1, ku, x);
    else
        mm_x_unit_zero(x);
    uint4 *q = (uint4 *)(sm + MQ_XQ + (size_t)(uu * MQ_BN + n) * 32);
    q[0] = make_uint4((uint32_t)x.q[0], (uint32_t)x.q[1], (uint32_t)x.q[2], (uint32_t)x.q[3]);
    q[1] = make_uint4((uint32_t)x.q[4], (uint32_t)x.q[5], (uint32_t)x.q[6], (uint32_t)x.q[7]);
    uint32_t db, sb;
    memcpy(&db, &x.d, 4);
    memcpy(&sb, &x.s, 4);
    *(uint4 *)(sm + MQ_XS + (size_t)(uu * MQ_BN + n) * 16) = make_uint4(db, (uint32_t)x.sum_lo, (uint32_t)x.sum_hi, sb);
}

// The step's dots: acc[i][j] += unit dots of weight row tx + 16 i and activation row ty + 16 j.
template <int WT>
static FG_HD __forceinline__ void mq_compute(const uint8_t *sm, int tid, float (&acc)[MQ_TM][MQ_TN]) {
    const int tx = tid % 16, ty = tid / 16;
FG_UNROLL
    for (int uu = 0; uu < MQ_BU; uu++) {
        fg_qunit wu[MQ_TM];
        fg_q8unit xu[MQ_TN];
FG_UNROLL
        for (int i = 0; i < MQ_TM; i++) {
            const int m = tx + 16 * i;
            const uint4 *q = (const uint4 *)(sm + MQ_WQ + (size_t)(uu * MQ_BM + m) * 32);
            const uint4 q0 = q[0], q1 = q[1];
            wu[i].q[0] = q0.x, wu[i].q[1] = q0.y, wu[i].q[2] = q0.z, wu[i].q[3] = q0.w;
            wu[i].q[4] = q1.x, wu[i].q[5] = q1.y, wu[i].q[6] = q1.z, wu[i].q[7] = q1.w;
            const float4 s = *(const float4 *)(sm + MQ_WS + (size_t)(uu * MQ_BM + m) * 16);
            wu[i].a_lo = s.x, wu[i].a_hi = s.y, wu[i].b_lo = s.z, wu[i].b_hi = s.w;
        }
FG_UNROLL
        for (int j = 0; j < MQ_TN; j++) {
            const int n = ty + 16 * j;
            const uint4 *q = (const uint4 *)(sm + MQ_XQ + (size_t)(uu * MQ_BN + n) * 32);
            const uint4 q0 = q[0], q1 = q[1];
            xu[j].q[0] = (int)q0.x, xu[j].q[1] = (int)q0.y, xu[j].q[2] = (int)q0.z, xu[j].q[3] = (int)q0.w;
            xu[j].q[4] = (int)q1.x, xu[j].q[5] = (int)q1.y, xu[j].q[6] = (int)q1.z, xu[j].q[7] = (int)q1.w;
            const uint4 s = *(const uint4 *)(sm + MQ_XS + (size_t)(uu * MQ_BN + n) * 16);
            memcpy(&xu[j].d, &s.x, 4);
            xu[j].sum_lo = (int)s.y;
            xu[j].sum_hi = (int)s.z;
            memcpy(&xu[j].s, &s.w, 4);
        }
FG_UNROLL
        for (int i = 0; i < MQ_TM; i++)
FG_UNROLL
            for (int j = 0; j < MQ_TN; j++)
                acc[i][j] += fg_q_dot<WT>(wu[i], xu[j]);
    }
}

// Epilogue: each thread stores its outputs (16 consecutive m per half warp: coalesced).
static FG_HD __forceinline__ void mq_write(const mq_args &a, int64_t m0, int64_t n0, int tid,
                                           const float (&acc)[MQ_TM][MQ_TN]) {
    const int tx = tid % 16, ty = tid / 16;
FG_UNROLL
    for (int j = 0; j < MQ_TN; j++) {
        const int64_t r = n0 + ty + 16 * j;
        if (r >= a.n_rows)
            continue;
        float *d = (float *)((uint8_t *)a.dst + (size_t)r * a.d_nb1);
FG_UNROLL
        for (int i = 0; i < MQ_TM; i++) {
            const int64_t o = m0 + tx + 16 * i;
            if (o < a.n_out)
                mm_store(d + o, a.bias, o, acc[i][j], a.accumulate);
        }
    }
}

#ifndef FG_MM_HOST_TEST
template <int WT> static __global__ __launch_bounds__(MQ_NT, 2) void mq_kernel(mq_args a) {
    __shared__ __align__(16) uint8_t sm[MQ_SMEM];
    const int tid = threadIdx.x;
    const int64_t n0 = (int64_t)blockIdx.x * MQ_BN, m0 = (int64_t)blockIdx.y * MQ_BM;
    float acc[MQ_TM][MQ_TN];
FG_UNROLL
    for (int i = 0; i < MQ_TM; i++)
FG_UNROLL
        for (int j = 0; j < MQ_TN; j++)
            acc[i][j] = 0.0f;
    for (int ku0 = 0; ku0 < a.n_units; ku0 += MQ_BU) {
        mq_load_w<WT>(a, m0, ku0, tid, sm);
        mq_load_x<WT>(a, n0, ku0, tid, sm);
        __syncthreads();
        mq_compute<WT>(sm, tid, acc);
        __syncthreads();
    }
    mq_write(a, m0, n0, tid, acc);
}
#endif // FG_MM_HOST_TEST

// ============================================================================ integer tensor-core tiled (mqm)
// The mq kernel's arithmetic on the tensor cores (NVIDIA sm_80+): each unit's integer dot of the
// weight's decoded int8 values and the activation bytes comes from
// mma.sync.m16n8k32.row.col.s32.s8.s8.s32 (SPLIT types, Q2_K Q3_K Q6_K: two m16n8k16, one per
// 16-element half, over the same registers), then is scaled in f32 per unit exactly as fg_q_dot
// does, so results equal the dp4a kernel's up to the f32 summation order.
//   - OFF is subtracted at decode (bytes v - OFF, in [-32, 127]: int8), so the integer dot is
//     fg_q_dot's S - OFF * Q already; MIN types subtract b * (activation sum) in f32 as there
//     (Q4_1/Q5_1 with the Q8_1 block's stored s).
//   - The accumulator input of every mma is 0x4B400000 (1.5 * 2^23 as f32): the int32 result
//     read as f32 is 1.5 * 2^23 + dot exactly (|dot| <= 32 * 128 * 127 < 2^22), so one FADD
//     converts it (I2F is a quarter-rate instruction).
// Tile: MQM_BM = 128 weight rows x MQM_BN = 64 activation rows, MQM_BU = 4 units (128 K) a step,
// 256 threads = 8 warps as 4 (m) x 2 (n), each warp 32 x 32 (2 x 4 mma tiles of 16 x 8).
// A step stages 128 x 4 decoded weight units (16 KiB int8) and 64 x 4 activation units (8 KiB)
// plus f32 scales (12 KiB), 36 KiB, and the weight rows' raw blocks they are decoded from
// (mqm_raw: 14-32 KiB by type): dynamic shared memory, two blocks an SM. Per step a block
// reads ~128 x 4 x (block bytes / UPB) weight bytes and 64 x 4 x 36 activation bytes from
// global memory for 2 x 128 x 64 x 128 = 2.1 MFLOP (~60 FLOP a loaded byte for Q4_K); each
// warp issues 32 mma (64 for SPLIT) per step against 32 x 4 32-bit fragment loads and the
// f32 scaling (5 instructions an output a unit), which is the real limit, as in llama.cpp's mmq.
// Why: the dp4a kernel spends 8 dp4a + 2 sums a unit per output on the CUDA cores; here the
// integer part moves to the tensor cores and the CUDA cores keep only the scaling.
// Shared memory: unit tiles [MQM_BU][rows][8 words], the two 16-byte halves of a row swapped in
// rows 4..7 mod 8 (mqm_word), so that a fragment load (8 rows g = lane / 4, word lane % 4 of a
// half) touches 32 different banks.
// The phases are FG_HD so that tests/unit/test_cuda_matmul_host.cu replays them with an
// emulated mma written from the PTX ISA's fragment tables (not from the helpers below).
// NVIDIA only: HIP builds keep the dp4a kernel (mq_select).
#if !defined(__HIPCC__)
enum {
    MQM_BM = 128,
    MQM_BN = 64,
    MQM_BU = 4,
    MQM_NT = 256,
    MQM_WARPS_M = 4,
    MQM_WARPS_N = 2,
    MQM_WM = MQM_BM / MQM_WARPS_M, // warp tile: weight rows
    MQM_WN = MQM_BN / MQM_WARPS_N, // warp tile: activation rows
    MQM_NI = MQM_WM / 16,          // mma tiles a warp, along m
    MQM_NJ = MQM_WN / 8,           // along n
    // shared memory (bytes): weight units [BU][BM][32], activation units [BU][BN][32], weight
    // scales [4][BU][BM] f32 (a_lo a_hi b_lo b_hi), activation scales [4][BU][BN] f32 (d, s,
    // the sum of the unit's bytes (SPLIT: of its first half), the sum of its second half)
    MQM_WQ = 0,
    MQM_XQ = MQM_WQ + MQM_BU * MQM_BM * 32,
    MQM_WS = MQM_XQ + MQM_BU * MQM_BN * 32,
    MQM_XS = MQM_WS + 4 * MQM_BU * MQM_BM * 4,
    MQM_SMEM = MQM_XS + 4 * MQM_BU * MQM_BN * 4,
};
static_assert(MQM_NT == 32 * MQM_WARPS_M * MQM_WARPS_N, "8 warps of the sm_80 warp (32 lanes)");
static_assert((MQM_BM * MQM_BU) % MQM_NT == 0 && (MQM_BN * MQM_BU) % MQM_NT == 0, "whole units a thread");
static_assert(MQM_SMEM <= 48 * 1024, "mqm tiles fit static shared memory");
static_assert((int)MQM_BM >= (int)TM_BM, "the grid's y extent is checked against the tiled kernel's");

#define MQM_FBIAS 0x4B400000 // 1.5 * 2^23 as f32 bits
static FG_HD __forceinline__ float mqm_f(int c) { // the dot of an mma result biased by MQM_FBIAS
    float f;
    memcpy(&f, &c, 4);
    return f - 12582912.0f;
}

// Word w (0..7) of row r of a unit tile [rows][8 words] (halves swapped in rows 4..7 mod 8).
static FG_HD __forceinline__ int mqm_word(int r, int w) { return 8 * r + (w ^ (r & 4)); }

// Fragment layouts of mma.m16n8k32 .s8 (PTX ISA, "Matrix Fragments for mma.m16n8k32"), with
// g = lane / 4 (groupID) and t = lane % 4 (threadID_in_group); each 32-bit register holds 4
// consecutive k bytes, so a register is named by its row and its word (k / 4):
//   A (16 x 32, row-major), a0..a3: a0 row g, k 4t..4t+3 (word t); a1 row g + 8, word t;
//                                   a2 row g, word 4 + t;          a3 row g + 8, word 4 + t
//   B (32 x 8, "col": column n holds its 32 k bytes), b0..b1: column g, word t (b0), 4 + t (b1)
//   C (16 x 8, s32), c0..c3: row g (c0, c1) or g + 8 (c2, c3), column 2t + (i & 1)
// m16n8k16 .s8 takes {a0, a1} {b0} (or {a2, a3} {b1}) with the same per-register rows and
// columns over k 0..15 of its half: so one unit's registers serve the SPLIT halves too.
static FG_HD __forceinline__ int mqm_a_row(int lane, int i) { return (lane >> 2) + 8 * (i & 1); }
static FG_HD __forceinline__ int mqm_a_word(int lane, int i) { return (lane & 3) + 4 * (i >> 1); }
static FG_HD __forceinline__ int mqm_b_col(int lane, int i) { return (lane >> 2) + 0 * i; }
static FG_HD __forceinline__ int mqm_b_word(int lane, int i) { return (lane & 3) + 4 * i; }
static FG_HD __forceinline__ int mqm_c_row(int lane, int i) { return (lane >> 2) + 8 * (i >> 1); }
static FG_HD __forceinline__ int mqm_c_col(int lane, int i) { return 2 * (lane & 3) + (i & 1); }

// Bytes v (0..127) minus OFF, per byte, as int8 (no borrow between bytes).
template <int OFF> static FG_HD __forceinline__ uint32_t mqm_sub_off(uint32_t q) {
    if constexpr (OFF == 0)
        return q;
    return ((q | 0x80808080u) - (uint32_t)OFF * 0x01010101u) ^ 0x80808080u;
}

// One unit's 8 words into a unit tile at row r (two 16-byte stores).
static FG_HD __forceinline__ void mqm_put(uint8_t *tile, int r, const uint32_t (&q)[8]) {
    uint32_t *t = (uint32_t *)tile;
    *(uint4 *)(t + mqm_word(r, 0)) = make_uint4(q[0], q[1], q[2], q[3]);
    *(uint4 *)(t + mqm_word(r, 4)) = make_uint4(q[4], q[5], q[6], q[7]);
}

// Raw weight bytes: a step first copies, for each of its 128 weight rows, the bytes of the
// blocks its units lie in (one block of a 256-element type, whole though the step takes half of
// its units; BU blocks of a 32-element one, fewer at the end of K) into a row slot of shared
// memory with coalesced 16-byte loads (consecutive threads, consecutive windows of a row; the
// head and tail bytes of a segment that does not start or end on 16 bytes one by one), then
// decodes the units from there (fg_rd_smem). Reading the blocks through the decoder straight
// from global memory made every thread issue several 2- and 4-byte loads of rows 2 KiB apart.
// Byte i of a row's segment is at slot + (segment address & 15) + i; a slot keeps 16 bytes
// of slack after the segment for fg_rd_smem's word reads.
template <int WT> struct mqm_raw {
    typedef fg_qt<WT> Q;
    static_assert(Q::UPB == 1 || Q::UPB % MQM_BU == 0, "a step's units lie in one block, or in BU blocks");
    static constexpr int R = Q::UPB == 1 ? MQM_BU * Q::BYTES : Q::BYTES; // segment bytes, at most
    static constexpr int RW = R / 16;                                     // whole windows, at most
    static constexpr int SLOT = ((R + 15) / 16 + 2) * 16;
    static constexpr int K = (MQM_BM * RW + MQM_NT - 1) / MQM_NT;         // windows a thread
    static constexpr int OFFS = MQM_SMEM;                                 // the slots, after the tiles
    static constexpr int SMEM = MQM_SMEM + MQM_BM * SLOT;                 // the kernel's dynamic smem
};

// The segment of weight row m0 + m (in the matrix) for the step at unit ku0.
template <int WT>
static FG_HD __forceinline__ const uint8_t *mqm_seg(const mq_args &a, int64_t m0, int m, int ku0, int ku_end, int *n) {
    typedef fg_qt<WT> Q;
    if constexpr (Q::UPB == 1)
        *n = (ku_end - ku0 < MQM_BU ? ku_end - ku0 : MQM_BU) * Q::BYTES;
    else
        *n = Q::BYTES;
    return a.w + (size_t)(m0 + m) * a.w_nb1 + (size_t)(ku0 / Q::UPB) * Q::BYTES;
}

// Where row m's segment lies: its bytes [p, p + n), their offset in the first 16-byte window,
// and the whole windows c0 .. c1 - 1 inside it (head bytes before window c0, tail from c1).
struct mqm_span {
    const uint8_t *p;
    int n, off, c0, c1;
};
template <int WT>
static FG_HD __forceinline__ mqm_span mqm_span_of(const mq_args &a, int64_t m0, int m, int ku0, int ku_end) {
    mqm_span s;
    s.p = mqm_seg<WT>(a, m0, m, ku0, ku_end, &s.n);
    s.off = (int)((uintptr_t)s.p & 15);
    s.c0 = (s.off + 15) / 16;
    s.c1 = (s.off + s.n) / 16;
    return s;
}

// The raw staging of a step's weight rows, in two halves so that a kernel issues its other
// global loads in between: the whole 16-byte windows into registers, then (after the caller's
// loads) the head and tail bytes one by one and the windows into the row slots at `slots`.
// All global loads of a thread are issued before its first store (stores in between would keep
// the compiler from hoisting them).
template <int WT>
static FG_HD __forceinline__ void mqm_stage_w_load(const mq_args &a, int64_t m0, int ku0, int ku_end, int tid,
                                                   uint4 (&v)[mqm_raw<WT>::K]) {
    typedef mqm_raw<WT> G;
FG_UNROLL
    for (int k = 0; k < G::K; k++) {
        const int idx = tid + MQM_NT * k, m = idx / G::RW, j = idx % G::RW;
        if (m < MQM_BM && m0 + m < a.n_out) {
            const mqm_span sp = mqm_span_of<WT>(a, m0, m, ku0, ku_end);
            if (sp.c0 + j < sp.c1)
                v[k] = *(const uint4 *)(sp.p - sp.off + 16 * (sp.c0 + j));
        }
    }
}

template <int WT>
static FG_HD __forceinline__ void mqm_stage_w_store(const mq_args &a, int64_t m0, int ku0, int ku_end, int tid,
                                                    uint8_t *slots, const uint4 (&v)[mqm_raw<WT>::K]) {
    typedef mqm_raw<WT> G;
    // head and tail bytes: thread 2 m (m < 128) the head of row m, thread 2 m + 1 its tail
    {
        const int m = tid / 2;
        if (2 * MQM_BM <= MQM_NT || m < MQM_BM) {
            if (m0 + m < a.n_out) {
                const mqm_span sp = mqm_span_of<WT>(a, m0, m, ku0, ku_end);
                uint8_t *slot = slots + m * G::SLOT + sp.off;
                const int head = 16 * sp.c0 - sp.off < sp.n ? 16 * sp.c0 - sp.off : sp.n; // bytes [0, head)
                const int t0 = (sp.c1 > sp.c0 ? 16 * sp.c1 : 16 * sp.c0) - sp.off;      // bytes [t0, n)
                const int b0 = tid % 2 ? t0 : 0, b1 = tid % 2 ? sp.n : head;
                for (int b = b0; b < b1; b++)
                    slot[b] = sp.p[b];
            }
        }
    }
FG_UNROLL
    for (int k = 0; k < G::K; k++) {
        const int idx = tid + MQM_NT * k, m = idx / G::RW, j = idx % G::RW;
        if (m < MQM_BM && m0 + m < a.n_out) { // (the same span as the load: recomputed, not kept in registers)
            const mqm_span sp = mqm_span_of<WT>(a, m0, m, ku0, ku_end);
            if (sp.c0 + j < sp.c1)
                *(uint4 *)(slots + m * G::SLOT + 16 * (sp.c0 + j)) = v[k];
        }
    }
}

// Phase 1 of a step: the weight rows' raw segments into their slots, and the activation units
// (n0 + n, ku0 + uu) with their scales into registers (zeros outside the matrix and from unit
// ku_end on: the end of the block's K split).
enum { MQM_PX = MQM_BN * MQM_BU / MQM_NT }; // activation units a thread
// Its global loads (into registers), and the whole phase.
template <int WT>
static FG_HD __forceinline__ void mqm_load(const mq_args &a, int64_t m0, int64_t n0, int ku0, int ku_end, int tid,
                                           uint4 (&v)[mqm_raw<WT>::K], fg_q8unit (&x)[MQM_PX]) {
    mqm_stage_w_load<WT>(a, m0, ku0, ku_end, tid, v);
FG_UNROLL
    for (int p = 0; p < MQM_PX; p++) {
        const int idx = tid + MQM_NT * p, n = idx / MQM_BU, uu = idx % MQM_BU, ku = ku0 + uu;
        if (n0 + n < a.n_rows && ku < ku_end)
            mm_x_unit<WT>(a.x + (size_t)(n0 + n) * a.x_nb1, ku, x[p]);
        else
            mm_x_unit_zero(x[p]);
    }
}
template <int WT>
static FG_HD __forceinline__ void mqm_stage(const mq_args &a, int64_t m0, int64_t n0, int ku0, int ku_end, int tid,
                                            uint8_t *sm, fg_q8unit (&x)[MQM_PX]) {
    uint4 v[mqm_raw<WT>::K];
    mqm_load<WT>(a, m0, n0, ku0, ku_end, tid, v, x);
    mqm_stage_w_store<WT>(a, m0, ku0, ku_end, tid, sm + mqm_raw<WT>::OFFS, v);
}

// Unit sub of a block staged in a slot (fg_q_decode through fg_rd_smem). A Q4_K block at a
// 16-aligned slot address (its row and the tensor 16-aligned: the usual case) is read in three
// 16-byte loads (the header d dmin scales, the 32 bytes of its unit pair) instead of a word or
// byte at a time.
template <int WT> static FG_HD __forceinline__ void mqm_unit(const uint8_t *blk, int sub, fg_qunit &u) {
    if constexpr (WT == FG_TYPE_Q4_K) {
        if (((uintptr_t)blk & 15) == 0) {
            const uint4 hd = *(const uint4 *)blk;
            const uint4 q0 = *(const uint4 *)(blk + 16 + 32 * (sub >> 1));
            const uint4 q1 = *(const uint4 *)(blk + 32 + 32 * (sub >> 1));
            const uint32_t w[8] = {q0.x, q0.y, q0.z, q0.w, q1.x, q1.y, q1.z, q1.w};
            const int sh = 4 * (sub & 1);
FG_UNROLL
            for (int k = 0; k < 8; k++)
                u.q[k] = (w[k] >> sh) & 0x0F0F0F0Fu;
            // the 12 scale bytes are bytes 4..15 of the block: hd.y, hd.z, hd.w (no indexed array:
            // registers)
            const uint64_t s_lo = (uint64_t)hd.y | ((uint64_t)hd.z << 32);
            const uint32_t s_hi = hd.w;
            int sc, m;
            fg_q_scale_min_k4_of(
                sub, [s_lo, s_hi](int i) { return (uint32_t)(i < 8 ? s_lo >> (8 * i) : s_hi >> (8 * (i - 8))) & 0xFFu; },
                &sc, &m);
            fg_q_k4_scales(u, (uint16_t)(hd.x & 0xFFFFu), (uint16_t)(hd.x >> 16), sc, m);
            return;
        }
    }
    fg_q_decode<WT, fg_rd_smem>(blk, sub, u);
}

// Phase 2: weight units (m0 + m, ku0 + uu) decoded from the slots (OFF subtracted) into the
// weight tiles with their scales, zeros outside the matrix and from ku_end on; the activation
// units phase 1 read into the activation tiles. Only phase 2 writes the tiles, so phase 1 of
// the next step may run while other warps still compute on them (one barrier fewer a step).
template <int WT>
static FG_HD __forceinline__ void mqm_decode(const mq_args &a, int64_t m0, int ku0, int ku_end, int tid, uint8_t *sm,
                                             const fg_q8unit (&x)[MQM_PX]) {
    typedef fg_qt<WT> Q;
    typedef mqm_raw<WT> G;
    float *xs = (float *)(sm + MQM_XS);
FG_UNROLL
    for (int p = 0; p < MQM_PX; p++) {
        const int idx = tid + MQM_NT * p, n = idx / MQM_BU, uu = idx % MQM_BU;
        uint32_t q[8];
FG_UNROLL
        for (int k = 0; k < 8; k++)
            q[k] = (uint32_t)x[p].q[k];
        mqm_put(sm + MQM_XQ + (size_t)uu * MQM_BN * 32, n, q);
        xs[(0 * MQM_BU + uu) * MQM_BN + n] = x[p].d;
        xs[(1 * MQM_BU + uu) * MQM_BN + n] = x[p].s;
        xs[(2 * MQM_BU + uu) * MQM_BN + n] = (float)(Q::SPLIT ? x[p].sum_lo : x[p].sum_lo + x[p].sum_hi);
        xs[(3 * MQM_BU + uu) * MQM_BN + n] = (float)x[p].sum_hi;
    }
    constexpr int PW = MQM_BM * MQM_BU / MQM_NT;
    float *ws = (float *)(sm + MQM_WS);
FG_UNROLL
    for (int p = 0; p < PW; p++) {
        const int idx = tid + MQM_NT * p, m = idx / MQM_BU, uu = idx % MQM_BU, ku = ku0 + uu;
        fg_qunit u;
        if (m0 + m < a.n_out && ku < ku_end) {
            const mqm_span sp = mqm_span_of<WT>(a, m0, m, ku0, ku_end);
            const uint8_t *blk = sm + G::OFFS + m * G::SLOT + sp.off + (Q::UPB == 1 ? uu * Q::BYTES : 0);
            mqm_unit<WT>(blk, ku % Q::UPB, u);
FG_UNROLL
            for (int k = 0; k < 8; k++)
                u.q[k] = mqm_sub_off<Q::OFF>(u.q[k]);
        } else {
FG_UNROLL
            for (int k = 0; k < 8; k++)
                u.q[k] = 0;
            u.a_lo = u.a_hi = u.b_lo = u.b_hi = 0.0f;
        }
        mqm_put(sm + MQM_WQ + (size_t)uu * MQM_BM * 32, m, u.q);
        ws[(0 * MQM_BU + uu) * MQM_BM + m] = u.a_lo;
        ws[(1 * MQM_BU + uu) * MQM_BM + m] = u.a_hi;
        ws[(2 * MQM_BU + uu) * MQM_BM + m] = u.b_lo;
        ws[(3 * MQM_BU + uu) * MQM_BM + m] = u.b_hi;
    }
}

// A lane's operands for unit uu of its warp's 32 x 32 tile: the A and B fragments of every mma
// tile, and the scales of the rows and columns its C registers hold (only those the type uses).
struct mqm_frag {
    uint32_t a[MQM_NI][4];
    uint32_t b[MQM_NJ][2];
    float w[MQM_NI][2][4]; // [i][rows g, g + 8][a_lo a_hi b_lo b_hi]
    float x[MQM_NJ][2][4]; // [j][columns 2t, 2t + 1][d s sum sum_hi]
};

static FG_HD __forceinline__ int mqm_warp_m(int warp) { return (warp % MQM_WARPS_M) * MQM_WM; }
static FG_HD __forceinline__ int mqm_warp_n(int warp) { return (warp / MQM_WARPS_M) * MQM_WN; }

// The end of the K split that starts at unit ku_lo; the mma tiles j of a warp with a row in the
// matrix (the others are skipped: few-row batches).
static FG_HD __forceinline__ int mqm_ku_end(const mq_args &a, int ku_lo) {
    return a.n_units - ku_lo < a.ku_split ? a.n_units : ku_lo + a.ku_split;
}
static FG_HD __forceinline__ int mqm_nj(const mq_args &a, int64_t n0, int warp) {
    const int64_t wn0 = n0 + mqm_warp_n(warp);
    return wn0 >= a.n_rows ? 0 : a.n_rows - wn0 >= 8 * MQM_NJ ? MQM_NJ : (int)((a.n_rows - wn0 + 7) / 8);
}

template <int WT>
static FG_HD __forceinline__ void mqm_frags(const uint8_t *sm, int uu, int warp, int lane, mqm_frag &f) {
    typedef fg_qt<WT> Q;
    const int wm = mqm_warp_m(warp), wn = mqm_warp_n(warp);
    const uint32_t *wq = (const uint32_t *)(sm + MQM_WQ) + (size_t)uu * MQM_BM * 8;
    const uint32_t *xq = (const uint32_t *)(sm + MQM_XQ) + (size_t)uu * MQM_BN * 8;
    const float *ws = (const float *)(sm + MQM_WS);
    const float *xs = (const float *)(sm + MQM_XS);
    // which scales the type reads (mqm_scale)
    const bool use[2][4] = {{true, Q::SPLIT, Q::MIN, Q::MIN && Q::SPLIT},
                            {true, Q::MIN && Q::QK == 32, Q::MIN && Q::QK == 256, Q::MIN && Q::SPLIT}};
FG_UNROLL
    for (int i = 0; i < MQM_NI; i++) {
FG_UNROLL
        for (int r = 0; r < 4; r++)
            f.a[i][r] = wq[mqm_word(wm + 16 * i + mqm_a_row(lane, r), mqm_a_word(lane, r))];
FG_UNROLL
        for (int h = 0; h < 2; h++) {
            const int m = wm + 16 * i + mqm_c_row(lane, 2 * h);
FG_UNROLL
            for (int c = 0; c < 4; c++)
                f.w[i][h][c] = use[0][c] ? ws[(c * MQM_BU + uu) * MQM_BM + m] : 0.0f;
        }
    }
FG_UNROLL
    for (int j = 0; j < MQM_NJ; j++) {
FG_UNROLL
        for (int r = 0; r < 2; r++)
            f.b[j][r] = xq[mqm_word(wn + 8 * j + mqm_b_col(lane, r), mqm_b_word(lane, r))];
FG_UNROLL
        for (int h = 0; h < 2; h++) {
            const int n = wn + 8 * j + mqm_c_col(lane, h);
FG_UNROLL
            for (int c = 0; c < 4; c++)
                f.x[j][h][c] = use[1][c] ? xs[(c * MQM_BU + uu) * MQM_BN + n] : 0.0f;
        }
    }
}

// acc[r] += the unit's value for C register r of mma tile (i, j): fg_q_dot's f32 arithmetic on
// the integer dots lo (the whole unit, or its first half for SPLIT types) and hi (second half).
template <int WT>
static FG_HD __forceinline__ void mqm_scale(const mqm_frag &f, int i, int j, const int (&lo)[4], const int (&hi)[4],
                                            float (&acc)[4]) {
    typedef fg_qt<WT> Q;
FG_UNROLL
    for (int r = 0; r < 4; r++) {
        const float *w = f.w[i][r >> 1]; // row mqm_c_row(lane, r)
        const float *x = f.x[j][r & 1];  // column mqm_c_col(lane, r)
        if constexpr (Q::MIN && Q::QK == 32) { // Q4_1, Q5_1: (d_w d_x) S + m_w s_x
            acc[r] += (w[0] * x[0]) * mqm_f(lo[r]) - w[2] * x[1];
        } else {
            float v;
            if constexpr (Q::SPLIT)
                v = w[0] * mqm_f(lo[r]) + w[1] * mqm_f(hi[r]);
            else
                v = w[0] * mqm_f(lo[r]);
            if constexpr (Q::MIN) {
                if constexpr (Q::SPLIT)
                    v -= w[2] * x[2] + w[3] * x[3];
                else
                    v -= w[2] * x[2];
            }
            acc[r] += v * x[0];
        }
    }
}

// The arguments split z writes with: its partial sums at dst + z split_nb, without bias or
// accumulate (mq_reduce applies them); a itself when K is not split.
static FG_HD __forceinline__ mq_args mq_split_part(const mq_args &a, int z) {
    if (!a.part)
        return a;
    mq_args p = a;
    p.dst = (float *)(a.part + (size_t)z * a.split_nb);
    p.d_nb1 = a.part_nb1;
    p.bias = NULL;
    p.accumulate = 0;
    return p;
}

// Output (r, o) of a split call: the splits' partial sums (written through mq_split_part(a, z)
// for z = 0 .. n_split - 1) added in z order, then stored as an unsplit call would.
static FG_HD __forceinline__ void mq_reduce_one(const mq_args &a, int n_split, int64_t r, int64_t o) {
    const float *p = (const float *)(a.part + (size_t)r * a.part_nb1) + o;
    float s = 0.0f;
    for (int z = 0; z < n_split; z++)
        s += p[(size_t)z * a.split_nb / 4];
    mm_store((float *)((uint8_t *)a.dst + (size_t)r * a.d_nb1) + o, a.bias, o, s, a.accumulate);
}

// Epilogue: C register r of tile (i, j) is output (m0 + wm + 16 i + c_row, n0 + wn + 8 j + c_col).
static FG_HD __forceinline__ void mqm_write(const mq_args &a, int64_t m0, int64_t n0, int warp, int lane,
                                            const float (&acc)[MQM_NI][MQM_NJ][4]) {
    const int wm = mqm_warp_m(warp), wn = mqm_warp_n(warp);
FG_UNROLL
    for (int j = 0; j < MQM_NJ; j++)
FG_UNROLL
        for (int h = 0; h < 2; h++) {
            const int64_t r = n0 + wn + 8 * j + mqm_c_col(lane, h);
            if (r >= a.n_rows)
                continue;
            float *d = (float *)((uint8_t *)a.dst + (size_t)r * a.d_nb1);
FG_UNROLL
            for (int i = 0; i < MQM_NI; i++)
FG_UNROLL
                for (int v = 0; v < 2; v++) {
                    const int64_t o = m0 + wm + 16 * i + mqm_c_row(lane, 2 * v);
                    if (o < a.n_out)
                        mm_store(d + o, a.bias, o, acc[i][j][2 * v + h], a.accumulate);
                }
        }
}

// ============================================================================ F16 tensor-core tiled (mhm)
// Quantized weights x F16 activation rows for batched decode and prefill (FORGE_CUDA_MMQ=f16):
// the F16 GEMM's arithmetic (each weight dequantized exactly as the reference, rounded to F16;
// the activations F16: the 8-bit rows widened, d * q rounded, or F32 rows rounded; products
// exact, summed in f32), as the library GEMM over F16 copies computes it, but with the weights
// dequantized inside the kernel from their raw blocks, so that they are read once, from their
// GGUF bytes, and no F16 copy is written. On the CUDA cores only the dequantization is left (per
// weight, whatever the number of activation rows; mqm scales every output of every unit), the
// products go to mma.sync m16n8k16 (f16 in, f32 accumulation).
// Tile and step as mqm's (128 weight rows x 64 activation rows, 4 units of K a step, 8 warps of
// 32 x 32, the same split K, C fragments and epilogue): a step stages the weight rows' raw
// blocks (mqm_stage_w_*) and the activation chunks (registers), then decodes the weight units
// into F16 tiles and stores the activation chunks, then computes from the tiles with ldmatrix.
// Tiles: [MHM_BU][rows][32 halves], rows of four 16-byte chunks, chunk c of row r stored at
// c ^ ((r >> 1) & 3), so that 8 consecutive rows of one chunk (an ldmatrix phase, a store
// phase) fall on 8 different bank groups.
enum {
    MHM_BU = MQM_BU,
    MHM_WH = 0,                                // weight tiles
    MHM_XH = MHM_WH + MHM_BU * MQM_BM * 64,    // activation tiles
    MHM_SMEM = MHM_XH + MHM_BU * MQM_BN * 64,  // then the raw slots (mqm_raw<WT>::SLOT each)
    MHM_PX = MQM_BN * MHM_BU * 4 / MQM_NT,     // 16-byte activation chunks a thread a step
    MHM_PW = MQM_BM * MHM_BU / MQM_NT,         // weight units a thread a step
};
static_assert(MHM_PW * (MQM_NT / MQM_BM) == MHM_BU, "a thread's units: consecutive ones of one row");
static_assert(MQM_NT == 4 * MQM_BN && MHM_PX == MHM_BU, "a thread's activation chunks: one in each unit tile");
template <int WT> struct mhm_smem {
    static constexpr int SMEM = MHM_SMEM + MQM_BM * mqm_raw<WT>::SLOT; // the kernel's dynamic smem
};

// Byte offset of chunk c (0..3) of row r in a unit tile.
static FG_HD __forceinline__ int mhm_chunk(int r, int c) { return 64 * r + 16 * (c ^ ((r >> 1) & 3)); }

// The rows lane gives ldmatrix.x4 for one k16 half kh of a unit tile (matrix lane / 8, its row
// lane % 8): the A fragment of mma tile i (a0..a3: rows 0-7 then 8-15 at k 0-7, the same at
// k 8-15) and the B fragments of n tiles 2 jp, 2 jp + 1 (b0 b1 of the first, then of the second).
static FG_HD __forceinline__ int mhm_a_off(int wm, int i, int kh, int lane) {
    return mhm_chunk(wm + 16 * i + (lane & 15), 2 * kh + lane / 16);
}
static FG_HD __forceinline__ int mhm_b_off(int wn, int jp, int kh, int lane) {
    return mhm_chunk(wn + 16 * jp + (lane & 7) + 8 * (lane / 16), 2 * kh + (lane / 8) % 2);
}

// A step's global loads (issued a step ahead: see mhm_kernel): the weight rows' whole 16-byte
// windows into v, activation chunk p of the thread (row n0 + tid / 4, unit ku0 + p, halves
// 8 (tid % 4) ..) into xv; zeros outside the matrix and from ku_end on.
template <int WT>
static FG_HD __forceinline__ void mhm_load(const mq_args &a, int64_t m0, int64_t n0, int ku0, int ku_end, int tid,
                                           uint4 (&v)[mqm_raw<WT>::K], uint4 (&xv)[MHM_PX]) {
    mqm_stage_w_load<WT>(a, m0, ku0, ku_end, tid, v);
FG_UNROLL
    for (int p = 0; p < MHM_PX; p++) {
        const int c = tid % 4, n = tid / 4, ku = ku0 + p;
        if (n0 + n < a.n_rows && ku < ku_end)
            xv[p] = *(const uint4 *)(a.x + (size_t)(n0 + n) * a.x_nb1 + (size_t)ku * 64 + 16 * c);
        else
            xv[p] = make_uint4(0, 0, 0, 0);
    }
}

// The 32 values of a decoded unit, as fg_q_dequant_unit computes them (the byte as int8, minus
// OFF, times a, minus b: f32, rounded once each), rounded to F16, in pairs. The int8 to float
// conversion without I2F: byte ^ 0x80 is int8 + 128 (0..255), the low byte of the float
// 2^23 + that, from which 2^23 + 128 + OFF is subtracted exactly.
template <int WT> static FG_HD __forceinline__ void mhm_halves(const fg_qunit &u, uint32_t (&h)[16]) {
    typedef fg_qt<WT> Q;
    const float bias = 8388608.0f + 128.0f + (float)Q::OFF;
FG_UNROLL
    for (int k = 0; k < 8; k++) {
        const uint32_t w = u.q[k] ^ 0x80808080u;
        const float a = k < 4 ? u.a_lo : u.a_hi, b = k < 4 ? u.b_lo : u.b_hi;
        float f[4];
FG_UNROLL
        for (int e = 0; e < 4; e++) {
            const uint32_t bits = fg_q_perm(w, 0x4B000000u, 0x7650u | (uint32_t)e); // 0x4B0000 : byte e
            float x;
            memcpy(&x, &bits, 4);
            x = fg_fmul_rn(fg_fsub_rn(x, bias), a);
            if constexpr (Q::MIN)
                x = fg_fsub_rn(x, b);
            f[e] = x;
        }
        h[2 * k] = (uint32_t)fg_q_f2h(f[0]) | ((uint32_t)fg_q_f2h(f[1]) << 16);
        h[2 * k + 1] = (uint32_t)fg_q_f2h(f[2]) | ((uint32_t)fg_q_f2h(f[3]) << 16);
    }
}

// Phase 2: the activation chunks into their tiles; weight units (m0 + m, ku0 + uu) decoded from
// the slots and rounded to F16 (mhm_halves) into the weight tiles (zeros outside the matrix and
// from ku_end on). Thread tid takes units 2 (tid / 128) and + 1 of row tid % 128 (a Q4_K pair
// shares its bytes), so that a store phase covers 8 consecutive rows of one tile.
template <int WT>
static FG_HD __forceinline__ void mhm_decode(const mq_args &a, int64_t m0, int ku0, int ku_end, int tid, uint8_t *sm,
                                             const uint4 (&xv)[MHM_PX]) {
    typedef fg_qt<WT> Q;
    typedef mqm_raw<WT> G;
FG_UNROLL
    for (int p = 0; p < MHM_PX; p++)
        *(uint4 *)(sm + MHM_XH + p * MQM_BN * 64 + mhm_chunk(tid / 4, tid % 4)) = xv[p];
FG_UNROLL
    for (int p = 0; p < MHM_PW; p++) {
        const int m = tid % MQM_BM, uu = MHM_PW * (tid / MQM_BM) + p, ku = ku0 + uu;
        uint32_t h[16];
        if (m0 + m < a.n_out && ku < ku_end) {
            const mqm_span sp = mqm_span_of<WT>(a, m0, m, ku0, ku_end);
            const uint8_t *blk = sm + MHM_SMEM + m * G::SLOT + sp.off + (Q::UPB == 1 ? uu * Q::BYTES : 0);
            fg_qunit u;
            mqm_unit<WT>(blk, ku % Q::UPB, u);
            mhm_halves<WT>(u, h);
        } else {
FG_UNROLL
            for (int e = 0; e < 16; e++)
                h[e] = 0;
        }
        uint8_t *row = sm + MHM_WH + uu * MQM_BM * 64;
FG_UNROLL
        for (int c = 0; c < 4; c++)
            *(uint4 *)(row + mhm_chunk(m, c)) = make_uint4(h[4 * c], h[4 * c + 1], h[4 * c + 2], h[4 * c + 3]);
    }
}

#if !defined(FG_MM_HOST_TEST)
// lo (and hi) = the unit's integer dots biased by MQM_FBIAS: k32 over the unit, or k16 per half.
template <bool SPLIT>
static __device__ __forceinline__ void mqm_mma(const uint32_t (&a)[4], const uint32_t (&b)[2], int (&lo)[4], int (&hi)[4]) {
#if defined(FG_GPU_HAS_MMA)
    const int z = MQM_FBIAS;
    if constexpr (SPLIT) {
        asm("mma.sync.aligned.m16n8k16.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5}, {%6}, {%7,%7,%7,%7};"
            : "=r"(lo[0]), "=r"(lo[1]), "=r"(lo[2]), "=r"(lo[3])
            : "r"(a[0]), "r"(a[1]), "r"(b[0]), "r"(z));
        asm("mma.sync.aligned.m16n8k16.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5}, {%6}, {%7,%7,%7,%7};"
            : "=r"(hi[0]), "=r"(hi[1]), "=r"(hi[2]), "=r"(hi[3])
            : "r"(a[2]), "r"(a[3]), "r"(b[1]), "r"(z));
    } else {
        asm("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
            "{%10,%10,%10,%10};"
            : "=r"(lo[0]), "=r"(lo[1]), "=r"(lo[2]), "=r"(lo[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "r"(z));
        hi[0] = hi[1] = hi[2] = hi[3] = MQM_FBIAS;
    }
#else // never launched below sm_80 (mq_select)
    (void)a, (void)b;
    for (int r = 0; r < 4; r++)
        lo[r] = hi[r] = MQM_FBIAS;
#endif
}

template <int WT> static __global__ __launch_bounds__(MQM_NT, 2) void mqm_kernel(mq_args a) {
    extern __shared__ uint4 mqm_smem4[]; // mqm_raw<WT>::SMEM bytes
    uint8_t *sm = (uint8_t *)mqm_smem4;
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32; // the sm_80 warp
    const int64_t n0 = (int64_t)blockIdx.x * MQM_BN, m0 = (int64_t)blockIdx.y * MQM_BM;
    const int ku_lo = (int)blockIdx.z * a.ku_split, ku_end = mqm_ku_end(a, ku_lo);
    const int nj = mqm_nj(a, n0, warp);
    float acc[MQM_NI][MQM_NJ][4];
FG_UNROLL
    for (int i = 0; i < MQM_NI; i++)
FG_UNROLL
        for (int j = 0; j < MQM_NJ; j++)
FG_UNROLL
            for (int r = 0; r < 4; r++)
                acc[i][j][r] = 0.0f;
    // (issuing a step's loads a step ahead, as mhm does, spills the K-quants other than Q4_K at
    // 128 registers: not measured yet, so this kernel stages each step after the last one)
    for (int ku0 = ku_lo; ku0 < ku_end; ku0 += MQM_BU) {
        fg_q8unit x[MQM_PX];
        mqm_stage<WT>(a, m0, n0, ku0, ku_end, tid, sm, x); // (the slots: free since the last barrier)
        __syncthreads();
        mqm_decode<WT>(a, m0, ku0, ku_end, tid, sm, x); // (the tiles: every warp is past its compute)
        __syncthreads();
        if (nj > 0) {
FG_UNROLL_N(1) // (unrolled, the units' operands spill at the 128 registers of 2 blocks an SM)
            for (int uu = 0; uu < MQM_BU; uu++) {
                mqm_frag f;
                mqm_frags<WT>(sm, uu, warp, lane, f);
FG_UNROLL
                for (int i = 0; i < MQM_NI; i++)
FG_UNROLL
                    for (int j = 0; j < MQM_NJ; j++) {
                        if (j >= nj)
                            break;
                        int lo[4], hi[4];
                        mqm_mma<fg_qt<WT>::SPLIT>(f.a[i], f.b[j], lo, hi);
                        mqm_scale<WT>(f, i, j, lo, hi, acc[i][j]);
                    }
            }
        }
    }
    mqm_write(mq_split_part(a, (int)blockIdx.z), m0, n0, warp, lane, acc);
}

// ldmatrix.x4 at p (this lane's row) and one mma.m16n8k16 .f16 with f32 accumulation.
static __device__ __forceinline__ void mhm_ldm4(const uint8_t *p, uint32_t (&r)[4]) {
#if defined(FG_GPU_HAS_MMA)
    const unsigned s = (unsigned)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(s));
#else
    (void)p;
    r[0] = r[1] = r[2] = r[3] = 0;
#endif
}

static __device__ __forceinline__ void mhm_mma(const uint32_t (&a)[4], uint32_t b0, uint32_t b1, float (&c)[4]) {
#if defined(FG_GPU_HAS_MMA)
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
    (void)a, (void)b0, (void)b1, (void)c;
#endif
}

template <int WT> static __global__ __launch_bounds__(MQM_NT, 2) void mhm_kernel(mq_args a) {
    extern __shared__ uint4 mhm_smem4[]; // mhm_smem<WT>::SMEM bytes
    uint8_t *sm = (uint8_t *)mhm_smem4;
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32; // the sm_80 warp
    const int64_t n0 = (int64_t)blockIdx.x * MQM_BN, m0 = (int64_t)blockIdx.y * MQM_BM;
    const int ku_lo = (int)blockIdx.z * a.ku_split, ku_end = mqm_ku_end(a, ku_lo);
    const int wm = mqm_warp_m(warp), wn = mqm_warp_n(warp);
    const int nj = mqm_nj(a, n0, warp);
    float acc[MQM_NI][MQM_NJ][4];
FG_UNROLL
    for (int i = 0; i < MQM_NI; i++)
FG_UNROLL
        for (int j = 0; j < MQM_NJ; j++)
FG_UNROLL
            for (int r = 0; r < 4; r++)
                acc[i][j][r] = 0.0f;
    // software pipeline: a step's global loads are issued before the step before it decodes and
    // computes, so that their latency hides behind that work (v, xv: in registers meanwhile)
    uint4 v[mqm_raw<WT>::K], xv[MHM_PX];
    mhm_load<WT>(a, m0, n0, ku_lo, ku_end, tid, v, xv);
    for (int ku0 = ku_lo; ku0 < ku_end; ku0 += MHM_BU) {
        mqm_stage_w_store<WT>(a, m0, ku0, ku_end, tid, sm + MHM_SMEM, v); // (the slots: free since the last barrier)
        __syncthreads();
        mhm_decode<WT>(a, m0, ku0, ku_end, tid, sm, xv); // (the tiles: every warp is past its compute)
        if (ku0 + MHM_BU < ku_end)
            mhm_load<WT>(a, m0, n0, ku0 + MHM_BU, ku_end, tid, v, xv);
        __syncthreads();
        if (nj > 0) {
FG_UNROLL
            for (int uu = 0; uu < MHM_BU; uu++) {
                const uint8_t *wt = sm + MHM_WH + uu * MQM_BM * 64, *xt = sm + MHM_XH + uu * MQM_BN * 64;
FG_UNROLL
                for (int kh = 0; kh < 2; kh++) {
                    uint32_t af[MQM_NI][4], bf[MQM_NJ / 2][4];
FG_UNROLL
                    for (int i = 0; i < MQM_NI; i++)
                        mhm_ldm4(wt + mhm_a_off(wm, i, kh, lane), af[i]);
FG_UNROLL
                    for (int jp = 0; jp < MQM_NJ / 2; jp++)
                        if (2 * jp < nj)
                            mhm_ldm4(xt + mhm_b_off(wn, jp, kh, lane), bf[jp]);
FG_UNROLL
                    for (int i = 0; i < MQM_NI; i++)
FG_UNROLL
                        for (int j = 0; j < MQM_NJ; j++) {
                            if (j >= nj)
                                break;
                            mhm_mma(af[i], bf[j / 2][2 * (j % 2)], bf[j / 2][2 * (j % 2) + 1], acc[i][j]);
                        }
                }
            }
        }
    }
    mqm_write(mq_split_part(a, (int)blockIdx.z), m0, n0, warp, lane, acc);
}

// The split-K sum: one thread an output, rows along y.
static __global__ void mq_reduce_kernel(mq_args a, int n_split) {
    const int64_t o = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    for (int64_t r = blockIdx.y; r < a.n_rows; r += gridDim.y)
        if (o < a.n_out)
            mq_reduce_one(a, n_split, r, o);
}
#endif // !FG_MM_HOST_TEST
#endif // !__HIPCC__

// ============================================================================ register-fed integer tensor-core (mqr)
// Q4_K and Q6_K weights x Q8_K activation rows for batched decode (9..128 rows by default,
// FORGE_CUDA_MQR; NVIDIA sm_80+; Q6_K: below, after Q4_K's helpers): the matvec's arithmetic on
// the tensor cores, without shared memory. Every warp owns 16 weight rows and a range of
// super-blocks, and reads its weight bytes from global memory straight into mma.m16n8k32 A
// fragments: lane (g, t) = (lane / 4, lane % 4) loads bytes
// 8t .. 8t + 7 of each 32-byte pair j of rows g and g + 8, whose low nibbles are elements 8t ..
// 8t + 7 of sub-block 2j and high nibbles the same elements of sub-block 2j + 1. The mma's k
// order is free (a dot product is the same sum in any order) as long as both operands follow it:
// k 4t + e (e < 4) is element 8t + e of the sub-block, k 16 + 4t + e element 8t + 4 + e, so a B
// fragment is the 8 activation bytes 8t .. 8t + 7 of the same sub-block. Each mma is one
// sub-block (one scale, one min), so its integer dots S are exact; per super-block, per output,
//   SI = sum_j sc_j S_j,  MI = sum_j m_j Q_j   (Q_j: the sub-block's activation sum, from bsums)
// in int32 (|SI| < 2^25), then acc += d_x (d SI - dmin MI) in f32: ggml's Q4_K x Q8_K
// reference arithmetic (integers exact, then the float scales). Each activation row is re-read
// from L1/L2 by every warp, 32 bytes a sub-block, against 256 weight bytes: mqr is for few rows.
// Geometry: blocks of MQR_WARPS warps = (MQR_WARPS / kw) row groups of 16 rows x kw warps along
// K (kw chosen so that enough warps are in flight; each sums its part, the block adds them up
// through shared memory in kw order: deterministic), along grid y; along x, groups of 8 NT
// activation rows (the blocks of one row block run together: the later groups' weight reads
// hit L2).
// Weight loads run a super-block ahead; before fg_pdl_wait only the weights are read.
#if !defined(__HIPCC__)
enum {
    MQR_WARPS = 4,               // warps a block
    MQR_NTH = 32 * MQR_WARPS,    // threads a block
    MQR_MAX_NT = 8,              // mma n tiles (8 activation rows each) a warp at most
    MQR_PASS_NT = 4,             // n tiles a pass over a super-block's sub-blocks
    MQR_SB_W = 144,              // bytes of a Q4_K super-block
    MQR_SB_X = 292,              // bytes of a Q8_K block
    MQR_X_QS = 4, MQR_X_BS = 260 // Q8_K: offsets of qs and bsums
};
static_assert(sizeof(fg_block_q4_k) == MQR_SB_W && sizeof(fg_block_q8_k) == MQR_SB_X, "mqr: block sizes");
static_assert(offsetof(fg_block_q8_k, qs) == MQR_X_QS && offsetof(fg_block_q8_k, bsums) == MQR_X_BS,
              "mqr: Q8_K layout");

// The activation rows repacked for mqr (the default, FORGE_CUDA_MQR_PACK=0 off; mqr_pack_kernel, one pass before
// the matmul): the Q8_K rows read in their own layout cost each lane two 4-byte loads a B
// fragment from 8 rows 292 bytes apart and two more for the bsums, every warp again (ncu, 16
// rows: L1-bound). Repacked, a chunk of MQR_XP bytes per (super-block, tile of 8 rows), chunks
// [sb][tile], holds the same bytes in the order the lanes read them:
//   B   [0, 2048):    16 bytes a (pair of groups p, lane): Q4_K the B fragments of sub-blocks 2p
//                     and 2p + 1 (qs 32 u + 8 t, 8 bytes each, of row 8 tile + lane / 4); Q6_K
//                     those of groups 4p .. 4p + 3 (qs 16 G + 4 t, 4 bytes each)
//   Q   [2048, 2304): 8 bytes a (t, u): bsums word u of rows 8 tile + 2 t and + 2 t + 1
//   D   [2304, 2336): 8 bytes a t: the d of those two rows
//   M   [2336, 2592): 8 bytes a lane (g, t): the low bytes of bsums 4t .. 4t + 3 of row 8 tile + g,
//                     then their high bytes (the B fragment of the chained variant's mins mma)
// Rows past n_rows repeat the last row (as mqr_xblk clamps); a warp's tiles past the packed
// ones read the last packed tile (their outputs are never written).
enum { MQR_XP_Q = 2048, MQR_XP_D = 2304, MQR_XP_M = 2336, MQR_XP = 2592, MQR_XP_UNITS = MQR_XP / 16 };
static_assert(MQR_XP == FG_MQR_XP_BYTES, "mqr: the scratch estimate's chunk size");

// A lane's bytes of one super-block of its rows g and g + 8.
struct mqr_w {
    uint4 h[2];    // d, dmin (halves), scales[12]
    uint2 q[2][4]; // qs bytes 32 j + 8 t .. + 7 of pair j
};
// The super-block's scales: byte k of sc[r][w] (m[r][w]) is the 6-bit scale (min) of sub-block
// 4 w + k of row g + 8 r (fg_get_scale_min_k4, four at a time); d, dmin as floats.
struct mqr_s {
    uint32_t sc[2][2], m[2][2];
    float d[2], dm[2];
};

// Super-block sb (bytes apart) of the lane's row g + 8 r of the warp's rows from m0; rows past
// n_out read row n_out - 1 (never written).
static FG_HD __forceinline__ const uint8_t *mqr_wblk(const mq_args &a, int64_t m0, int sb, int lane, int r,
                                                     int bytes) {
    int64_t row = m0 + lane / 4 + 8 * r;
    row = row < a.n_out ? row : a.n_out - 1;
    return a.w + (size_t)row * a.w_nb1 + (size_t)sb * (size_t)bytes;
}

static FG_HD __forceinline__ void mqr_load_w(const mq_args &a, int64_t m0, int sb, int lane, mqr_w &w) {
FG_UNROLL
    for (int r = 0; r < 2; r++) {
        const uint8_t *b = mqr_wblk(a, m0, sb, lane, r, MQR_SB_W);
        w.h[r] = *(const uint4 *)b;
FG_UNROLL
        for (int j = 0; j < 4; j++)
            w.q[r][j] = *(const uint2 *)(b + 16 + 32 * j + 8 * (lane % 4));
    }
}

// The staged variant (Q4_K, the default; FORGE_CUDA_MQR_STAGE=0 off): a warp's 16 rows of one super-block (16 x 144
// bytes, 144 16-byte pieces) copied as they are into its shared-memory stage by asynchronous copies,
// MQR_STAGES super-blocks ahead (what a warp has in flight no longer costs registers), then each
// lane reads its bytes from there as mqr_load_w reads them from global memory.
enum { MQR_STAGES = 4, MQR_STAGE_BYTES = 16 * MQR_SB_W };
static FG_HD __forceinline__ void mqr_stage_copy(const mq_args &a, int64_t m0, int sb, int lane, uint8_t *stage) {
    for (int c = lane; c < MQR_STAGE_BYTES / 16; c += 32) {
        int64_t row = m0 + c / 9;
        row = row < a.n_out ? row : a.n_out - 1; // (as mqr_wblk)
        fg_cp16(stage + 16 * c, a.w + (size_t)row * a.w_nb1 + (size_t)sb * MQR_SB_W + 16 * (c % 9));
    }
}
static FG_HD __forceinline__ void mqr_load_w_stage(const uint8_t *stage, int lane, mqr_w &w) {
FG_UNROLL
    for (int r = 0; r < 2; r++) {
        const uint8_t *b = stage + (size_t)(lane / 4 + 8 * r) * MQR_SB_W;
        w.h[r] = *(const uint4 *)b;
FG_UNROLL
        for (int j = 0; j < 4; j++)
            w.q[r][j] = *(const uint2 *)(b + 16 + 32 * j + 8 * (lane % 4));
    }
}

static FG_HD __forceinline__ void mqr_scales(const mqr_w &w, mqr_s &s) {
FG_UNROLL
    for (int r = 0; r < 2; r++) {
        mm_k4_scales4(w.h[r], s.sc[r], s.m[r]);
        s.d[r] = fg_q_h2f((uint16_t)(w.h[r].x & 0xFFFFu));
        s.dm[r] = fg_q_h2f((uint16_t)(w.h[r].x >> 16));
    }
}

// The A fragment of sub-block u (0..7): a0 row g, a1 row g + 8 (k 4t ..), a2, a3 the same at k 16 + 4t.
static FG_HD __forceinline__ void mqr_a(const mqr_w &w, int u, uint32_t (&A)[4]) {
    const int j = u / 2, sh = 4 * (u % 2);
    A[0] = (w.q[0][j].x >> sh) & 0x0F0F0F0Fu;
    A[1] = (w.q[1][j].x >> sh) & 0x0F0F0F0Fu;
    A[2] = (w.q[0][j].y >> sh) & 0x0F0F0F0Fu;
    A[3] = (w.q[1][j].y >> sh) & 0x0F0F0F0Fu;
}

// Activation block sb of row n (rows past n_rows read the last row: never written).
static FG_HD __forceinline__ const uint8_t *mqr_xblk(const mq_args &a, int64_t n, int sb) {
    n = n < a.n_rows ? n : a.n_rows - 1;
    return a.x + (size_t)n * a.x_nb1 + (size_t)sb * MQR_SB_X;
}

template <int WT>
static FG_HD __forceinline__ void mqr_pack_unit(const mq_args &a, uint8_t *xp, int64_t idx) {
    const int64_t c = idx / MQR_XP_UNITS;
    const int k = (int)(idx % MQR_XP_UNITS);
    const int sb = (int)(c / a.xp_tiles);
    const int64_t r0 = 8 * (c % a.xp_tiles); // the tile's first row
    uint32_t v[4];
    if (k < MQR_XP_Q / 16) { // B
        const int p = k / 32, lane = k % 32, t = lane % 4;
        const uint8_t *qs = mqr_xblk(a, r0 + lane / 4, sb) + MQR_X_QS;
FG_UNROLL
        for (int i = 0; i < 4; i++)
            v[i] = WT == FG_TYPE_Q6_K ? fg_q_ld32a(qs + 16 * (4 * p + i) + 4 * t)
                                      : fg_q_ld32a(qs + 32 * (2 * p + i / 2) + 8 * t + 4 * (i % 2));
    } else if (k < MQR_XP_D / 16) { // Q: (t, u = 2 q, 2 q + 1), each for rows 2 t, 2 t + 1
        const int kk = k - MQR_XP_Q / 16, t = kk / 4, q = kk % 4;
FG_UNROLL
        for (int i = 0; i < 4; i++)
            v[i] = fg_q_ld32a(mqr_xblk(a, r0 + 2 * t + i % 2, sb) + MQR_X_BS + 4 * (2 * q + i / 2));
    } else if (k < MQR_XP_M / 16) { // D: t = 2 kk, 2 kk + 1
        const int kk = k - MQR_XP_D / 16;
FG_UNROLL
        for (int i = 0; i < 4; i++)
            v[i] = fg_q_ld32a(mqr_xblk(a, r0 + 2 * (2 * kk + i / 2) + i % 2, sb));
    } else { // M: lanes 2 kk, 2 kk + 1; an int16 bsum = 256 (its high byte, signed) + its low byte
        const int kk = k - MQR_XP_M / 16;
FG_UNROLL
        for (int h = 0; h < 2; h++) {
            const int lane = 2 * kk + h;
            const uint8_t *bs = mqr_xblk(a, r0 + lane / 4, sb) + MQR_X_BS + 8 * (lane % 4);
            const uint32_t w0 = fg_q_ld32a(bs), w1 = fg_q_ld32a(bs + 4); // bsums 4t, 4t + 1 | 4t + 2, 4t + 3
            v[2 * h] = (w0 & 0xFFu) | ((w0 >> 8) & 0xFF00u) | ((w1 & 0xFFu) << 16) | ((w1 << 8) & 0xFF000000u);
            v[2 * h + 1] = ((w0 >> 8) & 0xFFu) | ((w0 >> 16) & 0xFF00u) | ((w1 << 8) & 0xFF0000u) | (w1 & 0xFF000000u);
        }
    }
    *(uint4 *)(xp + (size_t)idx * 16) = make_uint4(v[0], v[1], v[2], v[3]);
}

// The packed chunk of super-block sb for the tile at activation row n0 (a multiple of 8).
static FG_HD __forceinline__ const uint8_t *mqr_xpc(const mq_args &a, int64_t n0, int sb) {
    int64_t tile = n0 / 8;
    tile = tile < a.xp_tiles ? tile : a.xp_tiles - 1;
    return a.xp + ((size_t)sb * a.xp_tiles + (size_t)tile) * MQR_XP;
}

// The B fragment of sub-block u for the n tile at n0: activation row n0 + g, bytes 8t .. 8t + 7.
template <bool XP>
static FG_HD __forceinline__ void mqr_b(const mq_args &a, int64_t n0, int sb, int u, int lane, uint32_t (&B)[2]) {
    if constexpr (XP) {
        const uint4 v = ((const uint4 *)mqr_xpc(a, n0, sb))[32 * (u / 2) + lane];
        B[0] = u % 2 ? v.z : v.x;
        B[1] = u % 2 ? v.w : v.y;
    } else {
        const uint8_t *p = mqr_xblk(a, n0 + lane / 4, sb) + MQR_X_QS + 32 * u + 8 * (lane % 4);
        B[0] = fg_q_ld32a(p);
        B[1] = fg_q_ld32a(p + 4);
    }
}

// Sub-block u's activation sums of the lane's C columns n0 + 2t, n0 + 2t + 1: their two bsums
// (int16 each, elements 0-15 and 16-31) in one word.
template <bool XP>
static FG_HD __forceinline__ void mqr_q(const mq_args &a, int64_t n0, int sb, int u, int lane, uint32_t (&Q)[2]) {
    if constexpr (XP) {
        const uint2 v = *(const uint2 *)(mqr_xpc(a, n0, sb) + MQR_XP_Q + 64 * (lane % 4) + 8 * u);
        Q[0] = v.x;
        Q[1] = v.y;
    } else {
FG_UNROLL
        for (int c = 0; c < 2; c++)
            Q[c] = fg_q_ld32a(mqr_xblk(a, n0 + 2 * (lane % 4) + c, sb) + MQR_X_BS + 4 * u);
    }
}

// C register e of an n tile: row g + 8 (e / 2), column 2t + e % 2. One sub-block's dots S added
// in: si += sc S, mi += m (bsum_lo + bsum_hi) (the min in both low bytes: one dp2a).
static FG_HD __forceinline__ void mqr_unit(const mqr_s &s, int u, const int (&S)[4], const uint32_t (&Q)[2],
                                           int (&si)[4], int (&mi)[4]) {
FG_UNROLL
    for (int e = 0; e < 4; e++) {
        const int r = e / 2, sh = 8 * (u % 4);
        const int sc = (int)((s.sc[r][u / 4] >> sh) & 0xFFu);
        const uint32_t m = (s.m[r][u / 4] >> sh) & 0xFFu;
        si[e] += sc * S[e];
        mi[e] = fg_dp2a_lo(Q[e % 2], m | (m << 8), mi[e]);
    }
}

// The activation scales (Q8_K d) of super-block sb of the lane's C columns n0 + 2t, n0 + 2t + 1.
template <bool XP>
static FG_HD __forceinline__ void mqr_dx(const mq_args &a, int64_t n0, int sb, int lane, float (&dx)[2]) {
    if constexpr (XP) {
        const float2 v = *(const float2 *)(mqr_xpc(a, n0, sb) + MQR_XP_D + 8 * (lane % 4));
        dx[0] = v.x;
        dx[1] = v.y;
    } else {
FG_UNROLL
        for (int c = 0; c < 2; c++)
            dx[c] = fg_q_ldf32(mqr_xblk(a, n0 + 2 * (lane % 4) + c, sb));
    }
}

// The end of a super-block: its integer sums scaled into acc (n tile at n0).
template <bool XP>
static FG_HD __forceinline__ void mqr_close(const mq_args &a, const mqr_s &s, int64_t n0, int sb, int lane,
                                            const int (&si)[4], const int (&mi)[4], float (&acc)[4]) {
    float dx[2];
    mqr_dx<XP>(a, n0, sb, lane, dx);
FG_UNROLL
    for (int e = 0; e < 4; e++) {
        const int r = e / 2;
        acc[e] += dx[e % 2] * (s.d[r] * (float)si[e] - s.dm[r] * (float)mi[e]);
    }
}

// ---- Q4_K, the chained variant (the default over the repacked rows; FORGE_CUDA_MQR_CHAIN=0 off): the sub-block
// scales go into the A fragments, so that the mma's own accumulator sums a super-block's eight
// sub-blocks: a 6-bit scale sc = 16 sh + sl, A_l = q sl (<= 225, u8) and A_h = q sh (<= 45), two
// m16n8k32 u8 x s8 chains a super-block, SI = C_l + 16 C_h. The mins the same way, once a
// super-block: A_m holds each sub-block's min at its two bsums (k = 2j, 2j + 1 of m16n8k16), B
// the bsums split into low (u8) and high (s8) bytes, MI = M_l + 256 M_h. The same integers as
// mqr_unit's (so the same outputs, bit for bit), in 2 mma a sub-block and n tile instead of 1
// mma and 8 integer instructions.
static FG_HD __forceinline__ void mqr_a_c(const mqr_w &w, const mqr_s &s, int u, uint32_t (&Al)[4], uint32_t (&Ah)[4]) {
    uint32_t A[4];
    mqr_a(w, u, A);
FG_UNROLL
    for (int i = 0; i < 4; i++) { // A[i]: row g + 8 (i % 2); bytes <= 15, products without carries
        const uint32_t sc = (s.sc[i % 2][u / 4] >> (8 * (u % 4))) & 0x3Fu;
        Al[i] = A[i] * (sc & 15u);
        Ah[i] = A[i] * (sc >> 4);
    }
}

// The mins' A fragment (m16n8k16): row g + 8 r, k 4t .. 4t + 3 = the mins of sub-blocks 2t, 2t, 2t + 1, 2t + 1.
static FG_HD __forceinline__ void mqr_am(const mqr_s &s, int lane, uint32_t (&Am)[2]) {
FG_UNROLL
    for (int r = 0; r < 2; r++) {
        const uint32_t x = ((lane & 2) ? s.m[r][1] : s.m[r][0]) >> (16 * (lane % 2)); // (no dynamic index: registers)
        Am[r] = (x & 0xFFu) * 0x0101u | ((x >> 8) & 0xFFu) * 0x01010000u;
    }
}

// The mins' B fragments (low bytes, high bytes) of the n tile at n0.
static FG_HD __forceinline__ uint2 mqr_bm(const mq_args &a, int64_t n0, int sb, int lane) {
    return *(const uint2 *)(mqr_xpc(a, n0, sb) + MQR_XP_M + 8 * lane);
}

// The end of a super-block in the chained variant: its chains' sums and mins products scaled into acc
// (mqr_close's arithmetic on the same integers).
static FG_HD __forceinline__ void mqr_close_c(const mq_args &a, const mqr_s &s, int64_t n0, int sb, int lane,
                                              const int (&cl)[4], const int (&ch)[4], const int (&ml)[4],
                                              const int (&mh)[4], float (&acc)[4]) {
    int si[4], mi[4];
FG_UNROLL
    for (int e = 0; e < 4; e++) {
        si[e] = cl[e] + 16 * ch[e];
        mi[e] = ml[e] + 256 * mh[e];
    }
    mqr_close<true>(a, s, n0, sb, lane, si, mi, acc);
}

// ---- Q6_K: 16 groups of 16 a super-block (x = d sc (q - 32), q 6 bits, sc int8), one
// mma.m16n8k16 (u8 x s8) a group. Group G = 8n + 2q + s holds elements 128n + 32q + 16s + l
// (l < 16) from the low (q < 2) or high nibbles of ql bytes 64n + 32(q & 1) + 16s + l and bits
// 2q of qh bytes 32n + 16s + l; lane t's k 4t .. 4t + 3 are l = 4t .. 4t + 3, so both fragments
// are natural 4-byte words. The 6-bit q goes into the mma as is (u8); the 32 comes off with the
// activation sums: SI = sum_G sc_G S_G, MI = sum_G sc_G bsum_G (dp2a over a bsums word), then
// acc += d_x d (SI - 32 MI) in f32: the reference's integers. Blocks are 210 bytes, so a row's
// blocks are 2-aligned: a word at a 2 mod 4 address is funnel-shifted from two aligned loads
// that stay inside the block's bytes and the 2 before it (never past the block).
struct mqr_w6 {
    uint32_t ql[2][8]; // rows g, g + 8: ql bytes 64n + 32h + 16s + 4t .. + 3 at [4n + 2h + s]
    uint32_t qh[2][4]; // qh bytes 32n + 16s + 4t .. + 3 at [2n + s]
    uint32_t sc[2][4]; // scales[0..15]
    float d[2];
};

// The word at al + sh / 8 + off, al 4-aligned, sh 0 or 16 (bytes past it read only when sh).
static FG_HD __forceinline__ uint32_t mqr_ld_a2(const uint8_t *al, int sh, int off) {
    const uint32_t lo = fg_q_ld32a(al + off);
    if (!sh)
        return lo;
    return (lo >> 16) | (fg_q_ld32a(al + off + 4) << 16);
}

static FG_HD __forceinline__ void mqr_load_w6(const mq_args &a, int64_t m0, int sb, int lane, mqr_w6 &w) {
    const int t = lane % 4;
FG_UNROLL
    for (int r = 0; r < 2; r++) {
        const uint8_t *p = mqr_wblk(a, m0, sb, lane, r, 210);
        const int sh = (int)((uintptr_t)p & 3) * 8;
        const uint8_t *al = p - sh / 8;
FG_UNROLL
        for (int i = 0; i < 8; i++) // i = 4n + 2h + s
            w.ql[r][i] = mqr_ld_a2(al, sh, 64 * (i / 4) + 32 * ((i / 2) % 2) + 16 * (i % 2) + 4 * t);
FG_UNROLL
        for (int i = 0; i < 4; i++) // i = 2n + s
            w.qh[r][i] = mqr_ld_a2(al, sh, 128 + 32 * (i / 2) + 16 * (i % 2) + 4 * t);
FG_UNROLL
        for (int i = 0; i < 4; i++)
            w.sc[r][i] = mqr_ld_a2(al, sh, 192 + 4 * i);
        w.d[r] = fg_q_h2f((uint16_t)fg_q_ld16(p + 208));
    }
}

// Group G's A fragment (a0 row g, a1 row g + 8; k 4t ..): the 6-bit values as bytes.
static FG_HD __forceinline__ void mqr_a6(const mqr_w6 &w, int G, uint32_t (&A)[4]) {
    const int n = G / 8, q = (G % 8) / 2, s = G % 2;
FG_UNROLL
    for (int r = 0; r < 2; r++) {
        const uint32_t lo = (w.ql[r][4 * n + 2 * (q & 1) + s] >> (4 * (q >> 1))) & 0x0F0F0F0Fu;
        const uint32_t hi = (w.qh[r][2 * n + s] >> (2 * q)) & 0x03030303u;
        A[r] = lo | (hi << 4);
    }
    A[2] = A[3] = 0;
}

// Group G's B fragment for the n tile at n0: activation row n0 + g, bytes 16G + 4t .. + 3.
template <bool XP>
static FG_HD __forceinline__ void mqr_b6(const mq_args &a, int64_t n0, int sb, int G, int lane, uint32_t (&B)[2]) {
    if constexpr (XP) {
        const uint4 v = ((const uint4 *)mqr_xpc(a, n0, sb))[32 * (G / 4) + lane];
        B[0] = G % 4 == 0 ? v.x : G % 4 == 1 ? v.y : G % 4 == 2 ? v.z : v.w;
    } else {
        B[0] = fg_q_ld32a(mqr_xblk(a, n0 + lane / 4, sb) + MQR_X_QS + 16 * G + 4 * (lane % 4));
    }
    B[1] = 0;
}

// Group G's dots S added in (si += sc S); after an odd group, the pair's sc x bsum (one dp2a).
template <bool XP>
static FG_HD __forceinline__ void mqr_unit6(const mq_args &a, const mqr_w6 &w, int64_t n0, int sb, int G, int lane,
                                            const int (&S)[4], int (&si)[4], int (&mi)[4]) {
    uint32_t Q[2] = {0, 0};
    if (G % 2)
        mqr_q<XP>(a, n0, sb, G / 2, lane, Q); // bsums word (G - 1) / 2: groups G - 1 and G
FG_UNROLL
    for (int e = 0; e < 4; e++) {
        const uint32_t sw = w.sc[e / 2][G / 4];
        si[e] += (int)(int8_t)((sw >> (8 * (G % 4))) & 0xFFu) * S[e];
        if (G % 2)
            mi[e] = fg_dp2a_lo(Q[e % 2], sw >> (8 * ((G - 1) % 4)), mi[e]);
    }
}

template <bool XP>
static FG_HD __forceinline__ void mqr_close6(const mq_args &a, const mqr_w6 &w, int64_t n0, int sb, int lane,
                                             const int (&si)[4], const int (&mi)[4], float (&acc)[4]) {
    float dx[2];
    mqr_dx<XP>(a, n0, sb, lane, dx);
FG_UNROLL
    for (int e = 0; e < 4; e++)
        acc[e] += dx[e % 2] * (w.d[e / 2] * (float)(si[e] - 32 * mi[e]));
}

// The kernel's view of a weight type: W, a lane's bytes of a super-block of its rows (with what
// its groups need: scales); G mma groups a super-block, k16 (m16n8k16, A and B's first
// registers) or k32; load, a, b, unit (a group's dots into the integer sums), close.
template <int WT> struct mqr_t;
template <> struct mqr_t<FG_TYPE_Q4_K> {
    struct W {
        mqr_w w;
        mqr_s s;
    };
    static constexpr int G = 8, BYTES = MQR_SB_W;
    static constexpr bool K16 = false;
    static FG_HD __forceinline__ void load(const mq_args &a, int64_t m0, int sb, int lane, W &w) {
        mqr_load_w(a, m0, sb, lane, w.w);
    }
    static FG_HD __forceinline__ void prep(W &w) { mqr_scales(w.w, w.s); }
    static FG_HD __forceinline__ void frag_a(const W &w, int g, uint32_t (&A)[4]) { mqr_a(w.w, g, A); }
    template <bool XP>
    static FG_HD __forceinline__ void frag_b(const mq_args &a, int64_t n0, int sb, int g, int lane, uint32_t (&B)[2]) {
        mqr_b<XP>(a, n0, sb, g, lane, B);
    }
    template <bool XP>
    static FG_HD __forceinline__ void unit(const mq_args &a, const W &w, int64_t n0, int sb, int g, int lane,
                                           const int (&S)[4], int (&si)[4], int (&mi)[4]) {
        uint32_t Q[2];
        mqr_q<XP>(a, n0, sb, g, lane, Q);
        mqr_unit(w.s, g, S, Q, si, mi);
    }
    template <bool XP>
    static FG_HD __forceinline__ void close(const mq_args &a, const W &w, int64_t n0, int sb, int lane,
                                            const int (&si)[4], const int (&mi)[4], float (&acc)[4]) {
        mqr_close<XP>(a, w.s, n0, sb, lane, si, mi, acc);
    }
};
template <> struct mqr_t<FG_TYPE_Q6_K> {
    typedef mqr_w6 W;
    static constexpr int G = 16, BYTES = 210;
    static constexpr bool K16 = true;
    static FG_HD __forceinline__ void load(const mq_args &a, int64_t m0, int sb, int lane, W &w) {
        mqr_load_w6(a, m0, sb, lane, w);
    }
    static FG_HD __forceinline__ void prep(W &) {}
    static FG_HD __forceinline__ void frag_a(const W &w, int g, uint32_t (&A)[4]) { mqr_a6(w, g, A); }
    template <bool XP>
    static FG_HD __forceinline__ void frag_b(const mq_args &a, int64_t n0, int sb, int g, int lane, uint32_t (&B)[2]) {
        mqr_b6<XP>(a, n0, sb, g, lane, B);
    }
    template <bool XP>
    static FG_HD __forceinline__ void unit(const mq_args &a, const W &w, int64_t n0, int sb, int g, int lane,
                                           const int (&S)[4], int (&si)[4], int (&mi)[4]) {
        mqr_unit6<XP>(a, w, n0, sb, g, lane, S, si, mi);
    }
    template <bool XP>
    static FG_HD __forceinline__ void close(const mq_args &a, const W &w, int64_t n0, int sb, int lane,
                                            const int (&si)[4], const int (&mi)[4], float (&acc)[4]) {
        mqr_close6<XP>(a, w, n0, sb, lane, si, mi, acc);
    }
};
static_assert(sizeof(fg_block_q6_k) == 210, "mqr: the Q6_K block");

// The super-blocks [sb0, sb1) of warp kwi of kw along K.
static FG_HD __forceinline__ void mqr_range(const mq_args &a, int kw, int kwi, int *sb0, int *sb1) {
    const int n_sb = a.n_units / 8, per = (n_sb + kw - 1) / kw;
    *sb0 = kwi * per < n_sb ? kwi * per : n_sb;
    *sb1 = *sb0 + per < n_sb ? *sb0 + per : n_sb;
}

// The warp's outputs (n tile at n0): rows m0 + g (+ 8), columns n0 + 2t (+ 1).
static FG_HD __forceinline__ void mqr_write(const mq_args &a, int64_t m0, int64_t n0, int lane, const float (&acc)[4]) {
FG_UNROLL
    for (int e = 0; e < 4; e++) {
        const int64_t o = m0 + lane / 4 + 8 * (e / 2), n = n0 + 2 * (lane % 4) + e % 2;
        if (o < a.n_out && n < a.n_rows)
            mm_store((float *)((uint8_t *)a.dst + (size_t)n * a.d_nb1) + o, a.bias, o, acc[e], a.accumulate);
    }
}

#if !defined(FG_MM_HOST_TEST)
// D = A B: m16n8k32 s8 x s8, or (K16) m16n8k16 u8 x s8 on A's and B's first registers.
template <bool K16> static __device__ __forceinline__ void mqr_mma(const uint32_t (&A)[4], const uint32_t (&B)[2], int (&d)[4]) {
#if defined(FG_GPU_HAS_MMA)
    if constexpr (K16)
        asm("mma.sync.aligned.m16n8k16.row.col.s32.u8.s8.s32 {%0,%1,%2,%3}, {%4,%5}, {%6}, {%7,%7,%7,%7};"
            : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
            : "r"(A[0]), "r"(A[1]), "r"(B[0]), "r"(0));
    else
        asm("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%10,%10,%10,%10};"
            : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
            : "r"(A[0]), "r"(A[1]), "r"(A[2]), "r"(A[3]), "r"(B[0]), "r"(B[1]), "r"(0));
#else // never launched below sm_80
    (void)A, (void)B;
    d[0] = d[1] = d[2] = d[3] = 0;
#endif
}

// C += A B: m16n8k32 u8 x s8 (the chained variant's sums).
static __device__ __forceinline__ void mqr_mma_acc(const uint32_t (&A)[4], const uint32_t (&B)[2], int (&c)[4]) {
#if defined(FG_GPU_HAS_MMA)
    asm("mma.sync.aligned.m16n8k32.row.col.s32.u8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
        : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
        : "r"(A[0]), "r"(A[1]), "r"(A[2]), "r"(A[3]), "r"(B[0]), "r"(B[1]));
#else
    (void)A, (void)B, (void)c;
#endif
}
// D = A B: m16n8k16 u8 x (BS ? s8 : u8) (the chained variant's mins).
template <bool BS> static __device__ __forceinline__ void mqr_mma16(const uint32_t (&A)[2], uint32_t B, int (&d)[4]) {
#if defined(FG_GPU_HAS_MMA)
    if constexpr (BS)
        asm("mma.sync.aligned.m16n8k16.row.col.s32.u8.s8.s32 {%0,%1,%2,%3}, {%4,%5}, {%6}, {%7,%7,%7,%7};"
            : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
            : "r"(A[0]), "r"(A[1]), "r"(B), "r"(0));
    else
        asm("mma.sync.aligned.m16n8k16.row.col.s32.u8.u8.s32 {%0,%1,%2,%3}, {%4,%5}, {%6}, {%7,%7,%7,%7};"
            : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
            : "r"(A[0]), "r"(A[1]), "r"(B), "r"(0));
#else
    (void)A, (void)B;
    d[0] = d[1] = d[2] = d[3] = 0;
#endif
}

// XP: the activation rows repacked (a.xp; the default), a separate instantiation so that the
// rows read as they are compile as before (the readers' two paths in one kernel cost registers).
// CH: Q4_K's chained variant (over repacked rows); ST: Q4_K's weights staged in shared memory.
template <int WT, int NT, bool XP, bool CH = false, bool ST = false>
static __global__ __launch_bounds__(MQR_NTH, NT <= 2 ? 4 : NT <= 4 ? 3 : 2) void mqr_kernel(mq_args a, int kw) {
    static_assert(!CH || (WT == FG_TYPE_Q4_K && XP), "mqr: the chained variant is Q4_K's, over repacked rows");
    static_assert(!ST || WT == FG_TYPE_Q4_K, "mqr: the staged variant is Q4_K's");
    typedef mqr_t<WT> T;
    // the warps' partial sums at the end; before, (ST) the warps' stages: one buffer (48 KB of static
    // shared memory at most: at 8 n tiles the two would not fit side by side)
    constexpr int RED = MQR_WARPS * NT * 4 * 32 * 4, STG = ST ? MQR_WARPS * MQR_STAGES * MQR_STAGE_BYTES : 0;
    __shared__ __align__(16) uint8_t smem[RED > STG ? RED : STG];
    float(*red)[NT * 4][32] = (float(*)[NT * 4][32])smem;
    uint8_t(*stages)[MQR_STAGES][MQR_STAGE_BYTES] = (uint8_t(*)[MQR_STAGES][MQR_STAGE_BYTES])smem;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int rg = warp / kw, kwi = warp % kw;
    const int64_t m0 = ((int64_t)blockIdx.y * (MQR_WARPS / kw) + rg) * 16;
    const int64_t n0 = (int64_t)blockIdx.x * 8 * NT;
    int sb0, sb1;
    mqr_range(a, kw, kwi, &sb0, &sb1);
    float acc[NT][4];
FG_UNROLL
    for (int j = 0; j < NT; j++)
FG_UNROLL
        for (int e = 0; e < 4; e++)
            acc[j][e] = 0.0f;
    typename T::W w;
    if constexpr (ST) { // the first MQR_STAGES - 1 super-blocks in flight (a group each, empty or not)
FG_UNROLL
        for (int k = 0; k < MQR_STAGES - 1; k++) {
            if (sb0 + k < sb1)
                mqr_stage_copy(a, m0, sb0 + k, lane, stages[warp][k]);
            fg_cp_commit();
        }
    } else if (sb0 < sb1) {
        T::load(a, m0, sb0, lane, w); // weights only before the wait
    }
    fg_pdl_wait();
    fg_pdl_trigger();
    for (int sb = sb0; sb < sb1; sb++) {
        typename T::W cur;
        if constexpr (ST) {
            const int i = sb - sb0;
            __syncwarp(); // every lane done with the stage the next copy refills (read at i - 1)
            if (sb + MQR_STAGES - 1 < sb1)
                mqr_stage_copy(a, m0, sb + MQR_STAGES - 1, lane, stages[warp][(i + MQR_STAGES - 1) % MQR_STAGES]);
            fg_cp_commit();
            fg_cp_wait<MQR_STAGES - 1>(); // this lane's copies of super-block sb landed
            __syncwarp();                  // and every lane's
            mqr_load_w_stage(stages[warp][i % MQR_STAGES], lane, cur.w);
        } else {
            cur = w;
            if (sb + 1 < sb1)
                T::load(a, m0, sb + 1, lane, w);
        }
        T::prep(cur);
        // the n tiles MQR_PASS_NT at a time (fewer integer sums live)
        constexpr int PT = NT < MQR_PASS_NT ? NT : MQR_PASS_NT;
        if constexpr (CH) {
            uint32_t Am[2];
            mqr_am(cur.s, lane, Am);
FG_UNROLL
            for (int j0 = 0; j0 < NT; j0 += PT) {
                int cl[PT][4], ch[PT][4];
FG_UNROLL
                for (int j = 0; j < PT; j++)
FG_UNROLL
                    for (int e = 0; e < 4; e++)
                        cl[j][e] = ch[j][e] = 0;
FG_UNROLL
                for (int g = 0; g < T::G; g++) {
                    uint32_t Al[4], Ah[4];
                    mqr_a_c(cur.w, cur.s, g, Al, Ah);
FG_UNROLL
                    for (int j = 0; j < PT; j++) {
                        uint32_t B[2];
                        T::template frag_b<XP>(a, n0 + 8 * (j0 + j), sb, g, lane, B);
                        mqr_mma_acc(Al, B, cl[j]);
                        mqr_mma_acc(Ah, B, ch[j]);
                    }
                }
FG_UNROLL
                for (int j = 0; j < PT; j++) {
                    const uint2 bm = mqr_bm(a, n0 + 8 * (j0 + j), sb, lane);
                    int ml[4], mh[4];
                    mqr_mma16<false>(Am, bm.x, ml);
                    mqr_mma16<true>(Am, bm.y, mh);
                    mqr_close_c(a, cur.s, n0 + 8 * (j0 + j), sb, lane, cl[j], ch[j], ml, mh, acc[j0 + j]);
                }
            }
        } else {
FG_UNROLL
            for (int j0 = 0; j0 < NT; j0 += PT) {
                int si[PT][4], mi[PT][4];
FG_UNROLL
                for (int j = 0; j < PT; j++)
FG_UNROLL
                    for (int e = 0; e < 4; e++)
                        si[j][e] = mi[j][e] = 0;
FG_UNROLL
                for (int g = 0; g < T::G; g++) {
                    uint32_t A[4];
                    T::frag_a(cur, g, A);
FG_UNROLL
                    for (int j = 0; j < PT; j++) {
                        uint32_t B[2];
                        int S[4];
                        T::template frag_b<XP>(a, n0 + 8 * (j0 + j), sb, g, lane, B);
                        mqr_mma<T::K16>(A, B, S);
                        T::template unit<XP>(a, cur, n0 + 8 * (j0 + j), sb, g, lane, S, si[j], mi[j]);
                    }
                }
FG_UNROLL
                for (int j = 0; j < PT; j++)
                    T::template close<XP>(a, cur, n0 + 8 * (j0 + j), sb, lane, si[j], mi[j], acc[j0 + j]);
            }
        }
    }
    if (kw > 1) { // the warps of a row group add up their parts in kw order
        if constexpr (ST)
            __syncthreads(); // every warp done with its stages (red overlays them)
        if (kwi > 0)
FG_UNROLL
            for (int j = 0; j < NT; j++)
FG_UNROLL
                for (int e = 0; e < 4; e++)
                    red[warp][4 * j + e][lane] = acc[j][e];
        __syncthreads();
        if (kwi == 0)
            for (int k = 1; k < kw; k++)
FG_UNROLL
                for (int j = 0; j < NT; j++)
FG_UNROLL
                    for (int e = 0; e < 4; e++)
                        acc[j][e] += red[warp + k][4 * j + e][lane];
    }
    if (kwi == 0)
FG_UNROLL
        for (int j = 0; j < NT; j++)
            mqr_write(a, m0, n0 + 8 * j, lane, acc[j]);
}

// The activation rows repacked for mqr (mqr_pack_unit): a thread a 16-byte unit.
template <int WT> static __global__ __launch_bounds__(256) void mqr_pack_kernel(mq_args a, uint8_t *xp, int64_t n) {
    const int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    fg_pdl_wait();
    fg_pdl_trigger();
    if (idx < n)
        mqr_pack_unit<WT>(a, xp, idx);
}
#endif // !FG_MM_HOST_TEST
#endif // !__HIPCC__

// ============================================================================ get_rows
// Thread u of a row: unit u (32 elements) of a quantized row, or element u of a float row.
// Values bit-identical to the type's reference to_float.
template <int WT>
static FG_HD __forceinline__ void gr_thread(const uint8_t *row, float *drow, int64_t u, int n_embd) {
    if constexpr (mm_is_float(WT)) {
        if (u >= n_embd)
            return;
        if constexpr (WT == FG_TYPE_F32) // the bits, whatever they are (NaN payloads too)
            *(uint32_t *)(drow + u) = fg_q_ld32a(row + 4 * u);
        else
            drow[u] = mm_float_elem<WT>(row + 2 * u);
    } else {
        typedef fg_qt<WT> Q;
        if (u * 32 >= n_embd)
            return;
        float f[32];
        fg_q_dequant_unit<WT, fg_rd_exact>(row + (size_t)(u / Q::UPB) * Q::BYTES, (int)(u % Q::UPB), f);
FG_UNROLL
        for (int e = 0; e < 32; e++)
            drow[u * 32 + e] = f[e];
    }
}

#ifndef FG_MM_HOST_TEST
template <int WT>
static __global__ void gr_kernel(const uint8_t *table, size_t t_nb1, const int32_t *tokens, int n_tokens,
                                 float *dst, size_t d_nb1, int n_embd) {
    const int64_t u = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    for (int t = blockIdx.y; t < n_tokens; t += gridDim.y)
        gr_thread<WT>(table + (size_t)tokens[t] * t_nb1, (float *)((uint8_t *)dst + (size_t)t * d_nb1), u, n_embd);
}

#endif // FG_MM_HOST_TEST

#ifndef FG_MM_HOST_TEST
// ============================================================================ convert
// F32 rows -> Q8_1 rows (contiguous), one thread per element, 32 consecutive lanes per block
// (xor shuffles below 32 stay inside a 32-lane half of a 64-wide wavefront). The arithmetic of
// fg_quant_q8_1_act (quant_ref.c): d = amax / 127, q = nearest-even(x * (127 / amax)),
// s = f16(d * sum(q)).
static __global__ void cvt_q8_1_kernel(fg_src_rows x, uint8_t *y, size_t y_nb1, int n, int64_t rows) {
    fg_pdl_wait(); // PDL: the earlier kernels' outputs are visible from here
    fg_pdl_trigger();
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) { // uniform: every lane shuffles
        const float v = i < n ? x.at(r, i) : 0.0f;
        float amax = fabsf(v);
FG_UNROLL
        for (int off = 16; off > 0; off >>= 1)
            amax = fmaxf(amax, fg_shfl_xor(amax, off));
        const int q = fg_q8_1_q(v, fg_q8_1_id(amax));
        const int sum = mm_sum32(q);
        if (i < n) {
            uint8_t *blk = y + (size_t)r * y_nb1 + (size_t)(i / 32) * sizeof(fg_block_q8_1);
            blk[offsetof(fg_block_q8_1, qs) + i % 32] = (uint8_t)(int8_t)q;
            if (i % 32 == 0)
                fg_q8_1_head(blk, amax, sum);
        }
    }
}

// F32 rows -> F16 (BF false) or BF16 (BF true) rows (contiguous), round to nearest even (as
// base/half.h).
template <bool BF>
static __global__ void cvt_half_kernel(fg_src_rows x, uint16_t *y, int n, int64_t rows) {
    fg_pdl_wait(); // PDL: the earlier kernels' outputs are visible from here
    fg_pdl_trigger();
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n)
        return;
    for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
        const float v = x.at(r, i);
        y[(size_t)r * n + i] = BF ? fg_f32_to_bf16(v) : fg_f2h(v);
    }
}

// F32 rows -> Q8_K blocks, as quantize_row_q8_K_ref: the element of largest |x| (the first of
// equals) sets iscale = -127 / x, q = nearest_int(iscale * x) capped at 127, d = 1 / iscale,
// bsums of each 16. One block of 256 threads per 256 elements.
static __global__ void cvt_q8_k_kernel(fg_src_rows x, uint8_t *y, size_t y_nb1, int n_blocks) {
    __shared__ float s_x[256], s_v[256 / 32];
    __shared__ int s_i[256 / 32], s_q[256];
    fg_pdl_wait(); // PDL: the earlier kernels' outputs are visible from here
    fg_pdl_trigger();
    const int t = threadIdx.x, b = blockIdx.x;
    const int64_t r = blockIdx.y;
    s_x[t] = x.at(r, (int64_t)b * 256 + t);
    __syncthreads();
    fg_q8_k_block(s_x, (fg_block_q8_k *)(y + (size_t)r * y_nb1) + b, s_v, s_i, s_q);
}

// 8-bit activation rows (Q8_1 or Q8_K, the reference's grid) -> F16 rows (contiguous) for a GEMM.
template <bool K>
static __global__ void act_deq_f16_kernel(const uint8_t *x, size_t x_nb1, uint16_t *y, int n, int64_t rows) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n)
        return;
    for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
        const uint8_t *row = x + (size_t)r * x_nb1;
        float v;
        if constexpr (K) {
            const fg_block_q8_k *b = (const fg_block_q8_k *)row + i / 256;
            v = b->d * (float)b->qs[i % 256];
        } else {
            const fg_block_q8_1 *b = (const fg_block_q8_1 *)row + i / 32;
            v = fg_h2f(b->d) * (float)b->qs[i % 32];
        }
        y[(size_t)r * n + i] = fg_f2h(v);
    }
}

// ============================================================================ host side
static constexpr int MM_NT = 256;             // threads of the element-wise kernels
static constexpr int64_t MM_MAX_GRID_Y = 65535; // grid.y limit

static unsigned mm_grid_y(int64_t n) { return (unsigned)(n < MM_MAX_GRID_Y ? n : MM_MAX_GRID_Y); }

bool fg_cuda_matmul_supports(uint32_t wtype) {
    switch (wtype) {
#define X(T) case T:
        MM_QTYPES(X)
        MM_FTYPES(X)
#undef X
        return true;
    default:
        return false;
    }
}

bool fg_cuda_convert_supports(uint32_t act_type) {
    return act_type == FG_TYPE_Q8_1 || act_type == FG_TYPE_Q8_K || act_type == FG_TYPE_F16 ||
           act_type == FG_TYPE_BF16;
}

// Activations as the reference converts them: the reference's 8-bit grids for the quantized
// types at any row count (the GEMMs widen those rows to F16), F32 for F32 weights, F16
// for F16 weights, BF16 for BF16 weights in the library GEMM; the float weights' matvec reads
// F32 rows and rounds them to the F16/BF16 grid itself (F32 weights: F32 everywhere).
static bool mm_blas_rows(const fg_cuda *c, int64_t n_rows);

// Weight rows the F16 buffer holds at once for rows of n_in (whole multiples of 128 when it
// holds that many: cuBLAS's tiles), 0 when not one.
static int64_t blas_chunk_rows(const fg_cuda *c, int64_t n_in) {
    const int64_t r = (int64_t)(c->deq.size / ((size_t)n_in * 2));
    return r >= 128 ? r / 128 * 128 : r;
}

uint32_t fg_cuda_act_type(fg_cuda *c, uint32_t wtype, int64_t n_rows) {
    if (!fg_cuda_matmul_supports(wtype) || wtype == FG_TYPE_F32)
        return FG_TYPE_F32;
    if (!mm_is_float((int)wtype)) // the reference's 8-bit grid, for any number of rows
        return mm_is_k((int)wtype) ? FG_TYPE_Q8_K : FG_TYPE_Q8_1;
    if (n_rows > FG_MV_MAX_ROWS)
        return wtype == FG_TYPE_BF16 && mm_blas_rows(c, n_rows) ? FG_TYPE_BF16 : FG_TYPE_F16;
    return FG_TYPE_F32;
}

// The arena per call (mm_scratch takes it from its start, so this is per call, not per step):
// F32 x quantized for the integer kernels (Q8_1 or Q8_K rows), the F16 rows a GEMM reads
// (8-bit x widened, or F32 x converted), or the F32 rows of an rmsnorm into an activation type
// whose row the fused kernel does not take (fg_cuda_rmsnorm): max_tokens x max_cols x 4 at most.
size_t fg_cuda_matmul_scratch_bytes(const fg_backend_limits *lim) {
    const int64_t rows = lim->max_tokens > 0 ? lim->max_tokens : FG_MV_MAX_ROWS;
    const int64_t cols = lim->max_cols > 0 ? lim->max_cols : 0;
    const size_t q8 = (size_t)rows * (mm_q8_k_row_bytes(cols + 255) > mm_q8_1_row_bytes(cols + 31)
                                          ? mm_q8_k_row_bytes(cols + 255)
                                          : mm_q8_1_row_bytes(cols + 31));
    // mqr's repacked rows after the converted ones (every row: FORGE_CUDA_MQR may take more than
    // FG_MQR_MAX_ROWS)
    const size_t xp = (size_t)fg_div_up(rows, 8) * (size_t)((cols + 255) / 256) * FG_MQR_XP_BYTES + 256;
    const size_t f32 = (size_t)(lim->max_tokens > 0 ? lim->max_tokens : 0) * (size_t)cols * 4;
    return (q8 + xp > f32 ? q8 + xp : f32) + 256 + MQ_SPLIT_BYTES;
}

// The mm arena as per-call scratch: everything a call enqueues runs on c->stream after the
// previous call's kernels, which are done with the arena by then, so each call starts at 0.
static fg_status mm_scratch(fg_cuda *c, size_t n, void **out) {
    c->mm.used = 0;
    return fg_cuda_arena_take(&c->mm, n, "matmul activation conversion", out);
}
fg_status fg_cuda_op_scratch(fg_cuda *c, size_t n, void **out) { return mm_scratch(c, n, out); }

static fg_src_rows mm_src(const uint8_t *x, size_t x_nb1, const uint8_t *u = NULL, size_t u_nb1 = 0) {
    fg_src_rows s;
    s.x = x;
    s.x_nb1 = x_nb1;
    s.u = u;
    s.u_nb1 = u_nb1;
    return s;
}

static fg_status mm_convert_q8_1(fg_cuda *c, fg_src_rows x, int n, int64_t rows, uint8_t *y) {
    FG_ASSERT(n % 32 == 0 && MM_NT % 32 == 0);
    dim3 grid(fg_div_up(n, MM_NT), mm_grid_y(rows));
    fg_launch(c->pdl, cvt_q8_1_kernel, grid, MM_NT, 0, c->stream, x, y, mm_q8_1_row_bytes(n), n, rows);
    FG_GPU_LAUNCH_CHECK(c, "convert_q8_1");
    return FG_OK;
}

static fg_status mm_convert_q8_k(fg_cuda *c, fg_src_rows x, int n, int64_t rows, uint8_t *y) {
    FG_ASSERT(n % 256 == 0 && rows <= MM_MAX_GRID_Y);
    dim3 grid(n / 256, (unsigned)rows);
    fg_launch(c->pdl, cvt_q8_k_kernel, grid, 256, 0, c->stream, x, y, mm_q8_k_row_bytes(n), n / 256);
    FG_GPU_LAUNCH_CHECK(c, "convert_q8_k");
    return FG_OK;
}

fg_status fg_cuda_convert_src(fg_cuda *c, fg_tensor *dst, const fg_tensor *x, const fg_tensor *u) {
    const int64_t n = x->ne[0], rows = x->ne[1];
    FG_ASSERT(x->type == FG_TYPE_F32 && n >= 1 && n <= INT32_MAX && rows >= 1);
    FG_ASSERT(!u || (u->type == FG_TYPE_F32 && u->ne[0] == n && u->ne[1] == rows));
    const fg_src_rows src = mm_src((const uint8_t *)x->data, x->nb[1], u ? (const uint8_t *)u->data : NULL,
                                   u ? u->nb[1] : 0);
    if (dst->type == FG_TYPE_Q8_1) {
        FG_ASSERT(n % 32 == 0);
        return mm_convert_q8_1(c, src, (int)n, rows, (uint8_t *)dst->data);
    }
    if (dst->type == FG_TYPE_Q8_K)
        return mm_convert_q8_k(c, src, (int)n, rows, (uint8_t *)dst->data);
    FG_ASSERT(dst->type == FG_TYPE_F16 || dst->type == FG_TYPE_BF16);
    dim3 grid(fg_div_up(n, MM_NT), mm_grid_y(rows));
    if (dst->type == FG_TYPE_BF16)
        fg_launch(c->pdl, cvt_half_kernel<true>, grid, MM_NT, 0, c->stream, src, (uint16_t *)dst->data, (int)n, rows);
    else
        fg_launch(c->pdl, cvt_half_kernel<false>, grid, MM_NT, 0, c->stream, src, (uint16_t *)dst->data, (int)n, rows);
    FG_GPU_LAUNCH_CHECK(c, "convert");
    return FG_OK;
}

fg_status fg_cuda_convert(fg_cuda *c, fg_tensor *dst, const fg_tensor *x) { return fg_cuda_convert_src(c, dst, x, NULL); }

template <int WT> static fg_status gr_go(fg_cuda *c, fg_tensor *dst, const fg_tensor *table) {
    const int64_t n_embd = table->ne[0], n_tokens = c->step.n_tokens;
    const int64_t per_row = mm_is_float(WT) ? n_embd : n_embd / 32;
    dim3 grid(fg_div_up(per_row, MM_NT), mm_grid_y(n_tokens));
    gr_kernel<WT><<<grid, MM_NT, 0, c->stream>>>((const uint8_t *)table->data, table->nb[1], c->step.tokens,
                                                 (int)n_tokens, (float *)dst->data, dst->nb[1], (int)n_embd);
    FG_GPU_LAUNCH_CHECK(c, "get_rows");
    return FG_OK;
}

fg_status fg_cuda_get_rows(fg_cuda *c, fg_tensor *dst, const fg_tensor *table) {
    const uint32_t wt = table->type;
    FG_ASSERT(fg_cuda_matmul_supports(wt) && table->ne[0] >= 1 && table->ne[0] <= INT32_MAX &&
              table->ne[0] % mm_block_size(wt) == 0);
    if (c->step.n_tokens <= 0)
        return FG_OK;
    switch (wt) {
#define X(T) \
    case T:  \
        return gr_go<T>(c, dst, table);
        MM_QTYPES(X)
        MM_FTYPES(X)
#undef X
    default:
        break;
    }
    FG_ASSERT(!"get_rows: unsupported type");
    return FG_ERR_UNSUPPORTED;
}

template <int WT, int NR> static fg_status mv_go(fg_cuda *c, const mv_args &a) {
    typedef mv_geo<WT, NR> G;
    fg_launch(c->pdl, mv_kernel<WT, NR>, fg_div_up(a.n_out, G::R), G::NT, 0, c->stream, a);
    FG_GPU_LAUNCH_CHECK(c, "matvec");
    return FG_OK;
}

template <int WT, int NR> static fg_status mwk_go(fg_cuda *c, const mv_args &a) {
    const size_t smem = (size_t)NR * mwk_row_smem(a.n_in);
    const int rows = c->mwk * MWK_NT / 32; // weight rows a block
    void (*const fn)(mv_args) = c->mwk == 1 ? mwk_kernel<WT, NR, 1> : mwk_kernel<WT, NR, 2>;
    fg_launch(c->pdl, fn, fg_div_up(a.n_out, rows), MWK_NT, smem, c->stream, a);
    FG_GPU_LAUNCH_CHECK(c, "K-quant matvec");
    return FG_OK;
}

template <int WT, int NR> static fg_status mw_go(fg_cuda *c, const mv_args &a) {
    if constexpr ((WT == FG_TYPE_Q4_K || WT == FG_TYPE_Q5_K) && NR <= 2) {
        if (c->mwk && c->mv_direct == 1 && mwk_ok<WT>(a, NR))
            return mwk_go<WT, NR>(c, a);
    }
    if constexpr (mm_is_float(WT)) {
        fg_launch(c->pdl, mw_kernel<WT, NR, false>, fg_div_up(a.n_out, mw_r<NR>::R), MW_NT, 0, c->stream, a);
        FG_GPU_LAUNCH_CHECK(c, "direct matvec");
        return FG_OK;
    } else if constexpr (fg_qt<WT>::BYTES % 4 == 0 || (fg_qt<WT>::UPB == 1 && fg_qt<WT>::BYTES % 4 == 2)) {
        if (c->mv_direct == 1 && mw_a4<WT>(a)) {
            fg_launch(c->pdl, mw_kernel<WT, NR, true>, fg_div_up(a.n_out, mw_r<NR>::R), MW_NT, 0, c->stream, a);
            FG_GPU_LAUNCH_CHECK(c, "direct matvec");
            return FG_OK;
        }
    }
    fg_launch(c->pdl, mw_kernel<WT, NR, false>, fg_div_up(a.n_out, mw_r<NR>::R), MW_NT, 0, c->stream, a);
    FG_GPU_LAUNCH_CHECK(c, "direct matvec");
    return FG_OK;
}

// Kernels for up to 1, 2, 4 and 8 rows (a.nr is the actual count).
template <int WT> static fg_status mv_rows(fg_cuda *c, const mv_args &a) {
    FG_ASSERT(a.nr >= 1 && a.nr <= FG_MV_MAX_ROWS);
    if constexpr (WT != FG_TYPE_F32) { // F32 weights (small models only) keep the staged kernel
        if (c->mv_direct && (!mm_is_float(WT) || mwf_ok<WT>(a))) {
            if (a.nr <= 1)
                return mw_go<WT, 1>(c, a);
            if (a.nr <= 2)
                return mw_go<WT, 2>(c, a);
            if (a.nr <= 4)
                return mw_go<WT, 4>(c, a);
            return mw_go<WT, 8>(c, a);
        }
    }
    if (a.nr <= 1)
        return mv_go<WT, 1>(c, a);
    if (a.nr <= 2)
        return mv_go<WT, 2>(c, a);
    if (a.nr <= 4)
        return mv_go<WT, 4>(c, a);
    return mv_go<WT, 8>(c, a);
}

template <int WT, int XT> static fg_status tm_go(fg_cuda *c, const tm_args &a) {
    dim3 grid(fg_div_up(a.n_rows, TM_BN), fg_div_up(a.n_out, TM_BM));
    tm_kernel<WT, XT><<<grid, TM_NT, 0, c->stream>>>(a);
    FG_GPU_LAUNCH_CHECK(c, "tiled matmul");
    return FG_OK;
}

template <int WT> static fg_status tm_xt(fg_cuda *c, const tm_args &a, uint32_t xt) {
    switch (xt) {
    case FG_TYPE_F32: return tm_go<WT, FG_TYPE_F32>(c, a);
    case FG_TYPE_F16: return tm_go<WT, FG_TYPE_F16>(c, a);
    default: break;
    }
    FG_ASSERT(!"tiled matmul: activation type");
    return FG_ERR_INVALID_ARG;
}

template <int WT> static fg_status mq_go(fg_cuda *c, const mq_args &a) {
    FG_ASSERT((a.n_out + MQ_BM - 1) / MQ_BM <= MM_MAX_GRID_Y);
    dim3 grid(fg_div_up(a.n_rows, MQ_BN), fg_div_up(a.n_out, MQ_BM));
    mq_kernel<WT><<<grid, MQ_NT, 0, c->stream>>>(a);
    FG_GPU_LAUNCH_CHECK(c, "integer tiled matmul");
    return FG_OK;
}

#if !defined(__HIPCC__)
// Split K for the tensor-core kernel when its tiles alone would not fill the device (few rows,
// few weight rows: batched decode): splits of at least MQ_SPLIT_MIN_STEPS K steps until about
// MQ_SPLIT_BLOCKS_PER_SM blocks an SM are in flight, their partial sums in the mm arena after
// the call's converted rows (what is left of it, at least MQ_SPLIT_BYTES: fg_cuda_matmul_
// scratch_bytes). The split count depends on the shapes and the device only, so a step's
// graph stays valid. FORGE_CUDA_MQ_SPLIT=0 turns it off. Sets a's split fields; the count.
static int mq_plan_split(fg_cuda *c, mq_args &a) {
    const int steps = (a.n_units + MQM_BU - 1) / MQM_BU;
    a.ku_split = steps * MQM_BU;
    a.part = NULL;
    a.part_nb1 = a.split_nb = 0;
    const int64_t tiles = fg_div_up(a.n_rows, MQM_BN) * fg_div_up(a.n_out, MQM_BM);
    const int64_t want_blocks = (int64_t)MQ_SPLIT_BLOCKS_PER_SM * (c->n_sm > 0 ? c->n_sm : 80);
    if (!c->mq_split || tiles >= want_blocks / 2 || steps < 2 * MQ_SPLIT_MIN_STEPS)
        return 1;
    int n = (int)fg_div_up(want_blocks, tiles);
    n = n < steps / MQ_SPLIT_MIN_STEPS ? n : steps / MQ_SPLIT_MIN_STEPS;
    n = n < MQ_SPLIT_MAX ? n : MQ_SPLIT_MAX;
    const size_t part_nb1 = (size_t)a.n_out * 4, split_nb = part_nb1 * (size_t)a.n_rows;
    const size_t left = fg_cuda_arena_left(&c->mm);
    if ((size_t)n * split_nb > left)
        n = (int)(left / split_nb);
    if (n < 2)
        return 1;
    const int per = (steps + n - 1) / n; // K steps a split; no split left empty
    n = (steps + per - 1) / per;
    void *p = NULL;
    if (n < 2 || fg_cuda_arena_take(&c->mm, (size_t)n * split_nb, "matmul split-K partial sums", &p) != FG_OK)
        return 1;
    a.ku_split = per * MQM_BU;
    a.part = (uint8_t *)p;
    a.part_nb1 = part_nb1;
    a.split_nb = split_nb;
    return n;
}
#endif

// The integer kernel c->mmq selects: the tensor-core one (FG_MMQ_MMA, sm_80+ NVIDIA only) or dp4a.
#if !defined(__HIPCC__)
// mqm and mhm (the same tiles and split K): the grid with the split mq_plan_split chooses, then
// the split sum.
static fg_status mqm_launch(fg_cuda *c, const mq_args &a, void (*kernel)(mq_args), int smem, const char *what) {
    FG_ASSERT(fg_div_up(a.n_out, MQM_BM) <= MM_MAX_GRID_Y);
    mq_args b = a;
    const int n_split = mq_plan_split(c, b);
    dim3 grid(fg_div_up(a.n_rows, MQM_BN), fg_div_up(a.n_out, MQM_BM), n_split);
    kernel<<<grid, MQM_NT, smem, c->stream>>>(b);
    FG_GPU_LAUNCH_CHECK(c, what);
    if (n_split > 1) {
        dim3 rg(fg_div_up(a.n_out, MM_NT), mm_grid_y(a.n_rows));
        mq_reduce_kernel<<<rg, MM_NT, 0, c->stream>>>(b, n_split);
        FG_GPU_LAUNCH_CHECK(c, "tensor-core matmul: split sum");
    }
    return FG_OK;
}
#endif

template <int WT> static fg_status mq_select(fg_cuda *c, const mq_args &a) {
#if !defined(__HIPCC__)
    if (c->mmq == FG_MMQ_MMA)
        return mqm_launch(c, a, mqm_kernel<WT>, mqm_raw<WT>::SMEM, "integer tensor-core matmul");
#endif
    return mq_go<WT>(c, a);
}

// The F16 tensor-core kernel (FG_MMQ_F16): a's x are F16 rows (16-byte aligned), split K as mqm.
template <int WT> static fg_status mhm_select(fg_cuda *c, const mq_args &a) {
#if !defined(__HIPCC__)
    return mqm_launch(c, a, mhm_kernel<WT>, mhm_smem<WT>::SMEM, "f16 tensor-core matmul");
#else
    (void)c, (void)a;
    return fg_fail(FG_ERR_UNSUPPORTED, "%s: the f16 tensor-core matmul is NVIDIA only", FG_GPU_VENDOR);
#endif
}

#if !defined(__HIPCC__)
// mqr: kw, the warps along K of a row group, doubled (up to MQR_WARPS) while fewer than about
// MQR_WARPS_PER_SM warps an SM would be in flight and each would keep at least 2 super-blocks.
#define MQR_WARPS_PER_SM 24
static int mqr_kw(const fg_cuda *c, const mq_args &a) {
    const int64_t groups = fg_div_up(a.n_out, 16), want = (int64_t)MQR_WARPS_PER_SM * (c->n_sm > 0 ? c->n_sm : 80);
    const int n_sb = a.n_units / 8;
    int kw = 1;
    while (kw < MQR_WARPS && groups * kw < want && n_sb >= 4 * kw)
        kw *= 2;
    return kw;
}

template <int WT, int NT> static fg_status mqr_go(fg_cuda *c, const mq_args &a) {
    const int kw = mqr_kw(c, a);
    dim3 grid((unsigned)fg_div_up(a.n_rows, 8 * NT), (unsigned)fg_div_up(fg_div_up(a.n_out, 16), MQR_WARPS / kw));
    FG_ASSERT(fg_div_up(a.n_out, 16) <= MM_MAX_GRID_Y); // (mm_mqr_ok)
    void (*fn)(mq_args, int) = a.xp ? mqr_kernel<WT, NT, true> : mqr_kernel<WT, NT, false>;
    if constexpr (WT == FG_TYPE_Q4_K) {
        if (a.xp && c->mqr_chain)
            fn = c->mqr_stage ? mqr_kernel<WT, NT, true, true, true> : mqr_kernel<WT, NT, true, true>;
        else if (a.xp && c->mqr_stage)
            fn = mqr_kernel<WT, NT, true, false, true>;
    }
    fg_launch(c->pdl, fn, grid, MQR_NTH, 0, c->stream, a, kw);
    FG_GPU_LAUNCH_CHECK(c, "register-fed tensor-core matmul");
    return FG_OK;
}

// The n tiles a warp takes: the fewest that cover the rows, at most c->mqr_nt (more rows: more
// column groups, each reading the weights again, mostly from L2).
template <int WT> static fg_status mqr_nt(fg_cuda *c, const mq_args &a) {
    if (a.n_rows <= 8 || c->mqr_nt <= 1)
        return mqr_go<WT, 1>(c, a);
    if (a.n_rows <= 16 || c->mqr_nt <= 2)
        return mqr_go<WT, 2>(c, a);
    if (a.n_rows <= 32 || c->mqr_nt <= 4)
        return mqr_go<WT, 4>(c, a);
    return mqr_go<WT, MQR_MAX_NT>(c, a);
}
// FORGE_CUDA_MQR_PACK=1: the activation rows are repacked first (mqr_pack_unit) into the arena
// after the converted rows; read as they are when it has no room for them.
static fg_status mqr_launch(fg_cuda *c, uint32_t wt, mq_args a) {
    const int tiles = c->mqr_pack ? (int)fg_div_up(a.n_rows, 8) : 0;
    const int64_t n_units = (int64_t)tiles * (a.n_units / 8) * MQR_XP_UNITS;
    if (n_units > 0 && c->mm.size >= c->mm.used + (size_t)n_units * 16 + FG_CUDA_ARENA_ALIGN) {
        void *xp = NULL;
        FG_TRY(fg_cuda_arena_take(&c->mm, (size_t)n_units * 16, "mqr packed activation rows", &xp));
        a.xp_tiles = tiles;
        void (*pack)(mq_args, uint8_t *, int64_t) =
            wt == FG_TYPE_Q6_K ? mqr_pack_kernel<FG_TYPE_Q6_K> : mqr_pack_kernel<FG_TYPE_Q4_K>;
        fg_launch(c->pdl, pack, (unsigned)fg_div_up(n_units, 256), 256, 0, c->stream, a, (uint8_t *)xp, n_units);
        FG_GPU_LAUNCH_CHECK(c, "mqr activation packing");
        a.xp = (const uint8_t *)xp;
    }
    return wt == FG_TYPE_Q6_K ? mqr_nt<FG_TYPE_Q6_K>(c, a) : mqr_nt<FG_TYPE_Q4_K>(c, a);
}
#endif

// ============================================================================ library GEMM (prefill)
// For many activation rows the tensor-core GEMM of cuBLAS (F16 x F16 -> F32) beats the portable
// tiled kernel by a wide margin; a quantized, BF16 or F32 weight is first dequantized into an
// F16 copy (one pass over the weight, read once more by the GEMM). The HIP build has no BLAS:
// it keeps the tiled kernel. FORGE_CUBLAS_MIN_ROWS sets the crossover (0: never).
#if !defined(__HIPCC__)
#define FG_MM_CUBLAS 1
#include <cublas_v2.h>
#endif

#define FG_BLAS_WS_BYTES ((size_t)32 << 20)
#define FG_BLAS_MIN_ROWS 32
#define FG_QBLAS_MIN_ROWS 128 // quantized weights: rows from which the chunked F16 GEMM runs (measured)
#define FG_QBLAS_MHM_ROWS 65 // the same after mhm, whose 64-row tiles double their cost from 65 rows (H200, 8B Q4_K
                             // decode step: 128 rows 15.2 ms against mhm's 23.9; 64 rows 11.6 against 13.1)
#define FG_DEQ_MB 256        // the F16 chunk buffer (MiB; FORGE_CUDA_DEQ_MB): at most the largest weight

#ifdef FG_MM_CUBLAS
// Dequantizes weight rows [o0, o0 + rows) of w into F16 rows (contiguous, n_in each): one pass
// over the weight, memory-bound (its bytes read, 2 bytes an element written). Float types: one
// element a thread (their rows need not be whole multiples of anything).
template <int WT>
static __global__ void deq_f16_kernel(const uint8_t *w, size_t w_nb1, uint16_t *out, int n_in, int64_t rows) {
    const int64_t g = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (g >= (int64_t)n_in * rows)
        return;
    const int64_t o = g / n_in, u = g % n_in;
    out[(size_t)o * (size_t)n_in + (size_t)u] =
        fg_f2h(mm_float_elem<WT>(w + (size_t)o * w_nb1 + (size_t)u * (WT == FG_TYPE_F32 ? 4 : 2)));
}

// Quantized types: a thread a 32-element unit (unit g of the chunk, which is row g / units, unit
// g % units of it: the output is contiguous, 64 bytes a unit), decoded once (fg_q_decode; 32-bit
// reads as single loads where A4) and rounded to F16 as mhm does (mhm_halves: the reference's
// value, then the F16 rounding), staged in shared memory, and the block's DEQ_NT units (8 KiB of
// contiguous output) written back as 16-byte stores, a warp 512 contiguous bytes each.
// Shared slot of a thread's chunk c: 4 t + (c ^ ((t >> 1) & 3)), so that the 8 threads of a
// store phase (64 bytes apart) hit 8 different 16-byte bank groups.
enum { DEQ_NT = 128 };
template <int WT, bool A4>
static __global__ __launch_bounds__(DEQ_NT) void deq_q_kernel(const uint8_t *w, size_t w_nb1, uint16_t *out,
                                                              uint32_t units, uint32_t total) {
    typedef fg_qt<WT> Q;
    typedef typename std::conditional<A4, fg_rd_a4, fg_rd_exact>::type RD;
    __shared__ uint4 st[4 * DEQ_NT];
    const uint32_t t = threadIdx.x, g = blockIdx.x * DEQ_NT + t;
    if (g < total) {
        const uint32_t o = g / units, u = g % units;
        fg_qunit q;
        fg_q_decode<WT, RD>(w + (size_t)o * w_nb1 + (size_t)(u / Q::UPB) * Q::BYTES, (int)(u % Q::UPB), q);
        uint32_t h[16];
        mhm_halves<WT>(q, h);
FG_UNROLL
        for (int c = 0; c < 4; c++)
            st[4 * t + (c ^ ((t >> 1) & 3))] = make_uint4(h[4 * c], h[4 * c + 1], h[4 * c + 2], h[4 * c + 3]);
    }
    __syncthreads();
    const uint32_t first = blockIdx.x * DEQ_NT, n = total - first < DEQ_NT ? total - first : DEQ_NT;
    uint4 *dst = (uint4 *)out + (size_t)first * 4;
FG_UNROLL
    for (int k = 0; k < 4; k++) {
        const uint32_t i = t + k * DEQ_NT, ut = i / 4, c = i % 4; // chunk c of the block's unit ut
        if (ut < n)
            dst[i] = st[4 * ut + (c ^ ((ut >> 1) & 3))];
    }
}

static __global__ void add_bias_kernel(float *dst, size_t d_nb1, const float *bias, int64_t n_out, int64_t rows) {
    const int64_t o = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (o >= n_out)
        return;
    for (int64_t r = blockIdx.y; r < rows; r += gridDim.y)
        ((float *)((uint8_t *)dst + (size_t)r * d_nb1))[o] += bias[o];
}

template <int WT> static fg_status deq_go(fg_cuda *c, const fg_tensor *w, int64_t o0, int64_t rows, uint16_t *out) {
    const uint8_t *w0 = (const uint8_t *)w->data + (size_t)o0 * w->nb[1];
    if constexpr (mm_is_float(WT)) {
        deq_f16_kernel<WT><<<fg_div_up(w->ne[0] * rows, MM_NT), MM_NT, 0, c->stream>>>(w0, w->nb[1], out,
                                                                                        (int)w->ne[0], rows);
    } else {
        typedef fg_qt<WT> Q;
        const int64_t units = w->ne[0] / 32, total = units * rows;
        FG_ASSERT(total <= (int64_t)UINT32_MAX - DEQ_NT); // a chunk: at most the F16 buffer's 64-byte units
        void (*fn)(const uint8_t *, size_t, uint16_t *, uint32_t, uint32_t) = deq_q_kernel<WT, false>;
        if constexpr (Q::BYTES % 4 == 0) // 32-bit reads where the blocks and the rows are 4-aligned
            if (((uintptr_t)w0 & 3) == 0 && w->nb[1] % 4 == 0)
                fn = deq_q_kernel<WT, true>;
        fn<<<fg_div_up(total, DEQ_NT), DEQ_NT, 0, c->stream>>>(w0, w->nb[1], out, (uint32_t)units, (uint32_t)total);
    }
    FG_GPU_LAUNCH_CHECK(c, "dequantize to f16");
    return FG_OK;
}

// C[m x n] (ldc) = alpha W^T x + beta C, column-major as cuBLAS sees row-major data
static fg_status blas_gemm(fg_cuda *c, int64_t m, int64_t n, int64_t k, const void *W, int64_t lda, const void *x,
                           int64_t ldx, float *C, int64_t ldc, cudaDataType_t dt, bool accumulate) {
    const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
    cublasStatus_t bs = cublasGemmEx((cublasHandle_t)c->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)m, (int)n, (int)k, &alpha,
                                     W, dt, (int)lda, x, dt, (int)ldx, &beta, C, CUDA_R_32F, (int)ldc,
                                     CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    if (bs != CUBLAS_STATUS_SUCCESS) {
        c->sticky = 1;
        return fg_fail(FG_ERR_DEVICE, "cuda: cublasGemmEx (%lld x %lld x %lld) failed: %s", (long long)m,
                       (long long)n, (long long)k, cublasGetStatusString(bs));
    }
    FG_GPU_LAUNCH_CHECK(c, "cublasGemmEx");
    return FG_OK;
}

// dst[r][o] (+)= sum_i W[o][i] x[r][i] (+ bias): cuBLAS sees the row-major W as the column-major
// W^T (k x m, lda = its row stride) and x as k x n, and writes C (m x n, ldc = dst's row stride).
// F16 x F16, F32 x F32 (SGEMM: F32 models keep their precision) and BF16 x BF16 straight from
// the weights; any other weight is dequantized into the F16 buffer (c->deq: a whole 8B weight at
// the default size, larger ones a chunk of rows at a time), each chunk one GEMM writing its
// columns of dst.
static fg_status blas_go(fg_cuda *c, fg_tensor *dst, const fg_tensor *w, const fg_tensor *x, const float *bias,
                         bool accumulate) {
    const int64_t n_in = w->ne[0], n_out = w->ne[1], n_rows = x->ne[1];
    const bool raw = (w->type == FG_TYPE_F16 && x->type == FG_TYPE_F16) ||
                     (w->type == FG_TYPE_F32 && x->type == FG_TYPE_F32) ||
                     (w->type == FG_TYPE_BF16 && x->type == FG_TYPE_BF16);
    const size_t esz = x->type == FG_TYPE_F32 ? 4 : 2;
    const cudaDataType_t dt = x->type == FG_TYPE_F32 ? CUDA_R_32F : x->type == FG_TYPE_BF16 ? CUDA_R_16BF : CUDA_R_16F;
    const int64_t ldx = (int64_t)(x->nb[1] / esz), ldc = (int64_t)(dst->nb[1] / 4);
    if (raw) {
        FG_TRY(blas_gemm(c, n_out, n_rows, n_in, w->data, (int64_t)(w->nb[1] / esz), x->data, ldx, (float *)dst->data,
                         ldc, dt, accumulate));
    } else {
        FG_ASSERT(x->type == FG_TYPE_F16);
        const int64_t chunk = blas_chunk_rows(c, n_in);
        FG_ASSERT(chunk >= 1);
        uint16_t *d = (uint16_t *)c->deq.base;
        for (int64_t o0 = 0; o0 < n_out; o0 += chunk) {
            const int64_t cn = n_out - o0 < chunk ? n_out - o0 : chunk;
            switch (w->type) {
#define X(T) \
    case T:  \
        FG_TRY(deq_go<T>(c, w, o0, cn, d)); \
        break;
                MM_QTYPES(X)
                MM_FTYPES(X)
#undef X
            default:
                FG_ASSERT(!"library GEMM: weight type");
            }
            FG_TRY(blas_gemm(c, cn, n_rows, n_in, d, n_in, x->data, ldx, (float *)dst->data + o0, ldc, dt,
                             accumulate));
        }
    }
    if (bias) {
        dim3 grid(fg_div_up(n_out, MM_NT), mm_grid_y(n_rows));
        add_bias_kernel<<<grid, MM_NT, 0, c->stream>>>((float *)dst->data, dst->nb[1], bias, n_out, n_rows);
        FG_GPU_LAUNCH_CHECK(c, "add bias");
    }
    return FG_OK;
}
#endif // FG_MM_CUBLAS

static bool mm_blas_rows(const fg_cuda *c, int64_t n_rows) {
    return c->blas && c->blas_min_rows > 0 && n_rows >= c->blas_min_rows;
}

fg_status fg_cuda_matmul_init(fg_cuda *c) {
    // FORGE_CUDA_MMQ: 0 the F16 copy + cuBLAS, dp4a the dp4a integer kernel, mma the tensor-core
    // integer kernel (NVIDIA sm_80+), otherwise (unset, 1, f16) the F16 tensor-core kernel where
    // the device has mma (sm_80+: faster from 9 rows, measured on H100 and H200), else dp4a
    const char *mq = getenv("FORGE_CUDA_MMQ");
#if defined(__HIPCC__)
    const bool has_mma = false;
#else
    const bool has_mma = c->cc_major >= 8;
#endif
    c->mmq = mq && mq[0] == '0'            ? FG_MMQ_OFF
             : (mq && !strcmp(mq, "dp4a")) ? FG_MMQ_DP4A
             : !has_mma                    ? FG_MMQ_DP4A
             : (mq && !strcmp(mq, "mma"))  ? FG_MMQ_MMA
                                           : FG_MMQ_F16;
#if !defined(__HIPCC__)
    if (c->mmq == FG_MMQ_MMA) { // the tiles and the raw slots: over the 48 KiB default for most types
#define X(T)                                                                                                \
    FG_GPU_CHECK(c, gpuFuncSetAttribute(mqm_kernel<T>, gpuFuncAttributeMaxDynamicSharedMemorySize, \
                                        (int)mqm_raw<T>::SMEM));
        MM_QTYPES(X)
#undef X
    }
    if (c->mmq == FG_MMQ_F16) {
#define X(T)                                                                                                \
    FG_GPU_CHECK(c, gpuFuncSetAttribute(mhm_kernel<T>, gpuFuncAttributeMaxDynamicSharedMemorySize, \
                                        (int)mhm_smem<T>::SMEM));
        MM_QTYPES(X)
#undef X
    }
#endif
    const char *mv = getenv("FORGE_CUDA_MV");
    c->mv_direct = mv && !strcmp(mv, "staged") ? 0 : mv && !strcmp(mv, "direct16") ? 2 : 1;
    const char *mp = getenv("FORGE_CUDA_MV_PIPE"); // off unless 1: no gain measured (H100, 18:15 UTC)
    c->mv_pipe = mp && !strcmp(mp, "1");
    const char *mk = getenv("FORGE_CUDA_MWK");
    c->mwk = mk && (!strcmp(mk, "0") || !strcmp(mk, "1")) ? atoi(mk) : 2;
    const char *ms = getenv("FORGE_CUDA_MQ_SPLIT");
    c->mq_split = !(ms && !strcmp(ms, "0"));
    const char *mr = getenv("FORGE_CUDA_MV_ROWS");
    // the matvec in passes pays off only against the integer kernels (mhm is faster from 9 rows)
    c->mv_rows = mr ? atoi(mr) : c->mmq == FG_MMQ_F16 ? FG_MV_MAX_ROWS : FG_MV_BATCH_ROWS;
    // Q4_K/Q6_K weights from mqr_min to mqr_max rows: the register-fed kernel (mqr), where the
    // device has mma and FORGE_CUDA_MMQ is not 0: by default (FG_MQR_DEFAULT) and with
    // FORGE_CUDA_MQR=1 rows 9..FG_MQR_MAX_ROWS, =LO:HI those rows, =0 off
    const char *mr2 = getenv("FORGE_CUDA_MQR");
    // mqr over activation rows repacked first (default; =0: read as they are). H100, 2026-12-07:
    // a 16-sequence 8B Q4_K decode step 5.99 -> 4.58 ms, 32 sequences 9.05 -> 6.15 ms
    const char *mp2 = getenv("FORGE_CUDA_MQR_PACK");
    c->mqr_pack = !(mp2 && !strcmp(mp2, "0"));
    // Q4_K over repacked rows: the chained variant (mqr_a_c) with its weights staged in shared
    // memory (mqr_stage_copy), each =0 off. H100, 8B Q4_K decode step, both against neither (r57s):
    // 16 sequences 4.66 -> 4.34 ms, 32 6.32 -> 5.80, 64 10.30 -> 8.93
    const char *mch = getenv("FORGE_CUDA_MQR_CHAIN");
    c->mqr_chain = !(mch && !strcmp(mch, "0"));
    const char *mst = getenv("FORGE_CUDA_MQR_STAGE");
    c->mqr_stage = !(mst && !strcmp(mst, "0"));
    const char *mn = getenv("FORGE_CUDA_MQR_NT"); // n tiles a warp at most (1, 2, 4, 8)
    c->mqr_nt = mn && atoi(mn) >= 1 ? atoi(mn) : FG_MQR_NT;
    c->mqr_min = FG_MV_MAX_ROWS + 1;
    c->mqr_max = FG_MQR_DEFAULT ? FG_MQR_MAX_ROWS : 0;
    if (mr2) {
        int lo = 0, hi = 0;
        if (sscanf(mr2, "%d:%d", &lo, &hi) == 2 && lo >= 1 && hi >= lo) {
            c->mqr_min = lo;
            c->mqr_max = hi;
        } else {
            c->mqr_max = !strcmp(mr2, "1") ? FG_MQR_MAX_ROWS : 0;
        }
    }
    if (!has_mma || c->mmq == FG_MMQ_OFF)
        c->mqr_max = 0;
#ifdef FG_MM_CUBLAS
    const char *e = getenv("FORGE_CUBLAS_MIN_ROWS");
    c->blas_min_rows = e ? atoi(e) : FG_BLAS_MIN_ROWS;
    // quantized weights through the chunked F16 GEMM from this many rows (FORGE_CUDA_QBLAS_ROWS;
    // 0: never, the integer kernels take them); FORGE_CUDA_MMQ=0 sends every GEMM-sized call
    const char *qb = getenv("FORGE_CUDA_QBLAS_ROWS");
    c->qblas_rows = c->mmq == FG_MMQ_OFF ? c->blas_min_rows
                    : qb                 ? atoi(qb)
                    : c->mmq == FG_MMQ_F16 ? FG_QBLAS_MHM_ROWS
                                         : FG_QBLAS_MIN_ROWS;
    const char *dm = getenv("FORGE_CUDA_DEQ_MB");
    c->deq_want = (size_t)(dm && atoi(dm) > 0 ? atoi(dm) : FG_DEQ_MB) << 20;
    if (c->blas_min_rows <= 0) {
        c->qblas_rows = 0;
        return FG_OK;
    }
    cublasHandle_t h = NULL;
    cublasStatus_t bs = cublasCreate(&h);
    if (bs != CUBLAS_STATUS_SUCCESS)
        return fg_fail(FG_ERR_DEVICE, "cuda: cublasCreate failed: %s", cublasGetStatusString(bs));
    c->blas = h;
    FG_GPU_CHECK(c, gpuMalloc(&c->blas_ws, FG_BLAS_WS_BYTES));
    if (cublasSetStream(h, c->stream) != CUBLAS_STATUS_SUCCESS ||
        cublasSetWorkspace(h, c->blas_ws, FG_BLAS_WS_BYTES) != CUBLAS_STATUS_SUCCESS)
        return fg_fail(FG_ERR_DEVICE, "cuda: cannot set cuBLAS's stream and workspace");
#else
    c->blas_min_rows = 0;
    c->qblas_rows = 0;
#endif
    return FG_OK;
}

// The F16 chunk buffer of the library GEMM: FORGE_CUDA_DEQ_MB (at least 256 rows of the widest
// weight row, at most the largest weight). Not needed when no weight goes through it.
fg_status fg_cuda_matmul_reserve(fg_cuda *c, const fg_backend_limits *lim) {
    if (!c->blas || lim->max_weight_elems <= 0)
        return FG_OK;
    size_t need = c->deq_want;
    const size_t floor_b = (size_t)(lim->max_cols > 0 ? lim->max_cols : 0) * 2 * 256;
    const size_t whole = (size_t)lim->max_weight_elems * 2;
    need = need > floor_b ? need : floor_b;
    need = need < whole ? need : whole;
    if (need <= c->deq.size)
        return FG_OK;
    if (c->deq.base)
        FG_GPU_IGNORE(gpuFree(c->deq.base));
    c->deq.base = NULL;
    c->deq.size = 0;
    void *p = NULL;
    gpuError_t err = gpuMalloc(&p, need);
    if (err != gpuSuccess) {
        FG_GPU_IGNORE(gpuGetLastError());
        return fg_fail(FG_ERR_NOMEM, "cuda: cannot allocate %zu bytes for the F16 weight chunks of the prefill GEMM; "
                                     "FORGE_CUBLAS_MIN_ROWS=0 runs without them", need);
    }
    c->deq.base = (char *)p;
    c->deq.size = need;
    return FG_OK;
}

void fg_cuda_matmul_free(fg_cuda *c) {
#ifdef FG_MM_CUBLAS
    if (c->blas)
        cublasDestroy((cublasHandle_t)c->blas);
#endif
    c->blas = NULL;
    if (c->blas_ws)
        FG_GPU_IGNORE(gpuFree(c->blas_ws));
    if (c->deq.base)
        FG_GPU_IGNORE(gpuFree(c->deq.base));
    c->blas_ws = NULL;
    c->deq.base = NULL;
    c->deq.size = 0;
}

// F32, Q8_K or Q8_1 rows widened to F16 rows of n_in halves in the mm arena (taken from its
// start: the call's), as the F16 GEMMs and mhm read them (8-bit: d * q rounded once).
static fg_status mm_widen_f16(fg_cuda *c, const fg_tensor *x, int64_t n_in, int64_t n_rows, uint16_t **out) {
    void *h = NULL;
    FG_TRY(mm_scratch(c, (size_t)n_rows * (size_t)n_in * 2, &h));
    const uint8_t *xp = (const uint8_t *)x->data;
    dim3 grid(fg_div_up(n_in, MM_NT), mm_grid_y(n_rows));
    if (x->type == FG_TYPE_F32)
        cvt_half_kernel<false><<<grid, MM_NT, 0, c->stream>>>(mm_src(xp, x->nb[1]), (uint16_t *)h, (int)n_in, n_rows);
    else if (x->type == FG_TYPE_Q8_K)
        act_deq_f16_kernel<true><<<grid, MM_NT, 0, c->stream>>>(xp, x->nb[1], (uint16_t *)h, (int)n_in, n_rows);
    else
        act_deq_f16_kernel<false><<<grid, MM_NT, 0, c->stream>>>(xp, x->nb[1], (uint16_t *)h, (int)n_in, n_rows);
    FG_GPU_LAUNCH_CHECK(c, "activations to f16");
    *out = (uint16_t *)h;
    return FG_OK;
}

// The 8-bit rows (the weight type's matvec grid) of a quantized weight's x: x itself when it
// comes converted, else its F32 rows quantized once into the mm arena (taken from its start).
static fg_status mm_act_rows(fg_cuda *c, uint32_t wt, const fg_tensor *x, int64_t n_in, int64_t n_rows,
                             const uint8_t **out, size_t *out_nb1) {
    *out = (const uint8_t *)x->data;
    *out_nb1 = x->nb[1];
    if (x->type != FG_TYPE_F32)
        return FG_OK;
    void *q = NULL;
    FG_TRY(mm_scratch(c, mm_act_row_bytes(wt, n_in) * (size_t)n_rows, &q));
    const fg_src_rows src = mm_src((const uint8_t *)x->data, x->nb[1]);
    if (mm_is_k((int)wt))
        FG_TRY(mm_convert_q8_k(c, src, (int)n_in, n_rows, (uint8_t *)q));
    else
        FG_TRY(mm_convert_q8_1(c, src, (int)n_in, n_rows, (uint8_t *)q));
    *out = (const uint8_t *)q;
    *out_nb1 = mm_act_row_bytes(wt, n_in);
    return FG_OK;
}

// The tiled kernels of a quantized weight type: mhm over F16 rows (f16) or the integer ones
// over 8-bit rows.
static fg_status mm_tiled(fg_cuda *c, uint32_t wt, bool f16, const mq_args &a) {
    switch (wt) {
#define X(T) \
    case T:  \
        return f16 ? mhm_select<T>(c, a) : mq_select<T>(c, a);
        MM_QTYPES(X)
#undef X
    default:
        break;
    }
    FG_ASSERT(!"tiled matmul: unsupported type");
    return FG_ERR_UNSUPPORTED;
}

fg_status fg_cuda_matmul(fg_cuda *c, fg_tensor *dst, const fg_tensor *w, const fg_tensor *x, const fg_tensor *bias,
                         bool accumulate) {
    const uint32_t wt = w->type, xt = x->type;
    const int64_t n_in = w->ne[0], n_out = w->ne[1], n_rows = x->ne[1];
    FG_ASSERT(fg_cuda_matmul_supports(wt));
    FG_ASSERT(xt == FG_TYPE_F32 || xt == FG_TYPE_F16 || xt == FG_TYPE_BF16 || xt == FG_TYPE_Q8_1 ||
              xt == FG_TYPE_Q8_K);
    // 8-bit x (act_type of a quantized weight) comes on its weight's grid: Q8_K for the K-quants
    FG_ASSERT((xt != FG_TYPE_Q8_1 && xt != FG_TYPE_Q8_K) ||
              (!mm_is_float((int)wt) && (xt == FG_TYPE_Q8_K) == mm_is_k((int)wt)));
    FG_ASSERT(n_in >= 1 && n_in <= INT32_MAX / 2 && n_in % mm_block_size(wt) == 0 && x->ne[0] == n_in);
    FG_ASSERT(xt != FG_TYPE_Q8_1 || n_in % 32 == 0);
    FG_ASSERT(n_out >= 1 && (n_out + TM_BM - 1) / TM_BM <= MM_MAX_GRID_Y && n_rows >= 1);
    const bool flt = mm_is_float((int)wt);
    const float *b = bias ? (const float *)bias->data : NULL;

    // quantized weights: 8-bit rows on the weight's grid (F32 rows converted once into the
    // arena) through the matvec (<= FG_MV_MAX_ROWS rows) or the integer tiled kernel
    // (batched decode: up to c->mv_rows rows go through the matvec FG_MV_MAX_ROWS at a time,
    // each pass reading the weights again, while that costs less than the tiled kernel)
    const int64_t mv_max = !flt && c->mv_rows > FG_MV_MAX_ROWS ? c->mv_rows : FG_MV_MAX_ROWS;
    // quantized weights, many rows: the chunked F16 GEMM where it is faster (qblas_rows)
    const bool q_blas = !flt && c->blas && c->qblas_rows > FG_MV_MAX_ROWS && n_rows >= c->qblas_rows &&
                        n_rows <= INT32_MAX && n_out <= INT32_MAX && blas_chunk_rows(c, n_in) >= 1;
#if !defined(__HIPCC__)
    // Q4_K/Q6_K weights, few rows (batched decode): mqr over the 8-bit rows (F32 rows quantized
    // once), before the library GEMM in the rows they share
    if ((wt == FG_TYPE_Q4_K || wt == FG_TYPE_Q6_K) && n_rows >= c->mqr_min && n_rows <= c->mqr_max &&
        fg_div_up(n_out, 16) <= MM_MAX_GRID_Y && (xt == FG_TYPE_Q8_K || xt == FG_TYPE_F32) &&
        ((uintptr_t)w->data | w->nb[1]) % (wt == FG_TYPE_Q4_K ? 16 : 2) == 0 &&
        ((uintptr_t)x->data | x->nb[1]) % 4 == 0) {
        c->mm.used = 0; // the arena is this call's (converted rows)
        const uint8_t *xq = NULL;
        size_t xq_nb1 = 0;
        FG_TRY(mm_act_rows(c, wt, x, n_in, n_rows, &xq, &xq_nb1));
        return mqr_launch(c, wt, mq_args_make((const uint8_t *)w->data, w->nb[1], xq, xq_nb1, (float *)dst->data,
                                          dst->nb[1], b, n_out, n_rows, n_in, accumulate));
    }
#endif
    // quantized weights, many rows, FG_MMQ_F16: the F16 tensor-core kernel over F16 rows (the
    // 8-bit or F32 rows widened into the arena, as the library GEMM reads them)
    if (!flt && c->mmq == FG_MMQ_F16 && !q_blas && n_rows > mv_max && n_rows <= INT32_MAX &&
        (xt != FG_TYPE_F16 || ((uintptr_t)x->data | x->nb[1]) % 16 == 0) && xt != FG_TYPE_BF16) {
        const uint8_t *xh = (const uint8_t *)x->data;
        size_t xh_nb1 = x->nb[1];
        c->mm.used = 0; // the arena is this call's (widened rows, then split-K partial sums)
        if (xt != FG_TYPE_F16) {
            uint16_t *h = NULL;
            FG_TRY(mm_widen_f16(c, x, n_in, n_rows, &h));
            xh = (const uint8_t *)h;
            xh_nb1 = (size_t)n_in * 2;
        }
        return mm_tiled(c, wt, true,
                        mq_args_make((const uint8_t *)w->data, w->nb[1], xh, xh_nb1, (float *)dst->data, dst->nb[1], b,
                                     n_out, n_rows, n_in, accumulate));
    }
    const bool q_int = !flt && xt != FG_TYPE_F16 && xt != FG_TYPE_BF16 && !q_blas && (n_rows <= mv_max || c->mmq);
    if (q_int || (flt && n_rows <= FG_MV_MAX_ROWS && xt == FG_TYPE_F32)) {
        c->mm.used = 0; // the arena is this call's (converted rows, then split-K partial sums)
        const uint8_t *xq = (const uint8_t *)x->data;
        size_t xq_nb1 = x->nb[1];
        if (!flt)
            FG_TRY(mm_act_rows(c, wt, x, n_in, n_rows, &xq, &xq_nb1));
        if (n_rows > mv_max)
            return mm_tiled(c, wt, false,
                            mq_args_make((const uint8_t *)w->data, w->nb[1], xq, xq_nb1, (float *)dst->data, dst->nb[1],
                                         b, n_out, n_rows, n_in, accumulate));
        mv_args a;
        a.w = (const uint8_t *)w->data;
        a.w_nb1 = w->nb[1];
        a.x = xq;
        a.x_nb1 = xq_nb1;
        a.dst = (float *)dst->data;
        a.d_nb1 = dst->nb[1];
        a.bias = b;
        a.n_out = n_out;
        a.n_in = (int)n_in;
        a.accumulate = accumulate;
        a.pipe = c->mv_pipe;
        for (int64_t r0 = 0; r0 < n_rows; r0 += FG_MV_MAX_ROWS) { // one pass for <= 8 rows
            a.x = xq + (size_t)r0 * xq_nb1;
            a.dst = (float *)((char *)dst->data + (size_t)r0 * dst->nb[1]);
            a.nr = (int)(n_rows - r0 < FG_MV_MAX_ROWS ? n_rows - r0 : FG_MV_MAX_ROWS);
            fg_status st = FG_ERR_UNSUPPORTED;
            switch (wt) {
#define X(T)                     \
    case T:                      \
        st = mv_rows<T>(c, a); \
        break;
                MM_QTYPES(X)
                MM_FTYPES(X)
#undef X
            default:
                FG_ASSERT(!"matvec: unsupported type");
                break;
            }
            if (st != FG_OK)
                return st;
        }
        return FG_OK;
    }

    // many rows of a quantized weight without the integer kernel (FORGE_CUDA_MMQ=0): the GEMMs
    // read F16 rows, here the 8-bit rows widened, or F32 rows rounded
    fg_tensor xh;
    if (!flt && xt != FG_TYPE_F16) {
        uint16_t *h = NULL;
        FG_TRY(mm_widen_f16(c, x, n_in, n_rows, &h));
        int64_t ne[2] = {n_in, n_rows};
        xh = fg_tensor_view(NULL, h, 0, FG_TYPE_F16, 2, ne);
        x = &xh;
    }
    const uint32_t xt2 = x->type;
#ifdef FG_MM_CUBLAS
    {
        const uint32_t xt = xt2; // the rows the GEMM reads
        const bool raw = (wt == FG_TYPE_F16 && xt == FG_TYPE_F16) || (wt == FG_TYPE_F32 && xt == FG_TYPE_F32) ||
                         (wt == FG_TYPE_BF16 && xt == FG_TYPE_BF16);
        const size_t esz = xt == FG_TYPE_F32 ? 4 : 2;
        // F32 weights go to SGEMM from FG_MV_MAX_ROWS + 1 rows: the tiled kernel would round them
        // and the rows to F16, and a result would depend on how many rows share the step
        const bool rows_ok = !flt                                        ? q_blas
                             : wt == FG_TYPE_F32 && xt == FG_TYPE_F32 ? c->blas && n_rows > FG_MV_MAX_ROWS
                                                                      : mm_blas_rows(c, n_rows);
        if (rows_ok && x->nb[1] % esz == 0 && w->nb[1] % esz == 0 && dst->nb[1] % 4 == 0 &&
            n_rows <= INT32_MAX && n_out <= INT32_MAX &&
            (raw || (xt == FG_TYPE_F16 && blas_chunk_rows(c, n_in) >= 1)))
            return blas_go(c, dst, w, x, b, accumulate);
    }
#endif
    FG_ASSERT(xt2 != FG_TYPE_BF16); // act_type gives BF16 only where the library GEMM runs
    tm_args a;
    a.w = (const uint8_t *)w->data;
    a.w_nb1 = w->nb[1];
    a.x = (const uint8_t *)x->data;
    a.x_nb1 = x->nb[1];
    a.dst = (float *)dst->data;
    a.d_nb1 = dst->nb[1];
    a.bias = b;
    a.n_out = n_out;
    a.n_rows = n_rows;
    a.n_in = (int)n_in;
    a.accumulate = accumulate;
    switch (wt) {
#define X(T) \
    case T:  \
        return tm_xt<T>(c, a, xt2);
        MM_QTYPES(X)
        MM_FTYPES(X)
#undef X
    default:
        break;
    }
    FG_ASSERT(!"tiled matmul: unsupported type");
    return FG_ERR_UNSUPPORTED;
}
#endif // FG_MM_HOST_TEST
