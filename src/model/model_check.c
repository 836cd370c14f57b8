// model_check.c - a model file that disagrees with itself is refused at load, with one line
// naming the tensor or key: every tensor in the file is one its architecture uses (or on the
// short list of known-optional tensors below), no block tensor lies beyond block_count, the
// hyper-parameters the loader read are in their valid ranges, and no weight holds NaN or
// infinity (float types element by element, quantized types through their block scales, the
// tensors shared out over a few threads). Works on the GGUF file, the architecture's traits and
// the hyper-parameters only. Not here: each bound tensor's shape and type (model_load.c).
// Called by model_load.c once the tensors are bound.
#include "model/model_internal.h"

#include "base/status.h"
#include "base/util.h"
#include "quant/blocks.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

// ---- which tensors an architecture's file may hold
//
// Known-optional tensors (the loader binds them when present, and the forward pass uses them):
//   output.weight                      absent: the output projection is token_embd (tied)
//   rope_freqs.weight                  rope frequency factors (llama 3 style scaling)
//   blk.N.attn_{q,k,v}.bias            attention biases (qwen2: all three or none)
//   blk.N.attn_output.bias
// Encoders (bert, nomic-bert; issue 14) instead of the decoders' attn_norm / ffn_norm /
// output_norm / output / rope_freqs: position_embd (bert), token_types, token_embd_norm.{weight,
// bias}, per layer attn_output_norm and layer_output_norm (weight and bias); known-optional:
//   blk.N.attn_qkv.{weight,bias}       fused q|k|v (in place of attn_q/k/v)
//   blk.N.ffn_up.bias, ffn_down.bias   bert's FFN biases
// Anything else the architecture does not use is refused: a file labelled llama that carries
// qwen3's q/k norms, or a layer tensor no layer reads, would otherwise load and produce wrong text.

enum {
    NEED_ALWAYS,
    NEED_DECODER,   // llama, qwen2, qwen3, glm4
    NEED_GATE,      // a separate ffn_gate: decoders without glm4's fused gate|up, nomic-bert
    NEED_QK_NORM,
    NEED_POST_NORMS,
    NEED_OPTIONAL,
    NEED_ENCODER,   // bert, nomic-bert (issue 14)
    NEED_ABS_POS,   // bert's learned positions
    NEED_FFN_BIAS,  // bert's GELU FFN
    NEED_ROPE_DEC,  // decoders with rope (rope_freqs)
};

static const struct {
    const char *suffix;
    int need;
} k_layer_tensors[] = {
    {"attn_norm.weight", NEED_DECODER},         {"attn_q.weight", NEED_ALWAYS},
    {"attn_k.weight", NEED_ALWAYS},             {"attn_v.weight", NEED_ALWAYS},
    {"attn_output.weight", NEED_ALWAYS},        {"ffn_norm.weight", NEED_DECODER},
    {"ffn_up.weight", NEED_ALWAYS},             {"ffn_down.weight", NEED_ALWAYS},
    {"ffn_gate.weight", NEED_GATE},             {"attn_q_norm.weight", NEED_QK_NORM},
    {"attn_k_norm.weight", NEED_QK_NORM},       {"post_attention_norm.weight", NEED_POST_NORMS},
    {"post_ffw_norm.weight", NEED_POST_NORMS},  {"attn_q.bias", NEED_OPTIONAL},
    {"attn_k.bias", NEED_OPTIONAL},             {"attn_v.bias", NEED_OPTIONAL},
    {"attn_output.bias", NEED_OPTIONAL},
    {"attn_qkv.weight", NEED_ENCODER},          {"attn_qkv.bias", NEED_ENCODER},
    {"attn_output_norm.weight", NEED_ENCODER},  {"attn_output_norm.bias", NEED_ENCODER},
    {"layer_output_norm.weight", NEED_ENCODER}, {"layer_output_norm.bias", NEED_ENCODER},
    {"ffn_up.bias", NEED_FFN_BIAS},             {"ffn_down.bias", NEED_FFN_BIAS},
};

static const struct {
    const char *name;
    int need;
} k_global_tensors[] = {
    {"token_embd.weight", NEED_ALWAYS},       {"output_norm.weight", NEED_DECODER},
    {"output.weight", NEED_DECODER},          {"rope_freqs.weight", NEED_ROPE_DEC},
    {"position_embd.weight", NEED_ABS_POS},   {"token_types.weight", NEED_ENCODER},
    {"token_embd_norm.weight", NEED_ENCODER}, {"token_embd_norm.bias", NEED_ENCODER},
};

static bool arch_uses(const fg_arch_traits *at, int need) {
    switch (need) {
    case NEED_DECODER: return !at->encoder;
    case NEED_GATE: return !at->fused_gate_up && !at->ffn_gelu;
    case NEED_QK_NORM: return at->qk_norm;
    case NEED_POST_NORMS: return at->post_norms;
    case NEED_ENCODER: return at->encoder;
    case NEED_ABS_POS: return at->abs_pos;
    case NEED_FFN_BIAS: return at->ffn_gelu;
    case NEED_ROPE_DEC: return !at->encoder;
    default: return true;
    }
}

// The architecture that uses a tensor this one does not (for the message).
static const char *user_of(const fg_arch_traits *at, int need) {
    for (int a = 0; a < FG_ARCH_COUNT; a++)
        if (&fg_arch_table[a] != at && arch_uses(&fg_arch_table[a], need))
            return fg_arch_table[a].name;
    return "another architecture";
}

// "blk.<N>.<suffix>": N (decimal, no sign or leading zero) and the suffix; false otherwise.
static bool parse_block(const char *name, long *n, const char **suffix) {
    if (strncmp(name, "blk.", 4))
        return false;
    const char *p = name + 4;
    if (*p < '0' || *p > '9' || (*p == '0' && p[1] != '.'))
        return false;
    long v = 0;
    while (*p >= '0' && *p <= '9' && v < 1000000)
        v = v * 10 + (*p++ - '0');
    if (*p != '.' || !p[1])
        return false;
    *n = v;
    *suffix = p + 1;
    return true;
}

static fg_status check_names(const fg_gguf *g, const char *path, const fg_arch_traits *at,
                             const fg_hparams *hp) {
    int64_t nt = fg_gguf_n_tensors(g);
    for (int64_t i = 0; i < nt; i++) {
        const char *name = fg_gguf_tensor_at(g, i)->name;
        int global = -1;
        for (size_t k = 0; k < FG_ARRAY_LEN(k_global_tensors) && global < 0; k++)
            if (!strcmp(name, k_global_tensors[k].name))
                global = (int)k;
        if (global >= 0 && arch_uses(at, k_global_tensors[global].need))
            continue;
        if (global >= 0)
            return FG_FAIL(FG_ERR_FORMAT,
                           "%s: tensor '%s' is not used by architecture '%s' (it is %s's): the "
                           "file's general.architecture and its tensors disagree",
                           path, name, at->name, user_of(at, k_global_tensors[global].need));
        long blk = -1;
        const char *suffix = NULL;
        int row = -1;
        if (parse_block(name, &blk, &suffix))
            for (size_t k = 0; k < FG_ARRAY_LEN(k_layer_tensors) && row < 0; k++)
                if (!strcmp(suffix, k_layer_tensors[k].suffix))
                    row = (int)k;
        if (row >= 0 && blk >= hp->n_layer)
            return FG_FAIL(FG_ERR_FORMAT,
                           "%s: tensor '%s' belongs to block %ld, but %s.block_count is %d",
                           path, name, blk, at->name, hp->n_layer);
        if (row >= 0 && arch_uses(at, k_layer_tensors[row].need))
            continue;
        if (row >= 0) // a tensor of another architecture
            return FG_FAIL(FG_ERR_FORMAT,
                           "%s: tensor '%s' is not used by architecture '%s' (it is %s's): the "
                           "file's general.architecture and its tensors disagree",
                           path, name, at->name, user_of(at, k_layer_tensors[row].need));
        return FG_FAIL(FG_ERR_FORMAT,
                       "%s: tensor '%s' is not used by architecture '%s' (nor on its list of "
                       "optional tensors): a model with tensors no layer reads is refused",
                       path, name, at->name);
    }
    return FG_OK;
}

// ---- hyper-parameters the loader read with a wider range than a working model allows
static fg_status check_hparams(const char *path, const fg_arch_traits *at, const fg_hparams *hp) {
    if (hp->n_rot < 2 && !at->abs_pos) // no dimension rotated: the attention sees no positions
        return FG_FAIL(FG_ERR_FORMAT,
                       "%s: key '%s.rope.dimension_count' is %d: expected an even number in "
                       "[2, %d] (the head size)",
                       path, at->name, hp->n_rot, hp->head_dim);
    if (!(hp->rope_freq_scale > 0) || !(hp->rope_freq_scale < 1e30f))
        return FG_FAIL(FG_ERR_FORMAT, "%s: key '%s.rope.scaling.factor' gives a frequency scale of "
                                      "%g: expected a positive finite number",
                       path, at->name, (double)hp->rope_freq_scale);
    return FG_OK;
}

// ---- NaN / infinity in the weights
#define CHUNK_BYTES ((uint64_t)16 << 20)
#define MAX_SCAN_THREADS 8
#define SMALL_FILE_BYTES ((uint64_t)64 << 20)

typedef struct scale_geom {
    uint32_t type;
    uint32_t block_bytes, block_elems;
    uint8_t n_scales;
    uint8_t off[2];         // byte offsets of the f16 scales in a block
    const char *names[2];   // their names in messages
} scale_geom;

static const scale_geom k_geom[] = {
    {FG_TYPE_Q4_0, sizeof(fg_block_q4_0), FG_QK4_0, 1, {offsetof(fg_block_q4_0, d)}, {"d"}},
    {FG_TYPE_Q4_1, sizeof(fg_block_q4_1), FG_QK4_1, 2,
     {offsetof(fg_block_q4_1, d), offsetof(fg_block_q4_1, m)}, {"d", "m"}},
    {FG_TYPE_Q5_0, sizeof(fg_block_q5_0), FG_QK5_0, 1, {offsetof(fg_block_q5_0, d)}, {"d"}},
    {FG_TYPE_Q5_1, sizeof(fg_block_q5_1), FG_QK5_1, 2,
     {offsetof(fg_block_q5_1, d), offsetof(fg_block_q5_1, m)}, {"d", "m"}},
    {FG_TYPE_Q8_0, sizeof(fg_block_q8_0), FG_QK8_0, 1, {offsetof(fg_block_q8_0, d)}, {"d"}},
    {FG_TYPE_Q8_1, sizeof(fg_block_q8_1), FG_QK8_1, 2,
     {offsetof(fg_block_q8_1, d), offsetof(fg_block_q8_1, s)}, {"d", "s"}},
    {FG_TYPE_Q2_K, sizeof(fg_block_q2_k), FG_QK_K, 2,
     {offsetof(fg_block_q2_k, d), offsetof(fg_block_q2_k, dmin)}, {"d", "dmin"}},
    {FG_TYPE_Q3_K, sizeof(fg_block_q3_k), FG_QK_K, 1, {offsetof(fg_block_q3_k, d)}, {"d"}},
    {FG_TYPE_Q4_K, sizeof(fg_block_q4_k), FG_QK_K, 2,
     {offsetof(fg_block_q4_k, d), offsetof(fg_block_q4_k, dmin)}, {"d", "dmin"}},
    {FG_TYPE_Q5_K, sizeof(fg_block_q5_k), FG_QK_K, 2,
     {offsetof(fg_block_q5_k, d), offsetof(fg_block_q5_k, dmin)}, {"d", "dmin"}},
    {FG_TYPE_Q6_K, sizeof(fg_block_q6_k), FG_QK_K, 1, {offsetof(fg_block_q6_k, d)}, {"d"}},
};

typedef struct scan_item {
    const fg_gguf_tensor *t;
    uint64_t first, count; // units: elements (float types) or blocks (quantized)
} scan_item;

typedef struct scan_job {
    const char *path;
    scan_item *items;
    int64_t n_items;
    atomic_llong next;
    atomic_llong bad_item;  // lowest failing item, or n_items
    pthread_mutex_t mu;
    char msg[400];          // the failing item's message (the lowest one wins)
    int64_t msg_item;
} scan_job;

static uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }

static uint32_t rd32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

// Whether any float in p[0..n) (lanes of `lane` bytes, 2 or 4) has its exponent bits (one lane
// of `masks`, `mask1` alone) all set: inf or NaN. Eight bytes at a time: a lane of
// x = (w & masks) ^ masks is zero exactly where the exponent is all ones (the has-zero-lane
// trick with `ones` = 1 per lane and `highs` = each lane's top bit); the tail lane by lane.
static bool any_nonfinite(const uint8_t *p, uint64_t n, uint64_t masks, uint64_t ones,
                          uint64_t highs, uint32_t mask1, int lane) {
    uint64_t acc = 0, i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        uint64_t x = (w & masks) ^ masks;
        acc |= (x - ones) & ~x & highs;
    }
    if (acc)
        return true;
    for (; i + (uint64_t)lane <= n; i += (uint64_t)lane) {
        uint32_t v = lane == 4 ? rd32(p + i) : rd16(p + i);
        if ((v & mask1) == mask1)
            return true;
    }
    return false;
}

static const char *nonfinite_name(double v) { return v != v ? "nan" : v > 0 ? "inf" : "-inf"; }

// Scans one item; on a bad value writes the message and returns false.
static bool scan_item_ok(const scan_item *it, char *msg, size_t cap) {
    const fg_gguf_tensor *t = it->t;
    const uint8_t *p = t->data;
    uint64_t end = it->first + it->count;
    switch (t->type) {
    case FG_TYPE_F32: {
        if (!any_nonfinite(p + 4 * it->first, 4 * it->count, 0x7F8000007F800000ull,
                           0x0000000100000001ull, 0x8000000080000000ull, 0x7F800000u, 4))
            return true;
        for (uint64_t i = it->first; i < end; i++)
            if ((rd32(p + 4 * i) & 0x7F800000u) == 0x7F800000u) {
                snprintf(msg, cap, "tensor '%s': element %llu is %s", t->name,
                         (unsigned long long)i, nonfinite_name(fg_bits_to_f32(rd32(p + 4 * i))));
                return false;
            }
        return true;
    }
    case FG_TYPE_F16:
    case FG_TYPE_BF16: {
        uint16_t mask = t->type == FG_TYPE_F16 ? 0x7C00 : 0x7F80;
        if (!any_nonfinite(p + 2 * it->first, 2 * it->count, mask * 0x0001000100010001ull,
                           0x0001000100010001ull, 0x8000800080008000ull, mask, 2))
            return true;
        for (uint64_t i = it->first; i < end; i++) {
            uint16_t h = rd16(p + 2 * i);
            if ((h & mask) == mask) {
                bool nan = (h & (uint16_t)~(mask | 0x8000)) != 0;
                snprintf(msg, cap, "tensor '%s': element %llu is %s", t->name,
                         (unsigned long long)i, nan ? "nan" : (h & 0x8000) ? "-inf" : "inf");
                return false;
            }
        }
        return true;
    }
    case FG_TYPE_MXFP4: // E8M0 exponent 0xFF is NaN
        for (uint64_t b = it->first; b < end; b++)
            if (p[b * sizeof(fg_block_mxfp4) + offsetof(fg_block_mxfp4, e)] == 0xFF) {
                snprintf(msg, cap, "tensor '%s': block %llu (elements %llu..%llu) has scale e = "
                                   "nan", t->name, (unsigned long long)b,
                         (unsigned long long)b * FG_QK_MXFP4,
                         (unsigned long long)(b + 1) * FG_QK_MXFP4 - 1);
                return false;
            }
        return true;
    case FG_TYPE_Q8_K:
        for (uint64_t b = it->first; b < end; b++)
            if ((rd32(p + b * sizeof(fg_block_q8_k)) & 0x7F800000u) == 0x7F800000u) {
                snprintf(msg, cap, "tensor '%s': block %llu has scale d = %s", t->name,
                         (unsigned long long)b,
                         nonfinite_name(fg_bits_to_f32(rd32(p + b * sizeof(fg_block_q8_k)))));
                return false;
            }
        return true;
    default:
        break;
    }
    for (size_t k = 0; k < FG_ARRAY_LEN(k_geom); k++) {
        const scale_geom *gm = &k_geom[k];
        if (gm->type != t->type)
            continue;
        for (uint64_t b = it->first; b < end; b++)
            for (int s = 0; s < gm->n_scales; s++) {
                uint16_t h = rd16(p + b * gm->block_bytes + gm->off[s]);
                if ((h & 0x7C00) != 0x7C00)
                    continue;
                snprintf(msg, cap,
                         "tensor '%s': block %llu (elements %llu..%llu) has scale %s = %s",
                         t->name, (unsigned long long)b, (unsigned long long)b * gm->block_elems,
                         (unsigned long long)(b + 1) * gm->block_elems - 1, gm->names[s],
                         nonfinite_name(fg_f16_to_f32(h)));
                return false;
            }
        return true;
    }
    return true; // integer types: nothing can be NaN
}

static void *scan_main(void *arg) {
    scan_job *j = arg;
    char msg[400];
    for (;;) {
        int64_t i = atomic_fetch_add(&j->next, 1);
        if (i >= j->n_items || i > atomic_load(&j->bad_item))
            break; // items are taken in order: everything before a failure still gets scanned
        if (scan_item_ok(&j->items[i], msg, sizeof msg))
            continue;
        pthread_mutex_lock(&j->mu);
        if (i < j->msg_item) {
            j->msg_item = i;
            snprintf(j->msg, sizeof j->msg, "%s", msg);
            atomic_store(&j->bad_item, i);
        }
        pthread_mutex_unlock(&j->mu);
    }
    return NULL;
}

// Bytes of one scan unit (element or block) of a type, 0 for types without NaN.
static uint64_t unit_bytes(uint32_t type) {
    switch (type) {
    case FG_TYPE_F32: return 4;
    case FG_TYPE_F16:
    case FG_TYPE_BF16: return 2;
    case FG_TYPE_MXFP4: return sizeof(fg_block_mxfp4);
    case FG_TYPE_Q8_K: return sizeof(fg_block_q8_k);
    default: break;
    }
    for (size_t k = 0; k < FG_ARRAY_LEN(k_geom); k++)
        if (k_geom[k].type == type)
            return k_geom[k].block_bytes;
    return 0;
}

static fg_status check_values(const fg_gguf *g, const char *path, int32_t n_threads) {
    int64_t nt = fg_gguf_n_tensors(g);
    int64_t cap = 0;
    for (int64_t i = 0; i < nt; i++)
        cap += (int64_t)(fg_gguf_tensor_at(g, i)->n_bytes / CHUNK_BYTES) + 1;
    scan_job j;
    memset(&j, 0, sizeof j);
    j.path = path;
    j.items = calloc((size_t)FG_MAX(cap, 1), sizeof *j.items);
    if (!j.items)
        return FG_FAIL(FG_ERR_NOMEM, "%s: out of memory for the weight scan", path);
    for (int64_t i = 0; i < nt; i++) {
        const fg_gguf_tensor *t = fg_gguf_tensor_at(g, i);
        uint64_t ub = unit_bytes(t->type);
        if (ub == 0)
            continue;
        uint64_t units = t->n_bytes / ub, per = FG_MAX(CHUNK_BYTES / ub, 1);
        for (uint64_t f = 0; f < units; f += per)
            j.items[j.n_items++] = (scan_item){t, f, FG_MIN(per, units - f)};
    }
    atomic_init(&j.next, 0);
    atomic_init(&j.bad_item, j.n_items);
    j.msg_item = j.n_items;
    pthread_mutex_init(&j.mu, NULL);
    uint64_t total = 0;
    for (int64_t i = 0; i < nt; i++)
        total += fg_gguf_tensor_at(g, i)->n_bytes;
    if (n_threads <= 0) {
        long nc = sysconf(_SC_NPROCESSORS_ONLN);
        n_threads = nc > 0 ? (int32_t)nc : 1;
    }
    if (total < SMALL_FILE_BYTES) // a few milliseconds: not worth starting threads
        n_threads = 1;
    n_threads = (int32_t)FG_MIN(FG_MIN(n_threads, MAX_SCAN_THREADS), FG_MAX(j.n_items, 1));
    pthread_t th[MAX_SCAN_THREADS];
    int32_t started = 0;
    for (int32_t k = 1; k < n_threads; k++)
        if (pthread_create(&th[started], NULL, scan_main, &j) == 0)
            started++;
    scan_main(&j);
    for (int32_t k = 0; k < started; k++)
        pthread_join(th[k], NULL);
    pthread_mutex_destroy(&j.mu);
    free(j.items);
    if (j.msg_item < j.n_items)
        return FG_FAIL(FG_ERR_FORMAT, "%s: %s: a model with non-finite weights is refused", path,
                       j.msg);
    return FG_OK;
}

fg_status fg_model_check(const fg_gguf *g, const char *path, const fg_arch_traits *at,
                         const fg_hparams *hp, int32_t n_threads) {
    FG_TRY(check_names(g, path, at, hp));
    FG_TRY(check_hparams(path, at, hp));
    return check_values(g, path, n_threads);
}
