build-cpu/obj/src/tokenizer/tok_wpm.o: src/tokenizer/tok_wpm.c \
 src/tokenizer/tok_internal.h include/forge/tokenizer.h \
 include/forge/status.h include/forge/gguf.h src/base/status.h \
 src/tokenizer/unicode.h
src/tokenizer/tok_internal.h:
include/forge/tokenizer.h:
include/forge/status.h:
include/forge/gguf.h:
src/base/status.h:
src/tokenizer/unicode.h:
