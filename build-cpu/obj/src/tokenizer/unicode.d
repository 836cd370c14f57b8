build-cpu/obj/src/tokenizer/unicode.o: src/tokenizer/unicode.c \
 src/tokenizer/unicode.h
src/tokenizer/unicode.h:
