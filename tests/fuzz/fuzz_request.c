// fuzz_request.c - libFuzzer target over the server's request path without network or engine:
// JSON body -> fg_api_request (validation, limits) -> fg_request_params, and for chat bodies the
// rendering in every template format plus tokenization with stories260K's tokenizer (checking
// that message text never turns into control tokens). First input byte: bit 0 chat/completion,
// bit 1 whether "model" must match. Also: any bytes -> fg_srv_json_text (invalid UTF-8 becomes
// U+FFFD, never a lost string) and -> fg_http_head_check (the connection gate's request-head
// check). Built by `make fuzz`; seeds in tests/fuzz/corpus/request/.
#include "forge/server.h"
#include "server/server_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static fg_tokenizer *g_tok;

#define CHECK(c)                                                                   \
    do {                                                                           \
        if (!(c)) {                                                                \
            fprintf(stderr, "fuzz_request: check failed at line %d: %s\n", __LINE__, #c); \
            abort();                                                               \
        }                                                                          \
    } while (0)

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    const char *shared = getenv("FORGE_SHARED");
    char path[4096];
    snprintf(path, sizeof path, "%s/models/stories260K.gguf", shared ? shared : "../shared");
    fg_gguf *g = NULL;
    if (fg_gguf_open(path, &g) != FG_OK || fg_tokenizer_create(g, NULL, &g_tok) != FG_OK) {
        fprintf(stderr, "fuzz_request: cannot load the tokenizer of %s (set FORGE_SHARED): %s\n",
                path, fg_last_error());
        abort();
    }
    fg_gguf_close(g);
    return 0;
}

static const char *const k_control[] = {
    "<|im_start|>", "<|im_end|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
    "[INST]", "[/INST]", "</s>", "<s>", "[gMASK]", "<sop>", "<|system|>", "<|user|>",
    "<|assistant|>",
};

static void check_chat(const fg_api_request *r) {
    for (int f = FG_CHAT_PLAIN; f <= FG_CHAT_GLM4; f++) {
        fg_chat_rendered cr;
        if (fg_chat_render((fg_chat_format)f, r->messages, r->n_messages, r->add_generation_prompt,
                           &cr) != FG_OK)
            continue;
        for (int32_t i = 0; i < cr.n_pieces; i++) {
            CHECK(cr.pieces[i].text && strlen(cr.pieces[i].text) == cr.pieces[i].len);
            if (!cr.pieces[i].control)
                continue;
            bool known = false; // control pieces come from the template, never from content
            for (size_t k = 0; k < sizeof k_control / sizeof k_control[0]; k++)
                known = known || !strcmp(cr.pieces[i].text, k_control[k]);
            CHECK(known);
        }
        size_t len = 0;
        free(fg_chat_rendered_text(&cr, &len));
        int32_t *ids = NULL;
        size_t n = 0;
        if (fg_chat_tokenize(g_tok, &cr, &ids, &n) == FG_OK) {
            // stories260K: <s> and </s> of the templates are the only control ids; the plain
            // format has none, so only the leading BOS may be a control token there
            if (f == FG_CHAT_PLAIN)
                for (size_t i = 1; i < n; i++)
                    CHECK(fg_tokenizer_token_kind(g_tok, ids[i]) != FG_TOKEN_CONTROL);
            free(ids);
        }
        fg_chat_rendered_free(&cr);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1)
        return 0;
    uint8_t sel = data[0];
    const char *json = (const char *)data + 1;
    size_t len = size - 1;
    fg_api_kind kind = (sel & 1) ? FG_API_CHAT : FG_API_COMPLETION;
    fg_api_limits lim = {.model_id = (sel & 2) ? "stories260K" : NULL, .n_ctx = 2048,
                         .n_vocab = 512, .max_n = 4, .max_messages = 64};
    (void)fg_json_nesting_depth(json, len);
    json_t *js = fg_srv_json_text(json, len); // generated/echoed text of any bytes: a string
    CHECK(js && json_is_string(js) && json_string_length(js) >= len);
    json_decref(js);
    fg_http_head_verdict hv; // the bytes as the start of a connection (the gate's check)
    int hrc = fg_http_head_check(json, len, 512, &hv);
    CHECK(hrc >= -1 && hrc <= 1);
    if (hrc == 1)
        CHECK(hv.head_len > 0 && hv.head_len <= len && hv.head_len <= 512 && hv.status == 0);
    if (hrc == -1)
        CHECK(hv.message[0] && (hv.status == 400 || hv.status == 413 || hv.status == 431 ||
                                hv.status == 501 || hv.status == 505));
    fg_chat_format df = fg_chat_format_detect(json, len); // the bytes as a template text
    CHECK(df >= FG_CHAT_UNKNOWN && df <= FG_CHAT_GLM4);
    fg_api_request r;
    fg_api_error err;
    fg_status st = fg_server_parse_request(kind, json, len, &lim, &r, &err);
    if (st != FG_OK) {
        CHECK(err.http_status == 400 || err.http_status == 404 || err.http_status == 500);
        CHECK(err.message[0] != '\0' && err.type != NULL);
        return 0;
    }
    CHECK(r.n >= 1 && r.n <= 4);
    CHECK(r.max_tokens >= -1 && r.max_tokens <= 2048);
    CHECK(r.n_stop >= 0 && r.n_stop <= FG_MAX_STOP);
    CHECK(r.logprobs >= -1 && r.logprobs <= FG_MAX_TOP_LOGPROBS);
    if (kind == FG_API_COMPLETION) {
        CHECK(r.prompt_is_ids ? (r.n_prompt_ids > 0 && r.prompt_ids != NULL) : r.prompt_text != NULL);
        for (int32_t i = 0; r.prompt_is_ids && i < r.n_prompt_ids; i++)
            CHECK(r.prompt_ids[i] >= 0 && r.prompt_ids[i] < 512);
        if (!r.prompt_is_ids) {
            int32_t *ids = NULL;
            size_t n = 0;
            if (fg_tokenize(g_tok, r.prompt_text, r.prompt_len, true, false, &ids, &n) == FG_OK) {
                for (size_t i = 1; i < n; i++) // user text: never a control token after the BOS
                    CHECK(fg_tokenizer_token_kind(g_tok, ids[i]) != FG_TOKEN_CONTROL);
                free(ids);
            }
        }
    } else {
        CHECK(r.n_messages >= 1 && r.messages != NULL);
        check_chat(&r);
    }
    int32_t prompt[1] = {1};
    fg_request_params p;
    fg_api_request_to_params(&r, prompt, 1, r.n - 1, &p);
    CHECK(p.n_stop == r.n_stop && p.n_prompt == 1);
    fg_api_request_free(&r);
    return 0;
}
