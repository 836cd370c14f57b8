// cuda_attn.cu - the paged KV cache on the GPU: kv_store (f32 rows into each token's page slot,
// converted to the cache type bit-identically to the CPU), kv_copy_page (copy-on-write of one
// page, all layers) and paged flash attention over a whole step in one pass: prefill chunks,
// decode tokens and mixes of both, sequences of any length, pages scattered and shared.
// Not here: which page belongs to whom (src/engine), rope (cuda_ops.cu). Called through the
// launchers declared in cuda_internal.h by the ops table in cuda_backend.cu.
//
// Attention design (portable CUDA-core code; FG_WARP lanes, never a literal 32):
//  * Work item = (sequence s, q tile, kv chunk) x kv head. The q rows of a
//    sequence for one kv head are its (token, head of the GQA group) pairs flattened as
//    fr = token_in_seq * group + g; a q tile is attn_rows() (16) consecutive flattened rows, so one
//    K/V row loaded into shared memory serves every q head of the group and several tokens
//    (prefill), or the whole group of one token (decode); MQA/GQA need no special case.
//  * A plan kernel (one block) turns the step metadata into a work list: per sequence the
//    number of q tiles and of kv chunks; the chunk length L (keys) is chosen so the step
//    fills the device (flash-decoding): no split when there are enough tiles already, else
//    L ~ total work / target blocks, at least ATTN_L_MIN and large enough that the partial
//    results fit the arena. Grid sizes depend only on n_tokens, n_seqs and the device, never
//    on KV lengths, and blocks loop over the items (grid-stride), longest-first.
//  * A block = ATTN_NW warps; item row r belongs to warp r % ATTN_NW. Per kv tile of FG_WARP
//    keys: the block stages the tile's K rows (in chunks of DC dims, converted to f32 in
//    shared memory, page looked up per key), each lane scores one key against its warp's q
//    rows (q in shared memory, pre-scaled by scale*log2 e), online softmax in f32 (running
//    max and sum per row, base 2), the probabilities go to shared memory, then the V rows
//    are staged and each lane accumulates its DC/FG_WARP output dims per row in registers.
//    Staging is software-pipelined: the global loads of the next chunk (K, V, next tile's
//    K) are in flight in registers while the block computes on the current one.
//  * A sequence split into chunks writes unnormalised partials (max, sum, acc) to the
//    c->attn arena; a reduction kernel (one warp per (token, head)) merges them into dst.
//  * Head sizes: the kernel is instantiated for D_CAP = 64, 128, 256, 512 (any head_dim up to
//    D_CAP, padded with zeros), with exact specialisations (compile-time loops) for 64, 128
//    and 256. Cache types: F16, F32, Q8_0 (a kv_* traits struct each).
// Numerics: q rounded to the cache type first (as the reference converts q for its F16 K),
// q.k, softmax and the V sum in f32 (the probabilities are not rounded to f16 as the CPU
// reference rounds its normalised ones: online softmax never holds them); stores round to
// nearest even exactly like fg_f32_to_f16. A Q8_0 cache: q on the Q8_0 grid of the reference
// (fg_quantize_row's Q8_0: per 32-block d = f16(amax / 127), nearest-even quants; the CPU
// quantizes q and uses the integer dot, here the dequantized q meets the dequantized K in
// f32: the same products, summed in another order), stores quantize each 32-block with the
// same arithmetic (bit for bit the CPU's), K/V staged dequantized (q * d, exact in f32).
#include "backend/cuda/cuda_internal.h"

#include "backend/cuda/cuda_common.cuh"
#include "quant/blocks.h"

extern "C" {
#include "base/half.h"
}

#include <float.h>
#include <limits.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

// ---------------------------------------------------------------- cache element types
// How the kernels read and write one row of the cache: fetch raw groups of 4 elements into
// registers, convert them to f32 when they are staged, store one f32 element (QK == 1) or a
// block of QK elements together (QK > 1: store_lane, every lane of a QK-lane group), round q
// as the reference multiplies it with this cache (round_q per element, round_q_lane per
// QK-lane group). row_bytes(n): bytes of n elements of a row (a head's slice: n = head_dim).
struct kv_f16 {
    static constexpr int QK = 1;
    static __host__ __device__ __forceinline__ size_t row_bytes(int n) { return (size_t)n * 2; }
    typedef uint2 raw; // 4 elements as stored, held in registers between fetch and commit
    static __device__ __forceinline__ raw zero() { return make_uint2(0u, 0u); }
    // 4 consecutive elements from element e of a row (e a multiple of 4, row 8-byte aligned)
    static __device__ __forceinline__ raw fetch4(const char *row, int e) {
        return *(const uint2 *)(row + (size_t)e * 2);
    }
    // elements e.. of a row, those at n or past it read as 0 (any alignment)
    static __device__ __forceinline__ raw fetch_tail(const char *row, int e, int n) {
        const uint16_t *p = (const uint16_t *)row + e;
        const uint32_t a = p[0], b = e + 1 < n ? p[1] : 0u, c = e + 2 < n ? p[2] : 0u, d = e + 3 < n ? p[3] : 0u;
        return make_uint2(a | (b << 16), c | (d << 16));
    }
    static __device__ __forceinline__ float4 to_f32(raw u) {
        return make_float4(fg_h2f((uint16_t)(u.x & 0xffffu)), fg_h2f((uint16_t)(u.x >> 16)),
                           fg_h2f((uint16_t)(u.y & 0xffffu)), fg_h2f((uint16_t)(u.y >> 16)));
    }
    // round to nearest even, NaN kept a NaN: the same bits as the CPU's store
    static __device__ __forceinline__ void store1(char *row, int e, float x) {
        ((uint16_t *)row)[e] = fg_f32_to_f16(x);
    }
    // q as the reference multiplies it with this cache: rounded to the cache type
    static __device__ __forceinline__ float round_q(float x) { return fg_h2f(fg_f32_to_f16(x)); }
};

struct kv_f32 {
    static constexpr int QK = 1;
    static __host__ __device__ __forceinline__ size_t row_bytes(int n) { return (size_t)n * 4; }
    typedef float4 raw;
    static __device__ __forceinline__ raw zero() { return make_float4(0.0f, 0.0f, 0.0f, 0.0f); }
    static __device__ __forceinline__ raw fetch4(const char *row, int e) {
        return *(const float4 *)(row + (size_t)e * 4);
    }
    static __device__ __forceinline__ raw fetch_tail(const char *row, int e, int n) {
        const float *p = (const float *)row + e;
        return make_float4(p[0], e + 1 < n ? p[1] : 0.0f, e + 2 < n ? p[2] : 0.0f, e + 3 < n ? p[3] : 0.0f);
    }
    static __device__ __forceinline__ float4 to_f32(raw x) { return x; }
    static __device__ __forceinline__ void store1(char *row, int e, float x) { ((float *)row)[e] = x; }
    static __device__ __forceinline__ float round_q(float x) { return x; }
};

// Q8_0: a row is blocks of 34 bytes (fg_block_q8_0: f16 d, then 32 int8 quants), so quants
// are only 2-byte aligned (rows, pages and heads start at even offsets): 4 quants are two
// 16-bit loads. The lanes of one QK-lane group hold one block's elements (lane i & 31 =
// element i & 31), so its amax is a butterfly over offsets 16..1, inside the group on 32- and
// 64-wide warps alike.
struct kv_q8_0 {
    static constexpr int QK = FG_QK8_0;
    static_assert(sizeof(fg_block_q8_0) == 34 && FG_WARP % FG_QK8_0 == 0, "q8_0 block, lane groups");
    static __host__ __device__ __forceinline__ size_t row_bytes(int n) {
        return (size_t)(n / FG_QK8_0) * sizeof(fg_block_q8_0);
    }
    struct raw {
        uint32_t q;  // 4 quants, element e in byte e % 4
        uint16_t d;  // the block's scale (f16 bits)
    };
    static __device__ __forceinline__ raw zero() {
        raw r;
        r.q = 0u;
        r.d = 0;
        return r;
    }
    static __device__ __forceinline__ raw fetch4(const char *row, int e) {
        const char *blk = row + (size_t)(e / FG_QK8_0) * sizeof(fg_block_q8_0);
        const uint16_t *qs = (const uint16_t *)(blk + offsetof(fg_block_q8_0, qs) + e % FG_QK8_0);
        raw r;
        r.q = (uint32_t)qs[0] | ((uint32_t)qs[1] << 16);
        r.d = *(const uint16_t *)(blk + offsetof(fg_block_q8_0, d));
        return r;
    }
    static __device__ __forceinline__ raw fetch_tail(const char *row, int e, int n) {
        const char *blk = row + (size_t)(e / FG_QK8_0) * sizeof(fg_block_q8_0);
        const uint8_t *qs = (const uint8_t *)(blk + offsetof(fg_block_q8_0, qs));
        raw r;
        r.q = 0u;
        for (int k = 0; k < 4 && e + k < n; k++) // n is whole blocks: never past this one
            r.q |= (uint32_t)qs[(e + k) % FG_QK8_0] << (8 * k);
        r.d = *(const uint16_t *)(blk + offsetof(fg_block_q8_0, d));
        return r;
    }
    // q * d as fg_dequant_q8_0 (exact in f32)
    static __device__ __forceinline__ float4 to_f32(raw u) {
        const float d = fg_h2f(u.d);
        return make_float4((float)(int8_t)(u.q & 0xffu) * d, (float)(int8_t)((u.q >> 8) & 0xffu) * d,
                           (float)(int8_t)((u.q >> 16) & 0xffu) * d, (float)(int8_t)(u.q >> 24) * d);
    }
    // The reference quantizer's arithmetic (fg_quantize_row Q8_0 = ggml's x86 quantize_row_q8_0):
    // amax of the block, d = amax / 127, q = nearest-even(x * (127 / amax)); returns q, sets *d.
    static __device__ __forceinline__ int quant_lane(float x, float *d) {
        float amax = fabsf(x);
#pragma unroll
        for (int off = FG_QK8_0 / 2; off > 0; off >>= 1)
            amax = fmaxf(amax, fg_shfl_xor(amax, off));
        *d = amax / 127.0f;
        return quant_one(x, amax);
    }
    // x on the grid of a block whose amax is known: nearest-even(x * (127 / amax))
    static __device__ __forceinline__ int quant_one(float x, float amax) {
        const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
        return __float2int_rn(fg_fmul_rn(x, id));
    }
    // Element e of a row <- x; called by every lane of the QK-lane group holding elements
    // e - e % 32 .. + 31 (valid false: a lane past the row, x = 0, nothing written).
    static __device__ __forceinline__ void store_lane(char *row, int e, float x, bool valid) {
        float d;
        const int q = quant_lane(x, &d);
        if (valid) {
            char *blk = row + (size_t)(e / FG_QK8_0) * sizeof(fg_block_q8_0);
            blk[offsetof(fg_block_q8_0, qs) + e % FG_QK8_0] = (char)(int8_t)q;
            if (e % FG_QK8_0 == 0)
                *(uint16_t *)(blk + offsetof(fg_block_q8_0, d)) = fg_f2h(d);
        }
    }
    // q as the reference multiplies it with this cache: on its Q8_0 grid (q * f16(d)); every
    // lane of the group holding x's block calls it
    static __device__ __forceinline__ float round_q_lane(float x) {
        float d;
        const int q = quant_lane(x, &d);
        return (float)q * fg_h2f(fg_f2h(d));
    }
};

bool fg_cuda_kv_supports(uint32_t kv_type) {
    return kv_type == FG_TYPE_F16 || kv_type == FG_TYPE_F32 || kv_type == FG_TYPE_Q8_0;
}

// Alignment (bytes) of K/V rows that fetch4 needs.
static size_t kv_fetch4_align(uint32_t kv_type) {
    return kv_type == FG_TYPE_Q8_0 ? 2 : kv_type == FG_TYPE_F16 ? 8 : 16;
}

// ---------------------------------------------------------------- kv_store
// One slot's row <- n f32 elements, by the block's threads.
template <typename KVT> static __device__ __forceinline__ void kv_store_row(char *row, const float *src, int n) {
    if constexpr (KVT::QK == 1) {
        for (int i = threadIdx.x; i < n; i += blockDim.x)
            KVT::store1(row, i, src[i]);
    } else {
        // whole blocks: QK consecutive lanes quantize one block together (n and blockDim.x are
        // multiples of QK), every lane runs every pass (the amax is a shuffle)
        for (int i0 = 0; i0 < n; i0 += blockDim.x) {
            const int i = i0 + (int)threadIdx.x;
            KVT::store_lane(row, i, i < n ? src[i] : 0.0f, i < n);
        }
    }
}

// One block per (token, K or V): the row goes to page page_table[seq][pos / page_size], slot
// pos % page_size of the layer (k_dst / v_dst already point at the layer).
template <typename KVT>
__global__ void __launch_bounds__(256)
kv_store_kernel(char *k_dst, char *v_dst, size_t k_nb1, size_t k_nb2, size_t v_nb1, size_t v_nb2,
                const char *k_src, size_t k_src_nb1, const char *v_src, size_t v_src_nb1, int n,
                const int32_t *pos, const int32_t *seq, const int32_t *page_table, int max_pages,
                int page_size) {
    const int t = blockIdx.x;
    const bool is_v = blockIdx.y != 0;
    const int p = pos[t];
    const int page = page_table[(size_t)seq[t] * max_pages + p / page_size];
    const int slot = p % page_size;
    const float *src = (const float *)(is_v ? v_src + (size_t)t * v_src_nb1 : k_src + (size_t)t * k_src_nb1);
    char *row = is_v ? v_dst + (size_t)page * v_nb2 + (size_t)slot * v_nb1
                     : k_dst + (size_t)page * k_nb2 + (size_t)slot * k_nb1;
    kv_store_row<KVT>(row, src, n);
}

fg_status fg_cuda_kv_store(fg_cuda *c, const fg_kv_view *kv, int32_t layer, const fg_tensor *k,
                           const fg_tensor *v) {
    const fg_cuda_step *st = &c->step;
    FG_ASSERT(fg_cuda_kv_supports(kv->type));
    FG_ASSERT(layer >= 0 && layer < kv->n_layer);
    if (st->n_tokens <= 0)
        return FG_OK;
    const int n = kv->n_head_kv * kv->head_dim;
    char *kd = (char *)kv->k.data + (size_t)layer * kv->k.nb[3];
    char *vd = (char *)kv->v.data + (size_t)layer * kv->v.nb[3];
    const dim3 grid((unsigned)st->n_tokens, 2);
    const unsigned threads = n > 128 ? 256 : n > 64 ? 128 : 64; // multiples of 64: whole Q8_0 lane groups
    if (kv->type == FG_TYPE_F16) {
        kv_store_kernel<kv_f16><<<grid, threads, 0, c->stream>>>(
            kd, vd, kv->k.nb[1], kv->k.nb[2], kv->v.nb[1], kv->v.nb[2], (const char *)k->data, k->nb[1],
            (const char *)v->data, v->nb[1], n, st->pos, st->seq, st->page_table, st->max_pages,
            kv->page_size);
    } else if (kv->type == FG_TYPE_Q8_0) {
        FG_ASSERT(kv->head_dim % FG_QK8_0 == 0 && threads % FG_QK8_0 == 0);
        kv_store_kernel<kv_q8_0><<<grid, threads, 0, c->stream>>>(
            kd, vd, kv->k.nb[1], kv->k.nb[2], kv->v.nb[1], kv->v.nb[2], (const char *)k->data, k->nb[1],
            (const char *)v->data, v->nb[1], n, st->pos, st->seq, st->page_table, st->max_pages,
            kv->page_size);
    } else {
        kv_store_kernel<kv_f32><<<grid, threads, 0, c->stream>>>(
            kd, vd, kv->k.nb[1], kv->k.nb[2], kv->v.nb[1], kv->v.nb[2], (const char *)k->data, k->nb[1],
            (const char *)v->data, v->nb[1], n, st->pos, st->seq, st->page_table, st->max_pages,
            kv->page_size);
    }
    FG_GPU_LAUNCH_CHECK(c, "kv_store");
    return FG_OK;
}

// ---------------------------------------------------------------- rope_kv_store (fused)
// The rope of both fused kernels: pairs, mode, frequency factors, the angle's factors.
typedef struct rope_geo {
    int half, neox;
    const float *ff;
    float theta_scale, freq_scale;
} rope_geo;

static rope_geo rope_geo_of(const fg_rope_params *p) {
    rope_geo g;
    g.half = p->n_rot / 2;
    g.neox = p->mode == FG_ROPE_NEOX;
    g.ff = NULL;
    if (p->freq_factors) {
        FG_ASSERT(p->freq_factors->type == FG_TYPE_F32 && p->freq_factors->ne[0] >= p->n_rot / 2);
        g.ff = (const float *)p->freq_factors->data;
    }
    g.theta_scale = powf(p->freq_base, -2.0f / (float)p->n_rot); // the host's powf, as the CPU's
    g.freq_scale = p->freq_scale;
    return g;
}

// One launch for rope(q), rope(k) and kv_store(k, v): grid (token, 3). y = 0 rotates the
// token's q row in place; y = 1 rotates its k row in place, then stores it (the block's own
// global writes, visible after the barrier); y = 2 stores its v row. Same arithmetic as
// rope_kernel and kv_store_kernel (the shared helpers).
typedef struct rkv_args {
    char *q, *k;
    const char *v;
    size_t q_nb1, k_nb1, v_nb1;
    int n_head, n_head_kv, head_dim;
    rope_geo rg;
    char *k_dst, *v_dst;
    size_t kv_nb1, kv_nb2;
    const int32_t *pos, *seq, *page_table;
    int max_pages, page_size;
} rkv_args;

template <typename KVT> __global__ void __launch_bounds__(256) rope_kv_store_kernel(rkv_args a) {
    extern __shared__ float rkv_sh[]; // [2 * half]: cos, then sin
    fg_pdl_wait(); // PDL: the earlier kernels' outputs are visible from here
    fg_pdl_trigger();
    const int t = blockIdx.x, y = blockIdx.y;
    const int p = a.pos[t];
    if (y < 2) {
        fg_rope_angles(rkv_sh, a.rg.half, p, a.rg.ff, a.rg.theta_scale, a.rg.freq_scale);
        __syncthreads();
        float *row = (float *)(y == 0 ? a.q + (size_t)t * a.q_nb1 : a.k + (size_t)t * a.k_nb1);
        fg_rope_row(row, y == 0 ? a.n_head : a.n_head_kv, a.head_dim, a.rg.half, a.rg.neox, rkv_sh);
        if (y == 0)
            return;
        __syncthreads(); // the rotated k row, written by this block, is read back below
    }
    const int page = a.page_table[(size_t)a.seq[t] * a.max_pages + p / a.page_size];
    const size_t off = (size_t)page * a.kv_nb2 + (size_t)(p % a.page_size) * a.kv_nb1;
    const float *src = (const float *)(y == 1 ? a.k + (size_t)t * a.k_nb1 : a.v + (size_t)t * a.v_nb1);
    kv_store_row<KVT>((y == 1 ? a.k_dst : a.v_dst) + off, src, a.n_head_kv * a.head_dim);
}

fg_status fg_cuda_rope_kv_store(fg_cuda *c, fg_tensor *q, fg_tensor *k, const fg_tensor *v, const fg_rope_params *p,
                                int32_t n_head_kv, const fg_kv_view *kv, int32_t layer) {
    const fg_cuda_step *st = &c->step;
    FG_ASSERT(fg_cuda_kv_supports(kv->type));
    FG_ASSERT(layer >= 0 && layer < kv->n_layer && kv->k.nb[1] == kv->v.nb[1] && kv->k.nb[2] == kv->v.nb[2]);
    FG_ASSERT(p->n_rot >= 2 && p->n_rot % 2 == 0 && p->n_rot <= p->head_dim && p->head_dim == kv->head_dim);
    FG_ASSERT(p->mode == FG_ROPE_NORMAL || p->mode == FG_ROPE_NEOX);
    FG_ASSERT(q->ne[1] == st->n_tokens && k->ne[1] == st->n_tokens && v->ne[1] == st->n_tokens);
    if (st->n_tokens <= 0)
        return FG_OK;
    rkv_args a;
    a.q = (char *)q->data;
    a.k = (char *)k->data;
    a.v = (const char *)v->data;
    a.q_nb1 = q->nb[1];
    a.k_nb1 = k->nb[1];
    a.v_nb1 = v->nb[1];
    a.n_head = p->n_head;
    a.n_head_kv = n_head_kv;
    a.head_dim = p->head_dim;
    a.rg = rope_geo_of(p);
    a.k_dst = (char *)kv->k.data + (size_t)layer * kv->k.nb[3];
    a.v_dst = (char *)kv->v.data + (size_t)layer * kv->v.nb[3];
    a.kv_nb1 = kv->k.nb[1];
    a.kv_nb2 = kv->k.nb[2];
    a.pos = st->pos;
    a.seq = st->seq;
    a.page_table = st->page_table;
    a.max_pages = st->max_pages;
    a.page_size = kv->page_size;
    const dim3 grid((unsigned)st->n_tokens, 3);
    const unsigned threads = 256; // a multiple of 64: whole Q8_0 lane groups on 32- and 64-wide warps
    const size_t smem = 2 * (size_t)a.rg.half * sizeof(float);
    if (kv->type == FG_TYPE_F16) {
        fg_launch(c->pdl, rope_kv_store_kernel<kv_f16>, grid, threads, smem, c->stream, a);
    } else if (kv->type == FG_TYPE_Q8_0) {
        FG_ASSERT(kv->head_dim % FG_QK8_0 == 0);
        fg_launch(c->pdl, rope_kv_store_kernel<kv_q8_0>, grid, threads, smem, c->stream, a);
    } else {
        fg_launch(c->pdl, rope_kv_store_kernel<kv_f32>, grid, threads, smem, c->stream, a);
    }
    FG_GPU_LAUNCH_CHECK(c, "rope_kv_store");
    return FG_OK;
}

// ---------------------------------------------------------------- kv_copy_page
// grid (chunks, n_layer, K or V): page dst <- page src of that layer, `units` elements of U.
template <typename U>
__global__ void __launch_bounds__(256)
kv_copy_page_kernel(char *k, char *v, size_t k_nb2, size_t k_nb3, size_t v_nb2, size_t v_nb3, int dst_page,
                    int src_page, size_t units) {
    const bool is_v = blockIdx.z != 0;
    const size_t nb2 = is_v ? v_nb2 : k_nb2;
    char *layer = (is_v ? v : k) + (size_t)blockIdx.y * (is_v ? v_nb3 : k_nb3);
    U *d = (U *)(layer + (size_t)dst_page * nb2);
    const U *s = (const U *)(layer + (size_t)src_page * nb2);
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < units; i += (size_t)gridDim.x * blockDim.x)
        d[i] = s[i];
}

fg_status fg_cuda_kv_copy_page(fg_cuda *c, const fg_kv_view *kv, int32_t dst_page, int32_t src_page) {
    FG_ASSERT(dst_page >= 0 && dst_page < kv->n_pages && src_page >= 0 && src_page < kv->n_pages);
    FG_ASSERT(kv->k.nb[2] == kv->v.nb[2]);
    FG_ASSERT(kv->n_layer >= 1 && kv->n_layer <= 65535);
    if (dst_page == src_page)
        return FG_OK;
    const size_t page_bytes = kv->k.nb[2];
    const uintptr_t align = (uintptr_t)kv->k.data | (uintptr_t)kv->v.data | (uintptr_t)page_bytes |
                            (uintptr_t)kv->k.nb[3] | (uintptr_t)kv->v.nb[3];
    const unsigned threads = 256;
    if (align % 16 == 0) {
        const size_t units = page_bytes / 16;
        const dim3 grid(fg_div_up((int64_t)units, (int64_t)threads * 4), (unsigned)kv->n_layer, 2);
        kv_copy_page_kernel<uint4><<<grid, threads, 0, c->stream>>>(
            (char *)kv->k.data, (char *)kv->v.data, kv->k.nb[2], kv->k.nb[3], kv->v.nb[2], kv->v.nb[3], dst_page,
            src_page, units);
    } else {
        const size_t units = page_bytes;
        const dim3 grid(fg_div_up((int64_t)units, (int64_t)threads * 16), (unsigned)kv->n_layer, 2);
        kv_copy_page_kernel<unsigned char><<<grid, threads, 0, c->stream>>>(
            (char *)kv->k.data, (char *)kv->v.data, kv->k.nb[2], kv->k.nb[3], kv->v.nb[2], kv->v.nb[3], dst_page,
            src_page, units);
    }
    FG_GPU_LAUNCH_CHECK(c, "kv_copy_page");
    return FG_OK;
}

// ---------------------------------------------------------------- attention: geometry
#define ATTN_NW 4                    // warps per block
#define ATTN_L_MIN 256               // fewest keys a chunk of a split sequence holds
#define ATTN_SPLIT_ROWS_PER_HEAD 1024 // partial rows (token x chunk) per q head the arena holds
#define ATTN_PLAN_THREADS 256
#define ATTN_BLOCKS_PER_SM 4         // the plan aims at this many blocks per SM

// q rows per work item (a multiple of ATTN_NW): 16, or 8 for the widest heads (shared memory)
static __host__ __device__ constexpr int attn_rows(int d_cap) { return d_cap <= 256 ? 16 : 8; }
// blocks per SM the register budget is cut for (NVIDIA): 4 (<= 128 registers) unless the
// accumulators of wide heads need more
[[maybe_unused]] static __host__ __device__ constexpr int attn_min_blocks(int d_cap) { return d_cap <= 128 ? 4 : 3; }
// dims of K/V staged per pass: at most 4096 / warp (4 dims a lane on 32-wide warps, 1 on 64)
static __host__ __device__ constexpr int attn_dc(int d_cap, int warp) {
    return d_cap < 4096 / warp ? d_cap : 4096 / warp;
}
// shared memory, in floats from the start: q [rows][d_cap], stage [warp][dc + 4],
// probabilities [ATTN_NW][rows / ATTN_NW][warp], then [2][warp] 64-bit row offsets (the
// current kv tile and the next one)
static __host__ __device__ constexpr size_t attn_off_stage(int d_cap) { return (size_t)attn_rows(d_cap) * d_cap; }
static __host__ __device__ constexpr size_t attn_off_p(int d_cap, int warp) {
    return attn_off_stage(d_cap) + (size_t)warp * (attn_dc(d_cap, warp) + 4);
}
static __host__ __device__ constexpr size_t attn_off_roff(int d_cap, int warp) {
    return attn_off_p(d_cap, warp) + (size_t)attn_rows(d_cap) * warp;
}
static __host__ __device__ constexpr size_t attn_smem_bytes(int d_cap, int warp) {
    return attn_off_roff(d_cap, warp) * sizeof(float) + 2 * (size_t)warp * sizeof(long long);
}

static size_t align256(size_t n) { return (n + 255) & ~(size_t)255; }

// The arena: plan header, then the partials. Reused from byte 0 by every attention call of a
// step (the calls are ordered on c->stream), so it is sized per call, not per step.
static size_t attn_header_bytes(int n_seqs) {
    return align256(4 * sizeof(int)) + align256(((size_t)n_seqs + 1) * sizeof(int)) +
           2 * align256((size_t)n_seqs * sizeof(int));
}

size_t fg_cuda_attn_scratch_bytes(const fg_backend_limits *lim) {
    const int seqs = lim->max_seqs > 0 ? lim->max_seqs : lim->max_tokens > 0 ? lim->max_tokens : 1;
    size_t bytes = attn_header_bytes(seqs);
    if (lim->max_heads <= 0 || lim->max_head_dim <= 0)
        return bytes;
    size_t rows = (size_t)lim->max_heads * ATTN_SPLIT_ROWS_PER_HEAD;
    if (lim->max_tokens > 0 && lim->max_kv_len > 0) { // never more than a step can split into
        size_t most = (size_t)lim->max_heads * (size_t)lim->max_tokens * 2 *
                      (((size_t)lim->max_kv_len + ATTN_L_MIN - 1) / ATTN_L_MIN);
        rows = rows < most ? rows : most;
    }
    return bytes + 256 + rows * ((size_t)lim->max_head_dim + 2) * sizeof(float);
}

// ---------------------------------------------------------------- attention: kernels
typedef struct attn_args {
    const char *q;       // [n_tokens] rows of [n_head][head_dim] f32, row stride q_nb1
    size_t q_nb1;
    char *dst;           // same shape as q, row stride dst_nb1
    size_t dst_nb1;
    const char *k, *v;   // the layer's pages: [n_pages][page_size][n_head_kv * head_dim]
    size_t kv_nb1, kv_nb2; // bytes of a slot and of a page (K and V alike)
    const int32_t *pos, *seq, *seq_first, *seq_n_tokens, *seq_n_kv, *page_table;
    int max_pages, page_size;
    int n_seqs, n_head, n_head_kv, group, head_dim;
    float qscale;        // softmax scale * log2(e): scores are kept in base 2
    int causal;
    int vec4;            // K/V rows may be read 4 elements at a time (alignment)
    // the plan, in the arena
    const int *hdr;      // [0] items per kv head, [1] chunk length L in keys
    const int *item_off; // [n_seqs + 1] first item of each sequence (per kv head)
    const int *n_chunks; // [n_seqs] kv chunks per q tile (1: not split, dst written directly)
    const int *poff;     // [n_seqs] first partial row of a split sequence
    float2 *pstat;       // [p_max] (max, sum) of each partial row, base 2
    float *pacc;         // [p_max][head_dim] unnormalised partial outputs
    // the decode kernel (attn_dec_kernel) instead of the plan: chunks per sequence, and the
    // partials as [n_seqs][n_head][n_split] rows of pstat / pacc when n_split > 1
    int n_split;
    int dec_passes; // attn_dec_kernel: warp passes whose loads are in flight together (2 or 4)
    int dec_hs;     // attn_dec_kernel: blocks a kv head's q heads are split over (group / dec_hs
                    // heads a block; each of them ropes and stores the new k and v: the same bytes)
    // attn_dec_kernel with rope + KV store (rope_kv_attention; rg.half 0: q as it is, the
    // step's K/V already stored): q and the new k rotated in shared memory, k and v stored by
    // the block whose keys hold the token's position
    rope_geo rg; // rg.half 0: no rope
    const char *kn, *vn; // the step's f32 k and v rows ([n_tokens][n_head_kv * head_dim])
    size_t kn_nb1, vn_nb1;
    // attn_dec_kernel, unsplit: the output rows quantized in the kernel (dq_type Q8_1 or Q8_K,
    // 0: f32 into dst), as convert quantizes them
    uint8_t *dq;
    size_t dq_nb1;
    uint32_t dq_type;
} attn_args;

// Partial row of (kv head hk, flattened row fr = token_in_seq * group + g, chunk ch) of a split
// sequence with nt tokens in the step and nc chunks: chunks of one row are adjacent.
static __device__ __forceinline__ size_t attn_prow(int poff, int nt, int group, int nc, int hk, int fr, int ch) {
    return (size_t)poff + ((size_t)hk * nt * group + fr) * (size_t)nc + ch;
}

typedef struct attn_plan_args {
    int n_seqs;
    const int32_t *seq_n_tokens, *seq_n_kv;
    int group, rows, n_head_kv, n_head;
    int target;      // blocks the step should give the device
    long long p_max; // partial rows the arena holds (0: never split)
    int bk;          // chunk lengths are multiples of this (the kv tile)
    int *hdr, *item_off, *n_chunks, *poff;
} attn_plan_args;

// One block. Pass 1 sums the work (q tiles, tile-keys, token-keys); thread 0 picks the chunk
// length; pass 2 numbers the items and partial rows per sequence (block-wide scan).
__global__ void __launch_bounds__(ATTN_PLAN_THREADS) attn_plan_kernel(attn_plan_args a) {
    __shared__ unsigned long long s_tiles, s_y, s_z;
    __shared__ int s_len;
    __shared__ long long s_items[ATTN_PLAN_THREADS], s_prows[ATTN_PLAN_THREADS];
    const int tid = threadIdx.x, nth = blockDim.x, n = a.n_seqs;
    if (tid == 0) {
        s_tiles = 0;
        s_y = 0;
        s_z = 0;
    }
    __syncthreads();
    unsigned long long tiles = 0, y = 0, z = 0;
    for (int s = tid; s < n; s += nth) {
        const unsigned long long nt = (unsigned long long)a.seq_n_tokens[s];
        const unsigned long long kv = (unsigned long long)a.seq_n_kv[s];
        const unsigned long long ti = (nt * (unsigned long long)a.group + a.rows - 1) / a.rows;
        tiles += ti;
        y += ti * kv;
        z += nt * kv;
    }
    atomicAdd(&s_tiles, tiles);
    atomicAdd(&s_y, y);
    atomicAdd(&s_z, z);
    __syncthreads();
    if (tid == 0) {
        long long len = INT_MAX; // no split
        if (a.p_max > 0 && (long long)a.n_head_kv * (long long)s_tiles < a.target) {
            const long long by_target = ((long long)a.n_head_kv * (long long)s_y + a.target - 1) / a.target;
            const long long by_memory = (2 * (long long)a.n_head * (long long)s_z + a.p_max - 1) / a.p_max;
            len = ATTN_L_MIN;
            len = by_target > len ? by_target : len;
            len = by_memory > len ? by_memory : len;
            len = (len + a.bk - 1) / a.bk * a.bk;
            len = len < INT_MAX ? len : INT_MAX;
        }
        s_len = (int)len;
    }
    __syncthreads();
    const int len = s_len;
    // pass 2: thread tid numbers sequences [b, e)
    const int per = (n + nth - 1) / nth;
    const int b = tid * per < n ? tid * per : n;
    const int e = b + per < n ? b + per : n;
    long long items = 0, prows = 0;
    for (int s = b; s < e; s++) {
        const long long nt = a.seq_n_tokens[s], kv = a.seq_n_kv[s];
        const long long ti = (nt * a.group + a.rows - 1) / a.rows;
        const long long nc = len == INT_MAX || kv <= len ? 1 : (kv + len - 1) / len;
        items += ti * nc;
        prows += nc > 1 ? (long long)a.n_head * nt * nc : 0;
    }
    s_items[tid] = items;
    s_prows[tid] = prows;
    __syncthreads();
    for (int off = 1; off < nth; off <<= 1) { // inclusive scan (Hillis-Steele)
        const long long ai = tid >= off ? s_items[tid - off] : 0;
        const long long ap = tid >= off ? s_prows[tid - off] : 0;
        __syncthreads();
        s_items[tid] += ai;
        s_prows[tid] += ap;
        __syncthreads();
    }
    long long io = s_items[tid] - items, po = s_prows[tid] - prows;
    for (int s = b; s < e; s++) {
        const long long nt = a.seq_n_tokens[s], kv = a.seq_n_kv[s];
        const long long ti = (nt * a.group + a.rows - 1) / a.rows;
        const long long nc = len == INT_MAX || kv <= len ? 1 : (kv + len - 1) / len;
        a.item_off[s] = (int)io;
        a.n_chunks[s] = (int)nc;
        a.poff[s] = (int)po;
        io += ti * nc;
        po += nc > 1 ? (long long)a.n_head * nt * nc : 0;
    }
    if (tid == nth - 1) {
        a.item_off[n] = (int)s_items[tid];
        a.hdr[0] = (int)s_items[tid];
        a.hdr[1] = len;
    }
}

static __device__ __forceinline__ float f4_at(const float4 &v, int k) {
    return k == 0 ? v.x : k == 1 ? v.y : k == 2 ? v.z : v.w;
}

// N consecutive floats from shared memory (N = 1, 2, 4; p aligned to N floats)
template <int N>
static __device__ __forceinline__ void lds_n(float (&o)[N], const float *p) {
    if constexpr (N == 4) {
        const float4 t = *(const float4 *)p;
        o[0] = t.x;
        o[1] = t.y;
        o[2] = t.z;
        o[3] = t.w;
    } else if constexpr (N == 2) {
        const float2 t = *(const float2 *)p;
        o[0] = t.x;
        o[1] = t.y;
    } else {
        static_assert(N == 1, "dims per lane");
        o[0] = *p;
    }
}

// Byte offset of key j's row in the layer (page table lookup), -1 past the item's keys.
static __device__ __forceinline__ long long attn_row_off(const int32_t *pt, int j, int kv_hi, int page_size,
                                                         size_t nb1, size_t nb2) {
    return j < kv_hi ? (long long)pt[j / page_size] * (long long)nb2 + (long long)(j % page_size) * (long long)nb1
                     : -1;
}

// Loading dims [d0, d0 + DC) of the FG_WARP key rows of a kv tile is split in two so the
// global loads of the next chunk are in flight while the current one is used: fetch reads
// this thread's groups of 4 elements into registers (keys without a row, roff < 0, and dims
// past head_dim read as 0), commit converts them to f32 into stage[j][0..DC).
template <int DC>
struct attn_ld {
    static constexpr int Q4 = DC / 4;                  // groups of 4 dims per row
    static constexpr int NT = ATTN_NW * FG_WARP;
    static constexpr int ITERS = FG_WARP * Q4 / NT;    // groups per thread
    static_assert(FG_WARP * Q4 % NT == 0, "stage chunk");
};

template <typename KVT, int DC>
static __device__ __forceinline__ void attn_fetch(typename KVT::raw (&rg)[attn_ld<DC>::ITERS], const char *base,
                                                  const long long *roff, int d0, int hd, int vec4, int tid) {
    typedef attn_ld<DC> LD;
#pragma unroll
    for (int it = 0; it < LD::ITERS; it++) {
        const int idx = tid + it * LD::NT;
        const int j = idx / LD::Q4, e = d0 + (idx % LD::Q4) * 4;
        const long long ro = roff[j];
        rg[it] = KVT::zero();
        if (ro >= 0 && e < hd)
            rg[it] = vec4 ? KVT::fetch4(base + ro, e) : KVT::fetch_tail(base + ro, e, hd);
    }
}

template <typename KVT, int DC>
static __device__ __forceinline__ void attn_commit(float *stage, const typename KVT::raw (&rg)[attn_ld<DC>::ITERS],
                                                   int tid) {
    typedef attn_ld<DC> LD;
#pragma unroll
    for (int it = 0; it < LD::ITERS; it++) {
        const int idx = tid + it * LD::NT;
        *(float4 *)(stage + (size_t)(idx / LD::Q4) * (DC + 4) + (idx % LD::Q4) * 4) = KVT::to_f32(rg[it]);
    }
}

// The attention kernel: a 1-D grid looping over (item, kv head), ATTN_NW * FG_WARP threads,
// dynamic shared memory attn_smem_bytes(D_CAP, FG_WARP). EXACT: head_dim == D_CAP.
// The sequence of a plan's work item: item_off[s] <= item < item_off[s + 1] (binary search).
static __device__ __forceinline__ int attn_item_seq(const attn_args &a, int item) {
    int lo = 0, hi = a.n_seqs;
    while (hi - lo > 1) {
        const int mid = (lo + hi) >> 1;
        if (a.item_off[mid] <= item)
            lo = mid;
        else
            hi = mid;
    }
    return lo;
}

template <typename KVT, int D_CAP, bool EXACT>
__global__ void FG_LAUNCH_BOUNDS(ATTN_NW * FG_WARP, attn_min_blocks(D_CAP)) attn_kernel(attn_args a) {
    constexpr int W = FG_WARP;
    constexpr int BK = W;                       // keys per kv tile: one per lane when scoring
    constexpr int R = attn_rows(D_CAP);         // q rows per item
    constexpr int RW = R / ATTN_NW;             // q rows per warp (slots)
    constexpr int DC = attn_dc(D_CAP, W);       // dims staged per pass
    constexpr int NCH = D_CAP / DC;             // passes over the head
    constexpr int DPL = DC / W;                 // output dims per lane per pass
    constexpr int SROW = DC + 4;                // stage row stride: lane-per-key reads do not conflict
    static_assert(R % ATTN_NW == 0 && D_CAP % DC == 0 && DC % W == 0 && DC % 16 == 0, "attention tile");

    extern __shared__ float4 attn_smem4[];
    float *const smf = (float *)attn_smem4;
    float *const qs = smf;                                  // [R][D_CAP] q * qscale, 0 past head_dim
    float *const stage = smf + attn_off_stage(D_CAP);       // [BK][SROW] K or V dims of the tile
    float *const ps = smf + attn_off_p(D_CAP, W);           // [ATTN_NW][RW][BK] probabilities
    long long *const roff = (long long *)(smf + attn_off_roff(D_CAP, W)); // [2][BK] key row offsets

    const int tid = threadIdx.x, lane = tid % W, w = tid / W;
    const int hd = EXACT ? D_CAP : a.head_dim;
    const int G = a.group;
    const int n_ch = EXACT ? NCH : (hd + DC - 1) / DC; // passes that hold dims < head_dim
    const int hd4 = (hd + 3) & ~3;
    const int n_items = a.hdr[0];
    const int chunk_len = a.hdr[1];
    const long long n_work = (long long)n_items * a.n_head_kv;

    // work x = (item, kv head), kv head fastest; last items first: the longest causal tiles
    for (long long x = blockIdx.x; x < n_work; x += gridDim.x) {
        const int item = n_items - 1 - (int)(x / a.n_head_kv);
        const int hk = (int)(x % a.n_head_kv);
        const char *const kb = a.k + (size_t)hk * KVT::row_bytes(hd);
        const char *const vb = a.v + (size_t)hk * KVT::row_bytes(hd);
        const int s = attn_item_seq(a, item);
        const int nc = a.n_chunks[s];
        const int local = item - a.item_off[s];
        const int tile = local / nc, ch_kv = local - tile * nc;
        const int nt = a.seq_n_tokens[s], first = a.seq_first[s], n_kv = a.seq_n_kv[s];
        const int fr0 = tile * R;
        const int nrows = min(R, nt * G - fr0);
        // keys of the item: up to the bound of its last row (positions ascend in a sequence)
        const int last_t = first + (fr0 + nrows - 1) / G;
        const int kv_end = a.causal ? min(a.pos[last_t] + 1, n_kv) : n_kv;
        int kv_lo = 0, kv_hi = kv_end;
        if (nc > 1) {
            kv_lo = (int)min((long long)ch_kv * chunk_len, (long long)kv_end);
            kv_hi = (int)min((long long)(ch_kv + 1) * chunk_len, (long long)kv_end);
        }

        // this warp's rows: slot i is item row i * ATTN_NW + w; slots < ns are real rows
        const int ns = nrows > w ? (nrows - w + ATTN_NW - 1) / ATTN_NW : 0;
        int lim[RW];          // keys j < lim[i] are visible to slot i
        float m[RW], l[RW];   // running max (base 2) and this lane's share of the sum
        float acc[RW][NCH][DPL];
#pragma unroll
        for (int i = 0; i < RW; i++) {
            lim[i] = 0;
            if (i < ns) {
                const int t = first + (fr0 + i * ATTN_NW + w) / G;
                const int e = a.causal ? min(a.pos[t] + 1, n_kv) : n_kv;
                lim[i] = min(e, kv_hi);
            }
            m[i] = -INFINITY;
            l[i] = 0.0f;
#pragma unroll
            for (int c = 0; c < NCH; c++)
#pragma unroll
                for (int k = 0; k < DPL; k++)
                    acc[i][c][k] = 0.0f;
        }

        if (kv_lo < kv_hi) { // block-uniform
            __syncthreads(); // the previous item is done with qs, stage, ps and roff
            if constexpr (KVT::QK == 1) {
                for (int idx = tid; idx < nrows * D_CAP; idx += ATTN_NW * W) {
                    const int rr = idx / D_CAP, d = idx % D_CAP;
                    float qv = 0.0f;
                    if (d < hd) {
                        const int fr = fr0 + rr, tl = fr / G, g = fr - tl * G;
                        const float *qrow = (const float *)(a.q + (size_t)(first + tl) * a.q_nb1);
                        qv = KVT::round_q(qrow[(size_t)(hk * G + g) * hd + d]) * a.qscale;
                    }
                    qs[idx] = qv;
                }
            } else {
                // q by blocks of QK: idx runs in QK-aligned lane groups over [row][D_CAP] (D_CAP
                // and the block size are multiples of QK, dims past head_dim are whole zero
                // blocks), every lane runs every pass (round_q_lane shuffles)
                static_assert(D_CAP % KVT::QK == 0 && (ATTN_NW * W) % KVT::QK == 0, "q blocks");
                for (int i0 = 0; i0 < nrows * D_CAP; i0 += ATTN_NW * W) {
                    const int idx = i0 + tid, rr = idx / D_CAP, d = idx % D_CAP;
                    const bool in = idx < nrows * D_CAP;
                    float x = 0.0f;
                    if (in && d < hd) {
                        const int fr = fr0 + rr, tl = fr / G, g = fr - tl * G;
                        const float *qrow = (const float *)(a.q + (size_t)(first + tl) * a.q_nb1);
                        x = qrow[(size_t)(hk * G + g) * hd + d];
                    }
                    const float qv = KVT::round_q_lane(x) * a.qscale;
                    if (in)
                        qs[idx] = qv;
                }
            }
            const int32_t *pt = a.page_table + (size_t)s * a.max_pages;
            const int n_tiles = (kv_hi - kv_lo + BK - 1) / BK;
            if (tid < BK)
                roff[tid] = attn_row_off(pt, kv_lo + tid, kv_hi, a.page_size, a.kv_nb1, a.kv_nb2);
            __syncthreads(); // roff of the first tile (and q) visible

            // The pipeline: every stage fill (K chunks, then V chunks, tile after tile) is
            // committed to shared memory from registers, then the next fill's global loads are
            // issued before the block computes on this one.
            typename KVT::raw rg[attn_ld<DC>::ITERS];
            attn_fetch<KVT, DC>(rg, kb, roff, 0, hd, a.vec4, tid);
            for (int n = 0; n < n_tiles; n++) {
                const int k0 = kv_lo + n * BK;
                const long long *ro_cur = roff + (n & 1) * BK;
                long long *ro_next = roff + ((n + 1) & 1) * BK;
                // offsets of the next tile: first read by a fetch after this tile's first sync;
                // the last reader of this buffer (tile n - 1) is done
                if (tid < BK && n + 1 < n_tiles)
                    ro_next[tid] = attn_row_off(pt, k0 + BK + tid, kv_hi, a.page_size, a.kv_nb1, a.kv_nb2);

                // scores: lane = key k0 + lane, against each slot's q row
                float sc[RW];
#pragma unroll
                for (int i = 0; i < RW; i++)
                    sc[i] = 0.0f;
#pragma unroll
                for (int c = 0; c < NCH; c++) {
                    if (c < n_ch) {
                        attn_commit<KVT, DC>(stage, rg, tid);
                        if (c + 1 < n_ch)
                            attn_fetch<KVT, DC>(rg, kb, ro_cur, (c + 1) * DC, hd, a.vec4, tid);
                        else
                            attn_fetch<KVT, DC>(rg, vb, ro_cur, 0, hd, a.vec4, tid);
                        __syncthreads(); // K chunk c staged
                        const float *kr = stage + (size_t)lane * SROW;
                        const int dlim = EXACT ? DC : min(DC, hd4 - c * DC);
#pragma unroll 4
                        for (int d = 0; d < dlim; d += 4) {
                            const float4 k4 = *(const float4 *)(kr + d);
#pragma unroll
                            for (int i = 0; i < RW; i++) {
                                if (i < ns) {
                                    const float4 q4 =
                                        *(const float4 *)(qs + (size_t)(i * ATTN_NW + w) * D_CAP + c * DC + d);
                                    sc[i] = fmaf(q4.x, k4.x, sc[i]);
                                    sc[i] = fmaf(q4.y, k4.y, sc[i]);
                                    sc[i] = fmaf(q4.z, k4.z, sc[i]);
                                    sc[i] = fmaf(q4.w, k4.w, sc[i]);
                                }
                            }
                        }
                        __syncthreads(); // stage is committed next
                    }
                }

                // online softmax, one row per slot; scores of invisible keys are -inf. ps is
                // free: the previous tile's PV ended with a sync
                const int j = k0 + lane;
#pragma unroll
                for (int i = 0; i < RW; i++) {
                    if (i < ns) {
                        float xs = sc[i] > FLT_MAX ? FLT_MAX : sc[i]; // an overflowed dot stays finite
                        xs = j < lim[i] ? xs : -INFINITY;
                        const float mn = fmaxf(m[i], fg_warp_max(xs));
                        const float mu = mn == -INFINITY ? 0.0f : mn; // nothing visible yet: p = 0
                        const float alpha = exp2f(m[i] - mu);
                        const float p = exp2f(xs - mu);
                        m[i] = mn;
                        l[i] = l[i] * alpha + p;
#pragma unroll
                        for (int c = 0; c < NCH; c++)
#pragma unroll
                            for (int k = 0; k < DPL; k++)
                                acc[i][c][k] *= alpha;
                        ps[(w * RW + i) * BK + lane] = p;
                    }
                }

                // weighted sum of V: lane owns dims c * DC + lane * DPL .. + DPL - 1
#pragma unroll
                for (int c = 0; c < NCH; c++) {
                    if (c < n_ch) {
                        attn_commit<KVT, DC>(stage, rg, tid);
                        if (c + 1 < n_ch)
                            attn_fetch<KVT, DC>(rg, vb, ro_cur, (c + 1) * DC, hd, a.vec4, tid);
                        else if (n + 1 < n_tiles)
                            attn_fetch<KVT, DC>(rg, kb, ro_next, 0, hd, a.vec4, tid);
                        __syncthreads(); // V chunk c staged, ps visible
                        const float *vc = stage + lane * DPL;
#pragma unroll 1
                        for (int jj = 0; jj < BK; jj += 4) {
                            float4 p4[RW];
#pragma unroll
                            for (int i = 0; i < RW; i++)
                                if (i < ns)
                                    p4[i] = *(const float4 *)(ps + (w * RW + i) * BK + jj);
#pragma unroll
                            for (int u = 0; u < 4; u++) {
                                float vv[DPL];
                                lds_n<DPL>(vv, vc + (size_t)(jj + u) * SROW);
#pragma unroll
                                for (int i = 0; i < RW; i++) {
                                    if (i < ns) {
                                        const float pu = f4_at(p4[i], u);
#pragma unroll
                                        for (int k = 0; k < DPL; k++)
                                            acc[i][c][k] = fmaf(pu, vv[k], acc[i][c][k]);
                                    }
                                }
                            }
                        }
                        __syncthreads(); // stage and ps are rewritten next
                    }
                }
            }
        }

        // results: dst directly, or the partial of this chunk (an empty chunk writes max -inf)
#pragma unroll
        for (int i = 0; i < RW; i++) {
            if (i < ns) {
                const float lsum = fg_warp_sum(l[i]);
                const int fr = fr0 + i * ATTN_NW + w, tl = fr / G, g = fr - tl * G;
                float *out;
                float scale = 1.0f;
                if (nc == 1) {
                    out = (float *)(a.dst + (size_t)(first + tl) * a.dst_nb1) + (size_t)(hk * G + g) * hd;
                    scale = lsum > 0.0f ? 1.0f / lsum : 0.0f;
                } else {
                    const size_t pr = attn_prow(a.poff[s], nt, G, nc, hk, fr, ch_kv);
                    out = a.pacc + pr * hd;
                    if (lane == 0)
                        a.pstat[pr] = make_float2(m[i], lsum);
                }
#pragma unroll
                for (int c = 0; c < NCH; c++) {
                    if (c < n_ch) {
#pragma unroll
                        for (int k = 0; k < DPL; k++) {
                            const int d = c * DC + lane * DPL + k;
                            if (d < hd)
                                out[d] = acc[i][c][k] * scale;
                        }
                    }
                }
            }
        }
    }
}

// Merges the chunks of split sequences: one warp per (token, q head); rows of sequences that
// were not split were written by attn_kernel and are skipped.
__global__ void __launch_bounds__(256) attn_reduce_kernel(attn_args a, int n_tokens) {
    const int lane = threadIdx.x % FG_WARP;
    const long long gw = (long long)blockIdx.x * (blockDim.x / FG_WARP) + threadIdx.x / FG_WARP;
    if (gw >= (long long)n_tokens * a.n_head)
        return;
    const int t = (int)(gw / a.n_head), h = (int)(gw % a.n_head);
    const int s = a.seq[t];
    const int nc = a.n_chunks[s];
    if (nc <= 1)
        return;
    const int G = a.group, hd = a.head_dim;
    const int hk = h / G, g = h - hk * G;
    const int fr = (t - a.seq_first[s]) * G + g;
    const size_t pr = attn_prow(a.poff[s], a.seq_n_tokens[s], G, nc, hk, fr, 0);
    float mx = -INFINITY;
    for (int c = 0; c < nc; c++)
        mx = fmaxf(mx, a.pstat[pr + c].x);
    float *out = (float *)(a.dst + (size_t)t * a.dst_nb1) + (size_t)h * hd;
    if (mx == -INFINITY) { // no visible key at all
        for (int d = lane; d < hd; d += FG_WARP)
            out[d] = 0.0f;
        return;
    }
    float lsum = 0.0f;
    for (int c = 0; c < nc; c++) {
        const float2 st = a.pstat[pr + c];
        if (st.x != -INFINITY)
            lsum += st.y * exp2f(st.x - mx);
    }
    const float inv = lsum > 0.0f ? 1.0f / lsum : 0.0f;
    for (int d = lane; d < hd; d += FG_WARP) {
        float o = 0.0f;
        for (int c = 0; c < nc; c++) {
            const float mc = a.pstat[pr + c].x;
            if (mc != -INFINITY)
                o = fmaf(a.pacc[(pr + c) * hd + d], exp2f(mc - mx), o);
        }
        out[d] = o * inv;
    }
}

// ---------------------------------------------------------------- attention: decode steps
// Steps where every sequence brings one token (decode, batched decode) with head_dim 64, 128 or
// 256, at most DEC_GM q heads per kv head and an F16 or Q8_0 cache take this kernel instead of
// attn_kernel: no plan kernel, no shared-memory staging. Grid (split, kv head, sequence); a
// block of DEC_NW warps. A key row is read by a group of TPK = head_dim / 8 lanes, 8 elements
// a lane (F16: one 16-byte load; Q8_0: the 8 quants as 2-3 aligned 32-bit words, and the
// block's scale), so a warp reads W / TPK keys at once, each as whole 32-byte sectors. Each lane
// keeps its 8 dims of q (every q head of the group) in registers, its partial q.k is summed
// across the group by xor shuffles, the softmax is online per lane group (rescaled only when the
// maximum grows) and the lane accumulates its 8 dims of V. The groups of a warp merge by
// shuffles, the warps in shared memory; a sequence split in n_split chunks (long contexts,
// few sequences: flash-decoding) writes partials that dec_reduce_kernel merges.
// Numerics as attn_kernel: q rounded as the cache type asks (F16: to f16; Q8_0: quantized on the
// reference's Q8_0 grid, here kept as integers: the block dots are exact integer sums, scaled
// by both blocks' f16 scales, as the reference's vec_dot_q8_0_q8_0), f32 softmax and V sums.
#define DEC_NW 4
#define DEC_GM 8              // most q heads per kv head
#define DEC_L_MIN 16          // fewest keys of a chunk when a sequence is split (FORGE_CUDA_DEC_L_MIN; H100,
                              // 8B Q4_K tg128: 16 +4.5%, 32 +2.5% against 128)
#define DEC_BLOCKS_PER_SM 4   // the split aims at this many blocks per SM
#define DEC_HSPLIT 4          // blocks a kv head's q heads are split over at most (FORGE_CUDA_DEC_HSPLIT; the
                              // largest divisor of the group up to it; H100, 8B Q4_K (group 4) tg128: 4 blocks
                              // 412.0 / 412.2 tok/s against 391.9 / 392.4 unsplit, 2 blocks 404.9)


// 8 elements of a lane: F16 rows, one 16-byte load
struct dec_f16 {
    typedef kv_f16 KVT;
    struct qreg {
        float x[DEC_GM][8];
    };
    struct kreg {
        uint4 u;
    };
    static __device__ __forceinline__ void load(const char *row, int e, kreg &k) { k.u = *(const uint4 *)(row + (size_t)e * 2); }
    static __device__ __forceinline__ void unpack(const kreg &k, float (&x)[8]) {
        const uint32_t w[4] = {k.u.x, k.u.y, k.u.z, k.u.w};
#pragma unroll
        for (int i = 0; i < 4; i++) {
            x[2 * i] = fg_h2f((uint16_t)(w[i] & 0xffffu));
            x[2 * i + 1] = fg_h2f((uint16_t)(w[i] >> 16));
        }
    }
    // q of head g, dims e..e+7 of the lane: rounded to f16, times qscale (as attn_kernel)
    template <int GM>
    static __device__ __forceinline__ void set_q(qreg &q, int g, const float *qrow, float qscale, bool valid) {
#pragma unroll
        for (int i = 0; i < 8; i++)
            q.x[g][i] = valid ? kv_f16::round_q(qrow[i]) * qscale : 0.0f;
    }
    template <int GM>
    static __device__ __forceinline__ void dot(const qreg &q, const kreg &k, float (&s)[GM]) {
        float x[8];
        unpack(k, x);
#pragma unroll
        for (int g = 0; g < GM; g++) {
            float a = 0.0f;
#pragma unroll
            for (int i = 0; i < 8; i++)
                a = fmaf(q.x[g][i], x[i], a);
            s[g] = a;
        }
    }
    // V: p * v[i] added to acc
    template <int GM>
    static __device__ __forceinline__ void pv(const kreg &k, const float (&p)[GM], float (&acc)[GM][8]) {
        float x[8];
        unpack(k, x);
#pragma unroll
        for (int g = 0; g < GM; g++)
#pragma unroll
            for (int i = 0; i < 8; i++)
                acc[g][i] = fmaf(p[g], x[i], acc[g][i]);
    }
};

// 8 elements of a lane: a quarter of a Q8_0 block (34 bytes: f16 d, 32 quants). The head row
// starts 4-aligned (head_dim a multiple of 64: an even number of blocks), so block b's quants
// start at 34 b + 2, 2 mod 4 for even b and 0 mod 4 for odd b: the lane reads the aligned words
// around its 8 quants (3 for an even block, 2 for an odd one, all inside the row) and shifts.
struct dec_q8_0 {
    typedef kv_q8_0 KVT;
    struct qreg {
        uint32_t w[DEC_GM][2]; // the lane's 8 quants of q, per head
        float d[DEC_GM];       // f16(d) of q's block, times qscale
    };
    struct kreg {
        uint32_t w0, w1, w2;
        uint16_t d;
        bool odd;
    };
    static __device__ __forceinline__ void load(const char *row, int e, kreg &k) {
        const int b = e / FG_QK8_0;
        const int off = b * (int)sizeof(fg_block_q8_0) + (int)offsetof(fg_block_q8_0, qs) + e % FG_QK8_0;
        const uint32_t *w = (const uint32_t *)(row + (off & ~3));
        k.odd = (off & 3) == 0;
        k.w0 = w[0];
        k.w1 = w[1];
        k.w2 = k.odd ? 0u : w[2];
        k.d = *(const uint16_t *)(row + (size_t)b * sizeof(fg_block_q8_0) + offsetof(fg_block_q8_0, d));
    }
    static __device__ __forceinline__ void quants(const kreg &k, uint32_t &a, uint32_t &b) {
        const uint32_t sel = k.odd ? 0x3210u : 0x5432u;
        a = __byte_perm(k.w0, k.w1, sel);
        b = __byte_perm(k.w1, k.w2, sel);
    }
    // q of head g: the lanes holding a 32-block (4 lanes, adjacent) quantize it together as the
    // reference quantizes an activation row (kv_q8_0::quant_lane's arithmetic)
    template <int GM>
    static __device__ __forceinline__ void set_q(qreg &q, int g, const float *qrow, float qscale, bool valid) {
        float x[8], amax = 0.0f;
#pragma unroll
        for (int i = 0; i < 8; i++) {
            x[i] = valid ? qrow[i] : 0.0f;
            amax = fmaxf(amax, fabsf(x[i]));
        }
        amax = fmaxf(amax, fg_shfl_xor(amax, 1));
        amax = fmaxf(amax, fg_shfl_xor(amax, 2));
        const float d = amax / 127.0f;
        uint32_t w[2] = {0u, 0u};
#pragma unroll
        for (int i = 0; i < 8; i++)
            w[i / 4] |= ((uint32_t)kv_q8_0::quant_one(x[i], amax) & 0xffu) << (8 * (i % 4));
        q.w[g][0] = w[0];
        q.w[g][1] = w[1];
        q.d[g] = fg_h2f(fg_f2h(d)) * qscale;
    }
    template <int GM>
    static __device__ __forceinline__ void dot(const qreg &q, const kreg &k, float (&s)[GM]) {
        uint32_t a, b;
        quants(k, a, b);
        const float dk = fg_h2f(k.d);
#pragma unroll
        for (int g = 0; g < GM; g++)
            s[g] = (float)fg_dp4a((int)b, (int)q.w[g][1], fg_dp4a((int)a, (int)q.w[g][0], 0)) * (dk * q.d[g]);
    }
    template <int GM>
    static __device__ __forceinline__ void pv(const kreg &k, const float (&p)[GM], float (&acc)[GM][8]) {
        uint32_t a, b;
        quants(k, a, b);
        const float dv = fg_h2f(k.d);
        float x[8];
#pragma unroll
        for (int i = 0; i < 4; i++) {
            x[i] = (float)(int8_t)((a >> (8 * i)) & 0xffu) * dv;
            x[4 + i] = (float)(int8_t)((b >> (8 * i)) & 0xffu) * dv;
        }
#pragma unroll
        for (int g = 0; g < GM; g++)
#pragma unroll
            for (int i = 0; i < 8; i++)
                acc[g][i] = fmaf(p[g], x[i], acc[g][i]);
    }
};

// One key of a lane group: its scores against the group's q heads (partial dots summed over
// the TPK lanes), the online softmax (rescaled when the maximum grows) and the V accumulation.
// Every lane calls it (shuffles); valid is uniform in the lane group.
template <typename DT, int GM, int TPK>
static __device__ __forceinline__ void dec_key(const typename DT::qreg &q, const typename DT::kreg &kr,
                                               const typename DT::kreg &vr, bool valid, float (&m)[GM],
                                               float (&l)[GM], float (&acc)[GM][8]) {
    float sc[GM];
    DT::template dot<GM>(q, kr, sc);
#pragma unroll
    for (int g = 0; g < GM; g++) {
#pragma unroll
        for (int off = TPK / 2; off > 0; off >>= 1)
            sc[g] += fg_shfl_xor(sc[g], off);
    }
    if (valid) {
        float p[GM];
#pragma unroll
        for (int g = 0; g < GM; g++) {
            const float x = sc[g] > FLT_MAX ? FLT_MAX : sc[g]; // an overflowed dot stays finite
            if (x > m[g]) {
                const float alpha = exp2f(m[g] - x); // 0 the first time (m = -inf)
                l[g] *= alpha;
#pragma unroll
                for (int i = 0; i < 8; i++)
                    acc[g][i] *= alpha;
                m[g] = x;
            }
            p[g] = exp2f(x - m[g]);
            l[g] += p[g];
        }
        DT::template pv<GM>(vr, p, acc);
    }
}

// shared memory of the warps' merge: per warp, (max, sum) per head and acc [GM][D]
template <int D, int GM> struct dec_smem {
    float m[DEC_NW][GM], l[DEC_NW][GM];
    float acc[DEC_NW][GM][D];
    float rq[GM + 1][D]; // rope_kv_attention: the block's q heads, then its new k head, rotated;
                         // after the merge: the block's output row (dq)
    float cs[D];         // their angles: cos [half], sin [half]
    float qv[16];        // dq Q8_K: per 32-lane group, the largest |x| and its index
    int qi[16];
};

// The block's n outputs (shared memory, a whole number of blocks of the type) quantized as
// convert quantizes (cuda_matmul.cu: cvt_q8_1_kernel, cvt_q8_k_kernel) into y: 32-lane groups
// (xor shuffles below 32: inside a half of a 64-wide wavefront) take Q8_1 blocks; a Q8_K block
// takes the whole block (arg-max of |x|, ties to the lowest index), iq [256] ints of scratch.
// Every thread of the block calls it.
static __device__ void dec_quant_out(const float *x, int n, uint32_t type, uint8_t *y, float *qv, int *qi, int *iq) {
    const int t = threadIdx.x, nt = blockDim.x, lane = t % 32, grp = t / 32, n_grp = nt / 32;
    if (type == FG_TYPE_Q8_1) {
        for (int b = grp; b < n / 32; b += n_grp) {
            const float v = x[b * 32 + lane];
            float amax = fabsf(v);
#pragma unroll
            for (int off = 16; off > 0; off >>= 1)
                amax = fmaxf(amax, fg_shfl_xor(amax, off));
            const int q = fg_q8_1_q(v, fg_q8_1_id(amax));
            float sum = (float)q; // |sum| <= 4064: exact in f32
#pragma unroll
            for (int off = 16; off > 0; off >>= 1)
                sum += fg_shfl_xor(sum, off);
            uint8_t *blk = y + (size_t)b * sizeof(fg_block_q8_1);
            blk[offsetof(fg_block_q8_1, qs) + lane] = (uint8_t)(int8_t)q;
            if (lane == 0)
                fg_q8_1_head(blk, amax, (int)sum);
        }
        return;
    }
    for (int b = 0; b < n / 256; b++) // Q8_K
        fg_q8_k_block(x + b * 256, (fg_block_q8_k *)y + b, qv, qi, iq);
}

template <typename DT, int D, int GM>
__global__ void FG_LAUNCH_BOUNDS(DEC_NW * FG_WARP, 2) attn_dec_kernel(attn_args a) {
    constexpr int W = FG_WARP;
    constexpr int TPK = D / 8;     // lanes per key
    constexpr int KPW = W / TPK;   // keys per warp per pass
    static_assert(D % 64 == 0 && TPK <= W && W % TPK == 0, "decode attention geometry");
    __shared__ dec_smem<D, GM> sm;
    fg_pdl_wait(); // PDL: the earlier kernels' outputs are visible from here
    fg_pdl_trigger();

    const int lane = threadIdx.x % W, w = threadIdx.x / W;
    const int gi = lane % TPK, kk = lane / TPK, e = gi * 8;
    const int split = blockIdx.x, s = blockIdx.z;
    const int hk = blockIdx.y / a.dec_hs, G = a.group / a.dec_hs, g0 = blockIdx.y % a.dec_hs * G;
    const int t = a.seq_first[s];
    const int n_kv = a.seq_n_kv[s];
    const int kv_end = a.causal ? min(a.pos[t] + 1, n_kv) : n_kv;
    // this block's keys: chunk `split` of n_split, chunk lengths a multiple of a warp pass
    int lo = 0, hi = kv_end;
    if (a.n_split > 1) {
        constexpr int PASS = DEC_NW * KPW;
        const int len = ((kv_end + a.n_split - 1) / a.n_split + PASS - 1) / PASS * PASS;
        lo = min(split * len, kv_end);
        hi = min(lo + len, kv_end);
    }

    const int32_t *pt = a.page_table + (size_t)s * a.max_pages;
    const size_t head_off = (size_t)hk * DT::KVT::row_bytes(D);
    const float *qrow = (const float *)(a.q + (size_t)t * a.q_nb1) + ((size_t)hk * a.group + g0) * D;
    if (a.rg.half > 0) { // rope_kv_attention (block-uniform)
        const int p = a.pos[t], hf = a.rg.half;
        fg_rope_angles(sm.cs, hf, p, a.rg.ff, a.rg.theta_scale, a.rg.freq_scale);
        const float *kin = (const float *)(a.kn + (size_t)t * a.kn_nb1) + (size_t)hk * D;
        for (int x = threadIdx.x; x < (G + 1) * D; x += DEC_NW * W)
            (&sm.rq[0][0])[x] = x < G * D ? qrow[x] : kin[x - G * D];
        __syncthreads();
        for (int x = threadIdx.x; x < (G + 1) * hf; x += DEC_NW * W) {
            const int g = x / hf, i = x % hf;
            float *r = x < G * hf ? sm.rq[g] : sm.rq[G];
            const int i0 = a.rg.neox ? i : 2 * i, i1 = a.rg.neox ? i + hf : 2 * i + 1;
            fg_rope_pair(r[i0], r[i1], sm.cs[i], sm.cs[hf + i]);
        }
        __syncthreads();
        // the key at the token's position: stored by the block whose keys hold it (the last
        // chunk when it lies past every chunk), read back after the barrier like any other
        if ((p >= lo && p < hi) || (split == a.n_split - 1 && p >= hi)) {
            const size_t ro = (size_t)a.page_table[(size_t)a.seq[t] * a.max_pages + p / a.page_size] * a.kv_nb2 +
                              (size_t)(p % a.page_size) * a.kv_nb1 + head_off;
            kv_store_row<typename DT::KVT>((char *)a.k + ro, sm.rq[G], D);
            kv_store_row<typename DT::KVT>((char *)a.v + ro, (const float *)(a.vn + (size_t)t * a.vn_nb1) + (size_t)hk * D,
                                           D);
            __syncthreads();
        }
        qrow = &sm.rq[0][0];
    }
    typename DT::qreg q;
    qrow += e;
#pragma unroll
    for (int g = 0; g < GM; g++)
        DT::template set_q<GM>(q, g, qrow + (size_t)g * D, a.qscale, g < G);

    float m[GM], l[GM], acc[GM][8];
#pragma unroll
    for (int g = 0; g < GM; g++) {
        m[g] = -INFINITY;
        l[g] = 0.0f;
#pragma unroll
        for (int i = 0; i < 8; i++)
            acc[g][i] = 0.0f;
    }

    // np passes of the warp per iteration (a.dec_passes, 2 or 4: block-uniform): every pass's
    // keys are loaded before any is used, so that np keys a lane group are in flight at once
    constexpr int STEP = DEC_NW * KPW, P_MAX = 4;
    const int np = a.dec_passes == 4 ? 4 : 2;
    for (int j0 = lo + w * KPW; j0 < hi; j0 += np * STEP) { // warp-uniform trip count
        typename DT::kreg kr[P_MAX], vr[P_MAX];
#pragma unroll
        for (int p = 0; p < P_MAX; p++) {
            const int j = j0 + p * STEP + kk;
            kr[p] = typename DT::kreg();
            vr[p] = typename DT::kreg();
            if (p < np && j < hi) {
                const size_t ro = (size_t)pt[j / a.page_size] * a.kv_nb2 + (size_t)(j % a.page_size) * a.kv_nb1 + head_off;
                DT::load(a.k + ro, e, kr[p]);
                DT::load(a.v + ro, e, vr[p]);
            }
        }
#pragma unroll
        for (int p = 0; p < P_MAX; p++)
            if (p < np) // (uniform)
                dec_key<DT, GM, TPK>(q, kr[p], vr[p], j0 + p * STEP + kk < hi, m, l, acc);
    }

    // merge the KPW lane groups of the warp (xor over the lane bits above the group's)
#pragma unroll
    for (int g = 0; g < GM; g++) {
#pragma unroll
        for (int off = TPK; off < W; off <<= 1) {
            const float mo = fg_shfl_xor(m[g], off), lo_ = fg_shfl_xor(l[g], off);
            const float mn = fmaxf(m[g], mo);
            const float sa = mn == -INFINITY ? 0.0f : exp2f(m[g] - mn);
            const float sb = mn == -INFINITY ? 0.0f : exp2f(mo - mn);
            l[g] = l[g] * sa + lo_ * sb;
#pragma unroll
            for (int i = 0; i < 8; i++) {
                const float ao = fg_shfl_xor(acc[g][i], off);
                acc[g][i] = acc[g][i] * sa + ao * sb;
            }
            m[g] = mn;
        }
    }
    if (kk == 0) {
#pragma unroll
        for (int g = 0; g < GM; g++) {
            if (gi == 0) {
                sm.m[w][g] = m[g];
                sm.l[w][g] = l[g];
            }
#pragma unroll
            for (int i = 0; i < 8; i++)
                sm.acc[w][g][e + i] = acc[g][i];
        }
    }
    __syncthreads();
    // the warps: thread x takes (head g, dim d) pairs
    for (int x = threadIdx.x; x < G * D; x += DEC_NW * W) {
        const int g = x / D, d = x % D;
        float mx = -INFINITY;
#pragma unroll
        for (int k = 0; k < DEC_NW; k++)
            mx = fmaxf(mx, sm.m[k][g]);
        float lsum = 0.0f, o = 0.0f;
        if (mx != -INFINITY) {
#pragma unroll
            for (int k = 0; k < DEC_NW; k++) {
                const float f = exp2f(sm.m[k][g] - mx); // a warp with no key: exp2(-inf) = 0
                lsum = fmaf(sm.l[k][g], f, lsum);
                o = fmaf(sm.acc[k][g][d], f, o);
            }
        }
        const int h = hk * a.group + g0 + g;
        if (a.n_split == 1 && a.dq_type) {
            (&sm.rq[0][0])[x] = lsum > 0.0f ? o / lsum : 0.0f;
        } else if (a.n_split == 1) {
            float *out = (float *)(a.dst + (size_t)t * a.dst_nb1) + (size_t)h * D;
            out[d] = lsum > 0.0f ? o / lsum : 0.0f;
        } else {
            const size_t pr = ((size_t)s * (size_t)a.n_head + h) * a.n_split + split;
            a.pacc[pr * D + d] = o;
            if (d == 0)
                a.pstat[pr] = make_float2(mx, lsum);
        }
    }
    if (a.n_split == 1 && a.dq_type) { // (block-uniform) the row's G heads, whole blocks of dq_type
        __syncthreads();
        const size_t e0 = ((size_t)hk * a.group + g0) * D;
        uint8_t *y = a.dq + (size_t)t * a.dq_nb1 +
                     (a.dq_type == FG_TYPE_Q8_1 ? e0 / 32 * sizeof(fg_block_q8_1) : e0 / 256 * sizeof(fg_block_q8_k));
        dec_quant_out(&sm.rq[0][0], G * D, a.dq_type, y, sm.qv, sm.qi, (int *)&sm.acc[0][0][0]);
    }
}

// Merges the n_split partials of each (sequence, q head): one block of DEC_RED_NT threads each.
// The partials' weights exp2(max_c - max) are computed once, in parallel, into shared memory;
// each thread then sums its dims over the splits with the loads of several splits in flight.
#define DEC_RED_NT 128
#define DEC_SPLIT_MAX 512 // most chunks a sequence is split into
__global__ void __launch_bounds__(DEC_RED_NT) dec_reduce_kernel(attn_args a) {
    __shared__ float wt[DEC_SPLIT_MAX];
    __shared__ float red[DEC_RED_NT / 32 + 1];
    fg_pdl_wait(); // PDL: the earlier kernels' outputs are visible from here
    fg_pdl_trigger();
    const int n_head = a.n_head, hd = a.head_dim;
    const int s = blockIdx.x / n_head, h = blockIdx.x % n_head;
    const int ns = a.n_split;
    const size_t pr = ((size_t)s * n_head + h) * ns;
    float mx = -INFINITY;
    for (int c = threadIdx.x; c < ns; c += blockDim.x)
        mx = fmaxf(mx, a.pstat[pr + c].x);
    mx = fg_block_max(mx, red);
    float lsum = 0.0f;
    for (int c = threadIdx.x; c < ns; c += blockDim.x) {
        const float2 st = a.pstat[pr + c];
        const float f = mx == -INFINITY || st.x == -INFINITY ? 0.0f : exp2f(st.x - mx);
        wt[c] = f;
        lsum = fmaf(st.y, f, lsum);
    }
    lsum = fg_block_sum(lsum, red); // its barriers also publish wt
    const float inv = lsum > 0.0f ? 1.0f / lsum : 0.0f;
    const int t = a.seq_first[s];
    float *out = (float *)(a.dst + (size_t)t * a.dst_nb1) + (size_t)h * hd;
    const float *pa = a.pacc + pr * hd;
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float o = 0.0f;
#pragma unroll 8
        for (int c = 0; c < ns; c++)
            o = fmaf(pa[(size_t)c * hd + d], wt[c], o);
        out[d] = o * inv;
    }
}

// ---------------------------------------------------------------- attention: tensor cores (prefill)
// Steps that are not decode-only, F16 cache, head_dim 64 or 128, NVIDIA sm_80+ (the HIP build
// and the other shapes keep attn_kernel). The same work items as attn_kernel (the plan with
// FA_BM flattened q rows a tile and no split: prefill has q tiles enough to fill the device).
// A block = FA_NW warps, 16 q rows a warp; per tile of FA_BN keys (K and V pages copied into
// shared memory with cp.async, two stages: the next tile's copies fly while this one is
// computed): S = Q K^T with mma.sync m16n8k16 (f16 in, f32 out; q rounded to f16 as the
// reference rounds q for its F16 K, K fragments by ldmatrix), scale, mask and online softmax
// in f32 on the accumulators (base 2, per row: 4 lanes share a row), P rounded to f16 straight
// from the accumulator registers into A fragments (their layouts coincide), O += P V with V
// fragments by ldmatrix.trans; O, the running max and sum stay in registers; no score matrix
// is stored. Rows of a tile and keys past the sequence read zeros and are masked.
#if !defined(__HIPCC__) && !defined(FG_GPU_EMU) // (the SIMT emulator of tests/emu has no mma)
#define FG_ATTN_FA 1
#endif
#if defined(FG_ATTN_FA)
enum { FA_BM = 64, FA_BN = 64, FA_NW = 4, FA_NT = FA_NW * 32 };
static_assert(FA_BM == 16 * FA_NW && FA_BN % 16 == 0, "16 q rows a warp, whole k16 steps of keys");

template <int D> struct fa_geo {
    static constexpr int SROW = D + 8;                    // halves a shared row: 16-byte pad, no bank conflicts
    static constexpr int TILE = FA_BN * SROW;             // halves of one K or V tile
    static constexpr size_t SMEM = (size_t)4 * TILE * 2;  // K and V, two stages, bytes
    static constexpr int CPR = D / 8;                     // 16-byte chunks a key row
};

// two f32 -> f16 (round to nearest even, as fg_f32_to_f16), lo in the low half
static __device__ __forceinline__ uint32_t fa_pack(float lo, float hi) {
    const __half2 h = __floats2half2_rn(lo, hi);
    uint32_t u;
    memcpy(&u, &h, 4);
    return u;
}

#if defined(FG_GPU_HAS_MMA)
static __device__ __forceinline__ void fa_mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
static __device__ __forceinline__ void fa_ldm4(uint32_t (&r)[4], const uint16_t *p) {
    const unsigned sa = (unsigned)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(sa));
}
static __device__ __forceinline__ void fa_ldm4t(uint32_t (&r)[4], const uint16_t *p) {
    const unsigned sa = (unsigned)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(sa));
}

// Copies keys [j0, j0 + FA_BN) of kv head hk (K and V) into a stage; keys at kv_hi or past it
// are zeros (a masked score times a zero V row adds nothing, never a NaN from stale bytes).
template <int D>
static __device__ __forceinline__ void fa_load(const attn_args &a, const int32_t *pt, int hk, int j0, int kv_hi,
                                               uint16_t *ks, uint16_t *vs, int tid) {
    typedef fa_geo<D> G;
    for (int idx = tid; idx < FA_BN * G::CPR; idx += FA_NT) {
        const int key = idx / G::CPR, ch = idx % G::CPR, j = j0 + key;
        const bool ok = j < kv_hi;
        size_t off = 0;
        if (ok)
            off = (size_t)pt[j / a.page_size] * a.kv_nb2 + (size_t)(j % a.page_size) * a.kv_nb1 +
                  (size_t)hk * D * 2 + (size_t)ch * 16;
        fg_cp16_zfill(ks + key * G::SROW + ch * 8, a.k + off, ok ? 16 : 0);
        fg_cp16_zfill(vs + key * G::SROW + ch * 8, a.v + off, ok ? 16 : 0);
    }
}
#endif

template <int D> __global__ void __launch_bounds__(FA_NT) attn_fa_kernel(attn_args a) {
#if defined(FG_GPU_HAS_MMA)
    typedef fa_geo<D> GEO;
    constexpr int KS = D / 16;  // k16 steps over the head (S = Q K^T)
    constexpr int NS = FA_BN / 8; // n8 tiles of keys
    constexpr int ND = D / 8;   // n8 tiles of the output
    extern __shared__ uint4 fa_smem4[];
    uint16_t *const sm = (uint16_t *)fa_smem4; // [stage][K | V][FA_BN][SROW]
    const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5, gq = lane >> 2, t4 = lane & 3;
    const int G = a.group;
    const int n_items = a.hdr[0];
    const long long n_work = (long long)n_items * a.n_head_kv;
    for (long long x = blockIdx.x; x < n_work; x += gridDim.x) {
        const int item = n_items - 1 - (int)(x / a.n_head_kv);
        const int hk = (int)(x % a.n_head_kv);
        const int s = attn_item_seq(a, item), tile = item - a.item_off[s];
        const int nt = a.seq_n_tokens[s], first = a.seq_first[s], n_kv = a.seq_n_kv[s];
        const int fr0 = tile * FA_BM, nrows = min(FA_BM, nt * G - fr0);
        const int last_t = first + (fr0 + nrows - 1) / G;
        const int kv_end = a.causal ? min(a.pos[last_t] + 1, n_kv) : n_kv;
        const int32_t *pt = a.page_table + (size_t)s * a.max_pages;

        // this lane's two rows (of its warp's 16): q fragments, key limits
        int lim[2];
        const float *qrow[2];
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const int r = w * 16 + gq + 8 * h, fr = fr0 + r;
            lim[h] = 0;
            qrow[h] = NULL;
            if (r < nrows) {
                const int tl = fr / G, g = fr - tl * G;
                qrow[h] = (const float *)(a.q + (size_t)(first + tl) * a.q_nb1) + (size_t)(hk * G + g) * D;
                lim[h] = a.causal ? min(a.pos[first + tl] + 1, n_kv) : n_kv;
            }
        }
        uint32_t qa[KS][4];
#pragma unroll
        for (int kk = 0; kk < KS; kk++) {
            const int c0 = kk * 16 + 2 * t4;
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const float *qr = qrow[i & 1];
                const int c = c0 + 8 * (i >> 1);
                qa[kk][i] = qr ? fa_pack(qr[c], qr[c + 1]) : 0u;
            }
        }
        float m[2] = {-1e30f, -1e30f}, l[2] = {0.0f, 0.0f};
        float o[ND][4];
#pragma unroll
        for (int n = 0; n < ND; n++)
            o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;

        const int n_tiles = (kv_end + FA_BN - 1) / FA_BN;
        __syncthreads(); // the previous item is done with the stages
        if (n_tiles > 0)
            fa_load<D>(a, pt, hk, 0, kv_end, sm, sm + GEO::TILE, tid);
        fg_cp_commit();
        for (int it = 0; it < n_tiles; it++) {
            uint16_t *const ks = sm + (size_t)(it & 1) * 2 * GEO::TILE, *const vs = ks + GEO::TILE;
            if (it + 1 < n_tiles) {
                uint16_t *const kn = sm + (size_t)((it + 1) & 1) * 2 * GEO::TILE;
                fa_load<D>(a, pt, hk, (it + 1) * FA_BN, kv_end, kn, kn + GEO::TILE, tid);
            }
            fg_cp_commit();
            fg_cp_wait<1>(); // this tile's group is complete (the next one may fly)
            __syncthreads();

            float sc[NS][4];
#pragma unroll
            for (int n = 0; n < NS; n++)
                sc[n][0] = sc[n][1] = sc[n][2] = sc[n][3] = 0.0f;
#pragma unroll
            for (int kk = 0; kk < KS; kk += 2) {
#pragma unroll
                for (int n = 0; n < NS; n++) {
                    uint32_t b[4];
                    fa_ldm4(b, ks + (n * 8 + (lane & 7)) * GEO::SROW + kk * 16 + (lane >> 3) * 8);
                    fa_mma(sc[n], qa[kk], b[0], b[1]);
                    fa_mma(sc[n], qa[kk + 1], b[2], b[3]);
                }
            }
            // scale, mask, online softmax (row h: accumulator entries 2h, 2h + 1)
            const int j0 = it * FA_BN;
            float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
            for (int n = 0; n < NS; n++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int j = j0 + n * 8 + 2 * t4 + (e & 1), h = e >> 1;
                    const float v = j < lim[h] ? sc[n][e] * a.qscale : -INFINITY;
                    sc[n][e] = v;
                    mx[h] = fmaxf(mx[h], v);
                }
            float alpha[2];
#pragma unroll
            for (int h = 0; h < 2; h++) {
                mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 1));
                mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 2));
                const float mn = fmaxf(m[h], mx[h]);
                alpha[h] = exp2f(m[h] - mn);
                m[h] = mn;
                l[h] *= alpha[h];
            }
#pragma unroll
            for (int n = 0; n < NS; n++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const float p = exp2f(sc[n][e] - m[e >> 1]);
                    sc[n][e] = p;
                    l[e >> 1] += p;
                }
#pragma unroll
            for (int n = 0; n < ND; n++) {
                o[n][0] *= alpha[0];
                o[n][1] *= alpha[0];
                o[n][2] *= alpha[1];
                o[n][3] *= alpha[1];
            }
            // O += P V, 16 keys a step
#pragma unroll
            for (int kc = 0; kc < FA_BN / 16; kc++) {
                const uint32_t pa[4] = {fa_pack(sc[2 * kc][0], sc[2 * kc][1]), fa_pack(sc[2 * kc][2], sc[2 * kc][3]),
                                        fa_pack(sc[2 * kc + 1][0], sc[2 * kc + 1][1]),
                                        fa_pack(sc[2 * kc + 1][2], sc[2 * kc + 1][3])};
#pragma unroll
                for (int n = 0; n < ND; n += 2) {
                    uint32_t b[4];
                    fa_ldm4t(b, vs + (kc * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * GEO::SROW + n * 8 +
                                    (lane >> 4) * 8);
                    fa_mma(o[n], pa, b[0], b[1]);
                    fa_mma(o[n + 1], pa, b[2], b[3]);
                }
            }
            __syncthreads(); // this stage is rewritten two tiles on
        }
        fg_cp_wait<0>();

        // the rows' sums over their 4 lanes; out = O / sum
#pragma unroll
        for (int h = 0; h < 2; h++) {
            l[h] += __shfl_xor_sync(0xffffffffu, l[h], 1);
            l[h] += __shfl_xor_sync(0xffffffffu, l[h], 2);
            const int r = w * 16 + gq + 8 * h;
            if (r < nrows) {
                const int fr = fr0 + r, tl = fr / G, g = fr - tl * G;
                float *out = (float *)(a.dst + (size_t)(first + tl) * a.dst_nb1) + (size_t)(hk * G + g) * D;
                const float sc1 = l[h] > 0.0f ? 1.0f / l[h] : 0.0f;
#pragma unroll
                for (int n = 0; n < ND; n++)
                    *(float2 *)(out + n * 8 + 2 * t4) = make_float2(o[n][2 * h] * sc1, o[n][2 * h + 1] * sc1);
            }
        }
    }
#else
    (void)a;
#endif
}
#endif // FG_ATTN_FA

// ---------------------------------------------------------------- attention: launcher
template <typename DT, int D>
static void (*dec_pick_g(int group))(attn_args) {
    return group <= 1 ? attn_dec_kernel<DT, D, 1>
           : group <= 2 ? attn_dec_kernel<DT, D, 2>
           : group <= 4 ? attn_dec_kernel<DT, D, 4>
                        : attn_dec_kernel<DT, D, 8>;
}
template <typename DT> static void (*dec_pick(int hd, int group))(attn_args) {
    return hd == 64 ? dec_pick_g<DT, 64>(group) : hd == 128 ? dec_pick_g<DT, 128>(group) : dec_pick_g<DT, 256>(group);
}

// The arguments both attention kernels take from the step, the cache and the op.
static attn_args attn_args_of(const fg_cuda *c, fg_tensor *dst, const fg_tensor *q, const fg_kv_view *kv,
                              const fg_attn_params *p) {
    const fg_cuda_step *st = &c->step;
    attn_args a;
    memset(&a, 0, sizeof a);
    a.q = (const char *)q->data;
    a.q_nb1 = q->nb[1];
    a.dst = (char *)dst->data;
    a.dst_nb1 = dst->nb[1];
    a.k = (const char *)kv->k.data + (size_t)p->layer * kv->k.nb[3];
    a.v = (const char *)kv->v.data + (size_t)p->layer * kv->v.nb[3];
    a.kv_nb1 = kv->k.nb[1];
    a.kv_nb2 = kv->k.nb[2];
    a.pos = st->pos;
    a.seq = st->seq;
    a.seq_first = st->seq_first;
    a.seq_n_tokens = st->seq_n_tokens;
    a.seq_n_kv = st->seq_n_kv;
    a.page_table = st->page_table;
    a.max_pages = st->max_pages;
    a.page_size = kv->page_size;
    a.n_seqs = st->n_seqs;
    a.n_head = p->n_head;
    a.n_head_kv = kv->n_head_kv;
    a.group = p->n_head / kv->n_head_kv;
    a.head_dim = kv->head_dim;
    a.qscale = p->scale * 1.44269504088896340736f; // scores in base 2
    a.causal = p->causal ? 1 : 0;
    a.n_split = 1;
    return a;
}

// Whether the decode kernel takes this step (see attn_dec_kernel); if so, a.n_split and the
// partials' place in the arena are set.
static bool dec_fits(const fg_cuda *c, uint32_t kv_type, attn_args &a) {
    const fg_cuda_step *st = &c->step;
    const int hd = a.head_dim, n_head = a.n_head;
    if (!c->attn_dec || st->n_tokens != st->n_seqs || a.group > DEC_GM || (hd != 64 && hd != 128 && hd != 256))
        return false;
    if (kv_type != FG_TYPE_F16 && kv_type != FG_TYPE_Q8_0)
        return false;
    const uintptr_t al = (uintptr_t)a.k | (uintptr_t)a.v | (uintptr_t)a.kv_nb1 | (uintptr_t)a.kv_nb2;
    if (al % (kv_type == FG_TYPE_F16 ? 16 : 4) != 0)
        return false;
    // split long sequences when the step has too few (sequence, kv head) blocks to fill the
    // device: max_n_kv is part of a recorded step's shape, so the split count is too
    a.dec_hs = c->dec_hsplit > 0 ? c->dec_hsplit : DEC_HSPLIT;
    while (a.dec_hs > 1 && a.group % a.dec_hs != 0)
        a.dec_hs--;
    const long long base = (long long)st->n_seqs * a.n_head_kv * a.dec_hs;
    const long long target = (long long)DEC_BLOCKS_PER_SM * (c->n_sm > 0 ? c->n_sm : 80);
    long long n_split = 1;
    const long long l_min = c->dec_l_min > 0 ? c->dec_l_min : DEC_L_MIN;
    if (base < target && st->max_n_kv > l_min) {
        n_split = (target + base - 1) / base;
        const long long by_len = ((long long)st->max_n_kv + l_min - 1) / l_min;
        n_split = n_split < by_len ? n_split : by_len;
        const size_t row_bytes = ((size_t)hd + 2) * sizeof(float);
        const long long rows_max =
            c->attn.base && c->attn.size > 512 ? (long long)((c->attn.size - 512) / row_bytes) : 0;
        const long long by_mem = rows_max / ((long long)st->n_seqs * n_head);
        n_split = n_split < by_mem ? n_split : by_mem;
        n_split = n_split < DEC_SPLIT_MAX ? n_split : DEC_SPLIT_MAX;
        if (n_split < 2)
            n_split = 1;
    }
    a.n_split = (int)n_split;
    a.dec_passes = c->dec_passes;
    a.pstat = (float2 *)c->attn.base;
    a.pacc = (float *)(c->attn.base + align256((size_t)st->n_seqs * n_head * n_split * sizeof(float2)));
    return true;
}

static fg_status dec_launch(fg_cuda *c, const attn_args &a, uint32_t kv_type) {
    const dim3 grid((unsigned)a.n_split, (unsigned)(a.n_head_kv * a.dec_hs), (unsigned)a.n_seqs);
    const unsigned threads = (unsigned)(DEC_NW * c->warp);
    const int gb = a.group / a.dec_hs; // q heads a block
    void (*fn)(attn_args) = kv_type == FG_TYPE_F16 ? dec_pick<dec_f16>(a.head_dim, gb) : dec_pick<dec_q8_0>(a.head_dim, gb);
    fg_launch(c->pdl, fn, grid, threads, 0, c->stream, a);
    FG_GPU_LAUNCH_CHECK(c, "attention (decode)");
    if (a.n_split > 1) {
        const long long n_rows = (long long)a.n_seqs * a.n_head;
        fg_launch(c->pdl, dec_reduce_kernel, (unsigned)n_rows, DEC_RED_NT, 0, c->stream, a);
        FG_GPU_LAUNCH_CHECK(c, "attention (decode) reduce");
    }
    return FG_OK;
}


// Whether the tensor-core kernel takes this (not decode-only) step: see attn_fa_kernel.
static bool fa_fits(const fg_cuda *c, uint32_t kv_type, const attn_args &a) {
#if !defined(FG_ATTN_FA)
    (void)c, (void)kv_type, (void)a;
    return false;
#else
    if (!c->attn_fa || c->cc_major < 8 || kv_type != FG_TYPE_F16 || (a.head_dim != 64 && a.head_dim != 128))
        return false;
    const uintptr_t al = (uintptr_t)a.k | (uintptr_t)a.v | (uintptr_t)a.kv_nb1 | (uintptr_t)a.kv_nb2;
    return al % 16 == 0 && ((uintptr_t)a.dst | (uintptr_t)a.dst_nb1) % 8 == 0 && ((uintptr_t)a.q | a.q_nb1) % 4 == 0;
#endif
}

static int fa_rows() {
#if !defined(FG_ATTN_FA)
    return 16;
#else
    return FA_BM;
#endif
}

// Makes the tensor-core kernel's shared memory (over the 48 KiB default) available; reads
// FORGE_CUDA_ATTN_MMA (0: attn_kernel takes the prefill steps).
fg_status fg_cuda_attn_init(fg_cuda *c) {
    const char *e = getenv("FORGE_CUDA_ATTN_MMA");
    c->attn_fa = !(e && !strcmp(e, "0"));
#if !defined(FG_ATTN_FA)
    c->attn_fa = false; // HIP, the emulator
#else
    if (c->cc_major < 8)
        c->attn_fa = false;
    if (c->attn_fa) {
        FG_GPU_CHECK(c, gpuFuncSetAttribute(attn_fa_kernel<64>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                            (int)fa_geo<64>::SMEM));
        FG_GPU_CHECK(c, gpuFuncSetAttribute(attn_fa_kernel<128>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                            (int)fa_geo<128>::SMEM));
    }
#endif
    return FG_OK;
}

static fg_status fa_launch(fg_cuda *c, const attn_args &a, long long tiles) {
#if !defined(FG_ATTN_FA)
    (void)c, (void)a, (void)tiles;
    return fg_fail(FG_ERR_UNSUPPORTED, "%s: no tensor-core attention", FG_GPU_VENDOR);
#else
    long long gx = tiles * a.n_head_kv;
    gx = gx < (1LL << 24) ? gx : (1LL << 24);
    if (a.head_dim == 64)
        attn_fa_kernel<64><<<(unsigned)gx, FA_NT, fa_geo<64>::SMEM, c->stream>>>(a);
    else
        attn_fa_kernel<128><<<(unsigned)gx, FA_NT, fa_geo<128>::SMEM, c->stream>>>(a);
    FG_GPU_LAUNCH_CHECK(c, "attention (tensor cores)");
    return FG_OK;
#endif
}

typedef void (*attn_kernel_fn)(attn_args);

template <typename KVT>
static attn_kernel_fn attn_pick(int d_cap, bool exact) {
    switch (d_cap) {
    case 64:
        return exact ? attn_kernel<KVT, 64, true> : attn_kernel<KVT, 64, false>;
    case 128:
        return exact ? attn_kernel<KVT, 128, true> : attn_kernel<KVT, 128, false>;
    case 256:
        return exact ? attn_kernel<KVT, 256, true> : attn_kernel<KVT, 256, false>;
    default:
        return attn_kernel<KVT, 512, false>;
    }
}

fg_status fg_cuda_attention(fg_cuda *c, fg_tensor *dst, const fg_tensor *q, const fg_kv_view *kv,
                            const fg_attn_params *p) {
    const fg_cuda_step *st = &c->step;
    const int hd = kv->head_dim, n_head = p->n_head, n_head_kv = kv->n_head_kv;
    FG_ASSERT(fg_cuda_kv_supports(kv->type));
    FG_ASSERT(hd >= 1 && n_head_kv >= 1 && n_head >= n_head_kv && n_head % n_head_kv == 0);
    FG_ASSERT(p->layer >= 0 && p->layer < kv->n_layer);
    FG_ASSERT(kv->k.nb[1] == kv->v.nb[1] && kv->k.nb[2] == kv->v.nb[2]);
    FG_ASSERT(c->warp == 32 || c->warp == 64);
    if (hd > 512)
        return fg_fail(FG_ERR_UNSUPPORTED, "cuda: attention: head_dim %d exceeds 512", hd);
    if (st->n_tokens <= 0 || st->n_seqs <= 0)
        return FG_OK;
    attn_args a = attn_args_of(c, dst, q, kv, p);
    if (dec_fits(c, kv->type, a))
        return dec_launch(c, a, kv->type);
    const int warp = c->warp, group = n_head / n_head_kv;
    const int d_cap = hd <= 64 ? 64 : hd <= 128 ? 128 : hd <= 256 ? 256 : 512;
    const bool fa = fa_fits(c, kv->type, a);
    const int rows = fa ? fa_rows() : attn_rows(d_cap);

    // the arena: plan header, then partials (pstat, pacc) for as many rows as fit. c->attn
    // belongs to this launcher: every call uses it from byte 0 (attention calls are ordered
    // on c->stream), so it is not bumped with fg_cuda_arena_take.
    const size_t hdr_bytes = attn_header_bytes(st->n_seqs);
    if (!c->attn.base || c->attn.size < hdr_bytes)
        return fg_fail(FG_ERR_CAPACITY,
                       "cuda: attention: scratch arena holds %zu bytes, %zu needed for %d sequences (reserve)",
                       c->attn.size, hdr_bytes, st->n_seqs);
    char *base = c->attn.base;
    int *hdr = (int *)base;
    int *item_off = (int *)(base + align256(4 * sizeof(int)));
    int *n_chunks = (int *)((char *)item_off + align256(((size_t)st->n_seqs + 1) * sizeof(int)));
    int *poff = (int *)((char *)n_chunks + align256((size_t)st->n_seqs * sizeof(int)));
    const size_t avail = c->attn.size - hdr_bytes;
    const size_t row_bytes = ((size_t)hd + 2) * sizeof(float);
    size_t p_max = avail > 512 ? (avail - 256) / row_bytes : 0;
    if (p_max > (size_t)INT_MAX / 2)
        p_max = (size_t)INT_MAX / 2;
    float2 *pstat = (float2 *)(base + hdr_bytes);
    float *pacc = (float *)((char *)pstat + align256(p_max * sizeof(float2)));

    const int n_sm = c->n_sm > 0 ? c->n_sm : 80;
    attn_plan_args pa;
    pa.n_seqs = st->n_seqs;
    pa.seq_n_tokens = st->seq_n_tokens;
    pa.seq_n_kv = st->seq_n_kv;
    pa.group = group;
    pa.rows = rows;
    pa.n_head_kv = n_head_kv;
    pa.n_head = n_head;
    pa.target = ATTN_BLOCKS_PER_SM * n_sm;
    pa.p_max = fa ? 0 : (long long)p_max; // the tensor-core kernel never splits
    pa.bk = warp;
    pa.hdr = hdr;
    pa.item_off = item_off;
    pa.n_chunks = n_chunks;
    pa.poff = poff;
    attn_plan_kernel<<<1, ATTN_PLAN_THREADS, 0, c->stream>>>(pa);
    FG_GPU_LAUNCH_CHECK(c, "attention plan");

    const uintptr_t al = (uintptr_t)a.k | (uintptr_t)a.v | (uintptr_t)a.kv_nb1 | (uintptr_t)a.kv_nb2;
    a.vec4 = hd % 4 == 0 && al % kv_fetch4_align(kv->type) == 0;
    a.hdr = hdr;
    a.item_off = item_off;
    a.n_chunks = n_chunks;
    a.poff = poff;
    a.pstat = pstat;
    a.pacc = pacc;

    // work = items x kv heads: at most q tiles x n_head_kv when nothing is split. The plan
    // splits only when the step has fewer than target * rows q rows, into fewer than
    // 2 * target items, none of them cut in more than ceil(max_n_kv / ATTN_L_MIN) chunks.
    // Blocks loop over the work, so the grid is a size choice only (a stale max_n_kv, as in
    // a replayed graph, costs speed, never correctness).
    const long long tiles = ((long long)st->n_tokens * group + (long long)st->n_seqs * (rows - 1)) / rows;
    if (fa)
        return fa_launch(c, a, tiles);
    const bool may_split = p_max > 0 && (long long)st->n_tokens * n_head < (long long)pa.target * rows;
    long long gx = tiles * n_head_kv;
    if (may_split) {
        const long long cuts = ((long long)(st->max_n_kv > 1 ? st->max_n_kv : 1) + ATTN_L_MIN - 1) / ATTN_L_MIN;
        const long long most = gx * cuts < 2LL * pa.target ? gx * cuts : 2LL * pa.target;
        gx = gx > most ? gx : most;
    }
    gx = gx < (1LL << 24) ? gx : (1LL << 24);
    const dim3 grid((unsigned)gx);
    const unsigned threads = (unsigned)(ATTN_NW * warp);
    const size_t smem = attn_smem_bytes(d_cap, warp);
    const bool exact = hd == d_cap && d_cap <= 256;
    FG_ASSERT(kv->type != FG_TYPE_Q8_0 || hd % FG_QK8_0 == 0);
    const attn_kernel_fn fn = kv->type == FG_TYPE_F16    ? attn_pick<kv_f16>(d_cap, exact)
                              : kv->type == FG_TYPE_Q8_0 ? attn_pick<kv_q8_0>(d_cap, exact)
                                                         : attn_pick<kv_f32>(d_cap, exact);
    fn<<<grid, threads, smem, c->stream>>>(a);
    FG_GPU_LAUNCH_CHECK(c, "attention");

    if (may_split) { // else every row was written by attn_kernel
        const long long n_rows = (long long)st->n_tokens * n_head;
        attn_reduce_kernel<<<fg_div_up(n_rows, ATTN_NW), threads, 0, c->stream>>>(a, st->n_tokens);
        FG_GPU_LAUNCH_CHECK(c, "attention reduce");
    }
    return FG_OK;
}

// rope(q), rope(k), kv_store(k, v), attention (, convert(dq, dst)): a decode step that the decode
// kernel takes does all of it in attn_dec_kernel (one launch instead of two or three; q and k
// are rotated in shared memory, their rows in memory stay as they were; unsplit, the output
// rows go straight to dq, dst is not written); any other step runs the ops.
fg_status fg_cuda_rope_kv_attention(fg_cuda *c, fg_tensor *dst, fg_tensor *dq, fg_tensor *q, fg_tensor *k,
                                   const fg_tensor *v, const fg_rope_params *rp, int32_t n_head_kv,
                                   const fg_kv_view *kv, const fg_attn_params *ap) {
    const fg_cuda_step *st = &c->step;
    FG_ASSERT(fg_cuda_kv_supports(kv->type) && rp->head_dim == kv->head_dim && n_head_kv == kv->n_head_kv);
    FG_ASSERT(rp->n_rot >= 2 && rp->n_rot % 2 == 0 && rp->n_rot <= rp->head_dim && rp->n_head == ap->n_head);
    FG_ASSERT(rp->mode == FG_ROPE_NORMAL || rp->mode == FG_ROPE_NEOX);
    FG_ASSERT(ap->layer >= 0 && ap->layer < kv->n_layer && kv->k.nb[1] == kv->v.nb[1] && kv->k.nb[2] == kv->v.nb[2]);
    if (c->dec_rope && st->n_tokens > 0 && st->n_seqs > 0 && kv->head_dim <= 512) {
        attn_args a = attn_args_of(c, dst, q, kv, ap);
        if (dec_fits(c, kv->type, a)) {
            a.rg = rope_geo_of(rp);
            a.kn = (const char *)k->data;
            a.kn_nb1 = k->nb[1];
            a.vn = (const char *)v->data;
            a.vn_nb1 = v->nb[1];
            // the output projection's activations from the kernel: unsplit, whole blocks a kv head
            const int gd = a.group / a.dec_hs * a.head_dim;
            const bool in_kernel = dq && c->dec_quant && a.n_split == 1 &&
                                   ((dq->type == FG_TYPE_Q8_1 && gd % 32 == 0) ||
                                    (dq->type == FG_TYPE_Q8_K && gd % 256 == 0 && c->dec_quant == 2));
            if (in_kernel) {
                a.dq = (uint8_t *)dq->data;
                a.dq_nb1 = dq->nb[1];
                a.dq_type = dq->type;
            }
            FG_TRY(dec_launch(c, a, kv->type));
            return dq && !in_kernel ? fg_cuda_convert(c, dq, dst) : FG_OK;
        }
    }
    FG_TRY(fg_cuda_rope_kv_store(c, q, k, v, rp, n_head_kv, kv, ap->layer));
    FG_TRY(fg_cuda_attention(c, dst, q, kv, ap));
    return dq ? fg_cuda_convert(c, dq, dst) : FG_OK;
}
