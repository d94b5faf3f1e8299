/*
 * The page-clearing port (vmm/page_clearing.h, guest/abi.h
 * RINGVM_CMD_CLEAR_PAGES), no KVM needed: how a request decodes, what
 * clearing writes (exactly the requested pages, nothing around them),
 * requests outside guest RAM (past its end, across its end, in the 3-4 GiB
 * hole) written nowhere, and what the probe reads. With /dev/kvm: pages
 * cleared while dirty tracking is on are in the next take.
 */
#include <criterion/criterion.h>

#include <errno.h>
#include <inttypes.h>
#include <stdint.h>
#include <string.h>

#include "dirtyring/dirty_log.h"
#include "guest/abi.h"
#include "tests/harness.h"
#include "vmm/memory.h"
#include "vmm/page_clearing.h"
#include "vmm/vm.h"

#define KIB 1024ull
#define MIB (1024ull * KIB)
#define GIB (1024ull * MIB)

static uint64_t request(uint64_t pfn, unsigned order)
{
    return (pfn << 4) | order;
}

static uint64_t count_bytes_not(const uint8_t *bytes, uint64_t length, uint8_t value)
{
    uint64_t count = 0;
    for (uint64_t i = 0; i < length; i++)
        count += bytes[i] != value;
    return count;
}

/* A request as the vCPU thread serves it: decoded (it must decode), then
 * page_clearing_clear's result. */
static int clear_request(struct guest_memory *memory, struct dirty_log *log, uint64_t pfn, unsigned order)
{
    uint64_t gpa, bytes;
    cr_assert_eq(page_clearing_decode(request(pfn, order), &gpa, &bytes), 0, "pfn 0x%" PRIx64 " order %u", pfn,
                 order);
    return page_clearing_clear(memory, log, gpa, bytes);
}

Test(page_clearing, decodes_a_frame_and_an_order_into_a_guest_physical_range)
{
    uint64_t gpa = 1, bytes = 1;
    cr_assert_eq(page_clearing_decode(request(0x12345, 0), &gpa, &bytes), 0);
    cr_assert_eq(gpa, 0x12345000ull);
    cr_assert_eq(bytes, 4096ull);
    cr_assert_eq(page_clearing_decode(request(0x200, 9), &gpa, &bytes), 0);
    cr_assert_eq(gpa, 0x200000ull);
    cr_assert_eq(bytes, 2 * MIB);
    cr_assert_eq(page_clearing_decode(request(0x400, RINGVM_CLEAR_PAGES_MAX_ORDER), &gpa, &bytes), 0);
    cr_assert_eq(gpa, 4 * MIB);
    cr_assert_eq(bytes, 4 * MIB);
    /* The widest argument a 32-bit OUT carries: pfn 2^28 - 1, 1 TiB. */
    cr_assert_eq(page_clearing_decode(UINT32_MAX & ~15u, &gpa, &bytes), 0);
    cr_assert_eq(gpa, ((1ull << 28) - 1) * 4096);
}

Test(page_clearing, refuses_an_order_above_the_maximum_and_a_frame_not_aligned_to_its_order)
{
    uint64_t gpa = 7, bytes = 7;
    cr_assert_eq(page_clearing_decode(request(0x800, RINGVM_CLEAR_PAGES_MAX_ORDER + 1), &gpa, &bytes), -EINVAL);
    cr_assert_eq(page_clearing_decode(request(0x800, 15), &gpa, &bytes), -EINVAL);
    cr_assert_eq(page_clearing_decode(request(0x201, 9), &gpa, &bytes), -EINVAL);
    cr_assert_eq(page_clearing_decode(request(0x3, 1), &gpa, &bytes), -EINVAL);
    /* A doorbell carries 64 bits: a frame whose address would pass 2^64. */
    cr_assert_eq(page_clearing_decode(UINT64_MAX & ~15ull, &gpa, &bytes), -EINVAL);
    cr_assert_eq(gpa, 7ull, "a refused request must leave the outputs alone");
    cr_assert_eq(bytes, 7ull);
}

Test(page_clearing, clears_exactly_the_requested_pages)
{
    struct guest_memory memory;
    cr_assert_eq(guest_memory_create(&memory, 16 * MIB, &(struct guest_memory_options){ .numa_node = -1 }), 0);
    memset(memory.host, 0xa5, memory.size);

    cr_assert_eq(clear_request(&memory, NULL, 0x10, 0), 0);
    cr_assert_eq(clear_request(&memory, NULL, 0x200, 9), 0);

    cr_assert_eq(count_bytes_not(memory.host + 0x10000, 4096, 0), 0ull);
    cr_assert_eq(count_bytes_not(memory.host + 2 * MIB, 2 * MIB, 0), 0ull);
    cr_assert_eq(memory.host[0x10000 - 1], 0xa5);
    cr_assert_eq(memory.host[0x11000], 0xa5);
    cr_assert_eq(memory.host[2 * MIB - 1], 0xa5);
    cr_assert_eq(memory.host[4 * MIB], 0xa5);
    cr_assert_eq(count_bytes_not(memory.host, memory.size, 0xa5), 4096 + 2 * MIB,
                 "bytes other than the two requested ranges changed");
    guest_memory_destroy(&memory);
}

Test(page_clearing, writes_nothing_for_a_range_past_or_across_the_end_of_ram)
{
    struct guest_memory memory;
    cr_assert_eq(guest_memory_create(&memory, 18 * MIB, &(struct guest_memory_options){ .numa_node = -1 }), 0);
    memset(memory.host, 0x5a, memory.size);
    /* [16 MiB, 20 MiB) crosses the end at 18 MiB. */
    cr_assert_eq(clear_request(&memory, NULL, 0x1000, 10), -EFAULT);
    cr_assert_eq(clear_request(&memory, NULL, 18 * MIB / 4096, 0), -EFAULT);
    cr_assert_eq(page_clearing_clear(&memory, NULL, 0, 0), -EFAULT);
    cr_assert_eq(count_bytes_not(memory.host, memory.size, 0x5a), 0ull);
    guest_memory_destroy(&memory);
}

Test(page_clearing, the_3_to_4_gib_hole_is_not_ram_and_ram_above_it_is_found_at_its_offset)
{
    /* 4 GiB of RAM: [0, 3 GiB) and [4 GiB, 5 GiB); the memfd is sparse and
     * only the pages written here are ever allocated. */
    struct guest_memory memory;
    cr_assert_eq(guest_memory_create(&memory, 4 * GIB, &(struct guest_memory_options){ .numa_node = -1 }), 0);
    uint8_t *low_top = memory.host + 3 * GIB - 4096, *high = memory.host + 3 * GIB;
    memset(low_top, 0x11, 4096);
    memset(high, 0x22, 8192);

    cr_assert_eq(clear_request(&memory, NULL, 3 * GIB / 4096, 0), -EFAULT, "a page in the hole was accepted");
    cr_assert_eq(clear_request(&memory, NULL, 4 * GIB / 4096 - 1, 0), -EFAULT);
    cr_assert_eq(count_bytes_not(low_top, 4096, 0x11), 0ull);

    cr_assert_eq(clear_request(&memory, NULL, 4 * GIB / 4096 + 1, 0), 0);
    cr_assert_eq(count_bytes_not(high, 4096, 0x22), 0ull, "the page before the cleared one changed");
    cr_assert_eq(count_bytes_not(high + 4096, 4096, 0), 0ull, "gpa 4 GiB + 4 KiB is RAM offset 3 GiB + 4 KiB");
    guest_memory_destroy(&memory);
}

Test(page_clearing, the_probe_reads_rvcp_where_offered_and_all_ones_elsewhere)
{
    uint32_t offered = page_clearing_probe_value(true);
    cr_assert_eq(offered, 0x50435652u);
    cr_assert_eq(memcmp(&offered, "RVCP", 4), 0, "the magic is \"RVCP\" in the IN's little-endian bytes");
    cr_assert_eq(page_clearing_probe_value(false), UINT32_MAX);
}

/* On KVM: a clear while tracking is on is in the next take, exactly its
 * pages, in ring and in bitmap mode (KVM does not see ringvm's own memset);
 * a clear while tracking is off marks nothing. An idle built-in guest
 * writes nothing in [64 MiB, 68 MiB), so that window's pages in the take
 * are exactly the cleared ones. */
static void clear_while_tracking_is_in_the_take(const char *mode)
{
    harness_require_kvm();
    struct harness_vm h;
    harness_vm_create(&h, "128M", 2, "idle", mode);
    struct vm *vm = h.vm;
    struct dirty_log *log = vm->dirty_log;
    cr_assert_not_null(log);
    memset(vm->memory.host + 64 * MIB, 0x77, 4 * MIB);

    cr_assert_eq(clear_request(&vm->memory, log, 64 * MIB / 4096, 0), 0);
    struct dirty_log_stats stats;
    dirty_log_get_stats(log, &stats);
    cr_assert_eq(stats.vmm_marked_pages, 0ull, "%s: a clear with tracking off was marked", mode);

    cr_assert_eq(dirty_log_start(log), 0);
    cr_assert_eq(dirty_log_protect_before_send(log, 0, guest_memory_pages(&vm->memory)), 0);
    cr_assert_eq(vm_start(vm), 0);
    cr_assert_eq(clear_request(&vm->memory, log, 66 * MIB / 4096, 9), 0);
    cr_assert_eq(clear_request(&vm->memory, log, 65 * MIB / 4096 + 3, 0), 0);

    cr_assert_eq(vm_pause_vcpus(vm), 0);
    cr_assert_eq(dirty_log_final_sync(log), 0);
    struct dirty_pages pages;
    dirty_pages_init(&pages);
    cr_assert_geq(dirty_log_take(log, &pages), 0);
    uint64_t in_window = 0, first = 64 * MIB / 4096, last = 68 * MIB / 4096;
    for (uint64_t i = 0; i < pages.count; i++) {
        uint64_t page = pages.pages[i];
        if (page < first || page >= last)
            continue;
        cr_assert(page == 65 * MIB / 4096 + 3 || (page >= 66 * MIB / 4096 && page < 68 * MIB / 4096),
                  "%s: page %" PRIu64 " in the window was not cleared but is in the take", mode, page);
        in_window++;
    }
    cr_assert_eq(in_window, 513ull, "%s: %" PRIu64 " of the 513 cleared pages are in the take", mode, in_window);
    dirty_log_get_stats(log, &stats);
    cr_assert_eq(stats.vmm_marked_pages, 513ull);
    cr_assert_eq(count_bytes_not(vm->memory.host + 66 * MIB, 2 * MIB, 0), 0ull);
    cr_assert_eq(count_bytes_not(vm->memory.host + 65 * MIB + 3 * 4096, 4096, 0), 0ull);
    cr_assert_eq(count_bytes_not(vm->memory.host + 64 * MIB + 4096, MIB - 4096, 0x77), 0ull);
    dirty_pages_free(&pages);
    vm_resume_vcpus(vm);
    cr_assert_eq(dirty_log_stop(log), 0);
    harness_vm_stop(&h);
}

Test(page_clearing, a_clear_while_ring_tracking_is_in_the_next_take, .timeout = 120)
{
    clear_while_tracking_is_in_the_take("ring");
}

Test(page_clearing, a_clear_while_bitmap_tracking_is_in_the_next_take, .timeout = 120)
{
    clear_while_tracking_is_in_the_take("bitmap");
}
