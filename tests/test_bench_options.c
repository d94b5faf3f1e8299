/* The benchmarks' command lines (bench/lib/bench_options.h and every
 * program in bench/): numbers are refused the same way everywhere, --help
 * and -h print the usage and exit 0, a bad value or an unknown option exits
 * 2 before anything touches KVM, and each usage text lists exactly the
 * options its getopt table takes. No KVM needed. */
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench/lib/bench_options.h"
#include "tests/harness.h"

/* ---- stderr of the parsers ------------------------------------------------ */

static int saved_stderr = -1;
static FILE *stderr_file;

static void capture_stderr(void)
{
    fflush(stderr);
    stderr_file = tmpfile();
    cr_assert_not_null(stderr_file, "tmpfile: %s", strerror(errno));
    saved_stderr = dup(STDERR_FILENO);
    cr_assert_geq(saved_stderr, 0, "dup: %s", strerror(errno));
    cr_assert_geq(dup2(fileno(stderr_file), STDERR_FILENO), 0, "dup2: %s", strerror(errno));
}

/* What was written since capture_stderr; stderr is the real one again. */
static const char *captured_stderr(void)
{
    static char text[1024];
    fflush(stderr);
    dup2(saved_stderr, STDERR_FILENO);
    close(saved_stderr);
    rewind(stderr_file);
    size_t length = fread(text, 1, sizeof(text) - 1, stderr_file);
    text[length] = '\0';
    fclose(stderr_file);
    return text;
}

/* ---- bench_parse_unsigned / bench_option_unsigned -------------------------- */

Test(bench_options, unsigned_accepts_whole_numbers_in_range)
{
    unsigned value = 12345;
    cr_assert_eq(bench_parse_unsigned("0", 0, 16, &value), 0);
    cr_assert_eq(value, 0);
    cr_assert_eq(bench_parse_unsigned("16", 1, 16, &value), 0);
    cr_assert_eq(value, 16);
    cr_assert_eq(bench_parse_unsigned("1", 1, 16, &value), 0);
    cr_assert_eq(value, 1);
    cr_assert_eq(bench_parse_unsigned("007", 1, 16, &value), 0);
    cr_assert_eq(value, 7);
    cr_assert_eq(bench_parse_unsigned("4294967295", 0, UINT_MAX, &value), 0);
    cr_assert_eq(value, UINT_MAX);

    capture_stderr();
    int result = bench_option_unsigned("bench/x", "--reps", "3", 1, 16, &value);
    cr_assert_str_eq(captured_stderr(), "");
    cr_assert_eq(result, 0);
    cr_assert_eq(value, 3);
}

Test(bench_options, unsigned_refuses_every_kind_of_bad_input)
{
    static const struct {
        const char *text;
        unsigned min, max;
    } bad[] = {
        { "", 0, 16 },                        /* empty */
        { "abc", 0, 16 },                     /* not a number (atoi: 0) */
        { "5x", 0, 16 },                      /* trailing junk (strtoul: 5) */
        { "1.5", 0, 16 },
        { "-1", 0, UINT_MAX },                /* sign (strtoul: ULONG_MAX) */
        { "-0", 0, 16 },
        { "+5", 0, 16 },
        { " 5", 0, 16 },                      /* leading space (strtoul skips it) */
        { "5 ", 0, 16 },
        { "17", 1, 16 },                      /* above max */
        { "0", 1, 16 },                       /* below min */
        { "4294967296", 0, UINT_MAX },        /* does not fit an unsigned */
        { "4294967297", 1, 64 },              /* (unsigned)strtoul would give 1 */
        { "18446744073709551615", 0, UINT_MAX },
        { "99999999999999999999", 0, UINT_MAX }, /* ERANGE */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        unsigned value = 12345;
        cr_assert_eq(bench_parse_unsigned(bad[i].text, bad[i].min, bad[i].max, &value), -1, "'%s' accepted",
                     bad[i].text);
        cr_assert_eq(value, 12345, "'%s' wrote %u", bad[i].text, value);
    }
}

Test(bench_options, unsigned_option_says_what_it_expected)
{
    unsigned value = 12345;
    capture_stderr();
    int result = bench_option_unsigned("bench/harvest", "--reps", "abc", 1, 16, &value);
    cr_assert_str_eq(captured_stderr(), "bench/harvest: --reps 'abc': expected a whole number from 1 to 16\n");
    cr_assert_eq(result, -1);
    cr_assert_eq(value, 12345);

    capture_stderr();
    result = bench_option_unsigned("bench/x", "--cap", "99999999999999999999", 0, 100000, &value);
    cr_assert_str_eq(captured_stderr(), "bench/x: --cap '99999999999999999999': expected a whole number from 0 to "
                                        "100000\n");
    cr_assert_eq(result, -1);
    cr_assert_eq(value, 12345);
}

/* ---- bench_option_seconds --------------------------------------------------- */

Test(bench_options, seconds_accepts_whole_and_decimal_seconds_in_range)
{
    static const struct {
        const char *text;
        double expected;
    } good[] = { { "2", 2.0 }, { "0.5", 0.5 }, { "0.1", 0.1 }, { "3600", 3600.0 }, { "1.25", 1.25 }, { "02.50", 2.5 } };
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        double value = -1;
        capture_stderr();
        int result = bench_option_seconds("bench/x", "--seconds", good[i].text, 0.1, 3600, &value);
        cr_assert_str_eq(captured_stderr(), "", "'%s'", good[i].text);
        cr_assert_eq(result, 0, "'%s' refused", good[i].text);
        cr_assert_eq(value, good[i].expected, "'%s' read as %g", good[i].text, value);
    }
}

Test(bench_options, seconds_refuses_every_kind_of_bad_input)
{
    static const char *const bad[] = {
        "", "abc", "2s", "-1", "+1", " 1", "0", "0.05", "3600.5", ".5", "2.", "1.2.3", "1e3", "0x10",
        "inf", "nan", "1,5",
        /* 400 digits: strtod overflows to HUGE_VAL with ERANGE */
        "1000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
        "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
        "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
        "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        double value = -1;
        capture_stderr();
        int result = bench_option_seconds("bench/x", "--seconds", bad[i], 0.1, 3600, &value);
        const char *message = captured_stderr();
        cr_assert_eq(result, -1, "'%.20s' accepted as %g", bad[i], value);
        cr_assert_eq(value, -1, "'%.20s' wrote %g", bad[i], value);
        char expected[600];
        snprintf(expected, sizeof(expected), "bench/x: --seconds '%s': expected a number of seconds from 0.1 to 3600\n",
                 bad[i]);
        cr_assert_eq(strncmp(message, expected, sizeof(expected)), 0, "stderr: %s", message);
    }
}

/* ---- bench_option_size ---------------------------------------------------- */

Test(bench_options, size_accepts_sizes_in_range)
{
    static const struct {
        const char *text;
        uint64_t expected;
    } good[] = { { "256M", 256ULL << 20 }, { "16M", 16ULL << 20 }, { "1T", 1ULL << 40 }, { "16777216", 16ULL << 20 },
                 { "1GiB", 1ULL << 30 } };
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        uint64_t value = 1;
        capture_stderr();
        int result = bench_option_size("bench/x", "--memory", good[i].text, 16ULL << 20, 1ULL << 40, 4096, &value);
        cr_assert_str_eq(captured_stderr(), "", "'%s'", good[i].text);
        cr_assert_eq(result, 0, "'%s' refused", good[i].text);
        cr_assert_eq(value, good[i].expected, "'%s' read as %llu", good[i].text, (unsigned long long)value);
    }
    /* multiple 1: any byte count */
    uint64_t value = 1;
    cr_assert_eq(bench_option_size("bench/x", "--bytes", "4097", 1, 1ULL << 40, 1, &value), 0);
    cr_assert_eq(value, 4097);
}

Test(bench_options, size_refuses_every_kind_of_bad_input)
{
    static const struct {
        const char *text;
        const char *message;
    } bad[] = {
        { "", "bench/x: --memory empty size (expected a number with optional K, M, G or T)\n" },
        { "abc", "bench/x: --memory 'abc': not a size (expected a number with optional K, M, G or T)\n" },
        { "-1M", "bench/x: --memory '-1M': not a size (expected a number with optional K, M, G or T)\n" },
        { "12Q", "bench/x: --memory '12Q': unknown size suffix 'Q' (use K, M, G or T)\n" },
        { "99999999999999999999", "bench/x: --memory '99999999999999999999': number too large\n" },
        { "17179869184G", "bench/x: --memory '17179869184G': size too large\n" },
        { "0", "bench/x: --memory '0': expected a size from 16M to 1T, a multiple of 4K\n" },
        { "8M", "bench/x: --memory '8M': expected a size from 16M to 1T, a multiple of 4K\n" },
        { "2T", "bench/x: --memory '2T': expected a size from 16M to 1T, a multiple of 4K\n" },
        { "16777217", "bench/x: --memory '16777217': expected a size from 16M to 1T, a multiple of 4K\n" },
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        uint64_t value = 1;
        capture_stderr();
        int result = bench_option_size("bench/x", "--memory", bad[i].text, 16ULL << 20, 1ULL << 40, 4096, &value);
        const char *message = captured_stderr();
        cr_assert_eq(result, -1, "'%s' accepted", bad[i].text);
        cr_assert_eq(value, 1, "'%s' wrote %llu", bad[i].text, (unsigned long long)value);
        cr_assert_str_eq(message, bad[i].message);
    }
    /* multiple 1: no "a multiple of" in the message */
    uint64_t value = 1;
    capture_stderr();
    int result = bench_option_size("bench/x", "--bytes", "512K", 1ULL << 20, 1ULL << 40, 1, &value);
    cr_assert_str_eq(captured_stderr(), "bench/x: --bytes '512K': expected a size from 1M to 1T\n");
    cr_assert_eq(result, -1);
}

/* ---- the lists of bench/migrate and bench/postcopy --------------------------- */

Test(bench_options, working_sets_take_up_to_capacity_whole_mib_sizes)
{
    uint64_t sizes[3] = { 0 };
    unsigned count = 99;
    cr_assert_eq(bench_option_working_sets("bench/x", "--wss", "16M,1G,1T", sizes, 3, &count), 0);
    cr_assert_eq(count, 3);
    cr_assert_eq(sizes[0], 16ULL << 20);
    cr_assert_eq(sizes[1], 1ULL << 30);
    cr_assert_eq(sizes[2], 1ULL << 40);
    static const char *const bad[] = { "", ",", "16M,1536K", "512K", "2T", "16M,abc", "1M,2M,3M,4M" };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char expected[200];
        snprintf(expected, sizeof(expected),
                 "bench/x: --wss '%s': expected up to 3 sizes from 1M to 1T in whole MiB, comma-separated\n", bad[i]);
        capture_stderr();
        int result = bench_option_working_sets("bench/x", "--wss", bad[i], sizes, 3, &count);
        cr_assert_str_eq(captured_stderr(), expected);
        cr_assert_eq(result, -1, "'%s' accepted", bad[i]);
    }
}

Test(bench_options, caps_take_none_or_mib_per_second_up_to_capacity)
{
    uint64_t caps[3] = { 7, 7, 7 };
    unsigned count = 99;
    cr_assert_eq(bench_option_caps("bench/x", "--caps", "none,1024,125", 2048, caps, 3, &count), 0);
    cr_assert_eq(count, 3);
    cr_assert_eq(caps[0], 0);
    cr_assert_eq(caps[1], 1024);
    cr_assert_eq(caps[2], 125);
    static const char *const bad[] = { "", ",", "0", "-5", "2049", "none,x", "1,2,3,4" };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char expected[200];
        snprintf(expected, sizeof(expected),
                 "bench/x: --caps '%s': expected up to 3 of none or MiB/s from 1 to 2048, comma-separated\n", bad[i]);
        capture_stderr();
        int result = bench_option_caps("bench/x", "--caps", bad[i], 2048, caps, 3, &count);
        cr_assert_str_eq(captured_stderr(), expected);
        cr_assert_eq(result, -1, "'%s' accepted", bad[i]);
    }
}

static void usage_for_test(FILE *to)
{
    fprintf(to, "usage: x\n");
}

Test(bench_options, operands_after_the_options_are_refused_with_the_usage)
{
    char *argv[] = { "x", "--json", "stray", NULL };
    cr_assert_eq(bench_options_refuse_operands("bench/x", 2, argv, 2, usage_for_test), 0);
    capture_stderr();
    int result = bench_options_refuse_operands("bench/x", 3, argv, 2, usage_for_test);
    cr_assert_str_eq(captured_stderr(), "bench/x: unexpected argument 'stray'\nusage: x\n");
    cr_assert_eq(result, -1);
}

/* ---- the programs ------------------------------------------------------------ */

/* Every program in bench/, with one bad number each and the exact line it
 * answers with; `foreign` lists the flags its usage names that belong to
 * another program (ringvm's, which the text explains). */
static const struct bench {
    const char *name;
    const char *option, *value;
    const char *message;
    const char *const foreign[4];
} benches[] = {
    { "api-latency", "--vcpus", "abc", "bench/api-latency: --vcpus 'abc': expected a whole number from 1 to 64\n",
      { NULL } },
    { "bpf-overhead", "--rounds", "5x", "bench/bpf-overhead: --rounds '5x': expected a whole number from 1 to 32\n",
      { NULL } },
    { "fault-service", "--touchers", "-1",
      "bench/fault-service: --touchers '-1': expected a whole number from 1 to 64\n", { NULL } },
    { "guest-rate", "--seconds", "0", "bench/guest-rate: --seconds '0': expected a whole number from 1 to 600\n",
      { NULL } },
    { "handover", "--runs", "4294967297",
      "bench/handover: --runs '4294967297': expected a whole number from 1 to 64\n", { NULL } },
    { "harvest", "--reps", "abc", "bench/harvest: --reps 'abc': expected a whole number from 1 to 16\n", { NULL } },
    { "migrate-tls", "--reps", "16", "bench/migrate-tls: --reps '16': expected a whole number from 1 to 15\n",
      { NULL } },
    { "migrate", "--timeout", "abc", "bench/migrate: --timeout 'abc': expected a whole number from 1 to 86400\n",
      { "--prealloc", "--ring-reset", NULL } },
    { "postcopy", "--downtime-ms", "99999999999999999999",
      "bench/postcopy: --downtime-ms '99999999999999999999': expected a whole number from 1 to 3600000\n",
      { NULL } },
    { "ram-backing", "--reps", "16", "bench/ram-backing: --reps '16': expected a whole number from 1 to 15\n",
      { NULL } },
    { "tls-throughput", "--reps", "0", "bench/tls-throughput: --reps '0': expected a whole number from 1 to 101\n",
      { NULL } },
};
#define BENCH_COUNT (sizeof(benches) / sizeof(benches[0]))

static const char *bench_program(const struct bench *bench)
{
    char name[64];
    snprintf(name, sizeof(name), "bench/%s", bench->name);
    const char *path = harness_program(name);
    if (access(path, X_OK) != 0)
        harness_skip("%s not built (make all)", path);
    return path;
}

/* Exit status of the bench with one argument or two (second may be NULL). */
static int run_bench(struct harness_process *process, const struct bench *bench, const char *first,
                     const char *second)
{
    char *argv[] = { (char *)bench_program(bench), (char *)first, (char *)second, NULL };
    harness_spawn(process, argv);
    return harness_process_wait_exit(process, 10000);
}

Test(bench_options, the_table_names_every_bench)
{
    DIR *dir = opendir("bench");
    if (dir == NULL)
        harness_skip("run from the repository root (bench/ not found)");
    unsigned sources = 0;
    struct dirent *entry;
    while ((entry = readdir(dir)) != NULL) {
        size_t length = strlen(entry->d_name);
        if (length < 3 || strcmp(entry->d_name + length - 2, ".c") != 0)
            continue;
        sources++;
        bool listed = false;
        for (size_t i = 0; i < BENCH_COUNT; i++)
            listed = listed || (strlen(benches[i].name) == length - 2 &&
                                strncmp(benches[i].name, entry->d_name, length - 2) == 0);
        cr_assert(listed, "bench/%s is not in tests/test_bench_options.c's table", entry->d_name);
    }
    closedir(dir);
    cr_assert_eq(sources, BENCH_COUNT);
}

Test(bench_options, help_prints_the_usage_on_stdout_and_exits_0, .timeout = 120)
{
    for (size_t i = 0; i < BENCH_COUNT; i++) {
        struct harness_process process;
        cr_assert_eq(run_bench(&process, &benches[i], "--help", NULL), 0, "%s --help; stderr: %s", benches[i].name,
                     process.err);
        char prefix[64];
        snprintf(prefix, sizeof(prefix), "usage: %s ", benches[i].name);
        cr_assert(strncmp(process.out, prefix, strlen(prefix)) == 0, "%s --help printed:\n%s", benches[i].name,
                  process.out);
        cr_assert_str_eq(process.err, "", "%s --help", benches[i].name);
        char *help = strdup(process.out);
        harness_process_free(&process);

        cr_assert_eq(run_bench(&process, &benches[i], "-h", NULL), 0, "%s -h; stderr: %s", benches[i].name,
                     process.err);
        cr_assert_str_eq(process.out, help, "%s: -h and --help differ", benches[i].name);
        cr_assert_str_eq(process.err, "", "%s -h", benches[i].name);
        harness_process_free(&process);
        free(help);
    }
}

Test(bench_options, a_bad_number_exits_2_naming_the_option, .timeout = 120)
{
    for (size_t i = 0; i < BENCH_COUNT; i++) {
        struct harness_process process;
        cr_assert_eq(run_bench(&process, &benches[i], benches[i].option, benches[i].value), 2, "%s %s %s; stderr: %s",
                     benches[i].name, benches[i].option, benches[i].value, process.err);
        cr_assert_str_eq(process.err, benches[i].message, "%s", benches[i].name);
        cr_assert_str_eq(process.out, "", "%s", benches[i].name);
        harness_process_free(&process);
    }
}

/* bench/migrate --ram takes the two backings ringvm's --ram does. */
Test(bench_options, migrate_ram_takes_memfd_or_anonymous, .timeout = 30)
{
    const struct bench *migrate = NULL;
    for (size_t i = 0; i < BENCH_COUNT; i++)
        if (strcmp(benches[i].name, "migrate") == 0)
            migrate = &benches[i];
    cr_assert_not_null(migrate);
    struct harness_process process;
    cr_assert_eq(run_bench(&process, migrate, "--ram", "shared"), 2, "stderr: %s", process.err);
    cr_assert_str_eq(process.err, "bench/migrate: --ram 'shared': expected memfd or anonymous\n");
    harness_process_free(&process);
}

Test(bench_options, an_unknown_option_or_argument_exits_2, .timeout = 120)
{
    for (size_t i = 0; i < BENCH_COUNT; i++) {
        struct harness_process process;
        cr_assert_eq(run_bench(&process, &benches[i], "--no-such-option", NULL), 2, "%s; stderr: %s",
                     benches[i].name, process.err);
        cr_assert_not_null(strstr(process.err, "unrecognized option '--no-such-option'\nusage: "), "%s: %s",
                           benches[i].name, process.err);
        cr_assert_str_eq(process.out, "", "%s", benches[i].name);
        harness_process_free(&process);

        cr_assert_eq(run_bench(&process, &benches[i], "stray", NULL), 2, "%s; stderr: %s", benches[i].name,
                     process.err);
        char expected[128];
        snprintf(expected, sizeof(expected), "bench/%s: unexpected argument 'stray'\nusage: ", benches[i].name);
        cr_assert(strncmp(process.err, expected, strlen(expected)) == 0, "%s: %s", benches[i].name, process.err);
        cr_assert_str_eq(process.out, "", "%s", benches[i].name);
        harness_process_free(&process);
    }
}

/* ---- usage text against the getopt table -------------------------------- */

struct flags {
    char names[48][32];
    unsigned count;
};

static void flags_add(struct flags *flags, const char *name, size_t length)
{
    cr_assert_lt(length, sizeof(flags->names[0]), "flag %.*s too long", (int)length, name);
    for (unsigned i = 0; i < flags->count; i++)
        if (strlen(flags->names[i]) == length && strncmp(flags->names[i], name, length) == 0)
            return;
    cr_assert_lt(flags->count, sizeof(flags->names) / sizeof(flags->names[0]));
    memcpy(flags->names[flags->count], name, length);
    flags->names[flags->count][length] = '\0';
    flags->count++;
}

static bool flags_have(const struct flags *flags, const char *name)
{
    for (unsigned i = 0; i < flags->count; i++)
        if (strcmp(flags->names[i], name) == 0)
            return true;
    return false;
}

static bool flag_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-';
}

/* "--name" of every { "name", no_argument / required_argument, ... } entry
 * of the source's struct option tables. */
static void getopt_flags(const char *source, struct flags *flags)
{
    static const char *const kinds[] = { "no_argument", "required_argument", "optional_argument" };
    for (size_t k = 0; k < 3; k++) {
        for (const char *at = strstr(source, kinds[k]); at != NULL; at = strstr(at + 1, kinds[k])) {
            const char *end = at - 1;
            while (end > source && (*end == ' ' || *end == ','))
                end--;
            if (*end != '"')
                continue;
            const char *start = end - 1;
            while (start > source && start[-1] != '"')
                start--;
            char flag[40];
            snprintf(flag, sizeof(flag), "--%.*s", (int)(end - start), start);
            flags_add(flags, flag, strlen(flag));
        }
    }
}

/* Every "--word" of the text (not inside a longer word). */
static void text_flags(const char *text, struct flags *flags)
{
    for (const char *at = strstr(text, "--"); at != NULL; at = strstr(at + 2, "--")) {
        if ((at > text && flag_char(at[-1])) || !flag_char(at[2]) || at[2] == '-')
            continue;
        size_t length = 2;
        while (flag_char(at[length]))
            length++;
        flags_add(flags, at, length);
    }
}

static char *read_text(const char *path)
{
    FILE *file = fopen(path, "r");
    if (file == NULL)
        return NULL;
    static char text[256 * 1024];
    size_t length = fread(text, 1, sizeof(text) - 1, file);
    cr_assert(feof(file), "%s is larger than %zu bytes", path, sizeof(text) - 1);
    fclose(file);
    text[length] = '\0';
    return strdup(text);
}

Test(bench_options, usage_lists_exactly_the_options_getopt_takes, .timeout = 120)
{
    for (size_t i = 0; i < BENCH_COUNT; i++) {
        char path[128];
        snprintf(path, sizeof(path), "bench/%s.c", benches[i].name);
        char *source = read_text(path);
        if (source == NULL)
            harness_skip("run from the repository root (%s not found)", path);
        struct flags accepted = { .count = 0 }, listed = { .count = 0 };
        getopt_flags(source, &accepted);
        free(source);
        cr_assert(flags_have(&accepted, "--help"), "%s takes no --help", path);

        struct harness_process process;
        cr_assert_eq(run_bench(&process, &benches[i], "--help", NULL), 0);
        text_flags(process.out, &listed);
        for (unsigned f = 0; f < accepted.count; f++)
            cr_assert(flags_have(&listed, accepted.names[f]), "%s takes %s but its usage does not list it:\n%s",
                      benches[i].name, accepted.names[f], process.out);
        for (unsigned f = 0; f < listed.count; f++) {
            bool foreign = false;
            for (size_t k = 0; benches[i].foreign[k] != NULL; k++)
                foreign = foreign || strcmp(benches[i].foreign[k], listed.names[f]) == 0;
            cr_assert(foreign || flags_have(&accepted, listed.names[f]),
                      "%s's usage lists %s, which its getopt table does not take:\n%s", benches[i].name,
                      listed.names[f], process.out);
        }
        /* each foreign flag is still named (else the entry is stale) */
        for (size_t k = 0; benches[i].foreign[k] != NULL; k++)
            cr_assert(flags_have(&listed, benches[i].foreign[k]), "%s's usage no longer names %s", benches[i].name,
                      benches[i].foreign[k]);
        harness_process_free(&process);
    }
}
