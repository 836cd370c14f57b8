// test_prefix_cache.c - the engine's prefix cache (issue 13) on real models (stories260K,
// synth-llama-Q4_0), every engine checking its page accounting after every step: greedy
// tokens and logprobs identical with the cache on and off (and equal to a direct greedy loop)
// for shared-prefix workloads, whole-prompt hits (copy-on-write of the last page), preemption
// and eviction in a small pool, cancellation mid-prefill, requests racing to fill the same
// prefix (one cached copy), a forced-collision hash, echo scoring, the model identity, a
// random workload with cancellations, and all of it on a Q8_0 KV cache (synth-llama, head_dim
// 64). Data: FORGE_SHARED (default ../shared).
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "forge.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

// ---- fixtures
static fg_backend *g_be;
static fg_model *g_stories;
static fg_model *g_synth;

static fg_model *load(const char *rel) {
    const char *shared = getenv("FORGE_SHARED");
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", shared && *shared ? shared : "../shared", rel);
    fg_model_opts mo = {.max_batch_tokens = 512, .max_seqs = 64};
    fg_model *m = NULL;
    if (fg_model_load(path, g_be, &mo, &m) != FG_OK) {
        print_error("cannot load %s: %s\n", path, fg_last_error());
        return NULL;
    }
    return m;
}

static int setup(void **state) {
    (void)state;
    fg_backend_opts bo = {.n_threads = 2};
    if (fg_backend_create("cpu", &bo, &g_be) != FG_OK) {
        print_error("cpu backend: %s\n", fg_last_error());
        return -1;
    }
    g_stories = load("models/stories260K.gguf");
    g_synth = load("models/synth/synth-llama-Q4_0.gguf");
    return g_stories && g_synth ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    fg_model_destroy(g_stories);
    fg_model_destroy(g_synth);
    fg_backend_destroy(g_be);
    return 0;
}

// ---- event recording
#define MAX_REC 256

typedef struct rec {
    int32_t toks[MAX_REC];
    float lps[MAX_REC];
    int n_tok;
    float plps[MAX_REC];
    int32_t ptoks[MAX_REC];
    int n_p;
    int n_done;
    fg_finish_reason finish;
    fg_status status;
    int32_t n_cached;
    int block_after; // TOKEN events before the callback blocks the scheduler (0: never)
} rec;

#include "engine_test_util.h" // (after rec)

static bool g_release;

static void on_event(void *user, const fg_event *ev) {
    rec *r = user;
    pthread_mutex_lock(&g_mu);
    if (ev->kind == FG_EVENT_TOKEN && r->n_tok < MAX_REC) {
        r->toks[r->n_tok] = ev->token;
        r->lps[r->n_tok] = ev->logprob;
        r->n_tok++;
        if (r->block_after > 0 && r->n_tok == r->block_after) {
            pthread_cond_broadcast(&g_cv);
            while (!g_release)
                pthread_cond_wait(&g_cv, &g_mu);
        }
    } else if (ev->kind == FG_EVENT_PROMPT_LOGPROB && r->n_p < MAX_REC) {
        r->ptoks[r->n_p] = ev->token;
        r->plps[r->n_p] = ev->logprob;
        r->n_p++;
    } else if (ev->kind == FG_EVENT_DONE) {
        r->n_done++;
        r->finish = ev->finish;
        r->status = ev->status;
        r->n_cached = ev->n_cached_tokens;
    }
    pthread_cond_broadcast(&g_cv);
    pthread_mutex_unlock(&g_mu);
}

// ---- reference: a direct greedy loop over fg_model_forward (one sequence, own KV store)
static int32_t argmax(const float *l, int32_t n) {
    int32_t b = 0;
    for (int32_t i = 1; i < n; i++)
        if (l[i] > l[b])
            b = i;
    return b;
}

static uint32_t g_ref_kv_type = FG_TYPE_F16; // the reference's KV cache: the engines' type

static void ref_greedy(fg_model *m, const int32_t *prompt, int32_t n_prompt, int32_t n_gen,
                       int32_t *out) {
    const int32_t ps = 16;
    int32_t n_vocab = fg_model_get_info(m)->n_vocab;
    int32_t total = n_prompt + n_gen;
    int32_t n_pages = (total + ps - 1) / ps + 1;
    fg_kv_store *kv = NULL;
    assert_int_equal(fg_kv_store_create(m, n_pages, ps, g_ref_kv_type, &kv), FG_OK);
    int32_t *pt = malloc((size_t)n_pages * sizeof *pt);
    int32_t *pos = malloc((size_t)total * sizeof *pos);
    int32_t *seq = calloc((size_t)total, sizeof *seq);
    float *logits = malloc((size_t)n_vocab * sizeof *logits);
    for (int32_t i = 0; i < n_pages; i++)
        pt[i] = i;
    for (int32_t i = 0; i < total; i++)
        pos[i] = i;
    const int32_t *pts[1] = {pt};
    int32_t n_kv = n_prompt;
    fg_batch b = {.n_tokens = n_prompt, .tokens = prompt, .pos = pos, .seq = seq,
                  .want_logits = NULL, .n_seqs = 1, .n_kv = &n_kv, .page_tables = pts};
    if (fg_model_forward(m, kv, &b, logits) != FG_OK)
        fail_msg("reference prompt forward: %s", fg_last_error());
    for (int32_t g = 0; g < n_gen; g++) {
        out[g] = argmax(logits, n_vocab);
        if (g + 1 == n_gen)
            break;
        n_kv = n_prompt + g + 1;
        fg_batch d = {.n_tokens = 1, .tokens = &out[g], .pos = &pos[n_kv - 1], .seq = seq,
                      .want_logits = NULL, .n_seqs = 1, .n_kv = &n_kv, .page_tables = pts};
        if (fg_model_forward(m, kv, &d, logits) != FG_OK)
            fail_msg("reference decode forward: %s", fg_last_error());
    }
    free(logits);
    free(seq);
    free(pos);
    free(pt);
    fg_kv_store_destroy(kv);
}

// Greedy with the chosen token's logprob (compared exactly, cache on vs off).
static fg_request_params cached_params(const int32_t *prompt, int32_t n, int32_t max_tokens) {
    fg_request_params rp = greedy_params(prompt, n, max_tokens);
    rp.logprobs = 0;
    return rp;
}

static fg_engine *mk_engine(fg_model *m, fg_engine_opts o) {
    o.check_pages = true;
    fg_engine *e = NULL;
    if (fg_engine_create(m, &o, &e) != FG_OK)
        fail_msg("engine create: %s", fg_last_error());
    return e;
}

static fg_engine_stats stats(fg_engine *e) {
    fg_engine_stats st;
    fg_engine_get_stats(e, &st);
    return st;
}

// Destroys e after checking that the page accounting held after every one of its steps.
static void end_engine(fg_engine *e) {
    const uint64_t bad = stats(e).page_check_failures;
    fg_engine_destroy(e, 5.0);
    if (bad)
        fail_msg("KV page accounting broken after %llu steps (see stderr)", (unsigned long long)bad);
}

static void expect_tokens(const rec *r, const int32_t *want, int32_t n, int idx) {
    if (r->n_tok != n)
        fail_msg("request %d: %d tokens, expected %d", idx, r->n_tok, n);
    for (int32_t i = 0; i < n; i++)
        if (r->toks[i] != want[i])
            fail_msg("request %d: token %d is %d, expected %d", idx, i, r->toks[i], want[i]);
}

// ---- workloads: jobs submitted in waves (each wave waits for the previous one)
#define MAX_PROMPT 200

typedef struct job {
    int32_t prompt[MAX_PROMPT];
    int32_t n, gen;
    int wave;
    bool cancel; // cancelled right after it is submitted
} job;

typedef struct outcome {
    rec *r;
    fg_engine_stats st;
} outcome;

static outcome run_jobs(fg_model *m, fg_engine_opts o, const job *jobs, int n) {
    outcome out = {calloc((size_t)n, sizeof(rec)), {0}};
    fg_engine *e = mk_engine(m, o);
    int max_wave = 0;
    for (int i = 0; i < n; i++)
        max_wave = jobs[i].wave > max_wave ? jobs[i].wave : max_wave;
    for (int w = 0; w <= max_wave; w++) {
        int first = -1, last = -1;
        for (int i = 0; i < n; i++) {
            if (jobs[i].wave != w)
                continue;
            fg_request_params rp = cached_params(jobs[i].prompt, jobs[i].n, jobs[i].gen);
            uint64_t id;
            if (fg_engine_submit(e, &rp, on_event, &out.r[i], &id) != FG_OK)
                fail_msg("submit %d: %s", i, fg_last_error());
            if (jobs[i].cancel)
                assert_int_equal(fg_engine_cancel(e, id), FG_OK);
            first = first < 0 ? i : first;
            last = i;
        }
        for (int i = first; first >= 0 && i <= last; i++)
            if (jobs[i].wave == w)
                wait_all(&out.r[i], 1);
    }
    out.st = stats(e);
    assert_int_equal(out.st.kv_pages_used, 0);
    assert_int_equal(out.st.running, 0);
    end_engine(e);
    return out;
}

// Runs the jobs with the cache off and on: every request that was not cancelled has the
// reference greedy tokens, and the same logprobs, bit for bit, both ways.
static fg_engine_stats on_off(fg_model *m, fg_engine_opts o, const job *jobs, int n,
                              rec **on_recs) {
    o.prefix_cache = false;
    outcome off = run_jobs(m, o, jobs, n);
    o.prefix_cache = true;
    outcome on = run_jobs(m, o, jobs, n);
    int32_t want[MAX_REC];
    for (int i = 0; i < n; i++) {
        const rec *a = &off.r[i], *b = &on.r[i];
        assert_int_equal(a->n_done, 1);
        assert_int_equal(b->n_done, 1);
        assert_int_equal(a->n_cached, 0);
        if (jobs[i].cancel) {
            // cut short anywhere (or not at all): what came out is a prefix of the reference
            ref_greedy(m, jobs[i].prompt, jobs[i].n, jobs[i].gen, want);
            for (int k = 0; k < b->n_tok; k++)
                if (b->toks[k] != want[k])
                    fail_msg("cancelled request %d: token %d is %d, expected %d", i, k,
                             b->toks[k], want[k]);
            continue;
        }
        assert_int_equal(a->status, FG_OK);
        assert_int_equal(b->status, FG_OK);
        ref_greedy(m, jobs[i].prompt, jobs[i].n, jobs[i].gen, want);
        expect_tokens(a, want, jobs[i].gen, i);
        expect_tokens(b, want, jobs[i].gen, i);
        for (int k = 0; k < jobs[i].gen; k++)
            if (memcmp(&a->lps[k], &b->lps[k], sizeof(float)) != 0)
                fail_msg("request %d: token %d logprob %.9g with the cache, %.9g without", i, k,
                         (double)b->lps[k], (double)a->lps[k]);
    }
    assert_int_equal(off.st.prefix_lookups, 0);
    printf("cache on: %llu lookups, %llu hits, %llu hit / %llu miss tokens, %llu evictions, "
           "%llu preemptions (off: %llu), %d cached pages\n",
           (unsigned long long)on.st.prefix_lookups, (unsigned long long)on.st.prefix_hits,
           (unsigned long long)on.st.prefix_hit_tokens,
           (unsigned long long)on.st.prefix_miss_tokens,
           (unsigned long long)on.st.prefix_evictions, (unsigned long long)on.st.preemptions,
           (unsigned long long)off.st.preemptions, (int)on.st.prefix_pages);
    free(off.r);
    if (on_recs)
        *on_recs = on.r;
    else
        free(on.r);
    return on.st;
}

static void rand_tokens(int32_t *p, int32_t n) {
    for (int32_t i = 0; i < n; i++)
        p[i] = 3 + (int32_t)rnd(509);
}

// ---- tests
static void test_shared_prefix_on_off(void **state) {
    (void)state;
    const uint64_t seed = 1313;
    printf("shared prefix: seed %llu\n", (unsigned long long)seed);
    g_lcg = seed;
    int32_t sys[100];
    sys[0] = 1;
    rand_tokens(sys + 1, 99);
    // wave 0: the system prompt + 10 tokens (caches 6 full pages of the system prompt);
    // wave 1: prefixes of it of every kind, each with its own suffix, and repeats
    enum { N = 20 };
    job *jobs = calloc(N, sizeof *jobs);
    int32_t expect_cached[N];
    const int32_t ks[] = {0, 5, 16, 17, 31, 32, 48, 64, 80, 95, 96, 100};
    for (int i = 0; i < N; i++) {
        job *j = &jobs[i];
        j->gen = 8 + (int32_t)rnd(20);
        j->wave = i > 0;
        int32_t k = i == 0 ? 100 : ks[(i - 1) % 12];
        int32_t suffix = i == 0 ? 10 : 1 + (int32_t)rnd(40);
        memcpy(j->prompt, sys, (size_t)k * sizeof *sys);
        rand_tokens(j->prompt + k, suffix);
        j->n = k + suffix;
        expect_cached[i] = i == 0 ? 0 : (k > 96 ? 96 : k / 16 * 16);
    }
    // whole prompts that are cached: only the last token is recomputed (its page copied)
    for (int i = 13; i < 16; i++) {
        jobs[i].n = 32 + 16 * (i - 13);
        memcpy(jobs[i].prompt, sys, (size_t)jobs[i].n * sizeof *sys);
        expect_cached[i] = jobs[i].n - 1;
    }
    // the first request again: its prompt's 6 full pages, the 7th holds the suffix's end
    jobs[16] = jobs[0];
    jobs[16].wave = 1;
    expect_cached[16] = 96;
    rec *r = NULL;
    fg_engine_opts o = {.n_ctx = 256, .max_seqs = 16, .max_batch_tokens = 64};
    fg_engine_stats st = on_off(g_stories, o, jobs, N, &r);
    for (int i = 0; i < N; i++)
        if (r[i].n_cached != expect_cached[i])
            fail_msg("request %d (prompt %d): %d cached tokens, expected %d", i, jobs[i].n,
                     r[i].n_cached, expect_cached[i]);
    assert_int_equal(st.prefix_lookups, N);
    assert_true(st.prefix_hits >= N - 3);
    assert_true(st.prefix_pages > 0 && st.prefix_idle_pages == st.prefix_pages);
    free(r);
    free(jobs);
}

static void test_preemption_and_eviction(void **state) {
    (void)state;
    const uint64_t seed = 1314;
    printf("small pool: seed %llu\n", (unsigned long long)seed);
    g_lcg = seed;
    int32_t fam[3][60];
    for (int f = 0; f < 3; f++) {
        fam[f][0] = 1;
        rand_tokens(fam[f] + 1, 59);
    }
    enum { N = 32 };
    job *jobs = calloc(N, sizeof *jobs);
    for (int i = 0; i < N; i++) {
        job *j = &jobs[i];
        int32_t k = 8 * (int32_t)rnd(6);
        memcpy(j->prompt, fam[i % 3], (size_t)k * sizeof(int32_t));
        j->n = k + 1 + (int32_t)rnd(20);
        rand_tokens(j->prompt + k, j->n - k);
        j->gen = 4 + (int32_t)rnd(24);
        j->wave = i / 8;
    }
    // 12 pages of 8 tokens for 8 sequences of up to 95 tokens: preemption and eviction
    fg_engine_opts o = {.n_ctx = 96, .max_seqs = 8, .page_size = 8, .n_pages = 12,
                        .max_batch_tokens = 32};
    fg_engine_stats st = on_off(g_stories, o, jobs, N, NULL);
    assert_true(st.preemptions > 0);
    assert_true(st.prefix_evictions > 0);
    assert_true(st.prefix_hit_tokens > 0);
    free(jobs);
}

// A Q8_0 KV cache (--kv-type q8_0): cached pages are quantized pages, shared and copied as bytes;
// with the cache on and off, greedy tokens equal the direct loop's on a Q8_0 cache and the
// logprobs are bit for bit the same, for shared prefixes, whole-prompt hits (the copied last
// page) and a small pool that preempts and evicts. The chain's root differs from an F16 pool's.
static void test_q8_0_cache(void **state) {
    (void)state;
    const uint64_t seed = 1316;
    printf("q8_0 KV: seed %llu\n", (unsigned long long)seed);
    g_lcg = seed;
    int32_t sys[80];
    sys[0] = 1;
    rand_tokens(sys + 1, 79);
    enum { N = 12 };
    job *jobs = calloc(N, sizeof *jobs);
    int32_t expect_cached[N];
    for (int i = 0; i < N; i++) {
        job *j = &jobs[i];
        j->gen = 6 + (int32_t)rnd(10);
        j->wave = i > 0;
        int32_t k = i == 0 ? 80 : 8 * (int32_t)rnd(11), suffix = 1 + (int32_t)rnd(30);
        memcpy(j->prompt, sys, (size_t)k * sizeof *sys);
        rand_tokens(j->prompt + k, suffix);
        j->n = k + suffix;
        expect_cached[i] = i == 0 ? 0 : k / 16 * 16;
    }
    for (int i = 9; i < 11; i++) { // whole cached prompts: the last page is copied, then written
        jobs[i].n = 32 + 16 * (i - 9);
        memcpy(jobs[i].prompt, sys, (size_t)jobs[i].n * sizeof *sys);
        expect_cached[i] = jobs[i].n - 1;
    }
    g_ref_kv_type = FG_TYPE_Q8_0;
    rec *r = NULL;
    fg_engine_opts o = {.n_ctx = 192, .max_seqs = 8, .max_batch_tokens = 48, .kv_type = FG_TYPE_Q8_0};
    fg_engine_stats st = on_off(g_synth, o, jobs, N, &r);
    for (int i = 0; i < N; i++)
        if (r[i].n_cached != expect_cached[i])
            fail_msg("request %d (prompt %d): %d cached tokens, expected %d", i, jobs[i].n, r[i].n_cached,
                     expect_cached[i]);
    assert_true(st.prefix_hit_tokens > 0);
    free(r);
    // 15 pages of 8 tokens for 8 sequences of up to 119 tokens: preemption and eviction
    fg_engine_opts small = {.n_ctx = 120, .max_seqs = 8, .page_size = 8, .n_pages = 15, .max_batch_tokens = 32,
                            .kv_type = FG_TYPE_Q8_0};
    for (int i = 0; i < N; i++)
        jobs[i].wave = i / 4;
    st = on_off(g_synth, small, jobs, N, NULL);
    assert_true(st.preemptions > 0);
    assert_true(st.prefix_evictions > 0);
    g_ref_kv_type = FG_TYPE_F16;
    free(jobs);
}

static bool n_tok_blocked(void *arg) {
    rec *r = arg;
    return r->n_tok >= r->block_after;
}

static void test_cancel_mid_prefill(void **state) {
    (void)state;
    g_lcg = 1315;
    int32_t a_prompt[4] = {1, 5, 6, 7}, b_prompt[192];
    b_prompt[0] = 1;
    rand_tokens(b_prompt + 1, 191);
    fg_engine *e = mk_engine(g_stories, (fg_engine_opts){.n_ctx = 256, .max_batch_tokens = 24,
                                                         .prefix_cache = true});
    rec *r = calloc(3, sizeof *r);
    // A's callback holds the scheduler after A's third token: B, admitted with A, is then
    // part way through its 192-token prefill (about 23 tokens a step)
    pthread_mutex_lock(&g_mu);
    g_release = false;
    pthread_mutex_unlock(&g_mu);
    r[0].block_after = 3;
    fg_request_params ap = cached_params(a_prompt, 4, 6), bp = cached_params(b_prompt, 192, 6);
    uint64_t bid;
    assert_int_equal(fg_engine_submit(e, &ap, on_event, &r[0], NULL), FG_OK);
    assert_int_equal(fg_engine_submit(e, &bp, on_event, &r[1], &bid), FG_OK);
    wait_until(n_tok_blocked, &r[0], "the scheduler to block");
    assert_int_equal(fg_engine_cancel(e, bid), FG_OK);
    pthread_mutex_lock(&g_mu);
    g_release = true;
    pthread_cond_broadcast(&g_cv);
    pthread_mutex_unlock(&g_mu);
    wait_all(r, 2);
    assert_int_equal(r[1].finish, FG_FINISH_CANCELLED);
    assert_int_equal(r[1].n_tok, 0);
    fg_engine_stats st = stats(e);
    assert_int_equal(st.kv_pages_used, 0);
    int32_t published = st.prefix_pages;
    printf("cancelled mid-prefill: %d pages cached (of 12 the prompt fills)\n", published);
    assert_true(published >= 1 && published < 12);
    // the same prompt again: it maps what B published and computes the rest, correctly
    int32_t want[6];
    ref_greedy(g_stories, b_prompt, 192, 6, want);
    assert_int_equal(fg_engine_submit(e, &bp, on_event, &r[2], NULL), FG_OK);
    wait_all(&r[2], 1);
    expect_tokens(&r[2], want, 6, 2);
    assert_true(r[2].n_cached >= 16 && r[2].n_cached <= 16 * published);
    end_engine(e);
    free(r);
}

static void test_racing_same_prefix(void **state) {
    (void)state;
    g_lcg = 1316;
    enum { N = 8 };
    job *jobs = calloc(N, sizeof *jobs);
    jobs[0].prompt[0] = 1;
    rand_tokens(jobs[0].prompt + 1, 179);
    jobs[0].n = 180;
    jobs[0].gen = 12;
    for (int i = 1; i < N; i++)
        jobs[i] = jobs[0];
    // the first step admits three of them with nothing cached yet: two compute all 180
    // tokens side by side, the third 40; the others come later and map what they published
    fg_engine_opts o = {.n_ctx = 256, .max_seqs = 8, .max_batch_tokens = 400};
    rec *r = NULL;
    fg_engine_stats st = on_off(g_stories, o, jobs, N, &r);
    // they computed the same pages: the cache holds one copy of each full page
    assert_int_equal(st.prefix_pages, (180 + 12 - 1) / 16);
    int hits = 0;
    for (int i = 0; i < N; i++)
        hits += r[i].n_cached > 0;
    printf("racing: %d of %d requests mapped cached pages at admission\n", hits, N);
    free(r);
    free(jobs);
}

static uint64_t same_hash(uint64_t parent, const int32_t *tokens, int32_t n) {
    (void)parent;
    (void)tokens;
    (void)n;
    return 7; // every page collides with every other
}

static void test_collisions_not_shared(void **state) {
    (void)state;
    const uint64_t seed = 1317;
    printf("colliding hash: seed %llu\n", (unsigned long long)seed);
    g_lcg = seed;
    enum { N = 16 };
    job *jobs = calloc(N, sizeof *jobs);
    int32_t base[64];
    base[0] = 1;
    rand_tokens(base + 1, 63);
    for (int i = 0; i < N; i++) {
        job *j = &jobs[i];
        // half are prefixes of one text; a quarter differ from it in one token of the second
        // page (same first page, different second); a quarter differ from the first token on
        memcpy(j->prompt, base, 64 * sizeof(int32_t));
        if (i % 4 == 0)
            j->prompt[20] = 3 + (int32_t)rnd(509);
        else if (i % 4 == 2)
            rand_tokens(j->prompt, 64);
        j->n = 40 + (int32_t)rnd(24);
        j->gen = 6 + (int32_t)rnd(10);
        j->wave = i / 4;
    }
    fg_engine_opts o = {.n_ctx = 128, .max_seqs = 8, .max_batch_tokens = 64,
                        .prefix_hash = same_hash};
    fg_engine_stats st = on_off(g_synth, o, jobs, N, NULL);
    assert_true(st.prefix_hit_tokens > 0); // true matches are still found and shared
    free(jobs);
}

static void test_echo_scores_every_position(void **state) {
    (void)state;
    g_lcg = 1318;
    int32_t prompt[150];
    prompt[0] = 1;
    rand_tokens(prompt + 1, 149);
    rec *r = calloc(4, sizeof *r);
    float ref_plps[149];
    for (int pass = 0; pass < 2; pass++) {
        fg_engine *e = mk_engine(g_stories, (fg_engine_opts){.n_ctx = 256, .max_batch_tokens = 128,
                                                             .prefix_cache = pass == 1});
        memset(r, 0, 4 * sizeof *r);
        // warm the cache with the prompt, then score it with echo (and generate after it)
        fg_request_params warm = cached_params(prompt, 150, 4);
        assert_int_equal(fg_engine_submit(e, &warm, on_event, &r[0], NULL), FG_OK);
        wait_all(r, 1);
        fg_request_params ep = cached_params(prompt, 150, 4);
        ep.echo_logprobs = true;
        assert_int_equal(fg_engine_submit(e, &ep, on_event, &r[1], NULL), FG_OK);
        wait_all(&r[1], 1);
        // the echo request published its pages: a plain request maps them
        assert_int_equal(fg_engine_submit(e, &warm, on_event, &r[2], NULL), FG_OK);
        wait_all(&r[2], 1);
        assert_int_equal(r[1].n_p, 149);
        assert_int_equal(r[1].n_cached, 0); // echo needs logits at every prompt position
        for (int i = 0; i < 149; i++) {
            assert_int_equal(r[1].ptoks[i], prompt[i + 1]);
            if (pass == 0)
                ref_plps[i] = r[1].plps[i];
            else if (memcmp(&ref_plps[i], &r[1].plps[i], sizeof(float)) != 0)
                fail_msg("prompt position %d: logprob %.9g with the cache, %.9g without", i,
                         (double)r[1].plps[i], (double)ref_plps[i]);
        }
        expect_tokens(&r[1], r[0].toks, 4, 1);
        expect_tokens(&r[2], r[0].toks, 4, 2);
        assert_int_equal(r[2].n_cached, pass == 1 ? 144 : 0);
        end_engine(e);
    }
    free(r);
}

static void test_model_identity(void **state) {
    (void)state;
    uint64_t a = fg_engine_model_identity(g_stories), b = fg_engine_model_identity(g_synth);
    assert_true(a != b);
    assert_true(a == fg_engine_model_identity(g_stories));
    // same architecture, shapes and tensor names; other weights and types
    fg_model *f16 = load("models/synth/synth-llama-F16.gguf");
    fg_model *bf16 = load("models/synth/synth-llama-BF16.gguf");
    assert_non_null(f16);
    assert_non_null(bf16);
    uint64_t c = fg_engine_model_identity(f16), d = fg_engine_model_identity(bf16);
    printf("model identities: %016llx %016llx %016llx %016llx\n", (unsigned long long)a,
           (unsigned long long)b, (unsigned long long)c, (unsigned long long)d);
    assert_true(c != b && d != b && c != d);
    fg_model_destroy(f16);
    fg_model_destroy(bf16);
}

#ifndef RANDOM_ROUNDS
#define RANDOM_ROUNDS 3 // more for a longer soak: -DRANDOM_ROUNDS=100
#endif

// Random workloads: prompts from a few families (shared prefixes of random lengths) or
// unshared, random budgets and pool sizes, some requests cancelled as they are submitted.
static void test_random_workloads(void **state) {
    (void)state;
    const uint64_t seed = 1319;
    printf("random workloads: seed %llu\n", (unsigned long long)seed);
    g_lcg = seed;
    enum { N = 24 };
    job *jobs = calloc(N, sizeof *jobs);
    for (int round = 0; round < RANDOM_ROUNDS; round++) {
        int32_t fam[3][80];
        for (int f = 0; f < 3; f++) {
            fam[f][0] = 1;
            rand_tokens(fam[f] + 1, 79);
        }
        for (int i = 0; i < N; i++) {
            job *j = &jobs[i];
            int f = (int)rnd(4);
            j->n = 1 + (int32_t)rnd(80);
            int32_t k = f < 3 ? (int32_t)rnd((uint32_t)j->n + 1) : 0;
            if (k > 0)
                memcpy(j->prompt, fam[f], (size_t)k * sizeof(int32_t));
            rand_tokens(j->prompt + k, j->n - k);
            j->gen = 1 + (int32_t)rnd(30);
            j->wave = (int)rnd(3);
            j->cancel = rnd(8) == 0;
        }
        int32_t ps = 4 << rnd(3); // 4, 8, 16
        int32_t n_ctx = 112;
        int32_t min_pages = (n_ctx + ps - 1) / ps;
        fg_engine_opts o = {.n_ctx = n_ctx, .max_seqs = 2 + (int32_t)rnd(10), .page_size = ps,
                            .n_pages = min_pages + (int32_t)rnd((uint32_t)min_pages * 3),
                            .max_batch_tokens = 8 + (int32_t)rnd(120)};
        printf("round %d: page %d, %d pages, %d seqs, %d tokens a step\n", round, (int)ps,
               (int)o.n_pages, (int)o.max_seqs, (int)o.max_batch_tokens);
        on_off(round % 3 == 1 ? g_synth : g_stories, o, jobs, N, NULL);
    }
    free(jobs);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_shared_prefix_on_off),
        cmocka_unit_test(test_preemption_and_eviction),
        cmocka_unit_test(test_cancel_mid_prefill),
        cmocka_unit_test(test_racing_same_prefix),
        cmocka_unit_test(test_collisions_not_shared),
        cmocka_unit_test(test_echo_scores_every_position),
        cmocka_unit_test(test_model_identity),
        cmocka_unit_test(test_random_workloads),
        cmocka_unit_test(test_q8_0_cache),
    };
    return cmocka_run_group_tests_name("prefix_cache", tests, setup, teardown);
}
