// test_kv_pages.c - the KV page allocator: page boundaries, truncation, exhaustion (nothing
// changed), reuse, fork + copy-on-write, max_seqs, and random operation sequences checked
// against a simple model of the page tables (every page free or owned; refcounts = holders).
// The prefix cache: lookup / map / publish, copy-on-write of cached pages, de-duplication,
// LRU eviction (children before parents), forced hash collisions, and a random workload of
// shared and unshared prompts whose simulated KV contents are checked after every step.
// forge-test-modules: engine base
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "forge/engine.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static fg_kv_pages *mk(int32_t n_pages, int32_t page_size, int32_t max_seqs) {
    fg_kv_pages *p = NULL;
    assert_int_equal(fg_kv_pages_create(n_pages, page_size, max_seqs, &p), FG_OK);
    assert_non_null(p);
    return p;
}

static void check(const fg_kv_pages *p) {
    fg_status st = fg_kv_pages_check(p);
    if (st != FG_OK)
        fail_msg("invariant: %s", fg_last_error());
}

static void test_create_args(void **state) {
    (void)state;
    fg_kv_pages *p = NULL;
    assert_int_equal(fg_kv_pages_create(0, 16, 4, &p), FG_ERR_INVALID_ARG);
    assert_string_equal(fg_last_error(),
                        "kv pages: n_pages 0, page_size 16, max_seqs 4: each must be > 0");
    assert_int_equal(fg_kv_pages_create(4, -1, 4, &p), FG_ERR_INVALID_ARG);
    assert_null(p);
    fg_kv_pages_destroy(NULL);
}

static void test_append_exact_page(void **state) {
    (void)state;
    fg_kv_pages *p = mk(8, 16, 4);
    int32_t s;
    assert_int_equal(fg_kv_seq_new(p, &s), FG_OK);
    assert_int_equal(fg_kv_seq_n_pages(p, s), 0);
    assert_int_equal(fg_kv_seq_pages_needed(p, s, 16), 1);
    assert_int_equal(fg_kv_seq_append(p, s, 16), FG_OK);
    assert_int_equal(fg_kv_seq_len(p, s), 16);
    assert_int_equal(fg_kv_seq_n_pages(p, s), 1);
    assert_int_equal(fg_kv_pages_n_free(p), 7);
    // the 17th token takes a second page
    assert_int_equal(fg_kv_seq_pages_needed(p, s, 1), 1);
    assert_int_equal(fg_kv_seq_append(p, s, 1), FG_OK);
    assert_int_equal(fg_kv_seq_n_pages(p, s), 2);
    assert_int_equal(fg_kv_seq_pages_needed(p, s, 15), 0);
    assert_int_equal(fg_kv_seq_append(p, s, 0), FG_OK);
    assert_int_equal(fg_kv_seq_n_pages(p, s), 2);
    check(p);
    fg_kv_pages_destroy(p);
}

static void test_cross_boundaries(void **state) {
    (void)state;
    fg_kv_pages *p = mk(16, 4, 2);
    int32_t s;
    assert_int_equal(fg_kv_seq_new(p, &s), FG_OK);
    int32_t len = 0;
    const int32_t steps[] = {1, 2, 3, 5, 1, 7, 4};
    for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++) {
        assert_int_equal(fg_kv_seq_append(p, s, steps[i]), FG_OK);
        len += steps[i];
        assert_int_equal(fg_kv_seq_len(p, s), len);
        assert_int_equal(fg_kv_seq_n_pages(p, s), (len + 3) / 4);
        check(p);
    }
    // first pages come out in order 0, 1, 2, ... and are distinct
    const int32_t *pt = fg_kv_seq_pages(p, s);
    for (int32_t i = 0; i < fg_kv_seq_n_pages(p, s); i++)
        assert_int_equal(pt[i], i);
    fg_kv_pages_destroy(p);
}

static void test_truncate_frees(void **state) {
    (void)state;
    fg_kv_pages *p = mk(10, 8, 2);
    int32_t s;
    assert_int_equal(fg_kv_seq_new(p, &s), FG_OK);
    assert_int_equal(fg_kv_seq_append(p, s, 40), FG_OK); // 5 pages
    assert_int_equal(fg_kv_pages_n_free(p), 5);
    assert_int_equal(fg_kv_seq_truncate(p, s, 17), FG_OK); // 3 pages
    assert_int_equal(fg_kv_seq_n_pages(p, s), 3);
    assert_int_equal(fg_kv_pages_n_free(p), 7);
    assert_int_equal(fg_kv_seq_truncate(p, s, 16), FG_OK); // 2 pages exactly
    assert_int_equal(fg_kv_seq_n_pages(p, s), 2);
    assert_int_equal(fg_kv_seq_truncate(p, s, 17), FG_ERR_INVALID_ARG);
    assert_string_equal(fg_last_error(), "kv pages: truncate sequence 0 to 17: length is 16");
    assert_int_equal(fg_kv_seq_truncate(p, s, 0), FG_OK);
    assert_int_equal(fg_kv_seq_n_pages(p, s), 0);
    assert_int_equal(fg_kv_pages_n_free(p), 10);
    check(p);
    fg_kv_pages_destroy(p);
}

static void test_exhaustion_changes_nothing(void **state) {
    (void)state;
    fg_kv_pages *p = mk(4, 16, 4);
    int32_t a, b;
    assert_int_equal(fg_kv_seq_new(p, &a), FG_OK);
    assert_int_equal(fg_kv_seq_new(p, &b), FG_OK);
    assert_int_equal(fg_kv_seq_append(p, a, 40), FG_OK); // 3 pages
    assert_int_equal(fg_kv_seq_append(p, b, 17), FG_ERR_CAPACITY); // would need 2
    assert_string_equal(fg_last_error(),
                        "kv pages: sequence 1 needs 2 more pages for 17 tokens, 1 free");
    assert_int_equal(fg_kv_seq_len(p, b), 0);
    assert_int_equal(fg_kv_seq_n_pages(p, b), 0);
    assert_int_equal(fg_kv_pages_n_free(p), 1);
    assert_int_equal(fg_kv_seq_append(p, a, 25), FG_ERR_CAPACITY); // 65 tokens: 5 pages
    assert_int_equal(fg_kv_seq_len(p, a), 40);
    assert_int_equal(fg_kv_seq_append(p, a, 8), FG_OK); // 48 tokens: 3 pages, fits
    assert_int_equal(fg_kv_seq_append(p, b, 16), FG_OK); // last page
    assert_int_equal(fg_kv_pages_n_free(p), 0);
    assert_int_equal(fg_kv_seq_append(p, b, 1), FG_ERR_CAPACITY);
    assert_int_equal(fg_kv_seq_append(p, b, -1), FG_ERR_INVALID_ARG);
    assert_int_equal(fg_kv_seq_append(p, 3, 1), FG_ERR_INVALID_ARG);
    assert_string_equal(fg_last_error(), "kv pages: append: sequence 3 is not live");
    check(p);
    fg_kv_pages_destroy(p);
}

static void test_reuse_after_free(void **state) {
    (void)state;
    fg_kv_pages *p = mk(4, 2, 4);
    int32_t a, b;
    assert_int_equal(fg_kv_seq_new(p, &a), FG_OK);
    assert_int_equal(fg_kv_seq_append(p, a, 8), FG_OK);
    assert_int_equal(fg_kv_pages_n_free(p), 0);
    assert_int_equal(fg_kv_seq_new(p, &b), FG_OK);
    assert_int_equal(fg_kv_seq_append(p, b, 1), FG_ERR_CAPACITY);
    fg_kv_seq_free(p, a);
    assert_int_equal(fg_kv_pages_n_free(p), 4);
    assert_int_equal(fg_kv_pages_n_seqs(p), 1);
    assert_int_equal(fg_kv_seq_append(p, b, 8), FG_OK);
    assert_int_equal(fg_kv_pages_n_free(p), 0);
    // freed sequence ids are reused too
    int32_t c;
    assert_int_equal(fg_kv_seq_new(p, &c), FG_OK);
    assert_int_equal(c, a);
    fg_kv_seq_free(p, 99); // unknown: no-op
    check(p);
    fg_kv_pages_destroy(p);
}

static void test_max_seqs(void **state) {
    (void)state;
    fg_kv_pages *p = mk(8, 4, 3);
    int32_t s[3], x;
    for (int i = 0; i < 3; i++) {
        assert_int_equal(fg_kv_seq_new(p, &s[i]), FG_OK);
        assert_int_equal(s[i], i);
    }
    assert_int_equal(fg_kv_seq_new(p, &x), FG_ERR_CAPACITY);
    assert_string_equal(fg_last_error(), "kv pages: all 3 sequences are in use");
    assert_int_equal(fg_kv_seq_fork(p, s[0], &x), FG_ERR_CAPACITY);
    fg_kv_seq_free(p, s[1]);
    assert_int_equal(fg_kv_seq_new(p, &x), FG_OK);
    assert_int_equal(x, 1);
    check(p);
    fg_kv_pages_destroy(p);
}

static void test_fork_cow(void **state) {
    (void)state;
    fg_kv_pages *p = mk(8, 4, 4);
    int32_t a, b;
    assert_int_equal(fg_kv_seq_new(p, &a), FG_OK);
    assert_int_equal(fg_kv_seq_append(p, a, 10), FG_OK); // pages 0,1,2 (last half full)
    assert_int_equal(fg_kv_seq_fork(p, a, &b), FG_OK);
    assert_int_equal(fg_kv_seq_len(p, b), 10);
    assert_int_equal(fg_kv_pages_n_free(p), 5);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(fg_kv_seq_pages(p, b)[i], fg_kv_seq_pages(p, a)[i]);
        assert_int_equal(fg_kv_pages_refcount(p, i), 2);
    }
    check(p);
    // b appends 3 tokens: positions 10..12 -> writes into shared page 2, new page for 12
    assert_int_equal(fg_kv_seq_append(p, b, 3), FG_OK);
    int32_t copies[8], n_copies = -1;
    assert_int_equal(fg_kv_seq_prepare_write(p, b, 0, copies, 0, &n_copies), FG_ERR_INVALID_ARG);
    assert_string_equal(fg_last_error(),
                        "kv pages: prepare_write: sequence 1 needs 3 copies, room for 0");
    assert_int_equal(fg_kv_seq_prepare_write(p, b, 10, copies, 4, &n_copies), FG_OK);
    assert_int_equal(n_copies, 1);
    assert_int_equal(copies[1], 2);                           // src: the shared page
    assert_int_equal(copies[0], fg_kv_seq_pages(p, b)[2]);    // dst: b's new own page
    assert_int_not_equal(copies[0], 2);
    assert_int_equal(fg_kv_pages_refcount(p, 2), 1);
    assert_int_equal(fg_kv_pages_refcount(p, copies[0]), 1);
    assert_int_equal(fg_kv_seq_pages(p, a)[2], 2); // a untouched
    assert_int_equal(fg_kv_pages_refcount(p, 0), 2);
    check(p);
    // nothing shared from 10 on any more: no copies
    assert_int_equal(fg_kv_seq_prepare_write(p, b, 10, copies, 4, &n_copies), FG_OK);
    assert_int_equal(n_copies, 0);
    // freeing a keeps the shared pages alive for b
    fg_kv_seq_free(p, a);
    assert_int_equal(fg_kv_pages_refcount(p, 0), 1);
    assert_int_equal(fg_kv_pages_refcount(p, 2), 0);
    assert_int_equal(fg_kv_pages_n_free(p), 4);
    check(p);
    fg_kv_seq_free(p, b);
    assert_int_equal(fg_kv_pages_n_free(p), 8);
    check(p);
    fg_kv_pages_destroy(p);
}

static void test_cow_exhaustion(void **state) {
    (void)state;
    fg_kv_pages *p = mk(4, 4, 4);
    int32_t a, b;
    assert_int_equal(fg_kv_seq_new(p, &a), FG_OK);
    assert_int_equal(fg_kv_seq_append(p, a, 16), FG_OK);
    assert_int_equal(fg_kv_seq_fork(p, a, &b), FG_OK);
    int32_t copies[8], n = -1;
    assert_int_equal(fg_kv_seq_prepare_write(p, b, 0, copies, 4, &n), FG_ERR_CAPACITY);
    assert_int_equal(n, -1);
    for (int i = 0; i < 4; i++)
        assert_int_equal(fg_kv_pages_refcount(p, i), 2);
    // truncating a shared sequence only drops references
    assert_int_equal(fg_kv_seq_truncate(p, b, 4), FG_OK);
    assert_int_equal(fg_kv_pages_refcount(p, 0), 2);
    assert_int_equal(fg_kv_pages_refcount(p, 3), 1);
    assert_int_equal(fg_kv_pages_n_free(p), 0);
    check(p);
    fg_kv_pages_destroy(p);
}

// ---- random operations against a model
#define R_PAGES 24
#define R_PS 5
#define R_SEQS 6

typedef struct model_seq {
    bool live;
    int32_t len;
    int32_t n_pages;
    int32_t pages[R_PAGES];
} model_seq;

static uint64_t rnd_state;
static uint32_t rnd(uint32_t n) {
    rnd_state = rnd_state * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)(rnd_state >> 33) % n;
}

static int32_t model_used(const model_seq *m) {
    bool used[R_PAGES] = {0};
    int32_t u = 0;
    for (int s = 0; s < R_SEQS; s++)
        for (int i = 0; m[s].live && i < m[s].n_pages; i++)
            if (!used[m[s].pages[i]]) {
                used[m[s].pages[i]] = true;
                u++;
            }
    return u;
}

static int32_t model_refs(const model_seq *m, int32_t page) {
    int32_t r = 0;
    for (int s = 0; s < R_SEQS; s++)
        for (int i = 0; m[s].live && i < m[s].n_pages; i++)
            r += m[s].pages[i] == page;
    return r;
}

static void model_sync(const fg_kv_pages *p, model_seq *m, int32_t s) {
    m[s].len = fg_kv_seq_len(p, s);
    m[s].n_pages = fg_kv_seq_n_pages(p, s);
    if (m[s].n_pages > 0)
        memcpy(m[s].pages, fg_kv_seq_pages(p, s), (size_t)m[s].n_pages * sizeof(int32_t));
}

static void test_random_ops(void **state) {
    (void)state;
    const uint64_t seed = 20261121;
    printf("random kv ops: seed %llu\n", (unsigned long long)seed);
    rnd_state = seed;
    fg_kv_pages *p = mk(R_PAGES, R_PS, R_SEQS);
    model_seq m[R_SEQS];
    memset(m, 0, sizeof m);
    for (int it = 0; it < 20000; it++) {
        int32_t s = (int32_t)rnd(R_SEQS);
        int32_t free_before = R_PAGES - model_used(m);
        assert_int_equal(fg_kv_pages_n_free(p), free_before);
        switch (rnd(6)) {
        case 0: { // new
            int32_t id;
            int live = 0;
            for (int i = 0; i < R_SEQS; i++)
                live += m[i].live;
            fg_status st = fg_kv_seq_new(p, &id);
            assert_int_equal(st, live == R_SEQS ? FG_ERR_CAPACITY : FG_OK);
            if (st == FG_OK) {
                assert_false(m[id].live);
                m[id].live = true;
                model_sync(p, m, id);
                assert_int_equal(m[id].len, 0);
            }
            break;
        }
        case 1:
        case 2: { // append
            if (!m[s].live)
                break;
            int32_t n = (int32_t)rnd(13);
            int32_t need = (m[s].len + n + R_PS - 1) / R_PS - m[s].n_pages;
            model_seq before = m[s];
            fg_status st = fg_kv_seq_append(p, s, n);
            assert_int_equal(st, need <= free_before ? FG_OK : FG_ERR_CAPACITY);
            model_sync(p, m, s);
            if (st == FG_OK) {
                assert_int_equal(m[s].len, before.len + n);
                assert_memory_equal(m[s].pages, before.pages, (size_t)before.n_pages * 4);
            } else {
                assert_memory_equal(&m[s], &before, sizeof before);
            }
            break;
        }
        case 3: { // truncate
            if (!m[s].live)
                break;
            int32_t n = (int32_t)rnd((uint32_t)m[s].len + 1);
            assert_int_equal(fg_kv_seq_truncate(p, s, n), FG_OK);
            model_sync(p, m, s);
            assert_int_equal(m[s].len, n);
            break;
        }
        case 4: { // free or fork
            if (!m[s].live)
                break;
            if (rnd(2)) {
                fg_kv_seq_free(p, s);
                m[s].live = false;
            } else {
                int32_t d;
                fg_status st = fg_kv_seq_fork(p, s, &d);
                if (st == FG_OK) {
                    m[d].live = true;
                    model_sync(p, m, d);
                    assert_int_equal(m[d].len, m[s].len);
                    assert_memory_equal(m[d].pages, m[s].pages, (size_t)m[s].n_pages * 4);
                } else {
                    assert_int_equal(st, FG_ERR_CAPACITY);
                }
            }
            break;
        }
        case 5: { // prepare_write from a random position
            if (!m[s].live)
                break;
            int32_t from = (int32_t)rnd((uint32_t)m[s].len + 1);
            int32_t shared = 0;
            for (int32_t i = from / R_PS; i < m[s].n_pages; i++)
                shared += model_refs(m, m[s].pages[i]) > 1;
            int32_t copies[2 * R_PAGES], n = 0;
            fg_status st = fg_kv_seq_prepare_write(p, s, from, copies, R_PAGES, &n);
            assert_int_equal(st, shared <= free_before ? FG_OK : FG_ERR_CAPACITY);
            model_sync(p, m, s);
            if (st == FG_OK) {
                assert_int_equal(n, shared);
                for (int32_t i = from / R_PS; i < m[s].n_pages; i++)
                    assert_int_equal(model_refs(m, m[s].pages[i]), 1);
            }
            break;
        }
        }
        for (int32_t pg = 0; pg < R_PAGES; pg++)
            assert_int_equal(fg_kv_pages_refcount(p, pg), model_refs(m, pg));
        check(p);
    }
    for (int s = 0; s < R_SEQS; s++)
        fg_kv_seq_free(p, s);
    assert_int_equal(fg_kv_pages_n_free(p), R_PAGES);
    assert_int_equal(fg_kv_pages_n_seqs(p), 0);
    check(p);
    fg_kv_pages_destroy(p);
}


// ---- prefix cache
static void seq_tokens(int32_t *t, int32_t n, int32_t base) {
    for (int32_t i = 0; i < n; i++)
        t[i] = base + i;
}

static fg_kv_pages *mk_cached(int32_t n_pages, int32_t page_size, int32_t max_seqs,
                              fg_kv_hash_fn fn) {
    fg_kv_pages *p = mk(n_pages, page_size, max_seqs);
    assert_false(fg_kv_pages_prefix_cache_on(p));
    assert_int_equal(fg_kv_pages_enable_prefix_cache(p, 0x1234, fn), FG_OK);
    assert_true(fg_kv_pages_prefix_cache_on(p));
    assert_int_equal(fg_kv_pages_enable_prefix_cache(p, 0x1234, fn), FG_ERR_INVALID_ARG);
    return p;
}

static fg_kv_cache_info cinfo(const fg_kv_pages *p) {
    fg_kv_cache_info ci;
    fg_kv_pages_cache_info(p, &ci);
    return ci;
}

static void test_prefix_map_publish(void **state) {
    (void)state;
    fg_kv_pages *p = mk_cached(16, 4, 4, NULL);
    int32_t t[32];
    seq_tokens(t, 32, 100);
    int32_t a, b, n = -1, idle = -1;
    assert_int_equal(fg_kv_pages_lookup_prefix(p, t, 32, &idle), 0);
    assert_int_equal(fg_kv_seq_new(p, &a), FG_OK);
    assert_int_equal(fg_kv_seq_append(p, a, 10), FG_OK);
    // publishing needs the sequence's tokens; only full pages are published
    assert_int_equal(fg_kv_seq_publish(p, a, t, 11), FG_ERR_INVALID_ARG);
    assert_int_equal(fg_kv_seq_publish(p, a, t, 10), FG_OK);
    assert_int_equal(cinfo(p).pages, 2);
    assert_int_equal(cinfo(p).idle, 0);
    check(p);
    assert_int_equal(fg_kv_pages_lookup_prefix(p, t, 32, &idle), 8);
    assert_int_equal(idle, 0);
    assert_int_equal(fg_kv_pages_lookup_prefix(p, t, 7, NULL), 4); // full pages within n only
    int32_t u[32];
    memcpy(u, t, sizeof u);
    u[5] = 7; // second page differs
    assert_int_equal(fg_kv_pages_lookup_prefix(p, u, 32, NULL), 4);
    u[0] = 7; // first page differs: nothing, even though the second page's tokens match
    u[5] = t[5];
    assert_int_equal(fg_kv_pages_lookup_prefix(p, u, 32, NULL), 0);
    // b maps a's two pages: shared, refcount 2
    assert_int_equal(fg_kv_seq_new(p, &b), FG_OK);
    assert_int_equal(fg_kv_seq_map_prefix(p, b, t, 32, &n), FG_OK);
    assert_int_equal(n, 8);
    assert_int_equal(fg_kv_seq_len(p, b), 8);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(fg_kv_seq_pages(p, b)[i], fg_kv_seq_pages(p, a)[i]);
        assert_int_equal(fg_kv_pages_refcount(p, fg_kv_seq_pages(p, a)[i]), 2);
    }
    assert_int_equal(fg_kv_seq_map_prefix(p, b, t, 32, &n), FG_ERR_INVALID_ARG); // not empty
    check(p);
    // a ends: its cached pages stay held by b, its partial page is freed
    fg_kv_seq_free(p, a);
    assert_int_equal(fg_kv_pages_n_free(p), 14);
    check(p);
    // b ends: the cached pages become idle, still counted as free (evictable)
    fg_kv_seq_free(p, b);
    assert_int_equal(fg_kv_pages_n_free(p), 16);
    assert_int_equal(cinfo(p).pages, 2);
    assert_int_equal(cinfo(p).idle, 2);
    assert_int_equal(fg_kv_pages_lookup_prefix(p, t, 32, &idle), 8);
    assert_int_equal(idle, 2);
    check(p);
    // mapping idle pages takes them off the LRU list
    assert_int_equal(fg_kv_seq_new(p, &a), FG_OK);
    assert_int_equal(fg_kv_seq_map_prefix(p, a, t, 6, &n), FG_OK);
    assert_int_equal(n, 4);
    assert_int_equal(cinfo(p).idle, 1);
    assert_int_equal(fg_kv_pages_n_free(p), 15);
    check(p);
    fg_kv_seq_free(p, a);
    check(p);
    fg_kv_pages_destroy(p);
}

static void test_prefix_cow_and_dedupe(void **state) {
    (void)state;
    fg_kv_pages *p = mk_cached(8, 4, 4, NULL);
    int32_t t[8];
    seq_tokens(t, 8, 7);
    int32_t a, b, n;
    assert_int_equal(fg_kv_seq_new(p, &a), FG_OK);
    assert_int_equal(fg_kv_seq_append(p, a, 8), FG_OK);
    assert_int_equal(fg_kv_seq_publish(p, a, t, 8), FG_OK);
    int32_t pa0 = fg_kv_seq_pages(p, a)[0], pa1 = fg_kv_seq_pages(p, a)[1];
    fg_kv_seq_free(p, a);
    // the whole prompt is cached: map it, step back one token, recompute it into a copy
    assert_int_equal(fg_kv_seq_new(p, &b), FG_OK);
    assert_int_equal(fg_kv_seq_map_prefix(p, b, t, 8, &n), FG_OK);
    assert_int_equal(n, 8);
    assert_int_equal(fg_kv_seq_truncate(p, b, 7), FG_OK);
    assert_int_equal(fg_kv_seq_n_pages(p, b), 2);
    check(p);
    assert_int_equal(fg_kv_seq_append(p, b, 1), FG_OK);
    int32_t copies[4], nc = -1;
    // a cached page held by one sequence only is still read-only: it is copied
    assert_int_equal(fg_kv_pages_refcount(p, pa1), 1);
    assert_int_equal(fg_kv_seq_prepare_write(p, b, 7, copies, 2, &nc), FG_OK);
    assert_int_equal(nc, 1);
    assert_int_equal(copies[1], pa1);
    assert_int_not_equal(copies[0], pa1);
    assert_int_equal(fg_kv_pages_refcount(p, pa1), 0); // idle in the cache again
    assert_int_equal(cinfo(p).idle, 1);
    check(p);
    // publishing the recomputed page finds the cached one: b switches back, the copy is freed
    assert_int_equal(fg_kv_seq_publish(p, b, t, 8), FG_OK);
    assert_int_equal(fg_kv_seq_pages(p, b)[0], pa0);
    assert_int_equal(fg_kv_seq_pages(p, b)[1], pa1);
    assert_int_equal(fg_kv_pages_refcount(p, copies[0]), 0);
    assert_int_equal(cinfo(p).pages, 2);
    assert_int_equal(fg_kv_pages_n_free(p), 6);
    check(p);
    fg_kv_seq_free(p, b);
    // two sequences computing the same tokens side by side: the second to publish shares
    int32_t c, d;
    assert_int_equal(fg_kv_seq_new(p, &c), FG_OK);
    assert_int_equal(fg_kv_seq_new(p, &d), FG_OK);
    int32_t u[8];
    seq_tokens(u, 8, 50);
    assert_int_equal(fg_kv_seq_append(p, c, 6), FG_OK);
    assert_int_equal(fg_kv_seq_append(p, d, 6), FG_OK);
    int32_t dp0 = fg_kv_seq_pages(p, d)[0];
    assert_int_equal(fg_kv_seq_publish(p, c, u, 6), FG_OK);
    assert_int_equal(fg_kv_seq_publish(p, d, u, 6), FG_OK);
    assert_int_equal(fg_kv_seq_pages(p, d)[0], fg_kv_seq_pages(p, c)[0]);
    assert_int_equal(fg_kv_pages_refcount(p, fg_kv_seq_pages(p, c)[0]), 2);
    assert_int_equal(fg_kv_pages_refcount(p, dp0), 0);
    check(p);
    fg_kv_seq_free(p, c);
    fg_kv_seq_free(p, d);
    check(p);
    fg_kv_pages_destroy(p);
}

static void test_prefix_lru_eviction(void **state) {
    (void)state;
    fg_kv_pages *p = mk_cached(6, 2, 4, NULL);
    int32_t t1[4], t2[4], t3[6], a;
    seq_tokens(t1, 4, 10);
    seq_tokens(t2, 4, 20);
    seq_tokens(t3, 6, 30);
    const int32_t *ts[2] = {t1, t2};
    int32_t pages[2][2];
    for (int k = 0; k < 2; k++) { // two cached chains of two pages, the t1 chain older
        assert_int_equal(fg_kv_seq_new(p, &a), FG_OK);
        assert_int_equal(fg_kv_seq_append(p, a, 4), FG_OK);
        assert_int_equal(fg_kv_seq_publish(p, a, ts[k], 4), FG_OK);
        pages[k][0] = fg_kv_seq_pages(p, a)[0];
        pages[k][1] = fg_kv_seq_pages(p, a)[1];
        fg_kv_seq_free(p, a);
    }
    assert_int_equal(cinfo(p).idle, 4);
    assert_int_equal(fg_kv_pages_n_free(p), 6);
    check(p);
    // 6 tokens = 3 pages: the 2 free ones first, then the oldest leaf (t1's second page)
    assert_int_equal(fg_kv_seq_new(p, &a), FG_OK);
    assert_int_equal(fg_kv_seq_append(p, a, 6), FG_OK);
    assert_int_equal(cinfo(p).evictions, 1);
    assert_int_equal(fg_kv_pages_lookup_prefix(p, t1, 4, NULL), 2);
    assert_int_equal(fg_kv_pages_lookup_prefix(p, t2, 4, NULL), 4);
    assert_int_equal(fg_kv_seq_pages(p, a)[2], pages[0][1]);
    check(p);
    // one more page: t1's first page (now a leaf, the oldest)
    assert_int_equal(fg_kv_seq_append(p, a, 1), FG_OK);
    assert_int_equal(fg_kv_pages_lookup_prefix(p, t1, 4, NULL), 0);
    assert_int_equal(fg_kv_pages_lookup_prefix(p, t2, 4, NULL), 4);
    check(p);
    // a touch makes t2's chain recent, but nothing else is idle: the next takes evict it
    // child first
    assert_int_equal(fg_kv_seq_append(p, a, 2), FG_OK);
    assert_int_equal(fg_kv_pages_lookup_prefix(p, t2, 4, NULL), 2);
    assert_int_equal(cinfo(p).evictions, 3);
    assert_int_equal(fg_kv_seq_append(p, a, 4), FG_ERR_CAPACITY); // 1 page left, 2 needed
    check(p);
    fg_kv_seq_free(p, a);
    assert_int_equal(fg_kv_pages_n_free(p), 6);
    check(p);
    fg_kv_pages_destroy(p);
}

static uint64_t same_hash(uint64_t parent, const int32_t *tokens, int32_t n) {
    (void)parent;
    (void)tokens;
    (void)n;
    return 42; // every page collides
}

static void test_prefix_collisions_not_shared(void **state) {
    (void)state;
    fg_kv_pages *p = mk_cached(16, 2, 4, same_hash);
    int32_t x[4] = {1, 2, 3, 4}, y[4] = {5, 6, 3, 4}, a, b, n;
    assert_int_equal(fg_kv_seq_new(p, &a), FG_OK);
    assert_int_equal(fg_kv_seq_append(p, a, 4), FG_OK);
    assert_int_equal(fg_kv_seq_publish(p, a, x, 4), FG_OK);
    // every page has the same hash, yet a different first page matches nothing, and y's
    // second page (same tokens as x's, different parent) is not x's
    assert_int_equal(fg_kv_pages_lookup_prefix(p, y, 4, NULL), 0);
    int32_t z[4] = {1, 2, 9, 9};
    assert_int_equal(fg_kv_pages_lookup_prefix(p, z, 4, NULL), 2);
    assert_int_equal(fg_kv_seq_new(p, &b), FG_OK);
    assert_int_equal(fg_kv_seq_append(p, b, 4), FG_OK);
    assert_int_equal(fg_kv_seq_publish(p, b, y, 4), FG_OK);
    for (int i = 0; i < 2; i++) // nothing shared
        assert_int_not_equal(fg_kv_seq_pages(p, a)[i], fg_kv_seq_pages(p, b)[i]);
    assert_int_equal(cinfo(p).pages, 4);
    check(p);
    fg_kv_seq_free(p, a);
    fg_kv_seq_free(p, b);
    int32_t c;
    assert_int_equal(fg_kv_seq_new(p, &c), FG_OK);
    assert_int_equal(fg_kv_seq_map_prefix(p, c, y, 4, &n), FG_OK);
    assert_int_equal(n, 4);
    check(p);
    fg_kv_seq_free(p, c);
    fg_kv_pages_destroy(p);
}

// ---- random workload over the prefix cache, with simulated KV contents: the "KV" of
// position i of a sequence is a digest of its tokens 0..i; after every operation every live
// sequence must read the digest of its own tokens at every computed position, whatever it
// shares with others, and the allocator's invariants must hold.
#define W_PAGES 40
#define W_PS 4
#define W_SEQS 6
#define W_LEN 48

typedef struct wseq {
    bool live;
    int32_t n_tok, n_past;
    int32_t toks[W_LEN];
    uint64_t dig[W_LEN];
} wseq;

static uint64_t digest(uint64_t h, int32_t tok) {
    h ^= (uint64_t)(uint32_t)tok + 0x9E3779B97F4A7C15ull + (h << 6) + (h >> 2);
    h *= 0xBF58476D1CE4E5B9ull;
    return h ^ (h >> 29);
}

static uint64_t weak_hash(uint64_t parent, const int32_t *tokens, int32_t n) {
    return fg_kv_hash_tokens(parent, tokens, n) & 3; // four buckets' worth of hashes
}

static void w_verify(const fg_kv_pages *p, const wseq *w, const uint64_t *content) {
    check(p);
    int32_t holders[W_PAGES] = {0};
    for (int32_t s = 0; s < W_SEQS; s++) {
        if (!w[s].live)
            continue;
        const int32_t *pt = fg_kv_seq_pages(p, s);
        for (int32_t i = 0; i < fg_kv_seq_n_pages(p, s); i++)
            holders[pt[i]]++;
        for (int32_t i = 0; i < w[s].n_past; i++)
            if (content[pt[i / W_PS] * W_PS + i % W_PS] != w[s].dig[i])
                fail_msg("sequence %d reads another prefix's KV at position %d (page %d)", s, i,
                         pt[i / W_PS]);
    }
    for (int32_t pg = 0; pg < W_PAGES; pg++)
        assert_int_equal(fg_kv_pages_refcount(p, pg), holders[pg]);
}

static void w_set_tokens(wseq *q, const int32_t (*fam)[W_LEN]) {
    q->n_tok = 1 + (int32_t)rnd(W_LEN - 8);
    int32_t f = (int32_t)rnd(4), k = (int32_t)rnd((uint32_t)q->n_tok + 1);
    for (int32_t i = 0; i < q->n_tok; i++)
        q->toks[i] = f < 3 && i < k ? fam[f][i] : (int32_t)rnd(3); // tiny alphabet: repeats
    for (int32_t i = 0; i < q->n_tok; i++)
        q->dig[i] = digest(i ? q->dig[i - 1] : 0, q->toks[i]);
}

static void random_workload(fg_kv_hash_fn fn, uint64_t seed, int iters) {
    printf("prefix workload: seed %llu, %s hash\n", (unsigned long long)seed,
           fn ? "weak (colliding)" : "built-in");
    rnd_state = seed;
    fg_kv_pages *p = mk_cached(W_PAGES, W_PS, W_SEQS, fn);
    static uint64_t content[W_PAGES * W_PS];
    for (size_t i = 0; i < W_PAGES * W_PS; i++)
        content[i] = ~(uint64_t)0; // never a digest a sequence expects (in practice)
    int32_t fam[3][W_LEN];
    for (int f = 0; f < 3; f++)
        for (int i = 0; i < W_LEN; i++)
            fam[f][i] = (int32_t)rnd(3);
    wseq w[W_SEQS];
    memset(w, 0, sizeof w);
    uint64_t mapped = 0, admitted = 0, computed = 0;
    for (int it = 0; it < iters; it++) {
        int32_t s = (int32_t)rnd(W_SEQS);
        wseq *q = &w[s];
        uint32_t op = rnd(8);
        if (!q->live && op < 6) { // admit: map the cached prefix, leave >= 1 token to compute
            int32_t id;
            if (fg_kv_seq_new(p, &id) != FG_OK)
                continue;
            s = id; // the lowest free id, not necessarily the one drawn
            q = &w[s];
            assert_false(q->live);
            q->live = true;
            w_set_tokens(q, (const int32_t(*)[W_LEN])fam);
            int32_t idle = -1, n = -1;
            int32_t m = fg_kv_pages_lookup_prefix(p, q->toks, q->n_tok, &idle);
            assert_true(m % W_PS == 0 && m <= q->n_tok && idle >= 0 && idle <= m / W_PS);
            assert_int_equal(fg_kv_seq_map_prefix(p, s, q->toks, q->n_tok, &n), FG_OK);
            assert_int_equal(n, m);
            q->n_past = m < q->n_tok - 1 ? m : q->n_tok - 1;
            if (q->n_past < m)
                assert_int_equal(fg_kv_seq_truncate(p, s, q->n_past), FG_OK);
            mapped += (uint64_t)q->n_past;
            admitted++;
        } else if (q->live && op < 6) { // one step: a chunk of the rest, then publish
            if (q->n_past == q->n_tok) {
                if (q->n_tok == W_LEN)
                    goto end; // full: finished
                q->toks[q->n_tok] = (int32_t)rnd(3); // a generated token
                q->dig[q->n_tok] = digest(q->dig[q->n_tok - 1], q->toks[q->n_tok]);
                q->n_tok++;
            }
            int32_t c = 1 + (int32_t)rnd((uint32_t)(q->n_tok - q->n_past));
            int32_t len = fg_kv_seq_len(p, s);
            assert_int_equal(len, q->n_past);
            if (fg_kv_seq_append(p, s, c) != FG_OK)
                goto preempt;
            int32_t copies[2 * W_PAGES], nc = 0;
            if (fg_kv_seq_prepare_write(p, s, q->n_past, copies, W_PAGES, &nc) != FG_OK) {
                assert_int_equal(fg_kv_seq_truncate(p, s, q->n_past), FG_OK);
                goto preempt;
            }
            for (int32_t k = 0; k < nc; k++)
                memcpy(&content[copies[2 * k] * W_PS], &content[copies[2 * k + 1] * W_PS],
                       W_PS * sizeof *content);
            const int32_t *pt = fg_kv_seq_pages(p, s);
            for (int32_t i = q->n_past; i < q->n_past + c; i++) {
                int32_t pg = pt[i / W_PS];
                assert_int_equal(fg_kv_pages_refcount(p, pg), 1); // written pages are private
                content[pg * W_PS + i % W_PS] = q->dig[i];
            }
            q->n_past += c;
            computed += (uint64_t)c;
            assert_int_equal(fg_kv_seq_publish(p, s, q->toks, q->n_past), FG_OK);
        } else if (q->live && op == 6) { // cancel / finish / preempt: all free the sequence
        preempt:
        end:
            fg_kv_seq_free(p, s);
            q->live = false;
        }
        w_verify(p, w, content);
    }
    fg_kv_cache_info ci = cinfo(p);
    printf("prefix workload: %llu admissions, %llu tokens mapped, %llu computed, %llu "
           "evictions, %d cached pages\n",
           (unsigned long long)admitted, (unsigned long long)mapped,
           (unsigned long long)computed, (unsigned long long)ci.evictions, (int)ci.pages);
    assert_true(mapped > 100 && ci.evictions > 10); // the cache was exercised, and full
    for (int32_t s = 0; s < W_SEQS; s++)
        fg_kv_seq_free(p, s);
    assert_int_equal(fg_kv_pages_n_free(p), W_PAGES);
    check(p);
    fg_kv_pages_destroy(p);
}

static void test_prefix_random_workload(void **state) {
    (void)state;
    random_workload(NULL, 1301, 20000);
}

static void test_prefix_random_workload_collisions(void **state) {
    (void)state;
    random_workload(weak_hash, 1302, 20000);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_create_args),
        cmocka_unit_test(test_append_exact_page),
        cmocka_unit_test(test_cross_boundaries),
        cmocka_unit_test(test_truncate_frees),
        cmocka_unit_test(test_exhaustion_changes_nothing),
        cmocka_unit_test(test_reuse_after_free),
        cmocka_unit_test(test_max_seqs),
        cmocka_unit_test(test_fork_cow),
        cmocka_unit_test(test_cow_exhaustion),
        cmocka_unit_test(test_random_ops),
        cmocka_unit_test(test_prefix_map_publish),
        cmocka_unit_test(test_prefix_cow_and_dedupe),
        cmocka_unit_test(test_prefix_lru_eviction),
        cmocka_unit_test(test_prefix_collisions_not_shared),
        cmocka_unit_test(test_prefix_random_workload),
        cmocka_unit_test(test_prefix_random_workload_collisions),
    };
    return cmocka_run_group_tests_name("kv_pages", tests, NULL, NULL);
}
