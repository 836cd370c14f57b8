// api_parse.c - request bodies of /v1/completions and /v1/chat/completions: JSON text ->
// fg_api_request (every field known or refused by name, validated, clamped to the server's
// limits; logit_bias) -> fg_request_params.
// Network-free and model-free so that tests/fuzz/fuzz_request.c can drive it directly.
// Not here: tokenization (api_completions.c) or HTTP (server.c).
#include "server/server_internal.h"

#include "base/status.h"
#include "base/util.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_STOP_LEN 256
#define FG_API_MAX_PROMPT_IDS (1 << 20)

static fg_status api_fail(fg_api_error *err, int http, const char *type, const char *param,
                          const char *code, const char *fmt, ...) FG_PRINTF(6, 7);

static fg_status api_fail(fg_api_error *err, int http, const char *type, const char *param,
                          const char *code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof err->message, fmt, ap);
    va_end(ap);
    err->http_status = http;
    err->type = type;
    err->param = param;
    err->code = code;
    fg_fail(FG_ERR_INVALID_ARG, "%s", err->message);
    return FG_ERR_INVALID_ARG;
}

#define BAD(param, ...) api_fail(err, 400, "invalid_request_error", (param), NULL, __VA_ARGS__)

int32_t fg_json_nesting_depth(const char *json, size_t len) {
    int32_t depth = 0, max_depth = 0;
    bool in_str = false;
    for (size_t i = 0; i < len; i++) {
        char c = json[i];
        if (in_str) {
            if (c == '\\')
                i++; // skip the escaped character
            else if (c == '"')
                in_str = false;
            continue;
        }
        if (c == '"') {
            in_str = true;
        } else if (c == '{' || c == '[') {
            depth++;
            if (depth > max_depth)
                max_depth = depth;
        } else if (c == '}' || c == ']') {
            if (depth > 0)
                depth--;
        }
    }
    return max_depth;
}

static const char *json_type_name(const json_t *v) {
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "object";
    case JSON_ARRAY: return "array";
    case JSON_STRING: return "string";
    case JSON_INTEGER: return "integer";
    case JSON_REAL: return "number";
    case JSON_TRUE:
    case JSON_FALSE: return "boolean";
    case JSON_NULL: return "null";
    }
    return "value";
}

// A present, non-null field, or NULL.
static json_t *field(json_t *obj, const char *key) {
    json_t *v = json_object_get(obj, key);
    return (v && !json_is_null(v)) ? v : NULL;
}

// A 400 whose param is a field name from the request (copied: the JSON is freed after parsing).
static fg_status bad_field(fg_api_error *err, const char *field, const char *code,
                           const char *msg) {
    snprintf(err->param_buf, sizeof err->param_buf, "%s", field);
    return api_fail(err, 400, "invalid_request_error", err->param_buf, code, "%s", msg);
}

enum { F_COMP = 1, F_CHAT = 2, F_BOTH = 3 };

// Every field a request may carry. Others are refused by name: nothing is silently ignored
// except what OpenAI itself documents as having no effect on the text (see forge/server.h).
static const struct {
    const char *name;
    unsigned kinds;
} k_fields[] = {
    {"model", F_BOTH},         {"prompt", F_COMP},           {"messages", F_CHAT},
    {"max_tokens", F_BOTH},    {"max_completion_tokens", F_CHAT},
    {"temperature", F_BOTH},   {"top_p", F_BOTH},            {"top_k", F_BOTH},
    {"min_p", F_BOTH},         {"presence_penalty", F_BOTH}, {"frequency_penalty", F_BOTH},
    {"repeat_penalty", F_BOTH}, {"repeat_last_n", F_BOTH},   {"seed", F_BOTH},
    {"n", F_BOTH},             {"stop", F_BOTH},             {"logprobs", F_BOTH},
    {"top_logprobs", F_CHAT},  {"echo", F_COMP},             {"stream", F_BOTH},
    {"stream_options", F_BOTH}, {"ignore_eos", F_BOTH},      {"truncate", F_BOTH},
    {"add_generation_prompt", F_CHAT}, {"best_of", F_COMP},  {"logit_bias", F_BOTH},
    // no effect on the text (checked for type only)
    {"user", F_BOTH},          {"metadata", F_CHAT},
    // accepted in their no-op form only (checked in check_noop)
    {"suffix", F_COMP},        {"response_format", F_CHAT},  {"tool_choice", F_CHAT},
    {"store", F_CHAT},         {"modalities", F_CHAT},       {"service_tier", F_BOTH},
};

// OpenAI fields Forge knows and does not implement (a clearer message than "unknown").
static const char *const k_unsupported[] = {
    "tools", "functions", "function_call", "parallel_tool_calls", "audio", "prediction",
    "reasoning_effort", "web_search_options", "response_format", "suffix", "tool_choice",
    "store", "modalities", "service_tier", "top_logprobs", "echo", "best_of",
};

static bool str_is(const json_t *v, const char *s) {
    return json_is_string(v) && !strcmp(json_string_value(v), s);
}

// Fields accepted only in the form that changes nothing: false when v is another form.
static bool check_noop(const char *key, const json_t *v) {
    if (!strcmp(key, "suffix"))
        return json_is_string(v) && json_string_length(v) == 0;
    if (!strcmp(key, "response_format"))
        return json_is_object(v) && json_object_size(v) == 1 &&
               str_is(json_object_get(v, "type"), "text");
    if (!strcmp(key, "tool_choice"))
        return str_is(v, "none");
    if (!strcmp(key, "store"))
        return json_is_false(v);
    if (!strcmp(key, "modalities"))
        return json_is_array(v) && json_array_size(v) == 1 && str_is(json_array_get(v, 0), "text");
    if (!strcmp(key, "service_tier"))
        return str_is(v, "auto") || str_is(v, "default");
    if (!strcmp(key, "user"))
        return json_is_string(v);
    if (!strcmp(key, "metadata"))
        return json_is_object(v);
    return true;
}

static fg_status check_fields(json_t *root, fg_api_kind kind, fg_api_error *err) {
    unsigned want = kind == FG_API_CHAT ? F_CHAT : F_COMP;
    const char *key;
    json_t *v;
    json_object_foreach(root, key, v) {
        // null is "not given", and so is an empty tool list
        if (json_is_null(v) || ((!strcmp(key, "tools") || !strcmp(key, "functions")) &&
                                json_is_array(v) && json_array_size(v) == 0))
            continue;
        bool known = false;
        for (size_t i = 0; i < FG_ARRAY_LEN(k_fields) && !known; i++)
            known = (k_fields[i].kinds & want) && !strcmp(key, k_fields[i].name);
        if (known && check_noop(key, v))
            continue;
        bool openai = known;
        for (size_t i = 0; i < FG_ARRAY_LEN(k_unsupported) && !openai; i++)
            openai = !strcmp(key, k_unsupported[i]);
        char msg[200];
        if (known && (!strcmp(key, "user") || !strcmp(key, "metadata"))) {
            snprintf(msg, sizeof msg, "'%.60s' must be %s", key,
                     !strcmp(key, "user") ? "a string" : "an object");
            return bad_field(err, key, NULL, msg);
        }
        if (openai) {
            snprintf(msg, sizeof msg, "'%.60s' is not supported by this server%s", key,
                     known ? " in this form (only its no-op form is accepted)"
                     : kind == FG_API_CHAT ? "" : " on /v1/completions");
            return bad_field(err, key, "unsupported_parameter", msg);
        }
        snprintf(msg, sizeof msg, "unrecognized request field '%.60s'", key);
        return bad_field(err, key, "unknown_parameter", msg);
    }
    return FG_OK;
}

// "logit_bias": {"<token id>": bias in [-100, 100], ...}.
static fg_status parse_logit_bias(json_t *root, const fg_api_limits *lim, fg_api_request *r,
                                  fg_api_error *err) {
    json_t *v = field(root, "logit_bias");
    if (!v)
        return FG_OK;
    if (!json_is_object(v))
        return BAD("logit_bias", "'logit_bias' must be an object mapping token ids (as strings) "
                                 "to numbers in [-100, 100], got %s", json_type_name(v));
    size_t n = json_object_size(v);
    if (n > FG_MAX_LOGIT_BIAS)
        return BAD("logit_bias", "'logit_bias' holds at most %d tokens, got %zu", FG_MAX_LOGIT_BIAS,
                   n);
    r->logit_bias = fg_xcalloc(n ? n : 1, sizeof *r->logit_bias);
    int64_t hi = lim->n_vocab > 0 ? lim->n_vocab - 1 : INT32_MAX;
    const char *key;
    json_t *b;
    json_object_foreach(v, key, b) {
        size_t kl = strlen(key);
        bool digits = kl > 0 && kl <= 10 && (key[0] != '0' || kl == 1);
        for (size_t i = 0; i < kl && digits; i++)
            digits = key[i] >= '0' && key[i] <= '9';
        long long id = digits ? strtoll(key, NULL, 10) : -1;
        if (!digits || id > hi)
            return BAD("logit_bias", "'logit_bias' key '%.40s' is not a token id in [0, %lld]",
                       key, (long long)hi);
        if (!json_is_number(b))
            return BAD("logit_bias", "'logit_bias[\"%s\"]' must be a number, got %s", key,
                       json_type_name(b));
        double d = json_number_value(b);
        if (!(d >= -100.0 && d <= 100.0))
            return BAD("logit_bias", "'logit_bias[\"%s\"]' must be in [-100, 100], got %g", key,
                       d);
        r->logit_bias[r->n_logit_bias++] = (fg_logit_bias){(int32_t)id, (float)d};
    }
    return FG_OK;
}

static fg_status get_number(json_t *obj, const char *key, double lo, double hi, bool lo_open,
                            double *out, bool *given, fg_api_error *err) {
    json_t *v = field(obj, key);
    if (given)
        *given = false;
    if (!v)
        return FG_OK;
    if (!json_is_number(v))
        return BAD(key, "'%s' must be a number, got %s", key, json_type_name(v));
    double d = json_number_value(v);
    if (!(d >= lo && d <= hi) || (lo_open && d == lo))
        return BAD(key, "'%s' must be in %s%g, %g], got %g", key, lo_open ? "(" : "[", lo, hi, d);
    *out = d;
    if (given)
        *given = true;
    return FG_OK;
}

static fg_status get_int(json_t *obj, const char *key, int64_t lo, int64_t hi, int64_t *out,
                         bool *given, fg_api_error *err) {
    json_t *v = field(obj, key);
    if (given)
        *given = false;
    if (!v)
        return FG_OK;
    int64_t x;
    if (json_is_integer(v)) {
        x = (int64_t)json_integer_value(v);
    } else if (json_is_real(v)) {
        double d = json_real_value(v);
        if (!(d == floor(d)) || !(fabs(d) < 9.0e15))
            return BAD(key, "'%s' must be an integer, got %g", key, d);
        x = (int64_t)d;
    } else {
        return BAD(key, "'%s' must be an integer, got %s", key, json_type_name(v));
    }
    if (x < lo || x > hi)
        return BAD(key, "'%s' must be in [%lld, %lld], got %lld", key, (long long)lo,
                   (long long)hi, (long long)x);
    *out = x;
    if (given)
        *given = true;
    return FG_OK;
}

static fg_status get_bool(json_t *obj, const char *key, bool *out, fg_api_error *err) {
    json_t *v = field(obj, key);
    if (!v)
        return FG_OK;
    if (!json_is_boolean(v))
        return BAD(key, "'%s' must be a boolean, got %s", key, json_type_name(v));
    *out = json_is_true(v);
    return FG_OK;
}

static fg_status parse_stop(json_t *obj, fg_api_request *r, fg_api_error *err) {
    json_t *v = field(obj, "stop");
    if (!v)
        return FG_OK;
    json_t *one[1] = {v};
    json_t **items = one;
    size_t n = 1;
    if (json_is_array(v)) {
        n = json_array_size(v);
        if (n > FG_MAX_STOP)
            return BAD("stop", "'stop' holds at most %d strings, got %zu", FG_MAX_STOP, n);
        items = NULL;
    } else if (!json_is_string(v)) {
        return BAD("stop", "'stop' must be a string or an array of strings, got %s",
                   json_type_name(v));
    }
    for (size_t i = 0; i < n; i++) {
        json_t *s = items ? items[i] : json_array_get(v, i);
        if (!json_is_string(s))
            return BAD("stop", "'stop[%zu]' must be a string, got %s", i, json_type_name(s));
        size_t len = json_string_length(s);
        if (len == 0)
            continue; // OpenAI ignores empty stop strings
        if (len > MAX_STOP_LEN)
            return BAD("stop", "'stop' strings are at most %d bytes, got %zu", MAX_STOP_LEN, len);
        r->stop[r->n_stop++] = fg_xstrndup(json_string_value(s), len);
    }
    return FG_OK;
}

static fg_status parse_prompt(json_t *obj, const fg_api_limits *lim, fg_api_request *r,
                              fg_api_error *err) {
    json_t *p = field(obj, "prompt");
    if (!p)
        return BAD("prompt", "'prompt' is required");
    if (json_is_array(p) && json_array_size(p) == 1 &&
        (json_is_string(json_array_get(p, 0)) || json_is_array(json_array_get(p, 0))))
        p = json_array_get(p, 0); // a batch of one
    if (json_is_string(p)) {
        r->prompt_len = json_string_length(p);
        r->prompt_text = fg_xstrndup(json_string_value(p), r->prompt_len);
        return FG_OK;
    }
    if (!json_is_array(p))
        return BAD("prompt", "'prompt' must be a string or an array of token ids, got %s",
                   json_type_name(p));
    size_t n = json_array_size(p);
    if (n == 0)
        return BAD("prompt", "'prompt' must not be empty");
    if (json_is_string(json_array_get(p, 0)) || json_is_array(json_array_get(p, 0)))
        return BAD("prompt", "only one prompt per request is supported, got %zu", n);
    // longer than the context is judged later (it may be truncated); this only bounds memory
    if (n > FG_API_MAX_PROMPT_IDS)
        return BAD("prompt", "'prompt' has %zu tokens, more than %d", n, FG_API_MAX_PROMPT_IDS);
    r->prompt_ids = malloc(n * sizeof(int32_t)); // input-sized: no abort on failure
    if (!r->prompt_ids)
        return api_fail(err, 500, "server_error", "prompt", "out_of_memory",
                        "out of memory for %zu prompt tokens", n);
    for (size_t i = 0; i < n; i++) {
        json_t *t = json_array_get(p, i);
        if (!json_is_integer(t))
            return BAD("prompt", "'prompt[%zu]' must be a token id (integer), got %s", i,
                       json_type_name(t));
        json_int_t id = json_integer_value(t);
        int64_t hi = lim->n_vocab > 0 ? lim->n_vocab - 1 : INT32_MAX;
        if (id < 0 || id > hi)
            return BAD("prompt", "'prompt[%zu]': token id %lld out of range [0, %lld]", i,
                       (long long)id, (long long)hi);
        r->prompt_ids[i] = (int32_t)id;
    }
    r->n_prompt_ids = (int32_t)n;
    r->prompt_is_ids = true;
    return FG_OK;
}

static char *store(fg_api_request *r, const char *s, size_t len) {
    r->msg_store = fg_xrealloc(r->msg_store, (size_t)(r->n_msg_store + 1) * sizeof(char *));
    char *c = fg_xstrndup(s, len);
    r->msg_store[r->n_msg_store++] = c;
    return c;
}

static fg_status parse_messages(json_t *obj, const fg_api_limits *lim, fg_api_request *r,
                                fg_api_error *err) {
    json_t *m = field(obj, "messages");
    if (!m)
        return BAD("messages", "'messages' is required");
    if (!json_is_array(m))
        return BAD("messages", "'messages' must be an array, got %s", json_type_name(m));
    size_t n = json_array_size(m);
    int32_t max_msgs = lim->max_messages > 0 ? lim->max_messages : 4096;
    if (n == 0)
        return BAD("messages", "'messages' must not be empty");
    if (n > (size_t)max_msgs)
        return BAD("messages", "'messages' holds at most %d messages, got %zu", max_msgs, n);
    r->messages = fg_xcalloc(n, sizeof(fg_chat_msg));
    for (size_t i = 0; i < n; i++) {
        json_t *msg = json_array_get(m, i);
        if (!json_is_object(msg))
            return BAD("messages", "'messages[%zu]' must be an object, got %s", i,
                       json_type_name(msg));
        const char *mk;
        json_t *mv;
        json_object_foreach(msg, mk, mv) { // "name", "tool_calls", ...: not silently dropped
            if (strcmp(mk, "role") && strcmp(mk, "content") && !json_is_null(mv))
                return BAD("messages", "'messages[%zu].%.60s' is not supported by this server", i,
                           mk);
        }
        json_t *role = json_object_get(msg, "role");
        if (!json_is_string(role))
            return BAD("messages", "'messages[%zu].role' must be a string", i);
        const char *rs = json_string_value(role);
        if (!strcmp(rs, "developer"))
            rs = "system";
        if (strcmp(rs, "system") && strcmp(rs, "user") && strcmp(rs, "assistant"))
            return BAD("messages",
                       "'messages[%zu].role' must be system, user or assistant, got '%.64s'", i,
                       rs);
        json_t *content = json_object_get(msg, "content");
        const char *text = "";
        size_t text_len = 0;
        if (json_is_string(content)) {
            text = store(r, json_string_value(content), json_string_length(content));
            text_len = json_string_length(content);
        } else if (json_is_array(content)) {
            // content parts: only {"type":"text","text":...}, concatenated
            size_t total = 0, np = json_array_size(content);
            for (size_t k = 0; k < np; k++) {
                json_t *part = json_array_get(content, k);
                json_t *type = json_is_object(part) ? json_object_get(part, "type") : NULL;
                json_t *pt = json_is_object(part) ? json_object_get(part, "text") : NULL;
                if (!json_is_string(type) || strcmp(json_string_value(type), "text") ||
                    !json_is_string(pt))
                    return BAD("messages",
                               "'messages[%zu].content[%zu]' must be {\"type\":\"text\",\"text\":...}",
                               i, k);
                total += json_string_length(pt);
            }
            char *buf = fg_xmalloc(total + 1);
            size_t off = 0;
            for (size_t k = 0; k < np; k++) {
                json_t *pt = json_object_get(json_array_get(content, k), "text");
                memcpy(buf + off, json_string_value(pt), json_string_length(pt));
                off += json_string_length(pt);
            }
            buf[off] = '\0';
            text = store(r, buf, off);
            free(buf);
            text_len = off;
        } else if (json_is_null(content) || !content) {
            if (strcmp(rs, "assistant"))
                return BAD("messages", "'messages[%zu].content' is required", i);
        } else {
            return BAD("messages", "'messages[%zu].content' must be a string, got %s", i,
                       json_type_name(content));
        }
        r->messages[i].role = store(r, rs, strlen(rs));
        r->messages[i].content = text;
        r->messages[i].content_len = text_len;
        r->n_messages = (int32_t)i + 1;
    }
    return FG_OK;
}

static fg_status parse_body(fg_api_kind kind, json_t *root, const fg_api_limits *lim,
                            fg_api_request *r, fg_api_error *err) {
    if (!json_is_object(root))
        return BAD(NULL, "the request body must be a JSON object, got %s", json_type_name(root));
    FG_TRY(check_fields(root, kind, err));
    json_t *model = field(root, "model");
    if (model && !json_is_string(model))
        return BAD("model", "'model' must be a string, got %s", json_type_name(model));
    if (model) {
        r->model = fg_xstrdup(json_string_value(model));
        if (lim->model_id && strcmp(r->model, lim->model_id))
            return api_fail(err, 404, "invalid_request_error", "model", "model_not_found",
                            "The model '%.200s' does not exist (this server serves '%.200s')",
                            r->model, lim->model_id);
    }
    if (kind == FG_API_COMPLETION)
        FG_TRY(parse_prompt(root, lim, r, err));
    else
        FG_TRY(parse_messages(root, lim, r, err));

    int32_t n_ctx = lim->n_ctx > 0 ? lim->n_ctx : (1 << 20);
    int64_t iv = 0;
    bool given = false;
    r->max_tokens = -1;
    FG_TRY(get_int(root, "max_tokens", kind == FG_API_CHAT ? 1 : 0, n_ctx, &iv, &given, err));
    if (given)
        r->max_tokens = (int32_t)iv;
    if (kind == FG_API_CHAT) {
        FG_TRY(get_int(root, "max_completion_tokens", 1, n_ctx, &iv, &given, err));
        if (given)
            r->max_tokens = (int32_t)iv;
    }
    double d = 0;
    fg_sampling *s = &r->sampling;
    FG_TRY(get_number(root, "temperature", 0, 2, false, &d, &given, err));
    if (given)
        s->temperature = (float)d;
    FG_TRY(get_number(root, "top_p", 0, 1, false, &d, &given, err));
    if (given)
        s->top_p = (float)d;
    FG_TRY(get_int(root, "top_k", 0, INT32_MAX, &iv, &given, err));
    if (given)
        s->top_k = (int32_t)iv;
    FG_TRY(get_number(root, "min_p", 0, 1, false, &d, &given, err));
    if (given)
        s->min_p = (float)d;
    FG_TRY(get_number(root, "presence_penalty", -2, 2, false, &d, &given, err));
    if (given)
        s->presence_penalty = (float)d;
    FG_TRY(get_number(root, "frequency_penalty", -2, 2, false, &d, &given, err));
    if (given)
        s->frequency_penalty = (float)d;
    FG_TRY(get_number(root, "repeat_penalty", 0, 10, true, &d, &given, err));
    if (given)
        s->repeat_penalty = (float)d;
    FG_TRY(get_int(root, "repeat_last_n", -1, n_ctx, &iv, &given, err));
    if (given)
        s->repeat_last_n = (int32_t)iv;
    FG_TRY(get_int(root, "seed", INT64_MIN, INT64_MAX, &iv, &r->seed_given, err));
    if (r->seed_given)
        s->seed = (uint64_t)iv;
    int32_t max_n = lim->max_n > 0 ? lim->max_n : 16;
    iv = 1;
    FG_TRY(get_int(root, "n", 1, max_n, &iv, NULL, err));
    r->n = (int32_t)iv;
    FG_TRY(parse_stop(root, r, err));
    FG_TRY(parse_logit_bias(root, lim, r, err));

    r->logprobs = -1;
    if (kind == FG_API_COMPLETION) {
        json_t *lp = field(root, "logprobs");
        if (lp && json_is_boolean(lp))
            return BAD("logprobs", "'logprobs' must be an integer (0..%d) for completions",
                       FG_MAX_TOP_LOGPROBS);
        FG_TRY(get_int(root, "logprobs", 0, FG_MAX_TOP_LOGPROBS, &iv, &given, err));
        if (given)
            r->logprobs = (int32_t)iv;
        FG_TRY(get_bool(root, "echo", &r->echo, err));
    } else {
        bool want = false;
        FG_TRY(get_bool(root, "logprobs", &want, err));
        FG_TRY(get_int(root, "top_logprobs", 0, FG_MAX_TOP_LOGPROBS, &iv, &given, err));
        if (given && !want)
            return BAD("top_logprobs", "'top_logprobs' requires 'logprobs': true");
        if (want)
            r->logprobs = given ? (int32_t)iv : 0;
        r->add_generation_prompt = true;
        FG_TRY(get_bool(root, "add_generation_prompt", &r->add_generation_prompt, err));
    }
    FG_TRY(get_bool(root, "stream", &r->stream, err));
    json_t *so = field(root, "stream_options");
    if (so) {
        if (!json_is_object(so))
            return BAD("stream_options", "'stream_options' must be an object, got %s",
                       json_type_name(so));
        FG_TRY(get_bool(so, "include_usage", &r->include_usage, err));
    }
    FG_TRY(get_bool(root, "ignore_eos", &r->ignore_eos, err));
    FG_TRY(get_bool(root, "truncate", &r->truncate, err));
    if (r->echo && r->stream && r->logprobs >= 0 && kind == FG_API_COMPLETION)
        return BAD("echo", "'echo' with 'logprobs' is not supported when streaming");
    json_t *best_of = field(root, "best_of");
    if (best_of && !(json_is_integer(best_of) && json_integer_value(best_of) == r->n))
        return BAD("best_of", "'best_of' other than n is not supported");
    return FG_OK;
}

fg_status fg_server_parse_request(fg_api_kind kind, const char *json, size_t len,
                                  const fg_api_limits *lim, fg_api_request *out,
                                  fg_api_error *err) {
    memset(err, 0, sizeof *err);
    if (fg_json_nesting_depth(json, len) > FG_API_MAX_DEPTH) {
        api_fail(err, 400, "invalid_request_error", NULL, "json_too_deep",
                 "request body is nested deeper than %d levels", FG_API_MAX_DEPTH);
        return FG_ERR_FORMAT;
    }
    json_error_t jerr;
    json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        api_fail(err, 400, "invalid_request_error", NULL, "invalid_json",
                 "malformed JSON in the request body at line %d column %d: %s", jerr.line,
                 jerr.column, jerr.text);
        return FG_ERR_FORMAT;
    }
    fg_api_request r;
    memset(&r, 0, sizeof r);
    r.kind = kind;
    r.sampling = fg_sampling_default();
    fg_status st = parse_body(kind, root, lim, &r, err);
    json_decref(root);
    if (st != FG_OK) {
        fg_api_request_free(&r);
        return st;
    }
    *out = r;
    return FG_OK;
}

void fg_api_request_free(fg_api_request *r) {
    if (!r)
        return;
    free(r->model);
    free(r->prompt_text);
    free(r->prompt_ids);
    free(r->messages);
    for (int32_t i = 0; i < r->n_msg_store; i++)
        free(r->msg_store[i]);
    free(r->msg_store);
    for (int32_t i = 0; i < r->n_stop; i++)
        free(r->stop[i]);
    free(r->logit_bias);
    memset(r, 0, sizeof *r);
}

void fg_api_request_to_params(const fg_api_request *r, const int32_t *prompt, int32_t n_prompt,
                              int32_t choice, fg_request_params *out) {
    memset(out, 0, sizeof *out);
    out->prompt = prompt;
    out->n_prompt = n_prompt;
    out->max_tokens = r->max_tokens;
    out->sampling = r->sampling;
    out->sampling.seed = r->sampling.seed + (uint64_t)choice;
    out->sampling.logit_bias = r->logit_bias; // view: the sampler copies it at submit
    out->sampling.n_logit_bias = r->n_logit_bias;
    for (int32_t i = 0; i < r->n_stop && i < FG_MAX_STOP; i++)
        out->stop[i] = r->stop[i];
    out->n_stop = r->n_stop;
    out->ignore_eos = r->ignore_eos;
    out->logprobs = r->logprobs;
    out->echo_logprobs = r->echo && r->logprobs >= 0;
}
