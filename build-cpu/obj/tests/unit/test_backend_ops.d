build-cpu/obj/tests/unit/test_backend_ops.o: \
 tests/unit/test_backend_ops.c src/backend/backend.h \
 include/forge/backend.h include/forge/status.h include/forge/types.h \
 src/backend/cpu/cpu_kernels.h src/quant/quant.h src/base/half.h \
 src/base/status.h src/base/util.h
src/backend/backend.h:
include/forge/backend.h:
include/forge/status.h:
include/forge/types.h:
src/backend/cpu/cpu_kernels.h:
src/quant/quant.h:
src/base/half.h:
src/base/status.h:
src/base/util.h:
