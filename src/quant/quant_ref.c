// quant_ref.c - reference (scalar) kernels per weight type: dequantize, quantize, vec_dot.
// Placeholder table with the block geometry only; the quant module fills in the kernels.
#include "quant/quant.h"

const fg_type_traits *fg_quant_ref_table(void);

static const fg_type_traits k_table[FG_TYPE_COUNT] = {
    [FG_TYPE_F32] = {"f32", 1, 4, false, true, NULL, NULL, NULL, FG_TYPE_F32},
    [FG_TYPE_F16] = {"f16", 1, 2, false, true, NULL, NULL, NULL, FG_TYPE_F16},
    [FG_TYPE_Q4_0] = {"q4_0", 32, 18, true, true, NULL, NULL, NULL, FG_TYPE_Q8_0},
    [FG_TYPE_Q4_1] = {"q4_1", 32, 20, true, true, NULL, NULL, NULL, FG_TYPE_Q8_1},
    [FG_TYPE_Q5_0] = {"q5_0", 32, 22, true, true, NULL, NULL, NULL, FG_TYPE_Q8_0},
    [FG_TYPE_Q5_1] = {"q5_1", 32, 24, true, true, NULL, NULL, NULL, FG_TYPE_Q8_1},
    [FG_TYPE_Q8_0] = {"q8_0", 32, 34, true, true, NULL, NULL, NULL, FG_TYPE_Q8_0},
    [FG_TYPE_Q8_1] = {"q8_1", 32, 36, true, false, NULL, NULL, NULL, FG_TYPE_Q8_1},
    [FG_TYPE_Q2_K] = {"q2_k", 256, 84, true, true, NULL, NULL, NULL, FG_TYPE_Q8_K},
    [FG_TYPE_Q3_K] = {"q3_k", 256, 110, true, true, NULL, NULL, NULL, FG_TYPE_Q8_K},
    [FG_TYPE_Q4_K] = {"q4_k", 256, 144, true, true, NULL, NULL, NULL, FG_TYPE_Q8_K},
    [FG_TYPE_Q5_K] = {"q5_k", 256, 176, true, true, NULL, NULL, NULL, FG_TYPE_Q8_K},
    [FG_TYPE_Q6_K] = {"q6_k", 256, 210, true, true, NULL, NULL, NULL, FG_TYPE_Q8_K},
    [FG_TYPE_Q8_K] = {"q8_k", 256, 292, true, false, NULL, NULL, NULL, FG_TYPE_Q8_K},
    [FG_TYPE_I8] = {"i8", 1, 1, false, false, NULL, NULL, NULL, FG_TYPE_I8},
    [FG_TYPE_I16] = {"i16", 1, 2, false, false, NULL, NULL, NULL, FG_TYPE_I16},
    [FG_TYPE_I32] = {"i32", 1, 4, false, false, NULL, NULL, NULL, FG_TYPE_I32},
    [FG_TYPE_BF16] = {"bf16", 1, 2, false, true, NULL, NULL, NULL, FG_TYPE_BF16},
    [FG_TYPE_MXFP4] = {"mxfp4", 32, 17, true, true, NULL, NULL, NULL, FG_TYPE_Q8_0},
};

const fg_type_traits *fg_quant_ref_table(void) { return k_table; }
