/*
 * libFuzzer target over the destination's migration stream parser
 * (migration/receiver.c): the input is what a source sends, HELLO then
 * frames, fed through mig_receiver_run_buffer exactly as the incoming thread
 * feeds socket bytes to mig_receiver_next.
 *
 * The local configuration is a 64 MiB, 1-vCPU ringvm (the seed corpus in
 * tests/fuzz/migration-corpus/ is captured from such migrations by
 * tests/fuzz/capture-corpus.sh). Guest RAM is an mmap with PROT_NONE guard
 * pages on both sides, so a write outside guest RAM crashes (ASan does not
 * watch mmap'd memory). Each input runs twice: as is, and with every frame
 * checksum recomputed, so mutations get past the XXH3 check and reach the
 * deeper frame validation.
 *
 * Work per byte (issue 16, item 3): after every parse the receiver's work
 * counts must stay within mig_receiver_check_work's bounds for the input's
 * size (runs, pages touched, bitmap words of ZERO runs, input calls); an
 * input that makes the parser work more per byte aborts, like a crash.
 *
 * Built by `make fuzz` (clang -fsanitize=fuzzer,address,undefined); run for
 * 60 s by tests/test_migration_fuzz.c. Allocation bound: libFuzzer's
 * -malloc_limit_mb (the runner sets 256) turns any large allocation into a
 * reported failure, so a frame length of 2^63 must be rejected from the
 * header alone.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "migration/protocol.h"
#include "migration/receiver.h"
#include "tests/fuzz/migration_local_config.h"
#include "tests/fuzz/sealed_copy.h"

static uint8_t *ram;

static void run(const uint8_t *data, size_t size)
{
    struct mig_hello hello;
    fuzz_migration_local_hello(&hello);
    struct mig_receiver receiver;
    if (mig_receiver_init(&receiver, ram, FUZZ_MIGRATION_RAM_BYTES, &hello) != 0)
        abort();
    if (mig_receiver_run_buffer(&receiver, data, size) != 0 && receiver.error[0] == '\0')
        abort();    /* every failure must say why */
    char why[256];
    if (mig_receiver_check_work(&receiver, size, why, sizeof(why)) != 0) {
        fprintf(stderr, "migration_stream_fuzz: too much work for %zu input bytes: %s\n", size, why);
        abort();
    }
    mig_receiver_destroy(&receiver);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (ram == NULL) {
        size_t guard = 1u << 20;
        uint8_t *map = mmap(NULL, FUZZ_MIGRATION_RAM_BYTES + 2 * guard, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                            -1, 0);
        if (map == MAP_FAILED || mprotect(map + guard, FUZZ_MIGRATION_RAM_BYTES, PROT_READ | PROT_WRITE) != 0)
            abort();
        ram = map + guard;
    }
    run(data, size);
    if (size == 0)
        return 0;

    /* The same bytes with every frame's checksum made valid. */
    const uint8_t *copy = fuzz_sealed_copy(data, size);
    run(copy, size);
    return 0;
}
