// chat_session.h - one conversation with a model for `forge chat`: its messages, the model's KV
// cache for them (one sequence that lives from turn to turn, so each turn evaluates only what it
// adds), generation streamed through a callback, the oldest turns dropped when the context
// fills, and the conversation as JSON (/save, /load). Not here: the terminal, line editing or
// signals (cmd_chat.c). One thread; no engine thread (a conversation is one sequence).
#ifndef FG_CLI_CHAT_SESSION_H
#define FG_CLI_CHAT_SESSION_H

#include "forge.h"

#include <signal.h>

typedef struct fg_cli_chat fg_cli_chat;

typedef struct fg_cli_chat_opts {
    const char *model_path;
    const char *device;        // "auto" (NULL: the GPU when usable, else the CPU), "cpu" or "cuda"
    int32_t gpu;               // GPU index
    const char *chat_template; // a format name, or NULL: the file's
    const char *system;        // first system message, or NULL
    int32_t n_threads;         // 0: all cores
    int32_t n_ctx;             // 0: the model's, at most 4096
    int32_t n_predict;         // most tokens per answer; -1: until the end of the turn or context
    fg_sampling sampling;      // seed + turn number seeds each answer
    uint32_t kv_type;          // KV cache type (0: FG_TYPE_F16)
} fg_cli_chat_opts;

typedef enum fg_cli_chat_end {
    FG_CLI_CHAT_EOG = 0,      // the model ended its turn
    FG_CLI_CHAT_LENGTH,       // n_predict tokens
    FG_CLI_CHAT_CTX_FULL,     // the context is full: the answer was cut
    FG_CLI_CHAT_INTERRUPTED,  // *stop was set (Ctrl-C)
} fg_cli_chat_end;

typedef struct fg_cli_chat_stats {
    fg_cli_chat_end end;
    int32_t n_reused;         // tokens of the KV cache kept from earlier turns
    int32_t n_prompt;         // tokens evaluated for this turn's prompt
    int32_t n_gen;            // tokens generated
    int32_t n_dropped;        // oldest messages dropped to make room
    bool incremental;         // the turn only appended to the cache (no re-rendered history)
    double t_prompt_s, t_gen_s;
} fg_cli_chat_stats;

// How a turn talks back: the answer's text as it is generated (complete UTF-8 characters only),
// a call once the prompt is in the cache (stats so far: dropped messages, reused and evaluated
// tokens), and a flag that stops the prompt or the answer when it becomes non-zero (Ctrl-C).
typedef struct fg_cli_chat_io {
    void (*text)(void *user, const char *text, size_t len);
    void (*prompt_done)(void *user, const fg_cli_chat_stats *st);
    void *user;
    volatile sig_atomic_t *stop;
} fg_cli_chat_io;

fg_status fg_cli_chat_create(const fg_cli_chat_opts *o, fg_cli_chat **out);
void fg_cli_chat_destroy(fg_cli_chat *c);

// One turn: the user's message joins the conversation, the oldest turns are dropped while the
// prompt leaves too little room for an answer, what the cache lacks is evaluated, and the answer
// is generated (io->text) until the model ends its turn, n_predict tokens, a full context or
// *io->stop; it joins the conversation as it was shown (stopped during the prompt: the message
// is not kept). FG_ERR_CAPACITY when the message cannot fit even alone, FG_ERR_INVALID_ARG when
// it is not UTF-8 (the message is not kept; the conversation goes on).
fg_status fg_cli_chat_turn(fg_cli_chat *c, const char *text, size_t len, const fg_cli_chat_io *io,
                           fg_cli_chat_stats *st);
// Forgets the conversation but the system message (the cache keeps what it can reuse).
void fg_cli_chat_reset(fg_cli_chat *c);
// Sets the system message (first message); NULL or "" removes it. FG_ERR_INVALID_ARG for text
// that is not UTF-8 (as for a turn's message).
fg_status fg_cli_chat_set_system(fg_cli_chat *c, const char *text);
const char *fg_cli_chat_system(const fg_cli_chat *c); // NULL when none
int32_t fg_cli_chat_n_messages(const fg_cli_chat *c);
// {"messages": [{"role": ..., "content": ...}, ...]}: a /v1/chat/completions body as well.
fg_status fg_cli_chat_save(const fg_cli_chat *c, const char *path);
// Replaces the conversation with a saved one (roles system/user/assistant, string contents).
fg_status fg_cli_chat_load(fg_cli_chat *c, const char *path);

const char *fg_cli_chat_model_name(const fg_cli_chat *c);
const char *fg_cli_chat_format(const fg_cli_chat *c);
int32_t fg_cli_chat_n_ctx(const fg_cli_chat *c);
uint64_t fg_cli_chat_seed(const fg_cli_chat *c);

#endif // FG_CLI_CHAT_SESSION_H
