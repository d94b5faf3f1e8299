/* See fuzz_runner.h. */
#include "tests/fuzz_runner.h"

#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tests/harness.h"

/* Upper bounds on the two children of a fuzz test (timeout(1)): building
 * the target (the sanitised VMM library from scratch takes ~2 min on a
 * 2-core machine) and the fuzzer's time beyond its -max_total_time. */
enum { FUZZ_BUILD_LIMIT_S = 600, FUZZ_OVERRUN_S = 120 };

static int run_shell(const char *command)
{
    int status = system(command);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
}

/* "stat::number_of_executed_units: N" of libFuzzer's final stats in
 * work/log (-print_final_stats=1); 0 when the line is missing (the fuzzer
 * did not get to its end). */
static unsigned long long executed_units(const char *work)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/log", work);
    FILE *log = fopen(path, "r");
    if (log == NULL)
        return 0;
    unsigned long long executed = 0;
    char line[512];
    while (fgets(line, sizeof(line), log) != NULL)
        if (sscanf(line, "stat::number_of_executed_units: %llu", &executed) == 1)
            break;
    fclose(log);
    return executed;
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
        harness_skip("run from the repository root (%s not found)", run->corpus);
    if (run_shell("command -v clang >/dev/null 2>&1") != 0)
        harness_skip("clang is not installed: the libFuzzer target cannot be built");
    FILE *p = popen("clang -print-file-name=libclang_rt.fuzzer-x86_64.a 2>/dev/null", "r");
    char runtime[1024] = "";
    if (p) {
        if (!fgets(runtime, sizeof(runtime), p))
            runtime[0] = '\0';
        pclose(p);
    }
    runtime[strcspn(runtime, "\n")] = '\0';
    if (runtime[0] != '/' || access(runtime, R_OK) != 0)
        harness_skip("clang's libFuzzer runtime (libclang_rt.fuzzer) is missing: install libclang-rt-dev");

    /* No KVM in them: they ran on the host in make test, where the build
     * they need is fast; inside scripts/nested-kvm.sh it would be TCG's. */
    if (getenv("RINGVM_NESTED_KVM") != NULL)
        harness_skip("inside scripts/nested-kvm.sh: the fuzzers need no KVM and run on the host (make test)");
    const char *build = getenv("RINGVM_BUILD_DIR");
    if (build == NULL)
        build = "build";
    char command[4096];
    /* The tests carry no Criterion timeout (a fixed one would kill the
     * longer campaigns RINGVM_FUZZ_SECONDS asks for): each child runs under
     * timeout(1) instead, the build for at most FUZZ_BUILD_LIMIT_S. */
    snprintf(command, sizeof(command), "timeout -k 10 %u make -s --no-print-directory BUILD=%s %s/fuzz/%s >&2",
             FUZZ_BUILD_LIMIT_S, build, build, run->target);
    int built = run_shell(command);
    cr_assert_neq(built, 124, "make fuzz (%s) did not finish within %u s", run->target, FUZZ_BUILD_LIMIT_S);
    cr_assert_eq(built, 0, "make fuzz (%s) failed", run->target);

    /* The seed: given (replay) or fresh, never 0 (libFuzzer's "pick one"). */
    unsigned seed = 0, runs = 0;
    const char *given_seed = getenv("RINGVM_FUZZ_SEED");
    const char *given_runs = getenv("RINGVM_FUZZ_RUNS");
    if (given_seed != NULL) {
        char *end = NULL;
        unsigned long value = strtoul(given_seed, &end, 10);
        cr_assert(end != given_seed && *end == '\0' && value > 0 && value <= UINT_MAX,
                  "RINGVM_FUZZ_SEED='%s': expected 1..%u", given_seed, UINT_MAX);
        seed = (unsigned)value;
    } else {
        while (seed == 0)
            cr_assert_eq(getrandom(&seed, sizeof(seed), 0), (ssize_t)sizeof(seed), "getrandom: %s", strerror(errno));
    }
    if (given_runs != NULL) {
        char *end = NULL;
        unsigned long value = strtoul(given_runs, &end, 10);
        cr_assert(end != given_runs && *end == '\0' && value > 0 && value <= UINT_MAX,
                  "RINGVM_FUZZ_RUNS='%s': expected 1..%u", given_runs, UINT_MAX);
        runs = (unsigned)value;
    }
    /* RINGVM_FUZZ_SECONDS: a longer campaign than make test's budget allows. */
    unsigned seconds = run->seconds;
    const char *given_seconds = getenv("RINGVM_FUZZ_SECONDS");
    if (given_seconds != NULL) {
        char *end = NULL;
        unsigned long value = strtoul(given_seconds, &end, 10);
        cr_assert(end != given_seconds && *end == '\0' && value > 0 && value <= 86400,
                  "RINGVM_FUZZ_SECONDS='%s': expected 1..86400", given_seconds);
        seconds = (unsigned)value;
    }
    fprintf(stderr, "fuzz: %s: seed %u%s (replay: RINGVM_FUZZ_SEED=%u)\n", run->target, seed,
            given_seed != NULL ? " (from RINGVM_FUZZ_SEED)" : "", seed);
    char runs_option[32] = "";
    if (runs > 0)
        snprintf(runs_option, sizeof(runs_option), "-runs=%u", runs);

    /* libFuzzer stops itself after -max_total_time; the limit around it
     * only catches a fuzzer that never gets there (loading the corpus and
     * the final stats come on top of the fuzzing time). */
    unsigned limit = seconds + FUZZ_OVERRUN_S + seconds / 4;
    char work[] = "/tmp/ringvm-fuzz-XXXXXX";
    cr_assert_not_null(mkdtemp(work));
    snprintf(command, sizeof(command),
             "mkdir %s/corpus && timeout -k 10 %u %s/fuzz/%s -seed=%u %s -max_total_time=%u -timeout=10 "
             "-rss_limit_mb=2048 %s -print_final_stats=1 -artifact_prefix=%s/ %s/corpus %s > %s/log 2>&1",
             work, limit, build, run->target, seed, runs_option, seconds,
             run->extra_options ? run->extra_options : "", work, work, run->corpus, work);
    int status = run_shell(command);
    unsigned long long executed = executed_units(work);
    char replay[160];
    snprintf(replay, sizeof(replay), "seed %u, %llu inputs (replay: RINGVM_FUZZ_SEED=%u RINGVM_FUZZ_RUNS=%llu)",
             seed, executed, seed, executed);
    fprintf(stderr, "fuzz: %s: %s\n", run->target, replay);

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
    cr_assert_neq(status, 124, "%s was still running %u s after its -max_total_time=%u (%s); log in %s",
                  run->target, limit - seconds, seconds, replay, work);
    cr_assert_eq(status, 0, "%s failed (exit %d, %s); log and artifacts in %s%s", run->target, status, replay, work,
                 reproduce);
    cr_assert_eq(artifacts, 0, "%u crash/leak/timeout/oom artifacts in %s (%s)%s", artifacts, work, replay,
                 reproduce);
    /* A replay with RINGVM_FUZZ_RUNS below the floor runs what it is told. */
    unsigned long long floor = runs > 0 && runs < run->min_executions ? runs : run->min_executions;
    if (executed < floor) {
        snprintf(command, sizeof(command), "tail -20 %s/log >&2", work);
        run_shell(command);
    }
    cr_assert_geq(executed, floor, "%s ran only %llu inputs in %u s (at least %llu expected; %s); log in %s",
                  run->target, executed, seconds, floor, replay, work);
    snprintf(command, sizeof(command), "rm -rf %s", work);
    run_shell(command);
}
