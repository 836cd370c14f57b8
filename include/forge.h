// forge.h - the public C API of Forge, an LLM inference engine for GGUF models.
// This umbrella header is what the CLI, the server and embedders include. Each module's
// API lives in include/forge/<module>.h; what they all share (status codes, the per-thread
// error message) is in include/forge/status.h.
// Not here: backend internals (src/backend), kernels, scheduler internals.
#ifndef FORGE_H
#define FORGE_H

#include "forge/status.h"
#include "forge/gguf.h"
#include "forge/types.h"
#include "forge/tokenizer.h"
#include "forge/backend.h"
#include "forge/chat.h"
#include "forge/model.h"
#include "forge/engine.h"
#include "forge/embedder.h"
#include "forge/server.h"

#endif // FORGE_H
