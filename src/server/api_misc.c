// api_misc.c - the small endpoints: GET /v1/models, GET /health, GET /metrics (Prometheus text
// format from the engine's statistics and the server's response counters), and
// GET/DELETE /v1/requests/{id} (state of a completion request; cancel it; only for the id's
// owner).
// Not here: completions (api_completions.c).
#include "server/server_internal.h"

#include "base/status.h"
#include "base/util.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum MHD_Result fg_api_models(fg_server *s, struct MHD_Connection *con, srv_conn *c) {
    json_t *m = json_object();
    json_object_set_new(m, "id", json_string(s->model_id));
    json_object_set_new(m, "object", json_string("model"));
    json_object_set_new(m, "created", json_integer((json_int_t)time(NULL)));
    json_object_set_new(m, "owned_by", json_string("forge"));
    json_t *meta = json_object();
    json_object_set_new(meta, "n_ctx", json_integer(s->n_ctx));
    json_object_set_new(meta, "n_vocab", json_integer(s->n_vocab));
    json_object_set_new(meta, "chat_template", json_string(fg_chat_format_name(s->chat_format)));
    json_object_set_new(m, "meta", meta);
    json_t *data = json_array();
    json_array_append_new(data, m);
    json_t *o = json_object();
    json_object_set_new(o, "object", json_string("list"));
    json_object_set_new(o, "data", data);
    return fg_srv_respond_json(s, con, c, 200, o);
}

// POST /apply-template {"messages": [...]}: the rendered prompt and its tokens (llama.cpp has
// the same endpoint); shows exactly what a chat request would feed the model.
enum MHD_Result fg_api_apply_template(fg_server *s, struct MHD_Connection *con, srv_conn *c) {
    fg_api_limits lim = {.model_id = s->model_id, .n_ctx = s->n_ctx, .n_vocab = s->n_vocab};
    fg_api_request api;
    fg_api_error err;
    if (fg_server_parse_request(FG_API_CHAT, c->body ? c->body : "", c->body_len, &lim, &api,
                                &err) != FG_OK)
        return fg_srv_respond_error(s, con, c, &err);
    fg_chat_rendered cr;
    int32_t *ids = NULL;
    size_t n = 0;
    fg_status st = fg_chat_render(s->chat_format, api.messages, api.n_messages,
                                  api.add_generation_prompt, &cr);
    if (st == FG_OK) {
        st = fg_chat_tokenize(s->tok, &cr, &ids, &n);
        if (st != FG_OK)
            fg_chat_rendered_free(&cr);
    }
    fg_api_request_free(&api);
    if (st != FG_OK)
        return fg_srv_error(s, con, c, 400, "invalid_request_error", NULL, "%s", fg_last_error());
    size_t len = 0;
    char *text = fg_chat_rendered_text(&cr, &len);
    fg_chat_rendered_free(&cr);
    json_t *o = json_object();
    json_object_set_new(o, "prompt", fg_srv_json_text(text, len));
    json_object_set_new(o, "format", json_string(fg_chat_format_name(s->chat_format)));
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(arr, json_integer(ids[i]));
    json_object_set_new(o, "tokens", arr);
    free(text);
    free(ids);
    return fg_srv_respond_json(s, con, c, 200, o);
}

enum MHD_Result fg_api_health(fg_server *s, struct MHD_Connection *con, srv_conn *c) {
    int state = atomic_load(&s->state);
    const char *status = "ok";
    int code = 200;
    if (state == SRV_LOADING) {
        status = "loading";
        code = 503;
    } else if (state == SRV_FAILED) {
        status = "error";
        code = 503;
    } else if (state == SRV_STOPPING) {
        status = "shutting_down";
        code = 503;
    } else {
        pthread_rwlock_rdlock(&s->engine_lock);
        if (s->engine) {
            fg_engine_stats st;
            fg_engine_get_stats(s->engine, &st);
            if (st.queue_depth >= s->queue_cap) {
                status = "overloaded";
                code = 503;
            }
        }
        pthread_rwlock_unlock(&s->engine_lock);
    }
    json_t *o = json_object();
    json_object_set_new(o, "status", json_string(status));
    return fg_srv_respond_json(s, con, c, code, o);
}

typedef struct text_buf {
    char *p;
    size_t len, cap;
} text_buf;

static void tb_printf(text_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void tb_printf(text_buf *b, const char *fmt, ...) {
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
        va_end(ap);
        if (n < 0)
            return;
        if ((size_t)n < b->cap - b->len) {
            b->len += (size_t)n;
            return;
        }
        b->cap = b->cap * 2 + (size_t)n + 1;
        b->p = fg_xrealloc(b->p, b->cap);
    }
}

static void histogram(text_buf *b, const char *name, const char *help, const fg_engine_stats *st,
                      const uint64_t *counts, double sum, uint64_t count) {
    tb_printf(b, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    int32_t nb = FG_MIN(st->n_buckets, 16);
    for (int32_t i = 0; i < nb && st->bucket_le; i++)
        tb_printf(b, "%s_bucket{le=\"%g\"} %llu\n", name, st->bucket_le[i],
                  (unsigned long long)counts[i]);
    tb_printf(b, "%s_bucket{le=\"+Inf\"} %llu\n%s_sum %.9g\n%s_count %llu\n", name,
              (unsigned long long)count, name, sum, name, (unsigned long long)count);
}

enum MHD_Result fg_api_metrics(fg_server *s, struct MHD_Connection *con, srv_conn *c) {
    text_buf b = {fg_xmalloc(4096), 0, 4096};
    b.p[0] = '\0';
    tb_printf(&b, "# HELP forge_requests_total HTTP responses by status code (499: the client left before the end).\n"
                  "# TYPE forge_requests_total counter\n");
    for (int i = 0; i < SRV_N_CODES; i++)
        tb_printf(&b, "forge_requests_total{status=\"%d\"} %llu\n", fg_srv_codes[i],
                  (unsigned long long)atomic_load(&s->http_counts[i]));
    tb_printf(&b, "forge_requests_total{status=\"other\"} %llu\n",
              (unsigned long long)atomic_load(&s->http_counts[SRV_N_CODES]));
    tb_printf(&b, "# HELP forge_up 1 when the model is loaded and the server accepts requests.\n"
                  "# TYPE forge_up gauge\nforge_up %d\n",
              atomic_load(&s->state) == SRV_READY);
    tb_printf(&b, "# HELP forge_streams_open Streaming responses in progress.\n"
                  "# TYPE forge_streams_open gauge\nforge_streams_open %d\n",
              atomic_load(&s->n_streams));
    tb_printf(&b, "# HELP forge_http_connections_open Client connections open (gate and workers).\n"
                  "# TYPE forge_http_connections_open gauge\nforge_http_connections_open %d\n",
              fg_srv_gate_n_open(s));
    static const char *const reasons[SRV_N_REFUSE] = {"limit", "evicted", "deadline",
                                                      "malformed", "stopping"};
    tb_printf(&b, "# HELP forge_http_refused_total Connections the gate closed: over the limits "
                  "(limit), to make room (evicted), late (deadline), bad heads (malformed).\n"
                  "# TYPE forge_http_refused_total counter\n");
    for (int i = 0; i < SRV_N_REFUSE; i++)
        tb_printf(&b, "forge_http_refused_total{reason=\"%s\"} %llu\n", reasons[i],
                  (unsigned long long)atomic_load(&s->gate.refused[i]));
    pthread_rwlock_rdlock(&s->engine_lock);
    if (s->engine) {
        fg_engine_stats st;
        memset(&st, 0, sizeof st);
        fg_engine_get_stats(s->engine, &st);
        tb_printf(&b,
                  "# HELP forge_engine_requests_total Engine requests by outcome.\n"
                  "# TYPE forge_engine_requests_total counter\n"
                  "forge_engine_requests_total{result=\"submitted\"} %llu\n"
                  "forge_engine_requests_total{result=\"finished\"} %llu\n"
                  "forge_engine_requests_total{result=\"cancelled\"} %llu\n"
                  "forge_engine_requests_total{result=\"failed\"} %llu\n",
                  (unsigned long long)st.requests_total, (unsigned long long)st.requests_finished,
                  (unsigned long long)st.requests_cancelled,
                  (unsigned long long)st.requests_failed);
        tb_printf(&b,
                  "# HELP forge_tokens_in_total Prompt tokens processed.\n"
                  "# TYPE forge_tokens_in_total counter\nforge_tokens_in_total %llu\n"
                  "# HELP forge_tokens_out_total Tokens generated.\n"
                  "# TYPE forge_tokens_out_total counter\nforge_tokens_out_total %llu\n",
                  (unsigned long long)st.tokens_in, (unsigned long long)st.tokens_out);
        tb_printf(&b,
                  "# HELP forge_queue_depth Requests waiting to be scheduled.\n"
                  "# TYPE forge_queue_depth gauge\nforge_queue_depth %d\n"
                  "# HELP forge_running_sequences Sequences being generated.\n"
                  "# TYPE forge_running_sequences gauge\nforge_running_sequences %d\n"
                  "# HELP forge_kv_pages_used KV cache pages in use.\n"
                  "# TYPE forge_kv_pages_used gauge\nforge_kv_pages_used %d\n"
                  "# HELP forge_kv_pages_free KV cache pages free.\n"
                  "# TYPE forge_kv_pages_free gauge\nforge_kv_pages_free %d\n",
                  st.queue_depth, st.running, st.kv_pages_used, st.kv_pages_free);
        tb_printf(&b,
                  "# HELP forge_steps_total Scheduler steps.\n"
                  "# TYPE forge_steps_total counter\nforge_steps_total %llu\n"
                  "# HELP forge_preemptions_total Sequences preempted for KV pages.\n"
                  "# TYPE forge_preemptions_total counter\nforge_preemptions_total %llu\n",
                  (unsigned long long)st.steps, (unsigned long long)st.preemptions);
        tb_printf(&b,
                  "# HELP forge_prefix_cache_lookups_total Admissions that looked their prompt up in the prefix cache.\n"
                  "# TYPE forge_prefix_cache_lookups_total counter\nforge_prefix_cache_lookups_total %llu\n"
                  "# HELP forge_prefix_cache_hits_total Admissions that mapped at least one cached page.\n"
                  "# TYPE forge_prefix_cache_hits_total counter\nforge_prefix_cache_hits_total %llu\n"
                  "# HELP forge_prefix_cache_hit_tokens_total Tokens whose KV came from the prefix cache.\n"
                  "# TYPE forge_prefix_cache_hit_tokens_total counter\nforge_prefix_cache_hit_tokens_total %llu\n"
                  "# HELP forge_prefix_cache_miss_tokens_total Tokens of admitted requests that were computed.\n"
                  "# TYPE forge_prefix_cache_miss_tokens_total counter\nforge_prefix_cache_miss_tokens_total %llu\n"
                  "# HELP forge_prefix_cache_evictions_total Cached KV pages evicted to make room.\n"
                  "# TYPE forge_prefix_cache_evictions_total counter\nforge_prefix_cache_evictions_total %llu\n"
                  "# HELP forge_prefix_cache_pages KV pages holding a cached prefix.\n"
                  "# TYPE forge_prefix_cache_pages gauge\nforge_prefix_cache_pages %d\n"
                  "# HELP forge_prefix_cache_idle_pages Cached KV pages no sequence holds (evictable; counted in forge_kv_pages_free).\n"
                  "# TYPE forge_prefix_cache_idle_pages gauge\nforge_prefix_cache_idle_pages %d\n",
                  (unsigned long long)st.prefix_lookups, (unsigned long long)st.prefix_hits,
                  (unsigned long long)st.prefix_hit_tokens,
                  (unsigned long long)st.prefix_miss_tokens,
                  (unsigned long long)st.prefix_evictions, st.prefix_pages, st.prefix_idle_pages);
        histogram(&b, "forge_ttft_seconds", "Time to first token.", &st, st.ttft_counts,
                  st.ttft_sum, st.ttft_count);
        histogram(&b, "forge_itl_seconds", "Time between generated tokens.", &st, st.itl_counts,
                  st.itl_sum, st.itl_count);
    }
    if (s->embedder) { // issue 14
        fg_embedder_stats es;
        fg_embedder_get_stats(s->embedder, &es);
        tb_printf(&b,
                  "# HELP forge_embedding_requests_total /v1/embeddings requests by outcome.\n"
                  "# TYPE forge_embedding_requests_total counter\n"
                  "forge_embedding_requests_total{result=\"submitted\"} %llu\n"
                  "forge_embedding_requests_total{result=\"finished\"} %llu\n"
                  "forge_embedding_requests_total{result=\"cancelled\"} %llu\n"
                  "forge_embedding_requests_total{result=\"failed\"} %llu\n"
                  "# HELP forge_embedding_inputs_total Inputs embedded.\n"
                  "# TYPE forge_embedding_inputs_total counter\nforge_embedding_inputs_total %llu\n"
                  "# HELP forge_embedding_tokens_total Tokens of the inputs embedded.\n"
                  "# TYPE forge_embedding_tokens_total counter\nforge_embedding_tokens_total %llu\n"
                  "# HELP forge_embedding_steps_total Forward steps of the embedder.\n"
                  "# TYPE forge_embedding_steps_total counter\nforge_embedding_steps_total %llu\n"
                  "# HELP forge_embedding_queued_inputs Inputs waiting or being embedded.\n"
                  "# TYPE forge_embedding_queued_inputs gauge\nforge_embedding_queued_inputs %d\n",
                  (unsigned long long)es.requests, (unsigned long long)es.finished,
                  (unsigned long long)es.cancelled, (unsigned long long)es.failed, (unsigned long long)es.inputs,
                  (unsigned long long)es.tokens, (unsigned long long)es.steps, es.queued_inputs);
    }
    pthread_rwlock_unlock(&s->engine_lock);
    return fg_srv_respond(s, con, c, 200, "text/plain; version=0.0.4; charset=utf-8", b.p, b.len);
}

static const char *state_name(fg_request_state st) {
    switch (st) {
    case FG_REQ_QUEUED: return "queued";
    case FG_REQ_RUNNING: return "running";
    case FG_REQ_FINISHED: return "finished";
    case FG_REQ_CANCELLED: return "cancelled";
    case FG_REQ_FAILED: return "failed";
    }
    return "unknown";
}

// Aggregate state of a request's choices.
static json_t *request_json(fg_server *s, srv_req *r) {
    uint64_t live[64];
    int32_t n_live = 0, gen = 0;
    bool failed = false, cancelled = false;
    pthread_mutex_lock(&r->mu);
    bool all_done = r->n_done == r->n_choices;
    for (int32_t i = 0; i < r->n_choices; i++) {
        srv_choice *ch = &r->choices[i];
        if (ch->done) {
            gen += ch->n_gen;
            if (ch->status != FG_OK && ch->status != FG_ERR_CANCELLED)
                failed = true;
            if (ch->finish == FG_FINISH_CANCELLED || ch->status == FG_ERR_CANCELLED)
                cancelled = true;
        } else if (ch->submitted && n_live < 64) {
            live[n_live++] = ch->engine_id;
        }
    }
    pthread_mutex_unlock(&r->mu);
    fg_request_state st = FG_REQ_FINISHED;
    if (all_done) { // what the choices' ends say (a DELETE that came too late changes nothing)
        st = failed ? FG_REQ_FAILED : cancelled ? FG_REQ_CANCELLED : FG_REQ_FINISHED;
    } else {
        st = FG_REQ_QUEUED;
        bool any_done = n_live < r->n_choices;
        pthread_rwlock_rdlock(&s->engine_lock);
        for (int32_t i = 0; i < n_live; i++) {
            fg_request_info info;
            if (s->engine && fg_engine_request_info(s->engine, live[i], &info) == FG_OK) {
                gen += info.n_gen_tokens;
                if (info.state == FG_REQ_RUNNING || info.state == FG_REQ_FINISHED ||
                    info.state == FG_REQ_CANCELLED)
                    st = FG_REQ_RUNNING;
            }
        }
        pthread_rwlock_unlock(&s->engine_lock);
        if (any_done)
            st = FG_REQ_RUNNING;
    }
    json_t *o = json_object();
    json_object_set_new(o, "id", json_string(r->id_str));
    json_object_set_new(o, "object", json_string("request"));
    json_object_set_new(o, "state", json_string(state_name(st)));
    json_object_set_new(o, "prompt_tokens", json_integer(r->n_prompt));
    json_object_set_new(o, "completion_tokens", json_integer(gen));
    json_object_set_new(o, "n", json_integer(r->n_choices));
    return o;
}

// The request named by the URL, if it belongs to the caller: the full id (the one a completion
// answered with: unguessable) and, when the server has API keys, the key that made it. Anything
// else is "not found", never "forbidden" (which would confirm that the id exists).
static srv_req *owned_request(fg_server *s, srv_conn *c) {
    const char *id = c->rest ? c->rest : "";
    srv_req *r = fg_srv_registry_find(s, id);
    if (r && s->opts.n_api_keys > 0 && r->key_idx != c->key_idx) {
        fg_srv_req_decref(r);
        r = NULL;
    }
    return r;
}

static enum MHD_Result not_found(fg_server *s, struct MHD_Connection *con, srv_conn *c) {
    return fg_srv_error(s, con, c, 404, "invalid_request_error", "request_not_found",
                        "no request with id '%.100s'%s", c->rest ? c->rest : "",
                        s->opts.n_api_keys > 0 ? " made with this API key" : "");
}

enum MHD_Result fg_api_request_get(fg_server *s, struct MHD_Connection *con, srv_conn *c) {
    srv_req *r = owned_request(s, c);
    if (!r)
        return not_found(s, con, c);
    json_t *o = request_json(s, r);
    fg_srv_req_decref(r);
    return fg_srv_respond_json(s, con, c, 200, o);
}

void fg_srv_wake_waiters_locked(srv_req *r) {
    while (r->waiters) {
        srv_conn *w = r->waiters;
        r->waiters = w->wait_next;
        w->wait_next = NULL;
        if (w->wait_suspended) {
            w->wait_suspended = false;
            atomic_fetch_sub(&r->srv->n_suspended, 1);
            MHD_resume_connection(w->con);
        }
    }
}

// DELETE: cancels, then answers once the engine has confirmed (the connection is suspended
// meanwhile and resumed by the request's last DONE), so the answer shows the final state.
enum MHD_Result fg_api_request_delete(fg_server *s, struct MHD_Connection *con, srv_conn *c) {
    srv_req *r = owned_request(s, c);
    if (!r)
        return not_found(s, con, c);
    pthread_mutex_lock(&r->mu);
    bool running = r->n_done < r->n_choices;
    if (running)
        r->user_cancelled = true;
    pthread_mutex_unlock(&r->mu);
    if (running)
        fg_srv_req_cancel(r);
    c->wait_req = r; // the reference moves to the connection
    return fg_api_request_delete_resume(s, con, c);
}

enum MHD_Result fg_api_request_delete_resume(fg_server *s, struct MHD_Connection *con,
                                             srv_conn *c) {
    srv_req *r = c->wait_req;
    pthread_mutex_lock(&r->mu);
    if (r->n_done < r->n_choices && !atomic_load(&s->http_stopping)) {
        if (!c->wait_suspended) {
            c->wait_next = r->waiters;
            r->waiters = c;
            c->wait_suspended = true;
            atomic_fetch_add(&s->n_suspended, 1);
            MHD_suspend_connection(con);
        }
        pthread_mutex_unlock(&r->mu);
        return MHD_YES;
    }
    pthread_mutex_unlock(&r->mu);
    return fg_srv_respond_json(s, con, c, 200, request_json(s, r));
}
