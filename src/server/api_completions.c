// api_completions.c - POST /v1/completions and /v1/chat/completions: parse the body, build the
// prompt tokens (user text never parsed for special tokens), submit n engine requests whose
// events land in the request's queue, then either hand over to sse.c or suspend the connection
// until every choice is done and answer with one JSON body in OpenAI's shape (text/message,
// logprobs, finish_reason, usage). The engine callback copies events and resumes the connection.
// Not here: HTTP plumbing (server.c) or the SSE writer (sse.c).
#include "server/server_internal.h"

#include "base/status.h"
#include "base/util.h"

#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

// ---- the engine callback (scheduler thread: copy and return)
static void on_event(void *user, const fg_event *ev) {
    srv_choice *ch = user;
    srv_req *r = ch->req;
    srv_event e;
    memset(&e, 0, sizeof e);
    e.kind = ev->kind;
    e.choice = ch->index;
    e.token = ev->token;
    e.logprob = ev->logprob;
    e.n_top = ev->n_top > 0 ? FG_MIN(ev->n_top, FG_MAX_TOP_LOGPROBS) : 0;
    if (e.n_top > 0) {
        e.top = fg_xmalloc((size_t)e.n_top * sizeof *e.top);
        memcpy(e.top, ev->top, (size_t)e.n_top * sizeof *e.top);
    }
    if (ev->kind != FG_EVENT_PROMPT_LOGPROB && ev->text && ev->text_len) {
        e.text = fg_xstrndup(ev->text, ev->text_len);
        e.text_len = ev->text_len;
    }
    if (ev->kind == FG_EVENT_DONE && ev->status != FG_OK && ev->error)
        e.error = fg_xstrdup(ev->error);
    e.finish = ev->finish;
    e.status = ev->status;
    e.n_prompt = ev->n_prompt_tokens;
    e.n_gen = ev->n_gen_tokens;
    e.n_cached = ev->n_cached_tokens;

    pthread_mutex_lock(&r->mu);
    if (r->http_done) { // nobody will read it
        free(e.top);
        free(e.text);
        free(e.error);
    } else {
        if (r->q_head > 0 && r->q_head == r->q_len)
            r->q_head = r->q_len = 0;
        if (r->q_len == r->q_cap) {
            r->q_cap = r->q_cap ? 2 * r->q_cap : 32;
            r->q = fg_xrealloc(r->q, r->q_cap * sizeof *r->q);
        }
        r->q[r->q_len++] = e;
    }
    bool done = ev->kind == FG_EVENT_DONE;
    if (done) {
        ch->done = true;
        ch->finish = ev->finish;
        ch->status = ev->status;
        ch->n_gen = ev->n_gen_tokens;
        r->n_gen_total += ev->n_gen_tokens;
        if (r->n_cached < 0 || ev->n_cached_tokens < r->n_cached)
            r->n_cached = ev->n_cached_tokens;
        r->n_done++;
    }
    // wake the connection waiting for this: a stream for any event, a JSON answer at the end
    bool all_done = r->n_done == r->n_choices;
    if (r->stream || all_done)
        fg_srv_req_resume_locked(r);
    if (all_done)
        fg_srv_wake_waiters_locked(r);
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    if (done)
        fg_srv_req_decref(r); // the engine's reference for this choice
}

bool fg_srv_answer_pending(fg_server *s, struct MHD_Connection *con, srv_conn *c, enum MHD_Result *res) {
    srv_req *r = c->req;
    if (r->client_gone) {
        pthread_mutex_unlock(&r->mu);
        *res = MHD_NO; // nobody to answer (counted as 499 when the connection ends)
        return true;
    }
    if (r->n_done >= r->n_choices)
        return false;
    if (!atomic_load(&s->http_stopping)) {
        r->suspended = true;
        atomic_fetch_add(&s->n_suspended, 1);
        MHD_suspend_connection(con);
        pthread_mutex_unlock(&r->mu);
        *res = MHD_YES;
        return true;
    }
    pthread_mutex_unlock(&r->mu);
    *res = fg_srv_error(s, con, c, 503, "server_error", "shutting_down", "%s: the server is shutting down; retry",
                        r->id_str);
    return true;
}

srv_event *fg_srv_take_events(srv_req *r, size_t *n) {
    // caller holds r->mu
    size_t k = r->q_len - r->q_head;
    *n = k;
    if (k == 0)
        return NULL;
    srv_event *ev = fg_xmalloc(k * sizeof *ev);
    memcpy(ev, r->q + r->q_head, k * sizeof *ev);
    r->q_head = r->q_len = 0;
    return ev;
}

void fg_srv_events_free(srv_event *ev, size_t n) {
    for (size_t i = 0; ev && i < n; i++) {
        free(ev[i].top);
        free(ev[i].text);
        free(ev[i].error);
    }
}

bool fg_srv_client_gone(int fd) {
    if (fd < 0)
        return false;
    struct pollfd p = {.fd = fd, .events = POLLRDHUP};
    if (poll(&p, 1, 0) <= 0)
        return false;
    return (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) != 0;
}

// ---- JSON pieces
const char *fg_srv_finish_name(fg_finish_reason f) {
    switch (f) {
    case FG_FINISH_STOP: return "stop";
    case FG_FINISH_LENGTH: return "length";
    case FG_FINISH_CANCELLED: return "cancelled";
    case FG_FINISH_ERROR: return "error";
    default: return "stop";
    }
}

json_t *fg_srv_usage_json(const srv_req *r) {
    json_t *u = json_object();
    json_object_set_new(u, "prompt_tokens", json_integer(r->n_prompt));
    json_object_set_new(u, "completion_tokens", json_integer(r->n_gen_total));
    json_object_set_new(u, "total_tokens", json_integer(r->n_prompt + r->n_gen_total));
    json_t *d = json_object(); // OpenAI's shape; n > 1: the fewest any choice had
    json_object_set_new(d, "cached_tokens", json_integer(r->n_cached > 0 ? r->n_cached : 0));
    json_object_set_new(u, "prompt_tokens_details", d);
    return u;
}

// Length of the valid UTF-8 sequence at p[0..n) (1..4), or 0 when it is invalid or cut short
// (overlongs, surrogates and code points above U+10FFFF are invalid, as jansson judges them).
static size_t utf8_seq_len(const unsigned char *p, size_t n) {
    unsigned c = p[0];
    size_t len;
    unsigned cp;
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF) {
        len = 2;
        cp = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        cp = c & 0x0F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        cp = c & 0x07;
    } else {
        return 0;
    }
    if (n < len)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((p[i] & 0xC0) != 0x80)
            return 0;
        cp = (cp << 6) | (p[i] & 0x3F);
    }
    if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ||
        (cp >= 0xD800 && cp <= 0xDFFF))
        return 0;
    return len;
}

json_t *fg_srv_json_text(const char *text, size_t len) {
    json_t *s = json_stringn(text ? text : "", text ? len : 0);
    if (s)
        return s;
    // invalid UTF-8 (a character cut by max_tokens, byte tokens of an id prompt): each bad byte
    // becomes U+FFFD, the valid text around it is kept
    char *fix = fg_xmalloc(3 * len + 1);
    size_t k = 0;
    const unsigned char *p = (const unsigned char *)text;
    for (size_t i = 0; i < len;) {
        size_t L = utf8_seq_len(p + i, len - i);
        if (L == 0) {
            memcpy(fix + k, "\xEF\xBF\xBD", 3);
            k += 3;
            i++;
        } else {
            memcpy(fix + k, p + i, L);
            k += L;
            i += L;
        }
    }
    s = json_stringn(fix, k);
    free(fix);
    return s ? s : json_string("");
}

// The text of one token (SentencePiece ▁ -> space, bytes undone; control tokens empty).
static json_t *piece_json(const srv_req *r, int32_t id, json_t **bytes) {
    char small[128];
    const fg_tokenizer *t = r->srv->tok;
    int32_t n = fg_token_to_piece(t, id, false, small, sizeof small);
    char *buf = small;
    if (n < 0)
        n = 0;
    if ((size_t)n > sizeof small) {
        buf = fg_xmalloc((size_t)n);
        fg_token_to_piece(t, id, false, buf, (size_t)n);
    }
    json_t *s = fg_srv_json_text(buf, (size_t)n); // a lone byte of a character: U+FFFD
    if (bytes) {
        *bytes = json_array();
        for (int32_t i = 0; i < n; i++)
            json_array_append_new(*bytes, json_integer((unsigned char)buf[i]));
    }
    if (buf != small)
        free(buf);
    return s;
}

json_t *fg_srv_completion_logprobs_new(void) {
    json_t *lp = json_object();
    json_object_set_new(lp, "tokens", json_array());
    json_object_set_new(lp, "token_logprobs", json_array());
    json_object_set_new(lp, "top_logprobs", json_array());
    json_object_set_new(lp, "text_offset", json_array());
    return lp;
}

// Code points in p[0..n) (valid UTF-8: the bytes that do not continue a character).
static size_t cp_count(const char *p, size_t n) {
    size_t c = 0;
    for (size_t i = 0; i < n; i++)
        c += ((unsigned char)p[i] & 0xC0) != 0x80;
    return c;
}

// Appends one entry: token (its share of the text), logprob (NULL: none), top alternatives
// (their own pieces), text_offset (completions) or bytes (chat: the token's own bytes).
static void lp_append(const srv_req *r, json_t *lp, int32_t token, const char *share, size_t len,
                      const float *logprob, const fg_top_logprob *top, int32_t n_top,
                      size_t offset) {
    if (r->api.kind == FG_API_COMPLETION) {
        json_array_append_new(json_object_get(lp, "tokens"), fg_srv_json_text(share, len));
        json_array_append_new(json_object_get(lp, "token_logprobs"),
                              logprob ? json_real(*logprob) : json_null());
        json_t *tops = json_null();
        if (logprob) {
            tops = json_object();
            for (int32_t i = 0; i < n_top; i++) {
                json_t *k = piece_json(r, top[i].token, NULL);
                if (!json_object_get(tops, json_string_value(k)))
                    json_object_set_new(tops, json_string_value(k), json_real(top[i].logprob));
                json_decref(k);
            }
        }
        json_array_append_new(json_object_get(lp, "top_logprobs"), tops);
        json_array_append_new(json_object_get(lp, "text_offset"), json_integer((json_int_t)offset));
        return;
    }
    json_t *bytes = NULL;
    json_t *e = json_object();
    json_decref(piece_json(r, token, &bytes));
    json_object_set_new(e, "token", fg_srv_json_text(share, len));
    json_object_set_new(e, "logprob", json_real(logprob ? *logprob : 0.0f));
    json_object_set_new(e, "bytes", bytes);
    json_t *tops = json_array();
    for (int32_t i = 0; i < n_top; i++) {
        json_t *tb = NULL;
        json_t *t = json_object();
        json_object_set_new(t, "token", piece_json(r, top[i].token, &tb));
        json_object_set_new(t, "logprob", json_real(top[i].logprob));
        json_object_set_new(t, "bytes", tb);
        json_array_append_new(tops, t);
    }
    json_object_set_new(e, "top_logprobs", tops);
    json_array_append_new(lp, e);
}

// Echo entries: prompt token i's share of the echoed text.
static void lp_prompt(const srv_req *r, srv_choice *ch, json_t *lp, int32_t i,
                      const srv_event *ev) {
    if (!r->echo_offs || i >= r->n_prompt)
        return;
    const char *share = r->echo_text + r->echo_offs[i];
    size_t len = r->echo_offs[i + 1] - r->echo_offs[i];
    lp_append(r, lp, r->prompt[i], share, len, ev ? &ev->logprob : NULL, ev ? ev->top : NULL,
              ev ? ev->n_top : 0, ch->cp_prompt);
    ch->cp_prompt += cp_count(share, len);
    ch->n_prompt_lp = i + 1;
}

void fg_srv_lp_first_prompt(const srv_req *r, srv_choice *ch, json_t *lp) {
    lp_prompt(r, ch, lp, 0, NULL);
}

// Writes the queued entries whose share has been sent (final: all of them, each cut to the
// text that was sent: a stop string removes the end of the last shares).
static void lp_release(const srv_req *r, srv_choice *ch, json_t *lp, bool final) {
    int32_t k = 0;
    for (; k < ch->lp_n; k++) {
        srv_lp_entry *e = &ch->lp_q[k];
        bool last = k == ch->lp_n - 1;
        // the last entry waits while a character is half-decoded: its rest (or U+FFFD) is its
        if (!final && (e->start + e->len > ch->gen_sent || (last && ch->lp_ds.n_pending)))
            break;
        size_t a = FG_MIN(e->start, ch->gen_sent), b = FG_MIN(e->start + e->len, ch->gen_sent);
        lp_append(r, lp, e->token, ch->lp_text + a, b - a, &e->logprob, e->top, e->n_top,
                  r->echo_cp + ch->cp_gen);
        ch->cp_gen += cp_count(ch->lp_text + a, b - a);
    }
    memmove(ch->lp_q, ch->lp_q + k, (size_t)(ch->lp_n - k) * sizeof *ch->lp_q);
    ch->lp_n -= k;
}

static void lp_text_append(srv_choice *ch, const char *p, size_t n) {
    if (ch->lp_len + n > ch->lp_text_cap) {
        ch->lp_text_cap = FG_MAX(2 * ch->lp_text_cap, ch->lp_len + n + 256);
        ch->lp_text = fg_xrealloc(ch->lp_text, ch->lp_text_cap);
    }
    memcpy(ch->lp_text + ch->lp_len, p, n);
    ch->lp_len += n;
}

void fg_srv_lp_event(const srv_req *r, srv_choice *ch, json_t *lp, const srv_event *ev) {
    if (ev->kind == FG_EVENT_PROMPT_LOGPROB) {
        lp_prompt(r, ch, lp, ch->n_prompt_lp > 0 ? ch->n_prompt_lp : 1, ev);
        return;
    }
    if (ev->kind == FG_EVENT_TOKEN) {
        char small[1024];
        int32_t pn = fg_token_to_piece(r->srv->tok, ev->token, false, NULL, 0);
        size_t cap = 3 * (size_t)FG_MAX(pn, 0) + 3; // what the stream may write for it
        char *buf = cap <= sizeof small ? small : fg_xmalloc(cap);
        int32_t n = fg_detok_stream_push(r->srv->tok, &ch->lp_ds, ev->token, false, buf, cap);
        n = FG_MAX(n, 0);
        if (ch->lp_n == ch->lp_cap) {
            ch->lp_cap = ch->lp_cap ? 2 * ch->lp_cap : 16;
            ch->lp_q = fg_xrealloc(ch->lp_q, (size_t)ch->lp_cap * sizeof *ch->lp_q);
        }
        srv_lp_entry *e = &ch->lp_q[ch->lp_n++];
        e->token = ev->token;
        e->logprob = ev->logprob;
        e->n_top = ev->n_top;
        if (ev->n_top > 0)
            memcpy(e->top, ev->top, (size_t)ev->n_top * sizeof *e->top);
        e->start = ch->lp_len;
        lp_text_append(ch, buf, (size_t)n);
        e->len = (size_t)n;
        if (buf != small)
            free(buf);
    }
    if (ev->kind == FG_EVENT_DONE && ch->lp_ds.n_pending && ch->lp_n > 0) {
        char buf[8]; // the engine ends such a text with U+FFFD too: the last entry's share
        int32_t f = fg_detok_stream_flush(&ch->lp_ds, buf, sizeof buf);
        lp_text_append(ch, buf, f > 0 ? (size_t)f : 0);
        ch->lp_q[ch->lp_n - 1].len += f > 0 ? (size_t)f : 0;
    }
    ch->gen_sent += ev->text_len;
    lp_release(r, ch, lp, ev->kind == FG_EVENT_DONE);
}

void fg_srv_lp_free(srv_choice *ch) {
    free(ch->lp_text);
    free(ch->lp_q);
    ch->lp_text = NULL;
    ch->lp_q = NULL;
    ch->lp_n = ch->lp_cap = 0;
    ch->lp_len = ch->lp_text_cap = 0;
}

// ---- prompt
static fg_status build_prompt(fg_server *s, srv_req *r, fg_api_error *err) {
    fg_api_request *a = &r->api;
    int32_t *ids = NULL;
    size_t n = 0;
    fg_status st;
    if (a->kind == FG_API_CHAT) {
        fg_chat_rendered cr;
        st = fg_chat_render(s->chat_format, a->messages, a->n_messages, a->add_generation_prompt,
                            &cr);
        if (st == FG_OK) {
            st = fg_chat_tokenize(s->tok, &cr, &ids, &n);
            fg_chat_rendered_free(&cr);
        }
    } else if (a->prompt_is_ids) {
        n = (size_t)a->n_prompt_ids;
        ids = fg_xmalloc(n * sizeof(int32_t));
        memcpy(ids, a->prompt_ids, n * sizeof(int32_t));
        st = FG_OK;
    } else {
        st = fg_tokenize(s->tok, a->prompt_text, a->prompt_len, true, false, &ids, &n);
    }
    if (st != FG_OK) {
        err->http_status = 400;
        err->type = "invalid_request_error";
        err->param = a->kind == FG_API_CHAT ? "messages" : "prompt";
        snprintf(err->message, sizeof err->message, "cannot tokenize the prompt: %s",
                 fg_last_error());
        return st;
    }
    if (n == 0) {
        free(ids);
        err->http_status = 400;
        err->type = "invalid_request_error";
        err->param = "prompt";
        snprintf(err->message, sizeof err->message, "the prompt is empty (no tokens)");
        return FG_ERR_INVALID_ARG;
    }
    if (n > (size_t)s->n_ctx) {
        if (!a->truncate) {
            err->http_status = 400;
            err->type = "invalid_request_error";
            err->param = a->kind == FG_API_CHAT ? "messages" : "prompt";
            err->code = "context_length_exceeded";
            snprintf(err->message, sizeof err->message,
                     "the prompt has %zu tokens, more than the context of %d tokens (pass "
                     "\"truncate\": true to keep its end)",
                     n, s->n_ctx);
            free(ids);
            return FG_ERR_INVALID_ARG;
        }
        // keep the end of the prompt, leaving room for the completion
        int32_t room = a->max_tokens > 0 ? FG_MIN(a->max_tokens, s->n_ctx / 2) : 1;
        size_t keep = (size_t)(s->n_ctx - room);
        memmove(ids, ids + (n - keep), keep * sizeof(int32_t));
        n = keep;
    }
    r->prompt = ids;
    r->n_prompt = (int32_t)n;
    if (a->kind == FG_API_COMPLETION && a->echo) {
        // the echo is the prompt's tokens' text split by token (a text prompt comes back as
        // given, the added SentencePiece space dropped), so that each prompt token's offset
        // indexes it exactly
        r->echo_offs = fg_xmalloc((n + 1) * sizeof *r->echo_offs);
        if (fg_detokenize_split(s->tok, r->prompt, n, false, true, &r->echo_text, &r->echo_len,
                                r->echo_offs) != FG_OK) {
            err->http_status = 400;
            err->type = "invalid_request_error";
            err->param = "prompt";
            snprintf(err->message, sizeof err->message, "cannot echo the prompt: %s",
                     fg_last_error());
            return FG_ERR_INVALID_ARG;
        }
        for (size_t i = 0; i < r->echo_len; i++)
            r->echo_cp += ((unsigned char)r->echo_text[i] & 0xC0) != 0x80;
    }
    int32_t room = s->n_ctx - r->n_prompt; // >= 0 here
    if (a->max_tokens < 0 && a->kind == FG_API_COMPLETION) { // not given: the default, if it fits
        a->max_tokens = FG_MIN(16, room);
    } else if (a->max_tokens < 0 && room > 0) {
        a->max_tokens = room; // chat: up to the end of the context
    } else if (a->max_tokens > room || (a->kind == FG_API_CHAT && room == 0)) {
        if (!a->truncate || room == 0) {
            err->http_status = 400;
            err->type = "invalid_request_error";
            // a full context is the prompt's doing: the field named is the one that holds it
            err->param = room > 0 ? "max_tokens" : a->kind == FG_API_CHAT ? "messages" : "prompt";
            err->code = "context_length_exceeded";
            if (room == 0) // an answer needs at least one token
                snprintf(err->message, sizeof err->message,
                         "the prompt has %d tokens: it fills the context of %d tokens and "
                         "leaves no room for an answer",
                         r->n_prompt, s->n_ctx);
            else
                snprintf(err->message, sizeof err->message,
                         "the prompt has %d tokens and max_tokens is %d: together more than "
                         "the context of %d tokens (ask for at most %d)",
                         r->n_prompt, a->max_tokens, s->n_ctx, room);
            return FG_ERR_INVALID_ARG;
        }
        a->max_tokens = room; // "truncate": the completion ends at the context (finish "length")
    }
    return FG_OK;
}

static srv_req *req_new(fg_server *s, srv_conn *c, fg_api_request *api) {
    srv_req *r = fg_xcalloc(1, sizeof *r);
    r->srv = s;
    snprintf(r->id_str, sizeof r->id_str, "%s", c->id_str); // the X-Request-Id: random
    r->key_idx = c->key_idx;
    char hex[17]; // random bits for the default sampling seed
    if (fg_srv_random_hex(hex, 16))
        r->seed_bits = strtoull(hex, NULL, 16);
    atomic_init(&r->refs, 1);
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->cv, NULL);
    r->api = *api;
    r->created = (int64_t)time(NULL);
    r->conn_fd = -1;
    r->n_cached = -1;
    r->t_start = fg_time_s();
    return r;
}

// Submits the n choices; on failure cancels the ones already in and fills *err.
static fg_status submit_all(fg_server *s, srv_req *r, fg_api_error *err) {
    fg_api_request *a = &r->api;
    if (!a->seed_given) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        a->sampling.seed = (uint64_t)ts.tv_nsec * 0x9E3779B97F4A7C15ull ^ (uint64_t)ts.tv_sec ^
                           r->seed_bits;
    }
    r->n_choices = a->n;
    r->choices = fg_xcalloc((size_t)a->n, sizeof *r->choices);
    for (int32_t i = 0; i < a->n; i++) {
        r->choices[i].req = r;
        r->choices[i].index = i;
    }
    fg_status st = FG_OK;
    int32_t i = 0;
    pthread_rwlock_rdlock(&s->engine_lock);
    for (; i < a->n; i++) {
        fg_request_params p;
        fg_api_request_to_params(a, r->prompt, r->n_prompt, i, &p);
        uint64_t id = 0;
        atomic_fetch_add(&r->refs, 1);
        st = s->engine ? fg_engine_submit(s->engine, &p, on_event, &r->choices[i], &id)
                       : FG_FAIL(FG_ERR_CANCELLED, "the server is shutting down");
        if (st != FG_OK) {
            atomic_fetch_sub(&r->refs, 1);
            break;
        }
        pthread_mutex_lock(&r->mu);
        r->choices[i].engine_id = id;
        r->choices[i].submitted = true;
        pthread_mutex_unlock(&r->mu);
    }
    pthread_rwlock_unlock(&s->engine_lock);
    if (st == FG_OK)
        return FG_OK;
    pthread_mutex_lock(&r->mu);
    r->n_choices = i; // the others never started
    pthread_mutex_unlock(&r->mu);
    fg_srv_req_cancel(r);
    err->type = "invalid_request_error";
    snprintf(err->message, sizeof err->message, "%s", fg_last_error());
    if (st == FG_ERR_CAPACITY) {
        err->http_status = 429;
        err->type = "rate_limit_error";
        err->code = "queue_full";
        snprintf(err->message, sizeof err->message,
                 "the server is overloaded (request queue full): retry later");
    } else if (st == FG_ERR_INVALID_ARG) {
        err->http_status = 400;
    } else if (st == FG_ERR_CANCELLED) {
        err->http_status = 503;
        err->type = "server_error";
        err->code = "shutting_down";
    } else {
        err->http_status = 500;
        err->type = "server_error";
    }
    return st;
}

// ---- non-streaming answer
static json_t *build_response(srv_req *r, srv_event *ev, size_t n_ev) {
    fg_api_request *a = &r->api;
    int32_t nc = r->n_choices;
    char **text = fg_xcalloc((size_t)nc, sizeof(char *));
    size_t *len = fg_xcalloc((size_t)nc, sizeof(size_t));
    json_t **lps = fg_xcalloc((size_t)nc, sizeof(json_t *));
    bool want_lp = a->logprobs >= 0;
    for (int32_t i = 0; i < nc; i++) {
        srv_choice *ch = &r->choices[i];
        size_t cap = r->echo_len + 64;
        text[i] = fg_xmalloc(cap);
        if (r->echo_text) {
            memcpy(text[i], r->echo_text, r->echo_len);
            len[i] = r->echo_len;
        }
        if (want_lp) {
            lps[i] = a->kind == FG_API_COMPLETION ? fg_srv_completion_logprobs_new() : json_array();
            if (a->kind == FG_API_COMPLETION && a->echo) // the first prompt token: no logprob
                fg_srv_lp_first_prompt(r, ch, lps[i]);
        }
    }
    for (size_t k = 0; k < n_ev; k++) {
        srv_event *e = &ev[k];
        if (e->choice < 0 || e->choice >= nc)
            continue;
        srv_choice *ch = &r->choices[e->choice];
        if (e->text_len && e->kind != FG_EVENT_PROMPT_LOGPROB) {
            text[e->choice] = fg_xrealloc(text[e->choice], len[e->choice] + e->text_len + 1);
            memcpy(text[e->choice] + len[e->choice], e->text, e->text_len);
            len[e->choice] += e->text_len;
        }
        if (want_lp && (e->kind != FG_EVENT_PROMPT_LOGPROB || a->kind == FG_API_COMPLETION))
            fg_srv_lp_event(r, ch, lps[e->choice], e);
    }
    json_t *choices = json_array();
    for (int32_t i = 0; i < nc; i++) {
        json_t *c = json_object();
        json_t *content = fg_srv_json_text(text[i], len[i]);
        if (a->kind == FG_API_COMPLETION) {
            json_object_set_new(c, "text", content);
            json_object_set_new(c, "index", json_integer(i));
            json_object_set_new(c, "logprobs", want_lp ? lps[i] : json_null());
        } else {
            json_object_set_new(c, "index", json_integer(i));
            json_t *m = json_object();
            json_object_set_new(m, "role", json_string("assistant"));
            json_object_set_new(m, "content", content);
            json_object_set_new(c, "message", m);
            if (want_lp) {
                json_t *o = json_object();
                json_object_set_new(o, "content", lps[i]);
                json_object_set_new(c, "logprobs", o);
            } else {
                json_object_set_new(c, "logprobs", json_null());
            }
        }
        json_object_set_new(c, "finish_reason",
                            json_string(fg_srv_finish_name(r->choices[i].finish)));
        json_array_append_new(choices, c);
        free(text[i]);
    }
    free(text);
    free(len);
    free(lps);
    json_t *o = json_object();
    json_object_set_new(o, "id", json_string(r->id_str));
    json_object_set_new(o, "object",
                        json_string(a->kind == FG_API_COMPLETION ? "text_completion"
                                                                 : "chat.completion"));
    json_object_set_new(o, "created", json_integer(r->created));
    json_object_set_new(o, "model", json_string(r->srv->model_id));
    json_object_set_new(o, "choices", choices);
    json_object_set_new(o, "usage", fg_srv_usage_json(r));
    return o;
}

// Answers a non-streaming request once every choice is done; until then its connection is
// suspended (the engine callback resumes it, or the sweep when the client leaves).
static enum MHD_Result completion_answer(fg_server *s, struct MHD_Connection *con, srv_conn *c) {
    srv_req *r = c->req;
    enum MHD_Result res;
    pthread_mutex_lock(&r->mu);
    if (fg_srv_answer_pending(s, con, c, &res))
        return res;
    size_t n_ev = 0;
    srv_event *ev = fg_srv_take_events(r, &n_ev);
    bool user_cancelled = r->user_cancelled;
    pthread_mutex_unlock(&r->mu);
    for (int32_t i = 0; i < r->n_choices; i++) {
        srv_choice *ch = &r->choices[i];
        if (ch->status == FG_ERR_CANCELLED && !user_cancelled &&
            atomic_load(&s->state) != SRV_READY) {
            // cut short by the shutdown, not by DELETE: a 503 the client may retry elsewhere
            // (not a 200 with an empty or truncated text that looks like an answer)
            fg_srv_events_free(ev, n_ev);
            free(ev);
            return fg_srv_error(s, con, c, 503, "server_error", "shutting_down",
                                "%s: cancelled because the server is shutting down; retry",
                                r->id_str);
        }
        if (ch->status != FG_OK && ch->status != FG_ERR_CANCELLED) {
            const char *msg = "generation failed";
            for (size_t k = 0; k < n_ev; k++)
                if (ev[k].kind == FG_EVENT_DONE && ev[k].choice == i && ev[k].error)
                    msg = ev[k].error;
            enum MHD_Result ret = fg_srv_error(s, con, c, 500, "server_error", "engine_error",
                                               "%s: %s", r->id_str, msg);
            fg_srv_events_free(ev, n_ev);
            free(ev);
            return ret;
        }
    }
    json_t *o = build_response(r, ev, n_ev);
    fg_srv_events_free(ev, n_ev);
    free(ev);
    return fg_srv_respond_json(s, con, c, 200, o);
}

enum MHD_Result fg_api_completions_resume(fg_server *s, struct MHD_Connection *con, srv_conn *c) {
    return completion_answer(s, con, c);
}

static enum MHD_Result completions(fg_server *s, struct MHD_Connection *con, srv_conn *c,
                                   fg_api_kind kind) {
    if (s->embeds) // issue 14: the embedder serves this model, not the engine
        return fg_srv_error(s, con, c, 400, "invalid_request_error", "model_not_supported",
                            "model '%s' is an embedding model (%s pooling): it does not generate text; "
                            "use POST /v1/embeddings",
                            s->model_id, fg_pooling_name(fg_model_get_info(s->model)->pooling));
    fg_api_limits lim = {.model_id = s->model_id,
                         .n_ctx = s->n_ctx,
                         .n_vocab = s->n_vocab,
                         .max_n = FG_MIN(s->opts.max_n, s->queue_cap)};
    // (n choices wait in the queue together: more than it holds could never be accepted)
    fg_api_request api;
    fg_api_error err;
    if (fg_server_parse_request(kind, c->body ? c->body : "", c->body_len, &lim, &api, &err) !=
        FG_OK)
        return fg_srv_respond_error(s, con, c, &err);
    srv_req *r = req_new(s, c, &api);
    r->stream = api.stream;
    r->con = con;
    c->req = r; // the connection's reference
    atomic_fetch_add(&s->n_answering, 1); // until on_completed: the shutdown waits for it
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(con, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (ci)
        r->conn_fd = ci->connect_fd;
    memset(&err, 0, sizeof err);
    if (build_prompt(s, r, &err) != FG_OK)
        return fg_srv_respond_error(s, con, c, &err);
    if (submit_all(s, r, &err) != FG_OK)
        return fg_srv_respond_error(s, con, c, &err);
    atomic_fetch_add(&r->refs, 1);
    fg_srv_registry_add(s, r);
    fg_srv_active_add(s, r);
    if (s->opts.log_requests)
        fprintf(stderr, "forge serve: %s: %d prompt tokens, n %d, max_tokens %d%s\n", r->id_str,
                r->n_prompt, r->n_choices, r->api.max_tokens, r->api.stream ? ", stream" : "");
    if (r->api.stream)
        return fg_srv_start_stream(s, con, c, r);
    return completion_answer(s, con, c);
}

enum MHD_Result fg_api_completions(fg_server *s, struct MHD_Connection *con, srv_conn *c) {
    return completions(s, con, c, FG_API_COMPLETION);
}

enum MHD_Result fg_api_chat(fg_server *s, struct MHD_Connection *con, srv_conn *c) {
    return completions(s, con, c, FG_API_CHAT);
}
