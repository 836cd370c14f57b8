build-cpu/obj/src/base/status.o: src/base/status.c src/base/status.h \
 include/forge/status.h
src/base/status.h:
include/forge/status.h:
