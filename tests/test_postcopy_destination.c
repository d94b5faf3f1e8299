/*
 * The post-copy destination's fault service (migration/postcopy_destination.h,
 * issue 17 groundwork) on real guest RAM (vmm/memory.h, a 64 MiB sealed
 * memfd mapped MAP_SHARED): threads touching missing pages block until the
 * page is placed and then read exactly the placed bytes; requests are
 * de-duplicated; pages placed before their fault, zero pages, discards,
 * pages present before registration; counters and per-thread blocktime
 * (exact counts, blocktime only > 0); a blocked thread stays signalable and
 * stop wakes nobody; a failed request is asked again on the next fault. No KVM: the touching threads are ordinary threads, as
 * the VMM's own are. Skips with the reason where userfaultfd is not
 * permitted.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "migration/postcopy_destination.h"
#include "tests/harness.h"
#include "vmm/memory_extents.h"

#define RAM_SIZE (64ull << 20)
#define PAGE 4096u
#define WAIT_MS 10000u
#define MAX_REQUESTS 64u

/* Owned by one test; the request log is written by the fault thread
 * (through record_request) and read by the test thread, under lock. */
struct fixture {
    struct guest_memory memory;
    struct postcopy_destination *destination;
    pthread_mutex_t lock;
    uint64_t requests[MAX_REQUESTS];
    unsigned request_count;
    unsigned failures_left;     /* record_request fails this many calls first (each is logged) */
    /* Set before registration: keep the digest; hold the first place
     * after its copy (hold_after_copy) until the test lets it go. */
    bool digest;
    bool hold_after_copy;
    atomic_int hold;            /* 0 not reached, 1 the held place waits, 2 let go */
};

static int record_request(uint64_t page, void *opaque)
{
    struct fixture *f = opaque;
    pthread_mutex_lock(&f->lock);
    if (f->request_count < MAX_REQUESTS)
        f->requests[f->request_count] = page;
    f->request_count++;
    bool fail = f->failures_left > 0;
    if (fail)
        f->failures_left--;
    pthread_mutex_unlock(&f->lock);
    return fail ? -1 : 0;
}

static unsigned request_count(struct fixture *f)
{
    pthread_mutex_lock(&f->lock);
    unsigned count = f->request_count;
    pthread_mutex_unlock(&f->lock);
    return count;
}

/* Guest RAM as a destination has it: a memfd, or anonymous memory (ringvm
 * --ram anonymous: MISSING faults without MISSING_SHMEM, discards with
 * MADV_DONTNEED, present pages from /proc/self/pagemap). */
static void fixture_setup_on(struct fixture *f, bool anonymous)
{
    memset(f, 0, sizeof(*f));
    pthread_mutex_init(&f->lock, NULL);
    struct guest_memory_options options = { .numa_node = -1, .anonymous = anonymous };
    cr_assert_eq(guest_memory_create(&f->memory, RAM_SIZE, &options), 0);
    /* As a destination past POSTCOPY_OPEN (incoming_postcopy_open): 4 KiB
     * pages from here on, whatever the host grants. */
    guest_memory_forgo_thp(&f->memory);
}

static void fixture_setup(struct fixture *f)
{
    fixture_setup_on(f, false);
}

static bool hold_reached(void *argument)
{
    return atomic_load_explicit(&((struct fixture *)argument)->hold, memory_order_acquire) == 1;
}

static bool hold_released(void *argument)
{
    return atomic_load_explicit(&((struct fixture *)argument)->hold, memory_order_acquire) == 2;
}

/* The first place to copy pages waits here, between its copy and its
 * marking, until the test sets hold to 2. */
static void hold_first_copy(uint64_t page, uint64_t count, void *opaque)
{
    (void)page;
    (void)count;
    struct fixture *f = opaque;
    int expected = 0;
    if (!atomic_compare_exchange_strong_explicit(&f->hold, &expected, 1, memory_order_acq_rel, memory_order_acquire))
        return;
    cr_assert(harness_wait_until(hold_released, f, WAIT_MS), "the test never let the held place go");
}

static void fixture_register(struct fixture *f)
{
    char error[512] = "";
    struct postcopy_destination_options options = {
        .host = f->memory.host, .memfd = f->memory.memfd, .size = f->memory.size,
        .request_page = record_request, .opaque = f, .digest = f->digest,
        .after_copy = f->hold_after_copy ? hold_first_copy : NULL, .after_copy_opaque = f,
    };
    int result = postcopy_destination_create(&f->destination, &options, error, sizeof(error));
    if (result != 0 && strncmp(error, "userfaultfd is not available", 29) == 0) {
        guest_memory_destroy(&f->memory);
        harness_skip("%s", error);
    }
    cr_assert_eq(result, 0, "postcopy_destination_create: %s", error);
}

static void fixture_start_on(struct fixture *f, bool anonymous)
{
    fixture_setup_on(f, anonymous);
    fixture_register(f);
}

static void fixture_start(struct fixture *f)
{
    fixture_start_on(f, false);
}

static void fixture_end(struct fixture *f)
{
    postcopy_destination_destroy(f->destination);
    guest_memory_destroy(&f->memory);
    pthread_mutex_destroy(&f->lock);
}

/* A thread that reads one whole page of guest RAM. The test thread owns
 * it; the toucher writes thread_id, data and then done (release), and the
 * test reads data only after it saw done (acquire) or joined. */
struct toucher {
    struct fixture *fixture;
    uint64_t page;
    pthread_t thread;
    atomic_int thread_id;
    atomic_bool done;
    uint8_t data[PAGE];
};

static void *toucher_run(void *argument)
{
    struct toucher *t = argument;
    atomic_store_explicit(&t->thread_id, (int)gettid(), memory_order_release);
    memcpy(t->data, t->fixture->memory.host + t->page * PAGE, PAGE);
    atomic_store_explicit(&t->done, true, memory_order_release);
    return NULL;
}

static void toucher_start(struct toucher *t, struct fixture *f, uint64_t page)
{
    t->fixture = f;
    t->page = page;
    atomic_init(&t->thread_id, 0);
    atomic_init(&t->done, false);
    memset(t->data, 0xee, PAGE);
    cr_assert_eq(pthread_create(&t->thread, NULL, toucher_run, t), 0);
}

static bool toucher_done(void *argument)
{
    return atomic_load_explicit(&((struct toucher *)argument)->done, memory_order_acquire);
}

static void toucher_join(struct toucher *t)
{
    cr_assert(harness_wait_until(toucher_done, t, WAIT_MS), "the thread touching page %lu never finished",
              (unsigned long)t->page);
    cr_assert_eq(pthread_join(t->thread, NULL), 0);
}

struct count_wait {
    struct fixture *fixture;
    unsigned requests;          /* wait for at least this many requests */
    uint64_t faults;            /* and this many faults */
};

static bool counts_reached(void *argument)
{
    struct count_wait *w = argument;
    struct postcopy_destination_stats stats;
    postcopy_destination_get_stats(w->fixture->destination, &stats);
    return request_count(w->fixture) >= w->requests && stats.faults >= w->faults;
}

static void wait_counts(struct fixture *f, unsigned requests, uint64_t faults)
{
    struct count_wait w = { .fixture = f, .requests = requests, .faults = faults };
    cr_assert(harness_wait_until(counts_reached, &w, WAIT_MS), "waited %u ms for %u requests and %lu faults", WAIT_MS,
              requests, (unsigned long)faults);
}

/* Page data that names its page and version, read from between two
 * PROT_NONE guards: the place must read exactly 4096 bytes. */
static uint8_t *guarded_page(uint64_t page, uint8_t version)
{
    uint8_t *map = mmap(NULL, 3 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    cr_assert_neq(map, MAP_FAILED);
    cr_assert_eq(mprotect(map, PAGE, PROT_NONE), 0);
    cr_assert_eq(mprotect(map + 2 * PAGE, PAGE, PROT_NONE), 0);
    uint8_t *data = map + PAGE;
    for (unsigned i = 0; i < PAGE; i++)
        data[i] = (uint8_t)(page * 31 + i * 7 + version);
    return data;
}

static void guarded_page_free(uint8_t *data)
{
    munmap(data - PAGE, 3 * PAGE);
}

static struct postcopy_destination_stats stats_of(struct fixture *f)
{
    struct postcopy_destination_stats stats;
    postcopy_destination_get_stats(f->destination, &stats);
    return stats;
}

static const struct postcopy_thread_blocktime *thread_entry(const struct postcopy_destination_stats *stats,
                                                            int thread_id)
{
    for (unsigned i = 0; i < stats->thread_count; i++)
        if (stats->threads[i].thread_id == thread_id)
            return &stats->threads[i];
    cr_assert_fail("thread %d has no blocktime entry", thread_id);
    return NULL;
}

static void touching_threads_block_until_placed_and_read_exactly_the_placed_bytes(bool anonymous)
{
    struct fixture f;
    fixture_start_on(&f, anonymous);
    struct toucher first, second;
    toucher_start(&first, &f, 10);
    toucher_start(&second, &f, 20);
    wait_counts(&f, 2, 2);
    cr_assert(!toucher_done(&first) && !toucher_done(&second), "nothing placed: both threads are blocked");
    pthread_mutex_lock(&f.lock);
    bool both = (f.requests[0] == 10 && f.requests[1] == 20) || (f.requests[0] == 20 && f.requests[1] == 10);
    pthread_mutex_unlock(&f.lock);
    cr_assert(both, "requests for pages 10 and 20");

    uint8_t *data10 = guarded_page(10, 1);
    cr_assert_eq(postcopy_destination_place(f.destination, 10, data10), 0);
    toucher_join(&first);
    cr_assert_eq(memcmp(first.data, data10, PAGE), 0, "the thread read exactly the placed bytes");
    cr_assert(!toucher_done(&second), "page 20 is still missing");
    cr_assert(postcopy_destination_received(f.destination, 10));
    cr_assert(!postcopy_destination_received(f.destination, 20));

    uint8_t *data20 = guarded_page(20, 2);
    cr_assert_eq(postcopy_destination_place(f.destination, 20, data20), 0);
    toucher_join(&second);
    cr_assert_eq(memcmp(second.data, data20, PAGE), 0);

    struct postcopy_destination_stats s = stats_of(&f);
    cr_assert_eq(s.faults, 2);
    cr_assert_eq(s.requested, 2);
    cr_assert_eq(s.duplicates, 0);
    cr_assert_eq(s.already_received, 0);
    cr_assert_eq(s.placed, 2);
    cr_assert_eq(s.zero, 0);
    cr_assert_eq(s.already_present, 0);
    cr_assert_eq(s.initially_present, 0);
    cr_assert_eq(s.received_pages, 2);
    cr_assert_eq(s.thread_count, 2);
    const struct postcopy_thread_blocktime *one = thread_entry(&s, atomic_load(&first.thread_id));
    const struct postcopy_thread_blocktime *two = thread_entry(&s, atomic_load(&second.thread_id));
    cr_assert_eq(one->faults, 1);
    cr_assert_eq(two->faults, 1);
    cr_assert_gt(one->blocktime_ns, 0);
    cr_assert_gt(two->blocktime_ns, 0);
    cr_assert_eq(s.blocktime_total_ns, one->blocktime_ns + two->blocktime_ns);
    cr_assert_eq(s.latency.count, 2, "one latency sample per woken thread");
    cr_assert_gt(s.latency_max_ns, 0);
    cr_assert_gt(s.latency_p50_ns, 0);
    cr_assert_geq(s.latency_p99_ns, s.latency_p50_ns);
    guarded_page_free(data10);
    guarded_page_free(data20);
    fixture_end(&f);
}

Test(postcopy_destination, touching_threads_block_until_placed_and_read_exactly_the_placed_bytes, .timeout = 60)
{
    touching_threads_block_until_placed_and_read_exactly_the_placed_bytes(false);
}
Test(postcopy_destination, touching_threads_block_until_placed_and_read_exactly_the_placed_bytes_on_anonymous_ram, .timeout = 60)
{
    touching_threads_block_until_placed_and_read_exactly_the_placed_bytes(true);
}

Test(postcopy_destination, two_threads_faulting_on_one_page_cause_exactly_one_request, .timeout = 60)
{
    struct fixture f;
    fixture_start(&f);
    struct toucher a, b;
    toucher_start(&a, &f, 5);
    toucher_start(&b, &f, 5);
    wait_counts(&f, 1, 2);
    cr_assert_eq(request_count(&f), 1);
    cr_assert_eq(f.requests[0], 5);
    uint8_t *data = guarded_page(5, 9);
    cr_assert_eq(postcopy_destination_place(f.destination, 5, data), 0);
    toucher_join(&a);
    toucher_join(&b);
    cr_assert_eq(memcmp(a.data, data, PAGE), 0);
    cr_assert_eq(memcmp(b.data, data, PAGE), 0);
    struct postcopy_destination_stats s = stats_of(&f);
    cr_assert_eq(s.faults, 2);
    cr_assert_eq(s.requested, 1);
    cr_assert_eq(s.duplicates, 1);
    cr_assert_eq(s.placed, 1);
    cr_assert_eq(s.thread_count, 2);
    cr_assert_gt(thread_entry(&s, atomic_load(&a.thread_id))->blocktime_ns, 0);
    cr_assert_gt(thread_entry(&s, atomic_load(&b.thread_id))->blocktime_ns, 0);
    cr_assert_eq(s.latency.count, 2, "both threads were woken by the one place");
    guarded_page_free(data);
    fixture_end(&f);
}

Test(postcopy_destination, a_page_placed_by_the_stream_before_its_fault_causes_no_request, .timeout = 60)
{
    struct fixture f;
    fixture_start(&f);
    uint8_t *data = guarded_page(7, 3);
    cr_assert_eq(postcopy_destination_place(f.destination, 7, data), 0);
    struct toucher t;
    toucher_start(&t, &f, 7);
    toucher_join(&t);
    cr_assert_eq(memcmp(t.data, data, PAGE), 0);
    struct postcopy_destination_stats s = stats_of(&f);
    cr_assert_eq(request_count(&f), 0);
    cr_assert_eq(s.faults, 0);
    cr_assert_eq(s.requested, 0);
    cr_assert_eq(s.placed, 1);
    cr_assert_eq(s.thread_count, 0);
    cr_assert_eq(s.latency.count, 0);
    guarded_page_free(data);
    fixture_end(&f);
}

static void zero_pages_read_as_zero(bool anonymous)
{
    struct fixture f;
    fixture_start_on(&f, anonymous);
    struct toucher t;
    toucher_start(&t, &f, 9);
    wait_counts(&f, 1, 1);
    cr_assert_eq(postcopy_destination_place_zero(f.destination, 9), 0);
    toucher_join(&t);
    static const uint8_t zero[PAGE];
    cr_assert_eq(memcmp(t.data, zero, PAGE), 0, "the toucher's buffer was 0xee before");
    /* And one placed as zero before anyone touched it. */
    cr_assert_eq(postcopy_destination_place_zero(f.destination, 100), 0);
    cr_assert_eq(memcmp(f.memory.host + 100 * PAGE, zero, PAGE), 0);
    struct postcopy_destination_stats s = stats_of(&f);
    cr_assert_eq(s.faults, 1);
    cr_assert_eq(s.requested, 1);
    cr_assert_eq(s.zero, 2);
    cr_assert_eq(s.placed, 0);
    cr_assert_eq(s.received_pages, 2);
    fixture_end(&f);
}

Test(postcopy_destination, zero_pages_read_as_zero, .timeout = 60)
{
    zero_pages_read_as_zero(false);
}
Test(postcopy_destination, zero_pages_read_as_zero_on_anonymous_ram, .timeout = 60)
{
    zero_pages_read_as_zero(true);
}

/* Zero pages nobody waits for stay holes in the memfd (placing them would
 * allocate and clear a page each); a requested one among them is placed,
 * a later touch of a hole gets its zero page from the fault thread
 * without a request, and every one is received and in the digest as a
 * zero page from the start. */
Test(postcopy_destination, zero_pages_nobody_waits_for_stay_holes_until_touched, .timeout = 60)
{
    struct fixture f;
    memset(&f, 0, sizeof(f));
    fixture_setup(&f);
    f.digest = true;
    fixture_register(&f);
    struct toucher waiting;
    toucher_start(&waiting, &f, 205);
    wait_counts(&f, 1, 1);
    uint64_t accounted = 0;
    cr_assert_eq(postcopy_destination_place_zero_range(f.destination, 200, 10, &accounted), 0);
    cr_assert_eq(accounted, 10);
    toucher_join(&waiting);
    static const uint8_t zero[PAGE];
    cr_assert_eq(memcmp(waiting.data, zero, PAGE), 0, "the toucher's buffer was 0xee before");
    struct postcopy_destination_stats s = stats_of(&f);
    cr_assert_eq(s.zero, 1, "only the requested page is placed");
    cr_assert_eq(s.unplaced, 9);
    cr_assert_eq(s.unplaced_touched, 0);
    cr_assert_eq(s.received_pages, 10);
    for (uint64_t page = 200; page < 210; page++)
        cr_assert(postcopy_destination_received(f.destination, page), "page %lu", (unsigned long)page);
    struct guest_ram ram = guest_memory_ram(&f.memory);
    uint64_t data_start, data_end;
    cr_assert_eq(guest_ram_next_data(&ram, 200, &data_start, &data_end), 0);
    cr_assert_eq(data_start, 205, "pages 200..204 are holes");
    cr_assert_eq(data_end, 206, "pages 206..209 are holes");

    struct toucher later;
    toucher_start(&later, &f, 207);
    toucher_join(&later);
    cr_assert_eq(memcmp(later.data, zero, PAGE), 0);
    s = stats_of(&f);
    cr_assert_eq(s.faults, 2);
    cr_assert_eq(s.requested, 1, "a hole's touch asks the source nothing");
    cr_assert_eq(request_count(&f), 1);
    cr_assert_eq(s.unplaced_touched, 1);
    cr_assert_eq(s.zero, 1);
    cr_assert_eq(s.received_pages, 10);
    cr_assert_eq(guest_ram_next_data(&ram, 206, &data_start, &data_end), 0);
    cr_assert_eq(data_start, 207, "the touched hole holds a page now");
    cr_assert_eq(data_end, 208);
    /* A second range over the same pages accounts nothing new. */
    cr_assert_eq(postcopy_destination_place_zero_range(f.destination, 200, 10, &accounted), 0);
    cr_assert_eq(accounted, 0);
    cr_assert_eq(stats_of(&f).unplaced, 9);

    struct page_digest expected, got;
    page_digest_init(&expected);
    for (uint64_t page = 200; page < 210; page++)
        page_digest_add_zero(&expected, page);
    postcopy_destination_digest(f.destination, &got);
    cr_assert_eq(got.pages, 10);
    cr_assert_eq(got.low, expected.low);
    cr_assert_eq(got.high, expected.high);
    /* Discarded, a hole is missing again: the next touch asks the source. */
    cr_assert_eq(postcopy_destination_discard(f.destination, 203, 1), 0);
    struct toucher after_discard;
    toucher_start(&after_discard, &f, 203);
    wait_counts(&f, 2, 3);
    cr_assert(!toucher_done(&after_discard), "a discarded hole is missing: the toucher blocks");
    cr_assert_eq(postcopy_destination_place_zero(f.destination, 203), 0);
    toucher_join(&after_discard);
    cr_assert_eq(stats_of(&f).unplaced_touched, 1);
    fixture_end(&f);
}

static void discard_makes_the_next_touch_fault_and_request_again(bool anonymous)
{
    struct fixture f;
    fixture_start_on(&f, anonymous);
    struct toucher t;
    toucher_start(&t, &f, 3);
    wait_counts(&f, 1, 1);
    uint8_t *old = guarded_page(3, 1);
    cr_assert_eq(postcopy_destination_place(f.destination, 3, old), 0);
    toucher_join(&t);
    cr_assert_eq(memcmp(t.data, old, PAGE), 0);

    cr_assert_eq(postcopy_destination_discard(f.destination, 3, 1), 0);
    cr_assert(!postcopy_destination_received(f.destination, 3));
    struct guest_ram ram = guest_memory_ram(&f.memory);
    uint64_t data_start, data_end;
    cr_assert_eq(guest_ram_next_data(&ram, 3, &data_start, &data_end), 0);
    cr_assert_gt(data_start, 3, "page 3 holds no data again (a hole in the memfd, not present in anonymous RAM)");

    struct toucher again;
    toucher_start(&again, &f, 3);
    wait_counts(&f, 2, 2);
    cr_assert(!toucher_done(&again), "the discarded page is missing: the toucher blocks");
    cr_assert_eq(f.requests[1], 3);
    uint8_t *fresh = guarded_page(3, 2);
    cr_assert_eq(postcopy_destination_place(f.destination, 3, fresh), 0);
    toucher_join(&again);
    cr_assert_eq(memcmp(again.data, fresh, PAGE), 0, "the new bytes, never the discarded ones");

    struct postcopy_destination_stats s = stats_of(&f);
    cr_assert_eq(s.faults, 2);
    cr_assert_eq(s.requested, 2);
    cr_assert_eq(s.duplicates, 0);
    cr_assert_eq(s.placed, 2);
    cr_assert_eq(s.discarded, 1);
    cr_assert_eq(s.received_pages, 1);
    guarded_page_free(old);
    guarded_page_free(fresh);
    fixture_end(&f);
}

Test(postcopy_destination, discard_makes_the_next_touch_fault_and_request_again, .timeout = 60)
{
    discard_makes_the_next_touch_fault_and_request_again(false);
}
Test(postcopy_destination, discard_makes_the_next_touch_fault_and_request_again_on_anonymous_ram, .timeout = 60)
{
    discard_makes_the_next_touch_fault_and_request_again(true);
}

Test(postcopy_destination, placing_a_page_twice_keeps_the_first_and_counts_already_present, .timeout = 60)
{
    struct fixture f;
    fixture_start(&f);
    uint8_t *first = guarded_page(4, 1);
    uint8_t *second = guarded_page(4, 2);
    cr_assert_eq(postcopy_destination_place(f.destination, 4, first), 0);
    cr_assert_eq(postcopy_destination_place(f.destination, 4, second), 0, "EEXIST is not an error");
    cr_assert_eq(postcopy_destination_place_zero(f.destination, 4), 0);
    cr_assert_eq(memcmp(f.memory.host + 4 * PAGE, first, PAGE), 0);
    struct postcopy_destination_stats s = stats_of(&f);
    cr_assert_eq(s.placed, 1);
    cr_assert_eq(s.zero, 0);
    cr_assert_eq(s.already_present, 2);
    cr_assert_eq(s.received_pages, 1);
    guarded_page_free(first);
    guarded_page_free(second);
    fixture_end(&f);
}

struct held_place {
    struct fixture *fixture;
    uint64_t page;
    const uint8_t *data;
    int result;
};

static void *held_place_run(void *argument)
{
    struct held_place *h = argument;
    h->result = postcopy_destination_place(h->fixture->destination, h->page, h->data);
    return NULL;
}

/* The race behind a post-copy digest one page short with no page missing
 * (seen once in CI: pure post-copy over TCP at 125 MiB/s). pc-urgent's
 * copy of a page succeeded, and before it took the lock to mark the page
 * the main stream's place of the same page found it present. That place
 * marked it received, the END wait saw nothing missing and read the
 * digest, and the page was added to it only afterwards. A page found
 * present must count as received only once the place that copied it has
 * marked it and added it to the digest. */
Test(postcopy_destination, a_page_found_present_is_received_only_once_the_copying_place_marked_it, .timeout = 60)
{
    struct fixture f;
    fixture_setup(&f);
    f.digest = true;
    f.hold_after_copy = true;
    fixture_register(&f);
    uint8_t *urgent = guarded_page(9, 1);
    uint8_t *stream = guarded_page(9, 1);
    struct held_place held = { .fixture = &f, .page = 9, .data = urgent, .result = -1 };
    pthread_t thread;
    cr_assert_eq(pthread_create(&thread, NULL, held_place_run, &held), 0);
    cr_assert(harness_wait_until(hold_reached, &f, WAIT_MS), "the first place never copied its page");

    /* The page is in RAM, its place not marked yet: the other channel's
     * place finds it present and must leave it unreceived. */
    cr_assert_eq(postcopy_destination_place(f.destination, 9, stream), 0, "EEXIST is not an error");
    struct postcopy_destination_stats s = stats_of(&f);
    cr_assert_eq(s.already_present, 1);
    cr_assert_eq(s.placed, 0);
    cr_assert(!postcopy_destination_received(f.destination, 9), "received before its place added it to the digest");
    cr_assert_eq(postcopy_destination_received_pages(f.destination), 0);
    struct page_digest digest;
    postcopy_destination_digest(f.destination, &digest);
    cr_assert_eq(digest.pages, 0);

    atomic_store_explicit(&f.hold, 2, memory_order_release);
    cr_assert_eq(pthread_join(thread, NULL), 0);
    cr_assert_eq(held.result, 0);
    s = stats_of(&f);
    cr_assert_eq(s.placed, 1);
    cr_assert_eq(s.already_present, 1);
    cr_assert_eq(s.received_pages, 1);
    cr_assert(postcopy_destination_received(f.destination, 9));
    struct page_digest expected;
    page_digest_init(&expected);
    page_digest_add(&expected, 9, urgent);
    postcopy_destination_digest(f.destination, &digest);
    cr_assert_eq(digest.pages, 1, "the page is in the digest exactly once");
    cr_assert_eq(digest.low, expected.low);
    cr_assert_eq(digest.high, expected.high);
    cr_assert_eq(memcmp(f.memory.host + 9 * PAGE, urgent, PAGE), 0);
    guarded_page_free(urgent);
    guarded_page_free(stream);
    fixture_end(&f);
}

/* Pre-copy into RAM on transparent huge pages (before POSTCOPY_OPEN): one
 * received page brings 511 zero neighbours into RAM that the source never
 * sent (memfd: the file holds them; anonymous RAM: they are present in the
 * page tables). The source's discards (every page it did not send, or sent
 * and dirtied since) must split the huge page and leave those neighbours
 * without data, or the guest would read zeros where its data should fault
 * in. */
static void a_huge_page_from_pre_copy_keeps_only_the_received_pages(bool anonymous)
{
    struct fixture f;
    memset(&f, 0, sizeof(f));
    pthread_mutex_init(&f.lock, NULL);
    cr_assert_eq(guest_memory_create(&f.memory, RAM_SIZE,
                                     &(struct guest_memory_options){ .numa_node = -1, .anonymous = anonymous }), 0);
    harness_require_thp(&f.memory);
    memset(f.memory.host + 11 * PAGE, 0x11, PAGE);
    memset(f.memory.host + 12 * PAGE + 100, 0x12, 8);
    if (harness_mapping_huge_kb(f.memory.host) == 0)
        harness_skip("the host granted no huge page to advised RAM (fragmented memory?)");
    struct guest_ram ram = guest_memory_ram(&f.memory);
    uint64_t data_start, data_end;
    cr_assert_eq(guest_ram_next_data(&ram, 0, &data_start, &data_end), 0);
    cr_assert_eq(data_start, 0, "the huge page's untouched neighbours hold data before the discards");
    guest_memory_forgo_thp(&f.memory);
    /* The discard list of a source that sent pages 11 and 12 only. */
    char error[300];
    cr_assert_eq(guest_ram_discard(&ram, 0, 11 * PAGE, error, sizeof(error)), 0, "%s", error);
    cr_assert_eq(guest_ram_discard(&ram, 13 * PAGE, RAM_SIZE - 13 * PAGE, error, sizeof(error)), 0, "%s", error);
    fixture_register(&f);
    struct postcopy_destination_stats s = stats_of(&f);
    cr_assert_eq(s.initially_present, 2);
    cr_assert(postcopy_destination_received(f.destination, 11));
    cr_assert(postcopy_destination_received(f.destination, 12));
    cr_assert_not(postcopy_destination_received(f.destination, 13));
    cr_assert_not(postcopy_destination_received(f.destination, 10));
    cr_assert_eq(f.memory.host[11 * PAGE + 4095], 0x11);
    fixture_end(&f);
}

Test(postcopy_destination, a_transparent_huge_page_from_pre_copy_keeps_only_the_received_pages, .timeout = 60)
{
    a_huge_page_from_pre_copy_keeps_only_the_received_pages(false);
}

Test(postcopy_destination, an_anonymous_huge_page_from_pre_copy_keeps_only_the_received_pages, .timeout = 60)
{
    a_huge_page_from_pre_copy_keeps_only_the_received_pages(true);
}

static void pages_present_before_registration_count_as_received(bool anonymous)
{
    struct fixture f;
    fixture_setup_on(&f, anonymous);
    /* What pre-copy left: two pages written, the rest holes. */
    memset(f.memory.host + 11 * PAGE, 0x11, PAGE);
    memset(f.memory.host + 12 * PAGE + 100, 0x12, 8);
    fixture_register(&f);
    struct postcopy_destination_stats s = stats_of(&f);
    cr_assert_eq(s.initially_present, 2);
    cr_assert_eq(s.received_pages, 2);
    cr_assert(postcopy_destination_received(f.destination, 11));
    cr_assert(postcopy_destination_received(f.destination, 12));
    cr_assert(!postcopy_destination_received(f.destination, 13));
    struct toucher t;
    toucher_start(&t, &f, 11);
    toucher_join(&t);
    cr_assert_eq(t.data[0], 0x11);
    cr_assert_eq(t.data[PAGE - 1], 0x11);
    cr_assert_eq(stats_of(&f).faults, 0);
    uint64_t words[2] = { 1, 1 };
    postcopy_destination_copy_received(f.destination, 0, 2, words);
    cr_assert_eq(words[0], (1ull << 11) | (1ull << 12));
    cr_assert_eq(words[1], 0);
    fixture_end(&f);
}

Test(postcopy_destination, pages_present_before_registration_count_as_received, .timeout = 60)
{
    pages_present_before_registration_count_as_received(false);
}
Test(postcopy_destination, pages_present_before_registration_count_as_received_on_anonymous_ram, .timeout = 60)
{
    pages_present_before_registration_count_as_received(true);
}

Test(postcopy_destination, out_of_range_pages_are_refused, .timeout = 60)
{
    struct fixture f;
    fixture_start(&f);
    uint64_t pages = RAM_SIZE / PAGE;
    uint8_t *data = guarded_page(0, 0);
    cr_assert_eq(postcopy_destination_place(f.destination, pages, data), -ERANGE);
    cr_assert_eq(postcopy_destination_place_zero(f.destination, UINT64_MAX), -ERANGE);
    cr_assert_eq(postcopy_destination_discard(f.destination, 0, 0), -ERANGE);
    cr_assert_eq(postcopy_destination_discard(f.destination, pages - 1, 2), -ERANGE);
    cr_assert_eq(postcopy_destination_discard(f.destination, 1, UINT64_MAX), -ERANGE);
    cr_assert(!postcopy_destination_received(f.destination, pages));
    struct postcopy_destination_stats s = stats_of(&f);
    cr_assert_eq(s.placed + s.zero + s.discarded, 0);
    guarded_page_free(data);
    fixture_end(&f);
}

static atomic_int signals_handled;

static void count_signal(int signal)
{
    (void)signal;
    atomic_fetch_add_explicit(&signals_handled, 1, memory_order_relaxed);
}

static bool signals_reached(void *argument)
{
    return atomic_load_explicit(&signals_handled, memory_order_relaxed) >= *(int *)argument;
}

/* What a waiter sees when post-copy pauses or shuts down: its signals are
 * delivered while it is blocked (the access is retried afterwards, a new
 * fault the fault thread de-duplicates), stop wakes nobody, and a place
 * after stop still delivers the page. */
Test(postcopy_destination, a_blocked_thread_stays_signalable_and_stop_wakes_nobody, .timeout = 60)
{
    struct sigaction action = { .sa_handler = count_signal };
    sigemptyset(&action.sa_mask);
    cr_assert_eq(sigaction(SIGUSR2, &action, NULL), 0);
    atomic_store(&signals_handled, 0);
    struct fixture f;
    fixture_start(&f);
    struct toucher t;
    toucher_start(&t, &f, 30);
    wait_counts(&f, 1, 1);

    cr_assert_eq(pthread_kill(t.thread, SIGUSR2), 0);
    int want = 1;
    cr_assert(harness_wait_until(signals_reached, &want, WAIT_MS), "the blocked thread's signal handler never ran");
    wait_counts(&f, 1, 2);      /* the retried access faulted again */
    cr_assert(!toucher_done(&t), "after its handler the thread blocks again");

    postcopy_destination_stop(f.destination);
    postcopy_destination_stop(f.destination);   /* idempotent */
    cr_assert_eq(pthread_kill(t.thread, SIGUSR2), 0);
    want = 2;
    cr_assert(harness_wait_until(signals_reached, &want, WAIT_MS), "signals reach it after stop too");
    cr_assert(!toucher_done(&t), "stop woke nobody: no zero page, no stale data");

    uint8_t *data = guarded_page(30, 5);
    cr_assert_eq(postcopy_destination_place(f.destination, 30, data), 0);
    toucher_join(&t);
    cr_assert_eq(memcmp(t.data, data, PAGE), 0);
    struct postcopy_destination_stats s = stats_of(&f);
    cr_assert_eq(s.faults, 2, "the fault after the second signal was never read (the fault thread had stopped)");
    cr_assert_eq(s.requested, 1);
    cr_assert_eq(s.duplicates, 1);
    cr_assert_eq(s.thread_count, 1);
    cr_assert_eq(s.threads[0].faults, 2);
    cr_assert_gt(s.threads[0].blocktime_ns, 0);
    cr_assert_eq(s.latency.count, 1, "one blocked thread, one wake");
    guarded_page_free(data);
    fixture_end(&f);
}

/* A request that could not be queued leaves the page unrequested: the
 * thread's next fault on it (here the retry after a signal) asks again. */
Test(postcopy_destination, a_failed_request_is_asked_again_on_the_next_fault, .timeout = 60)
{
    struct sigaction action = { .sa_handler = count_signal };
    sigemptyset(&action.sa_mask);
    cr_assert_eq(sigaction(SIGUSR2, &action, NULL), 0);
    atomic_store(&signals_handled, 0);
    struct fixture f;
    fixture_start(&f);
    pthread_mutex_lock(&f.lock);
    f.failures_left = 1;
    pthread_mutex_unlock(&f.lock);
    struct toucher t;
    toucher_start(&t, &f, 40);
    wait_counts(&f, 1, 1);
    struct postcopy_destination_stats s = stats_of(&f);
    cr_assert_eq(s.request_failures, 1);
    cr_assert_eq(s.requested, 0);
    cr_assert_eq(pthread_kill(t.thread, SIGUSR2), 0);
    wait_counts(&f, 2, 2);
    uint8_t *data = guarded_page(40, 6);
    cr_assert_eq(postcopy_destination_place(f.destination, 40, data), 0);
    toucher_join(&t);
    cr_assert_eq(memcmp(t.data, data, PAGE), 0);
    s = stats_of(&f);
    cr_assert_eq(s.faults, 2);
    cr_assert_eq(s.request_failures, 1);
    cr_assert_eq(s.requested, 1);
    cr_assert_eq(s.duplicates, 0, "the failed request did not count as requested");
    cr_assert_eq(f.requests[0], 40, "the failed call");
    cr_assert_eq(f.requests[1], 40, "the call that queued it");
    guarded_page_free(data);
    fixture_end(&f);
}

/* 16 threads on 4 pages, 4 on each: 16 faults, 4 requests, 12 duplicates,
 * 16 wakes, and each thread reads its own page's bytes. */
Test(postcopy_destination, sixteen_threads_on_four_pages_cause_four_requests, .timeout = 60)
{
    enum { THREADS = 16, PAGES = 4 };
    struct fixture f;
    fixture_start(&f);
    static struct toucher touchers[THREADS];
    for (unsigned i = 0; i < THREADS; i++)
        toucher_start(&touchers[i], &f, 200 + i % PAGES);
    wait_counts(&f, PAGES, THREADS);
    uint8_t *data[PAGES];
    for (unsigned p = 0; p < PAGES; p++) {
        data[p] = guarded_page(200 + p, 7);
        cr_assert_eq(postcopy_destination_place(f.destination, 200 + p, data[p]), 0);
    }
    for (unsigned i = 0; i < THREADS; i++) {
        toucher_join(&touchers[i]);
        cr_assert_eq(memcmp(touchers[i].data, data[i % PAGES], PAGE), 0, "thread %u", i);
    }
    struct postcopy_destination_stats s = stats_of(&f);
    cr_assert_eq(request_count(&f), PAGES);
    cr_assert_eq(s.faults, THREADS);
    cr_assert_eq(s.requested, PAGES);
    cr_assert_eq(s.duplicates, THREADS - PAGES);
    cr_assert_eq(s.placed, PAGES);
    cr_assert_eq(s.thread_count, THREADS);
    cr_assert_eq(s.latency.count, THREADS);
    uint64_t sum = 0;
    for (unsigned i = 0; i < THREADS; i++) {
        const struct postcopy_thread_blocktime *entry = thread_entry(&s, atomic_load(&touchers[i].thread_id));
        cr_assert_eq(entry->faults, 1);
        cr_assert_gt(entry->blocktime_ns, 0);
        sum += entry->blocktime_ns;
    }
    cr_assert_eq(s.blocktime_total_ns, sum);
    for (unsigned p = 0; p < PAGES; p++)
        guarded_page_free(data[p]);
    fixture_end(&f);
}

/* The latency buckets and percentiles (pure arithmetic, runs everywhere). */
Test(postcopy_destination, latency_buckets_are_an_eighth_of_a_power_of_two)
{
    cr_assert_eq(postcopy_latency_bucket(0), 0);
    cr_assert_eq(postcopy_latency_bucket(15), 15);
    cr_assert_eq(postcopy_latency_bucket(16), 16);
    cr_assert_eq(postcopy_latency_bucket(17), 16);
    cr_assert_eq(postcopy_latency_bucket(18), 17);
    cr_assert_eq(postcopy_latency_bucket(31), 23);
    cr_assert_eq(postcopy_latency_bucket(32), 24);
    cr_assert_eq(postcopy_latency_bucket(1000000), 143);
    cr_assert_eq(postcopy_latency_bucket_low_ns(143), 983040);
    cr_assert_eq(postcopy_latency_bucket_low_ns(144), 1048576);
    cr_assert_eq(postcopy_latency_bucket(1ull << 60), POSTCOPY_LATENCY_BUCKETS - 1);
    cr_assert_eq(postcopy_latency_bucket_low_ns(POSTCOPY_LATENCY_BUCKETS), 1ull << 48);
    /* Every value lies in its bucket, and a bucket is at most 1/8 of its
     * low end wide (from 16 ns on). */
    for (uint64_t v = 1; v < (1ull << 48); v = v * 3 / 2 + 1) {
        unsigned b = postcopy_latency_bucket(v);
        uint64_t low = postcopy_latency_bucket_low_ns(b), high = postcopy_latency_bucket_low_ns(b + 1);
        cr_assert(low <= v && v < high, "%" PRIu64 " ns in bucket %u [%" PRIu64 ", %" PRIu64 ")", v, b, low, high);
        if (v >= 16)
            cr_assert_leq((high - low) * 8, low, "bucket %u too wide", b);
    }
}

Test(postcopy_destination, latency_quantiles_interpolate_inside_their_bucket)
{
    struct postcopy_latency_histogram h = { 0 };
    cr_assert_eq(postcopy_latency_quantile(&h, 0.5), 0);
    h.buckets[postcopy_latency_bucket(1100)] = 2;       /* bucket 64: [1024, 1152) ns */
    h.buckets[postcopy_latency_bucket(1000000)] = 2;    /* bucket 143: [983040, 1048576) ns */
    cr_assert_eq(postcopy_latency_bucket(1100), 64);
    cr_assert_eq(postcopy_latency_quantile(&h, 0.0), 1088);
    cr_assert_eq(postcopy_latency_quantile(&h, 0.5), 1152);
    cr_assert_eq(postcopy_latency_quantile(&h, 0.99), 1047265);
    cr_assert_eq(postcopy_latency_quantile(&h, 1.0), 1048576);
    struct postcopy_latency_histogram low = { .buckets = { [0] = 1 } };
    cr_assert_eq(postcopy_latency_quantile(&low, 0.5), 1);
}
