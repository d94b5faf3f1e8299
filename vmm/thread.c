#include "vmm/thread.h"

#include <signal.h>

#include "vmm/crash_report.h"

int thread_create_without_signals(pthread_t *thread, void *(*start)(void *), void *argument)
{
    /* The new thread inherits the creator's mask: block around the
     * create, so the thread never runs a moment with signals open. */
    sigset_t blocked, old;
    crash_report_blockable_signals(&blocked);
    pthread_sigmask(SIG_SETMASK, &blocked, &old);
    int result = pthread_create(thread, NULL, start, argument);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return result;
}
