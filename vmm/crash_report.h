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

/* Once, early in main (before any thread starts). */
void crash_report_install(void);

#endif
