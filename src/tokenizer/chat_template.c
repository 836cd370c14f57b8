// chat_template.c - chat templates: recognising a GGUF's Jinja `tokenizer.chat_template` by its
// signature (no Jinja interpreter) and rendering messages in that format as pieces that keep
// the template's control tokens apart from message text, so user content never becomes a
// control token. Formats follow the models' published templates (BOS comes from the tokenizer).
// Also the difference of two renderings, so that a growing conversation is fed incrementally.
// Not here: HTTP or JSON. Called by the server (src/server), `forge chat`, the fuzzer.
#include "forge/chat.h"

#include "base/status.h"
#include "base/util.h"

#include <stdlib.h>
#include <string.h>

static const struct {
    const char *name;
    fg_chat_format f;
} k_names[] = {
    {"plain", FG_CHAT_PLAIN},   {"chatml", FG_CHAT_CHATML},   {"qwen", FG_CHAT_CHATML},
    {"llama3", FG_CHAT_LLAMA3}, {"llama2", FG_CHAT_LLAMA2},   {"mistral", FG_CHAT_MISTRAL},
    {"glm4", FG_CHAT_GLM4},
};

fg_chat_format fg_chat_format_from_name(const char *name) {
    if (!name)
        return FG_CHAT_UNKNOWN;
    for (size_t i = 0; i < FG_ARRAY_LEN(k_names); i++)
        if (!strcmp(name, k_names[i].name))
            return k_names[i].f;
    return FG_CHAT_UNKNOWN;
}

const char *fg_chat_format_name(fg_chat_format f) {
    for (size_t i = 0; i < FG_ARRAY_LEN(k_names); i++)
        if (k_names[i].f == f)
            return k_names[i].name;
    return "unknown";
}

static bool contains(const char *s, size_t len, const char *needle) {
    return memmem(s, len, needle, strlen(needle)) != NULL;
}

fg_chat_format fg_chat_format_detect(const char *t, size_t len) {
    if (!t || len == 0)
        return FG_CHAT_PLAIN;
    if (contains(t, len, "<|im_start|>"))
        return FG_CHAT_CHATML;
    if (contains(t, len, "<|start_header_id|>") && contains(t, len, "<|end_header_id|>"))
        return FG_CHAT_LLAMA3;
    if (contains(t, len, "[gMASK]") && contains(t, len, "<|user|>"))
        return FG_CHAT_GLM4;
    if (contains(t, len, "[INST]")) {
        if (contains(t, len, "<<SYS>>"))
            return FG_CHAT_LLAMA2;
        return FG_CHAT_MISTRAL;
    }
    return FG_CHAT_UNKNOWN;
}

fg_status fg_chat_format_select(const fg_gguf *g, const char *name, const char *path,
                                fg_chat_format *out) {
    if (name) {
        fg_chat_format f = fg_chat_format_from_name(name);
        if (f == FG_CHAT_UNKNOWN)
            return FG_FAIL(FG_ERR_INVALID_ARG,
                           "--chat-template: unknown template '%s' (expected chatml, llama3, "
                           "llama2, mistral, glm4 or plain)",
                           name);
        *out = f;
        return FG_OK;
    }
    const char *t = NULL;
    size_t tl = 0;
    if (g && fg_gguf_find_key(g, "tokenizer.chat_template") >= 0)
        FG_TRY(fg_gguf_get_str(g, "tokenizer.chat_template", &t, &tl));
    fg_chat_format f = fg_chat_format_detect(t, tl);
    if (f == FG_CHAT_UNKNOWN)
        return FG_FAIL(FG_ERR_UNSUPPORTED,
                       "%s: tokenizer.chat_template is not a format forge recognises; pass "
                       "--chat-template chatml|llama3|llama2|mistral|glm4|plain",
                       path ? path : "model");
    *out = f;
    return FG_OK;
}

// ---- rendering
static void push(fg_chat_rendered *r, bool control, const char *s, size_t len) {
    if (len == 0)
        return;
    // merge consecutive text pieces so tokenization sees them as one run
    if (!control && r->n_pieces > 0 && !r->pieces[r->n_pieces - 1].control) {
        fg_chat_piece *p = &r->pieces[r->n_pieces - 1];
        p->text = fg_xrealloc(p->text, p->len + len + 1);
        memcpy(p->text + p->len, s, len);
        p->len += len;
        p->text[p->len] = '\0';
        return;
    }
    if (r->n_pieces == r->cap) {
        r->cap = r->cap ? 2 * r->cap : 16;
        r->pieces = fg_xrealloc(r->pieces, (size_t)r->cap * sizeof *r->pieces);
    }
    fg_chat_piece *p = &r->pieces[r->n_pieces++];
    p->control = control;
    p->text = fg_xstrndup(s, len);
    p->len = len;
}

static void ctl(fg_chat_rendered *r, const char *s) { push(r, true, s, strlen(s)); }
static void txt(fg_chat_rendered *r, const char *s) { push(r, false, s, strlen(s)); }
static void content(fg_chat_rendered *r, const fg_chat_msg *m) {
    push(r, false, m->content ? m->content : "", m->content ? m->content_len : 0);
}

// Content without leading/trailing ASCII whitespace (Llama 2/3 templates strip/trim it).
static void content_trimmed(fg_chat_rendered *r, const fg_chat_msg *m) {
    const char *s = m->content ? m->content : "";
    size_t len = m->content ? m->content_len : 0;
    while (len && (*s == ' ' || *s == '\n' || *s == '\t' || *s == '\r'))
        s++, len--;
    while (len && (s[len - 1] == ' ' || s[len - 1] == '\n' || s[len - 1] == '\t' ||
                   s[len - 1] == '\r'))
        len--;
    push(r, false, s, len);
}

static void render_chatml(fg_chat_rendered *r, const fg_chat_msg *m, int32_t n, bool gen) {
    for (int32_t i = 0; i < n; i++) {
        ctl(r, "<|im_start|>");
        txt(r, m[i].role);
        txt(r, "\n");
        content(r, &m[i]);
        ctl(r, "<|im_end|>");
        txt(r, "\n");
    }
    if (gen) {
        ctl(r, "<|im_start|>");
        txt(r, "assistant\n");
    }
}

static void render_llama3(fg_chat_rendered *r, const fg_chat_msg *m, int32_t n, bool gen) {
    for (int32_t i = 0; i < n; i++) {
        ctl(r, "<|start_header_id|>");
        txt(r, m[i].role);
        ctl(r, "<|end_header_id|>");
        txt(r, "\n\n");
        content_trimmed(r, &m[i]);
        ctl(r, "<|eot_id|>");
    }
    if (gen) {
        ctl(r, "<|start_header_id|>");
        txt(r, "assistant");
        ctl(r, "<|end_header_id|>");
        txt(r, "\n\n");
    }
}

// Llama 2: <s>[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST] {assistant} </s><s>[INST] ...
// The first <s> is the tokenizer's BOS.
static void render_llama2(fg_chat_rendered *r, const fg_chat_msg *m, int32_t n, bool gen) {
    (void)gen; // the prompt always ends after [/INST]
    int32_t first = 0;
    const fg_chat_msg *sys = NULL;
    if (n > 0 && !strcmp(m[0].role, "system")) {
        sys = &m[0];
        first = 1;
    }
    bool first_user = true;
    for (int32_t i = first; i < n; i++) {
        if (!strcmp(m[i].role, "user")) {
            if (!first_user)
                ctl(r, "<s>");
            txt(r, "[INST] ");
            if (first_user && sys) {
                txt(r, "<<SYS>>\n");
                content(r, sys);
                txt(r, "\n<</SYS>>\n\n");
            }
            content_trimmed(r, &m[i]);
            txt(r, " [/INST]");
            first_user = false;
        } else if (!strcmp(m[i].role, "assistant")) {
            txt(r, " ");
            content_trimmed(r, &m[i]);
            txt(r, " ");
            ctl(r, "</s>");
        }
        // a later system message has no place in this format: it is dropped
    }
}

// Mistral (v0.3 style): <s>[INST] {user}[/INST] {assistant}</s>[INST] ...; the system prompt
// goes before the last user message.
static void render_mistral(fg_chat_rendered *r, const fg_chat_msg *m, int32_t n, bool gen) {
    (void)gen;
    const fg_chat_msg *sys = NULL;
    int32_t last_user = -1;
    for (int32_t i = 0; i < n; i++) {
        if (!strcmp(m[i].role, "system") && !sys)
            sys = &m[i];
        if (!strcmp(m[i].role, "user"))
            last_user = i;
    }
    for (int32_t i = 0; i < n; i++) {
        if (!strcmp(m[i].role, "user")) {
            ctl(r, "[INST]");
            txt(r, " ");
            if (sys && i == last_user) {
                content(r, sys);
                txt(r, "\n\n");
            }
            content(r, &m[i]);
            ctl(r, "[/INST]");
        } else if (!strcmp(m[i].role, "assistant")) {
            txt(r, " ");
            content(r, &m[i]);
            ctl(r, "</s>");
        }
    }
}

static void render_glm4(fg_chat_rendered *r, const fg_chat_msg *m, int32_t n, bool gen) {
    ctl(r, "[gMASK]");
    ctl(r, "<sop>");
    for (int32_t i = 0; i < n; i++) {
        if (!strcmp(m[i].role, "system"))
            ctl(r, "<|system|>");
        else if (!strcmp(m[i].role, "user"))
            ctl(r, "<|user|>");
        else
            ctl(r, "<|assistant|>");
        txt(r, "\n");
        content(r, &m[i]);
    }
    if (gen)
        ctl(r, "<|assistant|>");
}

// No template in the file: a readable transcript the model can continue.
static void render_plain(fg_chat_rendered *r, const fg_chat_msg *m, int32_t n, bool gen) {
    for (int32_t i = 0; i < n; i++) {
        if (!strcmp(m[i].role, "system")) {
            content(r, &m[i]);
            txt(r, "\n\n");
        } else {
            txt(r, !strcmp(m[i].role, "user") ? "User: " : "Assistant: ");
            content(r, &m[i]);
            txt(r, "\n");
        }
    }
    if (gen)
        txt(r, "Assistant:");
}

fg_status fg_chat_render(fg_chat_format f, const fg_chat_msg *msgs, int32_t n_msgs,
                         bool add_generation_prompt, fg_chat_rendered *out) {
    if (n_msgs <= 0)
        return FG_FAIL(FG_ERR_INVALID_ARG, "chat: no messages");
    for (int32_t i = 0; i < n_msgs; i++) {
        const char *role = msgs[i].role;
        if (!role || (strcmp(role, "system") && strcmp(role, "user") && strcmp(role, "assistant")))
            return FG_FAIL(FG_ERR_INVALID_ARG, "chat: messages[%d]: unknown role '%s'", i,
                           role ? role : "(null)");
    }
    fg_chat_rendered r = {0};
    switch (f) {
    case FG_CHAT_CHATML: render_chatml(&r, msgs, n_msgs, add_generation_prompt); break;
    case FG_CHAT_LLAMA3: render_llama3(&r, msgs, n_msgs, add_generation_prompt); break;
    case FG_CHAT_LLAMA2: render_llama2(&r, msgs, n_msgs, add_generation_prompt); break;
    case FG_CHAT_MISTRAL: render_mistral(&r, msgs, n_msgs, add_generation_prompt); break;
    case FG_CHAT_GLM4: render_glm4(&r, msgs, n_msgs, add_generation_prompt); break;
    case FG_CHAT_PLAIN: render_plain(&r, msgs, n_msgs, add_generation_prompt); break;
    default: return FG_FAIL(FG_ERR_INVALID_ARG, "chat: unknown template format %d", (int)f);
    }
    *out = r;
    return FG_OK;
}

void fg_chat_rendered_free(fg_chat_rendered *r) {
    if (!r)
        return;
    for (int32_t i = 0; i < r->n_pieces; i++)
        free(r->pieces[i].text);
    free(r->pieces);
    memset(r, 0, sizeof *r);
}

char *fg_chat_rendered_text(const fg_chat_rendered *r, size_t *len) {
    size_t total = 0;
    for (int32_t i = 0; i < r->n_pieces; i++)
        total += r->pieces[i].len;
    char *s = fg_xmalloc(total + 1);
    size_t off = 0;
    for (int32_t i = 0; i < r->n_pieces; i++) {
        memcpy(s + off, r->pieces[i].text, r->pieces[i].len);
        off += r->pieces[i].len;
    }
    s[off] = '\0';
    if (len)
        *len = off;
    return s;
}

// ---- tokenization
typedef struct id_buf {
    int32_t *ids;
    size_t n, cap;
} id_buf;

static void ids_push(id_buf *b, const int32_t *ids, size_t n) {
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->n + n)
            cap *= 2;
        b->ids = fg_xrealloc(b->ids, cap * sizeof(int32_t));
        b->cap = cap;
    }
    memcpy(b->ids + b->n, ids, n * sizeof(int32_t));
    b->n += n;
}

// Text runs between control tokens are tokenized whole, parse_special = false; a control piece
// whose string is a control/user-defined token of the vocabulary becomes that id, otherwise it
// joins the surrounding text (e.g. "[INST]" in the Llama 2 vocabulary is plain text).
fg_status fg_chat_tokenize(const fg_tokenizer *t, const fg_chat_rendered *r, int32_t **ids,
                           size_t *n) {
    return fg_chat_tokenize_ex(t, r, fg_tokenizer_add_bos(t), false, ids, n);
}

fg_status fg_chat_tokenize_ex(const fg_tokenizer *t, const fg_chat_rendered *r, bool add_bos,
                              bool continues, int32_t **ids, size_t *n) {
    id_buf out = {0};
    char *run = NULL;
    size_t run_len = 0;
    bool started = false; // a piece of r went out already
    fg_status st = FG_OK;
    if (add_bos && fg_tokenizer_bos(t) >= 0) {
        int32_t bos = fg_tokenizer_bos(t);
        ids_push(&out, &bos, 1);
    }
    for (int32_t i = 0; i <= r->n_pieces; i++) {
        int32_t id = -1;
        const fg_chat_piece *p = i < r->n_pieces ? &r->pieces[i] : NULL;
        if (p && p->control) {
            id = fg_tokenizer_find(t, p->text, p->len);
            if (id >= 0) {
                fg_token_kind k = fg_tokenizer_token_kind(t, id);
                if (k != FG_TOKEN_CONTROL && k != FG_TOKEN_USER_DEFINED)
                    id = -1;
            }
        }
        if (p && id < 0) { // text: extend the run
            run = fg_xrealloc(run, run_len + p->len + 1);
            memcpy(run + run_len, p->text, p->len);
            run_len += p->len;
            continue;
        }
        if (run_len > 0) { // flush the run before the control token / at the end
            int32_t *tok = NULL;
            size_t nt = 0;
            // a delta's first run continues the text before it
            unsigned fl = continues && !started ? FG_TOKENIZE_CONTINUE : 0u;
            st = fg_tokenize_ex(t, run, run_len, fl, &tok, &nt);
            if (st != FG_OK)
                goto fail;
            ids_push(&out, tok, nt);
            free(tok);
            run_len = 0;
            started = true;
        }
        if (p) {
            ids_push(&out, &id, 1);
            started = true;
        }
    }
    free(run);
    if (!out.ids)
        out.ids = fg_xmalloc(sizeof(int32_t));
    *ids = out.ids;
    *n = out.n;
    return FG_OK;
fail:
    free(run);
    free(out.ids);
    return st;
}

// ---- the difference of two renderings
// Walks full's pieces against past's and then the text `then`; the position reached is
// (piece index, byte offset inside that piece).
bool fg_chat_rendered_delta(const fg_chat_rendered *past, const char *then, size_t then_len,
                            const fg_chat_rendered *full, fg_chat_rendered *out) {
    int32_t i = 0;  // piece of full
    size_t off = 0; // bytes of full->pieces[i] already matched
    for (int32_t k = 0; k < past->n_pieces; k++) {
        const fg_chat_piece *p = &past->pieces[k];
        if (i >= full->n_pieces)
            return false;
        const fg_chat_piece *q = &full->pieces[i];
        if (p->control != q->control || p->len > q->len || memcmp(p->text, q->text, p->len))
            return false;
        // a text piece may continue in full (pieces merge): only the last one of past
        if (p->len < q->len && (p->control || k + 1 < past->n_pieces))
            return false;
        if (p->len == q->len) {
            i++;
            off = 0;
        } else {
            off = p->len;
        }
    }
    size_t left = then ? then_len : 0;
    const char *s = then;
    while (left > 0) {
        if (i >= full->n_pieces || full->pieces[i].control)
            return false;
        const fg_chat_piece *q = &full->pieces[i];
        size_t take = FG_MIN(left, q->len - off);
        if (memcmp(q->text + off, s, take))
            return false;
        s += take;
        left -= take;
        off += take;
        if (off == q->len) {
            i++;
            off = 0;
        }
    }
    fg_chat_rendered r = {0};
    for (; i < full->n_pieces; i++, off = 0)
        push(&r, full->pieces[i].control, full->pieces[i].text + off, full->pieces[i].len - off);
    *out = r;
    return true;
}
