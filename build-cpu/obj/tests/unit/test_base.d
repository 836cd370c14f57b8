build-cpu/obj/tests/unit/test_base.o: tests/unit/test_base.c \
 src/base/half.h src/base/status.h include/forge/status.h src/base/util.h
src/base/half.h:
src/base/status.h:
include/forge/status.h:
src/base/util.h:
