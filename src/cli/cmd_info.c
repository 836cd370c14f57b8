// cmd_info.c - `forge info -m MODEL`: prints a GGUF file's header, metadata (long arrays
// abbreviated, strings escaped and truncated) and tensor table, then the parameter count and
// size. Any malformed file: exit 1 with one line "forge info: <message>" on stderr.
// Not here: parsing or validation (src/gguf/gguf_read.c does all of it at open).
#include "cli/cli.h"

#include "base/status.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#define STR_SHOW 60   // bytes of a string value shown
#define ARR_SHOW 6    // elements of an array shown

static void usage(FILE *f) {
    fprintf(f, "usage: forge info -m MODEL.gguf\n\n"
               "Prints the GGUF header, every metadata key (long arrays abbreviated), the tensor\n"
               "table (name, type, shape, bytes, offset), the parameter count and the size.\n\n"
               "  -m, --model PATH   the GGUF file\n"
               "  -h, --help         this text\n");
}

static void print_escaped(const char *s, size_t n, size_t max) {
    putchar('"');
    size_t show = n < max ? n : max;
    for (size_t i = 0; i < show; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\')
            printf("\\%c", c);
        else if (c == '\n')
            fputs("\\n", stdout);
        else if (c == '\t')
            fputs("\\t", stdout);
        else if (c < 0x20 || c == 0x7f)
            printf("\\x%02x", c);
        else
            putchar(c); // UTF-8 bytes pass through
    }
    putchar('"');
    if (n > max)
        printf("...(%zu bytes)", n);
}

static void print_value(const fg_gguf *g, fg_gguf_value v, int depth) {
    const uint8_t *p = v.data;
    switch (v.type) {
    case FG_GGUF_UINT8: printf("%u", p[0]); break;
    case FG_GGUF_INT8: printf("%d", (int8_t)p[0]); break;
    case FG_GGUF_UINT16: { uint16_t x; memcpy(&x, p, 2); printf("%u", x); break; }
    case FG_GGUF_INT16: { int16_t x; memcpy(&x, p, 2); printf("%d", x); break; }
    case FG_GGUF_UINT32: { uint32_t x; memcpy(&x, p, 4); printf("%u", x); break; }
    case FG_GGUF_INT32: { int32_t x; memcpy(&x, p, 4); printf("%d", x); break; }
    case FG_GGUF_UINT64: { uint64_t x; memcpy(&x, p, 8); printf("%" PRIu64, x); break; }
    case FG_GGUF_INT64: { int64_t x; memcpy(&x, p, 8); printf("%" PRId64, x); break; }
    case FG_GGUF_FLOAT32: { float x; memcpy(&x, p, 4); printf("%g", x); break; }
    case FG_GGUF_FLOAT64: { double x; memcpy(&x, p, 8); printf("%g", x); break; }
    case FG_GGUF_BOOL: fputs(p[0] ? "true" : "false", stdout); break;
    case FG_GGUF_STRING: print_escaped(v.data, (size_t)v.n, depth ? STR_SHOW / 2 : STR_SHOW); break;
    case FG_GGUF_ARRAY: {
        putchar('[');
        uint64_t show = v.n < ARR_SHOW ? v.n : ARR_SHOW;
        for (uint64_t i = 0; i < show; i++) {
            fg_gguf_value e;
            if (fg_gguf_arr_elem(g, v, i, &e) != FG_OK)
                break;
            if (i)
                fputs(", ", stdout);
            print_value(g, e, depth + 1);
        }
        if (v.n > show)
            printf(", ... (%" PRIu64 " total)", v.n);
        putchar(']');
        break;
    }
    default: fputs("?", stdout); break;
    }
}

static void type_label(fg_gguf_value v, char *out, size_t n) {
    if (v.type == FG_GGUF_ARRAY)
        snprintf(out, n, "arr[%s,%" PRIu64 "]", fg_gguf_type_name(v.elem_type), v.n);
    else
        snprintf(out, n, "%s", fg_gguf_type_name(v.type));
}

static void print_info(const fg_gguf *g) {
    const char *arch = NULL;
    size_t arch_len = 0;
    if (fg_gguf_get_str(g, "general.architecture", &arch, &arch_len) != FG_OK) {
        arch = "(none)";
        arch_len = 6;
    }
    fg_error_clear();
    printf("file: %s\n", fg_gguf_path(g));
    printf("gguf version: %u, alignment: %" PRIu64 ", data offset: %" PRIu64 ", file size: %" PRIu64 " bytes\n",
           fg_gguf_version(g), fg_gguf_alignment(g), fg_gguf_data_offset(g), fg_gguf_file_size(g));
    printf("architecture: %.*s\n", (int)(arch_len > 64 ? 64 : arch_len), arch);
    printf("metadata: %" PRId64 " keys\n", fg_gguf_n_kv(g));
    for (int64_t i = 0; i < fg_gguf_n_kv(g); i++) {
        char tl[64];
        fg_gguf_value v = fg_gguf_kv_value(g, i);
        type_label(v, tl, sizeof tl);
        const char *key = fg_gguf_kv_key(g, i);
        size_t klen = strlen(key);
        bool plain = klen <= 80;
        for (size_t k = 0; k < klen && plain; k++)
            plain = (unsigned char)key[k] > 0x20 && (unsigned char)key[k] < 0x7f;
        if (plain) {
            printf("  %-42s %-18s = ", key, tl);
        } else { // keys with odd bytes are shown escaped
            fputs("  ", stdout);
            print_escaped(key, klen, STR_SHOW);
            printf(" %-18s = ", tl);
        }
        print_value(g, v, 0);
        putchar('\n');
    }
    int64_t nt = fg_gguf_n_tensors(g);
    printf("tensors: %" PRId64 "\n", nt);
    printf("  %-5s %-36s %-6s %-26s %14s %14s\n", "#", "name", "type", "shape", "bytes", "offset");
    uint64_t params = 0, bytes = 0;
    for (int64_t i = 0; i < nt; i++) {
        const fg_gguf_tensor *t = fg_gguf_tensor_at(g, i);
        char shape[96];
        size_t o = 0;
        uint64_t n = 1;
        for (int d = 0; d < t->n_dims; d++) {
            o += (size_t)snprintf(shape + o, sizeof shape - o, d ? " x %" PRId64 : "%" PRId64, t->ne[d]);
            if (o >= sizeof shape)
                o = sizeof shape - 1;
            n *= (uint64_t)t->ne[d];
        }
        params += n;
        bytes += t->n_bytes;
        bool plain = strlen(t->name) <= 120;
        for (const char *c = t->name; *c && plain; c++)
            plain = (unsigned char)*c > 0x20 && (unsigned char)*c < 0x7f;
        printf("  %-5" PRId64 " ", i);
        if (plain)
            printf("%-36s", t->name);
        else
            print_escaped(t->name, strlen(t->name), STR_SHOW);
        printf(" %-6s %-26s %14" PRIu64 " %14" PRIu64 "\n", fg_type_name(t->type), shape,
               t->n_bytes, t->offset);
    }
    printf("parameters: %" PRIu64 " (%.3f M)\n", params, (double)params / 1e6);
    printf("tensor data: %" PRIu64 " bytes (%.2f MiB), %.3f bits per parameter\n", bytes,
           (double)bytes / (1024.0 * 1024.0), params ? (double)bytes * 8.0 / (double)params : 0.0);
}

int fg_cmd_info(int argc, char **argv) {
    const char *path = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            usage(stdout);
            return 0;
        } else if ((!strcmp(argv[i], "-m") || !strcmp(argv[i], "--model")) && i + 1 < argc) {
            path = argv[++i];
        } else if (argv[i][0] != '-' && !path) {
            path = argv[i];
        } else {
            fprintf(stderr, "forge info: unknown or incomplete option '%s'\n", argv[i]);
            usage(stderr);
            return 2;
        }
    }
    if (!path) {
        fprintf(stderr, "forge info: missing -m MODEL\n");
        usage(stderr);
        return 2;
    }
    fg_gguf *g = NULL;
    if (fg_gguf_open(path, &g) != FG_OK)
        return fg_cli_fail("info");
    print_info(g);
    fg_gguf_close(g);
    return 0;
}
