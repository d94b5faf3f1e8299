/*
 * The destination's populating thread (migration/populate.h), no KVM
 * needed: it faults guest RAM in up to MIG_POPULATE_AHEAD bytes ahead of
 * the receiver's frontier and no further, jumps with the frontier when the
 * receiver passes it (never filling what lies behind), and stops when told.
 * What it populated is read back from the memfd (SEEK_DATA / SEEK_HOLE),
 * exactly.
 */
#include <criterion/criterion.h>

#include <stdatomic.h>
#include <unistd.h>

#include "migration/populate.h"
#include "tests/harness.h"
#include "vmm/memory.h"

#define MIB (1ull << 20)

struct populate_progress {
    const struct mig_populate *populate;
    uint64_t bytes;
};

static bool populated_at_least(void *argument)
{
    const struct populate_progress *p = argument;
    return mig_populate_done(p->populate) >= p->bytes;
}

static off_t seek(int fd, off_t offset, int whence)
{
    off_t result = lseek(fd, offset, whence);
    return result < 0 ? -1 : result;
}

Test(populate, runs_ahead_of_the_frontier_by_its_window_then_follows_it, .timeout = 60)
{
    uint64_t size = MIG_POPULATE_AHEAD + 64 * MIB;
    struct guest_memory memory;
    cr_assert_eq(guest_memory_create(&memory, size, &(struct guest_memory_options){ .numa_node = -1,
                                                                                  .no_thp = true }), 0);
    _Atomic uint64_t frontier = 0;
    struct mig_populate populate = { .started = false };
    cr_assert_eq(mig_populate_start(&populate, memory.host, memory.size, &frontier), 0);

    struct populate_progress progress = { .populate = &populate, .bytes = MIG_POPULATE_AHEAD };
    cr_assert(harness_wait_until(populated_at_least, &progress, 30000), "populated %llu bytes",
              (unsigned long long)mig_populate_done(&populate));
    /* The window, and not a byte more: it waits for the frontier. */
    cr_assert_eq(mig_populate_done(&populate), MIG_POPULATE_AHEAD);
    cr_assert_eq(seek(memory.memfd, 0, SEEK_HOLE), (off_t)MIG_POPULATE_AHEAD);

    /* The receiver jumps to 100 MiB (+1 MiB into a chunk): the populater
     * starts again at that chunk, leaves the gap behind it alone, and
     * stops at the end of RAM. */
    uint64_t jump = 100 * MIB + MIB;
    atomic_store_explicit(&frontier, jump, memory_order_relaxed);
    uint64_t chunk = jump & ~(MIG_POPULATE_CHUNK - 1);
    progress.bytes = MIG_POPULATE_AHEAD + (size - chunk);
    cr_assert(harness_wait_until(populated_at_least, &progress, 30000), "populated %llu bytes",
              (unsigned long long)mig_populate_done(&populate));
    mig_populate_stop(&populate);
    cr_assert_not(populate.started);
    cr_assert_eq(mig_populate_done(&populate), MIG_POPULATE_AHEAD + (size - chunk));
    cr_assert_eq(seek(memory.memfd, (off_t)MIG_POPULATE_AHEAD, SEEK_DATA), (off_t)chunk,
                 "the gap the receiver jumped over was filled");
    cr_assert_eq(seek(memory.memfd, (off_t)chunk, SEEK_HOLE), (off_t)size);
    mig_populate_stop(&populate);   /* twice: a no-op */
    guest_memory_destroy(&memory);
}

Test(populate, stopping_before_it_started_is_a_no_op)
{
    struct mig_populate populate = { .started = false };
    mig_populate_stop(&populate);
    cr_assert_not(populate.started);
    cr_assert_eq(mig_populate_done(&populate), 0);
}
