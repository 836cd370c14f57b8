// unicode.c - UTF-8 decode/encode (llama.cpp's lenient rules), table lookups over the
// generated unicode_data.c, and the GPT-2 byte <-> code point mapping.
// Not here: regex matching. Callers: the SPM/BPE/WPM tokenizers and the detokenizer.
#include "tokenizer/unicode.h"

uint32_t fg_utf8_decode(const uint8_t *s, size_t n, size_t *off) {
    size_t i = *off;
    uint8_t c = s[i];
    if (!(c & 0x80)) {
        *off = i + 1;
        return c;
    }
    if (!(c & 0x40))
        goto invalid;
    if (!(c & 0x20)) {
        if (i + 1 >= n || (s[i + 1] & 0xc0) != 0x80)
            goto invalid;
        *off = i + 2;
        return ((uint32_t)(c & 0x1f) << 6) | (s[i + 1] & 0x3f);
    }
    if (!(c & 0x10)) {
        if (i + 2 >= n || (s[i + 1] & 0xc0) != 0x80 || (s[i + 2] & 0xc0) != 0x80)
            goto invalid;
        *off = i + 3;
        return ((uint32_t)(c & 0x0f) << 12) | ((uint32_t)(s[i + 1] & 0x3f) << 6) | (s[i + 2] & 0x3f);
    }
    if (!(c & 0x08)) {
        if (i + 3 >= n || (s[i + 1] & 0xc0) != 0x80 || (s[i + 2] & 0xc0) != 0x80 ||
            (s[i + 3] & 0xc0) != 0x80)
            goto invalid;
        *off = i + 4;
        return ((uint32_t)(c & 0x07) << 18) | ((uint32_t)(s[i + 1] & 0x3f) << 12) |
               ((uint32_t)(s[i + 2] & 0x3f) << 6) | (s[i + 3] & 0x3f);
    }
invalid:
    *off = i + 1;
    return 0xFFFD;
}

size_t fg_utf8_encode(uint32_t cp, char *out) {
    if (cp > 0x10FFFF)
        cp = 0xFFFD;
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xc0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xe0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        out[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    out[0] = (char)(0xf0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
    out[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

uint32_t fg_uni_flags(uint32_t cp) {
    if (cp >= 0x110000)
        return 0;
    size_t lo = 0, hi = fg_uni_flag_ranges_len; // last range with start <= cp
    while (hi - lo > 1) {
        size_t mid = (lo + hi) / 2;
        if (fg_uni_flag_ranges[mid].start <= cp)
            lo = mid;
        else
            hi = mid;
    }
    return fg_uni_flag_ranges[lo].flags;
}

static uint32_t pair_lookup(const fg_uni_pair *t, size_t n, uint32_t cp) {
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (t[mid].cp < cp)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < n && t[lo].cp == cp ? t[lo].to : cp;
}

uint32_t fg_uni_tolower(uint32_t cp) { return pair_lookup(fg_uni_lower, fg_uni_lower_len, cp); }

size_t fg_uni_decompose(uint32_t cp, uint32_t out[FG_UNI_NFD_MAX]) {
    if (cp >= 0xAC00 && cp <= 0xD7A3) { // Hangul syllable -> L V [T] jamo (Unicode ch. 3.12)
        uint32_t s = cp - 0xAC00, t = s % 28;
        out[0] = 0x1100 + s / (21 * 28);
        out[1] = 0x1161 + (s % (21 * 28)) / 28;
        if (t == 0)
            return 2;
        out[2] = 0x11A7 + t;
        return 3;
    }
    size_t lo = 0, hi = fg_uni_nfd_len;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (fg_uni_nfd[mid].cp < cp)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo == fg_uni_nfd_len || fg_uni_nfd[lo].cp != cp) {
        out[0] = cp;
        return 1;
    }
    size_t off = fg_uni_nfd[lo].to >> 8, n = fg_uni_nfd[lo].to & 0xff;
    for (size_t i = 0; i < n; i++)
        out[i] = fg_uni_nfd_cps[off + i];
    return n;
}

uint32_t fg_uni_nfd_first(uint32_t cp) {
    uint32_t d[FG_UNI_NFD_MAX];
    fg_uni_decompose(cp, d);
    return d[0];
}

static bool byte_is_printable(uint32_t b) {
    return (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
}

uint32_t fg_byte_to_cp(uint8_t b) {
    if (byte_is_printable(b))
        return b;
    if (b <= 32)
        return 256u + b;
    if (b >= 127 && b <= 160)
        return 256u + 33u + (uint32_t)(b - 127);
    return 256u + 67u; // 173
}

int fg_cp_to_byte(uint32_t cp) {
    if (cp < 256)
        return byte_is_printable(cp) ? (int)cp : -1;
    if (cp < 256 + 33)
        return (int)(cp - 256);
    if (cp < 256 + 67)
        return (int)(cp - 256 - 33 + 127);
    if (cp == 256 + 67)
        return 173;
    return -1;
}
