/*
 * Runs the API request fuzzer (make fuzz) for 30 s from the seed corpus in
 * tests/fuzz/api-corpus/ and asserts it found nothing (tests/fuzz_runner.c).
 */
#include <criterion/criterion.h>

#include "tests/fuzz_runner.h"

Test(api_fuzz, request_handler_30s_no_crash, .timeout = 240)
{
    fuzz_runner_run(&(struct fuzz_run){ .target = "api_request_fuzz", .corpus = "tests/fuzz/api-corpus",
                                        .seconds = 30 });
}
