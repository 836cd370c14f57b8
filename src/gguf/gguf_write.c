// gguf_write.c - GGUF v2/v3 writer: metadata is encoded into memory as it is set, tensors are
// declared up front and their bytes produced by a fill callback at write time, one tensor at a
// time, each at an offset aligned to general.alignment (default 32).
// Not here: reading (gguf_read.c), choosing weights (cli/cmd_synth.c).
// Who calls it: `forge synth`, tests that build GGUF files.
#include "forge/gguf.h"
#include "forge/types.h"

#include "base/status.h"
#include "base/util.h"
#include "gguf/gguf_internal.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct wkv {
    char *key;     // owned
    uint32_t type; // value type
    uint8_t *raw;  // encoded value (after the type id), owned
    size_t raw_len;
} wkv;

typedef struct wtensor {
    char *name; // owned
    uint32_t type;
    int n_dims;
    int64_t ne[FG_GGUF_MAX_DIMS];
    uint64_t n_bytes;
} wtensor;

struct fg_gguf_writer {
    uint32_t version;
    wkv *kv;
    size_t n_kv, cap_kv;
    wtensor *t;
    size_t n_t, cap_t;
};

// --- a growable byte buffer for encoding values
typedef struct buf {
    uint8_t *p;
    size_t n, cap;
} buf;

static void buf_put(buf *b, const void *src, size_t n) {
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->n + n)
            cap *= 2;
        b->p = fg_xrealloc(b->p, cap);
        b->cap = cap;
    }
    if (n)
        memcpy(b->p + b->n, src, n);
    b->n += n;
}
static void buf_u32(buf *b, uint32_t v) { buf_put(b, &v, 4); }
static void buf_u64(buf *b, uint64_t v) { buf_put(b, &v, 8); }
static void buf_str(buf *b, const char *s, size_t n) {
    buf_u64(b, n);
    buf_put(b, s, n);
}

fg_status fg_gguf_writer_create(uint32_t version, fg_gguf_writer **out) {
    if (version != 2 && version != 3)
        return FG_FAIL(FG_ERR_INVALID_ARG, "gguf writer: version %u is not supported (expected 2 or 3)",
                       version);
    fg_gguf_writer *w = fg_xcalloc(1, sizeof *w);
    w->version = version;
    *out = w;
    return FG_OK;
}

void fg_gguf_writer_destroy(fg_gguf_writer *w) {
    if (!w)
        return;
    for (size_t i = 0; i < w->n_kv; i++) {
        free(w->kv[i].key);
        free(w->kv[i].raw);
    }
    free(w->kv);
    for (size_t i = 0; i < w->n_t; i++)
        free(w->t[i].name);
    free(w->t);
    free(w);
}

// Takes ownership of raw.
static void set_raw(fg_gguf_writer *w, const char *key, uint32_t type, uint8_t *raw, size_t len) {
    FG_ASSERT(key != NULL);
    for (size_t i = 0; i < w->n_kv; i++) {
        if (strcmp(w->kv[i].key, key) == 0) {
            free(w->kv[i].raw);
            w->kv[i].type = type;
            w->kv[i].raw = raw;
            w->kv[i].raw_len = len;
            return;
        }
    }
    if (w->n_kv == w->cap_kv) {
        w->cap_kv = w->cap_kv ? w->cap_kv * 2 : 32;
        w->kv = fg_xrealloc(w->kv, w->cap_kv * sizeof *w->kv);
    }
    w->kv[w->n_kv++] = (wkv){fg_xstrdup(key), type, raw, len};
}

static void set_scalar(fg_gguf_writer *w, const char *key, uint32_t type, const void *v) {
    size_t n = fg_gguf_scalar_size(type);
    uint8_t *raw = fg_xmalloc(n);
    memcpy(raw, v, n);
    set_raw(w, key, type, raw, n);
}

void fg_gguf_writer_set_scalar(fg_gguf_writer *w, const char *key, fg_gguf_type type,
                               const void *v) {
    FG_ASSERT(fg_gguf_scalar_size(type) > 0);
    set_scalar(w, key, type, v);
}

void fg_gguf_writer_set_raw(fg_gguf_writer *w, const char *key, fg_gguf_type type,
                            const void *raw, size_t len) {
    uint8_t *copy = fg_xmalloc(len ? len : 1);
    if (len)
        memcpy(copy, raw, len);
    set_raw(w, key, type, copy, len);
}

void fg_gguf_writer_set_u32(fg_gguf_writer *w, const char *key, uint32_t v) {
    set_scalar(w, key, FG_GGUF_UINT32, &v);
}
void fg_gguf_writer_set_i32(fg_gguf_writer *w, const char *key, int32_t v) {
    set_scalar(w, key, FG_GGUF_INT32, &v);
}
void fg_gguf_writer_set_u64(fg_gguf_writer *w, const char *key, uint64_t v) {
    set_scalar(w, key, FG_GGUF_UINT64, &v);
}
void fg_gguf_writer_set_f32(fg_gguf_writer *w, const char *key, float v) {
    set_scalar(w, key, FG_GGUF_FLOAT32, &v);
}
void fg_gguf_writer_set_bool(fg_gguf_writer *w, const char *key, bool v) {
    uint8_t b = v ? 1 : 0;
    set_scalar(w, key, FG_GGUF_BOOL, &b);
}

void fg_gguf_writer_set_str(fg_gguf_writer *w, const char *key, const char *s) {
    buf b = {0};
    buf_str(&b, s, strlen(s));
    set_raw(w, key, FG_GGUF_STRING, b.p, b.n);
}

void fg_gguf_writer_set_arr(fg_gguf_writer *w, const char *key, fg_gguf_type elem_type,
                            const void *data, uint64_t n) {
    size_t esz = fg_gguf_scalar_size(elem_type);
    FG_ASSERT(esz > 0);
    buf b = {0};
    buf_u32(&b, elem_type);
    buf_u64(&b, n);
    buf_put(&b, data, (size_t)n * esz);
    set_raw(w, key, FG_GGUF_ARRAY, b.p, b.n);
}

void fg_gguf_writer_set_arr_str(fg_gguf_writer *w, const char *key, const char *const *strs,
                                const size_t *lens, uint64_t n) {
    buf b = {0};
    buf_u32(&b, FG_GGUF_STRING);
    buf_u64(&b, n);
    for (uint64_t i = 0; i < n; i++)
        buf_str(&b, strs[i], lens ? lens[i] : strlen(strs[i]));
    set_raw(w, key, FG_GGUF_ARRAY, b.p, b.n);
}

fg_status fg_gguf_writer_copy_kv(fg_gguf_writer *w, const fg_gguf *src, const char *key) {
    int64_t i = fg_gguf_find_key(src, key);
    if (i < 0)
        return FG_FAIL(FG_ERR_FORMAT, "%s: key '%s' not found", fg_gguf_path(src), key);
    const uint8_t *raw;
    uint64_t len;
    fg_gguf_kv_raw(src, i, &raw, &len);
    uint8_t *copy = fg_xmalloc(len ? (size_t)len : 1);
    memcpy(copy, raw, (size_t)len);
    set_raw(w, key, fg_gguf_kv_value(src, i).type, copy, (size_t)len);
    return FG_OK;
}

fg_status fg_gguf_writer_add_tensor(fg_gguf_writer *w, const char *name, uint32_t type,
                                    int n_dims, const int64_t *ne) {
    if (!fg_type_known(type))
        return FG_FAIL(FG_ERR_INVALID_ARG, "gguf writer: tensor '%s': type id %u is not a weight type",
                       name, type);
    if (n_dims < 1 || n_dims > FG_GGUF_MAX_DIMS)
        return FG_FAIL(FG_ERR_INVALID_ARG, "gguf writer: tensor '%s': n_dims is %d, expected 1..%d",
                       name, n_dims, FG_GGUF_MAX_DIMS);
    for (size_t i = 0; i < w->n_t; i++)
        if (strcmp(w->t[i].name, name) == 0)
            return FG_FAIL(FG_ERR_INVALID_ARG, "gguf writer: tensor '%s': duplicate name", name);
    wtensor t = {.type = type, .n_dims = n_dims};
    uint64_t rows = 1;
    for (int d = 0; d < FG_GGUF_MAX_DIMS; d++) {
        t.ne[d] = d < n_dims ? ne[d] : 1;
        if (t.ne[d] < 0)
            return FG_FAIL(FG_ERR_INVALID_ARG, "gguf writer: tensor '%s': ne[%d] is %" PRId64 ", expected >= 0",
                           name, d, t.ne[d]);
        if (d > 0 && !fg_mul_u64(rows, (uint64_t)t.ne[d], &rows))
            return FG_FAIL(FG_ERR_INVALID_ARG, "gguf writer: tensor '%s': size overflows", name);
    }
    uint64_t row;
    fg_status st = fg_type_row_bytes(type, t.ne[0], &row);
    if (st != FG_OK) {
        fg_error_prefix("gguf writer: tensor '%s'", name);
        return st;
    }
    if (!fg_mul_u64(row, rows, &t.n_bytes))
        return FG_FAIL(FG_ERR_INVALID_ARG, "gguf writer: tensor '%s': size overflows", name);
    t.name = fg_xstrdup(name);
    if (w->n_t == w->cap_t) {
        w->cap_t = w->cap_t ? w->cap_t * 2 : 64;
        w->t = fg_xrealloc(w->t, w->cap_t * sizeof *w->t);
    }
    w->t[w->n_t++] = t;
    return FG_OK;
}

static uint64_t writer_alignment(const fg_gguf_writer *w) {
    for (size_t i = 0; i < w->n_kv; i++) {
        if (strcmp(w->kv[i].key, "general.alignment") == 0 && w->kv[i].type == FG_GGUF_UINT32) {
            uint32_t a;
            memcpy(&a, w->kv[i].raw, 4);
            if (a && (a & (a - 1)) == 0)
                return a;
        }
    }
    return FG_GGUF_DEFAULT_ALIGNMENT;
}

static fg_status write_all(FILE *f, const void *p, size_t n, const char *path) {
    if (n && fwrite(p, 1, n, f) != n)
        return FG_FAIL(FG_ERR_IO, "%s: write failed: %s", path, strerror(errno));
    return FG_OK;
}

static fg_status write_pad(FILE *f, uint64_t *pos, uint64_t align, const char *path) {
    static const uint8_t zeros[256];
    uint64_t pad = (align - *pos % align) % align;
    while (pad > 0) {
        size_t n = pad > sizeof zeros ? sizeof zeros : (size_t)pad;
        FG_TRY(write_all(f, zeros, n, path));
        pad -= n;
        *pos += n;
    }
    return FG_OK;
}

static fg_status write_file(fg_gguf_writer *w, FILE *f, const char *path, fg_gguf_fill_fn fill,
                            void *user) {
    uint64_t align = writer_alignment(w);
    buf h = {0};
    buf_put(&h, "GGUF", 4);
    buf_u32(&h, w->version);
    buf_u64(&h, w->n_t);
    buf_u64(&h, w->n_kv);
    for (size_t i = 0; i < w->n_kv; i++) {
        buf_str(&h, w->kv[i].key, strlen(w->kv[i].key));
        buf_u32(&h, w->kv[i].type);
        buf_put(&h, w->kv[i].raw, w->kv[i].raw_len);
    }
    uint64_t off = 0;
    for (size_t i = 0; i < w->n_t; i++) {
        const wtensor *t = &w->t[i];
        buf_str(&h, t->name, strlen(t->name));
        buf_u32(&h, (uint32_t)t->n_dims);
        for (int d = 0; d < t->n_dims; d++)
            buf_u64(&h, (uint64_t)t->ne[d]);
        buf_u32(&h, t->type);
        buf_u64(&h, off);
        off += (t->n_bytes + align - 1) / align * align;
    }
    uint64_t pos = h.n;
    fg_status st = write_all(f, h.p, h.n, path);
    free(h.p);
    FG_TRY(st);
    FG_TRY(write_pad(f, &pos, align, path));
    // one buffer, reused for every tensor (sized for the largest)
    uint64_t max_bytes = 1;
    for (size_t i = 0; i < w->n_t; i++)
        max_bytes = w->t[i].n_bytes > max_bytes ? w->t[i].n_bytes : max_bytes;
    if (max_bytes > SIZE_MAX / 2)
        return FG_FAIL(FG_ERR_NOMEM, "%s: a tensor of %" PRIu64 " bytes is too large", path, max_bytes);
    uint8_t *data = malloc((size_t)max_bytes);
    if (!data)
        return FG_FAIL(FG_ERR_NOMEM, "%s: out of memory for %" PRIu64 " bytes of tensor data", path,
                       max_bytes);
    for (size_t i = 0; i < w->n_t && st == FG_OK; i++) {
        const wtensor *t = &w->t[i];
        if (fill) {
            st = fill(user, (int64_t)i, data, t->n_bytes);
        } else {
            memset(data, 0, (size_t)t->n_bytes);
        }
        if (st == FG_OK)
            st = write_all(f, data, (size_t)t->n_bytes, path);
        pos += t->n_bytes;
        if (st == FG_OK)
            st = write_pad(f, &pos, align, path);
    }
    free(data);
    return st;
}

fg_status fg_gguf_writer_write(fg_gguf_writer *w, const char *path, fg_gguf_fill_fn fill,
                               void *user) {
    FILE *f = fopen(path, "wb");
    if (!f)
        return FG_FAIL(FG_ERR_IO, "%s: cannot create: %s", path, strerror(errno));
    setvbuf(f, NULL, _IOFBF, 1 << 20);
    fg_status st = write_file(w, f, path, fill, user);
    if (fclose(f) != 0 && st == FG_OK)
        st = FG_FAIL(FG_ERR_IO, "%s: write failed: %s", path, strerror(errno));
    if (st != FG_OK)
        remove(path);
    return st;
}
