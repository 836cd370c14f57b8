// cuda_quant.cuh - per-weight-type helpers of the matmul kernels (cuda_matmul.cu): the decode of
// one 32-element unit of a weight block into packed bytes plus its scale terms, the exact
// dequantization built on it (bit-identical to fg_dequant_* in quant_ref.c / quant_kquants.c:
// same float expressions in the same order, never contracted into FMAs), and the integer dot of
// a unit with a Q8_1 activation block. Everything is host-callable (FG_HD) so the index maths
// can be checked on a machine without a GPU (tests/unit/test_cuda_matmul_host.cu).
// Not here: kernels, launch geometry, float weight types (F32/F16/BF16 are read element-wise).
#ifndef FG_BACKEND_CUDA_QUANT_CUH
#define FG_BACKEND_CUDA_QUANT_CUH

#include "backend/cuda/cuda_common.cuh"
#include "quant/blocks.h"

#include <stddef.h>
#include <string.h>

#if defined(__CUDA_ARCH__) || defined(__HIP_DEVICE_COMPILE__)
#define FG_Q_DEVICE 1 // device pass
#endif
// #pragma unroll in host-callable code: the device passes only (gcc's -Wall refuses it).
#define FG_PRAGMA_(x) _Pragma(#x)
#if defined(FG_Q_DEVICE) || defined(__clang__)
#define FG_UNROLL _Pragma("unroll")
#define FG_UNROLL_N(n) FG_PRAGMA_(unroll n)
#else
#define FG_UNROLL
#define FG_UNROLL_N(n)
#endif

static FG_HD __forceinline__ float fg_q_h2f(uint16_t h) {
#ifdef FG_Q_DEVICE
    return fg_h2f(h);
#else
    return fg_f16_to_f32(h); // the same exact conversion, in integer code
#endif
}
static FG_HD __forceinline__ uint16_t fg_q_f2h(float f) {
#ifdef FG_Q_DEVICE
    return fg_f2h(f);
#else
    return fg_f32_to_f16(f); // round to nearest even, as __float2half_rn
#endif
}

// ---------------------------------------------------------------- readers
// Little-endian reads of block bytes. p is at least 2-aligned for u16 (every block type but
// MXFP4 starts with, or contains, fg_f16 fields, so C gives its blocks 2-byte alignment);
// u32<A> reads 4 bytes at a p that is A-aligned (A = 1 or 2).
// fg_rd_exact reads exactly the bytes asked for (global memory: nothing beyond the tensor).
// fg_rd_smem is for staged shared memory: aligned 32-bit words, funnel-shifted, so it may read
// up to 3 bytes before and after the asked bytes (the staging slots are 16-aligned and keep at
// least 16 bytes of slack after the data).
static FG_HD __forceinline__ uint32_t fg_q_ld16(const uint8_t *p) {
#ifdef FG_Q_DEVICE
    return *(const uint16_t *)p;
#else
    uint16_t v;
    memcpy(&v, p, 2);
    return v;
#endif
}
static FG_HD __forceinline__ uint32_t fg_q_ld32a(const uint8_t *p) { // p 4-aligned
#ifdef FG_Q_DEVICE
    return *(const uint32_t *)p;
#else
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
#endif
}

static FG_HD __forceinline__ float fg_q_ldf32(const uint8_t *p) { // p 4-aligned
    const uint32_t u = fg_q_ld32a(p);
    float f;
    memcpy(&f, &u, 4);
    return f;
}

struct fg_rd_exact {
    static FG_HD __forceinline__ uint32_t u8(const uint8_t *p) { return *p; }
    static FG_HD __forceinline__ uint32_t u16(const uint8_t *p) { return fg_q_ld16(p); }
    template <int A> static FG_HD __forceinline__ uint32_t u32(const uint8_t *p) {
        if (A >= 2)
            return fg_q_ld16(p) | (fg_q_ld16(p + 2) << 16);
        return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
    }
};

// fg_rd_a4: global memory whose 32-bit reads are 4-aligned (blocks of a size that is a multiple
// of 4 in rows that start 4-aligned: Q4_1, Q5_1, Q2_K, Q4_K, Q5_K), each one load instead of
// two 16-bit ones. Host builds (the replay test) poison a misaligned read so that a caller
// choosing it wrongly fails there.
struct fg_rd_a4 {
    static FG_HD __forceinline__ uint32_t u8(const uint8_t *p) { return *p; }
    static FG_HD __forceinline__ uint32_t u16(const uint8_t *p) { return fg_q_ld16(p); }
    template <int A> static FG_HD __forceinline__ uint32_t u32(const uint8_t *p) {
#ifndef FG_Q_DEVICE
        if ((uintptr_t)p & 3)
            return 0xDEADBEEFu;
#endif
        return fg_q_ld32a(p);
    }
};

struct fg_rd_smem {
    static FG_HD __forceinline__ uint32_t u8(const uint8_t *p) { return *p; }
    static FG_HD __forceinline__ uint32_t u16(const uint8_t *p) { return fg_q_ld16(p); }
    template <int A> static FG_HD __forceinline__ uint32_t u32(const uint8_t *p) {
        const uintptr_t a = (uintptr_t)p;
        if (A >= 4 || (a & 3) == 0) // (blocks staged 4-aligned, the usual case: one word)
            return fg_q_ld32a(p);
        const uint8_t *w = (const uint8_t *)(a & ~(uintptr_t)3);
        const uint32_t sh = (uint32_t)(a & 3) * 8;
        const uint64_t v = (uint64_t)fg_q_ld32a(w) | ((uint64_t)fg_q_ld32a(w + 4) << 32);
        return (uint32_t)(v >> sh);
    }
};

// ---------------------------------------------------------------- traits
// QK elements per block, BYTES per block, UPB 32-element units per block, ALIGN of the block
// start, OFF subtracted from each decoded byte, SPLIT: the two 16-element halves of a unit have
// their own scale (Q2_K/Q3_K/Q6_K), MIN: the unit has a subtracted term.
template <int T> struct fg_qt;
#define FG_QT(T, blk, qk, align, off, split, min)                 \
    template <> struct fg_qt<T> {                                 \
        typedef blk block;                                        \
        static constexpr int QK = qk;                             \
        static constexpr int BYTES = (int)sizeof(blk);            \
        static constexpr int UPB = qk / 32;                       \
        static constexpr int ALIGN = align;                       \
        static constexpr int OFF = off;                           \
        static constexpr bool SPLIT = split;                      \
        static constexpr bool MIN = min;                          \
    };
FG_QT(FG_TYPE_Q4_0, fg_block_q4_0, 32, 2, 8, false, false)
FG_QT(FG_TYPE_Q4_1, fg_block_q4_1, 32, 2, 0, false, true)
FG_QT(FG_TYPE_Q5_0, fg_block_q5_0, 32, 2, 16, false, false)
FG_QT(FG_TYPE_Q5_1, fg_block_q5_1, 32, 2, 0, false, true)
FG_QT(FG_TYPE_Q8_0, fg_block_q8_0, 32, 2, 0, false, false)
FG_QT(FG_TYPE_MXFP4, fg_block_mxfp4, 32, 1, 0, false, false)
FG_QT(FG_TYPE_Q2_K, fg_block_q2_k, 256, 2, 0, true, true)
FG_QT(FG_TYPE_Q3_K, fg_block_q3_k, 256, 2, 4, true, false)
FG_QT(FG_TYPE_Q4_K, fg_block_q4_k, 256, 2, 0, false, true)
FG_QT(FG_TYPE_Q5_K, fg_block_q5_k, 256, 2, 0, false, true)
FG_QT(FG_TYPE_Q6_K, fg_block_q6_k, 256, 2, 32, true, false)
#undef FG_QT

// One decoded unit: the 32 elements 32*sub .. 32*sub+31 of a block.
//   element e: v = (int8_t)byte (e % 4) of q[e / 4], minus OFF;  x = v * a - b
//   with a = a_lo, b = b_lo for e < 16, a_hi, b_hi for e >= 16.
// a and b are computed exactly as the reference's per-element scale terms (d, d*sc, dmin*m...),
// b = -m where the reference adds m, so x is the reference value bit for bit.
struct fg_qunit {
    uint32_t q[8];
    float a_lo, a_hi;
    float b_lo, b_hi;
};

// 4 bits of x (0..15) to bit 4 of each byte: bit i -> bit 8*i + 4.
static FG_HD __forceinline__ uint32_t fg_q_spread4(uint32_t x) {
    return ((x & 1u) << 4) | ((x & 2u) << 11) | ((x & 4u) << 18) | ((x & 8u) << 25);
}

// Bytes of x with selectors s (3 bits per nibble, bit 3 clear) from the 8 bytes {y:x}.
static FG_HD __forceinline__ uint32_t fg_q_perm(uint32_t x, uint32_t y, uint32_t s) {
#if defined(__CUDA_ARCH__)
    return __byte_perm(x, y, s);
#else
    const uint64_t v = ((uint64_t)y << 32) | x;
    uint32_t r = 0;
    for (int i = 0; i < 4; i++)
        r |= (uint32_t)((v >> (8 * ((s >> (4 * i)) & 7))) & 0xFF) << (8 * i);
    return r;
#endif
}

// MXFP4: four nibbles (one per byte, values 0..15) -> the four int8 kvalues.
static FG_HD __forceinline__ uint32_t fg_q_mxfp4_lut(uint32_t v) {
    const uint32_t t = v & 0x07070707u;
    const uint32_t s = (t & 0x7u) | ((t >> 4) & 0x70u) | ((t >> 8) & 0x700u) | ((t >> 12) & 0x7000u);
    const uint32_t pos = fg_q_perm(0x03020100u, 0x0C080604u, s); //  0, 1, 2, 3, 4, 6, 8, 12
    const uint32_t neg = fg_q_perm(0xFDFEFF00u, 0xF4F8FAFCu, s); // -0,-1,-2,-3,-4,-6,-8,-12
    const uint32_t m = ((v >> 3) & 0x01010101u) * 0xFFu;
    return (pos & ~m) | (neg & m);
}

// Q4_K / Q5_K: 6-bit scale and min of sub-block j (fg_get_scale_min_k4) from the 12 packed
// bytes, byte(i) giving byte i (read through a reader, or taken from registers).
template <class B> static FG_HD __forceinline__ void fg_q_scale_min_k4_of(int j, B byte, int *sc, int *m) {
    if (j < 4) {
        *sc = (int)(byte(j) & 63);
        *m = (int)(byte(j + 4) & 63);
    } else {
        *sc = (int)((byte(j + 4) & 0xF) | ((byte(j - 4) >> 6) << 4));
        *m = (int)((byte(j + 4) >> 4) | ((byte(j) >> 6) << 4));
    }
}
template <class RD>
static FG_HD __forceinline__ void fg_q_scale_min_k4(int j, const uint8_t *q, int *sc, int *m) {
    fg_q_scale_min_k4_of(j, [q](int i) { return (uint32_t)RD::u8(q + i); }, sc, m);
}
// Q4_K / Q5_K: a unit's scale and min, d * sc and dmin * m (the halves' bits d, dmin).
static FG_HD __forceinline__ void fg_q_k4_scales(fg_qunit &u, uint16_t d, uint16_t dmin, int sc, int m) {
    u.a_lo = u.a_hi = fg_fmul_rn(fg_q_h2f(d), (float)sc);
    u.b_lo = u.b_hi = fg_fmul_rn(fg_q_h2f(dmin), (float)m);
}

// Q3_K: stored 6-bit scale s (0..15) of the 12 packed bytes (fg_q3_k_scales), 0..63.
template <class RD> static FG_HD __forceinline__ int fg_q_scale_q3k(int s, const uint8_t *sc) {
    const int lo = s < 8 ? (int)(RD::u8(sc + s) & 0xF) : (int)(RD::u8(sc + s - 8) >> 4);
    const int hi = (int)(RD::u8(sc + 8 + (s & 3)) >> (2 * (s >> 2))) & 3;
    return lo | (hi << 4);
}

#define FG_QOFF(T, field) ((int)offsetof(typename fg_qt<T>::block, field))

// Decodes unit `sub` (0 .. UPB-1) of the block at b.
template <int T, class RD> static FG_HD __forceinline__ void fg_q_decode(const uint8_t *b, int sub, fg_qunit &u) {
    typedef fg_qt<T> Q;
    u.b_lo = u.b_hi = 0.0f;
    if constexpr (T == FG_TYPE_Q4_0 || T == FG_TYPE_Q4_1) {
        const uint8_t *qs = b + FG_QOFF(T, qs);
FG_UNROLL
        for (int k = 0; k < 4; k++) {
            const uint32_t w = RD::template u32<Q::ALIGN>(qs + 4 * k);
            u.q[k] = w & 0x0F0F0F0Fu;            // elements 4k..4k+3: low nibbles of qs[4k..]
            u.q[k + 4] = (w >> 4) & 0x0F0F0F0Fu; // elements 16+4k..: high nibbles
        }
        u.a_lo = u.a_hi = fg_q_h2f((uint16_t)RD::u16(b + FG_QOFF(T, d)));
        if constexpr (T == FG_TYPE_Q4_1)
            u.b_lo = u.b_hi = -fg_q_h2f((uint16_t)RD::u16(b + FG_QOFF(T, m)));
    } else if constexpr (T == FG_TYPE_Q5_0 || T == FG_TYPE_Q5_1) {
        const uint8_t *qs = b + FG_QOFF(T, qs);
        const uint32_t qh = RD::template u32<Q::ALIGN>(b + FG_QOFF(T, qh));
FG_UNROLL
        for (int k = 0; k < 4; k++) {
            const uint32_t w = RD::template u32<Q::ALIGN>(qs + 4 * k);
            u.q[k] = (w & 0x0F0F0F0Fu) | fg_q_spread4((qh >> (4 * k)) & 0xF);
            u.q[k + 4] = ((w >> 4) & 0x0F0F0F0Fu) | fg_q_spread4((qh >> (16 + 4 * k)) & 0xF);
        }
        u.a_lo = u.a_hi = fg_q_h2f((uint16_t)RD::u16(b + FG_QOFF(T, d)));
        if constexpr (T == FG_TYPE_Q5_1)
            u.b_lo = u.b_hi = -fg_q_h2f((uint16_t)RD::u16(b + FG_QOFF(T, m)));
    } else if constexpr (T == FG_TYPE_Q8_0) {
        const uint8_t *qs = b + FG_QOFF(T, qs);
FG_UNROLL
        for (int k = 0; k < 8; k++)
            u.q[k] = RD::template u32<Q::ALIGN>(qs + 4 * k);
        u.a_lo = u.a_hi = fg_q_h2f((uint16_t)RD::u16(b + FG_QOFF(T, d)));
    } else if constexpr (T == FG_TYPE_MXFP4) {
        const uint8_t *qs = b + FG_QOFF(T, qs);
FG_UNROLL
        for (int k = 0; k < 4; k++) {
            const uint32_t w = RD::template u32<Q::ALIGN>(qs + 4 * k);
            u.q[k] = fg_q_mxfp4_lut(w & 0x0F0F0F0Fu);
            u.q[k + 4] = fg_q_mxfp4_lut((w >> 4) & 0x0F0F0F0Fu);
        }
        u.a_lo = u.a_hi = fg_e8m0_to_f32_half((uint8_t)RD::u8(b + FG_QOFF(T, e)));
    } else if constexpr (T == FG_TYPE_Q2_K) {
        // element 128n + 32jj + l (sub = 4n + jj): bits 2jj of qs[32n + l]; scales[2 sub + l/16]
        const int n = sub >> 2, jj = sub & 3;
        const uint8_t *qs = b + FG_QOFF(T, qs) + 32 * n;
FG_UNROLL
        for (int k = 0; k < 8; k++)
            u.q[k] = (RD::template u32<Q::ALIGN>(qs + 4 * k) >> (2 * jj)) & 0x03030303u;
        const float d = fg_q_h2f((uint16_t)RD::u16(b + FG_QOFF(T, d)));
        const float dmin = fg_q_h2f((uint16_t)RD::u16(b + FG_QOFF(T, dmin)));
        const uint32_t s0 = RD::u8(b + FG_QOFF(T, scales) + 2 * sub);
        const uint32_t s1 = RD::u8(b + FG_QOFF(T, scales) + 2 * sub + 1);
        u.a_lo = fg_fmul_rn(d, (float)(s0 & 0xF));
        u.a_hi = fg_fmul_rn(d, (float)(s1 & 0xF));
        u.b_lo = fg_fmul_rn(dmin, (float)(s0 >> 4));
        u.b_hi = fg_fmul_rn(dmin, (float)(s1 >> 4));
    } else if constexpr (T == FG_TYPE_Q3_K) {
        // element 128n + 32jj + l: low 2 bits as Q2_K; high bit = bit (4n + jj) = bit sub of
        // hmask[l]; value = (lo | hi << 2) - 4. Scales 6-bit, minus 32.
        const int n = sub >> 2, jj = sub & 3;
        const uint8_t *qs = b + FG_QOFF(T, qs) + 32 * n;
        const uint8_t *hm = b + FG_QOFF(T, hmask);
FG_UNROLL
        for (int k = 0; k < 8; k++) {
            const uint32_t lo = (RD::template u32<Q::ALIGN>(qs + 4 * k) >> (2 * jj)) & 0x03030303u;
            const uint32_t hi = (RD::template u32<Q::ALIGN>(hm + 4 * k) >> sub) & 0x01010101u;
            u.q[k] = lo | (hi << 2);
        }
        const float d = fg_q_h2f((uint16_t)RD::u16(b + FG_QOFF(T, d)));
        const uint8_t *sc = b + FG_QOFF(T, scales);
        u.a_lo = fg_fmul_rn(d, (float)(fg_q_scale_q3k<RD>(2 * sub, sc) - 32));
        u.a_hi = fg_fmul_rn(d, (float)(fg_q_scale_q3k<RD>(2 * sub + 1, sc) - 32));
    } else if constexpr (T == FG_TYPE_Q4_K || T == FG_TYPE_Q5_K) {
        // sub-block j = sub: nibble (j & 1) of qs[32 (j >> 1) + l]; Q5_K: bit j of qh[l] as bit 4
        const uint8_t *qs = b + FG_QOFF(T, qs) + 32 * (sub >> 1);
        const int sh = 4 * (sub & 1);
FG_UNROLL
        for (int k = 0; k < 8; k++) {
            uint32_t v = (RD::template u32<Q::ALIGN>(qs + 4 * k) >> sh) & 0x0F0F0F0Fu;
            if constexpr (T == FG_TYPE_Q5_K)
                v |= ((RD::template u32<Q::ALIGN>(b + FG_QOFF(T, qh) + 4 * k) >> sub) & 0x01010101u) << 4;
            u.q[k] = v;
        }
        int sc, m;
        fg_q_scale_min_k4<RD>(sub, b + FG_QOFF(T, scales), &sc, &m);
        fg_q_k4_scales(u, (uint16_t)RD::u16(b + FG_QOFF(T, d)), (uint16_t)RD::u16(b + FG_QOFF(T, dmin)), sc, m);
    } else if constexpr (T == FG_TYPE_Q6_K) {
        // element 128n + 32jj + l: nibble (jj >> 1) of ql[64n + 32 (jj & 1) + l], bits 2jj of
        // qh[32n + l] as bits 4-5; value - 32. Scales int8, scales[2 sub + l/16].
        const int n = sub >> 2, jj = sub & 3;
        const uint8_t *ql = b + FG_QOFF(T, ql) + 64 * n + 32 * (jj & 1);
        const uint8_t *qh = b + FG_QOFF(T, qh) + 32 * n;
        const int sh = 4 * (jj >> 1);
FG_UNROLL
        for (int k = 0; k < 8; k++) {
            const uint32_t lo = (RD::template u32<Q::ALIGN>(ql + 4 * k) >> sh) & 0x0F0F0F0Fu;
            const uint32_t hi = (RD::template u32<Q::ALIGN>(qh + 4 * k) >> (2 * jj)) & 0x03030303u;
            u.q[k] = lo | (hi << 4);
        }
        const float d = fg_q_h2f((uint16_t)RD::u16(b + FG_QOFF(T, d)));
        const int s0 = (int)(int8_t)RD::u8(b + FG_QOFF(T, scales) + 2 * sub);
        const int s1 = (int)(int8_t)RD::u8(b + FG_QOFF(T, scales) + 2 * sub + 1);
        u.a_lo = fg_fmul_rn(d, (float)s0);
        u.a_hi = fg_fmul_rn(d, (float)s1);
    }
}

// The exact float values of unit `sub`: out[e] = element 32 sub + e of the block, bit for bit
// the reference dequantizer's.
template <int T, class RD> static FG_HD __forceinline__ void fg_q_dequant_unit(const uint8_t *b, int sub, float *out) {
    typedef fg_qt<T> Q;
    fg_qunit u;
    fg_q_decode<T, RD>(b, sub, u);
FG_UNROLL
    for (int e = 0; e < 32; e++) {
        const int v = (int)(int8_t)(u.q[e >> 2] >> (8 * (e & 3))) - Q::OFF;
        float x = fg_fmul_rn((float)v, e < 16 ? u.a_lo : u.a_hi);
        if constexpr (Q::MIN)
            x = fg_fsub_rn(x, e < 16 ? u.b_lo : u.b_hi);
        out[e] = x;
    }
}

// c + the two int16 of a times the low two int8 of b (dp2a.lo).
static FG_HD __forceinline__ int fg_dp2a_lo(uint32_t a, uint32_t b, int c) {
#if defined(__CUDA_ARCH__) && !defined(__HIPCC__)
    return __dp2a_lo((int)a, (int)b, c);
#else
    return c + (int)(int16_t)(a & 0xFFFFu) * (int)(int8_t)(b & 0xFFu) +
           (int)(int16_t)(a >> 16) * (int)(int8_t)((b >> 8) & 0xFFu);
#endif
}

// ---------------------------------------------------------------- dot with Q8_1 activations
// A Q8_1 activation block (d, s, 32 int8): the bytes, the integer sums of each half, d, and
// the stored s (f16 of d * sum), which the reference's Q4_1/Q5_1 dots use for the min term.
struct fg_q8unit {
    int q[8];
    int sum_lo, sum_hi;
    float d;
    float s; // Q8_1: the block's s; Q8_K: 0 (the K-quants' min terms use exact integer sums)
};

// p: a fg_block_q8_1, 4-aligned.
static FG_HD __forceinline__ void fg_q8_1_load(const uint8_t *p, fg_q8unit &x) {
    x.d = fg_q_h2f((uint16_t)fg_q_ld16(p + offsetof(fg_block_q8_1, d)));
    x.s = fg_q_h2f((uint16_t)fg_q_ld16(p + offsetof(fg_block_q8_1, s)));
FG_UNROLL
    for (int k = 0; k < 8; k++)
        x.q[k] = (int)fg_q_ld32a(p + offsetof(fg_block_q8_1, qs) + 4 * k);
    x.sum_lo = fg_dp4a(0x01010101, x.q[3], fg_dp4a(0x01010101, x.q[2], fg_dp4a(0x01010101, x.q[1], fg_dp4a(0x01010101, x.q[0], 0))));
    x.sum_hi = fg_dp4a(0x01010101, x.q[7], fg_dp4a(0x01010101, x.q[6], fg_dp4a(0x01010101, x.q[5], fg_dp4a(0x01010101, x.q[4], 0))));
}

// Unit j (0..7) of a fg_block_q8_k (the K-quants' activation blocks, as the reference quantizes
// them: one f32 scale per 256): 4-aligned.
static FG_HD __forceinline__ void fg_q8_k_load(const uint8_t *p, int j, fg_q8unit &x) {
    x.d = fg_q_ldf32(p + offsetof(fg_block_q8_k, d));
    x.s = 0.0f;
FG_UNROLL
    for (int k = 0; k < 8; k++)
        x.q[k] = (int)fg_q_ld32a(p + offsetof(fg_block_q8_k, qs) + 32 * j + 4 * k);
    x.sum_lo = fg_dp4a(0x01010101, x.q[3], fg_dp4a(0x01010101, x.q[2], fg_dp4a(0x01010101, x.q[1], fg_dp4a(0x01010101, x.q[0], 0))));
    x.sum_hi = fg_dp4a(0x01010101, x.q[7], fg_dp4a(0x01010101, x.q[6], fg_dp4a(0x01010101, x.q[5], fg_dp4a(0x01010101, x.q[4], 0))));
}

// sum over the unit's 32 elements of (weight value) * (activation value):
//   dx * (a_lo (S_lo - OFF Q_lo) + a_hi (S_hi - OFF Q_hi) - b_lo Q_lo - b_hi Q_hi)
// with S the integer dot of the bytes and Q the sum of the activation bytes of each half;
// Q4_1/Q5_1 take the min term from the block's stored s instead, as the reference does.
template <int T> static FG_HD __forceinline__ float fg_q_dot(const fg_qunit &w, const fg_q8unit &x) {
    typedef fg_qt<T> Q;
    int s_lo = fg_dp4a((int)w.q[0], x.q[0], 0);
    s_lo = fg_dp4a((int)w.q[1], x.q[1], s_lo);
    s_lo = fg_dp4a((int)w.q[2], x.q[2], s_lo);
    s_lo = fg_dp4a((int)w.q[3], x.q[3], s_lo);
    int s_hi = fg_dp4a((int)w.q[4], x.q[4], 0);
    s_hi = fg_dp4a((int)w.q[5], x.q[5], s_hi);
    s_hi = fg_dp4a((int)w.q[6], x.q[6], s_hi);
    s_hi = fg_dp4a((int)w.q[7], x.q[7], s_hi);
    if constexpr (Q::MIN && Q::QK == 32) // Q4_1, Q5_1 as the reference: (d_w d_x) S + m_w s_x
        return (w.a_lo * x.d) * (float)(s_lo + s_hi) - w.b_lo * x.s;
    if constexpr (Q::OFF != 0) {
        s_lo -= Q::OFF * x.sum_lo;
        s_hi -= Q::OFF * x.sum_hi;
    }
    float r;
    if constexpr (Q::SPLIT)
        r = w.a_lo * (float)s_lo + w.a_hi * (float)s_hi;
    else
        r = w.a_lo * (float)(s_lo + s_hi);
    if constexpr (Q::MIN) {
        if constexpr (Q::SPLIT)
            r -= w.b_lo * (float)x.sum_lo + w.b_hi * (float)x.sum_hi;
        else
            r -= w.b_lo * (float)(x.sum_lo + x.sum_hi);
    }
    return r * x.d;
}

#endif // FG_BACKEND_CUDA_QUANT_CUH
