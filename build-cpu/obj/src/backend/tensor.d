build-cpu/obj/src/backend/tensor.o: src/backend/tensor.c \
 src/backend/backend.h include/forge/backend.h include/forge/status.h \
 include/forge/types.h src/quant/quant.h
src/backend/backend.h:
include/forge/backend.h:
include/forge/status.h:
include/forge/types.h:
src/quant/quant.h:
