/* migration/pacing.c: the bandwidth cap's token bucket, on a synthetic clock. */
#include <criterion/criterion.h>

#include "migration/pacing.h"

#define SECOND 1000000000ull

Test(pacing, no_cap_never_waits)
{
    struct mig_pacer pacer;
    mig_pacer_init(&pacer, 5 * SECOND, 0);
    cr_assert_eq(mig_pacer_wait_ns(&pacer, 5 * SECOND, 0, 0), 0);
    cr_assert_eq(mig_pacer_wait_ns(&pacer, 5 * SECOND, UINT64_C(1) << 40, 0), 0);
}

Test(pacing, bytes_ahead_of_the_cap_wait_exactly_their_time)
{
    struct mig_pacer pacer;
    mig_pacer_init(&pacer, 1 * SECOND, 0);
    /* A new cap starts with MIG_PACE_MAX_CREDIT_NS (10 ms) of credit. */
    cr_assert_eq(mig_pacer_wait_ns(&pacer, 1 * SECOND, 0, 1000000), 0);
    /* 1 MB sent at 1 MB/s: due 1 s after the reference (10 ms back). */
    cr_assert_eq(mig_pacer_wait_ns(&pacer, 1 * SECOND, 1000000, 1000000), SECOND - MIG_PACE_MAX_CREDIT_NS);
    cr_assert_eq(mig_pacer_wait_ns(&pacer, 1 * SECOND + 500000000ull, 1000000, 1000000),
                 SECOND / 2 - MIG_PACE_MAX_CREDIT_NS);
    cr_assert_eq(mig_pacer_wait_ns(&pacer, 2 * SECOND - MIG_PACE_MAX_CREDIT_NS, 1000000, 1000000), 0);
}

Test(pacing, an_idle_link_saves_up_at_most_ten_ms)
{
    struct mig_pacer pacer;
    mig_pacer_init(&pacer, 0, 0);
    uint64_t cap = 1000000;     /* 1 MB/s: 10 ms = 10 000 bytes */
    cr_assert_eq(mig_pacer_wait_ns(&pacer, 1 * SECOND, 0, cap), 0);
    cr_assert_eq(mig_pacer_wait_ns(&pacer, 1 * SECOND, 500000, cap), SECOND / 2 - MIG_PACE_MAX_CREDIT_NS);
    /* 9 s idle, then the sender has more: it may go at once... */
    cr_assert_eq(mig_pacer_wait_ns(&pacer, 10 * SECOND, 500000, cap), 0);
    /* ...but only 10 ms worth ahead of the cap, not 9 s worth (9 MB). */
    cr_assert_eq(mig_pacer_wait_ns(&pacer, 10 * SECOND, 500000 + 10000, cap), 0);
    cr_assert_eq(mig_pacer_wait_ns(&pacer, 10 * SECOND, 500000 + 10001, cap), 1000);
    cr_assert_eq(mig_pacer_wait_ns(&pacer, 10 * SECOND, 500000 + 2000000, cap),
                 2 * SECOND - MIG_PACE_MAX_CREDIT_NS);
}

Test(pacing, a_cap_change_is_not_applied_retroactively)
{
    struct mig_pacer pacer;
    mig_pacer_init(&pacer, 0, 0);
    cr_assert_eq(mig_pacer_wait_ns(&pacer, 1 * SECOND, 0, 0), 0);
    /* 4 GB went out uncapped; setting a cap then must not make the sender
     * wait for those bytes (4000 s at 1 MB/s). */
    cr_assert_eq(mig_pacer_wait_ns(&pacer, 2 * SECOND, 4000000000ull, 1000000), 0);
    cr_assert_eq(mig_pacer_wait_ns(&pacer, 2 * SECOND, 4001000000ull, 1000000), SECOND - MIG_PACE_MAX_CREDIT_NS);
    /* Doubling the cap halves the wait for the same bytes from here. */
    cr_assert_eq(mig_pacer_wait_ns(&pacer, 2 * SECOND, 4001000000ull, 2000000), 0);
    cr_assert_eq(mig_pacer_wait_ns(&pacer, 2 * SECOND, 4003000000ull, 2000000), SECOND - MIG_PACE_MAX_CREDIT_NS);
}

Test(pacing, huge_byte_counts_do_not_overflow)
{
    struct mig_pacer pacer;
    mig_pacer_init(&pacer, 0, 0);
    cr_assert_eq(mig_pacer_wait_ns(&pacer, SECOND, 0, 1), 0);
    cr_assert_eq(mig_pacer_wait_ns(&pacer, SECOND, UINT64_MAX, 1), UINT64_MAX - SECOND);
}

/* The rate the uncapped stop-and-copy is expected to keep: the bytes over
 * the time the sender did not sleep on the cap. */
Test(pacing, the_unpaced_rate_leaves_out_the_time_slept_on_the_cap)
{
    /* 1 GB in 1 s, never paced: the measured rate itself. */
    cr_assert_eq(mig_unpaced_rate(1000000000ull, SECOND, 0), 1000000000ull);
    /* The same second, 750 ms of it asleep on the cap: 4 GB/s when free. */
    cr_assert_eq(mig_unpaced_rate(1000000000ull, SECOND, 750000000ull), 4000000000ull);
    /* Rounded down: 10 bytes over 3 ns of work. */
    cr_assert_eq(mig_unpaced_rate(10, 4, 1), 3333333333ull);
    /* No time left to divide by: no sample. */
    cr_assert_eq(mig_unpaced_rate(1000, SECOND, SECOND), 0);
    cr_assert_eq(mig_unpaced_rate(1000, SECOND, 2 * SECOND), 0);
    cr_assert_eq(mig_unpaced_rate(1000, 0, 0), 0);
    /* Clamped, not wrapped. */
    cr_assert_eq(mig_unpaced_rate(UINT64_MAX, 2, 1), UINT64_MAX);
}
