build-cpu/obj/src/model/forward.o: src/model/forward.c \
 src/model/model_internal.h src/backend/backend.h include/forge/backend.h \
 include/forge/status.h include/forge/types.h include/forge/model.h \
 include/forge/gguf.h include/forge/tokenizer.h src/base/status.h \
 src/base/util.h
src/model/model_internal.h:
src/backend/backend.h:
include/forge/backend.h:
include/forge/status.h:
include/forge/types.h:
include/forge/model.h:
include/forge/gguf.h:
include/forge/tokenizer.h:
src/base/status.h:
src/base/util.h:
