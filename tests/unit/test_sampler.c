// test_sampler.c - the sampler: greedy (ties to the lowest id), top-k/top-p/min-p/temperature
// draw frequencies against the expected distribution (fixed seeds, chi-square bound), seeds
// reproduce, penalties change exactly the seen tokens' logits, NaN/inf logits, logprobs,
// logit bias.
// forge-test-modules: engine backend base
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "forge/engine.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static fg_sampler *mk(const fg_sampling *sp, int32_t n_vocab) {
    fg_sampler *s = NULL;
    assert_int_equal(fg_sampler_create(sp, n_vocab, &s), FG_OK);
    return s;
}

static uint64_t lcg;
static float frand(void) { // [-4, 4)
    lcg = lcg * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((double)(lcg >> 11) * 0x1.0p-53 * 8.0 - 4.0);
}

static void test_create_args(void **state) {
    (void)state;
    fg_sampling sp = fg_sampling_default();
    fg_sampler *s = NULL;
    assert_int_equal(fg_sampler_create(&sp, 0, &s), FG_ERR_INVALID_ARG);
    assert_string_equal(fg_last_error(), "sampler: n_vocab 0 must be > 0");
    sp.repeat_penalty = 0.0f;
    assert_int_equal(fg_sampler_create(&sp, 8, &s), FG_ERR_INVALID_ARG);
    assert_string_equal(fg_last_error(), "sampler: repeat_penalty 0 must be > 0");
    sp = fg_sampling_default();
    sp.top_p = NAN;
    assert_int_equal(fg_sampler_create(&sp, 8, &s), FG_ERR_INVALID_ARG);
    sp = fg_sampling_default();
    sp.repeat_last_n = -2;
    assert_int_equal(fg_sampler_create(&sp, 8, &s), FG_ERR_INVALID_ARG);
    assert_null(s);
    fg_sampler_destroy(NULL);
}

static void test_greedy_exact(void **state) {
    (void)state;
    fg_sampling sp = fg_sampling_greedy();
    fg_sampler *s = mk(&sp, 6);
    const float l1[6] = {0.5f, 2.0f, -1.0f, 1.9f, 2.0f, -3.0f};
    assert_int_equal(fg_sampler_sample(s, l1), 1); // tie 1/4 -> lowest id
    const float l2[6] = {-5.0f, -4.0f, -3.0f, -2.0f, -1.0f, -0.5f};
    assert_int_equal(fg_sampler_sample(s, l2), 5);
    const float l3[6] = {7.0f, 7.0f, 7.0f, 7.0f, 7.0f, 7.0f};
    assert_int_equal(fg_sampler_sample(s, l3), 0);
    fg_sampler_destroy(s);
    // random rows: greedy is the argmax
    const uint64_t seed = 7;
    printf("greedy rows: seed %llu\n", (unsigned long long)seed);
    lcg = seed;
    s = mk(&sp, 1000);
    float *l = malloc(1000 * sizeof *l);
    for (int r = 0; r < 50; r++) {
        int32_t best = 0;
        for (int i = 0; i < 1000; i++) {
            l[i] = frand();
            if (l[i] > l[best])
                best = i;
        }
        assert_int_equal(fg_sampler_sample(s, l), best);
    }
    free(l);
    fg_sampler_destroy(s);
}

static void test_top_k1_is_greedy(void **state) {
    (void)state;
    const uint64_t seed = 11;
    printf("top-k 1 rows: seed %llu\n", (unsigned long long)seed);
    lcg = seed;
    fg_sampling sp = fg_sampling_default();
    sp.top_k = 1;
    sp.temperature = 1.5f;
    sp.seed = 99;
    fg_sampler *s = mk(&sp, 300);
    fg_sampling gp = fg_sampling_greedy();
    fg_sampler *g = mk(&gp, 300);
    float l[300];
    for (int r = 0; r < 200; r++) {
        for (int i = 0; i < 300; i++)
            l[i] = frand();
        if (r % 10 == 0)
            l[r] = l[(r + 7) % 300] = 9.0f; // exact ties now and then
        assert_int_equal(fg_sampler_sample(s, l), fg_sampler_sample(g, l));
    }
    fg_sampler_destroy(s);
    fg_sampler_destroy(g);
}

// Draws n times and checks the frequencies against expected p[] (chi-square over the
// categories with p > 0; categories with p == 0 must never be drawn).
static void check_dist(fg_sampler *s, const float *logits, const double *p, int32_t nv, int n) {
    int counts[16] = {0};
    assert_true(nv <= 16);
    for (int i = 0; i < n; i++) {
        int32_t t = fg_sampler_sample(s, logits);
        assert_true(t >= 0 && t < nv);
        counts[t]++;
    }
    double chi = 0.0;
    int df = -1;
    for (int32_t i = 0; i < nv; i++) {
        if (p[i] == 0.0) {
            if (counts[i] != 0)
                fail_msg("token %d has probability 0 but was drawn %d times", i, counts[i]);
            continue;
        }
        double e = p[i] * n;
        chi += (counts[i] - e) * (counts[i] - e) / e;
        df++;
    }
    // chi-square critical value at p = 0.001 is below 3 * df + 12 for df <= 15
    if (!(chi <= 3.0 * df + 12.0)) {
        for (int32_t i = 0; i < nv; i++)
            print_message("token %d: drawn %d expected %.1f\n", i, counts[i], p[i] * n);
        fail_msg("chi-square %.2f with %d degrees of freedom", chi, df);
    }
}

static void softmax(const float *l, double t, int32_t n, double *p) {
    double m = -INFINITY, sum = 0.0;
    for (int32_t i = 0; i < n; i++)
        if (l[i] > m)
            m = l[i];
    for (int32_t i = 0; i < n; i++)
        sum += (p[i] = exp((l[i] - m) / t));
    for (int32_t i = 0; i < n; i++)
        p[i] /= sum;
}

static fg_sampling plain(float t, uint64_t seed) {
    fg_sampling sp = fg_sampling_default();
    sp.temperature = t;
    sp.top_k = 0;
    sp.top_p = 1.0f;
    sp.min_p = 0.0f;
    sp.seed = seed;
    return sp;
}

static void test_temperature_distribution(void **state) {
    (void)state;
    const float l[6] = {1.0f, 0.5f, 0.0f, -0.5f, 2.0f, -1.0f};
    double p[6];
    const float temps[] = {1.0f, 0.5f, 2.0f};
    for (int k = 0; k < 3; k++) {
        fg_sampling sp = plain(temps[k], 1234 + (uint64_t)k);
        printf("temperature %.1f: seed %llu\n", (double)temps[k], (unsigned long long)sp.seed);
        fg_sampler *s = mk(&sp, 6);
        softmax(l, temps[k], 6, p);
        check_dist(s, l, p, 6, 60000);
        fg_sampler_destroy(s);
    }
}

static void test_top_k_distribution(void **state) {
    (void)state;
    const float l[8] = {0.1f, 1.0f, 0.3f, 0.9f, 0.2f, 1.0f, -2.0f, 0.0f};
    fg_sampling sp = plain(1.0f, 42);
    sp.top_k = 3; // keeps 1 and 5 (tied 1.0) and 3 (0.9)
    fg_sampler *s = mk(&sp, 8);
    double p[8] = {0};
    double z = 2.0 * exp(1.0) + exp(0.9);
    p[1] = p[5] = exp(1.0) / z;
    p[3] = exp(0.9) / z;
    check_dist(s, l, p, 8, 40000);
    fg_sampler_destroy(s);
}

static int cmp_desc(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x < y) - (x > y);
}

static void test_top_k_large_vocab(void **state) {
    (void)state;
    const uint64_t seed = 21;
    printf("top-k large vocab: seed %llu\n", (unsigned long long)seed);
    lcg = seed;
    enum { NV = 20000, K = 40 };
    float *l = malloc(NV * sizeof *l), *sorted = malloc(NV * sizeof *sorted);
    for (int i = 0; i < NV; i++)
        sorted[i] = l[i] = frand();
    qsort(sorted, NV, sizeof *sorted, cmp_desc);
    float kth = sorted[K - 1];
    fg_sampling sp = plain(2.0f, 5);
    sp.top_k = K;
    fg_sampler *s = mk(&sp, NV);
    int hits_best = 0;
    for (int i = 0; i < 4000; i++) {
        int32_t t = fg_sampler_sample(s, l);
        assert_true(t >= 0 && t < NV);
        if (!(l[t] >= kth))
            fail_msg("draw %d: token %d (logit %g) is not in the top %d (k-th %g)", i, t,
                     (double)l[t], K, (double)kth);
        hits_best += l[t] == sorted[0];
    }
    // the best of 40 near-equal candidates at temperature 2: drawn, but far from always
    assert_true(hits_best > 0 && hits_best < 4000);
    fg_sampler_destroy(s);
    free(l);
    free(sorted);
}

static void test_top_p_min_p_distribution(void **state) {
    (void)state;
    // probabilities 0.5, 0.3, 0.15, 0.05 (in shuffled token order)
    const float l[4] = {logf(0.15f), logf(0.5f), logf(0.05f), logf(0.3f)};
    fg_sampling sp = plain(1.0f, 5);
    sp.top_p = 0.7f; // 0.5 < 0.7, 0.8 >= 0.7: keeps two
    fg_sampler *s = mk(&sp, 4);
    const double p1[4] = {0, 0.625, 0, 0.375};
    check_dist(s, l, p1, 4, 40000);
    fg_sampler_destroy(s);
    sp = plain(1.0f, 6);
    sp.min_p = 0.2f; // threshold 0.1: drops the 0.05
    s = mk(&sp, 4);
    const double p2[4] = {0.15 / 0.95, 0.5 / 0.95, 0, 0.3 / 0.95};
    check_dist(s, l, p2, 4, 40000);
    fg_sampler_destroy(s);
    // the chain: top-p 0.9 keeps 3 (0.95 cumulative... 0.5+0.3+0.15 = 0.95 >= 0.9), then
    // min-p 0.4 (threshold 0.2) keeps 2, then temperature 0.5 squares the ratios
    sp = plain(0.5f, 7);
    sp.top_p = 0.9f;
    sp.min_p = 0.4f;
    s = mk(&sp, 4);
    const double p3[4] = {0, 0.25 / 0.34, 0, 0.09 / 0.34};
    check_dist(s, l, p3, 4, 40000);
    fg_sampler_destroy(s);
    // top-p small enough: only the best remains (min_keep 1)
    sp = plain(1.0f, 8);
    sp.top_p = 0.01f;
    s = mk(&sp, 4);
    for (int i = 0; i < 100; i++)
        assert_int_equal(fg_sampler_sample(s, l), 1);
    fg_sampler_destroy(s);
}

static void test_seed_reproducible(void **state) {
    (void)state;
    const uint64_t seed = 3;
    printf("seed test rows: seed %llu\n", (unsigned long long)seed);
    lcg = seed;
    float l[64];
    for (int i = 0; i < 64; i++)
        l[i] = frand() * 0.5f;
    fg_sampling sp = fg_sampling_default();
    sp.seed = 777;
    fg_sampler *a = mk(&sp, 64), *b = mk(&sp, 64);
    sp.seed = 778;
    fg_sampler *c = mk(&sp, 64);
    int32_t seq_a[200];
    int differ = 0;
    for (int i = 0; i < 200; i++) {
        seq_a[i] = fg_sampler_sample(a, l);
        assert_int_equal(seq_a[i], fg_sampler_sample(b, l));
        differ += seq_a[i] != fg_sampler_sample(c, l);
    }
    assert_true(differ > 20);
    fg_sampler_reset(a); // back to the seed
    for (int i = 0; i < 200; i++)
        assert_int_equal(fg_sampler_sample(a, l), seq_a[i]);
    fg_sampler_destroy(a);
    fg_sampler_destroy(b);
    fg_sampler_destroy(c);
}

static void test_penalties(void **state) {
    (void)state;
    const float l[8] = {2.0f, -1.0f, 0.0f, 3.0f, -2.0f, 1.0f, 0.5f, -0.5f};
    fg_sampling sp = fg_sampling_greedy();
    sp.repeat_penalty = 2.0f;
    sp.frequency_penalty = 0.25f;
    sp.presence_penalty = 0.5f;
    sp.repeat_last_n = 4;
    fg_sampler *s = mk(&sp, 8);
    // history 3 3 1 0 -> counts: 3:2, 1:1, 0:1
    fg_sampler_accept(s, 3);
    fg_sampler_accept(s, 3);
    fg_sampler_accept(s, 1);
    fg_sampler_accept(s, 0);
    float out[8];
    fg_sampler_penalize(s, l, out);
    float want[8];
    memcpy(want, l, sizeof want);
    want[3] = 3.0f / 2.0f - (2 * 0.25f + 0.5f); // 0.5
    want[1] = -1.0f * 2.0f - (0.25f + 0.5f);    // -2.75
    want[0] = 2.0f / 2.0f - (0.25f + 0.5f);     // 0.25
    for (int i = 0; i < 8; i++)
        if (!(fabsf(out[i] - want[i]) <= 1e-6f))
            fail_msg("token %d: penalized %g, expected %g", i, (double)out[i], (double)want[i]);
    assert_int_equal(fg_sampler_sample(s, l), 5); // 3 and 0 pushed below 1.0
    // the window slides: 5 in, the first 3 out -> counts 3:1, 1:1, 0:1, 5:1
    fg_sampler_accept(s, 5);
    fg_sampler_penalize(s, l, out);
    assert_true(fabsf(out[3] - (1.5f - 0.75f)) <= 1e-6f);
    assert_true(fabsf(out[5] - (0.5f - 0.75f)) <= 1e-6f);
    assert_true(out[2] == 0.0f && out[4] == -2.0f && out[6] == 0.5f && out[7] == -0.5f);
    // reset forgets the history
    fg_sampler_reset(s);
    fg_sampler_penalize(s, l, out);
    assert_memory_equal(out, l, sizeof l);
    fg_sampler_destroy(s);
    // repeat_last_n 0: penalties off; -1: the whole history
    sp.repeat_last_n = 0;
    s = mk(&sp, 8);
    fg_sampler_accept(s, 3);
    fg_sampler_penalize(s, l, out);
    assert_memory_equal(out, l, sizeof l);
    fg_sampler_destroy(s);
    sp.repeat_last_n = -1;
    sp.frequency_penalty = 1.0f;
    sp.presence_penalty = 0.0f;
    sp.repeat_penalty = 1.0f;
    s = mk(&sp, 8);
    for (int i = 0; i < 100; i++)
        fg_sampler_accept(s, 6);
    fg_sampler_accept(s, 8);  // out of range: ignored
    fg_sampler_accept(s, -1); // ignored
    fg_sampler_penalize(s, l, out);
    assert_true(out[6] == 0.5f - 100.0f);
    for (int i = 0; i < 8; i++)
        if (i != 6)
            assert_true(out[i] == l[i]);
    fg_sampler_destroy(s);
}

static void test_nan_inf(void **state) {
    (void)state;
    fg_sampling gp = fg_sampling_greedy();
    fg_sampler *g = mk(&gp, 5);
    const float a[5] = {NAN, 1.0f, NAN, 0.5f, NAN};
    assert_int_equal(fg_sampler_sample(g, a), 1);
    const float b[5] = {0.0f, INFINITY, 1.0f, INFINITY, NAN};
    assert_int_equal(fg_sampler_sample(g, b), 1);
    const float c[5] = {NAN, NAN, NAN, NAN, NAN};
    int32_t t = fg_sampler_sample(g, c);
    assert_true(t >= 0 && t < 5);
    const float d[5] = {NAN, -INFINITY, -INFINITY, NAN, -INFINITY};
    assert_int_equal(fg_sampler_sample(g, d), 1); // the lowest non-NaN id
    fg_sampler_destroy(g);
    // sampling: NaN and -inf are never drawn; +inf ones share all the mass
    fg_sampling sp = plain(1.0f, 17);
    fg_sampler *s = mk(&sp, 5);
    const float e[5] = {NAN, 0.0f, -INFINITY, 0.0f, NAN};
    const double pe[5] = {0, 0.5, 0, 0.5, 0};
    check_dist(s, e, pe, 5, 20000);
    const double pb[5] = {0, 0.5, 0, 0.5, 0};
    check_dist(s, b, pb, 5, 20000);
    fg_sampler_destroy(s);
    sp = fg_sampling_default();
    s = mk(&sp, 5);
    for (int i = 0; i < 1000; i++) {
        int32_t x = fg_sampler_sample(s, e);
        assert_true(x == 1 || x == 3);
    }
    fg_sampler_destroy(s);
}

static void test_logprobs(void **state) {
    (void)state;
    const float l[6] = {1.0f, 3.0f, NAN, 3.0f, -1.0f, 0.0f};
    fg_top_logprob top[FG_MAX_TOP_LOGPROBS];
    int32_t n_top = -1;
    float lp = fg_logprobs(l, 6, 4, 3, top, &n_top);
    double z = exp(1.0) + 2 * exp(3.0) + exp(-1.0) + exp(0.0);
    assert_true(fabs(lp - (-1.0 - log(z))) <= 1e-5);
    assert_int_equal(n_top, 3);
    assert_int_equal(top[0].token, 1);
    assert_int_equal(top[1].token, 3);
    assert_int_equal(top[2].token, 0);
    assert_true(fabs(top[0].logprob - (3.0 - log(z))) <= 1e-5);
    assert_true(fabs(top[2].logprob - (1.0 - log(z))) <= 1e-5);
    assert_true(isinf(fg_logprobs(l, 6, 2, 0, NULL, NULL)));  // NaN logit: -inf
    assert_true(isinf(fg_logprobs(l, 6, 99, 0, NULL, NULL))); // out of range
    lp = fg_logprobs(l, 6, 0, 50, top, &n_top);               // n_top clamped to n_vocab
    assert_int_equal(n_top, 6);
    assert_int_equal(top[5].token, 2); // NaN ranks last
}

// logit_bias: added to the logits before everything else (OpenAI's semantics): it moves the
// greedy choice, shifts the sampled distribution by exp(bias / T), adds up for a token given
// twice, shows in fg_sampler_penalize, is copied at create; bad entries are refused.
static void test_logit_bias(void **state) {
    (void)state;
    const float l[6] = {1.0f, 0.5f, 0.0f, -0.5f, 2.0f, -1.0f};
    fg_sampling gp = fg_sampling_greedy();
    fg_logit_bias b[3] = {{4, -100.0f}, {5, 2.5f}, {5, 0.4f}}; // 5: -1 + 2.9 = 1.9 > 1.0
    gp.logit_bias = b;
    gp.n_logit_bias = 1;
    fg_sampler *s = mk(&gp, 6);
    assert_int_equal(fg_sampler_sample(s, l), 0); // the best is banned: the next one
    fg_sampler_destroy(s);
    gp.n_logit_bias = 3;
    s = mk(&gp, 6);
    b[1].bias = 1000.0f; // copied at create: this changes nothing
    assert_int_equal(fg_sampler_sample(s, l), 5);
    float out[6];
    fg_sampler_penalize(s, l, out);
    assert_true(out[4] == 2.0f - 100.0f && out[5] == -1.0f + (2.5f + 0.4f) && out[0] == 1.0f);
    fg_sampler_destroy(s);
    b[1].bias = 2.5f;
    // sampling: the same distribution as softmax of the biased logits
    fg_sampling sp = plain(0.7f, 777);
    printf("logit bias: seed %llu\n", (unsigned long long)sp.seed);
    fg_logit_bias one[2] = {{2, 1.5f}, {0, -0.75f}};
    sp.logit_bias = one;
    sp.n_logit_bias = 2;
    s = mk(&sp, 6);
    float biased[6];
    memcpy(biased, l, sizeof biased);
    biased[2] += 1.5f;
    biased[0] -= 0.75f;
    double p[6];
    softmax(biased, 0.7, 6, p);
    check_dist(s, l, p, 6, 60000);
    fg_sampler_destroy(s);
    // refused: ids outside the vocabulary, non-finite biases, too many entries
    fg_sampler *bad = NULL;
    fg_logit_bias e1 = {6, 1.0f};
    sp.logit_bias = &e1;
    sp.n_logit_bias = 1;
    assert_int_equal(fg_sampler_create(&sp, 6, &bad), FG_ERR_INVALID_ARG);
    assert_string_equal(fg_last_error(), "sampler: logit_bias: token 6 outside [0, 6)");
    e1 = (fg_logit_bias){1, NAN};
    assert_int_equal(fg_sampler_create(&sp, 6, &bad), FG_ERR_INVALID_ARG);
    assert_non_null(strstr(fg_last_error(), "token 1 has bias"));
    sp.n_logit_bias = FG_MAX_LOGIT_BIAS + 1;
    assert_int_equal(fg_sampler_create(&sp, 6, &bad), FG_ERR_INVALID_ARG);
    assert_null(bad);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_create_args),
        cmocka_unit_test(test_greedy_exact),
        cmocka_unit_test(test_top_k1_is_greedy),
        cmocka_unit_test(test_temperature_distribution),
        cmocka_unit_test(test_top_k_distribution),
        cmocka_unit_test(test_top_k_large_vocab),
        cmocka_unit_test(test_top_p_min_p_distribution),
        cmocka_unit_test(test_seed_reproducible),
        cmocka_unit_test(test_penalties),
        cmocka_unit_test(test_nan_inf),
        cmocka_unit_test(test_logprobs),
        cmocka_unit_test(test_logit_bias),
    };
    return cmocka_run_group_tests_name("sampler", tests, NULL, NULL);
}
