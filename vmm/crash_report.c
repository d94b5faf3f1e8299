/*
 * Fatal-signal backtraces (see crash_report.h).
 */
#include "vmm/crash_report.h"

#include <execinfo.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define CRASH_REPORT_FRAMES 64

static const int fatal_signals[] = { SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT };

/* Async-signal-safe output: write(2) only. */
static void crash_write(const char *text)
{
    size_t length = strlen(text);
    while (length > 0) {
        ssize_t written = write(STDERR_FILENO, text, length);
        if (written <= 0)
            return;
        text += written;
        length -= (size_t)written;
    }
}

static void crash_handler(int signo, siginfo_t *info, void *context)
{
    (void)context;
    /* Only the first fatal signal reports; a crash inside the report (or a
     * second thread crashing meanwhile) dies at once. */
    static volatile sig_atomic_t reporting;
    if (!reporting) {
        reporting = 1;
        char line[160];
        char thread[16] = "?";
        pthread_getname_np(pthread_self(), thread, sizeof(thread));
        /* snprintf is not on the async-signal-safe list; glibc's does not
         * allocate for these conversions, and we are dying anyway. */
        snprintf(line, sizeof(line), "ringvm: fatal signal %d (%s) in thread \"%s\" at address %p; backtrace:\n",
                 signo, strsignal(signo), thread, info != NULL ? info->si_addr : NULL);
        crash_write(line);
        void *frames[CRASH_REPORT_FRAMES];
        int count = backtrace(frames, CRASH_REPORT_FRAMES);
        backtrace_symbols_fd(frames, count, STDERR_FILENO);
        crash_write("ringvm: end of backtrace (addr2line -f -e ringvm OFFSET names each line)\n");
    }
    signal(signo, SIG_DFL);
    raise(signo);
}

/* Under AddressSanitizer its own SEGV handler reports better: keep it. */
#if defined(__SANITIZE_ADDRESS__)
#define CRASH_REPORT_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define CRASH_REPORT_SANITIZED 1
#endif
#endif

void crash_report_install(void)
{
#ifdef CRASH_REPORT_SANITIZED
    return;
#endif
    /* backtrace() loads libgcc on first use, which allocates: do it now,
     * not inside the handler. */
    void *warm[1];
    (void)backtrace(warm, 1);
    struct sigaction action;
    memset(&action, 0, sizeof(action));
    action.sa_sigaction = crash_handler;
    action.sa_flags = SA_SIGINFO | SA_RESETHAND;
    sigemptyset(&action.sa_mask);
    for (size_t i = 0; i < sizeof(fatal_signals) / sizeof(fatal_signals[0]); i++)
        if (sigaction(fatal_signals[i], &action, NULL) != 0)
            perror("ringvm: sigaction (crash report)");
}

void crash_report_blockable_signals(sigset_t *set)
{
    sigfillset(set);
    for (size_t i = 0; i < sizeof(fatal_signals) / sizeof(fatal_signals[0]); i++)
        sigdelset(set, fatal_signals[i]);
}
