// chat_session.c - a conversation for `forge chat` over one KV sequence that lives across turns.
// Each turn renders the conversation with the model's chat template (forge/chat.h) and feeds
// the cache only what it lacks:
//  - the usual case: the template only appends, so the rendering is the last prompt, the answer
//    exactly as generated (its tokens are in the cache) and then new pieces (the end of the
//    answer's turn, the user's message, the generation prompt): only those are tokenized and
//    evaluated (fg_chat_rendered_delta);
//  - otherwise (a template that rewrites earlier text, /system, /load, dropped turns): the
//    rendering is tokenized whole and the cache keeps its longest common token prefix.
// When the prompt leaves less than `reserve` tokens for the answer, the oldest user/assistant
// turns are dropped (the system message stays); positions then shift, so what follows the kept
// prefix is evaluated again (no KV shifting). Not here: the terminal (cmd_chat.c).
#include "cli/chat_session.h"
#include "cli/cli.h"

#include "base/status.h"
#include "base/util.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PAGE_SIZE 16
#define MAX_BATCH 512

typedef struct chat_msg {
    char *role;    // "system", "user", "assistant"
    char *content; // NUL-terminated; len bytes
    size_t len;
} chat_msg;

struct fg_cli_chat {
    fg_backend *be;
    fg_model *m;
    const fg_tokenizer *tok; // borrowed from the model
    fg_kv_store *kv;
    fg_kv_pages *pages;
    int32_t seq;
    fg_chat_format fmt;
    int32_t n_ctx, n_vocab, n_predict;
    fg_sampling smp;
    uint64_t n_turns;
    chat_msg *msgs;          // [n_msgs]
    int32_t n_msgs, cap_msgs;
    int32_t *hist;           // [n_hist] the tokens in the KV sequence, in order
    int32_t n_hist, cap_hist;
    // what the cache holds at the end of the last turn: the rendering of its prompt and the
    // answer exactly as generated; valid while `synced`
    bool synced;
    fg_chat_rendered last_prompt;
    char *last_raw;
    size_t last_raw_len;
    float *logits;           // [n_vocab] of the last evaluated token
    int32_t *pos, *seqv;     // [MAX_BATCH]
};

// ---- messages
static void msgs_insert(fg_cli_chat *c, int32_t at, const char *role, const char *text,
                        size_t len) {
    if (c->n_msgs == c->cap_msgs) {
        c->cap_msgs = c->cap_msgs ? 2 * c->cap_msgs : 16;
        c->msgs = fg_xrealloc(c->msgs, (size_t)c->cap_msgs * sizeof *c->msgs);
    }
    memmove(c->msgs + at + 1, c->msgs + at, (size_t)(c->n_msgs - at) * sizeof *c->msgs);
    c->msgs[at].role = fg_xstrdup(role);
    c->msgs[at].content = fg_xstrndup(text, len);
    c->msgs[at].len = len;
    c->n_msgs++;
}

static void msgs_remove(fg_cli_chat *c, int32_t at, int32_t n) {
    for (int32_t i = at; i < at + n; i++) {
        free(c->msgs[i].role);
        free(c->msgs[i].content);
    }
    memmove(c->msgs + at, c->msgs + at + n, (size_t)(c->n_msgs - at - n) * sizeof *c->msgs);
    c->n_msgs -= n;
}

static fg_chat_msg *msgs_view(const fg_cli_chat *c) {
    fg_chat_msg *v = fg_xcalloc((size_t)c->n_msgs + 1, sizeof *v);
    for (int32_t i = 0; i < c->n_msgs; i++) {
        v[i].role = c->msgs[i].role;
        v[i].content = c->msgs[i].content;
        v[i].content_len = c->msgs[i].len;
    }
    return v;
}

// Valid UTF-8 (jansson checks it as it builds a string).
static bool utf8_ok(const char *s, size_t len) {
    json_t *j = json_stringn(s, len);
    json_decref(j);
    return j != NULL;
}

static bool has_system(const fg_cli_chat *c) {
    return c->n_msgs > 0 && !strcmp(c->msgs[0].role, "system");
}

static void unsync(fg_cli_chat *c) {
    c->synced = false;
    fg_chat_rendered_free(&c->last_prompt);
    free(c->last_raw);
    c->last_raw = NULL;
    c->last_raw_len = 0;
}

// Drops the oldest turn (a user message and what answers it), never the system message or the
// last message; returns the number of messages dropped (0: nothing left to drop).
static int32_t drop_oldest_turn(fg_cli_chat *c) {
    int32_t first = has_system(c) ? 1 : 0;
    if (first >= c->n_msgs - 1)
        return 0;
    int32_t end = first + 1;
    while (end < c->n_msgs - 1 && strcmp(c->msgs[end].role, "user"))
        end++;
    msgs_remove(c, first, end - first);
    return end - first;
}

// ---- the KV sequence
static void hist_push(fg_cli_chat *c, const int32_t *ids, int32_t n) {
    if (c->n_hist + n > c->cap_hist) {
        int32_t cap = c->cap_hist ? c->cap_hist : 256;
        while (cap < c->n_hist + n)
            cap *= 2;
        c->hist = fg_xrealloc(c->hist, (size_t)cap * sizeof *c->hist);
        c->cap_hist = cap;
    }
    memcpy(c->hist + c->n_hist, ids, (size_t)n * sizeof *ids);
    c->n_hist += n;
}

// Keeps the first n tokens of the sequence.
static fg_status hist_truncate(fg_cli_chat *c, int32_t n) {
    if (n < c->n_hist)
        c->n_hist = n;
    if (fg_kv_seq_len(c->pages, c->seq) > n)
        FG_TRY(fg_kv_seq_truncate(c->pages, c->seq, n));
    return FG_OK;
}

// Evaluates hist[kv_len .. n_hist) in chunks (logits of the last token); stops between chunks
// when *stop is set (FG_ERR_CANCELLED, the cache then holds what was evaluated).
static fg_status eval_pending(fg_cli_chat *c, volatile sig_atomic_t *stop) {
    for (;;) {
        int32_t len = fg_kv_seq_len(c->pages, c->seq);
        int32_t n = FG_MIN(c->n_hist - len, MAX_BATCH);
        if (n <= 0)
            return FG_OK;
        if (stop && *stop)
            return FG_FAIL(FG_ERR_CANCELLED, "interrupted");
        FG_TRY(fg_kv_seq_append(c->pages, c->seq, n));
        for (int32_t i = 0; i < n; i++) {
            c->pos[i] = len + i;
            c->seqv[i] = 0;
        }
        int32_t n_kv = len + n;
        const int32_t *pt = fg_kv_seq_pages(c->pages, c->seq);
        fg_batch b = {
            .n_tokens = n,
            .tokens = c->hist + len,
            .pos = c->pos,
            .seq = c->seqv,
            .want_logits = NULL,
            .n_seqs = 1,
            .n_kv = &n_kv,
            .page_tables = &pt,
        };
        fg_status st = fg_model_forward(c->m, c->kv, &b, c->logits);
        if (st != FG_OK) {
            fg_kv_seq_truncate(c->pages, c->seq, len);
            return st;
        }
    }
}

// ---- lifecycle
fg_status fg_cli_chat_create(const fg_cli_chat_opts *o, fg_cli_chat **out) {
    fg_cli_chat *c = fg_xcalloc(1, sizeof *c);
    fg_status st;
    st = fg_cli_backend("chat", o->device, o->gpu, o->n_threads, &c->be);
    if (st != FG_OK)
        goto fail;
    fg_model_opts mo = {.max_batch_tokens = MAX_BATCH, .max_seqs = 1, .progress = true};
    st = fg_model_load(o->model_path, c->be, &mo, &c->m);
    if (st != FG_OK)
        goto fail;
    const fg_model_info *info = fg_model_get_info(c->m);
    c->tok = fg_model_tokenizer(c->m);
    st = fg_chat_format_select(fg_model_gguf(c->m), o->chat_template, o->model_path, &c->fmt);
    if (st != FG_OK)
        goto fail;
    c->n_vocab = info->n_vocab;
    c->n_ctx = o->n_ctx > 0 ? o->n_ctx : FG_MIN(info->n_ctx_train, 4096);
    c->n_predict = o->n_predict;
    c->smp = o->sampling;
    int32_t n_pages = (c->n_ctx + PAGE_SIZE - 1) / PAGE_SIZE;
    st = fg_kv_store_create(c->m, n_pages, PAGE_SIZE, o->kv_type ? o->kv_type : FG_TYPE_F16, &c->kv);
    if (st != FG_OK)
        goto fail;
    st = fg_kv_pages_create(n_pages, PAGE_SIZE, 1, &c->pages);
    if (st != FG_OK)
        goto fail;
    st = fg_kv_seq_new(c->pages, &c->seq);
    if (st != FG_OK)
        goto fail;
    c->logits = malloc((size_t)c->n_vocab * sizeof *c->logits);
    if (!c->logits) {
        st = FG_FAIL(FG_ERR_NOMEM, "out of memory for %d logits", c->n_vocab);
        goto fail;
    }
    c->pos = fg_xcalloc(MAX_BATCH, sizeof *c->pos);
    c->seqv = fg_xcalloc(MAX_BATCH, sizeof *c->seqv);
    st = fg_cli_chat_set_system(c, o->system);
    if (st != FG_OK)
        goto fail;
    *out = c;
    return FG_OK;
fail:
    fg_cli_chat_destroy(c);
    return st;
}

void fg_cli_chat_destroy(fg_cli_chat *c) {
    if (!c)
        return;
    msgs_remove(c, 0, c->n_msgs);
    free(c->msgs);
    unsync(c);
    free(c->hist);
    free(c->logits);
    free(c->pos);
    free(c->seqv);
    fg_kv_pages_destroy(c->pages);
    fg_kv_store_destroy(c->kv);
    fg_model_destroy(c->m);
    fg_backend_destroy(c->be);
    free(c);
}

// ---- one turn
static int32_t common_prefix(const int32_t *a, int32_t na, const int32_t *b, int32_t nb) {
    int32_t n = 0;
    while (n < na && n < nb && a[n] == b[n])
        n++;
    return n;
}

// A plan for this turn's prompt: keep the first `keep` tokens of the sequence, then add[n_add].
typedef struct plan {
    fg_chat_rendered full; // the conversation with the generation prompt
    int32_t keep;
    int32_t *add;
    int32_t n_add;
    bool incremental;
} plan;

static void plan_free(plan *p) {
    fg_chat_rendered_free(&p->full);
    free(p->add);
    memset(p, 0, sizeof *p);
}

static fg_status make_plan(fg_cli_chat *c, plan *p) {
    memset(p, 0, sizeof *p);
    fg_chat_msg *v = msgs_view(c);
    fg_status st = fg_chat_render(c->fmt, v, c->n_msgs, true, &p->full);
    free(v);
    if (st != FG_OK)
        return st;
    fg_chat_rendered d;
    size_t n = 0;
    if (c->synced && c->n_hist > 0 &&
        fg_chat_rendered_delta(&c->last_prompt, c->last_raw, c->last_raw_len, &p->full, &d)) {
        // the delta continues the cache's last token: text unless it is a control token
        fg_token_kind k = fg_tokenizer_token_kind(c->tok, c->hist[c->n_hist - 1]);
        bool cont = k != FG_TOKEN_CONTROL && k != FG_TOKEN_USER_DEFINED;
        st = fg_chat_tokenize_ex(c->tok, &d, false, cont, &p->add, &n);
        fg_chat_rendered_free(&d);
        if (st != FG_OK)
            goto fail;
        p->keep = c->n_hist;
        p->incremental = true;
        if (n == 0) { // nothing new (cannot happen with a new message): the last token again
            p->add = fg_xrealloc(p->add, sizeof *p->add);
            p->add[0] = c->hist[--p->keep];
            n = 1;
        }
    } else {
        int32_t *ids = NULL;
        st = fg_chat_tokenize(c->tok, &p->full, &ids, &n);
        if (st != FG_OK)
            goto fail;
        int32_t nf = (int32_t)FG_MIN(n, (size_t)INT32_MAX / 2);
        int32_t keep = common_prefix(c->hist, c->n_hist, ids, nf);
        if (keep == nf && keep > 0)
            keep--; // the last prompt token is evaluated again for its logits
        p->keep = keep;
        n = (size_t)(nf - keep);
        p->add = fg_xmalloc((n + 1) * sizeof *p->add);
        memcpy(p->add, ids + keep, n * sizeof *p->add);
        free(ids);
    }
    if (n > (size_t)INT32_MAX / 2) {
        st = FG_FAIL(FG_ERR_CAPACITY, "the conversation has %zu tokens", n);
        goto fail;
    }
    if (n == 0) { // an empty rendering and no BOS: no logits to answer from
        st = FG_FAIL(FG_ERR_INVALID_ARG, "the conversation renders to no tokens");
        goto fail;
    }
    p->n_add = (int32_t)n;
    return FG_OK;
fail:
    plan_free(p);
    return st;
}

static size_t lstrip_len(const char *s, size_t len) {
    size_t i = 0;
    while (i < len && (s[i] == ' ' || s[i] == '\n' || s[i] == '\t' || s[i] == '\r'))
        i++;
    return i;
}

// After an answer: stores it in the form whose rendering continues exactly what the cache holds
// (as generated, or without its leading whitespace for templates that put their own separator
// before the answer); without such a form the next turn re-renders.
static void keep_answer(fg_cli_chat *c, plan *p, char *raw, size_t raw_len) {
    size_t skip_opts[2] = {0, lstrip_len(raw, raw_len)};
    bool found = false;
    size_t skip = skip_opts[1];
    for (int k = 0; k < 2 && !found; k++) {
        if (k == 1 && skip_opts[1] == 0)
            break;
        msgs_insert(c, c->n_msgs, "assistant", raw + skip_opts[k], raw_len - skip_opts[k]);
        fg_chat_msg *v = msgs_view(c);
        fg_chat_rendered closed, d;
        if (fg_chat_render(c->fmt, v, c->n_msgs, false, &closed) == FG_OK) {
            if (fg_chat_rendered_delta(&p->full, raw, raw_len, &closed, &d)) {
                found = true;
                skip = skip_opts[k];
                fg_chat_rendered_free(&d);
            }
            fg_chat_rendered_free(&closed);
        }
        free(v);
        msgs_remove(c, c->n_msgs - 1, 1);
    }
    msgs_insert(c, c->n_msgs, "assistant", raw + skip, raw_len - skip);
    unsync(c);
    if (found) {
        c->synced = true;
        c->last_prompt = p->full;
        memset(&p->full, 0, sizeof p->full);
        c->last_raw = raw;
        c->last_raw_len = raw_len;
    } else {
        free(raw);
    }
}

fg_status fg_cli_chat_turn(fg_cli_chat *c, const char *text, size_t len, const fg_cli_chat_io *io,
                           fg_cli_chat_stats *out) {
    volatile sig_atomic_t *stop = io ? io->stop : NULL;
    fg_cli_chat_stats st;
    memset(&st, 0, sizeof st);
    int32_t reserve = c->n_predict > 0 ? FG_MIN(c->n_predict, c->n_ctx / 2) : c->n_ctx / 4;
    reserve = FG_MAX(reserve, 1);
    if (!utf8_ok(text, len))
        return FG_FAIL(FG_ERR_INVALID_ARG, "the message is not valid UTF-8; it was not sent");
    msgs_insert(c, c->n_msgs, "user", text, len);
    plan p;
    fg_status s;
    for (;;) {
        s = make_plan(c, &p);
        if (s != FG_OK)
            goto fail_msg;
        int64_t total = (int64_t)p.keep + p.n_add;
        if (total + reserve <= c->n_ctx)
            break;
        int32_t dropped = drop_oldest_turn(c);
        if (dropped > 0) {
            st.n_dropped += dropped;
            unsync(c);
            plan_free(&p);
            continue;
        }
        if (total < c->n_ctx)
            break; // no more turns to drop: a shorter answer
        plan_free(&p);
        s = FG_FAIL(FG_ERR_CAPACITY,
                    "the message needs %lld tokens with the template%s, the context holds %d "
                    "(see -c); it was not sent",
                    (long long)total, has_system(c) ? " and the system message" : "", c->n_ctx);
        goto fail_msg;
    }
    st.incremental = p.incremental;
    st.n_reused = FG_MIN(p.keep, fg_kv_seq_len(c->pages, c->seq));
    double t0 = fg_time_s();
    s = hist_truncate(c, p.keep);
    if (s != FG_OK)
        goto fail_plan;
    st.n_prompt = c->n_hist + p.n_add - st.n_reused;
    hist_push(c, p.add, p.n_add);
    s = eval_pending(c, stop);
    if (s != FG_OK) {
        // interrupted (or failed): the cache keeps what was evaluated, the message is not kept
        c->n_hist = fg_kv_seq_len(c->pages, c->seq);
        st.n_prompt = c->n_hist - st.n_reused;
        st.end = FG_CLI_CHAT_INTERRUPTED;
        unsync(c);
        plan_free(&p);
        msgs_remove(c, c->n_msgs - 1, 1);
        if (out)
            *out = st;
        return s == FG_ERR_CANCELLED ? FG_OK : s;
    }
    double t1 = fg_time_s();
    st.t_prompt_s = t1 - t0;
    if (io && io->prompt_done)
        io->prompt_done(io->user, &st);

    // the answer
    fg_sampling smp = c->smp;
    smp.seed += c->n_turns++;
    fg_sampler *sampler = NULL;
    s = fg_sampler_create(&smp, c->n_vocab, &sampler);
    if (s != FG_OK)
        goto fail_plan;
    for (int32_t i = 0; i < c->n_hist; i++)
        fg_sampler_accept(sampler, c->hist[i]);
    fg_detok_stream ds;
    fg_detok_stream_init(&ds);
    char piece[1024];
    size_t raw_cap = 256, raw_len = 0;
    char *raw = fg_xmalloc(raw_cap);
    int32_t n_whole = c->n_hist; // tokens up to the last complete UTF-8 character
    st.end = FG_CLI_CHAT_EOG;
    for (;;) {
        if (stop && *stop) {
            st.end = FG_CLI_CHAT_INTERRUPTED;
            break;
        }
        if (c->n_predict >= 0 && st.n_gen >= c->n_predict) {
            st.end = FG_CLI_CHAT_LENGTH;
            break;
        }
        if (fg_kv_seq_len(c->pages, c->seq) >= c->n_ctx) {
            st.end = FG_CLI_CHAT_CTX_FULL;
            break;
        }
        int32_t t = fg_sampler_sample(sampler, c->logits);
        if (fg_tokenizer_is_eog(c->tok, t))
            break;
        st.n_gen++;
        fg_sampler_accept(sampler, t);
        hist_push(c, &t, 1);
        int32_t w = fg_detok_stream_push(c->tok, &ds, t, false, piece, sizeof piece);
        if (w > 0) {
            if (raw_len + (size_t)w + 1 > raw_cap) {
                while (raw_len + (size_t)w + 1 > raw_cap)
                    raw_cap *= 2;
                raw = fg_xrealloc(raw, raw_cap);
            }
            memcpy(raw + raw_len, piece, (size_t)w);
            raw_len += (size_t)w;
            if (io && io->text)
                io->text(io->user, piece, (size_t)w);
        }
        if (ds.n_pending == 0)
            n_whole = c->n_hist;
        s = eval_pending(c, NULL);
        if (s != FG_OK) {
            fg_sampler_destroy(sampler);
            free(raw);
            goto fail_plan;
        }
    }
    fg_sampler_destroy(sampler);
    raw[raw_len] = '\0';
    // a character cut by the end of the answer is not shown: its bytes leave the cache too, so
    // the cache holds exactly the prompt and the text shown
    if (n_whole < c->n_hist) {
        s = hist_truncate(c, n_whole);
        if (s != FG_OK) {
            free(raw);
            goto fail_plan;
        }
    }
    st.t_gen_s = fg_time_s() - t1;
    keep_answer(c, &p, raw, raw_len);
    plan_free(&p);
    if (out)
        *out = st;
    return FG_OK;
fail_plan:
    plan_free(&p);
    unsync(c);
    c->n_hist = FG_MIN(c->n_hist, fg_kv_seq_len(c->pages, c->seq)); // the cache is the truth
fail_msg:
    msgs_remove(c, c->n_msgs - 1, 1);
    if (out)
        *out = st;
    return s;
}

// ---- conversation commands
void fg_cli_chat_reset(fg_cli_chat *c) {
    int32_t first = has_system(c) ? 1 : 0;
    msgs_remove(c, first, c->n_msgs - first);
    unsync(c);
}

fg_status fg_cli_chat_set_system(fg_cli_chat *c, const char *text) {
    if (text && !utf8_ok(text, strlen(text)))
        return FG_FAIL(FG_ERR_INVALID_ARG, "the system message is not valid UTF-8");
    if (has_system(c))
        msgs_remove(c, 0, 1);
    if (text && *text)
        msgs_insert(c, 0, "system", text, strlen(text));
    unsync(c);
    return FG_OK;
}

const char *fg_cli_chat_system(const fg_cli_chat *c) {
    return has_system(c) ? c->msgs[0].content : NULL;
}

int32_t fg_cli_chat_n_messages(const fg_cli_chat *c) { return c->n_msgs; }
const char *fg_cli_chat_format(const fg_cli_chat *c) { return fg_chat_format_name(c->fmt); }
int32_t fg_cli_chat_n_ctx(const fg_cli_chat *c) { return c->n_ctx; }
uint64_t fg_cli_chat_seed(const fg_cli_chat *c) { return c->smp.seed; }
const char *fg_cli_chat_model_name(const fg_cli_chat *c) {
    return fg_model_get_info(c->m)->name;
}

fg_status fg_cli_chat_save(const fg_cli_chat *c, const char *path) {
    json_t *arr = json_array();
    for (int32_t i = 0; i < c->n_msgs; i++) {
        json_t *m = json_object();
        json_object_set_new(m, "role", json_string(c->msgs[i].role));
        // every message is valid UTF-8: checked on the way in, answers are whole characters
        json_t *s = json_stringn(c->msgs[i].content, c->msgs[i].len);
        json_object_set_new(m, "content", s ? s : json_string(""));
        json_array_append_new(arr, m);
    }
    json_t *o = json_object();
    json_object_set_new(o, "messages", arr);
    int rc = json_dump_file(o, path, JSON_INDENT(2));
    json_decref(o);
    if (rc != 0)
        return FG_FAIL(FG_ERR_IO, "%s: cannot write the conversation", path);
    return FG_OK;
}

fg_status fg_cli_chat_load(fg_cli_chat *c, const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f)
        return FG_FAIL(FG_ERR_IO, "%s: cannot open", path);
    fclose(f);
    json_error_t err;
    json_t *o = json_load_file(path, JSON_REJECT_DUPLICATES, &err);
    if (!o)
        return FG_FAIL(FG_ERR_FORMAT, "%s: line %d: %s", path, err.line, err.text);
    fg_status st = FG_OK;
    json_t *arr = json_object_get(o, "messages");
    if (!json_is_object(o) || !json_is_array(arr)) {
        st = FG_FAIL(FG_ERR_FORMAT, "%s: expected {\"messages\": [...]}", path);
        goto done;
    }
    size_t n = json_array_size(arr);
    if (n > 100000) {
        st = FG_FAIL(FG_ERR_FORMAT, "%s: %zu messages, at most 100000", path, n);
        goto done;
    }
    for (size_t i = 0; i < n; i++) {
        json_t *m = json_array_get(arr, i);
        const char *role = json_string_value(json_object_get(m, "role"));
        json_t *content = json_object_get(m, "content");
        if (!role || (strcmp(role, "system") && strcmp(role, "user") && strcmp(role, "assistant"))) {
            st = FG_FAIL(FG_ERR_FORMAT, "%s: messages[%zu]: role must be system, user or assistant",
                         path, i);
            goto done;
        }
        if (!json_is_string(content)) {
            st = FG_FAIL(FG_ERR_FORMAT, "%s: messages[%zu]: content must be a string", path, i);
            goto done;
        }
    }
    msgs_remove(c, 0, c->n_msgs);
    for (size_t i = 0; i < n; i++) {
        json_t *m = json_array_get(arr, i);
        json_t *content = json_object_get(m, "content");
        msgs_insert(c, c->n_msgs, json_string_value(json_object_get(m, "role")),
                    json_string_value(content), json_string_length(content));
    }
    unsync(c);
done:
    json_decref(o);
    return st;
}
