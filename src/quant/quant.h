// quant.h - the weight-type traits table: per type its block geometry, the reference
// dequantizer, the reference quantizer and the dot product against an activation row that
// has been converted to the type's `vec_dot_type` (Q8_0 / Q8_1 / Q8_K / F16 / BF16 / F32),
// which is how the reference implementation computes quantized matmuls.
// Block structs are in blocks.h (shared with CUDA). Who calls it: gguf (sizes), the backends,
// synth, tests.
#ifndef FG_QUANT_QUANT_H
#define FG_QUANT_QUANT_H

#include "forge/types.h"

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

// NULL for an unknown or retired id. The kernels are the scalar reference (the oracle every
// fast path is tested against); fg_type_traits_ref is the same table under its older name.
// The CPU backend's SIMD kernels: src/backend/cpu/cpu_kernels.h.
const fg_type_traits *fg_type_traits_get(uint32_t type);
const fg_type_traits *fg_type_traits_ref(uint32_t type);

// Converts an activation row x[0..n) to vec_dot_type (Q8_0, Q8_1, Q8_K, F16, BF16 or F32);
// n a multiple of its block size; other types are a bug (asserts). Bit-identical to what
// ggml's x86 CPU backend does before its dot products (which produced the goldens):
// Q8_0/Q8_1 as its AVX2 quantize_row_q8_0/q8_1 (multiplier 127/amax, ties to even; NOT the
// traits' from_float, which is ggml's *_ref: 1/(amax/127), ties away from zero), Q8_K as
// quantize_row_q8_K_ref, F16/BF16 round to nearest even. Scalar code.
void fg_quantize_row(uint32_t vec_dot_type, const float *x, void *y, int64_t n);

// Bytes of n elements of a type (n a multiple of its block size); 0 for an unknown type.
size_t fg_type_row_size_n(uint32_t type, int64_t n);

#endif // FG_QUANT_QUANT_H
