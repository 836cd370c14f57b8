// unicode.h - the Unicode helpers the tokenizers share: llama.cpp-compatible lenient UTF-8
// decoding, encoding, code point flags/lowercase/canonical decomposition (generated tables in
// unicode_data.c) and GPT-2's byte <-> code point mapping (pure functions, no tables).
// Not here: regex categories (PCRE2 handles those). Internal to src/tokenizer.
#ifndef FG_TOKENIZER_UNICODE_H
#define FG_TOKENIZER_UNICODE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum {
    FG_UNI_UNDEFINED = 0x01,
    FG_UNI_NUMBER = 0x02,
    FG_UNI_LETTER = 0x04,
    FG_UNI_SEPARATOR = 0x08,
    FG_UNI_MARK = 0x10,
    FG_UNI_PUNCT = 0x20,
    FG_UNI_SYMBOL = 0x40,
    FG_UNI_CONTROL = 0x80,
    FG_UNI_WHITESPACE = 0x100,
    FG_UNI_MARK_NONSPACING = 0x200, // general category Mn (a subset of FG_UNI_MARK)
};

#define FG_UNI_NFD_MAX 4 // longest canonical decomposition of one code point

typedef struct fg_uni_range {
    uint32_t start; // first code point of the range (runs to the next range's start)
    uint32_t flags; // FG_UNI_* bits
} fg_uni_range;

typedef struct fg_uni_pair {
    uint32_t cp;
    uint32_t to; // fg_uni_nfd: offset << 8 | length into fg_uni_nfd_cps
} fg_uni_pair;

extern const fg_uni_range fg_uni_flag_ranges[];
extern const size_t fg_uni_flag_ranges_len;
extern const fg_uni_pair fg_uni_lower[];
extern const size_t fg_uni_lower_len;
extern const fg_uni_pair fg_uni_nfd[];
extern const size_t fg_uni_nfd_len;
extern const uint32_t fg_uni_nfd_cps[];

// Byte length of the UTF-8 sequence a lead byte announces (1 for continuation bytes), as
// llama.cpp's unicode_len_utf8.
static inline size_t fg_utf8_len(uint8_t c) {
    static const uint8_t k_len[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
    return k_len[c >> 4];
}

// Decodes one code point at s[*off] (n bytes total) as llama.cpp does: invalid sequences
// give U+FFFD and consume one byte; overlong forms and surrogates are accepted.
uint32_t fg_utf8_decode(const uint8_t *s, size_t n, size_t *off);
// Encodes cp (<= 0x10FFFF; larger values become U+FFFD) into out[0..4); returns the length.
size_t fg_utf8_encode(uint32_t cp, char *out);

uint32_t fg_uni_flags(uint32_t cp);
uint32_t fg_uni_tolower(uint32_t cp);
// Canonical decomposition (NFD of the one code point, Hangul syllables included): writes
// 1..FG_UNI_NFD_MAX code points to out and returns how many (1 and cp itself when none).
size_t fg_uni_decompose(uint32_t cp, uint32_t out[FG_UNI_NFD_MAX]);
uint32_t fg_uni_nfd_first(uint32_t cp);

// GPT-2 byte-level BPE mapping: byte -> code point (printable bytes map to themselves, the
// rest to 256 + n), and back (-1 for code points outside the mapping).
uint32_t fg_byte_to_cp(uint8_t b);
int fg_cp_to_byte(uint32_t cp);

#endif // FG_TOKENIZER_UNICODE_H
