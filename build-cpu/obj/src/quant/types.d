build-cpu/obj/src/quant/types.o: src/quant/types.c src/quant/quant.h \
 include/forge/types.h include/forge/status.h src/quant/quant_internal.h \
 src/quant/blocks.h src/base/half.h src/base/status.h
src/quant/quant.h:
include/forge/types.h:
include/forge/status.h:
src/quant/quant_internal.h:
src/quant/blocks.h:
src/base/half.h:
src/base/status.h:
