/*
 * Runs a libFuzzer target built by `make fuzz` from a Criterion test: skips
 * with a printed reason when clang or its libFuzzer runtime is missing,
 * builds the target, runs it for a set time from a seed corpus in a scratch
 * directory, and fails the test on a non-zero exit or on any crash, leak,
 * timeout or OOM artifact (the log tail is printed then).
 */
#ifndef RINGVM_TESTS_FUZZ_RUNNER_H
#define RINGVM_TESTS_FUZZ_RUNNER_H

struct fuzz_run {
    const char *target;         /* program under $BUILD/fuzz/, e.g. "api_request_fuzz" */
    const char *corpus;         /* seed corpus directory, relative to the repository root */
    unsigned seconds;           /* -max_total_time */
    const char *extra_options;  /* more libFuzzer flags, or NULL */
};

void fuzz_runner_run(const struct fuzz_run *run);

#endif
