build-cpu/obj/src/quant/quant_ref.o: src/quant/quant_ref.c \
 src/quant/quant_internal.h src/quant/blocks.h src/base/half.h \
 src/quant/quant.h include/forge/types.h include/forge/status.h
src/quant/quant_internal.h:
src/quant/blocks.h:
src/base/half.h:
src/quant/quant.h:
include/forge/types.h:
include/forge/status.h:
