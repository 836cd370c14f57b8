// server_internal.h - what the server's files share: the server object, the connection gate
// (srv_gate, srv_sock: every TCP connection from accept to close), one HTTP request (srv_conn),
// one completion request (srv_req: its event queue fed by the engine callback, its choices, its
// place in the request registry) and the JSON/HTTP helpers.
// Threads: one gate thread accepts and screens connections and runs the periodic sweep; a few
// libmicrohttpd worker threads (one event loop each) run every handler, which never blocks: a
// request that waits for the engine suspends its connection and the engine callback (scheduler
// thread) or the sweep resumes it. The engine callback only copies events under srv_req.mu.
#ifndef FG_SERVER_INTERNAL_H
#define FG_SERVER_INTERNAL_H

#include "forge/server.h"
#include "forge/model.h"
#include "forge/embedder.h"

#include <jansson.h>
#include <microhttpd.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/socket.h>

enum { SRV_LOADING = 0, SRV_READY = 1, SRV_STOPPING = 2, SRV_FAILED = 3 };

// HTTP status codes counted for /metrics.
#define SRV_N_CODES 12
extern const int fg_srv_codes[SRV_N_CODES];

// Why the gate closed a connection without handing it on (forge_http_refused_total{reason}).
enum { SRV_REFUSE_LIMIT, SRV_REFUSE_EVICTED, SRV_REFUSE_DEADLINE, SRV_REFUSE_MALFORMED,
       SRV_REFUSE_STOPPING, SRV_N_REFUSE };

#define SRV_ID_HEX 32 // random hex digits in a request id (128 bits)

// ---- the connection gate (gate.c)
typedef enum srv_sock_phase {
    SOCK_HEAD,   // held by the gate until its request head is complete
    SOCK_HANDED, // given to a worker, not yet seen by it (NOTIFY_CONNECTION STARTED)
    SOCK_BODY,   // in a worker, its body arriving: the request deadline still runs
    SOCK_BUSY,   // the request is in and being answered: no deadline (MHD's idle timeout)
} srv_sock_phase;

typedef struct srv_sock {
    int fd;
    int refs;                  // the table's, plus the gate's while handing over
    srv_sock_phase phase;
    bool doomed;               // refused or shut down by the gate: no longer counted
    bool dirty;                // HEAD: bytes arrived that the gate has not looked at yet
    bool linked;               // in the table
    bool provisional;          // HEAD over the limits, not counted: GATE_PENDING_S to finish its
                               // head and take a place, else a 503
    struct sockaddr_storage addr;
    socklen_t addr_len;
    unsigned char ip[16];      // client address (IPv4 as ::ffff:a.b.c.d)
    double t_open;             // accept: the head and body must be in by t_open + timeout
    double t_peek;             // HEAD: when the gate last looked at its bytes
    uint32_t n_peeks;
    double t_handed;
    struct srv_sock *prev, *next;
} srv_sock;

typedef struct srv_gate {
    int listen_fd, epoll_fd, wake_fd;
    bool listen_paused;        // out of file descriptors: accept again at the next tick
    pthread_t thread;
    bool started;
    atomic_bool stop;
    pthread_mutex_t mu;        // the socket table
    srv_sock *head, *tail;     // oldest first
    int32_t n_live;            // sockets counted against the limits
    int32_t n_pending;         // provisional ones
    struct MHD_Daemon **workers; // [n_workers]
    int32_t n_workers;
    uint32_t next_worker;
    srv_sock *grave;           // HEAD records closed during one loop turn, freed after it
    atomic_bool stop_accepting;
    atomic_uint_fast64_t refused[SRV_N_REFUSE];
} srv_gate;

struct fg_server {
    fg_server_opts opts;       // strings below are owned copies
    char *host, *model_path, *chat_template_name, *device;
    char **api_keys;           // [opts.n_api_keys]
    char *model_id;            // --alias or the file stem
    int32_t port;
    srv_gate gate;
    atomic_int state;
    atomic_bool http_stopping; // the workers are about to stop: no connection may stay suspended
    fg_backend *backend;
    fg_model *model;
    const fg_tokenizer *tok;   // borrowed from the model
    fg_chat_format chat_format;
    int32_t n_ctx, n_vocab;
    int32_t queue_cap;
    pthread_rwlock_t engine_lock; // read: calls into engine; write: destroying it
    fg_engine *engine;
    // embedding models (issue 14): the embedder instead of the engine (under engine_lock)
    fg_embedder *embedder;
    bool embeds;               // the model has a pooling type (set at load, then read-only)
    int32_t embed_limit;       // tokens one input may have (fg_model_info.max_embed_tokens)
    atomic_uint_fast64_t http_counts[SRV_N_CODES + 1]; // last: other codes
    // registry of completion requests (live + the most recent finished ones)
    pthread_mutex_t reg_mu;
    struct srv_req *reg_head, *reg_tail;
    int32_t reg_n;
    // completion requests whose connection is open (the sweep watches them)
    pthread_mutex_t act_mu;    // taken before any srv_req.mu
    struct srv_req *act_head;
    atomic_int n_streams;      // open streaming responses
    atomic_int n_answering;    // completion requests whose connection has not finished yet
    atomic_int n_suspended;    // connections suspended by a handler
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

// A generated token's logprobs, held until its share of the text has been sent: then its
// "token" and text_offset index the returned text exactly.
typedef struct srv_lp_entry {
    int32_t token;
    float logprob;
    int32_t n_top;
    fg_top_logprob top[FG_MAX_TOP_LOGPROBS];
    size_t start, len;         // its share: bytes [start, start + len) of srv_choice.lp_text
} srv_lp_entry;

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
    // logprobs (formatting side only): each token's share of the text is its piece through a
    // UTF-8 stream (a character split over tokens belongs to the token that completes it)
    int32_t n_prompt_lp;       // prompt entries written (echo)
    size_t cp_prompt;          // code points of the echo written so far
    fg_detok_stream lp_ds;
    char *lp_text;             // the generated tokens' shares, concatenated [lp_len]
    size_t lp_len, lp_text_cap;
    srv_lp_entry *lp_q;        // entries not yet written [lp_n] (oldest first)
    int32_t lp_n, lp_cap;
    size_t gen_sent;           // generated text bytes sent (or put in the answer) so far
    size_t cp_gen;             // code points of the generated shares written so far
} srv_choice;

typedef struct srv_req {
    fg_server *srv;            // borrowed
    char id_str[48];           // "cmpl-<hex>" / "chatcmpl-<hex>": unguessable
    int32_t key_idx;           // the API key that made it (-1: the server has no keys)
    uint64_t seed_bits;        // random bits for the default sampling seed
    atomic_int refs;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    srv_event *q;              // pending events [q_len], consumed from q_head
    size_t q_head, q_len, q_cap;
    fg_api_request api;        // parsed body (owned)
    bool stream;
    int32_t *prompt;           // [n_prompt] tokens submitted
    int32_t n_prompt;
    char *echo_text;           // echo: the prompt's tokens' text, split by token (owned) or NULL
    size_t echo_len;
    size_t *echo_offs;         // [n_prompt + 1]: token i's share is echo_text[offs[i]..offs[i+1])
    size_t echo_cp;            // code points of echo_text
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
    // the connection answering it (mu): suspended while it waits for events
    struct MHD_Connection *con;
    bool suspended;
    int conn_fd;               // the client socket (disconnect polling), -1 if unknown
    struct srv_conn *waiters;  // DELETEs waiting for the cancellation to land (mu)
    // streaming output not yet handed to MHD
    char *out;
    size_t out_len, out_off, out_cap;
    double t_out;              // when bytes were last handed to MHD (keep-alive comments)
    double t_start;
    struct srv_req *reg_prev, *reg_next; // registry links (reg_mu)
    bool in_registry;
    struct srv_req *act_prev, *act_next; // active list links (act_mu)
    bool active;
    // POST /v1/embeddings (issue 14): one embedder request as choice 0 (n_choices 1; the
    // callback copies the result under mu and counts it done)
    bool embed;
    bool embed_submitted;
    uint64_t embed_id;
    bool embed_b64;            // encoding_format "base64"
    float *emb;                // [emb_n][emb_dim] once done (owned)
    int32_t emb_n, emb_dim;
    int64_t emb_tokens;
    fg_status emb_status;
    char *emb_error;           // (owned)
} srv_req;

struct srv_route;

// One HTTP request (MHD's con_cls; the connection carries only this one: Connection: close).
typedef struct srv_conn {
    char id_str[48];           // X-Request-Id: "<route prefix>-<hex>"
    const struct srv_route *route; // NULL: no route for the path
    char *rest;                // prefix routes: the URL after the prefix (owned)
    int32_t key_idx;           // the API key presented (-1: none or the server has no keys)
    srv_sock *sock;            // borrowed (the connection's socket context) or NULL
    bool started;              // the first access-handler call happened
    bool dispatched;           // the handler ran once (later calls are resumptions)
    bool responded;            // a response was queued
    char *body;
    size_t body_len, body_cap;
    uint64_t seen;             // body bytes received (kept or discarded)
    bool too_big;
    bool oom;                  // the body buffer could not grow
    srv_req *req;              // completion in flight (one ref) or NULL
    srv_req *wait_req;         // DELETE waiting for the cancellation (one ref) or NULL
    struct srv_conn *wait_next;
    struct MHD_Connection *con;
    bool wait_suspended;       // guarded by wait_req->mu
} srv_conn;

typedef enum MHD_Result (*srv_handler)(fg_server *s, struct MHD_Connection *con, srv_conn *c);

// The route table (server.c): one row per method and path.
enum { SRV_AUTH = 1u, SRV_NEEDS_MODEL = 2u, SRV_PREFIX = 4u };
typedef struct srv_route {
    const char *method;        // "GET" (HEAD is answered as GET), "POST", "DELETE"
    const char *path;          // exact path, or with SRV_PREFIX a prefix followed by a non-empty rest
    srv_handler handler;
    unsigned flags;            // SRV_AUTH: API key checked; SRV_NEEDS_MODEL: 503 until loaded
    const char *id_prefix;     // X-Request-Id prefix (completions: their response id's)
} srv_route;

// ---- server.c
void fg_srv_req_decref(srv_req *r);
// The request whose id is exactly `id` (+1 ref), or NULL.
srv_req *fg_srv_registry_find(fg_server *s, const char *id);
void fg_srv_registry_add(fg_server *s, srv_req *r);       // takes +1 ref
void fg_srv_active_add(fg_server *s, srv_req *r);         // the connection is open (no ref)
// Cancels every submitted choice still running (safe while shutting down).
void fg_srv_req_cancel(srv_req *r);
// Resumes r's connection if it is suspended; caller holds r->mu.
void fg_srv_req_resume_locked(srv_req *r);
// Writes `hex` random hex digits (and a NUL) from the kernel's CSPRNG; false on failure.
bool fg_srv_random_hex(char *out, int hex);
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
// Periodic work of the gate thread: disconnects and keep-alives of suspended connections.
void fg_srv_sweep(fg_server *s, double now);

// ---- gate.c
// Binds host:port (port 0: any) and listens; FG_ERR_IO naming the address on failure.
fg_status fg_srv_gate_listen(fg_server *s, const char *host, int32_t port, int32_t *bound_port);
fg_status fg_srv_gate_start(fg_server *s);   // the gate thread (workers must exist)
// Stops accepting: the gate closes the listener and answers connections still in their head
// with 503; the sweep goes on. Idempotent.
void fg_srv_gate_stop_accepting(fg_server *s);
// Joins the gate thread (no sweep after this). Idempotent.
void fg_srv_gate_stop(fg_server *s);
void fg_srv_gate_destroy(fg_server *s);      // after the workers are stopped
// MHD_OPTION_NOTIFY_CONNECTION: attaches the gate's record to the worker's connection.
void fg_srv_gate_notify(void *cls, struct MHD_Connection *con, void **socket_context,
                        enum MHD_ConnectionNotificationCode code);
// The whole request is in: its deadline stops. False when the gate already shut it down.
bool fg_srv_gate_request_in(fg_server *s, srv_conn *c);
int32_t fg_srv_gate_n_open(fg_server *s);
// A complete response (status line, headers, JSON error body) written straight to a socket the
// gate holds; for refusals before libmicrohttpd sees the connection.
void fg_srv_gate_write_error(fg_server *s, int fd, int status, const char *code,
                             const char *message);

// ---- api_completions.c
enum MHD_Result fg_api_completions(fg_server *s, struct MHD_Connection *con, srv_conn *c);
enum MHD_Result fg_api_chat(fg_server *s, struct MHD_Connection *con, srv_conn *c);
// The connection of a non-streaming completion was resumed: answer, or suspend again.
enum MHD_Result fg_api_completions_resume(fg_server *s, struct MHD_Connection *con, srv_conn *c);
// JSON pieces shared with sse.c
json_t *fg_srv_usage_json(const srv_req *r);
const char *fg_srv_finish_name(fg_finish_reason f);
// A JSON string of text[0..len); bytes of invalid UTF-8 become U+FFFD, the rest is kept.
json_t *fg_srv_json_text(const char *text, size_t len);
json_t *fg_srv_error_json(const char *message, const char *type, const char *param,
                          const char *code);
// Logprobs in the answer's shape (completions: {tokens, token_logprobs, top_logprobs,
// text_offset}; chat: the "content" list): the entries an event makes ready, appended to lp.
// Every entry's token is exactly its share of the returned text and text_offset its position
// (code points), so text[offset[i]:offset[i+1]] == tokens[i]. A generated entry waits until its
// share has been sent; at DONE the rest is written, cut to the text (a stop string).
void fg_srv_lp_event(const srv_req *r, srv_choice *ch, json_t *lp, const srv_event *ev);
// Echo: the first prompt token's entry (no logprob), before the prompt events.
void fg_srv_lp_first_prompt(const srv_req *r, srv_choice *ch, json_t *lp);
void fg_srv_lp_free(srv_choice *ch);
json_t *fg_srv_completion_logprobs_new(void);
// A non-streaming answer waits for every choice: called with r->mu held, true when the request
// is not done yet - then *res is the answer for now (MHD_NO: the client left; MHD_YES: the
// connection suspended until the engine's callback, or the sweep, resumes it; a 503 while the
// server stops) and r->mu is released; false (done) with r->mu still held.
bool fg_srv_answer_pending(fg_server *s, struct MHD_Connection *con, srv_conn *c, enum MHD_Result *res);
// Pops all queued events (caller frees with fg_srv_events_free).
srv_event *fg_srv_take_events(srv_req *r, size_t *n);
void fg_srv_events_free(srv_event *ev, size_t n);
// True when the peer has closed or reset the socket (a non-blocking poll).
bool fg_srv_client_gone(int fd);

// ---- api_embeddings.c (issue 14)
enum MHD_Result fg_api_embeddings(fg_server *s, struct MHD_Connection *con, srv_conn *c);
// The connection of an embeddings request was resumed: answer, or suspend again.
enum MHD_Result fg_api_embeddings_resume(fg_server *s, struct MHD_Connection *con, srv_conn *c);

// ---- sse.c
enum MHD_Result fg_srv_start_stream(fg_server *s, struct MHD_Connection *con, srv_conn *c,
                                    srv_req *r);
// Seconds without output after which a stream gets an SSE comment line.
#define SSE_KEEPALIVE_S 2.0

// ---- api_misc.c
enum MHD_Result fg_api_models(fg_server *s, struct MHD_Connection *con, srv_conn *c);
enum MHD_Result fg_api_apply_template(fg_server *s, struct MHD_Connection *con, srv_conn *c);
enum MHD_Result fg_api_health(fg_server *s, struct MHD_Connection *con, srv_conn *c);
enum MHD_Result fg_api_metrics(fg_server *s, struct MHD_Connection *con, srv_conn *c);
enum MHD_Result fg_api_request_get(fg_server *s, struct MHD_Connection *con, srv_conn *c);
enum MHD_Result fg_api_request_delete(fg_server *s, struct MHD_Connection *con, srv_conn *c);
// A DELETE's connection was resumed (the cancellation landed): answer with the final state.
enum MHD_Result fg_api_request_delete_resume(fg_server *s, struct MHD_Connection *con,
                                             srv_conn *c);
// Resumes the DELETEs waiting on r; caller holds r->mu.
void fg_srv_wake_waiters_locked(srv_req *r);

// ---- webui.c
// GET / (the chat page, under a strict Content-Security-Policy) and GET /favicon.ico (204).
enum MHD_Result fg_webui_serve(fg_server *s, struct MHD_Connection *con, srv_conn *c,
                               const char *url);

#endif // FG_SERVER_INTERNAL_H
