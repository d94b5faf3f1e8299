/*
 * The MSR indices a vCPU's state carries (migration/machine_state.h's msrs
 * section): KVM_GET_MSR_INDEX_LIST filtered to the MSRs KVM_GET_MSRS reads
 * on this host. Computed once per VM by vm_create; the result is immutable
 * and shared by all vCPUs.
 */
#ifndef RINGVM_VMM_MSR_INDEX_H
#define RINGVM_VMM_MSR_INDEX_H

#include <stdint.h>

/* Fills indices (at most max) and returns the count, or -errno with the
 * ioctl that failed printed. */
int msr_index_probe(int kvm_fd, int vcpu_fd, uint32_t *indices, uint32_t max);

#endif
