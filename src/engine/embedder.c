// embedder.c - the embedding request queue (forge/embedder.h, issue 14): clients' requests in
// a FIFO; one thread packs their inputs, oldest request first and in input order, into steps of
// up to max_batch_tokens tokens and max_seqs sequences, runs each step (fg_model_embed_submit /
// wait: the model's forward pass ends with pooling and normalisation on the device), copies the
// vectors into their requests and calls each request back once its last input is in. A request
// may span several steps and a step several requests. Not here: tokenization, truncation and
// the HTTP side (src/server/api_embeddings.c).
// Threads: callers submit and cancel under the mutex; the thread owns the model and the steps.
#include "forge/embedder.h"

#include "base/status.h"
#include "base/util.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

typedef struct ereq ereq;
struct ereq {
    uint64_t id;
    int32_t n;            // inputs
    int32_t *tok;         // all inputs' tokens, one after the other
    int64_t *off;         // [n + 1] input i is tok[off[i] .. off[i+1])
    float *out;           // [n][n_embd]
    int32_t next;         // first input not yet put in a step
    int32_t done;         // inputs whose vectors are in
    bool cancelled;
    bool started;
    double t_submit, t_start;
    fg_embed_fn fn;
    void *user;
    ereq *link;
};

struct fg_embedder {
    fg_model *m;
    int32_t n_embd, n_vocab, limit, max_tokens, max_seqs, queue_cap;
    pthread_t thread;
    bool thread_started;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool stop;
    fg_status sticky;          // a device fault: every later submit fails
    ereq *head, *tail;         // FIFO (mu)
    int32_t queued_inputs;     // inputs of queued requests not yet done (mu)
    uint64_t next_id;
    fg_embedder_stats st;      // mu
    // the step being built (thread only)
    const int32_t **b_tok;     // [max_seqs]
    int32_t *b_len;            // [max_seqs]
    ereq **b_req;              // [max_seqs] request of each sequence
    int32_t *b_idx;            // [max_seqs] its input index
};

static void req_free(ereq *r) {
    if (!r)
        return;
    free(r->tok);
    free(r->off);
    free(r->out);
    free(r);
}

// Unlinks r (mu held).
static void unlink_req(fg_embedder *e, ereq *r) {
    ereq **pp = &e->head, *prev = NULL;
    while (*pp && *pp != r) {
        prev = *pp;
        pp = &(*pp)->link;
    }
    if (!*pp)
        return;
    *pp = r->link;
    if (e->tail == r)
        e->tail = prev;
    r->link = NULL;
    e->queued_inputs -= r->n - r->done;
    e->st.queued_requests--;
}

// Calls r back and frees it (no lock held).
static void finish(fg_embedder *e, ereq *r, fg_status st, const char *msg) {
    fg_embed_result res;
    memset(&res, 0, sizeof res);
    res.id = r->id;
    res.status = st;
    res.error = st == FG_OK ? NULL : msg ? msg : "failed";
    res.n_inputs = r->n;
    res.n_embd = e->n_embd;
    res.vectors = st == FG_OK ? r->out : NULL;
    res.n_tokens = r->off[r->n];
    double now = fg_time_s();
    res.t_queue_s = (r->started ? r->t_start : now) - r->t_submit;
    res.t_total_s = now - r->t_submit;
    pthread_mutex_lock(&e->mu);
    if (st == FG_OK) {
        e->st.finished++;
        e->st.inputs += (uint64_t)r->n;
        e->st.tokens += (uint64_t)res.n_tokens;
    } else if (st == FG_ERR_CANCELLED) {
        e->st.cancelled++;
    } else {
        e->st.failed++;
    }
    pthread_mutex_unlock(&e->mu);
    r->fn(r->user, &res);
    req_free(r);
}

// Takes the queue's cancelled requests off it (mu held); returns them as a list.
static ereq *take_cancelled(fg_embedder *e) {
    ereq *out = NULL;
    for (ereq *r = e->head, *nx; r; r = nx) {
        nx = r->link;
        if (r->cancelled) {
            unlink_req(e, r);
            r->link = out;
            out = r;
        }
    }
    return out;
}

// Fills the step from the queue (mu held): inputs in order until the token or sequence budget.
static int32_t build_step(fg_embedder *e) {
    int32_t ns = 0, nt = 0;
    double now = fg_time_s();
    for (ereq *r = e->head; r && ns < e->max_seqs; r = r->link) {
        while (r->next < r->n && ns < e->max_seqs) {
            int32_t len = (int32_t)(r->off[r->next + 1] - r->off[r->next]);
            if (nt + len > e->max_tokens)
                return ns;
            e->b_tok[ns] = r->tok + r->off[r->next];
            e->b_len[ns] = len;
            e->b_req[ns] = r;
            e->b_idx[ns] = r->next;
            if (!r->started) {
                r->started = true;
                r->t_start = now;
            }
            r->next++;
            nt += len;
            ns++;
        }
        if (r->next < r->n)
            return ns; // inputs stay in order: a later request waits for this one's
    }
    return ns;
}

static void *embed_main(void *arg) {
    fg_embedder *e = arg;
    for (;;) {
        pthread_mutex_lock(&e->mu);
        while (!e->stop && !e->head)
            pthread_cond_wait(&e->cv, &e->mu);
        ereq *gone = take_cancelled(e);
        if (e->stop) {
            // what is left is cancelled
            while (e->head) {
                ereq *r = e->head;
                unlink_req(e, r);
                r->link = gone;
                gone = r;
            }
        }
        int32_t ns = e->stop ? 0 : build_step(e);
        bool stop = e->stop;
        pthread_mutex_unlock(&e->mu);
        for (ereq *r = gone, *nx; r; r = nx) {
            nx = r->link;
            finish(e, r, FG_ERR_CANCELLED, stop ? "the server is shutting down" : "cancelled");
        }
        if (stop)
            break;
        if (ns == 0)
            continue;
        fg_embed_batch b = {.n_seqs = ns, .tokens = e->b_tok, .n_tokens = e->b_len};
        const float *vec = NULL;
        fg_status st = fg_model_embed_submit(e->m, &b);
        if (st == FG_OK)
            st = fg_model_embed_wait(e->m, &vec, NULL);
        char msg[512];
        if (st != FG_OK)
            snprintf(msg, sizeof msg, "%s", fg_last_error());
        // results into their requests; requests now complete (or failed) leave the queue
        ereq *ended = NULL;
        pthread_mutex_lock(&e->mu);
        e->st.steps++;
        if (st == FG_ERR_DEVICE)
            e->sticky = st;
        for (int32_t i = 0; i < ns; i++) {
            ereq *r = e->b_req[i];
            if (st == FG_OK) {
                memcpy(r->out + (size_t)e->b_idx[i] * (size_t)e->n_embd, vec + (size_t)i * (size_t)e->n_embd,
                       (size_t)e->n_embd * sizeof(float));
                r->done++;
                e->queued_inputs--;
            }
            bool last_of_req = i + 1 == ns || e->b_req[i + 1] != r;
            bool complete = st == FG_OK ? r->done == r->n : true;
            if (last_of_req && complete) {
                unlink_req(e, r);
                r->link = ended;
                ended = r;
            }
        }
        if (st == FG_ERR_DEVICE) // nothing else can run: fail the rest too
            while (e->head) {
                ereq *r = e->head;
                unlink_req(e, r);
                r->link = ended;
                ended = r;
            }
        pthread_mutex_unlock(&e->mu);
        for (ereq *r = ended, *nx; r; r = nx) {
            nx = r->link;
            finish(e, r, st, msg);
        }
    }
    return NULL;
}

fg_status fg_embedder_create(fg_model *m, const fg_embedder_opts *opts, fg_embedder **out) {
    if (!m || !out)
        return FG_FAIL(FG_ERR_INVALID_ARG, "embedder: model and out are required");
    const fg_model_info *mi = fg_model_get_info(m);
    if (mi->pooling == 0)
        return FG_FAIL(FG_ERR_UNSUPPORTED, "embedder: %s.pooling_type is absent or 0 (none): the model gives no "
                                           "vector per input", mi->arch);
    fg_embedder *e = fg_xcalloc(1, sizeof *e);
    e->m = m;
    e->n_embd = mi->n_embd;
    e->n_vocab = mi->n_vocab;
    e->limit = mi->max_embed_tokens;
    e->max_tokens = mi->max_batch_tokens;
    e->max_seqs = mi->max_seqs;
    e->queue_cap = opts && opts->queue_cap > 0 ? opts->queue_cap : 65536;
    e->next_id = 1;
    e->sticky = FG_OK;
    pthread_mutex_init(&e->mu, NULL);
    pthread_cond_init(&e->cv, NULL);
    e->b_tok = fg_xcalloc((size_t)e->max_seqs, sizeof *e->b_tok);
    e->b_len = fg_xcalloc((size_t)e->max_seqs, sizeof *e->b_len);
    e->b_req = fg_xcalloc((size_t)e->max_seqs, sizeof *e->b_req);
    e->b_idx = fg_xcalloc((size_t)e->max_seqs, sizeof *e->b_idx);
    if (pthread_create(&e->thread, NULL, embed_main, e) != 0) {
        fg_embedder_destroy(e);
        return FG_FAIL(FG_ERR_NOMEM, "embedder: cannot start its thread");
    }
    e->thread_started = true;
    *out = e;
    return FG_OK;
}

void fg_embedder_destroy(fg_embedder *e) {
    if (!e)
        return;
    if (e->thread_started) {
        pthread_mutex_lock(&e->mu);
        e->stop = true;
        pthread_cond_broadcast(&e->cv);
        pthread_mutex_unlock(&e->mu);
        pthread_join(e->thread, NULL);
    }
    while (e->head) { // (the thread never started)
        ereq *r = e->head;
        e->head = r->link;
        req_free(r);
    }
    pthread_mutex_destroy(&e->mu);
    pthread_cond_destroy(&e->cv);
    free(e->b_tok);
    free(e->b_len);
    free(e->b_req);
    free(e->b_idx);
    free(e);
}

fg_status fg_embedder_submit(fg_embedder *e, const int32_t *const *tokens, const int32_t *n_tokens,
                             int32_t n_inputs, fg_embed_fn fn, void *user, uint64_t *id) {
    if (!e || !fn || n_inputs < 1 || !tokens || !n_tokens)
        return FG_FAIL(FG_ERR_INVALID_ARG, "embedder: a callback and at least one input are required");
    if (n_inputs > e->queue_cap)
        return FG_FAIL(FG_ERR_INVALID_ARG, "embedder: %d inputs in one request, the queue holds %d", n_inputs,
                       e->queue_cap);
    int64_t total = 0;
    for (int32_t i = 0; i < n_inputs; i++) {
        if (n_tokens[i] < 1 || !tokens[i])
            return FG_FAIL(FG_ERR_INVALID_ARG, "embedder: input %d has no tokens", i);
        if (n_tokens[i] > e->limit)
            return FG_FAIL(FG_ERR_INVALID_ARG, "embedder: input %d has %d tokens, the model takes at most %d", i,
                           n_tokens[i], e->limit);
        for (int32_t k = 0; k < n_tokens[i]; k++)
            if (tokens[i][k] < 0 || tokens[i][k] >= e->n_vocab)
                return FG_FAIL(FG_ERR_INVALID_ARG, "embedder: input %d: token %d is id %d, outside [0, %d)", i, k,
                               tokens[i][k], e->n_vocab);
        total += n_tokens[i];
    }
    ereq *r = calloc(1, sizeof *r);
    if (r) {
        r->tok = malloc((size_t)total * sizeof *r->tok);
        r->off = malloc(((size_t)n_inputs + 1) * sizeof *r->off);
        r->out = malloc((size_t)n_inputs * (size_t)e->n_embd * sizeof *r->out);
    }
    if (!r || !r->tok || !r->off || !r->out) { // request-sized: no abort on failure
        req_free(r);
        return FG_FAIL(FG_ERR_NOMEM, "embedder: out of memory for %d inputs", n_inputs);
    }
    r->n = n_inputs;
    r->off[0] = 0;
    for (int32_t i = 0; i < n_inputs; i++) {
        memcpy(r->tok + r->off[i], tokens[i], (size_t)n_tokens[i] * sizeof *r->tok);
        r->off[i + 1] = r->off[i] + n_tokens[i];
    }
    r->fn = fn;
    r->user = user;
    r->t_submit = fg_time_s();
    pthread_mutex_lock(&e->mu);
    fg_status st = FG_OK;
    if (e->stop)
        st = FG_FAIL(FG_ERR_CANCELLED, "embedder: shutting down");
    else if (e->sticky != FG_OK)
        st = FG_FAIL(FG_ERR_DEVICE, "embedder: a device error stopped the model");
    else if (e->queued_inputs + n_inputs > e->queue_cap)
        st = FG_FAIL(FG_ERR_CAPACITY, "embedder: queue full (%d inputs waiting, capacity %d)", e->queued_inputs,
                     e->queue_cap);
    if (st != FG_OK) {
        pthread_mutex_unlock(&e->mu);
        req_free(r);
        return st;
    }
    r->id = e->next_id++;
    if (e->tail)
        e->tail->link = r;
    else
        e->head = r;
    e->tail = r;
    e->queued_inputs += n_inputs;
    e->st.requests++;
    e->st.queued_requests++;
    if (id)
        *id = r->id;
    pthread_cond_signal(&e->cv);
    pthread_mutex_unlock(&e->mu);
    return FG_OK;
}

fg_status fg_embedder_cancel(fg_embedder *e, uint64_t id) {
    if (!e)
        return FG_FAIL(FG_ERR_INVALID_ARG, "embedder: NULL");
    pthread_mutex_lock(&e->mu);
    bool issued = id >= 1 && id < e->next_id;
    for (ereq *r = e->head; r; r = r->link)
        if (r->id == id) {
            r->cancelled = true;
            pthread_cond_signal(&e->cv);
            break;
        }
    pthread_mutex_unlock(&e->mu);
    if (!issued)
        return FG_FAIL(FG_ERR_INVALID_ARG, "embedder: unknown request id %llu", (unsigned long long)id);
    return FG_OK;
}

void fg_embedder_get_stats(fg_embedder *e, fg_embedder_stats *out) {
    pthread_mutex_lock(&e->mu);
    *out = e->st;
    out->queued_inputs = e->queued_inputs;
    pthread_mutex_unlock(&e->mu);
}
