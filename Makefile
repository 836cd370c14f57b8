# Forge build. One Makefile: the CPU program everywhere, plus the CUDA backend where nvcc is
# found (CUDA=0 turns it off, CUDA_ARCHS overrides the architectures). HIP=1 builds the same
# backend sources with hipcc for AMD GPUs instead (HIP_ARCHS). See docs/ARCHITECTURE.md.
#
#   make            build/forge and the libraries
#   make tests      the unit-test binaries (build/tests/*) and the benchmarks (build/bench/*)
#   make check      tests/run.sh: every suite, ending with "N passed, N failed"
#   make asan       the unit tests built with ASan+UBSan (build-asan/) and run
#   make fuzz       libFuzzer targets (clang, ASan+UBSan) in build/fuzz/
#   CC=clang make   the same with clang
#   make HIP=1      the GPU backend (src/backend/cuda/*.cu) compiled by hipcc, linked to libamdhip64
#   NCCL=0|1        tensor parallelism over NCCL in the CUDA build: found automatically in the CUDA
#                   toolkit (CUDA_HOME/include/nccl.h) or NCCL_HOME; NCCL=1 requires it, NCCL=0
#                   leaves it out (--tensor-parallel on the GPU then says so)
#   make nccl-check compiles the NCCL communicator and links a probe against libnccl

CC ?= cc
NVCC ?= nvcc
BUILD ?= build
NATIVE ?= 1
CUDA_ARCHS ?= 80 90
HIPCC ?= hipcc
HIP_ARCHS ?= gfx90a gfx1030
ROCM_PATH ?= /opt/rocm

# Each module is a directory under src/ and a static library; the order is the link order
# (higher layers first: a module may only call modules to its right, and the link has no
# --start-group, so a call into a higher layer fails to link). `registry` (fg_backend_create)
# sits above the backends so that the shared backend code never calls the CUDA one.
MODULES := server engine model registry backend tokenizer gguf quant base

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
ifeq ($(HIP),1)
HAVE_NVCC :=
endif
ifeq ($(HAVE_NVCC),1)
CUDA_HOME ?= $(patsubst %/bin/nvcc,%,$(shell command -v $(NVCC)))
MODULES := server engine model registry cuda backend tokenizer gguf quant base
CPPFLAGS += -DFG_HAVE_CUDA=1
NVCCFLAGS := -O2 -std=c++17 -Iinclude -Isrc $(foreach a,$(CUDA_ARCHS),-gencode arch=compute_$(a),code=sm_$(a)) \
             -Xcompiler -Wall,-Wextra,-Werror,-Wno-unused-parameter -Werror all-warnings -MMD -MP
LDLIBS += -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcudart -lcublas -lstdc++
# NCCL (tensor parallelism, src/backend/cuda/comm_nccl.cu): the toolkit's own, or NCCL_HOME's.
NCCL_HOME ?= $(CUDA_HOME)
ifneq ($(NCCL),0)
HAVE_NCCL := $(if $(wildcard $(NCCL_HOME)/include/nccl.h),1)
ifeq ($(NCCL),1)
ifneq ($(HAVE_NCCL),1)
$(error NCCL=1 but $(NCCL_HOME)/include/nccl.h does not exist: set NCCL_HOME)
endif
endif
endif
ifeq ($(HAVE_NCCL),1)
CPPFLAGS += -DFG_HAVE_NCCL=1
NVCCFLAGS += -I$(NCCL_HOME)/include
# (the toolkit's lib64, or lib/ of the nvidia-nccl Python wheel, which has libnccl.so.2 only)
NCCL_LIBDIR := $(firstword $(foreach d,$(NCCL_HOME)/lib64 $(NCCL_HOME)/lib,$(if $(wildcard $(d)/libnccl.so*),$(d))))
ifneq ($(NCCL_LIBDIR),)
LDLIBS += -L$(NCCL_LIBDIR) -Wl,-rpath,$(NCCL_LIBDIR)
endif
LDLIBS += $(if $(wildcard $(NCCL_LIBDIR)/libnccl.so),-lnccl,-l:libnccl.so.2)
endif
endif

# HIP=1: the same .cu files through hipcc (gpu_compat.h maps the runtime names); the backend
# keeps its name "cuda" (FG_HAVE_CUDA). libamdhip64 is linked from ROCM_PATH/lib or the
# distribution's directory. When it is not found, the objects and build/lib/libfg_cuda.a still
# build (that is the compile check CI runs), but linking build/forge and the tests fails with
# undefined hip* symbols: install libamdhip64-dev or point ROCM_PATH at a ROCm install.
ifeq ($(HIP),1)
MODULES := $(patsubst registry,registry cuda,$(MODULES))
CPPFLAGS += -DFG_HAVE_CUDA=1
HIPFLAGS := -x hip $(foreach a,$(HIP_ARCHS),--offload-arch=$(a)) -std=c++17 -O2 -Wall -Wextra -Werror \
            -Wno-unused-parameter -MMD -MP
HIP_LIBDIR := $(firstword $(foreach d,$(ROCM_PATH)/lib /usr/lib/x86_64-linux-gnu,$(if $(wildcard $(d)/libamdhip64.so),$(d))))
ifneq ($(HIP_LIBDIR),)
LDLIBS += -L$(HIP_LIBDIR) -Wl,-rpath,$(HIP_LIBDIR) -lamdhip64 -lstdc++
endif
endif

# backend/ holds the interface, the checked wrappers and cpu/; cuda/ and registry.c are their
# own libraries.
mod_c = $(if $(filter backend,$(1)),$(filter-out src/backend/registry.c,$(wildcard src/backend/*.c src/backend/cpu/*.c)),$(if $(filter cuda,$(1)),$(wildcard src/backend/cuda/*.c),$(if $(filter registry,$(1)),src/backend/registry.c,$(wildcard src/$(1)/*.c))))
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

.PHONY: all tests check fuzz clean demo asan nccl-check
all: $(BUILD)/forge

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) -c $< -o $@

$(BUILD)/obj/%.cu.o: %.cu
	@mkdir -p $(dir $@)
ifeq ($(HIP),1)
	$(HIPCC) $(HIPFLAGS) $(CPPFLAGS) -c $< -o $@
else
	$(NVCC) $(NVCCFLAGS) $(CPPFLAGS) -c $< -o $@
endif

define MODULE_RULE
$(call mod_lib,$(1)): $(call mod_objs,$(1))
	@mkdir -p $$(dir $$@)
	rm -f $$@
	ar rcs $$@ $$^
endef
$(foreach m,$(MODULES),$(eval $(call MODULE_RULE,$(m))))

# the chat page is built into the server (.incbin in webui.c), its Content-Security-Policy
# (the hashes of its inline script and style) into a generated header
$(BUILD)/gen/webui_csp.h: src/server/webui/index.html scripts/webui_csp.py
	@mkdir -p $(dir $@)
	python3 scripts/webui_csp.py $< $@
$(BUILD)/obj/src/server/webui.o: src/server/webui/index.html $(BUILD)/gen/webui_csp.h
$(BUILD)/obj/src/server/webui.o: CPPFLAGS += -I$(BUILD)/gen

# libedit (BSD licence): line editing and history for `forge chat`, the CLI only
CLI_LDLIBS ?= -ledit
$(BUILD)/forge: $(CLI_OBJ) $(ALL_LIBS)
	$(CC) $(CFLAGS) -o $@ $(CLI_OBJ) $(ALL_LIBS) $(LDLIBS) $(CLI_LDLIBS)

# A test may list the modules it needs on a line "// forge-test-modules: gguf quant base"
# (link order, higher first) so that it builds while other modules are in progress; the
# registry brings the CUDA backend along when the build has it.
with_cuda = $(if $(filter cuda,$(MODULES)),$(patsubst registry,registry cuda,$(1)),$(1))
test_mods = $(call with_cuda,$(or $(shell sed -n 's|^// forge-test-modules: ||p' tests/unit/$(1).c 2>/dev/null),$(MODULES)))
define TEST_RULE
$(BUILD)/tests/$(1): $(BUILD)/obj/tests/unit/$(1).o $(TEST_SUPPORT_OBJ) $(foreach m,$(call test_mods,$(1)),$(call mod_lib,$(m)))
	@mkdir -p $$(dir $$@)
	$(CC) $(CFLAGS) -o $$@ $$< $(TEST_SUPPORT_OBJ) $(foreach m,$(call test_mods,$(1)),$(call mod_lib,$(m))) -lcmocka $(LDLIBS)
endef
$(foreach t,$(patsubst tests/unit/%.c,%,$(TEST_SRC)),$(eval $(call TEST_RULE,$(t))))

# Benchmarks (bench/*.c): built with the tests so that they cannot rot; each links all modules.
BENCH_SRC := $(wildcard bench/*.c)
BENCHES := $(patsubst bench/%.c,$(BUILD)/bench/%,$(BENCH_SRC))
$(BUILD)/bench/%: $(BUILD)/obj/bench/%.o $(ALL_LIBS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $< $(ALL_LIBS) $(LDLIBS)

# Host replays of GPU kernels (tests/unit/test_*_host.cu): the kernels' index maths run on the
# CPU against the scalar oracle, so CI checks them without a GPU (nvcc builds, gcc links).
HOST_TEST_SRC := $(wildcard tests/unit/test_*_host.cu)
HOST_TESTS := $(if $(HAVE_NVCC),$(patsubst tests/unit/%.cu,$(BUILD)/tests/host/%,$(HOST_TEST_SRC)))
$(BUILD)/tests/host/%: tests/unit/%.cu $(wildcard src/backend/cuda/*.cu src/backend/cuda/*.cuh src/backend/cuda/*.h) $(call mod_lib,quant) $(call mod_lib,base)
	@mkdir -p $(dir $@)
	$(NVCC) -std=c++17 -O1 -Iinclude -Isrc -D_GNU_SOURCE -Xcompiler -Wall -o $@ $< $(call mod_lib,quant) $(call mod_lib,base) -lm

tests: $(BUILD)/forge $(TESTS) $(BENCHES) $(HOST_TESTS)

# The unit tests under AddressSanitizer + UndefinedBehaviorSanitizer (CPU build, own tree).
asan:
	$(MAKE) BUILD=build-asan CUDA=0 NATIVE=$(NATIVE) OPT="-O1 -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer" \
	    build-asan/forge $(patsubst $(BUILD)/%,build-asan/%,$(TESTS))
	@fail=0; for t in build-asan/tests/test_*; do \
	    printf '%-32s ' "$$(basename $$t)"; \
	    if ASAN_OPTIONS=allocator_may_return_null=1 FORGE_ASAN=1 $$t > $$t.asan.log 2>&1; then echo ok; else echo FAILED; tail -n 30 $$t.asan.log; fail=1; fi; \
	done; exit $$fail

check:
	bash tests/run.sh

# The NCCL build check CI runs (tests/run.sh), also in a CUDA=0 tree: the communicator compiled
# with nvcc against nccl.h, and a probe linked against libnccl.
nccl-check:
ifeq ($(HAVE_NCCL),1)
	@mkdir -p $(BUILD)/nccl-check
	$(NVCC) $(NVCCFLAGS) $(CPPFLAGS) -c src/backend/cuda/comm_nccl.cu -o $(BUILD)/nccl-check/comm_nccl.cu.o
	printf '#include <nccl.h>\nint main(void) { int v = 0; return ncclGetVersion(&v) != ncclSuccess || v < 21800; }\n' \
	    > $(BUILD)/nccl-check/probe.c
	$(CC) -I$(NCCL_HOME)/include -o $(BUILD)/nccl-check/probe $(BUILD)/nccl-check/probe.c $(LDLIBS)
	$(BUILD)/nccl-check/probe && echo "nccl-check: comm_nccl.cu compiles, libnccl links and loads ($(NCCL_HOME))"
else
	@echo "nccl-check: no NCCL in this build (nvcc $(if $(HAVE_NVCC),found,not found or CUDA=0); nccl.h not found under NCCL_HOME=$(NCCL_HOME))"; exit 1
endif

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
$(BUILD)/fuzz/$(1): tests/fuzz/$(1).c $(foreach m,$(call fuzz_mods,$(1)),$(call mod_c,$(m))) $(BUILD)/gen/webui_csp.h
	@mkdir -p $$(dir $$@)
	clang $(FUZZ_FLAGS) -I$(BUILD)/gen -o $$@ $$< $(foreach m,$(call fuzz_mods,$(1)),$(call mod_c,$(m))) $(filter-out -L% -Wl% -lcudart -lcublas -lnccl -l:libnccl.so.2 -lamdhip64 -lstdc++,$(LDLIBS))
endef
$(foreach t,$(patsubst tests/fuzz/%.c,%,$(FUZZ_SRC)),$(eval $(call FUZZ_RULE,$(t))))

clean:
	rm -rf $(BUILD)

-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)
