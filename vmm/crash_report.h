/*
 * A fatal signal (SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT) prints the
 * faulting thread's name and a backtrace to stderr, then dies of the same
 * signal (the exit status stays 128 + signo, a core is still dumped where
 * enabled). Why: a rare crash in a test run on CI leaves only stderr
 * behind; with this, stderr names where it happened. Addresses are
 * `ringvm(+0xOFFSET)`: `addr2line -f -e build/ringvm 0xOFFSET` on a build of
 * the same commit names the line.
 */
#ifndef RINGVM_VMM_CRASH_REPORT_H
#define RINGVM_VMM_CRASH_REPORT_H

#include <signal.h>

/* Once, early in main (before any thread starts). */
void crash_report_install(void);

/* Every signal a thread may block: all but the fatal ones above. A thread
 * that blocks a synchronous SIGSEGV dies of it without running any handler,
 * so its crash would leave no report (and the exit status 139 alone). */
void crash_report_blockable_signals(sigset_t *set);

#endif
