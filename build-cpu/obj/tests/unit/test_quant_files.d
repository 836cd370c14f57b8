build-cpu/obj/tests/unit/test_quant_files.o: \
 tests/unit/test_quant_files.c include/forge.h include/forge/status.h \
 include/forge/gguf.h include/forge/status.h include/forge/types.h \
 include/forge/tokenizer.h include/forge/gguf.h include/forge/backend.h \
 include/forge/chat.h include/forge/tokenizer.h include/forge/model.h \
 include/forge/backend.h include/forge/types.h include/forge/engine.h \
 include/forge/model.h include/forge/server.h include/forge/engine.h \
 include/forge/chat.h src/quant/quant.h
include/forge.h:
include/forge/status.h:
include/forge/gguf.h:
include/forge/status.h:
include/forge/types.h:
include/forge/tokenizer.h:
include/forge/gguf.h:
include/forge/backend.h:
include/forge/chat.h:
include/forge/tokenizer.h:
include/forge/model.h:
include/forge/backend.h:
include/forge/types.h:
include/forge/engine.h:
include/forge/model.h:
include/forge/server.h:
include/forge/engine.h:
include/forge/chat.h:
src/quant/quant.h:
