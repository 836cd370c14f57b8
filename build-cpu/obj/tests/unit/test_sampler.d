build-cpu/obj/tests/unit/test_sampler.o: tests/unit/test_sampler.c \
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
