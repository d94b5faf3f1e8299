/* See postcopy_priority.h. */
#include "migration/postcopy_priority.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>

static atomic_uint configured_priority = 0;
static atomic_bool failure_reported = false;
static atomic_bool stream_failure_reported = false;

void postcopy_priority_set(unsigned fifo_priority)
{
    atomic_store_explicit(&configured_priority, fifo_priority, memory_order_relaxed);
}

unsigned postcopy_priority_get(void)
{
    return atomic_load_explicit(&configured_priority, memory_order_relaxed);
}

static int become_fifo(unsigned fifo_priority)
{
    struct sched_param parameters = { .sched_priority = (int)fifo_priority };
    return sched_setscheduler(0, SCHED_FIFO, &parameters) == 0 ? 0 : -errno;
}

/* "sched_setscheduler(SCHED_FIFO, priority N): <errno text>" and, for a
 * refusal, what would grant it. */
static void describe_failure(int error_number, unsigned fifo_priority, char *text, size_t text_size)
{
    int written = snprintf(text, text_size, "sched_setscheduler(SCHED_FIFO, priority %u): %s", fifo_priority,
                           strerror(-error_number));
    if (error_number != -EPERM || written < 0 || (size_t)written >= text_size)
        return;
    struct rlimit limit;
    char current[64] = "unknown";
    if (getrlimit(RLIMIT_RTPRIO, &limit) == 0)
        snprintf(current, sizeof(current), "%" PRIu64, (uint64_t)limit.rlim_cur);
    snprintf(text + written, text_size - (size_t)written,
             " (needs CAP_SYS_NICE or an RLIMIT_RTPRIO of at least %u; RLIMIT_RTPRIO is %s)", fifo_priority, current);
}

struct trial {
    unsigned fifo_priority;
    int result;
};

static void *try_fifo(void *argument)
{
    struct trial *trial = argument;
    trial->result = become_fifo(trial->fifo_priority);
    return NULL;
}

int postcopy_priority_check(unsigned fifo_priority, char *error, size_t error_size)
{
    if (fifo_priority < POSTCOPY_PRIORITY_MIN || fifo_priority > POSTCOPY_PRIORITY_MAX) {
        snprintf(error, error_size, "SCHED_FIFO priority %u is outside %u..%u", fifo_priority,
                 POSTCOPY_PRIORITY_MIN, POSTCOPY_PRIORITY_MAX);
        return -EINVAL;
    }
    /* A thread of its own: the caller (ringvm's main thread, which every
     * later thread inherits from) keeps its class. */
    struct trial trial = { .fifo_priority = fifo_priority, .result = 0 };
    pthread_t thread;
    int r = pthread_create(&thread, NULL, try_fifo, &trial);
    if (r != 0) {
        snprintf(error, error_size, "pthread_create (to try SCHED_FIFO): %s", strerror(r));
        return -r;
    }
    pthread_join(thread, NULL);
    if (trial.result != 0)
        describe_failure(trial.result, fifo_priority, error, error_size);
    return trial.result;
}

int postcopy_priority_apply(const char *thread_name)
{
    unsigned fifo_priority = postcopy_priority_get();
    if (fifo_priority == 0)
        return 0;
    int result = become_fifo(fifo_priority);
    if (result != 0 && !atomic_exchange_explicit(&failure_reported, true, memory_order_relaxed)) {
        char text[256];
        describe_failure(result, fifo_priority, text, sizeof(text));
        fprintf(stderr, "ringvm: %s: %s: it runs on the fair class\n", thread_name, text);
    }
    return result;
}

int postcopy_priority_boost_stream(int tid, const char *thread_name)
{
    if (postcopy_priority_get() == 0 || tid < 0)
        return POSTCOPY_STREAM_UNCHANGED;
    errno = 0;
    int previous = getpriority(PRIO_PROCESS, (id_t)tid);
    if (previous == -1 && errno != 0)
        return POSTCOPY_STREAM_UNCHANGED;
    if (previous <= POSTCOPY_STREAM_NICE)
        return POSTCOPY_STREAM_UNCHANGED;      /* already there (or above): leave it */
    if (setpriority(PRIO_PROCESS, (id_t)tid, POSTCOPY_STREAM_NICE) != 0) {
        if (!atomic_exchange_explicit(&stream_failure_reported, true, memory_order_relaxed))
            fprintf(stderr, "ringvm: %s: setpriority(nice %d): %s (needs CAP_SYS_NICE or an RLIMIT_NICE of at "
                    "least %d): it runs at nice %d\n", thread_name, POSTCOPY_STREAM_NICE, strerror(errno),
                    20 - POSTCOPY_STREAM_NICE, previous);
        return POSTCOPY_STREAM_UNCHANGED;
    }
    return previous;
}

void postcopy_priority_restore_stream(int tid, int previous)
{
    if (previous == POSTCOPY_STREAM_UNCHANGED || tid < 0)
        return;
    /* Raising a nice value needs no privilege; a failure leaves the thread
     * more favoured than it was, nothing worse. */
    if (setpriority(PRIO_PROCESS, (id_t)tid, previous) != 0)
        fprintf(stderr, "ringvm: setpriority(nice %d) back after post-copy: %s\n", previous, strerror(errno));
}
