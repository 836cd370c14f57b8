// half.h - IEEE half and bfloat16 <-> float conversion, shared by the C and CUDA code.
// Round-to-nearest-even on the way down, NaN kept a NaN. Header-only, no globals.
#ifndef FG_BASE_HALF_H
#define FG_BASE_HALF_H

#include <stdint.h>
#include <string.h>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define FG_HD __host__ __device__
#else
#define FG_HD
#endif

typedef uint16_t fg_f16;  // IEEE 754 binary16 bits
typedef uint16_t fg_bf16; // bfloat16 bits

static inline FG_HD float fg_bits_to_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static inline FG_HD uint32_t fg_f32_to_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static inline FG_HD float fg_f16_to_f32(fg_f16 h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t man = h & 0x3ffu;
    uint32_t u;
    if (exp == 0) {
        if (man == 0) {
            u = sign;
        } else { // subnormal: normalise
            int e = -1;
            do {
                e++;
                man <<= 1;
            } while ((man & 0x400u) == 0);
            man &= 0x3ffu;
            u = sign | ((uint32_t)(127 - 15 - e) << 23) | (man << 13);
        }
    } else if (exp == 31) {
        u = sign | 0x7f800000u | (man << 13);
    } else {
        u = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    return fg_bits_to_f32(u);
}

static inline FG_HD fg_f16 fg_f32_to_f16(float f) {
    uint32_t x = fg_f32_to_bits(f);
    uint32_t sign = (x >> 16) & 0x8000u;
    uint32_t absx = x & 0x7fffffffu;
    if (absx > 0x7f800000u) // NaN
        return (fg_f16)(sign | 0x7e00u);
    if (absx >= 0x47800000u) // overflow (>= 65536 after rounding range) -> inf
        return (fg_f16)(sign | 0x7c00u);
    if (absx < 0x38800000u) { // below the smallest normal half: subnormal or zero
        if (absx < 0x33000000u) // < 2^-25: rounds to zero
            return (fg_f16)sign;
        uint32_t e = absx >> 23;
        uint32_t m = (absx & 0x7fffffu) | 0x800000u;
        uint32_t shift = 126 - e; // 14..24 ... position of half subnormal lsb
        uint32_t r = m >> shift;
        uint32_t rem = m & ((1u << shift) - 1);
        uint32_t halfway = 1u << (shift - 1);
        if (rem > halfway || (rem == halfway && (r & 1)))
            r++;
        return (fg_f16)(sign | r);
    }
    // normal: rebias and round mantissa from 23 to 10 bits (carry may bump the exponent)
    uint32_t r = ((absx >> 13) - ((127 - 15) << 10));
    uint32_t rem = absx & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (r & 1)))
        r++;
    if (r >= 0x7c00u)
        return (fg_f16)(sign | 0x7c00u);
    return (fg_f16)(sign | r);
}

static inline FG_HD float fg_bf16_to_f32(fg_bf16 h) { return fg_bits_to_f32((uint32_t)h << 16); }

static inline FG_HD fg_bf16 fg_f32_to_bf16(float f) {
    uint32_t u = fg_f32_to_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) // NaN: keep it quiet
        return (fg_bf16)((u >> 16) | 64);
    u += 0x7fffu + ((u >> 16) & 1); // round to nearest even
    return (fg_bf16)(u >> 16);
}

#endif // FG_BASE_HALF_H
