build-cpu/obj/src/backend/cpu/cpu_matmul.o: src/backend/cpu/cpu_matmul.c \
 src/backend/cpu/cpu_internal.h src/backend/backend.h \
 include/forge/backend.h include/forge/status.h include/forge/types.h \
 src/backend/cpu/threadpool.h src/base/status.h src/base/util.h \
 src/backend/cpu/cpu_kernels.h src/quant/quant.h
src/backend/cpu/cpu_internal.h:
src/backend/backend.h:
include/forge/backend.h:
include/forge/status.h:
include/forge/types.h:
src/backend/cpu/threadpool.h:
src/base/status.h:
src/base/util.h:
src/backend/cpu/cpu_kernels.h:
src/quant/quant.h:
