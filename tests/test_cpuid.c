/*
 * CPUID normalisation (vmm/cpuid.c) on synthetic KVM_GET_SUPPORTED_CPUID
 * tables, Intel-like and AMD-like: every field it changes and every leaf it
 * must keep, with exact values.
 */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "vmm/cpuid.h"

#define SIGNIFICANT CPUID_FLAG_SIGNIFICANT_INDEX

static char error[256];

static struct kvm_cpuid2 *table_of(const struct kvm_cpuid_entry2 *entries, uint32_t count)
{
    struct kvm_cpuid2 *cpuid = cpuid_allocate(count);
    cr_assert_not_null(cpuid);
    memcpy(cpuid->entries, entries, count * sizeof(*entries));
    return cpuid;
}

static const struct kvm_cpuid_entry2 intel_entries[] = {
    { .function = 0, .eax = 0x1f, .ebx = 0x756e6547, .edx = 0x49656e69, .ecx = 0x6c65746e },   /* GenuineIntel */
    { .function = 1, .eax = 0x000906ea, .ebx = 0x0f100800, .ecx = 0x00008201, .edx = 0x178bfbff },
    { .function = 4, .index = 0, .flags = SIGNIFICANT, .eax = 0x1c004121, .ebx = 0x01c0003f, .ecx = 0x3f },
    { .function = 4, .index = 1, .flags = SIGNIFICANT, .eax = 0x1c004122, .ebx = 0x01c0003f, .ecx = 0x3f },
    { .function = 4, .index = 2, .flags = SIGNIFICANT, .eax = 0x1c004143, .ebx = 0x03c0003f, .ecx = 0x3ff },
    { .function = 4, .index = 3, .flags = SIGNIFICANT, .eax = 0x1c03c163, .ebx = 0x03c0003f, .ecx = 0x3fff,
      .edx = 0x6 },
    { .function = 4, .index = 4, .flags = SIGNIFICANT },
    { .function = 0xb, .index = 0, .flags = SIGNIFICANT, .eax = 1, .ebx = 2, .ecx = 0x100, .edx = 0x0f },
    { .function = 0x1f, .index = 0, .flags = SIGNIFICANT, .eax = 1, .ebx = 2, .ecx = 0x100, .edx = 0x0f },
    { .function = 0x1f, .index = 1, .flags = SIGNIFICANT, .eax = 4, .ebx = 16, .ecx = 0x201, .edx = 0x0f },
    { .function = 0x1f, .index = 2, .flags = SIGNIFICANT, .eax = 5, .ebx = 16, .ecx = 0x502, .edx = 0x0f },
    { .function = 0x40000000, .eax = 0x40000001, .ebx = 0x4b4d564b, .ecx = 0x564b4d56, .edx = 0x4d },
    { .function = 0x40000001, .eax = 0x01007afb, .edx = 0 },
    { .function = 0x80000008, .eax = 0x3027, .ecx = 0 },
};
#define INTEL_COUNT (sizeof(intel_entries) / sizeof(intel_entries[0]))

static struct kvm_cpuid_entry2 *expect_entry(struct kvm_cpuid2 *cpuid, uint32_t function, uint32_t index)
{
    struct kvm_cpuid_entry2 *entry = cpuid_find(cpuid, function, index);
    cr_assert_not_null(entry, "leaf 0x%x subleaf %u missing", function, index);
    return entry;
}

static void expect_registers(struct kvm_cpuid2 *cpuid, uint32_t function, uint32_t index, uint32_t eax, uint32_t ebx,
                             uint32_t ecx, uint32_t edx)
{
    struct kvm_cpuid_entry2 *entry = expect_entry(cpuid, function, index);
    cr_assert_eq(entry->eax, eax, "0x%x.%u eax 0x%x", function, index, entry->eax);
    cr_assert_eq(entry->ebx, ebx, "0x%x.%u ebx 0x%x", function, index, entry->ebx);
    cr_assert_eq(entry->ecx, ecx, "0x%x.%u ecx 0x%x", function, index, entry->ecx);
    cr_assert_eq(entry->edx, edx, "0x%x.%u edx 0x%x", function, index, entry->edx);
}

static unsigned count_function(const struct kvm_cpuid2 *cpuid, uint32_t function)
{
    unsigned count = 0;
    for (uint32_t i = 0; i < cpuid->nent; i++)
        if (cpuid->entries[i].function == function)
            count++;
    return count;
}

Test(cpuid, intel_vcpu_1_of_3)
{
    struct kvm_cpuid2 *supported = table_of(intel_entries, INTEL_COUNT);
    struct kvm_cpuid2 *cpuid = cpuid_normalize(supported, 1, 3, error, sizeof(error));
    cr_assert_not_null(cpuid, "%s", error);
    /* Leaf 1: APIC id 1, 4 logical ids, CLFLUSH 8; hypervisor + TSC-deadline, no PDCM; HTT. */
    expect_registers(cpuid, 1, 0, 0x000906ea, 0x01040800, 0x81000201, 0x178bfbff);
    /* Leaf 4: one thread per L1/L2, L3 shared by the 3, 3 cores. */
    expect_registers(cpuid, 4, 0, 0x08000121, 0x01c0003f, 0x3f, 0);
    expect_registers(cpuid, 4, 1, 0x08000122, 0x01c0003f, 0x3f, 0);
    expect_registers(cpuid, 4, 2, 0x08000143, 0x03c0003f, 0x3ff, 0);
    expect_registers(cpuid, 4, 3, 0x08008163, 0x03c0003f, 0x3fff, 0x6);
    expect_registers(cpuid, 4, 4, 0, 0, 0, 0);
    /* Leaf 0xB: SMT level, and the core level KVM no longer returns. */
    expect_registers(cpuid, 0xb, 0, 0, 1, 0x100, 1);
    expect_registers(cpuid, 0xb, 1, 2, 3, 0x201, 1);
    cr_assert_eq(expect_entry(cpuid, 0xb, 1)->flags, SIGNIFICANT);
    cr_assert_eq(count_function(cpuid, 0xb), 2);
    /* Leaf 0x1F: KVM's three levels replaced by copies of 0xB's two. */
    cr_assert_eq(count_function(cpuid, 0x1f), 2);
    expect_registers(cpuid, 0x1f, 0, 0, 1, 0x100, 1);
    expect_registers(cpuid, 0x1f, 1, 2, 3, 0x201, 1);
    cr_assert_eq(expect_entry(cpuid, 0x1f, 1)->flags, SIGNIFICANT);
    /* Kept as KVM gave them. */
    expect_registers(cpuid, 0, 0, 0x1f, 0x756e6547, 0x6c65746e, 0x49656e69);
    expect_registers(cpuid, 0x40000000, 0, 0x40000001, 0x4b4d564b, 0x564b4d56, 0x4d);
    expect_registers(cpuid, 0x40000001, 0, 0x01007afb, 0, 0, 0);
    /* Intel: AMD's core count leaf is not touched. */
    expect_registers(cpuid, 0x80000008, 0, 0x3027, 0, 0, 0);
    cr_assert_eq(cpuid->nent, INTEL_COUNT - 3 + 1 + 2);
    /* The input is not modified. */
    cr_assert_eq(memcmp(supported->entries, intel_entries, sizeof(intel_entries)), 0);
    free(cpuid);
    free(supported);
}

Test(cpuid, intel_single_vcpu)
{
    struct kvm_cpuid2 *supported = table_of(intel_entries, INTEL_COUNT);
    struct kvm_cpuid2 *cpuid = cpuid_normalize(supported, 0, 1, error, sizeof(error));
    cr_assert_not_null(cpuid, "%s", error);
    expect_registers(cpuid, 1, 0, 0x000906ea, 0x00010800, 0x81000201, 0x078bfbff);
    expect_registers(cpuid, 4, 3, 0x00000163, 0x03c0003f, 0x3fff, 0x6);
    expect_registers(cpuid, 0xb, 1, 0, 1, 0x201, 0);
    free(cpuid);
    free(supported);
}

Test(cpuid, intel_last_of_64)
{
    struct kvm_cpuid2 *supported = table_of(intel_entries, INTEL_COUNT);
    struct kvm_cpuid2 *cpuid = cpuid_normalize(supported, 63, 64, error, sizeof(error));
    cr_assert_not_null(cpuid, "%s", error);
    expect_registers(cpuid, 1, 0, 0x000906ea, 0x3f400800, 0x81000201, 0x178bfbff);
    expect_registers(cpuid, 4, 0, 0xfc000121, 0x01c0003f, 0x3f, 0);
    expect_registers(cpuid, 4, 3, 0xfc0fc163, 0x03c0003f, 0x3fff, 0x6);
    expect_registers(cpuid, 0xb, 0, 0, 1, 0x100, 63);
    expect_registers(cpuid, 0xb, 1, 6, 64, 0x201, 63);
    free(cpuid);
    free(supported);
}

Test(cpuid, keeps_an_existing_core_level)
{
    const struct kvm_cpuid_entry2 entries[] = {
        { .function = 1, .ebx = 0, .ecx = 0, .edx = 0 },
        { .function = 0xb, .index = 0, .flags = SIGNIFICANT, .eax = 1, .ebx = 2, .ecx = 0x100 },
        { .function = 0xb, .index = 1, .flags = SIGNIFICANT, .eax = 4, .ebx = 8, .ecx = 0x201 },
        { .function = 0xb, .index = 2, .flags = SIGNIFICANT, .eax = 9, .ebx = 9, .ecx = 0x302 },
    };
    struct kvm_cpuid2 *supported = table_of(entries, 4);
    struct kvm_cpuid2 *cpuid = cpuid_normalize(supported, 1, 2, error, sizeof(error));
    cr_assert_not_null(cpuid, "%s", error);
    cr_assert_eq(cpuid->nent, 4, "no subleaf added, no 0x1F created");
    expect_registers(cpuid, 0xb, 0, 0, 1, 0x100, 1);
    expect_registers(cpuid, 0xb, 1, 1, 2, 0x201, 1);
    expect_registers(cpuid, 0xb, 2, 0, 0, 0x2, 1);
    /* Not Intel by vendor, but leaf 1 is normalised regardless. */
    expect_registers(cpuid, 1, 0, 0, 0x01020800, 0x81000000, 0x10000000);
    free(cpuid);
    free(supported);
}

static const struct kvm_cpuid_entry2 amd_entries[] = {
    { .function = 0, .eax = 0x10, .ebx = 0x68747541, .edx = 0x69746e65, .ecx = 0x444d4163 },   /* AuthenticAMD */
    { .function = 1, .eax = 0x00a00f11, .ebx = 0x02100800, .ecx = 0x7ed8320b, .edx = 0x178bfbff },
    { .function = 4, .index = 0, .flags = SIGNIFICANT, .eax = 0x1c004121 },
    { .function = 0x40000000, .eax = 0x40000001, .ebx = 0x4b4d564b, .ecx = 0x564b4d56, .edx = 0x4d },
    { .function = 0x40000001, .eax = 0x01007afb },
    { .function = 0x80000008, .eax = 0x3030, .ecx = 0x0000700f },
    { .function = 0x8000001d, .index = 0, .flags = SIGNIFICANT, .eax = 0x00004121, .ebx = 0x01c0003f },
    { .function = 0x8000001d, .index = 1, .flags = SIGNIFICANT, .eax = 0x0003c163, .ebx = 0x03c0003f },
    { .function = 0x8000001e, .eax = 0x12, .ebx = 0x0105, .ecx = 0x0301 },
};

Test(cpuid, amd_vcpu_2_of_4)
{
    struct kvm_cpuid2 *supported = table_of(amd_entries, sizeof(amd_entries) / sizeof(amd_entries[0]));
    struct kvm_cpuid2 *cpuid = cpuid_normalize(supported, 2, 4, error, sizeof(error));
    cr_assert_not_null(cpuid, "%s", error);
    /* Leaf 1: PDCM was clear; TSC-deadline and hypervisor set. */
    expect_registers(cpuid, 1, 0, 0x00a00f11, 0x02040800, 0xffd8320b, 0x178bfbff);
    /* AMD: leaf 4 is reserved, left alone. */
    expect_registers(cpuid, 4, 0, 0x1c004121, 0, 0, 0);
    expect_registers(cpuid, 0x80000008, 0, 0x3030, 0, 0x2003, 0);
    expect_registers(cpuid, 0x8000001d, 0, 0x00000121, 0x01c0003f, 0, 0);
    expect_registers(cpuid, 0x8000001d, 1, 0x0000c163, 0x03c0003f, 0, 0);
    expect_registers(cpuid, 0x8000001e, 0, 2, 0x0002, 0, 0);
    expect_registers(cpuid, 0x40000000, 0, 0x40000001, 0x4b4d564b, 0x564b4d56, 0x4d);
    expect_registers(cpuid, 0x40000001, 0, 0x01007afb, 0, 0, 0);
    cr_assert_eq(cpuid->nent, sizeof(amd_entries) / sizeof(amd_entries[0]));
    free(cpuid);
    free(supported);
}

Test(cpuid, find_honours_the_significant_index_flag)
{
    struct kvm_cpuid2 *cpuid = table_of(intel_entries, INTEL_COUNT);
    cr_assert_eq(cpuid_find(cpuid, 1, 7), &cpuid->entries[1], "leaf 1 has no significant index");
    cr_assert_eq(cpuid_find(cpuid, 4, 2), &cpuid->entries[4]);
    cr_assert_null(cpuid_find(cpuid, 4, 5));
    cr_assert_null(cpuid_find(cpuid, 0x12345, 0));
    free(cpuid);
}

Test(cpuid, errors)
{
    struct kvm_cpuid2 *supported = table_of(intel_entries, INTEL_COUNT);
    cr_assert_null(cpuid_normalize(supported, 0, 0, error, sizeof(error)));
    cr_assert_str_eq(error, "CPUID: vCPU 0 of 0 (1 to 64 vCPUs)");
    cr_assert_null(cpuid_normalize(supported, 0, 65, error, sizeof(error)));
    cr_assert_str_eq(error, "CPUID: vCPU 0 of 65 (1 to 64 vCPUs)");
    cr_assert_null(cpuid_normalize(supported, 2, 2, error, sizeof(error)));
    cr_assert_str_eq(error, "CPUID: vCPU 2 of 2 (1 to 64 vCPUs)");
    free(supported);
    const struct kvm_cpuid_entry2 no_leaf1[] = { { .function = 0, .eax = 0xd } };
    supported = table_of(no_leaf1, 1);
    cr_assert_null(cpuid_normalize(supported, 0, 1, error, sizeof(error)));
    cr_assert_str_eq(error, "CPUID: leaf 1 is missing from KVM_GET_SUPPORTED_CPUID (1 entries)");
    free(supported);
}

/* PVM hosts never complete a VMCALL: the three hypercall-based KVM
 * features go, every other bit of the leaf (kvmclock, async PF, PV EOI,
 * PV TLB flush...) stays. The value is what KVM on a PVM host returned. */
Test(cpuid, hide_pv_hypercalls_clears_exactly_unhalt_send_ipi_and_sched_yield)
{
    struct kvm_cpuid2 *cpuid = cpuid_allocate(2);
    cr_assert_not_null(cpuid);
    cpuid->entries[0] = (struct kvm_cpuid_entry2){ .function = 0x40000000, .eax = 0x40000001 };
    cpuid->entries[1] = (struct kvm_cpuid_entry2){ .function = 0x40000001, .eax = 0x1007efb, .edx = 0x5 };
    cr_assert_eq(cpuid_hide_pv_hypercalls(cpuid), 3);
    cr_assert_eq(cpuid->entries[1].eax, 0x100567b, "eax %#x", cpuid->entries[1].eax);
    cr_assert_eq(cpuid->entries[1].edx, 0x5);
    cr_assert_eq(cpuid->entries[0].eax, 0x40000001);
    cr_assert_eq(cpuid_hide_pv_hypercalls(cpuid), 0, "a second call finds nothing to clear");
    cpuid->nent = 1;
    cr_assert_eq(cpuid_hide_pv_hypercalls(cpuid), 0, "no KVM features leaf: nothing to clear");
    free(cpuid);
}
