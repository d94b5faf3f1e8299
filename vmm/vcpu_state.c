/*
 * vCPU state capture and restore. Order follows the kernel's KVM selftests
 * (vcpu_save_state / vcpu_load_state): events first on save; on restore
 * sregs before MSRs (EFER and friends), registers last.
 */
#include "vmm/vcpu_state.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>

#define CHECKED_IOCTL(fd, request, argument, name)                                   \
    do {                                                                             \
        if (ioctl((fd), (request), (argument)) < 0) {                                \
            int saved_errno = errno;                                                 \
            fprintf(stderr, "ringvm: %s: %s\n", (name), strerror(saved_errno));      \
            return -saved_errno;                                                     \
        }                                                                            \
    } while (0)

/* struct kvm_msrs with room for `count` entries. */
static struct kvm_msrs *msrs_allocate(uint32_t count)
{
    struct kvm_msrs *msrs = calloc(1, sizeof(*msrs) + count * sizeof(struct kvm_msr_entry));
    if (msrs != NULL)
        msrs->nmsrs = count;
    return msrs;
}

int vcpu_state_probe_msrs(int kvm_fd, int vcpu_fd, uint32_t *indices, uint32_t max)
{
    struct kvm_msr_list probe = { .nmsrs = 0 };
    if (ioctl(kvm_fd, KVM_GET_MSR_INDEX_LIST, &probe) < 0 && errno != E2BIG) {
        int saved = errno;
        fprintf(stderr, "ringvm: KVM_GET_MSR_INDEX_LIST(count): %s\n", strerror(saved));
        return -saved;
    }
    struct kvm_msr_list *list = calloc(1, sizeof(*list) + probe.nmsrs * sizeof(uint32_t));
    struct kvm_msrs *one = msrs_allocate(1);
    if (list == NULL || one == NULL) {
        free(list);
        free(one);
        fprintf(stderr, "ringvm: KVM_GET_MSR_INDEX_LIST: out of memory\n");
        return -ENOMEM;
    }
    list->nmsrs = probe.nmsrs;
    if (ioctl(kvm_fd, KVM_GET_MSR_INDEX_LIST, list) < 0) {
        int saved = errno;
        fprintf(stderr, "ringvm: KVM_GET_MSR_INDEX_LIST(%u entries): %s\n", probe.nmsrs, strerror(saved));
        free(list);
        free(one);
        return -saved;
    }
    /* KVM_GET_MSRS returns how many entries it read: keep the MSRs that
     * this host really lets us read for this vCPU. Hyper-V's synthetic MSRs
     * (0x40000000-0x400000ff) are left out: ringvm exposes no Hyper-V CPUID,
     * so the guest cannot use them, and one of them (HV_X64_MSR_TIME_REF_COUNT,
     * 0x40000020) is a clock that reads differently on every get. */
    uint32_t count = 0;
    for (uint32_t i = 0; i < list->nmsrs && count < max; i++) {
        if ((list->indices[i] & 0xffffff00u) == 0x40000000u)
            continue;
        one->nmsrs = 1;
        one->entries[0] = (struct kvm_msr_entry){ .index = list->indices[i] };
        if (ioctl(vcpu_fd, KVM_GET_MSRS, one) == 1)
            indices[count++] = list->indices[i];
    }
    free(list);
    free(one);
    return (int)count;
}

int vcpu_state_save(int vcpu_fd, const uint32_t *msr_indices, uint32_t msr_count, bool has_lapic,
                    struct vcpu_state *state)
{
    memset(state, 0, sizeof(*state));
    state->version = VCPU_STATE_VERSION;

    CHECKED_IOCTL(vcpu_fd, KVM_GET_VCPU_EVENTS, &state->events, "KVM_GET_VCPU_EVENTS");
    CHECKED_IOCTL(vcpu_fd, KVM_GET_MP_STATE, &state->mp_state, "KVM_GET_MP_STATE");
    CHECKED_IOCTL(vcpu_fd, KVM_GET_REGS, &state->regs, "KVM_GET_REGS");
    CHECKED_IOCTL(vcpu_fd, KVM_GET_SREGS, &state->sregs, "KVM_GET_SREGS");
    CHECKED_IOCTL(vcpu_fd, KVM_GET_DEBUGREGS, &state->debugregs, "KVM_GET_DEBUGREGS");

    _Static_assert(sizeof(struct kvm_xsave) <= VCPU_STATE_XSAVE_BYTES, "xsave area too small");
    if (ioctl(vcpu_fd, KVM_GET_XSAVE, (struct kvm_xsave *)(void *)state->xsave) == 0) {
        state->has_xsave = 1;
    } else {
        CHECKED_IOCTL(vcpu_fd, KVM_GET_FPU, &state->fpu, "KVM_GET_FPU");
    }
    if (ioctl(vcpu_fd, KVM_GET_XCRS, &state->xcrs) == 0)
        state->has_xcrs = 1;
    if (has_lapic) {
        CHECKED_IOCTL(vcpu_fd, KVM_GET_LAPIC, &state->lapic, "KVM_GET_LAPIC");
        state->has_lapic = 1;
    }

    if (msr_count > VCPU_STATE_MAX_MSRS)
        msr_count = VCPU_STATE_MAX_MSRS;
    struct kvm_msrs *msrs = msrs_allocate(msr_count);
    if (msrs == NULL) {
        fprintf(stderr, "ringvm: KVM_GET_MSRS: out of memory\n");
        return -ENOMEM;
    }
    for (uint32_t i = 0; i < msr_count; i++)
        msrs->entries[i].index = msr_indices[i];
    int read = ioctl(vcpu_fd, KVM_GET_MSRS, msrs);
    if (read < 0 || (uint32_t)read != msr_count) {
        int saved = read < 0 ? errno : EIO;
        fprintf(stderr, "ringvm: KVM_GET_MSRS(%u MSRs): %s (read %d)\n", msr_count, strerror(saved),
                read);
        free(msrs);
        return -saved;
    }
    memcpy(state->msrs, msrs->entries, msr_count * sizeof(struct kvm_msr_entry));
    state->msr_count = msr_count;
    free(msrs);
    return 0;
}

int vcpu_state_restore(int vcpu_fd, const struct vcpu_state *state)
{
    if (state->version != VCPU_STATE_VERSION || state->msr_count > VCPU_STATE_MAX_MSRS) {
        fprintf(stderr, "ringvm: vCPU state: version %u with %u MSRs is not restorable (want version %u)\n",
                state->version, state->msr_count, VCPU_STATE_VERSION);
        return -EINVAL;
    }
    CHECKED_IOCTL(vcpu_fd, KVM_SET_SREGS, &state->sregs, "KVM_SET_SREGS");

    struct kvm_msrs *msrs = msrs_allocate(state->msr_count);
    if (msrs == NULL) {
        fprintf(stderr, "ringvm: KVM_SET_MSRS: out of memory\n");
        return -ENOMEM;
    }
    memcpy(msrs->entries, state->msrs, state->msr_count * sizeof(struct kvm_msr_entry));
    int written = ioctl(vcpu_fd, KVM_SET_MSRS, msrs);
    if (written < 0 || (uint32_t)written != state->msr_count) {
        int saved = written < 0 ? errno : EIO;
        fprintf(stderr, "ringvm: KVM_SET_MSRS(%u MSRs): %s (MSR 0x%x refused)\n", state->msr_count,
                strerror(saved),
                written >= 0 && (uint32_t)written < state->msr_count ? state->msrs[written].index : 0);
        free(msrs);
        return -saved;
    }
    free(msrs);

    if (state->has_xcrs)
        CHECKED_IOCTL(vcpu_fd, KVM_SET_XCRS, &state->xcrs, "KVM_SET_XCRS");
    if (state->has_xsave)
        CHECKED_IOCTL(vcpu_fd, KVM_SET_XSAVE, (const struct kvm_xsave *)(const void *)state->xsave,
                      "KVM_SET_XSAVE");
    else
        CHECKED_IOCTL(vcpu_fd, KVM_SET_FPU, &state->fpu, "KVM_SET_FPU");
    if (state->has_lapic)
        CHECKED_IOCTL(vcpu_fd, KVM_SET_LAPIC, &state->lapic, "KVM_SET_LAPIC");
    CHECKED_IOCTL(vcpu_fd, KVM_SET_VCPU_EVENTS, &state->events, "KVM_SET_VCPU_EVENTS");
    CHECKED_IOCTL(vcpu_fd, KVM_SET_MP_STATE, &state->mp_state, "KVM_SET_MP_STATE");
    CHECKED_IOCTL(vcpu_fd, KVM_SET_DEBUGREGS, &state->debugregs, "KVM_SET_DEBUGREGS");
    CHECKED_IOCTL(vcpu_fd, KVM_SET_REGS, &state->regs, "KVM_SET_REGS");
    return 0;
}
