# ringvm's Linux guest image (included from the top Makefile): see
# guest/linux/README.md.
#
#   make linux-guest   $(BUILD)/linux/bzImage, vmlinux, initramfs.cpio and
#                      initramfs.cpio.gz (the same archive gzip'd)
#                      (+ ringvm-workload, the static workload program)
#
# The kernel comes from guest/linux/build-kernel.sh, which keeps built
# kernels in ${RINGVM_CACHE:-~/.cache/ringvm}/linux-<hash> and only copies
# (hard-links) them here when the cache has one: it runs on every
# `make linux-guest` and says whether the cache was hit.

LINUX_GUEST_DIR := $(BUILD)/linux
LINUX_WORKLOAD := $(LINUX_GUEST_DIR)/ringvm-workload
LINUX_WORKLOAD_SRCS := $(wildcard guest/linux/workload/*.c) vmm/workload.c vmm/size.c
LINUX_WORKLOAD_HEADERS := $(wildcard guest/linux/workload/*.h) vmm/workload.h vmm/size.h guest/ledger_page.h \
	guest/abi.h guest/guest.h guest/page_walk.h guest/pacing.h
# Static: it runs in the initramfs next to busybox-static, without libraries.
# Against musl (musl-tools), not glibc: 88 KB stripped instead of 896 KB,
# and every byte of the initramfs is copied by the guest kernel at boot,
# in ring 0, which the KVM of PVM hosts emulates instruction by instruction
# (guest/linux/README.md, "Boot time").
LINUX_WORKLOAD_CC := musl-gcc
LINUX_WORKLOAD_CFLAGS := -std=gnu11 -O2 -g -Wall -Wextra -Werror -D_GNU_SOURCE -I. -static -pthread

.PHONY: linux-guest linux-kernel
linux-guest: linux-kernel $(LINUX_GUEST_DIR)/initramfs.cpio $(LINUX_GUEST_DIR)/initramfs.cpio.gz

linux-kernel:
	@guest/linux/build-kernel.sh $(LINUX_GUEST_DIR)

$(LINUX_WORKLOAD): $(LINUX_WORKLOAD_SRCS) $(LINUX_WORKLOAD_HEADERS) guest/linux/linux.mk
	@mkdir -p $(dir $@)
	$(LINUX_WORKLOAD_CC) $(LINUX_WORKLOAD_CFLAGS) $(LINUX_WORKLOAD_SRCS) -o $@

# gen_init_cpio comes with the kernel (order-only: the kernel step runs
# every time but re-links the same cached file, so this is rebuilt only
# when the workload program, /init, the /bin scripts or the build script change).
$(LINUX_GUEST_DIR)/initramfs.cpio: $(LINUX_WORKLOAD) guest/linux/init guest/linux/clocksource guest/linux/seq-lines \
		guest/linux/clear-pages guest/linux/build-initramfs.sh \
		| linux-kernel
	@guest/linux/build-initramfs.sh $(LINUX_GUEST_DIR)/gen_init_cpio $(LINUX_WORKLOAD) $@

# The same archive compressed, for kernels and VMMs that expect one. The
# tests and scripts boot the plain one: on PVM hosts the guest kernel
# inflates a gzip'd initramfs in emulated ring 0 (~90 s for 1.4 MB,
# guest/linux/README.md, "On PVM hosts").
$(LINUX_GUEST_DIR)/initramfs.cpio.gz: $(LINUX_GUEST_DIR)/initramfs.cpio
	gzip -9 -n -c $< > $@.tmp && mv $@.tmp $@
