/*
 * The Intel MultiProcessor Specification 1.4 table a Linux guest reads to
 * find its vCPUs and the IOAPIC (CONFIG_X86_MPPARSE; ringvm has no ACPI).
 *
 * Layout (structures as arch/x86/include/asm/mpspec_def.h, which follows
 * the MP spec; the kernel has no uapi copy, so they are defined in
 * mptable.c):
 *   floating pointer (16 bytes, "_MP_", spec 1.4, physptr -> table)
 *   config table header (44 bytes, "PCMP")
 *   one processor entry per vCPU: APIC id = index, enabled, BSP on 0
 *   bus 0 "ISA"
 *   IOAPIC id = vcpu_count, version 0x11 (KVM's IOAPIC), at 0xfec00000
 *   I/O interrupt entries ISA IRQ n -> IOAPIC pin n, n = 0..15
 *   local interrupt entries: ExtINT -> LAPIC 0 LINT0, NMI -> all LINT1
 *
 * Why IRQ 0 goes to pin 0 (not pin 2 as on real PCs and QEMU): ringvm keeps
 * KVM's default GSI routing (kvm_setup_default_irq_routing: GSI n -> IOAPIC
 * pin n and PIC pin n for n < 16), and the in-kernel PIT raises GSI 0, so
 * the timer arrives on IOAPIC pin 0. QEMU installs its own routing
 * (GSI 0 -> pin 2) and describes it with an override; Firecracker keeps the
 * default routing and writes identity entries, as here. If ringvm ever sets
 * KVM_SET_GSI_ROUTING, this table must follow it.
 *
 * Pure: writes into a caller's buffer that will live at guest-physical
 * address gpa. No shared state.
 */
#ifndef RINGVM_VMM_MPTABLE_H
#define RINGVM_VMM_MPTABLE_H

#include <stddef.h>
#include <stdint.h>

#define MPTABLE_IOAPIC_ADDRESS  0xFEC00000U
#define MPTABLE_LAPIC_ADDRESS   0xFEE00000U
#define MPTABLE_IOAPIC_VERSION  0x11
#define MPTABLE_LAPIC_VERSION   0x14
#define MPTABLE_ISA_IRQS        16
/* APIC ids are 8 bits, 0xff is broadcast and the IOAPIC takes id
 * vcpu_count: at most 254 vCPUs. */
#define MPTABLE_MAX_VCPUS       254

/* Bytes the floating pointer and the table take for vcpu_count vCPUs. */
size_t mptable_size(unsigned vcpu_count);

/* Writes the floating pointer at buffer[0] (guest address gpa, 16-byte
 * aligned) and the config table right after it, with both checksums.
 * *written = mptable_size(). -EINVAL (bad count or alignment) or -ENOSPC
 * ("MP table for 200 vCPUs needs 4380 bytes, 4096 are reserved at 0x9fc00")
 * with a message in error. */
int mptable_write(void *buffer, size_t buffer_size, uint64_t gpa, unsigned vcpu_count, size_t *written,
                  char *error, size_t error_size);

#endif
