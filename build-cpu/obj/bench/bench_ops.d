build-cpu/obj/bench/bench_ops.o: bench/bench_ops.c src/backend/backend.h \
 include/forge/backend.h include/forge/status.h include/forge/types.h \
 src/base/status.h src/base/util.h src/backend/cpu/cpu_kernels.h \
 src/quant/quant.h
src/backend/backend.h:
include/forge/backend.h:
include/forge/status.h:
include/forge/types.h:
src/base/status.h:
src/base/util.h:
src/backend/cpu/cpu_kernels.h:
src/quant/quant.h:
