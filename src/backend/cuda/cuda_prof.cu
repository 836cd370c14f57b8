// cuda_prof.cu - the op profiler of the CUDA backend (FORGE_CUDA_PROFILE=1): every op the ops
// table launches sits between two timing events; the elapsed times are summed per op and shape
// ("matmul q4_k 28672x4096 x1") and printed to stderr, longest first, when the backend is
// destroyed. For measuring, not serving: graphs are off while it runs (each op is launched
// and timed), and the events are read after each step's wait (or when the pool of pairs is
// full, which then synchronises). Each step starts with a kernel that spins for ~2 ms
// (FORGE_CUDA_PROFILE_SPIN cycles): the host queues the step's launches meanwhile, so the
// device runs them back to back and an op's time is its kernels' time, not the host's launch
// gaps. Off (the default), an op pays one branch.
#include "backend/cuda/cuda_internal.h"

extern "C" {
#include "base/util.h"
}

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// spins for `cycles` clock cycles of one multiprocessor
__global__ void prof_spin_kernel(long long cycles) {
    const long long t0 = clock64();
    while (clock64() - t0 < cycles) {
    }
}

enum { PROF_PAIRS = 4096, PROF_KEYS = 256, PROF_NAME = 80 };

struct fg_cuda_prof {
    gpuEvent_t ev[2 * PROF_PAIRS];
    int pair_key[PROF_PAIRS]; // key of each recorded pair
    int n_pairs;              // pairs recorded, not yet read
    int n_keys;
    int n_steps;              // step waits seen (drains)
    long long spin;           // cycles of the spin kernel at each step's start
    struct {
        char name[PROF_NAME];
        uint64_t calls;
        double ms;
    } keys[PROF_KEYS];
};

fg_status fg_cuda_prof_init(fg_cuda *c) {
    const char *e = getenv("FORGE_CUDA_PROFILE");
    if (!e || !strcmp(e, "0") || !*e)
        return FG_OK;
    fg_cuda_prof *p = (fg_cuda_prof *)calloc(1, sizeof *p);
    if (!p)
        return fg_fail(FG_ERR_NOMEM, "%s: out of host memory for the op profiler", FG_GPU_VENDOR);
    c->prof = p;
    for (int i = 0; i < 2 * PROF_PAIRS; i++)
        FG_GPU_CHECK(c, gpuEventCreate(&p->ev[i]));
    c->graphs_on = false; // each op is launched, and timed, on its own
    const char *sp = getenv("FORGE_CUDA_PROFILE_SPIN");
    p->spin = sp ? atoll(sp) : 4000000;
    return FG_OK;
}

fg_status fg_cuda_prof_step(fg_cuda *c) {
    if (c->prof && c->prof->spin > 0) {
        prof_spin_kernel<<<1, 1, 0, c->stream>>>(c->prof->spin);
        FG_GPU_LAUNCH_CHECK(c, "profiler spin");
    }
    return FG_OK;
}

// Reads every recorded pair into the sums (waits for the last one).
void fg_cuda_prof_drain(fg_cuda *c) {
    fg_cuda_prof *p = c->prof;
    if (!p || p->n_pairs == 0)
        return;
    FG_GPU_IGNORE(gpuEventSynchronize(p->ev[2 * (p->n_pairs - 1) + 1]));
    for (int i = 0; i < p->n_pairs; i++) {
        float ms = 0.0f;
        if (gpuEventElapsedTime(&ms, p->ev[2 * i], p->ev[2 * i + 1]) != gpuSuccess) {
            FG_GPU_IGNORE(gpuGetLastError());
            continue;
        }
        p->keys[p->pair_key[i]].ms += ms;
        p->keys[p->pair_key[i]].calls++;
    }
    p->n_pairs = 0;
    p->n_steps++;
}

int fg_cuda_prof_begin(fg_cuda *c, const char *fmt, ...) {
    fg_cuda_prof *p = c->prof;
    if (!p)
        return -1;
    char name[PROF_NAME];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    int k = 0;
    while (k < p->n_keys && strcmp(p->keys[k].name, name))
        k++;
    if (k == p->n_keys) {
        if (p->n_keys == PROF_KEYS)
            k = PROF_KEYS - 1; // the last key collects the overflow
        else {
            p->n_keys++;
            snprintf(p->keys[k].name, PROF_NAME, "%s", name);
        }
    }
    if (p->n_pairs == PROF_PAIRS)
        fg_cuda_prof_drain(c);
    const int i = p->n_pairs++;
    p->pair_key[i] = k;
    FG_GPU_IGNORE(gpuEventRecord(p->ev[2 * i], c->stream));
    return i;
}

void fg_cuda_prof_end(fg_cuda *c, int i) {
    if (i >= 0 && c->prof)
        FG_GPU_IGNORE(gpuEventRecord(c->prof->ev[2 * i + 1], c->stream));
}

static int by_ms(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return x < y ? 1 : x > y ? -1 : 0;
}

void fg_cuda_prof_free(fg_cuda *c) {
    fg_cuda_prof *p = c->prof;
    if (!p)
        return;
    fg_cuda_prof_drain(c);
    double total = 0.0;
    for (int k = 0; k < p->n_keys; k++)
        total += p->keys[k].ms;
    // sort indices by time (the struct's first field is not the time: a small index table)
    struct {
        double ms;
        int k;
    } order[PROF_KEYS];
    for (int k = 0; k < p->n_keys; k++) {
        order[k].ms = p->keys[k].ms;
        order[k].k = k;
    }
    qsort(order, (size_t)p->n_keys, sizeof order[0], by_ms);
    fprintf(stderr, "[forge cuda profile] %s: %d step waits, %.3f ms in ops\n", c->name, p->n_steps, total);
    fprintf(stderr, "[forge cuda profile] %-56s %9s %11s %10s %6s\n", "op", "calls", "total ms", "us/call", "share");
    for (int j = 0; j < p->n_keys; j++) {
        const int k = order[j].k;
        fprintf(stderr, "[forge cuda profile] %-56s %9llu %11.3f %10.2f %5.1f%%\n", p->keys[k].name,
                (unsigned long long)p->keys[k].calls, p->keys[k].ms,
                p->keys[k].calls ? 1000.0 * p->keys[k].ms / (double)p->keys[k].calls : 0.0,
                total > 0 ? 100.0 * p->keys[k].ms / total : 0.0);
    }
    for (int i = 0; i < 2 * PROF_PAIRS; i++)
        if (p->ev[i])
            FG_GPU_IGNORE(gpuEventDestroy(p->ev[i]));
    free(p);
    c->prof = NULL;
}
