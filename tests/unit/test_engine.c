// test_engine.c - the engine on real models (stories260K and synth-llama-Q4_0): a greedy
// request equals a direct fg_model_forward greedy loop; 64 concurrent requests equal each alone
// (batching invariance, chunked prefill); a KV pool small enough to force preemption; cancel
// frees pages; stop strings; echo logprobs; queue full; over-long prompts; shutdown.
// Data: FORGE_SHARED (default ../shared); missing models fail.
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
    fg_status st = fg_model_load(path, g_be, &mo, &m);
    if (st != FG_OK) {
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
#define MAX_REC_TOK 512

typedef struct rec {
    char error[256];
    int32_t toks[MAX_REC_TOK];
    float lps[MAX_REC_TOK];
    int32_t top0[MAX_REC_TOK]; // best token of the step's top list (-1: none)
    float top0_lp[MAX_REC_TOK];
    int32_t n_top[MAX_REC_TOK];
    int n_tok;
    int32_t ptoks[MAX_REC_TOK];
    float plps[MAX_REC_TOK];
    int32_t ptop0[MAX_REC_TOK]; // best token of each prompt position
    int n_p;
    char text[8192];
    size_t n_text;
    int n_done;
    fg_finish_reason finish;
    fg_status status;
    int32_t n_prompt_tokens, n_gen_tokens;
    // test hooks
    int block_after; // TOKEN events before the callback blocks (0: never)
} rec;

#include "engine_test_util.h" // (after rec)

static bool g_release; // unblocks callbacks waiting on block_after

static void append_text(rec *r, const char *t, size_t n) {
    if (r->n_text + n < sizeof r->text) {
        memcpy(r->text + r->n_text, t, n);
        r->n_text += n;
        r->text[r->n_text] = '\0';
    }
}

static void on_event(void *user, const fg_event *ev) {
    rec *r = user;
    pthread_mutex_lock(&g_mu);
    switch (ev->kind) {
    case FG_EVENT_TOKEN:
        if (r->n_tok < MAX_REC_TOK) {
            r->toks[r->n_tok] = ev->token;
            r->lps[r->n_tok] = ev->logprob;
            r->n_top[r->n_tok] = ev->n_top;
            r->top0[r->n_tok] = ev->n_top > 0 ? ev->top[0].token : -1;
            r->top0_lp[r->n_tok] = ev->n_top > 0 ? ev->top[0].logprob : NAN;
            r->n_tok++;
        }
        append_text(r, ev->text, ev->text_len);
        if (r->block_after > 0 && r->n_tok == r->block_after) {
            pthread_cond_broadcast(&g_cv);
            while (!g_release)
                pthread_cond_wait(&g_cv, &g_mu);
        }
        break;
    case FG_EVENT_PROMPT_LOGPROB:
        if (r->n_p < MAX_REC_TOK) {
            r->ptoks[r->n_p] = ev->token;
            r->plps[r->n_p] = ev->logprob;
            r->ptop0[r->n_p] = ev->n_top > 0 ? ev->top[0].token : -1;
            r->n_p++;
        }
        break;
    case FG_EVENT_DONE:
        append_text(r, ev->text, ev->text_len);
        r->n_done++;
        r->finish = ev->finish;
        r->status = ev->status;
        r->n_prompt_tokens = ev->n_prompt_tokens;
        r->n_gen_tokens = ev->n_gen_tokens;
        snprintf(r->error, sizeof r->error, "%s", ev->error ? ev->error : "");
        break;
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

// Greedy continuation of prompt (n_gen tokens into out). When plp is not NULL, also the
// log-softmax of each prompt token 1.. given its prefix (prompt evaluated in one step).
static void ref_greedy(fg_model *m, const int32_t *prompt, int32_t n_prompt, int32_t n_gen,
                       int32_t *out, float *gen_lp, float *plp) {
    const int32_t ps = 16;
    int32_t n_vocab = fg_model_get_info(m)->n_vocab;
    int32_t total = n_prompt + n_gen;
    int32_t n_pages = (total + ps - 1) / ps + 1;
    fg_kv_store *kv = NULL;
    assert_int_equal(fg_kv_store_create(m, n_pages, ps, FG_TYPE_F16, &kv), FG_OK);
    int32_t *pt = malloc((size_t)n_pages * sizeof *pt);
    int32_t *pos = malloc((size_t)total * sizeof *pos);
    int32_t *seq = calloc((size_t)total, sizeof *seq);
    bool *want = malloc((size_t)total * sizeof *want);
    float *logits = malloc((size_t)n_prompt * (size_t)n_vocab * sizeof *logits);
    for (int32_t i = 0; i < n_pages; i++)
        pt[i] = i;
    for (int32_t i = 0; i < total; i++)
        pos[i] = i;
    for (int32_t i = 0; i < n_prompt; i++)
        want[i] = plp != NULL || i == n_prompt - 1;
    const int32_t *pts[1] = {pt};
    int32_t n_kv = n_prompt;
    fg_batch b = {.n_tokens = n_prompt, .tokens = prompt, .pos = pos, .seq = seq,
                  .want_logits = want, .n_seqs = 1, .n_kv = &n_kv, .page_tables = pts};
    if (fg_model_forward(m, kv, &b, logits) != FG_OK)
        fail_msg("reference prompt forward: %s", fg_last_error());
    const float *last = logits;
    if (plp) {
        for (int32_t i = 0; i + 1 < n_prompt; i++)
            plp[i] = fg_logprobs(logits + (size_t)i * n_vocab, n_vocab, prompt[i + 1], 0, NULL,
                                 NULL);
        last = logits + (size_t)(n_prompt - 1) * n_vocab;
    }
    for (int32_t g = 0; g < n_gen; g++) {
        int32_t t = argmax(last, n_vocab);
        out[g] = t;
        if (gen_lp)
            gen_lp[g] = fg_logprobs(last, n_vocab, t, 0, NULL, NULL);
        if (g + 1 == n_gen)
            break;
        n_kv = n_prompt + g + 1;
        fg_batch d = {.n_tokens = 1, .tokens = &out[g], .pos = &pos[n_kv - 1], .seq = seq,
                      .want_logits = NULL, .n_seqs = 1, .n_kv = &n_kv, .page_tables = pts};
        if (fg_model_forward(m, kv, &d, logits) != FG_OK)
            fail_msg("reference decode forward: %s", fg_last_error());
        last = logits;
    }
    free(logits);
    free(want);
    free(seq);
    free(pos);
    free(pt);
    fg_kv_store_destroy(kv);
}

static fg_engine *mk_engine(fg_model *m, fg_engine_opts o) {
    fg_engine *e = NULL;
    if (fg_engine_create(m, &o, &e) != FG_OK)
        fail_msg("engine create: %s", fg_last_error());
    return e;
}

static void expect_tokens(const rec *r, const int32_t *want, int32_t n, int idx) {
    if (r->n_tok != n)
        fail_msg("request %d: %d tokens, expected %d", idx, r->n_tok, n);
    for (int32_t i = 0; i < n; i++)
        if (r->toks[i] != want[i])
            fail_msg("request %d: token %d is %d, expected %d", idx, i, r->toks[i], want[i]);
}

// ---- tests
static void test_single_greedy(void **state) {
    (void)state;
    const fg_tokenizer *tok = fg_model_tokenizer(g_stories);
    const char *text = "Once upon a time, there was a little girl named Lily.";
    int32_t *prompt = NULL;
    size_t n = 0;
    assert_int_equal(fg_tokenize(tok, text, strlen(text), true, false, &prompt, &n), FG_OK);
    const int32_t n_gen = 40;
    int32_t want[40];
    float want_lp[40];
    ref_greedy(g_stories, prompt, (int32_t)n, n_gen, want, want_lp, NULL);

    fg_engine *e = mk_engine(g_stories, (fg_engine_opts){.n_ctx = 256});
    assert_int_equal(fg_engine_n_ctx(e), 256);
    rec *r = calloc(1, sizeof *r);
    fg_request_params rp = greedy_params(prompt, (int32_t)n, n_gen);
    rp.logprobs = 2;
    uint64_t id = 0;
    assert_int_equal(fg_engine_submit(e, &rp, on_event, r, &id), FG_OK);
    assert_true(id > 0);
    wait_all(r, 1);
    expect_tokens(r, want, n_gen, 0);
    for (int i = 0; i < n_gen; i++) {
        if (!(fabsf(r->lps[i] - want_lp[i]) <= 1e-4f))
            fail_msg("token %d logprob %g, reference %g", i, (double)r->lps[i],
                     (double)want_lp[i]);
        // greedy: the chosen token heads the top list
        assert_int_equal(r->n_top[i], 2);
        assert_int_equal(r->top0[i], want[i]);
        assert_true(r->top0_lp[i] == r->lps[i]);
    }
    assert_int_equal(r->n_done, 1);
    assert_int_equal(r->finish, FG_FINISH_LENGTH);
    assert_int_equal(r->status, FG_OK);
    assert_int_equal(r->n_prompt_tokens, (int)n);
    assert_int_equal(r->n_gen_tokens, n_gen);
    // the text is the concatenation of the pieces
    char expect[4096];
    size_t k = 0;
    for (int i = 0; i < n_gen; i++) {
        int32_t m = fg_token_to_piece(tok, want[i], false, expect + k, sizeof expect - k);
        assert_true(m >= 0 && k + (size_t)m < sizeof expect);
        k += (size_t)m;
    }
    expect[k] = '\0';
    assert_string_equal(r->text, expect);
    printf("greedy: \"%s\"\n", r->text);
    fg_request_info info;
    assert_int_equal(fg_engine_request_info(e, id, &info), FG_OK);
    assert_int_equal(info.state, FG_REQ_FINISHED);
    assert_int_equal(info.n_gen_tokens, n_gen);
    assert_int_equal(fg_engine_request_info(e, id + 100, &info), FG_ERR_INVALID_ARG);
    fg_engine_stats st;
    fg_engine_get_stats(e, &st);
    assert_int_equal(st.requests_total, 1);
    assert_int_equal(st.requests_finished, 1);
    assert_int_equal(st.tokens_out, n_gen);
    assert_int_equal(st.tokens_in, n);
    assert_int_equal(st.kv_pages_used, 0);
    assert_int_equal(st.ttft_count, 1);
    assert_int_equal(st.itl_count, n_gen - 1);
    assert_int_equal(st.itl_counts[st.n_buckets - 1] <= st.itl_count, 1);
    fg_engine_destroy(e, 5.0);
    free(r);
    free(prompt);
}

// n requests with random prompts (lengths 1..max_len), greedy, checked against each alone.
static void run_invariance(fg_model *m, int n, int32_t max_len, fg_engine_opts o,
                           uint64_t seed, uint64_t *preemptions) {
    printf("invariance: %d requests, seed %llu\n", n, (unsigned long long)seed);
    g_lcg = seed;
    int32_t(*prompts)[200] = malloc((size_t)n * sizeof *prompts);
    int32_t *lens = malloc((size_t)n * sizeof *lens);
    int32_t *gens = malloc((size_t)n * sizeof *gens);
    int32_t(*want)[64] = malloc((size_t)n * sizeof *want);
    rec *r = calloc((size_t)n, sizeof *r);
    for (int i = 0; i < n; i++) {
        lens[i] = 1 + (int32_t)rnd((uint32_t)max_len);
        gens[i] = 4 + (int32_t)rnd(28);
        rand_prompt(prompts[i], lens[i]);
        ref_greedy(m, prompts[i], lens[i], gens[i], want[i], NULL, NULL);
    }
    fg_engine *e = mk_engine(m, o);
    for (int i = 0; i < n; i++) {
        fg_request_params rp = greedy_params(prompts[i], lens[i], gens[i]);
        if (fg_engine_submit(e, &rp, on_event, &r[i], NULL) != FG_OK)
            fail_msg("submit %d: %s", i, fg_last_error());
    }
    wait_all(r, n);
    for (int i = 0; i < n; i++) {
        assert_int_equal(r[i].n_done, 1);
        assert_int_equal(r[i].status, FG_OK);
        expect_tokens(&r[i], want[i], gens[i], i);
    }
    fg_engine_stats st;
    fg_engine_get_stats(e, &st);
    assert_int_equal(st.requests_finished, n);
    assert_int_equal(st.kv_pages_used, 0);
    printf("invariance: %llu steps, %llu preemptions\n", (unsigned long long)st.steps,
           (unsigned long long)st.preemptions);
    if (preemptions)
        *preemptions = st.preemptions;
    fg_engine_destroy(e, 5.0);
    free(r);
    free(want);
    free(gens);
    free(lens);
    free(prompts);
}

static void test_batch_invariance_64(void **state) {
    (void)state;
    // chunked prefill: 64-token steps, prompts up to 100 tokens over 16-token pages
    run_invariance(g_stories, 64, 100,
                   (fg_engine_opts){.n_ctx = 256, .max_seqs = 64, .max_batch_tokens = 64}, 101,
                   NULL);
}

static void test_batch_invariance_synth(void **state) {
    (void)state;
    run_invariance(g_synth, 16, 60,
                   (fg_engine_opts){.n_ctx = 128, .max_seqs = 16, .max_batch_tokens = 96}, 202,
                   NULL);
}

static void test_preemption(void **state) {
    (void)state;
    // 12 pages of 8 tokens: one sequence of n_ctx 96 fits, eight sequences of ~40-90 do not
    uint64_t pre = 0;
    run_invariance(g_stories, 24, 60,
                   (fg_engine_opts){.n_ctx = 96, .max_seqs = 8, .page_size = 8, .n_pages = 12,
                                    .max_batch_tokens = 32},
                   303, &pre);
    assert_true(pre > 0);
}

static bool n_tok_at_least(void *arg) {
    rec *r = arg;
    return r->n_tok >= 5 || r->n_done > 0;
}

static void test_cancel_frees_pages(void **state) {
    (void)state;
    fg_engine *e = mk_engine(g_stories, (fg_engine_opts){.n_ctx = 512, .page_size = 16});
    fg_engine_stats st0; // the pool's gauges hold from the start, before any step
    fg_engine_get_stats(e, &st0);
    assert_int_equal(st0.kv_pages_free, (512 / 16) * 16);
    assert_int_equal(st0.kv_pages_used, 0);
    int32_t prompt[40];
    g_lcg = 404;
    rand_prompt(prompt, 40);
    rec *r = calloc(2, sizeof *r);
    fg_request_params rp = greedy_params(prompt, 40, 400);
    uint64_t id, id2;
    assert_int_equal(fg_engine_submit(e, &rp, on_event, &r[0], &id), FG_OK);
    assert_int_equal(fg_engine_submit(e, &rp, on_event, &r[1], &id2), FG_OK);
    wait_until(n_tok_at_least, &r[0], "5 tokens");
    assert_int_equal(fg_engine_cancel(e, id), FG_OK);
    assert_int_equal(fg_engine_cancel(e, id2), FG_OK);
    wait_all(r, 2);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(r[i].n_done, 1);
        assert_int_equal(r[i].finish, FG_FINISH_CANCELLED);
        assert_int_equal(r[i].status, FG_ERR_CANCELLED);
        assert_true(r[i].n_tok < 400);
    }
    fg_engine_stats st;
    fg_engine_get_stats(e, &st);
    assert_int_equal(st.kv_pages_used, 0);
    assert_int_equal(st.kv_pages_free, (512 / 16) * 16);
    assert_int_equal(st.requests_cancelled, 2);
    assert_int_equal(st.running, 0);
    fg_request_info info;
    assert_int_equal(fg_engine_request_info(e, id, &info), FG_OK);
    assert_int_equal(info.state, FG_REQ_CANCELLED);
    assert_int_equal(fg_engine_cancel(e, id), FG_OK); // over already: no-op
    assert_int_equal(fg_engine_cancel(e, 987654), FG_ERR_INVALID_ARG);
    assert_string_equal(fg_last_error(), "engine: cancel: unknown request 987654");
    // shutdown with a grace period lets a running request finish
    memset(r, 0, 2 * sizeof *r);
    fg_request_params rp3 = greedy_params(prompt, 40, 60);
    assert_int_equal(fg_engine_submit(e, &rp3, on_event, &r[0], &id), FG_OK);
    fg_engine_destroy(e, 60.0);
    assert_int_equal(r[0].n_done, 1);
    assert_int_equal(r[0].finish, FG_FINISH_LENGTH);
    assert_int_equal(r[0].n_tok, 60);
    // shutdown with no grace cancels what runs
    e = mk_engine(g_stories, (fg_engine_opts){.n_ctx = 512, .page_size = 16});
    memset(r, 0, 2 * sizeof *r);
    assert_int_equal(fg_engine_submit(e, &rp, on_event, &r[0], &id), FG_OK);
    wait_until(n_tok_at_least, &r[0], "5 tokens");
    fg_engine_destroy(e, 0.0);
    assert_int_equal(r[0].n_done, 1);
    assert_int_equal(r[0].finish, FG_FINISH_CANCELLED);
    free(r);
}

static void test_stop_strings(void **state) {
    (void)state;
    const fg_tokenizer *tok = fg_model_tokenizer(g_stories);
    const char *text = "Once upon a time";
    int32_t *prompt = NULL;
    size_t n = 0;
    assert_int_equal(fg_tokenize(tok, text, strlen(text), true, false, &prompt, &n), FG_OK);
    fg_engine *e = mk_engine(g_stories, (fg_engine_opts){.n_ctx = 256});
    rec *r = calloc(3, sizeof *r);
    fg_request_params rp = greedy_params(prompt, (int32_t)n, 60);
    assert_int_equal(fg_engine_submit(e, &rp, on_event, &r[0], NULL), FG_OK);
    wait_all(r, 1);
    const char *full = r[0].text;
    printf("full: \"%s\"\n", full);
    assert_true(strlen(full) > 40);
    // a stop string taken from the middle of the text (spanning several tokens)
    char stop[16];
    size_t at = 20;
    memcpy(stop, full + at, 6);
    stop[6] = '\0';
    const char *first = strstr(full, stop);
    size_t want_len = (size_t)(first - full);
    rp.stop[0] = stop;
    rp.stop[1] = "zzzz-never";
    assert_int_equal(fg_engine_submit(e, &rp, on_event, &r[1], NULL), FG_OK);
    // a stop string that never matches: everything comes out, held-back text included
    fg_request_params rp2 = greedy_params(prompt, (int32_t)n, 60);
    rp2.stop[0] = "Once upon a time there";
    rp2.n_stop = 1;
    assert_int_equal(fg_engine_submit(e, &rp2, on_event, &r[2], NULL), FG_OK);
    wait_all(r, 3);
    assert_int_equal(r[1].finish, FG_FINISH_STOP);
    assert_int_equal(r[1].n_text, want_len);
    assert_memory_equal(r[1].text, full, want_len);
    assert_true(r[1].n_tok < r[0].n_tok);
    printf("stop \"%s\": \"%s\"\n", stop, r[1].text);
    assert_int_equal(r[2].finish, FG_FINISH_LENGTH);
    assert_string_equal(r[2].text, full);
    // stop strings at many offsets and lengths (inside one token or across several), together
    rec *q = calloc(16, sizeof *q);
    char stops[16][8];
    size_t want_q[16];
    for (int k = 0; k < 16; k++) {
        size_t off = 2 + 9 * (size_t)k, len = 1 + (size_t)k % 7;
        memcpy(stops[k], full + off, len);
        stops[k][len] = '\0';
        want_q[k] = (size_t)(strstr(full, stops[k]) - full);
        fg_request_params qp = greedy_params(prompt, (int32_t)n, 60);
        qp.stop[0] = "never-there";
        qp.stop[1] = stops[k];
        assert_int_equal(fg_engine_submit(e, &qp, on_event, &q[k], NULL), FG_OK);
    }
    wait_all(q, 16);
    for (int k = 0; k < 16; k++) {
        if (q[k].finish != FG_FINISH_STOP || q[k].n_text != want_q[k] ||
            memcmp(q[k].text, full, want_q[k]) != 0)
            fail_msg("stop \"%s\": finish %d, text \"%s\", expected the first %zu bytes",
                     stops[k], (int)q[k].finish, q[k].text, want_q[k]);
    }
    free(q);
    fg_engine_destroy(e, 5.0);
    free(r);
    free(prompt);
}

static void test_echo_logprobs(void **state) {
    (void)state;
    int32_t prompt[150];
    g_lcg = 505;
    rand_prompt(prompt, 150);
    float plp[150];
    int32_t one;
    ref_greedy(g_stories, prompt, 150, 1, &one, NULL, plp);
    // 150 prompt positions over several steps (64 logits rows beyond one per sequence)
    fg_engine *e = mk_engine(g_stories, (fg_engine_opts){.n_ctx = 256, .max_batch_tokens = 128});
    rec *r = calloc(2, sizeof *r);
    fg_request_params rp = greedy_params(prompt, 150, 0);
    rp.echo_logprobs = true;
    rp.logprobs = 1;
    assert_int_equal(fg_engine_submit(e, &rp, on_event, &r[0], NULL), FG_OK);
    fg_request_params rp2 = greedy_params(prompt, 150, 0); // no echo: done at once
    assert_int_equal(fg_engine_submit(e, &rp2, on_event, &r[1], NULL), FG_OK);
    wait_all(r, 2);
    assert_int_equal(r[0].finish, FG_FINISH_LENGTH);
    assert_int_equal(r[0].status, FG_OK);
    assert_int_equal(r[0].n_tok, 0);
    assert_int_equal(r[0].n_p, 149);
    for (int i = 0; i < 149; i++) {
        assert_int_equal(r[0].ptoks[i], prompt[i + 1]);
        assert_true(r[0].ptop0[i] >= 0);
        if (!(fabsf(r[0].plps[i] - plp[i]) <= 1e-3f))
            fail_msg("prompt token %d: logprob %g, reference %g", i + 1, (double)r[0].plps[i],
                     (double)plp[i]);
    }
    assert_int_equal(r[1].n_p, 0);
    assert_int_equal(r[1].n_done, 1);
    assert_int_equal(r[1].finish, FG_FINISH_LENGTH);
    assert_int_equal(r[1].n_gen_tokens, 0);
    fg_engine_destroy(e, 5.0);
    free(r);
}

static void test_eog_stops(void **state) {
    (void)state;
    // random weights: look for a prompt whose greedy continuation hits an EOG token
    const fg_tokenizer *tok = fg_model_tokenizer(g_synth);
    const uint64_t seed = 808;
    printf("eog search: seed %llu\n", (unsigned long long)seed);
    g_lcg = seed;
    int32_t prompt[32], want[48];
    int32_t len = 0, at = -1;
    for (int attempt = 0; attempt < 200 && at < 0; attempt++) {
        len = 4 + (int32_t)rnd(28);
        rand_prompt(prompt, len);
        ref_greedy(g_synth, prompt, len, 48, want, NULL, NULL);
        for (int i = 0; i < 48 && at < 0; i++)
            if (fg_tokenizer_is_eog(tok, want[i]))
                at = i;
    }
    if (at < 0)
        fail_msg("no greedy continuation with an EOG token in 200 prompts");
    printf("eog at generated token %d (prompt of %d)\n", at, len);
    fg_engine *e = mk_engine(g_synth, (fg_engine_opts){.n_ctx = 128});
    rec *r = calloc(2, sizeof *r);
    fg_request_params rp = greedy_params(prompt, len, 48);
    rp.ignore_eos = false;
    assert_int_equal(fg_engine_submit(e, &rp, on_event, &r[0], NULL), FG_OK);
    rp.ignore_eos = true;
    assert_int_equal(fg_engine_submit(e, &rp, on_event, &r[1], NULL), FG_OK);
    wait_all(r, 2);
    expect_tokens(&r[0], want, at, 0); // the EOG token itself gets no TOKEN event
    assert_int_equal(r[0].finish, FG_FINISH_STOP);
    assert_int_equal(r[0].n_gen_tokens, at + 1);
    expect_tokens(&r[1], want, 48, 1);
    assert_int_equal(r[1].finish, FG_FINISH_LENGTH);
    fg_engine_destroy(e, 5.0);
    free(r);
}

static void test_step_limits(void **state) {
    (void)state;
    // An engine budget above the model's step limits (512 tokens, 64 sequences) is refused
    // when the engine is created, naming both, instead of failing every step later.
    fg_engine *e = NULL;
    fg_engine_opts o = {.n_ctx = 1024, .max_batch_tokens = 1024};
    assert_int_equal(fg_engine_create(g_stories, &o, &e), FG_ERR_INVALID_ARG);
    assert_null(e);
    assert_string_equal(fg_last_error(),
                        "engine: max_seqs 16 / max_batch_tokens 1024 exceed what the model was "
                        "loaded for (64 / 512): load it with larger fg_model_opts");
    o = (fg_engine_opts){.n_ctx = 1024, .max_seqs = 65};
    assert_int_equal(fg_engine_create(g_stories, &o, &e), FG_ERR_INVALID_ARG);
    // within the limits, a prompt longer than the step budget is prefilled in chunks
    e = mk_engine(g_stories, (fg_engine_opts){.n_ctx = 1024, .max_batch_tokens = 200});
    int32_t prompt[500];
    g_lcg = 909;
    rand_prompt(prompt, 500);
    rec *r = calloc(1, sizeof *r);
    int32_t want[4];
    ref_greedy(g_stories, prompt, 500, 4, want, NULL, NULL);
    fg_request_params rp = greedy_params(prompt, 500, 4);
    assert_int_equal(fg_engine_submit(e, &rp, on_event, &r[0], NULL), FG_OK);
    wait_all(r, 1);
    expect_tokens(&r[0], want, 4, 0);
    fg_engine_stats st;
    fg_engine_get_stats(e, &st);
    assert_int_equal(st.requests_failed, 0);
    assert_int_equal(st.kv_pages_used, 0);
    fg_engine_destroy(e, 5.0);
    free(r);
}

static bool blocked(void *arg) {
    rec *r = arg;
    return r->n_tok >= r->block_after;
}

static void test_queue_full_and_bad_args(void **state) {
    (void)state;
    fg_engine *e =
        mk_engine(g_stories, (fg_engine_opts){.n_ctx = 64, .queue_cap = 3, .max_seqs = 2});
    int32_t prompt[80];
    g_lcg = 606;
    rand_prompt(prompt, 80);
    rec *r = calloc(5, sizeof *r);
    // the first request's callback holds the scheduler thread after one token
    pthread_mutex_lock(&g_mu);
    g_release = false;
    pthread_mutex_unlock(&g_mu);
    r[0].block_after = 1;
    fg_request_params rp = greedy_params(prompt, 8, 4);
    assert_int_equal(fg_engine_submit(e, &rp, on_event, &r[0], NULL), FG_OK);
    wait_until(blocked, &r[0], "the scheduler to block");
    for (int i = 1; i <= 3; i++)
        assert_int_equal(fg_engine_submit(e, &rp, on_event, &r[i], NULL), FG_OK);
    assert_int_equal(fg_engine_submit(e, &rp, on_event, &r[4], NULL), FG_ERR_CAPACITY);
    assert_string_equal(fg_last_error(), "engine: queue full (3 requests waiting)");
    fg_engine_stats st;
    fg_engine_get_stats(e, &st);
    assert_int_equal(st.requests_total, 4);
    pthread_mutex_lock(&g_mu);
    g_release = true;
    pthread_cond_broadcast(&g_cv);
    pthread_mutex_unlock(&g_mu);
    wait_all(r, 4);
    for (int i = 0; i < 4; i++)
        assert_int_equal(r[i].n_tok, 4);
    assert_int_equal(r[4].n_done, 0);

    // arguments
    fg_request_params bad = greedy_params(prompt, 65, 0);
    assert_int_equal(fg_engine_submit(e, &bad, on_event, &r[4], NULL), FG_ERR_INVALID_ARG);
    assert_string_equal(fg_last_error(),
                        "engine: request: prompt of 65 tokens exceeds the context of 64");
    bad = greedy_params(prompt, 60, 5);
    assert_int_equal(fg_engine_submit(e, &bad, on_event, &r[4], NULL), FG_ERR_INVALID_ARG);
    assert_string_equal(fg_last_error(), "engine: request: prompt of 60 tokens + max_tokens 5 "
                                         "exceeds the context of 64");
    bad = greedy_params(prompt, 0, 5);
    assert_int_equal(fg_engine_submit(e, &bad, on_event, &r[4], NULL), FG_ERR_INVALID_ARG);
    int32_t oob[2] = {1, 512};
    bad = greedy_params(oob, 2, 5);
    assert_int_equal(fg_engine_submit(e, &bad, on_event, &r[4], NULL), FG_ERR_INVALID_ARG);
    assert_string_equal(fg_last_error(),
                        "engine: request: prompt token 512 at index 1 outside 0..511");
    bad = greedy_params(prompt, 4, 5);
    bad.logprobs = 21;
    assert_int_equal(fg_engine_submit(e, &bad, on_event, &r[4], NULL), FG_ERR_INVALID_ARG);
    bad = greedy_params(prompt, 4, 5);
    bad.sampling.repeat_penalty = -1.0f;
    assert_int_equal(fg_engine_submit(e, &bad, on_event, &r[4], NULL), FG_ERR_INVALID_ARG);
    assert_string_equal(fg_last_error(), "engine: request: sampler: repeat_penalty -1 must be > 0");
    assert_int_equal(r[4].n_done, 0);
    fg_engine_destroy(e, 5.0);
    // engine options
    fg_engine *e2 = NULL;
    fg_engine_opts o = {.n_ctx = 256, .page_size = 16, .n_pages = 8};
    assert_int_equal(fg_engine_create(g_stories, &o, &e2), FG_ERR_INVALID_ARG);
    assert_string_equal(fg_last_error(),
                        "engine: n_pages 8 x page_size 16 holds less than one sequence of "
                        "n_ctx 256");
    free(r);
}

static void test_sampled_reproducible(void **state) {
    (void)state;
    // same seed -> same tokens, whether alone or batched with others
    int32_t prompt[12];
    g_lcg = 707;
    rand_prompt(prompt, 12);
    fg_engine *e = mk_engine(g_stories, (fg_engine_opts){.n_ctx = 128});
    rec *r = calloc(9, sizeof *r);
    fg_request_params rp = greedy_params(prompt, 12, 30);
    rp.sampling = fg_sampling_default();
    rp.sampling.seed = 1234;
    rp.sampling.repeat_penalty = 1.1f;
    assert_int_equal(fg_engine_submit(e, &rp, on_event, &r[0], NULL), FG_OK);
    wait_all(r, 1);
    for (int i = 1; i < 9; i++) {
        fg_request_params q = rp;
        q.sampling.seed = i % 2 ? 1234 : 99 + (uint64_t)i;
        assert_int_equal(fg_engine_submit(e, &q, on_event, &r[i], NULL), FG_OK);
    }
    wait_all(r, 9);
    for (int i = 1; i < 9; i += 2)
        expect_tokens(&r[i], r[0].toks, 30, i);
    fg_engine_destroy(e, 5.0);
    free(r);
}

// The reference for sampled requests: the host sampler (fg_sampler_sample, as the engine
// used it before sampling moved onto the backend) over fg_model_forward's logits, one
// sequence alone (the shapes of the engine's steps for one request, so the logits are the
// same bits). Tokens into out, the chosen token's logprob and top list into lp / top0.
static void ref_sampled(fg_model *m, const int32_t *prompt, int32_t n_prompt, const fg_request_params *rp,
                        int32_t *out, int32_t *n_out, float *lp, int32_t *top0) {
    const int32_t ps = 16;
    int32_t n_vocab = fg_model_get_info(m)->n_vocab;
    int32_t total = n_prompt + rp->max_tokens;
    int32_t n_pages = (total + ps - 1) / ps + 1;
    fg_kv_store *kv = NULL;
    assert_int_equal(fg_kv_store_create(m, n_pages, ps, FG_TYPE_F16, &kv), FG_OK);
    int32_t *pt = malloc((size_t)n_pages * sizeof *pt);
    int32_t *pos = malloc((size_t)total * sizeof *pos);
    int32_t *seq = calloc((size_t)total, sizeof *seq);
    float *logits = malloc((size_t)n_vocab * sizeof *logits);
    for (int32_t i = 0; i < n_pages; i++)
        pt[i] = i;
    for (int32_t i = 0; i < total; i++)
        pos[i] = i;
    const int32_t *pts[1] = {pt};
    fg_sampler *smp = NULL;
    assert_int_equal(fg_sampler_create(&rp->sampling, n_vocab, &smp), FG_OK);
    for (int32_t i = 0; i < n_prompt; i++)
        fg_sampler_accept(smp, prompt[i]);
    int32_t n_kv = n_prompt;
    fg_batch b = {.n_tokens = n_prompt, .tokens = prompt, .pos = pos, .seq = seq, .n_seqs = 1,
                  .n_kv = &n_kv, .page_tables = pts};
    if (fg_model_forward(m, kv, &b, logits) != FG_OK)
        fail_msg("reference prompt forward: %s", fg_last_error());
    const fg_tokenizer *tok = fg_model_tokenizer(m);
    *n_out = 0;
    for (int32_t g = 0; g < rp->max_tokens; g++) {
        int32_t t = fg_sampler_sample(smp, logits);
        fg_sampler_accept(smp, t);
        if (!rp->ignore_eos && fg_tokenizer_is_eog(tok, t))
            break;
        fg_top_logprob top[FG_MAX_TOP_LOGPROBS];
        int32_t nt = 0;
        lp[g] = fg_logprobs(logits, n_vocab, t, rp->logprobs, top, &nt);
        top0[g] = nt > 0 ? top[0].token : -1;
        out[(*n_out)++] = t;
        if (g + 1 == rp->max_tokens)
            break;
        n_kv = n_prompt + g + 1;
        fg_batch d = {.n_tokens = 1, .tokens = &out[g], .pos = &pos[n_kv - 1], .seq = seq, .n_seqs = 1,
                      .n_kv = &n_kv, .page_tables = pts};
        if (fg_model_forward(m, kv, &d, logits) != FG_OK)
            fail_msg("reference decode forward: %s", fg_last_error());
    }
    fg_sampler_destroy(smp);
    free(logits);
    free(seq);
    free(pos);
    free(pt);
    fg_kv_store_destroy(kv);
}

// Sampling on the backend (the CPU backend's sample op, the engine's only path) gives the
// host sampler's tokens and log-probabilities exactly: seeded requests with every filter, the
// penalties over a window and over the whole history, logit bias, +inf-free random logits of
// both shared models, each request alone, with both event orders.
static void test_device_sampling_matches_host(void **state) {
    (void)state;
    const uint64_t seed = 1212;
    printf("device sampling: seed %llu\n", (unsigned long long)seed);
    g_lcg = seed;
    fg_model *models[2] = {g_stories, g_synth};
    int n_checked = 0;
    for (int mi = 0; mi < 2; mi++) {
        for (int order = -1; order <= 1; order += 2) {
            fg_engine *e = mk_engine(models[mi], (fg_engine_opts){.n_ctx = 128, .defer_events = order});
            for (int k = 0; k < 8; k++) {
                int32_t prompt[24];
                int32_t len = 2 + (int32_t)rnd(20);
                rand_prompt(prompt, len);
                fg_request_params rp = greedy_params(prompt, len, 24 + (int32_t)rnd(16));
                rp.sampling = fg_sampling_default();
                rp.sampling.seed = 1000 + (uint64_t)rnd(1u << 30);
                rp.ignore_eos = k % 2 == 0;
                rp.logprobs = (int32_t)rnd(4) - 1;
                fg_logit_bias bias[3] = {{(int32_t)rnd(512), 2.5f}, {(int32_t)rnd(512), -1.0f}, {7, 1.5f}};
                switch (k % 4) {
                case 0: // defaults: top-k 40, top-p 0.95, min-p 0.05, temperature 0.8
                    break;
                case 1: // penalties over a window, no top-k, a wide nucleus, logit bias
                    rp.sampling.top_k = 0;
                    rp.sampling.top_p = 0.99f;
                    rp.sampling.repeat_penalty = 1.3f;
                    rp.sampling.repeat_last_n = 8;
                    rp.sampling.frequency_penalty = 0.2f;
                    rp.sampling.logit_bias = bias;
                    rp.sampling.n_logit_bias = 3;
                    break;
                case 2: // the whole history penalised, hot temperature, no filters but min-p
                    rp.sampling.top_k = 0;
                    rp.sampling.top_p = 1.0f;
                    rp.sampling.min_p = 0.01f;
                    rp.sampling.temperature = 1.7f;
                    rp.sampling.repeat_last_n = -1;
                    rp.sampling.presence_penalty = 0.5f;
                    break;
                default: // no filters at all: the draw over the whole vocabulary
                    rp.sampling.top_k = 0;
                    rp.sampling.top_p = 1.0f;
                    rp.sampling.min_p = 0.0f;
                    rp.sampling.temperature = 1.0f;
                    rp.sampling.logit_bias = bias;
                    rp.sampling.n_logit_bias = 2;
                    break;
                }
                int32_t want[64], n_want = 0, top0[64];
                float lp[64];
                ref_sampled(models[mi], prompt, len, &rp, want, &n_want, lp, top0);
                rec *r = calloc(1, sizeof *r);
                assert_int_equal(fg_engine_submit(e, &rp, on_event, r, NULL), FG_OK);
                wait_all(r, 1);
                assert_int_equal(r->status, FG_OK);
                expect_tokens(r, want, n_want, k);
                for (int32_t i = 0; i < n_want && rp.logprobs >= 0; i++) {
                    if (!(r->lps[i] == lp[i]) || r->top0[i] != top0[i] || r->n_top[i] != rp.logprobs)
                        fail_msg("model %d request %d token %d: logprob %.9g top %d (%d), host %.9g top %d", mi, k,
                                 i, (double)r->lps[i], r->top0[i], r->n_top[i], (double)lp[i], top0[i]);
                }
                n_checked += n_want;
                free(r);
            }
            fg_engine_destroy(e, 5.0);
        }
    }
    printf("device sampling: %d tokens equal to the host sampler's\n", n_checked);
}

// The events of a step emitted after the next step is submitted (what a GPU engine does):
// batching invariance, preemption and stop strings hold as with the events first.
static void test_deferred_events(void **state) {
    (void)state;
    uint64_t pre = 0;
    run_invariance(g_stories, 64, 100,
                   (fg_engine_opts){.n_ctx = 256, .max_seqs = 64, .max_batch_tokens = 64, .defer_events = 1}, 101,
                   NULL);
    run_invariance(g_stories, 24, 60,
                   (fg_engine_opts){.n_ctx = 96, .max_seqs = 8, .page_size = 8, .n_pages = 12,
                                    .max_batch_tokens = 32, .defer_events = 1},
                   303, &pre);
    assert_true(pre > 0);
    // a stop string ends a request whose next step is already submitted: that row is dropped
    const fg_tokenizer *tok = fg_model_tokenizer(g_stories);
    const char *text = "Once upon a time";
    int32_t *prompt = NULL;
    size_t n = 0;
    assert_int_equal(fg_tokenize(tok, text, strlen(text), true, false, &prompt, &n), FG_OK);
    rec *r = calloc(2, sizeof *r);
    fg_engine *e = mk_engine(g_stories, (fg_engine_opts){.n_ctx = 256, .defer_events = 1});
    fg_request_params rp = greedy_params(prompt, (int32_t)n, 60);
    assert_int_equal(fg_engine_submit(e, &rp, on_event, &r[0], NULL), FG_OK);
    wait_all(r, 1);
    char stop[8];
    memcpy(stop, r[0].text + 20, 6);
    stop[6] = '\0';
    size_t want_len = (size_t)(strstr(r[0].text, stop) - r[0].text);
    rp.stop[0] = stop;
    assert_int_equal(fg_engine_submit(e, &rp, on_event, &r[1], NULL), FG_OK);
    wait_all(r, 2);
    assert_int_equal(r[1].finish, FG_FINISH_STOP);
    assert_int_equal(r[1].n_text, want_len);
    assert_memory_equal(r[1].text, r[0].text, want_len);
    fg_engine_stats st;
    fg_engine_get_stats(e, &st);
    assert_int_equal(st.kv_pages_used, 0);
    assert_int_equal(st.running, 0);
    fg_engine_destroy(e, 5.0);
    free(r);
    free(prompt);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_single_greedy),
        cmocka_unit_test(test_batch_invariance_64),
        cmocka_unit_test(test_batch_invariance_synth),
        cmocka_unit_test(test_preemption),
        cmocka_unit_test(test_cancel_frees_pages),
        cmocka_unit_test(test_stop_strings),
        cmocka_unit_test(test_echo_logprobs),
        cmocka_unit_test(test_eog_stops),
        cmocka_unit_test(test_step_limits),
        cmocka_unit_test(test_queue_full_and_bad_args),
        cmocka_unit_test(test_sampled_reproducible),
        cmocka_unit_test(test_device_sampling_matches_host),
        cmocka_unit_test(test_deferred_events),
    };
    return cmocka_run_group_tests_name("engine", tests, setup, teardown);
}
