// gguf_read.c - GGUF v2/v3 reader: parses and validates the header, metadata and tensor infos
// of a memory-mapped file (or a caller's buffer); tensors and string values are views into it.
// Every count, length, offset and shape is checked against the file size before use, so no
// input can cause an out-of-bounds read, a hang or an allocation larger than the file.
// Not here: the writer (gguf_write.c), weight-type geometry (src/quant/types.c).
// Who calls it: model loading, tokenizer loading, `forge info`, synth (--vocab-from), tests.
#include "forge/gguf.h"
#include "forge/types.h"

#include "base/mapfile.h"
#include "base/status.h"
#include "base/util.h"
#include "gguf/gguf_internal.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the GGUF reader assumes a little-endian host"
#endif

typedef struct kv_entry {
    char *key;              // NUL-terminated copy (owned)
    fg_gguf_value val;      // views into the file
    const uint8_t *raw;     // encoded value (after the type id), view
    uint64_t raw_len;
    uint64_t *str_off;      // [val.n] string arrays: file offset of each element's length prefix
} kv_entry;

struct fg_gguf {
    char *path;                // name used in messages (owned)
    fg_mapfile map;            // the mapping when opened from a path
    const uint8_t *base;       // view: the whole file
    uint64_t size;
    uint32_t version;
    uint64_t alignment;
    uint64_t data_offset;
    int64_t n_kv;
    kv_entry *kv;              // [n_kv]
    int64_t n_tensors;
    fg_gguf_tensor *tensors;   // [n_tensors], names owned
    int64_t *key_tab;          // open-addressing hash: index + 1, 0 = empty
    uint64_t key_cap;
    int64_t *tn_tab;
    uint64_t tn_cap;
};

// --- small helpers

static const char *const k_type_names[FG_GGUF_TYPE_COUNT] = {
    "uint8", "int8", "uint16", "int16", "uint32", "int32", "float32",
    "bool", "string", "array", "uint64", "int64", "float64",
};

const char *fg_gguf_type_name(fg_gguf_type t) {
    return (unsigned)t < FG_GGUF_TYPE_COUNT ? k_type_names[t] : "unknown";
}

size_t fg_gguf_scalar_size(uint32_t t) {
    switch (t) {
    case FG_GGUF_UINT8: case FG_GGUF_INT8: case FG_GGUF_BOOL: return 1;
    case FG_GGUF_UINT16: case FG_GGUF_INT16: return 2;
    case FG_GGUF_UINT32: case FG_GGUF_INT32: case FG_GGUF_FLOAT32: return 4;
    case FG_GGUF_UINT64: case FG_GGUF_INT64: case FG_GGUF_FLOAT64: return 8;
    default: return 0;
    }
}

static uint64_t ld_u64(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}
static uint32_t ld_u32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

static uint64_t hash_bytes(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) {
        h ^= (uint8_t)s[i];
        h *= 1099511628211ull;
    }
    return h;
}

static uint64_t table_cap(int64_t n) {
    uint64_t cap = 16;
    while (cap < (uint64_t)n * 2)
        cap <<= 1;
    return cap;
}

// --- parse cursor

typedef struct cursor {
    const fg_gguf *g;
    uint64_t pos;
} cursor;

static fg_status need(const cursor *c, uint64_t n, const char *what) {
    if (n > c->g->size - c->pos)
        return FG_FAIL(FG_ERR_FORMAT,
                       "%s: %s at byte %" PRIu64 ": needs %" PRIu64 " bytes but the file has %" PRIu64
                       " bytes",
                       c->g->path, what, c->pos, n, c->g->size);
    return FG_OK;
}

static fg_status rd_u32(cursor *c, const char *what, uint32_t *v) {
    FG_TRY(need(c, 4, what));
    *v = ld_u32(c->g->base + c->pos);
    c->pos += 4;
    return FG_OK;
}

static fg_status rd_u64(cursor *c, const char *what, uint64_t *v) {
    FG_TRY(need(c, 8, what));
    *v = ld_u64(c->g->base + c->pos);
    c->pos += 8;
    return FG_OK;
}

// A length-prefixed string: *s points into the file.
static fg_status rd_str(cursor *c, const char *what, const char **s, uint64_t *len) {
    uint64_t n;
    FG_TRY(rd_u64(c, what, &n));
    if (n > c->g->size - c->pos)
        return FG_FAIL(FG_ERR_FORMAT,
                       "%s: %s: string of %" PRIu64 " bytes at byte %" PRIu64
                       " runs past the end of the file (%" PRIu64 " bytes)",
                       c->g->path, what, n, c->pos, c->g->size);
    *s = (const char *)c->g->base + c->pos;
    *len = n;
    c->pos += n;
    return FG_OK;
}

// Parses one value of type `type` at the cursor (validating all of it). At depth 0 a string
// array gets its offsets index in *str_off.
static fg_status parse_value(cursor *c, uint32_t type, int depth, const char *what,
                             fg_gguf_value *out, uint64_t **str_off) {
    fg_gguf_value v = {.type = (fg_gguf_type)type};
    if (type >= FG_GGUF_TYPE_COUNT)
        return FG_FAIL(FG_ERR_FORMAT, "%s: %s: unknown value type %u (expected 0..12)", c->g->path,
                       what, type);
    size_t sz = fg_gguf_scalar_size(type);
    if (sz) {
        FG_TRY(need(c, sz, what));
        v.data = c->g->base + c->pos;
        c->pos += sz;
    } else if (type == FG_GGUF_STRING) {
        const char *s;
        FG_TRY(rd_str(c, what, &s, &v.n));
        v.data = s;
    } else { // array
        uint32_t et;
        uint64_t n;
        FG_TRY(rd_u32(c, what, &et));
        FG_TRY(rd_u64(c, what, &n));
        if (et >= FG_GGUF_TYPE_COUNT)
            return FG_FAIL(FG_ERR_FORMAT, "%s: %s: unknown array element type %u (expected 0..12)",
                           c->g->path, what, et);
        if (et == FG_GGUF_ARRAY && depth + 1 >= FG_GGUF_MAX_ARRAY_DEPTH)
            return FG_FAIL(FG_ERR_FORMAT, "%s: %s: arrays nested deeper than %d levels",
                           c->g->path, what, FG_GGUF_MAX_ARRAY_DEPTH);
        size_t esz = fg_gguf_scalar_size(et);
        uint64_t min_elem = esz ? esz : et == FG_GGUF_STRING ? 8 : 12;
        uint64_t avail = c->g->size - c->pos;
        if (n > avail / min_elem)
            return FG_FAIL(FG_ERR_FORMAT,
                           "%s: %s: array of %" PRIu64 " %s elements at byte %" PRIu64
                           " needs at least %" PRIu64 " bytes per element but only %" PRIu64
                           " bytes remain",
                           c->g->path, what, n, fg_gguf_type_name((fg_gguf_type)et), c->pos,
                           min_elem, avail);
        v.elem_type = (fg_gguf_type)et;
        v.n = n;
        v.data = c->g->base + c->pos;
        if (esz) {
            c->pos += n * esz;
        } else if (et == FG_GGUF_STRING) {
            uint64_t *off = NULL;
            if (str_off && n > 0) {
                off = malloc((size_t)n * sizeof *off);
                if (!off)
                    return FG_FAIL(FG_ERR_NOMEM, "%s: %s: out of memory for %" PRIu64 " strings",
                                   c->g->path, what, n);
            }
            for (uint64_t i = 0; i < n; i++) {
                const char *s;
                uint64_t len;
                if (off)
                    off[i] = c->pos;
                fg_status st = rd_str(c, what, &s, &len);
                if (st != FG_OK) {
                    free(off);
                    return st;
                }
            }
            if (str_off)
                *str_off = off;
        } else {
            for (uint64_t i = 0; i < n; i++) { // each element is an array encoding
                fg_gguf_value sub;
                FG_TRY(parse_value(c, FG_GGUF_ARRAY, depth + 1, what, &sub, NULL));
            }
        }
    }
    *out = v;
    return FG_OK;
}

// --- lookups

static int64_t tab_find(const int64_t *tab, uint64_t cap, const char *name, size_t len,
                        const char *(*name_of)(const fg_gguf *, int64_t), const fg_gguf *g) {
    if (!tab)
        return -1;
    uint64_t h = hash_bytes(name, len) & (cap - 1);
    for (;;) {
        int64_t e = tab[h];
        if (e == 0)
            return -1;
        const char *n = name_of(g, e - 1);
        if (strlen(n) == len && memcmp(n, name, len) == 0)
            return e - 1;
        h = (h + 1) & (cap - 1);
    }
}

static const char *key_of(const fg_gguf *g, int64_t i) { return g->kv[i].key; }
static const char *tname_of(const fg_gguf *g, int64_t i) { return g->tensors[i].name; }

// Inserts i; returns the index of an existing equal name or -1.
static int64_t tab_insert(int64_t *tab, uint64_t cap, const char *name, int64_t i,
                          const char *(*name_of)(const fg_gguf *, int64_t), const fg_gguf *g) {
    size_t len = strlen(name);
    uint64_t h = hash_bytes(name, len) & (cap - 1);
    for (;;) {
        int64_t e = tab[h];
        if (e == 0) {
            tab[h] = i + 1;
            return -1;
        }
        if (strcmp(name_of(g, e - 1), name) == 0)
            return e - 1;
        h = (h + 1) & (cap - 1);
    }
}

// --- open

static fg_status parse_kvs(fg_gguf *g, cursor *c, uint64_t n_kv) {
    // each pair takes at least 8 (key length) + 4 (type) + 1 (smallest value) bytes
    uint64_t avail = g->size - c->pos;
    if (n_kv > avail / 13)
        return FG_FAIL(FG_ERR_FORMAT,
                       "%s: header: metadata count %" PRIu64 " needs at least %" PRIu64
                       " bytes per pair but only %" PRIu64 " bytes follow the header",
                       g->path, n_kv, (uint64_t)13, avail);
    g->kv = calloc(n_kv ? (size_t)n_kv : 1, sizeof *g->kv);
    g->key_cap = table_cap((int64_t)n_kv);
    g->key_tab = calloc((size_t)g->key_cap, sizeof *g->key_tab);
    if (!g->kv || !g->key_tab)
        return FG_FAIL(FG_ERR_NOMEM, "%s: out of memory for %" PRIu64 " metadata pairs", g->path,
                       n_kv);
    char what[320];
    for (uint64_t i = 0; i < n_kv; i++) {
        kv_entry *e = &g->kv[i];
        const char *k;
        uint64_t klen;
        snprintf(what, sizeof what, "metadata pair #%" PRIu64 " key", i);
        FG_TRY(rd_str(c, what, &k, &klen));
        if (memchr(k, 0, (size_t)klen))
            return FG_FAIL(FG_ERR_FORMAT, "%s: metadata pair #%" PRIu64 ": key contains a NUL byte",
                           g->path, i);
        e->key = fg_xstrndup(k, (size_t)klen);
        g->n_kv = (int64_t)i + 1;
        int64_t dup = tab_insert(g->key_tab, g->key_cap, e->key, (int64_t)i, key_of, g);
        if (dup >= 0)
            return FG_FAIL(FG_ERR_FORMAT, "%s: key '%.200s': duplicate (pairs #%" PRId64 " and #%" PRIu64 ")",
                           g->path, e->key, dup, i);
        snprintf(what, sizeof what, "key '%.200s'", e->key);
        uint32_t type;
        FG_TRY(rd_u32(c, what, &type));
        uint64_t start = c->pos;
        FG_TRY(parse_value(c, type, 0, what, &e->val, &e->str_off));
        e->raw = g->base + start;
        e->raw_len = c->pos - start;
    }
    return FG_OK;
}

static fg_status check_alignment(fg_gguf *g) {
    g->alignment = FG_GGUF_DEFAULT_ALIGNMENT;
    int64_t i = fg_gguf_find_key(g, "general.alignment");
    if (i < 0)
        return FG_OK;
    fg_gguf_value v = g->kv[i].val;
    if (v.type != FG_GGUF_UINT32)
        return FG_FAIL(FG_ERR_FORMAT, "%s: key 'general.alignment': expected uint32, found %s",
                       g->path, fg_gguf_type_name(v.type));
    uint32_t a = ld_u32(v.data);
    if (a == 0 || (a & (a - 1)) != 0)
        return FG_FAIL(FG_ERR_FORMAT,
                       "%s: key 'general.alignment': expected a nonzero power of two, found %u",
                       g->path, a);
    g->alignment = a;
    return FG_OK;
}

static fg_status check_type(const fg_gguf *g, const char *name, uint32_t type) {
    if (type == 4 || type == 5)
        return FG_FAIL(FG_ERR_FORMAT, "%s: tensor '%.200s': type id %u is retired (Q4_2/Q4_3), not supported",
                       g->path, name, type);
    if (type >= FG_TYPE_COUNT || fg_type_block_size(type) == 0)
        return FG_FAIL(FG_ERR_FORMAT, "%s: tensor '%.200s': unknown type id %u (expected a weight type id below %d)",
                       g->path, name, type, FG_TYPE_COUNT);
    if (!fg_type_known(type))
        return FG_FAIL(FG_ERR_FORMAT, "%s: tensor '%.200s': type %s (id %u) is not a weight type",
                       g->path, name, fg_type_name(type), type);
    return FG_OK;
}

static fg_status parse_tensor_info(fg_gguf *g, cursor *c, uint64_t i) {
    fg_gguf_tensor *t = &g->tensors[i];
    char what[320];
    const char *s;
    uint64_t len;
    snprintf(what, sizeof what, "tensor #%" PRIu64 " name", i);
    FG_TRY(rd_str(c, what, &s, &len));
    if (memchr(s, 0, (size_t)len))
        return FG_FAIL(FG_ERR_FORMAT, "%s: tensor #%" PRIu64 ": name contains a NUL byte", g->path, i);
    t->name = fg_xstrndup(s, (size_t)len);
    g->n_tensors = (int64_t)i + 1;
    const char *nm = t->name;
    int64_t dup = tab_insert(g->tn_tab, g->tn_cap, nm, (int64_t)i, tname_of, g);
    if (dup >= 0)
        return FG_FAIL(FG_ERR_FORMAT, "%s: tensor '%.200s': duplicate name (tensors #%" PRId64 " and #%" PRIu64 ")",
                       g->path, nm, dup, i);
    snprintf(what, sizeof what, "tensor '%.200s'", nm);
    uint32_t n_dims;
    FG_TRY(rd_u32(c, what, &n_dims));
    if (n_dims < 1 || n_dims > FG_GGUF_MAX_DIMS)
        return FG_FAIL(FG_ERR_FORMAT, "%s: tensor '%.200s': n_dims is %u, expected 1..%d", g->path,
                       nm, n_dims, FG_GGUF_MAX_DIMS);
    t->n_dims = (int)n_dims;
    uint64_t count = 1;
    for (int d = 0; d < FG_GGUF_MAX_DIMS; d++)
        t->ne[d] = 1;
    for (uint32_t d = 0; d < n_dims; d++) {
        uint64_t u;
        FG_TRY(rd_u64(c, what, &u));
        int64_t ne = (int64_t)u;
        if (ne < 0)
            return FG_FAIL(FG_ERR_FORMAT, "%s: tensor '%.200s': ne[%u] is %" PRId64 ", expected >= 0",
                           g->path, nm, d, ne);
        if (!fg_mul_u64(count, (uint64_t)ne, &count) || count > (uint64_t)INT64_MAX)
            return FG_FAIL(FG_ERR_FORMAT,
                           "%s: tensor '%.200s': element count overflows at ne[%u] = %" PRId64,
                           g->path, nm, d, ne);
        t->ne[d] = ne;
    }
    FG_TRY(rd_u32(c, what, &t->type));
    FG_TRY(check_type(g, nm, t->type));
    int64_t bs = fg_type_block_size(t->type);
    if (t->ne[0] % bs != 0)
        return FG_FAIL(FG_ERR_FORMAT,
                       "%s: tensor '%.200s': ne[0] is %" PRId64 ", expected a multiple of the %s block size %" PRId64,
                       g->path, nm, t->ne[0], fg_type_name(t->type), bs);
    uint64_t row = (uint64_t)(t->ne[0] / bs) * fg_type_block_bytes(t->type);
    uint64_t rows = (uint64_t)t->ne[1] * (uint64_t)t->ne[2]; // each <= INT64_MAX, product checked
    if (t->ne[1] && (uint64_t)t->ne[2] > UINT64_MAX / (uint64_t)t->ne[1])
        rows = UINT64_MAX; // unreachable: the element count fits in int64
    if (!fg_mul_u64(rows, (uint64_t)t->ne[3], &rows) || !fg_mul_u64(row, rows, &t->n_bytes))
        return FG_FAIL(FG_ERR_FORMAT, "%s: tensor '%.200s': byte size overflows", g->path, nm);
    FG_TRY(rd_u64(c, what, &t->offset));
    return FG_OK;
}

static fg_status parse_tensors(fg_gguf *g, cursor *c, uint64_t n_tensors) {
    // each info takes at least 8 (name length) + 4 (n_dims) + 8 (one dim) + 4 (type) + 8 (offset)
    uint64_t avail = g->size - c->pos;
    if (n_tensors > avail / 32)
        return FG_FAIL(FG_ERR_FORMAT,
                       "%s: header: tensor count %" PRIu64 " needs at least 32 bytes per tensor info but only %" PRIu64
                       " bytes follow the metadata",
                       g->path, n_tensors, avail);
    g->tensors = calloc(n_tensors ? (size_t)n_tensors : 1, sizeof *g->tensors);
    g->tn_cap = table_cap((int64_t)n_tensors);
    g->tn_tab = calloc((size_t)g->tn_cap, sizeof *g->tn_tab);
    if (!g->tensors || !g->tn_tab)
        return FG_FAIL(FG_ERR_NOMEM, "%s: out of memory for %" PRIu64 " tensors", g->path, n_tensors);
    for (uint64_t i = 0; i < n_tensors; i++)
        FG_TRY(parse_tensor_info(g, c, i));
    // the data section starts at the next multiple of the alignment
    uint64_t a = g->alignment, off;
    if (!fg_add_u64(c->pos, a - 1, &off))
        return FG_FAIL(FG_ERR_FORMAT, "%s: data section offset overflows", g->path);
    g->data_offset = off / a * a;
    for (uint64_t i = 0; i < n_tensors; i++) {
        fg_gguf_tensor *t = &g->tensors[i];
        if (t->offset % a != 0)
            return FG_FAIL(FG_ERR_FORMAT,
                           "%s: tensor '%.200s': offset %" PRIu64 " is not a multiple of the alignment %" PRIu64,
                           g->path, t->name, t->offset, a);
        uint64_t start, end;
        if (!fg_add_u64(g->data_offset, t->offset, &start) || !fg_add_u64(start, t->n_bytes, &end))
            return FG_FAIL(FG_ERR_FORMAT,
                           "%s: tensor '%.200s': data offset %" PRIu64 " + %" PRIu64 " bytes overflows",
                           g->path, t->name, t->offset, t->n_bytes);
        if (end > g->size)
            return FG_FAIL(FG_ERR_FORMAT,
                           "%s: tensor '%.200s': data ends at byte %" PRIu64 " but the file has %" PRIu64 " bytes",
                           g->path, t->name, end, g->size);
        t->data = g->base + start;
    }
    return FG_OK;
}

static fg_status parse(fg_gguf *g) {
    cursor c = {.g = g, .pos = 0};
    if (g->size < 4 || memcmp(g->base, "GGUF", 4) != 0) {
        char m[24] = "";
        size_t n = g->size < 4 ? (size_t)g->size : 4, o = 0;
        for (size_t i = 0; i < n; i++) {
            uint8_t b = g->base[i];
            o += (size_t)snprintf(m + o, sizeof m - o, b >= 0x20 && b < 0x7f && b != '\\' ? "%c" : "\\x%02x", b);
        }
        return FG_FAIL(FG_ERR_FORMAT, "%s: not a GGUF file: magic is '%s' (%zu bytes), expected 'GGUF'",
                       g->path, m, n);
    }
    c.pos = 4;
    FG_TRY(rd_u32(&c, "header version", &g->version));
    if (g->version != 2 && g->version != 3) {
        uint32_t sw = __builtin_bswap32(g->version);
        if (sw == 2 || sw == 3)
            return FG_FAIL(FG_ERR_FORMAT, "%s: big-endian GGUF v%u is not supported (expected a little-endian file)",
                           g->path, sw);
        return FG_FAIL(FG_ERR_FORMAT, "%s: GGUF version %u is not supported (expected 2 or 3)",
                       g->path, g->version);
    }
    uint64_t n_tensors, n_kv;
    FG_TRY(rd_u64(&c, "header tensor count", &n_tensors));
    FG_TRY(rd_u64(&c, "header metadata count", &n_kv));
    // cheap early refusal of absurd tensor counts (the exact check follows the metadata)
    if (n_tensors > (g->size - c.pos) / 32)
        return FG_FAIL(FG_ERR_FORMAT,
                       "%s: header: tensor count %" PRIu64 " needs at least 32 bytes per tensor info but the file has %" PRIu64
                       " bytes",
                       g->path, n_tensors, g->size);
    FG_TRY(parse_kvs(g, &c, n_kv));
    FG_TRY(check_alignment(g));
    FG_TRY(parse_tensors(g, &c, n_tensors));
    return FG_OK;
}

static fg_status open_common(fg_gguf *g, fg_gguf **out) {
    fg_status st = parse(g);
    if (st != FG_OK) {
        fg_gguf_close(g);
        return st;
    }
    *out = g;
    return FG_OK;
}

fg_status fg_gguf_open(const char *path, fg_gguf **out) {
    fg_gguf *g = fg_xcalloc(1, sizeof *g);
    g->path = fg_xstrdup(path);
    fg_status st = fg_mapfile_open(path, &g->map);
    if (st != FG_OK) {
        fg_gguf_close(g);
        return st;
    }
    g->base = g->map.data;
    g->size = g->map.size;
    return open_common(g, out);
}

fg_status fg_gguf_open_memory(const void *data, size_t size, const char *name, fg_gguf **out) {
    fg_gguf *g = fg_xcalloc(1, sizeof *g);
    g->path = fg_xstrdup(name ? name : "<memory>");
    g->base = data;
    g->size = data ? size : 0;
    return open_common(g, out);
}

void fg_gguf_close(fg_gguf *g) {
    if (!g)
        return;
    for (int64_t i = 0; i < g->n_kv; i++) {
        free(g->kv[i].key);
        free(g->kv[i].str_off);
    }
    free(g->kv);
    for (int64_t i = 0; i < g->n_tensors; i++)
        free((char *)g->tensors[i].name);
    free(g->tensors);
    free(g->key_tab);
    free(g->tn_tab);
    fg_mapfile_close(&g->map);
    free(g->path);
    free(g);
}

// --- accessors

const char *fg_gguf_path(const fg_gguf *g) { return g->path; }
uint32_t fg_gguf_version(const fg_gguf *g) { return g->version; }
uint64_t fg_gguf_alignment(const fg_gguf *g) { return g->alignment; }
uint64_t fg_gguf_file_size(const fg_gguf *g) { return g->size; }
uint64_t fg_gguf_data_offset(const fg_gguf *g) { return g->data_offset; }
int64_t fg_gguf_n_kv(const fg_gguf *g) { return g->n_kv; }

const char *fg_gguf_kv_key(const fg_gguf *g, int64_t i) {
    return i >= 0 && i < g->n_kv ? g->kv[i].key : NULL;
}

fg_gguf_value fg_gguf_kv_value(const fg_gguf *g, int64_t i) {
    fg_gguf_value none = {.type = FG_GGUF_TYPE_COUNT};
    return i >= 0 && i < g->n_kv ? g->kv[i].val : none;
}

void fg_gguf_kv_raw(const fg_gguf *g, int64_t i, const uint8_t **raw, uint64_t *len) {
    *raw = g->kv[i].raw;
    *len = g->kv[i].raw_len;
}

int64_t fg_gguf_find_key(const fg_gguf *g, const char *key) {
    return tab_find(g->key_tab, g->key_cap, key, strlen(key), key_of, g);
}

int64_t fg_gguf_n_tensors(const fg_gguf *g) { return g->n_tensors; }

const fg_gguf_tensor *fg_gguf_tensor_at(const fg_gguf *g, int64_t i) {
    return i >= 0 && i < g->n_tensors ? &g->tensors[i] : NULL;
}

const fg_gguf_tensor *fg_gguf_find_tensor(const fg_gguf *g, const char *name) {
    int64_t i = tab_find(g->tn_tab, g->tn_cap, name, strlen(name), tname_of, g);
    return i >= 0 ? &g->tensors[i] : NULL;
}

// --- typed getters

static fg_status lookup(const fg_gguf *g, const char *key, const fg_gguf_value **v, int64_t *idx) {
    int64_t i = fg_gguf_find_key(g, key);
    if (i < 0)
        return FG_FAIL(FG_ERR_FORMAT, "%s: key '%s' not found", g->path, key);
    *v = &g->kv[i].val;
    if (idx)
        *idx = i;
    return FG_OK;
}

static fg_status lookup_typed(const fg_gguf *g, const char *key, fg_gguf_type want,
                              const fg_gguf_value **v) {
    FG_TRY(lookup(g, key, v, NULL));
    if ((*v)->type != want)
        return FG_FAIL(FG_ERR_FORMAT, "%s: key '%s': expected %s, found %s", g->path, key,
                       fg_gguf_type_name(want), fg_gguf_type_name((*v)->type));
    return FG_OK;
}

fg_status fg_gguf_get_u32(const fg_gguf *g, const char *key, uint32_t *out) {
    const fg_gguf_value *v = NULL;
    FG_TRY(lookup_typed(g, key, FG_GGUF_UINT32, &v));
    *out = ld_u32(v->data);
    return FG_OK;
}

fg_status fg_gguf_get_i32(const fg_gguf *g, const char *key, int32_t *out) {
    const fg_gguf_value *v = NULL;
    FG_TRY(lookup_typed(g, key, FG_GGUF_INT32, &v));
    *out = (int32_t)ld_u32(v->data);
    return FG_OK;
}

fg_status fg_gguf_get_u64(const fg_gguf *g, const char *key, uint64_t *out) {
    const fg_gguf_value *v = NULL;
    FG_TRY(lookup_typed(g, key, FG_GGUF_UINT64, &v));
    *out = ld_u64(v->data);
    return FG_OK;
}

fg_status fg_gguf_get_f32(const fg_gguf *g, const char *key, float *out) {
    const fg_gguf_value *v = NULL;
    FG_TRY(lookup_typed(g, key, FG_GGUF_FLOAT32, &v));
    memcpy(out, v->data, 4);
    return FG_OK;
}

fg_status fg_gguf_get_bool(const fg_gguf *g, const char *key, bool *out) {
    const fg_gguf_value *v = NULL;
    FG_TRY(lookup_typed(g, key, FG_GGUF_BOOL, &v));
    *out = *(const uint8_t *)v->data != 0;
    return FG_OK;
}

fg_status fg_gguf_get_str(const fg_gguf *g, const char *key, const char **s, size_t *len) {
    const fg_gguf_value *v = NULL;
    FG_TRY(lookup_typed(g, key, FG_GGUF_STRING, &v));
    *s = v->data;
    *len = (size_t)v->n;
    return FG_OK;
}

// Integer value of a scalar of any integer type; false if it is not an integer type.
static bool int_value(fg_gguf_value v, int64_t *out, bool *too_big) {
    const uint8_t *p = v.data;
    *too_big = false;
    switch (v.type) {
    case FG_GGUF_UINT8: *out = p[0]; return true;
    case FG_GGUF_INT8: *out = (int8_t)p[0]; return true;
    case FG_GGUF_UINT16: { uint16_t x; memcpy(&x, p, 2); *out = x; return true; }
    case FG_GGUF_INT16: { int16_t x; memcpy(&x, p, 2); *out = x; return true; }
    case FG_GGUF_UINT32: *out = ld_u32(p); return true;
    case FG_GGUF_INT32: *out = (int32_t)ld_u32(p); return true;
    case FG_GGUF_INT64: *out = (int64_t)ld_u64(p); return true;
    case FG_GGUF_UINT64: {
        uint64_t x = ld_u64(p);
        *too_big = x > (uint64_t)INT64_MAX;
        *out = (int64_t)x;
        return true;
    }
    default: return false;
    }
}

fg_status fg_gguf_get_int(const fg_gguf *g, const char *key, int64_t *out) {
    const fg_gguf_value *v = NULL;
    FG_TRY(lookup(g, key, &v, NULL));
    int64_t x;
    bool big;
    if (!int_value(*v, &x, &big))
        return FG_FAIL(FG_ERR_FORMAT, "%s: key '%s': expected an integer, found %s", g->path, key,
                       fg_gguf_type_name(v->type));
    if (big)
        return FG_FAIL(FG_ERR_FORMAT, "%s: key '%s': value %" PRIu64 " does not fit in int64",
                       g->path, key, (uint64_t)x);
    *out = x;
    return FG_OK;
}

fg_status fg_gguf_get_float(const fg_gguf *g, const char *key, double *out) {
    const fg_gguf_value *v = NULL;
    FG_TRY(lookup(g, key, &v, NULL));
    if (v->type == FG_GGUF_FLOAT32) {
        float f;
        memcpy(&f, v->data, 4);
        *out = f;
    } else if (v->type == FG_GGUF_FLOAT64) {
        memcpy(out, v->data, 8);
    } else {
        return FG_FAIL(FG_ERR_FORMAT, "%s: key '%s': expected a float, found %s", g->path, key,
                       fg_gguf_type_name(v->type));
    }
    return FG_OK;
}

static fg_status lookup_arr(const fg_gguf *g, const char *key, const fg_gguf_value **v, int64_t *idx) {
    FG_TRY(lookup(g, key, v, idx));
    if ((*v)->type != FG_GGUF_ARRAY)
        return FG_FAIL(FG_ERR_FORMAT, "%s: key '%s': expected array, found %s", g->path, key,
                       fg_gguf_type_name((*v)->type));
    return FG_OK;
}

fg_status fg_gguf_get_arr(const fg_gguf *g, const char *key, fg_gguf_type *elem_type, uint64_t *n) {
    const fg_gguf_value *v = NULL;
    FG_TRY(lookup_arr(g, key, &v, NULL));
    *elem_type = v->elem_type;
    *n = v->n;
    return FG_OK;
}

fg_status fg_gguf_get_arr_str(const fg_gguf *g, const char *key, uint64_t i, const char **s,
                              size_t *len) {
    const fg_gguf_value *v = NULL;
    int64_t k;
    FG_TRY(lookup_arr(g, key, &v, &k));
    if (v->elem_type != FG_GGUF_STRING)
        return FG_FAIL(FG_ERR_FORMAT, "%s: key '%s': expected array of string, found array of %s",
                       g->path, key, fg_gguf_type_name(v->elem_type));
    if (i >= v->n)
        return FG_FAIL(FG_ERR_INVALID_ARG, "%s: key '%s': index %" PRIu64 " out of range (%" PRIu64 " elements)",
                       g->path, key, i, v->n);
    uint64_t off = g->kv[k].str_off[i];
    *len = (size_t)ld_u64(g->base + off);
    *s = (const char *)g->base + off + 8;
    return FG_OK;
}

static fg_status check_count(const fg_gguf *g, const char *key, const fg_gguf_value *v, uint64_t n) {
    if (v->n != n)
        return FG_FAIL(FG_ERR_FORMAT, "%s: key '%s': expected %" PRIu64 " elements, found %" PRIu64,
                       g->path, key, n, v->n);
    return FG_OK;
}

fg_status fg_gguf_get_arr_f32(const fg_gguf *g, const char *key, float *dst, uint64_t n) {
    const fg_gguf_value *v = NULL;
    FG_TRY(lookup_arr(g, key, &v, NULL));
    if (v->elem_type != FG_GGUF_FLOAT32)
        return FG_FAIL(FG_ERR_FORMAT, "%s: key '%s': expected array of float32, found array of %s",
                       g->path, key, fg_gguf_type_name(v->elem_type));
    FG_TRY(check_count(g, key, v, n));
    if (n)
        memcpy(dst, v->data, (size_t)n * 4);
    return FG_OK;
}

fg_status fg_gguf_get_arr_i32(const fg_gguf *g, const char *key, int32_t *dst, uint64_t n) {
    const fg_gguf_value *v = NULL;
    FG_TRY(lookup_arr(g, key, &v, NULL));
    if (v->elem_type != FG_GGUF_INT32 && v->elem_type != FG_GGUF_UINT32)
        return FG_FAIL(FG_ERR_FORMAT, "%s: key '%s': expected array of int32, found array of %s",
                       g->path, key, fg_gguf_type_name(v->elem_type));
    FG_TRY(check_count(g, key, v, n));
    const uint8_t *p = v->data;
    for (uint64_t i = 0; i < n; i++) {
        uint32_t x = ld_u32(p + i * 4);
        if (v->elem_type == FG_GGUF_UINT32 && x > (uint32_t)INT32_MAX)
            return FG_FAIL(FG_ERR_FORMAT, "%s: key '%s': element %" PRIu64 " is %u, does not fit in int32",
                           g->path, key, i, x);
        dst[i] = (int32_t)x;
    }
    return FG_OK;
}

// Size in bytes of an already validated value of `type` at p.
static uint64_t value_size(const uint8_t *p, uint32_t type) {
    size_t sz = fg_gguf_scalar_size(type);
    if (sz)
        return sz;
    if (type == FG_GGUF_STRING)
        return 8 + ld_u64(p);
    uint32_t et = ld_u32(p);
    uint64_t n = ld_u64(p + 4), total = 12;
    size_t esz = fg_gguf_scalar_size(et);
    if (esz)
        return total + n * esz;
    for (uint64_t i = 0; i < n; i++)
        total += value_size(p + total, et);
    return total;
}

fg_status fg_gguf_arr_elem(const fg_gguf *g, fg_gguf_value arr, uint64_t i, fg_gguf_value *out) {
    if (arr.type != FG_GGUF_ARRAY)
        return FG_FAIL(FG_ERR_INVALID_ARG, "%s: expected an array value, found %s", g->path,
                       fg_gguf_type_name(arr.type));
    if (i >= arr.n)
        return FG_FAIL(FG_ERR_INVALID_ARG, "%s: array index %" PRIu64 " out of range (%" PRIu64 " elements)",
                       g->path, i, arr.n);
    fg_gguf_value v = {.type = arr.elem_type};
    const uint8_t *p = arr.data;
    size_t esz = fg_gguf_scalar_size(arr.elem_type);
    if (esz) {
        v.data = p + i * esz;
        *out = v;
        return FG_OK;
    }
    if (arr.elem_type == FG_GGUF_STRING) {
        // a top-level string array has an offsets index
        for (int64_t k = 0; k < g->n_kv; k++) {
            if (g->kv[k].str_off && g->kv[k].val.data == arr.data) {
                p = g->base + g->kv[k].str_off[i];
                v.n = ld_u64(p);
                v.data = p + 8;
                *out = v;
                return FG_OK;
            }
        }
        for (uint64_t j = 0; j < i; j++)
            p += value_size(p, FG_GGUF_STRING);
        v.n = ld_u64(p);
        v.data = p + 8;
        *out = v;
        return FG_OK;
    }
    // nested array: each element is an array encoding (element type, count, elements)
    for (uint64_t j = 0; j < i; j++)
        p += value_size(p, FG_GGUF_ARRAY);
    v.elem_type = (fg_gguf_type)ld_u32(p);
    v.n = ld_u64(p + 4);
    v.data = p + 12;
    *out = v;
    return FG_OK;
}
