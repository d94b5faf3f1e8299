/*
 * Hostile input to the migration stream receiver: the libFuzzer target
 * (tests/fuzz/migration_stream_fuzz.c, make fuzz) runs for 20 s under
 * ASan/UBSan from the real captured streams in tests/fuzz/migration-corpus/,
 * with allocations capped at 256 MiB, at least 6000 inputs, its seed printed
 * (RINGVM_FUZZ_SEED / RINGVM_FUZZ_RUNS replay it, docs/testing.md), every
 * input checked against the receiver's work-per-byte bounds
 * (mig_receiver_check_work); and direct checks that the captured streams
 * are complete valid streams within those bounds, that floods of run
 * headers and of tiny frames stay within them, and that a 2^63 frame
 * length is refused from the header alone.
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

Test(migration_fuzz, stream_receiver_20s_no_crash)
{
    /* About 50000 inputs run on a 2-core machine in 20 s; 6000 is the floor.
     * Longer campaigns: RINGVM_FUZZ_SECONDS (docs/testing.md). */
    fuzz_runner_run(&(struct fuzz_run){ .target = "migration_stream_fuzz", .corpus = CORPUS, .seconds = 20,
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

/* Parses data as the fuzz target's destination does, asserts the work
 * bounds, and copies the error and the work counts out (work may be NULL). */
static int parse_counting(const uint8_t *data, size_t length, char *error, size_t error_size,
                          struct mig_receiver_work *work)
{
    uint8_t *ram = mmap(NULL, FUZZ_MIGRATION_RAM_BYTES, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    cr_assert_neq(ram, MAP_FAILED);
    struct mig_hello hello;
    fuzz_migration_local_hello(&hello);
    struct mig_receiver r;
    cr_assert_eq(mig_receiver_init(&r, ram, FUZZ_MIGRATION_RAM_BYTES, &hello), 0);
    int result = mig_receiver_run_buffer(&r, data, length);
    snprintf(error, error_size, "%s", r.error);
    char why[256];
    cr_assert_eq(mig_receiver_check_work(&r, length, why, sizeof(why)), 0, "work bound: %s", why);
    if (work != NULL)
        *work = r.work;
    mig_receiver_destroy(&r);
    munmap(ram, FUZZ_MIGRATION_RAM_BYTES);
    return result;
}

static int parse(const uint8_t *data, size_t length, char *error, size_t error_size)
{
    return parse_counting(data, length, error, error_size, NULL);
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

/* A growing byte buffer of frames, without the 64-frame bookkeeping of
 * tests/migration_stream.h. */
struct flood {
    uint8_t *data;
    size_t length, capacity;
    uint64_t seq;
};

static void flood_frame(struct flood *f, uint32_t type, const void *payload, size_t length)
{
    if (f->length + MIG_HEADER_SIZE + length > f->capacity) {
        f->capacity = (f->length + MIG_HEADER_SIZE + length) * 2;
        f->data = realloc(f->data, f->capacity);
        cr_assert_not_null(f->data);
    }
    f->length += mig_frame_encode(f->data + f->length, type, f->seq++, payload, length);
}

static void flood_hello(struct flood *f)
{
    struct mig_hello hello;
    fuzz_migration_local_hello(&hello);
    uint8_t payload[MIG_HELLO_SIZE];
    mig_hello_encode(&hello, payload);
    flood_frame(f, MIG_FRAME_HELLO, payload, sizeof(payload));
}

#define ALL_RAM_PAGES ((uint32_t)(FUZZ_MIGRATION_RAM_BYTES / MIG_PAGE_SIZE))

/* Issue 16, item 3: a 4 MiB MEMORY frame of 262144 ZERO runs, each over all
 * of RAM (before: every run parsed, 256 bitmap words and one recv each).
 * Now refused at the second run; the bounds hold. */
Test(migration_fuzz, a_zero_run_header_flood_stays_within_the_work_bounds)
{
    enum { RUNS = 262144 };
    uint8_t *payload = malloc((size_t)RUNS * MIG_RUN_HEADER_SIZE);
    cr_assert_not_null(payload);
    struct mig_run run = { .ram_offset = 0, .pages = ALL_RAM_PAGES, .flags = MIG_RUN_ZERO };
    for (size_t i = 0; i < RUNS; i++)
        mig_run_encode(&run, payload + i * MIG_RUN_HEADER_SIZE);
    struct flood f = { 0 };
    flood_hello(&f);
    flood_frame(&f, MIG_FRAME_MEMORY, payload, (size_t)RUNS * MIG_RUN_HEADER_SIZE);
    free(payload);
    char error[MIG_RECEIVER_ERROR_MAX];
    struct mig_receiver_work work;
    cr_assert_eq(parse_counting(f.data, f.length, error, sizeof(error), &work), -1);
    cr_assert_str_eq(error, "frame 1: memory run at offset 0x0 overlaps or precedes the run before it (which ends at "
                            "0x4000000)");
    cr_assert_eq(work.runs, 2);
    cr_assert_eq(work.zero_words, ALL_RAM_PAGES / 64);
    cr_assert_eq(work.input_calls, 1);
    free(f.data);
}

/* The same work spread over valid frames: 20000 MEMORY frames of one ZERO
 * run over all of RAM (48 bytes each). Each is valid, so each is parsed
 * (256 bitmap words, the per-frame bound), but the input is staged: 16
 * input calls for 960 KB, where reading frame by frame took 40000. */
Test(migration_fuzz, a_tiny_frame_flood_stays_within_the_work_bounds)
{
    enum { FRAMES = 20000 };
    struct flood f = { 0 };
    flood_hello(&f);
    uint8_t payload[MIG_RUN_HEADER_SIZE];
    struct mig_run run = { .ram_offset = 0, .pages = ALL_RAM_PAGES, .flags = MIG_RUN_ZERO };
    mig_run_encode(&run, payload);
    for (unsigned i = 0; i < FRAMES; i++)
        flood_frame(&f, MIG_FRAME_MEMORY, payload, sizeof(payload));
    char error[MIG_RECEIVER_ERROR_MAX];
    struct mig_receiver_work work;
    cr_assert_eq(parse_counting(f.data, f.length, error, sizeof(error), &work), -1);
    cr_assert_str_eq(error, "frame 20001: stream ended before the end frame (truncated)");
    cr_assert_eq(work.memory_frames, FRAMES);
    cr_assert_eq(work.runs, FRAMES);
    cr_assert_eq(work.zero_words, (uint64_t)FRAMES * (ALL_RAM_PAGES / 64));
    cr_assert_eq(work.pages_touched, 0);
    cr_assert_eq(f.length, MIG_HEADER_SIZE + MIG_HELLO_SIZE + FRAMES * (MIG_HEADER_SIZE + MIG_RUN_HEADER_SIZE));
    /* 15 refills of 64 KiB and the one that finds the end. */
    cr_assert_eq(work.input_calls, (f.length + MIG_RECEIVER_STAGING_BYTES - 1) / MIG_RECEIVER_STAGING_BYTES + 1);
    cr_assert_eq(work.input_calls, 16);
    free(f.data);
}
