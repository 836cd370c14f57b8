// tok_wpm.c - WordPiece (vocabulary type "bert") as Hugging Face's BertNormalizer +
// BertPreTokenizer + WordPiece (the `tokenizers` library sentence-transformers runs) do it:
// control characters dropped, CJK ideographs made one-character words, then (uncased
// vocabularies) full canonical decomposition with nonspacing marks (Mn) removed and
// lowercasing, splitting at white space and punctuation; then per word greedy longest-match
// with the vocabulary in llama.cpp's phantom-space form ("▁" + word-initial piece, bare
// continuation piece for HF's "##" piece), the whole word becoming [UNK] when a position has
// no match or the word is longer than 100 characters. Not here: special tokens ([CLS]/[SEP],
// added by tokenizer.c). Where this differs from llama.cpp, see docs/EMBEDDINGS.md.
#include "tokenizer/tok_internal.h"

#include "base/status.h"
#include "tokenizer/unicode.h"

#include <string.h>

// Hugging Face WordPiece's max_input_chars_per_word: longer words are one [UNK].
#define WPM_MAX_WORD_CHARS 100
#define PHANTOM "\xe2\x96\x81" // U+2581, llama.cpp's word-initial marker
#define PHANTOM_LEN 3

// HF tokenizers' BertNormalizer::is_chinese_char (note 0x2B920, not 0x2B820, as in the Rust
// code; llama.cpp copies it).
static bool is_chinese_char(uint32_t c) {
    return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) ||
           (c >= 0x20000 && c <= 0x2A6DF) || (c >= 0x2A700 && c <= 0x2B73F) ||
           (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B920 && c <= 0x2CEAF) ||
           (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
}

// One word being built: the phantom prefix, then at most WPM_MAX_WORD_CHARS + 1 code points
// (one past the limit marks the word too long; the rest is not stored).
typedef struct wpm_word {
    char buf[PHANTOM_LEN + 4 * (WPM_MAX_WORD_CHARS + 1)];
    size_t len;    // bytes in buf, PHANTOM_LEN when empty
    size_t nchars; // code points appended (counted past the limit)
} wpm_word;

static void encode_word(const fg_tokenizer *t, const char *w, size_t n, tok_out *out) {
    size_t start = out->n;
    for (size_t i = 0; i < n;) {
        size_t j = i + (size_t)t->max_token_len + 1; // llama.cpp's bound, inclusive of +1
        if (j > n)
            j = n;
        int32_t id = -1;
        // a continuation piece never starts with U+2581: that would be a word-initial piece
        // (HF looks up "##" + rest, and vocabularies have no "##▁...")
        bool phantom_inside = i > 0 && n - i >= PHANTOM_LEN && memcmp(w + i, PHANTOM, PHANTOM_LEN) == 0;
        if (!phantom_inside) {
            for (; j > i; j--) {
                id = tok_htab_find(&t->vocab, w + i, j - i);
                if (id >= 0)
                    break;
            }
        }
        if (id < 0) { // discard the whole word
            out->n = start;
            break;
        }
        tok_out_push(out, id);
        i = j;
    }
    if (out->n == start && t->unk >= 0)
        tok_out_push(out, t->unk);
}

static void word_end(const fg_tokenizer *t, wpm_word *w, tok_out *out) {
    if (w->nchars > WPM_MAX_WORD_CHARS) {
        if (t->unk >= 0)
            tok_out_push(out, t->unk);
    } else if (w->nchars > 0) {
        encode_word(t, w->buf, w->len, out);
    }
    w->len = PHANTOM_LEN;
    w->nchars = 0;
}

static void word_add(wpm_word *w, uint32_t cp) {
    if (++w->nchars <= WPM_MAX_WORD_CHARS)
        w->len += fg_utf8_encode(cp, w->buf + w->len);
}

// Appends one normalized code point: punctuation (Unicode P*, or any ASCII non-alphanumeric)
// is a word of its own, anything else extends the current word.
static void emit(const fg_tokenizer *t, wpm_word *w, uint32_t cp, tok_out *out) {
    uint32_t fl = fg_uni_flags(cp);
    if ((fl & FG_UNI_PUNCT) || (cp < 0x7F && (fl & FG_UNI_SYMBOL))) {
        word_end(t, w, out);
        word_add(w, cp);
        word_end(t, w, out);
    } else {
        word_add(w, cp);
    }
}

// Strip accents (canonical decomposition, Mn removed), then lowercase, as BertNormalizer.
static void emit_normalized(const fg_tokenizer *t, wpm_word *w, uint32_t cp, tok_out *out) {
    uint32_t d[FG_UNI_NFD_MAX];
    size_t nd = 1;
    d[0] = cp;
    if (t->wpm_strip_accents)
        nd = fg_uni_decompose(cp, d);
    for (size_t k = 0; k < nd; k++) {
        uint32_t c = d[k];
        if (t->wpm_strip_accents && (fg_uni_flags(c) & FG_UNI_MARK_NONSPACING))
            continue;
        if (t->wpm_lowercase) {
            if (c == 0x130) { // the one code point whose lowercase is two: i + U+0307
                emit(t, w, 'i', out);
                c = 0x307;
            } else {
                c = fg_uni_tolower(c);
            }
        }
        emit(t, w, c, out);
    }
}

fg_status tok_wpm_encode(const fg_tokenizer *t, const char *text, size_t len, tok_out *out) {
    wpm_word w;
    memcpy(w.buf, PHANTOM, PHANTOM_LEN);
    w.len = PHANTOM_LEN;
    w.nchars = 0;
    for (size_t off = 0; off < len;) {
        uint32_t cp = fg_utf8_decode((const uint8_t *)text, len, &off);
        uint32_t fl = fg_uni_flags(cp);
        // clean_text: NUL, U+FFFD (also what invalid UTF-8 decodes to) and other controls
        // (Cc, Cf, Co, Cs; so also \v, \f, U+0085) go; \t \n \r and White_Space split words
        if (cp == '\t' || cp == '\n' || cp == '\r') {
            word_end(t, &w, out);
            continue;
        }
        if (cp == 0 || cp == 0xFFFD || (fl & FG_UNI_CONTROL))
            continue;
        if (fl & FG_UNI_WHITESPACE) {
            word_end(t, &w, out);
            continue;
        }
        if (is_chinese_char(cp)) { // a word of its own, decided before normalization
            word_end(t, &w, out);
            emit_normalized(t, &w, cp, out);
            word_end(t, &w, out);
            continue;
        }
        emit_normalized(t, &w, cp, out);
    }
    word_end(t, &w, out);
    return FG_OK;
}
