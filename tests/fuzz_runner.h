/*
 * Runs a libFuzzer target built by `make fuzz` from a Criterion test: skips
 * with a printed reason when clang or its libFuzzer runtime is missing,
 * builds the target, runs it for a set time from a seed corpus in a scratch
 * directory, and fails the test on a non-zero exit or on any crash, leak,
 * timeout or OOM artifact (the log tail is printed then), and when fewer
 * than min_executions inputs ran (a fuzzer that ran nothing must not pass).
 *
 * Seeds and replay (docs/testing.md): every run prints
 *   fuzz: TARGET: seed S, N inputs in T s (replay: RINGVM_FUZZ_SEED=S RINGVM_FUZZ_RUNS=N)
 * and a failure message carries the same line. RINGVM_FUZZ_SEED=S runs
 * with libFuzzer's -seed=S instead of a fresh random seed; adding
 * RINGVM_FUZZ_RUNS=N stops after N inputs (-runs=N), which replays the
 * same inputs from the same corpus. RINGVM_FUZZ_SECONDS=N runs each target
 * for N seconds instead of its make-test duration (a longer campaign).
 */
#ifndef RINGVM_TESTS_FUZZ_RUNNER_H
#define RINGVM_TESTS_FUZZ_RUNNER_H

struct fuzz_run {
    const char *target;         /* program under $BUILD/fuzz/, e.g. "api_request_fuzz" */
    const char *corpus;         /* seed corpus directory, relative to the repository root */
    unsigned seconds;           /* -max_total_time */
    const char *extra_options;  /* more libFuzzer flags, or NULL */
    unsigned min_executions;    /* stat::number_of_executed_units must reach this */
};

void fuzz_runner_run(const struct fuzz_run *run);

#endif
