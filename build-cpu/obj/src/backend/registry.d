build-cpu/obj/src/backend/registry.o: src/backend/registry.c \
 src/backend/backend.h include/forge/backend.h include/forge/status.h \
 include/forge/types.h src/base/status.h
src/backend/backend.h:
include/forge/backend.h:
include/forge/status.h:
include/forge/types.h:
src/base/status.h:
