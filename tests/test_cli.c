/* The ringvm program as a user runs it: exit codes, messages, signals. */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdbool.h>
#include <string.h>

#include "tests/harness.h"

static int run_ringvm(struct harness_process *process, char *const argv[], unsigned timeout_ms)
{
    harness_spawn(process, argv);
    return harness_process_wait_exit(process, timeout_ms);
}

Test(cli, bad_values_exit_2_with_a_message)
{
    struct harness_process process;
    char *vcpus[] = { (char *)harness_program("ringvm"), "--vcpus", "0", NULL };
    cr_assert_eq(run_ringvm(&process, vcpus, 10000), 2);
    cr_assert_str_eq(process.err, "ringvm: --vcpus '0': expected an integer from 1 to 64\n");
    harness_process_free(&process);

    char *memory[] = { (char *)harness_program("ringvm"), "--memory", "12Q", NULL };
    cr_assert_eq(run_ringvm(&process, memory, 10000), 2);
    cr_assert_str_eq(process.err, "ringvm: --memory '12Q': unknown size suffix 'Q' (use K, M, G or T)\n");
    harness_process_free(&process);

    char *workload[] = { (char *)harness_program("ringvm"), "--workload", "dirtier,pattern=zigzag", NULL };
    cr_assert_eq(run_ringvm(&process, workload, 10000), 2);
    cr_assert_str_eq(process.err, "ringvm: --workload: unknown pattern 'zigzag' (expected seq, random or hot)\n");
    harness_process_free(&process);

    char *ram[] = { (char *)harness_program("ringvm"), "--ram", "anonymous", "--hugepages", NULL };
    cr_assert_eq(run_ringvm(&process, ram, 10000), 2);
    cr_assert_str_eq(process.err, "ringvm: --ram anonymous and --hugepages: 2M huge pages are a hugetlbfs memfd; "
                                  "anonymous RAM gets transparent huge pages instead (see --no-thp)\n");
    harness_process_free(&process);
}

/* The flag as a word of the help text: "--incoming" must not be found
 * inside "--incoming-stall-timeout". */
static bool help_mentions(const char *help, const char *flag)
{
    size_t length = strlen(flag);
    for (const char *at = strstr(help, flag); at != NULL; at = strstr(at + 1, flag)) {
        bool starts = at == help || at[-1] == ' ' || at[-1] == ',' || at[-1] == '\n';
        char after = at[length];
        if (starts && (after == ' ' || after == ',' || after == '\n' || after == '\0'))
            return true;
    }
    return false;
}

Test(cli, help_lists_every_flag)
{
    struct harness_process process;
    char *help[] = { (char *)harness_program("ringvm"), "--help", NULL };
    cr_assert_eq(run_ringvm(&process, help, 10000), 0);
    static const char *const flags[] = { "--memory", "--vcpus", "--workload", "--serial", "--numa-node",
                                         "--hugepages", "--ram", "--no-thp", "--prealloc", "--stats", "--run-seconds", "--dirty-log",
                                         "--ring-entries", "--harvesters", "--bitmap-sync-ms", "--bitmap-clear-chunk", "--ring-reset", "--api-socket",
                                         "--incoming", "--incoming-stall-timeout", "--tls-psk", "--tls-creds", "--bpf",
                                         "--help", "--version" };
    for (size_t i = 0; i < sizeof(flags) / sizeof(flags[0]); i++)
        cr_assert(help_mentions(process.out, flags[i]), "--help does not list %s as a flag:\n%s", flags[i],
                  process.out);
    harness_process_free(&process);
}

Test(cli, version_prints_the_version_and_exits_0)
{
    struct harness_process process;
    char *version[] = { (char *)harness_program("ringvm"), "--version", NULL };
    cr_assert_eq(run_ringvm(&process, version, 10000), 0);
    cr_assert(strncmp(process.out, "ringvm ", 7) == 0 && strchr(process.out, '\n') == process.out + process.out_length - 1,
              "--version printed '%s'", process.out);
    cr_assert(process.out[7] >= '0' && process.out[7] <= '9', "--version printed '%s'", process.out);
    cr_assert_str_eq(process.err, "");
    harness_process_free(&process);
}

Test(cli, wss_that_does_not_fit_is_refused, .timeout = 30)
{
    harness_require_kvm();
    struct harness_process process;
    char *argv[] = { (char *)harness_program("ringvm"), "--memory", "64M", "--workload", "dirtier,wss=1G", NULL };
    cr_assert_eq(run_ringvm(&process, argv, 20000), 1);
    cr_assert(strstr(process.err, "does not fit") != NULL, "stderr: %s", process.err);
    harness_process_free(&process);
}

/* Guest RAM is created before KVM is opened: no /dev/kvm needed. 1 TiB of
 * huge pages is more than any of these hosts reserves. */
Test(cli, hugepages_without_enough_reserved_names_the_shortfall, .timeout = 30)
{
    struct harness_process process;
    char *argv[] = { (char *)harness_program("ringvm"), "--hugepages", "--memory", "1T", "--workload", "idle",
                     NULL };
    cr_assert_eq(run_ringvm(&process, argv, 20000), 1);
    const char *expected = "ringvm: mmap(guest RAM, 1099511627776 bytes, 2M huge pages): Cannot allocate memory "
                           "(needs 524288 free huge pages, ";
    cr_assert(strncmp(process.err, expected, strlen(expected)) == 0, "stderr: %s", process.err);
    cr_assert(strstr(process.err, " free: reserve them in /proc/sys/vm/nr_hugepages)\n") != NULL, "stderr: %s",
              process.err);
    harness_process_free(&process);
}

/* The VMM core issue's acceptance: LEDGER OK at least twice, exit 0 on SIGTERM. */
Test(cli, ledger_prints_ok_twice_and_sigterm_exits_0, .timeout = 60)
{
    harness_require_kvm();
    struct harness_process process;
    char *argv[] = { (char *)harness_program("ringvm"), "--memory", "1G", "--vcpus", "2", "--workload",
                     "ledger,wss=256M,verify=2", NULL };
    harness_spawn(&process, argv);
    /* 45 s: two 256 MiB passes take seconds under an emulated CPU (make test-nested). */
    cr_assert(harness_process_wait_output(&process, "LEDGER OK", 2, 45000), "stdout:\n%s\nstderr:\n%s",
              process.out, process.err);
    cr_assert_eq(kill(process.pid, SIGTERM), 0);
    cr_assert_eq(harness_process_wait_exit(&process, 10000), 0, "stderr:\n%s", process.err);
    cr_assert(strstr(process.out, "LEDGER MISMATCH") == NULL);
    harness_process_free(&process);
}

Test(cli, guest_exception_exits_1_naming_the_vector, .timeout = 30)
{
    harness_require_kvm();
    struct harness_process process;
    char *argv[] = { (char *)harness_program("ringvm"), "--memory", "64M", "--workload", "fault,kind=ud,ring=3",
                     "--serial", "none", NULL };
    cr_assert_eq(run_ringvm(&process, argv, 20000), 1);
    cr_assert(strstr(process.err, "guest exception #UD (vector 6)") != NULL, "stderr: %s", process.err);
    cr_assert(strstr(process.err, "in ring 3") != NULL, "stderr: %s", process.err);
    harness_process_free(&process);
}

Test(cli, stats_prints_a_rate_line_each_second, .timeout = 30)
{
    harness_require_kvm();
    struct harness_process process;
    char *argv[] = { (char *)harness_program("ringvm"), "--vcpus", "2", "--workload", "dirtier,wss=16M", "--stats",
                     "--run-seconds", "3", NULL };
    cr_assert_eq(run_ringvm(&process, argv, 20000), 0, "stderr: %s", process.err);
    unsigned lines = 0;
    for (const char *at = strstr(process.out, "stats: t="); at != NULL; at = strstr(at + 1, "stats: t="))
        lines++;
    cr_assert_geq(lines, 2, "stdout: %s", process.out);
    cr_assert(strstr(process.out, " vcpu1=") != NULL, "stdout: %s", process.out);
    harness_process_free(&process);
}
