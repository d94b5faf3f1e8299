/* ringctl's help as a user reads it: `ringctl --help` lists every command
 * with a complete one-line summary; `ringctl COMMAND --help` keeps the full
 * text. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "tests/harness.h"

static const char *ringctl_or_skip(void)
{
    const char *ringctl = harness_program("ringctl");
    if (access(ringctl, X_OK) != 0)
        harness_skip("%s not built (make all)", ringctl);
    return ringctl;
}

Test(ringctl_help, every_command_has_a_complete_one_line_summary)
{
    const char *ringctl = ringctl_or_skip();
    struct harness_process process;
    char *argv[] = {(char *)ringctl, "--help", NULL};
    harness_spawn(&process, argv);
    cr_assert_eq(harness_process_wait_exit(&process, 10000), 0, "stderr: %s", process.err);
    static const char *const names[] = {"info", "pause", "resume", "shutdown", "dirty-stats", "dirty-tracking",
                                        "digest", "guest-stats", "events", "raw", "migrate", "progress",
                                        "cancel", "postcopy", "recover", "report", "trace", "commands", "version"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        char prefix[64];
        snprintf(prefix, sizeof(prefix), "\n  %-15s ", names[i]);
        const char *line = strstr(process.out, prefix);
        cr_assert_not_null(line, "`ringctl --help` does not list %s:\n%s", names[i], process.out);
        line += 1;
        size_t length = strcspn(line, "\n");
        cr_assert_leq(length, 80, "the %s line is %zu columns wide", names[i], length);
        /* a whole sentence, not the first line of a wrapped paragraph */
        cr_assert_eq(line[length - 1], '.', "the %s summary stops mid-sentence: %.*s", names[i], (int)length,
                     line);
    }
    cr_assert_eq(strstr(process.out, "Error vm-paused if\n"), NULL, "a help line was cut:\n%s", process.out);
    harness_process_free(&process);

    /* the full text is still there per command */
    char *pause[] = {(char *)ringctl, "pause", "--help", NULL};
    harness_spawn(&process, pause);
    cr_assert_eq(harness_process_wait_exit(&process, 10000), 0);
    cr_assert_str_eq(process.out, "usage: ringctl [-s PATH] [--json] pause\n\n"
                                  "Stop every vCPU; returns once all are parked (vm.pause). Error vm-paused if\n"
                                  "already paused.\n");
    harness_process_free(&process);
}

Test(ringctl_help, dirty_tracking_needs_on_or_off)
{
    const char *ringctl = ringctl_or_skip();
    struct harness_process process;
    char *argv[] = {(char *)ringctl, "-s", "/nonexistent/ringvm.sock", "dirty-tracking", "maybe", NULL};
    harness_spawn(&process, argv);
    cr_assert_eq(harness_process_wait_exit(&process, 10000), 2, "stderr: %s", process.err);
    cr_assert(strstr(process.err, "ringctl dirty-tracking: expected 'on' or 'off'\n") == process.err, "stderr: %s",
              process.err);
    harness_process_free(&process);
}
