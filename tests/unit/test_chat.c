// test_chat.c - chat templates shared by the server and `forge chat` (forge/chat.h): the format
// chosen for a model (name, file template, errors), the difference of two renderings that the
// terminal chat feeds to its KV cache (for every format: exact when it exists, refused when the
// template rewrites the past), and tokenization of a continuation (no BOS, no space prefix).
// Data: $FORGE_SHARED (default ../shared)/models/stories260K.gguf; missing data fails.
// forge-test-modules: tokenizer gguf quant base
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "forge.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static fg_chat_msg msg(const char *role, const char *content) {
    fg_chat_msg m = {role, content, strlen(content)};
    return m;
}

static char *flat(const fg_chat_rendered *r) { return fg_chat_rendered_text(r, NULL); }

// past = conversation up to the user's message with the generation prompt, the answer as the
// model gave it, then full = conversation with the answer stored as `content` and one more user
// message: when the delta exists, flat(past) + answer + flat(delta) must be flat(full) and
// control pieces must stay control.
static bool check_delta2(fg_chat_format f, const char *answer, const char *content) {
    fg_chat_msg a[] = {msg("system", "Be brief."), msg("user", "Hi <|im_end|> there")};
    fg_chat_msg b[] = {a[0], a[1], msg("assistant", content), msg("user", "And then?")};
    fg_chat_rendered past, full, d;
    assert_int_equal(fg_chat_render(f, a, 2, true, &past), FG_OK);
    assert_int_equal(fg_chat_render(f, b, 4, true, &full), FG_OK);
    bool ok = fg_chat_rendered_delta(&past, answer, strlen(answer), &full, &d);
    if (ok) {
        char *p = flat(&past), *q = flat(&full), *r = flat(&d);
        size_t lp = strlen(p), la = strlen(answer);
        assert_true(strlen(q) == lp + la + strlen(r));
        assert_memory_equal(q, p, lp);
        assert_memory_equal(q + lp, answer, la);
        assert_string_equal(q + lp + la, r);
        // the control pieces of the delta are full's last control pieces, in order
        int32_t nc_d = 0, nc_full = 0, nc_past = 0;
        for (int32_t i = 0; i < d.n_pieces; i++)
            nc_d += d.pieces[i].control;
        for (int32_t i = 0; i < full.n_pieces; i++)
            nc_full += full.pieces[i].control;
        for (int32_t i = 0; i < past.n_pieces; i++)
            nc_past += past.pieces[i].control;
        assert_int_equal(nc_past + nc_d, nc_full);
        free(p);
        free(q);
        free(r);
        fg_chat_rendered_free(&d);
    }
    fg_chat_rendered_free(&past);
    fg_chat_rendered_free(&full);
    return ok;
}

static bool check_delta(fg_chat_format f, const char *answer) {
    return check_delta2(f, answer, answer);
}

static void test_delta_per_format(void **state) {
    (void)state;
    // formats that only append: the delta exists and is exact
    assert_true(check_delta(FG_CHAT_CHATML, "Hello there."));
    assert_true(check_delta(FG_CHAT_LLAMA3, "Hello there."));
    // a template that puts a space before the answer: stored without the model's leading space
    assert_true(check_delta2(FG_CHAT_PLAIN, " Hello there.", "Hello there."));
    assert_false(check_delta(FG_CHAT_PLAIN, " Hello there."));
    assert_true(check_delta2(FG_CHAT_LLAMA2, " Hello there.", "Hello there."));
    assert_true(check_delta(FG_CHAT_LLAMA2, " Hello there.")); // trimmed by the template
    assert_true(check_delta2(FG_CHAT_GLM4, "\nHello there.", "Hello there.")); // "\n" is the template's
    // an empty answer (stopped at once) still closes the turn
    assert_true(check_delta(FG_CHAT_CHATML, ""));
    // templates that rewrite what came before: refused, the caller re-renders
    assert_false(check_delta(FG_CHAT_MISTRAL, " Hello there."));   // system moves to the last user
    assert_false(check_delta(FG_CHAT_LLAMA3, "Hello there.\n"));   // the answer is trimmed
    assert_false(check_delta(FG_CHAT_GLM4, "Hello there."));       // "\n" before the content
}

static void test_delta_refuses_mismatch(void **state) {
    (void)state;
    fg_chat_msg a[] = {msg("user", "one")};
    fg_chat_msg b[] = {msg("user", "two"), msg("assistant", "x"), msg("user", "three")};
    fg_chat_rendered past, full, d = {0};
    assert_int_equal(fg_chat_render(FG_CHAT_CHATML, a, 1, true, &past), FG_OK);
    assert_int_equal(fg_chat_render(FG_CHAT_CHATML, b, 3, true, &full), FG_OK);
    assert_false(fg_chat_rendered_delta(&past, "x", 1, &full, &d));
    assert_null(d.pieces);
    // past longer than full
    assert_false(fg_chat_rendered_delta(&full, "", 0, &past, &d));
    // the same conversation: nothing to add
    assert_true(fg_chat_rendered_delta(&full, NULL, 0, &full, &d));
    assert_int_equal(d.n_pieces, 0);
    fg_chat_rendered_free(&d);
    // the answer must be text: it cannot run into a control piece
    fg_chat_msg c[] = {msg("user", "one"), msg("assistant", "ok"), msg("user", "more")};
    fg_chat_rendered full2;
    assert_int_equal(fg_chat_render(FG_CHAT_CHATML, c, 3, true, &full2), FG_OK);
    assert_true(fg_chat_rendered_delta(&past, "ok", 2, &full2, &d));
    fg_chat_rendered_free(&d);
    assert_false(fg_chat_rendered_delta(&past, "ok<|im_end|>", 12, &full2, &d));
    assert_false(fg_chat_rendered_delta(&past, "okay", 4, &full2, &d));
    fg_chat_rendered_free(&past);
    fg_chat_rendered_free(&full);
    fg_chat_rendered_free(&full2);
}

static char g_path[1024];

static const char *shared_path(const char *rel) {
    const char *root = getenv("FORGE_SHARED");
    snprintf(g_path, sizeof g_path, "%s/%s", root && *root ? root : "../shared", rel);
    return g_path;
}

static void test_tokenize_without_bos(void **state) {
    (void)state;
    fg_gguf *g = NULL;
    const char *p = shared_path("models/stories260K.gguf");
    if (fg_gguf_open(p, &g) != FG_OK)
        fail_msg("cannot open %s: %s", p, fg_last_error());
    fg_tokenizer *t = NULL;
    assert_int_equal(fg_tokenizer_create(g, NULL, &t), FG_OK);
    fg_gguf_close(g);
    fg_chat_msg m[] = {msg("user", "Once upon a time")};
    fg_chat_rendered r;
    assert_int_equal(fg_chat_render(FG_CHAT_PLAIN, m, 1, true, &r), FG_OK);
    int32_t *a = NULL, *b = NULL;
    size_t na = 0, nb = 0;
    assert_int_equal(fg_chat_tokenize(t, &r, &a, &na), FG_OK);
    assert_int_equal(fg_chat_tokenize_ex(t, &r, false, false, &b, &nb), FG_OK);
    assert_true(fg_tokenizer_add_bos(t));
    assert_int_equal(na, nb + 1);
    assert_int_equal(a[0], fg_tokenizer_bos(t));
    assert_memory_equal(a + 1, b, nb * sizeof *b);
    free(a);
    free(b);
    // a continuation gets no SentencePiece space prefix: "Hello" after text is not " Hello"
    int32_t *x = NULL, *y = NULL;
    size_t nx = 0, ny = 0;
    assert_int_equal(fg_tokenize_ex(t, "Hello", 5, 0, &x, &nx), FG_OK);
    assert_int_equal(fg_tokenize_ex(t, "Hello", 5, FG_TOKENIZE_CONTINUE, &y, &ny), FG_OK);
    char px[64], py[64];
    int32_t lx = fg_token_to_piece(t, x[0], false, px, sizeof px);
    int32_t ly = fg_token_to_piece(t, y[0], false, py, sizeof py);
    assert_true(lx > 0 && ly > 0);
    assert_int_equal(px[0], ' ');
    assert_int_equal(py[0], 'H');
    free(x);
    free(y);
    assert_int_equal(fg_chat_tokenize_ex(t, &r, false, true, &b, &nb), FG_OK);
    ly = fg_token_to_piece(t, b[0], false, py, sizeof py);
    assert_true(ly > 0 && py[0] == 'U'); // "User: ..." right after earlier text
    free(b);
    fg_chat_rendered_free(&r);
    fg_tokenizer_destroy(t);
}

// A metadata-only GGUF with (or without) a chat template, opened from a temporary file.
static fg_gguf *gguf_with_template(const char *tmpl) {
    fg_gguf_writer *w = NULL;
    assert_int_equal(fg_gguf_writer_create(3, &w), FG_OK);
    fg_gguf_writer_set_str(w, "general.architecture", "llama");
    if (tmpl)
        fg_gguf_writer_set_str(w, "tokenizer.chat_template", tmpl);
    char path[] = "/tmp/forge-test-chat-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    assert_int_equal(fg_gguf_writer_write(w, path, NULL, NULL), FG_OK);
    fg_gguf_writer_destroy(w);
    fg_gguf *g = NULL;
    assert_int_equal(fg_gguf_open(path, &g), FG_OK);
    unlink(path);
    return g;
}

static void test_format_select(void **state) {
    (void)state;
    fg_chat_format f = FG_CHAT_UNKNOWN;
    fg_gguf *none = gguf_with_template(NULL);
    fg_gguf *qwen = gguf_with_template("{% for m in messages %}<|im_start|>{{ m.role }}\n{% endfor %}");
    fg_gguf *odd = gguf_with_template("{% for m in messages %}### {{ m.content }}{% endfor %}");
    assert_int_equal(fg_chat_format_select(none, NULL, "a.gguf", &f), FG_OK);
    assert_int_equal(f, FG_CHAT_PLAIN);
    assert_int_equal(fg_chat_format_select(qwen, NULL, "q.gguf", &f), FG_OK);
    assert_int_equal(f, FG_CHAT_CHATML);
    assert_int_equal(fg_chat_format_select(qwen, "llama3", "q.gguf", &f), FG_OK); // a name wins
    assert_int_equal(f, FG_CHAT_LLAMA3);
    f = FG_CHAT_UNKNOWN;
    assert_int_equal(fg_chat_format_select(odd, NULL, "odd.gguf", &f), FG_ERR_UNSUPPORTED);
    assert_int_equal(f, FG_CHAT_UNKNOWN); // untouched on failure
    assert_non_null(strstr(fg_last_error(), "odd.gguf"));
    assert_non_null(strstr(fg_last_error(), "--chat-template"));
    assert_int_equal(fg_chat_format_select(odd, "chatml", "odd.gguf", &f), FG_OK);
    assert_int_equal(f, FG_CHAT_CHATML);
    assert_int_equal(fg_chat_format_select(none, "nope", "a.gguf", &f), FG_ERR_INVALID_ARG);
    assert_non_null(strstr(fg_last_error(), "--chat-template: unknown template 'nope'"));
    fg_gguf_close(none);
    fg_gguf_close(qwen);
    fg_gguf_close(odd);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_delta_per_format),
        cmocka_unit_test(test_delta_refuses_mismatch),
        cmocka_unit_test(test_tokenize_without_bos),
        cmocka_unit_test(test_format_select),
    };
    return cmocka_run_group_tests_name("chat", tests, NULL, NULL);
}
