# Forge build. One Makefile: the CPU program everywhere, plus the CUDA backend where nvcc is
# found (CUDA=0 turns it off, CUDA_ARCHS overrides the architectures). See docs/ARCHITECTURE.md.
#
#   make            build/forge and the libraries
#   make tests      the unit-test binaries (build/tests/*)
#   make check      tests/run.sh: every suite, ending with "N passed, N failed"
#   make fuzz       libFuzzer targets (clang, ASan+UBSan) in build/fuzz/
#   CC=clang make   the same with clang

CC ?= cc
NVCC ?= nvcc
BUILD ?= build
NATIVE ?= 1
CUDA_ARCHS ?= 80 90

# Each module is a directory under src/ and a static library; the order is the link order
# (higher layers first: a module may only call modules to its right).
MODULES := server engine model backend tokenizer quant gguf base

WARN := -Wall -Wextra -Werror -Wshadow -Wno-unused-parameter -Wstrict-prototypes \
        -Wmissing-prototypes -Wvla -Wformat=2
OPT ?= -O2
ARCHFLAGS :=
ifeq ($(NATIVE),1)
ARCHFLAGS += -march=native
endif
CPPFLAGS += -Iinclude -Isrc -D_GNU_SOURCE
CFLAGS ?= $(OPT) -g
CFLAGS += -std=c11 $(WARN) $(ARCHFLAGS) -pthread -fno-fast-math -MMD -MP
LDLIBS := -lmicrohttpd -ljansson -lpcre2-8 -lm -lpthread

HAVE_NVCC := $(shell command -v $(NVCC) >/dev/null 2>&1 && echo 1)
ifeq ($(CUDA),0)
HAVE_NVCC :=
endif
ifeq ($(HAVE_NVCC),1)
CUDA_HOME ?= $(patsubst %/bin/nvcc,%,$(shell command -v $(NVCC)))
MODULES := server engine model backend cuda tokenizer quant gguf base
CPPFLAGS += -DFG_HAVE_CUDA=1
NVCCFLAGS := -O2 -std=c++17 -Iinclude -Isrc $(foreach a,$(CUDA_ARCHS),-gencode arch=compute_$(a),code=sm_$(a)) \
             -Xcompiler -Wall,-Wextra,-Werror,-Wno-unused-parameter -Werror all-warnings
LDLIBS += -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcudart -lcublas -lstdc++
endif

srcdir = $(if $(filter cuda,$(1)),src/backend/cuda,src/$(1))
# backend/ holds the interface and cpu/; cuda/ is its own library.
mod_c = $(if $(filter backend,$(1)),$(wildcard src/backend/*.c src/backend/cpu/*.c),$(if $(filter cuda,$(1)),$(wildcard src/backend/cuda/*.c),$(wildcard src/$(1)/*.c)))
mod_cu = $(if $(filter cuda,$(1)),$(wildcard src/backend/cuda/*.cu))
mod_objs = $(patsubst %.c,$(BUILD)/obj/%.o,$(call mod_c,$(1))) $(patsubst %.cu,$(BUILD)/obj/%.cu.o,$(call mod_cu,$(1)))
mod_lib = $(BUILD)/lib/libfg_$(1).a

CLI_SRC := $(wildcard src/cli/*.c)
CLI_OBJ := $(patsubst %.c,$(BUILD)/obj/%.o,$(CLI_SRC))
ALL_LIBS := $(foreach m,$(MODULES),$(call mod_lib,$(m)))

TEST_SRC := $(wildcard tests/unit/test_*.c)
TESTS := $(patsubst tests/unit/%.c,$(BUILD)/tests/%,$(TEST_SRC))
TEST_SUPPORT := $(filter-out tests/unit/test_%.c,$(wildcard tests/unit/*.c))
TEST_SUPPORT_OBJ := $(patsubst %.c,$(BUILD)/obj/%.o,$(TEST_SUPPORT))

.PHONY: all tests check fuzz clean demo
all: $(BUILD)/forge

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) -c $< -o $@

$(BUILD)/obj/%.cu.o: %.cu
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) $(CPPFLAGS) -c $< -o $@

define MODULE_RULE
$(call mod_lib,$(1)): $(call mod_objs,$(1))
	@mkdir -p $$(dir $$@)
	rm -f $$@
	ar rcs $$@ $$^
endef
$(foreach m,$(MODULES),$(eval $(call MODULE_RULE,$(m))))

# the chat page is built into the server (.incbin in webui.c)
$(BUILD)/obj/src/server/webui.o: src/server/webui/index.html

# libedit (BSD licence): line editing and history for `forge chat`, the CLI only
CLI_LDLIBS := -ledit
$(BUILD)/forge: $(CLI_OBJ) $(ALL_LIBS)
	$(CC) $(CFLAGS) -o $@ $(CLI_OBJ) -Wl,--start-group $(ALL_LIBS) -Wl,--end-group $(LDLIBS) $(CLI_LDLIBS)

# A test may list the modules it needs on a line "// forge-test-modules: gguf quant base"
# (link order, higher first) so that it builds while other modules are in progress.
test_mods = $(or $(shell sed -n 's|^// forge-test-modules: ||p' tests/unit/$(1).c 2>/dev/null),$(MODULES))
define TEST_RULE
$(BUILD)/tests/$(1): $(BUILD)/obj/tests/unit/$(1).o $(TEST_SUPPORT_OBJ) $(foreach m,$(call test_mods,$(1)),$(call mod_lib,$(m)))
	@mkdir -p $$(dir $$@)
	$(CC) $(CFLAGS) -o $$@ $$< $(TEST_SUPPORT_OBJ) -Wl,--start-group $(foreach m,$(call test_mods,$(1)),$(call mod_lib,$(m))) -Wl,--end-group -lcmocka $(LDLIBS)
endef
$(foreach t,$(patsubst tests/unit/%.c,%,$(TEST_SRC)),$(eval $(call TEST_RULE,$(t))))

tests: $(BUILD)/forge $(TESTS)

check:
	bash tests/run.sh

demo:
	bash scripts/demo.sh

# Fuzz targets: tests/fuzz/fuzz_*.c, built with clang, libFuzzer, ASan and UBSan, against
# the library sources compiled the same way (separate object tree).
FUZZ_SRC := $(wildcard tests/fuzz/fuzz_*.c)
FUZZ_FLAGS := -std=c11 -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
              -Iinclude -Isrc -D_GNU_SOURCE -pthread -Wall -Wextra -Werror -Wno-unused-parameter
# A target lists the modules it needs on a line "// forge-fuzz-modules: gguf quant base".
fuzz_mods = $(or $(shell sed -n 's|^// forge-fuzz-modules: ||p' tests/fuzz/$(1).c 2>/dev/null),$(filter-out cuda,$(MODULES)))
fuzz: $(patsubst tests/fuzz/%.c,$(BUILD)/fuzz/%,$(FUZZ_SRC))
define FUZZ_RULE
$(BUILD)/fuzz/$(1): tests/fuzz/$(1).c $(foreach m,$(call fuzz_mods,$(1)),$(call mod_c,$(m)))
	@mkdir -p $$(dir $$@)
	clang $(FUZZ_FLAGS) -o $$@ $$< $(foreach m,$(call fuzz_mods,$(1)),$(call mod_c,$(m))) $(filter-out -L% -Wl% -lcudart -lcublas -lstdc++,$(LDLIBS))
endef
$(foreach t,$(patsubst tests/fuzz/%.c,%,$(FUZZ_SRC)),$(eval $(call FUZZ_RULE,$(t))))

clean:
	rm -rf $(BUILD)

-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)
