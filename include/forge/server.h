// forge/server.h - the OpenAI-compatible HTTP server behind `forge serve` (libmicrohttpd +
// jansson): /v1/completions, /v1/chat/completions (JSON and SSE), /v1/models, /health,
// /metrics, /v1/requests/{id}, the chat page at /; and the network-free pieces it is built from (request parsing
// and validation; chat templates are in forge/chat.h) so that fuzzers and unit tests can call
// them directly.
// Not here: the engine (forge/engine.h) or tokenization internals. Called by src/cli/cmd_serve.c.
#ifndef FORGE_SERVER_H
#define FORGE_SERVER_H

#include "forge/status.h"
#include "forge/engine.h"
#include "forge/tokenizer.h"
#include "forge/chat.h"

#ifdef __cplusplus
extern "C" {
#endif

// ---- the server
typedef struct fg_server fg_server;

typedef struct fg_server_opts {
    const char *model_path;    // GGUF file (required)
    const char *host;          // bind address; NULL: "127.0.0.1"
    int32_t port;              // 0: any free port (see fg_server_port)
    const char *const *api_keys; // [n_api_keys]: "Authorization: Bearer <one of them>" required on
    int32_t n_api_keys;          // /v1/*; 0: no auth. An empty key is refused (FG_ERR_INVALID_ARG)
    const char *alias;         // model id in the API; NULL: the file stem
    const char *chat_template; // chatml|llama3|llama2|mistral|glm4|plain; NULL: from the file
    const char *device;        // "auto" (NULL: the GPU when usable, else the CPU), "cpu" or "cuda"
    int32_t gpu;               // GPU index
    int32_t n_threads;         // CPU threads (0: all cores); with tensor_parallel, each rank's
    int32_t tensor_parallel;   // ranks the model is split across (0/1: none): GPUs gpu..gpu+N-1,
                               // worker threads of this process (fg_model_opts.tp_size)
    int32_t n_parallel;        // running sequences (engine max_seqs; 0: engine default)
    int32_t n_ctx;             // context per sequence (0: engine default)
    int32_t queue_cap;         // waiting requests before 429 (0: engine default)
    int32_t kv_tokens;         // KV cache capacity in tokens, all sequences together (0: on a GPU,
                               // what gpu_memory_fraction leaves; on the CPU parallel x ctx)
    double gpu_memory_fraction; // share of device memory the server may use (0: 0.9)
    uint32_t kv_type;          // KV cache element type: FG_TYPE_F16 (0 too), FG_TYPE_Q8_0, FG_TYPE_F32
    size_t max_body;           // request body limit in bytes (0: 1 MiB)
    int32_t max_n;             // largest "n" accepted (0: 16; at most 64)
    bool log_requests;         // one line per request on stderr
    bool no_webui;             // no chat page at / (404)
    bool no_prefix_cache;      // --no-prefix-cache: the engine's prefix cache is on by default
    int32_t http_threads;      // libmicrohttpd worker threads (event loops; 0: 4)
    int32_t max_conns;         // open connections, all clients together (0: 512)
    int32_t max_conns_per_ip;  // open connections from one client address (0: 128)
    double request_timeout_s;  // a request's head and body must arrive within this (0: 30 s)
} fg_server_opts;

// Binds and starts the HTTP listener; /health answers "loading" (503) until fg_server_load
// returns. FG_ERR_IO when the address can't be bound (message names host:port).
fg_status fg_server_create(const fg_server_opts *opts, fg_server **out);
// Loads the model, picks the chat template (an unrecognised template in the file without
// --chat-template is FG_ERR_UNSUPPORTED naming the flag), starts the engine. Blocking.
fg_status fg_server_load(fg_server *s);
int32_t fg_server_port(const fg_server *s); // the bound port
// After fg_server_load: the model's facts and the context per sequence (NULL / 0 before).
const fg_model_info *fg_server_model_info(const fg_server *s);
int32_t fg_server_n_ctx(const fg_server *s);
// Graceful stop: stops accepting connections, lets running requests finish for up to grace_s
// seconds, cancels the rest, stops the engine and the listener. Safe to call once loaded or not.
void fg_server_shutdown(fg_server *s, double grace_s);
void fg_server_destroy(fg_server *s); // shuts down (grace 0) if still running; NULL: no-op

// ---- HTTP request heads (network-free): what the connection gate checks before libmicrohttpd
// sees a byte of a request
typedef struct fg_http_head_verdict {
    int status;                // refusal: the HTTP status to answer (400, 413, 431, 501, 505)
    char message[160];         // refusal: one line naming the fault
    size_t head_len;           // accepted: bytes of the head, its final empty line included
    bool http11, chunked, has_content_length;
    uint64_t content_length;
} fg_http_head_verdict;

// Looks at the first n bytes a client sent: 0 while the head is incomplete (and nothing is wrong
// yet), 1 for a complete, well-framed head (request line METHOD SP TARGET SP HTTP/1.0|1.1, header
// lines "name: value", Content-Length digits only and consistent, Transfer-Encoding only
// "chunked" and never with Content-Length, exactly one Host in HTTP/1.1), -1 to refuse it
// (v->status, v->message). A head longer than max_head is refused with 431.
int fg_http_head_check(const char *buf, size_t n, size_t max_head, fg_http_head_verdict *v);

// ---- chat templates: forge/chat.h (shared with `forge chat`)

// ---- request parsing and validation (network- and model-free)
typedef enum fg_api_kind { FG_API_COMPLETION = 0, FG_API_CHAT = 1 } fg_api_kind;

typedef struct fg_api_limits {
    const char *model_id; // NULL: any "model" is accepted
    int32_t n_ctx;        // max_tokens range check (0: 1 << 20)
    int32_t n_vocab;      // prompt token id range check (0: no check)
    int32_t max_n;        // 0: 16
    int32_t max_messages; // 0: 4096
} fg_api_limits;

// An OpenAI-style error: HTTP status and the fields of {"error":{message,type,param,code}}.
typedef struct fg_api_error {
    int http_status;
    char message[512];
    const char *type;  // "invalid_request_error", ...
    const char *param; // field name or NULL (static, or param_buf)
    const char *code;  // or NULL
    char param_buf[64];
} fg_api_error;

typedef struct fg_api_request {
    fg_api_kind kind;
    char *model;               // owned or NULL
    // completions: the prompt as text or as token ids
    char *prompt_text;         // owned, NUL-terminated (JSON strings with \u0000 are refused)
    size_t prompt_len;
    int32_t *prompt_ids;       // owned, [n_prompt_ids]
    int32_t n_prompt_ids;
    bool prompt_is_ids;
    // chat: messages (views into msg_store strings)
    fg_chat_msg *messages;     // [n_messages]
    int32_t n_messages;
    char **msg_store;          // owned copies of roles and contents
    int32_t n_msg_store;
    bool add_generation_prompt;
    // generation
    int32_t max_tokens;        // -1: not given (endpoint default)
    fg_sampling sampling;
    bool seed_given;
    char *stop[FG_MAX_STOP];   // owned
    int32_t n_stop;
    int32_t n;                 // choices
    int32_t logprobs;          // -1: none, else top-N (completions: "logprobs"; chat: top_logprobs)
    bool echo;
    bool stream;
    bool include_usage;
    bool ignore_eos;
    bool truncate;
    fg_logit_bias *logit_bias; // owned, [n_logit_bias] (token ids checked against n_vocab)
    int32_t n_logit_bias;
} fg_api_request;

// Request fields accepted and ignored, because OpenAI documents them as having no effect on
// the generated text (metadata): "user" (both endpoints), "metadata" (chat). Fields accepted
// only in their no-op form: "suffix" null or "" (completions); "response_format" {"type":
// "text"}, "tool_choice" "none", "store" false, "modalities" ["text"] (chat); "service_tier"
// "auto" or "default". Any other field Forge does not implement ("tools", "functions",
// "response_format" with a schema, ...) or does not know is a 400 naming it.

// Parses and validates one request body. On failure fills *err (400 malformed JSON, wrong
// types or ranges; 404 unknown model) and returns FG_ERR_INVALID_ARG (or FG_ERR_FORMAT for
// malformed JSON, FG_ERR_NOMEM); *out is then untouched and needs no free.
fg_status fg_server_parse_request(fg_api_kind kind, const char *json, size_t len,
                                  const fg_api_limits *lim, fg_api_request *out, fg_api_error *err);
void fg_api_request_free(fg_api_request *r);
// Deepest {}/[] nesting of a JSON text (strings skipped); used to refuse bodies nested deeper
// than FG_API_MAX_DEPTH before jansson recurses into them.
#define FG_API_MAX_DEPTH 64
int32_t fg_json_nesting_depth(const char *json, size_t len);
// The engine parameters of a parsed request for a tokenized prompt (views into r and prompt;
// valid while both live).
void fg_api_request_to_params(const fg_api_request *r, const int32_t *prompt, int32_t n_prompt,
                              int32_t choice, fg_request_params *out);

#ifdef __cplusplus
}
#endif

#endif // FORGE_SERVER_H
