// test_sample_emu.cpp - cuda_sample.cu run in the SIMT emulator (emu_rt.h) against the reference
// sampler (src/backend/sample_ref.c): random rows (ties, +-inf, NaN, huge and flat values)
// with every chain setting (greedy, temperature, top-k from 1 to past the 1,024-candidate
// shared-memory sort, top-p, min-p, penalties and logit bias through entries, none at all) and
// vocabularies on both sides of the exact/large paths, in DRAW and SCORE modes with top-N
// log-probabilities. Tokens, the "uniform used" flag and top-N ids must be equal; log-probs
// within 1e-6 (the log-softmax sums in another order). Rows are split over several blocks
// (greedy, top-k 1..1,024: samp_scan_kernel + samp_pick_kernel) with slices from 2 logits up,
// so that small vocabularies span many slices. Usage (via run_sample.sh):
// test_sample_emu [seed] [rows]   (FORGE_EMU_BIG=1: also a 150,001-token vocabulary)
#include "backend/cuda/cuda_internal.h"
extern "C" {
#include "backend/sample_ref.h"
}
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <vector>
#include <random>
#include <algorithm>

// the matmul arena's scratch (cuda_matmul.cu is not in the emulator build)
static std::vector<char> g_arena(4u << 20);
fg_status fg_cuda_op_scratch(fg_cuda *c, size_t n, void **out) {
    if (n > c->mm.size)
        return FG_ERR_CAPACITY;
    c->mm.used = n;
    *out = c->mm.base;
    return FG_OK;
}

int main(int argc, char **argv) {
    const unsigned seed = argc > 1 ? (unsigned)strtoul(argv[1], NULL, 0) : 20261206u;
    const int n_rows = argc > 2 ? atoi(argv[2]) : 160;
    printf("test_sample_emu: warp %d, seed %u, %d rows\n", FG_WARP, seed, n_rows);
    std::mt19937_64 rng(seed);
    std::uniform_real_distribution<double> U(0.0, 1.0);
    // FORGE_EMU_BIG=1 adds a 150,001-token vocabulary (three id digits, entry-filter bits that
    // alias): slow in the emulator
    const bool big = getenv("FORGE_EMU_BIG") && atoi(getenv("FORGE_EMU_BIG")) == 1;
    const int vocabs[] = {7, 300, 1500, 4099, 150001};
    const int n_vocabs = big ? 5 : 4;
    int fails = 0, n_large = 0, n_draws = 0, n_split = 0;
    const int slices[] = {0, 2, 5, 64, 300, 1024}; // 0: the default (SAMP_SLICE)
    for (int row = 0; row < n_rows; row++) {
        const int n = vocabs[row % n_vocabs];
        std::vector<float> x(n);
        // logits: several scales, rounded (ties), occasionally flat, extreme or non-finite
        const int shape = (int)(U(rng) * 6);
        const double amp = shape == 0 ? 0.01 : shape == 1 ? 30.0 : 4.0;
        for (int i = 0; i < n; i++) {
            double v = (U(rng) * 2 - 1) * amp;
            if (shape == 2)
                v = floor(v * 2) / 2; // many ties
            if (shape == 3)
                v = 1.0; // flat
            x[i] = (float)v;
        }
        if (shape == 4) {
            x[(size_t)(U(rng) * n)] = INFINITY;
            x[(size_t)(U(rng) * n)] = INFINITY;
            x[(size_t)(U(rng) * n)] = -INFINITY;
            x[(size_t)(U(rng) * n)] = NAN;
            x[(size_t)(U(rng) * n)] = 3e38f;
            x[(size_t)(U(rng) * n)] = -0.0f;
        }
        if (shape == 5)
            for (int i = 0; i < n; i++)
                if (U(rng) < 0.3)
                    x[i] = U(rng) < 0.5 ? -INFINITY : NAN;
        fg_sample_row p;
        memset(&p, 0, sizeof p);
        p.mode = U(rng) < 0.15 ? FG_SAMPLE_SCORE : FG_SAMPLE_DRAW;
        p.token = (int)(U(rng) * (n + 2)) - 1;
        p.n_top = (int)(U(rng) * 23) - 2; // -2..20: -1 off
        if (p.n_top < -1)
            p.n_top = -1;
        const int ks[] = {0, 0, 1, 5, 40, 1000, 1100, 5000};
        p.top_k = ks[(int)(U(rng) * 8)];
        p.temperature = U(rng) < 0.15 ? 0.0f : (float)(0.2 + U(rng) * 2.0);
        p.top_p = U(rng) < 0.4 ? 1.0f : (float)(0.5 + U(rng) * 0.5);
        p.min_p = U(rng) < 0.4 ? 0.0f : (float)(U(rng) * 0.2);
        if (U(rng) < 0.05)
            p.min_p = 1.5f; // nothing passes: the reference keeps its first candidate
        p.log_min_p = p.min_p > 0.0f ? logf(p.min_p) : 0.0f;
        p.repeat_penalty = U(rng) < 0.5 ? 1.0f : (float)(0.5 + U(rng));
        p.frequency_penalty = U(rng) < 0.5 ? 0.0f : (float)(U(rng) - 0.5);
        p.presence_penalty = U(rng) < 0.5 ? 0.0f : (float)(U(rng) - 0.5);
        p.inv_temp = p.temperature > 0.0f ? 1.0 / (double)p.temperature : 0.0;
        p.uniform = U(rng);
        // entries: a sorted random subset of tokens with biases and/or counts
        std::vector<fg_sample_entry> ent;
        int n_ent = U(rng) < 0.5 ? 0 : (int)(U(rng) * std::min(n, 64));
        if (n > 100000 && n_ent > 0)
            n_ent = 3000; // many entries: filter bits shared by several tokens
        std::vector<int> toks(n);
        for (int i = 0; i < n; i++)
            toks[i] = i;
        std::shuffle(toks.begin(), toks.end(), rng);
        toks.resize(n_ent);
        std::sort(toks.begin(), toks.end());
        for (int t : toks) {
            fg_sample_entry e = {t, 0, 0.0f, 0};
            if (U(rng) < 0.5) {
                e.flags = FG_SAMPLE_ENTRY_BIAS;
                e.bias = (float)((U(rng) * 2 - 1) * 10.0);
                if (U(rng) < 0.05)
                    e.bias = -1e30f;
            }
            if (!e.flags || U(rng) < 0.5)
                e.count = 1 + (int)(U(rng) * 5);
            ent.push_back(e);
        }
        p.first_entry = 0;
        p.n_entries = (int)ent.size();

        // reference
        std::vector<fg_sample_cand> scratch(n);
        fg_sample_result want;
        fg_sample_ref(&p, ent.data(), x.data(), n, scratch.data(), &want);
        // the kernel in the emulator
        fg_cuda c;
        memset(&c, 0, sizeof c);
        c.warp = FG_WARP;
        c.step.n_out = 1;
        c.step.sample = &p;
        c.step.sample_entries = ent.data();
        c.mm.base = g_arena.data();
        c.mm.size = g_arena.size();
        c.sample_slice = slices[row % 6];
        memset(g_arena.data(), 0xA5, 1u << 16); // stale scratch
        fg_sample_result got;
        memset(&got, 0xff, sizeof got);
        fg_tensor tl, to; // (views by hand: the emulator build links no tensor helpers)
        memset(&tl, 0, sizeof tl);
        memset(&to, 0, sizeof to);
        tl.type = FG_TYPE_F32;
        tl.ne[0] = n;
        tl.ne[1] = tl.ne[2] = tl.ne[3] = 1;
        tl.nb[0] = 4;
        tl.nb[1] = tl.nb[2] = tl.nb[3] = (size_t)n * 4;
        tl.data = x.data();
        to.type = FG_TYPE_I32;
        to.ne[0] = FG_SAMPLE_RESULT_WORDS;
        to.ne[1] = to.ne[2] = to.ne[3] = 1;
        to.nb[0] = 4;
        to.nb[1] = to.nb[2] = to.nb[3] = sizeof(fg_sample_result);
        to.data = &got;
        if (fg_cuda_sample(&c, &to, &tl, 0) != FG_OK) {
            printf("row %d: launch failed\n", row);
            return 1;
        }
        bool large = p.mode == FG_SAMPLE_DRAW && p.temperature > 0.0f && n > 1024 &&
                     (p.top_k == 0 || p.top_k > 1024);
        n_large += large;
        const int per = (c.sample_slice > 0 ? c.sample_slice : 2048);
        n_split += p.mode == FG_SAMPLE_DRAW && (n + per - 1) / per >= 2 &&
                   (p.temperature <= 0.0f || (p.top_k >= 1 && p.top_k <= 1024 && p.top_k < n));
        n_draws += (want.flags & FG_SAMPLE_USED_UNIFORM) != 0;
        bool ok = got.token == want.token && got.flags == want.flags;
        if (p.n_top >= 0) {
            ok = ok && got.n_top == want.n_top;
            const double d = fabs((double)got.logprob - (double)want.logprob);
            if (!(d <= 1e-6 + 1e-6 * fabs((double)want.logprob)) &&
                !(isinf(got.logprob) && got.logprob == want.logprob) && !(isnan(got.logprob) && isnan(want.logprob)))
                ok = false;
            for (int i = 0; i < want.n_top && i < FG_MAX_TOP_LOGPROBS && ok; i++) {
                const double e = fabs((double)got.top[i].logprob - (double)want.top[i].logprob);
                if (got.top[i].token != want.top[i].token ||
                    (!(e <= 1e-6 + 1e-6 * fabs((double)want.top[i].logprob)) &&
                     !(got.top[i].logprob == want.top[i].logprob) &&
                     !(isnan(got.top[i].logprob) && isnan(want.top[i].logprob))))
                    ok = false;
            }
        }
        if (!ok) {
            fails++;
            printf("row %d (n %d, mode %d, shape %d, k %d, T %g, top_p %g, min_p %g, entries %d, u %.17g, n_top %d): "
                   "got token %d flags %d lp %.9g n_top %d top0 %d, want token %d flags %d lp %.9g n_top %d top0 %d\n",
                   row, n, p.mode, shape, p.top_k, (double)p.temperature, (double)p.top_p, (double)p.min_p,
                   p.n_entries, p.uniform, p.n_top, got.token, got.flags, (double)got.logprob, got.n_top,
                   got.n_top > 0 ? got.top[0].token : -1, want.token, want.flags, (double)want.logprob, want.n_top,
                   want.n_top > 0 ? want.top[0].token : -1);
        }
    }
    printf("test_sample_emu: warp %d: %d rows, %d draws (%d on the large path, %d rows split), %d differ\n",
           FG_WARP, n_rows, n_draws, n_large, n_split, fails);
    if (n_split < n_rows / 8) {
        printf("test_sample_emu: too few split rows (%d)\n", n_split);
        return 1;
    }
    return fails ? 1 : 0;
}
