build-cpu/obj/tests/unit/test_quant_gemm.o: tests/unit/test_quant_gemm.c \
 src/quant/blocks.h src/base/half.h src/backend/cpu/cpu_kernels.h \
 src/quant/quant.h include/forge/types.h include/forge/status.h
src/quant/blocks.h:
src/base/half.h:
src/backend/cpu/cpu_kernels.h:
src/quant/quant.h:
include/forge/types.h:
include/forge/status.h:
