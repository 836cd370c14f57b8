// http_head.c - the check the connection gate (gate.c) runs on a request head before any byte of
// it reaches libmicrohttpd: is it complete, and is its framing sound (request line, header
// syntax, Content-Length / Transfer-Encoding, Host)? A head that is not gets one well-formed
// JSON error from the gate instead of libmicrohttpd's own error page (0.9.75 writes its status
// line and headers twice for those). Network-free: the fuzz target and unit tests call it.
// Not here: routing, limits or the body (server.c, gate.c).
#include "forge/server.h"

#include "base/util.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

static int verdict(fg_http_head_verdict *v, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int verdict(fg_http_head_verdict *v, int status, const char *fmt, ...) {
    v->status = status;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(v->message, sizeof v->message, fmt, ap);
    va_end(ap);
    return -1;
}

// RFC 9110 token characters (method and header names).
static bool is_tchar(unsigned char c) {
    return isalnum(c) || (c && strchr("!#$%&'*+-.^_`|~", c));
}

// End of the line starting at p (the '\n'), or NULL when the buffer ends first.
static const char *line_end(const char *p, const char *end) {
    const char *nl = memchr(p, '\n', (size_t)(end - p));
    return nl;
}

// Length of a line without its terminator ("\r\n" or a bare "\n").
static size_t line_len(const char *p, const char *nl) {
    size_t n = (size_t)(nl - p);
    return n > 0 && p[n - 1] == '\r' ? n - 1 : n;
}

static void trim(const char **v, size_t *n) {
    while (*n && (**v == ' ' || **v == '\t')) {
        (*v)++;
        (*n)--;
    }
    while (*n && ((*v)[*n - 1] == ' ' || (*v)[*n - 1] == '\t'))
        (*n)--;
}

static int check_request_line(const char *p, size_t n, fg_http_head_verdict *v) {
    size_t i = 0;
    while (i < n && is_tchar((unsigned char)p[i]))
        i++;
    if (i == 0 || i > 32 || i >= n || p[i] != ' ')
        return verdict(v, 400, "malformed request line (expected METHOD SP TARGET SP HTTP/1.x)");
    size_t t0 = ++i;
    while (i < n && p[i] != ' ') {
        unsigned char c = (unsigned char)p[i];
        if (c <= 0x20 || c == 0x7f)
            return verdict(v, 400, "malformed request target (control character at byte %zu)",
                           i);
        i++;
    }
    if (i == t0 || i >= n)
        return verdict(v, 400, "malformed request line (expected METHOD SP TARGET SP HTTP/1.x)");
    const char *ver = p + i + 1;
    size_t vn = n - i - 1;
    if (vn != 8 || memcmp(ver, "HTTP/", 5) || !isdigit((unsigned char)ver[5]) || ver[6] != '.' ||
        !isdigit((unsigned char)ver[7]))
        return verdict(v, 400, "malformed HTTP version in the request line");
    if (ver[5] != '1' || (ver[7] != '0' && ver[7] != '1'))
        return verdict(v, 505, "HTTP version %.8s is not supported (HTTP/1.0 and 1.1 are)", ver);
    v->http11 = ver[7] == '1';
    return 0;
}

// Content-Length: 1*DIGIT; several copies must agree.
static int check_content_length(const char *val, size_t n, fg_http_head_verdict *v) {
    trim(&val, &n);
    if (n == 0)
        return verdict(v, 400, "malformed Content-Length header: empty value");
    unsigned long long x = 0;
    for (size_t i = 0; i < n; i++) {
        if (val[i] < '0' || val[i] > '9')
            return verdict(v, 400, "malformed Content-Length header '%.*s': not a decimal number",
                           (int)FG_MIN(n, 40), val);
        unsigned d = (unsigned)(val[i] - '0');
        if (x > (~0ull - d) / 10)
            return verdict(v, 413, "Content-Length %.*s is too large", (int)FG_MIN(n, 40), val);
        x = x * 10 + d;
    }
    if (v->has_content_length && v->content_length != x)
        return verdict(v, 400, "conflicting Content-Length headers (%llu and %llu)",
                       (unsigned long long)v->content_length, x);
    v->has_content_length = true;
    v->content_length = x;
    return 0;
}

int fg_http_head_check(const char *buf, size_t n, size_t max_head, fg_http_head_verdict *v) {
    memset(v, 0, sizeof *v);
    const char *end = buf + n;
    const char *p = buf;
    // a client may send empty lines before the request line (RFC 9112 2.2)
    while (p < end && (*p == '\r' || *p == '\n'))
        p++;
    if (memchr(buf, '\0', n))
        return verdict(v, 400, "NUL byte in the request head");
    // the head ends at the first empty line
    const char *head_end = NULL;
    for (const char *q = p; q < end;) {
        const char *nl = line_end(q, end);
        if (!nl)
            break;
        if (line_len(q, nl) == 0 && q != p) {
            head_end = nl + 1;
            break;
        }
        q = nl + 1;
    }
    if (!head_end) {
        if (n >= max_head)
            return verdict(v, 431, "request head larger than %zu bytes", max_head);
        // a complete but malformed request line can be refused before the rest arrives
        const char *nl = line_end(p, end);
        if (nl && check_request_line(p, line_len(p, nl), v) < 0)
            return -1;
        return 0;
    }
    if ((size_t)(head_end - buf) > max_head)
        return verdict(v, 431, "request head larger than %zu bytes", max_head);
    const char *nl = line_end(p, end);
    if (check_request_line(p, line_len(p, nl), v) < 0)
        return -1;
    bool has_te = false, chunked = false;
    int32_t n_host = 0;
    for (const char *q = nl + 1; q < head_end;) {
        const char *e = line_end(q, head_end);
        size_t len = line_len(q, e);
        if (len == 0)
            break;
        if (memchr(q, '\r', len))
            return verdict(v, 400, "bare CR in a header line");
        if (*q == ' ' || *q == '\t')
            return verdict(v, 400, "folded header lines are not accepted");
        size_t k = 0;
        while (k < len && is_tchar((unsigned char)q[k]))
            k++;
        if (k == 0 || k >= len || q[k] != ':')
            return verdict(v, 400, "malformed header line '%.*s'", (int)FG_MIN(len, 40),
                           q);
        const char *val = q + k + 1;
        size_t vn = len - k - 1;
        if (k == 14 && !strncasecmp(q, "Content-Length", 14)) {
            if (check_content_length(val, vn, v) < 0)
                return -1;
        } else if (k == 17 && !strncasecmp(q, "Transfer-Encoding", 17)) {
            trim(&val, &vn);
            if (has_te || vn != 7 || strncasecmp(val, "chunked", 7))
                return verdict(v, 501, "Transfer-Encoding '%.*s' is not supported (only chunked)",
                               (int)FG_MIN(vn, 40), val);
            has_te = chunked = true;
        } else if (k == 4 && !strncasecmp(q, "Host", 4)) {
            n_host++;
        }
        q = e + 1;
    }
    if (has_te && v->has_content_length)
        return verdict(v, 400, "both Content-Length and Transfer-Encoding in one request");
    if (v->http11 && n_host != 1)
        return verdict(v, 400, n_host ? "several Host headers" : "HTTP/1.1 request without Host");
    v->chunked = chunked;
    v->head_len = (size_t)(head_end - buf);
    v->status = 0;
    return 1;
}
