/*
 * What kind of KVM this host offers, where it changes what a guest may do.
 *
 * PVM (pagetable-based virtualization, CONFIG_KVM_PVM: shadow paging with
 * the guest's ring 0 run in KVM's instruction emulator, guest/linux/README.md, "On PVM hosts")
 * cannot emulate some instructions a stock x86-64 kernel uses in ring 0
 * (xrstor, popcnt, clac/stac, lock cmpxchg16b, fwait, int3) and never
 * completes a guest VMCALL (the vCPU re-executes it forever). ringvm keeps a
 * Linux guest off those paths there: a few kernel options (LINUX_BOOT_PVM_CMDLINE)
 * and the hypercall-based KVM paravirt features hidden from CPUID
 * (cpuid_hide_pv_hypercalls). On VMX/SVM hosts nothing changes.
 *
 * Ownership: pure queries of the host, cached after the first call (the
 * answer cannot change while the process runs); safe from any thread.
 */
#ifndef RINGVM_VMM_HOST_H
#define RINGVM_VMM_HOST_H

#include <stdbool.h>

/* True when /dev/kvm is PVM's: the kvm_pvm module is loaded
 * (/sys/module/kvm_pvm; PVM advertises no capability of its own). The
 * environment variable RINGVM_HOST_KVM=pvm|hardware overrides the
 * detection (tests, and a way out should the detection ever be wrong). */
bool host_kvm_is_pvm(void);

/* "pvm" or "hardware" (VMX/SVM), as host_kvm_is_pvm() decides. */
const char *host_kvm_kind(void);

#endif
