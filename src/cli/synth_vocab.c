// synth_vocab.c - the minimal built-in tokenizer `forge synth` writes when no --vocab-from is
// given: SentencePiece style (tokenizer.ggml.model = "llama"): <unk>, <s>, </s>, the 256
// <0xNN> byte tokens, "▁", single characters, and common English words as "▁word" with all
// their prefixes, scored so that longer pieces merge first and text tokenizes into words.
// Not here: tokenizing (src/tokenizer). Who calls it: cmd_synth.c.
#include "cli/synth_vocab.h"

#include "base/util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SPM_SPACE "\xe2\x96\x81" // U+2581, SentencePiece's word-boundary mark

// llama.cpp token types
enum { TT_NORMAL = 1, TT_UNKNOWN = 2, TT_CONTROL = 3, TT_UNUSED = 5, TT_BYTE = 6 };

static const char *const k_words[] = {
    "the", "and", "to", "a", "was", "he", "she", "it", "of", "in", "you", "her", "his", "they",
    "I", "said", "that", "with", "for", "on", "is", "had", "but", "at", "be", "so", "one", "day",
    "there", "were", "Tim", "Lily", "Once", "upon", "time", "little", "big", "very", "happy",
    "saw", "wanted", "play", "friend", "friends", "mom", "dad", "not", "what", "can", "we",
    "went", "all", "do", "have", "from", "this", "up", "out", "them", "him", "are", "like",
    "go", "could", "would", "when", "then", "an", "by", "as", "me", "my", "your", "our", "their",
    "about", "after", "again", "also", "always", "asked", "away", "back", "ball", "because",
    "bird", "blue", "boy", "came", "car", "cat", "did", "dog", "down", "each", "eat", "every",
    "felt", "find", "first", "found", "fun", "gave", "get", "girl", "good", "got", "green",
    "had", "hand", "help", "here", "home", "house", "how", "into", "just", "know", "laughed",
    "learned", "let", "life", "look", "looked", "love", "loved", "made", "make", "many", "more",
    "name", "named", "new", "next", "nice", "no", "now", "old", "other", "over", "park", "people",
    "put", "ran", "red", "run", "sad", "same", "see", "some", "sun", "take", "thank", "thanks",
    "thing", "things", "think", "thought", "together", "told", "too", "toy", "tree", "two",
    "under", "us", "very", "walk", "want", "water", "way", "well", "went", "what", "where",
    "which", "while", "who", "why", "will", "world", "yes", "yellow", "year", "years", "work",
    "if", "or", "any", "been", "before", "both", "city", "come", "during", "even", "few",
    "great", "has", "high", "its", "last", "long", "man", "most", "much", "must", "never",
    "night", "only", "own", "part", "place", "right", "same", "school", "should", "small",
    "still", "such", "than", "these", "those", "through", "today", "until", "used", "water",
    "woman", "day", "days", "open", "opened", "smiled", "played", "started", "decided",
    "Hello", "The", "He", "She", "They", "It", "One", "But", "And", "What", "Can", "We",
};

static const char k_chars[] =
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?'\"-:;()";

typedef struct vocab {
    char **tok; // owned strings
    float *score;
    int32_t *type;
    int64_t n, cap;
} vocab;

static int64_t find(const vocab *v, const char *s) {
    for (int64_t i = 0; i < v->n; i++)
        if (strcmp(v->tok[i], s) == 0)
            return i;
    return -1;
}

static void append(vocab *v, const char *s, float score, int32_t type) {
    if (v->n == v->cap) {
        v->cap = v->cap ? v->cap * 2 : 1024;
        v->tok = fg_xrealloc(v->tok, (size_t)v->cap * sizeof *v->tok);
        v->score = fg_xrealloc(v->score, (size_t)v->cap * sizeof *v->score);
        v->type = fg_xrealloc(v->type, (size_t)v->cap * sizeof *v->type);
    }
    v->tok[v->n] = fg_xstrdup(s);
    v->score[v->n] = score;
    v->type[v->n] = type;
    v->n++;
}

static void add(vocab *v, const char *s, float score, int32_t type) {
    if (find(v, s) < 0)
        append(v, s, score, type);
}

static void build(vocab *v) {
    add(v, "<unk>", 0.0f, TT_UNKNOWN);
    add(v, "<s>", 0.0f, TT_CONTROL);
    add(v, "</s>", 0.0f, TT_CONTROL);
    for (int b = 0; b < 256; b++) {
        char s[8];
        snprintf(s, sizeof s, "<0x%02X>", b);
        add(v, s, 0.0f, TT_BYTE);
    }
    add(v, SPM_SPACE, -1.0f, TT_NORMAL);
    for (size_t i = 0; k_chars[i]; i++) {
        char s[2] = {k_chars[i], 0};
        add(v, s, -100.0f - (float)i * 0.01f, TT_NORMAL);
    }
    // "▁w", "▁wo", ..., "▁word": longer pieces score higher so whole words win; among equal
    // lengths the more frequent word (earlier in the list) wins.
    size_t nw = FG_ARRAY_LEN(k_words);
    for (size_t w = 0; w < nw; w++) {
        char s[64];
        size_t len = strlen(k_words[w]);
        for (size_t k = 1; k <= len; k++) {
            snprintf(s, sizeof s, SPM_SPACE "%.*s", (int)k, k_words[w]);
            add(v, s, -50.0f + (float)k * 4.0f - (float)w * 0.001f, TT_NORMAL);
        }
    }
}

static void destroy(vocab *v) {
    for (int64_t i = 0; i < v->n; i++)
        free(v->tok[i]);
    free(v->tok);
    free(v->score);
    free(v->type);
}

int64_t fg_synth_vocab_size(void) {
    vocab v = {0};
    build(&v);
    int64_t n = v.n;
    destroy(&v);
    return n;
}

void fg_synth_vocab_write(fg_gguf_writer *w, int64_t n_vocab) {
    vocab v = {0};
    build(&v);
    const int64_t n_real = v.n; // v.n grows as padding is appended
    for (int64_t i = n_real; i < n_vocab; i++) {
        char s[32];
        snprintf(s, sizeof s, "<unused_%lld>", (long long)(i - n_real));
        append(&v, s, -1e4f, TT_UNUSED); // unique by construction
    }
    fg_gguf_writer_set_str(w, "tokenizer.ggml.model", "llama");
    fg_gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)v.tok, NULL,
                               (uint64_t)v.n);
    fg_gguf_writer_set_arr(w, "tokenizer.ggml.scores", FG_GGUF_FLOAT32, v.score, (uint64_t)v.n);
    fg_gguf_writer_set_arr(w, "tokenizer.ggml.token_type", FG_GGUF_INT32, v.type, (uint64_t)v.n);
    fg_gguf_writer_set_u32(w, "tokenizer.ggml.bos_token_id", 1);
    fg_gguf_writer_set_u32(w, "tokenizer.ggml.eos_token_id", 2);
    fg_gguf_writer_set_u32(w, "tokenizer.ggml.unknown_token_id", 0);
    destroy(&v);
}
