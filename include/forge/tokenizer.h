// forge/tokenizer.h - tokenizers built from a GGUF file's own vocabulary:
// SentencePiece-style (`llama`), byte-level BPE (`gpt2`, pre-tokenizer from `tokenizer.ggml.pre`,
// PCRE2) and WordPiece (`bert`). Tokenization matches llama.cpp exactly.
// Thread safety: a created tokenizer is immutable; all calls may run concurrently.
#ifndef FORGE_TOKENIZER_H
#define FORGE_TOKENIZER_H

// Declared before the includes: forge.h includes the module headers that use it.
typedef struct fg_tokenizer fg_tokenizer;

#include "forge/status.h"
#include "forge/gguf.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct fg_tokenizer_opts {
    const char *pre_override; // use this pre-tokenizer instead of tokenizer.ggml.pre (NULL: the
                              // file's); FG_ERR_INVALID_ARG for llama/bert vocabularies, which
                              // have none
} fg_tokenizer_opts;

// Token attributes (from tokenizer.ggml.token_type).
typedef enum fg_token_kind {
    FG_TOKEN_NORMAL = 1,
    FG_TOKEN_UNKNOWN = 2,
    FG_TOKEN_CONTROL = 3,
    FG_TOKEN_USER_DEFINED = 4,
    FG_TOKEN_UNUSED = 5,
    FG_TOKEN_BYTE = 6,
} fg_token_kind;

// Builds the tokenizer from the file's tokenizer.* metadata. The tokenizer copies what it
// needs: the fg_gguf may be closed afterwards. opts may be NULL.
// Errors: FG_ERR_UNSUPPORTED for an unknown tokenizer model or pre-tokenizer (naming it),
// FG_ERR_FORMAT for inconsistent vocabulary data (naming the key).
fg_status fg_tokenizer_create(const fg_gguf *g, const fg_tokenizer_opts *opts, fg_tokenizer **out);
void fg_tokenizer_destroy(fg_tokenizer *t);

int32_t fg_tokenizer_n_vocab(const fg_tokenizer *t);
const char *fg_tokenizer_model_name(const fg_tokenizer *t); // "llama", "gpt2", "bert"
const char *fg_tokenizer_pre_name(const fg_tokenizer *t);   // "default", "llama-bpe", ...
int32_t fg_tokenizer_bos(const fg_tokenizer *t);  // -1 when the model has none
int32_t fg_tokenizer_eos(const fg_tokenizer *t);
int32_t fg_tokenizer_eot(const fg_tokenizer *t);
int32_t fg_tokenizer_pad(const fg_tokenizer *t);
int32_t fg_tokenizer_unk(const fg_tokenizer *t);
int32_t fg_tokenizer_sep(const fg_tokenizer *t);
bool fg_tokenizer_add_bos(const fg_tokenizer *t); // the model's add-BOS rule
bool fg_tokenizer_add_eos(const fg_tokenizer *t);
// End of generation: EOS, EOT, EOM and, as llama.cpp builds the set, tokens named like
// <|eot_id|>, <|im_end|>, <|end|>, <end_of_turn>, <|endoftext|>, <|eom_id|>, ... and the
// FIM pad/repo/file-separator tokens. Ids outside the vocabulary: false.
bool fg_tokenizer_is_eog(const fg_tokenizer *t, int32_t id);
// Kind of a token; tokens llama.cpp treats as control by their text (EOT/EOG/FIM markers)
// report FG_TOKEN_CONTROL. Ids outside the vocabulary: FG_TOKEN_UNUSED.
fg_token_kind fg_tokenizer_token_kind(const fg_tokenizer *t, int32_t id);
// The raw vocabulary string of a token (as stored in the file), NUL-terminated.
const char *fg_tokenizer_token_text(const fg_tokenizer *t, int32_t id);
// Id of an exact vocabulary string, -1 if absent.
int32_t fg_tokenizer_find(const fg_tokenizer *t, const char *text, size_t len);

// Tokenizes text[0..len) (at most 1 GiB). add_special: apply the model's add-BOS/add-EOS
// (bert: [CLS]/[SEP]) rule. parse_special: recognise control-token strings in the text
// (never for user text in the server); user-defined tokens are always recognised, as in
// llama.cpp. *ids is heap-allocated (free()); *n may be 0.
fg_status fg_tokenize(const fg_tokenizer *t, const char *text, size_t len, bool add_special,
                      bool parse_special, int32_t **ids, size_t *n);

// fg_tokenize with flags: FG_TOKENIZE_ADD_SPECIAL and FG_TOKENIZE_PARSE_SPECIAL as the bools
// above; FG_TOKENIZE_CONTINUE: the text continues text tokenized before (a conversation that
// grows), so SentencePiece's space prefix is not added to its first fragment.
enum { FG_TOKENIZE_ADD_SPECIAL = 1, FG_TOKENIZE_PARSE_SPECIAL = 2, FG_TOKENIZE_CONTINUE = 4 };
fg_status fg_tokenize_ex(const fg_tokenizer *t, const char *text, size_t len, unsigned flags,
                         int32_t **ids, size_t *n);

// Byte-level BPE only: the pre-tokenizer's words of text[0..len) as (start, length) byte
// pairs in (*spans)[2*i], (*spans)[2*i+1] (heap, free()), for testing and debugging.
// Errors: FG_ERR_INVALID_ARG for other tokenizer types and for text that is not valid UTF-8.
fg_status fg_tokenizer_pre_split(const fg_tokenizer *t, const char *text, size_t len,
                                 size_t **spans, size_t *n_words);

// The bytes one token decodes to (▁ -> space, <0xNN> -> the byte, byte-level BPE mapping
// undone). special: render control tokens' text (otherwise they decode to nothing).
// Writes up to cap bytes to out and returns the full length (like snprintf, no NUL), or
// -1 for an out-of-range id.
int32_t fg_token_to_piece(const fg_tokenizer *t, int32_t id, bool special, char *out, size_t cap);

// Detokenizes a whole sequence as llama.cpp's llama_detokenize does (remove_special false):
// the SentencePiece leading space of the first piece is removed when the vocabulary adds a
// space prefix (a leading BOS counts as that first piece, so " Hello" stays after it);
// control tokens are skipped unless special; spaces before punctuation are cleaned up for
// vocabularies that ask for it (see fg_detokenize_ex).
// *text is heap-allocated and NUL-terminated (free()).
fg_status fg_detokenize(const fg_tokenizer *t, const int32_t *ids, size_t n, bool special,
                        char **text, size_t *len);

// fg_detokenize with flags. FG_DETOK_NO_CLEAN skips llama.cpp's clean-up of spaces before
// punctuation and contractions (done for vocabularies with clean_up_tokenization_spaces:
// gpt-2, falcon, bert, ...), which makes byte-level BPE round trips exact;
// FG_DETOK_KEEP_SPACE keeps the SentencePiece leading space of the first piece.
// Errors: FG_ERR_INVALID_ARG for an id outside the vocabulary (naming it).
enum { FG_DETOK_SPECIAL = 1, FG_DETOK_NO_CLEAN = 2, FG_DETOK_KEEP_SPACE = 4 };
fg_status fg_detokenize_ex(const fg_tokenizer *t, const int32_t *ids, size_t n, unsigned flags,
                           char **text, size_t *len);

// The text of ids[0..n) split by token, for offsets that index it exactly: token i adds the
// bytes text[offs[i]..offs[i+1]) (offs: n + 1 entries). Pieces go through the streaming
// detokenizer below (a character whose bytes span tokens belongs to the token that completes
// it; bytes that never form one become U+FFFD, at the end on the last token); no clean-up of
// spaces. strip_space: the first piece that renders anything loses one leading space when the
// vocabulary adds a space prefix (so a tokenized text comes back as it was given). special:
// control tokens render their text. *text heap-allocated, NUL-terminated (free()).
// Errors: FG_ERR_INVALID_ARG for an id outside the vocabulary (naming it).
fg_status fg_detokenize_split(const fg_tokenizer *t, const int32_t *ids, size_t n, bool special,
                              bool strip_space, char **text, size_t *len, size_t *offs);

// Streaming detokenization that emits only complete UTF-8 characters: bytes of a character
// split across tokens are held until it completes; invalid sequences come out as U+FFFD.
typedef struct fg_detok_stream {
    uint8_t pending[8];
    int n_pending;
} fg_detok_stream; // a continuation keeps its leading space: nothing is stripped here
void fg_detok_stream_init(fg_detok_stream *s);
// Appends the text of `id` to out (cap bytes); returns bytes written, or -1 when cap is
// too small (nothing written; 64 + 4 * piece length always suffices) or id is out of range.
int32_t fg_detok_stream_push(const fg_tokenizer *t, fg_detok_stream *s, int32_t id, bool special,
                             char *out, size_t cap);
// Flushes held bytes at the end of generation (as U+FFFD).
int32_t fg_detok_stream_flush(fg_detok_stream *s, char *out, size_t cap);

#ifdef __cplusplus
}
#endif

#endif // FORGE_TOKENIZER_H
