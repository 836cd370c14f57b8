// test_tokenizer.c - tokenizer pieces: byte<->unicode map, UTF-8 helpers and tables,
// special-token parsing, errors for unknown models/pre-tokenizers, SPM/BPE/WPM details,
// detokenization rules, streaming detokenization across split characters, detokenization
// split by token (the shares behind logprob offsets), the
// stories260K golden prompts, thread safety. The full vocabulary vectors are in
// tests/py/test_vocab.py. Data: $FORGE_SHARED (default ../shared); missing data fails.
// forge-test-modules: tokenizer gguf quant base
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "forge.h"
#include "tokenizer/tok_internal.h"
#include "tokenizer/unicode.h"

#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char g_path[1024];

static const char *shared_path(const char *rel) {
    const char *root = getenv("FORGE_SHARED");
    snprintf(g_path, sizeof g_path, "%s/%s", root && *root ? root : "../shared", rel);
    return g_path;
}

static fg_tokenizer *load_opts(const char *rel, const char *pre) {
    fg_gguf *g = NULL;
    const char *p = shared_path(rel);
    if (fg_gguf_open(p, &g) != FG_OK)
        fail_msg("cannot open %s: %s", p, fg_last_error());
    fg_tokenizer *t = NULL;
    fg_tokenizer_opts o = {.pre_override = pre};
    fg_status st = fg_tokenizer_create(g, &o, &t);
    fg_gguf_close(g);
    if (st != FG_OK)
        fail_msg("tokenizer for %s: %s", rel, fg_last_error());
    return t;
}

static fg_tokenizer *load(const char *rel) { return load_opts(rel, NULL); }

// Tokenizes and compares with the expected ids.
static void expect_ids(const fg_tokenizer *t, const char *text, bool add, bool special,
                       const int32_t *want, size_t n_want) {
    int32_t *ids = NULL;
    size_t n = 0;
    assert_int_equal(fg_tokenize(t, text, strlen(text), add, special, &ids, &n), FG_OK);
    if (n != n_want || (n && memcmp(ids, want, n * sizeof *ids) != 0)) {
        fprintf(stderr, "text '%s': got", text);
        for (size_t i = 0; i < n; i++)
            fprintf(stderr, " %d", ids[i]);
        fprintf(stderr, "\n");
        free(ids);
        fail_msg("token ids differ for '%s'", text);
    }
    free(ids);
}

static bool utf8_valid(const char *s, size_t n) {
    for (size_t i = 0; i < n;) {
        unsigned char c = (unsigned char)s[i];
        size_t l = c < 0x80 ? 1 : c >= 0xc2 && c <= 0xdf ? 2 : c >= 0xe0 && c <= 0xef ? 3 : c >= 0xf0 && c <= 0xf4 ? 4 : 0;
        if (!l || i + l > n)
            return false;
        for (size_t k = 1; k < l; k++)
            if (((unsigned char)s[i + k] & 0xc0) != 0x80)
                return false;
        i += l;
    }
    return true;
}

// --- pure helpers

static void test_byte_unicode_map(void **state) {
    (void)state;
    bool seen[512] = {0};
    for (int b = 0; b < 256; b++) {
        uint32_t cp = fg_byte_to_cp((uint8_t)b);
        assert_true(cp < 512);
        assert_false(seen[cp]);
        seen[cp] = true;
        assert_int_equal(fg_cp_to_byte(cp), b);
    }
    assert_int_equal(fg_byte_to_cp('A'), 'A');
    assert_int_equal(fg_byte_to_cp(' '), 0x120);  // Ġ
    assert_int_equal(fg_byte_to_cp('\n'), 0x10A); // Ċ
    assert_int_equal(fg_byte_to_cp(0x7f), 0x121);
    assert_int_equal(fg_byte_to_cp(0xad), 0x143);
    assert_int_equal(fg_byte_to_cp(0xa1), 0xa1);
    assert_int_equal(fg_cp_to_byte(0x144), -1);
    assert_int_equal(fg_cp_to_byte(0x2581), -1);
}

static void test_utf8_and_tables(void **state) {
    (void)state;
    const uint8_t s[] = {'a', 0xc3, 0xa9, 0xe2, 0x96, 0x81, 0xf0, 0x9f, 0x8e, 0x89, 0x80, 0xe2, 0x96};
    size_t off = 0;
    assert_int_equal(fg_utf8_decode(s, sizeof s, &off), 'a');
    assert_int_equal(fg_utf8_decode(s, sizeof s, &off), 0xe9);
    assert_int_equal(fg_utf8_decode(s, sizeof s, &off), 0x2581);
    assert_int_equal(fg_utf8_decode(s, sizeof s, &off), 0x1f389);
    assert_int_equal(off, 10);
    assert_int_equal(fg_utf8_decode(s, sizeof s, &off), 0xfffd); // stray continuation: 1 byte
    assert_int_equal(off, 11);
    assert_int_equal(fg_utf8_decode(s, sizeof s, &off), 0xfffd); // truncated: 1 byte
    assert_int_equal(off, 12);
    char buf[4];
    assert_int_equal(fg_utf8_encode(0x1f389, buf), 4);
    assert_memory_equal(buf, "\xf0\x9f\x8e\x89", 4);
    assert_int_equal(fg_utf8_encode(0x110000, buf), 3); // -> U+FFFD
    assert_int_equal(fg_uni_tolower('A'), 'a');
    assert_int_equal(fg_uni_tolower(0xc4), 0xe4);
    assert_int_equal(fg_uni_nfd_first(0xe9), 'e');
    assert_int_equal(fg_uni_nfd_first('x'), 'x');
    assert_true(fg_uni_flags(0x3000) & FG_UNI_WHITESPACE);
    assert_true(fg_uni_flags('\n') & FG_UNI_WHITESPACE);
    assert_false(fg_uni_flags(0x1c) & FG_UNI_WHITESPACE);
    assert_true(fg_uni_flags('!') & FG_UNI_PUNCT);
    assert_true(fg_uni_flags('$') & FG_UNI_SYMBOL);
    assert_true(fg_uni_flags(0x301) & FG_UNI_MARK);
    assert_true(fg_uni_flags(0x4e16) & FG_UNI_LETTER);
    assert_true(fg_uni_flags('7') & FG_UNI_NUMBER);
    assert_true(fg_uni_flags(0x200b) & FG_UNI_CONTROL); // Cf
    assert_int_equal(fg_uni_flags(0x110000), 0);
    assert_true(fg_uni_flags(0x301) & FG_UNI_MARK_NONSPACING);   // Mn
    assert_false(fg_uni_flags(0x93e) & FG_UNI_MARK_NONSPACING);  // Mc (Devanagari AA)
    assert_false(fg_uni_flags(0x20dd) & FG_UNI_MARK_NONSPACING); // Me (enclosing circle)
    uint32_t d[FG_UNI_NFD_MAX];
    assert_int_equal(fg_uni_decompose(0xac01, d), 3); // HANGUL GAG -> G A G jamo
    assert_int_equal(d[0], 0x1100);
    assert_int_equal(d[1], 0x1161);
    assert_int_equal(d[2], 0x11a8);
    assert_int_equal(fg_uni_decompose(0xac00, d), 2); // GA: no trailing consonant
    assert_int_equal(fg_uni_decompose(0x1e17, d), 3); // e macron acute -> e + 0304 + 0301
    assert_int_equal(d[0], 'e');
    assert_int_equal(d[1], 0x304);
    assert_int_equal(d[2], 0x301);
    assert_int_equal(fg_uni_decompose(0x1f82, d), 4); // the longest
    assert_int_equal(fg_uni_decompose('x', d), 1);
    assert_int_equal(d[0], 'x');
}

// --- golden prompts and vocabulary basics

static void test_stories260k_golden_prompts(void **state) {
    (void)state;
    json_error_t jerr;
    const char *p = shared_path("golden/stories260K.json");
    json_t *root = json_load_file(p, 0, &jerr);
    if (!root)
        fail_msg("cannot read %s: %s", p, jerr.text);
    fg_tokenizer *t = load("models/stories260K.gguf");
    json_t *cases = json_object_get(root, "cases");
    assert_true(json_array_size(cases) >= 4);
    size_t i;
    json_t *c;
    json_array_foreach(cases, i, c) {
        const char *prompt = json_string_value(json_object_get(c, "prompt"));
        json_t *want = json_object_get(c, "prompt_tokens");
        assert_non_null(prompt);
        bool add = json_is_true(json_object_get(c, "add_bos"));
        int32_t *ids = NULL;
        size_t n = 0;
        assert_int_equal(fg_tokenize(t, prompt, strlen(prompt), add, false, &ids, &n), FG_OK);
        assert_int_equal(n, json_array_size(want));
        for (size_t k = 0; k < n; k++)
            assert_int_equal(ids[k], json_integer_value(json_array_get(want, k)));
        free(ids);
    }
    assert_int_equal(fg_tokenizer_bos(t), 1);
    assert_int_equal(fg_tokenizer_eos(t), 2);
    assert_int_equal(fg_tokenizer_pad(t), -1); // 4294967295 in the file
    assert_int_equal(fg_tokenizer_sep(t), -1);
    assert_true(fg_tokenizer_add_bos(t));
    fg_tokenizer_destroy(t);
    json_decref(root);
}

static void test_special_ids_and_eog(void **state) {
    (void)state;
    fg_tokenizer *t = load("vocab/ggml-vocab-gpt-2.gguf");
    assert_string_equal(fg_tokenizer_model_name(t), "gpt2");
    assert_string_equal(fg_tokenizer_pre_name(t), "gpt-2");
    assert_int_equal(fg_tokenizer_n_vocab(t), 50257);
    assert_int_equal(fg_tokenizer_bos(t), 50256);
    assert_int_equal(fg_tokenizer_eos(t), 50256);
    assert_int_equal(fg_tokenizer_eot(t), 50256); // "<|endoftext|>" found by text
    assert_false(fg_tokenizer_add_bos(t));
    assert_true(fg_tokenizer_is_eog(t, 50256));
    assert_false(fg_tokenizer_is_eog(t, 0));
    assert_false(fg_tokenizer_is_eog(t, -1));
    assert_int_equal(fg_tokenizer_token_kind(t, 50256), FG_TOKEN_CONTROL);
    assert_int_equal(fg_tokenizer_find(t, "\xc4\xa0world", 7), 995);
    assert_string_equal(fg_tokenizer_token_text(t, 995), "\xc4\xa0world");
    fg_tokenizer_destroy(t);

    t = load("vocab/ggml-vocab-llama-spm.gguf");
    assert_true(fg_tokenizer_add_bos(t));
    assert_false(fg_tokenizer_add_eos(t));
    assert_int_equal(fg_tokenizer_unk(t), 0);
    assert_true(fg_tokenizer_is_eog(t, 2));
    assert_int_equal(fg_tokenizer_token_kind(t, 0), FG_TOKEN_UNKNOWN);
    assert_int_equal(fg_tokenizer_token_kind(t, 13), FG_TOKEN_BYTE);
    fg_tokenizer_destroy(t);

    // the FIM pad token found by text joins the EOG set; FIM prefix does not
    t = load("vocab/ggml-vocab-starcoder.gguf");
    int32_t pad = fg_tokenizer_find(t, "<fim_pad>", 9), pre = fg_tokenizer_find(t, "<fim_prefix>", 12);
    assert_int_equal(pad, 4);
    assert_int_equal(pre, 1);
    assert_true(fg_tokenizer_is_eog(t, pad));
    assert_false(fg_tokenizer_is_eog(t, 5)); // <repo_name> is not in llama.cpp's lists
    assert_false(fg_tokenizer_is_eog(t, pre));
    assert_int_equal(fg_tokenizer_token_kind(t, pre), FG_TOKEN_CONTROL);
    assert_true(fg_tokenizer_is_eog(t, 0)); // <|endoftext|>
    fg_tokenizer_destroy(t);

    t = load("vocab/ggml-vocab-bert-bge.gguf");
    assert_int_equal(fg_tokenizer_bos(t), 101);
    assert_int_equal(fg_tokenizer_sep(t), 102);
    assert_int_equal(fg_tokenizer_unk(t), 100);
    const int32_t want[] = {101, 7592, 2088, 999, 102}; // [CLS] hello world ! [SEP]
    expect_ids(t, "Hello World!", true, false, want, 5);
    const int32_t want2[] = {100}; // a word with no piece -> [UNK]
    expect_ids(t, "\xe2\x98\x83", false, false, want2, 1);
    fg_tokenizer_destroy(t);
}

// Writes a copy of the bge WordPiece vocabulary with extra keys set by the caller's function.
static fg_tokenizer *bge_variant(void (*set)(fg_gguf_writer *w)) {
    fg_gguf *src = NULL;
    assert_int_equal(fg_gguf_open(shared_path("vocab/ggml-vocab-bert-bge.gguf"), &src), FG_OK);
    fg_gguf_writer *w = NULL;
    assert_int_equal(fg_gguf_writer_create(3, &w), FG_OK);
    const char *keys[] = {"general.architecture", "tokenizer.ggml.model", "tokenizer.ggml.tokens",
                          "tokenizer.ggml.token_type"};
    for (size_t i = 0; i < 4; i++)
        assert_int_equal(fg_gguf_writer_copy_kv(w, src, keys[i]), FG_OK);
    fg_gguf_close(src);
    set(w);
    char path[64];
    snprintf(path, sizeof path, "/tmp/fg-test-wpm-%d.gguf", (int)getpid());
    assert_int_equal(fg_gguf_writer_write(w, path, NULL, NULL), FG_OK);
    fg_gguf_writer_destroy(w);
    fg_gguf *g = NULL;
    assert_int_equal(fg_gguf_open(path, &g), FG_OK);
    fg_tokenizer *t = NULL;
    assert_int_equal(fg_tokenizer_create(g, NULL, &t), FG_OK);
    fg_gguf_close(g);
    unlink(path);
    return t;
}

static void set_eos_and_sep(fg_gguf_writer *w) { // what llama.cpp's converter may write
    fg_gguf_writer_set_u32(w, "tokenizer.ggml.bos_token_id", 101);
    fg_gguf_writer_set_u32(w, "tokenizer.ggml.eos_token_id", 102);
    fg_gguf_writer_set_u32(w, "tokenizer.ggml.seperator_token_id", 102);
    fg_gguf_writer_set_bool(w, "tokenizer.ggml.add_bos_token", true);
    fg_gguf_writer_set_bool(w, "tokenizer.ggml.add_eos_token", true);
    fg_gguf_writer_set_bool(w, "tokenizer.ggml.add_sep_token", true);
}

static void set_cased(fg_gguf_writer *w) { fg_gguf_writer_set_bool(w, "tokenizer.ggml.normalizer.lowercase", false); }

static void set_nothing(fg_gguf_writer *w) { (void)w; }

// WordPiece as Hugging Face's tokenizers library does it, where llama.cpp differs or did
// (tests/py/test_bert_tokenizer.py compares with the library itself on many strings).
static void test_wpm_hf_rules(void **state) {
    (void)state;
    fg_tokenizer *t = bge_variant(set_nothing);
    // Hangul: full canonical decomposition into jamo (not the first jamo only)
    expect_ids(t, "\xea\xb0\x81 \xea\xb0\x80", false, false, // jamo G ##A ##G | G ##A
               (const int32_t[]){1455, 30006, 30020, 1455, 30006}, 5);
    int32_t *ids = NULL;
    size_t n = 0;
    // accents: precomposed and decomposed forms both lose the mark (Mn) -> "cafe"
    expect_ids(t, "caf\xc3\xa9", false, false, (const int32_t[]){7668}, 1);
    expect_ids(t, "cafe\xcc\x81", false, false, (const int32_t[]){7668}, 1);
    // \v, \f and U+0085 are control characters, removed, not word breaks: "x\vy" is "xy"
    expect_ids(t, "x\vy", false, false, (const int32_t[]){1060, 2100}, 2);
    expect_ids(t, "x\xc2\x85y", false, false, (const int32_t[]){1060, 2100}, 2);
    // U+2581 inside a word is not a word-initial piece: the word has no pieces -> [UNK]
    expect_ids(t, "x\xe2\x96\x81y", false, false, (const int32_t[]){100}, 1);
    // a spacing mark (Mc) stays: x + ##DEVANAGARI AA + ##y
    expect_ids(t, "x\xe0\xa4\xbey", false, false, (const int32_t[]){1060, 29876, 2100}, 3);
    // a word of more than 100 characters is one [UNK]; 100 is still pieced
    char w[128];
    memset(w, 'a', sizeof w);
    assert_int_equal(fg_tokenize(t, w, 100, false, false, &ids, &n), FG_OK);
    assert_true(n > 1 && ids[0] != 100);
    free(ids);
    assert_int_equal(fg_tokenize(t, w, 101, false, false, &ids, &n), FG_OK);
    assert_int_equal(n, 1);
    assert_int_equal(ids[0], 100);
    free(ids);
    // ...counted after normalization: 34 Hangul syllables are 102 jamo
    char hs[34 * 3];
    for (int i = 0; i < 34; i++)
        memcpy(hs + 3 * i, "\xed\x95\x9c", 3);
    assert_int_equal(fg_tokenize(t, hs, sizeof hs, false, false, &ids, &n), FG_OK);
    assert_int_equal(n, 1);
    assert_int_equal(ids[0], 100);
    free(ids);
    fg_tokenizer_destroy(t);

    // add_eos_token and add_sep_token both set, eos = [SEP]: one [SEP] at the end
    t = bge_variant(set_eos_and_sep);
    expect_ids(t, "hello", true, false, (const int32_t[]){101, 7592, 102}, 3);
    fg_tokenizer_destroy(t);

    // tokenizer.ggml.normalizer.lowercase = false (cased): no lowercasing, no accent stripping
    t = bge_variant(set_cased);
    assert_int_equal(fg_tokenize(t, "HELLO", 5, false, false, &ids, &n), FG_OK);
    assert_false(n == 1 && ids[0] == 7592);
    free(ids);
    expect_ids(t, "hello", false, false, (const int32_t[]){7592}, 1);
    fg_tokenizer_destroy(t);
}

static void test_special_parsing(void **state) {
    (void)state;
    fg_tokenizer *t = load("vocab/ggml-vocab-llama-spm.gguf");
    const int32_t on[] = {1, 15043, 2, 29871, 15043}; // <s>Hello</s> Hello
    expect_ids(t, "<s>Hello</s> Hello", false, true, on, 5);
    int32_t *ids = NULL;
    size_t n = 0;
    assert_int_equal(fg_tokenize(t, "<s>Hello</s>", 12, false, false, &ids, &n), FG_OK);
    assert_true(n > 3);
    for (size_t i = 0; i < n; i++)
        assert_true(ids[i] != 1 && ids[i] != 2); // plain text when not parsing specials
    free(ids);
    const int32_t bos_only[] = {1};
    expect_ids(t, "", true, false, bos_only, 1);
    expect_ids(t, "", false, false, NULL, 0);
    fg_tokenizer_destroy(t);

    // user-defined tokens are matched even without parse_special (llama.cpp does this)
    t = load("vocab/ggml-vocab-deepseek-coder.gguf");
    int32_t ud = -1;
    for (int32_t id = 0; id < fg_tokenizer_n_vocab(t) && ud < 0; id++)
        if (fg_tokenizer_token_kind(t, id) == FG_TOKEN_USER_DEFINED)
            ud = id;
    assert_true(ud >= 0);
    char text[256];
    snprintf(text, sizeof text, "x%sy", fg_tokenizer_token_text(t, ud));
    assert_int_equal(fg_tokenize(t, text, strlen(text), false, false, &ids, &n), FG_OK);
    bool found = false;
    for (size_t i = 0; i < n; i++)
        found |= ids[i] == ud;
    free(ids);
    assert_true(found);
    fg_tokenizer_destroy(t);
}

// --- errors: unknown model / pre-tokenizer, missing pre

static char g_tmp[64];

static fg_gguf *tiny_vocab(const char *model, const char *pre) {
    fg_gguf_writer *w = NULL;
    assert_int_equal(fg_gguf_writer_create(3, &w), FG_OK);
    fg_gguf_writer_set_str(w, "general.architecture", "llama");
    fg_gguf_writer_set_str(w, "tokenizer.ggml.model", model);
    if (pre)
        fg_gguf_writer_set_str(w, "tokenizer.ggml.pre", pre);
    const char *toks[] = {"a", "b", "ab", "\xc4\xa0", "<|endoftext|>"};
    fg_gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", toks, NULL, 5);
    const char *merges[] = {"a b", "\xc4\xa0 a"};
    fg_gguf_writer_set_arr_str(w, "tokenizer.ggml.merges", merges, NULL, 2);
    fg_gguf_writer_set_u32(w, "tokenizer.ggml.bos_token_id", 4294967295u);
    fg_gguf_writer_set_u32(w, "tokenizer.ggml.eos_token_id", 4);
    snprintf(g_tmp, sizeof g_tmp, "/tmp/fg-test-tok-%d.gguf", (int)getpid());
    assert_int_equal(fg_gguf_writer_write(w, g_tmp, NULL, NULL), FG_OK);
    fg_gguf_writer_destroy(w);
    fg_gguf *g = NULL;
    assert_int_equal(fg_gguf_open(g_tmp, &g), FG_OK);
    return g;
}

static void test_unknown_model_and_pre(void **state) {
    (void)state;
    fg_tokenizer *t = NULL;
    fg_gguf *g = tiny_vocab("foo", NULL);
    assert_int_equal(fg_tokenizer_create(g, NULL, &t), FG_ERR_UNSUPPORTED);
    assert_non_null(strstr(fg_last_error(), "tokenizer.ggml.model 'foo' is not supported"));
    fg_gguf_close(g);

    g = tiny_vocab("gpt2", "nonsense");
    assert_int_equal(fg_tokenizer_create(g, NULL, &t), FG_ERR_UNSUPPORTED);
    assert_non_null(strstr(fg_last_error(), "tokenizer.ggml.pre 'nonsense' is not a supported pre-tokenizer"));
    assert_non_null(strstr(fg_last_error(), g_tmp)); // names the file
    fg_tokenizer_opts o = {.pre_override = "gpt-2"};  // the override wins
    assert_int_equal(fg_tokenizer_create(g, &o, &t), FG_OK);
    assert_string_equal(fg_tokenizer_pre_name(t), "gpt-2");
    fg_tokenizer_destroy(t);
    o.pre_override = "bogus";
    assert_int_equal(fg_tokenizer_create(g, &o, &t), FG_ERR_UNSUPPORTED);
    assert_non_null(strstr(fg_last_error(), "'bogus'"));
    fg_gguf_close(g);

    g = tiny_vocab("llama", NULL); // SentencePiece has no pre-tokenizers: an override is an error
    o.pre_override = "gpt-2";
    assert_int_equal(fg_tokenizer_create(g, &o, &t), FG_ERR_INVALID_ARG);
    assert_non_null(strstr(fg_last_error(), "pre-tokenizer 'gpt-2' asked for, but the 'llama' "
                                            "tokenizer has no pre-tokenizers"));
    fg_gguf_close(g);

    g = tiny_vocab("gpt2", NULL); // missing pre -> default
    assert_int_equal(fg_tokenizer_create(g, NULL, &t), FG_OK);
    assert_string_equal(fg_tokenizer_pre_name(t), "default");
    assert_int_equal(fg_tokenizer_bos(t), -1); // 4294967295: none
    assert_int_equal(fg_tokenizer_eos(t), 4);
    assert_true(fg_tokenizer_is_eog(t, 4));
    const int32_t want[] = {2, 3, 2}; // "ab" merged; " ab" -> Ġ + ab (rank 0 before rank 1)
    expect_ids(t, "ab ab", false, false, want, 3);
    fg_tokenizer_destroy(t);
    fg_gguf_close(g);
    unlink(g_tmp);
}

static void test_phi3_rstrip(void **state) {
    (void)state;
    // llama.cpp: in a model named like Phi-3, special tokens but <s>/<unk>/<|endoftext|>
    // eat the white space after them during special-token partitioning
    fg_gguf *src = NULL;
    assert_int_equal(fg_gguf_open(shared_path("vocab/ggml-vocab-llama-spm.gguf"), &src), FG_OK);
    fg_gguf_writer *w = NULL;
    assert_int_equal(fg_gguf_writer_create(3, &w), FG_OK);
    const char *keys[] = {"tokenizer.ggml.model", "tokenizer.ggml.tokens", "tokenizer.ggml.scores",
                          "tokenizer.ggml.token_type"};
    for (size_t i = 0; i < 4; i++)
        assert_int_equal(fg_gguf_writer_copy_kv(w, src, keys[i]), FG_OK);
    fg_gguf_close(src);
    fg_gguf_writer_set_str(w, "general.name", "Phi-3-mini-4k-instruct");
    snprintf(g_tmp, sizeof g_tmp, "/tmp/fg-test-phi3-%d.gguf", (int)getpid());
    assert_int_equal(fg_gguf_writer_write(w, g_tmp, NULL, NULL), FG_OK);
    fg_gguf_writer_destroy(w);
    fg_gguf *g = NULL;
    assert_int_equal(fg_gguf_open(g_tmp, &g), FG_OK);
    fg_tokenizer *phi = NULL;
    assert_int_equal(fg_tokenizer_create(g, NULL, &phi), FG_OK);
    fg_gguf_close(g);
    unlink(g_tmp);
    fg_tokenizer *plain = load("vocab/ggml-vocab-llama-spm.gguf");
    int32_t *a = NULL, *b = NULL, *c = NULL;
    size_t na = 0, nb = 0, nc = 0;
    const char *spaced = "Hi</s> \n there", *tight = "Hi</s>there";
    assert_int_equal(fg_tokenize(phi, spaced, strlen(spaced), false, true, &a, &na), FG_OK);
    assert_int_equal(fg_tokenize(phi, tight, strlen(tight), false, true, &b, &nb), FG_OK);
    assert_int_equal(fg_tokenize(plain, spaced, strlen(spaced), false, true, &c, &nc), FG_OK);
    assert_int_equal(na, nb);
    assert_memory_equal(a, b, na * sizeof *a);
    assert_true(nc > na); // without the attribute the spaces stay
    free(a);
    free(b);
    free(c);
    fg_tokenizer_destroy(plain);
    fg_tokenizer_destroy(phi);
}

// --- detokenization

static void test_token_to_piece(void **state) {
    (void)state;
    fg_tokenizer *t = load("vocab/ggml-vocab-gpt-2.gguf");
    char buf[64];
    assert_int_equal(fg_token_to_piece(t, 995, false, buf, sizeof buf), 6);
    assert_memory_equal(buf, " world", 6);
    assert_int_equal(fg_token_to_piece(t, 50256, false, buf, sizeof buf), 0);
    assert_int_equal(fg_token_to_piece(t, 50256, true, buf, sizeof buf), 13);
    assert_memory_equal(buf, "<|endoftext|>", 13);
    assert_int_equal(fg_token_to_piece(t, 995, false, buf, 2), 6); // snprintf-like
    assert_int_equal(fg_token_to_piece(t, 50257, false, buf, sizeof buf), -1);
    assert_int_equal(fg_token_to_piece(t, -1, false, buf, sizeof buf), -1);
    fg_tokenizer_destroy(t);

    t = load("vocab/ggml-vocab-llama-spm.gguf");
    assert_int_equal(fg_token_to_piece(t, 13, false, buf, sizeof buf), 1); // <0x0A>
    assert_int_equal(buf[0], '\n');
    assert_int_equal(fg_token_to_piece(t, 15043, false, buf, sizeof buf), 6); // ▁Hello
    assert_memory_equal(buf, " Hello", 6);
    assert_int_equal(fg_token_to_piece(t, 1, false, buf, sizeof buf), 0);
    assert_int_equal(fg_token_to_piece(t, 1, true, buf, sizeof buf), 3);
    assert_int_equal(fg_token_to_piece(t, 0, false, buf, sizeof buf), 0); // <unk>
    fg_tokenizer_destroy(t);
}

static void test_detokenize_rules(void **state) {
    (void)state;
    fg_tokenizer *t = load("vocab/ggml-vocab-llama-spm.gguf");
    const char *texts[] = {" Hello", "Hello world", "  two spaces", "\nnewline", "é🎉x"};
    for (size_t k = 0; k < 5; k++) {
        int32_t *ids = NULL;
        size_t n = 0;
        char *s = NULL;
        size_t len = 0;
        assert_int_equal(fg_tokenize(t, texts[k], strlen(texts[k]), false, false, &ids, &n), FG_OK);
        assert_int_equal(fg_detokenize(t, ids, n, false, &s, &len), FG_OK);
        assert_string_equal(s, texts[k]); // the SentencePiece space prefix is removed
        assert_int_equal(len, strlen(texts[k]));
        free(s);
        assert_int_equal(fg_detokenize_ex(t, ids, n, FG_DETOK_KEEP_SPACE, &s, &len), FG_OK);
        assert_int_equal(s[0], ' ');
        free(s);
        free(ids);
    }
    const int32_t with_bos[] = {1, 15043};
    char *s = NULL;
    size_t len = 0;
    assert_int_equal(fg_detokenize(t, with_bos, 2, false, &s, &len), FG_OK);
    assert_string_equal(s, " Hello"); // llama.cpp: the BOS piece used up the strip
    free(s);
    assert_int_equal(fg_detokenize(t, with_bos, 2, true, &s, &len), FG_OK);
    assert_string_equal(s, "<s> Hello");
    free(s);
    const int32_t bad[] = {15043, 32000};
    assert_int_equal(fg_detokenize(t, bad, 2, false, &s, &len), FG_ERR_INVALID_ARG);
    assert_non_null(strstr(fg_last_error(), "32000"));
    fg_tokenizer_destroy(t);

    // byte-level BPE with clean_up_tokenization_spaces (gpt-2)
    t = load("vocab/ggml-vocab-gpt-2.gguf");
    const char *txt = "Hello , world ? It 's ok .";
    int32_t *ids = NULL;
    size_t n = 0;
    assert_int_equal(fg_tokenize(t, txt, strlen(txt), false, false, &ids, &n), FG_OK);
    assert_int_equal(fg_detokenize(t, ids, n, false, &s, &len), FG_OK);
    assert_string_equal(s, "Hello, world? It's ok.");
    free(s);
    assert_int_equal(fg_detokenize_ex(t, ids, n, FG_DETOK_NO_CLEAN, &s, &len), FG_OK);
    assert_string_equal(s, txt);
    free(s);
    free(ids);
    fg_tokenizer_destroy(t);
}

static void test_stream_detok_split_utf8(void **state) {
    (void)state;
    fg_tokenizer *t = load("vocab/ggml-vocab-llama-spm.gguf");
    // 🎉 is not in the vocabulary: four byte tokens <0xF0> <0x9F> <0x8E> <0x89>
    const int32_t party[] = {243, 162, 145, 140};
    fg_detok_stream st;
    fg_detok_stream_init(&st);
    char out[64];
    for (int i = 0; i < 3; i++)
        assert_int_equal(fg_detok_stream_push(t, &st, party[i], false, out, sizeof out), 0);
    assert_int_equal(fg_detok_stream_push(t, &st, party[3], false, out, sizeof out), 4);
    assert_memory_equal(out, "\xf0\x9f\x8e\x89", 4);
    assert_int_equal(fg_detok_stream_flush(&st, out, sizeof out), 0);
    // a broken sequence: <0xF0> then "▁Hello" -> U+FFFD then " Hello"
    assert_int_equal(fg_detok_stream_push(t, &st, 243, false, out, sizeof out), 0);
    assert_int_equal(fg_detok_stream_push(t, &st, 15043, false, out, sizeof out), 9);
    assert_memory_equal(out, "\xef\xbf\xbd Hello", 9);
    // pending bytes at the end come out as U+FFFD
    assert_int_equal(fg_detok_stream_push(t, &st, 243, false, out, sizeof out), 0);
    assert_int_equal(fg_detok_stream_flush(&st, out, sizeof out), 3);
    assert_memory_equal(out, "\xef\xbf\xbd", 3);
    assert_int_equal(fg_detok_stream_push(t, &st, 15043, false, out, 4), -1); // cap too small
    fg_tokenizer_destroy(t);

    // byte-level BPE: tokens of CJK/emoji text hold partial characters; every chunk the
    // stream emits is valid UTF-8 and the chunks concatenate to the text
    t = load("vocab/ggml-vocab-gpt-2.gguf");
    const char *txt = "h\xc3\xa9llo \xe4\xb8\x96\xe7\x95\x8c\xf0\x9f\x8e\x89! \xe1\x84\x80";
    int32_t *ids = NULL;
    size_t n = 0;
    assert_int_equal(fg_tokenize(t, txt, strlen(txt), false, false, &ids, &n), FG_OK);
    char acc[256];
    size_t m = 0;
    int held = 0;
    fg_detok_stream_init(&st);
    for (size_t i = 0; i < n; i++) {
        int32_t k = fg_detok_stream_push(t, &st, ids[i], false, out, sizeof out);
        assert_true(k >= 0);
        held += k == 0;
        assert_true(utf8_valid(out, (size_t)k));
        memcpy(acc + m, out, (size_t)k);
        m += (size_t)k;
    }
    assert_true(held > 0); // some token did end inside a character
    assert_int_equal(fg_detok_stream_flush(&st, out, sizeof out), 0);
    assert_int_equal(m, strlen(txt));
    assert_memory_equal(acc, txt, m);
    free(ids);
    fg_tokenizer_destroy(t);
}

// --- algorithms

static void test_spm_segments_equal_whole(void **state) {
    (void)state;
    fg_tokenizer *t = load("vocab/ggml-vocab-llama-spm.gguf");
    assert_true(t->spm_split_ok);
    FILE *f = fopen(shared_path("text/stories-a.txt"), "rb");
    assert_non_null(f);
    static char text[20000];
    size_t len = fread(text, 1, sizeof text - 64, f);
    fclose(f);
    const char *odd = "  double  spaces\t\xe2\x96\x81tab"; // odd spacing too
    memcpy(text + len, odd, strlen(odd));
    len += strlen(odd);
    int32_t *a = NULL, *b = NULL;
    size_t na = 0, nb = 0;
    assert_int_equal(fg_tokenize(t, text, len, true, false, &a, &na), FG_OK);
    t->spm_split_ok = false; // the reference: one merge queue over the whole text
    assert_int_equal(fg_tokenize(t, text, len, true, false, &b, &nb), FG_OK);
    assert_int_equal(na, nb);
    assert_memory_equal(a, b, na * sizeof *a);
    free(a);
    free(b);
    fg_tokenizer_destroy(t);
}

static void expect_split(const fg_tokenizer *t, const char *text, const char *const *want, size_t n_want) {
    size_t *sp = NULL, n = 0;
    assert_int_equal(fg_tokenizer_pre_split(t, text, strlen(text), &sp, &n), FG_OK);
    bool ok = n == n_want;
    for (size_t i = 0; ok && i < n; i++)
        ok = sp[2 * i + 1] == strlen(want[i]) && memcmp(text + sp[2 * i], want[i], sp[2 * i + 1]) == 0;
    if (!ok) {
        for (size_t i = 0; i < n; i++)
            fprintf(stderr, "[%.*s] ", (int)sp[2 * i + 1], text + sp[2 * i]);
        fprintf(stderr, "\n");
    }
    free(sp);
    assert_true(ok);
}

static void test_pre_split_llama3_qwen2(void **state) {
    (void)state;
    fg_tokenizer *t = load_opts("vocab/ggml-vocab-gpt-2.gguf", "llama-bpe");
    assert_string_equal(fg_tokenizer_pre_name(t), "llama-bpe");
    assert_true(fg_tokenizer_add_bos(t)); // llama3 pre-tokenizers add BOS by default
    const char *w1[] = {"Hello", " world", "'S", " ", "123", "45", " \"", "quote", "\"\n", " ", " tabs", "\tx", "  "};
    expect_split(t, "Hello world'S 12345 \"quote\"\n  tabs\tx  ", w1, 13);
    // U+3000 is the optional non-letter prefix of the letters; the emoji takes its newlines
    const char *w2[] = {"a", "\xe3\x80\x80\xe4\xb8\x96\xe7\x95\x8c", " \xf0\x9f\x8e\x89\n\n", "x"};
    expect_split(t, "a\xe3\x80\x80\xe4\xb8\x96\xe7\x95\x8c \xf0\x9f\x8e\x89\n\nx", w2, 4);
    fg_tokenizer_destroy(t);

    t = load_opts("vocab/ggml-vocab-gpt-2.gguf", "qwen2");
    const char *w3[] = {"I", "'VE", " ", "1", "2", "3", "4", " ok", "!!", "   ", " x"};
    expect_split(t, "I'VE 1234 ok!!    x", w3, 11);
    size_t *sp = NULL, n = 0;
    assert_int_equal(fg_tokenizer_pre_split(t, "\xff", 1, &sp, &n), FG_ERR_INVALID_ARG);
    fg_tokenizer_destroy(t);

    t = load("vocab/ggml-vocab-llama-spm.gguf");
    assert_int_equal(fg_tokenizer_pre_split(t, "x", 1, &sp, &n), FG_ERR_INVALID_ARG);
    fg_tokenizer_destroy(t);
}

static void test_bpe_invalid_utf8_as_llama(void **state) {
    (void)state;
    // llama.cpp turns invalid bytes into U+FFFD before byte-level BPE
    fg_tokenizer *t = load("vocab/ggml-vocab-gpt-2.gguf");
    int32_t *a = NULL, *b = NULL;
    size_t na = 0, nb = 0;
    assert_int_equal(fg_tokenize(t, "a\xff" "b", 3, false, false, &a, &na), FG_OK);
    assert_int_equal(fg_tokenize(t, "a\xef\xbf\xbd" "b", 5, false, false, &b, &nb), FG_OK);
    assert_int_equal(na, nb);
    assert_memory_equal(a, b, na * sizeof *a);
    free(a);
    free(b);
    fg_tokenizer_destroy(t);
}

// --- threads

typedef struct job {
    const fg_tokenizer *t;
    const char *text;
    size_t len;
    int32_t *ids;
    size_t n;
    fg_status st;
} job;

static void *run_job(void *arg) {
    job *j = arg;
    for (int r = 0; r < 3; r++) {
        free(j->ids);
        j->ids = NULL;
        j->st = fg_tokenize(j->t, j->text, j->len, true, false, &j->ids, &j->n);
    }
    return NULL;
}

static void test_concurrent_tokenize(void **state) {
    (void)state;
    fg_tokenizer *t = load("vocab/ggml-vocab-gpt-2.gguf");
    FILE *f = fopen(shared_path("text/stories-a.txt"), "rb");
    assert_non_null(f);
    static char text[16384];
    size_t len = fread(text, 1, sizeof text, f);
    fclose(f);
    int32_t *ref = NULL;
    size_t nref = 0;
    assert_int_equal(fg_tokenize(t, text, len, true, false, &ref, &nref), FG_OK);
    pthread_t th[4];
    job jobs[4];
    for (int i = 0; i < 4; i++) {
        jobs[i] = (job){.t = t, .text = text, .len = len};
        assert_int_equal(pthread_create(&th[i], NULL, run_job, &jobs[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(jobs[i].st, FG_OK);
        assert_int_equal(jobs[i].n, nref);
        assert_memory_equal(jobs[i].ids, ref, nref * sizeof *ref);
        free(jobs[i].ids);
    }
    free(ref);
    fg_tokenizer_destroy(t);
}

// fg_detokenize_split: token i's share is text[offs[i]..offs[i+1]); the shares join to the text;
// the SentencePiece space added in front of a tokenized text is dropped after a BOS (so the
// text comes back as given); a character split over byte tokens belongs to the token that
// completes it; bytes that never complete one end as U+FFFD on the last token.
static void test_detokenize_split(void **state) {
    (void)state;
    fg_tokenizer *t = load("models/stories260K.gguf");
    const char *prompt = "Once upon a time";
    int32_t *ids = NULL;
    size_t n = 0;
    assert_int_equal(fg_tokenize(t, prompt, strlen(prompt), true, false, &ids, &n), FG_OK);
    size_t offs[32];
    char *text = NULL;
    size_t len = 0;
    assert_true(n + 1 <= 32);
    assert_int_equal(fg_detokenize_split(t, ids, n, false, true, &text, &len, offs), FG_OK);
    assert_string_equal(text, prompt);
    assert_int_equal(offs[0], 0);
    assert_int_equal(offs[1], 0); // the BOS renders nothing
    assert_int_equal(offs[2], 4); // "Once", its added space dropped
    assert_int_equal(offs[n], len);
    free(text);
    // without strip_space: fg_detokenize's KEEP_SPACE text
    assert_int_equal(fg_detokenize_split(t, ids, n, false, false, &text, &len, offs), FG_OK);
    assert_string_equal(text, " Once upon a time");
    free(text);
    free(ids);
    // <0xE2> <0x82> <0xAC> is one character (the euro sign), shared by its last byte token
    int32_t euro[4] = {1, 229, 133, 175};
    assert_int_equal(fg_detokenize_split(t, euro, 4, false, true, &text, &len, offs), FG_OK);
    assert_string_equal(text, "\xe2\x82\xac");
    assert_int_equal(offs[1], 0);
    assert_int_equal(offs[2], 0);
    assert_int_equal(offs[3], 0);
    assert_int_equal(offs[4], 3);
    free(text);
    // cut short: one U+FFFD at the end, on the last token
    assert_int_equal(fg_detokenize_split(t, euro, 3, false, true, &text, &len, offs), FG_OK);
    assert_string_equal(text, "\xef\xbf\xbd");
    assert_int_equal(offs[2], 0);
    assert_int_equal(offs[3], 3);
    free(text);
    int32_t bad[2] = {1, 100000};
    assert_int_equal(fg_detokenize_split(t, bad, 2, false, true, &text, &len, offs),
                     FG_ERR_INVALID_ARG);
    assert_string_equal(fg_last_error(), "detokenize: token id 100000 out of range [0, 512)");
    fg_tokenizer_destroy(t);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_byte_unicode_map),
        cmocka_unit_test(test_utf8_and_tables),
        cmocka_unit_test(test_stories260k_golden_prompts),
        cmocka_unit_test(test_special_ids_and_eog),
        cmocka_unit_test(test_special_parsing),
        cmocka_unit_test(test_wpm_hf_rules),
        cmocka_unit_test(test_unknown_model_and_pre),
        cmocka_unit_test(test_phi3_rstrip),
        cmocka_unit_test(test_token_to_piece),
        cmocka_unit_test(test_detokenize_rules),
        cmocka_unit_test(test_stream_detok_split_utf8),
        cmocka_unit_test(test_detokenize_split),
        cmocka_unit_test(test_spm_segments_equal_whole),
        cmocka_unit_test(test_pre_split_llama3_qwen2),
        cmocka_unit_test(test_bpe_invalid_utf8_as_llama),
        cmocka_unit_test(test_concurrent_tokenize),
    };
    return cmocka_run_group_tests_name("tokenizer", tests, NULL, NULL);
}
