// comm.c - the in-process communicator ("local", comm.h): the ranks of a tensor-parallel group
// are threads of this process, each driving its own CPU backend. An all-reduce is two barriers:
// every rank publishes its tensor, then each rank sums its share of the elements over all ranks
// in rank order 0..n-1 and writes the sum into every rank's tensor, then all wait until every
// share is written. So the result is deterministic and bit-identical on every rank. A barrier
// waits at most timeout_s and fails at once when the group is aborted (a rank failed).
// Not here: NCCL (cuda/comm_nccl.cu). Who calls it: backend.c (fg_op_all_reduce), the model's
// tensor-parallel group (src/model/tp_group.c), registry.c.
#include "backend/comm.h"

#include "base/status.h"
#include "base/util.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct local_group {
    pthread_mutex_t mu;
    pthread_cond_t cv;       // CLOCK_MONOTONIC
    int32_t n;
    int32_t refs;            // handles not yet destroyed
    int32_t arrived;         // ranks at the current barrier
    uint32_t arrived_mask;   // which ones
    uint64_t generation;     // barriers completed
    bool aborted;
    int32_t timed_out_rank;  // the rank whose wait timed out (-1: none)
    uint32_t missing_mask;   // the ranks it was waiting for
    fg_tensor *x[FG_TP_MAX]; // each rank's tensor of the current all-reduce
} local_group;

static fg_status aborted_error(const local_group *g, int32_t rank, double timeout_s) {
    if (g->timed_out_rank >= 0) {
        char who[64] = "";
        size_t o = 0;
        for (int32_t r = 0; r < g->n && o < sizeof who; r++)
            if (g->missing_mask >> r & 1u)
                o += (size_t)snprintf(who + o, sizeof who - o, "%s%d", o ? ", " : "", r);
        if (rank == g->timed_out_rank)
            return FG_FAIL(FG_ERR_DEVICE, "waited %g s at an all-reduce for rank %s, which hung or stopped", timeout_s,
                           who);
        return FG_FAIL(FG_ERR_DEVICE, "all-reduce aborted: rank %d waited %g s for rank %s, which hung or stopped",
                       g->timed_out_rank, timeout_s, who);
    }
    return FG_FAIL(FG_ERR_DEVICE, "all-reduce aborted: another rank failed (this is rank %d)", rank);
}

// Waits until all n ranks have arrived (FG_OK), the group is aborted or the wait times out
// (FG_ERR_DEVICE; a timeout aborts the group, so that the others stop waiting too).
static fg_status barrier(local_group *g, int32_t rank, double timeout_s) {
    pthread_mutex_lock(&g->mu);
    if (g->aborted) {
        fg_status st = aborted_error(g, rank, timeout_s);
        pthread_mutex_unlock(&g->mu);
        return st;
    }
    uint64_t gen = g->generation;
    g->arrived_mask |= 1u << rank;
    if (++g->arrived == g->n) {
        g->arrived = 0;
        g->arrived_mask = 0;
        g->generation++;
        pthread_cond_broadcast(&g->cv);
        pthread_mutex_unlock(&g->mu);
        return FG_OK;
    }
    struct timespec dl;
    clock_gettime(CLOCK_MONOTONIC, &dl);
    double whole = (double)(int64_t)timeout_s;
    dl.tv_sec += (time_t)whole;
    dl.tv_nsec += (long)((timeout_s - whole) * 1e9);
    if (dl.tv_nsec >= 1000000000L) {
        dl.tv_sec++;
        dl.tv_nsec -= 1000000000L;
    }
    while (gen == g->generation && !g->aborted) {
        int rc = pthread_cond_timedwait(&g->cv, &g->mu, &dl);
        if (rc == ETIMEDOUT && gen == g->generation && !g->aborted) {
            g->aborted = true;
            g->timed_out_rank = rank;
            g->missing_mask = ~g->arrived_mask & ((1u << g->n) - 1u);
            pthread_cond_broadcast(&g->cv);
        }
    }
    fg_status st = gen != g->generation ? FG_OK : aborted_error(g, rank, timeout_s);
    pthread_mutex_unlock(&g->mu);
    return st;
}

// Element (flat index i) of a [rows][cols] F32 tensor with row stride nb[1].
static inline float *at(const fg_tensor *t, int64_t i) {
    int64_t r = i / t->ne[0], c = i % t->ne[0];
    return (float *)((char *)t->data + (size_t)r * t->nb[1]) + c;
}

static fg_status local_all_reduce(fg_comm *c, fg_backend *be, fg_tensor *x) {
    (void)be;
    local_group *g = c->ctx;
    pthread_mutex_lock(&g->mu);
    g->x[c->rank] = x;
    pthread_mutex_unlock(&g->mu);
    FG_TRY(barrier(g, c->rank, c->timeout_s));
    const int64_t n = x->ne[0] * x->ne[1];
    for (int32_t k = 0; k < g->n; k++) // every rank must reduce the same shape: our own bug if not
        FG_ASSERT(g->x[k]->ne[0] == x->ne[0] && g->x[k]->ne[1] == x->ne[1]);
    // this rank's share of the elements, summed in rank order
    int64_t per = n / g->n, rem = n % g->n;
    int64_t b = c->rank * per + FG_MIN((int64_t)c->rank, rem), e = b + per + (c->rank < rem ? 1 : 0);
    int64_t cols = x->ne[0];
    for (int64_t i = b; i < e;) {
        // one run within a row: contiguous in every rank's tensor
        int64_t run = FG_MIN(e - i, cols - i % cols);
        float *dst[FG_TP_MAX];
        for (int32_t k = 0; k < g->n; k++)
            dst[k] = at(g->x[k], i);
        for (int64_t j = 0; j < run; j++) {
            float s = dst[0][j];
            for (int32_t k = 1; k < g->n; k++)
                s += dst[k][j];
            for (int32_t k = 0; k < g->n; k++)
                dst[k][j] = s;
        }
        i += run;
    }
    return barrier(g, c->rank, c->timeout_s);
}

static void local_abort(fg_comm *c) {
    local_group *g = c->ctx;
    pthread_mutex_lock(&g->mu);
    g->aborted = true;
    pthread_cond_broadcast(&g->cv);
    pthread_mutex_unlock(&g->mu);
}

static fg_status local_poll(fg_comm *c) {
    local_group *g = c->ctx;
    pthread_mutex_lock(&g->mu);
    fg_status st = g->aborted ? aborted_error(g, c->rank, c->timeout_s) : FG_OK;
    pthread_mutex_unlock(&g->mu);
    return st;
}

static void local_destroy(fg_comm *c) {
    local_group *g = c->ctx;
    pthread_mutex_lock(&g->mu);
    bool last = --g->refs == 0;
    pthread_mutex_unlock(&g->mu);
    if (last) {
        pthread_cond_destroy(&g->cv);
        pthread_mutex_destroy(&g->mu);
        free(g);
    }
    free(c);
}

static const fg_comm_ops k_local_ops = {
    .name = "local",
    .backend = "cpu",
    .destroy = local_destroy,
    .all_reduce_sum = local_all_reduce,
    .abort = local_abort,
    .poll = local_poll,
};

fg_status fg_comm_local_create_group(int32_t n, double timeout_s, fg_comm **comms) {
    if (!comms || n < 1 || n > FG_TP_MAX)
        return FG_FAIL(FG_ERR_INVALID_ARG, "tensor parallel: %d ranks (1 to %d)", n, FG_TP_MAX);
    if (!(timeout_s > 0))
        timeout_s = FG_TP_DEFAULT_TIMEOUT_S;
    local_group *g = calloc(1, sizeof *g);
    fg_comm *c[FG_TP_MAX] = {0};
    bool ok = g != NULL;
    for (int32_t r = 0; r < n && ok; r++)
        ok = (c[r] = calloc(1, sizeof *c[r])) != NULL;
    if (!ok) {
        for (int32_t r = 0; r < n; r++)
            free(c[r]);
        free(g);
        return FG_FAIL(FG_ERR_NOMEM, "tensor parallel: out of memory for %d communicators", n);
    }
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&g->cv, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_init(&g->mu, NULL);
    g->n = n;
    g->refs = n;
    g->timed_out_rank = -1;
    for (int32_t r = 0; r < n; r++) {
        *c[r] = (fg_comm){.ops = &k_local_ops, .rank = r, .size = n, .timeout_s = timeout_s, .ctx = g};
        comms[r] = c[r];
    }
    return FG_OK;
}

void fg_comm_destroy(fg_comm *c) {
    if (c)
        c->ops->destroy(c);
}
