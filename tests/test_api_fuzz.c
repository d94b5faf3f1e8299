/*
 * Runs the API request fuzzer (make fuzz) for 30 s from the seed corpus in
 * tests/fuzz/api-corpus/ and asserts it found nothing.
 */
#include <criterion/criterion.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static int run(const char *command)
{
    int status = system(command);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
}

Test(api_fuzz, request_handler_30s_no_crash, .timeout = 240)
{
    if (access("tests/fuzz/api-corpus", R_OK) != 0)
        cr_skip_test("run from the repository root (tests/fuzz/api-corpus not found)");
    if (run("command -v clang >/dev/null 2>&1") != 0)
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
    char command[4096];
    snprintf(command, sizeof(command), "make -s --no-print-directory BUILD=%s fuzz >&2", build ? build : "build");
    cr_assert_eq(run(command), 0, "make fuzz failed");

    char work[] = "/tmp/ringvm-api-fuzz-XXXXXX";
    cr_assert_not_null(mkdtemp(work));
    snprintf(command, sizeof(command),
             "mkdir %s/corpus && %s/fuzz/api_request_fuzz -max_total_time=30 -timeout=10 -rss_limit_mb=2048 "
             "-print_final_stats=1 -artifact_prefix=%s/ %s/corpus tests/fuzz/api-corpus > %s/log 2>&1",
             work, build ? build : "build", work, work, work);
    int status = run(command);

    unsigned artifacts = 0;
    DIR *dir = opendir(work);
    cr_assert_not_null(dir);
    struct dirent *entry;
    while ((entry = readdir(dir)) != NULL)
        if (strncmp(entry->d_name, "crash-", 6) == 0 || strncmp(entry->d_name, "leak-", 5) == 0 ||
            strncmp(entry->d_name, "timeout-", 8) == 0 || strncmp(entry->d_name, "oom-", 4) == 0) {
            fprintf(stderr, "api fuzz: artifact %s/%s\n", work, entry->d_name);
            artifacts++;
        }
    closedir(dir);
    if (status != 0 || artifacts != 0) {
        snprintf(command, sizeof(command), "tail -40 %s/log >&2", work);
        run(command);
    }
    cr_assert_eq(status, 0, "the fuzzer failed (exit %d); log and artifacts in %s", status, work);
    cr_assert_eq(artifacts, 0, "%u crash/leak/timeout artifacts in %s", artifacts, work);
    snprintf(command, sizeof(command), "grep -h 'stat::number_of_executed_units' %s/log >&2; rm -rf %s", work, work);
    run(command);
}
