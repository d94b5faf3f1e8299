/* See fuzz_runner.h. */
#include "tests/fuzz_runner.h"

#include <criterion/criterion.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static int run_shell(const char *command)
{
    int status = system(command);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
}

/* "; reproduce: echo BASE64 | base64 -d > NAME && build/fuzz/TARGET NAME"
 * for artifacts up to 4 KiB (larger ones: only the name). */
static void describe_artifact(const char *target, const char *work, const char *name, char *out, size_t size)
{
    char command[1024];
    snprintf(command, sizeof(command), "test $(stat -c %%s '%s/%s') -le 4096 && base64 -w0 '%s/%s'", work, name,
             work, name);
    char encoded[5600] = "";
    FILE *p = popen(command, "r");
    if (p) {
        size_t got = fread(encoded, 1, sizeof(encoded) - 1, p);
        encoded[got] = '\0';
        pclose(p);
    }
    if (encoded[0] != '\0')
        snprintf(out, size, "; reproduce: echo %s | base64 -d > %s && build/fuzz/%s %s", encoded, name, target, name);
    else
        snprintf(out, size, "; first artifact %s/%s (over 4 KiB)", work, name);
}

void fuzz_runner_run(const struct fuzz_run *run)
{
    if (access(run->corpus, R_OK) != 0)
        cr_skip_test("run from the repository root (%s not found)", run->corpus);
    if (run_shell("command -v clang >/dev/null 2>&1") != 0)
        cr_skip_test("clang is not installed: the libFuzzer target cannot be built");
    FILE *p = popen("clang -print-file-name=libclang_rt.fuzzer-x86_64.a 2>/dev/null", "r");
    char runtime[1024] = "";
    if (p) {
        if (!fgets(runtime, sizeof(runtime), p))
            runtime[0] = '\0';
        pclose(p);
    }
    runtime[strcspn(runtime, "\n")] = '\0';
    if (runtime[0] != '/' || access(runtime, R_OK) != 0)
        cr_skip_test("clang's libFuzzer runtime (libclang_rt.fuzzer) is missing: install libclang-rt-dev");

    const char *build = getenv("RINGVM_BUILD_DIR");
    if (build == NULL)
        build = "build";
    char command[4096];
    snprintf(command, sizeof(command), "make -s --no-print-directory BUILD=%s %s/fuzz/%s >&2", build, build,
             run->target);
    cr_assert_eq(run_shell(command), 0, "make fuzz (%s) failed", run->target);

    char work[] = "/tmp/ringvm-fuzz-XXXXXX";
    cr_assert_not_null(mkdtemp(work));
    snprintf(command, sizeof(command),
             "mkdir %s/corpus && %s/fuzz/%s -max_total_time=%u -timeout=10 -rss_limit_mb=2048 %s "
             "-print_final_stats=1 -artifact_prefix=%s/ %s/corpus %s > %s/log 2>&1",
             work, build, run->target, run->seconds, run->extra_options ? run->extra_options : "", work, work,
             run->corpus, work);
    int status = run_shell(command);

    unsigned artifacts = 0;
    char first[300] = "";
    DIR *dir = opendir(work);
    cr_assert_not_null(dir);
    struct dirent *entry;
    while ((entry = readdir(dir)) != NULL)
        if (strncmp(entry->d_name, "crash-", 6) == 0 || strncmp(entry->d_name, "leak-", 5) == 0 ||
            strncmp(entry->d_name, "timeout-", 8) == 0 || strncmp(entry->d_name, "oom-", 4) == 0 ||
            strncmp(entry->d_name, "slow-unit-", 10) == 0) {
            fprintf(stderr, "%s: artifact %s/%s\n", run->target, work, entry->d_name);
            if (strncmp(entry->d_name, "slow-unit-", 10) != 0 && artifacts++ == 0)
                snprintf(first, sizeof(first), "%s", entry->d_name);
        }
    closedir(dir);
    if (status != 0 || artifacts != 0) {
        snprintf(command, sizeof(command), "tail -40 %s/log >&2", work);
        run_shell(command);
    }
    /* The failing input goes into the assertion message (which
     * tests/failure_summary.c repeats last), so a CI log that keeps only its
     * tail still carries what is needed to reproduce it. */
    char reproduce[6000] = "";
    if (first[0] != '\0')
        describe_artifact(run->target, work, first, reproduce, sizeof(reproduce));
    cr_assert_eq(status, 0, "%s failed (exit %d); log and artifacts in %s%s", run->target, status, work, reproduce);
    cr_assert_eq(artifacts, 0, "%u crash/leak/timeout/oom artifacts in %s%s", artifacts, work, reproduce);
    snprintf(command, sizeof(command), "grep -h 'stat::number_of_executed_units' %s/log >&2; rm -rf %s", work,
             work);
    run_shell(command);
}
