// server.c - the HTTP side of `forge serve`: the libmicrohttpd daemon (one thread per
// connection), routing, the API key check, body limits, the registry of completion requests,
// start-up (listener first, then the model: /health says "loading" meanwhile) and the
// graceful shutdown. Not here: endpoint bodies (api_*.c), SSE (sse.c), parsing (api_parse.c).
// Called by src/cli/cmd_serve.c through include/forge/server.h.
#include "server/server_internal.h"

#include "base/status.h"
#include "base/util.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define REGISTRY_KEEP 512 // finished requests remembered for GET /v1/requests/{id}
#define SRV_CONN_TIMEOUT_S 60 // seconds a connection may stay silent

const int fg_srv_codes[SRV_N_CODES] = {200, 400, 401, 404, 405, 413, 429, 499, 500, 503};

enum {
    R_NOT_FOUND = 0,
    R_COMPLETIONS,
    R_CHAT,
    R_MODELS,
    R_HEALTH,
    R_METRICS,
    R_REQUESTS,
    R_TEMPLATE,
};

const char *fg_srv_id_prefix(int route) {
    return route == R_COMPLETIONS ? "cmpl" : route == R_CHAT ? "chatcmpl" : "req";
}

void fg_srv_count_status(fg_server *s, int status) {
    int k = SRV_N_CODES;
    for (int i = 0; i < SRV_N_CODES; i++)
        if (fg_srv_codes[i] == status)
            k = i;
    atomic_fetch_add(&s->http_counts[k], 1);
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
    char rid[48];
    snprintf(rid, sizeof rid, "%s-%llu", fg_srv_id_prefix(c->route), (unsigned long long)c->id);
    MHD_add_response_header(resp, "Content-Type", content_type);
    MHD_add_response_header(resp, "X-Request-Id", rid);
    if (status == 429 || status == 503)
        MHD_add_response_header(resp, "Retry-After", "1");
    if (status == 401)
        MHD_add_response_header(resp, "WWW-Authenticate", "Bearer");
    fg_srv_count_status(s, status);
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
        fprintf(stderr, "forge serve: %s-%llu: %d %s\n", fg_srv_id_prefix(c->route),
                (unsigned long long)c->id, e->http_status, e->message);
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

// ---- requests and the registry
void fg_srv_req_decref(srv_req *r) {
    if (!r || atomic_fetch_sub(&r->refs, 1) != 1)
        return;
    if (r->q)
        fg_srv_events_free(r->q + r->q_head, r->q_len - r->q_head);
    free(r->q);
    fg_api_request_free(&r->api);
    free(r->prompt);
    free(r->echo_text);
    free(r->choices);
    free(r->out);
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

srv_req *fg_srv_registry_find(fg_server *s, uint64_t id) {
    srv_req *found = NULL;
    pthread_mutex_lock(&s->reg_mu);
    for (srv_req *it = s->reg_tail; it; it = it->reg_prev)
        if (it->id == id) {
            atomic_fetch_add(&it->refs, 1);
            found = it;
            break;
        }
    pthread_mutex_unlock(&s->reg_mu);
    return found;
}

void fg_srv_req_cancel(srv_req *r) {
    fg_server *s = r->srv;
    uint64_t ids[64];
    int n = 0;
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

// ---- routing
static int route_of(const char *url, const char **rest) {
    *rest = NULL;
    if (!strcmp(url, "/v1/completions") || !strcmp(url, "/completions"))
        return R_COMPLETIONS;
    if (!strcmp(url, "/v1/chat/completions") || !strcmp(url, "/chat/completions"))
        return R_CHAT;
    if (!strcmp(url, "/v1/models") || !strcmp(url, "/models"))
        return R_MODELS;
    if (!strcmp(url, "/health") || !strcmp(url, "/v1/health"))
        return R_HEALTH;
    if (!strcmp(url, "/metrics"))
        return R_METRICS;
    if (!strcmp(url, "/apply-template") || !strcmp(url, "/v1/apply-template"))
        return R_TEMPLATE;
    if (!strncmp(url, "/v1/requests/", 13) && url[13]) {
        *rest = url + 13;
        return R_REQUESTS;
    }
    return R_NOT_FOUND;
}

static const char *allowed_methods(int route) {
    switch (route) {
    case R_COMPLETIONS:
    case R_CHAT:
    case R_TEMPLATE: return "POST";
    case R_REQUESTS: return "GET, DELETE";
    default: return "GET";
    }
}

static bool method_ok(int route, const char *method) {
    switch (route) {
    case R_COMPLETIONS:
    case R_CHAT:
    case R_TEMPLATE: return !strcmp(method, "POST");
    case R_REQUESTS: return !strcmp(method, "GET") || !strcmp(method, "DELETE");
    default: return !strcmp(method, "GET") || !strcmp(method, "HEAD");
    }
}

static bool auth_ok(fg_server *s, struct MHD_Connection *con) {
    if (!s->api_key)
        return true;
    const char *h = MHD_lookup_connection_value(con, MHD_HEADER_KIND, "Authorization");
    if (!h || strncasecmp(h, "Bearer ", 7))
        return false;
    h += 7;
    size_t a = strlen(h), b = strlen(s->api_key);
    unsigned diff = (unsigned)(a ^ b);
    for (size_t i = 0; i < a; i++)
        diff |= (unsigned)(unsigned char)h[i] ^ (unsigned)(unsigned char)s->api_key[i % (b ? b : 1)];
    return diff == 0;
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
        c->id = atomic_fetch_add(&s->next_id, 1);
        const char *rest;
        c->route = route_of(url, &rest);
        *con_cls = c;
        const char *cl = MHD_lookup_connection_value(con, MHD_HEADER_KIND, "Content-Length");
        if (cl) {
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
    if (*upload_data_size) {
        size_t n = *upload_data_size;
        *upload_data_size = 0;
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
        if (c->oom)
            return MHD_YES;
        memcpy(c->body + c->body_len, upload_data, n);
        c->body_len += n;
        c->body[c->body_len] = '\0';
        return MHD_YES;
    }
    // the whole request is in
    const char *rest = NULL;
    route_of(url, &rest);
    if (c->route == R_NOT_FOUND)
        return fg_srv_error(s, con, c, 404, "invalid_request_error", "not_found",
                            "no route for %s %.200s", method, url);
    if (!method_ok(c->route, method)) {
        struct MHD_Response *resp;
        fg_api_error e = {.http_status = 405, .type = "invalid_request_error",
                          .code = "method_not_allowed"};
        snprintf(e.message, sizeof e.message, "method %s is not allowed on %.200s (allowed: %s)",
                 method, url, allowed_methods(c->route));
        json_t *j = fg_srv_error_json(e.message, e.type, NULL, e.code);
        char *text = json_dumps(j, JSON_COMPACT);
        json_decref(j);
        resp = MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_FREE);
        char rid[48];
        snprintf(rid, sizeof rid, "req-%llu", (unsigned long long)c->id);
        MHD_add_response_header(resp, "Content-Type", "application/json");
        MHD_add_response_header(resp, "X-Request-Id", rid);
        MHD_add_response_header(resp, "Allow", allowed_methods(c->route));
        fg_srv_count_status(s, 405);
        enum MHD_Result ret = MHD_queue_response(con, 405, resp);
        MHD_destroy_response(resp);
        return ret;
    }
    if (c->route == R_HEALTH)
        return fg_api_health(s, con, c);
    if (c->route == R_METRICS)
        return fg_api_metrics(s, con, c);
    if (!auth_ok(s, con))
        return fg_srv_error(s, con, c, 401, "authentication_error", "invalid_api_key",
                            "invalid or missing API key (Authorization: Bearer <key>)");
    if (c->too_big)
        return fg_srv_error(s, con, c, 413, "invalid_request_error", "request_too_large",
                            "request body exceeds the limit of %zu bytes", s->opts.max_body);
    if (c->oom)
        return fg_srv_error(s, con, c, 500, "server_error", "out_of_memory",
                            "out of memory while reading the request body");
    int state = atomic_load(&s->state);
    if (state == SRV_LOADING)
        return fg_srv_error(s, con, c, 503, "server_error", "model_loading",
                            "the model is still loading");
    if (state != SRV_READY)
        return fg_srv_error(s, con, c, 503, "server_error", "shutting_down",
                            "the server is shutting down");
    switch (c->route) {
    case R_COMPLETIONS: return fg_api_completions(s, con, c, FG_API_COMPLETION);
    case R_CHAT: return fg_api_completions(s, con, c, FG_API_CHAT);
    case R_MODELS: return fg_api_models(s, con, c);
    case R_TEMPLATE: return fg_api_apply_template(s, con, c);
    case R_REQUESTS: return fg_api_request_get(s, con, c, rest, !strcmp(method, "DELETE"));
    default: break;
    }
    return fg_srv_error(s, con, c, 404, "invalid_request_error", "not_found", "no route");
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
        pthread_mutex_lock(&r->mu);
        bool unfinished = r->n_done < r->n_choices;
        if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK && unfinished)
            r->client_gone = true;
        // the HTTP side is done with it: drop what only it needed, so the registry keeps
        // small records; events still arriving are counted, not queued
        r->http_done = true;
        size_t n_ev = 0;
        srv_event *ev = fg_srv_take_events(r, &n_ev);
        pthread_mutex_unlock(&r->mu);
        fg_srv_events_free(ev, n_ev);
        free(ev);
        fg_api_request_free(&r->api);
        free(r->prompt);
        free(r->echo_text);
        free(r->out);
        r->prompt = NULL;
        r->echo_text = NULL;
        r->out = NULL;
        r->out_len = r->out_off = r->out_cap = 0;
        if (unfinished) {
            if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK)
                fg_srv_count_status(s, 499);
            fg_srv_req_cancel(r);
        }
        fg_srv_req_decref(r);
        atomic_fetch_sub(&s->n_answering, 1);
    }
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
    fg_server *s = fg_xcalloc(1, sizeof *s);
    s->opts = *opts;
    s->host = fg_xstrdup(opts->host ? opts->host : "127.0.0.1");
    s->api_key = opts->api_key && *opts->api_key ? fg_xstrdup(opts->api_key) : NULL;
    s->model_path = fg_xstrdup(opts->model_path);
    s->chat_template_name = dup_or_null(opts->chat_template);
    s->device = fg_xstrdup(opts->device ? opts->device : "auto");
    s->model_id = opts->alias ? fg_xstrdup(opts->alias) : file_stem(opts->model_path);
    s->opts.host = s->host;
    s->opts.api_key = s->api_key;
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
    atomic_init(&s->state, SRV_LOADING);
    atomic_init(&s->next_id, 1);
    atomic_init(&s->n_streams, 0);
    atomic_init(&s->n_answering, 0);
    for (int i = 0; i <= SRV_N_CODES; i++)
        atomic_init(&s->http_counts[i], 0);
    pthread_rwlock_init(&s->engine_lock, NULL);
    pthread_mutex_init(&s->reg_mu, NULL);
    s->t_start = fg_time_s();

    // the bind address: a numeric address or a name resolved once (first result)
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD |
                     MHD_USE_POLL | MHD_USE_ITC;
    struct addrinfo hints, *ai = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE;
    int gai = getaddrinfo(s->host, NULL, &hints, &ai);
    if (gai != 0 || !ai || ai->ai_addrlen > sizeof ss) {
        if (ai)
            freeaddrinfo(ai);
        fg_server_destroy(s);
        return FG_FAIL(FG_ERR_INVALID_ARG, "--host: cannot resolve '%s': %s", opts->host,
                       gai ? gai_strerror(gai) : "no address");
    }
    memcpy(&ss, ai->ai_addr, ai->ai_addrlen);
    freeaddrinfo(ai);
    if (ss.ss_family == AF_INET6) {
        ((struct sockaddr_in6 *)&ss)->sin6_port = htons((uint16_t)opts->port);
        flags |= MHD_USE_IPv6;
    } else {
        ((struct sockaddr_in *)&ss)->sin_port = htons((uint16_t)opts->port);
    }
    s->daemon = MHD_start_daemon(flags, (uint16_t)opts->port, NULL, NULL, on_access, s,
                                 MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss,
                                 MHD_OPTION_NOTIFY_COMPLETED, on_completed, s,
                                 MHD_OPTION_CONNECTION_LIMIT, (unsigned)1000,
                                 // idle clients (no bytes either way) are dropped: slow
                                 // headers/bodies, readers that stopped reading (their
                                 // request is cancelled); streams send keep-alives (sse.c)
                                 MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)SRV_CONN_TIMEOUT_S,
                                 MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)(64 * 1024),
                                 MHD_OPTION_END);
    if (!s->daemon) {
        int port = opts->port;
        char host[256];
        snprintf(host, sizeof host, "%s", s->host);
        fg_server_destroy(s);
        return FG_FAIL(FG_ERR_IO, "serve: cannot listen on %s:%d (address in use or not local?)",
                       host, port);
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(s->daemon, MHD_DAEMON_INFO_BIND_PORT);
    s->port = di ? di->port : opts->port;
    *out = s;
    return FG_OK;
}

int32_t fg_server_port(const fg_server *s) { return s->port; }

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
    st = fg_backend_create(strcmp(s->device, "auto") ? s->device : "cuda", &bo, &s->backend);
    if (st != FG_OK && !strcmp(s->device, "auto")) { // auto: the GPU when usable, else the CPU
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
    if (s->chat_template_name) {
        s->chat_format = fg_chat_format_from_name(s->chat_template_name);
    } else {
        const char *t = NULL;
        size_t tl = 0;
        const fg_gguf *g = fg_model_gguf(s->model);
        if (g && fg_gguf_find_key(g, "tokenizer.chat_template") >= 0 &&
            fg_gguf_get_str(g, "tokenizer.chat_template", &t, &tl) != FG_OK)
            goto fail_msg;
        s->chat_format = fg_chat_format_detect(t, tl);
        if (s->chat_format == FG_CHAT_UNKNOWN) {
            st = FG_FAIL(FG_ERR_UNSUPPORTED,
                         "%s: tokenizer.chat_template is not a format forge recognises; pass "
                         "--chat-template chatml|llama3|llama2|mistral|glm4|plain",
                         s->model_path);
            goto fail;
        }
    }
    fg_engine_opts eo;
    memset(&eo, 0, sizeof eo);
    eo.n_ctx = s->opts.n_ctx;
    eo.max_seqs = s->opts.n_parallel;
    eo.queue_cap = s->opts.queue_cap;
    eo.page_size = 16;
    if (s->opts.kv_tokens > 0) // a pool smaller than parallel x ctx: the engine preempts
        eo.n_pages = (s->opts.kv_tokens + eo.page_size - 1) / eo.page_size;
    fg_engine *e = NULL;
    st = fg_engine_create(s->model, &eo, &e);
    if (st != FG_OK)
        goto fail;
    s->n_ctx = fg_engine_n_ctx(e);
    s->queue_cap = s->opts.queue_cap > 0 ? s->opts.queue_cap : 256;
    {
        const fg_model_info *mi = fg_model_get_info(s->model);
        const double G = 1024.0 * 1024.0 * 1024.0;
        fprintf(stderr, "forge serve: %s; weights %.2f GiB, KV pool %.2f GiB (%d tokens), scratch %.2f GiB%s\n",
                fg_backend_describe(s->backend), (double)mi->weight_bytes / G, (double)fg_engine_kv_bytes(e) / G,
                fg_engine_kv_tokens(e), (double)mi->scratch_bytes / G,
                mi->tp_size > 1 ? " on rank 0 of a tensor-parallel group (each rank holds its own share)" : "");
    }
    pthread_rwlock_wrlock(&s->engine_lock);
    s->engine = e;
    pthread_rwlock_unlock(&s->engine_lock);
    atomic_store(&s->state, SRV_READY);
    return FG_OK;
fail_msg:
    st = FG_ERR_FORMAT;
fail:
    atomic_store(&s->state, SRV_FAILED);
    return st;
}

void fg_server_shutdown(fg_server *s, double grace_s) {
    if (!s || s->shut_down)
        return;
    s->shut_down = true;
    double t0 = fg_time_s();
    atomic_store(&s->state, SRV_STOPPING);
    if (s->daemon) {
        MHD_socket fd = MHD_quiesce_daemon(s->daemon); // stop accepting
        if (fd != MHD_INVALID_SOCKET)
            close(fd);
    }
    // let what is queued or running finish
    pthread_rwlock_rdlock(&s->engine_lock);
    fg_engine *e = s->engine;
    while (e && fg_time_s() - t0 < grace_s) {
        fg_engine_stats st;
        fg_engine_get_stats(e, &st);
        if (st.queue_depth == 0 && st.running == 0)
            break;
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    pthread_rwlock_unlock(&s->engine_lock);
    pthread_rwlock_wrlock(&s->engine_lock);
    e = s->engine;
    s->engine = NULL;
    pthread_rwlock_unlock(&s->engine_lock);
    if (e) {
        double left = grace_s - (fg_time_s() - t0);
        fg_engine_destroy(e, left > 0 ? left : 0); // cancels the rest: DONE reaches every stream
    }
    // give the answers (streams and JSON bodies) a moment to go out: stopping the daemon closes
    // every connection, a response not yet sent included
    while (atomic_load(&s->n_answering) > 0 && fg_time_s() - t0 < grace_s + 2.0) {
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    if (s->daemon) {
        MHD_stop_daemon(s->daemon);
        s->daemon = NULL;
    }
}

void fg_server_destroy(fg_server *s) {
    if (!s)
        return;
    fg_server_shutdown(s, 0);
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
    free(s->host);
    free(s->api_key);
    free(s->model_path);
    free(s->chat_template_name);
    free(s->device);
    free(s->model_id);
    free(s);
}
