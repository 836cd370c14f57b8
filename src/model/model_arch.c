// model_arch.c - the table of supported architectures and what distinguishes them (rope
// layout, biases, qk-norm, extra norms, fused FFN; encoders for embeddings). Tensor names and shapes are bound in
// model_load.c from these traits; the forward pass branches on them.
// Who calls it: model_load.c, forward.c.
#include "model/model_internal.h"

#include <string.h>

const fg_arch_traits fg_arch_table[FG_ARCH_COUNT] = {
    [FG_ARCH_LLAMA] = {"llama", FG_ROPE_NORMAL, false, false, false, false, false, false, false},
    [FG_ARCH_QWEN2] = {"qwen2", FG_ROPE_NEOX, true, false, false, false, false, false, false},
    [FG_ARCH_QWEN3] = {"qwen3", FG_ROPE_NEOX, false, true, false, false, false, false, false},
    // GLM-4-0414 as llama.cpp runs it: rope type NORM (adjacent pairs) over the first
    // rope.dimension_count dims of each head, post norms, fused gate|up projection.
    [FG_ARCH_GLM4] = {"glm4", FG_ROPE_NORMAL, false, false, true, true, false, false, false},
    // encoders for embeddings (issue 14), as llama.cpp's llm_build_bert runs them: bert
    // (BERT, MiniLM, BGE, E5: learned positions, GELU FFN with biases) and nomic-bert (rotary
    // positions NEOX, SwiGLU FFN, fused attn_qkv); post-LayerNorms with biases, token types.
    [FG_ARCH_BERT] = {"bert", FG_ROPE_NEOX, false, false, false, false, true, true, true},
    [FG_ARCH_NOMIC_BERT] = {"nomic-bert", FG_ROPE_NEOX, false, false, false, false, true, false, false},
};

int fg_arch_find(const char *name, size_t len) {
    for (int i = 0; i < FG_ARCH_COUNT; i++)
        if (strlen(fg_arch_table[i].name) == len && !memcmp(fg_arch_table[i].name, name, len))
            return i;
    return -1;
}

const char *fg_arch_list(void) { return "llama, qwen2, qwen3, glm4, bert, nomic-bert"; }
