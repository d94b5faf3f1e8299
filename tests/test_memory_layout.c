/*
 * Guest RAM's KVM memslots (vmm/memory.h), no KVM needed: the regions stay
 * one or two (what boot, e820 and the migration HELLO see); split, each
 * region becomes memslots of max(128 MiB, RAM / 64) rounded up to 2 MiB,
 * contiguous in RAM offset and guest-physical address, ids = indices,
 * at most GUEST_MEMORY_MAX_KVM_SLOTS; unsplit, the memslots are the regions.
 */
#include <criterion/criterion.h>

#include <inttypes.h>

#include "vmm/bootinfo.h"
#include "vmm/memory.h"

#define MIB ((uint64_t)1 << 20)
#define GIB ((uint64_t)1 << 30)

static void check_layout(uint64_t size, bool split, unsigned regions, unsigned expect_slots, uint64_t expect_piece)
{
    struct guest_memory memory;
    struct guest_memory_options options = { .numa_node = -1, .split_kvm_slots = split };
    cr_assert_eq(guest_memory_create(&memory, size, &options), 0, "%" PRIu64 " bytes", size);
    cr_assert_eq(memory.slot_count, regions);
    unsigned count;
    const struct guest_memory_slot *slots = guest_memory_kvm_slots(&memory, &count);
    cr_assert_eq(count, expect_slots, "%" PRIu64 " MiB: %u memslots", size / MIB, count);
    cr_assert_leq(count, GUEST_MEMORY_MAX_KVM_SLOTS);
    uint64_t ram = 0;
    unsigned region = 0;
    for (unsigned i = 0; i < count; i++) {
        cr_assert_eq(slots[i].slot, i);
        cr_assert_eq(slots[i].ram_offset, ram, "memslot %u not contiguous in RAM", i);
        cr_assert_eq(slots[i].size % (2 * MIB), 0);
        cr_assert_eq(slots[i].gpa % (2 * MIB), 0);
        if (slots[i].ram_offset == memory.slots[region].ram_offset + memory.slots[region].size)
            region++;
        const struct guest_memory_slot *r = &memory.slots[region];
        cr_assert_eq(slots[i].gpa, r->gpa + (slots[i].ram_offset - r->ram_offset), "memslot %u gpa", i);
        cr_assert_leq(slots[i].ram_offset + slots[i].size, r->ram_offset + r->size, "memslot %u spans regions", i);
        bool last_of_region = slots[i].ram_offset + slots[i].size == r->ram_offset + r->size;
        if (!last_of_region)
            cr_assert_eq(slots[i].size, expect_piece, "memslot %u: %" PRIu64 " MiB", i, slots[i].size / MIB);
        else
            cr_assert_leq(slots[i].size, expect_piece);
        ram += slots[i].size;
    }
    cr_assert_eq(ram, size);
    guest_memory_destroy(&memory);
}

Test(memory_layout, unsplit_memslots_are_the_regions)
{
    check_layout(256 * MIB, false, 1, 1, 256 * MIB);
    check_layout(6 * GIB, false, 2, 2, 3 * GIB);
}

Test(memory_layout, split_into_128_mib_memslots_below_8_gib)
{
    check_layout(128 * MIB, true, 1, 1, 128 * MIB);
    check_layout(1536 * MIB, true, 1, 12, 128 * MIB);
    check_layout(1000 * MIB, true, 1, 8, 128 * MIB);       /* 7 x 128 + 104 */
    check_layout(4 * GIB, true, 2, 32, 128 * MIB);         /* 3 GiB low, 1 GiB high */
}

Test(memory_layout, split_into_ram_over_64_above_8_gib)
{
    check_layout(16 * GIB, true, 2, 64, 256 * MIB);        /* 12 + 52: 3 GiB low, 13 GiB high */
    check_layout(100 * GIB, true, 2, 65, 1600 * MIB);
}
