build-cpu/obj/src/backend/cpu/threadpool.o: src/backend/cpu/threadpool.c \
 src/backend/cpu/threadpool.h include/forge/status.h src/base/status.h
src/backend/cpu/threadpool.h:
include/forge/status.h:
src/base/status.h:
