// kv_pages.c - the KV page allocator: host bookkeeping of which fixed-size KV pages belong to
// which sequence (a LIFO free list, reference counts for forked sequences, one page table per
// sequence) and the optional prefix cache: full pages published under a chained hash of their
// tokens, looked up by later sequences, kept while idle on an LRU list and evicted only when
// the free list is empty. It never touches the pages' memory (that is fg_kv_store, in the
// model module); copy-on-write copies are reported to the caller. Called by the engine's
// scheduler thread. Failure modes leave the allocator unchanged (FG_ERR_CAPACITY on exhaustion).
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
    int32_t n_pub;   // prefix cache: pages[0..n_pub) are cached pages forming one chain
} kv_seq;

// Prefix-cache record of one page (meaningful while `cached`). A cached page's content is the
// KV of its page_size tokens (toks) following the content of its parent page: the chain from
// a root page (parent -1) spells out the whole prefix, so a match compares tokens and parent
// identity, never the hash alone.
typedef struct kv_meta {
    uint64_t hash;       // chained hash: hash_fn(parent's hash or the seed, toks)
    int32_t parent;      // page holding the page_size tokens before these (-1: first page)
    uint32_t parent_gen; // the parent's gen when this page was published
    uint32_t gen;        // bumped whenever the page leaves the cache (evicted)
    int32_t hnext;       // next page in the same hash bucket (-1: end)
    int32_t prev, next;  // LRU neighbours while idle (-1: end)
    bool cached;
} kv_meta;

struct fg_kv_pages {
    int32_t n_pages;
    int32_t page_size;
    int32_t max_seqs;
    int32_t n_free;     // pages on the free list (idle cached pages are not on it)
    int32_t n_live;
    int32_t *free_list; // [n_pages] stack of free page ids, top at n_free - 1
    int32_t *refs;      // [n_pages] number of sequences holding each page (0: free or idle)
    kv_seq *seqs;       // [max_seqs]
    // prefix cache (NULL meta: off)
    kv_meta *meta;      // [n_pages]
    int32_t *toks;      // [n_pages][page_size] tokens of each cached page
    int32_t *buckets;   // [bucket_mask + 1] first page of each hash bucket (-1: empty)
    uint64_t bucket_mask;
    uint64_t seed;      // chain root: the model identity
    fg_kv_hash_fn hash_fn;
    int32_t lru_head, lru_tail; // idle cached pages, least recently used at the head
    int32_t n_idle;     // cached pages no sequence holds (on the LRU list)
    int32_t n_cached;   // cached pages, held or idle
    uint64_t evictions;
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
    free(p->meta);
    free(p->toks);
    free(p->buckets);
    free(p);
}

// ---- prefix cache internals
uint64_t fg_kv_hash_tokens(uint64_t parent, const int32_t *tokens, int32_t n) {
    // 64-bit multiply-xorshift mixing per token, splitmix64's finalizer at the end; fast and
    // well spread, not collision-resistant: matches compare tokens and parents as well
    uint64_t h = parent ^ 0x9E3779B97F4A7C15ull ^ (uint64_t)(uint32_t)n;
    for (int32_t i = 0; i < n; i++) {
        h ^= (uint64_t)(uint32_t)tokens[i];
        h *= 0xFF51AFD7ED558CCDull;
        h ^= h >> 32;
    }
    h ^= h >> 30;
    h *= 0xBF58476D1CE4E5B9ull;
    h ^= h >> 27;
    h *= 0x94D049BB133111EBull;
    h ^= h >> 31;
    return h;
}

static void lru_unlink(fg_kv_pages *p, int32_t pg) {
    kv_meta *m = &p->meta[pg];
    if (m->prev >= 0)
        p->meta[m->prev].next = m->next;
    else
        p->lru_head = m->next;
    if (m->next >= 0)
        p->meta[m->next].prev = m->prev;
    else
        p->lru_tail = m->prev;
    m->prev = m->next = -1;
    p->n_idle--;
}

static void lru_push_back(fg_kv_pages *p, int32_t pg) {
    kv_meta *m = &p->meta[pg];
    m->prev = p->lru_tail;
    m->next = -1;
    if (p->lru_tail >= 0)
        p->meta[p->lru_tail].next = pg;
    else
        p->lru_head = pg;
    p->lru_tail = pg;
    p->n_idle++;
}

// Drops an idle cached page from the cache (hash bucket and LRU list); it becomes plain.
static void uncache(fg_kv_pages *p, int32_t pg) {
    kv_meta *m = &p->meta[pg];
    FG_ASSERT(m->cached && p->refs[pg] == 0);
    int32_t *link = &p->buckets[m->hash & p->bucket_mask];
    while (*link != pg) {
        FG_ASSERT(*link >= 0);
        link = &p->meta[*link].hnext;
    }
    *link = m->hnext;
    m->hnext = -1;
    lru_unlink(p, pg);
    m->cached = false;
    m->gen++;
    p->n_cached--;
    p->evictions++;
}

// The cached page holding tokens[0..page_size) after `parent` (-1: at the start), or -1.
static int32_t find_cached(const fg_kv_pages *p, uint64_t h, int32_t parent,
                           const int32_t *tokens) {
    for (int32_t pg = p->buckets[h & p->bucket_mask]; pg >= 0; pg = p->meta[pg].hnext) {
        const kv_meta *m = &p->meta[pg];
        if (m->hash != h || m->parent != parent)
            continue;
        if (parent >= 0 && m->parent_gen != p->meta[parent].gen)
            continue;
        if (memcmp(p->toks + (size_t)pg * (size_t)p->page_size, tokens,
                   (size_t)p->page_size * sizeof *tokens) != 0)
            continue; // a hash collision
        return pg;
    }
    return -1;
}

static uint64_t chain_hash(const fg_kv_pages *p, int32_t parent) {
    return parent >= 0 ? p->meta[parent].hash : p->seed;
}

fg_status fg_kv_pages_enable_prefix_cache(fg_kv_pages *p, uint64_t model_id,
                                          fg_kv_hash_fn hash_fn) {
    if (p->meta)
        return FG_FAIL(FG_ERR_INVALID_ARG, "kv pages: the prefix cache is already on");
    if (p->n_live > 0 || p->n_free != p->n_pages)
        return FG_FAIL(FG_ERR_INVALID_ARG,
                       "kv pages: prefix cache: enable it before any sequence (%d live, %d of "
                       "%d pages free)",
                       (int)p->n_live, (int)p->n_free, (int)p->n_pages);
    uint64_t nb = 16;
    while (nb < (uint64_t)p->n_pages)
        nb *= 2;
    size_t n_toks;
    if (!fg_mul_size((size_t)p->n_pages, (size_t)p->page_size, &n_toks))
        return FG_FAIL(FG_ERR_INVALID_ARG, "kv pages: prefix cache: token table size overflows");
    kv_meta *meta = calloc((size_t)p->n_pages, sizeof *meta);
    int32_t *toks = malloc(n_toks * sizeof *toks);
    int32_t *buckets = malloc((size_t)nb * sizeof *buckets);
    if (!meta || !toks || !buckets) {
        free(meta);
        free(toks);
        free(buckets);
        return FG_FAIL(FG_ERR_NOMEM, "kv pages: out of memory for the prefix cache of %d pages",
                       (int)p->n_pages);
    }
    for (int32_t i = 0; i < p->n_pages; i++)
        meta[i].parent = meta[i].hnext = meta[i].prev = meta[i].next = -1;
    for (uint64_t i = 0; i < nb; i++)
        buckets[i] = -1;
    p->meta = meta;
    p->toks = toks;
    p->buckets = buckets;
    p->bucket_mask = nb - 1;
    p->seed = model_id;
    p->hash_fn = hash_fn ? hash_fn : fg_kv_hash_tokens;
    p->lru_head = p->lru_tail = -1;
    return FG_OK;
}

bool fg_kv_pages_prefix_cache_on(const fg_kv_pages *p) { return p->meta != NULL; }

void fg_kv_pages_cache_info(const fg_kv_pages *p, fg_kv_cache_info *out) {
    out->pages = p->n_cached;
    out->idle = p->n_idle;
    out->evictions = p->evictions;
}

int32_t fg_kv_pages_page_size(const fg_kv_pages *p) { return p->page_size; }
int32_t fg_kv_pages_n_free(const fg_kv_pages *p) { return p->n_free + p->n_idle; }
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

// Drops one holder; a page nobody holds goes back to the free list, or, when cached, to the
// most recently used end of the LRU list.
static void unref(fg_kv_pages *p, int32_t page) {
    FG_ASSERT(p->refs[page] > 0);
    if (--p->refs[page] > 0)
        return;
    if (p->meta && p->meta[page].cached)
        lru_push_back(p, page);
    else
        p->free_list[p->n_free++] = page;
}

// One more holder of a cached page (taking an idle one off the LRU list).
static void ref_cached(fg_kv_pages *p, int32_t page) {
    if (p->refs[page]++ == 0)
        lru_unlink(p, page);
}

// A page for new content: from the free list, else the least recently used idle cached page
// is evicted. The caller has checked fg_kv_pages_n_free.
static int32_t take(fg_kv_pages *p) {
    int32_t page;
    if (p->n_free > 0) {
        page = p->free_list[--p->n_free];
    } else {
        FG_ASSERT(p->n_idle > 0);
        page = p->lru_head;
        uncache(p, page);
    }
    FG_ASSERT(p->refs[page] == 0);
    p->refs[page] = 1;
    return page;
}

// A page a sequence must not write in place: shared with another sequence, or cached (its
// content is what later lookups will map).
static bool read_only(const fg_kv_pages *p, int32_t page) {
    return p->refs[page] > 1 || (p->meta && p->meta[page].cached);
}

fg_status fg_kv_seq_new(fg_kv_pages *p, int32_t *seq) {
    for (int32_t i = 0; i < p->max_seqs; i++) {
        kv_seq *s = &p->seqs[i];
        if (!s->live) {
            s->live = true;
            s->len = 0;
            s->n_pages = 0;
            s->n_pub = 0;
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
    if (need > fg_kv_pages_n_free(p))
        return FG_FAIL(FG_ERR_CAPACITY,
                       "kv pages: sequence %d needs %d more pages for %d tokens, %d free",
                       (int)seq, (int)need, (int)n, (int)fg_kv_pages_n_free(p));
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
    for (int32_t i = s->n_pages - 1; i >= want; i--) // last first: LRU keeps children older
        unref(p, s->pages[i]);
    s->n_pages = want;
    s->len = n;
    s->n_pub = FG_MIN(s->n_pub, n / p->page_size);
    return FG_OK;
}

void fg_kv_seq_free(fg_kv_pages *p, int32_t seq) {
    kv_seq *s = get_seq(p, seq);
    if (!s)
        return;
    // last page first: an idle child page always sits nearer the LRU head than its parent,
    // so eviction takes leaves and never strands a cached page whose parent is gone
    for (int32_t i = s->n_pages - 1; i >= 0; i--)
        unref(p, s->pages[i]);
    s->n_pages = 0;
    s->len = 0;
    s->n_pub = 0;
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
    t->n_pub = s->n_pub;
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
        if (read_only(p, s->pages[i]))
            shared++;
    if (shared > cap_copies)
        return FG_FAIL(FG_ERR_INVALID_ARG,
                       "kv pages: prepare_write: sequence %d needs %d copies, room for %d",
                       (int)seq, (int)shared, (int)cap_copies);
    if (shared > fg_kv_pages_n_free(p))
        return FG_FAIL(FG_ERR_CAPACITY,
                       "kv pages: prepare_write: sequence %d needs %d pages to copy into, %d free",
                       (int)seq, (int)shared, (int)fg_kv_pages_n_free(p));
    // take every new page first (the old ones are still held, so none of them is evicted
    // before the caller copies it), then release the old ones last first
    int32_t k = 0;
    for (int32_t i = first; i < s->n_pages; i++) {
        int32_t old = s->pages[i];
        if (!read_only(p, old))
            continue;
        int32_t np = take(p);
        s->pages[i] = np;
        copies[2 * k] = np;
        copies[2 * k + 1] = old;
        k++;
    }
    for (int32_t j = k - 1; j >= 0; j--)
        unref(p, copies[2 * j + 1]);
    if (k > 0)
        s->n_pub = FG_MIN(s->n_pub, first);
    *n_copies = k;
    return FG_OK;
}

// ---- prefix cache: lookup, mapping, publishing
int32_t fg_kv_pages_lookup_prefix(const fg_kv_pages *p, const int32_t *tokens, int32_t n,
                                  int32_t *n_idle) {
    int32_t idle = 0, k = 0;
    if (p->meta && tokens) {
        int32_t parent = -1;
        for (; (int64_t)(k + 1) * p->page_size <= n; k++) {
            const int32_t *t = tokens + (size_t)k * (size_t)p->page_size;
            uint64_t h = p->hash_fn(chain_hash(p, parent), t, p->page_size);
            int32_t pg = find_cached(p, h, parent, t);
            if (pg < 0)
                break;
            idle += p->refs[pg] == 0;
            parent = pg;
        }
    }
    if (n_idle)
        *n_idle = idle;
    return k * p->page_size;
}

fg_status fg_kv_seq_map_prefix(fg_kv_pages *p, int32_t seq, const int32_t *tokens, int32_t n,
                               int32_t *n_mapped) {
    kv_seq *s = get_seq(p, seq);
    if (!s || s->len != 0)
        return FG_FAIL(FG_ERR_INVALID_ARG,
                       "kv pages: map_prefix: sequence %d is not live and empty", (int)seq);
    if (n < 0 || (n > 0 && !tokens))
        return FG_FAIL(FG_ERR_INVALID_ARG, "kv pages: map_prefix: bad token count %d", (int)n);
    int32_t k = fg_kv_pages_lookup_prefix(p, tokens, n, NULL) / p->page_size;
    FG_TRY(reserve(s, k));
    int32_t parent = -1;
    for (int32_t i = 0; i < k; i++) {
        const int32_t *t = tokens + (size_t)i * (size_t)p->page_size;
        uint64_t h = p->hash_fn(chain_hash(p, parent), t, p->page_size);
        int32_t pg = find_cached(p, h, parent, t);
        FG_ASSERT(pg >= 0); // found by the lookup just above
        ref_cached(p, pg);
        s->pages[i] = pg;
        parent = pg;
    }
    s->n_pages = k;
    s->len = k * p->page_size;
    s->n_pub = k;
    *n_mapped = s->len;
    return FG_OK;
}

fg_status fg_kv_seq_publish(fg_kv_pages *p, int32_t seq, const int32_t *tokens, int32_t n) {
    kv_seq *s = get_seq(p, seq);
    if (!s)
        return FG_FAIL(FG_ERR_INVALID_ARG, "kv pages: publish: sequence %d is not live",
                       (int)seq);
    if (n < 0 || n > s->len || (n > 0 && !tokens))
        return FG_FAIL(FG_ERR_INVALID_ARG,
                       "kv pages: publish: sequence %d: %d tokens, its length is %d", (int)seq,
                       (int)n, (int)s->len);
    if (!p->meta)
        return FG_OK;
    int32_t full = n / p->page_size;
    for (int32_t i = s->n_pub; i < full; i++) {
        int32_t parent = i > 0 ? s->pages[i - 1] : -1;
        const int32_t *t = tokens + (size_t)i * (size_t)p->page_size;
        uint64_t h = p->hash_fn(chain_hash(p, parent), t, p->page_size);
        int32_t pg = s->pages[i];
        kv_meta *m = &p->meta[pg];
        if (m->cached) { // mapped, then truncated into and refilled without a write
            if (find_cached(p, h, parent, t) != pg)
                return FG_FAIL(FG_ERR_INVALID_ARG,
                               "kv pages: publish: sequence %d: cached page %d at index %d holds "
                               "other tokens (write through fg_kv_seq_prepare_write)",
                               (int)seq, (int)pg, (int)i);
            s->n_pub = i + 1;
            continue;
        }
        int32_t have = find_cached(p, h, parent, t);
        if (have >= 0) { // the same content is cached already: share it, drop this copy
            ref_cached(p, have);
            s->pages[i] = have;
            unref(p, pg);
        } else {
            m->hash = h;
            m->parent = parent;
            m->parent_gen = parent >= 0 ? p->meta[parent].gen : 0;
            memcpy(p->toks + (size_t)pg * (size_t)p->page_size, t,
                   (size_t)p->page_size * sizeof *t);
            int32_t *b = &p->buckets[h & p->bucket_mask];
            m->hnext = *b;
            *b = pg;
            m->cached = true;
            p->n_cached++;
        }
        s->n_pub = i + 1;
    }
    return FG_OK;
}

// Checks the prefix-cache side of the invariants; cnt[pg] holds the number of sequences
// holding pg, -1 for pages on the free list.
static fg_status check_cache(const fg_kv_pages *p, const int32_t *cnt, int32_t *pos) {
    // pos[pg]: place on the LRU list (0 = least recently used), -1 when not on it
    for (int32_t pg = 0; pg < p->n_pages; pg++)
        pos[pg] = -1;
    int32_t n = 0, prev = -1;
    for (int32_t pg = p->lru_head; pg >= 0; pg = p->meta[pg].next) {
        if (pg >= p->n_pages || n >= p->n_pages || pos[pg] >= 0)
            return FG_FAIL(FG_ERR_FORMAT, "kv pages: LRU list: page %d out of range or a cycle",
                           (int)pg);
        const kv_meta *m = &p->meta[pg];
        if (m->prev != prev)
            return FG_FAIL(FG_ERR_FORMAT, "kv pages: LRU list: page %d's prev is %d, not %d",
                           (int)pg, (int)m->prev, (int)prev);
        if (!m->cached || p->refs[pg] != 0 || cnt[pg] != 0)
            return FG_FAIL(FG_ERR_FORMAT,
                           "kv pages: LRU page %d: cached %d, refcount %d, held by %d, free %d",
                           (int)pg, (int)m->cached, (int)p->refs[pg], (int)FG_MAX(cnt[pg], 0),
                           (int)(cnt[pg] < 0));
        pos[pg] = n++;
        prev = pg;
    }
    if (prev != p->lru_tail || n != p->n_idle)
        return FG_FAIL(FG_ERR_FORMAT, "kv pages: LRU list: %d pages ending at %d, recorded %d "
                       "ending at %d", (int)n, (int)prev, (int)p->n_idle, (int)p->lru_tail);
    // every cached page once in the bucket its hash picks
    int32_t in_table = 0;
    for (uint64_t b = 0; b <= p->bucket_mask; b++) {
        int32_t steps = 0;
        for (int32_t pg = p->buckets[b]; pg >= 0; pg = p->meta[pg].hnext) {
            if (pg >= p->n_pages || ++steps > p->n_pages)
                return FG_FAIL(FG_ERR_FORMAT, "kv pages: hash bucket %llu: bad page %d or a "
                               "cycle", (unsigned long long)b, (int)pg);
            if (!p->meta[pg].cached || (p->meta[pg].hash & p->bucket_mask) != b)
                return FG_FAIL(FG_ERR_FORMAT, "kv pages: hash bucket %llu holds page %d "
                               "(cached %d)", (unsigned long long)b, (int)pg,
                               (int)p->meta[pg].cached);
            in_table++;
        }
    }
    int32_t n_cached = 0;
    for (int32_t pg = 0; pg < p->n_pages; pg++) {
        const kv_meta *m = &p->meta[pg];
        if (!m->cached) {
            if (pos[pg] >= 0)
                return FG_FAIL(FG_ERR_FORMAT, "kv pages: page %d is on the LRU list, not cached",
                               (int)pg);
            continue;
        }
        n_cached++;
        if (cnt[pg] < 0)
            return FG_FAIL(FG_ERR_FORMAT, "kv pages: cached page %d is on the free list", (int)pg);
        if (cnt[pg] == 0 && pos[pg] < 0)
            return FG_FAIL(FG_ERR_FORMAT, "kv pages: cached page %d is held by nobody and not "
                           "on the LRU list", (int)pg);
        const int32_t *t = p->toks + (size_t)pg * (size_t)p->page_size;
        if (m->hash != p->hash_fn(chain_hash(p, m->parent), t, p->page_size))
            return FG_FAIL(FG_ERR_FORMAT, "kv pages: cached page %d: hash does not match its "
                           "tokens and parent %d", (int)pg, (int)m->parent);
        if (m->parent >= 0) {
            const kv_meta *pm = &p->meta[m->parent];
            if (m->parent >= p->n_pages || !pm->cached || pm->gen != m->parent_gen)
                return FG_FAIL(FG_ERR_FORMAT, "kv pages: cached page %d: parent %d left the "
                               "cache", (int)pg, (int)m->parent);
            if (pos[pg] < 0 && cnt[m->parent] <= 0)
                return FG_FAIL(FG_ERR_FORMAT, "kv pages: cached page %d is held, its parent %d "
                               "is not", (int)pg, (int)m->parent);
            if (pos[pg] >= 0 && pos[m->parent] >= 0 && pos[m->parent] < pos[pg])
                return FG_FAIL(FG_ERR_FORMAT, "kv pages: LRU list: parent %d before its child %d",
                               (int)m->parent, (int)pg);
        }
    }
    if (n_cached != p->n_cached || in_table != n_cached)
        return FG_FAIL(FG_ERR_FORMAT, "kv pages: %d cached pages, %d recorded, %d in the hash "
                       "table", (int)n_cached, (int)p->n_cached, (int)in_table);
    return FG_OK;
}

fg_status fg_kv_pages_check(const fg_kv_pages *p) {
    int32_t *cnt = calloc((size_t)p->n_pages, sizeof *cnt);
    int32_t *pos = malloc((size_t)p->n_pages * sizeof *pos);
    if (!cnt || !pos) {
        free(cnt);
        free(pos);
        return FG_FAIL(FG_ERR_NOMEM, "kv pages: check: out of memory");
    }
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
        if (s->n_pub < 0 || s->n_pub > s->len / p->page_size || (!p->meta && s->n_pub)) {
            st = FG_FAIL(FG_ERR_FORMAT, "kv pages: sequence %d: %d cached pages for length %d",
                         (int)i, (int)s->n_pub, (int)s->len);
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
            if (j < s->n_pub) { // the published chain: cached, each page's parent before it
                const kv_meta *m = &p->meta[pg];
                int32_t parent = j > 0 ? s->pages[j - 1] : -1;
                if (!m->cached || m->parent != parent ||
                    (parent >= 0 && m->parent_gen != p->meta[parent].gen)) {
                    st = FG_FAIL(FG_ERR_FORMAT, "kv pages: sequence %d: page %d at %d is not "
                                 "the cached child of page %d", (int)i, (int)pg, (int)j,
                                 (int)parent);
                    break;
                }
            }
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
    if (st == FG_OK && p->meta)
        st = check_cache(p, cnt, pos);
    int32_t n_free = 0, n_idle = 0;
    for (int32_t pg = 0; pg < p->n_pages && st == FG_OK; pg++) {
        if (cnt[pg] == -1) {
            n_free++;
            continue;
        }
        if (cnt[pg] == 0) {
            if (p->meta && pos[pg] >= 0) {
                n_idle++;
                continue;
            }
            st = FG_FAIL(FG_ERR_FORMAT, "kv pages: page %d is neither free, cached nor owned",
                         (int)pg);
        } else if (cnt[pg] != p->refs[pg]) {
            st = FG_FAIL(FG_ERR_FORMAT, "kv pages: page %d: refcount %d, held by %d sequences",
                         (int)pg, (int)p->refs[pg], (int)cnt[pg]);
        }
    }
    if (st == FG_OK && n_free != p->n_free)
        st = FG_FAIL(FG_ERR_FORMAT, "kv pages: %d free pages, free list holds %d", (int)n_free,
                     (int)p->n_free);
    if (st == FG_OK && n_idle != p->n_idle)
        st = FG_FAIL(FG_ERR_FORMAT, "kv pages: %d idle cached pages, %d recorded", (int)n_idle,
                     (int)p->n_idle);
    free(pos);
    free(cnt);
    return st;
}
