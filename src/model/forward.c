// forward.c - the batched forward pass, written once against fg_backend_ops: embeddings ->
// per layer (rmsnorm, q/k/v projections with biases, qk-norm, rope, KV store, paged
// attention, output projection, residual, rmsnorm, SwiGLU FFN, residual; glm4's post norms; the
// last layer continues only with the rows wanting logits) -> output norm -> output projection
// in chunks -> logits on the host.
// Nothing is allocated here: scratch tensors and host metadata are sized at load.
// Who calls it: the engine, `forge run`/`perplexity`/`bench`, the golden tests.
#include "model/model_internal.h"

#include "base/status.h"
#include "base/util.h"

#include <math.h>
#include <string.h>

// A 2-D F32 view of `rows` rows of `cols` floats, row stride nb1 bytes, starting `off` bytes
// into t's data.
static fg_tensor view2d(const fg_tensor *t, size_t off, int64_t cols, int64_t rows, size_t nb1) {
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

// The first n rows of a contiguous scratch tensor.
static fg_tensor rows_of(const fg_tensor *t, int64_t n) {
    return view2d(t, 0, t->ne[0], n, t->nb[1]);
}

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
    return FG_OK;
}

#define OP(call)                        \
    do {                                \
        fg_status op_st_ = (call);      \
        if (op_st_ != FG_OK)            \
            return op_st_;              \
    } while (0)

// One layer over n rows. n_out >= 0 on the last layer: after storing K/V only the n_out rows
// that want logits go on (gathered into s->xo, as llama.cpp does with inp_out_ids); the rows
// are independent, so the result is the same, minus the work on rows nobody reads.
static fg_status run_layer(fg_model *m, fg_kv_store *kv, int32_t il, int64_t n, int64_t n_out) {
    fg_backend *be = m->be;
    const fg_backend_ops *ops = be->ops;
    const fg_hparams *hp = &m->hp;
    const fg_layer *ly = &m->layers[il];
    fg_scratch *s = &m->s;
    int64_t D = hp->head_dim;
    fg_tensor x = rows_of(&s->x, n), xn = rows_of(&s->xn, n), ao = rows_of(&s->ao, n);
    fg_tensor q = rows_of(&s->q, n), qt = rows_of(&s->qt, n), k = rows_of(&s->k, n),
              kt = rows_of(&s->kt, n), v = rows_of(&s->v, n);

    OP(ops->rmsnorm(be, &xn, &x, ly->attn_norm, hp->rms_eps));
    if (ly->q_norm) {
        OP(ops->matmul(be, &qt, ly->wq, &xn, ly->bq));
        OP(ops->matmul(be, &kt, ly->wk, &xn, ly->bk));
        // per-head RMSNorm: rows are heads
        fg_tensor qh = view2d(&qt, 0, D, n * hp->n_head, D * sizeof(float));
        fg_tensor qo = view2d(&q, 0, D, n * hp->n_head, D * sizeof(float));
        fg_tensor kh = view2d(&kt, 0, D, n * hp->n_head_kv, D * sizeof(float));
        fg_tensor ko = view2d(&k, 0, D, n * hp->n_head_kv, D * sizeof(float));
        OP(ops->rmsnorm(be, &qo, &qh, ly->q_norm, hp->rms_eps));
        OP(ops->rmsnorm(be, &ko, &kh, ly->k_norm, hp->rms_eps));
    } else {
        OP(ops->matmul(be, &q, ly->wq, &xn, ly->bq));
        OP(ops->matmul(be, &k, ly->wk, &xn, ly->bk));
    }
    OP(ops->matmul(be, &v, ly->wv, &xn, ly->bv));
    if (hp->n_rot > 0) {
        fg_rope_params rp = {
            .n_head = hp->n_head,
            .head_dim = hp->head_dim,
            .n_rot = hp->n_rot,
            .mode = m->at->rope,
            .freq_base = hp->rope_freq_base,
            .freq_scale = hp->rope_freq_scale,
            .freq_factors = m->rope_freqs,
        };
        OP(ops->rope(be, &q, &rp));
        rp.n_head = hp->n_head_kv;
        OP(ops->rope(be, &k, &rp));
    }
    OP(ops->kv_store(be, &kv->view, il, &k, &v));
    if (n_out == 0)
        return FG_OK; // last layer, no logits wanted: the K/V of the step is all that matters
    fg_tensor att = qt; // qt is free again: attention output [n][n_head*head_dim]
    OP(ops->attention(be, &att, &q, &kv->view, il, hp->n_head, 1.0f / sqrtf((float)D)));
    if (n_out > 0 && n_out < n) {
        fg_tensor ag = rows_of(&s->q, n_out), xg = rows_of(&s->xo, n_out);
        OP(ops->gather_out(be, &ag, &att));
        OP(ops->gather_out(be, &xg, &x));
        att = ag;
        x = xg;
        n = n_out;
        xn = rows_of(&s->xn, n);
        ao = rows_of(&s->ao, n);
    }
    OP(ops->matmul(be, &ao, ly->wo, &att, ly->bo));
    if (ly->post_attn_norm) {
        OP(ops->rmsnorm(be, &xn, &ao, ly->post_attn_norm, hp->rms_eps));
        OP(ops->add(be, &x, &x, &xn));
    } else {
        OP(ops->add(be, &x, &x, &ao));
    }

    OP(ops->rmsnorm(be, &xn, &x, ly->ffn_norm, hp->rms_eps));
    int64_t F = hp->n_ff;
    fg_tensor h = rows_of(&s->h, n);
    if (m->at->fused_gate_up) {
        fg_tensor gu = rows_of(&s->g, n); // [n][2*n_ff] = gate | up
        OP(ops->matmul(be, &gu, ly->w_up, &xn, NULL));
        fg_tensor gate = view2d(&gu, 0, F, n, gu.nb[1]);
        fg_tensor up = view2d(&gu, (size_t)F * sizeof(float), F, n, gu.nb[1]);
        OP(ops->swiglu(be, &h, &gate, &up));
    } else {
        fg_tensor g = rows_of(&s->g, n), u = rows_of(&s->u, n);
        OP(ops->matmul(be, &g, ly->w_gate, &xn, NULL));
        OP(ops->matmul(be, &u, ly->w_up, &xn, NULL));
        OP(ops->swiglu(be, &h, &g, &u));
    }
    OP(ops->matmul(be, &ao, ly->w_down, &h, NULL));
    if (ly->post_ffw_norm) {
        OP(ops->rmsnorm(be, &xn, &ao, ly->post_ffw_norm, hp->rms_eps));
        OP(ops->add(be, &x, &x, &xn));
    } else {
        OP(ops->add(be, &x, &x, &ao));
    }
    return FG_OK;
}

fg_status fg_model_forward(fg_model *m, fg_kv_store *kv, const fg_batch *b, float *logits) {
    if (!m || !kv || kv->m != m)
        return FG_FAIL(FG_ERR_INVALID_ARG, "forward: the KV store belongs to another model");
    fg_step step;
    FG_TRY(make_step(m, kv, b, &step));
    if (step.n_out > 0 && !logits)
        return FG_FAIL(FG_ERR_INVALID_ARG, "forward: logits is NULL but %d rows want logits", step.n_out);
    fg_backend *be = m->be;
    const fg_backend_ops *ops = be->ops;
    fg_scratch *s = &m->s;
    int64_t n = b->n_tokens;
    OP(ops->set_step(be, &step));
    fg_tensor x = rows_of(&s->x, n);
    OP(ops->get_rows(be, &x, m->tok_embd));
    int32_t last = m->hp.n_layer - 1;
    for (int32_t il = 0; il < last; il++)
        FG_TRY(run_layer(m, kv, il, n, -1));
    // the last layer leaves the n_out rows in s->xo, or in s->x when every row is wanted
    FG_TRY(run_layer(m, kv, last, n, step.n_out));
    if (step.n_out == 0)
        return ops->sync(be);
    fg_tensor xo = step.n_out < n ? rows_of(&s->xo, step.n_out) : x;
    fg_tensor xon = rows_of(&s->xon, step.n_out);
    OP(ops->rmsnorm(be, &xon, &xo, m->output_norm, m->hp.rms_eps));
    int64_t V = m->hp.n_vocab;
    for (int64_t r0 = 0; r0 < step.n_out; r0 += s->lg_rows) {
        int64_t nr = FG_MIN((int64_t)s->lg_rows, step.n_out - r0);
        fg_tensor xr = view2d(&xon, (size_t)r0 * xon.nb[1], xon.ne[0], nr, xon.nb[1]);
        fg_tensor lg = rows_of(&s->lg, nr);
        OP(ops->matmul(be, &lg, m->output, &xr, NULL));
        OP(ops->download(be, &lg, 0, logits + r0 * V, (size_t)(nr * V) * sizeof(float)));
    }
    OP(ops->sync(be));
    // A weight holding NaN/inf (or an overflow in a broken file) poisons every logit; say so
    // rather than let the sampler turn NaNs into a stream of token 0.
    for (int64_t r = 0; r < step.n_out; r++) {
        const float *row = logits + r * V;
        for (int64_t i = 0; i < V; i++)
            if (!isfinite(row[i]))
                return FG_FAIL(FG_ERR_FORMAT,
                               "%s: forward: logit %lld of token %d is %g: the weights produce "
                               "non-finite values",
                               m->path, (long long)i, step.out_rows[r], (double)row[i]);
    }
    return FG_OK;
}
