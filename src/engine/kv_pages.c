// kv_pages.c - the KV page allocator: host bookkeeping of which fixed-size KV pages belong to
// which sequence (a LIFO free list, reference counts for forked sequences, one page table per
// sequence). It never touches the pages' memory (that is fg_kv_store, in the model module);
// copy-on-write copies are reported to the caller. Called by the engine's scheduler thread.
// Failure modes leave the allocator unchanged (FG_ERR_CAPACITY on exhaustion).
#include "forge/engine.h"

#include "base/status.h"
#include "base/util.h"

#include <stdlib.h>
#include <string.h>

typedef struct kv_seq {
    bool live;
    int32_t len;     // tokens
    int32_t n_pages; // pages in use: ceil(len / page_size)
    int32_t cap;     // capacity of pages[]
    int32_t *pages;  // [cap] page ids, first n_pages valid
} kv_seq;

struct fg_kv_pages {
    int32_t n_pages;
    int32_t page_size;
    int32_t max_seqs;
    int32_t n_free;
    int32_t n_live;
    int32_t *free_list; // [n_pages] stack of free page ids, top at n_free - 1
    int32_t *refs;      // [n_pages] number of sequences holding each page (0: free)
    kv_seq *seqs;       // [max_seqs]
};

fg_status fg_kv_pages_create(int32_t n_pages, int32_t page_size, int32_t max_seqs,
                             fg_kv_pages **out) {
    if (n_pages <= 0 || page_size <= 0 || max_seqs <= 0)
        return FG_FAIL(FG_ERR_INVALID_ARG,
                       "kv pages: n_pages %d, page_size %d, max_seqs %d: each must be > 0",
                       (int)n_pages, (int)page_size, (int)max_seqs);
    fg_kv_pages *p = calloc(1, sizeof *p);
    if (!p)
        return FG_FAIL(FG_ERR_NOMEM, "kv pages: out of memory");
    p->n_pages = n_pages;
    p->page_size = page_size;
    p->max_seqs = max_seqs;
    p->free_list = malloc((size_t)n_pages * sizeof *p->free_list);
    p->refs = calloc((size_t)n_pages, sizeof *p->refs);
    p->seqs = calloc((size_t)max_seqs, sizeof *p->seqs);
    if (!p->free_list || !p->refs || !p->seqs) {
        fg_kv_pages_destroy(p);
        return FG_FAIL(FG_ERR_NOMEM, "kv pages: out of memory for %d pages, %d sequences",
                       (int)n_pages, (int)max_seqs);
    }
    // pop order 0, 1, 2, ...
    for (int32_t i = 0; i < n_pages; i++)
        p->free_list[i] = n_pages - 1 - i;
    p->n_free = n_pages;
    *out = p;
    return FG_OK;
}

void fg_kv_pages_destroy(fg_kv_pages *p) {
    if (!p)
        return;
    if (p->seqs)
        for (int32_t i = 0; i < p->max_seqs; i++)
            free(p->seqs[i].pages);
    free(p->seqs);
    free(p->refs);
    free(p->free_list);
    free(p);
}

int32_t fg_kv_pages_page_size(const fg_kv_pages *p) { return p->page_size; }
int32_t fg_kv_pages_n_free(const fg_kv_pages *p) { return p->n_free; }
int32_t fg_kv_pages_n_total(const fg_kv_pages *p) { return p->n_pages; }
int32_t fg_kv_pages_n_seqs(const fg_kv_pages *p) { return p->n_live; }

int32_t fg_kv_pages_refcount(const fg_kv_pages *p, int32_t page) {
    if (page < 0 || page >= p->n_pages)
        return -1;
    return p->refs[page];
}

static kv_seq *get_seq(const fg_kv_pages *p, int32_t seq) {
    if (seq < 0 || seq >= p->max_seqs || !p->seqs[seq].live)
        return NULL;
    return &p->seqs[seq];
}

static int32_t pages_for(const fg_kv_pages *p, int64_t len) {
    return (int32_t)((len + p->page_size - 1) / p->page_size);
}

// Ensures seq's page table can hold `need` ids (amortised growth; capacity kept on shrink).
static fg_status reserve(kv_seq *s, int32_t need) {
    if (need <= s->cap)
        return FG_OK;
    int32_t cap = s->cap ? s->cap : 8;
    while (cap < need)
        cap = cap > INT32_MAX / 2 ? need : cap * 2;
    int32_t *np = realloc(s->pages, (size_t)cap * sizeof *np);
    if (!np)
        return FG_FAIL(FG_ERR_NOMEM, "kv pages: out of memory for a page table of %d pages",
                       (int)cap);
    s->pages = np;
    s->cap = cap;
    return FG_OK;
}

static void unref(fg_kv_pages *p, int32_t page) {
    FG_ASSERT(p->refs[page] > 0);
    if (--p->refs[page] == 0)
        p->free_list[p->n_free++] = page;
}

static int32_t take(fg_kv_pages *p) {
    FG_ASSERT(p->n_free > 0);
    int32_t page = p->free_list[--p->n_free];
    FG_ASSERT(p->refs[page] == 0);
    p->refs[page] = 1;
    return page;
}

fg_status fg_kv_seq_new(fg_kv_pages *p, int32_t *seq) {
    for (int32_t i = 0; i < p->max_seqs; i++) {
        kv_seq *s = &p->seqs[i];
        if (!s->live) {
            s->live = true;
            s->len = 0;
            s->n_pages = 0;
            p->n_live++;
            *seq = i;
            return FG_OK;
        }
    }
    return FG_FAIL(FG_ERR_CAPACITY, "kv pages: all %d sequences are in use", (int)p->max_seqs);
}

int32_t fg_kv_seq_pages_needed(const fg_kv_pages *p, int32_t seq, int32_t n) {
    const kv_seq *s = get_seq(p, seq);
    int64_t len = s ? s->len : 0;
    int32_t have = s ? s->n_pages : 0;
    if (n <= 0)
        return 0;
    return pages_for(p, len + n) - have;
}

fg_status fg_kv_seq_append(fg_kv_pages *p, int32_t seq, int32_t n) {
    kv_seq *s = get_seq(p, seq);
    if (!s)
        return FG_FAIL(FG_ERR_INVALID_ARG, "kv pages: append: sequence %d is not live", (int)seq);
    if (n < 0 || (int64_t)s->len + n > INT32_MAX)
        return FG_FAIL(FG_ERR_INVALID_ARG, "kv pages: append: bad token count %d (length %d)",
                       (int)n, (int)s->len);
    int32_t want = pages_for(p, (int64_t)s->len + n);
    int32_t need = want - s->n_pages;
    if (need > p->n_free)
        return FG_FAIL(FG_ERR_CAPACITY,
                       "kv pages: sequence %d needs %d more pages for %d tokens, %d free",
                       (int)seq, (int)need, (int)n, (int)p->n_free);
    FG_TRY(reserve(s, want));
    for (int32_t i = s->n_pages; i < want; i++)
        s->pages[i] = take(p);
    s->n_pages = want;
    s->len += n;
    return FG_OK;
}

fg_status fg_kv_seq_truncate(fg_kv_pages *p, int32_t seq, int32_t n) {
    kv_seq *s = get_seq(p, seq);
    if (!s)
        return FG_FAIL(FG_ERR_INVALID_ARG, "kv pages: truncate: sequence %d is not live",
                       (int)seq);
    if (n < 0 || n > s->len)
        return FG_FAIL(FG_ERR_INVALID_ARG, "kv pages: truncate sequence %d to %d: length is %d",
                       (int)seq, (int)n, (int)s->len);
    int32_t want = pages_for(p, n);
    for (int32_t i = want; i < s->n_pages; i++)
        unref(p, s->pages[i]);
    s->n_pages = want;
    s->len = n;
    return FG_OK;
}

void fg_kv_seq_free(fg_kv_pages *p, int32_t seq) {
    kv_seq *s = get_seq(p, seq);
    if (!s)
        return;
    for (int32_t i = 0; i < s->n_pages; i++)
        unref(p, s->pages[i]);
    s->n_pages = 0;
    s->len = 0;
    s->live = false;
    p->n_live--;
}

fg_status fg_kv_seq_fork(fg_kv_pages *p, int32_t src, int32_t *dst) {
    kv_seq *s = get_seq(p, src);
    if (!s)
        return FG_FAIL(FG_ERR_INVALID_ARG, "kv pages: fork: sequence %d is not live", (int)src);
    int32_t d;
    FG_TRY(fg_kv_seq_new(p, &d));
    kv_seq *t = &p->seqs[d];
    fg_status st = reserve(t, s->n_pages);
    if (st != FG_OK) {
        t->live = false;
        p->n_live--;
        return st;
    }
    for (int32_t i = 0; i < s->n_pages; i++) {
        t->pages[i] = s->pages[i];
        p->refs[s->pages[i]]++;
    }
    t->n_pages = s->n_pages;
    t->len = s->len;
    *dst = d;
    return FG_OK;
}

int32_t fg_kv_seq_len(const fg_kv_pages *p, int32_t seq) {
    const kv_seq *s = get_seq(p, seq);
    return s ? s->len : 0;
}

const int32_t *fg_kv_seq_pages(const fg_kv_pages *p, int32_t seq) {
    const kv_seq *s = get_seq(p, seq);
    return s ? s->pages : NULL;
}

int32_t fg_kv_seq_n_pages(const fg_kv_pages *p, int32_t seq) {
    const kv_seq *s = get_seq(p, seq);
    return s ? s->n_pages : 0;
}

fg_status fg_kv_seq_prepare_write(fg_kv_pages *p, int32_t seq, int32_t from, int32_t *copies,
                                  int32_t cap_copies, int32_t *n_copies) {
    kv_seq *s = get_seq(p, seq);
    if (!s)
        return FG_FAIL(FG_ERR_INVALID_ARG, "kv pages: prepare_write: sequence %d is not live",
                       (int)seq);
    if (from < 0 || from > s->len)
        return FG_FAIL(FG_ERR_INVALID_ARG,
                       "kv pages: prepare_write: sequence %d: position %d outside 0..%d", (int)seq,
                       (int)from, (int)s->len);
    int32_t first = from / p->page_size;
    int32_t shared = 0;
    for (int32_t i = first; i < s->n_pages; i++)
        if (p->refs[s->pages[i]] > 1)
            shared++;
    if (shared > cap_copies)
        return FG_FAIL(FG_ERR_INVALID_ARG,
                       "kv pages: prepare_write: sequence %d needs %d copies, room for %d",
                       (int)seq, (int)shared, (int)cap_copies);
    if (shared > p->n_free)
        return FG_FAIL(FG_ERR_CAPACITY,
                       "kv pages: prepare_write: sequence %d needs %d pages to copy into, %d free",
                       (int)seq, (int)shared, (int)p->n_free);
    int32_t k = 0;
    for (int32_t i = first; i < s->n_pages; i++) {
        int32_t old = s->pages[i];
        if (p->refs[old] <= 1)
            continue;
        int32_t np = take(p);
        p->refs[old]--; // still held by another sequence: never reaches 0 here
        s->pages[i] = np;
        copies[2 * k] = np;
        copies[2 * k + 1] = old;
        k++;
    }
    *n_copies = k;
    return FG_OK;
}

fg_status fg_kv_pages_check(const fg_kv_pages *p) {
    int32_t *cnt = calloc((size_t)p->n_pages, sizeof *cnt);
    if (!cnt)
        return FG_FAIL(FG_ERR_NOMEM, "kv pages: check: out of memory");
    fg_status st = FG_OK;
    int32_t live = 0;
    for (int32_t i = 0; i < p->max_seqs && st == FG_OK; i++) {
        const kv_seq *s = &p->seqs[i];
        if (!s->live)
            continue;
        live++;
        if (s->n_pages != pages_for(p, s->len)) {
            st = FG_FAIL(FG_ERR_FORMAT, "kv pages: sequence %d: %d pages for length %d", (int)i,
                         (int)s->n_pages, (int)s->len);
            break;
        }
        for (int32_t j = 0; j < s->n_pages; j++) {
            int32_t pg = s->pages[j];
            if (pg < 0 || pg >= p->n_pages) {
                st = FG_FAIL(FG_ERR_FORMAT, "kv pages: sequence %d: page id %d out of range",
                             (int)i, (int)pg);
                break;
            }
            cnt[pg]++;
        }
    }
    if (st == FG_OK && live != p->n_live)
        st = FG_FAIL(FG_ERR_FORMAT, "kv pages: %d live sequences counted, %d recorded", (int)live,
                     (int)p->n_live);
    for (int32_t i = 0; i < p->n_free && st == FG_OK; i++) {
        int32_t pg = p->free_list[i];
        if (pg < 0 || pg >= p->n_pages || cnt[pg] != 0 || p->refs[pg] != 0) {
            st = FG_FAIL(FG_ERR_FORMAT, "kv pages: free page %d is in use or listed twice",
                         (int)pg);
            break;
        }
        cnt[pg] = -1; // mark as listed free
    }
    int32_t n_free = 0;
    for (int32_t pg = 0; pg < p->n_pages && st == FG_OK; pg++) {
        if (cnt[pg] == -1) {
            n_free++;
            continue;
        }
        if (cnt[pg] == 0)
            st = FG_FAIL(FG_ERR_FORMAT, "kv pages: page %d is neither free nor owned", (int)pg);
        else if (cnt[pg] != p->refs[pg])
            st = FG_FAIL(FG_ERR_FORMAT, "kv pages: page %d: refcount %d, held by %d sequences",
                         (int)pg, (int)p->refs[pg], (int)cnt[pg]);
    }
    if (st == FG_OK && n_free != p->n_free)
        st = FG_FAIL(FG_ERR_FORMAT, "kv pages: %d free pages, free list holds %d", (int)n_free,
                     (int)p->n_free);
    free(cnt);
    return st;
}
