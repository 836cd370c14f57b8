// engine_test_util.h - what the engine suites (test_engine, test_prefix_cache, test_engine_gpu)
// share: the lock and condition their event callbacks record under, a bounded wait for every
// request's DONE event (a hang is a failure, not a timing assertion), a fixed stream of random
// prompt tokens and greedy request parameters. Header-only, static (each suite is a program of
// its own); the includer defines `rec`, its event record with an `int n_done` field, first.
#ifndef FG_TESTS_ENGINE_TEST_UTIL_H
#define FG_TESTS_ENGINE_TEST_UTIL_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_cv = PTHREAD_COND_INITIALIZER;

// Waits under g_mu, at most 120 s, until pred(arg) holds; fails the test naming `what` otherwise.
static inline void wait_until(bool (*pred)(void *), void *arg, const char *what) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += 120;
    pthread_mutex_lock(&g_mu);
    while (!pred(arg)) {
        if (pthread_cond_timedwait(&g_cv, &g_mu, &ts) != 0 && !pred(arg)) {
            pthread_mutex_unlock(&g_mu);
            fail_msg("timed out waiting for %s", what);
        }
    }
    pthread_mutex_unlock(&g_mu);
}

typedef struct recs {
    rec *r;
    int n;
} recs;

static inline bool all_done(void *arg) {
    recs *rs = arg;
    for (int i = 0; i < rs->n; i++)
        if (rs->r[i].n_done == 0)
            return false;
    return true;
}

static inline void wait_all(rec *r, int n) {
    recs rs = {r, n};
    wait_until(all_done, &rs, "DONE events");
}

static uint64_t g_lcg; // the suites seed it per test
static inline uint32_t rnd(uint32_t n) {
    g_lcg = g_lcg * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)(g_lcg >> 33) % n;
}

// A random prompt: BOS then tokens in [3, 512).
static inline void rand_prompt(int32_t *p, int32_t n) {
    p[0] = 1;
    for (int32_t i = 1; i < n; i++)
        p[i] = 3 + (int32_t)rnd(509);
}

// Greedy, EOS ignored (every request runs max_tokens), no log-probs.
static inline fg_request_params greedy_params(const int32_t *prompt, int32_t n, int32_t max_tokens) {
    fg_request_params rp;
    memset(&rp, 0, sizeof rp);
    rp.prompt = prompt;
    rp.n_prompt = n;
    rp.max_tokens = max_tokens;
    rp.sampling = fg_sampling_greedy();
    rp.ignore_eos = true;
    rp.logprobs = -1;
    return rp;
}

#endif // FG_TESTS_ENGINE_TEST_UTIL_H
