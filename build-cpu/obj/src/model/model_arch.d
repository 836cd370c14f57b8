build-cpu/obj/src/model/model_arch.o: src/model/model_arch.c \
 src/model/model_internal.h src/backend/backend.h include/forge/backend.h \
 include/forge/status.h include/forge/types.h include/forge/model.h \
 include/forge/gguf.h include/forge/tokenizer.h
src/model/model_internal.h:
src/backend/backend.h:
include/forge/backend.h:
include/forge/status.h:
include/forge/types.h:
include/forge/model.h:
include/forge/gguf.h:
include/forge/tokenizer.h:
