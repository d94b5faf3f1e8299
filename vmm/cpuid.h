/*
 * CPUID for a vCPU: KVM_GET_SUPPORTED_CPUID normalised per vCPU, as
 * Firecracker's cpu_config/x86_64/cpuid/normalize.rs (plus its intel/ and
 * amd/ parts) does for the topology a Linux guest reads:
 *
 *   leaf 1      EBX[31:24] initial APIC id = vCPU index, EBX[23:16] logical
 *               processors per package = vcpu_count rounded up to a power
 *               of two, EBX[15:8] CLFLUSH size 8 (x 8 bytes); EDX[28] HTT =
 *               vcpu_count > 1; ECX[31] hypervisor = 1, ECX[24] TSC-deadline
 *               = 1 (emulated by KVM's in-kernel LAPIC: needs
 *               KVM_CREATE_IRQCHIP), ECX[15] PDCM = 0 (no
 *               IA32_PERF_CAPABILITIES)
 *   leaf 4      (deterministic caches) EAX[25:14] sharing: L1/L2 one thread,
 *               L3 every vCPU; EAX[31:26] cores per package - 1 = count - 1
 *   leaf 0xB    subleaf 0 SMT level (shift 0, 1 thread, type 1), subleaf 1
 *               core level (shift = bits for vcpu_count, count, type 2,
 *               added when KVM did not return it); EDX = x2APIC id = index
 *   leaf 0x1F   when KVM returns it: replaced by a copy of leaf 0xB
 *   AMD         0x80000008 ECX NC = count - 1, ApicIdSize = bits for count;
 *               0x8000001D sharing like leaf 4; 0x8000001E extended APIC
 *               id = index, compute unit = index, one thread, one node
 *   0x40000000 and 0x40000001 (KVM signature, kvmclock features) are kept
 *   as KVM returned them, like every leaf not listed.
 *
 * No SMT: every vCPU is a core of one package. The core-level shift is the
 * number of bits for vcpu_count (Firecracker uses its maximum vCPU count;
 * either satisfies 2^shift >= count, and this one agrees with leaf 1's
 * logical count).
 *
 * Ownership: pure functions on the caller's copies; the KVM wrappers are
 * called by the thread creating the VM.
 */
#ifndef RINGVM_VMM_CPUID_H
#define RINGVM_VMM_CPUID_H

#include <stddef.h>
#include <stdint.h>
#include <linux/kvm.h>

/* The uapi header spells it KVM_CPUID_FLAG_SIGNIFCANT_INDEX. */
#define CPUID_FLAG_SIGNIFICANT_INDEX KVM_CPUID_FLAG_SIGNIFCANT_INDEX

/* struct kvm_cpuid2 with room for `entries` entries, nent = entries; NULL
 * when out of memory. free() it. */
struct kvm_cpuid2 *cpuid_allocate(uint32_t entries);

/* A normalised copy of `supported` for vCPU vcpu_index of vcpu_count
 * (1..RINGVM_MAX_VCPUS = 64: leaf 4 has 6 bits for cores - 1), malloc'd
 * (free() it); `supported` is not modified. NULL with a message in error
 * when the count or index is out of range, leaf 1 is missing, or out of
 * memory. */
struct kvm_cpuid2 *cpuid_normalize(const struct kvm_cpuid2 *supported, unsigned vcpu_index,
                                   unsigned vcpu_count, char *error, size_t error_size);

/* Entry for (function, index), or NULL. The index is only compared for
 * entries flagged CPUID_FLAG_SIGNIFICANT_INDEX, as KVM does. */
struct kvm_cpuid_entry2 *cpuid_find(struct kvm_cpuid2 *cpuid, uint32_t function, uint32_t index);

/* KVM_GET_SUPPORTED_CPUID on the /dev/kvm fd, retrying with a doubled
 * entry count on E2BIG. *supported is malloc'd. */
int cpuid_get_supported(int kvm_fd, struct kvm_cpuid2 **supported, char *error, size_t error_size);

/* Clears the KVM paravirt features that work through VMCALL hypercalls
 * (leaf 0x40000001 EAX: PV_UNHALT, PV_SEND_IPI, PV_SCHED_YIELD), for hosts
 * that never complete a guest's VMCALL (PVM, vmm/host.h): a Linux guest
 * with PV IPIs hangs in its first IPI to bring up the second vCPU. The
 * guest falls back to the LAPIC (IPIs) and native spinning. Returns how
 * many features were cleared (0 when the leaf is absent). */
unsigned cpuid_hide_pv_hypercalls(struct kvm_cpuid2 *cpuid);

/* cpuid_normalize, then KVM_SET_CPUID2 on the vCPU fd. */
int cpuid_setup_vcpu(int vcpu_fd, const struct kvm_cpuid2 *supported, unsigned vcpu_index,
                     unsigned vcpu_count, char *error, size_t error_size);

#endif
