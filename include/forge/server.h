// forge/server.h - the OpenAI-compatible HTTP server behind `forge serve` (libmicrohttpd +
// jansson): /v1/completions, /v1/chat/completions (JSON and SSE), /v1/models, /health,
// /metrics, /v1/requests/{id}; and the network-free pieces it is built from (request parsing
// and validation, chat templates) so that fuzzers and unit tests can call them directly.
// Not here: the engine (forge/engine.h) or tokenization internals. Called by src/cli/cmd_serve.c.
#ifndef FORGE_SERVER_H
#define FORGE_SERVER_H

#include "forge/status.h"
#include "forge/engine.h"
#include "forge/tokenizer.h"

#ifdef __cplusplus
extern "C" {
#endif

// ---- the server
typedef struct fg_server fg_server;

typedef struct fg_server_opts {
    const char *model_path;    // GGUF file (required)
    const char *host;          // bind address; NULL: "127.0.0.1"
    int32_t port;              // 0: any free port (see fg_server_port)
    const char *api_key;       // NULL: no auth; else "Authorization: Bearer <key>" required on /v1/*
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
    int32_t kv_tokens;         // KV cache capacity in tokens, all sequences together (0: parallel x ctx)
    size_t max_body;           // request body limit in bytes (0: 1 MiB)
    int32_t max_n;             // largest "n" accepted (0: 16; at most 64)
    bool log_requests;         // one line per request on stderr
} fg_server_opts;

// Binds and starts the HTTP listener; /health answers "loading" (503) until fg_server_load
// returns. FG_ERR_IO when the address can't be bound (message names host:port).
fg_status fg_server_create(const fg_server_opts *opts, fg_server **out);
// Loads the model, picks the chat template (an unrecognised template in the file without
// --chat-template is FG_ERR_UNSUPPORTED naming the flag), starts the engine. Blocking.
fg_status fg_server_load(fg_server *s);
int32_t fg_server_port(const fg_server *s); // the bound port
// Graceful stop: stops accepting connections, lets running requests finish for up to grace_s
// seconds, cancels the rest, stops the engine and the listener. Safe to call once loaded or not.
void fg_server_shutdown(fg_server *s, double grace_s);
void fg_server_destroy(fg_server *s); // shuts down (grace 0) if still running; NULL: no-op

// ---- chat templates (network- and model-free)
typedef enum fg_chat_format {
    FG_CHAT_UNKNOWN = 0,
    FG_CHAT_PLAIN,
    FG_CHAT_CHATML,  // <|im_start|>role\n...<|im_end|>\n (Qwen)
    FG_CHAT_LLAMA3,  // <|start_header_id|>role<|end_header_id|>\n\n...<|eot_id|>
    FG_CHAT_LLAMA2,  // [INST] <<SYS>>\n...\n<</SYS>>\n\n... [/INST]
    FG_CHAT_MISTRAL, // [INST] ...[/INST] ...</s>
    FG_CHAT_GLM4,    // [gMASK]<sop><|role|>\n...
} fg_chat_format;

// By name ("chatml", "qwen", "llama3", "llama2", "mistral", "glm4", "plain"); FG_CHAT_UNKNOWN if none.
fg_chat_format fg_chat_format_from_name(const char *name);
const char *fg_chat_format_name(fg_chat_format f);
// Recognises a Jinja template text by its signature; NULL/empty text: FG_CHAT_PLAIN;
// a template that matches none: FG_CHAT_UNKNOWN.
fg_chat_format fg_chat_format_detect(const char *tmpl, size_t len);

typedef struct fg_chat_msg {
    const char *role;    // "system", "user", "assistant" (views, not owned)
    const char *content;
    size_t content_len;
} fg_chat_msg;

// A rendered conversation: pieces in order. Text pieces are tokenized WITHOUT special-token
// parsing (they may hold user content); control pieces are the template's own special-token
// strings (looked up in the vocabulary, falling back to plain text when absent).
typedef struct fg_chat_piece {
    bool control;
    char *text; // owned, NUL-terminated
    size_t len;
} fg_chat_piece;

typedef struct fg_chat_rendered {
    fg_chat_piece *pieces;
    int32_t n_pieces;
    int32_t cap;
} fg_chat_rendered;

// FG_ERR_INVALID_ARG for an unknown role or an empty conversation (message names the index).
fg_status fg_chat_render(fg_chat_format f, const fg_chat_msg *msgs, int32_t n_msgs,
                         bool add_generation_prompt, fg_chat_rendered *out);
void fg_chat_rendered_free(fg_chat_rendered *r);
// Flattens the pieces into one string (for logs and tests); caller frees.
char *fg_chat_rendered_text(const fg_chat_rendered *r, size_t *len);
// Tokens of a rendered conversation: BOS if the vocabulary adds one, control pieces as their
// token ids, text pieces with parse_special = false. *ids heap-allocated (free()).
fg_status fg_chat_tokenize(const fg_tokenizer *t, const fg_chat_rendered *r, int32_t **ids,
                           size_t *n);

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
    const char *param; // field name or NULL
    const char *code;  // or NULL
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
} fg_api_request;

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
