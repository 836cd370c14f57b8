build-cpu/obj/src/backend/cpu/cpu_attn.o: src/backend/cpu/cpu_attn.c \
 src/backend/cpu/cpu_internal.h src/backend/backend.h \
 include/forge/backend.h include/forge/status.h include/forge/types.h \
 src/backend/cpu/threadpool.h src/base/half.h src/base/status.h \
 src/base/util.h
src/backend/cpu/cpu_internal.h:
src/backend/backend.h:
include/forge/backend.h:
include/forge/status.h:
include/forge/types.h:
src/backend/cpu/threadpool.h:
src/base/half.h:
src/base/status.h:
src/base/util.h:
