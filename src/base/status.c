// status.c - per-thread error messages behind fg_fail / fg_last_error.
#include "base/status.h"

#include <stdarg.h>
#include <string.h>

#define FG_ERR_MSG_MAX 1024

static _Thread_local char g_msg[FG_ERR_MSG_MAX];

const char *fg_status_name(fg_status st) {
    switch (st) {
    case FG_OK: return "ok";
    case FG_ERR_NOMEM: return "out of memory";
    case FG_ERR_IO: return "i/o error";
    case FG_ERR_FORMAT: return "format error";
    case FG_ERR_UNSUPPORTED: return "unsupported";
    case FG_ERR_INVALID_ARG: return "invalid argument";
    case FG_ERR_CAPACITY: return "capacity exhausted";
    case FG_ERR_DEVICE: return "device error";
    case FG_ERR_CANCELLED: return "cancelled";
    }
    return "unknown status";
}

const char *fg_last_error(void) { return g_msg; }

void fg_error_clear(void) { g_msg[0] = '\0'; }

fg_status fg_fail(fg_status st, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_msg, sizeof g_msg, fmt, ap);
    va_end(ap);
    // one line: fold any newline a caller's string brought in
    for (char *p = g_msg; *p; p++)
        if (*p == '\n' || *p == '\r')
            *p = ' ';
    return st;
}

void fg_error_prefix(const char *fmt, ...) {
    char prefix[FG_ERR_MSG_MAX];
    char old[FG_ERR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, g_msg, sizeof old);
    size_t n = strlen(prefix);
    if (n > sizeof g_msg - 3)
        n = sizeof g_msg - 3;
    memcpy(g_msg, prefix, n);
    g_msg[n] = ':';
    g_msg[n + 1] = ' ';
    size_t m = strnlen(old, sizeof old);
    if (m > sizeof g_msg - n - 3)
        m = sizeof g_msg - n - 3;
    memcpy(g_msg + n + 2, old, m);
    g_msg[n + 2 + m] = '\0';
}
