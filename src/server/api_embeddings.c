// api_embeddings.c - POST /v1/embeddings (issue 14) in OpenAI's shape: "input" a string, an
// array of strings, a token array or an array of token arrays; "encoding_format" float or
// base64 (little-endian float32, standard base64); "dimensions" (only the model's own);
// "truncate" (TEI's: cut inputs longer than the model takes instead of refusing them); "model",
// "user". Texts are tokenized as sentence-transformers does ([CLS] text [SEP]; special-token
// strings such as "[SEP]" in the text are the special tokens, as Hugging Face's tokenizer takes
// them); token arrays are taken as given (the caller adds [CLS] / [SEP], as with llama.cpp's
// server). All inputs of a request go to the embedder as one request, which batches them (and
// other clients') into forward steps; the connection is suspended until the vectors are in.
// Errors are 400s naming the field and the input's index. Not here: HTTP plumbing (server.c),
// batching (src/engine/embedder.c).
#include "server/server_internal.h"

#include "base/half.h"
#include "base/status.h"
#include "base/util.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_INPUTS 2048 // OpenAI's limit on the inputs of one request

// A parsed request: every input tokenized (owned arrays).
typedef struct embed_body {
    int32_t n;
    int32_t **ids;     // [n]
    int32_t *n_ids;    // [n]
    bool b64;
    bool truncate;
    int64_t tokens;
} embed_body;

static void body_free(embed_body *b) {
    for (int32_t i = 0; b->ids && i < b->n; i++)
        free(b->ids[i]);
    free(b->ids);
    free(b->n_ids);
    memset(b, 0, sizeof *b);
}

static enum MHD_Result bad(fg_server *s, struct MHD_Connection *con, srv_conn *c, const char *param,
                           const char *code, const char *fmt, ...) FG_PRINTF(6, 7);
static enum MHD_Result bad(fg_server *s, struct MHD_Connection *con, srv_conn *c, const char *param,
                           const char *code, const char *fmt, ...) {
    fg_api_error e;
    memset(&e, 0, sizeof e);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e.message, sizeof e.message, fmt, ap);
    va_end(ap);
    e.http_status = 400;
    e.type = "invalid_request_error";
    e.param = param;
    e.code = code;
    return fg_srv_respond_error(s, con, c, &e);
}

static const char *type_name(const json_t *v) {
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    case JSON_NULL: return "null";
    }
    return "a value";
}

// ---- the embedder callback (its thread: copy and return)
static void on_result(void *user, const fg_embed_result *res) {
    srv_req *r = user;
    float *v = NULL;
    size_t n = (size_t)res->n_inputs * (size_t)res->n_embd;
    fg_status st = res->status;
    if (st == FG_OK && !(v = malloc(n * sizeof *v)))
        st = FG_ERR_NOMEM;
    if (v)
        memcpy(v, res->vectors, n * sizeof *v);
    pthread_mutex_lock(&r->mu);
    if (!r->http_done) {
        r->emb = v;
        v = NULL;
        r->emb_n = res->n_inputs;
        r->emb_dim = res->n_embd;
        r->emb_tokens = res->n_tokens;
        r->emb_status = st;
        if (st != FG_OK && res->status == FG_OK)
            r->emb_error = fg_xstrdup("out of memory for the result");
        else if (st != FG_OK)
            r->emb_error = fg_xstrdup(res->error ? res->error : "failed");
    }
    r->choices[0].done = true;
    r->n_done = 1;
    fg_srv_req_resume_locked(r);
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    free(v);
    if (r->srv->opts.log_requests)
        fprintf(stderr, "forge serve: %s: %d inputs, %lld tokens, %s in %.3f s (%.3f s queued)\n", r->id_str,
                res->n_inputs, (long long)res->n_tokens, fg_status_name(res->status), res->t_total_s,
                res->t_queue_s);
    fg_srv_req_decref(r); // the embedder's reference
}

// ---- the request body
static bool known_field(const char *k) {
    static const char *const names[] = {"model", "input", "encoding_format", "dimensions", "user", "truncate"};
    for (size_t i = 0; i < FG_ARRAY_LEN(names); i++)
        if (!strcmp(k, names[i]))
            return true;
    return false;
}

// One token array (a JSON array of integers) into ids; a 400 naming the element otherwise.
static bool parse_tokens(fg_server *s, const json_t *arr, const char *where, int32_t **ids, int32_t *n_ids,
                         char *msg, size_t cap) {
    size_t n = json_array_size(arr);
    if (n == 0) {
        snprintf(msg, cap, "%s is an empty token array", where);
        return false;
    }
    if (n > (size_t)INT32_MAX / 2) {
        snprintf(msg, cap, "%s has too many tokens", where);
        return false;
    }
    int32_t *v = fg_xmalloc(n * sizeof *v);
    for (size_t j = 0; j < n; j++) {
        const json_t *t = json_array_get(arr, j);
        if (!json_is_integer(t)) {
            snprintf(msg, cap, "%s[%zu] must be a token id (an integer), got %s", where, j, type_name(t));
            free(v);
            return false;
        }
        json_int_t id = json_integer_value(t);
        if (id < 0 || id >= s->n_vocab) {
            snprintf(msg, cap, "%s[%zu] = %lld is not a token id of this model (0..%d)", where, j, (long long)id,
                     s->n_vocab - 1);
            free(v);
            return false;
        }
        v[j] = (int32_t)id;
    }
    *ids = v;
    *n_ids = (int32_t)n;
    return true;
}

// The body into b; on a client error writes the response and returns false (*ret set).
static bool parse_body(fg_server *s, struct MHD_Connection *con, srv_conn *c, embed_body *b,
                       enum MHD_Result *ret) {
    memset(b, 0, sizeof *b);
    const char *text = c->body ? c->body : "";
    if (fg_json_nesting_depth(text, c->body_len) > FG_API_MAX_DEPTH) {
        *ret = bad(s, con, c, NULL, "json_too_deep", "request body is nested deeper than %d levels",
                   FG_API_MAX_DEPTH);
        return false;
    }
    json_error_t jerr;
    json_t *root = json_loadb(text, c->body_len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        *ret = bad(s, con, c, NULL, "invalid_json", "malformed JSON in the request body at line %d column %d: %s",
                   jerr.line, jerr.column, jerr.text);
        return false;
    }
    char msg[512];
    const char *param = NULL, *code = NULL;
#define FAIL(p, ...)                                  \
    do {                                              \
        param = (p);                                  \
        snprintf(msg, sizeof msg, __VA_ARGS__);       \
        goto fail;                                    \
    } while (0)
    if (!json_is_object(root))
        FAIL(NULL, "the request body must be a JSON object, got %s", type_name(root));
    const char *key;
    json_t *val;
    json_object_foreach(root, key, val) {
        if (!known_field(key))
            FAIL(NULL, "unknown field '%.100s' (/v1/embeddings takes input, model, encoding_format, dimensions, "
                       "user, truncate)", key);
    }
    json_t *model = json_object_get(root, "model");
    if (model && !json_is_null(model)) {
        if (!json_is_string(model))
            FAIL("model", "'model' must be a string, got %s", type_name(model));
        if (strcmp(json_string_value(model), s->model_id)) {
            *ret = fg_srv_error(s, con, c, 404, "invalid_request_error", "model_not_found",
                                "The model '%.200s' does not exist (this server serves '%.200s')",
                                json_string_value(model), s->model_id);
            json_decref(root);
            return false;
        }
    }
    json_t *fmt = json_object_get(root, "encoding_format");
    if (fmt && !json_is_null(fmt)) {
        if (!json_is_string(fmt) || (strcmp(json_string_value(fmt), "float") && strcmp(json_string_value(fmt), "base64")))
            FAIL("encoding_format", "'encoding_format' must be \"float\" or \"base64\"");
        b->b64 = !strcmp(json_string_value(fmt), "base64");
    }
    const int32_t dim = fg_model_get_info(s->model)->n_embd;
    json_t *dims = json_object_get(root, "dimensions");
    if (dims && !json_is_null(dims) && (!json_is_integer(dims) || json_integer_value(dims) != dim))
        FAIL("dimensions", "'dimensions' must be %d, this model's (no reduced dimensions), got %s", dim,
             json_is_integer(dims) ? "another value" : type_name(dims));
    json_t *user = json_object_get(root, "user");
    if (user && !json_is_null(user) && !json_is_string(user))
        FAIL("user", "'user' must be a string, got %s", type_name(user));
    json_t *tr = json_object_get(root, "truncate");
    if (tr && !json_is_null(tr)) {
        if (!json_is_boolean(tr))
            FAIL("truncate", "'truncate' must be a boolean, got %s", type_name(tr));
        b->truncate = json_is_true(tr);
    }

    json_t *in = json_object_get(root, "input");
    if (!in || json_is_null(in))
        FAIL("input", "'input' is required: a string, an array of strings, a token array or an array of token "
                      "arrays");
    // the inputs as JSON values: one string, one token array, or the array's elements
    size_t n_in = 1;
    bool one_array = false; // input is a single token array
    if (json_is_array(in)) {
        n_in = json_array_size(in);
        if (n_in == 0)
            FAIL("input", "'input' is an empty array");
        const json_t *first = json_array_get(in, 0);
        one_array = json_is_integer(first);
        if (one_array)
            n_in = 1;
        else if (n_in > MAX_INPUTS)
            FAIL("input", "'input' has %zu items, at most %d are taken in one request", n_in, MAX_INPUTS);
        else if (!json_is_string(first) && !json_is_array(first))
            FAIL("input", "input[0] must be a string, a token id or a token array, got %s", type_name(first));
    } else if (!json_is_string(in)) {
        FAIL("input", "'input' must be a string, an array of strings, a token array or an array of token arrays, "
                      "got %s", type_name(in));
    }
    b->n = (int32_t)n_in;
    b->ids = fg_xcalloc(n_in, sizeof *b->ids);
    b->n_ids = fg_xcalloc(n_in, sizeof *b->n_ids);
    const int32_t limit = s->embed_limit;
    for (size_t i = 0; i < n_in; i++) {
        char where[32];
        const json_t *v = json_is_array(in) && !one_array ? json_array_get(in, i) : in;
        if (json_is_array(in) && !one_array)
            snprintf(where, sizeof where, "input[%zu]", i);
        else
            snprintf(where, sizeof where, "input");
        bool is_text = json_is_string(v);
        if (json_is_array(in) && !one_array && i > 0 &&
            is_text != json_is_string(json_array_get(in, 0))) // strings and token arrays not mixed
            FAIL("input", "%s must be %s like input[0], got %s", where, json_is_string(json_array_get(in, 0)) ?
                 "a string" : "a token array", type_name(v));
        if (is_text) {
            size_t len = json_string_length(v);
            if (len == 0)
                FAIL("input", "%s is an empty string", where);
            int32_t *ids = NULL;
            size_t n = 0;
            // sentence-transformers: [CLS] text [SEP]; "[SEP]" in the text is the special token
            if (fg_tokenize(s->tok, json_string_value(v), len, true, true, &ids, &n) != FG_OK)
                FAIL("input", "%s: %s", where, fg_last_error());
            if (n > (size_t)INT32_MAX / 2) {
                free(ids);
                FAIL("input", "%s is too long", where);
            }
            b->ids[i] = ids;
            b->n_ids[i] = (int32_t)n;
        } else if (json_is_array(v)) {
            if (!parse_tokens(s, v, where, &b->ids[i], &b->n_ids[i], msg, sizeof msg)) {
                param = "input";
                goto fail;
            }
        } else {
            FAIL("input", "%s must be a string or a token array, got %s", where, type_name(v));
        }
        if (b->n_ids[i] == 0)
            FAIL("input", "%s gives no tokens", where);
        if (b->n_ids[i] > limit) {
            if (!b->truncate) {
                code = "context_length_exceeded";
                FAIL("input", "%s has %d tokens, the model takes at most %d (ask for \"truncate\": true to cut it)",
                     where, b->n_ids[i], limit);
            }
            b->n_ids[i] = fg_embed_truncate(s->tok, b->ids[i], b->n_ids[i], limit);
        }
        b->tokens += b->n_ids[i];
    }
#undef FAIL
    json_decref(root);
    return true;
fail:
    json_decref(root);
    body_free(b);
    *ret = bad(s, con, c, param, code, "%s", msg);
    return false;
}

// ---- the answer
static void buf_put(char **p, size_t *len, size_t *cap, const char *s, size_t n) {
    if (*len + n + 1 > *cap) {
        while (*len + n + 1 > *cap)
            *cap = *cap ? 2 * *cap : 4096;
        *p = fg_xrealloc(*p, *cap);
    }
    memcpy(*p + *len, s, n);
    *len += n;
    (*p)[*len] = '\0';
}

// Standard base64 (RFC 4648, padded) of the little-endian float32 bytes of v[0..n).
static void put_base64(char **p, size_t *len, size_t *cap, const float *v, int32_t n) {
    static const char k[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t nb = (size_t)n * 4, out = (nb + 2) / 3 * 4;
    unsigned char *bytes = fg_xmalloc(nb + 3);
    for (int32_t i = 0; i < n; i++) {
        uint32_t u = fg_f32_to_bits(v[i]);
        for (int k4 = 0; k4 < 4; k4++)
            bytes[4 * (size_t)i + (size_t)k4] = (unsigned char)(u >> (8 * k4));
    }
    bytes[nb] = bytes[nb + 1] = bytes[nb + 2] = 0;
    char *t = fg_xmalloc(out + 1);
    size_t o = 0;
    for (size_t i = 0; i < nb; i += 3) {
        uint32_t w = ((uint32_t)bytes[i] << 16) | ((uint32_t)bytes[i + 1] << 8) | bytes[i + 2];
        t[o++] = k[(w >> 18) & 63];
        t[o++] = k[(w >> 12) & 63];
        t[o++] = i + 1 < nb ? k[(w >> 6) & 63] : '=';
        t[o++] = i + 2 < nb ? k[w & 63] : '=';
    }
    buf_put(p, len, cap, t, o);
    free(t);
    free(bytes);
}

static enum MHD_Result respond(fg_server *s, struct MHD_Connection *con, srv_conn *c, srv_req *r) {
    char *p = NULL, tmp[64];
    size_t len = 0, cap = 0;
    static const char head[] = "{\"object\":\"list\",\"data\":[";
    buf_put(&p, &len, &cap, head, sizeof head - 1);
    for (int32_t i = 0; i < r->emb_n; i++) {
        int w = snprintf(tmp, sizeof tmp, "%s{\"object\":\"embedding\",\"index\":%d,\"embedding\":", i ? "," : "", i);
        buf_put(&p, &len, &cap, tmp, (size_t)w);
        const float *v = r->emb + (size_t)i * (size_t)r->emb_dim;
        if (r->embed_b64) {
            buf_put(&p, &len, &cap, "\"", 1);
            put_base64(&p, &len, &cap, v, r->emb_dim);
            buf_put(&p, &len, &cap, "\"}", 2);
        } else {
            buf_put(&p, &len, &cap, "[", 1);
            for (int32_t k = 0; k < r->emb_dim; k++) { // %.9g: the float comes back exactly
                w = snprintf(tmp, sizeof tmp, "%s%.9g", k ? "," : "", (double)v[k]);
                buf_put(&p, &len, &cap, tmp, (size_t)w);
            }
            buf_put(&p, &len, &cap, "]}", 2);
        }
    }
    json_t *model = json_string(s->model_id);
    char *mj = json_dumps(model, JSON_ENCODE_ANY);
    json_decref(model);
    int w = snprintf(tmp, sizeof tmp, "],\"model\":");
    buf_put(&p, &len, &cap, tmp, (size_t)w);
    buf_put(&p, &len, &cap, mj ? mj : "\"\"", mj ? strlen(mj) : 2);
    free(mj);
    w = snprintf(tmp, sizeof tmp, ",\"usage\":{\"prompt_tokens\":%lld,\"total_tokens\":%lld}}\n",
                 (long long)r->emb_tokens, (long long)r->emb_tokens);
    buf_put(&p, &len, &cap, tmp, (size_t)w);
    return fg_srv_respond(s, con, c, 200, "application/json", p, len);
}

// Answers once the embedder is done; until then the connection is suspended (the callback
// resumes it, or the sweep when the client leaves or the server stops).
static enum MHD_Result answer(fg_server *s, struct MHD_Connection *con, srv_conn *c) {
    srv_req *r = c->req;
    enum MHD_Result res;
    pthread_mutex_lock(&r->mu);
    if (fg_srv_answer_pending(s, con, c, &res))
        return res;
    fg_status st = r->emb_status;
    pthread_mutex_unlock(&r->mu);
    if (st == FG_ERR_CANCELLED)
        return fg_srv_error(s, con, c, 503, "server_error", "shutting_down",
                            "%s: cancelled because the server is shutting down; retry", r->id_str);
    if (st != FG_OK)
        return fg_srv_error(s, con, c, 500, "server_error", "embedding_failed", "%s: %s", r->id_str,
                            r->emb_error ? r->emb_error : "failed");
    return respond(s, con, c, r);
}

enum MHD_Result fg_api_embeddings_resume(fg_server *s, struct MHD_Connection *con, srv_conn *c) {
    return answer(s, con, c);
}

enum MHD_Result fg_api_embeddings(fg_server *s, struct MHD_Connection *con, srv_conn *c) {
    if (!s->embeds) {
        const fg_model_info *mi = fg_model_get_info(s->model);
        return bad(s, con, c, "model", "model_not_supported",
                   "model '%s' has no pooling type (%s.pooling_type is absent or 0): it cannot give one vector "
                   "per input; /v1/embeddings needs an embedding model (mean, cls or last pooling)",
                   s->model_id, mi->arch);
    }
    embed_body b;
    enum MHD_Result ret = MHD_NO;
    if (!parse_body(s, con, c, &b, &ret))
        return ret;
    srv_req *r = fg_xcalloc(1, sizeof *r);
    r->srv = s;
    snprintf(r->id_str, sizeof r->id_str, "%s", c->id_str);
    r->key_idx = c->key_idx;
    atomic_init(&r->refs, 1); // the connection's
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->cv, NULL);
    r->created = (int64_t)time(NULL);
    r->conn_fd = -1;
    r->n_cached = -1;
    r->t_start = fg_time_s();
    r->embed = true;
    r->embed_b64 = b.b64;
    r->n_choices = 1;
    r->choices = fg_xcalloc(1, sizeof *r->choices);
    r->choices[0].req = r;
    r->con = con;
    c->req = r;
    atomic_fetch_add(&s->n_answering, 1); // until on_completed: the shutdown waits for it
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(con, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (ci)
        r->conn_fd = ci->connect_fd;

    atomic_fetch_add(&r->refs, 1); // the embedder's, released by on_result
    uint64_t id = 0;
    pthread_rwlock_rdlock(&s->engine_lock);
    fg_status st = s->embedder ? fg_embedder_submit(s->embedder, (const int32_t *const *)b.ids, b.n_ids, b.n,
                                                    on_result, r, &id)
                               : FG_FAIL(FG_ERR_CANCELLED, "the server is shutting down");
    if (st == FG_OK) {
        pthread_mutex_lock(&r->mu);
        r->embed_id = id;
        r->embed_submitted = true;
        pthread_mutex_unlock(&r->mu);
    }
    pthread_rwlock_unlock(&s->engine_lock);
    int64_t n_tokens = b.tokens;
    int32_t n_inputs = b.n;
    body_free(&b);
    if (st != FG_OK) {
        atomic_fetch_sub(&r->refs, 1);
        pthread_mutex_lock(&r->mu);
        r->n_done = 1; // never started: nothing to cancel
        pthread_mutex_unlock(&r->mu);
        if (st == FG_ERR_CAPACITY)
            return fg_srv_error(s, con, c, 429, "rate_limit_error", "queue_full",
                                "the server is overloaded (embedding queue full): retry later");
        if (st == FG_ERR_CANCELLED)
            return fg_srv_error(s, con, c, 503, "server_error", "shutting_down", "the server is shutting down");
        if (st == FG_ERR_INVALID_ARG)
            return bad(s, con, c, "input", NULL, "%s", fg_last_error());
        return fg_srv_error(s, con, c, 500, "server_error", "embedding_failed", "%s", fg_last_error());
    }
    fg_srv_active_add(s, r);
    if (s->opts.log_requests)
        fprintf(stderr, "forge serve: %s: embeddings, %d inputs, %lld tokens%s\n", r->id_str, n_inputs,
                (long long)n_tokens, r->embed_b64 ? ", base64" : "");
    return answer(s, con, c);
}
