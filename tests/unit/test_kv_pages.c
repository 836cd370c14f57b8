// test_kv_pages.c - the KV page allocator: page boundaries, truncation, exhaustion (nothing
// changed), reuse, fork + copy-on-write, max_seqs, and random operation sequences checked
// against a simple model of the page tables (every page free or owned; refcounts = holders).
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
    };
    return cmocka_run_group_tests_name("kv_pages", tests, NULL, NULL);
}
