// webui.c - the chat page of `forge serve`: GET / answers one static, self-contained HTML file
// (src/server/webui/index.html: CSS and JS inline, no external requests) built into the binary
// with .incbin, under a strict Content-Security-Policy whose script and style hashes are
// computed from the same file at build time (scripts/webui_csp.py), so only that page's own
// code runs; and
// GET /favicon.ico answers 204. The page needs no key (it is static); the API calls it makes do.
// Not here: any API (the page uses /v1/chat/completions, /v1/models, /v1/requests/{id} with
// their limits). Called by server.c's router unless --no-webui.
#include "server/server_internal.h"

#include "base/util.h"

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

// FG_WEBUI_CSP: the policy for the page, its script and style hashes computed at build time
// (scripts/webui_csp.py, run by the Makefile whenever the page changes)
#include "webui_csp.h"

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
        size_t len = (size_t)(fg_webui_index_html_end - fg_webui_index_html);
        resp = MHD_create_response_from_buffer(len, (void *)fg_webui_index_html,
                                               MHD_RESPMEM_PERSISTENT);
    }
    if (!resp)
        return MHD_NO;
    if (status == 200) {
        MHD_add_response_header(resp, "Content-Type", "text/html; charset=utf-8");
        MHD_add_response_header(resp, "Content-Security-Policy", FG_WEBUI_CSP);
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
