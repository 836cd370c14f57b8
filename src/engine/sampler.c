// sampler.c - next-token sampling from a logits row, in llama.cpp's common chain order:
// logit bias -> penalties (repeat, frequency, presence) -> top-k -> top-p -> min-p ->
// temperature -> draw.
// Each sampler owns its RNG (xoshiro256** seeded by splitmix64) and its scratch, sized at
// create: sampling allocates nothing. Also the log-softmax helper behind logprobs.
// Not here: grammars, DRY, mirostat. Called by the engine's scheduler thread (one per request).
#include "forge/engine.h"

#include "base/status.h"
#include "base/util.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define MAX_PENALTY_WINDOW (1 << 24)

typedef struct cand {
    int32_t id;
    float logit;
} cand;

struct fg_sampler {
    fg_sampling params;      // logit_bias points at `bias` below
    int32_t n_vocab;
    fg_logit_bias *bias;     // [n_bias] sorted by token, one entry per token (summed)
    int32_t n_bias;
    cand *cands;     // [n_vocab] scratch
    int32_t *counts; // [n_vocab] occurrences in the penalty window
    int32_t *ring;   // [window] last tokens (window > 0), NULL otherwise
    int32_t window;  // 0: no history kept, -1: unbounded (counts only), else ring size
    int32_t ring_len;
    int32_t ring_pos;
    uint64_t rng[4];
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

static double rng_uniform(uint64_t s[4]) { return (double)(rng_next(s) >> 11) * 0x1.0p-53; }

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
    s->cands = malloc((size_t)n_vocab * sizeof *s->cands);
    s->counts = calloc((size_t)n_vocab, sizeof *s->counts);
    if (s->window > 0)
        s->ring = malloc((size_t)s->window * sizeof *s->ring);
    if (!s->cands || !s->counts || (s->window > 0 && !s->ring)) {
        fg_sampler_destroy(s);
        return FG_FAIL(FG_ERR_NOMEM, "sampler: out of memory for n_vocab %d", (int)n_vocab);
    }
    fg_sampler_reset(s);
    *out = s;
    return FG_OK;
}

void fg_sampler_destroy(fg_sampler *s) {
    if (!s)
        return;
    free(s->cands);
    free(s->counts);
    free(s->ring);
    free(s->bias);
    free(s);
}

void fg_sampler_reset(fg_sampler *s) {
    memset(s->counts, 0, (size_t)s->n_vocab * sizeof *s->counts);
    s->ring_len = 0;
    s->ring_pos = 0;
    uint64_t x = s->params.seed;
    for (int i = 0; i < 4; i++)
        s->rng[i] = splitmix64(&x);
}

void fg_sampler_accept(fg_sampler *s, int32_t token) {
    if (s->window == 0 || token < 0 || token >= s->n_vocab)
        return;
    if (s->window < 0) {
        s->counts[token]++;
        return;
    }
    if (s->ring_len == s->window) {
        s->counts[s->ring[s->ring_pos]]--;
    } else {
        s->ring_len++;
    }
    s->ring[s->ring_pos] = token;
    s->counts[token]++;
    s->ring_pos = (s->ring_pos + 1) % s->window;
}

// a ranks before b: higher logit, ties to the lower id
static bool better(const cand *a, const cand *b) {
    return a->logit > b->logit || (a->logit == b->logit && a->id < b->id);
}

static int cmp_cand(const void *pa, const void *pb) {
    const cand *a = pa, *b = pb;
    if (better(a, b))
        return -1;
    if (better(b, a))
        return 1;
    return 0;
}

// Min-heap on `better` (root = worst kept) for top-k selection.
static void sift_down(cand *h, int32_t n, int32_t i) {
    for (;;) {
        int32_t l = 2 * i + 1, r = l + 1, w = i;
        if (l < n && better(&h[w], &h[l]))
            w = l;
        if (r < n && better(&h[w], &h[r]))
            w = r;
        if (w == i)
            return;
        cand t = h[i];
        h[i] = h[w];
        h[w] = t;
        i = w;
    }
}

// llama.cpp's repeat penalty, then OpenAI's frequency/presence penalties, for seen tokens.
static float penalize(const fg_sampler *s, int32_t i, float l) {
    int32_t cnt = s->counts[i];
    if (cnt <= 0)
        return l;
    const fg_sampling *p = &s->params;
    if (l <= 0.0f)
        l *= p->repeat_penalty;
    else
        l /= p->repeat_penalty;
    return l - ((float)cnt * p->frequency_penalty + p->presence_penalty);
}

void fg_sampler_penalize(const fg_sampler *s, const float *logits, float *out) {
    int32_t b = 0; // the sorted bias list, walked alongside the vocabulary
    for (int32_t i = 0; i < s->n_vocab; i++) {
        float l = logits[i];
        if (b < s->n_bias && s->bias[b].token == i)
            l += s->bias[b++].bias;
        out[i] = s->window != 0 ? penalize(s, i, l) : l;
    }
}

int32_t fg_sampler_sample(fg_sampler *s, const float *logits) {
    const fg_sampling *p = &s->params;
    cand *c = s->cands;
    int32_t n = 0;
    bool pen = s->window != 0;
    bool greedy = p->temperature <= 0.0f;
    // top-k is selected on the fly (a min-heap of the k best in c[0..k)), so a large
    // vocabulary costs one pass and no full candidate array
    int32_t k = !greedy && p->top_k > 0 && p->top_k < s->n_vocab ? p->top_k : 0;
    int32_t fallback = -1; // lowest id that is not NaN, in case nothing is finite
    int32_t best = -1;     // greedy: first maximum
    float maxv = -INFINITY;
    int32_t nb = 0; // next entry of the sorted bias list
    for (int32_t i = 0; i < s->n_vocab; i++) {
        float l = logits[i];
        if (nb < s->n_bias && s->bias[nb].token == i)
            l += s->bias[nb++].bias;
        if (isnan(l))
            continue;
        if (fallback < 0)
            fallback = i;
        if (pen) {
            l = penalize(s, i, l);
            if (isnan(l))
                continue;
        }
        if (l == -INFINITY)
            continue;
        if (l > maxv) {
            maxv = l;
            best = i;
        }
        if (greedy)
            continue;
        cand x = {i, l};
        if (k == 0) {
            c[n++] = x;
        } else if (n < k) {
            c[n++] = x;
            if (n == k)
                for (int32_t j = k / 2 - 1; j >= 0; j--)
                    sift_down(c, k, j);
        } else if (better(&x, &c[0])) {
            c[0] = x;
            sift_down(c, k, 0);
        }
    }
    if (greedy || best < 0) // greedy, or nothing finite
        return best >= 0 ? best : fallback < 0 ? 0 : fallback;
    bool sorted = false;
    if (k > 0) {
        qsort(c, (size_t)n, sizeof *c, cmp_cand);
        sorted = true;
    }
    if (maxv == INFINITY) { // only the +inf ones have probability; equal among themselves
        int32_t m = 0;
        for (int32_t i = 0; i < n; i++)
            if (c[i].logit == INFINITY)
                c[m++] = (cand){c[i].id, 0.0f};
        n = m;
        maxv = 0.0f;
    }
    if (p->top_p < 1.0f && n > 1) {
        if (!sorted) {
            qsort(c, (size_t)n, sizeof *c, cmp_cand);
            sorted = true;
        }
        double sum = 0.0;
        for (int32_t i = 0; i < n; i++)
            sum += exp((double)c[i].logit - (double)maxv);
        double cum = 0.0, target = (double)p->top_p * sum;
        for (int32_t i = 0; i < n; i++) {
            cum += exp((double)c[i].logit - (double)maxv);
            if (cum >= target) {
                n = i + 1;
                break;
            }
        }
    }
    if (p->min_p > 0.0f && n > 1) {
        float thr = maxv + logf(p->min_p);
        int32_t m = 0;
        for (int32_t i = 0; i < n; i++)
            if (c[i].logit >= thr)
                c[m++] = c[i];
        n = m > 0 ? m : 1; // the max always passes; guard anyway
    }
    if (n == 1)
        return c[0].id;
    double inv_t = 1.0 / (double)p->temperature;
    double sum = 0.0;
    for (int32_t i = 0; i < n; i++)
        sum += exp(((double)c[i].logit - (double)maxv) * inv_t);
    double u = rng_uniform(s->rng) * sum;
    double cum = 0.0;
    for (int32_t i = 0; i < n; i++) {
        cum += exp(((double)c[i].logit - (double)maxv) * inv_t);
        if (u < cum)
            return c[i].id;
    }
    // rounding left u at the very end: the last candidate with non-zero weight
    for (int32_t i = n - 1; i > 0; i--)
        if (exp(((double)c[i].logit - (double)maxv) * inv_t) > 0.0)
            return c[i].id;
    return c[0].id;
}

float fg_logprobs(const float *logits, int32_t n_vocab, int32_t token, int32_t n_top,
                  fg_top_logprob *top, int32_t *n_top_out) {
    double maxv = -INFINITY;
    for (int32_t i = 0; i < n_vocab; i++)
        if (logits[i] > maxv) // NaN compares false: skipped
            maxv = logits[i];
    double lse;
    if (maxv == -INFINITY || maxv == INFINITY) {
        lse = maxv; // degenerate row: every finite logit gets -inf (or the row is empty)
    } else {
        double sum = 0.0;
        for (int32_t i = 0; i < n_vocab; i++)
            if (!isnan(logits[i]))
                sum += exp((double)logits[i] - maxv);
        lse = maxv + log(sum);
    }
    if (n_top > FG_MAX_TOP_LOGPROBS)
        n_top = FG_MAX_TOP_LOGPROBS;
    if (n_top > n_vocab)
        n_top = n_vocab;
    int32_t k = 0;
    if (n_top > 0 && top) {
        // insertion into a small sorted list: n_top <= 20
        cand best[FG_MAX_TOP_LOGPROBS];
        for (int32_t i = 0; i < n_vocab; i++) {
            cand x = {i, isnan(logits[i]) ? -INFINITY : logits[i]};
            if (k == n_top && !better(&x, &best[k - 1]))
                continue;
            int32_t j = k < n_top ? k++ : k - 1;
            while (j > 0 && better(&x, &best[j - 1])) {
                best[j] = best[j - 1];
                j--;
            }
            best[j] = x;
        }
        for (int32_t i = 0; i < k; i++) {
            top[i].token = best[i].id;
            top[i].logprob = (float)((double)best[i].logit - lse);
        }
    }
    if (n_top_out)
        *n_top_out = k;
    if (token < 0 || token >= n_vocab || isnan(logits[token]))
        return -INFINITY;
    return (float)((double)logits[token] - lse);
}
