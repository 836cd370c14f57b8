build-cpu/obj/tests/unit/test_cuda.o: tests/unit/test_cuda.c \
 src/backend/backend.h include/forge/backend.h include/forge/status.h \
 include/forge/types.h src/base/status.h
src/backend/backend.h:
include/forge/backend.h:
include/forge/status.h:
include/forge/types.h:
src/base/status.h:
