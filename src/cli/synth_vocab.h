// synth_vocab.h - the built-in minimal SentencePiece-style vocabulary of `forge synth`.
// Who calls it: cmd_synth.c.
#ifndef FG_CLI_SYNTH_VOCAB_H
#define FG_CLI_SYNTH_VOCAB_H

#include "forge.h"

// Number of real tokens in the built-in vocabulary (before padding).
int64_t fg_synth_vocab_size(void);
// Writes tokenizer.ggml.* (model "llama", tokens, scores, token_type, bos/eos/unk ids) for a
// vocabulary of n_vocab tokens (>= fg_synth_vocab_size(); the rest are "<unused_N>" tokens).
void fg_synth_vocab_write(fg_gguf_writer *w, int64_t n_vocab);

#endif // FG_CLI_SYNTH_VOCAB_H
