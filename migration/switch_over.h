/*
 * The switch-over's cost in the expected downtime (issue 15, item 1): pure
 * functions of their inputs (no clock, no VM), unit-tested with exact
 * numbers in tests/test_switch_over.c.
 *
 * What the source's downtime is made of, once it pauses the guest:
 *   transfer      every byte still to cross the link: the pages left dirty,
 *                 the socket's backlog (bytes written but not yet delivered:
 *                 they go first) and the vCPU/device state frames, at the
 *                 measured bandwidth;
 *   digest        verify_digest's two hash passes (convergence.h);
 *   switch-over   everything else, which does not scale with bytes: pausing
 *                 the vCPUs, capturing and encoding their state, the
 *                 destination's decode and restore, the ACK's round trip.
 *
 * The switch-over part is measured, never guessed:
 *   - at the handshake, a dry run of the state path (migration/source.c,
 *     source_probe_switch_over): the vCPUs pause once for a capture, the
 *     encoded state crosses the link in a PROBE frame, the destination
 *     decodes it and answers PROBE_ACK; the whole round is dry_run_us;
 *   - after a completed migration, from what really happened: the downtime
 *     minus the transfer (and digest) part of the bytes that went after the
 *     pause (mig_switch_over_measured_us). The learned value is a running
 *     mean with its mean deviation, as TCP estimates a round-trip time
 *     (RFC 6298: weights 1/4 here), kept by the process and passed
 *     along with the guest: the source sends its learned value and this
 *     migration's transfer part in the SWITCH_OVER frame, so the destination
 *     learns the measured cost of the switch-over it received and uses it for
 *     its own next migration (docs/migration-protocol.md).
 * The cost used is the larger of the dry run and learned + deviation: the
 * dry run is a floor measured on this link now; the learned value sees what
 * a dry run cannot (the real restore, scheduling on a busy host), and its
 * deviation how much one switch-over may exceed it. The deviation is dropped
 * when the budget with it would take half the downtime limit (a margin that
 * large leaves too little for the pages, and the migration would throttle
 * the guest or never converge: seen at a 150 ms limit with 2 x deviation),
 * and a learned mean at or above the limit is left out
 * (mig_switch_over_budget_us).
 */
#ifndef RINGVM_MIGRATION_SWITCH_OVER_H
#define RINGVM_MIGRATION_SWITCH_OVER_H

#include <stdbool.h>
#include <stdint.h>

/* What one migration knows about switch-over costs. Owned by whoever holds
 * it (struct migration: under its lock; struct source: its thread). */
struct mig_switch_over_model {
    uint64_t dry_run_us;        /* this migration's dry run; 0 = none (peer without PROBE) */
    uint64_t learned_us;        /* running mean of measured switch-overs */
    uint64_t deviation_us;      /* running mean of |measured - learned| */
    uint32_t learned_count;     /* completed switch-overs behind learned_us (0 = none) */
};

/* The expected downtime and its parts, in ms (each rounded up). */
struct mig_downtime_estimate {
    uint64_t transfer_ms;       /* bytes / bandwidth */
    uint64_t digest_ms;         /* what verify_digest adds on top of the transfer */
    uint64_t switch_over_ms;    /* mig_switch_over_cost_us, rounded up */
    uint64_t total_ms;          /* their sum (saturating): what decides the switch-over */
};

/* The cost the expected downtime includes: max(dry run, learned +
 * deviation); with learned + deviation at or above half the downtime limit,
 * max(dry run, learned); with learned itself at or above the limit, the dry
 * run alone: no iteration could ever switch over against it, and one slow
 * switch-over (a stalled destination host) must not stop every later
 * migration of the guest from converging. *learned_ignored (may be NULL)
 * says whether the learned mean was left out. */
uint64_t mig_switch_over_budget_us(const struct mig_switch_over_model *model, uint64_t downtime_limit_ms,
                                   bool *learned_ignored);
/* max(dry run, learned + deviation) with no limit. */
uint64_t mig_switch_over_cost_us(const struct mig_switch_over_model *model);

/* bytes: pages left + backlog + state; digest_pass_ms: one hash pass over
 * RAM (0 = no verify_digest); bandwidth 0 with bytes to send: transfer and
 * total are UINT64_MAX. */
void mig_downtime_estimate(uint64_t bytes, uint64_t bandwidth_bytes_per_s, uint64_t digest_pass_ms,
                           uint64_t switch_over_us, struct mig_downtime_estimate *out);

/* Microseconds to move `bytes` at the bandwidth (rounded up; 0 bytes = 0;
 * bandwidth 0 = UINT64_MAX). */
uint64_t mig_transfer_us(uint64_t bytes, uint64_t bandwidth_bytes_per_s);

/* A completed migration's switch-over cost: downtime_us minus the part
 * that scales with bytes (transfer_us, with digest_pass_us's two passes
 * when verify_digest ran: max(transfer, digest) + digest); 0 when the
 * bytes explain the whole downtime. */
uint64_t mig_switch_over_measured_us(uint64_t downtime_us, uint64_t transfer_us, uint64_t digest_pass_us);

/* The dry run's cost from its parts: round_us (probe written to PROBE_ACK
 * read, the pause and capture before it not included), pause_us (pause,
 * capture, resume), destination_us (the destination's read and decode).
 * What the round spent on the link beyond the destination's part is
 * capped at 4 x srtt_us (TCP's smoothed round trip; 0 = not known, no cap)
 * and at least 1 ms: a retransmission timeout in the one dry run (640 ms
 * over the test link with 1 % loss) is the link's outlier, not the cost
 * of every switch-over, and counted whole it kept expected downtime over
 * the limit for good, an empty pass after another. *capped (may be NULL)
 * says whether the cap applied. */
uint64_t mig_switch_over_dry_run_us(uint64_t pause_us, uint64_t round_us, uint64_t destination_us,
                                    uint64_t srtt_us, bool *capped);

/* Adds one measured switch-over. The first sets learned = measured and
 * deviation = measured / 2; each later one (RFC 6298's update, weights 1/4,
 * rounded up): deviation = (3 deviation + |measured - learned|) / 4, then
 * learned = (3 learned + measured) / 4. */
void mig_switch_over_learn(struct mig_switch_over_model *model, uint64_t measured_us);

#endif
