# specd build. `make` builds the library, tools and tests; `make test` runs the hermetic suite plus the
# real-model tests (which need `make models`); `make run` is the README's main command.

CC       ?= gcc
NVCC     ?= $(shell command -v nvcc 2>/dev/null || { test -x /usr/local/cuda/bin/nvcc && echo /usr/local/cuda/bin/nvcc; })
PYTHON   ?= python3
JOBS     ?= $(shell nproc 2>/dev/null || echo 2)

SAN      ?= 0
ifeq ($(SAN),1)
BUILD    ?= build-asan
SANFLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
OPT      := -O1
else
BUILD    ?= build
SANFLAGS :=
OPT      := -O2
endif

WARN     := -Wall -Wextra -Werror -Wshadow -Wno-unused-parameter
CPPFLAGS += -I. -Iinclude -D_GNU_SOURCE
CFLAGS   += -std=c11 $(OPT) -g $(WARN) -pthread $(SANFLAGS)
LDFLAGS  += -pthread $(SANFLAGS)
LDLIBS   += -luv -lmsgpackc -lm

# SIMD variants are compiled with their own ISA flags and picked at run time (kernels/cpu). No
# contraction of a * b + c into an FMA anywhere: the kernels of every ISA must round alike.
CFLAGS   += -ffp-contract=off
AVX2FLAGS := -mavx2 -mfma -mf16c
AVX512FLAGS := $(AVX2FLAGS) -mavx512f -mavx512bw -mavx512vl
AMXFLAGS := $(AVX512FLAGS) -mamx-tile -mamx-int8

MODEL_DIR ?= .models
export SPECD_MODEL_DIR := $(abspath $(MODEL_DIR))

# Library components, lowest layer first (data flows up this list, never down).
LIB_DIRS := common kernels kernels/cpu model verify draft target engine ipc
LIB_SRCS := $(foreach d,$(LIB_DIRS),$(wildcard $(d)/*.c))
LIB_OBJS := $(LIB_SRCS:%.c=$(BUILD)/obj/%.o)

# The CUDA backend is built whenever nvcc exists (a GPU is needed only to run it). -fmad=false: the
# kernels fuse a multiply-add only where they say so, which keeps them bit-comparable with the C code.
# cudart is linked statically, so binaries start on machines without the CUDA runtime libraries and
# kern_backend_create("cuda") reports SPEC_E_UNSUPPORTED there.
# cuBLAS (kern_backend_config.blas_prefill only) is loaded at run time, from the loader's path or this
# toolkit's lib64, for the same reason.
CU_SRCS  := $(wildcard kernels/cuda/*.cu)
CUDASIM  ?= 0
ifeq ($(CUDASIM),1)
# The same kernel sources built by the host's C++ compiler against the CPU simulator (make test-cudasim).
CU_OBJS  := $(CU_SRCS:%.cu=$(BUILD)/obj/%.o) $(BUILD)/obj/tests/support/cudasim/cudasim.o
SIMFLAGS := -std=c++17 $(OPT) -g -Wall -Wextra -Werror -Wno-unknown-pragmas -Wno-unused-parameter \
            -ffp-contract=off -fno-exceptions $(SANFLAGS) -Itests/support/cudasim -I. -Iinclude -D_GNU_SOURCE
CPPFLAGS += -DSPEC_HAVE_CUDA
LDLIBS   += -lstdc++
else ifneq ($(NVCC),)
CU_OBJS  := $(CU_SRCS:%.cu=$(BUILD)/obj/%.o)
CUDA_HOME ?= $(patsubst %/bin/nvcc,%,$(NVCC))
NVFLAGS  := -O2 -std=c++17 -I. -Iinclude -arch=sm_90 -fmad=false -Xcompiler -Wall,-Wextra,-Werror,-fno-exceptions,-fno-threadsafe-statics \
            -DSPEC_CUDA_LIB_DIR='"$(CUDA_HOME)/lib64"'
CPPFLAGS += -DSPEC_HAVE_CUDA
LDLIBS   += -L$(CUDA_HOME)/lib64 -lcudart_static -ldl -lrt
endif

# The daemon (daemon/*.c, one binary) and the client library for applications (client/, door
# include/specd_client.h; it needs only msgpack-c, not libspecd).
DAEMON_SRCS := $(wildcard daemon/*.c)
DAEMON_OBJS := $(DAEMON_SRCS:%.c=$(BUILD)/obj/%.o)
DAEMON      := $(if $(DAEMON_SRCS),$(BUILD)/bin/specd)
CLIENT_SRCS := $(wildcard client/*.c)
CLIENT_OBJS := $(CLIENT_SRCS:%.c=$(BUILD)/obj/%.o)
CLIENT_LIB  := $(if $(CLIENT_SRCS),$(BUILD)/libspecd-client.a)

TOOL_SRCS := $(wildcard tools/*.c)
TOOLS     := $(TOOL_SRCS:tools/%.c=$(BUILD)/bin/%)

BENCH_SRCS := $(wildcard bench/*.c)
BENCHES    := $(BENCH_SRCS:bench/%.c=$(BUILD)/bin/%)

TEST_SRCS := $(wildcard tests/*/*.c)
TEST_SUPPORT := $(wildcard tests/support/*.c)
TEST_SRCS := $(filter-out $(TEST_SUPPORT),$(TEST_SRCS))
TESTS     := $(TEST_SRCS:tests/%.c=$(BUILD)/tests/%)

LIB := $(BUILD)/libspecd.a

.PHONY: all lib daemon tools benches tests test test-asan test-cuda test-cudasim models run install clean
all: lib daemon tools benches tests

lib: $(LIB) $(CLIENT_LIB)
daemon: $(DAEMON)
tools: $(TOOLS)
benches: $(BENCHES)
tests: $(TESTS)

$(LIB): $(LIB_OBJS) $(CU_OBJS)
	@mkdir -p $(@D)
	$(AR) rcs $@ $^

$(BUILD)/libspecd-client.a: $(CLIENT_OBJS)
	@mkdir -p $(@D)
	$(AR) rcs $@ $^

$(BUILD)/bin/specd: $(DAEMON_OBJS) $(LIB)
	@mkdir -p $(@D)
	$(CC) $(DAEMON_OBJS) -o $@ $(LDFLAGS) $(LIB) $(LDLIBS)

$(BUILD)/obj/%_avx2.o: %_avx2.c
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) $(CFLAGS) $(AVX2FLAGS) -MMD -MP -c $< -o $@

$(BUILD)/obj/%_avx512.o: %_avx512.c
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) $(CFLAGS) $(AVX512FLAGS) -MMD -MP -c $< -o $@

$(BUILD)/obj/%_amx.o: %_amx.c
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) $(CFLAGS) $(AMXFLAGS) -MMD -MP -c $< -o $@

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) $(CFLAGS) -MMD -MP -c $< -o $@

ifeq ($(CUDASIM),1)
$(BUILD)/obj/%.o: %.cu
	@mkdir -p $(@D)
	$(CXX) $(SIMFLAGS) -x c++ -MMD -MP -c $< -o $@

$(BUILD)/obj/%.o: %.cc
	@mkdir -p $(@D)
	$(CXX) $(SIMFLAGS) -MMD -MP -c $< -o $@
else
$(BUILD)/obj/%.o: %.cu
	@mkdir -p $(@D)
	$(NVCC) $(NVFLAGS) -MMD -MP -MF $(@:.o=.d) -c $< -o $@
endif

$(BUILD)/bin/%: tools/%.c $(LIB) $(CLIENT_LIB)
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) $(CFLAGS) $< -o $@ $(LDFLAGS) $(LIB) $(CLIENT_LIB) $(LDLIBS)

$(BUILD)/bin/%: bench/%.c $(LIB) $(CLIENT_LIB) | $(DAEMON)
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) $(CFLAGS) $< -o $@ $(LDFLAGS) $(LIB) $(CLIENT_LIB) $(LDLIBS)

# Integration tests start the real daemon and tools, so those are built first.
$(BUILD)/tests/%: tests/%.c $(TEST_SUPPORT) $(LIB) $(CLIENT_LIB) | $(DAEMON) $(TOOLS)
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) $(CFLAGS) $< $(TEST_SUPPORT) -o $@ $(LDFLAGS) $(LIB) $(CLIENT_LIB) -lcriterion $(LDLIBS)

# Every test binary runs; the real-model tests inside them skip loudly when `make models` has not run.
test: all
	@SPECD_MODEL_DIR=$(SPECD_MODEL_DIR) ./tools/run-tests.sh $(TESTS)

# The hermetic suite under ASan/UBSan/LSan; the real-model tests skip (too slow when instrumented).
test-asan:
	$(MAKE) SAN=1 MODEL_DIR=build-asan/no-models test

# The CUDA backend against the CPU reference; on a machine without a usable GPU this fails rather
# than skips, so a GPU run can never pass vacuously. Each suite runs as the backend's settings are by
# default, then with steps replayed as graphs, the conformance suite and the model suites also with
# the quantised matmuls on tensor cores (SPECD_TEST_TENSOR_CORES), and the engine suites with prefills
# through cuBLAS (SPECD_TEST_BLAS_PREFILL; test_model asserts that a prefill leaves the bits of a plain
# forward, which that path gives up).
CUDA_DEVICE_TESTS := $(addprefix $(BUILD)/tests/,model/test_model engine/test_engine engine/test_engine_batch)
test-cuda: $(BUILD)/tests/kernels/test_backend_conformance $(BUILD)/tests/kernels/test_profile $(CUDA_DEVICE_TESTS)
	SPECD_REQUIRE_CUDA=1 ./tools/run-tests.sh $(BUILD)/tests/kernels/test_backend_conformance \
		$(BUILD)/tests/kernels/test_profile
	SPECD_REQUIRE_CUDA=1 SPECD_TEST_TENSOR_CORES=1 ./tools/run-tests.sh $(BUILD)/tests/kernels/test_backend_conformance
	SPECD_TEST_DEVICE=cuda ./tools/run-tests.sh $(CUDA_DEVICE_TESTS)
	SPECD_TEST_DEVICE=cuda SPECD_TEST_GRAPHS=1 ./tools/run-tests.sh $(CUDA_DEVICE_TESTS)
	SPECD_TEST_DEVICE=cuda SPECD_TEST_GRAPHS=1 SPECD_TEST_TENSOR_CORES=1 ./tools/run-tests.sh $(CUDA_DEVICE_TESTS)
	SPECD_TEST_DEVICE=cuda SPECD_TEST_BLAS_PREFILL=1 ./tools/run-tests.sh $(filter %/test_engine %/test_engine_batch,$(CUDA_DEVICE_TESTS))

# Without a GPU: the CUDA backend's own kernel sources on the CPU simulator (tests/support/cudasim),
# under ASan/UBSan. What runs, each suite with the CUDA backend as the device (SPECD_TEST_DEVICE):
# - the conformance suite, and once more with the quantised matmuls on tensor cores for the tests that
#   multiply by quantised weights (CUDASIM_TC_SKIP: the others never reach a matmul they change, and the
#   memory-cap test's allocations are the same with either);
# - the model suite;
# - of the batching suite, the tests whose rows the device makes: greedy batching with a draft model and
#   with prompt lookup, and sampling on the device against the host (whose batches equal each request
#   alone in make test: so do the device's). Its other tests (stop strings, text, cancelling, sampled
#   batching) are the host's logic, minutes here;
# - greedy batching with a draft model once more with steps recorded and replayed as graphs, the
#   matmuls on tensor cores and prefills through cuBLAS (cudasim's own GEMM: the calls' shapes and
#   layouts, not the library's sums);
# - two engine tests: the greedy prompt-cache test (a prefill after decode steps) and a penalised
#   greedy self-draft (drafts processed on the device as the target's rows are); the rest of
#   test_engine takes minutes a test here, the prompt-cache test's sampled twin included.
# It checks the kernels' logic (indexing, barriers, shuffles, mma fragments, alignment, launch shapes)
# and the graphs' bookkeeping, not the GPU's float library or speed.
CUDASIM_TESTS := $(addprefix build-cudasim/tests/kernels/,test_backend_conformance test_profile)
CUDASIM_TC_SKIP := a_backend_out_of_device_memory*|rope_*|a_rope_and_the_stores*|argmax*|attention_*|attentions_of*|calls_*|get_rows*|prefill_matmuls_through_cublas*|rms_norm*|sample_*|store_rows*|model_with_float*
CUDASIM_DEVICE_TESTS := build-cudasim/tests/model/test_model build-cudasim/tests/engine/test_engine_batch
test-cudasim:
	$(MAKE) SAN=1 CUDASIM=1 BUILD=build-cudasim $(CUDASIM_TESTS) $(CUDASIM_DEVICE_TESTS) \
		build-cudasim/tests/engine/test_engine
	SPECD_REQUIRE_CUDA=1 ./tools/run-tests.sh $(CUDASIM_TESTS)
	SPECD_REQUIRE_CUDA=1 SPECD_TEST_TENSOR_CORES=1 CRITERION_TEST_PATTERN='conformance/!($(CUDASIM_TC_SKIP))' \
		./tools/run-tests.sh build-cudasim/tests/kernels/test_backend_conformance
	SPECD_TEST_DEVICE=cuda ./tools/run-tests.sh build-cudasim/tests/model/test_model
	SPECD_TEST_DEVICE=cuda CRITERION_TEST_PATTERN='engine_batch/+(greedy_*|sampling_on_the_backend*)' \
		./tools/run-tests.sh build-cudasim/tests/engine/test_engine_batch
	SPECD_TEST_DEVICE=cuda SPECD_TEST_GRAPHS=1 SPECD_TEST_TENSOR_CORES=1 SPECD_TEST_BLAS_PREFILL=1 \
		CRITERION_TEST_PATTERN='*/greedy*draft_model' \
		./tools/run-tests.sh build-cudasim/tests/engine/test_engine_batch
	SPECD_TEST_DEVICE=cuda CRITERION_TEST_PATTERN='engine/+(a_prompt*greedy*|penalised_greedy_self_draft*)' \
		./tools/run-tests.sh build-cudasim/tests/engine/test_engine

# Fetches the real models, then makes their float conversions (the lines of tools/models.sha256 with a
# third field) with specd-quantize; every file is checked against its sha256.
models: $(BUILD)/bin/specd-quantize
	./tools/fetch-models.sh $(MODEL_DIR)
	./tools/convert-models.sh $(MODEL_DIR) $(BUILD)/bin/specd-quantize

# The daemon on SmolLM2 (prompt-lookup drafting): one streamed request through specctl, the same
# request target-only, the counters, then a clean SIGTERM shutdown.
run: all
	./tools/fetch-models.sh $(MODEL_DIR) smollm2-135m-instruct-q4_1.gguf
	./tools/run-demo.sh $(BUILD) $(MODEL_DIR)/smollm2-135m-instruct-q4_1.gguf \
	    "Write a Python function that checks whether a string is a palindrome, then test it on three words."

PREFIX ?= /usr/local
install: all
	install -d $(DESTDIR)$(PREFIX)/bin
	install -m 0755 $(DAEMON) $(TOOLS) $(DESTDIR)$(PREFIX)/bin/

clean:
	rm -rf build build-asan build-cudasim

-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)
