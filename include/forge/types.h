// forge/types.h - weight types: GGUF/ggml type ids (frozen) and their public traits.
// The block layouts and kernels live in src/quant (blocks.h is shared by C and CUDA).
#ifndef FORGE_TYPES_H
#define FORGE_TYPES_H

#include "forge/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum fg_type {
    FG_TYPE_F32 = 0,
    FG_TYPE_F16 = 1,
    FG_TYPE_Q4_0 = 2,
    FG_TYPE_Q4_1 = 3,
    // 4, 5: retired (Q4_2, Q4_3) - refused
    FG_TYPE_Q5_0 = 6,
    FG_TYPE_Q5_1 = 7,
    FG_TYPE_Q8_0 = 8,
    FG_TYPE_Q8_1 = 9,  // activations only
    FG_TYPE_Q2_K = 10,
    FG_TYPE_Q3_K = 11,
    FG_TYPE_Q4_K = 12,
    FG_TYPE_Q5_K = 13,
    FG_TYPE_Q6_K = 14,
    FG_TYPE_Q8_K = 15, // activations only
    FG_TYPE_I8 = 24,
    FG_TYPE_I16 = 25,
    FG_TYPE_I32 = 26,
    FG_TYPE_BF16 = 30,
    FG_TYPE_MXFP4 = 39,
    FG_TYPE_COUNT = 40
} fg_type;

// True when the traits table knows the id as a storable weight type.
bool fg_type_known(uint32_t type);
const char *fg_type_name(uint32_t type);      // "q4_k"; "unknown" for unknown ids
int64_t fg_type_block_size(uint32_t type);     // elements per block (0 if unknown)
size_t fg_type_block_bytes(uint32_t type);     // bytes per block (0 if unknown)
// Parses a name ("q4_k", "Q4_K", "f16", "bf16", "mxfp4"); FG_ERR_INVALID_ARG if unknown.
fg_status fg_type_from_name(const char *name, uint32_t *out);
// Bytes of a row of ne0 elements: FG_ERR_FORMAT if ne0 is not a multiple of the block size.
fg_status fg_type_row_bytes(uint32_t type, int64_t ne0, uint64_t *out);

#ifdef __cplusplus
}
#endif

#endif // FORGE_TYPES_H
