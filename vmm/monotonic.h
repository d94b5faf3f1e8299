/*
 * CLOCK_MONOTONIC (and CLOCK_REALTIME) in nanoseconds, and the absolute deadlines that
 * pthread_cond_timedwait takes on a condition variable created with
 * pthread_condattr_setclock(CLOCK_MONOTONIC): a wall-clock step (NTP,
 * settimeofday) then neither cuts a wait short nor stretches it. Header-only
 * so that dirtyring/ and the eBPF loader use it without linking vm.c.
 */
#ifndef RINGVM_VMM_MONOTONIC_H
#define RINGVM_VMM_MONOTONIC_H

#include <stdint.h>
#include <time.h>

static inline uint64_t monotonic_now_ns(void)
{
    struct timespec now;
    /* Cannot fail: CLOCK_MONOTONIC always exists and &now is writable. */
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (uint64_t)now.tv_sec * 1000000000ULL + (uint64_t)now.tv_nsec;
}

/* CLOCK_REALTIME in nanoseconds: for timestamps another host compares
 * (migration frames, the guest clock's realtime), never for waits. */
static inline uint64_t realtime_now_ns(void)
{
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    return (uint64_t)now.tv_sec * 1000000000ULL + (uint64_t)now.tv_nsec;
}

/* when_ns, a monotonic_now_ns() time, as pthread_cond_timedwait's abstime. */
static inline struct timespec monotonic_timespec_at_ns(uint64_t when_ns)
{
    return (struct timespec){.tv_sec = (time_t)(when_ns / 1000000000ULL), .tv_nsec = (long)(when_ns % 1000000000ULL)};
}

/* The abstime ns from now. */
static inline struct timespec monotonic_deadline_after_ns(uint64_t ns)
{
    return monotonic_timespec_at_ns(monotonic_now_ns() + ns);
}

#endif
