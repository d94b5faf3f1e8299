/* Convergence decisions with exact numbers (migration/convergence.h). */
#include <criterion/criterion.h>
#include <stdint.h>

#include "migration/convergence.h"

Test(convergence, expected_downtime_and_switch)
{
    /* 100 MiB at 400 MiB/s = 250 ms. */
    cr_assert_eq(mig_expected_downtime_ms(100ull << 20, 400ull << 20), 250);
    /* Rounded up: 1 byte at 1000 B/s = 1 ms; 1001 bytes = 1001 ms. */
    cr_assert_eq(mig_expected_downtime_ms(1, 1000), 1);
    cr_assert_eq(mig_expected_downtime_ms(1001, 1000), 1001);
    cr_assert_eq(mig_expected_downtime_ms(0, 0), 0);
    cr_assert_eq(mig_expected_downtime_ms(4096, 0), UINT64_MAX);
    cr_assert(mig_should_switch(300, 300));
    cr_assert(!mig_should_switch(301, 300));
}

Test(convergence, expected_downtime_with_digest_overlaps_the_source_pass)
{
    /* No verification: the transfer alone. */
    cr_assert_eq(mig_expected_downtime_with_digest_ms(250, 0), 250);
    /* The source's pass hides under a longer transfer; the destination's
     * comes after it. */
    cr_assert_eq(mig_expected_downtime_with_digest_ms(250, 40), 290);
    /* A transfer shorter than a pass waits for the source's digest. */
    cr_assert_eq(mig_expected_downtime_with_digest_ms(10, 40), 80);
    cr_assert_eq(mig_expected_downtime_with_digest_ms(0, 40), 80);
    /* Saturation: an unknown (infinite) transfer stays infinite. */
    cr_assert_eq(mig_expected_downtime_with_digest_ms(UINT64_MAX, 40), UINT64_MAX);
    cr_assert_eq(mig_expected_downtime_with_digest_ms(UINT64_MAX - 10, 40), UINT64_MAX);
    cr_assert(mig_should_switch(mig_expected_downtime_with_digest_ms(200, 50), 300));
    cr_assert(!mig_should_switch(mig_expected_downtime_with_digest_ms(260, 50), 300));
}

Test(convergence, converge_names)
{
    enum mig_converge mode;
    cr_assert_eq(mig_converge_parse("dirty-limit", &mode), 0);
    cr_assert_eq(mode, MIG_CONVERGE_DIRTY_LIMIT);
    cr_assert_eq(mig_converge_parse("auto", &mode), 0);
    cr_assert_eq(mode, MIG_CONVERGE_AUTO);
    cr_assert_eq(mig_converge_parse("none", &mode), 0);
    cr_assert_eq(mode, MIG_CONVERGE_NONE);
    cr_assert_eq(mig_converge_parse("fast", &mode), -1);
    cr_assert_str_eq(mig_converge_name(MIG_CONVERGE_DIRTY_LIMIT), "dirty-limit");
}

Test(convergence, auto_converge_sequence)
{
    struct mig_throttle_params p = { .initial = 20, .increment = 10, .max = 99 };
    struct mig_auto_converge s = { 0 };
    const uint64_t sent = 1000;
    /* Exactly 50 % is not "more than 50 %". */
    cr_assert_eq(mig_auto_converge_step(&s, &p, 500, sent), 0);
    cr_assert_eq(s.high_streak, 0);
    /* First high iteration: not yet. Second: throttle_initial. */
    cr_assert_eq(mig_auto_converge_step(&s, &p, 501, sent), 0);
    cr_assert_eq(mig_auto_converge_step(&s, &p, 900, sent), 20);
    /* Every further high iteration adds the increment. */
    cr_assert_eq(mig_auto_converge_step(&s, &p, 900, sent), 30);
    cr_assert_eq(mig_auto_converge_step(&s, &p, 900, sent), 40);
    /* A low iteration keeps the throttle (never goes down). */
    cr_assert_eq(mig_auto_converge_step(&s, &p, 100, sent), 40);
    cr_assert_eq(mig_auto_converge_step(&s, &p, 900, sent), 50);
    for (int i = 0; i < 10; i++)
        mig_auto_converge_step(&s, &p, 900, sent);
    cr_assert_eq(s.throttle, 99, "capped at throttle_max");
}

Test(convergence, auto_converge_needs_two_consecutive_high_iterations)
{
    struct mig_throttle_params p = { .initial = 30, .increment = 5, .max = 40 };
    struct mig_auto_converge s = { 0 };
    cr_assert_eq(mig_auto_converge_step(&s, &p, 600, 1000), 0);
    cr_assert_eq(mig_auto_converge_step(&s, &p, 400, 1000), 0);
    cr_assert_eq(mig_auto_converge_step(&s, &p, 600, 1000), 0);
    cr_assert_eq(mig_auto_converge_step(&s, &p, 600, 1000), 30);
    cr_assert_eq(mig_auto_converge_step(&s, &p, 600, 1000), 35);
    cr_assert_eq(mig_auto_converge_step(&s, &p, 600, 1000), 40);
    cr_assert_eq(mig_auto_converge_step(&s, &p, 600, 1000), 40);
    /* Odd sent: 2 * dirtied > sent exactly. */
    struct mig_auto_converge t = { .throttle = 10 };
    struct mig_throttle_params q = { .initial = 10, .increment = 1, .max = 99 };
    cr_assert_eq(mig_auto_converge_step(&t, &q, 500, 1001), 10);
    cr_assert_eq(mig_auto_converge_step(&t, &q, 501, 1001), 11);
}

static const struct mig_dirty_limit_params link = {
    .bandwidth_pps = 100000, .margin_percent = 50, .idle_pps = 1000, .throttle_max = 99,
};

Test(convergence, dirty_limit_throttles_only_the_dirtying_vcpu)
{
    uint64_t rates[2] = { 300000, 20 };
    int current[2] = { 0, 0 }, out[2];
    uint64_t quota[2];
    mig_dirty_limit_compute(2, rates, current, &link, out, quota);
    /* Target 50000 pps; the idle vCPU's 20 pps are charged first:
     * quota 49980, throttle ceil(100 * (300000 - 49980) / 300000) = 84. */
    cr_assert_eq(out[0], 84);
    cr_assert_eq(quota[0], 49980);
    cr_assert_eq(out[1], 0);
    cr_assert_eq(quota[1], UINT64_MAX);
}

Test(convergence, dirty_limit_nothing_when_the_total_fits)
{
    uint64_t rates[3] = { 20000, 20000, 10000 };
    int current[3] = { 0, 0, 0 }, out[3];
    mig_dirty_limit_compute(3, rates, current, &link, out, NULL);
    cr_assert_eq(out[0], 0);
    cr_assert_eq(out[1], 0);
    cr_assert_eq(out[2], 0);
}

Test(convergence, dirty_limit_water_filling)
{
    /* Budget 50000: the 10000 vCPU fits its share (16666) and keeps its
     * rate; the other two split 40000: 20000 each. */
    uint64_t rates[3] = { 80000, 10000, 40000 };
    int current[3] = { 0, 0, 0 }, out[3];
    uint64_t quota[3];
    mig_dirty_limit_compute(3, rates, current, &link, out, quota);
    cr_assert_eq(out[1], 0);
    cr_assert_eq(quota[1], UINT64_MAX);
    cr_assert_eq(quota[0], 20000);
    cr_assert_eq(quota[2], 20000);
    cr_assert_eq(out[0], 75);   /* ceil(100 * 60000 / 80000) */
    cr_assert_eq(out[2], 50);   /* ceil(100 * 20000 / 40000) */
}

Test(convergence, dirty_limit_uses_the_unthrottled_estimate)
{
    /* Measured 30000 pps at 50 % throttle: 60000 unthrottled; alone on the
     * link its quota is 50000: throttle ceil(100 * 10000 / 60000) = 17. */
    uint64_t rates[1] = { 30000 };
    int current[1] = { 50 }, out[1];
    mig_dirty_limit_compute(1, rates, current, &link, out, NULL);
    cr_assert_eq(out[0], 17);
    cr_assert_eq(mig_unthrottled_rate(30000, 50), 60000);
    cr_assert_eq(mig_unthrottled_rate(1000, 99), 100000);
    cr_assert_eq(mig_unthrottled_rate(1000, 0), 1000);
}

Test(convergence, dirty_limit_caps_at_throttle_max)
{
    struct mig_dirty_limit_params tight = link;
    tight.throttle_max = 90;
    uint64_t rates[1] = { 100000000 };
    int current[1] = { 0 }, out[1];
    mig_dirty_limit_compute(1, rates, current, &tight, out, NULL);
    cr_assert_eq(out[0], 90);
}

/* 125 MiB/s moves 9600 pages in 300 ms: more than that in a window of at
 * most 300 ms switches, exactly that does not; a longer window counts
 * pro rata (a 600 ms window needs twice the pages). */
Test(convergence, hybrid_window_rule)
{
    const uint64_t bandwidth = 125ull << 20, ms = 1000000u;
    cr_assert_not(mig_hybrid_window_exceeds(9600, 200 * ms, bandwidth, 300));
    cr_assert(mig_hybrid_window_exceeds(9601, 200 * ms, bandwidth, 300));
    cr_assert(mig_hybrid_window_exceeds(9601, 300 * ms, bandwidth, 300));
    cr_assert_not(mig_hybrid_window_exceeds(19200, 600 * ms, bandwidth, 300));
    cr_assert(mig_hybrid_window_exceeds(19202, 600 * ms, bandwidth, 300));
    /* a full-rate 1 GiB dirtier: 262144 pages in 200 ms */
    cr_assert(mig_hybrid_window_exceeds(262144, 200 * ms, bandwidth, 300));
    /* a 16 MiB hot set stays in pre-copy */
    cr_assert_not(mig_hybrid_window_exceeds(4096, 200 * ms, bandwidth, 300));
    cr_assert_not(mig_hybrid_window_exceeds(262144, 200 * ms, 0, 300));
    cr_assert_not(mig_hybrid_window_exceeds(262144, 0, bandwidth, 300));
}
