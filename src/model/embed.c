// embed.c - embeddings from a model with a pooling type (issue 14): a batch of whole sequences
// becomes one forward step (forward.c's make_step and ops: the encoder's layers, then the pool
// op and the L2 normalisation on the backend, and one download of [n_seqs][n_embd]). The
// attention reads K/V from pages, so the model keeps a small F32 KV store as scratch, sized at
// load for max_batch_tokens tokens (each sequence takes consecutive pages; nothing is kept
// between steps, there is no cache). Not here: batching requests (src/engine/embedder.c),
// tokenization and truncation (the callers: forge embed, the server).
// Who calls it: the CLI (forge embed), the embedding queue, tests.
#include "model/model_internal.h"

#include "base/status.h"
#include "base/util.h"

#include <stdlib.h>
#include <string.h>

#define EMBED_PAGE 16 // tokens per page of the attention scratch

const char *fg_pooling_name(int32_t pooling) {
    switch (pooling) {
    case FG_POOL_NONE: return "none";
    case FG_POOL_MEAN: return "mean";
    case FG_POOL_CLS: return "cls";
    case FG_POOL_LAST: return "last";
    default: return "unknown";
    }
}

fg_status fg_model_embed_init(fg_model *m) {
    const int32_t T = m->max_batch_tokens, S = m->max_seqs;
    // every sequence wastes at most one partly filled page
    const int32_t n_pages = (T + EMBED_PAGE - 1) / EMBED_PAGE + S;
    // F32: the scratch K/V are not rounded (the CPU attention then rounds nothing either)
    FG_TRY(fg_kv_store_create(m, n_pages, EMBED_PAGE, FG_TYPE_F32, &m->ekv));
    m->e_tokens = fg_xcalloc((size_t)T, sizeof *m->e_tokens);
    m->e_pos = fg_xcalloc((size_t)T, sizeof *m->e_pos);
    m->e_seq = fg_xcalloc((size_t)T, sizeof *m->e_seq);
    m->e_want = fg_xcalloc((size_t)T, sizeof *m->e_want); // all false: no logits
    m->e_n_kv = fg_xcalloc((size_t)S, sizeof *m->e_n_kv);
    m->e_pt = fg_xcalloc((size_t)S, sizeof *m->e_pt);
    m->e_pages = fg_xcalloc((size_t)n_pages, sizeof *m->e_pages);
    for (int32_t i = 0; i < n_pages; i++)
        m->e_pages[i] = i;
    void *p = NULL;
    size_t bytes = (size_t)S * (size_t)m->hp.n_embd * sizeof(float);
    fg_status st = m->be->ops->host_alloc(m->be, bytes, &p);
    if (st != FG_OK) {
        fg_error_prefix("%s: embeddings (%zu bytes)", m->path, bytes);
        return st;
    }
    m->embd = p;
    return FG_OK;
}

void fg_model_embed_free(fg_model *m) {
    if (m->embd && m->be)
        m->be->ops->host_free(m->be, m->embd);
    m->embd = NULL;
    fg_kv_store_destroy(m->ekv);
    m->ekv = NULL;
    free(m->e_tokens);
    free(m->e_pos);
    free(m->e_seq);
    free(m->e_want);
    free(m->e_n_kv);
    free(m->e_pt);
    free(m->e_pages);
}

fg_status fg_model_embed_submit(fg_model *m, const fg_embed_batch *b) {
    if (!m || !b)
        return FG_FAIL(FG_ERR_INVALID_ARG, "embed: model and batch are required");
    if (m->hp.pooling == FG_POOL_NONE)
        return FG_FAIL(FG_ERR_UNSUPPORTED,
                       "%s: %s.pooling_type is absent or 0 (none): the model gives no vector per input",
                       m->path, m->at->name);
    if (m->pending || m->e_pending >= 0)
        return FG_FAIL(FG_ERR_INVALID_ARG, "embed: the previous step was submitted and not waited for");
    if (b->n_seqs < 1 || !b->tokens || !b->n_tokens)
        return FG_FAIL(FG_ERR_INVALID_ARG, "embed: batch.n_seqs must be >= 1 with tokens and n_tokens");
    if (b->n_seqs > m->max_seqs)
        return FG_FAIL(FG_ERR_CAPACITY, "embed: %d sequences in one step, the model was loaded for %d (max_seqs)",
                       b->n_seqs, m->max_seqs);
    const int32_t limit = m->info.max_embed_tokens, n_vocab = m->hp.n_vocab;
    int32_t nt = 0, page = 0;
    for (int32_t s = 0; s < b->n_seqs; s++) {
        const int32_t n = b->n_tokens[s];
        const int32_t *tok = b->tokens[s];
        if (n < 1 || !tok)
            return FG_FAIL(FG_ERR_INVALID_ARG, "embed: sequence %d has %d tokens (at least 1 is needed)", s, n);
        if (n > limit)
            return FG_FAIL(FG_ERR_CAPACITY,
                           "embed: sequence %d has %d tokens, the model takes at most %d (max_seq %d, "
                           "max_batch_tokens %d)",
                           s, n, limit, m->hp.max_seq, m->max_batch_tokens);
        if (n > m->max_batch_tokens - nt)
            return FG_FAIL(FG_ERR_CAPACITY, "embed: the batch's sequences 0..%d hold more than %d tokens "
                                            "(max_batch_tokens)", s, m->max_batch_tokens);
        for (int32_t i = 0; i < n; i++) {
            if (tok[i] < 0 || tok[i] >= n_vocab)
                return FG_FAIL(FG_ERR_INVALID_ARG, "embed: sequence %d: token %d is id %d, outside [0, %d)", s,
                               i, tok[i], n_vocab);
            m->e_tokens[nt + i] = tok[i];
            m->e_pos[nt + i] = i;
            m->e_seq[nt + i] = s;
        }
        m->e_n_kv[s] = n;
        m->e_pt[s] = m->e_pages + page;
        page += (n + EMBED_PAGE - 1) / EMBED_PAGE;
        nt += n;
    }
    FG_ASSERT(page <= fg_kv_store_n_pages(m->ekv));
    fg_batch fb = {
        .n_tokens = nt,
        .tokens = m->e_tokens,
        .pos = m->e_pos,
        .seq = m->e_seq,
        .want_logits = m->e_want,
        .n_seqs = b->n_seqs,
        .n_kv = m->e_n_kv,
        .page_tables = m->e_pt,
    };
    fg_step step;
    FG_TRY(fg_model_make_step(m, m->ekv, &fb, &step));
    FG_TRY(fg_step_begin(m->be, &step));
    fg_status st = fg_model_run_step(m, m->ekv, &step);
    if (st != FG_OK) {
        fg_step_abort(m->be);
        return st;
    }
    FG_TRY(fg_step_end(m->be));
    m->e_pending = b->n_seqs;
    return FG_OK;
}

fg_status fg_model_embed_wait(fg_model *m, const float **out, int32_t *n_seqs) {
    if (!m || m->e_pending < 0)
        return FG_FAIL(FG_ERR_INVALID_ARG, "embed: no embedding step was submitted");
    const int32_t ns = m->e_pending;
    m->e_pending = -1;
    fg_step_result res;
    FG_TRY(fg_step_wait(m->be, &res));
    if (res.bad_row >= 0)
        return FG_FAIL(FG_ERR_FORMAT,
                       "%s: embed: element %lld of sequence %lld's vector is %g: the weights produce non-finite "
                       "values",
                       m->path, (long long)res.bad_col, (long long)res.bad_row, (double)res.bad_value);
    if (out)
        *out = m->embd;
    if (n_seqs)
        *n_seqs = ns;
    return FG_OK;
}

fg_status fg_model_embed(fg_model *m, const fg_embed_batch *b, float *out) {
    if (!out)
        return FG_FAIL(FG_ERR_INVALID_ARG, "embed: out is NULL");
    FG_TRY(fg_model_embed_submit(m, b));
    const float *e = NULL;
    int32_t ns = 0;
    FG_TRY(fg_model_embed_wait(m, &e, &ns));
    memcpy(out, e, (size_t)ns * (size_t)m->hp.n_embd * sizeof(float));
    return FG_OK;
}

int32_t fg_embed_truncate(const fg_tokenizer *t, int32_t *ids, int32_t n, int32_t limit) {
    if (n <= limit || limit < 1)
        return n;
    const int32_t last = ids[n - 1];
    const bool appended = fg_tokenizer_token_kind(t, last) == FG_TOKEN_CONTROL &&
                          (last == fg_tokenizer_sep(t) || last == fg_tokenizer_eos(t));
    if (appended && limit >= 2)
        ids[limit - 1] = last;
    return limit;
}
