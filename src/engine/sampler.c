// sampler.c - a request's sampling state on the host: its parameters, the logit bias (sorted,
// one entry per token), the penalty history (the last repeat_last_n tokens, counted per token)
// and its RNG (xoshiro256** seeded by splitmix64). Bias and counts live in one sorted array of
// entries (forge/sample.h), updated in O(entries) per accepted token, so that a step row
// (fg_sampler_fill_row: the parameters, the entries, the next uniform draw) for the backend's
// sample op is a copy; fg_sampler_commit applies the op's result
// (fg_sampler_commit: the RNG advances only when the draw was used). fg_sampler_sample does
// the same on a logits row in host memory with the reference arithmetic the CPU backend runs
// (src/backend/sample_ref.c), so both give the tokens this sampler always gave.
// Not here: grammars, DRY, mirostat. Called by the engine's scheduler thread (one per request)
// and by `forge run` / `forge chat`.
#include "forge/engine.h"

#include "backend/sample_ref.h"
#include "base/status.h"
#include "base/util.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define MAX_PENALTY_WINDOW (1 << 24)

struct fg_sampler {
    fg_sampling params;      // logit_bias points at `bias` below
    int32_t n_vocab;
    fg_logit_bias *bias;     // [n_bias] sorted by token, one entry per token (summed)
    int32_t n_bias;
    // the logit bias and the tokens in the penalty window with their counts, ascending by token
    // (a token with a bias keeps its entry at count 0)
    fg_sample_entry *ent; // [ent_cap]
    int32_t n_ent, ent_cap;
    int32_t *ring;   // [window] last tokens (window > 0), NULL otherwise
    int32_t window;  // 0: no history kept, -1: unbounded (counts only), else ring size
    int32_t ring_len;
    int32_t ring_pos;
    uint64_t rng[4];
    // fg_sampler_sample's scratch, allocated at its first call (the engine samples on the
    // backend and never needs it)
    fg_sample_cand *cands;   // [n_vocab]
};

fg_sampling fg_sampling_default(void) {
    fg_sampling s = {
        .temperature = 0.8f,
        .top_k = 40,
        .top_p = 0.95f,
        .min_p = 0.05f,
        .repeat_penalty = 1.0f,
        .repeat_last_n = 64,
        .frequency_penalty = 0.0f,
        .presence_penalty = 0.0f,
        .seed = 0,
    };
    return s;
}

fg_sampling fg_sampling_greedy(void) {
    fg_sampling s = fg_sampling_default();
    s.temperature = 0.0f;
    s.top_k = 0;
    s.top_p = 1.0f;
    s.min_p = 0.0f;
    return s;
}

// ---- RNG: splitmix64 to seed xoshiro256**
static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t rng_next(uint64_t s[4]) {
    uint64_t r = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return r;
}

// The draw the next sample would use, without consuming it.
static double rng_peek(const uint64_t s[4]) {
    uint64_t t[4] = {s[0], s[1], s[2], s[3]};
    return (double)(rng_next(t) >> 11) * 0x1.0p-53;
}

static bool penalties_on(const fg_sampling *p) {
    return p->repeat_last_n != 0 &&
           (p->repeat_penalty != 1.0f || p->frequency_penalty != 0.0f ||
            p->presence_penalty != 0.0f);
}

static int cmp_bias(const void *a, const void *b) {
    int32_t x = ((const fg_logit_bias *)a)->token, y = ((const fg_logit_bias *)b)->token;
    return x < y ? -1 : x > y;
}

fg_status fg_sampler_create(const fg_sampling *params, int32_t n_vocab, fg_sampler **out) {
    const fg_sampling *p = params;
    if (n_vocab <= 0)
        return FG_FAIL(FG_ERR_INVALID_ARG, "sampler: n_vocab %d must be > 0", (int)n_vocab);
    if (isnan(p->temperature) || isnan(p->top_p) || isnan(p->min_p) ||
        isnan(p->frequency_penalty) || isnan(p->presence_penalty) || isinf(p->frequency_penalty) ||
        isinf(p->presence_penalty))
        return FG_FAIL(FG_ERR_INVALID_ARG, "sampler: NaN or infinite sampling parameter");
    if (!(p->repeat_penalty > 0.0f) || isinf(p->repeat_penalty))
        return FG_FAIL(FG_ERR_INVALID_ARG, "sampler: repeat_penalty %g must be > 0",
                       (double)p->repeat_penalty);
    if (p->repeat_last_n < -1 || p->repeat_last_n > MAX_PENALTY_WINDOW)
        return FG_FAIL(FG_ERR_INVALID_ARG, "sampler: repeat_last_n %d outside -1..%d",
                       (int)p->repeat_last_n, MAX_PENALTY_WINDOW);
    if (p->n_logit_bias < 0 || p->n_logit_bias > FG_MAX_LOGIT_BIAS ||
        (p->n_logit_bias > 0 && !p->logit_bias))
        return FG_FAIL(FG_ERR_INVALID_ARG, "sampler: logit_bias: %d entries, expected 0..%d",
                       (int)p->n_logit_bias, FG_MAX_LOGIT_BIAS);
    for (int32_t i = 0; i < p->n_logit_bias; i++) {
        const fg_logit_bias *b = &p->logit_bias[i];
        if (b->token < 0 || b->token >= n_vocab)
            return FG_FAIL(FG_ERR_INVALID_ARG, "sampler: logit_bias: token %d outside [0, %d)",
                           (int)b->token, (int)n_vocab);
        if (!isfinite(b->bias))
            return FG_FAIL(FG_ERR_INVALID_ARG, "sampler: logit_bias: token %d has bias %g",
                           (int)b->token, (double)b->bias);
    }
    fg_sampler *s = calloc(1, sizeof *s);
    if (!s)
        return FG_FAIL(FG_ERR_NOMEM, "sampler: out of memory");
    s->params = *p;
    if (p->n_logit_bias > 0) {
        s->bias = malloc((size_t)p->n_logit_bias * sizeof *s->bias);
        if (!s->bias) {
            free(s);
            return FG_FAIL(FG_ERR_NOMEM, "sampler: out of memory");
        }
        memcpy(s->bias, p->logit_bias, (size_t)p->n_logit_bias * sizeof *s->bias);
        qsort(s->bias, (size_t)p->n_logit_bias, sizeof *s->bias, cmp_bias);
        int32_t m = 0; // a token given twice: its biases add up
        for (int32_t i = 0; i < p->n_logit_bias; i++) {
            if (m > 0 && s->bias[m - 1].token == s->bias[i].token)
                s->bias[m - 1].bias += s->bias[i].bias;
            else
                s->bias[m++] = s->bias[i];
        }
        s->n_bias = m;
    }
    s->params.logit_bias = s->bias;
    s->params.n_logit_bias = s->n_bias;
    s->n_vocab = n_vocab;
    s->window = penalties_on(p) ? p->repeat_last_n : 0;
    // distinct tokens in the window: at most its length (unbounded: the vocabulary)
    int32_t dist_cap = s->window == 0 ? 0 : s->window > 0 && s->window < n_vocab ? s->window : n_vocab;
    s->ent_cap = s->n_bias + dist_cap;
    s->ent = malloc((size_t)(s->ent_cap > 0 ? s->ent_cap : 1) * sizeof *s->ent);
    if (s->window > 0)
        s->ring = malloc((size_t)s->window * sizeof *s->ring);
    if (!s->ent || (s->window > 0 && !s->ring)) {
        int32_t cap = s->ent_cap;
        fg_sampler_destroy(s);
        return FG_FAIL(FG_ERR_NOMEM, "sampler: out of memory for %d entries", (int)cap);
    }
    fg_sampler_reset(s);
    *out = s;
    return FG_OK;
}

void fg_sampler_destroy(fg_sampler *s) {
    if (!s)
        return;
    free(s->cands);
    free(s->ent);
    free(s->ring);
    free(s->bias);
    free(s);
}

void fg_sampler_reset(fg_sampler *s) {
    s->n_ent = s->n_bias;
    for (int32_t i = 0; i < s->n_bias; i++)
        s->ent[i] = (fg_sample_entry){s->bias[i].token, FG_SAMPLE_ENTRY_BIAS, s->bias[i].bias, 0};
    s->ring_len = 0;
    s->ring_pos = 0;
    uint64_t x = s->params.seed;
    for (int i = 0; i < 4; i++)
        s->rng[i] = splitmix64(&x);
}

// Index of the first entry whose token is >= t.
static int32_t ent_find(const fg_sampler *s, int32_t t) {
    int32_t lo = 0, hi = s->n_ent;
    while (lo < hi) {
        int32_t mid = lo + (hi - lo) / 2;
        if (s->ent[mid].token < t)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static void count_up(fg_sampler *s, int32_t t) {
    int32_t at = ent_find(s, t);
    if (at < s->n_ent && s->ent[at].token == t) {
        s->ent[at].count++;
        return;
    }
    FG_ASSERT(s->n_ent < s->ent_cap);
    memmove(s->ent + at + 1, s->ent + at, (size_t)(s->n_ent - at) * sizeof *s->ent);
    s->ent[at] = (fg_sample_entry){t, 0, 0.0f, 1};
    s->n_ent++;
}

static void count_down(fg_sampler *s, int32_t t) {
    int32_t at = ent_find(s, t);
    FG_ASSERT(at < s->n_ent && s->ent[at].token == t && s->ent[at].count > 0);
    if (--s->ent[at].count > 0 || (s->ent[at].flags & FG_SAMPLE_ENTRY_BIAS))
        return;
    memmove(s->ent + at, s->ent + at + 1, (size_t)(s->n_ent - at - 1) * sizeof *s->ent);
    s->n_ent--;
}

void fg_sampler_accept(fg_sampler *s, int32_t token) {
    if (s->window == 0 || token < 0 || token >= s->n_vocab)
        return;
    if (s->window < 0) {
        count_up(s, token);
        return;
    }
    if (s->ring_len == s->window) {
        count_down(s, s->ring[s->ring_pos]);
    } else {
        s->ring_len++;
    }
    s->ring[s->ring_pos] = token;
    count_up(s, token);
    s->ring_pos = (s->ring_pos + 1) % s->window;
}

int32_t fg_sampler_n_entries(const fg_sampler *s) { return s->n_ent; }

int32_t fg_sampler_fill_row(const fg_sampler *s, int32_t n_top, fg_sample_row *row, fg_sample_entry *ent,
                            int32_t cap) {
    const fg_sampling *p = &s->params;
    if (s->n_ent > cap)
        return -1;
    if (ent != s->ent && s->n_ent > 0)
        memcpy(ent, s->ent, (size_t)s->n_ent * sizeof *ent);
    int32_t n = s->n_ent;
    memset(row, 0, sizeof *row);
    row->mode = FG_SAMPLE_DRAW;
    row->token = -1;
    row->n_top = n_top < 0 ? -1 : n_top > FG_MAX_TOP_LOGPROBS ? FG_MAX_TOP_LOGPROBS : n_top;
    row->top_k = p->top_k;
    row->temperature = p->temperature;
    row->top_p = p->top_p;
    row->min_p = p->min_p;
    row->log_min_p = p->min_p > 0.0f ? logf(p->min_p) : 0.0f;
    row->repeat_penalty = p->repeat_penalty;
    row->frequency_penalty = p->frequency_penalty;
    row->presence_penalty = p->presence_penalty;
    row->n_entries = n;
    row->inv_temp = p->temperature > 0.0f ? 1.0 / (double)p->temperature : 0.0;
    row->uniform = rng_peek(s->rng);
    return n;
}

void fg_sampler_commit(fg_sampler *s, const fg_sample_result *res) {
    if (res->flags & FG_SAMPLE_USED_UNIFORM)
        (void)rng_next(s->rng);
}

int32_t fg_sampler_sample(fg_sampler *s, const float *logits) {
    if (!s->cands)
        s->cands = fg_xmalloc((size_t)s->n_vocab * sizeof *s->cands);
    fg_sample_row row;
    int32_t n = fg_sampler_fill_row(s, -1, &row, s->ent, s->n_ent); // (its own entries: no copy)
    FG_ASSERT(n >= 0);
    fg_sample_result res;
    fg_sample_ref(&row, s->ent, logits, s->n_vocab, s->cands, &res);
    fg_sampler_commit(s, &res);
    return res.token;
}

void fg_sampler_penalize(const fg_sampler *s, const float *logits, float *out) {
    const fg_sampling *p = &s->params;
    int32_t e = 0; // the sorted entries, walked alongside the vocabulary
    for (int32_t i = 0; i < s->n_vocab; i++) {
        float l = logits[i];
        if (e < s->n_ent && s->ent[e].token == i) {
            const fg_sample_entry *x = &s->ent[e++];
            if (x->flags & FG_SAMPLE_ENTRY_BIAS)
                l += x->bias;
            if (x->count > 0) { // llama.cpp's repeat penalty, then OpenAI's frequency/presence
                if (l <= 0.0f)
                    l *= p->repeat_penalty;
                else
                    l /= p->repeat_penalty;
                l = l - ((float)x->count * p->frequency_penalty + p->presence_penalty);
            }
        }
        out[i] = l;
    }
}

float fg_logprobs(const float *logits, int32_t n_vocab, int32_t token, int32_t n_top,
                  fg_top_logprob *top, int32_t *n_top_out) {
    return fg_logprobs_ref(logits, n_vocab, token, n_top, top, n_top_out);
}
