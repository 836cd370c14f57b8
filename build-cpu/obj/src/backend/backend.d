build-cpu/obj/src/backend/backend.o: src/backend/backend.c \
 src/backend/backend.h include/forge/backend.h include/forge/status.h \
 include/forge/types.h src/base/status.h src/base/util.h \
 src/quant/quant.h
src/backend/backend.h:
include/forge/backend.h:
include/forge/status.h:
include/forge/types.h:
src/base/status.h:
src/base/util.h:
src/quant/quant.h:
