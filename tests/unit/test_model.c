// test_model.c - model loading on small files written with the GGUF writer: every
// architecture loads (llama tied/untied, qwen2 biases, qwen3 head_dim != n_embd/n_head, glm4
// fused FFN and post norms) and runs a forward step with finite logits; loading errors give
// their exact one-line messages (missing tensor or key, wrong shape, head counts that don't
// divide, vocabulary mismatch, unsupported architecture, unknown weight type, NaN in a norm,
// rope factors <= 0, scratch out of proportion to the weights); bad batches are refused with
// the field named; non-finite logits are an error; the forward pass matches a scalar
// reference for every architecture and for big heads, MQA, odd n_ff, partial rope and long
// prompts over many pages. Tokenizer metadata is copied from stories260K.
// forge-test-modules: model registry backend tokenizer gguf quant base
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "backend/backend.h"
#include "forge.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct spec {
    const char *arch;      // general.architecture
    const char *key_arch;  // prefix of the hyper-parameter keys (NULL: arch)
    int n_embd, n_layer, n_head, n_head_kv, n_ff, head_dim, vocab_rows;
    bool tied;
    bool biases;           // attn_q/k/v.bias
    bool qk_norm;
    bool glm;              // post norms + fused ffn_up
    bool no_embd_key;      // omit <arch>.embedding_length
    const char *omit;      // tensor name left out
    const char *reshape;   // tensor whose ne[1] (or ne[0] for 1-D) is doubled
    float rope_freqs;      // > 0: a rope_freqs.weight of this constant, written last
    int rope_freqs_len;    // its length (0: head_dim / 2)
    int n_rot;             // > 0: rope.dimension_count (partial rotary)
    const char *poison;    // tensor whose values are all poison_value
    float poison_value;
} spec;

typedef struct fill_info {
    int64_t const_index; // tensor filled with const_value (-1: none)
    float const_value;
    const float *scale;  // [tensor index] gain of the random values
    int64_t poison_index; // tensor filled with poison_value (-1: none)
    float poison_value;
} fill_info;

static spec base_spec(void) {
    spec s = {.arch = "llama", .n_embd = 32, .n_layer = 2, .n_head = 4, .n_head_kv = 2, .n_ff = 64,
              .head_dim = 0, .vocab_rows = 512, .tied = false};
    return s;
}

static const char *shared_dir(void) {
    const char *s = getenv("FORGE_SHARED");
    return s && *s ? s : "../shared";
}

static fg_status fill(void *user, int64_t index, void *dst, uint64_t n_bytes) {
    const fill_info *fi = user;
    float *f = dst;
    uint64_t n = n_bytes / 4;
    if (index == fi->const_index || index == fi->poison_index) {
        float c = index == fi->poison_index ? fi->poison_value : fi->const_value;
        for (uint64_t i = 0; i < n; i++)
            f[i] = c;
        return FG_OK;
    }
    uint32_t x = 0x9e3779b9u ^ (uint32_t)index * 2654435761u;
    for (uint64_t i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        f[i] = ((float)(x & 0xffff) / 65536.0f - 0.5f) * 0.2f * fi->scale[index] +
               (index % 7 == 1 ? 1.0f : 0.0f);
    }
    return FG_OK;
}

#define MAX_TENSORS 256

typedef struct wctx {
    fg_gguf_writer *w;
    const spec *s;
    int64_t n; // tensors added so far
    float scale[MAX_TENSORS];
    int64_t poison_index;
} wctx;

static void add(wctx *wc, const char *name, int64_t ne0, int64_t ne1) {
    const spec *s = wc->s;
    if (s->omit && !strcmp(name, s->omit))
        return;
    if (s->reshape && !strcmp(name, s->reshape)) {
        if (ne1 > 0)
            ne1 *= 2;
        else
            ne0 *= 2;
    }
    int64_t ne[2] = {ne0, ne1};
    if (s->poison && !strcmp(name, s->poison))
        wc->poison_index = wc->n;
    assert_int_equal(fg_gguf_writer_add_tensor(wc->w, name, FG_TYPE_F32, ne1 > 0 ? 2 : 1, ne), FG_OK);
    assert_true(wc->n < MAX_TENSORS);
    // larger q/k projections: attention far from uniform, so rope and masking matter
    wc->scale[wc->n++] = strstr(name, "attn_q.weight") || strstr(name, "attn_k.weight") ? 12.0f : 1.0f;
}

// Writes the model described by s to path.
static void write_model(const char *path, const spec *s) {
    fg_gguf *voc = NULL;
    char vpath[1024];
    snprintf(vpath, sizeof vpath, "%s/models/stories260K.gguf", shared_dir());
    if (fg_gguf_open(vpath, &voc) != FG_OK)
        fail_msg("%s", fg_last_error());
    fg_gguf_writer *w = NULL;
    assert_int_equal(fg_gguf_writer_create(3, &w), FG_OK);
    const char *ka = s->key_arch ? s->key_arch : s->arch;
    char k[128];
    fg_gguf_writer_set_str(w, "general.architecture", s->arch);
    fg_gguf_writer_set_str(w, "general.name", "tiny");
#define KEY(suffix) (snprintf(k, sizeof k, "%s.%s", ka, suffix), k)
    fg_gguf_writer_set_u32(w, KEY("context_length"), 256);
    if (!s->no_embd_key)
        fg_gguf_writer_set_u32(w, KEY("embedding_length"), (uint32_t)s->n_embd);
    fg_gguf_writer_set_u32(w, KEY("block_count"), (uint32_t)s->n_layer);
    fg_gguf_writer_set_u32(w, KEY("feed_forward_length"), (uint32_t)s->n_ff);
    fg_gguf_writer_set_u32(w, KEY("attention.head_count"), (uint32_t)s->n_head);
    fg_gguf_writer_set_u32(w, KEY("attention.head_count_kv"), (uint32_t)s->n_head_kv);
    fg_gguf_writer_set_f32(w, KEY("attention.layer_norm_rms_epsilon"), 1e-5f);
    int hd = s->head_dim ? s->head_dim : s->n_embd / s->n_head;
    if (s->head_dim) {
        fg_gguf_writer_set_u32(w, KEY("attention.key_length"), (uint32_t)hd);
        fg_gguf_writer_set_u32(w, KEY("attention.value_length"), (uint32_t)hd);
    }
    if (s->glm || s->n_rot)
        fg_gguf_writer_set_u32(w, KEY("rope.dimension_count"), (uint32_t)(s->n_rot ? s->n_rot : hd / 2));
#undef KEY
    static const char *const tk[] = {"tokenizer.ggml.model", "tokenizer.ggml.tokens",
                                     "tokenizer.ggml.scores", "tokenizer.ggml.token_type",
                                     "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                                     "tokenizer.ggml.unknown_token_id"};
    for (size_t i = 0; i < sizeof tk / sizeof tk[0]; i++)
        assert_int_equal(fg_gguf_writer_copy_kv(w, voc, tk[i]), FG_OK);
    fg_gguf_close(voc);
    wctx wc = {w, s, 0, {0}, -1};
    int E = s->n_embd, Q = s->n_head * hd, KV = s->n_head_kv * hd, F = s->n_ff;
    add(&wc, "token_embd.weight", E, s->vocab_rows);
    add(&wc, "output_norm.weight", E, 0);
    if (!s->tied)
        add(&wc, "output.weight", E, 512);
    for (int l = 0; l < s->n_layer; l++) {
        char n[96];
#define T(suffix, a, b) (snprintf(n, sizeof n, "blk.%d.%s", l, suffix), add(&wc, n, a, b))
        T("attn_norm.weight", E, 0);
        T("attn_q.weight", E, Q);
        T("attn_k.weight", E, KV);
        T("attn_v.weight", E, KV);
        if (s->biases) {
            T("attn_q.bias", Q, 0);
            T("attn_k.bias", KV, 0);
            T("attn_v.bias", KV, 0);
        }
        if (s->qk_norm) {
            T("attn_q_norm.weight", hd, 0);
            T("attn_k_norm.weight", hd, 0);
        }
        T("attn_output.weight", Q, E);
        if (s->glm)
            T("post_attention_norm.weight", E, 0);
        T("ffn_norm.weight", E, 0);
        if (s->glm) {
            T("ffn_up.weight", E, 2 * F);
        } else {
            T("ffn_gate.weight", E, F);
            T("ffn_up.weight", E, F);
        }
        T("ffn_down.weight", F, E);
        if (s->glm)
            T("post_ffw_norm.weight", E, 0);
#undef T
    }
    fill_info fi = {-1, 0, wc.scale, wc.poison_index, s->poison_value};
    if (s->rope_freqs > 0) {
        fi.const_index = wc.n;
        fi.const_value = s->rope_freqs;
        add(&wc, "rope_freqs.weight", s->rope_freqs_len ? s->rope_freqs_len : hd / 2, 0);
    }
    fi.poison_index = wc.poison_index;
    if (fg_gguf_writer_write(w, path, fill, &fi) != FG_OK)
        fail_msg("write %s: %s", path, fg_last_error());
    fg_gguf_writer_destroy(w);
}

typedef struct fixture {
    fg_backend *be;
    char path[256];
} fixture;

static int setup(void **state) {
    fixture *f = calloc(1, sizeof *f);
    fg_backend_opts o = {.n_threads = 2}; // the threaded paths, checked against the reference
    if (fg_backend_cpu_create(&o, &f->be) != FG_OK)
        return -1;
    snprintf(f->path, sizeof f->path, "/tmp/forge-test-model-%d.gguf", (int)getpid());
    *state = f;
    return 0;
}

static int teardown(void **state) {
    fixture *f = *state;
    unlink(f->path);
    f->be->ops->destroy(f->be);
    free(f);
    return 0;
}

// Loads the file of spec s; expects status want and, when msg, exactly "<path>: msg".
static fg_model *load_expect(fixture *f, const spec *s, fg_status want, const char *msg) {
    write_model(f->path, s);
    fg_model *m = NULL;
    fg_model_opts mo = {.max_batch_tokens = 16, .max_seqs = 4};
    fg_status st = fg_model_load(f->path, f->be, &mo, &m);
    if (st != want)
        fail_msg("load: status %s, expected %s (%s)", fg_status_name(st), fg_status_name(want),
                 fg_last_error());
    if (msg) {
        char full[1024];
        snprintf(full, sizeof full, "%s: %s", f->path, msg);
        assert_string_equal(fg_last_error(), full);
    }
    return m;
}

// One forward step of 3 + 2 tokens in two sequences; logits finite.
static void smoke_forward(fg_model *m) {
    fg_kv_store *kv = NULL;
    assert_int_equal(fg_kv_store_create(m, 4, 4, FG_TYPE_F16, &kv), FG_OK);
    int32_t toks[5] = {1, 400, 401, 1, 300}, pos[5] = {0, 1, 2, 0, 1}, seq[5] = {0, 0, 0, 1, 1};
    int32_t n_kv[2] = {3, 2}, p0[1] = {2}, p1[1] = {0};
    const int32_t *pts[2] = {p0, p1};
    fg_batch b = {.n_tokens = 5, .tokens = toks, .pos = pos, .seq = seq, .n_seqs = 2, .n_kv = n_kv,
                  .page_tables = pts};
    int32_t V = fg_model_get_info(m)->n_vocab;
    float *lg = malloc(sizeof(float) * 2 * (size_t)V);
    if (fg_model_forward(m, kv, &b, lg) != FG_OK)
        fail_msg("forward: %s", fg_last_error());
    for (int32_t i = 0; i < 2 * V; i++)
        assert_true(isfinite(lg[i]));
    free(lg);
    fg_kv_store_destroy(kv);
}

static void test_llama_loads(void **state) {
    fixture *f = *state;
    spec s = base_spec();
    fg_model *m = load_expect(f, &s, FG_OK, NULL);
    const fg_model_info *in = fg_model_get_info(m);
    assert_string_equal(in->arch, "llama");
    assert_string_equal(in->name, "tiny");
    assert_int_equal(in->n_vocab, 512);
    assert_int_equal(in->head_dim, 8);
    assert_int_equal(in->n_head_kv, 2);
    // per layer: 4 norms/projections of E*E... counted exactly:
    uint64_t E = 32, F = 64, per_layer = E + E * 32 + E * 16 * 2 + 32 * E + E + 3 * E * F;
    assert_int_equal(in->n_params, 512 * E * 2 + E + 2 * per_layer);
    // matmul weights of both layers + output + one embedding row, F32
    assert_int_equal(in->bytes_per_token, 4 * (2 * (per_layer - 2 * E) + 512 * E + E));
    smoke_forward(m);
    // a Q8_0 KV cache needs whole 32-blocks per head: head_dim 8 is refused, naming it
    fg_kv_store *kv = NULL;
    char full[1024];
    assert_int_equal(fg_kv_store_create(m, 4, 4, FG_TYPE_Q8_0, &kv), FG_ERR_UNSUPPORTED);
    snprintf(full, sizeof full,
             "%s: a q8_0 KV cache stores each head's K/V row in blocks of 32, but the model's head_dim is 8: "
             "use --kv-type f16",
             f->path);
    assert_string_equal(fg_last_error(), full);
    assert_null(kv);
    assert_int_equal(fg_kv_store_create(m, 4, 4, FG_TYPE_Q4_0, &kv), FG_ERR_INVALID_ARG);
    assert_string_equal(fg_last_error(), "kv store: type q4_0: expected f16, f32 or q8_0");
    assert_null(kv);
    fg_model_destroy(m);
}

static void test_tied_qwen2_qwen3_glm4_load(void **state) {
    fixture *f = *state;
    spec s = base_spec();
    s.tied = true;
    fg_model *m = load_expect(f, &s, FG_OK, NULL);
    smoke_forward(m);
    fg_model_destroy(m);

    s = base_spec();
    s.arch = "qwen2";
    s.tied = true;
    s.biases = true;
    m = load_expect(f, &s, FG_OK, NULL);
    smoke_forward(m);
    fg_model_destroy(m);

    s = base_spec();
    s.arch = "qwen3";
    s.qk_norm = true;
    s.head_dim = 16; // q width 64 != n_embd 32
    m = load_expect(f, &s, FG_OK, NULL);
    assert_int_equal(fg_model_get_info(m)->head_dim, 16);
    smoke_forward(m);
    fg_model_destroy(m);

    s = base_spec();
    s.arch = "glm4";
    s.glm = true;
    s.biases = true;
    m = load_expect(f, &s, FG_OK, NULL);
    smoke_forward(m);
    fg_model_destroy(m);
}

static void test_missing_tensor(void **state) {
    fixture *f = *state;
    spec s = base_spec();
    s.omit = "blk.1.ffn_down.weight";
    load_expect(f, &s, FG_ERR_FORMAT, "tensor 'blk.1.ffn_down.weight' not found");
    s = base_spec();
    s.arch = "qwen2";
    s.biases = true;
    s.omit = "blk.0.attn_k.bias";
    load_expect(f, &s, FG_ERR_FORMAT, "tensor 'blk.0.attn_k.bias' not found");
    s = base_spec();
    s.arch = "glm4";
    s.glm = true;
    s.omit = "blk.0.post_ffw_norm.weight";
    load_expect(f, &s, FG_ERR_FORMAT, "tensor 'blk.0.post_ffw_norm.weight' not found");
}

static void test_wrong_shape(void **state) {
    fixture *f = *state;
    spec s = base_spec();
    s.reshape = "blk.0.attn_k.weight";
    load_expect(f, &s, FG_ERR_FORMAT,
                "tensor 'blk.0.attn_k.weight': expected shape [32, 16], found [32, 32]");
    s = base_spec();
    s.reshape = "output_norm.weight";
    load_expect(f, &s, FG_ERR_FORMAT, "tensor 'output_norm.weight': expected shape [32], found [64]");
}

static void test_heads_and_keys(void **state) {
    fixture *f = *state;
    spec s = base_spec();
    s.n_head_kv = 3;
    load_expect(f, &s, FG_ERR_FORMAT,
                "llama.attention.head_count (4) is not a multiple of llama.attention.head_count_kv (3)");
    s = base_spec();
    s.no_embd_key = true;
    load_expect(f, &s, FG_ERR_FORMAT, "key 'llama.embedding_length' not found");
}

static void test_vocab_mismatch(void **state) {
    fixture *f = *state;
    spec s = base_spec();
    s.vocab_rows = 500;
    load_expect(f, &s, FG_ERR_FORMAT,
                "vocabulary size mismatch: the tokenizer has 512 tokens, 'token_embd.weight' has 500 rows");
}

static void test_unsupported_arch(void **state) {
    fixture *f = *state;
    spec s = base_spec();
    s.arch = "gpt2";
    s.key_arch = "gpt2";
    load_expect(f, &s, FG_ERR_UNSUPPORTED,
                "unsupported architecture 'gpt2' (supported: llama, qwen2, qwen3, glm4, bert, nomic-bert)");
}

// The writer refuses unknown type ids, so the type field of one tensor info is patched.
static void test_unknown_type(void **state) {
    fixture *f = *state;
    spec s = base_spec();
    write_model(f->path, &s);
    FILE *fp = fopen(f->path, "r+b");
    assert_non_null(fp);
    static char buf[1 << 20];
    size_t n = fread(buf, 1, sizeof buf, fp);
    const char *name = "blk.0.attn_v.weight";
    char *hit = memmem(buf, n, name, strlen(name));
    assert_non_null(hit);
    // name bytes, n_dims (u32), ne (2 x u64), then the type (u32)
    size_t off = (size_t)(hit - buf) + strlen(name) + 4 + 16;
    uint32_t ty = 77;
    fseek(fp, (long)off, SEEK_SET);
    fwrite(&ty, 4, 1, fp);
    fclose(fp);
    fg_model *m = NULL;
    fg_status st = fg_model_load(f->path, f->be, NULL, &m);
    assert_int_equal(st, FG_ERR_FORMAT);
    assert_null(m);
    // written by the GGUF reader, which refuses the file before the model looks at it
    char want[512];
    snprintf(want, sizeof want,
             "%s: tensor 'blk.0.attn_v.weight': unknown type id 77 (expected a weight type id below 40)",
             f->path);
    assert_string_equal(fg_last_error(), want);
}

// Forward of 3 tokens in one sequence; returns the logits of the last (caller frees).
static float *last_logits(fg_model *m) {
    fg_kv_store *kv = NULL;
    assert_int_equal(fg_kv_store_create(m, 1, 4, FG_TYPE_F16, &kv), FG_OK);
    int32_t toks[3] = {1, 400, 401}, pos[3] = {0, 1, 2}, seq[3] = {0}, n_kv = 3, p0 = 0;
    const int32_t *pt = &p0;
    fg_batch b = {.n_tokens = 3, .tokens = toks, .pos = pos, .seq = seq, .n_seqs = 1, .n_kv = &n_kv,
                  .page_tables = &pt};
    float *lg = malloc(sizeof(float) * 512);
    assert_int_equal(fg_model_forward(m, kv, &b, lg), FG_OK);
    fg_kv_store_destroy(kv);
    return lg;
}

// llama 3 rope scaling: rope_freqs.weight divides the rotation frequencies. Factors of 1
// change nothing; factors of 4 change the logits; a wrong length is refused.
static void test_rope_freqs(void **state) {
    fixture *f = *state;
    spec s = base_spec();
    fg_model *m = load_expect(f, &s, FG_OK, NULL);
    float *a = last_logits(m);
    fg_model_destroy(m);
    s.rope_freqs = 1.0f;
    m = load_expect(f, &s, FG_OK, NULL);
    float *b = last_logits(m);
    fg_model_destroy(m);
    s.rope_freqs = 4.0f;
    m = load_expect(f, &s, FG_OK, NULL);
    float *c = last_logits(m);
    fg_model_destroy(m);
    double d_ab = 0, d_ac = 0;
    for (int i = 0; i < 512; i++) {
        d_ab = fmax(d_ab, fabs((double)a[i] - b[i]));
        d_ac = fmax(d_ac, fabs((double)a[i] - c[i]));
    }
    printf("rope_freqs: max |d logit| factors 1: %g, factors 4: %g\n", d_ab, d_ac);
    assert_true(d_ab == 0.0);
    assert_true(d_ac > 1e-5); // measured 1.1e-4: small weights, 3 positions; float noise ~1e-7
    free(a);
    free(b);
    free(c);
    s.rope_freqs_len = 3;
    load_expect(f, &s, FG_ERR_FORMAT, "tensor 'rope_freqs.weight': expected shape [4], found [3]");
}

// ---- scalar reference forward (double precision, straight from the GGUF data), to check
// the graph of each architecture: rmsnorm, q/k/v (+bias), qk-norm, rope (normal / neox,
// partial, freq factors), causal GQA attention, output, glm4 post norms, SwiGLU (fused or not)

static const float *ref_w(const fg_gguf *g, const char *name) {
    const fg_gguf_tensor *t = fg_gguf_find_tensor(g, name);
    return t ? (const float *)t->data : NULL;
}

// y[r][o] = sum_i W[o][i] x[r][i] (+ b[o])
static void ref_mm(double *y, const float *w, const float *b, const double *x, int rows, int n_in,
                   int n_out) {
    for (int r = 0; r < rows; r++)
        for (int o = 0; o < n_out; o++) {
            double acc = b ? b[o] : 0.0;
            for (int i = 0; i < n_in; i++)
                acc += (double)w[(size_t)o * n_in + i] * x[(size_t)r * n_in + i];
            y[(size_t)r * n_out + o] = acc;
        }
}

static void ref_rms(double *y, const double *x, const float *w, int rows, int n) {
    for (int r = 0; r < rows; r++) {
        double ss = 0;
        for (int i = 0; i < n; i++)
            ss += x[(size_t)r * n + i] * x[(size_t)r * n + i];
        double sc = 1.0 / sqrt(ss / n + 1e-5);
        for (int i = 0; i < n; i++)
            y[(size_t)r * n + i] = x[(size_t)r * n + i] * sc * w[i];
    }
}

static void ref_rope(double *x, int T, int n_head, int hd, int n_rot, bool neox, const float *ff) {
    for (int t = 0; t < T; t++)
        for (int h = 0; h < n_head; h++) {
            double *v = x + ((size_t)t * n_head + h) * hd;
            for (int i = 0; i < n_rot / 2; i++) {
                double th = t * pow(10000.0, -2.0 * i / n_rot) / (ff ? ff[i] : 1.0);
                int a = neox ? i : 2 * i, b = neox ? i + n_rot / 2 : 2 * i + 1;
                double x0 = v[a], x1 = v[b];
                v[a] = x0 * cos(th) - x1 * sin(th);
                v[b] = x0 * sin(th) + x1 * cos(th);
            }
        }
}

static double *ref_forward(const char *path, const spec *s, const int32_t *toks, int T) {
    fg_gguf *g = NULL;
    if (fg_gguf_open(path, &g) != FG_OK)
        fail_msg("%s", fg_last_error());
    int E = s->n_embd, H = s->n_head, HK = s->n_head_kv, hd = s->head_dim ? s->head_dim : E / H;
    int F = s->n_ff, Q = H * hd, KV = HK * hd, V = 512, n_rot = s->n_rot ? s->n_rot : s->glm ? hd / 2 : hd;
    bool neox = !strcmp(s->arch, "qwen2") || !strcmp(s->arch, "qwen3");
    size_t big = (size_t)T * (size_t)(2 * F > Q ? (2 * F > E ? 2 * F : E) : (Q > E ? Q : E));
    double *x = calloc((size_t)T * E, sizeof *x), *h = calloc(big, sizeof *h),
           *q = calloc((size_t)T * Q, sizeof *q), *k = calloc((size_t)T * KV, sizeof *k),
           *v = calloc((size_t)T * KV, sizeof *v), *att = calloc((size_t)T * Q, sizeof *att),
           *o = calloc(big, sizeof *o), *gu = calloc(big, sizeof *gu), *u = calloc(big, sizeof *u),
           *lg = calloc((size_t)T * V, sizeof *lg);
    const float *emb = ref_w(g, "token_embd.weight"), *ff = ref_w(g, "rope_freqs.weight");
    for (int t = 0; t < T; t++)
        for (int i = 0; i < E; i++)
            x[(size_t)t * E + i] = emb[(size_t)toks[t] * E + i];
    for (int l = 0; l < s->n_layer; l++) {
        char n[96];
#define W(suffix) (snprintf(n, sizeof n, "blk.%d.%s", l, suffix), ref_w(g, n))
        ref_rms(h, x, W("attn_norm.weight"), T, E);
        ref_mm(q, W("attn_q.weight"), W("attn_q.bias"), h, T, E, Q);
        ref_mm(k, W("attn_k.weight"), W("attn_k.bias"), h, T, E, KV);
        ref_mm(v, W("attn_v.weight"), W("attn_v.bias"), h, T, E, KV);
        if (W("attn_q_norm.weight")) {
            ref_rms(q, q, W("attn_q_norm.weight"), T * H, hd);
            ref_rms(k, k, W("attn_k_norm.weight"), T * HK, hd);
        }
        ref_rope(q, T, H, hd, n_rot, neox, ff);
        ref_rope(k, T, HK, hd, n_rot, neox, ff);
        for (int t = 0; t < T; t++)
            for (int hh = 0; hh < H; hh++) {
                int kh = hh / (H / HK);
                double sc[64], mx = -1e300, sum = 0;
                for (int j = 0; j <= t; j++) {
                    double d = 0;
                    for (int i = 0; i < hd; i++)
                        d += q[((size_t)t * H + hh) * hd + i] * k[((size_t)j * HK + kh) * hd + i];
                    sc[j] = d / sqrt((double)hd);
                    mx = sc[j] > mx ? sc[j] : mx;
                }
                for (int j = 0; j <= t; j++)
                    sum += (sc[j] = exp(sc[j] - mx));
                for (int i = 0; i < hd; i++) {
                    double acc = 0;
                    for (int j = 0; j <= t; j++)
                        acc += sc[j] / sum * v[((size_t)j * HK + kh) * hd + i];
                    att[((size_t)t * H + hh) * hd + i] = acc;
                }
            }
        ref_mm(o, W("attn_output.weight"), W("attn_output.bias"), att, T, Q, E);
        if (W("post_attention_norm.weight"))
            ref_rms(o, o, W("post_attention_norm.weight"), T, E);
        for (size_t i = 0; i < (size_t)T * E; i++)
            x[i] += o[i];
        ref_rms(h, x, W("ffn_norm.weight"), T, E);
        if (s->glm) {
            ref_mm(gu, W("ffn_up.weight"), NULL, h, T, E, 2 * F);
            for (int t = 0; t < T; t++)
                for (int i = 0; i < F; i++) {
                    double a = gu[(size_t)t * 2 * F + i], b = gu[(size_t)t * 2 * F + F + i];
                    u[(size_t)t * F + i] = a / (1 + exp(-a)) * b;
                }
        } else {
            ref_mm(gu, W("ffn_gate.weight"), NULL, h, T, E, F);
            ref_mm(u, W("ffn_up.weight"), NULL, h, T, E, F);
            for (size_t i = 0; i < (size_t)T * F; i++)
                u[i] = gu[i] / (1 + exp(-gu[i])) * u[i];
        }
        ref_mm(o, W("ffn_down.weight"), NULL, u, T, F, E);
        if (W("post_ffw_norm.weight"))
            ref_rms(o, o, W("post_ffw_norm.weight"), T, E);
        for (size_t i = 0; i < (size_t)T * E; i++)
            x[i] += o[i];
#undef W
    }
    ref_rms(h, x, ref_w(g, "output_norm.weight"), T, E);
    const float *out = ref_w(g, "output.weight");
    ref_mm(lg, out ? out : emb, NULL, h, T, E, V);
    free(x), free(h), free(q), free(k), free(v), free(att), free(o), free(gu), free(u);
    fg_gguf_close(g);
    return lg;
}

// Every architecture against the scalar reference: 7 tokens over pages of 2 (table 3,0,2,1),
// logits of every position, F32 KV cache. Measured max |d logit| ~3e-7 (summation order);
// a rope, mask or head-grouping mistake moves logits by > 1e-2 with these gains.
static void test_forward_matches_reference(void **state) {
    fixture *f = *state;
    spec specs[6];
    for (int i = 0; i < 6; i++)
        specs[i] = base_spec();
    specs[1].tied = true;
    specs[1].rope_freqs = 2.5f;
    specs[2].arch = "qwen2", specs[2].biases = true, specs[2].tied = true;
    specs[3].arch = "qwen3", specs[3].qk_norm = true, specs[3].head_dim = 16;
    specs[4].arch = "glm4", specs[4].glm = true, specs[4].biases = true;
    specs[5].n_head_kv = 1; // 4 query heads per KV head
    const int T = 7;
    int32_t toks[7] = {1, 400, 401, 17, 300, 2, 511}, pos[7], seq[7] = {0}, pages[4] = {3, 0, 2, 1};
    bool want[7];
    for (int i = 0; i < T; i++)
        pos[i] = i, want[i] = true;
    for (int si = 0; si < 6; si++) {
        fg_model *m = load_expect(f, &specs[si], FG_OK, NULL);
        double *ref = ref_forward(f->path, &specs[si], toks, T);
        fg_kv_store *kv = NULL;
        assert_int_equal(fg_kv_store_create(m, 4, 2, FG_TYPE_F32, &kv), FG_OK);
        int32_t n_kv = T;
        const int32_t *pt = pages;
        fg_batch b = {.n_tokens = T, .tokens = toks, .pos = pos, .seq = seq, .want_logits = want,
                      .n_seqs = 1, .n_kv = &n_kv, .page_tables = &pt};
        float *lg = malloc(sizeof(float) * T * 512);
        assert_int_equal(fg_model_forward(m, kv, &b, lg), FG_OK);
        double md = 0, mx = 0;
        for (int i = 0; i < T * 512; i++) {
            md = fmax(md, fabs(lg[i] - ref[i]));
            mx = fmax(mx, fabs(ref[i]));
        }
        // the same tokens in two steps: 5 tokens wanting no logits (the last layer stops after
        // storing K/V), then 2 tokens of which only the last wants logits (rows gathered)
        for (int i = 0; i < T; i++)
            want[i] = i == T - 1;
        n_kv = 5;
        b.n_tokens = 5;
        assert_int_equal(fg_model_forward(m, kv, &b, NULL), FG_OK);
        n_kv = T;
        fg_batch b2 = {.n_tokens = 2, .tokens = toks + 5, .pos = pos + 5, .seq = seq,
                       .want_logits = want + 5, .n_seqs = 1, .n_kv = &n_kv, .page_tables = &pt};
        float lg2[512];
        assert_int_equal(fg_model_forward(m, kv, &b2, lg2), FG_OK);
        for (int i = 0; i < 512; i++)
            md = fmax(md, fabs(lg2[i] - ref[(T - 1) * 512 + i]));
        for (int i = 0; i < T; i++)
            want[i] = true;
        printf("reference %-6s%s: max |d logit| %.3g (max |logit| %.3g)\n", specs[si].arch,
               si == 1 ? " tied+rope_freqs" : si == 5 ? " n_head_kv=1" : "", md, mx);
        assert_true(md <= 1e-5 * fmax(1.0, mx));
        free(lg);
        free(ref);
        fg_kv_store_destroy(kv);
        fg_model_destroy(m);
    }
}

// Shapes the small reference test does not reach: head_dim 128 and 256 (!= n_embd/n_head),
// multi-query attention, n_ff 172 and 100 (not a multiple of 32), qwen2 without q/k/v biases
// (all three absent is fine; one missing of three is refused, test_missing_tensor), partial
// rotary dims (rope.dimension_count < head_dim, neox and normal), a 50-token prompt over 13
// pages of 4 in a scrambled page table; the prompt in one step (every row's logits) and the
// same tokens decoded one at a time both match the scalar reference.
static void test_big_heads_long_prompt(void **state) {
    fixture *f = *state;
    spec specs[5] = {base_spec(), base_spec(), base_spec(), base_spec(), base_spec()};
    specs[0].n_head = 2, specs[0].n_head_kv = 1, specs[0].head_dim = 128, specs[0].n_ff = 172;
    specs[0].rope_freqs = 1.5f;
    specs[1].arch = "qwen2", specs[1].biases = true, specs[1].n_head = 2, specs[1].n_head_kv = 2;
    specs[1].head_dim = 256, specs[1].n_ff = 100, specs[1].tied = true, specs[1].n_layer = 1;
    specs[2].arch = "qwen2", specs[2].biases = false; // qwen2 without q/k/v biases
    specs[3].arch = "qwen2", specs[3].biases = true, specs[3].n_rot = 4; // partial rope, neox
    specs[4].n_rot = 6, specs[4].rope_freqs = 3.0f, specs[4].rope_freqs_len = 3; // partial, normal
    enum { T = 50, NP = 13 };
    int32_t toks[T], pos[T], seq[T] = {0}, pages[NP];
    bool want[T];
    for (int i = 0; i < T; i++)
        toks[i] = (i * 37 + 1) % 512, pos[i] = i, want[i] = true;
    for (int i = 0; i < NP; i++)
        pages[i] = (i * 5 + 3) % NP;
    for (int si = 0; si < 5; si++) {
        write_model(f->path, &specs[si]);
        fg_model *m = NULL;
        fg_model_opts mo = {.max_batch_tokens = 64, .max_seqs = 2};
        if (fg_model_load(f->path, f->be, &mo, &m) != FG_OK)
            fail_msg("load: %s", fg_last_error());
        double *ref = ref_forward(f->path, &specs[si], toks, T);
        float *lg = malloc(sizeof(float) * T * 512);
        const int32_t *pt = pages;
        double md = 0, mx = 0;
        for (int mode = 0; mode < 2; mode++) {
            fg_kv_store *kv = NULL;
            assert_int_equal(fg_kv_store_create(m, NP, 4, FG_TYPE_F32, &kv), FG_OK);
            for (int t0 = 0; t0 < T;) {
                int n = mode == 0 ? T : 1;
                int32_t n_kv = t0 + n;
                fg_batch b = {.n_tokens = n, .tokens = toks + t0, .pos = pos + t0, .seq = seq,
                              .want_logits = want, .n_seqs = 1, .n_kv = &n_kv, .page_tables = &pt};
                if (fg_model_forward(m, kv, &b, lg + (size_t)t0 * 512) != FG_OK)
                    fail_msg("forward: %s", fg_last_error());
                t0 += n;
            }
            for (int i = 0; i < T * 512; i++) {
                md = fmax(md, fabs(lg[i] - ref[i]));
                mx = fmax(mx, fabs(ref[i]));
            }
            fg_kv_store_destroy(kv);
        }
        printf("reference %s head_dim %d n_ff %d n_rot %d%s, %d tokens: max |d logit| %.3g (max |logit| %.3g)\n",
               specs[si].arch, specs[si].head_dim, specs[si].n_ff, specs[si].n_rot,
               si == 2 ? " no biases" : "", T, md, mx);
        assert_true(md <= 1e-5 * fmax(1.0, mx));
        free(lg);
        free(ref);
        fg_model_destroy(m);
    }
}

// Non-finite weights: a NaN in a norm or a rope factor of 0 is refused at load naming the
// tensor, as does an infinite value in any weight (model_check.c); finite output weights so
// large that the logits overflow make the forward step fail instead of returning them.
static void test_nonfinite_weights(void **state) {
    fixture *f = *state;
    spec s = base_spec();
    s.poison = "blk.1.ffn_norm.weight", s.poison_value = NAN;
    load_expect(f, &s, FG_ERR_FORMAT,
                "tensor 'blk.1.ffn_norm.weight': element 0 is nan, expected a finite number");
    s.poison = "blk.0.attn_norm.weight", s.poison_value = -INFINITY;
    load_expect(f, &s, FG_ERR_FORMAT,
                "tensor 'blk.0.attn_norm.weight': element 0 is -inf, expected a finite number");
    s.rope_freqs = 1.0f;
    s.poison = "rope_freqs.weight", s.poison_value = -1.0f;
    load_expect(f, &s, FG_ERR_FORMAT,
                "tensor 'rope_freqs.weight': element 0 is -1, expected a positive finite number");
    s.rope_freqs = 0;
    s.poison = "token_embd.weight", s.poison_value = INFINITY; // any weight, big ones included
    load_expect(f, &s, FG_ERR_FORMAT,
                "tensor 'token_embd.weight': element 0 is inf: a model with non-finite weights "
                "is refused");
    s.poison = "output.weight", s.poison_value = 3.0e38f; // finite, but the logits overflow
    fg_model *m = load_expect(f, &s, FG_OK, NULL);
    fg_kv_store *kv = NULL;
    assert_int_equal(fg_kv_store_create(m, 1, 4, FG_TYPE_F16, &kv), FG_OK);
    int32_t tok = 5, pos = 0, seq = 0, n_kv = 1, p0 = 0;
    const int32_t *pt = &p0;
    fg_batch b = {.n_tokens = 1, .tokens = &tok, .pos = &pos, .seq = &seq, .n_seqs = 1, .n_kv = &n_kv,
                  .page_tables = &pt};
    float lg[512];
    assert_int_equal(fg_model_forward(m, kv, &b, lg), FG_ERR_FORMAT);
    // "<path>: forward: logit 0 of token 0 is nan|-nan: ..." (the NaN's sign is the CPU's business)
    const char *e = fg_last_error();
    assert_int_equal(strncmp(e, f->path, strlen(f->path)), 0);
    assert_non_null(strstr(e, ": forward: logit 0 of token 0 is "));
    assert_non_null(strstr(e, "nan: the weights produce non-finite values"));
    fg_kv_store_destroy(kv);
    fg_model_destroy(m);
}

// Scratch activations are sized by the shapes the file claims times max_batch_tokens: more
// than 8x the weights (and over 1 GiB) is refused before anything is allocated.
static void test_scratch_limit(void **state) {
    fixture *f = *state;
    spec s = base_spec();
    write_model(f->path, &s);
    fg_model *m = NULL;
    fg_model_opts mo = {.max_batch_tokens = 1 << 20, .max_seqs = 1};
    assert_int_equal(fg_model_load(f->path, f->be, &mo, &m), FG_ERR_INVALID_ARG);
    assert_null(m);
    assert_non_null(strstr(fg_last_error(), "scratch activations for max_batch_tokens 1048576 would take"));
    assert_non_null(strstr(fg_last_error(), "(n_embd 32, n_ff 64, n_vocab 512)"));
}

static void test_bad_batches(void **state) {
    fixture *f = *state;
    spec s = base_spec();
    fg_model *m = load_expect(f, &s, FG_OK, NULL);
    fg_kv_store *kv = NULL;
    assert_int_equal(fg_kv_store_create(m, 2, 4, FG_TYPE_F16, &kv), FG_OK);
    int32_t toks[20] = {1, 2, 3}, pos[20] = {0, 5, 2}, seq[20] = {0};
    int32_t n_kv[1] = {3}, p0[2] = {0, 1};
    const int32_t *pts[1] = {p0};
    float lg[512];
    fg_batch b = {.n_tokens = 3, .tokens = toks, .pos = pos, .seq = seq, .n_seqs = 1, .n_kv = n_kv,
                  .page_tables = pts};
    assert_int_equal(fg_model_forward(m, kv, &b, lg), FG_ERR_INVALID_ARG);
    assert_string_equal(fg_last_error(), "forward: batch.pos[1] = 5, expected 1 (n_kv[0] = 3)");
    pos[1] = 1;
    toks[2] = 512;
    assert_int_equal(fg_model_forward(m, kv, &b, lg), FG_ERR_INVALID_ARG);
    assert_string_equal(fg_last_error(), "forward: batch.tokens[2] = 512 is outside [0, 512)");
    toks[2] = 3;
    n_kv[0] = 9;
    for (int i = 0; i < 3; i++)
        pos[i] = 6 + i;
    assert_int_equal(fg_model_forward(m, kv, &b, lg), FG_ERR_CAPACITY);
    assert_string_equal(fg_last_error(), "forward: batch.n_kv[0] = 9 needs 3 pages, the store has 2");
    b.n_tokens = 17;
    assert_int_equal(fg_model_forward(m, kv, &b, lg), FG_ERR_CAPACITY);
    assert_string_equal(fg_last_error(), "forward: batch.n_tokens (17) exceeds max_batch_tokens (16)");
    b.n_tokens = 3;
    n_kv[0] = 3;
    for (int i = 0; i < 3; i++)
        pos[i] = i;
    p0[0] = 7;
    assert_int_equal(fg_model_forward(m, kv, &b, lg), FG_ERR_INVALID_ARG);
    assert_string_equal(fg_last_error(), "forward: batch.page_tables[0][0] = 7 is outside [0, 2)");
    p0[0] = 0;
    assert_int_equal(fg_model_forward(m, kv, &b, lg), FG_OK);
    assert_int_equal(fg_kv_store_copy_page(kv, 1, 0), FG_OK);
    assert_int_equal(fg_kv_store_copy_page(kv, 2, 0), FG_ERR_INVALID_ARG);
    fg_kv_store_destroy(kv);
    fg_model_destroy(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_llama_loads),
        cmocka_unit_test(test_tied_qwen2_qwen3_glm4_load),
        cmocka_unit_test(test_missing_tensor),
        cmocka_unit_test(test_wrong_shape),
        cmocka_unit_test(test_heads_and_keys),
        cmocka_unit_test(test_vocab_mismatch),
        cmocka_unit_test(test_unsupported_arch),
        cmocka_unit_test(test_unknown_type),
        cmocka_unit_test(test_rope_freqs),
        cmocka_unit_test(test_forward_matches_reference),
        cmocka_unit_test(test_bad_batches),
        cmocka_unit_test(test_big_heads_long_prompt),
        cmocka_unit_test(test_nonfinite_weights),
        cmocka_unit_test(test_scratch_limit),
    };
    return cmocka_run_group_tests_name("model", tests, setup, teardown);
}
