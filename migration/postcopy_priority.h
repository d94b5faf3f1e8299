/*
 * Real-time scheduling for post-copy's fault service (ringvm --postcopy-fifo).
 *
 * A vCPU that touches a missing page waits while three threads run in turn:
 * "pc-fault" and "pc-urgent" on the destination (migration/
 * postcopy_incoming.h) and "pc-serve" on the source (migration/
 * postcopy_source.h). Each sleeps almost always and runs for tens of
 * microseconds per fault, but beside CPU-bound threads (the other vCPUs,
 * the background stream) a woken fair-class thread waits for a core, and
 * on our 2-core machines that wait, not the protocol, is what missed the
 * fault-latency target (docs/benchmarks.md, bench/fault-service --busy:
 * p99 1.6-5.4 ms against 0.26-0.80 ms under SCHED_FIFO in the same runs).
 * Asking EEVDF for a shorter slice did not help (measured, not merged); SCHED_FIFO
 * does: a woken real-time thread preempts every fair one at once.
 *
 * Opt-in, process-wide: real-time threads need CAP_SYS_NICE or an
 * RLIMIT_RTPRIO of at least the priority, and an operator decides what runs
 * above the host's own fair-class work. These threads block after every
 * request and their work per wake-up is bounded (one uffd batch, one
 * request of at most 2 MiB); the kernel's RT throttling (95 % by default)
 * bounds them anyway.
 *
 * Ownership: the priority is set once by the process's set-up (ringvm's
 * options, a benchmark between its runs) before the threads start, and read
 * by each thread as it starts; an atomic, nothing else shared.
 */
#ifndef RINGVM_MIGRATION_POSTCOPY_PRIORITY_H
#define RINGVM_MIGRATION_POSTCOPY_PRIORITY_H

#include <stddef.h>

/* SCHED_FIFO priorities the option takes: Linux's 1..99. */
#define POSTCOPY_PRIORITY_MIN 1u
#define POSTCOPY_PRIORITY_MAX 99u

/* The SCHED_FIFO priority of fault-service threads started from now on;
 * 0 = off (they stay on the fair class, the default). */
void postcopy_priority_set(unsigned fifo_priority);
unsigned postcopy_priority_get(void);

/* Whether this process may run threads under SCHED_FIFO at fifo_priority:
 * tried on a short-lived thread of its own (the caller's scheduling is left
 * alone). 0, or -errno with the reason in error, e.g.
 * "sched_setscheduler(SCHED_FIFO, priority 10): Operation not permitted
 * (needs CAP_SYS_NICE or an RLIMIT_RTPRIO of at least 10; RLIMIT_RTPRIO is 0)". */
int postcopy_priority_check(unsigned fifo_priority, char *error, size_t error_size);

/* Called by each fault-service thread as it starts: moves the calling
 * thread to SCHED_FIFO at the configured priority (nothing when it is 0).
 * 0, or -errno: the thread then runs on the fair class as before, and the
 * first failure in the process is printed to stderr naming the thread. */
int postcopy_priority_apply(const char *thread_name);

/* The background stream's threads under the option, from the switch-over
 * on: the source's migration thread and "mig-send", the destination's
 * incoming thread. A blocked vCPU waits for them as much as for the three
 * above (a request for a page already on its way is left to the stream),
 * and on 2 cores beside two spinning vCPUs they waited for a core too:
 * fault p99 1.5-3 ms in half of the runs over the 1 Gbit/s test link,
 * 0.47-0.52 ms in 4 of 4 with them at nice -10 (docs/benchmarks.md).
 * Not SCHED_FIFO: they copy at link rate and, on a fast link, never
 * block, so they would starve every fair thread (the guest, the API).
 * Nice -10 gives one about ten times a vCPU thread's share.
 * tid 0 = the calling thread. Returns the thread's nice value before, to
 * hand to postcopy_priority_restore_stream, or POSTCOPY_STREAM_UNCHANGED
 * (the option is off, or setpriority refused: printed once per process).
 */
#define POSTCOPY_STREAM_NICE (-10)
#define POSTCOPY_STREAM_UNCHANGED 100
int postcopy_priority_boost_stream(int tid, const char *thread_name);
void postcopy_priority_restore_stream(int tid, int previous);

#endif
