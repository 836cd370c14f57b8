// forge/chat.h - chat templates: which format a model's conversation takes (from the GGUF's
// tokenizer.chat_template or a name), rendering messages in it as pieces that keep the
// template's control tokens apart from message text (user text never becomes a control token),
// tokenizing the pieces, and the difference between two renderings (what a conversation that
// grew by some messages adds: the terminal chat feeds only that to its KV cache).
// Not here: HTTP, JSON or a Jinja interpreter (templates are recognised by their signature).
// Called by the server (src/server) and `forge chat` (src/cli).
#ifndef FORGE_CHAT_H
#define FORGE_CHAT_H

#include "forge/status.h"
#include "forge/gguf.h"
#include "forge/tokenizer.h"

#ifdef __cplusplus
extern "C" {
#endif

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
// The format a model's chats use: `name` when given (--chat-template; an unknown name is
// FG_ERR_INVALID_ARG naming the flag), else the file's tokenizer.chat_template (absent: plain;
// one forge does not recognise: FG_ERR_UNSUPPORTED naming `path` and the flag).
fg_status fg_chat_format_select(const fg_gguf *g, const char *name, const char *path,
                                fg_chat_format *out);

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
// The same with BOS only when add_bos; `continues`: r continues text already tokenized (the
// token before it is not a control token), so a first text run gets no SentencePiece space
// prefix (what a conversation that grows by a delta needs).
fg_status fg_chat_tokenize_ex(const fg_tokenizer *t, const fg_chat_rendered *r, bool add_bos,
                              bool continues, int32_t **ids, size_t *n);
// What `full` adds after `past` followed by the text `then` (e.g. the answer the model gave
// after the prompt `past`): true when full's pieces start with past's pieces (the last one, if
// text, may continue in full) and then with the text `then` (text pieces only); out gets the
// rest (possibly no pieces). false, out untouched, when full does not start that way (a
// template that moves the system prompt, trims an answer, ...): render and reuse a common
// token prefix instead.
bool fg_chat_rendered_delta(const fg_chat_rendered *past, const char *then, size_t then_len,
                            const fg_chat_rendered *full, fg_chat_rendered *out);

#ifdef __cplusplus
}
#endif

#endif // FORGE_CHAT_H
