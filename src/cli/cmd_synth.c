// cmd_synth.c - `forge synth -o OUT.gguf`: writes a GGUF model of a chosen architecture
// (llama, qwen2, qwen3, glm4) and shape with random Gaussian weights in any weight type,
// using llama.cpp's metadata keys and tensor names so llama.cpp would load the file too.
// Weights are generated and quantized in parallel (pthreads), deterministically per --seed
// whatever the thread count. Not here: the GGUF encoding (src/gguf/gguf_write.c), the
// built-in tokenizer (synth_vocab.c), quantizers (src/quant).
#include "cli/cli.h"
#include "cli/synth_vocab.h"

#include "base/half.h"
#include "base/progress.h"
#include "base/status.h"
#include "base/util.h"
#include "quant/quant.h"

#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

// --- architecture and presets

typedef struct synth_cfg {
    const char *name; // preset name
    const char *arch; // "llama", "qwen2", "qwen3", "glm4"
    int64_t n_embd, n_layer, n_head, n_head_kv, head_dim, n_ff, n_vocab, n_ctx;
    double rope_base, rms_eps;
    bool tied; // no output.weight: the output projection reuses token_embd
} synth_cfg;

// n_vocab 0: the built-in vocabulary rounded up to 1024.
static const synth_cfg k_presets[] = {
    {"llama3-8b", "llama", 4096, 32, 32, 8, 128, 14336, 128256, 8192, 500000.0, 1e-5, false},
    {"llama3.2-1b", "llama", 2048, 16, 32, 8, 64, 8192, 128256, 131072, 500000.0, 1e-5, true},
    {"qwen2-0.5b", "qwen2", 896, 24, 14, 2, 64, 4864, 151936, 32768, 1000000.0, 1e-6, true},
    {"qwen3-0.6b", "qwen3", 1024, 28, 16, 8, 128, 3072, 151936, 40960, 1000000.0, 1e-6, true},
    {"glm4-9b", "glm4", 4096, 40, 32, 2, 128, 13696, 151552, 32768, 10000.0, 1e-5, false},
    {"tiny-llama", "llama", 256, 2, 4, 2, 64, 512, 0, 2048, 10000.0, 1e-5, false},
    {"tiny-qwen2", "qwen2", 256, 2, 4, 2, 64, 512, 0, 2048, 1000000.0, 1e-6, true},
    {"tiny-qwen3", "qwen3", 256, 2, 4, 2, 128, 512, 0, 2048, 1000000.0, 1e-6, true},
    {"tiny-glm4", "glm4", 256, 2, 4, 2, 64, 512, 0, 2048, 10000.0, 1e-5, false},
};

// general.file_type (llama_ftype) of a file whose 2-D weights are all `type`.
static uint32_t file_type_of(uint32_t type) {
    switch (type) {
    case FG_TYPE_F32: return 0;
    case FG_TYPE_F16: return 1;
    case FG_TYPE_Q4_0: return 2;
    case FG_TYPE_Q4_1: return 3;
    case FG_TYPE_Q8_0: return 7;
    case FG_TYPE_Q5_0: return 8;
    case FG_TYPE_Q5_1: return 9;
    case FG_TYPE_Q2_K: return 10;
    case FG_TYPE_Q3_K: return 11; // Q3_K_S
    case FG_TYPE_Q4_K: return 14; // Q4_K_S
    case FG_TYPE_Q5_K: return 16; // Q5_K_S
    case FG_TYPE_Q6_K: return 18;
    case FG_TYPE_BF16: return 32;
    case FG_TYPE_MXFP4: return 38;
    default: return 1;
    }
}

// llama.cpp's choice when a row is not a multiple of the type's block size
// (llama-quant.cpp; Q2_K/Q3_K go to IQ4_NL there, which Forge lacks: Q4_0 instead).
static uint32_t type_for_row(uint32_t type, int64_t ne0) {
    if (ne0 % fg_type_block_size(type) == 0)
        return type;
    uint32_t alt;
    switch (type) {
    case FG_TYPE_Q2_K: case FG_TYPE_Q3_K: alt = FG_TYPE_Q4_0; break;
    case FG_TYPE_Q4_K: alt = FG_TYPE_Q5_0; break;
    case FG_TYPE_Q5_K: alt = FG_TYPE_Q5_1; break;
    case FG_TYPE_Q6_K: alt = FG_TYPE_Q8_0; break;
    default: alt = FG_TYPE_F16; break;
    }
    return ne0 % fg_type_block_size(alt) == 0 ? alt : FG_TYPE_F16;
}

// --- tensors to write

typedef enum tkind { K_WEIGHT, K_EMBD, K_NORM, K_OUTNORM, K_BIAS } tkind;

typedef struct tspec {
    char name[64];
    int n_dims;
    int64_t ne[2]; // ne[0] = row length (inputs), ne[1] = rows
    uint32_t type;
    tkind kind;
    float mean, std;
} tspec;

typedef struct synth {
    synth_cfg cfg;
    uint32_t type;  // requested weight type
    uint64_t seed;
    bool custom;    // shape overridden on the command line
    int n_threads;
    tspec *t;       // [n_t]
    int64_t n_t, cap_t;
    int n_fallback;
    uint32_t fallback_type;
    struct pool *pools; // [MAX_POOLS]
    int n_pools;
    fg_progress prog;
    uint64_t bytes_total;
    uint64_t bytes_base;          // bytes of the tensors already written
    _Atomic uint64_t bytes_done;  // of the tensor being filled
} synth;

// name: "blk.<layer>.<suffix>", or just suffix when layer < 0.
static void add_t(synth *s, tkind kind, int64_t ne0, int64_t ne1, const char *suffix, int layer) {
    if (s->n_t == s->cap_t) {
        s->cap_t = s->cap_t ? s->cap_t * 2 : 64;
        s->t = fg_xrealloc(s->t, (size_t)s->cap_t * sizeof *s->t);
    }
    tspec *t = &s->t[s->n_t++];
    memset(t, 0, sizeof *t);
    if (layer >= 0)
        snprintf(t->name, sizeof t->name, "blk.%d.%s", layer, suffix);
    else
        snprintf(t->name, sizeof t->name, "%s", suffix);
    t->n_dims = ne1 > 0 ? 2 : 1;
    t->ne[0] = ne0;
    t->ne[1] = ne1 > 0 ? ne1 : 1;
    t->kind = kind;
    switch (kind) {
    case K_WEIGHT: t->std = (float)(1.28 / sqrt((double)ne0)); break;
    case K_EMBD: t->std = (float)(0.8 / sqrt((double)ne0)); break;
    case K_NORM: t->mean = 1.0f; t->std = 0.05f; break;
    case K_OUTNORM: t->mean = 6.0f; t->std = 0.3f; break;
    case K_BIAS: t->std = 0.2f; break;
    }
    if (t->n_dims == 1) {
        t->type = FG_TYPE_F32; // norms and biases stay F32, as in llama.cpp
    } else {
        t->type = type_for_row(s->type, ne0);
        if (t->type != s->type) {
            s->n_fallback++;
            s->fallback_type = t->type;
        }
    }
}

static void build_tensors(synth *s) {
    const synth_cfg *c = &s->cfg;
    int64_t E = c->n_embd, F = c->n_ff, Q = c->n_head * c->head_dim, KV = c->n_head_kv * c->head_dim;
    bool glm4 = !strcmp(c->arch, "glm4"), qwen2 = !strcmp(c->arch, "qwen2"),
         qwen3 = !strcmp(c->arch, "qwen3");
    add_t(s, K_EMBD, E, c->n_vocab, "token_embd.weight", -1);
    for (int il = 0; il < (int)c->n_layer; il++) {
        add_t(s, K_NORM, E, 0, "attn_norm.weight", il);
        add_t(s, K_WEIGHT, E, Q, "attn_q.weight", il);
        add_t(s, K_WEIGHT, E, KV, "attn_k.weight", il);
        add_t(s, K_WEIGHT, E, KV, "attn_v.weight", il);
        if (qwen2 || glm4) {
            add_t(s, K_BIAS, Q, 0, "attn_q.bias", il);
            add_t(s, K_BIAS, KV, 0, "attn_k.bias", il);
            add_t(s, K_BIAS, KV, 0, "attn_v.bias", il);
        }
        if (qwen3) {
            add_t(s, K_NORM, c->head_dim, 0, "attn_q_norm.weight", il);
            add_t(s, K_NORM, c->head_dim, 0, "attn_k_norm.weight", il);
        }
        add_t(s, K_WEIGHT, Q, E, "attn_output.weight", il);
        if (glm4)
            add_t(s, K_NORM, E, 0, "post_attention_norm.weight", il);
        add_t(s, K_NORM, E, 0, "ffn_norm.weight", il);
        if (glm4) {
            add_t(s, K_WEIGHT, E, 2 * F, "ffn_up.weight", il); // gate and up fused
        } else {
            add_t(s, K_WEIGHT, E, F, "ffn_gate.weight", il);
            add_t(s, K_WEIGHT, E, F, "ffn_up.weight", il);
        }
        add_t(s, K_WEIGHT, F, E, "ffn_down.weight", il);
        if (glm4)
            add_t(s, K_NORM, E, 0, "post_ffw_norm.weight", il);
    }
    add_t(s, K_OUTNORM, E, 0, "output_norm.weight", -1);
    if (!c->tied)
        add_t(s, K_WEIGHT, E, c->n_vocab, "output.weight", -1);
}

static void set_metadata(const synth *s, fg_gguf_writer *w) {
    const synth_cfg *c = &s->cfg;
    char key[128], name[64];
#define ARCH_KEY(suffix) (snprintf(key, sizeof key, "%s." suffix, c->arch), key)
    fg_gguf_writer_set_str(w, "general.architecture", c->arch);
    if (s->custom)
        snprintf(name, sizeof name, "synth-%s-custom", c->arch);
    else
        snprintf(name, sizeof name, "synth-%s", c->name);
    fg_gguf_writer_set_str(w, "general.name", name);
    fg_gguf_writer_set_str(w, "general.description",
                           "synthetic random-weight model written by forge synth; not trained");
    fg_gguf_writer_set_u32(w, "general.file_type", file_type_of(s->type));
    fg_gguf_writer_set_u32(w, "general.quantization_version", 2);
    fg_gguf_writer_set_u32(w, ARCH_KEY("vocab_size"), (uint32_t)c->n_vocab);
    fg_gguf_writer_set_u32(w, ARCH_KEY("context_length"), (uint32_t)c->n_ctx);
    fg_gguf_writer_set_u32(w, ARCH_KEY("embedding_length"), (uint32_t)c->n_embd);
    fg_gguf_writer_set_u32(w, ARCH_KEY("block_count"), (uint32_t)c->n_layer);
    fg_gguf_writer_set_u32(w, ARCH_KEY("feed_forward_length"), (uint32_t)c->n_ff);
    fg_gguf_writer_set_u32(w, ARCH_KEY("attention.head_count"), (uint32_t)c->n_head);
    fg_gguf_writer_set_u32(w, ARCH_KEY("attention.head_count_kv"), (uint32_t)c->n_head_kv);
    fg_gguf_writer_set_f32(w, ARCH_KEY("attention.layer_norm_rms_epsilon"), (float)c->rms_eps);
    fg_gguf_writer_set_f32(w, ARCH_KEY("rope.freq_base"), (float)c->rope_base);
    // GLM-4 rotates half of each head (partial_rotary_factor 0.5)
    int64_t n_rot = !strcmp(c->arch, "glm4") ? c->head_dim / 2 : c->head_dim;
    fg_gguf_writer_set_u32(w, ARCH_KEY("rope.dimension_count"), (uint32_t)n_rot);
    if (c->head_dim * c->n_head != c->n_embd) {
        fg_gguf_writer_set_u32(w, ARCH_KEY("attention.key_length"), (uint32_t)c->head_dim);
        fg_gguf_writer_set_u32(w, ARCH_KEY("attention.value_length"), (uint32_t)c->head_dim);
    }
#undef ARCH_KEY
}

// --- random numbers: xoshiro256** seeded by splitmix64

typedef struct rng {
    uint64_t s[4];
} rng;

static uint64_t splitmix(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static void rng_seed(rng *r, uint64_t a, uint64_t b, uint64_t c) {
    uint64_t x = a * 0x9e3779b97f4a7c15ull ^ (b + 0x632be59bd9b4e019ull) * 0xd1b54a32d192ed03ull ^ c;
    for (int i = 0; i < 4; i++)
        r->s[i] = splitmix(&x);
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static inline uint64_t rng_next(rng *r) {
    uint64_t *s = r->s;
    uint64_t out = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return out;
}

// Approximate standard normal: a Binomial(48, 1/2) count smoothed by a 16-bit uniform
// (variance 12 + 1/12), one 64-bit draw per sample; tails end near 7 sigma.
static inline float rng_gauss(rng *r) {
    uint64_t x = rng_next(r);
    int pc = __builtin_popcountll(x >> 16);
    float u = (float)(x & 0xffff) * (1.0f / 65536.0f);
    return ((float)pc - 24.0f + u - 0.5f) * 0.28767798f; // 1/sqrt(12.0833)
}

// --- random but valid quantized blocks, for types whose reference quantizer is missing

typedef struct block_layout {
    int d_off, m_off; // byte offsets of the f16 scale / min (-1: none)
    float d_per_std, m_per_std;
} block_layout;

static bool layout_of(uint32_t type, block_layout *l) {
    *l = (block_layout){-1, -1, 0, 0};
    switch (type) {
    case FG_TYPE_Q4_0: *l = (block_layout){0, -1, 0.22f, 0}; return true;
    case FG_TYPE_Q4_1: *l = (block_layout){0, 2, 0.22f, -1.7f}; return true;
    case FG_TYPE_Q5_0: *l = (block_layout){0, -1, 0.11f, 0}; return true;
    case FG_TYPE_Q5_1: *l = (block_layout){0, 2, 0.11f, -1.7f}; return true;
    case FG_TYPE_Q8_0: *l = (block_layout){0, -1, 1.0f / 74.0f, 0}; return true;
    case FG_TYPE_Q2_K: *l = (block_layout){80, 82, 0.1f, 0.1f}; return true;
    case FG_TYPE_Q3_K: *l = (block_layout){108, -1, 1.0f / 60.0f, 0}; return true;
    case FG_TYPE_Q4_K: *l = (block_layout){0, 2, 0.01f, 0.01f}; return true;
    case FG_TYPE_Q5_K: *l = (block_layout){0, 2, 0.005f, 0.005f}; return true;
    case FG_TYPE_Q6_K: *l = (block_layout){208, -1, 0.001f, 0}; return true;
    case FG_TYPE_MXFP4: return true; // one E8M0 exponent byte at 0
    default: return false;
    }
}

static void put_f16(uint8_t *p, float v) {
    fg_f16 h = fg_f32_to_f16(v);
    memcpy(p, &h, 2);
}

static void random_blocks(rng *r, uint32_t type, uint8_t *dst, int64_t n_blocks, float std) {
    size_t bb = fg_type_block_bytes(type);
    block_layout l;
    layout_of(type, &l);
    for (int64_t b = 0; b < n_blocks; b++) {
        uint8_t *p = dst + (size_t)b * bb;
        for (size_t i = 0; i < bb; i += 8) {
            uint64_t x = rng_next(r);
            memcpy(p + i, &x, bb - i < 8 ? bb - i : 8);
        }
        float jitter = 0.75f + 0.5f * (float)(rng_next(r) >> 40) * (1.0f / 16777216.0f);
        if (type == FG_TYPE_MXFP4) {
            int e = 127 + (int)floorf(log2f(std * jitter / 5.0f)) + 1;
            p[0] = (uint8_t)(e < 1 ? 1 : e > 254 ? 254 : e);
            continue;
        }
        if (l.d_off >= 0)
            put_f16(p + l.d_off, std * l.d_per_std * jitter);
        if (l.m_off >= 0)
            put_f16(p + l.m_off, std * l.m_per_std * jitter);
    }
}

// --- parallel fill
//
// Small tensors are drawn and quantized element by element. Quantizing billions of weights
// with the reference quantizers would take many minutes, so a quantized tensor larger than a
// pool is a mosaic: each of its blocks is a block drawn at random from a pool of POOL_ELEMS
// weights generated and quantized with the same distribution (one pool per type and
// distribution, shared by tensors). Every block is a real quantized Gaussian block.

#define POOL_ELEMS (1 << 22)
#define POOL_ROW 4096 // a multiple of every block size
#define MAX_POOLS 16

typedef struct pool {
    uint32_t type;
    float mean, std;
    uint8_t *blocks; // [n_blocks][block bytes]
    int64_t n_blocks;
} pool;

typedef struct job {
    synth *s;
    const tspec *t;
    uint64_t seed_index; // tensor index (or pool id) mixed into the per-chunk seeds
    uint8_t *dst;
    uint64_t row_bytes;
    int64_t rows_per_chunk, n_chunks;
    const pool *pool;    // non-NULL: mosaic of pool blocks
    bool progress;
    _Atomic int64_t next;
    _Atomic int failed;
} job;

static void fill_chunk(job *j, int64_t c, float *buf) {
    const tspec *t = j->t;
    int64_t r0 = c * j->rows_per_chunk;
    int64_t r1 = FG_MIN(r0 + j->rows_per_chunk, t->ne[1]);
    int64_t n = (r1 - r0) * t->ne[0];
    uint8_t *out = j->dst + (uint64_t)r0 * j->row_bytes;
    rng r;
    rng_seed(&r, j->s->seed, j->seed_index, (uint64_t)c);
    const fg_type_traits *tr = fg_type_traits_get(t->type);
    bool is_float = t->type == FG_TYPE_F32 || t->type == FG_TYPE_F16 || t->type == FG_TYPE_BF16;
    int64_t n_blocks = n / fg_type_block_size(t->type);
    if (j->pool) {
        size_t bb = fg_type_block_bytes(t->type);
        for (int64_t b = 0; b < n_blocks; b++) {
            uint64_t k = rng_next(&r) % (uint64_t)j->pool->n_blocks;
            memcpy(out + (size_t)b * bb, j->pool->blocks + k * bb, bb);
        }
        return;
    }
    if (!is_float && (!tr || !tr->from_float)) {
        random_blocks(&r, t->type, out, n_blocks, t->std);
        return;
    }
    for (int64_t i = 0; i < n; i++)
        buf[i] = t->mean + t->std * rng_gauss(&r);
    if (t->type == FG_TYPE_F32) {
        memcpy(out, buf, (size_t)n * 4);
    } else if (t->type == FG_TYPE_F16) {
        for (int64_t i = 0; i < n; i++) {
            fg_f16 h = fg_f32_to_f16(buf[i]);
            memcpy(out + i * 2, &h, 2);
        }
    } else if (t->type == FG_TYPE_BF16) {
        for (int64_t i = 0; i < n; i++) {
            fg_bf16 h = fg_f32_to_bf16(buf[i]);
            memcpy(out + i * 2, &h, 2);
        }
    } else {
        tr->from_float(buf, out, n);
    }
}

typedef struct worker_arg {
    job *j;
    bool main_thread;
} worker_arg;

static void *worker(void *arg) {
    worker_arg *wa = arg;
    job *j = wa->j;
    float *buf = j->pool ? NULL : malloc((size_t)(j->rows_per_chunk * j->t->ne[0]) * sizeof *buf);
    if (!j->pool && !buf) {
        atomic_store(&j->failed, 1);
        return NULL;
    }
    int64_t c;
    uint64_t chunk_bytes = j->row_bytes * (uint64_t)j->rows_per_chunk;
    while ((c = atomic_fetch_add(&j->next, 1)) < j->n_chunks) {
        fill_chunk(j, c, buf);
        if (!j->progress)
            continue;
        uint64_t done = atomic_fetch_add(&j->s->bytes_done, chunk_bytes) + chunk_bytes;
        if (wa->main_thread)
            fg_progress_update(&j->s->prog, FG_MIN(j->s->bytes_base + done, j->s->bytes_total));
    }
    free(buf);
    return NULL;
}

// Fills dst (n_bytes, the rows of t) on all threads.
static fg_status run_job(synth *s, const tspec *t, uint64_t seed_index, void *dst,
                         uint64_t n_bytes, const pool *pl, bool progress) {
    job j = {.s = s, .t = t, .seed_index = seed_index, .dst = dst, .pool = pl, .progress = progress};
    j.row_bytes = n_bytes / (uint64_t)FG_MAX(t->ne[1], (int64_t)1);
    j.rows_per_chunk = FG_MAX((int64_t)1, (int64_t)65536 / FG_MAX(t->ne[0], (int64_t)1));
    j.n_chunks = (t->ne[1] + j.rows_per_chunk - 1) / j.rows_per_chunk;
    atomic_init(&j.next, 0);
    atomic_init(&j.failed, 0);
    int nt = (int)FG_MIN((int64_t)FG_MIN(s->n_threads, 256), j.n_chunks);
    pthread_t th[256];
    worker_arg args[256];
    int started = 0;
    for (int i = 1; i < nt; i++) {
        args[i] = (worker_arg){&j, false};
        if (pthread_create(&th[i], NULL, worker, &args[i]) != 0)
            break;
        started = i;
    }
    args[0] = (worker_arg){&j, true};
    worker(&args[0]);
    for (int i = 1; i <= started; i++)
        pthread_join(th[i], NULL);
    if (atomic_load(&j.failed))
        return FG_FAIL(FG_ERR_NOMEM, "tensor '%s': out of memory for the generation buffer", t->name);
    return FG_OK;
}

// The pool for t's type and distribution (created on first use); NULL when t is small enough
// to be drawn exactly or its type has no quantizer.
static fg_status get_pool(synth *s, const tspec *t, const pool **out) {
    *out = NULL;
    const fg_type_traits *tr = fg_type_traits_get(t->type);
    if (!tr || !tr->is_quantized || !tr->from_float ||
        (uint64_t)t->ne[0] * (uint64_t)t->ne[1] <= POOL_ELEMS / 4)
        return FG_OK;
    for (int i = 0; i < s->n_pools; i++) {
        pool *p = &s->pools[i];
        if (p->type == t->type && p->mean == t->mean && p->std == t->std) {
            *out = p;
            return FG_OK;
        }
    }
    if (s->n_pools == MAX_POOLS)
        return FG_OK; // exact generation: slower but correct
    tspec pt = *t;
    pt.ne[0] = POOL_ROW;
    pt.ne[1] = POOL_ELEMS / POOL_ROW;
    uint64_t row;
    FG_TRY(fg_type_row_bytes(t->type, POOL_ROW, &row));
    pool *p = &s->pools[s->n_pools];
    p->blocks = malloc((size_t)(row * (uint64_t)pt.ne[1]));
    if (!p->blocks)
        return FG_FAIL(FG_ERR_NOMEM, "out of memory for a %s weight pool", fg_type_name(t->type));
    FG_TRY(run_job(s, &pt, 0x100000000ull + (uint64_t)s->n_pools, p->blocks, row * (uint64_t)pt.ne[1],
                   NULL, false));
    p->type = t->type;
    p->mean = t->mean;
    p->std = t->std;
    p->n_blocks = POOL_ELEMS / fg_type_block_size(t->type);
    s->n_pools++;
    *out = p;
    return FG_OK;
}

static fg_status fill(void *user, int64_t index, void *dst, uint64_t n_bytes) {
    synth *s = user;
    const tspec *t = &s->t[index];
    const pool *pl = NULL;
    FG_TRY(get_pool(s, t, &pl));
    FG_TRY(run_job(s, t, (uint64_t)index, dst, n_bytes, pl, true));
    atomic_store(&s->bytes_done, 0);
    s->bytes_base += n_bytes;
    fg_progress_update(&s->prog, FG_MIN(s->bytes_base, s->bytes_total));
    return FG_OK;
}

// --- command line

static void usage(FILE *f) {
    fprintf(f,
            "usage: forge synth -o OUT.gguf [--preset NAME | --arch ARCH] [options]\n\n"
            "Writes a GGUF model with random Gaussian weights (not trained) in llama.cpp's layout.\n\n"
            "  -o, --output PATH     file to write\n"
            "  --preset NAME         llama3-8b, llama3.2-1b, qwen2-0.5b, qwen3-0.6b, glm4-9b,\n"
            "                        tiny-llama, tiny-qwen2, tiny-qwen3, tiny-glm4\n"
            "  --arch ARCH           llama | qwen2 | qwen3 | glm4 (starts from tiny-ARCH)\n"
            "  --n-embd N --n-layer N --n-head N --n-head-kv N --head-dim N --n-ff N\n"
            "  --n-vocab N --ctx N   shape overrides\n"
            "  --type TYPE           2-D weight type: f32 f16 bf16 q4_0 q4_1 q5_0 q5_1 q8_0 q2_k q3_k\n"
            "                        q4_k q5_k q6_k mxfp4 (default f16); 1-D tensors stay f32; rows\n"
            "                        that are not a multiple of the block size fall back as llama.cpp\n"
            "                        does (q4_k->q5_0, q5_k->q5_1, q6_k->q8_0, q2_k/q3_k->q4_0, else f16)\n"
            "  --seed N              random seed (default 1)\n"
            "  --vocab-from MODEL    copy all tokenizer.* metadata from MODEL (n_vocab follows it);\n"
            "                        default: a built-in SentencePiece-style vocabulary\n"
            "  --threads N           generator threads (default: all cores)\n"
            "  --gguf-version N      2 or 3 (default 3)\n");
}

static const synth_cfg *find_preset(const char *name) {
    for (size_t i = 0; i < FG_ARRAY_LEN(k_presets); i++)
        if (!strcmp(k_presets[i].name, name))
            return &k_presets[i];
    return NULL;
}

typedef struct opts {
    const char *out, *preset, *arch, *type, *vocab_from;
    int64_t v[8]; // overrides, -1 = unset: embd layer head head_kv head_dim ff vocab ctx
    int64_t seed, threads, version;
} opts;

static const char *const k_dim_flags[8] = {"--n-embd", "--n-head", "--n-layer", "--n-head-kv",
                                           "--head-dim", "--n-ff", "--n-vocab", "--ctx"};
static const int64_t k_dim_max[8] = {1 << 16, 1024, 4096, 1024, 4096, 1 << 20, 1 << 22, 1 << 24};

// 0 ok, 1 help printed, 2 usage error printed
static int parse_args(int argc, char **argv, opts *o) {
    for (int i = 0; i < 8; i++)
        o->v[i] = -1;
    o->seed = 1;
    o->threads = 0;
    o->version = 3;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 1;
        }
        const char *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (!val) {
            fprintf(stderr, "forge synth: unknown or incomplete option '%s'\n", a);
            return 2;
        }
        i++;
        bool done = false;
        for (int k = 0; k < 8 && !done; k++) {
            if (!strcmp(a, k_dim_flags[k])) {
                if (!fg_cli_parse_i64("synth", a, val, 1, k_dim_max[k], &o->v[k]))
                    return 2;
                done = true;
            }
        }
        if (done)
            continue;
        if (!strcmp(a, "-o") || !strcmp(a, "--output"))
            o->out = val;
        else if (!strcmp(a, "--preset"))
            o->preset = val;
        else if (!strcmp(a, "--arch"))
            o->arch = val;
        else if (!strcmp(a, "--type"))
            o->type = val;
        else if (!strcmp(a, "--vocab-from"))
            o->vocab_from = val;
        else if (!strcmp(a, "--seed")) {
            if (!fg_cli_parse_i64("synth", a, val, 0, INT64_MAX, &o->seed))
                return 2;
        } else if (!strcmp(a, "--threads")) {
            if (!fg_cli_parse_i64("synth", a, val, 1, 256, &o->threads))
                return 2;
        } else if (!strcmp(a, "--gguf-version")) {
            if (!fg_cli_parse_i64("synth", a, val, 2, 3, &o->version))
                return 2;
        } else {
            fprintf(stderr, "forge synth: unknown option '%s'\n", a);
            return 2;
        }
    }
    if (!o->out) {
        fprintf(stderr, "forge synth: missing -o OUT.gguf\n");
        return 2;
    }
    if (!o->preset && !o->arch) {
        fprintf(stderr, "forge synth: give --preset NAME or --arch ARCH\n");
        return 2;
    }
    return 0;
}

// Builds the configuration from the preset and overrides.
static fg_status make_cfg(const opts *o, synth_cfg *c) {
    const synth_cfg *p = NULL;
    char tiny[32];
    if (o->preset) {
        p = find_preset(o->preset);
        if (!p)
            return FG_FAIL(FG_ERR_INVALID_ARG, "unknown preset '%s' (see --help)", o->preset);
        if (o->arch && strcmp(o->arch, p->arch) != 0)
            return FG_FAIL(FG_ERR_INVALID_ARG, "--arch %s contradicts preset '%s' (arch %s)",
                           o->arch, p->name, p->arch);
    } else {
        snprintf(tiny, sizeof tiny, "tiny-%s", o->arch);
        p = find_preset(tiny);
        if (!p)
            return FG_FAIL(FG_ERR_INVALID_ARG, "unknown architecture '%s' (expected llama, qwen2, qwen3 or glm4)",
                           o->arch);
    }
    *c = *p;
    int64_t *f[8] = {&c->n_embd, &c->n_head, &c->n_layer, &c->n_head_kv, &c->head_dim, &c->n_ff,
                     &c->n_vocab, &c->n_ctx};
    for (int k = 0; k < 8; k++)
        if (o->v[k] > 0)
            *f[k] = o->v[k];
    if (o->v[4] < 0 && (o->v[0] > 0 || o->v[1] > 0)) { // derive head_dim from the new shape
        if (c->n_embd % c->n_head != 0)
            return FG_FAIL(FG_ERR_INVALID_ARG, "n_embd %" PRId64 " is not a multiple of n_head %" PRId64
                           " (give --head-dim)", c->n_embd, c->n_head);
        c->head_dim = c->n_embd / c->n_head;
    }
    if (c->n_head_kv > c->n_head || c->n_head % c->n_head_kv != 0)
        return FG_FAIL(FG_ERR_INVALID_ARG, "n_head %" PRId64 " is not a multiple of n_head_kv %" PRId64,
                       c->n_head, c->n_head_kv);
    if (!strcmp(c->arch, "glm4") && c->head_dim % 4 != 0)
        return FG_FAIL(FG_ERR_INVALID_ARG, "glm4: head_dim %" PRId64 " must be a multiple of 4 (half is rotated)",
                       c->head_dim);
    if (c->head_dim % 2 != 0)
        return FG_FAIL(FG_ERR_INVALID_ARG, "head_dim %" PRId64 " must be even (rope)", c->head_dim);
    return FG_OK;
}

static fg_status run_synth(const opts *o) {
    synth s;
    memset(&s, 0, sizeof s);
    fg_gguf_writer *w = NULL;
    fg_gguf *src = NULL;
    fg_status st = make_cfg(o, &s.cfg);
    if (st != FG_OK)
        return st;
    s.type = FG_TYPE_F16;
    if (o->type && (st = fg_type_from_name(o->type, &s.type)) != FG_OK)
        return st;
    s.seed = (uint64_t)o->seed;
    for (int k = 0; k < 8; k++)
        s.custom |= o->v[k] > 0;
    s.custom |= o->preset == NULL;
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    s.n_threads = o->threads > 0 ? (int)o->threads : (int)FG_MAX(1L, FG_MIN(ncpu, 64L));
    if ((st = fg_gguf_writer_create((uint32_t)o->version, &w)) != FG_OK)
        return st;
    set_metadata(&s, w);
    if (o->vocab_from) {
        if ((st = fg_gguf_open(o->vocab_from, &src)) != FG_OK)
            goto fail;
        fg_gguf_type et;
        uint64_t n;
        if ((st = fg_gguf_get_arr(src, "tokenizer.ggml.tokens", &et, &n)) != FG_OK)
            goto fail;
        if (o->v[6] > 0 && (uint64_t)o->v[6] != n) {
            st = FG_FAIL(FG_ERR_INVALID_ARG, "--n-vocab %" PRId64 " contradicts %s (%" PRIu64 " tokens)",
                         o->v[6], o->vocab_from, n);
            goto fail;
        }
        if (n == 0 || n > (1u << 22)) {
            st = FG_FAIL(FG_ERR_FORMAT, "%s: tokenizer.ggml.tokens has %" PRIu64 " tokens, expected 1..4194304",
                         o->vocab_from, n);
            goto fail;
        }
        s.cfg.n_vocab = (int64_t)n;
        for (int64_t i = 0; i < fg_gguf_n_kv(src); i++) {
            const char *k = fg_gguf_kv_key(src, i);
            if (!strncmp(k, "tokenizer.", 10) && (st = fg_gguf_writer_copy_kv(w, src, k)) != FG_OK)
                goto fail;
        }
        char key[128];
        snprintf(key, sizeof key, "%s.vocab_size", s.cfg.arch);
        fg_gguf_writer_set_u32(w, key, (uint32_t)n);
        fg_gguf_close(src);
        src = NULL;
    } else {
        int64_t nb = fg_synth_vocab_size();
        if (s.cfg.n_vocab == 0)
            s.cfg.n_vocab = (nb + 1023) / 1024 * 1024;
        if (s.cfg.n_vocab < nb) {
            st = FG_FAIL(FG_ERR_INVALID_ARG, "--n-vocab %" PRId64 " is smaller than the built-in vocabulary (%" PRId64
                         " tokens); give at least that or --vocab-from", s.cfg.n_vocab, nb);
            goto fail;
        }
        char key[128];
        snprintf(key, sizeof key, "%s.vocab_size", s.cfg.arch);
        fg_gguf_writer_set_u32(w, key, (uint32_t)s.cfg.n_vocab);
        fg_synth_vocab_write(w, s.cfg.n_vocab);
    }
    build_tensors(&s);
    s.pools = fg_xcalloc(MAX_POOLS, sizeof *s.pools);
    uint64_t params = 0;
    for (int64_t i = 0; i < s.n_t; i++) {
        const tspec *t = &s.t[i];
        if ((st = fg_gguf_writer_add_tensor(w, t->name, t->type, t->n_dims, t->ne)) != FG_OK)
            goto fail;
        uint64_t rb = 0;
        fg_type_row_bytes(t->type, t->ne[0], &rb);
        s.bytes_total += rb * (uint64_t)t->ne[1];
        params += (uint64_t)(t->ne[0] * t->ne[1]);
    }
    if (s.n_fallback)
        fprintf(stderr, "forge synth: note: %d tensors have rows that are not a multiple of the %s block size "
                        "(%" PRId64 "); stored as %s, as llama.cpp does\n",
                s.n_fallback, fg_type_name(s.type), fg_type_block_size(s.type), fg_type_name(s.fallback_type));
    const fg_type_traits *tr = fg_type_traits_get(s.type);
    bool is_float = s.type == FG_TYPE_F32 || s.type == FG_TYPE_F16 || s.type == FG_TYPE_BF16;
    if (!is_float && (!tr || !tr->from_float))
        fprintf(stderr, "forge synth: note: no reference quantizer for %s yet; writing random valid blocks\n",
                fg_type_name(s.type));
    double t0 = fg_time_s();
    fg_progress_begin(&s.prog, "synth", s.bytes_total);
    st = fg_gguf_writer_write(w, o->out, fill, &s);
    fg_progress_end(&s.prog);
    if (st != FG_OK)
        goto fail;
    printf("wrote %s: %s (%s), %" PRId64 " tensors, %" PRIu64 " parameters, %s weights, n_vocab %" PRId64
           ", seed %" PRIu64 ", %.1f s\n",
           o->out, s.cfg.name, s.cfg.arch, s.n_t, params, fg_type_name(s.type), s.cfg.n_vocab, s.seed,
           fg_time_s() - t0);
fail:
    fg_gguf_close(src);
    fg_gguf_writer_destroy(w);
    for (int i = 0; i < s.n_pools; i++)
        free(s.pools[i].blocks);
    free(s.pools);
    free(s.t);
    return st;
}

int fg_cmd_synth(int argc, char **argv) {
    opts o;
    memset(&o, 0, sizeof o);
    int r = parse_args(argc, argv, &o);
    if (r == 1)
        return 0;
    if (r == 2)
        return 2; // parse_args printed the one-line reason
    if (run_synth(&o) != FG_OK)
        return fg_cli_fail("synth");
    return 0;
}
