// tok_spm.c - llama.cpp's SentencePiece-style tokenizer (vocabulary type "llama"): start
// from UTF-8 characters, repeatedly merge the adjacent pair whose concatenation is the
// highest-scoring vocabulary token (ties: leftmost), then emit each symbol's token or, for
// symbols not in the vocabulary, their bytes as <0xNN> tokens (UNK when absent).
// Not here: whitespace escaping and the space prefix (tokenizer.c does those).
#include "tokenizer/tok_internal.h"

#include "base/status.h"
#include "tokenizer/unicode.h"

#include <stdlib.h>
#include <string.h>

typedef struct sym {
    int prev, next;
    const char *text;
    size_t n;
} sym;

typedef struct bigram {
    float score;
    int left, right;
    size_t size;
} bigram;

// true when a should pop before b
static bool bg_before(const bigram *a, const bigram *b) {
    return a->score > b->score || (a->score == b->score && a->left < b->left);
}

typedef struct heap {
    bigram *v;
    size_t n, cap;
    bool oom;
} heap;

static void heap_push(heap *h, bigram b) {
    if (h->n == h->cap) {
        size_t cap = h->cap ? h->cap * 2 : 256;
        bigram *p = realloc(h->v, cap * sizeof *p);
        if (!p) {
            h->oom = true;
            return;
        }
        h->v = p;
        h->cap = cap;
    }
    size_t i = h->n++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!bg_before(&b, &h->v[parent]))
            break;
        h->v[i] = h->v[parent];
        i = parent;
    }
    h->v[i] = b;
}

static bigram heap_pop(heap *h) {
    bigram top = h->v[0], last = h->v[--h->n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= h->n)
            break;
        if (c + 1 < h->n && bg_before(&h->v[c + 1], &h->v[c]))
            c++;
        if (!bg_before(&h->v[c], &last))
            break;
        h->v[i] = h->v[c];
        i = c;
    }
    if (h->n)
        h->v[i] = last;
    return top;
}

static void try_add(const fg_tokenizer *t, const sym *s, heap *h, int left, int right) {
    if (left < 0 || right < 0)
        return;
    size_t n = s[left].n + s[right].n; // adjacent symbols are contiguous in the text
    int32_t id = tok_htab_find(&t->vocab, s[left].text, n);
    if (id < 0)
        return;
    heap_push(h, (bigram){.score = t->score[id], .left = left, .right = right, .size = n});
}

// Tokenizes one segment; s has room for len symbols, h is an empty reusable heap.
static void encode_segment(const fg_tokenizer *t, const char *text, size_t len, sym *s, heap *h,
                           tok_out *out) {
    if (len == 0)
        return;
    int n = 0;
    for (size_t off = 0; off < len;) {
        size_t cl = fg_utf8_len((uint8_t)text[off]);
        if (cl > len - off)
            cl = len - off;
        s[n] = (sym){.prev = n - 1, .next = off + cl == len ? -1 : n + 1, .text = text + off, .n = cl};
        off += cl;
        n++;
    }
    h->n = 0;
    for (int i = 1; i < n; i++)
        try_add(t, s, h, i - 1, i);
    while (h->n && !h->oom) {
        bigram b = heap_pop(h);
        sym *l = &s[b.left], *r = &s[b.right];
        if (l->n == 0 || r->n == 0 || l->n + r->n != b.size)
            continue; // stale
        l->n += r->n;
        r->n = 0;
        l->next = r->next;
        if (r->next >= 0)
            s[r->next].prev = b.left;
        try_add(t, s, h, l->prev, b.left);
        try_add(t, s, h, b.left, l->next);
    }
    if (h->oom)
        return;
    for (int i = 0; i != -1; i = s[i].next) {
        int32_t id = tok_htab_find(&t->vocab, s[i].text, s[i].n);
        if (id >= 0) {
            tok_out_push(out, id);
            continue;
        }
        for (size_t j = 0; j < s[i].n; j++) {
            int32_t b = t->byte_tok[(uint8_t)s[i].text[j]];
            if (b < 0)
                b = t->unk; // llama.cpp would throw here; UNK is the closest thing
            if (b >= 0)
                tok_out_push(out, b);
        }
    }
}

// Merges never cross a point where no vocabulary token can span; when no token holds a
// non-U+2581 character followed by U+2581 (t->spm_split_ok, checked at create time), the
// point before each such U+2581 is one, and the segments can be merged separately with the
// same result (and small heaps).
fg_status tok_spm_encode(const fg_tokenizer *t, const char *text, size_t len, tok_out *out) {
    if (len == 0)
        return FG_OK;
    sym *s = malloc(len * sizeof *s);
    if (!s)
        return FG_FAIL(FG_ERR_NOMEM, "tokenize: out of memory for %zu bytes", len);
    heap h = {0};
    size_t start = 0;
    if (t->spm_split_ok) {
        for (size_t p = 3; p + 3 <= len && !h.oom; p++) {
            if (memcmp(text + p, "\xe2\x96\x81", 3) == 0 && memcmp(text + p - 3, "\xe2\x96\x81", 3) != 0) {
                encode_segment(t, text + start, p - start, s, &h, out);
                start = p;
            }
        }
    }
    encode_segment(t, text + start, len - start, s, &h, out);
    bool oom = h.oom;
    free(h.v);
    free(s);
    return oom ? FG_FAIL(FG_ERR_NOMEM, "tokenize: out of memory") : FG_OK;
}
