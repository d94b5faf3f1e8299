/*
 * Boot info encoding (vmm/bootinfo.c): exact per-vCPU layouts, parameter
 * copying and the error messages. Pure: no KVM, no guest memory mapping
 * (struct guest_memory is filled with the slot layout memory.c produces).
 */
#include <criterion/criterion.h>
#include <string.h>

#include "vmm/bootinfo.h"

#define MIB (1ULL << 20)
#define GIB (1ULL << 30)
#define PAGE RINGVM_PAGE_SIZE

/* The layout of vmm/memory.c: [0, min(size, 3G)) and [4G, 4G + rest). */
static struct guest_memory memory_of(uint64_t size)
{
    struct guest_memory memory;
    memset(&memory, 0, sizeof(memory));
    memory.memfd = -1;
    memory.size = size;
    uint64_t low = size < RINGVM_LOW_RAM_END ? size : RINGVM_LOW_RAM_END;
    memory.slots[0] = (struct guest_memory_slot){ .slot = 0, .gpa = 0, .size = low };
    memory.slot_count = 1;
    if (size > low) {
        memory.slots[1] = (struct guest_memory_slot){
            .slot = 1, .gpa = RINGVM_HIGH_RAM_BASE, .size = size - low, .ram_offset = low };
        memory.slot_count = 2;
    }
    return memory;
}

static struct workload_spec spec_of(enum ringvm_workload_kind kind, uint64_t wss)
{
    struct workload_spec spec;
    memset(&spec, 0, sizeof(spec));
    spec.kind = kind;
    spec.wss_bytes = wss;
    spec.pattern = RINGVM_PATTERN_SEQ;
    spec.write_bytes = 8;
    spec.verify_seconds = 5;
    spec.seed = 1;
    return spec;
}

static struct ringvm_bootinfo info;
static char error[256];

static int build(const struct workload_spec *spec, uint64_t memory_size, unsigned vcpus)
{
    struct guest_memory memory = memory_of(memory_size);
    memset(error, 0, sizeof(error));
    return bootinfo_build(&info, spec, &memory, vcpus, 2500000, error, sizeof(error));
}

Test(bootinfo, one_vcpu_dirtier_header_and_region)
{
    struct workload_spec spec = spec_of(RINGVM_WORKLOAD_DIRTIER, 64 * MIB);
    spec.pattern = RINGVM_PATTERN_HOT;
    spec.rate_pages_per_s = 12345;
    spec.write_bytes = 4096;
    spec.count = 777;
    cr_assert_eq(build(&spec, 1 * GIB, 1), 0, "%s", error);
    cr_assert_eq(info.magic, RINGVM_BOOTINFO_MAGIC);
    cr_assert_eq(info.abi_version, RINGVM_ABI_VERSION);
    cr_assert_eq(info.vcpu_count, 1);
    cr_assert_eq(info.memory_bytes, 1 * GIB);
    cr_assert_eq(info.tsc_khz, 2500000);
    cr_assert_eq(info.doorbell_gpa, 0xD0000000ULL);
    cr_assert_eq(info.stats_gpa, 0x2000ULL);
    cr_assert_eq(info.workload, RINGVM_WORKLOAD_DIRTIER);
    cr_assert_eq(info.pattern, RINGVM_PATTERN_HOT);
    cr_assert_eq(info.rate_pages_per_s, 12345);
    cr_assert_eq(info.write_bytes, 4096);
    cr_assert_eq(info.verify_seconds, 5);
    cr_assert_eq(info.count, 777);
    cr_assert_eq(info.vcpu[0].region_gpa, 0x1000000ULL);
    cr_assert_eq(info.vcpu[0].region_pages, 16384);
    cr_assert_eq(info.vcpu[0].table_gpa, 0, "dirtier has no ledger table");
    cr_assert_eq(info.vcpu[1].region_pages, 0, "unused vCPU slots stay zero");
}

Test(bootinfo, two_vcpus_split_wss_evenly)
{
    struct workload_spec spec = spec_of(RINGVM_WORKLOAD_DIRTIER, 64 * MIB);
    cr_assert_eq(build(&spec, 256 * MIB, 2), 0, "%s", error);
    cr_assert_eq(info.vcpu_count, 2);
    cr_assert_eq(info.vcpu[0].region_gpa, 0x1000000ULL);
    cr_assert_eq(info.vcpu[0].region_pages, 8192);
    cr_assert_eq(info.vcpu[1].region_gpa, 0x3000000ULL);
    cr_assert_eq(info.vcpu[1].region_pages, 8192);
}

Test(bootinfo, uneven_split_gives_first_vcpus_the_extra_pages)
{
    struct workload_spec spec = spec_of(RINGVM_WORKLOAD_DIRTIER, 10 * PAGE);
    cr_assert_eq(build(&spec, 64 * MIB, 3), 0, "%s", error);
    cr_assert_eq(info.vcpu[0].region_pages, 4);
    cr_assert_eq(info.vcpu[1].region_pages, 3);
    cr_assert_eq(info.vcpu[2].region_pages, 3);
    cr_assert_eq(info.vcpu[0].region_gpa, 0x1000000ULL);
    cr_assert_eq(info.vcpu[1].region_gpa, 0x1004000ULL);
    cr_assert_eq(info.vcpu[2].region_gpa, 0x1007000ULL);
}

Test(bootinfo, wss_rounds_up_to_whole_pages)
{
    struct workload_spec spec = spec_of(RINGVM_WORKLOAD_DIRTIER, 2 * PAGE + 1);
    cr_assert_eq(build(&spec, 64 * MIB, 1), 0, "%s", error);
    cr_assert_eq(info.vcpu[0].region_pages, 3);
}

Test(bootinfo, more_vcpus_than_pages_leaves_some_empty)
{
    struct workload_spec spec = spec_of(RINGVM_WORKLOAD_DIRTIER, 1 * PAGE);
    cr_assert_eq(build(&spec, 64 * MIB, 2), 0, "%s", error);
    cr_assert_eq(info.vcpu[0].region_pages, 1);
    cr_assert_eq(info.vcpu[1].region_pages, 0);
}

Test(bootinfo, ledger_tables_follow_all_regions)
{
    struct workload_spec spec = spec_of(RINGVM_WORKLOAD_LEDGER, 64 * MIB);
    cr_assert_eq(build(&spec, 256 * MIB, 2), 0, "%s", error);
    cr_assert_eq(info.vcpu[0].region_gpa, 0x1000000ULL);
    cr_assert_eq(info.vcpu[1].region_gpa, 0x3000000ULL);
    /* 8192 pages * 4 bytes = 32 KiB per table */
    cr_assert_eq(info.vcpu[0].table_gpa, 0x5000000ULL);
    cr_assert_eq(info.vcpu[1].table_gpa, 0x5008000ULL);
}

Test(bootinfo, ledger_table_rounds_up_to_a_page)
{
    struct workload_spec spec = spec_of(RINGVM_WORKLOAD_LEDGER, 3 * PAGE);
    cr_assert_eq(build(&spec, 64 * MIB, 2), 0, "%s", error);
    cr_assert_eq(info.vcpu[0].region_pages, 2);
    cr_assert_eq(info.vcpu[1].region_pages, 1);
    cr_assert_eq(info.vcpu[0].table_gpa, 0x1003000ULL);
    cr_assert_eq(info.vcpu[1].table_gpa, 0x1004000ULL);
}

Test(bootinfo, regions_never_straddle_the_3_to_4_gib_hole)
{
    /* 5 GiB: RAM [0, 3G) and [4G, 6G). 2 x 1.5 GiB: the second region does
     * not fit below 3 GiB and starts at 4 GiB. */
    struct workload_spec spec = spec_of(RINGVM_WORKLOAD_LEDGER, 3 * GIB);
    cr_assert_eq(build(&spec, 5 * GIB, 2), 0, "%s", error);
    cr_assert_eq(info.vcpu[0].region_gpa, 0x1000000ULL);
    cr_assert_eq(info.vcpu[0].region_pages, 393216);
    cr_assert_eq(info.vcpu[1].region_gpa, 0x100000000ULL);
    cr_assert_eq(info.vcpu[1].region_pages, 393216);
    /* tables (1.5 MiB each) after the last region, above 4 GiB */
    cr_assert_eq(info.vcpu[0].table_gpa, 0x160000000ULL);
    cr_assert_eq(info.vcpu[1].table_gpa, 0x160180000ULL);
}

Test(bootinfo, exact_fit_below_3_gib_with_4_gib_of_ram)
{
    /* 4 GiB: RAM [0, 3G) and [4G, 5G); 3G - 16M fits exactly below. */
    struct workload_spec spec = spec_of(RINGVM_WORKLOAD_DIRTIER, 3 * GIB - 16 * MIB);
    cr_assert_eq(build(&spec, 4 * GIB, 1), 0, "%s", error);
    cr_assert_eq(info.vcpu[0].region_gpa, 0x1000000ULL);
    cr_assert_eq(info.vcpu[0].region_pages, (3 * GIB - 16 * MIB) / PAGE);
    cr_assert_eq(info.memory_bytes, 4 * GIB);
}

Test(bootinfo, exact_fit_and_one_page_too_many)
{
    struct workload_spec spec = spec_of(RINGVM_WORKLOAD_DIRTIER, 16 * MIB);
    cr_assert_eq(build(&spec, 32 * MIB, 1), 0, "%s", error);
    cr_assert_eq(info.vcpu[0].region_pages, 4096);
    spec.wss_bytes = 16 * MIB + PAGE;
    cr_assert_eq(build(&spec, 32 * MIB, 1), -1);
    cr_assert_str_eq(error, "--workload: wss 16388K does not fit in 32M of guest memory");
}

Test(bootinfo, ledger_too_big_names_the_tables)
{
    struct workload_spec spec = spec_of(RINGVM_WORKLOAD_LEDGER, 2 * GIB);
    cr_assert_eq(build(&spec, 1 * GIB, 2), -1);
    cr_assert_str_eq(error, "--workload: wss 2G plus ledger tables does not fit in 1G of guest memory");
    cr_assert_eq(info.vcpu[0].region_pages, 0, "no half-built layout is left behind");
}

Test(bootinfo, ledger_tables_alone_can_be_what_does_not_fit)
{
    /* The region fills low RAM exactly; its table has no room left. */
    struct workload_spec spec = spec_of(RINGVM_WORKLOAD_LEDGER, 16 * MIB);
    cr_assert_eq(build(&spec, 32 * MIB, 1), -1);
    cr_assert_str_eq(error, "--workload: wss 16M plus ledger tables does not fit in 32M of guest memory");
}

Test(bootinfo, dirtier_too_big)
{
    struct workload_spec spec = spec_of(RINGVM_WORKLOAD_DIRTIER, 1 * GIB);
    cr_assert_eq(build(&spec, 1 * GIB, 1), -1);
    cr_assert_str_eq(error, "--workload: wss 1G does not fit in 1G of guest memory");
}

Test(bootinfo, idle_and_fault_get_no_regions)
{
    struct workload_spec spec = spec_of(RINGVM_WORKLOAD_IDLE, 64 * GIB);
    cr_assert_eq(build(&spec, 64 * MIB, 2), 0, "%s", error);
    cr_assert_eq(info.workload, RINGVM_WORKLOAD_IDLE);
    cr_assert_eq(info.vcpu[0].region_pages, 0);
    cr_assert_eq(info.vcpu[1].region_pages, 0);

    spec = spec_of(RINGVM_WORKLOAD_FAULT, 64 * MIB);
    spec.fault_kind = RINGVM_FAULT_PF;
    spec.fault_ring = 0;
    cr_assert_eq(build(&spec, 64 * MIB, 1), 0, "%s", error);
    cr_assert_eq(info.workload, RINGVM_WORKLOAD_FAULT);
    cr_assert_eq(info.fault_kind, RINGVM_FAULT_PF);
    cr_assert_eq(info.fault_ring, 0);
    cr_assert_eq(info.vcpu[0].region_pages, 0);
}

Test(bootinfo, seeds_are_per_vcpu_deterministic_and_nonzero)
{
    struct workload_spec spec = spec_of(RINGVM_WORKLOAD_DIRTIER, 64 * MIB);
    spec.seed = 42;
    cr_assert_eq(build(&spec, 256 * MIB, 4), 0, "%s", error);
    uint64_t seeds[4];
    for (unsigned i = 0; i < 4; i++) {
        seeds[i] = info.vcpu[i].seed;
        cr_assert_neq(seeds[i], 0);
        cr_assert_eq(seeds[i], ringvm_vcpu_seed(42, i));
        for (unsigned j = 0; j < i; j++)
            cr_assert_neq(seeds[i], seeds[j], "vcpu %u and %u share a seed", i, j);
    }
    cr_assert_eq(build(&spec, 256 * MIB, 4), 0, "%s", error);
    for (unsigned i = 0; i < 4; i++)
        cr_assert_eq(info.vcpu[i].seed, seeds[i], "same spec, same seeds");
    spec.seed = 43;
    cr_assert_eq(build(&spec, 256 * MIB, 4), 0, "%s", error);
    cr_assert_neq(info.vcpu[0].seed, seeds[0], "the workload seed changes the vCPU seeds");
}

Test(bootinfo, vcpu_count_and_write_size_are_checked)
{
    struct workload_spec spec = spec_of(RINGVM_WORKLOAD_DIRTIER, 64 * MIB);
    cr_assert_eq(build(&spec, 256 * MIB, 0), -1);
    cr_assert_str_eq(error, "--vcpus: 0 vCPUs is outside 1..64");
    cr_assert_eq(build(&spec, 256 * MIB, 65), -1);
    cr_assert_str_eq(error, "--vcpus: 65 vCPUs is outside 1..64");
    spec.write_bytes = 16;
    cr_assert_eq(build(&spec, 256 * MIB, 1), -1);
    cr_assert_str_eq(error, "--workload: write=16 is not 8 or 4096");
}

Test(bootinfo, boot_info_fits_its_page)
{
    cr_assert_leq(sizeof(struct ringvm_bootinfo), RINGVM_PAGE_SIZE);
    cr_assert_eq(RINGVM_BOOTINFO_GPA + RINGVM_PAGE_SIZE, RINGVM_STATS_GPA);
}
