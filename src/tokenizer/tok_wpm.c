// tok_wpm.c - llama.cpp's WordPiece tokenizer (vocabulary type "bert"): per code point
// first-code-point NFD and accent-mark removal, lowercasing, splitting at white space,
// punctuation, ASCII symbols and CJK ideographs; then per word ("▁" + word) greedy
// longest-match against the vocabulary, the whole word becoming [UNK] when a position
// has no match. Not here: special tokens ([CLS]/[SEP], added by tokenizer.c).
#include "tokenizer/tok_internal.h"

#include "base/status.h"
#include "tokenizer/unicode.h"

#include <stdlib.h>
#include <string.h>

static bool is_chinese_char(uint32_t c) {
    return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) ||
           (c >= 0x20000 && c <= 0x2A6DF) || (c >= 0x2A700 && c <= 0x2B73F) ||
           (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B920 && c <= 0x2CEAF) ||
           (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
}

static void encode_word(const fg_tokenizer *t, const char *w, size_t n, tok_out *out) {
    size_t start = out->n;
    for (size_t i = 0; i < n;) {
        size_t j = i + (size_t)t->max_token_len + 1; // llama.cpp's bound, inclusive of +1
        if (j > n)
            j = n;
        int32_t id = -1;
        for (; j > i; j--) {
            id = tok_htab_find(&t->vocab, w + i, j - i);
            if (id >= 0)
                break;
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

fg_status tok_wpm_encode(const fg_tokenizer *t, const char *text, size_t len, tok_out *out) {
    // words are built in buf, each prefixed with U+2581; a word is at most the text's
    // code points times 4 bytes
    char *buf = malloc(4 * len + 8);
    if (!buf)
        return FG_FAIL(FG_ERR_NOMEM, "tokenize: out of memory for %zu bytes", len);
    size_t wstart = 0, m = 0;
#define BEGIN_WORD() (memcpy(buf, "\xe2\x96\x81", 3), wstart = 0, m = 3)
#define END_WORD()                                  \
    do {                                            \
        if (m > 3)                                  \
            encode_word(t, buf + wstart, m, out);   \
        m = 3;                                      \
    } while (0)
    BEGIN_WORD();
    for (size_t off = 0; off < len;) {
        uint32_t cp = fg_utf8_decode((const uint8_t *)text, len, &off);
        if (t->wpm_strip_accents)
            cp = fg_uni_nfd_first(cp);
        uint32_t fl = fg_uni_flags(cp);
        if (fl & FG_UNI_WHITESPACE) {
            END_WORD();
            continue;
        }
        if (cp == 0 || cp == 0xFFFD || (fl & FG_UNI_CONTROL))
            continue;
        if (t->wpm_strip_accents && (fl & FG_UNI_MARK))
            continue;
        char enc[4];
        size_t el = fg_utf8_encode(t->wpm_lowercase ? fg_uni_tolower(cp) : cp, enc);
        if ((fl & FG_UNI_PUNCT) || (cp < 0x7F && (fl & FG_UNI_SYMBOL)) || is_chinese_char(cp)) {
            END_WORD();
            memcpy(buf + 3, enc, el);
            m = 3 + el;
            END_WORD();
        } else {
            memcpy(buf + m, enc, el);
            m += el;
        }
    }
    END_WORD();
#undef BEGIN_WORD
#undef END_WORD
    free(buf);
    return FG_OK;
}
