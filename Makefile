# ringvm: one Makefile for the VMM, the built-in guest, tests and benchmarks.
#
#   make            build/ringvm, build/ringctl, the guest image, benchmarks
#   make test       every Criterion test (installs missing packages first)
#   make demo       the README demo on this machine
#   make demo-linux boot the Linux guest image (make linux-guest) with the ledger
#   make asan       the tests under AddressSanitizer + UBSan (build-asan/)
#   make test-nested the tests inside a QEMU TCG machine with emulated SVM, so
#                   the KVM tests run on hosts without /dev/kvm (slow: ~26 min)
#   make fuzz       libFuzzer targets (clang)
#   make clean
#
# Sources are picked up by directory: every .c in vmm/ dirtyring/ api/
# migration/ bpf/ goes into the VMM library except the programs' main files
# listed in PROGRAM_MAINS; every tests/*.c is one Criterion binary; every
# bench/*.c is its own program; bench/lib/*.c is linked into each of them.

CC        ?= gcc
BUILD     ?= build
SANITIZE  ?= 0

CFLAGS_COMMON := -std=gnu11 -O2 -g -Wall -Wextra -Werror -D_GNU_SOURCE -pthread -I. -MMD -MP
ifeq ($(SANITIZE),1)
CFLAGS_COMMON += -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
LDFLAGS_SAN   := -fsanitize=address,undefined
endif
CFLAGS  += $(CFLAGS_COMMON)
LDLIBS  := -lnuma -ljansson -lxxhash -lgnutls -lpthread -lm

PROGRAM_MAINS := vmm/main.c api/ringctl.c
LIB_SRCS  := $(filter-out $(PROGRAM_MAINS),$(wildcard vmm/*.c dirtyring/*.c api/*.c migration/*.c))
LIB_OBJS  := $(LIB_SRCS:%.c=$(BUILD)/obj/%.o) $(BUILD)/obj/vmm/guest_image.o
# tests/netns/hosts.c: the emulated hosts' C side, shared by the tests that
# use them (tests/netns/delayline.c is a program of its own, not linked in).
TEST_SRCS := $(wildcard tests/*.c) tests/netns/hosts.c
TEST_OBJS := $(TEST_SRCS:%.c=$(BUILD)/obj/%.o)
BENCH_SRCS := $(wildcard bench/*.c)
BENCHES   := $(BENCH_SRCS:bench/%.c=$(BUILD)/bench/%)
# bench/lib/: helpers linked into every benchmark (not programs themselves).
BENCH_LIB_OBJS := $(patsubst %.c,$(BUILD)/obj/%.o,$(wildcard bench/lib/*.c))

# ---- the built-in guest: freestanding x86-64, ring-0 setup + ring-3 workloads
GUEST_SRCS := $(wildcard guest/*.c guest/*.S)
GUEST_OBJS := $(patsubst guest/%,$(BUILD)/guest/%.o,$(GUEST_SRCS))
GUEST_ELF  := $(BUILD)/guest/ringvm-guest.elf
GUEST_CFLAGS := -std=gnu11 -O2 -g -Wall -Wextra -Werror -I. \
	-ffreestanding -nostdlib -static -fno-pic -fno-pie -mno-red-zone \
	-mgeneral-regs-only -mcmodel=small -fno-stack-protector \
	-fno-asynchronous-unwind-tables -fcf-protection=none -fno-builtin

# A plain `make` on a machine without the libraries would fail deep inside a
# compile with "jansson.h: No such file"; say what is missing and how to get
# it instead. make test/demo/asan install the packages first, so they skip it.
BUILD_HEADERS := jansson.h numa.h xxhash.h gnutls/gnutls.h
MISSING_HEADERS := $(strip $(foreach h,$(BUILD_HEADERS),$(if $(wildcard /usr/include/$(h) /usr/include/*/$(h) /usr/local/include/$(h)),,$(h))))
ifneq ($(MISSING_HEADERS),)
ifeq ($(filter test demo demo-linux asan deps clean,$(MAKECMDGOALS)),)
$(error ringvm: cannot build: missing headers $(MISSING_HEADERS); run scripts/install-deps.sh (or make deps) first - make test and make demo do it themselves)
endif
endif

.PHONY: all test test-nested demo demo-linux asan fuzz clean deps bench bench-smoke
PROGRAMS := $(BUILD)/ringvm $(if $(wildcard api/ringctl.c),$(BUILD)/ringctl)
all: $(PROGRAMS) $(BENCHES)

deps:
	@scripts/install-deps.sh

$(BUILD)/guest/%.c.o: guest/%.c guest/abi.h
	@mkdir -p $(dir $@)
	$(CC) $(GUEST_CFLAGS) -c $< -o $@
$(BUILD)/guest/%.S.o: guest/%.S guest/abi.h
	@mkdir -p $(dir $@)
	$(CC) $(GUEST_CFLAGS) -c $< -o $@
$(GUEST_ELF): $(GUEST_OBJS) guest/linker.ld
	$(CC) $(GUEST_CFLAGS) -Wl,-T,guest/linker.ld -Wl,--build-id=none -Wl,-z,noexecstack \
		-Wl,--no-warn-rwx-segments $(GUEST_OBJS) -o $@ 2>/dev/null || \
	$(CC) $(GUEST_CFLAGS) -Wl,-T,guest/linker.ld -Wl,--build-id=none -Wl,-z,noexecstack \
		$(GUEST_OBJS) -o $@

# The guest image is linked into ringvm, so the binary is self-contained.
$(BUILD)/obj/vmm/guest_image.o: vmm/guest_image.S $(GUEST_ELF)
	@mkdir -p $(dir $@)
	$(CC) -c -DRINGVM_GUEST_ELF='"$(GUEST_ELF)"' $< -o $@

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/libringvm.a: $(LIB_OBJS)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/ringvm: $(BUILD)/obj/vmm/main.o $(BUILD)/libringvm.a
	$(CC) $(LDFLAGS_SAN) -pthread $^ $(LDLIBS) -o $@

$(BUILD)/ringctl: $(BUILD)/obj/api/ringctl.o $(BUILD)/libringvm.a
	$(CC) $(LDFLAGS_SAN) -pthread $^ $(LDLIBS) -o $@

$(BUILD)/bench/%: $(BUILD)/obj/bench/%.o $(BENCH_LIB_OBJS) $(BUILD)/libringvm.a
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_SAN) -pthread $^ $(LDLIBS) -o $@

# bench/lib/bench_options.o: the benchmarks' option parsers, which
# tests/test_bench_options.c tests directly.
$(BUILD)/tests/ringvm-tests: $(TEST_OBJS) $(BUILD)/obj/bench/lib/bench_options.o $(BUILD)/libringvm.a
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_SAN) -pthread $^ -lcriterion $(LDLIBS) -o $@

# Criterion prints its "Synthesis:" summary line last. Tests find the
# programs under test through RINGVM_BUILD_DIR.
TEST_JOBS ?= 2
# tests/netns/delayline: the delayed link of hosts.sh (no netem on CI).
$(BUILD)/tests/delayline: tests/netns/delayline.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $< -o $@

# linux-guest: the Linux guest image tests/test_linux_*.c boot (the kernel
# comes from a cache outside the clone after the first build).
# RINGVM_TEST_VMLINUZ: Debian's own bzImage, unpacked once into the same cache
# (scripts/debian-vmlinuz.sh), for the boot-protocol tests.
# The build before the tests runs on every core (CI calls plain `make
# test`), the libFuzzer targets included where clang's fuzzer runtime is
# installed: tests/fuzz_runner.c would otherwise build each one inside its
# test, serially, while the other test job waits for nothing.
TEST_BUILD_JOBS ?= $(shell nproc 2>/dev/null || echo 2)
TEST_FUZZ_TARGETS := $(if $(wildcard $(shell clang -print-file-name=libclang_rt.fuzzer-x86_64.a 2>/dev/null)),fuzz)
test: deps
	@$(MAKE) --no-print-directory -j$(TEST_BUILD_JOBS) all linux-guest $(BUILD)/tests/ringvm-tests \
		$(BUILD)/tests/delayline $(TEST_FUZZ_TARGETS)
	RINGVM_BUILD_DIR=$(abspath $(BUILD)) LSAN_OPTIONS=suppressions=$(abspath tests/lsan.supp) \
		RINGVM_TEST_VMLINUZ=$${RINGVM_TEST_VMLINUZ:-$$(scripts/debian-vmlinuz.sh)} \
		$(BUILD)/tests/ringvm-tests --jobs $(TEST_JOBS) $(TEST_ARGS)

asan: deps
	@$(MAKE) --no-print-directory BUILD=build-asan SANITIZE=1 test

# The same tests where /dev/kvm is missing: scripts/nested-kvm.sh boots
# Debian's kernel under QEMU's TCG with an emulated AMD SVM CPU, loads
# kvm_amd, and runs the binaries built here against that KVM. Correctness
# only: every timing inside is TCG's. One emulated CPU (two corrupt guest
# memory in QEMU 7.2's SVM emulation), so one test at a time
# (docs/testing.md).
test-nested: deps
	@$(MAKE) --no-print-directory all linux-guest $(BUILD)/tests/ringvm-tests $(BUILD)/tests/delayline
	RINGVM_BUILD_DIR=$(abspath $(BUILD)) LSAN_OPTIONS=suppressions=$(abspath tests/lsan.supp) \
		RINGVM_TEST_VMLINUZ=$${RINGVM_TEST_VMLINUZ:-$$(scripts/debian-vmlinuz.sh)} \
		scripts/nested-kvm.sh -- $(abspath $(BUILD))/tests/ringvm-tests --jobs 1 $(TEST_ARGS)

# Every benchmark once in its smallest configuration: exit 0 and valid JSON
# (scripts/bench-smoke.sh). That they run, not what they measure; needs
# /dev/kvm, or run the script under scripts/nested-kvm.sh (docs/benchmarks.md).
bench-smoke: deps
	@$(MAKE) --no-print-directory all
	scripts/bench-smoke.sh --build $(BUILD)

demo: deps
	@$(MAKE) --no-print-directory all
	scripts/demo.sh $(BUILD)

# The Linux guest image booted by ringvm, the ledger in user space on 2 vCPUs.
demo-linux: deps
	@$(MAKE) --no-print-directory all linux-guest
	scripts/demo-linux.sh $(BUILD)

# ---- make fuzz (api/ subsystem) ---------------------------------------------
# libFuzzer target over the API request handler with every command group of
# the server (api.*, events.*, vm.*, migration.*, bpf.*) and no VM: the VM
# commands run their argument validation and no-VM answers. It links the VMM
# library compiled for fuzzing (clang, sanitizers, BPF stubbed): an archive,
# so only what the command handlers reference is pulled in.
# tests/test_api_fuzz.c runs it for 30 s from tests/fuzz/api-corpus/.
FUZZ_CC        ?= clang
FUZZ_CFLAGS    := -std=gnu11 -O1 -g -Wall -Wextra -Werror -D_GNU_SOURCE -pthread -I. -MMD -MP \
                  -fsanitize=address,undefined -fno-sanitize-recover=undefined
FUZZ_LIB_SRCS  := $(LIB_SRCS) bpf/probes_stub.c
FUZZ_LIB_OBJS  := $(FUZZ_LIB_SRCS:%.c=$(BUILD)/fuzz/obj/%.o)
$(BUILD)/fuzz/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -c $< -o $@
$(BUILD)/fuzz/libringvm-fuzz.a: $(FUZZ_LIB_OBJS)
	@rm -f $@
	ar rcs $@ $^
$(BUILD)/fuzz/api_request_fuzz: tests/fuzz/api_request_fuzz.c $(BUILD)/fuzz/libringvm-fuzz.a \
		$(BUILD)/obj/vmm/guest_image.o
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer tests/fuzz/api_request_fuzz.c $(BUILD)/fuzz/libringvm-fuzz.a \
		$(BUILD)/obj/vmm/guest_image.o $(LDLIBS) -o $@
-include $(shell find $(BUILD)/fuzz -name '*.d' 2>/dev/null)
# Migration stream receiver (issue 7): HELLO + frames through the
# destination's parser; tests/test_migration_fuzz.c runs it for 60 s from
# tests/fuzz/migration-corpus/ (real captured streams).
FUZZ_MIG_SRCS  := tests/fuzz/migration_stream_fuzz.c migration/receiver.c migration/protocol.c \
                  migration/machine_state.c vmm/uart.c vmm/workload.c vmm/size.c
$(BUILD)/fuzz/migration_stream_fuzz: $(FUZZ_MIG_SRCS) $(wildcard migration/*.h) vmm/uart.h vmm/cmos_rtc.h vmm/workload.h vmm/size.h \
		guest/abi.h tests/fuzz/migration_local_config.h tests/fuzz/sealed_copy.h
	@mkdir -p $(dir $@)
	$(FUZZ_CC) -std=gnu11 -O1 -g -Wall -Wextra -Werror -D_GNU_SOURCE -I. \
		-fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
		$(FUZZ_MIG_SRCS) -lxxhash -o $@
fuzz: $(BUILD)/fuzz/api_request_fuzz $(BUILD)/fuzz/migration_stream_fuzz
# Post-copy return path (issue 17): the source's parser of the destination's
# PAGE_REQUEST / RECEIVED_BITMAP frames; tests/test_postcopy_return.c runs it
# for 20 s from tests/fuzz/postcopy-return-corpus/.
FUZZ_POSTCOPY_RETURN_SRCS := tests/fuzz/postcopy_return_fuzz.c migration/postcopy_return.c migration/protocol.c
$(BUILD)/fuzz/postcopy_return_fuzz: $(FUZZ_POSTCOPY_RETURN_SRCS) migration/postcopy_return.h migration/protocol.h \
		tests/fuzz/sealed_copy.h
	@mkdir -p $(dir $@)
	$(FUZZ_CC) -std=gnu11 -O1 -g -Wall -Wextra -Werror -D_GNU_SOURCE -I. \
		-fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
		$(FUZZ_POSTCOPY_RETURN_SRCS) -lxxhash -o $@
fuzz: $(BUILD)/fuzz/postcopy_return_fuzz
# Machine state v2 decoder (issue 14): a MACHINE_STATE payload from an
# untrusted source; tests/test_machine_state.c runs it for 10 s from
# tests/fuzz/machine-state-corpus/.
FUZZ_MACHINE_STATE_SRCS := tests/fuzz/machine_state_fuzz.c migration/machine_state.c \
                           migration/machine_state_order.c vmm/uart.c
$(BUILD)/fuzz/machine_state_fuzz: $(FUZZ_MACHINE_STATE_SRCS) migration/machine_state.h migration/protocol.h \
		vmm/uart.h vmm/cmos_rtc.h
	@mkdir -p $(dir $@)
	$(FUZZ_CC) -std=gnu11 -O1 -g -Wall -Wextra -Werror -D_GNU_SOURCE -I. \
		-fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
		$(FUZZ_MACHINE_STATE_SRCS) -lxxhash -o $@
fuzz: $(BUILD)/fuzz/machine_state_fuzz
# ---- end of make fuzz ---------------------------------------------------------

clean:
	rm -rf build build-asan

-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)
-include bpf/bpf.mk
-include tests/soak/soak.mk
-include bench/vs-qemu/vs-qemu.mk
-include guest/linux/linux.mk
