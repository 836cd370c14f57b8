// types.c - the weight-type traits table and the public fg_type_* queries.
// One row per GGUF type id; kernels are filled in by quant_ref.c (reference) and the
// backends' fast paths. Ids 4 and 5 (retired Q4_2/Q4_3) and unknown ids have no row.
#include "quant/quant.h"

#include "base/status.h"

#include <ctype.h>
#include <string.h>
#include <strings.h>

// Kernels defined in quant_ref.c (NULL-safe: a row without kernels can still be sized).
extern const fg_type_traits *fg_quant_ref_table(void);

const fg_type_traits *fg_type_traits_get(uint32_t type) {
    if (type >= FG_TYPE_COUNT)
        return NULL;
    const fg_type_traits *t = &fg_quant_ref_table()[type];
    return t->name ? t : NULL;
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
