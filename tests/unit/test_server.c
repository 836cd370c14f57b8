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

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_head_complete),
        cmocka_unit_test(test_head_incomplete),
        cmocka_unit_test(test_head_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
