build-cpu/obj/src/model/model_load.o: src/model/model_load.c \
 src/model/model_internal.h src/backend/backend.h include/forge/backend.h \
 include/forge/status.h include/forge/types.h include/forge/model.h \
 include/forge/gguf.h include/forge/tokenizer.h src/base/progress.h \
 src/base/status.h src/base/util.h
src/model/model_internal.h:
src/backend/backend.h:
include/forge/backend.h:
include/forge/status.h:
include/forge/types.h:
include/forge/model.h:
include/forge/gguf.h:
include/forge/tokenizer.h:
src/base/progress.h:
src/base/status.h:
src/base/util.h:
