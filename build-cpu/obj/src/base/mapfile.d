build-cpu/obj/src/base/mapfile.o: src/base/mapfile.c src/base/mapfile.h \
 include/forge/status.h src/base/status.h
src/base/mapfile.h:
include/forge/status.h:
src/base/status.h:
