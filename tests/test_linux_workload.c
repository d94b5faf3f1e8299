/*
 * The Linux guest image's workload program (guest/linux/workload/), run
 * directly on this machine: the same lines as the built-in guest's ledger,
 * the same spec messages as ringvm's --workload, a corrupted page found,
 * and its channel to ringvm (stats, doorbell) against a regular file laid
 * out like guest-physical memory (no KVM, no /dev/mem needed).
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "guest/abi.h"
#include "guest/page_walk.h"
#include "tests/harness.h"
#include "vmm/workload.h"

#define LINUX_WORKLOAD_TIMEOUT_MS 30000
/* A regular file big enough to hold the doorbell page at its GPA (sparse). */
#define LINUX_WORKLOAD_MEMORY_FILE_SIZE (RINGVM_DOORBELL_GPA + RINGVM_PAGE_SIZE)

static const char *workload_program(void)
{
    const char *path = harness_program("linux/ringvm-workload");
    if (access(path, X_OK) != 0)
        cr_assert_fail("%s is missing (make linux-guest builds it): %s", path, strerror(errno));
    return path;
}

/* Runs the program with argv (after argv[0]) and waits for its exit. */
static int run_workload(struct harness_process *process, const char *const *arguments)
{
    char *argv[16];
    size_t count = 0;
    argv[count++] = (char *)workload_program();
    for (; arguments[count - 1] != NULL && count < 15; count++)
        argv[count] = (char *)arguments[count - 1];
    argv[count] = NULL;
    harness_spawn(process, argv);
    return harness_process_wait_exit(process, LINUX_WORKLOAD_TIMEOUT_MS);
}

/* Counts the lines of text equal to line. */
static unsigned count_lines(const char *text, const char *line)
{
    unsigned found = 0;
    size_t length = strlen(line);
    for (const char *at = text; *at != '\0';) {
        const char *end = strchr(at, '\n');
        size_t line_length = end ? (size_t)(end - at) : strlen(at);
        if (line_length == length && memcmp(at, line, length) == 0)
            found++;
        if (end == NULL)
            break;
        at = end + 1;
    }
    return found;
}

/* A zero-filled sparse file up to the doorbell page, optionally with a
 * ringvm boot info page at RINGVM_BOOTINFO_GPA. */
static void make_memory_file(char *path, size_t path_size, bool with_bootinfo, uint32_t vcpus)
{
    snprintf(path, path_size, "/tmp/ringvm-linux-workload-XXXXXX");
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0, "mkstemp: %s", strerror(errno));
    cr_assert_eq(ftruncate(fd, (off_t)LINUX_WORKLOAD_MEMORY_FILE_SIZE), 0, "ftruncate: %s", strerror(errno));
    if (with_bootinfo) {
        static struct ringvm_bootinfo info;
        memset(&info, 0, sizeof(info));
        info.magic = RINGVM_BOOTINFO_MAGIC;
        info.abi_version = RINGVM_ABI_VERSION;
        info.vcpu_count = vcpus;
        info.tsc_khz = 0;   /* unknown: the program calibrates */
        info.doorbell_gpa = RINGVM_DOORBELL_GPA;
        info.stats_gpa = RINGVM_STATS_GPA;
        cr_assert_eq(pwrite(fd, &info, sizeof(info), RINGVM_BOOTINFO_GPA), (ssize_t)sizeof(info),
                     "pwrite: %s", strerror(errno));
    }
    close(fd);
}

static struct ringvm_vcpu_stats read_stats(const char *path, unsigned vcpu)
{
    struct ringvm_vcpu_stats stats;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    cr_assert_geq(fd, 0, "open %s: %s", path, strerror(errno));
    cr_assert_eq(pread(fd, &stats, sizeof(stats), (off_t)(RINGVM_STATS_GPA + RINGVM_STATS_SLOT_SIZE * vcpu)),
                 (ssize_t)sizeof(stats));
    close(fd);
    return stats;
}

/* The last value stored to doorbell + 8 * command. */
static uint64_t read_doorbell(const char *path, enum ringvm_command command)
{
    uint64_t value = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    cr_assert_geq(fd, 0, "open %s: %s", path, strerror(errno));
    cr_assert_eq(pread(fd, &value, sizeof(value), (off_t)(RINGVM_DOORBELL_GPA + 8 * command)),
                 (ssize_t)sizeof(value));
    close(fd);
    return value;
}

Test(linux_workload, ledger_prints_ok_per_thread_like_the_built_in_guest, .timeout = 60)
{
    char memory[64];
    make_memory_file(memory, sizeof(memory), false, 0);
    struct harness_process process;
    /* 6 s for two verify passes per thread: every thread maps before any
     * populates (runner.c), so under make test's load one thread can wait
     * a while for the other to be scheduled (3 s once left vcpu 0 none). */
    const char *arguments[] = { "--spec", "ledger,wss=8M,verify=1", "--cpus", "2", "--seconds", "6",
                                "--memory-file", memory, NULL };
    int status = run_workload(&process, arguments);
    unlink(memory);
    cr_assert_eq(status, 0, "stdout:\n%s\nstderr:\n%s", process.out, process.err);

    char expected_error[256];
    snprintf(expected_error, sizeof(expected_error),
             "ringvm-workload: running without the ringvm channel: no ringvm boot info at 0x1000 of %s "
             "(not running under ringvm)\n", memory);
    cr_assert_str_eq(process.err, expected_error);

    /* Every line is a LEDGER OK of 1024 pages (8M over two threads) with a
     * generation that never goes down; at least two per thread. */
    unsigned ok[2] = { 0, 0 };
    uint64_t last_generation[2] = { 0, 0 };
    for (char *line = strtok(process.out, "\n"); line != NULL; line = strtok(NULL, "\n")) {
        uint64_t pages = 0, generation = 0;
        unsigned vcpu = 99;
        int consumed = 0;
        int fields = sscanf(line, "LEDGER OK pages=%" SCNu64 " gen=%" SCNu64 " vcpu=%u%n", &pages, &generation,
                            &vcpu, &consumed);
        cr_assert_eq(fields, 3, "unexpected line '%s'", line);
        cr_assert_eq((size_t)consumed, strlen(line), "trailing text in '%s'", line);
        cr_assert_eq(pages, 1024, "line '%s'", line);
        cr_assert_lt(vcpu, 2, "line '%s'", line);
        cr_assert_geq(generation, last_generation[vcpu], "generation went down: '%s'", line);
        cr_assert_geq(generation, 1, "line '%s'", line);
        last_generation[vcpu] = generation;
        ok[vcpu]++;
    }
    cr_assert_geq(ok[0], 2, "vcpu 0 printed %u LEDGER OK", ok[0]);
    cr_assert_geq(ok[1], 2, "vcpu 1 printed %u LEDGER OK", ok[1]);
    harness_process_free(&process);
}

/* Split and page order as the built-in guest: thread i of n gets
 * pages/n (+1 for the first pages%n), and `count` writes in the seq order
 * leave every page of thread i at generation count/pages (+1). */
Test(linux_workload, finite_ledger_splits_pages_like_the_boot_info, .timeout = 60)
{
    struct harness_process process;
    const char *arguments[] = { "--spec", "ledger,wss=20K,verify=0,count=6", "--cpus", "2",
                                "--memory-file", "/nonexistent/ringvm-test", NULL };
    cr_assert_eq(run_workload(&process, arguments), 0, "stderr:\n%s", process.err);
    cr_assert_eq(count_lines(process.out, "LEDGER OK pages=3 gen=2 vcpu=0"), 1, "stdout:\n%s", process.out);
    cr_assert_eq(count_lines(process.out, "LEDGER OK pages=2 gen=3 vcpu=1"), 1, "stdout:\n%s", process.out);
    cr_assert_eq(strlen(process.out), strlen("LEDGER OK pages=3 gen=2 vcpu=0\n") * 2, "stdout:\n%s", process.out);
    cr_assert_str_eq(process.err, "ringvm-workload: running without the ringvm channel: cannot open "
                                  "/nonexistent/ringvm-test: No such file or directory\n");
    harness_process_free(&process);
}

/* --wss-at: the working set is the memory file's bytes from that offset
 * on (in the guest: RAM the kernel leaves alone, through /dev/mem). After a
 * finite ledger of 6 writes on each of 2 threads over 5 pages, thread 0's 3
 * pages hold generation 2 and thread 1's 2 pages, right after them, hold
 * generation 3, each record naming its page within its thread's region. */
Test(linux_workload, wss_at_puts_the_working_set_in_guest_physical_memory, .timeout = 60)
{
    char memory[64];
    make_memory_file(memory, sizeof(memory), false, 0);
    struct harness_process process;
    const char *arguments[] = { "--spec", "ledger,wss=20K,verify=0,count=6", "--cpus", "2", "--wss-at", "0x100000",
                                "--memory-file", memory, NULL };
    cr_assert_eq(run_workload(&process, arguments), 0, "stderr:\n%s", process.err);
    cr_assert_eq(count_lines(process.out, "LEDGER OK pages=3 gen=2 vcpu=0"), 1, "stdout:\n%s", process.out);
    cr_assert_eq(count_lines(process.out, "LEDGER OK pages=2 gen=3 vcpu=1"), 1, "stdout:\n%s", process.out);
    harness_process_free(&process);
    int fd = open(memory, O_RDONLY | O_CLOEXEC);
    cr_assert_geq(fd, 0, "open %s: %s", memory, strerror(errno));
    for (unsigned page = 0; page < 6; page++) {
        uint64_t words[3];
        cr_assert_eq(pread(fd, words, sizeof(words), (off_t)(0x100000 + page * RINGVM_PAGE_SIZE)),
                     (ssize_t)sizeof(words));
        if (page == 5) {
            cr_assert(words[0] == 0 && words[1] == 0 && words[2] == 0, "the page after the working set was written");
            continue;
        }
        uint64_t index = page < 3 ? page : page - 3, generation = page < 3 ? 2 : 3;
        cr_assert_eq(words[0], index, "page %u", page);
        cr_assert_eq(words[1], generation, "page %u", page);
        cr_assert_neq(words[2], 0, "page %u has no checksum", page);
    }
    /* and nothing below it */
    uint64_t below[3];
    cr_assert_eq(pread(fd, below, sizeof(below), 0x100000 - RINGVM_PAGE_SIZE), (ssize_t)sizeof(below));
    cr_assert(below[0] == 0 && below[1] == 0 && below[2] == 0);
    close(fd);

    const char *unaligned[] = { "--spec", "ledger,wss=20K", "--wss-at", "0x100001", "--memory-file", memory, NULL };
    cr_assert_eq(run_workload(&process, unaligned), 2);
    cr_assert_str_eq(process.err, "ringvm-workload: --wss-at 0x100001: expected a page-aligned guest-physical "
                                  "address above 0 (e.g. 0x4000000)\n");
    harness_process_free(&process);

    const char *beyond[] = { "--spec", "ledger,wss=8K,verify=0,count=2", "--cpus", "1", "--wss-at", "0xd0000000",
                             "--memory-file", memory, NULL };
    cr_assert_eq(run_workload(&process, beyond), 1, "stderr:\n%s", process.err);
    char expected[512];
    snprintf(expected, sizeof(expected), "ringvm-workload: vcpu 0: --wss-at: %s ends before 0xd0002000\n", memory);
    cr_assert(strstr(process.err, expected) != NULL, "stderr:\n%s", process.err);
    harness_process_free(&process);
    unlink(memory);
}

static struct ringvm_vcpu_stats read_stats_at(const char *path, uint64_t at, unsigned vcpu)
{
    struct ringvm_vcpu_stats stats;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    cr_assert_geq(fd, 0, "open %s: %s", path, strerror(errno));
    cr_assert_eq(pread(fd, &stats, sizeof(stats), (off_t)(at + RINGVM_STATS_SLOT_SIZE * vcpu)),
                 (ssize_t)sizeof(stats));
    close(fd);
    return stats;
}

/* Fills `length` bytes at `at` of the memory file with 0xa5, as stale RAM. */
static void fill_memory(const char *path, uint64_t at, size_t length)
{
    static uint8_t junk[8192];
    cr_assert_leq(length, sizeof(junk));
    memset(junk, 0xa5, length);
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    cr_assert_geq(fd, 0, "open %s: %s", path, strerror(errno));
    cr_assert_eq(pwrite(fd, junk, length, (off_t)at), (ssize_t)length, "pwrite: %s", strerror(errno));
    close(fd);
}

/* --stats-at without the ringvm channel (QEMU): the stats slots of the
 * channel, same layout, at that guest-physical address, zeroed first
 * (whatever RAM held before) and then kept as the channel's would be. A
 * finite ledger of 6 writes per thread over 3 + 2 pages and a finite
 * dirtier of 5000 writes per thread over 1024 pages leave exact counters;
 * slot 2 (no thread) and the page after the slots stay as they were. */
Test(linux_workload, stats_at_writes_the_counters_without_a_channel, .timeout = 60)
{
    char memory[64];
    make_memory_file(memory, sizeof(memory), false, 0);
    fill_memory(memory, 0x100000, 2 * RINGVM_PAGE_SIZE);
    struct harness_process process;
    const char *ledger[] = { "--spec", "ledger,wss=20K,verify=0,count=6", "--cpus", "2", "--stats-at", "0x100000",
                             "--wss-at", "0x101000", "--memory-file", memory, NULL };
    cr_assert_eq(run_workload(&process, ledger), 0, "stderr:\n%s", process.err);
    char expected[512];
    snprintf(expected, sizeof(expected),
             "ringvm-workload: running without the ringvm channel: no ringvm boot info at 0x1000 of %s "
             "(not running under ringvm)\n"
             "ringvm-workload: stats at 0x100000 (2 slots of 256 bytes)\n", memory);
    cr_assert_str_eq(process.err, expected);
    cr_assert_eq(count_lines(process.out, "LEDGER OK pages=3 gen=2 vcpu=0"), 1, "stdout:\n%s", process.out);
    cr_assert_eq(count_lines(process.out, "LEDGER OK pages=2 gen=3 vcpu=1"), 1, "stdout:\n%s", process.out);
    harness_process_free(&process);

    const uint64_t want_pages[2] = { 6, 6 }, want_passes[2] = { 2, 3 }, want_generation[2] = { 2, 3 };
    for (unsigned vcpu = 0; vcpu < 2; vcpu++) {
        struct ringvm_vcpu_stats stats = read_stats_at(memory, 0x100000, vcpu);
        cr_assert_eq(stats.pages_written, want_pages[vcpu], "vcpu %u", vcpu);
        cr_assert_eq(stats.passes, want_passes[vcpu], "vcpu %u", vcpu);
        cr_assert_eq(stats.phase, RINGVM_PHASE_DONE, "vcpu %u", vcpu);
        cr_assert_eq(stats.ledger_generation, want_generation[vcpu], "vcpu %u", vcpu);
        cr_assert_eq(stats.ledger_verify_ok, 1, "vcpu %u", vcpu);
        cr_assert_eq(stats.ledger_mismatches, 0, "vcpu %u", vcpu);
        cr_assert_eq(stats.ledger_last_mismatch_page, 0, "vcpu %u", vcpu);
        cr_assert_neq(stats.tsc_last_update, 0, "vcpu %u", vcpu);
        for (unsigned i = 0; i < sizeof(stats.reserved) / sizeof(stats.reserved[0]); i++)
            cr_assert_eq(stats.reserved[i], 0, "vcpu %u reserved[%u]", vcpu, i);
    }
    struct ringvm_vcpu_stats unused = read_stats_at(memory, 0x100000, 2);
    cr_assert_eq(unused.pages_written, 0, "slot 2 was not zeroed with the page");
    cr_assert_eq(unused.phase, 0);
    /* The working set starts at the next page: its first record is page 0's. */
    struct ringvm_vcpu_stats first_wss_page = read_stats_at(memory, 0x101000, 0);
    cr_assert_eq(first_wss_page.pages_written, 0, "page index of the first record");
    cr_assert_eq(first_wss_page.passes, 2, "generation of the first record");

    const char *dirtier[] = { "--spec", "dirtier,wss=8M,count=5000", "--cpus", "2", "--stats-at", "0x100000",
                              "--memory-file", memory, NULL };
    cr_assert_eq(run_workload(&process, dirtier), 0, "stderr:\n%s", process.err);
    cr_assert_str_eq(process.out, "");
    for (unsigned vcpu = 0; vcpu < 2; vcpu++) {
        struct ringvm_vcpu_stats stats = read_stats_at(memory, 0x100000, vcpu);
        cr_assert_eq(stats.pages_written, 5000, "vcpu %u", vcpu);
        cr_assert_eq(stats.passes, 4, "vcpu %u", vcpu);
        cr_assert_eq(stats.phase, RINGVM_PHASE_DONE, "vcpu %u", vcpu);
        cr_assert_eq(stats.ledger_generation, 0, "vcpu %u: the ledger's value was not zeroed", vcpu);
        cr_assert_eq(stats.ledger_verify_ok, 0, "vcpu %u", vcpu);
    }
    harness_process_free(&process);
    unlink(memory);
}

/* Under ringvm the channel's stats pages win: --stats-at is named as unused
 * and its memory is left alone. */
Test(linux_workload, stats_at_is_unused_under_the_channel, .timeout = 60)
{
    char memory[64];
    make_memory_file(memory, sizeof(memory), true, 1);
    struct harness_process process;
    const char *dirtier[] = { "--spec", "dirtier,wss=8K,count=3", "--cpus", "1", "--stats-at", "0x100000",
                              "--memory-file", memory, NULL };
    cr_assert_eq(run_workload(&process, dirtier), 0, "stderr:\n%s", process.err);
    cr_assert_str_eq(process.err, "ringvm-workload: ringvm channel: stats at 0x2000, doorbell at 0xd0000000, "
                                  "1 vCPUs, TSC 0 kHz\n"
                                  "ringvm-workload: --stats-at 0x100000 unused: the stats go to the ringvm "
                                  "channel\n");
    harness_process_free(&process);
    struct ringvm_vcpu_stats channel = read_stats(memory, 0);
    cr_assert_eq(channel.pages_written, 3);
    cr_assert_eq(channel.passes, 1);
    cr_assert_eq(channel.phase, RINGVM_PHASE_DONE);
    struct ringvm_vcpu_stats untouched = read_stats_at(memory, 0x100000, 0);
    cr_assert_eq(untouched.pages_written, 0);
    cr_assert_eq(untouched.phase, 0);
    unlink(memory);
}

Test(linux_workload, stats_at_bad_values_are_refused, .timeout = 60)
{
    char memory[64];
    make_memory_file(memory, sizeof(memory), false, 0);
    struct harness_process process;
    static const char *const bad[] = { "0x100001", "0", "-4096", "0x100000x", "" };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        const char *arguments[] = { "--spec", "dirtier,wss=8K,count=3", "--stats-at", bad[i], "--memory-file",
                                    memory, NULL };
        cr_assert_eq(run_workload(&process, arguments), 2, "--stats-at '%s'", bad[i]);
        char expected[256];
        snprintf(expected, sizeof(expected), "ringvm-workload: --stats-at %s: expected a page-aligned "
                 "guest-physical address above 0 (e.g. 0x4000000)\n", bad[i]);
        cr_assert_str_eq(process.err, expected);
        cr_assert_str_eq(process.out, "");
        harness_process_free(&process);
    }

    /* Inside the working set (20K = 5 pages from 0x100000): its last page. */
    const char *overlap[] = { "--spec", "ledger,wss=20K,verify=0,count=6", "--cpus", "2", "--wss-at", "0x100000",
                              "--stats-at", "0x104000", "--memory-file", memory, NULL };
    cr_assert_eq(run_workload(&process, overlap), 2);
    cr_assert_str_eq(process.err, "ringvm-workload: --stats-at 0x104000: its 4096 bytes overlap the working set at "
                                  "0x100000-0x105000 (--wss-at)\n");
    harness_process_free(&process);

    /* Right after it: fine. */
    const char *after[] = { "--spec", "ledger,wss=20K,verify=0,count=6", "--cpus", "2", "--wss-at", "0x100000",
                            "--stats-at", "0x105000", "--memory-file", memory, NULL };
    cr_assert_eq(run_workload(&process, after), 0, "stderr:\n%s", process.err);
    cr_assert_eq(read_stats_at(memory, 0x105000, 1).pages_written, 6);
    harness_process_free(&process);

    const char *beyond[] = { "--spec", "dirtier,wss=8K,count=3", "--cpus", "1", "--stats-at", "0xd0001000",
                             "--memory-file", memory, NULL };
    cr_assert_eq(run_workload(&process, beyond), 1);
    char expected[512];
    snprintf(expected, sizeof(expected),
             "ringvm-workload: running without the ringvm channel: no ringvm boot info at 0x1000 of %s "
             "(not running under ringvm)\n"
             "ringvm-workload: --stats-at: %s ends before 0xd0002000\n", memory, memory);
    cr_assert_str_eq(process.err, expected);
    cr_assert_str_eq(process.out, "");
    harness_process_free(&process);
    unlink(memory);
}

/* pattern=random follows guest/page_walk.h with the vCPU seed of
 * guest/abi.h: the highest generation after `count` writes is the most
 * writes any page got in that sequence. */
Test(linux_workload, random_pattern_walks_the_built_in_sequence, .timeout = 60)
{
    const uint64_t pages = 2048, count = 4096;
    struct workload_spec spec;
    workload_spec_defaults(&spec);
    uint32_t *writes = calloc(pages, sizeof(*writes));
    cr_assert_not_null(writes);
    struct page_walk walk;
    page_walk_init(&walk, RINGVM_PATTERN_RANDOM, pages, ringvm_vcpu_seed(spec.seed, 0));
    uint32_t highest = 0;
    for (uint64_t i = 0; i < count; i++) {
        uint64_t page = page_walk_next(&walk);
        if (++writes[page] > highest)
            highest = writes[page];
    }
    free(writes);

    struct harness_process process;
    const char *arguments[] = { "--spec", "ledger,wss=8M,pattern=random,verify=0,count=4096", "--cpus", "1",
                                "--memory-file", "/nonexistent/ringvm-test", NULL };
    cr_assert_eq(run_workload(&process, arguments), 0, "stderr:\n%s", process.err);
    char expected[128];
    snprintf(expected, sizeof(expected), "LEDGER OK pages=2048 gen=%" PRIu32 " vcpu=0\n", highest);
    cr_assert_str_eq(process.out, expected);
    harness_process_free(&process);
}

Test(linux_workload, bad_specs_exit_2_with_ringvms_messages, .timeout = 60)
{
    static const char *const specs[] = {
        "dirtier,pattern=zigzag", "ledger,verify=3601", "zigzag", "ledger,wss=5000", "dirtier,verify=1",
        "ledger,write=16", "ledger,wss", "",
    };
    for (size_t i = 0; i < sizeof(specs) / sizeof(specs[0]); i++) {
        struct workload_spec spec;
        char message[256];
        cr_assert_eq(workload_spec_parse(specs[i], &spec, message, sizeof(message)), -1, "spec '%s'", specs[i]);
        char expected[320];
        snprintf(expected, sizeof(expected), "ringvm-workload: %s\n", message);

        struct harness_process process;
        const char *arguments[] = { "--spec", specs[i], NULL };
        cr_assert_eq(run_workload(&process, arguments), 2, "spec '%s'", specs[i]);
        cr_assert_str_eq(process.err, expected, "spec '%s'", specs[i]);
        cr_assert_str_eq(process.out, "");
        harness_process_free(&process);
    }

    /* The same literal ringvm's own test (tests/test_cli.c) expects. */
    struct harness_process process;
    const char *zigzag[] = { "--spec", "dirtier,pattern=zigzag", NULL };
    cr_assert_eq(run_workload(&process, zigzag), 2);
    cr_assert_str_eq(process.err,
                     "ringvm-workload: --workload: unknown pattern 'zigzag' (expected seq, random or hot)\n");
    harness_process_free(&process);

    const char *fault[] = { "--spec", "fault,kind=ud", NULL };
    cr_assert_eq(run_workload(&process, fault), 2);
    cr_assert_str_eq(process.err, "ringvm-workload: --workload: fault is a built-in guest workload only "
                                  "(a Linux process would just be killed by the signal)\n");
    harness_process_free(&process);

    const char *cpus[] = { "--spec", "idle", "--cpus", "65", NULL };
    cr_assert_eq(run_workload(&process, cpus), 2);
    cr_assert_str_eq(process.err, "ringvm-workload: --cpus 65: expected an integer from 1 to 64\n");
    harness_process_free(&process);

    const char *period[] = { "--spec", "idle", "--clock-lines=5", NULL };
    cr_assert_eq(run_workload(&process, period), 2);
    cr_assert_str_eq(process.err, "ringvm-workload: --clock-lines 5: expected an integer from 10 to 60000\n");
    harness_process_free(&process);

    const char *nothing[] = { NULL };
    cr_assert_eq(run_workload(&process, nothing), 2);
    const char *required = "ringvm-workload: --spec SPEC is required\nusage: ";
    cr_assert(strncmp(process.err, required, strlen(required)) == 0, "stderr: %s", process.err);
    harness_process_free(&process);
}

/* The test hook flips bit 7 of page 7's generation on thread 1 after its
 * first pass (the final verdict of count=1024, gen 1 everywhere): every
 * later pass of thread 1 reports exactly that page, thread 0 stays OK. */
Test(linux_workload, corrupted_page_is_reported_with_page_want_got, .timeout = 60)
{
    cr_assert_eq(setenv("RINGVM_WORKLOAD_TEST_CORRUPT", "1:7", 1), 0);
    struct harness_process process;
    /* 6 s: as in ledger_prints_ok_per_thread_like_the_built_in_guest. */
    const char *arguments[] = { "--spec", "ledger,wss=8M,verify=1,count=1024", "--cpus", "2", "--seconds", "6",
                                "--memory-file", "/nonexistent/ringvm-test", NULL };
    cr_assert_eq(run_workload(&process, arguments), 1, "stdout:\n%s\nstderr:\n%s", process.out, process.err);

    const char *mismatch = "LEDGER MISMATCH page=7 want=1 got=129 vcpu=1";
    const char *fail = "LEDGER FAIL mismatches=1 pages=1024 gen=1 vcpu=1";
    unsigned mismatches = count_lines(process.out, mismatch);
    unsigned fails = count_lines(process.out, fail);
    unsigned ok0 = count_lines(process.out, "LEDGER OK pages=1024 gen=1 vcpu=0");
    unsigned ok1 = count_lines(process.out, "LEDGER OK pages=1024 gen=1 vcpu=1");
    cr_assert_geq(mismatches, 1, "stdout:\n%s", process.out);
    cr_assert_eq(mismatches, fails, "one mismatch per failing pass; stdout:\n%s", process.out);
    cr_assert_eq(ok1, 1, "only the pass before the corruption is OK; stdout:\n%s", process.out);
    cr_assert_geq(ok0, 2, "stdout:\n%s", process.out);
    unsigned lines = 0;
    for (const char *at = process.out; (at = strchr(at, '\n')) != NULL; at++)
        lines++;
    cr_assert_eq(lines, mismatches + fails + ok0 + ok1, "unexpected lines in:\n%s", process.out);

    /* Up to the first verdict of failure: exactly one MISMATCH line. */
    const char *first_fail = strstr(process.out, fail);
    cr_assert_not_null(first_fail);
    const char *first_mismatch = strstr(process.out, mismatch);
    cr_assert(first_mismatch != NULL && first_mismatch < first_fail);
    cr_assert(strstr(first_mismatch + 1, "LEDGER MISMATCH") == NULL ||
              strstr(first_mismatch + 1, "LEDGER MISMATCH") > first_fail);
    harness_process_free(&process);
}

/* Under ringvm the counters go to the stats slot of each vCPU and phases
 * and mismatches to the doorbell: here a file stands in for /dev/mem. */
Test(linux_workload, channel_updates_stats_and_rings_the_doorbell, .timeout = 60)
{
    char memory[64];
    make_memory_file(memory, sizeof(memory), true, 2);
    cr_assert_eq(setenv("RINGVM_WORKLOAD_TEST_CORRUPT", "1:7", 1), 0);
    struct harness_process process;
    /* 4 s: the verify pass after the corruption needs the first pass done
     * and one verify period (1 s) more, also on an emulated CPU. */
    const char *arguments[] = { "--spec", "ledger,wss=8M,verify=1,count=1024", "--cpus", "2", "--seconds", "4",
                                "--memory-file", memory, NULL };
    int status = run_workload(&process, arguments);
    cr_assert_eq(status, 1, "stdout:\n%s\nstderr:\n%s", process.out, process.err);
    cr_assert_str_eq(process.err, "ringvm-workload: ringvm channel: stats at 0x2000, doorbell at 0xd0000000, "
                                  "2 vCPUs, TSC 0 kHz\n");

    struct ringvm_vcpu_stats good = read_stats(memory, 0);
    cr_assert_eq(good.pages_written, 1024);
    cr_assert_eq(good.passes, 1);
    cr_assert_eq(good.phase, RINGVM_PHASE_DONE);
    cr_assert_eq(good.ledger_generation, 1);
    cr_assert_geq(good.ledger_verify_ok, 2);
    cr_assert_eq(good.ledger_mismatches, 0);
    cr_assert_neq(good.tsc_last_update, 0);

    struct ringvm_vcpu_stats bad = read_stats(memory, 1);
    cr_assert_eq(bad.pages_written, 1024);
    cr_assert_eq(bad.phase, RINGVM_PHASE_DONE);
    cr_assert_eq(bad.ledger_verify_ok, 1);
    cr_assert_geq(bad.ledger_mismatches, 1);
    cr_assert_eq(bad.ledger_last_mismatch_page, 7);
    cr_assert_eq(count_lines(process.out, "LEDGER MISMATCH page=7 want=1 got=129 vcpu=1"), bad.ledger_mismatches);

    struct ringvm_vcpu_stats unused = read_stats(memory, 2);
    cr_assert_eq(unused.pages_written, 0);
    cr_assert_eq(unused.phase, 0);

    cr_assert_eq(read_doorbell(memory, RINGVM_CMD_PHASE), RINGVM_PHASE_DONE);
    cr_assert_eq(read_doorbell(memory, RINGVM_CMD_LEDGER_MISMATCH), 7);
    cr_assert_eq(read_doorbell(memory, RINGVM_CMD_POWEROFF), 0);
    unlink(memory);
    harness_process_free(&process);
}

Test(linux_workload, dirtier_and_idle_report_phases_and_counts, .timeout = 60)
{
    char memory[64];
    make_memory_file(memory, sizeof(memory), true, 2);
    struct harness_process process;
    /* count=5000 over 1024 pages per thread in seq order: 4 wrap-arounds;
     * a finished dirtier ends, so the program exits by itself. */
    const char *dirtier[] = { "--spec", "dirtier,wss=8M,count=5000", "--cpus", "2", "--memory-file", memory, NULL };
    cr_assert_eq(run_workload(&process, dirtier), 0, "stderr:\n%s", process.err);
    cr_assert_str_eq(process.out, "");
    for (unsigned vcpu = 0; vcpu < 2; vcpu++) {
        struct ringvm_vcpu_stats stats = read_stats(memory, vcpu);
        cr_assert_eq(stats.pages_written, 5000, "vcpu %u", vcpu);
        cr_assert_eq(stats.passes, 4, "vcpu %u", vcpu);
        cr_assert_eq(stats.phase, RINGVM_PHASE_DONE, "vcpu %u", vcpu);
    }
    harness_process_free(&process);
    unlink(memory);

    make_memory_file(memory, sizeof(memory), true, 2);
    const char *idle[] = { "--spec", "idle", "--cpus", "2", "--seconds", "1", "--memory-file", memory, NULL };
    cr_assert_eq(run_workload(&process, idle), 0, "stderr:\n%s", process.err);
    for (unsigned vcpu = 0; vcpu < 2; vcpu++) {
        struct ringvm_vcpu_stats stats = read_stats(memory, vcpu);
        cr_assert_eq(stats.phase, RINGVM_PHASE_RING3, "vcpu %u", vcpu);
        cr_assert_eq(stats.pages_written, 0, "vcpu %u", vcpu);
    }
    cr_assert_eq(read_doorbell(memory, RINGVM_CMD_PHASE), RINGVM_PHASE_RING3);
    harness_process_free(&process);
    unlink(memory);
}

static uint64_t monotonic_ns(void)
{
    struct timespec now;
    cr_assert_eq(clock_gettime(CLOCK_MONOTONIC, &now), 0, "clock_gettime: %s", strerror(errno));
    return (uint64_t)now.tv_sec * 1000000000u + (uint64_t)now.tv_nsec;
}

/* Runs the idle workload on 1 CPU for `seconds` with `clock_option`
 * (--clock-lines or --clock-lines=MS) and checks its output: only `CLOCK
 * mono_ns=N` lines, N being CLOCK_MONOTONIC read at each whole multiple of
 * period_ns: this machine's own clock, so every N lies between the test's
 * readings before the start and after the exit, and consecutive lines are
 * one period apart (N / period goes up by exactly one). Returns the count. */
static unsigned run_clock_lines(const char *seconds, const char *clock_option, uint64_t period_ns)
{
    char memory[64];
    make_memory_file(memory, sizeof(memory), false, 0);
    struct harness_process process;
    const char *arguments[] = { "--spec", "idle", "--cpus", "1", "--seconds", seconds, clock_option,
                                "--memory-file", memory, NULL };
    uint64_t started = monotonic_ns();
    int status = run_workload(&process, arguments);
    uint64_t ended = monotonic_ns();
    unlink(memory);
    cr_assert_eq(status, 0, "stdout:\n%s\nstderr:\n%s", process.out, process.err);
    unsigned lines = 0;
    uint64_t previous = 0;
    for (char *line = strtok(process.out, "\n"); line != NULL; line = strtok(NULL, "\n")) {
        uint64_t value = 0;
        int consumed = 0;
        cr_assert_eq(sscanf(line, "CLOCK mono_ns=%" SCNu64 "%n", &value, &consumed), 1, "unexpected line '%s'", line);
        cr_assert_eq((size_t)consumed, strlen(line), "trailing text in '%s'", line);
        cr_assert(value >= started && value <= ended, "'%s' is outside this run: %" PRIu64 "..%" PRIu64, line,
                  started, ended);
        if (lines > 0)
            cr_assert_eq(value / period_ns, previous / period_ns + 1, "'%s' after mono_ns=%" PRIu64, line, previous);
        previous = value;
        lines++;
    }
    harness_process_free(&process);
    return lines;
}

/* --clock-lines: a line at every whole second; three seconds hold two or
 * three whole seconds after the thread starts. */
Test(linux_workload, clock_lines_print_the_monotonic_clock_every_second, .timeout = 60)
{
    unsigned lines = run_clock_lines("3", "--clock-lines", 1000000000u);
    cr_assert(lines == 2 || lines == 3, "%u CLOCK lines in 3 s", lines);
}

/* --clock-lines=MS: the same at every whole multiple of MS (ringvm.clock_ms
 * on the guest's command line: the ping-pong test reads the clock four
 * times a second); one second holds three or four whole periods. */
Test(linux_workload, clock_lines_every_250_ms, .timeout = 60)
{
    unsigned lines = run_clock_lines("1", "--clock-lines=250", 250000000u);
    cr_assert(lines == 3 || lines == 4, "%u CLOCK lines in 1 s", lines);
}

/* poweroff rings the doorbell with its code; off the guest image (no
 * /etc/ringvm-guest) it refuses the reboot(2) fallback, so running it on
 * this machine never powers the machine off. */
Test(linux_workload, poweroff_rings_the_doorbell_and_never_powers_off_the_host, .timeout = 60)
{
    if (access("/etc/ringvm-guest", F_OK) == 0)
        harness_skip("/etc/ringvm-guest exists: this is the guest image, where poweroff would really power off");
    char memory[64];
    make_memory_file(memory, sizeof(memory), true, 1);
    cr_assert_eq(setenv("RINGVM_WORKLOAD_MEMORY_FILE", memory, 1), 0);
    struct harness_process process;
    const char *arguments[] = { "poweroff", "3", NULL };
    cr_assert_eq(run_workload(&process, arguments), 1, "stderr:\n%s", process.err);
    cr_assert_str_eq(process.err, "ringvm-workload: poweroff: /etc/ringvm-guest is missing, so this is not the "
                                  "ringvm guest image: not calling reboot(2)\n");
    cr_assert_eq(read_doorbell(memory, RINGVM_CMD_POWEROFF), 3);
    harness_process_free(&process);

    const char *bad[] = { "poweroff", "256", NULL };
    cr_assert_eq(run_workload(&process, bad), 2);
    cr_assert_str_eq(process.err, "ringvm-workload: poweroff 256: expected an integer from 0 to 255\n");
    harness_process_free(&process);
    unlink(memory);
}
