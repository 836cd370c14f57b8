build-cpu/obj/src/server/sse.o: src/server/sse.c \
 src/server/server_internal.h include/forge/server.h \
 include/forge/status.h include/forge/engine.h include/forge/model.h \
 include/forge/backend.h include/forge/gguf.h include/forge/types.h \
 include/forge/tokenizer.h include/forge/chat.h src/base/util.h
src/server/server_internal.h:
include/forge/server.h:
include/forge/status.h:
include/forge/engine.h:
include/forge/model.h:
include/forge/backend.h:
include/forge/gguf.h:
include/forge/types.h:
include/forge/tokenizer.h:
include/forge/chat.h:
src/base/util.h:
