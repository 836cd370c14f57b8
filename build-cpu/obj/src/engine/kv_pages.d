build-cpu/obj/src/engine/kv_pages.o: src/engine/kv_pages.c \
 include/forge/engine.h include/forge/status.h include/forge/model.h \
 include/forge/backend.h include/forge/gguf.h include/forge/types.h \
 include/forge/tokenizer.h src/base/status.h src/base/util.h
include/forge/engine.h:
include/forge/status.h:
include/forge/model.h:
include/forge/backend.h:
include/forge/gguf.h:
include/forge/types.h:
include/forge/tokenizer.h:
src/base/status.h:
src/base/util.h:
