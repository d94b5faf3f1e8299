/*
 * Booting the guest ELF: load its PT_LOAD segments into guest RAM, build the
 * identity page tables, and put a vCPU at the direct 64-bit entry.
 *
 * Boot contract (the guest side is guest/entry.S):
 *   - every vCPU starts at the ELF entry (no INIT/SIPI) in long mode, CPL 0:
 *     CS=0x08 (64-bit code, DPL 0), DS/ES/SS/FS/GS=0x10 (flat data),
 *     CR0=PE|MP|ET|NE|WP|PG, CR4=PAE|OSFXSR|OSXMMEXCPT, EFER=LME|LMA|NXE,
 *     CR3=RINGVM_PAGE_TABLES_GPA, IDTR limit 0 (a fault before the guest's
 *     lidt is a clean triple fault), RFLAGS=0x2, RDI=vCPU index,
 *     RSI=RINGVM_BOOTINFO_GPA, RSP=0, all other GPRs 0;
 *   - the page tables identity-map [0, max(4 GiB, end of RAM)) with 2 MiB
 *     pages (4 KiB pages in the first 2 MiB), P|W|U|A(|D) everywhere except
 *     the null page at GPA 0, which is not present;
 *   - the guest ELF is an x86-64 ET_EXEC whose PT_LOAD segments lie in
 *     [RINGVM_IMAGE_GPA, RINGVM_WORKLOAD_BASE) at their physical addresses.
 *
 * KVM_SET_CPUID2 must have been done on the vCPU before boot_setup_vcpu:
 * KVM refuses EFER.LME/NXE unless the guest CPUID reports LM and NX.
 *
 * All functions return 0 or -errno and on failure write a one-line message
 * (no "ringvm: " prefix) naming what failed to error.
 */
#ifndef RINGVM_VMM_BOOT_H
#define RINGVM_VMM_BOOT_H

#include <stddef.h>
#include <stdint.h>

#include "vmm/memory.h"

/* The built-in guest linked into the binary (vmm/guest_image.S). */
void boot_builtin_guest(const void **image, size_t *size);

/* Copies the PT_LOAD segments of the ELF at elf/size into guest RAM and
 * zeroes their .bss tails; *entry = e_entry. -EINVAL for a malformed or
 * unsuitable ELF, -ENOSPC when a segment is outside guest RAM. */
int boot_load_guest(struct guest_memory *memory, const void *elf, size_t size,
                    uint64_t *entry, char *error, size_t error_size);

/* Builds the identity map at RINGVM_PAGE_TABLES_GPA. -ENOSPC when the
 * address space is too large for RINGVM_PAGE_TABLES_SIZE (> ~236 GiB). */
int boot_setup_page_tables(struct guest_memory *memory, char *error, size_t error_size);

/* KVM_GET_SREGS/KVM_SET_SREGS/KVM_SET_REGS for the direct 64-bit entry,
 * then KVM_SET_MP_STATE(RUNNABLE) so that with an in-kernel irqchip the
 * vCPUs other than 0 do not wait for INIT/SIPI. */
int boot_setup_vcpu(int vcpu_fd, unsigned index, uint64_t entry, char *error, size_t error_size);

#endif
