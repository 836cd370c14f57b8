// kv_store.c - the paged KV cache storage: n_pages pages of page_size tokens for every layer,
// K and V, allocated and laid out by the backend (kv_alloc), seen by the forward pass as an
// fg_kv_view. Which page belongs to which sequence is the caller's business (src/engine's
// page allocator). With tensor parallelism each rank's store holds its own kv heads
// (n_head_kv / tp_size); rank 0 of an in-process group creates, copies and frees the workers'
// stores with its own (tp_group.c).
// Who calls it: the engine, `forge run`/`perplexity`/`bench`, tests.
#include "model/model_internal.h"

#include "base/status.h"
#include "base/util.h"

#include <stdlib.h>

fg_status fg_kv_store_create(fg_model *m, int32_t n_pages, int32_t page_size, uint32_t kv_type,
                             fg_kv_store **out) {
    if (!m || !out)
        return FG_FAIL(FG_ERR_INVALID_ARG, "kv store: model and out are required");
    if (n_pages < 1 || page_size < 1 || page_size > (1 << 16))
        return FG_FAIL(FG_ERR_INVALID_ARG, "kv store: n_pages (%d) and page_size (%d) must be >= 1 (page_size <= 65536)",
                       n_pages, page_size);
    if (kv_type != FG_TYPE_F16 && kv_type != FG_TYPE_F32 && kv_type != FG_TYPE_Q8_0)
        return FG_FAIL(FG_ERR_INVALID_ARG, "kv store: type %s: expected f16, f32 or q8_0",
                       fg_type_name(kv_type));
    const fg_hparams *hp = &m->hp;
    // a quantized cache holds each token's K and V row of each kv head as whole blocks
    const int64_t blk = fg_type_block_size(kv_type);
    if (blk > 1 && hp->head_dim % blk != 0)
        return FG_FAIL(FG_ERR_UNSUPPORTED,
                       "%s: a %s KV cache stores each head's K/V row in blocks of %lld, but the model's "
                       "head_dim is %d: use --kv-type f16",
                       m->path, fg_type_name(kv_type), (long long)blk, hp->head_dim);
    size_t pt_n = 0;
    if (!fg_mul_size((size_t)m->max_seqs, (size_t)n_pages, &pt_n))
        return FG_FAIL(FG_ERR_INVALID_ARG, "kv store: %d pages overflow", n_pages);
    if ((int64_t)n_pages * page_size > INT32_MAX)
        return FG_FAIL(FG_ERR_INVALID_ARG, "kv store: %d pages of %d tokens overflow", n_pages, page_size);
    fg_kv_store *kv = fg_xcalloc(1, sizeof *kv);
    kv->m = m;
    kv->page_table = malloc(pt_n * sizeof(int32_t));
    if (!kv->page_table) {
        free(kv);
        return FG_FAIL(FG_ERR_NOMEM, "kv store: out of memory for page tables (%zu entries)", pt_n);
    }
    fg_kv_view *v = &kv->view;
    v->n_layer = hp->n_layer;
    v->n_pages = n_pages;
    v->page_size = page_size;
    v->n_head_kv = m->tp.n_head_kv; // this rank's (all of them without tensor parallelism)
    v->head_dim = hp->head_dim;
    v->type = kv_type;
    fg_status st = m->be->ops->kv_alloc(m->be, v, &kv->buf);
    if (st == FG_OK) {
        // a sequence may hold every page: the backend sizes its step metadata for that
        fg_backend_limits lim = {.max_pages = n_pages, .max_kv_len = n_pages * page_size};
        st = fg_backend_reserve(m->be, &lim);
    }
    if (st != FG_OK) {
        fg_error_prefix("kv store (%d pages of %d tokens)", n_pages, page_size);
        fg_kv_store_destroy(kv);
        return st;
    }
    if (m->tp.group && (st = fg_tp_group_kv_create(m->tp.group, kv, n_pages, page_size, kv_type)) != FG_OK) {
        fg_kv_store_destroy(kv);
        return st;
    }
    *out = kv;
    return FG_OK;
}

void fg_kv_store_destroy(fg_kv_store *kv) {
    if (!kv)
        return;
    if (kv->tp_peer)
        fg_tp_group_kv_destroy(kv->m->tp.group, kv);
    free(kv->tp_peer);
    if (kv->buf)
        kv->m->be->ops->buf_free(kv->m->be, kv->buf);
    free(kv->page_table);
    free(kv);
}

int32_t fg_kv_store_n_pages(const fg_kv_store *kv) { return kv->view.n_pages; }
int32_t fg_kv_store_page_size(const fg_kv_store *kv) { return kv->view.page_size; }
uint64_t fg_kv_store_bytes(const fg_kv_store *kv) { return kv->m->be->ops->buf_size(kv->buf); }
uint32_t fg_kv_store_type(const fg_kv_store *kv) { return kv->view.type; }

fg_status fg_kv_store_copy_page(fg_kv_store *kv, int32_t dst, int32_t src) {
    int32_t n = kv->view.n_pages;
    if (dst < 0 || dst >= n || src < 0 || src >= n)
        return FG_FAIL(FG_ERR_INVALID_ARG, "kv store: copy page %d <- %d: pages are 0..%d", dst, src,
                       n - 1);
    if (dst == src)
        return FG_OK;
    FG_TRY(fg_kv_copy_page_checked(kv->m->be, &kv->view, dst, src));
    return kv->tp_peer ? fg_tp_group_kv_copy_page(kv->m->tp.group, kv, dst, src) : FG_OK;
}
