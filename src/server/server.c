// server.c - the HTTP side of `forge serve`: the route table, the access handler of the
// libmicrohttpd workers (auth, body limits, dispatch, resumption of suspended requests), the
// registry of completion requests and the sweep over the open ones, start-up (listener first,
// then the model: /health says "loading" meanwhile) and the graceful shutdown.
// Threads: the gate (gate.c) accepts and hands complete request heads to N worker daemons (one
// libmicrohttpd event loop each, no listen socket); handlers never block: a request waiting for
// the engine suspends its connection. Every response closes its connection, so each request
// passes through the gate. Not here: endpoint bodies (api_*.c), SSE (sse.c), parsing
// (api_parse.c), connection limits and deadlines (gate.c).
// Called by src/cli/cmd_serve.c through include/forge/server.h.
#include "server/server_internal.h"

#include "base/status.h"
#include "base/util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#define REGISTRY_KEEP 512     // finished requests remembered for GET /v1/requests/{id}
#define SRV_IDLE_TIMEOUT_S 60 // seconds a worker's connection may stay silent either way

const int fg_srv_codes[SRV_N_CODES] = {200, 400, 401, 404, 405, 408,
                                       413, 429, 431, 499, 500, 503};

// The chat page (webui.c): static, no key (the API calls it makes need one); 404 with --no-webui.
static enum MHD_Result webui_route(fg_server *s, struct MHD_Connection *con, srv_conn *c, const char *path) {
    if (s->opts.no_webui)
        return fg_srv_error(s, con, c, 404, "invalid_request_error", "not_found", "no route for GET %s", path);
    return fg_webui_serve(s, con, c, path);
}
static enum MHD_Result webui_page(fg_server *s, struct MHD_Connection *con, srv_conn *c) {
    return webui_route(s, con, c, "/");
}
static enum MHD_Result webui_icon(fg_server *s, struct MHD_Connection *con, srv_conn *c) {
    return webui_route(s, con, c, "/favicon.ico");
}

// ---- the route table: every endpoint, its method, and what it needs
static const srv_route k_routes[] = {
    {"GET", "/", webui_page, 0, "req"},
    {"GET", "/favicon.ico", webui_icon, 0, "req"},
    {"POST", "/v1/completions", fg_api_completions, SRV_AUTH | SRV_NEEDS_MODEL, "cmpl"},
    {"POST", "/completions", fg_api_completions, SRV_AUTH | SRV_NEEDS_MODEL, "cmpl"},
    {"POST", "/v1/chat/completions", fg_api_chat, SRV_AUTH | SRV_NEEDS_MODEL, "chatcmpl"},
    {"POST", "/chat/completions", fg_api_chat, SRV_AUTH | SRV_NEEDS_MODEL, "chatcmpl"},
    {"POST", "/v1/embeddings", fg_api_embeddings, SRV_AUTH | SRV_NEEDS_MODEL, "embd"},
    {"POST", "/embeddings", fg_api_embeddings, SRV_AUTH | SRV_NEEDS_MODEL, "embd"},
    {"GET", "/v1/models", fg_api_models, SRV_AUTH | SRV_NEEDS_MODEL, "req"},
    {"GET", "/models", fg_api_models, SRV_AUTH | SRV_NEEDS_MODEL, "req"},
    {"POST", "/apply-template", fg_api_apply_template, SRV_AUTH | SRV_NEEDS_MODEL, "req"},
    {"POST", "/v1/apply-template", fg_api_apply_template, SRV_AUTH | SRV_NEEDS_MODEL, "req"},
    {"GET", "/v1/requests/", fg_api_request_get, SRV_AUTH | SRV_NEEDS_MODEL | SRV_PREFIX, "req"},
    {"DELETE", "/v1/requests/", fg_api_request_delete, SRV_AUTH | SRV_NEEDS_MODEL | SRV_PREFIX,
     "req"},
    {"GET", "/health", fg_api_health, 0, "req"},
    {"GET", "/v1/health", fg_api_health, 0, "req"},
    {"GET", "/metrics", fg_api_metrics, 0, "req"},
};

static bool path_matches(const srv_route *rt, const char *url) {
    if (!(rt->flags & SRV_PREFIX))
        return !strcmp(url, rt->path);
    size_t n = strlen(rt->path);
    return !strncmp(url, rt->path, n) && url[n];
}

static bool method_matches(const srv_route *rt, const char *method) {
    return !strcmp(method, rt->method) || (!strcmp(rt->method, "GET") && !strcmp(method, "HEAD"));
}

// The row for (method, url); NULL with *path_known telling 405 from 404.
static const srv_route *route_find(const char *method, const char *url, bool *path_known) {
    *path_known = false;
    for (size_t i = 0; i < FG_ARRAY_LEN(k_routes); i++) {
        if (!path_matches(&k_routes[i], url))
            continue;
        *path_known = true;
        if (method_matches(&k_routes[i], method))
            return &k_routes[i];
    }
    return NULL;
}

static void allowed_methods(const char *url, char *out, size_t n) {
    out[0] = '\0';
    for (size_t i = 0; i < FG_ARRAY_LEN(k_routes); i++)
        if (path_matches(&k_routes[i], url) && !strstr(out, k_routes[i].method))
            snprintf(out + strlen(out), n - strlen(out), "%s%s", out[0] ? ", " : "",
                     k_routes[i].method);
}

void fg_srv_count_status(fg_server *s, int status) {
    int k = SRV_N_CODES;
    for (int i = 0; i < SRV_N_CODES; i++)
        if (fg_srv_codes[i] == status)
            k = i;
    atomic_fetch_add(&s->http_counts[k], 1);
}

bool fg_srv_random_hex(char *out, int hex) {
    unsigned char b[64];
    size_t n = (size_t)(hex + 1) / 2;
    if (n > sizeof b)
        return false;
    size_t got = 0;
    while (got < n) {
        ssize_t r = getrandom(b + got, n - got, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    if (got < n) { // no getrandom: the device
        int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            return false;
        ssize_t r = read(fd, b, n);
        close(fd);
        if (r != (ssize_t)n)
            return false;
    }
    static const char digits[] = "0123456789abcdef";
    for (int i = 0; i < hex; i++)
        out[i] = digits[(b[i / 2] >> (i % 2 ? 0 : 4)) & 15];
    out[hex] = '\0';
    return true;
}

// ---- responses
enum MHD_Result fg_srv_respond(fg_server *s, struct MHD_Connection *con, srv_conn *c, int status,
                               const char *content_type, char *body, size_t len) {
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
    if (!resp) {
        free(body);
        return MHD_NO;
    }
    MHD_add_response_header(resp, "Content-Type", content_type);
    MHD_add_response_header(resp, "X-Request-Id", c->id_str);
    MHD_add_response_header(resp, "Connection", "close");
    if (status == 429 || status == 503)
        MHD_add_response_header(resp, "Retry-After", "1");
    if (status == 401)
        MHD_add_response_header(resp, "WWW-Authenticate", "Bearer");
    if (status == 405 && !c->route && c->rest) {
        char allow[64];
        allowed_methods(c->rest, allow, sizeof allow);
        MHD_add_response_header(resp, "Allow", allow);
    }
    fg_srv_count_status(s, status);
    c->responded = true;
    enum MHD_Result ret = MHD_queue_response(con, (unsigned)status, resp);
    MHD_destroy_response(resp);
    return ret;
}

enum MHD_Result fg_srv_respond_json(fg_server *s, struct MHD_Connection *con, srv_conn *c,
                                    int status, json_t *j) {
    char *text = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    if (!text)
        return MHD_NO;
    size_t len = strlen(text);
    char *body = fg_xmalloc(len + 2);
    memcpy(body, text, len);
    body[len] = '\n';
    free(text);
    return fg_srv_respond(s, con, c, status, "application/json", body, len + 1);
}

json_t *fg_srv_error_json(const char *message, const char *type, const char *param,
                          const char *code) {
    json_t *e = json_object();
    json_object_set_new(e, "message", json_string(message));
    json_object_set_new(e, "type", json_string(type ? type : "invalid_request_error"));
    json_object_set_new(e, "param", param ? json_string(param) : json_null());
    json_object_set_new(e, "code", code ? json_string(code) : json_null());
    json_t *o = json_object();
    json_object_set_new(o, "error", e);
    return o;
}

enum MHD_Result fg_srv_respond_error(fg_server *s, struct MHD_Connection *con, srv_conn *c,
                                     const fg_api_error *e) {
    if (s->opts.log_requests)
        fprintf(stderr, "forge serve: %s: %d %s\n", c->id_str, e->http_status, e->message);
    return fg_srv_respond_json(s, con, c, e->http_status,
                               fg_srv_error_json(e->message, e->type, e->param, e->code));
}

enum MHD_Result fg_srv_error(fg_server *s, struct MHD_Connection *con, srv_conn *c, int status,
                             const char *type, const char *code, const char *fmt, ...) {
    fg_api_error e;
    memset(&e, 0, sizeof e);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e.message, sizeof e.message, fmt, ap);
    va_end(ap);
    e.http_status = status;
    e.type = type;
    e.code = code;
    return fg_srv_respond_error(s, con, c, &e);
}

// ---- requests, the registry and the active list
void fg_srv_req_decref(srv_req *r) {
    if (!r || atomic_fetch_sub(&r->refs, 1) != 1)
        return;
    if (r->q)
        fg_srv_events_free(r->q + r->q_head, r->q_len - r->q_head);
    free(r->q);
    fg_api_request_free(&r->api);
    free(r->prompt);
    free(r->echo_text);
    free(r->echo_offs);
    for (int32_t i = 0; r->choices && i < r->n_choices; i++)
        fg_srv_lp_free(&r->choices[i]);
    free(r->choices);
    free(r->out);
    free(r->emb);
    free(r->emb_error);
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->cv);
    free(r);
}

static void registry_unlink(fg_server *s, srv_req *r) {
    if (r->reg_prev)
        r->reg_prev->reg_next = r->reg_next;
    else
        s->reg_head = r->reg_next;
    if (r->reg_next)
        r->reg_next->reg_prev = r->reg_prev;
    else
        s->reg_tail = r->reg_prev;
    r->reg_prev = r->reg_next = NULL;
    r->in_registry = false;
    s->reg_n--;
}

void fg_srv_registry_add(fg_server *s, srv_req *r) {
    srv_req *drop[8];
    int n_drop = 0;
    pthread_mutex_lock(&s->reg_mu);
    r->reg_prev = s->reg_tail;
    r->reg_next = NULL;
    if (s->reg_tail)
        s->reg_tail->reg_next = r;
    else
        s->reg_head = r;
    s->reg_tail = r;
    r->in_registry = true;
    s->reg_n++;
    // forget the oldest finished requests beyond the limit
    srv_req *it = s->reg_head;
    while (it && s->reg_n > REGISTRY_KEEP && n_drop < 8) {
        srv_req *next = it->reg_next;
        pthread_mutex_lock(&it->mu);
        bool done = it->n_done == it->n_choices;
        pthread_mutex_unlock(&it->mu);
        if (done) {
            registry_unlink(s, it);
            drop[n_drop++] = it;
        }
        it = next;
    }
    pthread_mutex_unlock(&s->reg_mu);
    for (int i = 0; i < n_drop; i++)
        fg_srv_req_decref(drop[i]);
}

srv_req *fg_srv_registry_find(fg_server *s, const char *id) {
    srv_req *found = NULL;
    pthread_mutex_lock(&s->reg_mu);
    for (srv_req *it = s->reg_tail; it; it = it->reg_prev)
        if (!strcmp(it->id_str, id)) {
            atomic_fetch_add(&it->refs, 1);
            found = it;
            break;
        }
    pthread_mutex_unlock(&s->reg_mu);
    return found;
}

void fg_srv_active_add(fg_server *s, srv_req *r) {
    pthread_mutex_lock(&s->act_mu);
    r->act_prev = NULL;
    r->act_next = s->act_head;
    if (s->act_head)
        s->act_head->act_prev = r;
    s->act_head = r;
    r->active = true;
    pthread_mutex_unlock(&s->act_mu);
}

static void active_remove(fg_server *s, srv_req *r) {
    pthread_mutex_lock(&s->act_mu);
    if (r->active) {
        if (r->act_prev)
            r->act_prev->act_next = r->act_next;
        else
            s->act_head = r->act_next;
        if (r->act_next)
            r->act_next->act_prev = r->act_prev;
        r->act_prev = r->act_next = NULL;
        r->active = false;
    }
    pthread_mutex_unlock(&s->act_mu);
}

void fg_srv_req_resume_locked(srv_req *r) {
    if (r->suspended && r->con) {
        r->suspended = false;
        atomic_fetch_sub(&r->srv->n_suspended, 1);
        MHD_resume_connection(r->con);
    }
}

void fg_srv_req_cancel(srv_req *r) {
    fg_server *s = r->srv;
    uint64_t ids[64];
    int n = 0;
    if (r->embed) { // an embeddings request (issue 14): its one embedder request
        pthread_mutex_lock(&r->mu);
        bool live = r->embed_submitted && r->n_done < r->n_choices;
        pthread_mutex_unlock(&r->mu);
        pthread_rwlock_rdlock(&s->engine_lock);
        if (live && s->embedder)
            fg_embedder_cancel(s->embedder, r->embed_id);
        pthread_rwlock_unlock(&s->engine_lock);
        return;
    }
    pthread_mutex_lock(&r->mu);
    for (int32_t i = 0; i < r->n_choices && n < 64; i++)
        if (r->choices[i].submitted && !r->choices[i].done)
            ids[n++] = r->choices[i].engine_id;
    pthread_mutex_unlock(&r->mu);
    if (n == 0)
        return;
    pthread_rwlock_rdlock(&s->engine_lock);
    if (s->engine)
        for (int i = 0; i < n; i++)
            fg_engine_cancel(s->engine, ids[i]); // unknown id (already ended): ignored
    pthread_rwlock_unlock(&s->engine_lock);
}

// Suspended connections whose client left (cancel the request, let the handler close) or whose
// stream has been silent for SSE_KEEPALIVE_S (let the reader write a comment); everything when
// the workers are about to stop.
void fg_srv_sweep(fg_server *s, double now) {
    srv_req *gone[64];
    int n_gone = 0;
    bool stopping = atomic_load(&s->http_stopping);
    pthread_mutex_lock(&s->act_mu);
    for (srv_req *r = s->act_head; r; r = r->act_next) {
        pthread_mutex_lock(&r->mu);
        if (r->suspended) {
            bool left = fg_srv_client_gone(r->conn_fd); // the fd is open while r->con is set
            bool ping = r->stream && now - r->t_out >= SSE_KEEPALIVE_S;
            if (left && !r->client_gone && n_gone < 64) {
                r->client_gone = true;
                atomic_fetch_add(&r->refs, 1);
                gone[n_gone++] = r;
            }
            if (left || ping || stopping)
                fg_srv_req_resume_locked(r);
        }
        pthread_mutex_unlock(&r->mu);
    }
    pthread_mutex_unlock(&s->act_mu);
    for (int i = 0; i < n_gone; i++) {
        fg_srv_req_cancel(gone[i]);
        fg_srv_req_decref(gone[i]);
    }
}

// ---- the access handler
static int32_t auth_key(fg_server *s, struct MHD_Connection *con) {
    const char *h = MHD_lookup_connection_value(con, MHD_HEADER_KIND, "Authorization");
    if (!h || strncasecmp(h, "Bearer ", 7))
        return -2;
    h += 7;
    size_t a = strlen(h);
    int32_t found = -2;
    for (int32_t k = 0; k < s->opts.n_api_keys; k++) { // every key compared in full
        const char *key = s->api_keys[k];
        size_t b = strlen(key);
        unsigned diff = (unsigned)(a ^ b);
        for (size_t i = 0; i < a; i++)
            diff |= (unsigned)(unsigned char)h[i] ^ (unsigned)(unsigned char)key[i % b];
        if (diff == 0)
            found = k;
    }
    return found;
}

static enum MHD_Result first_call(fg_server *s, struct MHD_Connection *con, srv_conn *c,
                                  const char *url, const char *method) {
    c->started = true;
    c->con = con;
    c->key_idx = -1;
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(con, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    c->sock = ci ? ci->socket_context : NULL;
    bool path_known = false;
    c->route = route_find(method, url, &path_known);
    if (c->route && (c->route->flags & SRV_PREFIX))
        c->rest = fg_xstrdup(url + strlen(c->route->path));
    else if (!c->route)
        c->rest = fg_xstrdup(url); // for the Allow header of a 405
    snprintf(c->id_str, sizeof c->id_str, "%s-", c->route ? c->route->id_prefix : "req");
    if (!fg_srv_random_hex(c->id_str + strlen(c->id_str), SRV_ID_HEX))
        return fg_srv_error(s, con, c, 500, "server_error", "no_randomness",
                            "cannot read random bytes for the request id");
    const char *cl = MHD_lookup_connection_value(con, MHD_HEADER_KIND, "Content-Length");
    if (cl) { // digits only: the gate checked its syntax
        unsigned long long n = strtoull(cl, NULL, 10);
        if (n > s->opts.max_body) {
            c->too_big = true;
            // far beyond the limit: answer now instead of reading it all
            if (n > 16 * (unsigned long long)s->opts.max_body)
                return fg_srv_error(s, con, c, 413, "invalid_request_error",
                                    "request_too_large",
                                    "request body of %llu bytes exceeds the limit of %zu",
                                    n, s->opts.max_body);
        }
    }
    return MHD_YES;
}

static enum MHD_Result take_body(fg_server *s, srv_conn *c, const char *data, size_t n) {
    c->seen += n;
    if (c->seen > 16 * (uint64_t)s->opts.max_body)
        return MHD_NO; // a body that never ends: drop the connection
    if (c->too_big || c->body_len + n > s->opts.max_body) {
        c->too_big = true;
        free(c->body);
        c->body = NULL;
        c->body_len = c->body_cap = 0;
        return MHD_YES; // keep reading, discard
    }
    if (c->oom)
        return MHD_YES;
    if (c->body_len + n + 1 > c->body_cap) {
        size_t cap = c->body_cap ? c->body_cap : 4096;
        while (cap < c->body_len + n + 1)
            cap *= 2;
        char *nb = realloc(c->body, cap); // input-sized: no abort on failure
        if (!nb) {
            c->oom = true;
            return MHD_YES;
        }
        c->body = nb;
        c->body_cap = cap;
    }
    memcpy(c->body + c->body_len, data, n);
    c->body_len += n;
    c->body[c->body_len] = '\0';
    return MHD_YES;
}

static enum MHD_Result dispatch(fg_server *s, struct MHD_Connection *con, srv_conn *c,
                                const char *url, const char *method) {
    c->dispatched = true;
    if (!fg_srv_gate_request_in(s, c))
        return MHD_NO; // the gate already closed it (deadline)
    if (!c->route) {
        bool path_known = false;
        route_find(method, url, &path_known);
        if (!path_known)
            return fg_srv_error(s, con, c, 404, "invalid_request_error", "not_found",
                                "no route for %s %.200s", method, url);
        char allow[64];
        allowed_methods(url, allow, sizeof allow);
        return fg_srv_error(s, con, c, 405, "invalid_request_error", "method_not_allowed",
                            "method %s is not allowed on %.200s (allowed: %s)", method, url,
                            allow);
    }
    unsigned flags = c->route->flags;
    if ((flags & SRV_AUTH) && s->opts.n_api_keys > 0) {
        c->key_idx = auth_key(s, con);
        if (c->key_idx < 0)
            return fg_srv_error(s, con, c, 401, "authentication_error", "invalid_api_key",
                                "invalid or missing API key (Authorization: Bearer <key>)");
    }
    if (c->too_big)
        return fg_srv_error(s, con, c, 413, "invalid_request_error", "request_too_large",
                            "request body exceeds the limit of %zu bytes", s->opts.max_body);
    if (c->oom)
        return fg_srv_error(s, con, c, 500, "server_error", "out_of_memory",
                            "out of memory while reading the request body");
    if (flags & SRV_NEEDS_MODEL) {
        int state = atomic_load(&s->state);
        if (state == SRV_LOADING)
            return fg_srv_error(s, con, c, 503, "server_error", "model_loading",
                                "the model is still loading");
        if (state != SRV_READY)
            return fg_srv_error(s, con, c, 503, "server_error", "shutting_down",
                                "the server is shutting down");
    }
    return c->route->handler(s, con, c);
}

static enum MHD_Result on_access(void *cls, struct MHD_Connection *con, const char *url,
                                 const char *method, const char *version,
                                 const char *upload_data, size_t *upload_data_size,
                                 void **con_cls) {
    fg_server *s = cls;
    srv_conn *c = *con_cls;
    (void)version;
    if (!c) {
        c = fg_xcalloc(1, sizeof *c);
        *con_cls = c;
        return first_call(s, con, c, url, method);
    }
    if (*upload_data_size) {
        size_t n = *upload_data_size;
        *upload_data_size = 0;
        return take_body(s, c, upload_data, n);
    }
    // the whole request is in (or a suspended request was resumed)
    if (c->req)
        return c->req->embed ? fg_api_embeddings_resume(s, con, c) : fg_api_completions_resume(s, con, c);
    if (c->wait_req)
        return fg_api_request_delete_resume(s, con, c);
    if (c->dispatched)
        return MHD_NO; // resumed with nothing to do: cannot happen
    return dispatch(s, con, c, url, method);
}

static void on_completed(void *cls, struct MHD_Connection *con, void **con_cls,
                         enum MHD_RequestTerminationCode toe) {
    (void)con;
    fg_server *s = cls;
    srv_conn *c = *con_cls;
    if (!c)
        return;
    if (c->req) {
        srv_req *r = c->req;
        active_remove(s, r);
        pthread_mutex_lock(&r->mu);
        bool unfinished = r->n_done < r->n_choices;
        bool cut = toe != MHD_REQUEST_TERMINATED_COMPLETED_OK;
        if (cut && unfinished)
            r->client_gone = true;
        // the HTTP side is done with it: drop what only it needed, so the registry keeps
        // small records; events still arriving are counted, not queued
        r->http_done = true;
        r->con = NULL;
        r->conn_fd = -1;
        size_t n_ev = 0;
        srv_event *ev = fg_srv_take_events(r, &n_ev);
        pthread_mutex_unlock(&r->mu);
        fg_srv_events_free(ev, n_ev);
        free(ev);
        fg_api_request_free(&r->api);
        free(r->prompt);
        free(r->echo_text);
        free(r->echo_offs);
        free(r->out);
        for (int32_t i = 0; i < r->n_choices; i++)
            fg_srv_lp_free(&r->choices[i]);
        r->prompt = NULL;
        r->echo_text = NULL;
        r->echo_offs = NULL;
        r->out = NULL;
        r->out_len = r->out_off = r->out_cap = 0;
        if (cut && (unfinished || !c->responded))
            fg_srv_count_status(s, 499); // the client left before its answer ended
        if (unfinished)
            fg_srv_req_cancel(r);
        fg_srv_req_decref(r);
        atomic_fetch_sub(&s->n_answering, 1);
    }
    if (c->wait_req) {
        srv_req *r = c->wait_req;
        pthread_mutex_lock(&r->mu);
        for (srv_conn **pp = &r->waiters; *pp; pp = &(*pp)->wait_next)
            if (*pp == c) {
                *pp = c->wait_next;
                break;
            }
        pthread_mutex_unlock(&r->mu);
        fg_srv_req_decref(r);
    }
    free(c->rest);
    free(c->body);
    free(c);
    *con_cls = NULL;
}

// ---- lifecycle
static char *file_stem(const char *path) {
    const char *b = strrchr(path, '/');
    b = b ? b + 1 : path;
    size_t n = strlen(b);
    if (n > 5 && !strcmp(b + n - 5, ".gguf"))
        n -= 5;
    return fg_xstrndup(b, n);
}

static char *dup_or_null(const char *s) { return s ? fg_xstrdup(s) : NULL; }

static fg_status start_workers(fg_server *s) {
    srv_gate *g = &s->gate;
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_NO_LISTEN_SOCKET |
                     MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ITC;
    flags |= MHD_is_feature_supported(MHD_FEATURE_EPOLL) == MHD_YES ? MHD_USE_EPOLL
                                                                     : MHD_USE_POLL;
    g->n_workers = s->opts.http_threads;
    g->workers = fg_xcalloc((size_t)g->n_workers, sizeof *g->workers);
    for (int32_t i = 0; i < g->n_workers; i++) {
        g->workers[i] = MHD_start_daemon(
            flags, 0, NULL, NULL, on_access, s, MHD_OPTION_NOTIFY_COMPLETED, on_completed, s,
            MHD_OPTION_NOTIFY_CONNECTION, fg_srv_gate_notify, s,
            // the gate keeps the real limit; this only bounds a worker's own tables
            MHD_OPTION_CONNECTION_LIMIT, (unsigned)(s->opts.max_conns + 64),
            // silent connections (no bytes either way) are dropped: readers that stopped
            // reading (their request is cancelled); streams send keep-alives (sse.c)
            MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)SRV_IDLE_TIMEOUT_S,
            MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)(64 * 1024), MHD_OPTION_END);
        if (!g->workers[i])
            return FG_FAIL(FG_ERR_IO, "serve: cannot start HTTP worker %d of %d", i + 1,
                           g->n_workers);
    }
    return FG_OK;
}

static void stop_workers(fg_server *s) {
    srv_gate *g = &s->gate;
    for (int32_t i = 0; i < g->n_workers; i++)
        if (g->workers[i])
            MHD_stop_daemon(g->workers[i]);
    free(g->workers);
    g->workers = NULL;
    g->n_workers = 0;
}

fg_status fg_server_create(const fg_server_opts *opts, fg_server **out) {
    if (!opts || !opts->model_path)
        return FG_FAIL(FG_ERR_INVALID_ARG, "serve: no model path");
    if (opts->chat_template && fg_chat_format_from_name(opts->chat_template) == FG_CHAT_UNKNOWN)
        return FG_FAIL(FG_ERR_INVALID_ARG,
                       "--chat-template: unknown template '%s' (expected chatml, llama3, llama2, "
                       "mistral, glm4 or plain)",
                       opts->chat_template);
    if (opts->port < 0 || opts->port > 65535)
        return FG_FAIL(FG_ERR_INVALID_ARG, "--port: %d out of range", opts->port);
    if (opts->n_api_keys < 0 || (opts->n_api_keys > 0 && !opts->api_keys))
        return FG_FAIL(FG_ERR_INVALID_ARG, "serve: api_keys missing");
    for (int32_t k = 0; k < opts->n_api_keys; k++)
        if (!opts->api_keys[k] || !opts->api_keys[k][0])
            return FG_FAIL(FG_ERR_INVALID_ARG,
                           "--api-key: API key %d is empty (an unset variable?); give a "
                           "non-empty key, or no --api-key for a server without keys",
                           k + 1);
    char probe[8];
    if (!fg_srv_random_hex(probe, 4))
        return FG_FAIL(FG_ERR_IO, "serve: no source of random bytes (getrandom, /dev/urandom)");
    fg_server *s = fg_xcalloc(1, sizeof *s);
    s->gate.listen_fd = s->gate.epoll_fd = s->gate.wake_fd = -1;
    pthread_mutex_init(&s->gate.mu, NULL);
    s->opts = *opts;
    s->host = fg_xstrdup(opts->host ? opts->host : "127.0.0.1");
    if (opts->n_api_keys > 0) {
        s->api_keys = fg_xcalloc((size_t)opts->n_api_keys, sizeof(char *));
        for (int32_t k = 0; k < opts->n_api_keys; k++)
            s->api_keys[k] = fg_xstrdup(opts->api_keys[k]);
    }
    s->model_path = fg_xstrdup(opts->model_path);
    s->chat_template_name = dup_or_null(opts->chat_template);
    s->device = fg_xstrdup(opts->device ? opts->device : "auto");
    s->model_id = opts->alias ? fg_xstrdup(opts->alias) : file_stem(opts->model_path);
    s->opts.host = s->host;
    s->opts.api_keys = (const char *const *)s->api_keys;
    s->opts.model_path = s->model_path;
    s->opts.chat_template = s->chat_template_name;
    s->opts.device = s->device;
    s->opts.alias = s->model_id;
    if (s->opts.max_body == 0)
        s->opts.max_body = 1u << 20;
    if (s->opts.max_n <= 0)
        s->opts.max_n = 16;
    if (s->opts.max_n > 64)
        s->opts.max_n = 64; // fg_srv_req_cancel handles up to 64 choices
    if (s->opts.http_threads <= 0)
        s->opts.http_threads = 4;
    if (s->opts.max_conns <= 0)
        s->opts.max_conns = 512;
    if (s->opts.max_conns_per_ip <= 0)
        s->opts.max_conns_per_ip = 128;
    if (!(s->opts.request_timeout_s > 0))
        s->opts.request_timeout_s = 30.0;
    atomic_init(&s->state, SRV_LOADING);
    atomic_init(&s->http_stopping, false);
    atomic_init(&s->n_streams, 0);
    atomic_init(&s->n_answering, 0);
    atomic_init(&s->n_suspended, 0);
    for (int i = 0; i <= SRV_N_CODES; i++)
        atomic_init(&s->http_counts[i], 0);
    for (int i = 0; i < SRV_N_REFUSE; i++)
        atomic_init(&s->gate.refused[i], 0);
    pthread_rwlock_init(&s->engine_lock, NULL);
    pthread_mutex_init(&s->reg_mu, NULL);
    pthread_mutex_init(&s->act_mu, NULL);
    s->t_start = fg_time_s();

    fg_status st = fg_srv_gate_listen(s, s->host, opts->port, &s->port);
    if (st == FG_OK)
        st = start_workers(s);
    if (st == FG_OK)
        st = fg_srv_gate_start(s);
    if (st != FG_OK) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", fg_last_error());
        fg_server_destroy(s);
        return FG_FAIL(st, "%s", msg);
    }
    *out = s;
    return FG_OK;
}

int32_t fg_server_port(const fg_server *s) { return s->port; }

const fg_model_info *fg_server_model_info(const fg_server *s) {
    return s->model && atomic_load(&s->state) != SRV_LOADING ? fg_model_get_info(s->model) : NULL;
}

int32_t fg_server_n_ctx(const fg_server *s) { return s->n_ctx; }

// On a device with its own memory (a GPU), the KV pool takes what is left after the weights and
// the scratch, up to --gpu-memory-fraction of the device (vLLM's gpu_memory_utilization), less
// a margin for what the runtime allocates later (recorded steps, library workspaces). 0 pages:
// the engine's default (parallel x ctx), as on the CPU.
#define KV_MARGIN_BYTES ((uint64_t)512 << 20)
static fg_status kv_pages_from_device(fg_server *s, int32_t page_size, int32_t *n_pages) {
    *n_pages = 0;
    uint64_t free_b = 0, total_b = 0;
    FG_TRY(fg_backend_mem_info(s->backend, &free_b, &total_b));
    if (total_b == 0)
        return FG_OK;
    double frac = s->opts.gpu_memory_fraction > 0 ? s->opts.gpu_memory_fraction : 0.9;
    const fg_model_info *mi = fg_model_get_info(s->model);
    uint64_t used = total_b - free_b, cap = (uint64_t)(frac * (double)total_b);
    // K and V of every layer, a page's slots of n_head_kv * head_dim elements in the KV type
    // (Q8_0: 34 bytes per 32; head_dim not whole blocks is refused when the store is made)
    const uint32_t kt = s->opts.kv_type ? s->opts.kv_type : FG_TYPE_F16;
    const uint64_t blk = (uint64_t)fg_type_block_size(kt), row = (uint64_t)mi->n_head_kv * (uint64_t)mi->head_dim;
    uint64_t page_bytes = blk ? 2ull * (uint64_t)mi->n_layer * ((row + blk - 1) / blk) * fg_type_block_bytes(kt) *
                                    (uint64_t)page_size
                              : 0;
    uint64_t budget = cap > used + KV_MARGIN_BYTES ? cap - used - KV_MARGIN_BYTES : 0;
    uint64_t pages = page_bytes ? budget / page_bytes : 0;
    int32_t n_ctx = s->opts.n_ctx > 0 ? s->opts.n_ctx : (mi->n_ctx_train < 4096 ? mi->n_ctx_train : 4096);
    uint64_t need = ((uint64_t)n_ctx + (uint64_t)page_size - 1) / (uint64_t)page_size;
    if (pages < need)
        return FG_FAIL(FG_ERR_NOMEM,
                       "%s: KV pool: %.0f MiB left of %.2f of %.1f GiB device memory (weights and scratch take "
                       "%.1f GiB) hold %llu pages, fewer than one %d-token sequence needs (%llu); raise "
                       "--gpu-memory-fraction or lower --ctx",
                       s->model_path, (double)budget / (1 << 20), frac, (double)total_b / (1 << 30),
                       (double)used / (1 << 30), (unsigned long long)pages, n_ctx, (unsigned long long)need);
    if (pages > (uint64_t)INT32_MAX / (uint64_t)page_size)
        pages = (uint64_t)INT32_MAX / (uint64_t)page_size;
    *n_pages = (int32_t)pages;
    return FG_OK;
}

// Whether the file is an embedding model (issue 14: <arch>.pooling_type mean, cls or last) and
// its input limit (sentence_transformers.max_seq_length, else <arch>.context_length), read
// before loading so that the model gets the embedder's step sizes. A file that cannot be read
// is not one: fg_model_load then says what is wrong with it.
static bool peek_embedding_model(const char *path, int32_t *max_seq) {
    fg_gguf *g = NULL;
    if (fg_gguf_open(path, &g) != FG_OK)
        return false;
    bool embeds = false;
    const char *arch;
    size_t n;
    char key[160];
    int64_t v = 0;
    *max_seq = 512;
    if (fg_gguf_find_key(g, "general.architecture") >= 0 && fg_gguf_get_str(g, "general.architecture", &arch, &n) == FG_OK &&
        n < 64) {
        snprintf(key, sizeof key, "%.*s.pooling_type", (int)n, arch);
        embeds = fg_gguf_find_key(g, key) >= 0 && fg_gguf_get_int(g, key, &v) == FG_OK && v >= 1 && v <= 3;
        snprintf(key, sizeof key, "%.*s.context_length", (int)n, arch);
        if (fg_gguf_find_key(g, key) >= 0 && fg_gguf_get_int(g, key, &v) == FG_OK && v > 0 && v < (1 << 20))
            *max_seq = (int32_t)v;
        if (fg_gguf_find_key(g, "sentence_transformers.max_seq_length") >= 0 &&
            fg_gguf_get_int(g, "sentence_transformers.max_seq_length", &v) == FG_OK && v > 0 && v < *max_seq)
            *max_seq = (int32_t)v;
    }
    fg_gguf_close(g);
    return embeds;
}

// An embedding model gets the embedder (issue 14) instead of the engine: no KV pool, no chat
// template; completions are refused (api_completions.c), /v1/embeddings served.
static fg_status load_embedder(fg_server *s) {
    const fg_model_info *mi = fg_model_get_info(s->model);
    fg_embedder *e = NULL;
    fg_embedder_opts eo = {0};
    FG_TRY(fg_embedder_create(s->model, &eo, &e));
    s->embeds = true;
    s->embed_limit = mi->max_embed_tokens;
    s->n_ctx = mi->max_embed_tokens;
    s->queue_cap = s->opts.queue_cap > 0 ? s->opts.queue_cap : 256;
    fprintf(stderr, "forge serve: %s; weights %.2f GiB, scratch %.2f GiB; embedding model (%s pooling%s, %d "
                    "dimensions, inputs up to %d tokens, %d tokens / %d inputs a step)\n",
            fg_backend_describe(s->backend), (double)mi->weight_bytes / (1 << 30),
            (double)mi->scratch_bytes / (1 << 30), fg_pooling_name(mi->pooling), mi->normalize ? ", normalised" : "",
            mi->n_embd, mi->max_embed_tokens, mi->max_batch_tokens, mi->max_seqs);
    pthread_rwlock_wrlock(&s->engine_lock);
    s->embedder = e;
    pthread_rwlock_unlock(&s->engine_lock);
    atomic_store(&s->state, SRV_READY);
    return FG_OK;
}

fg_status fg_server_load(fg_server *s) {
    fg_status st;
    fg_backend_opts bo = {.n_threads = s->opts.n_threads, .device = s->opts.gpu};
    fg_model_opts mo;
    memset(&mo, 0, sizeof mo);
    mo.max_seqs = s->opts.n_parallel > 0 ? s->opts.n_parallel : 0;
    // logits come back for one row per sequence plus prompt scoring (the engine's 64 echo rows)
    mo.max_logit_rows = mo.max_seqs > 0 ? mo.max_seqs + 64 : 0;
    mo.tp_size = s->opts.tensor_parallel; // rank 0 here; the workers get backends like bo on the next GPUs
    mo.tp_backend = &bo;
    int32_t max_seq = 0;
    if (peek_embedding_model(s->model_path, &max_seq)) {
        // embeddings (issue 14): steps of many whole inputs (--parallel: inputs a step)
        mo.max_batch_tokens = FG_MAX(2048, FG_MIN(max_seq, 1 << 15));
        mo.max_seqs = s->opts.n_parallel > 0 ? s->opts.n_parallel : 256;
        mo.max_logit_rows = 0;
    }
    st = fg_backend_create(strcmp(s->device, "auto") ? s->device : "cuda", &bo, &s->backend);
    if (st != FG_OK && !strcmp(s->device, "auto")) { // auto: the GPU when usable, else the CPU
        if (st != FG_ERR_UNSUPPORTED) // a GPU build on a machine without a usable GPU
            fprintf(stderr, "forge serve: no usable GPU (%s); running on the CPU\n", fg_last_error());
        st = fg_backend_create("cpu", &bo, &s->backend);
    }
    if (st != FG_OK)
        goto fail;
    st = fg_model_load(s->model_path, s->backend, &mo, &s->model);
    if (st != FG_OK)
        goto fail;
    s->tok = fg_model_tokenizer(s->model);
    s->n_vocab = fg_tokenizer_n_vocab(s->tok);
    if (fg_model_get_info(s->model)->pooling != 0) {
        if ((st = load_embedder(s)) != FG_OK)
            goto fail;
        return FG_OK;
    }
    st = fg_chat_format_select(fg_model_gguf(s->model), s->chat_template_name, s->model_path,
                               &s->chat_format);
    if (st != FG_OK)
        goto fail;
    fg_engine_opts eo;
    memset(&eo, 0, sizeof eo);
    eo.n_ctx = s->opts.n_ctx;
    eo.max_seqs = s->opts.n_parallel;
    eo.queue_cap = s->opts.queue_cap;
    eo.page_size = 16;
    if (s->opts.kv_tokens > 0) { // a pool smaller than parallel x ctx: the engine preempts
        eo.n_pages = (s->opts.kv_tokens + eo.page_size - 1) / eo.page_size;
    } else if ((st = kv_pages_from_device(s, eo.page_size, &eo.n_pages)) != FG_OK) {
        goto fail;
    }
    eo.prefix_cache = !s->opts.no_prefix_cache; // issue 13: on unless --no-prefix-cache
    eo.kv_type = s->opts.kv_type ? s->opts.kv_type : FG_TYPE_F16;
    fg_engine *e = NULL;
    st = fg_engine_create(s->model, &eo, &e);
    if (st != FG_OK)
        goto fail;
    s->n_ctx = fg_engine_n_ctx(e);
    s->queue_cap = s->opts.queue_cap > 0 ? s->opts.queue_cap : 256;
    {
        const fg_model_info *mi = fg_model_get_info(s->model);
        const double G = 1024.0 * 1024.0 * 1024.0;
        fprintf(stderr, "forge serve: %s; weights %.2f GiB, KV pool %.2f GiB (%d tokens, %s), scratch %.2f GiB%s\n",
                fg_backend_describe(s->backend), (double)mi->weight_bytes / G, (double)fg_engine_kv_bytes(e) / G,
                fg_engine_kv_tokens(e), fg_type_name(eo.kv_type), (double)mi->scratch_bytes / G,
                mi->tp_size > 1 ? " on rank 0 of a tensor-parallel group (each rank holds its own share)" : "");
    }
    pthread_rwlock_wrlock(&s->engine_lock);
    s->engine = e;
    pthread_rwlock_unlock(&s->engine_lock);
    atomic_store(&s->state, SRV_READY);
    return FG_OK;
fail:
    atomic_store(&s->state, SRV_FAILED);
    return st;
}

static void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000 * 1000};
    nanosleep(&ts, NULL);
}

void fg_server_shutdown(fg_server *s, double grace_s) {
    if (!s || s->shut_down)
        return;
    s->shut_down = true;
    double t0 = fg_time_s();
    atomic_store(&s->state, SRV_STOPPING);
    fg_srv_gate_stop_accepting(s);
    // let what is queued or running finish
    pthread_rwlock_rdlock(&s->engine_lock);
    fg_engine *e = s->engine;
    while (e && fg_time_s() - t0 < grace_s) {
        fg_engine_stats st;
        fg_engine_get_stats(e, &st);
        if (st.queue_depth == 0 && st.running == 0)
            break;
        sleep_ms(20);
    }
    fg_embedder *em = s->embedder; // issue 14: its queue drains the same way
    while (em && fg_time_s() - t0 < grace_s) {
        fg_embedder_stats est;
        fg_embedder_get_stats(em, &est);
        if (est.queued_requests == 0)
            break;
        sleep_ms(20);
    }
    pthread_rwlock_unlock(&s->engine_lock);
    pthread_rwlock_wrlock(&s->engine_lock);
    e = s->engine;
    s->engine = NULL;
    em = s->embedder;
    s->embedder = NULL;
    pthread_rwlock_unlock(&s->engine_lock);
    if (e) {
        double left = grace_s - (fg_time_s() - t0);
        fg_engine_destroy(e, left > 0 ? left : 0); // cancels the rest: DONE reaches every stream
    }
    fg_embedder_destroy(em); // what is still queued is cancelled: every callback runs
    // give the answers (streams and JSON bodies) a moment to go out: stopping the workers
    // closes every connection, a response not yet sent included
    while (atomic_load(&s->n_answering) > 0 && fg_time_s() - t0 < grace_s + 2.0)
        sleep_ms(10);
    // no connection may stay suspended when a worker stops: the sweep resumes them all and
    // handlers no longer suspend
    atomic_store(&s->http_stopping, true);
    double t1 = fg_time_s();
    while (atomic_load(&s->n_suspended) > 0 && fg_time_s() - t1 < 2.0)
        sleep_ms(10);
    fg_srv_gate_stop(s);
    stop_workers(s);
}

void fg_server_destroy(fg_server *s) {
    if (!s)
        return;
    fg_server_shutdown(s, 0);
    fg_srv_gate_destroy(s);
    pthread_mutex_lock(&s->reg_mu);
    while (s->reg_head) {
        srv_req *r = s->reg_head;
        registry_unlink(s, r);
        fg_srv_req_decref(r);
    }
    pthread_mutex_unlock(&s->reg_mu);
    fg_model_destroy(s->model);
    fg_backend_destroy(s->backend);
    pthread_rwlock_destroy(&s->engine_lock);
    pthread_mutex_destroy(&s->reg_mu);
    pthread_mutex_destroy(&s->act_mu);
    pthread_mutex_destroy(&s->gate.mu);
    free(s->host);
    for (int32_t k = 0; k < s->opts.n_api_keys; k++)
        free(s->api_keys[k]);
    free(s->api_keys);
    free(s->model_path);
    free(s->chat_template_name);
    free(s->device);
    free(s->model_id);
    free(s);
}
