# bpf/: the eBPF probes (libbpf CO-RE), included at the end of the top Makefile.
#
#   build/bpf/vmlinux.h        bpftool btf dump of /sys/kernel/btf/vmlinux
#   build/bpf/X.bpf.o          clang -target bpf -g -O2 (CO-RE), DWARF stripped
#   build/bpf/X.skel.h         bpftool gen skeleton
#   build/obj/bpf/*.o          the loaders, in libringvm.a; links -lbpf -lelf -lz
#
# Without kernel BTF, clang, llvm-strip, bpftool or libbpf the build still
# succeeds: bpf/probes_stub.c answers "unavailable: built without BPF: <why>"
# and make says so once. RINGVM_NO_BPF=1 forces that build.
#
# This file is included after the library and link rules: it adds its objects
# as extra prerequisites of $(BUILD)/libringvm.a (the archive rule uses $^)
# and appends to LDLIBS, which the link recipes expand when they run.

BPF_DIR          := $(BUILD)/bpf
BPF_VMLINUX_BTF  ?= /sys/kernel/btf/vmlinux
BPF_CLANG        ?= clang
BPF_TOOL         ?= $(firstword $(shell command -v bpftool 2>/dev/null) $(wildcard /usr/sbin/bpftool /sbin/bpftool))
BPF_STRIP        ?= $(firstword $(shell command -v llvm-strip llvm-strip-16 llvm-strip-15 llvm-strip-14 2>/dev/null))
BPF_ARCH         := $(shell uname -m | sed -e 's/x86_64/x86/' -e 's/aarch64/arm64/')

BPF_REASON :=
ifeq ($(RINGVM_NO_BPF),1)
BPF_REASON := RINGVM_NO_BPF=1
else ifeq ($(wildcard $(BPF_VMLINUX_BTF)),)
BPF_REASON := kernel BTF $(BPF_VMLINUX_BTF) not found
else ifeq ($(shell command -v $(BPF_CLANG) 2>/dev/null),)
BPF_REASON := $(BPF_CLANG) not found
else ifeq ($(BPF_TOOL),)
BPF_REASON := bpftool not found
else ifeq ($(BPF_STRIP),)
BPF_REASON := llvm-strip not found
else ifeq ($(wildcard /usr/include/bpf/libbpf.h /usr/local/include/bpf/libbpf.h),)
BPF_REASON := libbpf headers not found (libbpf-dev)
endif

BPF_PROG_SRCS := $(wildcard bpf/*.bpf.c)

ifeq ($(BPF_REASON),)

BPF_SKELS       := $(BPF_PROG_SRCS:bpf/%.bpf.c=$(BPF_DIR)/%.skel.h)
BPF_LOADER_SRCS := $(filter-out bpf/probes_stub.c $(BPF_PROG_SRCS),$(wildcard bpf/*.c))
BPF_CFLAGS      := -g -O2 -target bpf -mcpu=v3 -D__TARGET_ARCH_$(BPF_ARCH) -Wall -Werror \
                   -I$(BPF_DIR) -Ibpf

$(BPF_DIR)/vmlinux.h: $(BPF_VMLINUX_BTF)
	@mkdir -p $(dir $@)
	$(BPF_TOOL) btf dump file $< format c > $@.tmp
	@mv $@.tmp $@

$(BPF_DIR)/%.bpf.o: bpf/%.bpf.c bpf/%.h $(BPF_DIR)/vmlinux.h
	@mkdir -p $(dir $@)
	$(BPF_CLANG) $(BPF_CFLAGS) -c $< -o $@
	$(BPF_STRIP) -g $@

.SECONDARY: $(BPF_PROG_SRCS:bpf/%.bpf.c=$(BPF_DIR)/%.bpf.o)

$(BPF_DIR)/%.skel.h: $(BPF_DIR)/%.bpf.o
	$(BPF_TOOL) gen skeleton $< name $*_bpf > $@.tmp
	@mv $@.tmp $@

# The loaders include their skeleton; make sure it exists before compiling.
$(BPF_LOADER_SRCS:%.c=$(BUILD)/obj/%.o): CFLAGS += -I$(BPF_DIR)
$(BPF_LOADER_SRCS:%.c=$(BUILD)/obj/%.o): | $(BPF_SKELS)
$(BUILD)/obj/bpf/vcpu_probes.o: $(BPF_DIR)/vcpu_probes.skel.h

LDLIBS += -lbpf -lelf -lz

else

BPF_LOADER_SRCS := bpf/probes_common.c bpf/probes_stub.c
$(BUILD)/obj/bpf/probes_stub.o: CFLAGS += -DRINGVM_BPF_STUB_REASON='"built without BPF: $(BPF_REASON)"'

ifndef RINGVM_BPF_NOTE_SHOWN
$(info ringvm: building without the eBPF probes: $(BPF_REASON))
export RINGVM_BPF_NOTE_SHOWN := 1
endif

endif

BPF_LIB_OBJS := $(BPF_LOADER_SRCS:%.c=$(BUILD)/obj/%.o)
LIB_OBJS += $(BPF_LIB_OBJS)
$(BUILD)/libringvm.a: $(BPF_LIB_OBJS)

.PHONY: bpf
bpf: $(BPF_LIB_OBJS)
