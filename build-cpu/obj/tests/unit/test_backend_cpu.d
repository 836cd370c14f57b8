build-cpu/obj/tests/unit/test_backend_cpu.o: \
 tests/unit/test_backend_cpu.c src/backend/backend.h \
 include/forge/backend.h include/forge/status.h include/forge/types.h \
 src/base/half.h src/base/status.h src/base/util.h \
 src/backend/cpu/cpu_kernels.h src/quant/quant.h
src/backend/backend.h:
include/forge/backend.h:
include/forge/status.h:
include/forge/types.h:
src/base/half.h:
src/base/status.h:
src/base/util.h:
src/backend/cpu/cpu_kernels.h:
src/quant/quant.h:
