build-cpu/obj/src/server/chat_template.o: src/server/chat_template.c \
 include/forge/server.h include/forge/status.h include/forge/engine.h \
 include/forge/model.h include/forge/backend.h include/forge/gguf.h \
 include/forge/types.h include/forge/tokenizer.h src/base/status.h \
 src/base/util.h
include/forge/server.h:
include/forge/status.h:
include/forge/engine.h:
include/forge/model.h:
include/forge/backend.h:
include/forge/gguf.h:
include/forge/types.h:
include/forge/tokenizer.h:
src/base/status.h:
src/base/util.h:
