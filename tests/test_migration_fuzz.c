/*
 * Hostile input to the migration stream receiver: the libFuzzer target
 * (tests/fuzz/migration_stream_fuzz.c, make fuzz) runs for 60 s under
 * ASan/UBSan from the real captured streams in tests/fuzz/migration-corpus/,
 * with allocations capped at 256 MiB, at least 6000 inputs, its seed printed
 * (RINGVM_FUZZ_SEED / RINGVM_FUZZ_RUNS replay it, docs/testing.md); and
 * direct checks that the captured streams are complete valid streams and
 * that a 2^63 frame length is refused from the header alone.
 */
#include <criterion/criterion.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "migration/protocol.h"
#include "migration/receiver.h"
#include "tests/fuzz/migration_local_config.h"
#include "tests/fuzz_runner.h"
#include "tests/harness.h"

#define CORPUS "tests/fuzz/migration-corpus"

Test(migration_fuzz, stream_receiver_60s_no_crash, .timeout = 300)
{
    /* About 170000 inputs run on a 2-core machine; 6000 is the floor. */
    fuzz_runner_run(&(struct fuzz_run){ .target = "migration_stream_fuzz", .corpus = CORPUS, .seconds = 60,
                                        .extra_options = "-malloc_limit_mb=256", .min_executions = 6000 });
}

static uint8_t *read_file(const char *path, size_t *length)
{
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f, "%s", path);
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *data = malloc((size_t)size + 1);
    cr_assert_eq(fread(data, 1, (size_t)size, f), (size_t)size);
    fclose(f);
    *length = (size_t)size;
    return data;
}

static int parse(const uint8_t *data, size_t length, char *error, size_t error_size)
{
    uint8_t *ram = mmap(NULL, FUZZ_MIGRATION_RAM_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    cr_assert_neq(ram, MAP_FAILED);
    struct mig_hello hello;
    fuzz_migration_local_hello(&hello);
    struct mig_receiver r;
    cr_assert_eq(mig_receiver_init(&r, ram, FUZZ_MIGRATION_RAM_BYTES, &hello), 0);
    int result = mig_receiver_run_buffer(&r, data, length);
    snprintf(error, error_size, "%s", r.error);
    mig_receiver_destroy(&r);
    munmap(ram, FUZZ_MIGRATION_RAM_BYTES);
    return result;
}

Test(migration_fuzz, captured_corpus_streams_are_complete_and_valid)
{
    DIR *dir = opendir(CORPUS);
    if (dir == NULL)
        harness_skip("run from the repository root (" CORPUS " not found)");
    unsigned streams = 0;
    struct dirent *entry;
    while ((entry = readdir(dir)) != NULL) {
        if (entry->d_name[0] == '.' || strcmp(entry->d_name, "memory-length-2p63") == 0)
            continue;
        char path[512], error[MIG_RECEIVER_ERROR_MAX];
        snprintf(path, sizeof(path), CORPUS "/%s", entry->d_name);
        size_t length;
        uint8_t *data = read_file(path, &length);
        cr_assert_leq(length, 512u << 10, "%s: %zu bytes: keep corpus files small", path, length);
        cr_assert_eq(parse(data, length, error, sizeof(error)), 0, "%s: %s", path, error);
        free(data);
        streams++;
    }
    closedir(dir);
    cr_assert_geq(streams, 4, "the corpus holds %u captured streams", streams);
}

Test(migration_fuzz, frame_length_2_pow_63_is_refused_from_the_header)
{
    if (access(CORPUS "/memory-length-2p63", R_OK) != 0)
        harness_skip("run from the repository root (" CORPUS "/memory-length-2p63 not found)");
    size_t length;
    uint8_t *data = read_file(CORPUS "/memory-length-2p63", &length);
    char error[MIG_RECEIVER_ERROR_MAX];
    cr_assert_eq(parse(data, length, error, sizeof(error)), -1);
    cr_assert_str_eq(error, "frame 1: memory frame length 9223372036854775808 out of bounds [16, 67108864]");
    free(data);
}
