// forward.c - the batched forward pass, written once against the backend interface: one step
// is fg_step_begin ... ops ... fg_step_end, then fg_model_wait collects it. Embeddings ->
// per layer (rmsnorm, the fused q|k|v projection with biases, qk-norm, rope + KV store, paged
// attention, output projection accumulated into the residual, rmsnorm, the fused gate|up
// projection, SwiGLU, down projection into the residual; glm4's post norms; the last layer
// continues only with the rows wanting logits) -> output norm -> output projection in chunks,
// each checked for non-finite values on the backend, then either copied back asynchronously
// or, when the batch carries sampling rows, sampled on the backend (only the small results
// come back).
// The op sequence depends only on the step's shape (n_tokens, n_out), never on its data, so a
// GPU backend may capture it. With tensor parallelism (m->tp) each rank runs this same pass on
// its heads and FFN rows; the two row-parallel projections (attn_output, ffn_down) give partial
// sums that one all-reduce each completes before the residual add (tp_reduce_residual); worker
// ranks stop before the logits. Nothing is allocated here: scratch and host metadata are sized
// at load. Who calls it: the engine, `forge run`/`perplexity`/`bench`, the golden tests.
#include "model/model_internal.h"

#include "base/status.h"
#include "base/util.h"

#include <math.h>
#include <string.h>

// The first n rows of a contiguous scratch tensor.
static fg_tensor rows_of(const fg_tensor *t, int64_t n) { return fg_tensor_rows(t, 0, t->ne[0], n, t->nb[1]); }

// Checks the batch and fills the step's host metadata (page table in the KV store's scratch).
static fg_status make_step(fg_model *m, fg_kv_store *kv, const fg_batch *b, fg_step *st) {
    if (!b || b->n_tokens < 1 || !b->tokens || !b->pos || !b->seq)
        return FG_FAIL(FG_ERR_INVALID_ARG, "forward: batch.n_tokens must be >= 1 with tokens, pos and seq");
    if (b->n_tokens > m->max_batch_tokens)
        return FG_FAIL(FG_ERR_CAPACITY, "forward: batch.n_tokens (%d) exceeds max_batch_tokens (%d)",
                       b->n_tokens, m->max_batch_tokens);
    if (b->n_seqs < 1 || !b->n_kv || !b->page_tables)
        return FG_FAIL(FG_ERR_INVALID_ARG, "forward: batch.n_seqs must be >= 1 with n_kv and page_tables");
    if (b->n_seqs > m->max_seqs)
        return FG_FAIL(FG_ERR_CAPACITY, "forward: batch.n_seqs (%d) exceeds max_seqs (%d)", b->n_seqs,
                       m->max_seqs);
    int32_t n_vocab = m->hp.n_vocab, ps = kv->view.page_size, np = kv->view.n_pages;
    for (int32_t s = 0; s < b->n_seqs; s++) {
        m->seq_count[s] = 0;
        m->seq_first[s] = -1;
    }
    int32_t n_out = 0;
    for (int32_t t = 0; t < b->n_tokens; t++) {
        int32_t s = b->seq[t];
        if (s < 0 || s >= b->n_seqs)
            return FG_FAIL(FG_ERR_INVALID_ARG, "forward: batch.seq[%d] = %d is outside [0, %d)", t, s,
                           b->n_seqs);
        if (b->tokens[t] < 0 || b->tokens[t] >= n_vocab)
            return FG_FAIL(FG_ERR_INVALID_ARG, "forward: batch.tokens[%d] = %d is outside [0, %d)", t,
                           b->tokens[t], n_vocab);
        if (m->seq_first[s] < 0) {
            m->seq_first[s] = t;
        } else if (b->seq[t - 1] != s) {
            return FG_FAIL(FG_ERR_INVALID_ARG, "forward: batch.seq: tokens of sequence %d are not contiguous", s);
        }
        m->seq_count[s]++;
        bool want = b->want_logits ? b->want_logits[t] : (t + 1 == b->n_tokens || b->seq[t + 1] != s);
        if (want)
            m->out_rows[n_out++] = t;
    }
    if (n_out > m->max_logit_rows)
        return FG_FAIL(FG_ERR_CAPACITY, "forward: %d rows want logits, the model was loaded for %d (max_logit_rows)",
                       n_out, m->max_logit_rows);
    int32_t max_pages = 1;
    for (int32_t s = 0; s < b->n_seqs; s++) {
        if (m->seq_count[s] == 0)
            return FG_FAIL(FG_ERR_INVALID_ARG, "forward: batch: sequence %d has no tokens", s);
        int32_t n_kv = b->n_kv[s];
        if (n_kv < m->seq_count[s])
            return FG_FAIL(FG_ERR_INVALID_ARG, "forward: batch.n_kv[%d] = %d is less than its %d tokens",
                           s, n_kv, m->seq_count[s]);
        int64_t need = ((int64_t)n_kv + ps - 1) / ps;
        if (need > np)
            return FG_FAIL(FG_ERR_CAPACITY, "forward: batch.n_kv[%d] = %d needs %lld pages, the store has %d",
                           s, n_kv, (long long)need, np);
        if (!b->page_tables[s])
            return FG_FAIL(FG_ERR_INVALID_ARG, "forward: batch.page_tables[%d] is NULL", s);
        max_pages = FG_MAX(max_pages, (int32_t)need);
    }
    for (int32_t t = 0; t < b->n_tokens; t++) {
        int32_t s = b->seq[t];
        int32_t want = b->n_kv[s] - m->seq_count[s] + (t - m->seq_first[s]);
        if (b->pos[t] != want)
            return FG_FAIL(FG_ERR_INVALID_ARG, "forward: batch.pos[%d] = %d, expected %d (n_kv[%d] = %d)",
                           t, b->pos[t], want, s, b->n_kv[s]);
    }
    for (int32_t s = 0; s < b->n_seqs; s++) {
        int32_t need = (b->n_kv[s] + ps - 1) / ps;
        int32_t *row = kv->page_table + (size_t)s * (size_t)max_pages;
        for (int32_t i = 0; i < max_pages; i++) {
            int32_t p = i < need ? b->page_tables[s][i] : 0;
            if (p < 0 || p >= np)
                return FG_FAIL(FG_ERR_INVALID_ARG, "forward: batch.page_tables[%d][%d] = %d is outside [0, %d)",
                               s, i, p, np);
            row[i] = p;
        }
    }
    memset(st, 0, sizeof *st);
    st->n_tokens = b->n_tokens;
    st->tokens = b->tokens;
    st->pos = b->pos;
    st->seq = b->seq;
    st->n_seqs = b->n_seqs;
    st->seq_n_kv = b->n_kv;
    st->max_pages = max_pages;
    st->page_table = kv->page_table;
    st->n_out = n_out;
    st->out_rows = m->out_rows;
    if (b->sample) {
        if (b->n_sample_entries < 0 || b->n_sample_entries > m->max_sample_entries)
            return FG_FAIL(FG_ERR_CAPACITY,
                           "forward: batch.n_sample_entries = %d, the model was reserved for %d (max_sample_entries)",
                           b->n_sample_entries, m->max_sample_entries);
        st->sample = b->sample;
        st->sample_entries = b->sample_entries;
        st->n_sample_entries = b->n_sample_entries;
    } else if (b->n_sample_entries != 0) {
        return FG_FAIL(FG_ERR_INVALID_ARG, "forward: batch.n_sample_entries = %d without sample rows",
                       b->n_sample_entries);
    }
    // the same model, KV store and buffers every step: a backend may replay a recorded step
    st->graph_id = ((uint64_t)(uintptr_t)m * 0x9e3779b97f4a7c15ULL) ^ (uint64_t)(uintptr_t)kv;
    return FG_OK;
}

#define OP(call)                        \
    do {                                \
        fg_status op_st_ = (call);      \
        if (op_st_ != FG_OK)            \
            return op_st_;              \
    } while (0)

// The activations a group of matmuls reads, converted once to what the backend's matmul wants
// for the weight type (F32 rows are used as they are). A conversion is reused while the source,
// its row count and the type stay the same; every op that rewrites a source forgets it.
typedef struct act_cache {
    const void *src;
    int64_t rows;
    uint32_t type;
    fg_tensor t;
} act_cache;

// The act buffer as [rows][cols] of an activation type.
static fg_tensor act_view(fg_model *m, uint32_t type, int64_t cols, int64_t rows) {
    int64_t ne[2] = {cols, rows};
    fg_tensor t = fg_tensor_view(m->s.buf, m->s.act, 0, type, 2, ne);
    FG_ASSERT(fg_tensor_nbytes(&t) <= m->s.act_bytes);
    return t;
}

// The act cache holds t, the conversion of the rows at src.
static void act_hold(act_cache *ac, const fg_tensor *t, const void *src) {
    ac->t = *t;
    ac->src = src;
    ac->rows = t->ne[1];
    ac->type = t->type;
}

static fg_status matmul(fg_model *m, act_cache *ac, fg_tensor *dst, const fg_tensor *w, const fg_tensor *x,
                        const fg_tensor *bias, bool accumulate) {
    fg_backend *be = m->be;
    int64_t rows = x->ne[1];
    uint32_t at = fg_backend_act_type(be, w->type, rows);
    if (at == FG_TYPE_F32 || x->type == at) // (x already converted: swiglu_into)
        return fg_op_matmul(be, dst, w, x, bias, accumulate);
    if (ac->src != x->data || ac->rows != rows || ac->type != at) {
        fg_tensor t = act_view(m, at, x->ne[0], rows);
        ac->src = NULL;
        OP(fg_op_convert(be, &t, x));
        act_hold(ac, &t, x->data);
    }
    return fg_op_matmul(be, dst, w, &ac->t, bias, accumulate);
}

// h = silu(gate) * up for the down projection w_down: straight into its activation type where
// the backend converts in the same pass (*hx: what the projection reads, h or that conversion
// in the act buffer, which the act cache then no longer holds).
static fg_status swiglu_into(fg_model *m, act_cache *ac, fg_tensor *h, fg_tensor *hx, const fg_tensor *gate,
                             const fg_tensor *up, const fg_tensor *w_down) {
    fg_backend *be = m->be;
    const int64_t n = gate->ne[1];
    const uint32_t at = fg_backend_act_type(be, w_down->type, n);
    *hx = *h;
    if (at != FG_TYPE_F32 && fg_backend_supports(be, FG_OP_SWIGLU, at)) {
        *hx = act_view(m, at, gate->ne[0], n);
        ac->src = NULL;
    }
    if (m->skip_ops & FG_SKIP_SWIGLU) // (benchmarks: hx's buffer read stale)
        return FG_OK;
    return fg_op_swiglu(be, hx, gate, up);
}

// xn = rmsnorm(x) * w for the projections ws[0..n_w) (NULL entries skipped) that read it: where
// they all take one activation type and the backend norms into it in the same pass, the act
// cache holds that conversion as xn's, and xn's F32 rows are not written (only those
// projections read them, through matmul).
static fg_status rmsnorm_into(fg_model *m, act_cache *ac, fg_tensor *xn, const fg_tensor *x, const fg_tensor *w,
                              const fg_tensor *const *ws, int n_w) {
    fg_backend *be = m->be;
    const int64_t n = x->ne[1];
    uint32_t at = FG_TYPE_COUNT; // none yet
    bool mixed = false;          // projections of different activation types (F32 among them): F32 rows
    for (int i = 0; i < n_w; i++) {
        if (!ws[i])
            continue;
        const uint32_t t = fg_backend_act_type(be, ws[i]->type, n);
        mixed = mixed || (at != FG_TYPE_COUNT && t != at);
        at = t;
    }
    ac->src = NULL;
    const bool skip = m->skip_ops & FG_SKIP_NORM; // (benchmarks: the outputs' buffers read stale)
    if (mixed || at == FG_TYPE_COUNT || at == FG_TYPE_F32 || !fg_backend_supports(be, FG_OP_RMSNORM, at))
        return skip ? FG_OK : fg_op_rmsnorm(be, xn, x, w, m->hp.rms_eps);
    fg_tensor t = act_view(m, at, x->ne[0], n);
    if (!skip)
        FG_TRY(fg_op_rmsnorm(be, &t, x, w, m->hp.rms_eps));
    act_hold(ac, &t, xn->data);
    return FG_OK;
}

// The projections that read a layer's normed input (q|k|v) and its FFN input (gate|up).
static int attn_inputs(const fg_layer *ly, const fg_tensor *ws[3]) {
    ws[0] = ly->wqkv ? ly->wqkv : ly->wq;
    ws[1] = ly->wqkv ? NULL : ly->wk;
    ws[2] = ly->wqkv ? NULL : ly->wv;
    return 3;
}
static int ffn_inputs(const fg_layer *ly, const fg_tensor *ws[3]) {
    ws[0] = ly->w_gate_up ? ly->w_gate_up : ly->w_gate;
    ws[1] = ly->w_gate_up ? NULL : ly->w_up;
    ws[2] = NULL;
    return 3;
}

// ---- tensor parallelism: x += all_reduce(in . w^T) (+ bias, on rank 0 only: the workers do
// not hold it), normed into xn with next_norm; glm4's post-norm (post) applies to the sum.
// The projection writes to scratch (no accumulate into x: every rank holds the same x, so the
// residual is added once, after the sum).
static fg_status tp_reduce_residual(fg_model *m, act_cache *ac, fg_tensor *x, fg_tensor *xn, const fg_tensor *w,
                                    const fg_tensor *in, const fg_tensor *bias, const fg_tensor *post,
                                    const fg_tensor *next_norm, int64_t n) {
    fg_backend *be = m->be;
    fg_tensor ao = rows_of(&m->s.ao, n);
    OP(matmul(m, ac, &ao, w, in, bias, false));
    if (!m->tp.skip_all_reduce) // (benchmarks: measuring the all-reduces' share)
        OP(fg_op_all_reduce(be, m->tp.comm, &ao));
    if (post)
        OP(fg_op_rmsnorm(be, &ao, &ao, post, m->hp.rms_eps));
    return fg_op_add_rmsnorm(be, x, xn, &ao, next_norm, m->hp.rms_eps);
}

// One layer over n rows; *n_rows becomes n_out on the last layer when it gathers: after
// storing K/V only the rows that want logits go on (gathered into s->xo, as llama.cpp does
// with inp_out_ids; the rows are independent, so the result is the same, minus the work on
// rows nobody reads); n_out < 0: every row goes on (not the last layer, or an embedding step,
// which pools them all). Decoders read xn (this layer's normed input) and leave the next norm's
// output in xn (attn_norm of the next layer, output_norm after the last). Encoders (issue 14,
// post-norm) read the residual x itself and leave it normed: x = LN(x + attn(x)), then
// x = LN(x + ffn(x)). *x: the residual tensor.
static fg_status run_layer(fg_model *m, fg_kv_store *kv, act_cache *ac, int32_t il, int64_t *n_rows,
                           int64_t n_out, fg_tensor *x) {
    fg_backend *be = m->be;
    const fg_hparams *hp = &m->hp;
    const fg_layer *ly = &m->layers[il];
    const bool last = il == hp->n_layer - 1;
    const bool enc = m->at->encoder;
    fg_scratch *s = &m->s;
    int64_t n = *n_rows;
    // this rank's heads (all of them without tensor parallelism)
    const int32_t n_head = m->tp.n_head, n_head_kv = m->tp.n_head_kv;
    const int64_t D = hp->head_dim, Q = (int64_t)n_head * D, KV = (int64_t)n_head_kv * D;
    fg_tensor xn = enc ? *x : rows_of(&s->xn, n); // the layer's input

    // ---- attention
    fg_tensor q, k, v;
    if (ly->wqkv) {
        fg_tensor qkv = rows_of(&s->qkv, n);
        OP(matmul(m, ac, &qkv, ly->wqkv, &xn, ly->bqkv, false));
        q = fg_tensor_rows(&qkv, 0, Q, n, qkv.nb[1]);
        k = fg_tensor_rows(&qkv, (size_t)Q * sizeof(float), KV, n, qkv.nb[1]);
        v = fg_tensor_rows(&qkv, (size_t)(Q + KV) * sizeof(float), KV, n, qkv.nb[1]);
    } else {
        q = rows_of(&s->q, n);
        k = rows_of(&s->k, n);
        v = rows_of(&s->v, n);
        OP(matmul(m, ac, &q, ly->wq, &xn, ly->bq, false));
        OP(matmul(m, ac, &k, ly->wk, &xn, ly->bk, false));
        OP(matmul(m, ac, &v, ly->wv, &xn, ly->bv, false));
    }
    if (ly->q_norm) { // per-head RMSNorm over [n][heads][D] views into s->q and s->k
        fg_tensor qh = q, kh = k, qo = rows_of(&s->q, n), ko = rows_of(&s->k, n);
        fg_tensor *h4[4] = {&qh, &qo, &kh, &ko};
        const int64_t heads[4] = {n_head, n_head, n_head_kv, n_head_kv};
        for (int i = 0; i < 4; i++) {
            fg_tensor *t = h4[i];
            size_t row = t->nb[1];
            t->ne[0] = D;
            t->ne[1] = heads[i];
            t->ne[2] = n;
            t->nb[1] = (size_t)D * sizeof(float);
            t->nb[2] = row;
            t->nb[3] = row * (size_t)n;
        }
        OP(fg_op_rmsnorm(be, &qo, &qh, ly->q_norm, hp->rms_eps));
        OP(fg_op_rmsnorm(be, &ko, &kh, ly->k_norm, hp->rms_eps));
        q = rows_of(&s->q, n);
        k = rows_of(&s->k, n);
    }
    const bool kv_only = last && n_out == 0; // no logits wanted: the K/V of the step is all that matters
    fg_tensor att = rows_of(&s->att, n);
    fg_attn_params ap = {.layer = il, .n_head = n_head, .scale = 1.0f / sqrtf((float)D), .causal = hp->causal};
    if (hp->n_rot > 0) {
        fg_rope_params rp = {
            .n_head = n_head,
            .head_dim = hp->head_dim,
            .n_rot = hp->n_rot,
            .mode = m->at->rope,
            .freq_base = hp->rope_freq_base,
            .freq_scale = hp->rope_freq_scale,
            .freq_factors = m->rope_freqs,
        };
        if (kv_only)
            return fg_op_rope_kv_store(be, &q, &k, &v, &rp, n_head_kv, &kv->view, il);
        // the output projection's activations straight from the attention (the act cache then
        // holds them as att's), unless the last layer gathers att's rows first
        const uint32_t at = fg_backend_act_type(be, ly->wo->type, n);
        const bool conv = at != FG_TYPE_F32 && !(last && n_out >= 0 && n_out < n);
        fg_tensor attq = conv ? act_view(m, at, att.ne[0], n) : att;
        ac->src = NULL; // (the act buffer: attq from here)
        if (!(m->skip_ops & FG_SKIP_ATTN)) // (benchmarks: att's buffers read stale)
            OP(fg_op_rope_kv_attention(be, &att, conv ? &attq : NULL, &q, &k, &v, &rp, n_head_kv, &kv->view, &ap));
        if (conv)
            act_hold(ac, &attq, att.data);
    } else {
        OP(fg_op_kv_store(be, &kv->view, il, &k, &v));
        if (kv_only)
            return FG_OK;
        OP(fg_op_attention(be, &att, &q, &kv->view, &ap));
    }
    if (last && n_out >= 0 && n_out < n) {
        fg_tensor ag = rows_of(&s->q, n_out), xg = rows_of(&s->xo, n_out);
        OP(fg_op_gather_out(be, &ag, &att));
        OP(fg_op_gather_out(be, &xg, x));
        att = ag;
        *x = xg;
        n = n_out;
        *n_rows = n;
        xn = enc ? *x : rows_of(&s->xn, n);
    }
    if (enc) { // x = LN(x + att . wo^T + bo)
        OP(matmul(m, ac, x, ly->wo, &att, ly->bo, true));
        OP(fg_op_layernorm(be, x, x, ly->attn_out_norm, ly->attn_out_norm_b, hp->norm_eps));
        xn = *x;
    } else if (m->tp.size > 1) {
        OP(tp_reduce_residual(m, ac, x, &xn, ly->wo, &att, ly->bo, ly->post_attn_norm, ly->ffn_norm, n));
    } else if (ly->post_attn_norm) {
        fg_tensor ao = rows_of(&s->ao, n);
        OP(matmul(m, ac, &ao, ly->wo, &att, ly->bo, false));
        OP(fg_op_rmsnorm(be, &ao, &ao, ly->post_attn_norm, hp->rms_eps));
        OP(fg_op_add_rmsnorm(be, x, &xn, &ao, ly->ffn_norm, hp->rms_eps));
    } else {
        OP(matmul(m, ac, x, ly->wo, &att, ly->bo, true)); // x += att . wo^T + bo
        const fg_tensor *ws[3];
        OP(rmsnorm_into(m, ac, &xn, x, ly->ffn_norm, ws, ffn_inputs(ly, ws)));
    }
    if (enc || m->tp.size > 1 || ly->post_attn_norm)
        ac->src = NULL; // xn was rewritten

    // ---- feed-forward
    const int64_t F = m->tp.n_ff;
    fg_tensor h = rows_of(&s->h, n), hx = h; // hx: what the down projection reads
    if (m->at->ffn_gelu) { // bert: gelu(x . up^T + b_up)
        OP(matmul(m, ac, &h, ly->w_up, &xn, ly->b_up, false));
        OP(fg_op_gelu(be, &h, &h, FG_GELU_ERF));
    } else if (ly->w_gate_up) {
        fg_tensor gu = rows_of(&s->g, n); // [n][2*n_ff] = gate | up
        OP(matmul(m, ac, &gu, ly->w_gate_up, &xn, NULL, false));
        fg_tensor gate = fg_tensor_rows(&gu, 0, F, n, gu.nb[1]);
        fg_tensor up = fg_tensor_rows(&gu, (size_t)F * sizeof(float), F, n, gu.nb[1]);
        OP(swiglu_into(m, ac, &h, &hx, &gate, &up, ly->w_down));
    } else {
        fg_tensor g = fg_tensor_rows(&s->g, 0, F, n, (size_t)F * sizeof(float)), u = rows_of(&s->u, n);
        OP(matmul(m, ac, &g, ly->w_gate, &xn, NULL, false));
        OP(matmul(m, ac, &u, ly->w_up, &xn, NULL, false));
        OP(swiglu_into(m, ac, &h, &hx, &g, &u, ly->w_down));
    }
    const fg_tensor *next_norm = enc ? NULL : last ? m->output_norm : m->layers[il + 1].attn_norm;
    if (enc) { // x = LN(x + h . down^T + b_down)
        OP(matmul(m, ac, x, ly->w_down, &hx, ly->b_down, true));
        OP(fg_op_layernorm(be, x, x, ly->layer_out_norm, ly->layer_out_norm_b, hp->norm_eps));
    } else if (m->tp.size > 1) {
        OP(tp_reduce_residual(m, ac, x, &xn, ly->w_down, &hx, NULL, ly->post_ffw_norm, next_norm, n));
    } else if (ly->post_ffw_norm) {
        fg_tensor ao = rows_of(&s->ao, n);
        OP(matmul(m, ac, &ao, ly->w_down, &hx, NULL, false));
        OP(fg_op_rmsnorm(be, &ao, &ao, ly->post_ffw_norm, hp->rms_eps));
        OP(fg_op_add_rmsnorm(be, x, &xn, &ao, next_norm, hp->rms_eps));
    } else if (!last) { // the next layer's q|k|v read xn
        OP(matmul(m, ac, x, ly->w_down, &hx, NULL, true)); // x += h . w_down^T
        const fg_tensor *ws[3];
        OP(rmsnorm_into(m, ac, &xn, x, next_norm, ws, attn_inputs(&m->layers[il + 1], ws)));
        return FG_OK;
    } else {
        OP(matmul(m, ac, x, ly->w_down, &hx, NULL, true));
        OP(fg_op_rmsnorm(be, &xn, x, next_norm, hp->rms_eps));
    }
    ac->src = NULL;
    return FG_OK;
}

// The ops of one step, between step_begin and step_end. An embedding model (a pooling type)
// keeps every row through the last layer and ends with the pooled, normalised vector of each
// sequence, downloaded into m->embd instead of logits (issue 14).
static fg_status run_ops(fg_model *m, fg_kv_store *kv, const fg_step *st) {
    fg_backend *be = m->be;
    fg_scratch *s = &m->s;
    const fg_hparams *hp = &m->hp;
    const bool embed = hp->pooling != FG_POOL_NONE;
    int64_t n = st->n_tokens;
    act_cache ac = {0};
    fg_tensor x = rows_of(&s->x, n), xn = rows_of(&s->xn, n);
    OP(fg_op_get_rows(be, &x, m->tok_embd));
    if (m->at->encoder) { // + position row + token type 0, LayerNorm with bias
        if (m->pos_embd)
            OP(fg_op_add_rows(be, &x, m->pos_embd, FG_ROWS_POS, 0));
        if (m->type_embd)
            OP(fg_op_add_rows(be, &x, m->type_embd, FG_ROWS_FIXED, 0));
        OP(fg_op_layernorm(be, &x, &x, m->embd_norm, m->embd_norm_b, hp->norm_eps));
    } else {
        const fg_tensor *ws[3];
        OP(rmsnorm_into(m, &ac, &xn, &x, m->layers[0].attn_norm, ws, attn_inputs(&m->layers[0], ws)));
    }
    for (int32_t il = 0; il < hp->n_layer; il++)
        FG_TRY(run_layer(m, kv, &ac, il, &n, il == hp->n_layer - 1 && !embed ? st->n_out : -1, &x));
    if (embed) { // the encoder's last x, or the decoder's output_norm(x) in xn
        fg_tensor e = rows_of(&s->emb, st->n_seqs);
        OP(fg_op_pool(be, &e, m->at->encoder ? &x : &xn, (fg_pool_mode)hp->pooling, hp->normalize));
        OP(fg_op_check_finite(be, &e, 0));
        return fg_op_download_async(be, &e, 0, m->embd, (size_t)st->n_seqs * (size_t)hp->n_embd * sizeof(float));
    }
    if (st->n_out == 0 || m->tp.rank > 0)
        return FG_OK; // (a tensor-parallel worker: rank 0 computes the logits)
    // xn holds output_norm(x) for the n_out rows
    const int64_t V = m->hp.n_vocab;
    for (int64_t r0 = 0; r0 < st->n_out; r0 += s->lg_rows) {
        int64_t nr = FG_MIN((int64_t)s->lg_rows, st->n_out - r0);
        fg_tensor xr = fg_tensor_rows(&s->xn, (size_t)r0 * s->xn.nb[1], s->xn.ne[0], nr, s->xn.nb[1]);
        fg_tensor lg = rows_of(&s->lg, nr);
        OP(matmul(m, &ac, &lg, m->output, &xr, NULL, false));
        // A weight holding NaN/inf (or an overflow in a broken file) poisons every logit: the
        // backend finds the first such value (fg_model_wait reports it) rather than letting the
        // sampler turn NaNs into a stream of token 0.
        OP(fg_op_check_finite(be, &lg, r0));
        if (st->sample) { // sampled on the backend: the rows never leave it
            fg_tensor sr = fg_tensor_rows(&s->samp, (size_t)r0 * s->samp.nb[1], FG_SAMPLE_RESULT_WORDS, nr,
                                          s->samp.nb[1]);
            sr.type = FG_TYPE_I32;
            OP(fg_op_sample(be, &sr, &lg, r0));
        } else {
            OP(fg_op_download_async(be, &lg, 0, m->logits + r0 * V, (size_t)(nr * V) * sizeof(float)));
        }
    }
    if (st->sample) // one small copy: a token, its log-probability and the top-N per row
        OP(fg_op_download_async(be, &s->samp, 0, m->samples, (size_t)st->n_out * sizeof(fg_sample_result)));
    return FG_OK;
}

fg_status fg_model_submit(fg_model *m, fg_kv_store *kv, const fg_batch *b) {
    if (!m || !kv || kv->m != m)
        return FG_FAIL(FG_ERR_INVALID_ARG, "forward: the KV store belongs to another model");
    if (m->at->encoder || m->hp.pooling != FG_POOL_NONE) // issue 14
        return FG_FAIL(FG_ERR_UNSUPPORTED, "%s: %s model with %s: it has no logits to generate text from",
                       m->path, m->at->name,
                       m->hp.pooling != FG_POOL_NONE ? "a pooling type (an embedding model: forge embed)"
                                                     : "no output head (an encoder)");
    if (m->e_pending >= 0)
        return FG_FAIL(FG_ERR_INVALID_ARG, "forward: an embedding step was submitted and not waited for");
    if (m->pending)
        return FG_FAIL(FG_ERR_INVALID_ARG, "forward: the previous step was submitted and not waited for");
    fg_step step;
    FG_TRY(make_step(m, kv, b, &step));
    if (m->tp.group) // tensor parallelism: the workers run the same step on their shards
        FG_TRY(fg_tp_group_post_step(m->tp.group, kv, b));
    fg_status st = fg_step_begin(m->be, &step);
    if (st == FG_OK) {
        st = run_ops(m, kv, &step);
        if (st != FG_OK)
            fg_step_abort(m->be);
        else
            st = fg_step_end(m->be);
    }
    if (st != FG_OK)
        return m->tp.group ? fg_tp_group_wait_step(m->tp.group, st) : st;
    m->pending = true;
    m->pending_sampled = step.sample != NULL;
    m->pending_out = step.n_out;
    return FG_OK;
}

fg_status fg_model_wait(fg_model *m, const float **logits, int32_t *n_out) {
    if (!m || !m->pending)
        return FG_FAIL(FG_ERR_INVALID_ARG, "forward: no step was submitted");
    m->pending = false;
    fg_step_result res;
    fg_status st = fg_step_wait(m->be, &res);
    if (m->tp.group) // the workers' steps too; a failure anywhere stops the group
        st = fg_tp_group_wait_step(m->tp.group, st);
    FG_TRY(st);
    if (res.bad_row >= 0)
        return FG_FAIL(FG_ERR_FORMAT,
                       "%s: forward: logit %lld of token %d is %g: the weights produce non-finite values", m->path,
                       (long long)res.bad_col, m->out_rows[res.bad_row], (double)res.bad_value);
    if (logits)
        *logits = m->pending_sampled ? NULL : m->logits;
    if (n_out)
        *n_out = m->pending_out;
    return FG_OK;
}

fg_status fg_model_wait_samples(fg_model *m, const fg_sample_result **res, int32_t *n_out) {
    FG_TRY(fg_model_wait(m, NULL, n_out));
    if (res)
        *res = m->pending_sampled ? m->samples : NULL;
    return FG_OK;
}

// Rows of the batch that want logits (make_step's rule), or -1 when the batch is malformed
// (fg_model_submit then says how).
static int32_t count_wanted(const fg_batch *b) {
    if (!b || b->n_tokens < 1 || !b->seq)
        return -1;
    int32_t n = 0;
    for (int32_t t = 0; t < b->n_tokens; t++)
        n += b->want_logits ? b->want_logits[t] : (t + 1 == b->n_tokens || b->seq[t + 1] != b->seq[t]);
    return n;
}

fg_status fg_model_forward(fg_model *m, fg_kv_store *kv, const fg_batch *b, float *logits) {
    if (b && b->sample)
        return FG_FAIL(FG_ERR_INVALID_ARG, "forward: fg_model_forward hands back logits: a batch with sample rows "
                                           "goes through fg_model_submit and fg_model_wait_samples");
    int32_t wanted = count_wanted(b);
    if (!logits && wanted > 0 && m && kv && kv->m == m && !m->pending &&
        b->n_tokens <= m->max_batch_tokens) // (a malformed batch is reported by submit)
        return FG_FAIL(FG_ERR_INVALID_ARG, "forward: logits is NULL but %d rows want logits", wanted);
    FG_TRY(fg_model_submit(m, kv, b));
    const float *lg = NULL;
    int32_t n_out = 0;
    FG_TRY(fg_model_wait(m, &lg, &n_out));
    if (n_out > 0 && !logits)
        return FG_FAIL(FG_ERR_INVALID_ARG, "forward: logits is NULL but %d rows want logits", n_out);
    if (n_out > 0)
        memcpy(logits, lg, (size_t)n_out * (size_t)m->hp.n_vocab * sizeof(float));
    return FG_OK;
}

// ---- for embed.c (issue 14): the same step building and ops as fg_model_submit
fg_status fg_model_make_step(fg_model *m, fg_kv_store *kv, const fg_batch *b, fg_step *st) {
    return make_step(m, kv, b, st);
}

fg_status fg_model_run_step(fg_model *m, fg_kv_store *kv, const fg_step *st) { return run_ops(m, kv, st); }
