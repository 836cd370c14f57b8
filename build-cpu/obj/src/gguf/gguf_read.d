build-cpu/obj/src/gguf/gguf_read.o: src/gguf/gguf_read.c \
 include/forge/gguf.h include/forge/status.h include/forge/types.h \
 src/base/mapfile.h src/base/status.h src/base/util.h \
 src/gguf/gguf_internal.h
include/forge/gguf.h:
include/forge/status.h:
include/forge/types.h:
src/base/mapfile.h:
src/base/status.h:
src/base/util.h:
src/gguf/gguf_internal.h:
