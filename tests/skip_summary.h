/*
 * The "Skipped: N" block printed on every run just above Criterion's
 * "Synthesis:" line (issue 18): a run on a machine without /dev/kvm, BPF or
 * clang must not look like a full run. Criterion leaves skips out of its
 * summary; each skipped test's reason reaches the runner process as the
 * test's stats message (tests/harness.h, harness_skip).
 */
#ifndef RINGVM_TESTS_SKIP_SUMMARY_H
#define RINGVM_TESTS_SKIP_SUMMARY_H

#include <criterion/stats.h>
#include <stdio.h>

/* Reason shown for a skip that carried none (a bare Criterion skip
 * without a message). */
#define SKIP_SUMMARY_NO_REASON "(no reason given)"

/* Prints, for every run:
 *   [====] Skipped: N of T selected tests did not run
 * (followed by " (M more disabled or left out by --filter)" when M > 0:
 * Criterion reports those as skipped too, but they are not skips of this
 * run)
 * and, when N > 0, one line per distinct reason, most frequent first (ties
 * in order of first appearance), with the suites it hit:
 *   [SKIP]   74 x /dev/kvm unavailable: No such file or directory (suites: vm, migration)
 * Returns N. */
size_t skip_summary_print(FILE *out, const struct criterion_global_stats *stats);

#endif
