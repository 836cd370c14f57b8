// tok_internal.h - the tokenizer object and the pieces its files share: the vocabulary
// (texts, scores, llama.cpp-style attribute bits), the string -> id and merge-pair hash
// tables, compiled pre-tokenizer regexes. Internal to src/tokenizer; the API is
// include/forge/tokenizer.h. Everything here is immutable after fg_tokenizer_create.
#ifndef FG_TOKENIZER_TOK_INTERNAL_H
#define FG_TOKENIZER_TOK_INTERNAL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "forge/tokenizer.h"

// Token attribute bits (llama.cpp's llama_token_attr values).
enum {
    TOK_ATTR_UNDEFINED = 0,
    TOK_ATTR_UNKNOWN = 1 << 0,
    TOK_ATTR_UNUSED = 1 << 1,
    TOK_ATTR_NORMAL = 1 << 2,
    TOK_ATTR_CONTROL = 1 << 3,
    TOK_ATTR_USER_DEFINED = 1 << 4,
    TOK_ATTR_BYTE = 1 << 5,
    TOK_ATTR_LSTRIP = 1 << 7, // partitioning eats white space before the token
    TOK_ATTR_RSTRIP = 1 << 8, // ... and after it
};

typedef enum tok_type { TOK_SPM = 1, TOK_BPE = 2, TOK_WPM = 3 } tok_type;

#define TOK_MAX_REGEX 8

// Open-addressing hash table of (string -> value); keys are views into an owned blob.
typedef struct tok_hslot {
    uint64_t hash;  // 0 marks an empty slot
    uint32_t off;   // key offset in the blob
    uint32_t len;   // key length (merges: total length)
    uint32_t split; // merges: length of the left part
    int32_t value;  // token id or merge rank
} tok_hslot;

typedef struct tok_htab {
    tok_hslot *slots; // [cap]
    size_t cap;       // power of two
    const char *blob; // borrowed: the owner's text blob
} tok_htab;

struct fg_tokenizer {
    tok_type type;
    char model_name[16];
    char *pre_name; // owned

    int32_t n_vocab;
    char *blob;       // token texts, each NUL-terminated
    uint32_t *t_off;  // [n_vocab] offset of text in blob
    uint32_t *t_len;  // [n_vocab]
    float *score;     // [n_vocab]
    uint16_t *attr;   // [n_vocab] TOK_ATTR_* bits
    tok_htab vocab;   // text -> id
    int max_token_len;

    char *mblob;      // merge pairs, left+right concatenated
    tok_htab merges;  // (left, right) -> rank

    int32_t bos, eos, eot, eom, unk, sep, pad, mask;
    int32_t fim_pre, fim_suf, fim_mid, fim_pad, fim_rep, fim_sep;
    bool add_bos, add_eos, add_sep, add_space_prefix, clean_spaces, ignore_merges;
    bool wpm_lowercase, wpm_strip_accents;

    int32_t byte_tok[256]; // SPM byte fallback ids (-1: none)
    bool spm_split_ok;     // SPM: no token has a non-U+2581 char followed by U+2581

    int32_t *special;  // ids of control/user-defined/unknown tokens, longest text first
    size_t n_special;
    uint8_t *is_eog;   // [n_vocab]

    pcre2_code *re[TOK_MAX_REGEX];
    int n_re;
};

// Growable id output.
typedef struct tok_out {
    int32_t *ids;
    size_t n, cap;
    bool oom;
} tok_out;
void tok_out_push(tok_out *o, int32_t id);

static inline const char *tok_text(const fg_tokenizer *t, int32_t id) { return t->blob + t->t_off[id]; }

uint64_t tok_hash(const char *s, size_t n);
uint64_t tok_hash_pair(const char *a, size_t na, const char *b, size_t nb);
int32_t tok_htab_find(const tok_htab *h, const char *s, size_t n);
int32_t tok_htab_find_pair(const tok_htab *h, const char *a, size_t na, const char *b, size_t nb);

// Per-model tokenizers on one raw-text fragment (appending to out).
fg_status tok_spm_encode(const fg_tokenizer *t, const char *text, size_t len, tok_out *out);
fg_status tok_bpe_encode(const fg_tokenizer *t, const char *text, size_t len, tok_out *out);
fg_status tok_wpm_encode(const fg_tokenizer *t, const char *text, size_t len, tok_out *out);

// BPE pre-tokenizer setup: resolves the name (FG_ERR_UNSUPPORTED naming it) and compiles
// the regexes into t->re. Also sets the per-pre flags (clean_spaces, ignore_merges, ...).
fg_status tok_bpe_setup_pre(fg_tokenizer *t, const char *pre, size_t pre_len, bool *add_bos_default);
// Splits text into pre-tokenizer words: writes (start, len) byte pairs into *spans (heap).
fg_status tok_bpe_pre_split(const fg_tokenizer *t, const char *text, size_t len,
                            size_t **spans, size_t *n_spans);

#endif // FG_TOKENIZER_TOK_INTERNAL_H
