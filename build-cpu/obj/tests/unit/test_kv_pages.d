build-cpu/obj/tests/unit/test_kv_pages.o: tests/unit/test_kv_pages.c \
 include/forge/engine.h include/forge/status.h include/forge/model.h \
 include/forge/backend.h include/forge/gguf.h include/forge/types.h \
 include/forge/tokenizer.h
include/forge/engine.h:
include/forge/status.h:
include/forge/model.h:
include/forge/backend.h:
include/forge/gguf.h:
include/forge/types.h:
include/forge/tokenizer.h:
