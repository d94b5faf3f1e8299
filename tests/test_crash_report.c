/*
 * vmm/crash_report.c: the signals a thread may block leave out the fatal
 * ones, so a crash in a thread that blocks "everything" (the console and
 * API threads, and every thread they start) still runs the report.
 */
#include <criterion/criterion.h>
#include <signal.h>

#include "vmm/crash_report.h"

Test(crash_report, blockable_signals_are_all_but_the_fatal_ones)
{
    sigset_t set;
    crash_report_blockable_signals(&set);
    const int fatal[] = { SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT };
    for (size_t i = 0; i < sizeof(fatal) / sizeof(fatal[0]); i++)
        cr_assert_eq(sigismember(&set, fatal[i]), 0, "signal %d is blockable", fatal[i]);
    const int others[] = { SIGINT, SIGTERM, SIGUSR1, SIGUSR2, SIGPIPE, SIGCHLD, SIGRTMIN, SIGRTMAX };
    for (size_t i = 0; i < sizeof(others) / sizeof(others[0]); i++)
        cr_assert_eq(sigismember(&set, others[i]), 1, "signal %d is not blockable", others[i]);
}
