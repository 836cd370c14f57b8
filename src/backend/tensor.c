// tensor.c - the fg_tensor helpers of backend.h shared by every backend and the model:
// contiguous views, strided row views, byte extents and the contiguity test. Pure arithmetic on the shape;
// never touches tensor data. Who calls it: backends, src/model, tests.
#include "backend/backend.h"

#include "quant/quant.h"

fg_tensor fg_tensor_view(fg_buffer *buf, void *base, size_t off, uint32_t type, int n_dims,
                         const int64_t *ne) {
    fg_tensor t;
    const fg_type_traits *tr = fg_type_traits_get(type);
    int64_t bs = tr ? tr->blck_size : 1;
    size_t ts = tr ? tr->type_size : 1;
    t.type = type;
    for (int i = 0; i < 4; i++)
        t.ne[i] = (i < n_dims && ne) ? ne[i] : 1;
    t.nb[0] = ts;
    t.nb[1] = ts * (size_t)(t.ne[0] / bs);
    for (int i = 2; i < 4; i++)
        t.nb[i] = t.nb[i - 1] * (size_t)t.ne[i - 1];
    t.data = base ? (char *)base + off : NULL;
    t.buf = buf;
    return t;
}

size_t fg_tensor_nbytes(const fg_tensor *t) {
    for (int i = 0; i < 4; i++)
        if (t->ne[i] <= 0)
            return 0;
    const fg_type_traits *tr = fg_type_traits_get(t->type);
    int64_t bs = tr ? tr->blck_size : 1;
    size_t n;
    if (bs == 1) {
        n = t->nb[0];
        for (int i = 0; i < 4; i++)
            n += (size_t)(t->ne[i] - 1) * t->nb[i];
    } else {
        n = (size_t)(t->ne[0] / bs) * t->nb[0];
        for (int i = 1; i < 4; i++)
            n += (size_t)(t->ne[i] - 1) * t->nb[i];
    }
    return n;
}

// Dimensions of extent 1 may carry any stride (a row view of a larger matrix is contiguous).
bool fg_tensor_is_contiguous(const fg_tensor *t) {
    const fg_type_traits *tr = fg_type_traits_get(t->type);
    if (!tr)
        return false;
    size_t expect = tr->type_size;
    if (t->nb[0] != expect)
        return false;
    expect = tr->type_size * (size_t)(t->ne[0] / tr->blck_size);
    for (int i = 1; i < 4; i++) {
        if (t->ne[i] != 1 && t->nb[i] != expect)
            return false;
        expect *= (size_t)t->ne[i];
    }
    return true;
}

fg_tensor fg_tensor_rows(const fg_tensor *t, size_t off, int64_t cols, int64_t rows, size_t nb1) {
    fg_tensor v = *t;
    v.data = (char *)t->data + off;
    v.ne[0] = cols;
    v.ne[1] = rows;
    v.ne[2] = v.ne[3] = 1;
    v.nb[0] = sizeof(float);
    v.nb[1] = nb1;
    v.nb[2] = v.nb[3] = nb1 * (size_t)rows;
    return v;
}
