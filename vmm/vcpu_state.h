/*
 * Complete architectural state of one vCPU, in one flat serializable struct:
 * what migration sends and the destination restores.
 *
 * Everything is fixed-size so the struct can be sent as bytes between two
 * ringvm builds of the same version (the migration hello carries its size
 * and version; a mismatch is refused). MSRs are the ones from
 * KVM_GET_MSR_INDEX_LIST that KVM_GET_MSRS accepts on this host.
 */
#ifndef RINGVM_VMM_VCPU_STATE_H
#define RINGVM_VMM_VCPU_STATE_H

#include <stdbool.h>
#include <stdint.h>
#include <linux/kvm.h>

#define VCPU_STATE_VERSION   1
#define VCPU_STATE_MAX_MSRS  256
#define VCPU_STATE_XSAVE_BYTES 4096

struct vcpu_state {
    uint32_t version;               /* VCPU_STATE_VERSION */
    uint32_t msr_count;             /* valid entries in msrs[] */
    uint32_t has_lapic;             /* lapic valid (in-kernel irqchip) */
    uint32_t has_xsave;             /* xsave valid, else fpu */
    uint32_t has_xcrs;
    uint32_t reserved0;
    struct kvm_regs regs;
    struct kvm_sregs sregs;
    struct kvm_fpu fpu;
    uint8_t xsave[VCPU_STATE_XSAVE_BYTES]; /* struct kvm_xsave region */
    struct kvm_xcrs xcrs;
    struct kvm_lapic_state lapic;
    struct kvm_vcpu_events events;
    struct kvm_mp_state mp_state;
    struct kvm_debugregs debugregs;
    struct kvm_msr_entry msrs[VCPU_STATE_MAX_MSRS];
};

/* The MSR indices to save: KVM_GET_MSR_INDEX_LIST filtered to those
 * KVM_GET_MSRS accepts on vcpu_fd. Computed once per VM; the result is
 * immutable and shared by all vCPUs. Returns count or -errno. */
int vcpu_state_probe_msrs(int kvm_fd, int vcpu_fd, uint32_t *indices, uint32_t max);

/* Capture / restore. The vCPU must not be inside KVM_RUN (paused or not yet
 * started). Errors print which ioctl failed and return -errno. */
int vcpu_state_save(int vcpu_fd, const uint32_t *msr_indices, uint32_t msr_count,
                    bool has_lapic, struct vcpu_state *state);
int vcpu_state_restore(int vcpu_fd, const struct vcpu_state *state);

#endif
