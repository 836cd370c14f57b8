// sample_ref.c - the reference sampling arithmetic, llama.cpp's common chain: logit bias ->
// penalties (repeat, frequency, presence) -> top-k -> top-p -> min-p -> temperature -> draw,
// and the log-softmax behind logprobs. Moved here unchanged from the host sampler so that
// the CPU backend's sample op and fg_sampler_sample are one function: the per-request state
// (penalty counts, logit bias, the uniform draw) arrives as an fg_sample_row and its entries.
// Not here: the history and the RNG (src/engine/sampler.c), the GPU kernel (cuda_sample.cu).
#include "backend/sample_ref.h"

#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

typedef fg_sample_cand cand;

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

// llama.cpp's repeat penalty, then OpenAI's frequency/presence penalties, for a seen token.
static float penalize(const fg_sample_row *p, int32_t cnt, float l) {
    if (l <= 0.0f)
        l *= p->repeat_penalty;
    else
        l /= p->repeat_penalty;
    return l - ((float)cnt * p->frequency_penalty + p->presence_penalty);
}

// The sampled token; *used: the uniform draw was consumed.
static int32_t draw(const fg_sample_row *p, const fg_sample_entry *ent, const float *logits, int32_t n_vocab,
                    cand *c, bool *used) {
    *used = false;
    int32_t n = 0;
    bool greedy = p->temperature <= 0.0f;
    // top-k is selected on the fly (a min-heap of the k best in c[0..k)), so a large
    // vocabulary costs one pass and no full candidate array
    int32_t k = !greedy && p->top_k > 0 && p->top_k < n_vocab ? p->top_k : 0;
    int32_t fallback = -1; // lowest id that is not NaN, in case nothing is finite
    int32_t best = -1;     // greedy: first maximum
    float maxv = -INFINITY;
    int32_t ne = 0; // next entry (sorted by token), walked alongside the vocabulary
    for (int32_t i = 0; i < n_vocab; i++) {
        float l = logits[i];
        const fg_sample_entry *e = ne < p->n_entries && ent[ne].token == i ? &ent[ne++] : NULL;
        if (e && (e->flags & FG_SAMPLE_ENTRY_BIAS))
            l += e->bias;
        if (isnan(l))
            continue;
        if (fallback < 0)
            fallback = i;
        if (e && e->count > 0) {
            l = penalize(p, e->count, l);
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
        float thr = maxv + p->log_min_p;
        int32_t m = 0;
        for (int32_t i = 0; i < n; i++)
            if (c[i].logit >= thr)
                c[m++] = c[i];
        n = m > 0 ? m : 1; // the max always passes; guard anyway
    }
    if (n == 1)
        return c[0].id;
    double inv_t = p->inv_temp;
    double sum = 0.0;
    for (int32_t i = 0; i < n; i++)
        sum += exp(((double)c[i].logit - (double)maxv) * inv_t);
    *used = true;
    double u = p->uniform * sum;
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

void fg_sample_ref(const fg_sample_row *p, const fg_sample_entry *ent, const float *logits, int32_t n_vocab,
                   fg_sample_cand *scratch, fg_sample_result *out) {
    memset(out, 0, sizeof *out);
    out->token = -1;
    if (p->mode == FG_SAMPLE_NONE)
        return;
    if (p->mode == FG_SAMPLE_SCORE) {
        out->token = p->token;
    } else {
        bool used = false;
        out->token = draw(p, ent, logits, n_vocab, scratch, &used);
        out->flags = used ? FG_SAMPLE_USED_UNIFORM : 0;
    }
    if (p->n_top >= 0)
        out->logprob = fg_logprobs_ref(logits, n_vocab, out->token, p->n_top, out->top, &out->n_top);
}

float fg_logprobs_ref(const float *logits, int32_t n_vocab, int32_t token, int32_t n_top, fg_top_logprob *top,
                      int32_t *n_top_out) {
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
