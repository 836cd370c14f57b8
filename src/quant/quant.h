// quant.h - the weight-type traits table: per type its block geometry, the reference
// dequantizer, the reference quantizer and the dot product against an activation row that
// has been converted to the type's `vec_dot_type` (Q8_0 / Q8_1 / Q8_K / F16 / BF16 / F32),
// which is how the reference implementation computes quantized matmuls.
// Block structs are in blocks.h (shared with CUDA). Who calls it: gguf (sizes), backend/cpu,
// synth, tests.
#ifndef FG_QUANT_QUANT_H
#define FG_QUANT_QUANT_H

#include "forge.h"

// dst[0..n) = dequantized src; n a multiple of the block size.
typedef void (*fg_to_float_fn)(const void *src, float *dst, int64_t n);
// Reference quantizer: src[0..n) -> blocks; n a multiple of the block size.
typedef void (*fg_from_float_fn)(const float *src, void *dst, int64_t n);
// *s = dot(x, y) over n elements: x a row of this type, y a row of vec_dot_type.
typedef void (*fg_vec_dot_fn)(int64_t n, float *s, const void *x, const void *y);

typedef struct fg_type_traits {
    const char *name;          // "q4_k"
    int64_t blck_size;         // elements per block
    size_t type_size;          // bytes per block
    bool is_quantized;
    bool is_weight;            // may appear in a model file (false for q8_1/q8_k/i* ...)
    fg_to_float_fn to_float;   // NULL if not supported
    fg_from_float_fn from_float; // reference quantizer; NULL if none
    fg_vec_dot_fn vec_dot;     // NULL if not supported
    uint32_t vec_dot_type;     // activation type vec_dot expects
} fg_type_traits;

// NULL for an unknown or retired id.
const fg_type_traits *fg_type_traits_get(uint32_t type);

#endif // FG_QUANT_QUANT_H
