// server_internal.h - what the server's files share: the server object, one HTTP connection's
// state (srv_conn), one completion request (srv_req: its event queue fed by the engine callback,
// its choices, its place in the request registry) and the JSON/HTTP helpers.
// Threads: MHD runs one thread per connection; the engine callback runs on the scheduler
// thread and only copies events into srv_req under its mutex (never waits).
#ifndef FG_SERVER_INTERNAL_H
#define FG_SERVER_INTERNAL_H

#include "forge/server.h"
#include "forge/model.h"

#include <jansson.h>
#include <microhttpd.h>
#include <pthread.h>
#include <stdatomic.h>

enum { SRV_LOADING = 0, SRV_READY = 1, SRV_STOPPING = 2, SRV_FAILED = 3 };

// HTTP status codes counted for /metrics.
#define SRV_N_CODES 10
extern const int fg_srv_codes[SRV_N_CODES];

struct fg_server {
    fg_server_opts opts;       // strings below are owned copies
    char *host, *api_key, *model_path, *chat_template_name, *device;
    char *model_id;            // --alias or the file stem
    struct MHD_Daemon *daemon;
    int32_t port;
    atomic_int state;
    fg_backend *backend;
    fg_model *model;
    const fg_tokenizer *tok;   // borrowed from the model
    fg_chat_format chat_format;
    int32_t n_ctx, n_vocab;
    int32_t queue_cap;
    pthread_rwlock_t engine_lock; // read: calls into engine; write: destroying it
    fg_engine *engine;
    atomic_uint_fast64_t next_id;
    atomic_uint_fast64_t http_counts[SRV_N_CODES + 1]; // last: other codes
    // registry of completion requests (live + the most recent finished ones)
    pthread_mutex_t reg_mu;
    struct srv_req *reg_head, *reg_tail;
    int32_t reg_n;
    atomic_int n_streams;      // open streaming responses
    atomic_int n_answering;    // completion requests whose connection has not finished yet
    bool shut_down;
    double t_start;
};

// One copied engine event.
typedef struct srv_event {
    fg_event_kind kind;
    int32_t choice;
    int32_t token;
    float logprob;
    int32_t n_top;
    fg_top_logprob *top;       // [n_top] or NULL
    char *text;                // TOKEN text delta / DONE held-back text flushed (owned)
    size_t text_len;
    char *error;               // DONE with a failure: the engine's message (owned)
    fg_finish_reason finish;
    fg_status status;
    int32_t n_prompt, n_gen;
    int32_t n_cached;          // DONE: prompt tokens from the prefix cache
} srv_event;

typedef struct srv_choice {
    struct srv_req *req;       // borrowed back-pointer
    int32_t index;
    uint64_t engine_id;
    bool submitted, done;
    fg_finish_reason finish;
    fg_status status;
    int32_t n_gen;
    // streaming/formatting state
    bool sent_first;           // chat: role delta sent; completions: echo sent
    size_t text_off;           // bytes of text emitted so far (for text_offset)
    int32_t n_prompt_lp;       // prompt logprob events seen
} srv_choice;

typedef struct srv_req {
    fg_server *srv;            // borrowed
    uint64_t id;
    char id_str[40];           // "cmpl-N" / "chatcmpl-N"
    atomic_int refs;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    srv_event *q;              // pending events [q_len], consumed from q_head
    size_t q_head, q_len, q_cap;
    fg_api_request api;        // parsed body (owned)
    int32_t *prompt;           // [n_prompt] tokens submitted
    int32_t n_prompt;
    char *echo_text;           // prompt text for echo (owned) or NULL
    size_t echo_len;
    int64_t created;
    srv_choice *choices;       // [n_choices]
    int32_t n_choices;
    int32_t n_done;            // choices whose DONE arrived (guarded by mu)
    int32_t n_gen_total;
    int32_t n_cached;          // prompt tokens from the prefix cache: fewest over the choices
                               // done (-1: none done yet); usage.prompt_tokens_details
    bool client_gone;          // disconnect seen
    bool user_cancelled;       // DELETE /v1/requests/{id}
    bool final_sent;           // streaming: usage + [DONE] formatted
    bool http_done;            // the connection finished: events are no longer queued
    int conn_fd;               // the client socket (disconnect polling), -1 if unknown
    // streaming output not yet handed to MHD
    char *out;
    size_t out_len, out_off, out_cap;
    double t_out;              // when bytes were last handed to MHD (keep-alive comments)
    double t_start;
    struct srv_req *reg_prev, *reg_next; // registry links (reg_mu)
    bool in_registry;
} srv_req;

// One HTTP request on a connection (MHD's con_cls).
typedef struct srv_conn {
    uint64_t id;
    int route;
    char *body;
    size_t body_len, body_cap;
    uint64_t seen;             // body bytes received (kept or discarded)
    bool too_big;
    bool oom;                  // the body buffer could not grow
    srv_req *req;              // completion in flight (one ref) or NULL
} srv_conn;

// ---- server.c
void fg_srv_req_decref(srv_req *r);
srv_req *fg_srv_registry_find(fg_server *s, uint64_t id); // +1 ref, or NULL
void fg_srv_registry_add(fg_server *s, srv_req *r);       // takes +1 ref
// Cancels every submitted choice still running (safe while shutting down).
void fg_srv_req_cancel(srv_req *r);
enum MHD_Result fg_srv_respond(fg_server *s, struct MHD_Connection *con, srv_conn *c, int status,
                               const char *content_type, char *body, size_t len);
enum MHD_Result fg_srv_respond_json(fg_server *s, struct MHD_Connection *con, srv_conn *c,
                                    int status, json_t *j);
enum MHD_Result fg_srv_respond_error(fg_server *s, struct MHD_Connection *con, srv_conn *c,
                                     const fg_api_error *e);
enum MHD_Result fg_srv_error(fg_server *s, struct MHD_Connection *con, srv_conn *c, int status,
                             const char *type, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 7, 8)));
void fg_srv_count_status(fg_server *s, int status);
const char *fg_srv_id_prefix(int route);

// ---- api_completions.c
enum MHD_Result fg_api_completions(fg_server *s, struct MHD_Connection *con, srv_conn *c,
                                   fg_api_kind kind);
// JSON pieces shared with sse.c
json_t *fg_srv_usage_json(const srv_req *r);
const char *fg_srv_finish_name(fg_finish_reason f);
// A JSON string of text[0..len); bytes of invalid UTF-8 become U+FFFD, the rest is kept.
json_t *fg_srv_json_text(const char *text, size_t len);
json_t *fg_srv_error_json(const char *message, const char *type, const char *param,
                          const char *code);
// Appends one token's logprob data to a completions-shaped logprobs object / chat content list.
void fg_srv_add_logprob(const srv_req *r, srv_choice *ch, json_t *lp, const srv_event *ev,
                        bool is_prompt);
json_t *fg_srv_completion_logprobs_new(void);
// Pops all queued events (caller frees with fg_srv_events_free).
srv_event *fg_srv_take_events(srv_req *r, size_t *n);
void fg_srv_events_free(srv_event *ev, size_t n);
// Waits for the client socket to be closed by the peer (true) for up to ms.
bool fg_srv_client_gone(int fd);

// ---- sse.c
enum MHD_Result fg_srv_start_stream(fg_server *s, struct MHD_Connection *con, srv_conn *c,
                                    srv_req *r);

// ---- api_misc.c
enum MHD_Result fg_api_models(fg_server *s, struct MHD_Connection *con, srv_conn *c);
enum MHD_Result fg_api_apply_template(fg_server *s, struct MHD_Connection *con, srv_conn *c);
enum MHD_Result fg_api_health(fg_server *s, struct MHD_Connection *con, srv_conn *c);
enum MHD_Result fg_api_metrics(fg_server *s, struct MHD_Connection *con, srv_conn *c);
enum MHD_Result fg_api_request_get(fg_server *s, struct MHD_Connection *con, srv_conn *c,
                                   const char *id, bool cancel);

// ---- webui.c
// GET / (the chat page, under a strict Content-Security-Policy) and GET /favicon.ico (204).
enum MHD_Result fg_webui_serve(fg_server *s, struct MHD_Connection *con, srv_conn *c,
                               const char *url);

#endif // FG_SERVER_INTERNAL_H
