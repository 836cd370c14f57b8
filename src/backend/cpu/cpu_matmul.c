// cpu_matmul.c - dst[r][o] (+)= vec_dot(w row o, x row r) (+ bias[o]) for every weight type, as
// ggml's CPU mul_mat: each activation row converted ONCE to the weight type's vec_dot_type (F32
// used as is; the forward pass usually hands rows already converted by fg_op_convert), then
// one vec_dot per output, or fg_cpu_gemm's multi-row kernels where fg_cpu_gemm_has_fast says so (bit-identical values; each weight block decoded once per
// several rows). Tiles of (weight rows x activation rows) are taken dynamically by the workers;
// every element's value is independent of the thread count, the tiling and the batch size.
#include "backend/cpu/cpu_internal.h"

#include "base/status.h"
#include "base/util.h"
#include "backend/cpu/cpu_kernels.h"

#include <stdatomic.h>
#include <string.h>

#define ROW_TILE 32      // activation rows per tile
#define QUANT_SERIAL 65536 // activation elements converted on the caller alone below this

typedef struct mm_args {
    const fg_tensor *w;
    const fg_tensor *x;
    fg_tensor *dst;
    const float *bias;       // [n_out] or NULL
    bool accumulate;         // dst += result
    bool use_ref;
    fg_vec_dot_fn vec_dot;
    uint32_t vdt;
    bool gemm;               // tiles go to fg_quant_gemm
    const char *act;         // converted activations (or x's data for F32)
    size_t act_stride;       // bytes between converted rows
    int64_t n_in, n_out, n_rows;
    int64_t o_tile, n_o_tiles, n_r_tiles;
    atomic_long next;        // next tile to take
} mm_args;

static void mm_quant_work(void *p, int ith, int nth) {
    mm_args *a = p;
    int64_t b, e;
    fg_cpu_split(a->n_rows, ith, nth, &b, &e);
    for (int64_t r = b; r < e; r++)
        fg_cpu_quantize_row(a->use_ref, a->vdt, (const float *)((const char *)a->x->data + (size_t)r * a->x->nb[1]),
                        (char *)a->act + (size_t)r * a->act_stride, a->n_in);
}

static void mm_dot_work(void *p, int ith, int nth) {
    mm_args *a = p;
    const int64_t n_tiles = a->n_o_tiles * a->n_r_tiles;
    const size_t wnb = a->w->nb[1], dnb = a->dst->nb[1];
    const char *wdata = a->w->data;
    char *ddata = a->dst->data;
    float tile_buf[ROW_TILE * 64]; // accumulate: one tile's raw dots (o_tile <= 64)
    for (;;) {
        int64_t tile = atomic_fetch_add_explicit(&a->next, 1, memory_order_relaxed);
        if (tile >= n_tiles)
            break;
        int64_t ot = tile / a->n_r_tiles, rt = tile % a->n_r_tiles;
        int64_t o0 = ot * a->o_tile, o1 = FG_MIN(o0 + a->o_tile, a->n_out);
        int64_t r0 = rt * ROW_TILE, r1 = FG_MIN(r0 + ROW_TILE, a->n_rows);
        if (a->gemm) {
            const size_t dsf = dnb / sizeof(float);
            float *d0 = (float *)(ddata + (size_t)r0 * dnb) + o0;
            // the kernel writes the raw dots; bias and accumulation follow (same float ops as
            // the vec_dot path below)
            float *t0 = a->accumulate ? tile_buf : d0;
            size_t ts = a->accumulate ? (size_t)(o1 - o0) : dsf;
            // cannot fail: the type and the row length were checked by fg_op_matmul
            (void)fg_cpu_gemm(a->use_ref, a->w->type, a->n_in, o1 - o0, r1 - r0, wdata + (size_t)o0 * wnb,
                              wnb, a->act + (size_t)r0 * a->act_stride, a->act_stride, t0, ts);
            for (int64_t r = 0; r < r1 - r0; r++)
                for (int64_t o = 0; o < o1 - o0; o++) {
                    float v = t0[r * ts + o];
                    if (a->bias)
                        v += a->bias[o0 + o];
                    if (a->accumulate)
                        d0[r * dsf + o] += v;
                    else
                        d0[r * dsf + o] = v;
                }
            continue;
        }
        for (int64_t o = o0; o < o1; o++) {
            const char *wr = wdata + (size_t)o * wnb;
            const float b = a->bias ? a->bias[o] : 0.0f;
            for (int64_t r = r0; r < r1; r++) {
                float s;
                a->vec_dot(a->n_in, &s, wr, a->act + (size_t)r * a->act_stride);
                float *d = (float *)(ddata + (size_t)r * dnb) + o;
                float v = a->bias ? s + b : s;
                *d = a->accumulate ? *d + v : v;
            }
        }
    }
    (void)ith;
    (void)nth;
}

fg_status fg_cpu_matmul(fg_backend *be, fg_tensor *dst, const fg_tensor *w, const fg_tensor *x,
                        const fg_tensor *bias, bool accumulate) {
    fg_cpu *c = fg_cpu_ctx(be);
    const fg_type_traits *tr = fg_cpu_traits(w->type, c->use_ref);
    const uint32_t vdt = tr->vec_dot_type;
    const fg_type_traits *vt = fg_type_traits_get(vdt);
    const int64_t n_in = w->ne[0], n_out = w->ne[1], n_rows = x->ne[1];
    FG_ASSERT(tr->vec_dot && vt && (x->type == FG_TYPE_F32 || x->type == vdt));

    mm_args a;
    memset(&a, 0, sizeof(a));
    a.w = w;
    a.x = x;
    a.dst = dst;
    a.bias = bias ? (const float *)bias->data : NULL;
    a.accumulate = accumulate;
    a.vec_dot = tr->vec_dot;
    a.vdt = vdt;
    a.use_ref = c->use_ref;
    a.gemm = dst->nb[1] % sizeof(float) == 0 && fg_cpu_gemm_has_fast(c->use_ref, w->type, n_rows);
    a.n_in = n_in;
    a.n_out = n_out;
    a.n_rows = n_rows;
    if (vdt == FG_TYPE_F32 || x->type == vdt) { // used as given (converted once by the caller)
        a.act = x->data;
        a.act_stride = x->nb[1];
    } else {
        a.act_stride = (size_t)(n_in / vt->blck_size) * vt->type_size;
        a.act_stride = (a.act_stride + 63) / 64 * 64;
        size_t need;
        if (!fg_mul_size(a.act_stride, (size_t)n_rows, &need))
            return FG_FAIL(FG_ERR_INVALID_ARG, "matmul: activation scratch size overflows");
        FG_TRY(fg_cpu_scratch_reserve(&c->act, &c->act_size, need, "matmul activation"));
        a.act = c->act;
        fg_tp_run(c->tp, mm_quant_work, &a, n_rows * n_in < QUANT_SERIAL ? 1 : 0);
    }
    // Output-row tile: decode (few rows) wants many small tiles for balance; prefill wants
    // tiles big enough to amortise but still several per thread.
    const int nth = c->n_threads;
    a.n_r_tiles = (n_rows + ROW_TILE - 1) / ROW_TILE;
    int64_t o_tile = n_out / ((int64_t)nth * 8 / (a.n_r_tiles < 8 ? a.n_r_tiles : 8) + 1);
    o_tile = FG_MAX(4, FG_MIN(o_tile, 64)) / 4 * 4; // whole 4-row groups of the gemm kernels
    a.o_tile = o_tile;
    a.n_o_tiles = (n_out + o_tile - 1) / o_tile;
    atomic_init(&a.next, 0);
    int64_t work = n_rows * n_out * (n_in / 32 + 1);
    fg_tp_run(c->tp, mm_dot_work, &a, work < 16384 ? 1 : 0);
    return FG_OK;
}
