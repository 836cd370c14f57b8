// bench_engine.c - where the engine's scheduler thread spends a step at 64..256 concurrent
// sequences: planning (admission, chunks, pages, prefix lookups), the fill between a step's
// wait and the next submit (tokens applied, the next batch and its sampling rows), events
// (detokenization, stop strings, callbacks), against the step itself (submit: on the CPU the
// computation, on a GPU the metadata copy and launch; wait: the device still computing). N
// requests with short random prompts generate G tokens each (default sampling: temperature
// 0.8, top-k 40, top-p 0.95, min-p 0.05, a repeat penalty 1.1 over 64 tokens), sampled on the
// backend; the figures are per step over the decode phase (from every request's first token
// to the end). Not a test: no assertions on time.
// Usage: build/bench/bench_engine MODEL [--device cpu|cuda] [--threads N] [--seqs 64,128,256]
//        [--prompt 16] [--gen 128] [--defer] [--greedy] [--penalty 1.1]
// (--defer: events after the next submit on the CPU too; --penalty 1: no penalty entries)
//        bench_engine - --host-sample 128256   (the host sampler's cost for one row of that width)
#include "forge.h"

#include "base/util.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct counter {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done;
} counter;

static void on_event(void *user, const fg_event *ev) {
    counter *c = user;
    if (ev->kind != FG_EVENT_DONE)
        return;
    pthread_mutex_lock(&c->mu);
    c->done++;
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
}

static void sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

int main(int argc, char **argv) {
    if (argc < 2 || (argc > 1 && !strcmp(argv[1], "-") && argc < 4)) {
        fprintf(stderr, "usage: bench_engine MODEL [--device cpu|cuda] [--threads N] [--seqs 64,128,256] "
                        "[--prompt 16] [--gen 128] [--defer] [--greedy] [--penalty 1.1]\n");
        return 2;
    }
    const char *path = argv[1], *device = "cpu", *seqs_arg = "64,128,256";
    int threads = 0, prompt_len = 16, gen = 128, defer = 0, greedy = 0;
    float penalty = 1.1f;
    int vocab_cost = 0;
    for (int i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "--device") && i + 1 < argc)
            device = argv[++i];
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc)
            threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--seqs") && i + 1 < argc)
            seqs_arg = argv[++i];
        else if (!strcmp(argv[i], "--prompt") && i + 1 < argc)
            prompt_len = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--gen") && i + 1 < argc)
            gen = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--defer"))
            defer = 1;
        else if (!strcmp(argv[i], "--greedy"))
            greedy = 1;
        else if (!strcmp(argv[i], "--penalty") && i + 1 < argc)
            penalty = (float)atof(argv[++i]);
        else if (!strcmp(argv[i], "--host-sample") && i + 1 < argc)
            vocab_cost = atoi(argv[++i]);
        else {
            fprintf(stderr, "bench_engine: unknown argument '%s'\n", argv[i]);
            return 2;
        }
    }
    int seqs[16], n_cfg = 0;
    for (const char *p = seqs_arg; *p && n_cfg < 16;) {
        seqs[n_cfg++] = atoi(p);
        p = strchr(p, ',');
        if (!p)
            break;
        p++;
    }
    if (vocab_cost > 0) { // what sampling a row on the host costs (the engine before issue 12)
        float *l = malloc((size_t)vocab_cost * sizeof *l);
        uint64_t x = 88172645463325252ull;
        for (int i = 0; i < vocab_cost; i++) { // logits ~ N(0, 3)-ish: a sum of uniforms
            double v = 0.0;
            for (int k = 0; k < 4; k++) {
                x ^= x << 13, x ^= x >> 7, x ^= x << 17;
                v += (double)(x >> 11) * 0x1p-53 - 0.5;
            }
            l[i] = (float)(v * 5.2);
        }
        fg_sampling sp = fg_sampling_default();
        sp.repeat_penalty = penalty;
        fg_sampler *smp = NULL;
        if (fg_sampler_create(&sp, vocab_cost, &smp) != FG_OK) {
            fprintf(stderr, "bench_engine: %s\n", fg_last_error());
            return 1;
        }
        for (int i = 0; i < 64; i++)
            fg_sampler_accept(smp, (i * 7919) % vocab_cost);
        const int reps = 200;
        int32_t t = 0;
        double t0 = fg_time_s();
        for (int i = 0; i < reps; i++)
            t += fg_sampler_sample(smp, l);
        double per = (fg_time_s() - t0) / reps;
        printf("host sampling of one %d-logit row (default chain, the engine's cost per sequence and step before "
               "sampling moved to the backend): %.1f us, plus %.1f KB of logits copied back (token sum %d)\n",
               vocab_cost, per * 1e6, (double)vocab_cost * 4.0 / 1024.0, (int)t);
        fg_sampler_destroy(smp);
        free(l);
        return 0;
    }
    int max_seqs = 1;
    for (int i = 0; i < n_cfg; i++)
        max_seqs = FG_MAX(max_seqs, seqs[i]);
    fg_backend_opts bo = {threads, 0, false};
    fg_backend *be = NULL;
    fg_model *m = NULL;
    fg_model_opts mo = {.max_batch_tokens = FG_MAX(512, max_seqs), .max_seqs = max_seqs};
    if (fg_backend_create(device, &bo, &be) != FG_OK || fg_model_load(path, be, &mo, &m) != FG_OK) {
        fprintf(stderr, "bench_engine: %s\n", fg_last_error());
        return 1;
    }
    const fg_model_info *mi = fg_model_get_info(m);
    printf("bench_engine %s on %s: prompts of %d tokens, %d generated, default sampling (on the backend), "
           "events %s\n",
           mi->name, fg_backend_describe(be), prompt_len, gen,
           defer || mi->async_steps ? "after the next submit" : "before the next submit");
    printf("%6s %6s %9s %10s %9s %9s %9s %9s %9s %10s %10s\n", "seqs", "steps", "step ms", "submit ms", "wait ms",
           "plan us", "fill us", "events us", "host us", "host/step", "fill/step");
    uint64_t lcg = 12345;
    for (int ci = 0; ci < n_cfg; ci++) {
        const int n = seqs[ci];
        fg_engine_opts eo = {.n_ctx = prompt_len + gen + 16,
                             .max_seqs = n,
                             .max_batch_tokens = FG_MAX(512, n),
                             .prefix_cache = true,
                             .defer_events = defer ? 1 : 0};
        fg_engine *e = NULL;
        if (fg_engine_create(m, &eo, &e) != FG_OK) {
            fprintf(stderr, "bench_engine: %s\n", fg_last_error());
            return 1;
        }
        counter c = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0};
        int32_t *prompt = malloc((size_t)prompt_len * sizeof *prompt);
        for (int r = 0; r < n; r++) {
            prompt[0] = 1;
            for (int i = 1; i < prompt_len; i++) {
                lcg = lcg * 6364136223846793005ull + 1442695040888963407ull;
                prompt[i] = 3 + (int32_t)((lcg >> 33) % (uint64_t)(mi->n_vocab - 3));
            }
            fg_request_params rp;
            memset(&rp, 0, sizeof rp);
            rp.prompt = prompt;
            rp.n_prompt = prompt_len;
            rp.max_tokens = gen;
            rp.sampling = greedy ? fg_sampling_greedy() : fg_sampling_default();
            rp.sampling.seed = (uint64_t)r;
            rp.sampling.repeat_penalty = penalty;
            rp.ignore_eos = true;
            rp.logprobs = -1;
            if (fg_engine_submit(e, &rp, on_event, &c, NULL) != FG_OK) {
                fprintf(stderr, "bench_engine: %s\n", fg_last_error());
                return 1;
            }
        }
        free(prompt);
        // the decode phase: from every request's first token to the end
        fg_engine_stats a, b;
        for (;;) {
            fg_engine_get_stats(e, &a);
            if (a.ttft_count >= (uint64_t)n)
                break;
            sleep_ms(1);
        }
        const double t0 = fg_time_s();
        pthread_mutex_lock(&c.mu);
        while (c.done < n)
            pthread_cond_wait(&c.cv, &c.mu);
        pthread_mutex_unlock(&c.mu);
        const double wall = fg_time_s() - t0;
        fg_engine_get_stats(e, &b);
        const double steps = (double)(b.steps - a.steps);
        const double plan = (b.t_plan_s - a.t_plan_s) / steps, fill = (b.t_fill_s - a.t_fill_s) / steps,
                     events = (b.t_events_s - a.t_events_s) / steps;
        const double sub = (b.t_submit_s - a.t_submit_s) / steps, wt = (b.t_wait_s - a.t_wait_s) / steps;
        const double host = plan + fill + events;
        // a synchronous backend (the CPU computes inside the submit): submit + host; an
        // asynchronous one: about max(device, plan + events) + fill + submit (launch)
        const double step = wall / steps;
        printf("%6d %6.0f %9.3f %10.3f %9.3f %9.1f %9.1f %9.1f %9.1f %9.1f%% %9.1f%%\n", n, steps, step * 1e3,
               sub * 1e3, wt * 1e3, plan * 1e6, fill * 1e6, events * 1e6, host * 1e6, 100.0 * host / step,
               100.0 * fill / step);
        fflush(stdout);
        fg_engine_destroy(e, 5.0);
    }
    fg_model_destroy(m);
    fg_backend_destroy(be);
    return 0;
}
