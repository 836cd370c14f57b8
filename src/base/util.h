// util.h - small shared helpers: checked allocation for host bookkeeping, overflow-safe
// size arithmetic, min/max. Large or input-sized allocations use the try-forms and
// return FG_ERR_NOMEM instead of aborting.
#ifndef FG_BASE_UTIL_H
#define FG_BASE_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

// Abort on failure: small bookkeeping only (like redis zmalloc). Never sized from input.
void *fg_xmalloc(size_t n);
void *fg_xcalloc(size_t n, size_t size);
void *fg_xrealloc(void *p, size_t n);
char *fg_xstrdup(const char *s);
char *fg_xstrndup(const char *s, size_t n);

// Overflow-safe arithmetic: return false on overflow, *out untouched.
static inline bool fg_mul_u64(uint64_t a, uint64_t b, uint64_t *out) {
    uint64_t r;
    if (__builtin_mul_overflow(a, b, &r))
        return false;
    *out = r;
    return true;
}
static inline bool fg_add_u64(uint64_t a, uint64_t b, uint64_t *out) {
    uint64_t r;
    if (__builtin_add_overflow(a, b, &r))
        return false;
    *out = r;
    return true;
}
static inline bool fg_mul_size(size_t a, size_t b, size_t *out) {
    size_t r;
    if (__builtin_mul_overflow(a, b, &r))
        return false;
    *out = r;
    return true;
}

#define FG_MIN(a, b) ((a) < (b) ? (a) : (b))
#define FG_MAX(a, b) ((a) > (b) ? (a) : (b))
#define FG_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

// Monotonic clock in seconds.
double fg_time_s(void);

#endif // FG_BASE_UTIL_H
