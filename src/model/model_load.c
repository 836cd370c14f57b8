// model_load.c - loads a GGUF model onto a backend: reads the hyper-parameters with
// llama.cpp's defaults, binds every tensor by name with its expected shape and type, uploads
// the weights into one backend buffer and sizes the scratch activations for max_batch_tokens.
// Not here: the forward pass (forward.c), the KV pages (kv_store.c), tokenization.
// Who calls it: the CLI (run, perplexity, bench, serve), the engine, tests.
#include "model/model_internal.h"

#include "backend/comm.h"
#include "base/progress.h"
#include "base/status.h"
#include "base/util.h"
#include "quant/quant.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WEIGHT_ALIGN 256
// Largest head size the backends' attention and rope kernels take; refused at load rather
// than at the first forward step.
#define MAX_HEAD_DIM FG_MAX_HEAD_DIM

// ---- hyper-parameters

// The part of a file tensor a tensor-parallel rank holds (whole without tensor parallelism):
// rows [row0, row0 + n_rows) of ne[1] (a 1-D tensor is one row) and, of each row, elements
// [col0, col0 + n_cols) of ne[0] (whole blocks).
typedef struct tp_slice {
    int64_t row0, n_rows, col0, n_cols;
} tp_slice;

// A weight made at load from parts of the file (q|k|v, gate|up and their biases): the parts'
// bytes one after the other are the fused tensor's canonical bytes; a missing bias part is
// zeros (adding 0 changes no value).
typedef struct fused_parts {
    int32_t idx[3];      // m->tensors index of each part, -1: zeros
    uint64_t bytes[3];   // bytes of each part
    tp_slice sl[3];      // the part of each file tensor taken (tensor parallelism)
    int n;
} fused_parts;

typedef struct loader {
    fg_model *m;
    const fg_gguf *g;
    const char *path;
    const char *arch;
    const fg_gguf_tensor **src; // [cap] file tensor of m->tensors[i] (NULL: fused at load)
    fused_parts *parts;         // [cap] the parts of a fused m->tensors[i]
    bool *absorbed;             // [cap] a part of a fused tensor: not uploaded on its own
    tp_slice *slice;            // [cap] the part of file tensor src[i] this rank holds
    int32_t cap;
} loader;

static bool has_key(const loader *L, const char *suffix, char *key, size_t cap) {
    snprintf(key, cap, "%s.%s", L->arch, suffix);
    return fg_gguf_find_key(L->g, key) >= 0;
}

// Integer hyper-parameter <arch>.<suffix> in [lo, hi]; def < 0 means required.
static fg_status get_hp_int(const loader *L, const char *suffix, int64_t def, int64_t lo,
                            int64_t hi, int32_t *out) {
    char key[160];
    int64_t v = def;
    if (has_key(L, suffix, key, sizeof key)) {
        FG_TRY(fg_gguf_get_int(L->g, key, &v));
    } else if (def < 0) {
        return FG_FAIL(FG_ERR_FORMAT, "%s: key '%s' not found", L->path, key);
    }
    if (v < lo || v > hi)
        return FG_FAIL(FG_ERR_FORMAT, "%s: key '%s': expected a value in [%lld, %lld], found %lld",
                       L->path, key, (long long)lo, (long long)hi, (long long)v);
    *out = (int32_t)v;
    return FG_OK;
}

static fg_status get_hp_float(const loader *L, const char *suffix, double def, bool required,
                              double *out) {
    char key[160];
    double v = def;
    if (has_key(L, suffix, key, sizeof key)) {
        FG_TRY(fg_gguf_get_float(L->g, key, &v));
    } else if (required) {
        return FG_FAIL(FG_ERR_FORMAT, "%s: key '%s' not found", L->path, key);
    }
    if (!isfinite(v))
        return FG_FAIL(FG_ERR_FORMAT, "%s: key '%s': expected a finite number, found %g", L->path,
                       key, v);
    *out = v;
    return FG_OK;
}

// Embedding models (issue 14): <arch>.attention.causal (encoders: default false; a generation
// model may not be non-causal), <arch>.pooling_type (llama.cpp's enum: 0 none, 1 mean, 2 cls,
// 3 last; 4 rank is a reranker's head, not supported), and sentence-transformers' normalize and
// max_seq_length (the input limit, at most context_length; absent: context_length).
static fg_status read_embedding_hparams(loader *L, fg_hparams *hp) {
    const bool enc = L->m->at->encoder;
    char key[160];
    hp->causal = !enc;
    if (has_key(L, "attention.causal", key, sizeof key))
        FG_TRY(fg_gguf_get_bool(L->g, key, &hp->causal));
    if (!enc && !hp->causal)
        return FG_FAIL(FG_ERR_UNSUPPORTED, "%s: %s = false: non-causal attention is supported for encoders "
                                           "(bert, nomic-bert) only", L->path, key);
    hp->pooling = FG_POOL_NONE;
    if (has_key(L, "pooling_type", key, sizeof key)) {
        int64_t v = 0;
        FG_TRY(fg_gguf_get_int(L->g, key, &v));
        if (v == 4)
            return FG_FAIL(FG_ERR_UNSUPPORTED, "%s: %s = 4 (rank: a reranker's classification head) is not "
                                               "supported (none 0, mean 1, cls 2, last 3)", L->path, key);
        if (v < 0 || v > 3)
            return FG_FAIL(FG_ERR_FORMAT, "%s: key '%s': expected 0 (none), 1 (mean), 2 (cls) or 3 (last), "
                                          "found %lld", L->path, key, (long long)v);
        hp->pooling = (int32_t)v;
    }
    hp->normalize = false;
    if (fg_gguf_find_key(L->g, "sentence_transformers.normalize") >= 0)
        FG_TRY(fg_gguf_get_bool(L->g, "sentence_transformers.normalize", &hp->normalize));
    hp->max_seq = hp->n_ctx_train;
    if (fg_gguf_find_key(L->g, "sentence_transformers.max_seq_length") >= 0) {
        int64_t v = 0;
        FG_TRY(fg_gguf_get_int(L->g, "sentence_transformers.max_seq_length", &v));
        if (v < 1)
            return FG_FAIL(FG_ERR_FORMAT, "%s: key 'sentence_transformers.max_seq_length': expected >= 1, "
                                          "found %lld", L->path, (long long)v);
        hp->max_seq = (int32_t)FG_MIN(v, (int64_t)hp->n_ctx_train);
    }
    return FG_OK;
}

static fg_status read_hparams(loader *L, fg_hparams *hp) {
    const char *p = L->path;
    char key[160], key2[160];
    FG_TRY(get_hp_int(L, "context_length", -1, 1, INT32_MAX, &hp->n_ctx_train));
    FG_TRY(get_hp_int(L, "embedding_length", -1, 1, 1 << 20, &hp->n_embd));
    FG_TRY(get_hp_int(L, "block_count", -1, 1, 4096, &hp->n_layer));
    FG_TRY(get_hp_int(L, "feed_forward_length", -1, 1, 1 << 22, &hp->n_ff));
    FG_TRY(get_hp_int(L, "attention.head_count", -1, 1, 1 << 16, &hp->n_head));
    FG_TRY(get_hp_int(L, "attention.head_count_kv", hp->n_head, 1, 1 << 16, &hp->n_head_kv));
    if (hp->n_head % hp->n_head_kv != 0) {
        has_key(L, "attention.head_count", key, sizeof key);
        has_key(L, "attention.head_count_kv", key2, sizeof key2);
        return FG_FAIL(FG_ERR_FORMAT, "%s: %s (%d) is not a multiple of %s (%d)", p, key,
                       hp->n_head, key2, hp->n_head_kv);
    }
    if (has_key(L, "attention.key_length", key, sizeof key)) {
        FG_TRY(get_hp_int(L, "attention.key_length", -1, 1, MAX_HEAD_DIM, &hp->head_dim));
    } else {
        if (hp->n_embd % hp->n_head != 0) {
            has_key(L, "attention.head_count", key2, sizeof key2);
            return FG_FAIL(FG_ERR_FORMAT, "%s: %s.embedding_length (%d) is not a multiple of %s (%d)",
                           p, L->arch, hp->n_embd, key2, hp->n_head);
        }
        hp->head_dim = hp->n_embd / hp->n_head;
        if (hp->head_dim > MAX_HEAD_DIM) {
            has_key(L, "embedding_length", key, sizeof key);
            has_key(L, "attention.head_count", key2, sizeof key2);
            return FG_FAIL(FG_ERR_UNSUPPORTED,
                           "%s: head size %s / %s = %d exceeds the supported %d", p, key, key2,
                           hp->head_dim, MAX_HEAD_DIM);
        }
    }
    int32_t v_len = hp->head_dim;
    FG_TRY(get_hp_int(L, "attention.value_length", hp->head_dim, 1, MAX_HEAD_DIM, &v_len));
    if (v_len != hp->head_dim) {
        has_key(L, "attention.value_length", key, sizeof key);
        return FG_FAIL(FG_ERR_UNSUPPORTED, "%s: %s (%d) differs from the key length (%d)", p, key,
                       v_len, hp->head_dim);
    }
    if (L->m->at->abs_pos) // bert: learned positions, nothing rotated (issue 14)
        hp->n_rot = 0;
    else
        FG_TRY(get_hp_int(L, "rope.dimension_count", hp->head_dim, 0, hp->head_dim, &hp->n_rot));
    if (hp->n_rot % 2 != 0) {
        has_key(L, "rope.dimension_count", key, sizeof key);
        return FG_FAIL(FG_ERR_FORMAT, "%s: %s: expected an even number, found %d", p, key,
                       hp->n_rot);
    }
    double eps = 0, base = 10000.0, scale = 0, linear = 0;
    // encoders normalise with LayerNorm (issue 14); BERT's eps is 1e-12
    const char *eps_key = L->m->at->encoder ? "attention.layer_norm_epsilon" : "attention.layer_norm_rms_epsilon";
    FG_TRY(get_hp_float(L, eps_key, 0, true, &eps));
    if (!(eps > 0 && eps < 1)) {
        has_key(L, eps_key, key, sizeof key);
        return FG_FAIL(FG_ERR_FORMAT, "%s: key '%s': expected a value in (0, 1), found %g", p, key,
                       eps);
    }
    FG_TRY(get_hp_float(L, "rope.freq_base", 10000.0, false, &base));
    if (!(base > 0)) {
        has_key(L, "rope.freq_base", key, sizeof key);
        return FG_FAIL(FG_ERR_FORMAT, "%s: key '%s': expected a positive number, found %g", p, key,
                       base);
    }
    if (has_key(L, "rope.scaling.type", key, sizeof key)) {
        const char *s;
        size_t n;
        FG_TRY(fg_gguf_get_str(L->g, key, &s, &n));
        bool ok = (n == 4 && !memcmp(s, "none", 4)) || (n == 6 && !memcmp(s, "linear", 6));
        if (!ok)
            return FG_FAIL(FG_ERR_UNSUPPORTED, "%s: %s '%.*s' is not supported (none, linear)", p,
                           key, (int)FG_MIN(n, 64), s);
    }
    FG_TRY(get_hp_float(L, "rope.scaling.factor", 0, false, &scale));
    FG_TRY(get_hp_float(L, "rope.scale_linear", 0, false, &linear));
    if (scale == 0)
        scale = linear;
    if (scale < 0) {
        return FG_FAIL(FG_ERR_FORMAT, "%s: %s.rope.scaling.factor: expected >= 0, found %g", p,
                       L->arch, scale);
    }
    hp->rms_eps = (float)eps;
    hp->norm_eps = (float)eps;
    hp->rope_freq_base = (float)base;
    hp->rope_freq_scale = scale == 0 ? 1.0f : (float)(1.0 / scale);
    FG_TRY(read_embedding_hparams(L, hp));
    if (has_key(L, "expert_count", key, sizeof key)) {
        int32_t n_expert = 0;
        FG_TRY(get_hp_int(L, "expert_count", 0, 0, 1 << 16, &n_expert));
        if (n_expert > 0)
            return FG_FAIL(FG_ERR_UNSUPPORTED, "%s: %s = %d: mixture-of-experts models are not supported",
                           p, key, n_expert);
    }
    return FG_OK;
}

// ---- tensors

static void fmt_shape(char *out, size_t cap, int n_dims, const int64_t *ne) {
    size_t o = 0;
    o += (size_t)snprintf(out + o, cap - o, "[");
    for (int i = 0; i < n_dims && o < cap; i++)
        o += (size_t)snprintf(out + o, cap - o, "%s%lld", i ? ", " : "", (long long)ne[i]);
    if (o < cap)
        snprintf(out + o, cap - o, "]");
}

// The small F32 tensors (norms, biases, rope frequency factors) must hold finite values
// (and positive ones for rope factors, which divide the rotation angle): a NaN there turns
// every logit into NaN, which would otherwise only show as garbage text.
static fg_status check_finite(const loader *L, const fg_gguf_tensor *t, bool positive) {
    const uint8_t *p = t->data;
    uint64_t n = t->n_bytes / sizeof(float);
    for (uint64_t i = 0; i < n; i++) {
        float v;
        memcpy(&v, p + i * sizeof(float), sizeof v);
        if (!isfinite(v) || (positive && !(v > 0)))
            return FG_FAIL(FG_ERR_FORMAT, "%s: tensor '%s': element %llu is %g, expected a %s number",
                           L->path, t->name, (unsigned long long)i, (double)v,
                           positive ? "positive finite" : "finite");
    }
    return FG_OK;
}

// Binds tensor `name` of shape ne0 (x ne1 when ne1 > 0). f32_only: norms, biases, rope freqs
// (positive: values must be > 0). *out = NULL when absent and optional.
static fg_status bind_ex(loader *L, const char *name, int64_t ne0, int64_t ne1, bool required,
                         bool f32_only, bool positive, const fg_tensor **out) {
    fg_model *m = L->m;
    *out = NULL;
    const fg_gguf_tensor *t = fg_gguf_find_tensor(L->g, name);
    if (!t) {
        if (required)
            return FG_FAIL(FG_ERR_FORMAT, "%s: tensor '%s' not found", L->path, name);
        return FG_OK;
    }
    int n_dims = ne1 > 0 ? 2 : 1;
    int64_t want[4] = {ne0, ne1 > 0 ? ne1 : 1, 1, 1};
    bool same = t->ne[0] == want[0] && t->ne[1] == want[1] && t->ne[2] == 1 && t->ne[3] == 1;
    if (!same) {
        char a[96], b[96];
        fmt_shape(a, sizeof a, n_dims, want);
        fmt_shape(b, sizeof b, t->n_dims, t->ne);
        return FG_FAIL(FG_ERR_FORMAT, "%s: tensor '%s': expected shape %s, found %s", L->path,
                       name, a, b);
    }
    if (!fg_type_known(t->type))
        return FG_FAIL(FG_ERR_UNSUPPORTED, "%s: tensor '%s': unknown type %u", L->path, name,
                       t->type);
    if (f32_only && t->type != FG_TYPE_F32)
        return FG_FAIL(FG_ERR_UNSUPPORTED, "%s: tensor '%s': expected type f32, found %s", L->path,
                       name, fg_type_name(t->type));
    if (!f32_only && !fg_backend_supports(m->be, FG_OP_MATMUL, t->type))
        return FG_FAIL(FG_ERR_UNSUPPORTED, "%s: tensor '%s': type %s is not supported by the %s backend",
                       L->path, name, fg_type_name(t->type), m->be->ops->name);
    if (f32_only)
        FG_TRY(check_finite(L, t, positive));
    FG_ASSERT(m->n_tensors < L->cap);
    int32_t i = m->n_tensors++;
    L->src[i] = t;
    L->slice[i] = (tp_slice){0, want[1], 0, want[0]};
    fg_tensor *d = &m->tensors[i];
    memset(d, 0, sizeof *d);
    d->type = t->type;
    for (int k = 0; k < 4; k++)
        d->ne[k] = want[k];
    *out = d;
    return FG_OK;
}

static fg_status bind(loader *L, const char *name, int64_t ne0, int64_t ne1, bool required,
                      bool f32_only, const fg_tensor **out) {
    return bind_ex(L, name, ne0, ne1, required, f32_only, false, out);
}

static fg_status bind_layer(loader *L, int il, fg_layer *ly) {
    const fg_hparams *hp = &L->m->hp;
    const fg_arch_traits *at = L->m->at;
    int64_t E = hp->n_embd, D = hp->head_dim, Q = (int64_t)hp->n_head * D,
            KV = (int64_t)hp->n_head_kv * D, F = hp->n_ff;
    char n[96];
#define BIND(field, suffix, ne0, ne1, req, f32)                       \
    do {                                                              \
        snprintf(n, sizeof n, "blk.%d.%s", il, suffix);               \
        FG_TRY(bind(L, n, (ne0), (ne1), (req), (f32), &ly->field));   \
    } while (0)
    BIND(attn_norm, "attn_norm.weight", E, 0, true, true);
    BIND(wq, "attn_q.weight", E, Q, true, false);
    BIND(wk, "attn_k.weight", E, KV, true, false);
    BIND(wv, "attn_v.weight", E, KV, true, false);
    // qwen2 files come with all three q/k/v biases or (some fine-tunes/conversions) none:
    // one or two of them alone is a broken file. Other architectures take any subset.
    bool biases = false;
    if (at->qkv_bias) {
        static const char *const bn[3] = {"attn_q.bias", "attn_k.bias", "attn_v.bias"};
        for (int i = 0; i < 3; i++) {
            snprintf(n, sizeof n, "blk.%d.%s", il, bn[i]);
            biases = biases || fg_gguf_find_tensor(L->g, n) != NULL;
        }
    }
    BIND(bq, "attn_q.bias", Q, 0, biases, true);
    BIND(bk, "attn_k.bias", KV, 0, biases, true);
    BIND(bv, "attn_v.bias", KV, 0, biases, true);
    if (at->qk_norm) {
        BIND(q_norm, "attn_q_norm.weight", D, 0, true, true);
        BIND(k_norm, "attn_k_norm.weight", D, 0, true, true);
    }
    BIND(wo, "attn_output.weight", Q, E, true, false);
    BIND(bo, "attn_output.bias", E, 0, false, true);
    if (at->post_norms)
        BIND(post_attn_norm, "post_attention_norm.weight", E, 0, true, true);
    BIND(ffn_norm, "ffn_norm.weight", E, 0, true, true);
    if (at->fused_gate_up) {
        BIND(w_up, "ffn_up.weight", E, 2 * F, true, false);
    } else {
        BIND(w_gate, "ffn_gate.weight", E, F, true, false);
        BIND(w_up, "ffn_up.weight", E, F, true, false);
    }
    BIND(w_down, "ffn_down.weight", F, E, true, false);
    if (at->post_norms)
        BIND(post_ffw_norm, "post_ffw_norm.weight", E, 0, true, true);
#undef BIND
    return FG_OK;
}

// Encoders (issue 14), llama.cpp's names: q/k/v with biases, or the fused attn_qkv (and its
// bias); the output projection (bias optional); post-LayerNorms with biases; bert's FFN up and
// down with biases (optional), nomic-bert's gate, up and down without.
static fg_status bind_encoder_layer(loader *L, int il, fg_layer *ly) {
    const fg_hparams *hp = &L->m->hp;
    const fg_arch_traits *at = L->m->at;
    int64_t E = hp->n_embd, D = hp->head_dim, Q = (int64_t)hp->n_head * D,
            KV = (int64_t)hp->n_head_kv * D, F = hp->n_ff;
    char n[96];
#define BIND(field, suffix, ne0, ne1, req, f32)                       \
    do {                                                              \
        snprintf(n, sizeof n, "blk.%d.%s", il, suffix);               \
        FG_TRY(bind(L, n, (ne0), (ne1), (req), (f32), &ly->field));   \
    } while (0)
    BIND(wqkv, "attn_qkv.weight", E, Q + 2 * KV, false, false);
    if (ly->wqkv) {
        BIND(bqkv, "attn_qkv.bias", Q + 2 * KV, 0, false, true);
    } else {
        BIND(wq, "attn_q.weight", E, Q, true, false);
        BIND(wk, "attn_k.weight", E, KV, true, false);
        BIND(wv, "attn_v.weight", E, KV, true, false);
        BIND(bq, "attn_q.bias", Q, 0, false, true);
        BIND(bk, "attn_k.bias", KV, 0, false, true);
        BIND(bv, "attn_v.bias", KV, 0, false, true);
    }
    BIND(wo, "attn_output.weight", Q, E, true, false);
    BIND(bo, "attn_output.bias", E, 0, false, true);
    BIND(attn_out_norm, "attn_output_norm.weight", E, 0, true, true);
    BIND(attn_out_norm_b, "attn_output_norm.bias", E, 0, true, true);
    BIND(w_up, "ffn_up.weight", E, F, true, false);
    if (at->ffn_gelu) {
        BIND(b_up, "ffn_up.bias", F, 0, false, true);
        BIND(b_down, "ffn_down.bias", E, 0, false, true);
    } else {
        BIND(w_gate, "ffn_gate.weight", E, F, true, false);
    }
    BIND(w_down, "ffn_down.weight", F, E, true, false);
    BIND(layer_out_norm, "layer_output_norm.weight", E, 0, true, true);
    BIND(layer_out_norm_b, "layer_output_norm.bias", E, 0, true, true);
#undef BIND
    return FG_OK;
}

// An embedding table add_rows reads (position_embd, token_types): a type the backend takes.
static fg_status check_rows_table(loader *L, const char *name, const fg_tensor *t) {
    if (t && !fg_backend_supports(L->m->be, FG_OP_ADD_ROWS, t->type))
        return FG_FAIL(FG_ERR_UNSUPPORTED, "%s: tensor '%s': type %s is not supported by the %s backend "
                                           "(f32, f16 or bf16)", L->path, name, fg_type_name(t->type),
                       L->m->be->ops->name);
    return FG_OK;
}

static fg_status bind_encoder(loader *L) {
    fg_model *m = L->m;
    const fg_hparams *hp = &m->hp;
    if (m->at->abs_pos) {
        FG_TRY(bind(L, "position_embd.weight", hp->n_embd, hp->n_ctx_train, true, false, &m->pos_embd));
        FG_TRY(check_rows_table(L, "position_embd.weight", m->pos_embd));
    }
    // token types: any number of rows (BERT has 2); type 0 is added to every token
    const fg_gguf_tensor *tt = fg_gguf_find_tensor(L->g, "token_types.weight");
    int64_t n_types = tt && tt->n_dims == 2 && tt->ne[1] >= 1 && tt->ne[1] <= 1024 ? tt->ne[1] : 2;
    FG_TRY(bind(L, "token_types.weight", hp->n_embd, n_types, false, false, &m->type_embd));
    FG_TRY(check_rows_table(L, "token_types.weight", m->type_embd));
    FG_TRY(bind(L, "token_embd_norm.weight", hp->n_embd, 0, true, true, &m->embd_norm));
    FG_TRY(bind(L, "token_embd_norm.bias", hp->n_embd, 0, true, true, &m->embd_norm_b));
    for (int il = 0; il < hp->n_layer; il++)
        FG_TRY(bind_encoder_layer(L, il, &m->layers[il]));
    return FG_OK;
}

static fg_status bind_all(loader *L) {
    fg_model *m = L->m;
    const fg_hparams *hp = &m->hp;
    const fg_gguf_tensor *te = fg_gguf_find_tensor(L->g, "token_embd.weight");
    if (te && te->ne[0] == hp->n_embd && te->ne[1] != hp->n_vocab)
        return FG_FAIL(FG_ERR_FORMAT,
                       "%s: vocabulary size mismatch: the tokenizer has %d tokens, "
                       "'token_embd.weight' has %lld rows",
                       L->path, hp->n_vocab, (long long)te->ne[1]);
    FG_TRY(bind(L, "token_embd.weight", hp->n_embd, hp->n_vocab, true, false, &m->tok_embd));
    if (m->at->encoder)
        return bind_encoder(L); // no output head
    FG_TRY(bind(L, "output_norm.weight", hp->n_embd, 0, true, true, &m->output_norm));
    FG_TRY(bind(L, "output.weight", hp->n_embd, hp->n_vocab, false, false, &m->output));
    if (!m->output)
        m->output = m->tok_embd; // tied embeddings
    if (hp->n_rot > 0)
        FG_TRY(bind_ex(L, "rope_freqs.weight", hp->n_rot / 2, 0, false, true, true, &m->rope_freqs));
    for (int il = 0; il < hp->n_layer; il++)
        FG_TRY(bind_layer(L, il, &m->layers[il]));
    return FG_OK;
}

// ---- fusion: q|k|v and gate|up become one weight each where their types match, so one
// matmul reads one activation row once per projection group. Each output row of a matmul
// depends only on its weight row, so the values are those of the separate projections.

// Canonical bytes of a bound tensor (its strides are set only when it is placed).
static uint64_t bound_bytes(const fg_tensor *t) {
    uint64_t row = 0;
    fg_type_row_bytes(t->type, t->ne[0], &row); // shape checked at bind
    return row * (uint64_t)t->ne[1];
}

static int32_t tensor_index(const fg_model *m, const fg_tensor *t) {
    return t ? (int32_t)(t - m->tensors) : -1;
}

// Appends a fused tensor of `type`, ne = {ne0, ne1 (0: 1-D)} made of parts p[0..n).
static const fg_tensor *add_fused(loader *L, uint32_t type, int64_t ne0, int64_t ne1, const fg_tensor *const *p,
                                  const uint64_t *bytes, int n) {
    fg_model *m = L->m;
    FG_ASSERT(m->n_tensors < L->cap);
    int32_t i = m->n_tensors++;
    fg_tensor *d = &m->tensors[i];
    memset(d, 0, sizeof *d);
    d->type = type;
    d->ne[0] = ne0;
    d->ne[1] = ne1 > 0 ? ne1 : 1;
    d->ne[2] = d->ne[3] = 1;
    L->src[i] = NULL;
    L->parts[i].n = n;
    for (int k = 0; k < n; k++) {
        L->parts[i].idx[k] = tensor_index(m, p[k]);
        L->parts[i].bytes[k] = bytes[k];
        if (p[k]) {
            L->absorbed[tensor_index(m, p[k])] = true;
            L->parts[i].sl[k] = L->slice[tensor_index(m, p[k])];
        }
    }
    return d;
}

// ---- tensor parallelism: this rank's slices (docs/ARCHITECTURE.md, "Tensor parallelism").
// Column-parallel weights (q, k, v, gate, up and the q/k/v biases) keep the rank's rows;
// row-parallel ones (attn_output, ffn_down) the matching input columns of every row, in whole
// blocks. attn_output's bias is added on rank 0 only; the output projection lives on rank 0
// only (the workers compute no logits); norms and the embeddings are replicated. The bound
// tensors get their local shapes, so fusion and upload below see this rank's weights.

// Does the per-tensor (or per-part) slice setup: hp values are the file's, m->tp the rank's.
static fg_status tp_setup(loader *L, int32_t size, int32_t rank, fg_comm *comm) {
    fg_model *m = L->m;
    const fg_hparams *hp = &m->hp;
    if (size > 1 && (m->at->encoder || hp->pooling != FG_POOL_NONE)) // issue 14
        return FG_FAIL(FG_ERR_UNSUPPORTED, "%s: tensor parallelism is for generation models; an embedding model "
                                           "(%s, pooling %d) runs on one device", L->path, L->arch, hp->pooling);
    const struct {
        const char *suffix;
        int32_t v;
    } k[3] = {{"attention.head_count", hp->n_head},
              {"attention.head_count_kv", hp->n_head_kv},
              {"feed_forward_length", hp->n_ff}};
    for (int i = 0; i < 3; i++)
        if (k[i].v % size != 0)
            return FG_FAIL(FG_ERR_UNSUPPORTED, "%s: %s.%s = %d is not divisible by the tensor-parallel size %d",
                           L->path, L->arch, k[i].suffix, k[i].v, size);
    m->tp = (fg_tp){.size = size, .rank = rank, .n_head = hp->n_head / size, .n_head_kv = hp->n_head_kv / size,
                    .n_ff = hp->n_ff / size, .comm = size > 1 ? comm : NULL};
    return FG_OK;
}

// Rows [rank*per, +per) of a 2-D weight (ne[1]), or elements of a 1-D bias (ne[0]).
static void tp_keep_rows(loader *L, const fg_tensor *t, int64_t per) {
    if (!t)
        return;
    int32_t i = tensor_index(L->m, t);
    fg_tensor *d = &L->m->tensors[i];
    int64_t r0 = (int64_t)L->m->tp.rank * per;
    if (d->ne[1] == 1 && L->src[i]->n_dims == 1) {
        L->slice[i] = (tp_slice){0, 1, r0, per};
        d->ne[0] = per;
    } else {
        L->slice[i] = (tp_slice){r0, per, 0, d->ne[0]};
        d->ne[1] = per;
    }
}

// Input columns [rank*per, +per) of every row of a 2-D weight, in whole blocks.
static fg_status tp_keep_cols(loader *L, const fg_tensor *t, int64_t per) {
    int32_t i = tensor_index(L->m, t);
    fg_tensor *d = &L->m->tensors[i];
    const fg_type_traits *tr = fg_type_traits_get(d->type);
    if (per % tr->blck_size != 0)
        return FG_FAIL(FG_ERR_UNSUPPORTED,
                       "%s: tensor '%s' (%s, blocks of %lld): a rank's %lld of its %lld columns are not whole "
                       "blocks at tensor-parallel size %d",
                       L->path, L->src[i]->name, tr->name, (long long)tr->blck_size, (long long)per,
                       (long long)d->ne[0], L->m->tp.size);
    L->slice[i] = (tp_slice){0, d->ne[1], (int64_t)L->m->tp.rank * per, per};
    d->ne[0] = per;
    return FG_OK;
}

// A tensor this rank does not hold (never uploaded).
static void tp_drop(loader *L, const fg_tensor **t) {
    if (*t)
        L->absorbed[tensor_index(L->m, *t)] = true;
    *t = NULL;
}

static const fg_tensor *add_fused(loader *L, uint32_t type, int64_t ne0, int64_t ne1, const fg_tensor *const *p,
                                  const uint64_t *bytes, int n);

static fg_status tp_shard(loader *L) {
    fg_model *m = L->m;
    const fg_hparams *hp = &m->hp;
    const int64_t E = hp->n_embd, D = hp->head_dim, Q = (int64_t)m->tp.n_head * D,
                  KV = (int64_t)m->tp.n_head_kv * D, F = m->tp.n_ff;
    for (int il = 0; il < hp->n_layer; il++) {
        fg_layer *ly = &m->layers[il];
        tp_keep_rows(L, ly->wq, Q);
        tp_keep_rows(L, ly->wk, KV);
        tp_keep_rows(L, ly->wv, KV);
        tp_keep_rows(L, ly->bq, Q);
        tp_keep_rows(L, ly->bk, KV);
        tp_keep_rows(L, ly->bv, KV);
        FG_TRY(tp_keep_cols(L, ly->wo, Q));
        if (m->tp.rank > 0)
            tp_drop(L, &ly->bo); // the all-reduce would add it once per rank
        if (m->at->fused_gate_up) {
            // the file's [2*n_ff][n_embd] gate|up: this rank's rows of each half, side by side
            const fg_tensor *w = ly->w_up, *p[2] = {w, w};
            uint64_t row = fg_type_row_size_n(w->type, E), b[2] = {row * (uint64_t)F, row * (uint64_t)F};
            const fg_tensor *f = add_fused(L, w->type, E, 2 * F, p, b, 2);
            fused_parts *fp = &L->parts[tensor_index(m, f)];
            fp->sl[0] = (tp_slice){(int64_t)m->tp.rank * F, F, 0, E};
            fp->sl[1] = (tp_slice){hp->n_ff + (int64_t)m->tp.rank * F, F, 0, E};
            ly->w_up = f;
        } else {
            tp_keep_rows(L, ly->w_gate, F);
            tp_keep_rows(L, ly->w_up, F);
        }
        FG_TRY(tp_keep_cols(L, ly->w_down, F));
    }
    if (m->tp.rank > 0 && m->output != m->tok_embd)
        tp_drop(L, &m->output);
    return FG_OK;
}

static void plan_fusion(loader *L) {
    fg_model *m = L->m;
    const fg_hparams *hp = &m->hp;
    // this rank's rows (all of them without tensor parallelism)
    const int64_t E = hp->n_embd, D = hp->head_dim, Q = (int64_t)m->tp.n_head * D, KV = (int64_t)m->tp.n_head_kv * D,
                  F = m->tp.n_ff;
    for (int il = 0; il < hp->n_layer; il++) {
        fg_layer *ly = &m->layers[il];
        if (ly->wq && ly->wq->type == ly->wk->type && ly->wq->type == ly->wv->type) { // (not a file's attn_qkv)
            const fg_tensor *w[3] = {ly->wq, ly->wk, ly->wv};
            uint64_t wb[3];
            for (int k = 0; k < 3; k++)
                wb[k] = bound_bytes(w[k]);
            ly->wqkv = add_fused(L, ly->wq->type, E, Q + 2 * KV, w, wb, 3);
            if (ly->bq || ly->bk || ly->bv) {
                const fg_tensor *b[3] = {ly->bq, ly->bk, ly->bv};
                uint64_t bb[3] = {(uint64_t)Q * 4, (uint64_t)KV * 4, (uint64_t)KV * 4};
                ly->bqkv = add_fused(L, FG_TYPE_F32, Q + 2 * KV, 0, b, bb, 3);
            }
            ly->wq = ly->wk = ly->wv = ly->bq = ly->bk = ly->bv = NULL;
        }
        if (ly->w_gate && ly->w_gate->type == ly->w_up->type) {
            const fg_tensor *w[2] = {ly->w_gate, ly->w_up};
            uint64_t wb[2] = {bound_bytes(ly->w_gate), bound_bytes(ly->w_up)};
            ly->w_gate_up = add_fused(L, ly->w_gate->type, E, 2 * F, w, wb, 2);
            ly->w_gate = ly->w_up = NULL;
        } else if (!ly->w_gate && m->at->fused_gate_up) {
            ly->w_gate_up = ly->w_up; // glm4: the file's fused gate|up
            ly->w_up = NULL;
        }
    }
}

// The bytes of slice sl of file tensor t, row after row, into dst.
static void copy_slice(uint8_t *dst, const fg_gguf_tensor *t, const tp_slice *sl) {
    size_t row = fg_type_row_size_n(t->type, t->ne[0]), off = fg_type_row_size_n(t->type, sl->col0),
           n = fg_type_row_size_n(t->type, sl->n_cols);
    for (int64_t r = 0; r < sl->n_rows; r++)
        memcpy(dst + (size_t)r * n, (const uint8_t *)t->data + (size_t)(sl->row0 + r) * row + off, n);
}

// A file tensor's bytes straight from the mapping when its slice is contiguous there (whole
// rows, or a range of one row); NULL: it must be gathered (copy_slice).
static const void *direct_src(const loader *L, int32_t i) {
    const fg_gguf_tensor *t = L->src[i];
    const tp_slice *sl = &L->slice[i];
    if (!t || (sl->n_cols != t->ne[0] && sl->n_rows != 1))
        return NULL;
    return (const uint8_t *)t->data + fg_type_row_size_n(t->type, t->ne[0]) * (size_t)sl->row0 +
           fg_type_row_size_n(t->type, sl->col0);
}

// One buffer for every weight the forward pass uses (the parts of fused ones excepted),
// WEIGHT_ALIGN-aligned offsets, sized as the backend lays each weight out; each weight is
// handed to the backend whole (it may repack it): straight from the mapping, or from a host
// staging buffer where the parts of a fused weight are put side by side.
static fg_status upload_all(loader *L, bool progress) {
    fg_model *m = L->m;
    fg_backend *be = m->be;
    uint64_t total = 0, offs_end = 0, stage = 0;
    uint64_t *offs = calloc((size_t)m->n_tensors + 1, sizeof *offs);
    if (!offs)
        return FG_FAIL(FG_ERR_NOMEM, "%s: out of memory", L->path);
    for (int32_t i = 0; i < m->n_tensors; i++) {
        if (L->absorbed[i])
            continue;
        fg_tensor *t = &m->tensors[i];
        uint64_t canon = 0, sz = be->ops->weight_size(be, t->type, t->ne[0], t->ne[1]);
        fg_type_row_bytes(t->type, t->ne[0], &canon);
        canon *= (uint64_t)t->ne[1];
        uint64_t a = (offs_end + WEIGHT_ALIGN - 1) / WEIGHT_ALIGN * WEIGHT_ALIGN;
        offs[i] = a;
        if (sz == 0 || !fg_add_u64(a, sz, &offs_end)) {
            free(offs);
            return FG_FAIL(FG_ERR_FORMAT, "%s: tensor sizes overflow", L->path);
        }
        total += canon;
        if (!direct_src(L, i)) // fused, or a tensor-parallel slice of columns
            stage = FG_MAX(stage, canon);
    }
    if (offs_end > SIZE_MAX) {
        free(offs);
        return FG_FAIL(FG_ERR_NOMEM, "%s: %llu bytes of weights do not fit the address space", L->path,
                       (unsigned long long)offs_end);
    }
    fg_status st = be->ops->buf_alloc(be, (size_t)FG_MAX(offs_end, 1), &m->wbuf);
    if (st != FG_OK) {
        free(offs);
        fg_error_prefix("%s: weights (%llu bytes)", L->path, (unsigned long long)offs_end);
        return st;
    }
    uint8_t *tmp = stage ? malloc((size_t)stage) : NULL;
    if (stage && !tmp) {
        free(offs);
        return FG_FAIL(FG_ERR_NOMEM, "%s: out of memory staging a fused weight (%llu bytes)", L->path,
                       (unsigned long long)stage);
    }
    void *base = be->ops->buf_base(m->wbuf);
    fg_progress pr;
    if (progress)
        fg_progress_begin(&pr, "loading", total);
    uint64_t done = 0;
    for (int32_t i = 0; i < m->n_tensors && st == FG_OK; i++) {
        if (L->absorbed[i])
            continue;
        fg_tensor *t = &m->tensors[i];
        int n_dims = t->ne[1] > 1 ? 2 : 1;
        int64_t ne[4] = {t->ne[0], t->ne[1], 1, 1};
        *t = fg_tensor_view(m->wbuf, base, (size_t)offs[i], t->type, n_dims, ne);
        const void *src;
        const char *name;
        if (L->src[i]) {
            src = direct_src(L, i);
            if (!src) { // this rank's columns of every row
                copy_slice(tmp, L->src[i], &L->slice[i]);
                src = tmp;
            }
            name = L->src[i]->name;
        } else { // fused: the parts (this rank's slices of them) side by side
            const fused_parts *fp = &L->parts[i];
            uint64_t o = 0;
            for (int k = 0; k < fp->n; k++) {
                if (fp->idx[k] >= 0)
                    copy_slice(tmp + o, L->src[fp->idx[k]], &fp->sl[k]);
                else
                    memset(tmp + o, 0, (size_t)fp->bytes[k]);
                o += fp->bytes[k];
            }
            FG_ASSERT(o == fg_tensor_nbytes(t));
            src = tmp;
            name = L->src[fp->idx[0] >= 0 ? fp->idx[0] : fp->idx[1] >= 0 ? fp->idx[1] : fp->idx[2]]->name;
        }
        st = be->ops->weight_upload(be, t, src);
        done += fg_tensor_nbytes(t);
        if (progress)
            fg_progress_update(&pr, done);
        if (st != FG_OK)
            fg_error_prefix("%s: tensor '%s'%s", L->path, name, L->src[i] ? "" : " (fused)");
    }
    if (progress)
        fg_progress_end(&pr);
    free(tmp);
    free(offs);
    if (st == FG_OK)
        st = be->ops->sync(be);
    return st;
}

// ---- scratch

static fg_status alloc_scratch(fg_model *m) {
    fg_backend *be = m->be;
    const fg_hparams *hp = &m->hp;
    fg_scratch *s = &m->s;
    // this rank's heads and FFN rows (all of them without tensor parallelism); a worker rank
    // computes no logits, nor does an encoder or an embedding model (issue 14)
    int64_t T = m->max_batch_tokens, E = hp->n_embd, Q = (int64_t)m->tp.n_head * hp->head_dim,
            KV = (int64_t)m->tp.n_head_kv * hp->head_dim, F = m->tp.n_ff;
    const bool embeds = hp->pooling != FG_POOL_NONE, encoder = m->at->encoder;
    s->lg_rows = m->tp.rank > 0 || encoder || embeds ? 1 : (int32_t)FG_MIN(T, 64);
    struct {
        fg_tensor *t;
        int64_t cols, rows;
    } plan[] = {
        {&s->x, E, T},   {&s->xn, E, T},  {&s->ao, E, T},          {&s->qkv, Q + 2 * KV, T},
        {&s->q, Q, T},   {&s->k, KV, T},  {&s->v, KV, T},          {&s->att, Q, T},
        {&s->g, 2 * F, T}, {&s->u, F, T}, {&s->h, F, T},           {&s->xo, E, T},
        {&s->lg, hp->n_vocab, s->lg_rows},
        {&s->emb, E, embeds ? m->max_seqs : 1},
    };
    uint64_t offs[FG_ARRAY_LEN(plan)], end = 0;
    for (size_t i = 0; i < FG_ARRAY_LEN(plan); i++) {
        offs[i] = (end + WEIGHT_ALIGN - 1) / WEIGHT_ALIGN * WEIGHT_ALIGN;
        end = offs[i] + (uint64_t)plan[i].cols * (uint64_t)plan[i].rows * sizeof(float);
    }
    // sample results: one fg_sample_result per logits row a step may hand back
    uint64_t samp_off = (end + WEIGHT_ALIGN - 1) / WEIGHT_ALIGN * WEIGHT_ALIGN;
    end = samp_off + (uint64_t)m->max_logit_rows * sizeof(fg_sample_result);
    // converted activations (fg_op_convert): at most 2 bytes an element (F16/BF16; the 8-bit
    // types take 1.06-1.14) of the widest matmul input, plus a block's slack per row
    int64_t max_in = FG_MAX(E, FG_MAX(Q, F));
    uint64_t act_off = (end + WEIGHT_ALIGN - 1) / WEIGHT_ALIGN * WEIGHT_ALIGN;
    s->act_bytes = (size_t)((uint64_t)T * ((uint64_t)max_in * 2 + 512));
    end = act_off + s->act_bytes;
    // The activations grow with the shapes the metadata claims; a small file with quantized
    // weights must not make us reserve many times its size (the weights justify the shapes).
    uint64_t wbytes = 0;
    for (int32_t i = 0; i < m->n_tensors; i++)
        wbytes += (m->tensors[i].data ? fg_tensor_nbytes(&m->tensors[i]) : 0);
    if (end > ((uint64_t)1 << 30) && end / 8 > wbytes)
        return FG_FAIL(FG_ERR_INVALID_ARG,
                       "%s: scratch activations for max_batch_tokens %lld would take %llu bytes, more "
                       "than 8x the %llu bytes of weights (n_embd %d, n_ff %d, n_vocab %d)",
                       m->path, (long long)T, (unsigned long long)end, (unsigned long long)wbytes,
                       hp->n_embd, hp->n_ff, hp->n_vocab);
    fg_status st = be->ops->buf_alloc(be, (size_t)end, &s->buf);
    if (st != FG_OK) {
        fg_error_prefix("%s: scratch activations (%llu bytes)", m->path, (unsigned long long)end);
        return st;
    }
    void *base = be->ops->buf_base(s->buf);
    for (size_t i = 0; i < FG_ARRAY_LEN(plan); i++) {
        int64_t ne[4] = {plan[i].cols, plan[i].rows, 1, 1};
        *plan[i].t = fg_tensor_view(s->buf, base, (size_t)offs[i], FG_TYPE_F32, 2, ne);
    }
    {
        int64_t ne[2] = {FG_SAMPLE_RESULT_WORDS, m->max_logit_rows};
        s->samp = fg_tensor_view(s->buf, base, (size_t)samp_off, FG_TYPE_I32, 2, ne);
    }
    s->act = (char *)base + act_off;
    // the largest step the backend will see (the KV store reserves its pages on creation)
    fg_backend_limits lim = {
        .max_tokens = (int32_t)T,
        .max_seqs = m->max_seqs,
        .max_heads = m->tp.n_head,
        .max_head_dim = hp->head_dim,
        .max_cols = FG_MAX(FG_MAX(E, Q + 2 * KV), FG_MAX(2 * F, (int64_t)hp->n_vocab)),
        .max_weight_elems = FG_MAX(E * (Q + 2 * KV), FG_MAX(E * Q, E * 2 * F)),
        .max_sample_entries = m->max_sample_entries,
    };
    FG_TRY(fg_backend_reserve(be, &lim));
    // the logits of a step come back into host memory the backend can copy into asynchronously
    // (an embedding model's pooled vectors instead: embed.c, issue 14)
    if (encoder || embeds)
        return FG_OK;
    size_t lb = 0;
    if (!fg_mul_size(m->tp.rank > 0 ? 1 : (size_t)m->max_logit_rows, (size_t)hp->n_vocab * sizeof(float), &lb))
        return FG_FAIL(FG_ERR_INVALID_ARG, "%s: %d logit rows overflow", m->path, m->max_logit_rows);
    void *lg = NULL;
    st = be->ops->host_alloc(be, lb, &lg);
    if (st != FG_OK) {
        fg_error_prefix("%s: logits (%zu bytes)", m->path, lb);
        return st;
    }
    m->logits = lg;
    void *sr = NULL;
    st = be->ops->host_alloc(be, (size_t)m->max_logit_rows * sizeof(fg_sample_result), &sr);
    if (st != FG_OK) {
        fg_error_prefix("%s: sample results", m->path);
        return st;
    }
    m->samples = sr;
    return FG_OK;
}

// ---- info

static void fill_info(fg_model *m, const loader *L) {
    fg_model_info *in = &m->info;
    const fg_hparams *hp = &m->hp;
    in->arch = m->at->name;
    in->name = m->name;
    in->n_vocab = hp->n_vocab;
    in->n_ctx_train = hp->n_ctx_train;
    in->n_embd = hp->n_embd;
    in->n_layer = hp->n_layer;
    in->n_head = hp->n_head;
    in->n_head_kv = hp->n_head_kv;
    in->head_dim = hp->head_dim;
    in->n_ff = hp->n_ff;
    in->max_batch_tokens = m->max_batch_tokens;
    in->max_seqs = m->max_seqs;
    in->max_logit_rows = m->max_logit_rows;
    in->tp_size = m->tp.size;
    in->tp_rank = m->tp.rank;
    in->max_sample_entries = m->max_sample_entries;
    in->async_steps = m->be->ops->async_steps;
    in->scratch_bytes = m->be->ops->buf_size(m->s.buf);
    in->pooling = hp->pooling; // embedding models (issue 14)
    in->causal = hp->causal;
    in->normalize = hp->normalize;
    in->max_seq = hp->max_seq;
    in->max_embed_tokens = FG_MIN(hp->max_seq, m->max_batch_tokens);
    uint64_t params = 0, bytes = 0, per_tok = 0, layer_params = 0;
    for (int32_t i = 0; i < m->n_tensors; i++) {
        const fg_tensor *t = &m->tensors[i];
        if (L->absorbed[i])
            continue; // counted in its fused tensor
        params += (uint64_t)t->ne[0] * (uint64_t)t->ne[1];
        bytes += fg_tensor_nbytes(t);
        if (t->ne[1] > 1 && t != m->tok_embd) { // 2-D: a matmul weight
            per_tok += fg_tensor_nbytes(t);
            if (t != m->output)
                layer_params += (uint64_t)t->ne[0] * (uint64_t)t->ne[1];
        }
    }
    uint64_t row = 0;
    fg_type_row_bytes(m->tok_embd->type, m->tok_embd->ne[0], &row);
    per_tok += row;
    if (m->output == m->tok_embd)
        per_tok += fg_tensor_nbytes(m->tok_embd);
    in->n_params = params;
    in->n_layer_params = layer_params;
    in->weight_bytes = bytes;
    in->bytes_per_token = per_tok;
}

static char *model_name(const fg_gguf *g, const char *path) {
    const char *s;
    size_t n;
    if (fg_gguf_find_key(g, "general.name") >= 0 && fg_gguf_get_str(g, "general.name", &s, &n) == FG_OK &&
        n > 0)
        return fg_xstrndup(s, n);
    const char *b = strrchr(path, '/');
    b = b ? b + 1 : path;
    const char *dot = strrchr(b, '.');
    return fg_xstrndup(b, dot && dot != b ? (size_t)(dot - b) : strlen(b));
}

// ---- public

fg_status fg_model_load(const char *path, fg_backend *be, const fg_model_opts *opts, fg_model **out) {
    if (!path || !be || !out)
        return FG_FAIL(FG_ERR_INVALID_ARG, "fg_model_load: path, backend and out are required");
    fg_model_opts o = {0};
    if (opts)
        o = *opts;
    if (o.max_batch_tokens <= 0)
        o.max_batch_tokens = 512;
    if (o.max_seqs <= 0)
        o.max_seqs = 64;
    if (o.max_logit_rows <= 0 || o.max_logit_rows > o.max_batch_tokens)
        o.max_logit_rows = o.max_batch_tokens;
    if (o.max_sample_entries <= 0)
        o.max_sample_entries = FG_MAX(8192, 64 * o.max_logit_rows);
    if (o.max_batch_tokens > (1 << 20) || o.max_seqs > (1 << 16) || o.max_sample_entries > (1 << 26))
        return FG_FAIL(FG_ERR_INVALID_ARG, "%s: max_batch_tokens (%d), max_seqs (%d) or max_sample_entries (%d) "
                       "too large", path, o.max_batch_tokens, o.max_seqs, o.max_sample_entries);
    // ---- tensor parallelism: an in-process group (tp_group.c), or one rank of the caller's
    if (o.tp_size <= 0)
        o.tp_size = 1;
    if (o.tp_size > FG_TP_MAX)
        return FG_FAIL(FG_ERR_INVALID_ARG, "%s: tensor-parallel size %d (at most %d)", path, o.tp_size, FG_TP_MAX);
    if (o.tp_size > 1 && !o.tp_comm)
        return fg_tp_group_load(path, be, &o, out);
    if (o.tp_size == 1) {
        o.tp_rank = 0;
        o.tp_comm = NULL;
    } else if (o.tp_comm->size != o.tp_size || o.tp_comm->rank != o.tp_rank) {
        return FG_FAIL(FG_ERR_INVALID_ARG, "%s: rank %d of %d with a communicator for rank %d of %d", path, o.tp_rank,
                       o.tp_size, o.tp_comm->rank, o.tp_comm->size);
    }
    loader L = {0};
    fg_model *m = fg_xcalloc(1, sizeof *m);
    m->path = fg_xstrdup(path);
    m->be = be;
    m->max_batch_tokens = o.max_batch_tokens;
    m->max_seqs = o.max_seqs;
    m->max_logit_rows = o.max_logit_rows;
    m->max_sample_entries = o.max_sample_entries;
    fg_status st = fg_gguf_open(path, &m->gguf);
    if (st != FG_OK)
        goto fail;
    L.m = m;
    L.g = m->gguf;
    L.path = path;

    const char *arch_s;
    size_t arch_n;
    if (fg_gguf_find_key(m->gguf, "general.architecture") < 0) {
        st = FG_FAIL(FG_ERR_FORMAT, "%s: key 'general.architecture' not found", path);
        goto fail;
    }
    if ((st = fg_gguf_get_str(m->gguf, "general.architecture", &arch_s, &arch_n)) != FG_OK)
        goto fail;
    int ai = fg_arch_find(arch_s, arch_n);
    if (ai < 0) {
        st = FG_FAIL(FG_ERR_UNSUPPORTED, "%s: unsupported architecture '%.*s' (supported: %s)", path,
                     (int)FG_MIN(arch_n, 64), arch_s, fg_arch_list());
        goto fail;
    }
    m->arch = (fg_arch)ai;
    m->at = &fg_arch_table[ai];
    L.arch = m->at->name;
    if ((st = read_hparams(&L, &m->hp)) != FG_OK)
        goto fail;
    if ((st = tp_setup(&L, o.tp_size, o.tp_rank, o.tp_comm)) != FG_OK)
        goto fail;
    m->tp.skip_all_reduce = o.tp_skip_all_reduce;
    m->skip_ops = o.bench_skip_ops;

    fg_tokenizer_opts to = {.pre_override = o.tokenizer_pre};
    if ((st = fg_tokenizer_create(m->gguf, &to, &m->tok)) != FG_OK)
        goto fail; // the tokenizer's message names the file
    m->hp.n_vocab = fg_tokenizer_n_vocab(m->tok);
    {
        char key[160];
        if (has_key(&L, "vocab_size", key, sizeof key)) {
            int32_t nv = 0;
            if ((st = get_hp_int(&L, "vocab_size", -1, 1, INT32_MAX, &nv)) != FG_OK)
                goto fail;
            if (nv != m->hp.n_vocab) {
                st = FG_FAIL(FG_ERR_FORMAT,
                             "%s: vocabulary size mismatch: the tokenizer has %d tokens, '%s' is %d",
                             path, m->hp.n_vocab, key, nv);
                goto fail;
            }
        }
    }
    m->name = model_name(m->gguf, path);

    // bound tensors (<= 5 global, <= 17 a layer), then fused ones (<= 4 a layer)
    L.cap = 8 + 24 * m->hp.n_layer;
    m->tensors = fg_xcalloc((size_t)L.cap, sizeof *m->tensors);
    L.src = fg_xcalloc((size_t)L.cap, sizeof *L.src);
    L.parts = fg_xcalloc((size_t)L.cap, sizeof *L.parts);
    L.absorbed = fg_xcalloc((size_t)L.cap, sizeof *L.absorbed);
    L.slice = fg_xcalloc((size_t)L.cap, sizeof *L.slice);
    m->layers = fg_xcalloc((size_t)m->hp.n_layer, sizeof *m->layers);
    if ((st = bind_all(&L)) != FG_OK)
        goto fail;
    if ((st = fg_model_check(m->gguf, path, m->at, &m->hp, 0)) != FG_OK) // model_check.c
        goto fail;
    if (m->tp.size > 1 && (st = tp_shard(&L)) != FG_OK)
        goto fail;
    if (!fg_backend_supports(be, FG_OP_GET_ROWS, m->tok_embd->type)) {
        st = FG_FAIL(FG_ERR_UNSUPPORTED, "%s: tensor 'token_embd.weight': type %s has no get_rows on the %s backend",
                     path, fg_type_name(m->tok_embd->type), be->ops->name);
        goto fail;
    }
    plan_fusion(&L);
    if ((st = upload_all(&L, o.progress)) != FG_OK)
        goto fail;
    if ((st = alloc_scratch(m)) != FG_OK)
        goto fail;
    m->seq_count = fg_xcalloc((size_t)m->max_seqs, sizeof *m->seq_count);
    m->seq_first = fg_xcalloc((size_t)m->max_seqs, sizeof *m->seq_first);
    m->out_rows = fg_xcalloc((size_t)m->max_batch_tokens, sizeof *m->out_rows);
    m->e_pending = -1;
    if (m->hp.pooling != FG_POOL_NONE && (st = fg_model_embed_init(m)) != FG_OK) // embed.c
        goto fail;
    fill_info(m, &L);
    free(L.src);
    free(L.parts);
    free(L.absorbed);
    free(L.slice);
    *out = m;
    return FG_OK;
fail:
    free(L.src);
    free(L.parts);
    free(L.absorbed);
    free(L.slice);
    fg_model_destroy(m);
    return st;
}

void fg_model_destroy(fg_model *m) {
    if (!m)
        return;
    fg_tp_group_destroy(m->tp.group); // the workers first: they share nothing with rank 0's buffers
    fg_model_embed_free(m);           // issue 14
    if (m->be) {
        if (m->logits)
            m->be->ops->host_free(m->be, m->logits);
        if (m->samples)
            m->be->ops->host_free(m->be, m->samples);
        if (m->s.buf)
            m->be->ops->buf_free(m->be, m->s.buf);
        if (m->wbuf)
            m->be->ops->buf_free(m->be, m->wbuf);
    }
    fg_tokenizer_destroy(m->tok);
    fg_gguf_close(m->gguf);
    free(m->tensors);
    free(m->layers);
    free(m->seq_count);
    free(m->seq_first);
    free(m->out_rows);
    free(m->name);
    free(m->path);
    free(m);
}

const fg_model_info *fg_model_get_info(const fg_model *m) { return &m->info; }
const fg_tokenizer *fg_model_tokenizer(const fg_model *m) { return m->tok; }
const fg_gguf *fg_model_gguf(const fg_model *m) { return m->gguf; }

fg_status fg_model_reserve_sampling(fg_model *m, int32_t max_sample_entries) {
    if (!m || max_sample_entries < 0 || max_sample_entries > (1 << 26))
        return FG_FAIL(FG_ERR_INVALID_ARG, "fg_model_reserve_sampling: %d entries (expected 0..%d)",
                       max_sample_entries, 1 << 26);
    if (m->pending)
        return FG_FAIL(FG_ERR_INVALID_ARG, "fg_model_reserve_sampling: a step is in flight");
    if (max_sample_entries <= m->max_sample_entries)
        return FG_OK;
    fg_backend_limits lim = {.max_sample_entries = max_sample_entries};
    FG_TRY(fg_backend_reserve(m->be, &lim));
    m->max_sample_entries = max_sample_entries;
    m->info.max_sample_entries = max_sample_entries;
    return FG_OK;
}
