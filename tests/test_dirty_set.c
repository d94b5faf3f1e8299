/*
 * Unit tests of the dirty set (dirtyring/dirty_set.c): exact membership,
 * generations, shards, and concurrent setters racing takes (every page
 * marked once is returned by exactly one take: never lost, never twice).
 */
#include <criterion/criterion.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "dirtyring/dirty_set.h"

static struct dirty_set *make_set(uint64_t pages, unsigned shards)
{
    struct dirty_set *set;
    cr_assert_eq(dirty_set_create(&set, pages, shards, NULL), 0);
    return set;
}

Test(dirty_set, mark_take_exact_sorted_then_empty)
{
    struct dirty_set *set = make_set(100000, 1);
    static const uint64_t pages[] = { 99999, 0, 63, 64, 4095, 4096, 65535, 65536, 12345 };
    struct dirty_set_writer w;
    dirty_set_write_begin(set, 0, &w);
    for (size_t i = 0; i < sizeof(pages) / sizeof(pages[0]); i++)
        dirty_set_mark(&w, pages[i]);
    dirty_set_mark(&w, 63);          /* again */
    dirty_set_mark(&w, 100000);      /* out of range: ignored */
    cr_assert_eq(w.marked, 9);
    dirty_set_write_end(&w);
    cr_assert_eq(dirty_set_count_current(set), 9);

    struct dirty_pages out;
    dirty_pages_init(&out);
    cr_assert_eq(dirty_set_take(set, &out), 9);
    static const uint64_t sorted[] = { 0, 63, 64, 4095, 4096, 12345, 65535, 65536, 99999 };
    cr_assert_eq(out.count, 9);
    for (size_t i = 0; i < 9; i++)
        cr_assert_eq(out.pages[i], sorted[i]);
    cr_assert_eq(dirty_set_count_current(set), 0);
    out.count = 0;
    cr_assert_eq(dirty_set_take(set, &out), 0, "taken pages are gone");
    cr_assert_eq(dirty_set_take(set, &out), 0, "both generations empty");
    cr_assert_eq(out.count, 0);
    dirty_pages_free(&out);
    dirty_set_destroy(set);
}

Test(dirty_set, generations_alternate)
{
    struct dirty_set *set = make_set(1024, 1);
    struct dirty_pages out;
    dirty_pages_init(&out);
    for (uint64_t round = 0; round < 6; round++) {
        dirty_set_mark_range(set, 0, round * 10, 3);
        out.count = 0;
        cr_assert_eq(dirty_set_take(set, &out), 3);
        for (uint64_t i = 0; i < 3; i++)
            cr_assert_eq(out.pages[i], round * 10 + i);
    }
    /* A page marked again after its take shows up in the next one. */
    dirty_set_mark_range(set, 0, 7, 1);
    out.count = 0;
    cr_assert_eq(dirty_set_take(set, &out), 1);
    dirty_set_mark_range(set, 0, 7, 1);
    out.count = 0;
    cr_assert_eq(dirty_set_take(set, &out), 1);
    cr_assert_eq(out.pages[0], 7);
    cr_assert_eq(dirty_set_clear(set), 0);
    dirty_pages_free(&out);
    dirty_set_destroy(set);
}

Test(dirty_set, mark_words_aligned_unaligned_and_tail)
{
    struct dirty_set *set = make_set(200, 1);      /* last word has 8 valid bits */
    uint64_t bits[2] = { 0x8000000000000001ULL, 0xffffffffffffffffULL };
    struct dirty_set_writer w;
    dirty_set_write_begin(set, 0, &w);
    dirty_set_mark_words(&w, 128, bits, 2);        /* pages 128, 191, 192..199 (tail masked) */
    dirty_set_mark_words(&w, 3, bits, 1);          /* unaligned: pages 3 and 66 */
    cr_assert_eq(w.marked, 2 + 8 + 2);
    dirty_set_write_end(&w);
    uint64_t bitmap[4] = { 0, 0, 0, 0 };
    cr_assert_eq(dirty_set_take_bitmap(set, bitmap), 12);
    cr_assert_eq(bitmap[0], 1ULL << 3);
    cr_assert_eq(bitmap[1], 1ULL << 2);
    cr_assert_eq(bitmap[2], 0x8000000000000001ULL);
    cr_assert_eq(bitmap[3], 0xffULL);
    dirty_set_destroy(set);
}

Test(dirty_set, shards_merge_and_deduplicate)
{
    struct dirty_set *set = make_set(10000, 3);
    dirty_set_mark_range(set, 0, 10, 5);       /* 10..14 */
    dirty_set_mark_range(set, 1, 12, 5);       /* 12..16 */
    dirty_set_mark_range(set, 2, 9000, 1);
    dirty_set_mark_range(set, 7, 20, 1);       /* unknown shard -> shard 0 */
    cr_assert_eq(dirty_set_count_current(set), 9);
    struct dirty_pages out;
    dirty_pages_init(&out);
    cr_assert_eq(dirty_set_take(set, &out), 9);
    static const uint64_t want[] = { 10, 11, 12, 13, 14, 15, 16, 20, 9000 };
    for (size_t i = 0; i < 9; i++)
        cr_assert_eq(out.pages[i], want[i]);
    dirty_pages_free(&out);
    cr_assert_eq(dirty_set_shard_for_node(set, 5), 0);
    dirty_set_destroy(set);
}

/* Writers each mark their own interleaved pages exactly once, in short
 * sections, while the main thread keeps taking. Since every page is marked
 * once, each must come out of exactly one take. */
#define RACE_PAGES (1u << 20)
#define RACE_WRITERS 4

struct race_writer {
    struct dirty_set *set;
    unsigned id;
    _Atomic bool *go;
    _Atomic unsigned *finished;
};

static void *race_writer_main(void *arg)
{
    struct race_writer *rw = arg;
    while (!atomic_load_explicit(rw->go, memory_order_acquire))
        ;
    uint64_t page = rw->id;
    while (page < RACE_PAGES) {
        struct dirty_set_writer w;
        dirty_set_write_begin(rw->set, rw->id % rw->set->shard_count, &w);
        for (int i = 0; i < 32 && page < RACE_PAGES; i++, page += RACE_WRITERS)
            dirty_set_mark(&w, page);
        dirty_set_write_end(&w);
    }
    atomic_fetch_add_explicit(rw->finished, 1, memory_order_release);
    return NULL;
}

static void race(unsigned shards)
{
    struct dirty_set *set = make_set(RACE_PAGES, shards);
    uint8_t *seen = calloc(RACE_PAGES, 1);
    cr_assert_not_null(seen);
    _Atomic bool go = false;
    _Atomic unsigned finished = 0;
    pthread_t threads[RACE_WRITERS];
    struct race_writer rws[RACE_WRITERS];
    for (unsigned i = 0; i < RACE_WRITERS; i++) {
        rws[i] = (struct race_writer){ .set = set, .id = i, .go = &go, .finished = &finished };
        cr_assert_eq(pthread_create(&threads[i], NULL, race_writer_main, &rws[i]), 0);
    }
    atomic_store_explicit(&go, true, memory_order_release);
    struct dirty_pages out;
    dirty_pages_init(&out);
    uint64_t total = 0, takes = 0;
    for (;;) {
        /* Read before the take: if all writers were done, this take is
         * the last one needed. */
        bool last = atomic_load_explicit(&finished, memory_order_acquire) == RACE_WRITERS;
        out.count = 0;
        int64_t n = dirty_set_take(set, &out);
        cr_assert_geq(n, 0);
        cr_assert_eq((uint64_t)n, out.count);
        for (uint64_t i = 0; i < out.count; i++) {
            cr_assert_lt(out.pages[i], RACE_PAGES);
            cr_assert_eq(seen[out.pages[i]], 0, "page %llu returned twice",
                         (unsigned long long)out.pages[i]);
            seen[out.pages[i]] = 1;
            if (i)
                cr_assert_gt(out.pages[i], out.pages[i - 1], "sorted");
        }
        total += (uint64_t)n;
        takes++;
        if (last)
            break;
    }
    for (unsigned i = 0; i < RACE_WRITERS; i++)
        cr_assert_eq(pthread_join(threads[i], NULL), 0);
    /* All writers finished before the final take began. */
    cr_assert_eq(total, RACE_PAGES, "every page in exactly one take (%llu takes)",
                 (unsigned long long)takes);
    cr_assert_eq(dirty_set_take(set, &out), 0);
    dirty_pages_free(&out);
    free(seen);
    dirty_set_destroy(set);
}

Test(dirty_set, concurrent_setters_and_takes_one_shard, .timeout = 60)
{
    race(1);
}

Test(dirty_set, concurrent_setters_and_takes_two_shards, .timeout = 60)
{
    race(2);
}
