// test_server.c - the server's network-free pieces: the request-head check the connection gate
// runs before libmicrohttpd sees a byte (complete / incomplete / refused with which status),
// request parsing (fields refused by name, logit_bias).
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "forge/server.h"

#include <stdio.h>
#include <string.h>

#define MAX_HEAD 16384

static int head(const char *text, fg_http_head_verdict *v) {
    return fg_http_head_check(text, strlen(text), MAX_HEAD, v);
}

static void test_head_complete(void **state) {
    (void)state;
    fg_http_head_verdict v;
    const char *req = "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 12\r\n\r\n{\"a\":1}";
    assert_int_equal(head(req, &v), 1);
    assert_int_equal(v.head_len, strstr(req, "{") - req);
    assert_true(v.has_content_length);
    assert_int_equal(v.content_length, 12);
    assert_true(v.http11);
    // bare LF line ends, leading empty line, HTTP/1.0 without Host, chunked
    assert_int_equal(head("\r\nGET /health HTTP/1.0\n\n", &v), 1);
    assert_false(v.http11);
    assert_int_equal(head("POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:  chunked \r\n\r\n", &v), 1);
    assert_true(v.chunked);
    // two equal Content-Lengths are one length
    assert_int_equal(head("POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\ncontent-length: 5\r\n\r\n", &v), 1);
}

static void test_head_incomplete(void **state) {
    (void)state;
    fg_http_head_verdict v;
    assert_int_equal(head("", &v), 0);
    assert_int_equal(head("GET /health HT", &v), 0);
    assert_int_equal(head("GET /health HTTP/1.1\r\nHost: x\r\n", &v), 0);
    assert_int_equal(head("GET /health HTTP/1.1\r\nHost: x\r\nX-a: b\r\n\r", &v), 0);
}

typedef struct bad_case {
    const char *text;
    int status;
    const char *contains;
} bad_case;

static void test_head_refused(void **state) {
    (void)state;
    static const bad_case cases[] = {
        {"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: abc\r\n\r\n", 400, "'abc'"},
        {"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", 400, "Content-Length"},
        {"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 1 2\r\n\r\n", 400, "'1 2'"},
        {"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n", 400, "'+5'"},
        {"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 0x10\r\n\r\n", 400, "'0x10'"},
        {"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length:\r\n\r\n", 400, "empty"},
        {"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\n", 413,
         "too large"},
        {"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\n", 400,
         "conflicting"},
        {"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
         400, "both"},
        {"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 501, "gzip"},
        {"GET /x HTTP/1.1\r\n\r\n", 400, "without Host"},
        {"GET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, "several Host"},
        {"GET /x HTTP/2.0\r\nHost: a\r\n\r\n", 505, "HTTP/2.0"},
        {"GET /x FTP/1.1\r\nHost: a\r\n\r\n", 400, "version"},
        {"GET\r\nHost: a\r\n\r\n", 400, "request line"},
        {"GET  /x HTTP/1.1\r\nHost: a\r\n\r\n", 400, "request line"},
        {"GET /x HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n", 400, "folded"},
        {"GET /x HTTP/1.1\r\nHost: a\r\nBad Name: v\r\n\r\n", 400, "malformed header"},
        {"GET /x HTTP/1.1\r\nHost: a\r\nNoColon\r\n\r\n", 400, "malformed header"},
        {"GET /x HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n", 400, "bare CR"},
        // refused before the head ends: a broken request line is known at once
        {"G@T /x HTTP/1.1\r\nHost: a\r\n", 400, "request line"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        fg_http_head_verdict v;
        int rc = head(cases[i].text, &v);
        if (rc != -1 || v.status != cases[i].status || !strstr(v.message, cases[i].contains))
            fail_msg("case %zu (%s): rc %d status %d message '%s'", i, cases[i].text, rc,
                     v.status, v.message);
    }
    // NUL bytes and heads beyond the limit
    fg_http_head_verdict v;
    const char nul[] = "GET /x HTTP/1.1\r\nHost: a\0b\r\n\r\n";
    assert_int_equal(fg_http_head_check(nul, sizeof nul - 1, MAX_HEAD, &v), -1);
    assert_int_equal(v.status, 400);
    static char big[MAX_HEAD + 64];
    memset(big, 'a', sizeof big);
    memcpy(big, "GET /x HTTP/1.1\r\nHost: a\r\nX-Pad: ", 32);
    assert_int_equal(fg_http_head_check(big, sizeof big, MAX_HEAD, &v), -1);
    assert_int_equal(v.status, 431);
    // a complete head that ends beyond the limit is refused too
    memcpy(big + sizeof big - 4, "\r\n\r\n", 4);
    assert_int_equal(fg_http_head_check(big, sizeof big, MAX_HEAD, &v), -1);
    assert_int_equal(v.status, 431);
}

static fg_status parse(fg_api_kind kind, const char *json, fg_api_request *r, fg_api_error *e) {
    fg_api_limits lim = {.n_ctx = 256, .n_vocab = 512};
    return fg_server_parse_request(kind, json, strlen(json), &lim, r, e);
}

// logit_bias parses into (token, bias) pairs that reach the sampling parameters.
static void test_parse_logit_bias(void **state) {
    (void)state;
    fg_api_request r;
    fg_api_error e;
    assert_int_equal(parse(FG_API_COMPLETION,
                           "{\"prompt\": \"x\", \"logit_bias\": {\"5\": -100, \"511\": 2.5}}", &r, &e),
                     FG_OK);
    assert_int_equal(r.n_logit_bias, 2);
    int32_t prompt[1] = {1};
    fg_request_params p;
    fg_api_request_to_params(&r, prompt, 1, 0, &p);
    assert_int_equal(p.sampling.n_logit_bias, 2);
    float b5 = 0, b511 = 0;
    for (int32_t i = 0; i < 2; i++) {
        if (p.sampling.logit_bias[i].token == 5)
            b5 = p.sampling.logit_bias[i].bias;
        if (p.sampling.logit_bias[i].token == 511)
            b511 = p.sampling.logit_bias[i].bias;
    }
    assert_true(b5 == -100.0f && b511 == 2.5f);
    fg_api_request_free(&r);
    assert_int_equal(parse(FG_API_COMPLETION, "{\"prompt\": \"x\", \"logit_bias\": {\"512\": 1}}", &r,
                           &e),
                     FG_ERR_INVALID_ARG);
    assert_string_equal(e.param, "logit_bias");
    assert_string_equal(e.message, "'logit_bias' key '512' is not a token id in [0, 511]");
}

// Every field is known or refused by name (param = the field); no-op forms pass.
static void test_parse_fields(void **state) {
    (void)state;
    fg_api_request r;
    fg_api_error e;
    static const struct {
        fg_api_kind kind;
        const char *json, *param, *code;
    } bad[] = {
        {FG_API_CHAT, "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"tools\": [{}]}",
         "tools", "unsupported_parameter"},
        {FG_API_CHAT,
         "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"response_format\": "
         "{\"type\": \"json_schema\"}}",
         "response_format", "unsupported_parameter"},
        {FG_API_COMPLETION, "{\"prompt\": \"x\", \"frobnicate\": true}", "frobnicate",
         "unknown_parameter"},
        {FG_API_COMPLETION, "{\"prompt\": \"x\", \"messages\": []}", "messages", "unknown_parameter"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(parse(bad[i].kind, bad[i].json, &r, &e), FG_ERR_INVALID_ARG);
        assert_int_equal(e.http_status, 400);
        assert_string_equal(e.param, bad[i].param);
        assert_string_equal(e.code, bad[i].code);
    }
    assert_int_equal(parse(FG_API_CHAT,
                           "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"user\": \"u\", "
                           "\"tool_choice\": \"none\", \"tools\": [], \"response_format\": {\"type\": "
                           "\"text\"}, \"functions\": null}",
                           &r, &e),
                     FG_OK);
    fg_api_request_free(&r);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_head_complete),
        cmocka_unit_test(test_head_incomplete),
        cmocka_unit_test(test_head_refused),
        cmocka_unit_test(test_parse_logit_bias),
        cmocka_unit_test(test_parse_fields),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
