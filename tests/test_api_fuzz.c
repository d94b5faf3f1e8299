/*
 * Runs the API request fuzzer (make fuzz) for 10 s from the seed corpus in
 * tests/fuzz/api-corpus/ and asserts it found nothing and ran at least 3000
 * inputs (tests/fuzz_runner.c; about 30000 run on a 2-core machine in 10 s). Every
 * command group is in the target (api.*, events.*, vm.*, migration.*,
 * bpf.*) against no VM: see tests/fuzz/api_request_fuzz.c. The seed is
 * printed; RINGVM_FUZZ_SEED / RINGVM_FUZZ_RUNS replay a run
 * (docs/testing.md).
 */
#include <criterion/criterion.h>

#include "tests/fuzz_runner.h"

Test(api_fuzz, request_handler_10s_no_crash)
{
    fuzz_runner_run(&(struct fuzz_run){ .target = "api_request_fuzz", .corpus = "tests/fuzz/api-corpus",
                                        .seconds = 10, .min_executions = 3000 });
}
