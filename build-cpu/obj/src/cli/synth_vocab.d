build-cpu/obj/src/cli/synth_vocab.o: src/cli/synth_vocab.c \
 src/cli/synth_vocab.h include/forge.h include/forge/status.h \
 include/forge/gguf.h include/forge/status.h include/forge/types.h \
 include/forge/tokenizer.h include/forge/gguf.h include/forge/backend.h \
 include/forge/chat.h include/forge/tokenizer.h include/forge/model.h \
 include/forge/backend.h include/forge/types.h include/forge/engine.h \
 include/forge/model.h include/forge/server.h include/forge/engine.h \
 include/forge/chat.h src/base/util.h
src/cli/synth_vocab.h:
include/forge.h:
include/forge/status.h:
include/forge/gguf.h:
include/forge/status.h:
include/forge/types.h:
include/forge/tokenizer.h:
include/forge/gguf.h:
include/forge/backend.h:
include/forge/chat.h:
include/forge/tokenizer.h:
include/forge/model.h:
include/forge/backend.h:
include/forge/types.h:
include/forge/engine.h:
include/forge/model.h:
include/forge/server.h:
include/forge/engine.h:
include/forge/chat.h:
src/base/util.h:
