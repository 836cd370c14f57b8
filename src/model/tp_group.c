// tp_group.c - the in-process tensor-parallel group (fg_model_opts.tp_size > 1 without a
// communicator): rank 0 is the model fg_model_load returns and runs on the caller's thread (the
// engine's scheduler); ranks 1..N-1 are worker threads, each with its own backend (the same
// kind, device + rank), communicator, model shard and KV stores. Rank 0 broadcasts every
// command - a step's batch, KV store create / copy / destroy, quit - through one mailbox; each
// worker runs it on its shard and replies. The batch is posted before rank 0 enqueues its own
// step, so all ranks enqueue at once.
// Nothing waits without a deadline once loaded: replies wait at most tp_timeout_s, and so do
// the collectives (comm.h). The first failure of any rank stops the group: its message is kept,
// every communicator is aborted (no rank waits on a dead peer), and every later call returns
// FG_ERR_DEVICE naming that rank - which the engine turns into failed requests and a dead
// engine, a clean error rather than a hang.
// Not here: the sharded math (model_load.c slices, forward.c all-reduces), the communicators
// (src/backend/comm.h). Who calls it: model_load.c, forward.c, kv_store.c (rank 0's thread).
#include "model/model_internal.h"

#include "backend/comm.h"
#include "base/status.h"
#include "base/util.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAX_KV 16 // KV stores a worker holds at once

typedef enum cmd_kind { CMD_NONE, CMD_STEP, CMD_KV_CREATE, CMD_KV_DESTROY, CMD_KV_COPY, CMD_QUIT } cmd_kind;

typedef struct worker {
    struct fg_tp_group *g;
    int32_t rank;
    pthread_t thread;
    bool started;
    // replies (g->mu)
    bool loaded;         // the load returned (st says how)
    bool exited;         // the thread is done with the group's state
    uint64_t done;       // the last command it finished
    fg_status st;        // and its result
    char msg[512];       // the message of a failed load or KV command
    fg_kv_store *kv_out; // CMD_KV_CREATE: the store made
    // its own (the worker's thread only)
    fg_model *m;
    fg_kv_store *kvs[MAX_KV];
} worker;

struct fg_tp_group {
    int32_t n;
    double timeout_s;
    char *path;
    fg_model_opts opts;        // the workers' load options (rank and communicator set per rank)
    fg_backend *be[FG_TP_MAX]; // [0] borrowed (rank 0's), the others owned
    fg_comm *comm[FG_TP_MAX];
    worker w[FG_TP_MAX];       // [1..n-1]

    pthread_mutex_t mu;
    pthread_cond_t cv_cmd;     // workers: a new command
    pthread_cond_t cv_done;    // rank 0: a reply (CLOCK_MONOTONIC)
    uint64_t seq;              // commands posted
    cmd_kind kind;
    // the command's arguments: written by rank 0 while every worker is idle, before seq moves
    int32_t max_tokens, max_seqs, pages_stride;
    int32_t n_tokens, n_seqs;
    int32_t *tokens, *pos, *seq_ids; // [max_tokens]
    bool *want;                      // [max_tokens]
    bool has_want;
    int32_t *n_kv;                   // [max_seqs]
    int32_t *pages;                  // [max_seqs][pages_stride]
    const int32_t **ptabs;           // [max_seqs] rows of pages
    fg_kv_store *kv[FG_TP_MAX];      // the command's store on each rank
    int32_t kv_n_pages, kv_page_size, copy_dst, copy_src;
    uint32_t kv_type;
    int64_t step_no;                 // the step's number (0-based)
    int64_t steps_posted;

    // the first failure (g->mu)
    bool dead;
    int32_t fail_rank;
    char fail_msg[640];
    // a fault to inject (tests, fg_tp_debug_fault)
    int32_t fault_rank;
    int64_t fault_step;
    int fault_mode;
    double fault_seconds;
};

static void deadline_in(struct timespec *dl, double s) {
    clock_gettime(CLOCK_MONOTONIC, dl);
    double whole = (double)(int64_t)s;
    dl->tv_sec += (time_t)whole;
    dl->tv_nsec += (long)((s - whole) * 1e9);
    if (dl->tv_nsec >= 1000000000L) {
        dl->tv_sec++;
        dl->tv_nsec -= 1000000000L;
    }
}

// Records the group's first failure and aborts every communicator, so that no rank keeps
// waiting on the one that failed (later failures, caused by the abort, are not recorded).
static void record_failure(fg_tp_group *g, int32_t rank, const char *msg) {
    pthread_mutex_lock(&g->mu);
    if (!g->dead) {
        g->dead = true;
        g->fail_rank = rank;
        snprintf(g->fail_msg, sizeof g->fail_msg, "%s", msg);
    }
    pthread_cond_broadcast(&g->cv_done);
    pthread_mutex_unlock(&g->mu);
    for (int32_t r = 0; r < g->n; r++)
        fg_comm_abort(g->comm[r]);
}

static bool is_dead(fg_tp_group *g) {
    pthread_mutex_lock(&g->mu);
    bool d = g->dead;
    pthread_mutex_unlock(&g->mu);
    return d;
}

static fg_status dead_error(fg_tp_group *g) {
    pthread_mutex_lock(&g->mu);
    fg_status st = FG_FAIL(FG_ERR_DEVICE, "tensor parallel (%d ranks): the group is stopped: %s", g->n, g->fail_msg);
    pthread_mutex_unlock(&g->mu);
    return st;
}

static uint64_t post(fg_tp_group *g, cmd_kind kind) {
    pthread_mutex_lock(&g->mu);
    g->kind = kind;
    uint64_t seq = ++g->seq;
    pthread_cond_broadcast(&g->cv_cmd);
    pthread_mutex_unlock(&g->mu);
    return seq;
}

// Waits until every worker has finished command seq (or exited). A worker late past the
// deadline is a failure of the group (naming it, and what it was doing).
static void wait_replies(fg_tp_group *g, uint64_t seq, const char *what) {
    struct timespec dl;
    deadline_in(&dl, g->timeout_s);
    pthread_mutex_lock(&g->mu);
    for (;;) {
        int32_t late = -1;
        for (int32_t r = 1; r < g->n && late < 0; r++)
            if (g->w[r].done < seq && !g->w[r].exited)
                late = r;
        if (late < 0)
            break;
        if (pthread_cond_timedwait(&g->cv_done, &g->mu, &dl) == ETIMEDOUT) {
            pthread_mutex_unlock(&g->mu);
            char msg[160];
            snprintf(msg, sizeof msg, "rank %d did not finish %s within %g s (hung or stopped)", late, what,
                     g->timeout_s);
            record_failure(g, late, msg);
            return;
        }
    }
    pthread_mutex_unlock(&g->mu);
}

// ---- the worker

static void reply(fg_tp_group *g, worker *w, uint64_t seq, fg_status st) {
    pthread_mutex_lock(&g->mu);
    w->done = seq;
    w->st = st;
    if (st != FG_OK)
        snprintf(w->msg, sizeof w->msg, "%s", fg_last_error());
    pthread_cond_broadcast(&g->cv_done);
    pthread_mutex_unlock(&g->mu);
}

static fg_status run_step(fg_tp_group *g, worker *w) {
    const int32_t r = w->rank;
    pthread_mutex_lock(&g->mu);
    bool fault = g->fault_rank == r && g->fault_step == g->step_no;
    int mode = g->fault_mode;
    double secs = g->fault_seconds;
    bool dead = g->dead;
    pthread_mutex_unlock(&g->mu);
    if (dead)
        return dead_error(g);
    if (fault && mode == 1) {
        fg_status st = FG_FAIL(FG_ERR_DEVICE, "rank %d: injected failure at step %lld (test)", r, (long long)g->step_no);
        record_failure(g, r, fg_last_error());
        return st;
    }
    if (fault && mode == 2)
        usleep((useconds_t)(secs * 1e6));
    fg_batch b = {
        .n_tokens = g->n_tokens,
        .tokens = g->tokens,
        .pos = g->pos,
        .seq = g->seq_ids,
        .want_logits = g->has_want ? g->want : NULL,
        .n_seqs = g->n_seqs,
        .n_kv = g->n_kv,
        .page_tables = g->ptabs,
    };
    fg_status st = fg_model_submit(w->m, g->kv[r], &b);
    if (st == FG_OK)
        st = fg_model_wait(w->m, NULL, NULL);
    if (st != FG_OK) {
        char msg[512];
        snprintf(msg, sizeof msg, "rank %d: %s", r, fg_last_error());
        record_failure(g, r, msg);
    }
    return st;
}

static fg_status run_command(fg_tp_group *g, worker *w, cmd_kind kind) {
    const int32_t r = w->rank;
    switch (kind) {
    case CMD_STEP:
        return run_step(g, w);
    case CMD_KV_CREATE: {
        int k = 0;
        while (k < MAX_KV && w->kvs[k])
            k++;
        if (k == MAX_KV)
            return FG_FAIL(FG_ERR_CAPACITY, "tensor parallel: more than %d KV stores", MAX_KV);
        fg_kv_store *kv = NULL;
        FG_TRY(fg_kv_store_create(w->m, g->kv_n_pages, g->kv_page_size, g->kv_type, &kv));
        w->kvs[k] = kv;
        pthread_mutex_lock(&g->mu);
        w->kv_out = kv;
        pthread_mutex_unlock(&g->mu);
        return FG_OK;
    }
    case CMD_KV_DESTROY:
        for (int k = 0; k < MAX_KV; k++)
            if (g->kv[r] && w->kvs[k] == g->kv[r])
                w->kvs[k] = NULL;
        fg_kv_store_destroy(g->kv[r]);
        return FG_OK;
    case CMD_KV_COPY:
        return fg_kv_store_copy_page(g->kv[r], g->copy_dst, g->copy_src);
    default:
        return FG_OK;
    }
}

static void *worker_main(void *arg) {
    worker *w = arg;
    fg_tp_group *g = w->g;
    fg_model_opts o = g->opts;
    o.tp_rank = w->rank;
    o.tp_comm = g->comm[w->rank];
    o.progress = false;
    fg_status st = fg_model_load(g->path, g->be[w->rank], &o, &w->m);
    pthread_mutex_lock(&g->mu);
    w->loaded = true;
    w->st = st;
    if (st != FG_OK)
        snprintf(w->msg, sizeof w->msg, "%s", fg_last_error());
    pthread_cond_broadcast(&g->cv_done);
    pthread_mutex_unlock(&g->mu);
    uint64_t seen = 0;
    while (st == FG_OK) {
        pthread_mutex_lock(&g->mu);
        while (g->seq == seen)
            pthread_cond_wait(&g->cv_cmd, &g->mu);
        seen = g->seq;
        cmd_kind kind = g->kind;
        pthread_mutex_unlock(&g->mu);
        if (kind == CMD_QUIT)
            break;
        reply(g, w, seen, run_command(g, w, kind));
    }
    // teardown on its own thread (its backend's device is current here)
    for (int k = 0; k < MAX_KV; k++)
        fg_kv_store_destroy(w->kvs[k]);
    fg_model_destroy(w->m);
    w->m = NULL;
    pthread_mutex_lock(&g->mu);
    w->exited = true;
    w->done = seen;
    pthread_cond_broadcast(&g->cv_done);
    pthread_mutex_unlock(&g->mu);
    return NULL;
}

// ---- rank 0

void fg_tp_group_destroy(fg_tp_group *g) {
    if (!g)
        return;
    post(g, CMD_QUIT);
    // every started worker exits (a stalled one gets the reply deadline, then is left behind
    // together with the group's memory: freeing it under a running thread would be worse)
    struct timespec dl;
    deadline_in(&dl, g->timeout_s);
    int32_t stuck = -1;
    pthread_mutex_lock(&g->mu);
    for (int32_t r = 1; r < g->n; r++) {
        while (g->w[r].started && !g->w[r].exited) {
            if (pthread_cond_timedwait(&g->cv_done, &g->mu, &dl) == ETIMEDOUT) {
                stuck = r;
                break;
            }
        }
        if (stuck >= 0)
            break;
    }
    pthread_mutex_unlock(&g->mu);
    if (stuck >= 0) {
        fprintf(stderr, "forge: tensor parallel: rank %d did not stop within %g s; leaving it behind\n", stuck,
                g->timeout_s);
        return;
    }
    for (int32_t r = 1; r < g->n; r++)
        if (g->w[r].started)
            pthread_join(g->w[r].thread, NULL);
    for (int32_t r = 0; r < g->n; r++)
        fg_comm_destroy(g->comm[r]);
    for (int32_t r = 1; r < g->n; r++)
        fg_backend_destroy(g->be[r]);
    free(g->tokens);
    free(g->pos);
    free(g->seq_ids);
    free(g->want);
    free(g->n_kv);
    free(g->pages);
    free(g->ptabs);
    free(g->path);
    pthread_cond_destroy(&g->cv_cmd);
    pthread_cond_destroy(&g->cv_done);
    pthread_mutex_destroy(&g->mu);
    free(g);
}

fg_status fg_tp_group_load(const char *path, fg_backend *be, const fg_model_opts *o, fg_model **out) {
    const int32_t n = o->tp_size;
    if (n < 2 || n > FG_TP_MAX)
        return FG_FAIL(FG_ERR_INVALID_ARG, "%s: tensor-parallel size %d (2 to %d)", path, n, FG_TP_MAX);
    fg_tp_group *g = fg_xcalloc(1, sizeof *g);
    g->n = n;
    g->timeout_s = o->tp_timeout_s > 0 ? o->tp_timeout_s : FG_TP_DEFAULT_TIMEOUT_S;
    g->path = fg_xstrdup(path);
    g->opts = *o;
    g->opts.tp_backend = NULL; // the caller's pointer is not kept
    g->opts.tp_timeout_s = g->timeout_s;
    g->fault_rank = -1;
    pthread_mutex_init(&g->mu, NULL);
    pthread_cond_init(&g->cv_cmd, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&g->cv_done, &ca);
    pthread_condattr_destroy(&ca);

    fg_model *m = NULL;
    fg_status st = FG_OK;
    char msg[768] = "";
    // the workers' backends: rank 0's kind, rank r on device + r
    fg_backend_opts bo = {0};
    if (o->tp_backend)
        bo = *o->tp_backend;
    const int32_t dev0 = bo.device;
    g->be[0] = be;
    for (int32_t r = 1; r < n && st == FG_OK; r++) {
        bo.device = dev0 + r;
        if ((st = fg_backend_create(be->ops->name, &bo, &g->be[r])) != FG_OK)
            snprintf(msg, sizeof msg, "%s: tensor parallel: rank %d's %s backend (device %d): %s", path, r,
                     be->ops->name, bo.device, fg_last_error());
    }
    if (st == FG_OK && (st = fg_comm_create_group(g->be, n, g->timeout_s, g->comm)) != FG_OK)
        snprintf(msg, sizeof msg, "%s: tensor parallel (%d ranks): %s", path, n, fg_last_error());
    for (int32_t r = 1; r < n && st == FG_OK; r++) {
        g->w[r].g = g;
        g->w[r].rank = r;
        if (pthread_create(&g->w[r].thread, NULL, worker_main, &g->w[r]) != 0) {
            st = FG_ERR_NOMEM;
            snprintf(msg, sizeof msg, "%s: tensor parallel: cannot start rank %d's thread", path, r);
        } else {
            g->w[r].started = true;
        }
    }
    // rank 0 loads its shard on this thread while the workers load theirs
    if (st == FG_OK) {
        fg_model_opts o0 = *o;
        o0.tp_rank = 0;
        o0.tp_comm = g->comm[0];
        if ((st = fg_model_load(path, be, &o0, &m)) != FG_OK)
            snprintf(msg, sizeof msg, "%s", fg_last_error());
    }
    // the workers' loads (no deadline: a load reads the file and uploads, it waits on no peer)
    pthread_mutex_lock(&g->mu);
    for (int32_t r = 1; r < n; r++) {
        while (g->w[r].started && !g->w[r].loaded)
            pthread_cond_wait(&g->cv_done, &g->mu);
        if (st == FG_OK && g->w[r].started && g->w[r].st != FG_OK) {
            st = g->w[r].st;
            snprintf(msg, sizeof msg, "tensor parallel: rank %d: %s", r, g->w[r].msg);
        }
    }
    pthread_mutex_unlock(&g->mu);
    if (st == FG_OK) {
        // the step's arguments, sized for the largest step (page tables: at KV store creation)
        g->max_tokens = m->max_batch_tokens;
        g->max_seqs = m->max_seqs;
        size_t T = (size_t)g->max_tokens, S = (size_t)g->max_seqs;
        g->tokens = malloc(T * sizeof *g->tokens);
        g->pos = malloc(T * sizeof *g->pos);
        g->seq_ids = malloc(T * sizeof *g->seq_ids);
        g->want = malloc(T * sizeof *g->want);
        g->n_kv = malloc(S * sizeof *g->n_kv);
        g->ptabs = malloc(S * sizeof *g->ptabs);
        if (!g->tokens || !g->pos || !g->seq_ids || !g->want || !g->n_kv || !g->ptabs) {
            st = FG_ERR_NOMEM;
            snprintf(msg, sizeof msg, "%s: tensor parallel: out of memory for the step arguments", path);
        }
    }
    if (st != FG_OK) {
        fg_model_destroy(m);
        fg_tp_group_destroy(g);
        return FG_FAIL(st, "%s", msg);
    }
    m->tp.group = g;
    *out = m;
    return FG_OK;
}

fg_status fg_tp_group_post_step(fg_tp_group *g, fg_kv_store *kv, const fg_batch *b) {
    if (is_dead(g))
        return dead_error(g);
    // the batch was validated by rank 0 (make_step): it fits every array here
    FG_ASSERT(kv->tp_peer && b->n_tokens <= g->max_tokens && b->n_seqs <= g->max_seqs &&
              kv->view.n_pages <= g->pages_stride);
    size_t nt = (size_t)b->n_tokens;
    g->n_tokens = b->n_tokens;
    g->n_seqs = b->n_seqs;
    memcpy(g->tokens, b->tokens, nt * sizeof *g->tokens);
    memcpy(g->pos, b->pos, nt * sizeof *g->pos);
    memcpy(g->seq_ids, b->seq, nt * sizeof *g->seq_ids);
    g->has_want = b->want_logits != NULL;
    if (g->has_want)
        memcpy(g->want, b->want_logits, nt * sizeof *g->want);
    memcpy(g->n_kv, b->n_kv, (size_t)b->n_seqs * sizeof *g->n_kv);
    const int32_t ps = kv->view.page_size;
    for (int32_t s = 0; s < b->n_seqs; s++) {
        int32_t *row = g->pages + (size_t)s * (size_t)g->pages_stride;
        memcpy(row, b->page_tables[s], (size_t)((b->n_kv[s] + ps - 1) / ps) * sizeof *row);
        g->ptabs[s] = row;
    }
    for (int32_t r = 1; r < g->n; r++)
        g->kv[r] = kv->tp_peer[r];
    g->step_no = g->steps_posted++;
    post(g, CMD_STEP);
    return FG_OK;
}

fg_status fg_tp_group_wait_step(fg_tp_group *g, fg_status st) {
    if (st != FG_OK) {
        char msg[512];
        snprintf(msg, sizeof msg, "rank 0: %s", fg_last_error());
        record_failure(g, 0, msg); // (kept only when it is the first: a worker's comes first)
    }
    pthread_mutex_lock(&g->mu);
    uint64_t seq = g->seq;
    pthread_mutex_unlock(&g->mu);
    wait_replies(g, seq, "its step");
    return is_dead(g) ? dead_error(g) : FG_OK;
}

// The workers' results of a KV command: the first failure, naming the rank.
static fg_status kv_results(fg_tp_group *g) {
    fg_status st = FG_OK;
    pthread_mutex_lock(&g->mu);
    for (int32_t r = 1; r < g->n && st == FG_OK; r++)
        if (g->w[r].st != FG_OK)
            st = FG_FAIL(g->w[r].st, "tensor parallel: rank %d: %s", r, g->w[r].msg);
    pthread_mutex_unlock(&g->mu);
    if (st == FG_OK && is_dead(g))
        st = dead_error(g);
    return st;
}

fg_status fg_tp_group_kv_create(fg_tp_group *g, fg_kv_store *kv, int32_t n_pages, int32_t page_size,
                                uint32_t kv_type) {
    if (is_dead(g))
        return dead_error(g);
    if (n_pages > g->pages_stride) { // the step's page tables: rows long enough for any sequence
        size_t n = 0;
        if (!fg_mul_size((size_t)g->max_seqs, (size_t)n_pages, &n))
            return FG_FAIL(FG_ERR_INVALID_ARG, "tensor parallel: %d pages overflow", n_pages);
        int32_t *p = realloc(g->pages, n * sizeof *p);
        if (!p)
            return FG_FAIL(FG_ERR_NOMEM, "tensor parallel: out of memory for page tables (%zu entries)", n);
        g->pages = p;
        g->pages_stride = n_pages;
    }
    kv->tp_peer = calloc((size_t)g->n, sizeof *kv->tp_peer);
    if (!kv->tp_peer)
        return FG_FAIL(FG_ERR_NOMEM, "tensor parallel: out of memory");
    g->kv_n_pages = n_pages;
    g->kv_page_size = page_size;
    g->kv_type = kv_type;
    pthread_mutex_lock(&g->mu);
    for (int32_t r = 1; r < g->n; r++)
        g->w[r].kv_out = NULL;
    pthread_mutex_unlock(&g->mu);
    wait_replies(g, post(g, CMD_KV_CREATE), "creating its KV store");
    pthread_mutex_lock(&g->mu);
    for (int32_t r = 1; r < g->n; r++)
        kv->tp_peer[r] = g->w[r].st == FG_OK ? g->w[r].kv_out : NULL;
    pthread_mutex_unlock(&g->mu);
    fg_status st = kv_results(g);
    if (st != FG_OK) {
        char msg[768];
        snprintf(msg, sizeof msg, "%s", fg_last_error());
        fg_tp_group_kv_destroy(g, kv); // the ranks that made theirs
        free(kv->tp_peer);
        kv->tp_peer = NULL;
        return FG_FAIL(st, "%s", msg);
    }
    return FG_OK;
}

void fg_tp_group_kv_destroy(fg_tp_group *g, fg_kv_store *kv) {
    if (is_dead(g)) // the workers free theirs when they stop
        return;
    for (int32_t r = 1; r < g->n; r++)
        g->kv[r] = kv->tp_peer[r];
    wait_replies(g, post(g, CMD_KV_DESTROY), "freeing its KV store");
}

fg_status fg_tp_group_kv_copy_page(fg_tp_group *g, fg_kv_store *kv, int32_t dst, int32_t src) {
    if (is_dead(g))
        return dead_error(g);
    for (int32_t r = 1; r < g->n; r++)
        g->kv[r] = kv->tp_peer[r];
    g->copy_dst = dst;
    g->copy_src = src;
    wait_replies(g, post(g, CMD_KV_COPY), "a KV page copy");
    return kv_results(g);
}

void fg_tp_debug_fault(fg_model *m, int32_t rank, int64_t step, int mode, double seconds) {
    fg_tp_group *g = m->tp.group;
    if (!g)
        return;
    pthread_mutex_lock(&g->mu);
    g->fault_rank = rank;
    g->fault_step = step;
    g->fault_mode = mode;
    g->fault_seconds = seconds;
    pthread_mutex_unlock(&g->mu);
}
