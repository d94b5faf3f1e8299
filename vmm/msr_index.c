/*
 * The MSRs a vCPU's state is made of: KVM_GET_MSR_INDEX_LIST filtered to
 * what KVM_GET_MSRS really reads on this host (migration/machine_state_kvm.c
 * captures and restores them).
 */
#include "vmm/msr_index.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <linux/kvm.h>

/* struct kvm_msrs with room for `count` entries. */
static struct kvm_msrs *msrs_allocate(uint32_t count)
{
    struct kvm_msrs *msrs = calloc(1, sizeof(*msrs) + count * sizeof(struct kvm_msr_entry));
    if (msrs != NULL)
        msrs->nmsrs = count;
    return msrs;
}

int msr_index_probe(int kvm_fd, int vcpu_fd, uint32_t *indices, uint32_t max)
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
