/*
 * CPUID normalisation per vCPU (see cpuid.h for every field and why).
 */
#include "vmm/cpuid.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>

#include "guest/abi.h"

#define CPUID_LEAF_FEATURES         0x1
#define CPUID_LEAF_CACHE            0x4
#define CPUID_LEAF_TOPOLOGY         0xB
#define CPUID_LEAF_TOPOLOGY_V2      0x1F
#define CPUID_LEAF_AMD_SIZES        0x80000008
#define CPUID_LEAF_AMD_CACHE        0x8000001D
#define CPUID_LEAF_AMD_TOPOLOGY     0x8000001E

#define CPUID_LEAF_KVM_FEATURES     0x40000001
/* linux/kvm_para.h (KVM_FEATURE_*), bit numbers. */
#define CPUID_KVM_FEATURE_PV_UNHALT      7
#define CPUID_KVM_FEATURE_PV_SEND_IPI    11
#define CPUID_KVM_FEATURE_PV_SCHED_YIELD 13

#define CPUID_1_ECX_PDCM            (1U << 15)
#define CPUID_1_ECX_TSC_DEADLINE    (1U << 24)
#define CPUID_1_ECX_HYPERVISOR      (1U << 31)
#define CPUID_1_EDX_HTT             (1U << 28)

#define CPUID_TOPOLOGY_LEVEL_SMT    1
#define CPUID_TOPOLOGY_LEVEL_CORE   2

struct kvm_cpuid2 *cpuid_allocate(uint32_t entries)
{
    struct kvm_cpuid2 *cpuid = calloc(1, sizeof(*cpuid) + (size_t)entries * sizeof(struct kvm_cpuid_entry2));
    if (cpuid != NULL)
        cpuid->nent = entries;
    return cpuid;
}

struct kvm_cpuid_entry2 *cpuid_find(struct kvm_cpuid2 *cpuid, uint32_t function, uint32_t index)
{
    for (uint32_t i = 0; i < cpuid->nent; i++) {
        struct kvm_cpuid_entry2 *entry = &cpuid->entries[i];
        if (entry->function != function)
            continue;
        if ((entry->flags & CPUID_FLAG_SIGNIFICANT_INDEX) && entry->index != index)
            continue;
        return entry;
    }
    return NULL;
}

/* Replaces bits [low, high] of *word with value (which must fit). */
static void set_bits(uint32_t *word, unsigned low, unsigned high, uint32_t value)
{
    uint32_t mask = (high - low == 31) ? UINT32_MAX : (((1U << (high - low + 1)) - 1) << low);
    *word = (*word & ~mask) | ((value << low) & mask);
}

static uint32_t get_bits(uint32_t word, unsigned low, unsigned high)
{
    uint32_t mask = (high - low == 31) ? UINT32_MAX : ((1U << (high - low + 1)) - 1);
    return (word >> low) & mask;
}

/* Smallest n with 2^n >= count. */
static uint32_t bits_for(unsigned count)
{
    uint32_t bits = 0;
    while ((1U << bits) < count)
        bits++;
    return bits;
}

static bool vendor_is_amd(struct kvm_cpuid2 *cpuid)
{
    struct kvm_cpuid_entry2 *leaf0 = cpuid_find(cpuid, 0, 0);
    if (leaf0 == NULL)
        return false;
    char vendor[12];
    memcpy(vendor, &leaf0->ebx, 4);
    memcpy(vendor + 4, &leaf0->edx, 4);
    memcpy(vendor + 8, &leaf0->ecx, 4);
    return memcmp(vendor, "AuthenticAMD", 12) == 0 || memcmp(vendor, "HygonGenuine", 12) == 0;
}

static void normalize_features(struct kvm_cpuid_entry2 *leaf1, unsigned index, unsigned count)
{
    set_bits(&leaf1->ebx, 8, 15, 8);
    set_bits(&leaf1->ebx, 16, 23, 1U << bits_for(count));
    set_bits(&leaf1->ebx, 24, 31, index);
    leaf1->ecx &= ~CPUID_1_ECX_PDCM;
    leaf1->ecx |= CPUID_1_ECX_TSC_DEADLINE | CPUID_1_ECX_HYPERVISOR;
    if (count > 1)
        leaf1->edx |= CPUID_1_EDX_HTT;
    else
        leaf1->edx &= ~CPUID_1_EDX_HTT;
}

/* Leaf 4 and AMD's 0x8000001D share the cache-sharing field EAX[25:14]. */
static void normalize_cache_sharing(struct kvm_cpuid2 *cpuid, uint32_t function, unsigned count,
                                    bool cores_field)
{
    for (uint32_t i = 0; i < cpuid->nent; i++) {
        struct kvm_cpuid_entry2 *entry = &cpuid->entries[i];
        if (entry->function != function || get_bits(entry->eax, 0, 4) == 0)
            continue;   /* cache type 0: no cache at this subleaf */
        uint32_t level = get_bits(entry->eax, 5, 7);
        if (level == 1 || level == 2)
            set_bits(&entry->eax, 14, 25, 0);           /* one thread per core */
        else if (level == 3)
            set_bits(&entry->eax, 14, 25, count - 1);   /* every vCPU */
        if (cores_field)
            set_bits(&entry->eax, 26, 31, count - 1);
    }
}

static void set_topology_level(struct kvm_cpuid_entry2 *entry, unsigned index, unsigned count)
{
    entry->flags |= CPUID_FLAG_SIGNIFICANT_INDEX;
    entry->eax = 0;
    entry->ebx = 0;
    entry->ecx = 0;
    entry->edx = index;     /* x2APIC id, at every level */
    switch (entry->index) {
    case 0:
        set_bits(&entry->eax, 0, 4, 0);                 /* no SMT bits */
        set_bits(&entry->ebx, 0, 15, 1);
        set_bits(&entry->ecx, 8, 15, CPUID_TOPOLOGY_LEVEL_SMT);
        break;
    case 1:
        set_bits(&entry->eax, 0, 4, bits_for(count));
        set_bits(&entry->ebx, 0, 15, count);
        set_bits(&entry->ecx, 0, 7, 1);
        set_bits(&entry->ecx, 8, 15, CPUID_TOPOLOGY_LEVEL_CORE);
        break;
    default:
        /* KVM returns no deeper level since 6.2 (and 5.10 stable): end the
         * enumeration here (level type 0, ECX[7:0] = the subleaf). */
        set_bits(&entry->ecx, 0, 7, entry->index & 0xff);
        break;
    }
}

static void normalize_amd(struct kvm_cpuid2 *cpuid, unsigned index, unsigned count)
{
    struct kvm_cpuid_entry2 *sizes = cpuid_find(cpuid, CPUID_LEAF_AMD_SIZES, 0);
    if (sizes != NULL) {
        set_bits(&sizes->ecx, 0, 7, count - 1);
        set_bits(&sizes->ecx, 12, 15, bits_for(count));
    }
    normalize_cache_sharing(cpuid, CPUID_LEAF_AMD_CACHE, count, false);
    struct kvm_cpuid_entry2 *topology = cpuid_find(cpuid, CPUID_LEAF_AMD_TOPOLOGY, 0);
    if (topology != NULL) {
        topology->eax = index;                          /* extended APIC id */
        set_bits(&topology->ebx, 0, 7, index & 0xff);   /* compute unit = core */
        set_bits(&topology->ebx, 8, 15, 0);             /* one thread per unit */
        set_bits(&topology->ecx, 0, 7, 0);              /* node 0 */
        set_bits(&topology->ecx, 8, 10, 0);             /* one node per package */
    }
}

struct kvm_cpuid2 *cpuid_normalize(const struct kvm_cpuid2 *supported, unsigned vcpu_index,
                                   unsigned vcpu_count, char *error, size_t error_size)
{
    if (vcpu_count == 0 || vcpu_count > RINGVM_MAX_VCPUS || vcpu_index >= vcpu_count) {
        snprintf(error, error_size, "CPUID: vCPU %u of %u (1 to %d vCPUs)", vcpu_index, vcpu_count,
                 RINGVM_MAX_VCPUS);
        return NULL;
    }
    uint32_t topology_entries = 0;
    for (uint32_t i = 0; i < supported->nent; i++)
        if (supported->entries[i].function == CPUID_LEAF_TOPOLOGY)
            topology_entries++;
    /* Room for an added 0xB subleaf 1 and 0x1F copies of every 0xB subleaf. */
    uint32_t capacity = supported->nent + 2 * (topology_entries + 1);
    struct kvm_cpuid2 *cpuid = cpuid_allocate(capacity);
    if (cpuid == NULL) {
        snprintf(error, error_size, "CPUID: out of memory for %u entries", capacity);
        return NULL;
    }
    cpuid->nent = supported->nent;
    memcpy(cpuid->entries, supported->entries, supported->nent * sizeof(struct kvm_cpuid_entry2));

    struct kvm_cpuid_entry2 *leaf1 = cpuid_find(cpuid, CPUID_LEAF_FEATURES, 0);
    if (leaf1 == NULL) {
        snprintf(error, error_size, "CPUID: leaf 1 is missing from KVM_GET_SUPPORTED_CPUID (%u entries)",
                 supported->nent);
        free(cpuid);
        return NULL;
    }
    normalize_features(leaf1, vcpu_index, vcpu_count);
    if (!vendor_is_amd(cpuid))
        normalize_cache_sharing(cpuid, CPUID_LEAF_CACHE, vcpu_count, true);

    if (cpuid_find(cpuid, CPUID_LEAF_TOPOLOGY, 0) != NULL) {
        bool has_core_level = false;
        for (uint32_t i = 0; i < cpuid->nent; i++)
            if (cpuid->entries[i].function == CPUID_LEAF_TOPOLOGY &&
                (cpuid->entries[i].flags & CPUID_FLAG_SIGNIFICANT_INDEX) && cpuid->entries[i].index == 1)
                has_core_level = true;
        if (!has_core_level) {
            /* KVM stopped returning subleaf 1 in 6.2 (and 5.10 stable). */
            cpuid->entries[cpuid->nent++] = (struct kvm_cpuid_entry2){
                .function = CPUID_LEAF_TOPOLOGY, .index = 1, .flags = CPUID_FLAG_SIGNIFICANT_INDEX,
            };
        }
        for (uint32_t i = 0; i < cpuid->nent; i++)
            if (cpuid->entries[i].function == CPUID_LEAF_TOPOLOGY)
                set_topology_level(&cpuid->entries[i], vcpu_index, vcpu_count);

        /* Leaf 0x1F (a superset of 0xB, preferred by Linux when present):
         * the same levels, so drop KVM's and copy 0xB's. */
        bool has_v2 = false;
        uint32_t kept = 0;
        for (uint32_t i = 0; i < cpuid->nent; i++) {
            if (cpuid->entries[i].function == CPUID_LEAF_TOPOLOGY_V2) {
                has_v2 = true;
                continue;
            }
            cpuid->entries[kept++] = cpuid->entries[i];
        }
        cpuid->nent = kept;
        if (has_v2) {
            for (uint32_t i = 0; i < kept; i++) {
                if (cpuid->entries[i].function != CPUID_LEAF_TOPOLOGY)
                    continue;
                struct kvm_cpuid_entry2 copy = cpuid->entries[i];
                copy.function = CPUID_LEAF_TOPOLOGY_V2;
                cpuid->entries[cpuid->nent++] = copy;
            }
        }
    }
    if (vendor_is_amd(cpuid))
        normalize_amd(cpuid, vcpu_index, vcpu_count);
    return cpuid;
}

unsigned cpuid_hide_pv_hypercalls(struct kvm_cpuid2 *cpuid)
{
    struct kvm_cpuid_entry2 *features = cpuid_find(cpuid, CPUID_LEAF_KVM_FEATURES, 0);
    if (features == NULL)
        return 0;
    static const unsigned hypercall_features[] = {
        CPUID_KVM_FEATURE_PV_UNHALT, CPUID_KVM_FEATURE_PV_SEND_IPI, CPUID_KVM_FEATURE_PV_SCHED_YIELD,
    };
    unsigned cleared = 0;
    for (unsigned i = 0; i < sizeof(hypercall_features) / sizeof(hypercall_features[0]); i++) {
        uint32_t bit = 1U << hypercall_features[i];
        if (features->eax & bit) {
            features->eax &= ~bit;
            cleared++;
        }
    }
    return cleared;
}

int cpuid_get_supported(int kvm_fd, struct kvm_cpuid2 **supported, char *error, size_t error_size)
{
    for (uint32_t entries = 128; entries <= 4096; entries *= 2) {
        struct kvm_cpuid2 *cpuid = cpuid_allocate(entries);
        if (cpuid == NULL) {
            snprintf(error, error_size, "KVM_GET_SUPPORTED_CPUID: out of memory for %u entries", entries);
            return -ENOMEM;
        }
        if (ioctl(kvm_fd, KVM_GET_SUPPORTED_CPUID, cpuid) == 0) {
            *supported = cpuid;
            return 0;
        }
        int saved = errno;
        free(cpuid);
        if (saved != E2BIG) {
            snprintf(error, error_size, "KVM_GET_SUPPORTED_CPUID (%u entries): %s", entries, strerror(saved));
            return -saved;
        }
    }
    snprintf(error, error_size, "KVM_GET_SUPPORTED_CPUID: more than 4096 entries");
    return -E2BIG;
}

int cpuid_setup_vcpu(int vcpu_fd, const struct kvm_cpuid2 *supported, unsigned vcpu_index,
                     unsigned vcpu_count, char *error, size_t error_size)
{
    struct kvm_cpuid2 *cpuid = cpuid_normalize(supported, vcpu_index, vcpu_count, error, error_size);
    if (cpuid == NULL)
        return -EINVAL;
    int result = 0;
    if (ioctl(vcpu_fd, KVM_SET_CPUID2, cpuid) != 0) {
        int saved = errno;
        snprintf(error, error_size, "vcpu %u: KVM_SET_CPUID2 (%u entries): %s", vcpu_index, cpuid->nent,
                 strerror(saved));
        result = -saved;
    }
    free(cpuid);
    return result;
}
