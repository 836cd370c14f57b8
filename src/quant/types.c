// types.c - the public fg_type_* queries over the traits table and the reference activation
// quantizer fg_quantize_row. The table and the scalar kernels live in quant_ref.c and
// quant_kquants.c; the CPU backend's SIMD versions in src/backend/cpu. Ids 4 and 5 (retired
// Q4_2/Q4_3) and unknown ids have no row.
#include "quant/quant.h"
#include "quant/quant_internal.h"

#include "base/status.h"

#include <ctype.h>
#include <string.h>
#include <strings.h>

// The table and kernels are defined in quant_ref.c.
extern const fg_type_traits *fg_quant_ref_table(void);

const fg_type_traits *fg_type_traits_ref(uint32_t type) {
    if (type >= FG_TYPE_COUNT)
        return NULL;
    const fg_type_traits *t = &fg_quant_ref_table()[type];
    return t->name ? t : NULL;
}

const fg_type_traits *fg_type_traits_get(uint32_t type) { return fg_type_traits_ref(type); }

void fg_quantize_row(uint32_t vec_dot_type, const float *x, void *y, int64_t n) {
    FG_ASSERT(n >= 0);
    switch (vec_dot_type) {
    case FG_TYPE_Q8_0:
        FG_ASSERT(n % FG_QK8_0 == 0);
        fg_quant_q8_0_act(x, y, n);
        return;
    case FG_TYPE_Q8_1:
        FG_ASSERT(n % FG_QK8_1 == 0);
        fg_quant_q8_1_act(x, y, n);
        return;
    case FG_TYPE_F32:
    case FG_TYPE_F16:
    case FG_TYPE_BF16:
    case FG_TYPE_Q8_K: {
        const fg_type_traits *t = fg_type_traits_get(vec_dot_type);
        FG_ASSERT(n % t->blck_size == 0);
        t->from_float(x, y, n);
        return;
    }
    default:
        FG_ASSERT(!"fg_quantize_row: not an activation type");
    }
}

size_t fg_type_row_size_n(uint32_t type, int64_t n) {
    const fg_type_traits *t = fg_type_traits_get(type);
    if (!t || n < 0)
        return 0;
    return (size_t)(n / t->blck_size) * t->type_size;
}

bool fg_type_known(uint32_t type) {
    const fg_type_traits *t = fg_type_traits_get(type);
    return t && t->is_weight;
}

const char *fg_type_name(uint32_t type) {
    const fg_type_traits *t = fg_type_traits_get(type);
    return t ? t->name : "unknown";
}

int64_t fg_type_block_size(uint32_t type) {
    const fg_type_traits *t = fg_type_traits_get(type);
    return t ? t->blck_size : 0;
}

size_t fg_type_block_bytes(uint32_t type) {
    const fg_type_traits *t = fg_type_traits_get(type);
    return t ? t->type_size : 0;
}

fg_status fg_type_from_name(const char *name, uint32_t *out) {
    for (uint32_t i = 0; i < FG_TYPE_COUNT; i++) {
        const fg_type_traits *t = fg_type_traits_get(i);
        if (t && t->is_weight && strcasecmp(t->name, name) == 0) {
            *out = i;
            return FG_OK;
        }
    }
    return FG_FAIL(FG_ERR_INVALID_ARG, "unknown weight type '%s'", name);
}

fg_status fg_type_row_bytes(uint32_t type, int64_t ne0, uint64_t *out) {
    const fg_type_traits *t = fg_type_traits_get(type);
    if (!t)
        return FG_FAIL(FG_ERR_UNSUPPORTED, "unknown weight type id %u", type);
    if (ne0 < 0 || ne0 % t->blck_size != 0)
        return FG_FAIL(FG_ERR_FORMAT, "row of %lld elements is not a multiple of the %s block size %lld",
                       (long long)ne0, t->name, (long long)t->blck_size);
    *out = (uint64_t)(ne0 / t->blck_size) * t->type_size;
    return FG_OK;
}
