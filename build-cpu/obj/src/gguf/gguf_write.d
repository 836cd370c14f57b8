build-cpu/obj/src/gguf/gguf_write.o: src/gguf/gguf_write.c \
 include/forge/gguf.h include/forge/status.h include/forge/types.h \
 src/base/status.h src/base/util.h src/gguf/gguf_internal.h
include/forge/gguf.h:
include/forge/status.h:
include/forge/types.h:
src/base/status.h:
src/base/util.h:
src/gguf/gguf_internal.h:
