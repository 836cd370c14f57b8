// forge/status.h - what every Forge module shares: the status codes and the per-thread error
// message. Included by every public header; include "forge.h" for the whole API.
#ifndef FORGE_STATUS_H
#define FORGE_STATUS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define FORGE_VERSION "0.1.0"

// Every fallible function returns an fg_status and writes its results through
// out-parameters only on FG_OK. On failure, fg_last_error() returns the one-line message
// written by the failing site (naming the file, tensor, field or request concerned).
typedef enum fg_status {
    FG_OK = 0,
    FG_ERR_NOMEM,       // host or device allocation failed
    FG_ERR_IO,          // open/read/mmap/socket failed
    FG_ERR_FORMAT,      // malformed bytes: GGUF, JSON, HTTP, tokenizer data
    FG_ERR_UNSUPPORTED, // well-formed but not implemented (arch, weight type, op)
    FG_ERR_INVALID_ARG, // caller or client error (bad parameter, out of range)
    FG_ERR_CAPACITY,    // out of KV pages, queue full, context full: retry later
    FG_ERR_DEVICE,      // GPU runtime error; sticky
    FG_ERR_CANCELLED,   // request cancelled or client gone
} fg_status;

// Short name of a status ("ok", "format", ...).
const char *fg_status_name(fg_status st);

// The message of the last failure on the calling thread ("" if none).
const char *fg_last_error(void);

#ifdef __cplusplus
}
#endif

#endif // FORGE_STATUS_H
