/*
 * The `dirtier` workload (ring 3): write 8 or 4096 bytes to pages of this
 * vCPU's region in seq/random/hot order, optionally paced to rate pages/s,
 * for count writes (0 = forever). Counters go to the stats page every
 * GUEST_STATS_FLUSH_WRITES writes (plain aligned 64-bit stores).
 */
#include "guest/guest.h"
#include "guest/pacing.h"
#include "guest/page_walk.h"

#define GUEST_STATS_FLUSH_WRITES 256

/* The value written changes with every write, so a page copied at two
 * different times differs (migration must resend it). */
static inline void dirty_page(uint8_t *page, uint32_t write_bytes, uint64_t value)
{
    if (write_bytes >= RINGVM_PAGE_SIZE) {
        void *cursor = page;
        uint64_t words = RINGVM_PAGE_SIZE / 8;
        __asm__ volatile("rep stosq" : "+D"(cursor), "+c"(words) : "a"(value) : "memory");
    } else {
        *(volatile uint64_t *)page = value;
    }
}

void dirtier_run(unsigned vcpu, const struct ringvm_bootinfo *info)
{
    const struct ringvm_vcpu_bootinfo *mine = &info->vcpu[vcpu];
    if (mine->region_pages == 0)
        return;
    volatile struct ringvm_vcpu_stats *stats = vcpu_stats(info, vcpu);
    uint8_t *region = (uint8_t *)(uintptr_t)mine->region_gpa;
    uint32_t write_bytes = info->write_bytes;
    uint64_t count = info->count;

    struct page_walk walk;
    page_walk_init(&walk, info->pattern, mine->region_pages, mine->seed);
    struct pacing pacing;
    pacing_init(&pacing, info->rate_pages_per_s, info->tsc_khz);

    uint64_t written = 0;
    unsigned until_flush = GUEST_STATS_FLUSH_WRITES;
    for (;;) {
        uint64_t page = page_walk_next(&walk);
        dirty_page(region + page * RINGVM_PAGE_SIZE, write_bytes, written);
        written++;
        if (--until_flush == 0) {
            until_flush = GUEST_STATS_FLUSH_WRITES;
            stats->pages_written = written;
            stats->passes = walk.passes;
            stats->tsc_last_update = read_tsc();
        }
        if (written == count)
            break;
        if (pacing.enabled)
            pacing_wait(&pacing);
    }
    stats->pages_written = written;
    stats->passes = walk.passes;
    stats->tsc_last_update = read_tsc();
}
