// blocks.h - packed block structs of the GGUF/ggml weight and activation types, byte for byte
// as in GGUF files (little endian), with a size check on each. Shared by the C11 code and the
// CUDA C++ code: plain structs of uint8_t/int8_t/int16_t/uint16_t arrays, no unions, no
// bitfields. Halves are fg_f16 bits (base/half.h). Not here: kernels (quant_*.c, cuda/).
#ifndef FG_QUANT_BLOCKS_H
#define FG_QUANT_BLOCKS_H

#include <stdint.h>

#include "base/half.h"

#ifdef __cplusplus
#define FG_STATIC_ASSERT(c, m) static_assert(c, m)
#else
#define FG_STATIC_ASSERT(c, m) _Static_assert(c, m)
#endif

#define FG_QK4_0 32
#define FG_QK4_1 32
#define FG_QK5_0 32
#define FG_QK5_1 32
#define FG_QK8_0 32
#define FG_QK8_1 32
#define FG_QK_MXFP4 32
#define FG_QK_K 256
#define FG_K_SCALE_SIZE 12

// Q4_0: x = (q - 8) * d. qs[j] low nibble = element j, high nibble = element j + 16.
typedef struct fg_block_q4_0 {
    fg_f16 d;
    uint8_t qs[FG_QK4_0 / 2];
} fg_block_q4_0;
FG_STATIC_ASSERT(sizeof(fg_block_q4_0) == 18, "q4_0 block size");

// Q4_1: x = q * d + m; nibble order as Q4_0.
typedef struct fg_block_q4_1 {
    fg_f16 d;
    fg_f16 m;
    uint8_t qs[FG_QK4_1 / 2];
} fg_block_q4_1;
FG_STATIC_ASSERT(sizeof(fg_block_q4_1) == 20, "q4_1 block size");

// Q5_0: x = (q - 16) * d; q = nibble | bit j of qh (little-endian u32) << 4 for element j.
typedef struct fg_block_q5_0 {
    fg_f16 d;
    uint8_t qh[4];
    uint8_t qs[FG_QK5_0 / 2];
} fg_block_q5_0;
FG_STATIC_ASSERT(sizeof(fg_block_q5_0) == 22, "q5_0 block size");

// Q5_1: x = q * d + m; bits as Q5_0.
typedef struct fg_block_q5_1 {
    fg_f16 d;
    fg_f16 m;
    uint8_t qh[4];
    uint8_t qs[FG_QK5_1 / 2];
} fg_block_q5_1;
FG_STATIC_ASSERT(sizeof(fg_block_q5_1) == 24, "q5_1 block size");

// Q8_0: x = q * d.
typedef struct fg_block_q8_0 {
    fg_f16 d;
    int8_t qs[FG_QK8_0];
} fg_block_q8_0;
FG_STATIC_ASSERT(sizeof(fg_block_q8_0) == 34, "q8_0 block size");

// Q8_1 (activations): x = q * d; s = d * sum(q).
typedef struct fg_block_q8_1 {
    fg_f16 d;
    fg_f16 s;
    int8_t qs[FG_QK8_1];
} fg_block_q8_1;
FG_STATIC_ASSERT(sizeof(fg_block_q8_1) == 36, "q8_1 block size");

// MXFP4: x = kvalue[nibble] * 2^(e - 127) / 2, kvalues = 2 * E2M1 {0,.5,1,1.5,2,3,4,6, -...}.
// qs[j] low nibble = element j, high nibble = element j + 16.
typedef struct fg_block_mxfp4 {
    uint8_t e; // E8M0 exponent
    uint8_t qs[FG_QK_MXFP4 / 2];
} fg_block_mxfp4;
FG_STATIC_ASSERT(sizeof(fg_block_mxfp4) == 17, "mxfp4 block size");

// Q2_K: 16 sub-blocks of 16; x = d * (sc & 15) * q - dmin * (sc >> 4), q 2 bits.
typedef struct fg_block_q2_k {
    uint8_t scales[FG_QK_K / 16]; // low nibble scale, high nibble min
    uint8_t qs[FG_QK_K / 4];      // 2-bit quants
    fg_f16 d;
    fg_f16 dmin;
} fg_block_q2_k;
FG_STATIC_ASSERT(sizeof(fg_block_q2_k) == 84, "q2_k block size");

// Q3_K: 16 sub-blocks of 16; x = d * (sc - 32) * (q2 - (hbit ? 0 : 4)), sc 6 bits.
typedef struct fg_block_q3_k {
    uint8_t hmask[FG_QK_K / 8]; // high bit
    uint8_t qs[FG_QK_K / 4];    // low 2 bits
    uint8_t scales[12];         // 16 x 6-bit scales
    fg_f16 d;
} fg_block_q3_k;
FG_STATIC_ASSERT(sizeof(fg_block_q3_k) == 110, "q3_k block size");

// Q4_K: 8 sub-blocks of 32; x = d * sc * q - dmin * m, sc/m 6 bits packed in scales[12].
typedef struct fg_block_q4_k {
    fg_f16 d;
    fg_f16 dmin;
    uint8_t scales[FG_K_SCALE_SIZE];
    uint8_t qs[FG_QK_K / 2];
} fg_block_q4_k;
FG_STATIC_ASSERT(sizeof(fg_block_q4_k) == 144, "q4_k block size");

// Q5_K: as Q4_K with a fifth bit from qh.
typedef struct fg_block_q5_k {
    fg_f16 d;
    fg_f16 dmin;
    uint8_t scales[FG_K_SCALE_SIZE];
    uint8_t qh[FG_QK_K / 8];
    uint8_t qs[FG_QK_K / 2];
} fg_block_q5_k;
FG_STATIC_ASSERT(sizeof(fg_block_q5_k) == 176, "q5_k block size");

// Q6_K: 16 sub-blocks of 16; x = d * sc * (q - 32), q 6 bits (4 in ql, 2 in qh), sc int8.
typedef struct fg_block_q6_k {
    uint8_t ql[FG_QK_K / 2];
    uint8_t qh[FG_QK_K / 4];
    int8_t scales[FG_QK_K / 16];
    fg_f16 d;
} fg_block_q6_k;
FG_STATIC_ASSERT(sizeof(fg_block_q6_k) == 210, "q6_k block size");

// Q8_K (activations): x = q * d (f32 d); bsums = sums of each 16 quants.
typedef struct fg_block_q8_k {
    float d;
    int8_t qs[FG_QK_K];
    int16_t bsums[FG_QK_K / 16];
} fg_block_q8_k;
FG_STATIC_ASSERT(sizeof(fg_block_q8_k) == 292, "q8_k block size");

// The E2M1 value table doubled (ggml's kvalues_mxfp4), used with the halved E8M0 scale.
static const int8_t fg_kvalues_mxfp4[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};

// 2^(e - 127) / 2 as a float (e = 0, 1 give subnormals).
static inline FG_HD float fg_e8m0_to_f32_half(uint8_t e) {
    uint32_t bits = e < 2 ? (0x00200000u << e) : ((uint32_t)(e - 1) << 23);
    return fg_bits_to_f32(bits);
}

#endif // FG_QUANT_BLOCKS_H
