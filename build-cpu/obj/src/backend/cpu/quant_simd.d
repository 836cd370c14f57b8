build-cpu/obj/src/backend/cpu/quant_simd.o: src/backend/cpu/quant_simd.c \
 src/backend/cpu/cpu_kernels.h src/quant/quant.h include/forge/types.h \
 include/forge/status.h src/quant/quant_internal.h src/quant/blocks.h \
 src/base/half.h
src/backend/cpu/cpu_kernels.h:
src/quant/quant.h:
include/forge/types.h:
include/forge/status.h:
src/quant/quant_internal.h:
src/quant/blocks.h:
src/base/half.h:
