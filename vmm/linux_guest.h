/*
 * A Linux guest from the command line to a VM ready to run: reads and
 * checks --kernel, --initrd and --cmdline before /dev/kvm is opened (so a
 * bad file is a usage error, exit 2, on any machine), then lays the kernel,
 * initramfs, boot parameters and MP table into guest RAM and sets up each
 * vCPU for the kernel's entry (vmm/linux_boot.h does the protocol work).
 *
 * Ownership: opened by the owner of the VM (main, or a test) before
 * vm_create and closed after vm_destroy; vm_create only reads it from its
 * own thread. Nothing here is touched once the vCPUs run.
 */
#ifndef RINGVM_VMM_LINUX_GUEST_H
#define RINGVM_VMM_LINUX_GUEST_H

#include <stddef.h>
#include <stdint.h>

#include "vmm/memory.h"
#include "vmm/vm.h"

struct linux_guest;

/* Reads and validates the files, composes the command line and checks that
 * kernel, initramfs and command line fit a guest of memory_bytes. Returns 0,
 * or -1 with a message naming the file and the problem in error. */
int linux_guest_open(struct linux_guest **out, const struct vm_linux_guest_config *config,
                     uint64_t memory_bytes, char *error, size_t error_size);
void linux_guest_close(struct linux_guest *guest);

/* The full kernel command line, the paths and the boot protocol in use
 * ("bzImage 64-bit", "vmlinux PVH", "vmlinux 64-bit"), for vm.info. */
const char *linux_guest_cmdline(const struct linux_guest *guest);
const char *linux_guest_kernel_path(const struct linux_guest *guest);
const char *linux_guest_initrd_path(const struct linux_guest *guest);   /* NULL = none */
const char *linux_guest_boot_protocol(const struct linux_guest *guest);
/* The workload the guest image runs: the value of ringvm.workload= on the
 * command line (checked with ringvm's own parser at open), NULL = none. */
const char *linux_guest_workload(const struct linux_guest *guest);

/* Writes kernel, initramfs, boot parameters, e820 map, boot page tables and
 * the MP table for vcpu_count vCPUs into guest RAM. */
int linux_guest_load(struct linux_guest *guest, struct guest_memory *memory, unsigned vcpu_count,
                     char *error, size_t error_size);

/* CPUID (`supported`, from KVM_GET_SUPPORTED_CPUID, normalised for this vCPU), boot MSRs,
 * LAPIC LINT0/LINT1 on every vCPU; registers for the kernel's entry on
 * vCPU 0 only (the others wait for INIT/SIPI from the guest). */
struct kvm_cpuid2;
int linux_guest_setup_vcpu(const struct linux_guest *guest, const struct kvm_cpuid2 *supported, int vcpu_fd,
                           unsigned index,
                           unsigned vcpu_count, char *error, size_t error_size);

#endif
