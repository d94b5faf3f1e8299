/*
 * Bitmap dirty logging (KVM_DIRTY_LOG_INITIALLY_SET, GET at pass
 * boundaries, CLEAR of a chunk just before the migration reads it), with
 * exact counts from dirty_log_get_stats (needs /dev/kvm; skipped
 * otherwise):
 *  - tracking on protects nothing; a take GETs and CLEARs nothing;
 *    dirty_log_protect_before_send CLEARs exactly the chunk of the page,
 *    once; a range clears each chunk it touches; the final sync and take
 *    CLEAR nothing, nor does protect after them;
 *  - chunks stop at the memslot boundary (RAM above 3 GiB is a second slot);
 *  - a running guest: pages it writes after their chunk was cleared are in
 *    the next take; pages it writes while their bits are set (before the
 *    CLEAR) are in every take until cleared;
 *  - a migration joining the API's tracking pauses the statistics sync
 *    and the release resumes it.
 * The end-to-end check (a bitmap migration whose digests and ledger
 * match) is in test_migration.c.
 */
#include <criterion/criterion.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dirtyring/dirty_log.h"
#include "tests/harness.h"
#include "vmm/vm.h"

#define CHUNK_PAGES 64u     /* the default --bitmap-clear-chunk, 256 KiB */

static struct dirty_log_stats *stats_of(struct dirty_log *log)
{
    static struct dirty_log_stats s;
    dirty_log_get_stats(log, &s);
    return &s;
}

static bool has_page(const struct dirty_pages *pages, uint64_t page)
{
    uint64_t lo = 0, hi = pages->count;
    while (lo < hi) {
        uint64_t mid = (lo + hi) / 2;
        if (pages->pages[mid] == page)
            return true;
        if (pages->pages[mid] < page)
            lo = mid + 1;
        else
            hi = mid;
    }
    return false;
}

static void sleep_ms(unsigned ms)
{
    struct timespec t = { .tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L };
    nanosleep(&t, NULL);
}

Test(dirty_bitmap, take_protects_nothing_and_protect_clears_exactly_the_chunk, .timeout = 60)
{
    harness_require_kvm();
    struct harness_vm h;
    harness_vm_create(&h, "64M", 1, "idle", "bitmap");
    struct dirty_log *log = h.vm->dirty_log;
    const uint64_t pages = 16384;
    cr_assert_eq(guest_memory_pages(&h.vm->memory), pages);
    cr_assert_eq(h.vm->memory.slot_count, 1);
    cr_assert_eq(dirty_log_protect_unit_pages(log), CHUNK_PAGES);

    cr_assert_eq(dirty_log_start(log), 0);
    struct dirty_log_stats *s = stats_of(log);
    cr_assert_eq(s->bitmap_uncleared_pages, pages, "INITIALLY_SET: every bit set, none cleared");
    cr_assert_eq(s->bitmap_clears, 0, "turning tracking on CLEARs nothing");
    cr_assert_eq(s->bitmap_clear_chunk_pages, CHUNK_PAGES);

    struct dirty_pages taken;
    dirty_pages_init(&taken);
    cr_assert_eq(dirty_log_take(log, &taken), (int64_t)pages, "never-cleared pages are all in the take");
    s = stats_of(log);
    cr_assert_eq(s->bitmap_gets, 1, "one GET per slot");
    cr_assert_eq(s->bitmap_clears, 0, "a take CLEARs nothing");
    cr_assert_eq(s->bitmap_uncleared_pages, pages, "nothing protected until protect_before_send");

    cr_assert_eq(dirty_log_protect_before_send(log, 100, 1), 0);
    s = stats_of(log);
    cr_assert_eq(s->bitmap_clears, 1);
    cr_assert_eq(s->bitmap_cleared_pages, CHUNK_PAGES, "exactly page 100's chunk, pages 64..127");
    cr_assert_eq(s->bitmap_uncleared_pages, pages - CHUNK_PAGES);

    /* The same chunk again, whole or in part: nothing left to clear. */
    cr_assert_eq(dirty_log_protect_before_send(log, 64, CHUNK_PAGES), 0);
    cr_assert_eq(dirty_log_protect_before_send(log, 100, 1), 0);
    cr_assert_eq(stats_of(log)->bitmap_clears, 1);

    /* Pages 127..128: chunk 1 (done) and chunk 2 (one more CLEAR). */
    cr_assert_eq(dirty_log_protect_before_send(log, 127, 2), 0);
    s = stats_of(log);
    cr_assert_eq(s->bitmap_clears, 2);
    cr_assert_eq(s->bitmap_cleared_pages, 2 * CHUNK_PAGES);
    /* The last chunk of RAM. */
    cr_assert_eq(dirty_log_protect_before_send(log, pages - 1, 1), 0);
    cr_assert_eq(stats_of(log)->bitmap_clears, 3);

    /* Downtime path: one GET, no CLEAR; nothing cleared is in the take,
     * every page not cleared still is (the guest never ran). */
    cr_assert_eq(dirty_log_final_sync(log), 0);
    dirty_pages_free(&taken);
    dirty_pages_init(&taken);
    cr_assert_eq(dirty_log_take(log, &taken), (int64_t)(pages - 3 * CHUNK_PAGES));
    cr_assert(!has_page(&taken, 64) && !has_page(&taken, 191) && !has_page(&taken, pages - 1));
    cr_assert(has_page(&taken, 63) && has_page(&taken, 192) && has_page(&taken, pages - CHUNK_PAGES - 1));
    cr_assert_eq(dirty_log_protect_before_send(log, 1000, 1), 0);
    s = stats_of(log);
    cr_assert_eq(s->bitmap_gets, 2, "the final sync GETs once, the take after it not again");
    cr_assert_eq(s->bitmap_clears, 3, "nothing CLEARed after the final sync");
    dirty_pages_free(&taken);
    cr_assert_eq(dirty_log_stop(log), 0);
    harness_vm_stop(&h);
}

Test(dirty_bitmap, chunks_stop_at_the_memslot_boundary, .timeout = 60)
{
    harness_require_kvm();
    struct harness_vm h;
    /* Above 3 GiB RAM continues in a second slot at 4 GiB (vmm/memory.h);
     * the memfd is sparse, so 4 GiB costs nothing untouched. */
    harness_vm_create(&h, "4G", 1, "idle", "bitmap");
    struct dirty_log *log = h.vm->dirty_log;
    cr_assert_eq(h.vm->memory.slot_count, 2);
    uint64_t boundary = h.vm->memory.slots[1].ram_offset / 4096;
    cr_assert_eq(boundary, (3ull << 30) / 4096);
    cr_assert_eq(dirty_log_start(log), 0);
    cr_assert_eq(dirty_log_protect_before_send(log, boundary - 1, 2), 0);
    struct dirty_log_stats *s = stats_of(log);
    cr_assert_eq(s->bitmap_clears, 2, "one CLEAR per slot: the last chunk of slot 0, the first of slot 1");
    cr_assert_eq(s->bitmap_cleared_pages, 2 * CHUNK_PAGES);
    cr_assert_eq(s->bitmap_uncleared_pages, guest_memory_pages(&h.vm->memory) - 2 * CHUNK_PAGES);
    struct dirty_pages taken;
    dirty_pages_init(&taken);
    cr_assert_eq(dirty_log_take(log, &taken), (int64_t)(guest_memory_pages(&h.vm->memory) - 2 * CHUNK_PAGES));
    cr_assert_eq(stats_of(log)->bitmap_gets, 2, "one GET per slot");
    cr_assert(!has_page(&taken, boundary - CHUNK_PAGES) && !has_page(&taken, boundary + CHUNK_PAGES - 1));
    cr_assert(has_page(&taken, boundary - CHUNK_PAGES - 1) && has_page(&taken, boundary + CHUNK_PAGES));
    dirty_pages_free(&taken);
    cr_assert_eq(dirty_log_stop(log), 0);
    harness_vm_stop(&h);
}

struct region {
    uint64_t first, pages;
};

static struct region region_of(struct vm *vm)
{
    return (struct region){ guest_memory_gpa_to_offset(&vm->memory, vm->bootinfo->vcpu[0].region_gpa) / 4096,
                            vm->bootinfo->vcpu[0].region_pages };
}

/* Every page of the dirtier's region is in the take. */
static void assert_region_taken(struct dirty_log *log, struct region r, const char *when)
{
    struct dirty_pages taken;
    dirty_pages_init(&taken);
    cr_assert_geq(dirty_log_take(log, &taken), 0);
    uint64_t missing = 0;
    for (uint64_t p = r.first; p < r.first + r.pages; p++)
        missing += !has_page(&taken, p);
    cr_assert_eq(missing, 0, "%s: %llu of %llu region pages missing from the take", when,
                 (unsigned long long)missing, (unsigned long long)r.pages);
    dirty_pages_free(&taken);
}

Test(dirty_bitmap, writes_after_the_clear_and_before_it_are_in_the_take, .timeout = 90)
{
    harness_require_kvm();
    struct harness_vm h;
    /* One vCPU rewriting 1 MiB (256 pages) over and over. */
    harness_vm_create(&h, "64M", 1, "dirtier,wss=1M", "bitmap");
    struct dirty_log *log = h.vm->dirty_log;
    const uint64_t pages = guest_memory_pages(&h.vm->memory);
    cr_assert_eq(dirty_log_start(log), 0);
    /* Pass 0: every chunk once. */
    cr_assert_eq(dirty_log_protect_before_send(log, 0, pages), 0);
    struct dirty_log_stats *s = stats_of(log);
    cr_assert_eq(s->bitmap_clears, pages / CHUNK_PAGES);
    cr_assert_eq(s->bitmap_cleared_pages, pages);
    cr_assert_eq(s->bitmap_uncleared_pages, 0);

    cr_assert_eq(vm_start(h.vm), 0);
    cr_assert(harness_wait_phase(h.vm, 0, RINGVM_PHASE_RING3, 20000));
    struct region r = region_of(h.vm);
    cr_assert_eq(r.pages, 256);
    cr_assert(harness_wait_all_vcpus_advance(h.vm, 4 * r.pages, 20000));
    /* Written after their CLEAR (pass 0): the bits are set again. */
    assert_region_taken(log, r, "after pass 0");
    uint64_t clears = stats_of(log)->bitmap_clears;
    cr_assert_eq(clears, pages / CHUNK_PAGES, "the take CLEARed something");

    /* Not cleared since that take: the guest keeps writing with the bits
     * set (no fault), and the next take still has every page. */
    cr_assert(harness_wait_all_vcpus_advance(h.vm, 4 * r.pages, 20000));
    assert_region_taken(log, r, "bits never cleared since the last take");
    cr_assert_eq(stats_of(log)->bitmap_clears, clears);

    /* The migration plans the region's pages: one CLEAR per chunk. */
    for (uint64_t p = r.first; p < r.first + r.pages; p++)
        cr_assert_eq(dirty_log_protect_before_send(log, p, 1), 0);
    uint64_t region_chunks = (r.first + r.pages - 1) / CHUNK_PAGES - r.first / CHUNK_PAGES + 1;
    cr_assert_eq(stats_of(log)->bitmap_clears, clears + region_chunks);
    /* Rewritten after that CLEAR: in the next take again. */
    cr_assert(harness_wait_all_vcpus_advance(h.vm, 4 * r.pages, 20000));
    assert_region_taken(log, r, "written after the chunk's CLEAR");

    /* Downtime path. */
    cr_assert_eq(vm_pause_vcpus(h.vm), 0);
    clears = stats_of(log)->bitmap_clears;
    uint64_t gets = stats_of(log)->bitmap_gets;
    cr_assert_eq(dirty_log_final_sync(log), 0);
    assert_region_taken(log, r, "final take");
    for (uint64_t p = r.first; p < r.first + r.pages; p++)
        cr_assert_eq(dirty_log_protect_before_send(log, p, 1), 0);
    s = stats_of(log);
    cr_assert_eq(s->bitmap_clears, clears, "no CLEAR on the downtime path");
    cr_assert_eq(s->bitmap_gets, gets + 1, "one GET on the downtime path");
    vm_resume_vcpus(h.vm);
    cr_assert_eq(dirty_log_stop(log), 0);
    harness_vm_stop(&h);
}

Test(dirty_bitmap, a_migration_pauses_the_statistics_sync_of_the_api, .timeout = 60)
{
    harness_require_kvm();
    struct harness_vm h;
    harness_vm_create(&h, "64M", 1, "idle", "bitmap");
    struct dirty_log *log = h.vm->dirty_log;
    cr_assert_eq(dirty_log_hold(log, DIRTY_LOG_HOLDER_API), 0);
    sleep_ms(400);
    struct dirty_log_stats *s = stats_of(log);
    cr_assert_geq(s->bitmap_syncs, 1, "the statistics sync runs for the API (every 100 ms)");
    cr_assert_eq(s->bitmap_uncleared_pages, 0, "the statistics sync CLEARs what it got");
    cr_assert_eq(s->pages, 0, "bits set by INITIALLY_SET are not counted as writes");

    cr_assert_eq(dirty_log_hold(log, DIRTY_LOG_HOLDER_MIGRATION), 0);
    s = stats_of(log);
    uint64_t syncs = s->bitmap_syncs, clears = s->bitmap_clears;
    cr_assert_eq(s->bitmap_uncleared_pages, 16384, "the migration's pass 0 protects every chunk again");
    sleep_ms(400);
    s = stats_of(log);
    cr_assert_eq(s->bitmap_syncs, syncs, "no periodic GET during a migration");
    cr_assert_eq(s->bitmap_clears, clears, "no periodic CLEAR during a migration");

    cr_assert_eq(dirty_log_release(log, DIRTY_LOG_HOLDER_MIGRATION), 0);
    cr_assert(dirty_log_tracking(log), "the API still holds tracking");
    sleep_ms(400);
    cr_assert_gt(stats_of(log)->bitmap_syncs, syncs, "the statistics sync resumes after the migration");
    cr_assert_eq(dirty_log_release(log, DIRTY_LOG_HOLDER_API), 0);
    cr_assert(!dirty_log_tracking(log));
    harness_vm_stop(&h);
}
