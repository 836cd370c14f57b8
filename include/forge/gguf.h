// forge/gguf.h - GGUF v2/v3 reader (memory-mapped; tensors and strings are views into the
// mapping) and writer (used by `forge synth` and by tests that build files).
// Every number read from the file is validated before use; failures name the file and the
// field and say expected vs found.
#ifndef FORGE_GGUF_H
#define FORGE_GGUF_H

#include "forge/status.h"

#ifdef __cplusplus
extern "C" {
#endif

// Metadata value types, GGUF ids (frozen).
typedef enum fg_gguf_type {
    FG_GGUF_UINT8 = 0,
    FG_GGUF_INT8 = 1,
    FG_GGUF_UINT16 = 2,
    FG_GGUF_INT16 = 3,
    FG_GGUF_UINT32 = 4,
    FG_GGUF_INT32 = 5,
    FG_GGUF_FLOAT32 = 6,
    FG_GGUF_BOOL = 7,
    FG_GGUF_STRING = 8,
    FG_GGUF_ARRAY = 9,
    FG_GGUF_UINT64 = 10,
    FG_GGUF_INT64 = 11,
    FG_GGUF_FLOAT64 = 12,
    FG_GGUF_TYPE_COUNT
} fg_gguf_type;

#define FG_GGUF_MAX_DIMS 4
#define FG_GGUF_DEFAULT_ALIGNMENT 32

typedef struct fg_gguf fg_gguf;

// One tensor: a view into the mapping, valid until fg_gguf_close.
typedef struct fg_gguf_tensor {
    const char *name;              // NUL-terminated (owned by the fg_gguf)
    uint32_t type;                 // weight type id (see forge/types.h), known to the traits table
    int n_dims;                    // 1..4
    int64_t ne[FG_GGUF_MAX_DIMS];  // elements per dim, ne[0] innermost; unused dims are 1
    uint64_t offset;               // from the start of the data section
    uint64_t n_bytes;              // size of the data
    const void *data;              // view into the mapping
} fg_gguf_tensor;

// A metadata value, as a view. For arrays, elements are read with the fg_gguf_arr_* calls.
typedef struct fg_gguf_value {
    fg_gguf_type type;
    fg_gguf_type elem_type; // ARRAY only
    uint64_t n;             // ARRAY: element count; STRING: byte length
    const void *data;       // scalar bytes (little endian, possibly unaligned) or string bytes
} fg_gguf_value;

// Opens and validates a GGUF file (mmap). `name` in messages is the path.
fg_status fg_gguf_open(const char *path, fg_gguf **out);
// Same over a caller-owned buffer (fuzzing, tests); `name` is used in messages. The buffer
// must outlive the fg_gguf.
fg_status fg_gguf_open_memory(const void *data, size_t size, const char *name, fg_gguf **out);
void fg_gguf_close(fg_gguf *g); // NULL is a no-op

const char *fg_gguf_path(const fg_gguf *g);
uint32_t fg_gguf_version(const fg_gguf *g);
uint64_t fg_gguf_alignment(const fg_gguf *g);
uint64_t fg_gguf_file_size(const fg_gguf *g);
uint64_t fg_gguf_data_offset(const fg_gguf *g); // start of the tensor data section

// --- metadata
int64_t fg_gguf_n_kv(const fg_gguf *g);
const char *fg_gguf_kv_key(const fg_gguf *g, int64_t i);
fg_gguf_value fg_gguf_kv_value(const fg_gguf *g, int64_t i);
int64_t fg_gguf_find_key(const fg_gguf *g, const char *key); // -1 when absent
const char *fg_gguf_type_name(fg_gguf_type t);

// Typed getters: FG_ERR_FORMAT when the key is missing (message: "<file>: key '<k>' not
// found") or has another type ("<file>: key '<k>': expected uint32, found string").
fg_status fg_gguf_get_u32(const fg_gguf *g, const char *key, uint32_t *out);
fg_status fg_gguf_get_i32(const fg_gguf *g, const char *key, int32_t *out);
fg_status fg_gguf_get_u64(const fg_gguf *g, const char *key, uint64_t *out);
fg_status fg_gguf_get_f32(const fg_gguf *g, const char *key, float *out);
fg_status fg_gguf_get_bool(const fg_gguf *g, const char *key, bool *out);
// String: *s points into the mapping and is NOT NUL-terminated; *len is its length.
fg_status fg_gguf_get_str(const fg_gguf *g, const char *key, const char **s, size_t *len);
// Lenient forms used by model loading: any integer type (value range checked) / any float type.
fg_status fg_gguf_get_int(const fg_gguf *g, const char *key, int64_t *out);
fg_status fg_gguf_get_float(const fg_gguf *g, const char *key, double *out);

// Arrays. fg_gguf_get_arr: element type and count (FG_ERR_FORMAT if missing or not an array).
fg_status fg_gguf_get_arr(const fg_gguf *g, const char *key, fg_gguf_type *elem_type, uint64_t *n);
// Element i of a string array (view, not NUL-terminated).
fg_status fg_gguf_get_arr_str(const fg_gguf *g, const char *key, uint64_t i, const char **s, size_t *len);
// Copy a numeric array: exactly n elements (n must equal the array length). f32 accepts
// FLOAT32 arrays; i32 accepts INT32 and UINT32 (range-checked) arrays.
fg_status fg_gguf_get_arr_f32(const fg_gguf *g, const char *key, float *dst, uint64_t n);
fg_status fg_gguf_get_arr_i32(const fg_gguf *g, const char *key, int32_t *dst, uint64_t n);
// Generic element access for any array (incl. nested): value view of element i of the
// array value v (for `forge info`).
fg_status fg_gguf_arr_elem(const fg_gguf *g, fg_gguf_value arr, uint64_t i, fg_gguf_value *out);

// --- tensors
int64_t fg_gguf_n_tensors(const fg_gguf *g);
const fg_gguf_tensor *fg_gguf_tensor_at(const fg_gguf *g, int64_t i);
const fg_gguf_tensor *fg_gguf_find_tensor(const fg_gguf *g, const char *name); // NULL if absent

// --- writer
typedef struct fg_gguf_writer fg_gguf_writer;

// Fills the n_bytes of tensor `index` (in the order tensors were added) into dst.
typedef fg_status (*fg_gguf_fill_fn)(void *user, int64_t index, void *dst, uint64_t n_bytes);

fg_status fg_gguf_writer_create(uint32_t version, fg_gguf_writer **out); // version 2 or 3
void fg_gguf_writer_destroy(fg_gguf_writer *w);
// Metadata setters: a key set twice replaces the earlier value.
void fg_gguf_writer_set_u32(fg_gguf_writer *w, const char *key, uint32_t v);
void fg_gguf_writer_set_i32(fg_gguf_writer *w, const char *key, int32_t v);
void fg_gguf_writer_set_u64(fg_gguf_writer *w, const char *key, uint64_t v);
void fg_gguf_writer_set_f32(fg_gguf_writer *w, const char *key, float v);
void fg_gguf_writer_set_bool(fg_gguf_writer *w, const char *key, bool v);
void fg_gguf_writer_set_str(fg_gguf_writer *w, const char *key, const char *s);
// Numeric array: n elements of elem_type, packed little-endian in data (copied).
void fg_gguf_writer_set_arr(fg_gguf_writer *w, const char *key, fg_gguf_type elem_type,
                            const void *data, uint64_t n);
// String array (copied): strs[i] of lens[i] bytes (lens NULL: NUL-terminated strings).
void fg_gguf_writer_set_arr_str(fg_gguf_writer *w, const char *key, const char *const *strs,
                                const size_t *lens, uint64_t n);
// Any scalar type (not STRING/ARRAY): the value's little-endian bytes are read from v.
void fg_gguf_writer_set_scalar(fg_gguf_writer *w, const char *key, fg_gguf_type type,
                               const void *v);
// An already encoded value of `type` (the bytes after the type id; e.g. nested arrays). The
// encoding is not checked here: tests use it to build unusual files.
void fg_gguf_writer_set_raw(fg_gguf_writer *w, const char *key, fg_gguf_type type,
                            const void *raw, size_t len);
// Copies key `key` (any type, arrays included) from an open file.
fg_status fg_gguf_writer_copy_kv(fg_gguf_writer *w, const fg_gguf *src, const char *key);
// Declares a tensor; its bytes are produced by the fill callback at write time.
fg_status fg_gguf_writer_add_tensor(fg_gguf_writer *w, const char *name, uint32_t type,
                                    int n_dims, const int64_t *ne);
// Writes the file (header, metadata, tensor infos, aligned data via fill).
fg_status fg_gguf_writer_write(fg_gguf_writer *w, const char *path, fg_gguf_fill_fn fill,
                               void *user);

#ifdef __cplusplus
}
#endif

#endif // FORGE_GGUF_H
