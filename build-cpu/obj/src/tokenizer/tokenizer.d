build-cpu/obj/src/tokenizer/tokenizer.o: src/tokenizer/tokenizer.c \
 src/tokenizer/tok_internal.h include/forge/tokenizer.h \
 include/forge/status.h include/forge/gguf.h src/base/status.h \
 src/base/util.h
src/tokenizer/tok_internal.h:
include/forge/tokenizer.h:
include/forge/status.h:
include/forge/gguf.h:
src/base/status.h:
src/base/util.h:
