/*
 * Convergence decisions: pure functions of their inputs (no clock, no VM),
 * unit-tested with exact numbers in tests/test_convergence.c.
 *
 *  - Switch-over: expected downtime = bytes still dirty / bandwidth (plus
 *    the digest passes with verify_digest); switch to stop-and-copy when it
 *    is <= the downtime limit.
 *  - auto (QEMU auto-converge): an iteration is "high" when the bytes
 *    dirtied during it exceed 50 % of the bytes sent in it. After two
 *    consecutive high iterations all vCPUs are throttled at
 *    throttle_initial; from then on every further high iteration adds
 *    throttle_increment, capped at throttle_max. The throttle never goes
 *    down during a migration (as QEMU).
 *  - dirty-limit: per-vCPU quotas from per-vCPU dirty rates. The target
 *    total dirty rate is margin_percent of the link's bandwidth (in pages/s).
 *    vCPUs dirtying less than idle_pps are idle: never throttled, their
 *    rate is charged to the budget first. The rest of the budget is
 *    water-filled over the dirtying vCPUs (a vCPU below its fair share keeps
 *    its rate, the others get equal quotas), and each gets the smallest
 *    throttle that brings its unthrottled rate down to its quota:
 *        p = ceil(100 * (rate - quota) / rate), capped at throttle_max,
 *    where rate is the unthrottled estimate measured_rate * 100 / (100 - current
 *    throttle). If the whole VM already fits the target, nobody is throttled.
 *  - hybrid, within the bulk pass: the guest dirtied window_pages distinct
 *    pages in a window of window_ns. Every later pass lasts longer than
 *    the downtime limit while its dirty set cannot be sent within it, and
 *    the distinct pages a guest dirties grow with time but never faster
 *    than linearly (D(t)/t does not grow), so D(downtime) >= D(window) when
 *    window <= downtime, and >= D(window) * downtime / window otherwise.
 *    When that bound alone takes longer than the downtime limit to send,
 *    no pass can converge without throttling: switch to post-copy now.
 */
#ifndef RINGVM_MIGRATION_CONVERGENCE_H
#define RINGVM_MIGRATION_CONVERGENCE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum mig_converge {
    MIG_CONVERGE_NONE = 0,
    MIG_CONVERGE_AUTO,
    MIG_CONVERGE_DIRTY_LIMIT,
};

const char *mig_converge_name(enum mig_converge mode);
/* "none", "auto", "dirty-limit"; 0 or -1. */
int mig_converge_parse(const char *text, enum mig_converge *mode);

/* ceil(bytes * units_per_second / bandwidth): the time to move bytes in
 * 1/units_per_second units (1000: ms, 1000000: us); UINT64_MAX when
 * bandwidth is 0 and there is something to send; 0 for no bytes. */
uint64_t mig_transfer_time(uint64_t bytes, uint64_t bandwidth_bytes_per_s, uint64_t units_per_second);
/* mig_transfer_time in ms. */
uint64_t mig_expected_downtime_ms(uint64_t dirty_bytes, uint64_t bandwidth_bytes_per_s);
/* Expected downtime with digest verification (verify_digest): the source
 * hashes its RAM while the last pages drain, so that overlaps the
 * transfer; the destination hashes its RAM after END, before it resumes:
 *     max(transfer_ms, digest_ms) + digest_ms
 * digest_ms is one pass over all guest RAM; 0 = no verification (the
 * result is transfer_ms). Saturates at UINT64_MAX. */
uint64_t mig_expected_downtime_with_digest_ms(uint64_t transfer_ms, uint64_t digest_ms);
static inline bool mig_should_switch(uint64_t expected_downtime_ms, uint64_t downtime_limit_ms)
{
    return expected_downtime_ms <= downtime_limit_ms;
}

struct mig_throttle_params {
    int initial;        /* 20 */
    int increment;      /* 10 */
    int max;            /* 99 */
};

struct mig_auto_converge {
    int throttle;           /* percent applied to every vCPU */
    unsigned high_streak;   /* consecutive high iterations */
};

/* One iteration's outcome; returns the new throttle (also in state). */
int mig_auto_converge_step(struct mig_auto_converge *state, const struct mig_throttle_params *params,
                           uint64_t dirtied_bytes, uint64_t sent_bytes);

struct mig_dirty_limit_params {
    uint64_t bandwidth_pps;     /* link bandwidth in pages/s */
    unsigned margin_percent;    /* target total dirty rate = bandwidth * margin / 100 (50) */
    uint64_t idle_pps;          /* below: idle, never throttled */
    int throttle_max;
};

/* rate_pps[i]: measured dirty rate of vCPU i while it ran at current[i] %
 * throttle. Writes the new throttle of every vCPU to out[i] and its quota
 * (pages/s; UINT64_MAX = unlimited) to quota[i] (may be NULL). */
void mig_dirty_limit_compute(unsigned vcpu_count, const uint64_t *rate_pps, const int *current,
                             const struct mig_dirty_limit_params *params, int *out, uint64_t *quota);

/* Unthrottled rate estimate: rate * 100 / (100 - throttle). */
uint64_t mig_unthrottled_rate(uint64_t rate_pps, int throttle);

/* The hybrid rule within the bulk pass (above): true when the pages the
 * guest dirtied in the window, scaled down to the downtime limit when the
 * window was longer, take more than downtime_ms to send at
 * bandwidth_bytes_per_s. False without a bandwidth or a window. */
bool mig_hybrid_window_exceeds(uint64_t window_pages, uint64_t window_ns, uint64_t bandwidth_bytes_per_s,
                               uint64_t downtime_ms);

#endif
