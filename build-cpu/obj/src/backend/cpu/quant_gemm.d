build-cpu/obj/src/backend/cpu/quant_gemm.o: src/backend/cpu/quant_gemm.c \
 src/backend/cpu/cpu_kernels.h src/quant/quant.h include/forge/types.h \
 include/forge/status.h src/quant/quant_internal.h src/quant/blocks.h \
 src/base/half.h src/base/status.h
src/backend/cpu/cpu_kernels.h:
src/quant/quant.h:
include/forge/types.h:
include/forge/status.h:
src/quant/quant_internal.h:
src/quant/blocks.h:
src/base/half.h:
src/base/status.h:
