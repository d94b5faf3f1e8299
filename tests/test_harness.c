/*
 * The suite's own rules (issue 18): every skip goes through harness_skip,
 * prints one line, and is counted with its reason in the "Skipped: N" block
 * just above Criterion's "Synthesis:" line (tests/skip_summary.h); the BPF
 * capability probe behind harness_require_bpf tells "BPF absent" from "BPF
 * present". No /dev/kvm needed.
 */
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bpf/probes.h"
#include "tests/harness.h"
#include "tests/skip_summary.h"

/* ---- the grouping, on synthetic stats ------------------------------------ */

/* Up to 8 tests in up to 3 suites, linked the way Criterion links them. */
struct fake_run {
    struct criterion_global_stats global;
    struct criterion_suite_stats suites[3];
    struct criterion_test_stats tests[8];
    struct criterion_test test_descriptions[8];
    struct criterion_test_extra_data extra[8];
    unsigned test_count;
};

static void fake_add(struct fake_run *run, unsigned suite, const char *suite_name, const char *name,
                     enum criterion_test_status status, const char *message, bool disabled)
{
    cr_assert_lt(run->test_count, 8);
    unsigned i = run->test_count++;
    run->extra[i].disabled = disabled;
    run->test_descriptions[i] = (struct criterion_test){ .name = name, .category = suite_name,
                                                         .data = &run->extra[i] };
    run->tests[i] = (struct criterion_test_stats){ .test = &run->test_descriptions[i], .test_status = status,
                                                   .message = message };
    /* Appended at the end of its suite's list; suites linked in index order. */
    struct criterion_test_stats **link = &run->suites[suite].tests;
    while (*link != NULL)
        link = &(*link)->next;
    *link = &run->tests[i];
    run->global.suites = &run->suites[0];
    run->suites[0].next = &run->suites[1];
    run->suites[1].next = &run->suites[2];
}

static char *print_to_string(const struct criterion_global_stats *stats, size_t *skipped)
{
    char *text = NULL;
    size_t size = 0;
    FILE *out = open_memstream(&text, &size);
    cr_assert_not_null(out, "open_memstream: %s", strerror(errno));
    *skipped = skip_summary_print(out, stats);
    cr_assert_eq(fclose(out), 0);
    return text;
}

Test(skip_summary, groups_reasons_most_frequent_first_with_their_suites)
{
    struct fake_run run;
    memset(&run, 0, sizeof(run));
    fake_add(&run, 0, "vm", "a", CR_STATUS_SKIPPED, "gnuplot not installed", false);
    fake_add(&run, 0, "vm", "b", CR_STATUS_SKIPPED, "/dev/kvm unavailable: No such file or directory", false);
    fake_add(&run, 0, "vm", "c", CR_STATUS_PASSED, NULL, false);
    fake_add(&run, 1, "migration", "d", CR_STATUS_SKIPPED, "/dev/kvm unavailable: No such file or directory",
             false);
    fake_add(&run, 1, "migration", "e", CR_STATUS_FAILED, NULL, false);
    fake_add(&run, 2, "bpf", "f", CR_STATUS_SKIPPED, NULL, false);
    fake_add(&run, 2, "bpf", "g", CR_STATUS_SKIPPED, "/dev/kvm unavailable: No such file or directory", false);
    size_t skipped = 0;
    char *text = print_to_string(&run.global, &skipped);
    cr_assert_eq(skipped, 5);
    cr_assert_str_eq(text, "[====] Skipped: 5 of 7 selected tests did not run\n"
                           "[SKIP]    3 x /dev/kvm unavailable: No such file or directory (suites: vm, migration, bpf)\n"
                           "[SKIP]    1 x gnuplot not installed (suites: vm)\n"
                           "[SKIP]    1 x (no reason given) (suites: bpf)\n");
    free(text);
}

Test(skip_summary, a_run_without_skips_still_says_so_and_filtered_tests_are_not_skips)
{
    struct fake_run run;
    memset(&run, 0, sizeof(run));
    fake_add(&run, 0, "vm", "a", CR_STATUS_PASSED, NULL, false);
    /* What --filter leaves out: Criterion reports it as skipped, disabled. */
    fake_add(&run, 0, "vm", "b", CR_STATUS_SKIPPED, NULL, true);
    fake_add(&run, 1, "cli", "c", CR_STATUS_SKIPPED, NULL, true);
    size_t skipped = 0;
    char *text = print_to_string(&run.global, &skipped);
    cr_assert_eq(skipped, 0);
    cr_assert_str_eq(text, "[====] Skipped: 0 of 1 selected tests did not run (2 more disabled or left out by "
                           "--filter)\n");
    free(text);

    struct criterion_global_stats empty;
    memset(&empty, 0, sizeof(empty));
    text = print_to_string(&empty, &skipped);
    cr_assert_str_eq(text, "[====] Skipped: 0 of 0 selected tests did not run\n");
    free(text);
}

/* ---- end to end: this binary, one test that skips -------------------------- */

#define PROBE_ENVIRONMENT "RINGVM_TEST_SKIP_PROBE"

/* Skips (through harness_skip) only when the end-to-end test below runs it
 * in a child runner; otherwise it checks what harness_skip relies on to
 * name the test in its line. */
Test(harness_skip_probe, skips_when_asked)
{
    if (getenv(PROBE_ENVIRONMENT) != NULL)
        harness_skip("probe reason %d, asked by %s", 7, getenv(PROBE_ENVIRONMENT));
    cr_assert_not_null(criterion_current_test);
    cr_assert_str_eq(criterion_current_test->category, "harness_skip_probe");
    cr_assert_str_eq(criterion_current_test->name, "skips_when_asked");
}

static unsigned count_occurrences(const char *text, const char *needle)
{
    unsigned count = 0;
    for (const char *at = strstr(text, needle); at != NULL; at = strstr(at + 1, needle))
        count++;
    return count;
}

Test(skip_summary, a_skip_prints_one_line_and_its_reason_reaches_the_block_above_synthesis, .timeout = 60)
{
    char self[4096];
    ssize_t length = readlink("/proc/self/exe", self, sizeof(self) - 1);
    cr_assert_gt(length, 0, "readlink /proc/self/exe: %s", strerror(errno));
    self[length] = '\0';
    cr_assert_eq(setenv(PROBE_ENVIRONMENT, "skip_summary", 1), 0);
    /* Criterion's sandbox (BoxFort) marks its workers with BXFI_MAP; a
     * child that inherits it believes it is a worker and aborts. */
    char *worker_map = getenv("BXFI_MAP") != NULL ? strdup(getenv("BXFI_MAP")) : NULL;
    unsetenv("BXFI_MAP");
    char *argv[] = { self, "--filter", "harness_skip_probe/*", "--jobs", "1", NULL };
    struct harness_process process;
    harness_spawn(&process, argv);
    int status = harness_process_wait_exit(&process, 50000);
    unsetenv(PROBE_ENVIRONMENT);
    if (worker_map != NULL) {
        setenv("BXFI_MAP", worker_map, 1);
        free(worker_map);
    }
    cr_assert_eq(status, 0, "child runner exit %d; stderr:\n%s", status, process.err);
    /* The one line of the skip, from the test's own process. */
    cr_assert_eq(count_occurrences(process.err, "[SKIP] harness_skip_probe::skips_when_asked: probe reason 7, "
                                                "asked by skip_summary\n"),
                 1, "stderr:\n%s", process.err);
    /* The block, with the reason carried to the runner, right above the
     * synthesis line. */
    const char *block = strstr(process.err, "[====] Skipped: 1 of 1 selected tests did not run (");
    cr_assert_not_null(block, "no skip block; stderr:\n%s", process.err);
    const char *reason_line = strchr(block, '\n');
    cr_assert_not_null(reason_line);
    cr_assert(strncmp(reason_line + 1,
                      "[SKIP]    1 x probe reason 7, asked by skip_summary (suites: harness_skip_probe)\n"
                      "[====] Synthesis: Tested: 0 | Passing: 0 | Failing: 0 | Crashing: 0",
                      strlen("[SKIP]    1 x probe reason 7, asked by skip_summary (suites: harness_skip_probe)\n"
                             "[====] Synthesis: Tested: 0 | Passing: 0 | Failing: 0 | Crashing: 0")) == 0,
              "stderr:\n%s", process.err);
    harness_process_free(&process);
}

/* ---- no bare Criterion skip ---------------------------------------------- */

/* Appends to found the "path:line" of every bare Criterion skip in the .c
 * and .h files under directory (recursively), tests/harness.c excepted. */
static void find_bare_skips(const char *directory, char *found, size_t found_size, unsigned *files)
{
    DIR *dir = opendir(directory);
    cr_assert_not_null(dir, "opendir %s: %s", directory, strerror(errno));
    /* Spelled in two pieces so this file does not match itself. */
    const char *patterns[] = { "cr_skip" "_test(", "cr_skip" "(" };
    struct dirent *entry;
    while ((entry = readdir(dir)) != NULL) {
        if (entry->d_name[0] == '.')
            continue;
        char path[1024];
        snprintf(path, sizeof(path), "%s/%s", directory, entry->d_name);
        struct stat st;
        cr_assert_eq(stat(path, &st), 0, "stat %s: %s", path, strerror(errno));
        if (S_ISDIR(st.st_mode)) {
            find_bare_skips(path, found, found_size, files);
            continue;
        }
        size_t name_length = strlen(entry->d_name);
        if (name_length < 3 || (strcmp(entry->d_name + name_length - 2, ".c") != 0 &&
                                strcmp(entry->d_name + name_length - 2, ".h") != 0))
            continue;
        if (strcmp(path, "tests/harness.c") == 0)
            continue;
        FILE *file = fopen(path, "r");
        cr_assert_not_null(file, "fopen %s: %s", path, strerror(errno));
        (*files)++;
        char line[4096];
        unsigned number = 0;
        while (fgets(line, sizeof(line), file) != NULL) {
            number++;
            for (size_t p = 0; p < sizeof(patterns) / sizeof(patterns[0]); p++)
                if (strstr(line, patterns[p]) != NULL) {
                    size_t used = strlen(found);
                    snprintf(found + used, found_size - used, " %s:%u", path, number);
                }
        }
        fclose(file);
    }
    closedir(dir);
}

Test(harness, every_skip_goes_through_harness_skip)
{
    if (access("tests/harness.c", R_OK) != 0)
        harness_skip("run from the repository root (tests/harness.c not found)");
    char found[4096] = "";
    unsigned files = 0;
    find_bare_skips("tests", found, sizeof(found), &files);
    cr_assert_geq(files, 20, "only %u source files under tests/", files);
    cr_assert_str_eq(found, "", "a bare Criterion skip hides its reason from the summary; use harness_skip at:%s",
                     found);
}

/* ---- a child's output ---------------------------------------------------- */

/* harness_process_read_available empties a full pipe in one call. Its
 * callers (tests/test_faults.c) rely on that to keep a ringvm's output pipe
 * from filling while they wait on its API: a full pipe blocks every ringvm
 * thread that writes, and a migration thread blocked logging an iteration
 * never honours migration.cancel. Before it, "reading what is there" was a
 * harness_process_wait_output with a 0 ms timeout, which read nothing. The
 * child writes exactly one default pipe's worth (64 KiB) and can only exit
 * once all of it is in the pipe: after waitpid everything is there. */
Test(harness, read_available_empties_a_full_pipe_in_one_call, .timeout = 30)
{
    char *argv[] = { "/bin/sh", "-c", "head -c 65536 /dev/zero | tr '\\0' x", NULL };
    struct harness_process process;
    harness_spawn(&process, argv);
    int status = 0;
    cr_assert_eq(waitpid(process.pid, &status, 0), process.pid, "waitpid: %s", strerror(errno));
    process.pid = 0;    /* reaped here: harness_process_free must not signal the pid again */
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the writer failed: status 0x%x", (unsigned)status);
    harness_process_read_available(&process);
    cr_assert_eq(process.out_length, 65536u, "read %zu of the 65536 bytes in the pipe", process.out_length);
    cr_assert_eq(strspn(process.out, "x"), 65536u);
    cr_assert_eq(process.err_length, 0u, "stderr: %s", process.err);
    harness_process_free(&process);
}

/* ---- the BPF capability probe ------------------------------------------- */

static void ask_bpf_capability(char *answer, size_t size)
{
    if (harness_bpf_capability(answer, size))
        snprintf(answer, size, "USABLE");
}

Test(harness, bpf_capability_is_absent_for_an_unprivileged_process)
{
    char why[256] = "";
    bool usable = harness_bpf_capability(why, sizeof(why));
    if (!usable)
        cr_assert_neq(why[0], '\0', "no reason given for BPF being absent");
    fprintf(stderr, "test_harness: BPF here: %s\n", usable ? "usable" : why);
    const char *built_reason = NULL;
    if (!bpf_probes_built(&built_reason))
        harness_skip("BPF probes not built (%s): the unprivileged case is the same answer", built_reason);
    char answer[256] = "";
    harness_ask_as_nobody(ask_bpf_capability, answer, sizeof(answer));
    /* unprivileged_bpf_disabled = 0 would let uid 65534 create the map. */
    FILE *sysctl = fopen("/proc/sys/kernel/unprivileged_bpf_disabled", "r");
    int disabled = -1;
    if (sysctl != NULL) {
        if (fscanf(sysctl, "%d", &disabled) != 1)
            disabled = -1;
        fclose(sysctl);
    }
    if (disabled == 0)
        harness_skip("kernel.unprivileged_bpf_disabled = 0: an unprivileged process may use bpf() here");
    cr_assert(strncmp(answer, "bpf() not permitted to this process (euid 65534; needs root or CAP_BPF): ",
                      strlen("bpf() not permitted to this process (euid 65534; needs root or CAP_BPF): ")) == 0,
              "answer: %s", answer);
}
