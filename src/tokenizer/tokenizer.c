// tokenizer.c - builds a tokenizer from a GGUF file's tokenizer.* metadata the way llama.cpp
// loads a vocabulary (defaults, special ids, add-BOS rules, EOG set, special-token cache),
// and runs fg_tokenize: special-token partitioning, then SPM/BPE/WPM per text fragment.
// Not here: the per-model algorithms (tok_spm.c, tok_bpe.c, tok_wpm.c), detokenization
// (tok_detok.c). Callers: the CLI, the engine, the server.
#include "tokenizer/tok_internal.h"

#include "base/status.h"
#include "base/util.h"

#include <stdlib.h>
#include <string.h>

// --- hashing

static inline uint64_t rd64(const char *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

static inline uint64_t hash_bytes(uint64_t h, const char *s, size_t n) {
    h ^= (uint64_t)n * 0x9e3779b97f4a7c15ull;
    for (; n >= 8; s += 8, n -= 8) {
        h = (h ^ rd64(s)) * 0xbf58476d1ce4e5b9ull;
        h ^= h >> 31;
    }
    uint64_t v = 0;
    memcpy(&v, s, n);
    h = (h ^ v) * 0x94d049bb133111ebull;
    return h ^ (h >> 29);
}

uint64_t tok_hash(const char *s, size_t n) {
    uint64_t h = hash_bytes(0x243f6a8885a308d3ull, s, n);
    return h ? h : 1;
}

uint64_t tok_hash_pair(const char *a, size_t na, const char *b, size_t nb) {
    uint64_t h = hash_bytes(hash_bytes(0x13198a2e03707344ull, a, na), b, nb);
    return h ? h : 1;
}

static fg_status htab_init(tok_htab *h, size_t n, const char *blob) {
    size_t cap = 16;
    while (cap < n * 2)
        cap <<= 1;
    h->slots = calloc(cap, sizeof *h->slots);
    if (!h->slots)
        return FG_FAIL(FG_ERR_NOMEM, "tokenizer: out of memory for a hash table of %zu entries", n);
    h->cap = cap;
    h->blob = blob;
    return FG_OK;
}

// Inserts unless the key is present; returns the existing value or -1 when inserted.
static int32_t htab_insert(tok_htab *h, uint64_t hash, uint32_t off, uint32_t len, uint32_t split,
                           int32_t value) {
    size_t mask = h->cap - 1, i = (size_t)hash & mask;
    for (;;) {
        tok_hslot *s = &h->slots[i];
        if (!s->hash) {
            *s = (tok_hslot){.hash = hash, .off = off, .len = len, .split = split, .value = value};
            return -1;
        }
        if (s->hash == hash && s->len == len && s->split == split &&
            memcmp(h->blob + s->off, h->blob + off, len) == 0)
            return s->value;
        i = (i + 1) & mask;
    }
}

int32_t tok_htab_find(const tok_htab *h, const char *s, size_t n) {
    if (!h->cap)
        return -1;
    uint64_t hash = tok_hash(s, n);
    size_t mask = h->cap - 1, i = (size_t)hash & mask;
    for (;;) {
        const tok_hslot *e = &h->slots[i];
        if (!e->hash)
            return -1;
        if (e->hash == hash && e->len == n && memcmp(h->blob + e->off, s, n) == 0)
            return e->value;
        i = (i + 1) & mask;
    }
}

int32_t tok_htab_find_pair(const tok_htab *h, const char *a, size_t na, const char *b, size_t nb) {
    if (!h->cap)
        return -1;
    uint64_t hash = tok_hash_pair(a, na, b, nb);
    size_t mask = h->cap - 1, i = (size_t)hash & mask;
    for (;;) {
        const tok_hslot *e = &h->slots[i];
        if (!e->hash)
            return -1;
        if (e->hash == hash && e->split == na && e->len == na + nb &&
            memcmp(h->blob + e->off, a, na) == 0 && memcmp(h->blob + e->off + na, b, nb) == 0)
            return e->value;
        i = (i + 1) & mask;
    }
}

void tok_out_push(tok_out *o, int32_t id) {
    if (o->oom)
        return;
    if (o->n == o->cap) {
        size_t cap = o->cap ? o->cap * 2 : 64;
        int32_t *p = realloc(o->ids, cap * sizeof *p);
        if (!p) {
            o->oom = true;
            return;
        }
        o->ids = p;
        o->cap = cap;
    }
    o->ids[o->n++] = id;
}

// --- loading

static const char *path_of(const fg_gguf *g) {
    const char *p = fg_gguf_path(g);
    return p ? p : "gguf";
}

static bool has_key(const fg_gguf *g, const char *key) { return fg_gguf_find_key(g, key) >= 0; }

// Optional special id: absent keeps the default; 0xFFFFFFFF / -1 means none; other values
// outside the vocabulary keep the default (llama.cpp warns and does the same).
static fg_status read_special(const fg_gguf *g, const char *key, int32_t n_vocab, int32_t *id) {
    if (*id >= n_vocab)
        *id = -1;
    if (!has_key(g, key))
        return FG_OK;
    int64_t v = 0;
    FG_TRY(fg_gguf_get_int(g, key, &v));
    if (v == 0xFFFFFFFFll || v == -1)
        *id = -1;
    else if (v >= 0 && v < n_vocab)
        *id = (int32_t)v;
    return FG_OK;
}

static fg_status read_bool(const fg_gguf *g, const char *key, bool *out) {
    if (!has_key(g, key))
        return FG_OK;
    return fg_gguf_get_bool(g, key, out);
}

static fg_status load_tokens(fg_tokenizer *t, const fg_gguf *g) {
    const char *key = "tokenizer.ggml.tokens";
    fg_gguf_type et;
    uint64_t n;
    FG_TRY(fg_gguf_get_arr(g, key, &et, &n));
    if (et != FG_GGUF_STRING)
        return FG_FAIL(FG_ERR_FORMAT, "%s: key '%s': expected array of string, found array of %s",
                       path_of(g), key, fg_gguf_type_name(et));
    if (n == 0 || n > (uint64_t)INT32_MAX / 2)
        return FG_FAIL(FG_ERR_FORMAT, "%s: key '%s': expected 1..%d tokens, found %llu", path_of(g),
                       key, INT32_MAX / 2, (unsigned long long)n);
    t->n_vocab = (int32_t)n;
    uint64_t total = 0;
    for (uint64_t i = 0; i < n; i++) {
        const char *s;
        size_t len;
        FG_TRY(fg_gguf_get_arr_str(g, key, i, &s, &len));
        total += (len ? len : 32) + 1;
    }
    if (total > UINT32_MAX)
        return FG_FAIL(FG_ERR_FORMAT, "%s: key '%s': token texts total %llu bytes (max 4 GiB)",
                       path_of(g), key, (unsigned long long)total);
    t->blob = malloc(total ? total : 1);
    t->t_off = malloc(n * sizeof *t->t_off);
    t->t_len = malloc(n * sizeof *t->t_len);
    t->score = calloc(n, sizeof *t->score);
    t->attr = malloc(n * sizeof *t->attr);
    t->is_eog = calloc(n, 1);
    if (!t->blob || !t->t_off || !t->t_len || !t->score || !t->attr || !t->is_eog)
        return FG_FAIL(FG_ERR_NOMEM, "%s: out of memory for %llu tokens", path_of(g), (unsigned long long)n);
    FG_TRY(htab_init(&t->vocab, n, t->blob));
    uint32_t off = 0;
    for (uint64_t i = 0; i < n; i++) {
        const char *s;
        size_t len;
        FG_TRY(fg_gguf_get_arr_str(g, key, i, &s, &len));
        if (len == 0) { // llama.cpp: "[EMPTY_<i>]"
            len = (size_t)snprintf(t->blob + off, 32, "[EMPTY_%llu]", (unsigned long long)i);
        } else {
            memcpy(t->blob + off, s, len);
        }
        t->blob[off + len] = 0;
        t->t_off[i] = off;
        t->t_len[i] = (uint32_t)len;
        t->attr[i] = TOK_ATTR_NORMAL;
        if ((int)len > t->max_token_len)
            t->max_token_len = (int)len;
        int32_t prev = htab_insert(&t->vocab, tok_hash(t->blob + off, len), off, (uint32_t)len, 0,
                                   (int32_t)i);
        if (prev >= 0)
            return FG_FAIL(FG_ERR_FORMAT, "%s: key '%s': duplicate token '%.*s' (ids %d and %llu)",
                           path_of(g), key, (int)FG_MIN(len, 64), t->blob + off, prev,
                           (unsigned long long)i);
        off += (uint32_t)len + 1;
    }

    key = "tokenizer.ggml.scores";
    if (has_key(g, key)) {
        uint64_t ns;
        FG_TRY(fg_gguf_get_arr(g, key, &et, &ns));
        if (ns < n)
            return FG_FAIL(FG_ERR_FORMAT, "%s: key '%s': expected %llu scores, found %llu", path_of(g),
                           key, (unsigned long long)n, (unsigned long long)ns);
        if (et == FG_GGUF_FLOAT32) {
            float *tmp = malloc(ns * sizeof *tmp);
            if (!tmp)
                return FG_FAIL(FG_ERR_NOMEM, "%s: out of memory for scores", path_of(g));
            fg_status st = fg_gguf_get_arr_f32(g, key, tmp, ns);
            if (st == FG_OK)
                memcpy(t->score, tmp, n * sizeof *tmp);
            free(tmp);
            FG_TRY(st);
        } else if (et == FG_GGUF_INT32) {
            int32_t *tmp = malloc(ns * sizeof *tmp);
            if (!tmp)
                return FG_FAIL(FG_ERR_NOMEM, "%s: out of memory for scores", path_of(g));
            fg_status st = fg_gguf_get_arr_i32(g, key, tmp, ns);
            for (uint64_t i = 0; st == FG_OK && i < n; i++)
                t->score[i] = (float)tmp[i];
            free(tmp);
            FG_TRY(st);
        } else {
            return FG_FAIL(FG_ERR_FORMAT, "%s: key '%s': expected array of float32, found array of %s",
                           path_of(g), key, fg_gguf_type_name(et));
        }
    }

    key = "tokenizer.ggml.token_type";
    if (has_key(g, key)) {
        uint64_t nt;
        FG_TRY(fg_gguf_get_arr(g, key, &et, &nt));
        if (nt < n)
            return FG_FAIL(FG_ERR_FORMAT, "%s: key '%s': expected %llu token types, found %llu",
                           path_of(g), key, (unsigned long long)n, (unsigned long long)nt);
        int32_t *tmp = malloc(nt * sizeof *tmp);
        if (!tmp)
            return FG_FAIL(FG_ERR_NOMEM, "%s: out of memory for token types", path_of(g));
        fg_status st = fg_gguf_get_arr_i32(g, key, tmp, nt);
        for (uint64_t i = 0; st == FG_OK && i < n; i++) {
            // llama.cpp's types are 0 (undefined) .. 6 (byte) and it aborts on any other: a
            // file with one is broken, not a vocabulary with an odd token
            if (tmp[i] < 0 || tmp[i] > FG_TOKEN_BYTE) {
                st = FG_FAIL(FG_ERR_FORMAT,
                             "%s: key '%s': token %llu has type %d, expected 0..6 (undefined, "
                             "normal, unknown, control, user-defined, unused, byte)",
                             path_of(g), key, (unsigned long long)i, tmp[i]);
                break;
            }
            switch (tmp[i]) {
            case FG_TOKEN_NORMAL: t->attr[i] = TOK_ATTR_NORMAL; break;
            case FG_TOKEN_UNKNOWN: t->attr[i] = TOK_ATTR_UNKNOWN; break;
            case FG_TOKEN_CONTROL: t->attr[i] = TOK_ATTR_CONTROL; break;
            case FG_TOKEN_USER_DEFINED: t->attr[i] = TOK_ATTR_USER_DEFINED; break;
            case FG_TOKEN_UNUSED: t->attr[i] = TOK_ATTR_UNUSED; break;
            case FG_TOKEN_BYTE: t->attr[i] = TOK_ATTR_BYTE; break;
            default: t->attr[i] = TOK_ATTR_UNDEFINED; break;
            }
        }
        free(tmp);
        FG_TRY(st);
    }
    return FG_OK;
}

static fg_status load_merges(fg_tokenizer *t, const fg_gguf *g) {
    const char *key = "tokenizer.ggml.merges";
    if (!has_key(g, key))
        return FG_FAIL(FG_ERR_FORMAT, "%s: key '%s' not found (required by the gpt2 tokenizer)",
                       path_of(g), key);
    fg_gguf_type et;
    uint64_t n;
    FG_TRY(fg_gguf_get_arr(g, key, &et, &n));
    if (et != FG_GGUF_STRING)
        return FG_FAIL(FG_ERR_FORMAT, "%s: key '%s': expected array of string, found array of %s",
                       path_of(g), key, fg_gguf_type_name(et));
    if (n > (uint64_t)INT32_MAX)
        return FG_FAIL(FG_ERR_FORMAT, "%s: key '%s': %llu merges (max %d)", path_of(g), key,
                       (unsigned long long)n, INT32_MAX);
    uint64_t total = 1;
    for (uint64_t i = 0; i < n; i++) {
        const char *s;
        size_t len;
        FG_TRY(fg_gguf_get_arr_str(g, key, i, &s, &len));
        total += len;
    }
    if (total > UINT32_MAX)
        return FG_FAIL(FG_ERR_FORMAT, "%s: key '%s': merges total %llu bytes (max 4 GiB)", path_of(g),
                       key, (unsigned long long)total);
    t->mblob = malloc(total);
    if (!t->mblob)
        return FG_FAIL(FG_ERR_NOMEM, "%s: out of memory for %llu merges", path_of(g), (unsigned long long)n);
    FG_TRY(htab_init(&t->merges, n, t->mblob));
    uint32_t off = 0;
    for (uint64_t i = 0; i < n; i++) {
        const char *s;
        size_t len;
        FG_TRY(fg_gguf_get_arr_str(g, key, i, &s, &len));
        // llama.cpp: split at the first space from index 1; no space -> ("", ""), never looked up
        const char *sp = len > 1 ? memchr(s + 1, ' ', len - 1) : NULL;
        if (!sp)
            continue;
        size_t nl = (size_t)(sp - s), nr = len - nl - 1;
        memcpy(t->mblob + off, s, nl);
        memcpy(t->mblob + off + nl, sp + 1, nr);
        htab_insert(&t->merges, tok_hash_pair(s, nl, sp + 1, nr), off, (uint32_t)(nl + nr),
                    (uint32_t)nl, (int32_t)i); // first occurrence wins, as std::map::emplace
        off += (uint32_t)(nl + nr);
    }
    return FG_OK;
}

static int cmp_special(const void *a, const void *b, void *ctx) {
    const fg_tokenizer *t = ctx;
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    if (t->t_len[x] != t->t_len[y])
        return t->t_len[x] > t->t_len[y] ? -1 : 1;
    return x < y ? -1 : x > y;
}

static bool text_is(const fg_tokenizer *t, int32_t id, const char *s) {
    size_t n = strlen(s);
    return t->t_len[id] == n && memcmp(tok_text(t, id), s, n) == 0;
}

// Texts llama.cpp recognises special tokens by when the metadata names none.
#define FULLBAR_ "\xef\xbd\x9c"   // U+FF5C
#define LOWBAR_ "\xe2\x96\x81"    // U+2581
static const char *const k_eot_texts[] = {
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>",
    "<EOT>", "_<EOT>", "[EOT]", "<" FULLBAR_ "end" LOWBAR_ "of" LOWBAR_ "sentence" FULLBAR_ ">",
    "<end_of_utterance>", NULL};
static const char *const k_eom_texts[] = {"<|eom_id|>", NULL};
static const char *const k_fim_pre_texts[] = {
    "<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<" FULLBAR_ "fim" LOWBAR_ "begin" FULLBAR_ ">",
    "<PRE>", LOWBAR_ "<PRE>", "<|code_prefix|>", "<|prefix|>", NULL};
static const char *const k_fim_suf_texts[] = {
    "<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<" FULLBAR_ "fim" LOWBAR_ "hole" FULLBAR_ ">",
    "<SUF>", LOWBAR_ "<SUF>", "<|code_suffix|>", "<|suffix|>", NULL};
static const char *const k_fim_mid_texts[] = {
    "<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<" FULLBAR_ "fim" LOWBAR_ "end" FULLBAR_ ">",
    "<MID>", LOWBAR_ "<MID>", "<|code_middle|>", "<|middle|>", NULL};
static const char *const k_fim_pad_texts[] = {"<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]", NULL};
static const char *const k_fim_rep_texts[] = {"<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>",
                                              "<reponame>", NULL};
static const char *const k_fim_sep_texts[] = {"<|file_sep|>", NULL};
static const char *const k_eog_texts[] = {
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<end_of_turn>", "<|endoftext|>",
    "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]", "<|end_of_text|>", "<end_of_utterance>", NULL};

static bool text_in(const fg_tokenizer *t, int32_t id, const char *const *list) {
    for (size_t k = 0; list[k]; k++)
        if (text_is(t, id, list[k]))
            return true;
    return false;
}

// Finds *id by text when unset (first match in id order); the token becomes a control
// token, as llama.cpp overrides such tokens.
static void detect(fg_tokenizer *t, int32_t *id, const char *const *list) {
    for (int32_t i = 0; i < t->n_vocab && *id < 0; i++) {
        if (text_in(t, i, list)) {
            *id = i;
            t->attr[i] |= TOK_ATTR_CONTROL;
        }
    }
}

static void finish_specials(fg_tokenizer *t) {
    detect(t, &t->eot, k_eot_texts);
    detect(t, &t->eom, k_eom_texts);
    detect(t, &t->fim_pre, k_fim_pre_texts);
    detect(t, &t->fim_suf, k_fim_suf_texts);
    detect(t, &t->fim_mid, k_fim_mid_texts);
    detect(t, &t->fim_pad, k_fim_pad_texts);
    detect(t, &t->fim_rep, k_fim_rep_texts);
    detect(t, &t->fim_sep, k_fim_sep_texts);
    // the end-of-generation set: FIM pad/repo/file-separator, tokens named like
    // end-of-turn markers, EOS, EOT, EOM
    const int32_t fixed[] = {t->fim_pad, t->fim_rep, t->fim_sep, t->eos, t->eot, t->eom};
    for (size_t k = 0; k < FG_ARRAY_LEN(fixed); k++)
        if (fixed[k] >= 0)
            t->is_eog[fixed[k]] = 1;
    int32_t end_id = -1;
    bool has_return = false, has_call = false;
    for (int32_t id = 0; id < t->n_vocab; id++) {
        if (text_in(t, id, k_eog_texts)) {
            t->is_eog[id] = 1;
            t->attr[id] |= TOK_ATTR_CONTROL;
            has_return |= text_is(t, id, "<|return|>");
            has_call |= text_is(t, id, "<|call|>");
            if (text_is(t, id, "<|end|>"))
                end_id = id;
        }
    }
    // gpt-oss (o200k_harmony): these render as text and are matched like user tokens, and
    // "<|end|>" is not an end of generation there
    static const char *const k_user[] = {"<|channel|>", "<|message|>", "<|start|>", "<|constrain|>", NULL};
    for (int32_t id = 0; id < t->n_vocab; id++)
        if (text_in(t, id, k_user))
            t->attr[id] = TOK_ATTR_USER_DEFINED;
    if (has_return && has_call && end_id >= 0) {
        t->is_eog[end_id] = 0;
        t->attr[end_id] = TOK_ATTR_USER_DEFINED;
    }
}

static fg_status build_special_cache(fg_tokenizer *t) {
    size_t n = 0;
    for (int32_t id = 0; id < t->n_vocab; id++)
        if (t->attr[id] & (TOK_ATTR_CONTROL | TOK_ATTR_USER_DEFINED | TOK_ATTR_UNKNOWN))
            n++;
    t->special = malloc((n ? n : 1) * sizeof *t->special);
    if (!t->special)
        return FG_FAIL(FG_ERR_NOMEM, "tokenizer: out of memory for %zu special tokens", n);
    n = 0;
    for (int32_t id = 0; id < t->n_vocab; id++)
        if (t->attr[id] & (TOK_ATTR_CONTROL | TOK_ATTR_USER_DEFINED | TOK_ATTR_UNKNOWN))
            t->special[n++] = id;
    t->n_special = n;
    qsort_r(t->special, n, sizeof *t->special, cmp_special, t);
    return FG_OK;
}

static bool contains(const char *s, size_t n, const char *what) {
    size_t k = strlen(what);
    for (size_t i = 0; i + k <= n; i++)
        if (memcmp(s + i, what, k) == 0)
            return true;
    return false;
}

static void set_text_attr(fg_tokenizer *t, const char *text, uint16_t bit, bool on) {
    int32_t id = tok_htab_find(&t->vocab, text, strlen(text));
    if (id >= 0)
        t->attr[id] = on ? (uint16_t)(t->attr[id] | bit) : (uint16_t)(t->attr[id] & ~bit);
}

// llama.cpp's per-model strip attributes: jina-v2 <mask> eats the space before it; in
// Phi-3 special tokens (but <unk>, <s>, <|endoftext|>) eat the white space after them.
static fg_status set_strip_attrs(fg_tokenizer *t, const fg_gguf *g, const char *pre, size_t pre_len) {
    const char *arch = "", *name = "";
    size_t arch_len = 0, name_len = 0;
    if (has_key(g, "general.architecture"))
        FG_TRY(fg_gguf_get_str(g, "general.architecture", &arch, &arch_len));
    if (has_key(g, "general.name"))
        FG_TRY(fg_gguf_get_str(g, "general.name", &name, &name_len));
    char lname[256];
    size_t ln = FG_MIN(name_len, sizeof lname);
    for (size_t i = 0; i < ln; i++)
        lname[i] = (char)(name[i] >= 'A' && name[i] <= 'Z' ? name[i] + 32 : name[i]);
    if (contains(pre, pre_len, "jina-v2-de") || contains(pre, pre_len, "jina-v2-es") ||
        contains(pre, pre_len, "jina-v2-code") || contains(arch, arch_len, "nomic-bert-moe") ||
        contains(arch, arch_len, "jina-bert-v3")) {
        set_text_attr(t, "<mask>", TOK_ATTR_LSTRIP, true);
    } else if (contains(lname, ln, "phi-3") || contains(lname, ln, "phi3")) {
        for (size_t k = 0; k < t->n_special; k++)
            t->attr[t->special[k]] |= TOK_ATTR_RSTRIP;
        set_text_attr(t, "</s>", TOK_ATTR_RSTRIP, true);
        set_text_attr(t, "<unk>", TOK_ATTR_RSTRIP, false);
        set_text_attr(t, "<s>", TOK_ATTR_RSTRIP, false);
        set_text_attr(t, "<|endoftext|>", TOK_ATTR_RSTRIP, false);
    }
    return FG_OK;
}

fg_status fg_tokenizer_create(const fg_gguf *g, const fg_tokenizer_opts *opts, fg_tokenizer **out) {
    if (!g || !out)
        return FG_FAIL(FG_ERR_INVALID_ARG, "fg_tokenizer_create: NULL argument");
    fg_status st = FG_OK;
    fg_tokenizer *t = calloc(1, sizeof *t);
    if (!t)
        return FG_FAIL(FG_ERR_NOMEM, "tokenizer: out of memory");
    for (int i = 0; i < 256; i++)
        t->byte_tok[i] = -1;

    const char *model;
    size_t model_len;
    if ((st = fg_gguf_get_str(g, "tokenizer.ggml.model", &model, &model_len)) != FG_OK)
        goto fail;
    if (model_len == 5 && memcmp(model, "llama", 5) == 0) {
        t->type = TOK_SPM;
        t->bos = 1, t->eos = 2, t->unk = 0, t->sep = -1, t->pad = -1, t->mask = -1;
        t->add_space_prefix = true, t->add_bos = true;
    } else if (model_len == 4 && memcmp(model, "gpt2", 4) == 0) {
        t->type = TOK_BPE;
        t->bos = 11, t->eos = 11, t->unk = -1, t->sep = -1, t->pad = -1, t->mask = -1;
        t->clean_spaces = true;
    } else if (model_len == 4 && memcmp(model, "bert", 4) == 0) {
        t->type = TOK_WPM;
        t->bos = 101, t->eos = -1, t->unk = 100, t->sep = 102, t->pad = 0, t->mask = 103;
        t->add_bos = true, t->add_sep = true, t->clean_spaces = true;
    } else {
        st = FG_FAIL(FG_ERR_UNSUPPORTED, "%s: tokenizer.ggml.model '%.*s' is not supported (llama, gpt2, bert)",
                     path_of(g), (int)FG_MIN(model_len, 64), model);
        goto fail;
    }
    memcpy(t->model_name, model, model_len);
    t->wpm_lowercase = true;
    t->eot = -1, t->eom = -1;
    t->fim_pre = t->fim_suf = t->fim_mid = t->fim_pad = t->fim_rep = t->fim_sep = -1;

    const char *pre = "default";
    size_t pre_len = 7;
    if (opts && opts->pre_override && t->type != TOK_BPE) {
        // a pre-tokenizer asked for and silently not used would be a lie about the output
        st = FG_FAIL(FG_ERR_INVALID_ARG,
                     "%s: pre-tokenizer '%.64s' asked for, but the '%.*s' tokenizer has no "
                     "pre-tokenizers (only gpt2 byte-level BPE vocabularies do)",
                     path_of(g), opts->pre_override, (int)FG_MIN(model_len, 16), model);
        goto fail;
    }
    if (opts && opts->pre_override) {
        pre = opts->pre_override;
        pre_len = strlen(pre);
    } else if (has_key(g, "tokenizer.ggml.pre")) {
        if ((st = fg_gguf_get_str(g, "tokenizer.ggml.pre", &pre, &pre_len)) != FG_OK)
            goto fail;
    }
    if (t->type == TOK_BPE) {
        bool add_bos_default = false;
        if ((st = tok_bpe_setup_pre(t, pre, pre_len, &add_bos_default)) != FG_OK) {
            fg_error_prefix("%s", path_of(g));
            goto fail;
        }
        t->add_bos = add_bos_default;
        t->pre_name = fg_xstrndup(pre, pre_len);
    } else {
        t->pre_name = fg_xstrdup("default"); // only BPE models have pre-tokenizers
    }
    if ((st = read_bool(g, "tokenizer.ggml.add_space_prefix", &t->add_space_prefix)) != FG_OK)
        goto fail;

    if ((st = load_tokens(t, g)) != FG_OK)
        goto fail;
    if (t->type == TOK_BPE && (st = load_merges(t, g)) != FG_OK)
        goto fail;

    static const struct {
        const char *key;
        size_t field;
    } k_ids[] = {
        {"tokenizer.ggml.bos_token_id", offsetof(fg_tokenizer, bos)},
        {"tokenizer.ggml.eos_token_id", offsetof(fg_tokenizer, eos)},
        {"tokenizer.ggml.eot_token_id", offsetof(fg_tokenizer, eot)},
        {"tokenizer.ggml.eom_token_id", offsetof(fg_tokenizer, eom)},
        {"tokenizer.ggml.unknown_token_id", offsetof(fg_tokenizer, unk)},
        {"tokenizer.ggml.seperator_token_id", offsetof(fg_tokenizer, sep)},
        {"tokenizer.ggml.padding_token_id", offsetof(fg_tokenizer, pad)},
        {"tokenizer.ggml.mask_token_id", offsetof(fg_tokenizer, mask)},
        {"tokenizer.ggml.fim_pre_token_id", offsetof(fg_tokenizer, fim_pre)},
        {"tokenizer.ggml.fim_suf_token_id", offsetof(fg_tokenizer, fim_suf)},
        {"tokenizer.ggml.fim_mid_token_id", offsetof(fg_tokenizer, fim_mid)},
        {"tokenizer.ggml.fim_pad_token_id", offsetof(fg_tokenizer, fim_pad)},
        {"tokenizer.ggml.fim_rep_token_id", offsetof(fg_tokenizer, fim_rep)},
        {"tokenizer.ggml.fim_sep_token_id", offsetof(fg_tokenizer, fim_sep)},
        {"tokenizer.ggml.prefix_token_id", offsetof(fg_tokenizer, fim_pre)}, // deprecated names
        {"tokenizer.ggml.suffix_token_id", offsetof(fg_tokenizer, fim_suf)},
        {"tokenizer.ggml.middle_token_id", offsetof(fg_tokenizer, fim_mid)},
    };
    for (size_t i = 0; i < FG_ARRAY_LEN(k_ids); i++) {
        int32_t *id = (int32_t *)((char *)t + k_ids[i].field);
        if ((st = read_special(g, k_ids[i].key, t->n_vocab, id)) != FG_OK)
            goto fail;
    }
    if ((st = read_bool(g, "tokenizer.ggml.add_bos_token", &t->add_bos)) != FG_OK ||
        (st = read_bool(g, "tokenizer.ggml.add_eos_token", &t->add_eos)) != FG_OK ||
        (st = read_bool(g, "tokenizer.ggml.add_sep_token", &t->add_sep)) != FG_OK)
        goto fail;
    // BertNormalizer options (WordPiece): strip_accents defaults to lowercase
    if ((st = read_bool(g, "tokenizer.ggml.normalizer.lowercase", &t->wpm_lowercase)) != FG_OK)
        goto fail;
    t->wpm_strip_accents = t->wpm_lowercase;
    if ((st = read_bool(g, "tokenizer.ggml.normalizer.strip_accents", &t->wpm_strip_accents)) != FG_OK)
        goto fail;
    if (t->add_bos && t->bos < 0)
        t->add_bos = false;
    if (t->add_eos && t->eos < 0)
        t->add_eos = false;
    if (t->add_sep && t->sep < 0)
        t->add_sep = false;

    if (t->type == TOK_SPM) {
        static const char hex[] = "0123456789ABCDEF";
        for (int b = 0; b < 256; b++) {
            char buf[7] = {'<', '0', 'x', hex[b >> 4], hex[b & 15], '>', 0};
            int32_t id = tok_htab_find(&t->vocab, buf, 6);
            if (id < 0) {
                char c = (char)b;
                id = tok_htab_find(&t->vocab, &c, 1);
            }
            t->byte_tok[b] = id;
        }
        t->spm_split_ok = true;
        for (int32_t id = 0; id < t->n_vocab && t->spm_split_ok; id++) {
            const char *s = tok_text(t, id);
            for (uint32_t k = 3; k + 3 <= t->t_len[id]; k++) {
                if (memcmp(s + k, "\xe2\x96\x81", 3) == 0 && memcmp(s + k - 3, "\xe2\x96\x81", 3) != 0) {
                    t->spm_split_ok = false;
                    break;
                }
            }
        }
    }
    finish_specials(t);
    if ((st = build_special_cache(t)) != FG_OK)
        goto fail;
    if ((st = set_strip_attrs(t, g, pre, pre_len)) != FG_OK)
        goto fail;
    *out = t;
    return FG_OK;
fail:
    fg_tokenizer_destroy(t);
    return st;
}

void fg_tokenizer_destroy(fg_tokenizer *t) {
    if (!t)
        return;
    for (int i = 0; i < t->n_re; i++)
        pcre2_code_free(t->re[i]);
    free(t->pre_name);
    free(t->blob);
    free(t->t_off);
    free(t->t_len);
    free(t->score);
    free(t->attr);
    free(t->vocab.slots);
    free(t->mblob);
    free(t->merges.slots);
    free(t->special);
    free(t->is_eog);
    free(t);
}

// --- accessors

int32_t fg_tokenizer_n_vocab(const fg_tokenizer *t) { return t->n_vocab; }
const char *fg_tokenizer_model_name(const fg_tokenizer *t) { return t->model_name; }
const char *fg_tokenizer_pre_name(const fg_tokenizer *t) { return t->pre_name; }
int32_t fg_tokenizer_bos(const fg_tokenizer *t) { return t->bos; }
int32_t fg_tokenizer_eos(const fg_tokenizer *t) { return t->eos; }
int32_t fg_tokenizer_eot(const fg_tokenizer *t) { return t->eot; }
int32_t fg_tokenizer_pad(const fg_tokenizer *t) { return t->pad; }
int32_t fg_tokenizer_unk(const fg_tokenizer *t) { return t->unk; }
int32_t fg_tokenizer_sep(const fg_tokenizer *t) { return t->sep; }
bool fg_tokenizer_add_bos(const fg_tokenizer *t) { return t->add_bos; }
bool fg_tokenizer_add_eos(const fg_tokenizer *t) { return t->add_eos; }

bool fg_tokenizer_is_eog(const fg_tokenizer *t, int32_t id) {
    return id >= 0 && id < t->n_vocab && t->is_eog[id];
}

fg_token_kind fg_tokenizer_token_kind(const fg_tokenizer *t, int32_t id) {
    if (id < 0 || id >= t->n_vocab)
        return FG_TOKEN_UNUSED;
    uint16_t a = t->attr[id];
    if (a & TOK_ATTR_CONTROL)
        return FG_TOKEN_CONTROL;
    if (a & TOK_ATTR_USER_DEFINED)
        return FG_TOKEN_USER_DEFINED;
    if (a & TOK_ATTR_UNKNOWN)
        return FG_TOKEN_UNKNOWN;
    if (a & TOK_ATTR_BYTE)
        return FG_TOKEN_BYTE;
    if (a & TOK_ATTR_NORMAL)
        return FG_TOKEN_NORMAL;
    return FG_TOKEN_UNUSED;
}

const char *fg_tokenizer_token_text(const fg_tokenizer *t, int32_t id) {
    return id >= 0 && id < t->n_vocab ? tok_text(t, id) : NULL;
}

int32_t fg_tokenizer_find(const fg_tokenizer *t, const char *text, size_t len) {
    return tok_htab_find(&t->vocab, text, len);
}

// --- tokenize

typedef struct frag {
    int32_t id; // -1: raw text [off, off + len)
    size_t off, len;
} frag;

typedef struct frag_list {
    frag *v;
    size_t n, cap;
} frag_list;

static bool frag_push(frag_list *l, frag f) {
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 16;
        frag *p = realloc(l->v, cap * sizeof *p);
        if (!p)
            return false;
        l->v = p;
        l->cap = cap;
    }
    l->v[l->n++] = f;
    return true;
}

static bool is_space(char c) { return c == ' ' || (c >= '\t' && c <= '\r'); }

// llama.cpp's tokenizer_st_partition: for each special token, longest first, split every
// raw fragment at each of its occurrences. Control and unknown tokens only when
// parse_special; user-defined tokens always.
static fg_status partition(const fg_tokenizer *t, const char *text, size_t len, bool parse_special,
                           frag_list *cur) {
    frag_list next = {0};
    // which byte pairs occur in the text: tokens whose first two bytes never occur are
    // skipped without a scan (vocabularies with thousands of added tokens)
    uint64_t *pairs = calloc(65536 / 64, sizeof *pairs);
    if (!pairs || !frag_push(cur, (frag){-1, 0, len}))
        goto nomem;
    for (size_t i = 0; i + 1 < len; i++) {
        unsigned pr = (unsigned)(uint8_t)text[i] << 8 | (uint8_t)text[i + 1];
        pairs[pr >> 6] |= 1ull << (pr & 63);
    }
    for (size_t k = 0; k < t->n_special; k++) {
        int32_t id = t->special[k];
        if (!parse_special && (t->attr[id] & (TOK_ATTR_CONTROL | TOK_ATTR_UNKNOWN)))
            continue;
        const char *s = tok_text(t, id);
        size_t sn = t->t_len[id];
        if (sn > len)
            continue;
        if (sn >= 2) {
            unsigned pr = (unsigned)(uint8_t)s[0] << 8 | (uint8_t)s[1];
            if (!(pairs[pr >> 6] >> (pr & 63) & 1))
                continue;
        }
        bool any = false;
        next.n = 0;
        for (size_t i = 0; i < cur->n; i++) {
            frag f = cur->v[i];
            if (f.id >= 0 || f.len < sn) {
                if (!frag_push(&next, f))
                    goto nomem;
                continue;
            }
            size_t pos = f.off, end = f.off + f.len;
            while (pos < end) {
                const char *m = memmem(text + pos, end - pos, s, sn);
                if (!m)
                    break;
                size_t at = (size_t)(m - text), left = at;
                any = true;
                if (t->attr[id] & TOK_ATTR_LSTRIP)
                    while (left > pos && is_space(text[left - 1]))
                        left--;
                if (left > pos && !frag_push(&next, (frag){-1, pos, left - pos}))
                    goto nomem;
                if (!frag_push(&next, (frag){id, 0, 0}))
                    goto nomem;
                pos = at + sn;
                if (t->attr[id] & TOK_ATTR_RSTRIP)
                    while (pos < end && is_space(text[pos]))
                        pos++;
            }
            if (pos < end && !frag_push(&next, (frag){-1, pos, end - pos}))
                goto nomem;
        }
        if (any) {
            frag_list tmp = *cur;
            *cur = next;
            next = tmp;
        }
    }
    free(next.v);
    free(pairs);
    return FG_OK;
nomem:
    free(next.v);
    free(pairs);
    return FG_FAIL(FG_ERR_NOMEM, "tokenize: out of memory");
}

fg_status fg_tokenize(const fg_tokenizer *t, const char *text, size_t len, bool add_special,
                      bool parse_special, int32_t **ids, size_t *n) {
    return fg_tokenize_ex(t, text, len,
                          (add_special ? FG_TOKENIZE_ADD_SPECIAL : 0u) |
                              (parse_special ? FG_TOKENIZE_PARSE_SPECIAL : 0u),
                          ids, n);
}

fg_status fg_tokenize_ex(const fg_tokenizer *t, const char *text, size_t len, unsigned flags,
                         int32_t **ids, size_t *n) {
    bool add_special = flags & FG_TOKENIZE_ADD_SPECIAL;
    bool parse_special = flags & FG_TOKENIZE_PARSE_SPECIAL;
    if (!t || !ids || !n || (!text && len))
        return FG_FAIL(FG_ERR_INVALID_ARG, "fg_tokenize: NULL argument");
    if (len > (size_t)1 << 30)
        return FG_FAIL(FG_ERR_INVALID_ARG, "tokenize: text of %zu bytes is too long (max 1 GiB)", len);
    fg_status st = FG_OK;
    tok_out out = {0};
    frag_list frags = {0};
    char *buf = NULL;
    if (len > 0 && (st = partition(t, text, len, parse_special, &frags)) != FG_OK)
        goto fail;

    if (add_special && t->add_bos)
        tok_out_push(&out, t->bos);
    if (t->type == TOK_SPM) {
        // the first fragment gets the space prefix, unless the text continues earlier text
        bool prev_special = !(flags & FG_TOKENIZE_CONTINUE);
        for (size_t i = 0; i < frags.n && st == FG_OK; i++) {
            frag f = frags.v[i];
            if (f.id >= 0) {
                tok_out_push(&out, f.id);
                prev_special = true;
                continue;
            }
            // escape: ' ' -> U+2581 (3 bytes), with the optional leading space
            size_t cap = 3 * (f.len + 1);
            char *nb = realloc(buf, cap);
            if (!nb) {
                st = FG_FAIL(FG_ERR_NOMEM, "tokenize: out of memory for %zu bytes", f.len);
                break;
            }
            buf = nb;
            size_t m = 0;
            if (t->add_space_prefix && prev_special) {
                memcpy(buf, "\xe2\x96\x81", 3);
                m = 3;
            }
            for (size_t j = 0; j < f.len; j++) {
                char c = text[f.off + j];
                if (c == ' ') {
                    memcpy(buf + m, "\xe2\x96\x81", 3);
                    m += 3;
                } else {
                    buf[m++] = c;
                }
            }
            st = tok_spm_encode(t, buf, m, &out);
            prev_special = false;
        }
    } else {
        for (size_t i = 0; i < frags.n && st == FG_OK; i++) {
            frag f = frags.v[i];
            if (f.id >= 0)
                tok_out_push(&out, f.id);
            else if (t->type == TOK_BPE)
                st = tok_bpe_encode(t, text + f.off, f.len, &out);
            else
                st = tok_wpm_encode(t, text + f.off, f.len, &out);
        }
    }
    if (st != FG_OK)
        goto fail;
    // WordPiece ends with [SEP] once: a GGUF from llama.cpp's converter may say add_eos_token
    // (eos = [SEP]) and add_sep_token both; llama.cpp itself ends every WPM text with [SEP]
    if (add_special && t->add_eos && !(t->type == TOK_WPM && t->add_sep))
        tok_out_push(&out, t->eos);
    if (add_special && t->type == TOK_WPM && t->add_sep)
        tok_out_push(&out, t->sep);
    if (out.oom) {
        st = FG_FAIL(FG_ERR_NOMEM, "tokenize: out of memory for %zu tokens", out.n);
        goto fail;
    }
    free(frags.v);
    free(buf);
    *ids = out.ids ? out.ids : malloc(sizeof(int32_t));
    *n = out.n;
    if (!*ids)
        return FG_FAIL(FG_ERR_NOMEM, "tokenize: out of memory");
    return FG_OK;
fail:
    free(out.ids);
    free(frags.v);
    free(buf);
    return st;
}
