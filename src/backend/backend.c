// backend.c - the checked entry points of the backend interface (backend.h): the step is
// validated once at fg_step_begin (ids, positions, sequences, page tables against the KV view
// on its first use in the step), each op's shapes in O(1) by its fg_op_* wrapper, and the
// fused ops are composed here when a backend does not provide them. Backends then trust what
// they are given. Also the public backend queries (name, describe, memory) and destroy.
// Who calls it: the forward pass, the KV store, tests, benchmarks.
#include "backend/backend.h"

#include "backend/comm.h"
#include "base/status.h"
#include "base/util.h"
#include "quant/quant.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const char *const k_op_names[FG_OP_COUNT] = {
    [FG_OP_GET_ROWS] = "get_rows",     [FG_OP_GATHER_OUT] = "gather_out", [FG_OP_RMSNORM] = "rmsnorm",
    [FG_OP_CONVERT] = "convert",       [FG_OP_MATMUL] = "matmul",         [FG_OP_ADD] = "add",
    [FG_OP_SWIGLU] = "swiglu",         [FG_OP_ROPE] = "rope",             [FG_OP_KV_STORE] = "kv_store",
    [FG_OP_ATTENTION] = "attention",   [FG_OP_KV_COPY_PAGE] = "kv_copy_page",
    [FG_OP_CHECK_FINITE] = "check_finite", [FG_OP_ALL_REDUCE] = "all_reduce", [FG_OP_SAMPLE] = "sample",
    [FG_OP_LAYERNORM] = "layernorm",   [FG_OP_GELU] = "gelu",             [FG_OP_ADD_ROWS] = "add_rows",
    [FG_OP_POOL] = "pool",
};

const char *fg_op_name(fg_op op) { return (unsigned)op < FG_OP_COUNT ? k_op_names[op] : "unknown"; }

// ---------------------------------------------------------------- public queries
void fg_backend_destroy(fg_backend *be) {
    if (be)
        be->ops->destroy(be);
}

const char *fg_backend_name(const fg_backend *be) { return be ? be->ops->name : "none"; }

const char *fg_backend_describe(const fg_backend *be) {
    if (!be)
        return "none";
    return be->ops->describe ? be->ops->describe((fg_backend *)be) : be->ops->name;
}

fg_status fg_backend_mem_info(fg_backend *be, uint64_t *free_bytes, uint64_t *total_bytes) {
    if (!be || !free_bytes || !total_bytes)
        return FG_FAIL(FG_ERR_INVALID_ARG, "fg_backend_mem_info: backend and outputs are required");
    return be->ops->mem_info(be, free_bytes, total_bytes);
}

fg_status fg_backend_copy_bandwidth(fg_backend *be, size_t bytes, double *gb_per_s) {
    if (!be || !gb_per_s || bytes == 0)
        return FG_FAIL(FG_ERR_INVALID_ARG, "copy_bandwidth: backend, size and output are required");
    if (!be->ops->copy_bandwidth)
        return FG_FAIL(FG_ERR_UNSUPPORTED, "copy_bandwidth: the %s backend cannot measure it", be->ops->name);
    return be->ops->copy_bandwidth(be, bytes, gb_per_s);
}

bool fg_backend_supports(fg_backend *be, fg_op op, uint32_t type) {
    return (unsigned)op < FG_OP_COUNT && be->ops->supports(be, op, type);
}

uint32_t fg_backend_act_type(fg_backend *be, uint32_t wtype, int64_t n_rows) {
    return be->ops->act_type(be, wtype, n_rows);
}

// ---------------------------------------------------------------- shape checks
// An F32 activation tensor [rows][cols] with contiguous rows (nb[0] = 4, nb[1] >= 4*cols).
static fg_status check_f32_rows(const char *op, const char *name, const fg_tensor *t, int64_t cols,
                                int64_t rows) {
    if (!t || !t->data)
        return FG_FAIL(FG_ERR_INVALID_ARG, "%s: %s is NULL", op, name);
    if (t->type != FG_TYPE_F32)
        return FG_FAIL(FG_ERR_INVALID_ARG, "%s: %s must be f32, found %s", op, name, fg_type_name(t->type));
    if (t->ne[0] != cols || t->ne[1] != rows || t->ne[2] != 1 || t->ne[3] != 1)
        return FG_FAIL(FG_ERR_INVALID_ARG,
                       "%s: %s has shape [%lld,%lld,%lld,%lld], expected [%lld][%lld] (rows x cols)", op, name,
                       (long long)t->ne[3], (long long)t->ne[2], (long long)t->ne[1], (long long)t->ne[0],
                       (long long)rows, (long long)cols);
    if (t->nb[0] != sizeof(float) || (rows > 1 && t->nb[1] < (size_t)cols * sizeof(float)))
        return FG_FAIL(FG_ERR_INVALID_ARG, "%s: %s rows are not contiguous (nb[0]=%zu, nb[1]=%zu)", op, name,
                       t->nb[0], t->nb[1]);
    return FG_OK;
}

// An F32 tensor of rows [ne2][ne1][cols]: nb[0] = 4, rows of cols floats that do not overlap.
static fg_status check_f32_3d(const char *op, const char *name, const fg_tensor *t, int64_t cols,
                              int64_t ne1, int64_t ne2) {
    if (!t || !t->data)
        return FG_FAIL(FG_ERR_INVALID_ARG, "%s: %s is NULL", op, name);
    if (t->type != FG_TYPE_F32)
        return FG_FAIL(FG_ERR_INVALID_ARG, "%s: %s must be f32, found %s", op, name, fg_type_name(t->type));
    if (t->ne[0] != cols || t->ne[1] != ne1 || t->ne[2] != ne2 || t->ne[3] != 1)
        return FG_FAIL(FG_ERR_INVALID_ARG,
                       "%s: %s has shape [%lld,%lld,%lld,%lld], expected [%lld][%lld][%lld]", op, name,
                       (long long)t->ne[3], (long long)t->ne[2], (long long)t->ne[1], (long long)t->ne[0],
                       (long long)ne2, (long long)ne1, (long long)cols);
    if (t->nb[0] != sizeof(float) || (ne1 > 1 && t->nb[1] < (size_t)cols * sizeof(float)) ||
        (ne2 > 1 && t->nb[2] < (size_t)ne1 * t->nb[1]))
        return FG_FAIL(FG_ERR_INVALID_ARG, "%s: %s rows overlap (nb = %zu, %zu, %zu)", op, name, t->nb[0],
                       t->nb[1], t->nb[2]);
    return FG_OK;
}

static fg_status need_step(fg_backend *be, const char *op) {
    if (!be->state.active)
        return FG_FAIL(FG_ERR_INVALID_ARG, "%s: no step set (call step_begin first)", op);
    return FG_OK;
}

static fg_status need_no_step(fg_backend *be, const char *op) {
    if (be->state.active)
        return FG_FAIL(FG_ERR_INVALID_ARG, "%s: not allowed inside a step (call step_end first)", op);
    return FG_OK;
}

// Geometry of a KV view (O(1)), then, once per step and view, every page a step token may touch.
static fg_status check_kv(fg_backend *be, const char *op, const fg_kv_view *kv, int32_t layer, bool pages) {
    if (!kv)
        return FG_FAIL(FG_ERR_INVALID_ARG, "%s: kv view is NULL", op);
    if (!fg_backend_supports(be, FG_OP_KV_STORE, kv->type))
        return FG_FAIL(FG_ERR_INVALID_ARG, "%s: kv type must be f16, f32 or q8_0, found %s", op,
                       fg_type_name(kv->type));
    if (kv->n_layer < 1 || kv->n_pages < 1 || kv->page_size < 1 || kv->n_head_kv < 1 || kv->head_dim < 1)
        return FG_FAIL(FG_ERR_INVALID_ARG,
                       "%s: kv geometry n_layer=%d n_pages=%d page_size=%d n_head_kv=%d head_dim=%d", op,
                       kv->n_layer, kv->n_pages, kv->page_size, kv->n_head_kv, kv->head_dim);
    if (kv->head_dim % fg_type_block_size(kv->type) != 0)
        return FG_FAIL(FG_ERR_UNSUPPORTED, "%s: a %s kv cache needs head_dim a multiple of %lld, found %d", op,
                       fg_type_name(kv->type), (long long)fg_type_block_size(kv->type), kv->head_dim);
    if (layer < 0 || layer >= kv->n_layer)
        return FG_FAIL(FG_ERR_INVALID_ARG, "%s: layer %d out of range [0, %d)", op, layer, kv->n_layer);
    const int64_t ne[4] = {(int64_t)kv->n_head_kv * kv->head_dim, kv->page_size, kv->n_pages, kv->n_layer};
    const fg_tensor *tt[2] = {&kv->k, &kv->v};
    for (int i = 0; i < 2; i++) {
        const fg_tensor *t = tt[i];
        if (!t->data || t->type != kv->type || t->ne[0] != ne[0] || t->ne[1] != ne[1] || t->ne[2] != ne[2] ||
            t->ne[3] != ne[3])
            return FG_FAIL(FG_ERR_INVALID_ARG,
                           "%s: kv %s tensor (type %s, ne [%lld,%lld,%lld,%lld]) does not match the view "
                           "(type %s, ne [%lld,%lld,%lld,%lld])",
                           op, i ? "v" : "k", fg_type_name(t->type), (long long)t->ne[0], (long long)t->ne[1],
                           (long long)t->ne[2], (long long)t->ne[3], fg_type_name(kv->type), (long long)ne[0],
                           (long long)ne[1], (long long)ne[2], (long long)ne[3]);
    }
    if (!pages || be->state.kv_checked == (const void *)kv->k.data)
        return FG_OK;
    const fg_step *st = &be->state.step;
    for (int32_t s = 0; s < st->n_seqs; s++) {
        int64_t need = ((int64_t)st->seq_n_kv[s] + kv->page_size - 1) / kv->page_size;
        if (need > st->max_pages)
            return FG_FAIL(FG_ERR_INVALID_ARG,
                           "%s: sequence %d needs %lld pages for n_kv=%d (page_size %d), page table rows hold %d",
                           op, s, (long long)need, st->seq_n_kv[s], kv->page_size, st->max_pages);
        const int32_t *pt = st->page_table + (size_t)s * st->max_pages;
        for (int64_t j = 0; j < need; j++)
            if (pt[j] < 0 || pt[j] >= kv->n_pages)
                return FG_FAIL(FG_ERR_INVALID_ARG, "%s: sequence %d page_table[%lld] = %d out of range [0, %d)",
                               op, s, (long long)j, pt[j], kv->n_pages);
    }
    be->state.kv_checked = kv->k.data;
    return FG_OK;
}

// ---------------------------------------------------------------- reserve and the step
void fg_step_state_free(fg_step_state *ss) {
    free(ss->seq_first);
    free(ss->seq_n_tokens);
    memset(ss, 0, sizeof *ss);
}

fg_status fg_backend_reserve(fg_backend *be, const fg_backend_limits *lim) {
    if (!be || !lim)
        return FG_FAIL(FG_ERR_INVALID_ARG, "reserve: backend and limits are required");
    FG_TRY(need_no_step(be, "reserve"));
    if (lim->max_tokens < 0 || lim->max_seqs < 0 || lim->max_pages < 0 || lim->max_kv_len < 0 ||
        lim->max_heads < 0 || lim->max_head_dim < 0 || lim->max_cols < 0 || lim->max_sample_entries < 0)
        return FG_FAIL(FG_ERR_INVALID_ARG, "reserve: negative limit");
    fg_step_state *ss = &be->state;
    if (lim->max_seqs > ss->cap_seqs) {
        int32_t *a = realloc(ss->seq_first, (size_t)lim->max_seqs * sizeof(int32_t));
        if (a)
            ss->seq_first = a;
        int32_t *b = realloc(ss->seq_n_tokens, (size_t)lim->max_seqs * sizeof(int32_t));
        if (b)
            ss->seq_n_tokens = b;
        if (!a || !b)
            return FG_FAIL(FG_ERR_NOMEM, "reserve: out of memory for %d sequences", lim->max_seqs);
        ss->cap_seqs = lim->max_seqs;
    }
    return be->ops->reserve(be, lim);
}

// The step's sampling rows and entries (forge/sample.h), once per step: O(n_out + entries).
// Sets *max_entry_token (-1: no entries) for the sample op's O(1) vocabulary check.
static fg_status check_sampling(const fg_step *st, int32_t *max_entry_token) {
    *max_entry_token = -1;
    if (!st->sample)
        return st->n_sample_entries == 0 ? FG_OK
                                         : FG_FAIL(FG_ERR_INVALID_ARG, "step_begin: sample entries without sample rows");
    if (st->n_sample_entries < 0 || (st->n_sample_entries > 0 && !st->sample_entries))
        return FG_FAIL(FG_ERR_INVALID_ARG, "step_begin: n_sample_entries = %d with entries %s", st->n_sample_entries,
                       st->sample_entries ? "given" : "NULL");
    for (int32_t i = 0; i < st->n_out; i++) {
        const fg_sample_row *p = &st->sample[i];
        if (p->mode != FG_SAMPLE_NONE && p->mode != FG_SAMPLE_DRAW && p->mode != FG_SAMPLE_SCORE)
            return FG_FAIL(FG_ERR_INVALID_ARG, "step_begin: sample[%d].mode = %d", i, p->mode);
        if (p->n_top < -1 || p->n_top > FG_MAX_TOP_LOGPROBS)
            return FG_FAIL(FG_ERR_INVALID_ARG, "step_begin: sample[%d].n_top = %d (expected -1..%d)", i, p->n_top,
                           FG_MAX_TOP_LOGPROBS);
        if (p->first_entry < 0 || p->n_entries < 0 || p->first_entry > st->n_sample_entries ||
            p->n_entries > st->n_sample_entries - p->first_entry)
            return FG_FAIL(FG_ERR_INVALID_ARG, "step_begin: sample[%d] entries [%d, +%d) outside the step's %d", i,
                           p->first_entry, p->n_entries, st->n_sample_entries);
        if (p->mode != FG_SAMPLE_DRAW)
            continue;
        if (isnan(p->temperature) || isnan(p->top_p) || isnan(p->min_p) || isnan(p->log_min_p) ||
            !isfinite(p->frequency_penalty) || !isfinite(p->presence_penalty) || !(p->repeat_penalty > 0.0f) ||
            isinf(p->repeat_penalty))
            return FG_FAIL(FG_ERR_INVALID_ARG, "step_begin: sample[%d] has a NaN, infinite or non-positive parameter",
                           i);
        if (!(p->uniform >= 0.0 && p->uniform < 1.0) || (p->temperature > 0.0f && !(p->inv_temp > 0.0)))
            return FG_FAIL(FG_ERR_INVALID_ARG, "step_begin: sample[%d]: uniform %g (expected [0, 1)), inv_temp %g", i,
                           p->uniform, p->inv_temp);
        const fg_sample_entry *e = st->sample_entries + p->first_entry;
        for (int32_t j = 0; j < p->n_entries; j++) {
            if (e[j].token < 0 || (j > 0 && e[j].token <= e[j - 1].token) || e[j].count < 0 ||
                ((e[j].flags & FG_SAMPLE_ENTRY_BIAS) && !isfinite(e[j].bias)))
                return FG_FAIL(FG_ERR_INVALID_ARG,
                               "step_begin: sample[%d] entry %d (token %d, count %d, bias %g): tokens must ascend, "
                               "counts be >= 0, biases finite",
                               i, j, e[j].token, e[j].count, (double)e[j].bias);
            *max_entry_token = FG_MAX(*max_entry_token, e[j].token);
        }
    }
    return FG_OK;
}

fg_status fg_step_begin(fg_backend *be, const fg_step *st) {
    fg_step_state *ss = &be->state;
    if (ss->active)
        return FG_FAIL(FG_ERR_INVALID_ARG, "step_begin: the previous step was not ended");
    if (!st)
        return FG_FAIL(FG_ERR_INVALID_ARG, "step_begin: step is NULL");
    if (st->n_tokens < 1 || st->n_seqs < 1 || st->max_pages < 1 || st->n_out < 0 || st->n_out > st->n_tokens)
        return FG_FAIL(FG_ERR_INVALID_ARG,
                       "step_begin: n_tokens=%d n_seqs=%d max_pages=%d n_out=%d (need n_tokens, n_seqs, "
                       "max_pages >= 1 and 0 <= n_out <= n_tokens)",
                       st->n_tokens, st->n_seqs, st->max_pages, st->n_out);
    if (!st->tokens || !st->pos || !st->seq || !st->seq_n_kv || !st->page_table || (st->n_out > 0 && !st->out_rows))
        return FG_FAIL(FG_ERR_INVALID_ARG, "step_begin: a metadata array is NULL");
    if (st->n_seqs > ss->cap_seqs)
        return FG_FAIL(FG_ERR_CAPACITY, "step_begin: %d sequences, the backend was reserved for %d", st->n_seqs,
                       ss->cap_seqs);
    int32_t max_n_kv = 0;
    for (int32_t s = 0; s < st->n_seqs; s++) {
        if (st->seq_n_kv[s] < 1)
            return FG_FAIL(FG_ERR_INVALID_ARG, "step_begin: seq_n_kv[%d] = %d (must be >= 1)", s, st->seq_n_kv[s]);
        max_n_kv = FG_MAX(max_n_kv, st->seq_n_kv[s]);
        ss->seq_first[s] = -1;
        ss->seq_n_tokens[s] = 0;
    }
    int32_t max_tok = -1, max_at = 0;
    for (int32_t t = 0; t < st->n_tokens; t++) {
        int32_t s = st->seq[t];
        if (s < 0 || s >= st->n_seqs)
            return FG_FAIL(FG_ERR_INVALID_ARG, "step_begin: seq[%d] = %d out of range [0, %d)", t, s, st->n_seqs);
        if (st->tokens[t] < 0)
            return FG_FAIL(FG_ERR_INVALID_ARG, "step_begin: tokens[%d] = %d is negative", t, st->tokens[t]);
        if (st->tokens[t] > max_tok) {
            max_tok = st->tokens[t];
            max_at = t;
        }
        if (st->pos[t] < 0 || st->pos[t] >= st->seq_n_kv[s])
            return FG_FAIL(FG_ERR_INVALID_ARG, "step_begin: pos[%d] = %d outside sequence %d's kv length %d", t,
                           st->pos[t], s, st->seq_n_kv[s]);
        if (ss->seq_first[s] < 0)
            ss->seq_first[s] = t;
        else if (st->seq[t - 1] != s)
            return FG_FAIL(FG_ERR_INVALID_ARG, "step_begin: tokens of sequence %d are not contiguous", s);
        ss->seq_n_tokens[s]++;
    }
    for (int32_t s = 0; s < st->n_seqs; s++) {
        if (ss->seq_n_tokens[s] == 0)
            return FG_FAIL(FG_ERR_INVALID_ARG, "step_begin: sequence %d has no tokens", s);
        // a sequence's tokens are its last positions, in order
        for (int32_t i = 0; i < ss->seq_n_tokens[s]; i++) {
            int32_t t = ss->seq_first[s] + i, want = st->seq_n_kv[s] - ss->seq_n_tokens[s] + i;
            if (st->pos[t] != want)
                return FG_FAIL(FG_ERR_INVALID_ARG, "step_begin: pos[%d] = %d, expected %d (sequence %d, n_kv %d)",
                               t, st->pos[t], want, s, st->seq_n_kv[s]);
        }
    }
    for (int32_t i = 0; i < st->n_out; i++) {
        if (st->out_rows[i] < 0 || st->out_rows[i] >= st->n_tokens || (i > 0 && st->out_rows[i] <= st->out_rows[i - 1]))
            return FG_FAIL(FG_ERR_INVALID_ARG, "step_begin: out_rows[%d] = %d (must be ascending and in [0, %d))", i,
                           st->out_rows[i], st->n_tokens);
    }
    size_t npt;
    if (!fg_mul_size((size_t)st->n_seqs, (size_t)st->max_pages, &npt))
        return FG_FAIL(FG_ERR_INVALID_ARG, "step_begin: page table size overflows");
    int32_t max_entry_token = -1;
    FG_TRY(check_sampling(st, &max_entry_token));
    ss->step = *st;
    ss->max_entry_token = max_entry_token;
    ss->step.seq_first = ss->seq_first;
    ss->step.seq_n_tokens = ss->seq_n_tokens;
    ss->max_n_kv = max_n_kv;
    ss->max_token = max_tok;
    ss->max_token_at = max_at;
    ss->kv_checked = NULL;
    FG_TRY(be->ops->step_begin(be, &ss->step));
    ss->active = true;
    return FG_OK;
}

fg_status fg_step_end(fg_backend *be) {
    FG_TRY(need_step(be, "step_end"));
    be->state.active = false;
    return be->ops->step_end(be);
}

fg_status fg_step_wait(fg_backend *be, fg_step_result *res) {
    FG_TRY(need_no_step(be, "step_wait"));
    fg_step_result r = {-1, -1, 0.0f};
    FG_TRY(be->ops->step_wait(be, &r));
    if (res)
        *res = r;
    return FG_OK;
}

// Abandons a step after a failed op (the backend's step_end still runs; its error is dropped:
// the op's message is the one that matters).
void fg_step_abort(fg_backend *be) {
    if (!be->state.active)
        return;
    be->state.active = false;
    if (be->ops->step_abort) {
        be->ops->step_abort(be);
        return;
    }
    (void)be->ops->step_end(be);
    fg_step_result r;
    (void)be->ops->step_wait(be, &r);
}

const fg_step *fg_step_current(const fg_backend *be) { return be->state.active ? &be->state.step : NULL; }

// ---------------------------------------------------------------- ops
fg_status fg_op_get_rows(fg_backend *be, fg_tensor *dst, const fg_tensor *table) {
    FG_TRY(need_step(be, "get_rows"));
    if (!table || !table->data)
        return FG_FAIL(FG_ERR_INVALID_ARG, "get_rows: table is NULL");
    const fg_type_traits *tr = fg_type_traits_get(table->type);
    if (!tr || !fg_backend_supports(be, FG_OP_GET_ROWS, table->type))
        return FG_FAIL(FG_ERR_UNSUPPORTED, "get_rows: no dequantizer for table type %s", fg_type_name(table->type));
    int64_t n_embd = table->ne[0];
    if (n_embd % tr->blck_size != 0 || table->ne[2] != 1 || table->ne[3] != 1)
        return FG_FAIL(FG_ERR_INVALID_ARG, "get_rows: table rows of %lld %s elements (block %lld)",
                       (long long)n_embd, tr->name, (long long)tr->blck_size);
    const fg_step *st = &be->state.step;
    FG_TRY(check_f32_rows("get_rows", "dst", dst, n_embd, st->n_tokens));
    if (be->state.max_token >= table->ne[1])
        return FG_FAIL(FG_ERR_INVALID_ARG, "get_rows: token %d of the step is id %d, table has %lld rows",
                       be->state.max_token_at, be->state.max_token, (long long)table->ne[1]);
    return be->ops->get_rows(be, dst, table);
}

fg_status fg_op_gather_out(fg_backend *be, fg_tensor *dst, const fg_tensor *src) {
    FG_TRY(need_step(be, "gather_out"));
    if (!src)
        return FG_FAIL(FG_ERR_INVALID_ARG, "gather_out: src is NULL");
    const fg_step *st = &be->state.step;
    int64_t n = src->ne[0];
    FG_TRY(check_f32_rows("gather_out", "src", src, n, st->n_tokens));
    if (st->n_out == 0)
        return FG_OK;
    FG_TRY(check_f32_rows("gather_out", "dst", dst, n, st->n_out));
    return be->ops->gather_out(be, dst, src);
}

static fg_status check_act(const char *op, const char *name, const fg_tensor *t, uint32_t type, int64_t n,
                           int64_t rows);

// An op written straight into an activation type (dst->type != F32): the backend must claim it.
static fg_status check_act_dst_type(fg_backend *be, fg_op op, const char *name, const fg_tensor *dst) {
    if (!fg_backend_supports(be, op, dst->type))
        return FG_FAIL(FG_ERR_UNSUPPORTED, "%s: dst type %s is not supported by the %s backend", name,
                       fg_type_name(dst->type), be->ops->name);
    return FG_OK;
}

fg_status fg_op_rmsnorm(fg_backend *be, fg_tensor *dst, const fg_tensor *x, const fg_tensor *w, float eps) {
    if (!x)
        return FG_FAIL(FG_ERR_INVALID_ARG, "rmsnorm: x is NULL");
    int64_t n = x->ne[0], ne1 = x->ne[1], ne2 = x->ne[2];
    if (n < 1 || ne1 < 1 || ne2 < 1)
        return FG_FAIL(FG_ERR_INVALID_ARG, "rmsnorm: x has %lld x %lld elements", (long long)ne1, (long long)n);
    if (dst && dst->type != FG_TYPE_F32) { // the normed rows converted as convert would
        FG_TRY(check_act_dst_type(be, FG_OP_RMSNORM, "rmsnorm", dst));
        FG_TRY(check_f32_rows("rmsnorm", "x", x, n, ne1));
        FG_TRY(check_act("rmsnorm", "dst", dst, dst->type, n, ne1));
    } else if (ne2 == 1) {
        FG_TRY(check_f32_rows("rmsnorm", "x", x, n, ne1));
        FG_TRY(check_f32_rows("rmsnorm", "dst", dst, n, ne1));
    } else {
        FG_TRY(check_f32_3d("rmsnorm", "x", x, n, ne1, ne2));
        FG_TRY(check_f32_3d("rmsnorm", "dst", dst, n, ne1, ne2));
    }
    if (w)
        FG_TRY(check_f32_rows("rmsnorm", "w", w, n, 1));
    if (!(eps >= 0.0f))
        return FG_FAIL(FG_ERR_INVALID_ARG, "rmsnorm: eps = %g", (double)eps);
    return be->ops->rmsnorm(be, dst, x, w, eps);
}

// A converted activation tensor [rows][n] of type `type`: whole blocks, contiguous rows.
static fg_status check_act(const char *op, const char *name, const fg_tensor *t, uint32_t type, int64_t n,
                           int64_t rows) {
    const fg_type_traits *tr = fg_type_traits_get(type);
    if (!t || !t->data || !tr)
        return FG_FAIL(FG_ERR_INVALID_ARG, "%s: %s is NULL", op, name);
    if (t->type != type || t->ne[0] != n || t->ne[1] != rows || t->ne[2] != 1 || t->ne[3] != 1 ||
        n % tr->blck_size != 0 || t->nb[0] != tr->type_size ||
        (rows > 1 && t->nb[1] != (size_t)(n / tr->blck_size) * tr->type_size))
        return FG_FAIL(FG_ERR_INVALID_ARG,
                       "%s: %s (%s [%lld][%lld]) must be %s [%lld][%lld] with contiguous rows of whole blocks",
                       op, name, fg_type_name(t->type), (long long)t->ne[1], (long long)t->ne[0], tr->name,
                       (long long)rows, (long long)n);
    return FG_OK;
}

fg_status fg_op_convert(fg_backend *be, fg_tensor *dst, const fg_tensor *x) {
    if (!x || !dst)
        return FG_FAIL(FG_ERR_INVALID_ARG, "convert: x and dst are required");
    if (!fg_backend_supports(be, FG_OP_CONVERT, dst->type))
        return FG_FAIL(FG_ERR_UNSUPPORTED, "convert: activation type %s is not supported by the %s backend",
                       fg_type_name(dst->type), be->ops->name);
    int64_t n = x->ne[0], rows = x->ne[1];
    FG_TRY(check_f32_rows("convert", "x", x, n, rows));
    FG_TRY(check_act("convert", "dst", dst, dst->type, n, rows));
    return be->ops->convert(be, dst, x);
}

fg_status fg_op_matmul(fg_backend *be, fg_tensor *dst, const fg_tensor *w, const fg_tensor *x,
                       const fg_tensor *bias, bool accumulate) {
    if (!w || !w->data)
        return FG_FAIL(FG_ERR_INVALID_ARG, "matmul: w is NULL");
    const fg_type_traits *tr = fg_type_traits_get(w->type);
    if (!tr || !tr->is_weight || !fg_backend_supports(be, FG_OP_MATMUL, w->type))
        return FG_FAIL(FG_ERR_UNSUPPORTED, "matmul: no vec_dot kernel for weight type %s", fg_type_name(w->type));
    const int64_t n_in = w->ne[0], n_out = w->ne[1];
    if (n_in < 1 || n_out < 1 || w->ne[2] != 1 || w->ne[3] != 1 || n_in % tr->blck_size != 0 ||
        w->nb[0] != tr->type_size || (n_out > 1 && w->nb[1] < (size_t)(n_in / tr->blck_size) * tr->type_size))
        return FG_FAIL(FG_ERR_INVALID_ARG,
                       "matmul: w %s [%lld][%lld] (rows must be whole %s blocks of %lld, contiguous)", tr->name,
                       (long long)n_out, (long long)n_in, tr->name, (long long)tr->blck_size);
    if (!x)
        return FG_FAIL(FG_ERR_INVALID_ARG, "matmul: x is NULL");
    const int64_t n_rows = x->ne[1];
    if (n_rows < 1)
        return FG_FAIL(FG_ERR_INVALID_ARG, "matmul: x has %lld rows", (long long)n_rows);
    if (x->ne[0] != n_in)
        return FG_FAIL(FG_ERR_INVALID_ARG, "matmul: x rows have %lld elements, w rows %lld", (long long)x->ne[0],
                       (long long)n_in);
    if (x->type == FG_TYPE_F32) {
        FG_TRY(check_f32_rows("matmul", "x", x, n_in, n_rows));
    } else {
        uint32_t at = fg_backend_act_type(be, w->type, n_rows);
        if (x->type != at)
            return FG_FAIL(FG_ERR_INVALID_ARG, "matmul: x is %s, the %s backend takes f32 or %s for %s weights",
                           fg_type_name(x->type), be->ops->name, fg_type_name(at), tr->name);
        FG_TRY(check_act("matmul", "x", x, at, n_in, n_rows));
    }
    FG_TRY(check_f32_rows("matmul", "dst", dst, n_out, n_rows));
    if (bias)
        FG_TRY(check_f32_rows("matmul", "bias", bias, n_out, 1));
    return be->ops->matmul(be, dst, w, x, bias, accumulate);
}

static fg_status check_elementwise(const char *op, const char *na, const char *nb, const fg_tensor *dst,
                                   const fg_tensor *a, const fg_tensor *b) {
    if (!a || !b)
        return FG_FAIL(FG_ERR_INVALID_ARG, "%s: %s is NULL", op, a ? nb : na);
    int64_t n = a->ne[0], rows = a->ne[1];
    if (n < 1 || rows < 1)
        return FG_FAIL(FG_ERR_INVALID_ARG, "%s: %s has %lld x %lld elements", op, na, (long long)rows, (long long)n);
    FG_TRY(check_f32_rows(op, na, a, n, rows));
    FG_TRY(check_f32_rows(op, nb, b, n, rows));
    FG_TRY(check_f32_rows(op, "dst", dst, n, rows));
    return FG_OK;
}

fg_status fg_op_add(fg_backend *be, fg_tensor *dst, const fg_tensor *a, const fg_tensor *b) {
    FG_TRY(check_elementwise("add", "a", "b", dst, a, b));
    return be->ops->add(be, dst, a, b);
}

fg_status fg_op_swiglu(fg_backend *be, fg_tensor *dst, const fg_tensor *gate, const fg_tensor *up) {
    if (dst && dst->type != FG_TYPE_F32) { // the product converted as convert would
        FG_TRY(check_act_dst_type(be, FG_OP_SWIGLU, "swiglu", dst));
        if (!gate || !up)
            return FG_FAIL(FG_ERR_INVALID_ARG, "swiglu: %s is NULL", gate ? "up" : "gate");
        const int64_t n = gate->ne[0], rows = gate->ne[1];
        FG_TRY(check_f32_rows("swiglu", "gate", gate, n, rows));
        FG_TRY(check_f32_rows("swiglu", "up", up, n, rows));
        FG_TRY(check_act("swiglu", "dst", dst, dst->type, n, rows));
        return be->ops->swiglu(be, dst, gate, up);
    }
    FG_TRY(check_elementwise("swiglu", "gate", "up", dst, gate, up));
    return be->ops->swiglu(be, dst, gate, up);
}

static fg_status check_rope(fg_backend *be, const fg_tensor *x, const fg_rope_params *p) {
    if (!p)
        return FG_FAIL(FG_ERR_INVALID_ARG, "rope: params are NULL");
    if (p->n_head < 1 || p->head_dim < 2 || p->head_dim > FG_MAX_HEAD_DIM || p->n_rot < 2 || p->n_rot > p->head_dim ||
        (p->n_rot & 1))
        return FG_FAIL(FG_ERR_INVALID_ARG,
                       "rope: n_head=%d head_dim=%d n_rot=%d (need n_rot even, 2 <= n_rot <= head_dim <= %d)",
                       p->n_head, p->head_dim, p->n_rot, FG_MAX_HEAD_DIM);
    if (p->mode != FG_ROPE_NORMAL && p->mode != FG_ROPE_NEOX)
        return FG_FAIL(FG_ERR_INVALID_ARG, "rope: unknown mode %d", (int)p->mode);
    if (!(p->freq_base > 0.0f) || !(p->freq_scale > 0.0f))
        return FG_FAIL(FG_ERR_INVALID_ARG, "rope: freq_base=%g freq_scale=%g (must be > 0)", (double)p->freq_base,
                       (double)p->freq_scale);
    FG_TRY(check_f32_rows("rope", "x", x, (int64_t)p->n_head * p->head_dim, be->state.step.n_tokens));
    if (p->freq_factors) {
        const fg_tensor *f = p->freq_factors;
        if (!f->data || f->type != FG_TYPE_F32 || f->ne[0] < p->n_rot / 2 || f->nb[0] != 4)
            return FG_FAIL(FG_ERR_INVALID_ARG, "rope: freq_factors must be f32 [%d], found %s [%lld]", p->n_rot / 2,
                           fg_type_name(f->type), (long long)f->ne[0]);
    }
    return FG_OK;
}

fg_status fg_op_rope(fg_backend *be, fg_tensor *x, const fg_rope_params *p) {
    FG_TRY(need_step(be, "rope"));
    FG_TRY(check_rope(be, x, p));
    return be->ops->rope(be, x, p);
}

static fg_status check_kv_rows(fg_backend *be, const char *op, const fg_kv_view *kv, const fg_tensor *k,
                               const fg_tensor *v) {
    int64_t n = (int64_t)kv->n_head_kv * kv->head_dim;
    FG_TRY(check_f32_rows(op, "k", k, n, be->state.step.n_tokens));
    FG_TRY(check_f32_rows(op, "v", v, n, be->state.step.n_tokens));
    return FG_OK;
}

fg_status fg_op_kv_store(fg_backend *be, const fg_kv_view *kv, int32_t layer, const fg_tensor *k,
                         const fg_tensor *v) {
    FG_TRY(need_step(be, "kv_store"));
    FG_TRY(check_kv(be, "kv_store", kv, layer, true));
    FG_TRY(check_kv_rows(be, "kv_store", kv, k, v));
    return be->ops->kv_store(be, kv, layer, k, v);
}

static fg_status check_attention(fg_backend *be, const fg_tensor *dst, const fg_tensor *q, const fg_kv_view *kv,
                                 const fg_attn_params *p) {
    FG_TRY(need_step(be, "attention"));
    if (!p)
        return FG_FAIL(FG_ERR_INVALID_ARG, "attention: params are NULL");
    FG_TRY(check_kv(be, "attention", kv, p->layer, true));
    if (p->n_head < 1 || p->n_head % kv->n_head_kv != 0)
        return FG_FAIL(FG_ERR_INVALID_ARG, "attention: n_head = %d is not a multiple of n_head_kv = %d", p->n_head,
                       kv->n_head_kv);
    if (kv->head_dim > FG_MAX_HEAD_DIM)
        return FG_FAIL(FG_ERR_UNSUPPORTED, "attention: head_dim %d exceeds %d", kv->head_dim, FG_MAX_HEAD_DIM);
    if (!isfinite(p->scale))
        return FG_FAIL(FG_ERR_INVALID_ARG, "attention: scale = %g", (double)p->scale);
    int64_t width = (int64_t)p->n_head * kv->head_dim;
    FG_TRY(check_f32_rows("attention", "q", q, width, be->state.step.n_tokens));
    FG_TRY(check_f32_rows("attention", "dst", dst, width, be->state.step.n_tokens));
    return FG_OK;
}

fg_status fg_op_attention(fg_backend *be, fg_tensor *dst, const fg_tensor *q, const fg_kv_view *kv,
                          const fg_attn_params *p) {
    FG_TRY(check_attention(be, dst, q, kv, p));
    return be->ops->attention(be, dst, q, kv, p);
}

fg_status fg_op_check_finite(fg_backend *be, const fg_tensor *x, int64_t row0) {
    FG_TRY(need_step(be, "check_finite"));
    if (!x)
        return FG_FAIL(FG_ERR_INVALID_ARG, "check_finite: x is NULL");
    FG_TRY(check_f32_rows("check_finite", "x", x, x->ne[0], x->ne[1]));
    if (row0 < 0)
        return FG_FAIL(FG_ERR_INVALID_ARG, "check_finite: row0 = %lld", (long long)row0);
    return be->ops->check_finite(be, x, row0);
}

fg_status fg_op_sample(fg_backend *be, fg_tensor *out, const fg_tensor *logits, int64_t row0) {
    FG_TRY(need_step(be, "sample"));
    const fg_step *st = &be->state.step;
    if (!st->sample)
        return FG_FAIL(FG_ERR_INVALID_ARG, "sample: the step has no sample rows");
    if (!be->ops->sample || !fg_backend_supports(be, FG_OP_SAMPLE, FG_TYPE_F32))
        return FG_FAIL(FG_ERR_UNSUPPORTED, "sample: the %s backend cannot sample", be->ops->name);
    if (!logits)
        return FG_FAIL(FG_ERR_INVALID_ARG, "sample: logits is NULL");
    const int64_t n_vocab = logits->ne[0], rows = logits->ne[1];
    FG_TRY(check_f32_rows("sample", "logits", logits, n_vocab, rows));
    if (n_vocab < 1 || n_vocab > (1 << 24))
        return FG_FAIL(FG_ERR_UNSUPPORTED, "sample: rows of %lld logits (1..%d supported)", (long long)n_vocab,
                       1 << 24);
    if (row0 < 0 || rows < 1 || row0 + rows > st->n_out)
        return FG_FAIL(FG_ERR_INVALID_ARG, "sample: rows [%lld, %lld) outside the step's %d output rows",
                       (long long)row0, (long long)(row0 + rows), st->n_out);
    if (be->state.max_entry_token >= n_vocab)
        return FG_FAIL(FG_ERR_INVALID_ARG, "sample: an entry names token %d, the rows have %lld logits",
                       be->state.max_entry_token, (long long)n_vocab);
    if (!out || !out->data || out->type != FG_TYPE_I32 || out->ne[0] != FG_SAMPLE_RESULT_WORDS || out->ne[1] != rows ||
        out->ne[2] != 1 || out->ne[3] != 1 || out->nb[0] != sizeof(int32_t) ||
        (rows > 1 && out->nb[1] != sizeof(fg_sample_result)))
        return FG_FAIL(FG_ERR_INVALID_ARG, "sample: out must be i32 [%lld][%d] with contiguous rows", (long long)rows,
                       FG_SAMPLE_RESULT_WORDS);
    return be->ops->sample(be, out, logits, row0);
}

fg_status fg_op_download_async(fg_backend *be, const fg_tensor *src, size_t off, void *host, size_t n) {
    FG_TRY(need_step(be, "download_async"));
    if (!src || !src->data || !host)
        return FG_FAIL(FG_ERR_INVALID_ARG, "download_async: tensor and destination are required");
    size_t tn = fg_tensor_nbytes(src);
    if (off > tn || n > tn - off)
        return FG_FAIL(FG_ERR_INVALID_ARG, "download_async: %zu bytes at offset %zu exceed the tensor's %zu bytes",
                       n, off, tn);
    if (n == 0)
        return FG_OK;
    return be->ops->download_async(be, src, off, host, n);
}

fg_status fg_op_add_rmsnorm(fg_backend *be, fg_tensor *x, fg_tensor *xn, const fg_tensor *a, const fg_tensor *w,
                            float eps) {
    FG_TRY(check_elementwise("add_rmsnorm", "x", "a", x, x, a));
    FG_TRY(check_f32_rows("add_rmsnorm", "xn", xn, x->ne[0], x->ne[1]));
    if (w)
        FG_TRY(check_f32_rows("add_rmsnorm", "w", w, x->ne[0], 1));
    if (!(eps >= 0.0f))
        return FG_FAIL(FG_ERR_INVALID_ARG, "add_rmsnorm: eps = %g", (double)eps);
    if (be->ops->add_rmsnorm)
        return be->ops->add_rmsnorm(be, x, xn, a, w, eps);
    FG_TRY(be->ops->add(be, x, x, a));
    return be->ops->rmsnorm(be, xn, x, w, eps);
}

// The checks of rope_kv_store's operands (q, k, v, the KV view) in one place.
static fg_status check_rope_kv(fg_backend *be, const char *op, const fg_tensor *q, const fg_tensor *k,
                               const fg_tensor *v, const fg_rope_params *p, int32_t n_head_kv,
                               const fg_kv_view *kv, int32_t layer) {
    FG_TRY(need_step(be, op));
    FG_TRY(check_rope(be, q, p));
    FG_TRY(check_kv(be, "kv_store", kv, layer, true));
    fg_rope_params pk = *p;
    pk.n_head = n_head_kv;
    if (n_head_kv != kv->n_head_kv || p->head_dim != kv->head_dim)
        return FG_FAIL(FG_ERR_INVALID_ARG, "%s: %d heads of %d for a KV view of %d heads of %d", op, n_head_kv,
                       p->head_dim, kv->n_head_kv, kv->head_dim);
    FG_TRY(check_rope(be, k, &pk));
    return check_kv_rows(be, "kv_store", kv, k, v);
}

static fg_status compose_rope_kv_store(fg_backend *be, fg_tensor *q, fg_tensor *k, const fg_tensor *v,
                                       const fg_rope_params *p, int32_t n_head_kv, const fg_kv_view *kv,
                                       int32_t layer) {
    if (be->ops->rope_kv_store)
        return be->ops->rope_kv_store(be, q, k, v, p, n_head_kv, kv, layer);
    fg_rope_params pk = *p;
    pk.n_head = n_head_kv;
    FG_TRY(be->ops->rope(be, q, p));
    FG_TRY(be->ops->rope(be, k, &pk));
    return be->ops->kv_store(be, kv, layer, k, v);
}

fg_status fg_op_rope_kv_store(fg_backend *be, fg_tensor *q, fg_tensor *k, const fg_tensor *v,
                              const fg_rope_params *p, int32_t n_head_kv, const fg_kv_view *kv, int32_t layer) {
    FG_TRY(check_rope_kv(be, "rope_kv_store", q, k, v, p, n_head_kv, kv, layer));
    return compose_rope_kv_store(be, q, k, v, p, n_head_kv, kv, layer);
}

fg_status fg_op_rope_kv_attention(fg_backend *be, fg_tensor *dst, fg_tensor *dq, fg_tensor *q, fg_tensor *k,
                                  const fg_tensor *v, const fg_rope_params *rp, int32_t n_head_kv,
                                  const fg_kv_view *kv, const fg_attn_params *ap) {
    if (!ap)
        return FG_FAIL(FG_ERR_INVALID_ARG, "rope_kv_attention: attention params are NULL");
    FG_TRY(check_rope_kv(be, "rope_kv_attention", q, k, v, rp, n_head_kv, kv, ap->layer));
    FG_TRY(check_attention(be, dst, q, kv, ap));
    if (rp->n_head != ap->n_head)
        return FG_FAIL(FG_ERR_INVALID_ARG, "rope_kv_attention: rope over %d q heads, attention over %d", rp->n_head,
                       ap->n_head);
    if (dq) {
        if (!fg_backend_supports(be, FG_OP_CONVERT, dq->type))
            return FG_FAIL(FG_ERR_UNSUPPORTED, "rope_kv_attention: activation type %s is not supported by the %s backend",
                           fg_type_name(dq->type), be->ops->name);
        FG_TRY(check_act("rope_kv_attention", "dq", dq, dq->type, dst->ne[0], dst->ne[1]));
    }
    if (be->ops->rope_kv_attention)
        return be->ops->rope_kv_attention(be, dst, dq, q, k, v, rp, n_head_kv, kv, ap);
    FG_TRY(compose_rope_kv_store(be, q, k, v, rp, n_head_kv, kv, ap->layer));
    FG_TRY(be->ops->attention(be, dst, q, kv, ap));
    return dq ? be->ops->convert(be, dq, dst) : FG_OK;
}

fg_status fg_op_all_reduce(fg_backend *be, fg_comm *comm, fg_tensor *x) {
    FG_TRY(need_step(be, "all_reduce"));
    if (!comm)
        return FG_FAIL(FG_ERR_INVALID_ARG, "all_reduce: communicator is NULL");
    if (strcmp(comm->ops->backend, be->ops->name) != 0)
        return FG_FAIL(FG_ERR_UNSUPPORTED, "all_reduce: a %s communicator cannot reduce tensors of the %s backend",
                       comm->ops->name, be->ops->name);
    if (!x)
        return FG_FAIL(FG_ERR_INVALID_ARG, "all_reduce: x is NULL");
    FG_TRY(check_f32_rows("all_reduce", "x", x, x->ne[0], x->ne[1]));
    if (x->ne[0] < 1 || x->ne[1] < 1 || (x->ne[1] > 1 && x->nb[1] != (size_t)x->ne[0] * sizeof(float)))
        return FG_FAIL(FG_ERR_INVALID_ARG, "all_reduce: x [%lld][%lld] must be one contiguous block (row stride %zu)",
                       (long long)x->ne[1], (long long)x->ne[0], x->nb[1]);
    if (!fg_backend_supports(be, FG_OP_ALL_REDUCE, FG_TYPE_F32))
        return FG_FAIL(FG_ERR_UNSUPPORTED, "all_reduce: not supported by the %s backend", be->ops->name);
    if (comm->size == 1)
        return FG_OK;
    if (be->ops->all_reduce)
        return be->ops->all_reduce(be, comm, x);
    return comm->ops->all_reduce_sum(comm, be, x);
}

// ---------------------------------------------------------------- embedding models (issue 14)
fg_status fg_op_layernorm(fg_backend *be, fg_tensor *dst, const fg_tensor *x, const fg_tensor *w,
                          const fg_tensor *b, float eps) {
    if (!x)
        return FG_FAIL(FG_ERR_INVALID_ARG, "layernorm: x is NULL");
    int64_t n = x->ne[0], rows = x->ne[1];
    if (n < 1 || rows < 1)
        return FG_FAIL(FG_ERR_INVALID_ARG, "layernorm: x has %lld x %lld elements", (long long)rows, (long long)n);
    FG_TRY(check_f32_rows("layernorm", "x", x, n, rows));
    FG_TRY(check_f32_rows("layernorm", "dst", dst, n, rows));
    if (w)
        FG_TRY(check_f32_rows("layernorm", "w", w, n, 1));
    if (b)
        FG_TRY(check_f32_rows("layernorm", "b", b, n, 1));
    if (!(eps >= 0.0f) || !isfinite(eps))
        return FG_FAIL(FG_ERR_INVALID_ARG, "layernorm: eps = %g", (double)eps);
    if (!fg_backend_supports(be, FG_OP_LAYERNORM, FG_TYPE_F32))
        return FG_FAIL(FG_ERR_UNSUPPORTED, "layernorm: not supported by the %s backend", be->ops->name);
    return be->ops->layernorm(be, dst, x, w, b, eps);
}

fg_status fg_op_gelu(fg_backend *be, fg_tensor *dst, const fg_tensor *x, fg_gelu_mode mode) {
    if (!x)
        return FG_FAIL(FG_ERR_INVALID_ARG, "gelu: x is NULL");
    int64_t n = x->ne[0], rows = x->ne[1];
    if (n < 1 || rows < 1)
        return FG_FAIL(FG_ERR_INVALID_ARG, "gelu: x has %lld x %lld elements", (long long)rows, (long long)n);
    FG_TRY(check_f32_rows("gelu", "x", x, n, rows));
    FG_TRY(check_f32_rows("gelu", "dst", dst, n, rows));
    if (mode != FG_GELU_ERF && mode != FG_GELU_TANH)
        return FG_FAIL(FG_ERR_INVALID_ARG, "gelu: unknown mode %d", (int)mode);
    if (!fg_backend_supports(be, FG_OP_GELU, FG_TYPE_F32))
        return FG_FAIL(FG_ERR_UNSUPPORTED, "gelu: not supported by the %s backend", be->ops->name);
    return be->ops->gelu(be, dst, x, mode);
}

fg_status fg_op_add_rows(fg_backend *be, fg_tensor *dst, const fg_tensor *table, fg_rows_index idx,
                         int32_t row) {
    FG_TRY(need_step(be, "add_rows"));
    if (!table || !table->data)
        return FG_FAIL(FG_ERR_INVALID_ARG, "add_rows: table is NULL");
    if (!fg_backend_supports(be, FG_OP_ADD_ROWS, table->type))
        return FG_FAIL(FG_ERR_UNSUPPORTED, "add_rows: table type %s is not supported by the %s backend",
                       fg_type_name(table->type), be->ops->name);
    const int64_t n = table->ne[0], n_rows = table->ne[1];
    const fg_type_traits *tr = fg_type_traits_get(table->type);
    if (n < 1 || n_rows < 1 || table->ne[2] != 1 || table->ne[3] != 1 || n % tr->blck_size != 0 ||
        table->nb[0] != tr->type_size || (n_rows > 1 && table->nb[1] < (size_t)(n / tr->blck_size) * tr->type_size))
        return FG_FAIL(FG_ERR_INVALID_ARG, "add_rows: table %s [%lld][%lld] must have contiguous rows",
                       tr->name, (long long)n_rows, (long long)n);
    const fg_step *st = &be->state.step;
    FG_TRY(check_f32_rows("add_rows", "dst", dst, n, st->n_tokens));
    if (idx == FG_ROWS_POS) {
        // positions run 0 .. seq_n_kv - 1: the longest sequence decides
        if (be->state.max_n_kv > n_rows)
            return FG_FAIL(FG_ERR_INVALID_ARG,
                           "add_rows: the step has position %d, the table has %lld rows (positions 0..%lld)",
                           be->state.max_n_kv - 1, (long long)n_rows, (long long)n_rows - 1);
    } else if (idx == FG_ROWS_FIXED) {
        if (row < 0 || row >= n_rows)
            return FG_FAIL(FG_ERR_INVALID_ARG, "add_rows: row %d outside the table's [0, %lld)", row,
                           (long long)n_rows);
    } else {
        return FG_FAIL(FG_ERR_INVALID_ARG, "add_rows: unknown index mode %d", (int)idx);
    }
    return be->ops->add_rows(be, dst, table, idx, row);
}

fg_status fg_op_pool(fg_backend *be, fg_tensor *dst, const fg_tensor *x, fg_pool_mode mode, bool normalize) {
    FG_TRY(need_step(be, "pool"));
    if (!x)
        return FG_FAIL(FG_ERR_INVALID_ARG, "pool: x is NULL");
    if (mode != FG_POOL_MEAN && mode != FG_POOL_CLS && mode != FG_POOL_LAST)
        return FG_FAIL(FG_ERR_INVALID_ARG, "pool: mode %d (expected mean 1, cls 2 or last 3)", (int)mode);
    const fg_step *st = &be->state.step;
    const int64_t n = x->ne[0];
    FG_TRY(check_f32_rows("pool", "x", x, n, st->n_tokens));
    FG_TRY(check_f32_rows("pool", "dst", dst, n, st->n_seqs));
    const char *d0 = dst->data, *x0 = x->data;
    size_t dn = fg_tensor_nbytes(dst), xn = fg_tensor_nbytes(x);
    if (d0 < x0 + xn && x0 < d0 + dn)
        return FG_FAIL(FG_ERR_INVALID_ARG, "pool: dst overlaps x");
    if (!fg_backend_supports(be, FG_OP_POOL, FG_TYPE_F32))
        return FG_FAIL(FG_ERR_UNSUPPORTED, "pool: not supported by the %s backend", be->ops->name);
    return be->ops->pool(be, dst, x, mode, normalize);
}
// ---------------------------------------------------------------- (end issue 14)

fg_status fg_kv_copy_page_checked(fg_backend *be, const fg_kv_view *kv, int32_t dst_page, int32_t src_page) {
    FG_TRY(need_no_step(be, "kv_copy_page"));
    if (!kv || !kv->k.data || !kv->v.data)
        return FG_FAIL(FG_ERR_INVALID_ARG, "kv_copy_page: kv view is NULL");
    if (dst_page < 0 || dst_page >= kv->n_pages || src_page < 0 || src_page >= kv->n_pages)
        return FG_FAIL(FG_ERR_INVALID_ARG, "kv_copy_page: pages %d <- %d out of range [0, %d)", dst_page, src_page,
                       kv->n_pages);
    if (kv->k.ne[2] != kv->n_pages || kv->v.ne[2] != kv->n_pages || kv->k.ne[3] != kv->n_layer ||
        kv->v.ne[3] != kv->n_layer)
        return FG_FAIL(FG_ERR_INVALID_ARG, "kv_copy_page: kv tensors do not match the view's geometry");
    if (dst_page == src_page)
        return FG_OK;
    return be->ops->kv_copy_page(be, kv, dst_page, src_page);
}
