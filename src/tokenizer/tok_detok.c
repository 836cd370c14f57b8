// tok_detok.c - token -> bytes (llama.cpp's token_to_piece), whole-sequence
// detokenization (llama_detokenize: first-piece space strip for SentencePiece, optional
// clean-up of spaces before punctuation/contractions) and the streaming detokenizer that
// emits only complete UTF-8 characters. Not here: tokenization.
#include "tokenizer/tok_internal.h"

#include "base/status.h"
#include "tokenizer/unicode.h"

#include <stdlib.h>
#include <string.h>

// Writes the piece of `id` into out (up to cap bytes) skipping up to lstrip leading
// spaces; returns its full length, 0 for pieces that render as nothing, -1 for bad ids.
static int32_t piece(const fg_tokenizer *t, int32_t id, bool special, int lstrip, char *out, size_t cap) {
    if (id < 0 || id >= t->n_vocab)
        return -1;
    uint16_t a = t->attr[id];
    const char *s = tok_text(t, id);
    size_t n = t->t_len[id];
    if (!special && (a & (TOK_ATTR_CONTROL | TOK_ATTR_UNKNOWN)))
        return 0;
    size_t w = 0;
#define PUT(c)                 \
    do {                       \
        if (w < cap)           \
            out[w] = (char)(c); \
        w++;                   \
    } while (0)
    if (a & (TOK_ATTR_CONTROL | TOK_ATTR_UNKNOWN | TOK_ATTR_USER_DEFINED)) {
        size_t i = 0;
        for (; lstrip > 0 && i < n && s[i] == ' '; lstrip--)
            i++;
        for (; i < n; i++)
            PUT(s[i]);
        return (int32_t)w;
    }
    if (t->type == TOK_SPM || t->type == TOK_WPM) {
        if (a & TOK_ATTR_NORMAL) { // U+2581 -> ' '
            for (size_t i = 0; i < n;) {
                char c = s[i];
                size_t step = 1;
                if (i + 2 < n && memcmp(s + i, "\xe2\x96\x81", 3) == 0) {
                    c = ' ';
                    step = 3;
                }
                i += step;
                if (c == ' ' && lstrip > 0 && w == 0) {
                    lstrip--;
                    continue;
                }
                PUT(c);
            }
            return (int32_t)w;
        }
        if (a & TOK_ATTR_BYTE) { // "<0xNN>"
            unsigned v = 0;
            for (size_t i = 3; i + 1 < n && i < 5; i++) {
                char c = s[i];
                v = v * 16 + (unsigned)(c >= '0' && c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10);
            }
            if (lstrip > 0 && v == ' ')
                return 0;
            PUT(v & 0xff);
            return (int32_t)w;
        }
        return 0;
    }
    if (a & TOK_ATTR_NORMAL) { // byte-level BPE: code points back to bytes
        for (size_t off = 0; off < n;) {
            size_t o0 = off;
            uint32_t cp = fg_utf8_decode((const uint8_t *)s, n, &off);
            int b = fg_cp_to_byte(cp);
            if (b >= 0) {
                if (b == ' ' && lstrip > 0 && w == 0) {
                    lstrip--;
                    continue;
                }
                PUT(b);
            } else { // llama.cpp: "[UNK_BYTE_0x<hex>" + text + "]"
                static const char hex[] = "0123456789abcdef";
                const char *pre = "[UNK_BYTE_0x";
                for (const char *p = pre; *p; p++)
                    PUT(*p);
                for (size_t k = o0; k < off; k++) {
                    PUT(hex[(uint8_t)s[k] >> 4]);
                    PUT(hex[(uint8_t)s[k] & 15]);
                }
                for (size_t k = 0; k < n; k++)
                    PUT(s[k]);
                PUT(']');
            }
        }
        return (int32_t)w;
    }
#undef PUT
    return 0;
}

int32_t fg_token_to_piece(const fg_tokenizer *t, int32_t id, bool special, char *out, size_t cap) {
    return piece(t, id, special, 0, out, cap);
}

fg_status fg_detokenize_ex(const fg_tokenizer *t, const int32_t *ids, size_t n, unsigned flags,
                           char **text, size_t *len) {
    if (!t || (!ids && n) || !text || !len)
        return FG_FAIL(FG_ERR_INVALID_ARG, "fg_detokenize: NULL argument");
    bool special = flags & FG_DETOK_SPECIAL;
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t k = piece(t, ids[i], special, 0, NULL, 0);
        if (k < 0)
            return FG_FAIL(FG_ERR_INVALID_ARG, "detokenize: token id %d out of range [0, %d)", ids[i],
                           t->n_vocab);
        total += (size_t)k;
    }
    char *s = malloc(total + 1);
    if (!s)
        return FG_FAIL(FG_ERR_NOMEM, "detokenize: out of memory for %zu bytes", total);
    size_t m = 0;
    bool remove_space = t->add_space_prefix && !(flags & FG_DETOK_KEEP_SPACE);
    for (size_t i = 0; i < n; i++) {
        m += (size_t)piece(t, ids[i], special, remove_space ? 1 : 0, s + m, total - m);
        remove_space = false;
    }
    if (t->clean_spaces && !(flags & FG_DETOK_NO_CLEAN) && m > 1) {
        // llama.cpp's three passes: " ?", " !", " .", " ," lose the space; " ' " -> "'";
        // " 's", " 'm", " 're", " 've" lose the space
        size_t k = 1;
        for (size_t i = 1; i < m; i++) {
            char x = s[i];
            if (s[i - 1] == ' ' && (x == '?' || x == '!' || x == '.' || x == ','))
                k--;
            s[k++] = x;
        }
        m = k;
        k = 1;
        for (size_t i = 1; i < m; i++) {
            char x = s[i];
            if (x == '\'' && i + 1 < m && s[i - 1] == ' ' && s[i + 1] == ' ') {
                k--;
                s[++i] = 0;
            }
            s[k++] = x;
        }
        m = k;
        k = 1;
        for (size_t i = 1; i < m; i++) {
            char x = s[i];
            if (s[i - 1] == ' ' && x == '\'' && i + 1 < m) {
                char x1 = s[i + 1];
                if (x1 == 's' || x1 == 'm')
                    k--;
                else if (i + 2 < m && ((x1 == 'r' && s[i + 2] == 'e') || (x1 == 'v' && s[i + 2] == 'e')))
                    k--;
            }
            s[k++] = x;
        }
        m = k;
    }
    s[m] = 0;
    *text = s;
    *len = m;
    return FG_OK;
}

fg_status fg_detokenize(const fg_tokenizer *t, const int32_t *ids, size_t n, bool special,
                        char **text, size_t *len) {
    return fg_detokenize_ex(t, ids, n, special ? FG_DETOK_SPECIAL : 0, text, len);
}

// --- streaming

void fg_detok_stream_init(fg_detok_stream *s) { memset(s, 0, sizeof *s); }

// Expected length of a sequence starting with lead byte c (0: not a valid lead).
static int seq_len(uint8_t c) {
    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf)
        return 2;
    if (c >= 0xe0 && c <= 0xef)
        return 3;
    if (c >= 0xf0 && c <= 0xf4)
        return 4;
    return 0;
}

// Is c acceptable as continuation byte number k (1-based) after lead byte `lead`?
static bool cont_ok(uint8_t lead, int k, uint8_t c) {
    if ((c & 0xc0) != 0x80)
        return false;
    if (k == 1) {
        if (lead == 0xe0)
            return c >= 0xa0;
        if (lead == 0xed)
            return c <= 0x9f;
        if (lead == 0xf0)
            return c >= 0x90;
        if (lead == 0xf4)
            return c <= 0x8f;
    }
    return true;
}

static void emit(char *out, size_t *w, const void *p, size_t n) {
    memcpy(out + *w, p, n);
    *w += n;
}

// Feeds bytes through the UTF-8 state; out must hold 3 bytes per input byte + 3.
static size_t feed(fg_detok_stream *s, const uint8_t *p, size_t n, char *out) {
    size_t w = 0;
    for (size_t i = 0; i < n;) {
        uint8_t c = p[i];
        if (s->n_pending == 0) {
            int l = seq_len(c);
            if (l == 1)
                out[w++] = (char)c;
            else if (l == 0)
                emit(out, &w, "\xef\xbf\xbd", 3);
            else
                s->pending[s->n_pending++] = c;
            i++;
            continue;
        }
        if (cont_ok(s->pending[0], s->n_pending, c)) {
            s->pending[s->n_pending++] = c;
            i++;
            if (s->n_pending == seq_len(s->pending[0])) {
                emit(out, &w, s->pending, (size_t)s->n_pending);
                s->n_pending = 0;
            }
            continue;
        }
        emit(out, &w, "\xef\xbf\xbd", 3); // broken sequence; c is looked at again
        s->n_pending = 0;
    }
    return w;
}

int32_t fg_detok_stream_push(const fg_tokenizer *t, fg_detok_stream *s, int32_t id, bool special,
                             char *out, size_t cap) {
    char local[256];
    int32_t k = piece(t, id, special, 0, local, sizeof local);
    if (k < 0)
        return -1;
    const char *p = local;
    char *heap = NULL;
    if ((size_t)k > sizeof local) { // rare: very long piece
        heap = malloc((size_t)k);
        if (!heap)
            return -1;
        piece(t, id, special, 0, heap, (size_t)k);
        p = heap;
    }
    if (cap < 3 * (size_t)k + 3) {
        free(heap);
        return -1;
    }
    size_t w = feed(s, (const uint8_t *)p, (size_t)k, out);
    free(heap);
    return (int32_t)w;
}

int32_t fg_detok_stream_flush(fg_detok_stream *s, char *out, size_t cap) {
    if (s->n_pending == 0)
        return 0;
    if (cap < 3)
        return -1;
    memcpy(out, "\xef\xbf\xbd", 3);
    s->n_pending = 0;
    return 3;
}

fg_status fg_detokenize_split(const fg_tokenizer *t, const int32_t *ids, size_t n, bool special,
                              bool strip_space, char **text, size_t *len, size_t *offs) {
    if (!t || (!ids && n) || !text || !len || !offs)
        return FG_FAIL(FG_ERR_INVALID_ARG, "fg_detokenize_split: NULL argument");
    size_t cap = 4;
    for (size_t i = 0; i < n; i++) {
        int32_t k = piece(t, ids[i], special, 0, NULL, 0);
        if (k < 0)
            return FG_FAIL(FG_ERR_INVALID_ARG, "detokenize: token id %d out of range [0, %d)", ids[i],
                           t->n_vocab);
        cap += 3 * (size_t)k + 3; // the stream writes at most 3 bytes per input byte + 3
    }
    char *s = malloc(cap);
    char *pc = malloc(256);
    if (!s || !pc) {
        free(s);
        free(pc);
        return FG_FAIL(FG_ERR_NOMEM, "detokenize: out of memory for %zu bytes", cap);
    }
    size_t pcap = 256, m = 0;
    bool strip = strip_space && t->add_space_prefix;
    fg_detok_stream ds;
    fg_detok_stream_init(&ds);
    for (size_t i = 0; i < n; i++) {
        offs[i] = m;
        int32_t k = piece(t, ids[i], special, strip ? 1 : 0, pc, pcap);
        if ((size_t)k > pcap) {
            char *np = realloc(pc, (size_t)k);
            if (!np) {
                free(s);
                free(pc);
                return FG_FAIL(FG_ERR_NOMEM, "detokenize: out of memory for a %d-byte piece", k);
            }
            pc = np;
            pcap = (size_t)k;
            k = piece(t, ids[i], special, strip ? 1 : 0, pc, pcap);
        }
        // the strip is spent by the first piece that renders something (a leading BOS
        // renders nothing and keeps it for the text's first word)
        if (k > 0 || piece(t, ids[i], special, 0, NULL, 0) > 0)
            strip = false;
        m += feed(&ds, (const uint8_t *)pc, (size_t)k, s + m);
    }
    if (ds.n_pending) { // bytes that never formed a character: U+FFFD, on the last token
        memcpy(s + m, "\xef\xbf\xbd", 3);
        m += 3;
    }
    offs[n] = m;
    free(pc);
    s[m] = 0;
    *text = s;
    *len = m;
    return FG_OK;
}
