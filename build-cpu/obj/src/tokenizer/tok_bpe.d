build-cpu/obj/src/tokenizer/tok_bpe.o: src/tokenizer/tok_bpe.c \
 src/tokenizer/tok_internal.h include/forge/tokenizer.h \
 include/forge/status.h include/forge/gguf.h src/base/status.h \
 src/base/util.h src/tokenizer/unicode.h
src/tokenizer/tok_internal.h:
include/forge/tokenizer.h:
include/forge/status.h:
include/forge/gguf.h:
src/base/status.h:
src/base/util.h:
src/tokenizer/unicode.h:
