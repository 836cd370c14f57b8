// webui.c - the chat page of `forge serve`: GET / answers one static, self-contained HTML file
// (src/server/webui/index.html: CSS and JS inline, no external requests) built into the binary
// with .incbin, under a strict Content-Security-Policy whose script and style hashes are
// computed here from the embedded file (SHA-256, once), so only that page's own code runs; and
// GET /favicon.ico answers 204. The page needs no key (it is static); the API calls it makes do.
// Not here: any API (the page uses /v1/chat/completions, /v1/models, /v1/requests/{id} with
// their limits). Called by server.c's router unless --no-webui.
#include "server/server_internal.h"

#include "base/util.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// The page, embedded at build time. The path is relative to the repository root, where every
// compile runs (the Makefile makes this object depend on the file).
__asm__(".pushsection .rodata\n"
        ".balign 16\n"
        ".globl fg_webui_index_html\n"
        ".hidden fg_webui_index_html\n"
        "fg_webui_index_html:\n"
        ".incbin \"src/server/webui/index.html\"\n"
        ".globl fg_webui_index_html_end\n"
        ".hidden fg_webui_index_html_end\n"
        "fg_webui_index_html_end:\n"
        ".byte 0\n"
        ".popsection\n");
extern const char fg_webui_index_html[];
extern const char fg_webui_index_html_end[];

// ---- SHA-256 (FIPS 180-4), for the CSP hashes of the inline script and style
typedef struct sha256 {
    uint32_t h[8];
    uint8_t buf[64];
    size_t n_buf;
    uint64_t n_bytes;
} sha256;

static const uint32_t k_sha_k[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

static uint32_t rotr(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }

static void sha_block(sha256 *s, const uint8_t *p) {
    uint32_t w[64];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
               (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = s->h[0], b = s->h[1], c = s->h[2], d = s->h[3];
    uint32_t e = s->h[4], f = s->h[5], g = s->h[6], h = s->h[7];
    for (int i = 0; i < 64; i++) {
        uint32_t t1 = h + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) +
                      k_sha_k[i] + w[i];
        uint32_t t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        h = g;
        g = f;
        f = e;
        e = d + t1;
        d = c;
        c = b;
        b = a;
        a = t1 + t2;
    }
    s->h[0] += a;
    s->h[1] += b;
    s->h[2] += c;
    s->h[3] += d;
    s->h[4] += e;
    s->h[5] += f;
    s->h[6] += g;
    s->h[7] += h;
}

static void sha_init(sha256 *s) {
    static const uint32_t h0[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                   0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    memset(s, 0, sizeof *s);
    memcpy(s->h, h0, sizeof h0);
}

static void sha_update(sha256 *s, const void *data, size_t n) {
    const uint8_t *p = data;
    s->n_bytes += n;
    while (n > 0) {
        size_t take = FG_MIN(n, 64 - s->n_buf);
        memcpy(s->buf + s->n_buf, p, take);
        s->n_buf += take;
        p += take;
        n -= take;
        if (s->n_buf == 64) {
            sha_block(s, s->buf);
            s->n_buf = 0;
        }
    }
}

static void sha_final(sha256 *s, uint8_t out[32]) {
    uint64_t bits = s->n_bytes * 8;
    uint8_t pad = 0x80, zero = 0, len[8];
    sha_update(s, &pad, 1);
    while (s->n_buf != 56)
        sha_update(s, &zero, 1);
    for (int i = 0; i < 8; i++)
        len[i] = (uint8_t)(bits >> (56 - 8 * i));
    sha_update(s, len, 8);
    for (int i = 0; i < 8; i++) {
        out[4 * i] = (uint8_t)(s->h[i] >> 24);
        out[4 * i + 1] = (uint8_t)(s->h[i] >> 16);
        out[4 * i + 2] = (uint8_t)(s->h[i] >> 8);
        out[4 * i + 3] = (uint8_t)s->h[i];
    }
}

// Appends " 'sha256-<base64>'" of data[0..n) to out (at least 56 bytes left).
static size_t csp_hash(const char *data, size_t n, char *out) {
    static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    sha256 s;
    uint8_t d[33] = {0};
    sha_init(&s);
    sha_update(&s, data, n);
    sha_final(&s, d);
    size_t k = 0;
    k += (size_t)sprintf(out, " 'sha256-");
    for (int i = 0; i < 33; i += 3) {
        uint32_t v = (uint32_t)d[i] << 16 | (uint32_t)d[i + 1] << 8 | d[i + 2];
        out[k++] = b64[(v >> 18) & 63];
        out[k++] = b64[(v >> 12) & 63];
        out[k++] = i + 1 < 32 ? b64[(v >> 6) & 63] : '=';
        out[k++] = i + 2 < 32 ? b64[v & 63] : '=';
    }
    out[k++] = '\'';
    out[k] = '\0';
    return k;
}

// ---- the policy, built once from the embedded page
#define CSP_MAX_BLOCKS 8
static pthread_once_t g_csp_once = PTHREAD_ONCE_INIT;
static char g_csp[2 * (CSP_MAX_BLOCKS * 64 + 1) + 512]; // both hash lists whole, plus the fixed text

// Hashes of every <tag>...</tag> block (tag without attributes) into out.
static size_t hash_blocks(const char *page, size_t len, const char *tag, char *out, size_t cap) {
    char open[16], close[16];
    snprintf(open, sizeof open, "<%s>", tag);
    snprintf(close, sizeof close, "</%s>", tag);
    size_t k = 0;
    const char *p = page, *end = page + len;
    for (int i = 0; i < CSP_MAX_BLOCKS && k + 64 < cap; i++) {
        const char *a = memmem(p, (size_t)(end - p), open, strlen(open));
        if (!a)
            break;
        a += strlen(open);
        const char *b = memmem(a, (size_t)(end - a), close, strlen(close));
        if (!b)
            break;
        k += csp_hash(a, (size_t)(b - a), out + k);
        p = b + strlen(close);
    }
    return k;
}

static void build_csp(void) {
    const char *page = fg_webui_index_html;
    size_t len = (size_t)(fg_webui_index_html_end - fg_webui_index_html);
    char scripts[CSP_MAX_BLOCKS * 64 + 1] = "", styles[CSP_MAX_BLOCKS * 64 + 1] = "";
    hash_blocks(page, len, "script", scripts, sizeof scripts);
    hash_blocks(page, len, "style", styles, sizeof styles);
    // nothing but the page's own script and style; API calls to this origin only; no frames,
    // forms, plugins or base URL; DOM sinks that parse HTML from strings refused (Trusted Types)
    snprintf(g_csp, sizeof g_csp,
             "default-src 'none'; script-src%s; style-src%s; connect-src 'self'; img-src 'self' "
             "data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'; "
             "require-trusted-types-for 'script'; trusted-types 'none'",
             scripts[0] ? scripts : " 'none'", styles[0] ? styles : " 'none'");
}

enum MHD_Result fg_webui_serve(fg_server *s, struct MHD_Connection *con, srv_conn *c,
                               const char *url) {
    (void)c;
    struct MHD_Response *resp;
    int status;
    if (!strcmp(url, "/favicon.ico")) {
        status = 204;
        resp = MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT);
    } else {
        status = 200;
        pthread_once(&g_csp_once, build_csp);
        size_t len = (size_t)(fg_webui_index_html_end - fg_webui_index_html);
        resp = MHD_create_response_from_buffer(len, (void *)fg_webui_index_html,
                                               MHD_RESPMEM_PERSISTENT);
    }
    if (!resp)
        return MHD_NO;
    if (status == 200) {
        MHD_add_response_header(resp, "Content-Type", "text/html; charset=utf-8");
        MHD_add_response_header(resp, "Content-Security-Policy", g_csp);
        MHD_add_response_header(resp, "Cache-Control", "no-cache");
    }
    MHD_add_response_header(resp, "X-Content-Type-Options", "nosniff");
    MHD_add_response_header(resp, "X-Frame-Options", "DENY");
    MHD_add_response_header(resp, "Referrer-Policy", "no-referrer");
    MHD_add_response_header(resp, "Cross-Origin-Opener-Policy", "same-origin");
    MHD_add_response_header(resp, "Cross-Origin-Resource-Policy", "same-origin");
    fg_srv_count_status(s, status);
    enum MHD_Result ret = MHD_queue_response(con, (unsigned)status, resp);
    MHD_destroy_response(resp);
    return ret;
}
