// status.h - internal error helpers: set the per-thread message and return a status in one
// expression; always-on assertions for our own bugs (never for input validation).
// Who calls it: every module under src/.
#ifndef FG_BASE_STATUS_H
#define FG_BASE_STATUS_H

#include "forge/status.h"

#include <stdio.h>
#include <stdlib.h>

#if defined(__GNUC__) || defined(__clang__)
#define FG_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define FG_PRINTF(a, b)
#endif

// Writes the one-line message for the calling thread and returns st.
fg_status fg_fail(fg_status st, const char *fmt, ...) FG_PRINTF(2, 3);

// Prefixes the current message with context ("<prefix>: <old message>").
void fg_error_prefix(const char *fmt, ...) FG_PRINTF(1, 2);

// Clears the message of the calling thread.
void fg_error_clear(void);

// return FG_FAIL(FG_ERR_FORMAT, "%s: tensor '%s': ...", path, name);
#define FG_FAIL(st, ...) fg_fail((st), __VA_ARGS__)

// Propagate a failure: FG_TRY(fg_gguf_open(path, &g));
#define FG_TRY(expr)                     \
    do {                                 \
        fg_status fg_try_st_ = (expr);   \
        if (fg_try_st_ != FG_OK)         \
            return fg_try_st_;           \
    } while (0)

// Bugs only: always compiled in, prints file:line and the expression, then aborts.
#define FG_ASSERT(cond)                                                              \
    do {                                                                             \
        if (!(cond)) {                                                               \
            fprintf(stderr, "forge: internal error at %s:%d: %s\n", __FILE__, __LINE__, \
                    #cond);                                                          \
            abort();                                                                 \
        }                                                                            \
    } while (0)

#endif // FG_BASE_STATUS_H
