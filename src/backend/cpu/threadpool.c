// threadpool.c - persistent pthread pool for the CPU backend (see threadpool.h).
// A job is published by bumping a generation counter; workers spin on it for a while (decode
// issues hundreds of small jobs per token) and then block on a condvar. The caller runs
// worker 0 itself and waits for a pending counter to reach zero. No allocation per job.
#include "backend/cpu/threadpool.h"

#include "base/status.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define CPU_RELAX() _mm_pause()
#else
#define CPU_RELAX() ((void)0)
#endif

// Spin briefly (decode issues hundreds of small jobs per token), yielding the core now and
// then so that an oversubscribed machine (HTTP threads, other processes) is not starved.
#define SPIN_ITERS 4096
#define SPIN_YIELD_EVERY 256

typedef struct worker {
    fg_threadpool *tp;
    int ith;
    pthread_t thread;
} worker;

struct fg_threadpool {
    int n_threads;
    worker *workers; // [n_threads] (0 is the caller, no thread)
    pthread_mutex_t mu;
    pthread_cond_t cv_work;
    pthread_cond_t cv_done;
    atomic_uint gen;      // bumped once per job
    atomic_int n_pending; // workers (other than 0) still running the current job
    atomic_bool stop;
    fg_tp_fn fn;          // current job (written before gen is bumped)
    void *arg;
    int n_started;        // threads created (for a half-built pool)
};

static void *worker_main(void *p) {
    worker *w = p;
    fg_threadpool *tp = w->tp;
    unsigned seen = 0;
    for (;;) {
        unsigned g = atomic_load_explicit(&tp->gen, memory_order_acquire);
        for (int i = 0; i < SPIN_ITERS && g == seen; i++) {
            if ((i + 1) % SPIN_YIELD_EVERY == 0)
                sched_yield();
            else
                CPU_RELAX();
            g = atomic_load_explicit(&tp->gen, memory_order_acquire);
        }
        if (g == seen) {
            pthread_mutex_lock(&tp->mu);
            while ((g = atomic_load_explicit(&tp->gen, memory_order_acquire)) == seen &&
                   !atomic_load(&tp->stop))
                pthread_cond_wait(&tp->cv_work, &tp->mu);
            pthread_mutex_unlock(&tp->mu);
        }
        if (atomic_load(&tp->stop))
            return NULL;
        seen = g;
        // Every worker runs every job exactly once: the caller publishes the next job only
        // after all n-1 workers have counted down, so fn/arg are stable here.
        tp->fn(tp->arg, w->ith, tp->n_threads);
        if (atomic_fetch_sub_explicit(&tp->n_pending, 1, memory_order_acq_rel) == 1) {
            pthread_mutex_lock(&tp->mu);
            pthread_cond_signal(&tp->cv_done);
            pthread_mutex_unlock(&tp->mu);
        }
    }
}

fg_status fg_tp_create(int n_threads, fg_threadpool **out) {
    if (n_threads < 1)
        n_threads = 1;
    fg_threadpool *tp = calloc(1, sizeof(*tp));
    if (!tp)
        return FG_FAIL(FG_ERR_NOMEM, "cpu backend: thread pool: out of memory");
    tp->n_threads = n_threads;
    pthread_mutex_init(&tp->mu, NULL);
    pthread_cond_init(&tp->cv_work, NULL);
    pthread_cond_init(&tp->cv_done, NULL);
    atomic_init(&tp->gen, 0);
    atomic_init(&tp->n_pending, 0);
    atomic_init(&tp->stop, false);
    tp->workers = calloc((size_t)n_threads, sizeof(worker));
    if (!tp->workers) {
        fg_tp_destroy(tp);
        return FG_FAIL(FG_ERR_NOMEM, "cpu backend: thread pool of %d threads: out of memory", n_threads);
    }
    for (int i = 1; i < n_threads; i++) {
        tp->workers[i].tp = tp;
        tp->workers[i].ith = i;
        int rc = pthread_create(&tp->workers[i].thread, NULL, worker_main, &tp->workers[i]);
        if (rc != 0) {
            fg_tp_destroy(tp);
            return FG_FAIL(FG_ERR_NOMEM, "cpu backend: creating worker thread %d of %d: %s", i,
                           n_threads, strerror(rc));
        }
        tp->n_started = i;
    }
    *out = tp;
    return FG_OK;
}

void fg_tp_destroy(fg_threadpool *tp) {
    if (!tp)
        return;
    pthread_mutex_lock(&tp->mu);
    atomic_store(&tp->stop, true);
    atomic_fetch_add(&tp->gen, 1);
    pthread_cond_broadcast(&tp->cv_work);
    pthread_mutex_unlock(&tp->mu);
    for (int i = 1; i <= tp->n_started; i++)
        pthread_join(tp->workers[i].thread, NULL);
    pthread_cond_destroy(&tp->cv_done);
    pthread_cond_destroy(&tp->cv_work);
    pthread_mutex_destroy(&tp->mu);
    free(tp->workers);
    free(tp);
}

int fg_tp_n_threads(const fg_threadpool *tp) { return tp->n_threads; }

void fg_tp_run(fg_threadpool *tp, fg_tp_fn fn, void *arg, int n_jobs_hint) {
    int nth = tp->n_threads;
    if (nth <= 1 || n_jobs_hint == 1) {
        fn(arg, 0, 1);
        return;
    }
    tp->fn = fn;
    tp->arg = arg;
    atomic_store_explicit(&tp->n_pending, nth - 1, memory_order_relaxed);
    pthread_mutex_lock(&tp->mu);
    atomic_fetch_add_explicit(&tp->gen, 1, memory_order_release);
    pthread_cond_broadcast(&tp->cv_work);
    pthread_mutex_unlock(&tp->mu);

    fn(arg, 0, nth);

    for (int i = 0; i < SPIN_ITERS; i++) {
        if (atomic_load_explicit(&tp->n_pending, memory_order_acquire) == 0)
            return;
        if ((i + 1) % SPIN_YIELD_EVERY == 0)
            sched_yield();
        else
            CPU_RELAX();
    }
    pthread_mutex_lock(&tp->mu);
    while (atomic_load_explicit(&tp->n_pending, memory_order_acquire) != 0)
        pthread_cond_wait(&tp->cv_done, &tp->mu);
    pthread_mutex_unlock(&tp->mu);
}
