// test_engine_gpu.c - the engine on a GPU backend (FORGE_DEVICE, default cuda; every test SKIPS
// loudly without a usable GPU): sampling on the device and the asynchronous step loop (step
// N+1 planned while N runs, events after N+1's submit). Each request alone equals the host
// sampler (fg_sampler_sample) over the same backend's fg_model_forward logits: greedy and
// seeded tokens identical, log-probabilities within 1e-5 (the device's log-softmax sums in
// another order); and a load of concurrent requests with stop strings, logprobs, echo scoring
// and cancellations ends with every request DONE once and every KV page free; the prefix cache
// on and off give the same answers within test_golden's tolerance (issue 13).
// Data: FORGE_SHARED (default ../shared).
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

static const char *device_name(void) {
    const char *d = getenv("FORGE_DEVICE");
    return d && *d ? d : "cuda"; // (FORGE_DEVICE=cpu runs it on the CPU: a check of the test itself)
}

static fg_backend *g_be;
static fg_model *g_models[2];
static bool g_skip;
static char g_why[512];

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
    fg_backend_opts bo = {0};
    fg_status st = fg_backend_create(device_name(), &bo, &g_be);
    if (st == FG_ERR_DEVICE || st == FG_ERR_UNSUPPORTED) {
        g_skip = true;
        snprintf(g_why, sizeof g_why, "%s backend: %s", device_name(), fg_last_error());
        return 0;
    }
    if (st != FG_OK) {
        print_error("%s backend: %s\n", device_name(), fg_last_error());
        return -1;
    }
    g_models[0] = load("models/stories260K.gguf");
    g_models[1] = load("models/synth/synth-llama-Q4_0.gguf");
    return g_models[0] && g_models[1] ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    for (int i = 0; i < 2; i++)
        fg_model_destroy(g_models[i]);
    fg_backend_destroy(g_be);
    return 0;
}

static void need_gpu(void) {
    if (g_skip) {
        fprintf(stderr, "SKIP (no GPU): %s\n", g_why);
        skip();
    }
}

// ---- events
#define MAX_TOK 160

typedef struct rec {
    int32_t toks[MAX_TOK];
    float lps[MAX_TOK];
    int32_t top0[MAX_TOK];
    int32_t top1[MAX_TOK];     // the second choice (logprobs >= 2), else -1
    float gap[MAX_TOK];        // logprob of the first choice minus the second's
    int n_tok, n_p, n_done;
    int32_t n_cached;
    char text[4096];
    size_t n_text;
    fg_finish_reason finish;
    fg_status status;
} rec;

#include "engine_test_util.h" // (after rec)

static void on_event(void *user, const fg_event *ev) {
    rec *r = user;
    pthread_mutex_lock(&g_mu);
    if (ev->kind == FG_EVENT_TOKEN && r->n_tok < MAX_TOK) {
        r->toks[r->n_tok] = ev->token;
        r->lps[r->n_tok] = ev->logprob;
        r->top0[r->n_tok] = ev->n_top > 0 ? ev->top[0].token : -1;
        r->top1[r->n_tok] = ev->n_top > 1 ? ev->top[1].token : -1;
        r->gap[r->n_tok] = ev->n_top > 1 ? ev->top[0].logprob - ev->top[1].logprob : INFINITY;
        r->n_tok++;
    }
    if (ev->kind == FG_EVENT_PROMPT_LOGPROB)
        r->n_p++;
    if (ev->kind != FG_EVENT_PROMPT_LOGPROB && r->n_text + ev->text_len < sizeof r->text) {
        memcpy(r->text + r->n_text, ev->text, ev->text_len);
        r->n_text += ev->text_len;
    }
    if (ev->kind == FG_EVENT_DONE) {
        r->n_done++;
        r->finish = ev->finish;
        r->status = ev->status;
        r->n_cached = ev->n_cached_tokens;
    }
    pthread_cond_broadcast(&g_cv);
    pthread_mutex_unlock(&g_mu);
}

// The host sampler over this backend's logits, one sequence alone (the engine's step shapes).
static void ref_sampled(fg_model *m, const int32_t *prompt, int32_t n_prompt, const fg_request_params *rp,
                        int32_t *out, int32_t *n_out, float *lp, int32_t *top0) {
    const int32_t ps = 16;
    int32_t n_vocab = fg_model_get_info(m)->n_vocab, total = n_prompt + rp->max_tokens;
    int32_t n_pages = (total + ps - 1) / ps + 1;
    fg_kv_store *kv = NULL;
    assert_int_equal(fg_kv_store_create(m, n_pages, ps, FG_TYPE_F16, &kv), FG_OK);
    int32_t *pt = malloc((size_t)n_pages * sizeof *pt), *pos = malloc((size_t)total * sizeof *pos);
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
    fg_batch b = {.n_tokens = n_prompt, .tokens = prompt, .pos = pos, .seq = seq, .n_seqs = 1, .n_kv = &n_kv,
                  .page_tables = pts};
    if (fg_model_forward(m, kv, &b, logits) != FG_OK)
        fail_msg("reference prompt forward: %s", fg_last_error());
    *n_out = 0;
    for (int32_t g = 0; g < rp->max_tokens; g++) {
        int32_t t = fg_sampler_sample(smp, logits);
        fg_sampler_accept(smp, t);
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

static void test_gpu_sampling_matches_host(void **state) {
    (void)state;
    need_gpu();
    const uint64_t seed = 4242;
    printf("gpu sampling: seed %llu on %s\n", (unsigned long long)seed, fg_backend_describe(g_be));
    g_lcg = seed;
    int n_checked = 0;
    for (int mi = 0; mi < 2; mi++) {
        fg_engine *e = NULL;
        fg_engine_opts eo = {.n_ctx = 128};
        assert_int_equal(fg_engine_create(g_models[mi], &eo, &e), FG_OK);
        for (int k = 0; k < 8; k++) {
            int32_t prompt[24];
            int32_t len = 2 + (int32_t)rnd(20);
            rand_prompt(prompt, len);
            fg_request_params rp = greedy_params(prompt, len, 24 + (int32_t)rnd(16));
            rp.logprobs = (int32_t)rnd(4) - 1;
            fg_logit_bias bias[2] = {{(int32_t)rnd(512), 2.5f}, {(int32_t)rnd(512), -1.0f}};
            if (k % 4 != 0) {
                rp.sampling = fg_sampling_default();
                rp.sampling.seed = 1000 + (uint64_t)rnd(1u << 30);
            }
            if (k % 4 == 2) {
                rp.sampling.top_k = 0;
                rp.sampling.top_p = 0.99f;
                rp.sampling.repeat_penalty = 1.3f;
                rp.sampling.repeat_last_n = 8;
                rp.sampling.frequency_penalty = 0.2f;
                rp.sampling.logit_bias = bias;
                rp.sampling.n_logit_bias = 2;
            } else if (k % 4 == 3) {
                rp.sampling.top_k = 0;
                rp.sampling.top_p = 1.0f;
                rp.sampling.min_p = 0.0f;
                rp.sampling.temperature = 1.0f;
                rp.sampling.repeat_last_n = -1;
                rp.sampling.presence_penalty = 0.5f;
            }
            int32_t want[64], n_want = 0, top0[64];
            float lp[64];
            ref_sampled(g_models[mi], prompt, len, &rp, want, &n_want, lp, top0);
            rec *r = calloc(1, sizeof *r);
            assert_int_equal(fg_engine_submit(e, &rp, on_event, r, NULL), FG_OK);
            wait_all(r, 1);
            assert_int_equal(r->status, FG_OK);
            if (r->n_tok != n_want)
                fail_msg("model %d request %d: %d tokens, host %d", mi, k, r->n_tok, n_want);
            for (int i = 0; i < n_want; i++) {
                if (r->toks[i] != want[i])
                    fail_msg("model %d request %d (%s): token %d is %d, the host sampler's %d", mi, k,
                             k % 4 ? "seeded" : "greedy", i, r->toks[i], want[i]);
                if (rp.logprobs >= 0 && (!(fabsf(r->lps[i] - lp[i]) <= 1e-5f) || r->top0[i] != top0[i]))
                    fail_msg("model %d request %d token %d: logprob %.9g top %d, host %.9g top %d", mi, k, i,
                             (double)r->lps[i], r->top0[i], (double)lp[i], top0[i]);
            }
            n_checked += n_want;
            free(r);
        }
        fg_engine_destroy(e, 5.0);
    }
    printf("gpu sampling: %d tokens equal to the host sampler's\n", n_checked);
}

static void test_gpu_load(void **state) {
    (void)state;
    need_gpu();
    const uint64_t seed = 777;
    printf("gpu load: seed %llu\n", (unsigned long long)seed);
    g_lcg = seed;
    const int n = 48;
    fg_engine *e = NULL;
    fg_engine_opts eo = {.n_ctx = 256, .max_seqs = 32, .max_batch_tokens = 128, .prefix_cache = true};
    assert_int_equal(fg_engine_create(g_models[1], &eo, &e), FG_OK);
    rec *r = calloc((size_t)n, sizeof *r);
    int32_t prompts[48][64];
    uint64_t ids[48];
    for (int i = 0; i < n; i++) {
        int32_t len = 4 + (int32_t)rnd(60);
        rand_prompt(prompts[i], len);
        fg_request_params rp = greedy_params(prompts[i], len, 16 + (int32_t)rnd(100));
        if (i % 3)
            rp.sampling = fg_sampling_default();
        rp.sampling.seed = (uint64_t)i;
        rp.logprobs = i % 5 == 0 ? 3 : -1;
        rp.echo_logprobs = i % 7 == 0;
        rp.ignore_eos = i % 2 == 0;
        if (i % 4 == 1)
            rp.stop[0] = "e";
        assert_int_equal(fg_engine_submit(e, &rp, on_event, &r[i], &ids[i]), FG_OK);
    }
    for (int i = 0; i < n; i += 6)
        assert_int_equal(fg_engine_cancel(e, ids[i]), FG_OK);
    wait_all(r, n);
    for (int i = 0; i < n; i++) {
        assert_int_equal(r[i].n_done, 1);
        assert_true(r[i].status == FG_OK || r[i].status == FG_ERR_CANCELLED);
    }
    fg_engine_stats st;
    fg_engine_get_stats(e, &st);
    assert_int_equal(st.kv_pages_used, 0);
    assert_int_equal(st.running, 0);
    assert_int_equal(st.requests_failed, 0);
    printf("gpu load: %llu steps, %llu tokens, host per step: plan %.1f us, fill %.1f us, events %.1f us, "
           "submit %.1f us, wait %.1f us\n",
           (unsigned long long)st.steps, (unsigned long long)st.tokens_out, st.t_plan_s / st.steps * 1e6,
           st.t_fill_s / st.steps * 1e6, st.t_events_s / st.steps * 1e6, st.t_submit_s / st.steps * 1e6,
           st.t_wait_s / st.steps * 1e6);
    fg_engine_destroy(e, 5.0);
    free(r);
}

// The prefix cache on the GPU (issue 13): the same shared-prefix workload with the cache off and
// on. With the cache, a request prefills only its own tokens, in steps of other shapes, so its
// rows go through other matmul kernels (the matvec in passes, or the tensor-core tiles, by row
// count) that sum in another f32 order; on the CPU the two are identical (test_prefix_cache).
// The stated tolerance on the GPU is test_golden's (the GPU against llama.cpp's goldens): each
// answer equals the cache-off one token for token up to the first position where they differ,
// and there the cache-off run had a near-tie - its first two choices within the margin, the
// cache-on token its second choice; the mean |d logprob| of the common tokens within the mean
// tolerance. F32/F16 weights: mean 0.05, margin 0.10; quantized weights (8-bit activations
// requantized at every layer amplify a changed f32 sum): mean 0.25, margin 0.50. Answers
// identical: at least 3 of 4 on the trained model (stories260K); no count on the random-weight
// one, whose flat distributions are full of near-ties (each difference must still be one). A
// step's row count (its prefills and decodes together) picks the kernel, and from 128 rows
// the library GEMM rounds weights and activations to F16 where the integer kernels do not, so
// a request's decode tokens see the other arithmetic whenever the cache changes what shares
// its steps (H100, 18:53 UTC: 24 of 24 and 8 of 24 identical with the integer kernel taking
// 17-127 rows; every difference a near-tie, the common tokens' mean |d logprob| 0.027).
static void test_gpu_prefix_cache_tolerance(void **state) {
    (void)state;
    need_gpu();
    const uint64_t seed = 1313;
    g_lcg = seed;
    enum { N = 24, PREFIX = 150, GEN = 32 };
    int32_t prompts[N][PREFIX + 24], lens[N];
    rand_prompt(prompts[0], PREFIX);
    for (int i = 0; i < N; i++) {
        memcpy(prompts[i], prompts[0], PREFIX * sizeof(int32_t));
        lens[i] = PREFIX + 2 + (int32_t)rnd(20);
        for (int32_t j = PREFIX; j < lens[i]; j++)
            prompts[i][j] = 3 + (int32_t)rnd(509);
    }
    static const float tol_mean[2] = {0.05f, 0.25f}, tol_margin[2] = {0.10f, 0.50f}; // stories F32, synth Q4_0
    int identical = 0, ties = 0;
    static const int min_identical[2] = {N * 3 / 4, 0};
    for (int mi = 0; mi < 2; mi++) {
        const int identical0 = identical;
        double lp_sum = 0.0;
        float lp_max = 0.0f, gap_max = 0.0f;
        long n_lp = 0;
        rec *r[2];
        for (int on = 0; on < 2; on++) {
            fg_engine *e = NULL;
            fg_engine_opts eo = {.n_ctx = 256, .max_seqs = 32, .prefix_cache = on == 1, .check_pages = true};
            assert_int_equal(fg_engine_create(g_models[mi], &eo, &e), FG_OK);
            r[on] = calloc(N + 1, sizeof(rec));
            fg_request_params warm = greedy_params(prompts[0], PREFIX, 1); // the prefix computed (and cached)
            assert_int_equal(fg_engine_submit(e, &warm, on_event, &r[on][N], NULL), FG_OK);
            wait_all(&r[on][N], 1);
            for (int i = 0; i < N; i++) {
                fg_request_params rp = greedy_params(prompts[i], lens[i], GEN);
                rp.logprobs = 2;
                assert_int_equal(fg_engine_submit(e, &rp, on_event, &r[on][i], NULL), FG_OK);
            }
            wait_all(r[on], N);
            fg_engine_stats st;
            fg_engine_get_stats(e, &st);
            assert_int_equal(st.page_check_failures, 0);
            fg_engine_destroy(e, 5.0);
        }
        for (int i = 0; i < N; i++) {
            const rec *a = &r[0][i], *b = &r[1][i];
            assert_int_equal(a->status, FG_OK);
            assert_int_equal(b->status, FG_OK);
            assert_int_equal(a->n_cached, 0);
            if (b->n_cached < PREFIX / 16 * 16)
                fail_msg("model %d request %d: %d prompt tokens from the cache, want >= %d", mi, i, b->n_cached,
                         PREFIX / 16 * 16);
            assert_int_equal(a->n_tok, GEN);
            assert_int_equal(b->n_tok, GEN);
            int k = 0;
            while (k < GEN && a->toks[k] == b->toks[k]) {
                const float d = fabsf(a->lps[k] - b->lps[k]);
                if (!isfinite(d))
                    fail_msg("model %d request %d token %d: logprob %.6f with the cache, %.6f without", mi, i, k,
                             (double)b->lps[k], (double)a->lps[k]);
                lp_max = d > lp_max ? d : lp_max;
                lp_sum += d;
                n_lp++;
                k++;
            }
            if (k == GEN) {
                identical++;
                continue;
            }
            ties++;
            gap_max = a->gap[k] > gap_max ? a->gap[k] : gap_max;
            printf("gpu prefix cache: model %d request %d differs at token %d: %d with the cache, %d (then %d, "
                   "%.4f nats apart) without\n",
                   mi, i, k, b->toks[k], a->toks[k], a->top1[k], (double)a->gap[k]);
            if (b->toks[k] != a->top1[k] || !(a->gap[k] <= tol_margin[mi]))
                fail_msg("model %d request %d token %d: not a near-tie (%d with the cache; without: %d, then %d "
                         "%.4f nats below)", mi, i, k, b->toks[k], a->toks[k], a->top1[k], (double)a->gap[k]);
        }
        free(r[0]);
        free(r[1]);
        const double lp_mean = n_lp ? lp_sum / (double)n_lp : 0.0;
        printf("gpu prefix cache: model %d: common tokens' |d logprob| mean %.4f max %.4f (tolerance: mean %.2f), "
               "largest gap at a difference %.4f nats (margin %.2f)\n",
               mi, lp_mean, (double)lp_max, (double)tol_mean[mi], (double)gap_max, (double)tol_margin[mi]);
        if (!(lp_mean <= tol_mean[mi]))
            fail_msg("model %d: mean |d logprob| %.4f with the cache on and off exceeds %.2f", mi, lp_mean,
                     (double)tol_mean[mi]);
        printf("gpu prefix cache: model %d: %d of %d answers identical (at least %d asked)\n", mi,
               identical - identical0, N, min_identical[mi]);
        if (identical - identical0 < min_identical[mi])
            fail_msg("model %d: only %d of %d answers identical with the prefix cache on and off (at least %d)", mi,
                     identical - identical0, N, min_identical[mi]);
    }
    printf("gpu prefix cache: %d of %d answers identical, %d differ at a near-tie\n", identical, 2 * N, ties);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gpu_sampling_matches_host),
        cmocka_unit_test(test_gpu_load),
        cmocka_unit_test(test_gpu_prefix_cache_tolerance),
    };
    return cmocka_run_group_tests_name("engine_gpu", tests, setup, teardown);
}
