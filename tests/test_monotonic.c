/* vmm/monotonic.h: nanoseconds to timespec, and a deadline that a
 * CLOCK_MONOTONIC condition variable honours. */
#include <criterion/criterion.h>
#include <errno.h>
#include <pthread.h>

#include "vmm/monotonic.h"

static uint64_t timespec_ns(struct timespec ts)
{
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

Test(monotonic, timespec_splits_seconds_and_nanoseconds)
{
    struct timespec ts = monotonic_timespec_at_ns(0);
    cr_assert_eq(ts.tv_sec, 0);
    cr_assert_eq(ts.tv_nsec, 0);
    ts = monotonic_timespec_at_ns(1999999999ULL);
    cr_assert_eq(ts.tv_sec, 1);
    cr_assert_eq(ts.tv_nsec, 999999999L);
    ts = monotonic_timespec_at_ns(3000000000ULL);
    cr_assert_eq(ts.tv_sec, 3);
    cr_assert_eq(ts.tv_nsec, 0);
}

Test(monotonic, deadline_is_that_far_from_now)
{
    uint64_t before = monotonic_now_ns();
    struct timespec deadline = monotonic_deadline_after_ns(1500000000ULL);
    uint64_t after = monotonic_now_ns();
    cr_assert_geq(after, before);
    cr_assert_geq(timespec_ns(deadline), before + 1500000000ULL);
    cr_assert_leq(timespec_ns(deadline), after + 1500000000ULL);
    cr_assert_lt(deadline.tv_nsec, 1000000000L);
}

Test(monotonic, a_monotonic_condvar_waits_until_the_deadline)
{
    pthread_condattr_t attributes;
    cr_assert_eq(pthread_condattr_init(&attributes), 0);
    cr_assert_eq(pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC), 0);
    pthread_cond_t cond;
    cr_assert_eq(pthread_cond_init(&cond, &attributes), 0);
    pthread_condattr_destroy(&attributes);
    pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

    uint64_t started = monotonic_now_ns();
    struct timespec deadline = monotonic_deadline_after_ns(20000000ULL);
    pthread_mutex_lock(&lock);
    int rc;
    do
        rc = pthread_cond_timedwait(&cond, &lock, &deadline);
    while (rc == 0);    /* spurious wake-ups */
    pthread_mutex_unlock(&lock);
    cr_assert_eq(rc, ETIMEDOUT);
    cr_assert_geq(monotonic_now_ns() - started, 20000000ULL);
    pthread_cond_destroy(&cond);
}
