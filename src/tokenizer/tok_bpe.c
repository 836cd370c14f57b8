// tok_bpe.c - byte-level BPE (vocabulary type "gpt2") as llama.cpp runs it: the
// pre-tokenizer named by tokenizer.ggml.pre splits the text with a list of regexes applied
// one after another (each to the pieces of the previous one; unmatched gaps stay pieces),
// each piece is byte-mapped (GPT-2's byte -> code point table) and merged by merge rank.
// Regexes run on PCRE2 (UTF + UCP, JIT when available), compiled once at create time;
// match data is per call, so concurrent calls are safe.
// Not here: special-token partitioning (tokenizer.c).
#include "tokenizer/tok_internal.h"

#include "base/status.h"
#include "base/util.h"
#include "tokenizer/unicode.h"

#include <stdlib.h>
#include <string.h>

// White_Space as llama.cpp's tables have it (PCRE2's UCP \s also takes U+180E).
#define WS "\\t\\n\\x0b\\f\\r \\x{85}\\x{a0}\\x{1680}\\x{2000}-\\x{200a}\\x{2028}\\x{2029}\\x{202f}\\x{205f}\\x{3000}"
#define S_ "[" WS "]"  // \s
#define NS "[^" WS "]" // \S

// 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)
#define RE_GPT2 "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^" WS "\\p{L}\\p{N}]+|" S_ "+(?!" NS ")"
// llama3 (contractions case-insensitive, written out as llama.cpp adapts them)
#define RE_CONTR "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
#define RE_LLAMA3_(num)                                                                        \
    RE_CONTR "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|" num "| ?[^" WS "\\p{L}\\p{N}]+[\\r\\n]*|" S_      \
             "*[\\r\\n]+|" S_ "+(?!" NS ")|" S_ "+"
// (Code points that NFC would change are written as \x{...} escapes so that no editor or
// tool normalizes them away.)
// llama.cpp runs regexes that hold literal non-ASCII characters on text where non-ASCII
// white space became U+000B, so such spaces never match those classes: (?!\s) says so here.
#define NOT_WS "(?!" S_ ")"
// Groups of (?!\s)[class] are repeated possessively (++): nothing follows them in their
// pattern, so the match is the same, and PCRE2 keeps no backtracking frame per character
// (a greedy group ran out of JIT stack on a word of ~10,000 letters).

static const char *const k_re_default[] = {
    "[\\p{P}\\$\\+<=>\\^~\\|]+",
    RE_GPT2,
    "\\p{N}+",
    "[0-9][0-9][0-9]",
    NULL,
};
static const char *const k_re_llama3[] = {RE_LLAMA3_("\\p{N}{1,3}"), NULL};
static const char *const k_re_qwen2[] = {RE_LLAMA3_("\\p{N}"), NULL};
static const char *const k_re_gpt2[] = {RE_GPT2, NULL};
static const char *const k_re_starcoder[] = {"\\p{N}", RE_GPT2, NULL};
static const char *const k_re_falcon[] = {
    "[\\p{P}\\$\\+<=>\\^~\\|`]+",
    RE_GPT2,
    "[0-9][0-9][0-9]",
    NULL,
};
static const char *const k_re_deepseek_llm[] = {
    "[\\r\\n]",
    S_ "?(?:" NOT_WS
       "[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-\\x{1f7d}ᾀ-ᾴᾶ-ᾼ\\x{1fbe}ῂ-ῄῆ-ῌῐ-\\x{1fd3}ῖ-\\x{1fdb}ῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤ\\x{2126}ℨ\\x{212a}-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃])++",
    S_ "?(?:" NOT_WS "[!-/:-~！-／：-～‘-‟　-。])++",
    S_ "+$",
    "(?:" NOT_WS "[一-龥ࠀ-一가-퟿])++",
    "\\p{N}+",
    NULL,
};
static const char *const k_re_deepseek_coder[] = {
    "[\\r\\n]",
    S_ "?\\p{L}+",
    S_ "?\\p{P}+",
    "(?:" NOT_WS "[一-龥ࠀ-一가-퟿])++",
    "\\p{N}",
    NULL,
};

// llama.cpp's adaptation of (?i:...) letter-case classes for std::regex: a letter that
// is not a-z, then letters that are not A-Z (marks are not letters there)
#define UP_ "(?:(?=\\p{L})[^a-z])"
#define LO_ "(?:(?=\\p{L})[^A-Z])"
static const char *const k_re_gpt4o[] = {
    "[^\\r\\n\\p{L}\\p{N}]?" UP_ "*" LO_ "+" RE_CONTR "?|[^\\r\\n\\p{L}\\p{N}]?" UP_ "+" LO_ "*" RE_CONTR
    "?|\\p{N}{1,3}| ?[^" WS "\\p{L}\\p{N}]+[\\r\\n/]*|" S_ "*[\\r\\n]+|" S_ "+(?!" NS ")|" S_ "+",
    NULL,
};
static const char *const k_re_tekken[] = {
    "[^\\r\\n\\p{L}\\p{N}]?" UP_ "*" LO_ "+|[^\\r\\n\\p{L}\\p{N}]?" UP_ "+" LO_
    "*|\\p{N}| ?[^" WS "\\p{L}\\p{N}]+[\\r\\n/]*|" S_ "*[\\r\\n]+|" S_ "+(?!" NS ")|" S_ "+",
    NULL,
};
static const char *const k_re_deepseek3[] = {
    "\\p{N}{1,3}",
    "[一-龥぀-ゟ゠-ヿ]+",
    "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\\r\\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+"
    "| ?[\\p{P}\\p{S}]+[\\r\\n]*|" S_ "*[\\r\\n]+|" S_ "+(?!" NS ")|" S_ "+",
    NULL,
};
static const char *const k_re_seed_coder[] = {
    RE_CONTR "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1}| ?[^" WS "\\p{L}\\p{N}\\r\\n]+|" S_ "*[\\r\\n]+|" S_
             "+(?!" NS ")|" S_ "+",
    NULL,
};
static const char *const k_re_bailing[] = {
    "'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^" WS
    "\\p{L}\\p{N}]+[\\r\\n]*|" S_ "*[\\r\\n]|" S_ "+(?!" NS ")|" S_ "+",
    NULL,
};
static const char *const k_re_bloom[] = {" ?[^(" WS "|.,!?…。，、।۔،)]+", NULL};
static const char *const k_re_viking[] = {" ?[^(" WS "|.,!?…。，、।۔،)]+", "\\p{N}", NULL};

typedef struct pre_def {
    const char *name;
    const char *const *res; // regexes, applied in order
    bool clean_spaces, ignore_merges, add_bos, no_bos;
} pre_def;

// tokenizer.ggml.pre values llama.cpp knows, with its regexes and flags for each.
static const pre_def k_pres[] = {
    {"default", k_re_default, true, false, false, false},
    {"llama3", k_re_llama3, true, true, true, false},
    {"llama-v3", k_re_llama3, true, true, true, false},
    {"llama-bpe", k_re_llama3, true, true, true, false},
    {"falcon3", k_re_llama3, true, true, true, false},
    {"falcon-h1", k_re_llama3, true, true, true, false},
    {"pixtral", k_re_llama3, true, true, true, false},
    {"midm-2.0", k_re_llama3, true, true, true, false},
    {"lfm2", k_re_llama3, true, true, true, false},
    {"dbrx", k_re_llama3, true, false, false, false},
    {"smaug-bpe", k_re_llama3, true, false, false, false},
    {"glm4", k_re_llama3, true, false, false, true},
    {"chatglm-bpe", k_re_llama3, true, false, false, true},
    {"deepseek-llm", k_re_deepseek_llm, false, false, false, false},
    {"deepseek-coder", k_re_deepseek_coder, false, false, false, false},
    {"deepseek-v3", k_re_deepseek3, false, false, false, false},
    {"hunyuan-dense", k_re_deepseek3, false, false, false, false},
    {"falcon", k_re_falcon, true, false, false, false},
    {"gpt-2", k_re_gpt2, true, false, false, false},
    {"gpt-neox", k_re_gpt2, true, false, false, false},
    {"mpt", k_re_gpt2, true, false, false, false},
    {"olmo", k_re_gpt2, true, false, false, false},
    {"jais", k_re_gpt2, true, false, false, false},
    {"phi-2", k_re_gpt2, true, false, false, false},
    {"jina-es", k_re_gpt2, true, false, false, false},
    {"jina-de", k_re_gpt2, true, false, false, false},
    {"jina-v2-es", k_re_gpt2, true, false, false, false},
    {"jina-v2-de", k_re_gpt2, true, false, false, false},
    {"gigachat", k_re_gpt2, true, false, false, false},
    {"a.x-4.0", k_re_gpt2, true, false, false, false},
    {"mellum", k_re_gpt2, true, false, false, false},
    {"modern-bert", k_re_gpt2, true, false, false, false},
    {"exaone4", k_re_gpt2, true, false, false, false},
    {"trillion", k_re_gpt2, false, false, false, false},
    {"granite-docling", k_re_gpt2, false, false, false, false},
    {"starcoder", k_re_starcoder, true, false, false, false},
    {"refact", k_re_starcoder, true, false, false, false},
    {"command-r", k_re_starcoder, false, false, false, false},
    {"smollm", k_re_starcoder, false, false, false, false},
    {"codeshell", k_re_starcoder, true, false, false, false},
    {"exaone", k_re_starcoder, true, false, false, false},
    {"minerva-7b", k_re_starcoder, true, false, false, false},
    {"qwen2", k_re_qwen2, false, false, false, false},
    {"deepseek-r1-qwen", k_re_qwen2, false, false, false, false},
    {"kormo", k_re_qwen2, false, false, false, false},
    {"hunyuan", k_re_qwen2, false, false, false, false},
    {"grok-2", k_re_qwen2, false, false, false, false},
    {"stablelm2", k_re_qwen2, true, false, false, false},
    {"megrez", k_re_qwen2, true, false, false, false},
    {"gpt-4o", k_re_gpt4o, false, false, false, false},
    {"llama4", k_re_gpt4o, false, false, false, false},
    {"tekken", k_re_tekken, false, true, true, false},
    {"seed-coder", k_re_seed_coder, false, false, false, false},
    {"bailingmoe", k_re_bailing, false, false, false, false},
    {"bailingmoe2", k_re_bailing, false, false, false, false},
    {"llada-moe", k_re_bailing, false, false, false, false},
    {"bloom", k_re_bloom, true, false, false, false},
    {"gpt3-finnish", k_re_bloom, true, false, false, false},
    {"poro-chat", k_re_bloom, false, false, false, false},
    {"viking", k_re_viking, false, false, false, false},
};

fg_status tok_bpe_setup_pre(fg_tokenizer *t, const char *pre, size_t pre_len, bool *add_bos_default) {
    const pre_def *d = NULL;
    for (size_t i = 0; i < FG_ARRAY_LEN(k_pres); i++) {
        if (strlen(k_pres[i].name) == pre_len && memcmp(k_pres[i].name, pre, pre_len) == 0) {
            d = &k_pres[i];
            break;
        }
    }
    if (!d)
        return FG_FAIL(FG_ERR_UNSUPPORTED, "tokenizer.ggml.pre '%.*s' is not a supported pre-tokenizer",
                       (int)FG_MIN(pre_len, 64), pre);
    t->clean_spaces = d->clean_spaces;
    t->ignore_merges = d->ignore_merges;
    *add_bos_default = d->add_bos;
    if (d->no_bos)
        t->bos = -1;
    const char *const *res = d->res;
    for (int i = 0; res[i]; i++) {
        int err = 0;
        PCRE2_SIZE eoff = 0;
        pcre2_code *re = pcre2_compile((PCRE2_SPTR)res[i], PCRE2_ZERO_TERMINATED,
                                       PCRE2_UTF | PCRE2_UCP | PCRE2_DOLLAR_ENDONLY, &err, &eoff, NULL);
        if (!re) {
            PCRE2_UCHAR msg[160];
            pcre2_get_error_message(err, msg, sizeof msg);
            return FG_FAIL(FG_ERR_FORMAT, "pre-tokenizer '%s': regex %d does not compile at %zu: %s",
                           d->name, i, (size_t)eoff, (const char *)msg);
        }
        (void)pcre2_jit_compile(re, PCRE2_JIT_COMPLETE); // falls back to the interpreter
        t->re[t->n_re++] = re;
    }
    return FG_OK;
}

typedef struct span_list {
    size_t *v; // (start, len) pairs
    size_t n, cap;
    bool oom;
} span_list;

static void span_push(span_list *s, size_t start, size_t len) {
    if (s->n + 2 > s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 64;
        size_t *p = realloc(s->v, cap * sizeof *p);
        if (!p) {
            s->oom = true;
            return;
        }
        s->v = p;
        s->cap = cap;
    }
    s->v[s->n++] = start;
    s->v[s->n++] = len;
}

fg_status tok_bpe_pre_split(const fg_tokenizer *t, const char *text, size_t len, size_t **out,
                            size_t *n_out) {
    span_list cur = {0}, next = {0};
    fg_status st = FG_OK;
    pcre2_match_data *md = pcre2_match_data_create(1, NULL);
    if (!md)
        return FG_FAIL(FG_ERR_NOMEM, "tokenize: out of memory");
    if (len)
        span_push(&cur, 0, len);
    for (int r = 0; r < t->n_re && !cur.oom; r++) {
        next.n = 0;
        for (size_t i = 0; i < cur.n; i += 2) {
            size_t s0 = cur.v[i], sl = cur.v[i + 1], pos = 0, prev = 0;
            const PCRE2_SPTR subj = (PCRE2_SPTR)text + s0;
            while (pos < sl) {
                int rc = pcre2_match(t->re[r], subj, sl, pos, PCRE2_NO_UTF_CHECK, md, NULL);
                if (rc == PCRE2_ERROR_NOMATCH)
                    break;
                if (rc < 0) {
                    PCRE2_UCHAR msg[160];
                    pcre2_get_error_message(rc, msg, sizeof msg);
                    st = FG_FAIL(FG_ERR_INVALID_ARG, "tokenize: pre-tokenizer regex %d failed: %s", r,
                                 (const char *)msg);
                    goto done;
                }
                PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
                size_t ms = ov[0], me = ov[1];
                if (me == ms) { // empty match: step over one character
                    pos = ms + fg_utf8_len((uint8_t)text[s0 + ms]);
                    continue;
                }
                if (ms > prev)
                    span_push(&next, s0 + prev, ms - prev);
                span_push(&next, s0 + ms, me - ms);
                prev = pos = me;
            }
            if (prev < sl)
                span_push(&next, s0 + prev, sl - prev);
        }
        span_list tmp = cur;
        cur = next;
        next = tmp;
        if (next.oom)
            cur.oom = true;
    }
    if (cur.oom) {
        st = FG_FAIL(FG_ERR_NOMEM, "tokenize: out of memory");
        goto done;
    }
    *out = cur.v;
    *n_out = cur.n / 2;
    cur.v = NULL;
done:
    pcre2_match_data_free(md);
    free(cur.v);
    free(next.v);
    return st;
}

// --- merges

typedef struct sym {
    int prev, next;
    uint32_t off, n; // in the word buffer
} sym;

typedef struct bigram {
    int32_t rank;
    int left, right;
    uint32_t size;
} bigram;

static bool bg_before(const bigram *a, const bigram *b) {
    return a->rank < b->rank || (a->rank == b->rank && a->left < b->left);
}

typedef struct scratch {
    char *word;
    size_t word_cap;
    sym *syms;
    size_t syms_cap;
    bigram *heap;
    size_t heap_n, heap_cap;
    bool oom;
} scratch;

static void heap_push(scratch *s, bigram b) {
    if (s->heap_n == s->heap_cap) {
        size_t cap = s->heap_cap ? s->heap_cap * 2 : 64;
        bigram *p = realloc(s->heap, cap * sizeof *p);
        if (!p) {
            s->oom = true;
            return;
        }
        s->heap = p;
        s->heap_cap = cap;
    }
    size_t i = s->heap_n++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!bg_before(&b, &s->heap[parent]))
            break;
        s->heap[i] = s->heap[parent];
        i = parent;
    }
    s->heap[i] = b;
}

static bigram heap_pop(scratch *s) {
    bigram top = s->heap[0], last = s->heap[--s->heap_n];
    size_t i = 0, n = s->heap_n;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n)
            break;
        if (c + 1 < n && bg_before(&s->heap[c + 1], &s->heap[c]))
            c++;
        if (!bg_before(&s->heap[c], &last))
            break;
        s->heap[i] = s->heap[c];
        i = c;
    }
    if (n)
        s->heap[i] = last;
    return top;
}

static void add_bigram(const fg_tokenizer *t, scratch *s, int left, int right) {
    if (left < 0 || right < 0)
        return;
    const sym *l = &s->syms[left], *r = &s->syms[right];
    int32_t rank = tok_htab_find_pair(&t->merges, s->word + l->off, l->n, s->word + r->off, r->n);
    if (rank < 0)
        return;
    heap_push(s, (bigram){.rank = rank, .left = left, .right = right, .size = l->n + r->n});
}

static bool grow(void **p, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap)
        return true;
    size_t c = *cap ? *cap : 64;
    while (c < need)
        c *= 2;
    void *q = realloc(*p, c * elem);
    if (!q)
        return false;
    *p = q;
    *cap = c;
    return true;
}

static void encode_word(const fg_tokenizer *t, scratch *s, const uint8_t *w, size_t wn, tok_out *out) {
    // byte-level mapping: every byte becomes one code point of 1-2 UTF-8 bytes
    if (!grow((void **)&s->word, &s->word_cap, 2 * wn, 1) ||
        !grow((void **)&s->syms, &s->syms_cap, wn, sizeof(sym))) {
        s->oom = true;
        return;
    }
    uint32_t m = 0;
    for (size_t i = 0; i < wn; i++)
        m += (uint32_t)fg_utf8_encode(fg_byte_to_cp(w[i]), s->word + m);
    if (t->ignore_merges) {
        int32_t id = tok_htab_find(&t->vocab, s->word, m);
        if (id >= 0) {
            tok_out_push(out, id);
            return;
        }
    }
    int n = 0;
    for (uint32_t off = 0; off < m;) {
        uint32_t cl = (uint32_t)fg_utf8_len((uint8_t)s->word[off]);
        if (cl > m - off)
            cl = m - off;
        s->syms[n] = (sym){.prev = n - 1, .next = off + cl == m ? -1 : n + 1, .off = off, .n = cl};
        off += cl;
        n++;
    }
    s->heap_n = 0;
    for (int i = 1; i < n; i++)
        add_bigram(t, s, i - 1, i);
    while (s->heap_n && !s->oom) {
        bigram b = heap_pop(s);
        sym *l = &s->syms[b.left], *r = &s->syms[b.right];
        if (l->n == 0 || r->n == 0 || l->n + r->n != b.size)
            continue; // outdated
        l->n += r->n;
        r->n = 0;
        l->next = r->next;
        if (r->next >= 0)
            s->syms[r->next].prev = b.left;
        add_bigram(t, s, l->prev, b.left);
        add_bigram(t, s, b.left, l->next);
    }
    for (int i = 0; i < n; i++) {
        const sym *y = &s->syms[i];
        if (y->n == 0)
            continue;
        int32_t id = tok_htab_find(&t->vocab, s->word + y->off, y->n);
        if (id >= 0) {
            tok_out_push(out, id);
            continue;
        }
        for (uint32_t j = 0; j < y->n; j++) { // single bytes of the mapped text, when present
            int32_t b = tok_htab_find(&t->vocab, s->word + y->off + j, 1);
            if (b >= 0)
                tok_out_push(out, b);
        }
    }
}

fg_status tok_bpe_encode(const fg_tokenizer *t, const char *text, size_t len, tok_out *out) {
    // llama.cpp decodes to code points (invalid bytes -> U+FFFD) and re-encodes; the
    // regexes see surrogates as U+FFFD (PCRE2 rejects them), the words keep them.
    char *clean = malloc(3 * len + 1), *match = NULL;
    if (!clean)
        return FG_FAIL(FG_ERR_NOMEM, "tokenize: out of memory for %zu bytes", len);
    size_t m = 0;
    bool surrogates = false;
    for (size_t off = 0; off < len;) {
        uint32_t cp = fg_utf8_decode((const uint8_t *)text, len, &off);
        if (cp >= 0xD800 && cp <= 0xDFFF) {
            surrogates = true;
            clean[m++] = (char)(0xe0 | (cp >> 12));
            clean[m++] = (char)(0x80 | ((cp >> 6) & 0x3f));
            clean[m++] = (char)(0x80 | (cp & 0x3f));
        } else {
            m += fg_utf8_encode(cp, clean + m);
        }
    }
    if (surrogates) {
        match = malloc(m + 1);
        if (!match) {
            free(clean);
            return FG_FAIL(FG_ERR_NOMEM, "tokenize: out of memory for %zu bytes", len);
        }
        memcpy(match, clean, m);
        for (size_t i = 0; i + 2 < m; i++) {
            uint8_t c = (uint8_t)match[i];
            if (c == 0xed && (uint8_t)match[i + 1] >= 0xa0) {
                memcpy(match + i, "\xef\xbf\xbd", 3);
                i += 2;
            } else if (c >= 0xc0) {
                i += fg_utf8_len(c) - 1;
            }
        }
    }
    size_t *sp = NULL, n_sp = 0;
    fg_status st = tok_bpe_pre_split(t, match ? match : clean, m, &sp, &n_sp);
    if (st == FG_OK) {
        scratch s = {0};
        for (size_t i = 0; i < n_sp && !s.oom; i++)
            encode_word(t, &s, (const uint8_t *)clean + sp[2 * i], sp[2 * i + 1], out);
        if (s.oom)
            st = FG_FAIL(FG_ERR_NOMEM, "tokenize: out of memory");
        free(s.word);
        free(s.syms);
        free(s.heap);
    }
    free(sp);
    free(match);
    free(clean);
    return st;
}

fg_status fg_tokenizer_pre_split(const fg_tokenizer *t, const char *text, size_t len,
                                 size_t **spans, size_t *n_words) {
    if (!t || (!text && len) || !spans || !n_words)
        return FG_FAIL(FG_ERR_INVALID_ARG, "fg_tokenizer_pre_split: NULL argument");
    if (t->type != TOK_BPE)
        return FG_FAIL(FG_ERR_INVALID_ARG, "pre-split: tokenizer '%s' has no pre-tokenizer (gpt2 only)",
                       t->model_name);
    for (size_t off = 0; off < len;) {
        size_t o0 = off;
        uint32_t cp = fg_utf8_decode((const uint8_t *)text, len, &off);
        bool bad = (cp == 0xFFFD && !(off - o0 == 3 && memcmp(text + o0, "\xef\xbf\xbd", 3) == 0)) ||
                   (cp >= 0xD800 && cp <= 0xDFFF) || (off - o0 == 2 && cp < 0x80) ||
                   (off - o0 == 3 && cp < 0x800) || (off - o0 == 4 && (cp < 0x10000 || cp > 0x10FFFF));
        if (bad)
            return FG_FAIL(FG_ERR_INVALID_ARG, "pre-split: invalid UTF-8 at byte %zu", o0);
    }
    return tok_bpe_pre_split(t, text, len, spans, n_words);
}
