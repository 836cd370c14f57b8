// sse.c - "stream": true answers: a libmicrohttpd callback response (chunked) whose reader
// takes the request's queued events (fed by the engine callback) and writes one `data: {json}`
// chunk per event, the finish chunks, usage and `data: [DONE]`; with nothing to write it
// suspends the connection until the next event. A client that goes away (peer hang-up seen by
// the sweep, or a failed write) cancels the request; a silent stream gets ": keep-alive"
// comments. Not here: parsing or non-streaming answers (api_completions.c).
#include "server/server_internal.h"

#include "base/util.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

// After SSE_KEEPALIVE_S seconds without an event the stream gets an SSE comment line
// (": keep-alive"): clients ignore it, and a client that left is noticed by the failed write.

static void out_append(srv_req *r, const char *s, size_t n) {
    if (r->out_len + n > r->out_cap) {
        size_t cap = r->out_cap ? r->out_cap : 4096;
        while (cap < r->out_len + n)
            cap *= 2;
        r->out = fg_xrealloc(r->out, cap);
        r->out_cap = cap;
    }
    memcpy(r->out + r->out_len, s, n);
    r->out_len += n;
}

static void out_data(srv_req *r, json_t *j) {
    char *text = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    if (!text)
        return;
    out_append(r, "data: ", 6);
    out_append(r, text, strlen(text));
    out_append(r, "\n\n", 2);
    free(text);
}

static json_t *chunk_new(srv_req *r) {
    json_t *o = json_object();
    json_object_set_new(o, "id", json_string(r->id_str));
    json_object_set_new(o, "object", json_string(r->api.kind == FG_API_COMPLETION
                                                     ? "text_completion"
                                                     : "chat.completion.chunk"));
    json_object_set_new(o, "created", json_integer(r->created));
    json_object_set_new(o, "model", json_string(r->srv->model_id));
    return o;
}

// One chunk with one choice: text delta (may be NULL), logprobs (stolen, may be NULL),
// finish reason (NULL while running), usage (stolen, may be NULL).
static void emit(srv_req *r, int32_t index, const char *text, size_t len, bool role,
                 json_t *logprobs, const char *finish, json_t *usage) {
    json_t *o = chunk_new(r);
    json_t *c = json_object();
    json_t *t = text ? fg_srv_json_text(text, len) : NULL;
    if (r->api.kind == FG_API_COMPLETION) {
        json_object_set_new(c, "text", t ? t : json_string(""));
        json_object_set_new(c, "index", json_integer(index));
        json_object_set_new(c, "logprobs", logprobs ? logprobs : json_null());
    } else {
        json_object_set_new(c, "index", json_integer(index));
        json_t *d = json_object();
        if (role)
            json_object_set_new(d, "role", json_string("assistant"));
        if (t)
            json_object_set_new(d, "content", t);
        json_object_set_new(c, "delta", d);
        if (logprobs) {
            json_t *lp = json_object();
            json_object_set_new(lp, "content", logprobs);
            json_object_set_new(c, "logprobs", lp);
        } else {
            json_object_set_new(c, "logprobs", json_null());
        }
    }
    json_object_set_new(c, "finish_reason", finish ? json_string(finish) : json_null());
    json_t *choices = json_array();
    json_array_append_new(choices, c);
    json_object_set_new(o, "choices", choices);
    if (usage)
        json_object_set_new(o, "usage", usage);
    else if (r->api.include_usage)
        json_object_set_new(o, "usage", json_null());
    out_data(r, o);
}

static void format_events(srv_req *r, srv_event *ev, size_t n, bool all_done) {
    bool want_lp = r->api.logprobs >= 0;
    for (size_t k = 0; k < n; k++) {
        srv_event *e = &ev[k];
        if (e->choice < 0 || e->choice >= r->n_choices)
            continue;
        srv_choice *ch = &r->choices[e->choice];
        if (e->kind == FG_EVENT_PROMPT_LOGPROB)
            continue; // echo + logprobs is refused when streaming
        if (!ch->sent_first) {
            ch->sent_first = true;
            if (r->api.kind == FG_API_CHAT)
                emit(r, e->choice, "", 0, true, NULL, NULL, NULL);
            else if (r->echo_text && r->echo_len)
                emit(r, e->choice, r->echo_text, r->echo_len, false, NULL, NULL, NULL);
        }
        // the logprobs whose tokens' text this event sends (a token's entry waits for its text)
        json_t *lp = NULL;
        if (want_lp) {
            lp = r->api.kind == FG_API_COMPLETION ? fg_srv_completion_logprobs_new() : json_array();
            fg_srv_lp_event(r, ch, lp, e);
            json_t *arr = r->api.kind == FG_API_COMPLETION ? json_object_get(lp, "tokens") : lp;
            if (json_array_size(arr) == 0) {
                json_decref(lp);
                lp = NULL;
            }
        }
        if (e->kind == FG_EVENT_TOKEN) {
            if (e->text_len == 0 && !lp)
                continue; // an incomplete UTF-8 character: nothing to say yet
            emit(r, e->choice, e->text ? e->text : "", e->text_len, false, lp, NULL, NULL);
            continue;
        }
        // DONE: text held back for a possible stop string comes first
        if (e->text_len || lp)
            emit(r, e->choice, e->text ? e->text : "", e->text_len, false, lp, NULL, NULL);
        if (e->status != FG_OK && e->status != FG_ERR_CANCELLED) {
            char msg[600];
            snprintf(msg, sizeof msg, "%s: %s", r->id_str, e->error ? e->error : "generation failed");
            out_data(r, fg_srv_error_json(msg, "server_error", NULL, "engine_error"));
        }
        bool last = all_done && !r->api.include_usage;
        if (last) { // is another DONE still to come in this batch?
            for (size_t j = k + 1; j < n; j++)
                if (ev[j].kind == FG_EVENT_DONE)
                    last = false;
        }
        emit(r, e->choice, r->api.kind == FG_API_COMPLETION ? "" : NULL, 0, false, NULL,
             fg_srv_finish_name(e->finish), last ? fg_srv_usage_json(r) : NULL);
    }
    if (all_done) {
        if (r->api.include_usage) {
            json_t *o = chunk_new(r);
            json_object_set_new(o, "choices", json_array());
            json_object_set_new(o, "usage", fg_srv_usage_json(r));
            out_data(r, o);
        }
        out_append(r, "data: [DONE]\n\n", 14);
        r->final_sent = true;
    }
}

// MHD asks for more bytes: what is formatted, else new events, else a keep-alive comment after
// a silence, else suspend the connection (the engine callback or the sweep resumes it) and
// return 0.
static ssize_t stream_reader(void *cls, uint64_t pos, char *buf, size_t max) {
    (void)pos;
    srv_req *r = cls;
    for (;;) {
        if (r->out_off < r->out_len) {
            size_t n = FG_MIN(max, r->out_len - r->out_off);
            memcpy(buf, r->out + r->out_off, n);
            r->out_off += n;
            r->t_out = fg_time_s();
            return (ssize_t)n;
        }
        r->out_len = r->out_off = 0;
        if (r->final_sent)
            return MHD_CONTENT_READER_END_OF_STREAM;
        pthread_mutex_lock(&r->mu);
        if (r->q_len == r->q_head && r->n_done < r->n_choices) {
            if (r->client_gone) { // seen by the sweep
                pthread_mutex_unlock(&r->mu);
                fg_srv_req_cancel(r);
                return MHD_CONTENT_READER_END_WITH_ERROR;
            }
            if (fg_time_s() - r->t_out >= SSE_KEEPALIVE_S) {
                // queued or prefilling for a while: show the connection is alive
                pthread_mutex_unlock(&r->mu);
                out_append(r, ": keep-alive\n\n", 14);
                continue;
            }
            if (atomic_load(&r->srv->http_stopping)) {
                pthread_mutex_unlock(&r->mu);
                return MHD_CONTENT_READER_END_WITH_ERROR;
            }
            r->suspended = true;
            atomic_fetch_add(&r->srv->n_suspended, 1);
            MHD_suspend_connection(r->con);
            pthread_mutex_unlock(&r->mu);
            return 0;
        }
        size_t n_ev = 0;
        srv_event *ev = fg_srv_take_events(r, &n_ev);
        bool all_done = r->n_done == r->n_choices;
        pthread_mutex_unlock(&r->mu);
        format_events(r, ev, n_ev, all_done);
        fg_srv_events_free(ev, n_ev);
        free(ev);
    }
}

static void stream_free(void *cls) {
    srv_req *r = cls;
    atomic_fetch_sub(&r->srv->n_streams, 1);
    fg_srv_req_decref(r);
}

enum MHD_Result fg_srv_start_stream(fg_server *s, struct MHD_Connection *con, srv_conn *c,
                                    srv_req *r) {
    atomic_fetch_add(&r->refs, 1);
    atomic_fetch_add(&s->n_streams, 1);
    r->t_out = fg_time_s();
    struct MHD_Response *resp =
        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, stream_reader, r, stream_free);
    if (!resp) {
        stream_free(r);
        return MHD_NO;
    }
    MHD_add_response_header(resp, "Content-Type", "text/event-stream; charset=utf-8");
    MHD_add_response_header(resp, "Cache-Control", "no-cache");
    MHD_add_response_header(resp, "X-Request-Id", r->id_str);
    MHD_add_response_header(resp, "Connection", "close");
    fg_srv_count_status(s, 200);
    c->responded = true;
    enum MHD_Result ret = MHD_queue_response(con, 200, resp);
    MHD_destroy_response(resp);
    return ret;
}
