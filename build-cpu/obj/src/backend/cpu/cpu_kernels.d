build-cpu/obj/src/backend/cpu/cpu_kernels.o: \
 src/backend/cpu/cpu_kernels.c src/backend/cpu/cpu_kernels.h \
 src/quant/quant.h include/forge/types.h include/forge/status.h \
 src/base/status.h src/quant/quant_internal.h src/quant/blocks.h \
 src/base/half.h
src/backend/cpu/cpu_kernels.h:
src/quant/quant.h:
include/forge/types.h:
include/forge/status.h:
src/base/status.h:
src/quant/quant_internal.h:
src/quant/blocks.h:
src/base/half.h:
