// test_gguf.c - GGUF reader and writer: round trips of every value type (nested arrays, string
// arrays) in v2 and v3 with custom alignment, typed-getter errors with their exact messages,
// hostile in-memory files, truncation at every byte, and the shared models against MANIFEST.md.
// forge-test-modules: gguf quant base
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "forge.h"

#include "base/status.h"
#include "base/util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

// --- helpers

static char g_tmp[256];

static const char *tmp_path(const char *name) {
    snprintf(g_tmp, sizeof g_tmp, "/tmp/forge-test-gguf-%d-%s", (int)getpid(), name);
    return g_tmp;
}

static const char *shared_dir(void) {
    const char *s = getenv("FORGE_SHARED");
    return s && *s ? s : "../shared";
}

static uint8_t *read_all(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *buf = malloc((size_t)len + 1);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t)len, f), (size_t)len);
    fclose(f);
    *n = (size_t)len;
    return buf;
}

// Tensor data pattern: byte j of tensor i is (i * 31 + j * 7) & 0xff.
static fg_status fill_pattern(void *user, int64_t index, void *dst, uint64_t n_bytes) {
    (void)user;
    uint8_t *p = dst;
    for (uint64_t j = 0; j < n_bytes; j++)
        p[j] = (uint8_t)((uint64_t)index * 31 + j * 7);
    return FG_OK;
}

// A small encoder for nested arrays (set_raw).
typedef struct enc {
    uint8_t b[512];
    size_t n;
} enc;
static void enc_u32(enc *e, uint32_t v) { memcpy(e->b + e->n, &v, 4); e->n += 4; }
static void enc_u64(enc *e, uint64_t v) { memcpy(e->b + e->n, &v, 8); e->n += 8; }
static void enc_str(enc *e, const char *s) {
    enc_u64(e, strlen(s));
    memcpy(e->b + e->n, s, strlen(s));
    e->n += strlen(s);
}

static void write_full_file(const char *path, uint32_t version, uint32_t alignment) {
    fg_gguf_writer *w = NULL;
    assert_int_equal(fg_gguf_writer_create(version, &w), FG_OK);
    fg_gguf_writer_set_str(w, "general.architecture", "llama");
    fg_gguf_writer_set_str(w, "general.name", "first");
    fg_gguf_writer_set_str(w, "general.name", "round trip"); // replaces
    if (alignment)
        fg_gguf_writer_set_u32(w, "general.alignment", alignment);
    uint8_t u8 = 200;
    int8_t i8 = -100;
    uint16_t u16 = 60000;
    int16_t i16 = -30000;
    int64_t i64 = -5000000000ll;
    double f64 = 3.25;
    fg_gguf_writer_set_scalar(w, "t.u8", FG_GGUF_UINT8, &u8);
    fg_gguf_writer_set_scalar(w, "t.i8", FG_GGUF_INT8, &i8);
    fg_gguf_writer_set_scalar(w, "t.u16", FG_GGUF_UINT16, &u16);
    fg_gguf_writer_set_scalar(w, "t.i16", FG_GGUF_INT16, &i16);
    fg_gguf_writer_set_u32(w, "t.u32", 4000000000u);
    fg_gguf_writer_set_i32(w, "t.i32", -2000000000);
    fg_gguf_writer_set_f32(w, "t.f32", 1.5f);
    fg_gguf_writer_set_bool(w, "t.bool", true);
    fg_gguf_writer_set_u64(w, "t.u64", 18000000000000000000ull);
    fg_gguf_writer_set_scalar(w, "t.i64", FG_GGUF_INT64, &i64);
    fg_gguf_writer_set_scalar(w, "t.f64", FG_GGUF_FLOAT64, &f64);
    fg_gguf_writer_set_u64(w, "t.big", 18000000000000000000ull);
    float fa[3] = {0.5f, -1.0f, 2.0f};
    int32_t ia[4] = {-1, 0, 1, 2147483647};
    uint32_t ua[2] = {1, 4000000000u};
    uint8_t ba[3] = {1, 0, 1};
    fg_gguf_writer_set_arr(w, "a.f32", FG_GGUF_FLOAT32, fa, 3);
    fg_gguf_writer_set_arr(w, "a.i32", FG_GGUF_INT32, ia, 4);
    fg_gguf_writer_set_arr(w, "a.u32", FG_GGUF_UINT32, ua, 2);
    fg_gguf_writer_set_arr(w, "a.bool", FG_GGUF_BOOL, ba, 3);
    fg_gguf_writer_set_arr(w, "a.empty", FG_GGUF_INT64, NULL, 0);
    const char *strs[4] = {"alpha", "", "g\xc3\xa4mma", "d\0elta"};
    size_t lens[4] = {5, 0, 6, 6};
    fg_gguf_writer_set_arr_str(w, "a.str", strs, lens, 4);
    // nested: [[1, 2], [], [3]] of uint32, and [["x", "yz"]] of strings
    enc e = {.n = 0};
    enc_u32(&e, FG_GGUF_ARRAY);
    enc_u64(&e, 3);
    enc_u32(&e, FG_GGUF_UINT32); enc_u64(&e, 2); enc_u32(&e, 1); enc_u32(&e, 2);
    enc_u32(&e, FG_GGUF_UINT32); enc_u64(&e, 0);
    enc_u32(&e, FG_GGUF_UINT32); enc_u64(&e, 1); enc_u32(&e, 3);
    fg_gguf_writer_set_raw(w, "a.nested", FG_GGUF_ARRAY, e.b, e.n);
    e.n = 0;
    enc_u32(&e, FG_GGUF_ARRAY);
    enc_u64(&e, 1);
    enc_u32(&e, FG_GGUF_STRING); enc_u64(&e, 2); enc_str(&e, "x"); enc_str(&e, "yz");
    fg_gguf_writer_set_raw(w, "a.nested_str", FG_GGUF_ARRAY, e.b, e.n);

    int64_t ne1[1] = {7};
    int64_t ne2[2] = {64, 3};
    int64_t ne3[3] = {32, 2, 2};
    int64_t nek[2] = {256, 2};
    assert_int_equal(fg_gguf_writer_add_tensor(w, "norm.weight", FG_TYPE_F32, 1, ne1), FG_OK);
    assert_int_equal(fg_gguf_writer_add_tensor(w, "w.f16", FG_TYPE_F16, 2, ne2), FG_OK);
    assert_int_equal(fg_gguf_writer_add_tensor(w, "w.q4_0", FG_TYPE_Q4_0, 3, ne3), FG_OK);
    assert_int_equal(fg_gguf_writer_add_tensor(w, "w.q4_k", FG_TYPE_Q4_K, 2, nek), FG_OK);
    assert_int_equal(fg_gguf_writer_write(w, path, fill_pattern, NULL), FG_OK);
    fg_gguf_writer_destroy(w);
}

static void check_full_file(const char *path, uint32_t version, uint32_t alignment) {
    fg_gguf *g = NULL;
    assert_int_equal(fg_gguf_open(path, &g), FG_OK);
    uint64_t a = alignment ? alignment : 32;
    assert_int_equal(fg_gguf_version(g), version);
    assert_int_equal(fg_gguf_alignment(g), a);
    assert_int_equal(fg_gguf_data_offset(g) % a, 0);
    const char *s;
    size_t len;
    assert_int_equal(fg_gguf_get_str(g, "general.name", &s, &len), FG_OK);
    assert_int_equal(len, 10);
    assert_memory_equal(s, "round trip", 10);
    int64_t iv;
    double dv;
    assert_int_equal(fg_gguf_get_int(g, "t.u8", &iv), FG_OK);
    assert_int_equal(iv, 200);
    assert_int_equal(fg_gguf_get_int(g, "t.i8", &iv), FG_OK);
    assert_int_equal(iv, -100);
    assert_int_equal(fg_gguf_get_int(g, "t.u16", &iv), FG_OK);
    assert_int_equal(iv, 60000);
    assert_int_equal(fg_gguf_get_int(g, "t.i16", &iv), FG_OK);
    assert_int_equal(iv, -30000);
    assert_int_equal(fg_gguf_get_int(g, "t.i64", &iv), FG_OK);
    assert_true(iv == -5000000000ll);
    uint32_t u32;
    int32_t i32;
    uint64_t u64;
    float f32;
    bool b;
    assert_int_equal(fg_gguf_get_u32(g, "t.u32", &u32), FG_OK);
    assert_true(u32 == 4000000000u);
    assert_int_equal(fg_gguf_get_i32(g, "t.i32", &i32), FG_OK);
    assert_int_equal(i32, -2000000000);
    assert_int_equal(fg_gguf_get_u64(g, "t.u64", &u64), FG_OK);
    assert_true(u64 == 18000000000000000000ull);
    assert_int_equal(fg_gguf_get_f32(g, "t.f32", &f32), FG_OK);
    assert_true(f32 == 1.5f);
    assert_int_equal(fg_gguf_get_bool(g, "t.bool", &b), FG_OK);
    assert_true(b);
    assert_int_equal(fg_gguf_get_float(g, "t.f64", &dv), FG_OK);
    assert_true(dv == 3.25);
    assert_int_equal(fg_gguf_get_float(g, "t.f32", &dv), FG_OK);
    assert_true(dv == 1.5);
    fg_gguf_value v = fg_gguf_kv_value(g, fg_gguf_find_key(g, "t.u8"));
    assert_int_equal(v.type, FG_GGUF_UINT8);

    // arrays
    float fa[3];
    int32_t ia[4];
    assert_int_equal(fg_gguf_get_arr_f32(g, "a.f32", fa, 3), FG_OK);
    assert_true(fa[0] == 0.5f && fa[1] == -1.0f && fa[2] == 2.0f);
    assert_int_equal(fg_gguf_get_arr_i32(g, "a.i32", ia, 4), FG_OK);
    assert_true(ia[0] == -1 && ia[3] == 2147483647);
    fg_gguf_type et;
    uint64_t n;
    assert_int_equal(fg_gguf_get_arr(g, "a.bool", &et, &n), FG_OK);
    assert_int_equal(et, FG_GGUF_BOOL);
    assert_int_equal(n, 3);
    assert_int_equal(fg_gguf_get_arr(g, "a.empty", &et, &n), FG_OK);
    assert_int_equal(et, FG_GGUF_INT64);
    assert_int_equal(n, 0);
    assert_int_equal(fg_gguf_get_arr(g, "a.str", &et, &n), FG_OK);
    assert_int_equal(et, FG_GGUF_STRING);
    assert_int_equal(n, 4);
    assert_int_equal(fg_gguf_get_arr_str(g, "a.str", 0, &s, &len), FG_OK);
    assert_int_equal(len, 5);
    assert_memory_equal(s, "alpha", 5);
    assert_int_equal(fg_gguf_get_arr_str(g, "a.str", 1, &s, &len), FG_OK);
    assert_int_equal(len, 0);
    assert_int_equal(fg_gguf_get_arr_str(g, "a.str", 2, &s, &len), FG_OK);
    assert_int_equal(len, 6);
    assert_memory_equal(s, "g\xc3\xa4mma", 6);
    assert_int_equal(fg_gguf_get_arr_str(g, "a.str", 3, &s, &len), FG_OK);
    assert_int_equal(len, 6);
    assert_memory_equal(s, "d\0elta", 6);
    fg_gguf_value sv = fg_gguf_kv_value(g, fg_gguf_find_key(g, "a.str")), ev;
    assert_int_equal(fg_gguf_arr_elem(g, sv, 2, &ev), FG_OK);
    assert_int_equal(ev.type, FG_GGUF_STRING);
    assert_int_equal(ev.n, 6);

    // nested arrays
    fg_gguf_value nv = fg_gguf_kv_value(g, fg_gguf_find_key(g, "a.nested")), inner, x;
    assert_int_equal(nv.type, FG_GGUF_ARRAY);
    assert_int_equal(nv.elem_type, FG_GGUF_ARRAY);
    assert_int_equal(nv.n, 3);
    assert_int_equal(fg_gguf_arr_elem(g, nv, 1, &inner), FG_OK);
    assert_int_equal(inner.n, 0);
    assert_int_equal(fg_gguf_arr_elem(g, nv, 2, &inner), FG_OK);
    assert_int_equal(inner.elem_type, FG_GGUF_UINT32);
    assert_int_equal(inner.n, 1);
    assert_int_equal(fg_gguf_arr_elem(g, inner, 0, &x), FG_OK);
    memcpy(&u32, x.data, 4);
    assert_int_equal(u32, 3);
    assert_int_equal(fg_gguf_arr_elem(g, nv, 0, &inner), FG_OK);
    assert_int_equal(fg_gguf_arr_elem(g, inner, 1, &x), FG_OK);
    memcpy(&u32, x.data, 4);
    assert_int_equal(u32, 2);
    assert_int_equal(fg_gguf_arr_elem(g, nv, 3, &inner), FG_ERR_INVALID_ARG);
    fg_gguf_value ns = fg_gguf_kv_value(g, fg_gguf_find_key(g, "a.nested_str"));
    assert_int_equal(fg_gguf_arr_elem(g, ns, 0, &inner), FG_OK);
    assert_int_equal(inner.elem_type, FG_GGUF_STRING);
    assert_int_equal(fg_gguf_arr_elem(g, inner, 1, &x), FG_OK);
    assert_int_equal(x.n, 2);
    assert_memory_equal(x.data, "yz", 2);

    // tensors
    assert_int_equal(fg_gguf_n_tensors(g), 4);
    const fg_gguf_tensor *t = fg_gguf_find_tensor(g, "w.q4_0");
    assert_non_null(t);
    assert_int_equal(t->n_dims, 3);
    assert_int_equal(t->ne[0], 32);
    assert_int_equal(t->ne[2], 2);
    assert_int_equal(t->ne[3], 1);
    assert_int_equal(t->n_bytes, 4 * 18);
    t = fg_gguf_find_tensor(g, "w.q4_k");
    assert_int_equal(t->n_bytes, 2 * 144);
    assert_null(fg_gguf_find_tensor(g, "missing"));
    for (int64_t i = 0; i < 4; i++) {
        t = fg_gguf_tensor_at(g, i);
        assert_int_equal(t->offset % a, 0);
        const uint8_t *p = t->data;
        assert_int_equal(((uintptr_t)p - (uintptr_t)fg_gguf_tensor_at(g, 0)->data) % a, 0);
        for (uint64_t j = 0; j < t->n_bytes; j++)
            if (p[j] != (uint8_t)((uint64_t)i * 31 + j * 7))
                fail_msg("tensor %lld byte %llu differs", (long long)i, (unsigned long long)j);
    }
    assert_null(fg_gguf_tensor_at(g, 4));
    fg_gguf_close(g);
}

static void test_roundtrip_v3(void **state) {
    (void)state;
    const char *p = tmp_path("v3.gguf");
    write_full_file(p, 3, 0);
    check_full_file(p, 3, 0);
    unlink(p);
}

static void test_roundtrip_v2_align64(void **state) {
    (void)state;
    const char *p = tmp_path("v2.gguf");
    write_full_file(p, 2, 64);
    check_full_file(p, 2, 64);
    unlink(p);
}

static void test_copy_kv(void **state) {
    (void)state;
    char src[256], dst[256];
    snprintf(src, sizeof src, "%s", tmp_path("copy-src.gguf"));
    snprintf(dst, sizeof dst, "%s", tmp_path("copy-dst.gguf"));
    write_full_file(src, 3, 0);
    fg_gguf *g = NULL;
    assert_int_equal(fg_gguf_open(src, &g), FG_OK);
    fg_gguf_writer *w = NULL;
    assert_int_equal(fg_gguf_writer_create(3, &w), FG_OK);
    assert_int_equal(fg_gguf_writer_copy_kv(w, g, "a.str"), FG_OK);
    assert_int_equal(fg_gguf_writer_copy_kv(w, g, "a.nested"), FG_OK);
    assert_int_equal(fg_gguf_writer_copy_kv(w, g, "nope"), FG_ERR_FORMAT);
    assert_int_equal(fg_gguf_writer_write(w, dst, NULL, NULL), FG_OK);
    fg_gguf_writer_destroy(w);
    fg_gguf_close(g);
    assert_int_equal(fg_gguf_open(dst, &g), FG_OK);
    assert_int_equal(fg_gguf_n_kv(g), 2);
    assert_int_equal(fg_gguf_n_tensors(g), 0);
    const char *s;
    size_t len;
    assert_int_equal(fg_gguf_get_arr_str(g, "a.str", 2, &s, &len), FG_OK);
    assert_memory_equal(s, "g\xc3\xa4mma", 6);
    fg_gguf_close(g);
    unlink(src);
    unlink(dst);
}

static void test_getter_errors(void **state) {
    (void)state;
    const char *p = tmp_path("err.gguf");
    write_full_file(p, 3, 0);
    char msg[512];
    fg_gguf *g = NULL;
    assert_int_equal(fg_gguf_open(p, &g), FG_OK);
    uint32_t u32 = 77;
    int64_t iv;
    double dv;
    const char *s;
    size_t len;
    float fa[4];
    int32_t ia[4];
    assert_int_equal(fg_gguf_get_u32(g, "nope", &u32), FG_ERR_FORMAT);
    snprintf(msg, sizeof msg, "%s: key 'nope' not found", p);
    assert_string_equal(fg_last_error(), msg);
    assert_int_equal(u32, 77); // untouched on failure
    assert_int_equal(fg_gguf_get_u32(g, "general.name", &u32), FG_ERR_FORMAT);
    snprintf(msg, sizeof msg, "%s: key 'general.name': expected uint32, found string", p);
    assert_string_equal(fg_last_error(), msg);
    assert_int_equal(fg_gguf_get_str(g, "t.u32", &s, &len), FG_ERR_FORMAT);
    snprintf(msg, sizeof msg, "%s: key 't.u32': expected string, found uint32", p);
    assert_string_equal(fg_last_error(), msg);
    assert_int_equal(fg_gguf_get_f32(g, "t.f64", &fa[0]), FG_ERR_FORMAT);
    snprintf(msg, sizeof msg, "%s: key 't.f64': expected float32, found float64", p);
    assert_string_equal(fg_last_error(), msg);
    assert_int_equal(fg_gguf_get_int(g, "t.big", &iv), FG_ERR_FORMAT);
    snprintf(msg, sizeof msg, "%s: key 't.big': value 18000000000000000000 does not fit in int64", p);
    assert_string_equal(fg_last_error(), msg);
    assert_int_equal(fg_gguf_get_int(g, "t.f32", &iv), FG_ERR_FORMAT);
    snprintf(msg, sizeof msg, "%s: key 't.f32': expected an integer, found float32", p);
    assert_string_equal(fg_last_error(), msg);
    assert_int_equal(fg_gguf_get_float(g, "t.bool", &dv), FG_ERR_FORMAT);
    snprintf(msg, sizeof msg, "%s: key 't.bool': expected a float, found bool", p);
    assert_string_equal(fg_last_error(), msg);
    assert_int_equal(fg_gguf_get_arr_f32(g, "a.f32", fa, 4), FG_ERR_FORMAT);
    snprintf(msg, sizeof msg, "%s: key 'a.f32': expected 4 elements, found 3", p);
    assert_string_equal(fg_last_error(), msg);
    assert_int_equal(fg_gguf_get_arr_f32(g, "a.i32", fa, 4), FG_ERR_FORMAT);
    snprintf(msg, sizeof msg, "%s: key 'a.i32': expected array of float32, found array of int32", p);
    assert_string_equal(fg_last_error(), msg);
    assert_int_equal(fg_gguf_get_arr_i32(g, "a.u32", ia, 2), FG_ERR_FORMAT);
    snprintf(msg, sizeof msg, "%s: key 'a.u32': element 1 is 4000000000, does not fit in int32", p);
    assert_string_equal(fg_last_error(), msg);
    assert_int_equal(fg_gguf_get_arr_str(g, "a.str", 4, &s, &len), FG_ERR_INVALID_ARG);
    snprintf(msg, sizeof msg, "%s: key 'a.str': index 4 out of range (4 elements)", p);
    assert_string_equal(fg_last_error(), msg);
    assert_int_equal(fg_gguf_get_arr_str(g, "a.f32", 0, &s, &len), FG_ERR_FORMAT);
    snprintf(msg, sizeof msg, "%s: key 'a.f32': expected array of string, found array of float32", p);
    assert_string_equal(fg_last_error(), msg);
    fg_gguf_type et;
    uint64_t n;
    assert_int_equal(fg_gguf_get_arr(g, "t.u8", &et, &n), FG_ERR_FORMAT);
    snprintf(msg, sizeof msg, "%s: key 't.u8': expected array, found uint8", p);
    assert_string_equal(fg_last_error(), msg);
    fg_gguf_close(g);
    unlink(p);
}

static void test_writer_errors(void **state) {
    (void)state;
    fg_gguf_writer *w = NULL;
    assert_int_equal(fg_gguf_writer_create(1, &w), FG_ERR_INVALID_ARG);
    assert_string_equal(fg_last_error(), "gguf writer: version 1 is not supported (expected 2 or 3)");
    assert_int_equal(fg_gguf_writer_create(3, &w), FG_OK);
    int64_t ne[2] = {100, 2};
    assert_int_equal(fg_gguf_writer_add_tensor(w, "a", FG_TYPE_Q4_K, 2, ne), FG_ERR_FORMAT);
    assert_string_equal(fg_last_error(),
                        "gguf writer: tensor 'a': row of 100 elements is not a multiple of the q4_k block size 256");
    assert_int_equal(fg_gguf_writer_add_tensor(w, "a", 4, 2, ne), FG_ERR_INVALID_ARG);
    assert_string_equal(fg_last_error(), "gguf writer: tensor 'a': type id 4 is not a weight type");
    assert_int_equal(fg_gguf_writer_add_tensor(w, "a", FG_TYPE_F32, 5, ne), FG_ERR_INVALID_ARG);
    assert_int_equal(fg_gguf_writer_add_tensor(w, "a", FG_TYPE_F32, 2, ne), FG_OK);
    assert_int_equal(fg_gguf_writer_add_tensor(w, "a", FG_TYPE_F32, 2, ne), FG_ERR_INVALID_ARG);
    assert_string_equal(fg_last_error(), "gguf writer: tensor 'a': duplicate name");
    fg_gguf_writer_destroy(w);
    fg_gguf_writer_destroy(NULL);
}

// --- hostile bytes in memory

typedef struct raw {
    uint8_t b[1024];
    size_t n;
} raw;
static void r_put(raw *r, const void *p, size_t n) { memcpy(r->b + r->n, p, n); r->n += n; }
static void r_u32(raw *r, uint32_t v) { r_put(r, &v, 4); }
static void r_u64(raw *r, uint64_t v) { r_put(r, &v, 8); }
static void r_str(raw *r, const char *s) { r_u64(r, strlen(s)); r_put(r, s, strlen(s)); }
static void r_hdr(raw *r, uint32_t version, uint64_t n_tensors, uint64_t n_kv) {
    r->n = 0;
    r_put(r, "GGUF", 4);
    r_u32(r, version);
    r_u64(r, n_tensors);
    r_u64(r, n_kv);
}
static void r_pad(raw *r, size_t align) {
    while (r->n % align)
        r->b[r->n++] = 0;
}

static void expect_fail(const raw *r, const char *msg) {
    fg_gguf *g = (fg_gguf *)1;
    fg_status st = fg_gguf_open_memory(r->b, r->n, "h.gguf", &g);
    assert_int_equal(st, FG_ERR_FORMAT);
    assert_true(g == (fg_gguf *)1);
    assert_string_equal(fg_last_error(), msg);
}

static void test_hostile_memory(void **state) {
    (void)state;
    raw r;
    r.n = 0;
    r_put(&r, "GGML", 4);
    r_u32(&r, 3);
    expect_fail(&r, "h.gguf: not a GGUF file: magic is 'GGML' (4 bytes), expected 'GGUF'");
    r.n = 2;
    expect_fail(&r, "h.gguf: not a GGUF file: magic is 'GG' (2 bytes), expected 'GGUF'");
    r_hdr(&r, 1, 0, 0);
    expect_fail(&r, "h.gguf: GGUF version 1 is not supported (expected 2 or 3)");
    r_hdr(&r, 99, 0, 0);
    expect_fail(&r, "h.gguf: GGUF version 99 is not supported (expected 2 or 3)");
    r_hdr(&r, 3u << 24, 0, 0);
    expect_fail(&r, "h.gguf: big-endian GGUF v3 is not supported (expected a little-endian file)");
    r_hdr(&r, 3, 0, 1ull << 62);
    expect_fail(&r, "h.gguf: header: metadata count 4611686018427387904 needs at least 13 bytes per pair but only 0 bytes follow the header");
    r_hdr(&r, 3, 1ull << 62, 0);
    expect_fail(&r, "h.gguf: header: tensor count 4611686018427387904 needs at least 32 bytes per tensor info but the file has 24 bytes");
    // string length past the end
    r_hdr(&r, 3, 0, 1);
    r_u64(&r, 1000);
    r_put(&r, "abcdefghij", 10);
    expect_fail(&r, "h.gguf: metadata pair #0 key: string of 1000 bytes at byte 32 runs past the end of the file (42 bytes)");
    // unknown value type
    r_hdr(&r, 3, 0, 1);
    r_str(&r, "k");
    r_u32(&r, 13);
    r_u32(&r, 0);
    expect_fail(&r, "h.gguf: key 'k': unknown value type 13 (expected 0..12)");
    // duplicate key
    r_hdr(&r, 3, 0, 2);
    r_str(&r, "k");
    r_u32(&r, FG_GGUF_UINT8);
    r.b[r.n++] = 1;
    r_str(&r, "k");
    r_u32(&r, FG_GGUF_UINT8);
    r.b[r.n++] = 1;
    expect_fail(&r, "h.gguf: key 'k': duplicate (pairs #0 and #1)");
    // alignment 3, 0, wrong type
    r_hdr(&r, 3, 0, 1);
    r_str(&r, "general.alignment");
    r_u32(&r, FG_GGUF_UINT32);
    r_u32(&r, 3);
    expect_fail(&r, "h.gguf: key 'general.alignment': expected a nonzero power of two, found 3");
    r.n -= 4;
    r_u32(&r, 0);
    expect_fail(&r, "h.gguf: key 'general.alignment': expected a nonzero power of two, found 0");
    r_hdr(&r, 3, 0, 1);
    r_str(&r, "general.alignment");
    r_u32(&r, FG_GGUF_UINT64);
    r_u64(&r, 32);
    expect_fail(&r, "h.gguf: key 'general.alignment': expected uint32, found uint64");
    // huge array length
    r_hdr(&r, 3, 0, 1);
    r_str(&r, "a");
    r_u32(&r, FG_GGUF_ARRAY);
    r_u32(&r, FG_GGUF_UINT64);
    r_u64(&r, 1ull << 61);
    expect_fail(&r, "h.gguf: key 'a': array of 2305843009213693952 uint64 elements at byte 49 needs at least 8 bytes per element but only 0 bytes remain");
    // nesting deeper than the cap
    r_hdr(&r, 3, 0, 1);
    r_str(&r, "a");
    r_u32(&r, FG_GGUF_ARRAY);
    for (int i = 0; i < 6; i++) {
        r_u32(&r, FG_GGUF_ARRAY);
        r_u64(&r, 1);
    }
    expect_fail(&r, "h.gguf: key 'a': arrays nested deeper than 4 levels");

    // tensor infos
    struct {
        uint32_t n_dims;
        int64_t ne[5];
        uint32_t type;
        uint64_t offset;
        const char *msg;
    } cases[] = {
        {0, {0}, 0, 0, "h.gguf: tensor 'w': n_dims is 0, expected 1..4"},
        {5, {1, 1, 1, 1, 1}, 0, 0, "h.gguf: tensor 'w': n_dims is 5, expected 1..4"},
        {2, {4, -3}, 0, 0, "h.gguf: tensor 'w': ne[1] is -3, expected >= 0"},
        {3, {1ll << 40, 1ll << 20, 1ll << 10}, 0, 0, "h.gguf: tensor 'w': element count overflows at ne[2] = 1024"},
        {1, {32}, 4, 0, "h.gguf: tensor 'w': type id 4 is retired (Q4_2/Q4_3), not supported"},
        {1, {32}, 5, 0, "h.gguf: tensor 'w': type id 5 is retired (Q4_2/Q4_3), not supported"},
        {1, {32}, 77, 0, "h.gguf: tensor 'w': unknown type id 77 (expected a weight type id below 40)"},
        {1, {32}, 15, 0, "h.gguf: tensor 'w': type q8_k (id 15) is not a weight type"},
        {1, {100}, FG_TYPE_Q4_K, 0, "h.gguf: tensor 'w': ne[0] is 100, expected a multiple of the q4_k block size 256"},
        {1, {8}, 0, 16, "h.gguf: tensor 'w': offset 16 is not a multiple of the alignment 32"},
        {1, {8}, 0, 64, "h.gguf: tensor 'w': data ends at byte 160 but the file has 128 bytes"},
        {1, {1ll << 40}, 0, 0, "h.gguf: tensor 'w': data ends at byte 4398046511168 but the file has 128 bytes"},
    };
    for (size_t i = 0; i < FG_ARRAY_LEN(cases); i++) {
        r_hdr(&r, 3, 1, 0);
        r_str(&r, "w");
        r_u32(&r, cases[i].n_dims);
        for (uint32_t d = 0; d < cases[i].n_dims; d++)
            r_u64(&r, (uint64_t)cases[i].ne[d]);
        r_u32(&r, cases[i].type);
        r_u64(&r, cases[i].offset);
        r_pad(&r, 32);
        while (r.n < 128)
            r.b[r.n++] = 0;
        expect_fail(&r, cases[i].msg);
    }
    // duplicate tensor names
    r_hdr(&r, 3, 2, 0);
    for (int i = 0; i < 2; i++) {
        r_str(&r, "w");
        r_u32(&r, 1);
        r_u64(&r, 8);
        r_u32(&r, 0);
        r_u64(&r, 0);
    }
    r_pad(&r, 32);
    while (r.n < 160)
        r.b[r.n++] = 0;
    expect_fail(&r, "h.gguf: tensor 'w': duplicate name (tensors #0 and #1)");
    // a zero-sized dimension is legal (as in ggml)
    r_hdr(&r, 3, 1, 0);
    r_str(&r, "w");
    r_u32(&r, 2);
    r_u64(&r, 32);
    r_u64(&r, 0);
    r_u32(&r, 0);
    r_u64(&r, 0);
    r_pad(&r, 32);
    fg_gguf *g = NULL;
    assert_int_equal(fg_gguf_open_memory(r.b, r.n, "h.gguf", &g), FG_OK);
    assert_int_equal(fg_gguf_tensor_at(g, 0)->n_bytes, 0);
    fg_gguf_close(g);
    fg_gguf_close(NULL);
}

static void test_truncation_every_byte(void **state) {
    (void)state;
    const char *p = tmp_path("trunc.gguf");
    write_full_file(p, 3, 0);
    size_t n;
    uint8_t *buf = read_all(p, &n);
    fg_gguf *g = NULL;
    assert_int_equal(fg_gguf_open_memory(buf, n, "t.gguf", &g), FG_OK);
    fg_gguf_close(g);
    for (size_t k = 0; k < n; k++) {
        uint8_t *copy = malloc(k ? k : 1); // exact size so ASan would catch an overread
        memcpy(copy, buf, k);
        g = NULL;
        fg_status st = fg_gguf_open_memory(copy, k, "t.gguf", &g);
        if (st != FG_ERR_FORMAT)
            fail_msg("truncation at %zu: status %d", k, (int)st);
        assert_null(g);
        assert_non_null(strstr(fg_last_error(), "t.gguf: "));
        free(copy);
    }
    free(buf);
    unlink(p);
}

// --- shared models (MANIFEST.md)

typedef struct model_case {
    const char *file;
    const char *arch;
    int64_t n_tensors;
    uint64_t bytes;
    uint32_t weight_type; // type of the 15 2-D weights
    int n_weight;         // how many tensors of weight_type
} model_case;

static void check_model(const model_case *m) {
    char path[512];
    snprintf(path, sizeof path, "%s/models/%s", shared_dir(), m->file);
    fg_gguf *g = NULL;
    if (fg_gguf_open(path, &g) != FG_OK)
        fail_msg("%s", fg_last_error());
    assert_int_equal(fg_gguf_file_size(g), m->bytes);
    assert_int_equal(fg_gguf_n_tensors(g), m->n_tensors);
    const char *s;
    size_t len;
    assert_int_equal(fg_gguf_get_str(g, "general.architecture", &s, &len), FG_OK);
    assert_int_equal(len, strlen(m->arch));
    assert_memory_equal(s, m->arch, len);
    fg_gguf_type et;
    uint64_t n;
    assert_int_equal(fg_gguf_get_arr(g, "tokenizer.ggml.tokens", &et, &n), FG_OK);
    assert_int_equal(et, FG_GGUF_STRING);
    assert_int_equal(n, 512);
    assert_int_equal(fg_gguf_get_arr_str(g, "tokenizer.ggml.tokens", 1, &s, &len), FG_OK);
    assert_int_equal(len, 3);
    assert_memory_equal(s, "<s>", 3);
    int n_w = 0;
    for (int64_t i = 0; i < fg_gguf_n_tensors(g); i++) {
        const fg_gguf_tensor *t = fg_gguf_tensor_at(g, i);
        if (t->type == m->weight_type && (t->n_dims == 2 || m->weight_type == FG_TYPE_F32))
            n_w++;
        if (t->n_dims == 1)
            assert_int_equal(t->type, FG_TYPE_F32); // norms are F32 in every file
    }
    assert_int_equal(n_w, m->n_weight);
    fg_gguf_close(g);
}

static void test_shared_models(void **state) {
    (void)state;
    static const model_case cases[] = {
        {"stories260K.gguf", "llama", 48, 1185376, FG_TYPE_F32, 48},
        {"synth/synth-llama-F16.gguf", "llama", 20, 1852832, FG_TYPE_F16, 15},
        {"synth/synth-llama-BF16.gguf", "llama", 20, 1852832, FG_TYPE_BF16, 15},
        {"synth/synth-llama-Q8_0.gguf", "llama", 20, 992672, FG_TYPE_Q8_0, 15},
        {"synth/synth-llama-Q4_0.gguf", "llama", 20, 533920, FG_TYPE_Q4_0, 15},
        {"synth/synth-llama-Q4_1.gguf", "llama", 20, 591264, FG_TYPE_Q4_1, 15},
        {"synth/synth-llama-Q5_0.gguf", "llama", 20, 648608, FG_TYPE_Q5_0, 15},
        {"synth/synth-llama-Q5_1.gguf", "llama", 20, 705952, FG_TYPE_Q5_1, 15},
        {"synth/synth-llama-Q2_K.gguf", "llama", 20, 318880, FG_TYPE_Q2_K, 15},
        {"synth/synth-llama-Q3_K_M.gguf", "llama", 20, 412064, FG_TYPE_Q3_K, 15},
        {"synth/synth-llama-Q4_K_M.gguf", "llama", 20, 533920, FG_TYPE_Q4_K, 15},
        {"synth/synth-llama-Q5_K_M.gguf", "llama", 20, 648608, FG_TYPE_Q5_K, 15},
        {"synth/synth-llama-Q6_K.gguf", "llama", 20, 770464, FG_TYPE_Q6_K, 15},
        {"synth/synth-qwen2-F16.gguf", "qwen2", 26, 228224, FG_TYPE_F16, 15},
        {"synth/synth-qwen3-F16.gguf", "qwen3", 24, 375712, FG_TYPE_F16, 15},
    };
    for (size_t i = 0; i < FG_ARRAY_LEN(cases); i++)
        check_model(&cases[i]);
}

static void test_stories260k_details(void **state) {
    (void)state;
    char path[512];
    snprintf(path, sizeof path, "%s/models/stories260K.gguf", shared_dir());
    fg_gguf *g = NULL;
    if (fg_gguf_open(path, &g) != FG_OK)
        fail_msg("%s", fg_last_error());
    int64_t v;
    assert_int_equal(fg_gguf_get_int(g, "llama.embedding_length", &v), FG_OK);
    assert_int_equal(v, 64);
    assert_int_equal(fg_gguf_get_int(g, "llama.block_count", &v), FG_OK);
    assert_int_equal(v, 5);
    assert_int_equal(fg_gguf_get_int(g, "llama.attention.head_count", &v), FG_OK);
    assert_int_equal(v, 8);
    assert_int_equal(fg_gguf_get_int(g, "llama.attention.head_count_kv", &v), FG_OK);
    assert_int_equal(v, 4);
    assert_int_equal(fg_gguf_get_int(g, "llama.feed_forward_length", &v), FG_OK);
    assert_int_equal(v, 172);
    assert_int_equal(fg_gguf_get_int(g, "tokenizer.ggml.seperator_token_id", &v), FG_OK);
    assert_int_equal(v, 4294967295ll);
    assert_int_equal(fg_gguf_find_key(g, "llama.rope.freq_base"), -1);
    assert_non_null(fg_gguf_find_tensor(g, "output.weight"));
    const fg_gguf_tensor *t = fg_gguf_find_tensor(g, "token_embd.weight");
    assert_non_null(t);
    assert_int_equal(t->ne[0], 64);
    assert_int_equal(t->ne[1], 512);
    float sc[512];
    assert_int_equal(fg_gguf_get_arr_f32(g, "tokenizer.ggml.scores", sc, 512), FG_OK);
    int32_t tt[512];
    assert_int_equal(fg_gguf_get_arr_i32(g, "tokenizer.ggml.token_type", tt, 512), FG_OK);
    assert_int_equal(tt[0], 2); // <unk>
    assert_int_equal(tt[1], 3); // <s>
    assert_int_equal(tt[3], 6); // <0x00>
    fg_gguf_close(g);
}

static void test_vocab_files(void **state) {
    (void)state;
    static const char *const files[] = {"bert-bge", "deepseek-coder", "deepseek-llm", "falcon", "gpt-2",
                                        "llama-spm", "mpt", "refact", "starcoder"};
    for (size_t i = 0; i < FG_ARRAY_LEN(files); i++) {
        char path[512];
        snprintf(path, sizeof path, "%s/vocab/ggml-vocab-%s.gguf", shared_dir(), files[i]);
        fg_gguf *g = NULL;
        if (fg_gguf_open(path, &g) != FG_OK)
            fail_msg("%s", fg_last_error());
        fg_gguf_type et;
        uint64_t n;
        assert_int_equal(fg_gguf_get_arr(g, "tokenizer.ggml.tokens", &et, &n), FG_OK);
        assert_true(n > 1000);
        const char *s;
        size_t len;
        assert_int_equal(fg_gguf_get_arr_str(g, "tokenizer.ggml.tokens", n - 1, &s, &len), FG_OK);
        fg_gguf_close(g);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip_v3),
        cmocka_unit_test(test_roundtrip_v2_align64),
        cmocka_unit_test(test_copy_kv),
        cmocka_unit_test(test_getter_errors),
        cmocka_unit_test(test_writer_errors),
        cmocka_unit_test(test_hostile_memory),
        cmocka_unit_test(test_truncation_every_byte),
        cmocka_unit_test(test_shared_models),
        cmocka_unit_test(test_stories260k_details),
        cmocka_unit_test(test_vocab_files),
    };
    return cmocka_run_group_tests_name("gguf", tests, NULL, NULL);
}
