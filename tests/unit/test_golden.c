// test_golden.c - the forward pass against llama.cpp's CPU reference outputs: every
// $FORGE_SHARED/golden/*.json (globbed, so new goldens are picked up), one test per file.
// forge-test-modules: model registry backend tokenizer gguf quant base
//
// Per case: prompt tokens identical; one forward over the whole prompt with logits for every
// position: our top-1 is in the golden top-5 and the golden top-1 in our top-5, next-token
// log-probs within a mean-absolute tolerance; 48 greedy steps one token at a time, identical
// until a divergence, which is allowed only where the reference margin (top-1 minus top-2
// logit) is below `margin` and the reference's pick is within `margin` of our top logit
// (all 48 identical for stories260K). Then all prompts as ONE step of several sequences
// (interleaved page tables) and batched greedy decoding, checked the same way: the batching path.
//
// We compute as the reference does: activations are quantized to Q8_0/Q8_1/Q8_K inside the dot
// products of quantized weights (converted to F16/BF16 for F16/BF16 weights), the KV cache is
// F16; what differs is summation order and SIMD rounding, which these random-weight models
// amplify (MANIFEST 2.3: two llama.cpp code paths differ by up to 0.05 mean / 0.33 max in
// logprob). Measured here (mean / max |d logprob|): stories260K 0.0004 / 0.007; F16 llama,
// qwen2, qwen3 <= 0.0024 / 0.013; BF16 0.012 / 0.05; quantized 0.002-0.06 / 0.10-0.34;
// max |d logit| of the top-5 ids: 0.013 (F16), 0.07 (BF16), 0.40 (quantized).
// Tolerances: mean |d logprob| 0.05 (F32/F16), 0.15 (BF16), 0.25 (quantized); greedy margin
// 0.1 (F32/F16, ~8x the max logit error), 0.25 (BF16), 0.5 (quantized: a divergence above it
// needs errors of 0.25 on both logits in opposite directions).
// FORGE_GOLDEN_REF=1 runs with the scalar reference kernels (diagnosis); FORGE_DEVICE=cuda on the GPU.
// FORGE_GOLDEN_KV=q8_0 keeps the KV cache in Q8_0 instead of F16: a measurement (issue 13: the
// golden error with an 8-bit cache, in docs/PERF.md), not a suite - the goldens were made with
// an F16 cache and the tolerances are its own, which several random-weight models then exceed;
// models whose head_dim is not whole 32-blocks are skipped with the reason printed.
// Tensor parallelism: every golden also runs with each size in FORGE_GOLDEN_TP (default "2";
// "" or "1": none), checked the same way (stories260K's 48 greedy tokens exact); a model whose
// shapes don't shard (K-quant rows of 128 per rank, heads that don't divide) passes with its
// refusal printed; on the GPU a size needs that many GPUs (SKIP otherwise).
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "backend/backend.h"
#include "forge.h"
#include "quant/quant.h"

#include <glob.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_GEN 1024 // greedy steps per case: the golden's own count (48 in ../shared)
#define PAGE 16
#define MAX_CASES 32

typedef struct tolerance {
    const char *kind;
    double mean_lp;   // mean |d logprob| bound
    double margin;    // greedy compared up to the first reference margin below this
    bool exact;       // all 48 greedy tokens must match (stories260K)
} tolerance;

typedef struct stats {
    double sum_lp, max_lp, sum_dl, max_dl;
    int64_t n_lp, n_dl;
    int top1_fail;
    int n_div, div_fail;
    int prefix[MAX_CASES];
} stats;

static const char *shared_dir(void) {
    const char *s = getenv("FORGE_SHARED");
    return s && *s ? s : "../shared";
}

// ids of the k largest logits, descending, ties to the lower id
static void topk(const float *lg, int32_t n, int k, int32_t *ids) {
    for (int j = 0; j < k; j++)
        ids[j] = -1;
    for (int32_t i = 0; i < n; i++) {
        int j = k;
        while (j > 0 && (ids[j - 1] < 0 || lg[i] > lg[ids[j - 1]]))
            j--;
        if (j >= k)
            continue;
        for (int t = k - 1; t > j; t--)
            ids[t] = ids[t - 1];
        ids[j] = i;
    }
}

static double log_softmax(const float *lg, int32_t n, int32_t tok) {
    float mx = lg[0];
    for (int32_t i = 1; i < n; i++)
        mx = lg[i] > mx ? lg[i] : mx;
    double s = 0;
    for (int32_t i = 0; i < n; i++)
        s += exp((double)lg[i] - mx);
    return (double)lg[tok] - mx - log(s);
}

static int32_t jint(json_t *a, size_t i) { return (int32_t)json_integer_value(json_array_get(a, i)); }

// Checks one position's logits against the golden position object; returns false on a
// top-1 disagreement (printed).
static bool check_position(const char *file, int ci, size_t pi, json_t *pos, const float *lg,
                           int32_t n_vocab, int32_t next, stats *st) {
    json_t *top5 = json_object_get(pos, "top5");
    int32_t ours[5];
    topk(lg, n_vocab, 5, ours);
    int32_t g1 = jint(json_array_get(top5, 0), 0);
    bool ours_in = false, g_in = false;
    for (size_t j = 0; j < json_array_size(top5); j++) {
        json_t *pr = json_array_get(top5, j);
        int32_t id = jint(pr, 0);
        double gl = json_number_value(json_array_get(pr, 1));
        if (id == ours[0])
            ours_in = true;
        double dl = fabs((double)lg[id] - gl);
        st->sum_dl += dl;
        st->n_dl++;
        if (!(dl <= st->max_dl))
            st->max_dl = dl;
    }
    for (int j = 0; j < 5; j++)
        if (ours[j] == g1)
            g_in = true;
    if (next >= 0) {
        json_t *nl = json_object_get(pos, "next_token_logprob");
        double g = json_number_value(nl);
        double d = fabs(log_softmax(lg, n_vocab, next) - g);
        st->sum_lp += d;
        st->n_lp++;
        if (!(d <= st->max_lp))
            st->max_lp = d;
    }
    if (!ours_in || !g_in) {
        printf("  %s case %d pos %zu: our top-1 %d (golden top-1 %d): %s\n", file, ci, pi, ours[0],
               g1, !ours_in ? "ours not in golden top-5" : "golden not in our top-5");
        st->top1_fail++;
        return false;
    }
    return true;
}

// A divergence where the reference margin is small: it must be a near-tie on our side too -
// the reference's pick is within `tol` of our top logit (so it is in our top-5).
static void check_divergence(const char *file, int ci, int k, json_t *t2, const float *lg,
                             int32_t ours, double tol, stats *st) {
    int32_t g = jint(json_array_get(t2, 0), 0);
    double gap = (double)lg[ours] - (double)lg[g];
    st->n_div++;
    if (!(gap <= tol)) {
        printf("  %s case %d greedy step %d: diverged to %d, the reference's %d is %.4f below it\n",
               file, ci, k, ours, g, gap);
        st->div_fail++;
    }
}

typedef struct golden_ctx {
    char path[1024];
    int tp;        // tensor-parallel ranks (1: none)
    char name[1100];
} golden_ctx;

// FORGE_DEVICE picks the backend (cpu by default; cuda on a GPU machine: it SKIPS loudly
// when no GPU is usable); FORGE_GOLDEN_REF=1 the CPU's scalar reference kernels.
static const char *device_name(void) {
    const char *d = getenv("FORGE_DEVICE");
    return d && *d ? d : "cpu";
}

static fg_backend_opts backend_opts(void) {
    fg_backend_opts o = {.n_threads = 2}; // the threaded paths are what ships
    const char *r = getenv("FORGE_GOLDEN_REF");
    o.use_ref = r && !strcmp(r, "1");
    return o;
}

static fg_backend *make_backend(void) {
    fg_backend_opts o = backend_opts();
    fg_backend *be = NULL;
    fg_status s = fg_backend_create(device_name(), &o, &be);
    if (s == FG_ERR_DEVICE && strcmp(device_name(), "cpu") != 0) {
        fprintf(stderr, "SKIP (no GPU): %s backend: %s\n", device_name(), fg_last_error());
        skip();
    }
    if (s != FG_OK)
        fail_msg("%s backend: %s", device_name(), fg_last_error());
    return be;
}

static tolerance tolerance_for(const fg_model *m, const char *file) {
    const fg_gguf_tensor *t = fg_gguf_find_tensor(fg_model_gguf(m), "blk.0.attn_q.weight");
    uint32_t ty = t ? t->type : FG_TYPE_F32;
    tolerance r;
    if (ty == FG_TYPE_F32 || ty == FG_TYPE_F16)
        r = (tolerance){"f32/f16", 0.05, 0.1, false};
    else if (ty == FG_TYPE_BF16)
        r = (tolerance){"bf16", 0.15, 0.25, false};
    else
        r = (tolerance){"quantized", 0.25, 0.5, false};
    if (strstr(file, "stories260K"))
        r.exact = true;
    return r;
}

static void run_golden(void **state) {
    golden_ctx *gc = (golden_ctx *)*state;
    const char *file = strrchr(gc->path, '/') ? strrchr(gc->path, '/') + 1 : gc->path;
    json_error_t jerr;
    json_t *root = json_load_file(gc->path, JSON_ALLOW_NUL, &jerr);
    if (!root)
        fail_msg("%s: %s (line %d)", gc->path, jerr.text, jerr.line);
    const char *model_file = json_string_value(json_object_get(root, "model"));
    assert_non_null(model_file);
    char mpath[1200];
    snprintf(mpath, sizeof mpath, "%s/models/%s", shared_dir(), model_file);
    FILE *probe = fopen(mpath, "rb");
    if (!probe) { // models/<sub>/<file>: synth/ in ../shared, other folders for unseen models
        char pat[1200];
        glob_t gl;
        snprintf(pat, sizeof pat, "%s/models/*/%s", shared_dir(), model_file);
        snprintf(mpath, sizeof mpath, "%s/models/synth/%s", shared_dir(), model_file);
        if (glob(pat, 0, NULL, &gl) == 0 && gl.gl_pathc > 0)
            snprintf(mpath, sizeof mpath, "%s", gl.gl_pathv[0]);
        globfree(&gl);
    } else {
        fclose(probe);
    }

    // Size the step from the golden itself (its prompt_tokens), so that longer prompts and more
    // cases than ../shared has are checked the same way.
    json_t *cases = json_object_get(root, "cases");
    size_t n_cases = json_array_size(cases);
    assert_true(n_cases >= 1 && n_cases <= MAX_CASES);
    size_t gold_total = 0;
    int32_t ng[MAX_CASES] = {0}, max_ng = 0;
    for (size_t c = 0; c < n_cases; c++) {
        json_t *cs = json_array_get(cases, c);
        gold_total += json_array_size(json_object_get(cs, "prompt_tokens"));
        size_t g = json_array_size(json_object_get(cs, "greedy_tokens"));
        if (g > MAX_GEN || json_array_size(json_object_get(cs, "greedy_top2")) < g)
            fail_msg("%s case %zu: %zu greedy tokens (at most %d, with as many greedy_top2)", file, c,
                     g, MAX_GEN);
        ng[c] = (int32_t)g;
        max_ng = ng[c] > max_ng ? ng[c] : max_ng;
    }
    int32_t budget = (int32_t)(gold_total > n_cases ? gold_total : n_cases) + 8;
    fg_backend *be = make_backend();
    fg_model *m = NULL;
    fg_backend_opts bo = backend_opts();
    fg_model_opts mo = {.max_batch_tokens = budget < 512 ? 512 : budget, .max_seqs = MAX_CASES, .tp_size = gc->tp,
                        .tp_backend = &bo};
    if (fg_model_load(mpath, be, &mo, &m) != FG_OK) {
        const char *e = fg_last_error();
        if (gc->tp > 1 && (strstr(e, "not whole blocks at tensor-parallel size") ||
                           strstr(e, "is not divisible by the tensor-parallel size"))) {
            printf("%-26s tp %d: not shardable: %s\n", file, gc->tp, e);
            be->ops->destroy(be);
            json_decref(root);
            return;
        }
        if (gc->tp > 1 && strcmp(device_name(), "cpu") != 0 && strstr(e, "backend (device")) {
            fprintf(stderr, "SKIP (fewer than %d GPUs): %s\n", gc->tp, e);
            be->ops->destroy(be);
            json_decref(root);
            skip();
        }
        fail_msg("%s: %s", mpath, e);
    }
    tolerance tl = tolerance_for(m, file);
    const fg_tokenizer *tok = fg_model_tokenizer(m);
    int32_t V = fg_model_get_info(m)->n_vocab;

    // prompts
    int32_t *ptok[MAX_CASES] = {0};
    size_t np[MAX_CASES] = {0}, total = 0, max_np = 0;
    for (size_t c = 0; c < n_cases; c++) {
        json_t *cs = json_array_get(cases, c);
        const char *prompt = json_string_value(json_object_get(cs, "prompt"));
        assert_non_null(prompt);
        if (fg_tokenize(tok, prompt, strlen(prompt), true, false, &ptok[c], &np[c]) != FG_OK)
            fail_msg("%s case %zu: tokenize: %s", file, c, fg_last_error());
        json_t *gt = json_object_get(cs, "prompt_tokens");
        bool same = json_array_size(gt) == np[c];
        for (size_t i = 0; same && i < np[c]; i++)
            same = jint(gt, i) == ptok[c][i];
        if (!same)
            fail_msg("%s case %zu: prompt tokens differ from the golden (%zu vs %zu tokens)", file, c,
                     np[c], json_array_size(gt));
        total += np[c];
        max_np = np[c] > max_np ? np[c] : max_np;
    }
    assert_true(total <= (size_t)mo.max_batch_tokens);
    int32_t pages_per_seq = (int32_t)((max_np + (size_t)max_ng + PAGE - 1) / PAGE);
    int32_t n_pages = pages_per_seq * (int32_t)n_cases;
    fg_kv_store *kv = NULL;
    const char *kv_env = getenv("FORGE_GOLDEN_KV");
    const uint32_t kv_type = kv_env && !strcmp(kv_env, "q8_0") ? FG_TYPE_Q8_0 : FG_TYPE_F16;
    if (kv_type == FG_TYPE_Q8_0 && fg_model_get_info(m)->head_dim % 32 != 0) {
        fprintf(stderr, "SKIP (FORGE_GOLDEN_KV=q8_0): %s has head_dim %d, not whole 32-blocks\n", file,
                (int)fg_model_get_info(m)->head_dim);
        for (size_t c = 0; c < n_cases; c++)
            free(ptok[c]);
        fg_model_destroy(m);
        be->ops->destroy(be);
        json_decref(root);
        skip();
    }
    if (fg_kv_store_create(m, n_pages, PAGE, kv_type, &kv) != FG_OK)
        fail_msg("kv store: %s", fg_last_error());
    // page j of sequence s is page j * n_cases + s: interleaved, so page tables matter
    int32_t *pt = calloc((size_t)n_pages, sizeof *pt);
    for (int32_t s = 0; s < (int32_t)n_cases; s++)
        for (int32_t j = 0; j < pages_per_seq; j++)
            pt[s * pages_per_seq + j] = j * (int32_t)n_cases + s;
    size_t cap = (size_t)mo.max_batch_tokens;
    float *logits = malloc(sizeof(float) * cap * (size_t)V);
    int32_t *toks = calloc(cap, sizeof *toks), *pos = calloc(cap, sizeof *pos),
            *seq = calloc(cap, sizeof *seq);
    bool *want = calloc(cap, sizeof *want);
    assert_non_null(logits);
    const int32_t *ptabs[MAX_CASES];
    int32_t n_kv[MAX_CASES];
    for (size_t c = 0; c < n_cases; c++)
        ptabs[c] = pt + c * (size_t)pages_per_seq;

    stats single = {0}, batched = {0};
    int failures = 0;
    // ---- one sequence at a time
    for (size_t c = 0; c < n_cases; c++) {
        json_t *cs = json_array_get(cases, c);
        json_t *posj = json_object_get(cs, "positions");
        int32_t n = (int32_t)np[c];
        for (int32_t i = 0; i < n; i++) {
            pos[i] = i;
            seq[i] = 0;
            want[i] = true;
        }
        n_kv[0] = n;
        fg_batch b = {.n_tokens = n, .tokens = ptok[c], .pos = pos, .seq = seq, .want_logits = want,
                      .n_seqs = 1, .n_kv = n_kv, .page_tables = &ptabs[c]};
        if (fg_model_forward(m, kv, &b, logits) != FG_OK)
            fail_msg("%s case %zu: forward: %s", file, c, fg_last_error());
        for (int32_t i = 0; i < n; i++)
            if (!check_position(file, (int)c, (size_t)i, json_array_get(posj, (size_t)i),
                                logits + (size_t)i * (size_t)V, V,
                                i + 1 < n ? ptok[c][i + 1] : -1, &single))
                failures++;
        // greedy, one token per step
        json_t *gt = json_object_get(cs, "greedy_tokens"), *g2 = json_object_get(cs, "greedy_top2");
        int32_t cur;
        int32_t top1[1];
        const float *lrow = logits + (size_t)(n - 1) * (size_t)V;
        topk(lrow, V, 1, top1);
        cur = top1[0];
        int k = 0, ok_steps = 0;
        for (; k < ng[c]; k++) {
            json_t *t2 = json_array_get(g2, (size_t)k);
            double margin = json_number_value(json_array_get(json_array_get(t2, 0), 1)) -
                            json_number_value(json_array_get(json_array_get(t2, 1), 1));
            int32_t g = jint(gt, (size_t)k);
            if (cur != g) {
                if (!tl.exact && margin < tl.margin) {
                    check_divergence(file, (int)c, k, t2, lrow, cur, tl.margin, &single);
                    break; // a legitimate divergence: the sequences are unrelated from here
                }
                printf("  %s case %zu greedy step %d: got %d, golden %d (margin %.4f)\n", file, c, k,
                       cur, g, margin);
                failures++;
                break;
            }
            ok_steps++;
            if (k + 1 == ng[c])
                break;
            int32_t p = n + k;
            n_kv[0] = p + 1;
            fg_batch d = {.n_tokens = 1, .tokens = &cur, .pos = &p, .seq = seq, .want_logits = NULL,
                          .n_seqs = 1, .n_kv = n_kv, .page_tables = &ptabs[c]};
            if (fg_model_forward(m, kv, &d, logits) != FG_OK)
                fail_msg("%s case %zu step %d: forward: %s", file, c, k, fg_last_error());
            lrow = logits;
            topk(lrow, V, 1, top1);
            cur = top1[0];
        }
        single.prefix[c] = ok_steps;
    }

    // ---- all cases as one batch (several sequences in one step), then batched decoding
    int32_t nt = 0;
    for (size_t c = 0; c < n_cases; c++) {
        for (size_t i = 0; i < np[c]; i++) {
            toks[nt] = ptok[c][i];
            pos[nt] = (int32_t)i;
            seq[nt] = (int32_t)c;
            want[nt] = true;
            nt++;
        }
        n_kv[c] = (int32_t)np[c];
    }
    fg_batch b = {.n_tokens = nt, .tokens = toks, .pos = pos, .seq = seq, .want_logits = want,
                  .n_seqs = (int32_t)n_cases, .n_kv = n_kv, .page_tables = ptabs};
    if (fg_model_forward(m, kv, &b, logits) != FG_OK)
        fail_msg("%s batch: forward: %s", file, fg_last_error());
    int32_t cur[MAX_CASES];
    const float *lrows[MAX_CASES];
    bool live[MAX_CASES];
    int32_t row = 0;
    for (size_t c = 0; c < n_cases; c++) {
        json_t *posj = json_object_get(json_array_get(cases, c), "positions");
        for (size_t i = 0; i < np[c]; i++, row++)
            if (!check_position(file, (int)c, i, json_array_get(posj, i),
                                logits + (size_t)row * (size_t)V, V,
                                i + 1 < np[c] ? ptok[c][i + 1] : -1, &batched))
                failures++;
        lrows[c] = logits + (size_t)(row - 1) * (size_t)V;
        topk(lrows[c], V, 1, &cur[c]);
        live[c] = true;
        batched.prefix[c] = ng[c];
        if (ng[c] == 0)
            live[c] = false;
    }
    for (int k = 0; k < max_ng; k++) {
        int32_t nl = 0;
        for (size_t c = 0; c < n_cases; c++) {
            if (!live[c])
                continue;
            json_t *cs = json_array_get(cases, c);
            json_t *t2 = json_array_get(json_object_get(cs, "greedy_top2"), (size_t)k);
            double margin = json_number_value(json_array_get(json_array_get(t2, 0), 1)) -
                            json_number_value(json_array_get(json_array_get(t2, 1), 1));
            int32_t g = jint(json_object_get(cs, "greedy_tokens"), (size_t)k);
            if (cur[c] != g) {
                if (!tl.exact && margin < tl.margin) {
                    check_divergence(file, (int)c, k, t2, lrows[c], cur[c], tl.margin, &batched);
                } else {
                    printf("  %s batch case %zu greedy step %d: got %d, golden %d (margin %.4f)\n",
                           file, c, k, cur[c], g, margin);
                    failures++;
                }
                live[c] = false;
                batched.prefix[c] = k;
                continue;
            }
            if (k + 1 == ng[c]) {
                live[c] = false; // done: all its golden steps matched
                continue;
            }
            toks[nl] = cur[c];
            pos[nl] = (int32_t)np[c] + k;
            seq[nl] = nl;
            n_kv[nl] = pos[nl] + 1;
            ptabs[nl] = pt + c * (size_t)pages_per_seq;
            want[nl] = true;
            nl++;
        }
        if (nl == 0)
            break;
        fg_batch d = {.n_tokens = nl, .tokens = toks, .pos = pos, .seq = seq, .want_logits = want,
                      .n_seqs = nl, .n_kv = n_kv, .page_tables = ptabs};
        if (fg_model_forward(m, kv, &d, logits) != FG_OK)
            fail_msg("%s batch step %d: forward: %s", file, k, fg_last_error());
        int32_t r = 0;
        for (size_t c = 0; c < n_cases; c++)
            if (live[c] && k + 1 < ng[c]) {
                lrows[c] = logits + (size_t)(r++) * (size_t)V;
                topk(lrows[c], V, 1, &cur[c]);
            }
    }

    double mean1 = single.n_lp ? single.sum_lp / (double)single.n_lp : 0;
    double mean2 = batched.n_lp ? batched.sum_lp / (double)batched.n_lp : 0;
    char label[96];
    snprintf(label, sizeof label, gc->tp > 1 ? "%s tp%d" : "%s", file, gc->tp);
    printf("%-26s %-9s |dlogprob| mean %.5f max %.5f (batch: mean %.5f max %.5f); |dlogit| top-5 "
           "mean %.5f max %.5f; greedy prefix", label, tl.kind, mean1, single.max_lp, mean2,
           batched.max_lp, single.n_dl ? single.sum_dl / (double)single.n_dl : 0, single.max_dl);
    for (size_t c = 0; c < n_cases; c++)
        printf(" %d/%d", single.prefix[c], batched.prefix[c]);
    printf(" (tol mean %.2f, margin %.2f%s)\n", tl.mean_lp, tl.margin, tl.exact ? ", exact" : "");
    fflush(stdout);
    failures += single.div_fail + batched.div_fail;
    if (!(mean1 <= tl.mean_lp) || !(mean2 <= tl.mean_lp)) {
        printf("  %s: mean |dlogprob| %.5f / %.5f above %.2f\n", file, mean1, mean2, tl.mean_lp);
        failures++;
    }

    for (size_t c = 0; c < n_cases; c++)
        free(ptok[c]);
    free(pt);
    free(logits);
    free(toks);
    free(pos);
    free(seq);
    free(want);
    fg_kv_store_destroy(kv);
    fg_model_destroy(m);
    be->ops->destroy(be);
    json_decref(root);
    assert_int_equal(failures, 0);
}

static void test_goldens_present(void **state) {
    size_t *n = (size_t *)*state;
    if (*n == 0)
        fail_msg("no golden files in %s/golden (set FORGE_SHARED)", shared_dir());
}

int main(void) {
    printf("test_golden: backend %s%s\n", device_name(),
           getenv("FORGE_GOLDEN_REF") && !strcmp(getenv("FORGE_GOLDEN_REF"), "1") ? " (scalar reference kernels)" : "");
    char pat[1024];
    snprintf(pat, sizeof pat, "%s/golden/*.json", shared_dir());
    glob_t g = {0};
    int gr = glob(pat, 0, NULL, &g);
    size_t n = gr == 0 ? g.gl_pathc : 0;
    // the tensor-parallel sizes (FORGE_GOLDEN_TP, default "2")
    int tps[8] = {1}, n_tp = 1;
    const char *tl = getenv("FORGE_GOLDEN_TP");
    for (const char *p = tl ? tl : "2"; *p && n_tp < 8;) {
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p)
            break;
        if (v > 1 && v <= 8)
            tps[n_tp++] = (int)v;
        p = end + strspn(end, " ,");
    }
    struct CMUnitTest *tests = calloc(n * (size_t)n_tp + 1, sizeof *tests);
    golden_ctx *ctx = calloc(n * (size_t)n_tp + 1, sizeof *ctx);
    static size_t n_found;
    n_found = n;
    tests[0] = (struct CMUnitTest){"goldens_present", test_goldens_present, NULL, NULL, &n_found};
    size_t nt = 1;
    for (int t = 0; t < n_tp; t++)
        for (size_t i = 0; i < n; i++, nt++) {
            golden_ctx *c = &ctx[nt - 1];
            snprintf(c->path, sizeof c->path, "%s", g.gl_pathv[i]);
            c->tp = tps[t];
            const char *b = strrchr(g.gl_pathv[i], '/');
            snprintf(c->name, sizeof c->name, tps[t] > 1 ? "%s tp%d" : "%s", b ? b + 1 : g.gl_pathv[i], tps[t]);
            tests[nt] = (struct CMUnitTest){c->name, run_golden, NULL, NULL, c};
        }
    int rc = _cmocka_run_group_tests("golden", tests, nt, NULL, NULL);
    globfree(&g);
    free(tests);
    free(ctx);
    return rc;
}
