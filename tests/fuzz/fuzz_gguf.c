// fuzz_gguf.c - libFuzzer target for the GGUF reader: opens arbitrary bytes with
// fg_gguf_open_memory and, when they parse, walks every key, value, array element (nested
// arrays included, bounded per array) and tensor, touching the first and last byte of each
// tensor's data so ASan catches any view outside the buffer. Built by `make fuzz`.
// forge-fuzz-modules: gguf quant base
#include "forge.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static volatile uint64_t g_sink;

static void touch(const void *p, uint64_t n) {
    const uint8_t *b = p;
    if (n > 0)
        g_sink += b[0] + b[n - 1];
}

static void walk(const fg_gguf *g, fg_gguf_value v, int depth) {
    if (depth > 8)
        abort(); // the reader caps nesting; deeper means a bug
    switch (v.type) {
    case FG_GGUF_STRING: touch(v.data, v.n); break;
    case FG_GGUF_ARRAY: {
        uint64_t n = v.n < 64 ? v.n : 64;
        for (uint64_t i = 0; i < n; i++) {
            fg_gguf_value e;
            if (fg_gguf_arr_elem(g, v, i, &e) != FG_OK)
                abort();
            walk(g, e, depth + 1);
        }
        if (v.n > 0) {
            fg_gguf_value e;
            if (fg_gguf_arr_elem(g, v, v.n - 1, &e) != FG_OK)
                abort();
            walk(g, e, depth + 1);
        }
        fg_gguf_value e;
        if (fg_gguf_arr_elem(g, v, v.n, &e) == FG_OK)
            abort();
        break;
    }
    default: touch(v.data, 1); break;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    // copy so that ASan sees the exact buffer bounds
    uint8_t *buf = malloc(size ? size : 1);
    if (!buf)
        return 0;
    if (size)
        memcpy(buf, data, size);
    fg_gguf *g = NULL;
    if (fg_gguf_open_memory(buf, size, "fuzz.gguf", &g) == FG_OK) {
        for (int64_t i = 0; i < fg_gguf_n_kv(g); i++) {
            const char *k = fg_gguf_kv_key(g, i);
            if (!k || fg_gguf_find_key(g, k) != i)
                abort();
            fg_gguf_value v = fg_gguf_kv_value(g, i);
            walk(g, v, 0);
            if (v.type == FG_GGUF_ARRAY && v.elem_type == FG_GGUF_STRING) {
                uint64_t n = v.n < 4096 ? v.n : 4096;
                for (uint64_t j = 0; j < n; j++) {
                    const char *s;
                    size_t len;
                    if (fg_gguf_get_arr_str(g, k, j, &s, &len) != FG_OK)
                        abort();
                    touch(s, len);
                }
            }
            int64_t iv;
            double dv;
            const char *s;
            size_t len;
            uint32_t u32;
            (void)fg_gguf_get_int(g, k, &iv);
            (void)fg_gguf_get_float(g, k, &dv);
            (void)fg_gguf_get_str(g, k, &s, &len);
            (void)fg_gguf_get_u32(g, k, &u32);
            float f[8];
            int32_t i32[8];
            (void)fg_gguf_get_arr_f32(g, k, f, v.n <= 8 ? v.n : 8);
            (void)fg_gguf_get_arr_i32(g, k, i32, v.n <= 8 ? v.n : 8);
        }
        for (int64_t i = 0; i < fg_gguf_n_tensors(g); i++) {
            const fg_gguf_tensor *t = fg_gguf_tensor_at(g, i);
            if (fg_gguf_find_tensor(g, t->name) != t || t->n_dims < 1 || t->n_dims > 4 ||
                !fg_type_known(t->type) || t->offset % fg_gguf_alignment(g) != 0)
                abort();
            const uint8_t *p = t->data;
            if (p < buf || t->n_bytes > size || (size_t)(p - buf) > size - t->n_bytes)
                abort();
            touch(p, t->n_bytes);
        }
        fg_gguf_close(g);
    }
    free(buf);
    return 0;
}
