// threadpool.h - the CPU backend's persistent worker pool: n-1 pthreads created once, plus
// the calling thread as worker 0. fg_tp_run(pool, fn, arg) calls fn(arg, ith, nth) on every
// worker and returns when all are done; workers spin briefly, then sleep on a condvar.
// Not here: how an op splits its work (each op does that from ith/nth). Who calls it: cpu/.
#ifndef FG_BACKEND_CPU_THREADPOOL_H
#define FG_BACKEND_CPU_THREADPOOL_H

#include "forge/status.h"

typedef struct fg_threadpool fg_threadpool;
typedef void (*fg_tp_fn)(void *arg, int ith, int nth);

// n_threads >= 1 (1: no extra thread). Allocation or pthread_create failures: FG_ERR_NOMEM
// with the reason.
fg_status fg_tp_create(int n_threads, fg_threadpool **out);
void fg_tp_destroy(fg_threadpool *tp);
int fg_tp_n_threads(const fg_threadpool *tp);
// Runs fn on all workers (nth = n_threads; fn must accept idle workers), or on the caller
// alone (nth = 1) when n_jobs_hint == 1. Not reentrant.
void fg_tp_run(fg_threadpool *tp, fg_tp_fn fn, void *arg, int n_jobs_hint);

#endif // FG_BACKEND_CPU_THREADPOOL_H
