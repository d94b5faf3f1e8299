/*
 * The progress snapshot's live rate (mig_throughput_update) and the fields
 * mig_progress_to_json gives it and the source's after-ack hash. No KVM.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "migration/progress.h"

#define MIB (1024ull * 1024ull)
#define MS 1000000ull

Test(progress, throughput_is_the_last_full_windows_rate)
{
    struct mig_throughput throughput = { 0 };
    /* The first sample only opens a window. */
    cr_assert_eq(mig_throughput_update(&throughput, 1000 * MS, 7 * MIB), 0.0);
    /* Shorter than a window: nothing known yet. */
    cr_assert_eq(mig_throughput_update(&throughput, 1100 * MS, 57 * MIB), 0.0);
    cr_assert_eq(mig_throughput_update(&throughput, 1499 * MS, 99 * MIB), 0.0);
    /* 500 ms, 100 MiB: 200 MiB/s, and a new window from here. */
    cr_assert_eq(mig_throughput_update(&throughput, 1500 * MS, 107 * MIB), 200.0);
    /* Within the next window the last full one's rate stands. */
    cr_assert_eq(mig_throughput_update(&throughput, 1600 * MS, 108 * MIB), 200.0);
    /* 1 s with 3 MiB (the link went slow): 3 MiB/s. */
    cr_assert_eq(mig_throughput_update(&throughput, 2500 * MS, 110 * MIB), 3.0);
    /* Nothing moved for a window: 0. */
    cr_assert_eq(mig_throughput_update(&throughput, 3000 * MS, 110 * MIB), 0.0);
}

Test(progress, a_counter_that_goes_back_starts_a_new_window)
{
    struct mig_throughput throughput = { 0 };
    mig_throughput_update(&throughput, 1000 * MS, 0);
    cr_assert_eq(mig_throughput_update(&throughput, 2000 * MS, 50 * MIB), 50.0);
    /* A new stream (the counter restarted at 4 MiB): no negative rate;
     * the last rate stands until a window of the new counter is full. */
    cr_assert_eq(mig_throughput_update(&throughput, 2200 * MS, 4 * MIB), 50.0);
    cr_assert_eq(mig_throughput_update(&throughput, 2600 * MS, 10 * MIB), 50.0);
    cr_assert_eq(mig_throughput_update(&throughput, 2700 * MS, 24 * MIB), 40.0);
}

Test(progress, a_finished_migration_samples_no_throughput)
{
    struct mig_progress *progress = calloc(1, sizeof(*progress));
    cr_assert_not_null(progress);
    struct mig_throughput throughput = { 0 };
    progress->state = MIG_STATE_ACTIVE;
    progress->memory.transferred = 0;
    mig_progress_sample_throughput(progress, &throughput, 1000 * MS);
    cr_assert_eq(progress->throughput_mibs, 0.0);
    progress->memory.transferred = 64 * MIB;
    mig_progress_sample_throughput(progress, &throughput, 1500 * MS);
    cr_assert_eq(progress->throughput_mibs, 128.0);
    /* Completed: 0, not the last window's 128. */
    progress->state = MIG_STATE_COMPLETED;
    mig_progress_sample_throughput(progress, &throughput, 1600 * MS);
    cr_assert_eq(progress->throughput_mibs, 0.0);
    free(progress);
}

Test(progress, the_snapshot_carries_throughput_and_the_after_ack_hash_time)
{
    struct mig_progress *progress = calloc(1, sizeof(*progress));
    cr_assert_not_null(progress);
    progress->state = MIG_STATE_ACTIVE;
    snprintf(progress->phase, sizeof(progress->phase), "bulk");
    progress->throughput_mibs = 812.5;
    progress->bandwidth_mibs = 0.0;
    progress->source_digest_ms = 37;
    json_t *object = mig_progress_to_json(progress);
    cr_assert_not_null(object);
    cr_assert(json_is_real(json_object_get(object, "throughput_mibs")));
    cr_assert_eq(json_real_value(json_object_get(object, "throughput_mibs")), 812.5);
    cr_assert_eq(json_real_value(json_object_get(object, "bandwidth_mibs")), 0.0);
    cr_assert_eq(json_integer_value(json_object_get(object, "source_digest_ms")), 37);
    json_decref(object);
    free(progress);
}
