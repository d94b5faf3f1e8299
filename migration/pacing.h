/*
 * Bandwidth pacing of the migration stream (max_bandwidth_mibs).
 *
 * A token bucket driven by the caller's clock: bytes may go out as long as
 * they stay within cap * elapsed since the pacer's reference point. Time the
 * link sat idle (the migration thread taking a dirty set, a pass that found
 * little to send) is not saved up beyond MIG_PACE_MAX_CREDIT_NS, so the rate
 * over any window longer than that stays within the cap: an operator's cap
 * is a ceiling, not an average. A cap change starts a new reference point
 * (the new cap is not applied retroactively).
 *
 * Pure arithmetic, no clock and no locks: owned by the sender thread.
 */
#ifndef RINGVM_MIGRATION_PACING_H
#define RINGVM_MIGRATION_PACING_H

#include <stdint.h>

#define MIG_PACE_MAX_CREDIT_NS 10000000ull     /* 10 ms of idle link may be caught up */

struct mig_pacer {
    uint64_t reference_ns;          /* when reference_bytes had been sent */
    uint64_t reference_bytes;
    uint64_t cap;                   /* bytes/s the reference point was set for; 0 = none */
};

void mig_pacer_init(struct mig_pacer *pacer, uint64_t now_ns, uint64_t bytes_total);

/* How long to wait before sending more, given bytes_total sent so far and
 * the cap in bytes/s (0 = unlimited: 0 ns). */
uint64_t mig_pacer_wait_ns(struct mig_pacer *pacer, uint64_t now_ns, uint64_t bytes_total, uint64_t cap);

/* The rate a capped stream keeps while the cap does not hold it back:
 * bytes / (wall_ns - paced_ns), in bytes/s, where paced_ns is the part of
 * wall_ns the sender slept on the cap. With no cap (paced_ns 0) it is the
 * measured rate itself. 0 when no time is left to divide by (everything
 * paced, or wall_ns 0): no sample. */
uint64_t mig_unpaced_rate(uint64_t bytes, uint64_t wall_ns, uint64_t paced_ns);

#endif
