build-cpu/obj/tests/unit/test_tokenizer.o: tests/unit/test_tokenizer.c \
 include/forge.h include/forge/status.h include/forge/gguf.h \
 include/forge/status.h include/forge/types.h include/forge/tokenizer.h \
 include/forge/gguf.h include/forge/backend.h include/forge/chat.h \
 include/forge/tokenizer.h include/forge/model.h include/forge/backend.h \
 include/forge/types.h include/forge/engine.h include/forge/model.h \
 include/forge/server.h include/forge/engine.h include/forge/chat.h \
 src/tokenizer/tok_internal.h src/tokenizer/unicode.h
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
src/tokenizer/tok_internal.h:
src/tokenizer/unicode.h:
