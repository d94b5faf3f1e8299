/*
 * Repeats every failed or crashed test, with its failed assertions, and then
 * the count of skipped tests with their reasons grouped (tests/skip_summary.h),
 * just before Criterion's "Synthesis:" line.
 *
 * Why: the suite runs real VMs that log a lot, and CI keeps only the tail of
 * the output. Without this, a failure deep in the log shows up in CI as
 * nothing more than "Failing: 1". Criterion calls POST_ALL report hooks
 * before its own logger prints the synthesis, so this lands right above it.
 */
#include <criterion/criterion.h>
#include <criterion/hooks.h>
#include <stdio.h>

#include "tests/skip_summary.h"

static void print_failures(struct criterion_global_stats *stats)
{
    if (stats->tests_failed == 0 && stats->tests_crashed == 0)
        return;
    fprintf(stderr, "[====] Failed tests (%zu failing, %zu crashing):\n", stats->tests_failed,
            stats->tests_crashed);
    for (struct criterion_suite_stats *suite = stats->suites; suite != NULL; suite = suite->next) {
        for (struct criterion_test_stats *test = suite->tests; test != NULL; test = test->next) {
            if (test->test_status != CR_STATUS_FAILED)
                continue;
            fprintf(stderr, "[FAIL] %s::%s (%.2fs)%s", test->test->category, test->test->name,
                    (double)test->elapsed_time, test->timed_out ? " timed out" : "");
            if (test->crashed)
                fprintf(stderr, " crashed: signal %d", test->signal);
            fputc('\n', stderr);
            for (struct criterion_assert_stats *assert = test->asserts; assert != NULL;
                 assert = assert->next) {
                if (!assert->passed)
                    fprintf(stderr, "[FAIL]   %s:%u: %s\n", assert->file != NULL ? assert->file : "?",
                            assert->line, assert->message != NULL ? assert->message : "");
            }
        }
    }
}

/* Failures first, then the skip block, so the skip count sits right above
 * the synthesis line on every run (a run that skipped must not read as a
 * full one), and a failure is still within a short CI log tail. */
ReportHook(POST_ALL)(struct criterion_global_stats *stats)
{
    print_failures(stats);
    skip_summary_print(stderr, stats);
}
